/*
 * throughput.c - the throughput cache file, the CPU's name and free memory (see throughput.h).
 */
#include "throughput.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <sodium.h>

#include "util/alloc.h"
#include "util/error.h"
#include "util/file.h"
#include "util/log.h"

int sw_tput_cache_dir(char *buf, size_t cap)
{
    const char *d = getenv("SWARMD_CACHE_DIR"), *x = getenv("XDG_CACHE_HOME"), *h = getenv("HOME");
    int n;

    if (d && d[0])
        n = snprintf(buf, cap, "%s", d);
    else if (x && x[0] == '/')
        n = snprintf(buf, cap, "%s/swarmd", x);
    else if (h && h[0])
        n = snprintf(buf, cap, "%s/.cache/swarmd", h);
    else
        return sw_err(SW_EUSAGE, "no cache directory: set SWARMD_CACHE_DIR or HOME");
    if (n < 0 || (size_t)n >= cap)
        return sw_err(SW_ELIMIT, "cache directory path too long");
    return 0;
}

int sw_tput_key(const char *device, const char *model_dir, const char *format, char *buf, size_t cap)
{
    char *path = sw_path_join(model_dir, "config.json"), *text = NULL;
    uint8_t h[8];
    size_t len = 0;
    int r, n;

    if (!path)
        return -ENOMEM;
    r = sw_file_read(path, 1u << 20, &text, &len);
    sw_free(path);
    if (r < 0)
        return r;
    crypto_generichash(h, sizeof(h), (const unsigned char *)text, len, NULL, 0);
    sw_free(text);
    n = snprintf(buf, cap, "%s|%02x%02x%02x%02x%02x%02x%02x%02x|%s", device, h[0], h[1], h[2], h[3],
                 h[4], h[5], h[6], h[7], format);
    if (n < 0 || (size_t)n >= cap)
        return sw_err(SW_ELIMIT, "throughput cache key too long");
    return 0;
}

/* A rate from the file: a number, finite, in (0, 1e12]. */
static int rate_ok(json_t *v, double *out)
{
    double x;

    if (!v || !json_is_number(v))
        return 0;
    x = json_number_value(v);
    if (!isfinite(x) || !(x > 0) || x > 1e12)
        return 0;
    *out = x;
    return 1;
}

/* The "entries" object of a parsed cache file, or NULL when it is not one. */
static json_t *entries_of(json_t *root)
{
    json_t *ver, *ents;

    if (!json_is_object(root))
        return NULL;
    ver = json_object_get(root, "version");
    ents = json_object_get(root, "entries");
    if (!ver || !json_is_integer(ver) || json_integer_value(ver) != 1 || !json_is_object(ents))
        return NULL;
    return ents;
}

static int entry_get(json_t *ents, const char *key, sw_tput_t *out)
{
    json_t *e = json_object_get(ents, key);
    sw_tput_t t;

    if (!json_is_object(e) || !rate_ok(json_object_get(e, "forward_rps"), &t.forward_rps) ||
        !rate_ok(json_object_get(e, "inference_rps"), &t.inference_rps))
        return 0;
    *out = t;
    return 1;
}

int sw_tput_parse(const char *text, size_t len, const char *key, sw_tput_t *out)
{
    json_t *root = NULL, *ents;
    int r;

    if ((r = sw_json_parse(text, len, "throughput cache", &root)) < 0)
        return r;
    ents = entries_of(root);
    if (!ents) {
        json_decref(root);
        return sw_err(SW_EFORMAT, "throughput cache: not {\"version\": 1, \"entries\": {...}}");
    }
    r = entry_get(ents, key, out);
    json_decref(root);
    return r;
}

/* Drops the oldest entries (by "time"; malformed ones first) until at most max are left. */
static void prune(json_t *ents, size_t max)
{
    while (json_object_size(ents) > max) {
        const char *k, *oldest = NULL;
        json_t *v;
        double tmin = INFINITY;
        json_object_foreach(ents, k, v) {
            json_t *t = json_is_object(v) ? json_object_get(v, "time") : NULL;
            double tv = t && json_is_number(t) ? json_number_value(t) : -INFINITY;
            if (!oldest || tv < tmin) {
                oldest = k;
                tmin = tv;
            }
        }
        if (!oldest)
            break;
        json_object_del(ents, oldest);
    }
}

/* Writes root to <dir>/throughput.json through a temporary file and a rename. */
static int write_cache(const char *dir, json_t *root)
{
    char path[4200], tmp[4300];
    char *text = json_dumps(root, JSON_INDENT(1) | JSON_SORT_KEYS);
    size_t len, off = 0;
    int fd, r = 0;

    if (!text)
        return -ENOMEM;
    snprintf(path, sizeof(path), "%s/throughput.json", dir);
    snprintf(tmp, sizeof(tmp), "%s/.throughput.json.%ld", dir, (long)getpid());
    len = strlen(text);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        r = sw_err(-errno, "%s: cannot create: %s", tmp, strerror(errno));
        sw_free(text); /* jansson allocates through the seam (util/file.c) */
        return r;
    }
    while (off < len) {
        ssize_t n = write(fd, text + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            r = sw_err(-errno, "%s: write failed: %s", tmp, strerror(errno));
            break;
        }
        off += (size_t)n;
    }
    sw_free(text);
    if (close(fd) < 0 && r == 0)
        r = sw_err(-errno, "%s: close failed: %s", tmp, strerror(errno));
    if (r == 0 && rename(tmp, path) < 0)
        r = sw_err(-errno, "%s: cannot rename into place: %s", path, strerror(errno));
    if (r < 0)
        unlink(tmp);
    return r;
}

