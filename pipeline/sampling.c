/*
 * sampling.c - the sampler (logits -> id), the stop checker and the generation defaults reader.
 *
 * The sampler follows transformers' LogitsProcessor semantics (RepetitionPenaltyLogitsProcessor,
 * TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, then multinomial), working on a
 * float copy of the logits exactly as those work on fp32 scores. Where transformers sorts the
 * whole vocabulary (top-p), this file pops a binary heap only as far as the nucleus reaches, so a
 * step costs O(V) plus O(kept * log V), not O(V log V). The order used for ties is a total one
 * (larger logit first, then larger id), which is what a stable ascending sort - transformers'
 * top-p on CPU - gives when reversed: among equal logits the smaller id is cut first.
 *
 * Everything here runs on the caller's thread; nothing allocates after creation except the stop
 * checker's text buffer, which grows only for a piece longer than any before.
 */
#include "pipeline/sampling.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <string.h>
#include <sys/stat.h>

#include "pipeline/local.h"
#include "util/alloc.h"
#include "util/error.h"
#include "util/file.h"

#define MAX_VOCAB (1 << 24)

/* ============================================ PRNG ============================================ */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

/* xoshiro256** 1.0 */
static uint64_t xoshiro_next(uint64_t s[4])
{
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;

    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

static void rng_seed(uint64_t s[4], uint64_t seed)
{
    uint64_t x = seed;

    for (int i = 0; i < 4; i++)
        s[i] = splitmix64(&x);
}

/* ========================================== sampler =========================================== */

struct sw_sampler {
    sw_sampler_params_t p;
    int V;
    float *x;          /* (V) the processed logits */
    double *w;         /* (V) unnormalised probabilities, by id; valid for candidates only */
    int32_t *cand;     /* (V) ids still in the running, ascending */
    int32_t *heap;     /* (V) binary max-heap of ids, scratch */
    uint8_t *seen;     /* (V) 1 if the id is in seen_list */
    int32_t *seen_list; /* (V) distinct ids seen, in first-seen order */
    size_t n_seen;
    uint64_t rng[4];
};

void sw_sampler_params_default(sw_sampler_params_t *p)
{
    p->greedy = 1;
    p->temperature = 1.0f;
    p->top_k = 50;
    p->top_p = 1.0f;
    p->repetition_penalty = 1.0f;
    p->seed = 0;
}

int sw_sampler_params_check(const sw_sampler_params_t *p)
{
    if (!p)
        return sw_err(-EINVAL, "no sampling parameters given");
    if (!isfinite(p->temperature) || p->temperature < 0)
        return sw_err(-EINVAL, "temperature %g is not allowed: give a finite value >= 0 (0 = greedy)",
                      (double)p->temperature);
    if (p->top_k < 0)
        return sw_err(-EINVAL, "top-k %d is not allowed: give 0 (off) or a positive count", p->top_k);
    if (!(p->top_p > 0 && p->top_p <= 1))
        return sw_err(-EINVAL, "top-p %g is not allowed: give a value in (0, 1] (1 = off)",
                      (double)p->top_p);
    if (!isfinite(p->repetition_penalty) || !(p->repetition_penalty > 0))
        return sw_err(-EINVAL,
                      "repetition penalty %g is not allowed: give a finite value > 0 (1 = off)",
                      (double)p->repetition_penalty);
    return 0;
}

int sw_sampler_new(const sw_sampler_params_t *p, int V, sw_sampler_t **out)
{
    sw_sampler_t *s;
    int r;

    if ((r = sw_sampler_params_check(p)) < 0)
        return r;
    if (V < 1 || V > MAX_VOCAB)
        return sw_err(-EINVAL, "vocabulary size %d is out of range [1, %d]", V, MAX_VOCAB);
    s = sw_calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->p = *p;
    s->V = V;
    s->x = sw_malloc((size_t)V * sizeof(float));
    s->w = sw_malloc((size_t)V * sizeof(double));
    s->cand = sw_malloc((size_t)V * sizeof(int32_t));
    s->heap = sw_malloc((size_t)V * sizeof(int32_t));
    s->seen = sw_calloc((size_t)V, 1);
    s->seen_list = sw_malloc((size_t)V * sizeof(int32_t));
    if (!s->x || !s->w || !s->cand || !s->heap || !s->seen || !s->seen_list) {
        sw_sampler_free(s);
        return -ENOMEM;
    }
    rng_seed(s->rng, p->seed);
    *out = s;
    return 0;
}

void sw_sampler_free(sw_sampler_t *s)
{
    if (!s)
        return;
    sw_free(s->x);
    sw_free(s->w);
    sw_free(s->cand);
    sw_free(s->heap);
    sw_free(s->seen);
    sw_free(s->seen_list);
    sw_free(s);
}

void sw_sampler_reset(sw_sampler_t *s)
{
    for (size_t i = 0; i < s->n_seen; i++)
        s->seen[s->seen_list[i]] = 0;
    s->n_seen = 0;
    rng_seed(s->rng, s->p.seed);
}

static void see(sw_sampler_t *s, int32_t id)
{
    if (!s->seen[id]) {
        s->seen[id] = 1;
        s->seen_list[s->n_seen++] = id;
    }
}

int sw_sampler_accept(sw_sampler_t *s, const int32_t *ids, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= s->V)
            return sw_err(-EINVAL, "token id %d (position %zu) is outside the vocabulary [0, %d)",
                          (int)ids[i], i, s->V);
    for (size_t i = 0; i < n; i++)
        see(s, ids[i]);
    return 0;
}

