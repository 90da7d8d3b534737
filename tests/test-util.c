/*
 * test-util.c - the small things everything else stands on: fp16/bf16 conversions (tensor.h),
 * the fork-join pool, the allocation seam, error details, bounded file reads and strict JSON.
 *
 * The conversions are checked against independent computations in double (ldexp decoding,
 * nearbyint rounding), not against themselves.
 */
#include <errno.h>
#include <fenv.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <unistd.h>

#include "kernels/tensor.h"
#include "test.h"
#include "util/error.h"
#include "util/file.h"
#include "util/pool.h"

/* ========================================= fp16 / bf16 ========================================= */

/* IEEE binary16 decoded with ldexp: the independent reference for sw_f16_to_f32. */
static double f16_decode(uint16_t h)
{
    int e = (h >> 10) & 31, m = h & 1023;
    double v;

    if (e == 31)
        v = m ? NAN : INFINITY;
    else if (e == 0)
        v = ldexp(m, -24);
    else
        v = ldexp(1024 + m, e - 25);
    return (h & 0x8000) ? -v : v;
}

/*
 * f rounded to the nearest value with `mbits` fraction bits and minimum normal exponent emin
 * (below which the quantum stays 2^(emin - mbits)), ties to even, in double; +-inf past `max`
 * (the halfway point above the largest finite value). Exact: every step is a power-of-two scaling
 * or an integer rounding of a 24-bit value.
 */
static double round_ref(float f, int mbits, int emin, double max)
{
    double a = fabs((double)f), q, r;
    int e;

    if (a >= max)
        return copysign(INFINITY, f);
    if (a == 0)
        return f;
    e = ilogb(a);
    if (e < emin)
        e = emin;
    q = ldexp(1.0, e - mbits);
    r = nearbyint(a / q) * q; /* default rounding mode: ties to even */
    return copysign(r, f);
}

static void test_f16_decode_all(void)
{
    for (uint32_t h = 0; h < 65536; h++) {
        float got = sw_f16_to_f32((uint16_t)h);
        double want = f16_decode((uint16_t)h);

        if (isnan(want)) {
            SW_CHECKF(isnan(got), "h=0x%04x -> %g", h, got);
            SW_CHECKF(!!signbit(got) == !!(h & 0x8000), "h=0x%04x NaN sign", h);
        } else {
            SW_CHECKF((double)got == want, "h=0x%04x -> %.9g, want %.9g", h, got, want);
            SW_CHECKF(!!signbit(got) == !!(h & 0x8000), "h=0x%04x sign", h);
        }
    }
}

static void test_f16_encode_edges(void)
{
    static const struct { float f; uint16_t h; } cases[] = {
        { 65504.0f, 0x7bff },              /* largest finite */
        { 65519.99609375f, 0x7bff },       /* just below the halfway point: rounds down */
        { 65520.0f, 0x7c00 },              /* the halfway point rounds to even = infinity */
        { 1e10f, 0x7c00 },
        { -65520.0f, 0xfc00 },
        { 0x1p-24f, 0x0001 },              /* smallest subnormal */
        { 0x1p-25f, 0x0000 },              /* half of it: tie to even (0) */
        { 0x1.000002p-25f, 0x0001 },       /* just above the tie */
        { 0x3p-25f, 0x0002 },              /* 1.5 quanta: tie to even (2) */
        { 0x5p-25f, 0x0002 },              /* 2.5 quanta: tie to even (2) */
        { 0x1p-14f, 0x0400 },              /* smallest normal */
        { 0x1p-14f - 0x1p-25f, 0x0400 },   /* halfway between largest subnormal and it: even */
        { 0x1p-14f - 0x1p-24f, 0x03ff },   /* largest subnormal */
        { 1.0f, 0x3c00 },
        { 1.0f + 0x1p-11f, 0x3c00 },       /* tie between 0x3c00 and 0x3c01: even */
        { 1.0f + 0x3p-11f, 0x3c02 },       /* tie between 0x3c01 and 0x3c02: even */
        { -2.0f, 0xc000 },
        { 0.0f, 0x0000 },
        { -0.0f, 0x8000 },                 /* sign of zero kept */
        { -0x1p-26f, 0x8000 },             /* underflow keeps the sign */
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint16_t h = sw_f32_to_f16(cases[i].f);
        SW_CHECKF(h == cases[i].h, "%a -> 0x%04x, want 0x%04x", (double)cases[i].f, h,
                  cases[i].h);
    }
    /* NaN stays NaN, with its sign; infinities stay infinities */
    SW_CHECK(isnan(sw_f16_to_f32(sw_f32_to_f16(NAN))));
    SW_CHECK(isnan(sw_f16_to_f32(sw_f32_to_f16(-NAN))) && (sw_f32_to_f16(-NAN) & 0x8000));
    SW_CHECK(isnan(sw_f16_to_f32(sw_f32_to_f16(sw_bits_f32(0x7f800001u))))); /* signalling */
    SW_CHECK(sw_f32_to_f16(INFINITY) == 0x7c00 && sw_f32_to_f16(-INFINITY) == 0xfc00);
}

