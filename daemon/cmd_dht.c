/*
 * cmd_dht.c - `swarmd dht serve|ping|get|put|nodes`: a DHT-only node (the stable bootstrap peer of
 * a swarm, no model) and one-shot tools to look at and debug a swarm's DHT (p2p/dht.h).
 *
 * Each subcommand runs one libuv loop on the main thread: it loads the identity, starts a p2p node
 * (listening only with --listen, or for serve), a DHT on it, bootstraps, does its one job (or serves
 * until SIGINT/SIGTERM) and then closes node, DHT and handles in that order, so the routing table
 * is saved and every allocation is freed before the loop ends.
 *
 * serve checks that others can connect to its announced address (other nodes dial it back, see
 * "Reachability" in p2p/dht.h) and runs in client mode while they cannot.
 *
 * Without --listen, ping/get/put/nodes run in client mode: they query and store, but no routing
 * table lists them (they cannot be reached). ping/get/nodes then use a fresh in-memory identity
 * unless --identity is given, so they never share a peer id with a daemon of the same user; put uses
 * the identity file, since "self" names its owned subkey.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>
#include <uv.h>

#include "commands.h"
#include "p2p/dht.h"
#include "p2p/dht_internal.h"
#include "p2p/identity.h"
#include "p2p/probe.h"
#include "p2p/rpc.h"
#include "util/alloc.h"
#include "util/error.h"
#include "util/log.h"

/* Also in commands.h once main.c's command table lists "dht"; declared here so this file builds
 * before that (-Wmissing-prototypes). */
int sw_cmd_dht(int argc, char **argv);

#define DEFAULT_LISTEN "0.0.0.0:31337"
#define MAX_PEERS 64

enum { SUB_SERVE, SUB_PING, SUB_GET, SUB_PUT, SUB_NODES };

static const char *const sub_names[] = { "serve", "ping", "get", "put", "nodes" };

typedef struct {
    int sub;
    const char *listen, *announce, *table, *forge_for;
    char *peers_buf;          /* --initial-peers, split in place */
    const char *peers[MAX_PEERS];
    size_t npeers;
    int new_swarm, client_mode, no_reach_check, count, has_ttl;
    double ttl_s, timeout_s;
    const char *args[3];      /* positional arguments */
    int nargs;
} dopts_t;

typedef struct {
    dopts_t *o;
    uv_loop_t loop;
    sw_identity_t id;
    uint8_t swarm_key[32];
    int has_key;
    sw_p2p_node_t *node;
    sw_dht_t *dht;
    uv_signal_t sigint, sigterm;
    uv_timer_t deadline, retry;
    int handles_open, closing, rc, pings_left, pings_ok;
    double rtt_sum, rtt_min, rtt_max;
    char table_path[4096];
    char announce[SW_DHT_ADDR_MAX];
    char self_text[SW_PEER_ID_TEXT_MAX];
} ctx_t;

/* ======================================================================== help */

