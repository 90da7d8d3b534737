/*
 * rpc_internal.h - test hooks of rpc.c, not part of the API.
 */
#ifndef SW_P2P_RPC_INTERNAL_H
#define SW_P2P_RPC_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "p2p/rpc.h"

/*
 * Called with every sealed frame just before it is queued for writing (after the handshake). The
 * hook may modify the bytes in place (a man in the middle flipping a byte) and returns how many times
 * the frame goes out: 1 normally, 2 to replay it right after itself. NULL: no hook.
 */
typedef int (*sw_p2p_tx_hook_fn)(sw_p2p_conn_t *c, uint8_t *frame, size_t len);
extern sw_p2p_tx_hook_fn sw_p2p_test_tx_hook;

/*
 * Makes this side ignore the calls-in-flight limit the peer announced, as a misbehaving peer
 * would, so tests can check that the peer enforces it.
 */
void sw_p2p_test_ignore_peer_call_limit(sw_p2p_conn_t *c);

#endif
