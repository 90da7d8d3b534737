/*
 * server.h - serving a span of transformer blocks to peers: the RPC handlers of `swarmd serve` and
 * the device executor behind them.
 *
 * Methods (wire messages in proto/swarmd.proto):
 *   "info"       unary: a ServerInfo (span, hidden size, formats, cache tokens left, version).
 *   "forward"    unary: ForwardRequest + (B, T, H) hidden states in, ForwardResponse + the output
 *                hidden states of blocks [start_block, end_block) out; no cache.
 *   "backward"   unary: BackwardRequest + inputs (B, T, H) and dL/d(outputs) (B, T, H), payloads
 *                concatenated, in; BackwardResponse + dL/d(inputs) of blocks [start_block,
 *                end_block) out (pipeline/backward.h: forward recomputed, weights frozen; no cache).
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
 * and backward calls, then fewer tokens (B x T, x 3 for a backward) before more, then arrival
 * order - and does all decoding, block compute and encoding. Finished jobs go back to the loop
 * through uv_async_send, where replies are sent. A session has at most one step in flight: its
 * call is paused from a step's arrival until the reply has been handed to the transport, so a
 * fast client cannot queue unbounded work.
 * Continuous batching: when the executor takes a step, the other queued steps of sessions on the
 * same blocks [a, b) join its pass (fewest tokens first, up to min(--max-batch-tokens,
 * SW_SERVER_BATCH_ROWS) rows of B x T): the Linear layers run as one matmul over all their rows,
 * attention per session against its own cache. Each session gets exactly the bits it would get
 * alone (pipeline/model.h sw_span_batch_ok; tests/test-batch.c): steps of up to 64 tokens batch,
 * LLM.int8() weights with an outlier threshold do not (the outlier columns would be shared), NF4
 * batches 1..4-row steps apart from larger ones, spans on a GPU run steps one by one. Forward
 * and backward calls run alone. The executor is woken in the loop's check phase, once the loop
 * has handled everything it read, so steps that arrived together are queued together.
 *
 * Cache tokens: one token is one position of one sequence, across all blocks of the session's
 * span; a session reserves batch x max_length of them for its lifetime.
 */
#ifndef SW_PIPELINE_SERVER_H
#define SW_PIPELINE_SERVER_H

#include <stdint.h>

#include <uv.h>

#include "kernels/device.h"
#include "kernels/ops.h"
#include "p2p/rpc.h"
#include "pipeline/weights.h"
#include "swarmd.pb-c.h"

typedef struct sw_server sw_server_t;

typedef struct {
    const char *model_dir;     /* Hugging Face checkpoint directory */
    int start, end;            /* the span [start, end) to load and serve */
    sw_load_opts_t load;       /* weight format (--quant) */
    const sw_ops_t *ops;       /* NULL: sw_ops_cpu */
    uint64_t max_cache_tokens; /* 0: SW_SERVER_DEFAULT_CACHE_TOKENS */
    uint32_t max_batch_tokens; /* 0: SW_SERVER_DEFAULT_BATCH_TOKENS */
    uint32_t max_backward_tokens; /* B x T of one backward call; 0: what SW_SERVER_BACKWARD_BUDGET
                                     bytes hold (block inputs + one block's backward workspace) */
    uint32_t idle_timeout_ms;  /* a session without a step for this long ends; 0: the default */
    sw_device_t device;        /* where the blocks run; zeroed: the CPU */
    const char *device_name;   /* ServerInfo.device on the CPU (NULL: "cpu"); a GPU gives its own */
} sw_server_opts_t;

#define SW_SERVER_DEFAULT_CACHE_TOKENS 16384
#define SW_SERVER_DEFAULT_BATCH_TOKENS 8192
#define SW_SERVER_DEFAULT_IDLE_MS 300000
#define SW_SERVER_MAX_LENGTH (1 << 20) /* longest max_length of an inference session */
#define SW_SERVER_BACKWARD_BUDGET ((uint64_t)1 << 30) /* bytes one backward call may take */
/* Most rows (B x T summed over sessions) in one batched pass; sizes the executor's workspace
 * once at load: rows x (3 H + 2 NH HD + 2 NKV HD + 2 I) floats (~50 MB for Llama-2-70B shapes). */
#define SW_SERVER_BATCH_ROWS 128

/*
 * Opens the model, loads blocks [start, end) (long: progress through opts->load), starts the
 * executor thread and registers the methods on node (which must outlive the server). Runs on the
 * loop thread before or between loop iterations. Errors with a detail (sw_err) naming the problem.
 * The same as sw_server_load then sw_server_start.
 */
