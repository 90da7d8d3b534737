/*
 * test-codec.c - the tensor codec (pipeline/codec.h): every codec round-trips within its stated
 * bound with the exact payload size, with and without zstd; edge cases (empty, scalar, ragged last
 * block, zeros, inf/NaN); and every malformed header or payload is refused with a detail.
 *
 * Stated bounds checked here (x input, y decoded):
 *   none        bit-exact;
 *   fp16        |y - x| <= 2^-11 |x| for |x| in [2^-14, 65504], <= 2^-25 below;
 *   bf16        |y - x| <= 2^-8 |x| for normal x;
 *   blockwise8  |y - x| <= absmax_block * G / 2 (G = largest gap between neighbours of the map),
 *               plus bnb's mean-error bars (bnb.md section 5): N(0,1) data mean |err| < 0.011 and
 *               mean rel err < 0.018; U(0,1) data mean |err| < 0.0036 and mean rel err < 0.015.
 */
#include <float.h>
#include <stdint.h>
#include <zstd.h>

#include "kernels/quant.h"
#include "pipeline/codec.h"
#include "swarmd.pb-c.h"
#include "test.h"
#include "util/error.h"

static const sw_codec_t all_codecs[] = {SW_CODEC_NONE, SW_CODEC_FP16, SW_CODEC_BF16,
                                        SW_CODEC_BLOCKWISE8};

static float *randn_buf(size_t n, unsigned long long seed, float scale)
{
    float *x = sw_malloc(n ? n * sizeof(float) : 1);
    unsigned long long s = seed;

    for (size_t i = 0; i < n; i++)
        x[i] = sw_test_randn(&s) * scale;
    return x;
}

/* Largest gap between neighbouring entries of the dynamic map. */
static double q8_max_gap(void)
{
    double g = 0;

    for (int i = 1; i < 256; i++)
        if ((double)sw_q8_dynamic_map[i] - sw_q8_dynamic_map[i - 1] > g)
            g = (double)sw_q8_dynamic_map[i] - sw_q8_dynamic_map[i - 1];
    return g;
}

static size_t expect_raw(sw_codec_t c, int bs, size_t n)
{
    switch (c) {
    case SW_CODEC_NONE: return 4 * n;
    case SW_CODEC_FP16:
    case SW_CODEC_BF16: return 2 * n;
    default: return 4 * ((n + (size_t)bs - 1) / (size_t)bs) + n;
    }
}

/*
 * Encodes x with opts into an exactly-bound-sized buffer, checks the size (exact without zstd,
 * <= bound with), decodes into an exactly-sized output and returns it (caller frees) or NULL.
 */
static float *roundtrip(sw_codec_ctx_t *ctx, const sw_codec_opts_t *o, const float *x, int ndim,
                        const int64_t *shape, size_t *enc_len)
{
    sw_tensor_header_t h, h2;
    size_t n = 1, bound, raw, hl;
    uint8_t hb[SW_CODEC_MAX_HEADER];
    int bs = o->codec == SW_CODEC_BLOCKWISE8 ? (o->blocksize ? o->blocksize : SW_CODEC_Q8_BLOCKSIZE)
                                             : 0;

    for (int i = 0; i < ndim; i++)
        n *= (size_t)shape[i];
    if (sw_codec_encoded_bound(o, n, &bound) < 0 || sw_codec_raw_size(o, n, &raw) < 0)
        return NULL;
    if (raw != expect_raw(o->codec, bs, n))
        return fprintf(stderr, "  raw size %zu, expected %zu\n", raw, expect_raw(o->codec, bs, n)),
               NULL;
    uint8_t *buf = sw_malloc(bound ? bound : 1);
    float *y = sw_malloc(n ? n * sizeof(float) : 1);
    if (sw_codec_encode(ctx, o, x, ndim, shape, &h, buf, bound) < 0)
        goto fail;
    if (!o->zstd && h.encoded_len != raw) {
        fprintf(stderr, "  encoded %llu bytes, expected exactly %zu\n",
                (unsigned long long)h.encoded_len, raw);
        goto fail;
    }
    if (o->zstd && h.encoded_len > bound)
        goto fail;
    /* through the protobuf header, as on the wire */
    if (sw_codec_header_pack(&h, hb, sizeof(hb), &hl) < 0 || hl != sw_codec_header_packed_size(&h) ||
        sw_codec_header_unpack(hb, hl, &h2) < 0 || memcmp(&h, &h2, sizeof(h)) != 0)
        goto fail;
    if (sw_codec_decode(ctx, &h2, buf, h.encoded_len, y, n) < 0)
        goto fail;
    *enc_len = h.encoded_len;
    sw_free(buf);
    return y;
fail:
    fprintf(stderr, "  roundtrip %s zstd=%d n=%zu: %s\n", sw_codec_name(o->codec), o->zstd, n,
            sw_err_detail());
    sw_free(buf);
    sw_free(y);
    return NULL;
}

/* ----------------------------------- round trips ----------------------------------- */

static void test_none_exact(void)
{
    sw_codec_ctx_t *ctx;
    int64_t shape[3] = {2, 3, 37};
    size_t n = 2 * 3 * 37, len;
    float *x = randn_buf(n, 1, 3.0f);

    x[0] = -0.0f;
    x[1] = INFINITY;
    x[2] = -INFINITY;
    x[3] = sw_bits_f32(0x7fc01234u); /* NaN with a payload */
    x[4] = 1e-45f;                   /* smallest subnormal */
    x[5] = FLT_MAX;
    SW_CHECK_OK(sw_codec_ctx_new(&ctx));
    for (int z = 0; z < 2; z++) {
        sw_codec_opts_t o = {.codec = SW_CODEC_NONE, .zstd = z};
        float *y = roundtrip(ctx, &o, x, 3, shape, &len);
        SW_CHECK(y != NULL);
        SW_CHECK(memcmp(x, y, n * 4) == 0);
        SW_CHECK(z || len == 4 * n);
        sw_free(y);
    }
    sw_codec_ctx_free(ctx);
    sw_free(x);
}

