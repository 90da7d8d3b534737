/*
 * test-batch.c - continuous batching is invisible: a session's step computed in one pass with
 * other sessions' steps gives the same bits as the step alone.
 *
 * 1. Kernels: ops->matmul_batch_range (kernels/ops.h). For every weight format and both CPU paths
 *    (AVX2 and portable) and the reference, on ragged shapes (K % 8 != 0, several 512-column
 *    chunks, N % 4 != 0, misaligned 16-bit data), each row of a call with M rows equals, by
 *    memcmp, the same row computed in a call of another row count inside the reported range,
 *    at another position, next to other random rows (one of them NaN and one inf, which the NF4
 *    int8 GEMV must not let leak into the finite rows). LLM.int8() with a threshold must report
 *    -1, and the test shows why: an outlier in another row changes a row's result. LLM.int8()
 *    gives a row holding NaN/inf non-finite results (no undefined float-to-int conversion; UBSan
 *    caught one).
 * 2. Spans: on the fixtures (MHA tied, GQA with llama3 RoPE, Qwen2 biases, Mistral sliding window
 *    with dynamic-NTK RoPE, llama-wide quantized to NF4 on load, the bnb-layout NF4 checkpoint,
 *    Int8 with threshold 0), sessions of different batch sizes and lengths step in an irregular
 *    pattern (prefills, single tokens, two-token steps, a rollback); one run steps each alone with
 *    sw_span_forward, the other groups the steps as the server's executor does (greedy, while
 *    sw_span_batch_ok holds) into sw_span_forward_batch passes. Every output of every step is
 *    compared with memcmp, and the test checks that multi-session passes actually ran (NF4:
 *    in both of its regimes, <= 4 and >= 5 rows).
 * 3. What may not batch: Int8 with threshold 6 (sw_span_batch_ok 0), steps above 64 tokens,
 *    mixed NF4 regimes; sw_span_forward_batch's own checks (foreign cache, duplicate, too long).
 */
#include <stdint.h>

#include "kernels/cpu/fast.h"
#include "kernels/ops.h"
#include "kernels/quant.h"
#include "kernels/tensor.h"
#include "pipeline/model.h"
#include "test.h"
#include "util/error.h"

/* ======================================================================== kernels */

/* A (N, K) weight of dtype dt (f32 / f16 / bf16) from random values, its data misaligned by
 * `shift` bytes inside *buf (free *buf). */
static sw_tensor_t dense_weight(sw_dtype_t dt, int64_t N, int64_t K, unsigned long long seed,
                                int shift, void **buf)
{
    float *v = sw_test_randv((size_t)(N * K), seed, 0.1f);
    size_t es = sw_dtype_size(dt);
    unsigned char *p = sw_malloc((size_t)(N * K) * es + 16);
    sw_tensor_t t = { .dtype = dt, .ndim = 2, .shape = { N, K }, .data = p + shift };

    for (int64_t i = 0; i < N * K; i++) {
        if (dt == SW_DTYPE_F32) {
            memcpy(p + shift + 4 * i, &v[i], 4);
        } else {
            uint16_t h = dt == SW_DTYPE_F16 ? sw_f32_to_f16(v[i]) : sw_f32_to_bf16(v[i]);
            memcpy(p + shift + 2 * i, &h, 2);
        }
    }
    sw_free(v);
    *buf = p;
    return t;
}

/* Row counts to try, and a second count inside [lo, hi] to compare each row against. */
static const int Ms[] = { 1, 2, 3, 4, 5, 6, 7, 9, 13 };

/*
 * For each M: y = matmul(x (M, K)); for each row m, a second call of M2 rows (M2 in the reported
 * range, another position, other random rows around it, including NaN and inf rows when M2 > 2)
 * must give row m the same bits. Returns the number of rows compared, or -1 on a mismatch.
 */
