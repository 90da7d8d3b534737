/*
 * server_check.h - the checks a block server applies to every request, as pure functions of the
 * decoded message, the payload length and the server's limits: no loop, no server, no allocation.
 * pipeline/server.c's handlers call exactly these; the fuzz target tests/fuzz/fuzz-serve.c calls
 * them on arbitrary bytes and then does what the executor does with what passed (decoding the
 * payloads into buffers of the sizes computed here). Internal to pipeline/ and tests/.
 *
 * Each returns 0, or a negative SW_E* code with an sw_err detail that says what was wrong, as
 * the caller's error reply: SW_EUNSUPPORTED (not served here, unknown codec), SW_EFORMAT
 * (malformed or inconsistent), SW_ELIMIT (over a limit).
 */
#ifndef SW_PIPELINE_SERVER_CHECK_H
#define SW_PIPELINE_SERVER_CHECK_H

#include <stddef.h>
#include <stdint.h>

#include "pipeline/codec.h"
#include "swarmd.pb-c.h"

/* What a request is checked against. */
typedef struct {
    int start, end;          /* the served span: any non-empty [a, b) inside it is accepted */
    int H;                   /* hidden size */
    uint32_t max_batch;      /* --max-batch-tokens: B x T of one call or step */
    uint32_t max_backward;   /* --max-backward-tokens: B x T of one backward call (0: max_batch) */
    int max_position;        /* an inference session's longest max_length (SW_SERVER_MAX_LENGTH) */
    uint64_t max_cache;      /* --max-cache-tokens: the whole budget */
    uint64_t cache_left;     /* cache tokens not reserved by open sessions */
} sw_serve_limits_t;

/* A forward or backward call that passed: blocks [a, b), hidden states (B, T, H) in in_h (the
 * first in_h.encoded_len payload bytes), for backward the output gradient, same shape, in
 * grad_h (the rest of the payload), and the reply's codec. */
typedef struct {
    int a, b, B, T;
    sw_tensor_header_t in_h, grad_h;
    sw_codec_opts_t out_opts;
} sw_serve_call_t;

int sw_serve_check_forward(const sw_serve_limits_t *l, const Swarmd__ForwardRequest *q,
                           size_t payload_len, sw_serve_call_t *out);
int sw_serve_check_backward(const sw_serve_limits_t *l, const Swarmd__BackwardRequest *q,
                            size_t payload_len, sw_serve_call_t *out);

/* An inference session as its first message opens it: blocks [a, b), batch B, max_length
 * positions, the cache tokens it reserves (B x max_length, within cache_left), and the sizes of
 * the buffers that serve every later step: x_cap floats of input (B x the most tokens one step
 * may bring x H) and out_cap bytes of reply (any codec, with or without zstd). */
typedef struct {
    int a, b, B, max_length;
    uint64_t need;
    size_t x_cap, out_cap;
} sw_serve_session_t;

int sw_serve_check_open(const sw_serve_limits_t *l, const Swarmd__InferenceRequest *q,
                        sw_serve_session_t *out);

/* A step that passed, on a session of length len: roll back to `rollback` first (-1: no), then
 * T >= 0 new positions of (B, T, H) hidden states in in_h (T = 0: none, and no payload); then
 * B x T x H <= x_cap and the session's length <= max_length hold. */
typedef struct {
    int B, T, rollback;
    sw_tensor_header_t in_h;
    sw_codec_opts_t out_opts;
} sw_serve_step_t;

int sw_serve_check_step(const sw_serve_limits_t *l, const sw_serve_session_t *ss, int len,
                        const Swarmd__InferenceRequest *q, size_t payload_len,
                        sw_serve_step_t *out);

#endif
