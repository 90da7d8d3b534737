/* frame.c - sealed frames and envelope validation; see frame.h. */
#include "p2p/frame.h"

#include <string.h>

#include <sodium.h>

#include "util/alloc.h"
#include "util/error.h"

#define F(x) SWARMD__ENVELOPE__FLAG__FLAG_##x
#define ALL_FLAGS (F(REPLY) | F(STREAM_OPEN) | F(STREAM_DATA) | F(STREAM_END) | F(CANCEL) | F(WINDOW) | \
                   F(PING) | F(PONG) | F(CONT))

static void *pb_alloc(void *ctx, size_t n)
{
    (void)ctx;
    return sw_malloc(n);
}

static void pb_free(void *ctx, void *p)
{
    (void)ctx;
    sw_free(p);
}

ProtobufCAllocator sw_pb_allocator = { pb_alloc, pb_free, NULL };

static void make_nonce(uint64_t ctr, int seg, uint8_t n[crypto_aead_xchacha20poly1305_ietf_NPUBBYTES])
{
    memset(n, 0, crypto_aead_xchacha20poly1305_ietf_NPUBBYTES);
    for (int i = 0; i < 8; i++)
        n[i] = (uint8_t)(ctr >> (8 * i));
    n[8] = (uint8_t)seg;
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

void sw_frame_seal(sw_frame_dir_t *d, const uint8_t *hdr, size_t hdr_len, const uint8_t *payload,
                   size_t payload_len, uint8_t *out)
{
    uint8_t nonce[crypto_aead_xchacha20poly1305_ietf_NPUBBYTES];
    size_t total = sw_frame_size(hdr_len, payload_len);

    put32(out, (uint32_t)(total - SW_FRAME_PREFIX));
    put32(out + 4, (uint32_t)hdr_len);
    make_nonce(d->ctr, 0, nonce);
    crypto_aead_xchacha20poly1305_ietf_encrypt(out + SW_FRAME_PREFIX, NULL, hdr, hdr_len, out,
                                               SW_FRAME_PREFIX, NULL, nonce, d->key);
    if (payload_len) {
        make_nonce(d->ctr, 1, nonce);
        crypto_aead_xchacha20poly1305_ietf_encrypt(out + SW_FRAME_PREFIX + hdr_len + SW_FRAME_TAG, NULL,
                                                   payload, payload_len, out, SW_FRAME_PREFIX, NULL,
                                                   nonce, d->key);
    }
    d->ctr++;
}

int sw_frame_check_prefix(const uint8_t pre[SW_FRAME_PREFIX], uint32_t max_frame, uint32_t max_header,
                          uint32_t *body_len, uint32_t *hdr_len)
{
    uint32_t l = get32(pre), h = get32(pre + 4);

    if (l > max_frame)
        return sw_err(SW_ELIMIT, "frame of %u bytes exceeds the limit of %u", l, max_frame);
    if (h == 0 || h > max_header)
        return sw_err(h ? SW_ELIMIT : SW_EFORMAT, "frame header of %u bytes (limit %u)", h, max_header);
    if ((uint64_t)h + SW_FRAME_TAG > l ||
        (l != h + SW_FRAME_TAG && (uint64_t)l < (uint64_t)h + 2 * SW_FRAME_TAG + 1))
        return sw_err(SW_EFORMAT, "frame lengths inconsistent (L %u, H %u)", l, h);
    *body_len = l;
    *hdr_len = h;
    return 0;
}

int sw_frame_open_header(const sw_frame_dir_t *d, const uint8_t pre[SW_FRAME_PREFIX], uint8_t *body,
                         uint32_t hdr_len)
{
    uint8_t nonce[crypto_aead_xchacha20poly1305_ietf_NPUBBYTES];

    make_nonce(d->ctr, 0, nonce);
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(body, NULL, NULL, body, hdr_len + SW_FRAME_TAG, pre,
                                                   SW_FRAME_PREFIX, nonce, d->key) != 0)
        return sw_err(SW_EFORMAT, "frame %llu failed authentication (modified, replayed or reordered)",
                      (unsigned long long)d->ctr);
    return 0;
}

