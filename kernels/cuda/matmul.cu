/*
 * matmul.cu - y (M, N) = x (M, K) @ w^T + bias through cuBLAS, for dense F32/F16/BF16 weights.
 *
 * Layout: w is (N, K) row-major, which cuBLAS (column-major) sees as a K x N matrix with
 * leading dimension K; x (M, K) row-major is K x M with ld K; y (M, N) row-major is N x M with
 * ld N. So y^T = op_T(w) * x is one GemmEx(OP_T, OP_N, m = N, n = M, k = K).
 *
 * cuBLAS multiplies A and B of one dtype only, so fp32 activations against a 16-bit weight
 * need a conversion first (backend.h, sw_cuda_matmul_mode_t):
 *   FP32 mode: widen w to fp32 in the workspace (exact), then an fp32 GEMM (CUBLAS_COMPUTE_32F);
 *   FAST mode: round x to w's dtype in the workspace, then a 16-bit GEMM with fp32 accumulation
 *              and fp32 output (fp32 weights: the fp32 GEMM in TF32).
 * The bias is added by a separate pass over y.
 *
 * Small batches (M <= SW_CUDA_GEMV_MAX_M) take our own weight-streaming GEMV instead, for dense
 * and NF4 weights alike ("GEMV" below): decode reads every weight once per token, so the time is
 * the weight bytes over the memory bandwidth, and the kernel is built to stream them:
 *   - one block of GEMV_WARPS = 4 warps owns GEMV_R = 4 consecutive output rows and splits K
 *     among its warps (a 4096-wide row is one step of 128 lanes), so there are N / 4 blocks and
 *     enough warps per SM to hide latency; each lane loads 16 bytes of each of the 4 rows per
 *     step (8 bf16/f16, 4 f32 or 32 NF4 weights), consecutive lanes consecutive 16-byte pieces
 *     (coalesced, 16-byte loads, 4 independent loads in flight per lane, two steps unrolled);
 *   - the x values a lane needs are read once per step (float4, through L1) and used for all 4
 *     rows, which cuts x traffic per weight byte by 4 (x is fp32: for NF4 it is 8 times the
 *     weight bytes per row);
 *   - NF4: the 16-entry code table sits in shared memory (16 distinct words in 16 banks: lanes
 *     reading one entry broadcast, different entries never conflict); a 16-byte piece of 32 codes
 *     lies in one absmax block (K % 32 == 0 and a power-of-two blocksize >= 32), so the absmax is
 *     fetched once per piece and row (nested: map[qabsmax] * nested_absmax + offset, two fp32
 *     roundings as bnb and sw_nf4_absmax_range; the 256-entry map in shared memory too);
 *     each weight is code * absmax in fp32, exactly the reference's dequantized value;
 *   - fp32 accumulation per (x row, output row) in registers (M <= 16 rows: up to 64 sums),
 *     reduced across the warp with shuffles, then across the block's warps in shared memory in
 *     a fixed order (deterministic); the bias is added in the same store.
 * The result differs from the reference only in the order of the fp32 summation.
 */
#include <errno.h>
#include <string.h>

#include "internal.h"

static __global__ void widen_kernel(float *dst, const void *src, int dt, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = sw_dev_load(src, dt, i);
}

/* Rounds n floats to f16 or bf16 (round to nearest even). */
static __global__ void narrow_kernel(uint16_t *dst, const float *src, int dt, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        if (dt == SW_DTYPE_F16)
            dst[i] = __half_as_ushort(__float2half_rn(src[i]));
        else
            dst[i] = __bfloat16_as_ushort(__float2bfloat16_rn(src[i]));
    }
}

/* y (M, N) += bias (N) broadcast over rows. */
static __global__ void bias_kernel(float *y, const float *bias, size_t N, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] += bias[i % N];
}

/* ------------------------------------------------------------------------------------------ */
/* GEMV for M <= SW_CUDA_GEMV_MAX_M (see the head of the file)                                 */

#define GEMV_R 4       /* output rows per warp */
#define GEMV_WARPS 4   /* warps per block */

