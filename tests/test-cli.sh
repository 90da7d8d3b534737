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

# reference.safetensors reader: prints "greedy_ids" or the argmax per prompt position
ref() {
  python3 - "$1" "$2" <<'PY'
import json, struct, sys
path, what = sys.argv[1], sys.argv[2]
b = open(path, 'rb').read()
n = struct.unpack('<Q', b[:8])[0]
h = json.loads(b[8:8 + n]); base = 8 + n
def get(name, fmt):
    e = h[name]; s, t = e['data_offsets']; cnt = (t - s) // struct.calcsize(fmt)
    return e['shape'], struct.unpack('<%d%s' % (cnt, fmt), b[base + s:base + t])
if what == 'prompt':
    print(','.join(str(x) for x in get('prompt_ids', 'q')[1]))
elif what == 'greedy':
    print(','.join(str(x) for x in get('greedy_ids', 'q')[1]))
else:
    (T, V), v = get('logits', 'f')
    print(' '.join(str(max(range(V), key=lambda i: v[t * V + i])) for t in range(T)))
PY
}

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
expect 0 "quantize --help" "$SWARMD" quantize --help
for o in --model --out --quant --int8-threshold; do contains "$tmp/out" "$o" "quantize --help has $o"; done
for c in eval generate; do
  expect 0 "$c --help" "$SWARMD" $c --help
  for o in --quant --int8-threshold; do contains "$tmp/out" "$o" "$c --help has $o"; done
done

# ---- README examples run as written (build/swarmd is this build's binary) ----
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

echo "cli: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
