/*
 * config.c - reads a Hugging Face config.json for the Llama family and computes RoPE frequencies
 * the way transformers does (see config.h for the contract).
 *
 * Where transformers' behaviour was checked against its source (modeling_rope_utils.py,
 * rope_config_utils.py, configuration_{llama,mistral,qwen2}.py, 4.4x and 5.x):
 *
 * - RoPE spellings. 5.x folds the 4.x keys into `rope_parameters`: the dict is `rope_scaling`
 *   when that is a non-empty object, else `rope_parameters`; its rope_type is "rope_type", else
 *   the old "type", else "default"; rope_theta comes from the dict, else top-level `rope_theta`,
 *   else 10000. For llama3, a top-level `original_max_position_embeddings` overrides the dict's
 *   and max_position_embeddings is the fallback (5.x; 4.x required the key in the dict).
 * - The rotary dim is head_dim (explicit) or H / NH; partial_rotary_factor != 1 is refused.
 * - attention_factor is 1.0 for default, linear, dynamic and llama3 (a config key of that name
 *   is ignored by transformers for these types, so it is here too).
 * - dynamic NTK uses max_position_embeddings both as threshold and in the formula; it never
 *   reads original_max_position_embeddings. transformers computes the frequencies at init with
 *   seq_len = max_position_embeddings (which gives exactly the default frequencies), and its
 *   forward (dynamic_rope_update) recomputes with seq_len = max(position_ids) + 1 as a 0-d
 *   tensor whenever that exceeds max_seq_len_cached (then caches that length), so that
 *   arithmetic runs in float32 on the device (CUDA divides by a Python scalar as a multiplication
 *   by its float32 reciprocal); it resets to the init frequencies when seq_len falls below
 *   max_position_embeddings while a longer length is cached. So a forward whose seq_len lies
 *   between max_position_embeddings and the cached length reuses the cached length's
 *   frequencies: sw_rope_dynamic_len() reproduces that state. (An earlier 5.x stored the cached
 *   length under a misspelt attribute; 5.17, which makes our fixtures, has it right.)
 *   Checked on the GPU machine against transformers 5.17 / torch 2.11: default, linear and
 *   llama3 match bit for bit; dynamic above the threshold within 2 ulp (CUDA's powf is not
 *   correctly rounded; we round a double pow).
 * - Qwen2: sliding_window only applies when use_sliding_window is true; then layers
 *   i >= max_window_layers slide (or per `layer_types` when given). Mistral applies
 *   sliding_window (default 4096 when the key is absent, none when null) to every layer.
 *   transformers' mask: key j visible to query i iff i - W < j <= i.
 * - Qwen2 has q/k/v biases always and no o_proj bias; Llama's attention_bias covers q/k/v/o.
 * - Defaults when a key is absent: num_key_value_heads = NH (llama), 8 (mistral), 32 (qwen2);
 *   null means NH for all. tie_word_embeddings false, rms_norm_eps 1e-6 for all three.
 *   5.x `dtype` wins over 4.x `torch_dtype`.
 */
#include "config.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "util/alloc.h"
#include "util/error.h"
#include "util/file.h"

/* Reproducing transformers' float32 arithmetic op by op requires that no multiply-add is fused. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#define FIX "; fix config.json or download it again"
#define SUPPORTED_ARCHS                                                                          \
    "swarmd runs model_type llama, mistral and qwen2 (LlamaForCausalLM, MistralForCausalLM, "    \
    "Qwen2ForCausalLM: Llama 2/3.x, TinyLlama, SmolLM, Mistral, Qwen2)"

#define MAX_VOCAB (1 << 24)
#define MAX_HIDDEN 65536
#define MAX_INTERMEDIATE (1 << 20)
#define MAX_LAYERS 1024
#define MAX_HEADS 1024
#define MAX_HEAD_DIM 1024
#define MAX_POSITIONS (1 << 26)
#define MAX_THETA 1e12
#define MAX_FACTOR 1e4
#define MAX_SEQ_LEN (1ll << 40)

static const struct {
    const char *model_type, *class_name;
    sw_arch_t arch;
    int default_nkv; /* transformers' default when num_key_value_heads is absent; 0 = NH */
    int default_max_pos;
} archs[] = {
    {"llama", "LlamaForCausalLM", SW_ARCH_LLAMA, 0, 2048},
    {"mistral", "MistralForCausalLM", SW_ARCH_MISTRAL, 8, 4096 * 32},
    {"qwen2", "Qwen2ForCausalLM", SW_ARCH_QWEN2, 32, 32768},
};

