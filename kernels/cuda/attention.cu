/*
 * attention.cu - causal GQA attention against a KV cache, and the cache append.
 *
 * Layouts: q, out (B, T, NH, HD); k, v (B, NKV, max_T, HD); query t of sequence b sits at
 * position p = pos0 + t and sees keys j in [lo, p], lo = max(0, p - window + 1) when window > 0
 * (sliding window), else 0. Query head h reads KV head h / (NH / NKV).
 *
 * The straightforward first version: one block of 128 threads (4 warps) per (b, t, h), keys in
 * tiles of 128 with an online softmax, so shared memory does not grow with the context:
 *   1. each warp takes every 4th key of the tile; its lanes stride over HD (coalesced loads of
 *      the key row), a shuffle reduction gives q.k * scale into the tile's score slot;
 *   2. block max of the tile -> new running max m'; scores become exp(s - m'); the running sum
 *      and the accumulator are rescaled by exp(m - m');
 *   3. thread d (and d + 128, ...) adds sum_j p_j * v[j][d] to acc[d] (coalesced over d).
 * Shared memory: q (HD), acc (HD), the tile's scores (128) and a reduction buffer, so HD up to
 * 1024 needs under 10 KB. Decode (T = 1) gets only B * NH blocks; a split-KV (flash-decoding)
 * version and a fused prefill kernel are later work (issue 8).
 */
#include <errno.h>
#include <math.h>

#include "internal.h"

#define ATT_THREADS 128
#define ATT_TILE 128

static __global__ void __launch_bounds__(ATT_THREADS)
attention_kernel(float *out, const float *q, const float *k, const float *v, int T, int pos0,
                 int max_T, int NH, int NKV, int HD, int window, float scale)
{
    extern __shared__ float sm[];
    float *qs = sm, *acc = sm + HD, *ps = sm + 2 * HD;
    __shared__ float red[32];
    int h = blockIdx.x % NH, t = (blockIdx.x / NH) % T, b = blockIdx.x / (NH * T);
    int kvh = h / (NH / NKV), p = pos0 + t;
    int lo = (window > 0 && p - window + 1 > 0) ? p - window + 1 : 0;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    size_t qoff = (((size_t)b * T + t) * NH + h) * HD;
    const float *kb = k + ((size_t)b * NKV + kvh) * (size_t)max_T * HD;
    const float *vb = v + ((size_t)b * NKV + kvh) * (size_t)max_T * HD;
    float m_run = -INFINITY, l_run = 0.0f;

    for (int d = threadIdx.x; d < HD; d += ATT_THREADS) {
        qs[d] = q[qoff + d];
        acc[d] = 0.0f;
    }
    __syncthreads();
    for (int j0 = lo; j0 <= p; j0 += ATT_TILE) {
        int n = p - j0 + 1 < ATT_TILE ? p - j0 + 1 : ATT_TILE;

        for (int jj = warp; jj < n; jj += ATT_THREADS / 32) {
            const float *kr = kb + (size_t)(j0 + jj) * HD;
            float s = 0.0f;
            for (int d = lane; d < HD; d += 32)
                s += qs[d] * kr[d];
            for (int o = 16; o > 0; o >>= 1)
                s += __shfl_xor_sync(0xffffffffu, s, o);
            if (lane == 0)
                ps[jj] = s * scale;
        }
        __syncthreads();
        float mine = threadIdx.x < n ? ps[threadIdx.x] : -INFINITY;
        float m_new = fmaxf(m_run, sw_dev_block_max(mine, red));
        float pe = threadIdx.x < n ? expf(mine - m_new) : 0.0f;
        float corr = expf(m_run - m_new); /* 0 on the first tile: m_run is -inf */
        float tile_sum = sw_dev_block_sum(pe, red);
        if (threadIdx.x < n)
            ps[threadIdx.x] = pe;
        __syncthreads();
        l_run = l_run * corr + tile_sum;
        m_run = m_new;
        for (int d = threadIdx.x; d < HD; d += ATT_THREADS) {
            float a = acc[d] * corr;
            for (int jj = 0; jj < n; jj++)
                a += ps[jj] * vb[(size_t)(j0 + jj) * HD + d];
            acc[d] = a;
        }
        __syncthreads(); /* ps is overwritten by the next tile */
    }
    for (int d = threadIdx.x; d < HD; d += ATT_THREADS)
        out[qoff + d] = acc[d] / l_run;
}

static __global__ void kv_append_kernel(float *kc, float *vc, const float *kn, const float *vn,
                                        int T, int pos0, int max_T, int NKV, int HD, size_t n)
{
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < n;
         idx += (size_t)gridDim.x * blockDim.x) {
        size_t d = idx % HD, r = idx / HD; /* r = (b * T + t) * NKV + g */
        size_t g = r % NKV, bt = r / NKV, t = bt % T, b = bt / T;
        size_t dst = ((b * NKV + g) * (size_t)max_T + (size_t)pos0 + t) * HD + d;
        kc[dst] = kn[idx];
        vc[dst] = vn[idx];
    }
}

extern "C" int sw_cuda_attention(sw_cuda_ctx_t *c, float *out, const float *q, const float *k,
                                 const float *v, int B, int T, int pos0, int max_T, int NH,
                                 int NKV, int HD, int window, float scale)
{
    size_t blocks = (size_t)B * (size_t)T * (size_t)NH;
    size_t shmem = (2 * (size_t)HD + ATT_TILE) * sizeof(float);

    if (B < 0 || T < 0 || pos0 < 0 || NH < 1 || NKV < 1 || NH % NKV || HD < 1 || HD > 1024 ||
        window < 0 || (size_t)pos0 + (size_t)T > (size_t)max_T)
        return sw_err(-EINVAL, "CUDA attention: bad shape B %d T %d pos0 %d max_T %d NH %d "
                      "NKV %d HD %d window %d", B, T, pos0, max_T, NH, NKV, HD, window);
    if (blocks == 0)
        return 0;
    if (blocks > INT32_MAX)
        return sw_err(SW_ELIMIT, "CUDA attention: %zu query heads in one call", blocks);
    attention_kernel<<<(unsigned)blocks, ATT_THREADS, shmem, c->stream>>>(
        out, q, k, v, T, pos0, max_T, NH, NKV, HD, window, scale);
    SW_CUDA_CHECK_LAUNCH();
    return 0;
}

extern "C" int sw_cuda_kv_append(sw_cuda_ctx_t *c, float *kc, float *vc, const float *kn,
                                 const float *vn, int B, int T, int pos0, int max_T, int NKV,
                                 int HD)
{
    size_t n = (size_t)B * (size_t)T * (size_t)NKV * (size_t)HD;

    if (B < 0 || T < 0 || pos0 < 0 || NKV < 1 || HD < 1 ||
        (size_t)pos0 + (size_t)T > (size_t)max_T)
        return sw_err(-EINVAL, "CUDA kv_append: bad shape B %d T %d pos0 %d max_T %d", B, T,
                      pos0, max_T);
    if (n == 0)
        return 0;
    kv_append_kernel<<<sw_cuda_grid(n, 256), 256, 0, c->stream>>>(kc, vc, kn, vn, T, pos0, max_T,
                                                                 NKV, HD, n);
    SW_CUDA_CHECK_LAUNCH();
    return 0;
}
