/*
 * probe.h - measuring the upload to a peer, for a server's estimate of its network throughput.
 *
 * A node that serves the "p2p.sink" method (sw_p2p_probe_serve) reads a call's payload, drops it
 * and answers with an empty message. sw_p2p_probe_upload then times two calls to such a peer on
 * one connection: an empty one (the round trip) and one carrying `bytes` of payload; the upload
 * rate is bytes / (t_big - t_empty). It measures the path to that peer, so a node measures to a
 * few peers and keeps the median. Every call happens on the loop thread; callbacks run there.
 */
#ifndef SW_P2P_PROBE_H
#define SW_P2P_PROBE_H

#include <stdint.h>

#include "p2p/rpc.h"

#define SW_P2P_SINK_METHOD "p2p.sink"
#define SW_P2P_SINK_MAX (8u << 20) /* payload bytes a sink accepts per call */

/* Registers "p2p.sink" on n; calls with more than SW_P2P_SINK_MAX bytes are refused. */
int sw_p2p_probe_serve(sw_p2p_node_t *n);

/* status 0 and mbps (megabits per second of payload) and rtt_ms, or an error (the peer does not
 * answer, has no sink, or the deadline passed). */
typedef void (*sw_p2p_probe_cb)(int status, double mbps, double rtt_ms, void *arg);

/* Measures the upload to addr with a payload of bytes (at most SW_P2P_SINK_MAX) within
 * timeout_ms; cb runs exactly once, never before this returns 0. */
int sw_p2p_probe_upload(sw_p2p_node_t *n, const char *addr, uint32_t bytes, uint32_t timeout_ms,
                        sw_p2p_probe_cb cb, void *arg);

#endif
