/*
 * replay.c - runs a libFuzzer target over files without libFuzzer: each argument is a file or a
 * directory of files, each fed once to LLVMFuzzerTestOneInput. Used by the test suite to replay
 * the committed corpus on every build (sanitizers catch what the target trips over).
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "util/alloc.h"
#include "util/file.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int run_file(const char *path, int *count)
{
    char *buf;
    size_t len;

    if (sw_file_read(path, 64u << 20, &buf, &len) < 0) {
        fprintf(stderr, "replay: cannot read %s\n", path);
        return -1;
    }
    LLVMFuzzerTestOneInput((const uint8_t *)buf, len);
    sw_free(buf);
    (*count)++;
    return 0;
}

int main(int argc, char **argv)
{
    int count = 0, bad = 0;

    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) < 0) {
            fprintf(stderr, "replay: %s: no such file or directory\n", argv[i]);
            return 1;
        }
        if (!S_ISDIR(st.st_mode)) {
            bad |= run_file(argv[i], &count) < 0;
            continue;
        }
        DIR *d = opendir(argv[i]);
        struct dirent *e;
        while (d && (e = readdir(d))) {
            if (e->d_name[0] == '.')
                continue;
            char *p = sw_path_join(argv[i], e->d_name);
            if (p)
                bad |= run_file(p, &count) < 0;
            sw_free(p);
        }
        if (d)
            closedir(d);
    }
    printf("replay: %d passed, %d failed\n", count, bad);
    return bad || count == 0;
}
