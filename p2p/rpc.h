/*
 * rpc.h - secure connections between peers, with calls and streams multiplexed over them.
 *
 * A node owns a libuv loop's share of the p2p layer: listeners, connections (one per pair of peers,
 * authenticated and encrypted by handshake.h and frame.h), and the method handlers it serves. Every
 * function here must be called on the loop's thread, and every callback runs on it.
 *
 * Calls. A call is a two-way channel of messages opened by one side with a method name. Each side
 * sends messages (a small protobuf body plus an optional raw payload of up to max_message bytes) and
 * then ends its half with a status; the call completes when both halves have ended, when either side
 * cancels, when its deadline passes or when the connection drops. A unary call is one message and
 * the end from each side; a stream is any number of messages.
 *
 * Flow control. Each call's receiver has a window (bytes); a sender starts a message only while it
 * has credit, and gets credit back as the receiver's application consumes messages. A paused
 * receiver (sw_p2p_call_pause) thus stalls that call's sender, which stops accepting sends when its
 * per-call send buffer (send_buffer bytes) is full: sw_p2p_call_send then returns -EAGAIN, and
 * on_writable says when to go on. A connection-wide window bounds all calls together. So the memory a
 * connection holds is bounded on both ends whatever the peer does.
 *
 * Limits. Connections overall and per remote address, frame, header and message sizes, calls in
 * flight per peer, a handshake timeout and an idle timeout: a violation closes that connection with
 * a log line (component "p2p"); the node goes on.
 */
#ifndef SW_P2P_RPC_H
#define SW_P2P_RPC_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "p2p/identity.h"

typedef struct sw_p2p_node sw_p2p_node_t;
typedef struct sw_p2p_conn sw_p2p_conn_t;
typedef struct sw_p2p_call sw_p2p_call_t;

typedef struct {
    uint32_t max_conns;            /* connections overall (inbound + outbound) */
    uint32_t max_conns_per_addr;   /* inbound connections from one IP address (loopback peers: see below) */
    int per_addr_loopback;         /* apply max_conns_per_addr to loopback peers too (default 0: every
                                      server of a swarm on one machine connects from 127.0.0.1) */
    uint32_t max_frame;            /* bytes of a received frame after its prefix */
    uint32_t max_header;           /* bytes of a received Envelope */
    uint64_t max_message;          /* payload bytes of one received message */
    uint32_t max_calls;            /* calls a peer may have open towards us at once */
    uint32_t window;               /* per-call receive window, bytes */
    uint32_t conn_window;          /* per-connection receive window, bytes */
    uint32_t send_buffer;          /* per-call cap on bytes queued for sending */
    uint32_t handshake_timeout_ms; /* a peer that has not finished the handshake by then is dropped */
    uint32_t keepalive_ms;         /* ping interval (0: no pings) */
    uint32_t idle_timeout_ms;      /* drop a connection silent for this long (0: never) */
} sw_p2p_limits_t;

/* Defaults: 256 conns, 8 per address (not counted for loopback peers), 1 MiB frames, 64 KiB headers, 256 MiB messages, 1024 calls,
 * 16 MiB / 64 MiB windows, 8 MiB send buffer, 10 s handshake, 15 s keepalive, 60 s idle. */
void sw_p2p_limits_default(sw_p2p_limits_t *l);

/* A received message. payload stays valid until the callback returns unless taken. */
typedef struct {
    const uint8_t *body;
    size_t body_len;
    uint8_t *payload;
    size_t payload_len;
} sw_p2p_msg_t;

/* Takes ownership of the payload (the caller frees it with sw_free); NULL when there is none. */
uint8_t *sw_p2p_msg_take_payload(sw_p2p_msg_t *m);

typedef struct {
    /* A message from the peer. */
    void (*on_msg)(sw_p2p_call_t *call, sw_p2p_msg_t *msg, void *arg);
    /* The peer ended its half; status and error are what it sent (error "" when none). Optional. */
    void (*on_end)(sw_p2p_call_t *call, int status, const char *error, void *arg);
    /* The call is over: status 0, or the peer's end status, -ECANCELED (the peer cancelled),
     * -ETIMEDOUT (deadline), -ECONNRESET (connection lost) or a protocol error. The last callback;
     * the call is freed after it returns. */
    void (*on_done)(sw_p2p_call_t *call, int status, void *arg);
    /* The send buffer has room again after sw_p2p_call_send returned -EAGAIN. Optional. */
    void (*on_writable)(sw_p2p_call_t *call, void *arg);
} sw_p2p_call_cbs_t;

/* A server's handler: a peer opened a call to `method`. It must set callbacks with
 * sw_p2p_call_set_cbs before returning (the first message follows as on_msg). */
typedef void (*sw_p2p_handler_fn)(sw_p2p_call_t *call, const char *method, void *arg);

/* Connection events: ready (status 0, after the handshake) and closed (status says why). */
typedef struct {
    void (*on_ready)(sw_p2p_conn_t *conn, void *arg);
    void (*on_closed)(sw_p2p_conn_t *conn, int status, void *arg);
} sw_p2p_node_cbs_t;

/*
 * Creates a node on `loop` with identity `id` (must outlive the node), optional 32-byte swarm key
 * (copied), and limits (NULL: defaults). Free with sw_p2p_node_close().
 */
int sw_p2p_node_new(uv_loop_t *loop, const sw_identity_t *id, const uint8_t *swarm_key,
                    const sw_p2p_limits_t *limits, sw_p2p_node_t **out);
