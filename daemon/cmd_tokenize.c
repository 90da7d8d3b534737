/*
 * cmd_tokenize.c - `swarmd tokenize`: text to token ids, or ids back to text, with a model's
 * tokenizer.json. For checking prompts and generated ids by hand, and for scripts.
 * Runs on the main thread; no network, no weights.
 */
#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "pipeline/tokenizer.h"
#include "util/alloc.h"
#include "util/error.h"

#define STDIN_MAX (64u << 20)

static void tokenize_usage(FILE *f)
{
    fprintf(f,
            "Usage: swarmd tokenize --model DIR [options] TEXT\n"
            "       swarmd tokenize --model DIR --decode [options] IDS\n"
            "\n"
            "Encodes TEXT with the model's tokenizer.json and prints the token ids, comma-separated;\n"
            "with --decode, turns IDS (comma- or space-separated) back into text. TEXT or IDS '-'\n"
            "reads standard input (up to 64 MiB). Special tokens written in the text, such as\n"
            "<|eot_id|> or <s>, are recognised as such.\n"
            "\n"
            "Options:\n"
            "  --model DIR        model folder with tokenizer.json (tokenizer_config.json, if there,\n"
            "                     names BOS and EOS), or the path of a tokenizer.json\n"
            "  --decode           decode IDS instead of encoding TEXT\n"
            "  --no-special       encode without what the tokenizer adds around a text (e.g. Llama 2's\n"
            "                     <s>); default adds it, as Hugging Face's add_special_tokens=True\n"
            "  --skip-special     when decoding, leave special tokens out of the text\n"
            "  --show-tokens      encoding: print one 'id<TAB>token' line per token instead\n"
            "  -h, --help         this help\n"
            "\n"
            "Examples:\n"
            "  swarmd tokenize --model ./Llama-3.2-1B 'Hello, world!'\n"
            "  swarmd tokenize --model ./Llama-3.2-1B --decode 128000,9906,11,1917,0\n");
}

static int read_stdin(char **out, size_t *len)
{
    size_t cap = 4096, n = 0;
    char *b = sw_malloc(cap);

    while (b) {
        if (n == cap) {
            if (cap >= STDIN_MAX) {
                sw_free(b);
                return sw_err(SW_ELIMIT, "standard input is over %u bytes", STDIN_MAX);
            }
            char *p = sw_realloc(b, cap * 2);
            if (!p)
                break;
            b = p;
            cap *= 2;
        }
        size_t got = fread(b + n, 1, cap - n, stdin);
        n += got;
        if (got == 0) {
            if (ferror(stdin)) {
                sw_free(b);
                return sw_err(-EIO, "cannot read standard input");
            }
            *out = b;
            *len = n;
            return 0;
        }
    }
    sw_free(b);
    return -ENOMEM;
}

/* Parses "1,2, 3" or "1 2 3" into a new array; the caller frees it. */
static int parse_ids(const char *s, int32_t **out, size_t *n)
{
    size_t cap = 64, k = 0;
    int32_t *ids = sw_malloc(cap * sizeof(int32_t));

    if (!ids)
        return -ENOMEM;
    while (*s) {
        while (*s == ',' || *s == ' ' || *s == '\t' || *s == '\n' || *s == '\r' || *s == '[' ||
               *s == ']')
            s++;
        if (!*s)
            break;
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (end == s || errno || v < 0 || v > INT32_MAX ||
            (*end && !strchr(", \t\r\n]", *end))) {
            sw_free(ids);
            return sw_err(SW_EUSAGE, "'%.20s' is not a token id (ids are numbers from 0)", s);
        }
        if (k == cap) {
            int32_t *p = sw_realloc(ids, cap * 2 * sizeof(int32_t));
            if (!p) {
                sw_free(ids);
                return -ENOMEM;
            }
            ids = p;
            cap *= 2;
        }
        ids[k++] = (int32_t)v;
        s = end;
    }
    *out = ids;
    *n = k;
    return 0;
}

