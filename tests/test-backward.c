/*
 * test-backward.c - input gradients (kernels/backward.h, pipeline/backward.h) against finite
 * differences.
 *
 * The oracle is central finite differences: no torch (no autograd reference) is available where
 * these tests were written, so each gradient is checked against the forward it differentiates.
 *   - Ops: each backward op (both tables) against central differences of a double-precision
 *     re-implementation of its forward, on small random shapes, for the scalar L = <y, r> with a
 *     random r, over every input element. The double forward is itself checked against the
 *     library's fp32 forward op (sw_ops_ref), so the oracle differentiates what the model runs.
 *     Bar: max |analytic - fd| <= 2e-6 * max |fd| (fp32 analytic against a double oracle).
 *     matmul_dx covers f32, f16, bf16, NF4 (plain and nested absmax) and Int8 weights; for Int8
 *     the oracle is the forward with the dequantized weight (LLM.int8()'s backward as in
 *     bitsandbytes, see backward.h), whose distance to the Int8 forward is checked loosely.
 *   - The fast table against the reference on larger shapes that cross its tiles, AVX2 and
 *     portable paths: rel-L2 <= 1e-5.
 *   - Spans: grad_in of sw_span_backward on the fixtures (all blocks; dense as stored and NF4
 *     quantized on load) against central differences of the fp32 span forward (sw_span_forward,
 *     reference ops) with loss <out, r>: per input coordinate at a sample of positions, and along
 *     random directions over the whole input. FD in fp32 carries rounding noise; Richardson
 *     extrapolation of steps 2h and h removes the h^2 term; the fp32 noise floor of the forward
 *     then dominates (measured 4e-5..3e-4 relative for directions, 2e-4..4e-4 for coordinates).
 *     Bars: directional derivatives within 2e-3 relative, coordinates within 2e-3 of
 *     max(|fd|, rms(grad_in)); a missing or wrong term shows up at 1e-2 and above. Also: backward through
 *     [k, L) then [0, k) (the chain rule across servers) equals the whole span's, and the fast
 *     CPU backward equals the reference within 1e-5 rel-L2.
 */
#include <stdint.h>
#include <stdlib.h>

#include "kernels/backward.h"
#include "kernels/cpu/fast.h"
#include "kernels/ops.h"
#include "kernels/quant.h"
#include "pipeline/backward.h"
#include "pipeline/codec.h"
#include "pipeline/model.h"
#include "pipeline/server_check.h"
#include "test.h"
#include "util/error.h"
#include "util/pool.h"

#define OP_TOL 2e-6
#define FAST_TOL 1e-5

static const sw_bwd_ops_t *const tables[] = { &sw_bwd_ops_ref, &sw_bwd_ops_cpu };

/* max |a - b| / max |b| */
static double max_rel(const float *a, const double *b, size_t n)
{
    double num = 0.0, den = 0.0;

    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        num = d > num ? d : num;
        den = fabs(b[i]) > den ? fabs(b[i]) : den;
    }
    return den > 0 ? num / den : num;
}

static double dot_d(const double *a, const float *r, size_t n)
{
    double s = 0.0;

    for (size_t i = 0; i < n; i++)
        s += a[i] * r[i];
    return s;
}

/* ======================================================================== double forwards */

typedef struct {
    int kind;            /* which op */
    /* shapes */
    int M, N, K, H, nh, HD, B, T, NH, NKV, window;
    float eps, scale, attn_factor;
    const float *w;      /* matmul: dequantized W (N, K); rmsnorm: w (H) */
    const int32_t *pos;
    const float *inv_freq;
    /* attention: the inputs not being differentiated */
    const double *q, *k, *v;
    int wrt;             /* attention: 0 q, 1 k, 2 v */
} fwd_t;

enum { OP_MATMUL, OP_RMSNORM, OP_ROPE, OP_ATTN, OP_SWIGLU_G, OP_SWIGLU_U };

static void attn_d(double *out, const double *q, const double *k, const double *v, const fwd_t *f)
{
    int T = f->T, HD = f->HD, group = f->NH / f->NKV;
    double *p = malloc(sizeof(double) * (size_t)T);

    for (int b = 0; b < f->B; b++)
        for (int t = 0; t < T; t++) {
            int lo = (f->window > 0 && t - f->window + 1 > 0) ? t - f->window + 1 : 0;
            for (int h = 0; h < f->NH; h++) {
                size_t qo = (((size_t)b * T + t) * f->NH + h) * HD;
                size_t ko = ((size_t)b * f->NKV + (size_t)(h / group)) * T * HD;
                double mx = -INFINITY, sum = 0.0;
                for (int j = lo; j <= t; j++) {
                    double s = 0.0;
                    for (int d = 0; d < HD; d++)
                        s += q[qo + d] * k[ko + (size_t)j * HD + d];
                    p[j] = s * f->scale;
                    mx = p[j] > mx ? p[j] : mx;
                }
                for (int j = lo; j <= t; j++) {
                    p[j] = exp(p[j] - mx);
                    sum += p[j];
                }
                for (int d = 0; d < HD; d++) {
                    double acc = 0.0;
                    for (int j = lo; j <= t; j++)
                        acc += p[j] * v[ko + (size_t)j * HD + d];
                    out[qo + d] = acc / sum;
                }
            }
        }
    free(p);
}

