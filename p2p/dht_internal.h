/*
 * dht_internal.h - the DHT's parts below the network, shared by dht*.c and tests/test-dht.c:
 * ids and XOR distance, the routing table (dht_table.c), record storage, signatures and the
 * per-peer rate limiter (dht_store.c). Pure data structures: no loop, no sockets, time passed in.
 */
#ifndef SW_P2P_DHT_INTERNAL_H
#define SW_P2P_DHT_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "p2p/dht.h"
#include "p2p/identity.h"

#define SW_DHT_ID_LEN 32
#define SW_DHT_ID_BITS 256
#define SW_DHT_ADDR_MAX 128      /* HOST:PORT text, NUL included */
#define SW_DHT_MAX_FAILS 2       /* consecutive failed calls that remove a contact */
#define SW_DHT_TABLE_FILE_MAX (1u << 20)

typedef struct {
    uint8_t b[SW_DHT_ID_LEN];
} sw_dht_id_t;

void sw_dht_id_of_peer(const sw_peer_id_t *p, sw_dht_id_t *out);
void sw_dht_id_of_key(const void *key, size_t len, sw_dht_id_t *out);
void sw_dht_id_xor(const sw_dht_id_t *a, const sw_dht_id_t *b, sw_dht_id_t *out);
/* <0, 0, >0 as a is closer to, as far from, or farther from target than b. */
int sw_dht_id_cmp_dist(const sw_dht_id_t *target, const sw_dht_id_t *a, const sw_dht_id_t *b);
/* Leading bits a and b share (256 when equal): the bucket index of b in a's table. */
int sw_dht_id_cpl(const sw_dht_id_t *a, const sw_dht_id_t *b);
/* A random id sharing exactly `cpl` leading bits with self (cpl < 256). */
void sw_dht_id_random_in_bucket(const sw_dht_id_t *self, int cpl, sw_dht_id_t *out);

/* Checks an address as the DHT accepts it: HOST:PORT (no peer id), short enough, port non-zero. */
int sw_dht_addr_ok(const char *addr);

/* ======================================================================== routing table */

typedef struct {
    sw_peer_id_t peer;
    sw_dht_id_t id;
    char addr[SW_DHT_ADDR_MAX];
    uint64_t last_seen_ms;
    uint32_t fails;
} sw_dht_contact_t;

typedef struct {
    sw_dht_contact_t *c;    /* k slots, least recently seen first; NULL until first used */
    sw_dht_contact_t *repl; /* replacement cache: k slots, most recent last */
    uint32_t n, nrepl;
    int pinging;            /* the head is being pinged before a newcomer may take its place */
    uint64_t last_lookup_ms;
} sw_dht_bucket_t;

typedef struct {
    sw_dht_id_t self;
    uint32_t k;
    size_t count;
    sw_dht_bucket_t b[SW_DHT_ID_BITS];
} sw_dht_table_t;

enum {
    SW_DHT_T_ADDED = 0,   /* the contact is new in its bucket */
    SW_DHT_T_UPDATED = 1, /* it was there: moved to the tail, address refreshed */
    SW_DHT_T_PING = 2,    /* bucket full: *ping_out (the head) must be pinged; the newcomer waits in the cache */
    SW_DHT_T_CACHED = 3,  /* bucket full and a ping already runs: the newcomer waits in the cache */
    SW_DHT_T_SELF = 4,    /* our own id: ignored */
};

void sw_dht_table_init(sw_dht_table_t *t, const sw_dht_id_t *self, uint32_t k);
void sw_dht_table_free(sw_dht_table_t *t);
/* Records that `peer` at `addr` was seen alive now. Returns SW_DHT_T_* or -ENOMEM. */
int sw_dht_table_update(sw_dht_table_t *t, const sw_peer_id_t *peer, const char *addr, uint64_t now_ms,
                        sw_dht_contact_t *ping_out);
