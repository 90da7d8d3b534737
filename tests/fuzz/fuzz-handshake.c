/*
 * fuzz-handshake.c - libFuzzer target for handshake message decoding (p2p/handshake.h). The first
 * input byte picks the receiving state; the rest is one message:
 *   0: a responder waiting for HELLO;
 *   1: an initiator that sent HELLO, waiting for REPLY (or REJECT);
 *   2: a responder that answered a valid HELLO, waiting for FINISH;
 * bit 2 of the selector gives both sides a swarm key, bit 3 pins a peer id. No input may crash,
 * read out of bounds, or complete a handshake (that needs a signature by a key the fuzzer lacks).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "p2p/handshake.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static sw_identity_t a, b;
    static int init;
    uint8_t out[SW_HS_MAX_MSG], m1[SW_HS_MAX_MSG], psk[32];
    size_t olen, l1;
    sw_hs_params_t p;
    sw_hs_t hs, peer;

    if (!init) {
        uint8_t s[32];
        memset(s, 1, 32);
        sw_identity_from_seed(s, &a);
        memset(s, 2, 32);
        sw_identity_from_seed(s, &b);
        init = 1;
    }
    if (size < 1)
        return 0;
    memset(psk, 7, sizeof(psk));
    sw_hs_params_default(&p);
    const uint8_t *key = (data[0] & 4) ? psk : NULL;
    const sw_peer_id_t *pin = (data[0] & 8) ? &b.id : NULL;
    switch (data[0] & 3) {
    case 0:
        sw_hs_init(&hs, 0, &a, key, NULL, &p);
        break;
    case 1:
        sw_hs_init(&hs, 1, &a, key, pin, &p);
        if (sw_hs_start(&hs, out, sizeof(out), &olen) < 0)
            abort();
        break;
    default:
        sw_hs_init(&peer, 1, &b, key, NULL, &p);
        sw_hs_init(&hs, 0, &a, key, NULL, &p);
        if (sw_hs_start(&peer, m1, sizeof(m1), &l1) < 0 || sw_hs_recv(&hs, m1, l1, out, sizeof(out), &olen) < 0)
            abort();
        break;
    }
    if (size - 1 > SW_HS_MAX_MSG)
        return 0;
    /* copy so that reads past the message hit the sanitizer's redzone */
    uint8_t *msg = malloc(size - 1 ? size - 1 : 1);
    if (!msg)
        return 0;
    memcpy(msg, data + 1, size - 1);
    int r = sw_hs_recv(&hs, msg, size - 1, out, sizeof(out), &olen);
    if (r == 0 && hs.state == SW_HS_DONE)
        abort(); /* would mean a forged signature */
    if (olen > sizeof(out))
        abort();
    free(msg);
    sw_hs_wipe(&hs);
    return 0;
}
