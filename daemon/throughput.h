/*
 * throughput.h - what `swarmd serve` knows about the machine it runs on: compute throughput
 * measured once per device, model and weight format and kept in a cache file (Petals'
 * throughput_v5.json; shared/reference/petals.md section 1.5), the CPU's name, and the memory
 * free for blocks.
 *
 * The cache file is <dir>/throughput.json, dir = $SWARMD_CACHE_DIR, else $XDG_CACHE_HOME/swarmd,
 * else ~/.cache/swarmd. It is one JSON object:
 *   {"version": 1, "entries": {"KEY": {"forward_rps": X, "inference_rps": Y, "time": UNIX}, ...}}
 * KEY = "DEVICE|MODEL|FORMAT" (sw_tput_key). The file is treated as hostile: read bounded to
 * 1 MiB, parsed strictly, every value checked (finite, > 0, <= 1e12); a malformed file or entry
 * is a miss (with a warning) and is replaced on the next write. Writers hold an exclusive flock on
 * <dir>/throughput.lock while they measure and write (so two servers starting on one host do not
 * measure at the same time and the second one finds the first one's figures), write a temporary
 * file and rename it over the old one. At most SW_TPUT_MAX_ENTRIES entries are kept (newest).
 */
#ifndef SW_DAEMON_THROUGHPUT_H
#define SW_DAEMON_THROUGHPUT_H

#include <stddef.h>
#include <stdint.h>

#define SW_TPUT_MAX_ENTRIES 256
#define SW_TPUT_MAX_FILE (1u << 20)

typedef struct {
    double forward_rps;   /* tokens/s through one block, forward passes of many tokens */
    double inference_rps; /* tokens/s through one block, decode steps */
} sw_tput_t;

/* The cache directory (see above) into buf; SW_EUSAGE when no variable names one. */
int sw_tput_cache_dir(char *buf, size_t cap);

/*
 * The cache key: device, then the first 8 bytes (hex) of the BLAKE2b digest of
 * <model_dir>/config.json's bytes (the architecture; block weights do not change the speed),
 * then the weight format. Fails when config.json cannot be read.
 */
int sw_tput_key(const char *device, const char *model_dir, const char *format, char *buf, size_t cap);

/*
 * Looks key up in the cache file of dir; with force = 0 a hit fills *out and returns 1. On a miss
 * (or force), calls measure(arg, out) under the directory's lock, stores the result and returns
 * 0. A cache that cannot be read or written only costs a warning (the figures are measured and
 * used anyway); the error of measure() is returned as is.
 */
int sw_tput_get(const char *dir, const char *key, int force, int (*measure)(void *arg, sw_tput_t *out),
                void *arg, sw_tput_t *out);

/*
 * Parses the text of a cache file and looks key up: 1 and *out on a hit, 0 on a miss, SW_EFORMAT
 * (with a detail) when the text is not a cache file. For tests and sw_tput_get.
 */
int sw_tput_parse(const char *text, size_t len, const char *key, sw_tput_t *out);

/* "cpu: MODEL NAME (N threads)" from /proc/cpuinfo, or "cpu (N threads)". threads 0: online CPUs. */
void sw_cpu_label(int threads, char *buf, size_t cap);

/* MemAvailable of /proc/meminfo in bytes; -ENOENT (with a detail) when it cannot be read. */
int sw_mem_available(uint64_t *out);

#endif
