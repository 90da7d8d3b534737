/*
 * test-sampling.c - the sampler, the stop checker and the generation defaults (pipeline/sampling.h).
 *
 * Expected values are computed here independently of the code under test: the PRNG is
 * re-implemented from its published definition (splitmix64, xoshiro256**) to pin the sequence of
 * ids for a seed; the distributions that temperature, top-k and top-p should give are computed by
 * sorting in double; the statistical checks draw enough times that their tolerance is > 5
 * standard errors, and each case also checks that the likely wrong implementations (temperature
 * ignored, top-k/top-p off by one, ties dropped) would miss it by several tolerances, so the test
 * can fail.
 */
#include <errno.h>
#include <stdint.h>
#include <unistd.h>

#include "pipeline/local.h"
#include "pipeline/sampling.h"
#include "test.h"
#include "util/error.h"

/* ================================ an independent reference ==================================== */

static uint64_t ref_splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

typedef struct {
    uint64_t s[4];
} ref_rng_t;

static void ref_seed(ref_rng_t *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = ref_splitmix(&seed);
}

static uint64_t ref_next(ref_rng_t *r)
{
    uint64_t *s = r->s;
    uint64_t x = s[1] * 5;
    uint64_t result = ((x << 7) | (x >> 57)) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = (s[3] << 45) | (s[3] >> 19);
    return result;
}

/*
 * The expected distribution (V <= 64) for logits l after temperature T, top-k and top-p, computed
 * by a full sort in double (order: larger logit first, then larger id). Writes probs[V].
 * `topp_incl`: the classic off-by-one (keep while the mass INCLUDING the id is < p) for the
 * power checks.
 */
static void ref_dist(const float *l, int V, float T, int k, float p, int topp_incl, double *probs)
{
    float x[64];
    int order[64], keep[64] = {0};
    double w[64], tot = 0, mass = 0;

    for (int i = 0; i < V; i++) {
        x[i] = T > 0 ? l[i] / T : l[i];
        order[i] = i;
    }
    for (int i = 0; i < V; i++) /* selection sort, descending, ties: larger id first */
        for (int j = i + 1; j < V; j++)
            if (x[order[j]] > x[order[i]] || (x[order[j]] == x[order[i]] && order[j] > order[i])) {
                int t = order[i];
                order[i] = order[j];
                order[j] = t;
            }
    for (int i = 0; i < V; i++)
        keep[order[i]] = k <= 0 || x[order[i]] >= x[order[k - 1 < V ? k - 1 : V - 1]];
    for (int i = 0; i < V; i++)
        w[i] = keep[i] ? exp((double)x[i] - (double)x[order[0]]) : 0;
    for (int i = 0; i < V; i++)
        tot += w[i];
    if (p < 1) {
        for (int i = 0; i < V; i++) {
            int id = order[i];
            if (!keep[id])
                continue;
            if ((topp_incl ? mass + w[id] : mass) >= p * tot && !(topp_incl && mass == 0))
                keep[id] = 0;
            mass += w[id];
        }
        tot = 0;
        for (int i = 0; i < V; i++)
            tot += keep[i] ? w[i] : 0;
    }
    for (int i = 0; i < V; i++)
        probs[i] = keep[i] ? w[i] / tot : 0;
}

static double max_abs_diff(const double *a, const double *b, int n)
{
    double m = 0;
    for (int i = 0; i < n; i++)
        if (fabs(a[i] - b[i]) > m)
            m = fabs(a[i] - b[i]);
    return m;
}

static sw_sampler_params_t params(int greedy, float T, int k, float p, float rp, uint64_t seed)
{
    sw_sampler_params_t sp = {
        .greedy = greedy, .temperature = T, .top_k = k, .top_p = p, .repetition_penalty = rp,
        .seed = seed,
    };
    return sp;
}

/* ============================================ sampler ========================================= */

