/*
 * test-linkemu.c - the link emulator (tests/tools/linkemu.c) on loopback: delay shows up in the
 * round-trip time, the rate cap in the transfer time, cut-offs close the connection, a sender
 * that outruns a non-reading receiver is held back by a bounded amount, and jitter keeps bytes in
 * order. Timing checks assert lower bounds (which load cannot break) and generous upper bounds.
 *
 * Usage: test-linkemu PATH-TO-LINKEMU. Servers run on threads of this process with blocking
 * sockets; each linkemu is a child process, killed at the end of its case. Every socket has a
 * receive timeout so nothing hangs.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "test.h"
#include "util/error.h"

extern char **environ;
static const char *linkemu_path;

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void set_timeout(int fd, double s)
{
    struct timeval tv = {.tv_sec = (time_t)s, .tv_usec = (suseconds_t)((s - (time_t)s) * 1e6)};

    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

/* ----------------------------------- servers ----------------------------------- */

enum mode { ECHO, SINK, STALL };

struct server {
    int lfd, port;
    enum mode mode;
    size_t ack_after;       /* SINK: reply one byte once this many bytes arrived */
    volatile size_t received;
    pthread_t th;
    volatile int stop;
};

static void *server_main(void *arg)
{
    struct server *s = arg;
    char buf[65536];

    while (!s->stop) {
        struct pollfd pf = {.fd = s->lfd, .events = POLLIN};
        if (poll(&pf, 1, 100) <= 0)
            continue;
        int fd = accept(s->lfd, NULL, NULL);
        if (fd < 0)
            continue;
        set_timeout(fd, 0.2);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        while (!s->stop) {
            if (s->mode == STALL) {
                usleep(20000);
                continue;
            }
            ssize_t n = recv(fd, buf, sizeof(buf), 0);
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
                continue;
            if (n <= 0)
                break;
            size_t before = s->received;
            s->received += (size_t)n;
            if (s->mode == ECHO && send(fd, buf, (size_t)n, MSG_NOSIGNAL) != n)
                break;
            if (s->mode == SINK && s->ack_after && before < s->ack_after &&
                s->received >= s->ack_after && send(fd, "!", 1, MSG_NOSIGNAL) != 1)
                break;
        }
        close(fd);
    }
    return NULL;
}

static int server_start(struct server *s, enum mode mode)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof(a);
    int one = 1;

    s->mode = mode;
    s->lfd = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(s->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(s->lfd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(s->lfd, 8) < 0 ||
        getsockname(s->lfd, (struct sockaddr *)&a, &al) < 0)
        return -1;
    s->port = ntohs(a.sin_port);
    return pthread_create(&s->th, NULL, server_main, s) == 0 ? 0 : -1;
}

static void server_stop(struct server *s)
{
    s->stop = 1;
    pthread_join(s->th, NULL);
    close(s->lfd);
}

/* ----------------------------------- linkemu ----------------------------------- */

struct emu {
    pid_t pid;
    int port;
};

/* Starts linkemu forwarding to `to_port` with extra args (NULL-terminated); reads its port. */
static int emu_start(struct emu *e, int to_port, const char *const *extra)
{
    char to[64];
    const char *argv[32] = {linkemu_path, "--listen", "127.0.0.1:0", "--to", to};
    int n = 5, pfd[2];
    posix_spawn_file_actions_t fa;

    snprintf(to, sizeof(to), "127.0.0.1:%d", to_port);
    while (extra && *extra && n < 30)
        argv[n++] = *extra++;
    argv[n] = NULL;
    if (pipe(pfd) < 0)
        return -1;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, pfd[1], 1);
    posix_spawn_file_actions_addclose(&fa, pfd[0]);
    int r = posix_spawn(&e->pid, linkemu_path, &fa, NULL, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(pfd[1]);
    if (r != 0) {
        close(pfd[0]);
        return -1;
    }
    char line[32] = {0};
    size_t got = 0;
    while (got < sizeof(line) - 1 && !strchr(line, '\n')) {
        struct pollfd pf = {.fd = pfd[0], .events = POLLIN};
        if (poll(&pf, 1, 5000) <= 0)
            break;
        ssize_t k = read(pfd[0], line + got, sizeof(line) - 1 - got);
        if (k <= 0)
            break;
        got += (size_t)k;
    }
    close(pfd[0]);
    e->port = atoi(line);
    return e->port > 0 ? 0 : -1;
}

