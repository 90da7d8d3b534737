/*
 * backend.h - the CUDA backend: a device context, device memory, device-resident weights, and
 * the ops of kernels/ops.h running on the GPU.
 *
 * Shape of the API. Each op has the signature of its sw_ops_t namesake with two changes: the
 * context comes first (it owns the CUDA stream, the cuBLAS handle and a workspace), and the op
 * returns 0 or a negative code instead of void, because a launch can fail. Attention takes no
 * scratch (it keeps its scores in shared memory). Every pointer an op takes is a DEVICE pointer:
 * activations (fp32), positions and token ids (int32), norms, biases and inverse frequencies
 * (fp32), and the data of weight tensors made by sw_cuda_tensor_upload. The shapes, layouts
 * and semantics are exactly those of kernels/ops.h, and tests/test-cuda.c checks every op
 * against sw_ops_ref.
 *
 * Ordering: ops are queued on the context's stream in call order and run asynchronously; an op
 * returning 0 means it was queued. A fault inside a kernel surfaces at the next call that
 * synchronizes (sw_cuda_sync, sw_cuda_download) or at a later launch check. Every CUDA and
 * cuBLAS call goes through a check that logs file:line and returns SW_EDEVICE with a detail
 * (sw_err_detail()); nothing aborts.
 *
 * Threads: a context and everything queued on it is driven by one thread at a time.
 *
 * Built without nvcc, kernels/cuda/none.c provides these symbols and every function that can
 * fail returns SW_EUNSUPPORTED ("CUDA backend not compiled").
 */
#ifndef SW_KERNELS_CUDA_BACKEND_H
#define SW_KERNELS_CUDA_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "../quant.h"
#include "../tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sw_cuda_ctx sw_cuda_ctx_t;

/*
 * How sw_cuda_matmul multiplies fp32 activations by a weight of dtype F32, F16 or BF16:
 *
 *   SW_CUDA_MATMUL_FP32 (the default): fp32 arithmetic throughout. A 16-bit weight is widened
 *     exactly to fp32 into the workspace, then cublasGemmEx runs fp32 x fp32 with
 *     CUBLAS_COMPUTE_32F (no TF32). Matches the CPU reference to fp32 rounding (rel-L2 ~1e-7).
 *     Costs an extra pass over the weight (read 2 bytes, write and read 4 per element).
 *   SW_CUDA_MATMUL_FAST: tensor cores. The activations are rounded to the weight's dtype into
 *     the workspace, then cublasGemmEx runs 16-bit x 16-bit with fp32 accumulation and an fp32
 *     output (CUBLAS_COMPUTE_32F); F32 weights use CUBLAS_COMPUTE_32F_FAST_TF32. Error is the
 *     rounding of x: rel-L2 about 2^-9 for bf16, 2^-11 for f16, TF32's 2^-11 for f32.
 */
typedef enum {
    SW_CUDA_MATMUL_FP32 = 0,
    SW_CUDA_MATMUL_FAST = 1,
} sw_cuda_matmul_mode_t;

/* ---- context ---- */

/*
 * Makes a context on device dev: a non-blocking stream and a cuBLAS handle bound to it. cuBLAS
 * (libcublas.so.13) is loaded at run time, so binaries built with CUDA start on machines without
 * it; then this fails with SW_EDEVICE naming the library. Caller frees with sw_cuda_ctx_free.
 */
int sw_cuda_ctx_create(int dev, sw_cuda_ctx_t **out);
/* Waits for queued work, then frees the workspace, the handle and the stream. NULL is a no-op. */
void sw_cuda_ctx_free(sw_cuda_ctx_t *c);
void sw_cuda_ctx_set_matmul_mode(sw_cuda_ctx_t *c, sw_cuda_matmul_mode_t mode);
sw_cuda_matmul_mode_t sw_cuda_ctx_matmul_mode(const sw_cuda_ctx_t *c);
/*
 * Makes the context's workspace at least `bytes` (it never shrinks). Call it up front with the
 * largest sw_cuda_matmul_workspace_bytes of the model, so that ops allocate nothing; an op whose
 * workspace is too small fails with SW_ELIMIT.
 */
int sw_cuda_ctx_reserve(sw_cuda_ctx_t *c, size_t bytes);
/* Workspace bytes sw_cuda_matmul needs for x (M, K) times w (N, K) of dtype wdt in mode. */
size_t sw_cuda_matmul_workspace_bytes(sw_cuda_matmul_mode_t mode, sw_dtype_t wdt, int M,
                                      int64_t N, int64_t K);
/* Waits until everything queued on c has run; returns the first error it raised. */
int sw_cuda_sync(sw_cuda_ctx_t *c);

/* ---- device memory ---- */