/* |y - x| within the fp16 bound; inf and NaN carried. */
static int f16_ok(float x, float y)
{
    double ax = fabs((double)x), e = fabs((double)y - (double)x);

    if (isnan(x))
        return isnan(y);
    if (ax >= 65520.0)
        return isinf(y) && signbit(x) == signbit(y);
    if (ax >= 0x1p-14)
        return e <= ax * 0x1p-11;
    return e <= 0x1p-25;
}

static int bf16_ok(float x, float y)
{
    double ax = fabs((double)x), e = fabs((double)y - (double)x);

    if (isnan(x))
        return isnan(y);
    if (isinf(x))
        return y == x;
    if (isinf(y)) /* only values that round past FLT_MAX */
        return ax > 3.3895313892515355e38 * (1 - 0x1p-9);
    return e <= ax * 0x1p-8;
}

static void test_half_bounds(void)
{
    sw_codec_ctx_t *ctx;
    size_t n = 5000, len;
    int64_t shape[2] = {50, 100};
    float *x = randn_buf(n, 2, 1.0f);
    unsigned long long s = 99;

    /* spread over many binades, including fp16 subnormals and overflow */
    for (size_t i = 0; i < n; i++)
        x[i] *= ldexpf(1.0f, (int)(sw_test_rand_u64(&s) % 60) - 30);
    x[0] = 65504.0f;
    x[1] = 65519.99f;
    x[2] = 65520.0f;
    x[3] = -1e6f;
    x[4] = NAN;
    x[5] = -INFINITY;
    x[6] = 0x1p-24f;
    x[7] = 0x1p-26f;
    x[8] = FLT_MAX;
    SW_CHECK_OK(sw_codec_ctx_new(&ctx));
    for (int z = 0; z < 2; z++) {
        sw_codec_opts_t o16 = {.codec = SW_CODEC_FP16, .zstd = z, .zstd_level = 3};
        sw_codec_opts_t ob16 = {.codec = SW_CODEC_BF16, .zstd = z};
        float *y = roundtrip(ctx, &o16, x, 2, shape, &len);
        SW_CHECK(y != NULL);
        SW_CHECK(z || len == 2 * n);
        for (size_t i = 0; i < n; i++)
            SW_CHECKF(f16_ok(x[i], y[i]), "fp16 x[%zu] = %a -> %a", i, (double)x[i], (double)y[i]);
        SW_CHECK(isinf(y[8]) && y[0] == 65504.0f && isinf(y[2]));
        /* bit-exact with the scalar conversion (round to nearest even) */
        for (size_t i = 0; i < n; i++)
            SW_CHECK(isnan(x[i]) || y[i] == sw_f16_to_f32(sw_f32_to_f16(x[i])));
        sw_free(y);
        y = roundtrip(ctx, &ob16, x, 2, shape, &len);
        SW_CHECK(y != NULL);
        SW_CHECK(z || len == 2 * n);
        for (size_t i = 0; i < n; i++)
            SW_CHECKF(bf16_ok(x[i], y[i]), "bf16 x[%zu] = %a -> %a", i, (double)x[i], (double)y[i]);
        SW_CHECK(isinf(y[8]) && isnan(y[4]) && y[5] == -INFINITY);
        sw_free(y);
    }
    sw_codec_ctx_free(ctx);
    sw_free(x);
}

/* Checks blockwise8 output of x (n) against the per-element bound; returns the mean errors. */
static int q8_check(const float *x, const float *y, size_t n, int bs, double *mean_abs,
                    double *mean_rel)
{
    double g2 = q8_max_gap() / 2, sa = 0, sr = 0;

    for (size_t b = 0; b < n; b += (size_t)bs) {
        size_t e = b + (size_t)bs < n ? b + (size_t)bs : n;
        float amax = 0;
        for (size_t i = b; i < e; i++)
            amax = fmaxf(amax, fabsf(x[i]));
        for (size_t i = b; i < e; i++) {
            double err = fabs((double)y[i] - x[i]);
            /* 1e-6 relative slack: the encoder scales by the float 1/absmax, as bnb does */
            if (err > amax * (g2 + 1e-6)) {
                fprintf(stderr, "  blockwise8 bs %d x[%zu] = %g -> %g, absmax %g\n", bs, i,
                        (double)x[i], (double)y[i], (double)amax);
                return 0;
            }
            sa += err;
            sr += err / (fabs((double)x[i]) + 1e-8);
        }
    }
    *mean_abs = n ? sa / (double)n : 0;
    *mean_rel = n ? sr / (double)n : 0;
    return 1;
}

