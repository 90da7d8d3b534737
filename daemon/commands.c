/*
 * commands.c - model-file and local-run subcommands (eval, inspect, quantize) and the
 * identity ones (id, swarm-key).
 * Runs on the main thread; kernels parallelise on the global pool.
 */
#include "commands.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <sodium.h>

#include "kernels/ops.h"
#include "p2p/identity.h"
#include "kernels/device.h"
#include "pipeline/local.h"
#include "pipeline/model.h"
#include "util/alloc.h"
#include "util/error.h"
#include "util/log.h"

#define MAX_IDS (1 << 20)

/* --quant / --int8-threshold, shared by every command that loads blocks */
#define QUANT_OPTIONS \
    { "quant", required_argument, NULL, 'Q' }, \
    { "int8-threshold", required_argument, NULL, 'X' }
#define QUANT_HELP \
    "  --quant Q            weight format of the blocks: nf4 (4-bit NormalFloat, double-quantized\n" \
    "                       absmax, as bitsandbytes/QLoRA), int8 (LLM.int8()), none (as stored,\n" \
    "                       16/32-bit). Default: as the checkpoint stores them. Embeddings, norms\n" \
    "                       and the LM head stay 16-bit.\n" \
    "  --int8-threshold T   LLM.int8() outlier threshold: activation columns with |x| >= T run\n" \
    "                       in floating point (default 6.0; 0 disables the decomposition)\n"

/* --device, shared by eval, generate and inspect */
#define DEVICE_OPTION { "device", required_argument, NULL, 'D' }
#define DEVICE_HELP \
    "  --device D           where the model runs: cpu (default) or cuda[:N] (CUDA GPU N,\n" \
    "                       default 0; an error if this build or machine has none)\n"

/* Parses --device into *d; 0, or 2 (usage error, message printed). */
static int device_option(const char *cmd, const char *arg, sw_device_t *d)
{
    if (sw_device_parse(arg, d) < 0) {
        fprintf(stderr, "swarmd %s: %s\n", cmd, sw_err_detail());
        return 2;
    }
    return 0;
}

static void progress_line(void *ctx, int block, int done, int total)
{
    const sw_load_opts_t *o = ctx;

    fprintf(stderr, "swarmd: %s block %d (%d/%d)\n",
            o->quant == SW_QUANT_NF4 ? "quantized to nf4:" : "quantized to int8:", block, done,
            total);
}

/* Handles a QUANT_OPTIONS option; returns 0, or 2 (usage error, message printed). */
static int quant_option(const char *cmd, int c, const char *arg, sw_load_opts_t *o)
{
    char *end;

    if (c == 'Q') {
        if (sw_quant_parse(arg, &o->quant) < 0) {
            fprintf(stderr, "swarmd %s: %s\n", cmd, sw_err_detail());
            return 2;
        }
        if (o->quant == SW_QUANT_NF4 || o->quant == SW_QUANT_INT8) {
            o->progress = progress_line;
            o->progress_ctx = o;
        }
        return 0;
    }
    o->int8_threshold = strtof(arg, &end);
    if (end == arg || *end || !(o->int8_threshold >= 0.0f) || o->int8_threshold > 1e6f) {
        fprintf(stderr, "swarmd %s: --int8-threshold wants a number >= 0, not '%s'\n", cmd, arg);
        return 2;
    }
    return 0;
}

static const sw_ops_t *chosen_ops(void)
{
    return strcmp(sw_global_opts.backend, "reference") == 0 ? &sw_ops_ref : &sw_ops_cpu;
}

/* Prints the failure of `what` with the error detail and returns exit code 1. */
static int fail(const char *cmd, const char *what, int r)
{
    const char *d = sw_err_detail();

    if (d[0])
        fprintf(stderr, "swarmd %s: %s: %s\n", cmd, what, d);
    else
        fprintf(stderr, "swarmd %s: %s: %s\n", cmd, what, sw_strerror(r));
    return 1;
}

