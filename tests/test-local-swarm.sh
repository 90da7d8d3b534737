#!/usr/bin/env bash
# test-local-swarm.sh - deploy/local-swarm: started in the background with 3 servers of the bundled
# model, it prints the status once every block is served; a generation through that swarm gives the
# ids --local gives; SIGINT to the script stops every server and the bootstrap node, each exits 0,
# the script exits 0 and says so. Bounded waits only.
set -u
: "${SWARMD:?}"
: "${SW_SOURCE_ROOT:?}"
pass=0
fail=0
tmp=$(mktemp -d)
export SWARMD_CACHE_DIR="$tmp/cache"
lpid=
cleanup() {
  exec 2>/dev/null
  [ -n "$lpid" ] && kill -KILL "$lpid"
  for p in $(cat "$tmp/swarm/pids" 2>/dev/null); do kill -KILL "$p"; done # what the script started
  wait
  rm -rf "$tmp"
}
trap cleanup EXIT
ok() { pass=$((pass + 1)); echo "ok - $1"; }
bad() {
  fail=$((fail + 1)); echo "not ok - $1"
  for f in "$tmp/out" "$tmp"/swarm/*.log; do [ -s "$f" ] && { echo "    $f:"; sed 's/^/    | /' "$f" | tail -15; }; done
}
poll() { local end=$((SECONDS + $1)); shift; while [ "$SECONDS" -le "$end" ]; do "$@" && return 0; sleep 0.2; done; return 1; }
finish() { echo "local-swarm: $pass passed, $fail failed"; [ "$fail" -eq 0 ]; exit $?; }
if ! "$SWARMD" status --help >/dev/null 2>&1; then echo "local-swarm: no 'swarmd status'; skipped"; exit 77; fi

# job control: the script runs in its own process group with SIGINT not ignored, as in a terminal
# (a non-interactive shell starts background jobs with SIGINT ignored, and bash cannot trap that)
set -m
"$SW_SOURCE_ROOT/deploy/local-swarm" -n 3 --swarmd "$SWARMD" --dir "$tmp/swarm" --keep --timeout 60 \
  -- --throughput 1 --block-selection-delay 0.3 >"$tmp/out" 2>&1 &
lpid=$!
set +m
if poll 90 grep -q 'every block is served' "$tmp/out"; then ok "every block served"; else bad "every block served"; finish; fi
if grep -q '^gaps: none' "$tmp/out" && grep -q '^block 3: ' "$tmp/out"; then ok "status printed"; else bad "status printed"; fi
nserv=$(grep -c '^serving blocks' "$tmp"/swarm/server*.log | awk -F: '{s+=$2} END{print s}')
if [ "$nserv" -eq 3 ]; then ok "3 servers serving"; else bad "3 servers serving ($nserv)"; fi
boot=$(sed -n 's/^local-swarm: bootstrap node //p' "$tmp/out")
model="$SW_SOURCE_ROOT/tests/fixtures/llama-gqa-llama3"
want=$("$SWARMD" generate --local --model "$model" --prompt-ids 1,15,300,42 --max-new-tokens 6 2>/dev/null)
got=$("$SWARMD" generate --initial-peers "$boot" --model "$model" --prompt-ids 1,15,300,42 --max-new-tokens 6 2>"$tmp/gen.err")
if [ -n "$want" ] && [ "$got" = "$want" ]; then ok "generate through the local swarm == --local ($got)"
else bad "generate through the local swarm == --local (want '$want', got '$got')"; sed 's/^/    | /' "$tmp/gen.err" | tail -5; fi

kill -INT "$lpid"
rc=0
if poll 40 bash -c "! kill -0 $lpid 2>/dev/null"; then wait "$lpid" || rc=$?; else rc=124; fi
lpid=
if [ "$rc" -eq 0 ]; then ok "local-swarm exited 0 after SIGINT"; else bad "local-swarm exited 0 after SIGINT (rc $rc)"; fi
if grep -q 'all 4 processes stopped cleanly' "$tmp/out"; then ok "every process stopped cleanly"; else bad "every process stopped cleanly"; fi
left=0
for p in $(cat "$tmp/swarm/pids" 2>/dev/null); do kill -0 "$p" 2>/dev/null && left=$((left + 1)); done
if [ -s "$tmp/swarm/pids" ] && [ "$left" -eq 0 ]; then ok "no process left"; else bad "no process left ($left)"; fi
finish
