/*
 * safetensors.h - strict, mmap-based reader for Hugging Face safetensors checkpoints.
 *
 * File layout: u64 little-endian header length N, N bytes of JSON header
 * {"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, ...,
 *  "__metadata__": {"k": "v"}}, then the data region; offsets are relative to its start.
 *
 * Everything read from the file is checked before use: N is bounded (SW_ST_MAX_HEADER) and inside
 * the file, the JSON is well-formed with no duplicate keys, every dtype is known, shape entries are
 * non-negative and their product cannot overflow, shape x dtype size == end - begin, every range
 * lies inside the data region, and no two ranges overlap. Any failure returns SW_EFORMAT (or
 * SW_EUNSUPPORTED for a well-formed but unknown dtype) with a detail that names the file and the
 * problem (see util/error.h); nothing crashes on hostile input.
 *
 * Tensor data is a pointer into the read-only mapping: it is valid until the file is closed,
 * and it is not necessarily aligned to the element size (callers that need alignment copy).
 * Pages are touched only for the tensors a caller actually reads.
 */
#ifndef SW_PIPELINE_SAFETENSORS_H
#define SW_PIPELINE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define SW_ST_MAX_HEADER (100u << 20) /* same bound as the safetensors reference implementation */
#define SW_ST_MAX_DIMS 8

typedef enum {
    SW_ST_BOOL, SW_ST_U8, SW_ST_I8, SW_ST_I16, SW_ST_U16, SW_ST_F16, SW_ST_BF16, SW_ST_I32,
    SW_ST_U32, SW_ST_F32, SW_ST_F64, SW_ST_I64, SW_ST_U64, SW_ST_F8_E4M3, SW_ST_F8_E5M2,
} sw_st_dtype_t;

typedef struct {
    const char *name;           /* owned by the file object */
    sw_st_dtype_t dtype;
    int ndim;
    int64_t shape[SW_ST_MAX_DIMS];
    const void *data;           /* into the mapping; nbytes long */
    uint64_t nbytes;
} sw_st_tensor_t;

/* ---- one file ---- */

typedef struct sw_st_file sw_st_file_t;

/* Maps and validates `path`. On success *out is owned by the caller (sw_st_close). */
int sw_st_open(const char *path, sw_st_file_t **out);
/* Same checks on an in-memory image (for fuzzing and tests); `data` must outlive the object. */
int sw_st_open_buffer(const void *data, size_t size, const char *name, sw_st_file_t **out);
void sw_st_close(sw_st_file_t *f);
size_t sw_st_count(const sw_st_file_t *f);
/* i-th tensor in file order of data offsets. */
const sw_st_tensor_t *sw_st_at(const sw_st_file_t *f, size_t i);
/* NULL if absent. */
const sw_st_tensor_t *sw_st_find(const sw_st_file_t *f, const char *name);
/* Value of a __metadata__ entry, or NULL. */
const char *sw_st_metadata(const sw_st_file_t *f, const char *key);

/* ---- a checkpoint directory ---- */

/*
 * A model directory holds either `model.safetensors`, or `model.safetensors.index.json` whose
 * "weight_map" maps tensor names to shard file names in the same directory. Shards are opened
 * (and validated) lazily, the first time one of their tensors is asked for, so a server that
 * loads only its blocks never maps the other shards. The index itself is checked: bounded size,
 * well-formed, shard names are plain file names (no '/' or ".."), and a tensor found in a shard
 * must be the one the index promised.
 */
typedef struct sw_st_dir sw_st_dir_t;

int sw_st_dir_open(const char *dir, sw_st_dir_t **out);
void sw_st_dir_close(sw_st_dir_t *d);
/*
 * Finds tensor `name`, opening its shard if needed. Returns 0 and sets *out (valid until
 * sw_st_dir_close), -ENOENT with a detail if no such tensor, or the shard's open error.
 */
int sw_st_dir_find(sw_st_dir_t *d, const char *name, const sw_st_tensor_t **out);
/* Number of tensor names the directory knows (index entries, or the single file's tensors). */
size_t sw_st_dir_count(const sw_st_dir_t *d);
/* i-th tensor name, in sorted order. */
const char *sw_st_dir_name(const sw_st_dir_t *d, size_t i);
/* Number of shard files (1 without an index). */
size_t sw_st_dir_shards(const sw_st_dir_t *d);
/* Number of shard files opened (mapped and validated) so far; for tests of lazy opening. */
size_t sw_st_dir_shards_open(const sw_st_dir_t *d);

size_t sw_st_dtype_size(sw_st_dtype_t dt);
const char *sw_st_dtype_name(sw_st_dtype_t dt);


/* ---- writing ---- */

/*
 * Collects tensors, then writes one safetensors file. The header is padded with spaces to a
 * multiple of 8 bytes and tensors are laid out contiguously (no gaps, as the reference loader
 * requires), widest dtype first and by name within a dtype, so every tensor is aligned to its
 * element size in the file. The file is written to "<path>.tmp" and renamed into place.
 */
typedef struct sw_st_writer sw_st_writer_t;

int sw_st_writer_new(sw_st_writer_t **out);
/* Adds a tensor; `data` (nbytes) is borrowed until sw_st_writer_save returns. The name is copied. */
int sw_st_writer_add(sw_st_writer_t *w, const char *name, sw_st_dtype_t dt, int ndim,
                     const int64_t *shape, const void *data, uint64_t nbytes);
/* Same, but the writer keeps its own copy of the data (for small, short-lived tensors). */
int sw_st_writer_add_copy(sw_st_writer_t *w, const char *name, sw_st_dtype_t dt, int ndim,
                          const int64_t *shape, const void *data, uint64_t nbytes);
/* Adds a __metadata__ string entry (copied). */
int sw_st_writer_metadata(sw_st_writer_t *w, const char *key, const char *value);
int sw_st_writer_save(sw_st_writer_t *w, const char *path);
void sw_st_writer_free(sw_st_writer_t *w);

#endif