/* a ranks before b: larger logit, then larger id (a total order, so heap pops are deterministic) */
static inline bool before(const float *x, int32_t a, int32_t b)
{
    return x[a] > x[b] || (x[a] == x[b] && a > b);
}

static void sift_down(const float *x, int32_t *h, size_t n, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        int32_t t;

        if (l < n && before(x, h[l], h[m]))
            m = l;
        if (r < n && before(x, h[r], h[m]))
            m = r;
        if (m == i)
            return;
        t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

/* Makes h[0..n) a heap (the best id at the root). */
static void heapify(const float *x, int32_t *h, size_t n)
{
    for (size_t i = n / 2; i-- > 0;)
        sift_down(x, h, n, i);
}

/* Removes and returns the best id; *n shrinks by one (n > 0). */
static int32_t heap_pop(const float *x, int32_t *h, size_t *n)
{
    int32_t top = h[0];

    h[0] = h[--*n];
    sift_down(x, h, *n, 0);
    return top;
}

/* Top-k over the candidates: keeps every id whose logit is >= the k-th largest. */
static void top_k(sw_sampler_t *s, size_t *nc)
{
    size_t n = *nc, kept = 0;
    float t = 0;

    if ((size_t)s->p.top_k >= n)
        return;
    memcpy(s->heap, s->cand, n * sizeof(int32_t));
    heapify(s->x, s->heap, n);
    for (int i = 0; i < s->p.top_k; i++)
        t = s->x[heap_pop(s->x, s->heap, &n)];
    for (size_t i = 0; i < *nc; i++) {
        int32_t id = s->cand[i];
        if (s->x[id] >= t)
            s->cand[kept++] = id;
        else
            s->x[id] = -INFINITY;
    }
    *nc = kept;
}

/* w[id] = exp(x[id] - max) for the candidates; returns their sum, in ascending id order. */
static double weights(sw_sampler_t *s, size_t nc)
{
    float m = -INFINITY;
    double total = 0;

    for (size_t i = 0; i < nc; i++)
        if (s->x[s->cand[i]] > m)
            m = s->x[s->cand[i]];
    for (size_t i = 0; i < nc; i++) {
        int32_t id = s->cand[i];
        s->w[id] = exp((double)s->x[id] - (double)m);
        total += s->w[id];
    }
    return total;
}

/*
 * Top-p over the candidates (weights computed): pops ids best first and keeps each while the mass
 * before it is < top_p of the total; the rest leave. Returns the new total.
 */
static double top_p(sw_sampler_t *s, size_t *nc, double total)
{
    size_t n = *nc, kept = 0;
    double limit = (double)s->p.top_p * total, before_mass = 0;

    memcpy(s->heap, s->cand, n * sizeof(int32_t));
    heapify(s->x, s->heap, n);
    while (n > 0 && before_mass < limit) {
        int32_t id = heap_pop(s->x, s->heap, &n);
        before_mass += s->w[id];
    }
    /* what is left in the heap is cut */
    for (size_t i = 0; i < n; i++)
        s->x[s->heap[i]] = -INFINITY;
    total = 0;
    for (size_t i = 0; i < *nc; i++) {
        int32_t id = s->cand[i];
        if (s->x[id] > -INFINITY) {
            s->cand[kept++] = id;
            total += s->w[id];
        }
    }
    *nc = kept;
    return total;
}

int sw_sampler_sample(sw_sampler_t *s, const float *logits, int V)
{
    float *x = s->x;
    float rp = s->p.repetition_penalty;
    size_t nc = 0, n_inf = 0;
    double total, target, acc;
    int32_t id;

    if (V != s->V)
        return sw_err(-EINVAL, "logits have %d entries; the sampler was made for a vocabulary of %d",
                      V, s->V);
    for (int i = 0; i < V; i++) {
        if (isnan(logits[i]))
            return sw_err(SW_EFORMAT,
                          "logit of token %d is NaN: the model produced invalid numbers "
                          "(check the weights, their dtype and the servers of the chain)", i);
        x[i] = logits[i];
    }
    if (rp != 1.0f)
        for (size_t i = 0; i < s->n_seen; i++) {
            float *l = &x[s->seen_list[i]];
            *l = *l < 0 ? *l * rp : *l / rp;
        }

    if (s->p.greedy || s->p.temperature == 0.0f) {
        id = sw_argmax(x, V);
        see(s, id);
        return id;
    }

    if (s->p.temperature != 1.0f)
        for (int i = 0; i < V; i++)
            x[i] /= s->p.temperature;
    for (int i = 0; i < V; i++)
        n_inf += x[i] == INFINITY;
    /* candidates: ids of nonzero probability (the +inf ones only, if any), ascending */
    for (int i = 0; i < V; i++) {
        if (n_inf)
            x[i] = x[i] == INFINITY ? 0.0f : -INFINITY;
        if (x[i] > -INFINITY)
            s->cand[nc++] = i;
    }
    if (nc == 0)
        return sw_err(SW_EFORMAT, "every logit is -inf: no token can be sampled (check the model "
                                  "output, or use greedy decoding)");
    if (s->p.top_k > 0)
        top_k(s, &nc);
    total = weights(s, nc);
    if (s->p.top_p < 1.0f)
        total = top_p(s, &nc, total);

    target = (double)(xoshiro_next(s->rng) >> 11) * 0x1.0p-53 * total;
    acc = 0;
    id = s->cand[nc - 1];
    for (size_t i = 0; i < nc; i++) {
        acc += s->w[s->cand[i]];
        if (acc > target) {
            id = s->cand[i];
            break;
        }
    }
    see(s, id);
    return id;
}

/* ======================================= stop checker ========================================= */

struct sw_stop {
    int32_t eos[SW_STOP_MAX_EOS];
    size_t n_eos;
    char *stops[SW_STOP_MAX_STRINGS];
    size_t stop_len[SW_STOP_MAX_STRINGS];
    size_t n_stops;
    int max_new;
    int count;
    int state;          /* SW_STOP_NONE while running, else the reason */
    bool finished;      /* sw_stop_finish() was called */
    char *buf;          /* held-back text (from `off`), then the newest piece */
    size_t off, len, cap;
};

void sw_stop_free(sw_stop_t *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n_stops; i++)
        sw_free(s->stops[i]);
    sw_free(s->buf);
    sw_free(s);
}

