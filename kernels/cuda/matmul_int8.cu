/*
 * matmul_int8.cu - LLM.int8() matmul on the GPU: y (M, N) = x (M, K) @ W^T + bias for an Int8
 * weight (kernels/quant.h: CB (N, K) int8 row-major, SCB (N) fp32, threshold), computing
 * exactly what the CPU reference (kernels/cpu/ref.c, ref_matmul_int8) computes:
 *
 *   outlier columns  k with |x[m, k]| >= threshold in ANY row m (none when threshold <= 0;
 *                    NaN compares false, an infinity makes its column an outlier);
 *   per row m        a = max |x[m, k]| over the other columns (NaN when one of them is not
 *                    finite), xq = round-half-even(x * (127 / a)) there, 0 in outlier columns
 *                    and everywhere when !(a > 0);
 *   per output       acc = exact int32 dot of xq and CB's row; y = (sum over the outlier
 *                    columns, ascending, of x * (CB * SCB / 127)) + acc * a * SCB * (1/127^2)
 *                    + bias, each operation one fp32 rounding in the reference's order.
 *
 * Every rounding step is an explicit round-to-nearest intrinsic (__fmul_rn, __fadd_rn,
 * __fdiv_rn, __float2int_rn), so nvcc cannot contract them into FMAs and the result is the
 * reference's bit for bit wherever the host compiler did not contract the reference either
 * (x86-64 without -mfma does not); tests/test-cuda.c reports whether it is.
 *
 * Steps, all queued on the context's stream, with the workspace laid out by i8_layout:
 *   1. prep: the outlier list (ascending, with its length on the device, so nothing waits for
 *      the host), each row's a and its int8 row xq. M <= 16: one block does it all; larger M:
 *      a column-mask kernel over K, a one-block scan of the mask into the list, a block per
 *      row for a and xq.
 *   2. M <= 16: the int8 GEMV. A block of 4 warps owns 4 consecutive output rows and splits K
 *      among its 128 lanes in 16-byte pieces (16 int8 weights per row per lane, coalesced),
 *      __dp4a against the matching 16 bytes of each xq row (read once per step, used for all 4
 *      rows); int32 sums over lanes and warps are exact, so their order does not matter. The
 *      threads that store apply the scales and add the outlier columns sequentially (their
 *      count is small in practice: LLM.int8() keeps about 0.1% of the columns).
 *      M > 16: cuBLAS's int8 GEMM (CUDA_R_8I x CUDA_R_8I -> CUDA_R_32I, CUBLAS_COMPUTE_32I,
 *      exact) into the workspace; the outlier part as fp32 cuBLAS GEMMs (no TF32) over the
 *      gathered outlier columns of x and dequantized columns of CB, I8_OL_CHUNK columns per
 *      pass (across M rows, outlier columns are common: a sequential loop per output would
 *      cost M * N * count); then an epilogue adds acc * a * SCB / 127^2 and the bias. Only
 *      the order of the outlier sum differs from the reference here. Where cuBLAS declines
 *      the int8 shape (it wants K % 4 == 0 and aligned operands), the GEMV over chunks of 16
 *      rows, which is exact as for M <= 16.
 * NOT YET RUN ON A GPU (written 2026-12-05 without one); tests/test-cuda.c checks it.
 */
#include <errno.h>
#include <string.h>

#include "internal.h"

extern "C" {
#include "../../util/log.h"
}

#define I8_R 4          /* output rows per block */
#define I8_WARPS 4      /* warps per block */
#define I8_PREP_THREADS 1024

static size_t al256(size_t n)
{
    return (n + 255) & ~(size_t)255;
}

/* Byte offsets of the Int8 parts of the workspace. */
typedef struct {
    size_t xq, xa, ol, nol, mask, acc, xo, wo, total;
} i8_layout_t;

/* Outlier columns per fp32 GEMM pass of the M > 16 path (bounds its workspace). */
#define I8_OL_CHUNK 256

