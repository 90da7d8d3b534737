/*
 * bench-dht.c - DHT lookups on loopback: N nodes (default 50, 200, 1000), real sockets and the full
 * transport (handshake, encryption) between them, spread over ceil(N / PER_PROC) processes of up
 * to PER_PROC (200) nodes each, one libuv loop per process (one process needs about 40 file
 * descriptors per node, and the hard RLIMIT_NOFILE is often 20000).
 *
 * For each N: this process (the measuring one) starts its share of nodes, joining in waves of 10
 * (each bootstrapping from a random node already in); then forked helper processes, told a few of
 * its addresses over a pipe, start theirs the same way, bootstrapping across processes. 50 records
 * are put from random nodes of this process, then LOOKUPS gets run one at a time from random nodes
 * of this process for random keys: latency p50/p99 (ms), calls per lookup, hops, success. Then every
 * process kills 30% of its nodes without warning (their sockets close) and the same gets run again
 * at once (no refresh, no republish yet), and once more after one republish round on the survivors.
 * Helpers obey one-line commands (boot, kill, republish, exit), answer "ok", die with this process
 * (PR_SET_PDEATHSIG) and are reaped (SIGKILL after a grace period) before the next size.
 *
 * Baseline, same run: the round-trip time of one dht.ping on an open loopback connection between
 * two nodes of this process (what one call of a lookup costs at least).
 *
 * Caveats: the nodes of a process share one loop and the processes share the machine's cores, so a
 * lookup's latency includes the work of the nodes it asks, done in turn; killed nodes close their
 * sockets, so calls to them fail at once (over a real network they would time out after
 * rpc_timeout_ms). Needs about 40 file descriptors per node of a process: RLIMIT_NOFILE is raised
 * to its hard limit and a size whose PER_PROC share does not fit is skipped.
 *
 * Usage: bench-dht [N...]
 */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

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
#define PER_PROC 200
#define MAX_PROCS 16

typedef struct {
    sw_identity_t id;
    sw_p2p_node_t *node;
    sw_dht_t *dht;
    int port, alive, closed;
    char addr[64], full[128];
} bnode_t;

static uv_loop_t loop;
static bnode_t *nodes; /* this process's nodes */
static int count;      /* how many */
static int base;       /* global index of nodes[0] (identities are seeded by it) */
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
    int r, g = base + i;

    memcpy(seed, &g, sizeof(g));
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

/* Joins nodes [from, count) in waves of 10, each from a random node of this process already in, or
 * (while there is none, or for a third of them) from one of the `nb` addresses in `boot`. */
