/*
 * cmd_generate.c - `swarmd generate` and `swarmd chat`: thin users of the client library
 * (pipeline/swarm_client.h). The model's blocks run on a swarm found through --initial-peers, or in
 * this process with --local; the tokenizer, the chat template, sampling and stop strings run here.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "commands.h"
#include "kernels/device.h"
#include "pipeline/weights.h"
#include "pipeline/chat.h"
#include "pipeline/sampling.h"
#include "pipeline/swarm_client.h"
#include "pipeline/tokenizer.h"
#include "util/alloc.h"
#include "util/error.h"
#include "util/file.h"

#define MAX_PEERS 64

/* Options generate and chat share. */
typedef struct {
    const char *cmd;
    swarm_client_opts_t co;
    const char *peers_arg;
    char *peers_buf;
    const char *peers[MAX_PEERS];
    const char *tokenizer_path;
    sw_sampler_params_t sp;
    int temp_given, topk_given, topp_given, greedy_forced, show_route, print_ids, max_new;
    const char *stops[SW_STOP_MAX_STRINGS];
    int n_stops;
    const char *template_name;
    const char *system;       /* chat: --system */
} gen_opts_t;

#define COMMON_OPTIONS                                                  \
    { "model", required_argument, NULL, 'm' },                          \
    { "local", no_argument, NULL, 'l' },                                \
    { "initial-peers", required_argument, NULL, 'P' },                  \
    { "model-name", required_argument, NULL, 'M' },                     \
    { "max-new-tokens", required_argument, NULL, 'n' },                 \
    { "max-length", required_argument, NULL, 'L' },                     \
    { "max-len", required_argument, NULL, 'L' },                        \
    { "temperature", required_argument, NULL, 't' },                    \
    { "top-k", required_argument, NULL, 'k' },                          \
    { "top-p", required_argument, NULL, 'T' },                          \
    { "repetition-penalty", required_argument, NULL, 'R' },             \
    { "seed", required_argument, NULL, 'S' },                           \
    { "greedy", no_argument, NULL, 'g' },                               \
    { "stop", required_argument, NULL, 's' },                           \
    { "compress", required_argument, NULL, 'C' },                       \
    { "show-route", no_argument, NULL, 'r' },                           \
    { "step-timeout", required_argument, NULL, 'O' },                   \
    { "tokenizer", required_argument, NULL, 'K' },                      \
    { "chat-template", required_argument, NULL, 'H' },                  \
    { "device", required_argument, NULL, 'D' },                         \
    { "quant", required_argument, NULL, 'Q' },                          \
    { "int8-threshold", required_argument, NULL, 'X' },                 \
    { "max-retries", required_argument, NULL, 'F' },                    \
    { "help", no_argument, NULL, 'h' }

#define COMMON_HELP                                                                                 \
    "  --model DIR             the model's directory (config.json, embeddings, LM head, tokenizer)\n" \
    "  --initial-peers A,...   DHT nodes of the swarm (PEERID@HOST:PORT or HOST:PORT)\n"           \
    "  --local                 run every block in this process instead (no swarm)\n"              \
    "  --model-name NAME       the model's swarm name (default: as 'swarmd serve' derives it from\n" \
    "                          config.json's _name_or_path or the directory)\n"                 \
    "  --max-new-tokens N      most tokens to generate (default 16 for generate, 512 for chat)\n" \
    "  --max-length N          positions the session reserves on every server (default: prompt\n" \
    "                          + new tokens for generate, 2048 for chat)\n"                        \
    "  --temperature T         sample at temperature T (> 0 turns sampling on; default: the\n"    \
    "                          model's generation_config.json, else greedy)\n"                    \
    "  --top-k K, --top-p P    keep the K most likely ids / the smallest set of mass P\n"        \
    "  --repetition-penalty R  divide the logits of ids already in the context by R (CTRL)\n"    \
    "  --seed N                sampling seed (default 0: the same ids on every run)\n"          \
    "  --greedy                argmax decoding whatever generation_config.json says\n"           \
    "  --stop TEXT             stop when TEXT appears in the output (repeatable, up to 32)\n"    \
    "  --compress C            hidden states on the wire: bf16 (default), none (exact), fp16,\n" \
    "                          blockwise8 (8-bit, for slow links)\n"                              \
    "  --show-route            print the chain of servers, and every change to it, on stderr\n"  \
    "  --step-timeout S        a server that has not answered a step after S seconds is replaced\n" \
    "                          (default 60)\n"                                                    \
    "  --max-retries N         servers one step may replace before giving up (default 8)\n"    \
    "  --tokenizer PATH        tokenizer.json (or its directory) if not in the model's directory\n" \
    "  --chat-template T       chat: the template, " SW_CHAT_TEMPLATE_NAMES " or auto\n" \
    "                          (default auto: recognised from tokenizer_config.json);\n"          \
    "                          generate: write the prompt as one user turn in it\n"               \
    "  --device D, --quant Q   with --local: cpu or cuda[:N]; none, nf4 or int8 blocks\n"       \
    "  --int8-threshold T      with --local --quant int8: LLM.int8() outlier threshold (6)\n"    \
    "  -h, --help              this help\n"

