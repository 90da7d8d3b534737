/*
 * linkemu.c - a userspace TCP proxy that makes loopback look like an internet link: one-way
 * delay with jitter, a bandwidth cap and cut-offs, for integration tests and benchmarks (kernel
 * traffic shaping is not available in CI containers).
 *
 *   linkemu --listen 127.0.0.1:PORT --to 127.0.0.1:PORT2 [--delay-ms D] [--jitter-ms J]
 *           [--rate-mbit R] [--cut-after-bytes N | --cut-after-ms T] [--queue-kib Q] [-v]
 *
 * Each accepted connection gets its own connection to --to; bytes are forwarded both ways.
 * Model, per direction:
 *  - every chunk read from one side becomes deliverable D ms (+ a uniform jitter in [-J, J]) after
 *    it arrived; a chunk is never released before the one ahead of it, so jitter delays bytes but
 *    never reorders the stream (it is TCP);
 *  - deliverable bytes then leave through a token bucket of R Mbit/s (burst: 5 ms worth, at least
 *    16 KiB), like serialization onto a slow link;
 *  - at most Q KiB (default 1024) wait per direction (plus one 64 KiB read, and at most 4096
 *    chunks): past that, the proxy stops reading that side until the queue drains below half, so
 *    a fast sender meets TCP backpressure instead of growing the proxy's memory;
 *  - --cut-after-bytes N: once N bytes in total (both directions) have been delivered, both sides
 *    are reset (RST) at once, queued bytes dropped; --cut-after-ms T: the same T ms after accept.
 *  - EOF from a side is forwarded (as a shutdown) after the bytes before it.
 * With port 0 in --listen, the kernel picks the port; the chosen port is printed on stdout, one
 * line, as soon as the proxy listens (always printed, so scripts can read it).
 *
 * Single-threaded: everything runs on the libuv default loop. Runs until killed.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "util/alloc.h"

#define READ_BUF (64 * 1024)
#define MAX_CHUNKS 4096 /* per direction: bounds the per-chunk overhead of many small reads */

struct opts {
    struct sockaddr_storage listen, to;
    double delay_ms, jitter_ms, rate_bps; /* rate in bytes per second; 0 = unlimited */
    uint64_t cut_bytes;                   /* 0 = never */
    uint64_t cut_ms;                      /* 0 = never */
    size_t queue_cap;
    int verbose;
};

static struct opts O = {.queue_cap = 1024 * 1024};
static uv_loop_t *loop;
static uint64_t rng_state = 0x2545f4914f6cdd1dull;

struct chunk {
    struct chunk *next;
    uint64_t release_us; /* monotonic time at which it may leave */
    size_t len, off;     /* bytes in data; off = already written */
    int eof;             /* an EOF marker, no data */
    char data[];
};

struct conn;

/* One direction: bytes read from `src` queue here and are written to `dst`. */
struct pipe {
    struct conn *c;
    uv_tcp_t *src, *dst;
    struct chunk *head, *tail;
    size_t queued;            /* bytes in the queue not yet written */
    size_t nchunks;           /* chunks in the queue (each costs a header and a malloc) */
    uint64_t last_release_us; /* release time of the last chunk queued: keeps order */
    double tokens;            /* token bucket, in bytes */
    uint64_t tokens_us;       /* when tokens was last refilled */
    uv_timer_t timer;
    uv_write_t wreq;
    uv_shutdown_t sreq;
    int writing, reading, src_eof, shut;
    const char *name;
};

struct conn {
    uv_tcp_t client, upstream;
    uv_connect_t creq;
    uv_timer_t cut_timer;
    struct pipe up, down; /* up: client -> upstream; down: upstream -> client */
    uint64_t delivered;
    int closing, handles_open, id;
};

static int conn_ids;

#define LOG(...)                                                                             \
    do {                                                                                     \
        if (O.verbose) {                                                                     \
            fprintf(stderr, "linkemu: " __VA_ARGS__);                                        \
            fputc('\n', stderr);                                                             \
        }                                                                                    \
    } while (0)

static uint64_t now_us(void)
{
    return uv_hrtime() / 1000;
}

static double rand_unit(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}

static double burst_bytes(void)
{
    double b = O.rate_bps * 0.005;

    return b < 16384 ? 16384 : b;
}

/* ------------------------------------ teardown ------------------------------------ */

static void on_handle_closed(uv_handle_t *h)
{
    struct conn *c = h->data;

    if (--c->handles_open > 0)
        return;
    for (struct pipe *p = &c->up; p; p = p == &c->up ? &c->down : NULL)
        while (p->head) {
            struct chunk *k = p->head;
            p->head = k->next;
            sw_free(k);
        }
    LOG("conn %d: closed", c->id);
    sw_free(c);
}

