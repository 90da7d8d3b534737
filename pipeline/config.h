/*
 * config.h - the model configuration (Hugging Face config.json) for the Llama family.
 *
 * Supported "model_type"/"architectures": llama (Llama 2/3.x, TinyLlama, SmolLM), mistral,
 * qwen2. Anything else is refused by name with SW_EUNSUPPORTED. Both RoPE spellings are read:
 * transformers 4.x (`rope_theta` + `rope_scaling` with "type" or "rope_type") and 5.x
 * (`rope_parameters` with "rope_type" and "rope_theta"). Every number is range-checked, so a
 * hostile config cannot drive a later allocation or index out of bounds.
 */
#ifndef SW_PIPELINE_CONFIG_H
#define SW_PIPELINE_CONFIG_H

#include <stddef.h>
#include <stdint.h>

typedef enum { SW_ARCH_LLAMA, SW_ARCH_MISTRAL, SW_ARCH_QWEN2 } sw_arch_t;

typedef enum {
    SW_ROPE_DEFAULT,
    SW_ROPE_LINEAR,
    SW_ROPE_DYNAMIC,
    SW_ROPE_LLAMA3,
} sw_rope_type_t;

typedef struct {
    sw_arch_t arch;
    char model_type[32];      /* as in config.json, e.g. "llama" */
    int vocab_size;           /* V */
    int hidden_size;          /* H */
    int intermediate_size;    /* I */
    int num_layers;           /* L */
    int num_heads;            /* NH */
    int num_kv_heads;         /* NKV; NH % NKV == 0 */
    int head_dim;             /* HD; explicit `head_dim` or H / NH; even */
    int max_position_embeddings;
    float rms_norm_eps;
    int tie_word_embeddings;
    int attention_bias;       /* q/k/v projections have biases (Qwen2: always; Llama: `attention_bias`) */
    int o_bias;               /* o_proj has a bias (Llama `attention_bias`; never for Qwen2) */
    int mlp_bias;             /* gate/up/down have biases (Llama `mlp_bias`) */
    int sliding_window;       /* W: key j is visible to query i iff i - W < j <= i; 0 = full attention */
    int sliding_window_first_layer; /* layers [this, L) use sliding_window, layers below it full
                                       attention (Qwen2 max_window_layers; 0 for Mistral; L when
                                       sliding_window == 0). See sw_model_layer_window(). */
    int bos_token_id, eos_token_id; /* -1 when absent; the first of a list */
    char torch_dtype[16];     /* "float32", "float16", "bfloat16", or "" */
    struct {
        sw_rope_type_t type;
        double theta;
        double factor;                   /* linear, dynamic, llama3 */
        double low_freq_factor;          /* llama3 */
        double high_freq_factor;         /* llama3 */
        int original_max_position_embeddings; /* llama3: the pretraining context; dynamic: the length
                                                  above which scaling starts, which transformers takes
                                                  from max_position_embeddings (never from a config
                                                  key of this name); 0 for default and linear */
    } rope;
} sw_model_config_t;

/*
 * Bounds every parsed config satisfies (hostile input is refused with SW_EFORMAT, well-formed
 * but unsupported features with SW_EUNSUPPORTED): 1 <= V <= 2^24, 1 <= H <= 65536,
 * 1 <= I <= 2^20, 1 <= L <= 1024, 1 <= NKV <= NH <= 1024, NH % NKV == 0, 2 <= HD <= 1024 and
 * even (HD >= 4 for dynamic RoPE), 1 <= max_position_embeddings <= 2^26, 0 < eps < 1,
 * 0 <= sliding_window <= 2^26, bos/eos in [-1, V), 1 <= theta <= 1e12, 0 < factor <= 1e4.
 * So products of any two sizes fit easily in int64 and NH * HD, NKV * HD fit in int.
 */

/*
 * Parses config JSON text (`len` bytes, need not be NUL-terminated). `what` names the source in
 * error details. On failure *cfg is left untouched and sw_err_detail() names the key and the
 * problem. Missing optional keys take transformers' defaults for the architecture.
 */
int sw_model_config_parse(const char *text, size_t len, const char *what, sw_model_config_t *cfg);
/* Loads `<dir>/config.json` (at most 1 MiB). */
int sw_model_config_load(const char *dir, sw_model_config_t *cfg);

/* The sliding window layer `layer` uses (0 = full attention). */
static inline int sw_model_layer_window(const sw_model_config_t *cfg, int layer)
{
    return layer >= cfg->sliding_window_first_layer ? cfg->sliding_window : 0;
}

/*
 * RoPE inverse frequencies (HD/2 values) and attention factor for a forward pass whose largest
 * position + 1 is seq_len, exactly as transformers computes them (fp32, same formulas). For
 * "dynamic" the result depends on seq_len; for the others it does not. attn_factor (may be NULL)
 * multiplies cos and sin; it is 1 for every type supported here.
 *
 * Dynamic NTK contract: for seq_len <= max_position_embeddings the result is the unscaled
 * default; above it, the frequencies transformers computes for that seq_len. This is what
 * transformers uses for a freshly loaded model whose forwards only grow (prefill, then decode
 * steps): each decode step past the threshold gets new frequencies while the keys already in
 * the KV cache keep the rotation they were stored with. transformers keeps state across
 * forwards, though: after a long forward, a shorter one that is still above the threshold
 * reuses the longer length's frequencies. To match it, pass
 * sw_rope_dynamic_len(cfg, &state, largest position + 1) as seq_len. seq_len is clamped to
 * [1, 2^40]. Within 2 ulp of transformers 5.17 on CUDA for dynamic, bit-exact for the others.
 */
void sw_rope_inv_freq(const sw_model_config_t *cfg, int64_t seq_len, float *inv_freq,
                      float *attn_factor);

/*
 * transformers' dynamic-RoPE state (dynamic_rope_update, 5.17): given the forward's seq_len
 * (largest position + 1), updates *cached (caller-owned, start it at 0; keep one per sequence,
 * i.e. per inference session, to match a fresh transformers model generating that sequence)
 * and returns the length to pass to sw_rope_inv_freq(). Grows when seq_len exceeds the cached
 * length, resets when seq_len drops below max_position_embeddings.
 */
int64_t sw_rope_dynamic_len(const sw_model_config_t *cfg, int64_t *cached, int64_t seq_len);

/*
 * The name a model goes by in a swarm (DHT keys "<name>.<block>"), the same on every machine that
 * holds the same checkpoint: the last component of config.json's "_name_or_path" (what
 * transformers records, e.g. "meta-llama/Llama-2-7b-hf" -> "Llama-2-7b-hf") when it has one,
 * else the directory's last component; '.' and characters other than letters, digits, '_' and
 * '-' become '-'; at most 99 bytes. --model-name overrides it in every command.
 */
int sw_model_swarm_name(const char *dir, char *out, size_t cap);

const char *sw_arch_name(sw_arch_t a);
const char *sw_rope_type_name(sw_rope_type_t t);

#endif
