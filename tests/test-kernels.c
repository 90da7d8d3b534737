/*
 * test-kernels.c - the CPU ops: the reference (sw_ops_ref) on tiny hand-computed cases, then the
 * fast backend (sw_ops_cpu) against the reference on fresh random inputs, on both its SIMD path
 * and its forced portable path (sw_cpu_force_portable).
 *
 * Tolerances (fast vs reference; the reference accumulates in double):
 *   matmul     |d| <= (K/8 + 16) * 2^-24 * (sum_k |x_k w_k| + |bias|) + 2^-24 * |ref|  (fp32 summation
 *              error bound for lanes of at most K/8 sequential adds; cannot fail by bad luck)
 *              and, over outputs of >= 64 values, rel-L2 <= 1e-6 (seen: <= 3.6e-7 at K ~ 4096;
 *              a much tighter bar on the typical error)
 *   rmsnorm    |d| <= 1e-6 * |ref| + 1e-30  (same float formula; ss in double in both)
 *   rope       |d| <= 1e-6 * (1 + |ref|)     (same formula)
 *   attention  |d| <= 2e-5 * (1 + |ref|)    (fp32 scores and weighted sums, softmax in fp32)
 *   swiglu     |d| <= 1e-6 * |ref|           (same formula)
 *   add, embed exact
 */
#include <stdint.h>

#include "kernels/cpu/fast.h"
#include "kernels/ops.h"
#include "kernels/tensor.h"
#include "test.h"
#include "util/error.h"
#include "util/pool.h"

static const sw_dtype_t dtypes[3] = { SW_DTYPE_F32, SW_DTYPE_F16, SW_DTYPE_BF16 };

/* Paths of sw_ops_cpu: 0 = what the machine supports (AVX2 here), 1 = forced portable. */
static void set_path(int p)
{
    sw_cpu_force_portable(p);
}

/*
 * A weight tensor (N, K) of dtype dt filled from fp32 randoms; its data starts `off` bytes into
 * the returned allocation (*buf, freed by the caller) to test misaligned weights.
 */
static void make_weight(sw_tensor_t *w, void **buf, sw_dtype_t dt, int64_t N, int64_t K,
                        unsigned long long seed, size_t off)
{
    size_t n = (size_t)(N * K), nb = n * sw_dtype_size(dt);
    float *f = sw_test_randv(n, seed, 1.0f);
    unsigned char *tmp = sw_malloc(nb + 1);

    *buf = sw_malloc(nb + off + 1);
    if (!*buf || !tmp)
        abort();
    sw_from_f32(tmp, f, dt, n);
    memcpy((unsigned char *)*buf + off, tmp, nb);
    memset(w, 0, sizeof(*w));
    w->dtype = dt;
    w->ndim = 2;
    w->shape[0] = N;
    w->shape[1] = K;
    w->data = (unsigned char *)*buf + off;
    sw_free(tmp);
    sw_free(f);
}

/* w[n, k] as fp32, for the error bound. */
static float w_get(const sw_tensor_t *w, int64_t i)
{
    const unsigned char *p = (const unsigned char *)w->data + (size_t)i * sw_dtype_size(w->dtype);
    float f;
    uint16_t h;

    if (w->dtype == SW_DTYPE_F32) {
        memcpy(&f, p, 4);
        return f;
    }
    memcpy(&h, p, 2);
    return w->dtype == SW_DTYPE_F16 ? sw_f16_to_f32(h) : sw_bf16_to_f32(h);
}

/*
 * An aligned copy of w for the reference: ref.c reads f32 weights through float pointers, which is
 * undefined (UBSan: misaligned load) for the +2-byte data used to test the fast backend. Caller
 * frees the returned buffer.
 */
static void *aligned_copy(sw_tensor_t *dst, const sw_tensor_t *w)
{
    size_t nb = sw_tensor_nbytes(w);
    void *p = sw_malloc(nb ? nb : 1);

    if (!p)
        abort();
    memcpy(p, w->data, nb);
    *dst = *w;
    dst->data = p;
    return p;
}

static int near(float got, float want, float tol)
{
    return fabsf(got - want) <= tol; /* false for NaN */
}

