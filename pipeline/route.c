/*
 * route.c - server choice for clients (see route.h). Runs on the client's loop thread; no I/O.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "pipeline/route.h"
#include "util/alloc.h"
#include "util/error.h"

void sw_route_table_init(sw_route_table_t *t, int num_blocks)
{
    memset(t, 0, sizeof(*t));
    t->num_blocks = num_blocks;
}

void sw_route_table_clear_servers(sw_route_table_t *t)
{
    for (size_t i = 0; i < t->n; i++) {
        sw_free(t->srv[i].digest);
        sw_free(t->srv[i].have_digest);
    }
    t->n = 0;
}

void sw_route_table_free(sw_route_table_t *t)
{
    sw_route_table_clear_servers(t);
    sw_free(t->srv);
    sw_free(t->bans);
    memset(t, 0, sizeof(*t));
}

static int span_alloc(sw_route_server_t *s)
{
    size_t n = (size_t)(s->end - s->start);

    s->digest = sw_calloc(n, sizeof(*s->digest));
    s->have_digest = sw_calloc(n, 1);
    if (!s->digest || !s->have_digest) {
        sw_free(s->digest);
        sw_free(s->have_digest);
        s->digest = NULL;
        s->have_digest = NULL;
        return -ENOMEM;
    }
    return 0;
}

int sw_route_add(sw_route_table_t *t, const sw_peer_id_t *peer, const char *addr, const char *name,
                 int start, int end, int online, double throughput, double inference_rps,
                 uint64_t cache_left, int block, const uint8_t *digest, size_t *index)
{
    sw_route_server_t *s = NULL;
    size_t i;

    if (start < 0 || end > t->num_blocks || start >= end || block < start || block >= end)
        return sw_err(SW_EFORMAT, "span %d:%d (block %d) does not fit a model of %d blocks", start,
                      end, block, t->num_blocks);
    if (!addr || !*addr || strlen(addr) >= sizeof(s->addr))
        return sw_err(SW_EFORMAT, "announcement without a usable address");
    for (i = 0; i < t->n; i++)
        if (memcmp(t->srv[i].peer.b, peer->b, SW_PEER_ID_LEN) == 0)
            break;
    if (i == t->n) {
        if (t->n == t->cap) {
            size_t cap = t->cap ? 2 * t->cap : 16;
            sw_route_server_t *p = sw_realloc(t->srv, cap * sizeof(*p));
            if (!p)
                return -ENOMEM;
            t->srv = p;
            t->cap = cap;
        }
        s = &t->srv[t->n];
        memset(s, 0, sizeof(*s));
        s->peer = *peer;
        s->start = start;
        s->end = end;
        s->rtt_ms = -1;
        if (span_alloc(s) < 0)
            return -ENOMEM;
        t->n++;
    } else {
        s = &t->srv[i];
        if (s->start != start || s->end != end) { /* it moved: earlier digests are of another span */
            sw_free(s->digest);
            sw_free(s->have_digest);
            s->start = start;
            s->end = end;
            if (span_alloc(s) < 0) {
                s->end = s->start; /* unusable until re-added */
                return -ENOMEM;
            }
        }
    }
    snprintf(s->addr, sizeof(s->addr), "%s", addr);
    snprintf(s->name, sizeof(s->name), "%s", name ? name : "");
    s->online = online;
    s->throughput = isfinite(throughput) ? throughput : 0;
    s->inference_rps = isfinite(inference_rps) ? inference_rps : 0;
    s->cache_left = cache_left;
    if (digest) {
        memcpy(s->digest[block - start], digest, SW_ROUTE_DIGEST_LEN);
        s->have_digest[block - start] = 1;
    }
    if (index)
        *index = i;
    return 0;
}

/* ---- digests ---- */

static const uint8_t none_digest[SW_ROUTE_DIGEST_LEN];

static const uint8_t *digest_of(const sw_route_server_t *s, int block)
{
    int k = block - s->start;
    return s->have_digest[k] ? s->digest[k] : none_digest;
}

