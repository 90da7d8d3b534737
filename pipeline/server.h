/*
 * server.h - serving a span of transformer blocks to peers: the RPC handlers of `swarmd serve` and
 * the device executor behind them.
 *
 * Methods (wire messages in proto/swarmd.proto):
 *   "info"       unary: a ServerInfo (span, hidden size, formats, cache tokens left, version).
 *   "forward"    unary: ForwardRequest + (B, T, H) hidden states in, ForwardResponse + the output
 *                hidden states of blocks [start_block, end_block) out; no cache.
 *   "inference"  bidirectional stream: InferenceRequest steps in, one InferenceResponse per step out.
 *                The first step reserves B x max_length positions of the KV cache budget; each step
 *                appends T >= 0 positions, optionally after rolling back to start_from_position.
 *                The session ends when the client ends its half, on the first bad step, after
 *                idle_timeout_ms without a step, or when the server shuts down.
 * Any span [a, b) inside the served one is accepted (each block is loaded as its own span, so a
 * sub-span runs exactly the ops the whole span would). Every field is checked against the span,
 * the hidden size and the limits before anything is allocated; a bad request ends that call with a
 * negative status and an error text saying what was wrong, and nothing else.
 *
 * Threads (DESIGN.md "Threads"): handlers run on the libuv loop thread and only parse, check and
 * queue. One executor thread takes jobs from a priority queue - inference steps before forward
 * calls, then fewer tokens (B x T) before more, then arrival order - and does all decoding, block
 * compute and encoding. Finished jobs go back to the loop through uv_async_send, where replies are
 * sent. A session has at most one step in flight: its call is paused from a step's arrival until
 * the reply has been handed to the transport, so a fast client cannot queue unbounded work.
 * Each job runs alone (no batching across sessions yet).
 *
 * Cache tokens: one token is one position of one sequence, across all blocks of the session's
 * span; a session reserves batch x max_length of them for its lifetime.
 */
#ifndef SW_PIPELINE_SERVER_H
#define SW_PIPELINE_SERVER_H

#include <stdint.h>

#include <uv.h>

#include "kernels/ops.h"
#include "p2p/rpc.h"
#include "pipeline/weights.h"

typedef struct sw_server sw_server_t;

typedef struct {
    const char *model_dir;     /* Hugging Face checkpoint directory */
    int start, end;            /* the span [start, end) to load and serve */
    sw_load_opts_t load;       /* weight format (--quant) */
    const sw_ops_t *ops;       /* NULL: sw_ops_cpu */
    uint64_t max_cache_tokens; /* 0: SW_SERVER_DEFAULT_CACHE_TOKENS */
    uint32_t max_batch_tokens; /* 0: SW_SERVER_DEFAULT_BATCH_TOKENS */
    uint32_t idle_timeout_ms;  /* a session without a step for this long ends; 0: the default */
} sw_server_opts_t;

#define SW_SERVER_DEFAULT_CACHE_TOKENS 16384
#define SW_SERVER_DEFAULT_BATCH_TOKENS 8192
#define SW_SERVER_DEFAULT_IDLE_MS 300000

/*
 * Opens the model, loads blocks [start, end) (long: progress through opts->load), starts the
 * executor thread and registers the methods on node (which must outlive the server). Runs on the
 * loop thread before or between loop iterations. Errors with a detail (sw_err) naming the problem.
 */
int sw_server_new(uv_loop_t *loop, sw_p2p_node_t *node, const sw_server_opts_t *opts,
                  sw_server_t **out);

/*
 * Starts the shutdown: new sessions and forward calls are refused from now on; steps already
 * queued or running finish and their replies are sent, for at most grace_ms; then every open
 * session ends with an error saying the server is shutting down, and done(arg) runs on the loop.
 */
void sw_server_drain(sw_server_t *s, uint32_t grace_ms, void (*done)(void *arg), void *arg);

/*
 * Stops the executor (a job running finishes first; queued ones are dropped) and frees the server;
 * done(arg) (may be NULL) runs on the loop once everything is released. Call after the node has
 * closed, so that no call is left; keep running the loop until done.
 */
void sw_server_close(sw_server_t *s, void (*done)(void *arg), void *arg);

/* Model name as announced (last component of the directory) and hidden size. */
const char *sw_server_model_name(const sw_server_t *s);
int sw_server_hidden_size(const sw_server_t *s);

/*
 * Provisional throughput: times one decode step (batch 1, one token, a fresh cache) through the
 * whole span on the calling thread and returns tokens/s (0 on failure). Call before any call is
 * served (it shares the ops with the executor).
 */
double sw_server_measure_decode(sw_server_t *s);

/* The ServerInfo message (proto/swarmd.proto) of this server packed into buf: state is one of
 * SWARMD__SERVER_INFO__STATE__*, model overrides the model name when not NULL, public_name and
 * address may be NULL. Returns the length, or SW_EUSAGE when cap is too small. */
int sw_server_info_encode(const sw_server_t *s, int state, double throughput, const char *model,
                          const char *public_name, const char *address, uint8_t *buf, size_t cap);

#endif