static void emu_stop(struct emu *e)
{
    if (e->pid > 0) {
        kill(e->pid, SIGTERM);
        waitpid(e->pid, NULL, 0);
        e->pid = 0;
    }
}

static int dial(int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                            .sin_port = htons((uint16_t)port)};
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;

    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    set_timeout(fd, 10.0);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int read_full(int fd, void *buf, size_t n)
{
    for (size_t got = 0; got < n;) {
        ssize_t k = recv(fd, (char *)buf + got, n - got, 0);
        if (k <= 0)
            return -1;
        got += (size_t)k;
    }
    return 0;
}

/* ----------------------------------- cases ----------------------------------- */

static void test_help(void)
{
    char cmd[4200];

    snprintf(cmd, sizeof(cmd), "'%s' --help >/dev/null", linkemu_path);
    SW_CHECK(system(cmd) == 0);
    snprintf(cmd, sizeof(cmd), "'%s' --listen 127.0.0.1:0 2>/dev/null", linkemu_path);
    SW_CHECK(WEXITSTATUS(system(cmd)) == 2); /* --to missing */
    snprintf(cmd, sizeof(cmd), "'%s' --listen 127.0.0.1:0 --to 127.0.0.1:1 --cut-after-ms 1 "
             "--cut-after-bytes 1 2>/dev/null", linkemu_path);
    SW_CHECK(WEXITSTATUS(system(cmd)) == 2);
}

/* delay 50 ms each way: every echo round trip takes >= 100 ms */
static void test_delay_rtt(void)
{
    struct server s = {0};
    struct emu e = {0};
    const char *args[] = {"--delay-ms", "50", NULL};
    char b = 'x';

    SW_CHECK(server_start(&s, ECHO) == 0);
    SW_CHECK(emu_start(&e, s.port, args) == 0);
    int fd = dial(e.port);
    double worst = 0, best = 1e9;
    for (int i = 0; fd >= 0 && i < 3; i++) {
        double t0 = now_s();
        if (send(fd, &b, 1, 0) != 1 || read_full(fd, &b, 1) < 0)
            break;
        double rtt = now_s() - t0;
        worst = rtt > worst ? rtt : worst;
        best = rtt < best ? rtt : best;
    }
    if (fd >= 0)
        close(fd);
    emu_stop(&e);
    server_stop(&s);
    SW_CHECK(fd >= 0);
    fprintf(stderr, "  rtt best %.1f ms, worst %.1f ms\n", best * 1e3, worst * 1e3);
    SW_CHECK(best >= 0.100 && worst < 2.0);
}

/* 8 Mbit/s: 2 MiB takes >= 2.1 s (less a 64 KiB burst allowance: >= 1.9 s) */
static void test_rate(void)
{
    struct server s = {.ack_after = 2u << 20};
    struct emu e = {0};
    const char *args[] = {"--rate-mbit", "8", NULL};
    size_t n = 2u << 20;
    char *buf = sw_calloc(1, n), ack;

    SW_CHECK(server_start(&s, SINK) == 0);
    SW_CHECK(emu_start(&e, s.port, args) == 0);
    int fd = dial(e.port);
    double t0 = now_s(), dt = -1;
    if (fd >= 0) {
        set_timeout(fd, 30.0);
        if (send(fd, buf, n, MSG_NOSIGNAL) == (ssize_t)n && read_full(fd, &ack, 1) == 0)
            dt = now_s() - t0;
        close(fd);
    }
    emu_stop(&e);
    server_stop(&s);
    sw_free(buf);
    fprintf(stderr, "  2 MiB at 8 Mbit/s: %.2f s\n", dt);
    SW_CHECK(dt >= 1.9 && dt < 20.0);
}

/* --cut-after-bytes: the receiver gets at most N bytes, the sender sees the connection die */
static void test_cut_bytes(void)
{
    struct server s = {0};
    struct emu e = {0};
    const char *args[] = {"--cut-after-bytes", "10000", NULL};
    size_t n = 1u << 20, sent = 0;
    char *buf = sw_calloc(1, n);
    int dead = 0;

    SW_CHECK(server_start(&s, SINK) == 0);
    SW_CHECK(emu_start(&e, s.port, args) == 0);
    int fd = dial(e.port);
    double t0 = now_s();
    if (fd >= 0) {
        set_timeout(fd, 1.0);
        while (sent < 64 * n && now_s() - t0 < 10) { /* until the reset reaches us */
            ssize_t k = send(fd, buf, n, MSG_NOSIGNAL);
            if (k < 0 && (errno == EPIPE || errno == ECONNRESET)) {
                dead = 1;
                break;
            }
            if (k > 0)
                sent += (size_t)k;
        }
        close(fd);
    }
    usleep(100000);
    emu_stop(&e);
    server_stop(&s);
    sw_free(buf);
    fprintf(stderr, "  cut: sender saw the reset after %zu bytes; receiver got %zu\n", sent,
            (size_t)s.received);
    SW_CHECK(dead);
    SW_CHECK(s.received <= 10000 && s.received > 0);
}

