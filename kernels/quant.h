/*
 * quant.h - quantized weight formats, laid out bit for bit as bitsandbytes lays them out
 * (../shared/reference/bnb.md), so checkpoints quantized by bitsandbytes load and numbers compare.
 *
 *  - NF4 (QLoRA): 16-value code, blocks of `blocksize` (default 64) consecutive elements of the
 *    flattened (N, K) weight, fp32 absmax per block, nearest code with ties to the lower code,
 *    element 2j in the HIGH nibble of byte j. Optional double quantization of the absmax
 *    (offset = mean, signed 8-bit dynamic code, blocks of 256): about 4.127 bits per weight.
 *  - Int8 (LLM.int8()): int8 weight (N, K) row-major, fp32 SCB (N) = per-row absmax, so
 *    W = q * SCB / 127. Activations are quantized per row at run time; activation columns with any
 *    |x| >= threshold are taken out and multiplied in floating point against the dequantized
 *    weight columns, then added back.
 *  - Blockwise 8-bit dynamic quantization (bnb's signed dynamic map): used for the NF4 nested
 *    absmax, and later for activations on the wire and optimizer states.
 *
 * A quantized weight is an sw_tensor_t with dtype SW_DTYPE_NF4 or SW_DTYPE_I8, shape (N, K),
 * data = the packed bytes, and qs = its state below. The op table's matmul accepts them.
 */
#ifndef SW_KERNELS_QUANT_H
#define SW_KERNELS_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "tensor.h"

/* bnb's NF4 code, index = 4-bit code, ascending. */
extern const float sw_nf4_code[16];
/* bnb's signed dynamic 8-bit map (create_dynamic_map(signed=True)), 256 entries, ascending. */
extern const float sw_q8_dynamic_map[256];

typedef struct sw_qstate {
    /* NF4 */
    int blocksize;              /* elements per absmax block (64) */
    int64_t nblocks;            /* ceil(N*K / blocksize) */
    const float *absmax;        /* (nblocks) fp32, or NULL when nested */
    const uint8_t *qabsmax;     /* (nblocks) nested: 8-bit codes of absmax - offset */
    const float *nested_absmax; /* (ceil(nblocks / nested_blocksize)) */
    int nested_blocksize;       /* 256 */
    float offset;               /* mean of the absmax, added back */
    /* Int8 */
    const float *scb;           /* (N) per-row absmax */
    float threshold;            /* activation outlier threshold; 0 = no decomposition */
    /* memory owned by the state, freed by sw_qtensor_free (NULL when all fields are borrowed) */
    void *owned;
} sw_qstate_t;

/* The 15 float32 midpoints between adjacent NF4 codes, ascending (bnb's dQuantizeNF4 literals). */
extern const float sw_nf4_thresholds[15];

/*
 * Bits per weight a quantized (N, K) tensor occupies: packed codes plus every per-tensor scale
 * (absmax / qabsmax + nested_absmax + offset, or SCB). The shared code tables are not counted.
 * NF4 bs64: 4.5; nested: 4.127. Int8: 8 + 32 / K. Dense dtypes: 8 * element size.
 */
double sw_quant_bits_per_weight(const sw_tensor_t *w);
/* Bytes of the scales of w (what sw_quant_bits_per_weight adds to the packed data); 0 if dense. */
size_t sw_qtensor_state_bytes(const sw_tensor_t *w);

/* ---- NF4 ---- */

/* Code of one scaled value v = x / absmax: number of thresholds strictly below v (ties to the
 * lower code; NaN gives 0), i.e. bnb's dQuantizeNF4 decision tree. */
static inline uint8_t sw_nf4_quantize_one(float v)
{
    uint8_t q = 0;

    for (int i = 0; i < 15; i++)
        q += v > sw_nf4_thresholds[i];
    return q;
}

/*
 * packed ((n + 1) / 2) = NF4 codes of x (n), element 2j in the high nibble of byte j, an odd tail
 * padded with code 7 (0.0); absmax (ceil(n / blocksize)) fp32 per block of consecutive elements.
 * Scaling is x * (1.0f / absmax); an all-zero block gives NaN -> code 0 (dequantizes to -0.0),
 * exactly like CUDA bnb.
 */
