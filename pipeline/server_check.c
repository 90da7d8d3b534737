/*
 * server_check.c - a block server's request checks (see server_check.h). Runs on the loop thread
 * of a server, or in the fuzz target; touches nothing but its arguments.
 */
#include "pipeline/server_check.h"

#include <stdio.h>
#include <string.h>

#include "util/error.h"

static int check_span(const sw_serve_limits_t *l, uint32_t a, uint32_t b)
{
    if (a >= b || (int64_t)a < l->start || (int64_t)b > l->end)
        return sw_err(SW_EUNSUPPORTED, "blocks %u:%u are not served here: this server serves "
                      "blocks %d:%d (any non-empty span inside it)", a, b, l->start, l->end);
    return 0;
}

static int check_codec(int codec, int zstd, sw_codec_opts_t *o)
{
    if (codec < 0 || codec >= SW_CODEC_COUNT)
        return sw_err(SW_EUNSUPPORTED, "unknown output codec %d", codec);
    memset(o, 0, sizeof(*o));
    o->codec = (sw_codec_t)codec;
    o->zstd = zstd != 0;
    return 0;
}

/* Parses a packed TensorHeader of hidden states (B, T, H) and checks it against its payload's
 * length, the hidden size and the batch limit. Sets *B and *T. */
static int check_hidden(const sw_serve_limits_t *l, const ProtobufCBinaryData *hb,
                        size_t payload_len, sw_tensor_header_t *h, int *B, int *T)
{
    int r;

    if (hb->len == 0)
        return sw_err(SW_EFORMAT, "no hidden states: the request has no tensor header");
    if ((r = sw_codec_header_unpack(hb->data, hb->len, h)) < 0) {
        char why[200];
        snprintf(why, sizeof(why), "%s", sw_err_detail());
        return sw_err(r, "malformed tensor header: %s", why);
    }
    if (h->ndim != 3)
        return sw_err(SW_EFORMAT, "hidden states must be 3-D (batch, tokens, hidden), not %d-D",
                      h->ndim);
    if (h->shape[2] != l->H)
        return sw_err(SW_EFORMAT, "hidden size %lld does not match the model's %d",
                      (long long)h->shape[2], l->H);
    if (h->shape[0] < 1 || h->shape[1] < 1)
        return sw_err(SW_EFORMAT, "empty hidden states (%lld, %lld, %d)", (long long)h->shape[0],
                      (long long)h->shape[1], l->H);
    if (h->shape[0] > l->max_batch || h->shape[1] > l->max_batch ||
        (uint64_t)h->shape[0] * (uint64_t)h->shape[1] > l->max_batch)
        return sw_err(SW_ELIMIT, "%lld x %lld tokens exceed this server's limit of %u per call "
                      "(--max-batch-tokens); split the batch", (long long)h->shape[0],
                      (long long)h->shape[1], l->max_batch);
    if (h->encoded_len != payload_len)
        return sw_err(SW_EFORMAT, "tensor header says %llu payload bytes, the message carries %zu",
                      (unsigned long long)h->encoded_len, payload_len);
    *B = (int)h->shape[0];
    *T = (int)h->shape[1];
    return 0;
}

int sw_serve_check_forward(const sw_serve_limits_t *l, const Swarmd__ForwardRequest *q,
                           size_t payload_len, sw_serve_call_t *out)
{
    int r;

    memset(out, 0, sizeof(*out));
    if ((r = check_span(l, q->start_block, q->end_block)) < 0 ||
        (r = check_codec(q->output_codec, q->output_zstd, &out->out_opts)) < 0 ||
        (r = check_hidden(l, &q->hidden, payload_len, &out->in_h, &out->B, &out->T)) < 0)
        return r;
    out->a = (int)q->start_block;
    out->b = (int)q->end_block;
    return 0;
}

int sw_serve_check_backward(const sw_serve_limits_t *l, const Swarmd__BackwardRequest *q,
                            size_t payload_len, sw_serve_call_t *out)
{
    sw_tensor_header_t h;
    uint64_t hl = 0;
    int r, B2 = 0, T2 = 0;

    memset(out, 0, sizeof(*out));
    if ((r = check_span(l, q->start_block, q->end_block)) < 0 ||
        (r = check_codec(q->output_codec, q->output_zstd, &out->out_opts)) < 0)
        return r;
    /* the inputs' payload comes first: its header says how long it is (check_hidden reports a
     * missing or malformed header) */
    if (q->hidden.len && sw_codec_header_unpack(q->hidden.data, q->hidden.len, &h) == 0)
        hl = h.encoded_len;
    if (hl > payload_len)
        return sw_err(SW_EFORMAT, "inputs' tensor header says %llu payload bytes, the message "
                      "carries %zu in all", (unsigned long long)hl, payload_len);
    if ((r = check_hidden(l, &q->hidden, (size_t)hl, &out->in_h, &out->B, &out->T)) < 0)
        return r;
    if ((r = check_hidden(l, &q->grad, payload_len - (size_t)out->in_h.encoded_len,
                          &out->grad_h, &B2, &T2)) < 0) {
        char why[200];
        snprintf(why, sizeof(why), "%s", sw_err_detail());
        return sw_err(r, "output gradient: %s", why);
    }
    if (B2 != out->B || T2 != out->T)
        return sw_err(SW_EFORMAT, "output gradient is (%d, %d, %d), the inputs (%d, %d, %d): they "
                      "must have one shape", B2, T2, l->H, out->B, out->T, l->H);
    if (l->max_backward && (uint64_t)out->B * (uint64_t)out->T > l->max_backward)
        return sw_err(SW_ELIMIT, "a backward of B x T = %d x %d tokens exceeds this server's %u "
                      "(--max-backward-tokens: its memory for a backward); send fewer tokens per call",
                      out->B, out->T, l->max_backward);
    out->a = (int)q->start_block;
    out->b = (int)q->end_block;
    return 0;
}

