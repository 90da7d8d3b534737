/*
 * bench-p2p.c - the p2p layer on loopback, with its baselines measured in the same run:
 *   1. round-trip latency of a unary call carrying 16 KiB each way (one decode step of an
 *      8192-wide bf16 hidden state), p50/p99, against a plain unencrypted libuv TCP ping-pong of the
 *      same size and the same two-thread layout;
 *   2. bulk throughput of a stream of 8 MiB payloads sent by reference (no copy on the send side),
 *      against the AEAD-only rate: XChaCha20-Poly1305 sealing AND opening the same payload bytes in
 *      512 KiB chunks in a two-thread pipeline (see aead_pipeline_rate), measured in rounds that
 *      alternate with the stream so both see the same machine. A one-thread seal-only figure is
 *      printed for reference only.
 * The server runs on its own libuv loop in a second thread, the client on the main thread, so the
 * sender's sealing and the receiver's opening run on two cores.
 * Usage: bench-p2p [round_trips] [bulk_MiB]
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>
#include <uv.h>

#include "p2p/identity.h"
#include "p2p/rpc.h"
#include "util/alloc.h"
#include "util/error.h"
#include "util/log.h"

#define SZ (16u << 10)
#define BULK_MSG (8u << 20)

static double now_s(void)
{
    return (double)uv_hrtime() * 1e-9;
}

static int cmpd(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* ======================================================================== server thread */

typedef struct {
    uv_loop_t loop;
    uv_async_t stop;
    sw_p2p_node_t *node;
    sw_identity_t id;
    uv_tcp_t raw;
    int p2p_port, raw_port;
} server_t;

typedef struct {
    uv_tcp_t t;
    uint8_t buf[SZ];
    size_t have;
    uv_write_t w;
} raw_conn_t;

static void raw_alloc(uv_handle_t *h, size_t s, uv_buf_t *b)
{
    raw_conn_t *c = h->data;
    *b = uv_buf_init((char *)c->buf + c->have, (unsigned)(SZ - c->have));
}

static void raw_free(uv_handle_t *h)
{
    sw_free(h->data);
}

/* plain ping-pong server: echoes each 16 KiB block once it has all of it */
static void raw_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    raw_conn_t *c = s->data;

    if (n < 0) {
        uv_close((uv_handle_t *)s, raw_free);
        return;
    }
    c->have += (size_t)n;
    if (c->have == SZ) {
        uv_buf_t o = uv_buf_init((char *)c->buf, SZ);
        c->have = 0;
        uv_try_write(s, &o, 1); /* 16 KiB fits the socket buffer of a waiting peer */
    }
}

static void raw_accept(uv_stream_t *srv, int status)
{
    raw_conn_t *c = sw_calloc(1, sizeof(*c));

    uv_tcp_init(srv->loop, &c->t);
    c->t.data = c;
    uv_accept(srv, (uv_stream_t *)&c->t);
    uv_tcp_nodelay(&c->t, 1);
    uv_read_start((uv_stream_t *)&c->t, raw_alloc, raw_read);
}

static void echo_msg(sw_p2p_call_t *k, sw_p2p_msg_t *m, void *arg)
{
    size_t n = m->payload_len;
    sw_p2p_call_send(k, NULL, 0, sw_p2p_msg_take_payload(m), n, SW_P2P_SEND_TAKE);
}

static void end_back(sw_p2p_call_t *k, int status, const char *e, void *arg)
{
    sw_p2p_call_end(k, 0, NULL);
}

static void echo_open(sw_p2p_call_t *k, const char *method, void *arg)
{
    sw_p2p_call_cbs_t cbs = { echo_msg, end_back, NULL, NULL };
    sw_p2p_call_set_cbs(k, &cbs, NULL);
}

/* drain: consumes messages (touching the first byte) and answers the end */
static void drain_msg(sw_p2p_call_t *k, sw_p2p_msg_t *m, void *arg)
{
    volatile uint8_t x = m->payload_len ? m->payload[0] : 0;
    (void)x;
}

