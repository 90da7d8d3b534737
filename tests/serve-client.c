/*
 * serve-client.c - `swarmd serve` with real daemons on loopback. Starts three servers on the
 * llama-gqa-llama3 fixture (A: blocks 0:2, B: 2:4, C: 0:4 with a 1 s session timeout), and as a
 * client holding the embeddings and LM head in-process checks:
 *   - info reports the span, hidden size and cache budget;
 *   - forward through A then B (and through sub-spans) equals the in-process span forward within
 *     1e-6 rel-L2 (codec none), with identical per-position argmax; other codecs decode;
 *   - an inference session through A and B generating 16 greedy tokens equals
 *     `swarmd generate --local` and in-process greedy decoding;
 *   - a rollback (start_from_position) then continuing equals local decoding of the corrected
 *     sequence;
 *   - four sessions stepping in lockstep through A and B (every step of a round sent before
 *     any reply is awaited, so the executors may batch them) each give the greedy ids of their
 *     prompt decoded alone in-process;
 *   - bad requests each get their error (wrong span, wrong hidden size, malformed header, body or
 *     payload, over-long session, exhausted cache, step past max_length, rollback past the end,
 *     wrong batch) and the server keeps serving;
 *   - backward (input gradients) through B then A (the chain rule across servers), and through
 *     all four blocks on C, equals the in-process sw_span_backward of the whole span within
 *     1e-5 rel-L2 (codec none; bf16 replies within bf16 rounding); bad backward requests (wrong
 *     span, mismatched shapes, split payload lengths, missing or malformed headers, batch limit)
 *     each get their error and the server keeps serving;
 *   - an idle session is ended by the server; a SIGTERM'd server ends its sessions and exits 0
 *     (all three are stopped so; under ASan that checks the servers for leaks).
 * Needs SWARMD and SW_SOURCE_ROOT. Every wait is bounded; children are killed on exit.
 */
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <uv.h>

#include "kernels/ops.h"
#include "p2p/identity.h"
#include "p2p/rpc.h"
#include "pipeline/backward.h"
#include "pipeline/codec.h"
#include "pipeline/local.h"
#include "pipeline/model.h"
#include "swarmd.pb-c.h"
#include "test.h"
#include "util/error.h"

#define WAIT_MS 20000
#define MAX_CACHE 256
#define NSRV 3

static char tmpdir[256], model_dir[1024];
static const char *swarmd_bin;
static pid_t child[NSRV];
static char srv_addr[NSRV][512];

/* ======================================================================== child processes */

static void kill_children(void)
{
    for (int i = 0; i < NSRV; i++)
        if (child[i] > 0) {
            kill(child[i], SIGKILL);
            waitpid(child[i], NULL, 0);
            child[i] = 0;
        }
}

static void on_alarm(int sig)
{
    (void)sig;
    for (int i = 0; i < NSRV; i++)
        if (child[i] > 0)
            kill(child[i], SIGKILL);
    static const char msg[] = "serve-client: watchdog expired\n";
    if (write(2, msg, sizeof(msg) - 1) < 0) {}
    _exit(1);
}

/* Starts `swarmd serve` for blocks layers with extra options; waits (bounded) for its
 * "serving ... at ADDR" line and stores ADDR. */