static void usage(FILE *f, int sub)
{
    static const char common[] =
        "Options:\n"
        "      --initial-peers ADDR,...  join the swarm through these nodes (PEERID@HOST:PORT, or\n"
        "                         HOST:PORT to accept whoever answers there)\n"
        "      --listen HOST:PORT  accept connections here and take part in routing (port 0: any);\n"
        "                         without it ping/get/put/nodes run in client mode: they query and\n"
        "                         store, but no routing table lists them\n"
        "      --announce HOST:PORT  the address other peers reach this node at (default: the\n"
        "                         --listen address; for 0.0.0.0 the first non-loopback IPv4 address)\n"
        "      --client-mode      never enter other nodes' routing tables, even with --listen\n"
        "      --table FILE       routing table file, read at start and written periodically and on\n"
        "                         exit (serve default: dht-table beside the identity file, i.e.\n"
        "                         $XDG_STATE_HOME/swarmd/dht-table, or FILE.dht-table for\n"
        "                         --identity FILE; other commands: none)\n"
        "      --timeout S        give up after S seconds (default 30; not for serve)\n"
        "  -h, --help             this help\n"
        "\n"
        "Global options --identity FILE and --swarm-key FILE (before 'dht') pick the node's key and a\n"
        "private swarm; see 'swarmd --help'.\n";

    switch (sub) {
    case SUB_SERVE:
        fprintf(f,
                "Usage: swarmd dht serve (--new-swarm | --initial-peers ADDR,...) [options]\n"
                "\n"
                "Runs a DHT-only node with no model: the stable bootstrap peer of a swarm. Prints its\n"
                "peer id and full address (give that to others as --initial-peers), then serves until\n"
                "SIGINT or SIGTERM, saving its routing table every minute and on exit. Started again\n"
                "with the same --table it rejoins through the saved contacts.\n"
                "\n"
                "      --new-swarm        start the first node of a new swarm (required when there are\n"
                "                         no initial peers and no saved routing table, so nobody starts\n"
                "                         an isolated node by accident)\n"
                "      --listen HOST:PORT default " DEFAULT_LISTEN "\n"
                "      --no-reachability-check  do not ask peers to connect back to the announced address\n"
                "                         (by default, when none of them can, the node runs in client\n"
                "                         mode and says so, and checks again every 10 minutes)\n"
                "%s",
                common);
        break;
    case SUB_PING:
        fprintf(f,
                "Usage: swarmd dht ping ADDR [--count N] [options]\n"
                "\n"
                "Calls dht.ping on the node at ADDR (PEERID@HOST:PORT or HOST:PORT) N times (default 3)\n"
                "and prints its peer id, each round-trip time (the first includes connecting and the\n"
                "handshake) and its clock minus ours. Exit 1 when no ping is answered.\n"
                "\n"
                "  -c, --count N          pings to send, one after another (1..1000)\n"
                "%s",
                common);
        break;
    case SUB_GET:
        fprintf(f,
                "Usage: swarmd dht get KEY --initial-peers ADDR,... [options]\n"
                "\n"
                "Looks KEY up on the nodes closest to it and prints every live subkey, one line each:\n"
                "  subkey=S value=V expires_in=SECONDS expiration_ms=UNIX_MS owner=PEERID|none\n"
                "  signature=verified|none\n"
                "Owned subkeys (peer:PEERID) are shown only when their owner's signature verified.\n"
                "Bytes outside printable ASCII are written \\xNN. Exit 0 also when nothing is found.\n"
                "\n"
                "%s",
                common);
        break;
    case SUB_PUT:
        fprintf(f,
                "Usage: swarmd dht put KEY SUBKEY VALUE --ttl S --initial-peers ADDR,... [options]\n"
                "\n"
                "Stores (KEY, SUBKEY) -> VALUE for S seconds on the nodes closest to KEY (for debugging).\n"
                "SUBKEY 'self' is this node's owned subkey (peer:<its peer id>, signed with its key: only\n"
                "it can write it); peer:PEERID names it explicitly; any other text is a plain subkey that\n"
                "anyone may overwrite. Of two writes to a subkey the later expiration wins, so a put\n"
                "with an earlier expiration than the one stored changes nothing (the output says so).\n"
                "Uses the identity file (global --identity). Exit 1 when no node took the record.\n"
                "\n"
                "      --ttl S            seconds until the record expires (required; up to 86400)\n"
                "%s"
                "\n"
                "Testing:\n"
                "      --forge-for PEERID send a record for PEERID's owned subkey signed with this\n"
                "                         node's key, as an impostor would; every node must refuse it\n",
                common);
        break;
    case SUB_NODES:
        fprintf(f,
                "Usage: swarmd dht nodes [ADDR] [options]\n"
                "\n"
                "Asks the node at ADDR (default: the first --initial-peers) for its routing table\n"
                "(the dht.nodes call; up to %d contacts) and prints one contact a line: bucket (bits\n"
                "shared with that node's id), peer id, address, seconds since last heard, failed calls.\n"
                "\n"
                "%s",
                SW_DHT_NODES_MAX, common);
        break;
    default:
        fprintf(f,
                "Usage: swarmd dht <serve|ping|get|put|nodes> [options]\n"
                "\n"
                "The swarm's Kademlia DHT: discovery and signed, expiring records.\n"
                "  serve   run a DHT-only node (the bootstrap peer of a swarm)\n"
                "  ping    ping a node: peer id, round-trip time, clock offset\n"
                "  get     print the records of a key\n"
                "  put     store a record (debugging)\n"
                "  nodes   print a node's routing table\n"
                "\n"
                "Run 'swarmd dht <command> --help' for its options.\n");
    }
}

/* ======================================================================== options */

static int bad_usage(int sub, const char *fmt, const char *what)
{
    fprintf(stderr, "swarmd dht %s: ", sub >= 0 ? sub_names[sub] : "");
    fprintf(stderr, fmt, what);
    fprintf(stderr, "\nRun 'swarmd dht %s --help' for usage.\n", sub >= 0 ? sub_names[sub] : "");
    return 2;
}

static int fail(ctx_t *c, const char *what, int r)
{
    const char *d = sw_err_detail();

    fprintf(stderr, "swarmd dht %s: %s: %s\n", sub_names[c->o->sub], what, d[0] ? d : sw_strerror(r));
    c->rc = 1;
    return 1;
}

static int parse_seconds(const char *s, double lo, double hi, double *out)
{
    char *end;
    double v;

    errno = 0;
    v = strtod(s, &end);
    if (!s[0] || *end || errno || !(v >= lo && v <= hi))
        return -1;
    *out = v;
    return 0;
}