/* ============================== the reference on hand-computed cases ============================== */

static void test_ref_matmul_hand(void)
{
    const float x[6] = { 1, 2, 3, 4, 5, 6 };           /* (2, 3) */
    const float wf[6] = { 1, 0, -1, 0.5f, 2, 1 };      /* (2, 3), exact in f16 and bf16 */
    const float bias[2] = { 10, -1 };
    const float want_b[4] = { 8, 6.5f, 8, 17 };        /* with bias */
    const float want_nb[4] = { -2, 7.5f, -2, 18 };     /* without */
    uint16_t h[6];
    float y[4];

    for (int d = 0; d < 3; d++) {
        sw_tensor_t w = { .dtype = dtypes[d], .ndim = 2, .shape = { 2, 3 } };
        if (dtypes[d] == SW_DTYPE_F32) {
            w.data = (void *)wf;
        } else {
            sw_from_f32(h, wf, dtypes[d], 6);
            w.data = h;
        }
        sw_ops_ref.matmul(y, x, &w, bias, 2);
        for (int i = 0; i < 4; i++)
            SW_CHECKF(y[i] == want_b[i], "%s y[%d] = %g, want %g", sw_dtype_name(dtypes[d]), i,
                      y[i], want_b[i]);
        sw_ops_ref.matmul(y, x, &w, NULL, 2);
        for (int i = 0; i < 4; i++)
            SW_CHECKF(y[i] == want_nb[i], "%s y[%d] = %g", sw_dtype_name(dtypes[d]), i, y[i]);
    }
}

static void test_ref_rmsnorm_hand(void)
{
    const float x[2] = { 3, 4 }, w[2] = { 1, 2 };
    float y[2];

    /* mean of squares 12.5 */
    sw_ops_ref.rmsnorm(y, x, w, 1, 2, 0.0f);
    SW_CHECKF(near(y[0], 0.8485281f, 1e-6f) && near(y[1], 2.2627417f, 1e-6f), "%g %g", y[0], y[1]);
    /* eps is added inside the root: 1 / sqrt(12.5 + 3.5) = 0.25 */
    sw_ops_ref.rmsnorm(y, x, w, 1, 2, 3.5f);
    SW_CHECKF(y[0] == 0.75f && y[1] == 2.0f, "%g %g", y[0], y[1]);
}

static void test_ref_rope_hand(void)
{
    float x[8] = { 1, 2, 3, 4, 5, 6, 7, 8 }; /* (1, 2 heads, HD 4) */
    const float inv_freq[2] = { 1.0f, 0.01f };
    int32_t pos = 0;
    float v[2] = { 1, 0 }, u[2] = { 1, 2 };
    const float f_half = 0.5f, f_third = 1.0471975511965976f; /* pi/3 */

    sw_ops_ref.rope(x, &pos, 1, 2, 4, inv_freq, 1.0f);
    for (int i = 0; i < 8; i++)
        SW_CHECKF(x[i] == (float)(i + 1), "pos 0 changed x[%d] to %g", i, x[i]);
    /* HD 2: angle = pos * inv_freq; (1, 0) rotates to (cos, sin) */
    pos = 1;
    sw_ops_ref.rope(v, &pos, 1, 1, 2, &f_half, 1.0f);
    SW_CHECKF(near(v[0], 0.87758256f, 1e-7f) && near(v[1], 0.47942554f, 1e-7f), "%g %g", v[0], v[1]);
    /* (1, 2) at pos 1 x pi/3 = 60 degrees, with attn_factor 2 */
    sw_ops_ref.rope(u, &pos, 1, 1, 2, &f_third, 2.0f);
    /* 2 * (cos60 - 2 sin60, 2 cos60 + sin60) = (1 - 2*sqrt3, 2 + sqrt3) */
    SW_CHECKF(near(u[0], -2.4641016f, 1e-6f) && near(u[1], 3.7320508f, 1e-6f), "%g %g", u[0], u[1]);
}

