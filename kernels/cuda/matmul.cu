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
 */
#include <errno.h>

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

extern "C" size_t sw_cuda_matmul_workspace_bytes(sw_cuda_matmul_mode_t mode, sw_dtype_t wdt,
                                                 int M, int64_t N, int64_t K)
{
    if (wdt == SW_DTYPE_F32)
        return 0;
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

    if (w->ndim != 2 || w->qs)
        return sw_err(SW_EUNSUPPORTED, "CUDA matmul: needs a dense 2-d weight");
    if (dt != SW_DTYPE_F32 && dt != SW_DTYPE_F16 && dt != SW_DTYPE_BF16)
        return sw_err(SW_EUNSUPPORTED, "CUDA matmul: %s weights are not supported yet",
                      sw_dtype_name(w->dtype));
    N = w->shape[0];
    K = w->shape[1];
    if (M < 0 || N < 1 || K < 1 || N > INT32_MAX || K > INT32_MAX)
        return sw_err(-EINVAL, "CUDA matmul: bad shape M %d, N %lld, K %lld", M,
                      (long long)N, (long long)K);
    if (M == 0)
        return 0;
    need = sw_cuda_matmul_workspace_bytes(c->mode, w->dtype, M, N, K);
    if (need > c->ws_bytes)
        return sw_err(SW_ELIMIT, "CUDA matmul: needs %zu workspace bytes, the context has %zu "
                      "(sw_cuda_ctx_reserve)", need, c->ws_bytes);

    if (dt == SW_DTYPE_F32) {
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
