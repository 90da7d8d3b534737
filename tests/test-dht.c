/*
 * test-dht.c - the DHT: ids and XOR distance, k-buckets and their eviction rule, routing table
 * save/load, record rules (expiry, later expiration wins, sizes, caps), owner signatures, rate
 * limits; then nodes with real sockets on one loop over loopback: three nodes storing and getting
 * with expiry and overwrite, forged records refused at every node and by readers, garbage,
 * oversized and flooding requests refused while the node keeps serving, and a swarm (200 nodes by
 * default, SW_DHT_N to change) where every sampled node finds records stored by others within
 * ~log2(N) hops, and still finds them after 30% of the nodes are killed and a republish round.
 * Also dht.ping and dht.nodes between nodes, and the reachability check: a node announcing an address
 * nobody listens on turns client and enters no routing table, a reachable one stays a full node, a
 * node that becomes reachable turns full again; dial-back requests are rate-limited and dial only
 * the asker's own peer id.
 * Every wait is bounded by a deadline.
 */
#include <math.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <sodium.h>
#include <uv.h>

#include "dht.pb-c.h"
#include "p2p/dht.h"
#include "p2p/dht_internal.h"
#include "p2p/identity.h"
#include "p2p/rpc.h"
#include "test.h"
#include "util/error.h"
#include "util/log.h"

#define WAIT_MS 20000

static unsigned long long rng = 0x9e3779b97f4a7c15ull;

static void peer_random(sw_peer_id_t *p)
{
    for (int i = 0; i < SW_PEER_ID_LEN; i += 8) {
        unsigned long long v = sw_test_rand_u64(&rng);
        memcpy(p->b + i, &v, 8);
    }
}

static sw_dht_limits_t test_limits(void)
{
    sw_dht_limits_t l = { .max_value = 8192, .max_ttl_s = 3600, .max_skew_s = 60, .max_subkeys = 4,
                          .max_bytes = 1u << 20 };
    return l;
}

/* ======================================================================== units */

static void test_ids(void)
{
    sw_dht_id_t a, b, t, x;

    memset(a.b, 0, 32);
    b = a;
    SW_CHECK(sw_dht_id_cpl(&a, &b) == 256);
    b.b[0] = 0x80;
    SW_CHECK(sw_dht_id_cpl(&a, &b) == 0);
    b.b[0] = 0;
    b.b[3] = 0x10;
    SW_CHECK(sw_dht_id_cpl(&a, &b) == 27);
    /* distance: b (x ^ 0x10 in byte 3) is closer to a than something differing in byte 2 */
    x = a;
    x.b[2] = 1;
    SW_CHECK(sw_dht_id_cmp_dist(&a, &b, &x) < 0);
    SW_CHECK(sw_dht_id_cmp_dist(&a, &x, &b) > 0);
    SW_CHECK(sw_dht_id_cmp_dist(&a, &b, &b) == 0);
    for (int i = 0; i < 256; i++) {
        randombytes_buf(t.b, 32);
        sw_dht_id_random_in_bucket(&t, i, &x);
        SW_CHECKF(sw_dht_id_cpl(&t, &x) == i, "bucket %d got cpl %d", i, sw_dht_id_cpl(&t, &x));
    }
    /* node ids are BLAKE2b-256 of the peer id */
    {
        sw_peer_id_t p;
        uint8_t h[32];
        peer_random(&p);
        sw_dht_id_of_peer(&p, &a);
        crypto_generichash(h, 32, p.b, 32, NULL, 0);
        SW_CHECK(memcmp(h, a.b, 32) == 0);
    }
    SW_CHECK(sw_dht_addr_ok("127.0.0.1:5"));
    SW_CHECK(sw_dht_addr_ok("[::1]:5"));
    SW_CHECK(!sw_dht_addr_ok("127.0.0.1:0"));
    SW_CHECK(!sw_dht_addr_ok("nonsense"));
    SW_CHECK(!sw_dht_addr_ok(""));
}

/* Random peers whose id falls in bucket 0 of a table whose own id is self. */
static void peer_in_bucket0(const sw_dht_id_t *self, sw_peer_id_t *p)
{
    sw_dht_id_t id;

    do {
        peer_random(p);
        sw_dht_id_of_peer(p, &id);
    } while (sw_dht_id_cpl(self, &id) != 0);
}

static void test_buckets(void)
{
    sw_dht_table_t t;
    sw_dht_id_t self;
    sw_peer_id_t p[24];
    sw_dht_contact_t head;
    long live0 = sw_alloc_live();

    randombytes_buf(self.b, 32);
    sw_dht_table_init(&t, &self, 20);
    for (int i = 0; i < 24; i++)
        peer_in_bucket0(&self, &p[i]);
    for (int i = 0; i < 20; i++)
        SW_CHECK(sw_dht_table_update(&t, &p[i], "127.0.0.1:1000", 100 + i, &head) == SW_DHT_T_ADDED);
    SW_CHECK(t.count == 20 && t.b[0].n == 20);
    /* seen again: moves to the tail */
    SW_CHECK(sw_dht_table_update(&t, &p[0], "127.0.0.1:1001", 200, &head) == SW_DHT_T_UPDATED);
    SW_CHECK(sw_peer_id_eq(&t.b[0].c[19].peer, &p[0]));
    SW_CHECK(strcmp(t.b[0].c[19].addr, "127.0.0.1:1001") == 0);
    /* full: the least recently seen (p[1]) is to be pinged, the newcomer waits */
    SW_CHECK(sw_dht_table_update(&t, &p[20], "127.0.0.1:1020", 300, &head) == SW_DHT_T_PING);
    SW_CHECK(sw_peer_id_eq(&head.peer, &p[1]));
    SW_CHECK(sw_dht_table_update(&t, &p[21], "127.0.0.1:1021", 301, &head) == SW_DHT_T_CACHED);
    SW_CHECK(t.b[0].nrepl == 2);
    /* it answers: it stays (long-lived contacts win), moved to the tail */
    sw_dht_table_ping_result(&t, &p[1], 1, 400);
    SW_CHECK(sw_dht_table_find(&t, &p[1]) != NULL);
    SW_CHECK(sw_dht_table_find(&t, &p[20]) == NULL && sw_dht_table_find(&t, &p[21]) == NULL);
    SW_CHECK(sw_peer_id_eq(&t.b[0].c[19].peer, &p[1]));
    /* next newcomer: p[2] is now the head; it does not answer: replaced by the newest cached */
    SW_CHECK(sw_dht_table_update(&t, &p[22], "127.0.0.1:1022", 500, &head) == SW_DHT_T_PING);
    SW_CHECK(sw_peer_id_eq(&head.peer, &p[2]));
    sw_dht_table_ping_result(&t, &p[2], 0, 600);
    SW_CHECK(sw_dht_table_find(&t, &p[2]) == NULL);
    SW_CHECK(sw_dht_table_find(&t, &p[22]) != NULL);
    SW_CHECK(t.count == 20);
    /* failed calls: SW_DHT_MAX_FAILS in a row remove a contact, the cache refills the bucket */
    sw_dht_table_fail(&t, &p[3]);
    SW_CHECK(sw_dht_table_find(&t, &p[3]) != NULL);
    sw_dht_table_fail(&t, &p[3]);
    SW_CHECK(sw_dht_table_find(&t, &p[3]) == NULL);
    SW_CHECK(t.count == 20);
    /* our own id is never stored */
    {
        sw_identity_t me;
        sw_dht_table_t t2;
        sw_identity_generate(&me);
        sw_dht_id_of_peer(&me.id, &self);
        sw_dht_table_init(&t2, &self, 20);
        SW_CHECK(sw_dht_table_update(&t2, &me.id, "127.0.0.1:1", 1, NULL) == SW_DHT_T_SELF);
        sw_dht_table_free(&t2);
    }
    sw_dht_table_free(&t);
    SW_CHECK(sw_alloc_live() == live0);
}

static void test_closest(void)
{
    sw_dht_table_t t;
    sw_dht_id_t self, target;
    sw_dht_contact_t out[20], all[2000];
    size_t n, na = 0;

    randombytes_buf(self.b, 32);
    sw_dht_table_init(&t, &self, 20);
    for (int i = 0; i < 2000; i++) {
        sw_peer_id_t p;
        peer_random(&p);
        sw_dht_table_update(&t, &p, "127.0.0.1:9", 1, NULL);
        for (int b = 0; b < 256; b++)
            t.b[b].pinging = 0;
    }
    for (int b = 0; b < 256; b++)
        for (uint32_t i = 0; i < t.b[b].n; i++)
            all[na++] = t.b[b].c[i];
    SW_CHECK(na == t.count && na > 100);
    for (int r = 0; r < 20; r++) {
        randombytes_buf(target.b, 32);
        n = sw_dht_table_closest(&t, &target, out, 20);
        SW_CHECK(n == 20);
        for (size_t i = 1; i < n; i++)
            SW_CHECK(sw_dht_id_cmp_dist(&target, &out[i - 1].id, &out[i].id) < 0);
        /* nothing in the table is closer than the 20th without being in out */
        for (size_t i = 0; i < na; i++) {
            if (sw_dht_id_cmp_dist(&target, &all[i].id, &out[19].id) <= 0) {
                int found = 0;
                for (size_t j = 0; j < n; j++)
                    found |= sw_peer_id_eq(&out[j].peer, &all[i].peer);
                SW_CHECK(found);
            }
        }
    }
    sw_dht_table_free(&t);
}