static i8_layout_t i8_layout(int M, int64_t N, int64_t K)
{
    i8_layout_t l;
    size_t off = 0;

    l.xq = off;
    off += al256((size_t)M * (size_t)K);
    l.xa = off;
    off += al256((size_t)M * 4);
    l.ol = off;
    off += al256((size_t)K * 4);
    l.nol = off;
    off += 256;
    l.mask = off;
    off += al256((size_t)K);
    l.acc = off;
    if (M > SW_CUDA_GEMV_MAX_M)
        off += al256((size_t)M * (size_t)N * 4);
    l.xo = off;
    if (M > SW_CUDA_GEMV_MAX_M)
        off += al256((size_t)M * I8_OL_CHUNK * 4);
    l.wo = off;
    if (M > SW_CUDA_GEMV_MAX_M)
        off += al256((size_t)N * I8_OL_CHUNK * 4);
    l.total = off;
    return l;
}

size_t sw_cuda_int8_workspace_bytes(int M, int64_t N, int64_t K)
{
    return M > 0 && N > 0 && K > 0 ? i8_layout(M, N, K).total : 0;
}

/* ------------------------------------------------------------------------------------------ */
/* step 1: outlier columns, row scales, int8 rows                                              */

/* Whether column k of x (M, K) is an outlier column (the reference's col_is_outlier). */
static __device__ __forceinline__ bool i8_col_outlier(const float *__restrict__ x, int M, int K,
                                                      int k, float thr)
{
    if (!(thr > 0.0f))
        return false;
    for (int m = 0; m < M; m++)
        if (fabsf(x[(size_t)m * K + k]) >= thr)
            return true;
    return false;
}

/*
 * The ascending list ol of the outlier columns and its length *nol, by one block: columns in
 * passes of blockDim.x, a ballot per warp and a scan over the warps giving each flagged column
 * its place. FROM_MASK: read the flags from mask (written by i8_mask_kernel); else compute them
 * and write them to mask. blockDim.x must be a multiple of 32, at most 1024.
 */
template <bool FROM_MASK>
static __device__ void i8_build_list(const float *__restrict__ x, int M, int K, float thr,
                                     uint8_t *__restrict__ mask, int32_t *__restrict__ ol,
                                     int32_t *__restrict__ nol)
{
    __shared__ int warp_cnt[32];
    __shared__ int base;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;

    if (threadIdx.x == 0)
        base = 0;
    __syncthreads();
    for (int k0 = 0; k0 < K; k0 += blockDim.x) {
        int k = k0 + threadIdx.x;
        bool f = false;

        if (k < K) {
            if (FROM_MASK) {
                f = mask[k] != 0;
            } else {
                f = i8_col_outlier(x, M, K, k, thr);
                mask[k] = f;
            }
        }
        unsigned bal = __ballot_sync(0xffffffffu, f);
        if (lane == 0)
            warp_cnt[warp] = __popc(bal);
        __syncthreads();
        int before = base;
        for (int w = 0; w < warp; w++)
            before += warp_cnt[w];
        if (f)
            ol[before + __popc(bal & ((1u << lane) - 1u))] = k;
        __syncthreads(); /* everyone has read base and warp_cnt */
        if (threadIdx.x == 0)
            for (int w = 0; w < nw; w++)
                base += warp_cnt[w];
        __syncthreads();
    }
    if (threadIdx.x == 0)
        *nol = base;
}

/*
 * Row m of x: a = absmax over the non-outlier columns (NaN if one of them is not finite) into
 * xa[m], and xq row m. By one block; mask must be complete and visible to it. mask is neither
 * const nor __restrict__ on purpose: i8_prep_small_kernel wrote it earlier in the same kernel,
 * so its loads must not take the read-only (non-coherent) cache path.
 */
static __device__ void i8_quant_row(const float *__restrict__ x, int K, int m, uint8_t *mask,
                                    int8_t *__restrict__ xq, float *__restrict__ xa)
{
    __shared__ float red[32];
    const float *xr = x + (size_t)m * K;
    int8_t *qr = xq + (size_t)m * K;
    float a = 0.0f, bad = 0.0f, scale;

    for (int k = threadIdx.x; k < K; k += blockDim.x)
        if (!mask[k]) {
            float v = xr[k];
            if (!isfinite(v))
                bad = 1.0f;
            a = fmaxf(a, fabsf(v));
        }
    a = sw_dev_block_max(a, red);
    bad = sw_dev_block_max(bad, red);
    if (bad > 0.0f)
        a = __int_as_float(0x7fc00000); /* NaN: the row's int8 part is not computed */
    else if (a < 127.0f / 3.40282347e38f)
        a = 0.0f; /* as the CPU reference: 127 / a would overflow, the row is zeros */
    scale = __fdiv_rn(127.0f, a);
    for (int k = threadIdx.x; k < K; k += blockDim.x)
        qr[k] = (a > 0.0f && !mask[k]) ? (int8_t)__float2int_rn(__fmul_rn(xr[k], scale)) : 0;
    if (threadIdx.x == 0)
        xa[m] = a;
}

