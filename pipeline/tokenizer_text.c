/*
 * tokenizer_text.c - the text side of the tokenizer: UTF-8, Unicode classes, NFC, and the
 * pre-tokenizer split regexes of GPT-2, Llama 3 and Qwen 2/3 written out by hand as matchers.
 *
 * No regex library: the three patterns are fixed, and a hand-written matcher states exactly what
 * each alternative does (including the backtracking of `\s+(?!\S)` and `\s*[\r\n]+`), runs in one
 * pass, and needs no allocation. Invalid UTF-8 bytes travel through as units of no class ("other"),
 * so byte-level tokenizers still encode them byte for byte.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer_internal.h"
#include "util/alloc.h"

/* ---------------------------------------------------------------- UTF-8 ---- */

size_t sw_utf8_decode(const uint8_t *s, size_t len, uint32_t *cp)
{
    uint8_t b0 = s[0];
    uint32_t c;
    size_t n;

    if (b0 < 0x80) {
        *cp = b0;
        return 1;
    }
    if (b0 >= 0xC2 && b0 <= 0xDF) {
        n = 2;
        c = b0 & 0x1F;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
        n = 3;
        c = b0 & 0x0F;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        n = 4;
        c = b0 & 0x07;
    } else {
        *cp = SW_UC_INVALID;
        return 1;
    }
    if (len < n)
        goto bad;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            goto bad;
        c = (c << 6) | (s[i] & 0x3F);
    }
    if ((n == 3 && (c < 0x800 || (c >= 0xD800 && c <= 0xDFFF))) ||
        (n == 4 && (c < 0x10000 || c > 0x10FFFF)))
        goto bad;
    *cp = c;
    return n;
bad:
    *cp = SW_UC_INVALID;
    return 1;
}

size_t sw_utf8_encode(uint32_t cp, uint8_t *out)
{
    if (cp < 0x80) {
        out[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xC0 | (cp >> 6));
        out[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xE0 | (cp >> 12));
        out[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (uint8_t)(0xF0 | (cp >> 18));
    out[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

/* ------------------------------------------------------- Unicode classes ---- */

/* The Basic Multilingual Plane is looked up directly (64 KiB, filled once); the rest by bisection. */
static uint8_t bmp_class[0x10000];
static pthread_once_t bmp_once = PTHREAD_ONCE_INIT;

static void bmp_fill(void)
{
    for (size_t i = 0; i < sw_uc_class_nranges; i++) {
        const sw_uc_range_t *r = &sw_uc_class_ranges[i];
        if (r->first > 0xFFFF)
            break;
        for (uint32_t c = r->first; c <= r->last && c <= 0xFFFF; c++)
            bmp_class[c] = (uint8_t)r->value;
    }
}

static uint32_t range_lookup(const sw_uc_range_t *r, size_t n, uint32_t cp)
{
    size_t lo = 0, hi = n;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cp < r[mid].first)
            hi = mid;
        else if (cp > r[mid].last)
            lo = mid + 1;
        else
            return r[mid].value;
    }
    return 0;
}

unsigned sw_uc_class(uint32_t cp)
{
    if (cp <= 0xFFFF) {
        pthread_once(&bmp_once, bmp_fill);
        return bmp_class[cp];
    }
    if (cp > 0x10FFFF)
        return 0;
    return range_lookup(sw_uc_class_ranges, sw_uc_class_nranges, cp);
}

/* ----------------------------------------------------------------- buffers ---- */

int sw_tokbuf_reserve(sw_tokbuf_t *b, size_t extra)
{
    size_t want, cap;
    uint8_t *p;

    if (extra > SIZE_MAX / 2 - b->len)
        return -ENOMEM;
    want = b->len + extra;
    if (want <= b->cap)
        return 0;
    cap = b->cap ? b->cap : 64;
    while (cap < want)
        cap *= 2;
    p = sw_realloc(b->p, cap);
    if (!p)
        return -ENOMEM;
    b->p = p;
    b->cap = cap;
    return 0;
}

int sw_tokbuf_put(sw_tokbuf_t *b, const void *data, size_t n)
{
    int r = sw_tokbuf_reserve(b, n);

    if (r < 0)
        return r;
    if (n)
        memcpy(b->p + b->len, data, n);
    b->len += n;
    return 0;
}

/* -------------------------------------------------------------------- NFC ---- */

#define HANGUL_S 0xAC00u
#define HANGUL_L 0x1100u
#define HANGUL_V 0x1161u
#define HANGUL_T 0x11A7u
#define HANGUL_LN 19u
#define HANGUL_VN 21u
#define HANGUL_TN 28u
#define HANGUL_SN (HANGUL_LN * HANGUL_VN * HANGUL_TN)
/* Invalid input bytes are carried as 0x110000 + byte: starters that compose with nothing. */
#define RAW_BYTE 0x110000u

static unsigned ccc_of(uint32_t cp)
{
    if (cp < 0x300 || cp >= RAW_BYTE)
        return 0;
    return range_lookup(sw_uc_ccc_ranges, sw_uc_ccc_nranges, cp);
}

static const sw_uc_decomp_t *decomp_of(uint32_t cp)
{
    size_t lo = 0, hi = sw_uc_ndecomp;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cp < sw_uc_decomp[mid].cp)
            hi = mid;
        else if (cp > sw_uc_decomp[mid].cp)
            lo = mid + 1;
        else
            return &sw_uc_decomp[mid];
    }
    return NULL;
}

