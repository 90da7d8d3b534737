/*
 * fast.c - the fast CPU backend `sw_ops_cpu`: every op of ops.h, threaded over the global pool,
 * with AVX2+FMA+F16C code chosen at run time and a portable C path (written so the compiler can
 * vectorize it with baseline SSE2) for CPUs without them. The reference is cpu/ref.c; tests compare
 * both paths against it (tests/test-kernels.c).
 *
 * Nothing here allocates. Per-call scratch is a bounded tile on the stack (matmul: NB x KC floats;
 * quantized matmul: 64 KiB of int8 x on the calling thread, 20 KiB of NF4 factors per pool
 * thread; rope: ROPE_CHUNK x 2 floats) or the caller's `scratch` (attention).
 *
 * matmul, y (M, N) = x (M, K) @ W (N, K)^T + bias, the hot op:
 *   - M == 1 on AVX2 (decode, GEMV): bandwidth bound. The pool splits the rows of W into one
 *     contiguous range per thread; each thread streams 4 rows at a time, once, converting bf16 by
 *     a 16-bit shift and f16 with vcvtph2ps right after the load, with 4 accumulators (one per
 *     row, see batch invariance below) so one load of x serves 4 rows.
 *   - NF4 with M <= 4 on AVX2: an int8-activation GEMV (see "Quantized weights" below).
 *   - M > 1, or the portable path: a block of NB = 4 rows of W, KC = 512 columns at a time, is
 *     converted once into an fp32 stack tile and used for every row of x by a 3x4 micro-kernel
 *     (3 rows of x, 4 rows of W, 12 accumulators). Partial sums over K chunks go into y.
 * Batch invariance (ops.h, matmul_batch_range): each row of y is a function of its own row of x
 * and W only, the same bits whatever M is and whatever the other rows hold, so the server can
 * stack the decode steps of several sessions into one call. The M == 1 GEMV therefore does the
 * tile path's arithmetic (per KC chunk one FMA chain per row of W over groups of 8, hsum4, an fmaf
 * tail, chunk sums added in order) while streaming W without a tile; the NF4 int8 GEMV is
 * invariant over M = 1..4 (fixed K chunks, one reduction, non-finite rows alone) and the exact
 * NF4 path over M >= 5, but the two differ; LLM.int8() with a threshold picks its outlier columns
 * from all rows, so there a row does depend on the others.
 * Weights may be misaligned (safetensors offsets are only 8-aligned, tests use +2 bytes): vector
 * loads are unaligned and scalar loads go through memcpy. Accumulation is fp32 throughout.
 */
#include "fast.h"

#include <limits.h>
#include <float.h>
#include <math.h>
#include <stdatomic.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#include <stdlib.h>
#include <string.h>

#include "../ops.h"
#include "../quant.h"
#include "../../util/pool.h"

#if defined(__x86_64__) || defined(__i386__)
#define SW_X86 1
#include <immintrin.h>
#define SW_AVX2 __attribute__((target("avx2,fma,f16c")))
#else
#define SW_X86 0
#endif

#define SW_INLINE static inline __attribute__((always_inline))

#define NB 4          /* rows of W per tile */
#define MB 3          /* rows of x per micro-kernel call */
#define KC 512        /* columns of a tile: NB * KC * 4 = 8 KiB of stack */
#define ROPE_CHUNK 64 /* cos/sin values computed at a time by rope */

/* Elementwise ops below this many elements run on the calling thread (a fork-join costs ~µs). */
#define PAR_MIN_ELEMS 32768

/* ------------------------------------------------------------------------------------------ */
/* SIMD level: decided once, on first use, from the CPU flags and SW_CPU_SIMD; tests may force it */

static atomic_int simd_detected = -1; /* -1 unknown, 0 portable, 1 avx2+fma+f16c */
static atomic_int simd_forced;

static int simd_detect(void)
{
    const char *env = getenv("SW_CPU_SIMD");

    if (env && strcmp(env, "portable") == 0)
        return 0;
#if SW_X86
    /* clang 14 knows no "f16c" for __builtin_cpu_supports: read CPUID leaf 1, ECX bit 29 */
    unsigned a, b, c, d;
    __builtin_cpu_init();
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_F16C))
        return 0;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

static int use_avx2(void)
{
    int l = atomic_load_explicit(&simd_detected, memory_order_relaxed);

    if (l < 0) {
        l = simd_detect();
        atomic_store(&simd_detected, l);
    }
    return l && !atomic_load_explicit(&simd_forced, memory_order_relaxed);
}

void sw_cpu_force_portable(int on)
{
    atomic_store(&simd_forced, on != 0);
}

const char *sw_cpu_simd_name(void)
{
    return use_avx2() ? "avx2+fma+f16c" : "portable";
}

/* Runs fn over [0, n) on the global pool, or on this thread when the work is small. */
static void par_for(size_t n, size_t grain, size_t work, sw_pool_fn fn, void *ctx)
{
    if (work < PAR_MIN_ELEMS)
        fn(ctx, 0, n, 0);
    else
        sw_pool_for(sw_pool_global(), n, grain, fn, ctx);
}

static size_t min_sz(size_t a, size_t b)
{
    return a < b ? a : b;
}

/* ------------------------------------------------------------------------------------------ */
/* Element loads (any thread)                                                                   */

/* Element i of a row of dtype dt starting at byte pointer p; memcpy because p may be misaligned. */
SW_INLINE float ld1(const unsigned char *p, size_t i, sw_dtype_t dt)
{
    uint16_t h;
    float f;

    if (dt == SW_DTYPE_F32) {
        memcpy(&f, p + i * 4, 4);
        return f;
    }
    memcpy(&h, p + i * 2, 2);
    return dt == SW_DTYPE_F16 ? sw_f16_to_f32(h) : sw_bf16_to_f32(h);
}

/* binary16 bits to fp32 without branches (selects only), so blocks of it vectorize; exact. */
SW_INLINE float f16_nobranch(uint16_t h)
{
    uint32_t em = h & 0x7fffu, sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t normal = (em << 13) + (112u << 23);              /* re-biased exponent */
    uint32_t sub = sw_f32_bits((float)em * 0x1p-24f);         /* em < 0x400: man * 2^-24 */
    uint32_t special = (em << 13) | 0x7f800000u;              /* inf, NaN (payload kept) */
    uint32_t bits = em < 0x400u ? sub : em >= 0x7c00u ? special : normal;

    return sw_bits_f32(bits | sign);
}

/*
 * Converts n elements at p (dtype dt, any alignment) to fp32; plain C for the portable path,
 * in blocks of 8 with a fixed inner trip count so that -O2 vectorizes them with SSE2.
 */
static void cvt_portable(float *dst, const unsigned char *p, size_t n, sw_dtype_t dt)
{
    size_t i = 0;

    if (dt == SW_DTYPE_F32) {
        memcpy(dst, p, n * 4);
        return;
    }
    if (dt == SW_DTYPE_BF16) {
        for (; i + 8 <= n; i += 8) {
            uint16_t h[8];
            memcpy(h, p + i * 2, 16);
            for (int j = 0; j < 8; j++)
                dst[i + j] = sw_bits_f32((uint32_t)h[j] << 16);
        }
    } else {
        for (; i + 8 <= n; i += 8) {
            uint16_t h[8];
            memcpy(h, p + i * 2, 16);
            for (int j = 0; j < 8; j++)
                dst[i + j] = f16_nobranch(h[j]);
        }
    }
    for (; i < n; i++)
        dst[i] = ld1(p, i, dt);
}

