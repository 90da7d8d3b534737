/*
 * tokenizer.c - Hugging Face tokenizer.json: loading (every field checked), encoding (added
 * tokens, normalizers, pre-tokenizers, BPE), post-processing, and streaming decoding.
 *
 * Encoding, as the tokenizers library does it:
 *   1. added tokens that are not `normalized` are found in the raw text (leftmost-longest);
 *   2. each stretch between them is normalized, and `normalized` added tokens found in that;
 *   3. each remaining stretch is pre-tokenized into pieces (split regexes, ByteLevel, Metaspace);
 *   4. each piece goes through BPE: characters (bytes for byte-level models) become symbols, and
 *      the adjacent pair with the lowest merge rank is merged, leftmost first, until none is left
 *      (a binary heap of candidate pairs, checked when popped, so a piece costs O(n log n));
 *   5. the post-processor adds BOS/EOS if asked.
 *
 * Decoding precomputes, for every id, the bytes its token decodes to through the decoder chain
 * (ByteLevel's byte map, Replace, ByteFallback, per-token Strip); what depends on position (Strip
 * after Fuse, Metaspace's first-token space) is applied by the streaming decoder, which also holds
 * back incomplete UTF-8 so it only ever emits whole characters.
 */
#include "tokenizer.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "tokenizer_internal.h"
#include "util/alloc.h"
#include "util/error.h"
#include "util/file.h"

#define MAX_ADDED 65536
#define MAX_STEPS 16
#define MAX_TEMPLATE 16
#define CONFIG_MAX (16u << 20)
#define NO_ID (-1)

/* ------------------------------------------------------------ hash maps ---- */

static uint64_t hash_bytes(const void *p, size_t n)
{
    const uint8_t *s = p;
    uint64_t h = 0xcbf29ce484222325ull;

    for (size_t i = 0; i < n; i++)
        h = (h ^ s[i]) * 0x100000001b3ull;
    return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

/* u64 -> u64 map, open addressing; key UINT64_MAX is reserved (empty). */
typedef struct {
    uint64_t *keys, *vals;
    size_t mask, count;
} u64map_t;

static int u64map_init(u64map_t *m, size_t expect)
{
    size_t cap = 16;

    while (cap < expect * 2)
        cap *= 2;
    m->keys = sw_malloc(cap * sizeof(uint64_t));
    m->vals = sw_malloc(cap * sizeof(uint64_t));
    if (!m->keys || !m->vals)
        return -ENOMEM;
    memset(m->keys, 0xff, cap * sizeof(uint64_t));
    m->mask = cap - 1;
    m->count = 0;
    return 0;
}

static void u64map_free(u64map_t *m)
{
    sw_free(m->keys);
    sw_free(m->vals);
}

static int u64map_grow(u64map_t *m)
{
    u64map_t n;
    int r = u64map_init(&n, (m->mask + 1));

    if (r < 0) {
        u64map_free(&n);
        return r;
    }
    for (size_t i = 0; i <= m->mask; i++) {
        if (m->keys[i] == UINT64_MAX)
            continue;
        size_t j = hash_u64(m->keys[i]) & n.mask;
        while (n.keys[j] != UINT64_MAX)
            j = (j + 1) & n.mask;
        n.keys[j] = m->keys[i];
        n.vals[j] = m->vals[i];
    }
    n.count = m->count;
    u64map_free(m);
    *m = n;
    return 0;
}

/* Inserts or overwrites. */
static int u64map_put(u64map_t *m, uint64_t key, uint64_t val)
{
    if ((m->count + 1) * 2 > m->mask + 1) {
        int r = u64map_grow(m);
        if (r < 0)
            return r;
    }
    size_t j = hash_u64(key) & m->mask;
    while (m->keys[j] != UINT64_MAX && m->keys[j] != key)
        j = (j + 1) & m->mask;
    if (m->keys[j] == UINT64_MAX)
        m->count++;
    m->keys[j] = key;
    m->vals[j] = val;
    return 0;
}

static inline bool u64map_get(const u64map_t *m, uint64_t key, uint64_t *val)
{
    size_t j = hash_u64(key) & m->mask;

    while (m->keys[j] != UINT64_MAX) {
        if (m->keys[j] == key) {
            *val = m->vals[j];
            return true;
        }
        j = (j + 1) & m->mask;
    }
    return false;
}

/* ------------------------------------------------------------ the object ---- */

typedef struct {
    int32_t id;
    uint32_t off, len; /* content in tok->arena */
    bool special, lstrip, rstrip, single_word, normalized;
} added_t;

/* A byte trie over added-token contents: edges in a map keyed (node << 8 | byte). */
typedef struct {
    u64map_t edges;
    int32_t *term; /* per node: index into tok->added, or -1 */
    size_t nodes, cap;
} trie_t;

typedef enum { NORM_NFC, NORM_PREPEND, NORM_REPLACE, NORM_STRIP } norm_kind_t;
typedef struct {
    norm_kind_t kind;
    char *a, *b; /* PREPEND: a; REPLACE: a -> b */
    size_t alen, blen;
    bool left, right; /* STRIP */
} norm_t;

typedef enum { PT_SPLIT, PT_BYTELEVEL, PT_METASPACE, PT_DIGITS } pretok_kind_t;
typedef enum { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER } prepend_t;
typedef struct {
    pretok_kind_t kind;
    sw_split_kind_t split;
    bool add_prefix_space, use_regex; /* BYTELEVEL */
    char repl[8];                     /* METASPACE replacement, UTF-8 */
    size_t repl_len;
    prepend_t prepend;
    bool ms_split;
    bool individual; /* DIGITS */
} pretok_t;

typedef struct {
    bool is_seq; /* else special ids */
    int32_t ids[8];
    size_t nids;
} tmpl_t;

struct sw_tokenizer {
    char *what; /* the file, for messages */
    /* vocabulary: id -> string in arena; string -> id map */
    size_t n_ids;
    uint32_t *tok_off, *tok_len;
    uint8_t *flags; /* per id: 1 = has a string, 2 = added, 4 = special */
    char *arena;
    size_t arena_len, arena_cap;
    u64map_t vocab; /* hash of string -> id; collisions resolved by comparing strings */
    /* BPE */
    u64map_t merges; /* (left << 32 | right) -> (rank << 32 | merged id) */
    bool byte_fallback, ignore_merges, fuse_unk;
    int32_t unk_id;
    int32_t byte_fallback_id[256]; /* <0xNN>, or -1 */
    /* byte-level */
    bool byte_level;
    uint32_t byte_char[256];  /* GPT-2 bytes_to_unicode */
    int32_t byte_id[256];     /* vocab id of the one-character token of each byte, or -1 */
    int16_t char_byte[0x144]; /* inverse of byte_char, -1 where none */
    /* added tokens */
    added_t *added;
    size_t nadded;
    trie_t trie_raw, trie_norm;
    /* pipeline */
    norm_t norm[MAX_STEPS];
    size_t nnorm;
    pretok_t pretok[MAX_STEPS];
    size_t npretok;
    tmpl_t tmpl[MAX_TEMPLATE];
    size_t ntmpl; /* 0: post-processor adds nothing */
    /* decoding */
    uint32_t *dec_off, *dec_len; /* per id: decoded bytes in dec_arena */
    uint8_t *dec_arena;
    size_t dec_arena_len;
    size_t max_dec_len;
    char strip_char[8]; /* stream-level Strip (after Fuse) */
    size_t strip_char_len, strip_start, strip_stop;
    bool ms_first; /* Metaspace decoder: drop the first token's leading space */
    char ms_repl[8];
    size_t ms_repl_len;
    int32_t bos_id, eos_id;
};

static const char *tok_str(const sw_tokenizer_t *t, int32_t id, size_t *len)
{
    *len = t->tok_len[id];
    return t->arena + t->tok_off[id];
}

static int32_t vocab_find(const sw_tokenizer_t *t, const void *s, size_t n)
{
    uint64_t h = hash_bytes(s, n) & ~(1ull << 63);
    size_t j = hash_u64(h) & t->vocab.mask;

    while (t->vocab.keys[j] != UINT64_MAX) {
        if (t->vocab.keys[j] == h) {
            int32_t id = (int32_t)t->vocab.vals[j];
            if (t->tok_len[id] == n && memcmp(t->arena + t->tok_off[id], s, n) == 0)
                return id;
        }
        j = (j + 1) & t->vocab.mask;
    }
    return NO_ID;
}

/* The vocab map may hold equal hashes for different strings; it is probed linearly, so a
 * second entry with the same key must not overwrite the first: insert into the next free slot. */
static int vocab_insert(sw_tokenizer_t *t, int32_t id)
{
    size_t n;
    const char *s = tok_str(t, id, &n);
    uint64_t h = hash_bytes(s, n) & ~(1ull << 63);

    if ((t->vocab.count + 1) * 2 > t->vocab.mask + 1) {
        int r = u64map_grow(&t->vocab);
        if (r < 0)
            return r;
    }
    size_t j = hash_u64(h) & t->vocab.mask;
    while (t->vocab.keys[j] != UINT64_MAX)
        j = (j + 1) & t->vocab.mask;
    t->vocab.keys[j] = h;
    t->vocab.vals[j] = (uint64_t)id;
    t->vocab.count++;
    return 0;
}

static int arena_put(sw_tokenizer_t *t, const char *s, size_t n, uint32_t *off)
{
    if (n > UINT32_MAX - t->arena_len)
        return sw_err(SW_ELIMIT, "%s: vocabulary strings exceed 4 GiB", t->what);
    if (t->arena_len + n > t->arena_cap) {
        size_t cap = t->arena_cap ? t->arena_cap : 4096;
        while (cap < t->arena_len + n)
            cap *= 2;
        char *p = sw_realloc(t->arena, cap);
        if (!p)
            return -ENOMEM;
        t->arena = p;
        t->arena_cap = cap;
    }
    memcpy(t->arena + t->arena_len, s, n);
    *off = (uint32_t)t->arena_len;
    t->arena_len += n;
    return 0;
}

/* Sets the string of id (first writer wins for vocab; added tokens override). */
static int set_token(sw_tokenizer_t *t, int32_t id, const char *s, size_t n, bool override)
{
    uint32_t off = 0;
    int r;

    if (t->flags[id] & 1) {
        size_t ol;
        const char *os = tok_str(t, id, &ol);
        if (ol == n && memcmp(os, s, n) == 0)
            return 0;
        if (!override)
            return sw_err(SW_EFORMAT, "%s: model.vocab: id %d is used twice", t->what, (int)id);
    }
    if ((r = arena_put(t, s, n, &off)) < 0)
        return r;
    t->tok_off[id] = off;
    t->tok_len[id] = (uint32_t)n;
    t->flags[id] |= 1;
    return vocab_insert(t, id);
}

/* ------------------------------------------------------------ JSON helpers ---- */

/* A JSON boolean field, default `def` when absent or null; error when another type. */
static int get_bool(const sw_tokenizer_t *t, json_t *obj, const char *key, bool def, bool *out,
                    const char *where)
{
    json_t *v = json_object_get(obj, key);

    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_boolean(v))
        return sw_err(SW_EFORMAT, "%s: %s.%s is not true or false", t->what, where, key);
    *out = json_is_true(v);
    return 0;
}

