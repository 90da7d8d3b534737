/*
 * bench-dht.c - DHT lookups on loopback: N nodes (default 50, 200, 1000) in this process, on one
 * libuv loop, real sockets and the full transport (handshake, encryption) between them.
 *
 * For each N: the nodes join in waves of 10 (each bootstrapping from a random node already in),
 * 50 records are put from random nodes, then LOOKUPS gets run one at a time from random nodes for
 * random keys: latency p50/p99 (ms), calls per lookup, hops, success. Then 30% of the nodes are
 * killed without warning (their sockets close) and the same gets run again at once (no refresh, no
 * republish yet), and once more after one republish round on the survivors.
 *
 * Baseline, same run: the round-trip time of one dht.ping on an open loopback connection between
 * two nodes of this process (what one call of a lookup costs at least).
 *
 * Caveats: every node shares one loop and one core, so a lookup's latency includes the work of
 * the nodes it asks, done in turn; killed nodes close their sockets, so calls to them fail at once
 * (over a real network they would time out after rpc_timeout_ms). Needs about 40 file descriptors
 * per node: RLIMIT_NOFILE is raised to its hard limit and a size that does not fit is skipped.
 *
 * Usage: bench-dht [N...]
 */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <sodium.h>
#include <uv.h>

#include "p2p/dht.h"
#include "p2p/rpc.h"
#include "util/alloc.h"
#include "util/error.h"
#include "util/log.h"

#define NKEYS 50
#define LOOKUPS 300
#define FDS_PER_NODE 40

typedef struct {
    sw_identity_t id;
    sw_p2p_node_t *node;
    sw_dht_t *dht;
    int port, alive, closed;
    char addr[64], full[128];
} bnode_t;

static uv_loop_t loop;
static bnode_t *nodes;
static int count;
static uint64_t rng = 0x243f6a8885a308d3ull;

static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void tick(uv_timer_t *t) { (void)t; }

