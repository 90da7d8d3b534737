#!/usr/bin/env bash
# test-serve-reach.sh - `swarmd serve`'s DHT node with real daemons on loopback (llama-gqa-llama3):
#   1. Reachability: a server announcing 127.0.0.1:<a port nothing listens on> is refused after
#      the bootstrap node fails to connect back: exit 1, one line saying clients cannot reach it
#      and what to do (open the port, --announce), and no record of it in the DHT. With
#      --no-reachability-check the same server announces itself and serves; SIGTERM exits 0.
#   2. Saved routing table: two servers (0:2 and 2:4) join through one bootstrap node; s1 stops
#      (SIGTERM: its table file now lists s2), the bootstrap node is SIGKILLed, and s1 restarts
#      with --serve-layers auto and only the dead bootstrap node as --initial-peers: it chooses
#      0:2 (the start-up read goes through the saved contacts) and status read through s2 shows it
#      online again. The same restart with an empty --table fails with the "nor any saved contact"
#      error, so the table is what made it work.
# Every wait is a bounded poll; every process is killed on exit.
name=serve-reach
# shellcheck source=tests/daemons.sh
. "$(dirname "$0")/daemons.sh"

# waits (bounded) for process $1 to exit; its status in $rc (124: still running, then killed)
wait_exit() {
  rc=0
  poll "$2" bash -c "! kill -0 $1 2>/dev/null" || { kill -KILL "$1" 2>/dev/null; rc=124; }
  wait "$1" || rc=$?
}
if ! "$SWARMD" status --help >/dev/null 2>&1; then
  echo "serve-reach: 'swarmd status' is not in this binary's command table; skipped"
  exit 77
fi
model="$SW_SOURCE_ROOT/tests/fixtures/llama-gqa-llama3"

"$SWARMD" --identity "$tmp/boot.id" dht serve --new-swarm --listen 127.0.0.1:0 --table "$tmp/boot.table" \
  --no-reachability-check >"$tmp/boot.log" 2>&1 &
pid_boot=$!
pids+=($!)
if poll 20 grep -q '^address: ' "$tmp/boot.log"; then ok "bootstrap node up"; else bad "bootstrap node up"; finish; fi
boot=$(sed -n 's/^address: //p' "$tmp/boot.log" | head -1)

status() { # status PEER MODEL-NAME
  "$SWARMD" status --initial-peers "$1" --model-name "$2" --num-blocks 4 --timeout 10 >"$tmp/status" 2>&1
}
serve() { # NAME [options...]: a server in the background, log in NAME.log, pid in pid_NAME
  local name=$1
  shift
  "$SWARMD" -v --identity "$tmp/$name.id" serve --model "$model" --listen 127.0.0.1:0 --throughput 1 \
    --refresh 1 --expiry 3 --grace 1 --public-name "$name" "$@" >"$tmp/$name.log" 2>&1 &
  pids+=($!)
  eval "pid_$name=$!"
}

# ---- 1. reachability
dead=$(free_port)
serve u --serve-layers 0:2 --initial-peers "$boot" --announce "127.0.0.1:$dead" --model-name reach-u
# shellcheck disable=SC2154
wait_exit "$pid_u" 30
if [ "$rc" -eq 1 ]; then ok "unreachable --announce: exit 1"; else bad "unreachable --announce: exit 1 (rc $rc)"; fi
if grep -q "no peer could connect back to 127.0.0.1:$dead, so clients cannot reach this server there: open TCP port [0-9]* .*--announce HOST:PORT" "$tmp/u.log"; then
  ok "the refusal says clients cannot reach it and what to do"; else bad "the refusal says clients cannot reach it and what to do"; fi
if [ "$(grep -c 'clients cannot reach' "$tmp/u.log")" -eq 1 ] && ! grep -q 'announced' "$tmp/u.log"; then
  ok "one line, nothing announced"; else bad "one line, nothing announced"; fi
if status "$boot" reach-u && ! grep -q 'name "u"' "$tmp/status"; then ok "no record of u in the DHT"; else bad "no record of u in the DHT"; fi

