/*
 * bench-generate.c - distributed generation against the same model run in-process (issue #7).
 *
 * For each model and each link condition this starts a real swarm on loopback (one
 * `swarmd dht serve --new-swarm` bootstrap node, three `swarmd serve` processes holding the
 * model's blocks split three ways, each behind its own `linkemu` proxy unless the link is
 * "direct"), then drives the client library (pipeline/swarm_client.h) the way `swarmd generate`
 * does and times every call exactly:
 *
 *   - prefill: one step of the P-token prompt in a fresh session (median of --prefill-reps
 *     sessions, after one warm-up session that is not counted);
 *   - decode, batch 1: W warm-up steps, then N timed steps of one token each (greedy, the id of
 *     each step fed to the next), reported as the median ms/step and steps/s;
 *   - the baseline: the same measurement with a second client in local mode (every block in
 *     this process through the same session code: `swarmd generate --local`), interleaved with
 *     the swarm client step by step (local prefill, swarm prefill, local step, swarm step, ...)
 *     so that both see the same load of the machine;
 *   - the link's own round trip: a plain TCP echo of one decode step's payload through a linkemu
 *     proxy with the same settings (no swarmd code on the path); it shows what the emulator adds
 *     to the nominal RTT (its timers have millisecond granularity);
 *   - per-hop overhead = (swarm ms/step - local ms/step - hops x RTT) / hops, with RTT the
 *     nominal one and the echo's, and swarm - local the median over steps of the difference
 *     between each swarm step and the local step run just before it (robust to bursts of load), next to the RTT bound of our client-relayed chain, hops x RTT
 *     (client -> server 1 -> client -> server 2 ...: one round trip per hop), and the bound of a
 *     chain where each server pushes to the next (Petals' design), (hops + 1) x RTT / 2;
 *   - exactness: with --compress none the greedy ids must equal the local ones (a mismatch is
 *     printed and makes the exit status 1); with bf16 the number of equal ids is shown.
 *
 * Models: the llama-gqa-llama3 fixture (4 blocks, H 128: compute is negligible, the overhead
 * shows) and a bigger Llama with random bf16 weights written by this program with the
 * safetensors writer (TinyLlama widths, H 2048, I 5632, 32/4 heads, V 8192, --big-layers blocks,
 * default 3: ~330 MB), whose compute is visible. Link conditions (--links, comma-separated):
 * "direct" (no proxy), or "D/R" = linkemu with D ms one-way delay (RTT 2D) and R Mbit/s each way.
 *
 *   bench-generate [--links direct,0/100,10/100,50/100] [--steps N] [--warmup W] [--prompt P]
 *                  [--prefill-reps R] [--big-layers L] [--no-small] [--no-big] [--model DIR]
 *                  [--pause-ms MS] [--swarmd PATH] [--linkemu PATH] [--dir DIR] [-v]
 *
 * --pause-ms sleeps before every timed decode step (local and swarm), a diagnostic: it shows what
 * an idle wait costs the compute that follows it, which every server of a chain pays once per
 * step while the local run pays it once for all blocks.
 *
 * Each row shows the CPU that processes other than this benchmark and its children used while it
 * ran (from /proc/stat and /proc/PID/stat): other work on a small machine moves these figures, so
 * compare rows of one run and prefer runs where that column is near 0. Every wait on a child process is
 * bounded; all children are killed on exit. The checkpoint and logs go to a temporary directory
 * under --dir (default /dev/shm, else /tmp), removed at the end (logs are kept on failure).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pipeline/local.h"
#include "pipeline/safetensors.h"
#include "pipeline/swarm_client.h"
#include "util/alloc.h"
#include "util/error.h"

#ifndef BENCH_SWARMD
#define BENCH_SWARMD "swarmd"
#endif
#ifndef BENCH_LINKEMU
#define BENCH_LINKEMU "linkemu"
#endif
#ifndef BENCH_FIXTURE
#define BENCH_FIXTURE "tests/fixtures/llama-gqa-llama3"
#endif

#define HOPS 3
#define MAX_CHILDREN 32
#define MAX_LINKS 8
#define MAX_STEPS 1024
#define MAX_PROMPT 512
#define MAX_REPS 16

/* ======================================================================== options, timing */

typedef struct {
    int direct;      /* no proxy */
    double delay_ms; /* one way */
    double rate_mbit; /* 0: no cap */
    char label[64];
} link_t;

static struct {
    link_t links[MAX_LINKS];
    int nlinks;
    int steps, warmup, prompt, prefill_reps, big_layers, small, big, verbose, pause_ms;
    const char *model, *swarmd, *linkemu, *base;
} O = {
    .steps = 32, .warmup = 4, .prompt = 32, .prefill_reps = 3, .big_layers = 3, .small = 1,
    .big = 1, .model = BENCH_FIXTURE, .swarmd = BENCH_SWARMD, .linkemu = BENCH_LINKEMU,
};

static char tmpdir[512];
static int keep_tmp;

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

    nanosleep(&ts, NULL);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

/* Sorts t[0..n) in place and returns the q-quantile (nearest rank; q = 0.5: the median). */
static double quantile(double *t, int n, double q)
{
    int i;

    qsort(t, (size_t)n, sizeof(double), cmp_double);
    i = (int)(q * (n - 1) + 0.5);
    return t[i < 0 ? 0 : i >= n ? n - 1 : i];
}

/* The 1-minute load average, or -1. */
static double loadavg(void)
{
    FILE *f = fopen("/proc/loadavg", "r");
    double l = -1;

    if (f) {
        if (fscanf(f, "%lf", &l) != 1)
            l = -1;
        fclose(f);
    }
    return l;
}

