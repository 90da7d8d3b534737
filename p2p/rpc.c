/*
 * rpc.c - connections, handshake driving, framing on sockets, calls, streams, flow control and
 * keepalive; see rpc.h. Everything in this file runs on the node's libuv loop thread.
 *
 * Lifetimes: a node is freed once its listeners, connections and pending connects are gone; a
 * connection once its three handles (tcp, timer, idle) are closed; a call is unlinked when it
 * finishes and parked on its connection's zombie list until a safe point (the idle callback or the
 * connection's end), so callbacks that cancel or end calls never free memory a caller still uses.
 */
#include "p2p/rpc.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <sodium.h>

#include "p2p/frame.h"
#include "p2p/handshake.h"
#include "p2p/rpc_internal.h"
#include "swarmd.pb-c.h"
#include "util/alloc.h"
#include "util/error.h"
#include "util/log.h"

#define F(x) SWARMD__ENVELOPE__FLAG__FLAG_##x
#define NBUCKETS 256
#define WRITE_HIWAT (4u << 20)  /* sealed bytes handed to libuv before we stop producing frames */
#define BATCH_MIN (64u << 10)   /* small frames are gathered into writes of this size */
#define CHUNK_MAX (512u << 10)  /* payload bytes per frame */
#define WBUF_BIG (CHUNK_MAX + (64u << 10)) /* a write buffer that holds a full chunk frame and more */
#define RX_SMALL (64u << 10)    /* received frames up to this size are not worth a kept buffer */
#define MAX_LISTENERS 4
#define ERROR_TEXT_MAX 512

sw_p2p_tx_hook_fn sw_p2p_test_tx_hook;

enum { C_CONNECTING, C_HANDSHAKE, C_READY, C_CLOSING };
enum { TX_MSG, TX_END };

typedef struct tx_item {
    struct tx_item *next;
    int type;
    uint8_t *body;
    size_t body_len;
    const uint8_t *payload;
    sw_p2p_release_fn release; /* hands payload back (NULL: nothing to do) */
    void *release_arg;
    size_t payload_len, sent;
    int started;
    int status;
    char *error;
} tx_item_t;

typedef struct rx_msg {
    struct rx_msg *next;
    sw_p2p_msg_t m;
    uint64_t size; /* credit it holds */
    uint64_t have; /* payload bytes received so far */
} rx_msg_t;

typedef struct ctrl {
    struct ctrl *next;
    uint32_t flags;
    uint64_t call_id, value;
    int status;
} ctrl_t;

typedef struct {
    uv_timer_t t;
    sw_p2p_call_t *call;
} call_timer_t;

struct sw_p2p_call {
    sw_p2p_conn_t *conn;
    sw_p2p_call_t *hnext, *rnext, *znext, *qnext;
    uint64_t id;
    int local, in_ready, in_resume, finished, abandoned, paused;
    char method[SW_METHOD_MAX + 1];
    uint64_t deadline_ms;
    sw_p2p_call_cbs_t cbs;
    void *arg;
    call_timer_t *timer;
    /* sending */
    tx_item_t *txh, *txt;
    size_t tx_queued;
    int open_sent, end_queued, end_sent, want_writable;
    int64_t credit;
    /* receiving */
    rx_msg_t *rxh, *rxt, *partial;
    uint64_t outstanding, to_return;
    int end_received, end_delivered, end_status;
    char *end_error;
};

struct sw_p2p_conn {
    sw_p2p_node_t *node;
    sw_p2p_conn_t *prev, *next;
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_idle_t idle;
    uv_connect_t creq;
    int handles, state, initiator, counted, idle_on, close_status, ready_reported;
    sw_hs_t *hs;
    sw_frame_dir_t tx, rx;
    sw_hs_params_t remote;
    sw_peer_id_t peer;
    char who[64]; /* short peer id once known, else the address */
    char addr[48];
    sw_p2p_connect_cb connect_cb;
    void *connect_arg;
    int has_pin;
    sw_peer_id_t pin;
    /* reading */
    uint8_t pre[SW_FRAME_PREFIX];
    uint32_t pre_have, pre_need, body_len, body_have, hdr_len;
    uint8_t *body;
    uint8_t *rxspare; /* a kept frame buffer for large frames (freed when unused for a keepalive tick) */
    uint32_t rxspare_cap;
    int bufs_used;    /* a kept buffer was used since the last keepalive tick */
    uint8_t hsbuf[SW_HS_MAX_MSG];
    uint8_t rxbuf[64 << 10];
    /* writing */
    struct wbuf *batch;
    struct wbuf *wspare[2]; /* kept WBUF_BIG write buffers, so bulk sending allocates nothing */
    int nwspare;
    size_t write_bytes;
    uint8_t *hdrbuf;
    ctrl_t *ctrlh, *ctrlt;
    sw_p2p_call_t *readyh, *readyt, *resumeh, *zombies;
    /* calls */
    sw_p2p_call_t *buckets[NBUCKETS];
    uint64_t next_id, last_remote_id;
    uint32_t calls_local, calls_remote;
    int64_t conn_credit;
    uint64_t conn_outstanding, conn_to_return;
    size_t queued_bytes, buffered_bytes;
    /* keepalive */
    uint64_t last_rx_ms;
    double rtt_ms;
};

typedef struct wbuf {
    uv_write_t req;
    sw_p2p_conn_t *conn;
    size_t cap, len;
    uint8_t data[];
} wbuf_t;

typedef struct handler {
    struct handler *next;
    char method[SW_METHOD_MAX + 1];
    sw_p2p_handler_fn fn;
    void *arg;
} handler_t;

typedef struct connect_req {
    struct connect_req *prev, *next;
    sw_p2p_node_t *node;
    uv_getaddrinfo_t gai;
    sw_addr_t addr;
    sw_p2p_connect_cb cb;
    void *arg;
} connect_req_t;

struct sw_p2p_node {
    uv_loop_t *loop;
    const sw_identity_t *id;
    uint8_t psk[32];
    int has_psk, closing, pending;
    sw_p2p_limits_t lim;
    sw_hs_params_t params;
    sw_p2p_node_cbs_t cbs;
    void *cbs_arg;
    uv_tcp_t *listeners[MAX_LISTENERS];
    int nlisteners;
    handler_t *handlers;
    sw_p2p_conn_t *conns;
    uint32_t nconns;
    connect_req_t *reqs;
    void (*done)(void *);
    void *done_arg;
    sw_p2p_stats_t stats;
};

