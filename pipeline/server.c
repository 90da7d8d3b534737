/*
 * server.c - the RPC handlers of a block server and its device executor (see server.h).
 *
 * Ownership: a forward call owns one job_t (allocated at open, freed when both the call is over
 * and the job is back from the executor). An inference session owns its session_t, with one
 * embedded job_t, its KV caches (one per block of its span, created by the executor on the first
 * step), its input buffer and its reply buffer; it is freed when its call is over, no step is in
 * flight and the transport has released the reply buffer.
 */
#include "pipeline/server.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "kernels/device.h"
#include "pipeline/backward.h"
#include "pipeline/codec.h"
#include "pipeline/model.h"
#include "pipeline/server_check.h"
#include "sw_build_config.h"
#include "swarmd.pb-c.h"
#include "util/alloc.h"
#include "util/error.h"
#include "util/log.h"

#define ERR_MAX 256
#define SW_SERVER_LINGER_MS 2000 /* at shutdown, how long ended calls get to be delivered */

enum { JOB_STEP = 0, JOB_FORWARD = 1 }; /* also the priority class: steps first */

typedef struct session session_t;

typedef struct job {
    struct job *next;
    int kind;
    uint64_t cost, seq;       /* queue order: (kind, cost = B x T, seq) */
    sw_server_t *srv;
    session_t *sess;          /* JOB_STEP */
    sw_p2p_call_t *call;      /* JOB_FORWARD: NULL once the call is over */
    int queued;               /* with the executor (queue, running or done list) */
    int answered;             /* JOB_FORWARD: a reply or an error was sent, or nothing is due */
    /* the request, checked on the loop */
    int a, b, B, T, rollback; /* rollback: position to roll back to first, or -1 */
    sw_tensor_header_t in_h;
    int backward;             /* JOB_FORWARD of a "backward" call: grad_h's payload follows in_h's */
    sw_tensor_header_t grad_h;
    uint8_t *payload;         /* taken from the message; the executor frees it after decoding */
    size_t payload_len;
    sw_codec_opts_t out_opts;
    uint64_t step_id;
    /* the result, written by the executor */
    int status;
    char error[ERR_MAX];
    uint8_t *out;             /* JOB_FORWARD: owned, handed to the transport; JOB_STEP: sess->out */
    size_t out_len;
    sw_tensor_header_t out_h;
    int position;
} job_t;

struct session {
    sw_server_t *srv;
    session_t *prev, *next;
    sw_p2p_call_t *call;      /* NULL once the call is over */
    uv_timer_t timer;         /* idle timeout */
    uint64_t id;
    int opened, a, b, B, max_length, len;
    sw_serve_session_t shape; /* as opened (server_check.h) */
    uint64_t reserved;        /* cache tokens held */
    sw_kv_t **kv;             /* b - a; created by the executor */
    float *x;                 /* B x Tcap x H */
    size_t x_cap;             /* floats */
    uint8_t *out;
    size_t out_cap;
    int busy;                 /* the step job is with the executor */
    int out_busy;             /* the transport holds out (send_ref) */
    int ended;                /* our half is ended or due: no more steps */
    int client_ended;
    int closing;              /* the timer is closing; freed in its callback */
    job_t job;
};

struct sw_server {
    uv_loop_t *loop;
    sw_p2p_node_t *node;
    sw_model_t *model;
    const sw_model_config_t *cfg;
    sw_span_t **spans;        /* one per block: spans[i] is block start + i */
    int start, end, H;
    char name[128];
    const char *quant;
    const char *format;       /* Linear weights as loaded: "nf4", "int8", "bf16", ... */
    uint8_t (*digest)[32];    /* per block, sw_span_block_digest */
    ProtobufCBinaryData *digest_pb; /* views of digest[] for ServerInfo.block_digests */
    char device[160];         /* ServerInfo.device */
    sw_cuda_ctx_t *cuda;      /* NULL: the CPU */
    const sw_ops_t *ops;
    uint64_t max_cache, cache_used, next_session;
    uint32_t max_batch, idle_ms;
    uint32_t max_backward;    /* B x T of one backward call (see backward_tokens()) */
    session_t *sessions;
    int n_sessions;
    /* executor */
    pthread_t thread;
    int thread_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    job_t *queue, *done;      /* queue: sorted; done: any order */
    int stop;
    uint64_t seq;
    int jobs_out;             /* jobs with the executor (loop's count) */
    uv_async_t async;
    sw_codec_ctx_t *codec;    /* executor thread's */
    /* continuous batching: the executor thread's, sized at load; none for spans on a GPU */
    sw_fwd_batch_t *batch_ws; /* NULL: every step runs alone */
    job_t **batch, **run;     /* batch_rows each: the group taken, the members that run */
    sw_kv_t **batch_kv;
    float **batch_x;
    int *batch_T;
    int batch_rows;           /* rows of one pass: min(--max-batch-tokens, SW_SERVER_BATCH_ROWS) */
    int paused;               /* sw_server_pause: the executor starts no job (under mu) */
    uv_check_t wake;          /* wakes the executor once the loop has handled what it read */
    int wake_pending;         /* loop thread's: jobs were queued in this loop iteration */
    sw_server_stats_t stats;  /* under mu */
    /* shutdown */
    int n_forward;            /* forward calls not yet freed */
    int draining, drain_fired, drain_finished;
    int retiring;             /* sw_server_retire: the drain waits for the sessions to end */
    uv_timer_t drain_timer;
    void (*drain_done)(void *);
    void *drain_arg;
    int started, closing, handles_open;
    void (*close_done)(void *);
    void *close_arg;
};

static void srv_maybe_free(sw_server_t *s);

/* ======================================================================== executor thread */

/* Hidden states of job j through blocks [a, b) without a cache. */
static int run_forward(sw_server_t *s, job_t *j, float *x)
{
    for (int i = j->a; i < j->b; i++) {
        sw_kv_t *kv = NULL;
        int r = sw_kv_create(s->spans[i - s->start], j->B, j->T, &kv);
        if (r < 0)
            return r;
        r = sw_span_forward(s->spans[i - s->start], kv, s->ops, x, j->B, j->T);
        sw_kv_free(kv);
        if (r < 0)
            return r;
    }
    return 0;
}

static int encode_out(sw_server_t *s, job_t *j, const float *x, uint8_t *out, size_t cap)
{
    int64_t shape[3] = { j->B, j->T, s->H };
    int r = sw_codec_encode(s->codec, &j->out_opts, x, 3, shape, &j->out_h, out, cap);

    if (r == 0)
        j->out_len = (size_t)j->out_h.encoded_len;
    return r;
}

/* Encodes the reply tensor v (n values) of a unary call into j->out with its codec. */
static int reply_tensor(sw_server_t *s, job_t *j, const float *v, size_t n)
{
    size_t cap;
    int r;

    if ((r = sw_codec_encoded_bound(&j->out_opts, n, &cap)) < 0)
        return r;
    if (!(j->out = sw_malloc(cap ? cap : 1)))
        return sw_err(-ENOMEM, "no memory for the reply");
    return encode_out(s, j, v, j->out, cap);
}

