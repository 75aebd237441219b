#!/bin/sh
# test_log_jq.sh - keel's JSON log lines, parsed by a real JSON parser (jq).
#
# Usage: test_log_jq.sh PATH/TO/ops_test_log
# Runs the test binary's jq_sample_lines case, which writes a few lines to a
# file, then checks with jq that every line is one valid JSON object and that
# each has exactly the expected fields and values (escapes, multibyte text,
# U+FFFD for an invalid byte, nested redaction, context and child fields).
set -eu

bin=${1:?usage: test_log_jq.sh PATH/TO/ops_test_log}
command -v jq >/dev/null || { echo "jq not installed (apt-get install jq)"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
out=$tmp/lines.log

KT_LOG_JQ_FILE=$out "$bin" jq_sample_lines >/dev/null
[ "$(wc -l <"$out")" -eq 4 ] || { echo "expected 4 lines"; cat "$out"; exit 1; }

pass=0
check() { # check NAME JQ_FILTER: the filter over the array of lines must be true
  if jq -e -s "$2" "$out" >/dev/null; then
    pass=$((pass + 1))
  else
    echo "FAILED: $1"
    cat "$out"
    exit 1
  fi
}

check every_line_is_an_object_with_time_level_msg_service \
  'length == 4 and all(.[]; type == "object" and (.time | test("^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z$")) and .service == "jq-svc")'
check typed_fields_exact \
  '.[0] | del(.time, .u) == {"level":"info","msg":"fields","service":"jq-svc","s":"text","i":-7,"d":2.5,"b":true,"z":null}'
check escapes_and_utf8_round_trip \
  '.[1] | del(.time) == {"level":"warn","msg":"escapes","service":"jq-svc","s":"q\"b\\n\n\t\u0001 é ✓ 😀 \ufffd"}'
check redaction_at_depth_with_child_and_context_fields \
  '.[2] | del(.time) == {"level":"error","msg":"redacted","service":"jq-svc","module":"auth","correlationId":"abc-123","password":"[REDACTED]","a":{"b":{"c":{"Token":"[REDACTED]","x":1}}}}'
check event_has_stable_name \
  '.[3] | del(.time) == {"level":"info","msg":"app_started","service":"jq-svc","event":"app_started","correlationId":"abc-123","app":"jq"}'
# jq reads numbers as doubles: check the uint64 maximum in the raw text.
if grep -q '"u":18446744073709551615,' "$out"; then pass=$((pass + 1)); else
  echo "FAILED: uint64_max_exact"; exit 1; fi

echo "$pass passed, 0 failed"
