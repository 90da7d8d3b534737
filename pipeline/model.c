/*
 * model.c - Llama-family blocks, spans, KV caches and client-side parts; see model.h.
 *
 * Block math (transformers' LlamaDecoderLayer, Mistral and Qwen2 alike):
 *   h = x + o_proj(attn(rope(q_proj(n1)), rope(k_proj(n1)), v_proj(n1))),  n1 = rmsnorm(x)
 *   y = h + down_proj(silu(gate_proj(n2)) * up_proj(n2)),                n2 = rmsnorm(h)
 */
#include "model.h"
#include "model_internal.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <sodium.h>

#include "../util/alloc.h"
#include "../util/error.h"
#include "../util/log.h"
#include "weights.h"

/* Tokens per sequence processed in one pass through a block; bounds the scratch buffers. */
#define SW_CHUNK 64

struct sw_model {
    char *dir;
    sw_model_config_t cfg;
    sw_st_dir_t *ckpt;
};

struct sw_kv {
    const sw_span_t *span;
    int B, max_len, len;
    int64_t rope_cached; /* transformers' dynamic-RoPE length state for this session */
    float *k, *v;        /* per block: (B, NKV, max_len, HD) */
    /* scratch for B * SW_CHUNK rows */
    float *h, *xn, *q, *kn, *vn, *att, *gate, *up, *tmp;
    float *attn_scratch; /* sw_attention_scratch_floats(max_len) (CPU only) */
    float *inv_freq;     /* HD/2, host */
    int32_t *pos;        /* B * SW_CHUNK, host */
    /* GPU span: k, v, h, xn, q, kn, vn, att, gate, up, tmp point into these device allocations */
    void *dkv, *dact;
    float *dinv_freq;    /* HD/2 */
    int32_t *dpos;       /* B * SW_CHUNK */
};

struct sw_head {
    const sw_model_config_t *cfg;
    sw_tensor_t embed;   /* (V, H) */
    sw_tensor_t lm_head; /* (V, H); a view of embed when tied */
    float *norm;         /* (H) */
    /* on a GPU: the three above are device memory inside dmem */
    sw_cuda_ctx_t *cuda;
    void *dmem, *dact;
    int max_rows;
    int32_t *dids;       /* (max_rows) */
    float *dx, *dlogits; /* (max_rows, H), (max_rows, V) */
};

/* ------------------------------------------------------------------------------------------ */
/* checkpoint access                                                                           */

int sw_model_open(const char *dir, sw_model_t **out)
{
    sw_model_t *m;
    int r;

    m = sw_calloc(1, sizeof(*m));
    if (!m)
        return -ENOMEM;
    m->dir = sw_strdup(dir);
    if (!m->dir) {
        r = -ENOMEM;
        goto err;
    }
    r = sw_model_config_load(dir, &m->cfg);
    if (r < 0)
        goto err;
    r = sw_st_dir_open(dir, &m->ckpt);
    if (r < 0)
        goto err;
    *out = m;
    return 0;
err:
    sw_model_close(m);
    return r;
}

void sw_model_close(sw_model_t *m)
{
    if (!m)
        return;
    sw_st_dir_close(m->ckpt);
    sw_free(m->dir);
    sw_free(m);
}

const sw_model_config_t *sw_model_config(const sw_model_t *m)
{
    return &m->cfg;
}

sw_st_dir_t *sw_model_checkpoint(sw_model_t *m)
{
    return m->ckpt;
}

const char *sw_model_dir(const sw_model_t *m)
{
    return m->dir;
}

static int find_tensor(sw_model_t *m, const char *name, int64_t d0, int64_t d1,
                       const sw_st_tensor_t **out)
{
    const sw_st_tensor_t *t;
    int r, ndim = d1 > 0 ? 2 : 1;

    r = sw_st_dir_find(m->ckpt, name, &t);
    if (r < 0)
        return r;
    if (t->dtype != SW_ST_F32 && t->dtype != SW_ST_F16 && t->dtype != SW_ST_BF16)
        return sw_err(SW_EUNSUPPORTED, "%s: tensor %s has dtype %s; only F32, F16 and BF16 "
                      "weights are supported (quantize with --quant after loading instead)",
                      m->dir, name, sw_st_dtype_name(t->dtype));
    if (t->ndim != ndim || t->shape[0] != d0 || (ndim == 2 && t->shape[1] != d1)) {
        char got[64];
        if (t->ndim == 1)
            snprintf(got, sizeof(got), "(%lld)", (long long)t->shape[0]);
        else if (t->ndim == 2)
            snprintf(got, sizeof(got), "(%lld, %lld)", (long long)t->shape[0],
                     (long long)t->shape[1]);
        else
            snprintf(got, sizeof(got), "%d dimensions", t->ndim);
        if (ndim == 2)
            return sw_err(SW_EFORMAT, "%s: tensor %s has shape %s but config.json implies "
                          "(%lld, %lld); the checkpoint does not match its config",
                          m->dir, name, got, (long long)d0, (long long)d1);
        return sw_err(SW_EFORMAT, "%s: tensor %s has shape %s but config.json implies (%lld); "
                      "the checkpoint does not match its config", m->dir, name, got,
                      (long long)d0);
    }
    *out = t;
    return 0;
}

/* A vector of n values converted to a new fp32 array (caller frees). */
static int load_vector(sw_model_t *m, const char *name, int64_t n, float **out)
{
    const sw_st_tensor_t *t = NULL;
    float *v;
    int r;

    r = find_tensor(m, name, n, 0, &t);
    if (r < 0)
        return r;
    v = sw_alloc_aligned(64, (size_t)n * sizeof(float));
    if (!v)
        return -ENOMEM;
    if (t->dtype == SW_ST_F32) {
        memcpy(v, t->data, (size_t)n * 4);
    } else {
        for (int64_t i = 0; i < n; i++) {
            uint16_t u;
            memcpy(&u, (const uint8_t *)t->data + 2 * i, 2);
            v[i] = t->dtype == SW_ST_F16 ? sw_f16_to_f32(u) : sw_bf16_to_f32(u);
        }
    }
    *out = v;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* spans                                                                                       */

const char *const sw_block_linear_names[SW_BLOCK_LINEARS] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
};

void sw_block_linear_shapes(const sw_model_config_t *c, int64_t shapes[SW_BLOCK_LINEARS][2])
{
    int64_t H = c->hidden_size, I = c->intermediate_size;
    int64_t QD = (int64_t)c->num_heads * c->head_dim, KD = (int64_t)c->num_kv_heads * c->head_dim;
    const int64_t s[SW_BLOCK_LINEARS][2] = { { QD, H }, { KD, H }, { KD, H }, { H, QD },
                                             { I, H }, { I, H }, { H, I } };

    memcpy(shapes, s, sizeof(s));
}

