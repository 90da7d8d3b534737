/* weights.c - Linear weights: dense, quantize-on-load, bitsandbytes checkpoints; see weights.h. */
#include "weights.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../util/alloc.h"
#include "../util/error.h"
#include "../util/file.h"

#define ALIGN64(x) (((x) + 63) & ~(size_t)63)
#define MAX_QUANT_STATE_JSON 4096

int sw_quant_parse(const char *s, sw_quant_t *out)
{
    static const char *names[] = { "auto", "none", "nf4", "int8" };

    for (int i = 0; i < 4; i++) {
        if (strcmp(s, names[i]) == 0) {
            *out = (sw_quant_t)i;
            return 0;
        }
    }
    return sw_err(SW_EUSAGE, "unknown quantization '%s' (use nf4, int8 or none)", s);
}

const char *sw_quant_name(sw_quant_t q)
{
    switch (q) {
    case SW_QUANT_AUTO: return "auto";
    case SW_QUANT_NONE: return "none";
    case SW_QUANT_NF4: return "nf4";
    case SW_QUANT_INT8: return "int8";
    }
    return "?";
}

/* Finds `name` and checks its dtype and element count (shape checked by the caller). */
static int find(sw_st_dir_t *ck, const char *dir, const char *name, sw_st_dtype_t dt,
                uint64_t numel, const sw_st_tensor_t **out)
{
    const sw_st_tensor_t *t;
    uint64_t n = 1;
    int r;

    r = sw_st_dir_find(ck, name, &t);
    if (r < 0)
        return r;
    if (t->dtype != dt)
        return sw_err(SW_EFORMAT, "%s: tensor %s has dtype %s, expected %s", dir, name,
                      sw_st_dtype_name(t->dtype), sw_st_dtype_name(dt));
    for (int i = 0; i < t->ndim; i++)
        n *= (uint64_t)t->shape[i];
    if (n != numel)
        return sw_err(SW_EFORMAT, "%s: tensor %s has %llu elements, expected %llu; the "
                      "checkpoint does not match its config", dir, name, (unsigned long long)n,
                      (unsigned long long)numel);
    *out = t;
    return 0;
}

static int has(sw_st_dir_t *ck, const char *name)
{
    const sw_st_tensor_t *t;

    return sw_st_dir_find(ck, name, &t) == 0;
}

int sw_weight_stored_format(sw_st_dir_t *ck, const char *prefix, sw_quant_t *out)
{
    const sw_st_tensor_t *t;
    char name[256];
    int r;

    snprintf(name, sizeof(name), "%s.weight", prefix);
    r = sw_st_dir_find(ck, name, &t);
    if (r < 0)
        return r;
    switch (t->dtype) {
    case SW_ST_F32:
    case SW_ST_F16:
    case SW_ST_BF16:
        *out = SW_QUANT_NONE;
        return 0;
    case SW_ST_U8:
        snprintf(name, sizeof(name), "%s.weight.quant_state.bitsandbytes__nf4", prefix);
        if (has(ck, name)) {
            *out = SW_QUANT_NF4;
            return 0;
        }
        snprintf(name, sizeof(name), "%s.weight.quant_state.bitsandbytes__fp4", prefix);
        if (has(ck, name))
            return sw_err(SW_EUNSUPPORTED, "%s.weight is bitsandbytes FP4; only NF4 and Int8 "
                          "checkpoints are supported (quantize the 16-bit model with --quant nf4)",
                          prefix);
        return sw_err(SW_EFORMAT, "%s.weight is uint8 but has no bitsandbytes quant_state; the "
                      "checkpoint is incomplete", prefix);
    case SW_ST_I8:
        *out = SW_QUANT_INT8;
        return 0;
    default:
        return sw_err(SW_EUNSUPPORTED, "%s.weight has dtype %s; weights must be F32, F16, BF16, "
                      "NF4 (uint8) or Int8", prefix, sw_st_dtype_name(t->dtype));
    }
}