/* cudaMalloc of bytes (> 0) into *out; free with sw_cuda_free. Running out is SW_EDEVICE. */
int sw_cuda_alloc(sw_cuda_ctx_t *c, size_t bytes, void **out);
/* Frees memory from sw_cuda_alloc after waiting for the stream; NULL is a no-op. */
void sw_cuda_free(sw_cuda_ctx_t *c, void *p);
/* Copies host -> device in stream order; returns once src may be reused. */
int sw_cuda_upload(sw_cuda_ctx_t *c, void *dst, const void *src, size_t bytes);
/* Copies device -> host in stream order; returns once dst holds the data (synchronizes). */
int sw_cuda_download(sw_cuda_ctx_t *c, void *dst, const void *src, size_t bytes);
/* Copies device -> device in stream order (asynchronous). */
int sw_cuda_copy(sw_cuda_ctx_t *c, void *dst, const void *src, size_t bytes);
/* Sets n floats at dst to v (e.g. NaN to poison an output), in stream order. */
int sw_cuda_fill_f32(sw_cuda_ctx_t *c, float *dst, float v, size_t n);

/*
 * Weights on the device. Dense tensors (F32, F16, BF16) keep their dtype and bytes. NF4 tensors
 * keep the bitsandbytes layout (kernels/quant.h): the packed nibbles, then either the fp32
 * absmax or the nested state (8-bit qabsmax codes, fp32 nested_absmax, the offset), each part
 * 16-byte aligned inside one device region. Int8 (LLM.int8()) tensors keep theirs too: the
 * int8 CB (N, K) row-major, then the fp32 SCB (N), 16-byte aligned; the threshold stays in qs.
 * A quantized device tensor's qs is a host-side sw_qstate_t whose pointers are device pointers
 * (never pass it to the CPU ops).
 */

/* Device bytes sw_cuda_tensor_upload_at needs for host (a multiple of 16); 0 if unsupported. */
size_t sw_cuda_tensor_device_bytes(const sw_tensor_t *host);
/*
 * Copies host into the caller's device memory dst (16-byte aligned, at least
 * sw_cuda_tensor_device_bytes(host) bytes): *out gets host's dtype and shape, data = dst,
 * owned = 0, and for NF4 qs = qs_store (caller's storage, which must outlive *out). Nothing is
 * allocated; the caller frees dst. Unsupported dtypes are SW_EUNSUPPORTED.
 */
int sw_cuda_tensor_upload_at(sw_cuda_ctx_t *c, const sw_tensor_t *host, void *dst,
                             sw_qstate_t *qs_store, sw_tensor_t *out);
/*
 * As sw_cuda_tensor_upload_at into a new device allocation of its own (and, for NF4, a new
 * host sw_qstate_t); out->owned is 0 so that sw_tensor_free never touches it: free it with
 * sw_cuda_tensor_free.
 */
int sw_cuda_tensor_upload(sw_cuda_ctx_t *c, const sw_tensor_t *host, sw_tensor_t *out);
/* Frees the device data (and host qs) of a tensor from sw_cuda_tensor_upload; zeroes *t. */
void sw_cuda_tensor_free(sw_cuda_ctx_t *c, sw_tensor_t *t);
/* Free and total bytes of the context's device (cudaMemGetInfo). */
int sw_cuda_mem_info(sw_cuda_ctx_t *c, size_t *free_bytes, size_t *total_bytes);

/*
 * Kernel variants, llm.c style: each kernel family keeps its first (reference) version beside
 * the newer ones, numbered from 1; variant 0 is the mainline choice (by shape where the family
 * says so). Tests check every variant against the CPU reference and bench-gpu times them side
 * by side, so that the fastest can become the mainline. A forced variant that cannot take a
 * shape makes the op fail with SW_EUNSUPPORTED rather than run something else.
 *   SW_CUDA_K_NF4_GEMV  NF4 GEMV for M <= 16 (matmul.cu): 1 the reference kernel (code * absmax
 *                       per weight), 2 absmax factored out of each 32-weight piece + a byte ->
 *                       2-value table, 3 absmax factored out + nibble addresses by byte
 *                       permutes into the 16-entry table, 4 as 3 with 8 rows per warp.
 *   SW_CUDA_K_INT8_BIG  Int8 for M > 16: 1 cuBLAS int8 GEMM (exact int32), 2 our int8 GEMV over
 *                       chunks of 16 rows. 0: 1 where cuBLAS takes the shape, else 2.
 *   SW_CUDA_K_ATTENTION 1 one block per query (the first kernel), 2 split-KV decode, 3 fused
 *                       prefill. 0: by shape (attention.cu, attn_pick).
 * The environment variable SW_CUDA_VARIANT="nf4=3,int8=2,attention=1" sets them in every
 * context when it is made (for whole-program comparisons without a rebuild).
 */
typedef enum {
    SW_CUDA_K_NF4_GEMV = 0,
    SW_CUDA_K_INT8_BIG = 1,
    SW_CUDA_K_ATTENTION = 2,
    SW_CUDA_K_COUNT
} sw_cuda_kernel_t;

/* Bytes of the split-KV attention buffer every context allocates. */
#define SW_CUDA_ATTN_WS_BYTES ((size_t)8 << 20)