typedef struct {
    float code[16];  /* sw_nf4_code */
    float map[256];  /* sw_q8_dynamic_map (nested absmax) */
} nf4_tables_t;

typedef struct {
    const uint8_t *w;      /* packed codes */
    const float *absmax;   /* plain absmax, or NULL when nested */
    const uint8_t *qabsmax;
    const float *nested;
    int nested_shift;      /* log2(nested_blocksize) when it is a power of two, else -1 */
    int nested_bs;
    float offset;
    int bs_shift;          /* log2(blocksize) */
} nf4_args_t;

static __device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/*
 * The end of both GEMV kernels: warp sums, then the block's warps summed in shared memory in a
 * fixed order, and y[m, n0 + r] = sum + bias written for the rows that exist.
 */
template <int MT, int R = GEMV_R>
static __device__ __forceinline__ void gemv_store(float *__restrict__ y, float (&acc)[MT][R],
                                                  float (&red)[GEMV_WARPS][MT][R],
                                                  const float *__restrict__ bias, int M, int N,
                                                  int n0)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

#pragma unroll
    for (int m = 0; m < MT; m++) {
#pragma unroll
        for (int r = 0; r < R; r++) {
            float v = warp_sum(acc[m][r]);
            if (lane == 0)
                red[warp][m][r] = v;
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < M * R; i += blockDim.x) {
        int m = i / R, r = i % R;
        float v = 0.0f;
        for (int w = 0; w < GEMV_WARPS; w++)
            v += red[w][m][r];
        if (n0 + r < N)
            y[(size_t)m * N + n0 + r] = bias ? v + bias[n0 + r] : v;
    }
}

/* Widens the 16 bytes u of a dense weight into EPL floats. */
template <int DT>
static __device__ __forceinline__ void widen16(const uint4 &u, float *f)
{
    const uint32_t w[4] = { u.x, u.y, u.z, u.w };
    if (DT == SW_DTYPE_F32) {
#pragma unroll
        for (int i = 0; i < 4; i++)
            f[i] = __uint_as_float(w[i]);
    } else if (DT == SW_DTYPE_BF16) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            f[2 * i] = __uint_as_float(w[i] << 16);
            f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
        }
    } else {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            f[2 * i] = __half2float(__ushort_as_half((unsigned short)(w[i] & 0xffffu)));
            f[2 * i + 1] = __half2float(__ushort_as_half((unsigned short)(w[i] >> 16)));
        }
    }
}

/*
 * Dense GEMV: y (M, N) = x (M, K) @ w^T + bias, w (N, K) of dtype DT, M <= MT, K a multiple of
 * EPL = 16 / element size. Block: GEMV_WARPS warps, each GEMV_R rows.
 */
template <int DT, int MT>
static __global__ void __launch_bounds__(GEMV_WARPS * 32)
    dense_gemv_kernel(float *__restrict__ y, const float *__restrict__ x,
                      const void *__restrict__ wv, const float *__restrict__ bias, int M, int N,
                      int K)
{
    constexpr int EPL = DT == SW_DTYPE_F32 ? 4 : 8;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int n0 = blockIdx.x * GEMV_R;
    const int G = K / EPL; /* 16-byte pieces per row */
    __shared__ float red[GEMV_WARPS][MT][GEMV_R];
    const size_t row_bytes = (size_t)K * (DT == SW_DTYPE_F32 ? 4 : 2);
    const uint8_t *w = (const uint8_t *)wv;
    float acc[MT][GEMV_R];

    if (n0 >= N)
        return;
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
        for (int r = 0; r < GEMV_R; r++)
            acc[m][r] = 0.0f;
#pragma unroll 2
    for (int g = warp * 32 + lane; g < G; g += 32 * GEMV_WARPS) {
        uint4 u[GEMV_R];
        float f[GEMV_R][EPL];
#pragma unroll
        for (int r = 0; r < GEMV_R; r++) {
            int n = n0 + r < N ? n0 + r : N - 1; /* rows past N: read row N-1, never stored */
            u[r] = __ldg((const uint4 *)(w + (size_t)n * row_bytes) + g);
        }
#pragma unroll
        for (int r = 0; r < GEMV_R; r++)
            widen16<DT>(u[r], f[r]);
#pragma unroll
        for (int m = 0; m < MT; m++) {
            if (m < M) {
                float xv[EPL];
                const float4 *xp = (const float4 *)(x + (size_t)m * K + (size_t)g * EPL);
#pragma unroll
                for (int i = 0; i < EPL / 4; i++) {
                    float4 t = __ldg(xp + i);
                    xv[4 * i] = t.x;
                    xv[4 * i + 1] = t.y;
                    xv[4 * i + 2] = t.z;
                    xv[4 * i + 3] = t.w;
                }
#pragma unroll
                for (int r = 0; r < GEMV_R; r++)
#pragma unroll
                    for (int e = 0; e < EPL; e++)
                        acc[m][r] = fmaf(xv[e], f[r][e], acc[m][r]);
            }
        }
    }
    gemv_store<MT>(y, acc, red, bias, M, N, n0);
}

