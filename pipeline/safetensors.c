/*
 * safetensors.c - strict reader for safetensors files and checkpoint directories; see safetensors.h.
 *
 * A file is validated completely when it is opened: the JSON header is parsed once, every entry is
 * checked and copied into a tensor table (sorted by data offset) plus a name index (sorted by name,
 * searched by bisection), and the JSON tree is dropped. Names and metadata strings live in one
 * arena allocation owned by the file object. Every error detail starts with the file's name.
 *
 * A directory keeps the index's tensor -> shard table (sorted by tensor name) and opens a shard
 * the first time one of its tensors is asked for.
 */
#include "safetensors.h"

#include <errno.h>
#include <stdio.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "util/alloc.h"
#include "util/error.h"
#include "util/file.h"

#define SW_ST_MAX_NAME 1024             /* longest tensor name accepted */
#define SW_ST_MAX_INDEX (64u << 20)     /* largest model.safetensors.index.json accepted */
#define SW_ST_MAX_SHARD_NAME 255        /* NAME_MAX */

/* Tensor names inside details are cut so the file name and the problem always fit in the detail. */
#define TN "'%.128s'"

static const struct {
    const char *name;
    size_t size;
} dtypes[] = {
    [SW_ST_BOOL] = {"BOOL", 1},   [SW_ST_U8] = {"U8", 1},           [SW_ST_I8] = {"I8", 1},
    [SW_ST_I16] = {"I16", 2},     [SW_ST_U16] = {"U16", 2},         [SW_ST_F16] = {"F16", 2},
    [SW_ST_BF16] = {"BF16", 2},   [SW_ST_I32] = {"I32", 4},         [SW_ST_U32] = {"U32", 4},
    [SW_ST_F32] = {"F32", 4},     [SW_ST_F64] = {"F64", 8},         [SW_ST_I64] = {"I64", 8},
    [SW_ST_U64] = {"U64", 8},     [SW_ST_F8_E4M3] = {"F8_E4M3", 1}, [SW_ST_F8_E5M2] = {"F8_E5M2", 1},
};
#define N_DTYPES (sizeof(dtypes) / sizeof(dtypes[0]))

size_t sw_st_dtype_size(sw_st_dtype_t dt)
{
    return (unsigned)dt < N_DTYPES ? dtypes[dt].size : 0;
}

const char *sw_st_dtype_name(sw_st_dtype_t dt)
{
    return (unsigned)dt < N_DTYPES ? dtypes[dt].name : "?";
}

/* ================================================================================================
 * One file
 * ============================================================================================= */

struct sw_st_file {
    char *name;             /* for error details; owned */
    sw_mmap_t map;          /* the mapping when opened from a path; data NULL for buffers */
    size_t n;
    sw_st_tensor_t *t;      /* n tensors, sorted by data offset */
    size_t *by_name;        /* n indices into t, sorted by tensor name */
    size_t nmeta;
    const char **meta;      /* nmeta (key, value) pairs, flattened */
    char *arena;            /* every name, key and value string */
};

/* Scratch entries used while validating and sorting. */
typedef struct {
    const char *name;
    size_t idx;
} st_named_t;

static int cmp_named(const void *a, const void *b)
{
    return strcmp(((const st_named_t *)a)->name, ((const st_named_t *)b)->name);
}

typedef struct {
    uint64_t begin, end;
    const char *name;
    size_t idx;
} st_sortrange_t;

