/*
 * embed.cu - y (M, H) = rows ids[m] of table (V, H), widened exactly to fp32.
 *
 * One thread per output element. An id outside [0, V) reads nothing: its row becomes NaN, so a
 * caller that skipped the host-side check sees poisoned logits instead of a memory fault.
 */
#include <errno.h>
#include <math.h>

#include "internal.h"

static __global__ void embed_kernel(float *y, const void *table, int dt, const int32_t *ids,
                                    int64_t V, int64_t H, size_t n)
{
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < n;
         idx += (size_t)gridDim.x * blockDim.x) {
        size_t m = idx / (size_t)H, i = idx % (size_t)H;
        int32_t id = ids[m];
        y[idx] = id >= 0 && id < V ? sw_dev_load(table, dt, (size_t)id * (size_t)H + i) : NAN;
    }
}

extern "C" int sw_cuda_embed(sw_cuda_ctx_t *c, float *y, const sw_tensor_t *table,
                             const int32_t *ids, int M)
{
    size_t n;

    if (table->ndim != 2 || table->qs ||
        (table->dtype != SW_DTYPE_F32 && table->dtype != SW_DTYPE_F16 &&
         table->dtype != SW_DTYPE_BF16))
        return sw_err(SW_EUNSUPPORTED, "CUDA embed: needs a dense 2-d F32/F16/BF16 table");
    if (M < 0)
        return sw_err(-EINVAL, "CUDA embed: M %d", M);
    n = (size_t)M * (size_t)table->shape[1];
    if (n == 0)
        return 0;
    embed_kernel<<<sw_cuda_grid(n, 256), 256, 0, c->stream>>>(y, table->data, table->dtype, ids,
                                                             table->shape[0], table->shape[1], n);
    SW_CUDA_CHECK_LAUNCH();
    return 0;
}