/* The answer to a SW_DHT_T_PING: alive keeps the old contact (moved to the tail) and leaves the
 * newcomer in the cache; dead removes it and promotes the most recent cached contact. */
void sw_dht_table_ping_result(sw_dht_table_t *t, const sw_peer_id_t *peer, int alive, uint64_t now_ms);
/* A call to peer failed: after SW_DHT_MAX_FAILS in a row the contact is replaced from the cache. */
void sw_dht_table_fail(sw_dht_table_t *t, const sw_peer_id_t *peer);
void sw_dht_table_remove(sw_dht_table_t *t, const sw_peer_id_t *peer);
const sw_dht_contact_t *sw_dht_table_find(const sw_dht_table_t *t, const sw_peer_id_t *peer);
/* Up to n contacts closest to target, closest first, into out. Returns how many. */
size_t sw_dht_table_closest(const sw_dht_table_t *t, const sw_dht_id_t *target, sw_dht_contact_t *out, size_t n);
/*
 * Text file, one contact a line: "swarmd-dht-table 1" then "PEERID HOST:PORT" lines. save writes
 * path.tmp and renames it. load adds each contact (as seen at now_ms) after validating the whole
 * file: SW_EFORMAT (nothing added) when any line is malformed, SW_ELIMIT when it exceeds
 * SW_DHT_TABLE_FILE_MAX bytes or 256 * k lines; -ENOENT when missing.
 */
int sw_dht_table_save(const sw_dht_table_t *t, const char *path);
int sw_dht_table_load(sw_dht_table_t *t, const char *path, uint64_t now_ms);

/* ======================================================================== records */

/* Limits a record is checked against. */
typedef struct {
    uint32_t max_value, max_ttl_s, max_skew_s, max_subkeys;
    uint64_t max_bytes;
} sw_dht_limits_t;

/* Is the subkey an owned one ("peer:" prefix)? Then *owner gets the peer id. A subkey with the
 * prefix but the wrong length is malformed: -1. */
int sw_dht_subkey_owner(const uint8_t *subkey, size_t len, sw_peer_id_t *owner);

/* Signs / verifies (key, subkey, value, expiration) with the owner's key (domain-separated). */
void sw_dht_record_sign(const sw_identity_t *id, const uint8_t *key, size_t key_len, const sw_dht_record_t *r,
                        uint8_t sig[SW_DHT_SIG_LEN]);
/*
 * Every check a record passes before it is stored or handed out: sizes, an expiration after now
 * and at most max_ttl_s + max_skew_s ahead, and for an owned subkey a valid signature of its
 * owner (a signature on a plain subkey is refused too). 0, or SW_EFORMAT / SW_ELIMIT with a detail.
 */
int sw_dht_record_check(const uint8_t *key, size_t key_len, const sw_dht_record_t *r, uint64_t now_ms,
                        const sw_dht_limits_t *lim);

/* One stored subkey. */
typedef struct {
    uint8_t *subkey, *value; /* one allocation: subkey bytes then value bytes */
    uint32_t subkey_len, value_len;
    uint64_t exp_ms;
    uint8_t sig[SW_DHT_SIG_LEN];
    int has_sig;
} sw_dht_entry_t;

typedef struct sw_dht_keyrec {
    struct sw_dht_keyrec *next;
    sw_dht_id_t id;
    uint8_t *key;
    uint32_t key_len, n, cap;
    sw_dht_entry_t *e;
    uint64_t last_store_ms; /* last time someone stored into it (republish skips recently stored keys) */
} sw_dht_keyrec_t;

typedef struct {
    sw_dht_keyrec_t **tab;
    size_t nslots, nkeys, nrecords;
    uint64_t bytes;
    sw_dht_limits_t lim;
} sw_dht_store_t;

