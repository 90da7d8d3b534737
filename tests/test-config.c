/*
 * test-config.c - config.json parsing for the Llama family (real configs under
 * tests/data/configs/, every field checked), the 4.x and 5.x RoPE spellings giving the same
 * config, refusals with their codes and messages, and RoPE inverse frequencies against values
 * computed here in double precision from the published formulas (relative tolerance 1e-6).
 */
#include <jansson.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pipeline/config.h"
#include "test.h"
#include "util/error.h"
#include "util/file.h"

/* ---- helpers ---- */

static char *data_path(const char *name)
{
    const char *root = getenv("SW_SOURCE_ROOT");
    static char buf[4096];

    snprintf(buf, sizeof(buf), "%s/tests/data/configs/%s", root ? root : ".", name);
    return buf;
}

/* Parses tests/data/configs/<name>. */
static int parse_file(const char *name, sw_model_config_t *c)
{
    char *text;
    size_t len;
    int r;

    r = sw_file_read(data_path(name), 1 << 20, &text, &len);
    if (r < 0) {
        fprintf(stderr, "  cannot read %s: %s\n", data_path(name), sw_err_detail());
        return r;
    }
    r = sw_model_config_parse(text, len, name, c);
    sw_free(text);
    return r;
}

/*
 * Parses tests/data/configs/<name> with the keys of the JSON object `mods` replaced; a value
 * of "DELETE" removes the key.
 */
static int parse_mod(const char *name, const char *mods, sw_model_config_t *c)
{
    json_t *base = NULL, *m = NULL, *v;
    json_free_t jfree;
    json_malloc_t jmalloc;
    char *text = NULL;
    const char *k;
    size_t len;
    int r;

    r = sw_file_read(data_path(name), 1 << 20, &text, &len);
    if (r == 0)
        r = sw_json_parse(text, len, name, &base);
    sw_free(text);
    if (r == 0)
        r = sw_json_parse(mods, strlen(mods), "mods", &m);
    if (r < 0) {
        fprintf(stderr, "  bad test input %s / %s: %s\n", name, mods, sw_err_detail());
        json_decref(base);
        return -EINVAL;
    }
    json_object_foreach(m, k, v) {
        if (json_is_string(v) && strcmp(json_string_value(v), "DELETE") == 0)
            json_object_del(base, k);
        else
            json_object_set(base, k, v);
    }
    /* jansson allocates through whatever util/file.c installed; free the dump the same way */
    json_get_alloc_funcs(&jmalloc, &jfree);
    text = json_dumps(base, 0);
    r = sw_model_config_parse(text, strlen(text), name, c);
    jfree(text);
    json_decref(base);
    json_decref(m);
    return r;
}

static int parse_str(const char *s, sw_model_config_t *c)
{
    return sw_model_config_parse(s, strlen(s), "inline", c);
}

static int has(const char *needle)
{
    if (strstr(sw_err_detail(), needle))
        return 1;
    fprintf(stderr, "  detail \"%s\" lacks \"%s\"\n", sw_err_detail(), needle);
    return 0;
}

/* Max relative error of got[] against the double reference. */
static double max_rel(const float *got, const double *ref, int n)
{
    double m = 0;

    for (int i = 0; i < n; i++) {
        double e = fabs((double)got[i] - ref[i]) / fabs(ref[i]);
        if (!(e <= m))
            m = e;
    }
    return m;
}

static void ref_default(double theta, int dim, double *out)
{
    for (int i = 0; i < dim / 2; i++)
        out[i] = 1.0 / pow(theta, (double)(2 * i) / dim);
}

/* Meta's apply_scaling() for Llama 3.1, as published with the model. */
static void ref_llama3(double theta, int dim, double factor, double lo, double hi, double old,
                       double *out)
{
    ref_default(theta, dim, out);
    for (int i = 0; i < dim / 2; i++) {
        double f = out[i], wavelen = 2 * M_PI / f;
        if (wavelen < old / hi) {
            out[i] = f;
        } else if (wavelen > old / lo) {
            out[i] = f / factor;
        } else {
            double s = (old / wavelen - lo) / (hi - lo);
            out[i] = (1 - s) * f / factor + s * f;
        }
    }
}

/* Dynamic NTK (bloc97/emozilla): base' = base * ((f * L / L0) - (f - 1)) ^ (d / (d - 2)). */
static void ref_dynamic(double theta, int dim, double factor, double seq, double max_pos,
                        double *out)
{
    double b = theta;

    if (seq > max_pos)
        b = theta * pow(factor * seq / max_pos - (factor - 1), (double)dim / (dim - 2));
    ref_default(b, dim, out);
}

/* ---- real configs, every field ---- */

static void test_llama2_7b(void)
{
    sw_model_config_t c;

    SW_CHECK_OK(parse_file("llama-2-7b.json", &c));
    SW_CHECK(c.arch == SW_ARCH_LLAMA && strcmp(c.model_type, "llama") == 0);
    SW_CHECK(c.vocab_size == 32000 && c.hidden_size == 4096 && c.intermediate_size == 11008);
    SW_CHECK(c.num_layers == 32 && c.num_heads == 32 && c.num_kv_heads == 32 && c.head_dim == 128);
    SW_CHECK(c.max_position_embeddings == 4096);
    SW_CHECK(c.rms_norm_eps == 1e-5f);
    SW_CHECK(!c.tie_word_embeddings && !c.attention_bias && !c.o_bias && !c.mlp_bias);
    SW_CHECK(c.sliding_window == 0 && c.sliding_window_first_layer == 32);
    SW_CHECK(c.bos_token_id == 1 && c.eos_token_id == 2);
    SW_CHECK(strcmp(c.torch_dtype, "float16") == 0);
    /* no rope_theta in this file: transformers' default */
    SW_CHECK(c.rope.type == SW_ROPE_DEFAULT && c.rope.theta == 10000.0);
    SW_CHECK(c.rope.factor == 1.0 && c.rope.original_max_position_embeddings == 0);
}

