/*
 * quant.c - bitsandbytes-compatible quantized formats: NF4 (+ double quantization), LLM.int8()
 * weights and blockwise 8-bit dynamic quantization. See quant.h for the layouts and
 * ../shared/reference/bnb.md for the bit-level facts this file reproduces.
 */
#include "quant.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "../util/alloc.h"

/* ---- tables ---- */

const float sw_nf4_code[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f,
};

/* Float32 midpoints of adjacent NF4 codes, the literals of bnb's dQuantizeNF4 (bnb.md §1.2). */
const float sw_nf4_thresholds[15] = {
    -0.8480963706970215f, -0.6106328964233398f, -0.4599952697753906f, -0.33967941999435425f,
    -0.23460739850997925f, -0.13791173696517944f, -0.045525018125772476f, 0.03979014977812767f,
    0.120255246758461f, 0.2035212516784668f, 0.2920137643814087f, 0.3893125355243683f,
    0.5016634464263916f, 0.6427869200706482f, 0.8614784479141235f,
};

/*
 * The signed dynamic map as bitsandbytes builds it (create_dynamic_map(signed=True)) under
 * torch 2.11: dumped from torch.linspace itself (tests/fixtures/make_bnb_reference.py, q8_map),
 * because its vectorized float32 loop rounds entries in ways no portable re-derivation reproduces
 * (other torch versions differ in a few last bits too; checkpoints carry their map, and
 * pipeline/weights.c honours a stored one). test-quant checks the values quoted in bnb.md §3.1;
 * test-bnb checks equality with the dump.
 */
