/* identity.c - key file, peer ids, base58 and address parsing; see identity.h. */
#include "p2p/identity.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>
#include <uv.h>

#include "util/alloc.h"
#include "util/error.h"

#define KEY_MAGIC "swarmd-ed25519-v1\n"
#define KEY_MAGIC_LEN (sizeof(KEY_MAGIC) - 1)
#define KEY_FILE_LEN (KEY_MAGIC_LEN + 32)

static const char b58_alpha[] = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

int sw_identity_default_path(char **out)
{
    const char *state = getenv("XDG_STATE_HOME"), *home = getenv("HOME");
    char buf[4096];
    int n;

    if (state && state[0] == '/')
        n = snprintf(buf, sizeof(buf), "%s/swarmd/identity", state);
    else if (home && home[0])
        n = snprintf(buf, sizeof(buf), "%s/.local/state/swarmd/identity", home);
    else
        return sw_err(SW_EUSAGE, "neither XDG_STATE_HOME nor HOME is set: pass --identity FILE");
    if (n < 0 || (size_t)n >= sizeof(buf))
        return sw_err(SW_ELIMIT, "identity path too long");
    *out = sw_strdup(buf);
    return *out ? 0 : -ENOMEM;
}

void sw_identity_from_seed(const uint8_t seed[32], sw_identity_t *out)
{
    crypto_sign_seed_keypair(out->id.b, out->sk, seed);
}

void sw_identity_generate(sw_identity_t *out)
{
    uint8_t seed[32];

    randombytes_buf(seed, sizeof(seed));
    sw_identity_from_seed(seed, out);
    sodium_memzero(seed, sizeof(seed));
}

void sw_identity_wipe(sw_identity_t *id)
{
    sodium_memzero(id->sk, sizeof(id->sk));
}

/* mkdir -p of the parent directories of path, each created with mode 0700. */
static int make_parents(const char *path)
{
    char buf[4096];
    size_t n = strlen(path);

    if (n >= sizeof(buf))
        return sw_err(SW_ELIMIT, "identity path too long");
    memcpy(buf, path, n + 1);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0700) < 0 && errno != EEXIST)
            return sw_err(-errno, "cannot create directory %s: %s", buf, strerror(errno));
        *p = '/';
    }
    return 0;
}

static int create_key(const char *path, sw_identity_t *out)
{
    uint8_t file[KEY_FILE_LEN];
    int fd, r = 0;

    r = make_parents(path);
    if (r < 0)
        return r;
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return sw_err(-errno, "cannot create identity file %s: %s", path, strerror(errno));
    sw_identity_generate(out);
    memcpy(file, KEY_MAGIC, KEY_MAGIC_LEN);
    memcpy(file + KEY_MAGIC_LEN, out->sk, 32); /* the seed */
    if (write(fd, file, sizeof(file)) != (ssize_t)sizeof(file) || fsync(fd) < 0)
        r = sw_err(errno ? -errno : -EIO, "cannot write identity file %s", path);
    close(fd);
    sodium_memzero(file, sizeof(file));
    if (r < 0) {
        unlink(path);
        sw_identity_wipe(out);
    }
    return r;
}

int sw_identity_load_or_create(const char *path, sw_identity_t *out)
{
    uint8_t file[KEY_FILE_LEN + 1];
    struct stat st;
    ssize_t n;
    int fd, r = 0;

    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0 && errno == ENOENT)
        return create_key(path, out);
    if (fd < 0)
        return sw_err(-errno, "cannot open identity file %s: %s", path, strerror(errno));
    if (fstat(fd, &st) < 0) {
        r = sw_err(-errno, "cannot stat identity file %s", path);
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        r = sw_err(SW_EFORMAT, "identity file %s is not a regular file", path);
        goto out;
    }
    if (st.st_mode & 077) {
        r = sw_err(SW_EUSAGE,
                   "identity file %s is accessible by group or others (mode %03o): run `chmod 600 %s`",
                   path, (unsigned)(st.st_mode & 0777), path);
        goto out;
    }
    n = read(fd, file, sizeof(file));
    if (n != (ssize_t)KEY_FILE_LEN || memcmp(file, KEY_MAGIC, KEY_MAGIC_LEN) != 0) {
        r = sw_err(SW_EFORMAT, "identity file %s is not a swarmd key file (%zd bytes)", path, n);
        goto out;
    }
    sw_identity_from_seed(file + KEY_MAGIC_LEN, out);
out:
    sodium_memzero(file, sizeof(file));
    close(fd);
    return r;
}

