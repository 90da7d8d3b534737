/*
 * test-serve-batch.c - continuous batching in the server's executor, end to end over the secure
 * transport on loopback, with the server and the client in this process (one loop), so that the
 * test can hold the executor (sw_server_pause) until every session's step is queued: each round
 * then runs as one known batch, whatever the timing.
 *
 * For a dense fixture (llama-gqa-llama3, GQA) and an NF4 one (llama-wide quantized on load; its
 * 1-row steps batch at most 4 to a pass, see kernels/ops.h) six sessions with prompts of 3..10
 * tokens generate greedily, one session rolling back and taking another token midway:
 *   - alone: each step is sent after the previous reply arrived (the executor never sees two);
 *   - batched: per round the executor is held, all six steps are sent, the test waits until the
 *     server's queue holds six jobs, then releases it.
 * Every reply's hidden states must be equal by memcmp between the two runs, the greedy ids of the
 * sessions without a rollback equal sw_local_greedy in-process, and the server's counters must
 * show the batches: every round batched in the batched run (dense: all six in one pass; NF4: the
 * decode rounds in passes of at most 4), none in the alone run.
 * And a step that fails on the executor (a payload that does not decode) fails alone: its session
 * ends with the reason, the two steps held with it still share a pass and equal in-process
 * sw_span_forward bit for bit.
 * Needs SW_SOURCE_ROOT. Every wait is bounded.
 */
#include <signal.h>
#include <unistd.h>

#include <uv.h>

#include "kernels/ops.h"
#include "p2p/identity.h"
#include "p2p/rpc.h"
#include "pipeline/codec.h"
#include "pipeline/local.h"
#include "pipeline/model.h"
#include "pipeline/server.h"
#include "swarmd.pb-c.h"
#include "test.h"
#include "util/error.h"

#define WAIT_MS 20000
#define NS 6      /* sessions */
#define ROUNDS 8  /* the prefill round and 7 decode rounds */
#define MAXLEN 32
#define RB_SESS 2 /* this session rolls back ... */
#define RB_ROUND 4 /* ... in this round, keeping its prompt and RB_KEEP generated tokens, and */
#define RB_KEEP 1  /* feeds another token than the next one it had */

static uv_loop_t loop;
static sw_identity_t sid, cid;
static sw_p2p_node_t *snode, *cnode;
static sw_p2p_conn_t *conn;
static sw_server_t *srv;
static sw_model_t *model;
static sw_head_t *head;
static int H, V;

static const int32_t prompts[NS][10] = {
    { 1, 17, 300 },
    { 5, 64, 128, 7, 313, 2, 9 },
    { 42, 399, 5, 64, 128, 7, 213, 11 },
    { 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 },
    { 77, 78, 79, 80 },
    { 500, 400, 300, 200, 100 },
};
static const int plen[NS] = { 3, 7, 8, 10, 4, 5 };

static void tick_cb(uv_timer_t *t) { (void)t; }

