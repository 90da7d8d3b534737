/*
 * bench-serve.c - what serving costs: a decode step through `swarmd serve` on loopback against
 * the same blocks run in this process, and aggregate decode throughput with 1, 4 and 16
 * concurrent sessions (continuous batching, pipeline/server.h).
 *
 *   bench-serve [--layers L] [--rounds N] [--quant nf4|int8] [--swarmd PATH] [--dir DIR]
 *
 * The model: L (default 4) Llama blocks of TinyLlama-1.1B shape (H 2048, I 5632, 32 heads, 4 KV
 * heads; 88 MB of bf16 weights each, random), V 1024, written as a real checkpoint to DIR
 * (default /dev/shm, else /tmp) and deleted at the end; --quant quantizes the blocks on load,
 * in-process and in the server alike (NF4 batches at most 4 one-token steps per pass on AVX2;
 * LLM.int8() with its default threshold does not batch: pipeline/server.h). Every figure is
 * printed next to its
 * baseline measured in the same run:
 *   1. in-process: the server's own code path without the server - one span per block,
 *      sw_span_forward per step: one session's decode step (median and best of N), then S = 4
 *      and 16 sessions stepping one after the other (no batching) and as one
 *      sw_span_forward_batch pass per block (what the executor does);
 *   2. served: a `swarmd serve --serve-layers 0:L` child on 127.0.0.1 (the build's swarmd, or
 *      --swarmd); the client sends hidden states (codec none, 8 KiB per
 *      token) and waits for the reply. An "info" call's round trip is the transport baseline.
 *      One session's step, each followed by one in-process step (interleaved, so both see the
 *      same machine): medians, served - in-process = RPC + codec + queueing overhead.
 *      S = 1, 4, 16 sessions in lockstep (every session's step sent, then every reply awaited,
 *      N rounds): aggregate tokens/s.
 * Not a test: the numbers depend on the machine and its neighbours.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <uv.h>

#include "bench_util.h"
#include "kernels/ops.h"
#include "kernels/tensor.h"
#include "p2p/identity.h"
#include "p2p/rpc.h"
#include "pipeline/codec.h"
#include "pipeline/model.h"
#include "swarmd.pb-c.h"
#include "util/error.h"

#define H 2048
#define I 5632
#define NH 32
#define NKV 4
#define HD 64
#define V 1024
#define HDR_MAX (1 << 20)
#define MAXS 16      /* sessions at most */
#define MAXLEN 256   /* positions per session */
#define WAIT_MS 120000

/* ======================================================================== the checkpoint */

static unsigned long long rng = 0x9e3779b97f4a7c15ull;

static float frand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return ((float)(rng >> 40) / 16777216.0f - 0.5f) * 0.1f;
}