static void test_ref_attention_hand(void)
{
    /* B 1, NKV 1, max_T 4, HD 2 */
    const float k[8] = { 1, 0, 0, 1, 1, 1, 5, 5 };
    const float v[8] = { 1, 2, 3, 4, 5, 6, 100, 100 };
    float q[4] = { 0.3f, -0.7f, 1, 1 }, out[4], scratch[64];

    /* one key: the output is that key's value, whatever the score */
    sw_ops_ref.attention(out, q, k, v, 1, 1, 0, 4, 1, 1, 2, 0, 1.0f, scratch);
    SW_CHECKF(out[0] == 1 && out[1] == 2, "%g %g", out[0], out[1]);
    /* equal scores (q = 0) average the visible values; entry 3 lies beyond pos and is ignored */
    q[0] = q[1] = 0;
    sw_ops_ref.attention(out, q, k, v, 1, 1, 2, 4, 1, 1, 2, 0, 1.0f, scratch);
    SW_CHECKF(near(out[0], 3, 1e-6f) && near(out[1], 4, 1e-6f), "%g %g", out[0], out[1]);
    /* window 1 sees only its own position */
    q[0] = 0.3f;
    sw_ops_ref.attention(out, q, k, v, 1, 1, 2, 4, 1, 1, 2, 1, 1.0f, scratch);
    SW_CHECKF(out[0] == 5 && out[1] == 6, "%g %g", out[0], out[1]);
    /* two keys with scores 0 and ln 3: weights 1/4, 3/4 */
    q[0] = 0;
    q[1] = logf(3.0f);
    sw_ops_ref.attention(out, q, k, v, 1, 1, 1, 4, 1, 1, 2, 0, 1.0f, scratch);
    SW_CHECKF(near(out[0], 2.5f, 1e-6f) && near(out[1], 3.5f, 1e-6f), "%g %g", out[0], out[1]);
    /* prefill T 2 from pos0 0, two query heads sharing the KV head (GQA); q head 1 = 0 */
    {
        float q2[8] = { 0, 0, 0, 0, 0, 0, 0, 0 }, o2[8];
        sw_ops_ref.attention(o2, q2, k, v, 1, 2, 0, 4, 2, 1, 2, 0, 1.0f, scratch);
        /* t 0 sees key 0; t 1 averages keys 0, 1; both heads equal */
        SW_CHECKF(o2[0] == 1 && o2[1] == 2 && o2[2] == 1 && o2[3] == 2, "%g %g", o2[0], o2[2]);
        SW_CHECKF(near(o2[4], 2, 1e-6f) && near(o2[5], 3, 1e-6f) && near(o2[6], 2, 1e-6f),
                  "%g %g %g", o2[4], o2[5], o2[6]);
    }
}

static void test_ref_small_ops_hand(void)
{
    float g[3] = { 0, 1, -2 }, u[3] = { 5, 2, 1 }, o[3];
    float y[2] = { 1, 2 }, a[2] = { 0.5f, -3 };
    const float tab[6] = { 1, 2, 3, 4, 5, 6 }; /* (3, 2) */
    uint16_t tb[6]; /* the f16/bf16 table */
    int32_t ids[3] = { 2, 0, 2 };
    float e[6];

    sw_ops_ref.swiglu(o, g, u, 3);
    SW_CHECKF(o[0] == 0 && near(o[1], 1.4621172f, 1e-6f) && near(o[2], -0.23840584f, 1e-6f),
              "%g %g %g", o[0], o[1], o[2]);
    sw_ops_ref.add(y, a, 2);
    SW_CHECK(y[0] == 1.5f && y[1] == -1);
    for (int d = 0; d < 3; d++) {
        sw_tensor_t t = { .dtype = dtypes[d], .ndim = 2, .shape = { 3, 2 } };
        if (dtypes[d] != SW_DTYPE_F32)
            sw_from_f32(tb, tab, dtypes[d], 6);
        t.data = dtypes[d] == SW_DTYPE_F32 ? (void *)tab : (void *)tb;
        sw_ops_ref.embed(e, &t, ids, 3);
        SW_CHECK(e[0] == 5 && e[1] == 6 && e[2] == 1 && e[3] == 2 && e[4] == 5 && e[5] == 6);
    }
}