static int parse_num(const char *cmd, const char *opt, const char *s, double lo, double hi, double *out)
{
    char *end;
    double v;

    errno = 0;
    v = strtod(s, &end);
    if (end == s || *end || errno || !(v >= lo && v <= hi)) {
        fprintf(stderr, "swarmd %s: %s wants a number from %g to %g, not '%s'\n", cmd, opt, lo, hi, s);
        return 2;
    }
    *out = v;
    return 0;
}

/* Handles one COMMON_OPTIONS option; returns 0, 1 (not one of them) or 2 (usage error printed). */
static int common_option(gen_opts_t *g, int c, const char *arg)
{
    double v;

    switch (c) {
    case 'm': g->co.model_dir = arg; return 0;
    case 'l': g->co.local = 1; return 0;
    case 'P': g->peers_arg = arg; return 0;
    case 'M': g->co.model_name = arg; return 0;
    case 'n':
        if (parse_num(g->cmd, "--max-new-tokens", arg, 0, 1 << 20, &v))
            return 2;
        g->max_new = (int)v;
        return 0;
    case 'L':
        if (parse_num(g->cmd, "--max-length", arg, 1, 1 << 24, &v))
            return 2;
        g->co.max_length = (int)v;
        return 0;
    case 't':
        if (parse_num(g->cmd, "--temperature", arg, 0, 1e6, &v))
            return 2;
        g->sp.temperature = (float)v;
        g->temp_given = 1;
        return 0;
    case 'k':
        if (parse_num(g->cmd, "--top-k", arg, 0, 1 << 24, &v))
            return 2;
        g->sp.top_k = (int)v;
        g->topk_given = 1;
        return 0;
    case 'T':
        if (parse_num(g->cmd, "--top-p", arg, 1e-9, 1, &v))
            return 2;
        g->sp.top_p = (float)v;
        g->topp_given = 1;
        return 0;
    case 'R':
        if (parse_num(g->cmd, "--repetition-penalty", arg, 1e-6, 1e6, &v))
            return 2;
        g->sp.repetition_penalty = (float)v;
        return 0;
    case 'S':
        if (parse_num(g->cmd, "--seed", arg, 0, 9007199254740992.0, &v))
            return 2;
        g->sp.seed = (uint64_t)v;
        return 0;
    case 'g': g->greedy_forced = 1; return 0;
    case 's':
        if (g->n_stops == SW_STOP_MAX_STRINGS || !*arg) {
            fprintf(stderr, "swarmd %s: --stop wants non-empty text, at most %d times\n", g->cmd,
                    SW_STOP_MAX_STRINGS);
            return 2;
        }
        g->stops[g->n_stops++] = arg;
        return 0;
    case 'C': g->co.compress = arg; return 0;
    case 'r': g->show_route = 1; return 0;
    case 'O':
        if (parse_num(g->cmd, "--step-timeout", arg, 0.001, 86400, &v))
            return 2;
        g->co.step_timeout_ms = (unsigned)(v * 1000.0);
        return 0;
    case 'F':
        if (parse_num(g->cmd, "--max-retries", arg, 1, 1000, &v))
            return 2;
        g->co.max_failures = (unsigned)v;
        return 0;
    case 'K': g->tokenizer_path = arg; return 0;
    case 'H': g->template_name = arg; return 0;
    case 'D': {
        sw_device_t d;
        if (sw_device_parse(arg, &d) < 0) {
            fprintf(stderr, "swarmd %s: %s\n", g->cmd, sw_err_detail());
            return 2;
        }
        g->co.device = arg;
        return 0;
    }
    case 'Q': {
        sw_quant_t q;
        if (sw_quant_parse(arg, &q) < 0) {
            fprintf(stderr, "swarmd %s: %s\n", g->cmd, sw_err_detail());
            return 2;
        }
        g->co.quant = arg;
        return 0;
    }
    case 'X':
        if (parse_num(g->cmd, "--int8-threshold", arg, 0, 1e6, &v))
            return 2;
        g->co.int8_threshold = v == 0 ? -1.0f : (float)v; /* the library's 'no decomposition' */
        return 0;
    default: return 1;
    }
}