static int check_rows(const sw_ops_t *ops, const sw_tensor_t *w, const float *bias,
                      const char *what)
{
    int64_t N = w->shape[0], K = w->shape[1];
    int compared = 0;

    for (size_t mi = 0; mi < sizeof(Ms) / sizeof(Ms[0]); mi++) {
        int M = Ms[mi], lo, hi;
        float *x = sw_test_randv((size_t)(M * K), 100 + (unsigned)M, 1.0f);
        float *y = sw_malloc((size_t)(M * N) * sizeof(float));

        if (ops->matmul_batch_range(w, M, &lo, &hi) < 0 || lo > M || hi < M) {
            fprintf(stderr, "  %s: batch range [%d, %d] for M %d\n", what, lo, hi, M);
            return -1;
        }
        ops->matmul(y, x, w, bias, M);
        for (int m = 0; m < M; m++) {
            int M2s[2] = { lo, hi - lo > 12 ? lo + 12 - (m % 5) : hi };
            for (int k = 0; k < 2; k++) {
                int M2 = M2s[k] < lo ? lo : M2s[k], p = (m * 7 + k) % M2;
                float *x2 = sw_test_randv((size_t)(M2 * K), 900 + (unsigned)(M * 31 + m + k),
                                          1.0f);
                float *y2 = sw_malloc((size_t)(M2 * N) * sizeof(float));

                if (M2 > 2) { /* a NaN row and an inf row next to it */
                    int pn = (p + 1) % M2, pi = (p + 2) % M2;
                    x2[(size_t)pn * K + (size_t)(K / 2)] = NAN;
                    x2[(size_t)pi * K] = INFINITY;
                }
                memcpy(x2 + (size_t)p * K, x + (size_t)m * K, (size_t)K * sizeof(float));
                ops->matmul(y2, x2, w, bias, M2);
                if (memcmp(y2 + (size_t)p * N, y + (size_t)m * N, (size_t)N * sizeof(float))) {
                    for (int64_t n = 0; n < N; n++)
                        if (memcmp(&y2[p * N + n], &y[m * N + n], sizeof(float))) {
                            fprintf(stderr, "  %s %s N=%d K=%d: row %d of M=%d vs row %d of "
                                    "M=%d, column %d: %.9g vs %.9g\n", ops->name, what, (int)N,
                                    (int)K, m, M, p, M2, (int)n, y[m * N + n], y2[p * N + n]);
                            break;
                        }
                    return -1;
                }
                compared++;
                sw_free(x2);
                sw_free(y2);
            }
        }
        sw_free(x);
        sw_free(y);
    }
    return compared;
}

/* The paths to check: the CPU backend with AVX2 (if the machine has it), forced portable, and
 * (small shapes) the reference. Sets ops and the portable switch for path p; 0 when p is out. */
static int path_set(int p, int64_t N, int64_t K, const sw_ops_t **ops)
{
    sw_cpu_force_portable(p == 1);
    if (p == 0 && strcmp(sw_cpu_simd_name(), "portable") == 0)
        return 0;
    if (p == 2 && N * K > 40000)
        return 0;
    *ops = p == 2 ? &sw_ops_ref : &sw_ops_cpu;
    return p < 3;
}

static void test_dense_rows(void)
{
    static const struct { int N, K; } shapes[] = {
        { 13, 100 }, { 9, 1030 }, { 37, 512 }, { 16, 2048 }, { 21, 777 }, { 8, 24 }, { 3, 5 },
    };
    static const sw_dtype_t dts[] = { SW_DTYPE_F32, SW_DTYPE_F16, SW_DTYPE_BF16 };
    int total = 0;

    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++)
        for (int d = 0; d < 3; d++) {
            void *buf;
            sw_tensor_t w = dense_weight(dts[d], shapes[s].N, shapes[s].K, 7 + s, (int)(s % 3) * 2,
                                         &buf);
            float *bias = sw_test_randv((size_t)shapes[s].N, 50 + s, 0.5f);
            const sw_ops_t *ops;

            for (int p = 0; p < 3; p++) {
                if (!path_set(p, shapes[s].N, shapes[s].K, &ops))
                    continue;
                int n = check_rows(ops, &w, s % 2 ? bias : NULL, sw_dtype_name(dts[d]));
                SW_CHECK(n > 0);
                total += n;
            }
            sw_free(bias);
            sw_free(buf);
        }
    sw_cpu_force_portable(0);
    fprintf(stderr, "  dense: %d rows compared bit for bit\n", total);
}

