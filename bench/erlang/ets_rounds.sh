#!/usr/bin/env bash
# Shared tables against ETS, measured as paired rounds (docs/performance.md,
# "Shared tables against ETS", method D): for each workload, N rounds in
# which every given bench_table binary and ETS run one right after the other,
# the order rotated every round so that no side always runs first. Prints,
# per workload, the median over the rounds of each binary's ratio to ETS
# (and its range), and the load average seen during the run. On a shared
# machine the load moves within seconds; a ratio taken within one round sees
# closer conditions than medians of whole sets taken a minute apart.
#
# usage: bench/erlang/ets_rounds.sh [-n ROUNDS] BENCH_TABLE... [-- WORKLOAD...]
#   e.g. bench/erlang/ets_rounds.sh -n 9 /tmp/before/bench_table build/bench/bench_table
# Each figure is itself a median of 3 runs (bench_table --runs 3; ets_bench's 3).
# Raw figures go to $OUT (default: a temporary file, named at the end).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
build_dir="${BUILD_DIR:-$root/build}/bench-erlang"
rounds=7
if [ "${1:-}" = -n ]; then
    rounds=$2
    shift 2
fi
bins=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do
    bins+=("$1")
    shift
done
[ "${1:-}" = -- ] && shift
workloads=("$@")
[ ${#workloads[@]} -gt 0 ] || workloads=(table_lookup_1s table_lookup_2s table_insert_1s
    table_insert_2s table_update_counter_1s table_update_counter_2s)
if [ ${#bins[@]} -eq 0 ]; then
    echo "usage: $0 [-n ROUNDS] BENCH_TABLE... [-- WORKLOAD...]" >&2
    exit 2
fi
for tool in erl erlc python3; do
    command -v "$tool" >/dev/null 2>&1 || { echo "$0: '$tool' not found (scripts/install-deps.sh --bench)" >&2; exit 127; }
done
mkdir -p "$build_dir"
erlc -Werror -o "$build_dir" "$here/ets_bench.erl"
out="${OUT:-$(mktemp /tmp/ets-rounds.XXXXXX)}"
: >"$out"

# One figure (ops/s) of contestant $1 (a binary's index, or "ets") on workload $2.
run_one() {
    if [ "$1" = ets ]; then
        erl -noshell -pa "$build_dir" \
            -eval 'ets_bench:main(init:get_plain_arguments()), init:stop().' -extra "$2" 2>/dev/null
    else
        "${bins[$1]}" --runs 3 "$2" 2>/dev/null
    fi | sed -n 's/.*"value": \([0-9.]*\).*/\1/p'
}

contestants=("${!bins[@]}" ets)
k=${#contestants[@]}
for w in "${workloads[@]}"; do
    for ((r = 1; r <= rounds; r++)); do
        echo "ets_rounds: $w round $r of $rounds" >&2
        for ((j = 0; j < k; j++)); do
            c=${contestants[$(((j + r) % k))]}
            echo "$w $r $c $(run_one "$c" "$w")" >>"$out"
        done
        echo "load $(cut -d' ' -f1 /proc/loadavg)" >>"$out"
    done
done

python3 - "$out" "${bins[@]}" <<'EOF'
import collections, statistics as st, sys
rows, loads = collections.defaultdict(dict), []
for line in open(sys.argv[1]):
    f = line.split()
    if f[0] == "load":
        loads.append(float(f[1]))
    elif len(f) == 4:
        rows[(f[0], int(f[1]))][f[2]] = float(f[3])
bins = sys.argv[2:]
print("load average during the run: %.1f to %.1f (median %.1f)" % (min(loads), max(loads), st.median(loads)))
for w in dict.fromkeys(w for w, _ in rows):
    rs = [d for (ww, _), d in rows.items() if ww == w and "ets" in d]
    line = ["%s: ETS %.2f M/s" % (w, st.median(d["ets"] for d in rs) / 1e6)]
    for i, b in enumerate(bins):
        q = [d[str(i)] / d["ets"] for d in rs if str(i) in d]
        line.append("%s %.2fx (%.2f-%.2f)" % (b, st.median(q), min(q), max(q)))
    print("; ".join(line))
EOF
echo "ets_rounds: raw figures in $out" >&2
