/*
 * fuzz-envelope.c - libFuzzer target for envelope decoding and validation (p2p/frame.h): any input
 * is either refused or decodes to an envelope that satisfies every documented check.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "p2p/frame.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const sw_env_limits_t lim = { 64u << 10, 256ull << 20 };
    Swarmd__Envelope *e;
    uint8_t *again;
    size_t n;

    if (sw_envelope_decode(data, size, &lim, &e) < 0)
        return 0;
    if (e->payload_len > lim.max_message || strlen(e->method) > SW_METHOD_MAX || strlen(e->error) > 1024 ||
        e->status > 0 || (e->flags >> 9) != 0)
        abort();
    if ((e->flags & SWARMD__ENVELOPE__FLAG__FLAG_STREAM_OPEN) && !e->method[0])
        abort();
    /* what decodes re-encodes and decodes to the same thing */
    n = swarmd__envelope__get_packed_size(e);
    again = malloc(n ? n : 1);
    if (again) {
        Swarmd__Envelope *e2;
        swarmd__envelope__pack(e, again);
        if (sw_envelope_decode(again, n, &lim, &e2) < 0 || e2->call_id != e->call_id || e2->flags != e->flags)
            abort();
        sw_envelope_free(e2);
        free(again);
    }
    sw_envelope_free(e);
    return 0;
}
