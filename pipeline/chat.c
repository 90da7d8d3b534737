/*
 * chat.c - chat templates written out in C: Llama 2, Llama 3 / 3.1, ChatML (Qwen 2/2.5/3).
 *
 * Each renderer follows its official Jinja template line by line (the comments quote the part
 * they reproduce), for conversations of system/user/assistant messages without tools. The Jinja
 * string methods they use are Python's: strip()/trim on Unicode whitespace as str.isspace()
 * defines it, strip('\n') on newlines only, split() on a separator.
 *
 * Runs on the caller's thread; rendering allocates its output (once per turn, not per token).
 */
#include "pipeline/chat.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <jansson.h>

#include "util/alloc.h"
#include "util/error.h"
#include "util/file.h"

#define CONFIG_MAX (16u << 20)

/* ======================================= string helpers ======================================= */

typedef struct {
    char *p;
    size_t len, cap;
    int err;
} sbuf_t;

static void sb_add(sbuf_t *b, const char *s, size_t n)
{
    if (b->err)
        return;
    if (n + 1 > b->cap - b->len) {
        size_t cap = b->cap ? b->cap : 256;
        char *np;
        while (n + 1 > cap - b->len) {
            if (cap > SIZE_MAX / 2) {
                b->err = -ENOMEM;
                return;
            }
            cap *= 2;
        }
        np = sw_realloc(b->p, cap);
        if (!np) {
            b->err = -ENOMEM;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void sb_adds(sbuf_t *b, const char *s)
{
    sb_add(b, s, strlen(s));
}

/* A byte range of a string (not NUL-terminated). */
typedef struct {
    const char *p;
    size_t n;
} span_t;

static span_t span_of(const char *s)
{
    span_t r = {s, strlen(s)};
    return r;
}

static void sb_span(sbuf_t *b, span_t s)
{
    sb_add(b, s.p, s.n);
}

/* Python's str.isspace() for one code point. */
static bool py_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 ||
           c == 0x202f || c == 0x205f || c == 0x3000;
}

/* Decodes the UTF-8 sequence at s (n bytes left); returns its length, or 0 if not valid. */
static size_t utf8_at(const unsigned char *s, size_t n, uint32_t *cp)
{
    size_t len;
    uint32_t c;

    if (n == 0)
        return 0;
    if (s[0] < 0x80) {
        *cp = s[0];
        return 1;
    }
    if (s[0] >= 0xc2 && s[0] <= 0xdf)
        len = 2, c = s[0] & 0x1f;
    else if (s[0] >= 0xe0 && s[0] <= 0xef)
        len = 3, c = s[0] & 0x0f;
    else if (s[0] >= 0xf0 && s[0] <= 0xf4)
        len = 4, c = s[0] & 0x07;
    else
        return 0;
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        c = (c << 6) | (s[i] & 0x3f);
    }
    if ((len == 3 && (c < 0x800 || (c >= 0xd800 && c <= 0xdfff))) || (len == 4 && (c < 0x10000 || c > 0x10ffff)))
        return 0;
    *cp = c;
    return len;
}

/* Python's s.strip() (ws) or s.strip('\n') (!ws), on either end as asked. */
static span_t py_strip(span_t s, bool left, bool right, bool ws)
{
    const unsigned char *u = (const unsigned char *)s.p;
    uint32_t c;
    size_t l;

    while (left && s.n > 0) {
        if (!ws) {
            if (u[0] != '\n')
                break;
            l = 1;
        } else if (!(l = utf8_at(u, s.n, &c)) || !py_space(c)) {
            break;
        }
        u += l;
        s.p += l;
        s.n -= l;
    }
    while (right && s.n > 0) {
        if (!ws) {
            if (u[s.n - 1] != '\n')
                break;
            s.n--;
            continue;
        }
        /* the last sequence starts at most 3 continuation bytes back */
        size_t k = s.n - 1;
        while (k > 0 && s.n - k < 4 && (u[k] & 0xc0) == 0x80)
            k--;
        if (utf8_at(u + k, s.n - k, &c) != s.n - k || !py_space(c))
            break;
        s.n = k;
    }
    return s;
}

static span_t strip(span_t s)
{
    return py_strip(s, true, true, true);
}

/* First / last occurrence of needle in s, or NULL. */
static const char *span_find(span_t s, const char *needle, bool last)
{
    size_t nl = strlen(needle);
    const char *found = NULL;

    for (size_t i = 0; nl <= s.n && i <= s.n - nl; i++)
        if (memcmp(s.p + i, needle, nl) == 0) {
            found = s.p + i;
            if (!last)
                break;
        }
    return found;
}

static bool span_starts(span_t s, const char *p)
{
    size_t l = strlen(p);
    return s.n >= l && memcmp(s.p, p, l) == 0;
}

static bool span_ends(span_t s, const char *p)
{
    size_t l = strlen(p);
    return s.n >= l && memcmp(s.p + s.n - l, p, l) == 0;
}

/* ========================================= templates ========================================== */

static void set_str(char *dst, size_t cap, const char *s)
{
    snprintf(dst, cap, "%s", s);
}

static void init_format(sw_chat_template_t *t, sw_chat_format_t f, const char *name)
{
    memset(t, 0, sizeof(*t));
    t->format = f;
    set_str(t->name, sizeof(t->name), name);
    switch (f) {
    case SW_CHAT_LLAMA2:
        set_str(t->bos, sizeof(t->bos), "<s>");
        set_str(t->eos, sizeof(t->eos), "</s>");
        break;
    case SW_CHAT_LLAMA3:
        set_str(t->bos, sizeof(t->bos), "<|begin_of_text|>");
        set_str(t->eos, sizeof(t->eos), "<|end_of_text|>");
        break;
    case SW_CHAT_CHATML:
        set_str(t->eos, sizeof(t->eos), "<|im_end|>");
        break;
    }
}

static const char QWEN25_SYSTEM[] = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";
static const char LLAMA31_DATE[] = "26 Jul 2024";

int sw_chat_template_by_name(const char *name, sw_chat_template_t *t)
{
    sw_chat_template_t r;

    if (!name)
        return sw_err(-EINVAL, "no chat template name given");
    if (strcmp(name, "llama2") == 0) {
        init_format(&r, SW_CHAT_LLAMA2, name);
    } else if (strcmp(name, "llama3") == 0) {
        init_format(&r, SW_CHAT_LLAMA3, name);
    } else if (strcmp(name, "llama3.1") == 0) {
        init_format(&r, SW_CHAT_LLAMA3, name);
        r.knowledge_date = 1;
        set_str(r.date, sizeof(r.date), LLAMA31_DATE);
    } else if (strcmp(name, "chatml") == 0) {
        init_format(&r, SW_CHAT_CHATML, name);
    } else if (strcmp(name, "qwen2") == 0) {
        init_format(&r, SW_CHAT_CHATML, name);
        set_str(r.default_system, sizeof(r.default_system), "You are a helpful assistant.");
    } else if (strcmp(name, "qwen2.5") == 0) {
        init_format(&r, SW_CHAT_CHATML, name);
        set_str(r.default_system, sizeof(r.default_system), QWEN25_SYSTEM);
    } else if (strcmp(name, "qwen3") == 0) {
        init_format(&r, SW_CHAT_CHATML, name);
        r.think = 1;
    } else {
        return sw_err(SW_EUNSUPPORTED, "unknown chat template '%.40s': choose one of %s", name,
                      SW_CHAT_TEMPLATE_NAMES);
    }
    *t = r;
    return 0;
}

/*
 * The default system prompt of a ChatML template: a Jinja string literal that continues
 * "<|im_start|>system" + newline (real or written \n) with plain text up to "<|im_end|>", as in
 * Qwen2.5's `'<|im_start|>system\nYou are Qwen, ...<|im_end|>\n'`. Qwen3's
 * `'<|im_start|>system\n' + messages[0].content` ends the literal first, so it has none.
 */
static int chatml_default_system(const char *jinja, char *out, size_t cap)
{
    static const char mark[] = "<|im_start|>system";
    const char *p = jinja;

    out[0] = 0;
    while ((p = strstr(p, mark)) != NULL) {
        const char *q = p + sizeof(mark) - 1, *end;
        size_t o = 0;
        bool plain = true;

        p = q;
        if (q[0] == '\n')
            q += 1;
        else if (q[0] == '\\' && q[1] == 'n')
            q += 2;
        else
            continue;
        end = strstr(q, "<|im_end|>");
        if (!end || end == q)
            continue;
        for (const char *c = q; c < end; c++)
            if (*c == '\'' || *c == '"' || *c == '{' || *c == '}' || *c == '\n')
                plain = false;
        if (!plain)
            continue;
        for (const char *c = q; c < end; c++) {
            char ch = *c;
            if (ch == '\\' && c + 1 < end) {
                c++;
                ch = *c == 'n' ? '\n' : *c == 't' ? '\t' : *c;
            }
            if (o + 1 >= cap)
                return sw_err(SW_ELIMIT, "chat_template: the default system prompt is longer than "
                                         "%zu bytes", cap - 1);
            out[o++] = ch;
        }
        out[o] = 0;
        return 0;
    }
    return 0;
}

int sw_chat_template_detect(const char *jinja, const char *bos, const char *eos,
                            sw_chat_template_t *t)
{
    static const char hint[] = "pass --chat-template with one of " SW_CHAT_TEMPLATE_NAMES
                               " if the model uses one of those formats";
    sw_chat_template_t r;
    int rc;

    if (!jinja)
        return sw_err(-EINVAL, "no chat template given");
    if (strstr(jinja, "<|im_start|>")) {
        init_format(&r, SW_CHAT_CHATML, "chatml");
        if (strstr(jinja, "<think>") || strstr(jinja, "</think>")) {
            if (!strstr(jinja, "reasoning_content") || !strstr(jinja, "last_query_index"))
                return sw_err(SW_EUNSUPPORTED, "chat_template: a ChatML template with <think> "
                                               "handling other than Qwen3's; %s", hint);
            r.think = 1;
            set_str(r.name, sizeof(r.name), "qwen3");
        }
        if ((rc = chatml_default_system(jinja, r.default_system, sizeof(r.default_system))) < 0)
            return rc;
        if (strcmp(r.default_system, QWEN25_SYSTEM) == 0)
            set_str(r.name, sizeof(r.name), "qwen2.5");
        else if (strcmp(r.default_system, "You are a helpful assistant.") == 0)
            set_str(r.name, sizeof(r.name), "qwen2");
    } else if (strstr(jinja, "<|start_header_id|>") && strstr(jinja, "<|eot_id|>")) {
        init_format(&r, SW_CHAT_LLAMA3, "llama3");
        if (strstr(jinja, "Cutting Knowledge Date")) {
            set_str(r.name, sizeof(r.name), "llama3.1");
            r.knowledge_date = 1;
            if (!strstr(jinja, "strftime_now"))
                set_str(r.date, sizeof(r.date), LLAMA31_DATE);
        } else if (!strstr(jinja, "add_generation_prompt")) {
            r.gen_prompt_always = 1;
        }
    } else if (strstr(jinja, "[INST]") && strstr(jinja, "<<SYS>>")) {
        init_format(&r, SW_CHAT_LLAMA2, "llama2");
    } else {
        return sw_err(SW_EUNSUPPORTED, "chat_template is not a Llama 2, Llama 3 or ChatML template "
                                       "known here; %s", hint);
    }
    if (bos) {
        if (strlen(bos) >= sizeof(r.bos))
            return sw_err(SW_ELIMIT, "bos_token is longer than %zu bytes", sizeof(r.bos) - 1);
        set_str(r.bos, sizeof(r.bos), bos);
    }
    if (eos) {
        if (strlen(eos) >= sizeof(r.eos))
            return sw_err(SW_ELIMIT, "eos_token is longer than %zu bytes", sizeof(r.eos) - 1);
        set_str(r.eos, sizeof(r.eos), eos);
    }
    *t = r;
    return 0;
}

/* bos_token / eos_token: a string, {"content": string}, or null/absent (*out = NULL). */
static int config_token(json_t *cfg, const char *key, const char *what, const char **out)
{
    json_t *v = json_object_get(cfg, key);

    *out = NULL;
    if (!v || json_is_null(v))
        return 0;
    if (json_is_object(v))
        v = json_object_get(v, "content");
    if (!json_is_string(v))
        return sw_err(SW_EFORMAT, "%s: %s is neither a string nor an object with content", what, key);
    *out = json_string_value(v);
    return 0;
}

int sw_chat_template_parse_config(const char *json, size_t len, const char *what,
                                  sw_chat_template_t *t)
{
    json_t *cfg, *ct;
    json_error_t e;
    const char *tmpl = NULL, *bos, *eos;
    int r;

    if (len > CONFIG_MAX)
        return sw_err(SW_ELIMIT, "%s: %zu bytes, more than the %u allowed", what, len, CONFIG_MAX);
    /* model_max_length is often 1e30 written as an integer: read integers as reals */
    cfg = json_loadb(json, len, JSON_DECODE_INT_AS_REAL | JSON_REJECT_DUPLICATES, &e);
    if (!cfg)
        return sw_err(SW_EFORMAT, "%s: invalid JSON at line %d column %d: %s", what, e.line,
                      e.column, e.text);
    if (!json_is_object(cfg)) {
        r = sw_err(SW_EFORMAT, "%s: not a JSON object", what);
        goto out;
    }
    ct = json_object_get(cfg, "chat_template");
    if (json_is_array(ct)) {
        for (size_t i = 0; i < json_array_size(ct); i++) {
            json_t *it = json_array_get(ct, i), *nm = json_object_get(it, "name");
            if (json_is_string(nm) && strcmp(json_string_value(nm), "default") == 0)
                ct = json_object_get(it, "template");
        }
        if (json_is_array(ct)) {
            r = sw_err(SW_EUNSUPPORTED, "%s: chat_template is a list without a \"default\" "
                                        "template; pass --chat-template", what);
            goto out;
        }
    }
    if (!ct || json_is_null(ct)) {
        r = sw_err(SW_EUNSUPPORTED, "%s has no chat_template (a base model, or an old "
                                    "tokenizer_config.json): pass --chat-template with one of %s",
                   what, SW_CHAT_TEMPLATE_NAMES);
        goto out;
    }
    if (!json_is_string(ct)) {
        r = sw_err(SW_EFORMAT, "%s: chat_template is not a string", what);
        goto out;
    }
    if (json_string_length(ct) > SW_CHAT_TEMPLATE_MAX) {
        r = sw_err(SW_ELIMIT, "%s: chat_template is longer than %u bytes", what,
                   SW_CHAT_TEMPLATE_MAX);
        goto out;
    }
    tmpl = json_string_value(ct);
    if ((r = config_token(cfg, "bos_token", what, &bos)) < 0 ||
        (r = config_token(cfg, "eos_token", what, &eos)) < 0)
        goto out;
    if ((r = sw_chat_template_detect(tmpl, bos, eos, t)) < 0) {
        char d[400];
        snprintf(d, sizeof(d), "%s", sw_err_detail());
        sw_err(r, "%s: %s", what, d);
    }
out:
    json_decref(cfg);
    return r;
}

int sw_chat_template_load(const char *path, sw_chat_template_t *t)
{
    struct stat st;
    char *file, *text = NULL;
    size_t len;
    int r;

    if (stat(path, &st) < 0)
        return sw_err(-errno, "%s: %s", path, strerror(errno));
    file = S_ISDIR(st.st_mode) ? sw_path_join(path, "tokenizer_config.json") : sw_strdup(path);
    if (!file)
        return -ENOMEM;
    if ((r = sw_file_read(file, CONFIG_MAX, &text, &len)) == 0)
        r = sw_chat_template_parse_config(text, len, file, t);
    sw_free(text);
    sw_free(file);
    return r;
}

const char *sw_chat_end_of_turn(const sw_chat_template_t *t)
{
    switch (t->format) {
    case SW_CHAT_LLAMA2:
        return t->eos;
    case SW_CHAT_LLAMA3:
        return "<|eot_id|>";
    case SW_CHAT_CHATML:
        return "<|im_end|>";
    }
    return "";
}

/* ========================================= rendering ========================================== */

typedef enum { ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT } role_t;

static int check_msgs(const sw_chat_msg_t *msgs, size_t n, role_t *roles)
{
    if (n == 0 || !msgs)
        return sw_err(-EINVAL, "a chat needs at least one message");
    for (size_t i = 0; i < n; i++) {
        const char *r = msgs[i].role;
        if (!r || !msgs[i].content)
            return sw_err(-EINVAL, "chat message %zu has no role or no content", i + 1);
        if (strcmp(r, "system") == 0)
            roles[i] = ROLE_SYSTEM;
        else if (strcmp(r, "user") == 0)
            roles[i] = ROLE_USER;
        else if (strcmp(r, "assistant") == 0)
            roles[i] = ROLE_ASSISTANT;
        else
            return sw_err(SW_EUNSUPPORTED, "chat message %zu has role '%.32s': only system, user "
                                           "and assistant are supported", i + 1, r);
    }
    return 0;
}

/*
 * Llama 2 (meta-llama/Llama-2-*-chat-hf):
 *   {% if messages[0]['role'] == 'system' %} loop_messages = messages[1:], system_message = ...
 *   {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %} raise_exception(...)
 *   {% if loop.index0 == 0 and system_message != false %}
 *       content = '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + message['content']
 *   user:      bos_token + '[INST] ' + content.strip() + ' [/INST]'
 *   assistant: ' '  + content.strip() + ' ' + eos_token
 * `next` renders messages that follow an assistant turn (loop index even, no system extraction).
 */
static int render_llama2(const sw_chat_template_t *t, const sw_chat_msg_t *msgs,
                         const role_t *roles, size_t n, bool next, sbuf_t *b)
{
    const char *sys = NULL;
    size_t start = 0;
    sbuf_t tmp = {0};

    if (!next && roles[0] == ROLE_SYSTEM) {
        sys = msgs[0].content;
        start = 1;
    }
    for (size_t i = start; i < n; i++) {
        size_t li = i - start;
        span_t content = span_of(msgs[i].content);

        if ((roles[i] == ROLE_USER) != (li % 2 == 0)) {
            sw_free(tmp.p);
            return sw_err(SW_EFORMAT, "the Llama 2 chat template needs the roles to alternate "
                                      "user/assistant/user/... after an optional first system "
                                      "message (message %zu is '%s')", i + 1, msgs[i].role);
        }
        if (li == 0 && sys && !next) {
            tmp.len = 0;
            sb_adds(&tmp, "<<SYS>>\n");
            sb_adds(&tmp, sys);
            sb_adds(&tmp, "\n<</SYS>>\n\n");
            sb_adds(&tmp, msgs[i].content);
            if (tmp.err) {
                b->err = tmp.err;
                break;
            }
            content.p = tmp.p;
            content.n = tmp.len;
        }
        if (roles[i] == ROLE_USER) {
            sb_adds(b, t->bos);
            sb_adds(b, "[INST] ");
            sb_span(b, strip(content));
            sb_adds(b, " [/INST]");
        } else if (roles[i] == ROLE_ASSISTANT) {
            sb_adds(b, " ");
            sb_span(b, strip(content));
            sb_adds(b, " ");
            sb_adds(b, t->eos);
        }
        /* a system message at an odd position renders nothing, as in the template */
    }
    sw_free(tmp.p);
    return 0;
}

/*
 * Llama 3 (Meta-Llama-3-*-Instruct):
 *   content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'
 *             + message['content'] | trim + '<|eot_id|>'
 *   {% if loop.index0 == 0 %}{% set content = bos_token + content %}
 *   {% if add_generation_prompt %}'<|start_header_id|>assistant<|end_header_id|>\n\n'
 * Llama 3.1 (no tools): bos_token; system_message = messages[0]['content']|trim if a system
 * message comes first (and is removed), else ""; then
 *   "<|start_header_id|>system<|end_header_id|>\n\n" + "Cutting Knowledge Date: December 2023\n"
 *   + "Today Date: " + date_string + "\n\n" + system_message + "<|eot_id|>"
 * and every other message as above.
 */
static void llama3_msg(sbuf_t *b, const char *role, const char *content)
{
    sb_adds(b, "<|start_header_id|>");
    sb_adds(b, role);
    sb_adds(b, "<|end_header_id|>\n\n");
    sb_span(b, strip(span_of(content)));
    sb_adds(b, "<|eot_id|>");
}

static void render_llama3(const sw_chat_template_t *t, const sw_chat_msg_t *msgs,
                          const role_t *roles, size_t n, bool next, unsigned flags, sbuf_t *b)
{
    size_t start = 0;

    if (t->knowledge_date && !next) {
        char today[32];
        const char *date = t->date;
        if (!date[0]) {
            time_t now = time(NULL);
            struct tm tm;
            if (!localtime_r(&now, &tm) || strftime(today, sizeof(today), "%d %b %Y", &tm) == 0)
                snprintf(today, sizeof(today), "%s", LLAMA31_DATE);
            date = today;
        }
        sb_adds(b, t->bos);
        sb_adds(b, "<|start_header_id|>system<|end_header_id|>\n\n");
        sb_adds(b, "Cutting Knowledge Date: December 2023\nToday Date: ");
        sb_adds(b, date);
        sb_adds(b, "\n\n");
        if (roles[0] == ROLE_SYSTEM) {
            sb_span(b, strip(span_of(msgs[0].content)));
            start = 1;
        }
        sb_adds(b, "<|eot_id|>");
    }
    for (size_t i = start; i < n; i++) {
        if (i == 0 && !next && !t->knowledge_date)
            sb_adds(b, t->bos);
        llama3_msg(b, msgs[i].role, msgs[i].content);
    }
    if ((flags & SW_CHAT_ADD_GENERATION_PROMPT) || t->gen_prompt_always)
        sb_adds(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

static void chatml_msg(sbuf_t *b, const char *role, span_t content)
{
    sb_adds(b, "<|im_start|>");
    sb_adds(b, role);
    sb_adds(b, "\n");
    sb_span(b, content);
    sb_adds(b, "<|im_end|>\n");
}

/*
 * Qwen3's assistant turn (no tools, no reasoning_content field):
 *   {%- if '</think>' in message.content %}
 *       content = message.content.split('</think>')[-1].lstrip('\n')
 *       reasoning_content = message.content.split('</think>')[0].rstrip('\n')
 *                           .split('<think>')[-1].lstrip('\n')
 *   {%- if loop.index0 > ns.last_query_index %}
 *       {%- if loop.last or (not loop.last and reasoning_content) %}
 *           '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n')
 *           + '\n</think>\n\n' + content.lstrip('\n')
 *       {%- else %} '<|im_start|>' + message.role + '\n' + content
 *   {%- else %} '<|im_start|>' + message.role + '\n' + content
 *   '<|im_end|>\n'
 */
static void qwen3_assistant(sbuf_t *b, const char *text, bool after_query, bool last)
{
    span_t all = span_of(text), content = all, reasoning = {"", 0};
    const char *first = span_find(all, "</think>", false);

    if (first) {
        const char *lastc = span_find(all, "</think>", true), *open;
        span_t before = {all.p, (size_t)(first - all.p)};
        content.p = lastc + 8;
        content.n = (size_t)(all.p + all.n - content.p);
        content = py_strip(content, true, false, false);
        before = py_strip(before, false, true, false);
        if ((open = span_find(before, "<think>", true)) != NULL) {
            before.n -= (size_t)(open + 7 - before.p);
            before.p = open + 7;
        }
        reasoning = py_strip(before, true, false, false);
    }
    sb_adds(b, "<|im_start|>assistant\n");
    if (after_query && (last || reasoning.n > 0)) {
        sb_adds(b, "<think>\n");
        sb_span(b, py_strip(reasoning, true, true, false));
        sb_adds(b, "\n</think>\n\n");
        sb_span(b, py_strip(content, true, false, false));
    } else {
        sb_span(b, content);
    }
    sb_adds(b, "<|im_end|>\n");
}

/*
 * ChatML, as Qwen2.5's template (no tools):
 *   {%- if messages[0]['role'] == 'system' %} '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n'
 *   {%- else %} '<|im_start|>system\n{default}<|im_end|>\n'       (only if the template has one)
 *   {%- for message in messages %}
 *       {%- if (message.role == "user") or (message.role == "system" and not loop.first)
 *              or (message.role == "assistant" ...) %}
 *           '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n'
 *   {%- if add_generation_prompt %} '<|im_start|>assistant\n'
 * Qwen3 adds: last_query_index = the last user message that is not a <tool_response>, the
 * assistant turns above, and '<think>\n\n</think>\n\n' after the generation prompt when
 * enable_thinking is false.
 */
static void render_chatml(const sw_chat_template_t *t, const sw_chat_msg_t *msgs,
                          const role_t *roles, size_t n, bool next, unsigned flags, sbuf_t *b)
{
    size_t start = 0, last_query = n - 1;

    if (!next) {
        if (roles[0] == ROLE_SYSTEM) {
            chatml_msg(b, "system", span_of(msgs[0].content));
            start = 1;
        } else if (t->default_system[0]) {
            chatml_msg(b, "system", span_of(t->default_system));
        }
    }
    if (t->think)
        for (size_t i = n; i-- > 0;) {
            span_t c = span_of(msgs[i].content);
            if (roles[i] == ROLE_USER &&
                !(span_starts(c, "<tool_response>") && span_ends(c, "</tool_response>"))) {
                last_query = i;
                break;
            }
        }
    for (size_t i = start; i < n; i++) {
        if (roles[i] == ROLE_ASSISTANT && t->think)
            qwen3_assistant(b, msgs[i].content, i > last_query, i == n - 1);
        else
            chatml_msg(b, msgs[i].role, span_of(msgs[i].content));
    }
    if (flags & SW_CHAT_ADD_GENERATION_PROMPT) {
        sb_adds(b, "<|im_start|>assistant\n");
        if (t->think && (flags & SW_CHAT_NO_THINKING))
            sb_adds(b, "<think>\n\n</think>\n\n");
    }
}

static int render(const sw_chat_template_t *t, const sw_chat_msg_t *msgs, size_t n,
                  unsigned flags, bool next, char **out, size_t *len)
{
    role_t *roles = NULL;
    sbuf_t b = {0};
    int r;

    if (!t || !out || !len)
        return sw_err(-EINVAL, "chat render: missing template or output");
    if (n > SIZE_MAX / sizeof(role_t))
        return -ENOMEM;
    roles = sw_malloc((n ? n : 1) * sizeof(role_t));
    if (!roles)
        return -ENOMEM;
    if ((r = check_msgs(msgs, n, roles)) < 0)
        goto out;
    if (next)
        for (size_t i = 0; i < n; i++)
            if (roles[i] == ROLE_ASSISTANT) {
                r = sw_err(SW_EUSAGE, "the next turn of a chat holds system or user messages only "
                                      "(message %zu is an assistant's): render the whole "
                                      "conversation with sw_chat_render instead", i + 1);
                goto out;
            }
    sb_add(&b, "", 0);
    if (next && !(flags & SW_CHAT_EOT_IN_CONTEXT)) {
        /* close the reply as the template closes an assistant turn */
        if (t->format == SW_CHAT_LLAMA2) {
            sb_adds(&b, " ");
            sb_adds(&b, t->eos);
        } else if (t->format == SW_CHAT_LLAMA3) {
            sb_adds(&b, "<|eot_id|>");
        } else {
            sb_adds(&b, "<|im_end|>\n");
        }
    } else if (next && t->format == SW_CHAT_CHATML) {
        sb_adds(&b, "\n");
    }
    switch (t->format) {
    case SW_CHAT_LLAMA2:
        r = render_llama2(t, msgs, roles, n, next, &b);
        break;
    case SW_CHAT_LLAMA3:
        render_llama3(t, msgs, roles, n, next, flags, &b);
        break;
    case SW_CHAT_CHATML:
        render_chatml(t, msgs, roles, n, next, flags, &b);
        break;
    default:
        r = sw_err(-EINVAL, "chat template has an unknown format %d", (int)t->format);
    }
    if (r == 0 && b.err)
        r = b.err;
    if (r == 0) {
        *out = b.p;
        *len = b.len;
        b.p = NULL;
    }
out:
    sw_free(b.p);
    sw_free(roles);
    return r;
}

int sw_chat_render(const sw_chat_template_t *t, const sw_chat_msg_t *msgs, size_t n,
                   unsigned flags, char **out, size_t *len)
{
    return render(t, msgs, n, flags, false, out, len);
}

int sw_chat_render_next(const sw_chat_template_t *t, const sw_chat_msg_t *msgs, size_t n,
                        unsigned flags, char **out, size_t *len)
{
    return render(t, msgs, n, flags, true, out, len);
}
