/*
 * fuzz-config.c - libFuzzer target for the config.json parser: any input either parses into a
 * config within the documented bounds or is refused; on success the RoPE frequencies are
 * computed for a few sequence lengths (below and above max_position_embeddings) and must be
 * finite and positive.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "pipeline/config.h"
#include "util/alloc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const int64_t lens[] = {1, 4096, 131073, INT64_MAX};
    sw_model_config_t c;
    float *inv, af;

    if (sw_model_config_parse((const char *)data, size, "fuzz", &c) < 0)
        return 0;
    if (c.head_dim < 2 || c.head_dim > 1024 || c.head_dim % 2 || c.num_heads % c.num_kv_heads ||
        c.vocab_size < 1 || c.vocab_size > (1 << 24) || c.eos_token_id >= c.vocab_size ||
        c.sliding_window_first_layer > c.num_layers)
        abort();
    inv = sw_malloc(sizeof(float) * (size_t)(c.head_dim / 2));
    if (!inv)
        return 0;
    for (size_t k = 0; k < sizeof(lens) / sizeof(lens[0]); k++) {
        sw_rope_inv_freq(&c, lens[k], inv, &af);
        for (int i = 0; i < c.head_dim / 2; i++)
            if (!(inv[i] >= 0.0f) || isnan(inv[i]) || isinf(inv[i]) || af != 1.0f)
                abort();
    }
    int64_t state = 0;
    sw_rope_inv_freq(&c, sw_rope_dynamic_len(&c, &state, c.max_position_embeddings + 1), inv, NULL);
    sw_free(inv);
    return 0;
}
