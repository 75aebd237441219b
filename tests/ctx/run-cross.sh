#!/usr/bin/env bash
# Cross-builds tests/ctx/ctx_selftest.c with the AArch64 assembly context switch
# and runs it under qemu-aarch64, so the switch for an architecture this machine
# lacks is tested on every `make test`. Needs gcc-aarch64-linux-gnu and
# qemu-user (scripts/install-deps.sh installs them).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$root/build}/ctx_selftest_aarch64
mkdir -p "$(dirname "$out")"
aarch64-linux-gnu-gcc -std=gnu17 -O2 -Wall -Wextra -Werror -static -D_GNU_SOURCE -DKEEL_CTX_ASM=1 \
  -I"$root/src" -I"$root/include" \
  "$root/tests/ctx/ctx_selftest.c" "$root/src/rt/ctx.c" "$root/src/rt/ctx_aarch64.S" -lm -o "$out"
echo "ctx (aarch64 under qemu): $(qemu-aarch64 "$out")"
