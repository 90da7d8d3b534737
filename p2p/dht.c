/*
 * dht.c - the DHT on the network: request handlers, outgoing calls, iterative lookups, put/get,
 * bootstrap, the reachability check and the dial-backs it asks of others, and the periodic jobs
 * (expiry every second, bucket refresh, republish, reachability). See dht.h.
 * Everything in this file runs on the node's loop thread.
 *
 * Messages (proto/dht.proto) travel as the raw payload of unary calls, so a store of many large
 * values is not bounded by the envelope's header limit; each is refused above MSG_MAX bytes before
 * it is decoded, and counts and lengths are checked before anything is used.
 */
#include "p2p/dht.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <sodium.h>

#include "dht.pb-c.h"
#include "p2p/dht_internal.h"
#include "p2p/frame.h"
#include "util/alloc.h"
#include "util/error.h"
#include "util/log.h"

#define MSG_MAX (2u << 20)
#define EXPIRE_TICK_MS 1000

#define M_PING "dht.ping"
#define M_FIND_NODE "dht.find_node"
#define M_FIND_VALUE "dht.find_value"
#define M_STORE "dht.store"
#define M_NODES "dht.nodes"
#define M_DIALBACK "dht.dialback"
#define DIALBACK_INFLIGHT 16 /* dial-backs this node runs at once for all peers together */

enum {
    K_PING = SW_DHT_REQ_PING,
    K_FIND_NODE = SW_DHT_REQ_FIND_NODE,
    K_FIND_VALUE = SW_DHT_REQ_FIND_VALUE,
    K_STORE = SW_DHT_REQ_STORE,
    K_NODES = SW_DHT_REQ_NODES,
    K_DIALBACK = SW_DHT_REQ_DIALBACK,
};
enum { OP_FIND_NODE, OP_GET, OP_PUT, OP_BOOT, OP_PING, OP_NODES, OP_PROBE };
enum { C_NEW, C_WAIT, C_OK, C_FAIL };

typedef struct rpc rpc_t;
typedef struct op op_t;
typedef struct dialback dialback_t;
typedef void (*rpc_cb)(sw_dht_t *d, rpc_t *q, int status, Swarmd__Dht__Response *resp);

struct rpc {
    rpc_t *prev, *next;
    sw_dht_t *d; /* NULL: orphaned by sw_dht_close while connecting */
    sw_peer_id_t peer;
    int has_peer, reached, local_fail;
    char addr[SW_DHT_ADDR_MAX];
    char method[24];
    uint8_t *req;
    size_t req_len;
    sw_p2p_call_t *call;
    uint32_t timeout_ms;
    uint8_t *resp;
    size_t resp_len;
    rpc_cb cb;
    void *arg;
};

typedef struct {
    sw_peer_id_t peer;
    sw_dht_id_t id;
    char addr[SW_DHT_ADDR_MAX];
    uint8_t state, depth;
} cand_t;

struct op {
    op_t *prev, *next;
    sw_dht_t *d;
    int type, phase, status;
    sw_dht_id_t target;
    uint8_t *key;
    size_t key_len;
    cand_t *c;
    size_t nc, cap;
    uint32_t inflight;
    sw_dht_lookup_info_t info;
    sw_dht_store_t merged; /* OP_GET: verified records from every answer */
    uint8_t *store_req;    /* OP_PUT: the packed store request */
    size_t store_req_len;
    uint32_t stored;
    int local;              /* OP_PUT: also keep it here */
    char **addrs;           /* OP_BOOT */
    size_t naddrs;
    uint32_t peers;
    sw_dht_put_cb put_cb;
    sw_dht_get_cb get_cb;
    sw_dht_bootstrap_cb boot_cb;
    sw_dht_ping_cb ping_cb;   /* OP_PING */
    sw_dht_nodes_cb nodes_cb; /* OP_NODES */
    uint64_t t0_ns;           /* OP_PING: when the call started */
    double rtt_ms;
    int64_t offset_ms;
    sw_peer_id_t peer;        /* OP_PING, OP_NODES: who answered */
    sw_dht_node_info_t *nodes; /* OP_NODES: n_nodes entries, addresses in node_addrs */
    char (*node_addrs)[SW_DHT_ADDR_MAX];
    size_t n_nodes, nodes_total;
    sw_dht_reach_cb reach_cb; /* OP_PROBE */
    uint32_t yes, no;         /* OP_PROBE: asked peers that could / could not connect back */
    int reach;                /* OP_PROBE: the state after it */
    op_t *boot;               /* OP_PROBE: the bootstrap waiting for it (NULL: none) */
    void *arg;
};

/* A dial-back this node runs for a peer that asked (see "dial-back" below). */
struct dialback {
    dialback_t *prev, *next;
    sw_dht_t *d;
    sw_p2p_call_t *call;  /* the peer's request; NULL once answered or gone */
    sw_identity_t eph;    /* throwaway identity of the dialing node */
    sw_p2p_node_t *node;  /* the dialing node (its own, so the connection is a fresh one) */
    uv_timer_t timer;     /* the deadline, then the deferred close */
    int answered, closing, pending;
};

struct sw_dht {
    uv_loop_t *loop;
    sw_p2p_node_t *node;
    const sw_identity_t *id;
    sw_dht_opts_t o;
    char announce[SW_DHT_ADDR_MAX];
    char *table_path;
    sw_dht_id_t self;
    sw_dht_table_t table;
    sw_dht_store_t store; /* records held for the swarm */
    sw_dht_store_t mine;  /* records this node published, republished until they expire */
    sw_dht_limits_t lim;
    sw_dht_rate_t rate;
    uv_timer_t t_expire, t_refresh, t_republish, t_defer, t_save, t_probe;
    int handles, closing;
    int auto_reach;        /* opts.reachability_check and not forced into client mode */
    int reach;             /* SW_DHT_REACH_* */
    int client;            /* acting as a client now: forced, or not (yet) known to be reachable */
    op_t *probe;           /* the reachability check running, or NULL */
    dialback_t *dbs;       /* dial-backs running for others */
    uint32_t ndbs;
    uint8_t swarm_key[32];
    int has_key;
    rpc_t *rpcs;
    op_t *ops, *done_ops;
    uint32_t nops;
    sw_dht_stats_t st;
    void (*close_done)(void *);
    void *close_arg;
};

static void op_step(op_t *op);
static void dht_unref(sw_dht_t *d);

uint64_t sw_dht_now_ms(void)
{
    struct timeval tv;

    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000u + (uint64_t)tv.tv_usec / 1000u;
}

void sw_dht_opts_default(sw_dht_opts_t *o)
{
    memset(o, 0, sizeof(*o));
    o->k = SW_DHT_K;
    o->alpha = SW_DHT_ALPHA;
    o->rpc_timeout_ms = 3000;
    o->refresh_ms = 600000;
    o->republish_ms = 300000;
    o->table_save_ms = 60000;
    o->max_ttl_s = 86400;
    o->max_skew_s = 60;
    o->max_subkeys = 128;
    o->max_bytes = 64u << 20;
    o->max_value = SW_DHT_VALUE_MAX;
    o->store_rate = 50;
    o->store_burst = 200;
    o->find_rate = 200;
    o->find_burst = 800;
    o->reachability_check = 0;
    o->reachability_ms = 600000;
    o->dialback_timeout_ms = 5000;
    o->dialback_per_min = 6;
}

/* ======================================================================== outgoing calls */

static void rpc_free(rpc_t *q)
{
    sw_free(q->req);
    sw_free(q->resp);
    sw_free(q);
}

static void rpc_unlink(sw_dht_t *d, rpc_t *q)
{
    if (q->prev)
        q->prev->next = q->next;
    else
        d->rpcs = q->next;
    if (q->next)
        q->next->prev = q->prev;
    q->prev = q->next = NULL;
}

int sw_dht_request_check(const Swarmd__Dht__Request *req, int kind, uint32_t max_subkeys)
{
    if (((!req->client_mode || kind == K_DIALBACK) && !sw_dht_addr_ok(req->sender_addr)) ||
        (kind == K_FIND_NODE && req->target.len != SW_DHT_ID_LEN) ||
        ((kind == K_FIND_VALUE || kind == K_STORE) && (req->key.len == 0 || req->key.len > SW_DHT_KEY_MAX)) ||
        (kind == K_STORE && (req->n_records == 0 || req->n_records > max_subkeys)) ||
        (kind != K_STORE && req->n_records != 0))
        return sw_err(SW_EFORMAT, "bad request fields");
    return 0;
}

/* Checks a decoded response's counts and contacts before anyone reads it. */
static int resp_check(const sw_dht_t *d, const Swarmd__Dht__Response *r)
{
    return sw_dht_response_check(r, d->o.k, d->o.max_subkeys, d->o.max_value);
}

int sw_dht_response_check(const Swarmd__Dht__Response *r, uint32_t k, uint32_t max_subkeys, uint32_t max_value)
{
    if (r->n_nodes > k || r->n_records > max_subkeys || r->n_store_status > max_subkeys)
        return sw_err(SW_ELIMIT, "response counts over the limits");
    if (r->n_table > SW_DHT_NODES_MAX || r->table_size < r->n_table)
        return sw_err(SW_ELIMIT, "routing table answer over the limits");
    for (size_t i = 0; i < r->n_table; i++) {
        if (r->table[i]->peer_id.len != SW_PEER_ID_LEN || !sw_dht_addr_ok(r->table[i]->addr) ||
            r->table[i]->bucket >= SW_DHT_ID_BITS)
            return sw_err(SW_EFORMAT, "bad contact in routing table answer");
    }
    for (size_t i = 0; i < r->n_nodes; i++) {
        if (r->nodes[i]->peer_id.len != SW_PEER_ID_LEN || !sw_dht_addr_ok(r->nodes[i]->addr))
            return sw_err(SW_EFORMAT, "bad contact in response");
    }
    for (size_t i = 0; i < r->n_records; i++) {
        const Swarmd__Dht__Record *x = r->records[i];
        if (x->subkey.len > SW_DHT_SUBKEY_MAX || x->value.len > max_value ||
            (x->signature.len != 0 && x->signature.len != SW_DHT_SIG_LEN))
            return sw_err(SW_EFORMAT, "bad record in response");
    }
    return 0;
}

