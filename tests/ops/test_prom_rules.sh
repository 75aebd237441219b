#!/bin/sh
# test_prom_rules.sh - deploy/prometheus/keel-rules.yml passes
# `promtool check rules` and its unit tests (keel-rules.test.yml) pass
# `promtool test rules` (Debian package prometheus).
#
# Usage: test_prom_rules.sh PATH/TO/deploy/prometheus
set -eu
dir=${1:?usage: test_prom_rules.sh PATH/TO/deploy/prometheus}
command -v promtool >/dev/null 2>&1 || {
  echo "test_prom_rules.sh: promtool not found: install Debian package prometheus" >&2
  exit 1
}
cd "$dir"
promtool check rules keel-rules.yml
promtool test rules keel-rules.test.yml
