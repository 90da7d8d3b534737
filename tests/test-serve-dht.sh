#!/usr/bin/env bash
# test-serve-dht.sh - `swarmd serve` announcing on the DHT, read back with `swarmd status`: one
# `swarmd dht serve --new-swarm`, two servers (blocks 0:2 and 2:4 of the llama-gqa-llama3 fixture)
# joining through it; status shows both spans online and no gap; SIGTERM to one server: status
# shows it offline (or gone) and the gap 2:4. Every wait is a bounded poll; all processes are
# killed on exit. Then `serve --serve-layers auto --num-blocks 2` takes the gap 2:4; status shows
# each block's weights digest (the same for every server of a block) and device; --device cuda
# without a GPU and a config file with an unknown key are refused; a good config file applies,
# with the command line overriding it.
name=serve-dht
# shellcheck source=tests/daemons.sh
. "$(dirname "$0")/daemons.sh"

if ! "$SWARMD" status --help >/dev/null 2>&1; then
  echo "serve-dht: 'swarmd status' is not in this binary's command table; skipped"
  exit 77
fi
model="$SW_SOURCE_ROOT/tests/fixtures/llama-gqa-llama3"

"$SWARMD" --identity "$tmp/boot.id" dht serve --new-swarm --listen 127.0.0.1:0 --table "$tmp/boot.table" \
  --no-reachability-check >"$tmp/boot.log" 2>&1 &
pids+=($!)
if poll 20 grep -q '^address: ' "$tmp/boot.log"; then ok "bootstrap node up"; else bad "bootstrap node up"; finish; fi
boot=$(sed -n 's/^address: //p' "$tmp/boot.log" | head -1)

start_server() { # NAME SPAN
  "$SWARMD" --identity "$tmp/$1.id" serve --model "$model" --serve-layers "$2" --listen 127.0.0.1:0 \
    --initial-peers "$boot" --public-name "$1" >"$tmp/$1.log" 2>&1 &
  pids+=($!)
  eval "pid_$1=$!"
}
start_server alpha 0:2
start_server beta 2:4
for n in alpha beta; do
  if poll 30 grep -q '^serving blocks' "$tmp/$n.log"; then ok "$n serving"; else bad "$n serving"; fi
done

status() { "$SWARMD" status --initial-peers "$boot" --model-name llama-gqa-llama3 --timeout 10 "$@" >"$tmp/status" 2>&1; }
covered() {
  status || return 1
  grep -q 'online span 0:2 .*name "alpha"' "$tmp/status" && grep -q 'online span 2:4 .*name "beta"' "$tmp/status" &&
    grep -q '^gaps: none' "$tmp/status" && grep -q '^model llama-gqa-llama3: 4 blocks' "$tmp/status"
}
if poll 30 covered; then ok "status: both spans online, no gap"; else bad "status: both spans online, no gap"; fi
if grep -q '^bottleneck: block [0-3], [0-9.]* tokens/s' "$tmp/status"; then ok "status: bottleneck"; else bad "status: bottleneck"; fi
if status --json && grep -q '"gaps":\[\]' "$tmp/status" && grep -q '"state":"online"' "$tmp/status"; then
  ok "status --json"; else bad "status --json"; fi
if status --num-blocks 4 && grep -q '^gaps: none' "$tmp/status"; then ok "status --num-blocks"; else bad "status --num-blocks"; fi

# shellcheck disable=SC2154
kill -TERM "$pid_beta"
gone() {
  status || return 1
  ! grep -q 'online span 2:4' "$tmp/status" && grep -q '^gaps: 2:4' "$tmp/status" &&
    grep -q 'online span 0:2' "$tmp/status"
}
if poll 30 gone; then ok "status after SIGTERM: beta offline, gap 2:4"; else bad "status after SIGTERM: beta offline, gap 2:4"; fi
if grep -q 'offline span 2:4 .*name "beta"' "$tmp/status"; then ok "beta announced offline"; else bad "beta announced offline"; fi
rc=0
poll 20 bash -c "! kill -0 $pid_beta 2>/dev/null" || rc=1
wait "$pid_beta" || rc=$?
if [ "$rc" -eq 0 ]; then ok "beta exited 0"; else echo "    rc $rc"; bad "beta exited 0"; fi
if grep -q 'not announcing' "$tmp/alpha.log"; then bad "alpha announces"; else ok "alpha announces"; fi
# the uplink is measured against the bootstrap node's sink: the announced network_rps is no longer
# the 100 Mbit/s default's 48828.125 tokens/s of 16-bit hidden size 128
if status --json && grep -q '"network_rps":' "$tmp/status" && ! grep -q '"network_rps":48828.125' "$tmp/status"; then
  ok "servers announce their measured uplink"; else bad "servers announce their measured uplink"; fi

