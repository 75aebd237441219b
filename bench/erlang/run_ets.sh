#!/usr/bin/env bash
# Run the ETS side of the shared-tables comparison (bench/bench_table.c).
#
# usage: bench/erlang/run_ets.sh [WORKLOAD...]
#
# Compiles ets_bench.erl into $BUILD_DIR/bench-erlang (BUILD_DIR defaults to
# build/ under the repository root) and runs the named workloads, or all:
#   table_lookup_1s table_lookup_2s table_insert_1s table_insert_2s
#   table_update_counter_1s table_update_counter_2s
# Results go to stdout as JSON lines; samples go to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
build_dir="${BUILD_DIR:-$root/build}/bench-erlang"

for tool in erl erlc; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "bench/erlang/run_ets.sh: '$tool' not found: erlang-base is not installed: run scripts/install-deps.sh --bench" >&2
        exit 127
    fi
done
for arg in "$@"; do
    case "$arg" in
        *[!a-z0-9_]*|'') echo "bench/erlang/run_ets.sh: bad workload name '$arg'" >&2; exit 2 ;;
    esac
done

mkdir -p "$build_dir"
erlc -Werror -o "$build_dir" "$here/ets_bench.erl"
exec erl -noshell -pa "$build_dir" \
    -eval 'ets_bench:main(init:get_plain_arguments()), init:stop().' \
    -extra "$@"
