/*
 * backward.h - the backward op table: gradients of a Llama block's ops with respect to their
 * activation inputs, for the `backward` RPC (Petals' rpc_backward returns input gradients only).
 * Weights are frozen: there are no weight gradients, and biases do not enter any dX.
 *
 * Two tables, as for the forward ops (ops.h): `sw_bwd_ops_ref` (plain single-threaded C, double
 * accumulation, the reference) and `sw_bwd_ops_cpu` (threaded over the global pool, fp32
 * accumulation, tiles the compiler vectorizes; an AVX2+FMA build of the same loops where
 * sw_cpu_simd_name() says AVX2). Every op is tested against central finite differences of its
 * forward in double precision, and the fast table against the reference (tests/test-backward.c).
 *
 * Shapes use the glossary of tensor.h; M = rows (B*T). All gradients are fp32, row-major. No op
 * allocates. Pointers must not alias unless stated.
 */
#ifndef SW_KERNELS_BACKWARD_H
#define SW_KERNELS_BACKWARD_H

#include <stddef.h>
#include <stdint.h>

#include "ops.h"
#include "tensor.h"

typedef struct sw_bwd_ops {
    const char *name;

    /*
     * dx (M, K) = dy (M, N) @ W, the input gradient of y = x @ W^T + bias, with W (N, K) read
     * exactly as the forward matmul reads it: f32/f16/bf16 converted to fp32, NF4 as code * absmax
     * of its block (nested absmax rebuilt as sw_nf4_absmax_range does), Int8 as CB * SCB / 127.
     * For Int8 this is LLM.int8()'s backward as bitsandbytes' MatMul8bitLt computes it: the
     * per-row activation quantization of the forward is treated as the identity (it is piecewise
     * constant, so its true derivative is useless). accumulate != 0 adds into dx.
     */
    void (*matmul_dx)(float *dx, const float *dy, const sw_tensor_t *w, int M, int accumulate);

    /* dx (M, H) = gradient of y = x / sqrt(mean(x^2) + eps) * w (w frozen) given dy (M, H).
     * dx may equal dy. */
    void (*rmsnorm)(float *dx, const float *dy, const float *x, const float *w, int M, int H,
                    float eps);

    /* In place: d (M, nh, HD) := R^T d, the transpose of ops.h's rope at the same positions,
     * frequencies and attn_factor (the inverse rotation, scaled by attn_factor). */
    void (*rope)(float *d, const int32_t *pos, int M, int nh, int HD, const float *inv_freq,
                 float attn_factor);

    /*
     * Backward of ops.h's attention for T queries at positions 0..T-1 over their own keys (no
     * earlier cache): q, dq, dout (B, T, NH, HD); k, v, dk, dv (B, NKV, T, HD) (the cache layout
     * with max_T = T). Causal, with the same sliding window and GQA grouping as the forward; the
     * softmax is recomputed. dq, dk and dv are overwritten. scratch: at least
     * sw_attention_bwd_scratch_floats(T) floats.
     */
    void (*attention)(float *dq, float *dk, float *dv, const float *dout, const float *q,
                      const float *k, const float *v, int B, int T, int NH, int NKV, int HD,
                      int window, float scale, float *scratch);

    /* dgate, dup (n) = gradients of out = silu(gate) * up given dout (n). dgate may equal dout. */
    void (*swiglu)(float *dgate, float *dup, const float *dout, const float *gate,
                   const float *up, size_t n);
} sw_bwd_ops_t;

extern const sw_bwd_ops_t sw_bwd_ops_ref;
extern const sw_bwd_ops_t sw_bwd_ops_cpu;

/* The backward table that goes with a forward table: the reference for sw_ops_ref, else the
 * fast CPU one. */
const sw_bwd_ops_t *sw_bwd_ops_for(const sw_ops_t *ops);

/* Scratch floats the attention backward needs for T queries (either table). */
size_t sw_attention_bwd_scratch_floats(int T);

#endif