/* A JSON string field; *out NULL when absent or null (allowed only if !required). */
static int get_str(const sw_tokenizer_t *t, json_t *obj, const char *key, bool required,
                   const char **out, size_t *len, const char *where)
{
    json_t *v = json_object_get(obj, key);

    *out = NULL;
    if (len)
        *len = 0;
    if (!v || json_is_null(v)) {
        if (required)
            return sw_err(SW_EFORMAT, "%s: %s.%s is missing", t->what, where, key);
        return 0;
    }
    if (!json_is_string(v))
        return sw_err(SW_EFORMAT, "%s: %s.%s is not a string", t->what, where, key);
    *out = json_string_value(v);
    if (len)
        *len = json_string_length(v);
    return 0;
}

static const char *type_of(json_t *obj)
{
    json_t *v = json_is_object(obj) ? json_object_get(obj, "type") : NULL;

    return v && json_is_string(v) ? json_string_value(v) : NULL;
}

/* A {"String": "..."} pattern (Replace); Regex patterns are refused. */
static int get_string_pattern(const sw_tokenizer_t *t, json_t *obj, const char **s, size_t *n,
                              const char *where)
{
    json_t *p = json_object_get(obj, "pattern");
    json_t *v = json_is_object(p) ? json_object_get(p, "String") : NULL;

    if (json_is_object(p) && json_object_get(p, "Regex"))
        return sw_err(SW_EUNSUPPORTED, "%s: %s: Regex patterns are not supported, only String",
                      t->what, where);
    if (!v || !json_is_string(v) || json_string_length(v) == 0)
        return sw_err(SW_EFORMAT, "%s: %s.pattern is not {\"String\": \"...\"}", t->what, where);
    *s = json_string_value(v);
    *n = json_string_length(v);
    return 0;
}

static char *dup_bytes(const char *s, size_t n)
{
    char *p = sw_malloc(n + 1);

    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

/* ------------------------------------------------------------ model ---- */

static void init_byte_map(sw_tokenizer_t *t)
{
    int n = 0;

    for (int i = 0; i < 0x144; i++)
        t->char_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        bool keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        t->byte_char[b] = keep ? (uint32_t)b : (uint32_t)(256 + n++);
        t->char_byte[t->byte_char[b]] = (int16_t)b;
    }
}

static int load_model(sw_tokenizer_t *t, json_t *model)
{
    const char *type = type_of(model), *s, *unk;
    json_t *vocab, *merges, *v;
    const char *key;
    size_t n;
    int r;

    if (!json_is_object(model))
        return sw_err(SW_EFORMAT, "%s: \"model\" is missing or not an object", t->what);
    if (type && strcmp(type, "BPE") != 0)
        return sw_err(SW_EUNSUPPORTED, "%s: model type '%s' is not supported (only BPE)", t->what,
                      type);
    vocab = json_object_get(model, "vocab");
    merges = json_object_get(model, "merges");
    if (!json_is_object(vocab))
        return sw_err(SW_EFORMAT, "%s: model.vocab is missing or not an object", t->what);
    if (!json_is_array(merges))
        return sw_err(SW_EFORMAT, "%s: model.merges is missing or not an array", t->what);
    if ((r = get_str(t, model, "continuing_subword_prefix", false, &s, &n, "model")) < 0)
        return r;
    if (n)
        return sw_err(SW_EUNSUPPORTED, "%s: model.continuing_subword_prefix is not supported",
                      t->what);
    if ((r = get_str(t, model, "end_of_word_suffix", false, &s, &n, "model")) < 0)
        return r;
    if (n)
        return sw_err(SW_EUNSUPPORTED, "%s: model.end_of_word_suffix is not supported", t->what);
    v = json_object_get(model, "dropout");
    if (v && !json_is_null(v) && !(json_is_number(v) && json_number_value(v) == 0.0))
        return sw_err(SW_EUNSUPPORTED, "%s: model.dropout (random merges) is not supported",
                      t->what);
    if ((r = get_bool(t, model, "byte_fallback", false, &t->byte_fallback, "model")) < 0 ||
        (r = get_bool(t, model, "ignore_merges", false, &t->ignore_merges, "model")) < 0 ||
        (r = get_bool(t, model, "fuse_unk", false, &t->fuse_unk, "model")) < 0 ||
        (r = get_str(t, model, "unk_token", false, &unk, NULL, "model")) < 0)
        return r;

    /* vocabulary: ids must be unique and below the limit; n_ids was sized by the caller */
    json_object_foreach(vocab, key, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            json_integer_value(v) >= (json_int_t)t->n_ids)
            return sw_err(SW_EFORMAT, "%s: model.vocab[\"%.40s\"] is not an id from 0 to %zu",
                          t->what, key, t->n_ids - 1);
        int32_t id = (int32_t)json_integer_value(v);
        size_t kl = strlen(key);
        if (kl == 0)
            return sw_err(SW_EFORMAT, "%s: model.vocab has an empty token", t->what);
        if (t->flags[id] & 1)
            return sw_err(SW_EFORMAT, "%s: model.vocab: id %d is used twice", t->what, (int)id);
        if ((r = set_token(t, id, key, kl, false)) < 0)
            return r;
    }
    t->unk_id = NO_ID;
    if (unk) {
        t->unk_id = vocab_find(t, unk, strlen(unk));
        if (t->unk_id == NO_ID)
            return sw_err(SW_EFORMAT, "%s: model.unk_token '%.40s' is not in the vocabulary",
                          t->what, unk);
    }
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof(name), "<0x%02X>", b);
        t->byte_fallback_id[b] = vocab_find(t, name, 6);
    }

    /* merges: "a b" or ["a", "b"]; both parts and their concatenation must be tokens */
    if ((r = u64map_init(&t->merges, json_array_size(merges))) < 0)
        return r;
    char *cat = NULL;
    size_t cat_cap = 0;
    for (size_t i = 0; i < json_array_size(merges); i++) {
        json_t *m = json_array_get(merges, i);
        const char *a, *b;
        size_t al, bl;
        if (json_is_string(m)) {
            a = json_string_value(m);
            const char *sp = strchr(a, ' ');
            if (!sp || sp == a || sp[1] == '\0' || strchr(sp + 1, ' ')) {
                r = sw_err(SW_EFORMAT, "%s: model.merges[%zu] \"%.40s\" is not two tokens "
                           "separated by one space", t->what, i, a);
                goto merges_out;
            }
            al = (size_t)(sp - a);
            b = sp + 1;
            bl = json_string_length(m) - al - 1;
        } else if (json_is_array(m) && json_array_size(m) == 2 &&
                   json_is_string(json_array_get(m, 0)) && json_is_string(json_array_get(m, 1))) {
            a = json_string_value(json_array_get(m, 0));
            al = json_string_length(json_array_get(m, 0));
            b = json_string_value(json_array_get(m, 1));
            bl = json_string_length(json_array_get(m, 1));
        } else {
            r = sw_err(SW_EFORMAT, "%s: model.merges[%zu] is neither \"a b\" nor [\"a\", \"b\"]",
                       t->what, i);
            goto merges_out;
        }
        int32_t ia = vocab_find(t, a, al), ib = vocab_find(t, b, bl), im;
        if (ia == NO_ID || ib == NO_ID) {
            r = sw_err(SW_EFORMAT, "%s: model.merges[%zu]: '%.*s' is not in the vocabulary",
                       t->what, i, ia == NO_ID ? (int)(al > 40 ? 40 : al) : (int)(bl > 40 ? 40 : bl),
                       ia == NO_ID ? a : b);
            goto merges_out;
        }
        if (al + bl > cat_cap) {
            char *p = sw_realloc(cat, al + bl);
            if (!p) {
                r = -ENOMEM;
                goto merges_out;
            }
            cat = p;
            cat_cap = al + bl;
        }
        memcpy(cat, a, al);
        memcpy(cat + al, b, bl);
        im = vocab_find(t, cat, al + bl);
        if (im == NO_ID) {
            r = sw_err(SW_EFORMAT, "%s: model.merges[%zu]: the merged token '%.*s' is not in the "
                       "vocabulary", t->what, i, (int)(al + bl > 40 ? 40 : al + bl), cat);
            goto merges_out;
        }
        /* a later duplicate overrides an earlier one, as in the tokenizers library */
        if ((r = u64map_put(&t->merges, ((uint64_t)(uint32_t)ia << 32) | (uint32_t)ib,
                            ((uint64_t)i << 32) | (uint32_t)im)) < 0)
            goto merges_out;
    }
    r = 0;
merges_out:
    sw_free(cat);
    return r;
}

/* ------------------------------------------------------------ added tokens ---- */

static int trie_add(trie_t *tr, const uint8_t *s, size_t n, int32_t idx)
{
    uint32_t node = 0;
    int r;

    for (size_t i = 0; i < n; i++) {
        uint64_t child;
        uint64_t key = ((uint64_t)node << 8) | s[i];
        if (!u64map_get(&tr->edges, key, &child)) {
            if (tr->nodes == tr->cap) {
                size_t cap = tr->cap ? tr->cap * 2 : 64;
                int32_t *p = sw_realloc(tr->term, cap * sizeof(int32_t));
                if (!p)
                    return -ENOMEM;
                tr->term = p;
                tr->cap = cap;
            }
            child = tr->nodes++;
            tr->term[child] = -1;
            if ((r = u64map_put(&tr->edges, key, child)) < 0)
                return r;
        }
        node = (uint32_t)child;
    }
    tr->term[node] = idx;
    return 0;
}