/*
 * NF4 GEMV: as dense_gemv_kernel with w the bnb NF4 state a; K a multiple of 32, blocksize a
 * power of two >= 32, so each 16-byte piece (32 codes) has one absmax.
 */
template <int MT, bool NESTED>
static __global__ void __launch_bounds__(GEMV_WARPS * 32)
    nf4_gemv_kernel(float *__restrict__ y, const float *__restrict__ x, const nf4_args_t a,
                    const nf4_tables_t tab, const float *__restrict__ bias, int M, int N, int K)
{
    __shared__ float code[16];
    __shared__ float map[NESTED ? 256 : 1];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int n0 = blockIdx.x * GEMV_R;
    const int G = K / 32;
    __shared__ float red[GEMV_WARPS][MT][GEMV_R];
    float acc[MT][GEMV_R];

    for (int i = threadIdx.x; i < 16; i += blockDim.x)
        code[i] = tab.code[i];
    if (NESTED)
        for (int i = threadIdx.x; i < 256; i += blockDim.x)
            map[i] = tab.map[i];
    __syncthreads();
    if (n0 >= N)
        return;
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
        for (int r = 0; r < GEMV_R; r++)
            acc[m][r] = 0.0f;
#pragma unroll 2
    for (int g = warp * 32 + lane; g < G; g += 32 * GEMV_WARPS) {
        uint4 u[GEMV_R];
        float am[GEMV_R];
#pragma unroll
        for (int r = 0; r < GEMV_R; r++) {
            int n = n0 + r < N ? n0 + r : N - 1;
            u[r] = __ldg((const uint4 *)(a.w + (size_t)n * (K / 2)) + g);
            size_t blk = ((size_t)n * K + (size_t)g * 32) >> a.bs_shift;
            if (NESTED) {
                size_t nb = a.nested_shift >= 0 ? blk >> a.nested_shift : blk / a.nested_bs;
                am[r] = __fadd_rn(__fmul_rn(map[__ldg(a.qabsmax + blk)], __ldg(a.nested + nb)),
                                  a.offset);
            } else {
                am[r] = __ldg(a.absmax + blk);
            }
        }
#pragma unroll
        for (int s = 0; s < 4; s++) { /* 8 codes per 32-bit word */
            float f[GEMV_R][8];
#pragma unroll
            for (int r = 0; r < GEMV_R; r++) {
                uint32_t wd = s == 0 ? u[r].x : s == 1 ? u[r].y : s == 2 ? u[r].z : u[r].w;
#pragma unroll
                for (int j = 0; j < 4; j++) { /* byte j: element 2j high nibble, 2j+1 low */
                    f[r][2 * j] = __fmul_rn(code[(wd >> (8 * j + 4)) & 15u], am[r]);
                    f[r][2 * j + 1] = __fmul_rn(code[(wd >> (8 * j)) & 15u], am[r]);
                }
            }
#pragma unroll
            for (int m = 0; m < MT; m++) {
                if (m < M) {
                    const float4 *xp =
                        (const float4 *)(x + (size_t)m * K + (size_t)g * 32 + s * 8);
                    float4 t0 = __ldg(xp), t1 = __ldg(xp + 1);
                    const float xv[8] = { t0.x, t0.y, t0.z, t0.w, t1.x, t1.y, t1.z, t1.w };
#pragma unroll
                    for (int r = 0; r < GEMV_R; r++)
#pragma unroll
                        for (int e = 0; e < 8; e++)
                            acc[m][r] = fmaf(xv[e], f[r][e], acc[m][r]);
                }
            }
        }
    }
    gemv_store<MT>(y, acc, red, bias, M, N, n0);
}