static void test_save_load(void)
{
    char path[] = "/tmp/test-dht-XXXXXX";
    int fd = mkstemp(path);
    sw_dht_table_t t, u;
    sw_dht_id_t self;
    FILE *f;

    SW_CHECK(fd >= 0);
    close(fd);
    randombytes_buf(self.b, 32);
    sw_dht_table_init(&t, &self, 20);
    for (int i = 0; i < 50; i++) {
        sw_peer_id_t p;
        char addr[32];
        peer_random(&p);
        snprintf(addr, sizeof(addr), "127.0.0.1:%d", 2000 + i);
        sw_dht_table_update(&t, &p, addr, 1, NULL);
    }
    SW_CHECK_OK(sw_dht_table_save(&t, path));
    sw_dht_table_init(&u, &self, 20);
    SW_CHECK_OK(sw_dht_table_load(&u, path, 5));
    SW_CHECK(u.count == t.count);
    for (int b = 0; b < 256; b++)
        for (uint32_t i = 0; i < t.b[b].n; i++) {
            const sw_dht_contact_t *c = sw_dht_table_find(&u, &t.b[b].c[i].peer);
            SW_CHECK(c && strcmp(c->addr, t.b[b].c[i].addr) == 0);
        }
    sw_dht_table_free(&u);
    /* a malformed line: the whole file is refused, nothing is added */
    f = fopen(path, "a");
    fprintf(f, "notapeer 127.0.0.1:1\n");
    fclose(f);
    sw_dht_table_init(&u, &self, 20);
    SW_CHECK(sw_dht_table_load(&u, path, 5) == SW_EFORMAT);
    SW_CHECK(u.count == 0);
    /* a wrong header, an address with a peer id, a missing file, an oversized file */
    f = fopen(path, "w");
    fprintf(f, "something else\n");
    fclose(f);
    SW_CHECK(sw_dht_table_load(&u, path, 5) == SW_EFORMAT);
    {
        char id[SW_PEER_ID_TEXT_MAX];
        sw_peer_id_t p;
        peer_random(&p);
        sw_peer_id_text(&p, id);
        f = fopen(path, "w");
        fprintf(f, "swarmd-dht-table 1\n%s %s@127.0.0.1:5\n", id, id);
        fclose(f);
        SW_CHECK(sw_dht_table_load(&u, path, 5) == SW_EFORMAT);
        f = fopen(path, "w");
        fprintf(f, "swarmd-dht-table 1\n");
        for (int i = 0; i < 6000; i++)
            fprintf(f, "%s 127.0.0.1:5\n", id);
        fclose(f);
        SW_CHECK(sw_dht_table_load(&u, path, 5) == SW_ELIMIT);
    }
    SW_CHECK(u.count == 0);
    unlink(path);
    SW_CHECK(sw_dht_table_load(&u, path, 5) == -ENOENT);
    sw_dht_table_free(&u);
    sw_dht_table_free(&t);
}

static void test_records(void)
{
    sw_dht_limits_t lim = test_limits();
    sw_dht_store_t s;
    const uint64_t now = 1700000000000ull;
    const uint8_t key[] = "model.7";
    sw_dht_record_t r = { (const uint8_t *)"a", 1, (const uint8_t *)"v1", 2, now + 10000, NULL };
    sw_dht_keyrec_t *k;
    uint8_t big[9000];
    long live0 = sw_alloc_live();

    SW_CHECK_OK(sw_dht_store_init(&s, &lim));
    SW_CHECK(sw_dht_store_put(&s, key, 7, &r, now) == 0);
    /* an earlier or equal expiration loses; a later one wins */
    r.value = (const uint8_t *)"v0";
    r.expiration_ms = now + 5000;
    SW_CHECK(sw_dht_store_put(&s, key, 7, &r, now) == 1);
    r.expiration_ms = now + 10000;
    SW_CHECK(sw_dht_store_put(&s, key, 7, &r, now) == 1);
    k = sw_dht_store_find(&s, key, 7);
    SW_CHECK(k && k->n == 1 && memcmp(k->e[0].value, "v1", 2) == 0);
    r.value = (const uint8_t *)"v2";
    r.expiration_ms = now + 20000;
    SW_CHECK(sw_dht_store_put(&s, key, 7, &r, now) == 0);
    SW_CHECK(k->n == 1 && memcmp(k->e[0].value, "v2", 2) == 0 && k->e[0].exp_ms == now + 20000);
    /* expired, or absurdly far ahead (clocks may differ by max_skew_s, no more) */
    r.expiration_ms = now;
    SW_CHECK(sw_dht_store_put(&s, key, 7, &r, now) == SW_EFORMAT);
    r.expiration_ms = now + (3600 + 60) * 1000ull;
    SW_CHECK(sw_dht_store_put(&s, key, 7, &r, now) == 0); /* max_ttl_s + max_skew_s ahead: accepted */
    r.expiration_ms = now + (3600 + 61) * 1000ull;
    SW_CHECK(sw_dht_store_put(&s, key, 7, &r, now) == SW_EFORMAT);
    /* sizes */
    memset(big, 'x', sizeof(big));
    r.expiration_ms = now + 1000;
    r.value = big;
    r.value_len = 8193;
    SW_CHECK(sw_dht_store_put(&s, key, 7, &r, now) == SW_ELIMIT);
    r.value_len = 2;
    r.subkey = big;
    r.subkey_len = 65;
    SW_CHECK(sw_dht_store_put(&s, key, 7, &r, now) == SW_ELIMIT);
    r.subkey_len = 1;
    SW_CHECK(sw_dht_store_put(&s, big, 257, &r, now) == SW_ELIMIT);
    SW_CHECK(sw_dht_store_put(&s, big, 0, &r, now) == SW_ELIMIT);
    /* subkeys per key: 4 */
    for (int i = 0; i < 3; i++) {
        uint8_t sk = (uint8_t)('b' + i);
        sw_dht_record_t q = { &sk, 1, (const uint8_t *)"v", 1, now + 1000 + (uint64_t)i, NULL };
        SW_CHECK(sw_dht_store_put(&s, key, 7, &q, now) == 0);
    }
    {
        sw_dht_record_t q = { (const uint8_t *)"z", 1, (const uint8_t *)"v", 1, now + 1000, NULL };
        SW_CHECK(sw_dht_store_put(&s, key, 7, &q, now) == SW_ELIMIT);
    }
    SW_CHECK(s.nrecords == 4);
    /* expiry drops what is due and reports the next expiration */
    SW_CHECK(sw_dht_store_expire(&s, now + 1000) == now + 1001);
    SW_CHECK(s.nrecords == 3);
    SW_CHECK(sw_dht_store_expire(&s, now + 3661000) == UINT64_MAX);
    SW_CHECK(s.nrecords == 0 && s.nkeys == 0 && s.bytes == 0);
    /* bytes per node */
    for (int i = 0; i < 400; i++) {
        char kk[16];
        sw_dht_record_t q = { NULL, 0, big, 8192, now + 1000, NULL };
        snprintf(kk, sizeof(kk), "k%d", i);
        int rc = sw_dht_store_put(&s, (const uint8_t *)kk, strlen(kk), &q, now);
        if (rc == SW_ELIMIT)
            break;
        SW_CHECK(rc == 0);
    }
    SW_CHECK(s.bytes <= lim.max_bytes && s.bytes > lim.max_bytes - 9000);
    sw_dht_store_free(&s);
    SW_CHECK(sw_alloc_live() == live0);
}