/* Dot product of n floats with 8 independent lanes (vectorizable without reassociation flags). */
static float dot_portable(const float *a, const float *b, size_t n)
{
    float acc[8] = { 0 };
    size_t i = 0;

    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += a[i + j] * b[i + j];
    for (; i < n; i++)
        acc[0] += a[i] * b[i];
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

/* o (n) += p * v (n) */
static void axpy_portable(float *o, float p, const float *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        o[i] += p * v[i];
}

#if SW_X86
/* ------------------------------------------------------------------------------------------ */
/* AVX2 building blocks                                                                         */

/* 8 elements of dtype dt at byte pointer p (any alignment) as fp32. */
SW_AVX2 SW_INLINE __m256 ld8(const unsigned char *p, sw_dtype_t dt)
{
    if (dt == SW_DTYPE_F32)
        return _mm256_loadu_ps((const float *)(const void *)p);
    __m128i h = _mm_loadu_si128((const __m128i *)(const void *)p);
    if (dt == SW_DTYPE_F16)
        return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* The four horizontal sums of a, b, c, d. */
SW_AVX2 SW_INLINE __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d)
{
    __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

SW_AVX2 SW_INLINE float hsum1(__m256 a)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

SW_AVX2 static void cvt_avx2(float *dst, const unsigned char *p, size_t n, sw_dtype_t dt)
{
    size_t es = sw_dtype_size(dt), i = 0;

    switch (dt) {
    case SW_DTYPE_F32:
        memcpy(dst, p, n * 4);
        return;
    case SW_DTYPE_F16:
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(dst + i, ld8(p + i * es, SW_DTYPE_F16));
        break;
    default:
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(dst + i, ld8(p + i * es, SW_DTYPE_BF16));
        break;
    }
    for (; i < n; i++)
        dst[i] = ld1(p, i, dt);
}

SW_AVX2 static float dot_avx2(const float *a, const float *b, size_t n)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    size_t i = 0;
    float r;

    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    if (i + 8 <= n) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        i += 8;
    }
    r = hsum1(_mm256_add_ps(s0, s1));
    for (; i < n; i++)
        r += a[i] * b[i];
    return r;
}

SW_AVX2 static void axpy_avx2(float *o, float p, const float *v, size_t n)
{
    __m256 pv = _mm256_set1_ps(p);
    size_t i = 0;

    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(o + i, _mm256_fmadd_ps(pv, _mm256_loadu_ps(v + i), _mm256_loadu_ps(o + i)));
    for (; i < n; i++)
        o[i] += p * v[i];
}

/*
 * GEMV of R = 4 or 8 rows of W (byte pointers w[r], dtype dt) with x (K): out[r] = w_r . x +
 * bias[r] (bias NULL: + 0.0f). Rows may repeat (a partial block passes row 0 again; the repeat
 * hits the cache).
 *
 * Batch invariance: this is exactly the arithmetic the tile path (mm_tile_task with micro_avx2)
 * applies to one row of x, so a row's result does not depend on how many rows the call has (the
 * server stacks decode steps of different sessions into one matmul and each must get the bits it
 * would get alone). Per chunk of KC columns: one 8-lane FMA accumulator per row of W over the
 * chunk's full groups of 8, reduced by hsum4, the chunk's ragged tail added with fmaf; the chunk
 * sums are added to the result in order, the first one with the bias. Weights are converted to
 * fp32 on load, exactly as the tile path converts them into its tile. One FMA chain per row, so
 * two blocks of 4 rows go together where they can: 8 independent chains.
 */
SW_AVX2 SW_INLINE void gemv_avx2(float *out, const float *x, const unsigned char *const *w,
                                 const int R, size_t K, sw_dtype_t dt, const float *bias)
{
    const size_t es = dt == SW_DTYPE_F32 ? 4 : 2;
    float y[2 * NB];

    for (size_t kc = 0; kc < K; kc += KC) {
        size_t kl = min_sz(KC, K - kc), k = 0;
        __m256 a[2 * NB];
        float s[2 * NB];

#pragma GCC unroll 8
        for (int r = 0; r < R; r++)
            a[r] = _mm256_setzero_ps();
        for (; k + 8 <= kl; k += 8) {
            __m256 xv = _mm256_loadu_ps(x + kc + k);
            size_t o = (kc + k) * es;
#pragma GCC unroll 8
            for (int r = 0; r < R; r++)
                a[r] = _mm256_fmadd_ps(xv, ld8(w[r] + o, dt), a[r]);
        }
#pragma GCC unroll 2
        for (int r = 0; r < R; r += NB)
            _mm_storeu_ps(s + r, hsum4(a[r], a[r + 1], a[r + 2], a[r + 3]));
        for (; k < kl; k++)
            for (int r = 0; r < R; r++)
                s[r] = fmaf(x[kc + k], ld1(w[r], kc + k, dt), s[r]);
        for (int r = 0; r < R; r++)
            y[r] = kc == 0 ? s[r] + (bias ? bias[r] : 0.0f) : y[r] + s[r];
    }
    memcpy(out, y, (size_t)R * sizeof(float));
}

/* R = 4 or 8 rows w[0..R) (two blocks of NB at once: 8 independent FMA chains). */
SW_AVX2 static void gemv_avx2_f32(float *out, const float *x, const unsigned char *const *w,
                                  int R, size_t K, const float *bias)
{
    if (R == 2 * NB)
        gemv_avx2(out, x, w, 2 * NB, K, SW_DTYPE_F32, bias);
    else
        gemv_avx2(out, x, w, NB, K, SW_DTYPE_F32, bias);
}

SW_AVX2 static void gemv_avx2_f16(float *out, const float *x, const unsigned char *const *w,
                                  int R, size_t K, const float *bias)
{
    if (R == 2 * NB)
        gemv_avx2(out, x, w, 2 * NB, K, SW_DTYPE_F16, bias);
    else
        gemv_avx2(out, x, w, NB, K, SW_DTYPE_F16, bias);
}

SW_AVX2 static void gemv_avx2_bf16(float *out, const float *x, const unsigned char *const *w,
                                   int R, size_t K, const float *bias)
{
    if (R == 2 * NB)
        gemv_avx2(out, x, w, 2 * NB, K, SW_DTYPE_BF16, bias);
    else
        gemv_avx2(out, x, w, NB, K, SW_DTYPE_BF16, bias);
}

/*
 * The 3x4 micro-kernel: s[i][r] = x_i (n) . w_r (n) for 3 rows of x (x0..x2, may repeat) and the
 * 4 fp32 rows of a tile (row stride ws floats).
 */
SW_AVX2 static void micro_avx2(float s[MB][NB], const float *x0, const float *x1, const float *x2,
                               const float *w, size_t ws, size_t n)
{
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c02 = c00, c03 = c00;
    __m256 c10 = c00, c11 = c00, c12 = c00, c13 = c00;
    __m256 c20 = c00, c21 = c00, c22 = c00, c23 = c00;
    const float *w0 = w, *w1 = w + ws, *w2 = w + 2 * ws, *w3 = w + 3 * ws;
    size_t k = 0;
    __m128 t;

    for (; k + 8 <= n; k += 8) {
        __m256 a0 = _mm256_loadu_ps(x0 + k), a1 = _mm256_loadu_ps(x1 + k);
        __m256 a2 = _mm256_loadu_ps(x2 + k), b;
        b = _mm256_loadu_ps(w0 + k);
        c00 = _mm256_fmadd_ps(a0, b, c00);
        c10 = _mm256_fmadd_ps(a1, b, c10);
        c20 = _mm256_fmadd_ps(a2, b, c20);
        b = _mm256_loadu_ps(w1 + k);
        c01 = _mm256_fmadd_ps(a0, b, c01);
        c11 = _mm256_fmadd_ps(a1, b, c11);
        c21 = _mm256_fmadd_ps(a2, b, c21);
        b = _mm256_loadu_ps(w2 + k);
        c02 = _mm256_fmadd_ps(a0, b, c02);
        c12 = _mm256_fmadd_ps(a1, b, c12);
        c22 = _mm256_fmadd_ps(a2, b, c22);
        b = _mm256_loadu_ps(w3 + k);
        c03 = _mm256_fmadd_ps(a0, b, c03);
        c13 = _mm256_fmadd_ps(a1, b, c13);
        c23 = _mm256_fmadd_ps(a2, b, c23);
    }
    t = hsum4(c00, c01, c02, c03);
    _mm_storeu_ps(s[0], t);
    t = hsum4(c10, c11, c12, c13);
    _mm_storeu_ps(s[1], t);
    t = hsum4(c20, c21, c22, c23);
    _mm_storeu_ps(s[2], t);
    for (; k < n; k++) { /* fmaf: the same rounding as gemv4_avx2's tail, whatever -ffp-contract */
        for (int r = 0; r < NB; r++) {
            s[0][r] = fmaf(x0[k], w[r * ws + k], s[0][r]);
            s[1][r] = fmaf(x1[k], w[r * ws + k], s[1][r]);
            s[2][r] = fmaf(x2[k], w[r * ws + k], s[2][r]);
        }
    }
}
#endif /* SW_X86 */