/* Writes config.json and model.safetensors (bf16) of a `layers`-block Llama into dir. */
static int write_checkpoint(const char *dir, int layers)
{
    static const struct { const char *n; long long r, c; } m[] = {
        { "self_attn.q_proj.weight", NH * HD, H }, { "self_attn.k_proj.weight", NKV * HD, H },
        { "self_attn.v_proj.weight", NKV * HD, H }, { "self_attn.o_proj.weight", H, NH * HD },
        { "mlp.gate_proj.weight", I, H }, { "mlp.up_proj.weight", I, H },
        { "mlp.down_proj.weight", H, I }, { "input_layernorm.weight", H, 0 },
        { "post_attention_layernorm.weight", H, 0 },
    };
    size_t hl = 0, off = 0, nt = (size_t)layers * 9 + 3;
    char path[1024], (*names)[96] = calloc(nt, 96), *hdr = malloc(HDR_MAX);
    long long (*shape)[2] = calloc(nt, sizeof(*shape));
    uint16_t *row = malloc((size_t)I * 2);
    FILE *f;
    size_t k = 0;

    snprintf(names[k], 96, "model.embed_tokens.weight");
    shape[k][0] = V, shape[k++][1] = H;
    for (int l = 0; l < layers; l++)
        for (int j = 0; j < 9; j++) {
            snprintf(names[k], 96, "model.layers.%d.%s", l, m[j].n);
            shape[k][0] = m[j].r, shape[k++][1] = m[j].c;
        }
    snprintf(names[k], 96, "model.norm.weight");
    shape[k][0] = H, shape[k++][1] = 0;
    snprintf(names[k], 96, "lm_head.weight");
    shape[k][0] = V, shape[k++][1] = H;
    hl += (size_t)snprintf(hdr, HDR_MAX, "{");
    for (size_t i = 0; i < nt; i++) {
        size_t n = (size_t)shape[i][0] * (size_t)(shape[i][1] ? shape[i][1] : 1) * 2;
        if (shape[i][1])
            hl += (size_t)snprintf(hdr + hl, HDR_MAX - hl, "%s\"%s\":{\"dtype\":\"BF16\",\"shape\":"
                                   "[%lld,%lld],\"data_offsets\":[%zu,%zu]}", i ? "," : "",
                                   names[i], shape[i][0], shape[i][1], off, off + n);
        else
            hl += (size_t)snprintf(hdr + hl, HDR_MAX - hl, "%s\"%s\":{\"dtype\":\"BF16\",\"shape\":"
                                   "[%lld],\"data_offsets\":[%zu,%zu]}", i ? "," : "", names[i],
                                   shape[i][0], off, off + n);
        off += n;
    }
    hl += (size_t)snprintf(hdr + hl, HDR_MAX - hl, "}");
    while ((hl + 8) % 64)
        hdr[hl++] = ' ';
    snprintf(path, sizeof(path), "%s/config.json", dir);
    if (!(f = fopen(path, "w")))
        return -errno;
    fprintf(f, "{\"model_type\":\"llama\",\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":%d,"
               "\"hidden_size\":%d,\"intermediate_size\":%d,\"num_hidden_layers\":%d,"
               "\"num_attention_heads\":%d,\"num_key_value_heads\":%d,\"rms_norm_eps\":1e-5,"
               "\"max_position_embeddings\":2048,\"rope_theta\":10000.0,"
               "\"tie_word_embeddings\":false}\n", V, H, I, layers, NH, NKV);
    fclose(f);
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    if (!(f = fopen(path, "wb")))
        return -errno;
    uint64_t n64 = hl;
    fwrite(&n64, 8, 1, f);
    fwrite(hdr, 1, hl, f);
    for (size_t i = 0; i < nt; i++) {
        long long cols = shape[i][1] ? shape[i][1] : shape[i][0], rows = shape[i][1] ? shape[i][0] : 1;
        for (long long r = 0; r < rows; r++) {
            for (long long c = 0; c < cols; c++)
                row[c] = sw_f32_to_bf16(shape[i][1] ? frand() : 1.0f + frand());
            fwrite(row, 2, (size_t)cols, f);
        }
    }
    free(row);
    free(hdr);
    free(names);
    free(shape);
    return fclose(f) == 0 ? 0 : -errno;
}

/* ======================================================================== statistics */

static double median_of(double *t, int n)
{
    double med;

    best_of(t, n, &med);
    return med;
}

static void fill_x(float *x, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(((i + seed * 7919u) * 2654435761u >> 16) % 2001) * 1e-3f - 1.0f;
}

/* ======================================================================== in-process */

typedef struct {
    sw_model_t *m;
    sw_span_t *span[64];
    int L;
} local_t;

/* kv[s][block] for S sessions; x[s] (1, 1, H). */
static sw_kv_t *kvs[MAXS][64];
static float *xs[MAXS];

static int local_sessions(local_t *lc, int S)
{
    int r;

    for (int s = 0; s < S; s++)
        for (int i = 0; i < lc->L; i++) {
            sw_kv_free(kvs[s][i]);
            kvs[s][i] = NULL;
            if ((r = sw_kv_create(lc->span[i], 1, MAXLEN, &kvs[s][i])) < 0)
                return r;
        }
    return 0;
}