static void test_f16_roundtrip_and_random(void)
{
    unsigned long long s = 12345;

    /* every finite half survives f16 -> f32 -> f16 exactly (both zeros included) */
    for (uint32_t h = 0; h < 65536; h++) {
        if (((h >> 10) & 31) == 31)
            continue;
        SW_CHECKF(sw_f32_to_f16(sw_f16_to_f32((uint16_t)h)) == h, "0x%04x", h);
    }
    /* random floats across the whole exponent range against nearbyint rounding in double */
    SW_CHECK(fegetround() == FE_TONEAREST);
    for (int i = 0; i < 2000000; i++) {
        uint32_t u = (uint32_t)sw_test_rand_u64(&s);
        float f;
        double want;

        if (i & 1) /* half of them in and around the half range, where the rounding happens */
            u = (u & 0x807fffffu) | ((uint32_t)(96 + (u >> 23) % 48) << 23);
        f = sw_bits_f32(u);
        if (isnan(f))
            continue;
        want = round_ref(f, 10, -14, 65520.0);
        SW_CHECKF((double)sw_f16_to_f32(sw_f32_to_f16(f)) == want, "%a -> %a, want %a",
                  (double)f, (double)sw_f16_to_f32(sw_f32_to_f16(f)), want);
    }
}

static void test_bf16(void)
{
    static const struct { uint32_t f; uint16_t h; } cases[] = {
        { 0x3f800000u, 0x3f80 }, /* 1 */
        { 0x3f808000u, 0x3f80 }, /* tie between 0x3f80 and 0x3f81: even */
        { 0x3f818000u, 0x3f82 }, /* tie between 0x3f81 and 0x3f82: even */
        { 0x3f808001u, 0x3f81 }, /* just above the tie */
        { 0x3f807fffu, 0x3f80 }, /* just below */
        { 0x7f7fffffu, 0x7f80 }, /* FLT_MAX rounds to infinity (ties/overflow per IEEE) */
        { 0x7f7f7fffu, 0x7f7f }, /* largest value that stays finite */
        { 0x7f800000u, 0x7f80 }, /* inf */
        { 0xff800000u, 0xff80 }, /* -inf */
        { 0x80000000u, 0x8000 }, /* -0 */
        { 0x00000001u, 0x0000 }, /* smallest subnormal float rounds to 0 */
        { 0x00008000u, 0x0000 }, /* tie: even */
        { 0x00018000u, 0x0002 }, /* tie: even */
    };
    unsigned long long s = 999;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint16_t h = sw_f32_to_bf16(sw_bits_f32(cases[i].f));
        SW_CHECKF(h == cases[i].h, "0x%08x -> 0x%04x, want 0x%04x", cases[i].f, h, cases[i].h);
    }
    /* NaN stays NaN (a payload only in the low bits must not turn into infinity) */
    SW_CHECK(isnan(sw_bf16_to_f32(sw_f32_to_bf16(sw_bits_f32(0x7f800001u)))));
    SW_CHECK(isnan(sw_bf16_to_f32(sw_f32_to_bf16(sw_bits_f32(0xff800001u)))));
    SW_CHECK(sw_f32_to_bf16(sw_bits_f32(0xff800001u)) & 0x8000);
    SW_CHECK(isnan(sw_bf16_to_f32(sw_f32_to_bf16(NAN))));
    /* decode is exact: all 65536 against the bit layout */
    for (uint32_t h = 0; h < 65536; h++)
        SW_CHECK(sw_f32_bits(sw_bf16_to_f32((uint16_t)h)) == h << 16);
    /* random floats against nearbyint in double (8 significant bits, float's exponent range) */
    for (int i = 0; i < 2000000; i++) {
        float f = sw_bits_f32((uint32_t)sw_test_rand_u64(&s));
        double want;

        if (isnan(f))
            continue;
        /* bf16's largest finite is (2 - 2^-7) 2^127; the halfway point above it is (2 - 2^-8) 2^127 */
        want = round_ref(f, 7, -126, ldexp(2.0 - 0x1p-8, 127));
        SW_CHECKF((double)sw_bf16_to_f32(sw_f32_to_bf16(f)) == want, "%a -> %a, want %a",
                  (double)f, (double)sw_bf16_to_f32(sw_f32_to_bf16(f)), want);
    }
}

