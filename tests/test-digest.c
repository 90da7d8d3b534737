/*
 * test-digest.c - the per-block weights digest servers announce (sw_span_block_digest): the same
 * checkpoint and format give the same digest, loaded as a whole span or block by block and loaded
 * twice; blocks differ from each other; another format differs; a bitsandbytes NF4 checkpoint
 * (tests/fixtures/llama-wide-nf4) has the digest of quantizing llama-wide on load; a span on the
 * GPU is refused.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipeline/model.h"
#include "test.h"
#include "util/alloc.h"
#include "util/error.h"

static const char *root;

/* Digest of block b of fixture `name` loaded as span [a, e) with quant q. */
static int digest_of(const char *name, int a, int e, int b, sw_quant_t q, uint8_t out[32])
{
    char dir[512];
    sw_model_t *m = NULL;
    sw_span_t *s = NULL;
    sw_load_opts_t o = SW_LOAD_OPTS_DEFAULT;
    int r;

    o.quant = q;
    snprintf(dir, sizeof(dir), "%s/tests/fixtures/%s", root, name);
    if ((r = sw_model_open(dir, &m)) < 0)
        return r;
    if ((r = sw_span_load(m, a, e, &o, &s)) == 0)
        r = sw_span_block_digest(s, b, out);
    sw_span_free(s);
    sw_model_close(m);
    return r;
}

static void test_same_and_different(void)
{
    uint8_t d0[32], d0b[32], d1[32], d0s[32], nf[32], i8[32];

    SW_CHECK_OK(digest_of("llama-gqa-llama3", 0, 4, 0, SW_QUANT_AUTO, d0));
    SW_CHECK_OK(digest_of("llama-gqa-llama3", 0, 1, 0, SW_QUANT_AUTO, d0s)); /* a span of one */
    SW_CHECK_OK(digest_of("llama-gqa-llama3", 0, 4, 0, SW_QUANT_AUTO, d0b)); /* loaded again */
    SW_CHECK_OK(digest_of("llama-gqa-llama3", 0, 4, 1, SW_QUANT_AUTO, d1));
    SW_CHECK(memcmp(d0, d0b, 32) == 0);
    SW_CHECK(memcmp(d0, d0s, 32) == 0);
    SW_CHECK(memcmp(d0, d1, 32) != 0);
    SW_CHECK_OK(digest_of("llama-gqa-llama3", 0, 1, 0, SW_QUANT_NF4, nf));
    SW_CHECK_OK(digest_of("llama-gqa-llama3", 0, 1, 0, SW_QUANT_INT8, i8));
    SW_CHECK(memcmp(d0, nf, 32) != 0 && memcmp(d0, i8, 32) != 0 && memcmp(nf, i8, 32) != 0);
    SW_CHECK(digest_of("llama-gqa-llama3", 0, 1, 1, SW_QUANT_AUTO, d1) == -EINVAL); /* not in span */
}

static void test_prequantized_equals_on_load(void)
{
    uint8_t a[32], b[32];

    for (int blk = 0; blk < 2; blk++) {
        SW_CHECK_OK(digest_of("llama-wide", 0, 2, blk, SW_QUANT_NF4, a));
        SW_CHECK_OK(digest_of("llama-wide-nf4", 0, 2, blk, SW_QUANT_AUTO, b));
        SW_CHECKF(memcmp(a, b, 32) == 0, "block %d: NF4 on load and bnb's NF4 checkpoint differ", blk);
    }
}

int main(void)
{
    long live0 = sw_alloc_live();

    root = getenv("SW_SOURCE_ROOT");
    if (!root) {
        fprintf(stderr, "SW_SOURCE_ROOT is not set\n");
        return 1;
    }
    SW_RUN(test_same_and_different);
    SW_RUN(test_prequantized_equals_on_load);
    if (sw_alloc_live() != live0) {
        fprintf(stderr, "leak: %ld allocations live\n", sw_alloc_live() - live0);
        return 1;
    }
    return sw_test_summary("test-digest");
}