/* Parses "1,2,3" into a new array (caller frees). Every id must be a non-negative int32. */
int sw_cli_parse_ids(const char *opt, const char *s, int32_t **out, int *n_out)
{
    int32_t *ids;
    int n = 1;

    for (const char *p = s; *p; p++)
        n += *p == ',';
    if (n > MAX_IDS)
        return sw_err(SW_EUSAGE, "%s: more than %d ids", opt, MAX_IDS);
    ids = sw_malloc((size_t)n * sizeof(int32_t));
    if (!ids)
        return -ENOMEM;
    for (int i = 0; i < n; i++) {
        char *end;
        long v;
        errno = 0;
        v = strtol(s, &end, 10);
        if (end == s || errno || v < 0 || v > INT32_MAX || (*end != ',' && *end != '\0') ||
            (*end == '\0' && i != n - 1)) {
            sw_free(ids);
            return sw_err(SW_EUSAGE, "%s wants comma-separated token ids such as 1,2,3 "
                          "(problem at id %d)", opt, i + 1);
        }
        ids[i] = (int32_t)v;
        s = end + 1;
    }
    *out = ids;
    *n_out = n;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */

static void eval_usage(FILE *f)
{
    fprintf(f,
            "Usage: swarmd eval --model DIR --tokens IDS [--logits-out FILE]\n"
            "\n"
            "Runs the prompt through the whole model in this process and prints, per position,\n"
            "the input token, the argmax next token and its log-probability.\n"
            "\n"
            "  --model DIR         Hugging Face checkpoint directory (config.json + *.safetensors)\n"
            "  --tokens IDS        prompt token ids, comma-separated: 1,2,3\n"
            "  --logits-out FILE   also write the raw logits: float32, T x V, row-major, little-endian\n"
            DEVICE_HELP
            QUANT_HELP
            "  -h, --help          this help\n");
}

int sw_cmd_eval(int argc, char **argv)
{
    static const struct option opts[] = {
        { "model", required_argument, NULL, 'm' },
        { "tokens", required_argument, NULL, 't' },
        { "logits-out", required_argument, NULL, 'o' },
        DEVICE_OPTION,
        QUANT_OPTIONS,
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *model = NULL, *tokens = NULL, *logits_out = NULL;
    sw_local_t *l = NULL;
    int32_t *ids = NULL;
    float *logits = NULL;
    sw_load_opts_t lo = SW_LOAD_OPTS_DEFAULT;
    sw_device_t dev = { SW_DEVICE_CPU, 0 };
    int c, T = 0, V, r, rc = 1;

    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'Q':
        case 'X':
            if (quant_option("eval", c, optarg, &lo))
                return 2;
            break;
        case 'D':
            if (device_option("eval", optarg, &dev))
                return 2;
            break;
        case 'm': model = optarg; break;
        case 't': tokens = optarg; break;
        case 'o': logits_out = optarg; break;
        case 'h': eval_usage(stdout); return 0;
        default: eval_usage(stderr); return 2;
        }
    }
    if (!model || !tokens || optind != argc) {
        fprintf(stderr, "swarmd eval: --model and --tokens are required\n\n");
        eval_usage(stderr);
        return 2;
    }
    if (sw_cli_parse_ids("--tokens", tokens, &ids, &T) < 0) {
        fprintf(stderr, "swarmd eval: %s\n", sw_err_detail());
        return 2;
    }
    r = sw_local_open_on(model, 1, T, &lo, &dev, &l);
    if (r < 0) {
        rc = fail("eval", "cannot load the model", r);
        goto out;
    }
    V = sw_local_config(l)->vocab_size;
    logits = sw_malloc((size_t)T * V * sizeof(float));
    if (!logits) {
        rc = fail("eval", "logits buffer", -ENOMEM);
        goto out;
    }
    r = sw_local_forward(l, chosen_ops(), ids, T, 1, logits);
    if (r < 0) {
        rc = fail("eval", "forward pass failed", r);
        goto out;
    }
    printf("%-6s %-8s %-8s %s\n", "pos", "token", "argmax", "logprob");
    for (int t = 0; t < T; t++) {
        const float *row = logits + (size_t)t * V;
        int best = sw_argmax(row, V);
        double sum = 0.0;
        for (int i = 0; i < V; i++)
            sum += exp((double)row[i] - row[best]);
        printf("%-6d %-8d %-8d %.6f\n", t, ids[t], best, -log(sum));
    }
    if (logits_out) {
        FILE *f = fopen(logits_out, "wb");
        size_t n = (size_t)T * V;
        if (!f || fwrite(logits, sizeof(float), n, f) != n || fclose(f) != 0) {
            fprintf(stderr, "swarmd eval: cannot write %s: %s; check the path and free space\n",
                    logits_out, strerror(errno));
            goto out;
        }
    }
    rc = 0;
out:
    sw_free(logits);
    sw_free(ids);
    sw_local_close(l);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */

static void inspect_usage(FILE *f)
{
    fprintf(f,
            "Usage: swarmd inspect --model DIR [--quant Q]\n"
            "\n"
            "Prints the architecture from config.json, every tensor of the checkpoint with its\n"
            "dtype and shape, and the bytes each block reads per token as loaded and in NF4\n"
            "and Int8, with bits per parameter.\n"
            "\n"
            "  --model DIR          Hugging Face checkpoint directory\n"
            DEVICE_HELP
            "                       (inspect: also loads the blocks onto that GPU and prints the\n"
            "                       device memory they take)\n"
            QUANT_HELP
            "                       (inspect: the \"as loaded\" column shows the blocks so loaded)\n"
            "  -h, --help           this help\n");
}

static void print_shape(const sw_st_tensor_t *t)
{
    printf("(");
    for (int i = 0; i < t->ndim; i++)
        printf(i ? ", %lld" : "%lld", (long long)t->shape[i]);
    printf(t->ndim == 1 ? ",)" : ")");
}

int sw_cmd_inspect(int argc, char **argv)
{
    static const struct option opts[] = {
        { "model", required_argument, NULL, 'm' },
        DEVICE_OPTION,
        QUANT_OPTIONS,
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *model = NULL;
    sw_device_t dev = { SW_DEVICE_CPU, 0 };
    sw_cuda_ctx_t *cuda = NULL;
    const sw_model_config_t *cfg;
    sw_model_t *m = NULL;
    sw_span_t *span = NULL;
    sw_st_dir_t *ck;
    uint64_t params = 0, bytes = 0;
    sw_load_opts_t lo = SW_LOAD_OPTS_DEFAULT;
    int c, r, rc = 1;

    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'Q':
        case 'X':
            if (quant_option("inspect", c, optarg, &lo))
                return 2;
            break;
        case 'D':
            if (device_option("inspect", optarg, &dev))
                return 2;
            break;
        case 'h': inspect_usage(stdout); return 0;
        default: inspect_usage(stderr); return 2;
        }
    }
    if (!model || optind != argc) {
        fprintf(stderr, "swarmd inspect: --model is required\n\n");
        inspect_usage(stderr);
        return 2;
    }
    if ((r = sw_device_check(&dev)) < 0)
        return fail("inspect", "cannot use the device", r);
    r = sw_model_open(model, &m);
    if (r < 0)
        return fail("inspect", "cannot open the model", r);
    cfg = sw_model_config(m);
    ck = sw_model_checkpoint(m);
    printf("model:        %s\n", model);
    printf("architecture: %s (model_type \"%s\")\n", sw_arch_name(cfg->arch), cfg->model_type);
    printf("layers %d, hidden %d, intermediate %d, vocab %d\n", cfg->num_layers,
           cfg->hidden_size, cfg->intermediate_size, cfg->vocab_size);
    printf("heads %d, kv heads %d, head dim %d, max positions %d, rms eps %g\n", cfg->num_heads,
           cfg->num_kv_heads, cfg->head_dim, cfg->max_position_embeddings, cfg->rms_norm_eps);
    printf("rope: %s, theta %g", sw_rope_type_name(cfg->rope.type), cfg->rope.theta);
    if (cfg->rope.type != SW_ROPE_DEFAULT)
        printf(", factor %g", cfg->rope.factor);
    if (cfg->rope.type == SW_ROPE_LLAMA3)
        printf(", low %g, high %g, original max %d", cfg->rope.low_freq_factor,
               cfg->rope.high_freq_factor, cfg->rope.original_max_position_embeddings);
    printf("\n");
    printf("tied embeddings %s, qkv bias %s, sliding window %d\n",
           cfg->tie_word_embeddings ? "yes" : "no", cfg->attention_bias ? "yes" : "no",
           cfg->sliding_window);
    printf("\ntensors (%zu in %zu file%s):\n", sw_st_dir_count(ck), sw_st_dir_shards(ck),
           sw_st_dir_shards(ck) == 1 ? "" : "s");
    for (size_t i = 0; i < sw_st_dir_count(ck); i++) {
        const char *name = sw_st_dir_name(ck, i);
        const sw_st_tensor_t *t;
        r = sw_st_dir_find(ck, name, &t);
        if (r < 0) {
            rc = fail("inspect", "bad checkpoint", r);
            goto out;
        }
        uint64_t n = 1;
        for (int d = 0; d < t->ndim; d++)
            n *= (uint64_t)t->shape[d];
        params += n;
        bytes += t->nbytes;
        printf("  %-56s %-5s ", name, sw_st_dtype_name(t->dtype));
        print_shape(t);
        printf("\n");
    }
    printf("\nparameters %llu, %.2f MiB stored\n", (unsigned long long)params,
           (double)bytes / (1 << 20));
    r = sw_span_load(m, 0, cfg->num_layers, &lo, &span);
    if (r < 0) {
        rc = fail("inspect", "the blocks do not load", r);
        goto out;
    }
    /* bytes per block in the stored format and in each quantized one (computed from shapes) */
    {
        int64_t shapes[SW_BLOCK_LINEARS][2];
        uint64_t lin = 0, lin_params = 0, lin_nf4 = 0, lin_int8 = 0;
        sw_block_linear_shapes(cfg, shapes);
        for (int k = 0; k < SW_BLOCK_LINEARS; k++) {
            uint64_t N = (uint64_t)shapes[k][0], K = (uint64_t)shapes[k][1], nb = (N * K + 63) / 64;
            lin_params += N * K;
            lin_nf4 += (N * K + 1) / 2 + nb + (nb + 255) / 256 * 4 + 4;
            lin_int8 += N * K + 4 * N;
        }
        printf("\nweights read per token, per block (MiB), and bits per block-Linear parameter:\n");
        printf("  %-8s %14s %10s %10s\n", "block", "as loaded", "nf4", "int8");
        for (int b = 0; b < cfg->num_layers; b++) {
            double stored = (double)sw_span_block_bytes(span, b);
            lin = 0;
            for (int k = 0; k < SW_BLOCK_LINEARS; k++)
                lin += sw_span_linear_bytes(span, b, k);
            printf("  %-8d %14.3f %10.3f %10.3f\n", b, stored / (1 << 20),
                   (stored - (double)lin + (double)lin_nf4) / (1 << 20),
                   (stored - (double)lin + (double)lin_int8) / (1 << 20));
        }
        printf("  %-8s %14.3f %10.3f %10.3f\n", "bits/par", 8.0 * (double)lin / (double)lin_params,
               8.0 * (double)lin_nf4 / (double)lin_params, 8.0 * (double)lin_int8 / (double)lin_params);
        printf("(nf4: blocks of 64 with double-quantized absmax; int8: LLM.int8() with one scale per "
               "row; embeddings, norms and the LM head stay as stored)\n");
    }
    if (dev.kind == SW_DEVICE_CUDA) {
        char name[256];
        size_t free0 = 0, free1 = 0, total = 0;
        if ((r = sw_cuda_device_name(dev.index, name, sizeof(name))) < 0 ||
            (r = sw_cuda_ctx_create(dev.index, &cuda)) < 0 ||
            (r = sw_cuda_mem_info(cuda, &free0, &total)) < 0 ||
            (r = sw_span_to_cuda(span, cuda)) < 0 ||
            (r = sw_cuda_mem_info(cuda, &free1, &total)) < 0) {
            rc = fail("inspect", "the blocks do not load onto the GPU", r);
            goto out;
        }
        printf("\ndevice cuda:%d (%s): the blocks take %.1f MiB of GPU memory; %.1f of %.1f MiB "
               "free after loading\n", dev.index, name, (double)(free0 - free1) / (1 << 20),
               (double)free1 / (1 << 20), (double)total / (1 << 20));
    }
    rc = 0;
out:
    sw_span_free(span);
    sw_cuda_ctx_free(cuda);
    sw_model_close(m);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */

static void quantize_usage(FILE *f)
{
    fprintf(f,
            "Usage: swarmd quantize --model DIR --quant nf4|int8 --out DIR2 [--int8-threshold T]\n"
            "\n"
            "Writes a pre-quantized copy of a 16/32-bit checkpoint, laid out as transformers +\n"
            "bitsandbytes save theirs (loadable there too), with a quantization_config in\n"
            "config.json. Loading it needs no re-quantization and gives exactly the weights\n"
            "that --quant gives on load. Prints a progress line per block.\n"
            "\n"
            "  --model DIR          source checkpoint (config.json + *.safetensors)\n"
            "  --out DIR2           destination directory (created; files in it are replaced)\n"
            QUANT_HELP
            "  -h, --help           this help\n");
}

int sw_cmd_quantize(int argc, char **argv)
{
    static const struct option opts[] = {
        { "model", required_argument, NULL, 'm' },
        { "out", required_argument, NULL, 'o' },
        QUANT_OPTIONS,
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *model = NULL, *out = NULL;
    sw_load_opts_t lo = SW_LOAD_OPTS_DEFAULT;
    int c, r;

    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'o': out = optarg; break;
        case 'Q':
        case 'X':
            if (quant_option("quantize", c, optarg, &lo))
                return 2;
            break;
        case 'h': quantize_usage(stdout); return 0;
        default: quantize_usage(stderr); return 2;
        }
    }
    if (!model || !out || optind != argc ||
        (lo.quant != SW_QUANT_NF4 && lo.quant != SW_QUANT_INT8)) {
        fprintf(stderr, "swarmd quantize: --model, --out and --quant nf4|int8 are required\n\n");
        quantize_usage(stderr);
        return 2;
    }
    r = sw_model_quantize(model, out, &lo);
    if (r < 0)
        return fail("quantize", "cannot quantize", r);
    printf("wrote %s (%s)\n", out, sw_quant_name(lo.quant));
    return 0;
}