/* y = f(x) in double. x is the differentiated input; other operands come from f (and aux for
 * swiglu: the other factor). */
static void fwd_d(const fwd_t *f, const double *x, const double *aux, double *y)
{
    switch (f->kind) {
    case OP_MATMUL:
        for (int m = 0; m < f->M; m++)
            for (int n = 0; n < f->N; n++) {
                double s = 0.0;
                for (int k = 0; k < f->K; k++)
                    s += x[(size_t)m * f->K + k] * f->w[(size_t)n * f->K + k];
                y[(size_t)m * f->N + n] = s;
            }
        return;
    case OP_RMSNORM:
        for (int m = 0; m < f->M; m++) {
            const double *xr = x + (size_t)m * f->H;
            double ss = 0.0;
            for (int i = 0; i < f->H; i++)
                ss += xr[i] * xr[i];
            double r = 1.0 / sqrt(ss / f->H + f->eps);
            for (int i = 0; i < f->H; i++)
                y[(size_t)m * f->H + i] = f->w[i] * xr[i] * r;
        }
        return;
    case OP_ROPE: {
        int half = f->HD / 2;
        for (int m = 0; m < f->M; m++)
            for (int h = 0; h < f->nh; h++) {
                size_t o = ((size_t)m * f->nh + h) * f->HD;
                for (int i = 0; i < half; i++) {
                    float ang = (float)f->pos[m] * f->inv_freq[i]; /* as the op: fp32 angle */
                    double c = cos((double)ang) * f->attn_factor, s = sin((double)ang) * f->attn_factor;
                    y[o + i] = x[o + i] * c - x[o + i + half] * s;
                    y[o + i + half] = x[o + i + half] * c + x[o + i] * s;
                }
            }
        return;
    }
    case OP_ATTN:
        attn_d(y, f->wrt == 0 ? x : f->q, f->wrt == 1 ? x : f->k, f->wrt == 2 ? x : f->v, f);
        return;
    case OP_SWIGLU_G:
    case OP_SWIGLU_U:
        for (int i = 0; i < f->M; i++) {
            double g = f->kind == OP_SWIGLU_G ? x[i] : aux[i];
            double u = f->kind == OP_SWIGLU_G ? aux[i] : x[i];
            y[i] = g / (1.0 + exp(-g)) * u;
        }
        return;
    }
}

/* fd (nx) = central differences of <fwd(x), r> at x, step h per element. */
static void fd_grad(const fwd_t *f, const double *x0, size_t nx, const double *aux,
                    const float *r, size_t ny, double h, double *fd)
{
    double *x = malloc(sizeof(double) * nx), *y = malloc(sizeof(double) * ny);

    memcpy(x, x0, sizeof(double) * nx);
    for (size_t i = 0; i < nx; i++) {
        double lp, lm;
        x[i] = x0[i] + h;
        fwd_d(f, x, aux, y);
        lp = dot_d(y, r, ny);
        x[i] = x0[i] - h;
        fwd_d(f, x, aux, y);
        lm = dot_d(y, r, ny);
        x[i] = x0[i];
        fd[i] = (lp - lm) / (2 * h);
    }
    free(x);
    free(y);
}

static double *to_d(const float *x, size_t n)
{
    double *d = malloc(sizeof(double) * (n ? n : 1));

    for (size_t i = 0; i < n; i++)
        d[i] = x[i];
    return d;
}

/* max |fp32 op output - double forward| / max |double forward| */
static double fwd_err(const float *y32, const double *yd, size_t n)
{
    return max_rel(y32, yd, n);
}

/* ======================================================================== op tests */

