/*
 * test-bnb.c - bit-compatibility with bitsandbytes' formats, against vectors made by an
 * independent pure-torch re-implementation (tests/fixtures/make_bnb_reference.py), and loading a
 * model checkpoint written in the transformers + bitsandbytes NF4 layout by that script.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>

#include "kernels/quant.h"
#include "pipeline/local.h"
#include "pipeline/safetensors.h"
#include "test.h"
#include "util/error.h"

static sw_st_file_t *vec;

static const sw_st_tensor_t *get(const char *name)
{
    const sw_st_tensor_t *t = sw_st_find(vec, name);

    if (!t)
        fprintf(stderr, "  vectors.safetensors has no %s\n", name);
    return t;
}

static size_t numel(const sw_st_tensor_t *t)
{
    size_t n = 1;

    for (int i = 0; i < t->ndim; i++)
        n *= (size_t)t->shape[i];
    return n;
}

/* Copies a tensor's bytes into fresh aligned memory (mapped data need not be aligned). */
static void *copy(const sw_st_tensor_t *t)
{
    void *p = sw_alloc_aligned(64, t->nbytes + 1);

    memcpy(p, t->data, t->nbytes);
    return p;
}

static const char *names[] = { "edge200", "edge199", "rand256x320", "rand33x65" };

/* NF4 codes, packing and absmax are byte-identical, and so is the dequantized tensor. */
static void test_nf4_exact(void)
{
    for (int v = 0; v < 4; v++) {
        char nm[128];
        snprintf(nm, sizeof(nm), "%s.input", names[v]);
        const sw_st_tensor_t *in = get(nm);
        SW_CHECK(in);
        size_t n = numel(in), nb = (n + 63) / 64;
        float *x = copy(in), *absmax = sw_malloc(nb * sizeof(float));
        float *deq = sw_malloc(n * sizeof(float));
        uint8_t *packed = sw_malloc((n + 1) / 2);
        sw_nf4_quantize(x, n, 64, packed, absmax);
        snprintf(nm, sizeof(nm), "%s.nf4.weight", names[v]);
        const sw_st_tensor_t *w = get(nm);
        SW_CHECK(w && w->nbytes == (n + 1) / 2);
        SW_CHECKF(memcmp(packed, w->data, w->nbytes) == 0, "%s: packed NF4 bytes differ", names[v]);
        snprintf(nm, sizeof(nm), "%s.nf4.absmax", names[v]);
        const sw_st_tensor_t *a = get(nm);
        SW_CHECK(a && a->nbytes == nb * 4 && memcmp(absmax, a->data, a->nbytes) == 0);
        sw_nf4_dequantize(packed, absmax, n, 64, deq);
        snprintf(nm, sizeof(nm), "%s.nf4.dequant", names[v]);
        const sw_st_tensor_t *d = get(nm);
        SW_CHECKF(d && memcmp(deq, d->data, n * 4) == 0, "%s: NF4 dequantization differs", names[v]);
        sw_free(x);
        sw_free(absmax);
        sw_free(deq);
        sw_free(packed);
    }
}

/*
 * Double quantization: with the same offset (the mean of the absmax; torch's fp32 mean may differ
 * from ours in the last ulp, so the stored one is used when they differ), the 8-bit codes, the
 * nested absmax and the rebuilt absmax are byte-identical.
 */
