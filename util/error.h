/*
 * error.h - the one error contract of swarmd.
 *
 * Every function that can fail returns int: 0 on success, or a negative code on failure.
 * A negative code is either -errno (e.g. -ENOMEM, -ENOENT) or one of the SW_E* codes below,
 * which all lie below SW_E_BASE so they never collide with errno values. Callers pass codes up
 * unchanged. sw_strerror() turns a code into words.
 *
 * A failing function may also attach a detail message with sw_err(), e.g.
 *     return sw_err(SW_EFORMAT, "%s: header length %llu exceeds %u", path, n, max);
 * The detail lives in thread-local storage until the next sw_err() on that thread; the CLI prints
 * sw_err_detail() so the user sees which file and what went wrong, not only "bad format".
 */
#ifndef SW_UTIL_ERROR_H
#define SW_UTIL_ERROR_H

#include <errno.h>

#define SW_E_BASE 1000
enum {
    SW_EFORMAT = -(SW_E_BASE + 1),      /* malformed input: file or message does not parse or fails a check */
    SW_EUNSUPPORTED = -(SW_E_BASE + 2), /* well-formed but not supported (architecture, dtype, option) */
    SW_ELIMIT = -(SW_E_BASE + 3),       /* a configured or built-in limit would be exceeded */
    SW_ESTATE = -(SW_E_BASE + 4),       /* call not valid in the object's current state */
    SW_EUSAGE = -(SW_E_BASE + 5),       /* bad command-line usage */
    SW_EDEVICE = -(SW_E_BASE + 6),      /* accelerator (CUDA) failure */
};

/* Returns a static string describing code (SW_E* or -errno). Never NULL. */
const char *sw_strerror(int code);

/*
 * Records a printf-style detail message for the calling thread and returns code unchanged, so it
 * can be used as `return sw_err(code, ...)`.
 */
int sw_err(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The calling thread's last detail message, or "" if none. Valid until the next sw_err(). */
const char *sw_err_detail(void);

/* Forgets the calling thread's detail message. */
void sw_err_clear(void);

#endif