/* One decode step of session s alone through every block. */
static int local_step(local_t *lc, int s)
{
    int r;

    for (int i = 0; i < lc->L; i++)
        if ((r = sw_span_forward(lc->span[i], kvs[s][i], &sw_ops_cpu, xs[s], 1, 1)) < 0)
            return r;
    return 0;
}

/* The most one-token steps one pass may carry and still give each its bits alone, as the
 * server's executor decides (sw_span_batch_ok on every block); 1: no batching. */
static int local_group(local_t *lc, int S)
{
    int g = 1;

    for (int n = 2; n <= S; n++) {
        int ok = 1;
        for (int i = 0; i < lc->L && ok; i++)
            ok = sw_span_batch_ok(lc->span[i], &sw_ops_cpu, 1, 1, n);
        if (ok)
            g = n;
    }
    return g;
}

/* One decode step of sessions 0..S-1 in batched passes of up to g sessions (the executor's
 * grouping), one sw_span_forward_batch per block and pass; g 1: each alone. */
static int local_step_batch(local_t *lc, int S, int g, sw_fwd_batch_t *ws)
{
    sw_kv_t *k[MAXS];
    int T[MAXS], r;

    for (int s = 0; s < S; s++)
        T[s] = 1;
    for (int s0 = 0; s0 < S; s0 += g) {
        int n = S - s0 < g ? S - s0 : g;
        if (n == 1) {
            if ((r = local_step(lc, s0)) < 0)
                return r;
            continue;
        }
        for (int i = 0; i < lc->L; i++) {
            for (int s = 0; s < n; s++)
                k[s] = kvs[s0 + s][i];
            if ((r = sw_span_forward_batch(lc->span[i], k, &sw_ops_cpu, xs + s0, T, n, ws)) < 0)
                return r;
        }
    }
    return 0;
}

/* ======================================================================== the served side */

static uv_loop_t loop;
static sw_p2p_node_t *node;
static sw_p2p_conn_t *conn;
static pid_t child;

static void tick_cb(uv_timer_t *t) { (void)t; }

