/*
 * handshake.c - the key exchange of handshake.h.
 *
 * Why it is sound (a SIGMA-style exchange, as in TLS 1.3 and Noise XX with signatures):
 * - Freshness and forward secrecy: both sides contribute a fresh ephemeral X25519 key; every key
 *   depends on dh, so recording a session and later stealing a static key reveals nothing.
 * - Authentication: each side signs a hash of the transcript, which contains both ephemeral keys,
 *   so a signature cannot be replayed into another session; the labels "swarmd-resp" and
 *   "swarmd-init" stop a signature being reflected back. The initiator's signature covers the
 *   responder's identity and signature too, so both agree on who talks to whom.
 * - Binding identity to the key exchange: the static key and signature travel inside an AEAD under
 *   a key derived from dh, so only the holder of that ephemeral can have sent them (the "MAC" step
 *   of SIGMA), and the identity stays hidden from passive observers.
 * - Swarm key: every hash and KDF is keyed with it, so without it nobody can open M2/M3 nor derive
 *   session keys; a peer lacking it fails at the first AEAD it opens.
 * - The peer id we record is the key that produced a valid signature, never a claimed one.
 * - Parameters (versions, capabilities, limits) are in the signed transcript: a man in the middle
 *   cannot downgrade them.
 */
#include "p2p/handshake.h"

#include <stdio.h>
#include <string.h>

#include <sodium.h>

#include "util/error.h"

#define MAGIC "SWRM"
#define T_HELLO 1
#define T_REPLY 2
#define T_FINISH 3
#define T_REJECT 4
#define PARAMS_LEN 36
#define HELLO_LEN (5 + PARAMS_LEN + 32)
#define SEALED_ID_LEN (32 + 64 + 16)
#define REPLY_LEN (HELLO_LEN + SEALED_ID_LEN)
#define FINISH_LEN (5 + SEALED_ID_LEN)
#define LABEL "swarmd handshake v1"
#define KDF_CTX "swarmdhs"

void sw_hs_params_default(sw_hs_params_t *p)
{
    memset(p, 0, sizeof(*p));
    p->ver_min = SW_HS_VERSION_MIN;
    p->ver_max = SW_HS_VERSION_MAX;
    p->caps = SW_HS_CAP_STREAMS;
    p->max_frame = 1u << 20;
    p->max_header = 64u << 10;
    p->max_message = 256ull << 20;
    p->window = 4u << 20;
    p->conn_window = 64u << 20;
    p->max_calls = 1024;
}

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void put32(uint8_t *p, uint32_t v) { put16(p, (uint16_t)(v >> 16)); put16(p + 2, (uint16_t)v); }
static void put64(uint8_t *p, uint64_t v) { put32(p, (uint32_t)(v >> 32)); put32(p + 4, (uint32_t)v); }
static uint16_t get16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static uint32_t get32(const uint8_t *p) { return ((uint32_t)get16(p) << 16) | get16(p + 2); }
static uint64_t get64(const uint8_t *p) { return ((uint64_t)get32(p) << 32) | get32(p + 4); }

static void put_params(uint8_t *p, const sw_hs_params_t *s)
{
    put16(p, s->ver_min);
    put16(p + 2, s->ver_max);
    put32(p + 4, s->caps);
    put32(p + 8, s->max_frame);
    put32(p + 12, s->max_header);
    put64(p + 16, s->max_message);
    put32(p + 24, s->window);
    put32(p + 28, s->conn_window);
    put32(p + 32, s->max_calls);
}

static void get_params(const uint8_t *p, sw_hs_params_t *s)
{
    s->ver_min = get16(p);
    s->ver_max = get16(p + 2);
    s->caps = get32(p + 4);
    s->max_frame = get32(p + 8);
    s->max_header = get32(p + 12);
    s->max_message = get64(p + 16);
    s->window = get32(p + 24);
    s->conn_window = get32(p + 28);
    s->max_calls = get32(p + 32);
}

/* The remote's limits must let us talk at all; absurd ones are refused rather than obeyed. */
static int check_limits(const sw_hs_params_t *r)
{
    if (r->max_frame < 4096 || r->max_frame > (256u << 20) || r->max_header < 256 ||
        r->max_header + 64 > r->max_frame || r->max_message == 0 || r->window == 0 ||
        r->conn_window < r->window || r->max_calls == 0)
        return sw_err(SW_EFORMAT, "handshake: peer announced unusable limits (frame %u, header %u, "
                      "window %u/%u, calls %u)", r->max_frame, r->max_header, r->window,
                      r->conn_window, r->max_calls);
    return 0;
}

