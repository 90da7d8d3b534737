/*
 * test-blocks.c - daemon/blocks.c: Petals' block selection (gaps first, weakest window, ties to the
 * smallest start, n == L, invalid n) and the per-block throughput sums.
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
    sw_span_t sp[4];
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

int main(void)
{
    long live0 = sw_alloc_live();

    SW_RUN(test_gaps_first);
    SW_RUN(test_weakest_window);
    SW_RUN(test_ties_smallest_start);
    SW_RUN(test_n_equals_l);
    SW_RUN(test_invalid);
    SW_RUN(test_throughputs);
    if (sw_alloc_live() != live0) {
        fprintf(stderr, "leak: %ld allocations live\n", sw_alloc_live() - live0);
        return 1;
    }
    return sw_test_summary("test-blocks");
}
