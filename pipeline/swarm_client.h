/*
 * swarm_client.h - the client library: run a model whose blocks are served by a swarm.
 *
 * A client keeps the embeddings, the final norm and the LM head of a model in this process
 * (loaded from the model's directory; its blocks are not read) and sends hidden states through a
 * chain of `swarmd serve` servers that together hold every block. It finds them on the swarm's
 * DHT (their ServerInfo announcements under "<model-name>.<block>"), picks the chain with the
 * least expected latency per step (measured round trips, announced throughput, cache room; see
 * pipeline/route.h), and keeps one inference session open on each server of the chain.
 *
 * Fault tolerance. The client keeps every hidden-state input it sent to each server of a session.
 * When a server fails (connection lost, error, or no answer within the step timeout) it is banned
 * for a while (doubling with each failure), the swarm is read again, a chain over that server's
 * blocks is chosen among the others (one server or several), the kept inputs are replayed to it to
 * rebuild its caches, and the step goes on. The outputs are what the failed server would have
 * given, so generation continues with the same tokens. A step gives up after max_failures failed
 * servers (default 8), with an error naming the blocks nobody could serve.
 *
 * Local mode (opts.local) runs every block in this process through the same session code: what
 * `swarmd generate --local` uses, and the yardstick swarm generation is tested against.
 *
 * Threads: a client and its sessions are used by one thread at a time. Every call blocks until it
 * is done (the client runs its own event loop inside the calls). Calls return 0 or a negative
 * error code; swarm_client_error() then says what went wrong and what to do.
 *
 * Exactness: with compress "none", greedy ids through a swarm equal local greedy ids. The default
 * "bf16" rounds hidden states to bfloat16 between hops (relative error <= 2^-8 per element), which
 * halves the bytes sent; it can flip a greedy choice between two near-equal logits.
 */
#ifndef SWARM_CLIENT_H
#define SWARM_CLIENT_H

#include <stddef.h>
#include <stdint.h>

typedef struct swarm_client swarm_client_t;
typedef struct swarm_session swarm_session_t;

/* Events the client reports (opts.on_event); text is one line without a newline. */
enum {
    SWARM_EVENT_ROUTE = 1,    /* a chain was chosen: "0:2 via PEER (name) ADDR 12.3 ms, 2:4 via ..." */
    SWARM_EVENT_FAILOVER = 2, /* a server failed and what the client does about it */
    SWARM_EVENT_INFO = 3,     /* joining the DHT, reading the swarm */
    SWARM_EVENT_PROGRESS = 4, /* local mode: a block quantized while loading */
    SWARM_EVENT_WARNING = 5,  /* servers skipped (weights that differ from the others') */
};

typedef struct {
    const char *model_dir;            /* required: config.json, embeddings, norm, LM head */
    const char *const *initial_peers; /* DHT nodes of the swarm (PEERID@HOST:PORT or HOST:PORT) */
    size_t n_initial_peers;
    const char *model_name;           /* the swarm name (NULL: derived from model_dir as serve does) */
    const char *identity_path;        /* NULL: a throwaway identity */
    const char *swarm_key_path;       /* private swarm key file, or NULL */
    int local;                        /* run every block in this process; no network */
    const char *device;               /* local mode: "cpu" (NULL) or "cuda[:N]" */
    const char *quant;                /* local mode: as stored (NULL), "none", "nf4" or "int8" */
    float int8_threshold;             /* local mode, int8: LLM.int8() outlier threshold (0: 6;
                                         < 0: no outlier decomposition) */
    int reference_kernels;            /* use the plain C reference kernels (checking) */
    const char *compress;             /* hidden states on the wire: "bf16" (NULL), "none", "fp16",
                                         "blockwise8" */
    int max_length;                   /* positions a session may hold (0: 2048) */
    unsigned step_timeout_ms;         /* a server not answering a step by then failed (0: 60000) */
    unsigned dht_timeout_ms;          /* joining the DHT and reading the swarm (0: 20000) */
    unsigned max_failures;            /* failed servers one step may replace (0: 8) */
    void (*on_event)(void *arg, int kind, const char *text);
    void *event_arg;
} swarm_client_opts_t;

/* Opens a client: loads the model's head (or, in local mode, the whole model) and, unless local,
 * joins the DHT in client mode. Caller frees with swarm_client_close. */
int swarm_client_open(const swarm_client_opts_t *opts, swarm_client_t **out);
void swarm_client_close(swarm_client_t *c);

/* The detail of the calling thread's last error ("" if none). */
const char *swarm_client_error(void);

int swarm_client_hidden_size(const swarm_client_t *c);
int swarm_client_vocab_size(const swarm_client_t *c);
int swarm_client_num_blocks(const swarm_client_t *c);
/* The swarm name the client looks the model up under. */
const char *swarm_client_model_name(const swarm_client_t *c);

/*
 * Opens an inference session of up to max_length positions (0: the client's max_length): chooses
 * a chain (reported as SWARM_EVENT_ROUTE) and opens a session on each server of it. Caller closes
 * it with swarm_session_close. Local mode allows one session at a time.
 */
int swarm_session_open(swarm_client_t *c, int max_length, swarm_session_t **out);
void swarm_session_close(swarm_session_t *s);
/* Positions the session holds. */
int swarm_session_position(const swarm_session_t *s);

/* Runs T >= 1 new positions of hidden states x (T, H) through every block, in place. */
int swarm_session_step_hidden(swarm_session_t *s, float *x, int T);
/* Runs T >= 1 token ids; logits (V, may be NULL) get the last position's next-token logits. */
int swarm_session_step_tokens(swarm_session_t *s, const int32_t *ids, int T, float *logits);

typedef struct {
    float temperature;        /* <= 0: greedy (argmax, the first of equal values) */
    int top_k;                /* 0: off */
    float top_p;              /* 0 or 1: off */
    float repetition_penalty; /* 0 or 1: off */
    uint64_t seed;
} swarm_sampling_t;

/*
 * Generates up to max_new tokens after `prompt` (T ids; T may be 0 when the session already holds
 * a context) and calls on_token (may be NULL) with each new id as it comes; a non-zero return
 * from on_token stops generation there. Also stops after an end-of-sequence id (the model's
 * eos_token_id, and the eos_ids given; that id is reported first). sp NULL: greedy.
 * The session keeps the context: a later call continues it (chat turns). *n_out (may be NULL)
 * gets the number of ids reported.
 */
int swarm_session_generate(swarm_session_t *s, const int32_t *prompt, int T, int max_new,
                           const swarm_sampling_t *sp, const int32_t *eos_ids, int n_eos,
                           int (*on_token)(void *arg, int32_t id), void *arg, int *n_out);

/*
 * Hidden states x (B, T, H) through blocks [a, b) without a cache (positions 0..T-1), in place,
 * along a chain drawn at random with probability proportional to the servers' announced
 * throughput (as SWARM routes micro-batches; for training and batch scoring). A failed server is
 * banned and its part redone on another; after max_failures failures the call gives up.
 * Not available in local mode.
 */
int swarm_client_forward(swarm_client_t *c, int a, int b, float *x, int B, int T);
/*
 * The gradient of a loss with respect to the inputs x (B, T, H) of blocks [a, b), given grad =
 * dL/d(outputs) (B, T, H), which is overwritten with dL/dx. Weights are frozen. Along a random
 * chain as above: forward calls give each hop's inputs, then backward calls run in reverse (each
 * server recomputes its forward). Failures as above.
 */
int swarm_client_backward(swarm_client_t *c, int a, int b, const float *x, float *grad, int B, int T);

#endif
