/*
 * bench-gpu.c - weight-only GEMV on the GPU (kernels/cuda/matmul.cu) as achieved bandwidth of
 * weight bytes, against the device-to-device copy bandwidth measured in the same run.
 *
 *   bench-gpu [device]        (default device 0)
 *
 * Shapes (N, K) are Llama-2 7B and 70B Linears: 4096 x 4096 (7B q/k/v/o), 4096 x 11008 (7B
 * down), 8192 x 28672 (70B down). Weights: NF4 as the pipeline loads it (bnb layout, blocks of
 * 64, double-quantized absmax: 4.127 bits/weight) and bf16; x is fp32 (M, K), y fp32 (M, N).
 * Bytes counted: the weight and its quantization state, read once (x and y are < 0.1%).
 * Copy bandwidth: cudaMemcpy device -> device of 1 GiB, counting bytes read plus written.
 * Every weight is held in enough copies (>= 256 MiB together) that consecutive calls rotate
 * through memory the 50 MB L2 cannot hold; each figure is the median of 7 timings of >= 20
 * calls (host clock around queued calls and a sync; launch gaps included, as in decode).
 * Prints one table; without a GPU it says so and exits 77.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cuda/backend.h"
#include "kernels/device.h"
#include "kernels/quant.h"
#include "util/alloc.h"
#include "util/error.h"

#define ROTATE_BYTES (256u << 20)
#define TRIALS 7

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *t, int n)
{
    qsort(t, (size_t)n, sizeof(double), cmp_d);
    return t[n / 2];
}

/* Standard-normal-ish values (sum of uniforms), scaled; a fast xorshift so 235M take seconds. */
static void fill_random(float *v, size_t n, uint64_t seed, float scale)
{
    uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;

    for (size_t i = 0; i < n; i++) {
        float acc = 0.0f;
        for (int j = 0; j < 4; j++) {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            acc += (float)(s >> 40) * (1.0f / 16777216.0f);
        }
        v[i] = (acc - 2.0f) * 1.7320508f * scale;
    }
}

#define CHECK(call)                                                                          \
    do {                                                                                     \
        int r_ = (call);                                                                     \
        if (r_ < 0) {                                                                        \
            fprintf(stderr, "bench-gpu: %s: %s: %s\n", #call, sw_strerror(r_),              \
                    sw_err_detail());                                                        \
            exit(1);                                                                         \
        }                                                                                    \
    } while (0)

static sw_cuda_ctx_t *ctx;

/* Seconds per call of y = x @ w^T over the rotating copies w[0..nw), M rows (median). */
static double time_matmul(sw_tensor_t *w, int nw, float *dx, float *dy, int M)
{
    double t[TRIALS];
    int calls = 20 > 2 * nw ? 20 : 2 * nw;

    for (int i = 0; i < 2 * nw; i++) /* warm-up */
        CHECK(sw_cuda_matmul(ctx, dy, dx, &w[i % nw], NULL, M));
    CHECK(sw_cuda_sync(ctx));
    for (int k = 0; k < TRIALS; k++) {
        double t0 = now_s();
        for (int i = 0; i < calls; i++)
            CHECK(sw_cuda_matmul(ctx, dy, dx, &w[i % nw], NULL, M));
        CHECK(sw_cuda_sync(ctx));
        t[k] = (now_s() - t0) / calls;
    }
    return median(t, TRIALS);
}