/* Forces variant v (0 = mainline) of kernel family k; -EINVAL if there is no such variant. */
int sw_cuda_ctx_set_variant(sw_cuda_ctx_t *c, sw_cuda_kernel_t k, int v);
int sw_cuda_ctx_variant(const sw_cuda_ctx_t *c, sw_cuda_kernel_t k);
/* Number of variants of k, counting 0 (so the numbered ones are 1 .. count - 1). */
int sw_cuda_variant_count(sw_cuda_kernel_t k);
/* A short name of variant v of k ("reference", "split-kv", ...); "?" if out of range. */
const char *sw_cuda_variant_name(sw_cuda_kernel_t k, int v);

/*
 * Device time of the work queued between the two calls, measured with CUDA events on the
 * context's stream (no launch gaps of the host counted before the first kernel starts).
 * sw_cuda_timer_stop synchronizes and puts the seconds in *sec.
 */
int sw_cuda_timer_start(sw_cuda_ctx_t *c);
int sw_cuda_timer_stop(sw_cuda_ctx_t *c, double *sec);

/* ---- ops (device pointers; see kernels/ops.h for the contracts) ---- */

/*
 * y (M, N) = x (M, K) @ w^T + bias; w (N, K) on the device; bias (N) or NULL.
 * For M <= SW_CUDA_GEMV_MAX_M our own GEMV runs (matmul.cu): fp32 products of x and the
 * exactly widened (dense) or dequantized (NF4: code * absmax, as bnb) weight, fp32
 * accumulation, in either mode; it needs K a multiple of 8 (16-bit), 4 (f32) or 32 (NF4, with a
 * power-of-two blocksize >= 32) and 16-byte aligned x; otherwise, and for larger M, the cuBLAS
 * path of the modes above runs (NF4: dequantized to fp32 in the workspace first).
 * Int8 (matmul_int8.cu) computes exactly what the CPU reference computes, in either mode: the
 * outlier columns (|x| >= threshold in any of the M rows) and each row's absmax over the other
 * columns, x quantized to int8 in the workspace, exact int32 dots with the int8 weight (our
 * GEMV for M <= 16; cuBLAS's int8 GEMM above, or our GEMV over chunks of 16 rows where cuBLAS
 * declines the shape), then acc * a * SCB / 127^2 plus the outlier columns in fp32 against
 * CB * SCB / 127, in the reference's order (on the M > 16 cuBLAS path the outlier columns are
 * summed by fp32 GEMMs instead, another order, and the call waits once for their count).
 * Its workspace does not depend on the mode.
 */
#define SW_CUDA_GEMV_MAX_M 16

int sw_cuda_matmul(sw_cuda_ctx_t *c, float *y, const float *x, const sw_tensor_t *w,
                   const float *bias, int M);
/* y (M, H) = x / sqrt(mean(x^2) + eps) * w; y may equal x. */
int sw_cuda_rmsnorm(sw_cuda_ctx_t *c, float *y, const float *x, const float *w, int M, int H,
                    float eps);
/* In-place rotate_half RoPE of x (M, nh, HD) at positions pos (M) with inv_freq (HD/2). */
int sw_cuda_rope(sw_cuda_ctx_t *c, float *x, const int32_t *pos, int M, int nh, int HD,
                 const float *inv_freq, float attn_factor);
/*
 * Causal (optionally sliding-window) GQA attention; q, out (B, T, NH, HD); k, v (B, NKV,
 * max_T, HD). Three kernels (attention.cu), picked by shape unless a variant is forced
 * (sw_cuda_ctx_set_variant, SW_CUDA_K_ATTENTION): split-KV (flash-decoding) when few query
 * rows meet a long cache, a fused flash-attention-style kernel for prefill chunks, and the
 * first one-block-per-query kernel otherwise. The split-KV partial results go to a buffer the
 * context allocates when it is made (SW_CUDA_ATTN_WS_BYTES), which bounds the number of splits.
 */
int sw_cuda_attention(sw_cuda_ctx_t *c, float *out, const float *q, const float *k,
                      const float *v, int B, int T, int pos0, int max_T, int NH, int NKV, int HD,
                      int window, float scale);
/*
 * Appends T new keys and values per sequence to a cache: kn, vn (B, T, NKV, HD) are written to
 * positions pos0 .. pos0 + T - 1 of kc, vc (B, NKV, max_T, HD). Needs pos0 + T <= max_T.
 */
int sw_cuda_kv_append(sw_cuda_ctx_t *c, float *kc, float *vc, const float *kn, const float *vn,
                      int B, int T, int pos0, int max_T, int NKV, int HD);
/* out (n) = silu(gate) * up; out may equal gate or up. */
int sw_cuda_swiglu(sw_cuda_ctx_t *c, float *out, const float *gate, const float *up, size_t n);
/* y (n) += x (n). */
int sw_cuda_add(sw_cuda_ctx_t *c, float *y, const float *x, size_t n);
/*
 * y (M, H) = rows ids[m] of table (V, H). The caller checks ids against V on the host; an id
 * outside [0, V) still reads nothing out of bounds: its row is written as NaN.
 */
int sw_cuda_embed(sw_cuda_ctx_t *c, float *y, const sw_tensor_t *table, const int32_t *ids, int M);

#ifdef __cplusplus
}
#endif

#endif
