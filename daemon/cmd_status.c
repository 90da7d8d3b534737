/*
 * cmd_status.c - `swarmd status`: the swarm as the DHT shows it. Joins the DHT in client mode
 * (a throwaway identity unless --identity is given), reads the ServerInfo records under
 * "<model>.<block>" for every block (proto/swarmd.proto; announced by `swarmd serve`), and prints
 * each block's servers, the gaps (blocks without an online server) and the bottleneck (the block
 * whose online servers' summed throughput is lowest). Each server's line shows its device, weight
 * format and the short form of that block's weights digest; a block whose joining/online servers
 * announce different digests is flagged (a client refuses the odd ones out).
 *
 * The block count is --num-blocks, or the largest num_blocks a record of block 0.. says.
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
#include "p2p/dht.h"
#include "p2p/identity.h"
#include "p2p/rpc.h"
#include "swarmd.pb-c.h"
#include "util/alloc.h"
#include "util/error.h"
#include "util/log.h"

#define MAX_BLOCKS 4096
#define MAX_PER_BLOCK 64

typedef struct {
    char peer[SW_PEER_ID_SHORT_MAX];
    char name[64], addr[200];
    int state;
    uint32_t a, b;
    double tps, fwd, inf, net;
    uint64_t cache_left, gpu_total, gpu_free;
    char device[96], format[16], version[24];
    uint8_t digest[32];
    int has_digest;
} srv_t;

typedef struct {
    uv_loop_t loop;
    sw_identity_t id;
    sw_p2p_node_t *node;
    sw_dht_t *dht;
    uv_timer_t deadline;
    const char *model;
    int json, nblocks, fixed, cur, rc, closing;
    srv_t (*srv)[MAX_PER_BLOCK];
    int *count;
} st_t;

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: swarmd [global options] status --initial-peers ADDR,... --model-name NAME [options]\n"
            "\n"
            "Reads the swarm's DHT and prints, for each block of the model, the servers announcing it\n"
            "(peer short id, state, span, throughput in tokens/s, public name), then the gaps (blocks\n"
            "no online server covers) and the bottleneck (the block with the lowest summed throughput\n"
            "of its online servers), with each server's device, weight format and weights digest\n"
            "(first 8 bytes); blocks whose live servers announce different digests are flagged.\n"
            "\n"
            "  --initial-peers ADDR,... DHT nodes of the swarm (PEERID@HOST:PORT or HOST:PORT)\n"
            "  --model-name NAME        the model's swarm name (as 'swarmd serve' announces it)\n"
            "  --num-blocks N           blocks of the model (default: from the records of block 0)\n"
            "  --json                   one JSON object instead of text\n"
            "  --timeout S              give up after S seconds (default 30)\n"
            "  -h, --help               this help\n"
            "Exit 0 when the DHT answered (gaps included), 1 when it could not be read.\n");
}

static const char *state_name(int st)
{
    return st == SWARMD__SERVER_INFO__STATE__JOINING ? "joining"
           : st == SWARMD__SERVER_INFO__STATE__ONLINE ? "online"
           : st == SWARMD__SERVER_INFO__STATE__OFFLINE ? "offline" : "unknown";
}

static void dht_closed(void *arg)
{
    st_t *c = arg;
    c->dht = NULL;
    uv_close((uv_handle_t *)&c->deadline, NULL);
}

static void node_closed(void *arg)
{
    st_t *c = arg;
    c->node = NULL;
    sw_dht_close(c->dht, dht_closed, c);
}

static void finish(st_t *c, int rc)
{
    if (c->closing)
        return;
    c->closing = 1;
    c->rc = rc;
    uv_timer_stop(&c->deadline);
    sw_p2p_node_close(c->node, node_closed, c);
}

static void on_deadline(uv_timer_t *t)
{
    st_t *c = t->data;
    fprintf(stderr, "swarmd status: timed out\n");
    finish(c, 1);
}

static void json_str(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            printf("\\%c", *s);
        else if ((unsigned char)*s < 0x20)
            printf("\\u%04x", (unsigned char)*s);
        else
            putchar(*s);
    }
    putchar('"');
}

static void hex8(const srv_t *s, char out[17])
{
    if (!s->has_digest) {
        snprintf(out, 17, "-");
        return;
    }
    for (int i = 0; i < 8; i++)
        snprintf(out + 2 * i, 3, "%02x", s->digest[i]);
}

static int live(const srv_t *s)
{
    return s->state == SWARMD__SERVER_INFO__STATE__JOINING || s->state == SWARMD__SERVER_INFO__STATE__ONLINE;
}

/* 1 when the live servers of block b announce more than one digest (a missing one counts). */
static int digests_differ(const st_t *c, int b)
{
    const srv_t *first = NULL;

    for (int i = 0; i < c->count[b]; i++) {
        const srv_t *s = &c->srv[b][i];
        if (!live(s))
            continue;
        if (!first)
            first = s;
        else if (s->has_digest != first->has_digest ||
                 (s->has_digest && memcmp(s->digest, first->digest, 32) != 0))
            return 1;
    }
    return 0;
}