/* Builds weight (N, K) of dtype dt from dense values (64-byte aligned + `skew` bytes). */
static int make_weight(const float *dense, int64_t N, int64_t K, sw_dtype_t dt, int nested,
                       sw_tensor_t *w, void **buf)
{
    sw_tensor_t d = { SW_DTYPE_F32, 2, { N, K }, (void *)dense, 0, NULL };

    *buf = NULL;
    memset(w, 0, sizeof(*w));
    if (dt == SW_DTYPE_NF4)
        return sw_quantize_nf4(&d, 64, nested, w);
    if (dt == SW_DTYPE_I8)
        return sw_quantize_int8(&d, 2.5f, w);
    /* dense: +2 bytes off alignment, as checkpoint mappings may be */
    size_t es = sw_dtype_size(dt), n = (size_t)(N * K);
    unsigned char *p = sw_alloc_aligned(64, n * es + 64);
    if (!p)
        return -ENOMEM;
    sw_from_f32(p + 64, dense, dt, n);
    memmove(p + 2, p + 64, n * es);
    *buf = p;
    *w = d;
    w->dtype = dt;
    w->data = p + 2;
    return 0;
}

static void test_matmul_dx_fd(void)
{
    enum { M = 3, N = 20, K = 72 }; /* 72: NF4 blocks of 64 straddle rows */
    static const struct { sw_dtype_t dt; int nested; } cases[] = {
        { SW_DTYPE_F32, 0 }, { SW_DTYPE_F16, 0 }, { SW_DTYPE_BF16, 0 },
        { SW_DTYPE_NF4, 0 }, { SW_DTYPE_NF4, 1 }, { SW_DTYPE_I8, 0 },
    };
    float *x = sw_test_randv(M * K, 11, 1.0f), *r = sw_test_randv(M * N, 12, 1.0f);
    float *wd = sw_test_randv(N * K, 13, 0.2f), *deq = sw_malloc(sizeof(float) * N * K);
    float *y = sw_malloc(sizeof(float) * M * N), *dx = sw_malloc(sizeof(float) * M * K);
    double *xd = to_d(x, M * K), *fd = malloc(sizeof(double) * M * K), *yd = malloc(sizeof(double) * M * N);

    x[5] = 4.0f; /* an Int8 outlier column (threshold 2.5) */
    xd[5] = 4.0;
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        sw_tensor_t w;
        void *buf;
        fwd_t f = { .kind = OP_MATMUL, .M = M, .N = N, .K = K, .w = deq };

        SW_CHECK_OK(make_weight(wd, N, K, cases[c].dt, cases[c].nested, &w, &buf));
        sw_qtensor_dequantize(&w, deq);
        /* the oracle's forward is the library's (Int8: up to the activation quantization) */
        sw_ops_ref.matmul(y, x, &w, NULL, M);
        fwd_d(&f, xd, NULL, yd);
        double fe = fwd_err(y, yd, M * N);
        SW_CHECKF(fe <= (cases[c].dt == SW_DTYPE_I8 ? 3e-2 : 1e-6), "%s forward vs double: %g",
                  sw_dtype_name(cases[c].dt), fe);
        fd_grad(&f, xd, M * K, NULL, r, M * N, 1e-3, fd);
        for (int t = 0; t < 2; t++) {
            for (int acc = 0; acc < 2; acc++) {
                for (int i = 0; i < M * K; i++)
                    dx[i] = acc ? 1.0f : 0.0f;
                tables[t]->matmul_dx(dx, r, &w, M, acc);
                for (int i = 0; acc && i < M * K; i++)
                    dx[i] -= 1.0f;
                double e = max_rel(dx, fd, M * K);
                fprintf(stderr, "  matmul_dx %-5s%s %-9s acc %d: max rel %.2g (forward %.2g)\n",
                        sw_dtype_name(cases[c].dt), cases[c].nested ? "+dq" : "   ",
                        tables[t]->name, acc, e, fe);
                SW_CHECKF(e <= OP_TOL, "%s %s: %g", sw_dtype_name(cases[c].dt), tables[t]->name, e);
            }
        }
        sw_qtensor_free(&w);
        sw_free(buf);
    }
    sw_free(x); sw_free(r); sw_free(wd); sw_free(deq); sw_free(y); sw_free(dx);
    free(xd); free(fd); free(yd);
}

