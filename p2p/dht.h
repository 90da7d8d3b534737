/*
 * dht.h - a Kademlia DHT over the p2p node's calls: discovery of peers and signed, expiring records.
 *
 * Ids are 256 bits: a node's id is BLAKE2b-256 of its peer id, a key's id BLAKE2b-256 of the key's
 * bytes; distance is XOR. Routing uses k-buckets (k = 20) that prefer long-lived contacts, lookups
 * are iterative with alpha = 3 calls in flight, and records are stored on the k nodes closest to
 * the key's id. A record is key -> {subkey -> (value, expiration)}: each subkey expires on its own,
 * a later expiration replaces an earlier one, expired subkeys are dropped. A subkey "peer:" + the
 * 32-byte peer id of its owner (sw_dht_owned_subkey) can be written only by that peer: the record
 * carries the owner's Ed25519 signature over (key, subkey, value, expiration), checked by every node
 * on store and by every reader on get.
 *
 * Threads: everything runs on the node's loop thread, callbacks included. Callbacks never run
 * before the call that started them returns.
 *
 * Reachability: a node that announces an address nobody can connect to would poison every routing
 * table it enters. With opts.reachability_check, the node asks up to SW_DHT_PROBE_ASK of its contacts
 * ("dht.dialback") to open a fresh connection to its announced address and finish a handshake with
 * its peer id; until one of them succeeds it takes part as a client (its requests say so, so nobody
 * lists it). The check runs at each bootstrap (before the lookup that announces the node) and every
 * reachability_ms; a node none of whose asked peers could reach it stays or becomes a client, and one
 * that becomes reachable turns into a full node again and announces itself.
 *
 * Lifetime: the DHT registers handlers on the node ("dht.ping", "dht.find_node", "dht.find_value",
 * "dht.store", "dht.nodes", "dht.dialback"), and rpc.h has no way to unregister them, so the node must be closed first:
 * sw_p2p_node_close(node, ...) ends every call and connect of the DHT (running puts and gets end
 * with what they have), and from its done callback (or later) sw_dht_close() frees the DHT.
 */
#ifndef SW_P2P_DHT_H
#define SW_P2P_DHT_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "p2p/identity.h"
#include "p2p/rpc.h"

#define SW_DHT_K 20
#define SW_DHT_ALPHA 3
#define SW_DHT_KEY_MAX 256
#define SW_DHT_SUBKEY_MAX 64
#define SW_DHT_VALUE_MAX 8192
#define SW_DHT_SIG_LEN 64
#define SW_DHT_OWNED_PREFIX "peer:"
#define SW_DHT_OWNED_SUBKEY_LEN (5 + SW_PEER_ID_LEN)

typedef struct sw_dht sw_dht_t;

typedef struct {
    /* HOST:PORT where other peers reach this node (put in every request). NULL or "" together with
     * client_mode = 0 is refused. */
    const char *announce_addr;
    /* Query and store but stay out of every routing table; serve no DHT calls, store nothing. */
    int client_mode;
    /* Routing table file: read by sw_dht_new (a missing file is fine, a malformed one is ignored
     * with a warning), written by sw_dht_save_table and sw_dht_close. NULL: none. */
    const char *table_path;
    uint32_t k, alpha;
    uint32_t rpc_timeout_ms;  /* a call not answered by then failed (3000) */
    uint32_t refresh_ms;      /* buckets not looked up for this long are refreshed (600000; 0: never) */
    uint32_t republish_ms;    /* records held are stored again on the k closest (300000; 0: never) */
    uint32_t table_save_ms;   /* the routing table is written to table_path this often (60000; 0: only on close) */
    uint32_t max_ttl_s;       /* expirations further than this (plus max_skew_s) ahead are refused (86400) */
    uint32_t max_skew_s;      /* tolerated clock disagreement (60) */
    uint32_t max_subkeys;     /* subkeys per key (128) */
    uint64_t max_bytes;       /* record bytes this node holds for others (64 MiB) */
    uint32_t max_value;       /* value bytes (SW_DHT_VALUE_MAX, which is also the most it may be) */
    /* Token buckets per peer: requests per second and burst, for STORE and for FIND/PING. */
    uint32_t store_rate, store_burst, find_rate, find_burst;
    /* Automatic client mode (see "Reachability" above; off by default, `swarmd dht serve` turns it on).
     * Ignored with client_mode. */
    int reachability_check;
    uint32_t reachability_ms;     /* the check runs again this often (600000; 0: only at bootstrap) */
    uint32_t dialback_timeout_ms; /* an asked node gives up connecting back after this (5000) */
    uint32_t dialback_per_min;    /* dial-backs one peer may ask of this node a minute, after a burst of 2 (6) */
    /* The swarm key (32 bytes, copied) the dial-back connection uses: the one the node was created
     * with, or NULL for none. Without it a node of a private swarm cannot dial anyone back. */
    const uint8_t *swarm_key;
} sw_dht_opts_t;

