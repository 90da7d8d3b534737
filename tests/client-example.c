/*
 * client-example.c - a program written against the public client header alone
 * (pipeline/swarm_client.h, installed as <swarm_client.h>): it must compile with nothing else
 * from swarmd. In local mode on the bundled fixture it checks that swarm_session_generate's
 * greedy ids equal a hand-written loop of swarm_session_step_tokens + argmax, that a second
 * generate call continues the same session, and that misuse gives errors with a detail.
 * Usage: client-example MODEL_DIR (meson passes the fixture).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "swarm_client.h"

static int failed;
#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "FAIL %s:%d: %s (%s)\n", __FILE__, __LINE__, #c, swarm_client_error()); \
            failed++;                                                                              \
        }                                                                                          \
    } while (0)

typedef struct {
    int32_t ids[64];
    int n;
} seen_t;

static int on_token(void *arg, int32_t id)
{
    seen_t *s = arg;
    if (s->n < 64)
        s->ids[s->n++] = id;
    return 0;
}

int main(int argc, char **argv)
{
    swarm_client_opts_t o;
    swarm_client_t *c = NULL;
    swarm_session_t *s = NULL;
    const int32_t prompt[] = { 1, 15, 300, 42, 7, 99 };
    int32_t manual[12];
    seen_t got = { { 0 }, 0 };
    float *logits;
    int V, n = 0;

    if (argc != 2) {
        fprintf(stderr, "usage: client-example MODEL_DIR\n");
        return 2;
    }
    memset(&o, 0, sizeof(o));
    o.model_dir = argv[1];
    o.local = 1;
    o.max_length = 64;
    if (swarm_client_open(&o, &c) != 0) {
        fprintf(stderr, "cannot open: %s\n", swarm_client_error());
        return 1;
    }
    V = swarm_client_vocab_size(c);
    logits = malloc((size_t)V * sizeof(float));
    /* by hand: prompt, then 11 greedy steps */
    CHECK(swarm_session_open(c, 0, &s) == 0);
    CHECK(swarm_session_step_tokens(s, prompt, 6, logits) == 0);
    for (int i = 0; i < 12; i++) {
        int best = 0;
        for (int v = 1; v < V; v++)
            if (logits[v] > logits[best])
                best = v;
        manual[i] = best;
        if (i < 11)
            CHECK(swarm_session_step_tokens(s, &manual[i], 1, logits) == 0);
    }
    CHECK(swarm_session_position(s) == 6 + 11);
    swarm_session_close(s);
    /* the library's loop: 8 ids, then 4 more continuing the same session */
    CHECK(swarm_session_open(c, 0, &s) == 0);
    CHECK(swarm_session_generate(s, prompt, 6, 8, NULL, NULL, 0, on_token, &got, &n) == 0 && n == 8);
    CHECK(swarm_session_generate(s, NULL, 0, 4, NULL, NULL, 0, on_token, &got, &n) == 0 && n == 4);
    CHECK(got.n == 12 && memcmp(got.ids, manual, sizeof(manual)) == 0);
    /* misuse: a second local session, a step past max_length, forward calls in local mode */
    {
        swarm_session_t *t = NULL;
        float x[1] = { 0 };
        CHECK(swarm_session_open(c, 0, &t) < 0 && swarm_client_error()[0]);
        CHECK(swarm_client_forward(c, 0, 1, x, 1, 1) < 0 && swarm_client_error()[0]);
    }
    swarm_session_close(s);
    free(logits);
    swarm_client_close(c);
    printf("client-example: %d passed, %d failed\n", failed ? 0 : 1, failed ? 1 : 0);
    return failed ? 1 : 0;
}