/* ---- JSON accessors: every one names the key and the source when the value is wrong ---- */

/* Copies at most 48 bytes of an untrusted string for an error message, replacing anything that
 * is not printable ASCII, so a hostile config cannot write control sequences to a terminal. */
static const char *printable(const char *s, char buf[64])
{
    size_t i;

    for (i = 0; s[i] && i < 48; i++)
        buf[i] = (s[i] >= 0x20 && s[i] < 0x7f && s[i] != '"') ? s[i] : '?';
    if (s[i])
        buf[i++] = '.', buf[i++] = '.', buf[i++] = '.';
    buf[i] = '\0';
    return buf;
}

static const char *type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "?";
}

/* The value of `key`, or NULL when it is absent or null. */
static json_t *get(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);

    return v && !json_is_null(v) ? v : NULL;
}

/* An integer in [lo, hi]; *out keeps its value when the key is absent or null. `pfx` is the
 * enclosing object's name with a trailing dot, or "". */
static int get_int(json_t *o, const char *pfx, const char *key, const char *what, long long lo,
                   long long hi, int *out)
{
    json_t *v = get(o, key);
    long long x;

    if (!v)
        return 0;
    if (!json_is_integer(v))
        return sw_err(SW_EFORMAT, "%s: \"%s%s\" must be an integer, not %s" FIX, what, pfx, key,
                      type_name(v));
    x = json_integer_value(v);
    if (x < lo || x > hi)
        return sw_err(SW_EFORMAT, "%s: \"%s%s\" is %lld, outside the valid range [%lld, %lld]" FIX,
                      what, pfx, key, x, lo, hi);
    *out = (int)x;
    return 0;
}

/* Like get_int(), but the key must be present. */
static int need_int(json_t *o, const char *key, const char *what, long long lo, long long hi,
                    int *out)
{
    if (!get(o, key))
        return sw_err(SW_EFORMAT, "%s: \"%s\" is missing; a Llama-family config.json has it" FIX,
                      what, key);
    return get_int(o, "", key, what, lo, hi, out);
}

/* A finite number (integer or real) in [lo, hi] (lo excluded when lo_open); *found says whether
 * the key was there. */
static int get_num(json_t *o, const char *pfx, const char *key, const char *what, double lo,
                   int lo_open, double hi, double *out, int *found)
{
    json_t *v = get(o, key);
    double x;

    *found = 0;
    if (!v)
        return 0;
    if (!json_is_number(v))
        return sw_err(SW_EFORMAT, "%s: \"%s%s\" must be a number, not %s" FIX, what, pfx, key,
                      type_name(v));
    x = json_number_value(v);
    if (!isfinite(x) || x > hi || x < lo || (lo_open && x == lo))
        return sw_err(SW_EFORMAT, "%s: \"%s%s\" is %g, outside the valid range %c%g, %g]" FIX,
                      what, pfx, key, x, lo_open ? '(' : '[', lo, hi);
    *out = x;
    *found = 1;
    return 0;
}

static int get_bool(json_t *o, const char *key, const char *what, int *out)
{
    json_t *v = get(o, key);

    if (!v)
        return 0;
    if (!json_is_boolean(v))
        return sw_err(SW_EFORMAT, "%s: \"%s\" must be true or false, not %s" FIX, what, key,
                      type_name(v));
    *out = json_is_true(v);
    return 0;
}

/* A string value, or NULL when absent or null. */
static int get_str(json_t *o, const char *pfx, const char *key, const char *what,
                   const char **out)
{
    json_t *v = get(o, key);

    *out = NULL;
    if (!v)
        return 0;
    if (!json_is_string(v))
        return sw_err(SW_EFORMAT, "%s: \"%s%s\" must be a string, not %s" FIX, what, pfx, key,
                      type_name(v));
    *out = json_string_value(v);
    return 0;
}

/* ---- the sections of config.json ---- */

