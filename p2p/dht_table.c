/*
 * dht_table.c - DHT ids, XOR distance and the Kademlia routing table (see dht_internal.h).
 *
 * Bucket i holds contacts whose id shares exactly i leading bits with ours; at most k of them,
 * least recently seen first. A newcomer to a full bucket never pushes out a contact that still
 * answers: it waits in the bucket's replacement cache while the head is pinged (the classic rule:
 * long-lived contacts are the likeliest to stay). Plain data, called on the loop thread.
 */
#include "p2p/dht_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#include "util/alloc.h"
#include "util/error.h"
#include "util/file.h"

#define TABLE_MAGIC "swarmd-dht-table 1"

/* ======================================================================== ids */

void sw_dht_id_of_peer(const sw_peer_id_t *p, sw_dht_id_t *out)
{
    crypto_generichash(out->b, SW_DHT_ID_LEN, p->b, SW_PEER_ID_LEN, NULL, 0);
}

void sw_dht_id_of_key(const void *key, size_t len, sw_dht_id_t *out)
{
    crypto_generichash(out->b, SW_DHT_ID_LEN, key, len, NULL, 0);
}

void sw_dht_id_xor(const sw_dht_id_t *a, const sw_dht_id_t *b, sw_dht_id_t *out)
{
    for (int i = 0; i < SW_DHT_ID_LEN; i++)
        out->b[i] = a->b[i] ^ b->b[i];
}

int sw_dht_id_cmp_dist(const sw_dht_id_t *target, const sw_dht_id_t *a, const sw_dht_id_t *b)
{
    for (int i = 0; i < SW_DHT_ID_LEN; i++) {
        uint8_t da = a->b[i] ^ target->b[i], db = b->b[i] ^ target->b[i];
        if (da != db)
            return da < db ? -1 : 1;
    }
    return 0;
}

int sw_dht_id_cpl(const sw_dht_id_t *a, const sw_dht_id_t *b)
{
    for (int i = 0; i < SW_DHT_ID_LEN; i++) {
        uint8_t x = a->b[i] ^ b->b[i];
        if (x)
            return i * 8 + __builtin_clz((unsigned)x) - 24;
    }
    return SW_DHT_ID_BITS;
}

void sw_dht_id_random_in_bucket(const sw_dht_id_t *self, int cpl, sw_dht_id_t *out)
{
    int byte = cpl / 8, bit = 7 - cpl % 8;
    uint8_t keep = (uint8_t)(0xff00u >> (cpl % 8)); /* the cpl % 8 high bits of that byte */

    randombytes_buf(out->b, SW_DHT_ID_LEN);
    memcpy(out->b, self->b, (size_t)byte);
    out->b[byte] = (uint8_t)((self->b[byte] & keep) | (out->b[byte] & ~keep & ((1u << bit) - 1u)) |
                             ((~self->b[byte]) & (1u << bit)));
}

int sw_dht_addr_ok(const char *addr)
{
    sw_addr_t a;

    if (!addr || !addr[0] || strlen(addr) >= SW_DHT_ADDR_MAX)
        return 0;
    if (sw_addr_parse(addr, &a) < 0 || a.has_peer || a.port == 0)
        return 0;
    return 1;
}

/* ======================================================================== table */

void sw_dht_table_init(sw_dht_table_t *t, const sw_dht_id_t *self, uint32_t k)
{
    memset(t, 0, sizeof(*t));
    t->self = *self;
    t->k = k ? k : SW_DHT_K;
}

void sw_dht_table_free(sw_dht_table_t *t)
{
    for (int i = 0; i < SW_DHT_ID_BITS; i++) {
        sw_free(t->b[i].c);
        sw_free(t->b[i].repl);
    }
    memset(t, 0, sizeof(*t));
}

static sw_dht_bucket_t *bucket_of(sw_dht_table_t *t, const sw_dht_id_t *id)
{
    int cpl = sw_dht_id_cpl(&t->self, id);

    return cpl >= SW_DHT_ID_BITS ? NULL : &t->b[cpl];
}

static int bucket_index(const sw_dht_contact_t *a, uint32_t n, const sw_peer_id_t *peer)
{
    for (uint32_t i = 0; i < n; i++)
        if (sw_peer_id_eq(&a[i].peer, peer))
            return (int)i;
    return -1;
}

static void remove_at(sw_dht_contact_t *a, uint32_t *n, uint32_t i)
{
    memmove(&a[i], &a[i + 1], (*n - i - 1) * sizeof(*a));
    (*n)--;
}

static void fill_contact(sw_dht_contact_t *c, const sw_peer_id_t *peer, const sw_dht_id_t *id, const char *addr,
                         uint64_t now_ms)
{
    memset(c, 0, sizeof(*c));
    c->peer = *peer;
    c->id = *id;
    snprintf(c->addr, sizeof(c->addr), "%s", addr);
    c->last_seen_ms = now_ms;
}