static void pump(sw_p2p_conn_t *c);
static void conn_fail(sw_p2p_conn_t *c, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void call_finish(sw_p2p_call_t *k, int status, int notify);
static void node_maybe_done(sw_p2p_node_t *n);

/* ======================================================================== limits, node basics */

void sw_p2p_limits_default(sw_p2p_limits_t *l)
{
    l->max_conns = 256;
    l->max_conns_per_addr = 8;
    l->per_addr_loopback = 0;
    l->max_frame = 1u << 20;
    l->max_header = 64u << 10;
    l->max_message = 256ull << 20;
    l->max_calls = 1024;
    l->window = 16u << 20; /* two 8 MiB messages in flight: with one, the sender idles at each message's end */
    l->conn_window = 64u << 20;
    l->send_buffer = 8u << 20;
    l->handshake_timeout_ms = 10000;
    l->keepalive_ms = 15000;
    l->idle_timeout_ms = 60000;
}

static uint64_t now_ms(const sw_p2p_conn_t *c)
{
    return uv_now(c->node->loop);
}

uint8_t *sw_p2p_msg_take_payload(sw_p2p_msg_t *m)
{
    uint8_t *p = m->payload;

    m->payload = NULL;
    return p;
}

/* ======================================================================== calls: table and lists */

static sw_p2p_call_t *call_find(sw_p2p_conn_t *c, uint64_t id)
{
    for (sw_p2p_call_t *k = c->buckets[id % NBUCKETS]; k; k = k->hnext)
        if (k->id == id)
            return k;
    return NULL;
}

static void call_unlink(sw_p2p_call_t *k)
{
    sw_p2p_call_t **pp = &k->conn->buckets[k->id % NBUCKETS];

    while (*pp && *pp != k)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = k->hnext;
}

static void on_idle(uv_idle_t *h);

static void schedule(sw_p2p_conn_t *c)
{
    if (!c->idle_on && c->state != C_CLOSING) {
        uv_idle_start(&c->idle, on_idle);
        c->idle_on = 1;
    }
}

/* A call may produce a frame: it has something queued and, for a new message, credit. */
static int call_can_send(const sw_p2p_call_t *k)
{
    const tx_item_t *t = k->txh;

    if (!t || k->finished)
        return 0;
    if (t->type == TX_END || t->started)
        return 1;
    return k->credit > 0 && k->conn->conn_credit > 0;
}

static void ready_add(sw_p2p_call_t *k)
{
    sw_p2p_conn_t *c = k->conn;

    if (k->in_ready || !call_can_send(k))
        return;
    k->in_ready = 1;
    k->rnext = NULL;
    if (c->readyt)
        c->readyt->rnext = k;
    else
        c->readyh = k;
    c->readyt = k;
    schedule(c);
}

static sw_p2p_call_t *ready_pop(sw_p2p_conn_t *c)
{
    sw_p2p_call_t *k = c->readyh;

    if (!k)
        return NULL;
    c->readyh = k->rnext;
    if (!c->readyh)
        c->readyt = NULL;
    k->in_ready = 0;
    return k;
}

static void ready_remove(sw_p2p_call_t *k)
{
    sw_p2p_conn_t *c = k->conn;
    sw_p2p_call_t *prev = NULL;

    if (!k->in_ready)
        return;
    for (sw_p2p_call_t *x = c->readyh; x; prev = x, x = x->rnext) {
        if (x != k)
            continue;
        if (prev)
            prev->rnext = x->rnext;
        else
            c->readyh = x->rnext;
        if (c->readyt == x)
            c->readyt = prev;
        break;
    }
    k->in_ready = 0;
}

static void ctrl_push(sw_p2p_conn_t *c, uint32_t flags, uint64_t call_id, uint64_t value, int status)
{
    ctrl_t *x = sw_calloc(1, sizeof(*x));

    if (!x) {
        conn_fail(c, -ENOMEM, "out of memory queueing a control frame");
        return;
    }
    x->flags = flags;
    x->call_id = call_id;
    x->value = value;
    x->status = status;
    if (c->ctrlt)
        c->ctrlt->next = x;
    else
        c->ctrlh = x;
    c->ctrlt = x;
    schedule(c);
}

static void tx_item_free(tx_item_t *t)
{
    sw_free(t->body);
    if (t->release)
        t->release((void *)t->payload, t->release_arg);
    sw_free(t->error);
    sw_free(t);
}

static void rx_msg_free(rx_msg_t *m)
{
    sw_free((void *)m->m.body);
    sw_free(m->m.payload);
    sw_free(m);
}

static void call_free(sw_p2p_call_t *k)
{
    sw_free(k->end_error);
    sw_free(k);
}

static void timer_closed(uv_handle_t *h)
{
    sw_free(h->data);
}

/* Frees the calls parked after finishing. Only at safe points: no caller holds them any more.
 * A call still linked in the resume list (a pause lifted just before it finished) stays parked
 * until on_idle has unlinked it: freeing it here left on_idle reading a freed call. */
static void reap(sw_p2p_conn_t *c)
{
    sw_p2p_call_t **pp = &c->zombies;

    while (*pp) {
        sw_p2p_call_t *k = *pp;
        if (k->in_resume) {
            pp = &k->znext;
            continue;
        }
        *pp = k->znext;
        call_free(k);
    }
}

/* Hands back credit for bytes consumed (or dropped) by the receiving side, in batches. */
static void return_credit(sw_p2p_conn_t *c, sw_p2p_call_t *k, uint64_t size)
{
    sw_p2p_node_t *n = c->node;

    c->buffered_bytes -= size;
    c->conn_to_return += size;
    if (c->conn_to_return >= n->lim.conn_window / 4 || c->conn_to_return >= c->conn_outstanding) {
        c->conn_outstanding -= c->conn_to_return;
        ctrl_push(c, F(WINDOW), 0, c->conn_to_return, 0);
        c->conn_to_return = 0;
    }
    if (!k || k->finished)
        return;
    k->to_return += size;
    if (k->to_return >= n->lim.window / 4 || k->to_return >= k->outstanding) {
        k->outstanding -= k->to_return;
        ctrl_push(c, F(WINDOW), k->id, k->to_return, 0);
        k->to_return = 0;
    }
}

/*
 * Ends a call: unlinks it, drops what it holds, returns the connection credit of messages it held,
 * and (notify, not abandoned) calls on_done. The call is freed later by reap().
 */
static void call_finish(sw_p2p_call_t *k, int status, int notify)
{
    sw_p2p_conn_t *c = k->conn;

    if (k->finished)
        return;
    k->finished = 1;
    call_unlink(k);
    ready_remove(k);
    if (k->local)
        c->calls_local--;
    else
        c->calls_remote--;
    while (k->txh) {
        tx_item_t *t = k->txh;
        k->txh = t->next;
        c->queued_bytes -= t->type == TX_MSG ? t->body_len + t->payload_len : 0;
        tx_item_free(t);
    }
    k->txt = NULL;
    k->tx_queued = 0;
    while (k->rxh) {
        rx_msg_t *m = k->rxh;
        k->rxh = m->next;
        return_credit(c, NULL, m->size);
        rx_msg_free(m);
    }
    if (k->partial) {
        return_credit(c, NULL, k->partial->size);
        rx_msg_free(k->partial);
        k->partial = NULL;
    }
    if (k->timer) {
        k->timer->call = NULL;
        uv_close((uv_handle_t *)&k->timer->t, timer_closed);
        k->timer = NULL;
    }
    k->znext = c->zombies;
    c->zombies = k;
    schedule(c);
    if (notify && !k->abandoned && k->cbs.on_done)
        k->cbs.on_done(k, status, k->arg);
}

static void call_deadline(uv_timer_t *t)
{
    call_timer_t *ct = t->data;
    sw_p2p_call_t *k = ct->call;

    if (!k || k->finished)
        return;
    ctrl_push(k->conn, F(CANCEL), k->id, 0, -ETIMEDOUT);
    call_finish(k, -ETIMEDOUT, 1);
}

static sw_p2p_call_t *call_new(sw_p2p_conn_t *c, uint64_t id, int local, uint64_t deadline_ms)
{
    sw_p2p_call_t *k = sw_calloc(1, sizeof(*k));

    if (!k)
        return NULL;
    k->conn = c;
    k->id = id;
    k->local = local;
    k->credit = c->remote.window;
    k->deadline_ms = deadline_ms;
    if (deadline_ms) {
        k->timer = sw_calloc(1, sizeof(*k->timer));
        if (!k->timer) {
            sw_free(k);
            return NULL;
        }
        uv_timer_init(c->node->loop, &k->timer->t);
        k->timer->t.data = k->timer;
        k->timer->call = k;
        uv_timer_start(&k->timer->t, call_deadline, deadline_ms, 0);
    }
    k->hnext = c->buckets[id % NBUCKETS];
    c->buckets[id % NBUCKETS] = k;
    if (local)
        c->calls_local++;
    else
        c->calls_remote++;
    return k;
}

/* Finishes the call when both halves are over and everything received has been delivered. */
static void call_maybe_complete(sw_p2p_call_t *k)
{
    if (!k->finished && k->end_sent && k->end_delivered)
        call_finish(k, k->end_status, 1);
}

/* Delivers queued messages and then the peer's end, unless paused. */
static void call_deliver(sw_p2p_call_t *k)
{
    sw_p2p_conn_t *c = k->conn;

    while (k->rxh && !k->paused && !k->finished && c->state == C_READY) {
        rx_msg_t *m = k->rxh;
        k->rxh = m->next;
        if (!k->rxh)
            k->rxt = NULL;
        if (k->cbs.on_msg && !k->abandoned)
            k->cbs.on_msg(k, &m->m, k->arg);
        return_credit(c, k, m->size);
        rx_msg_free(m);
    }
    if (k->finished || k->paused || k->rxh || !k->end_received || k->end_delivered || c->state != C_READY)
        return;
    k->end_delivered = 1;
    if (k->cbs.on_end && !k->abandoned)
        k->cbs.on_end(k, k->end_status, k->end_error ? k->end_error : "", k->arg);
    call_maybe_complete(k);
}

/* ======================================================================== writing */

/* Takes back a written buffer: kept for reuse when it is a big one and there is room, else freed. */
static void wbuf_put(sw_p2p_conn_t *c, wbuf_t *w)
{
    if (w->cap == WBUF_BIG && c->nwspare < 2 && c->state != C_CLOSING)
        c->wspare[c->nwspare++] = w;
    else
        sw_free(w);
}

static void spares_free(sw_p2p_conn_t *c)
{
    while (c->nwspare)
        sw_free(c->wspare[--c->nwspare]);
    sw_free(c->rxspare);
    c->rxspare = NULL;
    c->rxspare_cap = 0;
}

static void on_write(uv_write_t *req, int status)
{
    wbuf_t *w = (wbuf_t *)req;
    sw_p2p_conn_t *c = w->conn;

    c->write_bytes -= w->len;
    wbuf_put(c, w);
    if (status < 0 && status != UV_ECANCELED)
        conn_fail(c, status, "write failed: %s", uv_strerror(status));
    else if (c->state == C_READY)
        pump(c);
}

static void batch_flush(sw_p2p_conn_t *c)
{
    wbuf_t *w = c->batch;
    uv_buf_t b;
    int r;

    if (!w)
        return;
    c->batch = NULL;
    b = uv_buf_init((char *)w->data, (unsigned)w->len);
    c->write_bytes += w->len;
    r = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_write);
    if (r < 0) {
        c->write_bytes -= w->len;
        wbuf_put(c, w);
        conn_fail(c, r, "write failed: %s", uv_strerror(r));
    }
}