static void test_nf4_rows(void)
{
    /* int8 GEMV shapes (64 | bs, bs | K), ragged ones (exact path only), several fixed K chunks */
    static const struct { int N, K, bs, nested; } shapes[] = {
        { 12, 256, 64, 1 }, { 7, 1024, 64, 0 }, { 13, 100, 64, 0 }, { 10, 320, 32, 1 },
        { 5, 16384 + 1024, 64, 1 }, { 6, 640, 128, 0 },
    };
    int total = 0;

    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
        int N = shapes[s].N, K = shapes[s].K;
        float *wv = sw_test_randv((size_t)N * K, 70 + s, 0.05f);
        float *bias = sw_test_randv((size_t)N, 80 + s, 0.5f);
        sw_tensor_t d = { .dtype = SW_DTYPE_F32, .ndim = 2, .shape = { N, K }, .data = wv };
        sw_tensor_t q = { 0 };
        const sw_ops_t *ops;

        SW_CHECK_OK(sw_quantize_nf4(&d, shapes[s].bs, shapes[s].nested, &q));
        for (int p = 0; p < 3; p++) {
            if (!path_set(p, N, K, &ops))
                continue;
            int n = check_rows(ops, &q, s % 2 ? bias : NULL, "nf4");
            SW_CHECK(n > 0);
            total += n;
        }
        /* on AVX2 the int8 GEMV (M <= 4) and the exact path (M >= 5) are two regimes */
        if (path_set(0, N, K, &ops) && shapes[s].bs % 64 == 0 && K % shapes[s].bs == 0) {
            int lo, hi;
            SW_CHECK(ops->matmul_batch_range(&q, 3, &lo, &hi) == 0 && lo == 1 && hi == 4);
            SW_CHECK(ops->matmul_batch_range(&q, 5, &lo, &hi) == 0 && lo == 5 && hi == INT32_MAX);
        }
        sw_cpu_force_portable(0);
        sw_qtensor_free(&q);
        sw_free(wv);
        sw_free(bias);
    }
    fprintf(stderr, "  nf4: %d rows compared bit for bit\n", total);
}

static void test_int8_rows(void)
{
    enum { N = 11, K = 200 };
    float *wv = sw_test_randv((size_t)N * K, 90, 0.05f);
    sw_tensor_t d = { .dtype = SW_DTYPE_F32, .ndim = 2, .shape = { N, K }, .data = wv };
    sw_tensor_t q0 = { 0 }, q6 = { 0 };
    const sw_ops_t *ops;
    int total = 0;

    /* threshold 0: plain int8 rows, each quantized on its own */
    SW_CHECK_OK(sw_quantize_int8(&d, 0.0f, &q0));
    for (int p = 0; p < 3; p++) {
        if (!path_set(p, N, K, &ops))
            continue;
        int n = check_rows(ops, &q0, NULL, "int8 (threshold 0)");
        SW_CHECK(n > 0);
        total += n;
    }
    /* threshold 6: not invariant, and really not: an outlier in row 1 changes row 0 */
    SW_CHECK_OK(sw_quantize_int8(&d, 6.0f, &q6));
    for (int p = 0; p < 3; p++) {
        float *x = sw_test_randv(2 * K, 91, 1.0f), y1[N], y2[2 * N];
        int lo, hi;

        if (!path_set(p, N, K, &ops))
            continue;
        for (int k = 0; k < 2 * K; k++)
            x[k] = fmaxf(-3.0f, fminf(3.0f, x[k]));
        x[K + 17] = 20.0f;
        SW_CHECK(ops->matmul_batch_range(&q6, 2, &lo, &hi) == -1 && lo == 2 && hi == 2);
        ops->matmul(y1, x, &q6, NULL, 1);
        ops->matmul(y2, x, &q6, NULL, 2);
        SW_CHECKF(memcmp(y1, y2, sizeof(y1)) != 0, "%s: the outlier in row 1 left row 0 alone",
                  ops->name);
        sw_free(x);
    }
    /* a NaN or an infinity gives that row non-finite results (NaN outside the outlier columns,
     * not an undefined float-to-int conversion; an inf above threshold 6 is an outlier column
     * and propagates in fp32), on every path and at both thresholds */
    for (int p = 0; p < 3; p++) {
        float *x = sw_test_randv(2 * K, 92, 0.5f), y[2 * N];
        if (!path_set(p, N, K, &ops))
            continue;
        x[K + 3] = p == 1 ? INFINITY : NAN;
        for (int t = 0; t < 2; t++) {
            ops->matmul(y, x, t ? &q6 : &q0, NULL, 2);
            for (int n = 0; n < N; n++)
                SW_CHECKF(isfinite(y[n]) && !isfinite(y[N + n]), "%s threshold %d: %g %g",
                          ops->name, t ? 6 : 0, y[n], y[N + n]);
        }
        sw_free(x);
    }
    sw_cpu_force_portable(0);
    sw_qtensor_free(&q0);
    sw_qtensor_free(&q6);
    sw_free(wv);
    fprintf(stderr, "  int8: %d rows compared bit for bit\n", total);
}