/* H(x) of the transcript so far, keyed with the swarm key when there is one. */
static void th(const sw_hs_t *hs, uint8_t out[32])
{
    crypto_generichash(out, 32, hs->transcript, hs->tlen, hs->has_psk ? hs->psk : NULL,
                       hs->has_psk ? 32 : 0);
}

static int append(sw_hs_t *hs, const uint8_t *p, size_t n)
{
    if (hs->tlen + n > sizeof(hs->transcript))
        return sw_err(SW_EFORMAT, "handshake: transcript too long");
    memcpy(hs->transcript + hs->tlen, p, n);
    hs->tlen += n;
    return 0;
}

/* prk = H(label | dh | h), then the two keys of that stage from crypto_kdf. */
static void derive(const sw_hs_t *hs, const char *label, const uint8_t h[32], uint64_t id_a,
                   uint8_t a[32], uint64_t id_b, uint8_t b[32])
{
    crypto_generichash_state st;
    uint8_t prk[32];

    crypto_generichash_init(&st, hs->has_psk ? hs->psk : NULL, hs->has_psk ? 32 : 0, 32);
    crypto_generichash_update(&st, (const uint8_t *)label, strlen(label) + 1);
    crypto_generichash_update(&st, hs->dh, 32);
    crypto_generichash_update(&st, h, 32);
    crypto_generichash_final(&st, prk, 32);
    crypto_kdf_derive_from_key(a, 32, id_a, KDF_CTX, prk);
    crypto_kdf_derive_from_key(b, 32, id_b, KDF_CTX, prk);
    sodium_memzero(prk, sizeof(prk));
}

/* Writes AEAD_k(own key | Ed25519(label | h | own key)) with nonce 0 and h as associated data. */
static void seal_identity(const sw_hs_t *hs, const char *label, const uint8_t h[32], const uint8_t k[32],
                          uint8_t out[SEALED_ID_LEN])
{
    uint8_t msg[64], plain[96], nonce[crypto_aead_xchacha20poly1305_ietf_NPUBBYTES] = {0};
    size_t ll = strlen(label);

    memcpy(msg, label, ll);
    memcpy(msg + ll, h, 32);
    memcpy(plain, hs->self->id.b, 32);
    crypto_sign_detached(plain + 32, NULL, msg, ll + 32, hs->self->sk);
    crypto_aead_xchacha20poly1305_ietf_encrypt(out, NULL, plain, sizeof(plain), h, 32, NULL, nonce, k);
}

/* Opens and checks the other side's sealed identity; sets remote_id. */
static int open_identity(sw_hs_t *hs, const char *label, const uint8_t h[32], const uint8_t k[32],
                         const uint8_t in[SEALED_ID_LEN])
{
    uint8_t plain[96], msg[64], nonce[crypto_aead_xchacha20poly1305_ietf_NPUBBYTES] = {0};
    size_t ll = strlen(label);

    if (crypto_aead_xchacha20poly1305_ietf_decrypt(plain, NULL, NULL, in, SEALED_ID_LEN, h, 32, nonce, k) != 0)
        return sw_err(SW_EFORMAT, "handshake authentication failed: %s",
                      hs->has_psk ? "wrong swarm key, or the message was tampered with"
                                  : "the message was tampered with");
    memcpy(msg, label, ll);
    memcpy(msg + ll, h, 32);
    if (crypto_sign_verify_detached(plain + 32, msg, ll + 32, plain) != 0)
        return sw_err(SW_EFORMAT, "handshake: the peer's signature over the transcript is invalid");
    memcpy(hs->remote_id.b, plain, 32);
    if (hs->has_pin && !sw_peer_id_eq(&hs->remote_id, &hs->pin)) {
        char got[SW_PEER_ID_TEXT_MAX], want[SW_PEER_ID_TEXT_MAX];
        sw_peer_id_text(&hs->remote_id, got);
        sw_peer_id_text(&hs->pin, want);
        return sw_err(SW_EUSAGE, "peer proved id %s but the address pins %s: refusing it", got, want);
    }
    return 0;
}

void sw_hs_init(sw_hs_t *hs, int initiator, const sw_identity_t *self, const uint8_t *psk,
                const sw_peer_id_t *pin, const sw_hs_params_t *local)
{
    memset(hs, 0, sizeof(*hs));
    hs->initiator = initiator;
    hs->state = initiator ? SW_HS_START : SW_HS_WAIT_HELLO;
    hs->self = self;
    if (psk) {
        memcpy(hs->psk, psk, 32);
        hs->has_psk = 1;
    }
    if (pin) {
        hs->pin = *pin;
        hs->has_pin = 1;
    }
    hs->local = *local;
    hs->local.caps = (hs->local.caps & ~SW_HS_CAP_SWARM_KEY) | (psk ? SW_HS_CAP_SWARM_KEY : 0);
    crypto_box_keypair(hs->e_pk, hs->e_sk);
    append(hs, (const uint8_t *)LABEL, sizeof(LABEL));
}

