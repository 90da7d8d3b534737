/*
 * cmd_serve.c - `swarmd serve`: load a span of blocks and serve it to peers over the secure
 * transport (pipeline/server.h) until SIGINT/SIGTERM.
 *
 * Runs the libuv loop on the main thread; compute runs on the server's executor thread.
 * Shutdown: the first signal stops new sessions and forward calls, lets steps in flight finish
 * for --grace seconds, ends the open sessions with an error, closes the node and exits 0.
 *
 * DHT (with --initial-peers or --new-swarm): a DHT joins the swarm on the same p2p node, and each
 * served block b gets a ServerInfo record (proto/swarmd.proto) under "<model-name>.<b>" with this
 * server's owned subkey: first state joining, then online, refreshed every 20 s with a 60 s
 * expiry, and offline on SIGINT/SIGTERM (the node closes once those puts are answered and the
 * steps in flight are done). Without either option it serves without announcing and says so.
 *
 * --serve-layers auto --num-blocks N (needs --initial-peers): after a random delay (uniform in
 * 0..2*--block-selection-delay, so servers started together pick apart), a throwaway DHT client
 * reads the records of every block (the count from config.json), sums the throughput of each
 * joining/online peer's span per block (daemon/blocks.h, peer-id order), and takes the window of
 * N blocks Petals' rule picks (weakest blocks first, gaps before all). Then it loads and serves
 * that span. (Rebalancing and a default N from free memory come later.)
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>
#include <uv.h>

#include "blocks.h"
#include "commands.h"
#include "p2p/dht.h"
#include "p2p/dht_internal.h"
#include "p2p/identity.h"
#include "p2p/rpc.h"
#include "pipeline/config.h"
#include "pipeline/server.h"
#include "swarmd.pb-c.h"
#include "util/alloc.h"
#include "util/error.h"
#include "util/log.h"

int sw_cmd_serve(int argc, char **argv);

static void serve_usage(FILE *f)
{
    fprintf(f,
            "Usage: swarmd [global options] serve --model DIR --serve-layers A:B|auto [options]\n"
            "\n"
            "Loads transformer blocks A..B-1 of the model and serves them to peers: info,\n"
            "forward and inference-session calls over the encrypted transport. Prints one line,\n"
            "\"serving blocks A:B of MODEL at PEERID@HOST:PORT\", once it accepts calls. SIGINT or\n"
            "SIGTERM stops it: no new sessions, steps in flight finish (up to --grace), exit 0.\n"
            "\n"
            "  --model DIR              Hugging Face checkpoint directory\n"
            "  --serve-layers A:B       the blocks to serve, [A, B) (0-based)\n"
            "  --serve-layers auto      read the swarm's DHT (needs --initial-peers) and take the\n"
            "                           --num-blocks blocks where its throughput is lowest (gaps\n"
            "                           first; Petals' rule), then load and serve them\n"
            "  --num-blocks N           how many blocks 'auto' takes (required for now; a default\n"
            "                           from free memory comes later)\n"
            "  --block-selection-delay S  before choosing, wait a random 0..2*S seconds so that\n"
            "                           servers started together pick apart (default 1; 0: none)\n"
            "  --listen HOST:PORT       address to listen on (default 0.0.0.0:31330; port 0: any)\n"
            "  --quant Q                weight format: nf4, int8 or none (default: as stored)\n"
            "  --int8-threshold T       LLM.int8() outlier threshold (default 6.0)\n"
            "  --max-cache-tokens N     KV cache budget in positions (batch x length) over all\n"
            "                           sessions (default %d)\n"
            "  --max-batch-tokens N     most batch x tokens of one call or step (default %d)\n"
            "  --session-timeout S      end an inference session idle for S seconds (default %d)\n"
            "  --grace S                seconds in-flight steps get at shutdown (default 10)\n"
            "  --initial-peers ADDR,... join the swarm's DHT through these nodes and announce the\n"
            "                           blocks (PEERID@HOST:PORT or HOST:PORT)\n"
            "  --new-swarm              start a new swarm: the DHT with no initial peers\n"
            "                           (without --initial-peers or --new-swarm the server does not\n"
            "                           announce itself: only peers given its address can use it)\n"
            "  --announce HOST:PORT     the address peers reach this server at (default: --listen;\n"
            "                           for 0.0.0.0 the first non-loopback IPv4 address)\n"
            "  --model-name NAME        the model's name in the swarm (default: the model\n"
            "                           directory's last component, '.' replaced by '-')\n"
            "  --public-name NAME       a name shown by 'swarmd status'\n"
            "  -h, --help               this help\n",
            SW_SERVER_DEFAULT_CACHE_TOKENS, SW_SERVER_DEFAULT_BATCH_TOKENS,
            SW_SERVER_DEFAULT_IDLE_MS / 1000);
}

typedef struct {
    uv_loop_t loop;
    uv_signal_t sigint, sigterm;
    sw_p2p_node_t *node;
    sw_server_t *srv;
    uint32_t grace_ms;
    int stopping;
    /* DHT announcements */
    sw_dht_t *dht;
    uv_timer_t refresh;
    sw_identity_t *id;
    const char *model_name, *public_name;
    char address[SW_PEER_ID_TEXT_MAX + SW_DHT_ADDR_MAX];
    double tps, forward_rps, inference_rps, network_rps;
    int state, puts_pending, drained;
    int start, end;
    uint64_t last_exp; /* expiration of the previous announcement */
} serve_t;

