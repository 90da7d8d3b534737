/*
 * test-route.c - pipeline/route.c: least-latency chains (against brute force over every chain on
 * random swarms), the cache penalty, bans with exponential backoff, the weights-digest majority,
 * the uncovered-block error, and the throughput-weighted random chains' frequencies.
 */
#include <errno.h>

#include "pipeline/route.h"
#include "test.h"
#include "util/error.h"

static sw_peer_id_t pid(int i)
{
    sw_peer_id_t p;
    memset(&p, 0, sizeof(p));
    p.b[0] = (uint8_t)i;
    p.b[1] = (uint8_t)(i >> 8);
    p.b[31] = 0x5a;
    return p;
}

/* Adds server i with span [a, b), announcing each block (digest d per block, NULL: none). */
static int add(sw_route_table_t *t, int i, int a, int b, double tps, double rtt, uint64_t cache,
               const uint8_t *d)
{
    sw_peer_id_t p = pid(i);
    size_t idx = 0;
    for (int k = a; k < b; k++) {
        int r = sw_route_add(t, &p, "addr", "", a, b, 1, tps, tps, cache, k, d, &idx);
        if (r < 0)
            return r;
    }
    t->srv[idx].rtt_ms = rtt;
    return 0;
}

static double chain_cost(const sw_route_table_t *t, const sw_route_hop_t *h, int n, uint64_t cache)
{
    double c = 0;
    for (int i = 0; i < n; i++)
        c += sw_route_hop_cost(t, &h[i], cache);
    return c;
}

/* The best cost over every chain from boundary i to b, by exhaustive recursion. */
static double brute(const sw_route_table_t *t, int i, int b, uint64_t cache)
{
    double best = INFINITY;
    if (i == b)
        return 0;
    for (size_t k = 0; k < t->n; k++) {
        const sw_route_server_t *s = &t->srv[k];
        if (!s->online || s->start > i || s->end <= i)
            continue;
        for (int j = i + 1; j <= s->end && j <= b; j++) {
            sw_route_hop_t h = { k, i, j };
            double c = sw_route_hop_cost(t, &h, cache) + brute(t, j, b, cache);
            if (c < best)
                best = c;
        }
    }
    return best;
}

static uint64_t rng_state = 42;
static double urand(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) * 0x1.0p-53;
}

static void test_chain_is_optimal(void)
{
    for (int trial = 0; trial < 200; trial++) {
        sw_route_table_t t;
        sw_route_hop_t hops[32];
        int L = 2 + (int)(urand() * 7), ns = 1 + (int)(urand() * 7), n;
        sw_route_table_init(&t, L);
        for (int i = 0; i < ns; i++) {
            int a = (int)(urand() * L), b = a + 1 + (int)(urand() * (L - a));
            SW_CHECK_OK(add(&t, i, a, b, 1 + urand() * 100, urand() * 200, urand() < 0.2 ? 10 : 1000, NULL));
        }
        double best = brute(&t, 0, L, 100);
        n = sw_route_chain(&t, 0, L, 100, 0, hops, 32);
        if (!isfinite(best)) {
            SW_CHECKF(n == SW_ESTATE, "trial %d: uncovered swarm gave %d", trial, n);
        } else {
            SW_CHECKF(n > 0, "trial %d: %d (%s)", trial, n, sw_err_detail());
            SW_CHECK(hops[0].start == 0 && hops[n - 1].end == L);
            for (int i = 1; i < n; i++)
                SW_CHECK(hops[i].start == hops[i - 1].end);
            for (int i = 0; i < n; i++) {
                const sw_route_server_t *s = &t.srv[hops[i].server];
                SW_CHECK(s->start <= hops[i].start && hops[i].end <= s->end);
            }
            SW_CHECKF(fabs(chain_cost(&t, hops, n, 100) - best) < 1e-9, "trial %d: %g vs %g", trial,
                      chain_cost(&t, hops, n, 100), best);
        }
        sw_route_table_free(&t);
    }
}

static void test_prefers_fast_and_near(void)
{
    sw_route_table_t t;
    sw_route_hop_t h[8];
    sw_route_table_init(&t, 4);
    SW_CHECK_OK(add(&t, 1, 0, 4, 10, 300, 1000, NULL));  /* far */
    SW_CHECK_OK(add(&t, 2, 0, 2, 10, 5, 1000, NULL));    /* near halves */
    SW_CHECK_OK(add(&t, 3, 2, 4, 10, 5, 1000, NULL));
    SW_CHECK(sw_route_chain(&t, 0, 4, 100, 0, h, 8) == 2);
    SW_CHECK(h[0].server == 1 && h[1].server == 2);
    /* a sub-span: only [2, 4) */
    SW_CHECK(sw_route_chain(&t, 2, 4, 100, 0, h, 8) == 1 && h[0].server == 2);
    /* no cache room on the near ones: the far one, despite its RTT */
    t.srv[1].cache_left = 10;
    SW_CHECK(sw_route_chain(&t, 0, 4, 100, 0, h, 8) == 1 && h[0].server == 0);
    sw_route_table_free(&t);
}