static void test_nf4_double_quant_exact(void)
{
    for (int v = 0; v < 4; v++) {
        char nm[128];
        snprintf(nm, sizeof(nm), "%s.nf4.absmax", names[v]);
        const sw_st_tensor_t *a = get(nm);
        SW_CHECK(a);
        int64_t nb = (int64_t)numel(a), nn = (nb + 255) / 256;
        float *absmax = copy(a), *scratch = sw_malloc((size_t)nb * 4), off, stored_off;
        float *nested = sw_malloc((size_t)nn * 4), *shifted = sw_malloc((size_t)nb * 4);
        uint8_t *q = sw_malloc((size_t)nb);
        sw_nf4_double_quant(absmax, nb, q, nested, &off, scratch);
        snprintf(nm, sizeof(nm), "%s.nf4dq.offset", names[v]);
        memcpy(&stored_off, get(nm)->data, 4);
        SW_CHECKF(fabsf(off - stored_off) <= 2 * nextafterf(fabsf(stored_off), INFINITY) - 2 * fabsf(stored_off),
                  "%s: offset %.9g vs %.9g", names[v], (double)off, (double)stored_off);
        if (off != stored_off) {
            for (int64_t b = 0; b < nb; b++)
                shifted[b] = absmax[b] - stored_off;
            sw_q8_quantize(shifted, (size_t)nb, 256, q, nested);
            off = stored_off;
        }
        snprintf(nm, sizeof(nm), "%s.nf4dq.absmax", names[v]);
        SW_CHECKF(memcmp(q, get(nm)->data, (size_t)nb) == 0, "%s: nested codes differ", names[v]);
        snprintf(nm, sizeof(nm), "%s.nf4dq.nested_absmax", names[v]);
        SW_CHECK(memcmp(nested, get(nm)->data, (size_t)nn * 4) == 0);
        sw_qstate_t qs = { .blocksize = 64, .nblocks = nb, .qabsmax = q, .nested_absmax = nested,
                           .nested_blocksize = 256, .offset = off };
        float *rebuilt = sw_malloc((size_t)nb * 4);
        sw_nf4_absmax_range(&qs, 0, nb, rebuilt);
        snprintf(nm, sizeof(nm), "%s.nf4dq.absmax_dequant", names[v]);
        SW_CHECKF(memcmp(rebuilt, get(nm)->data, (size_t)nb * 4) == 0, "%s: rebuilt absmax differs",
                  names[v]);
        sw_free(rebuilt);
        sw_free(absmax);
        sw_free(scratch);
        sw_free(nested);
        sw_free(shifted);
        sw_free(q);
    }
}

/* Blockwise 8-bit: codes (including bnb's tie behaviour) and absmax are identical. */
static void test_q8_exact(void)
{
    const sw_st_tensor_t *map = get("q8_map");
    /* our table is bnb's map as torch 2.11 builds it */
    SW_CHECK(map && memcmp(map->data, sw_q8_dynamic_map, 1024) == 0);
    const char *ins[] = { "rand256x320.input", "rand256x320.input", "q8ties.input" };
    const char *qs[] = { "rand256x320.q8_256.q", "rand256x320.q8_4096.q", "q8ties.q8_256.q" };
    const char *as[] = { "rand256x320.q8_256.absmax", "rand256x320.q8_4096.absmax", "q8ties.q8_256.absmax" };
    int bss[] = { 256, 4096, 256 };
    for (int i = 0; i < 3; i++) {
        const sw_st_tensor_t *in = get(ins[i]);
        size_t n = numel(in), nb = (n + (size_t)bss[i] - 1) / (size_t)bss[i];
        float *x = copy(in), *absmax = sw_malloc(nb * 4);
        uint8_t *q = sw_malloc(n);
        sw_q8_quantize(x, n, bss[i], q, absmax);
        SW_CHECK(memcmp(absmax, get(as[i])->data, nb * 4) == 0);
        size_t diff = 0;
        for (size_t k = 0; k < n; k++)
            diff += q[k] != ((const uint8_t *)get(qs[i])->data)[k];
        SW_CHECKF(diff == 0, "%s: %zu of %zu codes differ", qs[i], diff, n);
        sw_free(x);
        sw_free(absmax);
        sw_free(q);
    }
}

