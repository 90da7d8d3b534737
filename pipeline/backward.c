/*
 * backward.c - sw_span_backward (see backward.h): block-wise recompute, then the chain rule back
 * through each block with the op tables of kernels/ops.h (forward) and kernels/backward.h.
 *
 * Block math (model.c) and its backward, dy = dL/dy given, weights frozen:
 *   n1 = rmsnorm(x)            q = rope(n1 Wq^T + bq)  k = rope(n1 Wk^T + bk)  v = n1 Wv^T + bv
 *   a = attn(q, k, v)          h = x + a Wo^T + bo
 *   n2 = rmsnorm(h)            g = n2 Wg^T + bg        u = n2 Wu^T + bu        s = silu(g) u
 *   y = h + s Wd^T + bd
 * backward:
 *   ds = dy Wd                 dg, du = swiglu'(ds)    dh = dy + rmsnorm'(dg Wg + du Wu; h)
 *   da = dh Wo                 dq, dk, dv = attn'(da)  (dq, dk through the inverse rotation)
 *   dx = dh + rmsnorm'(dq Wq + dk Wk + dv Wv; x)
 * Biases shift activations that are recomputed here, so they enter through the forward only.
 *
 * Runs on the calling thread (the device executor); the ops parallelise internally.
 */
#include "backward.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "../kernels/backward.h"
#include "../util/alloc.h"
#include "../util/error.h"
#include "model_internal.h"

/* The workspace, carved out of one allocation (see sw_span_backward_bytes). */
typedef struct {
    const sw_model_config_t *c;
    const sw_ops_t *ops;
    const sw_bwd_ops_t *bops;
    int B, T, M;
    float *xs;           /* (nb, M, H) input of each block */
    float *h, *xn, *tmp; /* (M, H); tmp also holds dL/d(normed) in the backward */
    float *dh;           /* (M, H) gradient flowing back */
    float *q, *da, *dq;  /* (M, QD); da holds the attention output in the forward */
    float *kt, *vt;      /* (B, T, NKV, HD); dk, dv in that layout in the backward */
    float *kc, *vc;      /* (B, NKV, T, HD) */
    float *dkc, *dvc;    /* (B, NKV, T, HD) */
    float *g, *u;        /* (M, I) */
    float *d1, *d2;      /* (M, I): swiglu output in the forward; dgate, dup in the backward */
    float *scratch;      /* attention, forward and backward */
    float *inv_freq;     /* HD / 2 */
    int32_t *pos;        /* M */
    float attn_factor;
} bw_t;

/* Rounds a count of floats up to a 64-byte multiple. */
static size_t pad16(size_t n)
{
    return (n + 15) & ~(size_t)15;
}

/* Float counts of the workspace parts, in carve order; returns the number of parts, or -1 if a
 * size overflows. */
static int ws_parts(const sw_span_t *s, int B, int T, size_t part[24])
{
    const sw_model_config_t *c = s->cfg;
    size_t M = (size_t)B * (size_t)T, H = (size_t)c->hidden_size, I = (size_t)c->intermediate_size;
    size_t QD = (size_t)c->num_heads * c->head_dim, KD = (size_t)c->num_kv_heads * c->head_dim;
    size_t nb = (size_t)(s->b - s->a), as = sw_attention_scratch_floats(T);
    size_t bs = sw_attention_bwd_scratch_floats(T);
    int n = 0;

    /* every factor is bounded by the config limits (config.h); only M * (sum) can be large */
    if (M > (size_t)1 << 32)
        return -1;
    part[n++] = M * H * nb;                                   /* xs */
    for (int i = 0; i < 4; i++) part[n++] = M * H;            /* h, xn, tmp, dh */
    for (int i = 0; i < 3; i++) part[n++] = M * QD;           /* q, da, dq */
    for (int i = 0; i < 6; i++) part[n++] = M * KD;           /* kt, vt, kc, vc, dkc, dvc */
    for (int i = 0; i < 4; i++) part[n++] = M * I;            /* g, u, d1, d2 */
    part[n++] = as > bs ? as : bs;                            /* scratch */
    part[n++] = (size_t)c->head_dim / 2;                      /* inv_freq */
    part[n++] = M;                                            /* pos (int32) */
    return n;
}