/* The last step of every call: decodes the answer and runs the owner's callback. */
static void rpc_finish(rpc_t *q, int status)
{
    sw_dht_t *d = q->d;
    Swarmd__Dht__Response *resp = NULL;

    if (!d) {
        rpc_free(q);
        return;
    }
    rpc_unlink(d, q);
    if (status == 0 && !q->resp)
        status = sw_err(SW_EFORMAT, "empty answer");
    if (status == 0) {
        resp = swarmd__dht__response__unpack(&sw_pb_allocator, q->resp_len, q->resp);
        if (!resp)
            status = SW_EFORMAT;
        else if ((status = resp_check(d, resp)) < 0) {
            swarmd__dht__response__free_unpacked(resp, &sw_pb_allocator);
            resp = NULL;
        }
    }
    if (status < 0) {
        d->st.rpcs_failed++;
        /* a contact is blamed only when it could not be reached at all */
        if (!q->reached && !q->local_fail && q->has_peer && status != -ECANCELED)
            sw_dht_table_fail(&d->table, &q->peer);
    }
    if (q->cb)
        q->cb(d, q, status, resp);
    if (resp)
        swarmd__dht__response__free_unpacked(resp, &sw_pb_allocator);
    rpc_free(q);
}

static void rpc_on_msg(sw_p2p_call_t *call, sw_p2p_msg_t *m, void *arg)
{
    rpc_t *q = arg;

    q->reached = 1;
    if (q->resp || m->payload_len > MSG_MAX || m->payload_len == 0)
        return; /* a second or oversized message: the first one counts, or none */
    q->resp_len = m->payload_len;
    q->resp = sw_p2p_msg_take_payload(m);
}

static void rpc_on_end(sw_p2p_call_t *call, int status, const char *error, void *arg)
{
    ((rpc_t *)arg)->reached = 1;
}

static void rpc_on_done(sw_p2p_call_t *call, int status, void *arg)
{
    rpc_t *q = arg;

    q->call = NULL;
    rpc_finish(q, status);
}

static void rpc_on_conn(sw_p2p_conn_t *conn, int status, void *arg)
{
    static const sw_p2p_call_cbs_t cbs = { rpc_on_msg, rpc_on_end, rpc_on_done, NULL };
    rpc_t *q = arg;
    sw_dht_t *d = q->d;
    uint8_t *req;
    int r;

    if (!d || d->closing) {
        if (d)
            rpc_unlink(d, q);
        rpc_free(q);
        return;
    }
    if (status < 0 || !conn) {
        rpc_finish(q, status < 0 ? status : -ECONNRESET);
        return;
    }
    if (!q->has_peer) {
        q->peer = *sw_p2p_conn_peer(conn);
        q->has_peer = 1;
    }
    r = sw_p2p_call_start(conn, q->method, q->timeout_ms, &cbs, q, &q->call);
    if (r < 0) {
        q->local_fail = r == SW_ELIMIT;
        rpc_finish(q, r);
        return;
    }
    req = q->req;
    q->req = NULL;
    r = sw_p2p_call_send(q->call, NULL, 0, req, q->req_len, SW_P2P_SEND_TAKE);
    if (r == 0)
        r = sw_p2p_call_end(q->call, 0, NULL);
    if (r < 0) {
        sw_p2p_call_cancel(q->call);
        q->call = NULL;
        q->local_fail = 1;
        rpc_finish(q, r);
    }
}

/*
 * Packs req (sender fields filled in here) into a buffer the caller frees with sw_free. A client
 * sends no address, except in a dial-back request (with_addr), whose point is that address.
 */
static uint8_t *req_pack_addr(sw_dht_t *d, Swarmd__Dht__Request *req, size_t *len, int with_addr)
{
    uint8_t *buf;

    req->sender_addr = d->client && !with_addr ? (char *)"" : d->announce;
    req->client_mode = d->client != 0;
    req->now_ms = sw_dht_now_ms();
    *len = swarmd__dht__request__get_packed_size(req);
    buf = sw_malloc(*len ? *len : 1);
    if (buf)
        swarmd__dht__request__pack(req, buf);
    return buf;
}

static uint8_t *req_pack(sw_dht_t *d, Swarmd__Dht__Request *req, size_t *len)
{
    return req_pack_addr(d, req, len, 0);
}

/*
 * Calls `method` on the peer at addr (peer NULL: whoever answers there) with the packed request
 * (copied), giving it timeout_ms. Returns 0 and later runs cb exactly once (unless the DHT is closed
 * first), or an error without running it.
 */
static int rpc_start_to(sw_dht_t *d, const sw_peer_id_t *peer, const char *addr, const char *method,
                        const uint8_t *req, size_t req_len, uint32_t timeout_ms, rpc_cb cb, void *arg)
{
    char target[SW_PEER_ID_TEXT_MAX + SW_DHT_ADDR_MAX + 2], text[SW_PEER_ID_TEXT_MAX];
    rpc_t *q;
    int r;

    if (d->closing)
        return SW_ESTATE;
    q = sw_calloc(1, sizeof(*q));
    if (!q)
        return -ENOMEM;
    q->req = sw_malloc(req_len ? req_len : 1);
    if (!q->req) {
        sw_free(q);
        return -ENOMEM;
    }
    memcpy(q->req, req, req_len);
    q->req_len = req_len;
    q->d = d;
    q->cb = cb;
    q->arg = arg;
    q->timeout_ms = timeout_ms;
    snprintf(q->addr, sizeof(q->addr), "%s", addr);
    snprintf(q->method, sizeof(q->method), "%s", method);
    if (peer) {
        q->peer = *peer;
        q->has_peer = 1;
        sw_peer_id_text(peer, text);
        snprintf(target, sizeof(target), "%s@%s", text, addr);
    } else {
        snprintf(target, sizeof(target), "%s", addr);
    }
    r = sw_p2p_connect(d->node, target, rpc_on_conn, q);
    if (r < 0) {
        rpc_free(q);
        return r;
    }
    q->next = d->rpcs;
    if (d->rpcs)
        d->rpcs->prev = q;
    d->rpcs = q;
    d->st.rpcs_sent++;
    return 0;
}

static int rpc_start(sw_dht_t *d, const sw_peer_id_t *peer, const char *addr, const char *method,
                     const uint8_t *req, size_t req_len, rpc_cb cb, void *arg)
{
    return rpc_start_to(d, peer, addr, method, req, req_len, d->o.rpc_timeout_ms, cb, arg);
}

/* ======================================================================== routing updates */

static void ping_evict_done(sw_dht_t *d, rpc_t *q, int status, Swarmd__Dht__Response *resp)
{
    sw_dht_table_ping_result(&d->table, &q->peer, status == 0, uv_now(d->loop));
}

/* A peer proved it is alive at addr: the table learns it, pinging a full bucket's head if needed. */
static void note_seen(sw_dht_t *d, const sw_peer_id_t *peer, const char *addr)
{
    sw_dht_contact_t head;
    Swarmd__Dht__Request req = SWARMD__DHT__REQUEST__INIT;
    uint8_t *buf;
    size_t len;
    int r;

    if (!sw_dht_addr_ok(addr))
        return;
    r = sw_dht_table_update(&d->table, peer, addr, uv_now(d->loop), &head);
    if (r != SW_DHT_T_PING)
        return;
    buf = req_pack(d, &req, &len);
    r = buf ? rpc_start(d, &head.peer, head.addr, M_PING, buf, len, ping_evict_done, NULL) : -ENOMEM;
    sw_free(buf);
    if (r < 0) /* could not ask: keep the old contact */
        sw_dht_table_ping_result(&d->table, &head.peer, 1, uv_now(d->loop));
}

/* ======================================================================== request handlers */

static void node_fill(Swarmd__Dht__Node *n, const sw_dht_contact_t *c)
{
    swarmd__dht__node__init(n);
    n->peer_id.data = (uint8_t *)c->peer.b;
    n->peer_id.len = SW_PEER_ID_LEN;
    n->addr = (char *)c->addr;
}

/*
 * Fills recs/precs (k->n each) with the entries of k that expire after now, pointing into the
 * store (valid while it is not modified); returns how many.
 */
static size_t records_of(const sw_dht_keyrec_t *k, uint64_t now, Swarmd__Dht__Record *recs,
                         Swarmd__Dht__Record **precs)
{
    size_t n = 0;

    for (uint32_t i = 0; i < k->n; i++) {
        const sw_dht_entry_t *e = &k->e[i];
        if (e->exp_ms <= now)
            continue;
        swarmd__dht__record__init(&recs[n]);
        recs[n].subkey.data = e->subkey;
        recs[n].subkey.len = e->subkey_len;
        recs[n].value.data = e->value;
        recs[n].value.len = e->value_len;
        recs[n].expiration_ms = e->exp_ms;
        if (e->has_sig) {
            recs[n].signature.data = (uint8_t *)e->sig;
            recs[n].signature.len = SW_DHT_SIG_LEN;
        }
        precs[n] = &recs[n];
        n++;
    }
    return n;
}

static void srv_refuse(sw_dht_t *d, sw_p2p_call_t *call, int status, const char *why)
{
    d->st.refused++;
    sw_p2p_call_end(call, status, why);
}