/* LLM.int8() weight codes and SCB are identical. */
static void test_int8_exact(void)
{
    const char *mats[] = { "rand256x320", "rand33x65" };

    for (int v = 0; v < 2; v++) {
        char nm[128];
        snprintf(nm, sizeof(nm), "%s.input", mats[v]);
        const sw_st_tensor_t *in = get(nm);
        sw_tensor_t dense = { .dtype = SW_DTYPE_F32, .ndim = 2, .shape = { in->shape[0], in->shape[1] },
                              .data = copy(in) }, q;
        SW_CHECK_OK(sw_quantize_int8(&dense, 6.0f, &q));
        snprintf(nm, sizeof(nm), "%s.int8.CB", mats[v]);
        SW_CHECK(memcmp(q.data, get(nm)->data, numel(in)) == 0);
        snprintf(nm, sizeof(nm), "%s.int8.SCB", mats[v]);
        SW_CHECK(memcmp(q.qs->scb, get(nm)->data, (size_t)in->shape[0] * 4) == 0);
        sw_qtensor_free(&q);
        sw_free(dense.data);
    }
}

/*
 * A model checkpoint in the transformers + bitsandbytes NF4 layout loads without re-quantizing,
 * and its logits equal the fp32 model on the dequantized weights (reference backend: exact
 * dequantize-then-multiply) to 1e-5; the fast backend stays within 1e-2 of them.
 */
static void test_load_bnb_checkpoint(void)
{
    char dir[1024], path[1100];
    sw_st_file_t *ref;
    sw_local_t *l;

    snprintf(dir, sizeof(dir), "%s/tests/fixtures/llama-wide-nf4", getenv("SW_SOURCE_ROOT"));
    snprintf(path, sizeof(path), "%s/reference.safetensors", dir);
    SW_CHECK_OK(sw_st_open(path, &ref));
    const sw_st_tensor_t *pid = sw_st_find(ref, "prompt_ids"), *lg = sw_st_find(ref, "logits_fp32_dequant");
    SW_CHECK(pid && lg && pid->dtype == SW_ST_I64);
    int T = (int)pid->shape[0], V = (int)lg->shape[1];
    int32_t ids[64];
    for (int i = 0; i < T && i < 64; i++) {
        int64_t x;
        memcpy(&x, (const char *)pid->data + 8 * i, 8);
        ids[i] = (int32_t)x;
    }
    float *want = copy(lg), *got = sw_malloc((size_t)T * V * 4);
    sw_load_opts_t opts = SW_LOAD_OPTS_DEFAULT;
    SW_CHECK_OK(sw_local_open(dir, 1, T, &opts, &l));
    SW_CHECK_OK(sw_local_forward(l, &sw_ops_ref, ids, T, 1, got));
    double e = sw_rel_l2(got, want, (size_t)T * V);
    fprintf(stderr, "  reference backend vs torch fp32-dequant logits: rel-L2 %.3g\n", e);
    SW_CHECK(e <= 1e-5);
    sw_kv_reset(sw_local_kv(l));
    SW_CHECK_OK(sw_local_forward(l, &sw_ops_cpu, ids, T, 1, got));
    e = sw_rel_l2(got, want, (size_t)T * V);
    fprintf(stderr, "  cpu backend vs torch fp32-dequant logits: rel-L2 %.3g\n", e);
    SW_CHECK(e <= 1e-2);
    sw_local_close(l);
    /* asking for another format than the checkpoint's is refused with advice */
    opts.quant = SW_QUANT_INT8;
    SW_CHECK(sw_local_open(dir, 1, T, &opts, &l) == SW_EUNSUPPORTED);
    SW_CHECK(strstr(sw_err_detail(), "--quant nf4") != NULL);
    sw_free(want);
    sw_free(got);
    sw_st_close(ref);
}

int main(void)
{
    char path[1024];

    snprintf(path, sizeof(path), "%s/tests/fixtures/bnb-reference/vectors.safetensors",
             getenv("SW_SOURCE_ROOT"));
    if (sw_st_open(path, &vec) < 0) {
        fprintf(stderr, "cannot open %s: %s\n", path, sw_err_detail());
        return 1;
    }
    SW_RUN(test_nf4_exact);
    SW_RUN(test_nf4_double_quant_exact);
    SW_RUN(test_q8_exact);
    SW_RUN(test_int8_exact);
    SW_RUN(test_load_bnb_checkpoint);
    sw_st_close(vec);
    return sw_test_summary("test-bnb");
}