int sw_span_backward_bytes(const sw_span_t *s, int B, int T, size_t *out)
{
    size_t part[24], total = 0;
    int n;

    if (B < 1 || T < 1)
        return sw_err(-EINVAL, "backward of %d x %d tokens: both must be >= 1", B, T);
    n = ws_parts(s, B, T, part);
    if (n < 0)
        return sw_err(SW_ELIMIT, "backward of %d x %d tokens is too large", B, T);
    for (int i = 0; i < n; i++) {
        if (part[i] > SIZE_MAX / 8 || pad16(part[i]) > SIZE_MAX / 8 - total)
            return sw_err(SW_ELIMIT, "backward of %d x %d tokens is too large", B, T);
        total += pad16(part[i]);
    }
    *out = total * sizeof(float);
    return 0;
}

/* (B, T, NKV, HD) <-> (B, NKV, T, HD); to_heads != 0 goes right. */
static void kv_layout(float *dst, const float *src, int B, int T, int NKV, int HD, int to_heads)
{
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int g = 0; g < NKV; g++) {
                size_t r = (((size_t)b * T + t) * NKV + g) * HD;
                size_t h = (((size_t)b * NKV + g) * T + t) * HD;
                memcpy(dst + (to_heads ? h : r), src + (to_heads ? r : h),
                       (size_t)HD * sizeof(float));
            }
}

/*
 * The forward of block li from its input x: keeps n2's input h, the rotated q and the cached
 * layout of k and v, g and u; the attention output in w->da and silu(g) u in w->d1. With y, also
 * writes the block's output there (y may equal x only when nothing reads x afterwards).
 */
static void block_recompute(bw_t *w, const block_t *bl, int layer, const float *x, float *y)
{
    const sw_model_config_t *c = w->c;
    const sw_ops_t *ops = w->ops;
    int M = w->M, H = c->hidden_size, NH = c->num_heads, NKV = c->num_kv_heads;
    int HD = c->head_dim, I = c->intermediate_size;

    ops->rmsnorm(w->xn, x, bl->attn_norm, M, H, c->rms_norm_eps);
    ops->matmul(w->q, w->xn, &bl->wq, bl->bq, M);
    ops->matmul(w->kt, w->xn, &bl->wk, bl->bk, M);
    ops->matmul(w->vt, w->xn, &bl->wv, bl->bv, M);
    ops->rope(w->q, w->pos, M, NH, HD, w->inv_freq, w->attn_factor);
    ops->rope(w->kt, w->pos, M, NKV, HD, w->inv_freq, w->attn_factor);
    kv_layout(w->kc, w->kt, w->B, w->T, NKV, HD, 1);
    kv_layout(w->vc, w->vt, w->B, w->T, NKV, HD, 1);
    ops->attention(w->da, w->q, w->kc, w->vc, w->B, w->T, 0, w->T, NH, NKV, HD,
                   sw_model_layer_window(c, layer), 1.0f / sqrtf((float)HD), w->scratch);
    ops->matmul(w->tmp, w->da, &bl->wo, bl->bo, M);
    memcpy(w->h, x, (size_t)M * H * sizeof(float));
    ops->add(w->h, w->tmp, (size_t)M * H);
    ops->rmsnorm(w->xn, w->h, bl->mlp_norm, M, H, c->rms_norm_eps);
    ops->matmul(w->g, w->xn, &bl->wg, bl->bg, M);
    ops->matmul(w->u, w->xn, &bl->wu, bl->bu, M);
    ops->swiglu(w->d1, w->g, w->u, (size_t)M * I);
    if (y) {
        ops->matmul(w->tmp, w->d1, &bl->wd, bl->bd, M);
        memcpy(y, w->h, (size_t)M * H * sizeof(float));
        ops->add(y, w->tmp, (size_t)M * H);
    }
}