static void test_llama31_8b(void)
{
    sw_model_config_t c;

    SW_CHECK_OK(parse_file("llama-3.1-8b.json", &c));
    SW_CHECK(c.arch == SW_ARCH_LLAMA && strcmp(c.model_type, "llama") == 0);
    SW_CHECK(c.vocab_size == 128256 && c.hidden_size == 4096 && c.intermediate_size == 14336);
    SW_CHECK(c.num_layers == 32 && c.num_heads == 32 && c.num_kv_heads == 8 && c.head_dim == 128);
    SW_CHECK(c.max_position_embeddings == 131072 && c.rms_norm_eps == 1e-5f);
    SW_CHECK(!c.tie_word_embeddings && !c.attention_bias && !c.o_bias && !c.mlp_bias);
    SW_CHECK(c.sliding_window == 0 && c.sliding_window_first_layer == 32);
    SW_CHECK(c.bos_token_id == 128000 && c.eos_token_id == 128001);
    SW_CHECK(strcmp(c.torch_dtype, "bfloat16") == 0);
    SW_CHECK(c.rope.type == SW_ROPE_LLAMA3 && c.rope.theta == 500000.0);
    SW_CHECK(c.rope.factor == 8.0 && c.rope.low_freq_factor == 1.0 && c.rope.high_freq_factor == 4.0);
    SW_CHECK(c.rope.original_max_position_embeddings == 8192);
}

static void check_llama32_1b(const sw_model_config_t *c)
{
    SW_CHECK(c->arch == SW_ARCH_LLAMA && strcmp(c->model_type, "llama") == 0);
    SW_CHECK(c->vocab_size == 128256 && c->hidden_size == 2048 && c->intermediate_size == 8192);
    SW_CHECK(c->num_layers == 16 && c->num_heads == 32 && c->num_kv_heads == 8);
    SW_CHECK(c->head_dim == 64 && c->max_position_embeddings == 131072);
    SW_CHECK(c->rms_norm_eps == 1e-5f && c->tie_word_embeddings);
    SW_CHECK(!c->attention_bias && !c->o_bias && !c->mlp_bias && c->sliding_window == 0);
    SW_CHECK(c->bos_token_id == 128000 && c->eos_token_id == 128001); /* first of the list */
    SW_CHECK(strcmp(c->torch_dtype, "bfloat16") == 0);
    SW_CHECK(c->rope.type == SW_ROPE_LLAMA3 && c->rope.theta == 500000.0);
    SW_CHECK(c->rope.factor == 32.0 && c->rope.low_freq_factor == 1.0);
    SW_CHECK(c->rope.high_freq_factor == 4.0 && c->rope.original_max_position_embeddings == 8192);
}

static void test_llama32_4x_5x_same(void)
{
    sw_model_config_t a, b;

    SW_CHECK_OK(parse_file("llama-3.2-1b-instruct-4x.json", &a));
    SW_CHECK_OK(parse_file("llama-3.2-1b-instruct-5x.json", &b));
    check_llama32_1b(&a);
    if (sw_test_cur_failed)
        return;
    SW_CHECK(memcmp(&a, &b, sizeof(a)) == 0);
    /* 5.x `dtype` wins over a stale `torch_dtype` */
    SW_CHECK_OK(parse_mod("llama-3.2-1b-instruct-5x.json", "{\"torch_dtype\": \"float32\"}", &b));
    SW_CHECK(strcmp(b.torch_dtype, "bfloat16") == 0);
}

static void test_mistral_7b(void)
{
    sw_model_config_t c;

    SW_CHECK_OK(parse_file("mistral-7b-v0.1.json", &c));
    SW_CHECK(c.arch == SW_ARCH_MISTRAL && strcmp(c.model_type, "mistral") == 0);
    SW_CHECK(c.vocab_size == 32000 && c.hidden_size == 4096 && c.intermediate_size == 14336);
    SW_CHECK(c.num_layers == 32 && c.num_heads == 32 && c.num_kv_heads == 8 && c.head_dim == 128);
    SW_CHECK(c.max_position_embeddings == 32768 && c.rms_norm_eps == 1e-5f);
    SW_CHECK(!c.tie_word_embeddings && !c.attention_bias && !c.o_bias && !c.mlp_bias);
    SW_CHECK(c.sliding_window == 4096 && c.sliding_window_first_layer == 0);
    SW_CHECK(sw_model_layer_window(&c, 0) == 4096 && sw_model_layer_window(&c, 31) == 4096);
    SW_CHECK(c.bos_token_id == 1 && c.eos_token_id == 2);
    SW_CHECK(strcmp(c.torch_dtype, "bfloat16") == 0);
    SW_CHECK(c.rope.type == SW_ROPE_DEFAULT && c.rope.theta == 10000.0);
}

static void test_mistral_defaults(void)
{
    sw_model_config_t c;

    /* v0.2+ spell "no sliding window" as null; an absent key is transformers' default 4096 */
    SW_CHECK_OK(parse_mod("mistral-7b-v0.1.json", "{\"sliding_window\": null}", &c));
    SW_CHECK(c.sliding_window == 0 && sw_model_layer_window(&c, 5) == 0);
    SW_CHECK_OK(parse_mod("mistral-7b-v0.1.json", "{\"sliding_window\": \"DELETE\"}", &c));
    SW_CHECK(c.sliding_window == 4096);
    /* num_key_value_heads: absent = 8 (MistralConfig default), null = NH */
    SW_CHECK_OK(parse_mod("mistral-7b-v0.1.json", "{\"num_key_value_heads\": \"DELETE\"}", &c));
    SW_CHECK(c.num_kv_heads == 8);
    SW_CHECK_OK(parse_mod("mistral-7b-v0.1.json", "{\"num_key_value_heads\": null}", &c));
    SW_CHECK(c.num_kv_heads == 32);
    /* max_position_embeddings absent: 4096 * 32 */
    SW_CHECK_OK(parse_mod("mistral-7b-v0.1.json", "{\"max_position_embeddings\": \"DELETE\"}", &c));
    SW_CHECK(c.max_position_embeddings == 131072);
    /* Mistral has no biases even if a config says attention_bias */
    SW_CHECK_OK(parse_mod("mistral-7b-v0.1.json", "{\"attention_bias\": true}", &c));
    SW_CHECK(!c.attention_bias && !c.o_bias);
    /* explicit head_dim that differs from H / NH (Mistral NeMo style) */
    SW_CHECK_OK(parse_mod("mistral-7b-v0.1.json",
                          "{\"hidden_size\": 5120, \"head_dim\": 128, \"sliding_window\": null}", &c));
    SW_CHECK(c.head_dim == 128 && c.hidden_size == 5120);
}