static void srv_request(sw_p2p_call_t *call, sw_p2p_msg_t *m, sw_dht_t *d, int kind)
{
    const sw_peer_id_t *peer = sw_p2p_conn_peer(sw_p2p_call_conn(call));
    Swarmd__Dht__Request *req = NULL;
    Swarmd__Dht__Response resp = SWARMD__DHT__RESPONSE__INIT;
    Swarmd__Dht__Node nodes[SW_DHT_K * 4], *pnodes[SW_DHT_K * 4];
    Swarmd__Dht__Record *recs = NULL, **precs = NULL;
    Swarmd__Dht__TableEntry *tab = NULL, **ptab = NULL;
    sw_dht_contact_t close[SW_DHT_K * 4];
    int32_t *sst = NULL;
    uint64_t now = sw_dht_now_ms();
    uint8_t *out = NULL;
    size_t olen;
    int r;

    d->st.requests++;
    if (d->closing) {
        sw_p2p_call_end(call, SW_ESTATE, "closing");
        return;
    }
    if (d->reach == SW_DHT_REACH_NO) {
        /* a client serves nobody; only peers it called could ask it anything anyway */
        sw_p2p_call_end(call, SW_ESTATE, "client mode");
        return;
    }
    if (!sw_dht_rate_take(&d->rate, peer, kind == K_STORE ? SW_DHT_RATE_STORE : SW_DHT_RATE_FIND,
                          uv_now(d->loop))) {
        d->st.rate_limited++;
        sw_p2p_call_end(call, SW_ELIMIT, "rate limited");
        return;
    }
    if (m->payload_len > MSG_MAX || m->payload_len == 0) {
        srv_refuse(d, call, SW_ELIMIT, "request size");
        return;
    }
    req = swarmd__dht__request__unpack(&sw_pb_allocator, m->payload_len, m->payload);
    if (!req) {
        srv_refuse(d, call, SW_EFORMAT, "malformed request");
        return;
    }
    if (sw_dht_request_check(req, kind, d->o.max_subkeys) < 0) {
        srv_refuse(d, call, SW_EFORMAT, "bad request fields");
        goto out;
    }
    if (!req->client_mode)
        note_seen(d, peer, req->sender_addr);
    resp.now_ms = now;
    if (kind == K_FIND_NODE || kind == K_FIND_VALUE) {
        sw_dht_id_t target;
        size_t n, j = 0;
        if (kind == K_FIND_NODE)
            memcpy(target.b, req->target.data, SW_DHT_ID_LEN);
        else
            sw_dht_id_of_key(req->key.data, req->key.len, &target);
        n = sw_dht_table_closest(&d->table, &target, close, d->o.k + 1);
        for (size_t i = 0; i < n && j < d->o.k; i++) {
            if (sw_peer_id_eq(&close[i].peer, peer))
                continue; /* the caller knows itself */
            node_fill(&nodes[j], &close[i]);
            pnodes[j] = &nodes[j];
            j++;
        }
        resp.nodes = pnodes;
        resp.n_nodes = j;
    }
    if (kind == K_FIND_VALUE) {
        sw_dht_keyrec_t *k = sw_dht_store_find(&d->store, req->key.data, req->key.len);
        if (k && k->n) {
            recs = sw_calloc(k->n, sizeof(*recs));
            precs = sw_calloc(k->n, sizeof(*precs));
            if (!recs || !precs) {
                srv_refuse(d, call, -ENOMEM, "out of memory");
                goto out;
            }
            resp.n_records = records_of(k, now, recs, precs);
            resp.records = precs;
        }
    }
    if (kind == K_STORE) {
        sst = sw_calloc(req->n_records, sizeof(*sst));
        if (!sst) {
            srv_refuse(d, call, -ENOMEM, "out of memory");
            goto out;
        }
        for (size_t i = 0; i < req->n_records; i++) {
            const Swarmd__Dht__Record *x = req->records[i];
            sw_dht_record_t rec = { x->subkey.data, x->subkey.len, x->value.data, x->value.len, x->expiration_ms,
                                    x->signature.len == SW_DHT_SIG_LEN ? x->signature.data : NULL };
            if (x->signature.len != 0 && x->signature.len != SW_DHT_SIG_LEN)
                r = SW_EFORMAT;
            else
                r = sw_dht_store_put(&d->store, req->key.data, req->key.len, &rec, now);
            sst[i] = r;
            if (r == 0)
                d->st.records_stored++;
            else if (r < 0)
                d->st.records_rejected++;
        }
        resp.store_status = sst;
        resp.n_store_status = req->n_records;
    }
    if (kind == K_NODES) {
        size_t total = d->table.count, j = 0;
        size_t cap = total < SW_DHT_NODES_MAX ? total : SW_DHT_NODES_MAX;
        tab = sw_calloc(cap ? cap : 1, sizeof(*tab));
        ptab = sw_calloc(cap ? cap : 1, sizeof(*ptab));
        if (!tab || !ptab) {
            srv_refuse(d, call, -ENOMEM, "out of memory");
            goto out;
        }
        for (int b = 0; b < SW_DHT_ID_BITS && j < cap; b++) {
            for (uint32_t i = 0; i < d->table.b[b].n && j < cap; i++) {
                const sw_dht_contact_t *c = &d->table.b[b].c[i];
                uint64_t t = uv_now(d->loop);
                swarmd__dht__table_entry__init(&tab[j]);
                tab[j].peer_id.data = (uint8_t *)c->peer.b;
                tab[j].peer_id.len = SW_PEER_ID_LEN;
                tab[j].addr = (char *)c->addr;
                tab[j].bucket = (uint32_t)b;
                tab[j].age_ms = t > c->last_seen_ms ? t - c->last_seen_ms : 0;
                tab[j].fails = c->fails;
                ptab[j] = &tab[j];
                j++;
            }
        }
        resp.table = ptab;
        resp.n_table = j;
        resp.table_size = (uint32_t)(total > j ? total : j);
    }
    olen = swarmd__dht__response__get_packed_size(&resp);
    out = sw_malloc(olen ? olen : 1);
    if (!out) {
        srv_refuse(d, call, -ENOMEM, "out of memory");
        goto out;
    }
    /* never empty: now_ms is always set, so the caller gets a non-empty payload */
    swarmd__dht__response__pack(&resp, out);
    r = sw_p2p_call_send(call, NULL, 0, out, olen, SW_P2P_SEND_TAKE);
    out = NULL;
    if (r == 0)
        sw_p2p_call_end(call, 0, NULL);
    else
        sw_p2p_call_cancel(call);
out:
    sw_free(out);
    sw_free(sst);
    sw_free(recs);
    sw_free(precs);
    sw_free(tab);
    sw_free(ptab);
    if (req)
        swarmd__dht__request__free_unpacked(req, &sw_pb_allocator);
}

static void srv_end(sw_p2p_call_t *call, int status, const char *error, void *arg)
{
    /* a call that ends without its request: refuse (harmless SW_ESTATE when answered already) */
    sw_p2p_call_end(call, SW_EFORMAT, "no request");
}

