/*
 * pointwise.cu - the element-wise ops: swiglu (out = silu(gate) * up) and the residual add
 * (y += x). Grid-stride loops, one element per thread per step; each element is read and
 * written by the same thread, so out may alias gate or up.
 */
#include <errno.h>

#include "internal.h"

static __global__ void swiglu_kernel(float *out, const float *gate, const float *up, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

static __global__ void add_kernel(float *y, const float *x, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] += x[i];
}

extern "C" int sw_cuda_swiglu(sw_cuda_ctx_t *c, float *out, const float *gate, const float *up,
                              size_t n)
{
    if (n == 0)
        return 0;
    swiglu_kernel<<<sw_cuda_grid(n, 256), 256, 0, c->stream>>>(out, gate, up, n);
    SW_CUDA_CHECK_LAUNCH();
    return 0;
}

extern "C" int sw_cuda_add(sw_cuda_ctx_t *c, float *y, const float *x, size_t n)
{
    if (n == 0)
        return 0;
    add_kernel<<<sw_cuda_grid(n, 256), 256, 0, c->stream>>>(y, x, n);
    SW_CUDA_CHECK_LAUNCH();
    return 0;
}