#define ANNOUNCE_TTL_MS 60000
#define ANNOUNCE_EVERY_MS 20000

static void refresh_closed(uv_handle_t *h)
{
    (void)h;
}

static void server_closed(void *arg)
{
    serve_t *v = arg;

    v->srv = NULL;
    uv_close((uv_handle_t *)&v->sigint, NULL);
    uv_close((uv_handle_t *)&v->sigterm, NULL);
    uv_close((uv_handle_t *)&v->refresh, refresh_closed);
}

static void dht_closed(void *arg)
{
    serve_t *v = arg;

    v->dht = NULL;
    sw_server_close(v->srv, server_closed, v);
}

static void node_closed(void *arg)
{
    serve_t *v = arg;

    v->node = NULL;
    if (v->dht)
        sw_dht_close(v->dht, dht_closed, v);
    else
        sw_server_close(v->srv, server_closed, v);
}

static void maybe_close_node(serve_t *v)
{
    if (v->stopping && v->drained && v->puts_pending == 0 && v->node)
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

static void announce(serve_t *v, int state);

static void on_put(int status, uint32_t stored, const sw_dht_lookup_info_t *info, void *arg)
{
    serve_t *v = arg;

    (void)info;
    v->puts_pending--;
    if (status < 0 || stored == 0)
        SW_LOG_W("serve", "a %s announcement reached no DHT node (%s)", state_name(v->state),
                 status < 0 ? sw_strerror(status) : "none took it");
    if (v->puts_pending > 0)
        return;
    if (v->stopping) {
        maybe_close_node(v);
    } else if (v->state == SWARMD__SERVER_INFO__STATE__JOINING) {
        announce(v, SWARMD__SERVER_INFO__STATE__ONLINE);
    }
}

/* Puts this server's ServerInfo for each of its blocks. */
static void announce(serve_t *v, int state)
{
    uint8_t subkey[SW_DHT_OWNED_SUBKEY_LEN], buf[2048], digest[32];
    char key[SW_DHT_KEY_MAX];
    uint64_t exp = sw_dht_now_ms() + ANNOUNCE_TTL_MS;
    Swarmd__ServerInfo m;
    size_t n;
    int r;

    /*
     * Later expiration wins and an equal one keeps the record a node already has, so each
     * announcement must expire strictly later than the one before: "online" right after
     * "joining" often falls in the same millisecond on a fast network.
     */
    if (exp <= v->last_exp)
        exp = v->last_exp + 1;
    v->last_exp = exp;
    v->state = state;
    sw_dht_owned_subkey(&v->id->id, subkey);
    sw_server_info_fill(v->srv, &m);
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
    for (int b = v->start; b < v->end; b++) {
        sw_server_block_digest(v->srv, b, digest);
        m.weights_digest.data = digest;
        m.weights_digest.len = sizeof(digest);
        n = swarmd__server_info__get_packed_size(&m);
        if (n > sizeof(buf)) {
            SW_LOG_W("serve", "the announcement of block %d is %zu bytes, more than %zu", b, n,
                     sizeof(buf));
            continue;
        }
        n = swarmd__server_info__pack(&m, buf);
        snprintf(key, sizeof(key), "%s.%d", v->model_name, b);
        r = sw_dht_put(v->dht, key, strlen(key), subkey, sizeof(subkey), buf, n, exp, on_put, v);
        if (r < 0)
            SW_LOG_W("serve", "cannot announce block %d: %s", b, sw_strerror(r));
        else
            v->puts_pending++;
    }
    SW_LOG_I("serve", "announced %s for blocks %d:%d of %s", state_name(state), v->start, v->end,
             v->model_name);
}

static void on_refresh(uv_timer_t *t)
{
    serve_t *v = t->data;

    if (!v->stopping && v->puts_pending == 0)
        announce(v, SWARMD__SERVER_INFO__STATE__ONLINE);
}

static void on_boot(int status, uint32_t peers, void *arg)
{
    serve_t *v = arg;

    if (v->stopping)
        return;
    SW_LOG_I("serve", "DHT: %u initial peers answered (%s), %zu contacts", peers,
             status < 0 ? sw_strerror(status) : "ok", sw_dht_table_peers(v->dht, NULL, 0));
    announce(v, SWARMD__SERVER_INFO__STATE__JOINING);
    uv_timer_start(&v->refresh, on_refresh, ANNOUNCE_EVERY_MS, ANNOUNCE_EVERY_MS);
}

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
    if (v->dht)
        announce(v, SWARMD__SERVER_INFO__STATE__OFFLINE);
    sw_server_drain(v->srv, v->grace_ms, drained, v);
}

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

