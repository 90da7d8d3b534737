/*
 * test-model.c - the whole CPU model against Hugging Face transformers.
 *
 * Fixtures (tests/fixtures/, made by make_fixtures.py on a machine with transformers) hold a
 * random-init checkpoint and transformers' outputs for a fixed prompt: logits, hidden states,
 * the greedy continuation and its per-step logits. Bars: fp32 logits within
 * ||delta|| / ||ref|| <= 1e-5; greedy ids identical.
 */
#include <errno.h>
#include <stdint.h>
#include <unistd.h>

#include "pipeline/local.h"
#include "pipeline/model.h"
#include "pipeline/safetensors.h"
#include "test.h"
#include "util/error.h"
#include "util/file.h"
#include "util/pool.h"

#define LOGITS_TOL 1e-5

static const char *fixtures[] = {
    "llama-mha-tied", "llama-gqa-llama3", "qwen2-bias", "mistral-window-dynamic",
};
#define N_FIXTURES (sizeof(fixtures) / sizeof(fixtures[0]))

typedef struct {
    char dir[1024];
    sw_st_file_t *ref;
    int32_t prompt[64];
    int T;
    int32_t greedy[64];
    int N;
    const float *logits;        /* (T, V) */
    const float *hidden;        /* (L + 1, T, H) */
    const float *greedy_logits; /* (N, V) */
} fixture_t;

static int fixture_open(const char *name, fixture_t *fx)
{
    const sw_st_tensor_t *t;
    char path[1100];
    int r;

    memset(fx, 0, sizeof(*fx));
    snprintf(fx->dir, sizeof(fx->dir), "%s/tests/fixtures/%s", getenv("SW_SOURCE_ROOT"), name);
    snprintf(path, sizeof(path), "%s/reference.safetensors", fx->dir);
    r = sw_st_open(path, &fx->ref);
    if (r < 0)
        return r;
    t = sw_st_find(fx->ref, "prompt_ids");
    if (!t || t->dtype != SW_ST_I64 || t->shape[0] > 64)
        return sw_err(SW_EFORMAT, "%s: bad prompt_ids", path);
    fx->T = (int)t->shape[0];
    for (int i = 0; i < fx->T; i++) {
        int64_t v;
        memcpy(&v, (const char *)t->data + 8 * i, 8);
        fx->prompt[i] = (int32_t)v;
    }
    t = sw_st_find(fx->ref, "greedy_ids");
    if (!t || t->dtype != SW_ST_I64 || t->shape[0] > 64)
        return sw_err(SW_EFORMAT, "%s: bad greedy_ids", path);
    fx->N = (int)t->shape[0];
    for (int i = 0; i < fx->N; i++) {
        int64_t v;
        memcpy(&v, (const char *)t->data + 8 * i, 8);
        fx->greedy[i] = (int32_t)v;
    }
    /* the mapping of a file written by safetensors.torch is 8-byte aligned for f32 here */
    fx->logits = sw_st_find(fx->ref, "logits")->data;
    fx->hidden = sw_st_find(fx->ref, "hidden_states")->data;
    fx->greedy_logits = sw_st_find(fx->ref, "greedy_logits")->data;
    if ((uintptr_t)fx->logits % 4 || (uintptr_t)fx->hidden % 4 || (uintptr_t)fx->greedy_logits % 4)
        return sw_err(SW_EFORMAT, "%s: reference tensors are not 4-byte aligned", path);
    return 0;
}

static void fixture_close(fixture_t *fx)
{
    sw_st_close(fx->ref);
    fx->ref = NULL;
}

