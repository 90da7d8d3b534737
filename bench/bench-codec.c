/*
 * bench-codec.c - what each tensor codec (pipeline/codec.h) costs in bytes, time and error on
 * activation-like data, next to this machine's memcpy bandwidth measured in the same run.
 *
 * Data:
 *  1. the hidden states of the test fixtures (tests/fixtures/<model>/reference.safetensors,
 *     `hidden_states`, fp32 (L+1, T, H)), each layer's (T, H) slice encoded on its own as one
 *     pipeline hop would send it; errors pooled over all slices of all fixtures. Small models, so
 *     only sizes and errors are reported for them (their timings would measure the cache).
 *  2. a synthetic (B, T, H) = (8, 2048, 8192) fp32 activation (512 MiB; -q: (2, 2048, 8192)):
 *     N(0, 1) everywhere, times a per-channel scale that is 1 for most channels and 20..100 for 8
 *     outlier channels, plus a "massive activation" of +-1000 on two channels of the first token of
 *     each sequence, as LLM residual streams show (Dettmers et al. 2022; Sun et al. 2024).
 *
 * For each codec (+/- zstd): bytes per element, compression ratio vs fp32 and vs bf16, encode and
 * decode speed in GB/s of fp32 tensor (4 bytes x elements / time, one thread, best of reps), and the
 * error: rel-L2 = ||y - x|| / ||x|| and max |y - x|. blockwise8 is run at several block sizes:
 * that comparison is what SW_CODEC_Q8_BLOCKSIZE was chosen from.
 *
 * Usage: bench-codec [-q] [--no-memory]. Not a test: the numbers depend on the machine.
 */
#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"
#include "pipeline/codec.h"
#include "pipeline/safetensors.h"
#include "util/alloc.h"
#include "util/error.h"

struct variant {
    const char *name;
    sw_codec_opts_t o;
};

static const struct variant variants[] = {
    {"none", {SW_CODEC_NONE, 0, 0, 0}},
    {"none+zstd1", {SW_CODEC_NONE, 0, 1, 1}},
    {"fp16", {SW_CODEC_FP16, 0, 0, 0}},
    {"fp16+zstd1", {SW_CODEC_FP16, 0, 1, 1}},
    {"bf16", {SW_CODEC_BF16, 0, 0, 0}},
    {"bf16+zstd1", {SW_CODEC_BF16, 0, 1, 1}},
    {"bf16+zstd3", {SW_CODEC_BF16, 0, 1, 3}},
    {"blockwise8/64", {SW_CODEC_BLOCKWISE8, 64, 0, 0}},
    {"blockwise8/64+zstd1", {SW_CODEC_BLOCKWISE8, 64, 1, 1}},
    {"blockwise8/256", {SW_CODEC_BLOCKWISE8, 256, 0, 0}},
    {"blockwise8/256+zstd1", {SW_CODEC_BLOCKWISE8, 256, 1, 1}},
    {"blockwise8/4096", {SW_CODEC_BLOCKWISE8, 4096, 0, 0}},
    {"blockwise8/4096+zstd1", {SW_CODEC_BLOCKWISE8, 4096, 1, 1}},
};
#define NVAR (sizeof(variants) / sizeof(variants[0]))

static void die(const char *what, int r)
{
    fprintf(stderr, "bench-codec: %s: %s: %s\n", what, sw_strerror(r), sw_err_detail());
    exit(1);
}

struct err {
    double num, den, maxabs;
};

static void err_add(struct err *e, const float *x, const float *y, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        double d = (double)y[i] - (double)x[i];
        e->num += d * d;
        e->den += (double)x[i] * x[i];
        if (fabs(d) > e->maxabs)
            e->maxabs = fabs(d);
    }
}

/* ------------------------------------- fixtures ------------------------------------- */

struct slices {
    float *x[64];
    int64_t shape[64][2];
    int count;
    size_t numel;
};

