/* none.c - device queries when swarmd is built without the CUDA backend. */
#include "../device.h"

int sw_cuda_device_count(void)
{
    return 0;
}

int sw_cuda_device_name(int dev, char *buf, size_t len)
{
    (void)dev;
    if (len)
        buf[0] = '\0';
    return SW_EUNSUPPORTED;
}

int sw_cuda_compiled(void)
{
    return 0;
}
