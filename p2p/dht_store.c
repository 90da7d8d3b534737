/*
 * dht_store.c - DHT records: validity rules, owner signatures, the bounded store a node keeps for
 * others, and per-peer token buckets (see dht_internal.h). Plain data, called on the loop thread.
 */
#include "p2p/dht_internal.h"

#include <string.h>

#include <sodium.h>

#include "util/alloc.h"
#include "util/error.h"

#define SIG_DOMAIN "swarmd-dht-record-v1"
#define STORE_SLOTS0 64
#define ENTRY_OVERHEAD 96 /* bytes charged per entry beyond its subkey and value */

/* ======================================================================== rules and signatures */

int sw_dht_subkey_owner(const uint8_t *subkey, size_t len, sw_peer_id_t *owner)
{
    size_t plen = sizeof(SW_DHT_OWNED_PREFIX) - 1;

    if (len < plen || memcmp(subkey, SW_DHT_OWNED_PREFIX, plen) != 0)
        return 0;
    if (len != SW_DHT_OWNED_SUBKEY_LEN)
        return -1;
    if (owner)
        memcpy(owner->b, subkey + plen, SW_PEER_ID_LEN);
    return 1;
}

void sw_dht_owned_subkey(const sw_peer_id_t *peer, uint8_t out[SW_DHT_OWNED_SUBKEY_LEN])
{
    memcpy(out, SW_DHT_OWNED_PREFIX, sizeof(SW_DHT_OWNED_PREFIX) - 1);
    memcpy(out + sizeof(SW_DHT_OWNED_PREFIX) - 1, peer->b, SW_PEER_ID_LEN);
}

