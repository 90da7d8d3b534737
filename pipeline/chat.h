/*
 * chat.h - chat templates: a conversation of {role, content} messages rendered into the prompt
 * text a chat model was trained on, as the model's own Jinja chat_template renders it through
 * transformers' apply_chat_template(..., tokenize=False).
 *
 * Formats (no Jinja engine: each is written out in C, and tests/test-chat.sh compares the output
 * with the real templates rendered by a Jinja implementation):
 *
 *   llama2    <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s><s>[INST] ...
 *             (Llama-2-*-chat; user and assistant contents stripped, roles must alternate)
 *   llama3    <|begin_of_text|><|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>...
 *             (Meta-Llama-3-*-Instruct; contents stripped)
 *   llama3.1  as llama3, but the first turn is always a system turn that starts with
 *             "Cutting Knowledge Date: December 2023\nToday Date: {date}\n\n" (Llama 3.1/3.2/3.3)
 *   chatml    <|im_start|>{role}\n{content}<|im_end|>\n... (Qwen 2/2.5/3, SmolLM2, ...), with the
 *             template's default system prompt when the conversation has none (Qwen2.5: "You are
 *             Qwen, created by Alibaba Cloud. You are a helpful assistant."; Qwen3: none), and for
 *             Qwen3 its <think> handling of assistant turns.
 *
 * The rendered text holds the special tokens as text ("<s>", "<|im_start|>"): encode it with
 * sw_tokenizer_encode() WITHOUT SW_TOK_ADD_SPECIAL (the template already wrote the BOS where the
 * model wants one), which is what apply_chat_template(tokenize=True) does.
 *
 * Only the roles system, user and assistant are supported (no tools); contents are UTF-8 text.
 * "Stripped" means Python's str.strip(): Unicode whitespace as Python defines it.
 */
#ifndef SW_PIPELINE_CHAT_H
#define SW_PIPELINE_CHAT_H

#include <stddef.h>

typedef enum {
    SW_CHAT_LLAMA2 = 1,
    SW_CHAT_LLAMA3,
    SW_CHAT_CHATML,
} sw_chat_format_t;

#define SW_CHAT_TOKEN_MAX 64     /* longest bos/eos token string kept */
#define SW_CHAT_SYSTEM_MAX 1024  /* longest default system prompt kept */
#define SW_CHAT_TEMPLATE_MAX (1u << 20) /* longest chat_template string read */

/* A recognised template. Plain data: copy it freely; nothing to free. */
typedef struct {
    sw_chat_format_t format;
    char name[16];                  /* "llama2", "llama3", "llama3.1", "chatml", "qwen2.5", "qwen3" */
    char bos[SW_CHAT_TOKEN_MAX];    /* the bos_token the template writes; "" when it writes none */
    char eos[SW_CHAT_TOKEN_MAX];    /* the eos_token (Llama 2 ends assistant turns with it) */
    char default_system[SW_CHAT_SYSTEM_MAX]; /* chatml: system prompt when there is none; "" = none */
    int think;                      /* chatml: Qwen3's <think> handling of assistant turns */
    int gen_prompt_always;          /* llama3: the first Llama 3 template revision writes the
                                       assistant header even without add_generation_prompt */
    int knowledge_date;             /* llama3.1: the "Cutting Knowledge Date" system preamble */
    char date[32];                  /* llama3.1: "Today Date: " value; "" = today's local date
                                       as strftime("%d %b %Y") (templates using strftime_now) */
} sw_chat_template_t;

/* Names accepted by sw_chat_template_by_name(), for a --chat-template option's help text. */
#define SW_CHAT_TEMPLATE_NAMES "llama2, llama3, llama3.1, chatml, qwen2, qwen2.5, qwen3"

/*
 * The template called `name` (one of SW_CHAT_TEMPLATE_NAMES) with its usual tokens: llama2 <s> and
 * </s>; llama3/llama3.1 <|begin_of_text|> and <|end_of_text|> (llama3.1 with date "26 Jul 2024");
 * chatml without default system prompt; qwen2 "You are a helpful assistant."; qwen2.5 Qwen's;
 * qwen3 with think handling. Unknown name: SW_EUNSUPPORTED with the list in the detail.
 */
int sw_chat_template_by_name(const char *name, sw_chat_template_t *t);