/* Portable 3x4 micro-kernel; same contract as micro_avx2. */
static void micro_portable(float s[MB][NB], const float *x0, const float *x1, const float *x2,
                           const float *w, size_t ws, size_t n)
{
    for (int r = 0; r < NB; r++) {
        s[0][r] = dot_portable(x0, w + r * ws, n);
        s[1][r] = x1 == x0 ? s[0][r] : dot_portable(x1, w + r * ws, n);
        s[2][r] = x2 == x1 ? s[1][r] : dot_portable(x2, w + r * ws, n);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* matmul (runs on pool threads; each task owns a contiguous range of NB-row blocks of y columns) */

struct mm_ctx {
    float *y;
    const float *x;
    const unsigned char *w;
    const float *bias;
    size_t N, K, rs; /* rs: bytes per row of W */
    int M;
    sw_dtype_t dt;
    int avx2;
    const sw_tensor_t *wt; /* the weight tensor itself (NF4: codes + state) */
};

static void nf4_decode(const sw_tensor_t *w, size_t i0, size_t n, float *dst, int avx2);

/* Row pointers of block n0 (nr valid rows; missing ones repeat row 0 of the block). */
static void block_rows(const struct mm_ctx *c, size_t n0, size_t nr, const unsigned char *w[NB])
{
    for (size_t r = 0; r < NB; r++)
        w[r] = c->w + (n0 + (r < nr ? r : 0)) * c->rs;
}

static void mm_gemv_task(void *ctx, size_t b, size_t e, int tid)
{
#if SW_X86
    const struct mm_ctx *c = ctx;
    void (*kern)(float *, const float *, const unsigned char *const *, int, size_t,
                 const float *) =
        c->dt == SW_DTYPE_F32 ? gemv_avx2_f32 :
        c->dt == SW_DTYPE_F16 ? gemv_avx2_f16 : gemv_avx2_bf16;

    for (size_t blk = b; blk < e;) {
        size_t n0 = blk * NB, nr = min_sz(2 * NB, c->N - n0);
        int R = e - blk >= 2 && nr == 2 * NB ? 2 * NB : NB; /* two full blocks, or one */
        const unsigned char *w[2 * NB];
        float s[2 * NB], bias[2 * NB];

        nr = min_sz(nr, (size_t)R);
        for (size_t r = 0; r < (size_t)R; r++) { /* missing rows repeat row n0 */
            w[r] = c->w + (n0 + (r < nr ? r : 0)) * c->rs;
            if (c->bias)
                bias[r] = c->bias[n0 + (r < nr ? r : 0)];
        }
        kern(s, c->x, w, R, c->K, c->bias ? bias : NULL);
        for (size_t r = 0; r < nr; r++)
            c->y[n0 + r] = s[r];
        blk += (size_t)R / NB;
    }
#endif
}

static void mm_tile_task(void *ctx, size_t b, size_t e, int tid)
{
    const struct mm_ctx *c = ctx;
    const size_t es = sw_dtype_size(c->dt), N = c->N, K = c->K;
    float wb[NB * KC] __attribute__((aligned(32)));

    for (size_t blk = b; blk < e; blk++) {
        size_t n0 = blk * NB, nr = min_sz(NB, N - n0);
        const unsigned char *w[NB];

        block_rows(c, n0, nr, w);
        for (size_t kc = 0; kc < K; kc += KC) {
            size_t kl = min_sz(KC, K - kc);

            for (size_t r = 0; r < NB; r++) {
                if (c->dt == SW_DTYPE_NF4) {
                    size_t row = n0 + (r < nr ? r : 0);
                    nf4_decode(c->wt, row * K + kc, kl, wb + r * KC, c->avx2);
                    continue;
                }
#if SW_X86
                if (c->avx2)
                    cvt_avx2(wb + r * KC, w[r] + kc * es, kl, c->dt);
                else
#endif
                    cvt_portable(wb + r * KC, w[r] + kc * es, kl, c->dt);
            }
            for (int m = 0; m < c->M; m += MB) {
                const float *x0 = c->x + (size_t)m * K + kc;
                const float *x1 = m + 1 < c->M ? x0 + K : x0;
                const float *x2 = m + 2 < c->M ? x0 + 2 * K : x1;
                float s[MB][NB];
                int mr = c->M - m < MB ? c->M - m : MB;

#if SW_X86
                if (c->avx2)
                    micro_avx2(s, x0, x1, x2, wb, KC, kl);
                else
#endif
                    micro_portable(s, x0, x1, x2, wb, KC, kl);
                for (int i = 0; i < mr; i++) {
                    float *yr = c->y + (size_t)(m + i) * N + n0;
                    for (size_t r = 0; r < nr; r++) {
                        if (kc == 0)
                            yr[r] = s[i][r] + (c->bias ? c->bias[n0 + r] : 0.0f);
                        else
                            yr[r] += s[i][r];
                    }
                }
            }
        }
    }
}

static void nf4_matmul(float *y, const float *x, const sw_tensor_t *w, const float *bias, int M,
                       int avx2);
static void i8_matmul(float *y, const float *x, const sw_tensor_t *w, const float *bias, int M,
                      int avx2);

static void cpu_matmul(float *y, const float *x, const sw_tensor_t *w, const float *bias, int M)
{
    struct mm_ctx c = {
        .y = y, .x = x, .w = w->data, .bias = bias,
        .N = (size_t)w->shape[0], .K = (size_t)w->shape[1], .M = M, .dt = w->dtype,
        .avx2 = use_avx2(), .wt = w,
    };
    size_t blocks = (c.N + NB - 1) / NB, work;

    if (M <= 0 || c.N == 0)
        return;
    if (c.K == 0) { /* empty sum: y = bias */
        for (int m = 0; m < M; m++)
            for (size_t n = 0; n < c.N; n++)
                y[(size_t)m * c.N + n] = bias ? bias[n] : 0.0f;
        return;
    }
    if (c.dt == SW_DTYPE_I8) {
        i8_matmul(y, x, w, bias, M, c.avx2);
        return;
    }
    if (c.dt == SW_DTYPE_NF4) {
        nf4_matmul(y, x, w, bias, M, c.avx2);
        return;
    }
    c.rs = c.K * sw_dtype_size(c.dt);
    work = c.N * c.K * (size_t)M;
    par_for(blocks, 1, work, (c.avx2 && M == 1) ? mm_gemv_task : mm_tile_task, &c);
}


/* ------------------------------------------------------------------------------------------ */
/* Quantized weights (kernels/quant.h): NF4 and LLM.int8() matmul                             */
/*
 * NF4, y = x @ W^T with W = code[nibble] * absmax[block]:
 *   - M <= 4 on AVX2 with K % blocksize == 0 and blocksize % 64 == 0 (every bnb checkpoint with
 *     the default 64): the int8-activation GEMV of llama.cpp's Q4_0 x Q8_0 (nf4q_* below). The
 *     calling thread quantizes x once per call to int8 with one scale per 64 columns, into a
 *     64 KiB stack buffer (K in chunks of 64 KiB / 4 columns, whatever M); the pool splits the rows
 *     of W. Per 64 weights of a row: one 32-byte load, two vpshufb through a 16-entry int8 table
 *     of the codes (x 127), vpsignb + vpmaddubsw + vpmaddwd against x, and one FMA of the exact
 *     int32 sum by absmax * xscale in fp32. It is not exact: x and the code each round to 1/127
 *     steps (rel-L2 vs the reference ~0.8% on randn data; NF4's own error is ~9%), like bnb's
 *     fused kernels which are not bit-identical to dequantize-then-matmul either (bnb.md 1.6).
 *     Bandwidth bound: about 17 vector ops per 64 weights and row. x with a NaN or inf takes
 *     the exact path, which propagates it as the reference does.
 *   - otherwise (M > 4, ragged blocks, bs 32, portable): the generic tile path above, with each
 *     tile row dequantized exactly (code * absmax in fp32) by nf4_decode, then the 3x4
 *     micro-kernel.
 * Int8 (LLM.int8(), same algorithm as ref_matmul_int8): the calling thread finds the outlier
 * columns (|x| >= threshold in any row; at most I8_MAX_OUTL of them), quantizes a chunk of rows of
 * x to int8 into a 64 KiB stack buffer (outlier columns zeroed, per-row absmax over the rest),
 * then the pool splits the rows of W: int8 x int8 -> int32 dots (AVX2: vpsignb + vpmaddubsw +
 * vpmaddwd, exact since |products| pairs stay below 2^15), scaled by rowabs * SCB / 127^2, plus
 * the outlier columns in fp32 against CB * SCB / 127. K > I8_MAX_K or too many outlier columns
 * fall back to the reference op (correct, slow, still allocation-free).
 */

#define I8_XQ_BYTES 65536 /* int8 activations quantized at a time */
#define I8_MAX_K 65536    /* the int8 fast path handles K up to this */
#define I8_MAX_ROWS 256   /* rows of x per int8 chunk */
#define I8_MAX_OUTL 256   /* outlier columns the int8 fast path handles */

#if SW_X86
/* dst (n, a multiple of 32) = lut[codes] of the n nibbles starting at byte p, high nibble first. */
SW_AVX2 static void nf4_decode32_avx2(const uint8_t *p, size_t n, const float lut[16], float *dst)
{
    const __m256 lo = _mm256_loadu_ps(lut), hi = _mm256_loadu_ps(lut + 8);
    const __m128i mask = _mm_set1_epi8(15);

    for (size_t i = 0; i < n; i += 32) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(p + i / 2));
        __m128i vh = _mm_and_si128(_mm_srli_epi16(v, 4), mask), vl = _mm_and_si128(v, mask);
        __m128i q0 = _mm_unpacklo_epi8(vh, vl), q1 = _mm_unpackhi_epi8(vh, vl);
        __m128i q[4] = { q0, _mm_srli_si128(q0, 8), q1, _mm_srli_si128(q1, 8) };

        for (int j = 0; j < 4; j++) {
            __m256i ix = _mm256_cvtepu8_epi32(q[j]);
            __m256 f = _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, ix),
                                        _mm256_permutevar8x32_ps(hi, ix),
                                        _mm256_castsi256_ps(_mm256_slli_epi32(ix, 28)));
            _mm256_storeu_ps(dst + i + 8 * (size_t)j, f);
        }
    }
}
#endif

