/*
 * main.c - the swarmd binary: global options, then one subcommand.
 *
 *   swarmd [global options] <subcommand> [options]
 *
 * Usage errors exit 2, failures exit 1 with a message saying what to do next.
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "kernels/device.h"
#include "kernels/ops.h"
#include "sw_build_config.h"
#include "util/error.h"
#include "util/log.h"
#include "util/pool.h"

sw_global_opts_t sw_global_opts = { .threads = 0, .backend = "cpu" };

static const struct {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *summary;
} commands[] = {
    { "serve", sw_cmd_serve, "serve a span of transformer blocks to peers (--serve-layers A:B)" },
    { "status", sw_cmd_status, "the swarm as the DHT shows it: servers per block, gaps, bottleneck" },
    { "eval", sw_cmd_eval, "run a prompt through the whole model locally; per-position argmax and log-probability" },
    { "generate", sw_cmd_generate, "continue a prompt through a swarm (--local: in this process)" },
    { "chat", sw_cmd_chat, "an interactive chat through a swarm, the session kept across turns" },
    { "inspect", sw_cmd_inspect, "show a model's architecture, tensors, bytes per block per format" },
    { "quantize", sw_cmd_quantize, "write an NF4 or Int8 copy of a checkpoint (bitsandbytes layout)" },
    { "tokenize", sw_cmd_tokenize, "text to token ids, or ids back to text (--decode), with a model's tokenizer.json" },
    { "id", sw_cmd_id, "this node's peer id (creates the identity file on first use)" },
    { "swarm-key", sw_cmd_swarm_key, "swarm-key generate FILE: a new key for a private swarm" },
    { "dht", sw_cmd_dht, "the swarm DHT: serve a bootstrap node, ping, get, put, nodes" },
};

static void usage(FILE *f)
{
    fprintf(f,
            "swarmd %s - run and train large transformers on GPUs lent over the internet\n"
            "\n"
            "Usage: swarmd [global options] <command> [options]\n"
            "       swarmd [global options] --serve-layers auto --model DIR ...  (serve is the default)\n"
            "\n"
            "Commands:\n", SW_VERSION);
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(f,
            "\n"
            "Global options (before the command):\n"
            "  -v, --verbose        more detail on stderr (-v info, -vv debug)\n"
            "  -q, --quiet          errors only\n"
            "      --log-level L    debug, info, warn (default), error or off\n"
            "      --threads N      CPU threads for kernels (default: one per CPU)\n"
            "      --backend B      cpu (default; AVX2/FMA when available) or reference\n"
            "                       (plain single-threaded C, for checking results)\n"
            "      --identity FILE  this node's Ed25519 key file, created (mode 0600) on first use;\n"
            "                       default $XDG_STATE_HOME/swarmd/identity, else\n"
            "                       ~/.local/state/swarmd/identity\n"
            "      --swarm-key FILE join a private swarm: FILE holds its 64-hex-character key,\n"
            "                       mode 0600 (make one with 'swarmd swarm-key generate FILE');\n"
            "                       peers without the same key cannot connect\n"
            "  -V, --version        print version and build features\n"
            "  -h, --help           this help\n"
            "\n"
            "Run 'swarmd <command> --help' for a command's options.\n");
}

static void version(void)
{
    int n = sw_cuda_device_count();

    printf("swarmd %s\n", SW_VERSION);
    printf("cpu kernels: %s\n", sw_cpu_simd_name());
    if (!sw_cuda_compiled()) {
        printf("cuda: not compiled in\n");
        return;
    }
    printf("cuda: compiled for %s; %d device%s visible\n", SW_CUDA_ARCHS, n, n == 1 ? "" : "s");
    for (int i = 0; i < n; i++) {
        char name[256];
        if (sw_cuda_device_name(i, name, sizeof(name)) == 0)
            printf("  device %d: %s\n", i, name);
    }
}

/*
 * `serve` is the default command (DESIGN.md: `swarmd --serve-layers auto --model DIR` runs a
 * volunteer server): if the first argument after the global options is an option rather than a
 * command, "serve" is put in front of it. Returns the argv to parse (argv itself, or a copy in
 * *buf that the caller frees) and sets *argc_out.
 */
