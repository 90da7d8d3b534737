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
} sw_span_t;

/*
 * Sums into thr[0..n_blocks) the throughput of every span, each counted once per peer (the first
 * span of a peer in the array wins) and summed in peer-id order (bytewise), so the float sums are
 * the same on every node. Spans are clipped to [0, n_blocks). Sorts `spans` in place.
 * Returns 0, or -EINVAL for n_blocks < 1 or a NULL pointer.
 */
int sw_block_throughputs(sw_span_t *spans, int nspans, int n_blocks, double *thr);

/*
 * Sets *start to the best window start for n blocks out of n_blocks (throughputs thr[]).
 * Returns 0, or -EINVAL when n < 1, n > n_blocks or a pointer is NULL.
 */
int sw_choose_blocks(const double *thr, int n_blocks, int n, int *start);

#endif