int main(int argc, char **argv)
{
    static const struct { int64_t N, K; const char *what; } shapes[] = {
        { 4096, 4096, "7B q/k/v/o" }, { 4096, 11008, "7B down" }, { 8192, 28672, "70B down" },
    };
    static const int Ms[] = { 1, 16 };
    int dev = argc > 1 ? atoi(argv[1]) : 0;
    char name[256];
    size_t copy_bytes = (size_t)1 << 30;
    void *a = NULL, *b = NULL;
    double t[TRIALS], copy_bw;

    if (sw_cuda_device_count() <= dev) {
        printf("bench-gpu: skipped: no CUDA device %d (%s)\n", dev,
               sw_cuda_compiled() ? "none visible" : "CUDA backend not compiled");
        return 77;
    }
    CHECK(sw_cuda_device_name(dev, name, sizeof(name)));
    CHECK(sw_cuda_ctx_create(dev, &ctx));
    CHECK(sw_cuda_alloc(ctx, copy_bytes, &a));
    CHECK(sw_cuda_alloc(ctx, copy_bytes, &b));
    CHECK(sw_cuda_fill_f32(ctx, a, 1.5f, copy_bytes / 4));
    for (int i = 0; i < 3; i++)
        CHECK(sw_cuda_copy(ctx, b, a, copy_bytes));
    CHECK(sw_cuda_sync(ctx));
    for (int k = 0; k < TRIALS; k++) {
        double t0 = now_s();
        for (int i = 0; i < 10; i++)
            CHECK(sw_cuda_copy(ctx, i % 2 ? a : b, i % 2 ? b : a, copy_bytes));
        CHECK(sw_cuda_sync(ctx));
        t[k] = (now_s() - t0) / 10;
    }
    copy_bw = 2.0 * (double)copy_bytes / median(t, TRIALS);
    sw_cuda_free(ctx, a);
    sw_cuda_free(ctx, b);
    printf("bench-gpu: %s; device copy bandwidth %.0f GB/s (read + write, 1 GiB D2D)\n", name,
           copy_bw / 1e9);
    printf("\n| shape N x K | what | weights | bytes (MB) | M | us/call | GB/s | of copy bw |\n");
    printf("| --- | --- | --- | --- | --- | --- | --- | --- |\n");

    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
        int64_t N = shapes[s].N, K = shapes[s].K, shape[2] = { N, K };
        size_t n = (size_t)(N * K);
        float *host = sw_malloc(n * sizeof(float)), *hx = sw_malloc(16 * (size_t)K * 4);
        float *dx = NULL, *dy = NULL;

        if (!host || !hx) {
            fprintf(stderr, "bench-gpu: out of host memory\n");
            return 1;
        }
        fill_random(host, n, 1000 + s, 1.0f / sqrtf((float)K));
        fill_random(hx, 16 * (size_t)K, 77, 1.0f);
        CHECK(sw_cuda_alloc(ctx, 16 * (size_t)K * 4, (void **)&dx));
        CHECK(sw_cuda_alloc(ctx, 16 * (size_t)N * 4, (void **)&dy));
        CHECK(sw_cuda_upload(ctx, dx, hx, 16 * (size_t)K * 4));
        for (int f = 0; f < 2; f++) { /* NF4, bf16 */
            sw_tensor_t hw, dense = { 0 }, dw[64];
            size_t bytes;
            int nw;

            dense.dtype = SW_DTYPE_F32;
            dense.ndim = 2;
            dense.shape[0] = N;
            dense.shape[1] = K;
            dense.data = host;
            if (f == 0) {
                CHECK(sw_quantize_nf4(&dense, 64, 1, &hw));
            } else {
                CHECK(sw_tensor_alloc(&hw, SW_DTYPE_BF16, 2, shape));
                sw_from_f32(hw.data, host, SW_DTYPE_BF16, n);
            }
            bytes = sw_tensor_nbytes(&hw) + sw_qtensor_state_bytes(&hw);
            nw = (int)((ROTATE_BYTES + bytes - 1) / bytes);
            nw = nw < 2 ? 2 : nw > 64 ? 64 : nw;
            for (int i = 0; i < nw; i++)
                CHECK(sw_cuda_tensor_upload(ctx, &hw, &dw[i]));
            CHECK(sw_cuda_ctx_reserve(ctx, sw_cuda_matmul_workspace_bytes(SW_CUDA_MATMUL_FP32,
                                                                          hw.dtype, 16, N, K)));
            for (size_t m = 0; m < sizeof(Ms) / sizeof(Ms[0]); m++) {
                double sec = time_matmul(dw, nw, dx, dy, Ms[m]);
                printf("| %lld x %lld | %s | %s | %.1f | %d | %.1f | %.0f | %.0f%% |\n",
                       (long long)N, (long long)K, shapes[s].what, f ? "bf16" : "nf4 (dq, bs 64)",
                       (double)bytes / 1e6, Ms[m], sec * 1e6, (double)bytes / sec / 1e9,
                       100.0 * (double)bytes / sec / copy_bw);
                fflush(stdout);
            }
            for (int i = 0; i < nw; i++)
                sw_cuda_tensor_free(ctx, &dw[i]);
            if (f == 0)
                sw_qtensor_free(&hw);
            else
                sw_tensor_free(&hw);
        }
        sw_cuda_free(ctx, dx);
        sw_cuda_free(ctx, dy);
        sw_free(host);
        sw_free(hx);
    }
    sw_cuda_ctx_free(ctx);
    return 0;
}
