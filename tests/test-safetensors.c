/*
 * test-safetensors.c - the strict safetensors reader: valid files and directories read back
 * exactly, every malformed input is refused with a detail naming the file, shards open lazily,
 * and nothing leaks (sw_alloc_live() is back where it started after every close).
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pipeline/safetensors.h"
#include "test.h"
#include "util/error.h"
#include "util/file.h"

static char tmpdir[] = "/tmp/test-safetensors-XXXXXX";
static int nfile;

/* Writes `len` raw bytes to `path`; returns 0 or -1. */
static int write_raw(const char *path, const void *data, size_t len)
{
    FILE *fp = fopen(path, "wb");

    if (!fp)
        return -1;
    if (len && fwrite(data, 1, len, fp) != len) {
        fclose(fp);
        return -1;
    }
    return fclose(fp) == 0 ? 0 : -1;
}

/*
 * Builds a safetensors image: u64 LE length of `hdr`, `hdr`, then `dlen` bytes of `data`.
 * The caller frees *out with sw_free().
 */
static uint8_t *build_image(const char *hdr, const void *data, size_t dlen, size_t *out_len)
{
    size_t hl = strlen(hdr), n = 8 + hl + dlen;
    uint8_t *p = sw_malloc(n);

    if (!p)
        return NULL;
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    memcpy(p + 8, hdr, hl);
    if (dlen)
        memcpy(p + 8 + hl, data, dlen);
    *out_len = n;
    return p;
}

/* Writes a safetensors image into `path`. */
static int write_st(const char *path, const char *hdr, const void *data, size_t dlen)
{
    size_t n;
    uint8_t *p = build_image(hdr, data, dlen, &n);
    int r;

    if (!p)
        return -1;
    r = write_raw(path, p, n);
    sw_free(p);
    return r;
}

/* A fresh path in the temp dir; caller frees. */
static char *tmp_path(const char *name)
{
    char buf[64];

    if (!name) {
        snprintf(buf, sizeof(buf), "f%d.safetensors", nfile++);
        name = buf;
    }
    return sw_path_join(tmpdir, name);
}

/* A fresh empty directory inside the temp dir; caller frees. */
static char *tmp_subdir(void)
{
    char buf[64];
    char *p;

    snprintf(buf, sizeof(buf), "d%d", nfile++);
    p = sw_path_join(tmpdir, buf);
    if (p && mkdir(p, 0700) < 0) {
        sw_free(p);
        return NULL;
    }
    return p;
}

static int detail_has(const char *s)
{
    if (strstr(sw_err_detail(), s))
        return 1;
    fprintf(stderr, "  detail '%s' does not mention '%s'\n", sw_err_detail(), s);
    return 0;
}

/*
 * Opens the raw bytes as a file and checks that the open fails with `want`, names the file (and
 * `also`, if given), returns no object, and leaks nothing. Returns 1 if all of that held.
 */
static int bad_raw(const void *bytes, size_t len, int want, const char *also)
{
    long live = sw_alloc_live();
    char *path = tmp_path(NULL);
    sw_st_file_t *f = (sw_st_file_t *)1;
    int r, ok = 1;

    if (!path || write_raw(path, bytes, len) < 0)
        return 0;
    sw_err_clear();
    r = sw_st_open(path, &f);
    if (r != want) {
        fprintf(stderr, "  open returned %d (%s), wanted %d; detail: %s\n", r, sw_strerror(r),
                want, sw_err_detail());
        ok = 0;
    }
    if (f) {
        fprintf(stderr, "  *out not NULL after a failed open\n");
        ok = 0;
        if (r == 0)
            sw_st_close(f);
    }
    ok &= detail_has(path);
    if (also)
        ok &= detail_has(also);
    unlink(path);
    sw_free(path);
    if (sw_alloc_live() != live) {
        fprintf(stderr, "  %ld allocations leaked\n", sw_alloc_live() - live);
        ok = 0;
    }
    return ok;
}

/* As bad_raw(), for an image built from a header string and data bytes. */
static int bad(const char *hdr, const void *data, size_t dlen, int want, const char *also)
{
    size_t n;
    uint8_t *p = build_image(hdr, data, dlen, &n);
    int ok;

    if (!p)
        return 0;
    ok = bad_raw(p, n, want, also);
    sw_free(p);
    return ok;
}

static const char *valid_hdr =
    "{\"__metadata__\": {\"format\": \"pt\", \"note\": \"hello\"},"
    " \"w\": {\"dtype\": \"F32\", \"shape\": [2, 2], \"data_offsets\": [8, 24]},"
    " \"b\": {\"dtype\": \"BF16\", \"shape\": [3], \"data_offsets\": [24, 30]},"
    " \"a.scale\": {\"dtype\": \"I64\", \"shape\": [1], \"data_offsets\": [0, 8]},"
    " \"s\": {\"dtype\": \"U8\", \"shape\": [], \"data_offsets\": [30, 31]},"
    " \"f8\": {\"dtype\": \"F8_E4M3\", \"shape\": [2, 1], \"data_offsets\": [31, 33]},"
    " \"mask\": {\"dtype\": \"BOOL\", \"shape\": [1], \"data_offsets\": [33, 34]}}   ";