static void test_signatures(void)
{
    sw_dht_limits_t lim = test_limits();
    sw_identity_t owner, other;
    uint8_t sk[SW_DHT_OWNED_SUBKEY_LEN], sig[64], bad[64];
    const uint64_t now = sw_dht_now_ms();
    const uint8_t key[] = "model.3";
    sw_dht_record_t r;

    sw_identity_generate(&owner);
    sw_identity_generate(&other);
    sw_dht_owned_subkey(&owner.id, sk);
    r = (sw_dht_record_t){ sk, sizeof(sk), (const uint8_t *)"span 3:7", 8, now + 60000, NULL };
    SW_CHECK(sw_dht_record_check(key, 7, &r, now, &lim) == SW_EFORMAT); /* unsigned */
    sw_dht_record_sign(&owner, key, 7, &r, sig);
    r.signature = sig;
    SW_CHECK_OK(sw_dht_record_check(key, 7, &r, now, &lim));
    /* signed by someone else */
    sw_dht_record_sign(&other, key, 7, &r, bad);
    r.signature = bad;
    SW_CHECK(sw_dht_record_check(key, 7, &r, now, &lim) == SW_EFORMAT);
    /* any field changed after signing */
    r.signature = sig;
    r.value = (const uint8_t *)"span 0:9";
    SW_CHECK(sw_dht_record_check(key, 7, &r, now, &lim) == SW_EFORMAT);
    r.value = (const uint8_t *)"span 3:7";
    r.expiration_ms++;
    SW_CHECK(sw_dht_record_check(key, 7, &r, now, &lim) == SW_EFORMAT);
    r.expiration_ms--;
    SW_CHECK(sw_dht_record_check((const uint8_t *)"model.4", 7, &r, now, &lim) == SW_EFORMAT);
    SW_CHECK_OK(sw_dht_record_check(key, 7, &r, now, &lim));
    /* a malformed owned subkey, a signature on a plain subkey */
    r.subkey_len = sizeof(sk) - 1;
    SW_CHECK(sw_dht_record_check(key, 7, &r, now, &lim) == SW_EFORMAT);
    r.subkey = (const uint8_t *)"plain";
    r.subkey_len = 5;
    SW_CHECK(sw_dht_record_check(key, 7, &r, now, &lim) == SW_EFORMAT);
    r.signature = NULL;
    SW_CHECK_OK(sw_dht_record_check(key, 7, &r, now, &lim));
}

static void test_rate(void)
{
    static sw_dht_rate_t r;
    sw_peer_id_t a, b;
    int ok = 0;

    peer_random(&a);
    peer_random(&b);
    sw_dht_rate_init(&r, 10, 20, 100, 100);
    for (int i = 0; i < 50; i++)
        ok += sw_dht_rate_take(&r, &a, SW_DHT_RATE_STORE, 1000);
    SW_CHECK(ok == 20);
    /* another peer, and another kind, are not affected */
    SW_CHECK(sw_dht_rate_take(&r, &b, SW_DHT_RATE_STORE, 1000));
    SW_CHECK(sw_dht_rate_take(&r, &a, SW_DHT_RATE_FIND, 1000));
    /* 10 per second come back */
    ok = 0;
    for (int i = 0; i < 50; i++)
        ok += sw_dht_rate_take(&r, &a, SW_DHT_RATE_STORE, 2000);
    SW_CHECK(ok == 10);
    /* many distinct peers recycle slots without growing */
    for (int i = 0; i < 5000; i++) {
        sw_peer_id_t p;
        peer_random(&p);
        SW_CHECK(sw_dht_rate_take(&r, &p, SW_DHT_RATE_FIND, 3000));
    }
}

/* ======================================================================== nodes on loopback */

static void tick_cb(uv_timer_t *t) { (void)t; }

/* Runs the loop until *flag is non-zero or ms pass; returns *flag. */
static int run_until(uv_loop_t *loop, const int *flag, uint64_t ms)
{
    uv_timer_t tick;
    uint64_t end = uv_hrtime() + ms * 1000000ull;

    uv_timer_init(loop, &tick);
    uv_timer_start(&tick, tick_cb, 20, 20);
    while (!*flag && uv_hrtime() < end)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return *flag;
}

static void run_for(uv_loop_t *loop, uint64_t ms)
{
    int never = 0;
    run_until(loop, &never, ms);
}

typedef struct {
    sw_identity_t id;
    sw_p2p_node_t *node;
    sw_dht_t *dht;
    int port, alive, closed;
    char addr[64], full[128];
    char announce[64]; /* set before node_start to announce something else than addr */
} tnode_t;

typedef struct {
    uv_loop_t loop;
    tnode_t *n;
    int count;
    long live0;
} swarm_t;

static void limits_for_swarm(sw_p2p_limits_t *l)
{
    sw_p2p_limits_default(l);
    l->max_conns = 4096;
    l->max_conns_per_addr = 4096; /* every peer is 127.0.0.1 */
    l->max_header = 16 << 10;
    l->keepalive_ms = 0;          /* idle connections close after idle_timeout_ms */
    l->idle_timeout_ms = 4000;
}

static int node_start(swarm_t *s, int i, const sw_dht_opts_t *base)
{
    tnode_t *t = &s->n[i];
    sw_p2p_limits_t lim;
    sw_dht_opts_t o = *base;
    uint8_t seed[32] = { 0 };
    char pid[SW_PEER_ID_TEXT_MAX];
    int r;

    memcpy(seed, &i, sizeof(i));
    seed[31] = 0xd7;
    sw_identity_from_seed(seed, &t->id);
    limits_for_swarm(&lim);
    if ((r = sw_p2p_node_new(&s->loop, &t->id, NULL, &lim, &t->node)) < 0)
        return r;
    if ((r = sw_p2p_node_listen(t->node, "127.0.0.1", 0, &t->port)) < 0)
        return r;
    snprintf(t->addr, sizeof(t->addr), "127.0.0.1:%d", t->port);
    sw_peer_id_text(&t->id.id, pid);
    snprintf(t->full, sizeof(t->full), "%s@%s", pid, t->addr);
    o.announce_addr = o.client_mode ? NULL : t->announce[0] ? t->announce : t->addr;
    if ((r = sw_dht_new(&s->loop, t->node, &t->id, &o, &t->dht)) < 0)
        return r;
    t->alive = 1;
    return 0;
}

static void dht_closed(void *arg) { ((tnode_t *)arg)->closed = 1; }

static void node_closed(void *arg)
{
    tnode_t *t = arg;
    sw_dht_close(t->dht, dht_closed, t);
}

/* Kills a node without warning: its sockets close, its DHT goes with it. */
static void node_kill(tnode_t *t)
{
    if (!t->alive)
        return;
    t->alive = 0;
    sw_p2p_node_close(t->node, node_closed, t);
}

static int swarm_init(swarm_t *s, int count)
{
    memset(s, 0, sizeof(*s));
    s->live0 = sw_alloc_live();
    uv_loop_init(&s->loop);
    s->n = calloc((size_t)count, sizeof(*s->n));
    s->count = count;
    return s->n ? 0 : -ENOMEM;
}

static long swarm_free(swarm_t *s)
{
    for (int i = 0; i < s->count; i++)
        node_kill(&s->n[i]);
    for (int i = 0; i < s->count; i++)
        if (s->n[i].node)
            run_until(&s->loop, &s->n[i].closed, WAIT_MS);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    uv_loop_close(&s->loop);
    free(s->n);
    return sw_alloc_live() - s->live0;
}

/* ---- callbacks that record results ---- */

typedef struct {
    int done, status;
    uint32_t n;
    sw_dht_lookup_info_t info;
    int found;            /* get: the wanted subkey was there */
    char value[64];       /* get: its value */
    const char *want_subkey;
    size_t want_len;
    int forged_seen;
} res_t;

static void boot_cb(int status, uint32_t peers, void *arg)
{
    res_t *r = arg;
    r->status = status;
    r->n = peers;
    r->done = 1;
}

static void put_cb(int status, uint32_t stored, const sw_dht_lookup_info_t *info, void *arg)
{
    res_t *r = arg;
    r->status = status;
    r->n = stored;
    r->info = *info;
    r->done = 1;
}

static void get_cb(int status, const sw_dht_record_t *recs, size_t n, const sw_dht_lookup_info_t *info, void *arg)
{
    res_t *r = arg;

    r->status = status;
    r->n = (uint32_t)n;
    r->info = *info;
    r->found = 0;
    for (size_t i = 0; i < n; i++) {
        if (recs[i].value_len >= 6 && memcmp(recs[i].value, "forged", 6) == 0)
            r->forged_seen = 1;
        if (r->want_subkey && recs[i].subkey_len == r->want_len &&
            memcmp(recs[i].subkey, r->want_subkey, r->want_len) == 0) {
            r->found = 1;
            snprintf(r->value, sizeof(r->value), "%.*s", (int)recs[i].value_len, (const char *)recs[i].value);
        }
    }
    r->done = 1;
}

static int do_get(swarm_t *s, int i, const char *key, const char *subkey, size_t sklen, res_t *r)
{
    memset(r, 0, sizeof(*r));
    r->want_subkey = subkey;
    r->want_len = sklen;
    if (sw_dht_get(s->n[i].dht, key, strlen(key), get_cb, r) < 0)
        return -1;
    return run_until(&s->loop, &r->done, WAIT_MS) ? 0 : -ETIMEDOUT;
}

static int do_put(swarm_t *s, int i, const char *key, const void *sk, size_t sklen, const char *value,
                  uint64_t exp, res_t *r)
{
    int rc;
    memset(r, 0, sizeof(*r));
    rc = sw_dht_put(s->n[i].dht, key, strlen(key), sk, sklen, value, strlen(value), exp, put_cb, r);
    if (rc < 0)
        return rc;
    return run_until(&s->loop, &r->done, WAIT_MS) ? 0 : -ETIMEDOUT;
}

