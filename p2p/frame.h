/*
 * frame.h - sealed frames and envelope checks, on byte buffers (no sockets: fuzzers call these).
 *
 * After the handshake every frame on the wire is
 *
 *     u32 L | u32 H | AEAD(header: a packed Envelope of H bytes) | [AEAD(payload chunk)]
 *
 * big-endian; L counts the bytes after the 8-byte prefix: H + 16, plus P + 16 when a payload chunk
 * of P >= 1 bytes follows. Both segments are XChaCha20-Poly1305-IETF under the direction's key with
 * nonce = frame counter (u64 little-endian) | segment number (0 header, 1 payload) | zeros, and the
 * 8-byte prefix as associated data. The counter starts at 0 and goes up by one per frame, so a
 * modified, replayed, dropped or reordered frame fails authentication. The payload segment is sealed
 * separately so a receiver can open it straight into its final buffer (no extra copy).
 * Before the handshake completes, frames are u32 L | L bytes (L <= SW_HS_MAX_MSG), unencrypted.
 */
#ifndef SW_P2P_FRAME_H
#define SW_P2P_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include "swarmd.pb-c.h"

#define SW_FRAME_PREFIX 8
#define SW_FRAME_TAG 16

/* One direction of a session: its key and the counter of the next frame. */
typedef struct {
    uint8_t key[32];
    uint64_t ctr;
} sw_frame_dir_t;

/* Bytes of a whole sealed frame (prefix included). */
static inline size_t sw_frame_size(size_t hdr_len, size_t payload_len)
{
    return SW_FRAME_PREFIX + hdr_len + SW_FRAME_TAG + (payload_len ? payload_len + SW_FRAME_TAG : 0);
}

/*
 * Seals header (hdr_len bytes, >= 1) and an optional payload chunk into out, which has
 * sw_frame_size(hdr_len, payload_len) bytes; advances d->ctr. out must not overlap the inputs.
 */
void sw_frame_seal(sw_frame_dir_t *d, const uint8_t *hdr, size_t hdr_len, const uint8_t *payload,
                   size_t payload_len, uint8_t *out);

/*
 * Checks a received prefix against the receiver's limits before anything is allocated: on success
 * sets *body_len (L) and *hdr_len (H); SW_ELIMIT for a frame over max_frame or a header over
 * max_header, SW_EFORMAT for inconsistent lengths.
 */
int sw_frame_check_prefix(const uint8_t pre[SW_FRAME_PREFIX], uint32_t max_frame, uint32_t max_header,
                          uint32_t *body_len, uint32_t *hdr_len);

/* Payload chunk bytes of a frame whose prefix passed sw_frame_check_prefix (0 when none). */
static inline size_t sw_frame_payload_len(uint32_t body_len, uint32_t hdr_len)
{
    return body_len > hdr_len + SW_FRAME_TAG ? body_len - hdr_len - 2 * SW_FRAME_TAG : 0;
}

/*
 * Opens the header segment of body (L bytes after the prefix) in place: on success the plaintext
 * Envelope is body[0..H). SW_EFORMAT when authentication fails. Does not advance the counter.
 */
int sw_frame_open_header(const sw_frame_dir_t *d, const uint8_t pre[SW_FRAME_PREFIX], uint8_t *body,
                         uint32_t hdr_len);

/*
 * Opens the payload segment of body into dst (sw_frame_payload_len() bytes; dst may be anywhere,
 * including the payload's own place in body). SW_EFORMAT when authentication fails; dst is then
 * left unspecified. Does not advance the counter.
 */
int sw_frame_open_payload(const sw_frame_dir_t *d, const uint8_t pre[SW_FRAME_PREFIX], const uint8_t *body,
                          uint32_t body_len, uint32_t hdr_len, uint8_t *dst);

/* Limits an incoming envelope is checked against. */
typedef struct {
    uint32_t max_header;
    uint64_t max_message;
} sw_env_limits_t;

/*
 * Unpacks and validates an Envelope (flags known and consistent, method name short and printable,
 * error text bounded, payload_len within max_message). Allocations go through the sw_malloc seam.
 * The caller frees *out with sw_envelope_free(). SW_EFORMAT / SW_ELIMIT with a detail otherwise.
 */
int sw_envelope_decode(const uint8_t *buf, size_t len, const sw_env_limits_t *lim, Swarmd__Envelope **out);
void sw_envelope_free(Swarmd__Envelope *e);

/* protobuf-c allocator backed by sw_malloc/sw_free. */
extern ProtobufCAllocator sw_pb_allocator;

#define SW_METHOD_MAX 64

#endif