void sw_hs_wipe(sw_hs_t *hs)
{
    sodium_memzero(hs->psk, sizeof(hs->psk));
    sodium_memzero(hs->e_sk, sizeof(hs->e_sk));
    sodium_memzero(hs->dh, sizeof(hs->dh));
    sodium_memzero(hs->khs_r, sizeof(hs->khs_r));
    sodium_memzero(hs->khs_i, sizeof(hs->khs_i));
    sodium_memzero(hs->key_send, sizeof(hs->key_send));
    sodium_memzero(hs->key_recv, sizeof(hs->key_recv));
}

static void write_hello(sw_hs_t *hs, int type, uint8_t *out)
{
    memcpy(out, MAGIC, 4);
    out[4] = (uint8_t)type;
    put_params(out + 5, &hs->local);
    memcpy(out + 5 + PARAMS_LEN, hs->e_pk, 32);
}

int sw_hs_start(sw_hs_t *hs, uint8_t *out, size_t cap, size_t *out_len)
{
    if (hs->state != SW_HS_START || cap < HELLO_LEN)
        return sw_err(SW_ESTATE, "handshake: start called twice or buffer too small");
    write_hello(hs, T_HELLO, out);
    append(hs, out, HELLO_LEN);
    *out_len = HELLO_LEN;
    hs->state = SW_HS_WAIT_REPLY;
    return 0;
}

/* Checks that the remote's versions and swarm-key use meet ours; writes the REJECT text if not. */
static int negotiate(sw_hs_t *hs, char *why, size_t whylen)
{
    const sw_hs_params_t *l = &hs->local, *r = &hs->remote;
    uint16_t lo = l->ver_min > r->ver_min ? l->ver_min : r->ver_min;
    uint16_t hi = l->ver_max < r->ver_max ? l->ver_max : r->ver_max;
    int rk = !!(r->caps & SW_HS_CAP_SWARM_KEY);

    if (r->ver_min > r->ver_max || lo > hi) {
        snprintf(why, whylen, "incompatible swarmd protocol versions: peer speaks %u..%u, we speak %u..%u; "
                 "upgrade the older one", r->ver_min, r->ver_max, l->ver_min, l->ver_max);
        return SW_EUNSUPPORTED;
    }
    hs->version = hi;
    if (rk != hs->has_psk) {
        snprintf(why, whylen, "%s", rk ? "the peer uses a swarm key and we have none (pass --swarm-key FILE)"
                                       : "we use a swarm key and the peer has none (it must pass --swarm-key FILE)");
        return SW_EUNSUPPORTED;
    }
    if (!(r->caps & SW_HS_CAP_STREAMS)) {
        snprintf(why, whylen, "the peer lacks the streams capability");
        return SW_EUNSUPPORTED;
    }
    return 0;
}

static size_t write_reject(const sw_hs_t *hs, const char *why, uint8_t *out, size_t cap)
{
    size_t tl = strlen(why);

    if (tl > 200)
        tl = 200;
    if (cap < 11 + tl)
        return 0;
    memcpy(out, MAGIC, 4);
    out[4] = T_REJECT;
    put16(out + 5, hs->local.ver_min);
    put16(out + 7, hs->local.ver_max);
    out[9] = 1;
    out[10] = (uint8_t)tl;
    memcpy(out + 11, why, tl);
    return 11 + tl;
}

static int recv_hello(sw_hs_t *hs, const uint8_t *in, size_t len, uint8_t *out, size_t cap, size_t *out_len)
{
    uint8_t h[32];
    char why[240];
    int r;

    if (len != HELLO_LEN || in[4] != T_HELLO)
        return sw_err(SW_EFORMAT, "handshake: expected a %d-byte HELLO, got %zu bytes of type %u",
                      HELLO_LEN, len, in[4]);
    if (cap < REPLY_LEN)
        return sw_err(SW_ESTATE, "handshake: output buffer too small");
    get_params(in + 5, &hs->remote);
    r = negotiate(hs, why, sizeof(why));
    if (r < 0) {
        *out_len = write_reject(hs, why, out, cap);
        return sw_err(r, "handshake refused: %s", why);
    }
    if ((r = check_limits(&hs->remote)) < 0)
        return r;
    append(hs, in, len);
    if (crypto_scalarmult(hs->dh, hs->e_sk, in + 5 + PARAMS_LEN) != 0)
        return sw_err(SW_EFORMAT, "handshake: peer sent a weak ephemeral key");
    write_hello(hs, T_REPLY, out);
    append(hs, out, HELLO_LEN);
    th(hs, h);
    derive(hs, "hs", h, 1, hs->khs_r, 2, hs->khs_i);
    seal_identity(hs, "swarmd-resp", h, hs->khs_r, out + HELLO_LEN);
    append(hs, out + HELLO_LEN, SEALED_ID_LEN);
    *out_len = REPLY_LEN;
    hs->state = SW_HS_WAIT_FINISH;
    return 0;
}