/* Prompt logits match transformers for every fixture, with both backends. */
static void test_logits_match_transformers(void)
{
    const sw_ops_t *backends[] = { &sw_ops_cpu, &sw_ops_ref };

    for (size_t f = 0; f < N_FIXTURES; f++) {
        fixture_t fx;
        sw_local_t *l;
        float *logits;
        int V;

        SW_CHECK_OK(fixture_open(fixtures[f], &fx));
        SW_CHECK_OK(sw_local_open(fx.dir, 1, fx.T, NULL, &l));
        V = sw_local_config(l)->vocab_size;
        logits = sw_malloc((size_t)fx.T * V * sizeof(float));
        for (size_t b = 0; b < 2; b++) {
            sw_kv_reset(sw_local_kv(l));
            SW_CHECK_OK(sw_local_forward(l, backends[b], fx.prompt, fx.T, 1, logits));
            double e = sw_rel_l2(logits, fx.logits, (size_t)fx.T * V);
            fprintf(stderr, "  %-24s %-9s prompt logits rel-L2 %.3g\n", fixtures[f],
                    backends[b]->name, e);
            SW_CHECKF(e <= LOGITS_TOL, "%s (%s): rel-L2 %g > %g", fixtures[f], backends[b]->name,
                      e, LOGITS_TOL);
            for (int t = 0; t < fx.T; t++)
                SW_CHECK(sw_argmax(logits + (size_t)t * V, V) ==
                         sw_argmax(fx.logits + (size_t)t * V, V));
        }
        sw_free(logits);
        sw_local_close(l);
        fixture_close(&fx);
    }
}

/* Greedy continuation through the KV cache: ids identical, per-step logits within the bar. */
static void test_greedy_matches_transformers(void)
{
    for (size_t f = 0; f < N_FIXTURES; f++) {
        fixture_t fx;
        sw_local_t *l;
        int32_t ids[64];
        float *logits;
        int V;

        SW_CHECK_OK(fixture_open(fixtures[f], &fx));
        SW_CHECK_OK(sw_local_open(fx.dir, 1, fx.T + fx.N, NULL, &l));
        V = sw_local_config(l)->vocab_size;
        logits = sw_malloc((size_t)fx.N * V * sizeof(float));
        SW_CHECK_OK(sw_local_greedy(l, &sw_ops_cpu, fx.prompt, fx.T, fx.N, ids, logits, NULL, NULL));
        for (int i = 0; i < fx.N; i++)
            SW_CHECKF(ids[i] == fx.greedy[i], "%s: step %d gave %d, transformers %d",
                      fixtures[f], i, ids[i], fx.greedy[i]);
        double e = sw_rel_l2(logits, fx.greedy_logits, (size_t)fx.N * V);
        fprintf(stderr, "  %-24s greedy step logits rel-L2 %.3g\n", fixtures[f], e);
        SW_CHECKF(e <= LOGITS_TOL, "%s: greedy logits rel-L2 %g", fixtures[f], e);
        sw_free(logits);
        sw_local_close(l);
        fixture_close(&fx);
    }
}

/* Span [0, l) output equals transformers' hidden state after block l - 1, for every l. */
static void test_hidden_states_per_block(void)
{
    for (size_t f = 0; f < N_FIXTURES; f++) {
        fixture_t fx;
        sw_model_t *m;
        sw_head_t *head;
        const sw_model_config_t *c;

        SW_CHECK_OK(fixture_open(fixtures[f], &fx));
        SW_CHECK_OK(sw_model_open(fx.dir, &m));
        SW_CHECK_OK(sw_head_load(m, &head));
        c = sw_model_config(m);
        size_t TH = (size_t)fx.T * c->hidden_size;
        float *x = sw_malloc(TH * sizeof(float));
        /* entry 0 is the embeddings; entries 1..L-1 block outputs; entry L is after the norm */
        SW_CHECK_OK(sw_head_embed(head, &sw_ops_cpu, fx.prompt, fx.T, x));
        SW_CHECK(sw_rel_l2(x, fx.hidden, TH) == 0.0);
        for (int l = 1; l < c->num_layers; l++) {
            sw_span_t *s;
            sw_kv_t *kv;
            SW_CHECK_OK(sw_head_embed(head, &sw_ops_cpu, fx.prompt, fx.T, x));
            SW_CHECK_OK(sw_span_load(m, 0, l, NULL, &s));
            SW_CHECK_OK(sw_kv_create(s, 1, fx.T, &kv));
            SW_CHECK_OK(sw_span_forward(s, kv, &sw_ops_cpu, x, 1, fx.T));
            double e = sw_rel_l2(x, fx.hidden + (size_t)l * TH, TH);
            SW_CHECKF(e <= LOGITS_TOL, "%s: hidden state after block %d rel-L2 %g", fixtures[f],
                      l - 1, e);
            sw_kv_free(kv);
            sw_span_free(s);
        }
        sw_free(x);
        sw_head_free(head);
        sw_model_close(m);
        fixture_close(&fx);
    }
}