static void on_event(void *arg, int kind, const char *text)
{
    const gen_opts_t *g = arg;

    if ((kind == SWARM_EVENT_ROUTE && g->show_route) || kind == SWARM_EVENT_PROGRESS)
        fprintf(stderr, "swarmd %s: %s\n", g->cmd, text);
}

/* Checks what generate and chat both need and fills the client options. 0 or 2 (printed). */
static int finish_options(gen_opts_t *g)
{
    if (!g->co.model_dir) {
        fprintf(stderr, "swarmd %s: --model DIR is required\n", g->cmd);
        return 2;
    }
    if (!g->co.local && !g->peers_arg) {
        fprintf(stderr, "swarmd %s: give --initial-peers ADDR,... (a node of the swarm that serves "
                        "the model) or --local to run every block in this process\n", g->cmd);
        return 2;
    }
    if (g->co.local && g->peers_arg) {
        fprintf(stderr, "swarmd %s: --local and --initial-peers exclude each other\n", g->cmd);
        return 2;
    }
    if (!g->co.local && (g->co.device || g->co.quant)) {
        fprintf(stderr, "swarmd %s: --device and --quant apply to --local; the servers choose "
                        "their own\n", g->cmd);
        return 2;
    }
    if (g->peers_arg) {
        size_t n = 0;
        char *save = NULL;
        if (!(g->peers_buf = sw_strdup(g->peers_arg)))
            return 2;
        for (char *p = strtok_r(g->peers_buf, ",", &save); p; p = strtok_r(NULL, ",", &save)) {
            if (n == MAX_PEERS) {
                fprintf(stderr, "swarmd %s: more than %d initial peers\n", g->cmd, MAX_PEERS);
                return 2;
            }
            g->peers[n++] = p;
        }
        g->co.initial_peers = g->peers;
        g->co.n_initial_peers = n;
    }
    g->co.reference_kernels = strcmp(sw_global_opts.backend, "reference") == 0;
    g->co.identity_path = sw_global_opts.identity;
    g->co.swarm_key_path = sw_global_opts.swarm_key;
    g->co.on_event = on_event;
    g->co.event_arg = g;
    return 0;
}

/* The sampling to use: generation_config.json's defaults, then the options. As in transformers,
 * asking for a temperature > 0, top-k or top-p turns sampling on; --temperature 0 and --greedy
 * turn it off. */
static void sampling_of(const gen_opts_t *g, const sw_generation_config_t *gc, swarm_sampling_t *out)
{
    sw_sampler_params_t p = gc->sampling;

    if (g->temp_given) {
        p.temperature = g->sp.temperature;
        p.greedy = g->sp.temperature == 0;
    }
    if (g->topk_given) {
        p.top_k = g->sp.top_k;
        p.greedy = p.greedy && g->temp_given;
    }
    if (g->topp_given) {
        p.top_p = g->sp.top_p;
        p.greedy = p.greedy && g->temp_given;
    }
    if (g->sp.repetition_penalty > 0)
        p.repetition_penalty = g->sp.repetition_penalty;
    memset(out, 0, sizeof(*out));
    out->temperature = p.greedy || g->greedy_forced ? 0.0f : p.temperature;
    out->top_k = p.top_k;
    out->top_p = p.top_p;
    out->repetition_penalty = p.repetition_penalty;
    out->seed = g->sp.seed;
}

/* What the token callback needs: streaming text through the stop checker, or ids. */
typedef struct {
    const gen_opts_t *g;
    sw_detok_t *detok;
    sw_stop_t *stop;
    int first, reason, err;
    int32_t *last; /* may be NULL: gets the last id */
} stream_t;