static int trie_init(trie_t *tr)
{
    int r = u64map_init(&tr->edges, 64);

    if (r < 0)
        return r;
    tr->term = sw_malloc(64 * sizeof(int32_t));
    if (!tr->term)
        return -ENOMEM;
    tr->cap = 64;
    tr->nodes = 1;
    tr->term[0] = -1;
    return 0;
}

/* Longest added token starting at s[0..n); returns its index and length, or -1. */
static int32_t trie_longest(const trie_t *tr, const uint8_t *s, size_t n, size_t *mlen)
{
    uint64_t node = 0;
    int32_t best = -1;

    for (size_t i = 0; i < n; i++) {
        if (!u64map_get(&tr->edges, (node << 8) | s[i], &node))
            break;
        if (tr->term[node] >= 0) {
            best = tr->term[node];
            *mlen = i + 1;
        }
    }
    return best;
}

static int load_added(sw_tokenizer_t *t, json_t *arr)
{
    int r;

    if (!arr || json_is_null(arr))
        return 0;
    if (!json_is_array(arr))
        return sw_err(SW_EFORMAT, "%s: added_tokens is not an array", t->what);
    if (json_array_size(arr) > MAX_ADDED)
        return sw_err(SW_ELIMIT, "%s: more than %d added tokens", t->what, MAX_ADDED);
    t->added = sw_calloc(json_array_size(arr) + 1, sizeof(added_t));
    if (!t->added)
        return -ENOMEM;
    if ((r = trie_init(&t->trie_raw)) < 0 || (r = trie_init(&t->trie_norm)) < 0)
        return r;
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *o = json_array_get(arr, i), *id = json_object_get(o, "id");
        added_t *a = &t->added[t->nadded];
        const char *content;
        size_t clen;
        char where[48];
        snprintf(where, sizeof(where), "added_tokens[%zu]", i);
        if (!json_is_object(o))
            return sw_err(SW_EFORMAT, "%s: %s is not an object", t->what, where);
        if (!json_is_integer(id) || json_integer_value(id) < 0 ||
            json_integer_value(id) >= (json_int_t)t->n_ids)
            return sw_err(SW_EFORMAT, "%s: %s.id is not an id from 0 to %zu", t->what, where,
                          t->n_ids - 1);
        if ((r = get_str(t, o, "content", true, &content, &clen, where)) < 0)
            return r;
        if (clen == 0)
            return sw_err(SW_EFORMAT, "%s: %s.content is empty", t->what, where);
        a->id = (int32_t)json_integer_value(id);
        if ((r = get_bool(t, o, "special", false, &a->special, where)) < 0 ||
            (r = get_bool(t, o, "lstrip", false, &a->lstrip, where)) < 0 ||
            (r = get_bool(t, o, "rstrip", false, &a->rstrip, where)) < 0 ||
            (r = get_bool(t, o, "single_word", false, &a->single_word, where)) < 0 ||
            (r = get_bool(t, o, "normalized", !a->special, &a->normalized, where)) < 0)
            return r;
        if ((r = set_token(t, a->id, content, clen, true)) < 0)
            return r;
        a->off = t->tok_off[a->id];
        a->len = (uint32_t)clen;
        t->flags[a->id] |= 2 | (a->special ? 4 : 0);
        r = trie_add(a->normalized ? &t->trie_norm : &t->trie_raw, (const uint8_t *)content, clen,
                     (int32_t)t->nadded);
        if (r < 0)
            return r;
        t->nadded++;
    }
    return 0;
}

/* ------------------------------------------------------------ pipeline config ---- */

static int load_normalizer(sw_tokenizer_t *t, json_t *o, int depth)
{
    const char *type = type_of(o);
    norm_t *n;
    int r;

    if (!o || json_is_null(o))
        return 0;
    if (!type)
        return sw_err(SW_EFORMAT, "%s: normalizer has no type", t->what);
    if (strcmp(type, "Sequence") == 0) {
        json_t *arr = json_object_get(o, "normalizers");
        if (!json_is_array(arr) || depth > 4)
            return sw_err(SW_EFORMAT, "%s: normalizer Sequence has no normalizers array", t->what);
        for (size_t i = 0; i < json_array_size(arr); i++)
            if ((r = load_normalizer(t, json_array_get(arr, i), depth + 1)) < 0)
                return r;
        return 0;
    }
    if (t->nnorm == MAX_STEPS)
        return sw_err(SW_ELIMIT, "%s: more than %d normalizers", t->what, MAX_STEPS);
    n = &t->norm[t->nnorm];
    if (strcmp(type, "NFC") == 0) {
        n->kind = NORM_NFC;
    } else if (strcmp(type, "Prepend") == 0) {
        const char *s;
        size_t len;
        if ((r = get_str(t, o, "prepend", true, &s, &len, "normalizer Prepend")) < 0)
            return r;
        n->kind = NORM_PREPEND;
        n->a = dup_bytes(s, len);
        n->alen = len;
        if (!n->a)
            return -ENOMEM;
    } else if (strcmp(type, "Replace") == 0) {
        const char *s, *c;
        size_t len, clen;
        if ((r = get_string_pattern(t, o, &s, &len, "normalizer Replace")) < 0 ||
            (r = get_str(t, o, "content", true, &c, &clen, "normalizer Replace")) < 0)
            return r;
        n->kind = NORM_REPLACE;
        n->a = dup_bytes(s, len);
        n->b = dup_bytes(c, clen);
        n->alen = len;
        n->blen = clen;
        if (!n->a || !n->b)
            return -ENOMEM;
    } else if (strcmp(type, "Strip") == 0) {
        n->kind = NORM_STRIP;
        if ((r = get_bool(t, o, "strip_left", false, &n->left, "normalizer Strip")) < 0 ||
            (r = get_bool(t, o, "strip_right", false, &n->right, "normalizer Strip")) < 0)
            return r;
    } else {
        return sw_err(SW_EUNSUPPORTED, "%s: normalizer type '%s' is not supported", t->what, type);
    }
    t->nnorm++;
    return 0;
}

static int load_metaspace(sw_tokenizer_t *t, json_t *o, const char *where, char *repl,
                          size_t *repl_len, prepend_t *prepend, bool *split)
{
    const char *s, *scheme;
    size_t len;
    bool add_prefix = true;
    int r;

    if ((r = get_str(t, o, "replacement", false, &s, &len, where)) < 0)
        return r;
    if (!s) {
        s = "\xe2\x96\x81";
        len = 3;
    }
    if (len == 0 || len > 4)
        return sw_err(SW_EFORMAT, "%s: %s.replacement is not one character", t->what, where);
    memcpy(repl, s, len);
    *repl_len = len;
    if ((r = get_str(t, o, "prepend_scheme", false, &scheme, NULL, where)) < 0 ||
        (r = get_bool(t, o, "add_prefix_space", true, &add_prefix, where)) < 0)
        return r;
    if (!scheme)
        *prepend = add_prefix ? PREPEND_ALWAYS : PREPEND_NEVER;
    else if (strcmp(scheme, "always") == 0)
        *prepend = PREPEND_ALWAYS;
    else if (strcmp(scheme, "first") == 0)
        *prepend = PREPEND_FIRST;
    else if (strcmp(scheme, "never") == 0)
        *prepend = PREPEND_NEVER;
    else
        return sw_err(SW_EFORMAT, "%s: %s.prepend_scheme '%.20s' is not always, first or never",
                      t->what, where, scheme);
    if (split)
        return get_bool(t, o, "split", true, split, where);
    return 0;
}

static int load_pretok(sw_tokenizer_t *t, json_t *o, int depth)
{
    const char *type = type_of(o);
    pretok_t *p;
    int r;

    if (!o || json_is_null(o))
        return 0;
    if (!type)
        return sw_err(SW_EFORMAT, "%s: pre_tokenizer has no type", t->what);
    if (strcmp(type, "Sequence") == 0) {
        json_t *arr = json_object_get(o, "pretokenizers");
        if (!json_is_array(arr) || depth > 4)
            return sw_err(SW_EFORMAT, "%s: pre_tokenizer Sequence has no pretokenizers array",
                          t->what);
        for (size_t i = 0; i < json_array_size(arr); i++)
            if ((r = load_pretok(t, json_array_get(arr, i), depth + 1)) < 0)
                return r;
        return 0;
    }
    if (t->npretok == MAX_STEPS)
        return sw_err(SW_ELIMIT, "%s: more than %d pre-tokenizers", t->what, MAX_STEPS);
    if (t->byte_level)
        return sw_err(SW_EUNSUPPORTED, "%s: pre-tokenizer '%s' after ByteLevel is not supported",
                      t->what, type);
    p = &t->pretok[t->npretok];
    if (strcmp(type, "Split") == 0) {
        json_t *pat = json_object_get(o, "pattern");
        json_t *re = json_is_object(pat) ? json_object_get(pat, "Regex") : NULL;
        const char *beh;
        bool invert = false;
        if (!json_is_string(re))
            return sw_err(SW_EUNSUPPORTED, "%s: Split pre-tokenizer without a Regex pattern is "
                          "not supported", t->what);
        int k = sw_tok_split_kind(json_string_value(re));
        if (k < 0)
            return sw_err(SW_EUNSUPPORTED, "%s: Split regex \"%.60s...\" is not one of the known "
                          "patterns (GPT-2, Llama 3, Qwen 2)", t->what, json_string_value(re));
        if ((r = get_str(t, o, "behavior", false, &beh, NULL, "pre_tokenizer Split")) < 0 ||
            (r = get_bool(t, o, "invert", false, &invert, "pre_tokenizer Split")) < 0)
            return r;
        if ((beh && strcmp(beh, "Isolated") != 0) || invert)
            return sw_err(SW_EUNSUPPORTED, "%s: Split behavior '%s'%s is not supported (only "
                          "Isolated)", t->what, beh ? beh : "?", invert ? " inverted" : "");
        p->kind = PT_SPLIT;
        p->split = (sw_split_kind_t)k;
    } else if (strcmp(type, "ByteLevel") == 0) {
        p->kind = PT_BYTELEVEL;
        if ((r = get_bool(t, o, "add_prefix_space", true, &p->add_prefix_space,
                          "pre_tokenizer ByteLevel")) < 0 ||
            (r = get_bool(t, o, "use_regex", true, &p->use_regex, "pre_tokenizer ByteLevel")) < 0)
            return r;
        p->split = SW_SPLIT_GPT2;
        t->byte_level = true;
    } else if (strcmp(type, "Metaspace") == 0) {
        p->kind = PT_METASPACE;
        if ((r = load_metaspace(t, o, "pre_tokenizer Metaspace", p->repl, &p->repl_len,
                                &p->prepend, &p->ms_split)) < 0)
            return r;
    } else if (strcmp(type, "Digits") == 0) {
        p->kind = PT_DIGITS;
        if ((r = get_bool(t, o, "individual_digits", false, &p->individual,
                          "pre_tokenizer Digits")) < 0)
            return r;
    } else {
        return sw_err(SW_EUNSUPPORTED, "%s: pre_tokenizer type '%s' is not supported", t->what,
                      type);
    }
    t->npretok++;
    return 0;
}