#define SRV(name, kind)                                                                  \
    static void srv_msg_##name(sw_p2p_call_t *call, sw_p2p_msg_t *m, void *arg)          \
    {                                                                                    \
        srv_request(call, m, arg, kind);                                                 \
    }                                                                                    \
    static void srv_open_##name(sw_p2p_call_t *call, const char *method, void *arg)      \
    {                                                                                    \
        static const sw_p2p_call_cbs_t cbs = { srv_msg_##name, srv_end, NULL, NULL };   \
        sw_p2p_call_set_cbs(call, &cbs, arg);                                            \
    }
SRV(ping, K_PING)
SRV(find_node, K_FIND_NODE)
SRV(find_value, K_FIND_VALUE)
SRV(store, K_STORE)
SRV(nodes, K_NODES)

/* ======================================================================== dial-back (for others)
 *
 * A peer asks "dht.dialback": can a fresh connection reach me at my announced address? This node
 * connects to the address in the request, pinned to the peer id the asking connection proved, from
 * a node of its own with a throwaway identity (the p2p layer would otherwise hand back the
 * connection the request came on, which proves nothing, or treat the new one as its duplicate),
 * and answers reachable when the handshake finishes within dialback_timeout_ms.
 *
 * Why this cannot be turned against third parties: the only address dialled is the one the
 * requester claims as its own, and the handshake must prove the requester's key, so naming a
 * victim's address gets the victim one TCP connection that fails its handshake at once (the pin does
 * not match) and tells the requester only "unreachable", never anything about the victim. Each
 * request dials once; each peer may ask a burst of 2 and then dialback_per_min a minute
 * (SW_DHT_RATE_DIALBACK), and at most DIALBACK_INFLIGHT dial-backs run at once whoever asks, so even
 * many identities together get a bounded trickle of connection attempts out of this node: fewer
 * than they could make by connecting to the victim themselves.
 */

static void db_noop_msg(sw_p2p_call_t *call, sw_p2p_msg_t *m, void *arg) {}
static void db_noop_end(sw_p2p_call_t *call, int status, const char *error, void *arg) {}
static const sw_p2p_call_cbs_t db_gone_cbs = { db_noop_msg, db_noop_end, NULL, NULL };

/* Answers the asking peer once (when its call is still open). */
static void db_answer(dialback_t *db, int status)
{
    Swarmd__Dht__Response resp = SWARMD__DHT__RESPONSE__INIT;
    sw_p2p_call_t *call = db->call;
    sw_dht_t *d = db->d;
    uint8_t *out;
    size_t len;

    if (db->answered)
        return;
    db->answered = 1;
    d->st.dialbacks++;
    d->st.dialbacks_ok += status == 0;
    if (!call)
        return;
    db->call = NULL;
    sw_p2p_call_set_cbs(call, &db_gone_cbs, NULL);
    resp.now_ms = sw_dht_now_ms();
    resp.reachable = status == 0;
    resp.dialback_status = status;
    len = swarmd__dht__response__get_packed_size(&resp);
    out = sw_malloc(len ? len : 1);
    if (!out) {
        sw_p2p_call_end(call, -ENOMEM, "out of memory");
        return;
    }
    swarmd__dht__response__pack(&resp, out);
    if (sw_p2p_call_send(call, NULL, 0, out, len, SW_P2P_SEND_TAKE) == 0)
        sw_p2p_call_end(call, 0, NULL);
    else
        sw_p2p_call_cancel(call);
}

static void db_release(dialback_t *db)
{
    sw_dht_t *d = db->d;

    if (--db->pending > 0)
        return;
    if (db->prev)
        db->prev->next = db->next;
    else
        d->dbs = db->next;
    if (db->next)
        db->next->prev = db->prev;
    d->ndbs--;
    sw_identity_wipe(&db->eph);
    sw_free(db);
    dht_unref(d);
}

static void db_timer_closed(uv_handle_t *h) { db_release(h->data); }
static void db_node_closed(void *arg) { db_release(arg); }

/* Closes the dialing node (its connection goes with it) and the timer; db is freed after both. */
static void db_close(dialback_t *db)
{
    if (db->closing)
        return;
    db->closing = 1;
    db->pending = 2;
    uv_timer_stop(&db->timer);
    uv_close((uv_handle_t *)&db->timer, db_timer_closed);
    sw_p2p_node_close(db->node, db_node_closed, db); /* may run db_conn with -ECANCELED first */
}

/* The deadline passed (the answer is "unreachable"), or the deferred close after an answer. */
static void db_timer_cb(uv_timer_t *t)
{
    dialback_t *db = t->data;

    db_answer(db, sw_err(-ETIMEDOUT, "no handshake within %u ms", db->d->o.dialback_timeout_ms));
    db_close(db);
}

static void db_conn(sw_p2p_conn_t *conn, int status, void *arg)
{
    dialback_t *db = arg;

    if (db->closing)
        return;
    db_answer(db, status < 0 ? status : (conn ? 0 : -ECONNRESET));
    /* not from inside the p2p layer's callback: close on the next loop turn */
    uv_timer_start(&db->timer, db_timer_cb, 0, 0);
}

static void db_call_done(sw_p2p_call_t *call, int status, void *arg)
{
    ((dialback_t *)arg)->call = NULL; /* the asker gave up or went away; the dial finishes unheard */
}

static void srv_msg_dialback(sw_p2p_call_t *call, sw_p2p_msg_t *m, void *arg)
{
    static const sw_p2p_call_cbs_t cbs = { db_noop_msg, db_noop_end, db_call_done, NULL };
    sw_dht_t *d = arg;
    const sw_peer_id_t *peer = sw_p2p_conn_peer(sw_p2p_call_conn(call));
    Swarmd__Dht__Request *req = NULL;
    char target[SW_PEER_ID_TEXT_MAX + SW_DHT_ADDR_MAX + 2], text[SW_PEER_ID_TEXT_MAX];
    sw_p2p_limits_t lim;
    dialback_t *db = NULL;
    int r;

    d->st.requests++;
    if (d->closing) {
        sw_p2p_call_end(call, SW_ESTATE, "closing");
        return;
    }
    if (d->reach == SW_DHT_REACH_NO) {
        sw_p2p_call_end(call, SW_ESTATE, "client mode");
        return;
    }
    if (!sw_dht_rate_take(&d->rate, peer, SW_DHT_RATE_DIALBACK, uv_now(d->loop)) || d->ndbs >= DIALBACK_INFLIGHT) {
        d->st.rate_limited++;
        sw_p2p_call_end(call, SW_ELIMIT, "rate limited");
        return;
    }
    if (m->payload_len > MSG_MAX || m->payload_len == 0) {
        srv_refuse(d, call, SW_ELIMIT, "request size");
        return;
    }
    req = swarmd__dht__request__unpack(&sw_pb_allocator, m->payload_len, m->payload);
    if (!req) {
        srv_refuse(d, call, SW_EFORMAT, "malformed request");
        return;
    }
    if (sw_dht_request_check(req, K_DIALBACK, d->o.max_subkeys) < 0) {
        srv_refuse(d, call, SW_EFORMAT, "bad request fields");
        goto out;
    }
    sw_peer_id_text(peer, text);
    snprintf(target, sizeof(target), "%s@%s", text, req->sender_addr);
    db = sw_calloc(1, sizeof(*db));
    if (!db) {
        srv_refuse(d, call, -ENOMEM, "out of memory");
        goto out;
    }
    db->d = d;
    sw_identity_generate(&db->eph);
    sw_p2p_limits_default(&lim);
    lim.max_conns = 1;
    lim.handshake_timeout_ms = d->o.dialback_timeout_ms;
    lim.keepalive_ms = 0;
    if ((r = sw_p2p_node_new(d->loop, &db->eph, d->has_key ? d->swarm_key : NULL, &lim, &db->node)) < 0) {
        sw_identity_wipe(&db->eph);
        sw_free(db);
        srv_refuse(d, call, r, "cannot dial back");
        goto out;
    }
    db->next = d->dbs;
    if (d->dbs)
        d->dbs->prev = db;
    d->dbs = db;
    d->ndbs++;
    d->handles++; /* the DHT is freed only after every dial-back is */
    uv_timer_init(d->loop, &db->timer);
    db->timer.data = db;
    db->call = call;
    sw_p2p_call_set_cbs(call, &cbs, db);
    SW_LOG_D("dht", "dialling %s back at %s", text, req->sender_addr);
    r = sw_p2p_connect(db->node, target, db_conn, db);
    if (r < 0) {
        db_answer(db, r);
        db_close(db);
    } else {
        uv_timer_start(&db->timer, db_timer_cb, d->o.dialback_timeout_ms, 0);
    }
out:
    if (req)
        swarmd__dht__request__free_unpacked(req, &sw_pb_allocator);
}

static void srv_open_dialback(sw_p2p_call_t *call, const char *method, void *arg)
{
    static const sw_p2p_call_cbs_t cbs = { srv_msg_dialback, srv_end, NULL, NULL };
    sw_p2p_call_set_cbs(call, &cbs, arg);
}

/* ======================================================================== operations */

static void defer_cb(uv_timer_t *t);

static void op_free(op_t *op)
{
    sw_free(op->key);
    sw_free(op->c);
    sw_free(op->store_req);
    if (op->merged.tab)
        sw_dht_store_free(&op->merged);
    for (size_t i = 0; i < op->naddrs; i++)
        sw_free(op->addrs[i]);
    sw_free(op->addrs);
    sw_free(op->nodes);
    sw_free(op->node_addrs);
    sw_free(op);
}

static op_t *op_new(sw_dht_t *d, int type)
{
    op_t *op = sw_calloc(1, sizeof(*op));

    if (!op)
        return NULL;
    op->d = d;
    op->type = type;
    op->cap = (size_t)d->o.k * 8;
    op->c = sw_calloc(op->cap, sizeof(*op->c));
    if (!op->c) {
        sw_free(op);
        return NULL;
    }
    op->next = d->ops;
    if (d->ops)
        d->ops->prev = op;
    d->ops = op;
    d->nops++;
    return op;
}

/* The operation is over: its callback runs from the loop (never inside the call that started it). */
static void op_finish(op_t *op, int status)
{
    sw_dht_t *d = op->d;

    op->status = status;
    if (op->prev)
        op->prev->next = op->next;
    else
        d->ops = op->next;
    if (op->next)
        op->next->prev = op->prev;
    op->prev = NULL;
    op->next = d->done_ops;
    d->done_ops = op;
    uv_timer_start(&d->t_defer, defer_cb, 0, 0);
}

static int rec_cmp(const void *a, const void *b)
{
    const sw_dht_entry_t *x = a, *y = b;
    size_t n = x->subkey_len < y->subkey_len ? x->subkey_len : y->subkey_len;
    int c = n ? memcmp(x->subkey, y->subkey, n) : 0;

    return c ? c : (x->subkey_len > y->subkey_len) - (x->subkey_len < y->subkey_len);
}

static void op_report(op_t *op)
{
    sw_dht_t *d = op->d;

    d->st.lookups++;
    d->st.lookup_msgs += op->info.msgs;
    d->st.lookup_hops += op->info.hops;
    if (op->type == OP_PUT && op->put_cb) {
        op->put_cb(op->status, op->stored, &op->info, op->arg);
    } else if (op->type == OP_GET && op->get_cb) {
        sw_dht_keyrec_t *k = op->status == 0 ? sw_dht_store_find(&op->merged, op->key, op->key_len) : NULL;
        sw_dht_record_t *out = NULL;
        size_t n = 0;
        if (k && k->n) {
            out = sw_calloc(k->n, sizeof(*out));
            if (out) {
                qsort(k->e, k->n, sizeof(*k->e), rec_cmp);
                for (uint32_t i = 0; i < k->n; i++) {
                    out[n].subkey = k->e[i].subkey;
                    out[n].subkey_len = k->e[i].subkey_len;
                    out[n].value = k->e[i].value;
                    out[n].value_len = k->e[i].value_len;
                    out[n].expiration_ms = k->e[i].exp_ms;
                    out[n].signature = k->e[i].has_sig ? k->e[i].sig : NULL;
                    n++;
                }
            } else {
                op->status = -ENOMEM;
            }
        }
        op->get_cb(op->status, out, n, &op->info, op->arg);
        sw_free(out);
    } else if (op->type == OP_BOOT && op->boot_cb) {
        op->boot_cb(op->status, op->peers, op->arg);
    } else if (op->type == OP_PING && op->ping_cb) {
        op->ping_cb(op->status, op->status == 0 ? &op->peer : NULL, op->rtt_ms, op->offset_ms, op->arg);
    } else if (op->type == OP_NODES && op->nodes_cb) {
        op->nodes_cb(op->status, op->status == 0 ? &op->peer : NULL, op->nodes, op->status == 0 ? op->n_nodes : 0,
                     op->nodes_total, op->arg);
    } else if (op->type == OP_PROBE && op->reach_cb) {
        op->reach_cb(op->status, op->yes, op->no, op->reach, op->arg);
    }
}

static void defer_cb(uv_timer_t *t)
{
    sw_dht_t *d = t->data;

    while (d->done_ops && !d->closing) {
        op_t *op = d->done_ops;
        d->done_ops = op->next;
        d->nops--;
        op_report(op);
        op_free(op);
    }
}

/* ---- candidates of a lookup, sorted by distance to the target ---- */

static void cand_add(op_t *op, const sw_peer_id_t *peer, const char *addr, int depth)
{
    sw_dht_id_t id;
    size_t pos;

    if (sw_peer_id_eq(peer, &op->d->id->id))
        return;
    for (size_t i = 0; i < op->nc; i++)
        if (sw_peer_id_eq(&op->c[i].peer, peer))
            return;
    sw_dht_id_of_peer(peer, &id);
    pos = op->nc;
    while (pos > 0 && sw_dht_id_cmp_dist(&op->target, &id, &op->c[pos - 1].id) < 0)
        pos--;
    if (pos >= op->cap)
        return;
    if (op->nc == op->cap) {
        if (op->c[op->nc - 1].state == C_WAIT)
            return; /* keep the farthest while it is asked; rare */
        op->nc--;
    }
    memmove(&op->c[pos + 1], &op->c[pos], (op->nc - pos) * sizeof(*op->c));
    memset(&op->c[pos], 0, sizeof(op->c[pos]));
    op->c[pos].peer = *peer;
    op->c[pos].id = id;
    snprintf(op->c[pos].addr, sizeof(op->c[pos].addr), "%s", addr);
    op->c[pos].depth = (uint8_t)(depth > 255 ? 255 : depth);
    op->c[pos].state = C_NEW;
    op->nc++;
}

static cand_t *cand_find(op_t *op, const sw_peer_id_t *peer)
{
    for (size_t i = 0; i < op->nc; i++)
        if (sw_peer_id_eq(&op->c[i].peer, peer))
            return &op->c[i];
    return NULL;
}

static void lookup_seed(op_t *op)
{
    sw_dht_contact_t close[SW_DHT_K * 4];
    size_t n = sw_dht_table_closest(&op->d->table, &op->target, close, op->d->o.k);

    for (size_t i = 0; i < n; i++)
        cand_add(op, &close[i].peer, close[i].addr, 1);
    if (op->type != OP_BOOT) {
        int cpl = sw_dht_id_cpl(&op->d->self, &op->target);
        if (cpl < SW_DHT_ID_BITS)
            op->d->table.b[cpl].last_lookup_ms = uv_now(op->d->loop);
    }
}

static void store_done(sw_dht_t *d, rpc_t *q, int status, Swarmd__Dht__Response *resp)
{
    op_t *op = q->arg;
    int ok = status == 0 && resp->n_store_status > 0, kept = 0;

    for (size_t i = 0; ok && i < resp->n_store_status; i++) {
        ok = resp->store_status[i] >= 0;
        kept |= resp->store_status[i] == 1;
    }
    op->stored += ok;
    op->info.superseded += ok && kept;
    if (status == 0)
        note_seen(d, &q->peer, q->addr);
    op->inflight--;
    op_step(op);
}

/* Sends the store request to the k closest nodes that answered (and keeps it here when this node
 * is one of them). */
static void put_store_phase(op_t *op)
{
    sw_dht_t *d = op->d;
    size_t n = 0;
    uint64_t now = sw_dht_now_ms();

    op->phase = 1;
    for (size_t i = 0; i < op->nc && n < d->o.k; i++) {
        if (op->c[i].state != C_OK)
            continue;
        n++;
        if (rpc_start(d, &op->c[i].peer, op->c[i].addr, M_STORE, op->store_req, op->store_req_len, store_done,
                      op) == 0)
            op->inflight++;
    }
    if (!d->client) {
        /* this node is among the k closest when fewer answered or it is closer than the k-th */
        size_t okn = 0, last = 0;
        for (size_t i = 0; i < op->nc; i++)
            if (op->c[i].state == C_OK)
                okn++, last = i;
        if (okn < d->o.k || sw_dht_id_cmp_dist(&op->target, &d->self, &op->c[last].id) < 0) {
            Swarmd__Dht__Request *req =
                swarmd__dht__request__unpack(&sw_pb_allocator, op->store_req_len, op->store_req);
            int all = req != NULL;
            for (size_t i = 0; req && i < req->n_records; i++) {
                const Swarmd__Dht__Record *x = req->records[i];
                sw_dht_record_t rec = { x->subkey.data, x->subkey.len, x->value.data, x->value.len,
                                        x->expiration_ms, x->signature.len ? x->signature.data : NULL };
                if (sw_dht_store_put(&d->store, op->key, op->key_len, &rec, now) < 0)
                    all = 0;
            }
            if (req)
                swarmd__dht__request__free_unpacked(req, &sw_pb_allocator);
            op->stored += all;
        }
    }
}

static void lookup_done(sw_dht_t *d, rpc_t *q, int status, Swarmd__Dht__Response *resp)
{
    op_t *op = q->arg;
    cand_t *c = cand_find(op, &q->peer);
    int depth = c ? c->depth : 1;

    op->inflight--;
    if (status < 0) {
        op->info.failed++;
        if (c)
            c->state = C_FAIL;
        op_step(op);
        return;
    }
    op->info.answered++;
    if (c)
        c->state = C_OK;
    note_seen(d, &q->peer, q->addr);
    for (size_t i = 0; i < resp->n_nodes; i++) {
        sw_peer_id_t p;
        memcpy(p.b, resp->nodes[i]->peer_id.data, SW_PEER_ID_LEN);
        cand_add(op, &p, resp->nodes[i]->addr, depth + 1);
    }
    if (op->type == OP_GET) {
        uint64_t now = sw_dht_now_ms();
        for (size_t i = 0; i < resp->n_records; i++) {
            const Swarmd__Dht__Record *x = resp->records[i];
            sw_dht_record_t rec = { x->subkey.data, x->subkey.len, x->value.data, x->value.len, x->expiration_ms,
                                    x->signature.len ? x->signature.data : NULL };
            if (sw_dht_store_put(&op->merged, op->key, op->key_len, &rec, now) < 0)
                d->st.records_rejected++;
        }
    }
    op_step(op);
}

/* Drives a lookup: up to alpha calls in flight to the closest unasked candidates among the k
 * closest still alive; over when none is in flight and those k have all answered. */
static void op_step(op_t *op)
{
    sw_dht_t *d = op->d;
    Swarmd__Dht__Request req = SWARMD__DHT__REQUEST__INIT;
    uint8_t *buf = NULL;
    size_t len = 0;
    const char *method = op->type == OP_GET ? M_FIND_VALUE : M_FIND_NODE;

    if (op->phase == 1) {
        if (op->inflight == 0)
            op_finish(op, op->stored ? 0 : (op->status ? op->status : -EHOSTUNREACH));
        return;
    }
    if (op->type == OP_GET) {
        req.key.data = op->key;
        req.key.len = op->key_len;
    } else {
        req.target.data = op->target.b;
        req.target.len = SW_DHT_ID_LEN;
    }
    while (op->inflight < d->o.alpha && !d->closing) {
        size_t seen = 0, i;
        cand_t *next = NULL;
        for (i = 0; i < op->nc && seen < d->o.k; i++) {
            if (op->c[i].state == C_FAIL)
                continue;
            seen++;
            if (op->c[i].state == C_NEW) {
                next = &op->c[i];
                break;
            }
        }
        if (!next)
            break;
        if (!buf && !(buf = req_pack(d, &req, &len)))
            break;
        if (rpc_start(d, &next->peer, next->addr, method, buf, len, lookup_done, op) < 0) {
            next->state = C_FAIL;
            op->info.failed++;
            continue;
        }
        next->state = C_WAIT;
        op->inflight++;
        op->info.msgs++;
    }
    sw_free(buf);
    if (op->inflight > 0)
        return;
    /* the lookup is over */
    {
        size_t seen = 0;
        op->info.hops = 0;
        for (size_t i = 0; i < op->nc && seen < d->o.k; i++) {
            if (op->c[i].state != C_OK)
                continue;
            seen++;
            if (op->c[i].depth > op->info.hops)
                op->info.hops = op->c[i].depth;
        }
    }
    if (op->type == OP_PUT) {
        put_store_phase(op);
        if (op->inflight == 0)
            op_finish(op, op->stored ? 0 : -EHOSTUNREACH);
        return;
    }
    if (op->type == OP_BOOT)
        op->status = op->peers || op->naddrs == 0 ? 0 : -EHOSTUNREACH;
    op_finish(op, op->status);
}

/* ---- reachability: ask peers to dial this node back ---- */

/* The check is over: the node's mode follows, the user hears of a change, and a bootstrap waiting for
 * it goes on (its lookup of the own id announces the node when reachable). */
static void probe_finish(op_t *op)
{
    sw_dht_t *d = op->d;
    op_t *boot = op->boot;
    int was = d->reach;
    uint32_t asked = op->info.msgs;

    d->probe = NULL;
    if (op->yes)
        d->reach = SW_DHT_REACH_YES;
    else if (op->no)
        d->reach = SW_DHT_REACH_NO;
    else if (d->reach == SW_DHT_REACH_UNKNOWN)
        d->reach = SW_DHT_REACH_YES; /* nobody could tell (the first node of a swarm): assume reachable */
    d->client = d->o.client_mode || d->reach != SW_DHT_REACH_YES;
    op->reach = d->reach;
    if (d->reach == SW_DHT_REACH_NO && was != SW_DHT_REACH_NO)
        SW_LOG_W("dht", "none of %u peers asked could connect back to %s: running in client mode (lookups and "
                        "stores work, but no routing table lists this node); open that TCP port to inbound "
                        "connections or pass --announce HOST:PORT with an address others can reach; checking "
                        "again every %u s", op->no, d->announce, d->o.reachability_ms / 1000);
    else if (d->reach == SW_DHT_REACH_YES && was == SW_DHT_REACH_NO)
        SW_LOG_W("dht", "%u of %u peers asked connected back to %s: reachable now, a full DHT node again", op->yes,
                 asked, d->announce);
    else if (d->reach == SW_DHT_REACH_YES && was == SW_DHT_REACH_UNKNOWN && op->yes)
        SW_LOG_I("dht", "%u of %u peers asked connected back to %s: reachable, a full DHT node", op->yes, asked,
                 d->announce);
    else if (d->reach == SW_DHT_REACH_YES && was == SW_DHT_REACH_UNKNOWN)
        SW_LOG_I("dht", "no peer could check whether %s is reachable (none asked answered): assuming it is",
                 d->announce);
    op_finish(op, op->yes + op->no ? 0 : -EHOSTUNREACH);
    if (boot) {
        boot->phase = 2;
        lookup_seed(boot);
        op_step(boot);
    } else if (was != SW_DHT_REACH_YES && d->reach == SW_DHT_REACH_YES && !d->closing) {
        /* announce: the k closest nodes learn this node from the lookup of its own id */
        op_t *ann = op_new(d, OP_FIND_NODE);
        if (ann) {
            ann->target = d->self;
            lookup_seed(ann);
            op_step(ann);
        }
    }
}

static void probe_done(sw_dht_t *d, rpc_t *q, int status, Swarmd__Dht__Response *resp)
{
    op_t *op = q->arg;
    char text[SW_PEER_ID_SHORT_MAX];

    op->inflight--;
    if (status == 0) {
        op->info.answered++;
        if (resp->reachable) {
            op->yes++;
        } else {
            op->no++;
            sw_peer_id_short(&q->peer, text);
            SW_LOG_I("dht", "peer %s could not connect back to %s: %s", text, d->announce,
                     sw_strerror(resp->dialback_status < 0 ? resp->dialback_status : SW_EFORMAT));
        }
        note_seen(d, &q->peer, q->addr);
    } else {
        op->info.failed++;
    }
    if (op->inflight == 0)
        probe_finish(op);
}

/* Asks up to SW_DHT_PROBE_ASK contacts (the closest to this node's id) to dial it back. */
static int probe_start(sw_dht_t *d, op_t *boot, sw_dht_reach_cb cb, void *arg)
{
    Swarmd__Dht__Request req = SWARMD__DHT__REQUEST__INIT;
    sw_dht_contact_t close[SW_DHT_PROBE_ASK];
    uint8_t *buf;
    size_t len, n;
    op_t *op;

    if (d->closing || d->o.client_mode || d->probe)
        return SW_ESTATE;
    if (!(op = op_new(d, OP_PROBE)))
        return -ENOMEM;
    op->reach_cb = cb;
    op->arg = arg;
    op->boot = boot;
    d->probe = op;
    d->st.probes++;
    n = sw_dht_table_closest(&d->table, &d->self, close, SW_DHT_PROBE_ASK);
    buf = req_pack_addr(d, &req, &len, 1);
    for (size_t i = 0; buf && i < n; i++) {
        if (rpc_start_to(d, &close[i].peer, close[i].addr, M_DIALBACK, buf, len,
                         d->o.dialback_timeout_ms + d->o.rpc_timeout_ms, probe_done, op) == 0) {
            op->inflight++;
            op->info.msgs++;
        }
    }
    sw_free(buf);
    if (op->inflight == 0)
        probe_finish(op);
    return 0;
}

static void probe_tick(uv_timer_t *t)
{
    sw_dht_t *d = t->data;

    if (!d->probe)
        probe_start(d, NULL, NULL, NULL);
}

int sw_dht_check_reachability(sw_dht_t *d, sw_dht_reach_cb cb, void *arg)
{
    if (d->closing || d->o.client_mode || d->probe)
        return sw_err(SW_ESTATE, "a reachability check runs already, or the node is a client by choice");
    return probe_start(d, NULL, cb, arg);
}

int sw_dht_reachability(const sw_dht_t *d)
{
    return d->reach;
}

int sw_dht_is_client(const sw_dht_t *d)
{
    return d->client;
}

/* ---- bootstrap ---- */

/* The initial peers answered (or not): check reachability first when asked to, then look up the
 * own id, which fills the buckets (and puts this node in others' tables unless it is a client). */
static void boot_pinged(op_t *op)
{
    sw_dht_t *d = op->d;

    op->phase = 2;
    if (d->auto_reach && probe_start(d, op, NULL, NULL) == 0)
        return; /* probe_finish goes on */
    lookup_seed(op);
    op_step(op);
}

static void boot_ping_done(sw_dht_t *d, rpc_t *q, int status, Swarmd__Dht__Response *resp)
{
    op_t *op = q->arg;

    op->inflight--;
    if (status == 0 && q->has_peer) {
        op->peers++;
        note_seen(d, &q->peer, q->addr);
    }
    if (op->inflight > 0)
        return;
    boot_pinged(op);
}

int sw_dht_bootstrap(sw_dht_t *d, const char *const *addrs, size_t n, sw_dht_bootstrap_cb cb, void *arg)
{
    Swarmd__Dht__Request req = SWARMD__DHT__REQUEST__INIT;
    op_t *op;
    uint8_t *buf;
    size_t len;

    if (d->closing)
        return SW_ESTATE;
    op = op_new(d, OP_BOOT);
    if (!op)
        return -ENOMEM;
    op->boot_cb = cb;
    op->arg = arg;
    op->target = d->self;
    op->addrs = sw_calloc(n ? n : 1, sizeof(char *));
    buf = req_pack(d, &req, &len);
    if (!op->addrs || !buf) {
        sw_free(buf);
        op_finish(op, -ENOMEM);
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        sw_addr_t a;
        const char *hp = addrs[i];
        char *at = strchr(addrs[i], '@');
        sw_peer_id_t *pp = NULL;
        if (sw_addr_parse(addrs[i], &a) < 0)
            continue;
        if (at)
            hp = at + 1;
        if (a.has_peer)
            pp = &a.peer;
        if (!sw_dht_addr_ok(hp))
            continue;
        op->addrs[op->naddrs] = sw_strdup(hp);
        if (!op->addrs[op->naddrs])
            continue;
        op->naddrs++;
        if (rpc_start(d, pp, hp, M_PING, buf, len, boot_ping_done, op) == 0)
            op->inflight++;
    }
    sw_free(buf);
    if (op->inflight == 0)
        boot_pinged(op);
    return 0;
}

/* ---- ping / routing table of another node ---- */

/* Splits PEERID@HOST:PORT or HOST:PORT into an optional pinned peer and the HOST:PORT part. */
static int addr_split(const char *addr, sw_peer_id_t *peer, int *has_peer, const char **hostport)
{
    sw_addr_t a;
    const char *at;
    int r;

    if (!addr || (r = sw_addr_parse(addr, &a)) < 0)
        return sw_err(SW_EUSAGE, "'%s' is not an address: write HOST:PORT or PEERID@HOST:PORT", addr ? addr : "");
    at = strchr(addr, '@');
    *hostport = at ? at + 1 : addr;
    if (!sw_dht_addr_ok(*hostport))
        return sw_err(SW_EUSAGE, "'%s' is not an address: write HOST:PORT or PEERID@HOST:PORT", addr);
    *has_peer = a.has_peer;
    if (a.has_peer)
        *peer = a.peer;
    return 0;
}

static void ping_done(sw_dht_t *d, rpc_t *q, int status, Swarmd__Dht__Response *resp)
{
    op_t *op = q->arg;

    if (status == 0) {
        uint64_t now = sw_dht_now_ms();
        op->rtt_ms = (double)(uv_hrtime() - op->t0_ns) / 1e6;
        op->offset_ms = (int64_t)resp->now_ms - (int64_t)now + (int64_t)(op->rtt_ms / 2);
        op->peer = q->peer;
        if (!d->o.client_mode)
            note_seen(d, &q->peer, q->addr);
    }
    op_finish(op, status);
}

static void nodes_done(sw_dht_t *d, rpc_t *q, int status, Swarmd__Dht__Response *resp)
{
    op_t *op = q->arg;

    if (status == 0) {
        size_t n = resp->n_table;
        op->nodes = sw_calloc(n ? n : 1, sizeof(*op->nodes));
        op->node_addrs = sw_calloc(n ? n : 1, sizeof(*op->node_addrs));
        if (!op->nodes || !op->node_addrs) {
            op_finish(op, -ENOMEM);
            return;
        }
        for (size_t i = 0; i < n; i++) {
            const Swarmd__Dht__TableEntry *e = resp->table[i];
            memcpy(op->nodes[i].peer.b, e->peer_id.data, SW_PEER_ID_LEN);
            snprintf(op->node_addrs[i], SW_DHT_ADDR_MAX, "%s", e->addr);
            op->nodes[i].addr = op->node_addrs[i];
            op->nodes[i].bucket = e->bucket;
            op->nodes[i].age_ms = e->age_ms;
            op->nodes[i].fails = e->fails;
        }
        op->n_nodes = n;
        op->nodes_total = resp->table_size;
        op->peer = q->peer;
    }
    op_finish(op, status);
}

static int single_call(sw_dht_t *d, int type, const char *method, const char *addr, rpc_cb done, op_t **out)
{
    Swarmd__Dht__Request req = SWARMD__DHT__REQUEST__INIT;
    sw_peer_id_t peer;
    const char *hp = NULL;
    int has_peer = 0, r;
    uint8_t *buf;
    size_t len;
    op_t *op;

    if (d->closing)
        return SW_ESTATE;
    if ((r = addr_split(addr, &peer, &has_peer, &hp)) < 0)
        return r;
    if (!(buf = req_pack(d, &req, &len)))
        return -ENOMEM;
    if (!(op = op_new(d, type))) {
        sw_free(buf);
        return -ENOMEM;
    }
    op->t0_ns = uv_hrtime();
    r = rpc_start(d, has_peer ? &peer : NULL, hp, method, buf, len, done, op);
    sw_free(buf);
    if (r < 0) {
        /* never reported: unlink it quietly */
        op->status = r;
        if (op->prev)
            op->prev->next = op->next;
        else
            d->ops = op->next;
        if (op->next)
            op->next->prev = op->prev;
        d->nops--;
        op_free(op);
        return r;
    }
    *out = op;
    return 0;
}

int sw_dht_ping(sw_dht_t *d, const char *addr, sw_dht_ping_cb cb, void *arg)
{
    op_t *op;
    int r = single_call(d, OP_PING, M_PING, addr, ping_done, &op);

    if (r < 0)
        return r;
    op->ping_cb = cb;
    op->arg = arg;
    return 0;
}

int sw_dht_nodes(sw_dht_t *d, const char *addr, sw_dht_nodes_cb cb, void *arg)
{
    op_t *op;
    int r = single_call(d, OP_NODES, M_NODES, addr, nodes_done, &op);

    if (r < 0)
        return r;
    op->nodes_cb = cb;
    op->arg = arg;
    return 0;
}

/* ---- put / get ---- */

static int key_ok(const void *key, size_t key_len)
{
    return key && key_len > 0 && key_len <= SW_DHT_KEY_MAX;
}

/* Starts a put of every live record of keyrec k (taken from a store) on the k closest nodes. */
static int put_keyrec(sw_dht_t *d, const sw_dht_keyrec_t *k, sw_dht_put_cb cb, void *arg)
{
    Swarmd__Dht__Request req = SWARMD__DHT__REQUEST__INIT;
    Swarmd__Dht__Record *recs = sw_calloc(k->n ? k->n : 1, sizeof(*recs));
    Swarmd__Dht__Record **precs = sw_calloc(k->n ? k->n : 1, sizeof(*precs));
    uint64_t now = sw_dht_now_ms();
    op_t *op = NULL;
    int r = 0;

    if (!recs || !precs) {
        r = -ENOMEM;
        goto out;
    }
    req.n_records = records_of(k, now, recs, precs);
    if (req.n_records == 0) {
        r = SW_ESTATE;
        goto out;
    }
    req.records = precs;
    req.key.data = k->key;
    req.key.len = k->key_len;
    op = op_new(d, OP_PUT);
    if (!op) {
        r = -ENOMEM;
        goto out;
    }
    op->put_cb = cb;
    op->arg = arg;
    op->key = sw_malloc(k->key_len);
    op->store_req = req_pack(d, &req, &op->store_req_len);
    if (!op->key || !op->store_req) {
        op_finish(op, -ENOMEM);
        goto out;
    }
    memcpy(op->key, k->key, k->key_len);
    op->key_len = k->key_len;
    op->target = k->id;
    lookup_seed(op);
    op_step(op);
out:
    sw_free(recs);
    sw_free(precs);
    return r;
}

int sw_dht_put(sw_dht_t *d, const void *key, size_t key_len, const void *subkey, size_t subkey_len,
               const void *value, size_t value_len, uint64_t expiration_ms, sw_dht_put_cb cb, void *arg)
{
    sw_dht_record_t rec = { subkey, subkey_len, value, value_len, expiration_ms, NULL };
    uint8_t sig[SW_DHT_SIG_LEN];
    sw_peer_id_t owner;
    sw_dht_keyrec_t *k;
    int own, r;

    if (d->closing)
        return SW_ESTATE;
    if (!key_ok(key, key_len))
        return sw_err(SW_ELIMIT, "key of %zu bytes (1..%d)", key_len, SW_DHT_KEY_MAX);
    own = sw_dht_subkey_owner(subkey, subkey_len, &owner);
    if (own < 0)
        return sw_err(SW_EUSAGE, "a subkey starting with \"peer:\" must be \"peer:\" + a 32-byte peer id");
    if (own && !sw_peer_id_eq(&owner, &d->id->id))
        return sw_err(SW_EUSAGE, "this subkey is owned by another peer");
    if (own) {
        sw_dht_record_sign(d->id, key, key_len, &rec, sig);
        rec.signature = sig;
    }
    r = sw_dht_store_put(&d->mine, key, key_len, &rec, sw_dht_now_ms());
    if (r < 0)
        return r;
    k = sw_dht_store_find(&d->mine, key, key_len);
    if (!k)
        return -ENOMEM;
    if (r == 1) {
        /* an entry with a later expiration is kept: publish exactly what was asked for */
        sw_dht_store_t one;
        sw_dht_keyrec_t *k1;
        if ((r = sw_dht_store_init(&one, &d->lim)) < 0)
            return r;
        r = sw_dht_store_put(&one, key, key_len, &rec, sw_dht_now_ms());
        k1 = r == 0 ? sw_dht_store_find(&one, key, key_len) : NULL;
        r = k1 ? put_keyrec(d, k1, cb, arg) : (r < 0 ? r : -ENOMEM);
        sw_dht_store_free(&one);
        return r;
    }
    return put_keyrec(d, k, cb, arg);
}

int sw_dht_put_raw(sw_dht_t *d, const void *key, size_t key_len, const sw_dht_record_t *rec, sw_dht_put_cb cb,
                   void *arg)
{
    sw_dht_entry_t e;
    sw_dht_keyrec_t k;

    if (d->closing)
        return SW_ESTATE;
    if (!key_ok(key, key_len) || rec->subkey_len > SW_DHT_SUBKEY_MAX || rec->value_len > SW_DHT_VALUE_MAX)
        return sw_err(SW_ELIMIT, "record over the size limits");
    memset(&e, 0, sizeof(e));
    memset(&k, 0, sizeof(k));
    e.subkey = (uint8_t *)rec->subkey;
    e.subkey_len = (uint32_t)rec->subkey_len;
    e.value = (uint8_t *)rec->value;
    e.value_len = (uint32_t)rec->value_len;
    e.exp_ms = rec->expiration_ms;
    if (rec->signature) {
        memcpy(e.sig, rec->signature, SW_DHT_SIG_LEN);
        e.has_sig = 1;
    }
    sw_dht_id_of_key(key, key_len, &k.id);
    k.key = (uint8_t *)key;
    k.key_len = (uint32_t)key_len;
    k.n = k.cap = 1;
    k.e = &e;
    return put_keyrec(d, &k, cb, arg);
}

int sw_dht_get(sw_dht_t *d, const void *key, size_t key_len, sw_dht_get_cb cb, void *arg)
{
    sw_dht_limits_t lim = d->lim;
    sw_dht_keyrec_t *local;
    op_t *op;
    uint64_t now = sw_dht_now_ms();

    if (d->closing)
        return SW_ESTATE;
    if (!key_ok(key, key_len))
        return sw_err(SW_ELIMIT, "key of %zu bytes (1..%d)", key_len, SW_DHT_KEY_MAX);
    op = op_new(d, OP_GET);
    if (!op)
        return -ENOMEM;
    op->get_cb = cb;
    op->arg = arg;
    lim.max_bytes = UINT64_MAX;
    op->key = sw_malloc(key_len);
    if (!op->key || sw_dht_store_init(&op->merged, &lim) < 0) {
        op_finish(op, -ENOMEM);
        return 0;
    }
    memcpy(op->key, key, key_len);
    op->key_len = key_len;
    sw_dht_id_of_key(key, key_len, &op->target);
    /* this node's own copies count like any other answer */
    for (int s = 0; s < 2; s++) {
        local = sw_dht_store_find(s ? &d->mine : &d->store, key, key_len);
        for (uint32_t i = 0; local && i < local->n; i++) {
            const sw_dht_entry_t *e = &local->e[i];
            sw_dht_record_t rec = { e->subkey, e->subkey_len, e->value, e->value_len, e->exp_ms,
                                    e->has_sig ? e->sig : NULL };
            sw_dht_store_put(&op->merged, key, key_len, &rec, now);
        }
    }
    lookup_seed(op);
    op_step(op);
    return 0;
}

/* ======================================================================== periodic jobs */

static void expire_tick(uv_timer_t *t)
{
    sw_dht_t *d = t->data;
    uint64_t now = sw_dht_now_ms();

    sw_dht_store_expire(&d->store, now);
    sw_dht_store_expire(&d->mine, now);
}

static void refresh(sw_dht_t *d, int force)
{
    uint64_t now = uv_now(d->loop);
    int top = -1;

    for (int i = 0; i < SW_DHT_ID_BITS; i++)
        if (d->table.b[i].n)
            top = i;
    for (int i = 0; i <= top + 1 && i < SW_DHT_ID_BITS; i++) {
        op_t *op;
        if (!force && now - d->table.b[i].last_lookup_ms < d->o.refresh_ms)
            continue;
        op = op_new(d, OP_FIND_NODE);
        if (!op)
            return;
        sw_dht_id_random_in_bucket(&d->self, i, &op->target);
        lookup_seed(op);
        d->table.b[i].last_lookup_ms = now;
        op_step(op);
    }
}

static void refresh_tick(uv_timer_t *t)
{
    refresh(t->data, 0);
}

static void republish(sw_dht_t *d, int force)
{
    uint64_t now = sw_dht_now_ms(), recent = force ? 0 : d->o.republish_ms / 2;

    for (int s = 0; s < 2; s++) {
        sw_dht_store_t *st = s ? &d->store : &d->mine;
        for (size_t i = 0; i < st->nslots; i++) {
            for (sw_dht_keyrec_t *k = st->tab[i]; k; k = k->next) {
                /* a key someone stored here lately was republished by them: skip it (Kademlia) */
                if (s && !force && now - k->last_store_ms < recent)
                    continue;
                put_keyrec(d, k, NULL, NULL);
            }
        }
    }
}

static void republish_tick(uv_timer_t *t)
{
    republish(t->data, 0);
}

/* Every table_save_ms: the routing table goes to its file, so a crash loses little of it. */
static void save_tick(uv_timer_t *t)
{
    sw_dht_t *d = t->data;

    if (d->table_path && sw_dht_save_table(d) < 0)
        SW_LOG_W("dht", "cannot save the routing table to %s: %s", d->table_path, sw_err_detail());
}

void sw_dht_refresh_now(sw_dht_t *d)
{
    if (!d->closing)
        refresh(d, 1);
}

void sw_dht_republish_now(sw_dht_t *d)
{
    if (!d->closing)
        republish(d, 1);
}

uint32_t sw_dht_pending(const sw_dht_t *d)
{
    return d->nops;
}

/* ======================================================================== life cycle */

int sw_dht_new(uv_loop_t *loop, sw_p2p_node_t *node, const sw_identity_t *id, const sw_dht_opts_t *opts,
               sw_dht_t **out)
{
    sw_dht_opts_t def;
    sw_dht_t *d;
    int r;

    if (!opts) {
        sw_dht_opts_default(&def);
        opts = &def;
    }
    if (!opts->client_mode && !sw_dht_addr_ok(opts->announce_addr))
        return sw_err(SW_EUSAGE, "a DHT server needs an announce address HOST:PORT (or client mode)");
    if (opts->k == 0 || opts->k > SW_DHT_K * 4 || opts->alpha == 0 || opts->max_value > SW_DHT_VALUE_MAX ||
        opts->max_subkeys == 0 || opts->max_subkeys > 1024)
        return sw_err(SW_EUSAGE, "DHT options out of range (k 1..%d, alpha >= 1, max_value <= %d)", SW_DHT_K * 4,
                      SW_DHT_VALUE_MAX);
    d = sw_calloc(1, sizeof(*d));
    if (!d)
        return -ENOMEM;
    d->loop = loop;
    d->node = node;
    d->id = id;
    d->o = *opts;
    d->o.announce_addr = NULL;
    d->o.table_path = NULL;
    if (opts->announce_addr)
        snprintf(d->announce, sizeof(d->announce), "%s", opts->announce_addr);
    if (opts->swarm_key) {
        memcpy(d->swarm_key, opts->swarm_key, sizeof(d->swarm_key));
        d->has_key = 1;
    }
    d->o.swarm_key = NULL;
    if (d->o.dialback_timeout_ms == 0)
        d->o.dialback_timeout_ms = 5000;
    d->auto_reach = opts->reachability_check && !opts->client_mode;
    d->reach = opts->client_mode || d->auto_reach ? SW_DHT_REACH_UNKNOWN : SW_DHT_REACH_YES;
    d->client = d->reach != SW_DHT_REACH_YES;
    if (opts->table_path && !(d->table_path = sw_strdup(opts->table_path))) {
        sw_free(d);
        return -ENOMEM;
    }
    d->lim.max_value = opts->max_value;
    d->lim.max_ttl_s = opts->max_ttl_s;
    d->lim.max_skew_s = opts->max_skew_s;
    d->lim.max_subkeys = opts->max_subkeys;
    d->lim.max_bytes = d->o.client_mode ? 0 : opts->max_bytes;
    sw_dht_id_of_peer(&id->id, &d->self);
    sw_dht_table_init(&d->table, &d->self, opts->k);
    sw_dht_rate_init(&d->rate, opts->store_rate, opts->store_burst, opts->find_rate, opts->find_burst);
    sw_dht_rate_set(&d->rate, SW_DHT_RATE_DIALBACK, opts->dialback_per_min / 60.0, 2);
    if ((r = sw_dht_store_init(&d->store, &d->lim)) < 0)
        goto fail;
    {
        sw_dht_limits_t ml = d->lim;
        ml.max_bytes = UINT64_MAX;
        if ((r = sw_dht_store_init(&d->mine, &ml)) < 0)
            goto fail;
    }
    if (d->table_path) {
        r = sw_dht_table_load(&d->table, d->table_path, uv_now(loop));
        if (r < 0 && r != -ENOENT)
            SW_LOG_W("dht", "ignoring routing table %s: %s", d->table_path, sw_err_detail());
    }
    if (!d->o.client_mode) {
        if ((r = sw_p2p_node_handle(node, M_PING, srv_open_ping, d)) < 0 ||
            (r = sw_p2p_node_handle(node, M_FIND_NODE, srv_open_find_node, d)) < 0 ||
            (r = sw_p2p_node_handle(node, M_FIND_VALUE, srv_open_find_value, d)) < 0 ||
            (r = sw_p2p_node_handle(node, M_STORE, srv_open_store, d)) < 0 ||
            (r = sw_p2p_node_handle(node, M_NODES, srv_open_nodes, d)) < 0 ||
            (r = sw_p2p_node_handle(node, M_DIALBACK, srv_open_dialback, d)) < 0)
            goto fail;
    }
    uv_timer_init(loop, &d->t_expire);
    uv_timer_init(loop, &d->t_refresh);
    uv_timer_init(loop, &d->t_republish);
    uv_timer_init(loop, &d->t_defer);
    uv_timer_init(loop, &d->t_save);
    uv_timer_init(loop, &d->t_probe);
    d->t_expire.data = d->t_refresh.data = d->t_republish.data = d->t_defer.data = d->t_save.data = d;
    d->t_probe.data = d;
    d->handles = 6;
    uv_timer_start(&d->t_expire, expire_tick, EXPIRE_TICK_MS, EXPIRE_TICK_MS);
    if (d->o.refresh_ms)
        uv_timer_start(&d->t_refresh, refresh_tick, d->o.refresh_ms / 4 + 1, d->o.refresh_ms / 4 + 1);
    if (d->o.republish_ms)
        uv_timer_start(&d->t_republish, republish_tick, d->o.republish_ms, d->o.republish_ms);
    if (d->o.table_save_ms && d->table_path)
        uv_timer_start(&d->t_save, save_tick, d->o.table_save_ms, d->o.table_save_ms);
    if (d->auto_reach && d->o.reachability_ms)
        uv_timer_start(&d->t_probe, probe_tick, d->o.reachability_ms, d->o.reachability_ms);
    *out = d;
    return 0;
fail:
    /* handlers registered before a failure keep pointing at d: rpc.h cannot unregister, so the
     * node must be closed before anything else happens (the caller's error path does that) */
    sw_dht_table_free(&d->table);
    sw_dht_store_free(&d->store);
    sw_dht_store_free(&d->mine);
    sw_free(d->table_path);
    sodium_memzero(d->swarm_key, sizeof(d->swarm_key));
    sw_free(d);
    return r;
}

/* One of the handles (timers, dial-backs) the DHT waits for is gone; the last frees it. */
static void dht_unref(sw_dht_t *d)
{
    if (--d->handles > 0)
        return;
    if (d->close_done)
        d->close_done(d->close_arg);
    sodium_memzero(d->swarm_key, sizeof(d->swarm_key));
    sw_free(d);
}

static void timer_closed(uv_handle_t *h)
{
    dht_unref(h->data);
}

void sw_dht_close(sw_dht_t *d, void (*done)(void *arg), void *arg)
{
    if (!d)
        return;
    d->closing = 1;
    d->close_done = done;
    d->close_arg = arg;
    if (d->table_path && sw_dht_save_table(d) < 0)
        SW_LOG_W("dht", "cannot save the routing table: %s", sw_err_detail());
    /* calls still open (only when the node is not closed yet): abandon them */
    while (d->rpcs) {
        rpc_t *q = d->rpcs;
        rpc_unlink(d, q);
        if (q->call) {
            sw_p2p_call_cancel(q->call);
            rpc_free(q);
        } else {
            q->d = NULL; /* still connecting: rpc_on_conn frees it */
        }
    }
    while (d->ops) {
        op_t *op = d->ops;
        d->ops = op->next;
        op->status = -ECANCELED;
        op_report(op);
        op_free(op);
    }
    while (d->done_ops) {
        op_t *op = d->done_ops;
        d->done_ops = op->next;
        op_report(op);
        op_free(op);
    }
    d->probe = NULL;
    /* dial-backs for others: their callers are gone with the node; each holds a handle */
    for (dialback_t *db = d->dbs, *next; db; db = next) {
        next = db->next;
        if (db->call) {
            sw_p2p_call_set_cbs(db->call, &db_gone_cbs, NULL);
            sw_p2p_call_cancel(db->call);
            db->call = NULL;
        }
        db->answered = 1;
        db_close(db);
    }
    sw_dht_table_free(&d->table);
    sw_dht_store_free(&d->store);
    sw_dht_store_free(&d->mine);
    sw_free(d->table_path);
    d->table_path = NULL;
    uv_close((uv_handle_t *)&d->t_expire, timer_closed);
    uv_close((uv_handle_t *)&d->t_refresh, timer_closed);
    uv_close((uv_handle_t *)&d->t_republish, timer_closed);
    uv_close((uv_handle_t *)&d->t_defer, timer_closed);
    uv_close((uv_handle_t *)&d->t_save, timer_closed);
    uv_close((uv_handle_t *)&d->t_probe, timer_closed);
}

int sw_dht_save_table(sw_dht_t *d)
{
    if (!d->table_path)
        return sw_err(SW_EUSAGE, "no routing table path");
    return sw_dht_table_save(&d->table, d->table_path);
}

size_t sw_dht_table_peers(const sw_dht_t *d, sw_peer_id_t *out, size_t cap)
{
    size_t n = 0;

    for (int b = 0; b < SW_DHT_ID_BITS; b++) {
        for (uint32_t i = 0; i < d->table.b[b].n; i++) {
            if (out && n < cap)
                out[n] = d->table.b[b].c[i].peer;
            n++;
        }
    }
    return n;
}

void sw_dht_stats(const sw_dht_t *d, sw_dht_stats_t *out)
{
    *out = d->st;
    out->records_held = d->store.nrecords;
    out->bytes_held = d->store.bytes;
}
