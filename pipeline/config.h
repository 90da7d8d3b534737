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
    int sliding_window;       /* 0 = full attention */
    int bos_token_id, eos_token_id; /* -1 when absent; the first of a list */
    char torch_dtype[16];     /* "float32", "float16", "bfloat16", or "" */
    struct {
        sw_rope_type_t type;
        double theta;
        double factor;                   /* linear, dynamic, llama3 */
        double low_freq_factor;          /* llama3 */
        double high_freq_factor;         /* llama3 */
        int original_max_position_embeddings; /* llama3, dynamic (0 = max_position_embeddings) */
    } rope;
} sw_model_config_t;

/* Parses config JSON text (`len` bytes). `what` names the source in error details. */
int sw_model_config_parse(const char *text, size_t len, const char *what, sw_model_config_t *cfg);
/* Loads `<dir>/config.json`. */
int sw_model_config_load(const char *dir, sw_model_config_t *cfg);

/*
 * RoPE inverse frequencies (HD/2 values) and attention factor for a forward pass whose largest
 * position + 1 is seq_len, exactly as transformers computes them (fp32, same formulas). For
 * "dynamic" the result depends on seq_len; for the others it does not.
 */
void sw_rope_inv_freq(const sw_model_config_t *cfg, int64_t seq_len, float *inv_freq,
                      float *attn_factor);

const char *sw_arch_name(sw_arch_t a);
const char *sw_rope_type_name(sw_rope_type_t t);

#endif
