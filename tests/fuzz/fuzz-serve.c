/*
 * fuzz-serve.c - libFuzzer target for a block server's request decoders (pipeline/server_check.h,
 * proto/swarmd.proto): ForwardRequest, BackwardRequest and InferenceRequest bytes as a peer sends
 * them, through the same decode + checks as pipeline/server.c's handlers, and then what the
 * executor does with a request that passed: decode the payload(s) into buffers of the sizes the
 * checks promised, encode the reply into the session's reply buffer.
 *
 * Input layout: byte 0 picks the path (mod 4), then for path 3 three bytes of session state,
 * then a u16 little-endian body length L, L bytes of message body, and the payload (the rest):
 *   0: "forward": ForwardRequest + payload.
 *   1: "backward": BackwardRequest + inputs' and output gradient's payloads concatenated.
 *   2: "inference", first message: InferenceRequest opens the session (span, batch, max_length,
 *      cache budget) and is its first step.
 *   3: "inference", a later step on a session opened with batch 1 + s0 % 4, max_length
 *      1 + s1 % 64 and length s2 % (max_length + 1) (rollback, length and shape checks).
 * Invariants checked (abort on violation): what passed is inside the span, the batch limit and
 * the session's buffers (B x T x H <= x_cap, positions <= max_length, rollback <= length); the
 * payload lengths add up; the reply of any codec fits the session's out_cap; decoding into the
 * promised sizes never needs more. The limits are small (H 8), so tensors stay small.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "p2p/frame.h"
#include "pipeline/server_check.h"
#include "util/alloc.h"

/* As in fuzz-tensor: the code under test is compiled into the target so that libFuzzer sees its
 * coverage (the library is built without -fsanitize=fuzzer); the library's copies are then not
 * linked in. */
#include "../../pipeline/codec.c"
#include "../../pipeline/server_check.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MSG_MAX (1u << 20)

static const sw_serve_limits_t lim = {
    .start = 2, .end = 6, .H = 8, .max_batch = 64, .max_position = 256,
    .max_cache = 2048, .cache_left = 1024,
};

static sw_codec_ctx_t *ctx; /* reused across inputs, as the executor does */

/* Decodes a checked tensor (B, T, H) from payload p (len bytes) into a buffer of cap floats. */
static void decode_into(const sw_tensor_header_t *h, const uint8_t *p, size_t len, size_t cap)
{
    float *x = sw_malloc(cap ? cap * sizeof(float) : 1);

    if ((uint64_t)h->shape[0] * (uint64_t)h->shape[1] * (uint64_t)h->shape[2] > cap)
        abort(); /* the checks promised it fits */
    if (!x)
        return;
    sw_codec_decode(ctx, h, p, len, x, cap);
    sw_free(x);
}

/* The reply of n values with the request's codec: must fit cap bytes (the session's out_cap, or
 * the executor's bound for a call). */
static void encode_reply(const sw_codec_opts_t *o, int B, int T, size_t cap)
{
    size_t n = (size_t)B * T * lim.H, bound;
    int64_t shape[3] = { B, T, lim.H };
    sw_tensor_header_t h;
    float *x;
    uint8_t *out;

    if (sw_codec_encoded_bound(o, n, &bound) < 0 || bound > cap)
        abort();
    x = sw_calloc(n ? n : 1, sizeof(float));
    out = sw_malloc(cap ? cap : 1);
    if (x && out && sw_codec_encode(ctx, o, x, 3, shape, &h, out, cap) < 0)
        abort(); /* zeros encode with every codec */
    sw_free(x);
    sw_free(out);
}

static void in_span(int a, int b)
{
    if (a < lim.start || b > lim.end || a >= b)
        abort();
}

static void fuzz_forward(const uint8_t *body, size_t bl, const uint8_t *p, size_t pl)
{
    Swarmd__ForwardRequest *q = swarmd__forward_request__unpack(&sw_pb_allocator, bl, body);
    sw_serve_call_t c;
    size_t cap;

    if (!q)
        return;
    if (sw_serve_check_forward(&lim, q, pl, &c) == 0) {
        in_span(c.a, c.b);
        if (c.B < 1 || c.T < 1 || (uint64_t)c.B * c.T > lim.max_batch ||
            c.in_h.encoded_len != pl)
            abort();
        decode_into(&c.in_h, p, pl, (size_t)c.B * c.T * lim.H);
        if (sw_codec_encoded_bound(&c.out_opts, (uint64_t)c.B * c.T * lim.H, &cap) < 0)
            abort();
        encode_reply(&c.out_opts, c.B, c.T, cap);
    }
    swarmd__forward_request__free_unpacked(q, &sw_pb_allocator);
}