static void put_u32(crypto_generichash_state *st, uint32_t v)
{
    uint8_t b[4] = { (uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v };
    crypto_generichash_update(st, b, 4);
}

/* The signed message: BLAKE2b-512 of the domain and the length-prefixed fields. */
static void record_digest(const uint8_t *key, size_t key_len, const sw_dht_record_t *r, uint8_t out[64])
{
    crypto_generichash_state st;
    uint8_t e[8];

    crypto_generichash_init(&st, NULL, 0, 64);
    crypto_generichash_update(&st, (const uint8_t *)SIG_DOMAIN, sizeof(SIG_DOMAIN));
    put_u32(&st, (uint32_t)key_len);
    crypto_generichash_update(&st, key, key_len);
    put_u32(&st, (uint32_t)r->subkey_len);
    if (r->subkey_len)
        crypto_generichash_update(&st, r->subkey, r->subkey_len);
    put_u32(&st, (uint32_t)r->value_len);
    if (r->value_len)
        crypto_generichash_update(&st, r->value, r->value_len);
    for (int i = 0; i < 8; i++)
        e[i] = (uint8_t)(r->expiration_ms >> (56 - 8 * i));
    crypto_generichash_update(&st, e, 8);
    crypto_generichash_final(&st, out, 64);
}

void sw_dht_record_sign(const sw_identity_t *id, const uint8_t *key, size_t key_len, const sw_dht_record_t *r,
                        uint8_t sig[SW_DHT_SIG_LEN])
{
    uint8_t d[64];

    record_digest(key, key_len, r, d);
    crypto_sign_detached(sig, NULL, d, sizeof(d), id->sk);
}

int sw_dht_record_check(const uint8_t *key, size_t key_len, const sw_dht_record_t *r, uint64_t now_ms,
                        const sw_dht_limits_t *lim)
{
    sw_peer_id_t owner;
    uint64_t horizon = now_ms + ((uint64_t)lim->max_ttl_s + lim->max_skew_s) * 1000u;
    int own;

    if (key_len == 0 || key_len > SW_DHT_KEY_MAX)
        return sw_err(SW_ELIMIT, "key of %zu bytes (1..%d)", key_len, SW_DHT_KEY_MAX);
    if (r->subkey_len > SW_DHT_SUBKEY_MAX)
        return sw_err(SW_ELIMIT, "subkey of %zu bytes (max %d)", r->subkey_len, SW_DHT_SUBKEY_MAX);
    if (r->value_len > lim->max_value)
        return sw_err(SW_ELIMIT, "value of %zu bytes (max %u)", r->value_len, lim->max_value);
    if (r->expiration_ms <= now_ms)
        return sw_err(SW_EFORMAT, "record already expired");
    if (r->expiration_ms > horizon)
        return sw_err(SW_EFORMAT, "expiration %llu ms ahead exceeds the %u s limit",
                      (unsigned long long)(r->expiration_ms - now_ms), lim->max_ttl_s + lim->max_skew_s);
    own = sw_dht_subkey_owner(r->subkey, r->subkey_len, &owner);
    if (own < 0)
        return sw_err(SW_EFORMAT, "malformed owned subkey");
    if (!own) {
        if (r->signature)
            return sw_err(SW_EFORMAT, "signature on a subkey nobody owns");
        return 0;
    }
    if (!r->signature)
        return sw_err(SW_EFORMAT, "owned subkey without signature");
    {
        uint8_t d[64];
        record_digest(key, key_len, r, d);
        if (crypto_sign_verify_detached(r->signature, d, sizeof(d), owner.b) != 0)
            return sw_err(SW_EFORMAT, "bad owner signature");
    }
    return 0;
}

/* ======================================================================== store */

int sw_dht_store_init(sw_dht_store_t *s, const sw_dht_limits_t *lim)
{
    memset(s, 0, sizeof(*s));
    s->lim = *lim;
    s->nslots = STORE_SLOTS0;
    s->tab = sw_calloc(s->nslots, sizeof(*s->tab));
    return s->tab ? 0 : -ENOMEM;
}

static uint64_t entry_cost(const sw_dht_entry_t *e)
{
    return (uint64_t)e->subkey_len + e->value_len + ENTRY_OVERHEAD;
}

static void keyrec_free(sw_dht_keyrec_t *k)
{
    for (uint32_t i = 0; i < k->n; i++)
        sw_free(k->e[i].subkey);
    sw_free(k->e);
    sw_free(k->key);
    sw_free(k);
}

void sw_dht_store_free(sw_dht_store_t *s)
{
    for (size_t i = 0; s->tab && i < s->nslots; i++) {
        while (s->tab[i]) {
            sw_dht_keyrec_t *k = s->tab[i];
            s->tab[i] = k->next;
            keyrec_free(k);
        }
    }
    sw_free(s->tab);
    memset(s, 0, sizeof(*s));
}

static size_t slot_of(const sw_dht_store_t *s, const sw_dht_id_t *id)
{
    uint64_t h;

    memcpy(&h, id->b, sizeof(h));
    return (size_t)(h % s->nslots);
}

sw_dht_keyrec_t *sw_dht_store_find(const sw_dht_store_t *s, const uint8_t *key, size_t key_len)
{
    sw_dht_id_t id;

    sw_dht_id_of_key(key, key_len, &id);
    for (sw_dht_keyrec_t *k = s->tab[slot_of(s, &id)]; k; k = k->next)
        if (k->key_len == key_len && memcmp(k->key, key, key_len) == 0)
            return k;
    return NULL;
}

static void grow(sw_dht_store_t *s)
{
    size_t n = s->nslots * 4;
    sw_dht_keyrec_t **tab = sw_calloc(n, sizeof(*tab));

    if (!tab)
        return; /* longer chains, still correct */
    for (size_t i = 0; i < s->nslots; i++) {
        while (s->tab[i]) {
            sw_dht_keyrec_t *k = s->tab[i];
            uint64_t h;
            s->tab[i] = k->next;
            memcpy(&h, k->id.b, sizeof(h));
            k->next = tab[h % n];
            tab[h % n] = k;
        }
    }
    sw_free(s->tab);
    s->tab = tab;
    s->nslots = n;
}

static int entry_fill(sw_dht_entry_t *e, const sw_dht_record_t *r)
{
    uint8_t *buf = sw_malloc(r->subkey_len + r->value_len + 1);

    if (!buf)
        return -ENOMEM;
    if (r->subkey_len)
        memcpy(buf, r->subkey, r->subkey_len);
    if (r->value_len)
        memcpy(buf + r->subkey_len, r->value, r->value_len);
    e->subkey = buf;
    e->value = buf + r->subkey_len;
    e->subkey_len = (uint32_t)r->subkey_len;
    e->value_len = (uint32_t)r->value_len;
    e->exp_ms = r->expiration_ms;
    e->has_sig = r->signature != NULL;
    if (r->signature)
        memcpy(e->sig, r->signature, SW_DHT_SIG_LEN);
    else
        memset(e->sig, 0, SW_DHT_SIG_LEN);
    return 0;
}

int sw_dht_store_put(sw_dht_store_t *s, const uint8_t *key, size_t key_len, const sw_dht_record_t *r,
                     uint64_t now_ms)
{
    sw_dht_keyrec_t *k;
    sw_dht_entry_t ne;
    uint64_t cost = (uint64_t)r->subkey_len + r->value_len + ENTRY_OVERHEAD;
    int rc;

    if ((rc = sw_dht_record_check(key, key_len, r, now_ms, &s->lim)) < 0)
        return rc;
    k = sw_dht_store_find(s, key, key_len);
    if (k) {
        for (uint32_t i = 0; i < k->n; i++) {
            sw_dht_entry_t *e = &k->e[i];
            if (e->subkey_len != r->subkey_len || memcmp(e->subkey, r->subkey, r->subkey_len) != 0)
                continue;
            if (e->exp_ms >= r->expiration_ms)
                return 1; /* later (or equal) expiration wins; equal keeps the first */
            if (s->bytes - entry_cost(e) + cost > s->lim.max_bytes)
                return sw_err(SW_ELIMIT, "node holds %llu record bytes (limit %llu)",
                              (unsigned long long)s->bytes, (unsigned long long)s->lim.max_bytes);
            if ((rc = entry_fill(&ne, r)) < 0)
                return rc;
            s->bytes -= entry_cost(e);
            sw_free(e->subkey);
            *e = ne;
            s->bytes += cost;
            k->last_store_ms = now_ms;
            return 0;
        }
        if (k->n >= s->lim.max_subkeys)
            return sw_err(SW_ELIMIT, "key has %u subkeys (limit %u)", k->n, s->lim.max_subkeys);
    }
    if (s->bytes + cost + (k ? 0 : key_len + ENTRY_OVERHEAD) > s->lim.max_bytes)
        return sw_err(SW_ELIMIT, "node holds %llu record bytes (limit %llu)", (unsigned long long)s->bytes,
                      (unsigned long long)s->lim.max_bytes);
    if (!k) {
        if (s->nkeys >= s->nslots * 2)
            grow(s);
        k = sw_calloc(1, sizeof(*k));
        if (!k)
            return -ENOMEM;
        k->key = sw_malloc(key_len);
        if (!k->key) {
            sw_free(k);
            return -ENOMEM;
        }
        memcpy(k->key, key, key_len);
        k->key_len = (uint32_t)key_len;
        sw_dht_id_of_key(key, key_len, &k->id);
        k->next = s->tab[slot_of(s, &k->id)];
        s->tab[slot_of(s, &k->id)] = k;
        s->nkeys++;
        s->bytes += key_len + ENTRY_OVERHEAD;
    }
    if (k->n == k->cap) {
        uint32_t cap = k->cap ? k->cap * 2 : 4;
        sw_dht_entry_t *e = sw_realloc(k->e, cap * sizeof(*e));
        if (!e)
            return -ENOMEM; /* an empty new key is dropped by the next expiry sweep */
        k->e = e;
        k->cap = cap;
    }
    if ((rc = entry_fill(&k->e[k->n], r)) < 0)
        return rc;
    k->n++;
    k->last_store_ms = now_ms;
    s->nrecords++;
    s->bytes += cost;
    return 0;
}

uint64_t sw_dht_store_expire(sw_dht_store_t *s, uint64_t now_ms)
{
    uint64_t next = UINT64_MAX;

    for (size_t i = 0; i < s->nslots; i++) {
        sw_dht_keyrec_t **pp = &s->tab[i];
        while (*pp) {
            sw_dht_keyrec_t *k = *pp;
            uint32_t j = 0;
            while (j < k->n) {
                if (k->e[j].exp_ms <= now_ms) {
                    s->bytes -= entry_cost(&k->e[j]);
                    s->nrecords--;
                    sw_free(k->e[j].subkey);
                    k->e[j] = k->e[k->n - 1];
                    k->n--;
                } else {
                    if (k->e[j].exp_ms < next)
                        next = k->e[j].exp_ms;
                    j++;
                }
            }
            if (k->n == 0) {
                *pp = k->next;
                s->bytes -= k->key_len + ENTRY_OVERHEAD;
                s->nkeys--;
                keyrec_free(k);
            } else {
                pp = &k->next;
            }
        }
    }
    return next;
}

/* ======================================================================== rate limits */

void sw_dht_rate_init(sw_dht_rate_t *r, double store_rate, double store_burst, double find_rate,
                      double find_burst)
{
    memset(r, 0, sizeof(*r));
    r->rate[SW_DHT_RATE_STORE] = store_rate;
    r->burst[SW_DHT_RATE_STORE] = store_burst;
    r->rate[SW_DHT_RATE_FIND] = find_rate;
    r->burst[SW_DHT_RATE_FIND] = find_burst;
    r->rate[SW_DHT_RATE_DIALBACK] = 1e9;
    r->burst[SW_DHT_RATE_DIALBACK] = 1e9;
}

void sw_dht_rate_set(sw_dht_rate_t *r, int kind, double rate, double burst)
{
    r->rate[kind] = rate;
    r->burst[kind] = burst;
}

int sw_dht_rate_take(sw_dht_rate_t *r, const sw_peer_id_t *peer, int kind, uint64_t now_ms)
{
    uint64_t h;
    size_t i0, victim = 0;
    uint64_t oldest = UINT64_MAX;
    sw_dht_rate_slot_t *s = NULL;

    memcpy(&h, peer->b, sizeof(h));
    i0 = (size_t)(h % SW_DHT_RATE_SLOTS);
    /* linear probing over 16 slots; the idlest of them is recycled when none matches */
    for (size_t j = 0; j < 16; j++) {
        size_t i = (i0 + j) % SW_DHT_RATE_SLOTS;
        sw_dht_rate_slot_t *c = &r->slot[i];
        if (c->used && sw_peer_id_eq(&c->peer, peer)) {
            s = c;
            break;
        }
        if (!c->used) {
            victim = i;
            oldest = 0;
        } else if (oldest != 0 && c->last_ms < oldest) {
            oldest = c->last_ms;
            victim = i;
        }
    }
    if (!s) {
        s = &r->slot[victim];
        s->used = 1;
        s->peer = *peer;
        for (int k = 0; k < SW_DHT_RATE_KINDS; k++)
            s->tokens[k] = r->burst[k];
        s->last_ms = now_ms;
    }
    if (now_ms > s->last_ms) {
        double dt = (double)(now_ms - s->last_ms) / 1000.0;
        for (int k = 0; k < SW_DHT_RATE_KINDS; k++) {
            s->tokens[k] += dt * r->rate[k];
            if (s->tokens[k] > r->burst[k])
                s->tokens[k] = r->burst[k];
        }
        s->last_ms = now_ms;
    }
    if (s->tokens[kind] < 1.0)
        return 0;
    s->tokens[kind] -= 1.0;
    return 1;
}