static void block_free(block_t *bl)
{
    sw_tensor_t *mats[] = { &bl->wq, &bl->wk, &bl->wv, &bl->wo, &bl->wg, &bl->wu, &bl->wd };
    float *vecs[] = { bl->bq, bl->bk, bl->bv, bl->bo, bl->bg, bl->bu, bl->bd,
                      bl->attn_norm, bl->mlp_norm };

    for (size_t i = 0; i < sizeof(mats) / sizeof(mats[0]); i++)
        sw_qtensor_free(mats[i]);
    for (size_t i = 0; i < sizeof(vecs) / sizeof(vecs[0]); i++)
        sw_free(vecs[i]);
}

static int block_load(sw_model_t *m, int layer, const sw_load_opts_t *o, block_t *bl)
{
    const sw_model_config_t *c = &m->cfg;
    int64_t H = c->hidden_size, I = c->intermediate_size;
    int64_t QD = (int64_t)c->num_heads * c->head_dim, KD = (int64_t)c->num_kv_heads * c->head_dim;
    char name[160];
    int r;

#define NAME(suffix) (snprintf(name, sizeof(name), "model.layers.%d.%s", layer, suffix), name)
    sw_tensor_t *mats[SW_BLOCK_LINEARS] = { &bl->wq, &bl->wk, &bl->wv, &bl->wo,
                                            &bl->wg, &bl->wu, &bl->wd };
    int64_t shapes[SW_BLOCK_LINEARS][2];

    sw_block_linear_shapes(c, shapes);
    for (int k = 0; k < SW_BLOCK_LINEARS; k++)
        if ((r = sw_weight_load(m->ckpt, m->dir, NAME(sw_block_linear_names[k]), shapes[k][0],
                                shapes[k][1], o, mats[k])) < 0)
            return r;
    if ((r = load_vector(m, NAME("input_layernorm.weight"), H, &bl->attn_norm)) < 0 ||
        (r = load_vector(m, NAME("post_attention_layernorm.weight"), H, &bl->mlp_norm)) < 0)
        return r;
    if (c->attention_bias &&
        ((r = load_vector(m, NAME("self_attn.q_proj.bias"), QD, &bl->bq)) < 0 ||
         (r = load_vector(m, NAME("self_attn.k_proj.bias"), KD, &bl->bk)) < 0 ||
         (r = load_vector(m, NAME("self_attn.v_proj.bias"), KD, &bl->bv)) < 0))
        return r;
    if (c->o_bias && (r = load_vector(m, NAME("self_attn.o_proj.bias"), H, &bl->bo)) < 0)
        return r;
    if (c->mlp_bias &&
        ((r = load_vector(m, NAME("mlp.gate_proj.bias"), I, &bl->bg)) < 0 ||
         (r = load_vector(m, NAME("mlp.up_proj.bias"), I, &bl->bu)) < 0 ||
         (r = load_vector(m, NAME("mlp.down_proj.bias"), H, &bl->bd)) < 0))
        return r;
#undef NAME
    return 0;
}

int sw_span_load(sw_model_t *m, int a, int b, const sw_load_opts_t *opts, sw_span_t **out)
{
    static const sw_load_opts_t defaults = SW_LOAD_OPTS_DEFAULT;
    const sw_model_config_t *c = &m->cfg;
    sw_span_t *s;
    int r = 0;

    if (a < 0 || b > c->num_layers || a >= b)
        return sw_err(-EINVAL, "block range [%d, %d) is not inside the model's %d blocks "
                      "(use 0 <= start < end <= %d)", a, b, c->num_layers, c->num_layers);
    s = sw_calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->cfg = c;
    s->a = a;
    s->b = b;
    s->blocks = sw_calloc((size_t)(b - a), sizeof(block_t));
    if (!s->blocks) {
        sw_free(s);
        return -ENOMEM;
    }
    if (!opts)
        opts = &defaults;
    for (int i = a; i < b; i++) {
        r = block_load(m, i, opts, &s->blocks[i - a]);
        if (r < 0) {
            s->b = i + 1; /* free what was (partly) loaded */
            sw_span_free(s);
            return r;
        }
        SW_LOG_D("model", "block %d loaded (%zu bytes)", i, sw_span_block_bytes(s, i));
        if (opts->progress)
            opts->progress(opts->progress_ctx, i, i - a + 1, b - a);
    }
    *out = s;
    return 0;
}

void sw_span_free(sw_span_t *s)
{
    if (!s)
        return;
    if (s->cuda) {
        sw_cuda_free(s->cuda, s->dmem);
        sw_free(s->dqs);
    } else {
        for (int i = 0; i < s->b - s->a; i++)
            block_free(&s->blocks[i]);
    }
    sw_free(s->blocks);
    sw_free(s);
}

/* ------------------------------------------------------------------------------------------ */
/* moving to a GPU (loading thread)                                                            */

static size_t align256(size_t n)
{
    return (n + 255) & ~(size_t)255;
}

/* The fp32 vectors of a block with their lengths, in a fixed order (NULL entries skipped). */
static int block_vectors(const sw_model_config_t *c, block_t *bl, float ***vp, int64_t *len)
{
    int64_t H = c->hidden_size, I = c->intermediate_size;
    int64_t QD = (int64_t)c->num_heads * c->head_dim, KD = (int64_t)c->num_kv_heads * c->head_dim;
    float **v[9] = { &bl->bq, &bl->bk, &bl->bv, &bl->bo, &bl->bg, &bl->bu, &bl->bd,
                     &bl->attn_norm, &bl->mlp_norm };
    const int64_t n[9] = { QD, KD, KD, H, I, I, H, H, H };

    memcpy(vp, v, sizeof(v));
    memcpy(len, n, sizeof(n));
    return 9;
}

