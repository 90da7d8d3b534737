/*
 * backward.c - the backward op tables of kernels/backward.h: `sw_bwd_ops_ref` (plain loops, one
 * thread, double accumulation) and `sw_bwd_ops_cpu` (threaded over the global pool, fp32).
 *
 * Both read weights through one decoder, w_decode(), which gives flattened elements of any weight
 * format exactly as the forward reads them (ref.c's w_at, fast.c's converters and nf4_decode, all
 * bit-identical): so dX = dY @ W uses the very weights the forward multiplied with.
 *
 * The fast matmul_dx, dx (M, K) = dy (M, N) @ W (N, K): one pool task per (64 rows of dy) x (128
 * columns of W). A task keeps its 64 x 128 fp32 accumulator on the stack (32 KiB), decodes 16 rows
 * x 128 columns of W at a time into a stack tile (8 KiB) and adds dy[m, n] * W[n, :] for its rows,
 * four rows of W per pass. Every inner loop has a fixed trip count of 8, so -O2 vectorizes it; on
 * AVX2 machines the same loops are compiled a second time for AVX2+FMA. The rest of the ops are
 * cheap next to it (O(M H) versus O(M H I)) and share one row loop between both tables; the fast
 * table only spreads their rows over the pool. The attention backward splits over (sequence, KV
 * head) pairs, so the heads of a GQA group that add into the same dk/dv run in one task.
 *
 * Measured (2-core AVX2 machine shared with other jobs, M = 256, W 4096 x 4096): matmul_dx 78
 * GFLOP/s for bf16 and 48 for NF4 (scalar tile decode), against 159 and 157 for the forward
 * matmul of the same shape. Left to do: vector tile decoding, and a dq / dk,dv split of the
 * attention backward so that a batch of one sequence with few KV heads uses every thread.
 */
#include "../backward.h"

#include <math.h>
#include <string.h>

#include "../quant.h"
#include "../../util/pool.h"

#if defined(__x86_64__) || defined(__i386__)
#define SW_BWD_X86 1
#define SW_AVX2 __attribute__((target("avx2,fma")))
#else
#define SW_BWD_X86 0
#endif
#define SW_INLINE static inline __attribute__((always_inline))

#define DX_KC 128 /* columns of dx per task */
#define DX_MB 64  /* rows of dx per task */
#define DX_NT 16  /* rows of W decoded per tile */

/* Work (multiply-adds) below which an op runs on the calling thread. */
#define PAR_MIN_WORK 65536

/* ------------------------------------------------------------------------------------------ */
/* weights (any thread)                                                                         */

/* dst (n) = flattened elements [i0, i0 + n) of weight w (N, K) in fp32, as the forward reads
 * them; an unknown dtype gives NaN. */
static void w_decode(const sw_tensor_t *w, int64_t i0, size_t n, float *dst)
{
    const unsigned char *p = w->data;

    switch (w->dtype) {
    case SW_DTYPE_F32:
        memcpy(dst, p + 4 * (size_t)i0, n * 4);
        return;
    case SW_DTYPE_F16:
    case SW_DTYPE_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * ((size_t)i0 + i), 2);
            dst[i] = w->dtype == SW_DTYPE_F16 ? sw_f16_to_f32(h) : sw_bf16_to_f32(h);
        }
        return;
    case SW_DTYPE_NF4: {
        int64_t bs = w->qs->blocksize, i = i0, end = i0 + (int64_t)n;
        while (i < end) {
            int64_t blk = i / bs, stop = (blk + 1) * bs < end ? (blk + 1) * bs : end;
            float a;
            sw_nf4_absmax_range(w->qs, blk, 1, &a);
            for (; i < stop; i++) {
                uint8_t b = p[i / 2];
                dst[i - i0] = sw_nf4_code[i % 2 ? b & 15u : b >> 4] * a;
            }
        }
        return;
    }
    case SW_DTYPE_I8: {
        const int8_t *cb = w->data;
        int64_t K = w->shape[1];
        for (size_t i = 0; i < n; i++) {
            int64_t idx = i0 + (int64_t)i;
            dst[i] = (float)cb[idx] * w->qs->scb[idx / K] / 127.0f;
        }
        return;
    }
    default:
        for (size_t i = 0; i < n; i++)
            dst[i] = NAN;
        return;
    }
}