static void fill_valid_data(uint8_t *d)
{
    for (int i = 0; i < 34; i++)
        d[i] = (uint8_t)(i * 7 + 1);
}

/* Checks everything about the valid image; returns 1 if it reads back as written. */
static int check_valid(const sw_st_file_t *f, const uint8_t *data)
{
    static const char *order[] = {"a.scale", "w", "b", "s", "f8", "mask"};
    const sw_st_tensor_t *t;
    const uint8_t *base;

    if (sw_st_count(f) != 6)
        return 0;
    for (size_t i = 0; i < 6; i++)
        if (strcmp(sw_st_at(f, i)->name, order[i]) != 0)
            return 0;
    if (sw_st_at(f, 6) != NULL)
        return 0;
    base = sw_st_at(f, 0)->data; /* start of the data region */
    if (memcmp(base, data, 34) != 0)
        return 0;

    t = sw_st_find(f, "w");
    if (!t || t->dtype != SW_ST_F32 || t->ndim != 2 || t->shape[0] != 2 || t->shape[1] != 2 ||
        t->nbytes != 16 || (const uint8_t *)t->data != base + 8 || strcmp(t->name, "w") != 0)
        return 0;
    t = sw_st_find(f, "b");
    if (!t || t->dtype != SW_ST_BF16 || t->ndim != 1 || t->shape[0] != 3 || t->nbytes != 6 ||
        memcmp(t->data, data + 24, 6) != 0)
        return 0;
    t = sw_st_find(f, "s");
    if (!t || t->dtype != SW_ST_U8 || t->ndim != 0 || t->nbytes != 1 ||
        *(const uint8_t *)t->data != data[30])
        return 0;
    t = sw_st_find(f, "f8");
    if (!t || t->dtype != SW_ST_F8_E4M3 || t->ndim != 2 || t->nbytes != 2)
        return 0;
    t = sw_st_find(f, "mask");
    if (!t || t->dtype != SW_ST_BOOL || t->nbytes != 1)
        return 0;
    t = sw_st_find(f, "a.scale");
    if (!t || t->dtype != SW_ST_I64 || t->nbytes != 8 || memcmp(t->data, data, 8) != 0)
        return 0;
    if (sw_st_find(f, "missing") || sw_st_find(f, "") || sw_st_find(f, "__metadata__"))
        return 0;
    if (!sw_st_metadata(f, "format") || strcmp(sw_st_metadata(f, "format"), "pt") != 0)
        return 0;
    if (!sw_st_metadata(f, "note") || strcmp(sw_st_metadata(f, "note"), "hello") != 0)
        return 0;
    if (sw_st_metadata(f, "absent"))
        return 0;
    return 1;
}

static void test_valid_file(void)
{
    long live = sw_alloc_live();
    uint8_t data[34];
    sw_st_file_t *f;
    char *path = tmp_path("valid.safetensors");

    SW_CHECK(path);
    fill_valid_data(data);
    SW_CHECK(write_st(path, valid_hdr, data, sizeof(data)) == 0);
    SW_CHECK_OK(sw_st_open(path, &f));
    SW_CHECK(check_valid(f, data));
    sw_st_close(f);
    sw_free(path);
    SW_CHECK(sw_alloc_live() == live);
}

static void test_open_buffer(void)
{
    long live = sw_alloc_live();
    uint8_t data[34], *img;
    size_t n;
    sw_st_file_t *f;

    fill_valid_data(data);
    img = build_image(valid_hdr, data, sizeof(data), &n);
    SW_CHECK(img);
    SW_CHECK_OK(sw_st_open_buffer(img, n, "mem", &f));
    SW_CHECK(check_valid(f, data));
    /* data pointers lie inside the caller's buffer */
    for (size_t i = 0; i < sw_st_count(f); i++) {
        const sw_st_tensor_t *t = sw_st_at(f, i);
        SW_CHECK((const uint8_t *)t->data >= img + 8 &&
                 (const uint8_t *)t->data + t->nbytes <= img + n);
    }
    sw_st_close(f);
    /* a truncated buffer is refused, naming the buffer */
    SW_CHECK(sw_st_open_buffer(img, n - 1, "mem-truncated", &f) == SW_EFORMAT);
    SW_CHECK(f == NULL);
    SW_CHECK(detail_has("mem-truncated"));
    SW_CHECK(sw_st_open_buffer(NULL, 0, "nothing", &f) == SW_EFORMAT);
    SW_CHECK(detail_has("nothing"));
    sw_free(img);
    sw_st_close(NULL);
    SW_CHECK(sw_alloc_live() == live);
}