static int load_post(sw_tokenizer_t *t, json_t *o, int depth)
{
    const char *type = type_of(o);

    if (!o || json_is_null(o))
        return 0;
    if (!type)
        return sw_err(SW_EFORMAT, "%s: post_processor has no type", t->what);
    if (strcmp(type, "ByteLevel") == 0)
        return 0; /* it only adjusts offsets */
    if (strcmp(type, "Sequence") == 0) {
        json_t *arr = json_object_get(o, "processors");
        int r;
        if (!json_is_array(arr) || depth > 4)
            return sw_err(SW_EFORMAT, "%s: post_processor Sequence has no processors array",
                          t->what);
        for (size_t i = 0; i < json_array_size(arr); i++)
            if ((r = load_post(t, json_array_get(arr, i), depth + 1)) < 0)
                return r;
        return 0;
    }
    if (strcmp(type, "TemplateProcessing") != 0)
        return sw_err(SW_EUNSUPPORTED, "%s: post_processor type '%s' is not supported", t->what,
                      type);
    if (t->ntmpl)
        return sw_err(SW_EUNSUPPORTED, "%s: more than one TemplateProcessing", t->what);
    json_t *single = json_object_get(o, "single"), *specials = json_object_get(o, "special_tokens");
    bool seen_seq = false;
    if (!json_is_array(single) || json_array_size(single) > MAX_TEMPLATE)
        return sw_err(SW_EFORMAT, "%s: post_processor.single is not an array of at most %d items",
                      t->what, MAX_TEMPLATE);
    for (size_t i = 0; i < json_array_size(single); i++) {
        json_t *it = json_array_get(single, i), *st = json_object_get(it, "SpecialToken");
        tmpl_t *m = &t->tmpl[t->ntmpl];
        if (json_object_get(it, "Sequence")) {
            m->is_seq = true;
            seen_seq = true;
        } else if (json_is_object(st) && json_is_string(json_object_get(st, "id"))) {
            const char *name = json_string_value(json_object_get(st, "id"));
            json_t *sp = json_is_object(specials) ? json_object_get(specials, name) : NULL;
            json_t *ids = json_is_object(sp) ? json_object_get(sp, "ids") : NULL;
            if (json_is_array(ids)) {
                if (json_array_size(ids) > 8)
                    return sw_err(SW_ELIMIT, "%s: post_processor special '%.40s' has over 8 ids",
                                  t->what, name);
                for (size_t k = 0; k < json_array_size(ids); k++) {
                    json_t *x = json_array_get(ids, k);
                    /* the id must name a token: vocabularies may have holes */
                    if (!json_is_integer(x) || json_integer_value(x) < 0 ||
                        json_integer_value(x) >= (json_int_t)t->n_ids ||
                        !(t->flags[json_integer_value(x)] & 1))
                        return sw_err(SW_EFORMAT, "%s: post_processor special '%.40s' has an id "
                                      "that is not in the vocabulary", t->what, name);
                    m->ids[m->nids++] = (int32_t)json_integer_value(x);
                }
            } else {
                int32_t id = vocab_find(t, name, strlen(name));
                if (id == NO_ID)
                    return sw_err(SW_EFORMAT, "%s: post_processor special token '%.40s' is not in "
                                  "the vocabulary", t->what, name);
                m->ids[m->nids++] = id;
            }
        } else {
            return sw_err(SW_EFORMAT, "%s: post_processor.single[%zu] is neither a Sequence nor a "
                          "SpecialToken", t->what, i);
        }
        t->ntmpl++;
    }
    if (!seen_seq)
        return sw_err(SW_EFORMAT, "%s: post_processor.single has no Sequence", t->what);
    return 0;
}

/* Decoder steps, compiled into per-token transforms and stream-level stripping. */
typedef enum { DEC_BYTELEVEL, DEC_REPLACE, DEC_BYTEFALLBACK, DEC_STRIP, DEC_METASPACE } dec_kind_t;
typedef struct {
    dec_kind_t kind;
    const char *a, *b;
    size_t alen, blen;
    size_t start, stop;
} dec_step_t;

static int load_decoder(sw_tokenizer_t *t, json_t *o, dec_step_t *steps, size_t *nsteps,
                        bool *fused, int depth)
{
    const char *type = type_of(o);
    int r;

    if (!o || json_is_null(o))
        return 0;
    if (!type)
        return sw_err(SW_EFORMAT, "%s: decoder has no type", t->what);
    if (strcmp(type, "Sequence") == 0) {
        json_t *arr = json_object_get(o, "decoders");
        if (!json_is_array(arr) || depth > 4)
            return sw_err(SW_EFORMAT, "%s: decoder Sequence has no decoders array", t->what);
        for (size_t i = 0; i < json_array_size(arr); i++)
            if ((r = load_decoder(t, json_array_get(arr, i), steps, nsteps, fused, depth + 1)) < 0)
                return r;
        return 0;
    }
    if (strcmp(type, "Fuse") == 0) {
        *fused = true;
        return 0;
    }
    if (*nsteps == MAX_STEPS)
        return sw_err(SW_ELIMIT, "%s: more than %d decoders", t->what, MAX_STEPS);
    dec_step_t *s = &steps[*nsteps];
    memset(s, 0, sizeof(*s));
    if (strcmp(type, "ByteLevel") == 0) {
        s->kind = DEC_BYTELEVEL;
    } else if (strcmp(type, "ByteFallback") == 0) {
        s->kind = DEC_BYTEFALLBACK;
    } else if (strcmp(type, "Replace") == 0) {
        s->kind = DEC_REPLACE;
        if ((r = get_string_pattern(t, o, &s->a, &s->alen, "decoder Replace")) < 0 ||
            (r = get_str(t, o, "content", true, &s->b, &s->blen, "decoder Replace")) < 0)
            return r;
        if (*fused && s->alen > 1)
            return sw_err(SW_EUNSUPPORTED, "%s: decoder Replace after Fuse is supported only for "
                          "one-byte patterns", t->what);
    } else if (strcmp(type, "Strip") == 0) {
        json_t *st = json_object_get(o, "start"), *sp = json_object_get(o, "stop");
        s->kind = DEC_STRIP;
        if ((r = get_str(t, o, "content", true, &s->a, &s->alen, "decoder Strip")) < 0)
            return r;
        if (s->alen == 0 || s->alen > 4 || !json_is_integer(st) || !json_is_integer(sp) ||
            json_integer_value(st) < 0 || json_integer_value(st) > 1024 ||
            json_integer_value(sp) < 0 || json_integer_value(sp) > 1024)
            return sw_err(SW_EFORMAT, "%s: decoder Strip needs one content character and start, "
                          "stop from 0 to 1024", t->what);
        s->start = (size_t)json_integer_value(st);
        s->stop = (size_t)json_integer_value(sp);
        if (*fused) {
            if (t->strip_char_len)
                return sw_err(SW_EUNSUPPORTED, "%s: two Strip decoders after Fuse", t->what);
            memcpy(t->strip_char, s->a, s->alen);
            t->strip_char_len = s->alen;
            t->strip_start = s->start;
            t->strip_stop = s->stop;
            return 0;
        }
    } else if (strcmp(type, "Metaspace") == 0) {
        prepend_t pp;
        s->kind = DEC_METASPACE;
        if ((r = load_metaspace(t, o, "decoder Metaspace", t->ms_repl, &t->ms_repl_len, &pp,
                                NULL)) < 0)
            return r;
        s->a = t->ms_repl;
        s->alen = t->ms_repl_len;
        t->ms_first = pp != PREPEND_NEVER;
    } else {
        return sw_err(SW_EUNSUPPORTED, "%s: decoder type '%s' is not supported", t->what, type);
    }
    if (*fused && s->kind != DEC_REPLACE)
        return sw_err(SW_EUNSUPPORTED, "%s: decoder '%s' after Fuse is not supported", t->what,
                      type);
    (*nsteps)++;
    return 0;
}

static int replace_all(sw_tokbuf_t *dst, const uint8_t *s, size_t n, const char *a, size_t al,
                       const char *b, size_t bl)
{
    int r;

    dst->len = 0;
    for (size_t i = 0; i < n;) {
        if (i + al <= n && memcmp(s + i, a, al) == 0) {
            if ((r = sw_tokbuf_put(dst, b, bl)) < 0)
                return r;
            i += al;
        } else {
            if ((r = sw_tokbuf_put(dst, s + i, 1)) < 0)
                return r;
            i++;
        }
    }
    return 0;
}

