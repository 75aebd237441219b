#!/bin/sh
# run.sh - runs bench_pino.js, installing pino into the build directory
# (never into the repository) on first use.
# Usage: bench/node/run.sh BUILD_DIR [N] [RUNS]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "${1:?usage: run.sh BUILD_DIR [N] [RUNS]}" && pwd)
dir=$build/node
if [ ! -d "$dir/node_modules/pino" ]; then
  mkdir -p "$dir"
  [ -f "$dir/package.json" ] || echo '{"name":"keel-bench-node","private":true}' >"$dir/package.json"
  npm install --prefix "$dir" --no-audit --no-fund --silent pino >&2
fi
NODE_PATH=$dir/node_modules exec node "$here/bench_pino.js" "${2:-2000000}" "${3:-5}"
