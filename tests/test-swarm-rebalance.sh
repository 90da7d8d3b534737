#!/usr/bin/env bash
# test-swarm-rebalance.sh - rebalancing with real daemons on loopback (llama-gqa-llama3, 4 blocks):
# one bootstrap DHT node; four servers with --serve-layers auto started one after another (2, 1, 1
# and 2 blocks, --throughput 1) cover every block as 0:2, 2:3, 3:4, 0:2; the only server of block 2
# is killed with SIGKILL: within its records' expiry plus a rebalance period the second server of
# 0:2 moves to 1:3 (--move-mode offline: old span offline, drained, freed, then the new one loads)
# and the swarm has no gap again; two more servers of 1 block each take the weakest blocks (Petals'
# rule, computed here from status --json); the servers of 3:4 and 1:3 are killed: the one server
# whose block is covered twice moves to 3:4 online (new span loaded and announced before the old
# one is dropped);
# SIGTERM to all: each exits 0 (under ASan: no leaks, retired spans freed). Short --refresh,
# --expiry and --rebalance-period keep it to about 25 s; every wait is a bounded poll.
name=swarm-rebalance
# shellcheck source=tests/daemons.sh
. "$(dirname "$0")/daemons.sh"

if ! "$SWARMD" status --help >/dev/null 2>&1; then
  echo "swarm-rebalance: 'swarmd status' is not in this binary's command table; skipped"
  exit 77
fi
model="$SW_SOURCE_ROOT/tests/fixtures/llama-gqa-llama3"

"$SWARMD" --identity "$tmp/boot.id" dht serve --new-swarm --listen 127.0.0.1:0 --table "$tmp/boot.table" \
  --no-reachability-check >"$tmp/boot.log" 2>&1 &
pids+=($!)
if poll 20 grep -q '^address: ' "$tmp/boot.log"; then ok "bootstrap node up"; else bad "bootstrap node up"; finish; fi
boot=$(sed -n 's/^address: //p' "$tmp/boot.log" | head -1)

status() { "$SWARMD" status --initial-peers "$boot" --model-name llama-gqa-llama3 --num-blocks 4 --timeout 10 "$@" >"$tmp/status" 2>/dev/null; }
online() { status && grep -q "online span $1 .*name \"$2\"" "$tmp/status"; }
start() { # NAME NUM_BLOCKS [OPTIONS]
  local name=$1 n=$2
  shift 2
  "$SWARMD" -v --identity "$tmp/$name.id" serve --model "$model" --serve-layers auto --num-blocks "$n" \
    --block-selection-delay 0 --throughput 1 --refresh 1 --expiry 3 --rebalance-period 1 --move-grace 1 \
    --grace 1 --listen 127.0.0.1:0 --initial-peers "$boot" --public-name "$name" "$@" >"$tmp/$name.log" 2>&1 &
  pids+=($!)
  eval "pid_$name=$!"
}
span_of() { sed -n 's/^serving blocks \([0-9]*:[0-9]*\) .*/\1/p' "$tmp/$1.log" | tail -1; }
# starts NAME with N blocks and waits until it is online at the span it printed
start_wait() {
  start "$@"
  if ! poll 30 grep -q '^serving blocks' "$tmp/$1.log"; then bad "$1 serving"; return 1; fi
  local s
  s=$(span_of "$1")
  if poll 20 online "$s" "$1"; then ok "$1 online at $s"; else bad "$1 online at $s"; return 1; fi
}

# s1 never moves, so that s4 is the one that fills the gap below, the old span dropped first
start_wait s1 2 --balance-quality 0
start_wait s2 1
start_wait s3 1
start_wait s4 2 --move-mode offline
layout="$(span_of s1) $(span_of s2) $(span_of s3) $(span_of s4)"
if [ "$layout" = "0:2 2:3 3:4 0:2" ]; then ok "four auto servers: 0:2 2:3 3:4 0:2"; else bad "four auto servers: 0:2 2:3 3:4 0:2 (got $layout)"; fi
if status && grep -q '^gaps: none' "$tmp/status"; then ok "every block covered"; else bad "every block covered"; fi