/* Room for n more bytes at the end of the current batch (a new one when it is full); NULL on OOM. */
static uint8_t *batch_reserve(sw_p2p_conn_t *c, size_t n)
{
    wbuf_t *w = c->batch;

    if (w && w->len + n > w->cap) {
        batch_flush(c);
        w = NULL;
    }
    if (!w) {
        size_t cap = n > BATCH_MIN ? n : BATCH_MIN;
        if (cap > BATCH_MIN && cap <= WBUF_BIG)
            cap = WBUF_BIG;
        if (cap == WBUF_BIG && c->nwspare) {
            w = c->wspare[--c->nwspare];
            c->bufs_used = 1;
        } else {
            w = sw_malloc(sizeof(*w) + cap);
        }
        if (!w)
            return NULL;
        w->conn = c;
        w->cap = cap;
        w->len = 0;
        c->batch = w;
    }
    w->len += n;
    return w->data + w->len - n;
}

/* Seals one frame (envelope + optional payload chunk) into the batch. */
static int emit(sw_p2p_conn_t *c, const Swarmd__Envelope *e, const uint8_t *payload, size_t plen)
{
    size_t hlen = swarmd__envelope__get_packed_size(e), total;
    uint8_t *out;
    int times = 1;

    if (hlen > c->remote.max_header || sw_frame_size(hlen, plen) - SW_FRAME_PREFIX > c->remote.max_frame) {
        conn_fail(c, SW_ELIMIT, "internal: frame of %zu+%zu bytes over the peer's limits", hlen, plen);
        return SW_ELIMIT;
    }
    swarmd__envelope__pack(e, c->hdrbuf);
    total = sw_frame_size(hlen, plen);
    out = batch_reserve(c, total);
    if (!out) {
        conn_fail(c, -ENOMEM, "out of memory sealing a frame");
        return -ENOMEM;
    }
    sw_frame_seal(&c->tx, c->hdrbuf, hlen, payload, plen, out);
    c->node->stats.frames_out++;
    if (sw_p2p_test_tx_hook)
        times = sw_p2p_test_tx_hook(c, out, total);
    if (times == 2) {
        uint8_t *again = batch_reserve(c, total);
        if (again)
            memcpy(again, c->batch->data + c->batch->len - 2 * total, total);
    }
    return 0;
}

/* The largest payload chunk that fits a frame with an envelope of hlen bytes. */
static size_t chunk_limit(const sw_p2p_conn_t *c, size_t hlen)
{
    size_t room = c->remote.max_frame - hlen - 2 * SW_FRAME_TAG;

    return room < CHUNK_MAX ? room : CHUNK_MAX;
}

/* Emits the next frame of call k. */
static void call_emit(sw_p2p_call_t *k)
{
    sw_p2p_conn_t *c = k->conn;
    Swarmd__Envelope e = SWARMD__ENVELOPE__INIT;
    tx_item_t *t = k->txh;
    const uint8_t *chunk = NULL;
    size_t clen = 0;
    int pop = 0;

    e.call_id = k->id;
    if (k->local && !k->open_sent) {
        e.flags |= F(STREAM_OPEN);
        e.method = k->method;
        e.deadline_ms = k->deadline_ms;
        k->open_sent = 1;
    }
    if (!k->local)
        e.flags |= F(REPLY);
    if (t->type == TX_MSG && !t->started) {
        uint64_t size = t->body_len + t->payload_len ? t->body_len + t->payload_len : 1;
        e.flags |= F(STREAM_DATA);
        e.body.data = t->body;
        e.body.len = t->body_len;
        e.payload_len = t->payload_len;
        t->started = 1;
        k->credit -= (int64_t)size;
        c->conn_credit -= (int64_t)size;
        clen = t->payload_len;
        if (clen) {
            size_t lim = chunk_limit(c, swarmd__envelope__get_packed_size(&e) + 16);
            clen = clen < lim ? clen : lim;
            chunk = t->payload;
        }
    } else if (t->type == TX_MSG) {
        size_t lim;
        e.flags = F(CONT);
        lim = chunk_limit(c, swarmd__envelope__get_packed_size(&e));
        clen = t->payload_len - t->sent;
        clen = clen < lim ? clen : lim;
        chunk = t->payload + t->sent;
    }
    if (t->type == TX_MSG) {
        t->sent += clen;
        pop = t->sent == t->payload_len;
        /* a message that is complete in this frame carries the end with it when that is next */
        if (pop && t->next && t->next->type == TX_END && !(e.flags & F(CONT))) {
            tx_item_t *end = t->next;
            e.flags |= F(STREAM_END);
            e.status = end->status;
            e.error = end->error ? end->error : "";
            t->next = end->next;
            if (k->txt == end)
                k->txt = t;
            tx_item_free(end);
            k->end_sent = 1;
        }
    } else {
        e.flags |= F(STREAM_END);
        e.status = t->status;
        e.error = t->error ? t->error : "";
        k->end_sent = 1;
        pop = 1;
    }
    if (emit(c, &e, chunk, clen) < 0)
        return;
    if (pop) {
        size_t sz = t->type == TX_MSG ? t->body_len + t->payload_len : 0;
        k->txh = t->next;
        if (!k->txh)
            k->txt = NULL;
        k->tx_queued -= sz;
        c->queued_bytes -= sz;
        tx_item_free(t);
        if (k->want_writable && k->tx_queued <= c->node->lim.send_buffer / 2) {
            k->want_writable = 0;
            if (k->cbs.on_writable && !k->abandoned)
                k->cbs.on_writable(k, k->arg);
        }
    }
    if (!k->finished && c->state == C_READY) {
        if (k->end_sent && !k->txh)
            call_maybe_complete(k);
        else
            ready_add(k);
    }
}

/* Produces frames while the socket is not too far behind: control frames first, then the calls
 * round-robin, one frame each per turn. */
static void pump(sw_p2p_conn_t *c)
{
    sw_p2p_call_t *k;

    while (c->state == C_READY && c->ctrlh) {
        Swarmd__Envelope e = SWARMD__ENVELOPE__INIT;
        ctrl_t *x = c->ctrlh;
        c->ctrlh = x->next;
        if (!c->ctrlh)
            c->ctrlt = NULL;
        e.flags = x->flags;
        e.call_id = x->call_id;
        e.status = x->status;
        if (x->flags & F(WINDOW))
            e.credit = x->value;
        else
            e.ping_ns = x->value;
        sw_free(x);
        if (emit(c, &e, NULL, 0) < 0)
            return;
    }
    while (c->state == C_READY && c->write_bytes + (c->batch ? c->batch->len : 0) < WRITE_HIWAT &&
           (k = ready_pop(c)))
        if (call_can_send(k))
            call_emit(k);
    if (c->state == C_READY)
        batch_flush(c);
}

static void on_idle(uv_idle_t *h)
{
    sw_p2p_conn_t *c = h->data;

    uv_idle_stop(h);
    c->idle_on = 0;
    reap(c);
    while (c->resumeh && c->state == C_READY) {
        sw_p2p_call_t *k = c->resumeh;
        c->resumeh = k->qnext;
        k->in_resume = 0;
        if (!k->finished)
            call_deliver(k);
    }
    if (c->state == C_READY)
        pump(c);
    reap(c);
}

/* ======================================================================== connection teardown */

static void conn_handle_closed(uv_handle_t *h)
{
    sw_p2p_conn_t *c = h->data;
    sw_p2p_node_t *n = c->node;

    if (--c->handles > 0)
        return;
    if (c->prev)
        c->prev->next = c->next;
    else
        n->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    n->nconns--;
    while (c->resumeh) { /* nothing resumes on a closed connection: unlink, so reap frees all */
        sw_p2p_call_t *k = c->resumeh;
        c->resumeh = k->qnext;
        k->in_resume = 0;
    }
    reap(c);
    while (c->ctrlh) {
        ctrl_t *x = c->ctrlh;
        c->ctrlh = x->next;
        sw_free(x);
    }
    if (c->body != c->hsbuf && c->body != c->rxspare)
        sw_free(c->body);
    spares_free(c);
    sw_free(c->hdrbuf);
    if (c->batch)
        sw_free(c->batch);
    if (c->hs) {
        sw_hs_wipe(c->hs);
        sw_free(c->hs);
    }
    sodium_memzero(&c->tx, sizeof(c->tx));
    sodium_memzero(&c->rx, sizeof(c->rx));
    sw_free(c);
    n->pending--;
    node_maybe_done(n);
}

