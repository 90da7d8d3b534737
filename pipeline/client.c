/*
 * client.c - the client library (swarm_client.h): DHT lookup of the servers, chain choice
 * (route.h), inference sessions over a chain, replay of a failed server's inputs to a replacement
 * chain, and generation.
 *
 * Everything runs on the caller's thread: each blocking call turns the client's own libuv loop
 * until what it waits for has happened or its deadline has passed. Callbacks only record what came
 * back; the calls read those records after the loop returns.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>
#include <uv.h>

#include "kernels/device.h"
#include "p2p/dht.h"
#include "p2p/identity.h"
#include "p2p/rpc.h"
#include "pipeline/codec.h"
#include "pipeline/local.h"
#include "pipeline/model.h"
#include "pipeline/route.h"
#include "pipeline/sampling.h"
#include "pipeline/swarm_client.h"
#include "pipeline/weights.h"
#include "swarmd.pb-c.h"
#include "util/alloc.h"
#include "util/error.h"
#include "util/log.h"

#define DEFAULT_MAX_LENGTH 2048
#define DEFAULT_STEP_TIMEOUT_MS 60000u
#define DEFAULT_DHT_TIMEOUT_MS 20000u
#define DEFAULT_MAX_FAILURES 8u
#define PROBE_TIMEOUT_MS 3000u
#define CLOSE_WAIT_MS 2000u
#define REPLAY_CHUNK 1024 /* positions per replay step (servers take 8192 B x T by default) */
#define MAX_HOPS 256

struct swarm_client {
    char model_name[128], quant_name[8];
    const sw_ops_t *ops;
    sw_model_t *model;
    sw_head_t *head;
    const sw_model_config_t *cfg;
    int H, V, L, max_length;
    sw_local_t *local;
    int local_busy;
    sw_codec_opts_t codec;
    unsigned step_timeout_ms, dht_timeout_ms, max_failures;
    void (*on_event)(void *arg, int kind, const char *text);
    void *event_arg;

    /* network (not in local mode) */
    int have_loop;
    uv_loop_t loop;
    uv_timer_t tick;
    sw_identity_t id;
    sw_p2p_node_t *node;
    sw_dht_t *dht;
    char **peers;
    size_t npeers;
    sw_route_table_t table;
    uint64_t probe_gen;
    int gets_left, gets_failed;
    uint64_t table_ms; /* when forward/backward routing last read the swarm (0: never) */
    uint64_t rng;      /* splitmix64 state of the random routes */
};

/* One hop of a session: a server (or the in-process span) holding blocks [start, end). */
typedef struct hop {
    swarm_session_t *s;
    int start, end;
    int local;
    sw_peer_id_t peer;
    char addr[256], name[64];
    double rtt_ms;
    int max_batch;          /* positions one step may carry (the server's max_batch_tokens) */
    sw_p2p_call_t *call;
    int opened;             /* the first step (which reserves the cache) has been sent */
    uint64_t steps;         /* steps sent */
    /* what came back for the step in flight */
    int got, ended, done, end_status, done_status;
    char error[256];
    uint8_t body[512], *payload; /* a reply's body is a few dozen bytes: kept here, not allocated */
    size_t blen, plen;
    /* every input this hop has taken: (positions, H) */
    float *hist;
    size_t hist_len, hist_cap;
} hop_t;

struct swarm_session {
    swarm_client_t *c;
    int max_length, pos;
    hop_t **hops;
    int nhops;
    float *buf, *out;      /* (max chunk, H) scratch */
    size_t buf_rows;
    uint8_t *enc;          /* encoded payload scratch */
    size_t enc_cap;
    sw_sampler_t *sampler;
    int32_t pending;       /* the last generated id, not yet fed (-1: none) */
    int32_t *seen;         /* ids of the context (for the repetition penalty) */
    float *tok_x;          /* embeddings of a token step: (tok_rows, H), grown, then reused */
    int tok_rows;
    int nseen;
};

const char *swarm_client_error(void)
{
    return sw_err_detail();
}

static uint64_t now_ms(void)
{
    return uv_hrtime() / 1000000u;
}