/* ======================================================================== spans */

enum { NSESS = 5, STEPS = 10, MAXLEN = 64 };

/* A session of the scenario: batch B; its steps' token counts T (0: no step that round); a
 * rollback to position `rb` before round `rb_round`. */
typedef struct {
    int B;
    int T[STEPS];
    int rb_round, rb;
} plan_t;

/* Prefills of different lengths in round 0 and 5-6, single tokens, two-token steps, idle rounds
 * (so lengths diverge), and one rollback. */
static const plan_t plans[NSESS] = {
    { 1, { 3, 1, 1, 1, 0, 1, 1, 2, 1, 1 }, -1, 0 },
    { 1, { 7, 1, 0, 1, 1, 1, 1, 1, 1, 2 }, 6, 5 },
    { 2, { 1, 1, 1, 0, 1, 1, 1, 1, 0, 1 }, -1, 0 },
    { 1, { 0, 0, 12, 1, 1, 1, 1, 1, 1, 1 }, -1, 0 },
    { 3, { 5, 1, 2, 1, 1, 0, 6, 1, 1, 1 }, -1, 0 },
};

/* The input of session i's step in round r: a function of (i, r) only, so both runs feed the same. */
static float *step_input(int i, int r, int H)
{
    const plan_t *p = &plans[i];

    return sw_test_randv((size_t)p->B * p->T[r] * H, 1000 + (unsigned)(i * 100 + r), 1.0f);
}

typedef struct {
    int passes, multi, multi_small, multi_large, rows_max;
} batch_stats_t;

/*
 * Runs the scenario through span s with ops: alone (each step by sw_span_forward) or batched (the
 * round's steps grouped greedily in session order, a step joining the current group while
 * sw_span_batch_ok holds for the group with it and the rows fit the workspace, else starting a
 * new group, as the server's executor does; every group, even of one, by sw_span_forward_batch).
 * out[i][r] gets each step's output (caller frees).
 */
static int run_scenario(const sw_model_config_t *cfg, const sw_span_t *s, const sw_ops_t *ops,
                        int batched, float *out[NSESS][STEPS], batch_stats_t *st)
{
    sw_kv_t *kv[NSESS] = { 0 };
    sw_fwd_batch_t *ws = NULL;
    int r = 0;

    memset(st, 0, sizeof(*st));
    if (batched && (r = sw_fwd_batch_create(cfg, 48, &ws)) < 0)
        return r;
    for (int i = 0; i < NSESS && r == 0; i++)
        r = sw_kv_create(s, plans[i].B, MAXLEN, &kv[i]);
    for (int rd = 0; rd < STEPS && r == 0; rd++) {
        int idx[NSESS], n = 0;

        for (int i = 0; i < NSESS && r == 0; i++) {
            out[i][rd] = NULL;
            if (!plans[i].T[rd])
                continue;
            if (plans[i].rb_round == rd)
                r = sw_kv_truncate(kv[i], plans[i].rb);
            out[i][rd] = step_input(i, rd, cfg->hidden_size);
            idx[n++] = i;
        }
        for (int k = 0; k < n && r == 0;) {
            sw_kv_t *gk[NSESS];
            float *gx[NSESS];
            int gt[NSESS], g = 0, rows = 0, min_rows = 1 << 30, max_T = 0;

            do { /* grow the group while the batch stays invariant */
                const plan_t *p = &plans[idx[k]];
                int rr = p->B * p->T[rd], mr = rr < min_rows ? rr : min_rows;
                int mt = p->T[rd] > max_T ? p->T[rd] : max_T;
                if (g > 0 && (!batched || rows + rr > 48 ||
                              !sw_span_batch_ok(s, ops, mr, mt, rows + rr)))
                    break;
                gk[g] = kv[idx[k]];
                gx[g] = out[idx[k]][rd];
                gt[g++] = p->T[rd];
                rows += rr;
                min_rows = mr;
                max_T = mt;
                k++;
            } while (k < n);
            if (batched)
                r = sw_span_forward_batch(s, gk, ops, gx, gt, g, ws);
            else
                r = sw_span_forward(s, gk[0], ops, gx[0], plans[idx[k - 1]].B, gt[0]);
            st->passes++;
            if (g > 1) {
                st->multi++;
                st->multi_small += rows <= 4;
                st->multi_large += min_rows >= 5;
            }
            if (rows > st->rows_max)
                st->rows_max = rows;
        }
    }
    for (int i = 0; i < NSESS; i++)
        sw_kv_free(kv[i]);
    sw_fwd_batch_free(ws);
    return r;
}