/* Closes everything; with `reset`, both TCP sides get an RST instead of a FIN. */
static void conn_close(struct conn *c, int reset, const char *why)
{
    if (c->closing)
        return;
    c->closing = 1;
    LOG("conn %d: %s (%s, %llu bytes delivered)", c->id, reset ? "reset" : "close", why,
        (unsigned long long)c->delivered);
    uv_tcp_t *tcp[2] = {&c->client, &c->upstream};
    for (int i = 0; i < 2; i++) {
        if (uv_is_closing((uv_handle_t *)tcp[i]))
            continue;
        if (!reset || uv_tcp_close_reset(tcp[i], on_handle_closed) != 0)
            uv_close((uv_handle_t *)tcp[i], on_handle_closed);
    }
    c->up.timer.data = c->down.timer.data = c; /* on_handle_closed wants the conn */
    uv_close((uv_handle_t *)&c->up.timer, on_handle_closed);
    uv_close((uv_handle_t *)&c->down.timer, on_handle_closed);
    uv_close((uv_handle_t *)&c->cut_timer, on_handle_closed);
}

/* ------------------------------------ forwarding ------------------------------------ */

static void pump(struct pipe *p);
static void start_reading(struct pipe *p);

/* Past the byte cap or the chunk cap, a direction stops reading its source. */
static int queue_full(const struct pipe *p)
{
    return p->queued > O.queue_cap || p->nchunks >= MAX_CHUNKS;
}

static void on_timer(uv_timer_t *t)
{
    pump(t->data);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    struct pipe *p = req->data;
    struct conn *c = p->c;

    if (c->closing)
        return;
    p->shut = 1;
    struct pipe *o = p == &c->up ? &c->down : &c->up;
    if (o->shut)
        conn_close(c, 0, "both sides finished");
}

static void on_write(uv_write_t *req, int status)
{
    struct pipe *p = req->data;
    struct conn *c = p->c;

    p->writing = 0;
    if (c->closing)
        return;
    if (status < 0) {
        conn_close(c, 1, uv_strerror(status));
        return;
    }
    if (O.cut_bytes && c->delivered >= O.cut_bytes) {
        conn_close(c, 1, "cut after bytes");
        return;
    }
    pump(p);
}

/* Sends what the delay and the token bucket allow; arms the timer for the rest. */
static void pump(struct pipe *p)
{
    struct conn *c = p->c;
    struct chunk *k;

    if (c->closing || p->writing)
        return;
    while ((k = p->head) && k->off == k->len && !k->eof) {
        p->head = k->next;
        if (!p->head)
            p->tail = NULL;
        p->nchunks--;
        sw_free(k);
    }
    if (!k) {
        if (!p->reading && !p->src_eof)
            start_reading(p);
        return;
    }
    uint64_t t = now_us();
    if (k->release_us > t) {
        uv_timer_start(&p->timer, on_timer, (k->release_us - t + 999) / 1000, 0);
        return;
    }
    if (k->eof) {
        p->head = k->next;
        if (!p->head)
            p->tail = NULL;
        p->nchunks--;
        sw_free(k);
        p->sreq.data = p;
        if (uv_shutdown(&p->sreq, (uv_stream_t *)p->dst, on_shutdown) != 0)
            conn_close(c, 1, "shutdown failed");
        return;
    }
    size_t n = k->len - k->off;
    if (O.rate_bps > 0) {
        p->tokens += (double)(t - p->tokens_us) * 1e-6 * O.rate_bps;
        p->tokens_us = t;
        if (p->tokens > burst_bytes())
            p->tokens = burst_bytes();
        size_t want = n < 16384 ? n : 16384; /* send in slices of up to 16 KiB */
        if (p->tokens < (double)want) {
            double wait_s = ((double)want - p->tokens) / O.rate_bps;
            uv_timer_start(&p->timer, on_timer, (uint64_t)(wait_s * 1000.0) + 1, 0);
            return;
        }
        n = (size_t)p->tokens < n ? (size_t)p->tokens : n;
        p->tokens -= (double)n;
    }
    if (O.cut_bytes && c->delivered + n > O.cut_bytes)
        n = (size_t)(O.cut_bytes - c->delivered);
    if (n == 0) /* the other direction used up the byte budget: its write callback cuts */
        return;
    uv_buf_t b = uv_buf_init(k->data + k->off, (unsigned)n);
    k->off += n;
    p->queued -= n;
    c->delivered += n;
    p->writing = 1;
    p->wreq.data = p;
    if (uv_write(&p->wreq, (uv_stream_t *)p->dst, &b, 1, on_write) != 0) {
        p->writing = 0;
        conn_close(c, 1, "write failed");
        return;
    }
    if (p->reading && queue_full(p)) {
        uv_read_stop((uv_stream_t *)p->src);
        p->reading = 0;
    } else if (!p->reading && !p->src_eof && p->queued < O.queue_cap / 2 &&
               p->nchunks < MAX_CHUNKS / 2) {
        start_reading(p);
    }
}