/* M <= 16: the whole prep in one block of I8_PREP_THREADS. */
static __global__ void __launch_bounds__(I8_PREP_THREADS)
    i8_prep_small_kernel(const float *__restrict__ x, int M, int K, float thr, uint8_t *mask,
                         int32_t *ol, int32_t *nol, int8_t *xq, float *xa)
{
    i8_build_list<false>(x, M, K, thr, mask, ol, nol);
    __syncthreads(); /* mask (global) complete and visible to the block */
    for (int m = 0; m < M; m++)
        i8_quant_row(x, K, m, mask, xq, xa);
}

static __global__ void i8_mask_kernel(const float *__restrict__ x, int M, int K, float thr,
                                      uint8_t *__restrict__ mask)
{
    for (int k = blockIdx.x * blockDim.x + threadIdx.x; k < K; k += gridDim.x * blockDim.x)
        mask[k] = i8_col_outlier(x, M, K, k, thr);
}

static __global__ void __launch_bounds__(I8_PREP_THREADS)
    i8_list_kernel(int K, uint8_t *mask, int32_t *ol, int32_t *nol)
{
    i8_build_list<true>(NULL, 0, K, 0.0f, mask, ol, nol);
}

static __global__ void __launch_bounds__(256)
    i8_rows_kernel(const float *__restrict__ x, int K, uint8_t *mask, int8_t *xq, float *xa)
{
    i8_quant_row(x, K, blockIdx.x, mask, xq, xa);
}

/* ------------------------------------------------------------------------------------------ */
/* step 2: int32 dots, then scales and outlier columns                                          */

/*
 * y[m, n] from the exact int32 dot acc: the reference's formula, operation by operation.
 * x, xa: rows of this call; ol/nol: the outlier list; w, scb: the weight.
 */
static __device__ __forceinline__ float i8_finish(int32_t acc, const float *__restrict__ x,
                                                  const float *__restrict__ xa,
                                                  const int8_t *__restrict__ w,
                                                  const float *__restrict__ scb,
                                                  const int32_t *__restrict__ ol, int nol,
                                                  const float *__restrict__ bias, int m, int n,
                                                  int K)
{
    const float s = scb[n];
    const float *xr = x + (size_t)m * K;
    const int8_t *wr = w + (size_t)n * K;
    float out = 0.0f;

    for (int j = 0; j < nol; j++) {
        int k = ol[j];
        float wd = __fdiv_rn(__fmul_rn((float)wr[k], s), 127.0f);
        out = __fadd_rn(out, __fmul_rn(xr[k], wd));
    }
    out = __fadd_rn(out, __fmul_rn(__fmul_rn(__fmul_rn(__int2float_rn(acc), xa[m]), s),
                                   6.200012e-05f));
    return __fadd_rn(out, bias ? bias[n] : 0.0f);
}

/*
 * The int8 GEMV for M <= MT rows (pointers already offset to the first row of the chunk).
 * VEC: K % 16 == 0 and 16-byte aligned rows (16-byte loads); else one byte per lane and step.
 */
