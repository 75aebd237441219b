#!/bin/sh
# test_promtool.sh - the metrics exposition passes `promtool check metrics`
# (Debian package prometheus) with no error and no lint warning.
#
# Usage: test_promtool.sh PATH/TO/ops_test_metrics
# The test binary, run with --exposition, prints the text-format exposition of
# a sample registry (every metric type, escaped labels and help, the built-in
# metrics, a supervisor restart). promtool exits 0 even when it only warns, so
# this script compares its output: any line at all fails the test. A known-bad
# exposition is checked first, to prove this promtool does report lint
# problems (a check that can never fail proves nothing).
set -u

bin=${1:?usage: test_promtool.sh PATH/TO/ops_test_metrics}

if ! command -v promtool >/dev/null 2>&1; then
  echo "test_promtool.sh: promtool not found: install Debian package prometheus" \
       "(apt-get install -y prometheus, or scripts/install-deps.sh)" >&2
  exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# 1. promtool must flag a counter without the _total suffix.
printf '# HELP bad_counter A counter.\n# TYPE bad_counter counter\nbad_counter 1\n' >"$tmp/bad.txt"
promtool check metrics <"$tmp/bad.txt" >"$tmp/bad.out" 2>&1
if [ ! -s "$tmp/bad.out" ]; then
  echo "FAIL: promtool reported nothing for a counter without _total; cannot trust it" >&2
  exit 1
fi

# 2. our exposition.
if ! "$bin" --exposition >"$tmp/expo.txt"; then
  echo "FAIL: $bin --exposition failed" >&2
  exit 1
fi
if [ ! -s "$tmp/expo.txt" ]; then
  echo "FAIL: empty exposition" >&2
  exit 1
fi
promtool check metrics <"$tmp/expo.txt" >"$tmp/check.out" 2>&1
rc=$?
if [ "$rc" -ne 0 ] || [ -s "$tmp/check.out" ]; then
  echo "FAIL: promtool check metrics (exit $rc):" >&2
  cat "$tmp/check.out" >&2
  echo "--- exposition:" >&2
  cat "$tmp/expo.txt" >&2
  exit 1
fi
echo "ok - promtool check metrics: $(grep -c -v '^#' "$tmp/expo.txt") samples, no warnings"