/* A swarm of `count` slots with the first `start` nodes joined one after another. */
static int small_swarm_n(swarm_t *s, int count, int start, const sw_dht_opts_t *o)
{
    res_t r;
    int rc;

    if ((rc = swarm_init(s, count)) < 0)
        return rc;
    for (int i = 0; i < start; i++) {
        if ((rc = node_start(s, i, o)) < 0)
            return rc;
        memset(&r, 0, sizeof(r));
        {
            const char *boot = s->n[0].full;
            if ((rc = sw_dht_bootstrap(s->n[i].dht, &boot, i ? 1 : 0, boot_cb, &r)) < 0)
                return rc;
        }
        if (!run_until(&s->loop, &r.done, WAIT_MS))
            return -ETIMEDOUT;
        if (r.status < 0)
            return r.status;
    }
    return 0;
}

static int small_swarm(swarm_t *s, int count, const sw_dht_opts_t *o)
{
    return small_swarm_n(s, count, count, o);
}

static void test_three_nodes(void)
{
    swarm_t s;
    sw_dht_opts_t o;
    res_t r;
    uint64_t now = sw_dht_now_ms();

    sw_dht_opts_default(&o);
    SW_CHECK_OK(small_swarm(&s, 3, &o));
    /* each node knows the two others */
    for (int i = 0; i < 3; i++)
        SW_CHECKF(sw_dht_table_peers(s.n[i].dht, NULL, 0) == 2, "node %d knows %zu", i,
                  sw_dht_table_peers(s.n[i].dht, NULL, 0));
    SW_CHECK_OK(do_put(&s, 0, "model.0", "x", 1, "v1", now + 30000, &r));
    SW_CHECK(r.status == 0 && r.n == 3); /* two others and itself */
    SW_CHECK_OK(do_get(&s, 2, "model.0", "x", 1, &r));
    SW_CHECK(r.status == 0 && r.found && strcmp(r.value, "v1") == 0);
    /* a later expiration overwrites, from another node */
    SW_CHECK_OK(do_put(&s, 1, "model.0", "x", 1, "v2", now + 40000, &r));
    SW_CHECK_OK(do_get(&s, 0, "model.0", "x", 1, &r));
    SW_CHECK(r.found && strcmp(r.value, "v2") == 0);
    /* an earlier one does not */
    SW_CHECK_OK(do_put(&s, 2, "model.0", "x", 1, "v0", now + 35000, &r));
    for (int i = 0; i < 3; i++) {
        SW_CHECK_OK(do_get(&s, i, "model.0", "x", 1, &r));
        SW_CHECKF(r.found && strcmp(r.value, "v2") == 0, "node %d sees %s", i, r.value);
    }
    /* subkeys live side by side; a short-lived one expires everywhere */
    SW_CHECK_OK(do_put(&s, 2, "model.0", "short", 5, "s", sw_dht_now_ms() + 1200, &r));
    SW_CHECK_OK(do_get(&s, 0, "model.0", "short", 5, &r));
    SW_CHECK(r.found && r.n == 2);
    run_for(&s.loop, 2300); /* past its expiration and the next expiry tick */
    for (int i = 0; i < 3; i++) {
        sw_dht_stats_t st;
        SW_CHECK_OK(do_get(&s, i, "model.0", "short", 5, &r));
        SW_CHECK(!r.found && r.n == 1);
        sw_dht_stats(s.n[i].dht, &st);
        SW_CHECKF(st.records_held == 1, "node %d holds %llu", i, (unsigned long long)st.records_held);
    }
    /* a missing key: status 0, nothing */
    SW_CHECK_OK(do_get(&s, 1, "model.404", "x", 1, &r));
    SW_CHECK(r.status == 0 && r.n == 0);
    SW_CHECK(swarm_free(&s) == 0);
}

/* ---- raw calls: a hostile peer talking to a node directly ---- */

typedef struct {
    int done, status, connected;
    sw_p2p_conn_t *conn;
    uint8_t *resp;
    size_t resp_len;
} raw_t;

static void raw_msg(sw_p2p_call_t *k, sw_p2p_msg_t *m, void *arg)
{
    raw_t *r = arg;
    if (!r->resp) {
        r->resp_len = m->payload_len;
        r->resp = sw_p2p_msg_take_payload(m);
    }
}

static void raw_done(sw_p2p_call_t *k, int status, void *arg)
{
    raw_t *r = arg;
    r->status = status;
    r->done = 1;
}

static void raw_conn(sw_p2p_conn_t *c, int status, void *arg)
{
    raw_t *r = arg;
    r->conn = c;
    r->status = status;
    r->connected = 1;
}

static const sw_p2p_call_cbs_t raw_cbs = { raw_msg, NULL, raw_done, NULL };

/* Sends one message of raw bytes to method on the node at `full`, from node `from`. */
static int raw_call(uv_loop_t *loop, sw_p2p_node_t *from, const char *full, const char *method, const void *payload,
                    size_t len, raw_t *r)
{
    sw_p2p_call_t *k;
    int rc;

    memset(r, 0, sizeof(*r));
    if ((rc = sw_p2p_connect(from, full, raw_conn, r)) < 0)
        return rc;
    if (!run_until(loop, &r->connected, WAIT_MS) || r->status < 0)
        return -ECONNREFUSED;
    if ((rc = sw_p2p_call_start(r->conn, method, 5000, &raw_cbs, r, &k)) < 0)
        return rc;
    if ((rc = sw_p2p_call_send(k, NULL, 0, (void *)payload, len, 0)) < 0)
        return rc;
    sw_p2p_call_end(k, 0, NULL);
    return run_until(loop, &r->done, WAIT_MS) ? 0 : -ETIMEDOUT;
}

static uint8_t *pack_store(const char *sender, const char *key, Swarmd__Dht__Record **recs, size_t n, size_t *len)
{
    Swarmd__Dht__Request req = SWARMD__DHT__REQUEST__INIT;
    uint8_t *buf;

    req.sender_addr = (char *)sender;
    req.key.data = (uint8_t *)key;
    req.key.len = strlen(key);
    req.records = recs;
    req.n_records = n;
    *len = swarmd__dht__request__get_packed_size(&req);
    buf = malloc(*len + 1);
    swarmd__dht__request__pack(&req, buf);
    return buf;
}

/* Status of the first record of a store answer, or the call's status. */
static int store_status(raw_t *r)
{
    Swarmd__Dht__Response *resp;
    int st;

    if (r->status < 0 || !r->resp)
        return r->status < 0 ? r->status : -1000;
    resp = swarmd__dht__response__unpack(NULL, r->resp_len, r->resp);
    if (!resp)
        return -2000;
    st = resp->n_store_status ? resp->store_status[0] : -3000;
    swarmd__dht__response__free_unpacked(resp, NULL);
    return st;
}

static void raw_free(raw_t *r)
{
    sw_free(r->resp);
    r->resp = NULL;
}

static void test_forged_records(void)
{
    swarm_t s;
    sw_dht_opts_t o;
    res_t r;
    raw_t raw;
    uint64_t exp = sw_dht_now_ms() + 60000;
    uint8_t sk0[SW_DHT_OWNED_SUBKEY_LEN], sig[64];
    const char *key = "model.5";

    sw_dht_opts_default(&o);
    SW_CHECK_OK(small_swarm(&s, 4, &o));
    /* node 0 announces itself under its own subkey */
    sw_dht_owned_subkey(&s.n[0].id.id, sk0);
    SW_CHECK_OK(do_put(&s, 0, key, sk0, sizeof(sk0), "genuine", exp, &r));
    SW_CHECK(r.status == 0 && r.n == 4);
    /* node 3 may not write node 0's subkey through the API */
    SW_CHECK(sw_dht_put(s.n[3].dht, key, strlen(key), sk0, sizeof(sk0), "forged", 6, exp + 1000, put_cb, &r) ==
             SW_EUSAGE);
    /* nor by sending stores itself: signed with its own key, unsigned, or a genuine signature on
     * a changed value; every node refuses each of them */
    for (int variant = 0; variant < 3; variant++) {
        Swarmd__Dht__Record rec = SWARMD__DHT__RECORD__INIT, *prec = &rec;
        sw_dht_record_t dr = { sk0, sizeof(sk0), (const uint8_t *)"forged", 6, exp + 1000, NULL };
        size_t len;
        uint8_t *buf;
        rec.subkey.data = sk0;
        rec.subkey.len = sizeof(sk0);
        rec.value.data = (uint8_t *)"forged";
        rec.value.len = 6;
        rec.expiration_ms = exp + 1000;
        if (variant == 0)
            sw_dht_record_sign(&s.n[3].id, (const uint8_t *)key, strlen(key), &dr, sig);
        if (variant == 2) {
            dr.value = (const uint8_t *)"genuine";
            dr.value_len = 7;
            sw_dht_record_sign(&s.n[0].id, (const uint8_t *)key, strlen(key), &dr, sig);
        }
        if (variant != 1) {
            rec.signature.data = sig;
            rec.signature.len = 64;
        }
        buf = pack_store(s.n[3].addr, key, &prec, 1, &len);
        for (int i = 0; i < 3; i++) {
            SW_CHECK_OK(raw_call(&s.loop, s.n[3].node, s.n[i].full, "dht.store", buf, len, &raw));
            SW_CHECKF(store_status(&raw) == SW_EFORMAT, "variant %d node %d: %d", variant, i, store_status(&raw));
            raw_free(&raw);
        }
        free(buf);
    }
    for (int i = 0; i < 4; i++) {
        SW_CHECK_OK(do_get(&s, i, key, (const char *)sk0, sizeof(sk0), &r));
        SW_CHECK(r.found && strcmp(r.value, "genuine") == 0 && !r.forged_seen);
    }
    for (int i = 0; i < 3; i++) {
        sw_dht_stats_t st;
        sw_dht_stats(s.n[i].dht, &st);
        SW_CHECK(st.records_rejected >= 3);
    }
    SW_CHECK(swarm_free(&s) == 0);
}

