/*
 * ops.h - the backend op table. Callers (pipeline/) hold a `const sw_ops_t *` and never know
 * which backend runs: `sw_ops_ref` (plain single-threaded C, the reference for tests),
 * `sw_ops_cpu` (threaded over the global pool, AVX2/FMA/F16C chosen at run time, portable
 * fallback), and later the CUDA table.
 *
 * All activations are fp32, row-major. Shapes use the glossary in tensor.h; M = rows (B*T).
 * Every op writes only its output; none allocates. Pointers must not alias unless stated.
 * Weight tensors may point straight into a checkpoint mapping, so their data need not be
 * aligned to the element size: backends load them unaligned.
 */
#ifndef SW_KERNELS_OPS_H
#define SW_KERNELS_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "tensor.h"

typedef struct sw_ops {
    const char *name;

    /* y (M, N) = x (M, K) @ w^T + bias; w is (N, K) in any dtype; bias (N) or NULL. */
    void (*matmul)(float *y, const float *x, const sw_tensor_t *w, const float *bias, int M);

    /* y (M, H) = x / sqrt(mean(x^2) + eps) * w; y may equal x. */
    void (*rmsnorm)(float *y, const float *x, const float *w, int M, int H, float eps);

    /*
     * In-place rotary embedding, Hugging Face "rotate_half" layout: element i pairs with
     * i + HD/2. x (M, nh, HD); pos (M) absolute positions; inv_freq (HD/2).
     * angle = (float)pos * inv_freq[i] in fp32; cos/sin are scaled by attn_factor.
     */
    void (*rope)(float *x, const int32_t *pos, int M, int nh, int HD, const float *inv_freq,
                 float attn_factor);

    /*
     * Causal attention of T new queries per sequence against a KV cache that already holds
     * their keys/values. q, out (B, T, NH, HD); k, v (B, NKV, max_T, HD) with valid entries
     * [0, pos0 + T). Query t sits at position pos0 + t and sees keys at positions <= its own,
     * and, when window > 0, only the last `window` of them (sliding-window attention).
     * Query head h uses KV head h / (NH / NKV). scale multiplies q.k.
     * scratch: at least sw_attention_scratch_floats(max_T) floats.
     */
    void (*attention)(float *out, const float *q, const float *k, const float *v, int B, int T,
                      int pos0, int max_T, int NH, int NKV, int HD, int window, float scale,
                      float *scratch);

    /* out (n) = silu(gate) * up; out may equal gate or up. */
    void (*swiglu)(float *out, const float *gate, const float *up, size_t n);

    /* y (n) += x (n). */
    void (*add)(float *y, const float *x, size_t n);

    /* y (M, H) = rows ids[m] of table (V, H), any dtype. ids must be checked by the caller. */
    void (*embed)(float *y, const sw_tensor_t *table, const int32_t *ids, int M);

    /*
     * Batch invariance of matmul with weight w, for callers that stack the rows of independent
     * sequences into one call (the server's continuous batching): sets [*lo, *hi] (containing M)
     * to the row counts M' for which a call with M' rows computes each row of y bit-identically
     * to a call with M rows, whatever the other rows hold. Returns 0, or -1 when a row's result
     * may depend on the other rows of the call (LLM.int8() with an outlier threshold: the outlier
     * columns are those of the whole x); then [*lo, *hi] = [M, M]. NULL: never invariant.
     */
    int (*matmul_batch_range)(const sw_tensor_t *w, int M, int *lo, int *hi);
} sw_ops_t;

extern const sw_ops_t sw_ops_ref;
extern const sw_ops_t sw_ops_cpu;

/* Scratch floats the attention op needs for caches of max_T positions (any backend above). */
size_t sw_attention_scratch_floats(int max_T);

/* Names the SIMD level sw_ops_cpu uses on this machine ("avx2+fma+f16c" or "portable"). */
const char *sw_cpu_simd_name(void);

#endif
