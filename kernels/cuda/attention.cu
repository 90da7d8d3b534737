/*
 * attention.cu - causal GQA attention against a KV cache, and the cache append.
 *
 * Layouts: q, out (B, T, NH, HD); k, v (B, NKV, max_T, HD); query t of sequence b sits at
 * position p = pos0 + t and sees keys j in [lo, p], lo = max(0, p - window + 1) when window > 0
 * (sliding window), else 0. Query head h reads KV head h / G, G = NH / NKV. Three kernels, all
 * fp32 with an online softmax (running max m, running sum l, accumulator rescaled by
 * exp(m_old - m_new)), so shared memory never grows with the context:
 *
 * 1. attention_kernel (variant 1, the first version): one block of 128 threads per (b, t, h),
 *    keys in tiles of 128: each warp takes every 4th key (lanes over HD, shuffle reduction),
 *    block max / sum of the tile, then thread d accumulates sum_j p_j v[j][d]. Decode gets only
 *    B * NH blocks and every query head re-reads its KV head.
 *
 * 2. attn_split_kernel + attn_combine_kernel (variant 2, split-KV / flash-decoding; written
 *    2026-12-05, NOT YET RUN ON A GPU): for few query rows against a long cache. The rows of
 *    one KV head (T * G of them: all query heads of the group, GQA) are taken SPLIT_R = 8 at a
 *    time by a block of 4 warps, and the key range is cut into nsplit chunks, one block each,
 *    so B * NKV * row groups * nsplit blocks fill the chip. Inside a block each warp takes 32
 *    keys at a time (lane = key: a float4 dot product of its key row, read through L1, with the
 *    8 query rows in shared memory), keeps its own (m, l, acc) per row with lanes over HD
 *    (HD / 32 values each, so acc lives in registers), and p_j reaches every lane by shuffle
 *    for the p.V step (V rows read coalesced). The 4 warps' states are merged in shared memory;
 *    with nsplit > 1 each block writes (m, l, acc) per row to the context's split buffer and
 *    attn_combine_kernel merges the splits in a fixed order (deterministic):
 *    out = sum_s acc_s e^(m_s - M) / sum_s l_s e^(m_s - M), M = max_s m_s.
 *
 * 3. attn_prefill_kernel (variant 3, fused flash-attention-style prefill; written 2026-12-05,
 *    NOT YET RUN ON A GPU): a block of 8 warps owns 64 query rows of one KV head (the rows
 *    t * G + g, so GQA groups share every K/V tile), Q in shared memory; K/V tiles of 32 keys
 *    are loaded into shared memory by the whole block (K rows padded by one word, so lane j
 *    reading K[j][d] hits bank (j + d) % 32), lane = key for the scores (8 rows per warp), the
 *    online softmax per row, lanes over HD for p.V. Keys outside [lo, p] of a row are masked
 *    to -inf; tiles before the block's first lo or after its last p are never loaded.
 *    Dynamic shared memory (64 + 32) * HD + 32 floats: 64.1 KB for HD 128, so the kernel opts
 *    in above 48 KB (cudaFuncSetAttribute) and HD up to 256 fits an A100 or H100.
 *
 * Picking (attn_pick, variant 0): split-KV when at most 64 query rows per KV head meet at
 * least SPLIT_MIN_KEYS keys (decode, speculative steps, batched decode); the prefill kernel for
 * the other multi-token calls; the first kernel for short single-token calls and shapes the
 * new kernels do not take (HD > 256 or not a multiple of 4).
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

static __device__ __forceinline__ float warp_max_f(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

static __device__ __forceinline__ float warp_sum_f(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* First key query t sees (sliding window or 0). */
static __device__ __host__ __forceinline__ int att_lo(int p, int window)
{
    return (window > 0 && p - window + 1 > 0) ? p - window + 1 : 0;
}

/*
 * One online-softmax step for a row: sc is this lane's score (-inf when masked); updates the
 * row's m and l (identical in all lanes), scales acc by the correction and leaves p in sc.
 */