static char **default_to_serve(int argc, char **argv, int *argc_out, char ***buf)
{
    static const char *const with_value[] = { "--log-level", "--threads", "--backend", "--identity",
                                              "--swarm-key" };
    static const char *const flags[] = { "--verbose", "--quiet", "--version", "--help" };
    int i = 1;

    *argc_out = argc;
    *buf = NULL;
    while (i < argc) {
        const char *a = argv[i];
        int known = 0;
        if (a[0] != '-' || strcmp(a, "--") == 0 || strcmp(a, "-") == 0)
            return argv; /* a command (or the end of options): nothing to add */
        if (a[1] != '-' && strspn(a + 1, "vqVh") == strlen(a + 1)) { /* -v, -vv, -q, -V, -h */
            i++;
            continue;
        }
        for (size_t k = 0; k < sizeof(flags) / sizeof(flags[0]); k++)
            known |= strcmp(a, flags[k]) == 0;
        for (size_t k = 0; k < sizeof(with_value) / sizeof(with_value[0]) && !known; k++) {
            size_t n = strlen(with_value[k]);
            if (strncmp(a, with_value[k], n) == 0 && (a[n] == '=' || a[n] == '\0')) {
                known = 1;
                if (a[n] == '\0')
                    i++; /* its value */
            }
        }
        if (!known)
            break; /* an option of no global kind: serve's */
        i++;
    }
    if (i >= argc)
        return argv;
    if (!(*buf = malloc((size_t)(argc + 2) * sizeof(char *))))
        return argv;
    memcpy(*buf, argv, (size_t)i * sizeof(char *));
    (*buf)[i] = (char *)"serve";
    memcpy(*buf + i + 1, argv + i, (size_t)(argc - i) * sizeof(char *));
    (*buf)[argc + 1] = NULL;
    *argc_out = argc + 1;
    return *buf;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "verbose", no_argument, NULL, 'v' },
        { "quiet", no_argument, NULL, 'q' },
        { "log-level", required_argument, NULL, 'L' },
        { "threads", required_argument, NULL, 't' },
        { "backend", required_argument, NULL, 'b' },
        { "identity", required_argument, NULL, 'I' },
        { "swarm-key", required_argument, NULL, 'K' },
        { "version", no_argument, NULL, 'V' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int c, verbose = 0;
    sw_log_level_t level;

    static char **argv_buf; /* lives until exit (reachable: not a leak) */

    /* a peer that vanishes mid-write must cost a write error on that connection, not the process */
    signal(SIGPIPE, SIG_IGN);
    argv = default_to_serve(argc, argv, &argc, &argv_buf);
    /* '+' stops at the first non-option: the subcommand */
    while ((c = getopt_long(argc, argv, "+vqVh", opts, NULL)) != -1) {
        switch (c) {
        case 'v':
            verbose++;
            sw_log_set_level(verbose >= 2 ? SW_LOG_DEBUG : SW_LOG_INFO);
            break;
        case 'q':
            sw_log_set_level(SW_LOG_ERROR);
            break;
        case 'L':
            if (sw_log_parse_level(optarg, &level) < 0) {
                fprintf(stderr, "swarmd: %s\n", sw_err_detail());
                return 2;
            }
            sw_log_set_level(level);
            break;
        case 't': {
            char *end;
            long n = strtol(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0' || n < 1 || n > 1024) {
                fprintf(stderr, "swarmd: --threads wants a number from 1 to 1024, not '%s'\n",
                        optarg);
                return 2;
            }
            sw_global_opts.threads = (int)n;
            break;
        }
        case 'b':
            if (strcmp(optarg, "cpu") != 0 && strcmp(optarg, "reference") != 0) {
                fprintf(stderr, "swarmd: --backend is 'cpu' or 'reference', not '%s'\n", optarg);
                return 2;
            }
            sw_global_opts.backend = optarg;
            break;
        case 'I':
        case 'K':
            if (!optarg[0]) {
                fprintf(stderr, "swarmd: --%s wants a file name\n", c == 'I' ? "identity" : "swarm-key");
                return 2;
            }
            if (c == 'I')
                sw_global_opts.identity = optarg;
            else
                sw_global_opts.swarm_key = optarg;
            break;
        case 'V':
            version();
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            fprintf(stderr, "Run 'swarmd --help' for usage.\n");
            return 2;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return 2;
    }
    sw_pool_set_default_threads(sw_global_opts.threads);
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (strcmp(argv[optind], commands[i].name) == 0) {
            int sub = optind;
            optind = 0; /* glibc: 0 re-initialises getopt for the subcommand's own parse */
            return commands[i].fn(argc - sub, argv + sub);
        }
    }
    fprintf(stderr, "swarmd: unknown command '%s'. Run 'swarmd --help' for the list.\n",
            argv[optind]);
    return 2;
}