static int on_token(void *arg, int32_t id)
{
    stream_t *st = arg;
    const char *piece = NULL, *show = NULL;
    size_t plen = 0, slen = 0;
    int r;

    if (st->last)
        *st->last = id;
    if (!st->detok) {
        printf(st->first ? "%d" : ",%d", id);
        st->first = 0;
        fflush(stdout);
        return 0;
    }
    if ((r = sw_detok_push(st->detok, id, &piece, &plen)) < 0 ||
        (r = sw_stop_push(st->stop, id, piece, plen, &show, &slen)) < 0) {
        st->err = r;
        return 1;
    }
    fwrite(show, 1, slen, stdout);
    fflush(stdout);
    st->reason = r;
    return r != SW_STOP_NONE;
}

/* Ends a text stream: what the decoder and the stop checker held back. */
static void stream_finish(stream_t *st)
{
    const char *piece = NULL, *show = NULL;
    size_t plen = 0, slen = 0;

    if (!st->detok)
        return;
    if (st->reason == SW_STOP_NONE || st->reason == SW_STOP_LENGTH) {
        if (sw_detok_flush(st->detok, &piece, &plen) == 0 &&
            sw_stop_finish(st->stop, piece, plen, &show, &slen) >= 0)
            fwrite(show, 1, slen, stdout);
    }
    fflush(stdout);
}

static int load_tokenizer(const gen_opts_t *g, int required, sw_tokenizer_t **tok)
{
    const char *path = g->tokenizer_path ? g->tokenizer_path : g->co.model_dir;
    char file[4096];
    int r;

    *tok = NULL;
    if (!g->tokenizer_path) {
        snprintf(file, sizeof(file), "%s/tokenizer.json", g->co.model_dir);
        if (access(file, R_OK) != 0) {
            if (!required)
                return 0;
            fprintf(stderr, "swarmd %s: %s has no tokenizer.json; give --tokenizer PATH, or token "
                            "ids with --prompt-ids\n", g->cmd, g->co.model_dir);
            return 2;
        }
    }
    if ((r = sw_tokenizer_load(path, tok)) < 0) {
        fprintf(stderr, "swarmd %s: cannot load the tokenizer: %s\n", g->cmd, sw_err_detail());
        return 1;
    }
    return 0;
}

/* ======================================================================== generate */

static void generate_usage(FILE *f)
{
    fprintf(f,
            "Usage: swarmd generate --model DIR (--initial-peers ADDR,... | --local)\n"
            "                       (\"PROMPT\" | --prompt-ids IDS) [options]\n"
            "\n"
            "Continues a prompt. The blocks run on the swarm's servers (found on the DHT through\n"
            "--initial-peers; a server that fails is replaced and its inputs replayed, so the\n"
            "output is the same) or, with --local, in this process. The text streams to stdout as\n"
            "it is generated; with --prompt-ids or --print-ids, the new ids do, comma-separated.\n"
            "\n"
            "  PROMPT                  text, encoded with the model's tokenizer.json\n"
            "  --prompt-ids IDS        the prompt as token ids, comma-separated: 1,2,3\n"
            "  --print-ids             print the new ids instead of text\n"
            COMMON_HELP
            "Exactness: with --greedy and --compress none, the ids equal those of --local.\n");
}