static void test_blockwise8_bounds(void)
{
    sw_codec_ctx_t *ctx;
    size_t n = 1 << 16, len;
    double ma, mr;
    float *x = randn_buf(n, 3, 1.0f), *u = sw_malloc(n * sizeof(float));
    unsigned long long s = 5;

    for (size_t i = 0; i < n; i++)
        u[i] = (float)((double)(sw_test_rand_u64(&s) >> 11) / 9007199254740992.0);
    SW_CHECK(q8_max_gap() > 0.014 && q8_max_gap() < 0.0141); /* (1 - 0.1) / 64 */
    SW_CHECK_OK(sw_codec_ctx_new(&ctx));
    for (int bs = SW_CODEC_Q8_MIN_BLOCK; bs <= SW_CODEC_Q8_MAX_BLOCK; bs *= 2) {
        for (int z = 0; z < 2; z++) {
            sw_codec_opts_t o = {.codec = SW_CODEC_BLOCKWISE8, .blocksize = bs, .zstd = z};
            int64_t shape[1] = {(int64_t)n};
            float *y = roundtrip(ctx, &o, x, 1, shape, &len);
            SW_CHECK(y != NULL);
            SW_CHECK(z || len == 4 * (n / (size_t)bs) + n);
            SW_CHECK(q8_check(x, y, n, bs, &ma, &mr));
            SW_CHECKF(ma < 0.011 && mr < 0.018, "randn bs %d: mean abs %g rel %g", bs, ma, mr);
            sw_free(y);
            y = roundtrip(ctx, &o, u, 1, shape, &len);
            SW_CHECK(y != NULL);
            SW_CHECK(q8_check(u, y, n, bs, &ma, &mr));
            SW_CHECKF(ma < 0.0036 && mr < 0.015, "rand bs %d: mean abs %g rel %g", bs, ma, mr);
            sw_free(y);
        }
    }
    sw_codec_ctx_free(ctx);
    sw_free(x);
    sw_free(u);
}

/* The payload is bnb's layout: absmax[] then q[], exactly what sw_q8_quantize produces. */
static void test_blockwise8_layout(void)
{
    size_t n = 3 * 4096 + 77, nb = (n + 63) / 64;
    float *x = randn_buf(n, 4, 2.0f), *am = sw_malloc(nb * 4);
    uint8_t *q = sw_malloc(n), *buf = sw_malloc(4 * nb + n + 1);
    sw_codec_opts_t o = {.codec = SW_CODEC_BLOCKWISE8, .blocksize = 64};
    int64_t shape[1] = {(int64_t)n};
    sw_tensor_header_t h;

    sw_q8_quantize(x, n, 64, q, am);
    /* an odd output address: the codec must not need alignment */
    SW_CHECK_OK(sw_codec_encode(NULL, &o, x, 1, shape, &h, buf + 1, 4 * nb + n));
    SW_CHECK(h.encoded_len == 4 * nb + n && h.blocksize == 64 && h.codec == SW_CODEC_BLOCKWISE8);
    SW_CHECK(memcmp(buf + 1, am, 4 * nb) == 0);
    SW_CHECK(memcmp(buf + 1 + 4 * nb, q, n) == 0);
    /* and decodes from an odd address to what sw_q8_dequantize gives */
    float *y = sw_malloc(n * 4), *ref = sw_malloc(n * 4);
    sw_q8_dequantize(q, am, n, 64, ref);
    SW_CHECK_OK(sw_codec_decode(NULL, &h, buf + 1, h.encoded_len, y, n));
    SW_CHECK(memcmp(y, ref, n * 4) == 0);
    sw_free(y);
    sw_free(ref);
    sw_free(x);
    sw_free(am);
    sw_free(q);
    sw_free(buf);
}

/*
 * The codec's fast quantizer gives exactly sw_q8_quantize's codes on the hardest inputs: every
 * midpoint between neighbouring map entries and the floats just around it (absmax fixed to 1 by
 * a 1.0 at the start of each block, so the scaled value is the probe itself), tiny subnormal
 * blocks where 1/absmax overflows to inf, and all-zero blocks (NaN scaled values).
 */
static void test_blockwise8_exact_codes(void)
{
    size_t n = 0, cap = 256 * 64 * 2;
    float *x = sw_calloc(cap, sizeof(float));

    for (int c = 0; c < 255; c++) {
        float m = (sw_q8_dynamic_map[c] + sw_q8_dynamic_map[c + 1]) * 0.5f;
        float probes[5] = {m, nextafterf(m, -2), nextafterf(m, 2), sw_q8_dynamic_map[c],
                           nextafterf(sw_q8_dynamic_map[c + 1], -2)};
        for (int k = 0; k < 5; k++) {
            if (n % 64 == 0)
                x[n++] = 1.0f;
            x[n++] = probes[k];
        }
    }
    while (n % 64)
        x[n++] = -1.0f;
    const float tiny[4] = {0x1p-149f, -0x1p-149f, 0x1p-140f, 0.0f}; /* absmax 2^-140: 1/a = inf */
    for (int k = 0; k < 64; k++)
        x[n++] = tiny[k % 4];
    for (int k = 0; k < 64; k++)
        x[n++] = k % 2 ? 0x1p-149f : 0.0f;
    n += 64; /* an all-zero block */
    size_t nb = n / 64;
    uint8_t *q = sw_malloc(n), *buf = sw_malloc(4 * nb + n);
    float *am = sw_malloc(nb * 4);
    int64_t shape[1] = {(int64_t)n};
    sw_codec_opts_t o = {.codec = SW_CODEC_BLOCKWISE8, .blocksize = 64};
    sw_tensor_header_t h;

    sw_q8_quantize(x, n, 64, q, am);
    SW_CHECK_OK(sw_codec_encode(NULL, &o, x, 1, shape, &h, buf, 4 * nb + n));
    SW_CHECK(memcmp(buf, am, 4 * nb) == 0);
    for (size_t i = 0; i < n; i++)
        SW_CHECKF(buf[4 * nb + i] == q[i], "x[%zu] = %a: code %d, sw_q8_quantize %d", i,
                  (double)x[i], buf[4 * nb + i], q[i]);
    sw_free(q);
    sw_free(buf);
    sw_free(am);
    sw_free(x);
}