/* The primary composite of (a, b), or 0 if there is none. */
static uint32_t compose_of(uint32_t a, uint32_t b)
{
    if (a >= HANGUL_L && a < HANGUL_L + HANGUL_LN && b >= HANGUL_V && b < HANGUL_V + HANGUL_VN)
        return HANGUL_S + ((a - HANGUL_L) * HANGUL_VN + (b - HANGUL_V)) * HANGUL_TN;
    if (a >= HANGUL_S && a < HANGUL_S + HANGUL_SN && (a - HANGUL_S) % HANGUL_TN == 0 &&
        b > HANGUL_T && b < HANGUL_T + HANGUL_TN)
        return a + (b - HANGUL_T);
    size_t lo = 0, hi = sw_uc_ncompose;
    uint64_t key = ((uint64_t)a << 32) | b;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        uint64_t k = ((uint64_t)sw_uc_compose[mid].first << 32) | sw_uc_compose[mid].second;
        if (key < k)
            hi = mid;
        else if (key > k)
            lo = mid + 1;
        else
            return sw_uc_compose[mid].composite;
    }
    return 0;
}

int sw_tok_nfc(const uint8_t *s, size_t len, sw_tokbuf_t *out)
{
    uint32_t *d = NULL, cp;
    size_t n = 0, cap, i;
    int r = 0;

    /* fast path: nothing NFC could touch */
    bool touched = false;
    for (i = 0; i < len && !touched;) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        i += sw_utf8_decode(s + i, len - i, &cp);
        touched = (sw_uc_class(cp) & SW_UC_NFC) != 0;
    }
    if (!touched)
        return sw_tokbuf_put(out, s, len);

    /* decompose: at most 4 code points per input byte (the longest full decomposition is 4) */
    if (len > SIZE_MAX / (4 * sizeof(uint32_t)))
        return -ENOMEM;
    cap = len * 4;
    d = sw_malloc(cap * sizeof(uint32_t));
    if (!d)
        return -ENOMEM;
    for (i = 0; i < len;) {
        size_t k = sw_utf8_decode(s + i, len - i, &cp);
        const sw_uc_decomp_t *e;
        if (cp == SW_UC_INVALID) {
            d[n++] = RAW_BYTE + s[i];
        } else if (cp >= HANGUL_S && cp < HANGUL_S + HANGUL_SN) {
            uint32_t si = cp - HANGUL_S;
            d[n++] = HANGUL_L + si / (HANGUL_VN * HANGUL_TN);
            d[n++] = HANGUL_V + (si % (HANGUL_VN * HANGUL_TN)) / HANGUL_TN;
            if (si % HANGUL_TN)
                d[n++] = HANGUL_T + si % HANGUL_TN;
        } else if ((e = decomp_of(cp)) != NULL && n + e->len <= cap) {
            memcpy(d + n, sw_uc_decomp_pool + e->off, e->len * sizeof(uint32_t));
            n += e->len;
        } else {
            d[n++] = cp;
        }
        i += k;
    }
    /* canonical ordering: stable insertion sort of each run of non-starters by class */
    for (i = 1; i < n; i++) {
        unsigned c = ccc_of(d[i]);
        if (c == 0)
            continue;
        size_t j = i;
        uint32_t x = d[i];
        while (j > 0 && ccc_of(d[j - 1]) > c) {
            d[j] = d[j - 1];
            j--;
        }
        d[j] = x;
    }
    /* canonical composition (UAX #15) */
    if (n > 0) {
        size_t starter = 0, w = 1;
        unsigned last = ccc_of(d[0]) ? 256 : 0;
        for (i = 1; i < n; i++) {
            uint32_t ch = d[i], comp = 0;
            unsigned c = ccc_of(ch);
            if (last < c || last == 0)
                comp = compose_of(d[starter], ch);
            if (comp && (last < c || last == 0)) {
                d[starter] = comp;
                continue;
            }
            if (c == 0)
                starter = w;
            last = c;
            d[w++] = ch;
        }
        n = w;
    }
    if ((r = sw_tokbuf_reserve(out, n * 4)) < 0)
        goto out;
    for (i = 0; i < n; i++) {
        if (d[i] >= RAW_BYTE)
            out->p[out->len++] = (uint8_t)(d[i] - RAW_BYTE);
        else
            out->len += sw_utf8_encode(d[i], out->p + out->len);
    }