void sw_dht_opts_default(sw_dht_opts_t *o);

/* A record as the API hands it out; pointers are valid during the callback only. */
typedef struct {
    const uint8_t *subkey;
    size_t subkey_len;
    const uint8_t *value;
    size_t value_len;
    uint64_t expiration_ms;   /* Unix time, milliseconds */
    const uint8_t *signature; /* SW_DHT_SIG_LEN bytes for owned subkeys, else NULL */
} sw_dht_record_t;

/* What a lookup cost: hops = the longest referral chain (1: a contact of our own table) among the
 * k closest nodes that answered; msgs = calls sent; answered = calls that got an answer.
 * superseded (put only): nodes that answered the store by keeping a copy that expires as late or
 * later (they count in `stored` too, since the record they hold is at least as fresh). */
typedef struct {
    uint32_t hops, msgs, answered, failed, superseded;
} sw_dht_lookup_info_t;

/* status 0 when at least one node (or this node) took the record; stored = how many did. */
typedef void (*sw_dht_put_cb)(int status, uint32_t stored, const sw_dht_lookup_info_t *info, void *arg);
/* status 0 (records may be empty: nothing found), or an error. Records are verified, unexpired, one
 * per subkey (the latest expiration), sorted by subkey. */
typedef void (*sw_dht_get_cb)(int status, const sw_dht_record_t *records, size_t n,
                              const sw_dht_lookup_info_t *info, void *arg);
/* status 0 when at least one initial peer answered; peers = how many did. */
typedef void (*sw_dht_bootstrap_cb)(int status, uint32_t peers, void *arg);

/*
 * Creates a DHT on node (which must use `loop` and identity `id`; both must outlive the DHT).
 * Registers its handlers (unless in client mode), loads the routing table file, starts its timers.
 * Free with sw_dht_close() after closing the node (see above).
 */
int sw_dht_new(uv_loop_t *loop, sw_p2p_node_t *node, const sw_identity_t *id, const sw_dht_opts_t *opts,
               sw_dht_t **out);

/* Frees the DHT: saves the routing table (when a path is set), stops timers, drops records. The node
 * must be closing or closed. done (may be NULL) runs once the loop has closed its timers. */
void sw_dht_close(sw_dht_t *dht, void (*done)(void *arg), void *arg);

/* Pings every address (PEERID@HOST:PORT, or HOST:PORT to learn the id) and then looks up this
 * node's own id to fill the buckets. An empty list is fine for the first node of a swarm (cb gets
 * status 0 and peers 0). Addresses are copied. */
int sw_dht_bootstrap(sw_dht_t *dht, const char *const *addrs, size_t n, sw_dht_bootstrap_cb cb, void *arg);

/*
 * Stores (key, subkey) -> (value, expiration_ms) on the k nodes closest to the key, and keeps it for
 * republishing until it expires. An owned subkey must be this node's own (it is signed here);
 * SW_EUSAGE for another peer's. Sizes: key 1..SW_DHT_KEY_MAX, subkey 0..SW_DHT_SUBKEY_MAX, value up to
 * opts.max_value; the expiration must lie in the future and within max_ttl_s. All buffers are
 * copied. Returns 0 and later calls cb, or an error and never calls it.
 */
int sw_dht_put(sw_dht_t *dht, const void *key, size_t key_len, const void *subkey, size_t subkey_len,
               const void *value, size_t value_len, uint64_t expiration_ms, sw_dht_put_cb cb, void *arg);

/* Looks the key up on the k closest nodes (and this node), merging their subkeys. */
int sw_dht_get(sw_dht_t *dht, const void *key, size_t key_len, sw_dht_get_cb cb, void *arg);

/*
 * Pings the DHT node at addr (PEERID@HOST:PORT, or HOST:PORT to learn its id). cb gets status 0, the
 * peer's proven id, the round-trip time of the call (connecting and the handshake included when no
 * connection was open) and the peer's clock minus ours (ms, corrected by half the RTT). addr is
 * copied. Returns 0 and later calls cb once, or an error and never calls it.
 */
