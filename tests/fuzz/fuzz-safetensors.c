/*
 * fuzz-safetensors.c - libFuzzer target for the safetensors reader: any input either opens, and
 * then every tensor lies inside the input, can be read byte by byte, and is found again by name;
 * or it fails with an error code and a detail. Invariant violations trap so the fuzzer reports them.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "pipeline/safetensors.h"
#include "util/error.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile unsigned sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sw_st_file_t *f;
    unsigned sum = 0;
    uint64_t prev_begin = 0;
    int r;

    r = sw_st_open_buffer(data, size, "fuzz-input", &f);
    if (r < 0) {
        if (f != NULL || strstr(sw_err_detail(), "fuzz-input") == NULL)
            __builtin_trap();
        return 0;
    }
    for (size_t i = 0; i < sw_st_count(f); i++) {
        const sw_st_tensor_t *t = sw_st_at(f, i);
        const uint8_t *p = t->data;
        uint64_t n = sw_st_dtype_size(t->dtype);

        /* the tensor lies inside the data region, in offset order */
        if (p < data + 8 || p > data + size || t->nbytes > (uint64_t)(data + size - p))
            __builtin_trap();
        if ((uint64_t)(p - data) < prev_begin)
            __builtin_trap();
        prev_begin = (uint64_t)(p - data);
        /* shape x dtype size == nbytes */
        if (t->ndim < 0 || t->ndim > SW_ST_MAX_DIMS)
            __builtin_trap();
        for (int d = 0; d < t->ndim; d++)
            n *= (uint64_t)t->shape[d];
        if (n != t->nbytes)
            __builtin_trap();
        for (uint64_t j = 0; j < t->nbytes; j++)
            sum += p[j];
        if (sw_st_find(f, t->name) != t || t->name[0] == '\0')
            __builtin_trap();
        (void)sw_st_metadata(f, t->name);
    }
    (void)sw_st_metadata(f, "format");
    sink = sum;
    sw_st_close(f);
    return 0;
}