static void test_tinyllama(void)
{
    sw_model_config_t c;

    SW_CHECK_OK(parse_file("tinyllama-1.1b.json", &c));
    SW_CHECK(c.arch == SW_ARCH_LLAMA && strcmp(c.model_type, "llama") == 0);
    SW_CHECK(c.vocab_size == 32000 && c.hidden_size == 2048 && c.intermediate_size == 5632);
    SW_CHECK(c.num_layers == 22 && c.num_heads == 32 && c.num_kv_heads == 4 && c.head_dim == 64);
    SW_CHECK(c.max_position_embeddings == 2048 && c.rms_norm_eps == 1e-5f);
    SW_CHECK(!c.tie_word_embeddings && !c.attention_bias && !c.o_bias && !c.mlp_bias);
    SW_CHECK(c.sliding_window == 0 && c.sliding_window_first_layer == 22);
    SW_CHECK(c.bos_token_id == 1 && c.eos_token_id == 2);
    SW_CHECK(strcmp(c.torch_dtype, "bfloat16") == 0);
    SW_CHECK(c.rope.type == SW_ROPE_DEFAULT && c.rope.theta == 10000.0);
}

static void test_smollm_135m(void)
{
    sw_model_config_t c;

    SW_CHECK_OK(parse_file("smollm-135m.json", &c));
    SW_CHECK(c.arch == SW_ARCH_LLAMA && strcmp(c.model_type, "llama") == 0);
    SW_CHECK(c.vocab_size == 49152 && c.hidden_size == 576 && c.intermediate_size == 1536);
    SW_CHECK(c.num_layers == 30 && c.num_heads == 9 && c.num_kv_heads == 3);
    SW_CHECK(c.head_dim == 64); /* implicit: 576 / 9 */
    SW_CHECK(c.max_position_embeddings == 2048 && c.rms_norm_eps == 1e-5f);
    SW_CHECK(c.tie_word_embeddings && !c.attention_bias && !c.o_bias && !c.mlp_bias);
    SW_CHECK(c.sliding_window == 0 && c.sliding_window_first_layer == 30);
    SW_CHECK(c.bos_token_id == 0 && c.eos_token_id == 0);
    SW_CHECK(strcmp(c.torch_dtype, "float32") == 0);
    SW_CHECK(c.rope.type == SW_ROPE_DEFAULT && c.rope.theta == 10000.0);
}

static void test_qwen2_05b(void)
{
    sw_model_config_t c;

    SW_CHECK_OK(parse_file("qwen2-0.5b.json", &c));
    SW_CHECK(c.arch == SW_ARCH_QWEN2 && strcmp(c.model_type, "qwen2") == 0);
    SW_CHECK(c.vocab_size == 151936 && c.hidden_size == 896 && c.intermediate_size == 4864);
    SW_CHECK(c.num_layers == 24 && c.num_heads == 14 && c.num_kv_heads == 2 && c.head_dim == 64);
    SW_CHECK(c.max_position_embeddings == 131072 && c.rms_norm_eps == 1e-6f);
    SW_CHECK(c.tie_word_embeddings);
    SW_CHECK(c.attention_bias && !c.o_bias && !c.mlp_bias); /* q/k/v biases, none on o_proj */
    /* use_sliding_window is false: the sliding_window key is ignored, as in transformers */
    SW_CHECK(c.sliding_window == 0 && c.sliding_window_first_layer == 24);
    SW_CHECK(c.bos_token_id == 151643 && c.eos_token_id == 151643);
    SW_CHECK(strcmp(c.torch_dtype, "bfloat16") == 0);
    SW_CHECK(c.rope.type == SW_ROPE_DEFAULT && c.rope.theta == 1000000.0);
}

static void test_qwen2_sliding(void)
{
    sw_model_config_t c;

    /* layers >= max_window_layers slide */
    SW_CHECK_OK(parse_mod("qwen2-0.5b.json", "{\"use_sliding_window\": true, "
                          "\"sliding_window\": 4096, \"max_window_layers\": 20}", &c));
    SW_CHECK(c.sliding_window == 4096 && c.sliding_window_first_layer == 20);
    SW_CHECK(sw_model_layer_window(&c, 19) == 0 && sw_model_layer_window(&c, 20) == 4096);
    /* max_window_layers >= L: no layer slides */
    SW_CHECK_OK(parse_mod("qwen2-0.5b.json", "{\"use_sliding_window\": true, "
                          "\"max_window_layers\": 24}", &c));
    SW_CHECK(c.sliding_window == 0 && c.sliding_window_first_layer == 24);
    /* absent max_window_layers: default 28 > 24 layers */
    SW_CHECK_OK(parse_mod("qwen2-0.5b.json", "{\"use_sliding_window\": true, "
                          "\"max_window_layers\": \"DELETE\"}", &c));
    SW_CHECK(c.sliding_window == 0);
    /* explicit layer_types override max_window_layers */
    {
        char buf[1024] = "{\"use_sliding_window\": true, \"sliding_window\": 1024, \"layer_types\": [";
        for (int i = 0; i < 24; i++)
            strcat(buf, i < 22 ? "\"full_attention\"," : i < 23 ? "\"sliding_attention\","
                                                                 : "\"sliding_attention\"]}");
        SW_CHECK_OK(parse_mod("qwen2-0.5b.json", buf, &c));
        SW_CHECK(c.sliding_window == 1024 && c.sliding_window_first_layer == 22);
        /* a full layer after a sliding one cannot be expressed: refused */
        strcpy(buf, "{\"use_sliding_window\": true, \"layer_types\": [");
        for (int i = 0; i < 24; i++)
            strcat(buf, i == 23 ? "\"full_attention\"]}" : i == 10 ? "\"sliding_attention\","
                                                                   : "\"full_attention\",");
        SW_CHECK(parse_mod("qwen2-0.5b.json", buf, &c) == SW_EUNSUPPORTED);
        SW_CHECK(has("layer_types"));
    }
    SW_CHECK(parse_mod("qwen2-0.5b.json", "{\"layer_types\": [\"full_attention\"]}", &c) ==
             SW_EFORMAT);
    SW_CHECK(has("layer_types"));
}