/* Dequantizes flattened elements [i0, i0 + n) of NF4 tensor w into dst (code * absmax, fp32). */
static void nf4_decode(const sw_tensor_t *w, size_t i0, size_t n, float *dst, int avx2)
{
    const sw_qstate_t *qs = w->qs;
    const uint8_t *d = w->data;
    size_t bs = (size_t)qs->blocksize, i = i0, end = i0 + n;

    while (i < end) {
        size_t blk = i / bs, stop = min_sz(end, (blk + 1) * bs);
        float a, lut[16];

        sw_nf4_absmax_range(qs, (int64_t)blk, 1, &a);
        for (int q = 0; q < 16; q++)
            lut[q] = sw_nf4_code[q] * a;
#if SW_X86
        if (avx2 && i % 2 == 0 && stop - i >= 32) {
            size_t n32 = (stop - i) / 32 * 32;

            nf4_decode32_avx2(d + i / 2, n32, lut, dst + (i - i0));
            i += n32;
        }
#endif
        for (; i < stop; i++)
            dst[i - i0] = lut[i % 2 ? d[i / 2] & 15u : d[i / 2] >> 4];
    }
}

/*
 * NF4 x int8 GEMV for M <= 4 (AVX2), the layout of its x copy (per call, on the calling thread's
 * stack) and the task that the pool runs over blocks of NB rows of W.
 *
 * x is quantized per group of 64 columns g (64 | blocksize, so a group lies in one NF4 block):
 * X_g = max |x| over the group, q = round-half-even(x * 127 / X_g) in [-127, 127]. The 64 codes
 * of a group are stored as 32 for the even columns 2j then 32 for the odd columns 2j + 1: a
 * 32-byte load of packed NF4 codes gives the even columns in its high nibbles and the odd ones in
 * its low nibbles (bnb packing), so after vpshufb no interleave is needed. The weight codes map to
 * L[c] = round(NF4Q_S * code[c]) (nf4_i8_lut), so one group of one row contributes the exact
 * int32 sum_j L * q (|sum| < 2^24, so its conversion to fp32 is exact too), times
 * fac = absmax_b * X_g / (127 NF4Q_S) in fp32: one FMA per group and row. The factors of up to
 * NF4Q_SUB groups of the rows in flight are computed before the groups into a stack table, so a
 * nested absmax is rebuilt once per block (sw_nf4_absmax_range) outside the inner loop.
 */
#define NF4Q_XQ_BYTES 65536 /* int8 activations (all rows of x) quantized at a time */
#define NF4Q_SUB 256        /* 64-column groups per refill of the per-group factors */
#define NF4Q_MAX_M 4        /* rows of x the int8 GEMV handles; more use the exact tile path */
#ifndef NF4Q_PF
#define NF4Q_PF 1024        /* software prefetch distance in bytes of each row of codes */
#endif

/*
 * round(NF4Q_S * sw_nf4_code[c]), c = 0..15: 0.59% rms of the code on randn blocks, about the
 * same as the 0.59% that the int8 x adds. (Scale 124 rounds the codes to 0.47% rms, but its errors
 * all lean the same way and the end result on randn GEMVs was worse: rel-L2 0.0098 vs 0.0079.)
 */
#define NF4Q_S 127
static const int8_t nf4_i8_lut[16] = { -127, -88, -67, -50, -36, -23, -12, 0,
                                       10,   20,  31,  43,  56,  71,  92,  127 };

struct nf4q_ctx {
    float *y;
    const int8_t *xq; /* (M, kl) quantized x chunk, each 64-column group as 32 even + 32 odd */
    const float *fx;  /* (M, kl / 64) X_g / (127 NF4Q_S) */
    const sw_tensor_t *w;
    const float *bias;
    size_t N, K, kc, kl; /* this call handles columns [kc, kc + kl) */
    int M;
};

#if SW_X86
/*
 * The absmax of NF4 blocks [b0, b0 + n): a pointer into the plain array, or, nested, rebuilt into
 * buf (n) as map[q] * nested_absmax[b / nested_blocksize] + offset, 8 blocks per pair of gathers
 * (a scalar loop measured 13% slower overall).
 * The compiler may fuse that multiply-add (the reference rounds twice): 1 ulp of the absmax at
 * most, far inside the int8 path's tolerance.
 */