/* ---- a lying node: answers find_value with forged records; readers must drop them ---- */

static sw_identity_t liar_victim;

static void flag_set(void *arg) { *(int *)arg = 1; }

static void liar_msg(sw_p2p_call_t *k, sw_p2p_msg_t *m, void *arg)
{
    Swarmd__Dht__Response resp = SWARMD__DHT__RESPONSE__INIT;
    Swarmd__Dht__Record rec[3], *prec[3];
    uint8_t sk[SW_DHT_OWNED_SUBKEY_LEN], sig[64];
    uint8_t *buf;
    size_t len;

    memset(sig, 7, sizeof(sig));
    sw_dht_owned_subkey(&liar_victim.id, sk);
    for (int i = 0; i < 3; i++) {
        swarmd__dht__record__init(&rec[i]);
        prec[i] = &rec[i];
        rec[i].value.data = (uint8_t *)"forged";
        rec[i].value.len = 6;
        rec[i].expiration_ms = sw_dht_now_ms() + 10000;
    }
    rec[0].subkey.data = sk; /* owned, bad signature */
    rec[0].subkey.len = sizeof(sk);
    rec[0].signature.data = sig;
    rec[0].signature.len = 64;
    rec[1].subkey.data = (uint8_t *)"plain";
    rec[1].subkey.len = 5;
    rec[1].expiration_ms = sw_dht_now_ms() + 1000ull * 86400 * 30; /* absurd expiration */
    rec[2].subkey.data = (uint8_t *)"old";
    rec[2].subkey.len = 3;
    rec[2].expiration_ms = 1000; /* long expired */
    resp.records = prec;
    resp.n_records = 3;
    resp.now_ms = sw_dht_now_ms();
    len = swarmd__dht__response__get_packed_size(&resp);
    buf = sw_malloc(len);
    swarmd__dht__response__pack(&resp, buf);
    sw_p2p_call_send(k, NULL, 0, buf, len, SW_P2P_SEND_TAKE);
    sw_p2p_call_end(k, 0, NULL);
}

static void liar_open(sw_p2p_call_t *k, const char *method, void *arg)
{
    static const sw_p2p_call_cbs_t cbs = { liar_msg, NULL, NULL, NULL };
    sw_p2p_call_set_cbs(k, &cbs, NULL);
}

static void test_reader_checks(void)
{
    swarm_t s;
    sw_dht_opts_t o;
    sw_p2p_limits_t lim;
    sw_identity_t lid;
    sw_p2p_node_t *liar = NULL;
    int port, ldone = 0;
    char full[128], pid[SW_PEER_ID_TEXT_MAX];
    const char *boot = full;
    res_t r;
    sw_dht_stats_t st;

    sw_dht_opts_default(&o);
    sw_identity_generate(&liar_victim);
    SW_CHECK_OK(swarm_init(&s, 1));
    sw_identity_generate(&lid);
    limits_for_swarm(&lim);
    SW_CHECK_OK(sw_p2p_node_new(&s.loop, &lid, NULL, &lim, &liar));
    SW_CHECK_OK(sw_p2p_node_listen(liar, "127.0.0.1", 0, &port));
    sw_p2p_node_handle(liar, "dht.ping", liar_open, NULL);
    sw_p2p_node_handle(liar, "dht.find_node", liar_open, NULL);
    sw_p2p_node_handle(liar, "dht.find_value", liar_open, NULL);
    sw_peer_id_text(&lid.id, pid);
    snprintf(full, sizeof(full), "%s@127.0.0.1:%d", pid, port);
    SW_CHECK_OK(node_start(&s, 0, &o));
    memset(&r, 0, sizeof(r));
    SW_CHECK_OK(sw_dht_bootstrap(s.n[0].dht, &boot, 1, boot_cb, &r));
    SW_CHECK(run_until(&s.loop, &r.done, WAIT_MS) && r.status == 0 && r.n == 1);
    SW_CHECK_OK(do_get(&s, 0, "model.1", "plain", 5, &r));
    SW_CHECK(r.status == 0 && r.n == 0 && !r.forged_seen);
    sw_dht_stats(s.n[0].dht, &st);
    SW_CHECK(st.records_rejected == 3);
    sw_p2p_node_close(liar, flag_set, &ldone);
    SW_CHECK(run_until(&s.loop, &ldone, WAIT_MS));
    SW_CHECK(swarm_free(&s) == 0);
}

/* ---- hostile input: garbage, oversized fields, floods; the node keeps serving others ---- */

static void test_hostile_requests(void)
{
    swarm_t s;
    sw_dht_opts_t o;
    res_t r;
    raw_t raw;
    uint8_t junk[512], *big;
    size_t len;
    uint8_t *buf;
    int limited = 0;
    sw_dht_stats_t st;

    sw_dht_opts_default(&o);
    o.find_rate = 20;
    o.find_burst = 40;
    SW_CHECK_OK(small_swarm(&s, 3, &o));
    SW_CHECK_OK(do_put(&s, 0, "k", "s", 1, "v", sw_dht_now_ms() + 60000, &r));
    /* garbage bytes: refused with an error, not a crash */
    for (size_t i = 0; i < sizeof(junk); i++)
        junk[i] = (uint8_t)(i * 37 + 11);
    SW_CHECK_OK(raw_call(&s.loop, s.n[2].node, s.n[0].full, "dht.store", junk, sizeof(junk), &raw));
    SW_CHECK(raw.status == SW_EFORMAT);
    raw_free(&raw);
    SW_CHECK_OK(raw_call(&s.loop, s.n[2].node, s.n[0].full, "dht.find_node", junk, 0, &raw));
    SW_CHECK(raw.status < 0);
    raw_free(&raw);
    /* an oversized message (3 MiB) */
    big = calloc(1, 3u << 20);
    SW_CHECK_OK(raw_call(&s.loop, s.n[2].node, s.n[0].full, "dht.store", big, 3u << 20, &raw));
    SW_CHECK(raw.status == SW_ELIMIT);
    raw_free(&raw);
    /* an oversized key, an oversized value, too many records, a bad target */
    {
        Swarmd__Dht__Record rec = SWARMD__DHT__RECORD__INIT, *prec[200];
        char longkey[300];
        memset(longkey, 'k', sizeof(longkey) - 1);
        longkey[299] = 0;
        rec.value.data = big;
        rec.value.len = 10;
        rec.expiration_ms = sw_dht_now_ms() + 10000;
        prec[0] = &rec;
        buf = pack_store(s.n[2].addr, longkey, prec, 1, &len);
        SW_CHECK_OK(raw_call(&s.loop, s.n[2].node, s.n[0].full, "dht.store", buf, len, &raw));
        SW_CHECK(raw.status == SW_EFORMAT);
        raw_free(&raw);
        free(buf);
        rec.value.len = 9000;
        buf = pack_store(s.n[2].addr, "k", prec, 1, &len);
        SW_CHECK_OK(raw_call(&s.loop, s.n[2].node, s.n[0].full, "dht.store", buf, len, &raw));
        SW_CHECK(store_status(&raw) == SW_ELIMIT);
        raw_free(&raw);
        free(buf);
        rec.value.len = 10;
        for (int i = 0; i < 200; i++)
            prec[i] = &rec;
        buf = pack_store(s.n[2].addr, "k", prec, 200, &len);
        SW_CHECK_OK(raw_call(&s.loop, s.n[2].node, s.n[0].full, "dht.store", buf, len, &raw));
        SW_CHECK(raw.status == SW_EFORMAT);
        raw_free(&raw);
        free(buf);
    }
    {
        Swarmd__Dht__Request req = SWARMD__DHT__REQUEST__INIT;
        uint8_t b[64];
        req.sender_addr = s.n[2].addr;
        req.target.data = junk;
        req.target.len = 31;
        len = swarmd__dht__request__pack(&req, b);
        SW_CHECK_OK(raw_call(&s.loop, s.n[2].node, s.n[0].full, "dht.find_node", b, len, &raw));
        SW_CHECK(raw.status == SW_EFORMAT);
        raw_free(&raw);
        /* a flood of finds from one peer: past the burst it is refused */
        req.target.len = 32;
        len = swarmd__dht__request__pack(&req, b);
        for (int i = 0; i < 100; i++) {
            SW_CHECK_OK(raw_call(&s.loop, s.n[2].node, s.n[0].full, "dht.find_node", b, len, &raw));
            limited += raw.status == SW_ELIMIT;
            raw_free(&raw);
        }
    }
    free(big);
    SW_CHECKF(limited >= 50, "%d of 100 rate limited", limited);
    /* the node still answers everyone else */
    SW_CHECK_OK(do_get(&s, 1, "k", "s", 1, &r));
    SW_CHECK(r.found && strcmp(r.value, "v") == 0);
    sw_dht_stats(s.n[0].dht, &st);
    SW_CHECK(st.rate_limited >= 50 && st.refused >= 5);
    SW_CHECK(swarm_free(&s) == 0);
}