static void drain_open(sw_p2p_call_t *k, const char *method, void *arg)
{
    sw_p2p_call_cbs_t cbs = { drain_msg, end_back, NULL, NULL };
    sw_p2p_call_set_cbs(k, &cbs, NULL);
}

static void walk_close(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h))
        uv_close(h, h->type == UV_TCP && h->data && h->data != arg ? raw_free : NULL);
}

static void server_stop(uv_async_t *a)
{
    server_t *s = a->data;

    sw_p2p_node_close(s->node, NULL, NULL);
    uv_close((uv_handle_t *)&s->stop, NULL);
    uv_close((uv_handle_t *)&s->raw, NULL);
}

static void *server_main(void *arg)
{
    server_t *s = arg;

    uv_run(&s->loop, UV_RUN_DEFAULT);
    uv_walk(&s->loop, walk_close, s);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    return NULL;
}

/* ======================================================================== client side */

typedef struct {
    uv_loop_t *loop;
    sw_p2p_conn_t *conn;
    int connected, status, done, got;
    uint8_t *payload;
} client_t;

static void on_conn(sw_p2p_conn_t *c, int status, void *arg)
{
    client_t *cl = arg;
    cl->conn = c;
    cl->status = status;
    cl->connected = 1;
}

static void rt_msg(sw_p2p_call_t *k, sw_p2p_msg_t *m, void *arg)
{
    ((client_t *)arg)->got = m->payload_len == SZ;
}

static void rt_done(sw_p2p_call_t *k, int status, void *arg)
{
    client_t *cl = arg;
    cl->done = 1;
    cl->status = status;
}

static void run_while(uv_loop_t *l, const int *flag)
{
    while (!*flag)
        uv_run(l, UV_RUN_ONCE);
}

static int p2p_roundtrip(client_t *cl)
{
    sw_p2p_call_cbs_t cbs = { rt_msg, NULL, rt_done, NULL };
    sw_p2p_call_t *k;
    int r;

    cl->done = cl->got = 0;
    if ((r = sw_p2p_call_start(cl->conn, "echo", 10000, &cbs, cl, &k)) < 0 ||
        (r = sw_p2p_call_send(k, NULL, 0, cl->payload, SZ, 0)) < 0 || (r = sw_p2p_call_end(k, 0, NULL)) < 0)
        return r;
    run_while(cl->loop, &cl->done);
    return cl->status == 0 && cl->got ? 0 : -EIO;
}

/* plain TCP ping-pong client */
typedef struct {
    uv_tcp_t t;
    uv_connect_t c;
    uint8_t in[SZ], out[SZ];
    size_t have;
    int connected, done;
} raw_client_t;

static void rc_alloc(uv_handle_t *h, size_t s, uv_buf_t *b)
{
    raw_client_t *c = h->data;
    *b = uv_buf_init((char *)c->in + c->have, (unsigned)(SZ - c->have));
}

static void rc_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    raw_client_t *c = s->data;

    if (n < 0)
        return;
    c->have += (size_t)n;
    if (c->have == SZ) {
        c->have = 0;
        c->done = 1;
    }
}

static void rc_connected(uv_connect_t *req, int status)
{
    raw_client_t *c = req->data;

    c->connected = status == 0 ? 1 : -1;
    if (status == 0) {
        uv_tcp_nodelay(&c->t, 1);
        uv_read_start((uv_stream_t *)&c->t, rc_alloc, rc_read);
    }
}

static void report(const char *what, double *t, int n)
{
    qsort(t, (size_t)n, sizeof(double), cmpd);
    printf("  %-34s p50 %7.1f us   p99 %7.1f us   (n=%d)\n", what, t[n / 2] * 1e6, t[(int)(n * 0.99)] * 1e6, n);
}

/* ---- bulk ---- */
typedef struct {
    client_t *cl;
    sw_p2p_call_t *k;
    int sent, total;
} bulk_t;

static void bulk_push(bulk_t *b)
{
    while (b->sent < b->total) {
        /* zero-copy: the payload buffer stays ours and unchanged, the transport seals straight from it */
        int r = sw_p2p_call_send_ref(b->k, NULL, 0, b->cl->payload, BULK_MSG, NULL, NULL);
        if (r == -EAGAIN)
            return;
        if (r < 0) {
            fprintf(stderr, "bulk send: %s\n", sw_strerror(r));
            exit(1);
        }
        b->sent++;
    }
    if (b->sent == b->total) {
        sw_p2p_call_end(b->k, 0, NULL);
        b->sent++;
    }
}