static void free_outputs(float *out[NSESS][STEPS])
{
    for (int i = 0; i < NSESS; i++)
        for (int r = 0; r < STEPS; r++) {
            sw_free(out[i][r]);
            out[i][r] = NULL;
        }
}

/*
 * The scenario on fixture `name` loaded with opts, blocks [a, b), alone and batched: every output
 * equal by memcmp. want_large: NF4 on AVX2 must have batched in both regimes.
 */
static int span_case(const char *name, const sw_load_opts_t *opts, int a, int b,
                     const sw_ops_t *ops, int want_multi, batch_stats_t *stb)
{
    char dir[1024];
    sw_model_t *m = NULL;
    sw_span_t *s = NULL;
    float *alone[NSESS][STEPS] = { { 0 } }, *batch[NSESS][STEPS] = { { 0 } };
    batch_stats_t sta;
    int r, H, bad = 0;

    snprintf(dir, sizeof(dir), "%s/tests/fixtures/%s", getenv("SW_SOURCE_ROOT"), name);
    if ((r = sw_model_open(dir, &m)) < 0)
        return r;
    H = sw_model_config(m)->hidden_size;
    if ((r = sw_span_load(m, a, b < 0 ? sw_model_config(m)->num_layers : b, opts, &s)) < 0 ||
        (r = run_scenario(sw_model_config(m), s, ops, 0, alone, &sta)) < 0 ||
        (r = run_scenario(sw_model_config(m), s, ops, 1, batch, stb)) < 0)
        goto out;
    for (int i = 0; i < NSESS && !bad; i++)
        for (int rd = 0; rd < STEPS && !bad; rd++) {
            size_t nf = (size_t)plans[i].B * plans[i].T[rd] * H;
            if (nf && memcmp(alone[i][rd], batch[i][rd], nf * sizeof(float))) {
                size_t j = 0;
                while (alone[i][rd][j] == batch[i][rd][j])
                    j++;
                fprintf(stderr, "  %s (%s): session %d round %d differs at value %zu: %.9g "
                        "alone, %.9g batched\n", name, ops->name, i, rd, j, alone[i][rd][j],
                        batch[i][rd][j]);
                bad = 1;
            }
        }
    fprintf(stderr, "  %-24s %-9s blocks %d:%d: %d passes (%d alone), %d with several sessions "
            "(%d of <= 4 rows, %d with every step >= 5 rows), up to %d rows: %s\n", name,
            ops->name, a, b < 0 ? sw_model_config(m)->num_layers : b, stb->passes, sta.passes,
            stb->multi, stb->multi_small, stb->multi_large, stb->rows_max,
            bad ? "DIFFERENT" : "identical");
    r = bad ? SW_EFORMAT : stb->multi < want_multi ? SW_ESTATE : 0;
out:
    free_outputs(alone);
    free_outputs(batch);
    sw_span_free(s);
    sw_model_close(m);
    return r;
}

static const sw_load_opts_t as_stored = SW_LOAD_OPTS_DEFAULT;