# shellcheck disable=SC2154
kill -KILL "$pid_s2"
t0=$SECONDS
healed() { status && grep -q '^gaps: none' "$tmp/status" && ! grep -q 'online span 2:3' "$tmp/status"; }
healed2() { status && grep -q '^gaps: none' "$tmp/status" && ! grep -q -e 'online span .*name "s3"' -e 'online span .*name "s4"' "$tmp/status"; }
if poll 40 healed; then ok "after SIGKILL of 2:3: no gap again ($((SECONDS - t0)) s; expiry 3 s, rebalance ~1 s)"
else bad "after SIGKILL of 2:3: no gap again"; fi
if grep -q 'moved (offline): now blocks 1:3' "$tmp/s4.log"; then ok "s4 moved 0:2 -> 1:3 (offline, then load)"
else bad "s4 moved 0:2 -> 1:3 (offline, then load)"; fi
if grep -q 'rebalance: swarm balance quality 0.0%' "$tmp/s4.log"; then
  ok "the move saw quality 0% (a gap)"; else bad "the move saw quality 0% (a gap)"; fi

# Two more servers of one block: each takes the weakest block (Petals: the lexicographically
# smallest sorted window, then the smallest start) of the swarm as status shows it before.
weakest() {
  status --json || return 1
  python3 - "$tmp/status" <<'PY'
import json, sys
d = json.loads([l for l in open(sys.argv[1]) if l.startswith("{")][-1])
thr = [0.0] * d["num_blocks"]
seen = {}
for b in d["blocks"]:
    for s in b["servers"]:
        if s["state"] in ("joining", "online"):
            seen[s["peer"]] = (s["start"], s["end"], s["throughput"])
for a, e, t in seen.values():
    for i in range(a, e):
        thr[i] += t
best = min(range(len(thr)), key=lambda i: (thr[i], i))
print("%d:%d" % (best, best + 1))
PY
}
for n in s5 s6; do
  want=$(weakest)
  start_wait "$n" 1
  got=$(span_of "$n")
  if [ -n "$want" ] && [ "$got" = "$want" ]; then ok "$n took the weakest block $want"; else bad "$n took the weakest block $want (got $got)"; fi
done
if status && grep -q '^gaps: none' "$tmp/status"; then ok "six servers, no gap"; else bad "six servers, no gap"; fi
layout="$(span_of s1) $(span_of s3) $(span_of s4) $(span_of s5) $(span_of s6)"
if [ "$layout" = "0:2 3:4 1:3 0:1 2:3" ]; then ok "layout 0:2 3:4 1:3 0:1 2:3"; else bad "layout 0:2 3:4 1:3 0:1 2:3 (got $layout)"; fi

# s3 (3:4) and s4 (1:3) go: block 3 has no server; s6 is the only one of block 2 and s1 of block
# 1, so s5 (0:1, block 0 also on s1) is the one to move there, loading 3:4 before it drops 0:1.
# shellcheck disable=SC2154
kill -KILL "$pid_s3" "$pid_s4"
t0=$SECONDS
if poll 40 healed2; then ok "after SIGKILL of 3:4 and 1:3: no gap again ($((SECONDS - t0)) s)"; else bad "after SIGKILL of 3:4 and 1:3: no gap again"; fi
# Usually s5 moves 0:1 -> 3:4. When s4's records have not expired yet, s6 may see block 2 still
# held by s4 and move 2:3 -> 3:4 itself, and s5 then fills block 2: also healed, also online moves.
if grep -q 'moved: blocks 0:1 -> 3:4' "$tmp/s5.log" ||
   { grep -q 'moved: blocks 2:3 -> 3:4' "$tmp/s6.log" && grep -q 'moved: blocks 0:1 -> 2:3' "$tmp/s5.log"; }; then
  ok "block 3 taken by an online move (s5 0:1 -> 3:4, or s6 2:3 -> 3:4 and s5 0:1 -> 2:3)"
else bad "block 3 taken by an online move"; fi

for n in s1 s5 s6; do eval "kill -TERM \$pid_$n"; done
for n in s1 s5 s6; do
  rc=0
  eval "p=\$pid_$n"
  # shellcheck disable=SC2154
  poll 20 bash -c "! kill -0 $p 2>/dev/null" || rc=124
  wait "$p" || rc=$?
  if [ "$rc" -eq 0 ]; then ok "$n exited 0"; else bad "$n exited 0 (rc $rc)"; fi
done
finish
