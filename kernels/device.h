/*
 * device.h - which accelerators this build can use. A binary built with the CUDA backend still
 * runs on a machine without a GPU: the queries then report zero devices.
 */
#ifndef SW_KERNELS_DEVICE_H
#define SW_KERNELS_DEVICE_H

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "../util/error.h"

/* 1 if the CUDA backend was compiled in. */
int sw_cuda_compiled(void);
/* Number of usable CUDA devices (0 when none, no driver, or not compiled). */
int sw_cuda_device_count(void);
/* Writes the name of device `dev` into buf; 0 or a negative code. */
int sw_cuda_device_name(int dev, char *buf, size_t len);

/* Where a model runs: the CPU, or CUDA device `index`. */
typedef enum { SW_DEVICE_CPU = 0, SW_DEVICE_CUDA = 1 } sw_device_kind_t;
typedef struct {
    sw_device_kind_t kind;
    int index;
} sw_device_t;

/* Parses "cpu", "cuda" (device 0) or "cuda:N"; SW_EUSAGE with a message otherwise. */
static inline int sw_device_parse(const char *s, sw_device_t *out)
{
    if (strcmp(s, "cpu") == 0) {
        out->kind = SW_DEVICE_CPU;
        out->index = 0;
        return 0;
    }
    if (strncmp(s, "cuda", 4) == 0 && (s[4] == '\0' || s[4] == ':')) {
        long n = 0;
        char *end = NULL;
        if (s[4] == ':') {
            n = strtol(s + 5, &end, 10);
            if (s[5] == '\0' || *end != '\0' || n < 0 || n > 1023)
                return sw_err(SW_EUSAGE, "--device cuda:N wants a device number, not '%s'", s);
        }
        out->kind = SW_DEVICE_CUDA;
        out->index = (int)n;
        return 0;
    }
    return sw_err(SW_EUSAGE, "--device is 'cpu', 'cuda' or 'cuda:N', not '%s'", s);
}

/*
 * 0 if dev can be used: always for the CPU; for CUDA, the backend must be compiled in and the
 * device present. Otherwise SW_EUNSUPPORTED or SW_EDEVICE with a message that says which.
 */
static inline int sw_device_check(const sw_device_t *dev)
{
    int n;

    if (dev->kind == SW_DEVICE_CPU)
        return 0;
    if (!sw_cuda_compiled())
        return sw_err(SW_EUNSUPPORTED, "--device cuda: this swarmd was built without the CUDA "
                      "backend (rebuild with nvcc, -Dcuda=enabled), use --device cpu");
    n = sw_cuda_device_count();
    if (n < 1)
        return sw_err(SW_EDEVICE, "--device cuda: no CUDA GPU found (no NVIDIA GPU, or no "
                      "driver); use --device cpu");
    if (dev->index >= n)
        return sw_err(SW_EDEVICE, "--device cuda:%d: only %d CUDA device%s (0..%d)", dev->index,
                      n, n == 1 ? "" : "s", n - 1);
    return 0;
}

#endif