static int cmp_sortrange(const void *a, const void *b)
{
    const st_sortrange_t *x = a, *y = b;

    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int check_name(const char *file, const char *name, const char *what)
{
    size_t len = strlen(name);

    if (len == 0)
        return sw_err(SW_EFORMAT, "%s: %s has an empty tensor name", file, what);
    if (len > SW_ST_MAX_NAME)
        return sw_err(SW_EFORMAT, "%s: %s has a tensor name of %zu bytes (at most %d allowed): "
                      TN "...", file, what, len, SW_ST_MAX_NAME, name);
    return 0;
}

/* Reads a JSON integer that must be >= 0 into *out. */
static int get_uint(const json_t *v, uint64_t *out)
{
    json_int_t x;

    if (!json_is_integer(v))
        return -1;
    x = json_integer_value(v);
    if (x < 0)
        return -1;
    *out = (uint64_t)x;
    return 0;
}

/*
 * Checks one tensor entry `v` named `name` and fills *t (name, dtype, shape, nbytes) and *r
 * (begin, end). `data_size` is the size of the data region.
 */
static int parse_entry(const char *file, const char *name, const json_t *v, uint64_t data_size,
                       sw_st_tensor_t *t, st_sortrange_t *r)
{
    const json_t *dtype = NULL, *shape = NULL, *offs = NULL, *x;
    const char *key;
    uint64_t nelem = 1, nbytes, begin, end;
    size_t i;
    int r_;

    r_ = check_name(file, name, "the header");
    if (r_ < 0)
        return r_;
    if (!json_is_object(v))
        return sw_err(SW_EFORMAT, "%s: tensor " TN " is not a JSON object", file, name);
    json_object_foreach((json_t *)v, key, x) {
        if (strcmp(key, "dtype") == 0)
            dtype = x;
        else if (strcmp(key, "shape") == 0)
            shape = x;
        else if (strcmp(key, "data_offsets") == 0)
            offs = x;
        else
            return sw_err(SW_EFORMAT, "%s: tensor " TN " has an unknown key '%.64s' (only dtype, "
                          "shape and data_offsets are allowed)", file, name, key);
    }
    if (!dtype || !shape || !offs)
        return sw_err(SW_EFORMAT, "%s: tensor " TN " has no \"%s\"", file, name,
                      !dtype ? "dtype" : !shape ? "shape" : "data_offsets");

    /* dtype */
    if (!json_is_string(dtype))
        return sw_err(SW_EFORMAT, "%s: tensor " TN ": dtype is not a string", file, name);
    for (i = 0; i < N_DTYPES; i++)
        if (strcmp(json_string_value(dtype), dtypes[i].name) == 0)
            break;
    if (i == N_DTYPES)
        return sw_err(SW_EUNSUPPORTED, "%s: tensor " TN " has dtype '%.32s', which swarmd does not "
                      "support (convert the checkpoint to F16, BF16 or F32)", file, name,
                      json_string_value(dtype));
    t->dtype = (sw_st_dtype_t)i;

    /* shape */
    if (!json_is_array(shape))
        return sw_err(SW_EFORMAT, "%s: tensor " TN ": shape is not an array", file, name);
    if (json_array_size(shape) > SW_ST_MAX_DIMS)
        return sw_err(SW_EFORMAT, "%s: tensor " TN " has %zu dimensions (at most %d supported)",
                      file, name, json_array_size(shape), SW_ST_MAX_DIMS);
    t->ndim = (int)json_array_size(shape);
    for (i = 0; i < json_array_size(shape); i++) {
        uint64_t d;
        if (get_uint(json_array_get(shape, i), &d) < 0)
            return sw_err(SW_EFORMAT, "%s: tensor " TN ": shape entry %zu is not a non-negative "
                          "integer", file, name, i);
        t->shape[i] = (int64_t)d;
        if (__builtin_mul_overflow(nelem, d, &nelem))
            return sw_err(SW_EFORMAT, "%s: tensor " TN ": the element count of its shape "
                          "overflows 64 bits", file, name);
    }
    if (__builtin_mul_overflow(nelem, (uint64_t)dtypes[t->dtype].size, &nbytes))
        return sw_err(SW_EFORMAT, "%s: tensor " TN ": its byte size overflows 64 bits", file, name);

    /* data_offsets */
    if (!json_is_array(offs) || json_array_size(offs) != 2 ||
        get_uint(json_array_get(offs, 0), &begin) < 0 ||
        get_uint(json_array_get(offs, 1), &end) < 0)
        return sw_err(SW_EFORMAT, "%s: tensor " TN ": data_offsets is not a pair of "
                      "non-negative integers [begin, end]", file, name);
    if (begin > end)
        return sw_err(SW_EFORMAT, "%s: tensor " TN ": data_offsets begin %llu is after end %llu",
                      file, name, (unsigned long long)begin, (unsigned long long)end);
    if (end > data_size)
        return sw_err(SW_EFORMAT, "%s: tensor " TN ": data ends at %llu but the data region has "
                      "only %llu bytes (the file is truncated or corrupt)", file, name,
                      (unsigned long long)end, (unsigned long long)data_size);
    if (end - begin != nbytes)
        return sw_err(SW_EFORMAT, "%s: tensor " TN ": shape and dtype %s need %llu bytes but "
                      "data_offsets span %llu", file, name, dtypes[t->dtype].name,
                      (unsigned long long)nbytes, (unsigned long long)(end - begin));
    t->nbytes = nbytes;
    r->begin = begin;
    r->end = end;
    r->name = name;
    return 0;
}

static int parse_metadata(const char *file, const json_t *m, size_t *nstr_bytes)
{
    const char *key;
    const json_t *v;

    if (!json_is_object(m))
        return sw_err(SW_EFORMAT, "%s: __metadata__ is not a JSON object", file);
    json_object_foreach((json_t *)m, key, v) {
        if (!json_is_string(v))
            return sw_err(SW_EFORMAT, "%s: __metadata__ entry '%.64s' is not a string", file, key);
        *nstr_bytes += strlen(key) + 1 + json_string_length(v) + 1;
    }
    return 0;
}

static char *arena_put(char **p, const char *s)
{
    size_t n = strlen(s) + 1;
    char *r = *p;

    memcpy(r, s, n);
    *p += n;
    return r;
}

/*
 * Validates the image at `base` (`size` bytes) and fills f's tables. On failure f may hold
 * partial allocations that sw_st_close() frees.
 */
static int st_load(sw_st_file_t *f, const uint8_t *base, size_t size)
{
    const char *file = f->name, *key;
    const json_t *meta = NULL, *v;
    json_t *hdr = NULL;
    st_sortrange_t *rs = NULL;
    st_named_t *names = NULL;
    uint64_t hlen = 0, data_size, max_end = 0;
    size_t nent, n = 0, strbytes = 0, prev_nonempty = (size_t)-1;
    char *ap;
    int r;

    if (size < 8)
        return sw_err(SW_EFORMAT, "%s: file is %zu bytes, too short for a safetensors header "
                      "(not a safetensors file, or truncated)", file, size);
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | base[i];
    if (hlen > SW_ST_MAX_HEADER)
        return sw_err(SW_EFORMAT, "%s: header length %llu exceeds the %u-byte limit (not a "
                      "safetensors file, or corrupt)", file, (unsigned long long)hlen,
                      SW_ST_MAX_HEADER);
    if (hlen > size - 8)
        return sw_err(SW_EFORMAT, "%s: header length %llu runs past the end of the %zu-byte file "
                      "(the file is truncated)", file, (unsigned long long)hlen, size);
    data_size = size - 8 - hlen;

    r = sw_json_parse((const char *)base + 8, (size_t)hlen, file, &hdr);
    if (r < 0)
        return r;
    if (!json_is_object(hdr)) {
        r = sw_err(SW_EFORMAT, "%s: header is not a JSON object", file);
        goto out;
    }

    nent = json_object_size(hdr);
    meta = json_object_get(hdr, "__metadata__");
    if (meta) {
        nent--;
        r = parse_metadata(file, meta, &strbytes);
        if (r < 0)
            goto out;
        f->nmeta = json_object_size(meta);
    }
    f->t = sw_calloc(nent, sizeof(*f->t));
    f->by_name = sw_calloc(nent, sizeof(*f->by_name));
    f->meta = sw_calloc(f->nmeta * 2, sizeof(*f->meta));
    rs = sw_calloc(nent, sizeof(*rs));
    names = sw_calloc(nent, sizeof(*names));
    if (!f->t || !f->by_name || !f->meta || !rs || !names) {
        r = sw_err(-ENOMEM, "%s: out of memory reading the header", file);
        goto out;
    }

    json_object_foreach(hdr, key, v) {
        if (v == meta)
            continue;
        if (n == nent) { /* cannot happen: the object does not change while we walk it */
            r = sw_err(SW_EFORMAT, "%s: header changed while reading", file);
            goto out;
        }
        memset(&f->t[n], 0, sizeof(f->t[n]));
        r = parse_entry(file, key, v, data_size, &f->t[n], &rs[n]);
        if (r < 0)
            goto out;
        rs[n].idx = n;
        strbytes += strlen(key) + 1;
        n++;
    }

    /* Overlap check over ranges sorted by begin; empty ranges overlap nothing. */
    qsort(rs, n, sizeof(*rs), cmp_sortrange);
    for (size_t i = 0; i < n; i++) {
        if (rs[i].begin == rs[i].end)
            continue;
        if (prev_nonempty != (size_t)-1 && rs[i].begin < max_end) {
            r = sw_err(SW_EFORMAT, "%s: tensors " TN " and " TN " have overlapping data ranges",
                       file, rs[prev_nonempty].name, rs[i].name);
            goto out;
        }
        max_end = rs[i].end;
        prev_nonempty = i;
    }

    /* Copy the strings out of the JSON tree, and lay the tensors out in offset order. */
    f->arena = sw_malloc(strbytes ? strbytes : 1);
    if (!f->arena) {
        r = sw_err(-ENOMEM, "%s: out of memory reading the header", file);
        goto out;
    }
    ap = f->arena;
    {
        sw_st_tensor_t *sorted = sw_calloc(nent, sizeof(*sorted));
        if (!sorted) {
            r = sw_err(-ENOMEM, "%s: out of memory reading the header", file);
            goto out;
        }
        for (size_t i = 0; i < n; i++) {
            sorted[i] = f->t[rs[i].idx];
            sorted[i].name = arena_put(&ap, rs[i].name);
            sorted[i].data = base + 8 + hlen + rs[i].begin;
            names[i].name = sorted[i].name;
            names[i].idx = i;
        }
        sw_free(f->t);
        f->t = sorted;
    }
    f->n = n;
    qsort(names, n, sizeof(*names), cmp_named);
    for (size_t i = 0; i < n; i++)
        f->by_name[i] = names[i].idx;
    if (meta) {
        size_t i = 0;
        json_object_foreach((json_t *)meta, key, v) {
            f->meta[2 * i] = arena_put(&ap, key);
            f->meta[2 * i + 1] = arena_put(&ap, json_string_value(v));
            i++;
        }
    }
    r = 0;
out:
    sw_free(rs);
    sw_free(names);
    json_decref(hdr);
    return r;
}

void sw_st_close(sw_st_file_t *f)
{
    if (!f)
        return;
    sw_file_unmap(&f->map);
    sw_free(f->t);
    sw_free(f->by_name);
    sw_free(f->meta);
    sw_free(f->arena);
    sw_free(f->name);
    sw_free(f);
}

static int st_new(const char *name, sw_st_file_t **out)
{
    sw_st_file_t *f = sw_calloc(1, sizeof(*f));

    if (!f)
        return sw_err(-ENOMEM, "%s: out of memory", name);
    f->name = sw_strdup(name);
    if (!f->name) {
        sw_free(f);
        return sw_err(-ENOMEM, "%s: out of memory", name);
    }
    *out = f;
    return 0;
}

int sw_st_open_buffer(const void *data, size_t size, const char *name, sw_st_file_t **out)
{
    sw_st_file_t *f = NULL;
    int r;

    *out = NULL;
    if (!name)
        name = "<buffer>";
    r = st_new(name, &f);
    if (r < 0)
        return r;
    r = st_load(f, data, data ? size : 0);
    if (r < 0) {
        sw_st_close(f);
        return r;
    }
    *out = f;
    return 0;
}

int sw_st_open(const char *path, sw_st_file_t **out)
{
    sw_st_file_t *f = NULL;
    int r;

    *out = NULL;
    r = st_new(path, &f);
    if (r < 0)
        return r;
    r = sw_file_map(path, &f->map);
    if (r >= 0)
        r = st_load(f, f->map.data, f->map.size);
    if (r < 0) {
        sw_st_close(f);
        return r;
    }
    *out = f;
    return 0;
}

size_t sw_st_count(const sw_st_file_t *f)
{
    return f->n;
}

const sw_st_tensor_t *sw_st_at(const sw_st_file_t *f, size_t i)
{
    return i < f->n ? &f->t[i] : NULL;
}

const sw_st_tensor_t *sw_st_find(const sw_st_file_t *f, const char *name)
{
    size_t lo = 0, hi = f->n;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const sw_st_tensor_t *t = &f->t[f->by_name[mid]];
        int c = strcmp(name, t->name);
        if (c == 0)
            return t;
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

const char *sw_st_metadata(const sw_st_file_t *f, const char *key)
{
    for (size_t i = 0; i < f->nmeta; i++)
        if (strcmp(f->meta[2 * i], key) == 0)
            return f->meta[2 * i + 1];
    return NULL;
}

/* ================================================================================================
 * A checkpoint directory
 * ============================================================================================= */

typedef struct {
    char *file;             /* plain file name inside the directory; owned */
    sw_st_file_t *f;        /* NULL until first needed */
} st_shard_t;

typedef struct {
    char *name;             /* owned (index mode) or borrowed from the single file */
    size_t shard;
} st_entry_t;

struct sw_st_dir {
    char *path;
    int indexed;            /* names are owned only in index mode */
    size_t nshards, nopen;
    st_shard_t *shards;
    size_t n;
    st_entry_t *entries;    /* sorted by name */
};

void sw_st_dir_close(sw_st_dir_t *d)
{
    if (!d)
        return;
    for (size_t i = 0; i < d->nshards; i++) {
        sw_st_close(d->shards[i].f);
        sw_free(d->shards[i].file);
    }
    if (d->indexed)
        for (size_t i = 0; i < d->n; i++)
            sw_free(d->entries[i].name);
    sw_free(d->shards);
    sw_free(d->entries);
    sw_free(d->path);
    sw_free(d);
}

static int exists(const char *path, int *yes)
{
    struct stat st;

    *yes = 0;
    if (stat(path, &st) == 0) {
        *yes = 1;
        return 0;
    }
    if (errno == ENOENT || errno == ENOTDIR)
        return 0;
    return sw_err(-errno, "%s: cannot stat: %s", path, strerror(errno));
}

static int check_shard_name(const char *index, const char *tensor, const char *s)
{
    size_t len = strlen(s);
    static const char ext[] = ".safetensors";

    if (len == 0 || len > SW_ST_MAX_SHARD_NAME || strchr(s, '/') || strcmp(s, ".") == 0 ||
        strcmp(s, "..") == 0 || len <= sizeof(ext) - 1 || strcmp(s + len - (sizeof(ext) - 1), ext))
        return sw_err(SW_EFORMAT, "%s: tensor " TN " maps to shard '%.128s', which is not a plain "
                      "*.safetensors file name in the model directory", index, tensor, s);
    return 0;
}

static int cmp_entry(const void *a, const void *b)
{
    return strcmp(((const st_entry_t *)a)->name, ((const st_entry_t *)b)->name);
}

static int cmp_shard(const void *a, const void *b)
{
    return strcmp(((const st_shard_t *)a)->file, ((const st_shard_t *)b)->file);
}

static int dir_load_single(sw_st_dir_t *d, const char *path)
{
    int r;

    d->shards = sw_calloc(1, sizeof(*d->shards));
    if (!d->shards)
        return sw_err(-ENOMEM, "%s: out of memory", path);
    d->nshards = 1;
    d->shards[0].file = sw_strdup("model.safetensors");
    if (!d->shards[0].file)
        return sw_err(-ENOMEM, "%s: out of memory", path);
    r = sw_st_open(path, &d->shards[0].f);
    if (r < 0)
        return r;
    d->nopen = 1;
    d->n = sw_st_count(d->shards[0].f);
    d->entries = sw_calloc(d->n, sizeof(*d->entries));
    if (!d->entries)
        return sw_err(-ENOMEM, "%s: out of memory", path);
    for (size_t i = 0; i < d->n; i++)
        d->entries[i].name = (char *)sw_st_at(d->shards[0].f, i)->name;
    qsort(d->entries, d->n, sizeof(*d->entries), cmp_entry);
    return 0;
}

static int dir_load_index(sw_st_dir_t *d, const char *path)
{
    json_t *idx = NULL, *wm, *meta, *v;
    const char *key;
    st_shard_t *uniq = NULL;
    size_t n = 0, nu = 0;
    int r;

    r = sw_json_load(path, SW_ST_MAX_INDEX, &idx);
    if (r < 0)
        return r;
    if (!json_is_object(idx)) {
        r = sw_err(SW_EFORMAT, "%s: the index is not a JSON object", path);
        goto out;
    }
    meta = json_object_get(idx, "metadata");
    if (meta && !json_is_object(meta)) {
        r = sw_err(SW_EFORMAT, "%s: \"metadata\" is not a JSON object", path);
        goto out;
    }
    wm = json_object_get(idx, "weight_map");
    if (!wm || !json_is_object(wm)) {
        r = sw_err(SW_EFORMAT, "%s: %s (it should map each tensor name to its shard file)", path,
                   wm ? "\"weight_map\" is not a JSON object" : "no \"weight_map\"");
        goto out;
    }
    if (json_object_size(wm) == 0) {
        r = sw_err(SW_EFORMAT, "%s: \"weight_map\" is empty", path);
        goto out;
    }

    d->entries = sw_calloc(json_object_size(wm), sizeof(*d->entries));
    uniq = sw_calloc(json_object_size(wm), sizeof(*uniq));
    if (!d->entries || !uniq) {
        r = sw_err(-ENOMEM, "%s: out of memory", path);
        goto out;
    }
    /* Validate every entry; collect shard names (borrowed from the JSON tree for now). */
    json_object_foreach(wm, key, v) {
        r = check_name(path, key, "the weight_map");
        if (r < 0)
            goto out;
        if (!json_is_string(v)) {
            r = sw_err(SW_EFORMAT, "%s: the shard of tensor " TN " is not a string", path, key);
            goto out;
        }
        r = check_shard_name(path, key, json_string_value(v));
        if (r < 0)
            goto out;
        uniq[n].file = (char *)json_string_value(v);
        n++;
    }
    qsort(uniq, n, sizeof(*uniq), cmp_shard);
    for (size_t i = 0; i < n; i++)
        if (nu == 0 || strcmp(uniq[nu - 1].file, uniq[i].file) != 0)
            uniq[nu++] = uniq[i];

    d->shards = sw_calloc(nu, sizeof(*d->shards));
    if (!d->shards) {
        r = sw_err(-ENOMEM, "%s: out of memory", path);
        goto out;
    }
    d->nshards = nu;
    for (size_t i = 0; i < nu; i++) {
        d->shards[i].file = sw_strdup(uniq[i].file);
        if (!d->shards[i].file) {
            r = sw_err(-ENOMEM, "%s: out of memory", path);
            goto out;
        }
    }
    json_object_foreach(wm, key, v) {
        st_shard_t k = {.file = (char *)json_string_value(v)};
        const st_shard_t *s = bsearch(&k, d->shards, nu, sizeof(*d->shards), cmp_shard);
        d->entries[d->n].shard = (size_t)(s - d->shards);
        d->entries[d->n].name = sw_strdup(key);
        if (!d->entries[d->n].name) {
            r = sw_err(-ENOMEM, "%s: out of memory", path);
            goto out;
        }
        d->n++;
    }
    qsort(d->entries, d->n, sizeof(*d->entries), cmp_entry);
    r = 0;
out:
    sw_free(uniq);
    json_decref(idx);
    return r;
}

int sw_st_dir_open(const char *dir, sw_st_dir_t **out)
{
    sw_st_dir_t *d = NULL;
    char *single = NULL, *index = NULL;
    struct stat st;
    int r, has_single, has_index;

    *out = NULL;
    if (stat(dir, &st) < 0)
        return sw_err(-errno, "%s: cannot open the model directory: %s", dir, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return sw_err(-ENOTDIR, "%s: not a directory (pass the model directory, which holds "
                      "config.json and the safetensors files)", dir);
    d = sw_calloc(1, sizeof(*d));
    single = sw_path_join(dir, "model.safetensors");
    index = sw_path_join(dir, "model.safetensors.index.json");
    if (d)
        d->path = sw_strdup(dir);
    if (!d || !single || !index || !d->path) {
        r = sw_err(-ENOMEM, "%s: out of memory", dir);
        goto out;
    }
    r = exists(single, &has_single);
    if (r >= 0)
        r = exists(index, &has_index);
    if (r < 0)
        goto out;
    if (has_single) {
        r = dir_load_single(d, single);
    } else if (has_index) {
        d->indexed = 1;
        r = dir_load_index(d, index);
    } else {
        r = sw_err(-ENOENT, "%s: no safetensors checkpoint in this directory (expected "
                   "model.safetensors, or model.safetensors.index.json and the shards it names)",
                   dir);
    }
    if (r < 0)
        goto out;
    *out = d;
    d = NULL;
out:
    sw_st_dir_close(d);
    sw_free(single);
    sw_free(index);
    return r;
}

int sw_st_dir_find(sw_st_dir_t *d, const char *name, const sw_st_tensor_t **out)
{
    st_entry_t k = {.name = (char *)name};
    const st_entry_t *e;
    st_shard_t *s;
    const sw_st_tensor_t *t;
    int r;

    *out = NULL;
    e = bsearch(&k, d->entries, d->n, sizeof(*d->entries), cmp_entry);
    if (!e)
        return sw_err(-ENOENT, "%s: the checkpoint has no tensor " TN, d->path, name);
    s = &d->shards[e->shard];
    if (!s->f) {
        char *p = sw_path_join(d->path, s->file);
        if (!p)
            return sw_err(-ENOMEM, "%s: out of memory", d->path);
        r = sw_st_open(p, &s->f);
        sw_free(p);
        if (r < 0)
            return r;
        d->nopen++;
    }
    t = sw_st_find(s->f, name);
    if (!t)
        return sw_err(SW_EFORMAT, "%s: model.safetensors.index.json puts tensor " TN " in shard "
                      "%s, but that shard has no such tensor (the checkpoint is incomplete or the "
                      "index is stale)", d->path, name, s->file);
    *out = t;
    return 0;
}

size_t sw_st_dir_count(const sw_st_dir_t *d)
{
    return d->n;
}

const char *sw_st_dir_name(const sw_st_dir_t *d, size_t i)
{
    return i < d->n ? d->entries[i].name : NULL;
}

size_t sw_st_dir_shards(const sw_st_dir_t *d)
{
    return d->nshards;
}

size_t sw_st_dir_shards_open(const sw_st_dir_t *d)
{
    return d->nopen;
}

/* ------------------------------------------------------------------------------------------ */
/* writing                                                                                     */

typedef struct {
    char *name;
    sw_st_dtype_t dtype;
    int ndim;
    int64_t shape[SW_ST_MAX_DIMS];
    const void *data;
    uint64_t nbytes;
    void *copy; /* owned copy of data, or NULL when borrowed */
} wentry_t;

struct sw_st_writer {
    wentry_t *e;
    size_t n, cap;
    json_t *meta;
};

int sw_st_writer_new(sw_st_writer_t **out)
{
    sw_st_writer_t *w = sw_calloc(1, sizeof(*w));

    if (!w)
        return -ENOMEM;
    w->meta = json_object();
    if (!w->meta) {
        sw_free(w);
        return -ENOMEM;
    }
    *out = w;
    return 0;
}

void sw_st_writer_free(sw_st_writer_t *w)
{
    if (!w)
        return;
    for (size_t i = 0; i < w->n; i++) {
        sw_free(w->e[i].name);
        sw_free(w->e[i].copy);
    }
    sw_free(w->e);
    json_decref(w->meta);
    sw_free(w);
}

int sw_st_writer_add(sw_st_writer_t *w, const char *name, sw_st_dtype_t dt, int ndim,
                     const int64_t *shape, const void *data, uint64_t nbytes)
{
    uint64_t n = sw_st_dtype_size(dt);
    wentry_t *e;

    if (ndim < 0 || ndim > SW_ST_MAX_DIMS)
        return sw_err(-EINVAL, "tensor %s: %d dimensions", name, ndim);
    for (int i = 0; i < ndim; i++)
        n *= (uint64_t)shape[i];
    if (n != nbytes)
        return sw_err(-EINVAL, "tensor %s: %llu bytes given, shape needs %llu", name,
                      (unsigned long long)nbytes, (unsigned long long)n);
    if (w->n == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 64;
        wentry_t *ne = sw_realloc(w->e, cap * sizeof(*ne));
        if (!ne)
            return -ENOMEM;
        w->e = ne;
        w->cap = cap;
    }
    e = &w->e[w->n];
    memset(e, 0, sizeof(*e));
    e->name = sw_strdup(name);
    if (!e->name)
        return -ENOMEM;
    e->dtype = dt;
    e->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        e->shape[i] = shape[i];
    e->data = data;
    e->nbytes = nbytes;
    w->n++;
    return 0;
}

int sw_st_writer_add_copy(sw_st_writer_t *w, const char *name, sw_st_dtype_t dt, int ndim,
                          const int64_t *shape, const void *data, uint64_t nbytes)
{
    void *copy = sw_malloc(nbytes);
    int r;

    if (!copy)
        return -ENOMEM;
    memcpy(copy, data, nbytes);
    r = sw_st_writer_add(w, name, dt, ndim, shape, copy, nbytes);
    if (r < 0) {
        sw_free(copy);
        return r;
    }
    w->e[w->n - 1].copy = copy;
    return 0;
}

int sw_st_writer_metadata(sw_st_writer_t *w, const char *key, const char *value)
{
    return json_object_set_new(w->meta, key, json_string(value)) == 0 ? 0 : -ENOMEM;
}

static int cmp_wentry(const void *a, const void *b)
{
    const wentry_t *x = a, *y = b;
    size_t sx = sw_st_dtype_size(x->dtype), sy = sw_st_dtype_size(y->dtype);

    if (sx != sy)
        return sx > sy ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int write_all(FILE *f, const void *p, size_t n)
{
    return fwrite(p, 1, n, f) == n ? 0 : -EIO;
}

int sw_st_writer_save(sw_st_writer_t *w, const char *path)
{
    json_t *hdr = json_object(), *shape, *ent;
    char *text = NULL, *tmp = NULL;
    uint64_t off = 0, hlen;
    FILE *f = NULL;
    int r = -ENOMEM;

    if (!hdr)
        return -ENOMEM;
    qsort(w->e, w->n, sizeof(*w->e), cmp_wentry);
    if (json_object_size(w->meta) && json_object_set(hdr, "__metadata__", w->meta) != 0)
        goto out;
    for (size_t i = 0; i < w->n; i++) {
        const wentry_t *e = &w->e[i];
        shape = json_array();
        ent = json_object();
        if (!shape || !ent) {
            json_decref(shape);
            json_decref(ent);
            goto out;
        }
        for (int d = 0; d < e->ndim; d++)
            json_array_append_new(shape, json_integer(e->shape[d]));
        json_object_set_new(ent, "dtype", json_string(sw_st_dtype_name(e->dtype)));
        json_object_set_new(ent, "shape", shape);
        json_object_set_new(ent, "data_offsets",
                            json_pack("[II]", (json_int_t)off, (json_int_t)(off + e->nbytes)));
        if (json_object_set_new(hdr, e->name, ent) != 0)
            goto out;
        off += e->nbytes;
    }
    text = json_dumps(hdr, JSON_COMPACT | JSON_SORT_KEYS);
    if (!text)
        goto out;
    hlen = strlen(text);
    tmp = sw_malloc(strlen(path) + 5);
    if (!tmp)
        goto out;
    sprintf(tmp, "%s.tmp", path);
    f = fopen(tmp, "wb");
    if (!f) {
        r = sw_err(-errno, "%s: cannot create: %s", tmp, strerror(errno));
        goto out;
    }
    {
        uint64_t padded = (hlen + 7) & ~(uint64_t)7;
        uint8_t le[8];
        for (int i = 0; i < 8; i++)
            le[i] = (uint8_t)(padded >> (8 * i));
        r = write_all(f, le, 8);
        if (r == 0)
            r = write_all(f, text, hlen);
        for (uint64_t i = hlen; r == 0 && i < padded; i++)
            r = fputc(' ', f) == ' ' ? 0 : -EIO;
    }
    for (size_t i = 0; r == 0 && i < w->n; i++)
        r = write_all(f, w->e[i].data, w->e[i].nbytes);
    if (fclose(f) != 0 && r == 0)
        r = -EIO;
    f = NULL;
    if (r < 0) {
        r = sw_err(r, "%s: write failed; check free space", tmp);
        unlink(tmp);
        goto out;
    }
    if (rename(tmp, path) != 0) {
        r = sw_err(-errno, "%s: cannot rename into place: %s", path, strerror(errno));
        unlink(tmp);
        goto out;
    }
    r = 0;
out:
    if (f)
        fclose(f);
    sw_free(text); /* jansson allocates through the seam (util/file.c) */
    sw_free(tmp);
    json_decref(hdr);
    return r;
}