static void event(swarm_client_t *c, int kind, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void event(swarm_client_t *c, int kind, const char *fmt, ...)
{
    char line[2048];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (kind == SWARM_EVENT_FAILOVER || kind == SWARM_EVENT_WARNING)
        SW_LOG_W("client", "%s", line);
    else
        SW_LOG_I("client", "%s", line);
    if (c->on_event)
        c->on_event(c->event_arg, kind, line);
}

/* ======================================================================== the loop */

static void tick_cb(uv_timer_t *t)
{
    (void)t;
}

/* Turns the loop until *flag is set or timeout_ms have passed; returns *flag. */
static int wait_for(swarm_client_t *c, const int *flag, uint64_t timeout_ms)
{
    uint64_t end = now_ms() + timeout_ms;

    while (!*flag && now_ms() < end)
        uv_run(&c->loop, UV_RUN_ONCE);
    return *flag;
}

static void sleep_ms(swarm_client_t *c, uint64_t ms)
{
    static const int never = 0;
    wait_for(c, &never, ms);
}

/* ======================================================================== the swarm's records */

typedef struct {
    swarm_client_t *c;
    int block;
} get_t;

/* An announcement is usable only if its address pins the peer that signed it (else the client
 * would talk to whoever the author pointed at, under the author's name). */
static int address_is_peer(const char *addr, const sw_peer_id_t *peer)
{
    sw_addr_t a;

    return addr && sw_addr_parse(addr, &a) == 0 && a.has_peer && sw_peer_id_eq(&a.peer, peer);
}

static void on_get(int status, const sw_dht_record_t *recs, size_t n, const sw_dht_lookup_info_t *info,
                   void *arg)
{
    get_t *g = arg;
    swarm_client_t *c = g->c;

    (void)info;
    c->gets_left--;
    if (status < 0) {
        c->gets_failed++;
        sw_free(g);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        Swarmd__ServerInfo *m;
        sw_peer_id_t peer;
        const uint8_t *digest = NULL;
        int r;
        if (recs[i].subkey_len != SW_DHT_OWNED_SUBKEY_LEN || !recs[i].signature)
            continue;
        memcpy(peer.b, recs[i].subkey + 5, SW_PEER_ID_LEN);
        m = swarmd__server_info__unpack(NULL, recs[i].value_len, recs[i].value);
        if (!m)
            continue; /* a malformed record costs its author the slot, nothing more */
        if (!address_is_peer(m->address, &peer)) {
            SW_LOG_D("client", "record of block %d: address '%s' is not its author's", g->block,
                     m->address ? m->address : "");
        } else if ((int)m->num_blocks != c->L || (int)m->hidden_size != c->H) {
            SW_LOG_D("client", "record of block %d: %u blocks, hidden %u; not this model", g->block,
                     m->num_blocks, m->hidden_size);
        } else {
            if (m->weights_digest.len == SW_ROUTE_DIGEST_LEN)
                digest = m->weights_digest.data;
            size_t idx = 0;
            r = sw_route_add(&c->table, &peer, m->address ? m->address : "",
                             m->public_name ? m->public_name : "", (int)m->start_block,
                             (int)m->end_block, m->state == SWARMD__SERVER_INFO__STATE__ONLINE,
                             m->throughput, m->inference_rps, m->cache_tokens_left, g->block,
                             digest, &idx);
            if (r == 0)
                c->table.srv[idx].max_batch_tokens = m->max_batch_tokens;
            if (r < 0)
                SW_LOG_D("client", "record of block %d ignored: %s", g->block, sw_err_detail());
        }
        swarmd__server_info__free_unpacked(m, NULL);
    }
    sw_free(g);
}

/* Reads every block's announcements into c->table (servers replaced; bans kept). */
static int read_swarm(swarm_client_t *c)
{
    char key[SW_DHT_KEY_MAX];
    int r;

    sw_route_table_clear_servers(&c->table);
    c->gets_left = 0;
    c->gets_failed = 0;
    for (int b = 0; b < c->L; b++) {
        get_t *g = sw_malloc(sizeof(*g));
        if (!g)
            return -ENOMEM;
        g->c = c;
        g->block = b;
        snprintf(key, sizeof(key), "%s.%d", c->model_name, b);
        if ((r = sw_dht_get(c->dht, key, strlen(key), on_get, g)) < 0) {
            sw_free(g);
            return sw_err(r, "cannot read the DHT: %s", sw_strerror(r));
        }
        c->gets_left++;
    }
    {
        uint64_t end = now_ms() + c->dht_timeout_ms;
        while (c->gets_left > 0 && now_ms() < end)
            uv_run(&c->loop, UV_RUN_ONCE);
    }
    if (c->gets_left > 0)
        return sw_err(-ETIMEDOUT, "reading the swarm's records timed out after %u ms; check "
                      "--initial-peers", c->dht_timeout_ms);
    if (c->gets_failed == c->L)
        return sw_err(-EHOSTUNREACH, "no DHT node answered; check --initial-peers");
    {
        int bad = -1, n = sw_route_check_digests(&c->table, &bad);
        if (n > 0)
            event(c, SWARM_EVENT_WARNING, "%d server(s) skipped: their weights for block %d differ "
                  "from the other servers' (another checkpoint or --quant)", n, bad);
    }
    return 0;
}

/* ---- round trips: an "info" call to each candidate ---- */

typedef struct {
    swarm_client_t *c;
    uint64_t gen, t0;
    sw_peer_id_t peer;
    sw_p2p_call_t *call;
    int ok;
} probe_t;

static int *probe_left_ptr(swarm_client_t *c)
{
    return &c->gets_left; /* reused: probes and gets never overlap */
}

static void probe_finish(probe_t *p, double rtt)
{
    swarm_client_t *c = p->c;

    if (p->gen == c->probe_gen) {
        for (size_t i = 0; i < c->table.n; i++)
            if (memcmp(c->table.srv[i].peer.b, p->peer.b, SW_PEER_ID_LEN) == 0) {
                if (rtt >= 0)
                    c->table.srv[i].rtt_ms = rtt;
                else
                    sw_route_ban(&c->table, &p->peer, now_ms());
            }
        (*probe_left_ptr(c))--;
    }
    sw_free(p);
}

static void probe_msg(sw_p2p_call_t *k, sw_p2p_msg_t *m, void *arg)
{
    probe_t *p = arg;
    Swarmd__ServerInfo *info = swarmd__server_info__unpack(NULL, m->body_len, m->body);

    (void)k;
    if (info) {
        p->ok = (int)info->hidden_size == p->c->H && (int)info->num_blocks == p->c->L;
        swarmd__server_info__free_unpacked(info, NULL);
    }
}

static void probe_done(sw_p2p_call_t *k, int status, void *arg)
{
    probe_t *p = arg;

    (void)k;
    probe_finish(p, status == 0 && p->ok ? (double)(uv_hrtime() - p->t0) / 1e6 : -1.0);
}

static const sw_p2p_call_cbs_t probe_cbs = { probe_msg, NULL, probe_done, NULL };

static void probe_connected(sw_p2p_conn_t *conn, int status, void *arg)
{
    probe_t *p = arg;

    if (status < 0 || p->gen != p->c->probe_gen) {
        probe_finish(p, -1.0);
        return;
    }
    p->t0 = uv_hrtime();
    if (sw_p2p_call_start(conn, "info", PROBE_TIMEOUT_MS, &probe_cbs, p, &p->call) < 0 ||
        sw_p2p_call_send(p->call, "", 0, NULL, 0, 0) < 0 || sw_p2p_call_end(p->call, 0, NULL) < 0) {
        if (p->call)
            sw_p2p_call_cancel(p->call);
        probe_finish(p, -1.0);
    }
}

/* Measures the round trip to every usable server without one (unreachable ones get banned). */
static void probe_servers(swarm_client_t *c)
{
    uint64_t now = now_ms(), end;
    int *left = probe_left_ptr(c);

    c->probe_gen++;
    *left = 0;
    for (size_t i = 0; i < c->table.n; i++) {
        sw_route_server_t *s = &c->table.srv[i];
        probe_t *p;
        if (!s->online || s->excluded || s->rtt_ms >= 0 || sw_route_banned(&c->table, &s->peer, now))
            continue;
        if (!(p = sw_calloc(1, sizeof(*p))))
            break;
        p->c = c;
        p->gen = c->probe_gen;
        p->peer = s->peer;
        (*left)++;
        if (sw_p2p_connect(c->node, s->addr, probe_connected, p) < 0) {
            (*left)--;
            sw_free(p);
            sw_route_ban(&c->table, &s->peer, now);
        }
    }
    end = now_ms() + PROBE_TIMEOUT_MS + 500;
    while (*left > 0 && now_ms() < end)
        uv_run(&c->loop, UV_RUN_ONCE);
    c->probe_gen++; /* late answers are ignored */
}

/* ======================================================================== opening */

static void load_progress(void *ctx, int block, int done, int total)
{
    swarm_client_t *c = ctx;
    char line[160];

    snprintf(line, sizeof(line), "quantized to %s: block %d (%d/%d)", c->quant_name, block, done, total);
    c->on_event(c->event_arg, SWARM_EVENT_PROGRESS, line);
}

static void on_boot(int status, uint32_t peers, void *arg)
{
    int *done = arg;
    (void)peers;
    *done = status < 0 ? -1 : 1;
}

static int open_network(swarm_client_t *c, const swarm_client_opts_t *o)
{
    sw_dht_opts_t dopt;
    uint8_t key[32];
    int r, has_key = 0, booted = 0;

    if (o->identity_path) {
        if ((r = sw_identity_load_or_create(o->identity_path, &c->id)) < 0)
            return r; /* the detail names the file and the problem */
    } else {
        sw_identity_generate(&c->id);
    }
    if (o->swarm_key_path) {
        if ((r = sw_swarm_key_load(o->swarm_key_path, key)) < 0)
            return r;
        has_key = 1;
    }
    if (o->n_initial_peers == 0)
        return sw_err(SW_EUSAGE, "no --initial-peers: give the address of a node of the swarm "
                      "(or run with --local)");
    c->peers = sw_calloc(o->n_initial_peers, sizeof(char *));
    if (!c->peers)
        return -ENOMEM;
    for (size_t i = 0; i < o->n_initial_peers; i++)
        if (!(c->peers[c->npeers++] = sw_strdup(o->initial_peers[i])))
            return -ENOMEM;
    uv_loop_init(&c->loop);
    c->have_loop = 1;
    uv_timer_init(&c->loop, &c->tick);
    uv_timer_start(&c->tick, tick_cb, 50, 50);
    r = sw_p2p_node_new(&c->loop, &c->id, has_key ? key : NULL, NULL, &c->node);
    if (r < 0)
        goto out;
    sw_dht_opts_default(&dopt);
    dopt.client_mode = 1;
    dopt.swarm_key = has_key ? key : NULL;
    if ((r = sw_dht_new(&c->loop, c->node, &c->id, &dopt, &c->dht)) < 0)
        goto out;
    event(c, SWARM_EVENT_INFO, "joining the swarm through %zu initial peer(s)", c->npeers);
    if ((r = sw_dht_bootstrap(c->dht, (const char *const *)c->peers, c->npeers, on_boot, &booted)) < 0)
        goto out;
    if (!wait_for(c, &booted, c->dht_timeout_ms)) {
        r = sw_err(-ETIMEDOUT, "no initial peer answered within %u ms; check --initial-peers",
                   c->dht_timeout_ms);
        goto out;
    }
    if (booted < 0 && sw_dht_table_peers(c->dht, NULL, 0) == 0) {
        r = sw_err(-EHOSTUNREACH, "none of the initial peers answered; check --initial-peers and "
                   "that a swarmd node runs there");
        goto out;
    }
    r = 0;
out:
    sodium_memzero(key, sizeof(key));
    return r;
}

int swarm_client_open(const swarm_client_opts_t *o, swarm_client_t **out)
{
    swarm_client_t *c;
    int r;

    *out = NULL;
    if (!o || !o->model_dir)
        return sw_err(SW_EUSAGE, "no model directory given");
    if (!(c = sw_calloc(1, sizeof(*c))))
        return -ENOMEM;
    c->ops = o->reference_kernels ? &sw_ops_ref : &sw_ops_cpu;
    c->step_timeout_ms = o->step_timeout_ms ? o->step_timeout_ms : DEFAULT_STEP_TIMEOUT_MS;
    c->dht_timeout_ms = o->dht_timeout_ms ? o->dht_timeout_ms : DEFAULT_DHT_TIMEOUT_MS;
    c->max_failures = o->max_failures ? o->max_failures : DEFAULT_MAX_FAILURES;
    c->on_event = o->on_event;
    c->event_arg = o->event_arg;
    snprintf(c->quant_name, sizeof(c->quant_name), "%s", o->quant ? o->quant : "");
    if (o->model_name) {
        if (!*o->model_name || strlen(o->model_name) >= 100) {
            r = sw_err(SW_EUSAGE, "the model name must be 1 to 99 bytes");
            goto err;
        }
        snprintf(c->model_name, sizeof(c->model_name), "%s", o->model_name);
    } else if ((r = sw_model_swarm_name(o->model_dir, c->model_name, sizeof(c->model_name))) < 0) {
        goto err;
    }
    if (o->compress) {
        if ((r = sw_codec_parse(o->compress, &c->codec.codec)) < 0)
            goto err;
    } else {
        c->codec.codec = SW_CODEC_BF16;
    }
    if (o->local) {
        sw_model_config_t mc;
        sw_load_opts_t lo = SW_LOAD_OPTS_DEFAULT;
        sw_device_t dev = { SW_DEVICE_CPU, 0 };
        if (o->quant && (r = sw_quant_parse(o->quant, &lo.quant)) < 0)
            goto err;
        if (o->int8_threshold != 0)
            lo.int8_threshold = o->int8_threshold > 0 ? o->int8_threshold : 0.0f;
        if (o->on_event && lo.quant != SW_QUANT_AUTO && lo.quant != SW_QUANT_NONE) {
            lo.progress = load_progress;
            lo.progress_ctx = c;
        }
        if (o->device && (r = sw_device_parse(o->device, &dev)) < 0)
            goto err;
        if ((r = sw_model_config_load(o->model_dir, &mc)) < 0)
            goto err;
        c->max_length = o->max_length > 0 ? o->max_length : DEFAULT_MAX_LENGTH;
        if ((r = sw_local_open_on(o->model_dir, 1, c->max_length, &lo, &dev, &c->local)) < 0)
            goto err;
        c->cfg = sw_local_config(c->local);
        c->head = sw_local_head(c->local);
    } else {
        if ((r = sw_model_open(o->model_dir, &c->model)) < 0 || (r = sw_head_load(c->model, &c->head)) < 0)
            goto err;
        c->cfg = sw_model_config(c->model);
        c->max_length = o->max_length > 0 ? o->max_length : DEFAULT_MAX_LENGTH;
    }
    c->H = c->cfg->hidden_size;
    c->V = c->cfg->vocab_size;
    c->L = c->cfg->num_layers;
    sw_route_table_init(&c->table, c->L);
    c->rng = uv_hrtime() ^ ((uint64_t)(uintptr_t)c << 16);
    if (!o->local && (r = open_network(c, o)) < 0)
        goto err;
    *out = c;
    return 0;
err:
    swarm_client_close(c);
    return r;
}

static void closed_cb(void *arg)
{
    int *flag = arg;
    *flag = 1;
}

void swarm_client_close(swarm_client_t *c)
{
    if (!c)
        return;
    if (c->have_loop) {
        int node_done = 0, dht_done = 0;
        if (c->node) {
            sw_p2p_node_close(c->node, closed_cb, &node_done);
            while (!node_done)
                uv_run(&c->loop, UV_RUN_ONCE);
        }
        if (c->dht) {
            sw_dht_close(c->dht, closed_cb, &dht_done);
            while (!dht_done)
                uv_run(&c->loop, UV_RUN_ONCE);
        }
        uv_close((uv_handle_t *)&c->tick, NULL);
        uv_run(&c->loop, UV_RUN_DEFAULT);
        uv_loop_close(&c->loop);
    }
    for (size_t i = 0; i < c->npeers; i++)
        sw_free(c->peers[i]);
    sw_free(c->peers);
    sw_route_table_free(&c->table);
    sw_identity_wipe(&c->id);
    if (c->local)
        sw_local_close(c->local); /* owns the head */
    else
        sw_head_free(c->head);
    sw_model_close(c->model);
    sw_free(c);
}

int swarm_client_hidden_size(const swarm_client_t *c) { return c->H; }
int swarm_client_vocab_size(const swarm_client_t *c) { return c->V; }
int swarm_client_num_blocks(const swarm_client_t *c) { return c->L; }
const char *swarm_client_model_name(const swarm_client_t *c) { return c->model_name; }

/* ======================================================================== hops */

static void hop_clear_reply(hop_t *h)
{
    sw_free(h->payload);
    h->payload = NULL;
    h->blen = h->plen = 0;
    h->got = 0;
}

static void hop_msg(sw_p2p_call_t *k, sw_p2p_msg_t *m, void *arg)
{
    hop_t *h = arg;

    (void)k;
    if (h->got || m->body_len > sizeof(h->body)) { /* a second reply, or a huge body: a protocol */
        h->got += 2;                                  /* fault, which the step reports */
        return;
    }
    memcpy(h->body, m->body, m->body_len);
    h->blen = m->body_len;
    h->plen = m->payload_len;
    h->payload = sw_p2p_msg_take_payload(m);
    h->got = 1;
}

static void hop_end(sw_p2p_call_t *k, int status, const char *error, void *arg)
{
    hop_t *h = arg;

    h->ended = 1;
    h->end_status = status;
    snprintf(h->error, sizeof(h->error), "%s", error ? error : "");
    sw_p2p_call_end(k, 0, NULL); /* the server ended its half: end ours so the call completes */
}

static void hop_done(sw_p2p_call_t *k, int status, void *arg)
{
    hop_t *h = arg;

    (void)k;
    h->done = 1;
    h->done_status = status;
    h->call = NULL;
}

static const sw_p2p_call_cbs_t hop_cbs = { hop_msg, hop_end, hop_done, NULL };

static void hop_free(hop_t *h)
{
    if (!h)
        return;
    if (h->call)
        sw_p2p_call_cancel(h->call); /* no callback follows */
    hop_clear_reply(h);
    sw_free(h->hist);
    sw_free(h);
}

static hop_t *hop_new(swarm_session_t *s, const sw_route_server_t *srv, int start, int end)
{
    hop_t *h = sw_calloc(1, sizeof(*h));

    if (!h)
        return NULL;
    h->s = s;
    h->start = start;
    h->end = end;
    if (srv) {
        h->peer = srv->peer;
        snprintf(h->addr, sizeof(h->addr), "%s", srv->addr);
        snprintf(h->name, sizeof(h->name), "%s", srv->name);
        h->rtt_ms = srv->rtt_ms;
        h->max_batch = srv->max_batch_tokens > 0 && srv->max_batch_tokens < REPLAY_CHUNK
                           ? (int)srv->max_batch_tokens : REPLAY_CHUNK;
    } else {
        h->local = 1;
        h->max_batch = REPLAY_CHUNK;
    }
    return h;
}

static void hop_describe(const hop_t *h, char *buf, size_t cap)
{
    char id[SW_PEER_ID_SHORT_MAX];

    if (h->local) {
        snprintf(buf, cap, "%d:%d in this process", h->start, h->end);
        return;
    }
    sw_peer_id_short(&h->peer, id);
    snprintf(buf, cap, "%d:%d via %s%s%s%s %s", h->start, h->end, id, h->name[0] ? " (" : "",
             h->name, h->name[0] ? ")" : "", strrchr(h->addr, '@') ? strrchr(h->addr, '@') + 1 : h->addr);
    if (h->rtt_ms >= 0)
        snprintf(buf + strlen(buf), cap - strlen(buf), " %.1f ms", h->rtt_ms);
}

typedef struct {
    int done, status;
    sw_p2p_conn_t *conn;
} connect_wait_t;

static void hop_connected(sw_p2p_conn_t *conn, int status, void *arg)
{
    connect_wait_t *w = arg;

    w->conn = conn;
    w->status = status;
    w->done = 1;
}

/* Opens the hop's inference call (connecting first). */
static int hop_open(hop_t *h)
{
    swarm_client_t *c = h->s->c;
    connect_wait_t *w = sw_calloc(1, sizeof(*w));
    int r;

    if (!w)
        return -ENOMEM;
    if ((r = sw_p2p_connect(c->node, h->addr, hop_connected, w)) < 0) {
        sw_free(w);
        return sw_err(r, "cannot connect to %s: %s", h->addr, sw_strerror(r));
    }
    /* the callback always comes (on close at the latest), so w lives until then */
    while (!w->done)
        uv_run(&c->loop, UV_RUN_ONCE);
    if (w->status < 0) {
        r = sw_err(w->status, "cannot connect to %s: %s", h->addr, sw_strerror(w->status));
        sw_free(w);
        return r;
    }
    r = sw_p2p_call_start(w->conn, "inference", 0, &hop_cbs, h, &h->call);
    sw_free(w);
    if (r < 0)
        return sw_err(r, "cannot open a session on %s: %s", h->addr, sw_strerror(r));
    h->opened = 0;
    h->steps = 0;
    h->ended = h->done = 0;
    return 0;
}

static int hist_append(hop_t *h, const float *x, int T, int H)
{
    size_t need = h->hist_len + (size_t)T;

    if (need > h->hist_cap) {
        size_t cap = h->hist_cap ? h->hist_cap : 64;
        float *p;
        while (cap < need)
            cap *= 2;
        if (!(p = sw_realloc(h->hist, cap * (size_t)H * sizeof(float))))
            return -ENOMEM;
        h->hist = p;
        h->hist_cap = cap;
    }
    memcpy(h->hist + h->hist_len * (size_t)H, x, (size_t)T * H * sizeof(float));
    h->hist_len = need;
    return 0;
}

/* Makes sure the session's scratch holds T rows. */
static int session_reserve(swarm_session_t *s, int T)
{
    swarm_client_t *c = s->c;
    uint64_t cap;

    if ((size_t)T <= s->buf_rows)
        return 0;
    sw_free(s->buf);
    sw_free(s->out);
    sw_free(s->enc);
    s->buf_rows = 0;
    s->buf = sw_malloc((size_t)T * c->H * sizeof(float));
    s->out = sw_malloc((size_t)T * c->H * sizeof(float));
    sw_codec_encoded_bound(&c->codec, (uint64_t)T * c->H, &cap);
    s->enc_cap = (size_t)cap;
    s->enc = sw_malloc(s->enc_cap ? s->enc_cap : 1);
    if (!s->buf || !s->out || !s->enc)
        return -ENOMEM;
    s->buf_rows = (size_t)T;
    return 0;
}

/*
 * One step through hop h: x (T, H) in, out (T, H) out (out may equal x for local hops only).
 * On success x is added to the hop's history. On failure the hop's call is gone and the error
 * says what the server did.
 */
static int hop_step(hop_t *h, const float *x, int T, float *out)
{
    swarm_session_t *s = h->s;
    swarm_client_t *c = s->c;
    Swarmd__InferenceRequest q = SWARMD__INFERENCE_REQUEST__INIT;
    Swarmd__InferenceResponse *m = NULL;
    sw_tensor_header_t th;
    uint8_t hb[SW_CODEC_MAX_HEADER], body[256];
    size_t hl, bl;
    int64_t shape[3] = { 1, T, c->H };
    uint64_t end;
    int r;

    if (h->local) {
        if (out != x)
            memcpy(out, x, (size_t)T * c->H * sizeof(float));
        return sw_span_forward(sw_local_span(c->local), sw_local_kv(c->local), c->ops, out, 1, T);
    }
    if (!h->call && (r = hop_open(h)) < 0)
        return r;
    if (!h->opened) {
        q.start_block = (uint32_t)h->start;
        q.end_block = (uint32_t)h->end;
        q.max_length = (uint32_t)s->max_length;
        q.batch = 1;
    }
    if ((r = sw_codec_encode(NULL, &c->codec, x, 3, shape, &th, s->enc, s->enc_cap)) < 0 ||
        (r = sw_codec_header_pack(&th, hb, sizeof(hb), &hl)) < 0)
        return r;
    q.hidden.data = hb;
    q.hidden.len = hl;
    q.output_codec = (Swarmd__TensorHeader__Codec)c->codec.codec;
    q.step_id = ++h->steps;
    bl = swarmd__inference_request__pack(&q, body);
    hop_clear_reply(h);
    if ((r = sw_p2p_call_send(h->call, body, bl, s->enc, (size_t)th.encoded_len, 0)) < 0)
        goto fail;
    h->opened = 1;
    end = now_ms() + c->step_timeout_ms;
    while (!h->got && !h->done && !h->ended && now_ms() < end)
        uv_run(&c->loop, UV_RUN_ONCE);
    if (!h->got) {
        if (h->ended && h->end_status < 0)
            r = sw_err(h->end_status, "%s", h->error[0] ? h->error : sw_strerror(h->end_status));
        else if (h->done)
            r = sw_err(h->done_status < 0 ? h->done_status : -ECONNRESET, "the session ended: %s",
                       sw_strerror(h->done_status < 0 ? h->done_status : -ECONNRESET));
        else
            r = sw_err(-ETIMEDOUT, "no answer within %u ms", c->step_timeout_ms);
        goto fail;
    }
    if (h->got > 1) {
        r = sw_err(SW_EFORMAT, "the server sent more than one reply to a step, or one of over %zu bytes",
                   sizeof(h->body));
        goto fail;
    }
    if (!(m = swarmd__inference_response__unpack(NULL, h->blen, h->body))) {
        r = sw_err(SW_EFORMAT, "malformed reply");
        goto fail;
    }
    if (m->step_id != h->steps || m->position != h->hist_len + (size_t)T) {
        r = sw_err(SW_EFORMAT, "reply for step %llu at position %u, expected step %llu at %zu",
                   (unsigned long long)m->step_id, m->position, (unsigned long long)h->steps,
                   h->hist_len + (size_t)T);
        goto fail;
    }
    if ((r = sw_codec_header_unpack(m->hidden.data, m->hidden.len, &th)) < 0)
        goto fail;
    if (th.ndim != 3 || th.shape[0] != 1 || th.shape[1] != T || th.shape[2] != c->H) {
        r = sw_err(SW_EFORMAT, "reply tensor is not (1, %d, %d)", T, c->H);
        goto fail;
    }
    if ((r = sw_codec_decode(NULL, &th, h->payload, h->plen, out, (size_t)T * c->H)) < 0)
        goto fail;
    for (size_t i = 0; i < (size_t)T * c->H; i++)
        if (!isfinite(out[i])) {
            r = sw_err(SW_EFORMAT, "the server returned a non-finite hidden state");
            goto fail;
        }
    swarmd__inference_response__free_unpacked(m, NULL);
    hop_clear_reply(h);
    if ((r = hist_append(h, x, T, c->H)) < 0)
        return r;
    return 0;
fail:
    if (m)
        swarmd__inference_response__free_unpacked(m, NULL);
    hop_clear_reply(h);
    if (h->call) {
        sw_p2p_call_cancel(h->call);
        h->call = NULL;
    }
    return r;
}

/* ======================================================================== sessions */

/* Wait before the k-th (1-based) attempt to find a replacement: 250 ms doubling, at most 4 s. */
static uint64_t backoff_ms(unsigned k)
{
    uint64_t ms = 250u << (k > 5 ? 4 : k - 1);
    return ms > 4000 ? 4000 : ms;
}

static void report_route(swarm_session_t *s, const char *what)
{
    char line[1800], part[400];
    size_t n = 0;

    line[0] = '\0';
    for (int i = 0; i < s->nhops && n + 2 < sizeof(line); i++) {
        hop_describe(s->hops[i], part, sizeof(part));
        n += (size_t)snprintf(line + n, sizeof(line) - n, "%s%s", i ? ", " : "", part);
    }
    event(s->c, SWARM_EVENT_ROUTE, "%s%s", what, line);
}

/* Chooses a chain over [a, b) for session s (reading the swarm when refresh is set) and writes
 * new hops (without history) to hops[]; returns their count. */
static int plan(swarm_session_t *s, int a, int b, int refresh, hop_t **hops, int cap)
{
    swarm_client_t *c = s->c;
    sw_route_hop_t rh[MAX_HOPS];
    int n, r;

    if (refresh && (r = read_swarm(c)) < 0)
        return r;
    probe_servers(c);
    n = sw_route_chain(&c->table, a, b, (uint64_t)s->max_length, now_ms(), rh, cap < MAX_HOPS ? cap : MAX_HOPS);
    if (n < 0)
        return n;
    for (int i = 0; i < n; i++)
        if (!(hops[i] = hop_new(s, &c->table.srv[rh[i].server], rh[i].start, rh[i].end))) {
            while (i-- > 0)
                hop_free(hops[i]);
            return -ENOMEM;
        }
    return n;
}

int swarm_session_open(swarm_client_t *c, int max_length, swarm_session_t **out)
{
    swarm_session_t *s;
    int r;

    *out = NULL;
    if (max_length <= 0)
        max_length = c->max_length;
    if (c->local && (c->local_busy || max_length > c->max_length))
        return sw_err(SW_ESTATE, c->local_busy ? "local mode runs one session at a time"
                      : "a local session holds at most %d positions", c->max_length);
    if (!(s = sw_calloc(1, sizeof(*s))))
        return -ENOMEM;
    s->c = c;
    s->max_length = max_length;
    s->pending = -1;
    if (!(s->hops = sw_calloc(MAX_HOPS, sizeof(hop_t *))) ||
        !(s->seen = sw_malloc((size_t)max_length * sizeof(int32_t)))) {
        r = -ENOMEM;
        goto err;
    }
    if (c->local) {
        if (!(s->hops[0] = hop_new(s, NULL, 0, c->L))) {
            r = -ENOMEM;
            goto err;
        }
        s->nhops = 1;
        sw_kv_reset(sw_local_kv(c->local));
        c->local_busy = 1;
    } else {
        event(c, SWARM_EVENT_INFO, "reading the swarm's announcements of %s (%d blocks)", c->model_name, c->L);
        for (unsigned k = 1;; k++) {
            if ((r = plan(s, 0, c->L, 1, s->hops, MAX_HOPS)) >= 0)
                break;
            if (r == -ENOMEM || k >= c->max_failures) {
                char why[512];
                snprintf(why, sizeof(why), "%s", sw_err_detail());
                r = sw_err(r, "%s (after %u attempts); check that servers announce '%s' with "
                           "'swarmd status --model-name %s'", why, k, c->model_name, c->model_name);
                goto err;
            }
            event(c, SWARM_EVENT_FAILOVER, "no chain yet (%s); retrying in %llu ms", sw_err_detail(),
                  (unsigned long long)backoff_ms(k));
            sleep_ms(c, backoff_ms(k));
        }
        s->nhops = r;
    }
    report_route(s, "route: ");
    *out = s;
    return 0;
err:
    swarm_session_close(s);
    return r;
}

void swarm_session_close(swarm_session_t *s)
{
    swarm_client_t *c;

    if (!s)
        return;
    c = s->c;
    if (c->local && s->nhops > 0 && s->hops[0]->local)
        c->local_busy = 0;
    /* end our half of every session; the servers end theirs and the calls complete */
    for (int i = 0; i < s->nhops; i++)
        if (s->hops[i]->call)
            sw_p2p_call_end(s->hops[i]->call, 0, NULL);
    if (c->have_loop) {
        uint64_t end = now_ms() + CLOSE_WAIT_MS;
        for (int i = 0; i < s->nhops; i++)
            while (s->hops[i]->call && now_ms() < end)
                uv_run(&c->loop, UV_RUN_ONCE);
    }
    for (int i = 0; i < s->nhops; i++)
        hop_free(s->hops[i]);
    sw_free(s->hops);
    sw_free(s->buf);
    sw_free(s->out);
    sw_free(s->enc);
    sw_free(s->seen);
    sw_free(s->tok_x);
    sw_sampler_free(s->sampler);
    sw_free(s);
}

int swarm_session_position(const swarm_session_t *s)
{
    return s->pos;
}

/*
 * Replaces hop k (which failed) by a chain over its blocks from the servers not banned, replays its
 * history through the new chain and puts the new hops in its place. On failure the session is
 * unchanged (hop k stays, to be retried) and the error says why.
 */
static int replace_hop(swarm_session_t *s, int k)
{
    swarm_client_t *c = s->c;
    hop_t *old = s->hops[k], *nh[MAX_HOPS];
    size_t len = old->hist_len, H = (size_t)c->H;
    float *in = NULL, *out = NULL;
    int n, r = 0, i;

    if ((n = plan(s, old->start, old->end, 1, nh, MAX_HOPS - s->nhops + 1)) < 0)
        return n;
    {
        char line[1800], part[400];
        size_t off = 0;
        line[0] = '\0';
        for (i = 0; i < n; i++) {
            hop_describe(nh[i], part, sizeof(part));
            off += (size_t)snprintf(line + off, sizeof(line) - off, "%s%s", i ? ", " : "", part);
        }
        event(c, SWARM_EVENT_FAILOVER, "blocks %d:%d now go %s; replaying %zu position(s)",
              old->start, old->end, line, len);
    }
    if (len > 0) {
        size_t rows = len < REPLAY_CHUNK ? len : REPLAY_CHUNK;
        if (!(in = sw_malloc(len * H * sizeof(float))) || !(out = sw_malloc(rows * H * sizeof(float)))) {
            r = -ENOMEM;
            goto out;
        }
        memcpy(in, old->hist, len * H * sizeof(float));
        if ((r = session_reserve(s, (int)rows)) < 0)
            goto out;
        for (i = 0; i < n; i++) {
            size_t step = rows < (size_t)nh[i]->max_batch ? rows : (size_t)nh[i]->max_batch;
            for (size_t p = 0; p < len; p += step) {
                int T = (int)(len - p < step ? len - p : step);
                if ((r = hop_step(nh[i], in + p * H, T, out)) < 0) {
                    char d[400];
                    hop_describe(nh[i], d, sizeof(d));
                    event(c, SWARM_EVENT_FAILOVER, "replaying to %s failed: %s", d, sw_err_detail());
                    sw_route_ban(&c->table, &nh[i]->peer, now_ms());
                    goto out;
                }
                memcpy(in + p * H, out, (size_t)T * H * sizeof(float)); /* the next hop's input */
            }
        }
    }
    /* splice: hops[k] -> nh[0..n) */
    memmove(&s->hops[k + n], &s->hops[k + 1], (size_t)(s->nhops - k - 1) * sizeof(hop_t *));
    memcpy(&s->hops[k], nh, (size_t)n * sizeof(hop_t *));
    s->nhops += n - 1;
    hop_free(old);
    n = 0;
    report_route(s, "route now: ");
out:
    for (i = 0; i < n; i++)
        hop_free(nh[i]);
    sw_free(in);
    sw_free(out);
    return r;
}

static int step_chunk(swarm_session_t *s, float *x, int T)
{
    swarm_client_t *c = s->c;
    unsigned failures = 0;
    int r;

    if ((r = session_reserve(s, T)) < 0)
        return r;
    for (int k = 0; k < s->nhops; k++) {
        for (;;) {
            hop_t *h = s->hops[k];
            char d[400];
            if ((r = hop_step(h, x, T, s->out)) == 0) {
                memcpy(x, s->out, (size_t)T * c->H * sizeof(float));
                if (!h->local)
                    sw_route_unban(&c->table, &h->peer);
                break;
            }
            if (h->local)
                return r;
            hop_describe(h, d, sizeof(d));
            event(c, SWARM_EVENT_FAILOVER, "server %s failed at position %d: %s", d, s->pos,
                  sw_err_detail());
            sw_route_ban(&c->table, &h->peer, now_ms());
            /* find a replacement: every failed server or attempt counts against the budget */
            for (;;) {
                if (++failures > c->max_failures)
                    return sw_err(-EHOSTUNREACH, "blocks %d:%d: gave up after %u failed servers; "
                                  "no server could take them (start one with 'swarmd serve "
                                  "--serve-layers %d:%d', or retry later)", h->start, h->end,
                                  c->max_failures, h->start, h->end);
                if ((r = replace_hop(s, k)) == 0)
                    break;
                if (r == -ENOMEM)
                    return r;
                {
                    uint64_t backoff = backoff_ms(failures);
                    event(c, SWARM_EVENT_FAILOVER, "no replacement for blocks %d:%d yet (%s); "
                          "retrying in %llu ms", h->start, h->end, sw_err_detail(),
                          (unsigned long long)backoff);
                    sleep_ms(c, backoff);
                }
            }
        }
    }
    s->pos += T;
    return 0;
}

int swarm_session_step_hidden(swarm_session_t *s, float *x, int T)
{
    int r;

    if (T < 1)
        return sw_err(-EINVAL, "a step needs at least one position");
    if (T > s->max_length - s->pos)
        return sw_err(SW_ELIMIT, "%d more positions exceed the session's %d (%d used); open the "
                      "session with a larger max_length", T, s->max_length, s->pos);
    /* long prompts go in chunks: each server takes at most its max_batch_tokens per step */
    for (int p = 0, n; p < T; p += n) {
        n = T - p;
        for (int k = 0; k < s->nhops; k++)
            if (n > s->hops[k]->max_batch)
                n = s->hops[k]->max_batch;
        if ((r = step_chunk(s, x + (size_t)p * s->c->H, n)) < 0)
            return r;
    }
    return 0;
}

int swarm_session_step_tokens(swarm_session_t *s, const int32_t *ids, int T, float *logits)
{
    swarm_client_t *c = s->c;
    float *x;
    int r;

    if (T < 1)
        return sw_err(-EINVAL, "a step needs at least one token");
    if (T > s->max_length - s->pos)
        return sw_err(SW_ELIMIT, "%d more tokens exceed the session's %d positions (%d used); "
                      "raise --max-length", T, s->max_length, s->pos);
    if (T > s->tok_rows) { /* the prompt's size once; a decode step (T = 1) then allocates nothing */
        sw_free(s->tok_x);
        s->tok_rows = 0;
        if (!(s->tok_x = sw_malloc((size_t)T * c->H * sizeof(float))))
            return -ENOMEM;
        s->tok_rows = T;
    }
    x = s->tok_x;
    if ((r = sw_head_embed(c->head, c->ops, ids, T, x)) < 0 || (r = swarm_session_step_hidden(s, x, T)) < 0)
        return r;
    for (int i = 0; i < T; i++)
        s->seen[s->nseen++] = ids[i];
    if (logits)
        r = sw_head_logits(c->head, c->ops, x + (size_t)(T - 1) * c->H, 1, logits);
    return r;
}

int swarm_session_generate(swarm_session_t *s, const int32_t *prompt, int T, int max_new,
                           const swarm_sampling_t *sp, const int32_t *eos_ids, int n_eos,
                           int (*on_token)(void *arg, int32_t id), void *arg, int *n_out)
{
    swarm_client_t *c = s->c;
    int32_t *ids = NULL, id;
    float *logits = NULL;
    int n = 0, r, feed;

    if (n_out)
        *n_out = 0;
    if (T < 0 || max_new < 0 || (T == 0 && s->pending < 0 && s->pos == 0))
        return sw_err(-EINVAL, "nothing to generate from: give a prompt");
    if (!s->sampler || sp) {
        sw_sampler_params_t so;
        sw_sampler_params_default(&so);
        so.greedy = 1;
        if (sp && sp->temperature > 0) {
            so.greedy = 0;
            so.temperature = sp->temperature;
            so.top_k = sp->top_k;
            so.top_p = sp->top_p > 0 ? sp->top_p : 1.0f;
        }
        if (sp) {
            so.repetition_penalty = sp->repetition_penalty > 0 ? sp->repetition_penalty : 1.0f;
            so.seed = sp->seed;
        }
        sw_sampler_free(s->sampler);
        s->sampler = NULL;
        if ((r = sw_sampler_new(&so, c->V, &s->sampler)) < 0)
            return r;
        /* the conversation so far counts for the repetition penalty */
        if ((r = sw_sampler_accept(s->sampler, s->seen, (size_t)s->nseen)) < 0 ||
            (s->pending >= 0 && (r = sw_sampler_accept(s->sampler, &s->pending, 1)) < 0))
            return r;
    }
    /* what to feed: the id generated last time (not fed yet), then the prompt */
    feed = T + (s->pending >= 0);
    if (!(ids = sw_malloc((size_t)(feed ? feed : 1) * sizeof(int32_t))) ||
        !(logits = sw_malloc((size_t)c->V * sizeof(float)))) {
        r = -ENOMEM;
        goto out;
    }
    if (s->pending >= 0)
        ids[0] = s->pending;
    if (T > 0)
        memcpy(ids + (s->pending >= 0), prompt, (size_t)T * sizeof(int32_t));
    if (feed > 0) {
        if ((r = swarm_session_step_tokens(s, ids, feed, logits)) < 0 ||
            (r = sw_sampler_accept(s->sampler, prompt, (size_t)T)) < 0)
            goto out;
        s->pending = -1;
    } else {
        r = sw_err(-EINVAL, "nothing to generate from");
        goto out;
    }
    for (;;) {
        int stop = 0;
        if (n >= max_new)
            break;
        if ((r = sw_sampler_sample(s->sampler, logits, c->V)) < 0)
            goto out;
        id = r;
        n++;
        s->pending = id;
        if (on_token && on_token(arg, id))
            stop = 1;
        if (id == c->cfg->eos_token_id)
            stop = 1;
        for (int i = 0; i < n_eos; i++)
            if (id == eos_ids[i])
                stop = 1;
        if (stop || n >= max_new)
            break;
        if (s->pos + 1 > s->max_length) {
            r = sw_err(SW_ELIMIT, "the session's %d positions are full; raise --max-length",
                       s->max_length);
            goto out;
        }
        if ((r = swarm_session_step_tokens(s, &id, 1, logits)) < 0)
            goto out;
        s->pending = -1;
    }
    r = 0;
out:
    if (n_out)
        *n_out = n;
    sw_free(ids);
    sw_free(logits);
    return r;
}

/* ======================================================================== forward and backward */

/* A unary call and what came back. */
typedef struct {
    int done, status, got;
    char error[256];
    uint8_t *body, *payload;
    size_t blen, plen;
} unary_t;

static void unary_msg(sw_p2p_call_t *k, sw_p2p_msg_t *m, void *arg)
{
    unary_t *u = arg;

    (void)k;
    if (u->got++)
        return;
    if ((u->body = sw_malloc(m->body_len ? m->body_len : 1))) {
        memcpy(u->body, m->body, m->body_len);
        u->blen = m->body_len;
    }
    u->plen = m->payload_len;
    u->payload = sw_p2p_msg_take_payload(m);
}

static void unary_end(sw_p2p_call_t *k, int status, const char *error, void *arg)
{
    unary_t *u = arg;

    u->status = status;
    snprintf(u->error, sizeof(u->error), "%s", error ? error : "");
    sw_p2p_call_end(k, 0, NULL);
}

static void unary_done(sw_p2p_call_t *k, int status, void *arg)
{
    unary_t *u = arg;

    (void)k;
    if (status < 0 && u->status == 0)
        u->status = status;
    u->done = 1;
}

static const sw_p2p_call_cbs_t unary_cbs = { unary_msg, unary_end, unary_done, NULL };

static void unary_free(unary_t *u)
{
    sw_free(u->body);
    sw_free(u->payload);
    memset(u, 0, sizeof(*u));
}

/* Calls method on the server at addr with one message; on success u holds the one reply. */
static int unary_call(swarm_client_t *c, const char *addr, const char *method, const uint8_t *body,
                      size_t blen, const uint8_t *payload, size_t plen, unary_t *u)
{
    connect_wait_t *w = sw_calloc(1, sizeof(*w));
    sw_p2p_call_t *call = NULL;
    uint64_t end;
    int r;

    memset(u, 0, sizeof(*u));
    if (!w)
        return -ENOMEM;
    if ((r = sw_p2p_connect(c->node, addr, hop_connected, w)) < 0) {
        sw_free(w);
        return sw_err(r, "cannot connect to %s: %s", addr, sw_strerror(r));
    }
    while (!w->done)
        uv_run(&c->loop, UV_RUN_ONCE);
    if (w->status < 0) {
        r = sw_err(w->status, "cannot connect to %s: %s", addr, sw_strerror(w->status));
        sw_free(w);
        return r;
    }
    r = sw_p2p_call_start(w->conn, method, c->step_timeout_ms, &unary_cbs, u, &call);
    sw_free(w);
    if (r < 0)
        return sw_err(r, "cannot call %s: %s", addr, sw_strerror(r));
    if ((r = sw_p2p_call_send(call, body, blen, (void *)payload, plen, 0)) < 0 ||
        (r = sw_p2p_call_end(call, 0, NULL)) < 0) {
        sw_p2p_call_cancel(call);
        return sw_err(r, "cannot send to %s: %s", addr, sw_strerror(r));
    }
    /* the deadline travels with the call: it completes by then (plus a margin for the network) */
    end = now_ms() + c->step_timeout_ms + 5000;
    while (!u->done && now_ms() < end)
        uv_run(&c->loop, UV_RUN_ONCE);
    if (!u->done) {
        sw_p2p_call_cancel(call);
        return sw_err(-ETIMEDOUT, "no answer within %u ms", c->step_timeout_ms);
    }
    if (u->status < 0)
        return sw_err(u->status, "%s", u->error[0] ? u->error : sw_strerror(u->status));
    if (u->got != 1)
        return sw_err(SW_EFORMAT, "%d replies to a unary call", u->got);
    return 0;
}

/* The table for forward/backward routing: read again when older than this (or after a failure). */
#define TABLE_MAX_AGE_MS 30000u

static int fresh_table(swarm_client_t *c, int force)
{
    int r;

    if (!force && c->table_ms && now_ms() - c->table_ms < TABLE_MAX_AGE_MS)
        return 0;
    if ((r = read_swarm(c)) < 0)
        return r;
    c->table_ms = now_ms();
    return 0;
}

/* Encodes x (B, T, H) with the client's codec into a new buffer; the header goes to hb. */
static int encode_new(swarm_client_t *c, const float *x, int B, int T, uint8_t *hb, size_t *hl,
                      uint8_t **payload, size_t *plen)
{
    sw_tensor_header_t th;
    int64_t shape[3] = { B, T, c->H };
    uint64_t cap;
    int r;

    sw_codec_encoded_bound(&c->codec, (uint64_t)B * T * c->H, &cap);
    if (!(*payload = sw_malloc(cap ? (size_t)cap : 1)))
        return -ENOMEM;
    if ((r = sw_codec_encode(NULL, &c->codec, x, 3, shape, &th, *payload, (size_t)cap)) < 0 ||
        (r = sw_codec_header_pack(&th, hb, SW_CODEC_MAX_HEADER, hl)) < 0) {
        sw_free(*payload);
        *payload = NULL;
        return r;
    }
    *plen = (size_t)th.encoded_len;
    return 0;
}

/* Decodes a reply tensor that must be (B, T, H) into out. */
static int decode_reply(swarm_client_t *c, const ProtobufCBinaryData *h, const unary_t *u, int B,
                        int T, float *out)
{
    sw_tensor_header_t th;
    size_t n = (size_t)B * T * c->H;
    int r;

    if ((r = sw_codec_header_unpack(h->data, h->len, &th)) < 0)
        return r;
    if (th.ndim != 3 || th.shape[0] != B || th.shape[1] != T || th.shape[2] != c->H)
        return sw_err(SW_EFORMAT, "reply tensor is not (%d, %d, %d)", B, T, c->H);
    if ((r = sw_codec_decode(NULL, &th, u->payload, u->plen, out, n)) < 0)
        return r;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(out[i]))
            return sw_err(SW_EFORMAT, "the server returned a non-finite value");
    return 0;
}

