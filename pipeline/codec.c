/*
 * codec.c - tensor codec for the wire (see codec.h for the formats, bounds and checks).
 *
 * Everything here runs on the caller's thread. Payload bytes are handled through memcpy in small
 * fixed chunks, so neither the caller's output buffer nor a received payload needs any alignment
 * and conversion loops of a fixed length vectorize at -O2.
 */
#include "pipeline/codec.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "kernels/quant.h"
#include "swarmd.pb-c.h"
#include "util/alloc.h"
#include "util/error.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the codec writes host floats as little-endian wire data: port the byte order first"
#endif

_Static_assert((int)SW_CODEC_NONE == SWARMD__TENSOR_HEADER__CODEC__NONE, "codec enum");
_Static_assert((int)SW_CODEC_FP16 == SWARMD__TENSOR_HEADER__CODEC__FP16, "codec enum");
_Static_assert((int)SW_CODEC_BF16 == SWARMD__TENSOR_HEADER__CODEC__BF16_CODEC, "codec enum");
_Static_assert((int)SW_CODEC_BLOCKWISE8 == SWARMD__TENSOR_HEADER__CODEC__BLOCKWISE8, "codec enum");
_Static_assert((int)SW_DTYPE_F32 == SWARMD__TENSOR_HEADER__DTYPE__F32, "dtype enum");
_Static_assert((int)SW_DTYPE_F16 == SWARMD__TENSOR_HEADER__DTYPE__F16, "dtype enum");
_Static_assert((int)SW_DTYPE_BF16 == SWARMD__TENSOR_HEADER__DTYPE__BF16, "dtype enum");

#define CHUNK 256            /* elements converted per step of the 16-bit codecs */
#define Q8_CHUNK_BLOCKS 256  /* absmax values staged on the stack per step of blockwise8 */

struct sw_codec_ctx {
    ZSTD_CCtx *cctx;
    ZSTD_DCtx *dctx;
    int level;               /* level cctx is set to; 0 = not set yet */
    void *scratch;           /* raw payload staging, 64-byte aligned */
    size_t scratch_cap;
};

/* ------------------------------------ names and sizes ------------------------------------ */

static const char *const codec_names[SW_CODEC_COUNT] = {"none", "fp16", "bf16", "blockwise8"};

const char *sw_codec_name(sw_codec_t c)
{
    return (unsigned)c < SW_CODEC_COUNT ? codec_names[c] : "unknown";
}

int sw_codec_parse(const char *name, sw_codec_t *out)
{
    for (int i = 0; i < SW_CODEC_COUNT; i++)
        if (strcmp(name, codec_names[i]) == 0) {
            *out = (sw_codec_t)i;
            return 0;
        }
    if (strcmp(name, "q8") == 0) {
        *out = SW_CODEC_BLOCKWISE8;
        return 0;
    }
    return sw_err(-EINVAL, "unknown codec '%s' (none, fp16, bf16, blockwise8)", name);
}

static bool blocksize_ok(int64_t bs)
{
    return bs >= SW_CODEC_Q8_MIN_BLOCK && bs <= SW_CODEC_Q8_MAX_BLOCK && (bs & (bs - 1)) == 0;
}

/* Raw payload bytes of n elements; the caller has checked codec, blocksize and n. */
static size_t raw_size(sw_codec_t codec, int blocksize, uint64_t n)
{
    switch (codec) {
    case SW_CODEC_NONE:
        return (size_t)n * 4;
    case SW_CODEC_FP16:
    case SW_CODEC_BF16:
        return (size_t)n * 2;
    case SW_CODEC_BLOCKWISE8:
        return (size_t)((n + (uint64_t)blocksize - 1) / (uint64_t)blocksize) * 4 + (size_t)n;
    default:
        return 0;
    }
}

/* Validates opts; *bs = the effective blockwise8 blocksize (0 for other codecs). */
static int opts_check(const sw_codec_opts_t *o, int *bs, int *level)
{
    if ((unsigned)o->codec >= SW_CODEC_COUNT)
        return sw_err(-EINVAL, "codec: unknown codec %d", (int)o->codec);
    *bs = 0;
    if (o->codec == SW_CODEC_BLOCKWISE8) {
        *bs = o->blocksize ? o->blocksize : SW_CODEC_Q8_BLOCKSIZE;
        if (!blocksize_ok(*bs))
            return sw_err(-EINVAL, "codec: blockwise8 blocksize %d is not a power of two in [%d, %d]",
                          *bs, SW_CODEC_Q8_MIN_BLOCK, SW_CODEC_Q8_MAX_BLOCK);
    } else if (o->blocksize) {
        return sw_err(-EINVAL, "codec: blocksize given for codec %s", sw_codec_name(o->codec));
    }
    *level = o->zstd_level ? o->zstd_level : SW_CODEC_ZSTD_LEVEL;
    if (o->zstd && (*level < ZSTD_minCLevel() || *level > ZSTD_maxCLevel()))
        return sw_err(-EINVAL, "codec: zstd level %d outside [%d, %d]", *level, ZSTD_minCLevel(),
                      ZSTD_maxCLevel());
    return 0;
}

