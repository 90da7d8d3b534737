/*
 * rmsnorm.cu - y (M, H) = x / sqrt(mean(x^2) + eps) * w.
 *
 * One block of 256 threads per row: each thread sums the squares of a strided slice in fp32,
 * a warp-shuffle + shared-memory reduction gives the row's sum, then each thread scales the
 * same elements it read. y may equal x: every element is read (in the sum) before the barrier
 * inside the reduction and written after it, by the same thread.
 */
#include <errno.h>

#include "internal.h"

#define RMS_THREADS 256

static __global__ void __launch_bounds__(RMS_THREADS)
rmsnorm_kernel(float *y, const float *x, const float *w, int H, float eps)
{
    __shared__ float red[32];
    const float *xr = x + (size_t)blockIdx.x * H;
    float *yr = y + (size_t)blockIdx.x * H;
    float ss = 0.0f;

    for (int i = threadIdx.x; i < H; i += blockDim.x)
        ss += xr[i] * xr[i];
    ss = sw_dev_block_sum(ss, red);
    float r = 1.0f / sqrtf(ss / (float)H + eps);
    for (int i = threadIdx.x; i < H; i += blockDim.x)
        yr[i] = w[i] * (xr[i] * r);
}

extern "C" int sw_cuda_rmsnorm(sw_cuda_ctx_t *c, float *y, const float *x, const float *w, int M,
                               int H, float eps)
{
    if (M < 0 || H < 1 || M > INT32_MAX / 2)
        return sw_err(-EINVAL, "CUDA rmsnorm: bad shape M %d, H %d", M, H);
    if (M == 0)
        return 0;
    rmsnorm_kernel<<<M, RMS_THREADS, 0, c->stream>>>(y, x, w, H, eps);
    SW_CUDA_CHECK_LAUNCH();
    return 0;
}
