/* local.c - whole-model runs in one process; see local.h. */
#include "local.h"

#include <errno.h>
#include <string.h>

#include "../util/alloc.h"
#include "../util/error.h"
#include "../util/log.h"

struct sw_local {
    sw_model_t *model;
    sw_head_t *head;
    sw_span_t *span;
    sw_kv_t *kv;
    sw_cuda_ctx_t *cuda; /* NULL: CPU */
    int B, max_len;
    float *x;       /* (B, max_len, H) hidden states */
    float *last;    /* (B, H) the last position of each sequence */
};

int sw_local_open(const char *dir, int B, int max_len, const sw_load_opts_t *opts,
                  sw_local_t **out)
{
    return sw_local_open_on(dir, B, max_len, opts, NULL, out);
}

int sw_local_open_on(const char *dir, int B, int max_len, const sw_load_opts_t *opts,
                     const sw_device_t *dev, sw_local_t **out)
{
    const sw_model_config_t *c;
    sw_local_t *l;
    int r;

    *out = NULL;
    if (dev && dev->kind == SW_DEVICE_CUDA && (r = sw_device_check(dev)) < 0)
        return r;
    if (B < 1 || max_len < 1 || (size_t)B * (size_t)max_len > (1u << 30))
        return sw_err(-EINVAL, "batch %d x %d positions is out of range", B, max_len);
    l = sw_calloc(1, sizeof(*l));
    if (!l)
        return -ENOMEM;
    l->B = B;
    l->max_len = max_len;
    if ((r = sw_model_open(dir, &l->model)) < 0)
        goto err;
    c = sw_model_config(l->model);
    if ((r = sw_head_load(l->model, &l->head)) < 0 ||
        (r = sw_span_load(l->model, 0, c->num_layers, opts, &l->span)) < 0)
        goto err;
    if (dev && dev->kind == SW_DEVICE_CUDA) {
        if ((r = sw_cuda_ctx_create(dev->index, &l->cuda)) < 0 ||
            (r = sw_span_to_cuda(l->span, l->cuda)) < 0 ||
            (r = sw_head_to_cuda(l->head, l->cuda, B * max_len)) < 0)
            goto err;
    }
    if ((r = sw_kv_create(l->span, B, max_len, &l->kv)) < 0)
        goto err;
    l->x = sw_alloc_aligned(64, (size_t)B * max_len * c->hidden_size * sizeof(float));
    l->last = sw_alloc_aligned(64, (size_t)B * c->hidden_size * sizeof(float));
    if (!l->x || !l->last) {
        r = -ENOMEM;
        goto err;
    }
    *out = l;
    return 0;
err:
    sw_local_close(l);
    return r;
}

void sw_local_close(sw_local_t *l)
{
    if (!l)
        return;
    sw_free(l->x);
    sw_free(l->last);
    sw_kv_free(l->kv);
    sw_span_free(l->span);
    sw_head_free(l->head);
    sw_cuda_ctx_free(l->cuda); /* after everything that borrows it */
    sw_model_close(l->model);
    sw_free(l);
}

const sw_model_config_t *sw_local_config(const sw_local_t *l)
{
    return sw_model_config(l->model);
}

sw_kv_t *sw_local_kv(sw_local_t *l)
{
    return l->kv;
}

sw_head_t *sw_local_head(sw_local_t *l)
{
    return l->head;
}

sw_span_t *sw_local_span(sw_local_t *l)
{
    return l->span;
}

size_t sw_local_bytes_per_token(const sw_local_t *l)
{
    const sw_model_config_t *c = sw_model_config(l->model);
    size_t n = sw_head_lm_bytes(l->head);

    for (int b = 0; b < c->num_layers; b++)
        n += sw_span_block_bytes(l->span, b);
    return n;
}

int sw_local_forward(sw_local_t *l, const sw_ops_t *ops, const int32_t *ids, int T,
                     int all_positions, float *logits)
{
    size_t H = (size_t)sw_model_config(l->model)->hidden_size;
    int r;

    if (T < 1 || T > l->max_len - sw_kv_len(l->kv))
        return sw_err(SW_ELIMIT, "%d more tokens exceed the context of %d positions (%d used); "
                      "raise --max-len", T, l->max_len, sw_kv_len(l->kv));
    r = sw_head_embed(l->head, ops, ids, l->B * T, l->x);
    if (r < 0)
        return r;
    r = sw_span_forward(l->span, l->kv, ops, l->x, l->B, T);
    if (r < 0)
        return r;
    if (all_positions)
        return sw_head_logits(l->head, ops, l->x, l->B * T, logits);
    for (int b = 0; b < l->B; b++)
        memcpy(l->last + b * H, l->x + ((size_t)b * T + T - 1) * H, H * sizeof(float));
    return sw_head_logits(l->head, ops, l->last, l->B, logits);
}

int sw_argmax(const float *v, int n)
{
    int best = 0;

    for (int i = 1; i < n; i++)
        if (v[i] > v[best])
            best = i;
    return best;
}

int sw_local_greedy(sw_local_t *l, const sw_ops_t *ops, const int32_t *prompt, int T, int n_new,
                    int32_t *out_ids, float *out_logits,
                    void (*on_token)(void *ctx, int32_t id), void *ctx)
{
    int V = sw_model_config(l->model)->vocab_size;
    float *logits;
    int32_t id;
    int r;

    if (l->B != 1)
        return sw_err(-EINVAL, "greedy decoding runs one sequence; this model was opened for %d",
                      l->B);
    if (n_new < 0 || T + n_new > l->max_len + 1)
        return sw_err(SW_ELIMIT, "prompt of %d plus %d new tokens exceeds the context of %d; "
                      "raise --max-len or ask for fewer tokens", T, n_new, l->max_len);
    logits = sw_malloc((size_t)V * sizeof(float));
    if (!logits)
        return -ENOMEM;
    sw_kv_reset(l->kv);
    r = sw_local_forward(l, ops, prompt, T, 0, logits);
    for (int i = 0; r == 0 && i < n_new; i++) {
        id = sw_argmax(logits, V);
        out_ids[i] = id;
        if (out_logits)
            memcpy(out_logits + (size_t)i * V, logits, (size_t)V * sizeof(float));
        if (on_token)
            on_token(ctx, id);
        if (i + 1 < n_new)
            r = sw_local_forward(l, ops, &id, 1, 0, logits);
    }
    sw_free(logits);
    return r;
}