int sw_serve_check_open(const sw_serve_limits_t *l, const Swarmd__InferenceRequest *q,
                        sw_serve_session_t *out)
{
    uint64_t need = (uint64_t)q->batch * q->max_length;
    size_t tcap, n, b1, b2;
    sw_codec_opts_t none = { 0 }, z = { 0 };
    int r;

    memset(out, 0, sizeof(*out));
    if ((r = check_span(l, q->start_block, q->end_block)) < 0)
        return r;
    if (q->batch < 1 || q->batch > 4096)
        return sw_err(SW_ELIMIT, "batch %u is out of range (1..4096)", q->batch);
    if (q->batch > l->max_batch)
        return sw_err(SW_ELIMIT, "batch %u exceeds --max-batch-tokens %u", q->batch, l->max_batch);
    if (q->max_length < 1 || l->max_position < 1 || q->max_length > (uint32_t)l->max_position)
        return sw_err(SW_ELIMIT, "max_length %u is out of range (1..%d)",
                      q->max_length, l->max_position);
    if (need > l->max_cache)
        return sw_err(SW_ELIMIT, "session of batch %u x max_length %u needs %llu cache tokens, "
                      "more than this server's whole budget of %llu; shorten it or use another "
                      "server", q->batch, q->max_length, (unsigned long long)need,
                      (unsigned long long)l->max_cache);
    if (need > l->cache_left)
        return sw_err(SW_ELIMIT, "cache exhausted: session needs %llu cache tokens, %llu of %llu "
                      "are left; retry later or use another server", (unsigned long long)need,
                      (unsigned long long)l->cache_left, (unsigned long long)l->max_cache);
    /* the most tokens one step can bring: check_hidden bounds B x T by max_batch */
    tcap = l->max_batch / q->batch;
    if (tcap > q->max_length)
        tcap = q->max_length;
    n = (size_t)q->batch * tcap * (size_t)l->H;
    z.zstd = 1;
    if ((r = sw_codec_encoded_bound(&none, n, &b1)) < 0 ||
        (r = sw_codec_encoded_bound(&z, n, &b2)) < 0)
        return r;
    out->a = (int)q->start_block;
    out->b = (int)q->end_block;
    out->B = (int)q->batch;
    out->max_length = (int)q->max_length;
    out->need = need;
    out->x_cap = n;
    out->out_cap = b1 > b2 ? b1 : b2;
    return 0;
}

int sw_serve_check_step(const sw_serve_limits_t *l, const sw_serve_session_t *ss, int len,
                        const Swarmd__InferenceRequest *q, size_t payload_len,
                        sw_serve_step_t *out)
{
    int pos = len, r;

    memset(out, 0, sizeof(*out));
    out->rollback = -1;
    if ((q->start_block || q->end_block) &&
        ((int64_t)q->start_block != ss->a || (int64_t)q->end_block != ss->b))
        return sw_err(SW_EFORMAT, "step names blocks %u:%u, the session was opened for %d:%d",
                      q->start_block, q->end_block, ss->a, ss->b);
    if ((q->batch && (int64_t)q->batch != ss->B) ||
        (q->max_length && (int64_t)q->max_length != ss->max_length))
        return sw_err(SW_EFORMAT, "batch or max_length changed after the session opened");
    if ((r = check_codec(q->output_codec, q->output_zstd, &out->out_opts)) < 0)
        return r;
    if (q->has_start_from_position) {
        if (q->start_from_position > (uint32_t)len)
            return sw_err(SW_EFORMAT, "start_from_position %u is beyond the session's length %d",
                          q->start_from_position, len);
        out->rollback = (int)q->start_from_position;
        pos = out->rollback;
    }
    out->B = ss->B;
    if (q->hidden.len == 0) {
        if (payload_len)
            return sw_err(SW_EFORMAT, "payload of %zu bytes without a tensor header", payload_len);
        return 0;
    }
    if ((r = check_hidden(l, &q->hidden, payload_len, &out->in_h, &out->B, &out->T)) < 0)
        return r;
    if (out->B != ss->B)
        return sw_err(SW_EFORMAT, "step has batch %d, the session %d", out->B, ss->B);
    if ((size_t)out->B * out->T * (size_t)l->H > ss->x_cap || pos + out->T > ss->max_length)
        return sw_err(SW_ELIMIT, "maximum length exceeded: %d + %d positions > max_length %d",
                      pos, out->T, ss->max_length);
    return 0;
}