static int parse_arch(json_t *root, const char *what, sw_model_config_t *c, size_t *idx)
{
    const char *mt, *cls = NULL;
    json_t *a;
    char b[64];
    int r;

    r = get_str(root, "", "model_type", what, &mt);
    if (r < 0)
        return r;
    if (!mt) {
        a = get(root, "architectures");
        if (!a)
            return sw_err(SW_EFORMAT, "%s: neither \"model_type\" nor \"architectures\" is set; "
                          "is this a Hugging Face config.json?" FIX, what);
        if (!json_is_array(a) || json_array_size(a) == 0 || !json_is_string(json_array_get(a, 0)))
            return sw_err(SW_EFORMAT, "%s: \"architectures\" must be a non-empty array of "
                          "strings" FIX, what);
        cls = json_string_value(json_array_get(a, 0));
    }
    for (size_t i = 0; i < sizeof(archs) / sizeof(archs[0]); i++) {
        if (mt ? strcmp(mt, archs[i].model_type) == 0 : strcmp(cls, archs[i].class_name) == 0) {
            c->arch = archs[i].arch;
            snprintf(c->model_type, sizeof(c->model_type), "%s", archs[i].model_type);
            *idx = i;
            return 0;
        }
    }
    return sw_err(SW_EUNSUPPORTED, "%s: %s \"%s\" is not supported; " SUPPORTED_ARCHS, what,
                  mt ? "model_type" : "architecture", printable(mt ? mt : cls, b));
}

static int parse_sizes(json_t *root, const char *what, size_t ai, sw_model_config_t *c)
{
    double eps = 1e-6;
    const char *act;
    char b[64];
    int r, found, nkv_default;

    if ((r = need_int(root, "vocab_size", what, 1, MAX_VOCAB, &c->vocab_size)) < 0 ||
        (r = need_int(root, "hidden_size", what, 1, MAX_HIDDEN, &c->hidden_size)) < 0 ||
        (r = need_int(root, "intermediate_size", what, 1, MAX_INTERMEDIATE,
                      &c->intermediate_size)) < 0 ||
        (r = need_int(root, "num_hidden_layers", what, 1, MAX_LAYERS, &c->num_layers)) < 0 ||
        (r = need_int(root, "num_attention_heads", what, 1, MAX_HEADS, &c->num_heads)) < 0)
        return r;

    nkv_default = archs[ai].default_nkv;
    if (!json_object_get(root, "num_key_value_heads") && nkv_default)
        c->num_kv_heads = nkv_default;
    else
        c->num_kv_heads = c->num_heads;
    if ((r = get_int(root, "", "num_key_value_heads", what, 1, MAX_HEADS, &c->num_kv_heads)) < 0)
        return r;
    if (c->num_kv_heads > c->num_heads || c->num_heads % c->num_kv_heads != 0)
        return sw_err(SW_EFORMAT, "%s: num_attention_heads (%d) must be a multiple of "
                      "num_key_value_heads (%d%s)" FIX, what, c->num_heads, c->num_kv_heads,
                      json_object_get(root, "num_key_value_heads") ? "" :
                      ", transformers' default for this model_type when the key is absent");

    if (get(root, "head_dim")) {
        if ((r = get_int(root, "", "head_dim", what, 2, MAX_HEAD_DIM, &c->head_dim)) < 0)
            return r;
    } else {
        if (c->hidden_size % c->num_heads != 0)
            return sw_err(SW_EFORMAT, "%s: hidden_size (%d) is not a multiple of "
                          "num_attention_heads (%d) and no head_dim is given" FIX, what,
                          c->hidden_size, c->num_heads);
        c->head_dim = c->hidden_size / c->num_heads;
    }
    if (c->head_dim % 2 != 0 || c->head_dim < 2 || c->head_dim > MAX_HEAD_DIM)
        return sw_err(SW_EFORMAT, "%s: head dimension %d must be even and in [2, %d] for RoPE" FIX,
                      what, c->head_dim, MAX_HEAD_DIM);

    c->max_position_embeddings = archs[ai].default_max_pos;
    if ((r = get_int(root, "", "max_position_embeddings", what, 1, MAX_POSITIONS,
                     &c->max_position_embeddings)) < 0)
        return r;
    if ((r = get_num(root, "", "rms_norm_eps", what, 1e-30, 0, 0.5, &eps, &found)) < 0)
        return r;
    c->rms_norm_eps = (float)eps;

    if ((r = get_str(root, "", "hidden_act", what, &act)) < 0)
        return r;
    if (act && strcmp(act, "silu") != 0 && strcmp(act, "swish") != 0)
        return sw_err(SW_EUNSUPPORTED, "%s: hidden_act \"%s\" is not supported; the Llama family "
                      "uses silu (SwiGLU)", what, printable(act, b));
    return get_bool(root, "tie_word_embeddings", what, &c->tie_word_embeddings);
}