/* mkdir -p for the cache directory (mode 0700 for what it creates). */
static int make_dirs(const char *dir)
{
    char p[4096];
    size_t n = strlen(dir);

    if (n == 0 || n >= sizeof(p))
        return sw_err(SW_ELIMIT, "cache directory path too long");
    memcpy(p, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (p[i] != '/' && p[i] != '\0')
            continue;
        char c = p[i];
        p[i] = '\0';
        if (mkdir(p, 0700) < 0 && errno != EEXIST)
            return sw_err(-errno, "%s: cannot create: %s", p, strerror(errno));
        p[i] = c;
    }
    return 0;
}

int sw_tput_get(const char *dir, const char *key, int force, int (*measure)(void *arg, sw_tput_t *out),
                void *arg, sw_tput_t *out)
{
    char path[4200], lock[4200], *text = NULL;
    json_t *root = NULL, *ents, *e;
    size_t len = 0;
    int fd = -1, r, hit = 0;

    if (!dir || make_dirs(dir) < 0) {
        if (dir)
            SW_LOG_W("serve", "throughput cache: %s; measuring without it", sw_err_detail());
        return measure(arg, out);
    }
    snprintf(path, sizeof(path), "%s/throughput.json", dir);
    snprintf(lock, sizeof(lock), "%s/throughput.lock", dir);
    fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        SW_LOG_W("serve", "throughput cache: cannot open %s: %s; measuring without the lock", lock,
                 strerror(errno));
    else
        while (flock(fd, LOCK_EX) < 0 && errno == EINTR)
            ;
    r = sw_file_read(path, SW_TPUT_MAX_FILE, &text, &len);
    if (r == 0) {
        if (sw_json_parse(text, len, path, &root) < 0 || !entries_of(root)) {
            SW_LOG_W("serve", "throughput cache %s is not a cache file (%s); it will be replaced", path,
                     root ? "wrong layout" : sw_err_detail());
            json_decref(root);
            root = NULL;
        }
    } else if (r != -ENOENT) {
        SW_LOG_W("serve", "throughput cache: %s; it will be replaced", sw_err_detail());
    }
    sw_free(text);
    if (root && !force && entry_get(entries_of(root), key, out)) {
        hit = 1;
        goto out;
    }
    if ((r = measure(arg, out)) < 0)
        goto out_err;
    if (!root && !(root = json_pack("{s:i,s:{}}", "version", 1, "entries"))) {
        r = -ENOMEM;
        goto out_err;
    }
    ents = entries_of(root);
    e = json_pack("{s:f,s:f,s:I}", "forward_rps", out->forward_rps, "inference_rps", out->inference_rps,
                  "time", (json_int_t)time(NULL));
    if (!e || json_object_set_new(ents, key, e) < 0) {
        r = -ENOMEM;
        goto out_err;
    }
    prune(ents, SW_TPUT_MAX_ENTRIES);
    if (write_cache(dir, root) < 0)
        SW_LOG_W("serve", "throughput cache not saved: %s", sw_err_detail());
out:
    json_decref(root);
    if (fd >= 0)
        close(fd); /* releases the lock */
    return hit;
out_err:
    json_decref(root);
    if (fd >= 0)
        close(fd);
    return r;
}

/* Reads up to cap - 1 bytes of a /proc file (whose size says 0) into buf, NUL-terminated. */
static int read_proc(const char *path, char *buf, size_t cap)
{
    size_t len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        return sw_err(-errno, "%s: cannot open: %s", path, strerror(errno));
    while (len + 1 < cap) {
        ssize_t n = read(fd, buf + len, cap - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    buf[len] = '\0';
    return 0;
}

void sw_cpu_label(int threads, char *buf, size_t cap)
{
    char text[16384], name[128] = "";
    long n = threads > 0 ? threads : sysconf(_SC_NPROCESSORS_ONLN);

    if (read_proc("/proc/cpuinfo", text, sizeof(text)) == 0) {
        const char *p = strstr(text, "model name");
        if (p && (p = strchr(p, ':'))) {
            size_t k = 0;
            for (p++; *p == ' ' || *p == '\t'; p++)
                ;
            while (p[k] && p[k] != '\n' && k + 1 < sizeof(name))
                k++;
            memcpy(name, p, k);
            name[k] = '\0';
        }
    }
    for (char *q = name; *q; q++)
        if (*q == '|' || *q == '"' || (unsigned char)*q < 0x20)
            *q = ' ';
    if (name[0])
        snprintf(buf, cap, "cpu: %s (%ld threads)", name, n);
    else
        snprintf(buf, cap, "cpu (%ld threads)", n);
}

int sw_mem_available(uint64_t *out)
{
    char text[8192];
    const char *p;
    unsigned long long kb;
    int r;

    if ((r = read_proc("/proc/meminfo", text, sizeof(text))) < 0)
        return r;
    p = strstr(text, "MemAvailable:");
    if (!p || sscanf(p + 13, "%llu", &kb) != 1)
        return sw_err(-ENOENT, "/proc/meminfo has no MemAvailable line");
    *out = (uint64_t)kb * 1024;
    return 0;
}