static void test_span_fixtures(void)
{
    static const char *names[] = { "llama-mha-tied", "llama-gqa-llama3", "qwen2-bias",
                                   "mistral-window-dynamic" };
    batch_stats_t st;

    for (size_t f = 0; f < sizeof(names) / sizeof(names[0]); f++) {
        SW_CHECK_OK(span_case(names[f], &as_stored, 0, -1, &sw_ops_cpu, 4, &st));
        /* dense weights: every round's steps fit one pass */
        SW_CHECKF(st.passes == STEPS, "%s: %d passes for %d rounds", names[f], st.passes, STEPS);
    }
    /* one block as the server loads it, and a middle sub-span */
    SW_CHECK_OK(span_case("llama-gqa-llama3", &as_stored, 1, 2, &sw_ops_cpu, 4, &st));
    SW_CHECK_OK(span_case("qwen2-bias", &as_stored, 1, 3, &sw_ops_cpu, 4, &st));
    /* the portable path and the reference batch too */
    sw_cpu_force_portable(1);
    SW_CHECK_OK(span_case("mistral-window-dynamic", &as_stored, 0, -1, &sw_ops_cpu, 4, &st));
    sw_cpu_force_portable(0);
    SW_CHECK_OK(span_case("llama-mha-tied", &as_stored, 0, -1, &sw_ops_ref, 4, &st));
}

static void test_span_quantized(void)
{
    sw_load_opts_t nf4 = SW_LOAD_OPTS_DEFAULT, i8 = SW_LOAD_OPTS_DEFAULT;
    int avx2 = strcmp(sw_cpu_simd_name(), "portable") != 0;
    batch_stats_t st;

    nf4.quant = SW_QUANT_NF4;
    i8.quant = SW_QUANT_INT8;
    i8.int8_threshold = 0.0f;
    /* NF4 quantized on load (GQA, H 512: the int8 GEMV applies) and as stored in bnb layout */
    SW_CHECK_OK(span_case("llama-wide", &nf4, 0, -1, &sw_ops_cpu, 2, &st));
    if (avx2)
        SW_CHECKF(st.multi_small > 0 && st.multi_large > 0, "NF4 batched %d small, %d large",
                  st.multi_small, st.multi_large);
    SW_CHECK_OK(span_case("llama-wide-nf4", &as_stored, 0, -1, &sw_ops_cpu, 2, &st));
    sw_cpu_force_portable(1); /* the exact path for every M: one regime */
    SW_CHECK_OK(span_case("llama-wide-nf4", &as_stored, 0, -1, &sw_ops_cpu, 4, &st));
    sw_cpu_force_portable(0);
    SW_CHECK_OK(span_case("llama-gqa-llama3", &nf4, 0, -1, &sw_ops_cpu, 2, &st));
    /* Int8 without outlier columns batches; with threshold 6 it may not (below) */
    SW_CHECK_OK(span_case("llama-gqa-llama3", &i8, 0, -1, &sw_ops_cpu, 4, &st));
}