/* Runs the per-token decoder steps over every non-added token and stores the results. */
static int build_decode_table(sw_tokenizer_t *t, const dec_step_t *steps, size_t nsteps)
{
    sw_tokbuf_t cur = {0}, tmp = {0}, arena = {0};
    int r = 0;

    t->dec_off = sw_calloc(t->n_ids, sizeof(uint32_t));
    t->dec_len = sw_calloc(t->n_ids, sizeof(uint32_t));
    if (!t->dec_off || !t->dec_len)
        return -ENOMEM;
    for (size_t id = 0; id < t->n_ids; id++) {
        size_t n;
        const char *s;
        if (!(t->flags[id] & 1))
            continue;
        s = tok_str(t, (int32_t)id, &n);
        cur.len = 0;
        if ((r = sw_tokbuf_put(&cur, s, n)) < 0)
            goto out;
        for (size_t k = 0; k < nsteps && !(t->flags[id] & 2); k++) {
            const dec_step_t *st = &steps[k];
            switch (st->kind) {
            case DEC_BYTELEVEL:
                tmp.len = 0;
                for (size_t i = 0; i < cur.len;) {
                    uint32_t cp;
                    size_t l = sw_utf8_decode(cur.p + i, cur.len - i, &cp);
                    if (cp < 0x144 && t->char_byte[cp] >= 0) {
                        uint8_t byte = (uint8_t)t->char_byte[cp];
                        r = sw_tokbuf_put(&tmp, &byte, 1);
                    } else {
                        r = sw_tokbuf_put(&tmp, cur.p + i, l);
                    }
                    if (r < 0)
                        goto out;
                    i += l;
                }
                break;
            case DEC_BYTEFALLBACK: {
                unsigned v;
                char hex[3] = {0};
                if (cur.len != 6 || memcmp(cur.p, "<0x", 3) != 0 || cur.p[5] != '>')
                    continue;
                memcpy(hex, cur.p + 3, 2);
                if (sscanf(hex, "%2x", &v) != 1 || !((hex[0] >= '0' && hex[0] <= '9') ||
                                                     (hex[0] >= 'A' && hex[0] <= 'F')))
                    continue;
                tmp.len = 0;
                uint8_t byte = (uint8_t)v;
                if ((r = sw_tokbuf_put(&tmp, &byte, 1)) < 0)
                    goto out;
                break;
            }
            case DEC_REPLACE:
            case DEC_METASPACE:
                if ((r = replace_all(&tmp, cur.p, cur.len, st->a, st->alen,
                                     st->kind == DEC_REPLACE ? st->b : " ",
                                     st->kind == DEC_REPLACE ? st->blen : 1)) < 0)
                    goto out;
                break;
            case DEC_STRIP: {
                size_t a = 0, e = cur.len;
                for (size_t c = 0; c < st->start && a + st->alen <= e &&
                                   memcmp(cur.p + a, st->a, st->alen) == 0; c++)
                    a += st->alen;
                for (size_t c = 0; c < st->stop && e >= a + st->alen &&
                                   memcmp(cur.p + e - st->alen, st->a, st->alen) == 0; c++)
                    e -= st->alen;
                tmp.len = 0;
                if ((r = sw_tokbuf_put(&tmp, cur.p + a, e - a)) < 0)
                    goto out;
                break;
            }
            }
            sw_tokbuf_t x = cur;
            cur = tmp;
            tmp = x;
        }
        if (arena.len + cur.len > UINT32_MAX) {
            r = sw_err(SW_ELIMIT, "%s: decoded vocabulary exceeds 4 GiB", t->what);
            goto out;
        }
        if ((t->flags[id] & 2) && n > t->max_dec_len)
            t->max_dec_len = n;
        t->dec_off[id] = (uint32_t)arena.len;
        t->dec_len[id] = (uint32_t)cur.len;
        if (cur.len > t->max_dec_len)
            t->max_dec_len = cur.len;
        if ((r = sw_tokbuf_put(&arena, cur.p, cur.len)) < 0)
            goto out;
    }
    t->dec_arena = arena.p;
    t->dec_arena_len = arena.len;
    arena.p = NULL;
out:
    sw_free(cur.p);
    sw_free(tmp.p);
    sw_free(arena.p);
    return r;
}

/* bos_token / eos_token: a string, an {"content": ...} object, or null. */
static int config_token(sw_tokenizer_t *t, json_t *cfg, const char *key, const char *what,
                        int32_t *out)
{
    json_t *v = json_object_get(cfg, key);
    const char *s = NULL;

    *out = -ENOENT;
    if (!v || json_is_null(v))
        return 0;
    if (json_is_string(v))
        s = json_string_value(v);
    else if (json_is_object(v) && json_is_string(json_object_get(v, "content")))
        s = json_string_value(json_object_get(v, "content"));
    else
        return sw_err(SW_EFORMAT, "%s: %s is neither a string nor an object with content", what,
                      key);
    *out = vocab_find(t, s, strlen(s));
    if (*out == NO_ID)
        return sw_err(SW_EFORMAT, "%s: %s '%.40s' is not a token of the tokenizer", what, key, s);
    return 0;
}

void sw_tokenizer_free(sw_tokenizer_t *t)
{
    if (!t)
        return;
    sw_free(t->what);
    sw_free(t->tok_off);
    sw_free(t->tok_len);
    sw_free(t->flags);
    sw_free(t->arena);
    u64map_free(&t->vocab);
    u64map_free(&t->merges);
    sw_free(t->added);
    u64map_free(&t->trie_raw.edges);
    sw_free(t->trie_raw.term);
    u64map_free(&t->trie_norm.edges);
    sw_free(t->trie_norm.term);
    for (size_t i = 0; i < t->nnorm; i++) {
        sw_free(t->norm[i].a);
        sw_free(t->norm[i].b);
    }
    sw_free(t->dec_off);
    sw_free(t->dec_len);
    sw_free(t->dec_arena);
    sw_free(t);
}

int sw_tokenizer_load_mem(const char *text, size_t len, const char *config, size_t config_len,
                          const char *what, sw_tokenizer_t **out)
{
    sw_tokenizer_t *t = NULL;
    json_t *root = NULL, *cfg = NULL, *model, *vocab, *added, *v;
    const char *key;
    dec_step_t steps[MAX_STEPS];
    size_t nsteps = 0, max_id = 0;
    bool fused = false;
    char *cfg_what = NULL;
    int r;

    if (len > SW_TOKENIZER_MAX_FILE)
        return sw_err(SW_ELIMIT, "%s: %zu bytes, more than the %u allowed", what, len,
                      SW_TOKENIZER_MAX_FILE);
    if ((r = sw_json_parse(text, len, what, &root)) < 0)
        return r;
    t = sw_calloc(1, sizeof(*t));
    if (!t) {
        r = -ENOMEM;
        goto out;
    }
    t->what = sw_strdup(what);
    if (!t->what) {
        r = -ENOMEM;
        goto out;
    }
    t->bos_id = t->eos_id = -ENOENT;
    if (!json_is_object(root)) {
        r = sw_err(SW_EFORMAT, "%s: not a JSON object", what);
        goto out;
    }

    /* size the id space: the largest id of the vocabulary and the added tokens, bounded */
    model = json_object_get(root, "model");
    vocab = json_is_object(model) ? json_object_get(model, "vocab") : NULL;
    added = json_object_get(root, "added_tokens");
    if (json_is_object(vocab)) {
        json_object_foreach(vocab, key, v) {
            if (json_is_integer(v) && json_integer_value(v) >= 0 &&
                json_integer_value(v) < SW_TOKENIZER_MAX_VOCAB &&
                (size_t)json_integer_value(v) > max_id)
                max_id = (size_t)json_integer_value(v);
        }
    }
    for (size_t i = 0; json_is_array(added) && i < json_array_size(added); i++) {
        json_t *id = json_object_get(json_array_get(added, i), "id");
        if (json_is_integer(id) && json_integer_value(id) >= 0 &&
            json_integer_value(id) < SW_TOKENIZER_MAX_VOCAB && (size_t)json_integer_value(id) > max_id)
            max_id = (size_t)json_integer_value(id);
    }
    t->n_ids = max_id + 1;
    t->tok_off = sw_calloc(t->n_ids, sizeof(uint32_t));
    t->tok_len = sw_calloc(t->n_ids, sizeof(uint32_t));
    t->flags = sw_calloc(t->n_ids, 1);
    if (!t->tok_off || !t->tok_len || !t->flags) {
        r = -ENOMEM;
        goto out;
    }
    if ((r = u64map_init(&t->vocab, t->n_ids)) < 0)
        goto out;
    init_byte_map(t);
    if ((r = load_model(t, model)) < 0 || (r = load_added(t, added)) < 0 ||
        (r = load_normalizer(t, json_object_get(root, "normalizer"), 0)) < 0 ||
        (r = load_pretok(t, json_object_get(root, "pre_tokenizer"), 0)) < 0 ||
        (r = load_post(t, json_object_get(root, "post_processor"), 0)) < 0 ||
        (r = load_decoder(t, json_object_get(root, "decoder"), steps, &nsteps, &fused, 0)) < 0)
        goto out;
    if (!t->added && (r = trie_init(&t->trie_raw)) < 0)
        goto out;
    if (!t->added && (r = trie_init(&t->trie_norm)) < 0)
        goto out;
    for (int b = 0; b < 256; b++) {
        uint8_t u[4];
        size_t n = sw_utf8_encode(t->byte_char[b], u);
        t->byte_id[b] = vocab_find(t, u, n);
    }
    if ((r = build_decode_table(t, steps, nsteps)) < 0)
        goto out;

    if (config) {
        size_t wl = strlen(what) + 32;
        cfg_what = sw_malloc(wl);
        if (!cfg_what) {
            r = -ENOMEM;
            goto out;
        }
        snprintf(cfg_what, wl, "%s (tokenizer_config)", what);
        /* tokenizer_config.json often holds model_max_length as 1e30 written out as an integer,
         * which jansson refuses as an integer: read numbers as reals (only strings are used) */
        json_error_t e;
        cfg = json_loadb(config, config_len, JSON_DECODE_INT_AS_REAL | JSON_REJECT_DUPLICATES, &e);
        if (!cfg) {
            r = sw_err(SW_EFORMAT, "%s: invalid JSON at line %d column %d: %s", cfg_what, e.line,
                       e.column, e.text);
            goto out;
        }
        if (!json_is_object(cfg)) {
            r = sw_err(SW_EFORMAT, "%s: not a JSON object", cfg_what);
            goto out;
        }
        if ((r = config_token(t, cfg, "bos_token", cfg_what, &t->bos_id)) < 0 ||
            (r = config_token(t, cfg, "eos_token", cfg_what, &t->eos_id)) < 0)
            goto out;
    }
    *out = t;
    t = NULL;
out:
    sw_free(cfg_what);
    json_decref(root);
    json_decref(cfg);
    sw_tokenizer_free(t);
    return r;
}