/* zstd changes nothing in the decoded values: same output as without it, for every codec. */
static void test_zstd_same_values(void)
{
    sw_codec_ctx_t *ctx;
    size_t n = 10007, l0, l1;
    int64_t shape[2] = {1, 10007};
    float *x = randn_buf(n, 6, 1.0f);

    SW_CHECK_OK(sw_codec_ctx_new(&ctx));
    for (size_t c = 0; c < sizeof(all_codecs) / sizeof(all_codecs[0]); c++) {
        for (int level = -1; level <= 9; level += 5) {
            sw_codec_opts_t o = {.codec = all_codecs[c]}, oz = o;
            oz.zstd = 1;
            oz.zstd_level = level ? level : 1;
            float *a = roundtrip(ctx, &o, x, 2, shape, &l0), *b = roundtrip(ctx, &oz, x, 2, shape, &l1);
            SW_CHECK(a && b);
            SW_CHECK(memcmp(a, b, n * 4) == 0);
            sw_free(a);
            sw_free(b);
        }
    }
    /* highly compressible data does compress */
    memset(x, 0, n * 4);
    sw_codec_opts_t oz = {.codec = SW_CODEC_NONE, .zstd = 1};
    float *y = roundtrip(ctx, &oz, x, 2, shape, &l1);
    SW_CHECK(y && l1 < 200);
    sw_free(y);
    sw_codec_ctx_free(ctx);
    sw_free(x);
}

/* ----------------------------------- edge cases ----------------------------------- */

static void test_edges(void)
{
    sw_codec_ctx_t *ctx;
    const int64_t shapes[][3] = {{0, 0, 0}, {3, 0, 5}, {1, 1, 1}, {1, 1, 65}, {1, 1, 64 * 3 + 1},
                                 {1, 4097, 1}, {2, 3, 4}};
    const int ndims[] = {1, 3, 1, 3, 3, 2, 3};
    float *x = randn_buf(8192, 7, 4.0f);
    size_t len;

    SW_CHECK_OK(sw_codec_ctx_new(&ctx));
    for (size_t k = 0; k < sizeof(ndims) / sizeof(ndims[0]); k++) {
        size_t n = 1;
        for (int i = 0; i < ndims[k]; i++)
            n *= (size_t)shapes[k][i];
        for (size_t c = 0; c < 4; c++)
            for (int z = 0; z < 2; z++) {
                sw_codec_opts_t o = {.codec = all_codecs[c], .zstd = z};
                float *y = roundtrip(ctx, &o, x, ndims[k], shapes[k], &len);
                SW_CHECKF(y != NULL, "shape %zu codec %zu zstd %d", k, c, z);
                if (!z)
                    SW_CHECK(len == expect_raw(all_codecs[c], SW_CODEC_Q8_BLOCKSIZE, n));
                if (all_codecs[c] == SW_CODEC_NONE)
                    SW_CHECK(n == 0 || memcmp(x, y, n * 4) == 0);
                if (all_codecs[c] == SW_CODEC_BLOCKWISE8) {
                    double ma, mr;
                    SW_CHECK(q8_check(x, y, n, SW_CODEC_Q8_BLOCKSIZE, &ma, &mr));
                }
                sw_free(y);
            }
    }
    /* a scalar: ndim 0, one element */
    sw_codec_opts_t o = {.codec = SW_CODEC_BF16};
    float *y = roundtrip(ctx, &o, x, 0, NULL, &len);
    SW_CHECK(y && len == 2 && y[0] == sw_bf16_to_f32(sw_f32_to_bf16(x[0])));
    sw_free(y);
    /* all zeros decode to zeros (blockwise8: absmax 0) */
    memset(x, 0, 8192 * 4);
    for (size_t c = 0; c < 4; c++) {
        int64_t shape[1] = {8192};
        sw_codec_opts_t oz = {.codec = all_codecs[c], .zstd = 1};
        y = roundtrip(ctx, &oz, x, 1, shape, &len);
        SW_CHECK(y != NULL);
        for (size_t i = 0; i < 8192; i++)
            SW_CHECK(y[i] == 0.0f);
        sw_free(y);
    }
    sw_codec_ctx_free(ctx);
    sw_free(x);
}

static void test_nonfinite_input(void)
{
    float x[300] = {0};
    int64_t shape[1] = {300};
    uint8_t buf[2048];
    sw_tensor_header_t h;
    sw_codec_opts_t o = {.codec = SW_CODEC_BLOCKWISE8};

    for (int i = 0; i < 300; i++)
        x[i] = (float)i - 150.0f;
    SW_CHECK_OK(sw_codec_encode(NULL, &o, x, 1, shape, &h, buf, sizeof(buf)));
    x[257] = NAN;
    SW_CHECK(sw_codec_encode(NULL, &o, x, 1, shape, &h, buf, sizeof(buf)) == SW_EFORMAT);
    SW_CHECK(strstr(sw_err_detail(), "element 257") != NULL);
    x[257] = 0;
    x[3] = -INFINITY;
    SW_CHECK(sw_codec_encode(NULL, &o, x, 1, shape, &h, buf, sizeof(buf)) == SW_EFORMAT);
    SW_CHECK(strstr(sw_err_detail(), "element 3") != NULL);
    /* the 16-bit codecs and none carry them (checked in the bound tests); fp32 max -> fp16 inf */
}

/* ------------------------------- options and buffers ------------------------------- */