static int recv_reply(sw_hs_t *hs, const uint8_t *in, size_t len, uint8_t *out, size_t cap, size_t *out_len)
{
    uint8_t h[32];
    char why[240];
    int r;

    if (len >= 11 && in[4] == T_REJECT) {
        size_t tl = in[10] < len - 11 ? in[10] : len - 11;
        char text[256];
        for (size_t i = 0; i < tl; i++)
            text[i] = (in[11 + i] >= 0x20 && in[11 + i] < 0x7f) ? (char)in[11 + i] : '?';
        text[tl] = '\0';
        return sw_err(SW_EUNSUPPORTED, "peer refused the handshake (it speaks versions %u..%u): %s",
                      get16(in + 5), get16(in + 7), text);
    }
    if (len != REPLY_LEN || in[4] != T_REPLY)
        return sw_err(SW_EFORMAT, "handshake: expected a %d-byte REPLY, got %zu bytes of type %u",
                      REPLY_LEN, len, in[4]);
    if (cap < FINISH_LEN)
        return sw_err(SW_ESTATE, "handshake: output buffer too small");
    get_params(in + 5, &hs->remote);
    if ((r = negotiate(hs, why, sizeof(why))) < 0)
        return sw_err(r, "handshake refused: %s", why);
    if ((r = check_limits(&hs->remote)) < 0)
        return r;
    append(hs, in, HELLO_LEN);
    if (crypto_scalarmult(hs->dh, hs->e_sk, in + 5 + PARAMS_LEN) != 0)
        return sw_err(SW_EFORMAT, "handshake: peer sent a weak ephemeral key");
    th(hs, h);
    derive(hs, "hs", h, 1, hs->khs_r, 2, hs->khs_i);
    if ((r = open_identity(hs, "swarmd-resp", h, hs->khs_r, in + HELLO_LEN)) < 0)
        return r;
    append(hs, in + HELLO_LEN, SEALED_ID_LEN);
    th(hs, h);
    memcpy(out, MAGIC, 4);
    out[4] = T_FINISH;
    seal_identity(hs, "swarmd-init", h, hs->khs_i, out + 5);
    append(hs, out, FINISH_LEN);
    th(hs, h);
    derive(hs, "app", h, 3, hs->key_send, 4, hs->key_recv);
    *out_len = FINISH_LEN;
    hs->state = SW_HS_DONE;
    return 0;
}

static int recv_finish(sw_hs_t *hs, const uint8_t *in, size_t len)
{
    uint8_t h[32];
    int r;

    if (len != FINISH_LEN || in[4] != T_FINISH)
        return sw_err(SW_EFORMAT, "handshake: expected a %d-byte FINISH, got %zu bytes of type %u",
                      FINISH_LEN, len, in[4]);
    th(hs, h);
    if ((r = open_identity(hs, "swarmd-init", h, hs->khs_i, in + 5)) < 0)
        return r;
    append(hs, in, len);
    th(hs, h);
    derive(hs, "app", h, 4, hs->key_send, 3, hs->key_recv);
    hs->state = SW_HS_DONE;
    return 0;
}

int sw_hs_recv(sw_hs_t *hs, const uint8_t *in, size_t len, uint8_t *out, size_t cap, size_t *out_len)
{
    int r;

    *out_len = 0;
    if (len < 5 || len > SW_HS_MAX_MSG || memcmp(in, MAGIC, 4) != 0) {
        r = sw_err(SW_EFORMAT, "handshake: not a swarmd handshake message (%zu bytes)", len);
        goto out;
    }
    switch (hs->state) {
    case SW_HS_WAIT_HELLO: r = recv_hello(hs, in, len, out, cap, out_len); break;
    case SW_HS_WAIT_REPLY: r = recv_reply(hs, in, len, out, cap, out_len); break;
    case SW_HS_WAIT_FINISH: r = recv_finish(hs, in, len); break;
    default: r = sw_err(SW_ESTATE, "handshake: unexpected message in state %d", hs->state); break;
    }
out:
    if (r < 0)
        hs->state = SW_HS_FAILED;
    return r;
}