int sw_tokenizer_load(const char *path, sw_tokenizer_t **out)
{
    struct stat st;
    char *json_path = NULL, *cfg_path = NULL, *text = NULL, *cfg = NULL, *dir = NULL;
    size_t len, cfg_len = 0;
    int r;

    if (stat(path, &st) < 0)
        return sw_err(-errno, "%s: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) {
        json_path = sw_path_join(path, "tokenizer.json");
        cfg_path = sw_path_join(path, "tokenizer_config.json");
    } else {
        const char *slash = strrchr(path, '/');
        json_path = sw_strdup(path);
        dir = slash ? dup_bytes(path, (size_t)(slash - path)) : sw_strdup(".");
        cfg_path = dir ? sw_path_join(dir, "tokenizer_config.json") : NULL;
    }
    if (!json_path || !cfg_path) {
        r = -ENOMEM;
        goto out;
    }
    if ((r = sw_file_read(json_path, SW_TOKENIZER_MAX_FILE, &text, &len)) < 0)
        goto out;
    if (stat(cfg_path, &st) == 0 && (r = sw_file_read(cfg_path, CONFIG_MAX, &cfg, &cfg_len)) < 0)
        goto out;
    r = sw_tokenizer_load_mem(text, len, cfg, cfg_len, json_path, out);
out:
    sw_free(json_path);
    sw_free(cfg_path);
    sw_free(dir);
    sw_free(text);
    sw_free(cfg);
    return r;
}

/* ------------------------------------------------------------ vocabulary queries ---- */

size_t sw_tokenizer_vocab_size(const sw_tokenizer_t *t)
{
    return t->n_ids;
}

int32_t sw_tokenizer_token_id(const sw_tokenizer_t *t, const char *token)
{
    int32_t id = vocab_find(t, token, strlen(token));

    return id == NO_ID ? -ENOENT : id;
}

const char *sw_tokenizer_token(const sw_tokenizer_t *t, int32_t id, size_t *len)
{
    if (id < 0 || (size_t)id >= t->n_ids || !(t->flags[id] & 1))
        return NULL;
    return tok_str(t, id, len);
}

int sw_tokenizer_is_special(const sw_tokenizer_t *t, int32_t id)
{
    return id >= 0 && (size_t)id < t->n_ids && (t->flags[id] & 4);
}

int32_t sw_tokenizer_bos(const sw_tokenizer_t *t)
{
    return t->bos_id;
}

int32_t sw_tokenizer_eos(const sw_tokenizer_t *t)
{
    return t->eos_id;
}

/* ------------------------------------------------------------ encoding ---- */

typedef struct {
    size_t off, len;
} span_t;

typedef struct {
    int32_t id;
    int32_t prev, next;
} sym_t;

typedef struct {
    uint32_t rank, pos;
    int32_t left_id, right_id;
} cand_t;

/* Scratch space of one encode call. */
typedef struct {
    const sw_tokenizer_t *t;
    int32_t *ids; /* output, growable */
    size_t n, cap;
    sw_tokbuf_t norm, nfc, pbuf[2], mapped;
    span_t *spans[2];
    size_t nspans[2], spans_cap[2];
    sym_t *syms;
    size_t syms_cap;
    cand_t *heap;
    size_t heap_cap;
    bool first_segment;
} work_t;

static int out_id(work_t *w, int32_t id)
{
    if (w->n == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 256;
        int32_t *p = sw_realloc(w->ids, cap * sizeof(int32_t));
        if (!p)
            return -ENOMEM;
        w->ids = p;
        w->cap = cap;
    }
    w->ids[w->n++] = id;
    return 0;
}

static int span_push(work_t *w, int k, size_t off, size_t len)
{
    if (w->nspans[k] == w->spans_cap[k]) {
        size_t cap = w->spans_cap[k] ? w->spans_cap[k] * 2 : 64;
        span_t *p = sw_realloc(w->spans[k], cap * sizeof(span_t));
        if (!p)
            return -ENOMEM;
        w->spans[k] = p;
        w->spans_cap[k] = cap;
    }
    w->spans[k][w->nspans[k]++] = (span_t){off, len};
    return 0;
}

static inline bool cand_less(const cand_t *a, const cand_t *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(cand_t *h, size_t *n, cand_t c)
{
    size_t i = (*n)++;

    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_less(&c, &h[p]))
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = c;
}

static cand_t heap_pop(cand_t *h, size_t *n)
{
    cand_t top = h[0], last = h[--(*n)];
    size_t i = 0;

    for (;;) {
        size_t l = 2 * i + 1, m = i;
        const cand_t *best = &last;
        if (l < *n && cand_less(&h[l], best)) {
            m = l;
            best = &h[l];
        }
        if (l + 1 < *n && cand_less(&h[l + 1], best))
            m = l + 1;
        if (m == i)
            break;
        h[i] = h[m];
        i = m;
    }
    if (*n)
        h[i] = last;
    return top;
}

static inline void try_pair(const sw_tokenizer_t *t, const sym_t *s, int32_t i, cand_t *h,
                            size_t *hn)
{
    uint64_t v;
    int32_t j = s[i].next;

    if (j < 0)
        return;
    if (u64map_get(&t->merges, ((uint64_t)(uint32_t)s[i].id << 32) | (uint32_t)s[j].id, &v))
        heap_push(h, hn, (cand_t){(uint32_t)(v >> 32), (uint32_t)i, s[i].id, s[j].id});
}

/* Adds the symbols of one character (or byte): its token, byte fallback, or unk. */
static int add_char_syms(work_t *w, const uint8_t *c, size_t n, size_t *ns, bool *unk_run)
{
    const sw_tokenizer_t *t = w->t;
    int32_t id = NO_ID;

    if (t->byte_level) {
        id = t->byte_id[c[0]];
    } else {
        id = vocab_find(t, c, n);
        if (id == NO_ID && t->byte_fallback) {
            size_t k;
            for (k = 0; k < n && t->byte_fallback_id[c[k]] != NO_ID; k++)
                ;
            if (k == n) {
                for (k = 0; k < n; k++)
                    w->syms[(*ns)++] = (sym_t){t->byte_fallback_id[c[k]], 0, 0};
                *unk_run = false;
                return 0;
            }
        }
    }
    if (id != NO_ID) {
        w->syms[(*ns)++] = (sym_t){id, 0, 0};
        *unk_run = false;
        return 0;
    }
    if (t->unk_id == NO_ID)
        return sw_err(SW_EFORMAT, "%s: the text has a character the vocabulary lacks, and the "
                      "model has no unk_token", t->what);
    if (!(t->fuse_unk && *unk_run))
        w->syms[(*ns)++] = (sym_t){t->unk_id, 0, 0};
    *unk_run = true;
    return 0;
}

/* BPE over one pre-token piece. */
static int bpe_piece(work_t *w, const uint8_t *s, size_t n)
{
    const sw_tokenizer_t *t = w->t;
    size_t ns = 0, hn = 0;
    bool unk_run = false;
    int r;

    if (n == 0)
        return 0;
    if (t->ignore_merges) {
        const uint8_t *key = s;
        size_t kl = n;
        if (t->byte_level) {
            w->mapped.len = 0;
            if ((r = sw_tokbuf_reserve(&w->mapped, n * 2)) < 0)
                return r;
            for (size_t i = 0; i < n; i++)
                w->mapped.len += sw_utf8_encode(t->byte_char[s[i]], w->mapped.p + w->mapped.len);
            key = w->mapped.p;
            kl = w->mapped.len;
        }
        int32_t id = vocab_find(t, key, kl);
        if (id != NO_ID)
            return out_id(w, id);
    }
    /* at most 4 symbols per byte (byte fallback gives one per byte, a character at least one) */
    if (n > w->syms_cap) {
        size_t cap = n < 64 ? 64 : n;
        sym_t *p = sw_realloc(w->syms, cap * sizeof(sym_t));
        cand_t *h = sw_realloc(w->heap, cap * 3 * sizeof(cand_t));
        if (p)
            w->syms = p;
        if (h)
            w->heap = h;
        if (!p || !h)
            return -ENOMEM;
        w->syms_cap = cap;
        w->heap_cap = cap * 3;
    }
    for (size_t i = 0; i < n;) {
        size_t l = 1;
        if (!t->byte_level) {
            uint32_t cp;
            l = sw_utf8_decode(s + i, n - i, &cp);
        }
        if ((r = add_char_syms(w, s + i, l, &ns, &unk_run)) < 0)
            return r;
        i += l;
    }
    sym_t *sy = w->syms;
    for (size_t i = 0; i < ns; i++) {
        sy[i].prev = (int32_t)i - 1;
        sy[i].next = i + 1 < ns ? (int32_t)i + 1 : -1;
    }
    for (size_t i = 0; i + 1 < ns; i++)
        try_pair(t, sy, (int32_t)i, w->heap, &hn);
    while (hn) {
        cand_t c = heap_pop(w->heap, &hn);
        int32_t i = (int32_t)c.pos, j = sy[i].next;
        uint64_t v;
        /* stale: the left symbol was merged away or either side changed since it was queued */
        if (sy[i].id != c.left_id || j < 0 || sy[j].id != c.right_id)
            continue;
        if (!u64map_get(&t->merges, ((uint64_t)(uint32_t)c.left_id << 32) | (uint32_t)c.right_id,
                        &v))
            continue;
        sy[i].id = (int32_t)(uint32_t)v;
        sy[i].next = sy[j].next;
        if (sy[j].next >= 0)
            sy[sy[j].next].prev = i;
        sy[j].id = NO_ID; /* dead */
        if (sy[i].prev >= 0)
            try_pair(t, sy, sy[i].prev, w->heap, &hn);
        try_pair(t, sy, i, w->heap, &hn);
    }
    for (int32_t i = ns ? 0 : -1; i >= 0; i = sy[i].next)
        if ((r = out_id(w, sy[i].id)) < 0)
            return r;
    return 0;
}

/* Split callback: collects pieces of the current span into spans[dst]. */
typedef struct {
    work_t *w;
    int dst;
    size_t base;
} split_ctx_t;

static int split_emit(void *ctx, size_t off, size_t n)
{
    split_ctx_t *c = ctx;

    return span_push(c->w, c->dst, c->base + off, n);
}

static bool is_digit_cp(uint32_t cp)
{
    return (sw_uc_class(cp) & SW_UC_N) != 0 && cp != SW_UC_INVALID;
}

/*
 * Pre-tokenizes buf[0..len) and runs BPE on every piece. Pieces live as spans over one of two
 * byte buffers; steps that rewrite bytes (ByteLevel's prefix space, Metaspace) copy into the other.
 */