/* Qwen2's per-layer attention pattern: `layer_types` when given, else max_window_layers. */
static int parse_qwen2_window(json_t *root, const char *what, sw_model_config_t *c)
{
    int use = 0, window = 4096, mwl = 28, r, first = -1;
    json_t *lt;

    if ((r = get_bool(root, "use_sliding_window", what, &use)) < 0)
        return r;
    if (json_object_get(root, "sliding_window") && json_is_null(json_object_get(root, "sliding_window")))
        window = 0;
    if ((r = get_int(root, "", "sliding_window", what, 1, MAX_POSITIONS, &window)) < 0 ||
        (r = get_int(root, "", "max_window_layers", what, 0, 1 << 30, &mwl)) < 0)
        return r;
    lt = get(root, "layer_types");
    if (lt) {
        if (!json_is_array(lt) || json_array_size(lt) != (size_t)c->num_layers)
            return sw_err(SW_EFORMAT, "%s: \"layer_types\" must be an array of num_hidden_layers "
                          "(%d) strings" FIX, what, c->num_layers);
        for (int i = 0; i < c->num_layers; i++) {
            const char *s = json_string_value(json_array_get(lt, (size_t)i));
            char b[64];
            if (!s)
                return sw_err(SW_EFORMAT, "%s: \"layer_types\"[%d] must be a string" FIX, what, i);
            if (strcmp(s, "sliding_attention") == 0) {
                if (first < 0)
                    first = i;
            } else if (strcmp(s, "full_attention") == 0) {
                if (first >= 0 && use && window)
                    return sw_err(SW_EUNSUPPORTED, "%s: \"layer_types\" puts a full attention "
                                  "layer (%d) after a sliding one (%d); swarmd supports sliding "
                                  "layers only at the end", what, i, first);
            } else {
                return sw_err(SW_EUNSUPPORTED, "%s: \"layer_types\"[%d] is \"%s\"; swarmd "
                              "supports full_attention and sliding_attention", what, i,
                              printable(s, b));
            }
        }
        if (first < 0)
            first = c->num_layers;
    } else {
        first = mwl < c->num_layers ? mwl : c->num_layers;
    }
    if (!use || !window || first >= c->num_layers) {
        c->sliding_window = 0;
        c->sliding_window_first_layer = c->num_layers;
    } else {
        c->sliding_window = window;
        c->sliding_window_first_layer = first;
    }
    return 0;
}

static int parse_attention(json_t *root, const char *what, sw_model_config_t *c)
{
    int r, bias = 0, mlp_bias = 0, window = 4096;

    c->sliding_window = 0;
    c->sliding_window_first_layer = c->num_layers;
    switch (c->arch) {
    case SW_ARCH_LLAMA:
        if ((r = get_bool(root, "attention_bias", what, &bias)) < 0 ||
            (r = get_bool(root, "mlp_bias", what, &mlp_bias)) < 0)
            return r;
        c->attention_bias = c->o_bias = bias;
        c->mlp_bias = mlp_bias;
        return 0;
    case SW_ARCH_MISTRAL:
        if (json_object_get(root, "sliding_window") &&
            json_is_null(json_object_get(root, "sliding_window")))
            window = 0;
        if ((r = get_int(root, "", "sliding_window", what, 1, MAX_POSITIONS, &window)) < 0)
            return r;
        if (window) {
            c->sliding_window = window;
            c->sliding_window_first_layer = 0;
        }
        return 0;
    case SW_ARCH_QWEN2:
        c->attention_bias = 1;
        return parse_qwen2_window(root, what, c);
    }
    return 0;
}