static int join_waves(int from, const char *const *boot, int nb)
{
    for (int i = from; i < count;) {
        res_t br[10];
        int w = i == 0 && nb == 0 ? 1 : (count - i < 10 ? count - i : 10), all;
        for (int j = 0; j < w; j++) {
            const char *b = NULL;
            if (node_start(i + j) < 0) {
                fprintf(stderr, "bench-dht: node %d: %s\n", base + i + j, sw_err_detail());
                return -1;
            }
            if (nb && (i == 0 || rnd() % 3 == 0))
                b = boot[rnd() % (uint64_t)nb];
            else if (i)
                b = nodes[rnd() % (uint64_t)i].full;
            memset(&br[j], 0, sizeof(br[j]));
            sw_dht_bootstrap(nodes[i + j].dht, &b, b ? 1 : 0, boot_cb, &br[j]);
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
    return 0;
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

/* ======================================================================== helper processes */

/* Kills 30% of this process's nodes at random (never nodes[0] and [1] of the measuring process,
 * the ping pair), and waits until their sockets are closed. */
static int kill_share(int keep_two)
{
    int killed = 0, want = count * 3 / 10;

    for (int tries = 0; killed < want && tries < count * 10; tries++) {
        int v = (int)(rnd() % (uint64_t)count);
        if ((!keep_two || v > 1) && nodes[v].alive) {
            node_kill(&nodes[v]);
            killed++;
        }
    }
    for (int i = 0; i < count; i++)
        if (!nodes[i].alive)
            run_until(&nodes[i].closed, 10000);
    return killed;
}

/* One direction of a pipe to or from a helper, read on the loop: complete lines are counted, the
 * last one is kept. */
typedef struct {
    uv_pipe_t pipe;
    char buf[4096], last[4096];
    size_t len;
    int lines, eof, fresh; /* fresh: a line (or the end) came since the reader last looked */
} chan_t;

static void chan_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    chan_t *c = h->data;
    b->base = c->buf + c->len;
    b->len = sizeof(c->buf) - c->len;
}

static void chan_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    chan_t *c = st->data;

    if (n < 0) {
        c->eof = c->fresh = 1;
        uv_read_stop(st);
        return;
    }
    c->len += (size_t)n;
    for (;;) {
        char *nl = memchr(c->buf, '\n', c->len);
        size_t l;
        if (!nl) {
            if (c->len == sizeof(c->buf))
                c->len = 0; /* an overlong line: dropped */
            break;
        }
        l = (size_t)(nl - c->buf);
        memcpy(c->last, c->buf, l);
        c->last[l] = 0;
        memmove(c->buf, nl + 1, c->len - l - 1);
        c->len -= l + 1;
        c->lines++;
        c->fresh = 1;
    }
}

static int chan_open(chan_t *c, int fd)
{
    memset(c, 0, sizeof(*c));
    uv_pipe_init(&loop, &c->pipe, 0);
    c->pipe.data = c;
    if (uv_pipe_open(&c->pipe, fd) < 0)
        return -1;
    return uv_read_start((uv_stream_t *)&c->pipe, chan_alloc, chan_read);
}

static void say(int fd, const char *line)
{
    size_t n = strlen(line), off = 0;
    while (off < n) {
        ssize_t w = write(fd, line + off, n - off);
        if (w <= 0)
            return;
        off += (size_t)w;
    }
}

/* A helper process: `n` nodes starting at global index `first`; commands on cmd_fd, answers on
 * out_fd. Never returns. */
static void helper_main(int n, int first, int cmd_fd, int out_fd)
{
    chan_t cmd;
    int seen = 0, rc = 0;

    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() == 1)
        _exit(1);
    rng ^= (uint64_t)first * 0x9e3779b97f4a7c15ull;
    uv_loop_init(&loop);
    count = n;
    base = first;
    nodes = calloc((size_t)n, sizeof(*nodes));
    if (!nodes || chan_open(&cmd, cmd_fd) < 0)
        _exit(1);
    for (;;) {
        char line[8192], *save = NULL, *tok;
        const char *boot[16];
        int nb = 0;
        while (cmd.lines == seen && !cmd.eof) {
            cmd.fresh = 0;
            run_until(&cmd.fresh, 1000);
        }
        if (cmd.lines == seen)
            break; /* the measuring process is gone */
        seen = cmd.lines;
        snprintf(line, sizeof(line), "%s", cmd.last);
        tok = strtok_r(line, " ", &save);
        if (!tok)
            continue;
        if (strcmp(tok, "boot") == 0) {
            while (nb < 16 && (tok = strtok_r(NULL, " ", &save)) != NULL)
                boot[nb++] = tok;
            rc = join_waves(0, boot, nb);
        } else if (strcmp(tok, "kill") == 0) {
            kill_share(0);
        } else if (strcmp(tok, "republish") == 0) {
            for (int i = 0; i < count; i++)
                if (nodes[i].alive)
                    sw_dht_republish_now(nodes[i].dht);
            wait_idle(120000);
        } else if (strcmp(tok, "exit") == 0) {
            break;
        }
        say(out_fd, rc < 0 ? "fail\n" : "ok\n");
    }
    for (int i = 0; i < count; i++)
        node_kill(&nodes[i]);
    for (int i = 0; i < count; i++)
        if (nodes[i].node)
            run_until(&nodes[i].closed, 10000);
    _exit(rc < 0 ? 1 : 0);
}

