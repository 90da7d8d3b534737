/*
 * sampling.h - choosing the next token from logits, and deciding when generation stops.
 *
 * Three pieces a client generation loop calls once per token:
 *
 *   sw_sampler_t   logits (V floats) -> one id. Greedy, or sampling after the processors that
 *                  transformers applies, in its order: repetition penalty, temperature, top-k,
 *                  top-p (nucleus). Reproducible: the same seed and the same logits give the same
 *                  ids on every platform (own PRNG, not rand(); see "The draw" below: the only
 *                  libm call is exp() in double, whose last-ulp differences between C libraries
 *                  could move a draw only if u fell within ~1e-15 of a boundary).
 *   sw_stop_t      fed each id and its decoded text piece; says when to stop (an EOS id, a stop
 *                  string in the decoded text, even one that spans several tokens, or max new
 *                  tokens) and which text the user may see now (text that could be the start of
 *                  a stop string is held back until it is known not to be one).
 *   sw_generation_config_t  EOS ids and sampling defaults from a model's config.json and
 *                  generation_config.json, as transformers reads them.
 *
 * A generation loop (B = 1):
 *
 *     sw_sampler_new(&params, V, &smp);  sw_sampler_accept(smp, prompt, T);
 *     sw_stop_new(eos, n_eos, stops, n_stops, max_new, &stop);
 *     for (;;) {
 *         id = sw_sampler_sample(smp, logits, V);          // < 0: error
 *         sw_detok_push(detok, id, &piece, &plen);
 *         reason = sw_stop_push(stop, id, piece, plen, &show, &slen);   // < 0: error
 *         write(show, slen);
 *         if (reason != SW_STOP_NONE) break;
 *         ... run the model on id, get the next logits ...
 *     }
 *     sw_detok_flush(detok, &piece, &plen);
 *     sw_stop_finish(stop, piece, plen, &show, &slen);  write(show, slen);
 *
 * Nothing here allocates per token: the sampler's scratch is sized for V at creation; the stop
 * checker's text buffer grows only when a text piece is longer than any before it.
 * Objects are not thread-safe; use one per generation loop.
 */
#ifndef SW_PIPELINE_SAMPLING_H
#define SW_PIPELINE_SAMPLING_H

#include <stddef.h>
#include <stdint.h>

/* ======================================== the sampler ========================================= */

typedef struct {
    int greedy;               /* 1: argmax of the penalised logits (transformers' do_sample=False);
                                 temperature, top_k and top_p are then not used */
    float temperature;        /* >= 0, finite; 0 means greedy too */
    int top_k;                /* >= 0; 0 = off. Keeps every id whose logit is >= the k-th largest
                                 (ties at the k-th are all kept, as transformers does); k >= V is off */
    float top_p;              /* in (0, 1]; 1 = off. Keeps the most likely ids, in order, while the
                                 mass before each is < top_p (so at least one id) */
    float repetition_penalty; /* > 0, finite; 1 = off. For every id seen in the prompt or generated
                                 so far: logit > 0 ? logit / p : logit * p (CTRL; transformers) */
    uint64_t seed;            /* the PRNG seed; any value */
} sw_sampler_params_t;

/*
 * transformers' GenerationConfig defaults: greedy = 1, temperature 1, top_k 50, top_p 1,
 * repetition_penalty 1, seed 0. A CLI that is given --temperature T > 0 (or --top-k/--top-p) for
 * a model whose generation_config.json does not ask for sampling should clear greedy, as
 * transformers needs do_sample=True; top_k then stays 50 unless given, as in transformers.
 */
void sw_sampler_params_default(sw_sampler_params_t *p);

/* 0 if every field is in its range above, else -EINVAL with a detail naming the field, its value
 * and the allowed range (for a CLI to print). */
int sw_sampler_params_check(const sw_sampler_params_t *p);

typedef struct sw_sampler sw_sampler_t;

/*
 * A sampler for vocabulary size V (1 <= V <= 2^24). Allocates all its scratch here (about 25
 * bytes per id). Returns -EINVAL (bad params or V, detail says which) or -ENOMEM. The caller frees
 * *out with sw_sampler_free().
 */
int sw_sampler_new(const sw_sampler_params_t *p, int V, sw_sampler_t **out);
void sw_sampler_free(sw_sampler_t *s);

/*
 * Forgets the ids seen and restarts the PRNG from the seed: the next sample is what a fresh
 * sampler would give. (Multi-turn chat keeps its sampler: the whole conversation counts for the
 * repetition penalty, as in a transformers session.)
 */
void sw_sampler_reset(sw_sampler_t *s);

/*
 * Records ids that are in the context without having been sampled here (the prompt, a new chat
 * turn), for the repetition penalty. Every id must be in [0, V): otherwise -EINVAL and nothing
 * is recorded.
 */
int sw_sampler_accept(sw_sampler_t *s, const int32_t *ids, size_t n);