static void test_architectures_only(void)
{
    sw_model_config_t c;

    SW_CHECK_OK(parse_mod("tinyllama-1.1b.json", "{\"model_type\": \"DELETE\"}", &c));
    SW_CHECK(c.arch == SW_ARCH_LLAMA && strcmp(c.model_type, "llama") == 0);
    SW_CHECK_OK(parse_mod("mistral-7b-v0.1.json", "{\"model_type\": \"DELETE\"}", &c));
    SW_CHECK(c.arch == SW_ARCH_MISTRAL && strcmp(c.model_type, "mistral") == 0);
    SW_CHECK_OK(parse_mod("qwen2-0.5b.json", "{\"model_type\": \"DELETE\"}", &c));
    SW_CHECK(c.arch == SW_ARCH_QWEN2 && strcmp(c.model_type, "qwen2") == 0);
    SW_CHECK(parse_mod("tinyllama-1.1b.json", "{\"model_type\": \"DELETE\", "
                       "\"architectures\": [\"GemmaForCausalLM\"]}", &c) == SW_EUNSUPPORTED);
    SW_CHECK(has("GemmaForCausalLM") && has("LlamaForCausalLM"));
    SW_CHECK(parse_mod("tinyllama-1.1b.json", "{\"model_type\": \"DELETE\", "
                       "\"architectures\": \"DELETE\"}", &c) == SW_EFORMAT);
    SW_CHECK(has("model_type"));
    SW_CHECK(parse_mod("tinyllama-1.1b.json", "{\"model_type\": \"DELETE\", "
                       "\"architectures\": []}", &c) == SW_EFORMAT);
    SW_CHECK(has("architectures"));
}

static void test_linear_old_type_key(void)
{
    sw_model_config_t c;

    SW_CHECK_OK(parse_file("vicuna-7b-v1.5-16k-linear.json", &c));
    SW_CHECK(c.arch == SW_ARCH_LLAMA && c.vocab_size == 32000 && c.head_dim == 128);
    SW_CHECK(c.max_position_embeddings == 4096 && c.num_kv_heads == 32);
    SW_CHECK(c.bos_token_id == 1 && c.eos_token_id == 2 && strcmp(c.torch_dtype, "float16") == 0);
    SW_CHECK(c.rope.type == SW_ROPE_LINEAR && c.rope.factor == 4.0 && c.rope.theta == 10000.0);
    SW_CHECK(c.rope.original_max_position_embeddings == 0);
    /* "rope_type" wins over "type" when both are there */
    SW_CHECK_OK(parse_mod("vicuna-7b-v1.5-16k-linear.json", "{\"rope_scaling\": {\"type\": "
                          "\"yarn\", \"rope_type\": \"linear\", \"factor\": 2}}", &c));
    SW_CHECK(c.rope.type == SW_ROPE_LINEAR && c.rope.factor == 2.0);
}

static void test_dynamic_config(void)
{
    sw_model_config_t c;

    SW_CHECK_OK(parse_file("tinyllama-dynamic.json", &c));
    SW_CHECK(c.rope.type == SW_ROPE_DYNAMIC && c.rope.factor == 2.0 && c.rope.theta == 10000.0);
    /* transformers' dynamic scaling starts above max_position_embeddings, whatever the config's
     * original_max_position_embeddings says */
    SW_CHECK(c.rope.original_max_position_embeddings == 2048);
    SW_CHECK_OK(parse_mod("tinyllama-dynamic.json", "{\"rope_scaling\": {\"rope_type\": "
                          "\"dynamic\", \"factor\": 2.0, \"original_max_position_embeddings\": 1024}}",
                          &c));
    SW_CHECK(c.rope.original_max_position_embeddings == 2048);
}

static void test_rope_spellings(void)
{
    sw_model_config_t a, b;

    /* 5.x: rope_theta inside rope_parameters; top-level rope_theta only as a fallback */
    SW_CHECK_OK(parse_mod("tinyllama-1.1b.json", "{\"rope_theta\": \"DELETE\", \"rope_scaling\": "
                          "\"DELETE\", \"rope_parameters\": {\"rope_type\": \"default\", "
                          "\"rope_theta\": 10000.0}}", &a));
    SW_CHECK_OK(parse_file("tinyllama-1.1b.json", &b));
    SW_CHECK(memcmp(&a, &b, sizeof(a)) == 0);
    SW_CHECK_OK(parse_mod("tinyllama-1.1b.json", "{\"rope_theta\": 20000, \"rope_parameters\": "
                          "{\"rope_type\": \"default\", \"rope_theta\": 30000}}", &a));
    SW_CHECK(a.rope.theta == 30000.0);
    SW_CHECK_OK(parse_mod("tinyllama-1.1b.json", "{\"rope_theta\": 20000, \"rope_parameters\": "
                          "{\"rope_type\": \"default\"}}", &a));
    SW_CHECK(a.rope.theta == 20000.0);
    /* 5.x linear spelling equals the 4.x one */
    SW_CHECK_OK(parse_mod("vicuna-7b-v1.5-16k-linear.json", "{\"rope_scaling\": \"DELETE\", "
                          "\"rope_parameters\": {\"rope_type\": \"linear\", \"factor\": 4.0, "
                          "\"rope_theta\": 10000.0}}", &a));
    SW_CHECK_OK(parse_file("vicuna-7b-v1.5-16k-linear.json", &b));
    SW_CHECK(memcmp(&a, &b, sizeof(a)) == 0);
    /* an empty rope_scaling falls through to rope_parameters, as in 5.x */
    SW_CHECK_OK(parse_mod("tinyllama-1.1b.json", "{\"rope_scaling\": {}, \"rope_parameters\": "
                          "{\"rope_type\": \"linear\", \"factor\": 3}}", &a));
    SW_CHECK(a.rope.type == SW_ROPE_LINEAR && a.rope.factor == 3.0);
    /* llama3 without original_max_position_embeddings: 5.x uses max_position_embeddings; a
     * top-level original_max_position_embeddings overrides */
    SW_CHECK_OK(parse_mod("tinyllama-1.1b.json", "{\"rope_scaling\": {\"rope_type\": \"llama3\", "
                          "\"factor\": 8, \"low_freq_factor\": 1, \"high_freq_factor\": 4}}", &a));
    SW_CHECK(a.rope.original_max_position_embeddings == 2048);
    SW_CHECK_OK(parse_mod("tinyllama-1.1b.json", "{\"original_max_position_embeddings\": 1024, "
                          "\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8, "
                          "\"low_freq_factor\": 1, \"high_freq_factor\": 4, "
                          "\"original_max_position_embeddings\": 512}}", &a));
    SW_CHECK(a.rope.original_max_position_embeddings == 1024);
    /* partial_rotary_factor of exactly 1 is plain RoPE */
    SW_CHECK_OK(parse_mod("tinyllama-1.1b.json", "{\"partial_rotary_factor\": 1.0}", &a));
    /* hidden_act swish is SiLU */
    SW_CHECK_OK(parse_mod("tinyllama-1.1b.json", "{\"hidden_act\": \"swish\"}", &a));
    /* Llama biases */
    SW_CHECK_OK(parse_mod("tinyllama-1.1b.json", "{\"attention_bias\": true, \"mlp_bias\": true}",
                          &a));
    SW_CHECK(a.attention_bias && a.o_bias && a.mlp_bias);
    /* absent optional keys take LlamaConfig defaults */
    SW_CHECK_OK(parse_mod("tinyllama-1.1b.json", "{\"rms_norm_eps\": \"DELETE\", "
                          "\"max_position_embeddings\": \"DELETE\", \"tie_word_embeddings\": "
                          "\"DELETE\", \"num_key_value_heads\": \"DELETE\", \"bos_token_id\": "
                          "\"DELETE\", \"eos_token_id\": [], \"torch_dtype\": \"DELETE\", "
                          "\"rope_theta\": \"DELETE\"}", &a));
    SW_CHECK(a.rms_norm_eps == 1e-6f && a.max_position_embeddings == 2048);
    SW_CHECK(!a.tie_word_embeddings && a.num_kv_heads == 32);
    SW_CHECK(a.bos_token_id == -1 && a.eos_token_id == -1 && a.torch_dtype[0] == '\0');
    SW_CHECK(a.rope.theta == 10000.0);
}