int sw_frame_open_payload(const sw_frame_dir_t *d, const uint8_t pre[SW_FRAME_PREFIX], const uint8_t *body,
                          uint32_t body_len, uint32_t hdr_len, uint8_t *dst)
{
    uint8_t nonce[crypto_aead_xchacha20poly1305_ietf_NPUBBYTES];
    size_t p = sw_frame_payload_len(body_len, hdr_len);
    const uint8_t *c = body + hdr_len + SW_FRAME_TAG;

    make_nonce(d->ctr, 1, nonce);
    if (crypto_aead_xchacha20poly1305_ietf_decrypt_detached(dst, NULL, c, p, c + p, pre, SW_FRAME_PREFIX,
                                                            nonce, d->key) != 0)
        return sw_err(SW_EFORMAT, "payload of frame %llu failed authentication",
                      (unsigned long long)d->ctr);
    return 0;
}

void sw_envelope_free(Swarmd__Envelope *e)
{
    if (e)
        swarmd__envelope__free_unpacked(e, &sw_pb_allocator);
}

static int printable(const char *s, size_t max)
{
    size_t n = 0;

    for (; *s; s++, n++)
        if (n >= max || (unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f)
            return 0;
    return 1;
}

int sw_envelope_decode(const uint8_t *buf, size_t len, const sw_env_limits_t *lim, Swarmd__Envelope **out)
{
    Swarmd__Envelope *e;
    uint32_t f;
    int r = 0;

    *out = NULL;
    if (len > lim->max_header)
        return sw_err(SW_ELIMIT, "envelope of %zu bytes exceeds %u", len, lim->max_header);
    e = swarmd__envelope__unpack(&sw_pb_allocator, len, buf);
    if (!e)
        return sw_err(SW_EFORMAT, "envelope does not parse");
    f = e->flags;
    if (e->base.n_unknown_fields) { /* new fields come with a new protocol version, never silently */
        r = sw_err(SW_EFORMAT, "envelope has %u unknown fields", e->base.n_unknown_fields);
    } else if (f & ~(uint32_t)ALL_FLAGS) {
        r = sw_err(SW_EFORMAT, "envelope has unknown flags 0x%x", f);
    } else if ((f & (F(PING) | F(PONG) | F(WINDOW))) && (f & ~(uint32_t)(F(PING) | F(PONG) | F(WINDOW)))) {
        r = sw_err(SW_EFORMAT, "control envelope mixes flags 0x%x", f);
    } else if ((f & (F(PING) | F(PONG))) && e->call_id != 0) {
        r = sw_err(SW_EFORMAT, "ping on call %llu", (unsigned long long)e->call_id);
    } else if (!(f & (F(PING) | F(PONG) | F(WINDOW))) && e->call_id == 0) {
        r = sw_err(SW_EFORMAT, "call frame without a call id");
    } else if ((f & F(CONT)) && (f & ~(uint32_t)F(CONT))) {
        r = sw_err(SW_EFORMAT, "continuation frame with other flags 0x%x", f);
    } else if ((f & F(CANCEL)) && (f & (F(STREAM_DATA) | F(STREAM_END)))) {
        r = sw_err(SW_EFORMAT, "cancel mixed with data or end");
    } else if (!(f & F(STREAM_DATA)) && e->payload_len) {
        r = sw_err(SW_EFORMAT, "payload_len without a message");
    } else if (e->payload_len > lim->max_message) {
        r = sw_err(SW_ELIMIT, "message payload of %llu bytes exceeds %llu",
                   (unsigned long long)e->payload_len, (unsigned long long)lim->max_message);
    } else if (!printable(e->method, SW_METHOD_MAX) || (e->method[0] && !(f & F(STREAM_OPEN)))) {
        r = sw_err(SW_EFORMAT, "bad method name");
    } else if ((f & F(STREAM_OPEN)) && !e->method[0]) {
        r = sw_err(SW_EFORMAT, "call opened without a method");
    } else if (strlen(e->error) > 1024) {
        r = sw_err(SW_ELIMIT, "error text too long");
    } else if (e->status > 0) {
        r = sw_err(SW_EFORMAT, "positive status %d", e->status);
    } else if ((f & F(WINDOW)) && (e->credit == 0 || e->credit > (1ull << 40))) {
        r = sw_err(SW_EFORMAT, "window update of %llu bytes", (unsigned long long)e->credit);
    }
    if (r < 0) {
        sw_envelope_free(e);
        return r;
    }
    *out = e;
    return 0;
}