/* A dense (N, K) view of the stored weight; copied when not aligned to its element size. */
static int load_dense(sw_st_dir_t *ck, const char *dir, const char *prefix, int64_t N, int64_t K,
                      sw_tensor_t *out)
{
    const sw_st_tensor_t *t;
    char name[256];
    int r;

    snprintf(name, sizeof(name), "%s.weight", prefix);
    r = sw_st_dir_find(ck, name, &t);
    if (r < 0)
        return r;
    if (t->ndim != 2 || t->shape[0] != N || t->shape[1] != K) {
        if (t->ndim == 2)
            return sw_err(SW_EFORMAT, "%s: tensor %s has shape (%lld, %lld) but config.json "
                          "implies (%lld, %lld); the checkpoint does not match its config", dir,
                          name, (long long)t->shape[0], (long long)t->shape[1], (long long)N,
                          (long long)K);
        return sw_err(SW_EFORMAT, "%s: tensor %s has %d dimensions, expected (%lld, %lld)", dir,
                      name, t->ndim, (long long)N, (long long)K);
    }
    memset(out, 0, sizeof(*out));
    out->dtype = t->dtype == SW_ST_F32 ? SW_DTYPE_F32 : t->dtype == SW_ST_F16 ? SW_DTYPE_F16
                                                                                : SW_DTYPE_BF16;
    out->ndim = 2;
    out->shape[0] = N;
    out->shape[1] = K;
    if ((uintptr_t)t->data % sw_dtype_size(out->dtype) == 0) {
        out->data = (void *)t->data;
        return 0;
    }
    out->data = sw_alloc_aligned(64, t->nbytes);
    if (!out->data)
        return -ENOMEM;
    memcpy(out->data, t->data, t->nbytes);
    out->owned = 1;
    return 0;
}

static int json_get_int(json_t *o, const char *key, const char *what, long long *out)
{
    json_t *v = json_object_get(o, key);

    if (!json_is_integer(v))
        return sw_err(SW_EFORMAT, "%s: quant_state \"%s\" is missing or not an integer", what, key);
    *out = json_integer_value(v);
    return 0;
}

static int pow2_in(long long v, long long lo, long long hi)
{
    return v >= lo && v <= hi && (v & (v - 1)) == 0;
}

