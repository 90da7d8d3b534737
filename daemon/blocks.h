/*
 * blocks.h - which blocks a new server takes (Petals' server/block_selection.py, see
 * docs in shared/reference/petals.md section 1.3): per-block swarm throughput is the sum of the
 * throughputs of the spans covering it; a server of n blocks takes the window [start, start+n)
 * whose sorted throughputs are lexicographically smallest (weakest block first, then the
 * second-weakest, ...), ties to the smallest start. Gaps (throughput 0) are filled first.
 */
#ifndef SW_DAEMON_BLOCKS_H
#define SW_DAEMON_BLOCKS_H

#include <stdint.h>

/* One peer's announced span [start, end) and throughput (tokens/s). */
typedef struct {
    uint8_t peer[32];
    int start, end;
    double tps;
} sw_peer_span_t;

/*
 * Sums into thr[0..n_blocks) the throughput of every span, each counted once per peer (the first
 * span of a peer in the array wins) and summed in peer-id order (bytewise), so the float sums are
 * the same on every node. Spans are clipped to [0, n_blocks). Sorts `spans` in place.
 * Returns 0, or -EINVAL for n_blocks < 1 or a NULL pointer.
 */
int sw_block_throughputs(sw_peer_span_t *spans, int nspans, int n_blocks, double *thr);

/*
 * Sets *start to the best window start for n blocks out of n_blocks (throughputs thr[]).
 * Returns 0, or -EINVAL when n < 1, n > n_blocks or a pointer is NULL.
 */
int sw_choose_blocks(const double *thr, int n_blocks, int n, int *start);

/*
 * Petals' rebalance test (should_choose_other_blocks, shared/reference/petals.md section 1.3) for
 * the server `self` (whose span must be among spans; joining/online spans only, one per peer):
 *   1. balance_quality > 1: always move (debugging). balance_quality <= 0: never (disabled).
 *   2. initial = min over blocks of the swarm's throughput; take this server's throughput x
 *      (1 + eps) off its span (eps = 1e-3, a bias towards staying put).
 *   3. Stricter than Petals: never leave a block uncovered - if a block of this span would drop
 *      to <= 0 (this server is its only one), stay, even when the swarm already has a gap.
 *   4. new_start = the best window for this span's length; the same start: stay.
 *   5. Simulate the move, then a local search: every server in random order (seeded by `seed`)
 *      takes itself off and moves to its best start, until nothing moves.
 *   6. new = min throughput after that; stay if new < initial or new < eps; else move iff
 *      initial / new < balance_quality - eps.
 * Returns 1 (move; *new_start set to step 4's start), 0 (stay), or -EINVAL (bad arguments or
 * self not among spans), -ENOMEM. *quality gets initial / new when step 6 ran, else -1.
 * Sorts spans in place (peer-id order, as sw_block_throughputs).
 */
int sw_should_move(sw_peer_span_t *spans, int nspans, int n_blocks, const uint8_t self[32],
                   double balance_quality, uint64_t seed, int *new_start, double *quality);

#endif