static void test_rmsnorm_fd(void)
{
    enum { M = 4, H = 48 };
    float *x = sw_test_randv(M * H, 21, 1.0f), *r = sw_test_randv(M * H, 22, 1.0f);
    float *w = sw_test_randv(H, 23, 1.0f), *y = sw_malloc(sizeof(float) * M * H);
    float *dx = sw_malloc(sizeof(float) * M * H);
    double *xd = to_d(x, M * H), *fd = malloc(sizeof(double) * M * H), *yd = malloc(sizeof(double) * M * H);
    fwd_t f = { .kind = OP_RMSNORM, .M = M, .H = H, .eps = 1e-5f, .w = w };

    for (int i = 0; i < H; i++)
        x[i] *= 0.01f; /* a row where eps matters */
    for (int i = 0; i < H; i++)
        xd[i] = x[i];
    sw_ops_ref.rmsnorm(y, x, w, M, H, f.eps);
    fwd_d(&f, xd, NULL, yd);
    SW_CHECKF(fwd_err(y, yd, M * H) <= 1e-6, "forward %g", fwd_err(y, yd, M * H));
    fd_grad(&f, xd, M * H, NULL, r, M * H, 1e-6, fd);
    for (int t = 0; t < 2; t++) {
        tables[t]->rmsnorm(dx, r, x, w, M, H, f.eps);
        double e = max_rel(dx, fd, M * H);
        fprintf(stderr, "  rmsnorm %-9s max rel %.2g\n", tables[t]->name, e);
        SW_CHECKF(e <= OP_TOL, "%s: %g", tables[t]->name, e);
        /* in place */
        memcpy(dx, r, sizeof(float) * M * H);
        tables[t]->rmsnorm(dx, dx, x, w, M, H, f.eps);
        SW_CHECK(max_rel(dx, fd, M * H) <= OP_TOL);
    }
    sw_free(x); sw_free(r); sw_free(w); sw_free(y); sw_free(dx);
    free(xd); free(fd); free(yd);
}

static void test_rope_fd(void)
{
    enum { M = 5, NHr = 3, HD = 16 };
    float *x = sw_test_randv(M * NHr * HD, 31, 1.0f), *r = sw_test_randv(M * NHr * HD, 32, 1.0f);
    float *y = sw_malloc(sizeof(float) * M * NHr * HD), *inv = sw_malloc(sizeof(float) * HD / 2);
    int32_t pos[M] = { 0, 1, 7, 300, 4095 };
    size_t n = M * NHr * HD;
    double *xd = to_d(x, n), *fd = malloc(sizeof(double) * n), *yd = malloc(sizeof(double) * n);
    fwd_t f = { .kind = OP_ROPE, .M = M, .nh = NHr, .HD = HD, .pos = pos, .inv_freq = inv,
                .attn_factor = 1.25f };

    for (int i = 0; i < HD / 2; i++)
        inv[i] = (float)pow(10000.0, -2.0 * i / HD);
    memcpy(y, x, sizeof(float) * n);
    sw_ops_ref.rope(y, pos, M, NHr, HD, inv, f.attn_factor);
    fwd_d(&f, xd, NULL, yd);
    SW_CHECKF(fwd_err(y, yd, n) <= 1e-6, "forward %g", fwd_err(y, yd, n));
    fd_grad(&f, xd, n, NULL, r, n, 1e-4, fd);
    for (int t = 0; t < 2; t++) {
        memcpy(y, r, sizeof(float) * n);
        tables[t]->rope(y, pos, M, NHr, HD, inv, f.attn_factor);
        double e = max_rel(y, fd, n);
        fprintf(stderr, "  rope %-9s max rel %.2g\n", tables[t]->name, e);
        SW_CHECKF(e <= OP_TOL, "%s: %g", tables[t]->name, e);
    }
    sw_free(x); sw_free(r); sw_free(y); sw_free(inv);
    free(xd); free(fd); free(yd);
}

static void test_attention_fd(void)
{
    enum { B = 2, T = 7, NH = 4, NKV = 2, HD = 8 };
    size_t nq = (size_t)B * T * NH * HD, nk = (size_t)B * NKV * T * HD;
    float *q = sw_test_randv(nq, 41, 1.0f), *k = sw_test_randv(nk, 42, 1.0f);
    float *v = sw_test_randv(nk, 43, 1.0f), *r = sw_test_randv(nq, 44, 1.0f);
    float *y = sw_malloc(sizeof(float) * nq), *dq = sw_malloc(sizeof(float) * nq);
    float *dk = sw_malloc(sizeof(float) * nk), *dv = sw_malloc(sizeof(float) * nk);
    size_t ns = sw_attention_bwd_scratch_floats(T), nsf = sw_attention_scratch_floats(T);
    float *scratch = sw_malloc(sizeof(float) * (ns > nsf ? ns : nsf));
    double *qd = to_d(q, nq), *kd = to_d(k, nk), *vd = to_d(v, nk);
    double *fd = malloc(sizeof(double) * nq), *yd = malloc(sizeof(double) * nq);

    for (int window = 0; window <= 3; window += 3) {
        fwd_t f = { .kind = OP_ATTN, .B = B, .T = T, .NH = NH, .NKV = NKV, .HD = HD,
                    .window = window, .scale = 0.5f, .q = qd, .k = kd, .v = vd };
        sw_ops_ref.attention(y, q, k, v, B, T, 0, T, NH, NKV, HD, window, f.scale, scratch);
        fwd_d(&f, qd, NULL, yd);
        SW_CHECKF(fwd_err(y, yd, nq) <= 1e-6, "forward %g", fwd_err(y, yd, nq));
        for (int t = 0; t < 2; t++) {
            tables[t]->attention(dq, dk, dv, r, q, k, v, B, T, NH, NKV, HD, window, f.scale,
                                 scratch);
            const float *an[3] = { dq, dk, dv };
            const double *x0[3] = { qd, kd, vd };
            size_t nx[3] = { nq, nk, nk };
            for (int wrt = 0; wrt < 3; wrt++) {
                f.wrt = wrt;
                fd_grad(&f, x0[wrt], nx[wrt], NULL, r, nq, 1e-5, fd);
                double e = max_rel(an[wrt], fd, nx[wrt]);
                fprintf(stderr, "  attention window %d %-9s d%c max rel %.2g\n", window,
                        tables[t]->name, "qkv"[wrt], e);
                SW_CHECKF(e <= OP_TOL, "window %d %s d%c: %g", window, tables[t]->name,
                          "qkv"[wrt], e);
            }
        }
    }
    sw_free(q); sw_free(k); sw_free(v); sw_free(r); sw_free(y); sw_free(dq); sw_free(dk);
    sw_free(dv); sw_free(scratch);
    free(qd); free(kd); free(vd); free(fd); free(yd);
}

