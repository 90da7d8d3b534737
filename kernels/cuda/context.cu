/*
 * context.cu - the CUDA context (stream, cuBLAS handle, workspace), device memory, weight
 * upload and the error checks; see backend.h.
 *
 * cuBLAS is loaded with dlopen the first time a context is made, so that a binary built with
 * CUDA still starts where libcublas is missing (the CUDA runtime itself is linked statically).
 * libcublas talks to the driver directly and shares our primary context, so the streams of the
 * static runtime are valid there.
 */
#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

extern "C" {
#include "../../util/alloc.h"
#include "../../util/log.h"
}

/* ------------------------------------------------------------------------------------------ */
/* errors                                                                                      */

int sw_cuda_fail(const char *file, int line, const char *what, const char *msg)
{
    SW_LOG_E("cuda", "%s:%d: %s: %s", file, line, what, msg);
    return sw_err(SW_EDEVICE, "%s:%d: %s: %s", file, line, what, msg);
}

int sw_cublas_fail(const sw_cuda_ctx_t *c, const char *file, int line, const char *what,
                   cublasStatus_t s)
{
    char msg[96];

    snprintf(msg, sizeof(msg), "cuBLAS status %d (%s)", (int)s,
             c && c->api && c->api->status_string ? c->api->status_string(s) : "?");
    return sw_cuda_fail(file, line, what, msg);
}

/* ------------------------------------------------------------------------------------------ */
/* cuBLAS loading (once per process)                                                           */

static sw_cublas_api_t cublas_api;
static int cublas_status = 1; /* 1: not tried; 0: loaded; < 0: failed */
static char cublas_error[256];
static pthread_once_t cublas_once = PTHREAD_ONCE_INIT;

static void cublas_load(void)
{
    static const char *const names[] = { "libcublas.so.13", "libcublas.so" };
    void *lib = NULL;

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]) && !lib; i++)
        lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        snprintf(cublas_error, sizeof(cublas_error), "cannot load libcublas.so.13: %s",
                 dlerror());
        cublas_status = SW_EDEVICE;
        return;
    }
#define SYM(field, name)                                                                     \
    do {                                                                                     \
        *(void **)&cublas_api.field = dlsym(lib, name);                                      \
        if (!cublas_api.field) {                                                             \
            snprintf(cublas_error, sizeof(cublas_error), "libcublas lacks %s", name);        \
            dlclose(lib);                                                                    \
            cublas_status = SW_EDEVICE;                                                      \
            return;                                                                          \
        }                                                                                    \
    } while (0)
    SYM(create, "cublasCreate_v2");
    SYM(destroy, "cublasDestroy_v2");
    SYM(set_stream, "cublasSetStream_v2");
    SYM(set_math_mode, "cublasSetMathMode");
    SYM(gemm_ex, "cublasGemmEx");
    SYM(status_string, "cublasGetStatusString");
#undef SYM
    cublas_api.lib = lib; /* kept loaded for the life of the process */
    cublas_status = 0;
}

/* ------------------------------------------------------------------------------------------ */
/* context                                                                                     */

/*
 * SW_CUDA_VARIANT="nf4=3,int8=2,attention=1" forces variants in every new context, so that a
 * whole program (swarmd, test-cuda's model runs, bench-gpu) can be compared across variants
 * without a rebuild. A bad entry is logged and skipped.
 */
static void variants_from_env(sw_cuda_ctx_t *c)
{
    static const char *const fam[SW_CUDA_K_COUNT] = { "nf4", "int8", "attention" };
    const char *e = getenv("SW_CUDA_VARIANT");
    char buf[128], *save = NULL;

    if (!e || !*e)
        return;
    snprintf(buf, sizeof(buf), "%s", e);
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(tok, '=');
        int k = -1, v = -1;
        if (eq) {
            *eq = '\0';
            for (int i = 0; i < SW_CUDA_K_COUNT; i++)
                if (strcmp(tok, fam[i]) == 0)
                    k = i;
            v = atoi(eq + 1);
        }
        if (k < 0 || v < 0 || v >= sw_cuda_variant_count((sw_cuda_kernel_t)k)) {
            SW_LOG_W("cuda", "SW_CUDA_VARIANT: ignoring '%s': write FAMILY=N with FAMILY one of "
                     "nf4, int8, attention and N a variant number (backend.h)", tok);
            continue;
        }
        c->variant[k] = v;
        SW_LOG_I("cuda", "SW_CUDA_VARIANT: %s kernels use variant %d (%s)", fam[k], v,
                 sw_cuda_variant_name((sw_cuda_kernel_t)k, v));
    }
}