static void test_greedy_is_argmax(void)
{
    const int V = 1000;
    sw_sampler_t *s, *t0;
    sw_sampler_params_t p = params(1, 0.8f, 5, 0.5f, 1.0f, 7), q = params(0, 0.0f, 0, 1.0f, 1.0f, 7);

    SW_CHECK_OK(sw_sampler_new(&p, V, &s));
    SW_CHECK_OK(sw_sampler_new(&q, V, &t0)); /* temperature 0 without the greedy flag */
    for (int trial = 0; trial < 50; trial++) {
        float *l = sw_test_randv(V, 100 + trial, 3.0f);
        /* ties for the maximum: the first must win */
        if (trial % 3 == 0) {
            int a = sw_argmax(l, V);
            l[(a + 17) % V] = l[a];
            l[(a + V - 5) % V] = l[a];
        }
        if (trial % 5 == 0)
            l[trial % V] = -INFINITY;
        int want = sw_argmax(l, V), got = sw_sampler_sample(s, l, V), got0 = sw_sampler_sample(t0, l, V);
        sw_free(l);
        SW_CHECKF(got == want && got0 == want, "trial %d: greedy %d, temperature 0 %d, sw_argmax %d",
                  trial, got, got0, want);
    }
    /* all -inf: greedy is defined (id 0, as sw_argmax) */
    float ninf[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
    sw_sampler_free(s);
    SW_CHECK_OK(sw_sampler_new(&p, 4, &s));
    SW_CHECK(sw_sampler_sample(s, ninf, 4) == 0);
    sw_sampler_free(s);
    sw_sampler_free(t0);
}

static void test_top_k1_is_greedy(void)
{
    const int V = 5000;
    sw_sampler_t *s;
    sw_sampler_params_t p = params(0, 1.7f, 1, 1.0f, 1.0f, 99);

    SW_CHECK_OK(sw_sampler_new(&p, V, &s));
    for (int trial = 0; trial < 200; trial++) {
        float *l = sw_test_randv(V, 7000 + trial, 2.0f);
        int want = sw_argmax(l, V), got = sw_sampler_sample(s, l, V);
        sw_free(l);
        SW_CHECKF(got == want, "trial %d: top-k 1 gave %d, argmax %d", trial, got, want);
    }
    sw_sampler_free(s);
}

/* The ids for seed 1234 follow from the PRNG definition and the documented draw. */
static void test_pinned_sequence(void)
{
    const float l[6] = {0.5f, 2.0f, -1.0f, 1.25f, 0.0f, 1.9f};
    const int V = 6, N = 64;
    sw_sampler_t *s, *s2;
    sw_sampler_params_t p = params(0, 1.0f, 0, 1.0f, 1.0f, 1234);
    ref_rng_t rng;
    double w[6], tot = 0, m = 2.0;
    int got[64], differ = 0;

    for (int i = 0; i < V; i++) {
        w[i] = exp((double)l[i] - m);
        tot += w[i];
    }
    ref_seed(&rng, 1234);
    SW_CHECK_OK(sw_sampler_new(&p, V, &s));
    for (int n = 0; n < N; n++) {
        double u = (double)(ref_next(&rng) >> 11) * 0x1.0p-53 * tot, acc = 0;
        int want = V - 1;
        for (int i = 0; i < V; i++) {
            acc += w[i];
            if (acc > u) {
                want = i;
                break;
            }
        }
        got[n] = sw_sampler_sample(s, l, V);
        SW_CHECKF(got[n] == want, "draw %d: got id %d, the PRNG definition gives %d", n, got[n], want);
    }
    /* reset restarts the PRNG: the same ids again */
    sw_sampler_reset(s);
    for (int n = 0; n < N; n++)
        SW_CHECK(sw_sampler_sample(s, l, V) == got[n]);
    /* another seed gives another sequence */
    p.seed = 1235;
    SW_CHECK_OK(sw_sampler_new(&p, V, &s2));
    for (int n = 0; n < N; n++)
        differ += sw_sampler_sample(s2, l, V) != got[n];
    SW_CHECK(differ > 10);
    sw_sampler_free(s);
    sw_sampler_free(s2);
}

/*
 * Draws N ids with params p from logits l and checks the frequencies against the expected
 * distribution within tol; also checks each wrong distribution in `wrong` is > 3 tol away from
 * the expected one (else the case could not tell them apart).
 */
static int check_freq(const char *name, const float *l, int V, sw_sampler_params_t p,
                      const double *want, const double (*wrong)[16], int n_wrong, double tol)
{
    const int N = 200000;
    int count[64] = {0};
    double freq[64];
    sw_sampler_t *s;

    for (int i = 0; i < n_wrong; i++)
        if (max_abs_diff(wrong[i], want, V) < 3 * tol) {
            fprintf(stderr, "  %s: wrong distribution %d is only %.4f from the right one\n", name, i,
                    max_abs_diff(wrong[i], want, V));
            return 0;
        }
    if (sw_sampler_new(&p, V, &s) < 0)
        return 0;
    for (int n = 0; n < N; n++) {
        int id = sw_sampler_sample(s, l, V);
        if (id < 0 || id >= V) {
            sw_sampler_free(s);
            return 0;
        }
        count[id]++;
    }
    sw_sampler_free(s);
    for (int i = 0; i < V; i++)
        freq[i] = (double)count[i] / N;
    if (max_abs_diff(freq, want, V) > tol) {
        fprintf(stderr, "  %s: frequencies differ from the expected probabilities by %.4f > %.4f\n",
                name, max_abs_diff(freq, want, V), tol);
        for (int i = 0; i < V; i++)
            fprintf(stderr, "    id %d: %.4f expected %.4f\n", i, freq[i], want[i]);
        return 0;
    }
    for (int i = 0; i < V; i++)
        if (want[i] == 0 && count[i] != 0) {
            fprintf(stderr, "  %s: id %d has probability 0 but was drawn %d times\n", name, i, count[i]);
            return 0;
        }
    return 1;
}

/*
 * N = 200000 draws: the standard error of a frequency is at most sqrt(0.25 / N) = 0.0011, so a
 * tolerance of 0.006 on the largest deviation over 16 ids is > 5 standard errors (a false alarm
 * about once in 10^6 runs at most); the seeds are fixed anyway, so the outcome is reproducible.
 */
static void test_distributions(void)
{
    const int V = 16;
    const double tol = 0.006;
    float l[16] = {1.0f, 2.2f, 0.3f, -1.0f, 1.9f, 0.0f, 2.5f, -0.5f,
                   1.4f, 0.8f, -2.0f, 1.7f, 0.6f, 2.0f, -3.0f, 1.1f};
    double want[16], wrong[4][16];

    /* temperature alone */
    ref_dist(l, V, 0.7f, 0, 1.0f, 0, want);
    ref_dist(l, V, 1.0f, 0, 1.0f, 0, wrong[0]);
    SW_CHECK(check_freq("T=0.7", l, V, params(0, 0.7f, 0, 1, 1, 1), want, wrong, 1, tol));

    /* top-k */
    ref_dist(l, V, 1.0f, 4, 1.0f, 0, want);
    ref_dist(l, V, 1.0f, 3, 1.0f, 0, wrong[0]);
    ref_dist(l, V, 1.0f, 5, 1.0f, 0, wrong[1]);
    SW_CHECK(check_freq("top-k 4", l, V, params(0, 1.0f, 4, 1, 1, 2), want, wrong, 2, tol));

    /* top-p */
    ref_dist(l, V, 1.0f, 0, 0.75f, 0, want);
    ref_dist(l, V, 1.0f, 0, 0.75f, 1, wrong[0]);
    ref_dist(l, V, 1.0f, 0, 1.0f, 0, wrong[1]);
    SW_CHECK(check_freq("top-p 0.75", l, V, params(0, 1.0f, 0, 0.75f, 1, 3), want, wrong, 2, tol));

    /* all three, in transformers' order (temperature before top-p changes the nucleus) */
    ref_dist(l, V, 1.6f, 6, 0.8f, 0, want);
    ref_dist(l, V, 1.0f, 6, 0.8f, 0, wrong[0]); /* temperature after top-p, or ignored */
    ref_dist(l, V, 1.6f, 6, 0.8f, 1, wrong[1]);
    ref_dist(l, V, 1.6f, 5, 0.8f, 0, wrong[2]);
    ref_dist(l, V, 1.6f, 0, 0.8f, 0, wrong[3]); /* top-k ignored */
    SW_CHECK(check_freq("T=1.6 top-k 6 top-p 0.8", l, V, params(0, 1.6f, 6, 0.8f, 1, 4), want,
                        wrong, 4, tol));

    /* ties at the k-th logit are all kept: top-k 2 over {3, 1, 1, 1, 0...} keeps four ids */
    float t[16] = {3.0f, 1.0f, 1.0f, 0.0f, 1.0f, -1.0f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    ref_dist(t, V, 1.0f, 2, 1.0f, 0, want);
    SW_CHECK(want[1] > 0 && want[2] > 0 && want[4] > 0 && want[3] == 0);
    memset(wrong[0], 0, sizeof(wrong[0])); /* exactly two kept: 0 and the largest id among ties */
    wrong[0][0] = exp(3.0) / (exp(3.0) + exp(1.0));
    wrong[0][4] = exp(1.0) / (exp(3.0) + exp(1.0));
    SW_CHECK(check_freq("top-k 2 with ties", t, V, params(0, 1.0f, 2, 1, 1, 5), want, wrong, 1, tol));

    /* top-k larger than V is off */
    ref_dist(l, V, 1.0f, 0, 1.0f, 0, want);
    SW_CHECK(check_freq("top-k > V", l, V, params(0, 1.0f, 1000, 1, 1, 6), want, NULL, 0, tol));
}

static void test_repetition_penalty(void)
{
    sw_sampler_t *s;
    sw_sampler_params_t p = params(1, 1, 0, 1, 2.0f, 0);
    int32_t seen0[3] = {0, 0, 0}, bad = 9;

    SW_CHECK_OK(sw_sampler_new(&p, 3, &s));
    /* positive logit divided: 2.0 / 2 = 1.0 < 1.5 */
    float a[3] = {2.0f, 1.5f, -4.0f};
    SW_CHECK_OK(sw_sampler_accept(s, seen0, 1));
    SW_CHECK(sw_sampler_sample(s, a, 3) == 1);
    /* the sampled id 1 is now seen too: 1.5 / 2 = 0.75 < 1.0 -> id 0 */
    SW_CHECK(sw_sampler_sample(s, a, 3) == 0);
    /* negative logit multiplied: -0.5 * 2 = -1.0 < -0.8 (dividing would give -0.25 > -0.8) */
    sw_sampler_reset(s);
    float b[3] = {-0.5f, -0.8f, -9.0f};
    SW_CHECK(sw_sampler_sample(s, b, 3) == 0);   /* nothing seen yet */
    SW_CHECK(sw_sampler_sample(s, b, 3) == 1);   /* id 0 seen now */
    /* applied once per distinct id, however often it was seen: 2.0 / 2 = 1.0 > 0.9 */
    sw_sampler_reset(s);
    float c[3] = {2.0f, 0.9f, 0.0f};
    SW_CHECK_OK(sw_sampler_accept(s, seen0, 3));
    SW_CHECK(sw_sampler_sample(s, c, 3) == 0);
    /* an id outside the vocabulary is refused, nothing recorded */
    SW_CHECK(sw_sampler_accept(s, &bad, 1) == -EINVAL);
    sw_sampler_free(s);

    /* with sampling: {1, 1}, id 0 seen, penalty 2 -> softmax(0.5, 1) */
    const float d[2] = {1.0f, 1.0f};
    double want[2] = {exp(0.5) / (exp(0.5) + exp(1.0)), 0}, w0[2][16] = {{0.5, 0.5}};
    want[1] = 1 - want[0];
    sw_sampler_params_t q = params(0, 1.0f, 0, 1.0f, 2.0f, 11);
    int n0 = 0;
    /* reset restarts the PRNG too, so each draw uses a fresh sampler with its own seed */
    for (int n = 0; n < 20000; n++) {
        q.seed = (uint64_t)n;
        SW_CHECK_OK(sw_sampler_new(&q, 2, &s));
        SW_CHECK_OK(sw_sampler_accept(s, seen0, 1));
        n0 += sw_sampler_sample(s, d, 2) == 0;
        sw_sampler_free(s);
    }
    /* 20000 draws: standard error 0.0034; tolerance 0.02 (~6 se); no penalty would give 0.5 */
    SW_CHECKF(fabs(n0 / 20000.0 - want[0]) < 0.02 && fabs(w0[0][0] - want[0]) > 0.1,
              "id 0 drawn %.4f of the time, expected %.4f", n0 / 20000.0, want[0]);
}

static void test_hostile_logits(void)
{
    sw_sampler_t *s;
    sw_sampler_params_t p = params(0, 1.0f, 0, 1.0f, 1.0f, 3), g = params(1, 1, 0, 1, 1, 3);
    float nan_l[4] = {0.0f, NAN, 1.0f, 2.0f};
    float ninf[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
    float pinf[4] = {1.0f, INFINITY, 5.0f, INFINITY};
    int c1 = 0, c3 = 0;

    SW_CHECK_OK(sw_sampler_new(&p, 4, &s));
    SW_CHECK(sw_sampler_sample(s, nan_l, 4) == SW_EFORMAT);
    SW_CHECK(strstr(sw_err_detail(), "token 1") != NULL);
    SW_CHECK(sw_sampler_sample(s, ninf, 4) == SW_EFORMAT);
    SW_CHECK(sw_sampler_sample(s, pinf, 3) == -EINVAL); /* wrong V */
    /* +inf: uniform over the +inf ids */
    for (int n = 0; n < 20000; n++) {
        int id = sw_sampler_sample(s, pinf, 4);
        SW_CHECK(id == 1 || id == 3);
        c1 += id == 1;
        c3 += id == 3;
    }
    SW_CHECKF(abs(c1 - c3) < 1000, "+inf ids drawn %d and %d times", c1, c3); /* 7 se */
    sw_sampler_free(s);
    /* a temperature so small that finite logits overflow to +inf: uniform over those */
    sw_sampler_params_t tiny = params(0, 1e-37f, 0, 1.0f, 1.0f, 3);
    float big[3] = {100.0f, 100.0f, 1.0f};
    SW_CHECK_OK(sw_sampler_new(&tiny, 3, &s));
    c1 = 0;
    for (int n = 0; n < 2000; n++) {
        int id = sw_sampler_sample(s, big, 3);
        SW_CHECK(id == 0 || id == 1);
        c1 += id;
    }
    SW_CHECK(c1 > 800 && c1 < 1200);
    sw_sampler_free(s);
    /* greedy: the first +inf; NaN is an error there too */
    SW_CHECK_OK(sw_sampler_new(&g, 4, &s));
    SW_CHECK(sw_sampler_sample(s, pinf, 4) == 1);
    SW_CHECK(sw_sampler_sample(s, nan_l, 4) == SW_EFORMAT);
    sw_sampler_free(s);
}

static void test_bad_params(void)
{
    sw_sampler_t *s = NULL;
    sw_sampler_params_t p;
    const float bad_f[] = {0.0f, -0.1f, 1.0001f, NAN, INFINITY};

    sw_sampler_params_default(&p);
    SW_CHECK(p.greedy == 1 && p.temperature == 1.0f && p.top_k == 50 && p.top_p == 1.0f &&
             p.repetition_penalty == 1.0f);
    SW_CHECK_OK(sw_sampler_params_check(&p));
    SW_CHECK(sw_sampler_new(&p, 0, &s) == -EINVAL && s == NULL);
    SW_CHECK(sw_sampler_new(&p, -3, &s) == -EINVAL);
    SW_CHECK(sw_sampler_new(&p, (1 << 24) + 1, &s) == -EINVAL);
    for (size_t i = 0; i < sizeof(bad_f) / sizeof(bad_f[0]); i++) {
        sw_sampler_params_t q = p;
        q.top_p = bad_f[i];
        SW_CHECKF(sw_sampler_new(&q, 10, &s) == -EINVAL, "top_p %g accepted", (double)bad_f[i]);
        SW_CHECK(strstr(sw_err_detail(), "top-p") != NULL);
    }
    p.temperature = -1.0f;
    SW_CHECK(sw_sampler_params_check(&p) == -EINVAL);
    p.temperature = NAN;
    SW_CHECK(sw_sampler_params_check(&p) == -EINVAL);
    p.temperature = 1.0f;
    p.top_k = -1;
    SW_CHECK(sw_sampler_params_check(&p) == -EINVAL);
    p.top_k = 0;
    p.repetition_penalty = 0.0f;
    SW_CHECK(sw_sampler_params_check(&p) == -EINVAL);
    p.repetition_penalty = INFINITY;
    SW_CHECK(sw_sampler_params_check(&p) == -EINVAL);
    SW_CHECK(sw_sampler_params_check(NULL) == -EINVAL);
    /* every allocation failing in turn: -ENOMEM and nothing leaked */
    p.repetition_penalty = 1.0f;
    for (long k = 0; k < 8; k++) {
        long live = sw_alloc_live();
        sw_alloc_fail_after(k);
        int r = sw_sampler_new(&p, 100, &s);
        sw_alloc_fail_after(-1);
        if (r == 0) {
            SW_CHECK(k >= 7);
            sw_sampler_free(s);
        } else {
            SW_CHECK(r == -ENOMEM);
        }
        SW_CHECK(sw_alloc_live() == live);
    }
}

/* ========================================= stop checker ======================================= */

/* Pushes pieces (id = index + 100) until a reason; returns it and the shown text in out. */
static int run_stop(sw_stop_t *st, const char *const *pieces, int n, char *out, size_t cap,
                    int *n_pushed)
{
    const char *show;
    size_t len, used = 0;
    int r = 0, i;

    out[0] = 0;
    for (i = 0; i < n && r == 0; i++) {
        r = sw_stop_push(st, 100 + i, pieces[i], strlen(pieces[i]), &show, &len);
        if (r < 0)
            return r;
        if (used + len >= cap)
            return -ENOSPC;
        memcpy(out + used, show, len);
        used += len;
    }
    *n_pushed = i;
    int f = sw_stop_finish(st, NULL, 0, &show, &len);
    if (f < 0)
        return f;
    if (used + len >= cap)
        return -ENOSPC;
    memcpy(out + used, show, len);
    out[used + len] = 0;
    return r ? r : f;
}

static void test_stop_strings(void)
{
    const char *stops[] = {"\nUser:", "XY", "BXYZ"};
    sw_stop_t *st;
    char out[256];
    const char *show;
    size_t len;
    int n;

    SW_CHECK_OK(sw_stop_new(NULL, 0, stops, 1, 0, &st));
    /* a stop string spread over three tokens; what came before it is shown, in order */
    const char *p1[] = {"Hello", " world", "\nUs", "e", "r: more", "never"};
    SW_CHECK(run_stop(st, p1, 6, out, sizeof(out), &n) == SW_STOP_STRING);
    SW_CHECK(strcmp(out, "Hello world") == 0 && n == 5);
    /* further pushes are refused until reset */
    SW_CHECK(sw_stop_push(st, 1, "x", 1, &show, &len) == SW_ESTATE);
    /* held back, then released when the text turns out not to be the stop string */
    sw_stop_reset(st);
    SW_CHECK_OK(sw_stop_push(st, 1, "a\nU", 3, &show, &len));
    SW_CHECK(len == 1 && memcmp(show, "a", 1) == 0);
    SW_CHECK_OK(sw_stop_push(st, 2, "nicorn", 6, &show, &len));
    SW_CHECK(len == 8 && memcmp(show, "\nUnicorn", 8) == 0);
    /* held text at the end of the stream is shown by finish */
    SW_CHECK_OK(sw_stop_push(st, 3, "\n", 1, &show, &len));
    SW_CHECK(len == 0);
    SW_CHECK(sw_stop_finish(st, NULL, 0, &show, &len) == SW_STOP_NONE);
    SW_CHECK(len == 1 && show[0] == '\n');
    SW_CHECK(sw_stop_count(st) == 3);
    /* a stop string completed by the detokenizer's flushed text */
    sw_stop_reset(st);
    SW_CHECK_OK(sw_stop_push(st, 1, "ok\nUse", 6, &show, &len));
    SW_CHECK(len == 2);
    SW_CHECK(sw_stop_finish(st, "r:", 2, &show, &len) == SW_STOP_STRING && len == 0);
    sw_stop_free(st);

    /* the earliest match wins; a match inside one piece cuts it */
    SW_CHECK_OK(sw_stop_new(NULL, 0, stops + 1, 2, 0, &st));
    const char *p2[] = {"aBXYZ tail"};
    SW_CHECK(run_stop(st, p2, 1, out, sizeof(out), &n) == SW_STOP_STRING);
    SW_CHECK(strcmp(out, "a") == 0);
    sw_stop_free(st);

    /* overlapping prefixes: "aba" held, then "bab" makes "ababab": the match starts at 0 */
    const char *ab[] = {"abab"};
    SW_CHECK_OK(sw_stop_new(NULL, 0, ab, 1, 0, &st));
    const char *p3[] = {"x", "aba", "bab"};
    SW_CHECK(run_stop(st, p3, 3, out, sizeof(out), &n) == SW_STOP_STRING);
    SW_CHECK(strcmp(out, "x") == 0);
    sw_stop_reset(st);
    const char *p4[] = {"xab", "ac", "ab"};
    SW_CHECK(run_stop(st, p4, 3, out, sizeof(out), &n) == SW_STOP_NONE);
    SW_CHECK(strcmp(out, "xabacab") == 0 && n == 3);
    sw_stop_free(st);
}

static void test_stop_eos_length(void)
{
    const int32_t eos[2] = {102, 7};
    const char *stops[] = {"END"};
    const char *pieces[] = {"one ", "two ", "EN", "three"};
    sw_stop_t *st;
    char out[256];
    int n;

    /* EOS: its text is not shown, held-back text is (by finish) */
    SW_CHECK_OK(sw_stop_new(eos, 2, stops, 1, 0, &st));
    SW_CHECK(run_stop(st, pieces, 4, out, sizeof(out), &n) == SW_STOP_EOS);
    SW_CHECK(n == 3 && strcmp(out, "one two ") == 0);
    sw_stop_free(st);
    /* max new tokens: the last token's text counts; EOS wins on the same token */
    SW_CHECK_OK(sw_stop_new(eos, 2, stops, 1, 2, &st));
    SW_CHECK(run_stop(st, pieces, 4, out, sizeof(out), &n) == SW_STOP_LENGTH);
    SW_CHECK(n == 2 && strcmp(out, "one two ") == 0);
    sw_stop_free(st);
    SW_CHECK_OK(sw_stop_new(eos, 2, NULL, 0, 3, &st));
    SW_CHECK(run_stop(st, pieces, 4, out, sizeof(out), &n) == SW_STOP_EOS && n == 3);
    sw_stop_reset(st);
    SW_CHECK(run_stop(st, pieces + 3, 1, out, sizeof(out), &n) == SW_STOP_NONE);
    SW_CHECK(strcmp(out, "three") == 0);
    sw_stop_free(st);
}

/*
 * Random pieces over a small alphabet against a reference computed on the whole text: generation
 * stops at the first token after which some stop string occurs in the text so far, and the user
 * sees the text before the earliest occurrence; without a stop, all of it.
 */
static void test_stop_random(void)
{
    const char *stops[] = {"abc", "ca", "bbbb", "cab"};
    unsigned long long seed = 77;

    for (int trial = 0; trial < 3000; trial++) {
        int n_stops = 1 + (int)(sw_test_rand_u64(&seed) % 4), n = 1 + (int)(sw_test_rand_u64(&seed) % 12);
        char pieces[12][6], full[80] = "", out[128];
        const char *pp[12];
        size_t want_len = (size_t)-1;
        int want_reason = SW_STOP_NONE, want_n = n, got_n;
        sw_stop_t *st;

        for (int i = 0; i < n; i++) {
            int len = (int)(sw_test_rand_u64(&seed) % 5);
            for (int j = 0; j < len; j++)
                pieces[i][j] = "abcx"[sw_test_rand_u64(&seed) % 4];
            pieces[i][len] = 0;
            pp[i] = pieces[i];
        }
        for (int i = 0; i < n && want_reason == SW_STOP_NONE; i++) {
            strcat(full, pieces[i]);
            for (int k = 0; k < n_stops; k++) {
                const char *m = strstr(full, stops[k]);
                if (m && (size_t)(m - full) < want_len) {
                    want_len = (size_t)(m - full);
                    want_reason = SW_STOP_STRING;
                    want_n = i + 1;
                }
            }
        }
        if (want_reason == SW_STOP_NONE)
            want_len = strlen(full);
        SW_CHECK_OK(sw_stop_new(NULL, 0, stops, (size_t)n_stops, 0, &st));
        int r = run_stop(st, pp, n, out, sizeof(out), &got_n);
        sw_stop_free(st);
        SW_CHECKF(r == want_reason && got_n == want_n && strlen(out) == want_len &&
                      memcmp(out, full, want_len) == 0,
                  "trial %d: got %d after %d pieces '%s', want %d after %d '%.*s'", trial, r, got_n,
                  out, want_reason, want_n, (int)want_len, full);
    }
}

static void test_stop_bad_args(void)
{
    const char *empty[] = {""}, *ok[] = {"x"};
    const int32_t neg = -1;
    char longs[SW_STOP_MAX_LEN + 2];
    const char *lp[] = {longs};
    const char *many[SW_STOP_MAX_STRINGS + 1];
    sw_stop_t *st = NULL;
    const char *show;
    size_t len;

    SW_CHECK(sw_stop_new(NULL, 0, empty, 1, 0, &st) == -EINVAL && st == NULL);
    SW_CHECK(sw_stop_new(&neg, 1, NULL, 0, 0, &st) == -EINVAL);
    SW_CHECK(sw_stop_new(NULL, 0, NULL, 0, -1, &st) == -EINVAL);
    memset(longs, 'a', sizeof(longs) - 1);
    longs[sizeof(longs) - 1] = 0;
    SW_CHECK(sw_stop_new(NULL, 0, lp, 1, 0, &st) == -EINVAL);
    for (int i = 0; i <= SW_STOP_MAX_STRINGS; i++)
        many[i] = "x";
    SW_CHECK(sw_stop_new(NULL, 0, many, SW_STOP_MAX_STRINGS + 1, 0, &st) == -EINVAL);
    SW_CHECK_OK(sw_stop_new(NULL, 0, ok, 1, 0, &st));
    SW_CHECK(sw_stop_push(st, 1, NULL, 3, &show, &len) == -EINVAL);
    /* a piece far longer than the buffer grows it */
    char big[5000];
    memset(big, 'b', sizeof(big));
    SW_CHECK(sw_stop_push(st, 1, big, sizeof(big), &show, &len) == SW_STOP_NONE);
    SW_CHECK(len == sizeof(big));
    SW_CHECK(sw_stop_push(st, 1, "yyx", 3, &show, &len) == SW_STOP_STRING && len == 2);
    SW_CHECK(sw_stop_finish(st, NULL, 0, &show, &len) == SW_STOP_NONE && len == 0);
    SW_CHECK(sw_stop_finish(st, NULL, 0, &show, &len) == SW_ESTATE);
    sw_stop_free(st);
}

/* ===================================== generation defaults ==================================== */

static int parse(const char *c, const char *g, int V, sw_generation_config_t *out)
{
    return sw_generation_config_parse(c, strlen(c), g, g ? strlen(g) : 0, V, out);
}

static void test_generation_config(void)
{
    sw_generation_config_t g;

    SW_CHECK_OK(parse("{\"eos_token_id\": 2, \"bos_token_id\": 1}", NULL, 32000, &g));
    SW_CHECK(g.n_eos == 1 && g.eos[0] == 2 && g.bos == 1 && !g.has_generation_config);
    SW_CHECK(g.sampling.greedy == 1 && g.sampling.top_k == 50 && g.max_new_tokens == 0);
    /* a list (Llama 3.1), duplicates dropped */
    SW_CHECK_OK(parse("{\"eos_token_id\": [128001, 128008, 128009, 128008]}", NULL, 128256, &g));
    SW_CHECK(g.n_eos == 3 && g.eos[0] == 128001 && g.eos[1] == 128008 && g.eos[2] == 128009);
    SW_CHECK(g.bos == -1);
    /* generation_config.json overrides config.json, and gives the sampling defaults */
    SW_CHECK_OK(parse("{\"eos_token_id\": 128001}",
                      "{\"eos_token_id\": [128001, 128009], \"do_sample\": true, "
                      "\"temperature\": 0.6, \"top_p\": 0.9, \"max_new_tokens\": 256}",
                      128256, &g));
    SW_CHECK(g.n_eos == 2 && g.eos[1] == 128009 && g.has_generation_config);
    SW_CHECK(g.sampling.greedy == 0 && g.sampling.temperature == 0.6f && g.sampling.top_p == 0.9f);
    SW_CHECK(g.sampling.top_k == 50 && g.sampling.repetition_penalty == 1.0f && g.max_new_tokens == 256);
    /* without the key there, config.json's; null means none */
    SW_CHECK_OK(parse("{\"eos_token_id\": 7}", "{\"top_k\": 20, \"repetition_penalty\": 1.1}", 10, &g));
    SW_CHECK(g.n_eos == 1 && g.eos[0] == 7 && g.sampling.top_k == 20 && g.sampling.greedy == 1);
    SW_CHECK_OK(parse("{\"eos_token_id\": null}", NULL, 10, &g));
    SW_CHECK(g.n_eos == 0);

    /* hostile or broken input: refused, output untouched */
    static const struct {
        const char *c, *g;
        int code;
        const char *detail;
    } bad[] = {
        {"{\"eos_token_id\": \"</s>\"}", NULL, SW_EFORMAT, "eos_token_id"},
        {"{\"eos_token_id\": 32000}", NULL, SW_EFORMAT, "outside the vocabulary"},
        {"{\"eos_token_id\": -1}", NULL, SW_EFORMAT, "outside"},
        {"{\"eos_token_id\": [1, 2.5]}", NULL, SW_EFORMAT, "eos_token_id"},
        {"{\"eos_token_id\": [0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]}", NULL, SW_ELIMIT, "more than"},
        {"{\"eos_token_id\": 1e40}", NULL, SW_EFORMAT, "eos_token_id"},
        {"[1]", NULL, SW_EFORMAT, "not a JSON object"},
        {"{", NULL, SW_EFORMAT, "config.json"},
        {"{}", "{\"temperature\": -1}", SW_EFORMAT, "temperature"},
        {"{}", "{\"temperature\": \"hot\"}", SW_EFORMAT, "temperature"},
        {"{}", "{\"top_p\": 0}", SW_EFORMAT, "top_p"},
        {"{}", "{\"top_p\": 1.5}", SW_EFORMAT, "top_p"},
        {"{}", "{\"top_k\": 2.5}", SW_EFORMAT, "top_k"},
        {"{}", "{\"top_k\": -3}", SW_EFORMAT, "top_k"},
        {"{}", "{\"repetition_penalty\": 0}", SW_EFORMAT, "repetition_penalty"},
        {"{}", "{\"do_sample\": \"yes\"}", SW_EFORMAT, "do_sample"},
        {"{}", "{\"max_new_tokens\": -5}", SW_EFORMAT, "max_new_tokens"},
        {"{}", "{\"bos_token_id\": 40000}", SW_EFORMAT, "bos_token_id"},
        {"{}", "{\"a\": 1, \"a\": 2}", SW_EFORMAT, "generation_config.json"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        g.n_eos = 99;
        int r = parse(bad[i].c, bad[i].g, 32000, &g);
        SW_CHECKF(r == bad[i].code && strstr(sw_err_detail(), bad[i].detail) && g.n_eos == 99,
                  "case %zu: returned %d, detail '%s'", i, r, sw_err_detail());
    }
}

static void test_generation_config_load(void)
{
    char dir[] = "/tmp/test-sampling-XXXXXX", path[512];
    sw_generation_config_t g;
    FILE *f;

    SW_CHECK(mkdtemp(dir) != NULL);
    snprintf(path, sizeof(path), "%s/config.json", dir);
    SW_CHECK((f = fopen(path, "w")) != NULL);
    fputs("{\"eos_token_id\": 2, \"vocab_size\": 100}", f);
    fclose(f);
    SW_CHECK_OK(sw_generation_config_load(dir, 100, &g));
    SW_CHECK(g.n_eos == 1 && g.eos[0] == 2 && !g.has_generation_config);
    snprintf(path, sizeof(path), "%s/generation_config.json", dir);
    SW_CHECK((f = fopen(path, "w")) != NULL);
    fputs("{\"eos_token_id\": [2, 3], \"top_p\": 7}", f);
    fclose(f);
    SW_CHECK(sw_generation_config_load(dir, 100, &g) == SW_EFORMAT);
    SW_CHECK(strstr(sw_err_detail(), dir) && strstr(sw_err_detail(), "top_p"));
    SW_CHECK((f = fopen(path, "w")) != NULL);
    fputs("{\"eos_token_id\": [2, 3]}", f);
    fclose(f);
    SW_CHECK_OK(sw_generation_config_load(dir, 100, &g));
    SW_CHECK(g.n_eos == 2 && g.has_generation_config);
    unlink(path);
    snprintf(path, sizeof(path), "%s/config.json", dir);
    unlink(path);
    SW_CHECK(sw_generation_config_load(dir, 100, &g) == -ENOENT);
    rmdir(dir);
}

int main(void)
{
    SW_RUN(test_greedy_is_argmax);
    SW_RUN(test_top_k1_is_greedy);
    SW_RUN(test_pinned_sequence);
    SW_RUN(test_distributions);
    SW_RUN(test_repetition_penalty);
    SW_RUN(test_hostile_logits);
    SW_RUN(test_bad_params);
    SW_RUN(test_stop_strings);
    SW_RUN(test_stop_eos_length);
    SW_RUN(test_stop_random);
    SW_RUN(test_stop_bad_args);
    SW_RUN(test_generation_config);
    SW_RUN(test_generation_config_load);
    return sw_test_summary("sampling");
}
