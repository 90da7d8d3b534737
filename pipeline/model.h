/*
 * model.h - Llama-family model execution on top of the op table.
 *
 * The unit of work is a span: transformer blocks [a, b) that take hidden states in and give
 * hidden states out, with their own KV cache. A whole-model run composes the client-side parts
 * (embeddings, final norm, LM head: sw_head_t) with one or more spans.
 *
 * Weights stay in the dtype they are stored in (f32, f16, bf16) and are read straight from the
 * checkpoint's mapping when aligned; norms and biases are converted to fp32 once at load.
 * Every tensor's dtype and shape is checked against the config before use.
 *
 * Threads: a span and its KV caches are driven by one thread at a time (the device executor);
 * the ops parallelise internally.
 *
 * Devices: a span or head is loaded on the CPU and may then be moved to a GPU once
 * (sw_span_to_cuda, sw_head_to_cuda): its weights are copied into one device allocation and the
 * host copies are dropped; a KV cache made for such a span keeps its cache and activations in
 * device memory (one allocation each, sized at creation), and the forward functions run on the
 * GPU through kernels/cuda/backend.h. Their arguments stay host memory: hidden states, ids and
 * logits are copied in and out at the span/head boundary, and the `ops` argument is unused.
 */
#ifndef SW_PIPELINE_MODEL_H
#define SW_PIPELINE_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "../kernels/cuda/backend.h"
#include "../kernels/ops.h"
#include "config.h"
#include "safetensors.h"
#include "weights.h"

/* ---- the checkpoint ---- */

typedef struct sw_model sw_model_t;

/* Reads <dir>/config.json and opens the checkpoint (shards map lazily). Caller frees. */
int sw_model_open(const char *dir, sw_model_t **out);
void sw_model_close(sw_model_t *m);
const sw_model_config_t *sw_model_config(const sw_model_t *m);
sw_st_dir_t *sw_model_checkpoint(sw_model_t *m);
const char *sw_model_dir(const sw_model_t *m);

/*
 * Writes a copy of the checkpoint in src to the directory dst (created if needed) with every
 * block Linear quantized as opts->quant says (NF4 with double quantization, or Int8), in the
 * transformers + bitsandbytes layout (weights.h); embeddings, norms, biases and the LM head are
 * copied as stored, config.json gains a quantization_config, and side files (tokenizer, ...) are
 * copied. opts->progress is called after each block. Loading the result gives bit-identical
 * weights to quantizing on load.
 */
int sw_model_quantize(const char *src, const char *dst, const sw_load_opts_t *opts);

/* ---- a span of blocks ---- */

#define SW_BLOCK_LINEARS 7
/* A block's Linear layers ("self_attn.q_proj", ..., "mlp.down_proj") in load order. */
extern const char *const sw_block_linear_names[SW_BLOCK_LINEARS];
/* Their (N, K) shapes under config c, in the same order. */
void sw_block_linear_shapes(const sw_model_config_t *c, int64_t shapes[SW_BLOCK_LINEARS][2]);

typedef struct sw_span sw_span_t;

/*
 * Loads and checks blocks [a, b); 0 <= a < b <= L. opts (NULL: defaults) picks the weight format
 * (quantize on load, or as stored) and a progress callback. The span borrows m: close m after it.
 */
int sw_span_load(sw_model_t *m, int a, int b, const sw_load_opts_t *opts, sw_span_t **out);
void sw_span_free(sw_span_t *s);
/*
 * Moves the span's weights to the GPU of ctx (one device allocation; F32/F16/BF16 and NF4
 * weights) and frees their host copies. Call before sw_kv_create. The span borrows ctx: free the
 * span (and its caches) before the context. On failure the span is unchanged (still on the CPU).
 */
int sw_span_to_cuda(sw_span_t *s, sw_cuda_ctx_t *ctx);
/* The context a span runs on, or NULL for the CPU. */
sw_cuda_ctx_t *sw_span_cuda(const sw_span_t *s);
int sw_span_start(const sw_span_t *s);
int sw_span_end(const sw_span_t *s);
/* Bytes of weights one block reads per token (matrices with their quantization state, norms,
 * biases). */
size_t sw_span_block_bytes(const sw_span_t *s, int block);
/* Bytes of Linear k (sw_block_linear_names order) of a block, quantization state included. */
size_t sw_span_linear_bytes(const sw_span_t *s, int block, int k);

/*
 * BLAKE2b-256 digest of one block's weights as loaded (before sw_span_to_cuda; a span on a GPU
 * is SW_EUNSUPPORTED), so that the same checkpoint loaded with the same --quant gives the same
 * digest on every machine, and a pre-quantized checkpoint the digest of quantizing on load.
 * Hashed in this order, integers as little-endian u64, float data as stored (IEEE, little-endian
 * hosts): the tag "swarmd-block-v1\0"; then for each Linear in sw_block_linear_names order: its
 * name with NUL, dtype name with NUL (sw_dtype_name), ndim, shape, data byte count, data bytes;
 * then its quantization state - NF4: blocksize, nblocks, and either 0 + absmax (f32 x nblocks)
 * or 1 + qabsmax (u8 x nblocks) + nested_blocksize + nested_absmax (f32) + offset (f32); Int8:
 * SCB (f32 x N) and the outlier threshold (f32); dense: nothing; then each vector present in
 * this order: input_layernorm, post_attention_layernorm, q/k/v/o/gate/up/down biases, as name
 * with NUL, element count, f32 bytes. Cost: one pass over the block's bytes.
 */
