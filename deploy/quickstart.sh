#!/usr/bin/env bash
# quickstart.sh - installs what swarmd needs, builds it, and runs the bundled tiny model (a
# random-init Llama with GQA and llama3 RoPE from tests/fixtures/) as a swarm on this machine:
# deploy/local-swarm starts a DHT bootstrap node and three servers on loopback that pick their
# blocks themselves; `swarmd generate` then runs through them, printing the route it takes, and
# the same generation in one process (--local) shows the ids are the same. The swarm is stopped
# at the end (and on Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-deps.sh
[ -f build/build.ninja ] || meson setup build --buildtype=release >/dev/null
ninja -C build >/dev/null
model=tests/fixtures/llama-gqa-llama3
prompt=1,15,300,42,7,99
echo "== swarmd inspect --model $model (head)"
build/swarmd inspect --model "$model" | sed -n 1,8p

echo "== deploy/local-swarm: a bootstrap node and 3 servers on loopback (--serve-layers auto)"
log=$(mktemp)
deploy/local-swarm -n 3 --swarmd build/swarmd >"$log" 2>&1 &
swarm=$!
stop_swarm() {
  # SIGTERM: a script's background job ignores SIGINT
  if kill -0 "$swarm" 2>/dev/null; then kill -TERM "$swarm"; wait "$swarm" || true; fi
  rm -f "$log"
}
trap stop_swarm EXIT
for _ in $(seq 1 900); do
  grep -q 'every block is served' "$log" && break
  kill -0 "$swarm" 2>/dev/null || break
  sleep 0.1
done
if ! grep -q 'every block is served' "$log"; then
  cat "$log"
  echo "quickstart: the local swarm did not come up (its log is above)" >&2
  exit 1
fi
sed -n '/^model /,/^bottleneck/p' "$log"
boot=$(sed -n 's/^local-swarm: bootstrap node //p' "$log")

echo "== swarmd generate through the swarm: 16 greedy tokens (the route on stderr)"
build/swarmd generate --model "$model" --initial-peers "$boot" --prompt-ids "$prompt" \
  --max-new-tokens 16 --greedy --compress none --show-route | tee "$log.swarm"
echo "== the same in this process (swarmd generate --local)"
build/swarmd generate --local --model "$model" --prompt-ids "$prompt" --max-new-tokens 16 | tee "$log.local"
if cmp -s "$log.swarm" "$log.local"; then
  echo "quickstart: the swarm generated exactly what the local run did"
else
  echo "quickstart: the swarm and the local run differ" >&2
  exit 1
fi
rm -f "$log.swarm" "$log.local"
