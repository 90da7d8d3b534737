/*
 * log.h - one-line logs with level, component and peer-id prefix, on stderr.
 *
 * Format: "2026-11-23 17:40:01.123 INFO  [pipeline] <peer> message". Quiet by default (WARN and up;
 * progress lines are INFO and shown only when the level allows, see sw_log_set_level()); `-v` turns
 * on INFO, `-vv` DEBUG. Never pass secrets (keys, swarm passphrase) to these calls.
 */
#ifndef SW_UTIL_LOG_H
#define SW_UTIL_LOG_H

typedef enum {
    SW_LOG_DEBUG = 0,
    SW_LOG_INFO = 1,
    SW_LOG_WARN = 2,
    SW_LOG_ERROR = 3,
    SW_LOG_OFF = 4,
} sw_log_level_t;

void sw_log_set_level(sw_log_level_t level);
sw_log_level_t sw_log_get_level(void);
/* Short peer id shown on every line (copied; NULL clears it). Set once at start-up. */
void sw_log_set_peer(const char *peer);
/* Parses "debug|info|warn|error|off"; returns 0 or SW_EUSAGE. */
int sw_log_parse_level(const char *s, sw_log_level_t *out);

void sw_log(sw_log_level_t level, const char *component, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define SW_LOG_D(comp, ...) sw_log(SW_LOG_DEBUG, comp, __VA_ARGS__)
#define SW_LOG_I(comp, ...) sw_log(SW_LOG_INFO, comp, __VA_ARGS__)
#define SW_LOG_W(comp, ...) sw_log(SW_LOG_WARN, comp, __VA_ARGS__)
#define SW_LOG_E(comp, ...) sw_log(SW_LOG_ERROR, comp, __VA_ARGS__)

#endif