/* ---- refusals ---- */

static void test_refused_architectures(void)
{
    sw_model_config_t c;

    memset(&c, 0x5a, sizeof(c));
    SW_CHECK(parse_file("bad-gpt2.json", &c) == SW_EUNSUPPORTED);
    SW_CHECK(has("gpt2") && has("llama") && has("mistral") && has("qwen2"));
    SW_CHECK(c.vocab_size == 0x5a5a5a5a); /* untouched on failure */
    SW_CHECK(parse_file("bad-falcon-7b.json", &c) == SW_EUNSUPPORTED);
    SW_CHECK(has("falcon") && has("bad-falcon-7b.json"));
    SW_CHECK(parse_mod("mistral-7b-v0.1.json", "{\"model_type\": \"mixtral\"}", &c) ==
             SW_EUNSUPPORTED);
    SW_CHECK(has("mixtral"));
    SW_CHECK(parse_mod("tinyllama-1.1b.json", "{\"model_type\": \"gemma\"}", &c) == SW_EUNSUPPORTED);
    SW_CHECK(has("gemma"));
    /* a hostile name is shortened and made printable in the message */
    SW_CHECK(parse_str("{\"model_type\": \"x\\u001b[31mAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"}",
                       &c) == SW_EUNSUPPORTED);
    SW_CHECK(strchr(sw_err_detail(), 0x1b) == NULL && has("..."));
    SW_CHECK(parse_mod("tinyllama-1.1b.json", "{\"hidden_act\": \"gelu\"}", &c) == SW_EUNSUPPORTED);
    SW_CHECK(has("hidden_act") && has("gelu"));
    SW_CHECK(parse_mod("tinyllama-1.1b.json", "{\"torch_dtype\": \"float8_e4m3fn\"}", &c) ==
             SW_EUNSUPPORTED);
    SW_CHECK(has("float8_e4m3fn"));
}

static void test_refused_rope(void)
{
    sw_model_config_t c;

    SW_CHECK(parse_file("bad-qwen2.5-7b-yarn.json", &c) == SW_EUNSUPPORTED);
    SW_CHECK(has("yarn") && has("llama3"));
    SW_CHECK(parse_mod("tinyllama-1.1b.json", "{\"rope_scaling\": {\"type\": \"su\", "
                       "\"short_factor\": [1], \"long_factor\": [2]}}", &c) == SW_EUNSUPPORTED);
    SW_CHECK(has("\"su\""));
    SW_CHECK(parse_mod("tinyllama-1.1b.json", "{\"rope_scaling\": {\"rope_type\": \"longrope\", "
                       "\"factor\": 4}}", &c) == SW_EUNSUPPORTED);
    SW_CHECK(has("longrope"));
    SW_CHECK(parse_mod("tinyllama-1.1b.json", "{\"rope_parameters\": {\"rope_type\": \"yarn\", "
                       "\"factor\": 4, \"rope_theta\": 10000}}", &c) == SW_EUNSUPPORTED);
    SW_CHECK(has("yarn") && has("rope_parameters"));
    SW_CHECK(parse_mod("tinyllama-1.1b.json", "{\"partial_rotary_factor\": 0.5}", &c) ==
             SW_EUNSUPPORTED);
    SW_CHECK(has("partial_rotary_factor"));
    SW_CHECK(parse_mod("tinyllama-1.1b.json", "{\"rope_parameters\": {\"rope_type\": \"default\", "
                       "\"partial_rotary_factor\": 0.25}}", &c) == SW_EUNSUPPORTED);
    SW_CHECK(has("partial_rotary_factor"));
    SW_CHECK(parse_mod("tinyllama-1.1b.json", "{\"rope_parameters\": {\"full_attention\": "
                       "{\"rope_type\": \"default\"}, \"sliding_attention\": {\"rope_type\": "
                       "\"default\"}}}", &c) == SW_EUNSUPPORTED);
    SW_CHECK(has("per-layer"));
}

static void test_malformed_files(void)
{
    sw_model_config_t c;

    SW_CHECK(parse_file("bad-heads-kv.json", &c) == SW_EFORMAT);
    SW_CHECK(has("num_key_value_heads") && has("32") && has("5"));
    SW_CHECK(parse_file("bad-negative-hidden.json", &c) == SW_EFORMAT);
    SW_CHECK(has("hidden_size") && has("-2048"));
    SW_CHECK(parse_file("bad-hidden-string.json", &c) == SW_EFORMAT);
    SW_CHECK(has("hidden_size") && has("string"));
    SW_CHECK(parse_file("bad-truncated.json", &c) == SW_EFORMAT);
    SW_CHECK(has("bad-truncated.json") && has("line"));
    SW_CHECK(parse_file("bad-huge-vocab.json", &c) == SW_EFORMAT);
    SW_CHECK(has("vocab_size"));
}

