#!/usr/bin/env bash
# first_paint.sh MICROSERVICE - starts the microservice with an ADMIN_TOKEN
# on loopback and measures the dashboard's first paint in headless Chromium
# (first_paint.mjs; playwright-core from tests/browser, scripts/install-deps.sh).
set -eu
ms=$(realpath "$1")
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
hport=$((port + 1))
(cd "$tmp" && PORT=$port HEALTH_PORT=$hport HOST=127.0.0.1 LOG_FILE=$tmp/log ADMIN_TOKEN=bench-t0ken \
  APP_ENV=production exec "$ms") &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 100); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$hport/health/startup")" = 200 ] && break
  sleep 0.1
done
node "$here/first_paint.mjs" "http://127.0.0.1:$hport" bench-t0ken "${2:-7}"
