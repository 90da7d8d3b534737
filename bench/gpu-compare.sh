#!/usr/bin/env bash
# bench/gpu-compare.sh - everything issue 8 asks of a GPU run, in ONE device call:
#   1. test-cuda (every op and kernel variant against the CPU reference, fixture models,
#      the pipeline on the GPU);
#   2. compute-sanitizer memcheck on test-cuda's op cases (the whole-model cases are left out
#      to keep within the call's time);
#   3. bench-gpu (copy bandwidth, GEMV variants, attention, matmul rate, whole 7B-shaped model);
#   4. the peer: transformers bf16 generate on a Llama-2-7B-shaped random model (bench/hf-peer.py),
#      when python3 can import torch and transformers there.
# Each stage runs under its own time limit, writes its full log to OUTDIR/<stage>.log, and the
# script ends with a table of stages (exit code, seconds) and the result lines that matter.
#
# Here (with nvcc), then one device call (carry [".gpu"]), from the repository root there:
#     meson setup build-cu -Dcuda=enabled && ninja -C build-cu tests/test-cuda bench/bench-gpu
#     ../shared/tools/gpu-pack build-cu
#   device:  bench/gpu-compare.sh "$OUT"
# STAGES="test memcheck bench peer" (the default) picks stages; SW_CUDA_VARIANT passes through
# (kernels/cuda/backend.h). Exit code: 0 when every stage that ran passed.
#
# Written 2026-12-05 without a GPU: NOT YET RUN (docs/GPU.md).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/gpu-compare}}
stages=${STAGES:-test memcheck bench peer}
mkdir -p "$out"
if [ ! -f .gpu/env ] || [ ! -x .gpu/bin/test-cuda ] || [ ! -x .gpu/bin/bench-gpu ]; then
  echo "gpu-compare: .gpu/ with test-cuda and bench-gpu is missing: build with -Dcuda=enabled," \
       "run ../shared/tools/gpu-pack BUILD_DIR here and carry .gpu with the device call" >&2
  exit 2
fi
# shellcheck disable=SC1091
. .gpu/env
export SW_SOURCE_ROOT=$PWD

summary=()
failed=0
# stage NAME LIMIT_S CMD...: runs CMD with a time limit, log in $out/NAME.log, appends a row.
stage() {
  local name=$1 limit=$2 rc t0 t1
  shift 2
  case " $stages " in *" $name "*) ;; *) summary+=("| $name | skipped | - |"); return 0 ;; esac
  echo "== $name (limit ${limit} s): $*"
  t0=$(date +%s)
  timeout -k 10 "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  t1=$(date +%s)
  tail -n 5 "$out/$name.log"
  [ $rc -eq 124 ] && echo "gpu-compare: $name ran past ${limit} s (log: $out/$name.log)"
  [ $rc -ne 0 ] && [ $rc -ne 77 ] && failed=1
  summary+=("| $name | $rc | $((t1 - t0)) |")
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv \
  >"$out/nvidia-smi.txt" 2>&1 && cat "$out/nvidia-smi.txt"

stage test 170 .gpu/bin/test-cuda
stage memcheck 130 compute-sanitizer --tool memcheck --error-exitcode 9 \
  .gpu/bin/test-cuda matmul gemv int8 attention kv_append embed errors rmsnorm rope
stage bench 180 .gpu/bin/bench-gpu
if python3 -c 'import torch, transformers' >/dev/null 2>&1; then
  stage peer 100 python3 bench/hf-peer.py
else
  summary+=("| peer | skipped (no torch + transformers) | - |")
fi

echo
echo "## gpu-compare ($(date -u +%Y-%m-%dT%H:%MZ)), logs in $out"
echo
echo "| stage | exit code | seconds |"
echo "| --- | --- | --- |"
printf '%s\n' "${summary[@]}"
echo
# the lines that matter, from each log
[ -f "$out/test.log" ] && grep -E '^(not ok|test-cuda:)|FAIL' "$out/test.log" | head -40
[ -f "$out/memcheck.log" ] && grep -E 'ERROR SUMMARY|Invalid|test-cuda:' "$out/memcheck.log" | head -10
[ -f "$out/bench.log" ] && sed -n '/^## Summary/,$p' "$out/bench.log"
[ -f "$out/peer.log" ] && grep -E '^hf-peer' "$out/peer.log"
exit $failed