/* ================================ sw_ops_cpu against the reference ================================ */

static const int Ks[] = { 1, 7, 33, 4097 };
static const int Ns[] = { 1, 3, 65 };
static const int Ms[] = { 1, 2, 5, 17 };

/* Returns 0 or prints the first mismatch and returns -1. */
static int check_matmul(const char *what, int path, const sw_tensor_t *w, const float *x,
                        const float *bias, int M)
{
    int64_t N = w->shape[0], K = w->shape[1];
    float *y = sw_malloc(sizeof(float) * (size_t)(M * N));
    float *r = sw_malloc(sizeof(float) * (size_t)(M * N));
    sw_tensor_t wa;
    void *abuf = aligned_copy(&wa, w);
    int bad = 0;

    if (!y || !r)
        abort();
    for (int64_t i = 0; i < M * N; i++)
        y[i] = NAN; /* every output must be written */
    set_path(path);
    sw_ops_cpu.matmul(y, x, w, bias, M);
    set_path(0);
    sw_ops_ref.matmul(r, x, &wa, bias, M);
    sw_free(abuf);
    for (int m = 0; m < M && !bad; m++) {
        for (int64_t n = 0; n < N && !bad; n++) {
            double sabs = 0;
            for (int64_t k = 0; k < K; k++)
                sabs += fabs((double)x[m * K + k] * w_get(w, n * K + k));
            double babs = bias ? fabs(bias[n]) : 0.0;
            double tol = ((double)K / 8 + 16) * 0x1p-24 * (sabs + babs) +
                         0x1p-24 * fabs(r[m * N + n]);
            double d = fabs((double)y[m * N + n] - r[m * N + n]);
            if (!(d <= tol)) {
                fprintf(stderr, "  %s path %s: %s M=%d N=%lld K=%lld bias=%d: y[%d,%lld] = %.9g, "
                        "ref %.9g (|d| %.3g > tol %.3g)\n", what, path ? "portable" : "simd",
                        sw_dtype_name(w->dtype), M, (long long)N, (long long)K, bias != NULL, m,
                        (long long)n, y[m * N + n], r[m * N + n], d, tol);
                bad = 1;
            }
        }
    }
    if (!bad && M * N >= 64 && sw_rel_l2(y, r, (size_t)(M * N)) > 1e-6) {
        fprintf(stderr, "  %s: %s M=%d N=%lld K=%lld rel-L2 %.3g > 1e-6\n", what,
                sw_dtype_name(w->dtype), M, (long long)N, (long long)K,
                sw_rel_l2(y, r, (size_t)(M * N)));
        bad = 1;
    }
    sw_free(y);
    sw_free(r);
    return bad ? -1 : 0;
}

static void test_cpu_matmul_shapes(void)
{
    unsigned long long seed = 100;
    int cases = 0;

    for (int path = 0; path < 2; path++)
    for (int d = 0; d < 3; d++)
    for (size_t ki = 0; ki < sizeof(Ks) / sizeof(Ks[0]); ki++)
    for (size_t ni = 0; ni < sizeof(Ns) / sizeof(Ns[0]); ni++)
    for (size_t mi = 0; mi < sizeof(Ms) / sizeof(Ms[0]); mi++)
    for (int variant = 0; variant < 2; variant++) {
        /* variant 0: aligned, no bias; variant 1: data 2 bytes off alignment, with bias */
        int K = Ks[ki], N = Ns[ni], M = Ms[mi], failed;
        sw_tensor_t w;
        void *buf;
        float *x = sw_test_randv((size_t)M * K, ++seed, 1.0f);
        float *bias = variant ? sw_test_randv((size_t)N, ++seed, 1.0f) : NULL;

        make_weight(&w, &buf, dtypes[d], N, K, ++seed, variant ? 2 : 0);
        failed = check_matmul("matmul", path, &w, x, bias, M);
        sw_free(buf);
        sw_free(bias);
        sw_free(x);
        SW_CHECK(failed == 0);
        cases++;
    }
    SW_CHECK(cases == 2 * 3 * 4 * 3 * 4 * 2);
}