/* One "forward" call on server srv for blocks [a, b): x in place. */
static int forward_call(swarm_client_t *c, const sw_route_server_t *srv, int a, int b, float *x,
                        int B, int T)
{
    Swarmd__ForwardRequest q = SWARMD__FORWARD_REQUEST__INIT;
    Swarmd__ForwardResponse *m;
    uint8_t hb[SW_CODEC_MAX_HEADER], body[SW_CODEC_MAX_HEADER + 64], *p = NULL;
    size_t hl, plen, bl;
    unary_t u;
    int r;

    if ((r = encode_new(c, x, B, T, hb, &hl, &p, &plen)) < 0)
        return r;
    q.start_block = (uint32_t)a;
    q.end_block = (uint32_t)b;
    q.hidden.data = hb;
    q.hidden.len = hl;
    q.output_codec = (Swarmd__TensorHeader__Codec)c->codec.codec;
    bl = swarmd__forward_request__pack(&q, body);
    r = unary_call(c, srv->addr, "forward", body, bl, p, plen, &u);
    sw_free(p);
    if (r == 0) {
        if (!(m = swarmd__forward_response__unpack(NULL, u.blen, u.body)))
            r = sw_err(SW_EFORMAT, "malformed forward reply");
        else {
            r = decode_reply(c, &m->hidden, &u, B, T, x);
            swarmd__forward_response__free_unpacked(m, NULL);
        }
    }
    unary_free(&u);
    return r;
}

