#!/usr/bin/env bash
# quickstart.sh - installs what swarmd needs, builds it, and runs the bundled tiny model locally:
# a prompt's per-position predictions, then a greedy continuation.
# (The bundled model is a random-init Llama with GQA and llama3 RoPE from tests/fixtures/; it
# grows into a local swarm as serving lands.)
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-deps.sh
[ -f build/build.ninja ] || meson setup build --buildtype=release >/dev/null
ninja -C build >/dev/null
model=tests/fixtures/llama-gqa-llama3
echo "== swarmd inspect --model $model (head)"
build/swarmd inspect --model "$model" | sed -n 1,8p
echo "== swarmd eval: per-position argmax and log-probability"
build/swarmd eval --model "$model" --tokens 1,15,300,42,7,99
echo "== swarmd generate --local: 16 greedy tokens"
build/swarmd generate --local --model "$model" --prompt-ids 1,15,300,42,7,99 --max-new-tokens 16