/* ------------------------------------------------------------------------------------------ */

static void id_usage(FILE *f)
{
    fprintf(f,
            "Usage: swarmd [--identity FILE] [--swarm-key FILE] id\n"
            "\n"
            "Prints this node's peer id (base58 of its Ed25519 public key) and its short form, the\n"
            "identity file, and whether a swarm key is configured. Creates the identity file (mode\n"
            "0600, parent directories 0700) when it does not exist yet. Never prints key material.\n"
            "\n"
            "  -h, --help    this help\n");
}

int sw_cmd_id(int argc, char **argv)
{
    static const struct option opts[] = {
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    char *path = NULL, text[SW_PEER_ID_TEXT_MAX], sid[SW_PEER_ID_SHORT_MAX];
    sw_identity_t id;
    uint8_t key[32];
    struct stat st;
    int c, r, existed, rc = 1;

    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'h': id_usage(stdout); return 0;
        default: id_usage(stderr); return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "swarmd id: unexpected argument '%s'\n\n", argv[optind]);
        id_usage(stderr);
        return 2;
    }
    if (sodium_init() < 0)
        return fail("id", "libsodium failed to initialise", SW_EUNSUPPORTED);
    if (sw_global_opts.identity) {
        path = sw_strdup(sw_global_opts.identity);
        if (!path)
            return fail("id", "out of memory", -ENOMEM);
    } else if ((r = sw_identity_default_path(&path)) < 0) {
        return fail("id", "no identity file", r);
    }
    existed = lstat(path, &st) == 0;
    if ((r = sw_identity_load_or_create(path, &id)) < 0) {
        fail("id", "cannot load the identity", r);
        goto out;
    }
    sw_peer_id_text(&id.id, text);
    sw_peer_id_short(&id.id, sid);
    sw_identity_wipe(&id);
    if (sw_global_opts.swarm_key) {
        r = sw_swarm_key_load(sw_global_opts.swarm_key, key);
        sodium_memzero(key, sizeof(key));
        if (r < 0) {
            fail("id", "cannot load the swarm key", r);
            goto out;
        }
    }
    printf("peer id:   %s\n", text);
    printf("short id:  %s\n", sid);
    printf("identity:  %s%s\n", path, existed ? "" : " (created)");
    if (sw_global_opts.swarm_key)
        printf("swarm key: %s (private swarm)\n", sw_global_opts.swarm_key);
    else
        printf("swarm key: none (public swarm)\n");
    rc = 0;