static void test_swiglu_fd(void)
{
    enum { N = 200 };
    float *g = sw_test_randv(N, 51, 3.0f), *u = sw_test_randv(N, 52, 1.0f);
    float *r = sw_test_randv(N, 53, 1.0f), *y = sw_malloc(sizeof(float) * N);
    float *dg = sw_malloc(sizeof(float) * N), *du = sw_malloc(sizeof(float) * N);
    double *gd = to_d(g, N), *ud = to_d(u, N), *fdg = malloc(sizeof(double) * N);
    double *fdu = malloc(sizeof(double) * N), *yd = malloc(sizeof(double) * N);
    fwd_t fg = { .kind = OP_SWIGLU_G, .M = N }, fu = { .kind = OP_SWIGLU_U, .M = N };

    sw_ops_ref.swiglu(y, g, u, N);
    fwd_d(&fg, gd, ud, yd);
    SW_CHECKF(fwd_err(y, yd, N) <= 1e-6, "forward %g", fwd_err(y, yd, N));
    fd_grad(&fg, gd, N, ud, r, N, 1e-6, fdg);
    fd_grad(&fu, ud, N, gd, r, N, 1e-6, fdu);
    for (int t = 0; t < 2; t++) {
        tables[t]->swiglu(dg, du, r, g, u, N);
        double eg = max_rel(dg, fdg, N), eu = max_rel(du, fdu, N);
        fprintf(stderr, "  swiglu %-9s dgate %.2g dup %.2g\n", tables[t]->name, eg, eu);
        SW_CHECKF(eg <= OP_TOL && eu <= OP_TOL, "%s: %g %g", tables[t]->name, eg, eu);
        /* dgate in place over dout */
        memcpy(dg, r, sizeof(float) * N);
        tables[t]->swiglu(dg, du, dg, g, u, N);
        SW_CHECK(max_rel(dg, fdg, N) <= OP_TOL && max_rel(du, fdu, N) <= OP_TOL);
    }
    sw_free(g); sw_free(u); sw_free(r); sw_free(y); sw_free(dg); sw_free(du);
    free(gd); free(ud); free(fdg); free(fdu); free(yd);
}

