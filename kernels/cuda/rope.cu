/*
 * rope.cu - in-place rotary embedding, Hugging Face rotate_half layout: in each head vector of
 * x (M, nh, HD), element i pairs with i + HD/2.
 *
 * One thread per pair (m, h, i). The angle is (float)pos[m] * inv_freq[i] in fp32, and cos/sin
 * are taken in double and rounded to fp32, exactly as the CPU reference does, so the two agree
 * to the last bit of cos/sin (double precision is cheap next to the memory traffic here).
 */
#include <errno.h>

#include "internal.h"

static __global__ void rope_kernel(float *x, const int32_t *pos, int nh, int half,
                                   const float *inv_freq, float attn_factor, size_t n)
{
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < n;
         idx += (size_t)gridDim.x * blockDim.x) {
        int i = (int)(idx % half);
        size_t row = idx / half; /* m * nh + h */
        size_t m = row / nh;
        float ang = __fmul_rn((float)pos[m], inv_freq[i]);
        double s, co;
        sincos((double)ang, &s, &co);
        float cf = (float)co * attn_factor, sf = (float)s * attn_factor;
        float *v = x + row * (size_t)(2 * half);
        float a = v[i], b = v[i + half];
        v[i] = a * cf - b * sf;
        v[i + half] = b * cf + a * sf;
    }
}

extern "C" int sw_cuda_rope(sw_cuda_ctx_t *c, float *x, const int32_t *pos, int M, int nh,
                            int HD, const float *inv_freq, float attn_factor)
{
    size_t n;

    if (M < 0 || nh < 1 || HD < 2 || HD % 2)
        return sw_err(-EINVAL, "CUDA rope: bad shape M %d, nh %d, HD %d", M, nh, HD);
    n = (size_t)M * (size_t)nh * (size_t)(HD / 2);
    if (n == 0)
        return 0;
    rope_kernel<<<sw_cuda_grid(n, 256), 256, 0, c->stream>>>(x, pos, nh, HD / 2, inv_freq,
                                                            attn_factor, n);
    SW_CUDA_CHECK_LAUNCH();
    return 0;
}
