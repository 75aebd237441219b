#!/usr/bin/env bash
# Ports against Erlang's open_port: bench_port and bench/erlang/port_bench.erl
# alternately, ROUNDS times (default 3), each side's median per workload over
# the rounds, and keel's figure as a ratio of the BEAM's (higher is better
# for keel: every unit is a rate).
#   bench/port-compare.sh BUILD_DIR [ROUNDS]
set -euo pipefail
build=${1:-build}
rounds=${2:-3}
here=$(cd "$(dirname "$0")" && pwd)
out="$build/bench-port"
mkdir -p "$out"
rm -f "$out"/*.jsonl
erlc -Werror -o "$out" "$here/erlang/port_bench.erl"
for ((r = 1; r <= rounds; r++)); do
  echo "port-compare: round $r of $rounds" >&2
  "$build/bench/bench_port" >"$out/keel-$r.jsonl"
  erl -noshell -pa "$out" -eval 'port_bench:main(), init:stop().' >"$out/beam-$r.jsonl"
done
for side in keel beam; do
  cat "$out/$side"-*.jsonl | jq -s -c 'group_by(.bench)[] |
    {bench: .[0].bench, unit: .[0].unit, value: (map(.value) | sort | .[(length / 2 | floor)])}' \
    >"$out/$side.jsonl"
done
jq -s -r '(.[0] | map({(.bench): .}) | add) as $k | (.[1] | map({(.bench): .}) | add) as $b |
  ($k | keys[]) as $n |
  "\($n)\tkeel \($k[$n].value) \($k[$n].unit)\tBEAM \($b[$n].value)\tratio \(($k[$n].value / $b[$n].value * 100 | round) / 100)x"' \
  <(jq -s . "$out/keel.jsonl") <(jq -s . "$out/beam.jsonl")