template <int DV>
static __device__ __forceinline__ void att_online(float &sc, float &m, float &l, float (&acc)[DV])
{
    float mn = fmaxf(m, warp_max_f(sc));
    float corr, p;

    if (mn == -INFINITY) { /* nothing seen yet */
        corr = 1.0f;
        p = 0.0f;
    } else {
        corr = expf(m - mn); /* 0 when m is -inf */
        p = sc == -INFINITY ? 0.0f : expf(sc - mn);
    }
    l = l * corr + warp_sum_f(p);
    m = mn;
#pragma unroll
    for (int i = 0; i < DV; i++)
        acc[i] *= corr;
    sc = p;
}

/* ---- variant 2: split-KV (flash-decoding) ---- */

#define SPLIT_WARPS 4
#define SPLIT_R 8             /* query rows per block */
#define SPLIT_MIN_KEYS 256    /* auto: split-KV from this many keys */
#define SPLIT_MIN_CHUNK 128   /* keys per split at least */

template <int DMAX>
static __global__ void __launch_bounds__(SPLIT_WARPS * 32)
    attn_split_kernel(float *__restrict__ out, float *__restrict__ part,
                      const float *__restrict__ q, const float *__restrict__ k,
                      const float *__restrict__ v, int T, int pos0, int max_T, int NH, int NKV,
                      int HD, int window, float scale, int nrg, int nsplit, int kbase, int chunk)
{
    constexpr int DV = DMAX / 32;
    __shared__ __align__(16) float qs[SPLIT_R][DMAX];
    __shared__ float sm_m[SPLIT_WARPS][SPLIT_R], sm_l[SPLIT_WARPS][SPLIT_R];
    __shared__ float sm_acc[SPLIT_WARPS][SPLIT_R][DMAX];
    unsigned idx = blockIdx.x;
    const int sp = (int)(idx % (unsigned)nsplit);
    idx /= (unsigned)nsplit;
    const int rg = (int)(idx % (unsigned)nrg);
    idx /= (unsigned)nrg;
    const int kvh = (int)(idx % (unsigned)NKV), b = (int)(idx / (unsigned)NKV);
    const int G = NH / NKV, rows = T * G, i0 = rg * SPLIT_R;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int i_last = (i0 + SPLIT_R < rows ? i0 + SPLIT_R : rows) - 1;
    const size_t kvoff = ((size_t)b * NKV + kvh) * (size_t)max_T * HD;
    int klo = att_lo(pos0 + i0 / G, window), khi = pos0 + i_last / G;
    const int c0 = kbase + sp * chunk;
    int rlo[SPLIT_R], rhi[SPLIT_R];
    float m[SPLIT_R], l[SPLIT_R], acc[SPLIT_R][DV];

    klo = klo > c0 ? klo : c0;
    khi = khi < c0 + chunk - 1 ? khi : c0 + chunk - 1;
    for (int e = threadIdx.x; e < SPLIT_R * DMAX; e += blockDim.x) {
        int r = e / DMAX, d = e % DMAX, i = i0 + r;
        float val = 0.0f;
        if (i < rows && d < HD) {
            int t = i / G, h = kvh * G + i % G;
            val = q[(((size_t)b * T + t) * NH + h) * HD + d];
        }
        qs[r][d] = val;
    }
#pragma unroll
    for (int r = 0; r < SPLIT_R; r++) {
        int i = i0 + r;
        if (i < rows) {
            rhi[r] = pos0 + i / G;
            rlo[r] = att_lo(rhi[r], window);
        } else {
            rlo[r] = 1;
            rhi[r] = 0; /* empty */
        }
        m[r] = -INFINITY;
        l[r] = 0.0f;
#pragma unroll
        for (int x = 0; x < DV; x++)
            acc[r][x] = 0.0f;
    }
    __syncthreads();

    for (int j0 = klo + warp * 32; j0 <= khi; j0 += SPLIT_WARPS * 32) {
        const int j = j0 + lane;
        float sc[SPLIT_R];
#pragma unroll
        for (int r = 0; r < SPLIT_R; r++)
            sc[r] = 0.0f;
        if (j <= khi) {
            const float4 *kr = (const float4 *)(k + kvoff + (size_t)j * HD);
            for (int d4 = 0; d4 < HD / 4; d4++) {
                float4 kk = __ldg(kr + d4);
#pragma unroll
                for (int r = 0; r < SPLIT_R; r++) {
                    float4 qq = *(const float4 *)&qs[r][4 * d4];
                    sc[r] = fmaf(qq.x, kk.x, sc[r]);
                    sc[r] = fmaf(qq.y, kk.y, sc[r]);
                    sc[r] = fmaf(qq.z, kk.z, sc[r]);
                    sc[r] = fmaf(qq.w, kk.w, sc[r]);
                }
            }
        }
#pragma unroll
        for (int r = 0; r < SPLIT_R; r++) {
            sc[r] = (j <= khi && j >= rlo[r] && j <= rhi[r]) ? sc[r] * scale : -INFINITY;
            att_online<DV>(sc[r], m[r], l[r], acc[r]);
        }
        const int nk = khi - j0 + 1 < 32 ? khi - j0 + 1 : 32;
        for (int jj = 0; jj < nk; jj++) {
            const float *vr = v + kvoff + (size_t)(j0 + jj) * HD;
            float vv[DV];
#pragma unroll
            for (int x = 0; x < DV; x++) {
                int d = lane + 32 * x;
                vv[x] = d < HD ? __ldg(vr + d) : 0.0f;
            }
#pragma unroll
            for (int r = 0; r < SPLIT_R; r++) {
                float pj = __shfl_sync(0xffffffffu, sc[r], jj);
#pragma unroll
                for (int x = 0; x < DV; x++)
                    acc[r][x] = fmaf(pj, vv[x], acc[r][x]);
            }
        }
    }

    /* merge the 4 warps */
#pragma unroll
    for (int r = 0; r < SPLIT_R; r++) {
        if (lane == 0) {
            sm_m[warp][r] = m[r];
            sm_l[warp][r] = l[r];
        }
#pragma unroll
        for (int x = 0; x < DV; x++)
            sm_acc[warp][r][lane + 32 * x] = acc[r][x];
    }
    __syncthreads();
    for (int e = threadIdx.x; e < SPLIT_R * HD; e += blockDim.x) {
        int r = e / HD, d = e % HD, i = i0 + r;
        if (i >= rows)
            continue;
        float M = -INFINITY, L = 0.0f, A = 0.0f;
        for (int w = 0; w < SPLIT_WARPS; w++)
            M = fmaxf(M, sm_m[w][r]);
        for (int w = 0; w < SPLIT_WARPS; w++) {
            float wt = sm_m[w][r] == -INFINITY ? 0.0f : expf(sm_m[w][r] - M);
            L += sm_l[w][r] * wt;
            A += sm_acc[w][r][d] * wt;
        }
        size_t row = ((size_t)b * T + i / G) * NH + kvh * G + i % G;
        if (nsplit == 1) {
            out[row * HD + d] = A / L;
        } else {
            float *pp = part + (row * nsplit + sp) * (size_t)(HD + 2);
            if (d == 0) {
                pp[0] = M;
                pp[1] = L;
            }
            pp[2 + d] = A;
        }
    }
}