/* Closes the connection: every call completes with status (or -ECONNRESET), the user hears of it,
 * and the memory goes when the handles are closed. Safe to call more than once. */
static void conn_close_status(sw_p2p_conn_t *c, int status)
{
    sw_p2p_node_t *n = c->node;
    int was_ready = c->state == C_READY && c->ready_reported;

    if (c->state == C_CLOSING)
        return;
    c->state = C_CLOSING;
    c->close_status = status;
    for (int b = 0; b < NBUCKETS; b++)
        while (c->buckets[b])
            call_finish(c->buckets[b], -ECONNRESET, 1);
    if (c->connect_cb) {
        sw_p2p_connect_cb cb = c->connect_cb;
        c->connect_cb = NULL;
        cb(NULL, status ? status : -ECONNRESET, c->connect_arg);
    }
    if (was_ready && n->cbs.on_closed)
        n->cbs.on_closed(c, status, n->cbs_arg);
    if (c->idle_on)
        uv_idle_stop(&c->idle);
    uv_close((uv_handle_t *)&c->tcp, conn_handle_closed);
    uv_close((uv_handle_t *)&c->timer, conn_handle_closed);
    uv_close((uv_handle_t *)&c->idle, conn_handle_closed);
}

static void conn_fail(sw_p2p_conn_t *c, int status, const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    if (c->state == C_CLOSING)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    /* a peer going away, or not being there, is routine: its caller hears of it and decides */
    sw_log(status == -ECONNRESET || status == UV_EOF || status == UV_ECONNREFUSED ? SW_LOG_INFO : SW_LOG_WARN, "p2p",
           "%s: closing connection: %s", c->who, msg);
    sw_err(status, "%s: %s", c->who, msg);
    conn_close_status(c, status);
}

void sw_p2p_conn_close(sw_p2p_conn_t *c)
{
    sw_log(SW_LOG_INFO, "p2p", "%s: closing connection", c->who);
    conn_close_status(c, 0);
}

/* ======================================================================== receiving: dispatch */

static void violation(sw_p2p_conn_t *c, int status, const char *what)
{
    c->node->stats.violations++;
    conn_fail(c, status, "protocol violation: %s", what);
}

/* Opens this frame's payload segment into dst (or in place to verify and drop it when dst is NULL). */
static int open_payload(sw_p2p_conn_t *c, uint8_t *dst)
{
    if (sw_frame_open_payload(&c->rx, c->pre, c->body, c->body_len, c->hdr_len,
                              dst ? dst : c->body + c->hdr_len + SW_FRAME_TAG) < 0) {
        c->node->stats.auth_failures++;
        conn_fail(c, SW_EFORMAT, "%s", sw_err_detail());
        return SW_EFORMAT;
    }
    return 0;
}

static void on_handler_open(sw_p2p_conn_t *c, sw_p2p_call_t *k)
{
    for (handler_t *h = c->node->handlers; h; h = h->next) {
        if (strcmp(h->method, k->method) == 0) {
            h->fn(k, k->method, h->arg);
            return;
        }
    }
    sw_log(SW_LOG_INFO, "p2p", "%s: call to unknown method '%s'", c->who, k->method);
    k->abandoned = 1; /* nobody listens: messages are dropped, the end says why */
    sw_p2p_call_end(k, -ENOENT, "no handler for this method on the peer");
    k->abandoned = 1;
}

/* A message's first frame: allocates it (within the windows) and opens its first chunk. */
static int rx_start_msg(sw_p2p_conn_t *c, sw_p2p_call_t *k, const Swarmd__Envelope *e, size_t plen)
{
    sw_p2p_node_t *n = c->node;
    uint64_t size = e->body.len + e->payload_len ? e->body.len + e->payload_len : 1;
    rx_msg_t *m;

    if (plen > e->payload_len) {
        violation(c, SW_EFORMAT, "frame carries more payload than its message");
        return -1;
    }
    if (c->conn_outstanding >= n->lim.conn_window) {
        violation(c, SW_ELIMIT, "message sent beyond the connection's window");
        return -1;
    }
    if (k && k->outstanding >= n->lim.window) {
        violation(c, SW_ELIMIT, "message sent beyond the call's window");
        return -1;
    }
    if (k && k->partial) {
        violation(c, SW_EFORMAT, "new message before the previous one's payload ended");
        return -1;
    }
    c->conn_outstanding += size;
    c->buffered_bytes += size;
    if (!k || k->abandoned) { /* nobody takes it: verify and hand the credit straight back */
        if (plen && open_payload(c, NULL) < 0)
            return -1;
        if (plen < e->payload_len && k) { /* the rest follows as CONT frames: keep counting them */
            m = sw_calloc(1, sizeof(*m));
            if (!m)
                goto oom;
            m->size = size;
            m->have = plen;
            m->m.payload_len = e->payload_len;
            k->outstanding += size;
            k->partial = m;
            return 0;
        }
        return_credit(c, NULL, size);
        return 0;
    }
    k->outstanding += size;
    m = sw_calloc(1, sizeof(*m));
    if (!m)
        goto oom;
    m->size = size;
    m->m.body_len = e->body.len;
    m->m.payload_len = e->payload_len;
    if (e->body.len) {
        uint8_t *b = sw_malloc(e->body.len);
        if (!b) {
            sw_free(m);
            goto oom;
        }
        memcpy(b, e->body.data, e->body.len);
        m->m.body = b;
    }
    if (e->payload_len) {
        m->m.payload = sw_malloc(e->payload_len);
        if (!m->m.payload) {
            rx_msg_free(m);
            goto oom;
        }
    }
    if (plen && open_payload(c, m->m.payload) < 0) {
        rx_msg_free(m);
        return -1;
    }
    m->have = plen;
    k->partial = m;
    return 0;
oom:
    conn_fail(c, -ENOMEM, "out of memory for a message of %llu bytes", (unsigned long long)size);
    return -1;
}

/* Moves a completed message to the call's queue and delivers what can be delivered. */
static void rx_complete(sw_p2p_conn_t *c, sw_p2p_call_t *k)
{
    rx_msg_t *m = k->partial;

    k->partial = NULL;
    if (k->abandoned) {
        return_credit(c, k, m->size);
        rx_msg_free(m);
        return;
    }
    if (k->rxt)
        k->rxt->next = m;
    else
        k->rxh = m;
    k->rxt = m;
    call_deliver(k);
}

static void dispatch_call(sw_p2p_conn_t *c, const Swarmd__Envelope *e, size_t plen)
{
    sw_p2p_node_t *n = c->node;
    uint64_t id = e->call_id;
    int ours = (int)(id & 1) == (c->initiator ? 1 : 0);
    sw_p2p_call_t *k = call_find(c, id);
    uint32_t f = e->flags;

    if (f & F(STREAM_OPEN)) {
        if (ours || id <= c->last_remote_id) {
            violation(c, SW_EFORMAT, "call opened with a reused or foreign id");
            return;
        }
        if (c->calls_remote >= n->lim.max_calls) {
            char why[96];
            snprintf(why, sizeof(why), "more than %u calls in flight", n->lim.max_calls);
            violation(c, SW_ELIMIT, why);
            return;
        }
        c->last_remote_id = id;
        k = call_new(c, id, 0, e->deadline_ms > 3600000 ? 3600000 : e->deadline_ms);
        if (!k) {
            conn_fail(c, -ENOMEM, "out of memory opening a call");
            return;
        }
        snprintf(k->method, sizeof(k->method), "%s", e->method);
        on_handler_open(c, k);
        if (c->state != C_READY)
            return;
        if (k->finished)
            k = NULL;
    } else if (!k && !ours && id > c->last_remote_id) {
        violation(c, SW_EFORMAT, "frame for a call never opened");
        return;
    }
    if (k && k->finished)
        k = NULL;
    if (f & F(CANCEL)) {
        if (k)
            call_finish(k, e->status < 0 ? -ECANCELED : -ECANCELED, 1);
        return;
    }
    if (f & F(CONT)) {
        if (!k) { /* a message of a call that is gone: verify and drop */
            open_payload(c, NULL);
            return;
        }
        rx_msg_t *m = k->partial;
        if (!m || plen == 0 || m->have + plen > m->m.payload_len) {
            violation(c, SW_EFORMAT, "payload continuation that does not fit its message");
            return;
        }
        if (open_payload(c, m->m.payload ? m->m.payload + m->have : NULL) < 0)
            return;
        m->have += plen;
        if (m->have == m->m.payload_len)
            rx_complete(c, k);
        return;
    }
    if (f & F(STREAM_DATA)) {
        if (rx_start_msg(c, k, e, plen) < 0)
            return;
        if (k && k->partial && k->partial->have == k->partial->m.payload_len)
            rx_complete(c, k);
        if (c->state != C_READY)
            return;
        k = k && !k->finished ? k : NULL;
    } else if (plen) {
        violation(c, SW_EFORMAT, "payload on a frame without a message");
        return;
    }
    if (f & F(STREAM_END)) {
        if (!k)
            return;
        if (k->partial) {
            violation(c, SW_EFORMAT, "end before the message's payload ended");
            return;
        }
        if (k->end_received) {
            violation(c, SW_EFORMAT, "call ended twice");
            return;
        }
        k->end_received = 1;
        k->end_status = e->status;
        if (e->error[0])
            k->end_error = sw_strdup(e->error);
        call_deliver(k);
    }
}