/* bos/eos: an integer, or a list whose first entry counts; -1 when absent, null or empty. */
static int parse_token(json_t *root, const char *key, const char *what, int vocab, int *out)
{
    json_t *v = get(root, key);

    *out = -1;
    if (v && json_is_array(v))
        v = json_array_size(v) ? json_array_get(v, 0) : NULL;
    if (!v)
        return 0;
    if (!json_is_integer(v))
        return sw_err(SW_EFORMAT, "%s: \"%s\" must be an integer or a list of integers, not %s"
                      FIX, what, key, type_name(v));
    if (json_integer_value(v) < 0 || json_integer_value(v) >= vocab)
        return sw_err(SW_EFORMAT, "%s: \"%s\" is %lld, outside the vocabulary [0, %d)" FIX, what,
                      key, (long long)json_integer_value(v), vocab);
    *out = (int)json_integer_value(v);
    return 0;
}

static int parse_tokens_dtype(json_t *root, const char *what, sw_model_config_t *c)
{
    static const char *const dtypes[] = {"float32", "float16", "bfloat16"};
    const char *d, *key = "dtype";
    char b[64];
    int r;

    if ((r = parse_token(root, "bos_token_id", what, c->vocab_size, &c->bos_token_id)) < 0 ||
        (r = parse_token(root, "eos_token_id", what, c->vocab_size, &c->eos_token_id)) < 0)
        return r;
    if ((r = get_str(root, "", "dtype", what, &d)) < 0)
        return r;
    if (!d) {
        key = "torch_dtype";
        if ((r = get_str(root, "", key, what, &d)) < 0)
            return r;
    }
    if (!d)
        return 0;
    if (strncmp(d, "torch.", 6) == 0)
        d += 6;
    for (size_t i = 0; i < sizeof(dtypes) / sizeof(dtypes[0]); i++) {
        if (strcmp(d, dtypes[i]) == 0) {
            snprintf(c->torch_dtype, sizeof(c->torch_dtype), "%s", dtypes[i]);
            return 0;
        }
    }
    return sw_err(SW_EUNSUPPORTED, "%s: %s \"%s\" is not supported; swarmd loads float32, "
                  "float16 and bfloat16 checkpoints", what, key, printable(d, b));
}