const float sw_q8_dynamic_map[256] = {
    -0x1.fc6666p-1, -0x1.f53334p-1, -0x1.eep-1, -0x1.e6ccccp-1,
    -0x1.df999ap-1, -0x1.d86666p-1, -0x1.d13334p-1, -0x1.cap-1,
    -0x1.c2ccccp-1, -0x1.bb999ap-1, -0x1.b46666p-1, -0x1.ad3334p-1,
    -0x1.a6p-1, -0x1.9eccccp-1, -0x1.97999ap-1, -0x1.906666p-1,
    -0x1.893334p-1, -0x1.82p-1, -0x1.7accccp-1, -0x1.73999ap-1,
    -0x1.6c6668p-1, -0x1.653334p-1, -0x1.5ep-1, -0x1.56ccccp-1,
    -0x1.4f999ap-1, -0x1.486668p-1, -0x1.413334p-1, -0x1.3ap-1,
    -0x1.32ccccp-1, -0x1.2b999ap-1, -0x1.246668p-1, -0x1.1d3334p-1,
    -0x1.16p-1, -0x1.0eccccp-1, -0x1.079998p-1, -0x1.006666p-1,
    -0x1.f26664p-2, -0x1.e4p-2, -0x1.d59998p-2, -0x1.c73334p-2,
    -0x1.b8ccccp-2, -0x1.aa6666p-2, -0x1.9cp-2, -0x1.8d9998p-2,
    -0x1.7f3334p-2, -0x1.70ccccp-2, -0x1.626666p-2, -0x1.54p-2,
    -0x1.459998p-2, -0x1.373334p-2, -0x1.28ccccp-2, -0x1.1a6668p-2,
    -0x1.0cp-2, -0x1.fb3332p-3, -0x1.de6666p-3, -0x1.c1999ap-3,
    -0x1.a4ccccp-3, -0x1.88p-3, -0x1.6b3334p-3, -0x1.4e6666p-3,
    -0x1.31999ap-3, -0x1.14ccccp-3, -0x1.fp-4, -0x1.b66668p-4,
    -0x1.93d70ap-4, -0x1.8851eep-4, -0x1.7ccccep-4, -0x1.7147aep-4,
    -0x1.65c29p-4, -0x1.5a3d7p-4, -0x1.4eb854p-4, -0x1.433334p-4,
    -0x1.37ae14p-4, -0x1.2c28f6p-4, -0x1.20a3d6p-4, -0x1.151ebap-4,
    -0x1.09999ap-4, -0x1.fc28f6p-5, -0x1.e51ebap-5, -0x1.ce147ap-5,
    -0x1.b70a3ep-5, -0x1.ap-5, -0x1.88f5c2p-5, -0x1.71eb86p-5,
    -0x1.5ae146p-5, -0x1.43d70ap-5, -0x1.2ccccep-5, -0x1.15c29p-5,
    -0x1.fd70a4p-6, -0x1.cf5c2ap-6, -0x1.a147aep-6, -0x1.733334p-6,
    -0x1.451ebap-6, -0x1.170a3ep-6, -0x1.d1eb86p-7, -0x1.75c29p-7,
    -0x1.3e76c8p-7, -0x1.2c083p-7, -0x1.19999ap-7, -0x1.072b02p-7,
    -0x1.e978d4p-8, -0x1.c49ba6p-8, -0x1.9fbe76p-8, -0x1.7ae148p-8,
    -0x1.56041ap-8, -0x1.3126e8p-8, -0x1.0c49bap-8, -0x1.ced914p-9,
    -0x1.851eb8p-9, -0x1.3b645ap-9, -0x1.e353f8p-10, -0x1.4fdf3ap-10,
    -0x1.eecbfep-11, -0x1.b3d07cp-11, -0x1.78d5p-11, -0x1.3dd982p-11,
    -0x1.02de02p-11, -0x1.8fc506p-12, -0x1.19ce0ap-12, -0x1.47ae16p-13,
    -0x1.743e96p-14, -0x1.15df66p-14, -0x1.6f0068p-15, -0x1.64840cp-16,
    -0x1.040bfep-17, -0x1.b43528p-19, -0x1.27476ep-21, 0x0p+0,
    0x1.27476ep-21, 0x1.b43528p-19, 0x1.040bfep-17, 0x1.64840cp-16,
    0x1.6f0068p-15, 0x1.15df66p-14, 0x1.743e96p-14, 0x1.47ae16p-13,
    0x1.19ce0ap-12, 0x1.8fc506p-12, 0x1.02de02p-11, 0x1.3dd982p-11,
    0x1.78d5p-11, 0x1.b3d07cp-11, 0x1.eecbfep-11, 0x1.4fdf3ap-10,
    0x1.e353f8p-10, 0x1.3b645ap-9, 0x1.851eb8p-9, 0x1.ced914p-9,
    0x1.0c49bap-8, 0x1.3126e8p-8, 0x1.56041ap-8, 0x1.7ae148p-8,
    0x1.9fbe76p-8, 0x1.c49ba6p-8, 0x1.e978d4p-8, 0x1.072b02p-7,
    0x1.19999ap-7, 0x1.2c083p-7, 0x1.3e76c8p-7, 0x1.75c29p-7,
    0x1.d1eb86p-7, 0x1.170a3ep-6, 0x1.451ebap-6, 0x1.733334p-6,
    0x1.a147aep-6, 0x1.cf5c2ap-6, 0x1.fd70a4p-6, 0x1.15c29p-5,
    0x1.2ccccep-5, 0x1.43d70ap-5, 0x1.5ae146p-5, 0x1.71eb86p-5,
    0x1.88f5c2p-5, 0x1.ap-5, 0x1.b70a3ep-5, 0x1.ce147ap-5,
    0x1.e51ebap-5, 0x1.fc28f6p-5, 0x1.09999ap-4, 0x1.151ebap-4,
    0x1.20a3d6p-4, 0x1.2c28f6p-4, 0x1.37ae14p-4, 0x1.433334p-4,
    0x1.4eb854p-4, 0x1.5a3d7p-4, 0x1.65c29p-4, 0x1.7147aep-4,
    0x1.7ccccep-4, 0x1.8851eep-4, 0x1.93d70ap-4, 0x1.b66668p-4,
    0x1.fp-4, 0x1.14ccccp-3, 0x1.31999ap-3, 0x1.4e6666p-3,
    0x1.6b3334p-3, 0x1.88p-3, 0x1.a4ccccp-3, 0x1.c1999ap-3,
    0x1.de6666p-3, 0x1.fb3332p-3, 0x1.0cp-2, 0x1.1a6668p-2,
    0x1.28ccccp-2, 0x1.373334p-2, 0x1.459998p-2, 0x1.54p-2,
    0x1.626666p-2, 0x1.70ccccp-2, 0x1.7f3334p-2, 0x1.8d9998p-2,
    0x1.9cp-2, 0x1.aa6666p-2, 0x1.b8ccccp-2, 0x1.c73334p-2,
    0x1.d59998p-2, 0x1.e4p-2, 0x1.f26664p-2, 0x1.006666p-1,
    0x1.079998p-1, 0x1.0eccccp-1, 0x1.16p-1, 0x1.1d3334p-1,
    0x1.246668p-1, 0x1.2b999ap-1, 0x1.32ccccp-1, 0x1.3ap-1,
    0x1.413334p-1, 0x1.486668p-1, 0x1.4f999ap-1, 0x1.56ccccp-1,
    0x1.5ep-1, 0x1.653334p-1, 0x1.6c6668p-1, 0x1.73999ap-1,
    0x1.7accccp-1, 0x1.82p-1, 0x1.893334p-1, 0x1.906666p-1,
    0x1.97999ap-1, 0x1.9eccccp-1, 0x1.a6p-1, 0x1.ad3334p-1,
    0x1.b46666p-1, 0x1.bb999ap-1, 0x1.c2ccccp-1, 0x1.cap-1,
    0x1.d13334p-1, 0x1.d86666p-1, 0x1.df999ap-1, 0x1.e6ccccp-1,
    0x1.eep-1, 0x1.f53334p-1, 0x1.fc6666p-1, 0x1p+0
};