/* The fast table against the reference on shapes that cross its tiles, both SIMD paths. */
static void test_fast_matches_ref(void)
{
    enum { M = 70, N = 37, K = 300, B = 2, T = 40, NH = 6, NKV = 2, HD = 16 };
    static const sw_dtype_t dts[] = { SW_DTYPE_F32, SW_DTYPE_F16, SW_DTYPE_BF16, SW_DTYPE_NF4,
                                      SW_DTYPE_I8 };
    float *dy = sw_test_randv(M * N, 61, 1.0f), *wd = sw_test_randv(N * K, 62, 0.1f);
    float *a = sw_malloc(sizeof(float) * M * K), *b = sw_malloc(sizeof(float) * M * K);
    size_t nq = (size_t)B * T * NH * HD, nk = (size_t)B * NKV * T * HD;
    float *q = sw_test_randv(nq, 63, 1.0f), *k = sw_test_randv(nk, 64, 1.0f);
    float *v = sw_test_randv(nk, 65, 1.0f), *g = sw_test_randv(nq, 66, 1.0f);
    float *o1 = sw_malloc(sizeof(float) * (nq + 2 * nk)), *o2 = sw_malloc(sizeof(float) * (nq + 2 * nk));
    float *scratch = sw_malloc(sizeof(float) * sw_attention_bwd_scratch_floats(T));

    for (int portable = 0; portable < 2; portable++) {
        sw_cpu_force_portable(portable);
        for (size_t d = 0; d < sizeof(dts) / sizeof(dts[0]); d++) {
            sw_tensor_t w;
            void *buf;
            SW_CHECK_OK(make_weight(wd, N, K, dts[d], 1, &w, &buf));
            sw_bwd_ops_ref.matmul_dx(a, dy, &w, M, 0);
            sw_bwd_ops_cpu.matmul_dx(b, dy, &w, M, 0);
            double e = sw_rel_l2(b, a, (size_t)M * K);
            fprintf(stderr, "  fast matmul_dx %-5s %s: rel-L2 %.2g\n", sw_dtype_name(dts[d]),
                    sw_cpu_simd_name(), e);
            sw_qtensor_free(&w);
            sw_free(buf);
            SW_CHECKF(e <= FAST_TOL, "%s %s: %g", sw_dtype_name(dts[d]), sw_cpu_simd_name(), e);
        }
        for (int window = 0; window <= 5; window += 5) {
            sw_bwd_ops_ref.attention(o1, o1 + nq, o1 + nq + nk, g, q, k, v, B, T, NH, NKV, HD,
                                     window, 0.25f, scratch);
            sw_bwd_ops_cpu.attention(o2, o2 + nq, o2 + nq + nk, g, q, k, v, B, T, NH, NKV, HD,
                                     window, 0.25f, scratch);
            double e = sw_rel_l2(o2, o1, nq + 2 * nk);
            fprintf(stderr, "  fast attention window %d %s: rel-L2 %.2g\n", window,
                    sw_cpu_simd_name(), e);
            SW_CHECKF(e <= FAST_TOL, "attention: %g", e);
        }
    }
    sw_cpu_force_portable(0);
    sw_free(dy); sw_free(wd); sw_free(a); sw_free(b); sw_free(q); sw_free(k); sw_free(v);
    sw_free(g); sw_free(o1); sw_free(o2); sw_free(scratch);
}

/* ======================================================================== spans */

typedef struct {
    const char *name;
    int B, T;
    sw_quant_t quant;
} span_case_t;

