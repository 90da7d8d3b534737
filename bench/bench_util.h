/*
 * bench_util.h - baselines the benchmarks print next to their own figures, measured in the same
 * run: memcpy bandwidth and read-only bandwidth, both with every thread of the global pool (the
 * kernels use them all, so the baseline does too). Best of `reps` passes over `bytes` of memory.
 */
#ifndef SW_BENCH_UTIL_H
#define SW_BENCH_UTIL_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util/pool.h"

static inline double sw_bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef struct {
    uint8_t *src, *dst;
    uint64_t sums[64];
} sw_bench_buf_t;

static void sw_bench_copy_part(void *ctx, size_t b, size_t e, int tid)
{
    sw_bench_buf_t *p = ctx;
    (void)tid;
    memcpy(p->dst + b * 4096, p->src + b * 4096, (e - b) * 4096);
}

static void sw_bench_read_part(void *ctx, size_t b, size_t e, int tid)
{
    sw_bench_buf_t *p = ctx;
    const uint64_t *w = (const uint64_t *)(p->src + b * 4096);
    size_t n = (e - b) * 512;
    uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;

    for (size_t i = 0; i < n; i += 4) {
        a0 += w[i];
        a1 += w[i + 1];
        a2 += w[i + 2];
        a3 += w[i + 3];
    }
    p->sums[tid & 63] = a0 + a1 + a2 + a3;
}

/* Bytes copied per second by memcpy (each byte is read once and written once), in GB/s. */
static inline double sw_bench_memcpy_gbs(size_t bytes, int reps)
{
    sw_bench_buf_t p;
    double best = 1e30;

    p.src = aligned_alloc(4096, bytes);
    p.dst = aligned_alloc(4096, bytes);
    if (!p.src || !p.dst)
        return 0;
    memset(p.src, 1, bytes);
    memset(p.dst, 2, bytes);
    for (int r = 0; r < reps; r++) {
        double t0 = sw_bench_now();
        sw_pool_for(sw_pool_global(), bytes / 4096, 16, sw_bench_copy_part, &p);
        double t = sw_bench_now() - t0;
        if (t < best)
            best = t;
    }
    free(p.src);
    free(p.dst);
    return (double)bytes / best / 1e9;
}

/* Bytes read per second by a plain integer sum, in GB/s. */
static inline double sw_bench_read_gbs(size_t bytes, int reps)
{
    sw_bench_buf_t p;
    double best = 1e30;

    p.src = aligned_alloc(4096, bytes);
    if (!p.src)
        return 0;
    memset(p.src, 1, bytes);
    for (int r = 0; r < reps; r++) {
        double t0 = sw_bench_now();
        sw_pool_for(sw_pool_global(), bytes / 4096, 16, sw_bench_read_part, &p);
        double t = sw_bench_now() - t0;
        if (t < best)
            best = t;
    }
    free(p.src);
    return (double)bytes / best / 1e9;
}

#endif
