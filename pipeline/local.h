/*
 * local.h - a whole model run in one process: client-side parts plus one span of every block.
 * It is what `swarmd eval` and `swarmd generate --local` use, and the yardstick that swarm
 * generation must equal token for token.
 */
#ifndef SW_PIPELINE_LOCAL_H
#define SW_PIPELINE_LOCAL_H

#include <stdint.h>

#include "../kernels/device.h"
#include "model.h"

typedef struct sw_local sw_local_t;

/*
 * Opens the model in dir for B sequences of up to max_len positions; opts (NULL: defaults) as for
 * sw_span_load. Caller frees.
 */
int sw_local_open(const char *dir, int B, int max_len, const sw_load_opts_t *opts,
                  sw_local_t **out);
/*
 * As sw_local_open on device dev (NULL: the CPU). For a CUDA device the local run makes its own
 * context on it and puts the head and every block there (sw_span_to_cuda, sw_head_to_cuda);
 * the ops arguments below are then unused. A CUDA device that this build or this machine lacks
 * is an error that says so (SW_EUNSUPPORTED / SW_EDEVICE); nothing falls back silently.
 */
int sw_local_open_on(const char *dir, int B, int max_len, const sw_load_opts_t *opts,
                     const sw_device_t *dev, sw_local_t **out);
void sw_local_close(sw_local_t *l);
const sw_model_config_t *sw_local_config(const sw_local_t *l);
sw_kv_t *sw_local_kv(sw_local_t *l);
/* The head and the span of every block (owned by l), for callers that drive the blocks
 * themselves (the client library's local mode). */
sw_head_t *sw_local_head(sw_local_t *l);
sw_span_t *sw_local_span(sw_local_t *l);
/* Weight bytes one decode step reads: every block (as loaded) plus the final norm and LM head. */
size_t sw_local_bytes_per_token(const sw_local_t *l);

/*
 * Feeds T more tokens of each of the B sequences (ids: (B, T)) and writes logits:
 * all positions (B, T, V) when all_positions, else only each sequence's last one (B, V).
 */
int sw_local_forward(sw_local_t *l, const sw_ops_t *ops, const int32_t *ids, int T,
                     int all_positions, float *logits);

/* Index of the largest of n values (the first one on ties). */
int sw_argmax(const float *v, int n);

/*
 * Greedy decoding for batch 1: resets the cache, runs the prompt (T ids), then n_new decode steps.
 * Writes the new ids to out_ids (n_new) and, if out_logits is not NULL, each step's logits
 * (n_new, V). A step callback, if given, sees each new id as it comes (for streaming output).
 */
int sw_local_greedy(sw_local_t *l, const sw_ops_t *ops, const int32_t *prompt, int T, int n_new,
                    int32_t *out_ids, float *out_logits,
                    void (*on_token)(void *ctx, int32_t id), void *ctx);

#endif