/*
 * Picks the next id from logits[0..V) (V must be the sampler's) and records it as seen.
 * Returns the id (>= 0) or a negative code:
 *   -EINVAL      V is not the sampler's;
 *   SW_EFORMAT   a logit is NaN (the detail names the id: the model produced invalid numbers),
 *                or, when sampling, every logit is -inf so no id can be drawn.
 * Defined behaviour for infinities: -inf means probability 0; if any logit is +inf after the
 * penalty and temperature, the draw is uniform over the +inf ids (the limit of softmax).
 * Greedy (or temperature 0) returns the first index of the largest penalised logit, exactly
 * sw_argmax() of pipeline/local.h on those logits (also when all are -inf: id 0).
 * The caller's logits are not modified.
 *
 * The draw. The PRNG is xoshiro256** (Blackman & Vigna) whose four state words are the first four
 * outputs of splitmix64 started at `seed`; each sampled (not greedy) token takes one 64-bit output
 * x and u = (x >> 11) * 2^-53 in [0, 1). The kept ids get weights w_i = exp((double)l_i - max)
 * (l_i the processed float logits, max the largest), total W summed in ascending id order; the id
 * drawn is the first, in ascending id order, whose running sum of weights exceeds u * W.
 */
int sw_sampler_sample(sw_sampler_t *s, const float *logits, int V);

/* ================================== stopping the generation =================================== */

enum {
    SW_STOP_NONE = 0,   /* go on */
    SW_STOP_EOS = 1,    /* the id was one of the EOS ids (its text is not shown) */
    SW_STOP_STRING = 2, /* a stop string appeared in the text (it and what follows are not shown) */
    SW_STOP_LENGTH = 3, /* max_new_tokens ids were pushed */
};

/* Limits on stop strings: how many, and how long each may be (bytes). */
#define SW_STOP_MAX_STRINGS 32
#define SW_STOP_MAX_LEN 1024
#define SW_STOP_MAX_EOS 64

typedef struct sw_stop sw_stop_t;

/*
 * A stop checker. eos[0..n_eos) are the ids that end generation (may be empty; ids < 0 are
 * refused); stops[0..n_stops) are non-empty NUL-terminated strings matched on the decoded text
 * (copied); max_new_tokens > 0 bounds the ids pushed, 0 means no bound. Returns -EINVAL with a
 * detail for an empty stop string, or counts/lengths above the limits, or -ENOMEM. The caller
 * frees *out with sw_stop_free().
 */
int sw_stop_new(const int32_t *eos, size_t n_eos, const char *const *stops, size_t n_stops,
                int max_new_tokens, sw_stop_t **out);
void sw_stop_free(sw_stop_t *s);

/* Ready for a new generation (a new chat turn): count, held-back text and state cleared. */
void sw_stop_reset(sw_stop_t *s);

/*
 * Feeds one generated id and its decoded text piece (len bytes, may be 0; text may be NULL when
 * len is 0). Returns SW_STOP_NONE or a reason as above; precedence EOS > STRING > LENGTH when
 * several hold for the same id. Sets *show and *show_len to the text that is now final and may be
 * shown (valid until the next call on s): everything so far except a tail that could be the
 * start of a stop string; for STRING, exactly the text before the match. After a reason has been
 * returned, further pushes return SW_ESTATE (call sw_stop_reset() to start again).
 * With no stop strings, nothing is ever held back: *show is the piece itself.
 */
int sw_stop_push(sw_stop_t *s, int32_t id, const char *text, size_t len, const char **show,
                 size_t *show_len);

/*
 * Ends the stream: appends `text` (len bytes; e.g. what sw_detok_flush() returned; may be empty)
 * and returns in *show the rest of the text the user sees (held-back text is final now, cut at a
 * stop string if one completes in it). Returns SW_STOP_STRING if a stop string matched here,
 * else SW_STOP_NONE; after a STRING stop it shows nothing more. Call it once per generation.
 */
int sw_stop_finish(sw_stop_t *s, const char *text, size_t len, const char **show,
                   size_t *show_len);

/* Ids pushed since creation or reset. */
int sw_stop_count(const sw_stop_t *s);

/* ================================ generation defaults of a model ============================== */

#define SW_GEN_MAX_EOS 16

typedef struct {
    int32_t eos[SW_GEN_MAX_EOS]; /* EOS ids, without duplicates, in file order */
    int n_eos;
    int32_t bos;                 /* bos_token_id, or -1 */
    sw_sampler_params_t sampling; /* transformers' defaults overridden by generation_config.json */
    int max_new_tokens;          /* generation_config.json's max_new_tokens, or 0 */
    int has_generation_config;   /* generation_config.json was given */
} sw_generation_config_t;

/*
 * Reads the generation defaults from config.json text (required) and generation_config.json text
 * (gen may be NULL: not present). As transformers does, eos_token_id (an int, a list of ints, or
 * null) comes from generation_config.json when that file has the key, else from config.json;
 * likewise bos_token_id. From generation_config.json: do_sample (bool; false -> greedy),
 * temperature, top_k, top_p, repetition_penalty, max_new_tokens; a value out of its range (see
 * sw_sampler_params_t) or of the wrong type is refused with SW_EFORMAT naming file and key.
 * When V > 0, every id must be in [0, V). More than SW_GEN_MAX_EOS distinct EOS ids: SW_ELIMIT.
 * On failure *out is left untouched.
 */
int sw_generation_config_parse(const char *config, size_t config_len, const char *gen,
                               size_t gen_len, int V, sw_generation_config_t *out);

/* As sw_generation_config_parse() from `<dir>/config.json` and, if the file exists,
 * `<dir>/generation_config.json` (each at most 1 MiB). */
int sw_generation_config_load(const char *dir, int V, sw_generation_config_t *out);

#endif