/*
 * NF4 GEMV variants 2-4 (backend.h, SW_CUDA_K_NF4_GEMV), written 2026-12-05 and NOT YET RUN
 * ON A GPU. Same blocks, lanes and loads as nf4_gemv_kernel (variant 1, the reference), with
 * fewer instructions per weight, which bench-gpu showed to be the limit (NF4 took as long as
 * bf16 on a quarter of the bytes):
 *   - the absmax is factored out of each 32-weight piece: p = sum_e x_e * code[q_e], then
 *     acc += p * absmax; one multiply per piece and row instead of one per weight (the result
 *     differs from the reference's code * absmax per weight by fp32 rounding only);
 *   - LUT 2, a byte -> 2-value table: 256 float2 (code[hi], code[lo]) in shared memory, one
 *     8-byte load per byte (2 weights) after one byte permute. Random bytes spread over 256
 *     entries meet shared-memory bank conflicts (about 3 wavefronts per load), so this may
 *     lose to LUT 3 on shared bandwidth; the bench decides;
 *   - LUT 3, nibble addresses by byte permutes: (wd >> 2) & 0x3c3c3c3c and (wd << 2) &
 *     0x3c3c3c3c hold the byte offsets of the 8 codes of a word in the 16-entry fp32 table
 *     (16 banks, never a conflict); one PRMT isolates each offset, which the shared load takes
 *     as its register operand: about 1.25 integer ops + 1 LDS + M FMAs per weight, against
 *     about 3 + 1 + 1 + M for the reference;
 *   - R output rows per block (all 4 warps on the same rows, splitting K): 4, or 8 in
 *     variant 4 for M <= 4 (twice the weight bytes in flight per lane and half the x loads per
 *     weight; more rows at larger M would spill the M x R partial sums).
 * x stays in registers as in variant 1: each lane reads the 32 x values of its piece once per
 * row of x and uses them for all R rows, so staging x in shared memory would add a copy and no
 * reuse; packing x as halves would move the result by ~1e-4 rel-L2, over the 1e-5 bar.
 */
