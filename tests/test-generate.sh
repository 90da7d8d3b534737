#!/usr/bin/env bash
# test-generate.sh - distributed generation with real daemons on loopback (the llama-gqa-llama3
# fixture, 4 blocks): one `swarmd dht serve --new-swarm` and servers joining through it.
#   1. Exactness: a 3-server chain (0:2, 2:3, 3:4) gives the ids of `generate --local`, which
#      tests/test-cli.sh checks against transformers; with --compress none and with the default
#      bf16. --show-route prints the three hops. Each other fixture (MHA with tied embeddings,
#      Qwen2 biases, Mistral sliding window + dynamic RoPE) through one-block servers gives
#      transformers' greedy ids.
#   2. Failover: a fourth server (2:4) on a direct link is the best route for 2:4 (a, b and c sit
#      behind the link emulator: 20, 10 and 10 ms each way); it is SIGKILLed after a few tokens of
#      a 48-token generation: the client
#      replays its inputs to the two servers of 2:3 and 3:4 (the span split across two) and the ids
#      equal --local's. A second generation routes around the dead server from the start. A server
#      with other weights for 2:4 (NF4: its digests differ from the others') is never used.
#      Then a server stopped with SIGSTOP mid-generation: the step timeout replaces it the same way.
#      swarm_client_forward/backward on random routes equal the in-process span (tests/client-fb.c).
#   3. Internet conditions: every server behind the link emulator at 100 ms RTT and 100 Mbit/s:
#      same ids.
#   4. Total loss: the only server of 0:2 SIGKILLed: a clear error naming blocks 0:2, within the
#      retry budget.
# Every wait is a bounded poll; all processes are killed on exit.
name=generate
# shellcheck source=tests/daemons.sh
. "$(dirname "$0")/daemons.sh"
linkemu=${1:?usage: test-generate.sh LINKEMU CLIENT_FB}
client_fb=${2:?usage: test-generate.sh LINKEMU CLIENT_FB}

model="$SW_SOURCE_ROOT/tests/fixtures/llama-gqa-llama3"
prompt=1,15,300,42,7,99

"$SWARMD" --identity "$tmp/boot.id" dht serve --new-swarm --listen 127.0.0.1:0 --no-reachability-check \
  >"$tmp/boot.log" 2>&1 &
pids+=($!)
if poll 20 grep -q '^address: ' "$tmp/boot.log"; then ok "bootstrap node up"; else bad "bootstrap node up"; finish; fi
boot=$(sed -n 's/^address: //p' "$tmp/boot.log" | head -1)

# start_server NAME SPAN [extra serve options...]
start_server() {
  local name=$1 span=$2
  shift 2
  "$SWARMD" --identity "$tmp/$name.id" serve --model "$model" --serve-layers "$span" \
    --initial-peers "$boot" --public-name "$name" --max-cache-tokens 4096 "$@" >"$tmp/$name.log" 2>&1 &
  pids+=($!)
  eval "pid_$name=$!"
}
# proxy NAME DELAY_MS RATE: a link emulator in front of port $port; sets proxy_port
proxy() {
  "$linkemu" --listen 127.0.0.1:0 --to "127.0.0.1:$port" --delay-ms "$2" ${3:+--rate-mbit "$3"} >"$tmp/$1.port" 2>"$tmp/$1.emu" &
  pids+=($!)
  poll 10 test -s "$tmp/$1.port" || return 1
  proxy_port=$(head -1 "$tmp/$1.port")
}
serving() { poll 30 grep -q '^serving blocks' "$tmp/$1.log"; }
online() { # online SPAN NAME: status shows it
  "$SWARMD" status --initial-peers "$boot" --model-name llama-gqa-llama3 --timeout 10 >"$tmp/status" 2>&1 &&
    grep -q "online span $1 .*name \"$2\"" "$tmp/status"
}
gen() { # gen OUT [options...]: generate through the swarm, ids in OUT, stderr in OUT.err
  local out=$1
  shift
  "$SWARMD" generate --model "$model" --initial-peers "$boot" --prompt-ids "$prompt" "$@" >"$out" 2>"$out.err"
}
ids_count() { tr ',' '\n' <"$1" | grep -c '[0-9]'; }

# ---- 1. exactness through three servers, each behind a link emulator (a: 20 ms each way, b and
# c: 10 ms), so that a generation takes long enough to kill a server in the middle of it
for n in a:20 b:10 c:10; do
  port=$(free_port)
  proxy "${n%:*}" "${n#*:}" || bad "link emulator for ${n%:*}"
  eval "port_${n%:*}=$port proxy_${n%:*}=$proxy_port"
