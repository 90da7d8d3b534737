/*
 * bench-gpu.c - the CUDA backend's speed, as issue 8's Benchmark section asks, in one run:
 *
 *   bench-gpu [--no-model] [--layers N] [device]      (default device 0, 2 distinct layers)
 *
 * 1. Device copy bandwidth: cudaMemcpy device -> device of 1 GiB, bytes read plus written;
 *    every bandwidth below is also given as a fraction of it.
 * 2. GEMV (M = 1 and 16 rows of fp32 x) for Llama-2 7B and 70B Linear shapes (N x K): 4096 x
 *    4096 (7B q/k/v/o), 4096 x 11008 (7B down), 8192 x 28672 (70B down), as achieved
 *    bandwidth of weight bytes (codes + scales): NF4 (bnb layout, blocks of 64, double-quantized
 *    absmax, 4.127 bits/weight) in every GEMV variant (backend.h), Int8 (LLM.int8(), threshold
 *    6, 8 + 32/K bits) and bf16. Each weight is held in enough copies (>= 256 MiB together)
 *    that consecutive calls rotate through memory the L2 cannot hold; each figure is the median
 *    of 7 timings of >= 20 calls (host clock around queued calls and a sync; launch gaps
 *    included, as in decode).
 * 3. Attention: decode (T = 1) over a 4096-position cache for the 7B shape (32 heads, MHA) and
 *    a 70B-like GQA shape (64 query heads, 8 KV heads), first kernel vs split-KV, as K/V bytes
 *    read per second; prefill of 2048 tokens (7B shape), first kernel vs the fused one, as
 *    TFLOP/s of the causal half (4 * NH * HD * T(T+1)/2 flops). CUDA event timing, medians.
 * 4. bf16 matmul rate (FAST mode: tensor cores, fp32 accumulation) at M = 2048 for the 7B
 *    shapes: the denominator of the prefill target.
 * 5. Whole model, Llama-2-7B shape (H 4096, I 11008, 32 layers, 32 heads, vocab 32000), random
 *    weights made here in bf16, Int8 and NF4: batch-1 decode ms/token (median of 64 steps after
 *    a 16-token prompt; every step = 32 blocks of rmsnorm, q/k/v, rope, KV append, attention,
 *    o-proj, add, rmsnorm, gate/up, swiglu, down, add, then the final norm and the bf16 LM head;
 *    the embedding lookup is left out), and a 2048-token prefill in one pass (FAST mode), as
 *    ms and as a fraction of the bf16 matmul rate of 4. To keep the setup within seconds only
 *    --layers distinct blocks are made and block l uses weights l % layers: each block's
 *    weights (>= 100 MB in NF4) are far larger than the L2, so every block still streams its
 *    weights from device memory and the time per token is that of 32 distinct blocks.
 * Prints markdown tables (the last one sums up against the targets); without a GPU it
 * says so and exits 77. Sections 2-5 for NF4/Int8 variants and attention were written on
 * 2026-12-05 without a GPU and have NOT RUN YET (docs/GPU.md).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cuda/backend.h"
#include "kernels/device.h"
#include "kernels/quant.h"
#include "util/alloc.h"
#include "util/error.h"

#define ROTATE_BYTES (256u << 20)
#define TRIALS 7

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *t, int n)
{
    qsort(t, (size_t)n, sizeof(double), cmp_d);
    return t[n / 2];
}

/* Standard-normal-ish values (sum of uniforms), scaled; a fast xorshift so 235M take seconds. */
static void fill_random(float *v, size_t n, uint64_t seed, float scale)
{
    uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;

    for (size_t i = 0; i < n; i++) {
        float acc = 0.0f;
        for (int j = 0; j < 4; j++) {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            acc += (float)(s >> 40) * (1.0f / 16777216.0f);
        }
        v[i] = (acc - 2.0f) * 1.7320508f * scale;
    }
}