static void test_bans(void)
{
    sw_route_table_t t;
    sw_route_hop_t h[8];
    sw_peer_id_t p = pid(2);
    int n;
    sw_route_table_init(&t, 2);
    SW_CHECK_OK(add(&t, 1, 0, 2, 10, 100, 1000, NULL));
    SW_CHECK_OK(add(&t, 2, 0, 2, 10, 1, 1000, NULL));
    SW_CHECK(sw_route_chain(&t, 0, 2, 1, 0, h, 8) == 1 && h[0].server == 1);
    sw_route_ban(&t, &p, 1000);
    SW_CHECK(sw_route_banned(&t, &p, 1000 + SW_ROUTE_BAN_BASE_MS - 1));
    SW_CHECK(!sw_route_banned(&t, &p, 1000 + SW_ROUTE_BAN_BASE_MS));
    SW_CHECK(sw_route_chain(&t, 0, 2, 1, 1500, h, 8) == 1 && h[0].server == 0);
    SW_CHECK(sw_route_chain(&t, 0, 2, 1, 2000, h, 8) == 1 && h[0].server == 1);
    /* failures in a row double the ban, up to the cap */
    sw_route_ban(&t, &p, 5000);
    SW_CHECK(sw_route_banned(&t, &p, 5000 + 2 * SW_ROUTE_BAN_BASE_MS - 1));
    SW_CHECK(!sw_route_banned(&t, &p, 5000 + 2 * SW_ROUTE_BAN_BASE_MS));
    for (int i = 0; i < 20; i++)
        sw_route_ban(&t, &p, 10000);
    SW_CHECK(sw_route_banned(&t, &p, 10000 + SW_ROUTE_BAN_MAX_MS - 1));
    SW_CHECK(!sw_route_banned(&t, &p, 10000 + SW_ROUTE_BAN_MAX_MS));
    sw_route_unban(&t, &p);
    SW_CHECK(!sw_route_banned(&t, &p, 10000));
    /* both banned: the error names the block */
    sw_route_ban(&t, &p, 0);
    p = pid(1);
    sw_route_ban(&t, &p, 0);
    n = sw_route_chain(&t, 0, 2, 1, 0, h, 8);
    SW_CHECK(n == SW_ESTATE && strstr(sw_err_detail(), "block 0"));
    sw_route_table_free(&t);
}

static void test_uncovered_block_named(void)
{
    sw_route_table_t t;
    sw_route_hop_t h[8];
    sw_route_table_init(&t, 6);
    SW_CHECK_OK(add(&t, 1, 0, 3, 10, 1, 1000, NULL));
    SW_CHECK_OK(add(&t, 2, 4, 6, 10, 1, 1000, NULL));
    SW_CHECK(sw_route_chain(&t, 0, 6, 1, 0, h, 8) == SW_ESTATE);
    SW_CHECKF(strstr(sw_err_detail(), "block 3 "), "%s", sw_err_detail());
    SW_CHECK(sw_route_chain(&t, 4, 6, 1, 0, h, 8) == 1);
    SW_CHECK(sw_route_chain(&t, 0, 7, 1, 0, h, 8) == SW_EUSAGE);
    SW_CHECK(sw_route_chain(&t, 0, 6, 1, 0, h, 1) == SW_ESTATE);
    sw_route_table_free(&t);
}

static void test_digest_majority(void)
{
    sw_route_table_t t;
    sw_route_hop_t h[8];
    uint8_t good[32], bad[32];
    int blk = -2;
    memset(good, 1, sizeof(good));
    memset(bad, 2, sizeof(bad));
    sw_route_table_init(&t, 4);
    SW_CHECK_OK(add(&t, 1, 0, 4, 10, 50, 1000, good));
    SW_CHECK_OK(add(&t, 2, 0, 4, 10, 40, 1000, good));
    SW_CHECK_OK(add(&t, 3, 0, 4, 1000, 1, 1000, bad)); /* fastest, but its weights differ */
    SW_CHECK(sw_route_check_digests(&t, &blk) == 1 && blk == 0);
    SW_CHECK(t.srv[2].excluded && !t.srv[0].excluded && !t.srv[1].excluded);
    SW_CHECK(sw_route_chain(&t, 0, 4, 1, 0, h, 8) == 1 && h[0].server == 1);
    /* a record of one block with another digest excludes the server (digests are per block) */
    sw_route_table_free(&t);
    sw_route_table_init(&t, 2);
    SW_CHECK_OK(add(&t, 1, 0, 2, 10, 50, 1000, good));
    SW_CHECK_OK(add(&t, 2, 0, 2, 10, 50, 1000, good));
    {
        sw_peer_id_t p = pid(2);
        SW_CHECK_OK(sw_route_add(&t, &p, "addr", "", 0, 2, 1, 10, 10, 1000, 1, bad, NULL));
    }
    SW_CHECK(sw_route_check_digests(&t, &blk) == 1 && blk == 1 && t.srv[1].excluded);
    sw_route_table_free(&t);
}