static void bulk_writable(sw_p2p_call_t *k, void *arg)
{
    bulk_push(arg);
}

static void bulk_done(sw_p2p_call_t *k, int status, void *arg)
{
    bulk_t *b = arg;
    b->cl->done = 1;
    b->cl->status = status;
}

/* Seal only, one thread, one 512 KiB buffer reused (cache-hot): a reference figure, not the baseline. */
static double seal_rate(size_t total)
{
    uint8_t key[32], nonce[24] = {0};
    size_t chunk = 512u << 10;
    uint8_t *src = sw_malloc(chunk + 16), *dst = sw_malloc(chunk + 16);
    double best = 0;

    randombytes_buf(key, 32);
    randombytes_buf(src, chunk);
    for (int rep = 0; rep < 3; rep++) {
        double t0 = now_s();
        for (size_t done = 0; done < total; done += chunk) {
            nonce[0]++;
            crypto_aead_xchacha20poly1305_ietf_encrypt(dst, NULL, src, chunk, NULL, 0, NULL, nonce, key);
        }
        double r = (double)total / (now_s() - t0);
        best = r > best ? r : best;
    }
    sw_free(src);
    sw_free(dst);
    return best;
}

/*
 * The AEAD-only baseline of the bulk figure: the crypto work the transport does on the same bytes,
 * with nothing else. One thread seals the 8 MiB payload in CHUNK-byte pieces (XChaCha20-Poly1305-IETF,
 * a fresh nonce each, as sw_frame_seal does) into a ring of PIPE_SLOTS buffers; a second thread opens
 * (verifies and decrypts) each piece into its place in an 8 MiB message buffer, as a receiver's loop
 * does. The rate is payload bytes through both per second: what the transport could reach if framing,
 * sockets and the event loops cost nothing.
 */
#define CHUNK (512u << 10) /* the transport's payload bytes per frame (CHUNK_MAX in p2p/rpc.c) */
#define PIPE_SLOTS 8       /* 4 MiB in flight, as the transport's write high-water mark */

typedef struct {
    uint8_t key[32];
    uint8_t *slot[PIPE_SLOTS];
    uint8_t *dst;
    _Atomic uint64_t produced, consumed;
    uint64_t chunks;
    int bad;
} pipe_t;

/* Waits (spinning, then yielding) until *v > at: a hand-off without a futex wake-up, so the baseline
 * is not slowed by wake-up latency (tens of microseconds between vCPUs here). */
static void wait_above(_Atomic uint64_t *v, uint64_t at)
{
    for (int spins = 0; atomic_load_explicit(v, memory_order_acquire) <= at; spins++)
        if (spins > 1000)
            sched_yield();
}

static void nonce_of(uint64_t i, uint8_t nonce[24])
{
    memset(nonce, 0, 24);
    memcpy(nonce, &i, sizeof(i));
    nonce[8] = 1;
}

static void *pipe_opener(void *arg)
{
    pipe_t *p = arg;
    uint8_t nonce[24];
    const uint64_t per_msg = BULK_MSG / CHUNK;

    for (uint64_t i = 0; i < p->chunks; i++) {
        wait_above(&p->produced, i);
        nonce_of(i, nonce);
        if (crypto_aead_xchacha20poly1305_ietf_decrypt(p->dst + (i % per_msg) * CHUNK, NULL, NULL,
                                                       p->slot[i % PIPE_SLOTS], CHUNK + 16, NULL, 0, nonce,
                                                       p->key) != 0)
            p->bad = 1;
        atomic_store_explicit(&p->consumed, i + 1, memory_order_release);
    }
    return NULL;
}

