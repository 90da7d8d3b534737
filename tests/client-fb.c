/*
 * client-fb.c - swarm_client_forward / swarm_client_backward against a running swarm (started by
 * tests/test-generate.sh): `client-fb MODEL_DIR MODEL_NAME BOOTSTRAP_ADDR ROUNDS`. Each round draws
 * fresh inputs x (B = 2, T = 2) and an output gradient r, and checks, with --compress none:
 *   - swarm forward of blocks 0:L == the in-process span forward (sw_span_forward, fresh cache)
 *     within 1e-5 rel-L2 (chains differ between rounds: routes are drawn at random);
 *   - swarm backward == sw_span_backward of the whole span within 1e-5 rel-L2;
 *   - a sub-span (1:L) forward equals the in-process one too.
 * Prints "client-fb: N passed, N failed" like every test program.
 */
#include <errno.h>
#include <math.h>

#include "kernels/ops.h"
#include "pipeline/backward.h"
#include "pipeline/model.h"
#include "pipeline/swarm_client.h"
#include "test.h"
#include "util/error.h"

static const char *model_dir, *model_name, *boot;
static int rounds = 3;

static double rel_l2(const float *a, const float *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

static uint64_t rng = 0x1234567;
static float frand(void)
{
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(rng >> 11) * 0x1.0p-53 * 2.0 - 1.0);
}

static void test_forward_backward(void)
{
    const int B = 2, T = 2; /* 4 positions: server b takes at most 4 */
    swarm_client_opts_t o = { 0 };
    const char *peers[1] = { boot };
    swarm_client_t *c = NULL;
    sw_model_t *m = NULL;
    sw_span_t *all = NULL, *tail = NULL;
    sw_kv_t *kv = NULL, *kv_tail = NULL;
    float *x = NULL, *y = NULL, *want = NULL, *g = NULL, *gwant = NULL;
    int H, L;
    size_t n;

    o.model_dir = model_dir;
    o.model_name = model_name;
    o.initial_peers = peers;
    o.n_initial_peers = 1;
    o.compress = "none";
    o.step_timeout_ms = 10000;
    SW_CHECK_OK(swarm_client_open(&o, &c));
    H = swarm_client_hidden_size(c);
    L = swarm_client_num_blocks(c);
    n = (size_t)B * T * H;
    SW_CHECK_OK(sw_model_open(model_dir, &m));
    SW_CHECK_OK(sw_span_load(m, 0, L, NULL, &all));
    SW_CHECK_OK(sw_span_load(m, 1, L, NULL, &tail));
    SW_CHECK_OK(sw_kv_create(all, B, T, &kv));
    SW_CHECK_OK(sw_kv_create(tail, B, T, &kv_tail));
    x = sw_malloc(n * sizeof(float));
    y = sw_malloc(n * sizeof(float));
    want = sw_malloc(n * sizeof(float));
    g = sw_malloc(n * sizeof(float));
    gwant = sw_malloc(n * sizeof(float));
    SW_CHECK(x && y && want && g && gwant);
    for (int round = 0; round < rounds; round++) {
        double e;
        for (size_t i = 0; i < n; i++)
            x[i] = frand();
        memcpy(y, x, n * sizeof(float));
        memcpy(want, x, n * sizeof(float));
        sw_kv_reset(kv);
        SW_CHECK_OK(sw_span_forward(all, kv, &sw_ops_cpu, want, B, T));
        SW_CHECK_OK(swarm_client_forward(c, 0, L, y, B, T));
        e = rel_l2(y, want, n);
        SW_CHECKF(e <= 1e-5, "round %d: forward rel-L2 %.3g", round, e);

        memcpy(y, x, n * sizeof(float));
        memcpy(want, x, n * sizeof(float));
        sw_kv_reset(kv_tail);
        SW_CHECK_OK(sw_span_forward(tail, kv_tail, &sw_ops_cpu, want, B, T));
        SW_CHECK_OK(swarm_client_forward(c, 1, L, y, B, T));
        e = rel_l2(y, want, n);
        SW_CHECKF(e <= 1e-5, "round %d: forward 1:%d rel-L2 %.3g", round, L, e);

        for (size_t i = 0; i < n; i++)
            g[i] = frand();
        SW_CHECK_OK(sw_span_backward(all, &sw_ops_cpu, x, g, gwant, B, T));
        SW_CHECK_OK(swarm_client_backward(c, 0, L, x, g, B, T));
        e = rel_l2(g, gwant, n);
        SW_CHECKF(e <= 1e-5, "round %d: backward rel-L2 %.3g", round, e);
    }
    SW_CHECK(swarm_client_forward(c, 0, L + 1, x, B, T) == -EINVAL);
    sw_free(x);
    sw_free(y);
    sw_free(want);
    sw_free(g);
    sw_free(gwant);
    sw_kv_free(kv);
    sw_kv_free(kv_tail);
    sw_span_free(all);
    sw_span_free(tail);
    sw_model_close(m);
    swarm_client_close(c);
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: client-fb MODEL_DIR MODEL_NAME BOOTSTRAP_ADDR ROUNDS\n");
        return 2;
    }
    model_dir = argv[1];
    model_name = argv[2];
    boot = argv[3];
    rounds = atoi(argv[4]);
    SW_RUN(test_forward_backward);
    return sw_test_summary("client-fb");
}