int sw_stop_new(const int32_t *eos, size_t n_eos, const char *const *stops, size_t n_stops,
                int max_new_tokens, sw_stop_t **out)
{
    sw_stop_t *s;
    size_t longest = 0;

    if (n_eos > SW_STOP_MAX_EOS)
        return sw_err(-EINVAL, "%zu EOS ids given; at most %d are supported", n_eos,
                      SW_STOP_MAX_EOS);
    if (n_stops > SW_STOP_MAX_STRINGS)
        return sw_err(-EINVAL, "%zu stop strings given; at most %d are supported", n_stops,
                      SW_STOP_MAX_STRINGS);
    if (max_new_tokens < 0)
        return sw_err(-EINVAL, "max new tokens %d is negative: give 0 (no bound) or a count",
                      max_new_tokens);
    for (size_t i = 0; i < n_eos; i++)
        if (eos[i] < 0)
            return sw_err(-EINVAL, "EOS id %d is negative", (int)eos[i]);
    for (size_t i = 0; i < n_stops; i++) {
        size_t l = stops[i] ? strlen(stops[i]) : 0;
        if (l == 0)
            return sw_err(-EINVAL, "stop string %zu is empty: give a non-empty string", i + 1);
        if (l > SW_STOP_MAX_LEN)
            return sw_err(-EINVAL, "stop string %zu is %zu bytes long; at most %d are supported",
                          i + 1, l, SW_STOP_MAX_LEN);
        if (l > longest)
            longest = l;
    }
    s = sw_calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    if (n_eos)
        memcpy(s->eos, eos, n_eos * sizeof(int32_t));
    s->n_eos = n_eos;
    s->max_new = max_new_tokens;
    for (size_t i = 0; i < n_stops; i++) {
        s->stops[i] = sw_strdup(stops[i]);
        if (!s->stops[i]) {
            sw_stop_free(s);
            return -ENOMEM;
        }
        s->stop_len[i] = strlen(stops[i]);
        s->n_stops++;
    }
    s->cap = longest + 256;
    s->buf = sw_malloc(s->cap);
    if (!s->buf) {
        sw_stop_free(s);
        return -ENOMEM;
    }
    *out = s;
    return 0;
}