static void fuzz_backward(const uint8_t *body, size_t bl, const uint8_t *p, size_t pl)
{
    Swarmd__BackwardRequest *q = swarmd__backward_request__unpack(&sw_pb_allocator, bl, body);
    sw_serve_call_t c;
    size_t n;

    if (!q)
        return;
    if (sw_serve_check_backward(&lim, q, pl, &c) == 0) {
        in_span(c.a, c.b);
        n = (size_t)c.B * c.T * lim.H;
        if (c.in_h.encoded_len + c.grad_h.encoded_len != pl ||
            c.grad_h.shape[0] != c.B || c.grad_h.shape[1] != c.T ||
            (uint64_t)c.B * c.T > lim.max_batch)
            abort();
        decode_into(&c.in_h, p, (size_t)c.in_h.encoded_len, n);
        decode_into(&c.grad_h, p + c.in_h.encoded_len, (size_t)c.grad_h.encoded_len, n);
    }
    swarmd__backward_request__free_unpacked(q, &sw_pb_allocator);
}

/* A step on session ss of length len, then what the executor does with it. */
static void step(const sw_serve_session_t *ss, int len, const Swarmd__InferenceRequest *q,
                 const uint8_t *p, size_t pl)
{
    sw_serve_step_t st;
    int pos;

    if (sw_serve_check_step(&lim, ss, len, q, pl, &st) < 0)
        return;
    if (st.rollback > len || st.rollback < -1 || st.B != ss->B || st.T < 0)
        abort();
    pos = st.rollback >= 0 ? st.rollback : len;
    if (pos + st.T > ss->max_length || (size_t)st.B * st.T * lim.H > ss->x_cap)
        abort();
    if (st.T == 0) {
        if (pl)
            abort();
        return;
    }
    decode_into(&st.in_h, p, pl, ss->x_cap);
    encode_reply(&st.out_opts, st.B, st.T, ss->out_cap);
}

static void fuzz_inference(int first, const uint8_t *state, const uint8_t *body, size_t bl,
                           const uint8_t *p, size_t pl)
{
    Swarmd__InferenceRequest *q = swarmd__inference_request__unpack(&sw_pb_allocator, bl, body);
    sw_serve_session_t ss;
    int len = 0;

    if (!q)
        return;
    if (first) {
        if (sw_serve_check_open(&lim, q, &ss) < 0)
            goto out;
        in_span(ss.a, ss.b);
        if (ss.need != (uint64_t)ss.B * ss.max_length || ss.need > lim.cache_left ||
            ss.B < 1 || (uint32_t)ss.B > lim.max_batch || ss.max_length > lim.max_position ||
            ss.x_cap < (size_t)ss.B * lim.H)
            abort();
    } else {
        Swarmd__InferenceRequest o = SWARMD__INFERENCE_REQUEST__INIT;
        o.start_block = 3;
        o.end_block = 5;
        o.batch = 1u + state[0] % 4u;
        o.max_length = 1u + state[1] % 64u;
        if (sw_serve_check_open(&lim, &o, &ss) < 0)
            abort(); /* a valid opening */
        len = state[2] % (ss.max_length + 1);
    }
    step(&ss, len, q, p, pl);
out:
    swarmd__inference_request__free_unpacked(q, &sw_pb_allocator);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *state = NULL;
    size_t off = 1, bl;
    int kind;

    if (size < 3 || size > MSG_MAX)
        return 0;
    if (!ctx && sw_codec_ctx_new(&ctx) < 0)
        return 0;
    kind = data[0] % 4;
    if (kind == 3) {
        if (size < 6)
            return 0;
        state = data + 1;
        off = 4;
    }
    bl = (size_t)data[off] | (size_t)data[off + 1] << 8;
    off += 2;
    if (bl > size - off)
        bl = size - off;
    switch (kind) {
    case 0:
        fuzz_forward(data + off, bl, data + off + bl, size - off - bl);
        break;
    case 1:
        fuzz_backward(data + off, bl, data + off + bl, size - off - bl);
        break;
    default:
        fuzz_inference(kind == 2, state, data + off, bl, data + off + bl, size - off - bl);
        break;
    }
    return 0;
}
