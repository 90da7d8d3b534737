/*
 * test-throughput.c - daemon/throughput.c: the throughput cache file. A hit, a miss, a forced
 * re-measure, hostile files (not JSON, wrong layout, wrong version, NaN/negative/huge/string
 * rates, oversized) treated as misses and replaced, the entry cap, the cache key (device, digest
 * of config.json, format), and the /proc readers.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../daemon/throughput.h"
#include "test.h"
#include "util/alloc.h"
#include "util/error.h"
#include "util/file.h"

static int calls;

static int fake_measure(void *arg, sw_tput_t *out)
{
    double *v = arg;
    calls++;
    out->forward_rps = v[0];
    out->inference_rps = v[1];
    return 0;
}

static int failing_measure(void *arg, sw_tput_t *out)
{
    (void)arg;
    (void)out;
    calls++;
    return sw_err(SW_EDEVICE, "no device");
}

static void write_file(const char *path, const char *text, size_t len)
{
    FILE *f = fopen(path, "wb");
    SW_CHECK(f != NULL);
    if (!f)
        return;
    SW_CHECK(fwrite(text, 1, len, f) == len);
    fclose(f);
}

static char dir[256], file[300];

static void test_hit_miss_force(void)
{
    double a[2] = { 1000, 50 }, b[2] = { 2000, 70 };
    sw_tput_t t;

    calls = 0;
    unlink(file);
    SW_CHECK(sw_tput_get(dir, "cpu|00|bf16", 0, fake_measure, a, &t) == 0); /* measured */
    SW_CHECK(calls == 1 && t.forward_rps == 1000 && t.inference_rps == 50);
    SW_CHECK(sw_tput_get(dir, "cpu|00|bf16", 0, fake_measure, b, &t) == 1); /* cached */
    SW_CHECK(calls == 1 && t.forward_rps == 1000);
    SW_CHECK(sw_tput_get(dir, "cpu|00|nf4", 0, fake_measure, b, &t) == 0); /* another format */
    SW_CHECK(calls == 2 && t.forward_rps == 2000);
    SW_CHECK(sw_tput_get(dir, "cpu|00|bf16", 1, fake_measure, b, &t) == 0); /* --throughput eval */
    SW_CHECK(calls == 3 && t.forward_rps == 2000);
    SW_CHECK(sw_tput_get(dir, "cpu|00|bf16", 0, fake_measure, a, &t) == 1 && t.forward_rps == 2000);
    SW_CHECK(sw_tput_get(dir, "cpu|00|nf4", 0, fake_measure, a, &t) == 1 && t.inference_rps == 70);
    SW_CHECK(sw_tput_get(dir, "gpu|00|x", 0, failing_measure, NULL, &t) == SW_EDEVICE);
    SW_CHECK(sw_tput_get(dir, "cpu|00|bf16", 0, fake_measure, a, &t) == 1); /* still there */
}

static void test_hostile(void)
{
    static const char *bad[] = {
        "",
        "not json",
        "[1,2,3]",
        "{\"version\":2,\"entries\":{}}",
        "{\"version\":1,\"entries\":[]}",
        "{\"version\":1,\"version\":1,\"entries\":{}}", /* duplicate key */
        "{\"version\":1,\"entries\":{\"k\":{\"forward_rps\":-1,\"inference_rps\":1}}}",
        "{\"version\":1,\"entries\":{\"k\":{\"forward_rps\":1e300,\"inference_rps\":1}}}",
        "{\"version\":1,\"entries\":{\"k\":{\"forward_rps\":\"5\",\"inference_rps\":1}}}",
        "{\"version\":1,\"entries\":{\"k\":{\"forward_rps\":0,\"inference_rps\":1}}}",
        "{\"version\":1,\"entries\":{\"k\":{\"inference_rps\":1}}}",
        "{\"version\":1,\"entries\":{\"k\":7}}",
    };
    double a[2] = { 300, 30 };
    sw_tput_t t;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        calls = 0;
        write_file(file, bad[i], strlen(bad[i]));
        SW_CHECK(sw_tput_get(dir, "k", 0, fake_measure, a, &t) == 0); /* a miss: measured */
        SW_CHECK(calls == 1 && t.forward_rps == 300);
        SW_CHECK(sw_tput_get(dir, "k", 0, fake_measure, a, &t) == 1); /* replaced by a good file */
    }
    /* parse alone: a good entry, a missing key, a bad layout */
    {
        const char *good = "{\"version\":1,\"entries\":{\"k\":{\"forward_rps\":5.5,\"inference_rps\":2}}}";
        SW_CHECK(sw_tput_parse(good, strlen(good), "k", &t) == 1 && t.forward_rps == 5.5);
        SW_CHECK(sw_tput_parse(good, strlen(good), "x", &t) == 0);
        SW_CHECK(sw_tput_parse("[]", 2, "k", &t) == SW_EFORMAT);
        SW_CHECK(sw_tput_parse("{", 1, "k", &t) < 0);
    }
    /* an oversized file is a miss too */
    {
        size_t n = SW_TPUT_MAX_FILE + 10;
        char *big = sw_malloc(n);
        SW_CHECK(big != NULL);
        if (big) {
            memset(big, ' ', n);
            write_file(file, big, n);
            sw_free(big);
            calls = 0;
            SW_CHECK(sw_tput_get(dir, "k", 0, fake_measure, a, &t) == 0 && calls == 1);
        }
    }
}

