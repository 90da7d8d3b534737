/*
 * bench-gemv.c - how close sw_ops_cpu's matmul comes to this machine's memory bandwidth.
 *
 * 1. Memory bandwidth: memcpy of 1 GiB (one thread, then the pool's threads each copying a slice)
 *    and a read-only streaming sum over 1 GiB on the pool. For memcpy it prints both
 *    "copy" = (bytes read + bytes written) / time and "read" = bytes read / time (half of copy);
 *    the read figure is what a GEMV, which only reads weights, is compared with.
 * 2. GEMV (M = 1, batch-1 decode) with sw_ops_cpu for f32/f16/bf16 weights: weight bytes / time
 *    and the percentage of the best memcpy read bandwidth. Each call reads a different copy of the
 *    weights out of >= 2 GiB of copies, so the weights come from DRAM as in a real decode step
 *    (the L3 of a VM can be large), not from cache.
 * 3. Quantized GEMV (kernels/quant.h): NF4 bs64 with and without double quantization, and
 *    LLM.int8() (threshold 6, no outliers in x, so the int8 path proper is timed). "weight GB/s"
 *    counts every byte the call reads from the weight: packed codes + absmax (or qabsmax +
 *    nested absmax) or SCB. The codes and scales are random (timing only), copies as in 2.
 * 4. matmul M = 8 and 32 (small-batch prefill): GFLOP/s = 2*M*N*K / time.
 *
 * Every figure is the best of several runs (median in brackets). Usage: bench-gemv [-q] (quick:
 * fewer repetitions) [--quant] (memory baseline and quantized GEMV only) [--qm M] (rows of x in
 * the quantized section, 1..32, default 1: NF4 runs its int8-activation GEMV up to M = 4). Not a test: the numbers depend on the machine and its neighbours.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"
#include "kernels/cpu/fast.h"
#include "kernels/ops.h"
#include "kernels/quant.h"
#include "kernels/tensor.h"
#include "util/alloc.h"
#include "util/pool.h"

#define ROTATE_BYTES (2.0 * GIB) /* weight copies per shape: well over any L3 */

/* ---------------------------------------- GEMV ---------------------------------------- */

struct weights {
    sw_tensor_t w[64];
    int copies;
};

/* Enough copies of an (N, K) matrix of dtype dt to span >= 2 GiB (so reads miss every cache). */
static void weights_make(struct weights *ws, sw_dtype_t dt, int64_t N, int64_t K)
{
    size_t nb = (size_t)(N * K) * sw_dtype_size(dt);
    int copies = (int)((ROTATE_BYTES + (double)nb - 1) / (double)nb);
    unsigned long long s = 88172645463325252ull;

    if (copies < 2)
        copies = 2;
    if (copies > 64)
        copies = 64;
    ws->copies = copies;
    for (int c = 0; c < copies; c++) {
        int64_t shape[2] = { N, K };
        if (sw_tensor_alloc(&ws->w[c], dt, 2, shape) < 0) {
            fprintf(stderr, "bench-gemv: out of memory\n");
            exit(1);
        }
    }
    /* finite values of magnitude ~1e-2..1; the copies are identical (timing only) */
    for (size_t i = 0; i < nb / 2; i++) {
        uint16_t *h = ws->w[0].data;
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        h[i] = dt == SW_DTYPE_F32 && (i & 1) == 0 ? (uint16_t)s
                                                 : (uint16_t)((0x3c00 + (s & 0x3ff)) | (s & 0x8000));
    }
    for (int c = 1; c < copies; c++)
        memcpy(ws->w[c].data, ws->w[0].data, nb);
}

static void weights_free(struct weights *ws)
{
    for (int c = 0; c < ws->copies; c++)
        sw_tensor_free(&ws->w[c]);
}

/* Best and median seconds of one matmul call with M rows, each call on the next copy. */
static double time_matmul(struct weights *ws, float *y, const float *x, int M, double *med)
{
    double t[MAXREP];
    int calls = ws->copies < reps ? reps : ws->copies, n = 0, ci = 0;

    if (calls > MAXREP)
        calls = MAXREP;
    for (int c = 0; c < ws->copies; c++) /* warm-up: one pass over every copy */
        sw_ops_cpu.matmul(y, x, &ws->w[c], NULL, M);
    for (int r = 0; r < calls; r++) {
        double t0 = now();
        sw_ops_cpu.matmul(y, x, &ws->w[ci], NULL, M);
        t[n++] = now() - t0;
        ci = (ci + 1) % ws->copies;
    }
    return best_of(t, n, med);
}

static void print_gemv(sw_dtype_t dt, int64_t N, int64_t K, double best, double med,
                       double membw, double roof, const char *note)
{
    double nb = (double)N * (double)K * (double)sw_dtype_size(dt);

    printf("  %-6s %5lldx%-8lld %8.1f %8.3f [%7.3f] %12.2f %7.0f%% %7.0f%%%s\n", sw_dtype_name(dt),
           (long long)N, (long long)K, nb / (1 << 20), best * 1e3, med * 1e3, nb / best / 1e9,
           100.0 * nb / best / 1e9 / membw, 100.0 * nb / best / 1e9 / roof, note);
}

