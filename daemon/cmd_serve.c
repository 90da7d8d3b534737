/*
 * cmd_serve.c - `swarmd serve`: load a span of blocks and serve it to peers over the secure
 * transport (pipeline/server.h) until SIGINT/SIGTERM; announce it on the DHT; with
 * --serve-layers auto, choose the span and move it when that raises the swarm's throughput.
 *
 * Runs the libuv loop on the main thread; compute runs on the server's executor thread; loading a
 * new span for a move runs on a libuv worker thread (sw_server_load touches no loop).
 * Shutdown: the first signal stops new sessions and forward calls, lets steps in flight finish
 * for --grace seconds, ends the open sessions with an error, closes the node and exits 0.
 *
 * DHT (with --initial-peers or --new-swarm): a DHT joins the swarm on the same p2p node, and each
 * served block b gets a ServerInfo record (proto/swarmd.proto) under "<model-name>.<b>" with this
 * server's owned subkey and block b's weights digest: first state joining, then online, refreshed
 * every --refresh seconds with a --expiry lifetime, and offline on SIGINT/SIGTERM (the node closes
 * once those puts are answered and the steps in flight are done). Without either option it serves
 * without announcing and says so.
 *
 * The DHT keeps its routing table in a file (--table, default beside the identity file as for
 * `swarmd dht serve`), read at start and written every minute and at exit: a restarted server
 * finds the swarm through its saved contacts even when its initial peers are gone (the start-up
 * read of --serve-layers auto asks them too). Before the first announcement the DHT asks peers to
 * connect back to the announced address (p2p/dht.h, "Reachability"); when none can, clients could
 * not reach the server either, so it announces nothing and exits 1 with what to do, as Petals
 * refuses an unreachable server (--no-reachability-check skips the check). Later periodic checks
 * only switch the DHT node between client and full mode, which the DHT logs.
 *
 * Throughput (Petals' server/throughput.py): forward and decode tokens/s through one block are
 * measured at start-up on the real device and format and cached per device/model/format
 * (daemon/throughput.h); --throughput eval re-measures, --throughput N announces N. The announced
 * figure is min(forward_rps / ((n + 1) / 2), network_rps), network_rps = the uplink's tokens/s of
 * 16-bit hidden states. The uplink is --network-mbps, else measured after joining: 4 MiB sent to
 * each of up to 3 initial peers ("p2p.sink", p2p/probe.h), the median kept (Petals runs a speed
 * test against public servers; peers of the swarm are what matters here), 100 Mbit/s if none
 * answers.
 *
 * --serve-layers auto: after a random delay (uniform in 0..2*--block-selection-delay, so servers
 * started together pick apart), a throwaway DHT client reads the records of every block, sums the
 * throughput of each joining/online peer's span per block (daemon/blocks.h, peer-id order), and
 * takes the window of --num-blocks blocks Petals' rule picks (gaps first). --num-blocks defaults to
 * what fits in free memory (RAM, or the GPU's with --device cuda) after reserving the attention
 * cache for --max-cache-tokens and a margin; the arithmetic is logged.
 *
 * Rebalancing (auto only): every uniform(0, 2 x --rebalance-period) seconds the server re-reads the
 * swarm and runs sw_should_move (Petals' criterion, balance quality --balance-quality, and never
 * leaving a block this server alone covers). A move is made without cutting sessions when memory
 * allows: the new span loads on a worker thread while the old one serves, the swarm is read again
 * to confirm the move still holds, the new server takes new calls (its handlers replace the old
 * one's on the node) and is announced online, the blocks left behind are announced offline, and the
 * old server retires - its open sessions may finish for up to --move-grace seconds - and is freed.
 * Without the memory for both: announce the old span offline, retire it (same grace), free it,
 * then load the new span and announce it joining, then online.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>
#include <uv.h>

#include "blocks.h"
#include "commands.h"
#include "kernels/device.h"
#include "p2p/dht.h"
#include "p2p/dht_internal.h"
#include "p2p/identity.h"
#include "p2p/probe.h"
#include "p2p/rpc.h"
#include "pipeline/config.h"
#include "pipeline/model.h"
#include "pipeline/server.h"
#include "swarmd.pb-c.h"
#include "throughput.h"
#include "util/alloc.h"
#include "util/error.h"
#include "util/file.h"
#include "util/log.h"

int sw_cmd_serve(int argc, char **argv);

static void serve_usage(FILE *f)
{
    fprintf(f,
            "Usage: swarmd [global options] serve --model DIR --serve-layers A:B|auto [options]\n"
            "\n"
            "Loads transformer blocks A..B-1 of the model and serves them to peers: info,\n"
            "forward and inference-session calls over the encrypted transport. Prints one line,\n"
            "\"serving blocks A:B of MODEL at PEERID@HOST:PORT\", once it accepts calls (and again\n"
            "after each move). SIGINT or SIGTERM stops it: no new sessions, steps in flight finish\n"
            "(up to --grace), exit 0.\n"
            "\n"
            "  --config FILE            read settings from FILE first: one 'key = value' per line,\n"
            "                           keys are these options' long names without '--' (e.g.\n"
            "                           'serve-layers = auto', 'new-swarm = true'; also 'identity'\n"
            "                           and 'swarm-key'); '#' starts a comment line; options on the\n"
            "                           command line override the file\n"
            "  --model DIR              Hugging Face checkpoint directory\n"
            "  --serve-layers A:B       the blocks to serve, [A, B) (0-based); never moves\n"
            "  --serve-layers auto      read the swarm's DHT and take the --num-blocks blocks where\n"
            "                           its throughput is lowest (gaps first; Petals' rule), then\n"
            "                           move when that raises the swarm's bottleneck (rebalancing)\n"
            "  --num-blocks N           how many blocks 'auto' takes (default: what fits in free\n"
            "                           memory after the attention cache for --max-cache-tokens)\n"
            "  --device D               cpu, cuda or cuda:N (default cpu)\n"
            "  --block-selection-delay S  before choosing, wait a random 0..2*S seconds so that\n"
            "                           servers started together pick apart (default 1; 0: none)\n"
            "  --balance-quality Q      move when the swarm's bottleneck is below Q times what a\n"
            "                           greedy re-layout would reach (default 0.75; 0: never move;\n"
            "                           above 1: move at every check, for debugging)\n"
            "  --rebalance-period S     mean seconds between rebalance checks, each after a random\n"
            "                           0..2*S (default 60)\n"
            "  --move-grace S           after a move, seconds the old span's open sessions may go\n"
            "                           on before they are ended (default 60)\n"
            "  --move-mode M            auto: load the new span before dropping the old when free\n"
            "                           memory allows (default); online: always; offline: always\n"
            "                           drop the old span first\n"
            "  --throughput auto|eval|N tokens/s to announce: auto measures once per device, model\n"
            "                           and format and caches it (default), eval re-measures, N\n"
            "                           announces N without measuring\n"
            "  --network-mbps N         the uplink in Mbit/s, which bounds the throughput (default:\n"
            "                           measured by sending 4 MiB to up to 3 initial peers after\n"
            "                           joining, median; 100 when none answers)\n"
            "  --listen HOST:PORT       address to listen on (default 0.0.0.0:31330; port 0: any)\n"
            "  --quant Q                weight format: nf4, int8 or none (default: as stored)\n"
            "  --int8-threshold T       LLM.int8() outlier threshold (default 6.0)\n"
            "  --max-cache-tokens N     KV cache budget in positions (batch x length) over all\n"
            "                           sessions (default %d)\n"
            "  --max-batch-tokens N     most batch x tokens of one call or step (default %d)\n"
            "  --max-backward-tokens N  most batch x tokens of one backward call (default: what\n"
            "                           1 GiB holds: every block's input + one block's gradients)\n"
            "  --session-timeout S      end an inference session idle for S seconds (default %d)\n"
            "  --grace S                seconds in-flight steps get at shutdown (default 10)\n"
            "  --initial-peers ADDR,... join the swarm's DHT through these nodes and announce the\n"
            "                           blocks (PEERID@HOST:PORT or HOST:PORT)\n"
            "  --new-swarm              start a new swarm: the DHT with no initial peers\n"
            "                           (without --initial-peers or --new-swarm the server does not\n"
            "                           announce itself: only peers given its address can use it)\n"
            "  --announce HOST:PORT     the address peers reach this server at (default: --listen;\n"
            "                           for 0.0.0.0 the first non-loopback IPv4 address)\n"
            "  --no-reachability-check  announce without first asking peers to connect back to\n"
            "                           the announced address (by default a server none of them\n"
            "                           can reach announces nothing and exits 1: clients could not\n"
            "                           reach it either)\n"
            "  --table PATH             the DHT routing table, read at start so that a restarted\n"
            "                           server finds the swarm through its saved contacts even when\n"
            "                           the initial peers are gone, written every minute and at\n"
            "                           exit (default: beside the identity file, 'dht-table' or\n"
            "                           IDENTITY.dht-table, as for 'swarmd dht serve')\n"
            "  --refresh S              re-announce every S seconds (default 20)\n"
            "  --expiry S               announcements live S seconds (default 60; more than --refresh)\n"
            "  --model-name NAME        the model's name in the swarm (default: the last part of\n"
            "                           config.json's _name_or_path, else of the directory;\n"
            "                           '.' and other punctuation become '-')\n"
            "  --public-name NAME       a name shown by 'swarmd status'\n"
            "  -h, --help               this help\n"
            "Throughput figures are cached in $SWARMD_CACHE_DIR, else $XDG_CACHE_HOME/swarmd, else\n"
            "~/.cache/swarmd (throughput.json).\n",
            SW_SERVER_DEFAULT_CACHE_TOKENS, SW_SERVER_DEFAULT_BATCH_TOKENS,
            SW_SERVER_DEFAULT_IDLE_MS / 1000);
}

/* ======================================================================== reading the swarm */

#define READ_MAX_PEERS 1024

/*
 * One pass over "<model>.<b>" for b = 0..nblocks-1 on a DHT (any loop): each peer's span, taking
 * a peer's highest state when its records differ (Petals' compute_spans). done(r, status) runs
 * once, on the loop; r must stay valid until then.
 */