/* ---- client mode: queries and stores, but stays out of every routing table ---- */

static void test_client_mode(void)
{
    swarm_t s;
    sw_dht_opts_t o;
    res_t r;
    const char *boot;

    sw_dht_opts_default(&o);
    SW_CHECK_OK(small_swarm_n(&s, 4, 3, &o));
    /* node 3 joins as a client */
    o.client_mode = 1;
    SW_CHECK_OK(node_start(&s, 3, &o));
    boot = s.n[0].full;
    memset(&r, 0, sizeof(r));
    SW_CHECK_OK(sw_dht_bootstrap(s.n[3].dht, &boot, 1, boot_cb, &r));
    SW_CHECK(run_until(&s.loop, &r.done, WAIT_MS) && r.status == 0);
    SW_CHECK_OK(do_put(&s, 3, "c", "s", 1, "from-client", sw_dht_now_ms() + 60000, &r));
    SW_CHECK(r.status == 0 && r.n == 3);
    SW_CHECK_OK(do_get(&s, 1, "c", "s", 1, &r));
    SW_CHECK(r.found && strcmp(r.value, "from-client") == 0);
    SW_CHECK_OK(do_get(&s, 3, "c", "s", 1, &r));
    SW_CHECK(r.found);
    for (int i = 0; i < 3; i++) {
        sw_peer_id_t peers[16];
        size_t n = sw_dht_table_peers(s.n[i].dht, peers, 16);
        for (size_t j = 0; j < n && j < 16; j++)
            SW_CHECK(!sw_peer_id_eq(&peers[j], &s.n[3].id.id));
    }
    SW_CHECK(swarm_free(&s) == 0);
}

static void wait_idle(swarm_t *s, uint64_t ms);

/* ---- dht.ping and dht.nodes between nodes ---- */

typedef struct {
    int done, status;
    sw_peer_id_t peer;
    double rtt_ms;
    int64_t offset_ms;
    size_t n, total, bad_entries;
    const sw_dht_t *owner; /* nodes: whose table the answer should match */
} call_res_t;

static void ping_res(int status, const sw_peer_id_t *peer, double rtt_ms, int64_t off, void *arg)
{
    call_res_t *r = arg;
    r->status = status;
    if (peer)
        r->peer = *peer;
    r->rtt_ms = rtt_ms;
    r->offset_ms = off;
    r->done = 1;
}

static void nodes_res(int status, const sw_peer_id_t *peer, const sw_dht_node_info_t *nodes, size_t n, size_t total,
                      void *arg)
{
    call_res_t *r = arg;
    sw_peer_id_t mine[64];
    size_t nm = r->owner ? sw_dht_table_peers(r->owner, mine, 64) : 0;
    sw_dht_id_t self, id;

    r->status = status;
    if (peer)
        r->peer = *peer;
    r->n = n;
    r->total = total;
    if (peer)
        sw_dht_id_of_peer(peer, &self);
    for (size_t i = 0; i < n; i++) {
        int known = 0;
        for (size_t j = 0; j < nm && j < 64; j++)
            known |= sw_peer_id_eq(&mine[j], &nodes[i].peer);
        sw_dht_id_of_peer(&nodes[i].peer, &id);
        if (!known || !sw_dht_addr_ok(nodes[i].addr) || (int)nodes[i].bucket != sw_dht_id_cpl(&self, &id) ||
            nodes[i].fails != 0)
            r->bad_entries++;
    }
    r->done = 1;
}

/* A loopback port nobody listens on (bound, then closed). */
static int closed_port(uv_loop_t *loop)
{
    uv_tcp_t t;
    struct sockaddr_in a;
    struct sockaddr_storage ss;
    int len = sizeof(ss), port = -1;

    uv_ip4_addr("127.0.0.1", 0, &a);
    uv_tcp_init(loop, &t);
    if (uv_tcp_bind(&t, (const struct sockaddr *)&a, 0) == 0 &&
        uv_tcp_getsockname(&t, (struct sockaddr *)&ss, &len) == 0)
        port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return port;
}

static void test_ping_nodes(void)
{
    swarm_t s;
    sw_dht_opts_t o;
    call_res_t r;
    char dead[64];

    sw_dht_opts_default(&o);
    SW_CHECK_OK(small_swarm(&s, 4, &o));
    /* by full address and by HOST:PORT alone (the id is learnt) */
    for (int v = 0; v < 2; v++) {
        memset(&r, 0, sizeof(r));
        SW_CHECK_OK(sw_dht_ping(s.n[1].dht, v ? s.n[0].addr : s.n[0].full, ping_res, &r));
        SW_CHECK(!r.done); /* never before the call returns */
        SW_CHECK(run_until(&s.loop, &r.done, WAIT_MS));
        SW_CHECKF(r.status == 0 && sw_peer_id_eq(&r.peer, &s.n[0].id.id), "ping %d: %d", v, r.status);
        SW_CHECK(r.rtt_ms > 0 && r.rtt_ms < 5000);
        SW_CHECKF(r.offset_ms > -1000 && r.offset_ms < 1000, "offset %lld", (long long)r.offset_ms);
    }
    /* a pinned id that does not live there fails (one of no open connection: the p2p layer would
     * hand that back); so does a port nobody listens on */
    {
        char wrong[160], pid[SW_PEER_ID_TEXT_MAX];
        sw_identity_t other;
        sw_identity_generate(&other);
        sw_peer_id_text(&other.id, pid);
        snprintf(wrong, sizeof(wrong), "%s@%s", pid, s.n[0].addr);
        memset(&r, 0, sizeof(r));
        SW_CHECK_OK(sw_dht_ping(s.n[1].dht, wrong, ping_res, &r));
        SW_CHECK(run_until(&s.loop, &r.done, WAIT_MS) && r.status < 0);
    }
    snprintf(dead, sizeof(dead), "127.0.0.1:%d", closed_port(&s.loop));
    memset(&r, 0, sizeof(r));
    SW_CHECK_OK(sw_dht_ping(s.n[1].dht, dead, ping_res, &r));
    SW_CHECK(run_until(&s.loop, &r.done, WAIT_MS) && r.status < 0);
    SW_CHECK(sw_dht_ping(s.n[1].dht, "not an address", ping_res, &r) == SW_EUSAGE);
    /* the routing table of node 0 as node 3 sees it: every contact, with its bucket */
    memset(&r, 0, sizeof(r));
    r.owner = s.n[0].dht;
    SW_CHECK_OK(sw_dht_nodes(s.n[3].dht, s.n[0].full, nodes_res, &r));
    SW_CHECK(run_until(&s.loop, &r.done, WAIT_MS));
    SW_CHECKF(r.status == 0 && r.n == 3 && r.total == 3 && r.bad_entries == 0, "nodes: %d n %zu total %zu bad %zu",
              r.status, r.n, r.total, r.bad_entries);
    SW_CHECK(sw_peer_id_eq(&r.peer, &s.n[0].id.id));
    memset(&r, 0, sizeof(r));
    SW_CHECK_OK(sw_dht_nodes(s.n[3].dht, dead, nodes_res, &r));
    SW_CHECK(run_until(&s.loop, &r.done, WAIT_MS) && r.status < 0 && r.n == 0);
    SW_CHECK(swarm_free(&s) == 0);
}

/* ---- reachability: automatic client mode ---- */

static int in_tables(swarm_t *s, int upto, const sw_peer_id_t *p)
{
    int n = 0;
    for (int i = 0; i < upto; i++) {
        sw_peer_id_t peers[64];
        size_t m = s->n[i].alive ? sw_dht_table_peers(s->n[i].dht, peers, 64) : 0;
        for (size_t j = 0; j < m && j < 64; j++)
            n += sw_peer_id_eq(&peers[j], p);
    }
    return n;
}

typedef struct {
    int done, status, reach;
    uint32_t yes, no;
} reach_res_t;

static void reach_res(int status, uint32_t yes, uint32_t no, int reach, void *arg)
{
    reach_res_t *r = arg;
    r->status = status;
    r->yes = yes;
    r->no = no;
    r->reach = reach;
    r->done = 1;
}

