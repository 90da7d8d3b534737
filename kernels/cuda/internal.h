/*
 * internal.h - private to the .cu files of kernels/cuda: the context's fields, the check macros
 * and small device helpers shared by the op files. Compiled as CUDA C++ only.
 */
#ifndef SW_KERNELS_CUDA_INTERNAL_H
#define SW_KERNELS_CUDA_INTERNAL_H

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

extern "C" {
#include "../../util/error.h"
#include "../tensor.h" /* C linkage for its functions; backend.h then finds it included */
#include "../quant.h"
}
#include "backend.h"

/* The few cuBLAS entry points we use, resolved from libcublas.so at run time (context.cu). */
typedef struct {
    void *lib;
    cublasStatus_t (*create)(cublasHandle_t *);
    cublasStatus_t (*destroy)(cublasHandle_t);
    cublasStatus_t (*set_stream)(cublasHandle_t, cudaStream_t);
    cublasStatus_t (*set_math_mode)(cublasHandle_t, cublasMath_t);
    cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                              const void *, const void *, cudaDataType, int, const void *,
                              cudaDataType, int, const void *, void *, cudaDataType, int,
                              cublasComputeType_t, cublasGemmAlgo_t);
    const char *(*status_string)(cublasStatus_t);
} sw_cublas_api_t;

struct sw_cuda_ctx {
    int dev;
    cudaStream_t stream;
    cublasHandle_t blas;
    const sw_cublas_api_t *api;
    sw_cuda_matmul_mode_t mode;
    void *ws;        /* workspace for matmul conversions */
    size_t ws_bytes;
    float *attn_ws;  /* SW_CUDA_ATTN_WS_BYTES for split-KV partial results */
    int num_sms;     /* multiprocessors of dev */
    int smem_optin;  /* largest dynamic shared memory a block may opt in to, bytes */
    int variant[SW_CUDA_K_COUNT]; /* forced kernel variants, 0 = mainline */
    cudaEvent_t ev_start, ev_stop; /* sw_cuda_timer_* */
};

/* Int8 (LLM.int8()) matmul, matmul_int8.cu; sw_cuda_matmul has checked w's shape and dtype. */
int sw_cuda_matmul_int8(sw_cuda_ctx_t *c, float *y, const float *x, const sw_tensor_t *w,
                        const float *bias, int M);
size_t sw_cuda_int8_workspace_bytes(int M, int64_t N, int64_t K);

/* Logs "file:line: what: message" and records it as the detail of SW_EDEVICE, which it returns. */
int sw_cuda_fail(const char *file, int line, const char *what, const char *msg);
int sw_cublas_fail(const sw_cuda_ctx_t *c, const char *file, int line, const char *what,
                   cublasStatus_t s);

/* Every CUDA runtime call goes through this; it returns SW_EDEVICE from the calling function. */
#define SW_CUDA_CHECK(call)                                                                  \
    do {                                                                                     \
        cudaError_t e_ = (call);                                                             \
        if (e_ != cudaSuccess)                                                               \
            return sw_cuda_fail(__FILE__, __LINE__, #call, cudaGetErrorString(e_));          \
    } while (0)

/* After each kernel launch: catches bad launch configurations at once, faults later. */
#define SW_CUDA_CHECK_LAUNCH() SW_CUDA_CHECK(cudaGetLastError())

#define SW_CUBLAS_CHECK(c, call)                                                             \
    do {                                                                                     \
        cublasStatus_t s_ = (call);                                                          \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                     \
            return sw_cublas_fail((c), __FILE__, __LINE__, #call, s_);                       \
    } while (0)

/* Grid size for a grid-stride loop over n elements with `threads` per block. */
static inline unsigned sw_cuda_grid(size_t n, unsigned threads)
{
    size_t b = (n + threads - 1) / threads;
    return (unsigned)(b < 65536 * 8 ? (b ? b : 1) : 65536 * 8);
}

/* Element i of a dense weight of dtype dt as fp32 (exact widening). */
static __device__ __forceinline__ float sw_dev_load(const void *data, int dt, size_t i)
{
    if (dt == SW_DTYPE_F32)
        return ((const float *)data)[i];
    uint16_t u = ((const uint16_t *)data)[i];
    if (dt == SW_DTYPE_F16)
        return __half2float(__ushort_as_half(u));
    return __uint_as_float((uint32_t)u << 16); /* bf16 */
}

/* Sum over the block of every thread's v; all threads get the result. red: >= 32 floats. */
static __device__ __forceinline__ float sw_dev_block_sum(float v, float *red)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = (blockDim.x + 31) / 32;
    __syncthreads(); /* red may still be read by a previous reduction */
    if (lane == 0)
        red[warp] = v;
    __syncthreads();
    v = lane < nw ? red[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Max over the block, as sw_dev_block_sum. */
static __device__ __forceinline__ float sw_dev_block_max(float v, float *red)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = (blockDim.x + 31) / 32;
    __syncthreads();
    if (lane == 0)
        red[warp] = v;
    __syncthreads();
    v = lane < nw ? red[lane] : -INFINITY;
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

#endif