typedef struct {
    pid_t pid;
    int cmd_fd, out_fd, want;
    chan_t out;
} helper_t;

static helper_t helpers[MAX_PROCS];
static int nhelpers;

/* Sends a command line to every helper. */
static void helpers_send(const char *line)
{
    for (int h = 0; h < nhelpers; h++) {
        helpers[h].want = helpers[h].out.lines + 1;
        say(helpers[h].cmd_fd, line);
    }
}

/* Waits (running this process's nodes) until every helper answered the last command: 0, or -1 when
 * one failed, died or took longer than ms. */
static int helpers_wait(uint64_t ms)
{
    uint64_t end = uv_hrtime() + ms * 1000000ull;
    int all = 0;

    while (!all && uv_hrtime() < end) {
        int never = 0;
        all = 1;
        for (int h = 0; h < nhelpers; h++) {
            if (helpers[h].out.eof && helpers[h].out.lines < helpers[h].want)
                return -1;
            all &= helpers[h].out.lines >= helpers[h].want;
        }
        if (!all)
            run_until(&never, 5);
    }
    for (int h = 0; h < nhelpers; h++)
        if (strcmp(helpers[h].out.last, "ok") != 0)
            return -1;
    return all ? 0 : -1;
}

/* Forks helpers for global nodes [first, n), PER_PROC each, before this process's loop exists. */
static int helpers_fork(int first, int n)
{
    nhelpers = 0;
    for (int g = first; g < n && nhelpers < MAX_PROCS; g += PER_PROC) {
        int cmd[2], out[2];
        pid_t pid;
        if (pipe(cmd) < 0 || pipe(out) < 0)
            return -1;
        fflush(stdout);
        fflush(stderr);
        pid = fork();
        if (pid < 0)
            return -1;
        if (pid == 0) {
            close(cmd[1]);
            close(out[0]);
            for (int h = 0; h < nhelpers; h++) {
                close(helpers[h].cmd_fd);
                close(helpers[h].out_fd);
            }
            helper_main(n - g < PER_PROC ? n - g : PER_PROC, g, cmd[0], out[1]);
        }
        close(cmd[0]);
        close(out[1]);
        helpers[nhelpers].pid = pid;
        helpers[nhelpers].cmd_fd = cmd[1];
        helpers[nhelpers].out_fd = out[0];
        nhelpers++;
    }
    return 0;
}

static int helpers_open(void)
{
    for (int h = 0; h < nhelpers; h++) {
        if (chan_open(&helpers[h].out, helpers[h].out_fd) < 0)
            return -1;
    }
    return 0;
}

/* Tells helpers to exit, closes the pipes, reaps them (SIGKILL after 20 s). */
static void helpers_end(void)
{
    uint64_t end;

    for (int h = 0; h < nhelpers; h++)
        say(helpers[h].cmd_fd, "exit\n");
    for (int h = 0; h < nhelpers; h++)
        close(helpers[h].cmd_fd);
    end = uv_hrtime() + 20000000000ull;
    for (int h = 0; h < nhelpers; h++) {
        int st;
        while (waitpid(helpers[h].pid, &st, WNOHANG) == 0) {
            if (uv_hrtime() > end) {
                kill(helpers[h].pid, SIGKILL);
                waitpid(helpers[h].pid, &st, 0);
                break;
            }
            usleep(20000);
        }
        if (!uv_is_closing((uv_handle_t *)&helpers[h].out.pipe))
            uv_close((uv_handle_t *)&helpers[h].out.pipe, NULL);
    }
    nhelpers = 0;
}