int sw_codec_raw_size(const sw_codec_opts_t *opts, uint64_t numel, size_t *out)
{
    int bs = 0, level = 0, r;

    if ((r = opts_check(opts, &bs, &level)) < 0)
        return r;
    if (numel > SW_CODEC_MAX_NUMEL)
        return sw_err(-EINVAL, "codec: %llu elements exceed the limit %llu",
                      (unsigned long long)numel, (unsigned long long)SW_CODEC_MAX_NUMEL);
    *out = raw_size(opts->codec, bs, numel);
    return 0;
}

int sw_codec_encoded_bound(const sw_codec_opts_t *opts, uint64_t numel, size_t *out)
{
    size_t raw = 0;
    int r = sw_codec_raw_size(opts, numel, &raw);

    if (r < 0)
        return r;
    *out = opts->zstd ? ZSTD_compressBound(raw) : raw;
    if (opts->zstd && ZSTD_isError(*out))
        return sw_err(-EINVAL, "codec: %zu bytes are too many for zstd", raw);
    return 0;
}

int sw_codec_header_check(const sw_tensor_header_t *h, uint64_t *numel, size_t *raw_len)
{
    uint64_t n = 1;

    if ((unsigned)h->dtype >= SW_DTYPE_COUNT)
        return sw_err(SW_EUNSUPPORTED, "tensor header: unknown dtype %d", (int)h->dtype);
    if ((unsigned)h->codec >= SW_CODEC_COUNT)
        return sw_err(SW_EUNSUPPORTED, "tensor header: unknown codec %d", (int)h->codec);
    if (h->ndim < 0 || h->ndim > SW_CODEC_MAX_DIMS)
        return sw_err(SW_EFORMAT, "tensor header: %d dims (at most %d)", h->ndim, SW_CODEC_MAX_DIMS);
    bool empty = false;
    for (int i = 0; i < h->ndim; i++) {
        if (h->shape[i] < 0 || h->shape[i] > SW_CODEC_MAX_DIM)
            return sw_err(SW_EFORMAT, "tensor header: dim %d is %lld (allowed 0..%lld)", i,
                          (long long)h->shape[i], (long long)SW_CODEC_MAX_DIM);
        empty |= h->shape[i] == 0;
    }
    for (int i = 0; i < h->ndim && !empty; i++) {
        /* n <= 2^34 and shape[i] <= 2^40 before each step, so the product cannot overflow */
        n *= (uint64_t)h->shape[i];
        if (n > SW_CODEC_MAX_NUMEL)
            return sw_err(SW_EFORMAT, "tensor header: shape has more than %llu elements",
                          (unsigned long long)SW_CODEC_MAX_NUMEL);
    }
    if (empty)
        n = 0;
    if (h->codec == SW_CODEC_BLOCKWISE8) {
        if (!blocksize_ok(h->blocksize))
            return sw_err(SW_EFORMAT,
                          "tensor header: blockwise8 blocksize %d is not a power of two in [%d, %d]",
                          h->blocksize, SW_CODEC_Q8_MIN_BLOCK, SW_CODEC_Q8_MAX_BLOCK);
    } else if (h->blocksize != 0) {
        return sw_err(SW_EFORMAT, "tensor header: blocksize %d given for codec %s", h->blocksize,
                      sw_codec_name(h->codec));
    }
    if (h->zstd != 0 && h->zstd != 1)
        return sw_err(SW_EFORMAT, "tensor header: zstd flag %d", h->zstd);
    if (numel)
        *numel = n;
    if (raw_len)
        *raw_len = raw_size(h->codec, h->blocksize, n);
    return 0;
}

/* Turns the detail of a failed header check on our own (caller-given) header into -EINVAL. */
static int rewrap_einval(const char *what)
{
    char detail[256];

    snprintf(detail, sizeof(detail), "%s", sw_err_detail()); /* sw_err overwrites the detail */
    return sw_err(-EINVAL, "codec: %s: %s", what, detail);
}