static int run_until(const int *flag, uint64_t ms)
{
    uv_timer_t t;
    uint64_t end = uv_hrtime() + ms * 1000000ull;

    uv_timer_init(&loop, &t);
    uv_timer_start(&t, tick, 5, 5);
    while (!*flag && uv_hrtime() < end)
        uv_run(&loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
    return *flag;
}

static int node_start(int i)
{
    bnode_t *t = &nodes[i];
    sw_p2p_limits_t lim;
    sw_dht_opts_t o;
    uint8_t seed[32] = { 0 };
    char pid[SW_PEER_ID_TEXT_MAX];
    int r;

    memcpy(seed, &i, sizeof(i));
    seed[31] = 0xbe;
    sw_identity_from_seed(seed, &t->id);
    sw_p2p_limits_default(&lim);
    lim.max_conns = 4096;
    lim.max_conns_per_addr = 4096; /* every peer is 127.0.0.1 */
    lim.keepalive_ms = 0;
    lim.idle_timeout_ms = 4000;
    if ((r = sw_p2p_node_new(&loop, &t->id, NULL, &lim, &t->node)) < 0)
        return r;
    if ((r = sw_p2p_node_listen(t->node, "127.0.0.1", 0, &t->port)) < 0)
        return r;
    snprintf(t->addr, sizeof(t->addr), "127.0.0.1:%d", t->port);
    sw_peer_id_text(&t->id.id, pid);
    snprintf(t->full, sizeof(t->full), "%s@%s", pid, t->addr);
    sw_dht_opts_default(&o);
    o.announce_addr = t->addr;
    o.refresh_ms = 0;   /* the benchmark runs republish itself */
    o.republish_ms = 0;
    if ((r = sw_dht_new(&loop, t->node, &t->id, &o, &t->dht)) < 0)
        return r;
    t->alive = 1;
    return 0;
}

static void dht_closed(void *arg) { ((bnode_t *)arg)->closed = 1; }
static void node_closed(void *arg) { sw_dht_close(((bnode_t *)arg)->dht, dht_closed, arg); }

static void node_kill(bnode_t *t)
{
    if (!t->alive)
        return;
    t->alive = 0;
    sw_p2p_node_close(t->node, node_closed, t);
}

typedef struct {
    int done, status, found;
    uint32_t n;
    sw_dht_lookup_info_t info;
    const char *want;
} res_t;

static void boot_cb(int status, uint32_t peers, void *arg)
{
    res_t *r = arg;
    r->status = status;
    r->done = 1;
}

static void put_cb(int status, uint32_t stored, const sw_dht_lookup_info_t *info, void *arg)
{
    res_t *r = arg;
    r->status = status;
    r->n = stored;
    r->done = 1;
}

static void get_cb(int status, const sw_dht_record_t *recs, size_t n, const sw_dht_lookup_info_t *info, void *arg)
{
    res_t *r = arg;

    r->status = status;
    r->info = *info;
    for (size_t i = 0; i < n; i++)
        if (recs[i].subkey_len == 1 && recs[i].subkey[0] == 's' && recs[i].value_len == strlen(r->want) &&
            memcmp(recs[i].value, r->want, recs[i].value_len) == 0)
            r->found = 1;
    r->done = 1;
}

static int pending(void)
{
    for (int i = 0; i < count; i++)
        if (nodes[i].alive && sw_dht_pending(nodes[i].dht))
            return 1;
    return 0;
}

static void wait_idle(uint64_t ms)
{
    uint64_t end = uv_hrtime() + ms * 1000000ull;
    int never = 0;

    while (pending() && uv_hrtime() < end)
        run_until(&never, 10);
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct {
    double p50, p99, msgs, hops, success;
} round_t;

/* LOOKUPS gets, one at a time, from random live nodes for random keys. */
static void lookups(round_t *out)
{
    static double lat[LOOKUPS];
    uint64_t msgs = 0, hops = 0;
    int ok = 0;

    for (int j = 0; j < LOOKUPS; j++) {
        char key[32], val[32];
        res_t r;
        int i, k = (int)(rnd() % NKEYS);
        uint64_t t0;
        do
            i = (int)(rnd() % (uint64_t)count);
        while (!nodes[i].alive);
        snprintf(key, sizeof(key), "bench-%d", k);
        snprintf(val, sizeof(val), "value-%d", k);
        memset(&r, 0, sizeof(r));
        r.want = val;
        t0 = uv_hrtime();
        if (sw_dht_get(nodes[i].dht, key, strlen(key), get_cb, &r) == 0)
            run_until(&r.done, 30000);
        lat[j] = (double)(uv_hrtime() - t0) / 1e6;
        ok += r.done && r.status == 0 && r.found;
        msgs += r.info.msgs;
        hops += r.info.hops;
    }
    qsort(lat, LOOKUPS, sizeof(double), cmp_d);
    out->p50 = lat[LOOKUPS / 2];
    out->p99 = lat[(LOOKUPS * 99) / 100];
    out->msgs = (double)msgs / LOOKUPS;
    out->hops = (double)hops / LOOKUPS;
    out->success = 100.0 * ok / LOOKUPS;
}

static void on_ping(int status, const sw_peer_id_t *peer, double rtt_ms, int64_t off, void *arg)
{
    double *out = arg;
    *out = status == 0 ? rtt_ms : -1;
}

/* Baseline: dht.ping between nodes 0 and 1 over an open connection, 200 times. */
static void ping_baseline(double *p50, double *p99)
{
    static double rtt[200];
    int n = 0;

    for (int j = 0; j < 201; j++) {
        double v = 0;
        if (sw_dht_ping(nodes[0].dht, nodes[1].full, on_ping, &v) < 0)
            continue;
        while (v == 0)
            uv_run(&loop, UV_RUN_ONCE);
        if (j > 0 && v > 0) /* the first one opens the connection */
            rtt[n++] = v;
    }
    qsort(rtt, (size_t)n, sizeof(double), cmp_d);
    *p50 = n ? rtt[n / 2] : -1;
    *p99 = n ? rtt[(n * 99) / 100] : -1;
}

static int bench(int n)
{
    round_t before, churn, after;
    res_t pr[NKEYS];
    double t0 = (double)uv_hrtime(), join_s, ping50 = -1, ping99 = -1;
    int killed = 0, stored_min = 1 << 30, rc = 0;

    uv_loop_init(&loop);
    count = n;
    nodes = calloc((size_t)n, sizeof(*nodes));
    if (!nodes)
        return -1;
    for (int i = 0; i < n;) {
        res_t br[10];
        int w = i == 0 ? 1 : (n - i < 10 ? n - i : 10), all;
        for (int j = 0; j < w; j++) {
            const char *boot;
            int b = i ? (int)(rnd() % (uint64_t)i) : 0;
            if (node_start(i + j) < 0) {
                fprintf(stderr, "bench-dht: node %d: %s\n", i + j, sw_err_detail());
                rc = -1;
                goto out;
            }
            boot = nodes[b].full;
            memset(&br[j], 0, sizeof(br[j]));
            sw_dht_bootstrap(nodes[i + j].dht, &boot, i ? 1 : 0, boot_cb, &br[j]);
        }
        do {
            all = 1;
            for (int j = 0; j < w; j++)
                all &= br[j].done;
            if (!all)
                run_until(&all, 5);
        } while (!all);
        i += w;
    }
    join_s = ((double)uv_hrtime() - t0) / 1e9;
    ping_baseline(&ping50, &ping99);
    for (int k = 0; k < NKEYS; k++) {
        char key[32], val[32];
        int i = (int)(rnd() % (uint64_t)n);
        snprintf(key, sizeof(key), "bench-%d", k);
        snprintf(val, sizeof(val), "value-%d", k);
        memset(&pr[k], 0, sizeof(pr[k]));
        sw_dht_put(nodes[i].dht, key, strlen(key), "s", 1, val, strlen(val), sw_dht_now_ms() + 3600000, put_cb, &pr[k]);
    }
    wait_idle(60000);
    for (int k = 0; k < NKEYS; k++)
        if ((int)pr[k].n < stored_min)
            stored_min = (int)pr[k].n;
    lookups(&before);
    for (int tries = 0; killed < n * 3 / 10 && tries < n * 10; tries++) {
        int v = (int)(rnd() % (uint64_t)n);
        if (v > 1 && nodes[v].alive) { /* keep the two ping nodes */
            node_kill(&nodes[v]);
            killed++;
        }
    }
    for (int i = 0; i < n; i++)
        if (!nodes[i].alive)
            run_until(&nodes[i].closed, 10000);
    lookups(&churn);
    for (int i = 0; i < n; i++)
        if (nodes[i].alive)
            sw_dht_republish_now(nodes[i].dht);
    wait_idle(120000);
    lookups(&after);
    printf("%5d | %6.3f %6.3f %6.1f %4.2f %6.1f%% | %6.1f%% %6.3f %6.3f %6.1f | %6.1f%% %6.3f %6.3f | %4d | %5.1f s | "
           "%6.3f %6.3f\n",
           n, before.p50, before.p99, before.msgs, before.hops, before.success, churn.success, churn.p50, churn.p99,
           churn.msgs, after.success, after.p50, after.p99, stored_min, join_s, ping50, ping99);
    fflush(stdout);
out:
    for (int i = 0; i < n; i++)
        node_kill(&nodes[i]);
    for (int i = 0; i < n; i++)
        if (nodes[i].node)
            run_until(&nodes[i].closed, 10000);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    free(nodes);
    nodes = NULL;
    return rc;
}

int main(int argc, char **argv)
{
    static const int def[] = { 50, 200, 1000 };
    struct rlimit rl;
    int sizes[16], ns = 0;

    if (sodium_init() < 0)
        return 1;
    signal(SIGPIPE, SIG_IGN);
    sw_log_set_level(SW_LOG_ERROR);
    for (int i = 1; i < argc && ns < 16; i++)
        if (atoi(argv[i]) >= 10)
            sizes[ns++] = atoi(argv[i]);
    if (ns == 0)
        for (ns = 0; ns < 3; ns++)
            sizes[ns] = def[ns];
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    printf("bench-dht: %d lookups per round, one at a time; %d records; k=%d alpha=%d; loopback, one process, one "
           "loop\n", LOOKUPS, NKEYS, SW_DHT_K, SW_DHT_ALPHA);
    printf("      |            all nodes alive              | 30%% killed, before any repair |  after one "
           "republish  | min  | join  | baseline: dht.ping\n");
    printf("nodes |  p50ms  p99ms  calls hops success | success  p50ms  p99ms  calls | success  p50ms  p99ms | "
           "copies| time  | rtt p50  p99 (ms)\n");
    for (int i = 0; i < ns; i++) {
        if ((rlim_t)sizes[i] * FDS_PER_NODE > rl.rlim_cur) {
            printf("%5d | skipped: needs about %d file descriptors, RLIMIT_NOFILE allows %llu\n", sizes[i],
                   sizes[i] * FDS_PER_NODE, (unsigned long long)rl.rlim_cur);
            continue;
        }
        if (bench(sizes[i]) < 0)
            return 1;
    }
    return 0;
}