out:
    sw_free(path);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */

static void swarm_key_usage(FILE *f)
{
    fprintf(f,
            "Usage: swarmd swarm-key generate FILE\n"
            "\n"
            "Writes a new random swarm key to FILE (64 hexadecimal characters and a newline, mode\n"
            "0600). Peers started with '--swarm-key FILE' form a private swarm: a peer without the\n"
            "same key cannot complete the handshake. Copy the file to each of the swarm's machines\n"
            "over a safe channel. An existing FILE is never overwritten.\n"
            "\n"
            "  -h, --help    this help\n");
}

int sw_cmd_swarm_key(int argc, char **argv)
{
    static const struct option opts[] = {
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int c, r;

    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'h': swarm_key_usage(stdout); return 0;
        default: swarm_key_usage(stderr); return 2;
        }
    }
    if (argc - optind != 2 || strcmp(argv[optind], "generate") != 0) {
        fprintf(stderr, "swarmd swarm-key: expected 'generate FILE'\n\n");
        swarm_key_usage(stderr);
        return 2;
    }
    if (sodium_init() < 0)
        return fail("swarm-key", "libsodium failed to initialise", SW_EUNSUPPORTED);
    if ((r = sw_swarm_key_generate(argv[optind + 1])) < 0)
        return fail("swarm-key", "cannot write the key", r);
    printf("swarm key written to %s (mode 0600); start each peer with --swarm-key %s\n", argv[optind + 1],
           argv[optind + 1]);
    return 0;
}