/* ---------------------------------------- context ---------------------------------------- */

int sw_codec_ctx_new(sw_codec_ctx_t **out)
{
    sw_codec_ctx_t *c = sw_calloc(1, sizeof(*c));

    if (!c)
        return sw_err(-ENOMEM, "codec: out of memory for a context");
    *out = c;
    return 0;
}

void sw_codec_ctx_free(sw_codec_ctx_t *ctx)
{
    if (!ctx)
        return;
    ZSTD_freeCCtx(ctx->cctx);
    ZSTD_freeDCtx(ctx->dctx);
    sw_free(ctx->scratch);
    sw_free(ctx);
}

/*
 * Makes ctx->scratch hold at least n bytes (never NULL afterwards, even for n = 0, so that
 * pointer arithmetic on it stays defined); the old contents are not kept.
 */
static int scratch_reserve(sw_codec_ctx_t *ctx, size_t n)
{
    if (ctx->scratch && n <= ctx->scratch_cap)
        return 0;
    if (n < 64)
        n = 64;
    sw_free(ctx->scratch);
    ctx->scratch_cap = 0;
    ctx->scratch = sw_alloc_aligned(64, n);
    if (!ctx->scratch)
        return sw_err(-ENOMEM, "codec: out of memory for %zu bytes of scratch", n);
    ctx->scratch_cap = n;
    return 0;
}

/* ---------------------------------------- encoding ---------------------------------------- */

static void put_f16(uint8_t *dst, const float *x, size_t n)
{
    uint16_t h[CHUNK];

    for (size_t i = 0; i < n; i += CHUNK) {
        size_t m = n - i < CHUNK ? n - i : CHUNK;
        for (size_t j = 0; j < m; j++)
            h[j] = sw_f32_to_f16(x[i + j]);
        memcpy(dst + 2 * i, h, 2 * m);
    }
}

static void put_bf16(uint8_t *dst, const float *x, size_t n)
{
    uint16_t h[CHUNK];

    for (size_t i = 0; i < n; i += CHUNK) {
        size_t m = n - i < CHUNK ? n - i : CHUNK;
        for (size_t j = 0; j < m; j++)
            h[j] = sw_f32_to_bf16(x[i + j]);
        memcpy(dst + 2 * i, h, 2 * m);
    }
}

/* Index of the first non-finite element of x, or n if all are finite. */
static size_t first_nonfinite(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i += CHUNK) {
        size_t m = n - i < CHUNK ? n - i : CHUNK;
        uint32_t bad = 0;
        for (size_t j = 0; j < m; j++) {
            uint32_t u;
            memcpy(&u, &x[i + j], 4);
            bad |= (uint32_t)((u & 0x7f800000u) == 0x7f800000u);
        }
        if (bad)
            for (size_t j = 0; j < m; j++)
                if (!isfinite(x[i + j]))
                    return i + j;
    }
    return n;
}

/* absmax[ceil(n/bs)] | q[n] into dst; the input must be finite. */
static void put_q8(uint8_t *dst, const float *x, size_t n, int bs)
{
    size_t nblocks = (n + (size_t)bs - 1) / (size_t)bs;
    uint8_t *q = dst + 4 * nblocks;
    float absmax[Q8_CHUNK_BLOCKS];

    for (size_t b = 0; b < nblocks; b += Q8_CHUNK_BLOCKS) {
        size_t nb = nblocks - b < Q8_CHUNK_BLOCKS ? nblocks - b : Q8_CHUNK_BLOCKS;
        size_t i0 = b * (size_t)bs, m = nb * (size_t)bs;
        if (m > n - i0)
            m = n - i0;
        sw_q8_quantize(x + i0, m, bs, q + i0, absmax);
        memcpy(dst + 4 * b, absmax, 4 * nb);
    }
}

/* Writes the raw payload of x into dst (raw_size bytes). */
static void put_raw(sw_codec_t codec, int bs, const float *x, size_t n, uint8_t *dst)
{
    switch (codec) {
    case SW_CODEC_NONE:
        if (n)
            memcpy(dst, x, 4 * n);
        break;
    case SW_CODEC_FP16:
        put_f16(dst, x, n);
        break;
    case SW_CODEC_BF16:
        put_bf16(dst, x, n);
        break;
    case SW_CODEC_BLOCKWISE8:
        put_q8(dst, x, n, bs);
        break;
    default:
        break;
    }
}