done
# shellcheck disable=SC2154
start_server a 0:2 --listen "127.0.0.1:$port_a" --announce "127.0.0.1:$proxy_a"
# shellcheck disable=SC2154
start_server b 2:3 --listen "127.0.0.1:$port_b" --announce "127.0.0.1:$proxy_b" --max-batch-tokens 4
# shellcheck disable=SC2154
start_server c 3:4 --listen "127.0.0.1:$port_c" --announce "127.0.0.1:$proxy_c"
for n in a b c; do serving $n || { bad "$n serving"; finish; }; done
if poll 30 online 0:2 a && poll 30 online 2:3 b && poll 30 online 3:4 c; then ok "three servers online"; else bad "three servers online"; fi

"$SWARMD" generate --local --model "$model" --prompt-ids "$prompt" --max-new-tokens 16 >"$tmp/local16" 2>&1 || bad "local 16"
"$SWARMD" generate --local --model "$model" --prompt-ids "$prompt" --max-new-tokens 48 >"$tmp/local48" 2>&1 || bad "local 48"
if gen "$tmp/gen1" --max-new-tokens 16 --compress none --show-route && cmp -s "$tmp/gen1" "$tmp/local16"; then
  ok "3-server ids == --local ids (compress none)"; else bad "3-server ids == --local ids (compress none)"; fi
if grep -q 'route: 0:2 via .*(a).*, 2:3 via .*(b).*, 3:4 via .*(c)' "$tmp/gen1.err"; then
  ok "--show-route prints the three hops"; else bad "--show-route prints the three hops"; fi
if gen "$tmp/gen2" --max-new-tokens 16 && cmp -s "$tmp/gen2" "$tmp/local16"; then
  ok "3-server ids == --local ids (bf16 default)"; else bad "3-server ids == --local ids (bf16 default)"; fi
if gen "$tmp/gen3" --max-new-tokens 16 --compress blockwise8; then
  ok "blockwise8 generates ($(tr ',' '\n' <"$tmp/gen3" | paste -d' ' - <(tr ',' '\n' <"$tmp/local16") | awk '$1==$2' | wc -l)/16 ids as local)"
else bad "blockwise8 generates"; fi

# ---- 1a. every other fixture through a swarm of one-block servers: transformers' greedy ids
# shellcheck source=tests/fixture-ref.sh
. "$(dirname "$0")/fixture-ref.sh"
for fx in llama-mha-tied qwen2-bias mistral-window-dynamic; do
  dir="$SW_SOURCE_ROOT/tests/fixtures/$fx"
  L=$(tr -d ' \n' <"$dir/config.json" | sed -n 's/.*"num_hidden_layers":\([0-9]*\).*/\1/p')
  for ((b = 0; b < L; b++)); do
    "$SWARMD" --identity "$tmp/$fx-$b.id" serve --model "$dir" --serve-layers "$b:$((b + 1))" --listen 127.0.0.1:0 \
      --initial-peers "$boot" >"$tmp/$fx-$b.log" 2>&1 &
    pids+=($!)
  done
  for ((b = 0; b < L; b++)); do poll 30 grep -q '^serving blocks' "$tmp/$fx-$b.log" || bad "$fx server $b serving"; done
  fx_online() { "$SWARMD" status --initial-peers "$boot" --model-name "$fx" --timeout 10 >"$tmp/status" 2>&1 &&
    grep -q '^gaps: none' "$tmp/status"; }
  poll 30 fx_online || bad "$fx: every block online"
  want=$(ref "$dir/reference.safetensors" greedy)
  nnew=$(echo "$want" | tr ',' '\n' | wc -l)
  if "$SWARMD" generate --model "$dir" --initial-peers "$boot" --prompt-ids "$(ref "$dir/reference.safetensors" prompt)" \
       --max-new-tokens "$nnew" --compress none --greedy --show-route >"$tmp/gen-$fx" 2>"$tmp/gen-$fx.err" &&
     [ "$(cat "$tmp/gen-$fx")" = "$want" ] && [ "$(grep -o ' via ' "$tmp/gen-$fx.err" | wc -l)" -eq "$L" ]; then
    ok "$fx: $L one-block servers give transformers' greedy ids"
  else echo "    got  $(cat "$tmp/gen-$fx")"; echo "    want $want"; bad "$fx: $L one-block servers give transformers' greedy ids"; fi
done

