#!/usr/bin/env bash
# Run the Erlang/OTP (BEAM) side of keel's benchmark comparison.
#
# usage: bench/erlang/run.sh [WORKLOAD...]
#
# Compiles keel_bench.erl into $BUILD_DIR/bench-erlang (BUILD_DIR defaults to
# build/ under the repository root) and runs the named workloads (always in
# this order, whatever the order of the arguments), or all of them when none
# is named:
#   spawn idle_process_memory cast_throughput pipeline ring pairs_roundtrips
#   call_rtt statem_call_rtt restart_latency supervisor_start
# Results go to stdout as JSON lines ({"bench": ..., "unit": ..., "value": ...});
# progress and individual samples go to stderr. Extra flags for the Erlang VM
# can be passed in $ERL_FLAGS (read by erl itself), e.g. ERL_FLAGS="+sbt db".
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
build_dir="${BUILD_DIR:-$root/build}/bench-erlang"

for tool in erl erlc; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "bench/erlang/run.sh: '$tool' not found: erlang-base is not installed: run scripts/install-deps.sh" >&2
        exit 127
    fi
done

for arg in "$@"; do
    case "$arg" in
        -h|--help)
            sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *[!a-z_]*|'')
            echo "bench/erlang/run.sh: bad workload name '$arg'" >&2
            exit 2
            ;;
    esac
done

mkdir -p "$build_dir"
erlc -Werror -o "$build_dir" "$here/keel_bench.erl"

# main/1 halts with status 1 on an unknown workload or a failure.
exec erl -noshell -pa "$build_dir" \
    -eval 'keel_bench:main(init:get_plain_arguments()), init:stop().' \
    -extra "$@"