/* Splits HOST:PORT or [V6]:PORT (port 0 allowed) into host and port. */
static int parse_listen(const char *s, char *host, size_t cap, int *port)
{
    const char *colon = strrchr(s, ':');
    char *end;
    long p;
    size_t hl;

    if (!colon || colon == s)
        return -1;
    p = strtol(colon + 1, &end, 10);
    if (!colon[1] || *end || p < 0 || p > 65535)
        return -1;
    hl = (size_t)(colon - s);
    if (s[0] == '[') {
        if (hl < 3 || s[hl - 1] != ']')
            return -1;
        s++;
        hl -= 2;
    }
    if (hl + 1 > cap)
        return -1;
    memcpy(host, s, hl);
    host[hl] = '\0';
    *port = (int)p;
    return 0;
}

static int parse_args(int argc, char **argv, dopts_t *o)
{
    static const struct option opts[] = {
        { "listen", required_argument, NULL, 'l' },
        { "announce", required_argument, NULL, 'a' },
        { "initial-peers", required_argument, NULL, 'p' },
        { "new-swarm", no_argument, NULL, 'n' },
        { "client-mode", no_argument, NULL, 'C' },
        { "no-reachability-check", no_argument, NULL, 'R' },
        { "table", required_argument, NULL, 'T' },
        { "ttl", required_argument, NULL, 't' },
        { "timeout", required_argument, NULL, 'w' },
        { "count", required_argument, NULL, 'c' },
        { "forge-for", required_argument, NULL, 'F' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int ch;
    double v;

    o->timeout_s = 30;
    o->count = 3;
    while ((ch = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (ch) {
        case 'l': o->listen = optarg; break;
        case 'a': o->announce = optarg; break;
        case 'n': o->new_swarm = 1; break;
        case 'C': o->client_mode = 1; break;
        case 'R': o->no_reach_check = 1; break;
        case 'T':
            if (!optarg[0])
                return bad_usage(o->sub, "--table wants a file name%s", "");
            o->table = optarg;
            break;
        case 'F': o->forge_for = optarg; break;
        case 'p': {
            char *save = NULL, *tok;
            sw_free(o->peers_buf);
            o->npeers = 0;
            if (!(o->peers_buf = sw_strdup(optarg)))
                return 1;
            for (tok = strtok_r(o->peers_buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
                sw_addr_t a;
                if (sw_addr_parse(tok, &a) < 0)
                    return bad_usage(o->sub, "--initial-peers: '%s' is not PEERID@HOST:PORT or HOST:PORT", tok);
                if (o->npeers == MAX_PEERS)
                    return bad_usage(o->sub, "--initial-peers: more than %s addresses", "64");
                o->peers[o->npeers++] = tok;
            }
            if (o->npeers == 0)
                return bad_usage(o->sub, "--initial-peers wants ADDR,ADDR,...%s", "");
            break;
        }
        case 't':
            if (parse_seconds(optarg, 1, 86400, &v) < 0)
                return bad_usage(o->sub, "--ttl wants seconds from 1 to 86400, not '%s'", optarg);
            o->ttl_s = v;
            o->has_ttl = 1;
            break;
        case 'w':
            if (parse_seconds(optarg, 0.1, 86400, &v) < 0)
                return bad_usage(o->sub, "--timeout wants seconds (0.1 to 86400), not '%s'", optarg);
            o->timeout_s = v;
            break;
        case 'c':
            if (parse_seconds(optarg, 1, 1000, &v) < 0 || v != (int)v)
                return bad_usage(o->sub, "--count wants a whole number from 1 to 1000, not '%s'", optarg);
            o->count = (int)v;
            break;
        case 'h': usage(stdout, o->sub); return -1;
        default: usage(stderr, o->sub); return 2;
        }
    }
    for (; optind < argc; optind++) {
        if (o->nargs == 3)
            return bad_usage(o->sub, "unexpected argument '%s'", argv[optind]);
        o->args[o->nargs++] = argv[optind];
    }
    return 0;
}

/* Checks what each subcommand needs; 0 or an exit code. */
static int check_args(dopts_t *o)
{
    static const int want[] = { 0, 1, 1, 3, -1 };
    char host[256];
    int port;

    if (want[o->sub] >= 0 && o->nargs != want[o->sub]) {
        static const char *const what[] = { "", "ADDR", "KEY", "KEY SUBKEY VALUE", "" };
        if (o->sub == SUB_SERVE)
            return bad_usage(o->sub, "unexpected argument '%s'", o->args[0]);
        return bad_usage(o->sub, "wants %s", what[o->sub]);
    }
    if (o->sub == SUB_NODES && o->nargs > 1)
        return bad_usage(o->sub, "unexpected argument '%s'", o->args[1]);
    if (o->listen && parse_listen(o->listen, host, sizeof(host), &port) < 0)
        return bad_usage(o->sub, "--listen wants HOST:PORT (port 0..65535), not '%s'", o->listen);
    if (o->announce && !sw_dht_addr_ok(o->announce))
        return bad_usage(o->sub, "--announce wants HOST:PORT (no peer id), not '%s'", o->announce);
    if (o->new_swarm && o->sub != SUB_SERVE)
        return bad_usage(o->sub, "--new-swarm only makes sense for 'swarmd dht serve'%s", "");
    if (o->new_swarm && o->npeers)
        return bad_usage(o->sub, "give either --new-swarm (a new swarm) or --initial-peers (join one), not both%s", "");
    if (o->sub == SUB_PUT && !o->has_ttl)
        return bad_usage(o->sub, "--ttl S is required: how many seconds the record lives%s", "");
    if (o->sub != SUB_PUT && (o->has_ttl || o->forge_for))
        return bad_usage(o->sub, "--ttl and --forge-for belong to 'dht put'%s", "");
    if ((o->sub == SUB_GET || o->sub == SUB_PUT) && !o->npeers && !o->table)
        return bad_usage(o->sub,
                         "needs --initial-peers ADDR,... (a node of the swarm, e.g. the address 'swarmd dht "
                         "serve' printed) or a --table file with contacts%s",
                         "");
    if (o->sub == SUB_NODES && o->nargs == 0 && !o->npeers)
        return bad_usage(o->sub, "which node? give ADDR or --initial-peers ADDR%s", "");
    if (o->sub == SUB_SERVE && !o->listen)
        o->listen = DEFAULT_LISTEN;
    return 0;
}

/* ======================================================================== setup */

static int load_identity(ctx_t *c)
{
    dopts_t *o = c->o;
    char *path = NULL;
    int r;

    if (!sw_global_opts.identity && o->sub != SUB_SERVE && o->sub != SUB_PUT && !o->listen) {
        sw_identity_generate(&c->id); /* a one-shot client: a throwaway id */
        return 0;
    }
    if (sw_global_opts.identity) {
        if (!(path = sw_strdup(sw_global_opts.identity)))
            return fail(c, "out of memory", -ENOMEM);
    } else if ((r = sw_identity_default_path(&path)) < 0) {
        return fail(c, "no identity file", r);
    }
    if ((r = sw_identity_load_or_create(path, &c->id)) < 0) {
        sw_free(path);
        return fail(c, "cannot load the identity", r);
    }
    if (o->table) {
        snprintf(c->table_path, sizeof(c->table_path), "%s", o->table);
    } else if (o->sub == SUB_SERVE) {
        size_t n = strlen(path);
        if (!sw_global_opts.identity && n >= 8 && strcmp(path + n - 8, "identity") == 0)
            snprintf(c->table_path, sizeof(c->table_path), "%.*sdht-table", (int)(n - 8), path);
        else
            snprintf(c->table_path, sizeof(c->table_path), "%s.dht-table", path);
    }
    sw_free(path);
    return 0;
}

/* ======================================================================== shutdown (loop thread) */

static void handle_closed(uv_handle_t *h)
{
    ctx_t *c = h->data;
    c->handles_open--;
}

static void dht_closed(void *arg)
{
    ctx_t *c = arg;

    c->dht = NULL;
    uv_close((uv_handle_t *)&c->sigint, handle_closed);
    uv_close((uv_handle_t *)&c->sigterm, handle_closed);
    uv_close((uv_handle_t *)&c->deadline, handle_closed);
    uv_close((uv_handle_t *)&c->retry, handle_closed);
}

static void node_closed(void *arg)
{
    ctx_t *c = arg;

    c->node = NULL;
    sw_dht_close(c->dht, dht_closed, c);
}

/* Ends the command: node first (its calls end), then the DHT (saves the table), then our handles. */
static void shutdown_all(ctx_t *c, int rc)
{
    if (c->closing)
        return;
    c->closing = 1;
    if (rc > c->rc)
        c->rc = rc;
    uv_timer_stop(&c->deadline);
    uv_timer_stop(&c->retry);
    sw_p2p_node_close(c->node, node_closed, c);
}

static void on_signal(uv_signal_t *s, int signum)
{
    ctx_t *c = s->data;

    if (c->o->sub == SUB_SERVE) {
        if (c->table_path[0])
            fprintf(stderr, "swarmd dht serve: %s, shutting down; routing table saved to %s\n",
                    strsignal(signum), c->table_path);
        else
            fprintf(stderr, "swarmd dht serve: %s, shutting down\n", strsignal(signum));
        shutdown_all(c, 0);
    } else {
        fprintf(stderr, "swarmd dht %s: interrupted\n", sub_names[c->o->sub]);
        shutdown_all(c, 1);
    }
}

static void on_deadline(uv_timer_t *t)
{
    ctx_t *c = t->data;

    fprintf(stderr,
            "swarmd dht %s: no answer within %.1f s; check that the address is right and the node runs "
            "('swarmd dht ping ADDR'), or raise --timeout\n",
            sub_names[c->o->sub], c->o->timeout_s);
    shutdown_all(c, 1);
}

/* ======================================================================== printing */

/* Writes bytes as text, printable ASCII as is (and not space, '=' or '\\'), others as \xNN. */
static void print_bytes(const uint8_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (b[i] > ' ' && b[i] < 0x7f && b[i] != '\\' && b[i] != '=')
            putchar(b[i]);
        else
            printf("\\x%02x", b[i]);
    }
}

static void print_subkey(const uint8_t *sk, size_t n, sw_peer_id_t *owner, int *owned)
{
    char text[SW_PEER_ID_TEXT_MAX];

    *owned = sw_dht_subkey_owner(sk, n, owner) == 1;
    if (*owned) {
        sw_peer_id_text(owner, text);
        printf("peer:%s", text);
    } else {
        print_bytes(sk, n);
    }
}

/* ======================================================================== the jobs */

static void ping_next(ctx_t *c);

static void on_ping(int status, const sw_peer_id_t *peer, double rtt_ms, int64_t offset_ms, void *arg)
{
    ctx_t *c = arg;
    char text[SW_PEER_ID_TEXT_MAX];
    int seq = c->o->count - c->pings_left;

    if (c->closing)
        return;
    if (status < 0) {
        const char *d = sw_err_detail();
        printf("ping %d: no answer from %s: %s\n", seq, c->o->args[0], d[0] ? d : sw_strerror(status));
    } else {
        sw_peer_id_text(peer, text);
        printf("ping %d: %s@%s rtt %.3f ms%s clock offset %+lld ms\n", seq, text,
               strchr(c->o->args[0], '@') ? strchr(c->o->args[0], '@') + 1 : c->o->args[0], rtt_ms,
               seq == 1 ? " (with connect)" : "", (long long)offset_ms);
        c->pings_ok++;
        c->rtt_sum += rtt_ms;
        if (c->pings_ok == 1 || rtt_ms < c->rtt_min)
            c->rtt_min = rtt_ms;
        if (rtt_ms > c->rtt_max)
            c->rtt_max = rtt_ms;
    }
    fflush(stdout);
    ping_next(c);
}

static void ping_next(ctx_t *c)
{
    int r;

    if (c->pings_left == 0) {
        printf("%d of %d answered", c->pings_ok, c->o->count);
        if (c->pings_ok)
            printf("; rtt min/avg/max %.3f/%.3f/%.3f ms", c->rtt_min, c->rtt_sum / c->pings_ok, c->rtt_max);
        printf("\n");
        if (!c->pings_ok)
            fprintf(stderr, "swarmd dht ping: %s did not answer; check the address and that 'swarmd dht serve' "
                            "runs there (same --swarm-key)\n", c->o->args[0]);
        shutdown_all(c, c->pings_ok ? 0 : 1);
        return;
    }
    c->pings_left--;
    if ((r = sw_dht_ping(c->dht, c->o->args[0], on_ping, c)) < 0) {
        fail(c, "cannot ping", r);
        shutdown_all(c, 1);
    }
}

static void on_get(int status, const sw_dht_record_t *recs, size_t n, const sw_dht_lookup_info_t *info, void *arg)
{
    ctx_t *c = arg;
    uint64_t now = sw_dht_now_ms();

    if (status < 0) {
        fail(c, "lookup failed", status);
        shutdown_all(c, 1);
        return;
    }
    printf("key ");
    print_bytes((const uint8_t *)c->o->args[0], strlen(c->o->args[0]));
    printf(": %zu subkey%s (lookup: %u hops, %u calls, %u answered, %u failed)\n", n, n == 1 ? "" : "s", info->hops,
           info->msgs, info->answered, info->failed);
    for (size_t i = 0; i < n; i++) {
        sw_peer_id_t owner;
        char text[SW_PEER_ID_TEXT_MAX];
        int owned;
        printf("subkey=");
        print_subkey(recs[i].subkey, recs[i].subkey_len, &owner, &owned);
        printf(" value=");
        print_bytes(recs[i].value, recs[i].value_len);
        printf(" expires_in=%.1f expiration_ms=%llu",
               recs[i].expiration_ms > now ? (double)(recs[i].expiration_ms - now) / 1000.0 : 0.0,
               (unsigned long long)recs[i].expiration_ms);
        if (owned) {
            sw_peer_id_text(&owner, text);
            printf(" owner=%s signature=verified\n", text);
        } else {
            printf(" owner=none signature=none\n");
        }
    }
    if (n == 0 && info->answered == 0)
        fprintf(stderr, "swarmd dht get: no node answered; check --initial-peers ('swarmd dht ping ADDR')\n");
    shutdown_all(c, 0);
}

static void on_put(int status, uint32_t stored, const sw_dht_lookup_info_t *info, void *arg)
{
    ctx_t *c = arg;

    if (status < 0 || stored == 0) {
        if (c->o->forge_for)
            printf("refused: no node took the forged record (%u asked)\n", info->answered);
        fprintf(stderr,
                "swarmd dht put: no node took the record (%u answered the lookup): %s; check --initial-peers, "
                "sizes (key <= %d, subkey <= %d, value <= %d bytes) and that an owned subkey is this node's\n",
                info->answered, status < 0 ? sw_strerror(status) : "refused", SW_DHT_KEY_MAX, SW_DHT_SUBKEY_MAX,
                SW_DHT_VALUE_MAX);
        shutdown_all(c, 1);
        return;
    }
    if (info->superseded == stored)
        printf("unchanged: all %u nodes keep a record for this subkey that expires as late or later\n", stored);
    else if (info->superseded)
        printf("stored on %u nodes (%u of them keep a record that expires as late or later)\n", stored,
               info->superseded);
    else
        printf("stored on %u nodes, expires in %.0f s\n", stored, c->o->ttl_s);
    shutdown_all(c, 0);
}

static void on_nodes(int status, const sw_peer_id_t *peer, const sw_dht_node_info_t *nodes, size_t n, size_t total,
                     void *arg)
{
    ctx_t *c = arg;
    char text[SW_PEER_ID_TEXT_MAX];

    if (status < 0) {
        fail(c, "the node did not send its routing table", status);
        fprintf(stderr, "(is ADDR a 'swarmd dht serve' node of this version, reachable: 'swarmd dht ping ADDR'?)\n");
        shutdown_all(c, 1);
        return;
    }
    sw_peer_id_text(peer, text);
    printf("routing table of %s: %zu contacts%s\n", text, total, n < total ? " (first ones shown)" : "");
    printf("%-6s %-44s %-24s %9s %5s\n", "bucket", "peer id", "address", "seen (s)", "fails");
    for (size_t i = 0; i < n; i++) {
        sw_peer_id_text(&nodes[i].peer, text);
        printf("%-6u %-44s %-24s %9.1f %5u\n", nodes[i].bucket, text, nodes[i].addr, nodes[i].age_ms / 1000.0,
               nodes[i].fails);
    }
    shutdown_all(c, 0);
}

static void do_put(ctx_t *c)
{
    const char *key = c->o->args[0], *sk = c->o->args[1], *val = c->o->args[2];
    uint8_t owned[SW_DHT_OWNED_SUBKEY_LEN];
    const uint8_t *subkey = (const uint8_t *)sk;
    size_t sklen = strlen(sk);
    uint64_t exp = sw_dht_now_ms() + (uint64_t)(c->o->ttl_s * 1000.0);
    sw_peer_id_t p;
    int r;

    if (c->o->forge_for) {
        sw_dht_record_t rec;
        uint8_t sig[SW_DHT_SIG_LEN];
        if (sw_peer_id_parse(c->o->forge_for, &p) < 0) {
            fail(c, "--forge-for wants a peer id", SW_EUSAGE);
            shutdown_all(c, 2);
            return;
        }
        sw_dht_owned_subkey(&p, owned);
        rec = (sw_dht_record_t){ owned, sizeof(owned), (const uint8_t *)val, strlen(val), exp, NULL };
        sw_dht_record_sign(&c->id, (const uint8_t *)key, strlen(key), &rec, sig);
        rec.signature = sig;
        r = sw_dht_put_raw(c->dht, key, strlen(key), &rec, on_put, c);
    } else {
        if (strcmp(sk, "self") == 0) {
            sw_dht_owned_subkey(&c->id.id, owned);
            subkey = owned;
            sklen = sizeof(owned);
        } else if (strncmp(sk, SW_DHT_OWNED_PREFIX, 5) == 0) {
            if (sw_peer_id_parse(sk + 5, &p) < 0) {
                fail(c, "a subkey 'peer:...' must be peer: + a peer id; use 'self' for this node's own", SW_EUSAGE);
                shutdown_all(c, 2);
                return;
            }
            if (!sw_peer_id_eq(&p, &c->id.id)) {
                fprintf(stderr, "swarmd dht put: subkey %s belongs to another peer: only that peer can write it "
                                "(use 'self' for this node's own subkey, or a plain subkey)\n", sk);
                shutdown_all(c, 1);
                return;
            }
            sw_dht_owned_subkey(&p, owned);
            subkey = owned;
            sklen = sizeof(owned);
        }
        r = sw_dht_put(c->dht, key, strlen(key), subkey, sklen, val, strlen(val), exp, on_put, c);
    }
    if (r < 0) {
        fail(c, "cannot store", r);
        shutdown_all(c, 1);
    }
}

/* Runs the subcommand's job once the DHT has joined (or right away for ping and nodes). */
static void start_job(ctx_t *c)
{
    int r = 0;

    switch (c->o->sub) {
    case SUB_PING:
        c->pings_left = c->o->count;
        ping_next(c);
        return;
    case SUB_NODES:
        r = sw_dht_nodes(c->dht, c->o->nargs ? c->o->args[0] : c->o->peers[0], on_nodes, c);
        break;
    case SUB_GET:
        r = sw_dht_get(c->dht, c->o->args[0], strlen(c->o->args[0]), on_get, c);
        break;
    case SUB_PUT:
        do_put(c);
        return;
    default:
        return;
    }
    if (r < 0) {
        fail(c, "cannot start", r);
        shutdown_all(c, 1);
    }
}

static void on_boot(int status, uint32_t peers, void *arg);

/* serve: while the table stays empty, try the initial peers again every 30 s. */
static void on_retry(uv_timer_t *t)
{
    ctx_t *c = t->data;

    if (c->closing || sw_dht_table_peers(c->dht, NULL, 0) > 0)
        return;
    SW_LOG_I("dht", "routing table empty: bootstrapping again");
    sw_dht_bootstrap(c->dht, c->o->peers, c->o->npeers, on_boot, c);
}

static void on_boot(int status, uint32_t peers, void *arg)
{
    ctx_t *c = arg;
    size_t known;

    if (c->closing)
        return;
    known = sw_dht_table_peers(c->dht, NULL, 0);
    if (c->o->sub == SUB_SERVE) {
        static int first = 1;
        if (first) {
            const char *mode = !sw_dht_is_client(c->dht) ? "full node"
                               : c->o->client_mode || !c->o->listen ? "client mode"
                               : "client mode: no peer could connect back to the announced address";
            printf("joined: %u of %zu initial peers answered, %zu contacts in the routing table; %s\n", peers,
                   c->o->npeers, known, mode);
            fflush(stdout);
            first = 0;
        }
        if (known == 0 && !c->o->new_swarm) {
            SW_LOG_W("dht", "no initial peer answered and no saved contact is alive; retrying every 30 s "
                            "(check --initial-peers)");
            uv_timer_start(&c->retry, on_retry, 30000, 0);
        }
        return;
    }
    if (status < 0 && known == 0) {
        fprintf(stderr, "swarmd dht %s: none of the initial peers answered; check the addresses and that "
                        "'swarmd dht serve' runs there ('swarmd dht ping ADDR')\n", sub_names[c->o->sub]);
        shutdown_all(c, 1);
        return;
    }
    start_job(c);
}

/* ======================================================================== entry */

static int run(ctx_t *c)
{
    dopts_t *o = c->o;
    sw_dht_opts_t dopt;
    char host[100];
    int port = 0, r;

    if (load_identity(c))
        return 1;
    if (sw_global_opts.swarm_key) {
        if ((r = sw_swarm_key_load(sw_global_opts.swarm_key, c->swarm_key)) < 0)
            return fail(c, "cannot load the swarm key", r);
        c->has_key = 1;
    }
    sw_peer_id_text(&c->id.id, c->self_text);
    {
        char sid[SW_PEER_ID_SHORT_MAX];
        sw_peer_id_short(&c->id.id, sid);
        sw_log_set_peer(sid);
    }
    if ((r = uv_loop_init(&c->loop)) < 0)
        return fail(c, "cannot start the event loop", r);
    if ((r = sw_p2p_node_new(&c->loop, &c->id, c->has_key ? c->swarm_key : NULL, NULL, &c->node)) < 0) {
        fail(c, "cannot create the p2p node", r);
        goto out_loop;
    }
    if (o->listen) {
        parse_listen(o->listen, host, sizeof(host), &port);
        if ((r = sw_p2p_node_listen(c->node, host, port, &port)) < 0) {
            fail(c, "cannot listen", r);
            fprintf(stderr, "(is %s taken by another process? pick another --listen HOST:PORT)\n", o->listen);
            goto out_node;
        }
        if (o->announce) {
            snprintf(c->announce, sizeof(c->announce), "%s", o->announce);
        } else {
            char h[64];
            int wild = strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0 || !host[0];
            if (wild && !sw_addr_guess_host(h, sizeof(h))) {
                snprintf(h, sizeof(h), "127.0.0.1");
                SW_LOG_W("dht", "no non-loopback IPv4 address: announcing 127.0.0.1 (pass --announce HOST:PORT)");
            }
            if (wild)
                snprintf(c->announce, sizeof(c->announce), "%s:%d", h, port);
            else if (strchr(host, ':'))
                snprintf(c->announce, sizeof(c->announce), "[%.100s]:%d", host, port);
            else
                snprintf(c->announce, sizeof(c->announce), "%.100s:%d", host, port);
        }
    }
    /* a bootstrap node is where new servers measure their upload (p2p/probe.h) */
    if (o->sub == SUB_SERVE && (r = sw_p2p_probe_serve(c->node)) < 0) {
        fail(c, "cannot serve upload probes", r);
        goto out_node;
    }
    sw_dht_opts_default(&dopt);
    dopt.client_mode = o->client_mode || !o->listen;
    dopt.announce_addr = dopt.client_mode ? NULL : c->announce;
    dopt.table_path = c->table_path[0] ? c->table_path : NULL;
    dopt.reachability_check = o->sub == SUB_SERVE && !o->no_reach_check;
    dopt.swarm_key = c->has_key ? c->swarm_key : NULL;
    if ((r = sw_dht_new(&c->loop, c->node, &c->id, &dopt, &c->dht)) < 0) {
        fail(c, "cannot start the DHT", r);
        goto out_node;
    }
    uv_signal_init(&c->loop, &c->sigint);
    uv_signal_init(&c->loop, &c->sigterm);
    uv_timer_init(&c->loop, &c->deadline);
    uv_timer_init(&c->loop, &c->retry);
    c->sigint.data = c->sigterm.data = c->deadline.data = c->retry.data = c;
    c->handles_open = 4;
    uv_signal_start(&c->sigint, on_signal, SIGINT);
    uv_signal_start(&c->sigterm, on_signal, SIGTERM);
    if (o->sub != SUB_SERVE)
        uv_timer_start(&c->deadline, on_deadline, (uint64_t)(o->timeout_s * 1000.0), 0);

    if (o->sub == SUB_SERVE) {
        size_t known = sw_dht_table_peers(c->dht, NULL, 0);
        if (!o->npeers && !o->new_swarm && known == 0) {
            fprintf(stderr,
                    "swarmd dht serve: no --initial-peers and no saved contacts%s%s: pass --initial-peers "
                    "ADDR,... to join a swarm, or --new-swarm to start a new one\n",
                    c->table_path[0] ? " in " : "", c->table_path);
            shutdown_all(c, 2);
        } else {
            printf("peer id: %s\n", c->self_text);
            if (dopt.client_mode)
                printf("address: none (client mode)\n");
            else
                printf("address: %s@%s\n", c->self_text, c->announce);
            printf("listening on %s (%zu saved contacts%s%s)\n", o->listen, known, c->table_path[0] ? " from " : "",
                   c->table_path);
            fflush(stdout);
            if ((r = sw_dht_bootstrap(c->dht, o->peers, o->npeers, on_boot, c)) < 0) {
                fail(c, "cannot bootstrap", r);
                shutdown_all(c, 1);
            }
        }
    } else if (o->sub == SUB_PING || o->sub == SUB_NODES) {
        start_job(c);
    } else if ((r = sw_dht_bootstrap(c->dht, o->peers, o->npeers, on_boot, c)) < 0) {
        fail(c, "cannot bootstrap", r);
        shutdown_all(c, 1);
    }
    uv_run(&c->loop, UV_RUN_DEFAULT);
    uv_loop_close(&c->loop);
    return c->rc;

out_node:
    sw_p2p_node_close(c->node, NULL, NULL);
    uv_run(&c->loop, UV_RUN_DEFAULT);
out_loop:
    uv_loop_close(&c->loop);
    return 1;
}

int sw_cmd_dht(int argc, char **argv)
{
    dopts_t o;
    ctx_t *c;
    int r, sub = -1;

    memset(&o, 0, sizeof(o));
    if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
        usage(argc < 2 ? stderr : stdout, -1);
        return argc < 2 ? 2 : 0;
    }
    for (int i = 0; i < 5; i++)
        if (strcmp(argv[1], sub_names[i]) == 0)
            sub = i;
    if (sub < 0) {
        fprintf(stderr, "swarmd dht: unknown command '%s'; it is serve, ping, get, put or nodes. Run 'swarmd dht "
                        "--help'.\n", argv[1]);
        return 2;
    }
    o.sub = sub;
    optind = 0;
    r = parse_args(argc - 1, argv + 1, &o);
    if (r == 0)
        r = check_args(&o);
    if (r != 0) {
        sw_free(o.peers_buf);
        return r < 0 ? 0 : r;
    }
    if (sodium_init() < 0) {
        sw_free(o.peers_buf);
        fprintf(stderr, "swarmd dht: libsodium failed to initialise\n");
        return 1;
    }
    c = sw_calloc(1, sizeof(*c));
    if (!c) {
        sw_free(o.peers_buf);
        return 1;
    }
    c->o = &o;
    r = run(c);
    sw_identity_wipe(&c->id);
    sodium_memzero(c->swarm_key, sizeof(c->swarm_key));
    sw_free(c);
    sw_free(o.peers_buf);
    return r;
}