void sw_p2p_node_set_cbs(sw_p2p_node_t *n, const sw_p2p_node_cbs_t *cbs, void *arg);

/* Closes every listener, connection and call (calls complete with -ECONNRESET), then calls done
 * (may be NULL) and frees the node, after the loop has run the close callbacks. */
void sw_p2p_node_close(sw_p2p_node_t *n, void (*done)(void *arg), void *arg);

/* Listens on host ("0.0.0.0", "::", "127.0.0.1", "::1"...) and port (0: any); *port_out gets the
 * bound port. Up to 4 listeners per node. */
int sw_p2p_node_listen(sw_p2p_node_t *n, const char *host, int port, int *port_out);

/* Registers the handler for `method` (copied; at most 64 printable characters). A later
 * registration of the same method takes the calls opened from then on. */
int sw_p2p_node_handle(sw_p2p_node_t *n, const char *method, sw_p2p_handler_fn fn, void *arg);
/* Removes every handler registered with `arg` (e.g. a server being freed while the node goes on);
 * calls already open keep their callbacks. Returns how many were removed. */
int sw_p2p_node_unhandle(sw_p2p_node_t *n, const void *arg);

/*
 * Connects to addr (see sw_addr_parse); cb runs once with the ready connection or NULL and an error.
 * When a connection to the pinned peer already exists it is handed back instead. Never calls cb
 * before returning.
 */
typedef void (*sw_p2p_connect_cb)(sw_p2p_conn_t *conn, int status, void *arg);
int sw_p2p_connect(sw_p2p_node_t *n, const char *addr, sw_p2p_connect_cb cb, void *arg);

/* The connected peer's proven id. */
const sw_peer_id_t *sw_p2p_conn_peer(const sw_p2p_conn_t *c);
/* Last keepalive round-trip time in milliseconds, or -1 before the first pong. */
double sw_p2p_conn_rtt_ms(const sw_p2p_conn_t *c);
/* Sends a ping now (the pong updates the RTT). */
int sw_p2p_conn_ping(sw_p2p_conn_t *c);
/* Bytes this connection holds for sending: queued messages of all calls plus sealed frames not yet
 * written to the socket. */
size_t sw_p2p_conn_queued_bytes(const sw_p2p_conn_t *c);
/* Bytes this connection holds of received messages not yet consumed. */
size_t sw_p2p_conn_buffered_bytes(const sw_p2p_conn_t *c);
/* Closes the connection (calls complete with -ECONNRESET); on_closed follows. */
void sw_p2p_conn_close(sw_p2p_conn_t *c);

/*
 * Opens a call to `method` on conn. deadline_ms 0: none (the peer learns the deadline too). The
 * call's messages are sent with sw_p2p_call_send. SW_ELIMIT when the peer's limit of calls in flight
 * is reached; SW_ESTATE when the connection is closing.
 */
int sw_p2p_call_start(sw_p2p_conn_t *c, const char *method, uint64_t deadline_ms,
                      const sw_p2p_call_cbs_t *cbs, void *arg, sw_p2p_call_t **out);
void sw_p2p_call_set_cbs(sw_p2p_call_t *call, const sw_p2p_call_cbs_t *cbs, void *arg);

#define SW_P2P_SEND_TAKE 1u /* the payload was allocated with sw_malloc; the call frees it */
/*
 * Queues a message. body is copied; payload is copied, or taken with SW_P2P_SEND_TAKE (and freed
 * even on failure). -EAGAIN when the call's send buffer is full (an empty buffer takes any message),
 * SW_ELIMIT over the peer's message limit, SW_ESTATE after end/cancel.
 */
int sw_p2p_call_send(sw_p2p_call_t *call, const void *body, size_t body_len, void *payload,
                     size_t payload_len, unsigned flags);
/*
 * Queues a message without copying its payload: the transport seals straight from payload, which
 * must stay valid and unchanged until release(payload, release_arg) runs. release (may be NULL) is
 * called exactly once, on the loop thread: when the last byte has been sealed, when the call or the
 * connection ends first, or before this function returns an error (-EAGAIN included). Errors as
 * sw_p2p_call_send.
 */
typedef void (*sw_p2p_release_fn)(void *payload, void *arg);
int sw_p2p_call_send_ref(sw_p2p_call_t *call, const void *body, size_t body_len, const void *payload,
                         size_t payload_len, sw_p2p_release_fn release, void *release_arg);
/* Ends this side's half with status (0 or negative) and an optional error text. */
int sw_p2p_call_end(sw_p2p_call_t *call, int status, const char *error);
/* Abandons the call: the peer is told, and no callback runs for it any more. */
void sw_p2p_call_cancel(sw_p2p_call_t *call);
/* Pauses (1) or resumes (0) delivery of this call's messages; a paused call holds at most its
 * window of received bytes (plus one message) and its sender stalls. */
void sw_p2p_call_pause(sw_p2p_call_t *call, int paused);
/* Bytes queued for sending on this call. */
size_t sw_p2p_call_queued_bytes(const sw_p2p_call_t *call);
sw_p2p_conn_t *sw_p2p_call_conn(sw_p2p_call_t *call);

/* Counters, for tests and metrics. */
typedef struct {
    uint64_t conns_accepted, conns_refused, handshakes_ok, handshakes_failed, handshake_timeouts;
    uint64_t auth_failures, violations, frames_in, frames_out;
} sw_p2p_stats_t;
void sw_p2p_node_stats(const sw_p2p_node_t *n, sw_p2p_stats_t *out);
uint32_t sw_p2p_node_conn_count(const sw_p2p_node_t *n);

#endif