/* out row (b, t, h) from its nsplit partial results; one block per row, threads over HD. */
static __global__ void attn_combine_kernel(float *__restrict__ out, const float *__restrict__ part,
                                           int nsplit, int HD)
{
    const size_t row = blockIdx.x;
    const float *pp = part + row * nsplit * (size_t)(HD + 2);
    float M = -INFINITY;

    for (int s = 0; s < nsplit; s++)
        M = fmaxf(M, pp[(size_t)s * (HD + 2)]);
    for (int d = threadIdx.x; d < HD; d += blockDim.x) {
        float L = 0.0f, A = 0.0f;
        for (int s = 0; s < nsplit; s++) {
            const float *ps = pp + (size_t)s * (HD + 2);
            float wt = ps[0] == -INFINITY ? 0.0f : expf(ps[0] - M);
            L += ps[1] * wt;
            A += ps[2 + d] * wt;
        }
        out[row * HD + d] = A / L;
    }
}

/* ---- variant 3: fused prefill ---- */

#define FP_WARPS 8
#define FP_RW 8                       /* rows per warp */
#define FP_ROWS (FP_WARPS * FP_RW)    /* 64 query rows per block */
#define FP_KEYS 32                    /* keys per tile */

static size_t prefill_smem_bytes(int HD)
{
    return ((size_t)FP_ROWS * HD + (size_t)FP_KEYS * (HD + 1) + (size_t)FP_KEYS * HD) *
           sizeof(float);
}