/* Puts a newcomer at the tail of the replacement cache (dropping the oldest when full). */
static void cache_add(sw_dht_table_t *t, sw_dht_bucket_t *b, const sw_dht_contact_t *c)
{
    int i = bucket_index(b->repl, b->nrepl, &c->peer);

    if (i >= 0)
        remove_at(b->repl, &b->nrepl, (uint32_t)i);
    if (b->nrepl == t->k)
        remove_at(b->repl, &b->nrepl, 0);
    b->repl[b->nrepl++] = *c;
}

int sw_dht_table_update(sw_dht_table_t *t, const sw_peer_id_t *peer, const char *addr, uint64_t now_ms,
                        sw_dht_contact_t *ping_out)
{
    sw_dht_id_t id;
    sw_dht_bucket_t *b;
    sw_dht_contact_t c;
    int i;

    sw_dht_id_of_peer(peer, &id);
    b = bucket_of(t, &id);
    if (!b)
        return SW_DHT_T_SELF;
    if (!b->c) {
        b->c = sw_calloc(t->k, sizeof(*b->c));
        b->repl = sw_calloc(t->k, sizeof(*b->repl));
        if (!b->c || !b->repl) {
            sw_free(b->c);
            sw_free(b->repl);
            b->c = b->repl = NULL;
            return -ENOMEM;
        }
    }
    fill_contact(&c, peer, &id, addr, now_ms);
    i = bucket_index(b->c, b->n, peer);
    if (i >= 0) {
        remove_at(b->c, &b->n, (uint32_t)i);
        b->c[b->n++] = c;
        return SW_DHT_T_UPDATED;
    }
    if (b->n < t->k) {
        b->c[b->n++] = c;
        t->count++;
        i = bucket_index(b->repl, b->nrepl, peer);
        if (i >= 0)
            remove_at(b->repl, &b->nrepl, (uint32_t)i);
        return SW_DHT_T_ADDED;
    }
    cache_add(t, b, &c);
    if (b->pinging)
        return SW_DHT_T_CACHED;
    b->pinging = 1;
    if (ping_out)
        *ping_out = b->c[0];
    return SW_DHT_T_PING;
}

/* Removes the contact at i and promotes the most recently seen cached one. */
static void evict(sw_dht_table_t *t, sw_dht_bucket_t *b, uint32_t i)
{
    remove_at(b->c, &b->n, i);
    t->count--;
    if (b->nrepl) {
        b->c[b->n++] = b->repl[b->nrepl - 1];
        b->nrepl--;
        t->count++;
    }
}

void sw_dht_table_ping_result(sw_dht_table_t *t, const sw_peer_id_t *peer, int alive, uint64_t now_ms)
{
    sw_dht_id_t id;
    sw_dht_bucket_t *b;
    int i;

    sw_dht_id_of_peer(peer, &id);
    b = bucket_of(t, &id);
    if (!b || !b->c)
        return;
    b->pinging = 0;
    i = bucket_index(b->c, b->n, peer);
    if (i < 0)
        return;
    if (alive) {
        sw_dht_contact_t c = b->c[i];
        c.last_seen_ms = now_ms;
        c.fails = 0;
        remove_at(b->c, &b->n, (uint32_t)i);
        b->c[b->n++] = c;
    } else {
        evict(t, b, (uint32_t)i);
    }
}

void sw_dht_table_fail(sw_dht_table_t *t, const sw_peer_id_t *peer)
{
    sw_dht_id_t id;
    sw_dht_bucket_t *b;
    int i;

    sw_dht_id_of_peer(peer, &id);
    b = bucket_of(t, &id);
    if (!b || !b->c)
        return;
    i = bucket_index(b->repl, b->nrepl, peer);
    if (i >= 0)
        remove_at(b->repl, &b->nrepl, (uint32_t)i);
    i = bucket_index(b->c, b->n, peer);
    if (i < 0)
        return;
    if (++b->c[i].fails >= SW_DHT_MAX_FAILS)
        evict(t, b, (uint32_t)i);
}

void sw_dht_table_remove(sw_dht_table_t *t, const sw_peer_id_t *peer)
{
    sw_dht_id_t id;
    sw_dht_bucket_t *b;
    int i;

    sw_dht_id_of_peer(peer, &id);
    b = bucket_of(t, &id);
    if (!b || !b->c)
        return;
    i = bucket_index(b->c, b->n, peer);
    if (i >= 0)
        evict(t, b, (uint32_t)i);
}

const sw_dht_contact_t *sw_dht_table_find(const sw_dht_table_t *t, const sw_peer_id_t *peer)
{
    sw_dht_id_t id;
    int cpl, i;

    sw_dht_id_of_peer(peer, &id);
    cpl = sw_dht_id_cpl(&t->self, &id);
    if (cpl >= SW_DHT_ID_BITS || !t->b[cpl].c)
        return NULL;
    i = bucket_index(t->b[cpl].c, t->b[cpl].n, peer);
    return i < 0 ? NULL : &t->b[cpl].c[i];
}