static void load_fixtures(const char *root, struct slices *s)
{
    char dirp[4096];
    DIR *d;
    struct dirent *e;

    snprintf(dirp, sizeof(dirp), "%s/tests/fixtures", root);
    if (!(d = opendir(dirp))) {
        fprintf(stderr, "bench-codec: no %s (run from the source root or set SW_SOURCE_ROOT)\n", dirp);
        return;
    }
    while ((e = readdir(d))) {
        char p[4400];
        sw_st_file_t *f;
        const sw_st_tensor_t *t;
        if (e->d_name[0] == '.')
            continue;
        snprintf(p, sizeof(p), "%s/%s/reference.safetensors", dirp, e->d_name);
        if (sw_st_open(p, &f) < 0)
            continue;
        t = sw_st_find(f, "hidden_states");
        if (t && t->dtype == SW_ST_F32 && t->ndim == 3) {
            size_t slice = (size_t)(t->shape[1] * t->shape[2]);
            for (int64_t l = 0; l < t->shape[0] && s->count < 64; l++) {
                float *x = sw_malloc(slice * 4);
                memcpy(x, (const char *)t->data + (size_t)l * slice * 4, slice * 4);
                s->x[s->count] = x;
                s->shape[s->count][0] = t->shape[1];
                s->shape[s->count][1] = t->shape[2];
                s->count++;
                s->numel += slice;
            }
            printf("  %s: hidden_states (%lld, %lld, %lld)\n", e->d_name, (long long)t->shape[0],
                   (long long)t->shape[1], (long long)t->shape[2]);
        }
        sw_st_close(f);
    }
    closedir(d);
}

static void bench_fixtures(sw_codec_ctx_t *ctx, const struct slices *s)
{
    printf("\nfixture hidden states: %d (T, H) slices, %zu elements, each slice encoded alone\n",
           s->count, s->numel);
    printf("  %-22s %9s %9s %9s %10s %10s\n", "codec", "B/elem", "x fp32", "x bf16", "rel-L2",
           "max|err|");
    for (size_t v = 0; v < NVAR; v++) {
        struct err e = {0};
        size_t bytes = 0;
        for (int i = 0; i < s->count; i++) {
            size_t n = (size_t)(s->shape[i][0] * s->shape[i][1]), bound;
            sw_tensor_header_t h;
            int r;
            if ((r = sw_codec_encoded_bound(&variants[v].o, n, &bound)) < 0)
                die("bound", r);
            uint8_t *buf = sw_malloc(bound);
            float *y = sw_malloc(n * 4);
            if ((r = sw_codec_encode(ctx, &variants[v].o, s->x[i], 2, s->shape[i], &h, buf, bound)) < 0)
                die("encode", r);
            if ((r = sw_codec_decode(ctx, &h, buf, h.encoded_len, y, n)) < 0)
                die("decode", r);
            bytes += h.encoded_len;
            err_add(&e, s->x[i], y, n);
            sw_free(buf);
            sw_free(y);
        }
        double bpe = (double)bytes / (double)s->numel;
        printf("  %-22s %9.4f %9.3f %9.3f %10.3e %10.3e\n", variants[v].name, bpe, 4.0 / bpe,
               2.0 / bpe, sqrt(e.num / e.den), e.maxabs);
    }
}

/* ------------------------------------- synthetic ------------------------------------- */

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static double rng_unit(uint64_t *s) /* (0, 1] */
{
    return ((double)(rng_next(s) >> 11) + 1.0) / 9007199254740992.0;
}

static void make_synthetic(float *x, int64_t B, int64_t T, int64_t H)
{
    uint64_t s = 0x9e3779b97f4a7c15ull;
    float *scale = sw_malloc((size_t)H * 4);
    size_t n = (size_t)(B * T * H);

    for (int64_t h = 0; h < H; h++)
        scale[h] = 1.0f;
    for (int k = 0; k < 8; k++) /* outlier channels, scale 20..100 */
        scale[rng_next(&s) % (uint64_t)H] = 20.0f + 10.0f * (float)k;
    for (size_t i = 0; i < n; i += 2) { /* Box-Muller */
        double r = sqrt(-2.0 * log(rng_unit(&s))), th = 6.283185307179586 * rng_unit(&s);
        x[i] = (float)(r * cos(th)) * scale[i % (size_t)H];
        if (i + 1 < n)
            x[i + 1] = (float)(r * sin(th)) * scale[(i + 1) % (size_t)H];
    }
    for (int64_t b = 0; b < B; b++) { /* massive activations on the first token */
        x[(size_t)(b * T * H) + 17] = 1000.0f;
        x[(size_t)(b * T * H) + 4001] = -800.0f;
    }
    sw_free(scale);
}