template <int MT, bool NESTED, int LUT, int R>
static __global__ void __launch_bounds__(GEMV_WARPS * 32)
    nf4_gemv_fact_kernel(float *__restrict__ y, const float *__restrict__ x, const nf4_args_t a,
                         const nf4_tables_t tab, const float *__restrict__ bias, int M, int N,
                         int K)
{
    __shared__ __align__(16) float code[16];
    __shared__ float2 pair[LUT == 2 ? 256 : 1];
    __shared__ float map[NESTED ? 256 : 1];
    __shared__ float red[GEMV_WARPS][MT][R];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int n0 = blockIdx.x * R;
    const int G = K / 32;
    float acc[MT][R];

    for (int i = threadIdx.x; i < 16; i += blockDim.x)
        code[i] = tab.code[i];
    if (LUT == 2)
        for (int i = threadIdx.x; i < 256; i += blockDim.x)
            pair[i] = make_float2(tab.code[i >> 4], tab.code[i & 15]);
    if (NESTED)
        for (int i = threadIdx.x; i < 256; i += blockDim.x)
            map[i] = tab.map[i];
    __syncthreads();
    if (n0 >= N)
        return;
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
        for (int r = 0; r < R; r++)
            acc[m][r] = 0.0f;
#pragma unroll 2
    for (int g = warp * 32 + lane; g < G; g += 32 * GEMV_WARPS) {
        uint4 u[R];
        float am[R], p[MT][R];
#pragma unroll
        for (int r = 0; r < R; r++) {
            int n = n0 + r < N ? n0 + r : N - 1; /* rows past N: read row N-1, never stored */
            u[r] = __ldg((const uint4 *)(a.w + (size_t)n * (K / 2)) + g);
            size_t blk = ((size_t)n * K + (size_t)g * 32) >> a.bs_shift;
            if (NESTED) {
                size_t nb = a.nested_shift >= 0 ? blk >> a.nested_shift : blk / a.nested_bs;
                am[r] = __fadd_rn(__fmul_rn(map[__ldg(a.qabsmax + blk)], __ldg(a.nested + nb)),
                                  a.offset);
            } else {
                am[r] = __ldg(a.absmax + blk);
            }
        }
#pragma unroll
        for (int m = 0; m < MT; m++)
#pragma unroll
            for (int r = 0; r < R; r++)
                p[m][r] = 0.0f;
#pragma unroll
        for (int s = 0; s < 4; s++) { /* 8 codes per 32-bit word */
            float f[R][8];
#pragma unroll
            for (int r = 0; r < R; r++) {
                uint32_t wd = s == 0 ? u[r].x : s == 1 ? u[r].y : s == 2 ? u[r].z : u[r].w;
                if (LUT == 2) {
#pragma unroll
                    for (int j = 0; j < 4; j++) { /* byte j: element 2j high nibble, 2j+1 low */
                        float2 v = pair[__byte_perm(wd, 0u, 0x4440u | (unsigned)j)];
                        f[r][2 * j] = v.x;
                        f[r][2 * j + 1] = v.y;
                    }
                } else {
                    const uint32_t hi = (wd >> 2) & 0x3c3c3c3cu, lo = (wd << 2) & 0x3c3c3c3cu;
                    const char *cb = (const char *)code;
#pragma unroll
                    for (int j = 0; j < 4; j++) {
                        f[r][2 * j] =
                            *(const float *)(cb + __byte_perm(hi, 0u, 0x4440u | (unsigned)j));
                        f[r][2 * j + 1] =
                            *(const float *)(cb + __byte_perm(lo, 0u, 0x4440u | (unsigned)j));
                    }
                }
            }
#pragma unroll
            for (int m = 0; m < MT; m++) {
                if (m < M) {
                    const float4 *xp =
                        (const float4 *)(x + (size_t)m * K + (size_t)g * 32 + s * 8);
                    float4 t0 = __ldg(xp), t1 = __ldg(xp + 1);
                    const float xv[8] = { t0.x, t0.y, t0.z, t0.w, t1.x, t1.y, t1.z, t1.w };
#pragma unroll
                    for (int r = 0; r < R; r++)
#pragma unroll
                        for (int e = 0; e < 8; e++)
                            p[m][r] = fmaf(xv[e], f[r][e], p[m][r]);
                }
            }
        }
#pragma unroll
        for (int m = 0; m < MT; m++)
#pragma unroll
            for (int r = 0; r < R; r++)
                acc[m][r] = fmaf(p[m][r], am[r], acc[m][r]);
    }
    gemv_store<MT, R>(y, acc, red, bias, M, N, n0);
}

/* The mainline NF4 GEMV variant (backend.h). 1, the reference, until bench-gpu has measured the
 * others on a GPU: make the fastest one that passes test-cuda the mainline. */
#define NF4_GEMV_MAINLINE 1

static int ilog2_exact(int64_t v)
{
    int s = 0;

    if (v < 1 || (v & (v - 1)))
        return -1;
    while ((int64_t)1 << s < v)
        s++;
    return s;
}

/* Whether the GEMV path takes x (M, K) times w. */
static bool gemv_fits(const sw_tensor_t *w, const float *x, int M, int64_t K)
{
    if (M < 1 || M > SW_CUDA_GEMV_MAX_M || (uintptr_t)x % 16 || (uintptr_t)w->data % 16)
        return false;
    switch (w->dtype) {
    case SW_DTYPE_F32: return K % 4 == 0;
    case SW_DTYPE_F16:
    case SW_DTYPE_BF16: return K % 8 == 0;
    case SW_DTYPE_NF4: return K % 32 == 0 && ilog2_exact(w->qs->blocksize) >= 5;
    default: return false;
    }
}