/* Busy CPU time of the whole machine so far, in clock ticks (/proc/stat), or -1. */
static long long machine_busy_ticks(void)
{
    FILE *f = fopen("/proc/stat", "r");
    long long v[8] = { 0 }, busy = -1;

    if (f) {
        if (fscanf(f, "cpu %lld %lld %lld %lld %lld %lld %lld %lld", &v[0], &v[1], &v[2], &v[3],
                   &v[4], &v[5], &v[6], &v[7]) == 8)
            busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]; /* all but idle and iowait */
        fclose(f);
    }
    return busy;
}

/* CPU time (user + system, clock ticks) of process pid so far (0: this process), or 0. */
static long long proc_ticks(pid_t pid)
{
    char path[64], buf[1024], *p;
    unsigned long long ut = 0, st = 0;
    FILE *f;
    size_t n;

    snprintf(path, sizeof(path), pid ? "/proc/%d/stat" : "/proc/self/stat", (int)pid);
    if (!(f = fopen(path, "r")))
        return 0;
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* fields after the command (which may hold spaces) in parentheses: state is field 3,
     * utime and stime are fields 14 and 15 */
    if (!(p = strrchr(buf, ')')) ||
        sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return 0;
    return (long long)(ut + st);
}

/* ======================================================================== child processes */

static pid_t children[MAX_CHILDREN];
static int nchildren;

static void kill_all(void)
{
    for (int i = 0; i < nchildren; i++)
        if (children[i] > 0)
            kill(children[i], SIGKILL);
    for (int i = 0; i < nchildren; i++)
        if (children[i] > 0)
            waitpid(children[i], NULL, 0);
    nchildren = 0;
}

/* CPU ticks used so far by this process and the children alive now (servers, proxies). */
static long long our_ticks(void)
{
    long long t = proc_ticks(0);

    for (int i = 0; i < nchildren; i++)
        t += proc_ticks(children[i]);
    return t;
}

static void rm_tmp(void)
{
    char cmd[600];

    if (!tmpdir[0] || keep_tmp)
        return;
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "bench-generate: could not remove %s\n", tmpdir);
}

static void at_exit(void)
{
    kill_all();
    rm_tmp();
}

static void on_signal(int sig)
{
    /* only async-signal-safe calls here: the children die with us, the directory stays */
    for (int i = 0; i < nchildren; i++)
        if (children[i] > 0)
            kill(children[i], SIGKILL);
    _exit(128 + sig);
}

/* Prints the last lines of a log file to stderr (for failures). */
static void show_tail(const char *path)
{
    char cmd[700];

    fprintf(stderr, "  last lines of %s:\n", path);
    snprintf(cmd, sizeof(cmd), "tail -n 12 '%s' | sed 's/^/  | /' >&2", path);
    if (system(cmd) != 0)
        fprintf(stderr, "  (cannot read it)\n");
}