/* w->dh := dL/dx of block li, from w->dh = dL/dy and the activations block_recompute kept. */
static void block_backward(bw_t *w, const block_t *bl, int layer, const float *x)
{
    const sw_model_config_t *c = w->c;
    const sw_ops_t *ops = w->ops;
    const sw_bwd_ops_t *bo = w->bops;
    int M = w->M, H = c->hidden_size, NH = c->num_heads, NKV = c->num_kv_heads;
    int HD = c->head_dim, I = c->intermediate_size;

    /* MLP: y = h + down(silu(g) u) */
    bo->matmul_dx(w->d1, w->dh, &bl->wd, M, 0);
    bo->swiglu(w->d1, w->d2, w->d1, w->g, w->u, (size_t)M * I);
    bo->matmul_dx(w->tmp, w->d1, &bl->wg, M, 0);
    bo->matmul_dx(w->tmp, w->d2, &bl->wu, M, 1);
    bo->rmsnorm(w->tmp, w->tmp, w->h, bl->mlp_norm, M, H, c->rms_norm_eps);
    ops->add(w->dh, w->tmp, (size_t)M * H);
    /* attention: h = x + o_proj(attn(rope(q), rope(k), v)) */
    bo->matmul_dx(w->da, w->dh, &bl->wo, M, 0);
    bo->attention(w->dq, w->dkc, w->dvc, w->da, w->q, w->kc, w->vc, w->B, w->T, NH, NKV, HD,
                  sw_model_layer_window(c, layer), 1.0f / sqrtf((float)HD), w->scratch);
    kv_layout(w->kt, w->dkc, w->B, w->T, NKV, HD, 0);
    kv_layout(w->vt, w->dvc, w->B, w->T, NKV, HD, 0);
    bo->rope(w->dq, w->pos, M, NH, HD, w->inv_freq, w->attn_factor);
    bo->rope(w->kt, w->pos, M, NKV, HD, w->inv_freq, w->attn_factor);
    bo->matmul_dx(w->tmp, w->dq, &bl->wq, M, 0);
    bo->matmul_dx(w->tmp, w->kt, &bl->wk, M, 1);
    bo->matmul_dx(w->tmp, w->vt, &bl->wv, M, 1);
    bo->rmsnorm(w->tmp, w->tmp, x, bl->attn_norm, M, H, c->rms_norm_eps);
    ops->add(w->dh, w->tmp, (size_t)M * H);
}

int sw_span_backward(const sw_span_t *s, const sw_ops_t *ops, const float *x_in,
                     const float *grad_out, float *grad_in, int B, int T)
{
    const sw_model_config_t *c = s->cfg;
    size_t part[24], bytes, off = 0, MH;
    float *mem, **dst[24];
    bw_t w;
    int nb = s->b - s->a, n, r, k = 0;
    int64_t cached = 0;

    if (s->cuda)
        return sw_err(SW_EUNSUPPORTED, "backward of blocks [%d, %d): spans on a GPU have no "
                      "backward yet; serve them with --device cpu", s->a, s->b);
    if ((r = sw_span_backward_bytes(s, B, T, &bytes)) < 0)
        return r;
    mem = sw_alloc_aligned(64, bytes);
    if (!mem)
        return sw_err(-ENOMEM, "not enough memory for the backward of %d x %d tokens through "
                      "blocks [%d, %d) (%.1f MiB); send fewer tokens per call", B, T, s->a, s->b,
                      (double)bytes / (1 << 20));
    memset(&w, 0, sizeof(w));
    w.c = c;
    w.ops = ops;
    w.bops = sw_bwd_ops_for(ops);
    w.B = B;
    w.T = T;
    w.M = B * T;
    MH = (size_t)w.M * c->hidden_size;
    dst[k++] = &w.xs;
    dst[k++] = &w.h; dst[k++] = &w.xn; dst[k++] = &w.tmp; dst[k++] = &w.dh;
    dst[k++] = &w.q; dst[k++] = &w.da; dst[k++] = &w.dq;
    dst[k++] = &w.kt; dst[k++] = &w.vt; dst[k++] = &w.kc; dst[k++] = &w.vc;
    dst[k++] = &w.dkc; dst[k++] = &w.dvc;
    dst[k++] = &w.g; dst[k++] = &w.u; dst[k++] = &w.d1; dst[k++] = &w.d2;
    dst[k++] = &w.scratch; dst[k++] = &w.inv_freq; dst[k++] = (float **)&w.pos;
    n = ws_parts(s, B, T, part);
    for (int i = 0; i < n && i < k; i++) {
        *dst[i] = mem + off;
        off += pad16(part[i]);
    }
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            w.pos[(size_t)b * T + t] = t;
    /* as a forward of T positions from a fresh cache computes them */
    sw_rope_inv_freq(c, sw_rope_dynamic_len(c, &cached, T), w.inv_freq, &w.attn_factor);

    memcpy(w.xs, x_in, MH * sizeof(float));
    memcpy(w.dh, grad_out, MH * sizeof(float));
    for (int i = 0; i + 1 < nb; i++)
        block_recompute(&w, &s->blocks[i], s->a + i, w.xs + (size_t)i * MH,
                        w.xs + (size_t)(i + 1) * MH);
    for (int i = nb - 1; i >= 0; i--) {
        block_recompute(&w, &s->blocks[i], s->a + i, w.xs + (size_t)i * MH, NULL);
        block_backward(&w, &s->blocks[i], s->a + i, w.xs + (size_t)i * MH);
    }
    memcpy(grad_in, w.dh, MH * sizeof(float));
    sw_free(mem);
    return 0;
}