size_t sw_dht_table_closest(const sw_dht_table_t *t, const sw_dht_id_t *target, sw_dht_contact_t *out, size_t n)
{
    size_t have = 0;

    if (n == 0)
        return 0;
    /* insertion into a sorted array of at most n: tables hold a few hundred contacts */
    for (int bi = 0; bi < SW_DHT_ID_BITS; bi++) {
        const sw_dht_bucket_t *b = &t->b[bi];
        for (uint32_t i = 0; i < b->n; i++) {
            const sw_dht_contact_t *c = &b->c[i];
            size_t pos = have;
            while (pos > 0 && sw_dht_id_cmp_dist(target, &c->id, &out[pos - 1].id) < 0)
                pos--;
            if (pos >= n)
                continue;
            if (have < n)
                have++;
            memmove(&out[pos + 1], &out[pos], (have - pos - 1) * sizeof(*out));
            out[pos] = *c;
        }
    }
    return have;
}

/* ======================================================================== save / load */

int sw_dht_table_save(const sw_dht_table_t *t, const char *path)
{
    char *tmp = NULL, text[SW_PEER_ID_TEXT_MAX];
    size_t plen = strlen(path);
    FILE *f = NULL;
    int r = 0;

    tmp = sw_malloc(plen + 5);
    if (!tmp)
        return -ENOMEM;
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    f = fopen(tmp, "w");
    if (!f) {
        r = sw_err(-errno, "%s: cannot write: %s", tmp, strerror(errno));
        goto out;
    }
    fprintf(f, "%s\n", TABLE_MAGIC);
    for (int bi = 0; bi < SW_DHT_ID_BITS; bi++) {
        for (uint32_t i = 0; i < t->b[bi].n; i++) {
            sw_peer_id_text(&t->b[bi].c[i].peer, text);
            fprintf(f, "%s %s\n", text, t->b[bi].c[i].addr);
        }
    }
    if (fflush(f) != 0 || ferror(f) || fsync(fileno(f)) != 0) {
        r = sw_err(-EIO, "%s: write failed", tmp);
        goto out;
    }
    if (fclose(f) != 0) {
        f = NULL;
        r = sw_err(-EIO, "%s: write failed", tmp);
        goto out;
    }
    f = NULL;
    if (rename(tmp, path) != 0)
        r = sw_err(-errno, "%s: cannot rename to %s: %s", tmp, path, strerror(errno));
out:
    if (f)
        fclose(f);
    if (r < 0)
        unlink(tmp);
    sw_free(tmp);
    return r;
}

int sw_dht_table_load(sw_dht_table_t *t, const char *path, uint64_t now_ms)
{
    char *text = NULL, *line, *save = NULL;
    size_t len = 0, nlines = 0, maxlines = (size_t)SW_DHT_ID_BITS * t->k;
    sw_peer_id_t *peers = NULL;
    char (*addrs)[SW_DHT_ADDR_MAX] = NULL;
    int r, lineno = 0;

    if (access(path, F_OK) != 0)
        return -ENOENT;
    if ((r = sw_file_read(path, SW_DHT_TABLE_FILE_MAX, &text, &len)) < 0)
        return r;
    if (strlen(text) != len) {
        r = sw_err(SW_EFORMAT, "%s: NUL byte in the routing table file", path);
        goto out;
    }
    peers = sw_malloc(maxlines * sizeof(*peers));
    addrs = sw_malloc(maxlines * sizeof(*addrs));
    if (!peers || !addrs) {
        r = -ENOMEM;
        goto out;
    }
    /* validate everything first, then add: a bad file adds nothing */
    for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *sp;
        lineno++;
        if (lineno == 1) {
            if (strcmp(line, TABLE_MAGIC) != 0) {
                r = sw_err(SW_EFORMAT, "%s: not a routing table file (first line)", path);
                goto out;
            }
            continue;
        }
        if (nlines == maxlines) {
            r = sw_err(SW_ELIMIT, "%s: more than %zu contacts", path, maxlines);
            goto out;
        }
        sp = strchr(line, ' ');
        if (!sp) {
            r = sw_err(SW_EFORMAT, "%s:%d: expected PEERID HOST:PORT", path, lineno);
            goto out;
        }
        *sp = 0;
        if (sw_peer_id_parse(line, &peers[nlines]) < 0 || !sw_dht_addr_ok(sp + 1)) {
            r = sw_err(SW_EFORMAT, "%s:%d: bad peer id or address", path, lineno);
            goto out;
        }
        snprintf(addrs[nlines], SW_DHT_ADDR_MAX, "%s", sp + 1);
        nlines++;
    }
    if (lineno == 0) {
        r = sw_err(SW_EFORMAT, "%s: empty routing table file", path);
        goto out;
    }
    for (size_t i = 0; i < nlines; i++) {
        int u = sw_dht_table_update(t, &peers[i], addrs[i], now_ms, NULL);
        if (u == SW_DHT_T_PING) { /* loaded contacts never evict: clear the ping request */
            sw_dht_id_t id;
            sw_dht_id_of_peer(&peers[i], &id);
            t->b[sw_dht_id_cpl(&t->self, &id)].pinging = 0;
        }
        if (u < 0) {
            r = u;
            goto out;
        }
    }
    r = 0;
out:
    sw_free(text);
    sw_free(peers);
    sw_free(addrs);
    return r;
}