/* Two-thread seal -> open pipeline over `total` bytes of src (BULK_MSG bytes, walked round). */
static double aead_pipeline_rate(const uint8_t *src, size_t total)
{
    pipe_t p;
    pthread_t th;
    uint8_t nonce[24];
    const uint64_t per_msg = BULK_MSG / CHUNK;
    double t0, rate;

    memset(&p, 0, sizeof(p));
    randombytes_buf(p.key, 32);
    for (int i = 0; i < PIPE_SLOTS; i++)
        p.slot[i] = sw_malloc(CHUNK + 16);
    p.dst = sw_malloc(BULK_MSG);
    memset(p.dst, 0, BULK_MSG);
    p.chunks = total / CHUNK;
    t0 = now_s();
    pthread_create(&th, NULL, pipe_opener, &p);
    for (uint64_t i = 0; i < p.chunks; i++) {
        if (i >= PIPE_SLOTS)
            wait_above(&p.consumed, i - PIPE_SLOTS);
        nonce_of(i, nonce);
        crypto_aead_xchacha20poly1305_ietf_encrypt(p.slot[i % PIPE_SLOTS], NULL, src + (i % per_msg) * CHUNK, CHUNK,
                                                   NULL, 0, NULL, nonce, p.key);
        atomic_store_explicit(&p.produced, i + 1, memory_order_release);
    }
    pthread_join(th, NULL);
    rate = (double)(p.chunks * CHUNK) / (now_s() - t0);
    if (p.bad) {
        fprintf(stderr, "aead pipeline: a chunk failed to open\n");
        exit(1);
    }
    for (int i = 0; i < PIPE_SLOTS; i++)
        sw_free(p.slot[i]);
    sw_free(p.dst);
    return rate;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 2000, bulk_mib = argc > 2 ? atoi(argv[2]) : 512;
    server_t s;
    client_t cl = {0};
    sw_identity_t cid;
    sw_p2p_node_t *cnode;
    pthread_t th;
    struct sockaddr_in sa;
    char addr[128], pid[SW_PEER_ID_TEXT_MAX];
    double *t = sw_malloc(sizeof(double) * (size_t)n);
    uv_loop_t loop;

    if (sodium_init() < 0 || n < 10 || bulk_mib < 8)
        return 1;
    sw_log_set_level(SW_LOG_ERROR);
    /* server: p2p node and plain echo server on their own loop */
    memset(&s, 0, sizeof(s));
    uv_loop_init(&s.loop);
    sw_identity_generate(&s.id);
    if (sw_p2p_node_new(&s.loop, &s.id, NULL, NULL, &s.node) < 0 ||
        sw_p2p_node_handle(s.node, "echo", echo_open, NULL) < 0 ||
        sw_p2p_node_handle(s.node, "drain", drain_open, NULL) < 0 ||
        sw_p2p_node_listen(s.node, "127.0.0.1", 0, &s.p2p_port) < 0) {
        fprintf(stderr, "server: %s\n", sw_err_detail());
        return 1;
    }
    uv_tcp_init(&s.loop, &s.raw);
    s.raw.data = &s;
    uv_ip4_addr("127.0.0.1", 0, &sa);
    uv_tcp_bind(&s.raw, (struct sockaddr *)&sa, 0);
    uv_listen((uv_stream_t *)&s.raw, 16, raw_accept);
    {
        struct sockaddr_storage ss;
        int len = sizeof(ss);
        uv_tcp_getsockname(&s.raw, (struct sockaddr *)&ss, &len);
        s.raw_port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    }
    uv_async_init(&s.loop, &s.stop, server_stop);
    s.stop.data = &s;
    pthread_create(&th, NULL, server_main, &s);

    /* client */
    uv_loop_init(&loop);
    cl.loop = &loop;
    cl.payload = sw_malloc(BULK_MSG);
    randombytes_buf(cl.payload, BULK_MSG);
    sw_identity_generate(&cid);
    sw_p2p_node_new(&loop, &cid, NULL, NULL, &cnode);
    sw_peer_id_text(&s.id.id, pid);
    snprintf(addr, sizeof(addr), "%s@127.0.0.1:%d", pid, s.p2p_port);
    sw_p2p_connect(cnode, addr, on_conn, &cl);
    run_while(&loop, &cl.connected);
    if (cl.status < 0) {
        fprintf(stderr, "connect: %s\n", sw_err_detail());
        return 1;
    }
    printf("bench-p2p: loopback, server loop in a second thread; %d round trips, %d MiB bulk\n", n, bulk_mib);

    /* 1. latency: plain TCP first, then p2p, each after a warm-up */
    raw_client_t rc;
    memset(&rc, 0, sizeof(rc));
    uv_tcp_init(&loop, &rc.t);
    rc.t.data = &rc;
    rc.c.data = &rc;
    uv_ip4_addr("127.0.0.1", s.raw_port, &sa);
    uv_tcp_connect(&rc.c, &rc.t, (struct sockaddr *)&sa, rc_connected);
    run_while(&loop, &rc.connected);
    for (int i = -n / 10; i < n; i++) {
        uv_buf_t b = uv_buf_init((char *)rc.out, SZ);
        double t0 = now_s();
        rc.done = 0;
        uv_try_write((uv_stream_t *)&rc.t, &b, 1);
        run_while(&loop, &rc.done);
        if (i >= 0)
            t[i] = now_s() - t0;
    }
    printf("16 KiB round trip:\n");
    report("plain TCP ping-pong (baseline)", t, n);
    for (int i = -n / 10; i < n; i++) {
        double t0 = now_s();
        if (p2p_roundtrip(&cl) < 0) {
            fprintf(stderr, "round trip failed\n");
            return 1;
        }
        if (i >= 0)
            t[i] = now_s() - t0;
    }
    report("p2p unary call (sealed, framed)", t, n);
    uv_close((uv_handle_t *)&rc.t, NULL);

    /* 2. bulk: rounds of (AEAD-only pipeline, p2p stream), interleaved so both see the same machine */
    printf("bulk, stream of 8 MiB payloads (%u KiB frames), sent by reference (sw_p2p_call_send_ref):\n",
           CHUNK >> 10);
    printf("  baseline = AEAD-only rate: XChaCha20-Poly1305-IETF seal AND open of the same 8 MiB payload in\n"
           "  %u KiB chunks, two-thread pipeline (one thread seals, the other opens), no sockets or framing\n",
           CHUNK >> 10);
    double best_pipe = 0, best_p2p = 0;
    for (int round = 0; round < 3; round++) {
        double pipe = aead_pipeline_rate(cl.payload, (size_t)bulk_mib << 20);
        bulk_t b = { &cl, NULL, 0, bulk_mib / 8 };
        sw_p2p_call_cbs_t cbs = { NULL, NULL, bulk_done, bulk_writable };
        cl.done = 0;
        double t0 = now_s();
        if (sw_p2p_call_start(cl.conn, "drain", 0, &cbs, &b, &b.k) < 0)
            return 1;
        bulk_push(&b);
        run_while(&loop, &cl.done);
        double rate = (double)b.total * BULK_MSG / (now_s() - t0);
        if (cl.status != 0) {
            fprintf(stderr, "bulk stream failed: %d\n", cl.status);
            return 1;
        }
        printf("  round %d: AEAD-only pipeline %6.0f MiB/s   p2p stream %6.0f MiB/s   = %3.0f%%\n", round + 1,
               pipe / (1 << 20), rate / (1 << 20), 100 * rate / pipe);
        best_pipe = pipe > best_pipe ? pipe : best_pipe;
        best_p2p = rate > best_p2p ? rate : best_p2p;
    }
    double seal = seal_rate(256u << 20);
    printf("  best of 3: AEAD-only pipeline %6.0f MiB/s, p2p stream %6.0f MiB/s = %.0f%% of the AEAD-only rate"
           " (target >= 80%%)\n", best_pipe / (1 << 20), best_p2p / (1 << 20), 100 * best_p2p / best_pipe);
    printf("  for reference: seal only, one thread, 512 KiB buffer reused: %6.0f MiB/s\n", seal / (1 << 20));

    /* teardown */
    sw_p2p_node_close(cnode, NULL, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    uv_async_send(&s.stop);
    pthread_join(th, NULL);
    uv_loop_close(&s.loop);
    sw_free(cl.payload);
    sw_free(t);
    return 0;
}