static void test_bad_options(void)
{
    float x[4] = {1, 2, 3, 4};
    int64_t shape[2] = {2, 2}, neg[1] = {-1};
    uint8_t buf[256];
    sw_tensor_header_t h;
    size_t b;

    sw_codec_opts_t bad[] = {
        {.codec = (sw_codec_t)9},
        {.codec = SW_CODEC_BLOCKWISE8, .blocksize = 100},
        {.codec = SW_CODEC_BLOCKWISE8, .blocksize = 32},
        {.codec = SW_CODEC_BLOCKWISE8, .blocksize = 8192},
        {.codec = SW_CODEC_FP16, .blocksize = 64},
        {.codec = SW_CODEC_FP16, .zstd = 1, .zstd_level = 1000},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        SW_CHECK(sw_codec_encode(NULL, &bad[i], x, 2, shape, &h, buf, sizeof(buf)) == -EINVAL);
        SW_CHECK(sw_codec_encoded_bound(&bad[i], 4, &b) == -EINVAL);
        SW_CHECK(sw_err_detail()[0] != '\0');
    }
    sw_codec_opts_t o = {.codec = SW_CODEC_NONE};
    SW_CHECK(sw_codec_encode(NULL, &o, x, 9, shape, &h, buf, sizeof(buf)) == -EINVAL);
    SW_CHECK(sw_codec_encode(NULL, &o, x, 1, neg, &h, buf, sizeof(buf)) == -EINVAL);
    SW_CHECK(sw_codec_encode(NULL, &o, x, 2, shape, &h, buf, 15) == SW_ELIMIT);
    SW_CHECK(sw_codec_encode(NULL, &o, x, 2, shape, &h, buf, 16) == 0);
    o.zstd = 1;
    SW_CHECK(sw_codec_encode(NULL, &o, x, 2, shape, &h, buf, sizeof(buf)) == -EINVAL); /* no ctx */
    sw_codec_ctx_t *ctx;
    SW_CHECK_OK(sw_codec_ctx_new(&ctx));
    SW_CHECK(sw_codec_encode(ctx, &o, x, 2, shape, &h, buf, 4) == SW_ELIMIT);
    sw_codec_ctx_free(ctx);
    sw_codec_t c;
    SW_CHECK(sw_codec_parse("blockwise8", &c) == 0 && c == SW_CODEC_BLOCKWISE8);
    SW_CHECK(sw_codec_parse("bf16", &c) == 0 && c == SW_CODEC_BF16);
    SW_CHECK(sw_codec_parse("int4", &c) == -EINVAL);
}

/* A warm context encodes and decodes with zstd without allocating through the seam. */
static void test_hot_path_no_alloc(void)
{
    sw_codec_ctx_t *ctx;
    size_t n = 4096, bound;
    int64_t shape[1] = {4096};
    float *x = randn_buf(n, 8, 1.0f), *y = sw_malloc(n * 4);
    sw_codec_opts_t o = {.codec = SW_CODEC_BLOCKWISE8, .zstd = 1};
    sw_tensor_header_t h;

    SW_CHECK_OK(sw_codec_encoded_bound(&o, n, &bound));
    uint8_t *buf = sw_malloc(bound);
    SW_CHECK_OK(sw_codec_ctx_new(&ctx));
    SW_CHECK_OK(sw_codec_encode(ctx, &o, x, 1, shape, &h, buf, bound));
    SW_CHECK_OK(sw_codec_decode(ctx, &h, buf, h.encoded_len, y, n));
    sw_alloc_fail_after(0);
    int r1 = sw_codec_encode(ctx, &o, x, 1, shape, &h, buf, bound);
    int r2 = sw_codec_decode(ctx, &h, buf, h.encoded_len, y, n);
    sw_alloc_fail_after(-1);
    SW_CHECK(r1 == 0 && r2 == 0);
    sw_codec_ctx_free(ctx);
    /* allocation failure is reported, not crashed on */
    sw_alloc_fail_after(0);
    int r3 = sw_codec_ctx_new(&ctx);
    sw_alloc_fail_after(-1);
    SW_CHECK(r3 == -ENOMEM);
    SW_CHECK_OK(sw_codec_ctx_new(&ctx));
    sw_alloc_fail_after(0);
    int r4 = sw_codec_encode(ctx, &o, x, 1, shape, &h, buf, bound);
    sw_alloc_fail_after(-1);
    SW_CHECK(r4 == -ENOMEM);
    sw_codec_ctx_free(ctx);
    sw_free(buf);
    sw_free(x);
    sw_free(y);
}

/* ----------------------------------- hostile input ----------------------------------- */

/* A valid encoding to corrupt: n floats with codec c. */
struct enc {
    sw_tensor_header_t h;
    uint8_t *buf;
    size_t n;
};

static int enc_make(struct enc *e, sw_codec_ctx_t *ctx, sw_codec_t c, int zstd, size_t n)
{
    sw_codec_opts_t o = {.codec = c, .zstd = zstd};
    int64_t shape[2] = {1, (int64_t)n};
    size_t bound;
    float *x = randn_buf(n, 11, 1.0f);
    int r;

    sw_codec_encoded_bound(&o, n, &bound);
    e->buf = sw_malloc(bound + 64);
    e->n = n;
    r = sw_codec_encode(ctx, &o, x, 2, shape, &e->h, e->buf, bound);
    sw_free(x);
    return r;
}

/* Decodes into an exactly-sized heap buffer (ASan catches a write past it); returns the code. */
static int try_decode(sw_codec_ctx_t *ctx, const sw_tensor_header_t *h, const void *p, size_t len,
                      size_t out_n)
{
    float *y = sw_malloc(out_n ? out_n * 4 : 1);
    int r;

    sw_err_clear();
    r = sw_codec_decode(ctx, h, p, len, y, out_n);
    sw_free(y);
    return r;
}

#define CHECK_REFUSED(expr, code, word)                                                      \
    do {                                                                                     \
        int rr_ = (expr);                                                                    \
        SW_CHECKF(rr_ == (code), "%s gave %d (%s), wanted %d", #expr, rr_, sw_err_detail(),  \
                  (code));                                                                   \
        SW_CHECKF(strstr(sw_err_detail(), (word)) != NULL, "detail '%s' lacks '%s'",         \
                  sw_err_detail(), (word));                                                  \
    } while (0)