static int exec_forward(sw_server_t *s, job_t *j)
{
    size_t n = (size_t)j->B * j->T * s->H;
    float *x = sw_malloc(n * sizeof(float));
    int r;

    if (!x)
        return sw_err(-ENOMEM, "no memory for %zu hidden-state values", n);
    r = sw_codec_decode(s->codec, &j->in_h, j->payload, j->payload_len, x, n);
    sw_free(j->payload);
    j->payload = NULL;
    if (r < 0)
        goto out;
    if ((r = run_forward(s, j, x)) < 0)
        goto out;
    r = reply_tensor(s, j, x, n);
out:
    sw_free(x);
    return r;
}

/*
 * "backward": decodes the inputs and the output gradient, runs the inputs forward through blocks
 * [a, b - 1) keeping each block's input (B x T x H floats per block), then takes the gradient
 * back block by block with sw_span_backward (which recomputes each block's forward).
 */
static int exec_backward(sw_server_t *s, job_t *j)
{
    size_t n = (size_t)j->B * j->T * s->H, hl = (size_t)j->in_h.encoded_len;
    int nb = j->b - j->a, r;
    float *xs = sw_malloc((size_t)nb * n * sizeof(float)), *g = sw_malloc(n * sizeof(float));

    if (!xs || !g) {
        r = sw_err(-ENOMEM, "no memory for the backward of %d blocks x %zu values; send fewer "
                   "tokens per call", nb, n);
        goto out;
    }
    r = sw_codec_decode(s->codec, &j->in_h, j->payload, hl, xs, n);
    if (r == 0)
        r = sw_codec_decode(s->codec, &j->grad_h, j->payload + hl, j->payload_len - hl, g, n);
    sw_free(j->payload);
    j->payload = NULL;
    if (r < 0)
        goto out;
    for (int i = 0; i + 1 < nb; i++) {
        sw_kv_t *kv = NULL;
        memcpy(xs + (size_t)(i + 1) * n, xs + (size_t)i * n, n * sizeof(float));
        if ((r = sw_kv_create(s->spans[j->a + i - s->start], j->B, j->T, &kv)) < 0)
            goto out;
        r = sw_span_forward(s->spans[j->a + i - s->start], kv, s->ops, xs + (size_t)(i + 1) * n,
                            j->B, j->T);
        sw_kv_free(kv);
        if (r < 0)
            goto out;
    }
    for (int i = nb - 1; i >= 0; i--)
        if ((r = sw_span_backward(s->spans[j->a + i - s->start], s->ops, xs + (size_t)i * n, g,
                                  g, j->B, j->T)) < 0)
            goto out;
    r = reply_tensor(s, j, g, n);
out:
    sw_free(xs);
    sw_free(g);
    return r;
}

/* A step's cache (created at its first step), input and rollback: what precedes its pass. */
static int step_prepare(sw_server_t *s, job_t *j)
{
    session_t *ss = j->sess;
    int nb = ss->b - ss->a, r = 0;

    if (!ss->kv[0]) {
        for (int i = 0; i < nb; i++)
            if ((r = sw_kv_create(s->spans[ss->a - s->start + i], ss->B, ss->max_length,
                                  &ss->kv[i])) < 0)
                return r;
    }
    if (j->T > 0) {
        r = sw_codec_decode(s->codec, &j->in_h, j->payload, j->payload_len, ss->x, ss->x_cap);
        sw_free(j->payload);
        j->payload = NULL;
        if (r < 0)
            return r;
    }
    if (j->rollback >= 0)
        for (int i = 0; i < nb; i++)
            if ((r = sw_kv_truncate(ss->kv[i], j->rollback)) < 0)
                return r;
    return 0;
}

/* What follows a step's pass: its reply's hidden states and the session's new length. */
static int step_output(sw_server_t *s, job_t *j)
{
    session_t *ss = j->sess;
    int r;

    if (j->T > 0 && (r = encode_out(s, j, ss->x, ss->out, ss->out_cap)) < 0)
        return r;
    j->position = sw_kv_len(ss->kv[0]);
    return 0;
}

/* A prepared step's pass alone through its blocks. */
static int step_pass(sw_server_t *s, job_t *j)
{
    session_t *ss = j->sess;
    int r;

    for (int i = 0; i < ss->b - ss->a && j->T > 0; i++)
        if ((r = sw_span_forward(s->spans[ss->a - s->start + i], ss->kv[i], s->ops, ss->x,
                                 ss->B, j->T)) < 0)
            return r;
    return 0;
}

static int exec_step(sw_server_t *s, job_t *j)
{
    int r;

    if ((r = step_prepare(s, j)) < 0 || (r = step_pass(s, j)) < 0)
        return r;
    return step_output(s, j);
}

/* A failed job keeps the reason for its reply (the detail is this thread's, so copy it now). */
static void job_failed(job_t *j, int status)
{
    const char *d = sw_err_detail();

    j->status = status;
    snprintf(j->error, sizeof(j->error), "%s", d[0] ? d : sw_strerror(status));
}

/* 1 when steps of min_rows..total rows, T <= max_T, may share one pass of total rows through
 * every block of [a, b) and each still get the bits of its pass alone (sw_span_batch_ok). */
static int batch_ok(const sw_server_t *s, int a, int b, int min_rows, int max_T, int total)
{
    for (int i = a; i < b; i++)
        if (!sw_span_batch_ok(s->spans[i - s->start], s->ops, min_rows, max_T, total))
            return 0;
    return 1;
}

/*
 * Continuous batching, with s->mu held, after step j was taken from the queue: takes the other
 * queued steps that may share j's pass - the same blocks [a, b), T > 0, the rows (B x T) of all
 * within batch_rows, and the group batch invariant (batch_ok) - in queue order, so fewest rows
 * first. s->batch[0..n) gets the group, j first; returns n (1: j runs alone).
 */
static int gather_steps(sw_server_t *s, job_t *j)
{
    const session_t *ss = j->sess;
    int n = 1, rows = j->B * j->T, min_rows = rows, max_T = j->T;

    if (!s->batch_ws || j->T < 1 || rows > s->batch_rows ||
        !batch_ok(s, ss->a, ss->b, rows, max_T, rows))
        return 1;
    s->batch[0] = j;
    for (job_t **p = &s->queue; *p && n < s->batch_rows && rows < s->batch_rows;) {
        job_t *q = *p;
        int qr = q->B * q->T, mr = qr < min_rows ? qr : min_rows;
        int mt = q->T > max_T ? q->T : max_T;

        if (q->kind != JOB_STEP) /* steps come first in the queue */
            break;
        if (q->sess->a == ss->a && q->sess->b == ss->b && q->T > 0 &&
            rows + qr <= s->batch_rows && batch_ok(s, ss->a, ss->b, mr, mt, rows + qr)) {
            *p = q->next;
            s->batch[n++] = q;
            rows += qr;
            min_rows = mr;
            max_T = mt;
            continue;
        }
        p = &q->next;
    }
    return n;
}

