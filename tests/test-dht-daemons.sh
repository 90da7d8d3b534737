#!/usr/bin/env bash
# test-dht-daemons.sh - three real `swarmd dht serve` processes on 127.0.0.1 and the one-shot
# `swarmd dht ping|get|put|nodes` commands against them: store on one node and read from another,
# overwrite rules (the later expiration wins), expiry, owned subkeys (signed; a forged record for
# another peer's subkey is refused by every node), a node killed with SIGKILL, a clean SIGTERM that
# saves the routing table, a restart from that table alone, and the reachability check (a node
# announcing an address nobody listens on runs in client mode and says what to do).
# Every wait is a bounded poll on an observable event; all processes are killed on exit.
set -u
: "${SWARMD:?}"
pass=0
fail=0
tmp=$(mktemp -d)
declare -A pid addr
cleanup() {
  exec 2>/dev/null
  for p in "${pid[@]}"; do kill -KILL "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

ok() { pass=$((pass + 1)); echo "ok - $1"; }
bad() {
  fail=$((fail + 1)); echo "not ok - $1"
  for f in "$tmp/out" "$tmp/err"; do [ -s "$f" ] && sed 's/^/    | /' "$f" | head -20; done
}
# run NAME WANT_RC CMD...: stdout in $tmp/out, stderr in $tmp/err
run() {
  local name=$1 want=$2 rc=0
  shift 2
  "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
  if [ "$rc" -eq "$want" ]; then ok "$name"; else echo "    exit $rc, wanted $want"; bad "$name"; fi
}
has() { # has TEXT NAME: $tmp/out contains TEXT
  if grep -qF -- "$1" "$tmp/out"; then ok "$2"; else echo "    '$1' not in output"; bad "$2"; fi
}
hasnt() {
  if grep -qF -- "$1" "$tmp/out"; then echo "    '$1' in output"; bad "$2"; else ok "$2"; fi
}
# poll SECONDS CMD...: runs CMD every 0.1 s until it succeeds; fails after SECONDS
poll() {
  local end=$((SECONDS + $1))
  shift
  while [ "$SECONDS" -le "$end" ]; do
    "$@" && return 0
    sleep 0.1
  done
  return 1
}

# until daemon/main.c lists the command, skip (exit 77) rather than fail
if ! "$SWARMD" dht --help >/dev/null 2>&1; then
  echo "dht-daemons: 'swarmd dht' is not in this binary's command table; skipped"
  exit 77
fi

dht() { "$SWARMD" --identity "$tmp/client.id" dht "$@" --timeout 10; }

# start N ARGS...: starts node N in the background, waits for its "joined:" line, sets addr[N]
start() {
  local n=$1
  shift
  : >"$tmp/n$n.out"
  "$SWARMD" --identity "$tmp/n$n.id" dht serve --listen 127.0.0.1:0 --table "$tmp/n$n.table" "$@" \
    >"$tmp/n$n.out" 2>"$tmp/n$n.err" &
  pid[$n]=$!
  if poll 15 grep -q '^joined:' "$tmp/n$n.out"; then
    addr[$n]=$(sed -n 's/^address: //p' "$tmp/n$n.out")
    ok "node $n serves at ${addr[$n]}"
  else
    sed 's/^/    | /' "$tmp/n$n.out" "$tmp/n$n.err" | head
    bad "node $n starts"
    addr[$n]=none
  fi
}
exited() { ! kill -0 "$1" 2>/dev/null; }
# get_has KEY ADDR TEXT: dht get KEY through ADDR prints TEXT
get_has() { dht get "$1" --initial-peers "$2" >"$tmp/out" 2>"$tmp/err" && grep -qF -- "$3" "$tmp/out"; }
get_hasnt() { dht get "$1" --initial-peers "$2" >"$tmp/out" 2>"$tmp/err" && ! grep -qF -- "$3" "$tmp/out"; }
table_size() { # table_size ADDR N: the node at ADDR lists N contacts
  dht nodes "$1" >"$tmp/out" 2>"$tmp/err" && grep -qF -- ": $2 contacts" "$tmp/out"
}
table_has() { dht nodes "$1" >"$tmp/out" 2>"$tmp/err" && grep -qF -- "$2" "$tmp/out"; }

# ---- usage errors say what to do
run "serve without --new-swarm or peers refused" 2 "$SWARMD" --identity "$tmp/x.id" dht serve \
  --listen 127.0.0.1:0 --table "$tmp/x.table"
grep -qF -- "--new-swarm" "$tmp/err" && ok "the error names --new-swarm" || bad "the error names --new-swarm"
run "put without --ttl refused" 2 "$SWARMD" dht put k s v --initial-peers 127.0.0.1:1
run "get without peers refused" 2 "$SWARMD" dht get k
for sub in serve ping get put nodes; do
  run "dht $sub --help" 0 "$SWARMD" dht $sub --help
  has "Usage: swarmd dht $sub" "dht $sub --help text"
done

# ---- three daemons
start 1 --new-swarm
start 2 --initial-peers "${addr[1]}"
start 3 --initial-peers "${addr[1]}"
if poll 15 table_size "${addr[1]}" 2; then ok "node 1's routing table lists nodes 2 and 3"; else bad "node 1's table"; fi
id2=${addr[2]%%@*}
run "ping node 2" 0 dht ping "${addr[2]#*@}" --count 2
has "$id2" "ping prints node 2's peer id"
has "2 of 2 answered" "both pings answered"

# ---- store on one node, get from another
run "put through node 1" 0 dht put svc plain v1 --ttl 60 --initial-peers "${addr[1]}"
has "stored on 3 nodes" "all three nodes took it"
run "get through node 3" 0 dht get svc --initial-peers "${addr[3]}"
has "subkey=plain value=v1 " "node 3's lookup finds v1"

# ---- overwrite rules: a later expiration replaces, an earlier one changes nothing
run "overwrite with a later expiration" 0 dht put svc plain v2 --ttl 120 --initial-peers "${addr[2]}"
run "get after overwrite" 0 dht get svc --initial-peers "${addr[1]}"
has "subkey=plain value=v2 " "v2 replaced v1"
run "write with an earlier expiration" 0 dht put svc plain v3 --ttl 30 --initial-peers "${addr[3]}"
has "unchanged" "put reports the newer record was kept"
run "get after the earlier write" 0 dht get svc --initial-peers "${addr[2]}"
has "value=v2 " "v2 is still there"
hasnt "value=v3" "v3 was not taken"

# ---- owned subkeys: signed by their owner, a forgery refused everywhere
cid=$("$SWARMD" --identity "$tmp/client.id" id | sed -n 's/^peer id: *//p')
run "put an owned subkey (self)" 0 dht put owned self mine --ttl 60 --initial-peers "${addr[1]}"
run "get the owned subkey through node 2" 0 dht get owned --initial-peers "${addr[2]}"
has "subkey=peer:$cid value=mine " "the owned record is there"
has "owner=$cid signature=verified" "owner and verified signature printed"
run "forged record for the client's subkey refused by every node" 1 "$SWARMD" --identity "$tmp/mallory.id" dht put \
  owned x evil --ttl 90 --forge-for "$cid" --initial-peers "${addr[3]}" --timeout 10
has "refused" "put reports the refusal"
run "another peer's subkey refused before sending" 1 "$SWARMD" --identity "$tmp/mallory.id" dht put \
  owned "peer:$cid" evil --ttl 90 --initial-peers "${addr[3]}" --timeout 10
grep -qF "belongs to another peer" "$tmp/err" && ok "the error says whose subkey it is" || bad "owner error text"
for n in 1 2 3; do
  run "get owned through node $n" 0 dht get owned --initial-peers "${addr[$n]}"
  has "value=mine " "node $n still returns the owner's value"
  hasnt "evil" "node $n never returns the forged value"
done

# ---- expiry
run "put with a 2 s ttl" 0 dht put brief s soon-gone --ttl 2 --initial-peers "${addr[1]}"
if poll 10 get_has brief "${addr[2]}" "value=soon-gone"; then ok "short record readable"; else bad "short record readable"; fi
if poll 15 get_hasnt brief "${addr[3]}" "soon-gone"; then ok "short record expired everywhere"; else bad "expiry"; fi

# ---- a node dies without warning
{ kill -KILL "${pid[1]}"; wait "${pid[1]}"; } 2>/dev/null # wait returns once it is gone
if exited "${pid[1]}"; then ok "node 1 killed (SIGKILL)"; else bad "node 1 killed"; fi
run "get through node 2 after node 1 died" 0 dht get svc --initial-peers "${addr[2]}"
has "value=v2 " "the record survives node 1"
run "get through node 3 after node 1 died" 0 dht get owned --initial-peers "${addr[3]}"
has "value=mine " "the owned record survives node 1"

# ---- clean stop saves the routing table; a restart from the table alone rejoins
kill -TERM "${pid[2]}"
if poll 10 exited "${pid[2]}"; then ok "node 2 stops on SIGTERM"; else bad "node 2 stops on SIGTERM"; fi
wait "${pid[2]}"
rc=$?
[ "$rc" -eq 0 ] && ok "node 2 exit status 0" || { echo "    exit $rc"; bad "node 2 exit status"; }
if [ "$(grep -c '@\|:' "$tmp/n2.table")" -ge 1 ]; then ok "node 2's routing table was saved"; else bad "table saved"; fi
start 2
grep -qE 'listening on .*\(([1-9][0-9]*) saved contacts' "$tmp/n2.out" && ok "restart read the saved contacts" ||
  bad "restart read the saved contacts"
run "get through the restarted node" 0 dht get svc --initial-peers "${addr[2]}"
has "value=v2 " "the restarted node finds the record"
if poll 15 table_has "${addr[3]}" "${addr[2]#*@}"; then ok "node 3 knows the restarted node"; else bad "node 3's table"; fi

# ---- reachability: a node announcing an address nobody listens on (dead node 1's) runs as a client
grep -qF "; full node" "$tmp/n3.out" && ok "node 3 found itself reachable (full node)" || bad "node 3 full node"
start 4 --initial-peers "${addr[3]}" --announce "${addr[1]#*@}"
grep -qF "client mode: no peer could connect back" "$tmp/n4.out" && ok "node 4 runs in client mode" ||
  bad "node 4 client mode"
grep -qF -- "--announce HOST:PORT" "$tmp/n4.err" && ok "its log line says what to do" || bad "node 4 advice line"
id4=$(sed -n 's/^peer id: //p' "$tmp/n4.out")
if dht nodes "${addr[3]}" >"$tmp/out" 2>"$tmp/err" && [ -n "$id4" ] && ! grep -qF -- "$id4" "$tmp/out"; then
  ok "node 3 does not list node 4"
else bad "node 4 stays out of node 3's table"; fi
run "a lookup through the client works" 0 dht get svc --initial-peers "${addr[3]}"
start 5 --initial-peers "${addr[3]}" --announce "${addr[1]#*@}" --no-reachability-check
grep -qF "; full node" "$tmp/n5.out" && ok "--no-reachability-check keeps a full node" || bad "node 5 full node"
start 6 --initial-peers "${addr[3]}" --client-mode
grep -qF "; client mode" "$tmp/n6.out" && ok "--client-mode forces client mode" || bad "node 6 client mode"

# ---- unreachable node: a bounded failure with advice
run "ping a dead address fails" 1 dht ping "${addr[1]#*@}" --count 1
grep -qF "did not answer" "$tmp/err" && ok "ping failure says what to check" || bad "ping failure text"

echo "dht-daemons: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
