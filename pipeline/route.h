/*
 * route.h - choosing servers for a client: which chain of spans covers blocks [a, b) of a model.
 *
 * Pure logic, no network: the client (pipeline/client.c) fills a table with what the DHT says of
 * each server (its span, throughput, cache room, weights digests) and what it measured itself (the
 * round-trip time), marks the servers it has banned, and asks for a chain.
 *
 *   Inference (sw_route_chain): the chain with the least expected latency per step, by Dijkstra
 *   over block boundaries. A hop through server s from block i to block j (s.start <= i < j <=
 *   s.end) costs  rtt(s) + (j - i) * block_time(s) + cache_penalty(s)  seconds, where
 *   block_time(s) = 1 / inference_rps(s) (the decode steps per second through one block that the
 *   server measured; its announced throughput when it gave none), rtt is measured
 *   (SW_ROUTE_DEFAULT_RTT_MS when unknown) and
 *   the cache penalty (SW_ROUTE_CACHE_PENALTY_S) applies when the server announced less cache room
 *   than the session needs, so such a server is taken only when nothing else covers its blocks.
 *   Every step of a session visits every hop (the client sends the hidden states to each server in
 *   turn and gets them back), so the sum is what one decode step waits for.
 *
 *   Forward/backward (sw_route_random): from block a, a server covering the current block is drawn
 *   with probability proportional to its throughput and the chain continues at the end of its span
 *   (or b), as SWARM routes micro-batches.
 *
 * Excluded from both: servers not ONLINE, banned ones (sw_route_ban: exponential backoff), and
 * servers whose weights digest for some block of their span disagrees with the majority of the
 * servers announcing that block (a server without a digest counts as its own value "none").
 */
#ifndef SW_PIPELINE_ROUTE_H
#define SW_PIPELINE_ROUTE_H

#include <stddef.h>
#include <stdint.h>

#include "p2p/identity.h"

#define SW_ROUTE_DEFAULT_RTT_MS 100.0
#define SW_ROUTE_CACHE_PENALTY_S 30.0
#define SW_ROUTE_BAN_BASE_MS 1000u   /* first ban; doubles with each failure in a row */
#define SW_ROUTE_BAN_MAX_MS 60000u
#define SW_ROUTE_DIGEST_LEN 32

typedef struct {
    sw_peer_id_t peer;
    char addr[256];       /* PEERID@HOST:PORT as announced */
    char name[64];        /* public name, may be empty */
    int start, end;       /* span [start, end) */
    int online;           /* announced state ONLINE */
    double throughput;    /* tokens/s the server adds to each block of its span (Petals' rule) */
    double inference_rps; /* decode steps/s through one block (<= 0: unknown) */
    uint64_t cache_left;  /* cache tokens a new session may still reserve */
    uint32_t max_batch_tokens; /* most B x T of one step it takes (0: unknown) */
    double rtt_ms;        /* measured by the client; < 0: unknown */
    /* per block of the span: the announced weights digest; have_digest[k] = 0 when none came */
    uint8_t (*digest)[SW_ROUTE_DIGEST_LEN];
    uint8_t *have_digest;
    int excluded;         /* set by sw_route_check_digests */
} sw_route_server_t;

typedef struct {
    sw_route_server_t *srv;
    size_t n, cap;
    int num_blocks;
    /* bans by peer id: until (monotonic ms) and failures in a row */
    struct sw_route_ban {
        sw_peer_id_t peer;
        uint64_t until_ms;
        uint32_t fails;
    } *bans;
    size_t nbans, bans_cap;
} sw_route_table_t;

/* One hop of a chain: server index in the table, blocks [start, end). */
typedef struct {
    size_t server;
    int start, end;
} sw_route_hop_t;

void sw_route_table_init(sw_route_table_t *t, int num_blocks);
/* Frees the servers (keeps nothing); bans survive sw_route_table_clear_servers. */
void sw_route_table_free(sw_route_table_t *t);
void sw_route_table_clear_servers(sw_route_table_t *t);

/*
 * Adds what one announcement of block `block` says about a server (merging announcements of the
 * same peer: the span and figures of the latest call win, digests are kept per block). The span
 * must contain block and lie inside [0, num_blocks); else SW_EFORMAT and nothing is added.
 * digest may be NULL. Returns the server's index through *index (may be NULL).
 */
int sw_route_add(sw_route_table_t *t, const sw_peer_id_t *peer, const char *addr, const char *name,
                 int start, int end, int online, double throughput, double inference_rps,
                 uint64_t cache_left, int block, const uint8_t *digest, size_t *index);

/* Marks servers whose digest for some block of their span is not that block's majority digest.
 * Returns how many were excluded; *bad_block (may be NULL) gets one such block or -1. */
int sw_route_check_digests(sw_route_table_t *t, int *bad_block);

/* Bans a peer from now_ms for SW_ROUTE_BAN_BASE_MS * 2^(failures in a row - 1), capped. */
void sw_route_ban(sw_route_table_t *t, const sw_peer_id_t *peer, uint64_t now_ms);
/* Forgets a peer's failures (call after it served a step well). */
void sw_route_unban(sw_route_table_t *t, const sw_peer_id_t *peer);
int sw_route_banned(const sw_route_table_t *t, const sw_peer_id_t *peer, uint64_t now_ms);

/*
 * The least-latency chain over blocks [a, b) for a session needing cache_tokens of room, using
 * servers that are online, not banned at now_ms and not excluded. Writes up to cap hops; returns
 * their count, or SW_ESTATE with a detail naming the first block no usable server covers.
 */
int sw_route_chain(const sw_route_table_t *t, int a, int b, uint64_t cache_tokens, uint64_t now_ms,
                   sw_route_hop_t *hops, int cap);

/* Expected seconds one step through hop h takes (rtt + compute + penalty), as sw_route_chain
 * counts it. */
double sw_route_hop_cost(const sw_route_table_t *t, const sw_route_hop_t *h, uint64_t cache_tokens);

/*
 * A throughput-weighted random chain over [a, b) (forward/backward) for calls of batch_tokens
 * (B x T) each: servers that announce a smaller max_batch_tokens are not used. *rng is a
 * splitmix64 state. Errors as sw_route_chain.
 */
int sw_route_random(const sw_route_table_t *t, int a, int b, uint64_t batch_tokens, uint64_t now_ms,
                    uint64_t *rng, sw_route_hop_t *hops, int cap);

#endif