void sw_stop_reset(sw_stop_t *s)
{
    s->count = 0;
    s->state = SW_STOP_NONE;
    s->finished = false;
    s->off = s->len = 0;
}

int sw_stop_count(const sw_stop_t *s)
{
    return s->count;
}

/* Appends text to the held-back text (moved to the front first). */
static int stop_append(sw_stop_t *s, const char *text, size_t len)
{
    if (s->off) {
        memmove(s->buf, s->buf + s->off, s->len - s->off);
        s->len -= s->off;
        s->off = 0;
    }
    if (len > s->cap - s->len) {
        size_t cap = s->len + len + 256;
        char *nb;
        if (cap < s->len || cap < len)
            return sw_err(SW_ELIMIT, "generated text piece of %zu bytes is too large", len);
        nb = sw_realloc(s->buf, cap);
        if (!nb)
            return -ENOMEM;
        s->buf = nb;
        s->cap = cap;
    }
    if (len)
        memcpy(s->buf + s->len, text, len);
    s->len += len;
    return 0;
}

/* Earliest start of any stop string in buf[0..len), or -1. */
static long stop_find(const sw_stop_t *s)
{
    long best = -1;

    for (size_t k = 0; k < s->n_stops; k++) {
        size_t l = s->stop_len[k];
        for (size_t i = 0; i + l <= s->len && (best < 0 || (long)i < best); i++)
            if (s->buf[i] == s->stops[k][0] && memcmp(s->buf + i, s->stops[k], l) == 0) {
                best = (long)i;
                break;
            }
    }
    return best;
}

/* Length of the longest tail of buf[0..len) that is a proper prefix of some stop string. */
static size_t stop_tail(const sw_stop_t *s)
{
    size_t hold = 0;

    for (size_t k = 0; k < s->n_stops; k++) {
        size_t l = s->stop_len[k] - 1;
        if (l > s->len)
            l = s->len;
        for (; l > hold; l--)
            if (memcmp(s->buf + s->len - l, s->stops[k], l) == 0) {
                hold = l;
                break;
            }
    }
    return hold;
}

int sw_stop_push(sw_stop_t *s, int32_t id, const char *text, size_t len, const char **show,
                 size_t *show_len)
{
    long at;
    size_t hold;
    int r;

    *show = "";
    *show_len = 0;
    if (s->state != SW_STOP_NONE || s->finished)
        return sw_err(SW_ESTATE, "generation already stopped; reset the stop checker first");
    if (len && !text)
        return sw_err(-EINVAL, "text piece of %zu bytes given without text", len);
    s->count++;
    for (size_t i = 0; i < s->n_eos; i++)
        if (s->eos[i] == id)
            return s->state = SW_STOP_EOS;
    if (s->n_stops == 0) {
        /* nothing can be held back: show the caller's piece as it is */
        *show = len ? text : "";
        *show_len = len;
        if (s->max_new && s->count >= s->max_new)
            s->state = SW_STOP_LENGTH;
        return s->state;
    }
    if ((r = stop_append(s, text, len)) < 0) {
        s->count--;
        return r;
    }
    at = stop_find(s);
    if (at >= 0) {
        *show = s->buf;
        *show_len = (size_t)at;
        s->off = s->len;
        return s->state = SW_STOP_STRING;
    }
    hold = stop_tail(s);
    *show = s->buf;
    *show_len = s->len - hold;
    s->off = s->len - hold;
    if (s->max_new && s->count >= s->max_new)
        s->state = SW_STOP_LENGTH;
    return s->state;
}

