#!/usr/bin/env bash
# install-deps.sh - installs the Debian/Ubuntu packages swarmd builds and tests with.
# Uses sudo when not root. CUDA is optional and not installed here: with nvcc on the PATH or in
# /usr/local/cuda/bin, the build adds the CUDA backend by itself.
set -euo pipefail
SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
pkgs=(
  meson ninja-build pkg-config gcc clang libclang-rt-dev  # build; clang for fuzzing
  libuv1-dev libsodium-dev libprotobuf-c-dev protobuf-c-compiler libzstd-dev libjansson-dev
  python3                                                      # test scripts (no packages)
)
# The package list is refreshed once a day at most; installing what is already there is quick.
stamp=/var/lib/apt/periodic/swarmd-update-stamp
if [ ! -e "$stamp" ] || [ -n "$(find "$stamp" -mmin +1440 2>/dev/null)" ]; then
  $SUDO apt-get update -qq
  $SUDO mkdir -p "$(dirname "$stamp")" && $SUDO touch "$stamp"
fi
# node >= 18 and npm run the tokenizer tests (reference ids from @lenml/tokenizers). Debian's
# nodejs + npm only where they are missing: a NodeSource nodejs bundles npm and conflicts with
# Debian's npm package.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  pkgs+=(nodejs npm)
fi
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
echo "install-deps: ${#pkgs[@]} packages present"
