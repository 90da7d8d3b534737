/*
 * test-blocks.c - daemon/blocks.c: Petals' block selection (gaps first, weakest window, ties to the
 * smallest start, n == L, invalid n), the per-block throughput sums, and the rebalance test
 * (sw_should_move: gaps filled, a balanced swarm stays, the only server of a block never leaves,
 * imbalance beyond the quality threshold moves, quality 0 / > 1, bad arguments).
 */
#include <errno.h>

#include "../daemon/blocks.h"
#include "test.h"
#include "util/error.h"

static void test_gaps_first(void)
{
    double thr[6] = { 5, 5, 0, 0, 5, 5 };
    int s = -1;
    SW_CHECK_OK(sw_choose_blocks(thr, 6, 2, &s));
    SW_CHECK(s == 2);
    double thr2[4] = { 3, 3, 0, 0 }; /* one server on 0:2: the next takes 2:4 */
    SW_CHECK_OK(sw_choose_blocks(thr2, 4, 2, &s));
    SW_CHECK(s == 2);
    double thr3[4] = { 1, 1, 1, 0 }; /* a window holding the gap beats any without it */
    SW_CHECK_OK(sw_choose_blocks(thr3, 4, 3, &s));
    SW_CHECK(s == 1);
}

static void test_weakest_window(void)
{
    /* minima equal (1): the second-weakest decides */
    double thr[5] = { 4, 1, 9, 1, 2 };
    int s = -1;
    SW_CHECK_OK(sw_choose_blocks(thr, 5, 2, &s));
    SW_CHECK(s == 3); /* {1,2} < {1,4} < {1,9} */
    double thr2[5] = { 7, 6, 5, 3, 8 };
    SW_CHECK_OK(sw_choose_blocks(thr2, 5, 1, &s));
    SW_CHECK(s == 3);
}

static void test_ties_smallest_start(void)
{
    double thr[6] = { 2, 2, 2, 2, 2, 2 };
    int s = -1;
    SW_CHECK_OK(sw_choose_blocks(thr, 6, 3, &s));
    SW_CHECK(s == 0);
    double thr2[6] = { 5, 1, 2, 5, 2, 1 }; /* {1,2} at 1 and {1,2} at 4: the first */
    SW_CHECK_OK(sw_choose_blocks(thr2, 6, 2, &s));
    SW_CHECK(s == 1);
}

static void test_n_equals_l(void)
{
    double thr[3] = { 9, 0, 4 };
    int s = -1;
    SW_CHECK_OK(sw_choose_blocks(thr, 3, 3, &s));
    SW_CHECK(s == 0);
}

static void test_invalid(void)
{
    double thr[3] = { 0 };
    int s = 7;
    SW_CHECK(sw_choose_blocks(thr, 3, 0, &s) == -EINVAL);
    SW_CHECK(sw_choose_blocks(thr, 3, -1, &s) == -EINVAL);
    SW_CHECK(sw_choose_blocks(thr, 3, 4, &s) == -EINVAL);
    SW_CHECK(sw_choose_blocks(NULL, 3, 1, &s) == -EINVAL);
    SW_CHECK(sw_choose_blocks(thr, 3, 1, NULL) == -EINVAL);
    SW_CHECK(s == 7);
}

static void test_throughputs(void)
{
    sw_peer_span_t sp[4];
    double thr[4];
    memset(sp, 0, sizeof(sp));
    sp[0].peer[0] = 2; sp[0].start = 2; sp[0].end = 4; sp[0].tps = 10;
    sp[1].peer[0] = 1; sp[1].start = 0; sp[1].end = 2; sp[1].tps = 3;
    sp[2].peer[0] = 2; sp[2].start = 2; sp[2].end = 4; sp[2].tps = 10; /* same peer again: once */
    sp[3].peer[0] = 3; sp[3].start = 1; sp[3].end = 9; sp[3].tps = 0.5; /* clipped to 4 */
    SW_CHECK_OK(sw_block_throughputs(sp, 4, 4, thr));
    SW_CHECK(thr[0] == 3 && thr[1] == 3.5 && thr[2] == 10.5 && thr[3] == 10.5);
    SW_CHECK(sp[0].peer[0] == 1 && sp[3].peer[0] == 3); /* sorted by peer id */
    SW_CHECK_OK(sw_block_throughputs(NULL, 0, 4, thr));
    SW_CHECK(thr[0] == 0 && thr[3] == 0);
    SW_CHECK(sw_block_throughputs(sp, 4, 0, thr) == -EINVAL);
}