template <int DMAX>
static __global__ void __launch_bounds__(FP_WARPS * 32)
    attn_prefill_kernel(float *__restrict__ out, const float *__restrict__ q,
                        const float *__restrict__ k, const float *__restrict__ v, int T, int pos0,
                        int max_T, int NH, int NKV, int HD, int window, float scale)
{
    constexpr int DV = DMAX / 32;
    extern __shared__ float smem[];
    float *Qs = smem, *Ks = Qs + (size_t)FP_ROWS * HD, *Vs = Ks + (size_t)FP_KEYS * (HD + 1);
    const int rg = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;
    const int G = NH / NKV, rows = T * G, i0 = rg * FP_ROWS;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int i_last = (i0 + FP_ROWS < rows ? i0 + FP_ROWS : rows) - 1;
    const int klo = att_lo(pos0 + i0 / G, window), khi = pos0 + i_last / G;
    const size_t kvoff = ((size_t)b * NKV + kvh) * (size_t)max_T * HD;
    int rlo[FP_RW], rhi[FP_RW];
    float m[FP_RW], l[FP_RW], acc[FP_RW][DV];

    for (int e = threadIdx.x; e < FP_ROWS * HD; e += blockDim.x) {
        int r = e / HD, d = e % HD, i = i0 + r;
        float val = 0.0f;
        if (i < rows)
            val = q[(((size_t)b * T + i / G) * NH + kvh * G + i % G) * HD + d];
        Qs[e] = val;
    }
#pragma unroll
    for (int rr = 0; rr < FP_RW; rr++) {
        int i = i0 + warp * FP_RW + rr;
        if (i < rows) {
            rhi[rr] = pos0 + i / G;
            rlo[rr] = att_lo(rhi[rr], window);
        } else {
            rlo[rr] = 1;
            rhi[rr] = 0;
        }
        m[rr] = -INFINITY;
        l[rr] = 0.0f;
#pragma unroll
        for (int x = 0; x < DV; x++)
            acc[rr][x] = 0.0f;
    }

    for (int j0 = klo; j0 <= khi; j0 += FP_KEYS) {
        __syncthreads(); /* Q written (first tile) / the previous tile consumed */
        for (int e = threadIdx.x; e < FP_KEYS * HD; e += blockDim.x) {
            int jj = e / HD, d = e % HD;
            bool in = j0 + jj <= khi;
            size_t src = kvoff + (size_t)(j0 + jj) * HD + d;
            Ks[jj * (HD + 1) + d] = in ? k[src] : 0.0f;
            Vs[e] = in ? v[src] : 0.0f;
        }
        __syncthreads();
        const int j = j0 + lane;
        const float *kr = Ks + lane * (HD + 1), *qw = Qs + (size_t)warp * FP_RW * HD;
        float sc[FP_RW];
#pragma unroll
        for (int rr = 0; rr < FP_RW; rr++)
            sc[rr] = 0.0f;
        for (int d = 0; d < HD; d++) {
            float kd = kr[d];
#pragma unroll
            for (int rr = 0; rr < FP_RW; rr++)
                sc[rr] = fmaf(qw[rr * HD + d], kd, sc[rr]);
        }
#pragma unroll
        for (int rr = 0; rr < FP_RW; rr++) {
            sc[rr] = (j <= khi && j >= rlo[rr] && j <= rhi[rr]) ? sc[rr] * scale : -INFINITY;
            att_online<DV>(sc[rr], m[rr], l[rr], acc[rr]);
        }
        const int nk = khi - j0 + 1 < FP_KEYS ? khi - j0 + 1 : FP_KEYS;
        for (int jj = 0; jj < nk; jj++) {
            float vv[DV];
#pragma unroll
            for (int x = 0; x < DV; x++) {
                int d = lane + 32 * x;
                vv[x] = d < HD ? Vs[jj * HD + d] : 0.0f;
            }
#pragma unroll
            for (int rr = 0; rr < FP_RW; rr++) {
                float pj = __shfl_sync(0xffffffffu, sc[rr], jj);
#pragma unroll
                for (int x = 0; x < DV; x++)
                    acc[rr][x] = fmaf(pj, vv[x], acc[rr][x]);
            }
        }
    }
#pragma unroll
    for (int rr = 0; rr < FP_RW; rr++) {
        int i = i0 + warp * FP_RW + rr;
        if (i >= rows)
            continue;
        float *o = out + (((size_t)b * T + i / G) * NH + kvh * G + i % G) * HD;
#pragma unroll
        for (int x = 0; x < DV; x++) {
            int d = lane + 32 * x;
            if (d < HD)
                o[d] = acc[rr][x] / l[rr];
        }
    }
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

/* The DMAX template instance for HD (64, 128 or 256); 0 if HD > 256. */
static int att_dmax(int HD)
{
    return HD <= 64 ? 64 : HD <= 128 ? 128 : HD <= 256 ? 256 : 0;
}

/* Split-KV launch; SW_EUNSUPPORTED if the shape is not for it. */
static int attention_split(sw_cuda_ctx_t *c, float *out, const float *q, const float *k,
                           const float *v, int B, int T, int pos0, int max_T, int NH, int NKV,
                           int HD, int window, float scale)
{
    const int G = NH / NKV, nrg = (T * G + SPLIT_R - 1) / SPLIT_R;
    const int kbase = att_lo(pos0, window), nkeys = pos0 + T - kbase;
    const size_t rows = (size_t)B * T * NH, base = (size_t)B * NKV * nrg;
    size_t cap, want, maxs, nsplit, chunk, blocks;

    if (att_dmax(HD) == 0 || HD % 4 || (uintptr_t)k % 16)
        return sw_err(SW_EUNSUPPORTED, "CUDA attention: split-KV needs HD <= 256, a multiple "
                      "of 4, and a 16-byte aligned key cache (HD %d)", HD);
    want = ((size_t)2 * (size_t)c->num_sms + base - 1) / base;
    maxs = ((size_t)nkeys + SPLIT_MIN_CHUNK - 1) / SPLIT_MIN_CHUNK;
    cap = SW_CUDA_ATTN_WS_BYTES / sizeof(float) / (rows * (size_t)(HD + 2));
    nsplit = want < maxs ? want : maxs;
    nsplit = nsplit < cap ? nsplit : cap;
    if (nsplit < 1)
        nsplit = 1;
    chunk = ((size_t)nkeys + nsplit - 1) / nsplit;
    chunk = (chunk + 127) / 128 * 128; /* whole steps of the 4 warps' 32 keys */
    nsplit = ((size_t)nkeys + chunk - 1) / chunk;
    blocks = base * nsplit;
    if (blocks > INT32_MAX || rows > INT32_MAX)
        return sw_err(SW_ELIMIT, "CUDA attention: %zu blocks in one call", blocks);
#define SPLIT_LAUNCH(DM)                                                                     \
    attn_split_kernel<DM><<<(unsigned)blocks, SPLIT_WARPS * 32, 0, c->stream>>>(             \
        out, c->attn_ws, q, k, v, T, pos0, max_T, NH, NKV, HD, window, scale, nrg,           \
        (int)nsplit, kbase, (int)chunk)
    switch (att_dmax(HD)) {
    case 64: SPLIT_LAUNCH(64); break;
    case 128: SPLIT_LAUNCH(128); break;
    default: SPLIT_LAUNCH(256); break;
    }
#undef SPLIT_LAUNCH
    SW_CUDA_CHECK_LAUNCH();
    if (nsplit > 1) {
        attn_combine_kernel<<<(unsigned)rows, 128, 0, c->stream>>>(out, c->attn_ws, (int)nsplit,
                                                                   HD);
        SW_CUDA_CHECK_LAUNCH();
    }
    return 0;
}

/* Fused prefill launch; SW_EUNSUPPORTED if the shape is not for it. */
static int attention_prefill(sw_cuda_ctx_t *c, float *out, const float *q, const float *k,
                             const float *v, int B, int T, int pos0, int max_T, int NH, int NKV,
                             int HD, int window, float scale)
{
    const size_t smem = prefill_smem_bytes(HD);
    const size_t rgs = ((size_t)T * (NH / NKV) + FP_ROWS - 1) / FP_ROWS;

    if (att_dmax(HD) == 0 || smem > (size_t)c->smem_optin)
        return sw_err(SW_EUNSUPPORTED, "CUDA attention: the fused prefill kernel needs HD <= 256 "
                      "and %zu bytes of shared memory (the device allows %d)", smem,
                      c->smem_optin);
    if (rgs > INT32_MAX || NKV > 65535 || B > 65535)
        return sw_err(SW_ELIMIT, "CUDA attention: grid of %zu x %d x %d blocks", rgs, NKV, B);
    dim3 grid((unsigned)rgs, (unsigned)NKV, (unsigned)B);
#define PREFILL_LAUNCH(DM)                                                                   \
    do {                                                                                     \
        SW_CUDA_CHECK(cudaFuncSetAttribute(attn_prefill_kernel<DM>,                          \
                                           cudaFuncAttributeMaxDynamicSharedMemorySize,      \
                                           (int)smem));                                      \
        attn_prefill_kernel<DM><<<grid, FP_WARPS * 32, smem, c->stream>>>(                   \
            out, q, k, v, T, pos0, max_T, NH, NKV, HD, window, scale);                       \
    } while (0)
    switch (att_dmax(HD)) {
    case 64: PREFILL_LAUNCH(64); break;
    case 128: PREFILL_LAUNCH(128); break;
    default: PREFILL_LAUNCH(256); break;
    }
#undef PREFILL_LAUNCH
    SW_CUDA_CHECK_LAUNCH();
    return 0;
}

/* Variant 0: which kernel takes this shape (see the head of the file). */
static int attn_pick(const sw_cuda_ctx_t *c, int T, int pos0, int NH, int NKV, int HD,
                     int window)
{
    int rows_per_kv = T * (NH / NKV), nkeys = pos0 + T - att_lo(pos0, window);
    bool fits = att_dmax(HD) > 0;

    if (fits && HD % 4 == 0 && rows_per_kv <= 64 && nkeys >= SPLIT_MIN_KEYS)
        return 2;
    if (fits && T > 1 && prefill_smem_bytes(HD) <= (size_t)c->smem_optin)
        return 3;
    return 1;
}

extern "C" int sw_cuda_attention(sw_cuda_ctx_t *c, float *out, const float *q, const float *k,
                                 const float *v, int B, int T, int pos0, int max_T, int NH,
                                 int NKV, int HD, int window, float scale)
{
    size_t blocks = (size_t)B * (size_t)T * (size_t)NH;
    size_t shmem = (2 * (size_t)HD + ATT_TILE) * sizeof(float);
    int variant;

    if (B < 0 || T < 0 || pos0 < 0 || NH < 1 || NKV < 1 || NH % NKV || HD < 1 || HD > 1024 ||
        window < 0 || (size_t)pos0 + (size_t)T > (size_t)max_T)
        return sw_err(-EINVAL, "CUDA attention: bad shape B %d T %d pos0 %d max_T %d NH %d "
                      "NKV %d HD %d window %d", B, T, pos0, max_T, NH, NKV, HD, window);
    if (blocks == 0)
        return 0;
    if (blocks > INT32_MAX)
        return sw_err(SW_ELIMIT, "CUDA attention: %zu query heads in one call", blocks);
    variant = c->variant[SW_CUDA_K_ATTENTION];
    if (variant == 0) {
        variant = attn_pick(c, T, pos0, NH, NKV, HD, window);
        if (variant == 2 && (uintptr_t)k % 16)
            variant = 1;
    }
    if (variant == 2)
        return attention_split(c, out, q, k, v, B, T, pos0, max_T, NH, NKV, HD, window, scale);
    if (variant == 3)
        return attention_prefill(c, out, q, k, v, B, T, pos0, max_T, NH, NKV, HD, window, scale);
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
