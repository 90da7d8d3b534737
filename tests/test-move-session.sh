#!/usr/bin/env bash
# test-move-session.sh - an inference session stays open across its server's online move (real
# daemons on loopback, llama-gqa-llama3, 4 blocks; issue #6: "load the new span and announce it
# before dropping the old one, so no session is cut by the move").
#   A serves 0:2 (--throughput 1) behind the link emulator (40 ms each way), so each step takes
#   over 80 ms; M (--serve-layers auto, --throughput 5, --move-mode online) starts next and takes
#   the gap 2:4. A greedy generation runs A -> M. Once it is under way the client is stopped
#   (SIGSTOP), so that the move surely falls inside the session, and B starts on 2:4 with
#   --throughput 10: Petals' criterion now tells M to move to 0:2 (bottleneck 1 -> 6). When M's
#   log says it moved online, the client continues (SIGCONT): its remaining steps go to M's old,
#   retiring span. The generation must end with the ids of `generate --local` and without any
#   failover ("failed at position"). A new generation then routes 2:4 through B. SIGTERM: each
#   server exits 0.
# Every wait is a bounded poll; every process is killed on exit.
name=move-session
# shellcheck source=tests/daemons.sh
. "$(dirname "$0")/daemons.sh"
linkemu=${1:?usage: test-move-session.sh LINKEMU}

if ! "$SWARMD" status --help >/dev/null 2>&1; then
  echo "move-session: 'swarmd status' is not in this binary's command table; skipped"
  exit 77
fi
model="$SW_SOURCE_ROOT/tests/fixtures/llama-gqa-llama3"
prompt=1,15,300,42,7,99
n=32

"$SWARMD" --identity "$tmp/boot.id" dht serve --new-swarm --listen 127.0.0.1:0 --table "$tmp/boot.table" \
  --no-reachability-check >"$tmp/boot.log" 2>&1 &
pids+=($!)
if poll 20 grep -q '^address: ' "$tmp/boot.log"; then ok "bootstrap node up"; else bad "bootstrap node up"; finish; fi
boot=$(sed -n 's/^address: //p' "$tmp/boot.log" | head -1)

serve() { # NAME [options...]
  local name=$1
  shift
  "$SWARMD" -v --identity "$tmp/$name.id" serve --model "$model" --initial-peers "$boot" --public-name "$name" \
    --refresh 1 --expiry 3 --grace 1 --max-cache-tokens 4096 "$@" >"$tmp/$name.log" 2>&1 &
  pids+=($!)
  eval "pid_$name=$!"
}
online() { # online SPAN NAME
  "$SWARMD" status --initial-peers "$boot" --model-name llama-gqa-llama3 --num-blocks 4 --timeout 10 \
    >"$tmp/status" 2>&1 && grep -q "online span $1 .*name \"$2\"" "$tmp/status"
}
ntok() { tr ',' '\n' <"$1" | grep -c '[0-9]'; }

# A listens on a port chosen here, since the link emulator in front of it must know it first: a
# port taken between the check and the bind is retried with another
for try in 1 2 3 4 5; do
  port_a=$(free_port)
  "$linkemu" --listen 127.0.0.1:0 --to "127.0.0.1:$port_a" --delay-ms 40 >"$tmp/a.port" 2>"$tmp/a.emu" &
  pid_emu=$!
  pids+=($!)
  poll 10 test -s "$tmp/a.port" || { bad "link emulator for A"; finish; }
  proxy_a=$(head -1 "$tmp/a.port")
  serve A --serve-layers 0:2 --throughput 1 --listen "127.0.0.1:$port_a" --announce "127.0.0.1:$proxy_a"
  # shellcheck disable=SC2154
  poll 30 bash -c "grep -q '^serving blocks' '$tmp/A.log' || ! kill -0 $pid_A 2>/dev/null"
  grep -q 'address already in use' "$tmp/A.log" || break
  echo "# port $port_a was taken (try $try)"
  { kill -KILL "$pid_emu"; wait "$pid_A" "$pid_emu"; } 2>/dev/null
done
if poll 30 online 0:2 A; then ok "A online at 0:2 (behind the link emulator)"; else bad "A online at 0:2"; finish; fi
serve M --serve-layers auto --num-blocks 2 --block-selection-delay 0 --throughput 5 --listen 127.0.0.1:0 \
  --rebalance-period 0.5 --move-mode online --move-grace 60