/* ============================================ pool ============================================ */

#define POOL_MAXN 5000

struct cover_ctx {
    atomic_int hits[POOL_MAXN];
    atomic_int bad; /* a range not aligned to grain, or a bad tid */
    atomic_int calls_by_tid[8];
    size_t grain;
    int nthreads;
};

static void cover_task(void *ctx, size_t b, size_t e, int tid)
{
    struct cover_ctx *c = ctx;

    if (b % c->grain != 0 || b >= e || tid < 0 || tid >= c->nthreads)
        atomic_fetch_add(&c->bad, 1);
    else
        atomic_fetch_add(&c->calls_by_tid[tid], 1);
    for (size_t i = b; i < e && i < POOL_MAXN; i++)
        atomic_fetch_add(&c->hits[i], 1);
}

static void test_pool_cover(void)
{
    static const int threads[] = { 1, 2, 3, 5 };
    static const size_t ns[] = { 0, 1, 2, 3, 5, 7, 64, 100, 1000, 4097, POOL_MAXN };
    static const size_t grains[] = { 0, 1, 2, 3, 8, 64, 1000, 6000 };
    static struct cover_ctx c;
    long live0 = sw_alloc_live();

    for (size_t ti = 0; ti < 4; ti++) {
        sw_pool_t *p = NULL;

        SW_CHECK_OK(sw_pool_create(threads[ti], &p));
        SW_CHECK(sw_pool_threads(p) == threads[ti]);
        for (size_t ni = 0; ni < sizeof(ns) / sizeof(ns[0]); ni++)
        for (size_t gi = 0; gi < sizeof(grains) / sizeof(grains[0]); gi++)
        for (int rep = 0; rep < 3; rep++) {
            size_t n = ns[ni], g = grains[gi];

            memset(&c, 0, sizeof(c));
            c.grain = g ? g : 1; /* grain 0 means 1 */
            c.nthreads = threads[ti];
            sw_pool_for(p, n, g, cover_task, &c);
            SW_CHECKF(atomic_load(&c.bad) == 0, "threads %d n %zu grain %zu: bad range or tid",
                      threads[ti], n, g);
            for (size_t i = 0; i < n; i++)
                SW_CHECKF(atomic_load(&c.hits[i]) == 1, "threads %d n %zu grain %zu: index %zu "
                          "ran %d times", threads[ti], n, g, i, atomic_load(&c.hits[i]));
            for (size_t i = n; i < POOL_MAXN; i++)
                SW_CHECK(atomic_load(&c.hits[i]) == 0);
            /* each thread gets at most one contiguous range */
            for (int t = 0; t < threads[ti]; t++)
                SW_CHECK(atomic_load(&c.calls_by_tid[t]) <= 1);
        }
        sw_pool_destroy(p);
    }
    SW_CHECK(sw_alloc_live() == live0);
}

