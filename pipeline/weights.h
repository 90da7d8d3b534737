/*
 * weights.h - loading and saving the Linear weights of transformer blocks: dense as stored,
 * quantized on load (NF4, LLM.int8()), or pre-quantized checkpoints in the transformers +
 * bitsandbytes layout (ours or bitsandbytes'), and writing that layout back.
 *
 * bitsandbytes layout for a Linear `<p>` (../shared/reference/bnb.md §1.7, §2.4):
 *   NF4:  <p>.weight U8 [(N*K+1)/2, 1], <p>.weight.absmax (U8 nested | F32), <p>.weight.quant_map
 *         F32[16], nested: <p>.weight.nested_absmax F32, <p>.weight.nested_quant_map F32[256],
 *         <p>.weight.quant_state.bitsandbytes__nf4 U8 = JSON {quant_type, blocksize, dtype, shape,
 *         nested_blocksize, nested_dtype, nested_offset}.
 *   Int8: <p>.weight I8 [N, K], <p>.SCB F32 [N], <p>.weight_format U8 [] = 0 (row-major).
 * Everything read from a checkpoint is checked (dtypes, shapes, JSON, the code tables) before use.
 */
#ifndef SW_PIPELINE_WEIGHTS_H
#define SW_PIPELINE_WEIGHTS_H

#include "../kernels/quant.h"
#include "safetensors.h"

typedef enum {
    SW_QUANT_AUTO = 0, /* as the checkpoint stores it */
    SW_QUANT_NONE,     /* 16/32-bit as stored; refused for pre-quantized checkpoints */
    SW_QUANT_NF4,
    SW_QUANT_INT8,
} sw_quant_t;

/* "auto", "none", "nf4", "int8" -> *out; SW_EUSAGE otherwise. */
int sw_quant_parse(const char *s, sw_quant_t *out);
const char *sw_quant_name(sw_quant_t q);

typedef struct {
    sw_quant_t quant;
    float int8_threshold; /* LLM.int8() activation outlier threshold; 6.0 by default */
    /* Called after each block is loaded (done of total), e.g. for a progress line. */
    void (*progress)(void *ctx, int block, int done, int total);
    void *progress_ctx;
} sw_load_opts_t;

#define SW_LOAD_OPTS_DEFAULT { SW_QUANT_AUTO, 6.0f, NULL, NULL }
#define SW_NF4_BLOCKSIZE 64

/*
 * Loads Linear `prefix` (e.g. "model.layers.3.mlp.up_proj") of shape (N, K) into *out as opts
 * say. `dir` names the checkpoint in error details. Free with sw_qtensor_free (dense views and
 * owned copies alike).
 */
int sw_weight_load(sw_st_dir_t *ck, const char *dir, const char *prefix, int64_t N, int64_t K,
                   const sw_load_opts_t *opts, sw_tensor_t *out);

/* The format a checkpoint stores Linear `prefix` in: SW_QUANT_NONE (dense), _NF4 or _INT8. */
int sw_weight_stored_format(sw_st_dir_t *ck, const char *prefix, sw_quant_t *out);

/*
 * Adds Linear `prefix` to w in the layout above (quantized) or as a dense tensor. `orig` is the
 * dtype the weight had before quantization (written into the NF4 quant_state). The tensor data
 * is borrowed until sw_st_writer_save; small state tensors are copied.
 */
int sw_weight_save(sw_st_writer_t *w, const char *prefix, const sw_tensor_t *t, sw_dtype_t orig);

#endif