int sw_span_to_cuda(sw_span_t *s, sw_cuda_ctx_t *ctx)
{
    int nb = s->b - s->a, r = 0;
    size_t total = 0, off = 0;
    block_t *dev = NULL;
    sw_qstate_t *dqs = NULL;
    uint8_t *mem = NULL;

    if (s->cuda)
        return sw_err(-EINVAL, "span is already on a GPU");
    for (int i = 0; i < nb; i++) {
        block_t *bl = &s->blocks[i];
        sw_tensor_t *mats[] = { &bl->wq, &bl->wk, &bl->wv, &bl->wo, &bl->wg, &bl->wu, &bl->wd };
        float **vp[9];
        int64_t len[9];
        for (int k = 0; k < SW_BLOCK_LINEARS; k++) {
            size_t n = sw_cuda_tensor_device_bytes(mats[k]);
            if (n == 0)
                return sw_err(SW_EUNSUPPORTED, "block %d %s: %s weights cannot run on the GPU "
                              "yet (use --quant nf4 or a 16/32-bit checkpoint, or --device cpu)",
                              s->a + i, sw_block_linear_names[k], sw_dtype_name(mats[k]->dtype));
            total += align256(n);
        }
        for (int j = 0, nv = block_vectors(s->cfg, bl, vp, len); j < nv; j++)
            if (*vp[j])
                total += align256((size_t)len[j] * sizeof(float));
    }
    dev = sw_calloc((size_t)nb, sizeof(*dev));
    dqs = sw_calloc((size_t)nb * SW_BLOCK_LINEARS, sizeof(*dqs));
    if (!dev || !dqs) {
        r = -ENOMEM;
        goto err;
    }
    if ((r = sw_cuda_alloc(ctx, total, (void **)&mem)) < 0) {
        r = sw_err(r, "not enough GPU memory for the weights of blocks [%d, %d) (%.1f MiB): %s",
                   s->a, s->b, (double)total / (1 << 20), sw_err_detail());
        goto err;
    }
    for (int i = 0; i < nb; i++) {
        block_t *bl = &s->blocks[i], *db = &dev[i];
        const sw_tensor_t *mats[] = { &bl->wq, &bl->wk, &bl->wv, &bl->wo, &bl->wg, &bl->wu,
                                      &bl->wd };
        sw_tensor_t *dmats[] = { &db->wq, &db->wk, &db->wv, &db->wo, &db->wg, &db->wu, &db->wd };
        float **vp[9], **dvp[9];
        int64_t len[9];
        for (int k = 0; k < SW_BLOCK_LINEARS; k++) {
            r = sw_cuda_tensor_upload_at(ctx, mats[k], mem + off,
                                         &dqs[(size_t)i * SW_BLOCK_LINEARS + k], dmats[k]);
            if (r < 0)
                goto err;
            off += align256(sw_cuda_tensor_device_bytes(mats[k]));
        }
        block_vectors(s->cfg, db, dvp, len);
        for (int j = 0, nv = block_vectors(s->cfg, bl, vp, len); j < nv; j++) {
            if (!*vp[j])
                continue;
            if ((r = sw_cuda_upload(ctx, mem + off, *vp[j], (size_t)len[j] * 4)) < 0)
                goto err;
            *dvp[j] = (float *)(mem + off);
            off += align256((size_t)len[j] * sizeof(float));
        }
    }
    for (int i = 0; i < nb; i++) {
        block_free(&s->blocks[i]);
        s->blocks[i] = dev[i];
    }
    sw_free(dev);
    s->cuda = ctx;
    s->dmem = mem;
    s->dqs = dqs;
    SW_LOG_I("model", "blocks [%d, %d) on the GPU: %.1f MiB of weights", s->a, s->b,
             (double)total / (1 << 20));
    return 0;
err:
    sw_cuda_free(ctx, mem);
    sw_free(dev);
    sw_free(dqs);
    return r;
}

sw_cuda_ctx_t *sw_span_cuda(const sw_span_t *s)
{
    return s->cuda;
}

int sw_span_start(const sw_span_t *s)
{
    return s->a;
}

int sw_span_end(const sw_span_t *s)
{
    return s->b;
}

size_t sw_span_linear_bytes(const sw_span_t *s, int block, int k)
{
    const block_t *bl = &s->blocks[block - s->a];
    const sw_tensor_t *mats[] = { &bl->wq, &bl->wk, &bl->wv, &bl->wo, &bl->wg, &bl->wu, &bl->wd };

    return sw_tensor_nbytes(mats[k]) + sw_qtensor_state_bytes(mats[k]);
}

size_t sw_span_block_bytes(const sw_span_t *s, int block)
{
    const block_t *bl = &s->blocks[block - s->a];
    const sw_model_config_t *c = s->cfg;
    size_t n = 0;

    for (int k = 0; k < SW_BLOCK_LINEARS; k++)
        n += sw_span_linear_bytes(s, block, k);
    n += 2 * (size_t)c->hidden_size * 4;
    if (bl->bq)
        n += (size_t)(c->num_heads + 2 * c->num_kv_heads) * c->head_dim * 4;
    if (bl->bo)
        n += (size_t)c->hidden_size * 4;
    if (bl->bg)
        n += (2 * (size_t)c->intermediate_size + c->hidden_size) * 4;
    return n;
}

static void digest_u64(crypto_generichash_state *st, uint64_t v)
{
    uint8_t b[8];

    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    crypto_generichash_update(st, b, sizeof(b));
}

static void digest_str(crypto_generichash_state *st, const char *s)
{
    crypto_generichash_update(st, (const unsigned char *)s, strlen(s) + 1);
}

static void digest_bytes(crypto_generichash_state *st, const void *p, size_t n)
{
    if (n)
        crypto_generichash_update(st, p, n);
}

int sw_span_block_digest(const sw_span_t *s, int block, uint8_t out[32])
{
    static const char *const vec_names[] = { "input_layernorm", "post_attention_layernorm",
                                             "q_proj.bias", "k_proj.bias", "v_proj.bias",
                                             "o_proj.bias", "gate_proj.bias", "up_proj.bias",
                                             "down_proj.bias" };
    const sw_model_config_t *c = s->cfg;
    const block_t *bl;
    const sw_tensor_t *mats[SW_BLOCK_LINEARS];
    int64_t H = c->hidden_size, I = c->intermediate_size;
    int64_t QD = (int64_t)c->num_heads * c->head_dim, KD = (int64_t)c->num_kv_heads * c->head_dim;
    crypto_generichash_state st;

    if (block < s->a || block >= s->b)
        return sw_err(-EINVAL, "block %d is not in the span %d:%d", block, s->a, s->b);
    if (s->cuda)
        return sw_err(SW_EUNSUPPORTED, "the digest of a span on the GPU: take it before "
                      "sw_span_to_cuda");
    bl = &s->blocks[block - s->a];
    {
        const float *vecs[] = { bl->attn_norm, bl->mlp_norm, bl->bq, bl->bk, bl->bv, bl->bo,
                                bl->bg, bl->bu, bl->bd };
        const int64_t lens[] = { H, H, QD, KD, KD, H, I, I, H };
        mats[0] = &bl->wq, mats[1] = &bl->wk, mats[2] = &bl->wv, mats[3] = &bl->wo;
        mats[4] = &bl->wg, mats[5] = &bl->wu, mats[6] = &bl->wd;
        crypto_generichash_init(&st, NULL, 0, 32);
        digest_bytes(&st, "swarmd-block-v1", 16);
        for (int k = 0; k < SW_BLOCK_LINEARS; k++) {
            const sw_tensor_t *t = mats[k];
            const sw_qstate_t *qs = t->qs;
            size_t nb = sw_tensor_nbytes(t);
            digest_str(&st, sw_block_linear_names[k]);
            digest_str(&st, sw_dtype_name(t->dtype));
            digest_u64(&st, (uint64_t)t->ndim);
            for (int d = 0; d < t->ndim; d++)
                digest_u64(&st, (uint64_t)t->shape[d]);
            digest_u64(&st, nb);
            digest_bytes(&st, t->data, nb);
            if (t->dtype == SW_DTYPE_NF4 && qs) {
                digest_u64(&st, (uint64_t)qs->blocksize);
                digest_u64(&st, (uint64_t)qs->nblocks);
                if (qs->qabsmax) {
                    int64_t nn = (qs->nblocks + qs->nested_blocksize - 1) / qs->nested_blocksize;
                    digest_u64(&st, 1);
                    digest_bytes(&st, qs->qabsmax, (size_t)qs->nblocks);
                    digest_u64(&st, (uint64_t)qs->nested_blocksize);
                    digest_bytes(&st, qs->nested_absmax, (size_t)nn * sizeof(float));
                    digest_bytes(&st, &qs->offset, sizeof(float));
                } else {
                    digest_u64(&st, 0);
                    digest_bytes(&st, qs->absmax, (size_t)qs->nblocks * sizeof(float));
                }
            } else if (t->dtype == SW_DTYPE_I8 && qs) {
                digest_bytes(&st, qs->scb, (size_t)t->shape[0] * sizeof(float));
                digest_bytes(&st, &qs->threshold, sizeof(float));
            }
        }
        for (size_t v = 0; v < sizeof(vecs) / sizeof(vecs[0]); v++) {
            if (!vecs[v])
                continue;
            digest_str(&st, vec_names[v]);
            digest_u64(&st, (uint64_t)lens[v]);
            digest_bytes(&st, vecs[v], (size_t)lens[v] * sizeof(float));
        }
    }
    crypto_generichash_final(&st, out, 32);
    return 0;
}

