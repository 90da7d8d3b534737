/* log.c - see log.h. Each line is written with one fprintf so lines from threads do not interleave. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "error.h"

static sw_log_level_t cur_level = SW_LOG_WARN;
static char peer_prefix[24];

void sw_log_set_level(sw_log_level_t level)
{
    cur_level = level;
}

sw_log_level_t sw_log_get_level(void)
{
    return cur_level;
}

void sw_log_set_peer(const char *peer)
{
    if (!peer) {
        peer_prefix[0] = '\0';
        return;
    }
    snprintf(peer_prefix, sizeof(peer_prefix), "%.12s ", peer);
}

int sw_log_parse_level(const char *s, sw_log_level_t *out)
{
    static const char *names[] = { "debug", "info", "warn", "error", "off" };

    for (int i = 0; i < 5; i++) {
        if (strcasecmp(s, names[i]) == 0) {
            *out = (sw_log_level_t)i;
            return 0;
        }
    }
    return sw_err(SW_EUSAGE, "unknown log level '%s' (use debug, info, warn, error or off)", s);
}

void sw_log(sw_log_level_t level, const char *component, const char *fmt, ...)
{
    static const char *tags[] = { "DEBUG", "INFO ", "WARN ", "ERROR" };
    char msg[1024], stamp[32];
    struct timespec ts;
    struct tm tm;
    va_list ap;

    if (level < cur_level || level >= SW_LOG_OFF)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(stamp, sizeof(stamp), "%Y-%m-%d %H:%M:%S", &tm);
    fprintf(stderr, "%s.%03ld %s [%s] %s%s\n", stamp, ts.tv_nsec / 1000000L, tags[level], component,
            peer_prefix, msg);
}
