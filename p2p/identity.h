/*
 * identity.h - who a peer is: an Ed25519 key pair kept in a file, the peer id derived from it
 * (the 32-byte public key), its base58 text form, and peer addresses.
 *
 * Text forms: a peer id prints as base58 (Bitcoin alphabet, at most 44 characters) and, in logs,
 * as its first 8 base58 characters. Addresses are written HOST:PORT, [V6]:PORT or
 * PEERID@HOST:PORT / PEERID@[V6]:PORT; with a PEERID, any other key on the far end is refused.
 */
#ifndef SW_P2P_IDENTITY_H
#define SW_P2P_IDENTITY_H

#include <stddef.h>
#include <stdint.h>

#define SW_PEER_ID_LEN 32
#define SW_PEER_ID_TEXT_MAX 48 /* base58 of 32 bytes is at most 44 characters, plus NUL */
#define SW_PEER_ID_SHORT_MAX 9

typedef struct {
    uint8_t b[SW_PEER_ID_LEN];
} sw_peer_id_t;

/* A loaded identity. sk holds the libsodium Ed25519 secret key (seed || public key). */
typedef struct {
    sw_peer_id_t id;
    uint8_t sk[64];
} sw_identity_t;

/*
 * The default identity file: $XDG_STATE_HOME/swarmd/identity, else $HOME/.local/state/swarmd/identity.
 * The caller frees *out with sw_free(). SW_EUSAGE when neither variable is set.
 */
int sw_identity_default_path(char **out);

/*
 * Loads the identity at `path`, creating it (and missing parent directories, mode 0700) with a fresh
 * key and mode 0600 when the file does not exist. A file that group or others may read or write is
 * refused with SW_EUSAGE and a detail telling the user to chmod 600 it; a malformed file with SW_EFORMAT.
 */
int sw_identity_load_or_create(const char *path, sw_identity_t *out);

/*
 * Swarm keys: the optional 32-byte pre-shared key of a private swarm (see handshake.h). The file
 * holds the key as 64 hexadecimal characters, optionally followed by one newline, and nothing else;
 * like the identity it must not be accessible by group or others (mode 0600).
 *
 * sw_swarm_key_load reads `path` into key: SW_EUSAGE (with the chmod advice) for a group- or
 * world-accessible file, SW_EFORMAT for any other content, -errno when it cannot be read.
 * sw_swarm_key_generate writes a fresh random key to a new file `path` (mode 0600, created with
 * O_EXCL: an existing file is never overwritten, -EEXIST). Neither ever puts key bytes in an error.
 */
int sw_swarm_key_load(const char *path, uint8_t key[32]);
int sw_swarm_key_generate(const char *path);

/* A fresh random identity, kept in memory only. */
void sw_identity_generate(sw_identity_t *out);
/* Derives an identity from a 32-byte seed (tests and benchmarks: deterministic ids). */
void sw_identity_from_seed(const uint8_t seed[32], sw_identity_t *out);
/* Zeroes the secret key. */
void sw_identity_wipe(sw_identity_t *id);

/*
 * Base58 (Bitcoin alphabet). encode writes a NUL-terminated string and returns its length, or 0 when
 * `cap` is too small. decode accepts exactly `n` output bytes' worth of text: SW_EFORMAT otherwise.
 */
size_t sw_base58_encode(const uint8_t *in, size_t n, char *out, size_t cap);
int sw_base58_decode(const char *s, uint8_t *out, size_t n);

void sw_peer_id_text(const sw_peer_id_t *id, char out[SW_PEER_ID_TEXT_MAX]);
void sw_peer_id_short(const sw_peer_id_t *id, char out[SW_PEER_ID_SHORT_MAX]);
int sw_peer_id_parse(const char *s, sw_peer_id_t *out);
int sw_peer_id_eq(const sw_peer_id_t *a, const sw_peer_id_t *b);

/* A parsed address. host is a name, an IPv4 literal or an IPv6 literal without brackets. */
typedef struct {
    char host[256];
    uint16_t port;
    int has_peer;
    sw_peer_id_t peer;
} sw_addr_t;

/* Parses HOST:PORT, [V6]:PORT, PEERID@HOST:PORT; SW_EFORMAT with a detail otherwise. */
int sw_addr_parse(const char *s, sw_addr_t *out);

/*
 * Writes the first non-loopback IPv4 address of this machine into out (cap bytes), for a node
 * listening on a wildcard address with no --announce. Returns 1 if one was found, else 0.
 */
int sw_addr_guess_host(char *out, size_t cap);

#endif