static void span_fd_case(const span_case_t *sc)
{
    char dir[1024];
    sw_model_t *m = NULL;
    sw_span_t *s = NULL, *lo = NULL, *hi = NULL;
    sw_load_opts_t o = SW_LOAD_OPTS_DEFAULT;
    int B = sc->B, T = sc->T, H, L;
    size_t n;
    float *x, *r, *g, *g2, *work, *xs, *d;
    unsigned long long seed = 77;

    snprintf(dir, sizeof(dir), "%s/tests/fixtures/%s", getenv("SW_SOURCE_ROOT"), sc->name);
    o.quant = sc->quant;
    SW_CHECK_OK(sw_model_open(dir, &m));
    H = sw_model_config(m)->hidden_size;
    L = sw_model_config(m)->num_layers;
    SW_CHECK_OK(sw_span_load(m, 0, L, &o, &s));
    n = (size_t)B * T * H;
    x = sw_test_randv(n, 101, 1.0f);
    r = sw_test_randv(n, 102, 1.0f);
    g = sw_malloc(n * sizeof(float));
    g2 = sw_malloc(n * sizeof(float));
    work = sw_malloc(n * sizeof(float));
    xs = sw_malloc(n * sizeof(float));
    d = sw_malloc(n * sizeof(float));

    SW_CHECK_OK(sw_span_backward(s, &sw_ops_ref, x, r, g, B, T));

    /* L(x + t dir) for the direction in d */
#define LOSS(tstep, outv)                                                                    \
    do {                                                                                     \
        sw_kv_t *kv_ = NULL;                                                                 \
        double acc_ = 0.0;                                                                   \
        for (size_t i_ = 0; i_ < n; i_++)                                                    \
            work[i_] = x[i_] + (float)(tstep) * d[i_];                                       \
        SW_CHECK_OK(sw_kv_create(s, B, T, &kv_));                                            \
        int e_ = sw_span_forward(s, kv_, &sw_ops_ref, work, B, T);                           \
        sw_kv_free(kv_);                                                                     \
        SW_CHECK_OK(e_);                                                                     \
        for (size_t i_ = 0; i_ < n; i_++)                                                    \
            acc_ += (double)work[i_] * r[i_];                                                \
        outv = acc_;                                                                         \
    } while (0)
    /* Richardson: (4 D(h) - D(2h)) / 3 with D central differences */
#define DERIV(hstep, outv)                                                                   \
    do {                                                                                     \
        double p1_, m1_, p2_, m2_;                                                           \
        LOSS(hstep, p1_); LOSS(-(hstep), m1_); LOSS(2 * (hstep), p2_); LOSS(-2 * (hstep), m2_); \
        double d1_ = (p1_ - m1_) / (2 * (hstep)), d2_ = (p2_ - m2_) / (4 * (hstep));         \
        outv = (4 * d1_ - d2_) / 3;                                                          \
    } while (0)

    double rms = 0.0;
    for (size_t i = 0; i < n; i++)
        rms += (double)g[i] * g[i];
    rms = sqrt(rms / n);
    /* directional derivatives along random directions over the whole input */
    double worst_dir = 0.0, worst_coord = 0.0;
    for (int k = 0; k < 3; k++) {
        double fd, an = 0.0;
        float *rd = sw_test_randv(n, 200 + k, 1.0f);
        memcpy(d, rd, n * sizeof(float));
        sw_free(rd);
        for (size_t i = 0; i < n; i++)
            an += (double)g[i] * d[i];
        DERIV(1e-3, fd);
        double e = fabs(an - fd) / fabs(fd);
        worst_dir = e > worst_dir ? e : worst_dir;
        SW_CHECKF(e <= 2e-3, "%s direction %d: analytic %.8g, fd %.8g (rel %g)", sc->name, k, an,
                  fd, e);
    }
    /* single coordinates: first, middle and last token of each sequence, random channels */
    memset(d, 0, n * sizeof(float));
    for (int k = 0; k < 12; k++) {
        int b = k % B, t = k / B % 3 == 0 ? 0 : k / B % 3 == 1 ? T / 2 : T - 1;
        int ch = (int)(sw_test_rand_u64(&seed) % (unsigned long long)H);
        size_t i = ((size_t)b * T + t) * H + ch;
        double fd;
        d[i] = 1.0f;
        DERIV(1e-2, fd);
        d[i] = 0.0f;
        double den = fabs(fd) > rms ? fabs(fd) : rms, e = fabs(g[i] - fd) / den;
        worst_coord = e > worst_coord ? e : worst_coord;
        SW_CHECKF(e <= 2e-3, "%s x[%d,%d,%d]: analytic %.8g, fd %.8g (%g of max(|fd|, rms %g))",
                  sc->name, b, t, ch, g[i], fd, e, rms);
    }
#undef DERIV
#undef LOSS
    /* the fast backward equals the reference */
    SW_CHECK_OK(sw_span_backward(s, &sw_ops_cpu, x, r, g2, B, T));
    double ef = sw_rel_l2(g2, g, n);
    SW_CHECKF(ef <= FAST_TOL, "%s: cpu vs reference backward rel-L2 %g", sc->name, ef);
    /* chain rule across spans: [k, L) then [0, k), grads in place */
    if (L >= 2) {
        int k = L / 2;
        sw_kv_t *kv = NULL;
        SW_CHECK_OK(sw_span_load(m, 0, k, &o, &lo));
        SW_CHECK_OK(sw_span_load(m, k, L, &o, &hi));
        memcpy(xs, x, n * sizeof(float));
        SW_CHECK_OK(sw_kv_create(lo, B, T, &kv));
        SW_CHECK_OK(sw_span_forward(lo, kv, &sw_ops_ref, xs, B, T));
        sw_kv_free(kv);
        memcpy(g2, r, n * sizeof(float));
        SW_CHECK_OK(sw_span_backward(hi, &sw_ops_ref, xs, g2, g2, B, T));
        SW_CHECK_OK(sw_span_backward(lo, &sw_ops_ref, x, g2, g2, B, T));
        double ec = sw_rel_l2(g2, g, n);
        SW_CHECKF(ec <= 1e-6, "%s: [%d,%d) then [0,%d) vs whole span rel-L2 %g", sc->name, k, L,
                  k, ec);
        fprintf(stderr, "  %-24s %-4s B %d T %2d: directions %.2g, coordinates %.2g, fast %.2g, "
                "chained %.2g\n", sc->name, sw_quant_name(sc->quant), B, T, worst_dir,
                worst_coord, ef, ec);
    }
    sw_span_free(lo);
    sw_span_free(hi);
    sw_free(x); sw_free(r); sw_free(g); sw_free(g2); sw_free(work); sw_free(xs); sw_free(d);
    sw_span_free(s);
    sw_model_close(m);
}

