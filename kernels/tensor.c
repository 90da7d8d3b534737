/* tensor.c - see tensor.h. */
#include "tensor.h"

#include <errno.h>

#include "../util/alloc.h"

size_t sw_dtype_size(sw_dtype_t dt)
{
    switch (dt) {
    case SW_DTYPE_F32: return 4;
    case SW_DTYPE_F16: return 2;
    case SW_DTYPE_BF16: return 2;
    case SW_DTYPE_NF4: return 1;
    case SW_DTYPE_I8: return 1;
    default: return 0;
    }
}

const char *sw_dtype_name(sw_dtype_t dt)
{
    switch (dt) {
    case SW_DTYPE_F32: return "f32";
    case SW_DTYPE_F16: return "f16";
    case SW_DTYPE_BF16: return "bf16";
    case SW_DTYPE_NF4: return "nf4";
    case SW_DTYPE_I8: return "i8";
    default: return "?";
    }
}

int64_t sw_tensor_numel(const sw_tensor_t *t)
{
    int64_t n = 1;

    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

size_t sw_tensor_nbytes(const sw_tensor_t *t)
{
    if (t->dtype == SW_DTYPE_NF4)
        return ((size_t)sw_tensor_numel(t) + 1) / 2;
    return (size_t)sw_tensor_numel(t) * sw_dtype_size(t->dtype);
}

int sw_tensor_alloc(sw_tensor_t *t, sw_dtype_t dt, int ndim, const int64_t *shape)
{
    size_t n;

    memset(t, 0, sizeof(*t));
    t->dtype = dt;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        t->shape[i] = shape[i];
    n = sw_tensor_nbytes(t);
    t->data = sw_alloc_aligned(64, n);
    if (!t->data)
        return -ENOMEM;
    memset(t->data, 0, n);
    t->owned = 1;
    return 0;
}

void sw_tensor_free(sw_tensor_t *t)
{
    if (t->owned)
        sw_free(t->data);
    t->data = NULL;
    t->owned = 0;
}

void sw_to_f32(float *dst, const void *src, sw_dtype_t dt, size_t n)
{
    const uint16_t *h = src;

    switch (dt) {
    case SW_DTYPE_F32:
        memcpy(dst, src, n * 4);
        break;
    case SW_DTYPE_F16:
        for (size_t i = 0; i < n; i++)
            dst[i] = sw_f16_to_f32(h[i]);
        break;
    case SW_DTYPE_BF16:
        for (size_t i = 0; i < n; i++)
            dst[i] = sw_bf16_to_f32(h[i]);
        break;
    default:
        break;
    }
}

void sw_from_f32(void *dst, const float *src, sw_dtype_t dt, size_t n)
{
    uint16_t *h = dst;

    switch (dt) {
    case SW_DTYPE_F32:
        memcpy(dst, src, n * 4);
        break;
    case SW_DTYPE_F16:
        for (size_t i = 0; i < n; i++)
            h[i] = sw_f32_to_f16(src[i]);
        break;
    case SW_DTYPE_BF16:
        for (size_t i = 0; i < n; i++)
            h[i] = sw_f32_to_bf16(src[i]);
        break;
    default:
        break;
    }
}