static int start_server(int i, const char *layers, const char *extra1, const char *extra2)
{
    int fds[2];
    char idp[300], errp[300], line[1024];
    size_t have = 0;
    uint64_t end = uv_hrtime() + 30000ull * 1000000ull;

    snprintf(idp, sizeof(idp), "%s/id%d", tmpdir, i);
    snprintf(errp, sizeof(errp), "%s/server%d.log", tmpdir, i);
    if (pipe(fds) < 0)
        return -errno;
    child[i] = fork();
    if (child[i] < 0)
        return -errno;
    if (child[i] == 0) {
        char *argv[24];
        int n = 0, e = open(errp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(fds[1], 1);
        if (e >= 0)
            dup2(e, 2);
        close(fds[0]);
        argv[n++] = (char *)swarmd_bin;
        argv[n++] = (char *)"--identity";
        argv[n++] = idp;
        if (i == 2 && getenv("SW_TEST_KEEP")) argv[n++] = (char *)"-vv";
        argv[n++] = (char *)"serve";
        argv[n++] = (char *)"--model";
        argv[n++] = model_dir;
        argv[n++] = (char *)"--serve-layers";
        argv[n++] = (char *)layers;
        argv[n++] = (char *)"--listen";
        argv[n++] = (char *)"127.0.0.1:0";
        argv[n++] = (char *)"--max-cache-tokens";
        argv[n++] = (char *)"256";
        argv[n++] = (char *)"--max-batch-tokens";
        argv[n++] = (char *)"512";
        argv[n++] = (char *)"--grace";
        argv[n++] = (char *)"5";
        if (extra1)
            argv[n++] = (char *)extra1;
        if (extra2)
            argv[n++] = (char *)extra2;
        argv[n] = NULL;
        execv(swarmd_bin, argv);
        _exit(127);
    }
    close(fds[1]);
    while (uv_hrtime() < end) {
        struct pollfd p = { fds[0], POLLIN, 0 };
        ssize_t k;
        char *nl, *at;
        if (poll(&p, 1, 200) <= 0)
            continue;
        k = read(fds[0], line + have, sizeof(line) - 1 - have);
        if (k <= 0)
            break;
        have += (size_t)k;
        line[have] = '\0';
        if (!(nl = strchr(line, '\n')))
            continue;
        *nl = '\0';
        at = strstr(line, " at ");
        close(fds[0]);
        if (strncmp(line, "serving blocks ", 15) != 0 || !at)
            return sw_err(SW_EFORMAT, "unexpected first line '%s'", line);
        snprintf(srv_addr[i], sizeof(srv_addr[i]), "%s", at + 4);
        return 0;
    }
    close(fds[0]);
    return sw_err(-ETIMEDOUT, "server %d printed no address (see %s)", i, errp);
}

/* ======================================================================== client node */

static uv_loop_t loop;
static sw_identity_t me;
static sw_p2p_node_t *node;
static sw_p2p_conn_t *conn[NSRV];
static sw_model_t *model;
static sw_head_t *head;
static const sw_model_config_t *cfg;
static int H, V;

static void tick_cb(uv_timer_t *t) { (void)t; }

static int run_until(const int *flag, uint64_t ms)
{
    uv_timer_t tick;
    uint64_t end = uv_hrtime() + ms * 1000000ull;

    uv_timer_init(&loop, &tick);
    uv_timer_start(&tick, tick_cb, 20, 20);
    while (!*flag && uv_hrtime() < end)
        uv_run(&loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
    return *flag;
}

typedef struct {
    int connected, status;
    sw_p2p_conn_t *c;
} conn_wait_t;

static void on_connected(sw_p2p_conn_t *c, int status, void *arg)
{
    conn_wait_t *w = arg;

    w->c = c;
    w->status = status;
    w->connected = 1;
}

#define MAXMSG 64
/* What a call brought back. */
typedef struct {
    sw_p2p_call_t *call;
    int done, status, ended, end_status, nmsg;
    char error[512];
    uint8_t *body[MAXMSG], *payload[MAXMSG];
    size_t blen[MAXMSG], plen[MAXMSG];
} rec_t;

static void rec_msg(sw_p2p_call_t *k, sw_p2p_msg_t *m, void *arg)
{
    rec_t *r = arg;

    if (r->nmsg >= MAXMSG)
        return;
    r->body[r->nmsg] = sw_malloc(m->body_len ? m->body_len : 1);
    memcpy(r->body[r->nmsg], m->body, m->body_len);
    r->blen[r->nmsg] = m->body_len;
    r->plen[r->nmsg] = m->payload_len;
    r->payload[r->nmsg] = sw_p2p_msg_take_payload(m);
    r->nmsg++;
}

static void rec_end(sw_p2p_call_t *k, int status, const char *error, void *arg)
{
    rec_t *r = arg;

    r->ended = 1;
    r->end_status = status;
    snprintf(r->error, sizeof(r->error), "%s", error ? error : "");
    if (status < 0)
        sw_p2p_call_end(k, 0, NULL); /* the server gave up on the call: end ours too */
}

static void rec_done(sw_p2p_call_t *k, int status, void *arg)
{
    rec_t *r = arg;

    r->done = 1;
    r->status = status;
    r->call = NULL;
}

static const sw_p2p_call_cbs_t rec_cbs = { rec_msg, rec_end, rec_done, NULL };

static void rec_free(rec_t *r)
{
    for (int i = 0; i < r->nmsg; i++) {
        sw_free(r->body[i]);
        sw_free(r->payload[i]);
    }
    memset(r, 0, sizeof(*r));
}

/* Opens a call on server i and sends one message (and, if end, ends our half). */
static int call_open(int i, const char *method, rec_t *r)
{
    memset(r, 0, sizeof(*r));
    return sw_p2p_call_start(conn[i], method, 30000, &rec_cbs, r, &r->call);
}

/* Unary call: one message, end, wait for the call to complete. */
static int unary(int i, const char *method, const void *body, size_t blen, const void *payload,
                 size_t plen, rec_t *r)
{
    int e;

    if ((e = call_open(i, method, r)) < 0)
        return e;
    if ((e = sw_p2p_call_send(r->call, body, blen, (void *)payload, plen, 0)) < 0)
        return e;
    if ((e = sw_p2p_call_end(r->call, 0, NULL)) < 0)
        return e;
    return run_until(&r->done, WAIT_MS) ? 0 : -ETIMEDOUT;
}

/* ======================================================================== tensors */

/* Encodes x (B, T, H) with codec; header packed into hb (*hl bytes), payload in a new buffer. */
static uint8_t *encode(const float *x, int B, int T, int h, sw_codec_t codec, uint8_t *hb,
                       size_t *hl, size_t *plen)
{
    sw_codec_opts_t o = { 0 };
    sw_tensor_header_t th;
    int64_t shape[3] = { B, T, h };
    size_t cap;
    uint8_t *p;

    o.codec = codec;
    sw_codec_encoded_bound(&o, (uint64_t)B * T * h, &cap);
    p = sw_malloc(cap ? cap : 1);
    if (sw_codec_encode(NULL, &o, x, 3, shape, &th, p, cap) < 0 ||
        sw_codec_header_pack(&th, hb, SW_CODEC_MAX_HEADER, hl) < 0) {
        sw_free(p);
        return NULL;
    }
    *plen = (size_t)th.encoded_len;
    return p;
}

/* Decodes a reply's hidden states into out (n floats); checks the shape. */
static int decode(const ProtobufCBinaryData *hb, const uint8_t *payload, size_t plen, int B,
                  int T, float *out)
{
    sw_tensor_header_t th;
    int r;

    if ((r = sw_codec_header_unpack(hb->data, hb->len, &th)) < 0)
        return r;
    if (th.ndim != 3 || th.shape[0] != B || th.shape[1] != T || th.shape[2] != H)
        return sw_err(SW_EFORMAT, "reply shape is not (%d, %d, %d)", B, T, H);
    return sw_codec_decode(NULL, &th, payload, plen, out, (size_t)B * T * H);
}

/* forward on server i over blocks [a, b): x (B, T, H) in place. Returns the call's status. */
static int forward(int i, int a, int b, float *x, int B, int T, sw_codec_t codec, rec_t *r)
{
    Swarmd__ForwardRequest q = SWARMD__FORWARD_REQUEST__INIT;
    uint8_t hb[SW_CODEC_MAX_HEADER], body[512];
    size_t hl, plen, bl;
    uint8_t *p = encode(x, B, T, H, codec, hb, &hl, &plen);
    Swarmd__ForwardResponse *m;
    int e;

    if (!p)
        return -EINVAL;
    q.start_block = (uint32_t)a;
    q.end_block = (uint32_t)b;
    q.hidden.data = hb;
    q.hidden.len = hl;
    q.output_codec = (Swarmd__TensorHeader__Codec)codec;
    bl = swarmd__forward_request__pack(&q, body);
    e = unary(i, "forward", body, bl, p, plen, r);
    sw_free(p);
    if (e < 0)
        return e;
    if (r->status < 0)
        return r->status;
    if (r->nmsg != 1)
        return sw_err(SW_EFORMAT, "forward replied %d messages", r->nmsg);
    m = swarmd__forward_response__unpack(NULL, r->blen[0], r->body[0]);
    if (!m)
        return sw_err(SW_EFORMAT, "malformed ForwardResponse");
    e = decode(&m->hidden, r->payload[0], r->plen[0], B, T, x);
    swarmd__forward_response__free_unpacked(m, NULL);
    return e;
}

/*
 * backward on server i over blocks [a, b): inputs x and output gradient g (B, T, H); g becomes
 * the input gradient. The request's payload is x's then g's. Returns the call's status.
 */
static int backward(int i, int a, int b, const float *x, float *g, int B, int T,
                    sw_codec_t codec, rec_t *r)
{
    Swarmd__BackwardRequest q = SWARMD__BACKWARD_REQUEST__INIT;
    uint8_t hb[SW_CODEC_MAX_HEADER], gb[SW_CODEC_MAX_HEADER], body[1024];
    size_t hl, gl, px, pg, bl;
    uint8_t *p1 = encode(x, B, T, H, SW_CODEC_NONE, hb, &hl, &px);
    uint8_t *p2 = encode(g, B, T, H, SW_CODEC_NONE, gb, &gl, &pg);
    uint8_t *p = sw_malloc(px + pg);
    Swarmd__BackwardResponse *m;
    int e = -EINVAL;

    if (!p1 || !p2 || !p)
        goto out;
    memcpy(p, p1, px);
    memcpy(p + px, p2, pg);
    q.start_block = (uint32_t)a;
    q.end_block = (uint32_t)b;
    q.hidden.data = hb;
    q.hidden.len = hl;
    q.grad.data = gb;
    q.grad.len = gl;
    q.output_codec = (Swarmd__TensorHeader__Codec)codec;
    bl = swarmd__backward_request__pack(&q, body);
    if ((e = unary(i, "backward", body, bl, p, px + pg, r)) < 0)
        goto out;
    if ((e = r->status) < 0)
        goto out;
    if (r->nmsg != 1) {
        e = sw_err(SW_EFORMAT, "backward replied %d messages", r->nmsg);
        goto out;
    }
    m = swarmd__backward_response__unpack(NULL, r->blen[0], r->body[0]);
    if (!m) {
        e = sw_err(SW_EFORMAT, "malformed BackwardResponse");
        goto out;
    }
    e = decode(&m->grad, r->payload[0], r->plen[0], B, T, g);
    swarmd__backward_response__free_unpacked(m, NULL);
out:
    sw_free(p1);
    sw_free(p2);
    sw_free(p);
    return e;
}

/* ---- inference sessions ---- */

typedef struct {
    rec_t r;
    int srv, a, b, B, max_length, first, seen;
} sess_t;

static int sess_open(sess_t *s, int srv, int a, int b, int B, int max_length)
{
    memset(s, 0, sizeof(*s));
    s->srv = srv;
    s->a = a;
    s->b = b;
    s->B = B;
    s->max_length = max_length;
    s->first = 1;
    return call_open(srv, "inference", &s->r);
}

/* Sends one step (x: (B, T, H), T may be 0; rollback < 0: none) and, if x, waits for the reply
 * and decodes it into x. *pos gets the session's length after the step. */
static int sess_send(sess_t *s, const float *x, int T, int rollback)
{
    Swarmd__InferenceRequest q = SWARMD__INFERENCE_REQUEST__INIT;
    uint8_t hb[SW_CODEC_MAX_HEADER], body[512], *p = NULL;
    size_t hl = 0, plen = 0, bl;
    int e;

    if (s->first) {
        q.start_block = (uint32_t)s->a;
        q.end_block = (uint32_t)s->b;
        q.max_length = (uint32_t)s->max_length;
        q.batch = (uint32_t)s->B;
        s->first = 0;
    }
    if (T > 0) {
        if (!(p = encode(x, s->B, T, H, SW_CODEC_NONE, hb, &hl, &plen)))
            return -EINVAL;
        q.hidden.data = hb;
        q.hidden.len = hl;
    }
    if (rollback >= 0) {
        q.has_start_from_position = 1;
        q.start_from_position = (uint32_t)rollback;
    }
    q.step_id = (uint64_t)s->seen + 1;
    bl = swarmd__inference_request__pack(&q, body);
    if (!s->r.call)
        return -ECONNRESET;
    e = sw_p2p_call_send(s->r.call, body, bl, p, plen, 0);
    sw_free(p);
    return e;
}

/* Waits for the reply to the step sess_send sent last and decodes it into x (B, T, H). */
static int sess_recv(sess_t *s, float *x, int T, int *pos)
{
    Swarmd__InferenceResponse *m;
    int e;

    /* the reply or the end of the call */
    uint64_t end = uv_hrtime() + (uint64_t)WAIT_MS * 1000000ull;
    while (s->r.nmsg == s->seen && !s->r.done && !s->r.ended && uv_hrtime() < end)
        run_until(&s->r.done, 50);
    if (s->r.nmsg == s->seen)
        return s->r.ended ? s->r.end_status : s->r.done ? s->r.status : -ETIMEDOUT;
    m = swarmd__inference_response__unpack(NULL, s->r.blen[s->seen], s->r.body[s->seen]);
    if (!m)
        return sw_err(SW_EFORMAT, "malformed InferenceResponse");
    e = 0;
    if (m->step_id != (uint64_t)s->seen + 1)
        e = sw_err(SW_EFORMAT, "step id %llu echoed for %d", (unsigned long long)m->step_id,
                   s->seen + 1);
    else if (T > 0)
        e = decode(&m->hidden, s->r.payload[s->seen], s->r.plen[s->seen], s->B, T, x);
    if (pos)
        *pos = (int)m->position;
    swarmd__inference_response__free_unpacked(m, NULL);
    s->seen++;
    return e;
}

static int sess_step(sess_t *s, float *x, int T, int rollback, int *pos)
{
    int e = sess_send(s, x, T, rollback);

    return e < 0 ? e : sess_recv(s, x, T, pos);
}

/* Ends our half and waits for the call to complete; returns its status. */
static int sess_close(sess_t *s)
{
    int st;

    if (s->r.call && !s->r.done)
        sw_p2p_call_end(s->r.call, 0, NULL);
    if (!run_until(&s->r.done, WAIT_MS))
        return -ETIMEDOUT;
    st = s->r.status;
    rec_free(&s->r);
    return st;
}

/* ======================================================================== reference */

static const int32_t prompt[] = { 1, 17, 300, 42, 999, 5, 64, 128, 7, 513 };
#define TP ((int)(sizeof(prompt) / sizeof(prompt[0])))

/* Hidden states of ids (B, T) through all blocks in this process: x (B, T, H). */
static int local_hidden(const int32_t *ids, int B, int T, float *x, float *emb)
{
    sw_span_t *sp = NULL;
    sw_kv_t *kv = NULL;
    int r;

    if ((r = sw_head_embed(head, &sw_ops_cpu, ids, B * T, emb)) < 0)
        return r;
    memcpy(x, emb, (size_t)B * T * H * sizeof(float));
    if ((r = sw_span_load(model, 0, cfg->num_layers, NULL, &sp)) < 0)
        return r;
    if ((r = sw_kv_create(sp, B, T, &kv)) == 0)
        r = sw_span_forward(sp, kv, &sw_ops_cpu, x, B, T);
    sw_kv_free(kv);
    sw_span_free(sp);
    return r;
}

/* x (B, T, H) through blocks [a, b) in this process. */
static int local_span(int a, int b, float *x, int B, int T)
{
    sw_span_t *sp = NULL;
    sw_kv_t *kv = NULL;
    int r;

    if ((r = sw_span_load(model, a, b, NULL, &sp)) < 0)
        return r;
    if ((r = sw_kv_create(sp, B, T, &kv)) == 0)
        r = sw_span_forward(sp, kv, &sw_ops_cpu, x, B, T);
    sw_kv_free(kv);
    sw_span_free(sp);
    return r;
}

/* x (B, T, H) := decode(encode(x)) with codec, as a hop over the wire does. */
static int round_trip(float *x, int B, int T, sw_codec_t codec)
{
    uint8_t hb[SW_CODEC_MAX_HEADER];
    sw_tensor_header_t th;
    size_t hl, plen;
    uint8_t *p = encode(x, B, T, H, codec, hb, &hl, &plen);
    int r;

    if (!p)
        return -EINVAL;
    r = sw_codec_header_unpack(hb, hl, &th);
    if (r == 0)
        r = sw_codec_decode(NULL, &th, p, plen, x, (size_t)B * T * H);
    sw_free(p);
    return r;
}

static int argmax_of_hidden(float *x)
{
    float *logits = sw_malloc((size_t)V * sizeof(float));
    int id;

    sw_head_logits(head, &sw_ops_cpu, x, 1, logits);
    id = sw_argmax(logits, V);
    sw_free(logits);
    return id;
}

/* `swarmd generate --local` on ids; parses the comma-separated ids it prints. */
static int cli_generate(const int32_t *ids, int T, int n, int32_t *out)
{
    char cmd[4096], buf[4096];
    size_t o;
    FILE *f;
    int k = 0;

    o = (size_t)snprintf(cmd, sizeof(cmd), "'%s' generate --local --model '%s' --max-new-tokens %d "
                         "--prompt-ids ", swarmd_bin, model_dir, n);
    for (int i = 0; i < T; i++)
        o += (size_t)snprintf(cmd + o, sizeof(cmd) - o, i ? ",%d" : "%d", ids[i]);
    if (!(f = popen(cmd, "r")))
        return -errno;
    if (!fgets(buf, sizeof(buf), f)) {
        pclose(f);
        return -EIO;
    }
    if (pclose(f) != 0)
        return -EIO;
    for (char *p = buf; k < n && *p && *p != '\n'; k++) {
        out[k] = (int32_t)strtol(p, &p, 10);
        if (*p == ',')
            p++;
    }
    return k == n ? 0 : -EIO;
}

/* Greedy decoding through the chain A (0:2) -> B (2:4) of ids with n new tokens, in sessions of
 * max_length. Leaves the sessions open in sa/sb. */
static int swarm_prefill_and_decode(sess_t *sa, sess_t *sb, const int32_t *ids, int T, int n,
                                    int32_t *out)
{
    float *x = sw_malloc((size_t)T * H * sizeof(float));
    int r, pos;

    if ((r = sw_head_embed(head, &sw_ops_cpu, ids, T, x)) < 0)
        goto out;
    if ((r = sess_step(sa, x, T, -1, &pos)) < 0 || (r = sess_step(sb, x, T, -1, &pos)) < 0)
        goto out;
    out[0] = argmax_of_hidden(x + (size_t)(T - 1) * H);
    for (int k = 1; k < n; k++) {
        if ((r = sw_head_embed(head, &sw_ops_cpu, &out[k - 1], 1, x)) < 0)
            goto out;
        if ((r = sess_step(sa, x, 1, -1, &pos)) < 0 || (r = sess_step(sb, x, 1, -1, &pos)) < 0)
            goto out;
        out[k] = argmax_of_hidden(x);
    }
out:
    sw_free(x);
    return r;
}

/* ======================================================================== cases */

static void test_info(void)
{
    rec_t r;
    Swarmd__ServerInfo *m;

    SW_CHECK_OK(unary(0, "info", "", 0, NULL, 0, &r));
    SW_CHECKF(r.status == 0 && r.nmsg == 1, "status %d (%s), %d messages", r.status, r.error, r.nmsg);
    m = swarmd__server_info__unpack(NULL, r.blen[0], r.body[0]);
    SW_CHECK(m != NULL);
    int ok = m->start_block == 0 && m->end_block == 2 && m->num_blocks == 4 &&
             m->hidden_size == (uint32_t)H && m->cache_tokens_left == MAX_CACHE &&
             m->max_cache_tokens == MAX_CACHE && m->max_batch_tokens == 512 &&
             !strcmp(m->model, "llama-gqa-llama3") && m->version[0] && !m->draining;
    swarmd__server_info__free_unpacked(m, NULL);
    rec_free(&r);
    SW_CHECK(ok);
}

static void test_forward_matches_local(void)
{
    enum { B = 2, T = TP };
    int32_t ids[B * T];
    float *x = sw_malloc((size_t)B * T * H * sizeof(float));
    float *emb = sw_malloc((size_t)B * T * H * sizeof(float));
    float *ref = sw_malloc((size_t)B * T * H * sizeof(float));
    float *y = sw_malloc((size_t)B * T * H * sizeof(float));
    size_t n = (size_t)B * T * H;
    rec_t r;
    double err;

    for (int t = 0; t < T; t++) {
        ids[t] = prompt[t];
        ids[T + t] = (prompt[t] * 7 + 3) % V;
    }
    SW_CHECK_OK(local_hidden(ids, B, T, ref, emb));
    /* A (0:2) then B (2:4) */
    memcpy(x, emb, n * sizeof(float));
    SW_CHECK_OK(forward(0, 0, 2, x, B, T, SW_CODEC_NONE, &r));
    rec_free(&r);
    SW_CHECK_OK(forward(1, 2, 4, x, B, T, SW_CODEC_NONE, &r));
    rec_free(&r);
    err = sw_rel_l2(x, ref, n);
    SW_CHECKF(err <= 1e-6, "rel-L2 %g", err);
    /* sub-spans: 0:1 and 1:2 on A, 2:3 and 3:4 on B */
    memcpy(y, emb, n * sizeof(float));
    for (int b = 0; b < 4; b++) {
        SW_CHECK_OK(forward(b < 2 ? 0 : 1, b, b + 1, y, B, T, SW_CODEC_NONE, &r));
        rec_free(&r);
    }
    err = sw_rel_l2(y, ref, n);
    SW_CHECKF(err <= 1e-6, "sub-span rel-L2 %g", err);
    /* per-position greedy ids equal */
    for (size_t i = 0; i < (size_t)B * T; i++) {
        int a = argmax_of_hidden(x + i * H), b = argmax_of_hidden(ref + i * H);
        SW_CHECKF(a == b, "position %zu: %d vs %d", i, a, b);
    }
    /* lossy codecs: the servers' results equal the same codec round trips done in-process (this
     * random-weight fixture amplifies perturbations, so only the exact mirror is comparable) */
    static const sw_codec_t codecs[] = { SW_CODEC_FP16, SW_CODEC_BF16, SW_CODEC_BLOCKWISE8 };
    for (int c = 0; c < 3; c++) {
        memcpy(y, emb, n * sizeof(float));
        SW_CHECK_OK(forward(0, 0, 2, y, B, T, codecs[c], &r));
        rec_free(&r);
        SW_CHECK_OK(forward(1, 2, 4, y, B, T, codecs[c], &r));
        rec_free(&r);
        memcpy(x, emb, n * sizeof(float));
        for (int hop = 0; hop < 2; hop++) {
            SW_CHECK_OK(round_trip(x, B, T, codecs[c]));
            SW_CHECK_OK(local_span(hop * 2, hop * 2 + 2, x, B, T));
            SW_CHECK_OK(round_trip(x, B, T, codecs[c]));
        }
        err = sw_rel_l2(y, x, n);
        SW_CHECKF(err <= 1e-6, "codec %s: rel-L2 %g to the in-process mirror", sw_codec_name(codecs[c]),
                  err);
    }
    sw_free(x);
    sw_free(y);
    sw_free(emb);
    sw_free(ref);
}

static void test_session_generate(void)
{
    enum { N = 16 };
    int32_t swarm[N], cli[N], local[N];
    sess_t sa, sb;
    sw_local_t *l = NULL;

    SW_CHECK_OK(sess_open(&sa, 0, 0, 2, 1, TP + N));
    SW_CHECK_OK(sess_open(&sb, 1, 2, 4, 1, TP + N));
    SW_CHECK_OK(swarm_prefill_and_decode(&sa, &sb, prompt, TP, N, swarm));
    SW_CHECK_OK(sess_close(&sa));
    SW_CHECK_OK(sess_close(&sb));
    SW_CHECK_OK(cli_generate(prompt, TP, N, cli));
    SW_CHECK_OK(sw_local_open(model_dir, 1, TP + N, NULL, &l));
    int r = sw_local_greedy(l, &sw_ops_cpu, prompt, TP, N, local, NULL, NULL, NULL);
    sw_local_close(l);
    SW_CHECK_OK(r);
    for (int k = 0; k < N; k++) {
        SW_CHECKF(swarm[k] == cli[k], "token %d: swarm %d, swarmd generate --local %d", k,
                  swarm[k], cli[k]);
        SW_CHECKF(swarm[k] == local[k], "token %d: swarm %d, in-process %d", k, swarm[k], local[k]);
    }
}

static void test_session_rollback(void)
{
    enum { N = 8, KEEP = 3, M = 6, L = TP + N + M };
    int32_t first[N], cont[M], want[M], seq[TP + KEEP + 1];
    float *x = sw_malloc((size_t)H * sizeof(float));
    sess_t sa, sb;
    int pos = -1;

    SW_CHECK_OK(sess_open(&sa, 0, 0, 2, 1, L));
    SW_CHECK_OK(sess_open(&sb, 1, 2, 4, 1, L));
    /* decode N tokens: the cache then holds TP + N - 1 positions */
    SW_CHECK_OK(swarm_prefill_and_decode(&sa, &sb, prompt, TP, N, first));
    /* keep the prompt and the first KEEP generated tokens, replace the next one */
    memcpy(seq, prompt, sizeof(prompt));
    memcpy(seq + TP, first, KEEP * sizeof(int32_t));
    seq[TP + KEEP] = (first[KEEP] + 1) % V;
    SW_CHECK_OK(sw_head_embed(head, &sw_ops_cpu, &seq[TP + KEEP], 1, x));
    SW_CHECK_OK(sess_step(&sa, x, 1, TP + KEEP, &pos));
    SW_CHECKF(pos == TP + KEEP + 1, "position %d after the rollback step", pos);
    SW_CHECK_OK(sess_step(&sb, x, 1, TP + KEEP, &pos));
    cont[0] = argmax_of_hidden(x);
    for (int k = 1; k < M; k++) {
        SW_CHECK_OK(sw_head_embed(head, &sw_ops_cpu, &cont[k - 1], 1, x));
        SW_CHECK_OK(sess_step(&sa, x, 1, -1, &pos));
        SW_CHECK_OK(sess_step(&sb, x, 1, -1, &pos));
        cont[k] = argmax_of_hidden(x);
    }
    SW_CHECK_OK(sess_close(&sa));
    SW_CHECK_OK(sess_close(&sb));
    SW_CHECK_OK(cli_generate(seq, TP + KEEP + 1, M, want));
    for (int k = 0; k < M; k++)
        SW_CHECKF(cont[k] == want[k], "token %d after rollback: swarm %d, local %d", k, cont[k],
                  want[k]);
    sw_free(x);
}

/* Several sessions in lockstep through A (0:2) then B (2:4): each round every session's step is
 * sent before any reply is awaited, so the servers' executors may batch them (whether they do
 * depends on timing here; test-serve-batch holds the executor to check batching itself). Each
 * session's greedy ids must equal in-process greedy decoding of its prompt alone. */
static void test_concurrent_sessions(void)
{
    enum { NSS = 4, N = 8 };
    static const int32_t prompts[NSS][6] = { { 1, 17, 300 }, { 42, 999, 5, 64, 128 },
                                              { 7, 513, 2 }, { 9, 8, 7, 6, 5, 4 } };
    static const int plen[NSS] = { 3, 5, 3, 6 };
    int32_t got[NSS][N], want[NSS][N];
    float *x[NSS];
    sess_t sa[NSS], sb[NSS];
    sw_local_t *l = NULL;
    int pos;

    for (int i = 0; i < NSS; i++) {
        x[i] = sw_malloc((size_t)plen[i] * H * sizeof(float));
        SW_CHECK_OK(sess_open(&sa[i], 0, 0, 2, 1, plen[i] + N));
        SW_CHECK_OK(sess_open(&sb[i], 1, 2, 4, 1, plen[i] + N));
    }
    for (int k = 0; k < N; k++) {
        for (int hop = 0; hop < 2; hop++) {
            sess_t *ss = hop ? sb : sa;
            for (int i = 0; i < NSS; i++) {
                if (hop == 0)
                    SW_CHECK_OK(sw_head_embed(head, &sw_ops_cpu, k ? &got[i][k - 1] : prompts[i],
                                              k ? 1 : plen[i], x[i]));
                SW_CHECK_OK(sess_send(&ss[i], x[i], k ? 1 : plen[i], -1));
            }
            for (int i = 0; i < NSS; i++)
                SW_CHECK_OK(sess_recv(&ss[i], x[i], k ? 1 : plen[i], &pos));
        }
        for (int i = 0; i < NSS; i++)
            got[i][k] = argmax_of_hidden(x[i] + (size_t)(k ? 0 : plen[i] - 1) * H);
    }
    for (int i = 0; i < NSS; i++) {
        SW_CHECK_OK(sess_close(&sa[i]));
        SW_CHECK_OK(sess_close(&sb[i]));
        sw_free(x[i]);
    }
    SW_CHECK_OK(sw_local_open(model_dir, 1, 16, NULL, &l));
    int r = 0;
    for (int i = 0; i < NSS && r == 0; i++)
        r = sw_local_greedy(l, &sw_ops_cpu, prompts[i], plen[i], N, want[i], NULL, NULL, NULL);
    sw_local_close(l);
    SW_CHECK_OK(r);
    for (int i = 0; i < NSS; i++)
        for (int k = 0; k < N; k++)
            SW_CHECKF(got[i][k] == want[i][k], "session %d token %d: swarm %d, alone in-process "
                      "%d", i, k, got[i][k], want[i][k]);
}

/* Sends a raw forward request and expects the call to fail with code and a text containing what. */
static int expect_forward_error(const void *body, size_t bl, const void *p, size_t pl, int code,
                                const char *what)
{
    rec_t r;
    int ok;

    if (unary(0, "forward", body, bl, p, pl, &r) < 0)
        return 0;
    ok = r.status == code && r.nmsg == 0 && strstr(r.error, what) != NULL;
    if (!ok)
        fprintf(stderr, "  forward: status %d (%s), wanted %d with '%s'\n", r.status, r.error,
                code, what);
    rec_free(&r);
    return ok;
}

static void test_bad_forward(void)
{
    Swarmd__ForwardRequest q = SWARMD__FORWARD_REQUEST__INIT;
    uint8_t hb[SW_CODEC_MAX_HEADER], body[512], junk[40];
    size_t hl, plen, bl;
    float *x = sw_test_randv((size_t)2 * 3 * H, 1, 1.0f);
    uint8_t *p;

    /* wrong span */
    p = encode(x, 2, 3, H, SW_CODEC_NONE, hb, &hl, &plen);
    q.hidden.data = hb;
    q.hidden.len = hl;
    q.start_block = 0;
    q.end_block = 3;
    bl = swarmd__forward_request__pack(&q, body);
    SW_CHECK(expect_forward_error(body, bl, p, plen, SW_EUNSUPPORTED, "not served here"));
    q.start_block = 1;
    q.end_block = 1;
    bl = swarmd__forward_request__pack(&q, body);
    SW_CHECK(expect_forward_error(body, bl, p, plen, SW_EUNSUPPORTED, "not served here"));
    /* payload shorter than the header says */
    q.start_block = 0;
    q.end_block = 2;
    bl = swarmd__forward_request__pack(&q, body);
    SW_CHECK(expect_forward_error(body, bl, p, plen - 4, SW_EFORMAT, "payload bytes"));
    /* unknown output codec */
    q.output_codec = 9;
    bl = swarmd__forward_request__pack(&q, body);
    SW_CHECK(expect_forward_error(body, bl, p, plen, SW_EUNSUPPORTED, "codec"));
    q.output_codec = 0;
    sw_free(p);
    /* wrong hidden size */
    p = encode(x, 2, 3, H / 2, SW_CODEC_NONE, hb, &hl, &plen);
    q.hidden.len = hl;
    bl = swarmd__forward_request__pack(&q, body);
    SW_CHECK(expect_forward_error(body, bl, p, plen, SW_EFORMAT, "hidden size"));
    sw_free(p);
    /* too many tokens for --max-batch-tokens 512 */
    {
        float *big = sw_test_randv((size_t)600 * H, 2, 1.0f);
        p = encode(big, 1, 600, H, SW_CODEC_NONE, hb, &hl, &plen);
        q.hidden.len = hl;
        bl = swarmd__forward_request__pack(&q, body);
        SW_CHECK(expect_forward_error(body, bl, p, plen, SW_ELIMIT, "--max-batch-tokens"));
        sw_free(p);
        sw_free(big);
    }
    /* malformed tensor header */
    memset(junk, 0xff, sizeof(junk));
    q.hidden.data = junk;
    q.hidden.len = sizeof(junk);
    bl = swarmd__forward_request__pack(&q, body);
    SW_CHECK(expect_forward_error(body, bl, junk, 8, SW_EFORMAT, "malformed tensor header"));
    /* no tensor at all */
    q.hidden.len = 0;
    bl = swarmd__forward_request__pack(&q, body);
    SW_CHECK(expect_forward_error(body, bl, NULL, 0, SW_EFORMAT, "no hidden states"));
    /* malformed body */
    SW_CHECK(expect_forward_error(junk, sizeof(junk), NULL, 0, SW_EFORMAT, "malformed ForwardRequest"));
    /* a payload the executor cannot decode: blockwise8 with a NaN absmax */
    {
        sw_tensor_header_t th;
        p = encode(x, 2, 3, H, SW_CODEC_BLOCKWISE8, hb, &hl, &plen);
        SW_CHECK_OK(sw_codec_header_unpack(hb, hl, &th));
        memset(p, 0xff, 4); /* first absmax := NaN */
        q.hidden.data = hb;
        q.hidden.len = hl;
        bl = swarmd__forward_request__pack(&q, body);
        SW_CHECK(expect_forward_error(body, bl, p, plen, SW_EFORMAT, "absmax"));
        sw_free(p);
    }
    sw_free(x);
    /* and the server still serves */
    {
        rec_t r;
        float *y = sw_test_randv((size_t)H, 3, 1.0f);
        SW_CHECK_OK(forward(0, 0, 2, y, 1, 1, SW_CODEC_NONE, &r));
        rec_free(&r);
        sw_free(y);
    }
}

/* Input gradients through the swarm equal the in-process backward of the whole span. */
static void test_backward_matches_local(void)
{
    enum { B = 2, T = TP };
    size_t n = (size_t)B * T * H;
    int32_t ids[B * T];
    float *x = sw_malloc(n * sizeof(float)), *x2 = sw_malloc(n * sizeof(float));
    float *r = sw_test_randv(n, 7, 1.0f), *ref = sw_malloc(n * sizeof(float));
    float *g = sw_malloc(n * sizeof(float));
    sw_span_t *sp = NULL;
    rec_t rr;
    double err;

    for (int t = 0; t < T; t++) {
        ids[t] = prompt[t];
        ids[T + t] = (prompt[t] * 5 + 1) % V;
    }
    SW_CHECK_OK(sw_head_embed(head, &sw_ops_cpu, ids, B * T, x));
    SW_CHECK_OK(sw_span_load(model, 0, cfg->num_layers, NULL, &sp));
    int e = sw_span_backward(sp, &sw_ops_cpu, x, r, ref, B, T);
    sw_span_free(sp);
    SW_CHECK_OK(e);
    /* the chain: x through A (0:2) gives B's inputs; the gradient goes back through B, then A */
    memcpy(x2, x, n * sizeof(float));
    SW_CHECK_OK(forward(0, 0, 2, x2, B, T, SW_CODEC_NONE, &rr));
    rec_free(&rr);
    memcpy(g, r, n * sizeof(float));
    SW_CHECK_OK(backward(1, 2, 4, x2, g, B, T, SW_CODEC_NONE, &rr));
    rec_free(&rr);
    SW_CHECK_OK(backward(0, 0, 2, x, g, B, T, SW_CODEC_NONE, &rr));
    rec_free(&rr);
    err = sw_rel_l2(g, ref, n);
    fprintf(stderr, "  backward B then A vs local: rel-L2 %.3g\n", err);
    SW_CHECKF(err <= 1e-5, "backward through B then A: rel-L2 %g", err);
    /* all four blocks on one server (C) */
    memcpy(g, r, n * sizeof(float));
    SW_CHECK_OK(backward(2, 0, 4, x, g, B, T, SW_CODEC_NONE, &rr));
    rec_free(&rr);
    err = sw_rel_l2(g, ref, n);
    SW_CHECKF(err <= 1e-5, "backward 0:4 on C: rel-L2 %g", err);
    /* a bf16 reply is the exact result rounded to bf16 (2^-8 relative per element) */
    memcpy(g, r, n * sizeof(float));
    SW_CHECK_OK(backward(2, 0, 4, x, g, B, T, SW_CODEC_BF16, &rr));
    rec_free(&rr);
    err = sw_rel_l2(g, ref, n);
    SW_CHECKF(err <= 4e-3, "bf16 reply: rel-L2 %g to the exact gradient", err);
    sw_free(x); sw_free(x2); sw_free(r); sw_free(ref); sw_free(g);
}

/* Sends a raw backward request to A and expects the call to fail with code and a text with what. */
static int expect_backward_error(const Swarmd__BackwardRequest *q, const void *p, size_t pl,
                                 int code, const char *what)
{
    uint8_t body[1024];
    size_t bl = swarmd__backward_request__pack(q, body);
    rec_t r;
    int ok;

    if (unary(0, "backward", body, bl, p, pl, &r) < 0)
        return 0;
    ok = r.status == code && r.nmsg == 0 && strstr(r.error, what) != NULL;
    if (!ok)
        fprintf(stderr, "  backward: status %d (%s), wanted %d with '%s'\n", r.status, r.error,
                code, what);
    rec_free(&r);
    return ok;
}

static void test_bad_backward(void)
{
    Swarmd__BackwardRequest q = SWARMD__BACKWARD_REQUEST__INIT;
    uint8_t hb[SW_CODEC_MAX_HEADER], gb[SW_CODEC_MAX_HEADER], g2b[SW_CODEC_MAX_HEADER];
    uint8_t junk[40], *p, *px, *pg, *pg2;
    size_t hl, gl, g2l, plx, plg, plg2;
    float *x = sw_test_randv((size_t)2 * 4 * H, 8, 1.0f);

    px = encode(x, 2, 3, H, SW_CODEC_NONE, hb, &hl, &plx);
    pg = encode(x, 2, 3, H, SW_CODEC_FP16, gb, &gl, &plg);  /* any codec per tensor */
    pg2 = encode(x, 2, 4, H, SW_CODEC_NONE, g2b, &g2l, &plg2);
    p = sw_malloc(plx + plg2 + 8);
    memcpy(p, px, plx);
    memcpy(p + plx, pg, plg);
    q.start_block = 0;
    q.end_block = 2;
    q.hidden.data = hb;
    q.hidden.len = hl;
    q.grad.data = gb;
    q.grad.len = gl;
    /* a valid request first (fp16 gradient), so the cases below fail for their one reason */
    {
        uint8_t body[1024];
        size_t bl = swarmd__backward_request__pack(&q, body);
        rec_t r;
        SW_CHECK(unary(0, "backward", body, bl, p, plx + plg, &r) == 0);
        int ok = r.status == 0 && r.nmsg == 1;
        rec_free(&r);
        SW_CHECKF(ok, "the valid request failed");
    }
    /* wrong span */
    q.end_block = 3;
    SW_CHECK(expect_backward_error(&q, p, plx + plg, SW_EUNSUPPORTED, "not served here"));
    q.end_block = 2;
    /* payload shorter than the two headers say, and longer */
    SW_CHECK(expect_backward_error(&q, p, plx + plg - 2, SW_EFORMAT, "payload bytes"));
    SW_CHECK(expect_backward_error(&q, p, plx + plg + 8, SW_EFORMAT, "payload bytes"));
    /* the inputs' header claims more than the whole payload */
    SW_CHECK(expect_backward_error(&q, p, plx - 4, SW_EFORMAT, "in all"));
    /* gradient of another shape */
    memcpy(p + plx, pg2, plg2);
    q.grad.data = g2b;
    q.grad.len = g2l;
    SW_CHECK(expect_backward_error(&q, p, plx + plg2, SW_EFORMAT, "one shape"));
    /* no gradient header; a malformed one */
    q.grad.len = 0;
    SW_CHECK(expect_backward_error(&q, p, plx, SW_EFORMAT, "output gradient: no hidden states"));
    memset(junk, 0xff, sizeof(junk));
    q.grad.data = junk;
    q.grad.len = sizeof(junk);
    SW_CHECK(expect_backward_error(&q, p, plx + 8, SW_EFORMAT, "output gradient: malformed"));
    /* no inputs header */
    q.grad.data = gb;
    q.grad.len = gl;
    q.hidden.len = 0;
    SW_CHECK(expect_backward_error(&q, p, plx + plg, SW_EFORMAT, "no hidden states"));
    q.hidden.len = hl;
    /* unknown output codec */
    q.output_codec = 9;
    SW_CHECK(expect_backward_error(&q, p, plx + plg, SW_EUNSUPPORTED, "codec"));
    q.output_codec = 0;
    /* malformed body */
    {
        rec_t r;
        SW_CHECK(unary(0, "backward", junk, sizeof(junk), NULL, 0, &r) == 0);
        int ok = r.status == SW_EFORMAT && strstr(r.error, "malformed BackwardRequest");
        rec_free(&r);
        SW_CHECK(ok);
    }
    /* more tokens than --max-batch-tokens 512 */
    {
        float *big = sw_test_randv((size_t)600 * H, 9, 1.0f);
        uint8_t *pb = encode(big, 1, 600, H, SW_CODEC_NONE, hb, &hl, &plx), *pp;
        pp = sw_malloc(2 * plx);
        memcpy(pp, pb, plx);
        memcpy(pp + plx, pb, plx);
        q.hidden.len = hl;
        q.grad.data = hb;
        q.grad.len = hl;
        SW_CHECK(expect_backward_error(&q, pp, 2 * plx, SW_ELIMIT, "--max-batch-tokens"));
        sw_free(pp);
        sw_free(pb);
        sw_free(big);
    }
    sw_free(p); sw_free(px); sw_free(pg); sw_free(pg2);
    /* and the server still serves backward */
    {
        rec_t r;
        float *y = sw_test_randv((size_t)H, 10, 1.0f), *gy = sw_test_randv((size_t)H, 11, 1.0f);
        SW_CHECK_OK(backward(0, 0, 2, y, gy, 1, 1, SW_CODEC_NONE, &r));
        rec_free(&r);
        sw_free(y);
        sw_free(gy);
    }
    sw_free(x);
}

/* Opens a session and sends a bare open step (T = 0); returns the status of that step. */
static int open_bare(sess_t *s, int srv, int B, int max_length)
{
    int r = sess_open(s, srv, 0, 2, B, max_length), pos;

    if (r < 0)
        return r;
    return sess_step(s, NULL, 0, -1, &pos);
}

static uint64_t cache_left(int srv)
{
    rec_t r;
    uint64_t left = ~0ull;

    if (unary(srv, "info", "", 0, NULL, 0, &r) == 0 && r.nmsg == 1) {
        Swarmd__ServerInfo *m = swarmd__server_info__unpack(NULL, r.blen[0], r.body[0]);
        if (m) {
            left = m->cache_tokens_left;
            swarmd__server_info__free_unpacked(m, NULL);
        }
    }
    rec_free(&r);
    return left;
}

static void test_bad_sessions(void)
{
    sess_t s1, s2;
    float *x = sw_test_randv((size_t)2 * 8 * H, 4, 1.0f);
    int r, pos;

    /* over-long: more than the whole budget */
    r = open_bare(&s1, 0, 1, MAX_CACHE + 1);
    SW_CHECKF(r == SW_ELIMIT && strstr(s1.r.error, "whole budget"), "%d %s", r, s1.r.error);
    SW_CHECK(sess_close(&s1) == SW_ELIMIT);
    /* exhausted: one session holds 200 of 256 tokens, a second wants 100 */
    SW_CHECK_OK(open_bare(&s1, 0, 2, 100));
    SW_CHECK(cache_left(0) == MAX_CACHE - 200);
    r = open_bare(&s2, 0, 1, 100);
    SW_CHECKF(r == SW_ELIMIT && strstr(s2.r.error, "cache exhausted"), "%d %s", r, s2.r.error);
    sess_close(&s2);
    /* the first session still works: a step of 8 positions */
    SW_CHECK_OK(sess_step(&s1, x, 8, -1, &pos));
    SW_CHECK(pos == 8);
    SW_CHECK_OK(sess_close(&s1));
    SW_CHECK(cache_left(0) == MAX_CACHE);
    SW_CHECK_OK(open_bare(&s2, 0, 1, 100));
    SW_CHECK_OK(sess_close(&s2));
    /* past max_length */
    SW_CHECK_OK(open_bare(&s1, 0, 1, 6));
    SW_CHECK_OK(sess_step(&s1, x, 4, -1, &pos));
    r = sess_step(&s1, x, 4, -1, &pos);
    SW_CHECKF(r == SW_ELIMIT && strstr(s1.r.error, "maximum length exceeded"), "%d %s", r, s1.r.error);
    sess_close(&s1);
    /* rollback beyond the end */
    SW_CHECK_OK(open_bare(&s1, 0, 1, 16));
    SW_CHECK_OK(sess_step(&s1, x, 3, -1, &pos));
    r = sess_step(&s1, x, 1, 5, &pos);
    SW_CHECKF(r == SW_EFORMAT && strstr(s1.r.error, "beyond"), "%d %s", r, s1.r.error);
    sess_close(&s1);
    /* a step with another batch than the session's */
    SW_CHECK_OK(open_bare(&s1, 0, 1, 16));
    s1.B = 2;
    r = sess_step(&s1, x, 2, -1, &pos);
    SW_CHECKF(r == SW_EFORMAT && strstr(s1.r.error, "batch"), "%d %s", r, s1.r.error);
    sess_close(&s1);
    /* wrong span, wrong hidden size at the open */
    SW_CHECK_OK(sess_open(&s1, 0, 1, 3, 1, 16));
    r = sess_step(&s1, NULL, 0, -1, &pos);
    SW_CHECKF(r == SW_EUNSUPPORTED && strstr(s1.r.error, "not served"), "%d %s", r, s1.r.error);
    sess_close(&s1);
    SW_CHECK(cache_left(0) == MAX_CACHE);
    /* the server keeps serving sessions */
    SW_CHECK_OK(open_bare(&s1, 0, 1, 16));
    SW_CHECK_OK(sess_step(&s1, x, 2, -1, &pos));
    SW_CHECK_OK(sess_close(&s1));
    sw_free(x);
}

static void test_idle_timeout(void)
{
    sess_t s;
    int r;

    SW_CHECK_OK(open_bare(&s, 2, 1, 16));
    SW_CHECK(run_until(&s.r.ended, WAIT_MS));
    r = s.r.end_status;
    SW_CHECKF(r == -ETIMEDOUT && strstr(s.r.error, "idle"), "%d %s", r, s.r.error);
    sess_close(&s);
}

static void test_sigterm(void)
{
    sess_t s;
    float *x = sw_test_randv((size_t)H, 5, 1.0f);
    int pos, st = 0;
    pid_t w = 0;

    SW_CHECK_OK(sess_open(&s, 2, 0, 4, 1, 16));
    SW_CHECK_OK(sess_step(&s, x, 1, -1, &pos));
    SW_CHECK(kill(child[2], SIGTERM) == 0);
    /* the open session is ended by the server, with a reason */
    SW_CHECK(run_until(&s.r.ended, WAIT_MS));
    SW_CHECKF(s.r.end_status == SW_ESTATE && strstr(s.r.error, "shutting down"), "%d %s",
              s.r.end_status, s.r.error);
    sess_close(&s);
    /* and the process exits 0 */
    uint64_t end = uv_hrtime() + (uint64_t)WAIT_MS * 1000000ull;
    while ((w = waitpid(child[2], &st, WNOHANG)) == 0 && uv_hrtime() < end)
        run_until(&(int){ 0 }, 20);
    SW_CHECK(w == child[2]);
    child[2] = 0;
    SW_CHECKF(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status 0x%x", st);
    sw_free(x);
    /* the other two, idle, stop cleanly too (under ASan this also checks their leaks) */
    for (int i = 0; i < 2; i++) {
        SW_CHECK(kill(child[i], SIGTERM) == 0);
        end = uv_hrtime() + (uint64_t)WAIT_MS * 1000000ull;
        while ((w = waitpid(child[i], &st, WNOHANG)) == 0 && uv_hrtime() < end)
            run_until(&(int){ 0 }, 20);
        SW_CHECK(w == child[i]);
        child[i] = 0;
        SW_CHECKF(WIFEXITED(st) && WEXITSTATUS(st) == 0, "server %d: status 0x%x", i, st);
    }
}

/* ======================================================================== main */

static void node_closed(void *arg) { *(int *)arg = 1; }

int main(void)
{
    const char *root = getenv("SW_SOURCE_ROOT");
    uint8_t seed[32];
    int closed = 0;

    swarmd_bin = getenv("SWARMD");
    if (!swarmd_bin || !root) {
        fprintf(stderr, "serve-client: set SWARMD and SW_SOURCE_ROOT\n");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGALRM, on_alarm);
    alarm(240);
    atexit(kill_children);
    snprintf(model_dir, sizeof(model_dir), "%s/tests/fixtures/llama-gqa-llama3", root);
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/sw-serve-XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    if (start_server(0, "0:2", NULL, NULL) < 0 || start_server(1, "2:4", NULL, NULL) < 0 ||
        start_server(2, "0:4", "--session-timeout", "1") < 0) {
        fprintf(stderr, "serve-client: %s\n", sw_err_detail());
        return 1;
    }
    if (sw_model_open(model_dir, &model) < 0 || sw_head_load(model, &head) < 0) {
        fprintf(stderr, "serve-client: cannot load the fixture: %s\n", sw_err_detail());
        return 1;
    }
    cfg = sw_model_config(model);
    H = cfg->hidden_size;
    V = cfg->vocab_size;
    uv_loop_init(&loop);
    memset(seed, 0x5e, sizeof(seed));
    sw_identity_from_seed(seed, &me);
    if (sw_p2p_node_new(&loop, &me, NULL, NULL, &node) < 0)
        return 1;
    for (int i = 0; i < NSRV; i++) {
        conn_wait_t w = { 0 };
        if (sw_p2p_connect(node, srv_addr[i], on_connected, &w) < 0 ||
            !run_until(&w.connected, WAIT_MS) || w.status < 0) {
            fprintf(stderr, "serve-client: cannot connect to %s\n", srv_addr[i]);
            return 1;
        }
        conn[i] = w.c;
    }

    SW_RUN(test_info);
    SW_RUN(test_forward_matches_local);
    SW_RUN(test_session_generate);
    SW_RUN(test_session_rollback);
    SW_RUN(test_concurrent_sessions);
    SW_RUN(test_bad_forward);
    SW_RUN(test_backward_matches_local);
    SW_RUN(test_bad_backward);
    SW_RUN(test_bad_sessions);
    SW_RUN(test_idle_timeout);
    SW_RUN(test_sigterm);

    sw_p2p_node_close(node, node_closed, &closed);
    run_until(&closed, WAIT_MS);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    sw_head_free(head);
    sw_model_close(model);
    kill_children();
    {
        char cmd[300];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
        if (getenv("SW_TEST_KEEP") == NULL && system(cmd) != 0) {}
    }
    return sw_test_summary("serve");
}