/* Runs the loop until pred(arg) or ms pass; returns pred(arg). */
static int run_until(int (*pred)(void *), void *arg, uint64_t ms)
{
    uv_timer_t tick;
    uint64_t end = uv_hrtime() + ms * 1000000ull;

    uv_timer_init(&loop, &tick);
    uv_timer_start(&tick, tick_cb, 10, 10);
    while (!pred(arg) && uv_hrtime() < end)
        uv_run(&loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
    return pred(arg);
}

static int flag_set(void *arg) { return *(int *)arg != 0; }

/* ======================================================================== sessions */

typedef struct {
    sw_p2p_call_t *call;
    int nmsg, done, ended, end_status;
    char error[256];
    Swarmd__InferenceResponse *resp; /* the last reply */
    uint8_t *payload;
    size_t plen;
} sess_t;

static void s_msg(sw_p2p_call_t *k, sw_p2p_msg_t *m, void *arg)
{
    sess_t *s = arg;

    if (s->resp)
        swarmd__inference_response__free_unpacked(s->resp, NULL);
    sw_free(s->payload);
    s->resp = swarmd__inference_response__unpack(NULL, m->body_len, m->body);
    s->plen = m->payload_len;
    s->payload = sw_p2p_msg_take_payload(m);
    s->nmsg++;
}

static void s_end(sw_p2p_call_t *k, int status, const char *error, void *arg)
{
    sess_t *s = arg;

    s->ended = 1;
    s->end_status = status;
    snprintf(s->error, sizeof(s->error), "%s", error ? error : "");
    if (status < 0)
        sw_p2p_call_end(k, 0, NULL);
}

static void s_done(sw_p2p_call_t *k, int status, void *arg)
{
    sess_t *s = arg;

    s->done = 1;
    s->call = NULL;
}

static const sw_p2p_call_cbs_t s_cbs = { s_msg, s_end, s_done, NULL };

/* Sends a step of x (1, T, H) (first: opens the session for blocks [0, L)); rollback < 0: none;
 * spoil: as blockwise8 with a NaN absmax, which passes the loop's checks and fails decoding on
 * the executor. */
static int s_send_as(sess_t *s, int first, int L, const float *x, int T, int rollback,
                     uint64_t id, int spoil)
{
    Swarmd__InferenceRequest q = SWARMD__INFERENCE_REQUEST__INIT;
    sw_codec_opts_t o = { 0 };
    sw_tensor_header_t th;
    int64_t shape[3] = { 1, T, H };
    uint8_t hb[SW_CODEC_MAX_HEADER], body[512], *p;
    size_t hl, cap;
    int r;

    if (first) {
        q.start_block = 0;
        q.end_block = (uint32_t)L;
        q.max_length = MAXLEN;
        q.batch = 1;
    }
    if (rollback >= 0) {
        q.has_start_from_position = 1;
        q.start_from_position = (uint32_t)rollback;
    }
    q.step_id = id;
    if (spoil)
        o.codec = SW_CODEC_BLOCKWISE8;
    sw_codec_encoded_bound(&o, (uint64_t)T * H, &cap);
    p = sw_malloc(cap);
    if ((r = sw_codec_encode(NULL, &o, x, 3, shape, &th, p, cap)) < 0 ||
        (r = sw_codec_header_pack(&th, hb, sizeof(hb), &hl)) < 0) {
        sw_free(p);
        return r;
    }
    if (spoil)
        memset(p, 0xff, 4); /* the first block's absmax := NaN */
    q.hidden.data = hb;
    q.hidden.len = hl;
    r = sw_p2p_call_send(s->call, body, swarmd__inference_request__pack(&q, body), p,
                         (size_t)th.encoded_len, SW_P2P_SEND_TAKE);
    return r;
}

static int s_send(sess_t *s, int first, int L, const float *x, int T, int rollback, uint64_t id)
{
    return s_send_as(s, first, L, x, T, rollback, id, 0);
}

typedef struct {
    sess_t *s;
    int n, want;
} replies_t;

static int all_replied(void *arg)
{
    replies_t *w = arg;

    for (int i = 0; i < w->n; i++)
        if (w->s[i].nmsg < w->want && !w->s[i].ended)
            return 0;
    return 1;
}

static int queued_is(void *arg)
{
    sw_server_stats_t st;

    sw_server_stats(srv, &st);
    return (int)st.queued >= *(int *)arg;
}

/* The reply of s: hidden states (1, T, H) into out. */
static int s_reply(sess_t *s, int T, float *out)
{
    sw_tensor_header_t th;
    int r;

    if (s->ended)
        return sw_err(s->end_status ? s->end_status : SW_ESTATE, "session ended: %s", s->error);
    if (!s->resp)
        return sw_err(SW_EFORMAT, "malformed reply");
    if ((r = sw_codec_header_unpack(s->resp->hidden.data, s->resp->hidden.len, &th)) < 0)
        return r;
    if (th.ndim != 3 || th.shape[1] != T || th.shape[2] != H)
        return sw_err(SW_EFORMAT, "reply shape");
    return sw_codec_decode(NULL, &th, s->payload, s->plen, out, (size_t)T * H);
}

static int next_id(const float *h)
{
    float *x = sw_malloc((size_t)H * sizeof(float)), *logits = sw_malloc((size_t)V * sizeof(float));
    int id;

    memcpy(x, h, (size_t)H * sizeof(float));
    sw_head_logits(head, &sw_ops_cpu, x, 1, logits);
    id = sw_argmax(logits, V);
    sw_free(x);
    sw_free(logits);
    return id;
}

/*
 * Greedy generation for the NS sessions through the server (blocks [0, L)): batched or alone as
 * the file head says. hid[i][r] gets a copy of session i's reply in round r (caller frees),
 * ids[i][r] the token chosen after it.
 */
static int generate(int L, int batched, float *hid[NS][ROUNDS], int32_t ids[NS][ROUNDS])
{
    sess_t ss[NS];
    float *x = sw_malloc((size_t)16 * H * sizeof(float));
    int r = 0;

    memset(ss, 0, sizeof(ss));
    for (int i = 0; i < NS && r == 0; i++)
        r = sw_p2p_call_start(conn, "inference", 60000, &s_cbs, &ss[i], &ss[i].call);
    for (int rd = 0; rd < ROUNDS && r == 0; rd++) {
        int n = NS;
        replies_t w = { ss, NS, rd + 1 };

        if (batched)
            sw_server_pause(srv, 1);
        for (int i = 0; i < NS && r == 0; i++) {
            int T = rd == 0 ? plen[i] : 1, rb = -1;
            int32_t tok = rd == 0 ? 0 : ids[i][rd - 1];

            if (i == RB_SESS && rd == RB_ROUND) {
                rb = plen[i] + RB_KEEP;
                tok = (ids[i][RB_KEEP] + 1) % V;
            }
            if ((r = sw_head_embed(head, &sw_ops_cpu, rd == 0 ? prompts[i] : &tok, T, x)) < 0 ||
                (r = s_send(&ss[i], rd == 0, L, x, T, rb, (uint64_t)rd + 1)) < 0)
                break;
            if (!batched) {
                replies_t one = { &ss[i], 1, rd + 1 };
                if (!run_until(all_replied, &one, WAIT_MS))
                    r = sw_err(-ETIMEDOUT, "no reply to session %d round %d", i, rd);
            }
        }
        if (batched && r == 0) {
            if (!run_until(queued_is, &n, WAIT_MS))
                r = sw_err(-ETIMEDOUT, "the server never held %d steps", n);
            sw_server_pause(srv, 0);
        }
        if (r == 0 && !run_until(all_replied, &w, WAIT_MS))
            r = sw_err(-ETIMEDOUT, "replies of round %d missing", rd);
        for (int i = 0; i < NS && r == 0; i++) {
            int T = rd == 0 ? plen[i] : 1;
            hid[i][rd] = sw_malloc((size_t)T * H * sizeof(float));
            if ((r = s_reply(&ss[i], T, hid[i][rd])) == 0)
                ids[i][rd] = next_id(hid[i][rd] + (size_t)(T - 1) * H);
        }
    }
    sw_server_pause(srv, 0);
    for (int i = 0; i < NS; i++) {
        if (ss[i].call && !ss[i].done)
            sw_p2p_call_end(ss[i].call, 0, NULL);
        run_until(flag_set, &ss[i].done, WAIT_MS);
        if (ss[i].resp)
            swarmd__inference_response__free_unpacked(ss[i].resp, NULL);
        sw_free(ss[i].payload);
    }
    sw_free(x);
    return r;
}

/* ======================================================================== server */

static void on_connected(sw_p2p_conn_t *c, int status, void *arg)
{
    conn = c;
    *(int *)arg = status < 0 ? status : 1;
}

static int server_open(const char *dir, const sw_load_opts_t *load, int L)
{
    sw_server_opts_t o = { 0 };
    char addr[256], pid[SW_PEER_ID_TEXT_MAX];
    int port = 0, r, ok = 0;

    o.model_dir = dir;
    o.start = 0;
    o.end = L;
    o.load = *load;
    o.max_cache_tokens = 4096;
    o.max_batch_tokens = 512;
    if ((r = sw_p2p_node_new(&loop, &sid, NULL, NULL, &snode)) < 0 ||
        (r = sw_p2p_node_listen(snode, "127.0.0.1", 0, &port)) < 0 ||
        (r = sw_server_new(&loop, snode, &o, &srv)) < 0 ||
        (r = sw_p2p_node_new(&loop, &cid, NULL, NULL, &cnode)) < 0)
        return r;
    sw_peer_id_text(&sid.id, pid);
    snprintf(addr, sizeof(addr), "%s@127.0.0.1:%d", pid, port);
    if ((r = sw_p2p_connect(cnode, addr, on_connected, &ok)) < 0)
        return r;
    if (!run_until(flag_set, &ok, WAIT_MS) || ok < 0)
        return sw_err(ok < 0 ? ok : -ETIMEDOUT, "cannot connect to the server");
    return 0;
}

static void set_flag(void *arg) { *(int *)arg = 1; }

/* Closes both nodes (every call ends), then the server, running the loop until all is freed. */
static void server_close(void)
{
    int nc = !cnode, ns = !snode, sc = !srv;

    if (cnode)
        sw_p2p_node_close(cnode, set_flag, &nc);
    if (snode)
        sw_p2p_node_close(snode, set_flag, &ns);
    cnode = snode = NULL;
    conn = NULL;
    run_until(flag_set, &nc, WAIT_MS);
    run_until(flag_set, &ns, WAIT_MS);
    if (srv)
        sw_server_close(srv, set_flag, &sc);
    srv = NULL;
    run_until(flag_set, &sc, WAIT_MS);
    uv_run(&loop, UV_RUN_NOWAIT);
}

/* ======================================================================== cases */

static void free_hid(float *hid[NS][ROUNDS])
{
    for (int i = 0; i < NS; i++)
        for (int r = 0; r < ROUNDS; r++) {
            sw_free(hid[i][r]);
            hid[i][r] = NULL;
        }
}

/* The scenario on fixture `name` (blocks 0:L) with load options; batched vs alone bit for bit,
 * ids vs in-process greedy; max_pass: the most sessions one pass may carry here. */
static void batch_case(const char *name, const sw_load_opts_t *load, int max_pass)
{
    char dir[1024];
    float *alone[NS][ROUNDS] = { { 0 } }, *batch[NS][ROUNDS] = { { 0 } };
    int32_t ida[NS][ROUNDS], idb[NS][ROUNDS];
    sw_server_stats_t s0, s1, s2;
    sw_local_t *l = NULL;
    int L;

    snprintf(dir, sizeof(dir), "%s/tests/fixtures/%s", getenv("SW_SOURCE_ROOT"), name);
    SW_CHECK_OK(sw_model_open(dir, &model));
    SW_CHECK_OK(sw_head_load(model, &head));
    H = sw_model_config(model)->hidden_size;
    V = sw_model_config(model)->vocab_size;
    L = sw_model_config(model)->num_layers;
    SW_CHECK_OK(server_open(dir, load, L));
    sw_server_stats(srv, &s0);
    SW_CHECK(s0.batch_rows == 128 && s0.steps == 0);
    SW_CHECK_OK(generate(L, 0, alone, ida));
    sw_server_stats(srv, &s1);
    SW_CHECK_OK(generate(L, 1, batch, idb));
    sw_server_stats(srv, &s2);
    fprintf(stderr, "  %s: alone %llu steps, %llu batched passes; batched run %llu steps, %llu "
            "passes carrying %llu steps, at most %u sessions in one\n", name,
            (unsigned long long)s1.steps, (unsigned long long)s1.batched_passes,
            (unsigned long long)(s2.steps - s1.steps),
            (unsigned long long)(s2.batched_passes - s1.batched_passes),
            (unsigned long long)(s2.batched_steps - s1.batched_steps), s2.max_batch);
    SW_CHECK(s1.steps == NS * ROUNDS && s1.batched_passes == 0);
    SW_CHECK(s2.steps - s1.steps == NS * ROUNDS);
    SW_CHECKF(s2.max_batch == (uint32_t)max_pass, "%u sessions in the largest pass, want %d",
              s2.max_batch, max_pass);
    /* every decode round: NS steps in ceil(NS / max_pass) passes, all batched */
    SW_CHECK(s2.batched_passes - s1.batched_passes >= (uint64_t)(ROUNDS - 1) *
                                                          ((NS + max_pass - 1) / max_pass));
    for (int i = 0; i < NS; i++)
        for (int r = 0; r < ROUNDS; r++) {
            int T = r == 0 ? plen[i] : 1;
            SW_CHECKF(memcmp(alone[i][r], batch[i][r], (size_t)T * H * sizeof(float)) == 0,
                      "%s: session %d round %d: batched reply differs from alone", name, i, r);
            SW_CHECK(ida[i][r] == idb[i][r]);
        }
    /* and the same ids as in-process greedy decoding (sessions without the rollback) */
    SW_CHECK_OK(sw_local_open(dir, 1, MAXLEN, load, &l));
    for (int i = 0; i < NS; i++) {
        int32_t want[ROUNDS];
        if (i == RB_SESS)
            continue;
        SW_CHECK_OK(sw_local_greedy(l, &sw_ops_cpu, prompts[i], plen[i], ROUNDS, want, NULL,
                                    NULL, NULL));
        for (int r = 0; r < ROUNDS; r++)
            SW_CHECKF(idb[i][r] == want[r], "%s: session %d token %d: %d served, %d local", name,
                      i, r, idb[i][r], want[r]);
    }
    sw_local_close(l);
    free_hid(alone);
    free_hid(batch);
    server_close();
    sw_head_free(head);
    sw_model_close(model);
    head = NULL;
    model = NULL;
}

static void test_dense(void)
{
    sw_load_opts_t as_stored = SW_LOAD_OPTS_DEFAULT;

    batch_case("llama-gqa-llama3", &as_stored, NS);
}

static void test_nf4(void)
{
    sw_load_opts_t nf4 = SW_LOAD_OPTS_DEFAULT;

    nf4.quant = SW_QUANT_NF4;
    /* on AVX2 a 1-row NF4 step batches with at most 3 others; portable: all six */
    batch_case("llama-wide", &nf4, strcmp(sw_cpu_simd_name(), "portable") ? 4 : NS);
}

/*
 * A step that fails on the executor (its payload does not decode) fails alone: held together with
 * two good steps, it ends its session with the reason, and the other two still share a pass and
 * get the bits of an in-process sw_span_forward of the same inputs.
 */
static void test_failure_isolated(void)
{
    char dir[1024];
    sw_load_opts_t as_stored = SW_LOAD_OPTS_DEFAULT;
    sess_t ss[3];
    sw_server_stats_t s0, s1;
    sw_span_t *sp = NULL;
    float *x[3], *want = NULL;
    int L, three = 3, ok = 1;
    replies_t w = { ss, 3, 1 };

    snprintf(dir, sizeof(dir), "%s/tests/fixtures/llama-gqa-llama3", getenv("SW_SOURCE_ROOT"));
    SW_CHECK_OK(sw_model_open(dir, &model));
    H = sw_model_config(model)->hidden_size;
    V = sw_model_config(model)->vocab_size;
    L = sw_model_config(model)->num_layers;
    SW_CHECK_OK(server_open(dir, &as_stored, L));
    memset(ss, 0, sizeof(ss));
    sw_server_stats(srv, &s0);
    sw_server_pause(srv, 1);
    for (int i = 0; i < 3; i++) {
        x[i] = sw_test_randv((size_t)2 * H, 300 + (unsigned)i, 1.0f);
        SW_CHECK_OK(sw_p2p_call_start(conn, "inference", 60000, &s_cbs, &ss[i], &ss[i].call));
        SW_CHECK_OK(s_send_as(&ss[i], 1, L, x[i], 2, -1, 1, i == 1));
    }
    SW_CHECK(run_until(queued_is, &three, WAIT_MS));
    sw_server_pause(srv, 0);
    SW_CHECK(run_until(all_replied, &w, WAIT_MS));
    sw_server_stats(srv, &s1);
    SW_CHECKF(ss[1].ended && ss[1].end_status < 0 && strstr(ss[1].error, "absmax"),
              "the spoiled step: ended %d, status %d, '%s'", ss[1].ended, ss[1].end_status,
              ss[1].error);
    SW_CHECK(s1.steps - s0.steps == 3 && s1.batched_passes - s0.batched_passes == 1 &&
             s1.batched_steps - s0.batched_steps == 2);
    /* the good ones: the bits of the same inputs alone, in-process */
    SW_CHECK_OK(sw_span_load(model, 0, L, NULL, &sp));
    want = sw_malloc((size_t)2 * H * sizeof(float));
    for (int i = 0; i < 3 && ok; i += 2) {
        sw_kv_t *kv = NULL;
        float *got = sw_malloc((size_t)2 * H * sizeof(float));
        memcpy(want, x[i], (size_t)2 * H * sizeof(float));
        ok = sw_kv_create(sp, 1, MAXLEN, &kv) == 0 &&
             sw_span_forward(sp, kv, &sw_ops_cpu, want, 1, 2) == 0 &&
             s_reply(&ss[i], 2, got) == 0 && memcmp(got, want, (size_t)2 * H * sizeof(float)) == 0;
        if (!ok)
            fprintf(stderr, "  session %d: reply differs from in-process alone\n", i);
        sw_kv_free(kv);
        sw_free(got);
    }
    for (int i = 0; i < 3; i++) {
        if (ss[i].call && !ss[i].done)
            sw_p2p_call_end(ss[i].call, 0, NULL);
        run_until(flag_set, &ss[i].done, WAIT_MS);
        if (ss[i].resp)
            swarmd__inference_response__free_unpacked(ss[i].resp, NULL);
        sw_free(ss[i].payload);
        sw_free(x[i]);
    }
    sw_free(want);
    sw_span_free(sp);
    server_close();
    sw_model_close(model);
    model = NULL;
    SW_CHECK(ok);
}

static void on_alarm(int sig)
{
    static const char msg[] = "test-serve-batch: watchdog expired\n";

    (void)sig;
    if (write(2, msg, sizeof(msg) - 1) < 0) {}
    _exit(1);
}

int main(void)
{
    uint8_t seed[32];

    if (!getenv("SW_SOURCE_ROOT")) {
        fprintf(stderr, "test-serve-batch: set SW_SOURCE_ROOT\n");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGALRM, on_alarm);
    alarm(240);
    uv_loop_init(&loop);
    memset(seed, 0x11, sizeof(seed));
    sw_identity_from_seed(seed, &sid);
    memset(seed, 0x22, sizeof(seed));
    sw_identity_from_seed(seed, &cid);

    SW_RUN(test_dense);
    SW_RUN(test_nf4);
    SW_RUN(test_failure_isolated);

    server_close();
    uv_loop_close(&loop);
    return sw_test_summary("serve-batch");
}