int sw_cmd_generate(int argc, char **argv)
{
    static const struct option opts[] = {
        COMMON_OPTIONS,
        { "prompt-ids", required_argument, NULL, 'p' },
        { "print-ids", no_argument, NULL, 'I' },
        { NULL, 0, NULL, 0 },
    };
    gen_opts_t g;
    const char *prompt_ids = NULL, *text = NULL;
    int32_t *ids = NULL;
    int T = 0, c, r, rc = 1, n_out = 0;
    int32_t eot = -1;
    size_t nt = 0;
    swarm_client_t *cl = NULL;
    swarm_session_t *s = NULL;
    sw_tokenizer_t *tok = NULL;
    sw_generation_config_t gc;
    swarm_sampling_t samp;
    stream_t st = { 0 };

    memset(&g, 0, sizeof(g));
    g.cmd = "generate";
    g.max_new = 16;
    st.g = &g;
    st.first = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (c == 'h') {
            generate_usage(stdout);
            return 0;
        }
        if (c == 'p') {
            prompt_ids = optarg;
            continue;
        }
        if (c == 'I') {
            g.print_ids = 1;
            continue;
        }
        if ((r = common_option(&g, c, optarg)) == 0)
            continue;
        if (r == 1)
            generate_usage(stderr);
        return 2;
    }
    if (optind < argc)
        text = argv[optind++];
    if (optind != argc || (!text == !prompt_ids)) {
        fprintf(stderr, "swarmd generate: give the prompt as one text argument or as --prompt-ids, "
                        "not both\n\n");
        generate_usage(stderr);
        return 2;
    }
    if ((r = finish_options(&g)) != 0)
        goto out_usage;
    if (prompt_ids) {
        if (sw_cli_parse_ids("--prompt-ids", prompt_ids, &ids, &T) < 0) {
            fprintf(stderr, "swarmd generate: %s\n", sw_err_detail());
            r = 2;
            goto out_usage;
        }
    }
    if ((r = load_tokenizer(&g, text != NULL, &tok)) != 0)
        goto out_usage;
    if (g.template_name && !text) {
        fprintf(stderr, "swarmd generate: --chat-template applies to a text prompt\n");
        r = 2;
        goto out_usage;
    }
    if (text && g.template_name) {
        /* the prompt as one user turn in the model's chat template; the turn's end token stops */
        sw_chat_template_t t;
        sw_chat_msg_t msg = { "user", text };
        char *chat_text = NULL;
        size_t len = 0;
        r = strcmp(g.template_name, "auto") != 0 ? sw_chat_template_by_name(g.template_name, &t)
            : sw_chat_template_load(g.tokenizer_path ? g.tokenizer_path : g.co.model_dir, &t);
        if (r == 0)
            r = sw_chat_render(&t, &msg, 1, SW_CHAT_ADD_GENERATION_PROMPT, &chat_text, &len);
        if (r == 0) {
            r = sw_tokenizer_encode_alloc(tok, chat_text, len, 0, &ids, &nt);
            sw_free(chat_text);
        }
        if (r < 0) {
            fprintf(stderr, "swarmd generate: %s\n", sw_err_detail());
            rc = r == SW_EUNSUPPORTED ? 2 : 1;
            goto out;
        }
        eot = sw_tokenizer_token_id(tok, sw_chat_end_of_turn(&t));
        T = (int)nt;
    } else if (text) {
        if ((r = sw_tokenizer_encode_alloc(tok, text, strlen(text), SW_TOK_ADD_SPECIAL, &ids, &nt)) < 0) {
            fprintf(stderr, "swarmd generate: cannot encode the prompt: %s\n", sw_err_detail());
            goto out;
        }
        T = (int)nt;
        if (T == 0) {
            fprintf(stderr, "swarmd generate: the prompt encodes to no tokens\n");
            goto out;
        }
    }
    if (g.co.max_length == 0)
        g.co.max_length = T + (g.max_new > 0 ? g.max_new : 1);
    if (T + g.max_new - 1 > g.co.max_length) {
        fprintf(stderr, "swarmd generate: prompt (%d) + new tokens (%d) exceed --max-length %d\n", T,
                g.max_new, g.co.max_length);
        r = 2;
        goto out_usage;
    }
    if ((r = swarm_client_open(&g.co, &cl)) < 0) {
        fprintf(stderr, "swarmd generate: %s\n", swarm_client_error());
        goto out;
    }
    if ((r = sw_generation_config_load(g.co.model_dir, swarm_client_vocab_size(cl), &gc)) < 0) {
        fprintf(stderr, "swarmd generate: %s\n", sw_err_detail());
        goto out;
    }
    sampling_of(&g, &gc, &samp);
    if (eot >= 0 && gc.n_eos < SW_GEN_MAX_EOS)
        gc.eos[gc.n_eos++] = eot; /* the chat template's end of turn */
    if (tok && !g.print_ids && !prompt_ids) {
        if ((r = sw_detok_new(tok, SW_DETOK_SKIP_SPECIAL, &st.detok)) < 0 ||
            (r = sw_stop_new(gc.eos, (size_t)gc.n_eos, g.stops, (size_t)g.n_stops, 0, &st.stop)) < 0) {
            fprintf(stderr, "swarmd generate: %s\n", sw_err_detail());
            goto out;
        }
    } else if (g.n_stops) {
        fprintf(stderr, "swarmd generate: --stop needs text output (a tokenizer, no --print-ids)\n");
        r = 2;
        goto out_usage;
    }
    if ((r = swarm_session_open(cl, g.co.max_length, &s)) < 0) {
        fprintf(stderr, "swarmd generate: %s\n", swarm_client_error());
        goto out;
    }
    r = swarm_session_generate(s, ids, T, g.max_new, &samp, gc.eos, gc.n_eos, on_token, &st, &n_out);
    stream_finish(&st);
    printf("\n");
    if (r < 0 || st.err < 0) {
        fprintf(stderr, "swarmd generate: generation failed after %d token(s): %s\n", n_out,
                swarm_client_error());
        goto out;
    }
    rc = 0;
    goto out;
