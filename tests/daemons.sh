# daemons.sh - sourced by the shell tests that start real daemons on loopback:
#   name=NAME; . "$(dirname "$0")/daemons.sh"
# gives them a temporary directory $tmp (removed at exit unless KEEP_TMP is set; the throughput
# cache lives there too), the array pids of processes killed at exit, TAP-style ok/bad (bad prints
# the tail of $tmp/status and of every *.err and *.log in $tmp), poll SECONDS CMD... (bounded
# polling), free_port (a port nothing listens on, below the kernel's ephemeral range so no
# outgoing connection takes it before the server binds it) and finish ("NAME: N passed, N failed",
# exit status 0 only without failures).
set -u
: "${SWARMD:?}"
: "${SW_SOURCE_ROOT:?}"
: "${name:?set name before sourcing daemons.sh}"
pass=0
fail=0
tmp=$(mktemp -d)
export SWARMD_CACHE_DIR="$tmp/cache"
pids=()
cleanup() {
  exec 2>/dev/null
  for p in "${pids[@]}"; do kill -CONT "$p"; kill -KILL "$p"; done
  wait
  [ -n "${KEEP_TMP:-}" ] || rm -rf "$tmp"
}
trap cleanup EXIT

ok() { pass=$((pass + 1)); echo "ok - $1"; }
bad() {
  fail=$((fail + 1)); echo "not ok - $1"
  for f in "$tmp/status" "$tmp"/*.err "$tmp"/*.log; do
    [ -s "$f" ] && { echo "    $f:"; grep -v 'connect failed' "$f" | sed 's/^/    | /' | tail -12; }
  done
}
poll() { # poll SECONDS CMD...
  local end=$((SECONDS + $1))
  shift
  while [ "$SECONDS" -le "$end" ]; do
    "$@" && return 0
    sleep 0.1
  done
  return 1
}
free_port() {
  local p
  for _ in $(seq 100); do
    p=$((20000 + RANDOM % 12000))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return 0; }
  done
  return 1
}
finish() {
  echo "$name: $pass passed, $fail failed"
  [ "$fail" -eq 0 ]
  exit $?
}
