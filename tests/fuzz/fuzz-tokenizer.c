/*
 * fuzz-tokenizer.c - libFuzzer target for tokenizer.json loading, encoding and decoding.
 *
 * Input: tokenizer.json text, a NUL byte, then the text to encode (without a NUL, the whole input
 * is the JSON and a fixed sample text is encoded). Any input either loads or is refused with an
 * error; a loaded tokenizer must encode the text to ids inside its vocabulary, decode them to
 * valid UTF-8, and stream-decode them to the same text piece by piece. The text is also decoded
 * as arbitrary ids (its bytes), which must never break the decoder either.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pipeline/tokenizer.h"
#include "pipeline/tokenizer_internal.h"
#include "util/alloc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int valid_utf8(const char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t l = sw_utf8_decode((const uint8_t *)s + i, n - i, &cp);
        if (cp == SW_UC_INVALID)
            return 0;
        i += l;
    }
    return 1;
}

static void check_decode(const sw_tokenizer_t *t, const int32_t *ids, size_t n, unsigned flags)
{
    size_t cap = 64 + n * 64, len = 0, slen = 0;
    char *whole = sw_malloc(cap), *streamed = sw_malloc(cap);
    sw_detok_t *d = NULL;
    int r;

    if (!whole || !streamed)
        goto out;
    r = sw_tokenizer_decode(t, ids, n, flags, whole, cap, &len);
    if (r == -ENOMEM || r == -ENOSPC)
        goto out;
    if (r < 0) /* an id outside the vocabulary: the streaming decoder must refuse it too */
        goto out;
    if (!valid_utf8(whole, len))
        abort();
    if (sw_detok_new(t, flags, &d) < 0)
        goto out;
    for (size_t i = 0; i <= n; i++) {
        const char *p;
        size_t pl;
        r = i < n ? sw_detok_push(d, ids[i], &p, &pl) : sw_detok_flush(d, &p, &pl);
        if (r < 0)
            abort();
        if (!valid_utf8(p, pl) || slen + pl > cap)
            abort();
        memcpy(streamed + slen, p, pl);
        slen += pl;
    }
    if (slen != len || memcmp(streamed, whole, len) != 0)
        abort();
out:
    sw_detok_free(d);
    sw_free(whole);
    sw_free(streamed);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char sample[] = "Hello, world! It's 2024: caf\xc3\xa9 \xe4\xbd\xa0\xe5\xa5\xbd "
                                 "\xf0\x9f\x91\x8d\n\tx  <s>\xff";
    const uint8_t *nul = memchr(data, 0, size);
    const char *text = sample;
    size_t jlen = size, tlen = sizeof(sample) - 1;
    sw_tokenizer_t *t = NULL;
    int32_t *ids = NULL;
    size_t n = 0;

    if (nul) {
        jlen = (size_t)(nul - data);
        text = (const char *)nul + 1;
        tlen = size - jlen - 1;
    }
    if (sw_tokenizer_load_mem((const char *)data, jlen, NULL, 0, "fuzz", &t) < 0)
        return 0;
    for (unsigned flags = 0; flags < 2; flags++) {
        if (sw_tokenizer_encode_alloc(t, text, tlen, flags, &ids, &n) == 0) {
            for (size_t i = 0; i < n; i++)
                if (ids[i] < 0 || (size_t)ids[i] >= sw_tokenizer_vocab_size(t) ||
                    !sw_tokenizer_token(t, ids[i], &(size_t){0}))
                    abort();
            check_decode(t, ids, n, flags);
            sw_free(ids);
            ids = NULL;
        }
    }
    /* the text's bytes as ids */
    size_t nb = tlen < 256 ? tlen : 256;
    ids = sw_malloc((nb + 1) * sizeof(int32_t));
    if (ids) {
        for (size_t i = 0; i < nb; i++)
            ids[i] = (int32_t)((uint8_t)text[i] % (sw_tokenizer_vocab_size(t) + 1));
        check_decode(t, ids, nb, 0);
        check_decode(t, ids, nb, SW_DETOK_SKIP_SPECIAL);
        sw_free(ids);
    }
    sw_tokenizer_free(t);
    return 0;
}