template <int MT>
static int gemv_launch_mt(sw_cuda_ctx_t *c, float *y, const float *x, const sw_tensor_t *w,
                          const float *bias, int M, int N, int K)
{
    unsigned blocks = (unsigned)((N + GEMV_R - 1) / GEMV_R);
    dim3 grid(blocks), block(GEMV_WARPS * 32);

    switch (w->dtype) {
    case SW_DTYPE_F32:
        dense_gemv_kernel<SW_DTYPE_F32, MT><<<grid, block, 0, c->stream>>>(y, x, w->data, bias,
                                                                             M, N, K);
        break;
    case SW_DTYPE_F16:
        dense_gemv_kernel<SW_DTYPE_F16, MT><<<grid, block, 0, c->stream>>>(y, x, w->data, bias,
                                                                             M, N, K);
        break;
    case SW_DTYPE_BF16:
        dense_gemv_kernel<SW_DTYPE_BF16, MT><<<grid, block, 0, c->stream>>>(y, x, w->data, bias,
                                                                              M, N, K);
        break;
    default: { /* NF4 */
        const sw_qstate_t *qs = w->qs;
        nf4_args_t a;
        nf4_tables_t tab;

        memcpy(tab.code, sw_nf4_code, sizeof(tab.code));
        memcpy(tab.map, sw_q8_dynamic_map, sizeof(tab.map));
        a.w = (const uint8_t *)w->data;
        a.absmax = qs->absmax;
        a.qabsmax = qs->qabsmax;
        a.nested = qs->nested_absmax;
        a.nested_bs = qs->nested_blocksize > 0 ? qs->nested_blocksize : 1;
        a.nested_shift = ilog2_exact(a.nested_bs);
        a.offset = qs->offset;
        a.bs_shift = ilog2_exact(qs->blocksize);
        int v = c->variant[SW_CUDA_K_NF4_GEMV] ? c->variant[SW_CUDA_K_NF4_GEMV]
                                                : NF4_GEMV_MAINLINE;
        bool nested = !qs->absmax;
        if constexpr (MT <= 4) { /* variant 4: 8 rows per block (more would spill above) */
            if (v == 4) {
                dim3 g8((unsigned)((N + 7) / 8));
                if (nested)
                    nf4_gemv_fact_kernel<MT, true, 3, 8><<<g8, block, 0, c->stream>>>(
                        y, x, a, tab, bias, M, N, K);
                else
                    nf4_gemv_fact_kernel<MT, false, 3, 8><<<g8, block, 0, c->stream>>>(
                        y, x, a, tab, bias, M, N, K);
                break;
            }
        }
        if (v == 3 || v == 4) {
            if (nested)
                nf4_gemv_fact_kernel<MT, true, 3, GEMV_R><<<grid, block, 0, c->stream>>>(
                    y, x, a, tab, bias, M, N, K);
            else
                nf4_gemv_fact_kernel<MT, false, 3, GEMV_R><<<grid, block, 0, c->stream>>>(
                    y, x, a, tab, bias, M, N, K);
        } else if (v == 2) {
            if (nested)
                nf4_gemv_fact_kernel<MT, true, 2, GEMV_R><<<grid, block, 0, c->stream>>>(
                    y, x, a, tab, bias, M, N, K);
            else
                nf4_gemv_fact_kernel<MT, false, 2, GEMV_R><<<grid, block, 0, c->stream>>>(
                    y, x, a, tab, bias, M, N, K);
        } else if (nested) {
            nf4_gemv_kernel<MT, true><<<grid, block, 0, c->stream>>>(y, x, a, tab, bias, M, N, K);
        } else {
            nf4_gemv_kernel<MT, false><<<grid, block, 0, c->stream>>>(y, x, a, tab, bias, M, N,
                                                                      K);
        }
        break;
    }
    }
    SW_CUDA_CHECK_LAUNCH();
    return 0;
}