/* ------------------------------------ quantized GEMV ------------------------------------ */

struct qcopy {
    sw_tensor_t t;
    sw_qstate_t qs;
    void *mem[3];
};

static unsigned long long qseed = 0x2545f4914f6cdd1dull;

static void *rand_bytes(size_t n)
{
    unsigned char *p = bench_alloc(n ? n : 1);

    for (size_t i = 0; i < n; i++) {
        qseed ^= qseed << 13;
        qseed ^= qseed >> 7;
        qseed ^= qseed << 17;
        p[i] = (unsigned char)(qseed >> 24);
    }
    return p;
}

static float *rand_scales(size_t n)
{
    float *f = bench_alloc(n * sizeof(float));

    for (size_t i = 0; i < n; i++)
        f[i] = 0.5f + (float)(i % 97) / 97.0f;
    return f;
}

/* kind 0: NF4 bs64, 1: NF4 bs64 nested, 2: int8 (threshold 6). Returns the bytes one call reads. */
static size_t qcopy_make(struct qcopy *q, int kind, int64_t N, int64_t K, const struct qcopy *src)
{
    size_t numel = (size_t)(N * K), nblocks = (numel + 63) / 64, sz[3] = { 0 };

    memset(q, 0, sizeof(*q));
    q->t.ndim = 2;
    q->t.shape[0] = N;
    q->t.shape[1] = K;
    q->t.qs = &q->qs;
    if (kind == 2) {
        q->t.dtype = SW_DTYPE_I8;
        sz[0] = numel;
        sz[1] = (size_t)N * 4;
    } else {
        q->t.dtype = SW_DTYPE_NF4;
        q->qs.blocksize = 64;
        q->qs.nblocks = (int64_t)nblocks;
        q->qs.nested_blocksize = 256;
        sz[0] = (numel + 1) / 2;
        sz[1] = kind ? nblocks : nblocks * 4;
        sz[2] = kind ? (nblocks + 255) / 256 * 4 : 0;
    }
    for (int i = 0; i < 3; i++) {
        if (!sz[i])
            continue;
        if (src) {
            q->mem[i] = bench_alloc(sz[i]);
            memcpy(q->mem[i], src->mem[i], sz[i]);
        } else {
            q->mem[i] = i == 0 || (kind == 1 && i == 1) ? rand_bytes(sz[i]) : rand_scales(sz[i] / 4);
        }
    }
    q->t.data = q->mem[0];
    if (kind == 2) {
        q->qs.scb = q->mem[1];
        q->qs.threshold = 6.0f;
    } else if (kind == 1) {
        q->qs.qabsmax = q->mem[1];
        q->qs.nested_absmax = q->mem[2];
        q->qs.offset = 0.01f;
    } else {
        q->qs.absmax = q->mem[1];
    }
    return sz[0] + sz[1] + sz[2];
}

static void qcopy_free(struct qcopy *q)
{
    for (int i = 0; i < 3; i++)
        sw_free(q->mem[i]);
}

static void bench_quant_gemv(const float *x, float *y, double membw, double roof, int qm)
{
    static const struct { int64_t N, K; } qshapes[] = { { 4096, 4096 }, { 4096, 11008 }, { 8192, 28672 } };
    static const char *names[3] = { "nf4", "nf4+dq", "int8" };
    static struct qcopy qc[64];

    printf("\nquantized GEMV, M = %d (bytes = codes + all scales; >= 2 GiB of copies)\n", qm);
    printf("  %-7s %-14s %8s %6s %18s %12s %8s %8s\n", "format", "N x K", "MiB", "bits/w",
           "time ms [median]", "weight GB/s", "%memcpy", "%read");
    for (size_t s = 0; s < sizeof(qshapes) / sizeof(qshapes[0]); s++) {
        for (int kind = 0; kind < 3; kind++) {
            int64_t N = qshapes[s].N, K = qshapes[s].K;
            size_t nb = qcopy_make(&qc[0], kind, N, K, NULL);
            int copies = (int)((ROTATE_BYTES + (double)nb - 1) / (double)nb), calls, n = 0, ci = 0;
            double t[MAXREP], med, best, gbs;

            copies = copies < 2 ? 2 : copies > 64 ? 64 : copies;
            for (int c = 1; c < copies; c++)
                qcopy_make(&qc[c], kind, N, K, &qc[0]);
            calls = copies < reps ? reps : copies;
            calls = calls > MAXREP ? MAXREP : calls;
            for (int c = 0; c < copies; c++)
                sw_ops_cpu.matmul(y, x, &qc[c].t, NULL, qm);
            for (int r = 0; r < calls; r++) {
                double t0 = now();
                sw_ops_cpu.matmul(y, x, &qc[ci].t, NULL, qm);
                t[n++] = now() - t0;
                ci = (ci + 1) % copies;
            }
            best = best_of(t, n, &med);
            gbs = (double)nb / best / 1e9;
            printf("  %-7s %5lldx%-8lld %8.1f %6.3f %8.3f [%7.3f] %12.2f %7.0f%% %7.0f%%\n",
                   names[kind], (long long)N, (long long)K, (double)nb / (1 << 20),
                   8.0 * (double)nb / (double)(N * K), best * 1e3, med * 1e3, gbs,
                   100.0 * gbs / membw, 100.0 * gbs / roof);
            for (int c = 0; c < copies; c++)
                qcopy_free(&qc[c]);
        }
    }
}