/*
 * Runs the steps s->batch[0..n) (same blocks [a, b)) in one pass per block: each is prepared on
 * its own (a failure there fails only that step), then sw_span_forward_batch carries all that
 * are left, and each reply is encoded. Returns how many shared the pass.
 */
static int exec_steps(sw_server_t *s, int n)
{
    const session_t *s0 = s->batch[0]->sess;
    int m = 0, r = 0, rows = 0;

    for (int k = 0; k < n; k++) {
        job_t *j = s->batch[k];
        sw_err_clear();
        if ((r = step_prepare(s, j)) < 0)
            job_failed(j, r);
        else
            s->run[m++] = j;
    }
    if (m == 1) { /* the others failed: the pass alone */
        sw_err_clear();
        if ((r = step_pass(s, s->run[0])) < 0 || (r = step_output(s, s->run[0])) < 0)
            job_failed(s->run[0], r);
    }
    if (m <= 1)
        return m;
    r = 0;
    for (int i = s0->a; i < s0->b && r == 0; i++) {
        for (int k = 0; k < m; k++) {
            s->batch_kv[k] = s->run[k]->sess->kv[i - s0->a];
            s->batch_x[k] = s->run[k]->sess->x;
            s->batch_T[k] = s->run[k]->T;
        }
        sw_err_clear();
        r = sw_span_forward_batch(s->spans[i - s->start], s->batch_kv, s->ops, s->batch_x,
                                  s->batch_T, m, s->batch_ws);
    }
    for (int k = 0; k < m; k++) {
        job_t *j = s->run[k];
        rows += j->B * j->T;
        if (r < 0)
            job_failed(j, r);
        else if ((j->status = step_output(s, j)) < 0)
            job_failed(j, j->status);
    }
    SW_LOG_D("serve", "one pass through blocks %d:%d carried %d sessions' steps (%d rows)",
             s0->a, s0->b, m, rows);
    return m;
}

/*
 * The executor: takes the first job of the queue (with the steps that can share its pass, see
 * gather_steps), runs it, hands it back to the loop.
 */
static void *executor_main(void *arg)
{
    sw_server_t *s = arg;

    for (;;) {
        job_t *j;
        int n = 1, shared = 0;

        pthread_mutex_lock(&s->mu);
        while (!s->stop && (!s->queue || s->paused))
            pthread_cond_wait(&s->cv, &s->mu);
        if (s->stop) {
            pthread_mutex_unlock(&s->mu);
            return NULL;
        }
        j = s->queue;
        s->queue = j->next;
        if (j->kind == JOB_STEP)
            n = gather_steps(s, j);
        pthread_mutex_unlock(&s->mu);

        if (n > 1) {
            shared = exec_steps(s, n); /* sets each member's status */
        } else {
            int r;
            sw_err_clear();
            r = j->kind == JOB_STEP ? exec_step(s, j)
                : j->backward       ? exec_backward(s, j)
                                    : exec_forward(s, j);
            j->status = 0;
            if (r < 0)
                job_failed(j, r);
        }

        pthread_mutex_lock(&s->mu);
        for (int k = 0; k < n; k++) {
            job_t *d = n > 1 ? s->batch[k] : j;
            d->next = s->done;
            s->done = d;
        }
        if (j->kind == JOB_STEP)
            s->stats.steps += (uint64_t)n;
        if (shared > 1) {
            s->stats.batched_passes++;
            s->stats.batched_steps += (uint64_t)shared;
            if ((uint32_t)shared > s->stats.max_batch)
                s->stats.max_batch = (uint32_t)shared;
        }
        pthread_mutex_unlock(&s->mu);
        uv_async_send(&s->async);
    }
}

/* ======================================================================== loop thread: queue */

/* Inserts j in queue order: steps before forward calls, then fewer tokens, then arrival. */
static void job_submit(sw_server_t *s, job_t *j)
{
    job_t **p;

    j->kind = j->sess ? JOB_STEP : JOB_FORWARD;
    j->cost = (uint64_t)j->B * (uint64_t)j->T * (j->backward ? 3 : 1); /* ~3 forwards */
    j->seq = s->seq++;
    j->status = 0;
    j->error[0] = '\0';
    j->queued = 1;
    s->jobs_out++;
    pthread_mutex_lock(&s->mu);
    for (p = &s->queue; *p; p = &(*p)->next) {
        job_t *q = *p;
        if (j->kind < q->kind || (j->kind == q->kind && j->cost < q->cost))
            break;
    }
    j->next = *p;
    *p = j;
    pthread_mutex_unlock(&s->mu);
    s->wake_pending = 1; /* the executor is woken in this iteration's check phase (on_wake) */
}

/*
 * Check phase of the loop (right after it handled the sockets it polled): wakes an idle
 * executor if jobs were queued. Deferring the wake-up to here costs a lone step microseconds
 * and lets the steps that arrived together (a client stepping many sessions at once) be queued
 * together, so the executor takes them as one batch instead of starting the first alone.
 */