out_usage:
    rc = r == 2 ? 2 : 1;
out:
    swarm_session_close(s);
    swarm_client_close(cl);
    sw_detok_free(st.detok);
    sw_stop_free(st.stop);
    sw_tokenizer_free(tok);
    sw_free(ids);
    sw_free(g.peers_buf);
    return rc;
}

/* ======================================================================== chat */

static void chat_usage(FILE *f)
{
    fprintf(f,
            "Usage: swarmd chat --model DIR (--initial-peers ADDR,... | --local) [options]\n"
            "\n"
            "An interactive chat: each line read from stdin is a user turn; the reply streams to\n"
            "stdout, followed by an empty line. The inference session stays open across turns, so\n"
            "each turn sends only its new tokens to the servers. The prompt is written with the\n"
            "model's chat template (tokenizer_config.json) or --chat-template. End with EOF (Ctrl-D).\n"
            "\n"
            "  --system TEXT           a system message before the first turn\n"
            "  --no-think              Qwen3 templates: answer without a reasoning block\n"
            COMMON_HELP
            "Chat templates: " SW_CHAT_TEMPLATE_NAMES ".\n");
}

/* One user turn: renders it (the first turn with the system message, later ones after the
 * previous reply), generates the reply and prints it. *eot_fed says whether the last reply ended
 * with the end-of-turn token (which the session then holds). */
static int chat_turn(swarm_session_t *s, const sw_chat_template_t *t, const sw_tokenizer_t *tok,
                     const gen_opts_t *g, const swarm_sampling_t *samp, const int32_t *eos, int n_eos,
                     int32_t eot, stream_t *st, const char *line, int first, unsigned think_flag,
                     int *eot_fed)
{
    sw_chat_msg_t msgs[2];
    size_t n = 0, len = 0, nids = 0;
    char *text = NULL;
    int32_t *ids = NULL, last = -1;
    int r, n_out = 0;
    unsigned flags = SW_CHAT_ADD_GENERATION_PROMPT | think_flag;

    if (first && g->system)
        msgs[n++] = (sw_chat_msg_t){ "system", g->system };
    msgs[n++] = (sw_chat_msg_t){ "user", line };
    if (first)
        r = sw_chat_render(t, msgs, n, flags, &text, &len);
    else
        r = sw_chat_render_next(t, msgs, n, flags | (*eot_fed ? SW_CHAT_EOT_IN_CONTEXT : 0), &text, &len);
    if (r < 0)
        return r;
    r = sw_tokenizer_encode_alloc(tok, text, len, 0, &ids, &nids);
    sw_free(text);
    if (r < 0)
        return r;
    sw_detok_reset(st->detok);
    sw_stop_reset(st->stop);
    st->reason = SW_STOP_NONE;
    st->last = &last;
    r = swarm_session_generate(s, ids, (int)nids, g->max_new, samp, eos, n_eos, on_token, st, &n_out);
    sw_free(ids);
    stream_finish(st);
    printf("\n\n");
    fflush(stdout);
    *eot_fed = last == eot;
    return r < 0 ? r : st->err;
}