/* Larger shapes: many row blocks split over the pool, K a multiple of 16 and of the tile width. */
static void test_cpu_matmul_large(void)
{
    static const int shapes[][3] = { /* M, N, K */
        { 1, 1000, 4096 }, { 1, 257, 1024 }, { 1, 64, 4104 }, { 3, 130, 1536 }, { 8, 96, 2048 },
        { 32, 33, 1100 },
    };
    unsigned long long seed = 5000;

    for (int path = 0; path < 2; path++)
    for (int d = 0; d < 3; d++)
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
        int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2], failed;
        sw_tensor_t w;
        void *buf;
        float *x = sw_test_randv((size_t)M * K, ++seed, 0.5f);
        float *bias = sw_test_randv((size_t)N, ++seed, 2.0f);

        make_weight(&w, &buf, dtypes[d], N, K, ++seed, (s & 1) ? 2 : 0);
        failed = check_matmul("matmul-large", path, &w, x, (s & 2) ? bias : NULL, M);
        sw_free(buf);
        sw_free(bias);
        sw_free(x);
        SW_CHECK(failed == 0);
    }
}

static void test_cpu_rmsnorm(void)
{
    static const int Hs[] = { 1, 7, 64, 4097 };
    static const int Mr[] = { 1, 3, 40 };
    unsigned long long seed = 200;

    for (int path = 0; path < 2; path++)
    for (size_t hi = 0; hi < 4; hi++)
    for (size_t mi = 0; mi < 3; mi++)
    for (int inplace = 0; inplace < 2; inplace++) {
        int H = Hs[hi], M = Mr[mi];
        size_t n = (size_t)M * H;
        float *x = sw_test_randv(n, ++seed, 3.0f), *w = sw_test_randv((size_t)H, ++seed, 1.0f);
        float *y = sw_malloc(n * 4), *r = sw_malloc(n * 4);
        int bad = -1;

        sw_ops_ref.rmsnorm(r, x, w, M, H, 1e-5f);
        set_path(path);
        if (inplace) {
            sw_ops_cpu.rmsnorm(x, x, w, M, H, 1e-5f);
            memcpy(y, x, n * 4);
        } else {
            sw_ops_cpu.rmsnorm(y, x, w, M, H, 1e-5f);
        }
        set_path(0);
        for (size_t i = 0; i < n && bad < 0; i++)
            if (!(fabsf(y[i] - r[i]) <= 1e-6f * fabsf(r[i]) + 1e-30f))
                bad = (int)i;
        if (bad >= 0)
            fprintf(stderr, "  path %d H=%d M=%d inplace=%d: y[%d] = %.9g, ref %.9g\n", path, H,
                    M, inplace, bad, y[bad], r[bad]);
        sw_free(x);
        sw_free(w);
        sw_free(y);
        sw_free(r);
        SW_CHECK(bad < 0);
    }
}

static void test_cpu_rope(void)
{
    static const int HDs[] = { 2, 64, 130, 256 };
    unsigned long long seed = 300;

    for (int path = 0; path < 2; path++)
    for (size_t hi = 0; hi < 4; hi++)
    for (int M = 1; M <= 40; M += 13)
    for (int nh = 1; nh <= 5; nh += 2) {
        int HD = HDs[hi], half = HD / 2;
        size_t n = (size_t)M * nh * HD;
        float *x = sw_test_randv(n, ++seed, 1.0f), *r = sw_malloc(n * 4), inv[128];
        int32_t pos[40];
        unsigned long long s = seed;
        int bad = -1;
        float af = (M & 1) ? 1.0f : 1.25f;

        for (int i = 0; i < half; i++)
            inv[i] = (float)pow(10000.0, -2.0 * i / HD);
        for (int m = 0; m < M; m++)
            pos[m] = (int32_t)(sw_test_rand_u64(&s) % 131072);
        memcpy(r, x, n * 4);
        sw_ops_ref.rope(r, pos, M, nh, HD, inv, af);
        set_path(path);
        sw_ops_cpu.rope(x, pos, M, nh, HD, inv, af);
        set_path(0);
        for (size_t i = 0; i < n && bad < 0; i++)
            if (!(fabsf(x[i] - r[i]) <= 1e-6f * (1 + fabsf(r[i]))))
                bad = (int)i;
        if (bad >= 0)
            fprintf(stderr, "  path %d HD=%d M=%d nh=%d: x[%d] = %.9g, ref %.9g\n", path, HD, M,
                    nh, bad, x[bad], r[bad]);
        sw_free(x);
        sw_free(r);
        SW_CHECK(bad < 0);
    }
}