int sw_stop_finish(sw_stop_t *s, const char *text, size_t len, const char **show,
                   size_t *show_len)
{
    long at;
    int r;

    *show = "";
    *show_len = 0;
    if (s->finished)
        return sw_err(SW_ESTATE, "the stop checker was already finished; reset it first");
    s->finished = true;
    if (s->state == SW_STOP_STRING)
        return SW_STOP_NONE;
    if (len && !text)
        return sw_err(-EINVAL, "text piece of %zu bytes given without text", len);
    if ((r = stop_append(s, text, len)) < 0)
        return r;
    at = stop_find(s);
    *show = s->buf;
    *show_len = at >= 0 ? (size_t)at : s->len;
    s->off = s->len;
    if (at >= 0) {
        s->state = SW_STOP_STRING;
        return SW_STOP_STRING;
    }
    return SW_STOP_NONE;
}

/* ==================================== generation defaults ===================================== */

/* An id value: an integer in [0, V) (V <= 0: any non-negative int32). */
static int json_id(json_t *v, int V, const char *what, const char *key, int32_t *out)
{
    json_int_t i;

    if (!json_is_integer(v))
        return sw_err(SW_EFORMAT, "%s: %s holds something that is not an integer token id", what,
                      key);
    i = json_integer_value(v);
    if (i < 0 || i > INT32_MAX || (V > 0 && i >= V))
        return sw_err(SW_EFORMAT, "%s: %s %lld is outside the vocabulary [0, %d)", what, key,
                      (long long)i, V > 0 ? V : INT32_MAX);
    *out = (int32_t)i;
    return 0;
}

/* eos_token_id: an int, a list of ints, or null; appended to g without duplicates. */
static int read_eos(json_t *v, int V, const char *what, sw_generation_config_t *g)
{
    size_t n = json_is_array(v) ? json_array_size(v) : 1;
    int r;

    if (json_is_null(v))
        return 0;
    if (!json_is_array(v) && !json_is_integer(v))
        return sw_err(SW_EFORMAT, "%s: eos_token_id is neither an integer nor a list of integers",
                      what);
    for (size_t i = 0; i < n; i++) {
        int32_t id = -1;
        bool dup = false;
        if ((r = json_id(json_is_array(v) ? json_array_get(v, i) : v, V, what, "eos_token_id",
                         &id)) < 0)
            return r;
        for (int j = 0; j < g->n_eos; j++)
            dup |= g->eos[j] == id;
        if (dup)
            continue;
        if (g->n_eos == SW_GEN_MAX_EOS)
            return sw_err(SW_ELIMIT, "%s: more than %d EOS ids in eos_token_id", what,
                          SW_GEN_MAX_EOS);
        g->eos[g->n_eos++] = id;
    }
    return 0;
}

static int read_bos(json_t *v, int V, const char *what, sw_generation_config_t *g)
{
    if (json_is_null(v)) {
        g->bos = -1;
        return 0;
    }
    /* a list is allowed by transformers for eos only; take the first for bos if given one */
    if (json_is_array(v) && json_array_size(v) > 0)
        v = json_array_get(v, 0);
    return json_id(v, V, what, "bos_token_id", &g->bos);
}

/* A number from key (integer or real), or leaves *out unchanged when absent or null. */
static int json_num(json_t *o, const char *key, const char *what, double *out)
{
    json_t *v = json_object_get(o, key);

    if (!v || json_is_null(v))
        return 0;
    if (!json_is_number(v))
        return sw_err(SW_EFORMAT, "%s: %s is not a number", what, key);
    *out = json_number_value(v);
    return 0;
}

