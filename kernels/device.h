/*
 * device.h - which accelerators this build can use. A binary built with the CUDA backend still
 * runs on a machine without a GPU: the queries then report zero devices.
 */
#ifndef SW_KERNELS_DEVICE_H
#define SW_KERNELS_DEVICE_H

#include <stddef.h>

#include "../util/error.h"

/* 1 if the CUDA backend was compiled in. */
int sw_cuda_compiled(void);
/* Number of usable CUDA devices (0 when none, no driver, or not compiled). */
int sw_cuda_device_count(void);
/* Writes the name of device `dev` into buf; 0 or a negative code. */
int sw_cuda_device_name(int dev, char *buf, size_t len);

#endif