/* One "backward" call on srv for blocks [a, b): inputs x, output gradient g -> input gradient in g. */
static int backward_call(swarm_client_t *c, const sw_route_server_t *srv, int a, int b,
                         const float *x, float *g, int B, int T)
{
    Swarmd__BackwardRequest q = SWARMD__BACKWARD_REQUEST__INIT;
    Swarmd__BackwardResponse *m;
    uint8_t hx[SW_CODEC_MAX_HEADER], hg[SW_CODEC_MAX_HEADER], body[2 * SW_CODEC_MAX_HEADER + 64];
    uint8_t *px = NULL, *pg = NULL, *both = NULL;
    size_t lx, lg, nx, ng, bl;
    unary_t u;
    int r;

    memset(&u, 0, sizeof(u));
    if ((r = encode_new(c, x, B, T, hx, &lx, &px, &nx)) < 0 || (r = encode_new(c, g, B, T, hg, &lg, &pg, &ng)) < 0)
        goto out;
    if (!(both = sw_malloc(nx + ng ? nx + ng : 1))) {
        r = -ENOMEM;
        goto out;
    }
    memcpy(both, px, nx);
    memcpy(both + nx, pg, ng);
    q.start_block = (uint32_t)a;
    q.end_block = (uint32_t)b;
    q.hidden.data = hx;
    q.hidden.len = lx;
    q.grad.data = hg;
    q.grad.len = lg;
    q.output_codec = (Swarmd__TensorHeader__Codec)c->codec.codec;
    bl = swarmd__backward_request__pack(&q, body);
    if ((r = unary_call(c, srv->addr, "backward", body, bl, both, nx + ng, &u)) < 0)
        goto out;
    if (!(m = swarmd__backward_response__unpack(NULL, u.blen, u.body))) {
        r = sw_err(SW_EFORMAT, "malformed backward reply");
        goto out;
    }
    r = decode_reply(c, &m->grad, &u, B, T, g);
    swarmd__backward_response__free_unpacked(m, NULL);
out:
    unary_free(&u);
    sw_free(px);
    sw_free(pg);
    sw_free(both);
    return r;
}