/* ======================================================================== swarm keys */

#define SWARM_KEY_HEX 64

int sw_swarm_key_load(const char *path, uint8_t key[32])
{
    char text[SWARM_KEY_HEX + 3];
    struct stat st;
    ssize_t n;
    size_t bin_len = 0;
    int fd, r = 0;

    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return sw_err(-errno, "cannot open swarm key file %s: %s", path, strerror(errno));
    if (fstat(fd, &st) < 0) {
        r = sw_err(-errno, "cannot stat swarm key file %s", path);
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        r = sw_err(SW_EFORMAT, "swarm key file %s is not a regular file", path);
        goto out;
    }
    if (st.st_mode & 077) {
        r = sw_err(SW_EUSAGE,
                   "swarm key file %s is accessible by group or others (mode %03o): run `chmod 600 %s`",
                   path, (unsigned)(st.st_mode & 0777), path);
        goto out;
    }
    n = read(fd, text, sizeof(text));
    if (n == SWARM_KEY_HEX + 1 && text[SWARM_KEY_HEX] == '\n')
        n = SWARM_KEY_HEX;
    if (n != SWARM_KEY_HEX ||
        sodium_hex2bin(key, 32, text, SWARM_KEY_HEX, NULL, &bin_len, NULL) != 0 || bin_len != 32) {
        r = sw_err(SW_EFORMAT,
                   "swarm key file %s is not a swarm key: it must hold exactly 64 hexadecimal characters "
                   "(create one with `swarmd swarm-key generate FILE`)", path);
        sodium_memzero(key, 32);
    }
out:
    sodium_memzero(text, sizeof(text));
    close(fd);
    return r;
}

int sw_swarm_key_generate(const char *path)
{
    uint8_t key[32];
    char text[SWARM_KEY_HEX + 2];
    int fd, r = 0;

    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0 && errno == EEXIST)
        return sw_err(-EEXIST, "%s already exists: not overwriting it (a swarm's peers must share one key; "
                      "remove the file first if you really mean to replace it)", path);
    if (fd < 0)
        return sw_err(-errno, "cannot create swarm key file %s: %s", path, strerror(errno));
    randombytes_buf(key, sizeof(key));
    sodium_bin2hex(text, sizeof(text), key, sizeof(key));
    text[SWARM_KEY_HEX] = '\n';
    if (fchmod(fd, 0600) < 0 || write(fd, text, SWARM_KEY_HEX + 1) != SWARM_KEY_HEX + 1 || fsync(fd) < 0)
        r = sw_err(errno ? -errno : -EIO, "cannot write swarm key file %s", path);
    close(fd);
    if (r < 0)
        unlink(path);
    sodium_memzero(key, sizeof(key));
    sodium_memzero(text, sizeof(text));
    return r;
}

size_t sw_base58_encode(const uint8_t *in, size_t n, char *out, size_t cap)
{
    uint8_t digits[96]; /* base58 digits, little-endian; enough for 64 input bytes */
    size_t nd = 0, zeros = 0, len;

    if (n > 64)
        return 0;
    while (zeros < n && in[zeros] == 0)
        zeros++;
    for (size_t i = zeros; i < n; i++) {
        unsigned carry = in[i];
        for (size_t j = 0; j < nd; j++) {
            carry += (unsigned)digits[j] << 8;
            digits[j] = (uint8_t)(carry % 58);
            carry /= 58;
        }
        while (carry) {
            digits[nd++] = (uint8_t)(carry % 58);
            carry /= 58;
        }
    }
    len = zeros + nd;
    if (len + 1 > cap)
        return 0;
    for (size_t i = 0; i < zeros; i++)
        out[i] = '1';
    for (size_t i = 0; i < nd; i++)
        out[zeros + i] = b58_alpha[digits[nd - 1 - i]];
    out[len] = '\0';
    return len;
}