static void test_all_dtypes(void)
{
    static const char *names[] = {"BOOL", "U8",  "I8",  "I16", "U16", "F16",     "BF16",   "I32",
                                  "U32",  "F32", "F64", "I64", "U64", "F8_E4M3", "F8_E5M2"};
    long live = sw_alloc_live();
    uint8_t data[8 * 3] = {0};

    for (int dt = 0; dt < 15; dt++) {
        char hdr[256];
        size_t sz = sw_st_dtype_size((sw_st_dtype_t)dt);
        size_t n;
        uint8_t *img;
        sw_st_file_t *f;

        SW_CHECK(strcmp(sw_st_dtype_name((sw_st_dtype_t)dt), names[dt]) == 0);
        SW_CHECK(sz >= 1 && sz <= 8);
        snprintf(hdr, sizeof(hdr), "{\"x\":{\"dtype\":\"%s\",\"shape\":[3],\"data_offsets\":[0,%zu]}}",
                 names[dt], 3 * sz);
        img = build_image(hdr, data, 3 * sz, &n);
        SW_CHECK(img);
        SW_CHECK_OK(sw_st_open_buffer(img, n, "dt", &f));
        SW_CHECK(sw_st_count(f) == 1 && sw_st_at(f, 0)->dtype == (sw_st_dtype_t)dt);
        sw_st_close(f);
        sw_free(img);
    }
    SW_CHECK(sw_st_dtype_size((sw_st_dtype_t)99) == 0);
    SW_CHECK(strcmp(sw_st_dtype_name((sw_st_dtype_t)99), "?") == 0);
    SW_CHECK(sw_alloc_live() == live);
}

static void test_empty_tensors(void)
{
    long live = sw_alloc_live();
    const char *hdr =
        "{\"e\": {\"dtype\": \"F16\", \"shape\": [0, 4], \"data_offsets\": [2, 2]},"
        " \"x\": {\"dtype\": \"F16\", \"shape\": [2], \"data_offsets\": [0, 4]},"
        " \"z\": {\"dtype\": \"F32\", \"shape\": [7, 0], \"data_offsets\": [4, 4]}}";
    uint8_t data[4] = {1, 2, 3, 4};
    sw_st_file_t *f;
    char *path = tmp_path(NULL);
    const sw_st_tensor_t *t;

    SW_CHECK(path && write_st(path, hdr, data, 4) == 0);
    SW_CHECK_OK(sw_st_open(path, &f));
    SW_CHECK(sw_st_count(f) == 3);
    t = sw_st_find(f, "e");
    SW_CHECK(t && t->nbytes == 0 && t->ndim == 2 && t->shape[0] == 0 && t->shape[1] == 4);
    t = sw_st_find(f, "z");
    SW_CHECK(t && t->nbytes == 0);
    SW_CHECK(strcmp(sw_st_at(f, 0)->name, "x") == 0);
    sw_st_close(f);
    sw_free(path);

    /* a header with no tensors at all, and no data */
    path = tmp_path(NULL);
    SW_CHECK(path && write_st(path, "{}", NULL, 0) == 0);
    SW_CHECK_OK(sw_st_open(path, &f));
    SW_CHECK(sw_st_count(f) == 0 && sw_st_at(f, 0) == NULL && sw_st_find(f, "x") == NULL);
    SW_CHECK(sw_st_metadata(f, "format") == NULL);
    sw_st_close(f);
    sw_free(path);
    SW_CHECK(sw_alloc_live() == live);
}

static void test_bad_sizes(void)
{
    uint8_t raw[16] = {0};
    uint8_t d[64] = {0};

    /* shorter than the 8-byte length */
    SW_CHECK(bad_raw(raw, 0, SW_EFORMAT, "too short"));
    SW_CHECK(bad_raw(raw, 7, SW_EFORMAT, "too short"));
    /* N beyond the file */
    raw[0] = 9;
    memcpy(raw + 8, "{}", 2);
    SW_CHECK(bad_raw(raw, 10, SW_EFORMAT, "past the end"));
    /* N larger than the limit (and larger than any size_t arithmetic would like) */
    memset(raw, 0xff, 8);
    SW_CHECK(bad_raw(raw, 16, SW_EFORMAT, "limit"));
    raw[0] = 1, memset(raw + 1, 0, 7), raw[3] = 0x40; /* 1 GiB + 1 */
    SW_CHECK(bad_raw(raw, 16, SW_EFORMAT, "limit"));
    (void)d;
}