int sw_route_check_digests(sw_route_table_t *t, int *bad_block)
{
    int excluded = 0;

    if (bad_block)
        *bad_block = -1;
    for (size_t i = 0; i < t->n; i++)
        t->srv[i].excluded = 0;
    for (int b = 0; b < t->num_blocks; b++) {
        /* majority vote among the online servers of block b (ties: the first seen wins) */
        const uint8_t *best = NULL;
        int best_votes = 0;
        for (size_t i = 0; i < t->n; i++) {
            const sw_route_server_t *s = &t->srv[i];
            int votes = 0;
            if (!s->online || b < s->start || b >= s->end)
                continue;
            for (size_t j = 0; j < t->n; j++) {
                const sw_route_server_t *u = &t->srv[j];
                if (u->online && b >= u->start && b < u->end &&
                    memcmp(digest_of(u, b), digest_of(s, b), SW_ROUTE_DIGEST_LEN) == 0)
                    votes++;
            }
            if (votes > best_votes) {
                best_votes = votes;
                best = digest_of(s, b);
            }
        }
        if (!best)
            continue;
        for (size_t i = 0; i < t->n; i++) {
            sw_route_server_t *s = &t->srv[i];
            if (s->online && !s->excluded && b >= s->start && b < s->end &&
                memcmp(digest_of(s, b), best, SW_ROUTE_DIGEST_LEN) != 0) {
                s->excluded = 1;
                excluded++;
                if (bad_block && *bad_block < 0)
                    *bad_block = b;
            }
        }
    }
    return excluded;
}

/* ---- bans ---- */

static struct sw_route_ban *find_ban(const sw_route_table_t *t, const sw_peer_id_t *peer)
{
    for (size_t i = 0; i < t->nbans; i++)
        if (memcmp(t->bans[i].peer.b, peer->b, SW_PEER_ID_LEN) == 0)
            return &t->bans[i];
    return NULL;
}

void sw_route_ban(sw_route_table_t *t, const sw_peer_id_t *peer, uint64_t now_ms)
{
    struct sw_route_ban *b = find_ban(t, peer);
    uint64_t d = SW_ROUTE_BAN_BASE_MS;

    if (!b) {
        if (t->nbans == t->bans_cap) {
            size_t cap = t->bans_cap ? 2 * t->bans_cap : 8;
            struct sw_route_ban *p = sw_realloc(t->bans, cap * sizeof(*p));
            if (!p)
                return; /* no memory: the peer stays usable, which is safe */
            t->bans = p;
            t->bans_cap = cap;
        }
        b = &t->bans[t->nbans++];
        memset(b, 0, sizeof(*b));
        b->peer = *peer;
    }
    b->fails++;
    for (uint32_t k = 1; k < b->fails && d < SW_ROUTE_BAN_MAX_MS; k++)
        d *= 2;
    if (d > SW_ROUTE_BAN_MAX_MS)
        d = SW_ROUTE_BAN_MAX_MS;
    b->until_ms = now_ms + d;
}

void sw_route_unban(sw_route_table_t *t, const sw_peer_id_t *peer)
{
    struct sw_route_ban *b = find_ban(t, peer);

    if (b) {
        *b = t->bans[t->nbans - 1];
        t->nbans--;
    }
}

int sw_route_banned(const sw_route_table_t *t, const sw_peer_id_t *peer, uint64_t now_ms)
{
    const struct sw_route_ban *b = find_ban(t, peer);
    return b && now_ms < b->until_ms;
}

/* ---- chains ---- */

static int usable(const sw_route_table_t *t, const sw_route_server_t *s, uint64_t now_ms)
{
    return s->online && !s->excluded && s->end > s->start && !sw_route_banned(t, &s->peer, now_ms);
}

static double block_time(const sw_route_server_t *s)
{
    double rps = s->inference_rps > 0 ? s->inference_rps : s->throughput;
    return 1.0 / (rps > 0 ? rps : 1.0); /* unknown: assume slow (1 step/s) */
}

double sw_route_hop_cost(const sw_route_table_t *t, const sw_route_hop_t *h, uint64_t cache_tokens)
{
    const sw_route_server_t *s = &t->srv[h->server];
    double rtt = (s->rtt_ms >= 0 ? s->rtt_ms : SW_ROUTE_DEFAULT_RTT_MS) / 1000.0;
    double c = rtt + (h->end - h->start) * block_time(s);

    if (cache_tokens > s->cache_left)
        c += SW_ROUTE_CACHE_PENALTY_S;
    return c;
}

/* The block no usable server covers: the one after the last reachable boundary (if a server held
 * it, the boundary after it would be reachable too). */
static int uncovered(int a, int n, const double *dist)
{
    int m = 0;

    for (int j = 0; j <= n; j++)
        if (isfinite(dist[j]))
            m = j;
    return a + m;
}