SW_AVX2 static const float *nf4q_absmax(const sw_qstate_t *qs, size_t b0, size_t n, float *buf)
{
    const size_t nbs = (size_t)qs->nested_blocksize;
    size_t i = 0;

    if (!qs->qabsmax)
        return qs->absmax + b0;
    if (nbs == 256 && b0 + n <= (size_t)INT32_MAX) {
        const __m256i step = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        const __m256 off = _mm256_set1_ps(qs->offset);

        for (; i + 8 <= n; i += 8) {
            __m256i q = _mm256_cvtepu8_epi32(
                _mm_loadl_epi64((const __m128i *)(const void *)(qs->qabsmax + b0 + i)));
            __m256i nb = _mm256_srli_epi32(
                _mm256_add_epi32(_mm256_set1_epi32((int)(b0 + i)), step), 8);
            __m256 v = _mm256_mul_ps(_mm256_i32gather_ps(sw_q8_dynamic_map, q, 4),
                                     _mm256_i32gather_ps(qs->nested_absmax, nb, 4));

            _mm256_storeu_ps(buf + i, _mm256_add_ps(v, off));
        }
    }
    for (; i < n; i++)
        buf[i] = sw_q8_dynamic_map[qs->qabsmax[b0 + i]] * qs->nested_absmax[(b0 + i) / nbs] +
                 qs->offset;
    return buf;
}

/*
 * s[m * R + r] = the chunk's part of x_m . w_{row[r]} (int8 x NF4-level products per group, scaled
 * per group), for MR rows of x and R rows of W; both are compile-time constants after inlining.
 */
SW_AVX2 SW_INLINE void nf4q_dot(const struct nf4q_ctx *c, const size_t *row, float *s, const int R,
                                const int MR)
{
    const sw_qstate_t *qs = c->w->qs;
    const size_t bs = (size_t)qs->blocksize, ng = c->kl / 64, K = c->K;
    const __m256i lut = _mm256_broadcastsi128_si256(
        _mm_loadu_si128((const __m128i *)(const void *)nf4_i8_lut));
    const __m256i m4 = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
    float fac[NF4Q_MAX_M][NB][NF4Q_SUB] __attribute__((aligned(32)));
    float amb[NF4Q_SUB];
    const uint8_t *p[NB];
    __m256 acc[NF4Q_MAX_M][NB];

#pragma GCC unroll 4
    for (int r = 0; r < R; r++) {
        p[r] = (const uint8_t *)c->w->data + (row[r] * K + c->kc) / 2;
#pragma GCC unroll 4
        for (int m = 0; m < MR; m++)
            acc[m][r] = _mm256_setzero_ps();
    }
    for (size_t g0 = 0; g0 < ng; g0 += NF4Q_SUB) {
        size_t gn = min_sz(NF4Q_SUB, ng - g0), gpb = bs / 64;

        /* factors of groups [g0, g0 + gn): block starts are multiples of bs (kc, K are) */
        for (int r = 0; r < R; r++) {
            size_t i0 = row[r] * K + c->kc + g0 * 64;

            const float *am = nf4q_absmax(qs, i0 / bs, gn / gpb, amb);

            for (int m = 0; m < MR; m++) {
                const float *fx = c->fx + (size_t)m * ng + g0;
                size_t j = 0;

                if (gpb == 1)
                    for (; j + 8 <= gn; j += 8)
                        _mm256_store_ps(&fac[m][r][j], _mm256_mul_ps(_mm256_loadu_ps(am + j),
                                                                     _mm256_loadu_ps(fx + j)));
                for (; j < gn; j++)
                    fac[m][r][j] = am[j / gpb] * fx[j];
            }
        }
        for (size_t j = 0; j < gn; j++) {
            size_t g = g0 + j;
            __m256i wh[NB], wl[NB];

#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                __m256i v = _mm256_loadu_si256((const __m256i *)(const void *)(p[r] + g * 32));

                /* rows of 2 KiB (K = 4096) are too short for the hardware prefetcher alone;
                 * past a row's end this prefetches the next row, past W's end nothing faults */
                _mm_prefetch((const char *)(p[r] + g * 32 + NF4Q_PF), _MM_HINT_T0);
                wh[r] = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), m4));
                wl[r] = _mm256_shuffle_epi8(lut, _mm256_and_si256(v, m4));
            }
#pragma GCC unroll 4
            for (int m = 0; m < MR; m++) {
                const int8_t *xg = c->xq + (size_t)m * c->kl + g * 64;
                __m256i xe = _mm256_load_si256((const __m256i *)(const void *)xg);
                __m256i xo = _mm256_load_si256((const __m256i *)(const void *)(xg + 32));
                __m256i ae = _mm256_abs_epi8(xe), ao = _mm256_abs_epi8(xo);

#pragma GCC unroll 4
                for (int r = 0; r < R; r++) {
                    /* |x| * (w signed like x) = x * w; pairs stay below 2^15 (127 * 127 * 2) */
                    __m256i pe = _mm256_maddubs_epi16(ae, _mm256_sign_epi8(wh[r], xe));
                    __m256i po = _mm256_maddubs_epi16(ao, _mm256_sign_epi8(wl[r], xo));
                    __m256i d = _mm256_add_epi32(_mm256_madd_epi16(pe, ones),
                                                 _mm256_madd_epi16(po, ones));
                    acc[m][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d),
                                                _mm256_broadcast_ss(&fac[m][r][j]), acc[m][r]);
                }
            }
        }
    }
    /* hsum4 whatever R: a row's sum must not depend on how many rows of W share the pass (M == 1
     * runs 4 at a time, M > 1 two), or the rows of a batch would differ from the same rows alone */
#pragma GCC unroll 4
    for (int m = 0; m < MR; m++) {
        __m128 t = hsum4(acc[m][0], acc[m][R > 1 ? 1 : 0], acc[m][R > 2 ? 2 : 0],
                         acc[m][R > 3 ? 3 : 0]);
        if (R == NB) {
            _mm_storeu_ps(s + m * R, t);
        } else {
            float l[NB];
            _mm_storeu_ps(l, t);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++)
                s[m * R + r] = l[r];
        }
    }
}

/* Stores (first chunk: with bias) or adds s[m * R + r] into y for the valid rows n0 + r0 + r. */
static void nf4q_store(const struct nf4q_ctx *c, const float *s, size_t n0, size_t r0, int R,
                       size_t nr)
{
    for (int m = 0; m < c->M; m++)
        for (int r = 0; r < R && r0 + (size_t)r < nr; r++) {
            size_t n = n0 + r0 + (size_t)r;
            float *yv = c->y + (size_t)m * c->N + n;

            if (c->kc == 0)
                *yv = s[m * R + r] + (c->bias ? c->bias[n] : 0.0f);
            else
                *yv += s[m * R + r];
        }
}

/* Pool task: blocks [b, e) of NB rows of W; M == 1 does all NB rows per pass, M > 1 two. */
SW_AVX2 static void nf4q_task(void *ctx, size_t b, size_t e, int tid)
{
    const struct nf4q_ctx *c = ctx;
    float s[NF4Q_MAX_M * NB];

    for (size_t blk = b; blk < e; blk++) {
        size_t n0 = blk * NB, nr = min_sz(NB, c->N - n0), row[NB];

        for (size_t r = 0; r < NB; r++) /* missing rows repeat row 0 (cached, results unused) */
            row[r] = n0 + (r < nr ? r : 0);
        if (c->M == 1) {
            nf4q_dot(c, row, s, NB, 1);
            nf4q_store(c, s, n0, 0, NB, nr);
            continue;
        }
        for (size_t r0 = 0; r0 < nr; r0 += 2) {
            const size_t *rw = row + r0;

            switch (c->M) {
            case 2:
                nf4q_dot(c, rw, s, 2, 2);
                break;
            case 3:
                nf4q_dot(c, rw, s, 2, 3);
                break;
            default:
                nf4q_dot(c, rw, s, 2, 4);
                break;
            }
            nf4q_store(c, s, n0, r0, 2, nr);
        }
    }
}