static void test_bad_json(void)
{
    uint8_t d[16] = {0};

    SW_CHECK(bad("{\"x\": {", d, 0, SW_EFORMAT, "invalid JSON"));
    SW_CHECK(bad("", d, 0, SW_EFORMAT, "invalid JSON"));
    SW_CHECK(bad("{} trailing", d, 0, SW_EFORMAT, "invalid JSON"));
    SW_CHECK(bad("[1, 2]", d, 0, SW_EFORMAT, "not a JSON object"));
    SW_CHECK(bad("{\"x\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [0, 1]},"
                 " \"x\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [1, 2]}}",
                 d, 2, SW_EFORMAT, "duplicate"));
    SW_CHECK(bad("{\"x\": {\"dtype\": \"U8\", \"dtype\": \"U8\", \"shape\": [1],"
                 " \"data_offsets\": [0, 1]}}", d, 1, SW_EFORMAT, "duplicate"));
    SW_CHECK(bad("{\"x\": 5}", d, 0, SW_EFORMAT, "'x'"));
}

static void test_bad_entries(void)
{
    uint8_t d[64] = {0};

    SW_CHECK(bad("{\"x\": {\"dtype\": \"Q4\", \"shape\": [1], \"data_offsets\": [0, 1]}}", d, 1,
                 SW_EUNSUPPORTED, "Q4"));
    SW_CHECK(bad("{\"x\": {\"dtype\": 4, \"shape\": [1], \"data_offsets\": [0, 1]}}", d, 1,
                 SW_EFORMAT, "dtype"));
    SW_CHECK(bad("{\"x\": {\"dtype\": \"U8\", \"shape\": [-1], \"data_offsets\": [0, 1]}}", d, 1,
                 SW_EFORMAT, "shape"));
    SW_CHECK(bad("{\"x\": {\"dtype\": \"U8\", \"shape\": [1.0], \"data_offsets\": [0, 1]}}", d, 1,
                 SW_EFORMAT, "shape"));
    SW_CHECK(bad("{\"x\": {\"dtype\": \"U8\", \"shape\": [\"1\"], \"data_offsets\": [0, 1]}}", d,
                 1, SW_EFORMAT, "shape"));
    SW_CHECK(bad("{\"x\": {\"dtype\": \"U8\", \"shape\": 1, \"data_offsets\": [0, 1]}}", d, 1,
                 SW_EFORMAT, "shape"));
    SW_CHECK(bad("{\"x\": {\"dtype\": \"U8\", \"shape\": [1,1,1,1,1,1,1,1,1],"
                 " \"data_offsets\": [0, 1]}}", d, 1, SW_EFORMAT, "dimensions"));
    /* 2^32 * 2^32 overflows the element count; 2^62 * 8 bytes overflows the byte count */
    SW_CHECK(bad("{\"x\": {\"dtype\": \"U8\", \"shape\": [4294967296, 4294967296],"
                 " \"data_offsets\": [0, 1]}}", d, 1, SW_EFORMAT, "overflow"));
    SW_CHECK(bad("{\"x\": {\"dtype\": \"F64\", \"shape\": [4611686018427387904],"
                 " \"data_offsets\": [0, 1]}}", d, 1, SW_EFORMAT, "overflow"));
    /* an integer beyond int64 is refused by the JSON parser */
    SW_CHECK(bad("{\"x\": {\"dtype\": \"U8\", \"shape\": [99999999999999999999],"
                 " \"data_offsets\": [0, 1]}}", d, 1, SW_EFORMAT, NULL));
    SW_CHECK(bad("{\"x\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 4]}}", d, 8,
                 SW_EFORMAT, "need 8 bytes"));
    SW_CHECK(bad("{\"x\": {\"dtype\": \"U8\", \"shape\": [4], \"data_offsets\": [0, 4]}}", d, 3,
                 SW_EFORMAT, "truncated"));
    SW_CHECK(bad("{\"x\": {\"dtype\": \"U8\", \"shape\": [0], \"data_offsets\": [5, 5]}}", d, 3,
                 SW_EFORMAT, "data region"));
    SW_CHECK(bad("{\"x\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [2, 1]}}", d, 3,
                 SW_EFORMAT, "after end"));
    SW_CHECK(bad("{\"x\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [-1, 0]}}", d, 3,
                 SW_EFORMAT, "data_offsets"));
    SW_CHECK(bad("{\"x\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [0, 1.0]}}", d, 3,
                 SW_EFORMAT, "data_offsets"));
    SW_CHECK(bad("{\"x\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [0, 1, 2]}}", d,
                 3, SW_EFORMAT, "data_offsets"));
    SW_CHECK(bad("{\"x\": {\"dtype\": \"U8\", \"shape\": [1]}}", d, 3, SW_EFORMAT,
                 "data_offsets"));
    SW_CHECK(bad("{\"x\": {\"shape\": [1], \"data_offsets\": [0, 1]}}", d, 3, SW_EFORMAT,
                 "dtype"));
    SW_CHECK(bad("{\"x\": {\"dtype\": \"U8\", \"data_offsets\": [0, 1]}}", d, 3, SW_EFORMAT,
                 "shape"));
    SW_CHECK(bad("{\"x\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [0, 1],"
                 " \"extra\": 1}}", d, 3, SW_EFORMAT, "extra"));
    SW_CHECK(bad("{\"\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [0, 1]}}", d, 3,
                 SW_EFORMAT, "empty tensor name"));
}