/* Spans [0, a) then [a, L) give exactly what [0, L) gives, for every split point a. */
static void test_span_split_equals_whole(void)
{
    fixture_t fx;
    sw_model_t *m;
    sw_head_t *head;
    const sw_model_config_t *c;
    sw_span_t *whole;
    sw_kv_t *kv;

    SW_CHECK_OK(fixture_open("llama-gqa-llama3", &fx));
    SW_CHECK_OK(sw_model_open(fx.dir, &m));
    SW_CHECK_OK(sw_head_load(m, &head));
    c = sw_model_config(m);
    size_t TH = (size_t)fx.T * c->hidden_size;
    float *ref = sw_malloc(TH * sizeof(float)), *x = sw_malloc(TH * sizeof(float));
    SW_CHECK_OK(sw_head_embed(head, &sw_ops_cpu, fx.prompt, fx.T, ref));
    SW_CHECK_OK(sw_span_load(m, 0, c->num_layers, NULL, &whole));
    SW_CHECK_OK(sw_kv_create(whole, 1, fx.T + 1, &kv));
    SW_CHECK_OK(sw_span_forward(whole, kv, &sw_ops_cpu, ref, 1, fx.T));
    for (int a = 1; a < c->num_layers; a++) {
        sw_span_t *s1, *s2;
        sw_kv_t *k1, *k2;
        SW_CHECK_OK(sw_head_embed(head, &sw_ops_cpu, fx.prompt, fx.T, x));
        SW_CHECK_OK(sw_span_load(m, 0, a, NULL, &s1));
        SW_CHECK_OK(sw_span_load(m, a, c->num_layers, NULL, &s2));
        SW_CHECK_OK(sw_kv_create(s1, 1, fx.T, &k1));
        SW_CHECK_OK(sw_kv_create(s2, 1, fx.T, &k2));
        SW_CHECK_OK(sw_span_forward(s1, k1, &sw_ops_cpu, x, 1, fx.T));
        SW_CHECK_OK(sw_span_forward(s2, k2, &sw_ops_cpu, x, 1, fx.T));
        SW_CHECKF(memcmp(x, ref, TH * sizeof(float)) == 0, "split at %d differs", a);
        sw_kv_free(k1);
        sw_kv_free(k2);
        sw_span_free(s1);
        sw_span_free(s2);
    }
    /* a full cache refuses more tokens and stays unchanged */
    SW_CHECK(sw_span_forward(whole, kv, &sw_ops_cpu, x, 1, 2) == SW_ELIMIT);
    SW_CHECK(sw_kv_len(kv) == fx.T);
    /* a range outside the model is refused */
    sw_span_t *bad = NULL;
    SW_CHECK(sw_span_load(m, 0, c->num_layers + 1, NULL, &bad) == -EINVAL && bad == NULL);
    SW_CHECK(sw_span_load(m, 2, 2, NULL, &bad) == -EINVAL);
    sw_kv_free(kv);
    sw_span_free(whole);
    sw_free(ref);
    sw_free(x);
    sw_head_free(head);
    sw_model_close(m);
    fixture_close(&fx);
}

/*
 * Decoding token by token through the KV cache equals recomputing the whole sequence from
 * scratch at every step (fixtures without dynamic RoPE, whose frequencies depend on length).
 * The long prompt (150 tokens) crosses the 64-token prefill chunks.
 */
