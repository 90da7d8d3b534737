/* error.c - code-to-text and thread-local detail messages; see error.h. */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char detail[512];

const char *sw_strerror(int code)
{
    switch (code) {
    case 0: return "success";
    case SW_EFORMAT: return "malformed input";
    case SW_EUNSUPPORTED: return "not supported";
    case SW_ELIMIT: return "limit exceeded";
    case SW_ESTATE: return "invalid state";
    case SW_EUSAGE: return "bad usage";
    case SW_EDEVICE: return "device error";
    default: break;
    }
    if (code < 0 && code > -SW_E_BASE)
        return strerror(-code);
    return "unknown error";
}

int sw_err(int code, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    return code;
}

const char *sw_err_detail(void)
{
    return detail;
}

void sw_err_clear(void)
{
    detail[0] = '\0';
}
