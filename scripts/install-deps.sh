#!/usr/bin/env bash
# Installs the Debian packages keel needs to build, test and benchmark, when
# they are missing. Runs apt-get through sudo when not root. Safe to run again:
# it does nothing when everything is there.
#
#   scripts/install-deps.sh          build + test dependencies
#   scripts/install-deps.sh --bench  also what `make bench-compare` needs
set -euo pipefail

# build: compiler, cmake, libuv, jansson (JSON outside the hot paths),
# node-llhttp (llhttp's generated C, compiled into libkeel as the HTTP/1.1
# parser, see docs/decisions/0007), libsqlite3-dev (the event store's
# embedded database, src/es/), libpq-dev (its PostgreSQL backend),
# libcurl4-openssl-dev (the HTTP client, src/http/client*.c), libssl-dev
# (HMAC-SHA256 of signed alert webhooks, src/http/alert_sink.c), tzdata (the
# TZif files cron's time zones are read from, src/ops/tz.c). test: a cross
# compiler and qemu to run the AArch64 context switch (tests/ctx/run-cross.sh);
# prometheus for promtool and a real scrape (tests/ops/test_prom*.sh); jq and
# curl, which read logs and talk to the microservice in the test scripts;
# clang and its libFuzzer runtime for the fuzz targets (tests/fuzz);
# http-parser, the second parser of the differential fuzz target;
# postgresql-15, the throwaway cluster of the event store's PostgreSQL tests
# (tests/es/pg_cluster.sh); pgbouncer, the same suites behind a pooler in
# transaction mode (tests/es/pgbouncer.sh); nginx-light, the TLS server of the
# HTTP client's tests (tests/http/test_client_tls.sh); prometheus-alertmanager,
# the real Alertmanager alert delivery posts to (tests/http/test_alert_sink_am.sh);
# python3, whose zoneinfo is the oracle of tests/ops/test_cron_oracle.py.
# --build: only what building needs (the Docker image). --bench: also the
# systems keel is compared with (Erlang/OTP, nginx) and wrk.
build_packages=(build-essential cmake pkg-config libuv1-dev libjansson-dev node-llhttp
  libsqlite3-dev libpq-dev libcurl4-openssl-dev libssl-dev tzdata)
test_packages=(postgresql-15 pgbouncer gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user prometheus jq curl
  clang libclang-rt-14-dev libhttp-parser-dev nginx-light
  prometheus-alertmanager python3)
case "${1:-}" in
  --build) packages=("${build_packages[@]}") ;;
  --bench) packages=("${build_packages[@]}" "${test_packages[@]}" erlang-base wrk) ;;
  *) packages=("${build_packages[@]}" "${test_packages[@]}") ;;
esac

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "install-deps: installing ${missing[*]}" >&2
sudo=()
if [[ $(id -u) -ne 0 ]]; then
  if ! command -v sudo >/dev/null; then
    echo "install-deps: need root or sudo to install: ${missing[*]}" >&2
    exit 1
  fi
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
