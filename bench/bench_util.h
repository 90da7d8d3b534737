/*
 * bench_util.h - shared by the benchmarks: timing, best-of statistics, and the baselines each
 * benchmark prints next to its own figures, measured in the same run: memcpy bandwidth (one
 * thread and the pool's threads) and read-only streaming bandwidth over 1 GiB buffers.
 * Header-only: each benchmark is one translation unit.
 */
#ifndef SW_BENCH_UTIL_H
#define SW_BENCH_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util/alloc.h"
#include "util/pool.h"

#define GIB (1024.0 * 1024.0 * 1024.0)
#define MAXREP 64

/* Repetitions per measurement; benchmarks may lower it for a quick run. */
static int reps = 7;

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

/* Sorts t[0..n) and returns the best (smallest); *median gets the median. */
static double best_of(double *t, int n, double *median)
{
    qsort(t, (size_t)n, sizeof(double), cmp_double);
    *median = t[n / 2];
    return t[0];
}

static void *bench_alloc(size_t n)
{
    void *p = sw_alloc_aligned(64, n);

    if (!p) {
        fprintf(stderr, "benchmark: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    memset(p, 1, n); /* fault the pages in */
    return p;
}

/* ---------------------------------- memory bandwidth ---------------------------------- */

struct copy_ctx {
    unsigned char *dst;
    const unsigned char *src;
    uint64_t sum[64];
};

static void copy_task(void *ctx, size_t b, size_t e, int tid)
{
    struct copy_ctx *c = ctx;

    memcpy(c->dst + b, c->src + b, e - b);
}

/* Sums 64-bit words of [b, e) with 8 independent lanes; vectorized with AVX2 where the CPU has it. */
#if defined(__x86_64__)
__attribute__((target("avx2")))
#endif
static uint64_t sum_words_avx2(const unsigned char *p, size_t n)
{
    uint64_t acc[16] = { 0 };

    for (size_t i = 0; i + 16 <= n; i += 16) {
        for (int j = 0; j < 16; j++) {
            uint64_t v;
            memcpy(&v, p + (i + j) * 8, 8);
            acc[j] += v;
        }
    }
    for (int j = 1; j < 16; j++)
        acc[0] += acc[j];
    return acc[0];
}

static void read_task(void *ctx, size_t b, size_t e, int tid)
{
    struct copy_ctx *c = ctx;

    c->sum[tid & 63] = sum_words_avx2(c->src + b, (e - b) / 8);
}

/* Returns the best memcpy read bandwidth in GB/s (1e9 bytes); *roof gets the read-only best. */
static double bench_memory(double *roof)
{
    size_t n = (size_t)GIB;
    struct copy_ctx c = { .dst = bench_alloc(n), .src = bench_alloc(n) };
    sw_pool_t *pool = sw_pool_global();
    double t[MAXREP], med, best, best_read = 0;

    printf("memory bandwidth (1 GiB buffers, GB = 1e9 bytes, best of %d [median])\n", reps);
    printf("  %-34s %12s %12s\n", "", "copy GB/s", "read GB/s");
    for (int mt = 0; mt < 2; mt++) {
        for (int r = 0; r < reps; r++) {
            double t0 = now();
            if (mt)
                sw_pool_for(pool, n, 1 << 20, copy_task, &c);
            else
                memcpy(c.dst, c.src, n);
            t[r] = now() - t0;
        }
        best = best_of(t, reps, &med);
        printf("  memcpy, %d thread%s%*s %6.2f [%5.2f] %6.2f [%5.2f]\n",
               mt ? sw_pool_threads(pool) : 1, (mt && sw_pool_threads(pool) > 1) ? "s" : " ",
               23, "", 2 * n / best / 1e9, 2 * n / med / 1e9, n / best / 1e9, n / med / 1e9);
        if (n / best / 1e9 > best_read)
            best_read = n / best / 1e9;
    }
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        sw_pool_for(pool, n, 1 << 20, read_task, &c);
        t[r] = now() - t0;
    }
    best = best_of(t, reps, &med);
    *roof = n / best / 1e9;
    printf("  read-only sum, %d threads%*s %12s %6.2f [%5.2f]\n", sw_pool_threads(pool), 17, "",
           "-", n / best / 1e9, n / med / 1e9);
    printf("  (glibc memcpy of this size may use ordinary stores: the destination is then read too\n"
           "   (write-allocate), so DRAM moves more than \"copy\" counts and a pure read can beat it)\n");
    printf("  %%memcpy below = GB/s / %.2f (best memcpy read); %%read = GB/s / %.2f (read-only)\n\n",
           best_read, *roof);
    sw_free(c.dst);
    sw_free((void *)c.src);
    return best_read;
}

#endif