/* Runs fn over [0, n) tasks on the global pool, or on this thread when the work is small. */
static void par_for(size_t n, double work, sw_pool_fn fn, void *ctx)
{
    if (work < PAR_MIN_WORK || n < 2)
        fn(ctx, 0, n, 0);
    else
        sw_pool_for(sw_pool_global(), n, 1, fn, ctx);
}

/* Whether the fast table may use AVX2+FMA: the forward backend's choice (SW_CPU_SIMD and
 * sw_cpu_force_portable apply to both). */
static int bwd_use_avx2(void)
{
    return strcmp(sw_cpu_simd_name(), "portable") != 0;
}

/* ------------------------------------------------------------------------------------------ */
/* reference (one thread, double accumulation)                                                  */

static void ref_matmul_dx(float *dx, const float *dy, const sw_tensor_t *w, int M, int accumulate)
{
    int64_t N = w->shape[0], K = w->shape[1];

    for (int m = 0; m < M; m++) {
        for (int64_t k = 0; k < K; k++) {
            double acc = 0.0;
            for (int64_t n = 0; n < N; n++) {
                float wv;
                w_decode(w, n * K + k, 1, &wv);
                acc += (double)dy[(int64_t)m * N + n] * wv;
            }
            if (accumulate)
                acc += dx[(int64_t)m * K + k];
            dx[(int64_t)m * K + k] = (float)acc;
        }
    }
}

/* Softmax weights p[lo..t] of query qv against keys kb (T, HD), as the forward computes them. */
static void ref_softmax_row(float *p, const float *qv, const float *kb, int lo, int t, int HD,
                            float scale)
{
    double mx = -INFINITY, sum = 0.0;

    for (int j = lo; j <= t; j++) {
        double s = 0.0;
        for (int d = 0; d < HD; d++)
            s += (double)qv[d] * kb[(int64_t)j * HD + d];
        p[j] = (float)(s * scale);
        if (p[j] > mx)
            mx = p[j];
    }
    for (int j = lo; j <= t; j++) {
        p[j] = (float)exp(p[j] - mx);
        sum += p[j];
    }
    for (int j = lo; j <= t; j++)
        p[j] = (float)(p[j] / sum);
}

/*
 * Per query row: p = softmax(scale q.k_j), o = sum_j p_j v_j. With g = dout of the row:
 * dp_j = g.v_j, dv_j += p_j g, ds_j = p_j (dp_j - sum_l p_l dp_l), dq = scale sum_j ds_j k_j,
 * dk_j += scale ds_j q.
 */