/* Each entry: modifications of tinyllama-1.1b.json, and a word the detail must contain. */
static void test_malformed_values(void)
{
    static const struct { const char *mods, *word; } cases[] = {
        {"{\"vocab_size\": \"DELETE\"}", "vocab_size"},
        {"{\"vocab_size\": 0}", "vocab_size"},
        {"{\"vocab_size\": 16777217}", "vocab_size"},
        {"{\"hidden_size\": 65537}", "hidden_size"},
        {"{\"hidden_size\": 2048.5}", "hidden_size"},
        {"{\"intermediate_size\": 1048577}", "intermediate_size"},
        {"{\"intermediate_size\": null}", "intermediate_size"},
        {"{\"num_hidden_layers\": 1025}", "num_hidden_layers"},
        {"{\"num_hidden_layers\": true}", "num_hidden_layers"},
        {"{\"num_attention_heads\": 0}", "num_attention_heads"},
        {"{\"num_attention_heads\": 2048}", "num_attention_heads"},
        {"{\"num_key_value_heads\": 64}", "num_key_value_heads"},
        {"{\"num_key_value_heads\": 0}", "num_key_value_heads"},
        {"{\"num_attention_heads\": 30}", "num_attention_heads"},
        {"{\"head_dim\": 63}", "head"},
        {"{\"head_dim\": 2048}", "head_dim"},
        {"{\"head_dim\": \"64\"}", "head_dim"},
        {"{\"hidden_size\": 2046, \"num_attention_heads\": 2, \"num_key_value_heads\": 2}", "head"},
        {"{\"max_position_embeddings\": 0}", "max_position_embeddings"},
        {"{\"max_position_embeddings\": 1e9}", "max_position_embeddings"},
        {"{\"rms_norm_eps\": 0}", "rms_norm_eps"},
        {"{\"rms_norm_eps\": -1e-5}", "rms_norm_eps"},
        {"{\"rms_norm_eps\": \"1e-5\"}", "rms_norm_eps"},
        {"{\"tie_word_embeddings\": 1}", "tie_word_embeddings"},
        {"{\"attention_bias\": \"false\"}", "attention_bias"},
        {"{\"bos_token_id\": 32000}", "bos_token_id"},
        {"{\"eos_token_id\": [-1]}", "eos_token_id"},
        {"{\"eos_token_id\": [\"2\"]}", "eos_token_id"},
        {"{\"torch_dtype\": 16}", "torch_dtype"},
        {"{\"model_type\": 7}", "model_type"},
        {"{\"rope_theta\": 0}", "rope_theta"},
        {"{\"rope_theta\": -10000}", "rope_theta"},
        {"{\"rope_theta\": 1e300}", "rope_theta"},
        {"{\"rope_theta\": \"10000\"}", "rope_theta"},
        {"{\"rope_scaling\": \"linear\"}", "rope_scaling"},
        {"{\"rope_parameters\": [1]}", "rope_parameters"},
        {"{\"rope_scaling\": {\"type\": 1}}", "rope_scaling.type"},
        {"{\"rope_scaling\": {\"type\": \"linear\"}}", "rope_scaling.factor"},
        {"{\"rope_scaling\": {\"type\": \"linear\", \"factor\": \"2\"}}", "rope_scaling.factor"},
        {"{\"rope_scaling\": {\"type\": \"linear\", \"factor\": 0}}", "rope_scaling.factor"},
        {"{\"rope_scaling\": {\"type\": \"dynamic\", \"factor\": -2}}", "rope_scaling.factor"},
        {"{\"rope_scaling\": {\"type\": \"dynamic\", \"factor\": 1e6}}", "rope_scaling.factor"},
        {"{\"rope_parameters\": {\"rope_type\": \"linear\", \"factor\": 2, \"rope_theta\": -1}}",
         "rope_parameters.rope_theta"},
        {"{\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8, \"high_freq_factor\": 4}}",
         "low_freq_factor"},
        {"{\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8, \"low_freq_factor\": 1}}",
         "high_freq_factor"},
        {"{\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8, \"low_freq_factor\": 4, "
         "\"high_freq_factor\": 4}}", "high_freq_factor"},
        {"{\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8, \"low_freq_factor\": 1, "
         "\"high_freq_factor\": 4, \"original_max_position_embeddings\": 0}}",
         "original_max_position_embeddings"},
        {"{\"partial_rotary_factor\": \"half\"}", "partial_rotary_factor"},
        {"{\"hidden_size\": 64, \"num_attention_heads\": 32, \"num_key_value_heads\": 4, "
         "\"rope_scaling\": {\"type\": \"dynamic\", \"factor\": 2}}", "dynamic"},
    };
    sw_model_config_t c;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int r = parse_mod("tinyllama-1.1b.json", cases[i].mods, &c);
        SW_CHECKF(r == SW_EFORMAT, "case %zu %s returned %d (%s)", i, cases[i].mods, r,
                  sw_err_detail());
        SW_CHECKF(strstr(sw_err_detail(), cases[i].word) &&
                  strstr(sw_err_detail(), "tinyllama-1.1b.json"),
                  "case %zu %s: detail \"%s\" lacks \"%s\"", i, cases[i].mods, sw_err_detail(),
                  cases[i].word);
    }
    SW_CHECK(parse_str("[1, 2]", &c) == SW_EFORMAT && has("object"));
    SW_CHECK(parse_str("", &c) == SW_EFORMAT);
    SW_CHECK(parse_str("{\"model_type\": \"llama\"}", &c) == SW_EFORMAT && has("vocab_size"));
    SW_CHECK(sw_model_config_parse("{\"model_type\": \"llama\"}garbage", 24, "cut", &c) ==
             SW_EFORMAT);
}