/* ---- blockwise 8-bit dynamic ---- */

/*
 * Exact port of bnb's dQuantize (csrc/kernels.cu, non-stochastic): binary descent from pivot 127
 * with steps 64..1, then a midpoint test against the neighbour on the side x lies. A value exactly
 * on a midpoint resolves to the descent's final pivot (the lower code when x lies above it, the
 * upper one when below). NaN walks down to code 0, as on CUDA.
 */
uint8_t sw_q8_quantize_one(const float *code, float x)
{
    int pivot = 127, upper_pivot = 255, lower_pivot = 0;
    float lower = -1.0f, upper = 1.0f;
    float val = code[pivot];

    for (int i = 64; i > 0; i >>= 1) {
        if (x > val) {
            lower_pivot = pivot;
            lower = val;
            pivot += i;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= i;
        }
        val = code[pivot];
    }
    if (upper_pivot == 255)
        upper = code[upper_pivot];
    if (lower_pivot == 0)
        lower = code[lower_pivot];
    if (x > val) {
        float mid = (upper + val) * 0.5f;

        return (uint8_t)(x > mid ? upper_pivot : pivot);
    } else {
        float mid = (lower + val) * 0.5f;

        return (uint8_t)(x < mid ? lower_pivot : pivot);
    }
}

/*
 * Blockwise-8 quantization, byte-identical to bnb's binary descent over the map
 * (sw_q8_quantize_one, ties included) but ~10x faster than running the descent per element: the descent is a monotone step function of the scaled
 * value v = x * (1/absmax), so it is fully described by the 255 thresholds T[c] = the smallest
 * float whose code exceeds c. A table indexed by the top 16 bits of v (sign, exponent, 7 mantissa
 * bits) gives the code of the bucket's lowest value; at most a couple of thresholds fall inside one
 * bucket, so a short walk finishes the job. Both tables are derived once from
 * sw_q8_quantize_one itself (so they follow the map exactly); test-bnb compares the codes with an
 * independent torch replay of bnb (ties included), and the derivation was checked against the
 * descent on every float in [-2, 2].
 */
static float q8_thresh[256];   /* q8_thresh[c]: smallest v with code(v) > c; [255] = NaN */
static uint8_t q8_bucket[65536];
static pthread_once_t q8_once = PTHREAD_ONCE_INIT;

