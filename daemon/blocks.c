/*
 * blocks.c - block selection for `swarmd serve --serve-layers auto` (see blocks.h).
 */
#include "blocks.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "util/alloc.h"

int sw_block_throughputs(sw_span_t *spans, int nspans, int n_blocks, double *thr)
{
    if (n_blocks < 1 || !thr || nspans < 0 || (nspans && !spans))
        return -EINVAL;
    for (int b = 0; b < n_blocks; b++)
        thr[b] = 0.0;
    if (!nspans)
        return 0;
    for (int i = 1; i < nspans; i++) { /* insertion sort: small arrays, stable */
        sw_span_t t = spans[i];
        int j = i - 1;
        while (j >= 0 && memcmp(spans[j].peer, t.peer, sizeof(t.peer)) > 0) {
            spans[j + 1] = spans[j];
            j--;
        }
        spans[j + 1] = t;
    }
    for (int i = 0; i < nspans; i++) {
        int a, e;
        if (i > 0 && memcmp(spans[i].peer, spans[i - 1].peer, sizeof(spans[i].peer)) == 0)
            continue;
        a = spans[i].start < 0 ? 0 : spans[i].start;
        e = spans[i].end > n_blocks ? n_blocks : spans[i].end;
        if (!(spans[i].tps > 0.0))
            continue;
        for (int b = a; b < e; b++)
            thr[b] += spans[i].tps;
    }
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int sw_choose_blocks(const double *thr, int n_blocks, int n, int *start)
{
    double *best, *cur;
    int bi = 0;

    if (!thr || !start || n < 1 || n_blocks < 1 || n > n_blocks)
        return -EINVAL;
    best = sw_malloc(2 * (size_t)n * sizeof(double));
    if (!best)
        return -ENOMEM;
    cur = best + n;
    for (int i = 0; i + n <= n_blocks; i++) {
        memcpy(cur, thr + i, (size_t)n * sizeof(double));
        qsort(cur, (size_t)n, sizeof(double), cmp_double);
        int less = i == 0;
        for (int k = 0; k < n && !less; k++) {
            if (cur[k] < best[k])
                less = 1;
            else if (cur[k] > best[k])
                break;
        }
        if (less) {
            memcpy(best, cur, (size_t)n * sizeof(double));
            bi = i;
        }
    }
    sw_free(best);
    *start = bi;
    return 0;
}
