/*
 * fuzz-dht.c - libFuzzer target for the DHT's message decoders (p2p/dht.c, proto/dht.proto) on raw
 * bytes, and everything a node does with a message that passed them.
 *
 * The first input byte picks the path (mod 16), the rest is the message as it arrives in a call's
 * payload:
 *   0..4: a Request for dht.ping / find_node / find_value / store / nodes: size limit,
 *        decode, sw_dht_request_check, then for a store every record through sw_dht_store_put
 *        (sizes, expiration window, owner signatures, per-key and per-node caps);
 *   8:   a Request for dht.dialback: decode, sw_dht_request_check (the address to dial back must be
 *        a valid HOST:PORT even from a client), then the dial target text built as the node does;
 *   other: a Response: decode, sw_dht_response_check, then what a lookup does with it: contacts
 *        parsed into peer ids and ranked against a target, records merged into a get's store,
 *        routing-table entries (dht.nodes) read (a dial-back verdict is two scalars: decoding covers it).
 * The clock is fixed, so a crashing input replays the same way.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dht.pb-c.h"
#include "p2p/dht_internal.h"
#include "p2p/frame.h"
#include "util/alloc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MSG_MAX (2u << 20)
#define NOW_MS 1700000000000ull

static void limits(sw_dht_limits_t *l)
{
    l->max_value = SW_DHT_VALUE_MAX;
    l->max_ttl_s = 86400;
    l->max_skew_s = 60;
    l->max_subkeys = 128;
    l->max_bytes = 1u << 20;
}

static void fuzz_request(int kind, const uint8_t *buf, size_t len)
{
    Swarmd__Dht__Request *req;
    sw_dht_limits_t lim;
    sw_dht_store_t st;

    if (len == 0 || len > MSG_MAX)
        return;
    req = swarmd__dht__request__unpack(&sw_pb_allocator, len, buf);
    if (!req)
        return;
    if (sw_dht_request_check(req, kind, 128) == 0 && kind == SW_DHT_REQ_DIALBACK) {
        char target[SW_PEER_ID_TEXT_MAX + SW_DHT_ADDR_MAX + 2];
        snprintf(target, sizeof(target), "%s@%s", "PEER", req->sender_addr);
        if (strlen(target) >= sizeof(target) - 1)
            abort(); /* sw_dht_addr_ok bounds the address below SW_DHT_ADDR_MAX */
    } else if (sw_dht_request_check(req, kind, 128) == 0 && kind == SW_DHT_REQ_STORE) {
        limits(&lim);
        if (sw_dht_store_init(&st, &lim) == 0) {
            for (size_t i = 0; i < req->n_records; i++) {
                const Swarmd__Dht__Record *x = req->records[i];
                sw_dht_record_t rec = { x->subkey.data, x->subkey.len, x->value.data, x->value.len,
                                        x->expiration_ms, x->signature.len == SW_DHT_SIG_LEN ? x->signature.data : NULL };
                if (x->signature.len != 0 && x->signature.len != SW_DHT_SIG_LEN)
                    continue;
                sw_dht_store_put(&st, req->key.data, req->key.len, &rec, NOW_MS);
            }
            sw_dht_store_expire(&st, NOW_MS + 3600000);
            sw_dht_store_free(&st);
        }
    }
    swarmd__dht__request__free_unpacked(req, &sw_pb_allocator);
}

static void fuzz_response(const uint8_t *buf, size_t len)
{
    static const uint8_t key[] = "model.0";
    Swarmd__Dht__Response *r;
    sw_dht_limits_t lim;
    sw_dht_store_t st;
    sw_dht_id_t target, best, id;
    int have = 0;

    if (len == 0 || len > MSG_MAX)
        return;
    r = swarmd__dht__response__unpack(&sw_pb_allocator, len, buf);
    if (!r)
        return;
    if (sw_dht_response_check(r, SW_DHT_K, 128, SW_DHT_VALUE_MAX) < 0)
        goto out;
    sw_dht_id_of_key(key, sizeof(key) - 1, &target);
    for (size_t i = 0; i < r->n_nodes; i++) {
        sw_peer_id_t p;
        memcpy(p.b, r->nodes[i]->peer_id.data, SW_PEER_ID_LEN);
        sw_dht_id_of_peer(&p, &id);
        if (!have || sw_dht_id_cmp_dist(&target, &id, &best) < 0)
            best = id;
        have = 1;
    }
    for (size_t i = 0; i < r->n_table; i++) {
        sw_peer_id_t p;
        memcpy(p.b, r->table[i]->peer_id.data, SW_PEER_ID_LEN);
        sw_dht_id_of_peer(&p, &id);
        (void)sw_dht_id_cpl(&target, &id);
    }
    limits(&lim);
    lim.max_bytes = UINT64_MAX;
    if (sw_dht_store_init(&st, &lim) == 0) {
        for (size_t i = 0; i < r->n_records; i++) {
            const Swarmd__Dht__Record *x = r->records[i];
            sw_dht_record_t rec = { x->subkey.data, x->subkey.len, x->value.data, x->value.len, x->expiration_ms,
                                    x->signature.len ? x->signature.data : NULL };
            sw_dht_store_put(&st, key, sizeof(key) - 1, &rec, NOW_MS);
        }
        sw_dht_store_free(&st);
    }
out:
    swarmd__dht__response__free_unpacked(r, &sw_pb_allocator);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int mode;

    if (size < 1)
        return 0;
    mode = data[0] & 15;
    if (mode <= SW_DHT_REQ_NODES)
        fuzz_request(mode, data + 1, size - 1);
    else if (mode == 8)
        fuzz_request(SW_DHT_REQ_DIALBACK, data + 1, size - 1);
    else
        fuzz_response(data + 1, size - 1);
    return 0;
}