# ---- 1b. text and chat: the fixture with a generated byte-fallback tokenizer (259 byte and
# special tokens, padded to the model's 1024 ids) and a ChatML template
chat="$tmp/chatmodel"
mkdir -p "$chat"
for f in config.json model.safetensors generation_config.json; do ln -s "$model/$f" "$chat/$f"; done
python3 - "$chat" <<'PY'
import json, sys
d = sys.argv[1]
special = ["<|im_start|>", "<|im_end|>"]
vocab = {"<unk>": 0, special[0]: 1, special[1]: 2}
vocab.update({"<0x%02X>" % i: 3 + i for i in range(256)})
vocab.update({"w%d " % i: i for i in range(259, 1024)})
added = [{"id": 1 + i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
          "normalized": False, "special": True} for i, t in enumerate(special)]
tok = {"version": "1.0", "added_tokens": added, "normalizer": None, "pre_tokenizer": None,
       "post_processor": None,
       "decoder": {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Fuse"}]},
       "model": {"type": "BPE", "unk_token": "<unk>", "byte_fallback": True, "vocab": vocab, "merges": []}}
json.dump(tok, open(d + "/tokenizer.json", "w"))
tpl = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
       "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
json.dump({"chat_template": tpl, "eos_token": "<|im_end|>", "bos_token": None}, open(d + "/tokenizer_config.json", "w"))
PY
"$SWARMD" generate --local --model "$chat" "Hello, swarm" --greedy >"$tmp/tlocal" 2>"$tmp/tlocal.err" || bad "text generate --local"
if "$SWARMD" generate --model "$chat" --model-name llama-gqa-llama3 --initial-peers "$boot" "Hello, swarm" --greedy \
     --compress none >"$tmp/gen-text" 2>"$tmp/gen-text.err" && [ -s "$tmp/tlocal" ] && cmp -s "$tmp/gen-text" "$tmp/tlocal"; then
  ok "text prompt: swarm text == --local text"; else bad "text prompt: swarm text == --local text"; fi
"$SWARMD" generate --local --model "$chat" --chat-template auto "Hello" --greedy >"$tmp/tclocal" 2>"$tmp/tclocal.err" ||
  bad "generate --chat-template --local"
if "$SWARMD" generate --model "$chat" --model-name llama-gqa-llama3 --initial-peers "$boot" --chat-template auto \
     "Hello" --greedy --compress none >"$tmp/gen-tc" 2>"$tmp/gen-tc.err" && [ -s "$tmp/tclocal" ] && cmp -s "$tmp/gen-tc" "$tmp/tclocal"; then
  ok "generate --chat-template: swarm == --local"; else bad "generate --chat-template: swarm == --local"; fi
printf 'Hello\nAnd a second turn\n' | "$SWARMD" chat --local --model "$chat" --greedy --max-new-tokens 12 \
  >"$tmp/chat-local" 2>"$tmp/chat-local.err" || bad "chat --local"
if printf 'Hello\nAnd a second turn\n' | "$SWARMD" chat --model "$chat" --model-name llama-gqa-llama3 \
     --initial-peers "$boot" --greedy --max-new-tokens 12 --compress none >"$tmp/gen-chat" 2>"$tmp/gen-chat.err" &&
   [ "$(grep -c . "$tmp/chat-local")" -eq 2 ] && cmp -s "$tmp/gen-chat" "$tmp/chat-local"; then
  ok "chat: two turns through the swarm == --local"; else bad "chat: two turns through the swarm == --local"; fi

# ---- 2. failover: d (2:4, no emulator) is the best route for 2:4 until killed
start_server d 2:4 --listen 127.0.0.1:0
# x serves 2:4 with other weights (NF4): its digests disagree with b's, c's and d's, so no client
# may route through it
start_server x 2:4 --listen 127.0.0.1:0 --quant nf4
serving d || bad "d serving"
serving x || bad "x serving"
if poll 30 online 2:4 d && poll 30 online 2:4 x; then ok "d and x online"; else bad "d and x online"; fi
gen "$tmp/gen4" --max-new-tokens 48 --compress none --show-route &
genpid=$!
if poll 30 bash -c "[ \$(tr ',' '\n' <'$tmp/gen4' | grep -c '[0-9]') -ge 5 ]"; then
  ok "generation through d is under way"; else bad "generation through d is under way"; fi
# shellcheck disable=SC2154
kill -KILL "$pid_d"
rc=0
wait "$genpid" || rc=$?
if grep -q 'route: 0:2 via .*(a).*, 2:4 via .*(d)' "$tmp/gen4.err"; then ok "d was on the route"; else bad "d was on the route"; fi
if [ "$rc" -eq 0 ] && cmp -s "$tmp/gen4" "$tmp/local48"; then ok "ids after d's SIGKILL == --local ids"
else echo "    rc $rc"; bad "ids after d's SIGKILL == --local ids"; fi
if grep -q 'blocks 2:4 now go 2:3 via .*(b).*, 3:4 via .*(c).*; replaying [1-9][0-9]* position' "$tmp/gen4.err"; then
  ok "the replacement split 2:4 across b and c, with a replay"; else bad "the replacement split 2:4 across b and c"; fi
if gen "$tmp/gen5" --max-new-tokens 16 --compress none --show-route && cmp -s "$tmp/gen5" "$tmp/local16"; then
  ok "a new session avoids the dead server"; else bad "a new session avoids the dead server"; fi
if grep -q 'server(s) skipped: their weights for block [23] differ' "$tmp/gen5.err" && ! grep -q '(x)' "$tmp"/gen*.err; then
  ok "x (other weights) skipped by every client"; else bad "x (other weights) skipped by every client"; fi

# a stalled server (SIGSTOP): the step times out and the same replacement happens
start_server g 2:4 --listen 127.0.0.1:0
serving g || bad "g serving"
poll 30 online 2:4 g || bad "g online"
gen "$tmp/gen4b" --max-new-tokens 48 --compress none --show-route --step-timeout 1 &
genpid=$!
poll 30 bash -c "[ \$(tr ',' '\n' <'$tmp/gen4b' | grep -c '[0-9]') -ge 5 ]" || bad "generation through g is under way"
# shellcheck disable=SC2154
kill -STOP "$pid_g"
rc=0
wait "$genpid" || rc=$?
kill -KILL "$pid_g"
if grep -q 'route: 0:2 via .*(a).*, 2:4 via .*(g)' "$tmp/gen4b.err" && grep -q '(g).*failed at position [0-9]*: .*no answer within 1000 ms' "$tmp/gen4b.err" &&
   [ "$rc" -eq 0 ] && cmp -s "$tmp/gen4b" "$tmp/local48"; then
  ok "a stalled server times out and is replaced; ids == --local ids"; else echo "    rc $rc"; bad "a stalled server times out and is replaced"; fi

# forward/backward through the library on random routes (two of the 2:4 servers are dead and one
# has other weights): equal to the in-process span within 1e-5
if "$client_fb" "$model" llama-gqa-llama3 "$boot" 4 >"$tmp/gen-fb.log" 2>&1; then
  ok "swarm_client_forward/backward == in-process span (random routes, dead servers skipped)"
else sed 's/^/    | /' "$tmp/gen-fb.log" | tail -20; bad "swarm_client_forward/backward == in-process span"; fi

# ---- 3. internet conditions: 100 ms RTT, 100 Mbit/s to every server
for n in e f; do port=$(free_port); proxy "$n" 50 100 || bad "link emulator for $n"; eval "port_$n=$port proxy_$n=$proxy_port"; done
# shellcheck disable=SC2154
start_server e 0:2 --listen "127.0.0.1:$port_e" --announce "127.0.0.1:$proxy_e" --model-name slow-gqa
# shellcheck disable=SC2154
start_server f 2:4 --listen "127.0.0.1:$port_f" --announce "127.0.0.1:$proxy_f" --model-name slow-gqa
serving e && serving f || bad "e, f serving"
slow_online() {
  "$SWARMD" status --initial-peers "$boot" --model-name slow-gqa --timeout 10 >"$tmp/status" 2>&1 &&
    grep -q '^gaps: none' "$tmp/status"
}
poll 30 slow_online || bad "e, f online"
start=$SECONDS
if gen "$tmp/gen6" --max-new-tokens 8 --model-name slow-gqa --show-route && cmp -s "$tmp/gen6" <(cut -d, -f1-8 "$tmp/local16"); then
  ok "100 ms RTT, 100 Mbit/s: same ids ($((SECONDS - start)) s)"; else bad "100 ms RTT, 100 Mbit/s: same ids"; fi

# ---- 4. total loss of 0:2 (a and e serve other names; kill a)
# shellcheck disable=SC2154
kill -KILL "$pid_a"
start=$SECONDS
if gen "$tmp/gen7" --max-new-tokens 8 --max-retries 3; then bad "total loss fails"
elif grep -q 'no usable server holds block 0\|blocks 0:2' "$tmp/gen7.err"; then ok "total loss: the error names block 0 ($((SECONDS - start)) s)"
else bad "total loss: the error names the blocks"; fi
if [ $((SECONDS - start)) -le 30 ]; then ok "total loss reported within 30 s"; else bad "total loss reported within 30 s"; fi
finish