int sw_cmd_chat(int argc, char **argv)
{
    static const struct option opts[] = {
        COMMON_OPTIONS,
        { "system", required_argument, NULL, 'y' },
        { "no-think", no_argument, NULL, 'N' },
        { NULL, 0, NULL, 0 },
    };
    gen_opts_t g;
    int c, r, rc = 1, first = 1, eot_fed = 0, n_eos;
    unsigned think_flag = 0;
    swarm_client_t *cl = NULL;
    swarm_session_t *s = NULL;
    sw_tokenizer_t *tok = NULL;
    sw_generation_config_t gc;
    sw_chat_template_t t;
    swarm_sampling_t samp;
    stream_t st = { 0 };
    int32_t eos[SW_GEN_MAX_EOS + 2], eot, tok_eos;
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;

    memset(&g, 0, sizeof(g));
    g.cmd = "chat";
    g.max_new = 512;
    st.g = &g;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (c == 'h') {
            chat_usage(stdout);
            return 0;
        }
        if (c == 'y') {
            g.system = optarg;
            continue;
        }
        if (c == 'N') {
            think_flag = SW_CHAT_NO_THINKING;
            continue;
        }
        if ((r = common_option(&g, c, optarg)) == 0)
            continue;
        if (r == 1)
            chat_usage(stderr);
        return 2;
    }
    if (optind != argc) {
        fprintf(stderr, "swarmd chat: unexpected argument '%s'; the turns come from stdin\n", argv[optind]);
        return 2;
    }
    if ((r = finish_options(&g)) != 0)
        goto out_usage;
    if ((r = load_tokenizer(&g, 1, &tok)) != 0)
        goto out_usage;
    r = g.template_name && strcmp(g.template_name, "auto") != 0
            ? sw_chat_template_by_name(g.template_name, &t)
            : sw_chat_template_load(g.tokenizer_path ? g.tokenizer_path : g.co.model_dir, &t);
    if (r < 0) {
        fprintf(stderr, "swarmd chat: %s\n", sw_err_detail());
        rc = 1;
        goto out;
    }
    if ((eot = sw_tokenizer_token_id(tok, sw_chat_end_of_turn(&t))) < 0) {
        fprintf(stderr, "swarmd chat: the tokenizer has no '%s' token, which ends the %s template's "
                        "turns; choose another with --chat-template\n", sw_chat_end_of_turn(&t), t.name);
        goto out;
    }
    if (g.co.max_length == 0)
        g.co.max_length = 2048;
    if ((r = swarm_client_open(&g.co, &cl)) < 0) {
        fprintf(stderr, "swarmd chat: %s\n", swarm_client_error());
        goto out;
    }
    if ((r = sw_generation_config_load(g.co.model_dir, swarm_client_vocab_size(cl), &gc)) < 0) {
        fprintf(stderr, "swarmd chat: %s\n", sw_err_detail());
        goto out;
    }
    sampling_of(&g, &gc, &samp);
    n_eos = gc.n_eos;
    memcpy(eos, gc.eos, (size_t)n_eos * sizeof(int32_t));
    eos[n_eos++] = eot;
    if ((tok_eos = sw_tokenizer_eos(tok)) >= 0)
        eos[n_eos++] = tok_eos;
    if ((r = sw_detok_new(tok, SW_DETOK_SKIP_SPECIAL, &st.detok)) < 0 ||
        (r = sw_stop_new(eos, (size_t)n_eos, g.stops, (size_t)g.n_stops, 0, &st.stop)) < 0) {
        fprintf(stderr, "swarmd chat: %s\n", sw_err_detail());
        goto out;
    }
    if ((r = swarm_session_open(cl, g.co.max_length, &s)) < 0) {
        fprintf(stderr, "swarmd chat: %s\n", swarm_client_error());
        goto out;
    }
    if (isatty(0))
        fprintf(stderr, "swarmd chat: %s template, %d positions; type a message, Ctrl-D to end\n",
                t.name, g.co.max_length);
    while ((got = getline(&line, &cap, stdin)) >= 0) {
        while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r'))
            line[--got] = '\0';
        if (got == 0)
            continue;
        if ((r = chat_turn(s, &t, tok, &g, &samp, eos, n_eos, eot, &st, line, first, think_flag,
                           &eot_fed)) < 0) {
            fprintf(stderr, "swarmd chat: %s\n", swarm_client_error());
            goto out;
        }
        first = 0;
    }
    rc = 0;
    goto out;
out_usage:
    rc = r == 2 ? 2 : 1;
out:
    free(line);
    swarm_session_close(s);
    swarm_client_close(cl);
    sw_detok_free(st.detok);
    sw_stop_free(st.stop);
    sw_tokenizer_free(tok);
    sw_free(g.peers_buf);
    return rc;
}