static sw_peer_span_t span_of(int peer, int a, int b, double tps)
{
    sw_peer_span_t s;
    memset(&s, 0, sizeof(s));
    s.peer[0] = (uint8_t)peer;
    s.start = a;
    s.end = b;
    s.tps = tps;
    return s;
}

static void test_should_move(void)
{
    uint8_t me[32] = { 0 };
    sw_peer_span_t sp[6];
    double q;
    int st = -1;

    /* 6 blocks: peers 1 and 4 on 0:2, peer 3 on 4:6, gap 2:4 (peer 2 was killed) */
    sp[0] = span_of(1, 0, 2, 1); sp[1] = span_of(3, 4, 6, 1); sp[2] = span_of(4, 0, 2, 1);
    me[0] = 4;
    SW_CHECK(sw_should_move(sp, 3, 6, me, 0.75, 1, &st, &q) == 1);
    SW_CHECK(st == 2);
    SW_CHECK(q == 0);
    me[0] = 1;
    sp[0] = span_of(1, 0, 2, 1); sp[1] = span_of(3, 4, 6, 1); sp[2] = span_of(4, 0, 2, 1);
    SW_CHECK(sw_should_move(sp, 3, 6, me, 0.75, 2, &st, &q) == 1 && st == 2);
    /* peer 3 is the only server of 4:6: it stays although the swarm has a gap */
    me[0] = 3;
    sp[0] = span_of(1, 0, 2, 1); sp[1] = span_of(3, 4, 6, 1); sp[2] = span_of(4, 0, 2, 1);
    SW_CHECK(sw_should_move(sp, 3, 6, me, 0.75, 3, &st, &q) == 0);
    /* balanced: two servers on each half of 4 blocks */
    sp[0] = span_of(1, 0, 2, 1); sp[1] = span_of(2, 2, 4, 1); sp[2] = span_of(3, 0, 2, 1);
    sp[3] = span_of(4, 2, 4, 1);
    for (int p = 1; p <= 4; p++) {
        me[0] = (uint8_t)p;
        SW_CHECK(sw_should_move(sp, 4, 4, me, 0.75, (uint64_t)p, &st, &q) == 0);
    }
    /* imbalance: 0:2 has 20 tokens/s, 2:4 has 1: one of the fast ones moves (quality 0.1) */
    sp[0] = span_of(1, 0, 2, 10); sp[1] = span_of(2, 0, 2, 10); sp[2] = span_of(3, 2, 4, 1);
    me[0] = 1;
    st = -1;
    SW_CHECK(sw_should_move(sp, 3, 4, me, 0.75, 4, &st, &q) == 1 && st == 2);
    SW_CHECK(q > 0.09 && q < 0.11);
    /* ... but not with balance quality 0.05 (the gain is not worth it), nor 0 (disabled) */
    SW_CHECK(sw_should_move(sp, 3, 4, me, 0.05, 4, &st, &q) == 0);
    SW_CHECK(sw_should_move(sp, 3, 4, me, 0, 4, &st, &q) == 0);
    /* quality > 1: always to the best place without this server */
    sp[0] = span_of(1, 0, 2, 1); sp[1] = span_of(2, 2, 4, 1); sp[2] = span_of(3, 0, 2, 1);
    sp[3] = span_of(4, 2, 4, 1);
    me[0] = 3;
    st = -1;
    SW_CHECK(sw_should_move(sp, 4, 4, me, 1.5, 5, &st, &q) == 0 && st == 0);
    me[0] = 9; /* not among the spans */
    SW_CHECK(sw_should_move(sp, 4, 4, me, 0.75, 6, &st, &q) == -EINVAL);
    SW_CHECK(sw_should_move(NULL, 4, 4, me, 0.75, 6, &st, &q) == -EINVAL);
}

int main(void)
{
    long live0 = sw_alloc_live();

    SW_RUN(test_gaps_first);
    SW_RUN(test_weakest_window);
    SW_RUN(test_ties_smallest_start);
    SW_RUN(test_n_equals_l);
    SW_RUN(test_invalid);
    SW_RUN(test_throughputs);
    SW_RUN(test_should_move);
    if (sw_alloc_live() != live0) {
        fprintf(stderr, "leak: %ld allocations live\n", sw_alloc_live() - live0);
        return 1;
    }
    return sw_test_summary("test-blocks");
}