int sw_codec_encode(sw_codec_ctx_t *ctx, const sw_codec_opts_t *opts, const float *x, int ndim,
                    const int64_t *shape, sw_tensor_header_t *h, void *out, size_t out_cap)
{
    uint64_t numel = 0;
    size_t raw = 0, bad;
    int bs = 0, level = 0, r;

    if ((r = opts_check(opts, &bs, &level)) < 0)
        return r;
    if (ndim < 0 || ndim > SW_CODEC_MAX_DIMS)
        return sw_err(-EINVAL, "codec: %d dims (at most %d)", ndim, SW_CODEC_MAX_DIMS);
    memset(h, 0, sizeof(*h));
    h->dtype = SW_DTYPE_F32;
    h->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        h->shape[i] = shape[i];
    h->codec = opts->codec;
    h->blocksize = bs;
    h->zstd = opts->zstd ? 1 : 0;
    if (sw_codec_header_check(h, &numel, &raw) < 0)
        return rewrap_einval("cannot encode");

    if (opts->codec == SW_CODEC_BLOCKWISE8 && (bad = first_nonfinite(x, (size_t)numel)) < numel)
        return sw_err(SW_EFORMAT, "codec: blockwise8 cannot carry the non-finite value %g at "
                      "element %zu (use none, fp16 or bf16)", (double)x[bad], bad);

    if (!opts->zstd) {
        if (out_cap < raw)
            return sw_err(SW_ELIMIT, "codec: %zu-byte output buffer for a %zu-byte payload",
                          out_cap, raw);
        put_raw(opts->codec, bs, x, (size_t)numel, out);
        h->encoded_len = raw;
        return 0;
    }

    if (!ctx)
        return sw_err(-EINVAL, "codec: zstd needs a codec context");
    if (!ctx->cctx && !(ctx->cctx = ZSTD_createCCtx()))
        return sw_err(-ENOMEM, "codec: out of memory for a zstd context");
    if (ctx->level != level) {
        size_t zr = ZSTD_CCtx_setParameter(ctx->cctx, ZSTD_c_compressionLevel, level);
        if (ZSTD_isError(zr))
            return sw_err(-EINVAL, "codec: zstd level %d: %s", level, ZSTD_getErrorName(zr));
        ctx->level = level;
    }
    const void *src = x;
    if (opts->codec != SW_CODEC_NONE) { /* fp32 is already its own raw payload */
        if ((r = scratch_reserve(ctx, raw)) < 0)
            return r;
        put_raw(opts->codec, bs, x, (size_t)numel, ctx->scratch);
        src = ctx->scratch;
    }
    size_t zn = ZSTD_compress2(ctx->cctx, out, out_cap, src, raw);
    if (ZSTD_isError(zn)) {
        if (ZSTD_getErrorCode(zn) == ZSTD_error_dstSize_tooSmall)
            return sw_err(SW_ELIMIT, "codec: %zu-byte output buffer too small for zstd (bound %zu)",
                          out_cap, ZSTD_compressBound(raw));
        return sw_err(-EIO, "codec: zstd: %s", ZSTD_getErrorName(zn));
    }
    h->encoded_len = zn;
    return 0;
}

/* ---------------------------------------- decoding ---------------------------------------- */

static void get_f16(float *dst, const uint8_t *src, size_t n)
{
    uint16_t h[CHUNK];

    for (size_t i = 0; i < n; i += CHUNK) {
        size_t m = n - i < CHUNK ? n - i : CHUNK;
        memcpy(h, src + 2 * i, 2 * m);
        for (size_t j = 0; j < m; j++)
            dst[i + j] = sw_f16_to_f32(h[j]);
    }
}

static void get_bf16(float *dst, const uint8_t *src, size_t n)
{
    uint16_t h[CHUNK];

    for (size_t i = 0; i < n; i += CHUNK) {
        size_t m = n - i < CHUNK ? n - i : CHUNK;
        memcpy(h, src + 2 * i, 2 * m);
        for (size_t j = 0; j < m; j++)
            dst[i + j] = sw_bf16_to_f32(h[j]);
    }
}