static void test_bad_long_name(void)
{
    char *hdr = sw_malloc(2048 + 128);
    uint8_t d[1] = {0};
    size_t n = 0;
    int ok;

    SW_CHECK(hdr);
    n += (size_t)sprintf(hdr, "{\"");
    memset(hdr + n, 'a', 1025);
    n += 1025;
    sprintf(hdr + n, "\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [0, 1]}}");
    ok = bad(hdr, d, 1, SW_EFORMAT, "1025 bytes");
    sw_free(hdr);
    SW_CHECK(ok);
}

static void test_bad_overlap(void)
{
    uint8_t d[16] = {0};

    SW_CHECK(bad("{\"a\": {\"dtype\": \"U8\", \"shape\": [4], \"data_offsets\": [0, 4]},"
                 " \"b\": {\"dtype\": \"U8\", \"shape\": [4], \"data_offsets\": [3, 7]}}", d, 8,
                 SW_EFORMAT, "overlap"));
    /* same range twice */
    SW_CHECK(bad("{\"a\": {\"dtype\": \"U8\", \"shape\": [4], \"data_offsets\": [0, 4]},"
                 " \"b\": {\"dtype\": \"I32\", \"shape\": [1], \"data_offsets\": [0, 4]}}", d, 8,
                 SW_EFORMAT, "overlap"));
    /* one inside another, listed so that a begin-only neighbour check would miss it */
    SW_CHECK(bad("{\"a\": {\"dtype\": \"U8\", \"shape\": [10], \"data_offsets\": [0, 10]},"
                 " \"b\": {\"dtype\": \"U8\", \"shape\": [2], \"data_offsets\": [2, 4]},"
                 " \"c\": {\"dtype\": \"U8\", \"shape\": [2], \"data_offsets\": [6, 8]}}", d, 10,
                 SW_EFORMAT, "'a'"));
    /* adjacent and gapped ranges are fine, and so is an empty range inside another */
    {
        const char *hdr =
            "{\"a\": {\"dtype\": \"U8\", \"shape\": [4], \"data_offsets\": [0, 4]},"
            " \"b\": {\"dtype\": \"U8\", \"shape\": [4], \"data_offsets\": [4, 8]},"
            " \"c\": {\"dtype\": \"U8\", \"shape\": [0], \"data_offsets\": [2, 2]},"
            " \"d\": {\"dtype\": \"U8\", \"shape\": [2], \"data_offsets\": [10, 12]}}";
        size_t n;
        uint8_t *img = build_image(hdr, d, 16, &n);
        sw_st_file_t *f;
        SW_CHECK(img);
        SW_CHECK_OK(sw_st_open_buffer(img, n, "ok", &f));
        SW_CHECK(sw_st_count(f) == 4);
        sw_st_close(f);
        sw_free(img);
    }
}

static void test_bad_metadata(void)
{
    uint8_t d[4] = {0};

    SW_CHECK(bad("{\"__metadata__\": [\"pt\"]}", d, 0, SW_EFORMAT, "__metadata__"));
    SW_CHECK(bad("{\"__metadata__\": \"pt\"}", d, 0, SW_EFORMAT, "__metadata__"));
    SW_CHECK(bad("{\"__metadata__\": {\"format\": 1}}", d, 0, SW_EFORMAT, "format"));
    SW_CHECK(bad("{\"__metadata__\": {\"a\": \"b\", \"c\": {}}}", d, 0, SW_EFORMAT, "'c'"));
}

/* Every allocation failure during an open is reported and leaks nothing. */
static void test_alloc_failures(void)
{
    long live = sw_alloc_live();
    uint8_t data[34], *img;
    size_t n;
    sw_st_file_t *f;
    int r = -1;

    fill_valid_data(data);
    img = build_image(valid_hdr, data, sizeof(data), &n);
    SW_CHECK(img);
    for (long k = 0; k < 2000 && r != 0; k++) {
        sw_alloc_fail_after(k);
        r = sw_st_open_buffer(img, n, "mem", &f);
        sw_alloc_fail_after(-1);
        if (r != 0) {
            SW_CHECKF(r == -ENOMEM, "k=%ld r=%d %s", k, r, sw_err_detail());
            SW_CHECK(f == NULL);
            SW_CHECK(sw_alloc_live() == live + 1);
        }
    }
    SW_CHECK(r == 0);
    SW_CHECK(check_valid(f, data));
    sw_st_close(f);
    sw_free(img);
    SW_CHECK(sw_alloc_live() == live);
}

/* ---- directories ---- */

static int write_in(const char *dir, const char *name, const char *hdr, const void *d, size_t n)
{
    char *p = sw_path_join(dir, name);
    int r = p ? write_st(p, hdr, d, n) : -1;

    sw_free(p);
    return r;
}