extern "C" int sw_cuda_ctx_create(int dev, sw_cuda_ctx_t **out)
{
    sw_cuda_ctx_t *c;
    int r;

    pthread_once(&cublas_once, cublas_load);
    if (cublas_status < 0)
        return sw_err(cublas_status, "CUDA: %s", cublas_error);
    c = (sw_cuda_ctx_t *)sw_calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->dev = dev;
    c->api = &cublas_api;
    c->mode = SW_CUDA_MATMUL_FP32;
    r = [&]() -> int {
        SW_CUDA_CHECK(cudaSetDevice(dev));
        SW_CUDA_CHECK(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
        SW_CUBLAS_CHECK(c, c->api->create(&c->blas));
        SW_CUBLAS_CHECK(c, c->api->set_stream(c->blas, c->stream));
        /* no TF32 unless a call asks for it through its compute type */
        SW_CUBLAS_CHECK(c, c->api->set_math_mode(c->blas, CUBLAS_DEFAULT_MATH));
        SW_CUDA_CHECK(cudaDeviceGetAttribute(&c->num_sms, cudaDevAttrMultiProcessorCount, dev));
        SW_CUDA_CHECK(cudaDeviceGetAttribute(&c->smem_optin,
                                             cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
        SW_CUDA_CHECK(cudaMalloc((void **)&c->attn_ws, SW_CUDA_ATTN_WS_BYTES));
        SW_CUDA_CHECK(cudaEventCreate(&c->ev_start));
        SW_CUDA_CHECK(cudaEventCreate(&c->ev_stop));
        return 0;
    }();
    if (r < 0) {
        sw_cuda_ctx_free(c);
        return r;
    }
    variants_from_env(c);
    *out = c;
    return 0;
}

extern "C" void sw_cuda_ctx_free(sw_cuda_ctx_t *c)
{
    if (!c)
        return;
    if (c->stream)
        cudaStreamSynchronize(c->stream); /* errors here are reported by whoever queued the work */
    if (c->ws)
        cudaFree(c->ws);
    if (c->attn_ws)
        cudaFree(c->attn_ws);
    if (c->ev_start)
        cudaEventDestroy(c->ev_start);
    if (c->ev_stop)
        cudaEventDestroy(c->ev_stop);
    if (c->blas)
        c->api->destroy(c->blas);
    if (c->stream)
        cudaStreamDestroy(c->stream);
    cudaGetLastError();
    sw_free(c);
}

extern "C" void sw_cuda_ctx_set_matmul_mode(sw_cuda_ctx_t *c, sw_cuda_matmul_mode_t mode)
{
    c->mode = mode;
}

extern "C" sw_cuda_matmul_mode_t sw_cuda_ctx_matmul_mode(const sw_cuda_ctx_t *c)
{
    return c->mode;
}

/* ---- kernel variants (backend.h) ---- */

/* Indexed by sw_cuda_kernel_t, in its order. */
static const char *const variant_names[SW_CUDA_K_COUNT][6] = {
    { "mainline", "reference", "factored+pair-table", "factored+prmt-nibbles",
      "factored+prmt-8rows", NULL },                                  /* SW_CUDA_K_NF4_GEMV */
    { "auto", "cublas-int8", "gemv-chunks", NULL },                   /* SW_CUDA_K_INT8_BIG */
    { "auto", "reference", "split-kv", "flash-prefill", NULL },       /* SW_CUDA_K_ATTENTION */
};

extern "C" int sw_cuda_variant_count(sw_cuda_kernel_t k)
{
    int n = 0;

    if ((int)k < 0 || k >= SW_CUDA_K_COUNT)
        return 0;
    while (n < 6 && variant_names[k][n])
        n++;
    return n;
}

extern "C" const char *sw_cuda_variant_name(sw_cuda_kernel_t k, int v)
{
    return v >= 0 && v < sw_cuda_variant_count(k) ? variant_names[k][v] : "?";
}

extern "C" int sw_cuda_ctx_set_variant(sw_cuda_ctx_t *c, sw_cuda_kernel_t k, int v)
{
    if (v < 0 || v >= sw_cuda_variant_count(k))
        return sw_err(-EINVAL, "CUDA: kernel family %d has no variant %d", (int)k, v);
    c->variant[k] = v;
    return 0;
}

extern "C" int sw_cuda_ctx_variant(const sw_cuda_ctx_t *c, sw_cuda_kernel_t k)
{
    return (int)k >= 0 && k < SW_CUDA_K_COUNT ? c->variant[k] : 0;
}

extern "C" int sw_cuda_timer_start(sw_cuda_ctx_t *c)
{
    SW_CUDA_CHECK(cudaEventRecord(c->ev_start, c->stream));
    return 0;
}

extern "C" int sw_cuda_timer_stop(sw_cuda_ctx_t *c, double *sec)
{
    float ms = 0.0f;

    SW_CUDA_CHECK(cudaEventRecord(c->ev_stop, c->stream));
    SW_CUDA_CHECK(cudaEventSynchronize(c->ev_stop));
    SW_CUDA_CHECK(cudaEventElapsedTime(&ms, c->ev_start, c->ev_stop));
    *sec = 1e-3 * (double)ms;
    return 0;
}

extern "C" int sw_cuda_ctx_reserve(sw_cuda_ctx_t *c, size_t bytes)
{
    void *p = NULL;

    if (bytes <= c->ws_bytes)
        return 0;
    SW_CUDA_CHECK(cudaSetDevice(c->dev));
    SW_CUDA_CHECK(cudaStreamSynchronize(c->stream)); /* queued ops may still use the old one */
    SW_CUDA_CHECK(cudaMalloc(&p, bytes));
    if (c->ws)
        cudaFree(c->ws);
    c->ws = p;
    c->ws_bytes = bytes;
    return 0;
}

extern "C" int sw_cuda_sync(sw_cuda_ctx_t *c)
{
    SW_CUDA_CHECK(cudaStreamSynchronize(c->stream));
    SW_CUDA_CHECK(cudaGetLastError());
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* memory                                                                                      */

extern "C" int sw_cuda_alloc(sw_cuda_ctx_t *c, size_t bytes, void **out)
{
    void *p = NULL;

    if (bytes == 0)
        return sw_err(-EINVAL, "CUDA: allocation of 0 bytes");
    SW_CUDA_CHECK(cudaSetDevice(c->dev));
    SW_CUDA_CHECK(cudaMalloc(&p, bytes));
    *out = p;
    return 0;
}

extern "C" void sw_cuda_free(sw_cuda_ctx_t *c, void *p)
{
    if (!p)
        return;
    cudaStreamSynchronize(c->stream);
    cudaFree(p);
    cudaGetLastError();
}

extern "C" int sw_cuda_upload(sw_cuda_ctx_t *c, void *dst, const void *src, size_t bytes)
{
    if (bytes == 0)
        return 0;
    /* pageable host memory: cudaMemcpyAsync returns once src is staged, but be explicit */
    SW_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->stream));
    SW_CUDA_CHECK(cudaStreamSynchronize(c->stream));
    return 0;
}

extern "C" int sw_cuda_download(sw_cuda_ctx_t *c, void *dst, const void *src, size_t bytes)
{
    if (bytes == 0)
        return 0;
    SW_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->stream));
    SW_CUDA_CHECK(cudaStreamSynchronize(c->stream));
    return 0;
}

