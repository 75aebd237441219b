#!/usr/bin/env bash
# test_dashboard.sh MICROSERVICE SHOTS_DIR - the dashboard in a real headless
# Chromium (tests/browser/dashboard.mjs, playwright-core from npm, installed by
# scripts/install-deps.sh) against the reference microservice with an
# ADMIN_TOKEN. Screenshots are kept in SHOTS_DIR (under the build dir).
set -u
ms=$1
shots=$2
src=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -x /usr/bin/chromium ] || [ ! -d "$src/browser/node_modules/playwright-core" ]; then
  echo "test_dashboard: needs /usr/bin/chromium and tests/browser/node_modules (scripts/install-deps.sh)" >&2
  exit 1
fi
tmp=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
port=$((20000 + RANDOM % 20000))
hport=$((port + 1))
mkdir -p "$tmp/ms"
(cd "$tmp" && PORT=$port HEALTH_PORT=$hport HOST=127.0.0.1 LOG_FILE=$tmp/ms/log ADMIN_TOKEN=dash-t0ken \
  SERVICE_NAME=dashtest exec "$ms") &
pid=$!
. "$src/http/ms_lib.sh"
wait_startup "$hport" ms || { echo "microservice did not start" >&2; exit 1; }
cd "$src/browser" && node dashboard.mjs "http://127.0.0.1:$hport" dash-t0ken "$shots"