static void report(st_t *c)
{
    int nmismatch = 0;
    int worst = -1, ngaps = 0;
    double worst_tps = 0;
    double *sum = sw_calloc((size_t)c->nblocks + 1, sizeof(double));

    if (!sum) {
        finish(c, 1);
        return;
    }
    for (int b = 0; b < c->nblocks; b++) {
        for (int i = 0; i < c->count[b]; i++)
            if (c->srv[b][i].state == SWARMD__SERVER_INFO__STATE__ONLINE)
                sum[b] += c->srv[b][i].tps > 0 ? c->srv[b][i].tps : 1e-9;
        nmismatch += digests_differ(c, b);
        if (sum[b] <= 0)
            ngaps++;
        else if (worst < 0 || sum[b] < worst_tps) {
            worst = b;
            worst_tps = sum[b];
        }
    }
    if (c->json) {
        printf("{\"model\":");
        json_str(c->model);
        printf(",\"num_blocks\":%d,\"blocks\":[", c->nblocks);
        for (int b = 0; b < c->nblocks; b++) {
            printf("%s{\"block\":%d,\"throughput\":%.3f,\"digests_agree\":%s,\"servers\":[", b ? "," : "",
                   b, sum[b], digests_differ(c, b) ? "false" : "true");
            for (int i = 0; i < c->count[b]; i++) {
                srv_t *s = &c->srv[b][i];
                char hex[65] = "";
                for (int k = 0; s->has_digest && k < 32; k++)
                    snprintf(hex + 2 * k, 3, "%02x", s->digest[k]);
                printf("%s{\"peer\":\"%s\",\"state\":\"%s\",\"start\":%u,\"end\":%u,\"throughput\":%.3f,"
                       "\"forward_rps\":%.3f,\"inference_rps\":%.3f,\"network_rps\":%.3f,"
                       "\"cache_tokens_left\":%llu,\"gpu_memory_total\":%llu,\"gpu_memory_free\":%llu,"
                       "\"weights_digest\":\"%s\",\"public_name\":", i ? "," : "", s->peer, state_name(s->state),
                       s->a, s->b, s->tps, s->fwd, s->inf, s->net, (unsigned long long)s->cache_left,
                       (unsigned long long)s->gpu_total, (unsigned long long)s->gpu_free, hex);
                json_str(s->name);
                printf(",\"device\":");
                json_str(s->device);
                printf(",\"format\":");
                json_str(s->format);
                printf(",\"version\":");
                json_str(s->version);
                printf(",\"address\":");
                json_str(s->addr);
                putchar('}');
            }
            printf("]}");
        }
        printf("],\"gaps\":[");
        for (int b = 0, first = 1; b < c->nblocks; b++)
            if (sum[b] <= 0) {
                printf("%s%d", first ? "" : ",", b);
                first = 0;
            }
        if (worst >= 0)
            printf("],\"bottleneck\":{\"block\":%d,\"throughput\":%.3f}", worst, worst_tps);
        else
            printf("],\"bottleneck\":null");
        printf(",\"digest_mismatches\":[");
        for (int b = 0, first = 1; b < c->nblocks; b++)
            if (digests_differ(c, b)) {
                printf("%s%d", first ? "" : ",", b);
                first = 0;
            }
        printf("]}\n");
    } else {
        printf("model %s: %d blocks\n", c->model, c->nblocks);
        for (int b = 0; b < c->nblocks; b++) {
            printf("block %d: %d server%s, %.1f tokens/s online%s\n", b, c->count[b], c->count[b] == 1 ? "" : "s",
                   sum[b], digests_differ(c, b) ? "  WEIGHTS DIFFER: its servers announce different digests" : "");
            for (int i = 0; i < c->count[b]; i++) {
                srv_t *s = &c->srv[b][i];
                char hex[17];
                hex8(s, hex);
                printf("  %s %s span %u:%u %.1f tokens/s cache %llu name \"%s\" digest %s %s on %s", s->peer,
                       state_name(s->state), s->a, s->b, s->tps, (unsigned long long)s->cache_left, s->name, hex,
                       s->format[0] ? s->format : "?", s->device[0] ? s->device : "?");
                if (s->gpu_total)
                    printf(" (%.1f of %.1f GiB free)", (double)s->gpu_free / (1 << 30), (double)s->gpu_total / (1 << 30));
                printf("\n");
            }
        }
        printf("gaps:");
        if (!ngaps)
            printf(" none");
        /* runs of uncovered blocks as A:B */
        for (int b = 0; b < c->nblocks;) {
            if (sum[b] > 0) {
                b++;
                continue;
            }
            int e = b;
            while (e < c->nblocks && sum[e] <= 0)
                e++;
            printf(" %d:%d", b, e);
            b = e;
        }
        printf("\n");
        if (worst >= 0)
            printf("bottleneck: block %d, %.1f tokens/s\n", worst, worst_tps);
        else
            printf("bottleneck: none (no block is served)\n");
        printf("weights digests:");
        if (!nmismatch)
            printf(" agree on every block\n");
        for (int b = 0; nmismatch && b < c->nblocks; b++)
            if (digests_differ(c, b))
                printf(" %d", b);
        if (nmismatch)
            printf(" (blocks whose servers disagree: same checkpoint and --quant give the same digest)\n");
    }
    fflush(stdout);
    sw_free(sum);
    finish(c, 0);
}