extern "C" int sw_cuda_copy(sw_cuda_ctx_t *c, void *dst, const void *src, size_t bytes)
{
    if (bytes == 0)
        return 0;
    SW_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, c->stream));
    return 0;
}

static __global__ void fill_f32_kernel(float *dst, float v, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = v;
}

extern "C" int sw_cuda_fill_f32(sw_cuda_ctx_t *c, float *dst, float v, size_t n)
{
    if (n == 0)
        return 0;
    fill_f32_kernel<<<sw_cuda_grid(n, 256), 256, 0, c->stream>>>(dst, v, n);
    SW_CUDA_CHECK_LAUNCH();
    return 0;
}

/* ---- weights ---- */

static size_t align16(size_t n)
{
    return (n + 15) & ~(size_t)15;
}

/* Byte offsets of the parts of an NF4 tensor in its device region (see backend.h). */
typedef struct {
    size_t packed, absmax, nested, total;
} nf4_layout_t;

static nf4_layout_t nf4_layout(const sw_tensor_t *t)
{
    const sw_qstate_t *qs = t->qs;
    nf4_layout_t l;
    size_t nb = (size_t)qs->nblocks;

    l.packed = align16(sw_tensor_nbytes(t));
    l.absmax = qs->absmax ? align16(nb * 4) : align16(nb);
    l.nested = qs->absmax ? 0
                          : align16((nb + (size_t)qs->nested_blocksize - 1) /
                                    (size_t)qs->nested_blocksize * 4);
    l.total = l.packed + l.absmax + l.nested;
    return l;
}

/* Whether host is an Int8 (LLM.int8()) weight the GPU takes: 2-D with its SCB. */
static bool int8_ok(const sw_tensor_t *host)
{
    return host->dtype == SW_DTYPE_I8 && host->ndim == 2 && host->qs && host->qs->scb &&
           host->shape[0] > 0 && host->shape[1] > 0;
}