static int write_text(const char *dir, const char *name, const char *text)
{
    char *p = sw_path_join(dir, name);
    int r = p ? write_raw(p, text, strlen(text)) : -1;

    sw_free(p);
    return r;
}

static const char *shard1_hdr =
    "{\"layers.0.w\": {\"dtype\": \"F16\", \"shape\": [2], \"data_offsets\": [0, 4]},"
    " \"embed\": {\"dtype\": \"U8\", \"shape\": [2], \"data_offsets\": [4, 6]}}";
static const char *shard2_hdr =
    "{\"layers.1.w\": {\"dtype\": \"F16\", \"shape\": [2], \"data_offsets\": [0, 4]}}";
static const char *good_index =
    "{\"metadata\": {\"total_size\": 10},"
    " \"weight_map\": {\"layers.0.w\": \"model-00001-of-00002.safetensors\","
    "                  \"embed\": \"model-00001-of-00002.safetensors\","
    "                  \"layers.1.w\": \"model-00002-of-00002.safetensors\"}}";

static void test_dir_sharded(void)
{
    long live = sw_alloc_live();
    uint8_t d1[6] = {1, 2, 3, 4, 5, 6}, d2[4] = {9, 8, 7, 6};
    char *dir = tmp_subdir();
    sw_st_dir_t *d;
    const sw_st_tensor_t *t;

    SW_CHECK(dir);
    SW_CHECK(write_in(dir, "model-00001-of-00002.safetensors", shard1_hdr, d1, 6) == 0);
    SW_CHECK(write_in(dir, "model-00002-of-00002.safetensors", shard2_hdr, d2, 4) == 0);
    SW_CHECK(write_text(dir, "model.safetensors.index.json", good_index) == 0);
    SW_CHECK_OK(sw_st_dir_open(dir, &d));
    SW_CHECK(sw_st_dir_count(d) == 3 && sw_st_dir_shards(d) == 2);
    SW_CHECK(strcmp(sw_st_dir_name(d, 0), "embed") == 0);
    SW_CHECK(strcmp(sw_st_dir_name(d, 1), "layers.0.w") == 0);
    SW_CHECK(strcmp(sw_st_dir_name(d, 2), "layers.1.w") == 0);
    SW_CHECK(sw_st_dir_name(d, 3) == NULL);
    SW_CHECK(sw_st_dir_shards_open(d) == 0);
    SW_CHECK_OK(sw_st_dir_find(d, "layers.0.w", &t));
    SW_CHECK(t && t->dtype == SW_ST_F16 && t->nbytes == 4 && memcmp(t->data, d1, 4) == 0);
    SW_CHECK(sw_st_dir_shards_open(d) == 1);
    SW_CHECK_OK(sw_st_dir_find(d, "embed", &t));
    SW_CHECK(t && memcmp(t->data, d1 + 4, 2) == 0);
    SW_CHECK(sw_st_dir_shards_open(d) == 1);
    SW_CHECK_OK(sw_st_dir_find(d, "layers.1.w", &t));
    SW_CHECK(t && memcmp(t->data, d2, 4) == 0);
    SW_CHECK(sw_st_dir_shards_open(d) == 2);
    SW_CHECK(sw_st_dir_find(d, "nope", &t) == -ENOENT && t == NULL);
    SW_CHECK(detail_has(dir) && detail_has("nope"));
    sw_st_dir_close(d);
    sw_free(dir);
    SW_CHECK(sw_alloc_live() == live);
}

static void test_dir_single(void)
{
    long live = sw_alloc_live();
    uint8_t data[34];
    char *dir = tmp_subdir();
    sw_st_dir_t *d;
    const sw_st_tensor_t *t;

    SW_CHECK(dir);
    fill_valid_data(data);
    SW_CHECK(write_in(dir, "model.safetensors", valid_hdr, data, sizeof(data)) == 0);
    SW_CHECK_OK(sw_st_dir_open(dir, &d));
    SW_CHECK(sw_st_dir_count(d) == 6 && sw_st_dir_shards(d) == 1);
    SW_CHECK(strcmp(sw_st_dir_name(d, 0), "a.scale") == 0);
    SW_CHECK(strcmp(sw_st_dir_name(d, 5), "w") == 0);
    SW_CHECK_OK(sw_st_dir_find(d, "b", &t));
    SW_CHECK(t->nbytes == 6 && memcmp(t->data, data + 24, 6) == 0);
    SW_CHECK(sw_st_dir_find(d, "zz", &t) == -ENOENT);
    sw_st_dir_close(d);
    sw_free(dir);
    SW_CHECK(sw_alloc_live() == live);
}