static void queue_chunk(struct pipe *p, struct chunk *k)
{
    uint64_t t = now_us();
    double d = O.delay_ms;

    if (O.jitter_ms > 0)
        d += (2.0 * rand_unit() - 1.0) * O.jitter_ms;
    if (d < 0)
        d = 0;
    k->release_us = t + (uint64_t)(d * 1000.0);
    if (k->release_us < p->last_release_us) /* never overtake the bytes ahead */
        k->release_us = p->last_release_us;
    p->last_release_us = k->release_us;
    k->next = NULL;
    if (p->tail)
        p->tail->next = k;
    else
        p->head = k;
    p->tail = k;
    p->queued += k->len;
    p->nchunks++;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct chunk *k = sw_malloc(sizeof(*k) + READ_BUF);

    *buf = uv_buf_init(k ? k->data : NULL, k ? READ_BUF : 0);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *c = s->data;
    struct pipe *p = s == (uv_stream_t *)&c->client ? &c->up : &c->down;
    struct chunk *k = buf->base ? (struct chunk *)(buf->base - offsetof(struct chunk, data)) : NULL;

    if (nread == 0 || c->closing) {
        sw_free(k);
        return;
    }
    if (nread == UV_EOF) {
        sw_free(k);
        uv_read_stop(s);
        p->reading = 0;
        p->src_eof = 1;
        if (!(k = sw_calloc(1, sizeof(*k)))) {
            conn_close(c, 1, "out of memory");
            return;
        }
        k->eof = 1;
        queue_chunk(p, k);
        pump(p);
        return;
    }
    if (nread < 0) {
        sw_free(k);
        conn_close(c, 1, uv_strerror((int)nread));
        return;
    }
    if ((size_t)nread < READ_BUF / 2) { /* keep small reads small in memory */
        struct chunk *k2 = sw_realloc(k, sizeof(*k) + (size_t)nread);
        if (k2)
            k = k2;
    }
    k->len = (size_t)nread;
    k->off = 0;
    k->eof = 0;
    queue_chunk(p, k);
    if (queue_full(p)) { /* backpressure: the sender's TCP window fills up */
        uv_read_stop(s);
        p->reading = 0;
    }
    pump(p);
}

static void start_reading(struct pipe *p)
{
    if (uv_read_start((uv_stream_t *)p->src, on_alloc, on_read) == 0)
        p->reading = 1;
}

static void on_cut_timer(uv_timer_t *t)
{
    conn_close(t->data, 1, "cut after ms");
}

static void on_upstream_connect(uv_connect_t *req, int status)
{
    struct conn *c = req->data;

    if (c->closing)
        return;
    if (status < 0) {
        conn_close(c, 1, uv_strerror(status));
        return;
    }
    start_reading(&c->up);
    start_reading(&c->down);
}

static void pipe_init(struct conn *c, struct pipe *p, uv_tcp_t *src, uv_tcp_t *dst, const char *name)
{
    p->c = c;
    p->src = src;
    p->dst = dst;
    p->name = name;
    p->tokens = burst_bytes();
    p->tokens_us = now_us();
    uv_timer_init(loop, &p->timer);
    p->timer.data = p;
}

static void on_connection(uv_stream_t *server, int status)
{
    struct conn *c;

    if (status < 0 || !(c = sw_calloc(1, sizeof(*c))))
        return;
    c->id = ++conn_ids;
    uv_tcp_init(loop, &c->client);
    uv_tcp_init(loop, &c->upstream);
    c->client.data = c->upstream.data = c->cut_timer.data = c;
    uv_timer_init(loop, &c->cut_timer);
    c->cut_timer.data = c;
    pipe_init(c, &c->up, &c->client, &c->upstream, "up");
    pipe_init(c, &c->down, &c->upstream, &c->client, "down");
    c->handles_open = 5;
    if (uv_accept(server, (uv_stream_t *)&c->client) != 0) {
        conn_close(c, 0, "accept failed");
        return;
    }
    uv_tcp_nodelay(&c->client, 1);
    uv_tcp_nodelay(&c->upstream, 1);
    LOG("conn %d: accepted", c->id);
    if (O.cut_ms)
        uv_timer_start(&c->cut_timer, on_cut_timer, O.cut_ms, 0);
    c->creq.data = c;
    if (uv_tcp_connect(&c->creq, &c->upstream, (struct sockaddr *)&O.to, on_upstream_connect) != 0)
        conn_close(c, 1, "connect failed");
}

/* ------------------------------------ command line ------------------------------------ */