template <int MT, bool VEC>
static __global__ void __launch_bounds__(I8_WARPS * 32)
    i8_gemv_kernel(float *__restrict__ y, const float *__restrict__ x,
                   const int8_t *__restrict__ w, const float *__restrict__ scb,
                   const int8_t *__restrict__ xq, const float *__restrict__ xa,
                   const int32_t *__restrict__ ol, const int32_t *__restrict__ nolp,
                   const float *__restrict__ bias, int M, int N, int K)
{
    __shared__ int32_t red[I8_WARPS][MT][I8_R];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int n0 = blockIdx.x * I8_R;
    int32_t acc[MT][I8_R];

    if (n0 >= N)
        return;
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
        for (int r = 0; r < I8_R; r++)
            acc[m][r] = 0;
    if (VEC) {
        const int G = K / 16;
#pragma unroll 2
        for (int g = warp * 32 + lane; g < G; g += 32 * I8_WARPS) {
            int4 u[I8_R];
#pragma unroll
            for (int r = 0; r < I8_R; r++) {
                int n = n0 + r < N ? n0 + r : N - 1; /* rows past N: read, never stored */
                u[r] = __ldg((const int4 *)(w + (size_t)n * K) + g);
            }
#pragma unroll
            for (int m = 0; m < MT; m++) {
                if (m < M) {
                    int4 xv = __ldg((const int4 *)(xq + (size_t)m * K) + g);
#pragma unroll
                    for (int r = 0; r < I8_R; r++) {
                        acc[m][r] = __dp4a(u[r].x, xv.x, acc[m][r]);
                        acc[m][r] = __dp4a(u[r].y, xv.y, acc[m][r]);
                        acc[m][r] = __dp4a(u[r].z, xv.z, acc[m][r]);
                        acc[m][r] = __dp4a(u[r].w, xv.w, acc[m][r]);
                    }
                }
            }
        }
    } else {
        for (int k = warp * 32 + lane; k < K; k += 32 * I8_WARPS) {
            int wv[I8_R];
#pragma unroll
            for (int r = 0; r < I8_R; r++) {
                int n = n0 + r < N ? n0 + r : N - 1;
                wv[r] = w[(size_t)n * K + k];
            }
#pragma unroll
            for (int m = 0; m < MT; m++)
                if (m < M) {
                    int xv = xq[(size_t)m * K + k];
#pragma unroll
                    for (int r = 0; r < I8_R; r++)
                        acc[m][r] += wv[r] * xv;
                }
        }
    }
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
        for (int r = 0; r < I8_R; r++) {
            int32_t v = acc[m][r];
            for (int o = 16; o > 0; o >>= 1)
                v += __shfl_xor_sync(0xffffffffu, v, o);
            if (lane == 0)
                red[warp][m][r] = v;
        }
    __syncthreads();
    const int nol = *nolp;
    for (int i = threadIdx.x; i < M * I8_R; i += blockDim.x) {
        int m = i / I8_R, r = i % I8_R, n = n0 + r;
        if (n >= N)
            continue;
        int32_t s = 0;
        for (int wi = 0; wi < I8_WARPS; wi++)
            s += red[wi][m][r];
        y[(size_t)m * N + n] = i8_finish(s, x, xa, w, scb, ol, nol, bias, m, n, K);
    }
}

/*
 * After cuBLAS: y (M, N) = (the outlier columns' fp32 sums already in y when have_ol, else 0)
 * + acc * a * SCB / 127^2 + bias, with acc (M, N) the int32 products, row-major.
 */
static __global__ void i8_epilogue_kernel(float *__restrict__ y, const int32_t *__restrict__ acc,
                                          const float *__restrict__ scb,
                                          const float *__restrict__ xa,
                                          const float *__restrict__ bias, int M, int N,
                                          int have_ol)
{
    const size_t total = (size_t)M * N;

    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        int m = (int)(i / (size_t)N), n = (int)(i % (size_t)N);
        float out = have_ol ? y[i] : 0.0f;
        out = __fadd_rn(out, __fmul_rn(__fmul_rn(__fmul_rn(__int2float_rn(acc[i]), xa[m]),
                                                 scb[n]), 6.200012e-05f));
        y[i] = __fadd_rn(out, bias ? bias[n] : 0.0f);
    }
}

/*
 * Outlier columns ol[c0 .. c0 + nc) gathered for one fp32 GEMM pass: xo (M, nc) = x's columns,
 * wo (N, nc) = CB * SCB / 127 rounded as the reference rounds it.
 */
static __global__ void i8_gather_kernel(float *__restrict__ xo, float *__restrict__ wo,
                                        const float *__restrict__ x,
                                        const int8_t *__restrict__ w,
                                        const float *__restrict__ scb,
                                        const int32_t *__restrict__ ol, int c0, int nc, int M,
                                        int N, int K)
{
    const size_t nx = (size_t)M * nc, total = nx + (size_t)N * nc;

    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        if (i < nx) {
            size_t m = i / nc, j = i % nc;
            xo[i] = x[m * K + ol[c0 + j]];
        } else {
            size_t e = i - nx, n = e / nc, j = e % nc;
            wo[e] = __fdiv_rn(__fmul_rn((float)w[n * K + ol[c0 + j]], scb[n]), 127.0f);
        }
    }
}