struct nest_ctx {
    sw_pool_t *p;
    atomic_int bad, inner_calls;
    atomic_int outer_hits[64];
    pthread_t self[8];
};

static void nest_inner(void *ctx, size_t b, size_t e, int tid)
{
    struct nest_ctx *c = ctx;

    atomic_fetch_add(&c->inner_calls, 1);
    /* serial: the whole range, in one call, tid 0 */
    if (b != 0 || e != 50 || tid != 0)
        atomic_fetch_add(&c->bad, 1);
}

static void nest_outer(void *ctx, size_t b, size_t e, int tid)
{
    struct nest_ctx *c = ctx;

    for (size_t i = b; i < e; i++)
        atomic_fetch_add(&c->outer_hits[i], 1);
    c->self[tid] = pthread_self();
    sw_pool_for(c->p, 50, 1, nest_inner, c);
}

static void test_pool_nested(void)
{
    static struct nest_ctx c;
    sw_pool_t *p = NULL;

    SW_CHECK_OK(sw_pool_create(3, &p));
    memset(&c, 0, sizeof(c));
    c.p = p;
    sw_pool_for(p, 60, 1, nest_outer, &c);
    SW_CHECK(atomic_load(&c.bad) == 0);
    SW_CHECK(atomic_load(&c.inner_calls) == 3); /* once per outer range, on that thread */
    for (int i = 0; i < 60; i++)
        SW_CHECK(atomic_load(&c.outer_hits[i]) == 1);
    /* the pool still works normally afterwards */
    memset(&c, 0, sizeof(c));
    c.p = p;
    sw_pool_for(p, 60, 1, nest_outer, &c);
    SW_CHECK(atomic_load(&c.inner_calls) == 3 && atomic_load(&c.bad) == 0);
    sw_pool_destroy(p);
}

static void noop_task(void *ctx, size_t b, size_t e, int tid)
{
    atomic_fetch_add((atomic_int *)ctx, (int)(e - b));
}

static void test_pool_create_destroy(void)
{
    long live0 = sw_alloc_live();
    sw_pool_t *p = NULL;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);

    SW_CHECK_OK(sw_pool_create(0, &p)); /* one per CPU */
    SW_CHECK(sw_pool_threads(p) == (ncpu > 0 ? ncpu : 1));
    sw_pool_destroy(p);
    sw_pool_destroy(NULL);
    for (int i = 0; i < 50; i++) {
        atomic_int sum = 0;

        SW_CHECK_OK(sw_pool_create(1 + i % 5, &p));
        if (i & 1) { /* destroy right after work, and without any work */
            sw_pool_for(p, 1000, 1, noop_task, &sum);
            SW_CHECK(atomic_load(&sum) == 1000);
        }
        sw_pool_destroy(p);
        SW_CHECK(sw_alloc_live() == live0);
    }
    /* a failed allocation fails the create cleanly */
    for (long k = 0; k < 3; k++) {
        sw_alloc_fail_after(k);
        int r = sw_pool_create(4, &p);
        sw_alloc_fail_after(-1);
        SW_CHECK(r == -ENOMEM);
        SW_CHECK(sw_alloc_live() == live0);
    }
}

/* ======================================= alloc, errors ======================================= */