static void test_bad_headers(void)
{
    sw_codec_ctx_t *ctx;
    struct enc e;
    sw_tensor_header_t h;

    SW_CHECK_OK(sw_codec_ctx_new(&ctx));
    SW_CHECK_OK(enc_make(&e, ctx, SW_CODEC_FP16, 0, 100));
    SW_CHECK_OK(try_decode(ctx, &e.h, e.buf, e.h.encoded_len, 100));

    h = e.h, h.codec = (sw_codec_t)7;
    CHECK_REFUSED(try_decode(ctx, &h, e.buf, h.encoded_len, 100), SW_EUNSUPPORTED, "codec");
    h = e.h, h.dtype = (sw_dtype_t)5;
    CHECK_REFUSED(try_decode(ctx, &h, e.buf, h.encoded_len, 100), SW_EUNSUPPORTED, "dtype");
    h = e.h, h.ndim = 9;
    CHECK_REFUSED(try_decode(ctx, &h, e.buf, h.encoded_len, 100), SW_EFORMAT, "dims");
    h = e.h, h.ndim = -1;
    CHECK_REFUSED(try_decode(ctx, &h, e.buf, h.encoded_len, 100), SW_EFORMAT, "dims");
    h = e.h, h.shape[0] = -1, h.shape[1] = -100;
    CHECK_REFUSED(try_decode(ctx, &h, e.buf, h.encoded_len, 100), SW_EFORMAT, "dim 0");
    h = e.h, h.shape[0] = SW_CODEC_MAX_DIM + 1;
    CHECK_REFUSED(try_decode(ctx, &h, e.buf, h.encoded_len, 100), SW_EFORMAT, "dim 0");
    /* a product that would overflow 64 bits: 2^40 x 2^40 x 2^40 */
    h = e.h, h.ndim = 3, h.shape[0] = h.shape[1] = h.shape[2] = SW_CODEC_MAX_DIM;
    CHECK_REFUSED(try_decode(ctx, &h, e.buf, h.encoded_len, 100), SW_EFORMAT, "elements");
    /* a product whose low 64 bits would be small: 2^32 x 2^32 x 100 */
    h = e.h, h.ndim = 3, h.shape[0] = h.shape[1] = (int64_t)1 << 32, h.shape[2] = 100;
    CHECK_REFUSED(try_decode(ctx, &h, e.buf, h.encoded_len, 100), SW_EFORMAT, "elements");
    h = e.h, h.blocksize = 64;
    CHECK_REFUSED(try_decode(ctx, &h, e.buf, h.encoded_len, 100), SW_EFORMAT, "blocksize");
    h = e.h, h.zstd = 2;
    CHECK_REFUSED(try_decode(ctx, &h, e.buf, h.encoded_len, 100), SW_EFORMAT, "zstd");
    /* shape / payload mismatch, both ways, with encoded_len consistent */
    h = e.h, h.shape[1] = 101;
    CHECK_REFUSED(try_decode(ctx, &h, e.buf, h.encoded_len, 101), SW_EFORMAT, "needs 202");
    h = e.h, h.shape[1] = 99;
    CHECK_REFUSED(try_decode(ctx, &h, e.buf, h.encoded_len, 101), SW_EFORMAT, "needs 198");
    /* truncated payload (encoded_len adjusted to match) and encoded_len disagreeing */
    h = e.h, h.encoded_len -= 1;
    CHECK_REFUSED(try_decode(ctx, &h, e.buf, h.encoded_len, 100), SW_EFORMAT, "needs 200");
    CHECK_REFUSED(try_decode(ctx, &e.h, e.buf, e.h.encoded_len - 1, 100), SW_EFORMAT, "header says");
    /* the output buffer is too small */
    CHECK_REFUSED(try_decode(ctx, &e.h, e.buf, e.h.encoded_len, 99), SW_ELIMIT, "room");
    /* codec none read as fp16 with a doubled shape is fine (same bytes), but as blockwise8 it is not */
    h = e.h, h.codec = SW_CODEC_BLOCKWISE8;
    CHECK_REFUSED(try_decode(ctx, &h, e.buf, h.encoded_len, 100), SW_EFORMAT, "blocksize");
    h.blocksize = 64;
    CHECK_REFUSED(try_decode(ctx, &h, e.buf, h.encoded_len, 100), SW_EFORMAT, "needs 108");
    sw_free(e.buf);
    sw_codec_ctx_free(ctx);
}

static void test_bad_absmax(void)
{
    struct enc e;
    const float bad[] = {NAN, INFINITY, -INFINITY, -1.0f, -FLT_MIN};

    SW_CHECK_OK(enc_make(&e, NULL, SW_CODEC_BLOCKWISE8, 0, 1000));
    SW_CHECK_OK(try_decode(NULL, &e.h, e.buf, e.h.encoded_len, 1000));
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        float keep;
        memcpy(&keep, e.buf + 4 * 15, 4); /* the last of the 16 blocks */
        memcpy(e.buf + 4 * 15, &bad[i], 4);
        CHECK_REFUSED(try_decode(NULL, &e.h, e.buf, e.h.encoded_len, 1000), SW_EFORMAT,
                      "absmax of block 15");
        memcpy(e.buf + 4 * 15, &keep, 4);
    }
    /* -0.0 and subnormal absmax are harmless */
    float z = -0.0f;
    memcpy(e.buf, &z, 4);
    SW_CHECK_OK(try_decode(NULL, &e.h, e.buf, e.h.encoded_len, 1000));
    sw_free(e.buf);
}

