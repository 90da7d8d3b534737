/*
 * ref.c - the plain C reference of every op: readable loops, one thread, no intrinsics.
 * Fast versions (cpu/fast.c, cuda/) are tested against these; keep them obviously correct.
 */
#include <limits.h>
#include <float.h>
#include <math.h>
#include <string.h>

#include "../ops.h"
#include "../quant.h"
#include "../../util/pool.h"

/* element j of row n of w as fp32 */
static float w_at(const sw_tensor_t *w, int64_t idx)
{
    switch (w->dtype) {
    /* memcpy loads: weights in a checkpoint mapping need not be aligned to their element size */
    case SW_DTYPE_F32: { float f; memcpy(&f, (const char *)w->data + 4 * idx, 4); return f; }
    case SW_DTYPE_F16: { uint16_t h; memcpy(&h, (const char *)w->data + 2 * idx, 2); return sw_f16_to_f32(h); }
    case SW_DTYPE_BF16: { uint16_t h; memcpy(&h, (const char *)w->data + 2 * idx, 2); return sw_bf16_to_f32(h); }
    case SW_DTYPE_NF4: { /* code[nibble] * absmax of its block, fp32 (bnb's dequantization) */
        uint8_t b = ((const uint8_t *)w->data)[idx / 2];
        float a;
        sw_nf4_absmax_range(w->qs, idx / w->qs->blocksize, 1, &a);
        return sw_nf4_code[idx % 2 ? b & 15u : b >> 4] * a;
    }
    case SW_DTYPE_I8: /* CB * SCB / 127 */
        return (float)((const int8_t *)w->data)[idx] * w->qs->scb[idx / w->shape[1]] / 127.0f;
    default: return NAN;
    }
}

/* Whether activation column k of x (M, K) holds an outlier (|x| >= thr in any row). */
static int col_is_outlier(const float *x, int M, int64_t K, int64_t k, float thr)
{
    if (thr <= 0.0f)
        return 0;
    for (int m = 0; m < M; m++)
        if (fabsf(x[(int64_t)m * K + k]) >= thr)
            return 1;
    return 0;
}

/*
 * LLM.int8() matmul (bnb.md §2): per row m, a = max |x[m, k]| over the non-outlier columns,
 * xq = round-half-even(x * (127 / a)) on those columns, C = exact int32 dot with the int8
 * weight, y = C * a * SCB[n] * (1/127^2) (bnb's MM_DEQUANT_CONST), plus, in fp32, the outlier
 * columns of x times the dequantized weight columns CB * SCB / 127, plus bias. A row with a NaN
 * or an infinity outside the outlier columns gives NaN (its int8 part is not computed: converting
 * them to integers is undefined).
 */
static void ref_matmul_int8(float *y, const float *x, const sw_tensor_t *w, const float *bias, int M)
{
    int64_t N = w->shape[0], K = w->shape[1];
    const int8_t *cb = w->data;
    const float *scb = w->qs->scb;
    float thr = w->qs->threshold;

    for (int m = 0; m < M; m++) {
        const float *xr = x + (int64_t)m * K;
        float a = 0.0f, scale;

        int bad = 0;

        for (int64_t k = 0; k < K; k++)
            if (!col_is_outlier(x, M, K, k, thr)) {
                bad |= !isfinite(xr[k]);
                a = fmaxf(a, fabsf(xr[k]));
            }
        if (bad) /* NaN/inf cannot be quantized: the row's result is NaN (a > 0 fails below) */
            a = NAN;
        else if (a < 127.0f / FLT_MAX) /* 127 / a would overflow: such a row is zero to int8 */
            a = 0.0f;
        scale = 127.0f / a;
        for (int64_t n = 0; n < N; n++) {
            int32_t acc = 0;
            float out = 0.0f;

            for (int64_t k = 0; k < K; k++) {
                int8_t wq = cb[n * K + k];

                if (col_is_outlier(x, M, K, k, thr))
                    out += xr[k] * ((float)wq * scb[n] / 127.0f);
                else if (a > 0.0f)
                    acc += (int32_t)nearbyintf(xr[k] * scale) * wq;
            }
            out += (float)acc * a * scb[n] * 6.200012e-05f;
            y[(int64_t)m * N + n] = out + (bias ? bias[n] : 0.0f);
        }
    }
}

static void ref_matmul(float *y, const float *x, const sw_tensor_t *w, const float *bias, int M)
{
    int64_t N = w->shape[0], K = w->shape[1]; /* w: (N, K) */

    if (w->dtype == SW_DTYPE_I8) {
        ref_matmul_int8(y, x, w, bias, M);
        return;
    }

    for (int m = 0; m < M; m++) {
        for (int64_t n = 0; n < N; n++) {
            double acc = 0.0;
            for (int64_t k = 0; k < K; k++)
                acc += (double)x[(int64_t)m * K + k] * (double)w_at(w, n * K + k);
            if (bias)
                acc += bias[n];
            y[(int64_t)m * N + n] = (float)acc;
        }
    }
}