static void test_reachability(void)
{
    swarm_t s;
    sw_dht_opts_t o;
    res_t r;
    reach_res_t rr;
    const char *boot;
    int port;
    sw_dht_stats_t st;

    sw_dht_opts_default(&o);
    SW_CHECK_OK(small_swarm_n(&s, 5, 3, &o));
    o.reachability_check = 1;
    o.reachability_ms = 0; /* the test runs the checks itself */
    /* node 3 announces a port nobody listens on */
    port = closed_port(&s.loop);
    SW_CHECK(port > 0);
    snprintf(s.n[3].announce, sizeof(s.n[3].announce), "127.0.0.1:%d", port);
    SW_CHECK_OK(node_start(&s, 3, &o));
    SW_CHECK(sw_dht_reachability(s.n[3].dht) == SW_DHT_REACH_UNKNOWN && sw_dht_is_client(s.n[3].dht));
    boot = s.n[0].full;
    memset(&r, 0, sizeof(r));
    SW_CHECK_OK(sw_dht_bootstrap(s.n[3].dht, &boot, 1, boot_cb, &r));
    SW_CHECK(run_until(&s.loop, &r.done, WAIT_MS) && r.status == 0);
    SW_CHECKF(sw_dht_reachability(s.n[3].dht) == SW_DHT_REACH_NO, "reach %d", sw_dht_reachability(s.n[3].dht));
    SW_CHECK(sw_dht_is_client(s.n[3].dht));
    /* node 4 is reachable: it stays a full node */
    SW_CHECK_OK(node_start(&s, 4, &o));
    memset(&r, 0, sizeof(r));
    SW_CHECK_OK(sw_dht_bootstrap(s.n[4].dht, &boot, 1, boot_cb, &r));
    SW_CHECK(run_until(&s.loop, &r.done, WAIT_MS) && r.status == 0);
    SW_CHECK(sw_dht_reachability(s.n[4].dht) == SW_DHT_REACH_YES && !sw_dht_is_client(s.n[4].dht));
    wait_idle(&s, WAIT_MS);
    /* the client works as one: it stores and finds, but nobody lists it */
    SW_CHECK_OK(do_put(&s, 3, "r", "s", 1, "from-unreachable", sw_dht_now_ms() + 60000, &r));
    SW_CHECK(r.status == 0 && r.n == 4);
    SW_CHECK_OK(do_get(&s, 1, "r", "s", 1, &r));
    SW_CHECK(r.found && strcmp(r.value, "from-unreachable") == 0);
    SW_CHECK_OK(do_get(&s, 3, "r", "s", 1, &r));
    SW_CHECK(r.found);
    SW_CHECK_OK(do_put(&s, 2, "r2", "s", 1, "v", sw_dht_now_ms() + 60000, &r));
    SW_CHECK(r.status == 0 && r.n == 4); /* 0, 1, 2, 4: not 3 */
    SW_CHECKF(in_tables(&s, 5, &s.n[3].id.id) == 0, "unreachable node listed %d times",
              in_tables(&s, 5, &s.n[3].id.id));
    SW_CHECKF(in_tables(&s, 5, &s.n[4].id.id) == 4, "reachable node listed %d times",
              in_tables(&s, 5, &s.n[4].id.id));
    sw_dht_stats(s.n[0].dht, &st);
    SW_CHECK(st.dialbacks >= 2 && st.dialbacks_ok >= 1);
    /* node 3 opens the port it announces: the next check makes it a full node, and it announces itself */
    SW_CHECK_OK(sw_p2p_node_listen(s.n[3].node, "127.0.0.1", port, &port));
    memset(&rr, 0, sizeof(rr));
    SW_CHECK_OK(sw_dht_check_reachability(s.n[3].dht, reach_res, &rr));
    SW_CHECK(sw_dht_check_reachability(s.n[3].dht, NULL, NULL) == SW_ESTATE); /* one at a time */
    SW_CHECK(run_until(&s.loop, &rr.done, WAIT_MS));
    SW_CHECKF(rr.status == 0 && rr.reach == SW_DHT_REACH_YES && rr.yes >= 1 && rr.no == 0, "check: %d %d %u/%u",
              rr.status, rr.reach, rr.yes, rr.no);
    SW_CHECK(!sw_dht_is_client(s.n[3].dht));
    wait_idle(&s, WAIT_MS);
    SW_CHECKF(in_tables(&s, 5, &s.n[3].id.id) >= 3, "node 3 listed %d times after the switch",
              in_tables(&s, 5, &s.n[3].id.id));
    SW_CHECK(swarm_free(&s) == 0);
}

/* ---- dial-back requests: only the asker's own id, once each, rate-limited ---- */

static int dialback_answer(raw_t *r, int *reachable)
{
    Swarmd__Dht__Response *resp;

    if (r->status < 0 || !r->resp)
        return r->status < 0 ? r->status : -1000;
    resp = swarmd__dht__response__unpack(NULL, r->resp_len, r->resp);
    if (!resp)
        return -2000;
    *reachable = resp->reachable;
    swarmd__dht__response__free_unpacked(resp, NULL);
    return 0;
}

static void test_dialback_abuse(void)
{
    swarm_t s;
    sw_dht_opts_t o;
    raw_t raw;
    Swarmd__Dht__Request req = SWARMD__DHT__REQUEST__INIT;
    uint8_t b[256];
    size_t len;
    int reachable = -1, limited = 0;
    sw_dht_stats_t st;

    sw_dht_opts_default(&o);
    SW_CHECK_OK(small_swarm(&s, 3, &o));
    /* node 2 names node 1's address as its own: node 0 dials it pinned to node 2's id, the
     * handshake fails, and the answer is "unreachable" */
    req.sender_addr = s.n[1].addr;
    req.client_mode = 1;
    len = swarmd__dht__request__pack(&req, b);
    SW_CHECK_OK(raw_call(&s.loop, s.n[2].node, s.n[0].full, "dht.dialback", b, len, &raw));
    SW_CHECK_OK(dialback_answer(&raw, &reachable));
    SW_CHECK(reachable == 0);
    raw_free(&raw);
    /* its own address: reachable */
    req.sender_addr = s.n[2].addr;
    len = swarmd__dht__request__pack(&req, b);
    SW_CHECK_OK(raw_call(&s.loop, s.n[2].node, s.n[0].full, "dht.dialback", b, len, &raw));
    SW_CHECK_OK(dialback_answer(&raw, &reachable));
    SW_CHECK(reachable == 1);
    raw_free(&raw);
    /* past the burst of 2, the same peer is refused */
    for (int i = 0; i < 5; i++) {
        SW_CHECK_OK(raw_call(&s.loop, s.n[2].node, s.n[0].full, "dht.dialback", b, len, &raw));
        limited += raw.status == SW_ELIMIT;
        raw_free(&raw);
    }
    SW_CHECKF(limited == 5, "%d of 5 refused", limited);
    /* no address to dial: refused as malformed (by node 1, whose budget for node 2 is intact) */
    req.sender_addr = (char *)"";
    len = swarmd__dht__request__pack(&req, b);
    SW_CHECK_OK(raw_call(&s.loop, s.n[2].node, s.n[1].full, "dht.dialback", b, len, &raw));
    SW_CHECK(raw.status == SW_EFORMAT);
    raw_free(&raw);
    sw_dht_stats(s.n[0].dht, &st);
    SW_CHECK(st.dialbacks == 2 && st.dialbacks_ok == 1 && st.rate_limited == 5);
    /* the node still serves */
    {
        res_t r;
        SW_CHECK_OK(do_put(&s, 2, "d", "s", 1, "v", sw_dht_now_ms() + 60000, &r));
        SW_CHECK(r.status == 0 && r.n == 3);
    }
    SW_CHECK(swarm_free(&s) == 0);
}

/* ---- a routing table reused after a restart ---- */

static void test_table_file(void)
{
    swarm_t s;
    sw_dht_opts_t o;
    char path[] = "/tmp/test-dht-table-XXXXXX";
    int fd = mkstemp(path);
    res_t r;

    SW_CHECK(fd >= 0);
    close(fd);
    unlink(path);
    sw_dht_opts_default(&o);
    SW_CHECK_OK(small_swarm(&s, 5, &o));
    SW_CHECK_OK(do_put(&s, 1, "t", "s", 1, "kept", sw_dht_now_ms() + 60000, &r));
    /* node 4 restarts with a table file but no initial peers */
    node_kill(&s.n[4]);
    SW_CHECK(run_until(&s.loop, &s.n[4].closed, WAIT_MS));
    s.n[4].closed = 0;
    o.table_path = path;
    SW_CHECK_OK(node_start(&s, 4, &o));
    SW_CHECK(sw_dht_table_peers(s.n[4].dht, NULL, 0) == 0);
    {
        sw_peer_id_t p;
        /* fill it by hand through a bootstrap, then save */
        const char *boot = s.n[0].full;
        memset(&r, 0, sizeof(r));
        SW_CHECK_OK(sw_dht_bootstrap(s.n[4].dht, &boot, 1, boot_cb, &r));
        SW_CHECK(run_until(&s.loop, &r.done, WAIT_MS) && r.status == 0);
        SW_CHECK(sw_dht_table_peers(s.n[4].dht, &p, 1) == 4);
    }
    node_kill(&s.n[4]); /* sw_dht_close saves the table */
    SW_CHECK(run_until(&s.loop, &s.n[4].closed, WAIT_MS));
    s.n[4].closed = 0;
    SW_CHECK_OK(node_start(&s, 4, &o));
    SW_CHECK(sw_dht_table_peers(s.n[4].dht, NULL, 0) == 4);
    memset(&r, 0, sizeof(r));
    SW_CHECK_OK(sw_dht_bootstrap(s.n[4].dht, NULL, 0, boot_cb, &r));
    SW_CHECK(run_until(&s.loop, &r.done, WAIT_MS) && r.status == 0);
    SW_CHECK_OK(do_get(&s, 4, "t", "s", 1, &r));
    SW_CHECK(r.found && strcmp(r.value, "kept") == 0);
    unlink(path);
    SW_CHECK(swarm_free(&s) == 0);
}