static void test_batch_refusals(void)
{
    char dir[1024];
    sw_model_t *m = NULL;
    sw_span_t *s = NULL, *s8 = NULL, *s4 = NULL, *other = NULL;
    sw_kv_t *k1 = NULL, *k2 = NULL, *ko = NULL;
    sw_fwd_batch_t *ws = NULL;
    sw_load_opts_t i8 = SW_LOAD_OPTS_DEFAULT, nf4 = SW_LOAD_OPTS_DEFAULT;
    float *x = sw_test_randv(64 * 128, 5, 1.0f), *x2 = sw_test_randv(64 * 128, 6, 1.0f);
    float *xs[2] = { x, x2 };
    int Ts[2] = { 1, 1 };

    i8.quant = SW_QUANT_INT8; /* threshold 6 */
    nf4.quant = SW_QUANT_NF4;
    snprintf(dir, sizeof(dir), "%s/tests/fixtures/llama-gqa-llama3", getenv("SW_SOURCE_ROOT"));
    SW_CHECK_OK(sw_model_open(dir, &m));
    SW_CHECK_OK(sw_span_load(m, 0, 2, NULL, &s));
    SW_CHECK_OK(sw_span_load(m, 2, 4, NULL, &other));
    SW_CHECK_OK(sw_span_load(m, 0, 1, &i8, &s8));
    SW_CHECK_OK(sw_span_load(m, 0, 1, &nf4, &s4));
    /* what may share a pass */
    SW_CHECK(sw_span_batch_ok(s, &sw_ops_cpu, 1, 1, 40));
    SW_CHECK(sw_span_batch_ok(s, &sw_ops_cpu, 1, 64, 300));
    SW_CHECK(!sw_span_batch_ok(s, &sw_ops_cpu, 1, 65, 300)); /* runs in chunks alone */
    SW_CHECK(!sw_span_batch_ok(s8, &sw_ops_cpu, 1, 1, 2));   /* outlier columns of all rows */
    SW_CHECK(!sw_span_batch_ok(s8, &sw_ops_ref, 1, 1, 2));
    if (strcmp(sw_cpu_simd_name(), "portable") != 0) {
        SW_CHECK(sw_span_batch_ok(s4, &sw_ops_cpu, 1, 1, 4));
        SW_CHECK(!sw_span_batch_ok(s4, &sw_ops_cpu, 1, 1, 5)); /* 1 row alone: int8 GEMV */
        SW_CHECK(sw_span_batch_ok(s4, &sw_ops_cpu, 5, 5, 12));
    }
    /* sw_span_forward_batch's own checks; nothing changes on failure */
    SW_CHECK_OK(sw_fwd_batch_create(sw_model_config(m), 8, &ws));
    SW_CHECK(sw_fwd_batch_rows(ws) == 8);
    SW_CHECK_OK(sw_kv_create(s, 1, 4, &k1));
    SW_CHECK_OK(sw_kv_create(s, 1, 4, &k2));
    SW_CHECK_OK(sw_kv_create(other, 1, 4, &ko));
    {
        sw_kv_t *dup[2] = { k1, k1 }, *foreign[2] = { k1, ko }, *ok[2] = { k1, k2 };
        int big[2] = { 1, 5 }, wide[2] = { 4, 4 };
        SW_CHECK(sw_span_forward_batch(s, dup, &sw_ops_cpu, xs, Ts, 2, ws) == -EINVAL);
        SW_CHECK(sw_span_forward_batch(s, foreign, &sw_ops_cpu, xs, Ts, 2, ws) == -EINVAL);
        SW_CHECK(sw_span_forward_batch(s, ok, &sw_ops_cpu, xs, big, 2, ws) == SW_ELIMIT);
        SW_CHECK(sw_kv_len(k1) == 0 && sw_kv_len(k2) == 0);
        SW_CHECK_OK(sw_span_forward_batch(s, ok, &sw_ops_cpu, xs, wide, 2, ws));
        SW_CHECK(sw_kv_len(k1) == 4 && sw_kv_len(k2) == 4);
        SW_CHECK(sw_span_forward_batch(s, ok, &sw_ops_cpu, xs, Ts, 2, ws) == SW_ELIMIT); /* full */
        SW_CHECK(sw_fwd_batch_create(sw_model_config(m), 0, &(sw_fwd_batch_t *){ NULL }) == -EINVAL);
    }
    {
        sw_kv_t *nine[2] = { k1, k2 };
        int t9[2] = { 1, 1 };
        sw_kv_reset(k1);
        sw_kv_reset(k2);
        SW_CHECK_OK(sw_span_forward_batch(s, nine, &sw_ops_cpu, xs, t9, 2, ws));
        sw_kv_free(k1);
        k1 = NULL;
        SW_CHECK_OK(sw_kv_create(s, 8, 4, &k1)); /* 8 + 1 rows > the workspace's 8 */
        nine[0] = k1;
        SW_CHECK(sw_span_forward_batch(s, nine, &sw_ops_cpu, xs, t9, 2, ws) == SW_ELIMIT);
    }
    sw_kv_free(k1);
    sw_kv_free(k2);
    sw_kv_free(ko);
    sw_fwd_batch_free(ws);
    sw_span_free(s);
    sw_span_free(s8);
    sw_span_free(s4);
    sw_span_free(other);
    sw_model_close(m);
    sw_free(x);
    sw_free(x2);
}

int main(void)
{
    if (!getenv("SW_SOURCE_ROOT")) {
        fprintf(stderr, "test-batch: set SW_SOURCE_ROOT\n");
        return 1;
    }
    SW_RUN(test_dense_rows);
    SW_RUN(test_nf4_rows);
    SW_RUN(test_int8_rows);
    SW_RUN(test_span_fixtures);
    SW_RUN(test_span_quantized);
    SW_RUN(test_batch_refusals);
    return sw_test_summary("batch");
}
