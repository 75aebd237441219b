#!/usr/bin/env bash
# Installs keel from the build directory $1 into a scratch prefix, then builds
# and runs a tiny consumer twice: once with CMake's find_package(keel), once
# with pkg-config. Proves that `make install` gives users what they need.
set -euo pipefail
build=${1:-build}
here=$(cd "$(dirname "$0")" && pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

cmake --install "$build" --prefix "$scratch/prefix" >/dev/null

# find_package
cmake -S "$here/consumer" -B "$scratch/cmake-build" -DCMAKE_PREFIX_PATH="$scratch/prefix" >/dev/null
cmake --build "$scratch/cmake-build" >/dev/null
"$scratch/cmake-build/consumer" | grep -qx "pong from a keel process"

# pkg-config
pcdir=$(find "$scratch/prefix" -name keel.pc -printf '%h\n' | head -1)
read -r -a flags <<<"$(PKG_CONFIG_PATH="$pcdir" pkg-config --cflags --libs keel)"
cc -o "$scratch/consumer-pc" "$here/consumer/consumer.c" "${flags[@]}" \
  -Wl,-rpath,"$(dirname "$pcdir")"
"$scratch/consumer-pc" | grep -qx "pong from a keel process"
# keelctl (tools/) is installed into bin/
help=$("$scratch/prefix/bin/keelctl" --help)
grep -q '^usage: keelctl' <<<"$help"
echo "install: find_package and pkg-config consumers built and ran, keelctl installed"