static int gemv_launch(sw_cuda_ctx_t *c, float *y, const float *x, const sw_tensor_t *w,
                       const float *bias, int M, int N, int K)
{
    if (M <= 1)
        return gemv_launch_mt<1>(c, y, x, w, bias, M, N, K);
    if (M <= 2)
        return gemv_launch_mt<2>(c, y, x, w, bias, M, N, K);
    if (M <= 4)
        return gemv_launch_mt<4>(c, y, x, w, bias, M, N, K);
    if (M <= 8)
        return gemv_launch_mt<8>(c, y, x, w, bias, M, N, K);
    return gemv_launch_mt<16>(c, y, x, w, bias, M, N, K);
}

/* dst (n) = fp32 dequantization of NF4 elements [0, n) of w (for the cuBLAS path). */
static __global__ void nf4_dequant_kernel(float *dst, const nf4_args_t a, const nf4_tables_t tab,
                                          int bs, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t blk = i / (size_t)bs;
        float am;
        if (a.absmax)
            am = a.absmax[blk];
        else
            am = __fadd_rn(__fmul_rn(tab.map[a.qabsmax[blk]], a.nested[blk / a.nested_bs]),
                           a.offset);
        uint8_t b = a.w[i / 2];
        dst[i] = __fmul_rn(tab.code[i % 2 ? b & 15u : b >> 4], am);
    }
}

extern "C" size_t sw_cuda_matmul_workspace_bytes(sw_cuda_matmul_mode_t mode, sw_dtype_t wdt,
                                                 int M, int64_t N, int64_t K)
{
    if (wdt == SW_DTYPE_F32)
        return 0;
    if (wdt == SW_DTYPE_I8) /* int8 x, scales, outlier list; int32 products above 16 rows */
        return sw_cuda_int8_workspace_bytes(M, N, K);
    if (wdt == SW_DTYPE_NF4) /* dequantized to fp32 for M > SW_CUDA_GEMV_MAX_M */
        return (size_t)N * (size_t)K * 4;
    if (mode == SW_CUDA_MATMUL_FAST)
        return (size_t)(M > 0 ? M : 0) * (size_t)K * 2;
    return (size_t)N * (size_t)K * 4;
}