/*
 * Recognises a Jinja chat_template string by the markers of each format and what it varies
 * (default system prompt literal, Qwen3's reasoning_content handling, the first Llama 3 revision
 * without add_generation_prompt, Llama 3.1's knowledge date and strftime_now). bos and eos are
 * the tokenizer's bos_token/eos_token strings (NULL: the format's usual ones). A template of
 * another format (Mistral's [INST] without <<SYS>>, Zephyr, Gemma, ChatML with other reasoning
 * handling, ...) gives SW_EUNSUPPORTED with a detail that names the --chat-template choices.
 * Recognition is by markers, not by running the template: a heavily customised template of a
 * known family may render differently from what is produced here.
 */
int sw_chat_template_detect(const char *jinja, const char *bos, const char *eos,
                            sw_chat_template_t *t);

/*
 * Reads tokenizer_config.json text (len bytes; `what` names it in errors): chat_template (a
 * string, or a list of {name, template} from which "default" is taken), bos_token and eos_token
 * (strings or {"content": ...}), then sw_chat_template_detect(). No chat_template: SW_EUNSUPPORTED
 * saying to pass --chat-template. Sizes are bounded; bad JSON or types give SW_EFORMAT.
 */
int sw_chat_template_parse_config(const char *json, size_t len, const char *what,
                                  sw_chat_template_t *t);

/* As above from a file: `path` is a model directory (its tokenizer_config.json) or the file. */
int sw_chat_template_load(const char *path, sw_chat_template_t *t);

typedef struct {
    const char *role;    /* "system", "user" or "assistant" */
    const char *content; /* NUL-terminated UTF-8 */
} sw_chat_msg_t;

/* Flags for rendering. */
enum {
    SW_CHAT_ADD_GENERATION_PROMPT = 1, /* end with the assistant turn's header (add_generation_prompt) */
    SW_CHAT_NO_THINKING = 2,           /* qwen3: enable_thinking=False (an empty <think> block
                                          after the generation prompt); ignored by other formats */
    SW_CHAT_EOT_IN_CONTEXT = 4,        /* render_next: the end-of-turn token that ended the last
                                          reply was already fed to the model */
};

/*
 * Renders msgs[0..n) (n >= 1) as the template does. Sets *out to a NUL-terminated string the
 * caller frees with sw_free() and *len to its length. Errors: -EINVAL (n == 0, NULL role or
 * content), SW_EUNSUPPORTED (a role other than system/user/assistant), SW_EFORMAT where the
 * template raises an exception (llama2: roles not alternating user/assistant after an optional
 * first system message), -ENOMEM.
 * Note for llama2: the template ignores add_generation_prompt; a prompt ending with a user turn
 * already ends with " [/INST]".
 */
int sw_chat_render(const sw_chat_template_t *t, const sw_chat_msg_t *msgs, size_t n,
                   unsigned flags, char **out, size_t *len);

/*
 * Multi-turn chat that keeps its session (KV cache) open: the text to feed after the model's
 * reply to the previous turn, so that only new tokens are sent. It closes the reply (Llama 2
 * " </s>", Llama 3 "<|eot_id|>", ChatML "<|im_end|>\n"; with SW_CHAT_EOT_IN_CONTEXT only what
 * follows the end-of-turn token, i.e. ChatML's "\n") and renders the new messages (system or
 * user, n >= 1; an assistant message gives SW_EUSAGE: render the whole conversation instead),
 * then the generation prompt if flagged. Contract, checked by the tests:
 *
 *   render(H + [assistant A] + N, flags) == render(H, flags | GEN) + reply(A) + render_next(N, flags)
 *
 * for any history H ending with a user turn, where reply(A) is the reply as the template writes
 * it: " " + strip(A) for llama2, strip(A) for llama3, A for chatml (qwen3: A without <think>; the
 * Qwen3 template drops earlier turns' reasoning from a full rendering, the open session keeps it).
 * Output ownership as for sw_chat_render().
 */
int sw_chat_render_next(const sw_chat_template_t *t, const sw_chat_msg_t *msgs, size_t n,
                        unsigned flags, char **out, size_t *len);

/*
 * The text of the token that ends an assistant turn: "</s>" (llama2: the eos token), "<|eot_id|>"
 * (llama3), "<|im_end|>" (chatml). A generation loop stops on its id (sw_tokenizer_token_id())
 * besides the model's EOS ids.
 */
const char *sw_chat_end_of_turn(const sw_chat_template_t *t);

#endif