out:
    sw_free(d);
    return r;
}

/* --------------------------------------------------------- split regexes ---- */

static const char re_gpt2[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
static const char re_llama3[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+"
    "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char re_qwen2[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+"
    "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

int sw_tok_split_kind(const char *regex)
{
    if (strcmp(regex, re_gpt2) == 0)
        return SW_SPLIT_GPT2;
    if (strcmp(regex, re_llama3) == 0)
        return SW_SPLIT_LLAMA3;
    if (strcmp(regex, re_qwen2) == 0)
        return SW_SPLIT_QWEN2;
    return -1;
}

/* The code point at s[i] (i < len): its class, with *cp and *n set. */
static inline unsigned at(const uint8_t *s, size_t len, size_t i, uint32_t *cp, size_t *n)
{
    if (s[i] < 0x80) {
        *cp = s[i];
        *n = 1;
        return sw_uc_class(s[i]);
    }
    *n = sw_utf8_decode(s + i, len - i, cp);
    return sw_uc_class(*cp);
}

#define OTHER(k) (((k) & (SW_UC_L | SW_UC_N | SW_UC_WS)) == 0)

/* End of the run of code points from i whose class has any of `bits` (want != 0) or none. */
static size_t run(const uint8_t *s, size_t len, size_t i, unsigned bits, int want, size_t max)
{
    uint32_t cp;
    size_t n, count = 0;

    while (i < len && count < max) {
        unsigned k = at(s, len, i, &cp, &n);
        if (want ? !(k & bits) : (k & bits) != 0)
            break;
        i += n;
        count++;
    }
    return i;
}

static int lower_ascii(int c)
{
    return c >= 'A' && c <= 'Z' ? c + 32 : c;
}

/* 's 't 're 've 'm 'll 'd at s[i] == '\''; returns the end or 0. */
static size_t contraction(const uint8_t *s, size_t len, size_t i, int fold)
{
    int a = i + 1 < len ? s[i + 1] : 0, b = i + 2 < len ? s[i + 2] : 0;

    if (fold) {
        a = lower_ascii(a);
        b = lower_ascii(b);
    }
    if (a == 's' || a == 't' || a == 'm' || a == 'd')
        return i + 2;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
        return i + 3;
    return 0;
}

/*
 * Whitespace alternatives shared by all three patterns, at i where s[i] is whitespace:
 *   (llama3/qwen2 only) \s*[\r\n]+  - the run up to and including its last \r or \n;
 *   \s+(?!\S)                       - the run, less its last code point if text follows;
 *   \s+                             - the run.
 */
static size_t match_space(const uint8_t *s, size_t len, size_t i, int newline_alt)
{
    size_t j = i, last_start = i, nl_end = 0, n;
    uint32_t cp;

    while (j < len) {
        unsigned k = at(s, len, j, &cp, &n);
        if (!(k & SW_UC_WS))
            break;
        if (cp == '\r' || cp == '\n')
            nl_end = j + n;
        last_start = j;
        j += n;
    }
    if (newline_alt && nl_end)
        return nl_end;
    if (j == len || last_start == i)
        return j;
    return last_start;
}

static size_t match_gpt2(const uint8_t *s, size_t len, size_t i)
{
    uint32_t cp0, cp1;
    size_t n0, n1, e;
    unsigned k0 = at(s, len, i, &cp0, &n0), k1 = 0;

    if (cp0 == '\'' && (e = contraction(s, len, i, 0)) != 0)
        return e;
    if (cp0 == ' ' && i + 1 < len) {
        k1 = at(s, len, i + 1, &cp1, &n1);
        if (k1 & SW_UC_L)
            return run(s, len, i + 1, SW_UC_L, 1, SIZE_MAX);
        if (k1 & SW_UC_N)
            return run(s, len, i + 1, SW_UC_N, 1, SIZE_MAX);
        if (OTHER(k1))
            return run(s, len, i + 1, SW_UC_L | SW_UC_N | SW_UC_WS, 0, SIZE_MAX);
    }
    if (k0 & SW_UC_L)
        return run(s, len, i, SW_UC_L, 1, SIZE_MAX);
    if (k0 & SW_UC_N)
        return run(s, len, i, SW_UC_N, 1, SIZE_MAX);
    if (OTHER(k0))
        return run(s, len, i, SW_UC_L | SW_UC_N | SW_UC_WS, 0, SIZE_MAX);
    return match_space(s, len, i, 0);
}

static size_t match_llama3(const uint8_t *s, size_t len, size_t i, size_t max_digits)
{
    uint32_t cp0, cp1;
    size_t n0, n1, e;
    unsigned k0 = at(s, len, i, &cp0, &n0);

    /* (?i:'s|'t|'re|'ve|'m|'ll|'d) */
    if (cp0 == '\'' && (e = contraction(s, len, i, 1)) != 0)
        return e;
    /* [^\r\n\p{L}\p{N}]?\p{L}+ */
    if (!(k0 & (SW_UC_L | SW_UC_N)) && cp0 != '\r' && cp0 != '\n' && i + n0 < len &&
        (at(s, len, i + n0, &cp1, &n1) & SW_UC_L))
        return run(s, len, i + n0, SW_UC_L, 1, SIZE_MAX);
    if (k0 & SW_UC_L)
        return run(s, len, i, SW_UC_L, 1, SIZE_MAX);
    /* \p{N}{1,3} or \p{N} */
    if (k0 & SW_UC_N)
        return run(s, len, i, SW_UC_N, 1, max_digits);
    /*  ?[^\s\p{L}\p{N}]+[\r\n]* */
    size_t p = i;
    if (cp0 == ' ' && i + 1 < len && OTHER(at(s, len, i + 1, &cp1, &n1)))
        p = i + 1;
    if (p != i || OTHER(k0)) {
        e = run(s, len, p, SW_UC_L | SW_UC_N | SW_UC_WS, 0, SIZE_MAX);
        while (e < len && (s[e] == '\r' || s[e] == '\n'))
            e++;
        return e;
    }
    return match_space(s, len, i, 1);
}

int sw_tok_split(sw_split_kind_t kind, const uint8_t *s, size_t len,
                 int (*emit)(void *ctx, size_t off, size_t n), void *ctx)
{
    size_t i = 0;

    while (i < len) {
        size_t e;
        switch (kind) {
        case SW_SPLIT_GPT2:
            e = match_gpt2(s, len, i);
            break;
        case SW_SPLIT_LLAMA3:
            e = match_llama3(s, len, i, 3);
            break;
        default:
            e = match_llama3(s, len, i, 1);
            break;
        }
        if (e <= i) /* cannot happen: every code point starts some alternative; stay safe */
            e = i + 1;
        int r = emit(ctx, i, e - i);
        if (r < 0)
            return r;
        i = e;
    }
    return 0;
}