extern "C" int sw_cuda_matmul(sw_cuda_ctx_t *c, float *y, const float *x, const sw_tensor_t *w,
                              const float *bias, int M)
{
    const float one = 1.0f, zero = 0.0f;
    int64_t N, K;
    int dt = w->dtype;
    size_t need;

    if (w->ndim != 2 || (w->qs && dt != SW_DTYPE_NF4 && dt != SW_DTYPE_I8) ||
        ((dt == SW_DTYPE_NF4 || dt == SW_DTYPE_I8) && !w->qs))
        return sw_err(SW_EUNSUPPORTED, "CUDA matmul: needs a dense, NF4 or Int8 2-d weight");
    if (dt != SW_DTYPE_F32 && dt != SW_DTYPE_F16 && dt != SW_DTYPE_BF16 && dt != SW_DTYPE_NF4 &&
        dt != SW_DTYPE_I8)
        return sw_err(SW_EUNSUPPORTED, "CUDA matmul: %s weights are not supported yet",
                      sw_dtype_name(w->dtype));
    N = w->shape[0];
    K = w->shape[1];
    if (M < 0 || N < 1 || K < 1 || N > INT32_MAX || K > INT32_MAX)
        return sw_err(-EINVAL, "CUDA matmul: bad shape M %d, N %lld, K %lld", M,
                      (long long)N, (long long)K);
    if (M == 0)
        return 0;
    if (dt == SW_DTYPE_I8)
        return sw_cuda_matmul_int8(c, y, x, w, bias, M);
    if (gemv_fits(w, x, M, K))
        return gemv_launch(c, y, x, w, bias, M, (int)N, (int)K);
    need = sw_cuda_matmul_workspace_bytes(c->mode, w->dtype, M, N, K);
    if (need > c->ws_bytes)
        return sw_err(SW_ELIMIT, "CUDA matmul: needs %zu workspace bytes, the context has %zu "
                      "(sw_cuda_ctx_reserve)", need, c->ws_bytes);

    if (dt == SW_DTYPE_NF4) {
        const sw_qstate_t *qs = w->qs;
        size_t n = (size_t)N * (size_t)K;
        nf4_args_t a = {};
        nf4_tables_t tab;
        cublasComputeType_t ct = c->mode == SW_CUDA_MATMUL_FAST ? CUBLAS_COMPUTE_32F_FAST_TF32
                                                                : CUBLAS_COMPUTE_32F;

        memcpy(tab.code, sw_nf4_code, sizeof(tab.code));
        memcpy(tab.map, sw_q8_dynamic_map, sizeof(tab.map));
        a.w = (const uint8_t *)w->data;
        a.absmax = qs->absmax;
        a.qabsmax = qs->qabsmax;
        a.nested = qs->nested_absmax;
        a.nested_bs = qs->nested_blocksize > 0 ? qs->nested_blocksize : 1;
        a.offset = qs->offset;
        nf4_dequant_kernel<<<sw_cuda_grid(n, 256), 256, 0, c->stream>>>((float *)c->ws, a, tab,
                                                                        qs->blocksize, n);
        SW_CUDA_CHECK_LAUNCH();
        SW_CUBLAS_CHECK(c, c->api->gemm_ex(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, M, (int)K,
                                           &one, c->ws, CUDA_R_32F, (int)K, x, CUDA_R_32F,
                                           (int)K, &zero, y, CUDA_R_32F, (int)N, ct,
                                           CUBLAS_GEMM_DEFAULT));
    } else if (dt == SW_DTYPE_F32) {
        cublasComputeType_t ct = c->mode == SW_CUDA_MATMUL_FAST ? CUBLAS_COMPUTE_32F_FAST_TF32
                                                                : CUBLAS_COMPUTE_32F;
        SW_CUBLAS_CHECK(c, c->api->gemm_ex(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, M, (int)K,
                                           &one, w->data, CUDA_R_32F, (int)K, x, CUDA_R_32F,
                                           (int)K, &zero, y, CUDA_R_32F, (int)N, ct,
                                           CUBLAS_GEMM_DEFAULT));
    } else if (c->mode == SW_CUDA_MATMUL_FP32) {
        size_t n = (size_t)N * (size_t)K;
        widen_kernel<<<sw_cuda_grid(n, 256), 256, 0, c->stream>>>((float *)c->ws, w->data, dt, n);
        SW_CUDA_CHECK_LAUNCH();
        SW_CUBLAS_CHECK(c, c->api->gemm_ex(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, M, (int)K,
                                           &one, c->ws, CUDA_R_32F, (int)K, x, CUDA_R_32F,
                                           (int)K, &zero, y, CUDA_R_32F, (int)N,
                                           CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    } else {
        size_t n = (size_t)M * (size_t)K;
        cudaDataType t16 = dt == SW_DTYPE_F16 ? CUDA_R_16F : CUDA_R_16BF;
        narrow_kernel<<<sw_cuda_grid(n, 256), 256, 0, c->stream>>>((uint16_t *)c->ws, x, dt, n);
        SW_CUDA_CHECK_LAUNCH();
        SW_CUBLAS_CHECK(c, c->api->gemm_ex(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, M, (int)K,
                                           &one, w->data, t16, (int)K, c->ws, t16, (int)K, &zero,
                                           y, CUDA_R_32F, (int)N, CUBLAS_COMPUTE_32F,
                                           CUBLAS_GEMM_DEFAULT));
    }
    if (bias) {
        size_t n = (size_t)M * (size_t)N;
        bias_kernel<<<sw_cuda_grid(n, 256), 256, 0, c->stream>>>(y, bias, (size_t)N, n);
        SW_CUDA_CHECK_LAUNCH();
    }
    return 0;
}
