#!/usr/bin/env bash
# test-cli.sh - the swarmd binary as a user runs it: help texts, README examples, exit codes,
# error messages, and generate/eval output against the transformers fixtures.
# Needs SWARMD (the binary) and SW_SOURCE_ROOT; python3 (no packages) reads the fixtures.
set -u
: "${SWARMD:?}" "${SW_SOURCE_ROOT:?}"
cd "$SW_SOURCE_ROOT"
pass=0
fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

ok() { pass=$((pass + 1)); echo "ok - $1"; }
bad() { fail=$((fail + 1)); echo "not ok - $1"; [ -f "$tmp/err" ] && sed 's/^/    /' "$tmp/err" | head -20; }
# expect CODE NAME CMD... : runs CMD, checks the exit code; stdout in $tmp/out, stderr in $tmp/err
expect() {
  local want=$1 name=$2 rc=0
  shift 2
  "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
  if [ "$rc" -eq "$want" ]; then ok "$name"; else echo "    exit $rc, wanted $want"; bad "$name"; fi
}
contains() { # contains FILE TEXT NAME
  if grep -qF -- "$2" "$1"; then ok "$3"; else echo "    '$2' not in $1:"; sed 's/^/    | /' "$1" | head; bad "$3"; fi
}

# shellcheck source=tests/fixture-ref.sh
. "$(dirname "$0")/fixture-ref.sh"

# ---- help and usage ----
expect 0 "--help" "$SWARMD" --help
for c in eval generate inspect; do contains "$tmp/out" "$c" "--help lists $c"; done
expect 0 "--version" "$SWARMD" --version
contains "$tmp/out" "cpu kernels:" "--version names the CPU kernels"
expect 2 "no command is a usage error" "$SWARMD"
expect 2 "unknown command" "$SWARMD" frobnicate
contains "$tmp/err" "unknown command 'frobnicate'" "unknown command is named"
expect 2 "bad --threads" "$SWARMD" --threads 0 eval
expect 0 "eval --help" "$SWARMD" eval --help
for o in --model --tokens --logits-out; do contains "$tmp/out" "$o" "eval --help has $o"; done
expect 0 "generate --help" "$SWARMD" generate --help
for o in --local --model --prompt-ids --max-new-tokens --max-len; do contains "$tmp/out" "$o" "generate --help has $o"; done
expect 0 "inspect --help" "$SWARMD" inspect --help
contains "$tmp/out" "--model" "inspect --help has --model"
contains "$tmp/out" "--quant" "inspect --help has --quant"
expect 0 "tokenize --help" "$SWARMD" tokenize --help
for o in --model --decode --no-special --skip-special --show-tokens; do contains "$tmp/out" "$o" "tokenize --help has $o"; done
expect 2 "tokenize without --model" "$SWARMD" tokenize hello
expect 1 "tokenize a model without tokenizer.json" "$SWARMD" tokenize --model tests/fixtures/llama-mha-tied hello
contains "$tmp/err" "tokenizer.json" "missing tokenizer.json is named"
expect 0 "quantize --help" "$SWARMD" quantize --help
for o in --model --out --quant --int8-threshold; do contains "$tmp/out" "$o" "quantize --help has $o"; done
for c in eval generate; do
  expect 0 "$c --help" "$SWARMD" $c --help
  for o in --quant --int8-threshold; do contains "$tmp/out" "$o" "$c --help has $o"; done
done