/* Writes a zstd frame of `content` bytes whose header claims `claim` content bytes. */
static size_t zstd_forged(uint8_t *dst, size_t cap, const uint8_t *src, size_t content,
                          unsigned claim)
{
    size_t zn = ZSTD_compress(dst, cap, src, content, 1);

    if (ZSTD_isError(zn))
        return 0;
    /* frame header: magic (4), descriptor; single-segment with a 1-byte content size for < 256 */
    uint8_t fhd = dst[4];
    if ((fhd >> 6) != 0 || !(fhd & 0x20) || (fhd & 3) != 0)
        return 0;
    dst[5] = (uint8_t)claim;
    return zn;
}

static void test_bad_zstd(void)
{
    sw_codec_ctx_t *ctx;
    struct enc e;
    sw_tensor_header_t h;
    uint8_t junk[512], frame[1024], src[1024];
    unsigned long long s = 17;

    SW_CHECK_OK(sw_codec_ctx_new(&ctx));
    SW_CHECK_OK(enc_make(&e, ctx, SW_CODEC_NONE, 1, 1000));
    SW_CHECK_OK(try_decode(ctx, &e.h, e.buf, e.h.encoded_len, 1000));
    SW_CHECK(e.h.encoded_len > 100);
    /* no context */
    CHECK_REFUSED(try_decode(NULL, &e.h, e.buf, e.h.encoded_len, 1000), -EINVAL, "context");
    /* garbage */
    for (size_t i = 0; i < sizeof(junk); i++)
        junk[i] = (uint8_t)sw_test_rand_u64(&s);
    h = e.h, h.encoded_len = sizeof(junk);
    CHECK_REFUSED(try_decode(ctx, &h, junk, sizeof(junk), 1000), SW_EFORMAT, "zstd");
    /* truncated frame */
    h = e.h, h.encoded_len -= 10;
    CHECK_REFUSED(try_decode(ctx, &h, e.buf, h.encoded_len, 1000), SW_EFORMAT, "zstd frame");
    /* trailing bytes after the frame */
    h = e.h, h.encoded_len += 3;
    CHECK_REFUSED(try_decode(ctx, &h, e.buf, h.encoded_len, 1000), SW_EFORMAT, "after the zstd");
    /* a frame claiming more content than the header implies (shape says 999 floats) */
    h = e.h, h.shape[1] = 999;
    CHECK_REFUSED(try_decode(ctx, &h, e.buf, h.encoded_len, 1000), SW_EFORMAT, "claims 4000");
    /* fp16 header over the same frame: 2000 bytes expected, frame has 4000 */
    h = e.h, h.codec = SW_CODEC_FP16;
    CHECK_REFUSED(try_decode(ctx, &h, e.buf, h.encoded_len, 1000), SW_EFORMAT, "claims 4000");
    /* a corrupted byte inside the compressed blocks */
    memcpy(junk, e.buf, e.h.encoded_len < sizeof(junk) ? e.h.encoded_len : sizeof(junk));
    for (size_t i = 0; i < sizeof(src); i++)
        src[i] = (uint8_t)(i * 7 % 13);
    /* a forged content size: 200 bytes of content, the frame header claims 100 (= what the
     * header implies for 25 floats): decompression must stop at 100 bytes, not overflow */
    size_t fl = zstd_forged(frame, sizeof(frame), src, 200, 100);
    SW_CHECK(fl > 0);
    sw_tensor_header_t hf = {.dtype = SW_DTYPE_F32, .ndim = 1, .shape = {25},
                             .codec = SW_CODEC_NONE, .zstd = 1, .encoded_len = fl};
    CHECK_REFUSED(try_decode(ctx, &hf, frame, fl, 25), SW_EFORMAT, "zstd");
    /* and the other way: 100 bytes of content claiming 200 (50 floats) */
    fl = zstd_forged(frame, sizeof(frame), src, 100, 200);
    SW_CHECK(fl > 0);
    hf.shape[0] = 50, hf.encoded_len = fl;
    CHECK_REFUSED(try_decode(ctx, &hf, frame, fl, 50), SW_EFORMAT, "zstd");
    /* a frame without a content size (streamed) */
    ZSTD_CCtx *cc = ZSTD_createCCtx();
    ZSTD_outBuffer ob = {frame, sizeof(frame), 0};
    ZSTD_inBuffer ib = {src, 100, 0};
    ZSTD_CCtx_setParameter(cc, ZSTD_c_contentSizeFlag, 0);
    SW_CHECK(ZSTD_compressStream2(cc, &ob, &ib, ZSTD_e_end) == 0);
    ZSTD_freeCCtx(cc);
    hf.shape[0] = 25, hf.encoded_len = ob.pos;
    CHECK_REFUSED(try_decode(ctx, &hf, frame, ob.pos, 25), SW_EFORMAT, "content size");
    /* two frames back to back */
    size_t f1 = ZSTD_compress(frame, sizeof(frame), src, 48, 1);
    size_t f2 = ZSTD_compress(frame + f1, sizeof(frame) - f1, src, 52, 1);
    hf.shape[0] = 25, hf.encoded_len = f1 + f2;
    CHECK_REFUSED(try_decode(ctx, &hf, frame, f1 + f2, 25), SW_EFORMAT, "after the zstd");
    /* flipped bytes anywhere: refused or decoded, never a crash (the frame has no checksum) */
    for (size_t i = 0; i < e.h.encoded_len; i++) {
        e.buf[i] ^= 0x5a;
        (void)try_decode(ctx, &e.h, e.buf, e.h.encoded_len, 1000);
        e.buf[i] ^= 0x5a;
    }
    /* a frame header claiming an enormous size is refused before any allocation */
    memcpy(frame, "\x28\xb5\x2f\xfd\xe4\x00\x00\x00\x00\x00\x00\x00\x01", 13);
    hf.shape[0] = 25, hf.encoded_len = 13;
    CHECK_REFUSED(try_decode(ctx, &hf, frame, 13, 25), SW_EFORMAT, "zstd");
    sw_free(e.buf);
    sw_codec_ctx_free(ctx);
}

