/*
 * tokenizer.h - Hugging Face `tokenizer.json` tokenizers: encode text to token ids and decode ids
 * back to text, streaming.
 *
 * Supported: BPE models, both byte-level (GPT-2, Llama 3, Qwen 2/3: ByteLevel pre-tokenizer, with the
 * GPT-2, Llama 3 or Qwen split regex) and SentencePiece-style (Llama 2, Mistral: Prepend/Replace
 * normalizers or the Metaspace pre-tokenizer, byte fallback to <0xNN> tokens); NFC; added and
 * special tokens, matched before normalization (leftmost-longest), honouring lstrip, rstrip,
 * single_word and normalized as the tokenizers library does; merges as "a b" strings or ["a", "b"]
 * pairs; the TemplateProcessing and ByteLevel post-processors; the ByteLevel, Metaspace, Replace,
 * ByteFallback, Fuse and Strip decoders. Anything else in a tokenizer.json is refused with
 * SW_EUNSUPPORTED and a detail naming the file and the component, never ignored.
 *
 * Encoding matches the tokenizers library (and transformers.js) id for id on the test corpus
 * (tests/test-tokenizer.sh). Decoding is what the tokenizers library's decoder produces, without
 * transformers' optional clean_up_tokenization_spaces; added tokens decode to their content.
 *
 * Input text is UTF-8. Invalid bytes are not refused: they pass through as units of no Unicode
 * class, so byte-level models encode them byte for byte and byte fallback gives <0xNN> tokens.
 *
 * A loaded tokenizer is immutable: any number of threads may encode and decode with it at once.
 * A decoder (sw_detok_t) belongs to one thread at a time.
 */
#ifndef SW_PIPELINE_TOKENIZER_H
#define SW_PIPELINE_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct sw_tokenizer sw_tokenizer_t;

/* Largest tokenizer.json accepted (the biggest public ones are ~35 MB) and largest vocabulary. */
#define SW_TOKENIZER_MAX_FILE (128u << 20)
#define SW_TOKENIZER_MAX_VOCAB (1u << 22)

/*
 * Loads `path`: a model directory holding tokenizer.json (and optionally tokenizer_config.json, for
 * the BOS/EOS tokens), or a tokenizer.json file (tokenizer_config.json is then looked for beside
 * it). On failure returns SW_EFORMAT / SW_EUNSUPPORTED / SW_ELIMIT / -errno with a detail naming
 * the file and the problem. The caller frees *out with sw_tokenizer_free().
 */
int sw_tokenizer_load(const char *path, sw_tokenizer_t **out);

/* As sw_tokenizer_load() from tokenizer.json text in memory; `config` (tokenizer_config.json text)
 * may be NULL. `what` names the source in error details. */
int sw_tokenizer_load_mem(const char *json, size_t len, const char *config, size_t config_len,
                          const char *what, sw_tokenizer_t **out);

void sw_tokenizer_free(sw_tokenizer_t *tok);

/* Flags for encode. */
enum {
    SW_TOK_ADD_SPECIAL = 1, /* add what the post-processor adds (e.g. Llama 2's <s>), like HF's
                               add_special_tokens=True */
};

/*
 * Encodes len bytes of text into ids[0..cap). Sets *n to the number of ids the text encodes to;
 * returns -ENOSPC (nothing else wrong) if that is more than cap, so the caller can retry with
 * *n slots. Special tokens written in the text ("<|eot_id|>") are recognised as such.
 */
int sw_tokenizer_encode(const sw_tokenizer_t *tok, const char *text, size_t len, unsigned flags,
                        int32_t *ids, size_t cap, size_t *n);

/* As sw_tokenizer_encode() into an array it allocates; the caller frees *ids with sw_free(). */
int sw_tokenizer_encode_alloc(const sw_tokenizer_t *tok, const char *text, size_t len,
                              unsigned flags, int32_t **ids, size_t *n);

/* Flags for decode. */
enum {
    SW_DETOK_SKIP_SPECIAL = 1, /* drop special tokens (<s>, <|eot_id|>, ...) from the text */
};

/*
 * Decodes n ids into buf (cap bytes, NUL-terminated when it fits). Sets *len to the text length
 * (without the NUL); returns -ENOSPC if len + 1 > cap. Bytes that do not form valid UTF-8 come out
 * as U+FFFD. An id outside the vocabulary gives SW_EFORMAT naming it.
 */
int sw_tokenizer_decode(const sw_tokenizer_t *tok, const int32_t *ids, size_t n, unsigned flags,
                        char *buf, size_t cap, size_t *len);

/*
 * A streaming decoder: push ids as they are generated; each push returns the text that became
 * final, always whole UTF-8 sequences (a character split across byte tokens comes out when its
 * last byte arrives). flush() returns what was held back (an incomplete sequence comes out as
 * U+FFFD). The concatenation of all returned pieces equals sw_tokenizer_decode() of the same ids.
 * The tokenizer must outlive the decoder.
 */
typedef struct sw_detok sw_detok_t;

int sw_detok_new(const sw_tokenizer_t *tok, unsigned flags, sw_detok_t **out);
/* *text points into the decoder, valid until its next call; *len may be 0. */
int sw_detok_push(sw_detok_t *d, int32_t id, const char **text, size_t *len);
int sw_detok_flush(sw_detok_t *d, const char **text, size_t *len);
/* Forgets everything pushed: the next push starts a new text. */
void sw_detok_reset(sw_detok_t *d);
void sw_detok_free(sw_detok_t *d);

/* ---- vocabulary ---- */

/* Number of ids (largest id + 1, added tokens included). */
size_t sw_tokenizer_vocab_size(const sw_tokenizer_t *tok);
/* The id of a token string (vocabulary or added token), or -ENOENT. */
int32_t sw_tokenizer_token_id(const sw_tokenizer_t *tok, const char *token);
/* The stored string of id (e.g. "Ġthe", "<0x0A>", "<|eot_id|>"), or NULL; *len gets its length. */
const char *sw_tokenizer_token(const sw_tokenizer_t *tok, int32_t id, size_t *len);
/* 1 if id is an added token marked special, else 0. */
int sw_tokenizer_is_special(const sw_tokenizer_t *tok, int32_t id);
/* BOS / EOS ids from tokenizer_config.json (bos_token, eos_token), or -ENOENT when not given. */
int32_t sw_tokenizer_bos(const sw_tokenizer_t *tok);
int32_t sw_tokenizer_eos(const sw_tokenizer_t *tok);

#endif