/* 1 if all n floats at x are finite. */
SW_AVX2 static int all_finite_avx2(const float *x, size_t n)
{
    const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 big = _mm256_set1_ps(3.4028234663852886e38f);
    __m256 bad = _mm256_setzero_ps();
    size_t i = 0;
    int ok = 1;

    for (; i + 8 <= n; i += 8) /* NaN and inf compare "not <= FLT_MAX" */
        bad = _mm256_or_ps(bad, _mm256_cmp_ps(_mm256_and_ps(_mm256_loadu_ps(x + i), absm), big,
                                              _CMP_NLE_UQ));
    for (; i < n; i++)
        ok &= fabsf(x[i]) <= 3.4028234663852886e38f;
    return ok && !_mm256_movemask_ps(bad);
}

/*
 * Quantizes columns [kc, kc + kl) (kl a multiple of 64) of the M rows of x (row stride K, finite)
 * into xq (M, kl) and fx (M, kl / 64) as described above.
 */
SW_AVX2 static void nf4q_quantize_x(const float *x, size_t K, int M, size_t kc, size_t kl,
                                   int8_t *xq, float *fx)
{
    const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);

    for (int m = 0; m < M; m++) {
        for (size_t g = 0; g < kl / 64; g++) {
            const float *xg = x + (size_t)m * K + kc + g * 64;
            int8_t *q = xq + (size_t)m * kl + g * 64;
            __m256 ev[4], od[4], mx = _mm256_setzero_ps(), inv;
            __m128 h;
            float X;

            for (int i = 0; i < 4; i++) { /* columns 16i .. 16i + 15 split into even and odd */
                __m256 a = _mm256_loadu_ps(xg + 16 * i), b = _mm256_loadu_ps(xg + 16 * i + 8);
                __m256 aa = _mm256_and_ps(a, absm), ab = _mm256_and_ps(b, absm);

                mx = _mm256_max_ps(mx, _mm256_max_ps(aa, ab));
                ev[i] = _mm256_castpd_ps(_mm256_permute4x64_pd(
                    _mm256_castps_pd(_mm256_shuffle_ps(a, b, 0x88)), 0xd8));
                od[i] = _mm256_castpd_ps(_mm256_permute4x64_pd(
                    _mm256_castps_pd(_mm256_shuffle_ps(a, b, 0xdd)), 0xd8));
            }
            h = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
            h = _mm_max_ps(h, _mm_movehl_ps(h, h));
            h = _mm_max_ss(h, _mm_movehdup_ps(h));
            X = _mm_cvtss_f32(h);
            fx[(size_t)m * (kl / 64) + g] = X / (127.0f * NF4Q_S);
            inv = _mm256_set1_ps(X > 127.0f / FLT_MAX ? 127.0f / X : 0.0f); /* tiny X: 127 / X would be inf */
            for (int half = 0; half < 2; half++) {
                const __m256 *v = half ? od : ev;
                __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v[0], inv));
                __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v[1], inv));
                __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v[2], inv));
                __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v[3], inv));
                __m256i b8 = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1),
                                                _mm256_packs_epi32(i2, i3));

                _mm256_store_si256((__m256i *)(void *)(q + 32 * half),
                                   _mm256_permutevar8x32_epi32(b8, perm));
            }
        }
    }
}

/*
 * The int8 GEMV for M <= NF4Q_MAX_M rows of x; needs K % blocksize == 0 and 64 | blocksize.
 * Returns 0, or -1 (nothing written) when x holds a NaN or an infinity: the exact path then
 * propagates them as the reference does.
 */
SW_AVX2 static int nf4q_matmul(float *y, const float *x, const sw_tensor_t *w, const float *bias,
                               int M)
{
    size_t N = (size_t)w->shape[0], K = (size_t)w->shape[1], bs = (size_t)w->qs->blocksize;
    /* the same K chunks for every M (a chunk's sum is added to y on its own): >= bs, bs <= 4096 */
    size_t kmax = NF4Q_XQ_BYTES / NF4Q_MAX_M / bs * bs;
    int8_t xq[NF4Q_XQ_BYTES] __attribute__((aligned(32)));
    float fx[NF4Q_XQ_BYTES / 64];

    if (!all_finite_avx2(x, (size_t)M * K))
        return -1;
    for (size_t kc = 0; kc < K; kc += kmax) {
        struct nf4q_ctx c = { .y = y, .xq = xq, .fx = fx, .w = w, .bias = bias, .N = N, .K = K,
                              .kc = kc, .kl = min_sz(kmax, K - kc), .M = M };

        nf4q_quantize_x(x, K, M, kc, c.kl, xq, fx);
        par_for((N + NB - 1) / NB, 1, N * c.kl * (size_t)M, nf4q_task, &c);
    }
    return 0;
}
#endif

static void nf4_matmul(float *y, const float *x, const sw_tensor_t *w, const float *bias, int M,
                       int avx2)
{
    size_t N = (size_t)w->shape[0], K = (size_t)w->shape[1], bs = (size_t)w->qs->blocksize;
    size_t blocks = (N + NB - 1) / NB;

#if SW_X86
    if (avx2 && M <= NF4Q_MAX_M && bs % 64 == 0 && K % bs == 0) {
        if (nf4q_matmul(y, x, w, bias, M) == 0)
            return;
        /* x holds a NaN or an infinity: row by row, so that the finite rows still take the int8
         * GEMV and get the bits they would get in any other call (batch invariance) */
        if (M > 1) {
            for (int m = 0; m < M; m++)
                nf4_matmul(y + (size_t)m * N, x + (size_t)m * K, w, bias, 1, avx2);
            return;
        }
    }
#endif
    struct mm_ctx c = { .y = y, .x = x, .w = w->data, .bias = bias, .N = N, .K = K, .M = M,
                        .dt = SW_DTYPE_NF4, .avx2 = avx2, .wt = w, .rs = 0 };
    par_for(blocks, 1, N * K * (size_t)M, mm_tile_task, &c);
}

struct i8_ctx {
    float *y;
    const float *x;
    const int8_t *xq; /* (mc, K) quantized rows m0.. of x, outlier columns zeroed */
    const float *xa;  /* (mc) their absmax */
    const int32_t *ol; /* (nol) outlier columns, ascending */
    int nol;
    const sw_tensor_t *w;
    const float *bias;
    size_t N, K;
    int m0, mc;
    int avx2;
};

static int32_t dot_i8_portable(const int8_t *a, const int8_t *b, size_t n)
{
    int32_t acc = 0;

    for (size_t i = 0; i < n; i++)
        acc += (int32_t)a[i] * (int32_t)b[i];
    return acc;
}

#if SW_X86
SW_AVX2 SW_INLINE int32_t hsum_i32(__m256i v)
{
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

/* out[r] = x . w_r over n int8 values, exact (x, w in [-127, 127]). */
SW_AVX2 static void dot4_i8_avx2(int32_t out[NB], const int8_t *x, const int8_t *const w[NB],
                                 size_t n)
{
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc[NB] = { _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                        _mm256_setzero_si256() };
    size_t k = 0;

    for (; k + 32 <= n; k += 32) {
        __m256i xv = _mm256_loadu_si256((const __m256i *)(const void *)(x + k));
        __m256i ax = _mm256_abs_epi8(xv);

        for (int r = 0; r < NB; r++) {
            __m256i wv = _mm256_loadu_si256((const __m256i *)(const void *)(w[r] + k));
            __m256i p = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(wv, xv));
            acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(p, ones));
        }
    }
    for (int r = 0; r < NB; r++)
        out[r] = hsum_i32(acc[r]) + dot_i8_portable(x + k, w[r] + k, n - k);
}
#endif