/* Dequantizes absmax[] | q[] (raw_size bytes) into dst, refusing a bad absmax first. */
static int get_q8(float *dst, const uint8_t *src, size_t n, int bs)
{
    size_t nblocks = (n + (size_t)bs - 1) / (size_t)bs;
    const uint8_t *q = src + 4 * nblocks;
    float absmax[Q8_CHUNK_BLOCKS];

    for (size_t b = 0; b < nblocks; b += Q8_CHUNK_BLOCKS) {
        size_t nb = nblocks - b < Q8_CHUNK_BLOCKS ? nblocks - b : Q8_CHUNK_BLOCKS;
        size_t i0 = b * (size_t)bs, m = nb * (size_t)bs;
        memcpy(absmax, src + 4 * b, 4 * nb);
        for (size_t j = 0; j < nb; j++)
            if (!(absmax[j] >= 0.0f && absmax[j] <= FLT_MAX))
                return sw_err(SW_EFORMAT, "tensor payload: blockwise8 absmax of block %zu is %g",
                              b + j, (double)absmax[j]);
        if (m > n - i0)
            m = n - i0;
        sw_q8_dequantize(q + i0, absmax, m, bs, dst + i0);
    }
    return 0;
}

static int get_raw(sw_codec_t codec, int bs, const uint8_t *src, size_t n, float *dst)
{
    switch (codec) {
    case SW_CODEC_NONE:
        if (n && (const void *)src != (void *)dst)
            memcpy(dst, src, 4 * n);
        return 0;
    case SW_CODEC_FP16:
        get_f16(dst, src, n);
        return 0;
    case SW_CODEC_BF16:
        get_bf16(dst, src, n);
        return 0;
    case SW_CODEC_BLOCKWISE8:
        return get_q8(dst, src, n, bs);
    default:
        return sw_err(SW_EUNSUPPORTED, "tensor header: unknown codec %d", (int)codec);
    }
}

/*
 * Decompresses exactly one zstd frame of exactly `raw` content bytes from src into dst (raw bytes
 * of room). The frame's own claims are checked against `raw` before anything is decompressed, and
 * decompression is bounded by dst's size whatever the frame says.
 */
static int unzstd(sw_codec_ctx_t *ctx, const void *src, size_t len, void *dst, size_t raw)
{
    size_t fl = ZSTD_findFrameCompressedSize(src, len);

    if (ZSTD_isError(fl))
        return sw_err(SW_EFORMAT, "tensor payload: not a complete zstd frame (%s)",
                      ZSTD_getErrorName(fl));
    if (fl != len)
        return sw_err(SW_EFORMAT, "tensor payload: %zu bytes after the zstd frame of %zu", len - fl,
                      fl);
    unsigned long long cs = ZSTD_getFrameContentSize(src, len);
    if (cs == ZSTD_CONTENTSIZE_ERROR)
        return sw_err(SW_EFORMAT, "tensor payload: bad zstd frame header");
    if (cs == ZSTD_CONTENTSIZE_UNKNOWN)
        return sw_err(SW_EFORMAT, "tensor payload: zstd frame without a content size");
    if (cs != raw)
        return sw_err(SW_EFORMAT, "tensor payload: zstd frame claims %llu bytes, the header "
                      "implies %zu", cs, raw);
    if (!ctx->dctx && !(ctx->dctx = ZSTD_createDCtx()))
        return sw_err(-ENOMEM, "codec: out of memory for a zstd context");
    size_t dn = ZSTD_decompressDCtx(ctx->dctx, dst, raw, src, len);
    if (ZSTD_isError(dn))
        return sw_err(SW_EFORMAT, "tensor payload: zstd: %s", ZSTD_getErrorName(dn));
    if (dn != raw)
        return sw_err(SW_EFORMAT, "tensor payload: zstd gave %zu bytes, expected %zu", dn, raw);
    return 0;
}

int sw_codec_decode(sw_codec_ctx_t *ctx, const sw_tensor_header_t *h, const void *payload,
                    size_t len, float *out, size_t out_cap)
{
    uint64_t numel = 0;
    size_t raw = 0;
    int r;

    if ((r = sw_codec_header_check(h, &numel, &raw)) < 0)
        return r;
    if (h->encoded_len != len)
        return sw_err(SW_EFORMAT, "tensor payload: %zu bytes, the header says %llu", len,
                      (unsigned long long)h->encoded_len);
    if (numel > out_cap)
        return sw_err(SW_ELIMIT, "tensor payload: %llu elements, room for %zu",
                      (unsigned long long)numel, out_cap);
    if (!h->zstd) {
        if (len != raw)
            return sw_err(SW_EFORMAT, "tensor payload: %zu bytes, %s x %llu elements needs %zu", len,
                          sw_codec_name(h->codec), (unsigned long long)numel, raw);
        return get_raw(h->codec, h->blocksize, payload, (size_t)numel, out);
    }
    if (!ctx)
        return sw_err(-EINVAL, "codec: zstd needs a codec context");
    if (h->codec == SW_CODEC_NONE) /* fp32 decompresses straight into place */
        return unzstd(ctx, payload, len, out, raw);
    if ((r = scratch_reserve(ctx, raw)) < 0)
        return r;
    if ((r = unzstd(ctx, payload, len, ctx->scratch, raw)) < 0)
        return r;
    return get_raw(h->codec, h->blocksize, ctx->scratch, (size_t)numel, out);
}