int sw_route_chain(const sw_route_table_t *t, int a, int b, uint64_t cache_tokens, uint64_t now_ms,
                   sw_route_hop_t *hops, int cap)
{
    int n = b - a, nh = 0, rc;
    double *dist;
    sw_route_hop_t *via; /* the hop that reaches each boundary */

    if (a < 0 || b > t->num_blocks || a >= b)
        return sw_err(SW_EUSAGE, "blocks %d:%d are not a span of a %d-block model", a, b, t->num_blocks);
    dist = sw_malloc((size_t)(n + 1) * sizeof(*dist));
    via = sw_malloc((size_t)(n + 1) * sizeof(*via));
    if (!dist || !via) {
        rc = -ENOMEM;
        goto out;
    }
    for (int i = 0; i <= n; i++)
        dist[i] = INFINITY;
    dist[0] = 0;
    /* edges only go forward, so relaxing boundaries in order is exact (a DAG's shortest path) */
    for (int i = a; i < b; i++) {
        if (!isfinite(dist[i - a]))
            continue;
        for (size_t k = 0; k < t->n; k++) {
            const sw_route_server_t *s = &t->srv[k];
            if (!usable(t, s, now_ms) || s->start > i || s->end <= i)
                continue;
            for (int j = i + 1; j <= s->end && j <= b; j++) {
                sw_route_hop_t h = { k, i, j };
                double d = dist[i - a] + sw_route_hop_cost(t, &h, cache_tokens);
                if (d < dist[j - a]) {
                    dist[j - a] = d;
                    via[j - a] = h;
                }
            }
        }
    }
    if (!isfinite(dist[n])) {
        int blk = uncovered(a, n, dist);
        rc = sw_err(SW_ESTATE, "no usable server holds block %d (of %d:%d)", blk, a, b);
        goto out;
    }
    for (int j = n; j > 0; j = via[j].start - a)
        nh++;
    if (nh > cap) {
        rc = sw_err(SW_ELIMIT, "the chain needs %d hops, more than %d", nh, cap);
        goto out;
    }
    rc = nh;
    for (int j = n, k = nh - 1; j > 0; j = via[j].start - a, k--)
        hops[k] = via[j];
out:
    sw_free(dist);
    sw_free(via);
    return rc;
}

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Takes calls of batch_tokens positions (max_batch_tokens 0: unknown, assumed enough). */
static int takes(const sw_route_server_t *s, uint64_t batch_tokens)
{
    return s->max_batch_tokens == 0 || batch_tokens <= s->max_batch_tokens;
}

int sw_route_random(const sw_route_table_t *t, int a, int b, uint64_t batch_tokens, uint64_t now_ms,
                    uint64_t *rng, sw_route_hop_t *hops, int cap)
{
    int nh = 0;

    if (a < 0 || b > t->num_blocks || a >= b)
        return sw_err(SW_EUSAGE, "blocks %d:%d are not a span of a %d-block model", a, b, t->num_blocks);
    for (int i = a; i < b;) {
        double total = 0, pick;
        size_t chosen = t->n;
        for (size_t k = 0; k < t->n; k++) {
            const sw_route_server_t *s = &t->srv[k];
            if (usable(t, s, now_ms) && takes(s, batch_tokens) && s->start <= i && i < s->end)
                total += s->throughput > 0 ? s->throughput : 1e-9;
        }
        if (total <= 0)
            return sw_err(SW_ESTATE, "no usable server holds block %d (of %d:%d)", i, a, b);
        pick = (double)(splitmix64(rng) >> 11) * 0x1.0p-53 * total;
        for (size_t k = 0; k < t->n; k++) {
            const sw_route_server_t *s = &t->srv[k];
            if (!usable(t, s, now_ms) || !takes(s, batch_tokens) || s->start > i || i >= s->end)
                continue;
            chosen = k;
            pick -= s->throughput > 0 ? s->throughput : 1e-9;
            if (pick < 0)
                break;
        }
        if (nh == cap)
            return sw_err(SW_ELIMIT, "the chain needs more than %d hops", cap);
        hops[nh].server = chosen;
        hops[nh].start = i;
        hops[nh].end = t->srv[chosen].end < b ? t->srv[chosen].end : b;
        i = hops[nh].end;
        nh++;
    }
    return nh;
}