static void i8_task(void *ctx, size_t b, size_t e, int tid)
{
    const struct i8_ctx *c = ctx;
    const int8_t *cb = c->w->data;
    const float *scb = c->w->qs->scb;
    const size_t N = c->N, K = c->K;

    for (size_t blk = b; blk < e; blk++) {
        size_t n0 = blk * NB, nr = min_sz(NB, N - n0);
        const int8_t *wr[NB];

        for (size_t r = 0; r < NB; r++)
            wr[r] = cb + (n0 + (r < nr ? r : 0)) * K;
        for (int i = 0; i < c->mc; i++) {
            const int8_t *xq = c->xq + (size_t)i * K;
            const float *xr = c->x + (size_t)(c->m0 + i) * K;
            int32_t acc[NB];

#if SW_X86
            if (c->avx2)
                dot4_i8_avx2(acc, xq, wr, K);
            else
#endif
                for (size_t r = 0; r < nr; r++)
                    acc[r] = dot_i8_portable(xq, wr[r], K);
            for (size_t r = 0; r < nr; r++) {
                size_t n = n0 + r;
                float out = 0.0f;

                for (int j = 0; j < c->nol; j++) /* same order and formula as the reference */
                    out += xr[c->ol[j]] * ((float)wr[r][c->ol[j]] * scb[n] / 127.0f);
                out += (float)acc[r] * c->xa[i] * scb[n] * 6.200012e-05f;
                c->y[(size_t)(c->m0 + i) * N + n] = out + (c->bias ? c->bias[n] : 0.0f);
            }
        }
    }
}