sw_dtype_t sw_span_weight_dtype(const sw_span_t *s)
{
    return s->blocks[0].wq.dtype;
}

/* ------------------------------------------------------------------------------------------ */
/* KV caches                                                                                   */

/*
 * The device side of sw_kv_create: the cache (k then v) in one allocation, the activations of
 * B * SW_CHUNK rows (and positions, frequencies) in another, the matmul workspace reserved for
 * the span's largest linear in either mode; host pos and inv_freq as on the CPU.
 */
static int kv_create_cuda(sw_kv_t *kv, size_t rows, size_t cache)
{
    const sw_span_t *s = kv->span;
    const sw_model_config_t *c = s->cfg;
    size_t QD = (size_t)c->num_heads * c->head_dim, KD = (size_t)c->num_kv_heads * c->head_dim;
    size_t H = (size_t)c->hidden_size, I = (size_t)c->intermediate_size, ws = 0, off = 0;
    const size_t n[] = { rows * H, rows * H, rows * QD, rows * KD, rows * KD, rows * QD,
                         rows * I, rows * I, rows * H, (size_t)c->head_dim / 2, rows };
    float **p[] = { &kv->h, &kv->xn, &kv->q, &kv->kn, &kv->vn, &kv->att, &kv->gate, &kv->up,
                    &kv->tmp, &kv->dinv_freq, (float **)&kv->dpos };
    size_t act = 0;
    int r;

    kv->inv_freq = sw_alloc_aligned(64, (size_t)c->head_dim / 2 * sizeof(float));
    kv->pos = sw_alloc_aligned(64, rows * sizeof(int32_t));
    if (!kv->inv_freq || !kv->pos)
        return -ENOMEM;
    for (size_t i = 0; i < sizeof(n) / sizeof(n[0]); i++)
        act += align256(n[i] * 4);
    if ((r = sw_cuda_alloc(s->cuda, 2 * cache * sizeof(float), &kv->dkv)) < 0 ||
        (r = sw_cuda_alloc(s->cuda, act, &kv->dact)) < 0)
        return sw_err(r, "not enough GPU memory for a KV cache of batch %d x %d positions over "
                      "%d blocks (%.1f MiB) and its activations (%.1f MiB); lower the batch or "
                      "the context length: %s", kv->B, kv->max_len, s->b - s->a,
                      2.0 * (double)cache * 4 / (1 << 20), (double)act / (1 << 20),
                      sw_err_detail());
    kv->k = kv->dkv;
    kv->v = kv->k + cache;
    for (size_t i = 0; i < sizeof(n) / sizeof(n[0]); i++) {
        *p[i] = (float *)((uint8_t *)kv->dact + off);
        off += align256(n[i] * 4);
    }
    for (int i = 0; i < s->b - s->a; i++) {
        const block_t *bl = &s->blocks[i];
        const sw_tensor_t *mats[] = { &bl->wq, &bl->wk, &bl->wv, &bl->wo, &bl->wg, &bl->wu,
                                      &bl->wd };
        for (int k = 0; k < SW_BLOCK_LINEARS; k++)
            for (int mode = 0; mode < 2; mode++) {
                size_t b = sw_cuda_matmul_workspace_bytes((sw_cuda_matmul_mode_t)mode,
                                                          mats[k]->dtype, (int)rows,
                                                          mats[k]->shape[0], mats[k]->shape[1]);
                ws = b > ws ? b : ws;
            }
    }
    return sw_cuda_ctx_reserve(s->cuda, ws);
}

int sw_kv_create(const sw_span_t *s, int B, int max_len, sw_kv_t **out)
{
    const sw_model_config_t *c = s->cfg;
    size_t rows = (size_t)B * SW_CHUNK, QD = (size_t)c->num_heads * c->head_dim;
    size_t KD = (size_t)c->num_kv_heads * c->head_dim, H = (size_t)c->hidden_size;
    size_t I = (size_t)c->intermediate_size, cache;
    sw_kv_t *kv;

    if (B < 1 || B > 4096 || max_len < 1 || max_len > (1 << 24))
        return sw_err(-EINVAL, "KV cache of batch %d x %d positions is out of range", B, max_len);
    kv = sw_calloc(1, sizeof(*kv));
    if (!kv)
        return -ENOMEM;
    kv->span = s;
    kv->B = B;
    kv->max_len = max_len;
    cache = (size_t)(s->b - s->a) * (size_t)B * KD * (size_t)max_len;
    if (s->cuda) {
        int r = kv_create_cuda(kv, rows, cache);
        if (r < 0) {
            sw_kv_free(kv);
            return r;
        }
        *out = kv;
        return 0;
    }
    kv->k = sw_alloc_aligned(64, cache * sizeof(float));
    kv->v = sw_alloc_aligned(64, cache * sizeof(float));
    kv->h = sw_alloc_aligned(64, rows * H * sizeof(float));
    kv->xn = sw_alloc_aligned(64, rows * H * sizeof(float));
    kv->q = sw_alloc_aligned(64, rows * QD * sizeof(float));
    kv->kn = sw_alloc_aligned(64, rows * KD * sizeof(float));
    kv->vn = sw_alloc_aligned(64, rows * KD * sizeof(float));
    kv->att = sw_alloc_aligned(64, rows * QD * sizeof(float));
    kv->gate = sw_alloc_aligned(64, rows * I * sizeof(float));
    kv->up = sw_alloc_aligned(64, rows * I * sizeof(float));
    kv->tmp = sw_alloc_aligned(64, rows * H * sizeof(float));
    kv->attn_scratch = sw_alloc_aligned(64, sw_attention_scratch_floats(max_len) * sizeof(float));
    kv->inv_freq = sw_alloc_aligned(64, (size_t)c->head_dim / 2 * sizeof(float));
    kv->pos = sw_alloc_aligned(64, rows * sizeof(int32_t));
    if (!kv->k || !kv->v || !kv->h || !kv->xn || !kv->q || !kv->kn || !kv->vn || !kv->att ||
        !kv->gate || !kv->up || !kv->tmp || !kv->attn_scratch || !kv->inv_freq || !kv->pos) {
        sw_kv_free(kv);
        return sw_err(-ENOMEM, "not enough memory for a KV cache of batch %d x %d positions "
                      "over %d blocks (%.1f MiB); lower the batch or the context length",
                      B, max_len, s->b - s->a, 2.0 * (double)cache * 4 / (1 << 20));
    }
    *out = kv;
    return 0;
}