int sw_cmd_tokenize(int argc, char **argv)
{
    static const struct option opts[] = {
        { "model", required_argument, NULL, 'm' },
        { "decode", no_argument, NULL, 'd' },
        { "no-special", no_argument, NULL, 'n' },
        { "skip-special", no_argument, NULL, 's' },
        { "show-tokens", no_argument, NULL, 't' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *model = NULL;
    bool decode = false, no_special = false, skip_special = false, show = false;
    sw_tokenizer_t *tok = NULL;
    char *input = NULL, *text = NULL;
    int32_t *ids = NULL;
    size_t len = 0, n = 0;
    int c, r, rc = 1;

    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'd': decode = true; break;
        case 'n': no_special = true; break;
        case 's': skip_special = true; break;
        case 't': show = true; break;
        case 'h': tokenize_usage(stdout); return 0;
        default:
            fprintf(stderr, "Run 'swarmd tokenize --help' for usage.\n");
            return 2;
        }
    }
    if (!model) {
        fprintf(stderr, "swarmd tokenize: --model DIR is required (the folder with tokenizer.json)\n");
        return 2;
    }
    if (optind + 1 != argc) {
        fprintf(stderr, "swarmd tokenize: give exactly one %s argument ('-' reads standard "
                "input); run 'swarmd tokenize --help'\n", decode ? "IDS" : "TEXT");
        return 2;
    }
    if ((r = sw_tokenizer_load(model, &tok)) < 0) {
        fprintf(stderr, "swarmd tokenize: %s (%s). Check that --model names a Hugging Face model "
                "folder with a tokenizer.json.\n", sw_err_detail(), sw_strerror(r));
        return 1;
    }
    const char *arg = argv[optind];
    if (strcmp(arg, "-") == 0) {
        if ((r = read_stdin(&input, &len)) < 0) {
            fprintf(stderr, "swarmd tokenize: %s\n", r == -ENOMEM ? "out of memory" : sw_err_detail());
            goto out;
        }
    } else {
        len = strlen(arg);
    }
    const char *src = input ? input : arg;

    if (decode) {
        if (input)
            input[len] = '\0'; /* read_stdin leaves room: it stops before filling cap */
        if ((r = parse_ids(src, &ids, &n)) < 0) {
            fprintf(stderr, "swarmd tokenize: %s\n", r == -ENOMEM ? "out of memory" : sw_err_detail());
            rc = r == SW_EUSAGE ? 2 : 1;
            goto out;
        }
        size_t cap = 64, tl;
        for (;;) {
            text = sw_malloc(cap);
            if (!text) {
                fprintf(stderr, "swarmd tokenize: out of memory\n");
                goto out;
            }
            r = sw_tokenizer_decode(tok, ids, n, skip_special ? SW_DETOK_SKIP_SPECIAL : 0, text,
                                    cap, &tl);
            if (r != -ENOSPC)
                break;
            sw_free(text);
            cap = tl + 1;
        }
        if (r < 0) {
            fprintf(stderr, "swarmd tokenize: %s\n", sw_err_detail());
            goto out;
        }
        fwrite(text, 1, tl, stdout);
        fputc('\n', stdout);
    } else {
        if ((r = sw_tokenizer_encode_alloc(tok, src, len, no_special ? 0 : SW_TOK_ADD_SPECIAL,
                                           &ids, &n)) < 0) {
            fprintf(stderr, "swarmd tokenize: %s\n", r == -ENOMEM ? "out of memory" : sw_err_detail());
            goto out;
        }
        for (size_t i = 0; i < n; i++) {
            if (show) {
                size_t tl2 = 0;
                const char *ts = sw_tokenizer_token(tok, ids[i], &tl2);
                printf("%d\t%.*s\n", ids[i], (int)tl2, ts ? ts : "");
            } else {
                printf(i ? ",%d" : "%d", ids[i]);
            }
        }
        if (!show)
            putchar('\n');
    }
    rc = fflush(stdout) == 0 ? 0 : 1;
out:
    sw_free(ids);
    sw_free(text);
    sw_free(input);
    sw_tokenizer_free(tok);
    return rc;
}