static int read_sampling(json_t *gen, const char *what, sw_generation_config_t *g)
{
    sw_sampler_params_t p = g->sampling;
    double t = p.temperature, tp = p.top_p, rp = p.repetition_penalty, tk = p.top_k, mn = 0;
    json_t *ds = json_object_get(gen, "do_sample");
    int r;

    if (ds && !json_is_null(ds)) {
        if (!json_is_boolean(ds))
            return sw_err(SW_EFORMAT, "%s: do_sample is not true or false", what);
        p.greedy = !json_is_true(ds);
    }
    if ((r = json_num(gen, "temperature", what, &t)) < 0 ||
        (r = json_num(gen, "top_p", what, &tp)) < 0 ||
        (r = json_num(gen, "repetition_penalty", what, &rp)) < 0 ||
        (r = json_num(gen, "top_k", what, &tk)) < 0 ||
        (r = json_num(gen, "max_new_tokens", what, &mn)) < 0)
        return r;
    if (!(t >= 0 && t <= 1e6))
        return sw_err(SW_EFORMAT, "%s: temperature %g is out of range [0, 1e6]", what, t);
    if (!(tp > 0 && tp <= 1))
        return sw_err(SW_EFORMAT, "%s: top_p %g is out of range (0, 1]", what, tp);
    if (!(rp > 0 && rp <= 1e6))
        return sw_err(SW_EFORMAT, "%s: repetition_penalty %g is out of range (0, 1e6]", what, rp);
    if (!(tk >= 0 && tk <= MAX_VOCAB) || tk != floor(tk))
        return sw_err(SW_EFORMAT, "%s: top_k %g is not a count in [0, %d]", what, tk, MAX_VOCAB);
    if (!(mn >= 0 && mn <= INT32_MAX) || mn != floor(mn))
        return sw_err(SW_EFORMAT, "%s: max_new_tokens %g is not a count", what, mn);
    p.temperature = (float)t;
    p.top_p = (float)tp;
    p.repetition_penalty = (float)rp;
    p.top_k = (int)tk;
    g->sampling = p;
    g->max_new_tokens = (int)mn;
    return 0;
}

int sw_generation_config_parse(const char *config, size_t config_len, const char *gen,
                               size_t gen_len, int V, sw_generation_config_t *out)
{
    static const char cwhat[] = "config.json", gwhat[] = "generation_config.json";
    json_t *c = NULL, *g = NULL, *v;
    sw_generation_config_t res;
    int r;

    memset(&res, 0, sizeof(res));
    res.bos = -1;
    sw_sampler_params_default(&res.sampling);
    if ((r = sw_json_parse(config, config_len, cwhat, &c)) < 0)
        return r;
    if (!json_is_object(c)) {
        r = sw_err(SW_EFORMAT, "%s: not a JSON object", cwhat);
        goto out;
    }
    if (gen) {
        if ((r = sw_json_parse(gen, gen_len, gwhat, &g)) < 0)
            goto out;
        if (!json_is_object(g)) {
            r = sw_err(SW_EFORMAT, "%s: not a JSON object", gwhat);
            goto out;
        }
        res.has_generation_config = 1;
        if ((r = read_sampling(g, gwhat, &res)) < 0)
            goto out;
    }
    if (g && (v = json_object_get(g, "eos_token_id")))
        r = read_eos(v, V, gwhat, &res);
    else if ((v = json_object_get(c, "eos_token_id")))
        r = read_eos(v, V, cwhat, &res);
    if (r < 0)
        goto out;
    if (g && (v = json_object_get(g, "bos_token_id")))
        r = read_bos(v, V, gwhat, &res);
    else if ((v = json_object_get(c, "bos_token_id")))
        r = read_bos(v, V, cwhat, &res);
    if (r < 0)
        goto out;
    *out = res;
out:
    json_decref(c);
    json_decref(g);
    return r;
}

int sw_generation_config_load(const char *dir, int V, sw_generation_config_t *out)
{
    char *cpath = sw_path_join(dir, "config.json"), *gpath = sw_path_join(dir, "generation_config.json");
    char *ctext = NULL, *gtext = NULL;
    size_t clen = 0, glen = 0;
    struct stat st;
    int r;

    if (!cpath || !gpath) {
        r = -ENOMEM;
        goto out;
    }
    if ((r = sw_file_read(cpath, 1u << 20, &ctext, &clen)) < 0)
        goto out;
    if (stat(gpath, &st) == 0 && (r = sw_file_read(gpath, 1u << 20, &gtext, &glen)) < 0)
        goto out;
    r = sw_generation_config_parse(ctext, clen, gtext, glen, V, out);
    if (r < 0) {
        /* name the directory too: the parse detail has only the file name */
        char d[512];
        snprintf(d, sizeof(d), "%s", sw_err_detail());
        sw_err(r, "%s/%s", dir, d);
    }
out:
    sw_free(cpath);
    sw_free(gpath);
    sw_free(ctext);
    sw_free(gtext);
    return r;
}