static int parse_rope(json_t *root, const char *what, sw_model_config_t *c)
{
    static const struct { const char *name; sw_rope_type_t type; } types[] = {
        {"default", SW_ROPE_DEFAULT}, {"linear", SW_ROPE_LINEAR},
        {"dynamic", SW_ROPE_DYNAMIC}, {"llama3", SW_ROPE_LLAMA3},
    };
    json_t *rs = get(root, "rope_scaling"), *rp = get(root, "rope_parameters"), *d = NULL;
    const char *dname = "rope_parameters", *t = NULL;
    char pfx[32], b[64];
    double theta = 10000.0, prf = 1.0;
    int r, found, known = 0, orig;

    if (rs && !json_is_object(rs))
        return sw_err(SW_EFORMAT, "%s: \"rope_scaling\" must be an object or null, not %s" FIX,
                      what, type_name(rs));
    if (rp && !json_is_object(rp))
        return sw_err(SW_EFORMAT, "%s: \"rope_parameters\" must be an object or null, not %s" FIX,
                      what, type_name(rp));
    if (rs && json_object_size(rs) > 0) {
        d = rs;
        dname = "rope_scaling";
    } else if (rp) {
        d = rp;
    }
    snprintf(pfx, sizeof(pfx), "%s.", dname);
    if (d && (json_object_get(d, "full_attention") || json_object_get(d, "sliding_attention")))
        return sw_err(SW_EUNSUPPORTED, "%s: per-layer-type RoPE parameters in \"%s\" are not "
                      "supported; swarmd uses one RoPE for all layers", what, dname);

    if (d) {
        if ((r = get_str(d, pfx, "rope_type", what, &t)) < 0)
            return r;
        if (!t && (r = get_str(d, pfx, "type", what, &t)) < 0)
            return r;
    }
    if (!t)
        t = "default";
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        if (strcmp(t, types[i].name) == 0) {
            c->rope.type = types[i].type;
            known = 1;
        }
    }
    if (!known)
        return sw_err(SW_EUNSUPPORTED, "%s: RoPE type \"%s\" (%s) is not supported; swarmd "
                      "implements default, linear, dynamic and llama3", what, printable(t, b),
                      dname);

    /* theta: the dict's, else the top-level 4.x key, else transformers' default */
    found = 0;
    if (d && (r = get_num(d, pfx, "rope_theta", what, 1.0, 0, MAX_THETA, &theta, &found)) < 0)
        return r;
    if (!found && (r = get_num(root, "", "rope_theta", what, 1.0, 0, MAX_THETA, &theta,
                               &found)) < 0)
        return r;
    c->rope.theta = theta;

    if ((r = get_num(root, "", "partial_rotary_factor", what, 0.0, 1, 1.0, &prf, &found)) < 0)
        return r;
    if (!found && d &&
        (r = get_num(d, pfx, "partial_rotary_factor", what, 0.0, 1, 1.0, &prf, &found)) < 0)
        return r;
    if (prf != 1.0)
        return sw_err(SW_EUNSUPPORTED, "%s: partial_rotary_factor %g (RoPE on part of each head) "
                      "is not supported; swarmd rotates whole heads", what, prf);

    c->rope.factor = 1.0;
    c->rope.low_freq_factor = c->rope.high_freq_factor = 0.0;
    c->rope.original_max_position_embeddings = 0;
    if (c->rope.type == SW_ROPE_DEFAULT)
        return 0;

    if ((r = get_num(d, pfx, "factor", what, 0.0, 1, MAX_FACTOR, &c->rope.factor, &found)) < 0)
        return r;
    if (!found)
        return sw_err(SW_EFORMAT, "%s: \"%sfactor\" is missing; %s RoPE needs it" FIX, what, pfx,
                      t);
    if (c->rope.type == SW_ROPE_LINEAR)
        return 0;
    if (c->rope.type == SW_ROPE_DYNAMIC) {
        if (c->head_dim < 4)
            return sw_err(SW_EFORMAT, "%s: dynamic RoPE needs a head dimension of at least 4, "
                          "not %d" FIX, what, c->head_dim);
        c->rope.original_max_position_embeddings = c->max_position_embeddings;
        return 0;
    }

    /* llama3 */
    if ((r = get_num(d, pfx, "low_freq_factor", what, 0.0, 1, MAX_FACTOR,
                     &c->rope.low_freq_factor, &found)) < 0)
        return r;
    if (!found)
        return sw_err(SW_EFORMAT, "%s: \"%slow_freq_factor\" is missing; llama3 RoPE needs it"
                      FIX, what, pfx);
    if ((r = get_num(d, pfx, "high_freq_factor", what, 0.0, 1, MAX_FACTOR,
                     &c->rope.high_freq_factor, &found)) < 0)
        return r;
    if (!found)
        return sw_err(SW_EFORMAT, "%s: \"%shigh_freq_factor\" is missing; llama3 RoPE needs it"
                      FIX, what, pfx);
    if (!(c->rope.high_freq_factor > c->rope.low_freq_factor))
        return sw_err(SW_EFORMAT, "%s: \"%shigh_freq_factor\" (%g) must be greater than "
                      "low_freq_factor (%g)" FIX, what, pfx, c->rope.high_freq_factor,
                      c->rope.low_freq_factor);
    orig = c->max_position_embeddings;
    if (get(root, "original_max_position_embeddings"))
        r = get_int(root, "", "original_max_position_embeddings", what, 1, MAX_POSITIONS, &orig);
    else
        r = get_int(d, pfx, "original_max_position_embeddings", what, 1, MAX_POSITIONS, &orig);
    if (r < 0)
        return r;
    c->rope.original_max_position_embeddings = orig;
    return 0;
}

int sw_model_config_parse(const char *text, size_t len, const char *what, sw_model_config_t *cfg)
{
    sw_model_config_t c;
    json_t *root = NULL;
    size_t ai = 0;
    int r;

    memset(&c, 0, sizeof(c));
    r = sw_json_parse(text, len, what, &root);
    if (r < 0)
        return r;
    if (!json_is_object(root)) {
        r = sw_err(SW_EFORMAT, "%s: the top level must be a JSON object, not %s" FIX, what,
                   type_name(root));
        goto out;
    }
    if ((r = parse_arch(root, what, &c, &ai)) < 0 ||
        (r = parse_sizes(root, what, ai, &c)) < 0 ||
        (r = parse_attention(root, what, &c)) < 0 ||
        (r = parse_tokens_dtype(root, what, &c)) < 0 ||
        (r = parse_rope(root, what, &c)) < 0)
        goto out;
    memcpy(cfg, &c, sizeof(c));
out:
    json_decref(root);
    return r;
}