static void i8_matmul(float *y, const float *x, const sw_tensor_t *w, const float *bias, int M,
                      int avx2)
{
    size_t N = (size_t)w->shape[0], K = (size_t)w->shape[1], blocks = (N + NB - 1) / NB;
    float thr = w->qs->threshold;
    uint64_t outl[I8_MAX_K / 64];
    int32_t ol[I8_MAX_OUTL];
    int8_t xq[I8_XQ_BYTES];
    float xa[I8_MAX_ROWS];
    int nol = 0, mc;

    if (K > I8_MAX_K) {
        sw_ops_ref.matmul(y, x, w, bias, M);
        return;
    }
    memset(outl, 0, (K + 63) / 64 * sizeof(uint64_t));
    if (thr > 0.0f) {
        for (size_t k = 0; k < K; k++) {
            for (int m = 0; m < M; m++) {
                if (fabsf(x[(size_t)m * K + k]) >= thr) {
                    if (nol == I8_MAX_OUTL) {
                        sw_ops_ref.matmul(y, x, w, bias, M);
                        return;
                    }
                    outl[k / 64] |= 1ull << (k % 64);
                    ol[nol++] = (int32_t)k;
                    break;
                }
            }
        }
    }
    mc = (int)min_sz(I8_MAX_ROWS, I8_XQ_BYTES / K);
    for (int m0 = 0; m0 < M; m0 += mc) {
        struct i8_ctx c = { .y = y, .x = x, .xq = xq, .xa = xa, .ol = ol, .nol = nol, .w = w,
                            .bias = bias, .N = N, .K = K, .m0 = m0, .avx2 = avx2,
                            .mc = M - m0 < mc ? M - m0 : mc };

        for (int i = 0; i < c.mc; i++) {
            const float *xr = x + (size_t)(m0 + i) * K;
            int8_t *qr = xq + (size_t)i * K;
            float a = 0.0f, scale;
            int bad = 0;

            for (size_t k = 0; k < K; k++)
                if (!(outl[k / 64] >> (k % 64) & 1)) {
                    bad |= !isfinite(xr[k]);
                    a = fmaxf(a, fabsf(xr[k]));
                }
            if (bad) /* as the reference: NaN out, nothing converted to int8 */
                a = NAN;
            else if (a < 127.0f / FLT_MAX) /* as the reference: 127 / a would overflow, the row is 0 */
                a = 0.0f;
            scale = 127.0f / a;
            for (size_t k = 0; k < K; k++)
                qr[k] = (a > 0.0f && !(outl[k / 64] >> (k % 64) & 1)) ?
                        (int8_t)nearbyintf(xr[k] * scale) : 0;
            xa[i] = a;
        }
        par_for(blocks, 1, N * K * (size_t)c.mc, i8_task, &c);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* rmsnorm (pool threads, a range of rows each). Sum of squares in double, as the reference.    */

struct rms_ctx {
    float *y;
    const float *x, *w;
    int H;
    float eps;
};

static void rms_task(void *ctx, size_t b, size_t e, int tid)
{
    const struct rms_ctx *c = ctx;
    size_t H = (size_t)c->H;

    for (size_t m = b; m < e; m++) {
        const float *xr = c->x + m * H;
        float *yr = c->y + m * H;
        double acc[4] = { 0 }, ss;
        size_t i = 0;
        float r;

        for (; i + 4 <= H; i += 4)
            for (int j = 0; j < 4; j++)
                acc[j] += (double)xr[i + j] * xr[i + j];
        for (; i < H; i++)
            acc[0] += (double)xr[i] * xr[i];
        ss = (acc[0] + acc[1]) + (acc[2] + acc[3]);
        r = 1.0f / sqrtf((float)(ss / (double)H) + c->eps);
        for (i = 0; i < H; i++)
            yr[i] = c->w[i] * (xr[i] * r);
    }
}

static void cpu_rmsnorm(float *y, const float *x, const float *w, int M, int H, float eps)
{
    struct rms_ctx c = { .y = y, .x = x, .w = w, .H = H, .eps = eps };

    if (M <= 0 || H <= 0)
        return;
    par_for((size_t)M, 1, (size_t)M * (size_t)H, rms_task, &c);
}

/* ------------------------------------------------------------------------------------------ */
/* rope (pool threads, a range of rows m each): cos/sin computed once per row for all heads,    */
/* with the reference's formula, so the results match it bit for bit.                          */

struct rope_ctx {
    float *x;
    const int32_t *pos;
    const float *inv_freq;
    int nh, HD;
    float attn_factor;
};

static void rope_task(void *ctx, size_t b, size_t e, int tid)
{
    const struct rope_ctx *c = ctx;
    size_t half = (size_t)c->HD / 2;
    float cs[ROPE_CHUNK], sn[ROPE_CHUNK];

    for (size_t m = b; m < e; m++) {
        for (size_t i0 = 0; i0 < half; i0 += ROPE_CHUNK) {
            size_t n = min_sz(ROPE_CHUNK, half - i0);

            for (size_t i = 0; i < n; i++) {
                float ang = (float)c->pos[m] * c->inv_freq[i0 + i];
                cs[i] = (float)cos((double)ang) * c->attn_factor;
                sn[i] = (float)sin((double)ang) * c->attn_factor;
            }
            for (int h = 0; h < c->nh; h++) {
                float *v = c->x + (m * (size_t)c->nh + (size_t)h) * (size_t)c->HD + i0;
                for (size_t i = 0; i < n; i++) {
                    float a = v[i], bb = v[i + half];
                    v[i] = a * cs[i] - bb * sn[i];
                    v[i + half] = bb * cs[i] + a * sn[i];
                }
            }
        }
    }
}

static void cpu_rope(float *x, const int32_t *pos, int M, int nh, int HD, const float *inv_freq,
                     float attn_factor)
{
    struct rope_ctx c = { .x = x, .pos = pos, .inv_freq = inv_freq, .nh = nh, .HD = HD,
                          .attn_factor = attn_factor };

    if (M <= 0 || nh <= 0 || HD < 2)
        return;
    /* weight cos/sin heavily: they cost far more than the rotation */
    par_for((size_t)M, 1, (size_t)M * (size_t)HD * (size_t)(nh + 32), rope_task, &c);
}

/* ------------------------------------------------------------------------------------------ */
/* attention (pool threads, a range of query rows (b, t, h) each; score row from scratch[tid])  */

struct attn_ctx {
    float *out;
    const float *q, *k, *v;
    int T, pos0, max_T, NH, NKV, HD, window;
    float scale;
    float *scratch;
    size_t stride;
};

SW_INLINE void attn_rows(const struct attn_ctx *c, size_t b0, size_t e0, int tid, int avx2)
{
    size_t HD = (size_t)c->HD, group = (size_t)(c->NH / c->NKV);
    float *sc = c->scratch + (size_t)tid * c->stride;

    for (size_t r = b0; r < e0; r++) {
        size_t h = r % (size_t)c->NH, t = (r / (size_t)c->NH) % (size_t)c->T;
        size_t b = r / ((size_t)c->NH * (size_t)c->T), kvh = h / group;
        int p = c->pos0 + (int)t;
        int lo = (c->window > 0 && p - c->window + 1 > 0) ? p - c->window + 1 : 0;
        const float *qv = c->q + r * HD;
        const float *kb = c->k + (b * (size_t)c->NKV + kvh) * (size_t)c->max_T * HD;
        const float *vb = c->v + (b * (size_t)c->NKV + kvh) * (size_t)c->max_T * HD;
        float *o = c->out + r * HD, mx = -INFINITY, inv;
        double sum = 0.0;

        for (int j = lo; j <= p; j++) {
#if SW_X86
            float s = avx2 ? dot_avx2(qv, kb + (size_t)j * HD, HD)
                           : dot_portable(qv, kb + (size_t)j * HD, HD);
#else
            float s = dot_portable(qv, kb + (size_t)j * HD, HD);
#endif
            sc[j] = s * c->scale;
            if (sc[j] > mx)
                mx = sc[j];
        }
        for (int j = lo; j <= p; j++) {
            sc[j] = expf(sc[j] - mx);
            sum += sc[j];
        }
        memset(o, 0, HD * sizeof(float));
        for (int j = lo; j <= p; j++) {
#if SW_X86
            if (avx2)
                axpy_avx2(o, sc[j], vb + (size_t)j * HD, HD);
            else
#endif
                axpy_portable(o, sc[j], vb + (size_t)j * HD, HD);
        }
        inv = (float)(1.0 / sum);
        for (size_t d = 0; d < HD; d++)
            o[d] *= inv;
    }
}

static void attn_task_portable(void *ctx, size_t b, size_t e, int tid)
{
    attn_rows(ctx, b, e, tid, 0);
}

#if SW_X86
SW_AVX2 static void attn_task_avx2(void *ctx, size_t b, size_t e, int tid)
{
    attn_rows(ctx, b, e, tid, 1);
}
#endif

static void cpu_attention(float *out, const float *q, const float *k, const float *v, int B,
                          int T, int pos0, int max_T, int NH, int NKV, int HD, int window,
                          float scale, float *scratch)
{
    struct attn_ctx c = {
        .out = out, .q = q, .k = k, .v = v, .T = T, .pos0 = pos0, .max_T = max_T, .NH = NH,
        .NKV = NKV, .HD = HD, .window = window, .scale = scale, .scratch = scratch,
        .stride = ((size_t)max_T + 15) & ~(size_t)15,
    };
    size_t rows = (size_t)B * (size_t)T * (size_t)NH;
    size_t keys = (size_t)pos0 + (size_t)T;
    sw_pool_fn fn = attn_task_portable;

    if (rows == 0 || HD <= 0)
        return;
#if SW_X86
    if (use_avx2())
        fn = attn_task_avx2;
#endif
    /* the scratch holds one row per thread of the global pool, so always use that pool */
    par_for(rows, 1, rows * keys * (size_t)HD * 2, fn, &c);
}

/* ------------------------------------------------------------------------------------------ */
/* swiglu, add (pool threads, element ranges)                                                  */

struct ew_ctx {
    float *out;
    const float *a, *b;
};

static void swiglu_task(void *ctx, size_t b, size_t e, int tid)
{
    const struct ew_ctx *c = ctx;

    for (size_t i = b; i < e; i++) {
        float g = c->a[i];
        c->out[i] = g / (1.0f + expf(-g)) * c->b[i];
    }
}

static void cpu_swiglu(float *out, const float *gate, const float *up, size_t n)
{
    struct ew_ctx c = { .out = out, .a = gate, .b = up };

    par_for(n, 1024, n * 16, swiglu_task, &c);
}

static void add_task(void *ctx, size_t b, size_t e, int tid)
{
    const struct ew_ctx *c = ctx;
    float *restrict y = c->out;
    const float *restrict x = c->a;

    for (size_t i = b; i < e; i++)
        y[i] += x[i];
}

static void cpu_add(float *y, const float *x, size_t n)
{
    struct ew_ctx c = { .out = y, .a = x };

    par_for(n, 4096, n / 4, add_task, &c);
}

/* ------------------------------------------------------------------------------------------ */
/* embed (pool threads, ranges of the flattened (M, H) output)                                 */

struct embed_ctx {
    float *y;
    const sw_tensor_t *table;
    const int32_t *ids;
    size_t H;
    int avx2;
};

static void embed_task(void *ctx, size_t b, size_t e, int tid)
{
    const struct embed_ctx *c = ctx;
    size_t es = sw_dtype_size(c->table->dtype);

    while (b < e) {
        size_t m = b / c->H, i0 = b % c->H, n = min_sz(c->H - i0, e - b);
        const unsigned char *src =
            (const unsigned char *)c->table->data + ((size_t)c->ids[m] * c->H + i0) * es;

#if SW_X86
        if (c->avx2)
            cvt_avx2(c->y + b, src, n, c->table->dtype);
        else
#endif
            cvt_portable(c->y + b, src, n, c->table->dtype);
        b += n;
    }
}

static void cpu_embed(float *y, const sw_tensor_t *table, const int32_t *ids, int M)
{
    struct embed_ctx c = { .y = y, .table = table, .ids = ids, .H = (size_t)table->shape[1],
                           .avx2 = use_avx2() };

    if (M <= 0 || c.H == 0)
        return;
    par_for((size_t)M * c.H, 1024, (size_t)M * c.H / 2, embed_task, &c);
}

/* ------------------------------------------------------------------------------------------ */
/* batch invariance of matmul (see the head of this file)                                      */

static int cpu_matmul_batch_range(const sw_tensor_t *w, int M, int *lo, int *hi)
{
    *lo = 1;
    *hi = INT_MAX;
    if (w->dtype == SW_DTYPE_I8 && w->qs->threshold > 0.0f) {
        *lo = *hi = M;
        return -1;
    }
#if SW_X86
    if (w->dtype == SW_DTYPE_NF4 && use_avx2() && w->qs->blocksize % 64 == 0 &&
        w->shape[1] % w->qs->blocksize == 0) {
        if (M <= NF4Q_MAX_M)
            *hi = NF4Q_MAX_M;
        else
            *lo = NF4Q_MAX_M + 1;
    }
#endif
    return 0;
}

const sw_ops_t sw_ops_cpu = {
    .name = "cpu",
    .matmul = cpu_matmul,
    .rmsnorm = cpu_rmsnorm,
    .rope = cpu_rope,
    .attention = cpu_attention,
    .swiglu = cpu_swiglu,
    .add = cpu_add,
    .embed = cpu_embed,
    .matmul_batch_range = cpu_matmul_batch_range,
};
