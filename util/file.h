/*
 * file.h - file helpers: bounded whole-file reads, read-only mappings, and JSON loading.
 */
#ifndef SW_UTIL_FILE_H
#define SW_UTIL_FILE_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

/*
 * Reads the whole file at `path` into a NUL-terminated buffer the caller frees with sw_free().
 * Fails with SW_ELIMIT (detail names the file) if it is larger than `max` bytes.
 */
int sw_file_read(const char *path, size_t max, char **out, size_t *out_len);

/* A read-only private mapping of a whole file. An empty file maps to data == NULL, size == 0. */
typedef struct {
    const uint8_t *data;
    size_t size;
} sw_mmap_t;

int sw_file_map(const char *path, sw_mmap_t *out);
void sw_file_unmap(sw_mmap_t *m);

/*
 * Parses JSON text (not NUL-terminated; `len` bytes) strictly: duplicate keys are refused.
 * On failure returns SW_EFORMAT with a detail naming `what` (usually the file) and the line/column.
 * The caller owns *out (json_decref).
 */
int sw_json_parse(const char *text, size_t len, const char *what, json_t **out);

/* sw_file_read() + sw_json_parse(), bounded by `max` bytes. */
int sw_json_load(const char *path, size_t max, json_t **out);

/* Joins dir and name with one '/'; caller frees. NULL on allocation failure. */
char *sw_path_join(const char *dir, const char *name);

#endif
