/* file.c - see file.h. */
#include "file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "alloc.h"
#include "error.h"

int sw_file_read(const char *path, size_t max, char **out, size_t *out_len)
{
    struct stat st;
    char *buf = NULL;
    size_t got = 0;
    int fd, r = 0;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return sw_err(-errno, "%s: cannot open: %s", path, strerror(errno));
    if (fstat(fd, &st) < 0) {
        r = sw_err(-errno, "%s: cannot stat: %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        r = sw_err(-EINVAL, "%s: not a regular file", path);
        goto out;
    }
    if ((uint64_t)st.st_size > max) {
        r = sw_err(SW_ELIMIT, "%s: file is %lld bytes, more than the %zu allowed", path,
                   (long long)st.st_size, max);
        goto out;
    }
    buf = sw_malloc((size_t)st.st_size + 1);
    if (!buf) {
        r = -ENOMEM;
        goto out;
    }
    while (got < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            r = sw_err(-errno, "%s: read failed: %s", path, strerror(errno));
            goto out;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    buf[got] = '\0';
    *out = buf;
    *out_len = got;
    buf = NULL;
out:
    sw_free(buf);
    close(fd);
    return r;
}

int sw_file_map(const char *path, sw_mmap_t *out)
{
    struct stat st;
    void *p;
    int fd, r = 0;

    out->data = NULL;
    out->size = 0;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return sw_err(-errno, "%s: cannot open: %s", path, strerror(errno));
    if (fstat(fd, &st) < 0) {
        r = sw_err(-errno, "%s: cannot stat: %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        r = sw_err(-EINVAL, "%s: not a regular file", path);
        goto out;
    }
    if (st.st_size == 0)
        goto out;
    p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
        r = sw_err(-errno, "%s: mmap failed: %s", path, strerror(errno));
        goto out;
    }
    out->data = p;
    out->size = (size_t)st.st_size;
out:
    close(fd);
    return r;
}

void sw_file_unmap(sw_mmap_t *m)
{
    if (m->data)
        munmap((void *)m->data, m->size);
    m->data = NULL;
    m->size = 0;
}

/*
 * jansson allocates through the seam too, so leak counts and fault injection cover JSON. It does
 * not report allocation failures reliably (they look like syntax errors), so the wrapper notes
 * them for sw_json_parse.
 */
static _Thread_local int json_oom;

static void *json_malloc(size_t n)
{
    void *p = sw_malloc(n);

    if (!p)
        json_oom = 1;
    return p;
}

/* Runs before main(), so every jansson allocation, parse or build, goes through the seam. */
__attribute__((constructor)) static void json_use_seam(void)
{
    json_set_alloc_funcs(json_malloc, sw_free);
}

int sw_json_parse(const char *text, size_t len, const char *what, json_t **out)
{
    json_error_t e;
    json_t *j;

    json_oom = 0;

    j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &e);
    if (!j && (json_oom || json_error_code(&e) == json_error_out_of_memory))
        return sw_err(-ENOMEM, "%s: out of memory while parsing JSON", what);
    if (!j)
        return sw_err(SW_EFORMAT, "%s: invalid JSON at line %d column %d: %s", what, e.line,
                      e.column, e.text);
    *out = j;
    return 0;
}

int sw_json_load(const char *path, size_t max, json_t **out)
{
    char *text;
    size_t len;
    int r;

    r = sw_file_read(path, max, &text, &len);
    if (r < 0)
        return r;
    r = sw_json_parse(text, len, path, out);
    sw_free(text);
    return r;
}

char *sw_path_join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *p = sw_malloc(a + b + 2);

    if (!p)
        return NULL;
    memcpy(p, dir, a);
    if (a && dir[a - 1] != '/')
        p[a++] = '/';
    memcpy(p + a, name, b + 1);
    return p;
}