static void get_next(st_t *c);

static void on_get(int status, const sw_dht_record_t *recs, size_t n, const sw_dht_lookup_info_t *info, void *arg)
{
    st_t *c = arg;
    int b = c->cur;

    (void)info;
    if (c->closing)
        return;
    if (status < 0) {
        fprintf(stderr, "swarmd status: reading block %d failed: %s\n", b, sw_strerror(status));
        finish(c, 1);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        Swarmd__ServerInfo *m;
        srv_t *s;
        sw_peer_id_t peer;
        if (recs[i].subkey_len != SW_DHT_OWNED_SUBKEY_LEN || !recs[i].signature)
            continue;
        m = swarmd__server_info__unpack(NULL, recs[i].value_len, recs[i].value);
        if (!m)
            continue;
        if (!c->fixed && m->num_blocks > (uint32_t)c->nblocks && m->num_blocks <= MAX_BLOCKS)
            c->nblocks = (int)m->num_blocks;
        if (c->count[b] < MAX_PER_BLOCK) {
            s = &c->srv[b][c->count[b]++];
            memcpy(peer.b, recs[i].subkey + 5, SW_PEER_ID_LEN);
            sw_peer_id_short(&peer, s->peer);
            s->state = (int)m->state;
            s->a = m->start_block;
            s->b = m->end_block;
            s->tps = m->throughput;
            s->cache_left = m->cache_tokens_left;
            s->fwd = m->forward_rps;
            s->inf = m->inference_rps;
            s->net = m->network_rps;
            s->gpu_total = m->gpu_memory_total;
            s->gpu_free = m->gpu_memory_free;
            s->has_digest = m->weights_digest.len == 32;
            if (s->has_digest)
                memcpy(s->digest, m->weights_digest.data, 32);
            snprintf(s->device, sizeof(s->device), "%s", m->device ? m->device : "");
            snprintf(s->format, sizeof(s->format), "%s", m->format ? m->format : "");
            snprintf(s->version, sizeof(s->version), "%s", m->version ? m->version : "");
            for (char *q = s->device; *q; q++)
                if ((unsigned char)*q < 0x20)
                    *q = '?';
            for (char *q = s->format; *q; q++)
                if ((unsigned char)*q < 0x20)
                    *q = '?';
            for (char *q = s->name; *q; q++)
                if ((unsigned char)*q < 0x20)
                    *q = '?';
            snprintf(s->name, sizeof(s->name), "%s", m->public_name ? m->public_name : "");
            snprintf(s->addr, sizeof(s->addr), "%s", m->address ? m->address : "");
        }
        swarmd__server_info__free_unpacked(m, NULL);
    }
    c->cur++;
    get_next(c);
}

