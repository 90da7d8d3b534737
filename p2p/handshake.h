/*
 * handshake.h - the authenticated key exchange that starts every connection, as a state machine on
 * byte buffers (no sockets, so tests and fuzzers drive it directly).
 *
 * Three messages, each sent as a plain frame (u32 big-endian length + message, at most
 * SW_HS_MAX_MSG bytes):
 *
 *   M1 HELLO  I -> R: "SWRM" 1 | params | I's ephemeral X25519 key
 *   M2 REPLY  R -> I: "SWRM" 2 | params | R's ephemeral key | AEAD_khs_r(R's Ed25519 key | sig_R)
 *   M3 FINISH I -> R: "SWRM" 3 | AEAD_khs_i(I's Ed25519 key | sig_I)
 *   (or REJECT "SWRM" 4 | versions | reason text, instead of M2, when the versions do not meet)
 *
 * params = version range, capability bits and the sender's limits (frame, header, message, windows,
 * calls in flight). The transcript T is every message byte so far, prefixed by a fixed label.
 * H(x) is BLAKE2b-256 keyed with the swarm key (unkeyed without one). dh = X25519(e_I, e_R).
 *   khs_{r,i} = KDF(H("hs" | dh | H(T after M2's clear part)), 1 / 2)
 *   sig_R = Ed25519_R("swarmd-resp" | H(T up to M2's clear part) | R's key)
 *   sig_I = Ed25519_I("swarmd-init" | H(T up to the end of M2) | I's key)
 *   session keys I->R, R->I = KDF(H("app" | dh | H(T up to the end of M3)), 3 / 4)
 * See handshake.c for why this is sound.
 */
#ifndef SW_P2P_HANDSHAKE_H
#define SW_P2P_HANDSHAKE_H

#include <stddef.h>
#include <stdint.h>

#include "p2p/identity.h"

#define SW_HS_VERSION_MIN 1
#define SW_HS_VERSION_MAX 1
#define SW_HS_MAX_MSG 512
#define SW_HS_CAP_STREAMS 0x1u /* multiplexed calls and streams (always set by this version) */
#define SW_HS_CAP_SWARM_KEY 0x2u /* the sender uses a swarm key (the key itself is never sent) */

/* What each side announces: its version range, capabilities and receive limits. */
typedef struct {
    uint16_t ver_min, ver_max;
    uint32_t caps;
    uint32_t max_frame;   /* bytes after the frame prefix */
    uint32_t max_header;  /* bytes of a packed Envelope */
    uint64_t max_message; /* payload bytes of one message */
    uint32_t window;      /* per-call receive window, bytes */
    uint32_t conn_window; /* per-connection receive window, bytes */
    uint32_t max_calls;   /* calls the peer may have open towards the sender */
} sw_hs_params_t;

enum { SW_HS_START, SW_HS_WAIT_HELLO, SW_HS_WAIT_REPLY, SW_HS_WAIT_FINISH, SW_HS_DONE, SW_HS_FAILED };

typedef struct {
    int initiator, state;
    const sw_identity_t *self;
    uint8_t psk[32];
    int has_psk, has_pin;
    sw_peer_id_t pin;
    uint8_t e_pk[32], e_sk[32], dh[32];
    uint8_t khs_r[32], khs_i[32];
    uint8_t transcript[3 * SW_HS_MAX_MSG + 32];
    size_t tlen;
    sw_hs_params_t local, remote;
    uint16_t version;             /* negotiated */
    sw_peer_id_t remote_id;       /* proven by the remote's signature once state == SW_HS_DONE */
    uint8_t key_send[32], key_recv[32]; /* session keys once state == SW_HS_DONE */
} sw_hs_t;

/*
 * Prepares a handshake. psk (32 bytes) and pin may be NULL. The identity must outlive hs.
 * An initiator then calls sw_hs_start() for M1.
 */
void sw_hs_init(sw_hs_t *hs, int initiator, const sw_identity_t *self, const uint8_t *psk,
                const sw_peer_id_t *pin, const sw_hs_params_t *local);

/* Initiator: writes M1 into out (cap >= SW_HS_MAX_MSG) and sets *out_len. */
int sw_hs_start(sw_hs_t *hs, uint8_t *out, size_t cap, size_t *out_len);

/*
 * Feeds one received handshake message. On success writes the next message to send into out
 * (*out_len 0 when none) and may move hs->state to SW_HS_DONE. On failure returns SW_EFORMAT (bad
 * message or failed authentication), SW_EUNSUPPORTED (versions or swarm-key use do not meet) or
 * SW_EUSAGE (pinned id mismatch) with a detail for the log; *out_len may then be non-zero: a REJECT
 * to send before closing, so the peer learns why. Never reads outside in[0..len).
 */
int sw_hs_recv(sw_hs_t *hs, const uint8_t *in, size_t len, uint8_t *out, size_t cap, size_t *out_len);

/* Zeroes every secret in hs (keys, ephemeral, dh). */
void sw_hs_wipe(sw_hs_t *hs);

/* Defaults this build announces (the node overwrites the limits from its configuration). */
void sw_hs_params_default(sw_hs_params_t *p);

#endif