# --serve-layers auto: alpha online on 0:2, beta offline: a new server of 2 blocks takes the gap 2:4.
"$SWARMD" --identity "$tmp/gamma.id" serve --model "$model" --serve-layers auto --num-blocks 2 \
  --block-selection-delay 0 --listen 127.0.0.1:0 --initial-peers "$boot" --public-name gamma \
  >"$tmp/gamma.log" 2>&1 &
pids+=($!)
if poll 40 grep -q '^serving blocks' "$tmp/gamma.log" && grep -q '^serving blocks 2:4 ' "$tmp/gamma.log"; then
  ok "auto picks 2:4"; else bad "auto picks 2:4"; fi
filled() {
  status || return 1
  grep -q 'online span 2:4 .*name "gamma"' "$tmp/status" && grep -q '^gaps: none' "$tmp/status"
}
if poll 30 filled; then ok "status after auto: no gaps"; else bad "status after auto: no gaps"; fi
if grep -q 'digest [0-9a-f]\{16\} [a-z0-9]* on cpu' "$tmp/status" && grep -q '^weights digests: agree on every block' "$tmp/status"; then
  ok "status: digests and device"; else bad "status: digests and device"; fi
# the same block from two servers with the same checkpoint: the same digest
if status --json && python3 - "$tmp/status" <<'PY'
import json, sys
d = json.loads([l for l in open(sys.argv[1]) if l.startswith("{")][-1])
for b in d["blocks"]:
    live = [s for s in b["servers"] if s["state"] in ("joining", "online")]
    assert b["digests_agree"] and all(len(s["weights_digest"]) == 64 for s in live), b
    assert all(s["device"].startswith("cpu") and s["format"] for s in live), b
assert d["digest_mismatches"] == []
PY
then ok "status --json: digests agree, device, format"; else bad "status --json: digests agree, device, format"; fi
if "$SWARMD" serve --model "$model" --serve-layers 0:1 --device cuda >"$tmp/cuda.log" 2>&1; then
  bad "--device cuda without a GPU refused"
elif grep -q -e 'no CUDA GPU found' -e 'built without the CUDA backend' "$tmp/cuda.log"; then ok "--device cuda without a GPU refused"
else bad "--device cuda without a GPU refused"; fi
# a config file: its settings apply (model, listen, identity), the command line overrides them
printf '# serve settings\nmodel = "%s"\nserve-layers = 0:2\nlisten = 127.0.0.1:0\nnew-swarm = false\nidentity = %s\n' \
  "$model" "$tmp/conf.id" >"$tmp/good.conf"
"$SWARMD" serve --config "$tmp/good.conf" --serve-layers 2:4 >"$tmp/confserve.log" 2>&1 &
cpid=$!
pids+=($cpid)
if poll 30 grep -q '^serving blocks 2:4 of llama-gqa-llama3 at .*@127.0.0.1:' "$tmp/confserve.log" && [ -s "$tmp/conf.id" ]; then
  ok "--config applied, command line overrides it"; else bad "--config applied, command line overrides it"; fi
kill -TERM "$cpid"
rc=0
if poll 20 bash -c "! kill -0 $cpid 2>/dev/null"; then wait "$cpid" || rc=$?; else rc=124; fi
if [ "$rc" -eq 0 ]; then ok "config server exited 0"; else bad "config server exited 0 (rc $rc)"; fi
printf 'model = %s\nserve-layers = auto\nbogus = 1\n' "$model" >"$tmp/bad.conf"
if "$SWARMD" serve --config "$tmp/bad.conf" >"$tmp/conf.log" 2>&1; then bad "--config: unknown key refused"
elif grep -q "unknown setting 'bogus'" "$tmp/conf.log"; then ok "--config: unknown key refused"
else bad "--config: unknown key refused"; fi
finish
