/*
 * probe.c - upload measurement between peers (see probe.h). Runs on the node's loop thread.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "p2p/probe.h"
#include "util/alloc.h"
#include "util/error.h"
#include "util/log.h"

/* ---- the sink: reads a payload, answers with an empty message ---- */

static void sink_msg(sw_p2p_call_t *call, sw_p2p_msg_t *m, void *arg)
{
    int *refused = arg;

    (void)call;
    if (m->payload_len > SW_P2P_SINK_MAX)
        *refused = 1;
}

static void sink_end(sw_p2p_call_t *call, int status, const char *error, void *arg)
{
    int *refused = arg;

    (void)status;
    (void)error;
    if (*refused) {
        sw_p2p_call_end(call, SW_ELIMIT, "p2p.sink takes at most 8 MiB");
        return;
    }
    if (sw_p2p_call_send(call, "", 0, NULL, 0, 0) < 0)
        sw_p2p_call_end(call, -EIO, "cannot answer");
    else
        sw_p2p_call_end(call, 0, NULL);
}

static void sink_done(sw_p2p_call_t *call, int status, void *arg)
{
    (void)call;
    (void)status;
    sw_free(arg);
}

static const sw_p2p_call_cbs_t sink_cbs = { sink_msg, sink_end, sink_done, NULL };

static void sink_handler(sw_p2p_call_t *call, const char *method, void *arg)
{
    int *refused = sw_calloc(1, sizeof(int));

    (void)method;
    (void)arg;
    if (!refused) {
        sw_p2p_call_set_cbs(call, &sink_cbs, NULL);
        sw_p2p_call_end(call, -ENOMEM, "out of memory");
        return;
    }
    sw_p2p_call_set_cbs(call, &sink_cbs, refused);
}

int sw_p2p_probe_serve(sw_p2p_node_t *n)
{
    return sw_p2p_node_handle(n, SW_P2P_SINK_METHOD, sink_handler, NULL);
}

/* ---- the measurement ---- */

typedef struct {
    sw_p2p_node_t *node;
    sw_p2p_conn_t *conn;
    char addr[300];
    uint32_t bytes, timeout_ms;
    sw_p2p_probe_cb cb;
    void *arg;
    int phase;          /* 0: empty call, 1: the payload */
    int status, got;
    uint64_t t0;
    double rtt_ns;
} probe_t;

static void probe_call(probe_t *p);
static void probe_connected(sw_p2p_conn_t *conn, int status, void *arg);

static void probe_finish(probe_t *p, int status, double mbps)
{
    p->cb(status, mbps, p->rtt_ns / 1e6, p->arg);
    sw_free(p);
}

static void probe_msg(sw_p2p_call_t *call, sw_p2p_msg_t *m, void *arg)
{
    probe_t *p = arg;

    (void)call;
    (void)m;
    p->got++;
}

static void probe_end(sw_p2p_call_t *call, int status, const char *error, void *arg)
{
    probe_t *p = arg;

    (void)error;
    if (status < 0)
        p->status = status;
    sw_p2p_call_end(call, 0, NULL);
}

static void probe_done(sw_p2p_call_t *call, int status, void *arg)
{
    probe_t *p = arg;
    double ns = (double)(uv_hrtime() - p->t0);

    (void)call;
    if (status < 0 && p->status == 0)
        p->status = status;
    if (p->status == 0 && p->got != 1)
        p->status = SW_EFORMAT;
    if (p->status < 0) {
        probe_finish(p, p->status, 0);
        return;
    }
    if (p->phase == 0) {
        int r;
        p->rtt_ns = ns;
        p->phase = 1;
        /* the same connection (a pinned peer's is handed back), looked up again: the first call's
         * end may have been the connection's */
        if ((r = sw_p2p_connect(p->node, p->addr, probe_connected, p)) < 0)
            probe_finish(p, r, 0);
        return;
    }
    /* the payload's time on the wire: the big call less the round trip of an empty one */
    ns -= p->rtt_ns;
    probe_finish(p, 0, ns > 0 ? (double)p->bytes * 8.0 / (ns / 1e9) / 1e6 : 1e9);
}

static const sw_p2p_call_cbs_t probe_cbs = { probe_msg, probe_end, probe_done, NULL };

static void probe_call(probe_t *p)
{
    sw_p2p_call_t *call = NULL;
    void *payload = NULL;
    size_t len = p->phase ? p->bytes : 0;
    int r;

    if (len && !(payload = sw_calloc(1, len))) {
        probe_finish(p, -ENOMEM, 0);
        return;
    }
    p->got = 0;
    p->t0 = uv_hrtime();
    if ((r = sw_p2p_call_start(p->conn, SW_P2P_SINK_METHOD, p->timeout_ms, &probe_cbs, p, &call)) < 0) {
        sw_free(payload);
        probe_finish(p, r, 0);
        return;
    }
    /* SEND_TAKE: the transport frees the payload (also on failure) */
    if ((r = sw_p2p_call_send(call, "", 0, payload, len, len ? SW_P2P_SEND_TAKE : 0)) < 0 ||
        (r = sw_p2p_call_end(call, 0, NULL)) < 0) {
        p->status = r;
        sw_p2p_call_cancel(call);
        probe_finish(p, r, 0);
    }
}

static void probe_connected(sw_p2p_conn_t *conn, int status, void *arg)
{
    probe_t *p = arg;

    if (status < 0) {
        probe_finish(p, status, 0);
        return;
    }
    p->conn = conn;
    probe_call(p);
}

int sw_p2p_probe_upload(sw_p2p_node_t *n, const char *addr, uint32_t bytes, uint32_t timeout_ms,
                        sw_p2p_probe_cb cb, void *arg)
{
    probe_t *p;
    int r;

    if (bytes == 0 || bytes > SW_P2P_SINK_MAX)
        return sw_err(-EINVAL, "a probe carries 1 to %u bytes, not %u", SW_P2P_SINK_MAX, bytes);
    if (strlen(addr) >= sizeof(((probe_t *)0)->addr))
        return sw_err(-EINVAL, "address too long");
    if (!(p = sw_calloc(1, sizeof(*p))))
        return -ENOMEM;
    p->node = n;
    snprintf(p->addr, sizeof(p->addr), "%s", addr);
    p->bytes = bytes;
    p->timeout_ms = timeout_ms;
    p->cb = cb;
    p->arg = arg;
    if ((r = sw_p2p_connect(n, addr, probe_connected, p)) < 0) {
        sw_free(p);
        return r;
    }
    return 0;
}