static void test_kv_decode_equals_recompute(void)
{
    const char *names[] = { "llama-mha-tied", "llama-gqa-llama3", "qwen2-bias" };
    unsigned long long seed = 42;

    for (size_t f = 0; f < 3; f++) {
        char dir[1024];
        sw_local_t *inc, *full;
        int32_t seq[160];
        int T = 150, steps = 8, V;

        snprintf(dir, sizeof(dir), "%s/tests/fixtures/%s", getenv("SW_SOURCE_ROOT"), names[f]);
        SW_CHECK_OK(sw_local_open(dir, 1, T + steps, NULL, &inc));
        SW_CHECK_OK(sw_local_open(dir, 1, T + steps, NULL, &full));
        V = sw_local_config(inc)->vocab_size;
        for (int i = 0; i < T + steps; i++)
            seq[i] = (int32_t)(sw_test_rand_u64(&seed) % (unsigned)V);
        float *a = sw_malloc((size_t)V * sizeof(float));
        float *all = sw_malloc((size_t)(T + steps) * V * sizeof(float));
        SW_CHECK_OK(sw_local_forward(inc, &sw_ops_cpu, seq, T, 0, a));
        for (int s = 0; s <= steps; s++) {
            int n = T + s;
            if (s > 0)
                SW_CHECK_OK(sw_local_forward(inc, &sw_ops_cpu, &seq[n - 1], 1, 0, a));
            sw_kv_reset(sw_local_kv(full));
            SW_CHECK_OK(sw_local_forward(full, &sw_ops_cpu, seq, n, 1, all));
            double e = sw_rel_l2(a, all + (size_t)(n - 1) * V, (size_t)V);
            SW_CHECKF(e <= 1e-5, "%s: step %d: cached vs recomputed rel-L2 %g", names[f], s, e);
        }
        sw_free(a);
        sw_free(all);
        sw_local_close(inc);
        sw_local_close(full);
    }
}

/* A batch of 2 different sequences gives what each gives alone. */
static void test_batch_equals_single(void)
{
    char dir[1024];
    sw_local_t *b2, *b1;
    int32_t ids[2][20];
    unsigned long long seed = 7;
    int T = 20, V;

    snprintf(dir, sizeof(dir), "%s/tests/fixtures/qwen2-bias", getenv("SW_SOURCE_ROOT"));
    SW_CHECK_OK(sw_local_open(dir, 2, T + 1, NULL, &b2));
    SW_CHECK_OK(sw_local_open(dir, 1, T + 1, NULL, &b1));
    V = sw_local_config(b1)->vocab_size;
    for (int i = 0; i < T; i++) {
        ids[0][i] = (int32_t)(sw_test_rand_u64(&seed) % (unsigned)V);
        ids[1][i] = (int32_t)(sw_test_rand_u64(&seed) % (unsigned)V);
    }
    float *lb = sw_malloc(2 * (size_t)V * sizeof(float)), *l1 = sw_malloc((size_t)V * sizeof(float));
    SW_CHECK_OK(sw_local_forward(b2, &sw_ops_cpu, &ids[0][0], T, 0, lb));
    for (int b = 0; b < 2; b++) {
        sw_kv_reset(sw_local_kv(b1));
        SW_CHECK_OK(sw_local_forward(b1, &sw_ops_cpu, ids[b], T, 0, l1));
        double e = sw_rel_l2(lb + (size_t)b * V, l1, (size_t)V);
        SW_CHECKF(e <= 1e-6, "sequence %d of the batch: rel-L2 %g", b, e);
    }
    /* one decode step for both */
    int32_t next[2] = { 3, 5 };
    SW_CHECK_OK(sw_local_forward(b2, &sw_ops_cpu, next, 1, 0, lb));
    SW_CHECK_OK(sw_local_forward(b1, &sw_ops_cpu, &next[1], 1, 0, l1));
    SW_CHECK(sw_rel_l2(lb + V, l1, (size_t)V) <= 1e-6);
    sw_free(lb);
    sw_free(l1);
    sw_local_close(b1);
    sw_local_close(b2);
}

/* Token ids outside the vocabulary are refused before any table lookup. */
static void test_bad_token_refused(void)
{
    char dir[1024];
    sw_local_t *l;
    float logits[4096];
    int32_t ids[2] = { 1, 1 << 20 };

    snprintf(dir, sizeof(dir), "%s/tests/fixtures/llama-mha-tied", getenv("SW_SOURCE_ROOT"));
    SW_CHECK_OK(sw_local_open(dir, 1, 4, NULL, &l));
    SW_CHECK(sw_local_forward(l, &sw_ops_cpu, ids, 2, 0, logits) == -EINVAL);
    SW_CHECK(strstr(sw_err_detail(), "1048576") != NULL);
    ids[1] = -1;
    SW_CHECK(sw_local_forward(l, &sw_ops_cpu, ids, 2, 0, logits) == -EINVAL);
    SW_CHECK(sw_kv_len(sw_local_kv(l)) == 0);
    sw_local_close(l);
}

