#!/usr/bin/env bash
# Runs the libFuzzer target given as $1 over the seed corpus in $2 (default
# tests/fuzz/corpus) for FUZZ_SECONDS (default 20) seconds. A crash, a
# timeout or a sanitizer report fails it (libFuzzer exits non-zero). New
# inputs go to a scratch copy of the corpus, so the repository is never
# written. Leak detection is off: the server runs for the fuzzer's whole
# life and is never torn down.
set -euo pipefail
fuzzer=$1
here=$(cd "$(dirname "$0")" && pwd)
seeds=${2:-$here/corpus}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/corpus"
cp "$seeds"/* "$work/corpus/"
rc=0
"$fuzzer" -max_total_time="${FUZZ_SECONDS:-20}" -timeout=10 -rss_limit_mb=4096 \
  -max_len=8192 -detect_leaks=0 -print_final_stats=1 -artifact_prefix="$work/" \
  "$work/corpus" >"$work/log" 2>&1 || rc=$?
# On a failure, the log from its first report on (a sanitizer's, or a
# target's own "==== ..." lines, which come before libFuzzer's stack), so a
# long report is not cut off; else its end.
report=$(sed -n '/^==\(==\|[0-9]*== \{0,1\}ERROR\)/,$p' "$work/log" | head -n 150)
if [[ $rc -ne 0 && -n $report ]]; then
  echo "$report"
  grep '^stat::' "$work/log" | awk '!seen[$0]++' || true
else
  tail -n 25 "$work/log"
fi
if [[ $rc -ne 0 ]]; then
  for f in "$work"/crash-* "$work"/timeout-* "$work"/leak-*; do
    [[ -e $f ]] && { echo "input that failed ($f):"; od -c "$f" | head -20; }
  done
fi
exit $rc
