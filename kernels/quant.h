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
    /* memory owned by the state, freed by sw_qstate_free (NULL when all fields are borrowed) */
    void *owned;
} sw_qstate_t;

/* Bits per weight a quantized (N, K) tensor occupies, all state included. */
double sw_quant_bits_per_weight(const sw_tensor_t *w);

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
/* Regenerates the signed dynamic map into map (256) from bnb's recipe (see quant.c). */
void sw_q8_create_dynamic_map(float map[256]);

#endif
