/* fuzz_http_request.c - libFuzzer target for the HTTP request path.
 *
 * The input is the bytes a client sends on one connection. A real server
 * (every default middleware on, routes with parameters, a JSON handler) runs
 * on a real runtime started once; each input is written to a new loopback
 * connection, half-closed, and the response read until the server closes or
 * a second passes. So the whole path is fuzzed as it runs in production:
 * http-parser, the limits, pipelining, the router, percent-decoding, request
 * ids, traceparent, CORS, the rate limiter, the handler process and the
 * response writer. AddressSanitizer and UndefinedBehaviorSanitizer watch the
 * server threads; a crash or report anywhere fails the run.
 *
 *   make test runs it for a short while over tests/fuzz/corpus (tests/fuzz/run.sh).
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "keel.h"

static int g_port;

static int h_json(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)ud;
  int err;
  json_t *j = keel_http_json(req, &err);
  if (!j) return keel_http_fail(res, KEEL_HTTP_BAD_REQUEST, "bad json", NULL);
  const char *q = keel_http_query_param(req, "q");
  json_t *out = json_pack("{s:O, s:s?, s:s?}", "body", j, "q", q, "ua",
                          keel_http_header(req, "user-agent"));
  return out ? keel_http_reply_json(res, 200, out) : keel_http_fail(res, KEEL_HTTP_INTERNAL, "x", NULL);
}

static int h_param(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)ud;
  const char *id = keel_http_param(req, "id");
  return keel_http_reply_text(res, 200, "text/plain", id ? id : "");
}

static int h_fail(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req, (void)ud;
  return keel_http_fail(res, KEEL_HTTP_CONFLICT, "conflict", json_pack("{s:i}", "n", 1));
}

static void starter(void *arg) {
  (void)arg;
  keel_http_router *r = keel_http_router_new();
  keel_http_route(r, "POST", "/api/items", h_json, NULL);
  keel_http_route(r, "GET", "/api/items/:id", h_param, NULL);
  keel_http_route(r, "PUT", "/api/items/:id/sub/*", h_param, NULL);
  keel_http_route(r, "DELETE", "/api/items/:id", h_fail, NULL);
  keel_http_opts o;
  keel_http_opts_init(&o);
  o.host = "127.0.0.1";
  o.port = 0;
  o.max_header_bytes = 4096;
  o.max_body_bytes = 8192;
  o.header_timeout_ms = 1000;
  o.request_timeout_ms = 2000;
  o.rate_limit = 1000000;
  o.no_access_log = true;
  o.cors_origins = "https://a.example";
  keel_http_server *s;
  if (keel_http_start(&o, r, &s) != 0) abort();
  __atomic_store_n(&g_port, keel_http_port(s), __ATOMIC_RELEASE);
  keel_sleep(KEEL_INFINITY); /* the server lives as long as the fuzzer */
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  keel_log_opts lo;
  keel_log_opts_init(&lo);
  lo.level = KEEL_LOG_FATAL;
  keel_log_init(&lo);
  keel_rt_opts ro;
  keel_rt_opts_init(&ro);
  ro.schedulers = 2;
  if (keel_rt_start(&ro) != 0) abort();
  keel_spawn(starter, NULL, NULL, NULL);
  while (!__atomic_load_n(&g_port, __ATOMIC_ACQUIRE))
    usleep(1000);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  struct timeval tv = {.tv_sec = 1};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g_port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) {
    size_t off = 0;
    while (off < size) {
      ssize_t n = send(fd, data + off, size - off, MSG_NOSIGNAL);
      if (n <= 0) break;
      off += (size_t)n;
    }
    shutdown(fd, SHUT_WR);
    char buf[16384];
    while (recv(fd, buf, sizeof buf, 0) > 0) {
    }
  }
  close(fd);
  return 0;
}