/* ------------------------------------- TensorHeader ------------------------------------- */

/* protobuf-c allocates through the seam, so tests count its memory too. */
static void *pb_alloc(void *data, size_t n)
{
    return sw_malloc(n);
}

static void pb_free(void *data, void *p)
{
    sw_free(p);
}

static ProtobufCAllocator pb_allocator = {.alloc = pb_alloc, .free = pb_free};

static void to_pb(const sw_tensor_header_t *h, Swarmd__TensorHeader *m, int64_t *shape)
{
    swarmd__tensor_header__init(m);
    m->dtype = (Swarmd__TensorHeader__Dtype)h->dtype;
    m->n_shape = (size_t)h->ndim;
    for (int i = 0; i < h->ndim; i++)
        shape[i] = h->shape[i];
    m->shape = shape;
    m->codec = (Swarmd__TensorHeader__Codec)h->codec;
    m->zstd = h->zstd ? 1 : 0;
    m->encoded_len = h->encoded_len;
    m->blocksize = (uint32_t)h->blocksize;
}

size_t sw_codec_header_packed_size(const sw_tensor_header_t *h)
{
    Swarmd__TensorHeader m;
    int64_t shape[SW_CODEC_MAX_DIMS];

    if (h->ndim < 0 || h->ndim > SW_CODEC_MAX_DIMS)
        return 0;
    to_pb(h, &m, shape);
    return swarmd__tensor_header__get_packed_size(&m);
}

int sw_codec_header_pack(const sw_tensor_header_t *h, uint8_t *buf, size_t cap, size_t *len)
{
    Swarmd__TensorHeader m;
    int64_t shape[SW_CODEC_MAX_DIMS];
    int r;

    if ((r = sw_codec_header_check(h, NULL, NULL)) < 0)
        return rewrap_einval("cannot pack");
    to_pb(h, &m, shape);
    size_t n = swarmd__tensor_header__get_packed_size(&m);
    if (n > cap)
        return sw_err(SW_ELIMIT, "codec: %zu-byte buffer for a %zu-byte tensor header", cap, n);
    *len = swarmd__tensor_header__pack(&m, buf);
    return 0;
}

int sw_codec_header_unpack(const uint8_t *buf, size_t len, sw_tensor_header_t *h)
{
    Swarmd__TensorHeader *m;
    int r = 0;

    if (len > SW_CODEC_MAX_HEADER)
        return sw_err(SW_EFORMAT, "tensor header: %zu bytes (at most %d)", len, SW_CODEC_MAX_HEADER);
    m = swarmd__tensor_header__unpack(&pb_allocator, len, buf);
    if (!m)
        return sw_err(SW_EFORMAT, "tensor header: not a valid TensorHeader protobuf");
    memset(h, 0, sizeof(*h));
    if (m->n_shape > SW_CODEC_MAX_DIMS) {
        r = sw_err(SW_EFORMAT, "tensor header: %zu dims (at most %d)", m->n_shape,
                   SW_CODEC_MAX_DIMS);
        goto out;
    }
    if (m->blocksize > SW_CODEC_Q8_MAX_BLOCK) {
        r = sw_err(SW_EFORMAT, "tensor header: blocksize %u (at most %d)", m->blocksize,
                   SW_CODEC_Q8_MAX_BLOCK);
        goto out;
    }
    /* proto3 enums are open: any int32 arrives; sw_codec_header_check refuses unknown values */
    h->dtype = (sw_dtype_t)m->dtype;
    h->codec = (sw_codec_t)m->codec;
    h->ndim = (int)m->n_shape;
    for (size_t i = 0; i < m->n_shape; i++)
        h->shape[i] = m->shape[i];
    h->zstd = m->zstd ? 1 : 0;
    h->encoded_len = m->encoded_len;
    h->blocksize = (int)m->blocksize;
    r = sw_codec_header_check(h, NULL, NULL);
out:
    swarmd__tensor_header__free_unpacked(m, &pb_allocator);
    return r;
}
