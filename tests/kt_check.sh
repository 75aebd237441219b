# kt_check.sh - the verdict helpers the shell tests share (tests/http,
# tests/examples, tests/tools). Sourced, not run; the script prints its own
# summary from $passed and $failed and exits non-zero when failed > 0.
#   ok NAME                 a check passed
#   bad NAME [DETAIL...]    a check failed; each DETAIL on a line of its own
#   expect NAME WANT GOT    ok when GOT is WANT, else bad with both
# shellcheck shell=bash

passed=0 failed=0
ok() { echo "ok   - $1"; passed=$((passed + 1)); }
bad() {
  echo "FAIL - $1"
  shift
  for l in "$@"; do echo "       $l"; done
  failed=$((failed + 1))
}
expect() { if [ "$2" = "$3" ]; then ok "$1"; else bad "$1" "(want [$2], got [$3])"; fi; }