static void test_alloc_seam(void)
{
    long live0 = sw_alloc_live();
    void *a, *b, *c, *d, *e2;
    char *s;

    a = sw_malloc(10);
    b = sw_calloc(3, 4);
    c = sw_alloc_aligned(64, 100);
    s = sw_strdup("hello");
    SW_CHECK(a && b && c && s);
    SW_CHECK(((uintptr_t)c & 63) == 0);
    SW_CHECK(((int *)b)[0] == 0 && ((int *)b)[2] == 0);
    SW_CHECK(strcmp(s, "hello") == 0);
    SW_CHECK(sw_alloc_live() == live0 + 4);
    a = sw_realloc(a, 1000); /* realloc counts once */
    SW_CHECK(a && sw_alloc_live() == live0 + 4);
    d = sw_realloc(NULL, 8); /* realloc(NULL) is an allocation */
    SW_CHECK(d && sw_alloc_live() == live0 + 5);
    sw_free(NULL);
    SW_CHECK(sw_alloc_live() == live0 + 5);

    /* fail_after(2): two more allocations succeed, then every one fails until re-armed */
    sw_alloc_fail_after(2);
    e2 = sw_malloc(1);
    SW_CHECK(e2 != NULL);
    sw_free(e2);
    e2 = sw_calloc(1, 1);
    SW_CHECK(e2 != NULL);
    sw_free(e2);
    SW_CHECK(sw_malloc(1) == NULL);
    SW_CHECK(sw_calloc(1, 1) == NULL);
    SW_CHECK(sw_alloc_aligned(64, 1) == NULL);
    SW_CHECK(sw_strdup("x") == NULL);
    SW_CHECK(sw_realloc(a, 5000) == NULL); /* a stays valid */
    ((char *)a)[999] = 1;
    sw_alloc_fail_after(0); /* the very next one fails */
    SW_CHECK(sw_malloc(1) == NULL);
    sw_alloc_fail_after(-1);
    e2 = sw_malloc(1);
    SW_CHECK(e2 != NULL);
    sw_free(e2);
    SW_CHECK(sw_alloc_live() == live0 + 5);

    sw_free(a);
    sw_free(b);
    sw_free(c);
    sw_free(d);
    sw_free(s);
    SW_CHECK(sw_alloc_live() == live0);
}

static void *err_thread(void *arg)
{
    /* details are per thread: a new thread starts empty and does not disturb the main one */
    *(int *)arg = sw_err_detail()[0] == '\0';
    sw_err(SW_ESTATE, "other thread");
    return NULL;
}

static void test_errors(void)
{
    char longmsg[700];
    pthread_t t;
    int fresh = 0;

    sw_err_clear();
    SW_CHECK(strcmp(sw_err_detail(), "") == 0);
    SW_CHECK(sw_err(SW_EFORMAT, "%s: header length %d", "a.bin", 7) == SW_EFORMAT);
    SW_CHECK(strcmp(sw_err_detail(), "a.bin: header length 7") == 0);
    SW_CHECK(pthread_create(&t, NULL, err_thread, &fresh) == 0);
    pthread_join(t, NULL);
    SW_CHECK(fresh);
    SW_CHECK(strcmp(sw_err_detail(), "a.bin: header length 7") == 0);
    /* long details are truncated, not overflowed */
    memset(longmsg, 'x', sizeof(longmsg) - 1);
    longmsg[sizeof(longmsg) - 1] = '\0';
    SW_CHECK(sw_err(-EINVAL, "%s", longmsg) == -EINVAL);
    SW_CHECK(strlen(sw_err_detail()) > 100 && strlen(sw_err_detail()) < sizeof(longmsg) - 1);
    sw_err_clear();
    SW_CHECK(sw_err_detail()[0] == '\0');

    SW_CHECK(strcmp(sw_strerror(0), "success") == 0);
    SW_CHECK(strcmp(sw_strerror(SW_EFORMAT), "malformed input") == 0);
    SW_CHECK(strcmp(sw_strerror(SW_ELIMIT), "limit exceeded") == 0);
    SW_CHECK(strcmp(sw_strerror(SW_EDEVICE), "device error") == 0);
    SW_CHECK(strcmp(sw_strerror(-ENOENT), strerror(ENOENT)) == 0);
    SW_CHECK(strcmp(sw_strerror(-SW_E_BASE), "unknown error") == 0);
    SW_CHECK(strcmp(sw_strerror(5), "unknown error") == 0);
    /* the SW_E* codes never collide with errno values */
    SW_CHECK(SW_EFORMAT < -SW_E_BASE + 0 && SW_EDEVICE < -SW_E_BASE);
}

/* ========================================= files, JSON ========================================= */