int sw_server_new(uv_loop_t *loop, sw_p2p_node_t *node, const sw_server_opts_t *opts,
                  sw_server_t **out);

/*
 * The first half of sw_server_new: checks opts->device (a clear error when it is not there),
 * opens the model, loads the blocks (to the GPU with a CUDA device) and takes each block's
 * weights digest. Touches no loop, so it may run on a worker thread (e.g. loading a new span while
 * the old one serves). Free an unstarted server with sw_server_close (done runs at once).
 */
int sw_server_load(const sw_server_opts_t *opts, sw_server_t **out);
/*
 * The second half: binds a loaded server to loop, starts its executor and registers its methods
 * on node - replacing the handlers another server registered there (sw_p2p_node_handle: the
 * latest registration takes new calls; calls already open stay with their server). Loop thread.
 * On failure close the server with sw_server_close and run the loop.
 */
int sw_server_start(sw_server_t *s, uv_loop_t *loop, sw_p2p_node_t *node);

/*
 * Starts the shutdown: new sessions and forward calls are refused from now on; steps already
 * queued or running finish and their replies are sent, for at most grace_ms; then every open
 * session ends with an error saying the server is shutting down, and done(arg) runs on the loop.
 * On a server already draining it does nothing, except to a retiring one (sw_server_retire):
 * that one now drains as at shutdown, within grace_ms, and its first done still runs.
 */
void sw_server_drain(sw_server_t *s, uint32_t grace_ms, void (*done)(void *arg), void *arg);

/*
 * Retires the server after its span moved (the node stays up, another server takes new calls):
 * like sw_server_drain, new sessions and forward calls are refused, but open inference sessions
 * may go on stepping until they end by themselves; after grace_ms the ones left end with an error
 * and done(arg) runs once every call is gone. Then sw_server_close frees it.
 */
void sw_server_retire(sw_server_t *s, uint32_t grace_ms, void (*done)(void *arg), void *arg);

/*
 * Stops the executor (a job running finishes first; queued ones are dropped) and frees the server;
 * done(arg) (may be NULL) runs on the loop once everything is released. Call after the node has
 * closed, or after sw_server_drain/_retire finished and other handlers replaced this server's,
 * so that no call is left; keep running the loop until done.
 */
void sw_server_close(sw_server_t *s, void (*done)(void *arg), void *arg);

/* Model name as announced (last component of the directory) and hidden size. */
const char *sw_server_model_name(const sw_server_t *s);
int sw_server_hidden_size(const sw_server_t *s);

/* The span served: sets *start and *end, returns end - start. */
int sw_server_span(const sw_server_t *s, int *start, int *end);

/*
 * Measures compute throughput on the server's device and format, through ONE block (its first),
 * in tokens/s: *inference_rps from decode steps (B = 1, T = 1, a growing cache, up to 100 steps)
 * and *forward_rps from forward passes of min(256, --max-batch-tokens) tokens (up to 10), each
 * after one warm-up, stopping early after about budget_s seconds (at least 2 timed runs each).
 * Runs on the calling thread; call it between sw_server_load and sw_server_start (SW_ESTATE
 * after), as it shares the ops with the executor.
 */
int sw_server_measure(sw_server_t *s, double budget_s, double *forward_rps, double *inference_rps);

/*
 * Fills *m (proto/swarmd.proto ServerInfo) with what the server knows: version, model, span,
 * sizes, formats, cache tokens left, sessions, draining, device and GPU memory, weights_digest
 * (of start_block) and block_digests (every block). Strings and bytes point into the server: pack
 * *m before the server changes or goes. The announcer sets state, throughput and the rest.
 */
void sw_server_info_fill(const sw_server_t *s, Swarmd__ServerInfo *m);
/* Block `block`'s weights digest (sw_span_block_digest) into out; -EINVAL outside the span. */
int sw_server_block_digest(const sw_server_t *s, int block, uint8_t out[32]);

/* What the executor has done (since start) and holds now; any thread. */
typedef struct {
    uint64_t steps;          /* inference steps run */
    uint64_t batched_passes; /* passes that carried the steps of several sessions */
    uint64_t batched_steps;  /* steps run in those passes */
    uint32_t max_batch;      /* most sessions in one pass */
    uint32_t queued;         /* jobs waiting for the executor now */
    uint32_t batch_rows;     /* the row bound of a pass (0: no batching, spans on a GPU) */
} sw_server_stats_t;
void sw_server_stats(sw_server_t *s, sw_server_stats_t *out);

/* Holds (on != 0) or releases the executor: while held, a job running finishes but no other
 * starts; calls keep queueing. For tests and benchmarks that need a known batch. */
void sw_server_pause(sw_server_t *s, int on);

#endif
