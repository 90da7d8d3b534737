/*
 * none.c - the CUDA symbols when swarmd is built without the CUDA backend (no nvcc, or
 * -Dcuda=disabled): the device queries report no device, and every backend call that can fail
 * returns SW_EUNSUPPORTED with the detail "CUDA backend not compiled".
 */
#include "../device.h"
#include "backend.h"

int sw_cuda_device_count(void)
{
    return 0;
}

int sw_cuda_device_name(int dev, char *buf, size_t len)
{
    if (len)
        buf[0] = '\0';
    return SW_EUNSUPPORTED;
}

int sw_cuda_compiled(void)
{
    return 0;
}

static int not_compiled(void)
{
    return sw_err(SW_EUNSUPPORTED,
                  "CUDA backend not compiled (build with nvcc and -Dcuda=enabled)");
}

int sw_cuda_ctx_create(int dev, sw_cuda_ctx_t **out)
{
    *out = NULL;
    return not_compiled();
}

void sw_cuda_ctx_free(sw_cuda_ctx_t *c)
{
}

void sw_cuda_ctx_set_matmul_mode(sw_cuda_ctx_t *c, sw_cuda_matmul_mode_t mode)
{
}

sw_cuda_matmul_mode_t sw_cuda_ctx_matmul_mode(const sw_cuda_ctx_t *c)
{
    return SW_CUDA_MATMUL_FP32;
}

int sw_cuda_ctx_set_variant(sw_cuda_ctx_t *c, sw_cuda_kernel_t k, int v)
{
    return not_compiled();
}

int sw_cuda_ctx_variant(const sw_cuda_ctx_t *c, sw_cuda_kernel_t k)
{
    return 0;
}

int sw_cuda_variant_count(sw_cuda_kernel_t k)
{
    return 0;
}

const char *sw_cuda_variant_name(sw_cuda_kernel_t k, int v)
{
    return "?";
}

int sw_cuda_timer_start(sw_cuda_ctx_t *c)
{
    return not_compiled();
}

int sw_cuda_timer_stop(sw_cuda_ctx_t *c, double *sec)
{
    *sec = 0.0;
    return not_compiled();
}

int sw_cuda_ctx_reserve(sw_cuda_ctx_t *c, size_t bytes)
{
    return not_compiled();
}

size_t sw_cuda_matmul_workspace_bytes(sw_cuda_matmul_mode_t mode, sw_dtype_t wdt, int M,
                                      int64_t N, int64_t K)
{
    return 0;
}

int sw_cuda_sync(sw_cuda_ctx_t *c)
{
    return not_compiled();
}

int sw_cuda_alloc(sw_cuda_ctx_t *c, size_t bytes, void **out)
{
    *out = NULL;
    return not_compiled();
}

void sw_cuda_free(sw_cuda_ctx_t *c, void *p)
{
}

int sw_cuda_upload(sw_cuda_ctx_t *c, void *dst, const void *src, size_t bytes)
{
    return not_compiled();
}

int sw_cuda_copy(sw_cuda_ctx_t *c, void *dst, const void *src, size_t bytes)
{
    return not_compiled();
}

int sw_cuda_download(sw_cuda_ctx_t *c, void *dst, const void *src, size_t bytes)
{
    return not_compiled();
}

int sw_cuda_fill_f32(sw_cuda_ctx_t *c, float *dst, float v, size_t n)
{
    return not_compiled();
}

int sw_cuda_tensor_upload(sw_cuda_ctx_t *c, const sw_tensor_t *host, sw_tensor_t *out)
{
    return not_compiled();
}

void sw_cuda_tensor_free(sw_cuda_ctx_t *c, sw_tensor_t *t)
{
}

size_t sw_cuda_tensor_device_bytes(const sw_tensor_t *host)
{
    return 0;
}

int sw_cuda_tensor_upload_at(sw_cuda_ctx_t *c, const sw_tensor_t *host, void *dst,
                             sw_qstate_t *qs_store, sw_tensor_t *out)
{
    return not_compiled();
}

int sw_cuda_mem_info(sw_cuda_ctx_t *c, size_t *free_bytes, size_t *total_bytes)
{
    *free_bytes = *total_bytes = 0;
    return not_compiled();
}

int sw_cuda_matmul(sw_cuda_ctx_t *c, float *y, const float *x, const sw_tensor_t *w,
                   const float *bias, int M)
{
    return not_compiled();
}

int sw_cuda_rmsnorm(sw_cuda_ctx_t *c, float *y, const float *x, const float *w, int M, int H,
                    float eps)
{
    return not_compiled();
}

int sw_cuda_rope(sw_cuda_ctx_t *c, float *x, const int32_t *pos, int M, int nh, int HD,
                 const float *inv_freq, float attn_factor)
{
    return not_compiled();
}

int sw_cuda_attention(sw_cuda_ctx_t *c, float *out, const float *q, const float *k,
                      const float *v, int B, int T, int pos0, int max_T, int NH, int NKV, int HD,
                      int window, float scale)
{
    (void)pos0;
    return not_compiled();
}

int sw_cuda_kv_append(sw_cuda_ctx_t *c, float *kc, float *vc, const float *kn, const float *vn,
                      int B, int T, int pos0, int max_T, int NKV, int HD)
{
    (void)pos0;
    return not_compiled();
}

int sw_cuda_swiglu(sw_cuda_ctx_t *c, float *out, const float *gate, const float *up, size_t n)
{
    return not_compiled();
}

int sw_cuda_add(sw_cuda_ctx_t *c, float *y, const float *x, size_t n)
{
    return not_compiled();
}

int sw_cuda_embed(sw_cuda_ctx_t *c, float *y, const sw_tensor_t *table, const int32_t *ids, int M)
{
    return not_compiled();
}
