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

int sw_json_parse(const char *text, size_t len, const char *what, json_t **out)
{
    json_error_t e;
    json_t *j;

    j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &e);
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