static void test_load(void)
{
    sw_model_config_t c;
    char dir[] = "/tmp/test-config-XXXXXX", path[64];
    long live = sw_alloc_live();
    FILE *f;

    SW_CHECK(mkdtemp(dir) != NULL);
    snprintf(path, sizeof(path), "%s/config.json", dir);
    SW_CHECK(sw_model_config_load(dir, &c) == -ENOENT && has("config.json"));
    f = fopen(path, "w");
    SW_CHECK(f != NULL);
    fputs("{\"model_type\": \"qwen2\", \"vocab_size\": 100, \"hidden_size\": 64, "
          "\"intermediate_size\": 128, \"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
          "\"num_key_value_heads\": 2}", f);
    fclose(f);
    SW_CHECK_OK(sw_model_config_load(dir, &c));
    SW_CHECK(c.arch == SW_ARCH_QWEN2 && c.head_dim == 16 && c.max_position_embeddings == 32768);
    /* every allocation failing in turn: an error (first the path, then the file buffer: ENOMEM),
     * never a crash or a leak */
    for (long n = 0; n < 1000; n++) {
        sw_alloc_fail_after(n);
        int r = sw_model_config_load(dir, &c);
        sw_alloc_fail_after(-1);
        if (r == 0)
            break;
        SW_CHECK(r < 0);
        if (n < 2)
            SW_CHECK(r == -ENOMEM);
    }
    SW_CHECK(sw_alloc_live() == live);
    unlink(path);
    rmdir(dir);
}

static void write_config(const char *dir, const char *text)
{
    char path[128];
    FILE *f;

    snprintf(path, sizeof(path), "%s/config.json", dir);
    if ((f = fopen(path, "w"))) {
        fputs(text, f);
        fclose(f);
    }
}

/* sw_model_swarm_name: _name_or_path's last part, else the directory's; punctuation -> '-'. */
static void test_swarm_name(void)
{
    char dir[] = "/tmp/test-swarm-name-XXXXXX", sub[96], path[128], name[128];

    SW_CHECK(mkdtemp(dir) != NULL);
    snprintf(sub, sizeof(sub), "%s/my.model v2", dir);
    SW_CHECK(mkdir(sub, 0700) == 0);
    SW_CHECK_OK(sw_model_swarm_name(sub, name, sizeof(name))); /* no config.json: the directory */
    SW_CHECK(strcmp(name, "my-model-v2") == 0);
    write_config(sub, "{\"_name_or_path\": \"meta-llama/Llama-2-7b.hf\", \"model_type\": \"llama\"}");
    SW_CHECK_OK(sw_model_swarm_name(sub, name, sizeof(name)));
    SW_CHECK(strcmp(name, "Llama-2-7b-hf") == 0);
    write_config(sub, "{\"_name_or_path\": \"\"}"); /* empty: the directory */
    SW_CHECK_OK(sw_model_swarm_name(sub, name, sizeof(name)));
    SW_CHECK(strcmp(name, "my-model-v2") == 0);
    write_config(sub, "{\"_name_or_path\": \"/models/Qwen2.5-0.5B/\"}"); /* trailing slash */
    SW_CHECK_OK(sw_model_swarm_name(sub, name, sizeof(name)));
    SW_CHECK(strcmp(name, "Qwen2-5-0-5B") == 0);
    write_config(sub, "{\"_name_or_path\": 7}"); /* not a string: the directory */
    SW_CHECK_OK(sw_model_swarm_name(sub, name, sizeof(name)));
    SW_CHECK(strcmp(name, "my-model-v2") == 0);
    write_config(sub, "not json");
    SW_CHECK_OK(sw_model_swarm_name(sub, name, sizeof(name)));
    SW_CHECK(strcmp(name, "my-model-v2") == 0);
    {
        char big[400];
        memset(big, 'a', sizeof(big));
        memcpy(big, "{\"_name_or_path\": \"", 19);
        memcpy(big + sizeof(big) - 3, "\"}", 3);
        write_config(sub, big);
        SW_CHECK_OK(sw_model_swarm_name(sub, name, sizeof(name)));
        SW_CHECK(strlen(name) == 99); /* at most 99 bytes */
    }
    SW_CHECK(sw_model_swarm_name(sub, name, 1) == SW_EUSAGE);
    snprintf(path, sizeof(path), "%s/config.json", sub);
    unlink(path);
    rmdir(sub);
    rmdir(dir);
}

static void test_names(void)
{
    SW_CHECK(strcmp(sw_arch_name(SW_ARCH_LLAMA), "llama") == 0);
    SW_CHECK(strcmp(sw_arch_name(SW_ARCH_MISTRAL), "mistral") == 0);
    SW_CHECK(strcmp(sw_arch_name(SW_ARCH_QWEN2), "qwen2") == 0);
    SW_CHECK(strcmp(sw_rope_type_name(SW_ROPE_DEFAULT), "default") == 0);
    SW_CHECK(strcmp(sw_rope_type_name(SW_ROPE_LINEAR), "linear") == 0);
    SW_CHECK(strcmp(sw_rope_type_name(SW_ROPE_DYNAMIC), "dynamic") == 0);
    SW_CHECK(strcmp(sw_rope_type_name(SW_ROPE_LLAMA3), "llama3") == 0);
}

/* ---- RoPE frequencies ---- */

static void test_inv_freq_default(void)
{
    static const char *const files[] = {"smollm-135m.json", "qwen2-0.5b.json", "llama-2-7b.json",
                                        "mistral-7b-v0.1.json"};
    float inv[512], af = 0;
    double ref[512];
    sw_model_config_t c;

    for (size_t k = 0; k < sizeof(files) / sizeof(files[0]); k++) {
        SW_CHECK_OK(parse_file(files[k], &c));
        sw_rope_inv_freq(&c, 100, inv, &af);
        ref_default(c.rope.theta, c.head_dim, ref);
        SW_CHECK(af == 1.0f && inv[0] == 1.0f);
        SW_CHECKF(max_rel(inv, ref, c.head_dim / 2) < 1e-6, "%s: %g", files[k],
                  max_rel(inv, ref, c.head_dim / 2));
        /* seq_len does not matter for default */
        float again[512];
        sw_rope_inv_freq(&c, 1 << 20, again, NULL);
        SW_CHECK(memcmp(inv, again, sizeof(float) * (size_t)c.head_dim / 2) == 0);
    }
}