static int pretok_and_model(work_t *w, const uint8_t *text, size_t len)
{
    const sw_tokenizer_t *t = w->t;
    const uint8_t *buf = text;
    int cur = 0, r;

    w->nspans[0] = 0;
    if ((r = span_push(w, 0, 0, len)) < 0)
        return r;
    for (size_t k = 0; k < t->npretok; k++) {
        const pretok_t *p = &t->pretok[k];
        int dst = !cur;
        w->nspans[dst] = 0;
        if (p->kind == PT_SPLIT || (p->kind == PT_BYTELEVEL && !p->add_prefix_space)) {
            if (p->kind == PT_BYTELEVEL && !p->use_regex)
                continue;
            for (size_t i = 0; i < w->nspans[cur]; i++) {
                span_t sp = w->spans[cur][i];
                split_ctx_t c = {w, dst, sp.off};
                if ((r = sw_tok_split(p->split, buf + sp.off, sp.len, split_emit, &c)) < 0)
                    return r;
            }
        } else if (p->kind == PT_DIGITS) {
            for (size_t i = 0; i < w->nspans[cur]; i++) {
                span_t sp = w->spans[cur][i];
                size_t a = sp.off, e = sp.off + sp.len;
                while (a < e) {
                    uint32_t cp;
                    size_t l = sw_utf8_decode(buf + a, e - a, &cp), b = a + l;
                    bool dig = is_digit_cp(cp);
                    if (!dig || !p->individual) {
                        while (b < e) {
                            size_t l2 = sw_utf8_decode(buf + b, e - b, &cp);
                            if (is_digit_cp(cp) != dig)
                                break;
                            b += l2;
                        }
                    }
                    if ((r = span_push(w, dst, a, b - a)) < 0)
                        return r;
                    a = b;
                }
            }
        } else {
            /* ByteLevel with add_prefix_space, or Metaspace: rewrite into the other buffer */
            sw_tokbuf_t *ob = &w->pbuf[k & 1];
            if (buf == ob->p) {
                ob = &w->pbuf[!(k & 1)];
            }
            ob->len = 0;
            if ((r = sw_tokbuf_reserve(ob, 16)) < 0)
                return r;
            for (size_t i = 0; i < w->nspans[cur]; i++) {
                span_t sp = w->spans[cur][i];
                size_t start = ob->len;
                if (p->kind == PT_BYTELEVEL) {
                    if ((sp.len == 0 || buf[sp.off] != ' ') && (r = sw_tokbuf_put(ob, " ", 1)) < 0)
                        return r;
                    if ((r = sw_tokbuf_put(ob, buf + sp.off, sp.len)) < 0)
                        return r;
                } else {
                    bool pre = p->prepend == PREPEND_ALWAYS ||
                               (p->prepend == PREPEND_FIRST && w->first_segment && i == 0);
                    if (pre && !(sp.len >= p->repl_len &&
                                  memcmp(buf + sp.off, p->repl, p->repl_len) == 0) &&
                        (r = sw_tokbuf_put(ob, p->repl, p->repl_len)) < 0)
                        return r;
                    for (size_t j = 0; j < sp.len; j++) {
                        if (buf[sp.off + j] == ' ')
                            r = sw_tokbuf_put(ob, p->repl, p->repl_len);
                        else
                            r = sw_tokbuf_put(ob, buf + sp.off + j, 1);
                        if (r < 0)
                            return r;
                    }
                }
                size_t end = ob->len;
                if (p->kind == PT_BYTELEVEL && p->use_regex) {
                    /* spans are relative to ob, which is complete only at the end: split later */
                    if ((r = span_push(w, dst, start, end - start)) < 0)
                        return r;
                } else if (p->kind == PT_METASPACE && p->ms_split) {
                    size_t a = start;
                    for (size_t b = start + 1; b + p->repl_len <= end; b++) {
                        if (memcmp(ob->p + b, p->repl, p->repl_len) == 0) {
                            if ((r = span_push(w, dst, a, b - a)) < 0)
                                return r;
                            a = b;
                        }
                    }
                    if (end > a && (r = span_push(w, dst, a, end - a)) < 0)
                        return r;
                } else if ((r = span_push(w, dst, start, end - start)) < 0) {
                    return r;
                }
            }
            buf = ob->p;
            if (p->kind == PT_BYTELEVEL && p->use_regex) {
                /* now split each rewritten span with the GPT-2 pattern */
                cur = dst;
                dst = !cur;
                w->nspans[dst] = 0;
                for (size_t i = 0; i < w->nspans[cur]; i++) {
                    span_t sp = w->spans[cur][i];
                    split_ctx_t c = {w, dst, sp.off};
                    if ((r = sw_tok_split(SW_SPLIT_GPT2, buf + sp.off, sp.len, split_emit, &c)) < 0)
                        return r;
                }
            }
        }
        cur = dst;
    }
    for (size_t i = 0; i < w->nspans[cur]; i++) {
        span_t sp = w->spans[cur][i];
        if ((r = bpe_piece(w, buf + sp.off, sp.len)) < 0)
            return r;
    }
    return 0;
}

/* Whitespace per the Unicode White_Space property: length of the run ending at s[end) going back
 * (left) or starting at s[0] going forward. */
static size_t ws_back(const uint8_t *s, size_t end)
{
    size_t i = end;

    while (i > 0) {
        size_t j = i - 1;
        uint32_t cp;
        while (j > 0 && (s[j] & 0xC0) == 0x80 && i - j < 4)
            j--;
        size_t l = sw_utf8_decode(s + j, i - j, &cp);
        if (j + l != i || !(sw_uc_class(cp) & SW_UC_WS))
            break;
        i = j;
    }
    return end - i;
}

static size_t ws_fwd(const uint8_t *s, size_t n)
{
    size_t i = 0;

    while (i < n) {
        uint32_t cp;
        size_t l = sw_utf8_decode(s + i, n - i, &cp);
        if (!(sw_uc_class(cp) & SW_UC_WS))
            break;
        i += l;
    }
    return i;
}

static bool word_char_before(const uint8_t *s, size_t end)
{
    size_t j = end;
    uint32_t cp;

    if (end == 0)
        return false;
    j = end - 1;
    while (j > 0 && (s[j] & 0xC0) == 0x80 && end - j < 4)
        j--;
    if (j + sw_utf8_decode(s + j, end - j, &cp) != end)
        return false;
    return (sw_uc_class(cp) & (SW_UC_L | SW_UC_N)) != 0;
}

static bool word_char_at(const uint8_t *s, size_t n)
{
    uint32_t cp;

    if (n == 0)
        return false;
    sw_utf8_decode(s, n, &cp);
    return (sw_uc_class(cp) & (SW_UC_L | SW_UC_N)) != 0;
}

/* Added-token matches in s[0..n) from one trie, after single_word/lstrip/rstrip. */
typedef struct {
    size_t start, stop;
    int32_t id;
} match_t;

typedef int (*segment_fn)(work_t *w, const uint8_t *s, size_t n);

static int split_added(work_t *w, const trie_t *tr, const uint8_t *s, size_t n, segment_fn seg)
{
    const sw_tokenizer_t *t = w->t;
    size_t pos = 0, last = 0; /* last: end of the previous match (text before it is consumed) */
    int r;

    while (pos < n) {
        size_t mlen = 0;
        int32_t ai = tr->nodes > 1 ? trie_longest(tr, s + pos, n - pos, &mlen) : -1;
        if (ai < 0) {
            pos++;
            continue;
        }
        const added_t *a = &t->added[ai];
        size_t start = pos, stop = pos + mlen;
        if (a->single_word && (word_char_before(s, start) || word_char_at(s + stop, n - stop))) {
            pos = stop;
            continue;
        }
        if (a->lstrip) {
            size_t ns = start - ws_back(s, start);
            start = ns > last ? ns : last;
        }
        if (a->rstrip)
            stop += ws_fwd(s + stop, n - stop);
        if (start > last && (r = seg(w, s + last, start - last)) < 0)
            return r;
        if ((r = out_id(w, a->id)) < 0)
            return r;
        w->first_segment = false;
        last = stop;
        pos = stop;
    }
    if (n > last && (r = seg(w, s + last, n - last)) < 0)
        return r;
    return 0;
}

static int model_segment(work_t *w, const uint8_t *s, size_t n)
{
    int r = pretok_and_model(w, s, n);

    w->first_segment = false;
    return r;
}

/* A stretch of raw text between non-normalized added tokens: normalize, then the rest. */
static int normalize_segment(work_t *w, const uint8_t *s, size_t n)
{
    const sw_tokenizer_t *t = w->t;
    sw_tokbuf_t *a = &w->norm, *b = &w->nfc;
    int r;

    a->len = 0;
    if ((r = sw_tokbuf_put(a, s, n)) < 0)
        return r;
    for (size_t k = 0; k < t->nnorm; k++) {
        const norm_t *m = &t->norm[k];
        b->len = 0;
        switch (m->kind) {
        case NORM_NFC:
            r = sw_tok_nfc(a->p, a->len, b);
            break;
        case NORM_PREPEND:
            if (a->len == 0)
                continue;
            if ((r = sw_tokbuf_put(b, m->a, m->alen)) == 0)
                r = sw_tokbuf_put(b, a->p, a->len);
            break;
        case NORM_REPLACE:
            r = replace_all(b, a->p, a->len, m->a, m->alen, m->b, m->blen);
            break;
        case NORM_STRIP: {
            size_t st = m->left ? ws_fwd(a->p, a->len) : 0;
            size_t en = a->len - (m->right ? ws_back(a->p, a->len) : 0);
            r = sw_tokbuf_put(b, a->p + st, en > st ? en - st : 0);
            break;
        }
        }
        if (r < 0)
            return r;
        sw_tokbuf_t x = *a;
        *a = *b;
        *b = x;
    }
    if (a->len == 0)
        return 0;
    /* normalized added tokens are searched for in the normalized text; the buffer is moved out
     * of the work area so nested use of norm/nfc cannot clobber it */
    sw_tokbuf_t mine = *a;
    *a = (sw_tokbuf_t){0};
    if (w->t->trie_norm.nodes > 1)
        r = split_added(w, &w->t->trie_norm, mine.p, mine.len, model_segment);
    else
        r = model_segment(w, mine.p, mine.len);
    if (!a->p) {
        mine.len = 0;
        *a = mine;
    } else {
        sw_free(mine.p);
    }
    return r;
}

