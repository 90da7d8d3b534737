/*
 * cmd_serve.c - `swarmd serve`: load a span of blocks and serve it to peers over the secure
 * transport (pipeline/server.h) until SIGINT/SIGTERM.
 *
 * Runs the libuv loop on the main thread; compute runs on the server's executor thread.
 * Shutdown: the first signal stops new sessions and forward calls, lets steps in flight finish
 * for --grace seconds, ends the open sessions with an error, closes the node and exits 0.
 * (DHT announcements and --serve-layers auto come with the rest of issue 6.)
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>
#include <uv.h>

#include "commands.h"
#include "p2p/identity.h"
#include "p2p/rpc.h"
#include "pipeline/server.h"
#include "util/alloc.h"
#include "util/error.h"
#include "util/log.h"

int sw_cmd_serve(int argc, char **argv);

static void serve_usage(FILE *f)
{
    fprintf(f,
            "Usage: swarmd [global options] serve --model DIR --serve-layers A:B [options]\n"
            "\n"
            "Loads transformer blocks A..B-1 of the model and serves them to peers: info,\n"
            "forward and inference-session calls over the encrypted transport. Prints one line,\n"
            "\"serving blocks A:B of MODEL at PEERID@HOST:PORT\", once it accepts calls. SIGINT or\n"
            "SIGTERM stops it: no new sessions, steps in flight finish (up to --grace), exit 0.\n"
            "\n"
            "  --model DIR              Hugging Face checkpoint directory\n"
            "  --serve-layers A:B       the blocks to serve, [A, B) (0-based; 'auto' comes later)\n"
            "  --listen HOST:PORT       address to listen on (default 0.0.0.0:31330; port 0: any)\n"
            "  --quant Q                weight format: nf4, int8 or none (default: as stored)\n"
            "  --int8-threshold T       LLM.int8() outlier threshold (default 6.0)\n"
            "  --max-cache-tokens N     KV cache budget in positions (batch x length) over all\n"
            "                           sessions (default %d)\n"
            "  --max-batch-tokens N     most batch x tokens of one call or step (default %d)\n"
            "  --session-timeout S      end an inference session idle for S seconds (default %d)\n"
            "  --grace S                seconds in-flight steps get at shutdown (default 10)\n"
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
} serve_t;

static void server_closed(void *arg)
{
    serve_t *v = arg;

    v->srv = NULL;
    uv_close((uv_handle_t *)&v->sigint, NULL);
    uv_close((uv_handle_t *)&v->sigterm, NULL);
}

static void node_closed(void *arg)
{
    serve_t *v = arg;

    v->node = NULL;
    sw_server_close(v->srv, server_closed, v);
}

static void drained(void *arg)
{
    serve_t *v = arg;

    sw_p2p_node_close(v->node, node_closed, v);
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
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
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
            if (parse_layers(optarg, &so.start, &so.end) < 0) {
                fprintf(stderr, "swarmd serve: --serve-layers wants A:B with 0 <= A < B, such as "
                                "0:8, not '%s' ('auto' is not built yet)\n", optarg);
                return 2;
            }
            have_layers = 1;
            break;
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
        case 'h': serve_usage(stdout); return 0;
        default: serve_usage(stderr); return 2;
        }
    }
    if (!so.model_dir || !have_layers || optind != argc) {
        fprintf(stderr, "swarmd serve: --model and --serve-layers are required\n\n");
        serve_usage(stderr);
        return 2;
    }
    if (parse_listen(listen, &addr) < 0) {
        fprintf(stderr, "swarmd serve: --listen wants HOST:PORT or [V6]:PORT, not '%s'\n", listen);
        return 2;
    }
    so.load = lo;
    so.ops = strcmp(sw_global_opts.backend, "reference") == 0 ? &sw_ops_ref : &sw_ops_cpu;

    /* identity and swarm key, as `swarmd id` loads them */
    if (sw_global_opts.identity) {
        path = sw_strdup(sw_global_opts.identity);
        if (!path)
            return fail("out of memory", -ENOMEM);
    } else if ((r = sw_identity_default_path(&path)) < 0) {
        return fail("no identity file", r);
    }
    r = sw_identity_load_or_create(path, &id);
    sw_free(path);
    if (r < 0)
        return fail("cannot load the identity", r);
    if (sw_global_opts.swarm_key && (r = sw_swarm_key_load(sw_global_opts.swarm_key, key)) < 0) {
        sw_identity_wipe(&id);
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
    r = sw_server_new(&v.loop, v.node, &so, &v.srv);
    if (r < 0) {
        rc = fail("cannot load the blocks", r);
        goto out_node;
    }
    r = sw_p2p_node_listen(v.node, addr.host, addr.port, &port);
    if (r < 0) {
        rc = fail("cannot listen", r);
        goto out_srv;
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
out_loop:
    uv_loop_close(&v.loop);
    sw_identity_wipe(&id);
    return rc;
}
