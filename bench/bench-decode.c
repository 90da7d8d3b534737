/*
 * bench-decode.c - batch-1 CPU decode speed of a ~1.1B-parameter Llama (TinyLlama-1.1B shapes:
 * H 2048, I 5632, 22 layers, 32 heads, 4 KV heads, V 32000) with random bf16 weights, written as
 * a real checkpoint and loaded through the normal path. Prints tokens/s and the weight bytes read
 * per second, next to this machine's memcpy bandwidth measured in the same run.
 *
 *   bench-decode [--steps N] [--layers L] [--dtype bf16|f16|f32] [--quant nf4|int8] [--dir DIR]
 *
 * With --quant the blocks are quantized on load (embeddings and LM head stay 16-bit), and the
 * bytes per token are those of the quantized blocks (codes and scales) plus the LM head.
 *
 * The checkpoint goes to DIR (default /dev/shm, else /tmp) and is deleted at the end.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"
#include "kernels/tensor.h"
#include "pipeline/local.h"
#include "util/alloc.h"
#include "util/error.h"
#include "util/pool.h"

#define H 2048
#define I 5632
#define NH 32
#define NKV 4
#define HD 64
#define V 32000
#define HDR_MAX (1 << 20)

static unsigned long long rng = 0x9e3779b97f4a7c15ull;

static float frand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return ((float)(rng >> 40) / 16777216.0f - 0.5f) * 0.1f;
}

typedef struct {
    char name[96];
    long long rows, cols; /* cols 0: a vector */
} spec_t;

static int write_checkpoint(const char *dir, int layers, sw_dtype_t dt)
{
    static const char *dtn[] = { "F32", "F16", "BF16" };
    size_t es = sw_dtype_size(dt), nspec = 0, cap = (size_t)layers * 9 + 3;
    spec_t *s = calloc(cap, sizeof(*s));
    char path[1024], *hdr = malloc(HDR_MAX);
    size_t hl = 0, off = 0;
    FILE *f;

    snprintf(s[nspec].name, 96, "model.embed_tokens.weight"); s[nspec].rows = V; s[nspec++].cols = H;
    for (int l = 0; l < layers; l++) {
        const struct { const char *n; long long r, c; } m[] = {
            { "self_attn.q_proj.weight", NH * HD, H }, { "self_attn.k_proj.weight", NKV * HD, H },
            { "self_attn.v_proj.weight", NKV * HD, H }, { "self_attn.o_proj.weight", H, NH * HD },
            { "mlp.gate_proj.weight", I, H }, { "mlp.up_proj.weight", I, H },
            { "mlp.down_proj.weight", H, I }, { "input_layernorm.weight", H, 0 },
            { "post_attention_layernorm.weight", H, 0 },
        };
        for (int j = 0; j < 9; j++) {
            snprintf(s[nspec].name, 96, "model.layers.%d.%s", l, m[j].n);
            s[nspec].rows = m[j].r;
            s[nspec++].cols = m[j].c;
        }
    }
    snprintf(s[nspec].name, 96, "model.norm.weight"); s[nspec].rows = H; s[nspec++].cols = 0;
    snprintf(s[nspec].name, 96, "lm_head.weight"); s[nspec].rows = V; s[nspec++].cols = H;

    hl += (size_t)snprintf(hdr + hl, HDR_MAX - hl, "{");
    for (size_t i = 0; i < nspec; i++) {
        size_t n = (size_t)s[i].rows * (size_t)(s[i].cols ? s[i].cols : 1) * es;
        if (s[i].cols)
            hl += (size_t)snprintf(hdr + hl, HDR_MAX - hl, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[%lld,%lld],\"data_offsets\":[%zu,%zu]}",
                                  i ? "," : "", s[i].name, dtn[dt], s[i].rows, s[i].cols, off, off + n);
        else
            hl += (size_t)snprintf(hdr + hl, HDR_MAX - hl, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[%lld],\"data_offsets\":[%zu,%zu]}",
                                  i ? "," : "", s[i].name, dtn[dt], s[i].rows, off, off + n);
        off += n;
    }
    hl += (size_t)snprintf(hdr + hl, HDR_MAX - hl, "}");
    while ((hl + 8) % 64)
        hdr[hl++] = ' ';

    snprintf(path, sizeof(path), "%s/config.json", dir);
    f = fopen(path, "w");
    if (!f)
        return -errno;
    fprintf(f, "{\"model_type\":\"llama\",\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":%d,"
               "\"hidden_size\":%d,\"intermediate_size\":%d,\"num_hidden_layers\":%d,"
               "\"num_attention_heads\":%d,\"num_key_value_heads\":%d,\"rms_norm_eps\":1e-5,"
               "\"max_position_embeddings\":2048,\"rope_theta\":10000.0,\"tie_word_embeddings\":false}\n",
            V, H, I, layers, NH, NKV);
    fclose(f);

    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    f = fopen(path, "wb");
    if (!f)
        return -errno;
    uint64_t n64 = hl;
    fwrite(&n64, 8, 1, f);
    fwrite(hdr, 1, hl, f);
    float *row = malloc((size_t)I * 4);
    void *out = malloc((size_t)I * 4);
    for (size_t i = 0; i < nspec; i++) {
        long long cols = s[i].cols ? s[i].cols : s[i].rows, rows = s[i].cols ? s[i].rows : 1;
        for (long long r = 0; r < rows; r++) {
            for (long long c = 0; c < cols; c++)
                row[c] = s[i].cols ? frand() : 1.0f + frand();
            sw_from_f32(out, row, dt, (size_t)cols);
            fwrite(out, es, (size_t)cols, f);
        }
    }
    free(row);
    free(out);
    free(hdr);
    free(s);
    return fclose(f) == 0 ? 0 : -errno;
}

