/*
 * fuzz-chat.c - libFuzzer target for the chat template and generation config readers
 * (pipeline/chat.h, pipeline/sampling.h): the input is tried as tokenizer_config.json text (a
 * recognised template then renders a fixed conversation), as generation_config.json and
 * config.json text (what parses must be within the documented bounds), and, split at NUL bytes,
 * as the contents of a conversation rendered by every named template (UTF-8 and <think> parsing
 * on hostile text). Every rendering must be NUL-terminated at its reported length.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pipeline/chat.h"
#include "pipeline/sampling.h"
#include "util/alloc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void render_all(const sw_chat_template_t *t, const sw_chat_msg_t *m, size_t n)
{
    static const unsigned flags[] = {0, SW_CHAT_ADD_GENERATION_PROMPT,
                                     SW_CHAT_ADD_GENERATION_PROMPT | SW_CHAT_NO_THINKING};
    char *out;
    size_t len;

    for (size_t f = 0; f < sizeof(flags) / sizeof(flags[0]); f++) {
        if (sw_chat_render(t, m, n, flags[f], &out, &len) == 0) {
            if (strlen(out) > len || out[len] != 0)
                abort();
            sw_free(out);
        }
        if (sw_chat_render_next(t, m, n, flags[f], &out, &len) == 0) {
            if (out[len] != 0)
                abort();
            sw_free(out);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *names[] = {"llama2", "llama3", "llama3.1", "chatml", "qwen2.5", "qwen3"};
    static const char *roles[] = {"system", "user", "assistant", "user", "assistant", "user"};
    sw_chat_msg_t fixed[] = {{"system", "s"}, {"user", "u"}, {"assistant", "<think>r</think>a"}, {"user", "v"}};
    sw_chat_msg_t m[6];
    sw_chat_template_t t;
    sw_generation_config_t g;
    char *text = sw_malloc(size + 1), *p;
    size_t n = 0;

    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = 0;
    if (sw_chat_template_parse_config(text, size, "fuzz", &t) == 0)
        render_all(&t, fixed, 4);
    for (int k = 0; k < 2; k++) {
        int r = k ? sw_generation_config_parse("{}", 2, text, size, 1000, &g)
                  : sw_generation_config_parse(text, size, NULL, 0, 1000, &g);
        if (r == 0) {
            if (g.n_eos < 0 || g.n_eos > SW_GEN_MAX_EOS || g.bos >= 1000 || g.max_new_tokens < 0 ||
                sw_sampler_params_check(&g.sampling) != 0)
                abort();
            for (int i = 0; i < g.n_eos; i++)
                if (g.eos[i] < 0 || g.eos[i] >= 1000)
                    abort();
        }
    }
    /* contents: the input split at NUL bytes, at most 6 messages */
    p = text;
    while (n < 6 && p <= text + size) {
        m[n].role = roles[(n + (size & 1)) % 6];
        m[n].content = p;
        n++;
        p += strlen(p) + 1;
    }
    for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++) {
        if (sw_chat_template_by_name(names[k], &t) != 0)
            abort();
        render_all(&t, m, n);
    }
    sw_free(text);
    return 0;
}