static int run_until(int (*pred)(void *), void *arg, uint64_t ms)
{
    uv_timer_t tick;
    uint64_t end = uv_hrtime() + ms * 1000000ull;

    uv_timer_init(&loop, &tick);
    uv_timer_start(&tick, tick_cb, 50, 50);
    while (!pred(arg) && uv_hrtime() < end)
        uv_run(&loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
    return pred(arg);
}

static int flag_set(void *arg) { return *(int *)arg != 0; }
static void set_flag(void *arg) { *(int *)arg = 1; }

/* Starts `swarmd serve` for blocks 0:L and returns its address (PEERID@HOST:PORT) in addr. */
static int start_server(const char *swarmd, const char *model, const char *tmp, int L,
                        const char *quant, char *addr, size_t cap)
{
    char layers[32], idp[600], logp[600], line[1024];
    int fds[2];
    size_t have = 0;
    uint64_t end = uv_hrtime() + 120ull * 1000000000ull;

    snprintf(layers, sizeof(layers), "0:%d", L);
    snprintf(idp, sizeof(idp), "%s/identity", tmp);
    snprintf(logp, sizeof(logp), "%s/server.log", tmp);
    if (pipe(fds) < 0)
        return -errno;
    if ((child = fork()) < 0)
        return -errno;
    if (child == 0) {
        int e = open(logp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(fds[1], 1);
        if (e >= 0)
            dup2(e, 2);
        close(fds[0]);
        execl(swarmd, swarmd, "--identity", idp, "serve", "--model", model, "--serve-layers",
              layers, "--listen", "127.0.0.1:0", "--throughput", "1", "--max-cache-tokens",
              "65536", "--quant", quant, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    while (uv_hrtime() < end) {
        struct pollfd p = { fds[0], POLLIN, 0 };
        char *nl, *at;
        ssize_t k;
        if (poll(&p, 1, 200) <= 0)
            continue;
        if ((k = read(fds[0], line + have, sizeof(line) - 1 - have)) <= 0)
            break;
        have += (size_t)k;
        line[have] = '\0';
        if (!(nl = strchr(line, '\n')))
            continue;
        *nl = '\0';
        close(fds[0]);
        if (!(at = strstr(line, " at ")))
            return sw_err(SW_EFORMAT, "unexpected first line '%s' (see %s)", line, logp);
        snprintf(addr, cap, "%s", at + 4);
        return 0;
    }
    close(fds[0]);
    return sw_err(-ETIMEDOUT, "swarmd serve printed no address (see %s)", logp);
}

typedef struct {
    sw_p2p_call_t *call;
    int nmsg, done, ended;
    char error[256];
} call_t;

static void c_msg(sw_p2p_call_t *k, sw_p2p_msg_t *m, void *arg)
{
    ((call_t *)arg)->nmsg++;
}

static void c_end(sw_p2p_call_t *k, int status, const char *error, void *arg)
{
    call_t *c = arg;

    c->ended = 1;
    snprintf(c->error, sizeof(c->error), "%s", error ? error : "");
    if (status < 0)
        sw_p2p_call_end(k, 0, NULL);
}

static void c_done(sw_p2p_call_t *k, int status, void *arg)
{
    call_t *c = arg;

    c->done = 1;
    c->call = NULL;
}

static const sw_p2p_call_cbs_t c_cbs = { c_msg, c_end, c_done, NULL };

typedef struct {
    call_t *c;
    int n, want;
} wait_t;

static int all_have(void *arg)
{
    wait_t *w = arg;

    for (int i = 0; i < w->n; i++)
        if (w->c[i].nmsg < w->want && !w->c[i].ended)
            return 0;
    return 1;
}

/* One step of session c: hidden states x (1, 1, H), codec none; first: opens blocks 0:L. */
static int send_step(call_t *c, int first, int L, const float *x, uint64_t id)
{
    Swarmd__InferenceRequest q = SWARMD__INFERENCE_REQUEST__INIT;
    sw_codec_opts_t o = { 0 };
    sw_tensor_header_t th;
    int64_t shape[3] = { 1, 1, H };
    uint8_t hb[SW_CODEC_MAX_HEADER], body[512], *p = sw_malloc((size_t)H * 4);
    size_t hl;
    int r;

    if (first) {
        q.end_block = (uint32_t)L;
        q.max_length = MAXLEN;
        q.batch = 1;
    }
    q.step_id = id;
    if ((r = sw_codec_encode(NULL, &o, x, 3, shape, &th, p, (size_t)H * 4)) < 0 ||
        (r = sw_codec_header_pack(&th, hb, sizeof(hb), &hl)) < 0) {
        sw_free(p);
        return r;
    }
    q.hidden.data = hb;
    q.hidden.len = hl;
    return sw_p2p_call_send(c->call, body, swarmd__inference_request__pack(&q, body), p,
                            (size_t)th.encoded_len, SW_P2P_SEND_TAKE);
}

/*
 * S sessions in lockstep for `rounds` rounds (after one warm-up round that opens them): per
 * round every step is sent, then every reply awaited. Returns the aggregate tokens/s (-1 on
 * failure); t_round (may be NULL) gets each round's time, and with lc, t_local each time of one
 * in-process step of local session 0 run right after the round (interleaved, so that both see
 * the same machine: the neighbours of a shared VM come and go).
 */
static double served_lockstep(int S, int L, int rounds, double *t_round, local_t *lc,
                              double *t_local)
{
    call_t c[MAXS];
    float *x = sw_malloc((size_t)H * sizeof(float));
    double t0 = 0.0, tok = -1.0;
    int r = 0;

    memset(c, 0, sizeof(c));
    fill_x(x, H, 3);
    for (int s = 0; s < S && r == 0; s++)
        r = sw_p2p_call_start(conn, "inference", 600000, &c_cbs, &c[s], &c[s].call);
    for (int rd = 0; rd <= rounds && r == 0; rd++) {
        wait_t w = { c, S, rd + 1 };
        double ts = now();
        if (rd == 1)
            t0 = ts;
        for (int s = 0; s < S && r == 0; s++)
            r = send_step(&c[s], rd == 0, L, x, (uint64_t)rd + 1);
        if (r == 0 && !run_until(all_have, &w, WAIT_MS))
            r = -ETIMEDOUT;
        for (int s = 0; s < S && r == 0; s++)
            if (c[s].ended)
                r = sw_err(SW_ESTATE, "session %d ended: %s", s, c[s].error);
        if (t_round && rd > 0)
            t_round[rd - 1] = now() - ts;
        if (lc && rd > 0 && r == 0) {
            ts = now();
            r = local_step(lc, 0);
            t_local[rd - 1] = now() - ts;
        }
    }
    if (lc && r == 0) /* the in-process steps are not in the served figure */
        for (int k = 0; k < rounds; k++)
            t0 += t_local[k];
    if (r == 0)
        tok = (double)S * rounds / (now() - t0);
    else
        fprintf(stderr, "bench-serve: %d sessions: %s\n", S, sw_strerror(r));
    for (int s = 0; s < S; s++) {
        if (c[s].call && !c[s].done)
            sw_p2p_call_end(c[s].call, 0, NULL);
        run_until(flag_set, &c[s].done, WAIT_MS);
    }
    sw_free(x);
    return tok;
}

static double info_rtt(void)
{
    double t[64];

    for (int i = 0; i < 64; i++) {
        call_t c = { 0 };
        double t0 = now();
        if (sw_p2p_call_start(conn, "info", 10000, &c_cbs, &c, &c.call) < 0 ||
            sw_p2p_call_send(c.call, "", 0, NULL, 0, 0) < 0 || sw_p2p_call_end(c.call, 0, NULL) < 0)
            return -1.0;
        run_until(flag_set, &c.done, WAIT_MS);
        t[i] = now() - t0;
    }
    return median_of(t, 64);
}

static void on_connected(sw_p2p_conn_t *c, int status, void *arg)
{
    conn = c;
    *(int *)arg = status < 0 ? status : 1;
}

static void kill_child(void)
{
    if (child > 0) {
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
        child = 0;
    }
}

/* ======================================================================== main */

static const int Ss[] = { 1, 4, 16 };

int main(int argc, char **argv)
{
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp", *swarmd = NULL;
    const char *quant = "none";
    sw_load_opts_t lo = SW_LOAD_OPTS_DEFAULT;
    char dir[512], swarmd_def[1024], addr[512], self[1024];
    int L = 4, rounds = 24, r, ok = 0;
    local_t lc = { 0 };
    sw_fwd_batch_t *ws = NULL;
    double t[256], tl[256], alone_med, alone_best, seq_tok[3], bat_tok[3], srv_tok[3], srv_med;
    double memcpy_gbs, read_gbs, wbytes;
    int group;

    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--layers") && i + 1 < argc)
            L = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
            rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--swarmd") && i + 1 < argc)
            swarmd = argv[++i];
        else if (!strcmp(argv[i], "--dir") && i + 1 < argc)
            base = argv[++i];
        else if (!strcmp(argv[i], "--quant") && i + 1 < argc &&
                 sw_quant_parse(argv[i + 1], &lo.quant) == 0)
            quant = argv[++i];
        else {
            fprintf(stderr, "usage: bench-serve [--layers L] [--rounds N] [--quant nf4|int8] "
                    "[--swarmd PATH] [--dir DIR]\n");
            return 2;
        }
    }
    if (L < 1 || L > 64 || rounds < 2 || rounds > 200) {
        fprintf(stderr, "bench-serve: --layers 1..64, --rounds 2..200\n");
        return 2;
    }
#ifdef BENCH_SWARMD
    if (!swarmd)
        swarmd = BENCH_SWARMD; /* the build's, from bench/meson.build */
#endif
    if (!swarmd) { /* bench/bench-serve -> ../swarmd */
        ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
        self[n > 0 ? n : 0] = '\0';
        snprintf(swarmd_def, sizeof(swarmd_def), "%s/../swarmd", dirname(self));
        swarmd = swarmd_def;
    }
    if (access(swarmd, X_OK) != 0) {
        fprintf(stderr, "bench-serve: no swarmd at %s; build it or pass --swarmd PATH\n", swarmd);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    atexit(kill_child);
    snprintf(dir, sizeof(dir), "%s/swarmd-bench-serve-XXXXXX", base);
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    printf("bench-serve: %d Llama blocks (H %d, I %d, %d heads, %d KV heads; %.0f MB bf16 each), "
           "blocks as %s, %d rounds, %d pool threads, simd %s\n", L, H, I, NH, NKV,
           (2.0 * H * NH * HD + 2.0 * H * NKV * HD + 3.0 * H * I) * 2 / 1e6,
           strcmp(quant, "none") ? quant : "stored", rounds, sw_pool_threads(sw_pool_global()),
           sw_cpu_simd_name());
    fflush(stdout);
    if ((r = write_checkpoint(dir, L)) < 0) {
        fprintf(stderr, "bench-serve: cannot write the checkpoint in %s: %s\n", dir, sw_strerror(r));
        goto out;
    }

    reps = 3;
    memcpy_gbs = bench_memory(&read_gbs);

    /* ---- 1. in-process ---- */
    lc.L = L;
    if ((r = sw_model_open(dir, &lc.m)) < 0)
        goto fail;
    for (int i = 0; i < L; i++)
        if ((r = sw_span_load(lc.m, i, i + 1, &lo, &lc.span[i])) < 0)
            goto fail;
    for (int s = 0; s < MAXS; s++) {
        xs[s] = sw_malloc((size_t)H * sizeof(float));
        fill_x(xs[s], H, (unsigned)s);
    }
    if ((r = sw_fwd_batch_create(sw_model_config(lc.m), MAXS, &ws)) < 0 ||
        (r = local_sessions(&lc, 1)) < 0 || (r = local_step(&lc, 0)) < 0) /* warm-up */
        goto fail;
    for (int k = 0; k < rounds; k++) {
        double t0 = now();
        if ((r = local_step(&lc, 0)) < 0)
            goto fail;
        t[k] = now() - t0;
    }
    alone_best = best_of(t, rounds, &alone_med);
    group = local_group(&lc, MAXS);
    wbytes = 0.0;
    for (int i = 0; i < L; i++)
        wbytes += (double)sw_span_block_bytes(lc.span[i], i);
    for (int si = 0; si < 3; si++) {
        int S = Ss[si];
        double t0;
        if ((r = local_sessions(&lc, S)) < 0)
            goto fail;
        for (int s = 0; s < S; s++)
            if ((r = local_step(&lc, s)) < 0) /* warm-up, and the caches hold one position */
                goto fail;
        t0 = now();
        for (int k = 0; k < rounds; k++)
            for (int s = 0; s < S; s++)
                if ((r = local_step(&lc, s)) < 0)
                    goto fail;
        seq_tok[si] = (double)S * rounds / (now() - t0);
        t0 = now();
        for (int k = 0; k < rounds; k++)
            if ((r = local_step_batch(&lc, S, group, ws)) < 0)
                goto fail;
        bat_tok[si] = (double)S * rounds / (now() - t0);
    }
    for (int s = 0; s < MAXS; s++)
        for (int i = 0; i < L; i++) {
            sw_kv_free(kvs[s][i]);
            kvs[s][i] = NULL;
        }

    /* ---- 2. served ---- */
    {
        sw_identity_t me;
        uint8_t seed[32];
        int closed = 0;
        if ((r = start_server(swarmd, dir, dir, L, quant, addr, sizeof(addr))) < 0)
            goto fail;
        uv_loop_init(&loop);
        memset(seed, 0x42, sizeof(seed));
        sw_identity_from_seed(seed, &me);
        if ((r = sw_p2p_node_new(&loop, &me, NULL, NULL, &node)) < 0 ||
            (r = sw_p2p_connect(node, addr, on_connected, &ok)) < 0)
            goto fail;
        if (!run_until(flag_set, &ok, WAIT_MS) || ok < 0) {
            r = sw_err(-ECONNREFUSED, "cannot connect to %s", addr);
            goto fail;
        }
        double rtt = info_rtt();
        if ((r = local_sessions(&lc, 1)) < 0 || (r = local_step(&lc, 0)) < 0)
            goto fail;
        /* one session: per-step times, interleaved with in-process steps */
        served_lockstep(1, L, rounds, t, &lc, tl);
        srv_med = median_of(t, rounds);
        alone_best = best_of(tl, rounds, &alone_med);
        for (int si = 0; si < 3; si++)
            srv_tok[si] = served_lockstep(Ss[si], L, rounds, NULL, NULL, NULL);

        printf("\none decode step (B 1, T 1) through %d blocks, median of %d [best]\n", L, rounds);
        printf("  in-process, sw_span_forward per block  %8.2f ms [%6.2f]   (%.2f GB of weights: "
               "%.1f GB/s, %.0f%% of memcpy, %.0f%% of read-only)\n", alone_med * 1e3,
               alone_best * 1e3, wbytes / 1e9, wbytes / alone_med / 1e9,
               100.0 * wbytes / alone_med / 1e9 / memcpy_gbs,
               100.0 * wbytes / alone_med / 1e9 / read_gbs);
        printf("  through swarmd serve on loopback       %8.2f ms [%6.2f]   (the two interleaved, "
               "step by step)\n", srv_med * 1e3, best_of(t, rounds, &(double){ 0 }) * 1e3);
        printf("  difference: RPC + codec + queueing     %8.2f ms   (an empty \"info\" call's "
               "round trip: %.3f ms)\n", (srv_med - alone_med) * 1e3, rtt * 1e3);
        printf("\naggregate decode tokens/s, S sessions stepping together for %d rounds\n", rounds);
        printf("  %-9s %18s %18s %18s %12s\n", "sessions", "in-process alone", "in-process batch",
               "served", "served/alone");
        for (int si = 0; si < 3; si++)
            printf("  %-9d %18.1f %18.1f %18.1f %11.2fx\n", Ss[si], seq_tok[si], bat_tok[si],
                   srv_tok[si], srv_tok[si] / seq_tok[si]);
        printf("  (alone: each session's step by sw_span_forward in turn; batch: "
               "sw_span_forward_batch passes of up to %d sessions, as the server groups them)\n",
               group);
        sw_p2p_node_close(node, set_flag, &closed);
        run_until(flag_set, &closed, WAIT_MS);
        uv_run(&loop, UV_RUN_DEFAULT);
        uv_loop_close(&loop);
    }
    kill(child, SIGTERM);
    waitpid(child, NULL, 0);
    child = 0;
    r = 0;
    goto out;
fail:
    fprintf(stderr, "bench-serve: %s: %s\n", sw_strerror(r), sw_err_detail());
out:
    kill_child();
    for (int s = 0; s < MAXS; s++)
        for (int i = 0; i < L; i++)
            sw_kv_free(kvs[s][i]);
    sw_fwd_batch_free(ws);
    for (int i = 0; i < L; i++)
        sw_span_free(lc.span[i]);
    sw_model_close(lc.m);
    for (int s = 0; s < MAXS; s++)
        sw_free(xs[s]);
    {
        char cmd[600];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        if (system(cmd) != 0)
            fprintf(stderr, "bench-serve: could not remove %s\n", dir);
    }
    return r < 0 ? 1 : 0;
}