/* Bans the server of a failed call and reports it. */
static void call_failed(swarm_client_t *c, const sw_route_server_t *srv, const char *what, int a, int b)
{
    char id[SW_PEER_ID_SHORT_MAX];

    sw_peer_id_short(&srv->peer, id);
    event(c, SWARM_EVENT_FAILOVER, "%s of blocks %d:%d on %s failed: %s", what, a, b, id, sw_err_detail());
    sw_route_ban(&c->table, &srv->peer, now_ms());
}

/* The next hop from block i towards b on a throughput-weighted random choice. */
static int random_hop(swarm_client_t *c, int i, int b, uint64_t batch_tokens, sw_route_hop_t *h)
{
    sw_route_hop_t hops[MAX_HOPS];
    int n = sw_route_random(&c->table, i, b, batch_tokens, now_ms(), &c->rng, hops, MAX_HOPS);

    if (n < 0)
        return n;
    *h = hops[0];
    return 0;
}

int swarm_client_forward(swarm_client_t *c, int a, int b, float *x, int B, int T)
{
    unsigned failures = 0;
    int r;

    if (c->local)
        return sw_err(SW_EUNSUPPORTED, "forward calls need a swarm; local mode runs sessions only");
    if (a < 0 || b > c->L || a >= b || B < 1 || T < 1)
        return sw_err(-EINVAL, "forward over blocks %d:%d of %d with B %d, T %d", a, b, c->L, B, T);
    if ((r = fresh_table(c, 0)) < 0)
        return r;
    for (int i = a; i < b;) {
        sw_route_hop_t h;
        float *save = NULL;
        if ((r = random_hop(c, i, b, (uint64_t)B * T, &h)) == 0) {
            const sw_route_server_t *srv = &c->table.srv[h.server]; /* no refresh until we are done with it */
            if (!(save = sw_malloc((size_t)B * T * c->H * sizeof(float))))
                return -ENOMEM;
            memcpy(save, x, (size_t)B * T * c->H * sizeof(float));
            if ((r = forward_call(c, srv, h.start, h.end, x, B, T)) == 0) {
                sw_free(save);
                i = h.end;
                continue;
            }
            memcpy(x, save, (size_t)B * T * c->H * sizeof(float)); /* a failed call may leave part */
            sw_free(save);
            call_failed(c, srv, "forward", h.start, h.end);
        }
        if (r == -ENOMEM || ++failures > c->max_failures) {
            char why[512];
            snprintf(why, sizeof(why), "%s", sw_err_detail());
            return sw_err(r == -ENOMEM ? r : -EHOSTUNREACH, "forward of blocks %d:%d: gave up after %u "
                          "failures (last: %s)", i, b, failures - 1, why);
        }
        sleep_ms(c, backoff_ms(failures));
        if ((r = fresh_table(c, 1)) < 0)
            return r;
    }
    return 0;
}