typedef struct swarm_read swarm_read_t;
struct swarm_read {
    sw_dht_t *dht;
    const char *model;
    int nblocks, cur, busy;
    sw_peer_span_t spans[READ_MAX_PEERS];
    int state[READ_MAX_PEERS];
    int nspans;
    void (*done)(swarm_read_t *r, int status);
    void *arg;
};

static void read_next(swarm_read_t *r);

/* Petals' order of states (OFFLINE < JOINING < ONLINE); the wire enum has OFFLINE = 3. */
static int state_rank(int st)
{
    return st == SWARMD__SERVER_INFO__STATE__ONLINE ? 2 : st == SWARMD__SERVER_INFO__STATE__JOINING ? 1 : 0;
}

static void read_on_get(int status, const sw_dht_record_t *recs, size_t n, const sw_dht_lookup_info_t *info,
                        void *arg)
{
    swarm_read_t *r = arg;

    (void)info;
    if (status < 0) {
        r->busy = 0;
        r->done(r, status);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        Swarmd__ServerInfo *m;
        int k;
        if (recs[i].subkey_len != SW_DHT_OWNED_SUBKEY_LEN || !recs[i].signature)
            continue;
        m = swarmd__server_info__unpack(NULL, recs[i].value_len, recs[i].value);
        if (!m)
            continue;
        for (k = 0; k < r->nspans; k++)
            if (memcmp(r->spans[k].peer, recs[i].subkey + 5, SW_PEER_ID_LEN) == 0)
                break;
        if (k < READ_MAX_PEERS && (k == r->nspans || state_rank((int)m->state) > state_rank(r->state[k])) &&
            m->start_block < m->end_block && m->end_block <= (uint32_t)r->nblocks &&
            isfinite(m->throughput) && m->throughput >= 0 && m->throughput < 1e12) {
            memcpy(r->spans[k].peer, recs[i].subkey + 5, SW_PEER_ID_LEN);
            r->spans[k].start = (int)m->start_block;
            r->spans[k].end = (int)m->end_block;
            r->spans[k].tps = m->throughput;
            r->state[k] = (int)m->state;
            if (k == r->nspans)
                r->nspans++;
        }
        swarmd__server_info__free_unpacked(m, NULL);
    }
    r->cur++;
    read_next(r);
}

static void read_next(swarm_read_t *r)
{
    char key[SW_DHT_KEY_MAX];
    int e;

    if (r->cur >= r->nblocks) {
        r->busy = 0;
        r->done(r, 0);
        return;
    }
    snprintf(key, sizeof(key), "%s.%d", r->model, r->cur);
    if ((e = sw_dht_get(r->dht, key, strlen(key), read_on_get, r)) < 0) {
        r->busy = 0;
        r->done(r, e);
    }
}

/* Starts a pass; 0, or an error (then done never runs). */
static int read_start(swarm_read_t *r)
{
    if (r->busy)
        return SW_ESTATE;
    r->busy = 1;
    r->cur = 0;
    r->nspans = 0;
    read_next(r);
    return 0;
}

/* Moves the joining/online spans to the front of r->spans; returns how many. */
static int read_live(swarm_read_t *r)
{
    int ns = 0;

    for (int k = 0; k < r->nspans; k++) {
        if (r->state[k] != SWARMD__SERVER_INFO__STATE__JOINING && r->state[k] != SWARMD__SERVER_INFO__STATE__ONLINE)
            continue;
        r->spans[ns] = r->spans[k];
        r->state[ns] = r->state[k];
        ns++;
    }
    return ns;
}

/* ======================================================================== the server's state */

enum { MOVE_NONE = 0, MOVE_CHECK, MOVE_LOADING, MOVE_CONFIRM, MOVE_RETIRING, MOVE_OFFLINE };

typedef struct {
    uv_loop_t loop;
    uv_signal_t sigint, sigterm;
    sw_p2p_node_t *node;
    sw_server_t *srv;          /* takes new calls; NULL between the two halves of an offline move */
    sw_server_opts_t so;       /* what srv was loaded with; a move changes start/end */
    uint32_t grace_ms;
    int stopping, exit_rc;
    /* DHT announcements */
    sw_dht_t *dht;
    uv_timer_t refresh;
    sw_identity_t *id;
    const char *model_name, *public_name;
    char address[SW_PEER_ID_TEXT_MAX + SW_DHT_ADDR_MAX];
    double tps, forward_rps, inference_rps, network_rps;
    int state, puts_pending, drained;
    int start, end, nblocks;   /* the span of srv; the model's block count */
    uint32_t refresh_ms, ttl_ms;
    uint64_t last_exp;         /* expiration of the previous announcement */
    /* rebalancing */
    int auto_layers;
    double balance_quality;
    uint32_t rebalance_ms, move_grace_ms;
    uv_timer_t rebalance;
    swarm_read_t rd;
    int move, move_start, move_online;
    uint64_t move_seed;
    sw_server_t *old;          /* retiring after a move; freed when its calls are gone */
    sw_server_t *loaded;       /* from the worker, not started yet */
    int load_rc;
    char load_err[256];
    uv_work_t work;
    int working;
    uint64_t block_cost;       /* bytes per block: weights + attention cache (block_cost()) */
    int move_mode;             /* --move-mode: 0 auto (by free memory), 1 online, 2 offline */
    int reach_check;           /* refuse to announce when no peer can connect back (default on) */
    char announced[SW_DHT_ADDR_MAX]; /* HOST:PORT in the DHT and in `address` */
    /* throughput: --throughput N (0: measured), the uplink (--network-mbps, else measured) */
    double fixed_tps, mbps;
    int mbps_given, hidden;
    const char *const *peers;  /* --initial-peers (upload probes go to them) */
    size_t npeers;
    int probes_left, nprobes_ok;
    double probe_mbps[3];
    int port;
    char listen_host[sizeof(((sw_addr_t *)0)->host)];
} serve_t;

static void maybe_close_node(serve_t *v);
static void schedule_rebalance(serve_t *v);

static void handle_closed(uv_handle_t *h)
{
    (void)h;
}

static void server_closed(void *arg)
{
    serve_t *v = arg;

    v->srv = NULL;
    uv_close((uv_handle_t *)&v->sigint, NULL);
    uv_close((uv_handle_t *)&v->sigterm, NULL);
    uv_close((uv_handle_t *)&v->refresh, handle_closed);
    uv_close((uv_handle_t *)&v->rebalance, handle_closed);
}

static void dht_closed(void *arg)
{
    serve_t *v = arg;

    v->dht = NULL;
    if (v->srv)
        sw_server_close(v->srv, server_closed, v);
    else
        server_closed(v);
}

static void node_closed(void *arg)
{
    serve_t *v = arg;

    v->node = NULL;
    if (v->dht)
        sw_dht_close(v->dht, dht_closed, v);
    else
        dht_closed(v);
}

/* At shutdown: the node closes once the offline puts are answered, the server has drained, no
 * span is loading and a retiring server is gone. */
static void maybe_close_node(serve_t *v)
{
    if (v->stopping && (v->drained || !v->srv) && v->puts_pending == 0 && !v->working && !v->old &&
        !v->loaded && !v->rd.busy && v->node)
        sw_p2p_node_close(v->node, node_closed, v);
}

static void drained(void *arg)
{
    serve_t *v = arg;

    v->drained = 1;
    maybe_close_node(v);
}

static const char *state_name(int st)
{
    return st == SWARMD__SERVER_INFO__STATE__JOINING ? "joining"
           : st == SWARMD__SERVER_INFO__STATE__ONLINE ? "online" : "offline";
}

/* ======================================================================== announcements */

static void announce(serve_t *v, int state);

static void on_put(int status, uint32_t stored, const sw_dht_lookup_info_t *info, void *arg)
{
    serve_t *v = arg;

    (void)info;
    v->puts_pending--;
    if (status < 0 || stored == 0)
        SW_LOG_W("serve", "an announcement reached no DHT node (%s)",
                 status < 0 ? sw_strerror(status) : "none took it");
    if (v->puts_pending > 0)
        return;
    if (v->stopping) {
        maybe_close_node(v);
    } else if (v->state == SWARMD__SERVER_INFO__STATE__JOINING && v->srv) {
        announce(v, SWARMD__SERVER_INFO__STATE__ONLINE);
        schedule_rebalance(v);
    }
}

/* The next expiration: later than the previous one, as nodes keep the later of two records and an
 * equal one keeps what they have ("online" right after "joining" often falls in the same ms). */
static uint64_t next_exp(serve_t *v)
{
    uint64_t exp = sw_dht_now_ms() + v->ttl_ms;

    if (exp <= v->last_exp)
        exp = v->last_exp + 1;
    v->last_exp = exp;
    return exp;
}

/* Puts server s's ServerInfo in `state` for blocks [a, b) of its span, each with its own digest. */
static void announce_blocks(serve_t *v, sw_server_t *s, int state, int a, int b)
{
    uint8_t subkey[SW_DHT_OWNED_SUBKEY_LEN], buf[2048], digest[32];
    char key[SW_DHT_KEY_MAX];
    uint64_t exp = next_exp(v);
    Swarmd__ServerInfo m;
    size_t n;
    int r;

    sw_dht_owned_subkey(&v->id->id, subkey);
    sw_server_info_fill(s, &m);
    m.state = (Swarmd__ServerInfo__State)state;
    m.throughput = v->tps;
    m.forward_rps = v->forward_rps;
    m.inference_rps = v->inference_rps;
    m.network_rps = v->network_rps;
    m.model = (char *)v->model_name;
    m.public_name = (char *)(v->public_name ? v->public_name : "");
    m.address = v->address;
    m.n_block_digests = 0; /* one record per block: weights_digest is that block's */
    m.block_digests = NULL;
    for (int blk = a; blk < b; blk++) {
        sw_server_block_digest(s, blk, digest);
        m.weights_digest.data = digest;
        m.weights_digest.len = sizeof(digest);
        n = swarmd__server_info__get_packed_size(&m);
        if (n > sizeof(buf)) {
            SW_LOG_W("serve", "the announcement of block %d is %zu bytes, more than %zu", blk, n,
                     sizeof(buf));
            continue;
        }
        n = swarmd__server_info__pack(&m, buf);
        snprintf(key, sizeof(key), "%s.%d", v->model_name, blk);
        r = sw_dht_put(v->dht, key, strlen(key), subkey, sizeof(subkey), buf, n, exp, on_put, v);
        if (r < 0)
            SW_LOG_W("serve", "cannot announce block %d: %s", blk, sw_strerror(r));
        else
            v->puts_pending++;
    }
    SW_LOG_I("serve", "announced %s for blocks %d:%d of %s", state_name(state), a, b, v->model_name);
}

