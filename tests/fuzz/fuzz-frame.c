/*
 * fuzz-frame.c - libFuzzer target for the receive path of sealed frames (p2p/frame.h), on buffers.
 *
 * The first input byte picks the mode:
 *   even: the rest is raw wire bytes, parsed as a sequence of frames under a fixed key, the way a
 *         connection parses its socket (prefix check before allocation, header, envelope, payload);
 *   odd:  the rest is [u16 header length | header plaintext | payload plaintext], sealed here with
 *         the fixed key, then one byte (chosen by the second input byte, 0xff: none) is flipped,
 *         and the frame goes through the same path: so the fuzzer reaches envelope decoding behind
 *         authentication, and every flip must be caught.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "p2p/frame.h"
#include "util/alloc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_FRAME (1u << 20)
#define MAX_HEADER (64u << 10)

/* Parses and opens one frame at buf; returns bytes consumed, 0 when incomplete, -1 when refused. */
static long receive_one(sw_frame_dir_t *rx, const uint8_t *buf, size_t len, int *authentic)
{
    const sw_env_limits_t lim = { MAX_HEADER, 256ull << 20 };
    uint32_t l, h;
    uint8_t *body, *payload = NULL;
    Swarmd__Envelope *e;
    size_t plen;
    long used = -1;

    *authentic = 0;
    if (len < SW_FRAME_PREFIX)
        return 0;
    if (sw_frame_check_prefix(buf, MAX_FRAME, MAX_HEADER, &l, &h) < 0)
        return -1;
    if (len - SW_FRAME_PREFIX < l)
        return 0;
    body = sw_malloc(l ? l : 1);
    if (!body)
        return -1;
    memcpy(body, buf + SW_FRAME_PREFIX, l);
    if (sw_frame_open_header(rx, buf, body, h) < 0)
        goto out;
    plen = sw_frame_payload_len(l, h);
    if (plen) {
        payload = sw_malloc(plen);
        if (!payload || sw_frame_open_payload(rx, buf, body, l, h, payload) < 0)
            goto out;
    }
    *authentic = 1;
    rx->ctr++;
    if (sw_envelope_decode(body, h, &lim, &e) == 0)
        sw_envelope_free(e);
    used = (long)(SW_FRAME_PREFIX + l);
out:
    sw_free(payload);
    sw_free(body);
    return used;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sw_frame_dir_t tx, rx;
    int authentic;

    if (size < 1)
        return 0;
    memset(&tx, 0, sizeof(tx));
    memset(tx.key, 0x5a, sizeof(tx.key));
    rx = tx;
    if (!(data[0] & 1)) {
        size_t off = 1;
        for (int i = 0; i < 64 && off < size; i++) {
            long r = receive_one(&rx, data + off, size - off, &authentic);
            if (r <= 0)
                break;
            off += (size_t)r;
        }
        return 0;
    }
    if (size < 4)
        return 0;
    size_t hl = ((size_t)data[2] << 8) | data[3], flip = data[1];
    const uint8_t *rest = data + 4;
    size_t rl = size - 4;
    if (hl == 0 || hl > rl || hl > MAX_HEADER)
        return 0;
    size_t pl = rl - hl, n = sw_frame_size(hl, pl);
    uint8_t *frame = sw_malloc(n);
    if (!frame)
        return 0;
    sw_frame_seal(&tx, rest, hl, rest + hl, pl, frame);
    if (flip != 0xff)
        frame[(flip * 7919u) % n] ^= (uint8_t)(1u << (flip & 7));
    long r = receive_one(&rx, frame, n, &authentic);
    if (flip == 0xff && (r != (long)n || !authentic))
        abort(); /* an untouched frame must open */
    if (flip != 0xff && authentic)
        abort(); /* a modified frame must not */
    sw_free(frame);
    return 0;
}