/* Opens `dir` as a checkpoint, expecting failure `want` whose detail names `s1` and `s2`. */
static int bad_dir(const char *dir, int want, const char *s1, const char *s2)
{
    long live = sw_alloc_live();
    sw_st_dir_t *d = (sw_st_dir_t *)1;
    int r = sw_st_dir_open(dir, &d), ok = 1;

    if (r != want) {
        fprintf(stderr, "  dir open returned %d (%s), wanted %d; detail: %s\n", r,
                sw_strerror(r), want, sw_err_detail());
        ok = 0;
    }
    if (r == 0)
        sw_st_dir_close(d);
    else if (d)
        ok = 0;
    ok &= detail_has(s1);
    if (s2)
        ok &= detail_has(s2);
    return ok && sw_alloc_live() == live;
}

/* A directory with only the given index text (and shard 1 and 2 written). */
static char *dir_with_index(const char *index)
{
    uint8_t d1[6] = {0}, d2[4] = {0};
    char *dir = tmp_subdir();

    if (!dir)
        return NULL;
    if (write_in(dir, "model-00001-of-00002.safetensors", shard1_hdr, d1, 6) < 0 ||
        write_in(dir, "model-00002-of-00002.safetensors", shard2_hdr, d2, 4) < 0 ||
        write_text(dir, "model.safetensors.index.json", index) < 0) {
        sw_free(dir);
        return NULL;
    }
    return dir;
}

static void test_dir_bad_index(void)
{
    static const struct {
        const char *index, *also;
    } cases[] = {
        {"{\"weight_map\": {\"a\": \"../x.safetensors\"}}", "../x.safetensors"},
        {"{\"weight_map\": {\"a\": \"sub/x.safetensors\"}}", "sub/x.safetensors"},
        {"{\"weight_map\": {\"a\": \"..\"}}", "'..'"},
        {"{\"weight_map\": {\"a\": \".safetensors\"}}", "plain"},
        {"{\"weight_map\": {\"a\": \"x.bin\"}}", "x.bin"},
        {"{\"weight_map\": {\"a\": \"\"}}", "plain"},
        {"{\"weight_map\": {\"a\": 3}}", "not a string"},
        {"{\"weight_map\": {\"\": \"x.safetensors\"}}", "empty tensor name"},
        {"{\"metadata\": {}}", "weight_map"},
        {"{\"weight_map\": []}", "weight_map"},
        {"{\"weight_map\": {}}", "empty"},
        {"{\"weight_map\": {\"a\": \"x.safetensors\"}, \"metadata\": 1}", "metadata"},
        {"[]", "not a JSON object"},
        {"{\"weight_map\": {\"a\": \"x.safetensors\", \"a\": \"x.safetensors\"}}", "duplicate"},
        {"{\"weight_map\": ", "invalid JSON"},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *dir = dir_with_index(cases[i].index);
        int ok;
        SW_CHECK(dir);
        ok = bad_dir(dir, SW_EFORMAT, dir, cases[i].also);
        sw_free(dir);
        SW_CHECKF(ok, "case %zu: %s", i, cases[i].index);
    }
}

static void test_dir_missing_tensor_and_shard(void)
{
    long live = sw_alloc_live();
    const char *index =
        "{\"weight_map\": {\"layers.0.w\": \"model-00001-of-00002.safetensors\","
        "                  \"ghost\": \"model-00001-of-00002.safetensors\","
        "                  \"lost\": \"model-00003-of-00003.safetensors\","
        "                  \"layers.1.w\": \"model-00002-of-00002.safetensors\"}}";
    char *dir = dir_with_index(index);
    sw_st_dir_t *d;
    const sw_st_tensor_t *t;

    SW_CHECK(dir);
    SW_CHECK_OK(sw_st_dir_open(dir, &d));
    SW_CHECK(sw_st_dir_shards(d) == 3 && sw_st_dir_count(d) == 4);
    SW_CHECK(sw_st_dir_find(d, "ghost", &t) == SW_EFORMAT && t == NULL);
    SW_CHECK(detail_has("ghost") && detail_has("model-00001-of-00002.safetensors") &&
             detail_has(dir));
    SW_CHECK(sw_st_dir_find(d, "lost", &t) == -ENOENT);
    SW_CHECK(detail_has("model-00003-of-00003.safetensors") && detail_has(dir));
    /* the other tensors are still reachable */
    SW_CHECK_OK(sw_st_dir_find(d, "layers.1.w", &t));
    sw_st_dir_close(d);
    sw_free(dir);
    SW_CHECK(sw_alloc_live() == live);
}

static void test_dir_bad_shard(void)
{
    long live = sw_alloc_live();
    const char *index = "{\"weight_map\": {\"a\": \"broken.safetensors\"}}";
    char *dir = dir_with_index(index);
    sw_st_dir_t *d;
    const sw_st_tensor_t *t;

    SW_CHECK(dir);
    SW_CHECK(write_in(dir, "broken.safetensors", "{\"a\": 1}", NULL, 0) == 0);
    SW_CHECK_OK(sw_st_dir_open(dir, &d));
    SW_CHECK(sw_st_dir_find(d, "a", &t) == SW_EFORMAT);
    SW_CHECK(detail_has("broken.safetensors"));
    SW_CHECK(sw_st_dir_shards_open(d) == 0);
    sw_st_dir_close(d);
    sw_free(dir);
    SW_CHECK(sw_alloc_live() == live);
}

