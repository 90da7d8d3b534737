/*
 * blocks.c - block selection for `swarmd serve --serve-layers auto` (see blocks.h).
 */
#include "blocks.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "util/alloc.h"

int sw_block_throughputs(sw_peer_span_t *spans, int nspans, int n_blocks, double *thr)
{
    if (n_blocks < 1 || !thr || nspans < 0 || (nspans && !spans))
        return -EINVAL;
    for (int b = 0; b < n_blocks; b++)
        thr[b] = 0.0;
    if (!nspans)
        return 0;
    for (int i = 1; i < nspans; i++) { /* insertion sort: small arrays, stable */
        sw_peer_span_t t = spans[i];
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

/* splitmix64: the local search's shuffle (deterministic for a seed, so tests can pin it). */
static uint64_t next_rand(uint64_t *st)
{
    uint64_t z = (*st += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double min_of(const double *x, int n)
{
    double m = x[0];
    for (int i = 1; i < n; i++)
        if (x[i] < m)
            m = x[i];
    return m;
}

static void add_span(double *thr, int n_blocks, int a, int e, double v)
{
    if (a < 0)
        a = 0;
    if (e > n_blocks)
        e = n_blocks;
    for (int b = a; b < e; b++)
        thr[b] += v;
}

int sw_should_move(sw_peer_span_t *spans, int nspans, int n_blocks, const uint8_t self[32],
                   double balance_quality, uint64_t seed, int *new_start, double *quality)
{
    const double eps = 1e-3;
    double *thr = NULL, initial, now;
    int *order = NULL, me = -1, len, best, r, moved, rounds = 0;
    sw_peer_span_t *sp = NULL;

    if (quality)
        *quality = -1;
    if (!spans || nspans < 1 || !self || !new_start || n_blocks < 1)
        return -EINVAL;
    if (!(balance_quality > 0))
        return 0;
    thr = sw_calloc((size_t)n_blocks, sizeof(double));
    sp = sw_malloc((size_t)nspans * sizeof(*sp));
    order = sw_malloc((size_t)nspans * sizeof(int));
    r = -ENOMEM;
    if (!thr || !sp || !order)
        goto out;
    if ((r = sw_block_throughputs(spans, nspans, n_blocks, thr)) < 0)
        goto out;
    /* one span per peer (the first, as sw_block_throughputs counted), clipped */
    int n = 0;
    for (int i = 0; i < nspans; i++) {
        if (i > 0 && memcmp(spans[i].peer, spans[i - 1].peer, sizeof(spans[i].peer)) == 0)
            continue;
        sp[n] = spans[i];
        if (sp[n].start < 0)
            sp[n].start = 0;
        if (sp[n].end > n_blocks)
            sp[n].end = n_blocks;
        if (!(sp[n].tps > 0.0) || sp[n].start >= sp[n].end)
            continue; /* adds nothing; cannot move anything */
        if (memcmp(sp[n].peer, self, 32) == 0)
            me = n;
        n++;
    }
    r = -EINVAL;
    if (me < 0)
        goto out;
    len = sp[me].end - sp[me].start;
    if (balance_quality > 1.0) {
        /* debugging: move on every check, to the best place without this server */
        add_span(thr, n_blocks, sp[me].start, sp[me].end, -sp[me].tps);
        if ((r = sw_choose_blocks(thr, n_blocks, len, &best)) < 0)
            goto out;
        *new_start = best;
        r = best != sp[me].start;
        goto out;
    }
    initial = min_of(thr, n_blocks);
    add_span(thr, n_blocks, sp[me].start, sp[me].end, -sp[me].tps * (1 + eps));
    r = 0;
    for (int b = sp[me].start; b < sp[me].end; b++)
        if (thr[b] <= 0)
            goto out; /* the only server of block b: leaving would uncover it */
    if ((r = sw_choose_blocks(thr, n_blocks, len, &best)) < 0)
        goto out;
    r = 0;
    if (best == sp[me].start)
        goto out;
    *new_start = best;
    add_span(thr, n_blocks, sp[me].start, sp[me].end, sp[me].tps * eps);
    sp[me].start = best;
    sp[me].end = best + len;
    add_span(thr, n_blocks, sp[me].start, sp[me].end, sp[me].tps);
    /* local search: every server moves to its best place until none does (bounded) */
    do {
        moved = 0;
        for (int i = 0; i < n; i++)
            order[i] = i;
        for (int i = n - 1; i > 0; i--) {
            int j = (int)(next_rand(&seed) % (uint64_t)(i + 1)), t = order[i];
            order[i] = order[j];
            order[j] = t;
        }
        for (int k = 0; k < n; k++) {
            sw_peer_span_t *q = &sp[order[k]];
            int l = q->end - q->start, st;
            add_span(thr, n_blocks, q->start, q->end, -q->tps * (1 + eps));
            if ((r = sw_choose_blocks(thr, n_blocks, l, &st)) < 0)
                goto out;
            add_span(thr, n_blocks, q->start, q->end, q->tps * eps);
            if (st != q->start) {
                q->start = st;
                q->end = st + l;
                moved = 1;
            }
            add_span(thr, n_blocks, q->start, q->end, q->tps);
        }
    } while (moved && ++rounds < 1000);
    now = min_of(thr, n_blocks);
    r = 0;
    if (now < initial || now < eps)
        goto out;
    if (quality)
        *quality = initial / now;
    r = initial / now < balance_quality - eps;
out:
    sw_free(thr);
    sw_free(sp);
    sw_free(order);
    return r;
}