int sw_base58_decode(const char *s, uint8_t *out, size_t n)
{
    uint8_t bytes[64]; /* big number, little-endian */
    size_t nb = 0, zeros = 0, len = strlen(s);

    if (n > sizeof(bytes) || len == 0 || len > 2 * n + 2)
        return sw_err(SW_EFORMAT, "base58: bad length");
    while (zeros < len && s[zeros] == '1')
        zeros++;
    for (size_t i = zeros; i < len; i++) {
        const char *p = s[i] ? strchr(b58_alpha, s[i]) : NULL;
        if (!p)
            return sw_err(SW_EFORMAT, "base58: bad character '%c'", s[i]);
        unsigned carry = (unsigned)(p - b58_alpha);
        for (size_t j = 0; j < nb; j++) {
            carry += (unsigned)bytes[j] * 58;
            bytes[j] = (uint8_t)carry;
            carry >>= 8;
        }
        while (carry) {
            if (nb == sizeof(bytes))
                return sw_err(SW_EFORMAT, "base58: value too large");
            bytes[nb++] = (uint8_t)carry;
            carry >>= 8;
        }
    }
    if (zeros + nb != n)
        return sw_err(SW_EFORMAT, "base58: decodes to %zu bytes, expected %zu", zeros + nb, n);
    memset(out, 0, zeros);
    for (size_t i = 0; i < nb; i++)
        out[zeros + i] = bytes[nb - 1 - i];
    return 0;
}

void sw_peer_id_text(const sw_peer_id_t *id, char out[SW_PEER_ID_TEXT_MAX])
{
    sw_base58_encode(id->b, SW_PEER_ID_LEN, out, SW_PEER_ID_TEXT_MAX);
}

void sw_peer_id_short(const sw_peer_id_t *id, char out[SW_PEER_ID_SHORT_MAX])
{
    char full[SW_PEER_ID_TEXT_MAX];

    sw_peer_id_text(id, full);
    snprintf(out, SW_PEER_ID_SHORT_MAX, "%.8s", full);
}

int sw_peer_id_parse(const char *s, sw_peer_id_t *out)
{
    int r = sw_base58_decode(s, out->b, SW_PEER_ID_LEN);

    return r < 0 ? sw_err(SW_EFORMAT, "'%.60s' is not a peer id (base58 of 32 bytes)", s) : 0;
}

int sw_peer_id_eq(const sw_peer_id_t *a, const sw_peer_id_t *b)
{
    return sodium_memcmp(a->b, b->b, SW_PEER_ID_LEN) == 0;
}

int sw_addr_parse(const char *s, sw_addr_t *out)
{
    const char *at = strchr(s, '@'), *hp = s, *colon, *hs, *he;
    char idbuf[SW_PEER_ID_TEXT_MAX + 8];
    char *end;
    unsigned long port;

    memset(out, 0, sizeof(*out));
    if (at) {
        size_t n = (size_t)(at - s);
        if (n == 0 || n >= sizeof(idbuf))
            return sw_err(SW_EFORMAT, "address '%.80s': bad peer id before '@'", s);
        memcpy(idbuf, s, n);
        idbuf[n] = '\0';
        if (sw_peer_id_parse(idbuf, &out->peer) < 0)
            return sw_err(SW_EFORMAT, "address '%.80s': '%s' is not a peer id", s, idbuf);
        out->has_peer = 1;
        hp = at + 1;
    }
    if (hp[0] == '[') {
        const char *rb = strchr(hp, ']');
        if (!rb || rb[1] != ':')
            return sw_err(SW_EFORMAT, "address '%.80s': expected [IPV6]:PORT", s);
        hs = hp + 1;
        he = rb;
        colon = rb + 1;
    } else {
        colon = strrchr(hp, ':');
        if (!colon || memchr(hp, ':', (size_t)(colon - hp)))
            return sw_err(SW_EFORMAT, "address '%.80s': expected HOST:PORT (write IPv6 as [ADDR]:PORT)", s);
        hs = hp;
        he = colon;
    }
    if (he == hs || (size_t)(he - hs) >= sizeof(out->host))
        return sw_err(SW_EFORMAT, "address '%.80s': bad host", s);
    memcpy(out->host, hs, (size_t)(he - hs));
    out->host[he - hs] = '\0';
    errno = 0;
    port = strtoul(colon + 1, &end, 10);
    if (colon[1] < '0' || colon[1] > '9' || *end || errno || port == 0 || port > 65535)
        return sw_err(SW_EFORMAT, "address '%.80s': port must be 1..65535", s);
    out->port = (uint16_t)port;
    return 0;
}

int sw_addr_guess_host(char *out, size_t cap)
{
    uv_interface_address_t *ifs;
    int n, found = 0;

    if (uv_interface_addresses(&ifs, &n) < 0)
        return 0;
    for (int i = 0; i < n && !found; i++) {
        if (ifs[i].is_internal || ifs[i].address.address4.sin_family != AF_INET)
            continue;
        found = uv_ip4_name(&ifs[i].address.address4, out, cap) == 0;
    }
    uv_free_interface_addresses(ifs, n);
    return found;
}