template <int MT>
static int i8_gemv_launch_mt(sw_cuda_ctx_t *c, bool vec, float *y, const float *x,
                             const sw_tensor_t *w, const int8_t *xq, const float *xa,
                             const int32_t *ol, const int32_t *nol, const float *bias, int M,
                             int N, int K)
{
    dim3 grid((unsigned)((N + I8_R - 1) / I8_R)), block(I8_WARPS * 32);
    const int8_t *wd = (const int8_t *)w->data;

    if (vec)
        i8_gemv_kernel<MT, true><<<grid, block, 0, c->stream>>>(y, x, wd, w->qs->scb, xq, xa, ol,
                                                                nol, bias, M, N, K);
    else
        i8_gemv_kernel<MT, false><<<grid, block, 0, c->stream>>>(y, x, wd, w->qs->scb, xq, xa,
                                                                 ol, nol, bias, M, N, K);
    SW_CUDA_CHECK_LAUNCH();
    return 0;
}

/* The GEMV for rows [0, M) of this call, M <= 16. */
static int i8_gemv_launch(sw_cuda_ctx_t *c, bool vec, float *y, const float *x,
                          const sw_tensor_t *w, const int8_t *xq, const float *xa,
                          const int32_t *ol, const int32_t *nol, const float *bias, int M, int N,
                          int K)
{
    if (M <= 1)
        return i8_gemv_launch_mt<1>(c, vec, y, x, w, xq, xa, ol, nol, bias, M, N, K);
    if (M <= 2)
        return i8_gemv_launch_mt<2>(c, vec, y, x, w, xq, xa, ol, nol, bias, M, N, K);
    if (M <= 4)
        return i8_gemv_launch_mt<4>(c, vec, y, x, w, xq, xa, ol, nol, bias, M, N, K);
    if (M <= 8)
        return i8_gemv_launch_mt<8>(c, vec, y, x, w, xq, xa, ol, nol, bias, M, N, K);
    return i8_gemv_launch_mt<16>(c, vec, y, x, w, xq, xa, ol, nol, bias, M, N, K);
}

