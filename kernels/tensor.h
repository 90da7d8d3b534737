/*
 * tensor.h - dtypes, scalar conversions and the tensor type used by every backend.
 *
 * Dimension glossary (used in every shape comment): B batch, T tokens, H hidden, NH query heads,
 * NKV key/value heads, HD head dim, I intermediate (MLP), V vocab, L layers.
 *
 * A weight matrix follows the Hugging Face Linear layout: (N, K) row-major, N outputs, K inputs,
 * so y = x @ W^T. Activations are always fp32 on the CPU.
 */
#ifndef SW_KERNELS_TENSOR_H
#define SW_KERNELS_TENSOR_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef enum {
    SW_DTYPE_F32 = 0,
    SW_DTYPE_F16 = 1,
    SW_DTYPE_BF16 = 2,
    SW_DTYPE_NF4 = 3, /* bnb NF4, 2 elements per byte; needs sw_tensor_t.qs (kernels/quant.h) */
    SW_DTYPE_I8 = 4,  /* LLM.int8() weight codes; needs sw_tensor_t.qs (kernels/quant.h) */
    SW_DTYPE_COUNT
} sw_dtype_t;

#define SW_TENSOR_MAX_DIMS 4

struct sw_qstate;

/*
 * A tensor view. `data` is borrowed unless `owned` is set (then freed by sw_tensor_free).
 * Dense tensors have qs == NULL. A quantized weight (dtype NF4 or I8, shape (N, K)) has data = the
 * packed codes and qs = its scales (kernels/quant.h); one made by sw_quantize_nf4/_int8 is freed
 * with sw_qtensor_free, not sw_tensor_free.
 */
typedef struct {
    sw_dtype_t dtype;
    int ndim;
    int64_t shape[SW_TENSOR_MAX_DIMS];
    void *data;
    int owned;
    const struct sw_qstate *qs;
} sw_tensor_t;

/*
 * Bytes of one storage unit of dt: the element size for f32/f16/bf16/i8, and 1 for NF4 (a byte
 * holds two elements). It is the alignment a data pointer of that dtype needs; for sizes use
 * sw_tensor_nbytes. 0 for an unknown dtype.
 */
size_t sw_dtype_size(sw_dtype_t dt);
const char *sw_dtype_name(sw_dtype_t dt);
int64_t sw_tensor_numel(const sw_tensor_t *t);
/*
 * Bytes of t->data: numel * element size, and (numel + 1) / 2 for NF4 (bnb's packed layout).
 * Quantization state (absmax, SCB) is not included: see sw_qtensor_state_bytes in quant.h.
 */
size_t sw_tensor_nbytes(const sw_tensor_t *t);
/* Allocates an owned, 64-byte aligned, zeroed tensor (any dtype; qs stays NULL). */
int sw_tensor_alloc(sw_tensor_t *t, sw_dtype_t dt, int ndim, const int64_t *shape);
void sw_tensor_free(sw_tensor_t *t);
/* Converts n elements of src (f32, f16 or bf16) to fp32. */
void sw_to_f32(float *dst, const void *src, sw_dtype_t dt, size_t n);
/* Converts n fp32 values into dtype dt (f32, f16 or bf16; round to nearest even). */
void sw_from_f32(void *dst, const float *src, sw_dtype_t dt, size_t n);

/* ---- scalar conversions (exact IEEE semantics, round to nearest even) ---- */

static inline uint32_t sw_f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float sw_bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline float sw_bf16_to_f32(uint16_t h)
{
    return sw_bits_f32((uint32_t)h << 16);
}

static inline uint16_t sw_f32_to_bf16(float f)
{
    uint32_t u = sw_f32_bits(f);

    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it quiet and a NaN */
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float sw_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;

    if (exp == 0) {
        if (man == 0)
            return sw_bits_f32(sign);
        /* subnormal: value = man * 2^-24 */
        float v = (float)man * 5.9604644775390625e-08f;
        return sign ? -v : v;
    }
    if (exp == 31)
        return sw_bits_f32(sign | 0x7f800000u | (man << 13));
    return sw_bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

static inline uint16_t sw_f32_to_f16(float f)
{
    uint32_t u = sw_f32_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;

    if (a > 0x7f800000u)
        return (uint16_t)(sign | 0x7e00u);
    if (a >= 0x477ff000u) /* rounds to >= 65520: infinity */
        return (uint16_t)(sign | 0x7c00u);
    if (a < 0x38800000u) { /* below the smallest normal half: subnormal or zero */
        /* a magic-number add does the rounding to a multiple of 2^-24 with nearest-even */
        float v = sw_bits_f32(a) + 0.5f;
        return (uint16_t)(sign | (sw_f32_bits(v) - 0x3f000000u));
    }
    uint32_t mant_odd = (a >> 13) & 1u;
    a += 0xc8000fffu + mant_odd; /* re-bias exponent (-112 << 23) and round */
    return (uint16_t)(sign | (a >> 13));
}

#endif