static int encode_all(const sw_tokenizer_t *t, const char *text, size_t len, unsigned flags,
                      work_t *w)
{
    int r;

    w->t = t;
    w->first_segment = true;
    bool add = (flags & SW_TOK_ADD_SPECIAL) && t->ntmpl;
    size_t k = 0;
    if (add) {
        for (; k < t->ntmpl && !t->tmpl[k].is_seq; k++)
            for (size_t j = 0; j < t->tmpl[k].nids; j++)
                if ((r = out_id(w, t->tmpl[k].ids[j])) < 0)
                    return r;
    }
    r = split_added(w, &t->trie_raw, (const uint8_t *)text, len, normalize_segment);
    if (r < 0)
        return r;
    if (add) {
        for (k++; k < t->ntmpl; k++)
            for (size_t j = 0; !t->tmpl[k].is_seq && j < t->tmpl[k].nids; j++)
                if ((r = out_id(w, t->tmpl[k].ids[j])) < 0)
                    return r;
    }
    return 0;
}

static void work_free(work_t *w)
{
    sw_free(w->ids);
    sw_free(w->norm.p);
    sw_free(w->nfc.p);
    sw_free(w->pbuf[0].p);
    sw_free(w->pbuf[1].p);
    sw_free(w->mapped.p);
    sw_free(w->spans[0]);
    sw_free(w->spans[1]);
    sw_free(w->syms);
    sw_free(w->heap);
}

int sw_tokenizer_encode_alloc(const sw_tokenizer_t *t, const char *text, size_t len,
                              unsigned flags, int32_t **ids, size_t *n)
{
    work_t w = {0};
    int r = encode_all(t, text, len, flags, &w);

    if (r == 0) {
        *ids = w.ids;
        *n = w.n;
        w.ids = NULL;
    }
    work_free(&w);
    return r;
}

int sw_tokenizer_encode(const sw_tokenizer_t *t, const char *text, size_t len, unsigned flags,
                        int32_t *ids, size_t cap, size_t *n)
{
    work_t w = {0};
    int r = encode_all(t, text, len, flags, &w);

    if (r == 0) {
        *n = w.n;
        if (w.n > cap)
            r = -ENOSPC;
        else if (w.n)
            memcpy(ids, w.ids, w.n * sizeof(int32_t));
    }
    work_free(&w);
    return r;
}

/* ------------------------------------------------------------ decoding ---- */

struct sw_detok {
    const sw_tokenizer_t *t;
    unsigned flags;
    bool started;       /* a token has been pushed (Metaspace first-token rule) */
    size_t stripped;    /* leading strip_char already dropped */
    bool past_start;    /* stream-level start strip is over */
    size_t held_strip;  /* trailing strip_char occurrences held back */
    uint8_t pend[4];    /* incomplete UTF-8 sequence */
    size_t npend;
    sw_tokbuf_t out, scratch;
};

int sw_detok_new(const sw_tokenizer_t *t, unsigned flags, sw_detok_t **out)
{
    sw_detok_t *d = sw_calloc(1, sizeof(*d));

    if (!d)
        return -ENOMEM;
    d->t = t;
    d->flags = flags;
    if (sw_tokbuf_reserve(&d->out, t->max_dec_len * 3 + 64) < 0 ||
        sw_tokbuf_reserve(&d->scratch, t->max_dec_len + 64) < 0) {
        sw_detok_free(d);
        return -ENOMEM;
    }
    *out = d;
    return 0;
}

void sw_detok_reset(sw_detok_t *d)
{
    d->started = false;
    d->stripped = 0;
    d->past_start = false;
    d->held_strip = 0;
    d->npend = 0;
    d->out.len = 0;
}

void sw_detok_free(sw_detok_t *d)
{
    if (!d)
        return;
    sw_free(d->out.p);
    sw_free(d->scratch.p);
    sw_free(d);
}

/* Length of the longest prefix of s[0..n) that could begin a valid UTF-8 sequence (1..3), 0 if
 * s[0] cannot start one. */
static size_t utf8_valid_prefix(const uint8_t *s, size_t n)
{
    uint8_t b = s[0];
    size_t need, i;
    uint8_t lo = 0x80, hi = 0xBF;

    if (b >= 0xC2 && b <= 0xDF)
        need = 2;
    else if (b >= 0xE0 && b <= 0xEF)
        need = 3;
    else if (b >= 0xF0 && b <= 0xF4)
        need = 4;
    else
        return 0;
    if (b == 0xE0)
        lo = 0xA0;
    else if (b == 0xED)
        hi = 0x9F;
    else if (b == 0xF0)
        lo = 0x90;
    else if (b == 0xF4)
        hi = 0x8F;
    for (i = 1; i < n && i < need; i++) {
        uint8_t c = s[i];
        if (c < (i == 1 ? lo : 0x80) || c > (i == 1 ? hi : 0xBF))
            break;
    }
    return i < need ? i : need - 1;
}

static int emit_text(sw_detok_t *d, const uint8_t *s, size_t n)
{
    const sw_tokenizer_t *t = d->t;
    size_t cl = t->strip_char_len;
    int r;

    /* stream-level Strip: leading */
    while (!d->past_start && n) {
        if (cl && d->stripped < t->strip_start && n >= cl && memcmp(s, t->strip_char, cl) == 0) {
            s += cl;
            n -= cl;
            d->stripped++;
            continue;
        }
        d->past_start = true;
    }
    if (!n)
        return 0;
    if (!cl || !t->strip_stop)
        return sw_tokbuf_put(&d->out, s, n);
    /* trailing: hold back up to strip_stop occurrences at the end */
    for (size_t i = 0; i < n;) {
        if (i + cl <= n && memcmp(s + i, t->strip_char, cl) == 0) {
            d->held_strip++;
            i += cl;
            continue;
        }
        for (; d->held_strip; d->held_strip--)
            if ((r = sw_tokbuf_put(&d->out, t->strip_char, cl)) < 0)
                return r;
        if ((r = sw_tokbuf_put(&d->out, s + i, 1)) < 0)
            return r;
        i++;
    }
    return 0;
}

/*
 * Appends bytes to the UTF-8 stream and emits every whole, valid character; each maximal invalid
 * subpart becomes one U+FFFD (as Rust's from_utf8_lossy and the WHATWG decoder do). An incomplete
 * sequence at the end stays pending, unless `final`.
 */
static int feed_bytes(sw_detok_t *d, const uint8_t *s, size_t n, bool final)
{
    static const uint8_t fffd[3] = {0xEF, 0xBF, 0xBD};
    sw_tokbuf_t *b = &d->scratch;
    size_t i = 0, run = 0;
    int r;

    b->len = 0;
    if ((r = sw_tokbuf_put(b, d->pend, d->npend)) < 0 || (r = sw_tokbuf_put(b, s, n)) < 0)
        return r;
    d->npend = 0;
    s = b->p;
    n = b->len;
    while (i < n) {
        uint32_t cp;
        if (s[i] < 0x80 || (sw_utf8_decode(s + i, n - i, &cp), cp != SW_UC_INVALID)) {
            i += s[i] < 0x80 ? 1 : sw_utf8_decode(s + i, n - i, &cp);
            continue;
        }
        size_t v = utf8_valid_prefix(s + i, n - i);
        if ((r = emit_text(d, s + run, i - run)) < 0)
            return r;
        if (v && i + v == n && !final) { /* incomplete at the end: hold it */
            memcpy(d->pend, s + i, v);
            d->npend = v;
            return 0;
        }
        if ((r = emit_text(d, fffd, 3)) < 0)
            return r;
        i += v ? v : 1;
        run = i;
    }
    return emit_text(d, s + run, n - run);
}

int sw_detok_push(sw_detok_t *d, int32_t id, const char **text, size_t *len)
{
    const sw_tokenizer_t *t = d->t;
    int r;

    d->out.len = 0;
    *text = (const char *)d->out.p;
    *len = 0;
    if (id < 0 || (size_t)id >= t->n_ids || !(t->flags[id] & 1))
        return sw_err(SW_EFORMAT, "token id %d is not in the vocabulary of %s (%zu ids)", (int)id,
                      t->what, t->n_ids);
    if ((d->flags & SW_DETOK_SKIP_SPECIAL) && (t->flags[id] & 4))
        return 0;
    const uint8_t *s = t->dec_arena + t->dec_off[id];
    size_t n = t->dec_len[id];
    if (t->flags[id] & 2) { /* added tokens decode to their content */
        s = (const uint8_t *)t->arena + t->tok_off[id];
        n = t->tok_len[id];
    }
    if (!d->started) {
        d->started = true;
        size_t rl;
        const char *raw = tok_str(t, id, &rl);
        if (t->ms_first && !(t->flags[id] & 2) && n && s[0] == ' ' && rl >= t->ms_repl_len &&
            memcmp(raw, t->ms_repl, t->ms_repl_len) == 0) {
            s++;
            n--;
        }
    }
    if ((r = feed_bytes(d, s, n, false)) < 0)
        return r;
    *text = (const char *)d->out.p;
    *len = d->out.len;
    return 0;
}

int sw_detok_flush(sw_detok_t *d, const char **text, size_t *len)
{
    int r;

    d->out.len = 0;
    *text = (const char *)d->out.p;
    *len = 0;
    if ((r = feed_bytes(d, NULL, 0, true)) < 0)
        return r;
    d->held_strip = 0; /* trailing Strip: dropped */
    *text = (const char *)d->out.p;
    *len = d->out.len;
    return 0;
}

int sw_tokenizer_decode(const sw_tokenizer_t *t, const int32_t *ids, size_t n, unsigned flags,
                        char *buf, size_t cap, size_t *len)
{
    sw_detok_t *d;
    size_t total = 0;
    const char *s;
    size_t sl;
    int r;

    if ((r = sw_detok_new(t, flags, &d)) < 0)
        return r;
    for (size_t i = 0; i <= n; i++) {
        r = i < n ? sw_detok_push(d, ids[i], &s, &sl) : sw_detok_flush(d, &s, &sl);
        if (r < 0)
            goto out;
        if (total + sl < cap)
            memcpy(buf + total, s, sl);
        total += sl;
    }
    *len = total;
    if (total + 1 > cap) {
        r = -ENOSPC;
        if (cap)
            buf[cap - 1] = '\0';
    } else {
        buf[total] = '\0';
    }
out:
    sw_detok_free(d);
    return r;
}