void sw_nf4_quantize(const float *x, size_t n, int blocksize, uint8_t *packed, float *absmax);
/* x (n) = code[nibble] * absmax[i / blocksize] in fp32 (plain absmax array). */
void sw_nf4_dequantize(const uint8_t *packed, const float *absmax, size_t n, int blocksize,
                       float *x);
/*
 * Double quantization of absmax (nblocks): *offset = mean(absmax) (summed in double, then rounded
 * to float32: torch's fp32 .mean() on the GPU may differ in the last ulp), then
 * sw_q8_quantize(absmax - offset, 256) into qabsmax (nblocks) and nested_absmax
 * (ceil(nblocks / 256)). scratch: nblocks floats.
 */
void sw_nf4_double_quant(const float *absmax, int64_t nblocks, uint8_t *qabsmax,
                         float *nested_absmax, float *offset, float *scratch);
/*
 * absmax of blocks [b0, b0 + n) of an NF4 state into out (n): the plain array, or, nested,
 * map[qabsmax[b]] * nested_absmax[b / nested_blocksize] + offset as two fp32 roundings (bnb's
 * dequantize_blockwise followed by += offset).
 */
void sw_nf4_absmax_range(const sw_qstate_t *qs, int64_t b0, int64_t n, float *out);

/* ---- LLM.int8() ---- */

/*
 * Row-wise int8 quantization of w (N, K): scb[n] = max |w[n, :]|, q = round-half-even(w *
 * (127 / scb)), a zero row gives zeros. Values are used as given (sw_quantize_int8 rounds them to
 * fp16 first, as bnb quantizes fp16 weights).
 */
void sw_int8_quantize_rows(const float *w, int64_t N, int64_t K, int8_t *q, float *scb);

/* ---- quantized tensors ---- */

/*
 * *out = NF4 quantization of dense (2-D (N, K), f32/f16/bf16, any alignment), blocks over the
 * flattened tensor as bnb; blocksize in {32, 64, ..., 4096}; double_quant nests the absmax
 * (blocks of 256). The codes and state live in one allocation owned by out->qs; free it with
 * sw_qtensor_free. Returns 0, -EINVAL (shape, dtype, blocksize) or -ENOMEM.
 */
int sw_quantize_nf4(const sw_tensor_t *dense, int blocksize, int double_quant, sw_tensor_t *out);
/*
 * *out = LLM.int8() quantization of dense (2-D (N, K)). Weights are rounded to fp16 first (bnb
 * quantizes the fp16 weight of a module cast with .half()/.cuda(); f16 inputs are unchanged by
 * it), then sw_int8_quantize_rows. threshold: activation outlier threshold for matmul (6.0 as
 * in Petals/transformers; 0 = plain int8). Free with sw_qtensor_free. 0, -EINVAL or -ENOMEM.
 */
int sw_quantize_int8(const sw_tensor_t *dense, float threshold, sw_tensor_t *out);
/* Frees what sw_quantize_* allocated and zeroes *t; a tensor with no owned state is just reset. */
void sw_qtensor_free(sw_tensor_t *t);
/* out (numel) = fp32 dequantization of a quantized or dense 2-D tensor w. */
void sw_qtensor_dequantize(const sw_tensor_t *w, float *out);

/* ---- blockwise 8-bit dynamic (bnb quantize_blockwise / dequantize_blockwise) ---- */

/*
 * q (n) = nearest entry of sw_q8_dynamic_map to x / absmax (ties to the lower code), per block of
 * `blocksize` consecutive elements; absmax (ceil(n / blocksize)) = max |x| of each block.
 * x is scaled by multiplication with 1.0f / absmax, as bnb does; an all-zero block gives
 * absmax 0 and codes 0 (NaN path, like CUDA bnb), which dequantize to -0.0.
 * Any blocksize >= 1 works; bnb uses 64..4096 (4096 for hivemind payloads, 256 nested/optimizer).
 */
void sw_q8_quantize(const float *x, size_t n, int blocksize, uint8_t *q, float *absmax);
/* x (n) = map[q] * absmax[i / blocksize], in fp32. */
void sw_q8_dequantize(const uint8_t *q, const float *absmax, size_t n, int blocksize, float *x);
/*
 * Nearest entry of the sorted 256-entry `code` to x, by bnb's exact binary descent (dQuantize):
 * a value exactly on a midpoint goes to the code the descent ended on; NaN gives code 0.
 */
uint8_t sw_q8_quantize_one(const float *code, float x);

#endif