/* This server's span in `state`. */
static void announce(serve_t *v, int state)
{
    v->state = state;
    if (v->srv && v->dht)
        announce_blocks(v, v->srv, state, v->start, v->end);
}

static void on_refresh(uv_timer_t *t)
{
    serve_t *v = t->data;

    if (!v->stopping && v->puts_pending == 0 && v->srv && v->state == SWARMD__SERVER_INFO__STATE__ONLINE)
        announce(v, SWARMD__SERVER_INFO__STATE__ONLINE);
}

/*
 * The reachability check at start-up found that no peer asked could connect to the announced
 * address: clients could not either. Says so and what to do, announces nothing and stops (exit 1)
 * the way a signal does, with no grace (no session can have come through the DHT yet).
 */
static void refuse_unreachable(serve_t *v)
{
    fprintf(stderr, "swarmd serve: no peer could connect back to %s, so clients cannot reach this server "
                    "there: open TCP port %d to inbound connections (forward it on your router or NAT) or pass "
                    "--announce HOST:PORT with an address others can reach (--no-reachability-check announces "
                    "anyway); not announcing, exiting\n", v->announced, v->port);
    v->exit_rc = 1;
    v->stopping = 1;
    uv_timer_stop(&v->refresh);
    uv_timer_stop(&v->rebalance);
    if (v->srv)
        sw_server_drain(v->srv, 0, drained, v);
    maybe_close_node(v);
}

/* The announced throughput (Petals' rule): --throughput N, else min(forward_rps / ((n + 1) / 2),
 * network_rps) for the n blocks served now, network_rps = tokens of 16-bit hidden states the
 * uplink carries per second. Called at load, after the uplink is measured and after a move. */