static _Noreturn void die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static _Noreturn void die(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fprintf(stderr, "bench-generate: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    keep_tmp = 1;
    if (tmpdir[0])
        fprintf(stderr, "bench-generate: logs kept in %s\n", tmpdir);
    exit(1);
}

/* Starts argv[0] with stdout to out_path and stderr to err_path (either may be the same file);
 * returns the child's pid, which is killed at exit unless stopped with stop_child. */
static pid_t spawn(char *const argv[], const char *out_path, const char *err_path)
{
    pid_t pid;

    if (nchildren == MAX_CHILDREN)
        die("too many child processes");
    pid = fork();
    if (pid < 0)
        die("fork: %s", strerror(errno));
    if (pid == 0) {
        signal(SIGINT, SIG_DFL); /* not the parent's handlers until execv replaces them */
        signal(SIGTERM, SIG_DFL);
        int fo = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int fe = strcmp(out_path, err_path) ? open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644) : fo;
        if (fo < 0 || fe < 0 || dup2(fo, 1) < 0 || dup2(fe, 2) < 0)
            _exit(126);
        execv(argv[0], argv);
        fprintf(stderr, "cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    children[nchildren++] = pid;
    return pid;
}

/* SIGTERM, then SIGKILL after 5 s; reaps the child. */
static void stop_child(pid_t pid)
{
    int i, st;

    for (i = 0; i < nchildren && children[i] != pid; i++)
        ;
    if (i == nchildren)
        return;
    kill(pid, SIGTERM);
    for (int k = 0; k < 250; k++) {
        if (waitpid(pid, &st, WNOHANG) == pid)
            goto reaped;
        sleep_ms(20);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
reaped:
    children[i] = children[--nchildren];
}

/*
 * Waits up to timeout_s for a line starting with prefix in the file at path, written by child
 * pid; copies the rest of the line (without newline) to out. Returns 0, or -1 if the child
 * exited or the time ran out (after printing why and the file's tail).
 */
static int wait_line(pid_t pid, const char *path, const char *prefix, double timeout_s, char *out,
                     size_t cap)
{
    double end = now_s() + timeout_s;
    char line[1024];
    size_t pl = strlen(prefix);
    int st;

    for (;;) {
        FILE *f = fopen(path, "r");
        if (f) {
            while (fgets(line, sizeof(line), f))
                if (strncmp(line, prefix, pl) == 0) {
                    line[strcspn(line, "\r\n")] = '\0';
                    snprintf(out, cap, "%s", line + pl);
                    fclose(f);
                    return 0;
                }
            fclose(f);
        }
        if (waitpid(pid, &st, WNOHANG) == pid) {
            for (int i = 0; i < nchildren; i++)
                if (children[i] == pid)
                    children[i] = children[--nchildren];
            fprintf(stderr, "bench-generate: the process writing %s exited (status %d) before "
                    "printing \"%s\"\n", path, WIFEXITED(st) ? WEXITSTATUS(st) : -1, prefix);
            show_tail(path);
            return -1;
        }
        if (now_s() > end) {
            fprintf(stderr, "bench-generate: no \"%s\" in %s within %.0f s\n", prefix, path, timeout_s);
            show_tail(path);
            return -1;
        }
        sleep_ms(20);
    }
}

/* A TCP port on 127.0.0.1 that nothing listens on right now (the caller binds it next). */
static int free_port(void)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t al = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;

    if (fd < 0)
        return -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &al) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

/* ======================================================================== the bigger model */

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static float frand(void) /* uniform in [-0.05, 0.05) */
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return ((float)(rng >> 40) / 16777216.0f - 0.5f) * 0.1f;
}

static uint16_t to_bf16(float f) /* round to nearest even; inputs are finite */
{
    uint32_t u;

    memcpy(&u, &f, 4);
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

#define BIG_H 2048
#define BIG_I 5632
#define BIG_NH 32
#define BIG_NKV 4
#define BIG_HD 64
#define BIG_V 8192

/*
 * Writes config.json and model.safetensors of a Llama with TinyLlama-1.1B widths, `layers`
 * blocks and random bf16 weights (matrices uniform in +-0.05, norms 1 +- 0.05) into dir.
 * Returns 0 or a negative error code with sw_err_detail set.
 */
static int write_big_model(const char *dir, int layers)
{
    static const struct { const char *n; int64_t r, c; } blk[] = {
        { "self_attn.q_proj.weight", BIG_NH * BIG_HD, BIG_H },
        { "self_attn.k_proj.weight", BIG_NKV * BIG_HD, BIG_H },
        { "self_attn.v_proj.weight", BIG_NKV * BIG_HD, BIG_H },
        { "self_attn.o_proj.weight", BIG_H, BIG_NH * BIG_HD },
        { "mlp.gate_proj.weight", BIG_I, BIG_H },
        { "mlp.up_proj.weight", BIG_I, BIG_H },
        { "mlp.down_proj.weight", BIG_H, BIG_I },
        { "input_layernorm.weight", BIG_H, 0 },
        { "post_attention_layernorm.weight", BIG_H, 0 },
    };
    sw_st_writer_t *w = NULL;
    uint16_t *buf = NULL, *p;
    size_t total = 2 * (size_t)BIG_V * BIG_H + BIG_H;
    char path[700], name[128];
    FILE *f;
    int r;

    for (size_t j = 0; j < sizeof(blk) / sizeof(blk[0]); j++)
        total += (size_t)layers * (size_t)blk[j].r * (size_t)(blk[j].c ? blk[j].c : 1);
    if (!(buf = sw_malloc(total * sizeof(uint16_t))))
        return sw_err(-ENOMEM, "no memory for the %zu MB of the random model", total * 2 >> 20);
    if ((r = sw_st_writer_new(&w)) < 0)
        goto out;
    p = buf;
#define ADD(nm, rows, cols, norm)                                                                   \
    do {                                                                                            \
        int64_t shp[2] = { (rows), (cols) };                                                        \
        size_t n_ = (size_t)(rows) * (size_t)((cols) ? (cols) : 1);                                 \
        for (size_t i_ = 0; i_ < n_; i_++)                                                          \
            p[i_] = to_bf16((norm) ? 1.0f + frand() : frand());                                    \
        if ((r = sw_st_writer_add(w, (nm), SW_ST_BF16, (cols) ? 2 : 1, shp, p, n_ * 2)) < 0)        \
            goto out;                                                                               \
        p += n_;                                                                                    \
    } while (0)
    ADD("model.embed_tokens.weight", BIG_V, BIG_H, 0);
    for (int l = 0; l < layers; l++)
        for (size_t j = 0; j < sizeof(blk) / sizeof(blk[0]); j++) {
            snprintf(name, sizeof(name), "model.layers.%d.%s", l, blk[j].n);
            ADD(name, blk[j].r, blk[j].c, blk[j].c == 0);
        }
    ADD("model.norm.weight", BIG_H, 0, 1);
    ADD("lm_head.weight", BIG_V, BIG_H, 0);
#undef ADD
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    if ((r = sw_st_writer_save(w, path)) < 0)
        goto out;
    snprintf(path, sizeof(path), "%s/config.json", dir);
    if (!(f = fopen(path, "w"))) {
        r = sw_err(-errno, "cannot write %s: %s", path, strerror(errno));
        goto out;
    }
    fprintf(f, "{\"model_type\":\"llama\",\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":%d,"
               "\"hidden_size\":%d,\"intermediate_size\":%d,\"num_hidden_layers\":%d,"
               "\"num_attention_heads\":%d,\"num_key_value_heads\":%d,\"head_dim\":%d,"
               "\"rms_norm_eps\":1e-5,\"max_position_embeddings\":2048,\"rope_theta\":10000.0,"
               "\"tie_word_embeddings\":false,\"torch_dtype\":\"bfloat16\"}\n",
            BIG_V, BIG_H, BIG_I, layers, BIG_NH, BIG_NKV, BIG_HD);
    r = fclose(f) == 0 ? 0 : sw_err(-EIO, "cannot write %s", path);
out:
    sw_st_writer_free(w);
    sw_free(buf);
    return r;
}

/* ======================================================================== measuring */

typedef struct {
    double prefill_ms;   /* median over the counted sessions */
    double step_ms;      /* median decode step */
    double step_p10, step_p90;
    double diff_ms;      /* swarm only: median over steps of (swarm step - the local step beside it) */
    int32_t ids[MAX_STEPS + 1]; /* greedy ids: the prefill's, then each decode step's */
    int nids;
    int hops;            /* in the route the client reported (local: 0) */
    int failovers;       /* failover events during the measurement (spoil it) */
    char route[400];
} result_t;

/* One client being measured: local mode or through the swarm. */
typedef struct {
    swarm_client_t *c;
    swarm_session_t *s;
    float *logits;
    int V, local;
    int32_t id;               /* the next id to feed */
    double pre[MAX_REPS], step[MAX_STEPS];
    result_t *res;
    char what[128];
} runner_t;

static void on_event(void *arg, int kind, const char *text)
{
    runner_t *u = arg;

    if (kind == SWARM_EVENT_ROUTE && u->res) {
        const char *p = text;
        int n = 0;
        while ((p = strstr(p, " via ")) != NULL) {
            n++;
            p += 5;
        }
        u->res->hops = n;
        snprintf(u->res->route, sizeof(u->res->route), "%s", text);
    } else if (kind == SWARM_EVENT_FAILOVER && u->res) {
        u->res->failovers++;
    }
    if (O.verbose) /* failovers are also logged by the client library itself */
        fprintf(stderr, "  [%s] %s\n", u->what, text);
}

/* Opens u's client with co (its events go to u). Exits the program on failure. */
static void runner_open(runner_t *u, swarm_client_opts_t *co, const char *what)
{
    memset(u, 0, sizeof(*u));
    snprintf(u->what, sizeof(u->what), "%s", what);
    u->local = co->local;
    co->on_event = on_event;
    co->event_arg = u;
    co->max_length = O.prompt + O.warmup + O.steps + 8;
    if (swarm_client_open(co, &u->c) < 0)
        die("%s: cannot open the client: %s", what, swarm_client_error());
    u->V = swarm_client_vocab_size(u->c);
    if (!(u->logits = sw_malloc((size_t)u->V * sizeof(float))))
        die("out of memory");
}

static void runner_close(runner_t *u)
{
    swarm_session_close(u->s);
    swarm_client_close(u->c);
    sw_free(u->logits);
    memset(u, 0, sizeof(*u));
}

/* A new session (the old one closed); a swarm route must have HOPS hops. */
static void runner_session(runner_t *u)
{
    swarm_session_close(u->s);
    u->s = NULL;
    u->res->hops = 0;
    if (swarm_session_open(u->c, 0, &u->s) < 0)
        die("%s: cannot open a session: %s", u->what, swarm_client_error());
    if (!u->local && u->res->hops != HOPS)
        die("%s: the route has %d hops, expected %d: %s", u->what, u->res->hops, HOPS, u->res->route);
}

/* Runs T ids (prompt, or u->id when T is 0) through u's session; returns the ms it took and
 * sets u->id to the greedy next id, which is also appended to the result's ids. */
static double runner_step(runner_t *u, const int32_t *prompt, int T)
{
    double t0 = now_s(), ms;

    if (swarm_session_step_tokens(u->s, T ? prompt : &u->id, T ? T : 1, u->logits) < 0)
        die("%s: %s step at position %d failed: %s", u->what, T ? "prefill" : "decode",
            swarm_session_position(u->s), swarm_client_error());
    ms = (now_s() - t0) * 1e3;
    u->id = sw_argmax(u->logits, u->V);
    if (u->res->nids <= MAX_STEPS)
        u->res->ids[u->res->nids++] = u->id;
    return ms;
}

static void runner_stats(runner_t *u)
{
    result_t *res = u->res;

    res->prefill_ms = O.prefill_reps ? quantile(u->pre, O.prefill_reps, 0.5) : NAN;
    res->step_p10 = quantile(u->step, O.steps, 0.1);
    res->step_p90 = quantile(u->step, O.steps, 0.9);
    res->step_ms = quantile(u->step, O.steps, 0.5);
}

/*
 * Measures prefill and decode (as the file comment says) of the local runner lu and the swarm
 * runner su together, alternating between them at every step so that both see the same load of
 * the machine: prefill sessions in pairs, then decode steps in pairs. Fills lr and sr.
 */
static void measure_pair(runner_t *lu, result_t *lr, runner_t *su, result_t *sr)
{
    runner_t *u[2] = { lu, su };
    int32_t prompt[MAX_PROMPT];
    int V = lu->V < su->V ? lu->V : su->V;

    memset(lr, 0, sizeof(*lr));
    memset(sr, 0, sizeof(*sr));
    lu->res = lr;
    su->res = sr;
    for (int i = 0; i < O.prompt; i++) /* a fixed prompt of ids valid in any vocabulary >= 64 */
        prompt[i] = 1 + (i * 37 + 11) % (V < 64 ? V - 1 : 63);
    /* session 0 is a warm-up (first use of the weights, connections, the swarm read); sessions
     * 1..reps time the prefill; the last one goes on to decode */
    for (int k = 0; k <= O.prefill_reps; k++)
        for (int j = 0; j < 2; j++) {
            double ms;
            runner_session(u[j]);
            u[j]->res->nids = 0;
            ms = runner_step(u[j], prompt, O.prompt);
            if (k > 0)
                u[j]->pre[k - 1] = ms;
        }
    sr->failovers = 0; /* from here on, a failover spoils the figures */
    for (int k = 0; k < O.warmup + O.steps; k++)
        for (int j = 0; j < 2; j++) {
            double ms;
            if (O.pause_ms)
                sleep_ms(O.pause_ms);
            ms = runner_step(u[j], NULL, 0);
            if (k >= O.warmup)
                u[j]->step[k - O.warmup] = ms;
        }
    {
        double d[MAX_STEPS];
        for (int k = 0; k < O.steps; k++)
            d[k] = su->step[k] - lu->step[k];
        sr->diff_ms = quantile(d, O.steps, 0.5);
    }
    for (int j = 0; j < 2; j++) {
        swarm_session_close(u[j]->s);
        u[j]->s = NULL;
        runner_stats(u[j]);
        u[j]->res = NULL;
    }
}

/* ======================================================================== the swarm */

static char boot_addr[256];
static pid_t boot_pid;

static void start_bootstrap(void)
{
    char id[600], log[600];
    char *argv[] = { (char *)O.swarmd, "--identity", id, "dht", "serve", "--new-swarm", "--listen",
                     "127.0.0.1:0", "--no-reachability-check", NULL };

    snprintf(id, sizeof(id), "%s/boot.id", tmpdir);
    snprintf(log, sizeof(log), "%s/boot.log", tmpdir);
    boot_pid = spawn(argv, log, log);
    if (wait_line(boot_pid, log, "address: ", 20, boot_addr, sizeof(boot_addr)) < 0)
        die("the bootstrap node did not start (is %s the swarmd binary? pass --swarmd PATH)", O.swarmd);
}

typedef struct {
    pid_t server[HOPS], proxy[HOPS];
    int nserver, nproxy;
} swarm_t;

/*
 * Starts HOPS servers of model dir under the swarm name `name`, blocks split three ways
 * ([0, a), [a, b), [b, L)), each behind a linkemu proxy with the link's delay and rate unless the
 * link is direct, and waits until each prints that it serves. Exits the program on failure.
 */
static void start_swarm(swarm_t *sw, const char *dir, int L, const char *name, const link_t *ln)
{
    int cut[HOPS + 1];

    memset(sw, 0, sizeof(*sw));
    cut[0] = 0;
    for (int i = 0; i < HOPS; i++) /* the remainder goes to the first spans: 4 -> 2, 1, 1 */
        cut[i + 1] = cut[i] + L / HOPS + (i < L % HOPS);
    for (int i = 0; i < HOPS; i++) {
        char span[32], listen[64], announce[64], idp[600], log[600], pub[32], out[256];
        char portf[600], emuf[600], to[64], delay[32], rate[32], lport[64];
        int port = -1;
        for (int attempt = 0; attempt < 3; attempt++) {
            port = free_port();
            if (port < 0)
                die("cannot find a free port on 127.0.0.1");
            snprintf(listen, sizeof(listen), "127.0.0.1:%d", port);
            snprintf(announce, sizeof(announce), "127.0.0.1:%d", port);
            if (!ln->direct) {
                char *pargv[12];
                int n = 0;
                snprintf(portf, sizeof(portf), "%s/%s-%d-%d.port", tmpdir, name, i, attempt);
                snprintf(emuf, sizeof(emuf), "%s/%s-%d-%d.emu", tmpdir, name, i, attempt);
                snprintf(to, sizeof(to), "127.0.0.1:%d", port);
                snprintf(delay, sizeof(delay), "%g", ln->delay_ms);
                snprintf(rate, sizeof(rate), "%g", ln->rate_mbit);
                pargv[n++] = (char *)O.linkemu;
                pargv[n++] = "--listen";
                pargv[n++] = "127.0.0.1:0";
                pargv[n++] = "--to";
                pargv[n++] = to;
                pargv[n++] = "--delay-ms";
                pargv[n++] = delay;
                if (ln->rate_mbit > 0) {
                    pargv[n++] = "--rate-mbit";
                    pargv[n++] = rate;
                }
                pargv[n] = NULL;
                sw->proxy[sw->nproxy] = spawn(pargv, portf, emuf);
                /* linkemu prints its port as one line; wait for any line */
                if (wait_line(sw->proxy[sw->nproxy], portf, "", 10, lport, sizeof(lport)) < 0)
                    die("linkemu did not start (pass --linkemu PATH)");
                sw->nproxy++;
                if (atoi(lport) <= 0 || atoi(lport) > 65535)
                    die("linkemu printed '%s', not a port", lport);
                snprintf(announce, sizeof(announce), "127.0.0.1:%d", atoi(lport));
            }
            snprintf(span, sizeof(span), "%d:%d", cut[i], cut[i + 1]);
            snprintf(idp, sizeof(idp), "%s/%s-%d.id", tmpdir, name, i);
            snprintf(log, sizeof(log), "%s/%s-%d-%d.log", tmpdir, name, i, attempt);
            snprintf(pub, sizeof(pub), "s%d", i);
            {
                char *argv[] = { (char *)O.swarmd, "--identity", idp, "serve", "--model", (char *)dir,
                                 "--serve-layers", span, "--initial-peers", boot_addr,
                                 "--model-name", (char *)name, "--public-name", pub,
                                 "--max-cache-tokens", "4096", "--throughput", "1000",
                                 "--listen", listen, "--announce", announce, NULL };
                sw->server[i] = spawn(argv, log, log);
            }
            if (wait_line(sw->server[i], log, "serving blocks", 60, out, sizeof(out)) == 0)
                break;
            /* the port may have been taken between the probe and the server's bind: retry */
            if (!ln->direct)
                stop_child(sw->proxy[--sw->nproxy]);
            if (attempt == 2)
                die("server %d (blocks %s) did not start", i, span);
        }
        sw->nserver++;
    }
}

static void stop_swarm(swarm_t *sw)
{
    for (int i = 0; i < sw->nserver; i++)
        stop_child(sw->server[i]);
    for (int i = 0; i < sw->nproxy; i++)
        stop_child(sw->proxy[i]);
    sw->nserver = sw->nproxy = 0;
}

/* ======================================================================== the link alone */

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int read_all(int fd, char *p, size_t n)
{
    while (n > 0) {
        ssize_t r = read(fd, p, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/*
 * The baseline for the link: the median round trip of a `bytes`-byte message echoed by a plain
 * TCP server (a child process) through a linkemu proxy with the link's settings (or directly for
 * a direct link), over n trips after 2 warm-up trips. It is what the emulated link itself costs,
 * including the emulator's timer granularity, with no swarmd code on the path. Exits on failure.
 */
static double link_rtt_ms(const link_t *ln, size_t bytes, int n)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t al = sizeof(a);
    struct timeval tv = { 10, 0 };
    double t[MAX_STEPS], med;
    pid_t echo, proxy = 0;
    int lfd, fd, one = 1, port;
    char *buf = sw_malloc(bytes);

    if (!buf || n > MAX_STEPS)
        die("out of memory");
    memset(buf, 0x5a, bytes);
    lfd = socket(AF_INET, SOCK_STREAM, 0);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(lfd, 1) < 0 ||
        getsockname(lfd, (struct sockaddr *)&a, &al) < 0)
        die("echo server: %s", strerror(errno));
    port = ntohs(a.sin_port);
    if ((echo = fork()) < 0)
        die("fork: %s", strerror(errno));
    if (echo == 0) { /* the echo server: one connection, echo until EOF; _exit (no atexit) */
        char b[65536];
        signal(SIGINT, SIG_DFL); /* not the parent's handlers: they kill the parent's children */
        signal(SIGTERM, SIG_DFL);
        int c = accept(lfd, NULL, NULL);
        ssize_t r;
        if (c < 0)
            _exit(1);
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        while ((r = read(c, b, sizeof(b))) > 0)
            if (write_all(c, b, (size_t)r) < 0)
                _exit(1);
        _exit(0);
    }
    if (nchildren == MAX_CHILDREN) {
        kill(echo, SIGKILL);
        die("too many child processes");
    }
    children[nchildren++] = echo;
    close(lfd);
    if (!ln->direct) {
        char portf[600], emuf[600], to[64], delay[32], rate[32], lport[64];
        char *pargv[] = { (char *)O.linkemu, "--listen", "127.0.0.1:0", "--to", to, "--delay-ms",
                          delay, ln->rate_mbit > 0 ? "--rate-mbit" : NULL, rate, NULL };
        static int seq; /* a fresh file each time: wait_line must not read an old port */
        snprintf(portf, sizeof(portf), "%s/echo-%d.port", tmpdir, seq);
        snprintf(emuf, sizeof(emuf), "%s/echo-%d.emu", tmpdir, seq++);
        snprintf(to, sizeof(to), "127.0.0.1:%d", port);
        snprintf(delay, sizeof(delay), "%g", ln->delay_ms);
        snprintf(rate, sizeof(rate), "%g", ln->rate_mbit);
        proxy = spawn(pargv, portf, emuf);
        if (wait_line(proxy, portf, "", 10, lport, sizeof(lport)) < 0 || atoi(lport) <= 0)
            die("linkemu did not start (pass --linkemu PATH)");
        a.sin_port = htons((uint16_t)atoi(lport));
    }
    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0)
        die("cannot connect to the echo server: %s", strerror(errno));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    for (int k = -2; k < n; k++) {
        double t0 = now_s();
        if (write_all(fd, buf, bytes) < 0 || read_all(fd, buf, bytes) < 0)
            die("the echo through %s failed: %s", ln->label, strerror(errno));
        if (k >= 0)
            t[k] = (now_s() - t0) * 1e3;
    }
    close(fd);
    stop_child(echo);
    if (proxy)
        stop_child(proxy);
    sw_free(buf);
    med = quantile(t, n, 0.5);
    return med;
}

/* ======================================================================== the table */

typedef struct {
    char model[24], link[64], compress[8];
    double rtt_ms, link_ms;  /* nominal RTT, measured echo round trip */
    double others;          /* CPU cores used by other processes while the row ran */
    result_t sw;
    double local_prefill, local_step;
    int same_ids, nids;
} row_t;

static row_t rows[64];
static int nrows;

static void print_header(void)
{
    printf("| model | link | codec | others' CPU | prefill ms (local) | decode ms/step p50 [p10-p90] | "
           "steps/s | local ms/step | swarm - local, paired p50 | RTT nominal / echo | hops x RTT | "
           "per-hop overhead ms, nominal / echo RTT | push bound | ids = local |\n");
    printf("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
}

static void print_row(const row_t *w)
{
    double extra = w->sw.diff_ms;

    printf("| %s | %s | %s | %.2f | %.1f (%.1f) | %.2f [%.2f-%.2f] | %.1f | %.2f | %.2f | %.0f / %.2f | %.0f | "
           "%.2f / %.2f | %.0f | %d/%d%s |\n",
           w->model, w->link, w->compress, w->others, w->sw.prefill_ms, w->local_prefill,
           w->sw.step_ms, w->sw.step_p10, w->sw.step_p90, 1e3 / w->sw.step_ms, w->local_step, extra,
           w->rtt_ms, w->link_ms, HOPS * w->rtt_ms, (extra - HOPS * w->rtt_ms) / HOPS,
           (extra - HOPS * w->link_ms) / HOPS, (HOPS + 1) * w->rtt_ms / 2, w->same_ids, w->nids,
           w->sw.failovers ? " (failover!)" : "");
    fflush(stdout);
}

/* ======================================================================== main */

static void usage(void)
{
    fprintf(stderr,
            "usage: bench-generate [--links direct,0/100,10/100,50/100] [--steps N] [--warmup W]\n"
            "                      [--prompt P] [--prefill-reps R] [--big-layers L] [--no-small]\n"
            "                      [--no-big] [--model DIR] [--pause-ms MS] [--swarmd PATH]\n"
            "                      [--linkemu PATH] [--dir DIR] [-v]\n"
            "links: 'direct' (no proxy) or D/R (linkemu: D ms one way, R Mbit/s; R 0: no cap)\n");
    exit(2);
}

static void parse_links(const char *spec)
{
    char buf[256], *save = NULL, *tok;

    snprintf(buf, sizeof(buf), "%s", spec);
    O.nlinks = 0;
    for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        link_t *l;
        char *e;
        if (O.nlinks == MAX_LINKS)
            usage();
        l = &O.links[O.nlinks++];
        memset(l, 0, sizeof(*l));
        if (!strcmp(tok, "direct")) {
            l->direct = 1;
            snprintf(l->label, sizeof(l->label), "loopback, direct");
            continue;
        }
        l->delay_ms = strtod(tok, &e);
        if (e == tok || l->delay_ms < 0 || l->delay_ms > 5000)
            usage();
        if (*e == '/') {
            char *e2;
            l->rate_mbit = strtod(e + 1, &e2);
            if (e2 == e + 1 || *e2 || l->rate_mbit < 0)
                usage();
        } else if (*e) {
            usage();
        }
        if (l->rate_mbit > 0)
            snprintf(l->label, sizeof(l->label), "linkemu %g ms RTT, %g Mbit/s", 2 * l->delay_ms, l->rate_mbit);
        else
            snprintf(l->label, sizeof(l->label), "linkemu %g ms RTT", 2 * l->delay_ms);
    }
    if (O.nlinks == 0)
        usage();
}

int main(int argc, char **argv)
{
    static const char *codecs[] = { "none", "bf16" };
    struct { const char *dir, *label; } models[2];
    int nmodels = 0, mismatch = 0;
    char bigdir[600];
    double t_start = now_s();

    parse_links("direct,0/100,10/100,50/100");
    O.base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    if (getenv("SWARMD"))
        O.swarmd = getenv("SWARMD");
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define INTOPT(nm, field, lo, hi)                                                                   \
        if (!strcmp(a, nm)) {                                                                       \
            if (!v || (O.field = atoi(v)) < (lo) || O.field > (hi))                                  \
                usage();                                                                            \
            i++;                                                                                    \
            continue;                                                                               \
        }
        INTOPT("--steps", steps, 1, MAX_STEPS - 64)
        INTOPT("--warmup", warmup, 0, 32)
        INTOPT("--prompt", prompt, 1, MAX_PROMPT)
        INTOPT("--prefill-reps", prefill_reps, 0, MAX_REPS)
        INTOPT("--big-layers", big_layers, HOPS, 64)
        INTOPT("--pause-ms", pause_ms, 0, 10000)
#undef INTOPT
        if (!strcmp(a, "--links") && v) {
            parse_links(v);
            i++;
        } else if (!strcmp(a, "--model") && v) {
            O.model = v;
            i++;
        } else if (!strcmp(a, "--swarmd") && v) {
            O.swarmd = v;
            i++;
        } else if (!strcmp(a, "--linkemu") && v) {
            O.linkemu = v;
            i++;
        } else if (!strcmp(a, "--dir") && v) {
            O.base = v;
            i++;
        } else if (!strcmp(a, "--no-small")) {
            O.small = 0;
        } else if (!strcmp(a, "--no-big")) {
            O.big = 0;
        } else if (!strcmp(a, "-v")) {
            O.verbose = 1;
        } else {
            usage();
        }
    }
    if (access(O.swarmd, X_OK) != 0)
        die("%s is not an executable swarmd; build it (ninja -C BUILD) or pass --swarmd PATH", O.swarmd);
    for (int i = 0; i < O.nlinks; i++)
        if (!O.links[i].direct && access(O.linkemu, X_OK) != 0)
            die("%s is not an executable linkemu; build it or pass --linkemu PATH", O.linkemu);

    snprintf(tmpdir, sizeof(tmpdir), "%s/swarmd-bench-gen-XXXXXX", O.base);
    if (!mkdtemp(tmpdir)) {
        tmpdir[0] = '\0';
        die("cannot create a directory under %s: %s (pass --dir DIR)", O.base, strerror(errno));
    }
    atexit(at_exit);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGPIPE, SIG_IGN);
    {
        char cache[700];
        snprintf(cache, sizeof(cache), "%s/cache", tmpdir);
        mkdir(cache, 0700);
        setenv("SWARMD_CACHE_DIR", cache, 1); /* the servers' throughput cache stays out of ~ */
    }

    if (O.small)
        models[nmodels++] = (typeof(models[0])){ O.model, "small" };
    if (O.big) {
        double t0 = now_s();
        int r;
        snprintf(bigdir, sizeof(bigdir), "%s/big", tmpdir);
        if (mkdir(bigdir, 0700) < 0)
            die("cannot create %s: %s", bigdir, strerror(errno));
        printf("bench-generate: writing a %d-block Llama (H %d, I %d, %d/%d heads, V %d, random bf16) to %s ...\n",
               O.big_layers, BIG_H, BIG_I, BIG_NH, BIG_NKV, BIG_V, bigdir);
        fflush(stdout);
        if ((r = write_big_model(bigdir, O.big_layers)) < 0)
            die("cannot write the model: %s", sw_err_detail()[0] ? sw_err_detail() : sw_strerror(r));
        printf("  done in %.1f s\n", now_s() - t0);
        models[nmodels++] = (typeof(models[0])){ bigdir, "big" };
    }
    if (nmodels == 0)
        usage();

    start_bootstrap();
    printf("bench-generate: bootstrap node %s; prompt %d ids, %d warm-up + %d timed decode steps "
           "(batch 1, greedy), prefill median of %d sessions; %d servers per swarm\n",
           boot_addr, O.prompt, O.warmup, O.steps, O.prefill_reps, HOPS);
    printf("load average at the start %.2f; %ld CPUs. others' CPU = cores busy with processes other "
           "than this benchmark and its children while the row was measured.\n"
           "swarm - local = median over decode steps of (swarm step - the local step run just "
           "before it); per-hop overhead = (that - hops x RTT) / hops.\n"
           "ids = local: greedy ids equal to --local's (must be all with codec none)\n\n",
           loadavg(), sysconf(_SC_NPROCESSORS_ONLN));
    fflush(stdout);

    for (int m = 0; m < nmodels; m++) {
        runner_t lu, su;
        swarm_client_opts_t lo = { .model_dir = models[m].dir, .local = 1 };
        int L, H;

        /* the baseline client stays open for the model's rows: local mode, same session code */
        runner_open(&lu, &lo, "local");
        L = swarm_client_num_blocks(lu.c);
        H = swarm_client_hidden_size(lu.c);
        if (L < HOPS)
            die("%s has %d blocks; three servers need at least 3", models[m].dir, L);
        printf("model %s: %s (%d blocks, H %d; one decode step sends %d B per hop each way "
               "with codec none, %d B with bf16, plus framing)\n",
               models[m].label, models[m].dir, L, H, 4 * H, 2 * H);
        print_header();
        for (int k = 0; k < O.nlinks; k++) {
            const link_t *ln = &O.links[k];
            swarm_t sw;
            char name[64];

            snprintf(name, sizeof(name), "bench-%s-%d", models[m].label, k);
            start_swarm(&sw, models[m].dir, L, name, ln);
            for (int ci = 0; ci < 2; ci++) {
                swarm_client_opts_t so = { 0 };
                const char *peers[1] = { boot_addr };
                result_t local;
                long long busy0, ours0;
                double t0;
                row_t *w;
                char what[128];
                if (nrows == (int)(sizeof(rows) / sizeof(rows[0])))
                    die("too many rows");
                w = &rows[nrows++];
                memset(w, 0, sizeof(*w));
                w->link_ms = link_rtt_ms(ln, (size_t)H * (ci ? 2 : 4), 16);
                t0 = now_s();
                busy0 = machine_busy_ticks();
                ours0 = our_ticks();
                so.model_dir = models[m].dir;
                so.model_name = name;
                so.initial_peers = peers;
                so.n_initial_peers = 1;
                so.compress = codecs[ci];
                snprintf(what, sizeof(what), "%s model, %s, %s", models[m].label, ln->label, codecs[ci]);
                runner_open(&su, &so, what);
                measure_pair(&lu, &local, &su, &w->sw);
                w->others = (double)(machine_busy_ticks() - busy0 - (our_ticks() - ours0)) /
                            (double)sysconf(_SC_CLK_TCK) / (now_s() - t0);
                if (w->others < 0) /* tick rounding */
                    w->others = 0;
                runner_close(&su);
                snprintf(w->model, sizeof(w->model), "%s", models[m].label);
                snprintf(w->link, sizeof(w->link), "%s", ln->label);
                snprintf(w->compress, sizeof(w->compress), "%s", codecs[ci]);
                w->rtt_ms = ln->direct ? 0 : 2 * ln->delay_ms;
                w->local_prefill = local.prefill_ms;
                w->local_step = local.step_ms;
                w->nids = local.nids;
                for (int i = 0; i < local.nids; i++)
                    w->same_ids += w->sw.ids[i] == local.ids[i];
                if (ci == 0 && w->same_ids != w->nids) {
                    mismatch = 1;
                    fprintf(stderr, "bench-generate: %s: greedy ids differ from the local ones (%d of %d "
                            "equal) with codec none: a bug\n", what, w->same_ids, w->nids);
                }
                if (O.verbose)
                    fprintf(stderr, "  [%s] %s\n", what, w->sw.route);
                print_row(w);
            }
            stop_swarm(&sw);
        }
        runner_close(&lu);
        printf("\n");
    }

    /* the summary: our 3-server figures next to Petals' (BLOOM-176B, 3 x A100, swarm.md 2.2),
     * for the rows with Petals' link conditions: linkemu 0 ms (their "< 5 ms") and 100 ms RTT */
    printf("Next to Petals' published 3-server rows (BLOOM-176B int8 on 3 x A100, 100 Mbit/s, "
           "inference steps/s at seq 128; swarm.md 2.2):\n\n");
    printf("| system | model | codec | steps/s, < 5 ms RTT | steps/s, 100 ms RTT | s/step added by "
           "+100 ms RTT | client-relay bound 3 x RTT | push bound (3+1) x RTT/2 |\n");
    printf("| --- | --- | --- | --- | --- | --- | --- | --- |\n");
    printf("| Petals 2022 | BLOOM-176B, 3 x A100 | raw 16-bit (default) | 1.66 | 1.23 | 0.21 | 0.30 | 0.20 |\n");
    for (int i = 0; i < nrows; i++) {
        const row_t *a = &rows[i];
        for (int j = 0; j < nrows; j++) {
            const row_t *b = &rows[j];
            if (strcmp(a->model, b->model) || strcmp(a->compress, b->compress) || a->rtt_ms != 0 ||
                !strstr(a->link, "linkemu") || b->rtt_ms != 100)
                continue;
            printf("| swarmd (this run) | %s | %s | %.2f | %.2f | %.3f | 0.30 | 0.20 |\n", a->model,
                   a->compress, 1e3 / a->sw.step_ms, 1e3 / b->sw.step_ms,
                   (b->sw.step_ms - a->sw.step_ms) / 1e3);
        }
    }
    printf("\nOurs: 'small' and 'big' models on this CPU (steps are cheap), so only the network part "
           "compares: Petals' +0.21 s sits at the push bound, ours at the client-relay bound.\n");
    printf("\ntotal %.0f s, load at the end %.2f\n", now_s() - t_start, loadavg());
    if (mismatch)
        printf("FAILED: with codec none the swarm's greedy ids differ from --local's (see stderr)\n");
    fflush(stdout);
    stop_child(boot_pid);
    return mismatch ? 1 : 0;
}