int sw_cuda_matmul_int8(sw_cuda_ctx_t *c, float *y, const float *x,
                        const sw_tensor_t *w, const float *bias, int M)
{
    const int64_t N = w->shape[0], K = w->shape[1];
    const i8_layout_t l = i8_layout(M, N, K);
    const float thr = w->qs->threshold;
    const int variant = c->variant[SW_CUDA_K_INT8_BIG];
    uint8_t *ws = (uint8_t *)c->ws;
    int8_t *xq;
    float *xa;
    int32_t *ol, *nol, *acc;
    uint8_t *mask;
    bool vec;

    if (!w->qs->scb)
        return sw_err(-EINVAL, "CUDA matmul: Int8 weight without its SCB");
    if (l.total > c->ws_bytes)
        return sw_err(SW_ELIMIT, "CUDA matmul: Int8 needs %zu workspace bytes, the context has "
                      "%zu (sw_cuda_ctx_reserve with sw_cuda_matmul_workspace_bytes)", l.total,
                      c->ws_bytes);
    xq = (int8_t *)(ws + l.xq);
    xa = (float *)(ws + l.xa);
    ol = (int32_t *)(ws + l.ol);
    nol = (int32_t *)(ws + l.nol);
    mask = ws + l.mask;
    acc = (int32_t *)(ws + l.acc);
    vec = K % 16 == 0 && (uintptr_t)w->data % 16 == 0 && (uintptr_t)ws % 16 == 0;

    if (M <= SW_CUDA_GEMV_MAX_M) {
        i8_prep_small_kernel<<<1, I8_PREP_THREADS, 0, c->stream>>>(x, M, (int)K, thr, mask, ol,
                                                                    nol, xq, xa);
        SW_CUDA_CHECK_LAUNCH();
        return i8_gemv_launch(c, vec, y, x, w, xq, xa, ol, nol, bias, M, (int)N, (int)K);
    }

    i8_mask_kernel<<<sw_cuda_grid((size_t)K, 256), 256, 0, c->stream>>>(x, M, (int)K, thr, mask);
    SW_CUDA_CHECK_LAUNCH();
    i8_list_kernel<<<1, I8_PREP_THREADS, 0, c->stream>>>((int)K, mask, ol, nol);
    SW_CUDA_CHECK_LAUNCH();
    i8_rows_kernel<<<(unsigned)M, 256, 0, c->stream>>>(x, (int)K, mask, xq, xa);
    SW_CUDA_CHECK_LAUNCH();

    if (variant != 2) {
        const int32_t one = 1, zero = 0;
        bool fits = K % 4 == 0 && (uintptr_t)w->data % 16 == 0;
        cublasStatus_t s = CUBLAS_STATUS_NOT_SUPPORTED;

        if (!fits && variant == 1)
            return sw_err(SW_EUNSUPPORTED, "CUDA matmul: the cuBLAS int8 variant needs K %% 4 "
                          "== 0 (K is %lld)", (long long)K);
        if (fits)
            s = c->api->gemm_ex(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, M, (int)K, &one,
                                w->data, CUDA_R_8I, (int)K, xq, CUDA_R_8I, (int)K, &zero, acc,
                                CUDA_R_32I, (int)N, CUBLAS_COMPUTE_32I, CUBLAS_GEMM_DEFAULT);
        if (s == CUBLAS_STATUS_SUCCESS) {
            size_t n = (size_t)M * (size_t)N;
            int32_t hnol = 0;
            /* the outlier part as fp32 GEMMs of I8_OL_CHUNK columns at a time into y: the
             * column count is needed on the host here (one small copy and a wait, on the
             * prefill path only); the sum's order differs from the reference's sequential one
             * by fp32 rounding only */
            SW_CUDA_CHECK(cudaMemcpyAsync(&hnol, nol, sizeof(hnol), cudaMemcpyDeviceToHost,
                                          c->stream));
            SW_CUDA_CHECK(cudaStreamSynchronize(c->stream));
            if (hnol < 0 || hnol > K)
                return sw_err(SW_EDEVICE, "CUDA matmul: int8 outlier count %d out of range",
                              (int)hnol);
            for (int c0 = 0; c0 < hnol; c0 += I8_OL_CHUNK) {
                const float fone = 1.0f, fbeta = c0 ? 1.0f : 0.0f;
                int nc = hnol - c0 < I8_OL_CHUNK ? hnol - c0 : I8_OL_CHUNK;
                float *xo = (float *)(ws + l.xo), *wo = (float *)(ws + l.wo);
                size_t ng = ((size_t)M + (size_t)N) * (size_t)nc;
                i8_gather_kernel<<<sw_cuda_grid(ng, 256), 256, 0, c->stream>>>(
                    xo, wo, x, (const int8_t *)w->data, w->qs->scb, ol, c0, nc, M, (int)N,
                    (int)K);
                SW_CUDA_CHECK_LAUNCH();
                SW_CUBLAS_CHECK(c, c->api->gemm_ex(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, M,
                                                   nc, &fone, wo, CUDA_R_32F, nc, xo, CUDA_R_32F,
                                                   nc, &fbeta, y, CUDA_R_32F, (int)N,
                                                   CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
            }
            i8_epilogue_kernel<<<sw_cuda_grid(n, 256), 256, 0, c->stream>>>(
                y, acc, w->qs->scb, xa, bias, M, (int)N, hnol > 0);
            SW_CUDA_CHECK_LAUNCH();
            return 0;
        }
        if (variant == 1 || (s != CUBLAS_STATUS_NOT_SUPPORTED && s != CUBLAS_STATUS_INVALID_VALUE))
            return sw_cublas_fail(c, __FILE__, __LINE__, "cublasGemmEx (int8)", s);
        SW_LOG_D("cuda", "cuBLAS declined the int8 GEMM %d x %lld x %lld (status %d); "
                 "running the int8 GEMV over chunks of %d rows", M, (long long)N, (long long)K,
                 (int)s, SW_CUDA_GEMV_MAX_M);
    }
    for (int m0 = 0; m0 < M; m0 += SW_CUDA_GEMV_MAX_M) {
        int mc = M - m0 < SW_CUDA_GEMV_MAX_M ? M - m0 : SW_CUDA_GEMV_MAX_M;
        int r = i8_gemv_launch(c, vec, y + (size_t)m0 * N, x + (size_t)m0 * K, w,
                               xq + (size_t)m0 * K, xa + m0, ol, nol, bias, mc, (int)N, (int)K);
        if (r < 0)
            return r;
    }
    return 0;
}