static void test_file_read(void)
{
    char path[] = "/tmp/sw-test-util-XXXXXX", *buf = NULL;
    char dir[] = "/tmp/sw-test-util-dir-XXXXXX";
    size_t len = 0;
    long live0 = sw_alloc_live();
    int fd = mkstemp(path);
    char data[100];

    SW_CHECK(fd >= 0);
    for (int i = 0; i < 100; i++)
        data[i] = (char)('a' + i % 26);
    SW_CHECK(write(fd, data, 100) == 100);
    close(fd);

    SW_CHECK_OK(sw_file_read(path, 100, &buf, &len)); /* exactly at the limit */
    SW_CHECK(len == 100 && memcmp(buf, data, 100) == 0 && buf[100] == '\0');
    sw_free(buf);
    buf = NULL;
    SW_CHECK(sw_file_read(path, 99, &buf, &len) == SW_ELIMIT);
    SW_CHECK(buf == NULL);
    SW_CHECK(strstr(sw_err_detail(), path) != NULL);
    SW_CHECK(strstr(sw_err_detail(), "100") != NULL);
    sw_alloc_fail_after(0);
    SW_CHECK(sw_file_read(path, 1000, &buf, &len) == -ENOMEM);
    sw_alloc_fail_after(-1);
    SW_CHECK(sw_file_read("/nonexistent/sw-test", 100, &buf, &len) == -ENOENT);
    SW_CHECK(strstr(sw_err_detail(), "/nonexistent/sw-test") != NULL);
    SW_CHECK(mkdtemp(dir) != NULL);
    SW_CHECK(sw_file_read(dir, 100, &buf, &len) == -EINVAL);
    rmdir(dir);
    unlink(path);
    SW_CHECK(sw_alloc_live() == live0);
}

static void test_json_parse(void)
{
    const char *dup = "{\n  \"a\": 1,\n  \"a\": 2\n}";
    const char *ok = "{\"a\": [1, 2], \"b\": {\"a\": 3}} trailing-garbage-not-passed";
    json_t *j = NULL;

    SW_CHECK(sw_json_parse(dup, strlen(dup), "dup.json", &j) == SW_EFORMAT);
    SW_CHECK(j == NULL);
    SW_CHECKF(strstr(sw_err_detail(), "dup.json") && strstr(sw_err_detail(), "line 3"),
              "detail: %s", sw_err_detail());
    SW_CHECKF(strstr(sw_err_detail(), "column") && strstr(sw_err_detail(), "duplicate"),
              "detail: %s", sw_err_detail());
    /* len bounds the text: the same key in different objects is fine */
    SW_CHECK_OK(sw_json_parse(ok, strlen("{\"a\": [1, 2], \"b\": {\"a\": 3}}"), "ok.json", &j));
    SW_CHECK(json_is_object(j) && json_array_size(json_object_get(j, "a")) == 2);
    json_decref(j);
    j = NULL;
    /* the whole text, garbage included, is refused */
    SW_CHECK(sw_json_parse(ok, strlen(ok), "ok.json", &j) == SW_EFORMAT);
    SW_CHECK(sw_json_parse("", 0, "empty.json", &j) == SW_EFORMAT);
}

static void test_path_join(void)
{
    char *p = sw_path_join("a/b", "c.json"), *q = sw_path_join("a/b/", "c.json");

    SW_CHECK(p && q);
    SW_CHECK(strcmp(p, "a/b/c.json") == 0 && strcmp(q, "a/b/c.json") == 0);
    sw_free(p);
    sw_free(q);
}

int main(void)
{
    long live0 = sw_alloc_live();

    SW_RUN(test_f16_decode_all);
    SW_RUN(test_f16_encode_edges);
    SW_RUN(test_f16_roundtrip_and_random);
    SW_RUN(test_bf16);
    SW_RUN(test_pool_cover);
    SW_RUN(test_pool_nested);
    SW_RUN(test_pool_create_destroy);
    SW_RUN(test_alloc_seam);
    SW_RUN(test_errors);
    SW_RUN(test_file_read);
    SW_RUN(test_json_parse);
    SW_RUN(test_path_join);
    if (sw_alloc_live() != live0) {
        fprintf(stderr, "leak: %ld allocations live\n", sw_alloc_live() - live0);
        sw_test_failed++;
    }
    return sw_test_summary("test-util");
}