int sw_model_config_load(const char *dir, sw_model_config_t *cfg)
{
    char *path = sw_path_join(dir, "config.json"), *text = NULL;
    size_t len;
    int r;

    if (!path)
        return -ENOMEM;
    r = sw_file_read(path, 1u << 20, &text, &len);
    if (r == 0)
        r = sw_model_config_parse(text, len, path, cfg);
    sw_free(text);
    sw_free(path);
    return r;
}

/* ---- RoPE frequencies ---- */

/*
 * transformers' inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim)), all in
 * float32: the exponent is a float32 division, base is rounded to float32, the power is taken
 * in float32 (here computed in double and rounded once, which is within torch's 1 ulp), and
 * 1.0 / x is torch's float32 reciprocal. `exp_by_recip` makes the exponent i * (1/dim), as CUDA
 * computes a division by a Python scalar (identical for power-of-two dims).
 */
static void base_inv_freq(int dim, float base, int exp_by_recip, float *inv)
{
    float rdim = 1.0f / (float)dim;

    for (int i = 0; i < dim / 2; i++) {
        float e = exp_by_recip ? (float)(2 * i) * rdim : (float)(2 * i) / (float)dim;
        float p = (float)pow((double)base, (double)e);
        inv[i] = 1.0f / p;
    }
}

/*
 * _compute_llama3_parameters, op by op in float32 as torch runs it on the CPU at init:
 * `2 * math.pi / inv_freq` and `old_context_len / wavelen` are Tensor.__rtruediv__, i.e.
 * reciprocal() * scalar; Python scalars are rounded to float32 before each op.
 */
static void llama3_inv_freq(const sw_model_config_t *cfg, float *inv)
{
    const float factor = (float)cfg->rope.factor;
    const float low = (float)cfg->rope.low_freq_factor;
    const double old_ctx = (double)cfg->rope.original_max_position_embeddings;
    const float low_wavelen = (float)(old_ctx / cfg->rope.low_freq_factor);
    const float high_wavelen = (float)(old_ctx / cfg->rope.high_freq_factor);
    const float two_pi = (float)(2.0 * M_PI), old_ctx_f = (float)old_ctx;
    const float span = (float)(cfg->rope.high_freq_factor - cfg->rope.low_freq_factor);

    base_inv_freq(cfg->head_dim, (float)cfg->rope.theta, 0, inv);
    for (int i = 0; i < cfg->head_dim / 2; i++) {
        float f = inv[i];
        float wavelen = (1.0f / f) * two_pi;
        float llama = wavelen > low_wavelen ? f / factor : f;
        float smooth = ((1.0f / wavelen) * old_ctx_f - low) / span;
        float smoothed = (1.0f - smooth) * llama / factor + smooth * llama;
        int medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
        inv[i] = medium ? smoothed : llama;
    }
}

/*
 * _compute_dynamic_ntk_parameters for seq_len > max_position_embeddings, as it runs inside the
 * forward: seq_len is an int64 0-d tensor on the device, so
 *   base = theta * ((factor * seq_len / max_pos) - (factor - 1)) ** (dim / (dim - 2))
 * is float32 arithmetic, with the division by the Python int max_pos done as a multiplication
 * by its float32 reciprocal (CUDA's div-by-scalar); the frequencies follow from that float32
 * base on the device.
 */
static void dynamic_inv_freq(const sw_model_config_t *cfg, int64_t seq_len, float *inv)
{
    const int dim = cfg->head_dim;
    const float factor = (float)cfg->rope.factor;
    float t, base;

    t = factor * (float)seq_len;
    t = t * (1.0f / (float)cfg->max_position_embeddings);
    t = t - (float)(cfg->rope.factor - 1.0);
    t = (float)pow((double)t, (double)(float)((double)dim / (double)(dim - 2)));
    base = (float)cfg->rope.theta * t;
    base_inv_freq(dim, base, 1, inv);
}