void sw_kv_free(sw_kv_t *kv)
{
    if (!kv)
        return;
    if (kv->span->cuda) {
        sw_cuda_free(kv->span->cuda, kv->dkv);
        sw_cuda_free(kv->span->cuda, kv->dact);
        sw_free(kv->inv_freq);
        sw_free(kv->pos);
        sw_free(kv);
        return;
    }
    sw_free(kv->k);
    sw_free(kv->v);
    sw_free(kv->h);
    sw_free(kv->xn);
    sw_free(kv->q);
    sw_free(kv->kn);
    sw_free(kv->vn);
    sw_free(kv->att);
    sw_free(kv->gate);
    sw_free(kv->up);
    sw_free(kv->tmp);
    sw_free(kv->attn_scratch);
    sw_free(kv->inv_freq);
    sw_free(kv->pos);
    sw_free(kv);
}

int sw_kv_len(const sw_kv_t *kv)
{
    return kv->len;
}

void sw_kv_reset(sw_kv_t *kv)
{
    kv->len = 0;
    kv->rope_cached = 0;
}

int sw_kv_truncate(sw_kv_t *kv, int len)
{
    if (len < 0 || len > kv->len)
        return sw_err(-EINVAL, "cannot roll back to position %d: the cache holds %d", len, kv->len);
    kv->len = len;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* forward (executor thread)                                                                   */

/* The activations of one pass through a block: M rows, the rows of every segment stacked. */
typedef struct {
    float *h, *xn, *q, *kn, *vn, *att, *gate, *up, *tmp; /* (M, H) (M, H) (M, QD) ... */
    int32_t *pos;                                        /* (M) absolute positions */
} acts_t;

/* One cache's share of a pass: its B sequences of Tc tokens at positions pos0 .. pos0 + Tc - 1
 * are rows row0 .. row0 + B Tc - 1 of the activations, in (B, Tc) order. */
typedef struct {
    sw_kv_t *kv;
    int B, Tc, pos0;
    size_t row0;
    float attn_factor;
} seg_t;

/*
 * Block li of span sp over the M rows of a, which hold the segments sg[0..nseg). Norms, Linear
 * layers and SwiGLU run once over all rows; RoPE (each cache has its own dynamic-RoPE state),
 * the cache append and attention run per segment against its own cache. A pass of one segment is
 * what sw_span_forward runs; several are continuous batching (sw_span_forward_batch), which gives
 * each segment the same bits as alone as long as every op is row-wise and the matmul is batch
 * invariant over the row counts involved (ops.h matmul_batch_range, sw_span_batch_ok).
 */
static void block_forward(const sw_span_t *sp, const acts_t *a, const seg_t *sg, int nseg, int M,
                          int li, const sw_ops_t *ops)
{
    const sw_model_config_t *c = sp->cfg;
    const block_t *bl = &sp->blocks[li];
    int H = c->hidden_size, NH = c->num_heads, NKV = c->num_kv_heads, HD = c->head_dim;
    int I = c->intermediate_size, window = sw_model_layer_window(c, sp->a + li);
    size_t KD = (size_t)NKV * HD, QD = (size_t)NH * HD;

    ops->rmsnorm(a->xn, a->h, bl->attn_norm, M, H, c->rms_norm_eps);
    ops->matmul(a->q, a->xn, &bl->wq, bl->bq, M);
    ops->matmul(a->kn, a->xn, &bl->wk, bl->bk, M);
    ops->matmul(a->vn, a->xn, &bl->wv, bl->bv, M);
    for (int i = 0; i < nseg; i++) {
        const seg_t *g = &sg[i];
        const sw_kv_t *kv = g->kv;
        int B = g->B, Tc = g->Tc, max_len = kv->max_len;
        size_t layer_off = (size_t)li * kv->B * KD * max_len;
        float *kc = kv->k + layer_off, *vc = kv->v + layer_off;
        float *q = a->q + g->row0 * QD, *kn = a->kn + g->row0 * KD, *vn = a->vn + g->row0 * KD;

        ops->rope(q, a->pos + g->row0, B * Tc, NH, HD, kv->inv_freq, g->attn_factor);
        ops->rope(kn, a->pos + g->row0, B * Tc, NKV, HD, kv->inv_freq, g->attn_factor);
        /* append the new keys/values: (B, Tc, NKV, HD) -> cache (B, NKV, max_len, HD) */
        for (int b = 0; b < B; b++) {
            for (int t = 0; t < Tc; t++) {
                for (int h = 0; h < NKV; h++) {
                    size_t src = ((size_t)(b * Tc + t) * NKV + h) * HD;
                    size_t dst = (((size_t)b * NKV + h) * max_len + (size_t)(g->pos0 + t)) * HD;
                    memcpy(kc + dst, kn + src, (size_t)HD * sizeof(float));
                    memcpy(vc + dst, vn + src, (size_t)HD * sizeof(float));
                }
            }
        }
        ops->attention(a->att + g->row0 * QD, q, kc, vc, B, Tc, g->pos0, max_len, NH, NKV, HD,
                       window, 1.0f / sqrtf((float)HD), kv->attn_scratch);
    }
    ops->matmul(a->tmp, a->att, &bl->wo, bl->bo, M);
    ops->add(a->h, a->tmp, (size_t)M * H);

    ops->rmsnorm(a->xn, a->h, bl->mlp_norm, M, H, c->rms_norm_eps);
    ops->matmul(a->gate, a->xn, &bl->wg, bl->bg, M);
    ops->matmul(a->up, a->xn, &bl->wu, bl->bu, M);
    ops->swiglu(a->gate, a->gate, a->up, (size_t)M * I);
    ops->matmul(a->tmp, a->gate, &bl->wd, bl->bd, M);
    ops->add(a->h, a->tmp, (size_t)M * H);
}

/* One block on the GPU: block_forward with the ops of kernels/cuda/backend.h. */
static int block_forward_cuda(const sw_kv_t *kv, const block_t *bl, int li, int B, int Tc,
                              int pos0, float attn_factor)
{
    const sw_model_config_t *c = kv->span->cfg;
    sw_cuda_ctx_t *g = kv->span->cuda;
    int H = c->hidden_size, NH = c->num_heads, NKV = c->num_kv_heads, HD = c->head_dim;
    int M = B * Tc, I = c->intermediate_size, max_len = kv->max_len, r;
    size_t KD = (size_t)NKV * HD, layer_off = (size_t)li * kv->B * KD * max_len;
    float *kc = kv->k + layer_off, *vc = kv->v + layer_off;

    if ((r = sw_cuda_rmsnorm(g, kv->xn, kv->h, bl->attn_norm, M, H, c->rms_norm_eps)) < 0 ||
        (r = sw_cuda_matmul(g, kv->q, kv->xn, &bl->wq, bl->bq, M)) < 0 ||
        (r = sw_cuda_matmul(g, kv->kn, kv->xn, &bl->wk, bl->bk, M)) < 0 ||
        (r = sw_cuda_matmul(g, kv->vn, kv->xn, &bl->wv, bl->bv, M)) < 0 ||
        (r = sw_cuda_rope(g, kv->q, kv->dpos, M, NH, HD, kv->dinv_freq, attn_factor)) < 0 ||
        (r = sw_cuda_rope(g, kv->kn, kv->dpos, M, NKV, HD, kv->dinv_freq, attn_factor)) < 0 ||
        (r = sw_cuda_kv_append(g, kc, vc, kv->kn, kv->vn, B, Tc, pos0, max_len, NKV, HD)) < 0 ||
        (r = sw_cuda_attention(g, kv->att, kv->q, kc, vc, B, Tc, pos0, max_len, NH, NKV, HD,
                               sw_model_layer_window(c, kv->span->a + li),
                               1.0f / sqrtf((float)HD))) < 0 ||
        (r = sw_cuda_matmul(g, kv->tmp, kv->att, &bl->wo, bl->bo, M)) < 0 ||
        (r = sw_cuda_add(g, kv->h, kv->tmp, (size_t)M * H)) < 0 ||
        (r = sw_cuda_rmsnorm(g, kv->xn, kv->h, bl->mlp_norm, M, H, c->rms_norm_eps)) < 0 ||
        (r = sw_cuda_matmul(g, kv->gate, kv->xn, &bl->wg, bl->bg, M)) < 0 ||
        (r = sw_cuda_matmul(g, kv->up, kv->xn, &bl->wu, bl->bu, M)) < 0 ||
        (r = sw_cuda_swiglu(g, kv->gate, kv->gate, kv->up, (size_t)M * I)) < 0 ||
        (r = sw_cuda_matmul(g, kv->tmp, kv->gate, &bl->wd, bl->bd, M)) < 0 ||
        (r = sw_cuda_add(g, kv->h, kv->tmp, (size_t)M * H)) < 0)
        return r;
    return 0;
}

/*
 * sw_span_forward on the GPU: per chunk, the hidden states and positions go up, every block runs
 * on the device, the hidden states come back. The chunk's uploads synchronize, so x may be
 * reused as soon as this returns.
 */
static int span_forward_cuda(const sw_span_t *s, sw_kv_t *kv, float *x, int B, int T)
{
    sw_cuda_ctx_t *g = s->cuda;
    size_t H = (size_t)s->cfg->hidden_size;
    float attn_factor;
    int r;

    sw_rope_inv_freq(s->cfg, sw_rope_dynamic_len(s->cfg, &kv->rope_cached, (int64_t)kv->len + T),
                     kv->inv_freq, &attn_factor);
    if ((r = sw_cuda_upload(g, kv->dinv_freq, kv->inv_freq,
                            (size_t)s->cfg->head_dim / 2 * sizeof(float))) < 0)
        return r;
    for (int t0 = 0; t0 < T; t0 += SW_CHUNK) {
        int Tc = T - t0 < SW_CHUNK ? T - t0 : SW_CHUNK, pos0 = kv->len + t0;
        for (int b = 0; b < B; b++) {
            if ((r = sw_cuda_upload(g, kv->h + (size_t)b * Tc * H, x + ((size_t)b * T + t0) * H,
                                    (size_t)Tc * H * sizeof(float))) < 0)
                return r;
            for (int t = 0; t < Tc; t++)
                kv->pos[b * Tc + t] = pos0 + t;
        }
        if ((r = sw_cuda_upload(g, kv->dpos, kv->pos, (size_t)B * Tc * sizeof(int32_t))) < 0)
            return r;
        for (int i = 0; i < s->b - s->a; i++)
            if ((r = block_forward_cuda(kv, &s->blocks[i], i, B, Tc, pos0, attn_factor)) < 0)
                return r;
        for (int b = 0; b < B; b++)
            if ((r = sw_cuda_download(g, x + ((size_t)b * T + t0) * H,
                                      kv->h + (size_t)b * Tc * H,
                                      (size_t)Tc * H * sizeof(float))) < 0)
                return r;
    }
    kv->len += T;
    return 0;
}

int sw_span_forward(const sw_span_t *s, sw_kv_t *kv, const sw_ops_t *ops, float *x, int B, int T)
{
    const sw_model_config_t *c = s->cfg;
    size_t H = (size_t)c->hidden_size;
    float attn_factor;

    if (kv->span != s)
        return sw_err(-EINVAL, "KV cache belongs to another span");
    if (B != kv->B)
        return sw_err(-EINVAL, "batch %d does not match the session's batch %d", B, kv->B);
    if (T < 1 || T > kv->max_len - kv->len)
        return sw_err(SW_ELIMIT, "%d new tokens do not fit: %d of %d positions are used; start "
                      "a new session or raise the context length", T, kv->len, kv->max_len);
    if (s->cuda)
        return span_forward_cuda(s, kv, x, B, T);
    /* transformers computes the frequencies once per forward, from its largest position */
    sw_rope_inv_freq(c, sw_rope_dynamic_len(c, &kv->rope_cached, (int64_t)kv->len + T),
                     kv->inv_freq, &attn_factor);
    for (int t0 = 0; t0 < T; t0 += SW_CHUNK) {
        int Tc = T - t0 < SW_CHUNK ? T - t0 : SW_CHUNK, pos0 = kv->len + t0;
        acts_t a = { kv->h, kv->xn, kv->q, kv->kn, kv->vn, kv->att, kv->gate, kv->up, kv->tmp,
                     kv->pos };
        seg_t g = { kv, B, Tc, pos0, 0, attn_factor };
        for (int b = 0; b < B; b++) {
            memcpy(kv->h + (size_t)b * Tc * H, x + ((size_t)b * T + t0) * H,
                   (size_t)Tc * H * sizeof(float));
            for (int t = 0; t < Tc; t++)
                kv->pos[b * Tc + t] = pos0 + t;
        }
        for (int i = 0; i < s->b - s->a; i++)
            block_forward(s, &a, &g, 1, B * Tc, i, ops);
        for (int b = 0; b < B; b++)
            memcpy(x + ((size_t)b * T + t0) * H, kv->h + (size_t)b * Tc * H,
                   (size_t)Tc * H * sizeof(float));
    }
    kv->len += T;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* continuous batching (executor thread)                                                       */

struct sw_fwd_batch {
    int max_rows;
    acts_t a;
    seg_t *seg;  /* max_rows: a segment has at least one row */
};

int sw_fwd_batch_create(const sw_model_config_t *c, int max_rows, sw_fwd_batch_t **out)
{
    size_t rows = (size_t)max_rows, QD = (size_t)c->num_heads * c->head_dim;
    size_t KD = (size_t)c->num_kv_heads * c->head_dim, H = (size_t)c->hidden_size;
    size_t I = (size_t)c->intermediate_size;
    sw_fwd_batch_t *w;

    if (max_rows < 1 || max_rows > (1 << 20))
        return sw_err(-EINVAL, "batch workspace of %d rows is out of range", max_rows);
    if (!(w = sw_calloc(1, sizeof(*w))))
        return -ENOMEM;
    w->max_rows = max_rows;
    w->a.h = sw_alloc_aligned(64, rows * H * sizeof(float));
    w->a.xn = sw_alloc_aligned(64, rows * H * sizeof(float));
    w->a.q = sw_alloc_aligned(64, rows * QD * sizeof(float));
    w->a.kn = sw_alloc_aligned(64, rows * KD * sizeof(float));
    w->a.vn = sw_alloc_aligned(64, rows * KD * sizeof(float));
    w->a.att = sw_alloc_aligned(64, rows * QD * sizeof(float));
    w->a.gate = sw_alloc_aligned(64, rows * I * sizeof(float));
    w->a.up = sw_alloc_aligned(64, rows * I * sizeof(float));
    w->a.tmp = sw_alloc_aligned(64, rows * H * sizeof(float));
    w->a.pos = sw_alloc_aligned(64, rows * sizeof(int32_t));
    w->seg = sw_calloc(rows, sizeof(*w->seg));
    if (!w->a.h || !w->a.xn || !w->a.q || !w->a.kn || !w->a.vn || !w->a.att || !w->a.gate ||
        !w->a.up || !w->a.tmp || !w->a.pos || !w->seg) {
        sw_fwd_batch_free(w);
        return sw_err(-ENOMEM, "not enough memory for a batch workspace of %d rows (%.1f MiB)",
                      max_rows, (double)rows * (3 * H + 2 * QD + 2 * KD + 2 * I) * 4 / (1 << 20));
    }
    *out = w;
    return 0;
}

void sw_fwd_batch_free(sw_fwd_batch_t *w)
{
    if (!w)
        return;
    sw_free(w->a.h);
    sw_free(w->a.xn);
    sw_free(w->a.q);
    sw_free(w->a.kn);
    sw_free(w->a.vn);
    sw_free(w->a.att);
    sw_free(w->a.gate);
    sw_free(w->a.up);
    sw_free(w->a.tmp);
    sw_free(w->a.pos);
    sw_free(w->seg);
    sw_free(w);
}

int sw_fwd_batch_rows(const sw_fwd_batch_t *w)
{
    return w->max_rows;
}

int sw_span_batch_ok(const sw_span_t *s, const sw_ops_t *ops, int min_rows, int max_T, int total)
{
    if (s->cuda || !ops || !ops->matmul_batch_range || min_rows < 1 || max_T < 1 ||
        max_T > SW_CHUNK || total < min_rows)
        return 0;
    for (int i = 0; i < s->b - s->a; i++) {
        const block_t *bl = &s->blocks[i];
        const sw_tensor_t *mats[SW_BLOCK_LINEARS] = { &bl->wq, &bl->wk, &bl->wv, &bl->wo,
                                                      &bl->wg, &bl->wu, &bl->wd };
        for (int k = 0; k < SW_BLOCK_LINEARS; k++) {
            int lo, hi;
            if (ops->matmul_batch_range(mats[k], total, &lo, &hi) < 0 || min_rows < lo ||
                total > hi)
                return 0;
        }
    }
    return 1;
}

int sw_span_forward_batch(const sw_span_t *s, sw_kv_t *const *kvs, const sw_ops_t *ops,
                          float *const *xs, const int *Ts, int n, sw_fwd_batch_t *w)
{
    const sw_model_config_t *c = s->cfg;
    size_t H = (size_t)c->hidden_size, rows = 0;
    int r;

    if (n < 1 || n > w->max_rows)
        return sw_err(-EINVAL, "a batch of %d sequences groups is out of range (1..%d)", n,
                      w->max_rows);
    for (int i = 0; i < n; i++) {
        const sw_kv_t *kv = kvs[i];
        if (kv->span != s)
            return sw_err(-EINVAL, "KV cache %d of the batch belongs to another span", i);
        if (Ts[i] < 1 || Ts[i] > kv->max_len - kv->len)
            return sw_err(SW_ELIMIT, "%d new tokens do not fit: %d of %d positions are used; "
                          "start a new session or raise the context length", Ts[i], kv->len,
                          kv->max_len);
        for (int j = 0; j < i; j++)
            if (kvs[j] == kv)
                return sw_err(-EINVAL, "KV cache %d appears twice in the batch", i);
        rows += (size_t)kv->B * (size_t)Ts[i];
    }
    if (rows > (size_t)w->max_rows)
        return sw_err(SW_ELIMIT, "a batch of %zu rows exceeds the workspace's %d", rows,
                      w->max_rows);
    if (s->cuda) { /* no batched GPU pass yet: one after the other, each exactly as alone */
        for (int i = 0; i < n; i++)
            if ((r = sw_span_forward(s, kvs[i], ops, xs[i], kvs[i]->B, Ts[i])) < 0)
                return r;
        return 0;
    }
    rows = 0;
    for (int i = 0; i < n; i++) {
        sw_kv_t *kv = kvs[i];
        seg_t *g = &w->seg[i];
        int B = kv->B, T = Ts[i];

        sw_rope_inv_freq(c, sw_rope_dynamic_len(c, &kv->rope_cached, (int64_t)kv->len + T),
                         kv->inv_freq, &g->attn_factor);
        g->kv = kv;
        g->B = B;
        g->Tc = T;
        g->pos0 = kv->len;
        g->row0 = rows;
        memcpy(w->a.h + rows * H, xs[i], (size_t)B * T * H * sizeof(float));
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++)
                w->a.pos[rows + (size_t)b * T + t] = kv->len + t;
        rows += (size_t)B * T;
    }
    for (int i = 0; i < s->b - s->a; i++)
        block_forward(s, &w->a, w->seg, n, (int)rows, i, ops);
    for (int i = 0; i < n; i++) {
        const seg_t *g = &w->seg[i];
        memcpy(xs[i], w->a.h + g->row0 * H, (size_t)g->B * g->Tc * H * sizeof(float));
        kvs[i]->len += Ts[i];
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* client-side parts                                                                           */

int sw_head_load(sw_model_t *m, sw_head_t **out)
{
    /* embeddings and the LM head stay 16-bit, as in Petals */
    static const sw_load_opts_t dense = { SW_QUANT_NONE, 0.0f, NULL, NULL };
    const sw_model_config_t *c = &m->cfg;
    const sw_st_tensor_t *t;
    sw_head_t *h;
    int r;

    h = sw_calloc(1, sizeof(*h));
    if (!h)
        return -ENOMEM;
    h->cfg = c;
    r = sw_weight_load(m->ckpt, m->dir, "model.embed_tokens", c->vocab_size, c->hidden_size,
                       &dense, &h->embed);
    if (r < 0)
        goto err;
    r = load_vector(m, "model.norm.weight", c->hidden_size, &h->norm);
    if (r < 0)
        goto err;
    if (c->tie_word_embeddings) {
        h->lm_head = h->embed;
        h->lm_head.owned = 0;
    } else {
        r = sw_st_dir_find(m->ckpt, "lm_head.weight", &t);
        if (r == -ENOENT) {
            r = sw_err(SW_EFORMAT, "%s: lm_head.weight is missing and config.json does not set "
                       "tie_word_embeddings; the checkpoint is incomplete", m->dir);
            goto err;
        }
        r = sw_weight_load(m->ckpt, m->dir, "lm_head", c->vocab_size, c->hidden_size, &dense,
                           &h->lm_head);
        if (r < 0)
            goto err;
    }
    *out = h;
    return 0;
err:
    sw_head_free(h);
    return r;
}

void sw_head_free(sw_head_t *h)
{
    if (!h)
        return;
    if (h->cuda) {
        sw_cuda_free(h->cuda, h->dmem);
        sw_cuda_free(h->cuda, h->dact);
        sw_free(h);
        return;
    }
    sw_qtensor_free(&h->lm_head);
    sw_qtensor_free(&h->embed);
    sw_free(h->norm);
    sw_free(h);
}

int sw_head_to_cuda(sw_head_t *h, sw_cuda_ctx_t *ctx, int max_rows)
{
    const sw_model_config_t *c = h->cfg;
    size_t H = (size_t)c->hidden_size, V = (size_t)c->vocab_size, ws = 0;
    size_t ne = align256(sw_cuda_tensor_device_bytes(&h->embed)), nn = align256(H * 4);
    size_t nl = c->tie_word_embeddings ? 0 : align256(sw_cuda_tensor_device_bytes(&h->lm_head));
    size_t ni = align256((size_t)max_rows * 4), nx = align256((size_t)max_rows * H * 4);
    size_t nlog = align256((size_t)max_rows * V * 4);
    sw_tensor_t de, dl;
    sw_qstate_t unused;
    uint8_t *mem = NULL, *act = NULL;
    int r;

    if (h->cuda)
        return sw_err(-EINVAL, "head is already on a GPU");
    if (max_rows < 1)
        return sw_err(-EINVAL, "head on the GPU needs max_rows >= 1");
    if ((r = sw_cuda_alloc(ctx, ne + nn + nl, (void **)&mem)) < 0 ||
        (r = sw_cuda_alloc(ctx, ni + nx + nlog, (void **)&act)) < 0) {
        r = sw_err(r, "not enough GPU memory for the embeddings and LM head (%.1f MiB) and %d "
                   "rows of logits (%.1f MiB): %s", (double)(ne + nn + nl) / (1 << 20),
                   max_rows, (double)nlog / (1 << 20), sw_err_detail());
        goto err;
    }
    if ((r = sw_cuda_tensor_upload_at(ctx, &h->embed, mem, &unused, &de)) < 0 ||
        (r = sw_cuda_upload(ctx, mem + ne, h->norm, H * 4)) < 0)
        goto err;
    dl = de;
    if (!c->tie_word_embeddings &&
        (r = sw_cuda_tensor_upload_at(ctx, &h->lm_head, mem + ne + nn, &unused, &dl)) < 0)
        goto err;
    for (int mode = 0; mode < 2; mode++) {
        size_t b = sw_cuda_matmul_workspace_bytes((sw_cuda_matmul_mode_t)mode, dl.dtype,
                                                  max_rows, (int64_t)V, (int64_t)H);
        ws = b > ws ? b : ws;
    }
    if ((r = sw_cuda_ctx_reserve(ctx, ws)) < 0)
        goto err;
    sw_qtensor_free(&h->lm_head);
    sw_qtensor_free(&h->embed);
    sw_free(h->norm);
    h->embed = de;
    h->lm_head = dl;
    h->norm = (float *)(mem + ne);
    h->cuda = ctx;
    h->dmem = mem;
    h->dact = act;
    h->max_rows = max_rows;
    h->dids = (int32_t *)act;
    h->dx = (float *)(act + ni);
    h->dlogits = (float *)(act + ni + nx);
    return 0;
err:
    sw_cuda_free(ctx, mem);
    sw_cuda_free(ctx, act);
    return r;
}

size_t sw_head_lm_bytes(const sw_head_t *h)
{
    return sw_tensor_nbytes(&h->lm_head) + (size_t)h->cfg->hidden_size * sizeof(float);
}

int sw_head_embed(const sw_head_t *h, const sw_ops_t *ops, const int32_t *ids, int M, float *x)
{
    for (int i = 0; i < M; i++)
        if (ids[i] < 0 || ids[i] >= h->cfg->vocab_size)
            return sw_err(-EINVAL, "token id %d is outside the vocabulary [0, %d)", ids[i],
                          h->cfg->vocab_size);
    if (h->cuda) {
        size_t H = (size_t)h->cfg->hidden_size;
        int r;
        if (M > h->max_rows)
            return sw_err(SW_ELIMIT, "%d rows exceed the %d the head was sized for", M,
                          h->max_rows);
        if ((r = sw_cuda_upload(h->cuda, h->dids, ids, (size_t)M * sizeof(int32_t))) < 0 ||
            (r = sw_cuda_embed(h->cuda, h->dx, &h->embed, h->dids, M)) < 0 ||
            (r = sw_cuda_download(h->cuda, x, h->dx, (size_t)M * H * sizeof(float))) < 0)
            return r;
        return 0;
    }
    ops->embed(x, &h->embed, ids, M);
    return 0;
}

int sw_head_logits(const sw_head_t *h, const sw_ops_t *ops, float *x, int M, float *logits)
{
    if (h->cuda) {
        size_t H = (size_t)h->cfg->hidden_size, V = (size_t)h->cfg->vocab_size;
        int r;
        if (M > h->max_rows)
            return sw_err(SW_ELIMIT, "%d rows exceed the %d the head was sized for", M,
                          h->max_rows);
        if ((r = sw_cuda_upload(h->cuda, h->dx, x, (size_t)M * H * sizeof(float))) < 0 ||
            (r = sw_cuda_rmsnorm(h->cuda, h->dx, h->dx, h->norm, M, (int)H,
                                 h->cfg->rms_norm_eps)) < 0 ||
            (r = sw_cuda_matmul(h->cuda, h->dlogits, h->dx, &h->lm_head, NULL, M)) < 0 ||
            (r = sw_cuda_download(h->cuda, logits, h->dlogits, (size_t)M * V * sizeof(float))) < 0 ||
            (r = sw_cuda_download(h->cuda, x, h->dx, (size_t)M * H * sizeof(float))) < 0)
            return r;
        return 0;
    }
    ops->rmsnorm(x, x, h->norm, M, h->cfg->hidden_size, h->cfg->rms_norm_eps);
    ops->matmul(logits, x, &h->lm_head, NULL, M);
    return 0;
}