struct attn_case {
    int B, T, pos0, max_T, NH, NKV, HD, window;
};

static void test_cpu_attention(void)
{
    static const struct attn_case cases[] = {
        { 1, 1, 0, 8, 4, 4, 64, 0 },      /* first decode step: one key */
        { 1, 1, 37, 64, 8, 2, 64, 0 },    /* decode, GQA 4 */
        { 2, 1, 100, 128, 4, 1, 128, 0 }, /* decode, B 2, GQA 4 (NKV 1), HD 128 */
        { 1, 9, 0, 16, 4, 4, 32, 0 },     /* prefill from 0 */
        { 2, 7, 20, 40, 8, 2, 7, 0 },     /* prefill at pos0 > 0, odd HD */
        { 1, 12, 30, 50, 4, 4, 64, 5 },   /* sliding window */
        { 1, 1, 90, 100, 8, 2, 64, 16 },  /* decode with a window */
        { 2, 33, 3, 40, 6, 3, 24, 0 },    /* GQA 2, odd T */
        { 1, 64, 200, 300, 8, 8, 64, 0 }, /* enough work to run on the pool */
    };
    unsigned long long seed = 400;
    size_t sfl = 0;

    for (int path = 0; path < 2; path++)
    for (size_t ci = 0; ci < sizeof(cases) / sizeof(cases[0]); ci++) {
        const struct attn_case *c = &cases[ci];
        size_t nq = (size_t)c->B * c->T * c->NH * c->HD;
        size_t nkv = (size_t)c->B * c->NKV * c->max_T * c->HD;
        float *q = sw_test_randv(nq, ++seed, 1.0f), *k = sw_test_randv(nkv, ++seed, 1.0f);
        float *v = sw_test_randv(nkv, ++seed, 1.0f);
        float *o = sw_malloc(nq * 4), *r = sw_malloc(nq * 4), *scratch;
        float scale = 1.0f / sqrtf((float)c->HD);
        int bad = -1;

        sfl = sw_attention_scratch_floats(c->max_T);
        scratch = sw_malloc(sfl * 4);
        if (!o || !r || !scratch)
            abort();
        /* entries past pos0 + T must be ignored: poison them */
        for (int b = 0; b < c->B * c->NKV; b++)
            for (int j = c->pos0 + c->T; j < c->max_T; j++)
                for (int d = 0; d < c->HD; d++) {
                    k[((size_t)b * c->max_T + j) * c->HD + d] = NAN;
                    v[((size_t)b * c->max_T + j) * c->HD + d] = NAN;
                }
        for (size_t i = 0; i < sfl; i++)
            scratch[i] = NAN;
        sw_ops_ref.attention(r, q, k, v, c->B, c->T, c->pos0, c->max_T, c->NH, c->NKV, c->HD,
                             c->window, scale, scratch);
        set_path(path);
        sw_ops_cpu.attention(o, q, k, v, c->B, c->T, c->pos0, c->max_T, c->NH, c->NKV, c->HD,
                             c->window, scale, scratch);
        set_path(0);
        for (size_t i = 0; i < nq && bad < 0; i++)
            if (!(fabsf(o[i] - r[i]) <= 2e-5f * (1 + fabsf(r[i]))))
                bad = (int)i;
        if (bad >= 0)
            fprintf(stderr, "  path %d case %zu: out[%d] = %.9g, ref %.9g\n", path, ci, bad,
                    o[bad], r[bad]);
        sw_free(q);
        sw_free(k);
        sw_free(v);
        sw_free(o);
        sw_free(r);
        sw_free(scratch);
        SW_CHECK(bad < 0);
    }
}