extern "C" size_t sw_cuda_tensor_device_bytes(const sw_tensor_t *host)
{
    if (host->ndim < 1)
        return 0;
    if (int8_ok(host)) /* CB, then SCB */
        return align16(sw_tensor_nbytes(host)) + align16((size_t)host->shape[0] * 4);
    if (host->dtype == SW_DTYPE_NF4 && host->qs && host->qs->blocksize > 0 &&
        (host->qs->absmax || (host->qs->qabsmax && host->qs->nested_absmax &&
                              host->qs->nested_blocksize > 0)))
        return nf4_layout(host).total;
    if (host->qs || (host->dtype != SW_DTYPE_F32 && host->dtype != SW_DTYPE_F16 &&
                     host->dtype != SW_DTYPE_BF16))
        return 0;
    return align16(sw_tensor_nbytes(host));
}

extern "C" int sw_cuda_tensor_upload_at(sw_cuda_ctx_t *c, const sw_tensor_t *host, void *dst,
                                        sw_qstate_t *qs_store, sw_tensor_t *out)
{
    sw_tensor_t t = *host;
    size_t n = sw_cuda_tensor_device_bytes(host);
    int r;

    if (n == 0)
        return sw_err(SW_EUNSUPPORTED, "CUDA: %s weights are not supported on the GPU yet",
                      sw_dtype_name(host->dtype));
    if ((uintptr_t)dst % 16)
        return sw_err(-EINVAL, "CUDA: weight destination is not 16-byte aligned");
    if ((r = sw_cuda_upload(c, dst, host->data, sw_tensor_nbytes(host))) < 0)
        return r;
    t.data = dst;
    t.owned = 0;
    t.qs = NULL;
    if (host->dtype == SW_DTYPE_NF4) {
        const sw_qstate_t *hq = host->qs;
        nf4_layout_t l = nf4_layout(host);
        uint8_t *base = (uint8_t *)dst;
        size_t nb = (size_t)hq->nblocks;

        *qs_store = *hq;
        qs_store->owned = NULL;
        qs_store->scb = NULL;
        if (hq->absmax) {
            qs_store->absmax = (const float *)(base + l.packed);
            r = sw_cuda_upload(c, base + l.packed, hq->absmax, nb * 4);
        } else {
            size_t nn = (nb + (size_t)hq->nested_blocksize - 1) / (size_t)hq->nested_blocksize;
            qs_store->qabsmax = base + l.packed;
            qs_store->nested_absmax = (const float *)(base + l.packed + l.absmax);
            r = sw_cuda_upload(c, base + l.packed, hq->qabsmax, nb);
            if (r == 0)
                r = sw_cuda_upload(c, base + l.packed + l.absmax, hq->nested_absmax, nn * 4);
        }
        if (r < 0)
            return r;
        t.qs = qs_store;
    } else if (host->dtype == SW_DTYPE_I8) {
        uint8_t *scb = (uint8_t *)dst + align16(sw_tensor_nbytes(host));

        memset(qs_store, 0, sizeof(*qs_store));
        qs_store->threshold = host->qs->threshold;
        qs_store->scb = (const float *)scb;
        if ((r = sw_cuda_upload(c, scb, host->qs->scb, (size_t)host->shape[0] * 4)) < 0)
            return r;
        t.qs = qs_store;
    }
    *out = t;
    return 0;
}

extern "C" int sw_cuda_tensor_upload(sw_cuda_ctx_t *c, const sw_tensor_t *host, sw_tensor_t *out)
{
    size_t n = sw_cuda_tensor_device_bytes(host);
    sw_qstate_t *qs = NULL;
    void *p = NULL;
    int r;

    if (n == 0)
        return sw_err(SW_EUNSUPPORTED, "CUDA: %s weights are not supported on the GPU yet",
                      sw_dtype_name(host->dtype));
    if ((host->dtype == SW_DTYPE_NF4 || host->dtype == SW_DTYPE_I8) &&
        !(qs = (sw_qstate_t *)sw_calloc(1, sizeof(*qs))))
        return -ENOMEM;
    if ((r = sw_cuda_alloc(c, n, &p)) < 0 ||
        (r = sw_cuda_tensor_upload_at(c, host, p, qs, out)) < 0) {
        sw_cuda_free(c, p);
        sw_free(qs);
        return r;
    }
    return 0;
}

extern "C" void sw_cuda_tensor_free(sw_cuda_ctx_t *c, sw_tensor_t *t)
{
    if (!t)
        return;
    sw_cuda_free(c, t->data);
    sw_free((void *)t->qs);
    memset(t, 0, sizeof(*t));
}

extern "C" int sw_cuda_mem_info(sw_cuda_ctx_t *c, size_t *free_bytes, size_t *total_bytes)
{
    SW_CUDA_CHECK(cudaSetDevice(c->dev));
    SW_CUDA_CHECK(cudaMemGetInfo(free_bytes, total_bytes));
    return 0;
}