int main(int argc, char **argv)
{
    int steps = 16, layers = 22, r;
    sw_dtype_t dt = SW_DTYPE_BF16;
    sw_load_opts_t lo = SW_LOAD_OPTS_DEFAULT;
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    char dir[512];
    sw_local_t *l;

    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--steps") && i + 1 < argc)
            steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--layers") && i + 1 < argc)
            layers = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quant") && i + 1 < argc) {
            if (sw_quant_parse(argv[++i], &lo.quant) < 0) {
                fprintf(stderr, "%s\n", sw_err_detail());
                return 2;
            }
        } else if (!strcmp(argv[i], "--dir") && i + 1 < argc)
            base = argv[++i];
        else if (!strcmp(argv[i], "--dtype") && i + 1 < argc) {
            i++;
            dt = !strcmp(argv[i], "f32") ? SW_DTYPE_F32 : !strcmp(argv[i], "f16") ? SW_DTYPE_F16 : SW_DTYPE_BF16;
        } else {
            fprintf(stderr, "usage: bench-decode [--steps N] [--layers L] [--dtype bf16|f16|f32] [--quant nf4|int8] [--dir DIR]\n");
            return 2;
        }
    }
    snprintf(dir, sizeof(dir), "%s/swarmd-bench-XXXXXX", base);
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    printf("bench-decode: writing a %d-layer Llama (H %d, I %d, V %d) in %s to %s ...\n", layers,
           H, I, V, sw_dtype_name(dt), dir);
    fflush(stdout);
    r = write_checkpoint(dir, layers, dt);
    if (r < 0) {
        fprintf(stderr, "cannot write the checkpoint: %s\n", sw_strerror(r));
        return 1;
    }
    r = sw_local_open(dir, 1, steps + 8, &lo, &l);
    if (r < 0) {
        fprintf(stderr, "cannot load: %s\n", sw_err_detail());
        return 1;
    }
    double read_gbs, memcpy_gbs;
    reps = 5;
    memcpy_gbs = bench_memory(&read_gbs);

    float *logits = sw_malloc(V * sizeof(float));
    int32_t prompt[8] = { 1, 2, 3, 4, 5, 6, 7, 8 }, id;
    sw_local_forward(l, &sw_ops_cpu, prompt, 8, 0, logits); /* warm-up: pages mapped in */
    double best = 1e30, total = 0;
    for (int s = 0; s < steps; s++) {
        id = sw_argmax(logits, V);
        double t0 = now();
        r = sw_local_forward(l, &sw_ops_cpu, &id, 1, 0, logits);
        double dtm = now() - t0;
        if (r < 0) {
            fprintf(stderr, "decode failed: %s\n", sw_err_detail());
            return 1;
        }
        total += dtm;
        if (dtm < best)
            best = dtm;
    }
    /* weights read per token: every block as loaded (codes + scales, norms), final norm, LM head */
    double bytes = (double)sw_local_bytes_per_token(l);
    double mean = total / steps;
    printf("threads %d, weights %.2f GB per token (stored %s, blocks %s)\n", sw_pool_threads(sw_pool_global()), bytes / 1e9, sw_dtype_name(dt), lo.quant == SW_QUANT_AUTO ? "as stored" : sw_quant_name(lo.quant));
    printf("decode mean          %6.2f tok/s  %6.2f GB/s weights  = %3.0f%% of memcpy, %3.0f%% of read-only\n",
           1.0 / mean, bytes / mean / 1e9, 100.0 * bytes / mean / 1e9 / memcpy_gbs, 100.0 * bytes / mean / 1e9 / read_gbs);
    printf("decode best          %6.2f tok/s  %6.2f GB/s weights  = %3.0f%% of memcpy, %3.0f%% of read-only\n",
           1.0 / best, bytes / best / 1e9, 100.0 * bytes / best / 1e9 / memcpy_gbs, 100.0 * bytes / best / 1e9 / read_gbs);
    sw_free(logits);
    sw_local_close(l);
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    return 0;
}