serve u2 --serve-layers 0:2 --initial-peers "$boot" --announce "127.0.0.1:$dead" --model-name reach-u --no-reachability-check
u2_online() { status "$boot" reach-u && grep -q "online span 0:2 .*name \"u2\"" "$tmp/status"; }
if poll 30 u2_online; then ok "--no-reachability-check: announced online anyway"; else bad "--no-reachability-check: announced online anyway"; fi
# shellcheck disable=SC2154
kill -TERM "$pid_u2"
wait_exit "$pid_u2" 20
if [ "$rc" -eq 0 ] && ! grep -q 'clients cannot reach' "$tmp/u2.log"; then ok "u2 exits 0 on SIGTERM, no refusal"
else bad "u2 exits 0 on SIGTERM, no refusal (rc $rc)"; fi

# ---- 2. the saved routing table
serve s2 --serve-layers 2:4 --initial-peers "$boot"
poll 30 grep -q '^serving blocks' "$tmp/s2.log" || bad "s2 serving"
serve s1 --serve-layers 0:2 --initial-peers "$boot"
online() { status "$1" llama-gqa-llama3 && grep -q "online span $2 .*name \"$3\"" "$tmp/status"; }
if poll 30 online "$boot" 0:2 s1 && poll 30 online "$boot" 2:4 s2; then ok "s1 and s2 online"; else bad "s1 and s2 online"; fi
if grep -q "DHT: 0 saved contacts from $tmp/s1.id.dht-table" "$tmp/s1.log"; then
  ok "default table beside the identity (IDENTITY.dht-table), empty at first"; else bad "default table beside the identity"; fi
# shellcheck disable=SC2154
kill -TERM "$pid_s1"
wait_exit "$pid_s1" 20
[ "$rc" -eq 0 ] || bad "s1 exits 0 on SIGTERM (rc $rc)"
s2_id=$(sed -n 's/^serving blocks [0-9:]* of .* at \([^@]*\)@.*/\1/p' "$tmp/s2.log" | head -1)
s2_addr=$(sed -n 's/^serving blocks [0-9:]* of .* at //p' "$tmp/s2.log" | head -1)
if [ -n "$s2_id" ] && head -1 "$tmp/s1.id.dht-table" | grep -q '^swarmd-dht-table 1$' &&
   grep -q "^$s2_id 127.0.0.1:" "$tmp/s1.id.dht-table"; then
  ok "s1's table file, written at exit, lists s2"; else bad "s1's table file, written at exit, lists s2"; fi
# shellcheck disable=SC2154
{ kill -KILL "$pid_boot"; wait "$pid_boot"; } 2>/dev/null

# without a saved table the restart cannot find the swarm
serve s1b --serve-layers auto --num-blocks 2 --block-selection-delay 0 --initial-peers "$boot" --table "$tmp/empty.table"
# shellcheck disable=SC2154
wait_exit "$pid_s1b" 30
if [ "$rc" -eq 1 ] && grep -q 'none of the initial peers (nor any saved contact) answered' "$tmp/s1b.log"; then
  ok "control: with an empty --table and the bootstrap node dead, auto cannot read the swarm"
else bad "control: with an empty --table and the bootstrap node dead, auto cannot read the swarm (rc $rc)"; fi

# the same restart with s1's identity (and so its saved table)
serve s1 --serve-layers auto --num-blocks 2 --block-selection-delay 0 --initial-peers "$boot"
if poll 30 grep -q '^serving blocks 0:2' "$tmp/s1.log"; then ok "restarted s1 chose 0:2 through its saved contacts"
else bad "restarted s1 chose 0:2 through its saved contacts"; fi
if grep -q 'auto: reading the swarm through 1 initial peers and [1-9][0-9]* saved contacts' "$tmp/s1.log" &&
   grep -q "DHT: [1-9][0-9]* saved contacts from $tmp/s1.id.dht-table" "$tmp/s1.log"; then
  ok "the saved contacts were loaded"; else bad "the saved contacts were loaded"; fi
if poll 30 online "$s2_addr" 0:2 s1; then ok "restarted s1 online again, read through s2 (its initial peer is dead)"
else bad "restarted s1 online again, read through s2"; fi

for n in s1 s2; do
  eval "p=\$pid_$n"
  # shellcheck disable=SC2154
  kill -TERM "$p"
  wait_exit "$p" 20
  if [ "$rc" -eq 0 ]; then ok "$n exits 0 on SIGTERM"; else bad "$n exits 0 on SIGTERM (rc $rc)"; fi
done
finish