static int bench(int n)
{
    round_t before, churn, after;
    res_t pr[NKEYS];
    double t0 = (double)uv_hrtime(), join_s, ping50 = -1, ping99 = -1;
    int stored_min = 1 << 30, rc = 0, own = n < PER_PROC ? n : PER_PROC;
    char line[4096];

    /* helpers first: fork before this process's loop and sockets exist */
    if (helpers_fork(own, n) < 0) {
        fprintf(stderr, "bench-dht: cannot start helper processes\n");
        helpers_end();
        return -1;
    }
    uv_loop_init(&loop);
    count = own;
    base = 0;
    nodes = calloc((size_t)own, sizeof(*nodes));
    if (!nodes || helpers_open() < 0 || join_waves(0, NULL, 0) < 0) {
        rc = -1;
        goto out;
    }
    /* helpers join through a few of this process's nodes, all at once */
    snprintf(line, sizeof(line), "boot");
    for (int j = 0; j < 8; j++) {
        size_t l = strlen(line);
        snprintf(line + l, sizeof(line) - l, " %s", nodes[rnd() % (uint64_t)own].full);
    }
    strcat(line, "\n");
    helpers_send(line);
    if (helpers_wait(600000) < 0) {
        fprintf(stderr, "bench-dht: a helper process failed to join\n");
        rc = -1;
        goto out;
    }
    join_s = ((double)uv_hrtime() - t0) / 1e9;
    ping_baseline(&ping50, &ping99);
    for (int k = 0; k < NKEYS; k++) {
        char key[32], val[32];
        int i = (int)(rnd() % (uint64_t)own);
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
    /* 30% of every process's nodes die at once */
    helpers_send("kill\n");
    kill_share(1);
    if (helpers_wait(60000) < 0) {
        rc = -1;
        goto out;
    }
    lookups(&churn);
    for (int i = 0; i < own; i++)
        if (nodes[i].alive)
            sw_dht_republish_now(nodes[i].dht);
    helpers_send("republish\n");
    wait_idle(120000);
    if (helpers_wait(120000) < 0) {
        rc = -1;
        goto out;
    }
    lookups(&after);
    printf("%5d %2d | %6.3f %6.3f %6.1f %4.2f %6.1f%% | %6.1f%% %6.3f %6.3f %6.1f | %6.1f%% %6.3f %6.3f | %4d | %5.1f s | "
           "%6.3f %6.3f\n",
           n, 1 + nhelpers, before.p50, before.p99, before.msgs, before.hops, before.success, churn.success, churn.p50,
           churn.p99, churn.msgs, after.success, after.p50, after.p99, stored_min, join_s, ping50, ping99);
    fflush(stdout);
out:
    helpers_end();
    for (int i = 0; i < own && nodes; i++)
        node_kill(&nodes[i]);
    for (int i = 0; i < own && nodes; i++)
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
    printf("bench-dht: %d lookups per round, one at a time, from the first process's nodes; %d records; k=%d "
           "alpha=%d; loopback, up to %d nodes per process, one loop each\n", LOOKUPS, NKEYS, SW_DHT_K, SW_DHT_ALPHA,
           PER_PROC);
    printf("         |            all nodes alive              | 30%% killed, before any repair |  after one "
           "republish  | min  | join  | baseline: dht.ping\n");
    printf("nodes pr |  p50ms  p99ms  calls hops success | success  p50ms  p99ms  calls | success  p50ms  p99ms | "
           "copies| time  | rtt p50  p99 (ms)\n");
    for (int i = 0; i < ns; i++) {
        if ((rlim_t)(sizes[i] < PER_PROC ? sizes[i] : PER_PROC) * FDS_PER_NODE > rl.rlim_cur ||
            sizes[i] > PER_PROC * MAX_PROCS) {
            printf("%5d | skipped: needs about %d file descriptors per process, RLIMIT_NOFILE allows %llu\n",
                   sizes[i], PER_PROC * FDS_PER_NODE, (unsigned long long)rl.rlim_cur);
            continue;
        }
        if (bench(sizes[i]) < 0)
            return 1;
    }
    return 0;
}