/* ======================================================================== a swarm */

static uint32_t conns_total(swarm_t *s)
{
    uint32_t n = 0;
    for (int i = 0; i < s->count; i++)
        if (s->n[i].alive)
            n += sw_p2p_node_conn_count(s->n[i].node);
    return n;
}

static int swarm_idle(swarm_t *s)
{
    for (int i = 0; i < s->count; i++)
        if (s->n[i].alive && sw_dht_pending(s->n[i].dht))
            return 0;
    return 1;
}

static void wait_idle(swarm_t *s, uint64_t ms)
{
    uint64_t end = uv_hrtime() + ms * 1000000ull;
    while (!swarm_idle(s) && uv_hrtime() < end)
        run_for(&s->loop, 20);
}

/* Gets `samples` (node, key) pairs, `par` at a time; counts successes, sums and maxes hops. */
static void sample_gets(swarm_t *s, int nkeys, int samples, int *ok, double *hops_avg, uint32_t *hops_max,
                        double *msgs_avg)
{
    enum { PAR = 8 };
    res_t r[PAR];
    int want[PAR];
    char key[32];
    uint64_t hsum = 0, msum = 0;
    int done = 0;

    *ok = 0;
    *hops_max = 0;
    while (done < samples) {
        int batch = samples - done < PAR ? samples - done : PAR, all;
        for (int j = 0; j < batch; j++) {
            int i;
            do
                i = (int)(sw_test_rand_u64(&rng) % (unsigned)s->count);
            while (!s->n[i].alive);
            want[j] = (int)(sw_test_rand_u64(&rng) % (unsigned)nkeys);
            snprintf(key, sizeof(key), "rec-%d", want[j]);
            memset(&r[j], 0, sizeof(r[j]));
            r[j].want_subkey = "s";
            r[j].want_len = 1;
            if (sw_dht_get(s->n[i].dht, key, strlen(key), get_cb, &r[j]) < 0)
                r[j].done = 1;
        }
        do {
            all = 1;
            for (int j = 0; j < batch; j++)
                all &= r[j].done;
            if (!all)
                run_for(&s->loop, 5);
        } while (!all);
        for (int j = 0; j < batch; j++) {
            char v[32];
            snprintf(v, sizeof(v), "value-%d", want[j]);
            *ok += r[j].found && strcmp(r[j].value, v) == 0;
            hsum += r[j].info.hops;
            msum += r[j].info.msgs;
            if (r[j].info.hops > *hops_max)
                *hops_max = r[j].info.hops;
        }
        done += batch;
    }
    *hops_avg = (double)hsum / samples;
    *msgs_avg = (double)msum / samples;
}

static void test_swarm(void)
{
    swarm_t s;
    sw_dht_opts_t o;
    const char *env = getenv("SW_DHT_N");
    int n = env ? atoi(env) : 200, nkeys = 30, ok, killed = 0;
    double log2n, havg, mavg;
    uint32_t hmax;
    uint64_t t0 = uv_hrtime();
    res_t pr[30];

    if (n < 10)
        n = 10;
    log2n = log2((double)n);
    sw_dht_opts_default(&o);
    o.refresh_ms = 0;   /* the test runs the periodic jobs itself */
    o.republish_ms = 0;
    o.rpc_timeout_ms = 3000;
    SW_CHECK_OK(swarm_init(&s, n));
    /* join in waves of 10, each bootstrapping from a random node already in */
    for (int i = 0; i < n;) {
        res_t br[10];
        int w = i == 0 ? 1 : (n - i < 10 ? n - i : 10), all;
        for (int j = 0; j < w; j++) {
            const char *boot;
            int b = i ? (int)(sw_test_rand_u64(&rng) % (unsigned)i) : 0;
            SW_CHECK_OK(node_start(&s, i + j, &o));
            boot = s.n[b].full;
            memset(&br[j], 0, sizeof(br[j]));
            SW_CHECK_OK(sw_dht_bootstrap(s.n[i + j].dht, &boot, i ? 1 : 0, boot_cb, &br[j]));
        }
        do {
            all = 1;
            for (int j = 0; j < w; j++)
                all &= br[j].done;
            if (!all)
                run_for(&s.loop, 5);
        } while (!all);
        for (int j = 0; j < w; j++)
            SW_CHECK(br[j].status == 0);
        i += w;
    }
    fprintf(stderr, "  swarm: %d nodes joined in %.1f s, %u connections open\n", n, (uv_hrtime() - t0) / 1e9,
            conns_total(&s));
    /* records from random nodes */
    for (int k = 0; k < nkeys; k++) {
        char key[32], val[32];
        int i = (int)(sw_test_rand_u64(&rng) % (unsigned)n);
        snprintf(key, sizeof(key), "rec-%d", k);
        snprintf(val, sizeof(val), "value-%d", k);
        memset(&pr[k], 0, sizeof(pr[k]));
        SW_CHECK_OK(sw_dht_put(s.n[i].dht, key, strlen(key), "s", 1, val, strlen(val), sw_dht_now_ms() + 600000,
                               put_cb, &pr[k]));
    }
    wait_idle(&s, 30000);
    for (int k = 0; k < nkeys; k++)
        SW_CHECKF(pr[k].done && pr[k].status == 0 && pr[k].n >= 15, "put %d: status %d stored %u", k, pr[k].status,
                  pr[k].n);
    sample_gets(&s, nkeys, 200, &ok, &havg, &hmax, &mavg);
    fprintf(stderr, "  swarm: %d/200 gets found (hops avg %.2f max %u, log2 N = %.1f; %.1f msgs per get), %.1f s\n",
            ok, havg, hmax, log2n, mavg, (uv_hrtime() - t0) / 1e9);
    SW_CHECK(ok == 200);
    SW_CHECK(hmax <= (uint32_t)ceil(log2n));
    /* 30% die without warning */
    for (int i = 0; i < n && killed < n * 3 / 10; i++) {
        int v = (int)(sw_test_rand_u64(&rng) % (unsigned)n);
        if (s.n[v].alive) {
            node_kill(&s.n[v]);
            killed++;
        }
    }
    for (int i = 0; i < n; i++)
        if (s.n[i].node && !s.n[i].alive)
            SW_CHECK(run_until(&s.loop, &s.n[i].closed, WAIT_MS));
    /* one republish round on the survivors */
    for (int i = 0; i < n; i++)
        if (s.n[i].alive)
            sw_dht_republish_now(s.n[i].dht);
    wait_idle(&s, 60000);
    SW_CHECK(swarm_idle(&s));
    fprintf(stderr, "  swarm: killed %d, republished, %.1f s, %u connections open\n", killed,
            (uv_hrtime() - t0) / 1e9, conns_total(&s));
    sample_gets(&s, nkeys, 200, &ok, &havg, &hmax, &mavg);
    fprintf(stderr, "  swarm after churn: %d/200 gets found (hops avg %.2f max %u; %.1f msgs per get), %.1f s\n", ok,
            havg, hmax, mavg, (uv_hrtime() - t0) / 1e9);
    SW_CHECK(ok == 200);
    SW_CHECK(swarm_free(&s) == 0);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    /* killed nodes leave sockets that others still write to */
    signal(SIGPIPE, SIG_IGN);
    sw_log_set_level(SW_LOG_ERROR);
    SW_RUN(test_ids);
    SW_RUN(test_buckets);
    SW_RUN(test_closest);
    SW_RUN(test_save_load);
    SW_RUN(test_records);
    SW_RUN(test_signatures);
    SW_RUN(test_rate);
    SW_RUN(test_three_nodes);
    SW_RUN(test_forged_records);
    SW_RUN(test_reader_checks);
    SW_RUN(test_hostile_requests);
    SW_RUN(test_client_mode);
    SW_RUN(test_ping_nodes);
    SW_RUN(test_reachability);
    SW_RUN(test_dialback_abuse);
    SW_RUN(test_table_file);
    SW_RUN(test_swarm);
    return sw_test_summary("test-dht");
}