if poll 30 online 2:4 M; then ok "M (auto) took the gap 2:4"; else bad "M (auto) took the gap 2:4"; finish; fi

"$SWARMD" generate --local --model "$model" --prompt-ids "$prompt" --max-new-tokens "$n" --greedy >"$tmp/local" 2>&1 ||
  bad "generate --local"
"$SWARMD" generate --model "$model" --initial-peers "$boot" --prompt-ids "$prompt" --max-new-tokens "$n" \
  --compress none --greedy --show-route >"$tmp/gen1" 2>"$tmp/gen1.err" &
genpid=$!
pids+=($genpid)
if poll 30 bash -c "[ \$(tr ',' '\n' <'$tmp/gen1' | grep -c '[0-9]') -ge 3 ]"; then
  kill -STOP "$genpid"
  got=$(ntok "$tmp/gen1")
  if [ "$got" -lt "$n" ]; then ok "the session is open and stopped after $got of $n tokens"
  else bad "the session is still open when stopped ($got of $n tokens: the link emulator did not slow it enough)"; fi
else
  bad "generation under way"
fi

serve B --serve-layers 2:4 --throughput 10 --listen 127.0.0.1:0
t0=$SECONDS
if poll 30 grep -q 'moved: blocks 2:4 -> 0:2' "$tmp/M.log"; then ok "M moved 2:4 -> 0:2 online ($((SECONDS - t0)) s after B started)"
else bad "M moved 2:4 -> 0:2 online"; fi
if grep -q 'moving blocks 2:4 -> 0:2: loading the new span first' "$tmp/M.log" && ! grep -q 'moved (offline)' "$tmp/M.log"; then
  ok "the new span was loaded before the old one was dropped"; else bad "the new span was loaded before the old one was dropped"; fi
if ! grep -q 'old span 2:4 is retired' "$tmp/M.log"; then ok "the old span waits for the open session"
else bad "the old span waits for the open session"; fi
kill -CONT "$genpid"
if poll 30 online 0:2 M; then ok "status: M online at 0:2"; else bad "status: M online at 0:2"; fi
rc=0
poll 60 bash -c "! kill -0 $genpid 2>/dev/null" || { rc=124; kill -KILL "$genpid"; }
wait "$genpid" || rc=$?
if [ "$rc" -eq 0 ] && [ -s "$tmp/local" ] && cmp -s "$tmp/gen1" "$tmp/local"; then
  ok "the generation across the move completed with the ids of --local"
else echo "    rc $rc"; bad "the generation across the move completed with the ids of --local"; fi
if grep -q 'route: 0:2 via .*(A).*, 2:4 via .*(M)' "$tmp/gen1.err"; then ok "its route was A -> M"; else bad "its route was A -> M"; fi
if ! grep -q -e 'failed at position' -e 'replaying' "$tmp/gen1.err"; then
  ok "no failover: M's old span kept serving the open session"; else bad "no failover: M's old span kept serving the open session"; fi
if poll 10 grep -q 'old span 2:4 is retired' "$tmp/M.log" && ! grep -q 'grace period over' "$tmp/M.log"; then
  ok "M's old span retired once the session ended, no step cut"; else bad "M's old span retired once the session ended, no step cut"; fi

if "$SWARMD" generate --model "$model" --initial-peers "$boot" --prompt-ids "$prompt" --max-new-tokens 8 \
     --compress none --greedy --show-route >"$tmp/gen2" 2>"$tmp/gen2.err" &&
   cmp -s "$tmp/gen2" <(cut -d, -f1-8 "$tmp/local") && grep -q 'route: 0:2 via .*, 2:4 via .*(B)' "$tmp/gen2.err"; then
  ok "a new session after the move: 2:4 via B, ids of --local"; else bad "a new session after the move: 2:4 via B, ids of --local"; fi

# shellcheck disable=SC2154
kill -TERM "$pid_A" "$pid_M" "$pid_B"
for s in A M B; do
  eval "p=\$pid_$s"
  rc=0
  # shellcheck disable=SC2154
  poll 20 bash -c "! kill -0 $p 2>/dev/null" || rc=124
  wait "$p" || rc=$?
  if [ "$rc" -eq 0 ]; then ok "$s exited 0"; else bad "$s exited 0 (rc $rc)"; fi
done
finish