static void dispatch(sw_p2p_conn_t *c, const Swarmd__Envelope *e, size_t plen)
{
    uint32_t f = e->flags;

    if (f & (F(PING) | F(PONG) | F(WINDOW))) {
        if (plen) {
            violation(c, SW_EFORMAT, "payload on a control frame");
            return;
        }
        if (f & F(PING)) {
            ctrl_push(c, F(PONG), 0, e->ping_ns, 0);
        } else if (f & F(PONG)) {
            uint64_t now = uv_hrtime();
            if (e->ping_ns && e->ping_ns <= now)
                c->rtt_ms = (double)(now - e->ping_ns) / 1e6;
        } else if (e->call_id == 0) {
            int was_blocked = c->conn_credit <= 0;
            c->conn_credit += (int64_t)e->credit;
            if (c->conn_credit > (int64_t)c->remote.conn_window) {
                violation(c, SW_EFORMAT, "window update beyond the connection window");
                return;
            }
            if (was_blocked && c->conn_credit > 0)
                for (int b = 0; b < NBUCKETS; b++)
                    for (sw_p2p_call_t *k = c->buckets[b]; k; k = k->hnext)
                        ready_add(k);
        } else {
            sw_p2p_call_t *k = call_find(c, e->call_id);
            if (k && !k->finished) {
                k->credit += (int64_t)e->credit;
                if (k->credit > (int64_t)c->remote.window) {
                    violation(c, SW_EFORMAT, "window update beyond the call window");
                    return;
                }
                ready_add(k);
            }
        }
        return;
    }
    dispatch_call(c, e, plen);
}

/* A whole frame is in c->body: authenticate, decode, act. */
static void process_frame(sw_p2p_conn_t *c)
{
    sw_p2p_node_t *n = c->node;
    sw_env_limits_t lim = { n->lim.max_header, n->lim.max_message };
    Swarmd__Envelope *e;
    size_t plen = sw_frame_payload_len(c->body_len, c->hdr_len);

    n->stats.frames_in++;
    c->last_rx_ms = now_ms(c);
    if (sw_frame_open_header(&c->rx, c->pre, c->body, c->hdr_len) < 0) {
        n->stats.auth_failures++;
        conn_fail(c, SW_EFORMAT, "%s", sw_err_detail());
        return;
    }
    if (sw_envelope_decode(c->body, c->hdr_len, &lim, &e) < 0) {
        violation(c, SW_EFORMAT, sw_err_detail());
        return;
    }
    dispatch(c, e, plen);
    sw_envelope_free(e);
    c->rx.ctr++;
}

/* ======================================================================== handshake on the socket */

static int send_plain(sw_p2p_conn_t *c, const uint8_t *msg, size_t len, int try_only)
{
    uint8_t *out;

    if (try_only) {
        uint8_t buf[4 + SW_HS_MAX_MSG];
        uv_buf_t b = uv_buf_init((char *)buf, (unsigned)(4 + len));
        buf[0] = (uint8_t)(len >> 24), buf[1] = (uint8_t)(len >> 16), buf[2] = (uint8_t)(len >> 8);
        buf[3] = (uint8_t)len;
        memcpy(buf + 4, msg, len);
        return uv_try_write((uv_stream_t *)&c->tcp, &b, 1) < 0 ? -EIO : 0;
    }
    out = batch_reserve(c, 4 + len);
    if (!out)
        return -ENOMEM;
    out[0] = (uint8_t)(len >> 24), out[1] = (uint8_t)(len >> 16), out[2] = (uint8_t)(len >> 8);
    out[3] = (uint8_t)len;
    memcpy(out + 4, msg, len);
    batch_flush(c);
    return 0;
}

static void keepalive_tick(uv_timer_t *t);

static void conn_ready(sw_p2p_conn_t *c)
{
    sw_p2p_node_t *n = c->node;
    sw_hs_t *hs = c->hs;
    char sid[SW_PEER_ID_SHORT_MAX];

    memcpy(c->tx.key, hs->key_send, 32);
    memcpy(c->rx.key, hs->key_recv, 32);
    c->tx.ctr = c->rx.ctr = 0;
    c->remote = hs->remote;
    c->peer = hs->remote_id;
    sw_hs_wipe(hs);
    sw_free(hs);
    c->hs = NULL;
    sw_peer_id_short(&c->peer, sid);
    snprintf(c->who, sizeof(c->who), "%s@%s", sid, c->addr);
    c->hdrbuf = sw_malloc(c->remote.max_header);
    if (!c->hdrbuf) {
        conn_fail(c, -ENOMEM, "out of memory");
        return;
    }
    if (sw_peer_id_eq(&c->peer, &n->id->id)) {
        n->stats.handshakes_failed++;
        conn_fail(c, SW_EUSAGE, "connected to ourselves");
        return;
    }
    c->conn_credit = c->remote.conn_window;
    c->next_id = c->initiator ? 1 : 2;
    c->state = C_READY;
    c->last_rx_ms = now_ms(c);
    n->stats.handshakes_ok++;
    uv_timer_stop(&c->timer);
    {
        uint64_t tick = n->lim.keepalive_ms ? n->lim.keepalive_ms : n->lim.idle_timeout_ms / 2;
        if (tick)
            uv_timer_start(&c->timer, keepalive_tick, tick, tick);
    }
    /* one connection per pair of peers: of two, both sides keep the one whose initiator has the
     * smaller id; a second dial from the same side hands back the first connection */
    for (sw_p2p_conn_t *o = n->conns; o; o = o->next) {
        if (o == c || o->state != C_READY || !sw_peer_id_eq(&o->peer, &c->peer))
            continue;
        const uint8_t *oi = o->initiator ? n->id->id.b : o->peer.b;
        const uint8_t *ci = c->initiator ? n->id->id.b : c->peer.b;
        int cmp = memcmp(oi, ci, 32);
        if (cmp <= 0) {
            if (c->connect_cb) {
                sw_p2p_connect_cb cb = c->connect_cb;
                c->connect_cb = NULL;
                cb(o, 0, c->connect_arg);
            }
            sw_log(SW_LOG_INFO, "p2p", "%s: duplicate connection, keeping the older one", c->who);
            conn_close_status(c, 0);
            return;
        }
        sw_log(SW_LOG_INFO, "p2p", "%s: duplicate connection, keeping the new one", c->who);
        conn_close_status(o, 0);
        break;
    }
    sw_log(SW_LOG_INFO, "p2p", "%s: connected (%s, protocol %u)", c->who,
           c->initiator ? "outbound" : "inbound", c->remote.ver_max);
    c->ready_reported = 1;
    if (c->connect_cb) {
        sw_p2p_connect_cb cb = c->connect_cb;
        c->connect_cb = NULL;
        cb(c, 0, c->connect_arg);
    }
    if (c->state == C_READY && n->cbs.on_ready)
        n->cbs.on_ready(c, n->cbs_arg);
}

static void process_hs(sw_p2p_conn_t *c)
{
    uint8_t out[SW_HS_MAX_MSG];
    size_t olen = 0;
    int r = sw_hs_recv(c->hs, c->hsbuf, c->body_len, out, sizeof(out), &olen);

    if (r < 0) {
        char detail[512];
        snprintf(detail, sizeof(detail), "%s", sw_err_detail());
        c->node->stats.handshakes_failed++;
        if (olen)
            send_plain(c, out, olen, 1);
        conn_fail(c, r, "handshake failed: %s", detail);
        return;
    }
    if (olen && send_plain(c, out, olen, 0) < 0) {
        conn_fail(c, -ENOMEM, "out of memory");
        return;
    }
    if (c->hs->state == SW_HS_DONE)
        conn_ready(c);
}

/* ======================================================================== reading */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    sw_p2p_conn_t *c = h->data;

    (void)suggested;
    if (c->state == C_READY && c->body && c->body_len - c->body_have >= sizeof(c->rxbuf))
        *buf = uv_buf_init((char *)c->body + c->body_have, c->body_len - c->body_have);
    else
        *buf = uv_buf_init((char *)c->rxbuf, sizeof(c->rxbuf));
}