static void ref_attention_bwd(float *dq, float *dk, float *dv, const float *dout, const float *q,
                              const float *k, const float *v, int B, int T, int NH, int NKV,
                              int HD, int window, float scale, float *scratch)
{
    int group = NH / NKV;
    float *p = scratch, *dp = scratch + T;

    memset(dk, 0, (size_t)B * NKV * T * HD * sizeof(float));
    memset(dv, 0, (size_t)B * NKV * T * HD * sizeof(float));
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            int lo = (window > 0 && t - window + 1 > 0) ? t - window + 1 : 0;
            for (int h = 0; h < NH; h++) {
                size_t kvoff = ((size_t)b * NKV + (size_t)(h / group)) * T * HD;
                size_t qoff = (((size_t)b * T + t) * NH + h) * HD;
                const float *qv = q + qoff, *g = dout + qoff, *kb = k + kvoff, *vb = v + kvoff;
                float *dkb = dk + kvoff, *dvb = dv + kvoff;
                double D = 0.0;

                ref_softmax_row(p, qv, kb, lo, t, HD, scale);
                for (int j = lo; j <= t; j++) {
                    double s = 0.0;
                    for (int d = 0; d < HD; d++)
                        s += (double)g[d] * vb[(int64_t)j * HD + d];
                    dp[j] = (float)s;
                    D += (double)p[j] * s;
                }
                for (int d = 0; d < HD; d++) {
                    double acc = 0.0;
                    for (int j = lo; j <= t; j++)
                        acc += ((double)p[j] * ((double)dp[j] - D)) * kb[(int64_t)j * HD + d];
                    dq[qoff + d] = (float)(acc * scale);
                }
                for (int j = lo; j <= t; j++) {
                    double ds = (double)p[j] * ((double)dp[j] - D) * scale;
                    for (int d = 0; d < HD; d++) {
                        dkb[(int64_t)j * HD + d] += (float)(ds * qv[d]);
                        dvb[(int64_t)j * HD + d] += (float)((double)p[j] * g[d]);
                    }
                }
            }
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* row ops shared by both tables (any thread)                                                   */

/* dx_i = r w_i dy_i - x_i r^3 / H * sum_j w_j dy_j x_j, r = 1 / sqrt(mean(x^2) + eps) in fp32
 * as the forward rounds it. Reads a row of dy completely before writing it (dx may equal dy). */
static void rms_rows(float *dx, const float *dy, const float *x, const float *w, int H, float eps,
                     size_t m0, size_t m1)
{
    for (size_t m = m0; m < m1; m++) {
        const float *xr = x + m * (size_t)H, *gr = dy + m * (size_t)H;
        float *o = dx + m * (size_t)H;
        double ss = 0.0, dot = 0.0, c;
        float r;

        for (int i = 0; i < H; i++) {
            ss += (double)xr[i] * xr[i];
            dot += (double)w[i] * gr[i] * xr[i];
        }
        r = 1.0f / sqrtf((float)(ss / H) + eps);
        c = dot * ((double)r * r * r) / H;
        for (int i = 0; i < H; i++)
            o[i] = (float)((double)r * w[i] * gr[i] - xr[i] * c);
    }
}

/* The transpose of ref.c's rotation: (a, b) := (c a + s b, c b - s a), angles computed alike. */
static void rope_rows(float *x, const int32_t *pos, int nh, int HD, const float *inv_freq,
                      float attn_factor, size_t m0, size_t m1)
{
    int half = HD / 2;

    for (size_t m = m0; m < m1; m++) {
        for (int i = 0; i < half; i++) {
            float ang = (float)pos[m] * inv_freq[i];
            float c = (float)cos((double)ang) * attn_factor;
            float s = (float)sin((double)ang) * attn_factor;
            for (int h = 0; h < nh; h++) {
                float *v = x + (m * (size_t)nh + (size_t)h) * HD;
                float a = v[i], b = v[i + half];
                v[i] = a * c + b * s;
                v[i + half] = b * c - a * s;
            }
        }
    }
}

/* silu(g) = g sigmoid(g); d silu / dg = sigmoid(g) (1 + g (1 - sigmoid(g))). */
static void swiglu_range(float *dgate, float *dup, const float *dout, const float *gate,
                         const float *up, size_t i0, size_t i1)
{
    for (size_t i = i0; i < i1; i++) {
        double o = dout[i], g = gate[i], sg = 1.0 / (1.0 + exp(-g));
        float du = (float)(o * g * sg), dg = (float)(o * up[i] * sg * (1.0 + g * (1.0 - sg)));
        dup[i] = du;
        dgate[i] = dg;
    }
}

static void ref_rmsnorm_bwd(float *dx, const float *dy, const float *x, const float *w, int M,
                            int H, float eps)
{
    rms_rows(dx, dy, x, w, H, eps, 0, (size_t)M);
}

static void ref_rope_bwd(float *d, const int32_t *pos, int M, int nh, int HD,
                         const float *inv_freq, float attn_factor)
{
    rope_rows(d, pos, nh, HD, inv_freq, attn_factor, 0, (size_t)M);
}

static void ref_swiglu_bwd(float *dgate, float *dup, const float *dout, const float *gate,
                           const float *up, size_t n)
{
    swiglu_range(dgate, dup, dout, gate, up, 0, n);
}

/* ------------------------------------------------------------------------------------------ */
/* fast: matmul_dx (pool threads)                                                               */

struct dx_ctx {
    float *dx;
    const float *dy;
    const sw_tensor_t *w;
    int64_t M, N, K;
    int accumulate, avx2;
    size_t nkc; /* column chunks */
};

/*
 * One task: rows [m0, m0 + mb) x columns [k0, k0 + kn) of dx. acc (DX_MB x DX_KC) and the W tile
 * (DX_NT x DX_KC) are zero-padded to kp = kn rounded up to 8, so every inner loop runs a fixed
 * 8 lanes.
 */
SW_INLINE void dx_task_body(const struct dx_ctx *c, int64_t m0, int64_t mb, int64_t k0,
                            int64_t kn)
{
    float acc[DX_MB * DX_KC], tile[DX_NT * DX_KC];
    int64_t N = c->N, K = c->K, kp = (kn + 7) & ~(int64_t)7;

    memset(acc, 0, sizeof(float) * (size_t)(mb * DX_KC));
    memset(tile, 0, sizeof(tile));
    for (int64_t n0 = 0; n0 < N; n0 += DX_NT) {
        int64_t nt = N - n0 < DX_NT ? N - n0 : DX_NT;
        for (int64_t r = 0; r < nt; r++)
            w_decode(c->w, (n0 + r) * K + k0, (size_t)kn, tile + r * DX_KC);
        for (int64_t m = 0; m < mb; m++) {
            const float *a = c->dy + (m0 + m) * N + n0;
            float *o = acc + m * DX_KC;
            int64_t r = 0;
            for (; r + 4 <= nt; r += 4) {
                const float a0 = a[r], a1 = a[r + 1], a2 = a[r + 2], a3 = a[r + 3];
                const float *t0 = tile + r * DX_KC, *t1 = t0 + DX_KC, *t2 = t1 + DX_KC,
                            *t3 = t2 + DX_KC;
                for (int64_t i = 0; i < kp; i += 8)
                    for (int j = 0; j < 8; j++)
                        o[i + j] += a0 * t0[i + j] + a1 * t1[i + j] + a2 * t2[i + j] +
                                    a3 * t3[i + j];
            }
            for (; r < nt; r++) {
                const float a0 = a[r], *t0 = tile + r * DX_KC;
                for (int64_t i = 0; i < kp; i += 8)
                    for (int j = 0; j < 8; j++)
                        o[i + j] += a0 * t0[i + j];
            }
        }
    }
    for (int64_t m = 0; m < mb; m++) {
        float *d = c->dx + (m0 + m) * K + k0;
        const float *o = acc + m * DX_KC;
        if (c->accumulate)
            for (int64_t i = 0; i < kn; i++)
                d[i] += o[i];
        else
            memcpy(d, o, sizeof(float) * (size_t)kn);
    }
}

static void dx_task_portable(const struct dx_ctx *c, int64_t m0, int64_t mb, int64_t k0,
                             int64_t kn)
{
    dx_task_body(c, m0, mb, k0, kn);
}

#if SW_BWD_X86
SW_AVX2 static void dx_task_avx2(const struct dx_ctx *c, int64_t m0, int64_t mb, int64_t k0,
                                 int64_t kn)
{
    dx_task_body(c, m0, mb, k0, kn);
}
#endif

static void dx_tasks(void *ctx, size_t b, size_t e, int tid)
{
    const struct dx_ctx *c = ctx;

    (void)tid;
    for (size_t t = b; t < e; t++) {
        int64_t m0 = (int64_t)(t / c->nkc) * DX_MB, k0 = (int64_t)(t % c->nkc) * DX_KC;
        int64_t mb = c->M - m0 < DX_MB ? c->M - m0 : DX_MB;
        int64_t kn = c->K - k0 < DX_KC ? c->K - k0 : DX_KC;
#if SW_BWD_X86
        if (c->avx2) {
            dx_task_avx2(c, m0, mb, k0, kn);
            continue;
        }
#endif
        dx_task_portable(c, m0, mb, k0, kn);
    }
}

static void cpu_matmul_dx(float *dx, const float *dy, const sw_tensor_t *w, int M, int accumulate)
{
    struct dx_ctx c = { dx, dy, w, M, w->shape[0], w->shape[1], accumulate, bwd_use_avx2(), 0 };
    size_t nmb = ((size_t)M + DX_MB - 1) / DX_MB;

    c.nkc = ((size_t)c.K + DX_KC - 1) / DX_KC;
    par_for(nmb * c.nkc, (double)M * (double)c.N * (double)c.K, dx_tasks, &c);
}

/* ------------------------------------------------------------------------------------------ */
/* fast: attention (pool threads, one task per (sequence, KV head))                             */

struct abwd_ctx {
    float *dq, *dk, *dv;
    const float *dout, *q, *k, *v;
    int B, T, NH, NKV, HD, window;
    float scale;
    float *scratch;
    size_t row; /* scratch floats per thread */
};

static float dotf(const float *a, const float *b, int n)
{
    float acc[8] = { 0 };
    int i = 0;

    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += a[i + j] * b[i + j];
    for (; i < n; i++)
        acc[0] += a[i] * b[i];
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

static void axpyf(float *o, float a, const float *x, int n)
{
    for (int i = 0; i < n; i++)
        o[i] += a * x[i];
}

static void abwd_task(void *ctx, size_t b0, size_t e0, int tid)
{
    const struct abwd_ctx *c = ctx;
    int T = c->T, HD = c->HD, NH = c->NH, group = c->NH / c->NKV;
    float *p = c->scratch + (size_t)tid * c->row, *dp = p + T;

    for (size_t task = b0; task < e0; task++) {
        int b = (int)(task / (size_t)c->NKV), g = (int)(task % (size_t)c->NKV);
        size_t kvoff = ((size_t)b * c->NKV + (size_t)g) * T * HD;
        const float *kb = c->k + kvoff, *vb = c->v + kvoff;
        float *dkb = c->dk + kvoff, *dvb = c->dv + kvoff;

        memset(dkb, 0, (size_t)T * HD * sizeof(float));
        memset(dvb, 0, (size_t)T * HD * sizeof(float));
        for (int t = 0; t < T; t++) {
            int lo = (c->window > 0 && t - c->window + 1 > 0) ? t - c->window + 1 : 0;
            for (int h = g * group; h < (g + 1) * group; h++) {
                size_t qoff = (((size_t)b * T + t) * NH + h) * HD;
                const float *qv = c->q + qoff, *gv = c->dout + qoff;
                float *dqv = c->dq + qoff, mx = -INFINITY, sum = 0.0f, D = 0.0f;

                for (int j = lo; j <= t; j++) {
                    p[j] = dotf(qv, kb + (size_t)j * HD, HD) * c->scale;
                    mx = p[j] > mx ? p[j] : mx;
                }
                for (int j = lo; j <= t; j++) {
                    p[j] = expf(p[j] - mx);
                    sum += p[j];
                }
                for (int j = lo; j <= t; j++) {
                    p[j] /= sum;
                    dp[j] = dotf(gv, vb + (size_t)j * HD, HD);
                    D += p[j] * dp[j];
                }
                memset(dqv, 0, (size_t)HD * sizeof(float));
                for (int j = lo; j <= t; j++) {
                    float ds = p[j] * (dp[j] - D) * c->scale;
                    axpyf(dqv, ds, kb + (size_t)j * HD, HD);
                    axpyf(dkb + (size_t)j * HD, ds, qv, HD);
                    axpyf(dvb + (size_t)j * HD, p[j], gv, HD);
                }
            }
        }
    }
}

static void cpu_attention_bwd(float *dq, float *dk, float *dv, const float *dout, const float *q,
                              const float *k, const float *v, int B, int T, int NH, int NKV,
                              int HD, int window, float scale, float *scratch)
{
    struct abwd_ctx c = { dq, dk, dv, dout, q, k, v, B, T, NH, NKV, HD, window, scale, scratch,
                          ((size_t)2 * T + 15) & ~(size_t)15 };

    par_for((size_t)B * NKV, (double)B * NH * T * (double)T * HD, abwd_task, &c);
}

/* ------------------------------------------------------------------------------------------ */
/* fast: row ops (pool threads)                                                                 */

struct rows_ctx {
    float *out, *out2;
    const float *a, *b, *c, *w;
    const int32_t *pos;
    int H, nh, HD;
    float eps, factor;
    size_t n;
};

static void rms_task(void *ctx, size_t b, size_t e, int tid)
{
    const struct rows_ctx *c = ctx;

    (void)tid;
    rms_rows(c->out, c->a, c->b, c->w, c->H, c->eps, b, e);
}

static void cpu_rmsnorm_bwd(float *dx, const float *dy, const float *x, const float *w, int M,
                            int H, float eps)
{
    struct rows_ctx c = { .out = dx, .a = dy, .b = x, .w = w, .H = H, .eps = eps };

    par_for((size_t)M, (double)M * H, rms_task, &c);
}

static void rope_task(void *ctx, size_t b, size_t e, int tid)
{
    const struct rows_ctx *c = ctx;

    (void)tid;
    rope_rows(c->out, c->pos, c->nh, c->HD, c->w, c->factor, b, e);
}

static void cpu_rope_bwd(float *d, const int32_t *pos, int M, int nh, int HD,
                         const float *inv_freq, float attn_factor)
{
    struct rows_ctx c = { .out = d, .pos = pos, .w = inv_freq, .nh = nh, .HD = HD,
                          .factor = attn_factor };

    par_for((size_t)M, (double)M * nh * HD * 4, rope_task, &c);
}

static void swiglu_task(void *ctx, size_t b, size_t e, int tid)
{
    const struct rows_ctx *c = ctx;
    size_t i0 = b * 4096, i1 = e * 4096 < c->n ? e * 4096 : c->n;

    (void)tid;
    swiglu_range(c->out, c->out2, c->a, c->b, c->c, i0, i1);
}

static void cpu_swiglu_bwd(float *dgate, float *dup, const float *dout, const float *gate,
                           const float *up, size_t n)
{
    struct rows_ctx c = { .out = dgate, .out2 = dup, .a = dout, .b = gate, .c = up, .n = n };

    par_for((n + 4095) / 4096, (double)n * 8, swiglu_task, &c);
}

/* ------------------------------------------------------------------------------------------ */

size_t sw_attention_bwd_scratch_floats(int T)
{
    size_t row = ((size_t)2 * T + 15) & ~(size_t)15;

    return row * (size_t)sw_pool_threads(sw_pool_global());
}

const sw_bwd_ops_t sw_bwd_ops_ref = {
    .name = "reference",
    .matmul_dx = ref_matmul_dx,
    .rmsnorm = ref_rmsnorm_bwd,
    .rope = ref_rope_bwd,
    .attention = ref_attention_bwd,
    .swiglu = ref_swiglu_bwd,
};

const sw_bwd_ops_t sw_bwd_ops_cpu = {
    .name = "cpu",
    .matmul_dx = cpu_matmul_dx,
    .rmsnorm = cpu_rmsnorm_bwd,
    .rope = cpu_rope_bwd,
    .attention = cpu_attention_bwd,
    .swiglu = cpu_swiglu_bwd,
};

const sw_bwd_ops_t *sw_bwd_ops_for(const sw_ops_t *ops)
{
    return ops == &sw_ops_ref ? &sw_bwd_ops_ref : &sw_bwd_ops_cpu;
}
