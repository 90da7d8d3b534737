/*
 * fuzz-tensor.c - libFuzzer target for the tensor decoder (pipeline/codec.h): a packed
 * TensorHeader and a payload, as a peer would send them, are either refused or decoded.
 *
 * Input layout: u16 little-endian header length L, L bytes of packed TensorHeader, then the
 * payload (the rest). Each input is decoded twice: once with the header's own encoded_len (almost
 * always a mismatch, which must be refused) and once with encoded_len set to the payload length,
 * so the fuzzer reaches the payload checks. On success the invariants of the format are checked:
 * blockwise8 output is finite (the absmax was checked); codec none without zstd gives back
 * the payload bytes exactly; a decoded tensor re-encodes with the same codec.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pipeline/codec.h"
#include "util/alloc.h"

/*
 * The decoder's source is compiled into this target, not taken from libswarmd.a: the library is
 * built without -fsanitize=fuzzer, so libFuzzer would see no coverage inside the codec and fuzz
 * blind. The library's copy is then never linked in (nothing else in the target needs it).
 */
#include "../../pipeline/codec.c"

#define MAX_FUZZ_ELEMS ((uint64_t)1 << 22) /* bigger tensors are offered a too-small buffer */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static sw_codec_ctx_t *fuzz_ctx; /* reused across inputs, as a connection would */

static void check_decoded(const sw_tensor_header_t *h, const uint8_t *payload, size_t len,
                          const float *y, uint64_t n)
{
    if (h->codec == SW_CODEC_BLOCKWISE8) {
        for (uint64_t i = 0; i < n; i++)
            if (!isfinite(y[i]))
                abort();
    }
    if (h->codec == SW_CODEC_NONE && !h->zstd && (len != n * 4 || (n && memcmp(y, payload, len))))
        abort();
    /* re-encode with the same codec: always possible (blockwise8 output is finite, and only
     * blockwise8 refuses non-finite input); without zstd the size is the same */
    sw_codec_opts_t o = {.codec = h->codec, .blocksize = h->blocksize, .zstd = h->zstd};
    sw_tensor_header_t h2;
    size_t bound;
    if (sw_codec_encoded_bound(&o, n, &bound) < 0)
        abort();
    uint8_t *buf = sw_malloc(bound ? bound : 1);
    if (!buf)
        return;
    if (sw_codec_encode(fuzz_ctx, &o, y, h->ndim, h->shape, &h2, buf, bound) < 0)
        abort();
    if (!h->zstd && h2.encoded_len != len)
        abort();
    sw_free(buf);
}

static void decode_one(const sw_tensor_header_t *h, const uint8_t *payload, size_t len)
{
    uint64_t n;

    if (sw_codec_header_check(h, &n, NULL) < 0)
        abort(); /* unpack already checked it */
    size_t cap = n <= MAX_FUZZ_ELEMS ? (size_t)n : 16;
    float *y = sw_malloc(cap ? cap * sizeof(float) : 1);
    if (!y)
        return;
    int r = sw_codec_decode(fuzz_ctx, h, payload, len, y, cap);
    if (r == 0) {
        if (n > cap)
            abort();
        check_decoded(h, payload, len, y, n);
    }
    sw_free(y);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sw_tensor_header_t h;

    if (!fuzz_ctx && sw_codec_ctx_new(&fuzz_ctx) < 0)
        return 0;
    if (size < 2)
        return 0;
    size_t hl = (size_t)data[0] | (size_t)data[1] << 8;
    if (hl > size - 2)
        return 0;
    const uint8_t *payload = data + 2 + hl;
    size_t len = size - 2 - hl;
    if (sw_codec_header_unpack(data + 2, hl, &h) < 0)
        return 0;
    decode_one(&h, payload, len);
    if (h.encoded_len != len) {
        h.encoded_len = len;
        decode_one(&h, payload, len);
    }
    return 0;
}