static void on_wake(uv_check_t *h)
{
    sw_server_t *s = h->data;

    if (!s->wake_pending)
        return;
    s->wake_pending = 0;
    pthread_mutex_lock(&s->mu);
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* ======================================================================== loop thread: checks */

/* What requests are checked against now (pipeline/server_check.h). */
static void limits_of(const sw_server_t *s, sw_serve_limits_t *l)
{
    l->start = s->start;
    l->end = s->end;
    l->H = s->H;
    l->max_batch = s->max_batch;
    l->max_backward = s->max_backward;
    /* not the model's max_position_embeddings: transformers runs past it (dynamic RoPE rescales,
     * others extrapolate) and so does a local run; memory is bounded by the cache budget */
    l->max_position = SW_SERVER_MAX_LENGTH;
    l->max_cache = s->max_cache;
    l->cache_left = s->max_cache - s->cache_used;
}

/* A checked forward or backward call into its job. */
static void job_take_call(job_t *j, const sw_serve_call_t *c)
{
    j->a = c->a;
    j->b = c->b;
    j->B = c->B;
    j->T = c->T;
    j->in_h = c->in_h;
    j->grad_h = c->grad_h;
    j->out_opts = c->out_opts;
}

/* ======================================================================== loop thread: info */

void sw_server_info_fill(const sw_server_t *s, Swarmd__ServerInfo *mp)
{
    Swarmd__ServerInfo m = SWARMD__SERVER_INFO__INIT;
    size_t fr = 0, tot = 0;

    m.version = (char *)SW_VERSION;
    m.model = (char *)s->name;
    m.start_block = (uint32_t)s->start;
    m.end_block = (uint32_t)s->end;
    m.num_blocks = (uint32_t)s->cfg->num_layers;
    m.hidden_size = (uint32_t)s->H;
    m.dtype = (char *)"float32";
    m.quant = (char *)s->quant;
    m.format = (char *)s->format;
    m.cache_tokens_left = s->draining ? 0 : s->max_cache - s->cache_used;
    m.max_cache_tokens = s->max_cache;
    m.max_batch_tokens = s->max_batch;
    m.sessions = (uint32_t)s->n_sessions;
    m.draining = s->draining != 0;
    m.state = s->draining ? SWARMD__SERVER_INFO__STATE__OFFLINE : SWARMD__SERVER_INFO__STATE__ONLINE;
    m.public_name = (char *)"";
    m.address = (char *)"";
    m.weights_digest = s->digest_pb[0];
    m.n_block_digests = (size_t)(s->end - s->start);
    m.block_digests = s->digest_pb;
    m.device = (char *)s->device;
    if (s->cuda && sw_cuda_mem_info(s->cuda, &fr, &tot) == 0) {
        m.gpu_memory_free = fr;
        m.gpu_memory_total = tot;
    }
    *mp = m;
}

int sw_server_block_digest(const sw_server_t *s, int block, uint8_t out[32])
{
    if (block < s->start || block >= s->end)
        return -EINVAL;
    memcpy(out, s->digest[block - s->start], 32);
    return 0;
}

static void info_open(sw_p2p_call_t *call, const char *method, void *arg)
{
    sw_server_t *s = arg;
    sw_p2p_call_cbs_t cbs = { NULL, NULL, NULL, NULL };
    Swarmd__ServerInfo m;
    uint8_t *buf;
    size_t n;

    (void)method;
    sw_p2p_call_set_cbs(call, &cbs, NULL);
    sw_server_info_fill(s, &m);
    n = swarmd__server_info__get_packed_size(&m);
    buf = sw_malloc(n ? n : 1);
    if (buf && sw_p2p_call_send(call, buf, swarmd__server_info__pack(&m, buf), NULL, 0, 0) == 0)
        sw_p2p_call_end(call, 0, NULL);
    else
        sw_p2p_call_cancel(call);
    sw_free(buf);
}

/* ======================================================================== loop thread: forward */

static void drain_linger_check(sw_server_t *s);
static void drain_check(sw_server_t *s);

static void forward_free(job_t *j)
{
    sw_server_t *s = j->srv;

    s->n_forward--;
    sw_free(j);
    drain_linger_check(s);
}

static void forward_fail(job_t *j, int code, const char *why)
{
    if (j->call && !j->answered) {
        SW_LOG_D("serve", "forward refused: %s", why);
        sw_p2p_call_end(j->call, code, why);
    }
    j->answered = 1;
}

/* Unpacks a unary request's body and checks it against the limits into c (sw_err detail on
 * failure). */
typedef int (*unary_check_fn)(const sw_serve_limits_t *l, const sw_p2p_msg_t *msg, sw_serve_call_t *c);

static int check_forward(const sw_serve_limits_t *l, const sw_p2p_msg_t *msg, sw_serve_call_t *c)
{
    Swarmd__ForwardRequest *q = swarmd__forward_request__unpack(NULL, msg->body_len, msg->body);
    int r;

    if (!q)
        return sw_err(SW_EFORMAT, "malformed ForwardRequest");
    r = sw_serve_check_forward(l, q, msg->payload_len, c);
    swarmd__forward_request__free_unpacked(q, NULL);
    return r;
}

/* A "backward" request is checked as "forward" is (span, codec, each tensor's header against its
 * part of the payload, hidden size, --max-batch-tokens), and both tensors must have one shape. */
static int check_backward(const sw_serve_limits_t *l, const sw_p2p_msg_t *msg, sw_serve_call_t *c)
{
    Swarmd__BackwardRequest *q = swarmd__backward_request__unpack(NULL, msg->body_len, msg->body);
    int r;

    if (!q)
        return sw_err(SW_EFORMAT, "malformed BackwardRequest");
    r = sw_serve_check_backward(l, q, msg->payload_len, c);
    swarmd__backward_request__free_unpacked(q, NULL);
    return r;
}

/* The one message of a "forward" or "backward" call: checked, then queued with its payload. */
static void unary_request(job_t *j, sw_p2p_msg_t *msg, const char *method, unary_check_fn check)
{
    sw_serve_limits_t l;
    sw_serve_call_t c;
    int r;

    if (j->answered || j->queued) {
        char why[64];
        snprintf(why, sizeof(why), "%s takes exactly one request message", method);
        forward_fail(j, SW_EFORMAT, why);
        return;
    }
    sw_err_clear();
    limits_of(j->srv, &l);
    if ((r = check(&l, msg, &c)) < 0) {
        forward_fail(j, r, sw_err_detail());
        return;
    }
    job_take_call(j, &c);
    j->payload_len = msg->payload_len;
    j->payload = sw_p2p_msg_take_payload(msg);
    job_submit(j->srv, j);
}

static void forward_msg(sw_p2p_call_t *call, sw_p2p_msg_t *msg, void *arg)
{
    (void)call;
    unary_request(arg, msg, "forward", check_forward);
}

static void backward_msg(sw_p2p_call_t *call, sw_p2p_msg_t *msg, void *arg)
{
    (void)call;
    unary_request(arg, msg, "backward", check_backward);
}

static void forward_end(sw_p2p_call_t *call, int status, const char *error, void *arg)
{
    job_t *j = arg;

    if (!j->queued && !j->answered)
        forward_fail(j, SW_EFORMAT, "forward call ended without a request");
}

static void forward_done(sw_p2p_call_t *call, int status, void *arg)
{
    job_t *j = arg;

    j->call = NULL;
    if (!j->queued) {
        sw_free(j->payload);
        forward_free(j);
    }
}

/* A forward job is back: reply, then free it unless the call is still open. */
static void forward_finish(sw_server_t *s, job_t *j)
{
    j->queued = 0;
    if (j->call && !j->answered) {
        if (j->status < 0) {
            forward_fail(j, j->status, j->error);
        } else {
            Swarmd__ForwardResponse m = SWARMD__FORWARD_RESPONSE__INIT;
            Swarmd__BackwardResponse mb = SWARMD__BACKWARD_RESPONSE__INIT;
            uint8_t hb[SW_CODEC_MAX_HEADER], body[SW_CODEC_MAX_HEADER + 16];
            size_t hl = 0, bl;
            sw_codec_header_pack(&j->out_h, hb, sizeof(hb), &hl);
            m.hidden.data = mb.grad.data = hb;
            m.hidden.len = mb.grad.len = hl;
            bl = j->backward ? swarmd__backward_response__pack(&mb, body)
                             : swarmd__forward_response__pack(&m, body);
            j->answered = 1;
            if (sw_p2p_call_send(j->call, body, bl, j->out, j->out_len, SW_P2P_SEND_TAKE) == 0)
                sw_p2p_call_end(j->call, 0, NULL);
            j->out = NULL;
        }
    }
    sw_free(j->out);
    j->out = NULL;
    sw_free(j->payload);
    j->payload = NULL;
    if (!j->call)
        forward_free(j);
}

static void forward_open(sw_p2p_call_t *call, const char *method, void *arg)
{
    sw_server_t *s = arg;
    int backward = strcmp(method, "backward") == 0;
    sw_p2p_call_cbs_t cbs = { backward ? backward_msg : forward_msg, forward_end, forward_done,
                              NULL };
    job_t *j = sw_calloc(1, sizeof(*j));

    if (!j) {
        sw_p2p_call_cbs_t none = { NULL, NULL, NULL, NULL };
        sw_p2p_call_set_cbs(call, &none, NULL);
        sw_p2p_call_end(call, -ENOMEM, "server out of memory");
        return;
    }
    j->srv = s;
    j->call = call;
    j->rollback = -1;
    j->backward = backward;
    s->n_forward++;
    sw_p2p_call_set_cbs(call, &cbs, j);
    if (s->draining)
        forward_fail(j, SW_ESTATE, "server is shutting down; use another server");
}

/* ======================================================================== loop thread: inference */

static void session_closed(uv_handle_t *h)
{
    session_t *ss = h->data;
    sw_server_t *s = ss->srv;

    if (ss->prev)
        ss->prev->next = ss->next;
    else
        s->sessions = ss->next;
    if (ss->next)
        ss->next->prev = ss->prev;
    s->n_sessions--;
    sw_free(ss->kv);
    sw_free(ss->x);
    sw_free(ss->out);
    sw_free(ss);
    drain_check(s);
    drain_linger_check(s);
    srv_maybe_free(s);
}

/* Gives back the KV caches and the reservation once no step can use them. */
static void session_release_cache(session_t *ss)
{
    if (ss->busy)
        return;
    if (ss->kv)
        for (int i = 0; i < ss->b - ss->a; i++) {
            sw_kv_free(ss->kv[i]);
            ss->kv[i] = NULL;
        }
    ss->srv->cache_used -= ss->reserved;
    ss->reserved = 0;
}

static void session_maybe_free(session_t *ss)
{
    if (ss->call || ss->busy || ss->out_busy || ss->closing)
        return;
    session_release_cache(ss);
    ss->closing = 1;
    uv_close((uv_handle_t *)&ss->timer, session_closed);
}

/* Ends our half (status 0 or an error); no more steps run; the cache goes back when it can. */
static void session_end(session_t *ss, int code, const char *why)
{
    if (!ss->ended) {
        ss->ended = 1;
        if (code < 0)
            SW_LOG_D("serve", "session %llu ends: %s", (unsigned long long)ss->id, why);
        if (ss->call)
            sw_p2p_call_end(ss->call, code, code < 0 ? why : NULL);
        uv_timer_stop(&ss->timer);
    }
    session_release_cache(ss);
}

static void session_idle(uv_timer_t *t)
{
    session_t *ss = t->data;
    char why[96];

    snprintf(why, sizeof(why), "session idle for %u ms; open a new one", ss->srv->idle_ms);
    session_end(ss, -ETIMEDOUT, why);
}

/* Checks the opening fields and reserves the session's cache tokens and buffers. */
/* Checks the opening fields (sw_serve_check_open) and reserves the session's cache tokens and
 * buffers. */
static int session_setup(session_t *ss, const Swarmd__InferenceRequest *q)
{
    sw_server_t *s = ss->srv;
    sw_serve_limits_t l;
    int r;

    limits_of(s, &l);
    if ((r = sw_serve_check_open(&l, q, &ss->shape)) < 0)
        return r;
    ss->a = ss->shape.a;
    ss->b = ss->shape.b;
    ss->B = ss->shape.B;
    ss->max_length = ss->shape.max_length;
    ss->x_cap = ss->shape.x_cap;
    ss->out_cap = ss->shape.out_cap;
    ss->kv = sw_calloc((size_t)(ss->b - ss->a), sizeof(*ss->kv));
    ss->x = sw_malloc(ss->x_cap * sizeof(float));
    ss->out = sw_malloc(ss->out_cap);
    if (!ss->kv || !ss->x || !ss->out)
        return sw_err(-ENOMEM, "server out of memory for a session of %zu values", ss->x_cap);
    ss->reserved = ss->shape.need;
    s->cache_used += ss->shape.need;
    ss->opened = 1;
    return 0;
}

/* Checks a step (sw_serve_check_step) into the session's job. */
static int session_check_step(session_t *ss, const Swarmd__InferenceRequest *q, size_t payload_len)
{
    job_t *j = &ss->job;
    sw_serve_limits_t l;
    sw_serve_step_t st;
    int r;

    limits_of(ss->srv, &l);
    if ((r = sw_serve_check_step(&l, &ss->shape, ss->len, q, payload_len, &st)) < 0)
        return r;
    j->B = st.B;
    j->T = st.T;
    j->rollback = st.rollback;
    j->in_h = st.in_h;
    j->out_opts = st.out_opts;
    return 0;
}

static void inference_msg(sw_p2p_call_t *call, sw_p2p_msg_t *msg, void *arg)
{
    session_t *ss = arg;
    Swarmd__InferenceRequest *q;
    int r;

    if (ss->ended)
        return;
    uv_timer_again(&ss->timer);
    q = swarmd__inference_request__unpack(NULL, msg->body_len, msg->body);
    if (!q) {
        session_end(ss, SW_EFORMAT, "malformed InferenceRequest");
        return;
    }
    sw_err_clear();
    r = ss->opened ? 0 : session_setup(ss, q);
    if (r == 0)
        r = session_check_step(ss, q, msg->payload_len);
    ss->job.step_id = q->step_id;
    swarmd__inference_request__free_unpacked(q, NULL);
    if (r < 0) {
        session_end(ss, r, sw_err_detail());
        return;
    }
    ss->job.payload_len = msg->payload_len;
    ss->job.payload = sw_p2p_msg_take_payload(msg);
    ss->busy = 1;
    sw_p2p_call_pause(call, 1); /* one step at a time: resumed when its reply is out */
    job_submit(ss->srv, &ss->job);
}

static void inference_end(sw_p2p_call_t *call, int status, const char *error, void *arg)
{
    session_t *ss = arg;

    ss->client_ended = 1;
    if (!ss->busy && !ss->out_busy)
        session_end(ss, 0, NULL);
}

static void inference_done(sw_p2p_call_t *call, int status, void *arg)
{
    session_t *ss = arg;

    ss->call = NULL;
    ss->ended = 1;
    uv_timer_stop(&ss->timer);
    session_maybe_free(ss);
}

/* The transport is done with the reply buffer: take the next step (or finish). */
static void inference_released(void *payload, void *arg)
{
    session_t *ss = arg;

    ss->out_busy = 0;
    if (ss->call && !ss->ended) {
        if (ss->client_ended)
            session_end(ss, 0, NULL);
        else
            sw_p2p_call_pause(ss->call, 0);
    }
    session_maybe_free(ss);
}

static void step_finish(sw_server_t *s, job_t *j)
{
    session_t *ss = j->sess;
    Swarmd__InferenceResponse m = SWARMD__INFERENCE_RESPONSE__INIT;
    uint8_t hb[SW_CODEC_MAX_HEADER], body[SW_CODEC_MAX_HEADER + 32];
    size_t hl = 0, bl;
    int r;

    j->queued = 0;
    ss->busy = 0;
    sw_free(j->payload);
    j->payload = NULL;
    if (!ss->call || ss->ended) {
        session_release_cache(ss);
        session_maybe_free(ss);
        return;
    }
    if (j->status < 0) {
        session_end(ss, j->status, j->error);
        return;
    }
    ss->len = j->position;
    if (j->T > 0) {
        sw_codec_header_pack(&j->out_h, hb, sizeof(hb), &hl);
        m.hidden.data = hb;
        m.hidden.len = hl;
    }
    m.position = (uint32_t)j->position;
    m.step_id = j->step_id;
    bl = swarmd__inference_response__pack(&m, body);
    ss->out_busy = 1;
    r = sw_p2p_call_send_ref(ss->call, body, bl, ss->out, j->T > 0 ? j->out_len : 0,
                             inference_released, ss);
    if (r < 0)
        session_end(ss, r, "cannot send the reply");
}

static void inference_open(sw_p2p_call_t *call, const char *method, void *arg)
{
    sw_server_t *s = arg;
    sw_p2p_call_cbs_t cbs = { inference_msg, inference_end, inference_done, NULL };
    session_t *ss;

    if (s->draining || s->closing || !(ss = sw_calloc(1, sizeof(*ss)))) {
        sw_p2p_call_cbs_t none = { NULL, NULL, NULL, NULL };
        sw_p2p_call_set_cbs(call, &none, NULL);
        sw_p2p_call_end(call, s->draining ? SW_ESTATE : -ENOMEM,
                        s->draining ? "server is shutting down; open the session elsewhere"
                                    : "server out of memory");
        return;
    }
    ss->srv = s;
    ss->call = call;
    ss->id = ++s->next_session;
    ss->job.srv = s;
    ss->job.sess = ss;
    ss->job.rollback = -1;
    uv_timer_init(s->loop, &ss->timer);
    ss->timer.data = ss;
    uv_timer_start(&ss->timer, session_idle, s->idle_ms, s->idle_ms);
    ss->next = s->sessions;
    if (s->sessions)
        s->sessions->prev = ss;
    s->sessions = ss;
    s->n_sessions++;
    sw_p2p_call_set_cbs(call, &cbs, ss);
}

/* ======================================================================== loop thread: results */

static void drain_check(sw_server_t *s);

static void on_async(uv_async_t *a)
{
    sw_server_t *s = a->data;
    job_t *list;

    pthread_mutex_lock(&s->mu);
    list = s->done;
    s->done = NULL;
    pthread_mutex_unlock(&s->mu);
    while (list) {
        job_t *j = list;
        list = j->next;
        s->jobs_out--;
        if (j->kind == JOB_STEP)
            step_finish(s, j);
        else
            forward_finish(s, j);
    }
    drain_check(s);
}

/* ======================================================================== loop thread: lifecycle */

static const char *quant_label(sw_quant_t q)
{
    return q == SW_QUANT_NF4 ? "nf4" : q == SW_QUANT_INT8 ? "int8" : "none";
}

static void srv_free_all(sw_server_t *s)
{
    for (int i = 0; s->spans && i < s->end - s->start; i++)
        sw_span_free(s->spans[i]);
    sw_free(s->spans);
    sw_cuda_ctx_free(s->cuda);
    sw_free(s->digest);
    sw_free(s->digest_pb);
    sw_model_close(s->model);
    sw_codec_ctx_free(s->codec);
    sw_fwd_batch_free(s->batch_ws);
    sw_free(s->batch);
    sw_free(s->run);
    sw_free(s->batch_kv);
    sw_free(s->batch_x);
    sw_free(s->batch_T);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    sw_free(s);
}

static const char *dtype_format(sw_dtype_t dt)
{
    return dt == SW_DTYPE_NF4 ? "nf4" : dt == SW_DTYPE_I8 ? "int8" : sw_dtype_name(dt);
}

/*
 * The most tokens (B x T) one backward call may carry within SW_SERVER_BACKWARD_BUDGET bytes: a
 * backward over the whole span keeps every block's input and the output gradient (M x H floats
 * each), a cache for the forward recomputation (2 x NKV x HD floats per token) and one block's
 * backward workspace (sw_span_backward_bytes). A hostile peer's large call is then refused,
 * not an allocation the kernel might answer by killing the daemon. At most max_batch.
 */
static uint32_t backward_tokens(const sw_server_t *s)
{
    uint32_t lo = 0, hi = s->max_batch;
    int nb = s->end - s->start;

    while (lo < hi) {
        uint32_t mid = lo + (hi - lo + 1) / 2;
        size_t ws = 0;
        uint64_t need = (uint64_t)mid * (uint64_t)s->H * 4 * (uint64_t)(nb + 1) +
                        (uint64_t)mid * 2 * (uint64_t)s->cfg->num_kv_heads * (uint64_t)s->cfg->head_dim * 4;
        if (sw_span_backward_bytes(s->spans[0], 1, (int)mid, &ws) < 0 ||
            need + ws > SW_SERVER_BACKWARD_BUDGET)
            hi = mid - 1;
        else
            lo = mid;
    }
    return lo ? lo : 1;
}

int sw_server_load(const sw_server_opts_t *o, sw_server_t **out)
{
    sw_server_t *s;
    const char *base;
    int r, L, n;

    if ((r = sw_device_check(&o->device)) < 0)
        return r;
    s = sw_calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->ops = o->ops ? o->ops : &sw_ops_cpu;
    s->max_cache = o->max_cache_tokens ? o->max_cache_tokens : SW_SERVER_DEFAULT_CACHE_TOKENS;
    s->max_batch = o->max_batch_tokens ? o->max_batch_tokens : SW_SERVER_DEFAULT_BATCH_TOKENS;
    s->idle_ms = o->idle_timeout_ms ? o->idle_timeout_ms : SW_SERVER_DEFAULT_IDLE_MS;
    s->quant = quant_label(o->load.quant);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    base = strrchr(o->model_dir, '/');
    base = base && base[1] ? base + 1 : o->model_dir;
    snprintf(s->name, sizeof(s->name), "%s", base);
    if (o->device.kind == SW_DEVICE_CUDA) {
        char gpu[128];
        if ((r = sw_cuda_device_name(o->device.index, gpu, sizeof(gpu))) < 0 ||
            (r = sw_cuda_ctx_create(o->device.index, &s->cuda)) < 0)
            goto err;
        snprintf(s->device, sizeof(s->device), "%s", gpu);
    } else {
        snprintf(s->device, sizeof(s->device), "%s", o->device_name ? o->device_name : "cpu");
    }
    if ((r = sw_model_open(o->model_dir, &s->model)) < 0)
        goto err;
    s->cfg = sw_model_config(s->model);
    s->H = s->cfg->hidden_size;
    L = s->cfg->num_layers;
    if (o->start < 0 || o->end > L || o->start >= o->end) {
        r = sw_err(SW_EUSAGE, "blocks %d:%d are not a span of this model's %d blocks (0:%d)",
                   o->start, o->end, L, L);
        goto err;
    }
    s->start = o->start;
    s->end = o->end;
    n = s->end - s->start;
    s->spans = sw_calloc((size_t)n, sizeof(*s->spans));
    s->digest = sw_calloc((size_t)n, sizeof(*s->digest));
    s->digest_pb = sw_calloc((size_t)n, sizeof(*s->digest_pb));
    if (!s->spans || !s->digest || !s->digest_pb) {
        r = -ENOMEM;
        goto err;
    }
    /* one span per block, so that any sub-span runs without copying weights; each block's
     * digest is taken from its host copy, before it moves to the GPU */
    for (int i = s->start; i < s->end; i++) {
        sw_span_t **sp = &s->spans[i - s->start];
        if ((r = sw_span_load(s->model, i, i + 1, &o->load, sp)) < 0 ||
            (r = sw_span_block_digest(*sp, i, s->digest[i - s->start])) < 0)
            goto err;
        s->digest_pb[i - s->start].data = s->digest[i - s->start];
        s->digest_pb[i - s->start].len = 32;
        if (s->cuda && (r = sw_span_to_cuda(*sp, s->cuda)) < 0)
            goto err;
    }
    s->format = dtype_format(sw_span_weight_dtype(s->spans[0]));
    if (!s->cuda) { /* continuous batching on the CPU: sized once, here */
        size_t nr;
        s->batch_rows = s->max_batch < SW_SERVER_BATCH_ROWS ? (int)s->max_batch
                                                           : SW_SERVER_BATCH_ROWS;
        nr = (size_t)s->batch_rows;
        if ((r = sw_fwd_batch_create(s->cfg, s->batch_rows, &s->batch_ws)) < 0)
            goto err;
        s->batch = sw_calloc(nr, sizeof(*s->batch));
        s->run = sw_calloc(nr, sizeof(*s->run));
        s->batch_kv = sw_calloc(nr, sizeof(*s->batch_kv));
        s->batch_x = sw_calloc(nr, sizeof(*s->batch_x));
        s->batch_T = sw_calloc(nr, sizeof(*s->batch_T));
        if (!s->batch || !s->run || !s->batch_kv || !s->batch_x || !s->batch_T) {
            r = sw_err(-ENOMEM, "no memory for the batching tables");
            goto err;
        }
    }
    if (o->load.quant == SW_QUANT_AUTO)
        s->quant = "as stored";
    s->max_backward = o->max_backward_tokens ? o->max_backward_tokens : backward_tokens(s);
    SW_LOG_I("serve", "backward calls take at most %u tokens (B x T)%s", s->max_backward,
             o->max_backward_tokens ? "" : ", what 1 GiB holds");
    if ((r = sw_codec_ctx_new(&s->codec)) < 0)
        goto err;
    *out = s;
    return 0;
err:
    srv_free_all(s);
    return r;
}

int sw_server_start(sw_server_t *s, uv_loop_t *loop, sw_p2p_node_t *node)
{
    int r;

    s->loop = loop;
    s->node = node;
    if ((r = uv_async_init(loop, &s->async, on_async)) < 0)
        return sw_err(r, "uv_async_init: %s", uv_strerror(r));
    s->started = 1;
    s->async.data = s;
    s->handles_open = 1;
    uv_timer_init(loop, &s->drain_timer);
    s->drain_timer.data = s;
    s->handles_open++;
    uv_check_init(loop, &s->wake);
    s->wake.data = s;
    uv_check_start(&s->wake, on_wake);
    uv_unref((uv_handle_t *)&s->wake); /* it keeps no loop alive */
    s->handles_open++;
    if ((r = pthread_create(&s->thread, NULL, executor_main, s)) != 0)
        return sw_err(-r, "cannot start the executor thread");
    s->thread_started = 1;
    if ((r = sw_p2p_node_handle(node, "info", info_open, s)) < 0 ||
        (r = sw_p2p_node_handle(node, "forward", forward_open, s)) < 0 ||
        (r = sw_p2p_node_handle(node, "backward", forward_open, s)) < 0 ||
        (r = sw_p2p_node_handle(node, "inference", inference_open, s)) < 0)
        return r;
    return 0;
}

int sw_server_new(uv_loop_t *loop, sw_p2p_node_t *node, const sw_server_opts_t *o,
                  sw_server_t **out)
{
    sw_server_t *s;
    int r;

    if ((r = sw_server_load(o, &s)) < 0)
        return r;
    if ((r = sw_server_start(s, loop, node)) < 0) {
        /* handles are closed by sw_server_close; the caller runs the loop for it */
        sw_server_close(s, NULL, NULL);
        return r;
    }
    *out = s;
    return 0;
}

const char *sw_server_model_name(const sw_server_t *s)
{
    return s->name;
}

int sw_server_span(const sw_server_t *s, int *start, int *end)
{
    *start = s->start;
    *end = s->end;
    return s->end - s->start;
}

/* Seconds of the monotonic clock between two uv_hrtime() readings. */
static double secs(uint64_t t0, uint64_t t1)
{
    return t1 > t0 ? (double)(t1 - t0) * 1e-9 : 1e-9;
}

int sw_server_measure(sw_server_t *s, double budget_s, double *forward_rps, double *inference_rps)
{
    const sw_span_t *sp = s->spans[0];
    int Tf = s->max_batch < 256 ? (int)s->max_batch : 256, nd = 0, nf = 0, r = 0, cap;
    float *x;
    sw_kv_t *kv = NULL;
    uint64_t t0, t1;

    *forward_rps = *inference_rps = 0.0;
    if (s->started)
        return sw_err(SW_ESTATE, "measure a server before it starts serving");
    if (!(budget_s > 0))
        budget_s = 1.0;
    cap = Tf > 101 ? Tf : 101;
    if (cap > s->cfg->max_position_embeddings)
        cap = s->cfg->max_position_embeddings;
    if (Tf > cap)
        Tf = cap;
    x = sw_calloc((size_t)cap * s->H, sizeof(float));
    if (!x)
        return -ENOMEM;
    /* decode: one block, B = 1, T = 1 over a growing cache (Petals: 100 steps); one warm-up */
    if ((r = sw_kv_create(sp, 1, cap, &kv)) < 0)
        goto out;
    t0 = t1 = uv_hrtime();
    for (int i = 0; i < cap && r >= 0; i++) {
        for (int k = 0; k < s->H; k++)
            x[k] = 0.01f * (float)(((k + i) % 7) - 3);
        r = sw_span_forward(sp, kv, s->ops, x, 1, 1);
        if (i == 0)
            t0 = uv_hrtime();
        else
            nd++;
        t1 = uv_hrtime();
        if (nd >= 100 || (nd >= 2 && secs(t0, t1) > budget_s / 2))
            break;
    }
    sw_kv_free(kv);
    kv = NULL;
    if (r < 0)
        goto out;
    *inference_rps = nd > 0 ? nd / secs(t0, t1) : 0.0;
    /* forward: one block, B = 1, Tf tokens without a cache (Petals: 1024 tokens, 10 passes) */
    if ((r = sw_kv_create(sp, 1, Tf, &kv)) < 0)
        goto out;
    t0 = t1 = uv_hrtime();
    for (int i = 0; i < 11 && r >= 0; i++) {
        for (size_t k = 0; k < (size_t)Tf * s->H; k++)
            x[k] = 0.01f * (float)((int)(k % 7) - 3);
        sw_kv_reset(kv);
        r = sw_span_forward(sp, kv, s->ops, x, 1, Tf);
        if (i == 0)
            t0 = uv_hrtime();
        else
            nf++;
        t1 = uv_hrtime();
        if (nf >= 2 && secs(t0, t1) > budget_s / 2)
            break;
    }
    if (r >= 0)
        *forward_rps = nf > 0 ? (double)nf * Tf / secs(t0, t1) : 0.0;
out:
    sw_kv_free(kv);
    sw_free(x);
    return r;
}

int sw_server_hidden_size(const sw_server_t *s)
{
    return s->H;
}

void sw_server_stats(sw_server_t *s, sw_server_stats_t *out)
{
    pthread_mutex_lock(&s->mu);
    *out = s->stats;
    out->queued = 0;
    for (const job_t *j = s->queue; j; j = j->next)
        out->queued++;
    pthread_mutex_unlock(&s->mu);
    out->batch_rows = (uint32_t)s->batch_rows;
}

void sw_server_pause(sw_server_t *s, int on)
{
    pthread_mutex_lock(&s->mu);
    s->paused = on != 0;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* The drain is over: every call is gone, or the linger time has passed. */
static void drain_finish(sw_server_t *s)
{
    if (s->drain_finished)
        return;
    s->drain_finished = 1;
    uv_timer_stop(&s->drain_timer);
    if (s->drain_done)
        s->drain_done(s->drain_arg);
}

static void drain_linger_check(sw_server_t *s)
{
    if (s->drain_fired && !s->sessions && !s->n_forward)
        drain_finish(s);
}

static void linger_timeout(uv_timer_t *t)
{
    drain_finish(t->data);
}

/* Steps are done (or the grace is over): end every session, then give the transport up to
 * SW_SERVER_LINGER_MS to deliver the ends and replies before the node closes. */
static void drain_fire(sw_server_t *s)
{
    if (s->drain_fired)
        return;
    s->drain_fired = 1;
    uv_timer_stop(&s->drain_timer);
    for (session_t *ss = s->sessions; ss; ss = ss->next)
        session_end(ss, SW_ESTATE, "server is shutting down; reopen the session elsewhere");
    uv_timer_start(&s->drain_timer, linger_timeout, SW_SERVER_LINGER_MS, 0);
    drain_linger_check(s);
}

static void drain_check(sw_server_t *s)
{
    if (s->draining && !s->drain_fired && s->jobs_out == 0 && !(s->retiring && s->sessions))
        drain_fire(s);
}

static void drain_timeout(uv_timer_t *t)
{
    sw_server_t *s = t->data;

    SW_LOG_W("serve", "grace period over with %d step(s) unfinished; stopping anyway", s->jobs_out);
    drain_fire(s);
}

void sw_server_retire(sw_server_t *s, uint32_t grace_ms, void (*done)(void *arg), void *arg)
{
    if (!s->draining)
        s->retiring = 1;
    sw_server_drain(s, grace_ms, done, arg);
}

void sw_server_drain(sw_server_t *s, uint32_t grace_ms, void (*done)(void *arg), void *arg)
{
    if (s->draining) {
        /* a retiring server told to shut down: sessions get no more time than the steps in
         * flight, at most grace_ms from now; the first caller's done still runs */
        if (s->retiring && !s->drain_fired) {
            s->retiring = 0;
            if (uv_timer_get_due_in(&s->drain_timer) > grace_ms)
                uv_timer_start(&s->drain_timer, drain_timeout, grace_ms, 0);
            drain_check(s);
        }
        return;
    }
    s->draining = 1;
    s->drain_done = done;
    s->drain_arg = arg;
    uv_timer_start(&s->drain_timer, drain_timeout, grace_ms, 0);
    drain_check(s);
}

static void srv_maybe_free(sw_server_t *s)
{
    void (*done)(void *) = s->close_done;
    void *arg = s->close_arg;

    if (!s->closing || s->handles_open || s->sessions)
        return;
    srv_free_all(s);
    if (done)
        done(arg);
}

static void handle_closed(uv_handle_t *h)
{
    sw_server_t *s = h->data;

    s->handles_open--;
    srv_maybe_free(s);
}

void sw_server_close(sw_server_t *s, void (*done)(void *arg), void *arg)
{
    job_t *list[2];

    s->closing = 1;
    s->close_done = done;
    s->close_arg = arg;
    if (!s->started) { /* loaded, never started: nothing is bound to a loop */
        srv_free_all(s);
        if (done)
            done(arg);
        return;
    }
    if (s->thread_started) {
        pthread_mutex_lock(&s->mu);
        s->stop = 1;
        pthread_cond_signal(&s->cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->thread, NULL);
        s->thread_started = 0;
    }
    /* the executor is gone: hand back what it finished and what it never started */
    list[0] = s->done;
    list[1] = s->queue;
    s->done = s->queue = NULL;
    for (int k = 0; k < 2; k++) {
        while (list[k]) {
            job_t *j = list[k];
            list[k] = j->next;
            s->jobs_out--;
            if (k == 1) {
                j->status = SW_ESTATE;
                snprintf(j->error, sizeof(j->error), "server is shutting down");
            }
            if (j->kind == JOB_STEP)
                step_finish(s, j);
            else
                forward_finish(s, j);
        }
    }
    for (session_t *ss = s->sessions; ss; ss = ss->next)
        session_end(ss, SW_ESTATE, "server is shutting down");
    uv_close((uv_handle_t *)&s->async, handle_closed);
    uv_close((uv_handle_t *)&s->drain_timer, handle_closed);
    uv_close((uv_handle_t *)&s->wake, handle_closed);
}
