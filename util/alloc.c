/* alloc.c - allocation seam with leak counting and fault injection; see alloc.h. */
#include "alloc.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static atomic_long live;
static atomic_long fail_after = -1;

static int should_fail(void)
{
    long n = atomic_load(&fail_after);

    if (n < 0)
        return 0;
    while (n > 0) {
        if (atomic_compare_exchange_weak(&fail_after, &n, n - 1))
            return 0;
    }
    return n == 0;
}

void *sw_malloc(size_t n)
{
    void *p;

    if (should_fail())
        return NULL;
    p = malloc(n ? n : 1);
    if (p)
        atomic_fetch_add(&live, 1);
    return p;
}

void *sw_calloc(size_t count, size_t size)
{
    void *p;

    if (should_fail())
        return NULL;
    p = calloc(count ? count : 1, size ? size : 1);
    if (p)
        atomic_fetch_add(&live, 1);
    return p;
}

void *sw_realloc(void *p, size_t n)
{
    void *q;

    if (!p)
        return sw_malloc(n);
    if (should_fail())
        return NULL;
    q = realloc(p, n ? n : 1);
    return q;
}

void *sw_alloc_aligned(size_t align, size_t n)
{
    void *p = NULL;

    if (should_fail())
        return NULL;
    if (posix_memalign(&p, align, n ? n : 1) != 0)
        return NULL;
    atomic_fetch_add(&live, 1);
    return p;
}

char *sw_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = sw_malloc(n);

    if (p)
        memcpy(p, s, n);
    return p;
}

void sw_free(void *p)
{
    if (!p)
        return;
    atomic_fetch_sub(&live, 1);
    free(p);
}

long sw_alloc_live(void)
{
    return atomic_load(&live);
}

void sw_alloc_fail_after(long n)
{
    atomic_store(&fail_after, n);
}