/* Copies a fixture into a temp dir, with config.json replaced by `config` when not NULL. */
static int copy_fixture(const char *name, const char *config, char *tmp, size_t len)
{
    char cmd[4096];

    snprintf(tmp, len, "/tmp/sw-test-model-XXXXXX");
    if (!mkdtemp(tmp))
        return -errno;
    snprintf(cmd, sizeof(cmd), "cp -r '%s/tests/fixtures/%s/.' '%s/'", getenv("SW_SOURCE_ROOT"),
             name, tmp);
    if (system(cmd) != 0)
        return -EIO;
    if (config) {
        snprintf(cmd, sizeof(cmd), "%s/config.json", tmp);
        FILE *f = fopen(cmd, "w");
        if (!f)
            return -errno;
        fputs(config, f);
        fclose(f);
    }
    return 0;
}

static void remove_dir(const char *dir)
{
    char cmd[1100];

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "  (could not remove %s)\n", dir);
}

/* A checkpoint that does not match its config is refused with the tensor named. */
static void test_mismatched_checkpoint_refused(void)
{
    char tmp[64];
    sw_local_t *l = NULL;
    char *cfg;
    size_t len;
    char path[1100];

    snprintf(path, sizeof(path), "%s/tests/fixtures/llama-mha-tied/config.json",
             getenv("SW_SOURCE_ROOT"));
    SW_CHECK_OK(sw_file_read(path, 1 << 20, &cfg, &len));
    /* widen the MLP: the first gate_proj no longer has the promised shape */
    char *p = strstr(cfg, "\"intermediate_size\"");
    SW_CHECK(p != NULL);
    char edited[8192];
    int pre = (int)(p - cfg);
    const char *rest = strchr(p, ',');
    snprintf(edited, sizeof(edited), "%.*s\"intermediate_size\": 200%s", pre, cfg, rest);
    sw_free(cfg);
    SW_CHECK_OK(copy_fixture("llama-mha-tied", edited, tmp, sizeof(tmp)));
    SW_CHECK(sw_local_open(tmp, 1, 8, NULL, &l) == SW_EFORMAT && l == NULL);
    SW_CHECKF(strstr(sw_err_detail(), "mlp.gate_proj.weight") && strstr(sw_err_detail(), "200"),
              "detail: %s", sw_err_detail());
    remove_dir(tmp);

    /* a missing shard file is named */
    SW_CHECK_OK(copy_fixture("qwen2-bias", NULL, tmp, sizeof(tmp)));
    snprintf(path, sizeof(path), "rm -f %s/model-00002-of-*.safetensors", tmp);
    SW_CHECK(system(path) == 0);
    SW_CHECK(sw_local_open(tmp, 1, 8, NULL, &l) < 0 && l == NULL);
    SW_CHECKF(strstr(sw_err_detail(), "model-00002-of-") != NULL, "detail: %s", sw_err_detail());
    remove_dir(tmp);
}

int main(void)
{
    long live;

    sw_pool_global(); /* the process-wide pool lives until exit */
    live = sw_alloc_live();

    SW_RUN(test_logits_match_transformers);
    SW_RUN(test_greedy_matches_transformers);
    SW_RUN(test_hidden_states_per_block);
    SW_RUN(test_span_split_equals_whole);
    SW_RUN(test_kv_decode_equals_recompute);
    SW_RUN(test_batch_equals_single);
    SW_RUN(test_bad_token_refused);
    SW_RUN(test_mismatched_checkpoint_refused);
    if (!sw_test_failed && sw_alloc_live() != live) {
        fprintf(stderr, "leak: %ld allocations outstanding\n", sw_alloc_live() - live);
        sw_test_failed++;
    }
    return sw_test_summary("test-model");
}