static void test_bad_records(void)
{
    sw_route_table_t t;
    sw_peer_id_t p = pid(1);
    sw_route_table_init(&t, 4);
    SW_CHECK(sw_route_add(&t, &p, "a", "", 0, 5, 1, 1, 1, 1, 0, NULL, NULL) == SW_EFORMAT);
    SW_CHECK(sw_route_add(&t, &p, "a", "", 2, 2, 1, 1, 1, 1, 2, NULL, NULL) == SW_EFORMAT);
    SW_CHECK(sw_route_add(&t, &p, "a", "", 0, 2, 1, 1, 1, 1, 3, NULL, NULL) == SW_EFORMAT);
    SW_CHECK(sw_route_add(&t, &p, "a", "", -1, 2, 1, 1, 1, 1, 0, NULL, NULL) == SW_EFORMAT);
    SW_CHECK(sw_route_add(&t, &p, "", "", 0, 2, 1, 1, 1, 1, 0, NULL, NULL) == SW_EFORMAT);
    SW_CHECK(t.n == 0);
    SW_CHECK_OK(sw_route_add(&t, &p, "a", "", 0, 2, 1, NAN, NAN, 1, 0, NULL, NULL));
    SW_CHECK(t.srv[0].throughput == 0);
    /* the server moved: the new span replaces the old */
    SW_CHECK_OK(sw_route_add(&t, &p, "a", "", 1, 4, 1, 5, 5, 1, 3, NULL, NULL));
    SW_CHECK(t.n == 1 && t.srv[0].start == 1 && t.srv[0].end == 4);
    sw_route_table_free(&t);
}

static void test_random_weighted(void)
{
    sw_route_table_t t;
    sw_route_hop_t h[8];
    uint64_t rng = 7;
    int count[3] = { 0 }, N = 30000;
    sw_route_table_init(&t, 4);
    SW_CHECK_OK(add(&t, 1, 0, 4, 10, 1, 1000, NULL));
    SW_CHECK_OK(add(&t, 2, 0, 2, 30, 1, 1000, NULL));
    SW_CHECK_OK(add(&t, 3, 2, 4, 60, 1, 1000, NULL));
    for (int i = 0; i < N; i++) {
        int n = sw_route_random(&t, 0, 4, 1, 0, &rng, h, 8);
        SW_CHECK(n >= 1 && h[0].start == 0 && h[n - 1].end == 4);
        count[h[0].server]++;
    }
    /* block 0: server 0 with p = 10/40, server 1 with 30/40 (5 sigma ~ 0.0125) */
    SW_CHECKF(fabs(count[0] / (double)N - 0.25) < 0.0125, "%d", count[0]);
    SW_CHECKF(fabs(count[1] / (double)N - 0.75) < 0.0125, "%d", count[1]);
    SW_CHECK(count[2] == 0);
    /* calls bigger than server 1's max_batch_tokens go to server 0 only */
    t.srv[1].max_batch_tokens = 16;
    for (int i = 0; i < 100; i++) {
        SW_CHECK(sw_route_random(&t, 0, 4, 17, 0, &rng, h, 8) == 1 && h[0].server == 0);
        SW_CHECK(sw_route_random(&t, 0, 4, 16, 0, &rng, h, 8) >= 1);
    }
    t.srv[0].max_batch_tokens = 8;
    SW_CHECK(sw_route_random(&t, 0, 4, 17, 0, &rng, h, 8) == SW_ESTATE);
    sw_route_table_free(&t);
}

int main(void)
{
    SW_RUN(test_chain_is_optimal);
    SW_RUN(test_prefers_fast_and_near);
    SW_RUN(test_bans);
    SW_RUN(test_uncovered_block_named);
    SW_RUN(test_digest_majority);
    SW_RUN(test_bad_records);
    SW_RUN(test_random_weighted);
    return sw_test_summary("test-route");
}