int main(int argc, char **argv)
{
    int quant_only = 0, qm = 1;

    static const struct { int64_t N, K; int all_dtypes; } shapes[] = {
        { 4096, 4096, 1 }, { 4096, 11008, 1 }, { 11008, 4096, 1 }, { 8192, 28672, 0 },
    };
    static const sw_dtype_t dts[3] = { SW_DTYPE_BF16, SW_DTYPE_F16, SW_DTYPE_F32 };
    float *x, *y;
    double membw, roof;

    for (int a = 1; a < argc; a++) {
        if (strcmp(argv[a], "-q") == 0)
            reps = 3;
        else if (strcmp(argv[a], "--quant") == 0)
            quant_only = 1;
        else if (strcmp(argv[a], "--qm") == 0 && a + 1 < argc)
            qm = atoi(argv[++a]);
    }
    if (qm < 1 || qm > 32) {
        fprintf(stderr, "bench-gemv: --qm takes 1..32\n");
        return 2;
    }
    printf("bench-gemv: sw_ops_cpu simd %s, %d pool threads\n\n", sw_cpu_simd_name(),
           sw_pool_threads(sw_pool_global()));
    membw = bench_memory(&roof);
    x = bench_alloc(32 * 28672 * sizeof(float));
    y = bench_alloc(32 * 28672 * sizeof(float));
    for (size_t i = 0; i < 32 * 28672; i++)
        x[i] = (float)((i * 7919) % 1000) * 1e-3f - 0.5f;

    if (quant_only) {
        bench_quant_gemv(x, y, membw, roof, qm);
        goto out;
    }
    printf("GEMV, M = 1 (weights streamed from DRAM: each call reads the next of >= 2 GiB of copies)\n");
    printf("  %-6s %-14s %8s %18s %12s %8s %8s\n", "dtype", "N x K", "MiB", "time ms [median]",
           "weight GB/s", "%memcpy", "%read");
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
        for (int d = 0; d < 3; d++) {
            struct weights ws;
            double med, best;
            int copies;

            if (!shapes[s].all_dtypes && dts[d] != SW_DTYPE_BF16)
                continue;
            weights_make(&ws, dts[d], shapes[s].N, shapes[s].K);
            copies = ws.copies;
            best = time_matmul(&ws, y, x, 1, &med);
            print_gemv(dts[d], shapes[s].N, shapes[s].K, best, med, membw, roof, "");
            if (s == 0 && dts[d] == SW_DTYPE_BF16) {
                sw_cpu_force_portable(1);
                best = time_matmul(&ws, y, x, 1, &med);
                sw_cpu_force_portable(0);
                print_gemv(dts[d], shapes[s].N, shapes[s].K, best, med, membw, roof,
                           "  portable path");
                ws.copies = 1; /* the same copy each call: served from cache, for contrast */
                best = time_matmul(&ws, y, x, 1, &med);
                ws.copies = copies;
                print_gemv(dts[d], shapes[s].N, shapes[s].K, best, med, membw, roof,
                           "  hot: one copy, cache-resident");
            }
            weights_free(&ws);
        }
    }

    bench_quant_gemv(x, y, membw, roof, qm);

    printf("\nmatmul, M = 8 and 32 (GFLOP/s = 2*M*N*K / time)\n");
    printf("  %-6s %-14s %4s %18s %10s\n", "dtype", "N x K", "M", "time ms [median]", "GFLOP/s");
    for (size_t s = 0; s < 3; s++) {
        for (int d = 0; d < 3; d++) {
            struct weights ws;

            weights_make(&ws, dts[d], shapes[s].N, shapes[s].K);
            for (int M = 8; M <= 32; M *= 4) {
                double med, best = time_matmul(&ws, y, x, M, &med);
                double fl = 2.0 * M * shapes[s].N * shapes[s].K;
                printf("  %-6s %5lldx%-8lld %4d %8.3f [%7.3f] %10.1f\n", sw_dtype_name(dts[d]),
                       (long long)shapes[s].N, (long long)shapes[s].K, M, best * 1e3, med * 1e3,
                       fl / best / 1e9);
            }
            weights_free(&ws);
        }
    }
out:
    sw_free(x);
    sw_free(y);
    return 0;
}