static void bench_synthetic(sw_codec_ctx_t *ctx, int64_t B, int64_t T, int64_t H, double memcpy_gbs)
{
    size_t n = (size_t)(B * T * H), bound;
    int64_t shape[3] = {B, T, H};
    sw_codec_opts_t widest = {.codec = SW_CODEC_NONE, .zstd = 1};
    float *x = bench_alloc(n * 4), *y = bench_alloc(n * 4);
    double t[MAXREP], med_e, med_d;
    int r;

    make_synthetic(x, B, T, H);
    if ((r = sw_codec_encoded_bound(&widest, n, &bound)) < 0)
        die("bound", r);
    uint8_t *buf = bench_alloc(bound);
    printf("\nsynthetic activations (B, T, H) = (%lld, %lld, %lld): %.0f MiB fp32; one thread; "
           "GB/s = 4 x elements / time (1e9), best of %d [median]\n",
           (long long)B, (long long)T, (long long)H, (double)n * 4 / (1 << 20), reps);
    printf("  1-thread memcpy for comparison: %.2f GB/s read (each byte also written)\n", memcpy_gbs);
    printf("  %-22s %8s %8s %8s %16s %16s %10s %10s\n", "codec", "B/elem", "x fp32", "x bf16",
           "encode GB/s", "decode GB/s", "rel-L2", "max|err|");
    for (size_t v = 0; v < NVAR; v++) {
        sw_tensor_header_t h;
        double be, bd;
        for (int k = 0; k < reps; k++) {
            double t0 = now();
            if ((r = sw_codec_encode(ctx, &variants[v].o, x, 3, shape, &h, buf, bound)) < 0)
                die("encode", r);
            t[k] = now() - t0;
        }
        be = best_of(t, reps, &med_e);
        for (int k = 0; k < reps; k++) {
            double t0 = now();
            if ((r = sw_codec_decode(ctx, &h, buf, h.encoded_len, y, n)) < 0)
                die("decode", r);
            t[k] = now() - t0;
        }
        bd = best_of(t, reps, &med_d);
        struct err e = {0};
        err_add(&e, x, y, n);
        double bpe = (double)h.encoded_len / (double)n, gb = (double)n * 4 / 1e9;
        printf("  %-22s %8.4f %8.3f %8.3f %7.2f [%6.2f] %7.2f [%6.2f] %10.3e %10.3e\n",
               variants[v].name, bpe, 4.0 / bpe, 2.0 / bpe, gb / be, gb / med_e, gb / bd, gb / med_d,
               sqrt(e.num / e.den), e.maxabs);
        fflush(stdout);
    }
    sw_free(x);
    sw_free(y);
    sw_free(buf);
}

int main(int argc, char **argv)
{
    int quick = 0, memory = 1;
    const char *root = getenv("SW_SOURCE_ROOT") ? getenv("SW_SOURCE_ROOT") : ".";
    sw_codec_ctx_t *ctx;
    struct slices s = {0};
    double roof, memcpy_gbs = 0;
    int r;

    for (int a = 1; a < argc; a++) {
        if (strcmp(argv[a], "-q") == 0)
            quick = 1;
        else if (strcmp(argv[a], "--no-memory") == 0)
            memory = 0;
        else {
            fprintf(stderr, "usage: bench-codec [-q] [--no-memory]\n");
            return 2;
        }
    }
    reps = quick ? 2 : 3;
    if (memory) {
        /* bench_memory prints both; the codecs run on one thread, so compare with memcpy on one
         * thread, which it reports first: measure that alone here as well */
        bench_memory(&roof);
        size_t n = (size_t)GIB / 2;
        unsigned char *a = bench_alloc(n), *b = bench_alloc(n);
        double tt[MAXREP], med;
        for (int k = 0; k < reps; k++) {
            double t0 = now();
            memcpy(b, a, n);
            tt[k] = now() - t0;
        }
        memcpy_gbs = n / best_of(tt, reps, &med) / 1e9;
        sw_free(a);
        sw_free(b);
    }
    if ((r = sw_codec_ctx_new(&ctx)) < 0)
        die("context", r);
    printf("fixtures under %s/tests/fixtures:\n", root);
    load_fixtures(root, &s);
    if (s.count)
        bench_fixtures(ctx, &s);
    bench_synthetic(ctx, quick ? 2 : 8, 2048, 8192, memcpy_gbs);
    for (int i = 0; i < s.count; i++)
        sw_free(s.x[i]);
    sw_codec_ctx_free(ctx);
    return 0;
}