/* --serve-layers auto: one DHT client on its own loop reads "<model>.<b>" for every block. */
#define PICK_MAX_PEERS 1024

typedef struct {
    uv_loop_t loop;
    sw_identity_t id;
    sw_p2p_node_t *node;
    sw_dht_t *dht;
    uv_timer_t deadline;
    const char *model;
    int nblocks, cur, rc, closing;
    sw_span_t spans[PICK_MAX_PEERS];
    int state[PICK_MAX_PEERS];
    int nspans;
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

static void pick_next(pick_t *p);

static void pick_on_get(int status, const sw_dht_record_t *recs, size_t n, const sw_dht_lookup_info_t *info,
                        void *arg)
{
    pick_t *p = arg;

    (void)info;
    if (p->closing)
        return;
    if (status < 0) {
        fprintf(stderr, "swarmd serve: --serve-layers auto: reading block %d failed: %s\n", p->cur,
                sw_strerror(status));
        pick_finish(p, status);
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
        for (k = 0; k < p->nspans; k++)
            if (memcmp(p->spans[k].peer, recs[i].subkey + 5, SW_PEER_ID_LEN) == 0)
                break;
        /* a peer seen in several states: the highest wins (Petals' compute_spans) */
        if (k < PICK_MAX_PEERS && (k == p->nspans || (int)m->state > p->state[k]) &&
            m->start_block < m->end_block && m->end_block <= (uint32_t)p->nblocks) {
            memcpy(p->spans[k].peer, recs[i].subkey + 5, SW_PEER_ID_LEN);
            p->spans[k].start = (int)m->start_block;
            p->spans[k].end = (int)m->end_block;
            p->spans[k].tps = m->throughput;
            p->state[k] = (int)m->state;
            if (k == p->nspans)
                p->nspans++;
        }
        swarmd__server_info__free_unpacked(m, NULL);
    }
    p->cur++;
    pick_next(p);
}

static void pick_next(pick_t *p)
{
    char key[SW_DHT_KEY_MAX];
    int r;

    if (p->cur >= p->nblocks) {
        pick_finish(p, 0);
        return;
    }
    snprintf(key, sizeof(key), "%s.%d", p->model, p->cur);
    if ((r = sw_dht_get(p->dht, key, strlen(key), pick_on_get, p)) < 0) {
        fprintf(stderr, "swarmd serve: --serve-layers auto: cannot read the DHT: %s\n", sw_strerror(r));
        pick_finish(p, r);
    }
}

static void pick_on_boot(int status, uint32_t peers, void *arg)
{
    pick_t *p = arg;

    if (p->closing)
        return;
    if (status < 0 && sw_dht_table_peers(p->dht, NULL, 0) == 0) {
        fprintf(stderr, "swarmd serve: --serve-layers auto: none of the initial peers answered (%u)\n", peers);
        pick_finish(p, status);
        return;
    }
    pick_next(p);
}

/* Sets *start for `n` of `nblocks` blocks from the swarm's records. Returns 0 or a negative errno. */
static int pick_blocks(const char **peers, size_t npeers, const char *model, int nblocks, int n, int *start)
{
    pick_t *p = sw_calloc(1, sizeof(*p));
    sw_dht_opts_t dopt;
    uint8_t key[32];
    double *thr = NULL;
    int r, has_key = 0, ns = 0;

    if (!p)
        return -ENOMEM;
    p->model = model;
    p->nblocks = nblocks;
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
    uv_timer_init(&p->loop, &p->deadline);
    p->deadline.data = p;
    uv_timer_start(&p->deadline, pick_deadline, 60000, 0);
    if ((r = sw_dht_bootstrap(p->dht, peers, npeers, pick_on_boot, p)) < 0)
        pick_finish(p, r);
    uv_run(&p->loop, UV_RUN_DEFAULT);
    uv_loop_close(&p->loop);
    if ((r = p->rc) < 0)
        goto out;
    /* joining and online spans count; offline ones do not */
    for (int k = 0; k < p->nspans; k++) {
        if (p->state[k] != SWARMD__SERVER_INFO__STATE__JOINING && p->state[k] != SWARMD__SERVER_INFO__STATE__ONLINE)
            continue;
        p->spans[ns] = p->spans[k];
        ns++;
    }
    r = -ENOMEM;
    if (!(thr = sw_calloc((size_t)nblocks, sizeof(double))))
        goto out;
    if ((r = sw_block_throughputs(p->spans, ns, nblocks, thr)) < 0 ||
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
    sw_free(p);
    return r;
}

static int fail(const char *what, int r)
{
    const char *d = sw_err_detail();

    fprintf(stderr, "swarmd serve: %s: %s\n", what, d[0] ? d : sw_strerror(r));
    return 1;
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
        { "session-timeout", required_argument, NULL, 't' },
        { "grace", required_argument, NULL, 'g' },
        { "initial-peers", required_argument, NULL, 'p' },
        { "new-swarm", no_argument, NULL, 'n' },
        { "announce", required_argument, NULL, 'A' },
        { "model-name", required_argument, NULL, 'M' },
        { "public-name", required_argument, NULL, 'P' },
        { "num-blocks", required_argument, NULL, 'N' },
        { "block-selection-delay", required_argument, NULL, 'D' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *peers[64], *announce_opt = NULL;
    int auto_layers = 0, num_blocks = 0;
    double sel_delay = 1.0;
    char *peers_buf = NULL, model_name[128];
    size_t npeers = 0;
    int new_swarm = 0;
    sw_server_opts_t so = { 0 };
    sw_load_opts_t lo = SW_LOAD_OPTS_DEFAULT;
    const char *listen = "0.0.0.0:31330";
    serve_t v;
    sw_identity_t id;
    sw_addr_t addr;
    uint8_t key[32];
    char *path = NULL, pid[SW_PEER_ID_TEXT_MAX], sid[SW_PEER_ID_SHORT_MAX];
    uint64_t u;
    int c, r, port = 0, have_layers = 0, rc = 1;

    memset(&v, 0, sizeof(v));
    v.grace_ms = 10000;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': so.model_dir = optarg; break;
        case 'l':
            if (strcmp(optarg, "auto") == 0) {
                auto_layers = 1;
            } else if (parse_layers(optarg, &so.start, &so.end) < 0) {
                fprintf(stderr, "swarmd serve: --serve-layers wants A:B with 0 <= A < B, such as "
                                "0:8, or auto, not '%s'\n", optarg);
                return 2;
            } else {
                auto_layers = 0;
            }
            have_layers = 1;
            break;
        case 'N':
            if (parse_u64("--num-blocks", optarg, 1, 1000000, &u) < 0)
                return 2;
            num_blocks = (int)u;
            break;
        case 'D': {
            char *end;
            sel_delay = strtod(optarg, &end);
            if (end == optarg || *end || !(sel_delay >= 0.0) || sel_delay > 3600) {
                fprintf(stderr, "swarmd serve: --block-selection-delay wants seconds (0 to 3600), not '%s'\n",
                        optarg);
                return 2;
            }
            break;
        }
        case 'a': listen = optarg; break;
        case 'Q':
            if (sw_quant_parse(optarg, &lo.quant) < 0) {
                fprintf(stderr, "swarmd serve: %s\n", sw_err_detail());
                return 2;
            }
            break;
        case 'X': {
            char *end;
            lo.int8_threshold = strtof(optarg, &end);
            if (end == optarg || *end || !(lo.int8_threshold >= 0.0f) || lo.int8_threshold > 1e6f) {
                fprintf(stderr, "swarmd serve: --int8-threshold wants a number >= 0, not '%s'\n",
                        optarg);
                return 2;
            }
            break;
        }
        case 'c':
            if (parse_u64("--max-cache-tokens", optarg, 1, (uint64_t)1 << 40, &u) < 0)
                return 2;
            so.max_cache_tokens = u;
            break;
        case 'b':
            if (parse_u64("--max-batch-tokens", optarg, 1, 1 << 24, &u) < 0)
                return 2;
            so.max_batch_tokens = (uint32_t)u;
            break;
        case 't':
            if (parse_u64("--session-timeout", optarg, 1, 86400, &u) < 0)
                return 2;
            so.idle_timeout_ms = (uint32_t)u * 1000;
            break;
        case 'g':
            if (parse_u64("--grace", optarg, 0, 3600, &u) < 0)
                return 2;
            v.grace_ms = (uint32_t)u * 1000;
            break;
        case 'p': {
            char *save = NULL, *tok;
            sw_free(peers_buf);
            npeers = 0;
            if (!(peers_buf = sw_strdup(optarg)))
                return 1;
            for (tok = strtok_r(peers_buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
                sw_addr_t pa;
                if (sw_addr_parse(tok, &pa) < 0 || npeers == 64) {
                    fprintf(stderr, "swarmd serve: --initial-peers: '%s' is not PEERID@HOST:PORT or "
                                    "HOST:PORT (64 at most)\n", tok);
                    sw_free(peers_buf);
                    return 2;
                }
                peers[npeers++] = tok;
            }
            break;
        }
        case 'n': new_swarm = 1; break;
        case 'A':
            if (!sw_dht_addr_ok(optarg)) {
                fprintf(stderr, "swarmd serve: --announce wants HOST:PORT, not '%s'\n", optarg);
                sw_free(peers_buf);
                return 2;
            }
            announce_opt = optarg;
            break;
        case 'M':
            if (!optarg[0] || strlen(optarg) >= 100) {
                fprintf(stderr, "swarmd serve: --model-name wants a name of 1 to 99 bytes\n");
                sw_free(peers_buf);
                return 2;
            }
            v.model_name = optarg;
            break;
        case 'P': v.public_name = optarg; break;
        case 'h': sw_free(peers_buf); serve_usage(stdout); return 0;
        default: sw_free(peers_buf); serve_usage(stderr); return 2;
        }
    }
    if (new_swarm && npeers) {
        fprintf(stderr, "swarmd serve: give either --new-swarm or --initial-peers, not both\n");
        sw_free(peers_buf);
        return 2;
    }
    if (!so.model_dir || !have_layers || optind != argc) {
        fprintf(stderr, "swarmd serve: --model and --serve-layers are required\n\n");
        serve_usage(stderr);
        sw_free(peers_buf);
        return 2;
    }
    if (auto_layers && !num_blocks) {
        fprintf(stderr, "swarmd serve: --serve-layers auto needs --num-blocks N for now (a default from "
                        "free memory comes later)\n");
        sw_free(peers_buf);
        return 2;
    }
    if (auto_layers && !npeers && !new_swarm) {
        fprintf(stderr, "swarmd serve: --serve-layers auto reads the swarm: give --initial-peers (or "
                        "--new-swarm)\n");
        sw_free(peers_buf);
        return 2;
    }
    if (num_blocks && !auto_layers) {
        fprintf(stderr, "swarmd serve: --num-blocks goes with --serve-layers auto\n");
        sw_free(peers_buf);
        return 2;
    }
    if (parse_listen(listen, &addr) < 0) {
        fprintf(stderr, "swarmd serve: --listen wants HOST:PORT or [V6]:PORT, not '%s'\n", listen);
        sw_free(peers_buf);
        return 2;
    }
    if (!v.model_name) {
        size_t ln = strlen(so.model_dir);
        const char *base;
        while (ln > 1 && so.model_dir[ln - 1] == '/')
            ln--;
        base = so.model_dir + ln;
        while (base > so.model_dir && base[-1] != '/')
            base--;
        snprintf(model_name, sizeof(model_name), "%.*s", (int)(so.model_dir + ln - base), base);
        for (char *q = model_name; *q; q++)
            if (*q == '.')
                *q = '-';
        v.model_name = model_name;
    }
    if (auto_layers) {
        sw_model_config_t mc;
        if ((r = sw_model_config_load(so.model_dir, &mc)) < 0) {
            sw_free(peers_buf);
            return fail("cannot read config.json", r);
        }
        if (num_blocks > mc.num_layers) {
            fprintf(stderr, "swarmd serve: --num-blocks %d: the model has %d blocks\n", num_blocks,
                    mc.num_layers);
            sw_free(peers_buf);
            return 2;
        }
        if (sel_delay > 0) {
            double d = 2.0 * sel_delay * ((double)randombytes_uniform(1000001) / 1000000.0);
            struct timespec ts = { (time_t)d, (long)((d - (double)(time_t)d) * 1e9) };
            SW_LOG_I("serve", "auto: waiting %.2f s before choosing blocks", d);
            while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
        }
        if (new_swarm) {
            so.start = 0; /* a new swarm has no records: every block is a gap */
        } else if ((r = pick_blocks(peers, npeers, v.model_name, mc.num_layers, num_blocks, &so.start)) < 0) {
            sw_free(peers_buf);
            return fail("--serve-layers auto: cannot choose blocks", r);
        }
        so.end = so.start + num_blocks;
    }
    v.start = so.start;
    v.end = so.end;
    v.id = &id;
    so.load = lo;
    so.ops = strcmp(sw_global_opts.backend, "reference") == 0 ? &sw_ops_ref : &sw_ops_cpu;

    /* identity and swarm key, as `swarmd id` loads them */
    if (sw_global_opts.identity) {
        path = sw_strdup(sw_global_opts.identity);
        if (!path) {
            sw_free(peers_buf);
            return fail("out of memory", -ENOMEM);
        }
    } else if ((r = sw_identity_default_path(&path)) < 0) {
        sw_free(peers_buf);
        return fail("no identity file", r);
    }
    r = sw_identity_load_or_create(path, &id);
    sw_free(path);
    if (r < 0) {
        sw_free(peers_buf);
        return fail("cannot load the identity", r);
    }
    if (sw_global_opts.swarm_key && (r = sw_swarm_key_load(sw_global_opts.swarm_key, key)) < 0) {
        sw_identity_wipe(&id);
        sw_free(peers_buf);
        return fail("cannot load the swarm key", r);
    }
    sw_peer_id_text(&id.id, pid);
    sw_peer_id_short(&id.id, sid);
    sw_log_set_peer(sid);

    uv_loop_init(&v.loop);
    r = sw_p2p_node_new(&v.loop, &id, sw_global_opts.swarm_key ? key : NULL, NULL, &v.node);
    sodium_memzero(key, sizeof(key));
    if (r < 0) {
        rc = fail("cannot start the p2p node", r);
        goto out_loop;
    }
    r = sw_server_load(&so, &v.srv);
    if (r < 0) {
        rc = fail("cannot load the blocks", r);
        goto out_node;
    }
    if ((r = sw_server_measure(v.srv, 1.0, &v.forward_rps, &v.inference_rps)) < 0) {
        rc = fail("cannot measure the throughput", r);
        goto out_srv;
    }
    /* Petals' rule: a request uses (n + 1) / 2 of the span's n blocks on average; the network
     * estimate is 100 Mbit/s of 16-bit hidden states until it is measured */
    v.network_rps = 100e6 / (16.0 * sw_server_hidden_size(v.srv));
    v.tps = v.forward_rps / ((so.end - so.start + 1) / 2.0);
    if (v.tps > v.network_rps)
        v.tps = v.network_rps;
    SW_LOG_I("serve", "throughput: %.1f tokens/s per block forward, %.1f decode; network %.1f; "
             "announced %.1f", v.forward_rps, v.inference_rps, v.network_rps, v.tps);
    if ((r = sw_server_start(v.srv, &v.loop, v.node)) < 0) {
        rc = fail("cannot start serving", r);
        goto out_srv;
    }
    r = sw_p2p_node_listen(v.node, addr.host, addr.port, &port);
    if (r < 0) {
        rc = fail("cannot listen", r);
        goto out_srv;
    }
    uv_timer_init(&v.loop, &v.refresh);
    v.refresh.data = &v;
    {
        char h[64], ann[SW_DHT_ADDR_MAX];
        int wild = strcmp(addr.host, "0.0.0.0") == 0 || strcmp(addr.host, "::") == 0 || !addr.host[0];
        if (announce_opt)
            snprintf(ann, sizeof(ann), "%s", announce_opt);
        else if (wild)
            snprintf(ann, sizeof(ann), "%s:%d", sw_addr_guess_host(h, sizeof(h)) ? h : "127.0.0.1",
                     port);
        else if (strchr(addr.host, ':'))
            snprintf(ann, sizeof(ann), "[%.100s]:%d", addr.host, port);
        else
            snprintf(ann, sizeof(ann), "%.100s:%d", addr.host, port);
        snprintf(v.address, sizeof(v.address), "%s@%s", pid, ann);
        if (npeers || new_swarm) {
            sw_dht_opts_t dopt;
            uint8_t dkey[32];
            int has_key = sw_global_opts.swarm_key && sw_swarm_key_load(sw_global_opts.swarm_key, dkey) == 0;
            sw_dht_opts_default(&dopt);
            dopt.announce_addr = ann;
            dopt.swarm_key = has_key ? dkey : NULL;
            r = sw_dht_new(&v.loop, v.node, &id, &dopt, &v.dht);
            sodium_memzero(dkey, sizeof(dkey));
            if (r < 0 || (r = sw_dht_bootstrap(v.dht, peers, npeers, on_boot, &v)) < 0) {
                rc = fail("cannot start the DHT", r);
                uv_close((uv_handle_t *)&v.refresh, NULL);
                goto out_srv;
            }
        } else {
            SW_LOG_I("serve", "no --initial-peers or --new-swarm: not announcing on the DHT");
        }
    }
    uv_signal_init(&v.loop, &v.sigint);
    uv_signal_init(&v.loop, &v.sigterm);
    v.sigint.data = v.sigterm.data = &v;
    uv_signal_start(&v.sigint, on_signal, SIGINT);
    uv_signal_start(&v.sigterm, on_signal, SIGTERM);
    if (strchr(addr.host, ':'))
        printf("serving blocks %d:%d of %s at %s@[%s]:%d\n", so.start, so.end,
               sw_server_model_name(v.srv), pid, addr.host, port);
    else
        printf("serving blocks %d:%d of %s at %s@%s:%d\n", so.start, so.end,
               sw_server_model_name(v.srv), pid, addr.host, port);
    fflush(stdout);
    uv_run(&v.loop, UV_RUN_DEFAULT);
    SW_LOG_I("serve", "stopped");
    rc = v.srv || v.node ? 1 : 0;
    goto out_loop;
out_srv:
    sw_server_close(v.srv, NULL, NULL);
out_node:
    sw_p2p_node_close(v.node, NULL, NULL);
    uv_run(&v.loop, UV_RUN_DEFAULT);
    if (v.dht) {
        sw_dht_close(v.dht, NULL, NULL);
        uv_run(&v.loop, UV_RUN_DEFAULT);
    }
out_loop:
    uv_loop_close(&v.loop);
    sw_identity_wipe(&id);
    sw_free(peers_buf);
    return rc;
}