static void ref_rmsnorm(float *y, const float *x, const float *w, int M, int H, float eps)
{
    for (int m = 0; m < M; m++) {
        const float *xr = x + (int64_t)m * H;
        float *yr = y + (int64_t)m * H;
        double ss = 0.0;
        for (int i = 0; i < H; i++)
            ss += (double)xr[i] * xr[i];
        float r = 1.0f / sqrtf((float)(ss / H) + eps);
        for (int i = 0; i < H; i++)
            yr[i] = w[i] * (xr[i] * r);
    }
}

static void ref_rope(float *x, const int32_t *pos, int M, int nh, int HD, const float *inv_freq,
                     float attn_factor)
{
    int half = HD / 2;

    for (int m = 0; m < M; m++) {
        for (int h = 0; h < nh; h++) {
            float *v = x + ((int64_t)m * nh + h) * HD;
            for (int i = 0; i < half; i++) {
                float ang = (float)pos[m] * inv_freq[i];
                float c = (float)cos((double)ang) * attn_factor;
                float s = (float)sin((double)ang) * attn_factor;
                float a = v[i], b = v[i + half];
                v[i] = a * c - b * s;
                v[i + half] = b * c + a * s;
            }
        }
    }
}

static void ref_attention(float *out, const float *q, const float *k, const float *v, int B,
                          int T, int pos0, int max_T, int NH, int NKV, int HD, int window,
                          float scale, float *scratch)
{
    int group = NH / NKV;

    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            int p = pos0 + t;
            int lo = (window > 0 && p - window + 1 > 0) ? p - window + 1 : 0;
            for (int h = 0; h < NH; h++) {
                int kvh = h / group;
                const float *qv = q + (((int64_t)b * T + t) * NH + h) * HD;
                const float *kb = k + ((int64_t)b * NKV + kvh) * max_T * HD;
                const float *vb = v + ((int64_t)b * NKV + kvh) * max_T * HD;
                float *o = out + (((int64_t)b * T + t) * NH + h) * HD;
                double mx = -INFINITY, sum = 0.0;
                for (int j = lo; j <= p; j++) {
                    double s = 0.0;
                    for (int d = 0; d < HD; d++)
                        s += (double)qv[d] * kb[(int64_t)j * HD + d];
                    scratch[j] = (float)(s * scale);
                    if (scratch[j] > mx)
                        mx = scratch[j];
                }
                for (int j = lo; j <= p; j++) {
                    scratch[j] = (float)exp(scratch[j] - mx);
                    sum += scratch[j];
                }
                for (int d = 0; d < HD; d++) {
                    double acc = 0.0;
                    for (int j = lo; j <= p; j++)
                        acc += (double)scratch[j] * vb[(int64_t)j * HD + d];
                    o[d] = (float)(acc / sum);
                }
            }
        }
    }
}

static void ref_swiglu(float *out, const float *gate, const float *up, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

static void ref_add(float *y, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        y[i] += x[i];
}

static void ref_embed(float *y, const sw_tensor_t *table, const int32_t *ids, int M)
{
    int64_t H = table->shape[1];

    for (int m = 0; m < M; m++)
        for (int64_t i = 0; i < H; i++)
            y[(int64_t)m * H + i] = w_at(table, (int64_t)ids[m] * H + i);
}

size_t sw_attention_scratch_floats(int max_T)
{
    /* one score row per pool thread, padded to a cache line */
    size_t row = ((size_t)max_T + 15) & ~(size_t)15;
    return row * (size_t)sw_pool_threads(sw_pool_global());
}

/* Every row is computed on its own, except LLM.int8()'s outlier columns (taken over all rows). */
static int ref_matmul_batch_range(const sw_tensor_t *w, int M, int *lo, int *hi)
{
    if (w->dtype == SW_DTYPE_I8 && w->qs->threshold > 0.0f) {
        *lo = *hi = M;
        return -1;
    }
    *lo = 1;
    *hi = INT_MAX;
    return 0;
}

const sw_ops_t sw_ops_ref = {
    .name = "reference",
    .matmul = ref_matmul,
    .rmsnorm = ref_rmsnorm,
    .rope = ref_rope,
    .attention = ref_attention,
    .swiglu = ref_swiglu,
    .add = ref_add,
    .embed = ref_embed,
    .matmul_batch_range = ref_matmul_batch_range,
};