/* Copies n floats (any alignment) and checks they are finite and >= 0. */
static int copy_scales(float *dst, const void *src, size_t n, const char *what)
{
    memcpy(dst, src, n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        if (!isfinite(dst[i]) || dst[i] < 0)
            return sw_err(SW_EFORMAT, "%s: scale %zu is %g; scales must be finite and >= 0", what,
                          i, (double)dst[i]);
    return 0;
}

static int load_nf4(sw_st_dir_t *ck, const char *dir, const char *prefix, int64_t N, int64_t K,
                    sw_tensor_t *out)
{
    const sw_st_tensor_t *w, *js, *qm, *am, *na = NULL, *nm = NULL;
    uint64_t numel = (uint64_t)N * (uint64_t)K, nblocks, nnested = 0;
    long long bs = 0, nbs = 0, sh0, sh1;
    int nested, same_map = 0, r;
    double offset = 0;
    char name[320], what[320];
    json_t *j = NULL, *v;
    unsigned char *base = NULL;
    sw_qstate_t *qs;
    float map[256];

    snprintf(what, sizeof(what), "%s: %s.weight", dir, prefix);
    snprintf(name, sizeof(name), "%s.weight", prefix);
    if ((r = find(ck, dir, name, SW_ST_U8, (numel + 1) / 2, &w)) < 0)
        return r;
    if (w->ndim > 2 || (w->ndim == 2 && w->shape[1] != 1))
        return sw_err(SW_EFORMAT, "%s: packed NF4 data must have shape [(N*K+1)/2, 1]", what);
    snprintf(name, sizeof(name), "%s.weight.quant_state.bitsandbytes__nf4", prefix);
    if ((r = sw_st_dir_find(ck, name, &js)) < 0)
        return r;
    if (js->dtype != SW_ST_U8 || js->nbytes > MAX_QUANT_STATE_JSON)
        return sw_err(SW_EFORMAT, "%s: quant_state must be at most %d bytes of uint8 JSON", what,
                      MAX_QUANT_STATE_JSON);
    if ((r = sw_json_parse(js->data, js->nbytes, name, &j)) < 0)
        return r;
    r = SW_EFORMAT;
    if (!json_is_object(j)) {
        r = sw_err(SW_EFORMAT, "%s: quant_state is not a JSON object", what);
        goto out;
    }
    v = json_object_get(j, "quant_type");
    if (!json_is_string(v) || strcmp(json_string_value(v), "nf4") != 0) {
        r = sw_err(SW_EUNSUPPORTED, "%s: quant_type is %s; only \"nf4\" is supported", what,
                   json_is_string(v) ? json_string_value(v) : "missing");
        goto out;
    }
    if ((r = json_get_int(j, "blocksize", what, &bs)) < 0)
        goto out;
    if (!pow2_in(bs, 32, 4096)) {
        r = sw_err(SW_EFORMAT, "%s: blocksize %lld is not one of 32, 64, ..., 4096", what, bs);
        goto out;
    }
    v = json_object_get(j, "shape");
    if (!json_is_array(v) || json_array_size(v) != 2 || !json_is_integer(json_array_get(v, 0)) ||
        !json_is_integer(json_array_get(v, 1))) {
        r = sw_err(SW_EFORMAT, "%s: quant_state shape must be [N, K]", what);
        goto out;
    }
    sh0 = json_integer_value(json_array_get(v, 0));
    sh1 = json_integer_value(json_array_get(v, 1));
    if (sh0 != N || sh1 != K) {
        r = sw_err(SW_EFORMAT, "%s: quant_state shape [%lld, %lld] but config.json implies "
                   "[%lld, %lld]", what, sh0, sh1, (long long)N, (long long)K);
        goto out;
    }
    nested = json_object_get(j, "nested_blocksize") != NULL;
    nblocks = (numel + (uint64_t)bs - 1) / (uint64_t)bs;
    if (nested) {
        if ((r = json_get_int(j, "nested_blocksize", what, &nbs)) < 0)
            goto out;
        v = json_object_get(j, "nested_offset");
        if (!pow2_in(nbs, 1, 65536) || !json_is_number(v) || !isfinite(json_number_value(v))) {
            r = sw_err(SW_EFORMAT, "%s: nested_blocksize or nested_offset is invalid", what);
            goto out;
        }
        offset = json_number_value(v);
        nnested = (nblocks + (uint64_t)nbs - 1) / (uint64_t)nbs;
    }
    snprintf(name, sizeof(name), "%s.weight.quant_map", prefix);
    if ((r = find(ck, dir, name, SW_ST_F32, 16, &qm)) < 0)
        goto out;
    memcpy(map, qm->data, 16 * sizeof(float));
    if (memcmp(map, sw_nf4_code, sizeof(sw_nf4_code)) != 0) {
        r = sw_err(SW_EUNSUPPORTED, "%s: quant_map is not the NF4 code (FP4 and custom maps are "
                   "not supported)", what);
        goto out;
    }
    snprintf(name, sizeof(name), "%s.weight.absmax", prefix);
    if ((r = find(ck, dir, name, nested ? SW_ST_U8 : SW_ST_F32, nblocks, &am)) < 0)
        goto out;
    if (nested) {
        snprintf(name, sizeof(name), "%s.weight.nested_absmax", prefix);
        if ((r = find(ck, dir, name, SW_ST_F32, nnested, &na)) < 0)
            goto out;
        snprintf(name, sizeof(name), "%s.weight.nested_quant_map", prefix);
        if ((r = find(ck, dir, name, SW_ST_F32, 256, &nm)) < 0)
            goto out;
        memcpy(map, nm->data, sizeof(map));
        for (int i = 0; i < 256; i++) {
            if (!isfinite(map[i]) || fabsf(map[i]) > 1.0f) {
                r = sw_err(SW_EFORMAT, "%s: nested_quant_map entry %d is %g, outside [-1, 1]",
                           what, i, (double)map[i]);
                goto out;
            }
        }
        same_map = memcmp(map, sw_q8_dynamic_map, sizeof(map)) == 0;
    }

    /* one allocation: the state, then its scales (the packed codes stay in the mapping) */
    {
        size_t off_a = ALIGN64(sizeof(sw_qstate_t)), off_n;
        size_t abytes = (nested && same_map) ? nblocks : nblocks * sizeof(float);
        off_n = ALIGN64(off_a + abytes);
        base = sw_alloc_aligned(64, off_n + nnested * sizeof(float) + 64);
        if (!base) {
            r = -ENOMEM;
            goto out;
        }
        memset(base, 0, off_a);
        qs = (sw_qstate_t *)(void *)base;
        qs->blocksize = (int)bs;
        qs->nblocks = (int64_t)nblocks;
        qs->nested_blocksize = nested ? (int)nbs : 256;
        qs->owned = base;
        if (!nested) {
            float *a = (float *)(void *)(base + off_a);
            if ((r = copy_scales(a, am->data, nblocks, what)) < 0)
                goto out;
            qs->absmax = a;
        } else {
            float *nab = (float *)(void *)(base + off_n);
            const uint8_t *q = am->data;
            if ((r = copy_scales(nab, na->data, nnested, what)) < 0)
                goto out;
            if (same_map) {
                memcpy(base + off_a, am->data, nblocks);
                qs->qabsmax = base + off_a;
                qs->nested_absmax = nab;
                qs->offset = (float)offset;
            } else {
                /* a map other than ours: rebuild the fp32 absmax as bnb would, with its map */
                float *a = (float *)(void *)(base + off_a);
                for (uint64_t b = 0; b < nblocks; b++) {
                    float t = map[q[b]] * nab[b / (uint64_t)nbs];
                    a[b] = t + (float)offset;
                }
                qs->absmax = a;
            }
        }
    }
    memset(out, 0, sizeof(*out));
    out->dtype = SW_DTYPE_NF4;
    out->ndim = 2;
    out->shape[0] = N;
    out->shape[1] = K;
    out->data = (void *)w->data;
    out->qs = qs;
    base = NULL;
    r = 0;
out:
    sw_free(base);
    json_decref(j);
    return r;
}

static int load_int8(sw_st_dir_t *ck, const char *dir, const char *prefix, int64_t N, int64_t K,
                     float threshold, sw_tensor_t *out)
{
    const sw_st_tensor_t *w, *scb, *fmt;
    char name[320], what[320];
    unsigned char *base;
    sw_qstate_t *qs;
    size_t off;
    int r;

    snprintf(what, sizeof(what), "%s: %s.SCB", dir, prefix);
    snprintf(name, sizeof(name), "%s.weight", prefix);
    if ((r = find(ck, dir, name, SW_ST_I8, (uint64_t)N * (uint64_t)K, &w)) < 0)
        return r;
    if (w->ndim != 2 || w->shape[0] != N)
        return sw_err(SW_EFORMAT, "%s: %s must have shape [%lld, %lld]", dir, name, (long long)N,
                      (long long)K);
    snprintf(name, sizeof(name), "%s.weight_format", prefix);
    if (sw_st_dir_find(ck, name, &fmt) == 0) {
        if (fmt->dtype != SW_ST_U8 || fmt->nbytes != 1 || *(const uint8_t *)fmt->data != 0)
            return sw_err(SW_EUNSUPPORTED, "%s: %s is not 0 (row-major); the tiled layouts of "
                          "bitsandbytes < 0.45 are not supported", dir, name);
    }
    snprintf(name, sizeof(name), "%s.SCB", prefix);
    if ((r = find(ck, dir, name, SW_ST_F32, (uint64_t)N, &scb)) < 0)
        return r;
    off = ALIGN64(sizeof(sw_qstate_t));
    base = sw_alloc_aligned(64, off + (size_t)N * sizeof(float));
    if (!base)
        return -ENOMEM;
    memset(base, 0, off);
    qs = (sw_qstate_t *)(void *)base;
    if ((r = copy_scales((float *)(void *)(base + off), scb->data, (size_t)N, what)) < 0) {
        sw_free(base);
        return r;
    }
    qs->scb = (const float *)(void *)(base + off);
    qs->threshold = threshold;
    qs->owned = base;
    memset(out, 0, sizeof(*out));
    out->dtype = SW_DTYPE_I8;
    out->ndim = 2;
    out->shape[0] = N;
    out->shape[1] = K;
    out->data = (void *)w->data;
    out->qs = qs;
    return 0;
}

int sw_weight_load(sw_st_dir_t *ck, const char *dir, const char *prefix, int64_t N, int64_t K,
                   const sw_load_opts_t *opts, sw_tensor_t *out)
{
    sw_quant_t stored, want = opts ? opts->quant : SW_QUANT_AUTO;
    float thr = opts ? opts->int8_threshold : 6.0f;
    sw_tensor_t dense;
    int r;

    r = sw_weight_stored_format(ck, prefix, &stored);
    if (r < 0)
        return r; /* the detail names the tensor, or the shard that failed to open */
    if (stored != SW_QUANT_NONE) {
        if (want != SW_QUANT_AUTO && want != stored)
            return sw_err(SW_EUNSUPPORTED, "%s: the checkpoint is already quantized to %s; load "
                          "it with --quant %s (or leave --quant out), or quantize the 16-bit "
                          "original instead", dir, sw_quant_name(stored), sw_quant_name(stored));
        return stored == SW_QUANT_NF4 ? load_nf4(ck, dir, prefix, N, K, out)
                                      : load_int8(ck, dir, prefix, N, K, thr, out);
    }
    r = load_dense(ck, dir, prefix, N, K, &dense);
    if (r < 0 || want == SW_QUANT_AUTO || want == SW_QUANT_NONE) {
        if (r == 0)
            *out = dense;
        return r;
    }
    r = want == SW_QUANT_NF4 ? sw_quantize_nf4(&dense, SW_NF4_BLOCKSIZE, 1, out)
                             : sw_quantize_int8(&dense, thr, out);
    sw_qtensor_free(&dense);
    if (r < 0)
        return sw_err(r, "%s: cannot quantize %s.weight to %s: %s", dir, prefix,
                      sw_quant_name(want), sw_strerror(r));
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* writing                                                                                     */

static const char *torch_dtype_name(sw_dtype_t dt)
{
    return dt == SW_DTYPE_F32 ? "float32" : dt == SW_DTYPE_F16 ? "float16" : "bfloat16";
}

/* Python's repr() of a double (shortest round-trip form), as json.dumps writes floats. */
static void python_float(double v, char *buf, size_t len)
{
    int p, e;
    char tmp[64];

    for (p = 1; p <= 17; p++) {
        snprintf(tmp, sizeof(tmp), "%.*e", p - 1, v);
        if (strtod(tmp, NULL) == v)
            break;
    }
    e = atoi(strchr(tmp, 'e') + 1);
    if (e >= -4 && e < 16) {
        snprintf(buf, len, "%.*f", p - 1 - e > 0 ? p - 1 - e : 0, v);
        if (!strchr(buf, '.'))
            strncat(buf, ".0", len - strlen(buf) - 1);
    } else {
        snprintf(buf, len, "%.*e", p - 1, v);
    }
}

int sw_weight_save(sw_st_writer_t *w, const char *prefix, const sw_tensor_t *t, sw_dtype_t orig)
{
    int64_t N = t->shape[0], K = t->shape[1], shape[2];
    char name[320];
    int r;

    if (t->dtype == SW_DTYPE_F32 || t->dtype == SW_DTYPE_F16 || t->dtype == SW_DTYPE_BF16) {
        sw_st_dtype_t dt = t->dtype == SW_DTYPE_F32 ? SW_ST_F32 : t->dtype == SW_DTYPE_F16
                                                                      ? SW_ST_F16 : SW_ST_BF16;
        snprintf(name, sizeof(name), "%s.weight", prefix);
        return sw_st_writer_add(w, name, dt, 2, t->shape, t->data, sw_tensor_nbytes(t));
    }
    if (t->dtype == SW_DTYPE_I8) {
        uint8_t fmt = 0;
        snprintf(name, sizeof(name), "%s.weight", prefix);
        if ((r = sw_st_writer_add(w, name, SW_ST_I8, 2, t->shape, t->data,
                                  (uint64_t)N * (uint64_t)K)) < 0)
            return r;
        snprintf(name, sizeof(name), "%s.SCB", prefix);
        if ((r = sw_st_writer_add(w, name, SW_ST_F32, 1, &N, t->qs->scb,
                                  (uint64_t)N * sizeof(float))) < 0)
            return r;
        snprintf(name, sizeof(name), "%s.weight_format", prefix);
        return sw_st_writer_add_copy(w, name, SW_ST_U8, 0, NULL, &fmt, 1);
    }
    /* NF4 */
    {
        const sw_qstate_t *qs = t->qs;
        uint64_t packed = ((uint64_t)N * (uint64_t)K + 1) / 2;
        int64_t nb = qs->nblocks, nn = (nb + qs->nested_blocksize - 1) / qs->nested_blocksize;
        int64_t sixteen = 16, n256 = 256, jl;
        char js[512], off[64];

        shape[0] = (int64_t)packed;
        shape[1] = 1;
        snprintf(name, sizeof(name), "%s.weight", prefix);
        if ((r = sw_st_writer_add(w, name, SW_ST_U8, 2, shape, t->data, packed)) < 0)
            return r;
        snprintf(name, sizeof(name), "%s.weight.quant_map", prefix);
        if ((r = sw_st_writer_add(w, name, SW_ST_F32, 1, &sixteen, sw_nf4_code,
                                  sizeof(sw_nf4_code))) < 0)
            return r;
        snprintf(name, sizeof(name), "%s.weight.absmax", prefix);
        if (qs->qabsmax) {
            if ((r = sw_st_writer_add(w, name, SW_ST_U8, 1, &nb, qs->qabsmax, (uint64_t)nb)) < 0)
                return r;
            snprintf(name, sizeof(name), "%s.weight.nested_absmax", prefix);
            if ((r = sw_st_writer_add(w, name, SW_ST_F32, 1, &nn, qs->nested_absmax,
                                      (uint64_t)nn * sizeof(float))) < 0)
                return r;
            snprintf(name, sizeof(name), "%s.weight.nested_quant_map", prefix);
            if ((r = sw_st_writer_add(w, name, SW_ST_F32, 1, &n256, sw_q8_dynamic_map,
                                      sizeof(sw_q8_dynamic_map))) < 0)
                return r;
            python_float((double)qs->offset, off, sizeof(off));
            jl = snprintf(js, sizeof(js), "{\"quant_type\": \"nf4\", \"blocksize\": %d, "
                          "\"dtype\": \"%s\", \"shape\": [%lld, %lld], \"nested_blocksize\": %d, "
                          "\"nested_dtype\": \"float32\", \"nested_offset\": %s}", qs->blocksize,
                          torch_dtype_name(orig), (long long)N, (long long)K,
                          qs->nested_blocksize, off);
        } else {
            if ((r = sw_st_writer_add(w, name, SW_ST_F32, 1, &nb, qs->absmax,
                                      (uint64_t)nb * sizeof(float))) < 0)
                return r;
            jl = snprintf(js, sizeof(js), "{\"quant_type\": \"nf4\", \"blocksize\": %d, "
                          "\"dtype\": \"%s\", \"shape\": [%lld, %lld]}", qs->blocksize,
                          torch_dtype_name(orig), (long long)N, (long long)K);
        }
        snprintf(name, sizeof(name), "%s.weight.quant_state.bitsandbytes__nf4", prefix);
        return sw_st_writer_add_copy(w, name, SW_ST_U8, 1, &jl, js, (uint64_t)jl);
    }
}
