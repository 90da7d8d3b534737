/*
 * device.cu - CUDA device queries (see kernels/device.h). Linked against the static CUDA
 * runtime, so the binary starts on machines without CUDA; the runtime then reports no device.
 */
#include <cuda_runtime.h>
#include <stdio.h>

extern "C" {
#include "../device.h"
}

extern "C" int sw_cuda_compiled(void)
{
    return 1;
}

extern "C" int sw_cuda_device_count(void)
{
    int n = 0;

    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky "no driver / no device" error */
        return 0;
    }
    return n;
}

extern "C" int sw_cuda_device_name(int dev, char *buf, size_t len)
{
    cudaDeviceProp prop;
    cudaError_t e = cudaGetDeviceProperties(&prop, dev);

    if (e != cudaSuccess) {
        cudaGetLastError();
        return sw_err(SW_EDEVICE, "CUDA device %d: %s", dev, cudaGetErrorString(e));
    }
    snprintf(buf, len, "%s (sm_%d%d, %.1f GiB)", prop.name, prop.major, prop.minor,
             (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
    return 0;
}