static void test_cpu_elementwise(void)
{
    static const size_t ns[] = { 1, 9, 100003, 300001 };
    unsigned long long seed = 500;

    for (int path = 0; path < 2; path++)
    for (size_t ni = 0; ni < 4; ni++) {
        size_t n = ns[ni];
        float *g = sw_test_randv(n, ++seed, 4.0f), *u = sw_test_randv(n, ++seed, 1.0f);
        float *o = sw_malloc(n * 4), *r = sw_malloc(n * 4), *y = sw_test_randv(n, seed, 1.0f);
        float *ry = sw_test_randv(n, seed, 1.0f);
        size_t bad = n;

        sw_ops_ref.swiglu(r, g, u, n);
        set_path(path);
        sw_ops_cpu.swiglu(o, g, u, n);
        for (size_t i = 0; i < n && bad == n; i++)
            if (!(fabsf(o[i] - r[i]) <= 1e-6f * fabsf(r[i])))
                bad = i;
        SW_CHECKF(bad == n, "swiglu n=%zu [%zu] %g vs %g", n, bad, o[bad], r[bad]);
        /* in place over gate */
        sw_ops_cpu.swiglu(g, g, u, n);
        SW_CHECK(memcmp(g, o, n * 4) == 0);
        sw_ops_ref.add(ry, u, n);
        sw_ops_cpu.add(y, u, n);
        set_path(0);
        SW_CHECKF(memcmp(y, ry, n * 4) == 0, "add n=%zu", n);
        sw_free(g);
        sw_free(u);
        sw_free(o);
        sw_free(r);
        sw_free(y);
        sw_free(ry);
    }
}

static void test_cpu_embed(void)
{
    static const int Hs[] = { 1, 7, 4097 };
    static const int Mr[] = { 1, 3, 40 };
    unsigned long long seed = 600;
    const int V = 50;

    for (int path = 0; path < 2; path++)
    for (int d = 0; d < 3; d++)
    for (int hi = 0; hi < 3; hi++)
    for (int mi = 0; mi < 3; mi++) {
        int H = Hs[hi], M = Mr[mi];
        sw_tensor_t t, ta;
        void *buf, *abuf;
        int32_t ids[40];
        size_t n = (size_t)M * H;
        float *y = sw_malloc(n * 4), *r = sw_malloc(n * 4);
        unsigned long long s = ++seed;
        int same;

        make_weight(&t, &buf, dtypes[d], V, H, seed, (size_t)(mi & 1) * 2);
        for (int m = 0; m < M; m++)
            ids[m] = (int32_t)(sw_test_rand_u64(&s) % (unsigned)V);
        ids[0] = V - 1;
        abuf = aligned_copy(&ta, &t);
        sw_ops_ref.embed(r, &ta, ids, M);
        sw_free(abuf);
        set_path(path);
        sw_ops_cpu.embed(y, &t, ids, M);
        set_path(0);
        same = memcmp(y, r, n * 4) == 0;
        sw_free(y);
        sw_free(r);
        sw_free(buf);
        SW_CHECKF(same, "embed path %d %s H=%d M=%d", path, sw_dtype_name(dtypes[d]), H, M);
    }
}

/* embed converts every f16 and bf16 bit pattern as tensor.h does (NaNs: any NaN of that sign). */
static void test_cpu_convert_all_halves(void)
{
    uint16_t *tab = sw_malloc(65536 * 2);
    float *y = sw_malloc(65536 * 4);
    int32_t ids[256];
    int bad = -1;

    for (uint32_t i = 0; i < 65536; i++)
        tab[i] = (uint16_t)i;
    for (int i = 0; i < 256; i++)
        ids[i] = 255 - i;
    for (int path = 0; path < 2 && bad < 0; path++)
    for (int d = 1; d < 3 && bad < 0; d++) {
        sw_tensor_t t = { .dtype = dtypes[d], .ndim = 2, .shape = { 256, 256 }, .data = tab };
        memset(y, 0, 65536 * 4);
        set_path(path);
        sw_ops_cpu.embed(y, &t, ids, 256);
        set_path(0);
        for (uint32_t m = 0; m < 256 && bad < 0; m++)
            for (uint32_t i = 0; i < 256 && bad < 0; i++) {
                uint16_t h = (uint16_t)((255 - m) * 256 + i);
                float want = d == 1 ? sw_f16_to_f32(h) : sw_bf16_to_f32(h), got = y[m * 256 + i];
                if (isnan(want) ? !(isnan(got) && !!signbit(got) == !!signbit(want))
                                : sw_f32_bits(got) != sw_f32_bits(want)) {
                    fprintf(stderr, "  path %d %s 0x%04x -> %a, want %a\n", path,
                            sw_dtype_name(dtypes[d]), h, (double)got, (double)want);
                    bad = (int)h;
                }
            }
    }
    sw_free(tab);
    sw_free(y);
    SW_CHECK(bad < 0);
}