static void get_next(st_t *c)
{
    char key[SW_DHT_KEY_MAX];
    int r;

    if (c->cur >= c->nblocks) {
        if (c->nblocks == 0) {
            fprintf(stderr, "swarmd status: no server announces block 0 of '%s'; check --model-name, or give "
                            "--num-blocks N\n", c->model);
            finish(c, 1);
            return;
        }
        report(c);
        return;
    }
    snprintf(key, sizeof(key), "%s.%d", c->model, c->cur);
    if ((r = sw_dht_get(c->dht, key, strlen(key), on_get, c)) < 0) {
        fprintf(stderr, "swarmd status: cannot read the DHT: %s\n", sw_strerror(r));
        finish(c, 1);
    }
}

static void on_boot(int status, uint32_t peers, void *arg)
{
    st_t *c = arg;

    if (c->closing)
        return;
    if (status < 0 && sw_dht_table_peers(c->dht, NULL, 0) == 0) {
        fprintf(stderr, "swarmd status: none of the initial peers answered (%u); check the addresses\n", peers);
        finish(c, 1);
        return;
    }
    if (!c->fixed)
        c->nblocks = 1; /* block 0 first; its records say how many there are */
    get_next(c);
}

int sw_cmd_status(int argc, char **argv)
{
    static const struct option opts[] = {
        { "initial-peers", required_argument, NULL, 'p' },
        { "model-name", required_argument, NULL, 'M' },
        { "num-blocks", required_argument, NULL, 'N' },
        { "json", no_argument, NULL, 'j' },
        { "timeout", required_argument, NULL, 'w' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *peers[64];
    char *peers_buf = NULL, *end;
    size_t npeers = 0;
    double timeout_s = 30;
    st_t *c;
    sw_dht_opts_t dopt;
    uint8_t key[32];
    int o, r, rc = 1, has_key = 0;

    c = sw_calloc(1, sizeof(*c));
    if (!c)
        return 1;
    optind = 0;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (o) {
        case 'p': {
            char *save = NULL, *tok;
            sw_free(peers_buf);
            npeers = 0;
            if (!(peers_buf = sw_strdup(optarg)))
                goto out;
            for (tok = strtok_r(peers_buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
                sw_addr_t a;
                if (sw_addr_parse(tok, &a) < 0 || npeers == 64) {
                    fprintf(stderr, "swarmd status: --initial-peers: '%s' is not PEERID@HOST:PORT or HOST:PORT\n",
                            tok);
                    rc = 2;
                    goto out;
                }
                peers[npeers++] = tok;
            }
            break;
        }
        case 'M': c->model = optarg; break;
        case 'N': {
            long n = strtol(optarg, &end, 10);
            if (end == optarg || *end || n < 1 || n > MAX_BLOCKS) {
                fprintf(stderr, "swarmd status: --num-blocks wants 1 to %d, not '%s'\n", MAX_BLOCKS, optarg);
                rc = 2;
                goto out;
            }
            c->nblocks = (int)n;
            c->fixed = 1;
            break;
        }
        case 'j': c->json = 1; break;
        case 'w':
            timeout_s = strtod(optarg, &end);
            if (end == optarg || *end || !(timeout_s >= 0.1) || timeout_s > 86400) {
                fprintf(stderr, "swarmd status: --timeout wants seconds (0.1 to 86400), not '%s'\n", optarg);
                rc = 2;
                goto out;
            }
            break;
        case 'h': usage(stdout); rc = 0; goto out;
        default: usage(stderr); rc = 2; goto out;
        }
    }
    if (!npeers || !c->model || optind != argc) {
        fprintf(stderr, "swarmd status: --initial-peers and --model-name are required\n\n");
        usage(stderr);
        rc = 2;
        goto out;
    }
    if (sodium_init() < 0)
        goto out;
    c->srv = sw_calloc(MAX_BLOCKS, sizeof(*c->srv));
    c->count = sw_calloc(MAX_BLOCKS, sizeof(int));
    if (!c->srv || !c->count)
        goto out;
    if (sw_global_opts.identity) {
        if ((r = sw_identity_load_or_create(sw_global_opts.identity, &c->id)) < 0) {
            fprintf(stderr, "swarmd status: cannot load the identity: %s\n", sw_strerror(r));
            goto out;
        }
    } else {
        sw_identity_generate(&c->id);
    }
    if (sw_global_opts.swarm_key) {
        if ((r = sw_swarm_key_load(sw_global_opts.swarm_key, key)) < 0) {
            fprintf(stderr, "swarmd status: cannot load the swarm key: %s\n", sw_strerror(r));
            goto out;
        }
        has_key = 1;
    }
    uv_loop_init(&c->loop);
    r = sw_p2p_node_new(&c->loop, &c->id, has_key ? key : NULL, NULL, &c->node);
    if (r < 0) {
        fprintf(stderr, "swarmd status: cannot create the p2p node: %s\n", sw_strerror(r));
        uv_loop_close(&c->loop);
        goto out;
    }
    sw_dht_opts_default(&dopt);
    dopt.client_mode = 1;
    dopt.swarm_key = has_key ? key : NULL;
    if ((r = sw_dht_new(&c->loop, c->node, &c->id, &dopt, &c->dht)) < 0) {
        fprintf(stderr, "swarmd status: cannot start the DHT: %s\n", sw_strerror(r));
        sw_p2p_node_close(c->node, NULL, NULL);
        uv_run(&c->loop, UV_RUN_DEFAULT);
        uv_loop_close(&c->loop);
        goto out;
    }
    uv_timer_init(&c->loop, &c->deadline);
    c->deadline.data = c;
    uv_timer_start(&c->deadline, on_deadline, (uint64_t)(timeout_s * 1000.0), 0);
    if ((r = sw_dht_bootstrap(c->dht, peers, npeers, on_boot, c)) < 0) {
        fprintf(stderr, "swarmd status: cannot bootstrap: %s\n", sw_strerror(r));
        finish(c, 1);
    }
    uv_run(&c->loop, UV_RUN_DEFAULT);
    uv_loop_close(&c->loop);
    rc = c->rc;
out:
    sodium_memzero(key, sizeof(key));
    sw_identity_wipe(&c->id);
    sw_free(c->srv);
    sw_free(c->count);
    sw_free(c);
    sw_free(peers_buf);
    return rc;
}