#define CHECK(call)                                                                          \
    do {                                                                                     \
        int r_ = (call);                                                                     \
        if (r_ < 0) {                                                                        \
            fprintf(stderr, "bench-gpu: %s:%d: %s: %s: %s\n", __FILE__, __LINE__, #call,    \
                    sw_strerror(r_), sw_err_detail());                                       \
            exit(1);                                                                         \
        }                                                                                    \
    } while (0)

static sw_cuda_ctx_t *ctx;
static double copy_bw;

static void *xmalloc(size_t n)
{
    void *p = sw_malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "bench-gpu: out of host memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

static void *dev_alloc(size_t bytes)
{
    void *p = NULL;
    CHECK(sw_cuda_alloc(ctx, bytes, &p));
    return p;
}

/* A device array of n random floats. */
static float *dev_random(size_t n, uint64_t seed, float scale)
{
    float *h = xmalloc(n * sizeof(float)), *d = dev_alloc(n * sizeof(float));

    fill_random(h, n, seed, scale);
    CHECK(sw_cuda_upload(ctx, d, h, n * sizeof(float)));
    sw_free(h);
    return d;
}

/* The host tensor of format f (0 NF4, 1 Int8, 2 bf16) of the fp32 (N, K) values in host. */
enum { F_NF4, F_INT8, F_BF16, F_COUNT };
static const char *const fmt_name[F_COUNT] = { "nf4 (dq, bs 64)", "int8 (thr 6)", "bf16" };

static void make_format(int f, float *host, int64_t N, int64_t K, sw_tensor_t *out)
{
    sw_tensor_t dense = { 0 };
    int64_t shape[2] = { N, K };

    dense.dtype = SW_DTYPE_F32;
    dense.ndim = 2;
    dense.shape[0] = N;
    dense.shape[1] = K;
    dense.data = host;
    if (f == F_NF4) {
        CHECK(sw_quantize_nf4(&dense, 64, 1, out));
    } else if (f == F_INT8) {
        CHECK(sw_quantize_int8(&dense, 6.0f, out));
    } else {
        CHECK(sw_tensor_alloc(out, SW_DTYPE_BF16, 2, shape));
        sw_from_f32(out->data, host, SW_DTYPE_BF16, (size_t)(N * K));
    }
}

static void free_format(int f, sw_tensor_t *t)
{
    if (f == F_BF16)
        sw_tensor_free(t);
    else
        sw_qtensor_free(t);
}

static size_t weight_bytes(const sw_tensor_t *t)
{
    return sw_tensor_nbytes(t) + sw_qtensor_state_bytes(t);
}

/* Seconds per call of y = x @ w^T over the rotating copies w[0..nw), M rows (median). */
static double time_matmul(sw_tensor_t *w, int nw, float *dx, float *dy, int M)
{
    double t[TRIALS];
    int calls = 20 > 2 * nw ? 20 : 2 * nw;

    for (int i = 0; i < 2 * nw; i++) /* warm-up */
        CHECK(sw_cuda_matmul(ctx, dy, dx, &w[i % nw], NULL, M));
    CHECK(sw_cuda_sync(ctx));
    for (int k = 0; k < TRIALS; k++) {
        double t0 = now_s();
        for (int i = 0; i < calls; i++)
            CHECK(sw_cuda_matmul(ctx, dy, dx, &w[i % nw], NULL, M));
        CHECK(sw_cuda_sync(ctx));
        t[k] = (now_s() - t0) / calls;
    }
    return median(t, TRIALS);
}

/* ------------------------------------------------------------------------------------------ */
/* 1. copy bandwidth                                                                           */

static void bench_copy(void)
{
    size_t copy_bytes = (size_t)1 << 30;
    void *a = dev_alloc(copy_bytes), *b = dev_alloc(copy_bytes);
    double t[TRIALS];

    CHECK(sw_cuda_fill_f32(ctx, a, 1.5f, copy_bytes / 4));
    for (int i = 0; i < 3; i++)
        CHECK(sw_cuda_copy(ctx, b, a, copy_bytes));
    CHECK(sw_cuda_sync(ctx));
    for (int k = 0; k < TRIALS; k++) {
        double t0 = now_s();
        for (int i = 0; i < 10; i++)
            CHECK(sw_cuda_copy(ctx, i % 2 ? a : b, i % 2 ? b : a, copy_bytes));
        CHECK(sw_cuda_sync(ctx));
        t[k] = (now_s() - t0) / 10;
    }
    copy_bw = 2.0 * (double)copy_bytes / median(t, TRIALS);
    sw_cuda_free(ctx, a);
    sw_cuda_free(ctx, b);
}

/* ------------------------------------------------------------------------------------------ */
/* 2. GEMV                                                                                     */

/* Best M = 1 fraction of the copy bandwidth per format (for the summary). */
static double gemv_best[F_COUNT];

static void bench_gemv(void)
{
    static const struct { int64_t N, K; const char *what; } shapes[] = {
        { 4096, 4096, "7B q/k/v/o" }, { 4096, 11008, "7B down" }, { 8192, 28672, "70B down" },
    };
    static const int Ms[] = { 1, 16 };

    printf("\n## GEMV: weight bytes per second (M rows of fp32 x)\n\n");
    printf("| shape N x K | what | weights | variant | bytes (MB) | M | us/call | GB/s | of copy bw |\n");
    printf("| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
        int64_t N = shapes[s].N, K = shapes[s].K;
        size_t n = (size_t)(N * K);
        float *host = xmalloc(n * sizeof(float)), *hx = xmalloc(16 * (size_t)K * 4);
        float *dx, *dy;

        fill_random(host, n, 1000 + s, 1.0f / sqrtf((float)K));
        fill_random(hx, 16 * (size_t)K, 77, 1.0f);
        dx = dev_alloc(16 * (size_t)K * 4);
        dy = dev_alloc(16 * (size_t)N * 4);
        CHECK(sw_cuda_upload(ctx, dx, hx, 16 * (size_t)K * 4));
        for (int f = 0; f < F_COUNT; f++) {
            sw_tensor_t hw, dw[64];
            size_t bytes;
            int nw, nvar = f == F_NF4 ? sw_cuda_variant_count(SW_CUDA_K_NF4_GEMV) : 2;

            make_format(f, host, N, K, &hw);
            bytes = weight_bytes(&hw);
            nw = (int)((ROTATE_BYTES + bytes - 1) / bytes);
            nw = nw < 2 ? 2 : nw > 64 ? 64 : nw;
            for (int i = 0; i < nw; i++)
                CHECK(sw_cuda_tensor_upload(ctx, &hw, &dw[i]));
            CHECK(sw_cuda_ctx_reserve(ctx, sw_cuda_matmul_workspace_bytes(SW_CUDA_MATMUL_FP32,
                                                                          hw.dtype, 16, N, K)));
            for (int v = 1; v < nvar; v++) {
                if (f == F_NF4)
                    CHECK(sw_cuda_ctx_set_variant(ctx, SW_CUDA_K_NF4_GEMV, v));
                for (size_t m = 0; m < sizeof(Ms) / sizeof(Ms[0]); m++) {
                    double sec = time_matmul(dw, nw, dx, dy, Ms[m]);
                    double frac = (double)bytes / sec / copy_bw;
                    printf("| %lld x %lld | %s | %s | %s | %.1f | %d | %.1f | %.0f | %.0f%% |\n",
                           (long long)N, (long long)K, shapes[s].what, fmt_name[f],
                           f == F_NF4 ? sw_cuda_variant_name(SW_CUDA_K_NF4_GEMV, v) : "-",
                           (double)bytes / 1e6, Ms[m], sec * 1e6, (double)bytes / sec / 1e9,
                           100.0 * frac);
                    fflush(stdout);
                    if (Ms[m] == 1 && s == 2 && frac > gemv_best[f])
                        gemv_best[f] = frac;
                }
            }
            CHECK(sw_cuda_ctx_set_variant(ctx, SW_CUDA_K_NF4_GEMV, 0));
            for (int i = 0; i < nw; i++)
                sw_cuda_tensor_free(ctx, &dw[i]);
            free_format(f, &hw);
        }
        sw_cuda_free(ctx, dx);
        sw_cuda_free(ctx, dy);
        sw_free(host);
        sw_free(hx);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* 3. attention                                                                                */

/* Median seconds of one attention call with the context's current variant (event timing). */
static double time_attention(float *out, const float *q, const float *k, const float *v, int T,
                             int pos0, int max_T, int NH, int NKV, int HD, int reps)
{
    double t[TRIALS];
    float scale = 1.0f / sqrtf((float)HD);

    CHECK(sw_cuda_attention(ctx, out, q, k, v, 1, T, pos0, max_T, NH, NKV, HD, 0, scale));
    CHECK(sw_cuda_sync(ctx));
    for (int i = 0; i < TRIALS; i++) {
        CHECK(sw_cuda_timer_start(ctx));
        for (int r = 0; r < reps; r++)
            CHECK(sw_cuda_attention(ctx, out, q, k, v, 1, T, pos0, max_T, NH, NKV, HD, 0,
                                    scale));
        CHECK(sw_cuda_timer_stop(ctx, &t[i]));
        t[i] /= reps;
    }
    return median(t, TRIALS);
}

static double att_decode_best, att_prefill_best; /* fractions for the summary */

static void bench_attention(void)
{
    const int HD = 128, max_T = 4096;
    size_t nkv = (size_t)32 * max_T * HD;
    float *k = dev_random(nkv, 5, 1.0f), *v = dev_random(nkv, 6, 1.0f);
    float *q = dev_random((size_t)2048 * 32 * HD, 7, 1.0f);
    float *out = dev_alloc((size_t)2048 * 32 * HD * 4);
    static const struct { int NH, NKV; const char *what; } dec[] = {
        { 32, 32, "7B (MHA)" }, { 64, 8, "70B-like (GQA 8)" },
    };

    printf("\n## Attention (fp32, B = 1, HD 128; CUDA events, median)\n\n");
    printf("| case | what | variant | us | GB/s of K/V | of copy bw | TFLOP/s |\n");
    printf("| --- | --- | --- | --- | --- | --- | --- |\n");
    for (size_t c = 0; c < sizeof(dec) / sizeof(dec[0]); c++) {
        int pos0 = max_T - 1;
        double bytes = 2.0 * dec[c].NKV * (double)max_T * HD * 4;
        for (int var = 1; var <= 2; var++) {
            CHECK(sw_cuda_ctx_set_variant(ctx, SW_CUDA_K_ATTENTION, var));
            double sec = time_attention(out, q, k, v, 1, pos0, max_T, dec[c].NH, dec[c].NKV, HD,
                                        20);
            printf("| decode over %d positions | %s | %s | %.1f | %.0f | %.0f%% | - |\n", max_T,
                   dec[c].what, sw_cuda_variant_name(SW_CUDA_K_ATTENTION, var), sec * 1e6,
                   bytes / sec / 1e9, 100.0 * bytes / sec / copy_bw);
            if (bytes / sec / copy_bw > att_decode_best)
                att_decode_best = bytes / sec / copy_bw;
            fflush(stdout);
        }
    }
    {
        const int T = 2048, NH = 32;
        double flops = 4.0 * NH * HD * (double)T * (T + 1) / 2;
        for (int var = 1; var <= 3; var += 2) {
            CHECK(sw_cuda_ctx_set_variant(ctx, SW_CUDA_K_ATTENTION, var));
            double sec = time_attention(out, q, k, v, T, 0, T, NH, NH, HD, 2);
            printf("| prefill %d tokens | 7B (MHA) | %s | %.1f | - | - | %.2f |\n", T,
                   sw_cuda_variant_name(SW_CUDA_K_ATTENTION, var), sec * 1e6,
                   flops / sec / 1e12);
            if (var == 3)
                att_prefill_best = flops / sec / 1e12;
            fflush(stdout);
        }
    }
    CHECK(sw_cuda_ctx_set_variant(ctx, SW_CUDA_K_ATTENTION, 0));
    sw_cuda_free(ctx, k);
    sw_cuda_free(ctx, v);
    sw_cuda_free(ctx, q);
    sw_cuda_free(ctx, out);
}

/* ------------------------------------------------------------------------------------------ */
/* 4. bf16 matmul rate                                                                         */

static double bench_matmul_rate(void)
{
    static const int64_t Ns[] = { 4096, 11008 };
    const int M = 2048;
    const int64_t K = 4096;
    double best = 0.0;

    printf("\n## bf16 matmul, FAST mode (tensor cores, fp32 accumulation and output)\n\n");
    printf("| M x N x K | ms | TFLOP/s |\n| --- | --- | --- |\n");
    sw_cuda_ctx_set_matmul_mode(ctx, SW_CUDA_MATMUL_FAST);
    for (size_t i = 0; i < 2; i++) {
        int64_t N = Ns[i];
        float *host = xmalloc((size_t)(N * K) * 4);
        float *dx = dev_random((size_t)M * K, 11, 1.0f), *dy = dev_alloc((size_t)M * N * 4);
        sw_tensor_t hw, dw;
        double t[TRIALS];

        fill_random(host, (size_t)(N * K), 12 + i, 1.0f / 64);
        make_format(F_BF16, host, N, K, &hw);
        CHECK(sw_cuda_tensor_upload(ctx, &hw, &dw));
        CHECK(sw_cuda_ctx_reserve(ctx, sw_cuda_matmul_workspace_bytes(SW_CUDA_MATMUL_FAST,
                                                                      SW_DTYPE_BF16, M, N, K)));
        CHECK(sw_cuda_matmul(ctx, dy, dx, &dw, NULL, M));
        for (int k = 0; k < TRIALS; k++) {
            CHECK(sw_cuda_timer_start(ctx));
            for (int r = 0; r < 10; r++)
                CHECK(sw_cuda_matmul(ctx, dy, dx, &dw, NULL, M));
            CHECK(sw_cuda_timer_stop(ctx, &t[k]));
            t[k] /= 10;
        }
        double sec = median(t, TRIALS), rate = 2.0 * M * (double)N * K / sec / 1e12;
        printf("| %d x %lld x %lld | %.3f | %.0f |\n", M, (long long)N, (long long)K, sec * 1e3,
               rate);
        best = rate > best ? rate : best;
        sw_cuda_tensor_free(ctx, &dw);
        free_format(F_BF16, &hw);
        sw_cuda_free(ctx, dx);
        sw_cuda_free(ctx, dy);
        sw_free(host);
    }
    sw_cuda_ctx_set_matmul_mode(ctx, SW_CUDA_MATMUL_FP32);
    return best;
}

/* ------------------------------------------------------------------------------------------ */
/* 5. whole model                                                                              */

enum { H = 4096, I = 11008, NL = 32, NHEADS = 32, HDIM = 128, VOCAB = 32000 };
#define MAX_T (2048 + 128)

typedef struct {
    sw_tensor_t w[7]; /* q, k, v, o, gate, up, down */
} mblock_t;

typedef struct {
    mblock_t *blk;       /* distinct blocks */
    int nblk;
    sw_tensor_t head;    /* bf16 (VOCAB, H) */
    float *norm;         /* (H) ones-ish */
    float *x, *xn, *q, *kn, *vn, *att, *gate, *up, *tmp, *logits, *inv_freq;
    int32_t *pos;        /* 0 .. MAX_T - 1 */
    float *kc, *vc;      /* (NL, NH, MAX_T, HD) */
} model_t;

static void model_alloc_acts(model_t *m, int rows)
{
    m->x = dev_random((size_t)rows * H, 21, 1.0f);
    m->xn = dev_alloc((size_t)rows * H * 4);
    m->q = dev_alloc((size_t)rows * H * 4);
    m->kn = dev_alloc((size_t)rows * H * 4);
    m->vn = dev_alloc((size_t)rows * H * 4);
    m->att = dev_alloc((size_t)rows * H * 4);
    m->gate = dev_alloc((size_t)rows * I * 4);
    m->up = dev_alloc((size_t)rows * I * 4);
    m->tmp = dev_alloc((size_t)rows * H * 4);
    m->logits = dev_alloc((size_t)16 * VOCAB * 4);
    m->kc = dev_alloc((size_t)NL * H * MAX_T * 4);
    m->vc = dev_alloc((size_t)NL * H * MAX_T * 4);
    {
        float inv[HDIM / 2];
        int32_t *pos = xmalloc(MAX_T * sizeof(int32_t));
        for (int i = 0; i < HDIM / 2; i++)
            inv[i] = (float)(1.0 / pow(10000.0, 2.0 * i / HDIM));
        for (int i = 0; i < MAX_T; i++)
            pos[i] = i;
        m->inv_freq = dev_alloc(sizeof(inv));
        m->pos = dev_alloc(MAX_T * sizeof(int32_t));
        CHECK(sw_cuda_upload(ctx, m->inv_freq, inv, sizeof(inv)));
        CHECK(sw_cuda_upload(ctx, m->pos, pos, MAX_T * sizeof(int32_t)));
        sw_free(pos);
    }
    float *ones = xmalloc(H * 4);
    for (int i = 0; i < H; i++)
        ones[i] = 1.0f;
    m->norm = dev_alloc(H * 4);
    CHECK(sw_cuda_upload(ctx, m->norm, ones, H * 4));
    sw_free(ones);
}

/* T tokens at positions pos0.. through all 32 blocks and the head (last row's logits). */
static void model_forward(model_t *m, int T, int pos0)
{
    const size_t layer = (size_t)H * MAX_T;
    const float scale = 1.0f / sqrtf((float)HDIM);

    for (int l = 0; l < NL; l++) {
        const mblock_t *b = &m->blk[l % m->nblk];
        float *kc = m->kc + l * layer, *vc = m->vc + l * layer;
        CHECK(sw_cuda_rmsnorm(ctx, m->xn, m->x, m->norm, T, H, 1e-5f));
        CHECK(sw_cuda_matmul(ctx, m->q, m->xn, &b->w[0], NULL, T));
        CHECK(sw_cuda_matmul(ctx, m->kn, m->xn, &b->w[1], NULL, T));
        CHECK(sw_cuda_matmul(ctx, m->vn, m->xn, &b->w[2], NULL, T));
        CHECK(sw_cuda_rope(ctx, m->q, m->pos + pos0, T, NHEADS, HDIM, m->inv_freq, 1.0f));
        CHECK(sw_cuda_rope(ctx, m->kn, m->pos + pos0, T, NHEADS, HDIM, m->inv_freq, 1.0f));
        CHECK(sw_cuda_kv_append(ctx, kc, vc, m->kn, m->vn, 1, T, pos0, MAX_T, NHEADS, HDIM));
        CHECK(sw_cuda_attention(ctx, m->att, m->q, kc, vc, 1, T, pos0, MAX_T, NHEADS, NHEADS,
                                HDIM, 0, scale));
        CHECK(sw_cuda_matmul(ctx, m->tmp, m->att, &b->w[3], NULL, T));
        CHECK(sw_cuda_add(ctx, m->x, m->tmp, (size_t)T * H));
        CHECK(sw_cuda_rmsnorm(ctx, m->xn, m->x, m->norm, T, H, 1e-5f));
        CHECK(sw_cuda_matmul(ctx, m->gate, m->xn, &b->w[4], NULL, T));
        CHECK(sw_cuda_matmul(ctx, m->up, m->xn, &b->w[5], NULL, T));
        CHECK(sw_cuda_swiglu(ctx, m->gate, m->gate, m->up, (size_t)T * I));
        CHECK(sw_cuda_matmul(ctx, m->tmp, m->gate, &b->w[6], NULL, T));
        CHECK(sw_cuda_add(ctx, m->x, m->tmp, (size_t)T * H));
    }
    CHECK(sw_cuda_rmsnorm(ctx, m->xn, m->x + (size_t)(T - 1) * H, m->norm, 1, H, 1e-5f));
    CHECK(sw_cuda_matmul(ctx, m->logits, m->xn, &m->head, NULL, 1));
}

static void bench_model(int nblk, double mm_rate)
{
    static const int64_t shp[7][2] = { { H, H }, { H, H }, { H, H }, { H, H },
                                       { I, H }, { I, H }, { H, I } };
    model_t m;
    double ms_tok[F_COUNT] = { 0 }, prefill_frac[F_COUNT] = { 0 }, prefill_ms[F_COUNT] = { 0 };
    size_t ws = 0;

    memset(&m, 0, sizeof(m));
    m.nblk = nblk;
    m.blk = xmalloc((size_t)nblk * F_COUNT * sizeof(mblock_t));
    printf("\n## Whole model, Llama-2-7B shape, random weights (%d distinct blocks, reused)\n\n",
           nblk);
    fflush(stdout);
    /* weights: every format of every distinct block from the same fp32 values */
    for (int bi = 0; bi < nblk; bi++)
        for (int k = 0; k < 7; k++) {
            int64_t N = shp[k][0], K = shp[k][1];
            float *host = xmalloc((size_t)(N * K) * 4);
            fill_random(host, (size_t)(N * K), 100 + 7 * bi + k, 1.0f / sqrtf((float)K));
            for (int f = 0; f < F_COUNT; f++) {
                sw_tensor_t hw;
                make_format(f, host, N, K, &hw);
                CHECK(sw_cuda_tensor_upload(ctx, &hw, &m.blk[f * nblk + bi].w[k]));
                for (int mode = 0; mode < 2; mode++) {
                    size_t b = sw_cuda_matmul_workspace_bytes((sw_cuda_matmul_mode_t)mode,
                                                              hw.dtype, 2048, N, K);
                    ws = b > ws ? b : ws;
                }
                free_format(f, &hw);
            }
            sw_free(host);
        }
    {
        float *host = xmalloc((size_t)VOCAB * H * 4);
        sw_tensor_t hw;
        fill_random(host, (size_t)VOCAB * H, 99, 1.0f / 64);
        make_format(F_BF16, host, VOCAB, H, &hw);
        CHECK(sw_cuda_tensor_upload(ctx, &hw, &m.head));
        free_format(F_BF16, &hw);
        sw_free(host);
    }
    CHECK(sw_cuda_ctx_reserve(ctx, ws));
    model_alloc_acts(&m, 2048);

    mblock_t *all = m.blk;
    for (int f = 0; f < F_COUNT; f++) {
        double t[64], sec;
        m.blk = all + f * nblk;
        /* decode: a 16-token prompt, then 64 steps, each timed */
        sw_cuda_ctx_set_matmul_mode(ctx, SW_CUDA_MATMUL_FP32);
        model_forward(&m, 16, 0);
        CHECK(sw_cuda_sync(ctx));
        for (int s = 0; s < 64; s++) {
            CHECK(sw_cuda_timer_start(ctx));
            model_forward(&m, 1, 16 + s);
            CHECK(sw_cuda_timer_stop(ctx, &t[s]));
        }
        ms_tok[f] = 1e3 * median(t, 64);
        /* prefill: 2048 tokens in one pass, FAST mode (tensor cores / TF32 / int8 GEMM) */
        sw_cuda_ctx_set_matmul_mode(ctx, SW_CUDA_MATMUL_FAST);
        model_forward(&m, 2048, 0); /* warm-up */
        CHECK(sw_cuda_sync(ctx));
        CHECK(sw_cuda_timer_start(ctx));
        model_forward(&m, 2048, 0);
        CHECK(sw_cuda_timer_stop(ctx, &sec));
        sw_cuda_ctx_set_matmul_mode(ctx, SW_CUDA_MATMUL_FP32);
        double flops = 2.0 * 2048 * NL * (4.0 * H * H + 3.0 * H * I) +
                       NL * 4.0 * NHEADS * HDIM * 2048.0 * 2049.0 / 2 + 2.0 * H * VOCAB;
        prefill_ms[f] = sec * 1e3;
        prefill_frac[f] = flops / sec / 1e12 / mm_rate;
        printf("| %s | decode %.2f ms/token | prefill 2048: %.1f ms, %.0f TFLOP/s, %.0f%% of the "
               "bf16 matmul rate |\n", fmt_name[f], ms_tok[f], prefill_ms[f],
               flops / sec / 1e12, 100.0 * prefill_frac[f]);
        fflush(stdout);
    }

    printf("\n## Summary against issue 8's targets (%s)\n\n", "bench-gpu");
    printf("| measure | got | target |\n| --- | --- | --- |\n");
    printf("| GEMV 8192 x 28672, M = 1, NF4 (best variant), of copy bw | %.0f%% | >= 75%% |\n",
           100 * gemv_best[F_NF4]);
    printf("| GEMV 8192 x 28672, M = 1, Int8, of copy bw | %.0f%% | >= 75%% |\n",
           100 * gemv_best[F_INT8]);
    printf("| GEMV 8192 x 28672, M = 1, bf16, of copy bw | %.0f%% | - |\n",
           100 * gemv_best[F_BF16]);
    printf("| 7B decode, bf16 | %.2f ms/token | <= 6 |\n", ms_tok[F_BF16]);
    printf("| 7B decode, Int8 | %.2f ms/token | <= 3.5 |\n", ms_tok[F_INT8]);
    printf("| 7B decode, NF4 | %.2f ms/token | <= 2 |\n", ms_tok[F_NF4]);
    printf("| 7B prefill 2048, bf16, of the bf16 matmul rate | %.0f%% | >= 60%% |\n",
           100 * prefill_frac[F_BF16]);
    printf("| attention decode, best of copy bw / prefill TFLOP/s (fused) | %.0f%% / %.1f | - |\n",
           100 * att_decode_best, att_prefill_best);

    for (int i = 0; i < nblk * F_COUNT; i++)
        for (int k = 0; k < 7; k++)
            sw_cuda_tensor_free(ctx, &all[i].w[k]);
    sw_cuda_tensor_free(ctx, &m.head);
    sw_free(all);
}

int main(int argc, char **argv)
{
    int dev = 0, no_model = 0, nblk = 2;
    char name[256];

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--no-model") == 0)
            no_model = 1;
        else if (strcmp(argv[i], "--layers") == 0 && i + 1 < argc)
            nblk = atoi(argv[++i]);
        else
            dev = atoi(argv[i]);
    }
    if (nblk < 1 || nblk > NL) {
        fprintf(stderr, "bench-gpu: --layers takes 1 to %d\n", NL);
        return 2;
    }
    if (sw_cuda_device_count() <= dev) {
        printf("bench-gpu: skipped: no CUDA device %d (%s)\n", dev,
               sw_cuda_compiled() ? "none visible" : "CUDA backend not compiled");
        return 77;
    }
    CHECK(sw_cuda_device_name(dev, name, sizeof(name)));
    CHECK(sw_cuda_ctx_create(dev, &ctx));
    bench_copy();
    printf("bench-gpu: %s; device copy bandwidth %.0f GB/s (read + write, 1 GiB D2D)\n", name,
           copy_bw / 1e9);
    bench_gemv();
    bench_attention();
    double rate = bench_matmul_rate();
    if (!no_model)
        bench_model(nblk, rate);
    sw_cuda_ctx_free(ctx);
    return 0;
}