static void test_dir_none(void)
{
    char *dir = tmp_subdir(), *missing;
    int ok;

    SW_CHECK(dir);
    SW_CHECK(write_text(dir, "pytorch_model.bin", "x") == 0);
    ok = bad_dir(dir, -ENOENT, dir, "model.safetensors.index.json");
    SW_CHECK(ok);
    missing = sw_path_join(dir, "nope");
    ok = bad_dir(missing, -ENOENT, missing, NULL);
    sw_free(missing);
    SW_CHECK(ok);
    /* a broken single file is reported with its own name */
    SW_CHECK(write_text(dir, "model.safetensors", "1234") == 0);
    missing = sw_path_join(dir, "model.safetensors");
    ok = bad_dir(dir, SW_EFORMAT, missing, "too short");
    sw_free(missing);
    sw_free(dir);
    SW_CHECK(ok);
}

static void cleanup(void)
{
    char cmd[128];

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", tmpdir);
}

/* The writer's output reads back identically, aligned, contiguous, with metadata. */
static void test_writer_roundtrip(void)
{
    long live = sw_alloc_live();
    sw_st_writer_t *w;
    sw_st_file_t *f;
    char path[256];
    float a[5] = { 1, 2, 3, 4, 5 };
    uint16_t b[3] = { 7, 8, 9 };
    uint8_t c[1] = { 42 };
    int64_t sa[2] = { 1, 5 }, sb[1] = { 3 };

    snprintf(path, sizeof(path), "%s/written.safetensors", tmpdir);
    SW_CHECK_OK(sw_st_writer_new(&w));
    SW_CHECK_OK(sw_st_writer_add(w, "b16", SW_ST_BF16, 1, sb, b, sizeof(b)));
    SW_CHECK_OK(sw_st_writer_add(w, "u8", SW_ST_U8, 0, NULL, c, 1));
    SW_CHECK_OK(sw_st_writer_add(w, "f32", SW_ST_F32, 2, sa, a, sizeof(a)));
    SW_CHECK(sw_st_writer_add(w, "bad", SW_ST_F32, 2, sa, a, 4) == -EINVAL);
    SW_CHECK_OK(sw_st_writer_metadata(w, "format", "pt"));
    SW_CHECK_OK(sw_st_writer_save(w, path));
    sw_st_writer_free(w);
    SW_CHECK_OK(sw_st_open(path, &f));
    SW_CHECK(sw_st_count(f) == 3);
    const sw_st_tensor_t *t0 = sw_st_at(f, 0), *t1 = sw_st_at(f, 1), *t2 = sw_st_at(f, 2);
    /* widest first: f32, bf16, u8; each aligned to its element size */
    SW_CHECK(strcmp(t0->name, "f32") == 0 && t0->ndim == 2 && t0->shape[1] == 5);
    SW_CHECK(strcmp(t1->name, "b16") == 0 && strcmp(t2->name, "u8") == 0 && t2->ndim == 0);
    SW_CHECK((uintptr_t)t0->data % 4 == 0 && (uintptr_t)t1->data % 2 == 0);
    SW_CHECK(memcmp(t0->data, a, sizeof(a)) == 0 && memcmp(t1->data, b, sizeof(b)) == 0);
    SW_CHECK(*(const uint8_t *)t2->data == 42);
    SW_CHECK((const uint8_t *)t1->data == (const uint8_t *)t0->data + sizeof(a));
    SW_CHECK(sw_st_metadata(f, "format") && strcmp(sw_st_metadata(f, "format"), "pt") == 0);
    sw_st_close(f);
    SW_CHECK(sw_alloc_live() == live);
}

int main(void)
{
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    SW_RUN(test_valid_file);
    SW_RUN(test_open_buffer);
    SW_RUN(test_all_dtypes);
    SW_RUN(test_empty_tensors);
    SW_RUN(test_bad_sizes);
    SW_RUN(test_bad_json);
    SW_RUN(test_bad_entries);
    SW_RUN(test_bad_long_name);
    SW_RUN(test_bad_overlap);
    SW_RUN(test_bad_metadata);
    SW_RUN(test_alloc_failures);
    SW_RUN(test_dir_sharded);
    SW_RUN(test_dir_single);
    SW_RUN(test_dir_bad_index);
    SW_RUN(test_dir_missing_tensor_and_shard);
    SW_RUN(test_dir_bad_shard);
    SW_RUN(test_dir_none);
    SW_RUN(test_writer_roundtrip);
    cleanup();
    return sw_test_summary("test-safetensors");
}
