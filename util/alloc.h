/*
 * alloc.h - the one allocation seam.
 *
 * All heap memory in swarmd goes through these calls, so tests can count live allocations and make
 * the N-th allocation fail. They behave like their libc namesakes; sw_free(NULL) is a no-op.
 * sw_alloc_aligned() returns memory aligned to `align` (a power of two >= sizeof(void *)),
 * freed with sw_free() like any other.
 */
#ifndef SW_UTIL_ALLOC_H
#define SW_UTIL_ALLOC_H

#include <stddef.h>

void *sw_malloc(size_t n);
void *sw_calloc(size_t count, size_t size);
void *sw_realloc(void *p, size_t n);
void *sw_alloc_aligned(size_t align, size_t n);
char *sw_strdup(const char *s);
void sw_free(void *p);

/* Test hooks. Live count = successful allocations not yet freed (realloc counts once). */
long sw_alloc_live(void);
/* After `n` more successful allocations, every allocation fails (returns NULL); n < 0 disables. */
void sw_alloc_fail_after(long n);

#endif