/* --cut-after-ms: an idle connection is reset after T ms, not before */
static void test_cut_ms(void)
{
    struct server s = {0};
    struct emu e = {0};
    const char *args[] = {"--cut-after-ms", "300", NULL};
    char b;

    SW_CHECK(server_start(&s, ECHO) == 0);
    SW_CHECK(emu_start(&e, s.port, args) == 0);
    int fd = dial(e.port);
    double t0 = now_s(), dt = -1;
    if (fd >= 0) {
        ssize_t k = recv(fd, &b, 1, 0); /* blocks until the cut (timeout 10 s) */
        if (k == 0 || (k < 0 && errno == ECONNRESET))
            dt = now_s() - t0;
        close(fd);
    }
    emu_stop(&e);
    server_stop(&s);
    fprintf(stderr, "  cut after %.0f ms\n", dt * 1e3);
    SW_CHECK(dt >= 0.29 && dt < 5.0);
}

/* A receiver that never reads: the proxy stops reading too, so the sender stalls after a
 * bounded amount (kernel buffers on both hops plus the proxy's 256 KiB queue cap). */
static void test_bounded_queue(void)
{
    struct server s = {0};
    struct emu e = {0};
    const char *args[] = {"--queue-kib", "256", NULL};
    size_t n = 1u << 20, sent = 0;
    char *buf = sw_calloc(1, n);

    SW_CHECK(server_start(&s, STALL) == 0);
    SW_CHECK(emu_start(&e, s.port, args) == 0);
    int fd = dial(e.port);
    if (fd >= 0) {
        set_timeout(fd, 0.5);
        double t0 = now_s();
        while (now_s() - t0 < 3.0 && sent < (512u << 20)) {
            ssize_t k = send(fd, buf, n, MSG_NOSIGNAL);
            if (k > 0)
                sent += (size_t)k;
            else if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                break;
        }
        close(fd);
    }
    emu_stop(&e);
    server_stop(&s);
    sw_free(buf);
    fprintf(stderr, "  stalled receiver: sender got %.1f MiB out\n", sent / 1048576.0);
    SW_CHECK(sent > 0 && sent < (64u << 20));
}

/* Jitter larger than the gap between messages must not reorder the byte stream. */
static void test_jitter_order(void)
{
    struct server s = {0};
    struct emu e = {0};
    const char *args[] = {"--delay-ms", "20", "--jitter-ms", "15", NULL};
    unsigned char out[4000], in[4000];

    for (size_t i = 0; i < sizeof(out); i++)
        out[i] = (unsigned char)(i * 131 + (i >> 8));
    SW_CHECK(server_start(&s, ECHO) == 0);
    SW_CHECK(emu_start(&e, s.port, args) == 0);
    int fd = dial(e.port), ok = 0;
    if (fd >= 0) {
        for (size_t i = 0; i < sizeof(out); i += 100) { /* 40 separate small writes */
            if (send(fd, out + i, 100, 0) != 100)
                break;
            usleep(2000);
        }
        ok = read_full(fd, in, sizeof(in)) == 0 && memcmp(in, out, sizeof(in)) == 0;
        close(fd);
    }
    emu_stop(&e);
    server_stop(&s);
    SW_CHECK(ok);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: test-linkemu PATH-TO-LINKEMU\n");
        return 2;
    }
    linkemu_path = argv[1];
    signal(SIGPIPE, SIG_IGN);
    SW_RUN(test_help);
    SW_RUN(test_delay_rtt);
    SW_RUN(test_rate);
    SW_RUN(test_cut_bytes);
    SW_RUN(test_cut_ms);
    SW_RUN(test_bounded_queue);
    SW_RUN(test_jitter_order);
    return sw_test_summary("test-linkemu");
}
