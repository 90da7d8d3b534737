/*
 * test.h - a tiny test harness: each test binary lists its cases in main() with SW_RUN(), checks
 * with SW_CHECK*(), and ends with `return sw_test_summary();`, which prints
 * "<binary>: N passed, N failed" and exits non-zero on any failure. A failed check records the
 * file:line and the message, marks the case failed, and returns from the case.
 */
#ifndef SW_TESTS_TEST_H
#define SW_TESTS_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/alloc.h"

extern int sw_test_passed, sw_test_failed, sw_test_cur_failed;
extern const char *sw_test_name;

#define SW_CHECK(cond)                                                                       \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            fprintf(stderr, "  FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                \
            sw_test_cur_failed = 1;                                                          \
            return;                                                                          \
        }                                                                                    \
    } while (0)

#define SW_CHECKF(cond, ...)                                                                 \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            fprintf(stderr, "  FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                \
            fprintf(stderr, __VA_ARGS__);                                                    \
            fputc('\n', stderr);                                                             \
            sw_test_cur_failed = 1;                                                          \
            return;                                                                          \
        }                                                                                    \
    } while (0)

/* An int-returning call that must succeed (returns 0); prints the code and detail otherwise. */
#define SW_CHECK_OK(expr)                                                                    \
    do {                                                                                     \
        int r_ = (expr);                                                                     \
        if (r_ != 0) {                                                                       \
            fprintf(stderr, "  FAIL %s:%d: %s returned %d (%s): %s\n", __FILE__, __LINE__,   \
                    #expr, r_, sw_strerror(r_), sw_err_detail());                            \
            sw_test_cur_failed = 1;                                                          \
            return;                                                                          \
        }                                                                                    \
    } while (0)

#define SW_RUN(fn)                                                                           \
    do {                                                                                     \
        sw_test_cur_failed = 0;                                                              \
        sw_test_name = #fn;                                                                  \
        fn();                                                                                \
        if (sw_test_cur_failed) {                                                            \
            sw_test_failed++;                                                                \
            fprintf(stderr, "not ok - %s\n", #fn);                                           \
        } else {                                                                             \
            sw_test_passed++;                                                                \
            fprintf(stderr, "ok - %s\n", #fn);                                               \
        }                                                                                    \
    } while (0)


static inline int sw_test_summary(const char *binary)
{
    printf("%s: %d passed, %d failed\n", binary, sw_test_passed, sw_test_failed);
    return sw_test_failed ? 1 : 0;
}

/* Relative L2 error ||a - b|| / ||b||. */
static inline double sw_rel_l2(const float *a, const float *b, size_t n)
{
    double num = 0.0, den = 0.0;

    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* Deterministic xorshift random numbers for tests. */
static inline unsigned long long sw_test_rand_u64(unsigned long long *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Approximately standard normal (sum of uniforms), good enough for test inputs. */
static inline float sw_test_randn(unsigned long long *s)
{
    double acc = 0.0;

    for (int i = 0; i < 12; i++)
        acc += (double)(sw_test_rand_u64(s) >> 11) / 9007199254740992.0;
    return (float)(acc - 6.0);
}

/* n approximately normal floats times scale, from a seed; the caller frees with sw_free. */
static inline float *sw_test_randv(size_t n, unsigned long long seed, float scale)
{
    unsigned long long s = seed * 0x9e3779b97f4a7c15ull + 1;
    float *v = (float *)sw_malloc((n ? n : 1) * sizeof(float));

    if (!v)
        abort();
    for (size_t i = 0; i < n; i++)
        v[i] = sw_test_randn(&s) * scale;
    return v;
}

#endif