static void test_span_fd(void)
{
    static const span_case_t cases[] = {
        { "llama-mha-tied", 2, 9, SW_QUANT_AUTO },
        { "llama-gqa-llama3", 2, 10, SW_QUANT_AUTO },
        { "qwen2-bias", 1, 12, SW_QUANT_AUTO },
        /* T 20 > max_position_embeddings 16: dynamic RoPE rescaled; window 8 */
        { "mistral-window-dynamic", 2, 20, SW_QUANT_AUTO },
        { "llama-gqa-llama3", 1, 8, SW_QUANT_NF4 },
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        span_fd_case(&cases[i]);
        if (sw_test_cur_failed)
            return;
    }
}

static void test_span_errors(void)
{
    char dir[1024];
    sw_model_t *m = NULL;
    sw_span_t *s = NULL;
    float x[4] = { 0 };
    size_t bytes = 0;

    snprintf(dir, sizeof(dir), "%s/tests/fixtures/llama-mha-tied", getenv("SW_SOURCE_ROOT"));
    SW_CHECK_OK(sw_model_open(dir, &m));
    SW_CHECK_OK(sw_span_load(m, 0, 1, NULL, &s));
    SW_CHECK(sw_span_backward(s, &sw_ops_cpu, x, x, x, 0, 1) == -EINVAL);
    SW_CHECK(sw_span_backward(s, &sw_ops_cpu, x, x, x, 1, 0) == -EINVAL);
    SW_CHECK(sw_span_backward_bytes(s, 1 << 20, 1 << 20, &bytes) == SW_ELIMIT);
    SW_CHECK_OK(sw_span_backward_bytes(s, 1, 16, &bytes));
    SW_CHECK(bytes > 16 * 64 * 4);
    /* an allocation failure is an error, not a crash */
    sw_alloc_fail_after(0);
    int r = sw_span_backward(s, &sw_ops_cpu, x, x, x, 1, 1);
    sw_alloc_fail_after(-1);
    SW_CHECK(r == -ENOMEM);
    sw_span_free(s);
    sw_model_close(m);
}

/* The server's check of a backward request refuses more tokens than --max-backward-tokens (a
 * backward keeps every block's input: its memory is bounded separately from forward calls). */
static void test_backward_token_limit(void)
{
    enum { B = 2, T = 3, H = 8 };
    float x[B * T * H] = { 0 };
    uint8_t hx[SW_CODEC_MAX_HEADER], hg[SW_CODEC_MAX_HEADER], pay[2 * B * T * H * 4];
    sw_codec_opts_t none = { 0 };
    sw_tensor_header_t th;
    int64_t shape[3] = { B, T, H };
    size_t lx, lg;
    Swarmd__BackwardRequest q = SWARMD__BACKWARD_REQUEST__INIT;
    sw_serve_limits_t l = { .start = 0, .end = 4, .H = H, .max_batch = 64, .max_position = 64,
                            .max_cache = 64, .cache_left = 64, .max_backward = 5 };
    sw_serve_call_t c;

    SW_CHECK_OK(sw_codec_encode(NULL, &none, x, 3, shape, &th, pay, sizeof(pay) / 2));
    SW_CHECK_OK(sw_codec_header_pack(&th, hx, sizeof(hx), &lx));
    SW_CHECK_OK(sw_codec_encode(NULL, &none, x, 3, shape, &th, pay + sizeof(pay) / 2, sizeof(pay) / 2));
    SW_CHECK_OK(sw_codec_header_pack(&th, hg, sizeof(hg), &lg));
    q.start_block = 1;
    q.end_block = 3;
    q.hidden.data = hx;
    q.hidden.len = lx;
    q.grad.data = hg;
    q.grad.len = lg;
    SW_CHECK(sw_serve_check_backward(&l, &q, sizeof(pay), &c) == SW_ELIMIT); /* 6 > 5 */
    SW_CHECK(strstr(sw_err_detail(), "--max-backward-tokens") != NULL);
    l.max_backward = 6;
    SW_CHECK_OK(sw_serve_check_backward(&l, &q, sizeof(pay), &c));
    SW_CHECK(c.B == B && c.T == T && c.a == 1 && c.b == 3);
    l.max_backward = 0; /* 0: only max_batch bounds it */
    SW_CHECK_OK(sw_serve_check_backward(&l, &q, sizeof(pay), &c));
}

int main(void)
{
    SW_RUN(test_backward_token_limit);
    SW_RUN(test_matmul_dx_fd);
    SW_RUN(test_rmsnorm_fd);
    SW_RUN(test_rope_fd);
    SW_RUN(test_attention_fd);
    SW_RUN(test_swiglu_fd);
    SW_RUN(test_fast_matches_ref);
    SW_RUN(test_span_fd);
    SW_RUN(test_span_errors);
    return sw_test_summary("backward");
}
