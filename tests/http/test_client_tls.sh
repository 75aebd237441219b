#!/usr/bin/env bash
# test_client_tls.sh - the HTTP client's TLS verification against a real TLS
# server: nginx (Debian's nginx-light) on loopback with a self-signed
# certificate made here for localhost and 127.0.0.1. Runs the C case
# tls_is_verified_with_the_given_ca of test_client with the server's URL and
# the certificate (its own CA) in the environment. nginx is stopped on every
# exit, failure included.
#
# Usage: test_client_tls.sh TEST_CLIENT_BINARY
set -euo pipefail
bin=$1
command -v nginx >/dev/null || { echo "test_client_tls: nginx is not installed" >&2; exit 1; }
command -v openssl >/dev/null || { echo "test_client_tls: openssl is not installed" >&2; exit 1; }

dir=$(mktemp -d "${TMPDIR:-/tmp}/keel-tls.XXXXXX")
nginx_pid=
cleanup() {
  if [[ -n $nginx_pid ]]; then
    kill -TERM "$nginx_pid" 2>/dev/null || true
    wait "$nginx_pid" 2>/dev/null || true
  fi
  rm -rf "$dir"
}
trap cleanup EXIT

openssl req -x509 -newkey rsa:2048 -nodes -keyout "$dir/key.pem" -out "$dir/cert.pem" -days 2 \
  -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
user_line=
if [[ $(id -u) = 0 ]]; then user_line="user $(id -un) $(id -gn);"; fi
cat >"$dir/nginx.conf" <<CONF
$user_line
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path $dir/cb;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  server {
    listen 127.0.0.1:$port ssl;
    ssl_certificate $dir/cert.pem;
    ssl_certificate_key $dir/key.pem;
    location = /hello { default_type application/json; return 200 '{"hello":"tls"}'; }
  }
}
CONF
chmod 755 "$dir"
nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/nginx.out" 2>&1 &
nginx_pid=$!
for _ in $(seq 100); do
  curl -s -o /dev/null --cacert "$dir/cert.pem" "https://localhost:$port/hello" && break
  kill -0 "$nginx_pid" 2>/dev/null || { cat "$dir/error.log" >&2; exit 1; }
  sleep 0.1
done

KEEL_TEST_TLS_URL="https://localhost:$port/hello" KEEL_TEST_TLS_CA="$dir/cert.pem" \
  "$bin" tls_is_verified_with_the_given_ca