/* The frame in progress is complete: process it and get ready for the next prefix. */
static void frame_done(sw_p2p_conn_t *c)
{
    if (c->state == C_HANDSHAKE) {
        process_hs(c);
    } else {
        process_frame(c);
        if (c->body != c->rxspare && c->body_len > RX_SMALL && c->state != C_CLOSING) {
            sw_free(c->rxspare); /* keep the larger buffer for the next large frame */
            c->rxspare = c->body;
            c->rxspare_cap = c->body_len;
        } else if (c->body != c->rxspare) {
            sw_free(c->body);
        }
    }
    c->body = NULL;
    c->pre_have = 0;
    c->body_have = 0;
}

/* A prefix is complete: check it before allocating anything. */
static int prefix_done(sw_p2p_conn_t *c)
{
    sw_p2p_node_t *n = c->node;

    if (c->state == C_HANDSHAKE) {
        uint32_t l = ((uint32_t)c->pre[0] << 24) | ((uint32_t)c->pre[1] << 16) | ((uint32_t)c->pre[2] << 8) |
                     c->pre[3];
        if (l == 0 || l > SW_HS_MAX_MSG) {
            n->stats.handshakes_failed++;
            violation(c, SW_ELIMIT, "handshake message length out of range");
            return -1;
        }
        c->body_len = l;
        c->body = c->hsbuf;
        return 0;
    }
    if (sw_frame_check_prefix(c->pre, n->lim.max_frame, n->lim.max_header, &c->body_len, &c->hdr_len) < 0) {
        violation(c, SW_ELIMIT, sw_err_detail());
        return -1;
    }
    if (c->rxspare && c->body_len <= c->rxspare_cap && c->body_len > RX_SMALL) {
        c->body = c->rxspare;
        c->bufs_used = 1;
        return 0;
    }
    c->body = sw_malloc(c->body_len);
    if (!c->body) {
        conn_fail(c, -ENOMEM, "out of memory for a frame of %u bytes", c->body_len);
        return -1;
    }
    return 0;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    sw_p2p_conn_t *c = s->data;
    const uint8_t *p = (const uint8_t *)buf->base;
    size_t left;

    if (nread < 0) {
        conn_fail(c, nread == UV_EOF ? -ECONNRESET : (int)nread, "%s",
                  nread == UV_EOF ? (c->state == C_HANDSHAKE ? "peer closed during the handshake"
                                                             : "peer closed the connection")
                                  : uv_strerror((int)nread));
        return;
    }
    if (c->state == C_CLOSING)
        return;
    if (nread > 0 && p != c->rxbuf) { /* read straight into a large frame's body */
        c->body_have += (uint32_t)nread;
        if (c->body_have == c->body_len)
            frame_done(c);
        goto out;
    }
    left = (size_t)nread;
    while (left && c->state != C_CLOSING) {
        if (!c->body) {
            size_t need = (c->state == C_HANDSHAKE ? 4 : SW_FRAME_PREFIX) - c->pre_have;
            size_t take = left < need ? left : need;
            memcpy(c->pre + c->pre_have, p, take);
            c->pre_have += (uint32_t)take;
            p += take;
            left -= take;
            if (take == need && prefix_done(c) < 0)
                return;
            continue;
        }
        size_t take = c->body_len - c->body_have;
        take = left < take ? left : take;
        memcpy(c->body + c->body_have, p, take);
        c->body_have += (uint32_t)take;
        p += take;
        left -= take;
        if (c->body_have == c->body_len)
            frame_done(c);
    }
out:
    if (c->state == C_READY) {
        pump(c);
        reap(c);
    }
}

/* ======================================================================== timers */

static void handshake_timeout(uv_timer_t *t)
{
    sw_p2p_conn_t *c = t->data;

    c->node->stats.handshake_timeouts++;
    conn_fail(c, -ETIMEDOUT, "handshake not finished within %u ms", c->node->lim.handshake_timeout_ms);
}

static void keepalive_tick(uv_timer_t *t)
{
    sw_p2p_conn_t *c = t->data;
    sw_p2p_node_t *n = c->node;

    if (n->lim.idle_timeout_ms && now_ms(c) - c->last_rx_ms > n->lim.idle_timeout_ms) {
        conn_fail(c, -ETIMEDOUT, "nothing received for %u ms", n->lim.idle_timeout_ms);
        return;
    }
    if (!c->bufs_used) /* no bulk traffic for a tick: give the kept buffers back */
        spares_free(c);
    c->bufs_used = 0;
    if (n->lim.keepalive_ms)
        sw_p2p_conn_ping(c);
}

/* ======================================================================== connection setup */

static sw_p2p_conn_t *conn_new(sw_p2p_node_t *n, int initiator)
{
    sw_p2p_conn_t *c = sw_calloc(1, sizeof(*c));

    if (!c)
        return NULL;
    c->node = n;
    c->initiator = initiator;
    c->rtt_ms = -1;
    c->state = C_CONNECTING;
    uv_tcp_init(n->loop, &c->tcp);
    uv_timer_init(n->loop, &c->timer);
    uv_idle_init(n->loop, &c->idle);
    c->tcp.data = c->timer.data = c->idle.data = c;
    c->handles = 3;
    c->next = n->conns;
    if (n->conns)
        n->conns->prev = c;
    n->conns = c;
    n->nconns++;
    n->pending++;
    snprintf(c->who, sizeof(c->who), "(connecting)");
    return c;
}

static void addr_text(const struct sockaddr_storage *ss, char *out, size_t cap, int with_port)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;

    if (ss->ss_family == AF_INET) {
        uv_ip4_name((const struct sockaddr_in *)ss, ip, sizeof(ip));
        port = ntohs(((const struct sockaddr_in *)ss)->sin_port);
    } else if (ss->ss_family == AF_INET6) {
        uv_ip6_name((const struct sockaddr_in6 *)ss, ip, sizeof(ip));
        port = ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
    }
    if (!with_port)
        snprintf(out, cap, "%s", ip);
    else if (ss->ss_family == AF_INET6)
        snprintf(out, cap, "[%s]:%d", ip, port);
    else
        snprintf(out, cap, "%s:%d", ip, port);
}

/* Starts the handshake on a connected socket. */
static int conn_start(sw_p2p_conn_t *c, const sw_peer_id_t *pin)
{
    sw_p2p_node_t *n = c->node;
    uint8_t out[SW_HS_MAX_MSG];
    size_t olen = 0;
    int r;

    c->hs = sw_malloc(sizeof(*c->hs));
    if (!c->hs)
        return -ENOMEM;
    sw_hs_init(c->hs, c->initiator, n->id, n->has_psk ? n->psk : NULL, pin, &n->params);
    c->state = C_HANDSHAKE;
    uv_tcp_nodelay(&c->tcp, 1);
    uv_timer_start(&c->timer, handshake_timeout, n->lim.handshake_timeout_ms, 0);
    r = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (r < 0)
        return r;
    if (c->initiator) {
        if ((r = sw_hs_start(c->hs, out, sizeof(out), &olen)) < 0)
            return r;
        return send_plain(c, out, olen, 0);
    }
    return 0;
}


/* 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104. */
static int is_loopback(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)ss)->sin_addr.s_addr) >> 24) == 127;
    if (ss->ss_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)ss)->sin6_addr;
        static const uint8_t v4mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
        return IN6_IS_ADDR_LOOPBACK(a) || (memcmp(a->s6_addr, v4mapped, 12) == 0 && a->s6_addr[12] == 127);
    }
    return 0;
}

static void on_connection(uv_stream_t *server, int status)
{
    sw_p2p_node_t *n = server->data;
    struct sockaddr_storage ss;
    int len = sizeof(ss), same = 0, r;
    sw_p2p_conn_t *c;

    if (status < 0 || n->closing)
        return;
    c = conn_new(n, 0);
    if (!c)
        return;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
        conn_close_status(c, -ECONNABORTED);
        return;
    }
    memset(&ss, 0, sizeof(ss));
    uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len);
    addr_text(&ss, c->addr, sizeof(c->addr), 0);
    snprintf(c->who, sizeof(c->who), "%s", c->addr);
    /* The per-address cap is against one remote host taking every slot; peers on this machine
     * (a local swarm: every server of it connects from 127.0.0.1) count only against max_conns. */
    if (n->lim.per_addr_loopback || !is_loopback(&ss))
        for (sw_p2p_conn_t *o = n->conns; o; o = o->next)
            same += o != c && o->state != C_CLOSING && strcmp(o->addr, c->addr) == 0;
    if (n->nconns > n->lim.max_conns || same >= (int)n->lim.max_conns_per_addr) {
        n->stats.conns_refused++;
        conn_fail(c, SW_ELIMIT, "refusing connection: %s (limit %u)",
                  n->nconns > n->lim.max_conns ? "too many connections" : "too many connections from this address",
                  n->nconns > n->lim.max_conns ? n->lim.max_conns : n->lim.max_conns_per_addr);
        return;
    }
    n->stats.conns_accepted++;
    if ((r = conn_start(c, NULL)) < 0)
        conn_fail(c, r, "cannot start the handshake: %s", sw_strerror(r));
}

