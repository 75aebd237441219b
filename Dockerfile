# syntax=docker/dockerfile:1
# The keel example microservice (examples/microservice) as a container image.
#
#   docker build -t keel-microservice .
#   docker run --rm --init -p 3000:3000 -p 9090:9090 keel-microservice
#
# Two stages: the build stage installs the build dependencies and builds with
# the commands CI uses (scripts/install-deps.sh, then `make build`); the
# runtime stage is debian:12-slim with only the shared libraries the binary
# needs, running as an unprivileged user. See docs/deploy.md.

# ---- build -------------------------------------------------------------------
FROM debian:12 AS build

WORKDIR /src
# install-deps.sh first, alone, so the package layer is cached until it changes.
COPY scripts/install-deps.sh scripts/install-deps.sh
# --build: only what building needs (compiler, cmake, libuv, jansson, sqlite3, libpq,
# node-llhttp's C sources), none of the test tools (cross compiler, qemu, prometheus, jq).
RUN bash scripts/install-deps.sh --build && rm -rf /var/lib/apt/lists/*

COPY . .
# The same build as CI's (make test starts with it): warnings are errors.
RUN make build CI=1 DEPS_FLAGS=--build \
 && test -x build/bin/microservice && test -x build/bin/orders

# ---- runtime -----------------------------------------------------------------
FROM debian:12-slim AS runtime

# libuv, jansson, sqlite3, libpq and libcurl are linked dynamically (llhttp is compiled in); libc, libm
# and pthreads come with the base image. No curl: the HEALTHCHECK below uses
# bash's /dev/tcp, so nothing is installed for it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libuv1 libjansson4 libsqlite3-0 libpq5 libcurl4 libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 keel \
 && useradd --system --uid 10001 --gid keel --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin keel

COPY --from=build /src/build/bin/microservice /usr/local/bin/microservice
# The orders service (docs/orders.md) rides along: run it with the command
# /usr/local/bin/orders (deploy/docker-compose.prod.yml, deploy/kubernetes/orders.yaml).
COPY --from=build /src/build/bin/orders /usr/local/bin/orders
COPY .env.example /usr/share/doc/microservice/env.example

# Defaults for a container; every variable is described in .env.example.
ENV APP_ENV=production \
    HOST=0.0.0.0 \
    PORT=3000 \
    HEALTH_PORT=9090 \
    LOG_FORMAT=json \
    SHUTDOWN_TIMEOUT=30000

# Numeric user, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
EXPOSE 3000 9090

# Liveness on the admin port: one HTTP/1.0 request over bash's /dev/tcp, healthy
# when the status line says 200.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${HEALTH_PORT:-9090} && printf 'GET /health/live HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]

# SIGTERM starts the graceful shutdown (drain, then stop the tree within
# SHUTDOWN_TIMEOUT). Exec form: the service is PID 1 and gets the signal itself.
STOPSIGNAL SIGTERM
CMD ["/usr/local/bin/microservice"]