static void test_cap(void)
{
    double a[2] = { 10, 1 };
    char key[32];
    sw_tput_t t;
    char *text = NULL;
    size_t len = 0;
    int n = 0;

    unlink(file);
    for (int i = 0; i < SW_TPUT_MAX_ENTRIES + 5; i++) {
        snprintf(key, sizeof(key), "dev%d|00|f", i);
        SW_CHECK(sw_tput_get(dir, key, 0, fake_measure, a, &t) == 0);
    }
    SW_CHECK_OK(sw_file_read(file, SW_TPUT_MAX_FILE, &text, &len));
    for (const char *p = text; p && (p = strstr(p, "forward_rps")); p++)
        n++;
    SW_CHECK(n == SW_TPUT_MAX_ENTRIES);
    sw_free(text);
    /* the newest is kept */
    snprintf(key, sizeof(key), "dev%d|00|f", SW_TPUT_MAX_ENTRIES + 4);
    SW_CHECK(sw_tput_get(dir, key, 0, fake_measure, a, &t) == 1);
}

static void test_key_and_proc(void)
{
    char k1[256], k2[256], lab[160], path[512];
    const char *root = getenv("SW_SOURCE_ROOT");
    uint64_t avail = 0;

    SW_CHECK(root != NULL);
    if (!root)
        return;
    snprintf(path, sizeof(path), "%s/tests/fixtures/llama-gqa-llama3", root);
    SW_CHECK_OK(sw_tput_key("cpu: X (2 threads)", path, "bf16", k1, sizeof(k1)));
    SW_CHECK(strncmp(k1, "cpu: X (2 threads)|", 19) == 0 && strlen(k1) == 19 + 16 + 5);
    snprintf(path, sizeof(path), "%s/tests/fixtures/llama-mha-tied", root);
    SW_CHECK_OK(sw_tput_key("cpu: X (2 threads)", path, "bf16", k2, sizeof(k2)));
    SW_CHECK(strcmp(k1, k2) != 0); /* another architecture */
    SW_CHECK(sw_tput_key("cpu", "/nonexistent", "bf16", k2, sizeof(k2)) < 0);
    SW_CHECK(sw_tput_key("cpu", path, "bf16", k2, 10) == SW_ELIMIT);
    sw_cpu_label(3, lab, sizeof(lab));
    SW_CHECK(strncmp(lab, "cpu", 3) == 0 && strstr(lab, "(3 threads)") != NULL);
    SW_CHECK_OK(sw_mem_available(&avail));
    SW_CHECK(avail > (1u << 20)); /* /proc files report size 0: read until EOF */
}

int main(void)
{
    long live0 = sw_alloc_live();

    snprintf(dir, sizeof(dir), "/tmp/sw-test-throughput-%ld/sub", (long)getpid());
    snprintf(file, sizeof(file), "%s/throughput.json", dir);
    SW_RUN(test_hit_miss_force); /* creates dir (and its parent) */
    SW_RUN(test_hostile);
    SW_RUN(test_cap);
    SW_RUN(test_key_and_proc);
    unlink(file);
    {
        char lock[300], parent[256];
        snprintf(lock, sizeof(lock), "%s/throughput.lock", dir);
        unlink(lock);
        rmdir(dir);
        snprintf(parent, sizeof(parent), "/tmp/sw-test-throughput-%ld", (long)getpid());
        rmdir(parent);
    }
    if (sw_alloc_live() != live0) {
        fprintf(stderr, "leak: %ld allocations live\n", sw_alloc_live() - live0);
        return 1;
    }
    return sw_test_summary("test-throughput");
}