static void set_tps(serve_t *v)
{
    v->network_rps = v->mbps * 1e6 / (16.0 * v->hidden);
    v->tps = v->fixed_tps > 0 ? v->fixed_tps : v->forward_rps / ((v->end - v->start + 1) / 2.0);
    if (v->fixed_tps <= 0 && v->tps > v->network_rps)
        v->tps = v->network_rps;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void joined(serve_t *v)
{
    announce(v, SWARMD__SERVER_INFO__STATE__JOINING);
    uv_timer_start(&v->refresh, on_refresh, v->refresh_ms, v->refresh_ms);
}

/* One upload probe ended; after the last, the median of the good ones is the uplink. */
static void on_probe(int status, double mbps, double rtt_ms, void *arg)
{
    serve_t *v = arg;

    if (status == 0 && mbps > 0 && v->nprobes_ok < 3)
        v->probe_mbps[v->nprobes_ok++] = mbps;
    else
        SW_LOG_D("serve", "upload probe: %s", sw_strerror(status));
    (void)rtt_ms;
    if (--v->probes_left > 0 || v->stopping)
        return;
    if (v->nprobes_ok > 0) {
        qsort(v->probe_mbps, (size_t)v->nprobes_ok, sizeof(double), cmp_double);
        v->mbps = v->probe_mbps[v->nprobes_ok / 2];
        set_tps(v);
        SW_LOG_I("serve", "network: upload measured at %.0f Mbit/s (median of %d peers); announcing %.1f "
                 "tokens/s (network bound %.1f)", v->mbps, v->nprobes_ok, v->tps, v->network_rps);
    } else {
        SW_LOG_I("serve", "network: no peer answered an upload probe; assuming %g Mbit/s "
                 "(set it with --network-mbps)", v->mbps);
    }
    joined(v);
}

/* Measures the uplink to up to three initial peers (4 MiB each) before the first announcement,
 * unless --network-mbps gave it; returns 1 if probes are under way (on_probe continues). */
static int probe_uplink(serve_t *v)
{
    if (v->mbps_given || v->fixed_tps > 0)
        return 0;
    v->probes_left = 0;
    v->nprobes_ok = 0;
    for (size_t i = 0; i < v->npeers && v->probes_left < 3; i++)
        if (sw_p2p_probe_upload(v->node, v->peers[i], 4u << 20, 5000, on_probe, v) == 0)
            v->probes_left++;
    return v->probes_left > 0;
}

static void on_boot(int status, uint32_t peers, void *arg)
{
    serve_t *v = arg;

    if (v->stopping)
        return;
    SW_LOG_I("serve", "DHT: %u initial peers answered (%s), %zu contacts", peers,
             status < 0 ? sw_strerror(status) : "ok", sw_dht_table_peers(v->dht, NULL, 0));
    if (v->reach_check && sw_dht_reachability(v->dht) == SW_DHT_REACH_NO) {
        refuse_unreachable(v);
        return;
    }
    if (!probe_uplink(v))
        joined(v);
}

static void print_serving(serve_t *v)
{
    char pid[SW_PEER_ID_TEXT_MAX];

    sw_peer_id_text(&v->id->id, pid);
    if (strchr(v->listen_host, ':'))
        printf("serving blocks %d:%d of %s at %s@[%s]:%d\n", v->start, v->end,
               sw_server_model_name(v->srv), pid, v->listen_host, v->port);
    else
        printf("serving blocks %d:%d of %s at %s@%s:%d\n", v->start, v->end,
               sw_server_model_name(v->srv), pid, v->listen_host, v->port);
    fflush(stdout);
}

/* ======================================================================== memory */

/*
 * Bytes one more block needs on the device: its weights as loaded (measured by loading block 0
 * in the requested format), plus its share of the attention cache for --max-cache-tokens (fp32 K
 * and V: 2 x NKV x HD x 4 bytes per position). *avail: MemAvailable, or the GPU's free memory.
 */
static int block_cost(const sw_server_opts_t *so, uint64_t *per_block, uint64_t *weights, uint64_t *cache,
                      uint64_t *avail)
{
    sw_model_t *m = NULL;
    sw_span_t *sp = NULL;
    const sw_model_config_t *c;
    uint64_t tokens = so->max_cache_tokens ? so->max_cache_tokens : SW_SERVER_DEFAULT_CACHE_TOKENS;
    int r;

    if ((r = sw_model_open(so->model_dir, &m)) < 0)
        return r;
    c = sw_model_config(m);
    if ((r = sw_span_load(m, 0, 1, &so->load, &sp)) < 0)
        goto out;
    *weights = sw_span_block_bytes(sp, 0);
    *cache = tokens * 2 * (uint64_t)c->num_kv_heads * (uint64_t)c->head_dim * sizeof(float);
    *per_block = *weights + *cache;
    if (so->device.kind == SW_DEVICE_CUDA) {
        sw_cuda_ctx_t *ctx = NULL;
        size_t fr = 0, tot = 0;
        if ((r = sw_cuda_ctx_create(so->device.index, &ctx)) == 0)
            r = sw_cuda_mem_info(ctx, &fr, &tot);
        sw_cuda_ctx_free(ctx);
        *avail = fr;
    } else {
        r = sw_mem_available(avail);
    }
out:
    sw_span_free(sp);
    sw_model_close(m);
    return r;
}

/* The safety margin kept free: a tenth of what is available, at least 256 MiB. */
static uint64_t margin_of(uint64_t avail)
{
    uint64_t m = avail / 10;
    return m < (256ull << 20) ? (256ull << 20) : m;
}

/* --num-blocks by default: as many blocks as fit, at most the model's, at least 1 (or an error). */
static int default_num_blocks(const sw_server_opts_t *so, int L, int *n)
{
    uint64_t per, w, c, avail, margin, act, usable;
    uint32_t bt = so->max_batch_tokens ? so->max_batch_tokens : SW_SERVER_DEFAULT_BATCH_TOKENS;
    sw_model_config_t mc;
    int r;

    if ((r = sw_model_config_load(so->model_dir, &mc)) < 0)
        return r;
    if ((r = block_cost(so, &per, &w, &c, &avail)) < 0)
        return r;
    margin = margin_of(avail);
    /* activations of one call or step: the input, the output and the block's scratch */
    act = (uint64_t)bt * ((uint64_t)mc.hidden_size * 3 + (uint64_t)mc.intermediate_size * 2) * sizeof(float);
    usable = avail > margin + act ? avail - margin - act : 0;
    *n = (int)(usable / per > (uint64_t)L ? (uint64_t)L : usable / per);
    SW_LOG_I("serve", "--num-blocks: %.1f MiB %s available - %.1f MiB margin - %.1f MiB activations "
             "(--max-batch-tokens) = %.1f MiB for blocks of %.2f MiB weights + %.2f MiB attention "
             "cache (--max-cache-tokens) each: %llu of the model's %d", (double)avail / 1048576.0,
             so->device.kind == SW_DEVICE_CUDA ? "GPU memory" : "RAM", (double)margin / 1048576.0,
             (double)act / 1048576.0, (double)usable / 1048576.0, (double)w / 1048576.0,
             (double)c / 1048576.0, (unsigned long long)(usable / per), L);
    if (*n < 1)
        return sw_err(SW_ELIMIT, "not even one block fits: %.1f MiB available, %.1f MiB needed per block "
                      "plus %.1f MiB margin and activations; free memory, lower --max-cache-tokens, "
                      "use --quant nf4, or give --num-blocks", (double)avail / 1048576.0,
                      (double)per / 1048576.0, (double)(margin + act) / 1048576.0);
    return 0;
}

/* ======================================================================== moving (rebalancing) */

static void move_done(serve_t *v)
{
    v->move = MOVE_NONE;
    if (v->stopping)
        maybe_close_node(v);
    else
        schedule_rebalance(v);
}

/* Refuses calls while no span is loaded (an offline move); replaced by the new server's. */
static void refuse_open(sw_p2p_call_t *call, const char *method, void *arg)
{
    sw_p2p_call_cbs_t none = { NULL, NULL, NULL, NULL };

    (void)method;
    (void)arg;
    sw_p2p_call_set_cbs(call, &none, NULL);
    sw_p2p_call_end(call, SW_ESTATE, "this server is moving to other blocks; use another server");
}

static void load_work(uv_work_t *w)
{
    serve_t *v = w->data;

    sw_err_clear();
    v->loaded = NULL;
    v->load_rc = sw_server_load(&v->so, &v->loaded);
    if (v->load_rc < 0)
        snprintf(v->load_err, sizeof(v->load_err), "%s",
                 sw_err_detail()[0] ? sw_err_detail() : sw_strerror(v->load_rc));
}

static void old_closed(void *arg)
{
    serve_t *v = arg;

    v->old = NULL;
    move_done(v);
}

static void old_retired(void *arg)
{
    serve_t *v = arg;
    int a, b;

    sw_server_span(v->old, &a, &b);
    SW_LOG_I("serve", "move: the old span %d:%d is retired (its sessions ended or their grace ran out); "
             "freeing it", a, b);
    sw_p2p_node_unhandle(v->node, v->old);
    sw_server_close(v->old, old_closed, v);
}

/* The new span is loaded and confirmed: it takes new calls; the old one retires. */
static void move_commit(serve_t *v)
{
    sw_server_t *nw = v->loaded;
    int r, a0 = v->start, b0 = v->end, a1, b1;

    v->loaded = NULL;
    if ((r = sw_server_start(nw, &v->loop, v->node)) < 0) {
        SW_LOG_W("serve", "move: cannot start the new span: %s; staying", sw_strerror(r));
        sw_p2p_node_unhandle(v->node, nw);
        sw_server_close(nw, NULL, NULL);
        v->so.start = a0;
        v->so.end = b0;
        move_done(v);
        return;
    }
    v->old = v->srv;
    v->srv = nw;
    sw_server_span(nw, &a1, &b1);
    v->start = a1;
    v->end = b1;
    set_tps(v);
    SW_LOG_I("serve", "moved: blocks %d:%d -> %d:%d (new sessions go to the new span; open ones "
             "on the old may finish for %u s)", a0, b0, a1, b1, v->move_grace_ms / 1000);
    print_serving(v);
    if (v->dht) {
        announce(v, SWARMD__SERVER_INFO__STATE__ONLINE);
        /* the blocks left behind: offline until their records expire */
        if (a0 < a1)
            announce_blocks(v, v->old, SWARMD__SERVER_INFO__STATE__OFFLINE, a0, b0 < a1 ? b0 : a1);
        if (b0 > b1)
            announce_blocks(v, v->old, SWARMD__SERVER_INFO__STATE__OFFLINE, a0 > b1 ? a0 : b1, b0);
    }
    v->move = MOVE_RETIRING;
    sw_server_retire(v->old, v->move_grace_ms, old_retired, v);
}

/* Loading the new span as the old one serves: drop it and stay. */
static void move_abort(serve_t *v, const char *why)
{
    SW_LOG_I("serve", "move to %d:%d called off: %s", v->move_start, v->move_start + (v->end - v->start),
             why);
    if (v->loaded)
        sw_server_close(v->loaded, NULL, NULL);
    v->loaded = NULL;
    v->so.start = v->start;
    v->so.end = v->end;
    move_done(v);
}

static int self_live_spans(serve_t *v);

/* The second read (online move): the move must still hold, to the same place. */
static void confirm_read(swarm_read_t *r, int status)
{
    serve_t *v = r->arg;
    int ns, st = -1, res;
    double q;

    if (v->stopping) {
        move_abort(v, "stopping");
        return;
    }
    if (status < 0) {
        move_abort(v, sw_strerror(status));
        return;
    }
    ns = self_live_spans(v);
    res = sw_should_move(v->rd.spans, ns, v->nblocks, v->id->id.b, v->balance_quality, v->move_seed,
                         &st, &q);
    if (res != 1 || st != v->move_start) {
        move_abort(v, "the swarm changed while the new span loaded");
        return;
    }
    move_commit(v);
}

static void load_after(uv_work_t *w, int status)
{
    serve_t *v = w->data;
    int r;

    v->working = 0;
    if (status < 0 && v->load_rc == 0)
        v->load_rc = status;
    if (v->stopping) {
        if (v->loaded)
            sw_server_close(v->loaded, NULL, NULL);
        v->loaded = NULL;
        v->move = MOVE_NONE;
        maybe_close_node(v);
        return;
    }
    if (v->load_rc < 0) {
        SW_LOG_E("serve", "move: loading blocks %d:%d failed: %s", v->so.start, v->so.end, v->load_err);
        if (v->move_online) {
            move_abort(v, "the new span did not load");
            return;
        }
        /* the old span is gone (offline move): nothing left to serve */
        fprintf(stderr, "swarmd serve: moving to blocks %d:%d failed: %s; restart the server\n",
                v->so.start, v->so.end, v->load_err);
        v->exit_rc = 1;
        v->move = MOVE_NONE;
        v->stopping = 1;
        uv_timer_stop(&v->refresh);
        maybe_close_node(v);
        return;
    }
    if (v->move_online) {
        v->move = MOVE_CONFIRM;
        v->rd.done = confirm_read;
        if ((r = read_start(&v->rd)) < 0)
            move_abort(v, sw_strerror(r));
        return;
    }
    /* offline move: start the new span and announce it joining, then online */
    if ((r = sw_server_start(v->loaded, &v->loop, v->node)) < 0) {
        fprintf(stderr, "swarmd serve: cannot start blocks %d:%d: %s; restart the server\n", v->so.start,
                v->so.end, sw_strerror(r));
        sw_p2p_node_unhandle(v->node, v->loaded);
        sw_server_close(v->loaded, NULL, NULL);
        v->loaded = NULL;
        v->exit_rc = 1;
        v->move = MOVE_NONE;
        v->stopping = 1;
        uv_timer_stop(&v->refresh);
        maybe_close_node(v);
        return;
    }
    sw_p2p_node_unhandle(v->node, v); /* the refusers */
    v->srv = v->loaded;
    v->loaded = NULL;
    sw_server_span(v->srv, &v->start, &v->end);
    set_tps(v);
    SW_LOG_I("serve", "moved (offline): now blocks %d:%d", v->start, v->end);
    print_serving(v);
    v->drained = 0;
    v->move = MOVE_NONE;
    if (v->dht)
        announce(v, SWARMD__SERVER_INFO__STATE__JOINING); /* online (and the next check) follow */
    else
        schedule_rebalance(v);
}

static int start_load(serve_t *v)
{
    int r;

    v->work.data = v;
    v->load_rc = 0;
    v->load_err[0] = '\0';
    if ((r = uv_queue_work(&v->loop, &v->work, load_work, load_after)) < 0)
        return r;
    v->working = 1;
    return 0;
}

static void offline_closed(void *arg)
{
    serve_t *v = arg;
    int r;

    if (v->stopping) {
        v->move = MOVE_NONE;
        maybe_close_node(v);
        return;
    }
    if ((r = start_load(v)) < 0) {
        fprintf(stderr, "swarmd serve: cannot load blocks %d:%d: %s; restart the server\n", v->so.start,
                v->so.end, sw_strerror(r));
        v->exit_rc = 1;
        v->stopping = 1;
        maybe_close_node(v);
    }
}

static void offline_retired(void *arg)
{
    serve_t *v = arg;
    sw_server_t *s = v->srv;

    /* no span until the new one starts: calls get a clear refusal, not a freed server */
    sw_p2p_node_handle(v->node, "info", refuse_open, v);
    sw_p2p_node_handle(v->node, "forward", refuse_open, v);
    sw_p2p_node_handle(v->node, "inference", refuse_open, v);
    sw_p2p_node_handle(v->node, "backward", refuse_open, v);
    sw_p2p_node_unhandle(v->node, s);
    v->srv = NULL;
    sw_server_close(s, offline_closed, v);
}

/* Starts moving the span to [new_start, new_start + n). */
static void move_begin(serve_t *v, int new_start)
{
    uint64_t avail = 0, need;
    int n = v->end - v->start, r;

    v->move_start = new_start;
    v->so.start = new_start;
    v->so.end = new_start + n;
    if (v->so.device.kind == SW_DEVICE_CUDA) {
        Swarmd__ServerInfo m;
        sw_server_info_fill(v->srv, &m);
        avail = m.gpu_memory_free;
        r = m.gpu_memory_total ? 0 : SW_EDEVICE;
    } else {
        r = sw_mem_available(&avail);
    }
    need = (uint64_t)n * v->block_cost + margin_of(avail);
    v->move_online = v->move_mode ? v->move_mode == 1 : r == 0 && v->block_cost > 0 && avail >= need;
    SW_LOG_I("serve", "moving blocks %d:%d -> %d:%d: %s (%.1f MiB free, %.1f MiB for the new span "
             "and the margin)", v->start, v->end, v->so.start, v->so.end,
             v->move_online ? "loading the new span first" : v->move_mode ? "--move-mode offline: "
             "offline, then load" : "not enough memory for both spans: offline, then load",
             (double)avail / 1048576.0, (double)need / 1048576.0);
    if (v->move_online) {
        v->move = MOVE_LOADING;
        if ((r = start_load(v)) < 0)
            move_abort(v, sw_strerror(r));
        return;
    }
    v->move = MOVE_OFFLINE;
    if (v->dht)
        announce(v, SWARMD__SERVER_INFO__STATE__OFFLINE);
    sw_server_retire(v->srv, v->move_grace_ms, offline_retired, v);
}

/* The live spans of the last read, with this server's own span added when its records are
 * missing (a put that reached nobody); returns how many. */
static int self_live_spans(serve_t *v)
{
    int ns = read_live(&v->rd), k;

    for (k = 0; k < ns; k++)
        if (memcmp(v->rd.spans[k].peer, v->id->id.b, 32) == 0)
            break;
    if (k == ns && ns < READ_MAX_PEERS) {
        memcpy(v->rd.spans[ns].peer, v->id->id.b, 32);
        v->rd.spans[ns].tps = v->tps;
        ns++;
    }
    /* what this server is now, whatever its records still say */
    for (k = 0; k < ns; k++)
        if (memcmp(v->rd.spans[k].peer, v->id->id.b, 32) == 0) {
            v->rd.spans[k].start = v->start;
            v->rd.spans[k].end = v->end;
            v->rd.spans[k].tps = v->tps;
        }
    return ns;
}

static void check_read(swarm_read_t *r, int status)
{
    serve_t *v = r->arg;
    int ns, st = -1, res;
    double q = -1;

    v->move = MOVE_NONE;
    if (v->stopping) {
        maybe_close_node(v);
        return;
    }
    if (status < 0) {
        SW_LOG_W("serve", "rebalance: reading the swarm failed: %s; next check later", sw_strerror(status));
        schedule_rebalance(v);
        return;
    }
    ns = self_live_spans(v);
    randombytes_buf(&v->move_seed, sizeof(v->move_seed));
    res = sw_should_move(v->rd.spans, ns, v->nblocks, v->id->id.b, v->balance_quality, v->move_seed,
                         &st, &q);
    if (q >= 0)
        SW_LOG_I("serve", "rebalance: swarm balance quality %.1f%% (%d servers)", 100.0 * q, ns);
    if (res == 1) {
        move_begin(v, st);
        return;
    }
    if (res < 0)
        SW_LOG_W("serve", "rebalance: %s", sw_strerror(res));
    schedule_rebalance(v);
}

static void on_rebalance(uv_timer_t *t)
{
    serve_t *v = t->data;
    int r;

    if (v->stopping || v->move != MOVE_NONE || !v->srv)
        return;
    v->move = MOVE_CHECK;
    v->rd.done = check_read;
    if ((r = read_start(&v->rd)) < 0) {
        v->move = MOVE_NONE;
        schedule_rebalance(v);
    }
}

/* Next check after uniform(0, 2 x period) (Petals' Server.run). */
static void schedule_rebalance(serve_t *v)
{
    uint64_t ms;

    if (!v->auto_layers || !v->dht || !(v->balance_quality > 0) || v->stopping)
        return;
    ms = (uint64_t)randombytes_uniform(2 * v->rebalance_ms + 1);
    uv_timer_start(&v->rebalance, on_rebalance, ms ? ms : 1, 0);
}

/* ======================================================================== signals */

static void on_signal(uv_signal_t *h, int signum)
{
    serve_t *v = h->data;

    if (v->stopping) {
        SW_LOG_W("serve", "second signal: stopping now");
        return;
    }
    v->stopping = 1;
    SW_LOG_I("serve", "%s: no new sessions; finishing steps in flight",
             signum == SIGINT ? "SIGINT" : "SIGTERM");
    uv_timer_stop(&v->refresh);
    uv_timer_stop(&v->rebalance);
    if (v->dht && v->srv)
        announce(v, SWARMD__SERVER_INFO__STATE__OFFLINE);
    /* a server already retiring keeps its done callback; its grace shrinks to --grace */
    if (v->old)
        sw_server_drain(v->old, v->grace_ms, NULL, NULL);
    if (v->srv)
        sw_server_drain(v->srv, v->grace_ms, v->move == MOVE_OFFLINE ? NULL : drained, v);
    maybe_close_node(v);
}

/* ======================================================================== parsing */

static int parse_u64(const char *opt, const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
    char *end;
    unsigned long long v;

    errno = 0;
    v = strtoull(s, &end, 10);
    if (end == s || *end || errno || s[0] == '-' || v < lo || v > hi) {
        fprintf(stderr, "swarmd serve: %s wants a whole number from %llu to %llu, not '%s'\n",
                opt, (unsigned long long)lo, (unsigned long long)hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_layers(const char *s, int *a, int *b)
{
    char *end, *end2;
    long x, y;

    errno = 0;
    x = strtol(s, &end, 10);
    if (end == s || *end != ':' || x < 0 || x > 1000000)
        return -1;
    y = strtol(end + 1, &end2, 10);
    if (end2 == end + 1 || *end2 || errno || y <= x || y > 1000000)
        return -1;
    *a = (int)x;
    *b = (int)y;
    return 0;
}

/* HOST:PORT or [V6]:PORT, port 0..65535 (0: any). */
static int parse_listen(const char *s, sw_addr_t *a)
{
    const char *colon = strrchr(s, ':'), *h = s;
    size_t hl;
    char *end;
    long port;

    memset(a, 0, sizeof(*a));
    if (!colon || colon == s)
        return -1;
    hl = (size_t)(colon - s);
    if (s[0] == '[') {
        if (hl < 3 || colon[-1] != ']')
            return -1;
        h = s + 1;
        hl -= 2;
    } else if (memchr(s, ':', hl)) {
        return -1; /* a bare IPv6 address needs brackets */
    }
    if (hl >= sizeof(a->host))
        return -1;
    errno = 0;
    port = strtol(colon + 1, &end, 10);
    if (end == colon + 1 || *end || errno || port < 0 || port > 65535)
        return -1;
    memcpy(a->host, h, hl);
    a->host[hl] = '\0';
    a->port = (uint16_t)port;
    return 0;
}


/* ======================================================================== start-up: choosing blocks */

/* --serve-layers auto at start-up: a throwaway DHT client on its own loop reads every block. */
typedef struct {
    uv_loop_t loop;
    sw_identity_t id;
    sw_p2p_node_t *node;
    sw_dht_t *dht;
    uv_timer_t deadline;
    swarm_read_t rd;
    int rc, closing;
} pick_t;

static void pick_dht_closed(void *arg)
{
    pick_t *p = arg;
    p->dht = NULL;
    uv_close((uv_handle_t *)&p->deadline, NULL);
}

static void pick_node_closed(void *arg)
{
    pick_t *p = arg;
    p->node = NULL;
    sw_dht_close(p->dht, pick_dht_closed, p);
}

static void pick_finish(pick_t *p, int rc)
{
    if (p->closing)
        return;
    p->closing = 1;
    p->rc = rc;
    uv_timer_stop(&p->deadline);
    sw_p2p_node_close(p->node, pick_node_closed, p);
}

static void pick_deadline(uv_timer_t *t)
{
    pick_t *p = t->data;
    fprintf(stderr, "swarmd serve: --serve-layers auto: reading the DHT timed out\n");
    pick_finish(p, -ETIMEDOUT);
}

static void pick_read_done(swarm_read_t *r, int status)
{
    pick_t *p = r->arg;

    if (p->closing)
        return;
    if (status < 0)
        fprintf(stderr, "swarmd serve: --serve-layers auto: reading block %d failed: %s\n", r->cur,
                sw_strerror(status));
    pick_finish(p, status);
}

static void pick_on_boot(int status, uint32_t peers, void *arg)
{
    pick_t *p = arg;
    int r;

    if (p->closing)
        return;
    if (status < 0 && sw_dht_table_peers(p->dht, NULL, 0) == 0) {
        fprintf(stderr, "swarmd serve: --serve-layers auto: none of the initial peers (nor any saved contact) "
                        "answered; check --initial-peers ('swarmd dht ping ADDR')\n");
        pick_finish(p, status);
        return;
    }
    if ((r = read_start(&p->rd)) < 0)
        pick_finish(p, r);
}

#define SAVED_MAX 32
typedef char saved_addr_t[SW_PEER_ID_TEXT_MAX + SW_DHT_ADDR_MAX];

/*
 * Reads up to SAVED_MAX contacts of the routing table file at path, closest to self first, into
 * out as "PEERID@HOST:PORT", for the throwaway DHT client of --serve-layers auto (which must not
 * write the file). Returns how many; a missing or malformed file gives 0 (sw_dht_new, which
 * loads it again, says why).
 */
static size_t saved_contacts(const char *path, const sw_peer_id_t *self, saved_addr_t *out)
{
    sw_dht_table_t *t = sw_calloc(1, sizeof(*t));
    sw_dht_contact_t *c = sw_calloc(SAVED_MAX, sizeof(*c));
    sw_dht_id_t me;
    size_t n = 0;

    if (t && c) {
        sw_dht_id_of_peer(self, &me);
        sw_dht_table_init(t, &me, SW_DHT_K);
        if (sw_dht_table_load(t, path, 0) == 0)
            n = sw_dht_table_closest(t, &me, c, SAVED_MAX);
        for (size_t i = 0; i < n; i++) {
            char text[SW_PEER_ID_TEXT_MAX];
            sw_peer_id_text(&c[i].peer, text);
            snprintf(out[i], sizeof(out[i]), "%s@%s", text, c[i].addr);
        }
        sw_dht_table_free(t);
    }
    sw_free(c);
    sw_free(t);
    return n;
}

/* Sets *start for `n` of `nblocks` blocks from the swarm's records, read through the initial peers
 * and the contacts saved in table_path (may be NULL). Returns 0 or a negative errno. */
static int pick_blocks(const char **peers, size_t npeers, const char *table_path, const sw_peer_id_t *self,
                       const char *model, int nblocks, int n, int *start)
{
    const char *addrs[64 + SAVED_MAX];
    saved_addr_t *saved = NULL;
    size_t naddrs = 0, nsaved = 0;
    pick_t *p = sw_calloc(1, sizeof(*p));
    sw_dht_opts_t dopt;
    uint8_t key[32];
    double *thr = NULL;
    int r, has_key = 0, ns;

    if (!p)
        return -ENOMEM;
    for (size_t i = 0; i < npeers && i < 64; i++)
        addrs[naddrs++] = peers[i];
    if (table_path && (saved = sw_calloc(SAVED_MAX, sizeof(*saved)))) {
        nsaved = saved_contacts(table_path, self, saved);
        for (size_t i = 0; i < nsaved; i++)
            addrs[naddrs++] = saved[i];
        if (nsaved)
            SW_LOG_I("serve", "auto: reading the swarm through %zu initial peers and %zu saved contacts (%s)",
                     npeers, nsaved, table_path);
    }
    p->rd.model = model;
    p->rd.nblocks = nblocks;
    p->rd.done = pick_read_done;
    p->rd.arg = p;
    if (sw_global_opts.swarm_key) {
        if ((r = sw_swarm_key_load(sw_global_opts.swarm_key, key)) < 0)
            goto out;
        has_key = 1;
    }
    sw_identity_generate(&p->id);
    uv_loop_init(&p->loop);
    r = sw_p2p_node_new(&p->loop, &p->id, has_key ? key : NULL, NULL, &p->node);
    if (r < 0) {
        uv_loop_close(&p->loop);
        goto out;
    }
    sw_dht_opts_default(&dopt);
    dopt.client_mode = 1;
    dopt.swarm_key = has_key ? key : NULL;
    if ((r = sw_dht_new(&p->loop, p->node, &p->id, &dopt, &p->dht)) < 0) {
        sw_p2p_node_close(p->node, NULL, NULL);
        uv_run(&p->loop, UV_RUN_DEFAULT);
        uv_loop_close(&p->loop);
        goto out;
    }
    p->rd.dht = p->dht;
    uv_timer_init(&p->loop, &p->deadline);
    p->deadline.data = p;
    uv_timer_start(&p->deadline, pick_deadline, 60000, 0);
    if ((r = sw_dht_bootstrap(p->dht, addrs, naddrs, pick_on_boot, p)) < 0)
        pick_finish(p, r);
    uv_run(&p->loop, UV_RUN_DEFAULT);
    uv_loop_close(&p->loop);
    if ((r = p->rc) < 0)
        goto out;
    ns = read_live(&p->rd); /* joining and online spans count; offline ones do not */
    r = -ENOMEM;
    if (!(thr = sw_calloc((size_t)nblocks, sizeof(double))))
        goto out;
    if ((r = sw_block_throughputs(p->rd.spans, ns, nblocks, thr)) < 0 ||
        (r = sw_choose_blocks(thr, nblocks, n, start)) < 0)
        goto out;
    SW_LOG_I("serve", "auto: %d joining/online servers of %s; chose blocks %d:%d", ns, model, *start,
             *start + n);
    for (int b = 0; b < nblocks; b++)
        SW_LOG_D("serve", "auto: block %d: %.1f tokens/s", b, thr[b]);
out:
    sodium_memzero(key, sizeof(key));
    sw_identity_wipe(&p->id);
    sw_free(thr);
    sw_free(saved);
    sw_free(p);
    return r;
}

static int fail(const char *what, int r)
{
    const char *d = sw_err_detail();

    fprintf(stderr, "swarmd serve: %s: %s\n", what, d[0] ? d : sw_strerror(r));
    return 1;
}

/* ======================================================================== config file */

#define CONFIG_MAX_BYTES (1u << 20)
#define CONFIG_MAX_ARGS 256

/*
 * Reads `key = value` lines of path into argv form ("--key", "value", or "--key" alone for a
 * flag set to true; a flag set to false is left out), for getopt before the command line's own
 * options, so those override it. 'identity' and 'swarm-key' set the global options unless the
 * command line gave them. Every string in *args is the caller's (config_free).
 */
static char cfg_identity[4096], cfg_swarm_key[4096];

static void config_free(char **args, int n)
{
    for (int i = 0; args && i < n; i++)
        sw_free(args[i]);
    sw_free(args);
}

static int config_load(const char *path, const struct option *opts, char ***args, int *nargs)
{
    char *t = NULL, *line, *save = NULL;
    char **a = NULL;
    size_t len = 0;
    int n = 0, r = 0;

    if ((r = sw_file_read(path, CONFIG_MAX_BYTES, &t, &len)) < 0)
        return r;
    if (strlen(t) != len) {
        sw_free(t);
        return sw_err(SW_EFORMAT, "%s: a NUL byte in a text file", path);
    }
    a = sw_calloc(CONFIG_MAX_ARGS, sizeof(char *));
    if (!a) {
        sw_free(t);
        return -ENOMEM;
    }
    for (line = strtok_r(t, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *k = line, *eq, *val, *e;
        const struct option *o;
        while (*k == ' ' || *k == '\t')
            k++;
        if (!*k || *k == '#' || *k == '\r')
            continue;
        eq = strchr(k, '=');
        if (!eq) {
            r = sw_err(SW_EFORMAT, "%s: line '%.60s' is not 'key = value'", path, k);
            goto err;
        }
        for (e = eq; e > k && (e[-1] == ' ' || e[-1] == '\t'); e--)
            ;
        *e = '\0';
        val = eq + 1;
        while (*val == ' ' || *val == '\t')
            val++;
        for (e = val + strlen(val); e > val && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'); e--)
            ;
        *e = '\0';
        if (e - val >= 2 && ((val[0] == '"' && e[-1] == '"') || (val[0] == '\'' && e[-1] == '\''))) {
            e[-1] = '\0';
            val++;
        }
        if (strcmp(k, "identity") == 0 || strcmp(k, "swarm-key") == 0) {
            int ident = k[0] == 'i';
            const char **g = ident ? &sw_global_opts.identity : &sw_global_opts.swarm_key;
            char *buf = ident ? cfg_identity : cfg_swarm_key;
            if (strlen(val) >= sizeof(cfg_identity)) {
                r = sw_err(SW_ELIMIT, "%s: the %s path is too long", path, k);
                goto err;
            }
            if (!*g) {
                snprintf(buf, sizeof(cfg_identity), "%s", val);
                *g = buf;
            }
            continue;
        }
        for (o = opts; o->name; o++)
            if (strcmp(o->name, k) == 0)
                break;
        if (!o->name || strcmp(k, "config") == 0 || strcmp(k, "help") == 0) {
            r = sw_err(SW_EUSAGE, "%s: unknown setting '%.60s' (the keys are serve's long options; see "
                       "swarmd serve --help)", path, k);
            goto err;
        }
        if (n + 2 >= CONFIG_MAX_ARGS) {
            r = sw_err(SW_ELIMIT, "%s: more than %d settings", path, CONFIG_MAX_ARGS / 2 - 1);
            goto err;
        }
        if (o->has_arg == no_argument) {
            int yes = !strcmp(val, "true") || !strcmp(val, "yes") || !strcmp(val, "1");
            if (!yes && strcmp(val, "false") && strcmp(val, "no") && strcmp(val, "0")) {
                r = sw_err(SW_EUSAGE, "%s: '%s' wants true or false, not '%.60s'", path, k, val);
                goto err;
            }
            if (!yes)
                continue;
        }
        if (!(a[n] = sw_malloc(strlen(k) + 3))) {
            r = -ENOMEM;
            goto err;
        }
        snprintf(a[n++], strlen(k) + 3, "--%s", k);
        if (o->has_arg != no_argument && !(a[n++] = sw_strdup(val))) {
            r = -ENOMEM;
            goto err;
        }
    }
    sw_free(t);
    *args = a;
    *nargs = n;
    return 0;
err:
    config_free(a, n);
    sw_free(t);
    return r;
}

/* ======================================================================== the command */

static int parse_seconds(const char *opt, const char *s, double lo, double hi, double *out)
{
    char *end;
    double x;

    errno = 0;
    x = strtod(s, &end);
    if (end == s || *end || errno || !(x >= lo) || x > hi) {
        fprintf(stderr, "swarmd serve: %s wants seconds from %g to %g, not '%s'\n", opt, lo, hi, s);
        return -1;
    }
    *out = x;
    return 0;
}

/* Measures on the loaded (not yet started) server: the callback of sw_tput_get. */
static int measure_cb(void *arg, sw_tput_t *out)
{
    serve_t *v = arg;

    SW_LOG_I("serve", "measuring the throughput of one block (about 2 s)");
    return sw_server_measure(v->srv, 2.0, &out->forward_rps, &out->inference_rps);
}

int sw_cmd_serve(int argc, char **argv)
{
    static const struct option opts[] = {
        { "model", required_argument, NULL, 'm' },
        { "serve-layers", required_argument, NULL, 'l' },
        { "listen", required_argument, NULL, 'a' },
        { "quant", required_argument, NULL, 'Q' },
        { "int8-threshold", required_argument, NULL, 'X' },
        { "max-cache-tokens", required_argument, NULL, 'c' },
        { "max-batch-tokens", required_argument, NULL, 'b' },
        { "max-backward-tokens", required_argument, NULL, 'k' },
        { "session-timeout", required_argument, NULL, 't' },
        { "grace", required_argument, NULL, 'g' },
        { "initial-peers", required_argument, NULL, 'p' },
        { "new-swarm", no_argument, NULL, 'n' },
        { "announce", required_argument, NULL, 'A' },
        { "model-name", required_argument, NULL, 'M' },
        { "public-name", required_argument, NULL, 'P' },
        { "num-blocks", required_argument, NULL, 'N' },
        { "block-selection-delay", required_argument, NULL, 'D' },
        { "device", required_argument, NULL, 'd' },
        { "throughput", required_argument, NULL, 'T' },
        { "network-mbps", required_argument, NULL, 'W' },
        { "balance-quality", required_argument, NULL, 'B' },
        { "rebalance-period", required_argument, NULL, 'R' },
        { "move-grace", required_argument, NULL, 'G' },
        { "move-mode", required_argument, NULL, 'O' },
        { "refresh", required_argument, NULL, 'F' },
        { "expiry", required_argument, NULL, 'E' },
        { "config", required_argument, NULL, 'C' },
        { "table", required_argument, NULL, 'K' },
        { "no-reachability-check", no_argument, NULL, 'r' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *peers[64], *announce_opt = NULL, *config = NULL, *tput_opt = "auto", *table_opt = NULL;
    char table_path[4096] = "";
    int num_blocks = 0, force_eval = 0;
    double sel_delay = 1.0, fixed_tps = 0, mbps = 100, secs;
    char *peers_buf = NULL, model_name[128], **cfg_args = NULL, **av = NULL;
    size_t npeers = 0;
    int new_swarm = 0, cfg_n = 0, ac = 0;
    sw_load_opts_t lo = SW_LOAD_OPTS_DEFAULT;
    const char *listen = "0.0.0.0:31330";
    serve_t *v;
    sw_identity_t id;
    sw_addr_t addr;
    uint8_t key[32];
    char *path = NULL, pid[SW_PEER_ID_TEXT_MAX], sid[SW_PEER_ID_SHORT_MAX], cpu[160];
    uint64_t u;
    int c, r, have_layers = 0, rc = 2;

    v = sw_calloc(1, sizeof(*v));
    if (!v)
        return 1;
    memset(&id, 0, sizeof(id));
    memset(key, 0, sizeof(key));
    v->grace_ms = 10000;
    v->refresh_ms = 20000;
    v->ttl_ms = 60000;
    v->balance_quality = 0.75;
    v->rebalance_ms = 60000;
    v->move_grace_ms = 60000;
    v->exit_rc = 0;
    v->reach_check = 1;
    /* --config first: its settings go before the command line's, which override them */
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
            config = argv[i + 1];
        else if (strncmp(argv[i], "--config=", 9) == 0)
            config = argv[i] + 9;
        else if (strcmp(argv[i], "--") == 0)
            break;
    }
    if (config) {
        if ((r = config_load(config, opts, &cfg_args, &cfg_n)) < 0) {
            fprintf(stderr, "swarmd serve: --config: %s\n", sw_err_detail()[0] ? sw_err_detail() : sw_strerror(r));
            goto out_free;
        }
    }
    av = sw_calloc((size_t)argc + (size_t)cfg_n + 1, sizeof(char *));
    if (!av) {
        rc = 1;
        goto out_free;
    }
    av[ac++] = argv[0];
    for (int i = 0; i < cfg_n; i++)
        av[ac++] = cfg_args[i];
    for (int i = 1; i < argc; i++)
        av[ac++] = argv[i];
    optind = 0;
    while ((c = getopt_long(ac, av, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': v->so.model_dir = optarg; break;
        case 'l':
            if (strcmp(optarg, "auto") == 0) {
                v->auto_layers = 1;
            } else if (parse_layers(optarg, &v->so.start, &v->so.end) < 0) {
                fprintf(stderr, "swarmd serve: --serve-layers wants A:B with 0 <= A < B, such as "
                                "0:8, or auto, not '%s'\n", optarg);
                goto out_free;
            } else {
                v->auto_layers = 0;
            }
            have_layers = 1;
            break;
        case 'N':
            if (parse_u64("--num-blocks", optarg, 1, 1000000, &u) < 0)
                goto out_free;
            num_blocks = (int)u;
            break;
        case 'D':
            if (parse_seconds("--block-selection-delay", optarg, 0, 3600, &sel_delay) < 0)
                goto out_free;
            break;
        case 'd':
            if (sw_device_parse(optarg, &v->so.device) < 0) {
                fprintf(stderr, "swarmd serve: %s\n", sw_err_detail());
                goto out_free;
            }
            break;
        case 'T':
            tput_opt = optarg;
            force_eval = 0;
            fixed_tps = 0;
            if (strcmp(optarg, "eval") == 0) {
                force_eval = 1;
            } else if (strcmp(optarg, "auto") != 0) {
                char *end;
                fixed_tps = strtod(optarg, &end);
                if (end == optarg || *end || !(fixed_tps > 0) || fixed_tps > 1e12) {
                    fprintf(stderr, "swarmd serve: --throughput wants auto, eval or tokens/s (> 0), "
                                    "not '%s'\n", optarg);
                    goto out_free;
                }
            }
            break;
        case 'W':
            v->mbps_given = 1;
            if (parse_seconds("--network-mbps", optarg, 0.001, 1e7, &mbps) < 0)
                goto out_free;
            break;
        case 'B': {
            char *end;
            v->balance_quality = strtod(optarg, &end);
            if (end == optarg || *end || !(v->balance_quality >= 0) || v->balance_quality > 100) {
                fprintf(stderr, "swarmd serve: --balance-quality wants a number from 0 to 100 (0.75: "
                                "Petals' default), not '%s'\n", optarg);
                goto out_free;
            }
            break;
        }
        case 'R':
            if (parse_seconds("--rebalance-period", optarg, 0.1, 86400, &secs) < 0)
                goto out_free;
            v->rebalance_ms = (uint32_t)(secs * 1000);
            break;
        case 'G':
            if (parse_seconds("--move-grace", optarg, 0, 86400, &secs) < 0)
                goto out_free;
            v->move_grace_ms = (uint32_t)(secs * 1000);
            break;
        case 'O':
            if (strcmp(optarg, "auto") == 0) {
                v->move_mode = 0;
            } else if (strcmp(optarg, "online") == 0) {
                v->move_mode = 1;
            } else if (strcmp(optarg, "offline") == 0) {
                v->move_mode = 2;
            } else {
                fprintf(stderr, "swarmd serve: --move-mode wants auto, online or offline, not '%s'\n", optarg);
                goto out_free;
            }
            break;
        case 'F':
            if (parse_seconds("--refresh", optarg, 0.1, 86400, &secs) < 0)
                goto out_free;
            v->refresh_ms = (uint32_t)(secs * 1000);
            break;
        case 'E':
            if (parse_seconds("--expiry", optarg, 0.2, 86400, &secs) < 0)
                goto out_free;
            v->ttl_ms = (uint32_t)(secs * 1000);
            break;
        case 'C': break; /* read above */
        case 'K':
            if (!optarg[0] || strlen(optarg) >= sizeof(table_path)) {
                fprintf(stderr, "swarmd serve: --table wants a file path (at most %zu bytes)\n",
                        sizeof(table_path) - 1);
                goto out_free;
            }
            table_opt = optarg;
            break;
        case 'r': v->reach_check = 0; break;
        case 'a': listen = optarg; break;
        case 'Q':
            if (sw_quant_parse(optarg, &lo.quant) < 0) {
                fprintf(stderr, "swarmd serve: %s\n", sw_err_detail());
                goto out_free;
            }
            break;
        case 'X': {
            char *end;
            lo.int8_threshold = strtof(optarg, &end);
            if (end == optarg || *end || !(lo.int8_threshold >= 0.0f) || lo.int8_threshold > 1e6f) {
                fprintf(stderr, "swarmd serve: --int8-threshold wants a number >= 0, not '%s'\n",
                        optarg);
                goto out_free;
            }
            break;
        }
        case 'c':
            if (parse_u64("--max-cache-tokens", optarg, 1, (uint64_t)1 << 40, &u) < 0)
                goto out_free;
            v->so.max_cache_tokens = u;
            break;
        case 'b':
            if (parse_u64("--max-batch-tokens", optarg, 1, 1 << 24, &u) < 0)
                goto out_free;
            v->so.max_batch_tokens = (uint32_t)u;
            break;
        case 'k':
            if (parse_u64("--max-backward-tokens", optarg, 1, 1 << 24, &u) < 0)
                goto out_free;
            v->so.max_backward_tokens = (uint32_t)u;
            break;
        case 't':
            if (parse_u64("--session-timeout", optarg, 1, 86400, &u) < 0)
                goto out_free;
            v->so.idle_timeout_ms = (uint32_t)u * 1000;
            break;
        case 'g':
            if (parse_u64("--grace", optarg, 0, 3600, &u) < 0)
                goto out_free;
            v->grace_ms = (uint32_t)u * 1000;
            break;
        case 'p': {
            char *save = NULL, *tok;
            sw_free(peers_buf);
            npeers = 0;
            if (!(peers_buf = sw_strdup(optarg))) {
                rc = 1;
                goto out_free;
            }
            for (tok = strtok_r(peers_buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
                sw_addr_t pa;
                if (sw_addr_parse(tok, &pa) < 0 || npeers == 64) {
                    fprintf(stderr, "swarmd serve: --initial-peers: '%s' is not PEERID@HOST:PORT or "
                                    "HOST:PORT (64 at most)\n", tok);
                    goto out_free;
                }
                peers[npeers++] = tok;
            }
            break;
        }
        case 'n': new_swarm = 1; break;
        case 'A':
            if (!sw_dht_addr_ok(optarg)) {
                fprintf(stderr, "swarmd serve: --announce wants HOST:PORT, not '%s'\n", optarg);
                goto out_free;
            }
            announce_opt = optarg;
            break;
        case 'M':
            if (!optarg[0] || strlen(optarg) >= 100) {
                fprintf(stderr, "swarmd serve: --model-name wants a name of 1 to 99 bytes\n");
                goto out_free;
            }
            v->model_name = optarg;
            break;
        case 'P': v->public_name = optarg; break;
        case 'h': serve_usage(stdout); rc = 0; goto out_free;
        default: serve_usage(stderr); goto out_free;
        }
    }
    if (new_swarm && npeers) {
        fprintf(stderr, "swarmd serve: give either --new-swarm or --initial-peers, not both\n");
        goto out_free;
    }
    if (!v->so.model_dir || !have_layers || optind != ac) {
        fprintf(stderr, "swarmd serve: --model and --serve-layers are required\n\n");
        serve_usage(stderr);
        goto out_free;
    }
    if (v->auto_layers && !npeers && !new_swarm) {
        fprintf(stderr, "swarmd serve: --serve-layers auto reads the swarm: give --initial-peers (or "
                        "--new-swarm)\n");
        goto out_free;
    }
    if (num_blocks && !v->auto_layers) {
        fprintf(stderr, "swarmd serve: --num-blocks goes with --serve-layers auto\n");
        goto out_free;
    }
    if (v->ttl_ms <= v->refresh_ms) {
        fprintf(stderr, "swarmd serve: --expiry (%.1f s) must be longer than --refresh (%.1f s), or "
                        "announcements lapse between refreshes\n", v->ttl_ms / 1000.0, v->refresh_ms / 1000.0);
        goto out_free;
    }
    if (parse_listen(listen, &addr) < 0) {
        fprintf(stderr, "swarmd serve: --listen wants HOST:PORT or [V6]:PORT, not '%s'\n", listen);
        goto out_free;
    }
    rc = 1;
    if ((r = sw_device_check(&v->so.device)) < 0) {
        rc = fail("--device", r);
        goto out_free;
    }
    if (!v->model_name) {
        if ((r = sw_model_swarm_name(v->so.model_dir, model_name, sizeof(model_name))) < 0) {
            rc = fail("--model-name", r);
            goto out_free;
        }
        v->model_name = model_name;
    }
    v->so.load = lo;
    v->so.ops = strcmp(sw_global_opts.backend, "reference") == 0 ? &sw_ops_ref : &sw_ops_cpu;
    sw_cpu_label(sw_global_opts.threads, cpu, sizeof(cpu));
    v->so.device_name = cpu;
    {
        sw_model_config_t mc;
        if ((r = sw_model_config_load(v->so.model_dir, &mc)) < 0) {
            rc = fail("cannot read config.json", r);
            goto out_free;
        }
        v->nblocks = mc.num_layers;
    }
    /* identity and swarm key, as `swarmd id` loads them; the routing table file beside the
     * identity, named as `swarmd dht serve` names it */
    if (sw_global_opts.identity) {
        path = sw_strdup(sw_global_opts.identity);
        if (!path) {
            rc = fail("out of memory", -ENOMEM);
            goto out_free;
        }
    } else if ((r = sw_identity_default_path(&path)) < 0) {
        rc = fail("no identity file", r);
        goto out_free;
    }
    r = sw_identity_load_or_create(path, &id);
    if (r == 0 && (npeers || new_swarm)) {
        size_t n = strlen(path);
        if (table_opt)
            snprintf(table_path, sizeof(table_path), "%s", table_opt);
        else if (!sw_global_opts.identity && n >= 8 && strcmp(path + n - 8, "identity") == 0)
            snprintf(table_path, sizeof(table_path), "%.*sdht-table", (int)(n - 8), path);
        else if (n + 11 < sizeof(table_path))
            snprintf(table_path, sizeof(table_path), "%s.dht-table", path);
    }
    sw_free(path);
    if (r < 0) {
        rc = fail("cannot load the identity", r);
        goto out_free;
    }
    if (v->auto_layers) {
        uint64_t w, cc, avail;
        if (num_blocks > v->nblocks) {
            fprintf(stderr, "swarmd serve: --num-blocks %d: the model has %d blocks\n", num_blocks, v->nblocks);
            rc = 2;
            goto out_free;
        }
        if (!num_blocks && (r = default_num_blocks(&v->so, v->nblocks, &num_blocks)) < 0) {
            rc = fail("--num-blocks", r);
            goto out_free;
        }
        if (block_cost(&v->so, &v->block_cost, &w, &cc, &avail) < 0)
            v->block_cost = 0; /* unknown: every move is made offline */
        if (sel_delay > 0) {
            double d = 2.0 * sel_delay * ((double)randombytes_uniform(1000001) / 1000000.0);
            struct timespec ts = { (time_t)d, (long)((d - (double)(time_t)d) * 1e9) };
            SW_LOG_I("serve", "auto: waiting %.2f s before choosing blocks", d);
            while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
        }
        if (new_swarm) {
            v->so.start = 0; /* a new swarm has no records: every block is a gap */
        } else if ((r = pick_blocks(peers, npeers, table_path[0] ? table_path : NULL, &id.id, v->model_name,
                                    v->nblocks, num_blocks, &v->so.start)) < 0) {
            rc = fail("--serve-layers auto: cannot choose blocks", r);
            goto out_free;
        }
        v->so.end = v->so.start + num_blocks;
    }
    v->start = v->so.start;
    v->end = v->so.end;
    v->id = &id;
    v->rd.model = v->model_name;
    v->rd.nblocks = v->nblocks;
    v->rd.arg = v;

    if (sw_global_opts.swarm_key && (r = sw_swarm_key_load(sw_global_opts.swarm_key, key)) < 0) {
        rc = fail("cannot load the swarm key", r);
        goto out_free;
    }
    sw_peer_id_text(&id.id, pid);
    sw_peer_id_short(&id.id, sid);
    sw_log_set_peer(sid);

    uv_loop_init(&v->loop);
    r = sw_p2p_node_new(&v->loop, &id, sw_global_opts.swarm_key ? key : NULL, NULL, &v->node);
    if (r < 0) {
        rc = fail("cannot start the p2p node", r);
        goto out_loop;
    }
    r = sw_server_load(&v->so, &v->srv);
    if (r < 0) {
        rc = fail("cannot load the blocks", r);
        goto out_node;
    }
    {
        Swarmd__ServerInfo m;
        char tkey[512], dir[4096];
        sw_tput_t t = { 0, 0 };
        sw_server_info_fill(v->srv, &m);
        if (fixed_tps > 0) {
            SW_LOG_I("serve", "throughput: --throughput %s (not measured)", tput_opt);
        } else if (!npeers && !new_swarm) {
            SW_LOG_I("serve", "throughput: not measured (nothing is announced)");
        } else if ((r = sw_tput_key(m.device, v->so.model_dir, m.format, tkey, sizeof(tkey))) < 0 ||
                   (r = sw_tput_get(sw_tput_cache_dir(dir, sizeof(dir)) == 0 ? dir : NULL, tkey, force_eval,
                                    measure_cb, v, &t)) < 0) {
            rc = fail("cannot measure the throughput", r);
            goto out_srv;
        } else {
            SW_LOG_I("serve", "throughput of one block on %s (%s): forward %.1f, decode %.1f tokens/s (%s)",
                     m.device, m.format, t.forward_rps, t.inference_rps, r == 1 ? "cached" : "measured");
        }
        v->forward_rps = t.forward_rps;
        v->inference_rps = t.inference_rps;
        /* a request uses (n + 1) / 2 of the span's n blocks on average (Petals) */
        v->fixed_tps = fixed_tps;
        v->mbps = mbps;
        v->hidden = (int)m.hidden_size;
        set_tps(v);
        SW_LOG_I("serve", "throughput %.1f tokens/s (network bound %.1f at %g Mbit/s%s)", v->tps,
                 v->network_rps, mbps, v->mbps_given ? ", --network-mbps" : "; the uplink is measured after joining");
    }
    if ((r = sw_server_start(v->srv, &v->loop, v->node)) < 0) {
        rc = fail("cannot start serving", r);
        goto out_srv;
    }
    if ((r = sw_p2p_probe_serve(v->node)) < 0) { /* peers measure their upload to us */
        rc = fail("cannot start serving", r);
        goto out_srv;
    }
    v->peers = peers;
    v->npeers = npeers;
    r = sw_p2p_node_listen(v->node, addr.host, addr.port, &v->port);
    if (r < 0) {
        rc = fail("cannot listen", r);
        goto out_srv;
    }
    snprintf(v->listen_host, sizeof(v->listen_host), "%s", addr.host);
    uv_timer_init(&v->loop, &v->refresh);
    v->refresh.data = v;
    uv_timer_init(&v->loop, &v->rebalance);
    v->rebalance.data = v;
    {
        char h[64], ann[SW_DHT_ADDR_MAX];
        int wild = strcmp(addr.host, "0.0.0.0") == 0 || strcmp(addr.host, "::") == 0 || !addr.host[0];
        if (announce_opt)
            snprintf(ann, sizeof(ann), "%s", announce_opt);
        else if (wild)
            snprintf(ann, sizeof(ann), "%s:%d", sw_addr_guess_host(h, sizeof(h)) ? h : "127.0.0.1",
                     v->port);
        else if (strchr(addr.host, ':'))
            snprintf(ann, sizeof(ann), "[%.100s]:%d", addr.host, v->port);
        else
            snprintf(ann, sizeof(ann), "%.100s:%d", addr.host, v->port);
        snprintf(v->address, sizeof(v->address), "%s@%s", pid, ann);
        snprintf(v->announced, sizeof(v->announced), "%s", ann);
        if (npeers || new_swarm) {
            sw_dht_opts_t dopt;
            uint8_t dkey[32];
            int has_key = sw_global_opts.swarm_key && sw_swarm_key_load(sw_global_opts.swarm_key, dkey) == 0;
            sw_dht_opts_default(&dopt);
            dopt.announce_addr = ann;
            dopt.swarm_key = has_key ? dkey : NULL;
            dopt.table_path = table_path[0] ? table_path : NULL;
            dopt.reachability_check = v->reach_check;
            r = sw_dht_new(&v->loop, v->node, &id, &dopt, &v->dht);
            sodium_memzero(dkey, sizeof(dkey));
            if (r == 0)
                SW_LOG_I("serve", "DHT: %zu saved contacts from %s; %s", sw_dht_table_peers(v->dht, NULL, 0),
                         table_path[0] ? table_path : "(no table file)",
                         v->reach_check ? "peers will be asked to connect back before announcing"
                                        : "--no-reachability-check: announcing without asking peers to connect back");
            if (r < 0 || (r = sw_dht_bootstrap(v->dht, peers, npeers, on_boot, v)) < 0) {
                rc = fail("cannot start the DHT", r);
                uv_close((uv_handle_t *)&v->refresh, NULL);
                uv_close((uv_handle_t *)&v->rebalance, NULL);
                goto out_srv;
            }
            v->rd.dht = v->dht;
        } else {
            SW_LOG_I("serve", "no --initial-peers or --new-swarm: not announcing on the DHT");
        }
    }
    uv_signal_init(&v->loop, &v->sigint);
    uv_signal_init(&v->loop, &v->sigterm);
    v->sigint.data = v->sigterm.data = v;
    uv_signal_start(&v->sigint, on_signal, SIGINT);
    uv_signal_start(&v->sigterm, on_signal, SIGTERM);
    print_serving(v);
    uv_run(&v->loop, UV_RUN_DEFAULT);
    SW_LOG_I("serve", "stopped");
    rc = v->srv || v->node ? 1 : v->exit_rc;
    goto out_loop;
out_srv:
    sw_server_close(v->srv, NULL, NULL);
out_node:
    sw_p2p_node_close(v->node, NULL, NULL);
    uv_run(&v->loop, UV_RUN_DEFAULT);
    if (v->dht) {
        sw_dht_close(v->dht, NULL, NULL);
        uv_run(&v->loop, UV_RUN_DEFAULT);
    }
out_loop:
    uv_loop_close(&v->loop);
out_free:
    sodium_memzero(key, sizeof(key));
    sw_identity_wipe(&id);
    sw_free(peers_buf);
    sw_free(av);
    config_free(cfg_args, cfg_n);
    sw_free(v);
    return rc;
}
