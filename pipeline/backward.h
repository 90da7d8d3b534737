/*
 * backward.h - gradients through a span of blocks: what the `backward` RPC computes.
 *
 * As Petals' rpc_backward, a server returns the gradient of the loss with respect to the span's
 * input hidden states, given those inputs and the gradient with respect to its outputs. Weights
 * are frozen (no weight gradients). There is no KV cache: the span runs positions 0..T-1 of each
 * sequence, as a "forward" call does, and the forward is recomputed here.
 *
 * Method (activation checkpointing per block): one forward pass keeps the input of every block;
 * then, from the last block to the first, the block's forward is run again from its saved input,
 * keeping its intermediates, and its backward turns dL/d(output) into dL/d(input). Each block but
 * the last runs forward twice; the backward costs about two forwards (seven dX = dY @ W).
 */
#ifndef SW_PIPELINE_BACKWARD_H
#define SW_PIPELINE_BACKWARD_H

#include <stddef.h>

#include "../kernels/ops.h"
#include "model.h"

/*
 * Bytes of the one workspace sw_span_backward allocates for B sequences of T tokens, with
 * M = B T, nb blocks, QD = NH HD, KD = NKV HD, in fp32:
 *   M H nb            the input of every block
 *   M (4 H + 3 QD + 6 KD + 4 I)
 *                     one block's recomputed activations and their gradients
 *   + attention scratch and positions (about 3 M + 32 T per thread).
 * For example Llama-2-7B (H 4096, I 11008, MHA), M = 2048 tokens, 4 blocks: 128 MiB of block
 * inputs + 760 MiB for one block = 888 MiB (per-block intermediates dominate: 4 M I for the MLP).
 * SW_ELIMIT when a size overflows.
 */
int sw_span_backward_bytes(const sw_span_t *s, int B, int T, size_t *out);

/*
 * grad_in (B, T, H) = dL/dx_in, given x_in (B, T, H), the span's input, and grad_out (B, T, H) =
 * dL/d(span output). ops picks the forward kernels (sw_ops_ref or sw_ops_cpu) and, through
 * sw_bwd_ops_for(), the backward ones. The RoPE frequencies are those of a forward of T positions
 * from a fresh cache (dynamic RoPE: seq_len T). Any of the three arrays may alias another: both
 * inputs are copied before grad_in is written. Allocates the workspace of sw_span_backward_bytes
 * once per call and frees it before returning. Errors: -EINVAL (B or T < 1), SW_ELIMIT,
 * -ENOMEM, SW_EUNSUPPORTED for a span on a GPU (the backward runs on the CPU only, for now).
 */
int sw_span_backward(const sw_span_t *s, const sw_ops_t *ops, const float *x_in,
                     const float *grad_out, float *grad_in, int B, int T);

#endif