static void on_connect(uv_connect_t *req, int status)
{
    sw_p2p_conn_t *c = req->data;
    int r;

    if (c->state == C_CLOSING)
        return;
    if (status < 0) {
        conn_fail(c, status, "connect failed: %s", uv_strerror(status));
        return;
    }
    if ((r = conn_start(c, c->has_pin ? &c->pin : NULL)) < 0)
        conn_fail(c, r, "cannot start the handshake: %s", sw_strerror(r));
}

static void req_unlink(connect_req_t *q)
{
    sw_p2p_node_t *n = q->node;

    if (q->prev)
        q->prev->next = q->next;
    else
        n->reqs = q->next;
    if (q->next)
        q->next->prev = q->prev;
    n->pending--;
}

static void on_resolved(uv_getaddrinfo_t *gai, int status, struct addrinfo *res)
{
    connect_req_t *q = gai->data;
    sw_p2p_node_t *n = q->node;
    sw_p2p_conn_t *c;
    int r;

    req_unlink(q);
    if (status < 0 || n->closing || !res) {
        q->cb(NULL, n->closing ? -ECANCELED : status, q->arg);
        goto out;
    }
    if (q->addr.has_peer) {
        for (c = n->conns; c; c = c->next) {
            if (c->state == C_READY && sw_peer_id_eq(&c->peer, &q->addr.peer)) {
                q->cb(c, 0, q->arg);
                goto out;
            }
        }
    }
    if (n->nconns >= n->lim.max_conns) {
        q->cb(NULL, sw_err(SW_ELIMIT, "connection limit of %u reached", n->lim.max_conns), q->arg);
        goto out;
    }
    c = conn_new(n, 1);
    if (!c) {
        q->cb(NULL, -ENOMEM, q->arg);
        goto out;
    }
    c->connect_cb = q->cb;
    c->connect_arg = q->arg;
    addr_text((const struct sockaddr_storage *)res->ai_addr, c->addr, sizeof(c->addr), 1);
    snprintf(c->who, sizeof(c->who), "%s", c->addr);
    c->creq.data = c;
    c->has_pin = q->addr.has_peer;
    c->pin = q->addr.peer;
    r = uv_tcp_connect(&c->creq, &c->tcp, res->ai_addr, on_connect);
    if (r < 0)
        conn_fail(c, r, "connect failed: %s", uv_strerror(r));
out:
    uv_freeaddrinfo(res);
    sw_free(q);
    node_maybe_done(n);
}

int sw_p2p_connect(sw_p2p_node_t *n, const char *addr, sw_p2p_connect_cb cb, void *arg)
{
    struct addrinfo hints;
    connect_req_t *q;
    char port[8];
    int r;

    if (n->closing)
        return sw_err(SW_ESTATE, "node is closing");
    q = sw_calloc(1, sizeof(*q));
    if (!q)
        return -ENOMEM;
    if ((r = sw_addr_parse(addr, &q->addr)) < 0) {
        sw_free(q);
        return r;
    }
    q->node = n;
    q->cb = cb;
    q->arg = arg;
    q->gai.data = q;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(port, sizeof(port), "%u", q->addr.port);
    r = uv_getaddrinfo(n->loop, &q->gai, on_resolved, q->addr.host, port, &hints);
    if (r < 0) {
        sw_free(q);
        return sw_err(r, "cannot resolve %s: %s", addr, uv_strerror(r));
    }
    q->next = n->reqs;
    if (n->reqs)
        n->reqs->prev = q;
    n->reqs = q;
    n->pending++;
    return 0;
}

/* ======================================================================== node */

static void node_free_now(sw_p2p_node_t *n)
{
    void (*done)(void *) = n->done;
    void *arg = n->done_arg;

    while (n->handlers) {
        handler_t *h = n->handlers;
        n->handlers = h->next;
        sw_free(h);
    }
    sodium_memzero(n->psk, sizeof(n->psk));
    sw_free(n);
    if (done)
        done(arg);
}

static void node_maybe_done(sw_p2p_node_t *n)
{
    if (n->closing && n->pending == 0)
        node_free_now(n);
}

int sw_p2p_node_new(uv_loop_t *loop, const sw_identity_t *id, const uint8_t *swarm_key,
                    const sw_p2p_limits_t *limits, sw_p2p_node_t **out)
{
    sw_p2p_node_t *n;

    if (sodium_init() < 0)
        return sw_err(SW_EUNSUPPORTED, "libsodium failed to initialise");
    n = sw_calloc(1, sizeof(*n));
    if (!n)
        return -ENOMEM;
    n->loop = loop;
    n->id = id;
    if (swarm_key) {
        memcpy(n->psk, swarm_key, 32);
        n->has_psk = 1;
    }
    if (limits)
        n->lim = *limits;
    else
        sw_p2p_limits_default(&n->lim);
    if (n->lim.max_header < 1024)
        n->lim.max_header = 1024;
    if (n->lim.max_frame < n->lim.max_header + 4096)
        n->lim.max_frame = n->lim.max_header + 4096;
    if (n->lim.window == 0)
        n->lim.window = 1;
    if (n->lim.conn_window < n->lim.window)
        n->lim.conn_window = n->lim.window;
    if (n->lim.max_calls == 0)
        n->lim.max_calls = 1;
    if (n->lim.handshake_timeout_ms == 0)
        n->lim.handshake_timeout_ms = 10000;
    sw_hs_params_default(&n->params);
    n->params.max_frame = n->lim.max_frame;
    n->params.max_header = n->lim.max_header;
    n->params.max_message = n->lim.max_message;
    n->params.window = n->lim.window;
    n->params.conn_window = n->lim.conn_window;
    n->params.max_calls = n->lim.max_calls;
    *out = n;
    return 0;
}

void sw_p2p_node_set_cbs(sw_p2p_node_t *n, const sw_p2p_node_cbs_t *cbs, void *arg)
{
    n->cbs = *cbs;
    n->cbs_arg = arg;
}

static void listener_closed(uv_handle_t *h)
{
    sw_p2p_node_t *n = h->data;

    sw_free(h);
    n->pending--;
    node_maybe_done(n);
}

void sw_p2p_node_close(sw_p2p_node_t *n, void (*done)(void *arg), void *arg)
{
    if (n->closing)
        return;
    n->closing = 1;
    n->done = done;
    n->done_arg = arg;
    n->pending++; /* held until the end of this function */
    for (int i = 0; i < n->nlisteners; i++)
        uv_close((uv_handle_t *)n->listeners[i], listener_closed);
    n->nlisteners = 0;
    for (connect_req_t *q = n->reqs; q; q = q->next)
        uv_cancel((uv_req_t *)&q->gai);
    for (sw_p2p_conn_t *c = n->conns; c; c = c->next)
        conn_close_status(c, -ECANCELED);
    n->pending--;
    node_maybe_done(n);
}

int sw_p2p_node_listen(sw_p2p_node_t *n, const char *host, int port, int *port_out)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss), r, v6 = strchr(host, ':') != NULL;
    uv_tcp_t *t;

    if (n->nlisteners >= MAX_LISTENERS)
        return sw_err(SW_ELIMIT, "at most %d listeners", MAX_LISTENERS);
    memset(&ss, 0, sizeof(ss));
    r = v6 ? uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss) : uv_ip4_addr(host, port, (struct sockaddr_in *)&ss);
    if (r < 0)
        return sw_err(SW_EUSAGE, "cannot listen on '%s': not an IP address", host);
    t = sw_calloc(1, sizeof(*t));
    if (!t)
        return -ENOMEM;
    uv_tcp_init(n->loop, t);
    t->data = n;
    n->pending++;
    r = uv_tcp_bind(t, (const struct sockaddr *)&ss, v6 ? UV_TCP_IPV6ONLY : 0);
    if (r == 0)
        r = uv_listen((uv_stream_t *)t, 128, on_connection);
    if (r < 0) {
        uv_close((uv_handle_t *)t, listener_closed);
        return sw_err(r, "cannot listen on %s port %d: %s", host, port, uv_strerror(r));
    }
    uv_tcp_getsockname(t, (struct sockaddr *)&ss, &len);
    if (port_out)
        *port_out = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                   : ((struct sockaddr_in *)&ss)->sin_port);
    n->listeners[n->nlisteners++] = t;
    return 0;
}

static int method_ok(const char *m)
{
    size_t l = strlen(m);

    if (l == 0 || l > SW_METHOD_MAX)
        return 0;
    for (size_t i = 0; i < l; i++)
        if (m[i] < 0x21 || m[i] >= 0x7f)
            return 0;
    return 1;
}