void sw_rope_inv_freq(const sw_model_config_t *cfg, int64_t seq_len, float *inv_freq,
                      float *attn_factor)
{
    if (seq_len < 1)
        seq_len = 1;
    if (seq_len > MAX_SEQ_LEN)
        seq_len = MAX_SEQ_LEN;
    if (attn_factor)
        *attn_factor = 1.0f;
    switch (cfg->rope.type) {
    case SW_ROPE_DEFAULT:
        base_inv_freq(cfg->head_dim, (float)cfg->rope.theta, 0, inv_freq);
        return;
    case SW_ROPE_LINEAR:
        base_inv_freq(cfg->head_dim, (float)cfg->rope.theta, 0, inv_freq);
        for (int i = 0; i < cfg->head_dim / 2; i++)
            inv_freq[i] = inv_freq[i] / (float)cfg->rope.factor;
        return;
    case SW_ROPE_DYNAMIC:
        if (seq_len <= cfg->max_position_embeddings)
            base_inv_freq(cfg->head_dim, (float)cfg->rope.theta, 0, inv_freq);
        else
            dynamic_inv_freq(cfg, seq_len, inv_freq);
        return;
    case SW_ROPE_LLAMA3:
        llama3_inv_freq(cfg, inv_freq);
        return;
    }
}

int64_t sw_rope_dynamic_len(const sw_model_config_t *cfg, int64_t *cached, int64_t seq_len)
{
    const int64_t orig = cfg->max_position_embeddings;
    const int64_t before = *cached < orig ? orig : *cached;

    *cached = before;
    if (seq_len > before)
        *cached = seq_len; /* growth: recompute for this length */
    if (seq_len < orig && before > orig)
        *cached = orig; /* reset to the original frequencies */
    return *cached;
}

const char *sw_arch_name(sw_arch_t a)
{
    switch (a) {
    case SW_ARCH_LLAMA: return "llama";
    case SW_ARCH_MISTRAL: return "mistral";
    case SW_ARCH_QWEN2: return "qwen2";
    }
    return "unknown";
}

const char *sw_rope_type_name(sw_rope_type_t t)
{
    switch (t) {
    case SW_ROPE_DEFAULT: return "default";
    case SW_ROPE_LINEAR: return "linear";
    case SW_ROPE_DYNAMIC: return "dynamic";
    case SW_ROPE_LLAMA3: return "llama3";
    }
    return "unknown";
}

/* Copies the last '/'-separated component of s[0..len) into out as a swarm name: letters, digits,
 * '_' and '-' kept, '.' and anything else made '-'; at most cap - 1 bytes. Returns its length. */
static size_t name_component(const char *s, size_t len, char *out, size_t cap)
{
    const char *base;
    size_t n = 0;

    while (len > 1 && s[len - 1] == '/')
        len--;
    base = s + len;
    while (base > s && base[-1] != '/')
        base--;
    for (; base < s + len && n + 1 < cap; base++) {
        char ch = *base;
        out[n++] = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                   ch == '_' || ch == '-' ? ch : '-';
    }
    out[n] = '\0';
    return n;
}

int sw_model_swarm_name(const char *dir, char *out, size_t cap)
{
    char *path = sw_path_join(dir, "config.json");
    json_t *root = NULL, *v;
    size_t n = 0;

    if (cap < 2) {
        sw_free(path);
        return sw_err(SW_EUSAGE, "no room for a swarm name");
    }
    if (path && sw_json_load(path, 1u << 20, &root) == 0 && json_is_object(root) &&
        (v = json_object_get(root, "_name_or_path")) && json_is_string(v) && json_string_length(v) > 0)
        n = name_component(json_string_value(v), json_string_length(v), out, cap > 100 ? 100 : cap);
    json_decref(root);
    sw_free(path);
    if (n == 0 || strspn(out, "-") == n)
        n = name_component(dir, strlen(dir), out, cap > 100 ? 100 : cap);
    if (n == 0)
        return sw_err(SW_EUSAGE, "cannot derive a swarm name from '%s'; give --model-name", dir);
    return 0;
}