/* Monotone integer key of a float's value (-0.0 just below +0.0) and back. */
static uint32_t f2key(float f)
{
    uint32_t u = sw_f32_bits(f);

    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

static float key2f(uint32_t k)
{
    return sw_bits_f32((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

static void q8_tables_init(void)
{
    const uint32_t klo = f2key(-2.0f), khi = f2key(2.0f);

    for (int c = 0; c < 255; c++) {
        uint32_t lo = klo, hi = khi; /* code(key2f(hi)) > c holds: code(2) = 255 */
        while (lo < hi) {
            uint32_t mid = lo + (hi - lo) / 2;
            if (sw_q8_quantize_one(sw_q8_dynamic_map, key2f(mid)) > c)
                hi = mid;
            else
                lo = mid + 1;
        }
        q8_thresh[c] = key2f(lo);
    }
    q8_thresh[255] = NAN; /* v >= NaN is false for every v, +inf included: the walk stops */
    for (uint32_t b = 0; b < 65536; b++) {
        /* the lowest value in the bucket: for negatives the largest magnitude */
        uint32_t u = b << 16 | ((b & 0x8000u) ? 0xffffu : 0);
        q8_bucket[b] = sw_q8_quantize_one(sw_q8_dynamic_map, sw_bits_f32(u));
    }
}

static inline uint8_t q8_code(float v)
{
    unsigned c = q8_bucket[sw_f32_bits(v) >> 16];

    /* false for NaN v: the NaN buckets hold code 0, as the descent gives. +inf (a subnormal
     * absmax makes 1/absmax overflow) lands on 255 and stops there. */
    while (v >= q8_thresh[c])
        c++;
    return (uint8_t)c;
}

void sw_q8_quantize(const float *x, size_t n, int bs, uint8_t *q, float *absmax)
{
    pthread_once(&q8_once, q8_tables_init);
    for (size_t b0 = 0, blk = 0; b0 < n; b0 += (size_t)bs, blk++) {
        size_t end = b0 + (size_t)bs < n ? b0 + (size_t)bs : n;
        float amax = 0.0f, inv;

        for (size_t i = b0; i < end; i++)
            amax = fmaxf(amax, fabsf(x[i]));
        absmax[blk] = amax;
        inv = 1.0f / amax; /* all-zero block: inf, 0 * inf = NaN -> code 0, as bnb */
        for (size_t i = b0; i < end; i++)
            q[i] = q8_code(x[i] * inv);
    }
}

void sw_q8_dequantize(const uint8_t *q, const float *absmax, size_t n, int bs, float *x)
{
    for (size_t b0 = 0, blk = 0; b0 < n; b0 += (size_t)bs, blk++) {
        size_t m = n - b0 < (size_t)bs ? n - b0 : (size_t)bs;
        float a = absmax[blk];
        for (size_t i = 0; i < m; i++)
            x[b0 + i] = sw_q8_dynamic_map[q[b0 + i]] * a;
    }
}

/* ---- NF4 ---- */

void sw_nf4_quantize(const float *x, size_t n, int blocksize, uint8_t *packed, float *absmax)
{
    memset(packed, 0, (n + 1) / 2);
    if (n % 2)
        packed[n / 2] = 7; /* the pad element is 0.0 -> code 7 in the low nibble */
    for (size_t b0 = 0, blk = 0; b0 < n; b0 += (size_t)blocksize, blk++) {
        size_t end = b0 + (size_t)blocksize < n ? b0 + (size_t)blocksize : n;
        float amax = 0.0f, inv;

        for (size_t i = b0; i < end; i++)
            amax = fmaxf(amax, fabsf(x[i]));
        absmax[blk] = amax;
        inv = 1.0f / amax;
        for (size_t i = b0; i < end; i++) {
            uint8_t q = sw_nf4_quantize_one(x[i] * inv);

            packed[i / 2] |= (uint8_t)(i % 2 ? q : q << 4);
        }
    }
}

void sw_nf4_dequantize(const uint8_t *packed, const float *absmax, size_t n, int blocksize,
                       float *x)
{
    for (size_t i = 0; i < n; i++) {
        unsigned q = i % 2 ? packed[i / 2] & 15u : packed[i / 2] >> 4;

        x[i] = sw_nf4_code[q] * absmax[i / (size_t)blocksize];
    }
}

void sw_nf4_double_quant(const float *absmax, int64_t nblocks, uint8_t *qabsmax,
                         float *nested_absmax, float *offset, float *scratch)
{
    double sum = 0.0;
    float off;

    for (int64_t b = 0; b < nblocks; b++)
        sum += absmax[b];
    off = nblocks ? (float)(sum / (double)nblocks) : 0.0f;
    for (int64_t b = 0; b < nblocks; b++)
        scratch[b] = absmax[b] - off;
    sw_q8_quantize(scratch, (size_t)nblocks, 256, qabsmax, nested_absmax);
    *offset = off;
}

void sw_nf4_absmax_range(const sw_qstate_t *qs, int64_t b0, int64_t n, float *out)
{
    if (!qs->qabsmax) {
        memcpy(out, qs->absmax + b0, (size_t)n * sizeof(float));
        return;
    }
    int64_t nbs = qs->nested_blocksize, j = b0 / nbs, left = nbs - b0 % nbs; /* no division per block */

    for (int64_t i = 0; i < n; i++) {
        /* volatile keeps the two roundings apart even where the compiler would contract an FMA */
        volatile float p = sw_q8_dynamic_map[qs->qabsmax[b0 + i]] * qs->nested_absmax[j];

        out[i] = p + qs->offset;
        if (--left == 0) {
            j++;
            left = nbs;
        }
    }
}

/* ---- LLM.int8() ---- */

void sw_int8_quantize_rows(const float *w, int64_t N, int64_t K, int8_t *q, float *scb)
{
    for (int64_t n = 0; n < N; n++) {
        const float *r = w + n * K;
        float amax = 0.0f, scale;

        for (int64_t k = 0; k < K; k++)
            amax = fmaxf(amax, fabsf(r[k]));
        scb[n] = amax;
        scale = 127.0f / amax;
        for (int64_t k = 0; k < K; k++) {
            float v = amax > 0.0f ? nearbyintf(r[k] * scale) : 0.0f;

            q[n * K + k] = (int8_t)fmaxf(-127.0f, fminf(127.0f, v));
        }
    }
}

/* ---- quantized tensors ---- */

#define ALIGN64(x) (((x) + 63) & ~(size_t)63)
#define CONVERT_CHUNK 65536 /* elements of the dense weight converted to fp32 at a time */

size_t sw_qtensor_state_bytes(const sw_tensor_t *w)
{
    const sw_qstate_t *qs = w->qs;

    if (!qs)
        return 0;
    if (w->dtype == SW_DTYPE_I8)
        return (size_t)w->shape[0] * sizeof(float);
    if (qs->qabsmax) {
        int64_t nn = (qs->nblocks + qs->nested_blocksize - 1) / qs->nested_blocksize;
        return (size_t)qs->nblocks + (size_t)nn * sizeof(float) + sizeof(float);
    }
    return (size_t)qs->nblocks * sizeof(float);
}

double sw_quant_bits_per_weight(const sw_tensor_t *w)
{
    double numel = (double)sw_tensor_numel(w);

    if (numel <= 0)
        return 0.0;
    return 8.0 * (double)(sw_tensor_nbytes(w) + sw_qtensor_state_bytes(w)) / numel;
}

static int check_dense_2d(const sw_tensor_t *d)
{
    if (d->ndim != 2 || d->shape[0] <= 0 || d->shape[1] <= 0 || d->qs)
        return -EINVAL;
    if (d->dtype != SW_DTYPE_F32 && d->dtype != SW_DTYPE_F16 && d->dtype != SW_DTYPE_BF16)
        return -EINVAL;
    return 0;
}

/* fp32 copy of elements [i0, i0 + n) of a dense tensor (any alignment). */
static void dense_f32(const sw_tensor_t *d, size_t i0, size_t n, float *out)
{
    size_t es = sw_dtype_size(d->dtype);
    const unsigned char *p = (const unsigned char *)d->data + i0 * es;

    if (d->dtype == SW_DTYPE_F32) {
        memcpy(out, p, n * 4);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        uint16_t h;

        memcpy(&h, p + i * 2, 2);
        out[i] = d->dtype == SW_DTYPE_F16 ? sw_f16_to_f32(h) : sw_bf16_to_f32(h);
    }
}

int sw_quantize_nf4(const sw_tensor_t *dense, int blocksize, int double_quant, sw_tensor_t *out)
{
    size_t numel, nblocks, nnested, off_data, off_abs, off_nested, total, chunk;
    unsigned char *base = NULL;
    float *tmp = NULL, *absmax = NULL;
    sw_qstate_t *qs;
    int r;

    if ((r = check_dense_2d(dense)) < 0)
        return r;
    if (blocksize < 32 || blocksize > 4096 || (blocksize & (blocksize - 1)))
        return -EINVAL;
    numel = (size_t)dense->shape[0] * (size_t)dense->shape[1];
    nblocks = (numel + (size_t)blocksize - 1) / (size_t)blocksize;
    nnested = (nblocks + 255) / 256;
    off_data = ALIGN64(sizeof(sw_qstate_t));
    off_abs = ALIGN64(off_data + (numel + 1) / 2);
    off_nested = ALIGN64(off_abs + nblocks * (double_quant ? 1 : sizeof(float)));
    total = off_nested + (double_quant ? nnested * sizeof(float) : 0);
    chunk = (CONVERT_CHUNK / (size_t)blocksize) * (size_t)blocksize; /* whole, even blocks */
    base = sw_alloc_aligned(64, total);
    tmp = sw_malloc(chunk * sizeof(float));
    absmax = double_quant ? sw_malloc(2 * nblocks * sizeof(float)) : (float *)(void *)(base + off_abs);
    if (!base || !tmp || !absmax) {
        r = -ENOMEM;
        goto out;
    }
    memset(base, 0, off_data);
    for (size_t i0 = 0; i0 < numel; i0 += chunk) {
        size_t n = numel - i0 < chunk ? numel - i0 : chunk;

        dense_f32(dense, i0, n, tmp);
        sw_nf4_quantize(tmp, n, blocksize, base + off_data + i0 / 2, absmax + i0 / (size_t)blocksize);
    }
    qs = (sw_qstate_t *)(void *)base;
    qs->blocksize = blocksize;
    qs->nblocks = (int64_t)nblocks;
    qs->nested_blocksize = 256;
    if (double_quant) {
        uint8_t *qa = base + off_abs;
        float *na = (float *)(void *)(base + off_nested);

        sw_nf4_double_quant(absmax, (int64_t)nblocks, qa, na, &qs->offset, absmax + nblocks);
        qs->qabsmax = qa;
        qs->nested_absmax = na;
    } else {
        qs->absmax = absmax;
    }
    qs->owned = base;
    memset(out, 0, sizeof(*out));
    out->dtype = SW_DTYPE_NF4;
    out->ndim = 2;
    out->shape[0] = dense->shape[0];
    out->shape[1] = dense->shape[1];
    out->data = base + off_data;
    out->qs = qs;
    base = NULL;
    r = 0;
out:
    if (double_quant)
        sw_free(absmax);
    sw_free(tmp);
    sw_free(base);
    return r;
}

int sw_quantize_int8(const sw_tensor_t *dense, float threshold, sw_tensor_t *out)
{
    size_t N, K, off_data, off_scb, total;
    unsigned char *base = NULL;
    float *row = NULL;
    sw_qstate_t *qs;
    int r;

    if ((r = check_dense_2d(dense)) < 0)
        return r;
    if (!(threshold >= 0.0f))
        return -EINVAL;
    N = (size_t)dense->shape[0];
    K = (size_t)dense->shape[1];
    off_data = ALIGN64(sizeof(sw_qstate_t));
    off_scb = ALIGN64(off_data + N * K);
    total = off_scb + N * sizeof(float);
    base = sw_alloc_aligned(64, total);
    row = sw_malloc(K * sizeof(float));
    if (!base || !row) {
        r = -ENOMEM;
        goto out;
    }
    memset(base, 0, off_data);
    for (size_t n = 0; n < N; n++) {
        dense_f32(dense, n * K, K, row);
        for (size_t k = 0; k < K; k++) /* bnb quantizes the fp16 weight */
            row[k] = sw_f16_to_f32(sw_f32_to_f16(row[k]));
        sw_int8_quantize_rows(row, 1, (int64_t)K, (int8_t *)(void *)(base + off_data + n * K),
                              (float *)(void *)(base + off_scb) + n);
    }
    qs = (sw_qstate_t *)(void *)base;
    qs->scb = (const float *)(void *)(base + off_scb);
    qs->threshold = threshold;
    qs->owned = base;
    memset(out, 0, sizeof(*out));
    out->dtype = SW_DTYPE_I8;
    out->ndim = 2;
    out->shape[0] = (int64_t)N;
    out->shape[1] = (int64_t)K;
    out->data = base + off_data;
    out->qs = qs;
    base = NULL;
    r = 0;
out:
    sw_free(row);
    sw_free(base);
    return r;
}

void sw_qtensor_free(sw_tensor_t *t)
{
    if (t->qs && t->qs->owned)
        sw_free(t->qs->owned);
    else if (t->owned)
        sw_free(t->data);
    memset(t, 0, sizeof(*t));
}

void sw_qtensor_dequantize(const sw_tensor_t *w, float *out)
{
    size_t numel = (size_t)sw_tensor_numel(w);

    if (w->dtype == SW_DTYPE_NF4) {
        const sw_qstate_t *qs = w->qs;
        size_t bs = (size_t)qs->blocksize;

        for (size_t i0 = 0; i0 < numel; i0 += bs) {
            size_t n = numel - i0 < bs ? numel - i0 : bs;
            float a;

            sw_nf4_absmax_range(qs, (int64_t)(i0 / bs), 1, &a);
            for (size_t i = i0; i < i0 + n; i++) {
                uint8_t byte = ((const uint8_t *)w->data)[i / 2];

                out[i] = sw_nf4_code[i % 2 ? byte & 15u : byte >> 4] * a;
            }
        }
    } else if (w->dtype == SW_DTYPE_I8) {
        size_t K = (size_t)w->shape[1];
        const int8_t *q = w->data;

        for (size_t i = 0; i < numel; i++)
            out[i] = (float)q[i] * w->qs->scb[i / K] / 127.0f;
    } else {
        dense_f32(w, 0, numel, out);
    }
}