# ---- README examples run as written (build/swarmd is this build's binary) ----
# the swarm-key example refuses to overwrite its file, so the files the examples create go first
rm -rf /tmp/swarmd-example /tmp/swarmd-example.key
n=0
while IFS= read -r line; do
  n=$((n + 1))
  # shellcheck disable=SC2086
  expect 0 "README example: $line" "$SWARMD" ${line#build/swarmd }
done < <(grep -E '^build/swarmd ' README.md)
[ "$n" -ge 3 ] && ok "README has $n examples" || bad "README examples not found"

# ---- results against transformers ----
for fx in llama-mha-tied llama-gqa-llama3 qwen2-bias mistral-window-dynamic; do
  dir=tests/fixtures/$fx
  prompt=$(ref "$dir/reference.safetensors" prompt)
  want=$(ref "$dir/reference.safetensors" greedy)
  nnew=$(echo "$want" | tr ',' '\n' | wc -l)
  expect 0 "$fx: generate --local" "$SWARMD" generate --local --model "$dir" --prompt-ids "$prompt" --max-new-tokens "$nnew"
  if [ "$(cat "$tmp/out")" = "$want" ]; then ok "$fx: greedy ids equal transformers'"; else echo "    got  $(cat "$tmp/out")"; echo "    want $want"; bad "$fx: greedy ids equal transformers'"; fi
  expect 0 "$fx: generate --backend reference" "$SWARMD" --backend reference generate --local --model "$dir" --prompt-ids "$prompt" --max-new-tokens "$nnew"
  [ "$(cat "$tmp/out")" = "$want" ] && ok "$fx: reference backend agrees" || bad "$fx: reference backend agrees"
  expect 0 "$fx: eval" "$SWARMD" eval --model "$dir" --tokens "$prompt" --logits-out "$tmp/logits"
  got=$(awk 'NR > 1 {printf "%s%s", sep, $3; sep=" "}' "$tmp/out")
  [ "$got" = "$(ref "$dir/reference.safetensors" argmax)" ] && ok "$fx: eval argmax equals transformers'" || bad "$fx: eval argmax equals transformers'"
  T=$(echo "$prompt" | tr ',' '\n' | wc -l)
  V=$(python3 -c "import json; print(json.load(open('$dir/config.json'))['vocab_size'])")
  [ "$(stat -c %s "$tmp/logits")" -eq $((T * V * 4)) ] && ok "$fx: --logits-out is T x V float32" || bad "$fx: --logits-out size"
done

# ---- quantization ----
wide=tests/fixtures/llama-wide
wprompt=$(ref "$wide/reference.safetensors" prompt)
expect 0 "quantize nf4" "$SWARMD" quantize --model "$wide" --quant nf4 --out "$tmp/wide-nf4"
contains "$tmp/err" "quantized to nf4: block 1 (2/2)" "quantize prints a progress line per block"
expect 0 "generate --quant nf4 (on load)" "$SWARMD" generate --local --model "$wide" --prompt-ids "$wprompt" --max-new-tokens 8 --quant nf4
cp "$tmp/out" "$tmp/onload"
contains "$tmp/err" "quantized to nf4: block 0 (1/2)" "quantize-on-load prints progress"
expect 0 "generate from the quantized checkpoint" "$SWARMD" generate --local --model "$tmp/wide-nf4" --prompt-ids "$wprompt" --max-new-tokens 8
cmp -s "$tmp/out" "$tmp/onload" && ok "pre-quantized checkpoint generates what quantize-on-load does" || bad "pre-quantized == on-load"
expect 0 "inspect a quantized checkpoint" "$SWARMD" inspect --model "$tmp/wide-nf4"
contains "$tmp/out" "4.127" "inspect shows nf4 bits per parameter"
contains "$tmp/out" "U8" "inspect lists the packed uint8 tensors"
expect 1 "quantized checkpoint with another --quant" "$SWARMD" eval --model "$tmp/wide-nf4" --tokens 1,2 --quant int8
contains "$tmp/err" "--quant nf4" "wrong --quant for a quantized checkpoint says which to use"
expect 0 "eval --quant int8" "$SWARMD" eval --model "$wide" --tokens "$wprompt" --quant int8
expect 2 "unknown --quant" "$SWARMD" eval --model "$wide" --tokens 1 --quant int3
contains "$tmp/err" "int3" "unknown --quant is named"
expect 2 "quantize without --quant" "$SWARMD" quantize --model "$wide" --out "$tmp/x"
expect 2 "bad --int8-threshold" "$SWARMD" eval --model "$wide" --tokens 1 --quant int8 --int8-threshold -1

# ---- identity and swarm key ----
for c in id swarm-key; do expect 0 "--help (for $c)" "$SWARMD" --help; contains "$tmp/out" "  $c " "--help lists $c"; done
for o in --identity --swarm-key; do contains "$tmp/out" "$o" "--help has $o"; done
expect 0 "id --help" "$SWARMD" id --help
contains "$tmp/out" "peer id" "id --help says what it prints"
expect 0 "swarm-key --help" "$SWARMD" swarm-key --help
contains "$tmp/out" "64 hexadecimal" "swarm-key --help states the file format"
expect 0 "id creates the identity" "$SWARMD" --identity "$tmp/ids/node/identity" id
contains "$tmp/out" "(created)" "id says it created the file"
contains "$tmp/out" "swarm key: none" "id says no swarm key is configured"
[ "$(stat -c %a "$tmp/ids/node/identity")" = 600 ] && ok "identity file has mode 0600" || bad "identity file mode $(stat -c %a "$tmp/ids/node/identity")"
[ "$(stat -c %a "$tmp/ids/node")" = 700 ] && ok "identity directory has mode 0700" || bad "identity directory mode"
pid1=$(awk '/^peer id:/ {print $3}' "$tmp/out")
short1=$(awk '/^short id:/ {print $3}' "$tmp/out")
[[ "$pid1" =~ ^[1-9A-HJ-NP-Za-km-z]{43,44}$ ]] && ok "peer id is base58" || bad "peer id '$pid1' is not base58"
[ "$short1" = "${pid1:0:8}" ] && ok "short id is the first 8 characters" || bad "short id '$short1'"
expect 0 "id again" "$SWARMD" --identity "$tmp/ids/node/identity" id
[ "$(awk '/^peer id:/ {print $3}' "$tmp/out")" = "$pid1" ] && ok "peer id is stable across runs" || bad "peer id changed"
if grep -q "(created)" "$tmp/out"; then bad "second run does not create again"; else ok "second run does not create again"; fi
expect 0 "id under HOME (default path)" env -u XDG_STATE_HOME HOME="$tmp/home" "$SWARMD" id
[ -f "$tmp/home/.local/state/swarmd/identity" ] && ok "default identity under ~/.local/state/swarmd" || bad "default identity path"
expect 0 "id under XDG_STATE_HOME" env XDG_STATE_HOME="$tmp/xdg" "$SWARMD" id
contains "$tmp/out" "$tmp/xdg/swarmd/identity" "default identity under \$XDG_STATE_HOME/swarmd"
cp -p "$tmp/ids/node/identity" "$tmp/ids/open" && chmod 644 "$tmp/ids/open"
expect 1 "a 0644 identity is refused" "$SWARMD" --identity "$tmp/ids/open" id
contains "$tmp/err" "chmod 600 $tmp/ids/open" "refused identity gives the chmod advice"
printf 'not a key' >"$tmp/ids/junk" && chmod 600 "$tmp/ids/junk"
expect 1 "a malformed identity is refused" "$SWARMD" --identity "$tmp/ids/junk" id
expect 0 "swarm-key generate" "$SWARMD" swarm-key generate "$tmp/swarm.key"
[ "$(stat -c %a "$tmp/swarm.key")" = 600 ] && ok "swarm key has mode 0600" || bad "swarm key mode $(stat -c %a "$tmp/swarm.key")"
grep -qxE '[0-9a-f]{64}' "$tmp/swarm.key" && [ "$(stat -c %s "$tmp/swarm.key")" -eq 65 ] && ok "swarm key is 64 hex characters and a newline" || bad "swarm key format"
cp "$tmp/swarm.key" "$tmp/swarm.key.orig"
expect 1 "swarm-key generate refuses to overwrite" "$SWARMD" swarm-key generate "$tmp/swarm.key"
contains "$tmp/err" "already exists" "overwrite refusal says why"
cmp -s "$tmp/swarm.key" "$tmp/swarm.key.orig" && ok "existing swarm key left untouched" || bad "existing swarm key changed"
expect 2 "swarm-key without generate FILE" "$SWARMD" swarm-key
# serve is the default command: options without a command go to it
expect 2 "swarmd --serve-layers auto (serve by default) needs peers" "$SWARMD" -q --serve-layers auto --model tests/fixtures/llama-gqa-llama3
contains "$tmp/err" "swarmd serve: --serve-layers auto reads the swarm" "options without a command are serve's"
expect 0 "id with a swarm key" "$SWARMD" --identity "$tmp/ids/node/identity" --swarm-key "$tmp/swarm.key" id
contains "$tmp/out" "private swarm" "id says a swarm key is configured"
if grep -qiF "$(cat "$tmp/swarm.key")" "$tmp/out" "$tmp/err"; then bad "id never prints the swarm key"; else ok "id never prints the swarm key"; fi
seed=$(tail -c 32 "$tmp/ids/node/identity" | od -An -tx1 | tr -d ' \n')
if grep -qiF "$seed" "$tmp/out" "$tmp/err"; then bad "id never prints the secret key"; else ok "id never prints the secret key"; fi
printf '%s\n' "$(head -c 60 "$tmp/swarm.key")" >"$tmp/short.key" && chmod 600 "$tmp/short.key"
expect 1 "a short swarm key is refused" "$SWARMD" --identity "$tmp/ids/node/identity" --swarm-key "$tmp/short.key" id
contains "$tmp/err" "64 hexadecimal characters" "bad swarm key file says what the format is"
printf 'zz%s\n' "$(head -c 62 "$tmp/swarm.key")" >"$tmp/hex.key" && chmod 600 "$tmp/hex.key"
expect 1 "a non-hex swarm key is refused" "$SWARMD" --identity "$tmp/ids/node/identity" --swarm-key "$tmp/hex.key" id
chmod 644 "$tmp/swarm.key"
expect 1 "a 0644 swarm key is refused" "$SWARMD" --identity "$tmp/ids/node/identity" --swarm-key "$tmp/swarm.key" id
contains "$tmp/err" "chmod 600 $tmp/swarm.key" "refused swarm key gives the chmod advice"
expect 1 "a missing swarm key file is an error" "$SWARMD" --identity "$tmp/ids/node/identity" --swarm-key "$tmp/nope.key" id

# ---- errors say what went wrong ----
expect 1 "missing model dir" "$SWARMD" eval --model "$tmp/nope" --tokens 1
contains "$tmp/err" "$tmp/nope" "missing model names the path"
expect 2 "malformed token list" "$SWARMD" eval --model tests/fixtures/llama-mha-tied --tokens 1,,2
contains "$tmp/err" "comma-separated" "malformed token list explained"
expect 1 "token outside the vocabulary" "$SWARMD" eval --model tests/fixtures/llama-mha-tied --tokens 1,99999
contains "$tmp/err" "99999" "out-of-vocabulary id is named"
expect 2 "generate without --local" "$SWARMD" generate --model tests/fixtures/llama-mha-tied --prompt-ids 1
contains "$tmp/err" "--local" "generate without --local says to add it"
expect 2 "eval without --model" "$SWARMD" eval --tokens 1
mkdir -p "$tmp/m" && cp tests/fixtures/llama-mha-tied/* "$tmp/m/" && echo '{"model_type": "gpt2"}' >"$tmp/m/config.json"
expect 1 "unsupported architecture" "$SWARMD" inspect --model "$tmp/m"
contains "$tmp/err" "gpt2" "unsupported architecture is named"
head -c 100 tests/fixtures/llama-mha-tied/model.safetensors >"$tmp/m/model.safetensors"
cp tests/fixtures/llama-mha-tied/config.json "$tmp/m/"
expect 1 "truncated checkpoint" "$SWARMD" eval --model "$tmp/m" --tokens 1
contains "$tmp/err" "model.safetensors" "truncated checkpoint names the file"

# --device: cpu is the default; cuda without a GPU (CI) fails with a message that says so; with
# a GPU (the GPU machine) its greedy ids equal the CPU's
mha=tests/fixtures/llama-mha-tied
expect 0 "generate --device cpu" "$SWARMD" generate --local --model "$mha" --prompt-ids 1,2,3,4 --max-new-tokens 8 --device cpu
cp "$tmp/out" "$tmp/cpu-ids"
expect 0 "generate (default device)" "$SWARMD" generate --local --model "$mha" --prompt-ids 1,2,3,4 --max-new-tokens 8
cmp -s "$tmp/out" "$tmp/cpu-ids" && ok "--device cpu is the default" || bad "--device cpu is the default"
[ -s "$tmp/err" ] && bad "the default device logs nothing" || ok "the default device logs nothing"
expect 2 "--device gpu is a usage error" "$SWARMD" generate --local --model "$mha" --prompt-ids 1 --device gpu
contains "$tmp/err" "cuda:N" "--device usage error lists the choices"
expect 2 "--device cuda:x is a usage error" "$SWARMD" eval --model "$mha" --tokens 1 --device cuda:x
expect 0 "generate --help has --device" "$SWARMD" generate --help
contains "$tmp/out" "--device" "generate --help documents --device"
"$SWARMD" --version >"$tmp/version" 2>&1
if grep -qE "not compiled in|; 0 devices visible" "$tmp/version"; then
  if grep -q "not compiled in" "$tmp/version"; then why="built without the CUDA backend"; else why="no CUDA GPU found"; fi
  expect 1 "eval --device cuda without a GPU fails" "$SWARMD" eval --model "$mha" --tokens 1,2 --device cuda
  contains "$tmp/err" "$why" "eval --device cuda says why"
  expect 1 "generate --device cuda:1 without a GPU fails" "$SWARMD" generate --local --model "$mha" --prompt-ids 1,2 --device cuda:1
  contains "$tmp/err" "$why" "generate --device cuda says why"
  expect 1 "inspect --device cuda without a GPU fails" "$SWARMD" inspect --model "$mha" --device cuda
  contains "$tmp/err" "$why" "inspect --device cuda says why"
else
  for fx in llama-mha-tied llama-gqa-llama3 qwen2-bias mistral-window-dynamic; do
    expect 0 "$fx: generate --device cpu" "$SWARMD" generate --local --model "tests/fixtures/$fx" --prompt-ids 5,6,7,8,9 --max-new-tokens 16 --device cpu
    cp "$tmp/out" "$tmp/cpu-ids"
    expect 0 "$fx: generate --device cuda" "$SWARMD" generate --local --model "tests/fixtures/$fx" --prompt-ids 5,6,7,8,9 --max-new-tokens 16 --device cuda
    cmp -s "$tmp/out" "$tmp/cpu-ids" && ok "$fx: --device cuda ids equal --device cpu ids" || bad "$fx: cuda ids $(cat "$tmp/out") != cpu $(cat "$tmp/cpu-ids")"
  done
fi

echo "cli: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
