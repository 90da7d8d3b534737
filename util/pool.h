/*
 * pool.h - a fixed pool of CPU threads for data-parallel kernels.
 *
 * sw_pool_for() splits [0, n) into one contiguous range per thread (multiples of `grain`), runs
 * fn on each range, the calling thread taking the first, and returns when all are done. It is a
 * blocking fork-join: kernels call it, it allocates nothing, and a call made from inside a task
 * runs serially on that thread. Only one thread at a time may drive a given pool (the executor
 * thread of a device owns it; see DESIGN.md "Threads").
 */
#ifndef SW_UTIL_POOL_H
#define SW_UTIL_POOL_H

#include <stddef.h>

typedef struct sw_pool sw_pool_t;

/* fn(ctx, begin, end, tid): tid in [0, nthreads) is stable, for per-thread scratch buffers. */
typedef void (*sw_pool_fn)(void *ctx, size_t begin, size_t end, int tid);

/* nthreads <= 0 means one per online CPU. */
int sw_pool_create(int nthreads, sw_pool_t **out);
void sw_pool_destroy(sw_pool_t *p);
int sw_pool_threads(const sw_pool_t *p);
void sw_pool_for(sw_pool_t *p, size_t n, size_t grain, sw_pool_fn fn, void *ctx);

/*
 * The process-wide pool used by the CPU kernels, created on first use with
 * sw_pool_default_threads() threads. sw_pool_set_default_threads() must come before first use.
 */
sw_pool_t *sw_pool_global(void);
void sw_pool_set_default_threads(int nthreads);
int sw_pool_default_threads(void);

#endif