typedef void (*sw_dht_ping_cb)(int status, const sw_peer_id_t *peer, double rtt_ms, int64_t clock_offset_ms,
                               void *arg);
int sw_dht_ping(sw_dht_t *dht, const char *addr, sw_dht_ping_cb cb, void *arg);

/*
 * Asks the DHT node at addr for its routing table ("dht.nodes", a debugging call rate-limited like
 * FIND). cb gets up to SW_DHT_NODES_MAX contacts, valid during the callback only, and `total`, the
 * size of the peer's table. Returns 0 and later calls cb once, or an error and never calls it.
 */
#define SW_DHT_NODES_MAX 1024
typedef struct {
    sw_peer_id_t peer;
    const char *addr;
    uint32_t bucket;  /* leading bits its id shares with the answering node's id */
    uint64_t age_ms;  /* since that node last heard from it */
    uint32_t fails;   /* consecutive failed calls */
} sw_dht_node_info_t;
typedef void (*sw_dht_nodes_cb)(int status, const sw_peer_id_t *peer, const sw_dht_node_info_t *nodes, size_t n,
                                size_t total, void *arg);
int sw_dht_nodes(sw_dht_t *dht, const char *addr, sw_dht_nodes_cb cb, void *arg);

/*
 * Reachability (opts.reachability_check). sw_dht_reachability: SW_DHT_REACH_UNKNOWN before the first
 * check finished (or without the option: SW_DHT_REACH_YES unless client_mode), YES, or NO.
 * sw_dht_is_client: the node acts as a client now (client_mode, or the check found it unreachable or
 * has not finished). sw_dht_check_reachability runs the check now (even without the option): cb gets
 * status 0 when at least one peer answered, `yes` and `no`, the peers that could / could not reach
 * it, and the state after the check; SW_ESTATE when a check is running already or the node is in
 * forced client mode. Returns 0 and later calls cb (may be NULL) once, or an error.
 */
enum { SW_DHT_REACH_UNKNOWN = 0, SW_DHT_REACH_YES = 1, SW_DHT_REACH_NO = 2 };
#define SW_DHT_PROBE_ASK 3
typedef void (*sw_dht_reach_cb)(int status, uint32_t yes, uint32_t no, int reach, void *arg);
int sw_dht_reachability(const sw_dht_t *dht);
int sw_dht_is_client(const sw_dht_t *dht);
int sw_dht_check_reachability(sw_dht_t *dht, sw_dht_reach_cb cb, void *arg);

/* Writes the owned subkey of `peer` ("peer:" + its 32 bytes) into out. */
void sw_dht_owned_subkey(const sw_peer_id_t *peer, uint8_t out[SW_DHT_OWNED_SUBKEY_LEN]);

/* Unix time in milliseconds (the clock of every expiration). */
uint64_t sw_dht_now_ms(void);

/* Runs the periodic jobs now (tests, and the CLI): refresh every stale bucket / republish every
 * record this node holds or published. */
void sw_dht_refresh_now(sw_dht_t *dht);
void sw_dht_republish_now(sw_dht_t *dht);
/* Lookups, puts and gets still running (tests wait for 0 after sw_dht_republish_now). */
uint32_t sw_dht_pending(const sw_dht_t *dht);

/* Writes the routing table to opts.table_path (atomically: a temporary file, then rename). */
int sw_dht_save_table(sw_dht_t *dht);

/* Contacts in the routing table; out (may be NULL) gets up to cap peer ids. */
size_t sw_dht_table_peers(const sw_dht_t *dht, sw_peer_id_t *out, size_t cap);

typedef struct {
    uint64_t rpcs_sent, rpcs_failed;           /* outgoing calls */
    uint64_t requests, refused, rate_limited;  /* incoming calls; refused = malformed or over a limit */
    uint64_t records_stored, records_rejected; /* incoming records (rejected: bad signature, size...) */
    uint64_t lookups, lookup_msgs, lookup_hops;
    uint64_t records_held, bytes_held;         /* now */
    uint64_t dialbacks, dialbacks_ok;          /* dial-backs done for others, and those that connected */
    uint64_t probes;                           /* reachability checks this node ran */
} sw_dht_stats_t;
void sw_dht_stats(const sw_dht_t *dht, sw_dht_stats_t *out);

#endif