/* ----------------------------------- TensorHeader ----------------------------------- */

static void test_header_proto(void)
{
    sw_tensor_header_t h = {.dtype = SW_DTYPE_BF16, .ndim = 8, .codec = SW_CODEC_BLOCKWISE8,
                            .blocksize = 4096, .zstd = 1, .encoded_len = UINT64_MAX},
                       d;
    uint8_t buf[SW_CODEC_MAX_HEADER + 64];
    size_t len;

    for (int i = 0; i < 8; i++)
        h.shape[i] = i == 3 ? 0 : SW_CODEC_MAX_DIM;
    SW_CHECK_OK(sw_codec_header_pack(&h, buf, sizeof(buf), &len));
    SW_CHECK(len <= SW_CODEC_MAX_HEADER && len == sw_codec_header_packed_size(&h));
    SW_CHECK_OK(sw_codec_header_unpack(buf, len, &d));
    SW_CHECK(memcmp(&h, &d, sizeof(h)) == 0);
    SW_CHECK(sw_codec_header_pack(&h, buf, len - 1, &len) == SW_ELIMIT);
    SW_CHECK_OK(sw_codec_header_pack(&h, buf, sizeof(buf), &len));
    for (size_t cut = 1; cut < len; cut++) /* every truncation: refused or a valid header */
        if (sw_codec_header_unpack(buf, cut, &d) == 0)
            SW_CHECK(sw_codec_header_check(&d, NULL, NULL) == 0);
    SW_CHECK(sw_codec_header_unpack(buf, len - 1, &d) == SW_EFORMAT);
    SW_CHECK(sw_codec_header_unpack(buf, SW_CODEC_MAX_HEADER + 1, &d) == SW_EFORMAT);
    /* an invalid header is not packed */
    h.ndim = 9;
    SW_CHECK(sw_codec_header_pack(&h, buf, sizeof(buf), &len) == -EINVAL);

    /* hostile protobufs built with the generated code */
    Swarmd__TensorHeader m = SWARMD__TENSOR_HEADER__INIT;
    int64_t shape[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    m.shape = shape;
    m.n_shape = 9;
    len = swarmd__tensor_header__pack(&m, buf);
    CHECK_REFUSED(sw_codec_header_unpack(buf, len, &d), SW_EFORMAT, "9 dims");
    m.n_shape = 2, shape[1] = -5;
    len = swarmd__tensor_header__pack(&m, buf);
    CHECK_REFUSED(sw_codec_header_unpack(buf, len, &d), SW_EFORMAT, "dim 1");
    shape[1] = 5, m.codec = 42;
    len = swarmd__tensor_header__pack(&m, buf);
    CHECK_REFUSED(sw_codec_header_unpack(buf, len, &d), SW_EUNSUPPORTED, "codec 42");
    m.codec = SWARMD__TENSOR_HEADER__CODEC__BLOCKWISE8, m.blocksize = 1u << 31;
    len = swarmd__tensor_header__pack(&m, buf);
    CHECK_REFUSED(sw_codec_header_unpack(buf, len, &d), SW_EFORMAT, "blocksize");
    m.blocksize = 0;
    len = swarmd__tensor_header__pack(&m, buf);
    CHECK_REFUSED(sw_codec_header_unpack(buf, len, &d), SW_EFORMAT, "blocksize 0");
    m.blocksize = 256, m.dtype = -3;
    len = swarmd__tensor_header__pack(&m, buf);
    CHECK_REFUSED(sw_codec_header_unpack(buf, len, &d), SW_EUNSUPPORTED, "dtype");
    m.dtype = 0;
    len = swarmd__tensor_header__pack(&m, buf);
    SW_CHECK_OK(sw_codec_header_unpack(buf, len, &d));
    SW_CHECK(d.ndim == 2 && d.shape[1] == 5 && d.blocksize == 256);
    /* an empty message is a valid scalar fp32 header with codec none */
    SW_CHECK_OK(sw_codec_header_unpack(buf, 0, &d));
    SW_CHECK(d.ndim == 0 && d.codec == SW_CODEC_NONE && d.encoded_len == 0);
    /* garbage bytes */
    memset(buf, 0xff, 40);
    CHECK_REFUSED(sw_codec_header_unpack(buf, 40, &d), SW_EFORMAT, "protobuf");
}

int main(void)
{
    long live = sw_alloc_live();

    SW_RUN(test_none_exact);
    SW_RUN(test_half_bounds);
    SW_RUN(test_blockwise8_bounds);
    SW_RUN(test_blockwise8_layout);
    SW_RUN(test_blockwise8_exact_codes);
    SW_RUN(test_zstd_same_values);
    SW_RUN(test_edges);
    SW_RUN(test_nonfinite_input);
    SW_RUN(test_bad_options);
    SW_RUN(test_hot_path_no_alloc);
    SW_RUN(test_bad_headers);
    SW_RUN(test_bad_absmax);
    SW_RUN(test_bad_zstd);
    SW_RUN(test_header_proto);
    if (sw_alloc_live() != live) {
        fprintf(stderr, "leak: %ld allocations live\n", sw_alloc_live() - live);
        sw_test_failed++;
    }
    return sw_test_summary("test-codec");
}