int sw_p2p_node_handle(sw_p2p_node_t *n, const char *method, sw_p2p_handler_fn fn, void *arg)
{
    handler_t *h;

    if (!method_ok(method))
        return sw_err(SW_EUSAGE, "bad method name '%.80s'", method);
    h = sw_calloc(1, sizeof(*h));
    if (!h)
        return -ENOMEM;
    snprintf(h->method, sizeof(h->method), "%s", method);
    h->fn = fn;
    h->arg = arg;
    h->next = n->handlers;
    n->handlers = h;
    return 0;
}

int sw_p2p_node_unhandle(sw_p2p_node_t *n, const void *arg)
{
    handler_t **p = &n->handlers;
    int k = 0;

    while (*p) {
        handler_t *h = *p;
        if (h->arg == arg) {
            *p = h->next;
            sw_free(h);
            k++;
        } else {
            p = &h->next;
        }
    }
    return k;
}

void sw_p2p_node_stats(const sw_p2p_node_t *n, sw_p2p_stats_t *out)
{
    *out = n->stats;
}

uint32_t sw_p2p_node_conn_count(const sw_p2p_node_t *n)
{
    uint32_t k = 0;

    for (const sw_p2p_conn_t *c = n->conns; c; c = c->next)
        k += c->state != C_CLOSING;
    return k;
}

/* ======================================================================== connection API */

const sw_peer_id_t *sw_p2p_conn_peer(const sw_p2p_conn_t *c)
{
    return &c->peer;
}

double sw_p2p_conn_rtt_ms(const sw_p2p_conn_t *c)
{
    return c->rtt_ms;
}

int sw_p2p_conn_ping(sw_p2p_conn_t *c)
{
    if (c->state != C_READY)
        return sw_err(SW_ESTATE, "connection not ready");
    ctrl_push(c, F(PING), 0, uv_hrtime(), 0);
    return 0;
}

size_t sw_p2p_conn_queued_bytes(const sw_p2p_conn_t *c)
{
    return c->queued_bytes + c->write_bytes + (c->batch ? c->batch->len : 0);
}

size_t sw_p2p_conn_buffered_bytes(const sw_p2p_conn_t *c)
{
    return c->buffered_bytes;
}

/* ======================================================================== call API */

int sw_p2p_call_start(sw_p2p_conn_t *c, const char *method, uint64_t deadline_ms,
                      const sw_p2p_call_cbs_t *cbs, void *arg, sw_p2p_call_t **out)
{
    sw_p2p_call_t *k;

    if (c->state != C_READY)
        return sw_err(SW_ESTATE, "%s: connection is not ready", c->who);
    if (!method_ok(method))
        return sw_err(SW_EUSAGE, "bad method name '%.80s'", method);
    if (c->calls_local >= c->remote.max_calls)
        return sw_err(SW_ELIMIT, "%s: the peer allows %u calls in flight", c->who, c->remote.max_calls);
    k = call_new(c, c->next_id, 1, deadline_ms);
    if (!k)
        return -ENOMEM;
    c->next_id += 2;
    snprintf(k->method, sizeof(k->method), "%s", method);
    if (cbs)
        k->cbs = *cbs;
    k->arg = arg;
    *out = k;
    return 0;
}

void sw_p2p_call_set_cbs(sw_p2p_call_t *k, const sw_p2p_call_cbs_t *cbs, void *arg)
{
    k->cbs = *cbs;
    k->arg = arg;
    k->abandoned = 0;
}

static void tx_append(sw_p2p_call_t *k, tx_item_t *t)
{
    if (k->txt)
        k->txt->next = t;
    else
        k->txh = t;
    k->txt = t;
    ready_add(k);
}

static void release_sw_free(void *payload, void *arg)
{
    (void)arg;
    sw_free(payload);
}

/* Queues a message whose payload is handed over with its release function (called exactly once). */
static int call_queue(sw_p2p_call_t *k, const void *body, size_t body_len, const void *payload,
                      size_t payload_len, sw_p2p_release_fn release, void *release_arg)
{
    sw_p2p_conn_t *c = k->conn;
    size_t size = body_len + payload_len;
    tx_item_t *t = NULL;
    int r;

    if (k->finished || k->end_queued || c->state != C_READY) {
        r = sw_err(SW_ESTATE, "call is over or its sending half ended");
        goto err;
    }
    if (body_len > c->remote.max_header - 1024 || payload_len > c->remote.max_message) {
        r = sw_err(SW_ELIMIT, "message of %zu+%zu bytes exceeds the peer's limits (%u, %llu)", body_len,
                   payload_len, c->remote.max_header - 1024, (unsigned long long)c->remote.max_message);
        goto err;
    }
    if (k->tx_queued && k->tx_queued + size > c->node->lim.send_buffer) {
        k->want_writable = 1;
        r = -EAGAIN;
        goto err;
    }
    t = sw_calloc(1, sizeof(*t));
    if (!t) {
        r = -ENOMEM;
        goto err;
    }
    t->type = TX_MSG;
    t->payload = payload_len ? payload : NULL;
    t->payload_len = payload_len;
    t->release = release;
    t->release_arg = release_arg;
    release = NULL; /* t owns it now: tx_item_free releases it */
    if (body_len) {
        t->body = sw_malloc(body_len);
        if (!t->body) {
            r = -ENOMEM;
            goto err;
        }
        memcpy(t->body, body, body_len);
    }
    t->body_len = body_len;
    k->tx_queued += size;
    c->queued_bytes += size;
    tx_append(k, t);
    return 0;
err:
    if (t)
        tx_item_free(t);
    if (release)
        release((void *)payload, release_arg);
    return r;
}

int sw_p2p_call_send(sw_p2p_call_t *k, const void *body, size_t body_len, void *payload,
                     size_t payload_len, unsigned flags)
{
    uint8_t *copy;

    if ((flags & SW_P2P_SEND_TAKE) || !payload_len)
        return call_queue(k, body, body_len, payload, payload_len,
                          (flags & SW_P2P_SEND_TAKE) && payload ? release_sw_free : NULL, NULL);
    /* refuse before copying what would be refused anyway */
    if (k->tx_queued && k->tx_queued + body_len + payload_len > k->conn->node->lim.send_buffer &&
        !k->finished && !k->end_queued && k->conn->state == C_READY) {
        k->want_writable = 1;
        return -EAGAIN;
    }
    copy = sw_malloc(payload_len);
    if (!copy)
        return -ENOMEM;
    memcpy(copy, payload, payload_len);
    return call_queue(k, body, body_len, copy, payload_len, release_sw_free, NULL);
}

int sw_p2p_call_send_ref(sw_p2p_call_t *k, const void *body, size_t body_len, const void *payload,
                         size_t payload_len, sw_p2p_release_fn release, void *release_arg)
{
    return call_queue(k, body, body_len, payload, payload_len, release, release_arg);
}

int sw_p2p_call_end(sw_p2p_call_t *k, int status, const char *error)
{
    tx_item_t *t;

    if (k->finished || k->end_queued || k->conn->state != C_READY)
        return sw_err(SW_ESTATE, "call is over or already ended");
    t = sw_calloc(1, sizeof(*t));
    if (!t)
        return -ENOMEM;
    t->type = TX_END;
    t->status = status > 0 ? -status : status;
    if (error && error[0]) {
        t->error = sw_malloc(strnlen(error, ERROR_TEXT_MAX) + 1);
        if (!t->error) {
            sw_free(t);
            return -ENOMEM;
        }
        snprintf(t->error, strnlen(error, ERROR_TEXT_MAX) + 1, "%s", error);
    }
    k->end_queued = 1;
    tx_append(k, t);
    return 0;
}

void sw_p2p_call_cancel(sw_p2p_call_t *k)
{
    if (k->finished)
        return;
    k->abandoned = 1;
    if (k->conn->state == C_READY && (!k->local || k->open_sent))
        ctrl_push(k->conn, F(CANCEL), k->id, 0, -ECANCELED);
    call_finish(k, -ECANCELED, 0);
}

void sw_p2p_call_pause(sw_p2p_call_t *k, int paused)
{
    sw_p2p_conn_t *c = k->conn;

    k->paused = !!paused;
    if (paused || k->finished || k->in_resume)
        return;
    k->in_resume = 1;
    k->qnext = c->resumeh;
    c->resumeh = k;
    schedule(c);
}

size_t sw_p2p_call_queued_bytes(const sw_p2p_call_t *k)
{
    return k->tx_queued;
}

sw_p2p_conn_t *sw_p2p_call_conn(sw_p2p_call_t *k)
{
    return k->conn;
}
/* Test hook (rpc_internal.h). */
void sw_p2p_test_ignore_peer_call_limit(sw_p2p_conn_t *c)
{
    c->remote.max_calls = UINT32_MAX;
}
