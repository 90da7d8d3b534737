/*
 * model_internal.h - the insides of a span, shared by model.c (loading, forward) and backward.c
 * (the backward pass); nothing outside pipeline/ includes this.
 */
#ifndef SW_PIPELINE_MODEL_INTERNAL_H
#define SW_PIPELINE_MODEL_INTERNAL_H

#include "model.h"

/* One transformer block's weights. */
typedef struct {
    sw_tensor_t wq, wk, wv, wo;     /* (NH*HD, H) (NKV*HD, H) (NKV*HD, H) (H, NH*HD) */
    sw_tensor_t wg, wu, wd;         /* (I, H) (I, H) (H, I) */
    float *bq, *bk, *bv, *bo;       /* biases or NULL */
    float *bg, *bu, *bd;
    float *attn_norm, *mlp_norm;    /* (H) */
} block_t;

struct sw_span {
    const sw_model_config_t *cfg;
    int a, b;
    block_t *blocks;     /* b - a; on a GPU every pointer in them is device memory */
    sw_cuda_ctx_t *cuda; /* NULL: CPU */
    void *dmem;          /* the device allocation holding every weight of the span */
    sw_qstate_t *dqs;    /* (b - a) * SW_BLOCK_LINEARS host states of device NF4 weights */
};

#endif