/*
 * dL/dx through blocks [a, b) along a random chain: forward through the chain keeping each hop's
 * input, then backward calls in reverse. A failed hop is redone (recursively, on other servers)
 * from its kept input. *failures counts against max_failures.
 */
static int backward_span(swarm_client_t *c, int a, int b, const float *x, float *g, int B, int T,
                         unsigned *failures)
{
    size_t n = (size_t)B * T * c->H;
    sw_route_hop_t hops[MAX_HOPS];
    sw_route_server_t *who = NULL; /* copies: a failure re-reads the table under our feet */
    float *in = NULL, *keep = NULL;
    int nh = 0, r = 0;

    for (int i = a; i < b;) { /* the chain, one random hop at a time */
        if ((r = random_hop(c, i, b, (uint64_t)B * T, &hops[nh])) < 0)
            return r;
        i = hops[nh++].end;
    }
    in = sw_malloc((size_t)nh * n * sizeof(float));
    keep = sw_malloc(n * sizeof(float));
    who = sw_malloc((size_t)nh * sizeof(*who));
    if (!in || !keep || !who) {
        r = -ENOMEM;
        goto out;
    }
    for (int k = 0; k < nh; k++)
        who[k] = c->table.srv[hops[k].server];
    memcpy(in, x, n * sizeof(float));
    for (int k = 0; k + 1 < nh; k++) { /* inputs of hops 1..nh-1 */
        memcpy(in + (size_t)(k + 1) * n, in + (size_t)k * n, n * sizeof(float));
        if ((r = forward_call(c, &who[k], hops[k].start, hops[k].end, in + (size_t)(k + 1) * n, B, T)) < 0) {
            call_failed(c, &who[k], "forward", hops[k].start, hops[k].end);
            if (++*failures > c->max_failures)
                goto out;
            sleep_ms(c, backoff_ms(*failures));
            if ((r = fresh_table(c, 1)) == 0)
                r = backward_span(c, a, b, x, g, B, T, failures);
            goto out;
        }
    }
    for (int k = nh - 1; k >= 0; k--) {
        memcpy(keep, g, n * sizeof(float));
        if ((r = backward_call(c, &who[k], hops[k].start, hops[k].end, in + (size_t)k * n, g, B, T)) == 0)
            continue;
        memcpy(g, keep, n * sizeof(float));
        call_failed(c, &who[k], "backward", hops[k].start, hops[k].end);
        if (++*failures > c->max_failures)
            goto out;
        sleep_ms(c, backoff_ms(*failures));
        if ((r = fresh_table(c, 1)) < 0 ||
            (r = backward_span(c, hops[k].start, hops[k].end, in + (size_t)k * n, g, B, T, failures)) < 0)
            goto out;
    }
out:
    sw_free(in);
    sw_free(keep);
    sw_free(who);
    return r;
}

int swarm_client_backward(swarm_client_t *c, int a, int b, const float *x, float *grad, int B, int T)
{
    unsigned failures = 0;
    int r;

    if (c->local)
        return sw_err(SW_EUNSUPPORTED, "backward calls need a swarm; local mode runs sessions only");
    if (a < 0 || b > c->L || a >= b || B < 1 || T < 1)
        return sw_err(-EINVAL, "backward over blocks %d:%d of %d with B %d, T %d", a, b, c->L, B, T);
    if ((r = fresh_table(c, 0)) < 0)
        return r;
    if ((r = backward_span(c, a, b, x, grad, B, T, &failures)) < 0 && failures > c->max_failures) {
        char why[512];
        snprintf(why, sizeof(why), "%s", sw_err_detail());
        return sw_err(-EHOSTUNREACH, "backward of blocks %d:%d: gave up after %u failures (last: %s)", a,
                      b, c->max_failures, why);
    }
    return r;
}