int sw_span_block_digest(const sw_span_t *s, int block, uint8_t out[32]);
/* The dtype the span's Linear weights are held in (SW_DTYPE_NF4, _I8, _BF16, _F16 or _F32). */
sw_dtype_t sw_span_weight_dtype(const sw_span_t *s);

/*
 * KV cache and scratch for B sequences of up to max_len positions through span s. All buffers
 * are allocated here, once, so sw_span_forward allocates nothing. For a span on a GPU the cache
 * and the activations are device memory (one allocation each), and the context's matmul
 * workspace is reserved here too; not enough device memory is SW_EDEVICE, nothing crashes.
 */
typedef struct sw_kv sw_kv_t;

int sw_kv_create(const sw_span_t *s, int B, int max_len, sw_kv_t **out);
void sw_kv_free(sw_kv_t *kv);
/* Positions already in the cache (same for every sequence of the batch). */
int sw_kv_len(const sw_kv_t *kv);
void sw_kv_reset(sw_kv_t *kv);
/* Rolls the cache back to its first len positions (0 <= len <= sw_kv_len, else -EINVAL); the next
 * forward overwrites the later ones. The dynamic-RoPE length state is kept, as in a transformers
 * session whose cache is cropped. */
int sw_kv_truncate(sw_kv_t *kv, int len);

/*
 * Runs T new tokens of B sequences through the span: x (B, T, H) in, hidden states out, in place.
 * Positions are sw_kv_len(kv) .. + T - 1; their keys and values are appended to the cache.
 * B must equal the batch the cache was created for; fails with SW_ELIMIT if the cache would
 * exceed max_len (nothing is changed then).
 */
int sw_span_forward(const sw_span_t *s, sw_kv_t *kv, const sw_ops_t *ops, float *x, int B, int T);
/* x stays host memory for a span on a GPU: it is copied in and out; ops may then be NULL. */

/*
 * Continuous batching: the steps of several caches (sessions) through one span as one pass, the
 * Linear layers as one matmul over all their rows, attention per cache. Each gets the bits that
 * sw_span_forward would give it alone where sw_span_batch_ok says so; tests/test-batch.c checks
 * that with memcmp. A workspace holds the stacked activations for up to max_rows rows (sized once:
 * rows x (3 H + 2 NH HD + 2 NKV HD + 2 I) floats), so a batched pass allocates nothing.
 */
typedef struct sw_fwd_batch sw_fwd_batch_t;

int sw_fwd_batch_create(const sw_model_config_t *c, int max_rows, sw_fwd_batch_t **out);
void sw_fwd_batch_free(sw_fwd_batch_t *w);
int sw_fwd_batch_rows(const sw_fwd_batch_t *w);

/*
 * 1 when steps of B x T rows each, with min_rows <= B x T and T <= max_T, may share one
 * sw_span_forward_batch pass of `total` rows through span s with ops and each still get the bits
 * of its own sw_span_forward: the span is on the CPU, max_T fits one pass of sw_span_forward
 * (64 tokens; longer steps run in chunks alone), and every Linear of every block is batch
 * invariant between min_rows..total rows and total (ops->matmul_batch_range). 0 otherwise, e.g.
 * LLM.int8() weights with an outlier threshold, or NF4 mixing 1..4-row and larger steps on AVX2.
 */
int sw_span_batch_ok(const sw_span_t *s, const sw_ops_t *ops, int min_rows, int max_T, int total);

/*
 * Runs Ts[i] new tokens of the kvs[i]->B sequences in xs[i] ((B, T, H), in place) through span s
 * for i < n, as sw_span_forward does for each: positions continue each cache, keys and values are
 * appended to it. The caches must be distinct, all made for s; the rows (sum of B x T) must fit
 * the workspace. Checks everything first: on failure nothing has changed. A span on a GPU runs
 * the steps one after the other.
 */
int sw_span_forward_batch(const sw_span_t *s, sw_kv_t *const *kvs, const sw_ops_t *ops,
                          float *const *xs, const int *Ts, int n, sw_fwd_batch_t *w);

/* ---- client-side parts: embeddings, final norm, LM head ---- */

typedef struct sw_head sw_head_t;

int sw_head_load(sw_model_t *m, sw_head_t **out);
void sw_head_free(sw_head_t *h);
/*
 * Moves the embeddings, final norm and LM head to the GPU of ctx (one device allocation) and
 * makes device buffers for up to max_rows rows of ids, hidden states and logits (one more);
 * sw_head_embed/sw_head_logits then run there with more than max_rows rows refused (SW_ELIMIT).
 * Borrows ctx as sw_span_to_cuda does. On failure the head is unchanged.
 */
int sw_head_to_cuda(sw_head_t *h, sw_cuda_ctx_t *ctx, int max_rows);
/* Bytes the final norm and the LM head read per token. */
size_t sw_head_lm_bytes(const sw_head_t *h);
/* x (M, H) = embeddings of ids (M); fails with -EINVAL naming the id if one is >= V or < 0. */
int sw_head_embed(const sw_head_t *h, const sw_ops_t *ops, const int32_t *ids, int M, float *x);
/* logits (M, V) = lm_head(norm(x)); x (M, H) is overwritten with the normed states. Fails only
 * on a GPU (device errors, or M above max_rows). */
int sw_head_logits(const sw_head_t *h, const sw_ops_t *ops, float *x, int M, float *logits);

#endif