/* No op allocates: with every allocation failing, each still runs and the live count holds. */
static void test_cpu_no_alloc(void)
{
    sw_tensor_t w;
    void *buf;
    float *x = sw_test_randv(8 * 2048, 1, 1.0f), *y = sw_malloc(8 * 512 * 4), *r = sw_malloc(8 * 512 * 4);
    float *q = sw_test_randv(64 * 64, 2, 1.0f), *kv = sw_test_randv(8 * 128 * 64, 3, 1.0f);
    float *sc = sw_malloc(sw_attention_scratch_floats(128) * 4), *o = sw_malloc(64 * 64 * 4);
    int32_t pos[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };
    long live;

    make_weight(&w, &buf, SW_DTYPE_BF16, 512, 2048, 4, 0);
    sw_ops_ref.matmul(r, x, &w, NULL, 8);
    live = sw_alloc_live();
    sw_alloc_fail_after(0);
    for (int path = 0; path < 2; path++) {
        set_path(path);
        sw_ops_cpu.matmul(y, x, &w, NULL, 1);
        sw_ops_cpu.matmul(y, x, &w, NULL, 8);
        sw_ops_cpu.rmsnorm(x, x, x, 8, 2048, 1e-5f);
        sw_ops_cpu.rope(q, pos, 8, 8, 64, x, 1.0f);
        sw_ops_cpu.attention(o, q, kv, kv, 1, 8, 100, 128, 8, 8, 64, 0, 0.125f, sc);
        sw_ops_cpu.swiglu(x, x, x, 8 * 2048);
        sw_ops_cpu.add(x, q, 64 * 64);
        sw_ops_cpu.embed(y, &w, pos, 2);
    }
    set_path(0);
    sw_alloc_fail_after(-1);
    SW_CHECK(sw_alloc_live() == live);
    sw_free(buf);
    sw_free(x);
    sw_free(y);
    sw_free(r);
    sw_free(q);
    sw_free(kv);
    sw_free(sc);
    sw_free(o);
}

int main(void)
{
    long live0;

    /* start the global pool first, so its allocations do not count as leaks below */
    fprintf(stderr, "# sw_ops_cpu simd: %s, pool threads: %d\n", sw_cpu_simd_name(),
            sw_pool_threads(sw_pool_global()));
    live0 = sw_alloc_live();
    SW_RUN(test_ref_matmul_hand);
    SW_RUN(test_ref_rmsnorm_hand);
    SW_RUN(test_ref_rope_hand);
    SW_RUN(test_ref_attention_hand);
    SW_RUN(test_ref_small_ops_hand);
    SW_RUN(test_cpu_matmul_shapes);
    SW_RUN(test_cpu_matmul_large);
    SW_RUN(test_cpu_rmsnorm);
    SW_RUN(test_cpu_rope);
    SW_RUN(test_cpu_attention);
    SW_RUN(test_cpu_elementwise);
    SW_RUN(test_cpu_embed);
    SW_RUN(test_cpu_convert_all_halves);
    SW_RUN(test_cpu_no_alloc);
    if (sw_alloc_live() != live0) {
        fprintf(stderr, "leak: %ld allocations live\n", sw_alloc_live() - live0);
        sw_test_failed++;
    }
    return sw_test_summary("test-kernels");
}