static void usage(FILE *f)
{
    fprintf(f,
        "usage: linkemu --listen HOST:PORT --to HOST:PORT [options]\n"
        "  a TCP proxy that adds one-way delay, jitter, a bandwidth cap and cut-offs\n"
        "  --listen HOST:PORT     address to accept on (port 0: any; the port is printed on stdout)\n"
        "  --to HOST:PORT         address to forward each connection to\n"
        "  --delay-ms D           one-way delay per direction (default 0)\n"
        "  --jitter-ms J          uniform jitter in [-J, J] ms added to the delay; never reorders\n"
        "  --rate-mbit R          bandwidth cap per direction, Mbit/s (default unlimited)\n"
        "  --cut-after-bytes N    reset both sides after N bytes delivered in total\n"
        "  --cut-after-ms T       reset both sides T ms after accepting\n"
        "  --queue-kib Q          bytes queued per direction before reading stops (default 1024)\n"
        "  -v, --verbose          log connections on stderr\n"
        "  -h, --help             this text\n"
        "IPv6: --listen [::1]:0\n");
}

static int parse_addr(const char *s, struct sockaddr_storage *ss)
{
    char host[256];
    const char *colon = strrchr(s, ':');
    size_t hl;
    char *end;

    if (!colon || colon == s)
        return -1;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 0 || port > 65535 || colon[1] == '\0')
        return -1;
    hl = (size_t)(colon - s);
    if (s[0] == '[' && colon[-1] == ']') {
        s++;
        hl -= 2;
    }
    if (hl >= sizeof(host))
        return -1;
    memcpy(host, s, hl);
    host[hl] = '\0';
    if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)ss) == 0)
        return 0;
    if (uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)ss) == 0)
        return 0;
    return -1;
}

static int parse_num(const char *s, double *out)
{
    char *end;

    *out = strtod(s, &end);
    return (*end || *out < 0 || *out != *out) ? -1 : 0;
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {
        {"listen", required_argument, 0, 'l'},      {"to", required_argument, 0, 't'},
        {"delay-ms", required_argument, 0, 'd'},    {"jitter-ms", required_argument, 0, 'j'},
        {"rate-mbit", required_argument, 0, 'r'},   {"cut-after-bytes", required_argument, 0, 'b'},
        {"cut-after-ms", required_argument, 0, 'm'}, {"queue-kib", required_argument, 0, 'q'},
        {"verbose", no_argument, 0, 'v'},           {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    int have_listen = 0, have_to = 0, opt, r;
    double v;
    uv_tcp_t server;

    while ((opt = getopt_long(argc, argv, "vh", lo, NULL)) != -1) {
        switch (opt) {
        case 'l':
            if (parse_addr(optarg, &O.listen) < 0)
                goto bad;
            have_listen = 1;
            break;
        case 't':
            if (parse_addr(optarg, &O.to) < 0)
                goto bad;
            have_to = 1;
            break;
        case 'd':
            if (parse_num(optarg, &O.delay_ms) < 0)
                goto bad;
            break;
        case 'j':
            if (parse_num(optarg, &O.jitter_ms) < 0)
                goto bad;
            break;
        case 'r':
            if (parse_num(optarg, &v) < 0)
                goto bad;
            O.rate_bps = v * 1e6 / 8;
            break;
        case 'b':
            if (parse_num(optarg, &v) < 0 || v < 1)
                goto bad;
            O.cut_bytes = (uint64_t)v;
            break;
        case 'm':
            if (parse_num(optarg, &v) < 0 || v < 1)
                goto bad;
            O.cut_ms = (uint64_t)v;
            break;
        case 'q':
            if (parse_num(optarg, &v) < 0 || v < 1)
                goto bad;
            O.queue_cap = (size_t)(v * 1024);
            break;
        case 'v':
            O.verbose = 1;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            goto bad;
        }
    }
    if (optind != argc || !have_listen || !have_to || (O.cut_bytes && O.cut_ms))
        goto bad;

    signal(SIGPIPE, SIG_IGN);
    loop = uv_default_loop();
    uv_tcp_init(loop, &server);
    if ((r = uv_tcp_bind(&server, (struct sockaddr *)&O.listen, 0)) < 0 ||
        (r = uv_listen((uv_stream_t *)&server, 128, on_connection)) < 0) {
        fprintf(stderr, "linkemu: cannot listen: %s\n", uv_strerror(r));
        return 1;
    }
    struct sockaddr_storage bound;
    int blen = sizeof(bound);
    uv_tcp_getsockname(&server, (struct sockaddr *)&bound, &blen);
    printf("%d\n", ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                     : ((struct sockaddr_in *)&bound)->sin_port));
    fflush(stdout);
    return uv_run(loop, UV_RUN_DEFAULT);

bad:
    fprintf(stderr, "linkemu: bad arguments (--cut-after-bytes and --cut-after-ms exclude each other)\n");
    usage(stderr);
    return 2;
}