int sw_dht_store_init(sw_dht_store_t *s, const sw_dht_limits_t *lim);
void sw_dht_store_free(sw_dht_store_t *s);
/*
 * Stores r under key after sw_dht_record_check. 0: stored (new, or a later expiration replaced an
 * older one); 1: an entry with an equal or later expiration is kept; SW_EFORMAT/SW_ELIMIT when the
 * record is refused (checks, subkeys per key, bytes per node); -ENOMEM.
 */
int sw_dht_store_put(sw_dht_store_t *s, const uint8_t *key, size_t key_len, const sw_dht_record_t *r,
                     uint64_t now_ms);
sw_dht_keyrec_t *sw_dht_store_find(const sw_dht_store_t *s, const uint8_t *key, size_t key_len);
/* Drops every entry expired at now_ms (and keys left empty). Returns the earliest expiration left
 * (UINT64_MAX when none). */
uint64_t sw_dht_store_expire(sw_dht_store_t *s, uint64_t now_ms);

/*
 * Tests and the CLI's --forge-for only: sends the record exactly as given (signature included, no
 * local check, nothing kept here) to the k nodes closest to key, as a misbehaving peer would. Every
 * honest node must refuse it when the signature is not its owner's. Callback as sw_dht_put.
 */
int sw_dht_put_raw(sw_dht_t *dht, const void *key, size_t key_len, const sw_dht_record_t *r, sw_dht_put_cb cb,
                   void *arg);

/* ======================================================================== messages */

/* The calls a node serves, as sw_dht_request_check knows them. */
enum { SW_DHT_REQ_PING, SW_DHT_REQ_FIND_NODE, SW_DHT_REQ_FIND_VALUE, SW_DHT_REQ_STORE, SW_DHT_REQ_NODES,
       SW_DHT_REQ_DIALBACK };

struct Swarmd__Dht__Request;
struct Swarmd__Dht__Response;
/*
 * The checks a decoded message passes before any field is used (the fuzz target runs them on raw
 * bytes): a request's sender address, target, key and record count for its kind; a response's
 * counts (k contacts, max_subkeys records/statuses, SW_DHT_NODES_MAX table entries), contact
 * addresses and record field sizes. 0, or SW_EFORMAT / SW_ELIMIT with a detail. Signatures and
 * expirations are checked later, record by record (sw_dht_record_check).
 */
int sw_dht_request_check(const struct Swarmd__Dht__Request *req, int kind, uint32_t max_subkeys);
int sw_dht_response_check(const struct Swarmd__Dht__Response *r, uint32_t k, uint32_t max_subkeys,
                          uint32_t max_value);

/* ======================================================================== rate limits */

#define SW_DHT_RATE_SLOTS 1024
#define SW_DHT_RATE_KINDS 3

typedef struct {
    sw_peer_id_t peer;
    double tokens[SW_DHT_RATE_KINDS];
    uint64_t last_ms;
    int used;
} sw_dht_rate_slot_t;

typedef struct {
    double rate[SW_DHT_RATE_KINDS], burst[SW_DHT_RATE_KINDS];
    sw_dht_rate_slot_t slot[SW_DHT_RATE_SLOTS];
} sw_dht_rate_t;

enum { SW_DHT_RATE_STORE = 0, SW_DHT_RATE_FIND = 1, SW_DHT_RATE_DIALBACK = 2 };

/* Sets STORE and FIND; DIALBACK starts unlimited until sw_dht_rate_set gives it a rate. */
void sw_dht_rate_init(sw_dht_rate_t *r, double store_rate, double store_burst, double find_rate,
                      double find_burst);
void sw_dht_rate_set(sw_dht_rate_t *r, int kind, double rate, double burst);
/* Takes one token of `kind` for peer: 1 allowed, 0 over the limit. A full table recycles the slot of
 * the peer idle the longest (a new peer starts with a full bucket). */
int sw_dht_rate_take(sw_dht_rate_t *r, const sw_peer_id_t *peer, int kind, uint64_t now_ms);

#endif