static void test_inv_freq_linear(void)
{
    float inv[512], af = 0;
    double ref[512];
    sw_model_config_t c;

    SW_CHECK_OK(parse_file("vicuna-7b-v1.5-16k-linear.json", &c));
    sw_rope_inv_freq(&c, 16384, inv, &af);
    ref_default(10000.0, 128, ref);
    for (int i = 0; i < 64; i++)
        ref[i] /= 4.0;
    SW_CHECK(af == 1.0f && inv[0] == 0.25f);
    SW_CHECKF(max_rel(inv, ref, 64) < 1e-6, "%g", max_rel(inv, ref, 64));
    /* a factor that is not a power of two */
    SW_CHECK_OK(parse_mod("vicuna-7b-v1.5-16k-linear.json",
                          "{\"rope_scaling\": {\"type\": \"linear\", \"factor\": 3.3}}", &c));
    sw_rope_inv_freq(&c, 1, inv, &af);
    ref_default(10000.0, 128, ref);
    for (int i = 0; i < 64; i++)
        ref[i] /= 3.3;
    SW_CHECKF(max_rel(inv, ref, 64) < 1e-6, "%g", max_rel(inv, ref, 64));
}

static void test_inv_freq_llama3(void)
{
    static const char *const files[] = {"llama-3.1-8b.json", "llama-3.2-1b-instruct-5x.json"};
    float inv[512], af = 0;
    double ref[512];
    sw_model_config_t c;

    for (size_t k = 0; k < sizeof(files) / sizeof(files[0]); k++) {
        int n, lo = 0, mid = 0, hi = 0;
        SW_CHECK_OK(parse_file(files[k], &c));
        n = c.head_dim / 2;
        sw_rope_inv_freq(&c, 5, inv, &af);
        ref_llama3(c.rope.theta, c.head_dim, c.rope.factor, c.rope.low_freq_factor,
                   c.rope.high_freq_factor, c.rope.original_max_position_embeddings, ref);
        SW_CHECK(af == 1.0f);
        SW_CHECKF(max_rel(inv, ref, n) < 1e-6, "%s: %g", files[k], max_rel(inv, ref, n));
        /* all three regions are exercised */
        for (int i = 0; i < n; i++) {
            double w = 2 * M_PI / (1.0 / pow(c.rope.theta, 2.0 * i / c.head_dim));
            lo += w > 8192, hi += w < 2048, mid += w >= 2048 && w <= 8192;
        }
        SW_CHECK(lo > 0 && mid > 0 && hi > 0);
    }
}

static void test_inv_freq_dynamic(void)
{
    static const int64_t below[] = {1, 100, 2047, 2048};
    static const int64_t above[] = {2049, 3000, 4096, 10000, 100000};
    float inv[512], def[512], af = 0;
    double ref[512];
    sw_model_config_t c, d;

    SW_CHECK_OK(parse_file("tinyllama-dynamic.json", &c));
    SW_CHECK_OK(parse_file("tinyllama-1.1b.json", &d));
    sw_rope_inv_freq(&d, 1, def, NULL);
    /* at or below max_position_embeddings: exactly the unscaled frequencies */
    for (size_t k = 0; k < sizeof(below) / sizeof(below[0]); k++) {
        sw_rope_inv_freq(&c, below[k], inv, &af);
        SW_CHECK(af == 1.0f && memcmp(inv, def, 32 * sizeof(float)) == 0);
    }
    /* above: NTK-scaled base, lower frequencies as seq_len grows */
    float prev[32];
    memcpy(prev, def, sizeof(prev));
    for (size_t k = 0; k < sizeof(above) / sizeof(above[0]); k++) {
        sw_rope_inv_freq(&c, above[k], inv, &af);
        ref_dynamic(10000.0, 64, 2.0, (double)above[k], 2048.0, ref);
        SW_CHECK(af == 1.0f && inv[0] == 1.0f);
        SW_CHECKF(max_rel(inv, ref, 32) < 1e-6, "seq_len %lld: %g", (long long)above[k],
                  max_rel(inv, ref, 32));
        for (int i = 1; i < 32; i++)
            SW_CHECK(inv[i] < prev[i]);
        memcpy(prev, inv, sizeof(prev));
    }
    /* transformers' state: grow past the cached length, keep it for shorter long forwards,
     * reset below max_position_embeddings */
    {
        static const int64_t seq[] = {100, 2049, 3000, 100, 2500, 2100, 2048, 2047, 4000};
        static const int64_t want[] = {2048, 2049, 3000, 2048, 2500, 2500, 2500, 2048, 4000};
        int64_t state = 0;
        for (size_t k = 0; k < sizeof(seq) / sizeof(seq[0]); k++)
            SW_CHECKF(sw_rope_dynamic_len(&c, &state, seq[k]) == want[k], "step %zu", k);
        sw_rope_inv_freq(&c, sw_rope_dynamic_len(&c, &state, 100), inv, NULL);
        SW_CHECK(memcmp(inv, def, 32 * sizeof(float)) == 0);
    }
    /* out-of-range seq_len is clamped, never UB */
    sw_rope_inv_freq(&c, INT64_MAX, inv, NULL);
    sw_rope_inv_freq(&c, -5, inv, NULL);
    SW_CHECK(memcmp(inv, def, 32 * sizeof(float)) == 0);
}

int main(void)
{
    long live = sw_alloc_live();

    SW_RUN(test_llama2_7b);
    SW_RUN(test_llama31_8b);
    SW_RUN(test_llama32_4x_5x_same);
    SW_RUN(test_mistral_7b);
    SW_RUN(test_mistral_defaults);
    SW_RUN(test_tinyllama);
    SW_RUN(test_smollm_135m);
    SW_RUN(test_qwen2_05b);
    SW_RUN(test_qwen2_sliding);
    SW_RUN(test_architectures_only);
    SW_RUN(test_linear_old_type_key);
    SW_RUN(test_dynamic_config);
    SW_RUN(test_rope_spellings);
    SW_RUN(test_refused_architectures);
    SW_RUN(test_refused_rope);
    SW_RUN(test_malformed_files);
    SW_RUN(test_malformed_values);
    SW_RUN(test_load);
    SW_RUN(test_names);
    SW_RUN(test_swarm_name);
    SW_RUN(test_inv_freq_default);
    SW_RUN(test_inv_freq_linear);
    SW_RUN(test_inv_freq_llama3);
    SW_RUN(test_inv_freq_dynamic);
    if (sw_alloc_live() != live) {
        fprintf(stderr, "leak: %ld allocations\n", sw_alloc_live() - live);
        sw_test_failed++;
    }
    return sw_test_summary("test-config");
}
