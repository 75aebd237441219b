/* test_server.c - the HTTP server over loopback: routes and parameters,
 * keep-alive and pipelining, every error status with its envelope, limits
 * (413, 431, slowloris), handlers that crash or run too long, the rate
 * limit, CORS, security headers, request ids, and draining.
 *
 * Each case starts a server on an ephemeral port with the routes below and
 * talks to it with the blocking client of kt_http.h, run on libuv's thread
 * pool (keel_blocking) so the schedulers keep serving meanwhile.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <stdatomic.h>

#include "http/kt_http.h"

/* ---- routes ----------------------------------------------------------------------- */

static int h_hello(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req, (void)ud;
  return keel_http_reply_text(res, 200, "application/json", "{\"hello\":\"world\"}");
}

static int h_order(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)ud;
  const char *verbose = keel_http_query_param(req, "verbose");
  json_t *j = json_pack("{s:s, s:s, s:s}", "id", keel_http_param(req, "id"), "route",
                        keel_http_route_pattern(req), "verbose", verbose ? verbose : "");
  return keel_http_reply_json(res, 200, j);
}

static int h_order_stats(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req, (void)ud;
  return keel_http_reply_text(res, 200, "text/plain", "stats");
}

static int h_echo(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)ud;
  int err;
  json_t *j = keel_http_json(req, &err);
  if (!j) return keel_http_fail(res, KEEL_HTTP_BAD_REQUEST, "Malformed JSON body", NULL);
  if (!json_is_object(j) || !json_object_get(j, "name"))
    return keel_http_fail(res, KEEL_HTTP_VALIDATION, "name is required",
                          json_pack("[{s:s, s:s}]", "field", "name", "reason", "required"));
  return keel_http_reply_json(res, 201, json_incref(j));
}

static int h_crash(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req, (void)res, (void)ud;
  keel_exit(KEEL_REASON_ERROR, "secret internal detail");
}

static int h_internal(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req, (void)ud;
  return keel_http_fail(res, KEEL_HTTP_INTERNAL, "database refused the query", NULL);
}

static int h_slow(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req, (void)ud;
  keel_sleep(60000);
  return keel_http_reply_text(res, 200, "text/plain", "late");
}

static int h_nap(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req, (void)ud;
  keel_sleep(100);
  return keel_http_reply_text(res, 200, "text/plain", "rested");
}

static atomic_int g_gate; /* h_wait waits until the test opens it */

static int h_wait(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req, (void)ud;
  while (!atomic_load(&g_gate))
    keel_sleep(5);
  return keel_http_reply_text(res, 200, "text/plain", "done");
}

static keel_http_router *routes(void) {
  keel_http_router *r = keel_http_router_new();
  CHECK(r != NULL);
  CHECK_OK(keel_http_route(r, "GET", "/api/hello", h_hello, NULL));
  CHECK_OK(keel_http_route(r, "GET", "/api/orders/:id", h_order, NULL));
  CHECK_OK(keel_http_route(r, "GET", "/api/orders/stats", h_order_stats, NULL));
  CHECK_OK(keel_http_route(r, "DELETE", "/api/orders/:id", h_order, NULL));
  CHECK_OK(keel_http_route(r, "POST", "/api/echo", h_echo, NULL));
  CHECK_OK(keel_http_route(r, "GET", "/api/crash", h_crash, NULL));
  CHECK_OK(keel_http_route(r, "GET", "/api/internal", h_internal, NULL));
  CHECK_OK(keel_http_route(r, "POST", "/api/internal", h_internal, NULL));
  CHECK_OK(keel_http_route(r, "GET", "/api/slow", h_slow, NULL));
  CHECK_OK(keel_http_route(r, "GET", "/api/wait", h_wait, NULL));
  CHECK_OK(keel_http_route(r, "GET", "/api/nap", h_nap, NULL));
  CHECK_OK(keel_http_route(r, "GET", "/health/live", h_hello, NULL));
  CHECK_EQ(keel_http_route(r, "GET", "/api/hello", h_hello, NULL), KEEL_EEXIST);
  CHECK_EQ(keel_http_route(r, "get", "/x", h_hello, NULL), KEEL_EINVAL);
  CHECK_EQ(keel_http_route(r, "GET", "no-slash", h_hello, NULL), KEEL_EINVAL);
  return r;
}

static keel_http_server *start(keel_http_opts *o) {
  keel_http_server *s;
  o->host = "127.0.0.1";
  o->port = 0;
  CHECK_OK(keel_http_start(o, routes(), &s));
  CHECK(keel_http_port(s) > 0);
  return s;
}

static keel_http_server *start_default(void) {
  keel_http_opts o;
  keel_http_opts_init(&o);
  return start(&o);
}


/* ---- cases -------------------------------------------------------------------------- */

/* A zeroed options struct is a working server with every default. */
KT_CASE(get_returns_the_body_with_request_id_and_security_headers) {
  keel_http_opts zero = {0};
  keel_http_server *s = start(&zero);
  static kt_resp r;
  CHECK_EQ(kt_exchange(keel_http_port(s), "GET /api/hello HTTP/1.1\r\nHost: x\r\n\r\n", &r, 1), 1);
  CHECK_EQ(r.status, 200);
  CHECK_STR(r.body, "{\"hello\":\"world\"}");
  char v[256];
  CHECK_STR(kt_hdr(&r, "Content-Type", v, sizeof v), "application/json");
  CHECK_STR(kt_hdr(&r, "Content-Length", v, sizeof v), "17");
  CHECK_STR(kt_hdr(&r, "X-Content-Type-Options", v, sizeof v), "nosniff");
  CHECK_STR(kt_hdr(&r, "X-Frame-Options", v, sizeof v), "DENY");
  CHECK(kt_hdr(&r, "Content-Security-Policy", v, sizeof v) != NULL);
  CHECK(kt_hdr(&r, "Strict-Transport-Security", v, sizeof v) != NULL);
  CHECK(kt_hdr(&r, "Date", v, sizeof v) != NULL);
  CHECK(kt_hdr(&r, "X-Request-Id", v, sizeof v) != NULL);
  CHECK_EQ(strlen(v), 36); /* a generated UUID */
  CHECK(kt_hdr(&r, "traceparent", v, sizeof v) != NULL);
  CHECK_EQ(strlen(v), 55);
  CHECK(kt_hdr(&r, "X-RateLimit-Limit", v, sizeof v) == NULL); /* off unless asked */
  CHECK_OK(keel_http_stop(s));
}

KT_CASE(a_well_formed_request_id_is_echoed_and_a_bad_one_replaced) {
  keel_http_server *s = start_default();
  static kt_resp r;
  char v[256];
  CHECK_EQ(kt_exchange(keel_http_port(s),
                       "GET /api/hello HTTP/1.1\r\nHost: t\r\nX-Request-Id: abc-123.DEF_9:x\r\n\r\n", &r, 1),
           1);
  CHECK_STR(kt_hdr(&r, "X-Request-Id", v, sizeof v), "abc-123.DEF_9:x");
  CHECK_EQ(kt_exchange(keel_http_port(s),
                       "GET /api/hello HTTP/1.1\r\nHost: t\r\nX-Correlation-Id: corr-77\r\n\r\n", &r, 1),
           1);
  CHECK_STR(kt_hdr(&r, "X-Request-Id", v, sizeof v), "corr-77");
  CHECK_EQ(kt_exchange(keel_http_port(s),
                       "GET /api/hello HTTP/1.1\r\nHost: t\r\nX-Request-Id: has space<script>\r\n\r\n", &r,
                       1),
           1);
  kt_hdr(&r, "X-Request-Id", v, sizeof v);
  CHECK_EQ(strlen(v), 36);
  /* a traceparent keeps its trace id and gets a new span */
  CHECK_EQ(kt_exchange(keel_http_port(s),
                       "GET /api/hello HTTP/1.1\r\nHost: t\r\ntraceparent: "
                       "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n",
                       &r, 1),
           1);
  kt_hdr(&r, "traceparent", v, sizeof v);
  CHECK(strncmp(v, "00-4bf92f3577b34da6a3ce929d0e0e4736-", 36) == 0);
  CHECK(strcmp(v + 36, "00f067aa0ba902b7-01") != 0);
  CHECK_OK(keel_http_stop(s));
}

KT_CASE(keep_alive_and_pipelined_requests_are_answered_in_order) {
  keel_http_server *s = start_default();
  static kt_resp r[4];
  const char *req = "GET /api/orders/1 HTTP/1.1\r\nHost: x\r\n\r\n"
                    "GET /api/orders/2 HTTP/1.1\r\nHost: x\r\n\r\n"
                    "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
                    "GET /api/orders/3?verbose=yes%21 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  kt_job j = {.port = keel_http_port(s), .req = req, .nresp = 4, .resp = r};
  CHECK_OK(keel_blocking(kt_job_run, &j));
  CHECK_EQ(j.got, 4);
  CHECK(strstr(r[0].body, "\"id\":\"1\""));
  CHECK(strstr(r[1].body, "\"id\":\"2\""));
  kt_check_envelope(&r[2], 404, "NOT_FOUND");
  CHECK(strstr(r[3].body, "\"id\":\"3\""));
  CHECK(strstr(r[3].body, "\"verbose\":\"yes!\""));
  CHECK(strstr(r[3].body, "\"route\":\"/api/orders/:id\""));
  char v[64];
  CHECK_STR(kt_hdr(&r[0], "Connection", v, sizeof v), "keep-alive");
  CHECK_STR(kt_hdr(&r[3], "Connection", v, sizeof v), "close");
  CHECK(j.closed_after);
  CHECK_OK(keel_http_stop(s));
}

KT_CASE(routes_prefer_literal_segments_and_unknown_methods_get_405_with_allow) {
  keel_http_server *s = start_default();
  int port = keel_http_port(s);
  static kt_resp r;
  CHECK_EQ(kt_exchange(port, "GET /api/orders/stats HTTP/1.1\r\nHost: t\r\n\r\n", &r, 1), 1);
  CHECK_STR(r.body, "stats");
  CHECK_EQ(kt_exchange(port, "PUT /api/orders/5 HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n", &r, 1), 1);
  kt_check_envelope(&r, 405, "METHOD_NOT_ALLOWED");
  char v[128];
  CHECK_STR(kt_hdr(&r, "Allow", v, sizeof v), "GET, DELETE, HEAD");
  /* HEAD is served by the GET route, without a body */
  kt_job j = {.port = port, .req = "HEAD /api/hello HTTP/1.1\r\nHost: t\r\n\r\n", .nresp = 1, .resp = &r,
              .head_only = true};
  CHECK_OK(keel_blocking(kt_job_run, &j));
  CHECK_EQ(j.got, 1);
  CHECK_EQ(r.status, 200);
  CHECK_STR(kt_hdr(&r, "Content-Length", v, sizeof v), "17");
  CHECK_EQ(r.body_len, 0);
  CHECK_OK(keel_http_stop(s));
}

KT_CASE(json_bodies_validation_and_malformed_json) {
  keel_http_server *s = start_default();
  int port = keel_http_port(s);
  static kt_resp r;
  CHECK_EQ(kt_exchange(port,
                       "POST /api/echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                       "Content-Length: 15\r\n\r\n{\"name\":\"keel\"}",
                       &r, 1),
           1);
  CHECK_EQ(r.status, 201);
  CHECK_STR(r.body, "{\"name\":\"keel\"}");
  CHECK_EQ(kt_exchange(port, "POST /api/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 8\r\n\r\n{\"name\":", &r,
                       1),
           1);
  kt_check_envelope(&r, 400, "BAD_REQUEST");
  CHECK_EQ(kt_exchange(port, "POST /api/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}", &r, 1), 1);
  kt_check_envelope(&r, 400, "VALIDATION_ERROR");
  CHECK(strstr(r.body, "\"details\":[{\"field\":\"name\""));
  /* chunked bodies too */
  CHECK_EQ(kt_exchange(port,
                       "POST /api/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                       "7\r\n{\"name\"\r\n8\r\n:\"keel\"}\r\n0\r\n\r\n",
                       &r, 1),
           1);
  CHECK_EQ(r.status, 201);
  CHECK_OK(keel_http_stop(s));
}

KT_CASE(limits_answer_413_431_and_400_with_the_envelope_and_close) {
  keel_http_opts o;
  keel_http_opts_init(&o);
  o.max_body_bytes = 1000;
  o.max_header_bytes = 2048;
  keel_http_server *s = start(&o);
  int port = keel_http_port(s);
  static kt_resp r;
  /* declared too large: answered before the body is read */
  kt_job j = {.port = port,
              .req = "POST /api/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n{\"name\":",
              .nresp = 1,
              .resp = &r};
  CHECK_OK(keel_blocking(kt_job_run, &j));
  CHECK_EQ(j.got, 1);
  kt_check_envelope(&r, 413, "PAYLOAD_TOO_LARGE");
  CHECK(j.closed_after);
  /* chunked, growing past the limit */
  static char big[4096];
  int n = snprintf(big, sizeof big, "POST /api/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
  for (int i = 0; i < 3; i++)
    n += snprintf(big + n, sizeof big - (size_t)n, "1f4\r\n%0500d\r\n", 0);
  CHECK_EQ(kt_exchange(port, big, &r, 1), 1);
  kt_check_envelope(&r, 413, "PAYLOAD_TOO_LARGE");
  /* a header block over the limit */
  n = snprintf(big, sizeof big, "GET /api/hello HTTP/1.1\r\nHost: t\r\nX-Big: ");
  memset(big + n, 'a', 3000);
  memcpy(big + n + 3000, "\r\n\r\n", 5);
  CHECK_EQ(kt_exchange(port, big, &r, 1), 1);
  kt_check_envelope(&r, 431, "HEADERS_TOO_LARGE");
  /* garbage */
  CHECK_EQ(kt_exchange(port, "NOT HTTP AT ALL\r\n\r\n", &r, 1), 1);
  kt_check_envelope(&r, 400, "BAD_REQUEST");
  CHECK_EQ(kt_exchange(port, "GET /%zz HTTP/1.1\r\nHost: t\r\n\r\n", &r, 1), 1);
  kt_check_envelope(&r, 400, "BAD_REQUEST");
  /* the server still serves */
  CHECK_EQ(kt_exchange(port, "GET /api/hello HTTP/1.1\r\nHost: t\r\n\r\n", &r, 1), 1);
  CHECK_EQ(r.status, 200);
  CHECK_OK(keel_http_stop(s));
}

KT_CASE(crashes_and_internal_errors_give_500_without_internals) {
  keel_http_server *s = start_default();
  int port = keel_http_port(s);
  static kt_resp r;
  CHECK_EQ(kt_exchange(port, "GET /api/crash HTTP/1.1\r\nHost: t\r\n\r\n", &r, 1), 1);
  kt_check_envelope(&r, 500, "INTERNAL_ERROR");
  CHECK(!strstr(r.body, "secret"));
  CHECK_EQ(kt_exchange(port, "GET /api/internal HTTP/1.1\r\nHost: t\r\n\r\n", &r, 1), 1);
  kt_check_envelope(&r, 500, "INTERNAL_ERROR");
  CHECK(!strstr(r.body, "database"));
  CHECK_EQ(kt_exchange(port, "GET /api/hello HTTP/1.1\r\nHost: t\r\n\r\n", &r, 1), 1);
  CHECK_EQ(r.status, 200);
  CHECK_OK(keel_http_stop(s));
}

KT_CASE(a_handler_past_the_request_timeout_gets_503_and_is_killed) {
  keel_http_opts o;
  keel_http_opts_init(&o);
  o.request_timeout_ms = 200;
  keel_http_server *s = start(&o);
  static kt_resp r;
  CHECK_EQ(kt_exchange(keel_http_port(s), "GET /api/slow HTTP/1.1\r\nHost: t\r\n\r\n", &r, 1), 1);
  kt_check_envelope(&r, 503, "SERVICE_UNAVAILABLE");
  KT_WAIT_UNTIL(keel_http_in_flight(s) == 0); /* the handler was killed, not left running */
  CHECK_OK(keel_http_stop(s));
}

KT_CASE(the_rate_limit_refuses_past_the_limit_with_retry_after_and_skips_health) {
  keel_http_opts o;
  keel_http_opts_init(&o);
  o.rate_limit = 3;
  keel_http_server *s = start(&o);
  int port = keel_http_port(s);
  static kt_resp r[5];
  const char *req = "GET /api/hello HTTP/1.1\r\nHost: t\r\n\r\nGET /api/hello HTTP/1.1\r\nHost: t\r\n\r\n"
                    "GET /api/hello HTTP/1.1\r\nHost: t\r\n\r\nGET /api/hello HTTP/1.1\r\nHost: t\r\n\r\n"
                    "GET /health/live HTTP/1.1\r\nHost: t\r\n\r\n";
  CHECK_EQ(kt_exchange(port, req, r, 5), 5);
  char v[64];
  for (int i = 0; i < 3; i++) {
    CHECK_EQ(r[i].status, 200);
    CHECK_EQ(atoi(kt_hdr(&r[i], "X-RateLimit-Remaining", v, sizeof v)), 2 - i);
  }
  kt_check_envelope(&r[3], 429, "RATE_LIMITED");
  CHECK(atoi(kt_hdr(&r[3], "Retry-After", v, sizeof v)) >= 1);
  CHECK_STR(kt_hdr(&r[3], "X-RateLimit-Remaining", v, sizeof v), "0");
  CHECK_EQ(r[4].status, 200); /* /health is not limited */
  CHECK(kt_hdr(&r[4], "X-RateLimit-Limit", v, sizeof v) == NULL);
  CHECK_OK(keel_http_stop(s));
}

KT_CASE(cors_allows_listed_origins_answers_preflights_and_refuses_others) {
  keel_http_opts o;
  keel_http_opts_init(&o);
  o.cors_origins = "https://app.example,https://admin.example";
  keel_http_server *s = start(&o);
  int port = keel_http_port(s);
  static kt_resp r;
  char v[256];
  CHECK_EQ(kt_exchange(port,
                       "OPTIONS /api/echo HTTP/1.1\r\nHost: t\r\nOrigin: https://app.example\r\n"
                       "Access-Control-Request-Method: POST\r\n"
                       "Access-Control-Request-Headers: content-type\r\n\r\n",
                       &r, 1),
           1);
  CHECK_EQ(r.status, 204);
  CHECK_STR(kt_hdr(&r, "Access-Control-Allow-Origin", v, sizeof v), "https://app.example");
  CHECK_STR(kt_hdr(&r, "Access-Control-Allow-Credentials", v, sizeof v), "true");
  CHECK(kt_hdr(&r, "Access-Control-Max-Age", v, sizeof v) != NULL);
  CHECK(strstr(kt_hdr(&r, "Vary", v, sizeof v), "Origin"));
  CHECK_EQ(kt_exchange(port,
                       "OPTIONS /api/echo HTTP/1.1\r\nHost: t\r\nOrigin: https://evil.example\r\n"
                       "Access-Control-Request-Method: POST\r\n\r\n",
                       &r, 1),
           1);
  kt_check_envelope(&r, 403, "FORBIDDEN");
  CHECK(kt_hdr(&r, "Access-Control-Allow-Origin", v, sizeof v) == NULL);
  CHECK_EQ(kt_exchange(port, "GET /api/hello HTTP/1.1\r\nHost: t\r\nOrigin: https://admin.example\r\n\r\n", &r,
                       1),
           1);
  CHECK_EQ(r.status, 200);
  CHECK_STR(kt_hdr(&r, "Access-Control-Allow-Origin", v, sizeof v), "https://admin.example");
  CHECK_EQ(kt_exchange(port, "GET /api/hello HTTP/1.1\r\nHost: t\r\nOrigin: https://evil.example\r\n\r\n", &r,
                       1),
           1);
  CHECK_EQ(r.status, 200); /* served, but the browser gets no CORS permission */
  CHECK(kt_hdr(&r, "Access-Control-Allow-Origin", v, sizeof v) == NULL);
  CHECK_OK(keel_http_stop(s));
}

/* A client that sends half a request head and then nothing. */
typedef struct {
  int port;
  bool closed;
} loris_job;

static void loris_run(void *arg) {
  loris_job *j = arg;
  kt_conn *c = malloc(sizeof *c);
  j->closed = false;
  if (kt_connect(j->port, c) == 0) {
    kt_send_all(c, "GET /api/hello HTTP/1.1\r\nHost: t\r\nX-Slow: ", 42);
    j->closed = kt_closed(c); /* within the 20 s receive timeout */
    kt_close(c);
  }
  free(c);
}

KT_CASE(a_slowloris_connection_is_closed_while_others_are_served) {
  keel_http_opts o;
  keel_http_opts_init(&o);
  o.header_timeout_ms = 300;
  keel_http_server *s = start(&o);
  loris_job lj = {.port = keel_http_port(s)};
  keel_pid_t self = keel_self();
  (void)self;
  /* the loris waits on the pool while we are served */
  static kt_resp r;
  CHECK_EQ(kt_exchange(keel_http_port(s), "GET /api/hello HTTP/1.1\r\nHost: t\r\n\r\n", &r, 1), 1);
  CHECK_EQ(r.status, 200);
  CHECK_OK(keel_blocking(loris_run, &lj));
  CHECK(lj.closed);
  CHECK_OK(keel_http_stop(s));
}

typedef struct {
  kt_job job;
  keel_pid_t notify;
} async_job;

static void async_client(void *arg) {
  async_job *a = arg;
  CHECK_OK(keel_blocking(kt_job_run, &a->job));
  keel_send(a->notify, keel_msg_new(77, 0));
}

KT_CASE(drain_finishes_requests_in_flight_with_connection_close_and_stops_accepting) {
  atomic_store(&g_gate, 0);
  keel_http_server *s = start_default();
  int port = keel_http_port(s);
  static kt_resp r;
  async_job a = {.job = {.port = port,
                         .req = "GET /api/wait HTTP/1.1\r\nHost: t\r\n\r\n",
                         .nresp = 1,
                         .resp = &r},
                 .notify = keel_self()};
  CHECK_OK(keel_spawn(async_client, &a, NULL, NULL));
  KT_WAIT_UNTIL(keel_http_in_flight(s) == 1);
  /* drain in another process; open the gate after it began */
  CHECK_EQ(keel_http_drain(s, 50), KEEL_ETIMEDOUT); /* the request is still in flight */
  static kt_conn c;
  CHECK(kt_connect(port, &c) != 0); /* the listener is closed */
  kt_close(&c);
  atomic_store(&g_gate, 1);
  CHECK_OK(keel_http_drain(s, 10000));
  keel_msg_t *m;
  uint32_t tag = 77;
  CHECK_OK(keel_receive_match(kt_match_tag_fn, &tag, &m, 30000));
  keel_msg_free(m);
  CHECK_EQ(a.job.got, 1);
  CHECK_EQ(r.status, 200);
  char v[32];
  CHECK_STR(kt_hdr(&r, "Connection", v, sizeof v), "close");
  CHECK(a.job.closed_after);
  CHECK_OK(keel_http_stop(s));
}

KT_CASE(a_client_that_half_closes_still_gets_every_answer) {
  keel_http_server *s = start_default();
  static kt_resp r[2];
  kt_job j = {.port = keel_http_port(s),
              .req = "GET /api/nap HTTP/1.1\r\nHost: t\r\n\r\nGET /api/hello HTTP/1.1\r\nHost: t\r\n\r\n",
              .nresp = 2,
              .resp = r,
              .half_close = true};
  CHECK_OK(keel_blocking(kt_job_run, &j));
  CHECK_EQ(j.got, 2);
  CHECK_STR(r[0].body, "rested");
  CHECK_EQ(r[1].status, 200);
  CHECK(j.closed_after);
  CHECK_OK(keel_http_stop(s));
}

KT_CASE(stop_cuts_connections_and_kills_handlers_still_running) {
  keel_http_opts o;
  keel_http_opts_init(&o);
  o.request_timeout_ms = KEEL_INFINITY; /* no timeout: only the stop can end h_slow */
  keel_http_server *s = start(&o);
  static kt_resp r;
  async_job a = {.job = {.port = keel_http_port(s),
                         .req = "GET /api/slow HTTP/1.1\r\nHost: t\r\n\r\n",
                         .nresp = 1,
                         .resp = &r},
                 .notify = keel_self()};
  CHECK_OK(keel_spawn(async_client, &a, NULL, NULL));
  KT_WAIT_UNTIL(keel_http_in_flight(s) == 1);
  CHECK_OK(keel_http_stop(s)); /* returns: the 60 s handler was killed */
  keel_msg_t *m;
  uint32_t tag = 77;
  CHECK_OK(keel_receive_match(kt_match_tag_fn, &tag, &m, 30000));
  keel_msg_free(m);
  CHECK_EQ(a.job.got, 0); /* no answer, the connection was cut */
}

static char *slurp(const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) return NULL;
  static char buf[1 << 16];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  return buf;
}

KT_CASE(an_internal_error_is_logged_with_the_request_id_and_the_body_redacted) {
  char path[] = "/tmp/keel-http-log-XXXXXX";
  int fd = mkstemp(path);
  CHECK(fd >= 0);
  close(fd);
  keel_log_opts lo;
  keel_log_opts_init(&lo);
  lo.file = path;
  lo.level = KEEL_LOG_INFO;
  CHECK_OK(keel_log_init(&lo));
  keel_http_server *s = start_default();
  static kt_resp r;
  const char *req = "POST /api/internal HTTP/1.1\r\nHost: t\r\nX-Request-Id: req-secret-1\r\n"
                    "Content-Type: application/json\r\nContent-Length: 71\r\n\r\n"
                    "{\"user\":\"bob\",\"password\":\"hunter2\",\"cards\":[{\"token\":\"tok-999\",\"n\":1}]}";
  CHECK_EQ(kt_exchange(keel_http_port(s), req, &r, 1), 1);
  kt_check_envelope(&r, 500, "INTERNAL_ERROR");
  CHECK_OK(keel_http_stop(s));
  CHECK_OK(keel_log_shutdown());
  const char *log = slurp(path);
  CHECK(log != NULL);
  const char *line = strstr(log, "\"msg\":\"request failed\"");
  CHECK(line != NULL);
  CHECK(strstr(log, "\"requestId\":\"req-secret-1\""));
  CHECK(strstr(log, "\"error\":\"database refused the query\""));
  CHECK(strstr(log, "\"user\":\"bob\""));
  CHECK(strstr(log, "\"password\":\"[REDACTED]\""));
  CHECK(strstr(log, "\"token\":\"[REDACTED]\""));
  CHECK(!strstr(log, "hunter2"));
  CHECK(!strstr(log, "tok-999"));
  /* the access line of the same request, at error level */
  CHECK(strstr(log, "\"level\":\"error\",\"msg\":\"request completed\""));
  unlink(path);
}

/* ---- systemd socket activation ------------------------------------------------------ */

typedef struct {
  int port;
  pid_t child;
  int status;
} activation;

static void activation_start(void *arg) {
  activation *a = arg;
  a->child = -1;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t sl = sizeof sa;
  if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 16) != 0 ||
      getsockname(fd, (struct sockaddr *)&sa, &sl) != 0)
    return;
  a->port = ntohs(sa.sin_port);
  char exe[4096];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 64);
  if (n <= 0) return;
  exe[n] = 0;
  strcpy(strrchr(exe, '/') + 1, "http_activation_child");
  pid_t pid = fork();
  if (pid == 0) { /* the child: only async-signal-safe calls until exec */
    if (dup2(fd, 3) < 0) _exit(120);
    char pidbuf[32];
    int v = (int)getpid(), k = 0;
    char tmp[16];
    do tmp[k++] = (char)('0' + v % 10); while ((v /= 10) && k < 15);
    memcpy(pidbuf, "LISTEN_PID=", 11);
    for (int i = 0; i < k; i++)
      pidbuf[11 + i] = tmp[k - 1 - i];
    pidbuf[11 + k] = 0;
    char *envp[] = {pidbuf, "LISTEN_FDS=1", "KEEL_SCHEDULERS=2", NULL};
    char *argv[] = {exe, NULL};
    execve(exe, argv, envp);
    _exit(121);
  }
  close(fd);
  a->child = pid;
}

static void activation_stop(void *arg) {
  activation *a = arg;
  kill(a->child, SIGKILL);
  waitpid(a->child, &a->status, 0);
}

KT_CASE(a_socket_passed_by_systemd_is_served_without_binding) {
  activation a = {0};
  CHECK_OK(keel_blocking(activation_start, &a));
  CHECK(a.child > 0);
  static kt_resp r;
  int got = 0;
  for (int i = 0; i < 200 && got == 0; i++) { /* the child listens once its runtime is up */
    got = kt_exchange(a.port, "GET /whoami HTTP/1.1\r\nHost: t\r\n\r\n", &r, 1);
    if (!got) keel_sleep(25);
  }
  CHECK_OK(keel_blocking(activation_stop, &a));
  CHECK_EQ(got, 1);
  CHECK_EQ(r.status, 200);
  char want[64];
  snprintf(want, sizeof want, "activated on %d", a.port);
  CHECK_STR(r.body, want);
  CHECK(WIFSIGNALED(a.status) && WTERMSIG(a.status) == SIGKILL); /* it was serving, not exited */
}

/* A client that sends two pipelined requests and closes at once: the first
 * answer reaches a closed socket, whose kernel answers with a reset, so the
 * second answer is written to a reset connection (EPIPE, and SIGPIPE unless
 * it is ignored). */
static const char *g_reset_second; /* the second request: a handler's or answered on the loop */

static void reset_run(void *arg) {
  int port = *(int *)arg;
  kt_conn *c = malloc(sizeof *c);
  if (c && kt_connect(port, c) == 0) {
    char two[256];
    snprintf(two, sizeof two, "GET /api/nap HTTP/1.1\r\nHost: t\r\n\r\n%s", g_reset_second);
    kt_send_all(c, two, strlen(two));
    kt_close(c);
  }
  free(c);
}

KT_CASE(a_client_that_resets_before_its_answer_does_not_kill_the_node) {
  struct sigaction sa;
  CHECK_OK(sigaction(SIGPIPE, NULL, &sa));
  CHECK(sa.sa_handler == SIG_IGN); /* keel_rt_start ignores SIGPIPE */
  keel_http_server *s = start_default();
  int port = keel_http_port(s);
  /* the second answer fails to be written: from a handler's exit, and from
   * the loop (a 404; this one was a use after free found by the fuzzer) */
  static const char *const second[] = {"GET /api/nap HTTP/1.1\r\nHost: t\r\n\r\n",
                                       "GET /nope HTTP/1.1\r\nHost: t\r\n\r\nGET /nope HTTP/1.1\r\nHost: t\r\n\r\n"};
  for (int i = 0; i < 6; i++) {
    g_reset_second = second[i % 2];
    CHECK_OK(keel_blocking(reset_run, &port));
    KT_WAIT_UNTIL(keel_http_connections(s) == 0);
  }
  KT_WAIT_UNTIL(keel_http_in_flight(s) == 0);
  static kt_resp r;
  CHECK_EQ(kt_exchange(port, "GET /api/hello HTTP/1.1\r\nHost: t\r\n\r\n", &r, 1), 1);
  CHECK_EQ(r.status, 200);
  CHECK_OK(keel_http_stop(s));
}

KT_CASE(a_port_in_use_fails_with_eaddrinuse_and_closes_no_descriptor_of_others) {
  keel_http_opts o;
  keel_http_opts_init(&o);
  o.host = "127.0.0.1";
  keel_http_server *s = start(&o);
  /* a second server on the same port, without SO_REUSEPORT's blessing:
   * a socket bound there by someone else */
  int other = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK_OK(bind(other, (struct sockaddr *)&a, sizeof a));
  CHECK_OK(listen(other, 1));
  socklen_t al = sizeof a;
  CHECK_OK(getsockname(other, (struct sockaddr *)&a, &al));
  int probe = dup(0); /* descriptor 0 must stay what it was */
  CHECK(probe >= 0);
  keel_http_router *r = routes();
  keel_http_server *s2 = NULL;
  o.port = ntohs(a.sin_port);
  CHECK_EQ(keel_http_start(&o, r, &s2), KEEL_EADDRINUSE);
  CHECK(s2 == NULL);
  keel_http_router_free(r); /* the caller keeps the router on failure */
  CHECK(fcntl(0, F_GETFD) != -1);
  struct stat st0, stp;
  CHECK_OK(fstat(0, &st0));
  CHECK_OK(fstat(probe, &stp));
  CHECK(st0.st_ino == stp.st_ino && st0.st_dev == stp.st_dev);
  close(probe);
  close(other);
  CHECK_STR(keel_strerror(KEEL_EADDRINUSE), "address already in use");
  CHECK_OK(keel_http_stop(s));
}

KT_CASE(a_405_or_429_on_a_routed_path_is_labelled_with_its_route_and_only_unrouted_paths_unmatched) {
  keel_metrics *reg;
  CHECK_OK(keel_metrics_new(&reg, 0));
  keel_http_opts o;
  keel_http_opts_init(&o);
  o.metrics = reg;
  o.rate_limit = 2;
  keel_http_server *s = start(&o);
  int port = keel_http_port(s);
  static kt_resp r[4];
  CHECK_EQ(kt_exchange(port,
                       "DELETE /api/hello HTTP/1.1\r\nHost: t\r\n\r\n" /* 405 */
                       "GET /api/orders/7 HTTP/1.1\r\nHost: t\r\n\r\n"  /* 200 */
                       "GET /api/orders/8 HTTP/1.1\r\nHost: t\r\n\r\n"  /* 429 */
                       "GET /no/route HTTP/1.1\r\nHost: t\r\n\r\n",     /* 429, no route */
                       r, 4),
           4);
  CHECK_EQ(r[0].status, 405);
  CHECK_EQ(r[1].status, 200);
  CHECK_EQ(r[2].status, 429);
  CHECK_EQ(r[3].status, 429);
  CHECK_OK(keel_http_stop(s));
  keel_metrics_buf b = {0};
  CHECK_OK(keel_metrics_render(reg, KEEL_METRICS_TEXT, &b));
  CHECK(strstr(b.data, "http_requests_total{method=\"DELETE\",route=\"/api/hello\",status=\"405\"} 1"));
  CHECK(strstr(b.data, "http_requests_total{method=\"GET\",route=\"/api/orders/:id\",status=\"429\"} 1"));
  CHECK(strstr(b.data, "http_requests_total{method=\"GET\",route=\"unmatched\",status=\"429\"} 1"));
  keel_metrics_buf_free(&b);
  keel_metrics_free(reg);
}

KT_CASE(routes_match_the_raw_path_and_parameters_are_decoded_once) {
  keel_http_server *s = start_default();
  int port = keel_http_port(s);
  static kt_resp r[3];
  CHECK_EQ(kt_exchange(port,
                       "GET /api/orders/a%2Fb HTTP/1.1\r\nHost: t\r\n\r\n"
                       "GET /api/orders/%2541 HTTP/1.1\r\nHost: t\r\n\r\n"
                       "GET /api/%6Frders/x%20y HTTP/1.1\r\nHost: t\r\n\r\n",
                       r, 3),
           3);
  CHECK_EQ(r[0].status, 200); /* %2F is inside the segment: one parameter "a/b" */
  CHECK(strstr(r[0].body, "\"id\":\"a/b\""));
  CHECK_EQ(r[1].status, 200); /* decoded once: "%41", not "A" */
  CHECK(strstr(r[1].body, "\"id\":\"%41\""));
  CHECK_EQ(r[2].status, 200); /* a literal segment compares decoded */
  CHECK(strstr(r[2].body, "\"id\":\"x y\""));
  CHECK_OK(keel_http_stop(s));
}

KT_CASE(any_valid_json_is_parsed_bare_scalars_and_strings_with_nul_too) {
  keel_http_server *s = start_default();
  int port = keel_http_port(s);
  static kt_resp r[3];
  CHECK_EQ(kt_exchange(port,
                       "POST /api/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n42"
                       "POST /api/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\n\"text\""
                       "POST /api/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 19\r\n\r\n{\"name\":\"a\\u0000b\"}",
                       r, 3),
           3);
  kt_check_envelope(&r[0], 400, "VALIDATION_ERROR"); /* parsed: not an object with a name */
  kt_check_envelope(&r[1], 400, "VALIDATION_ERROR");
  CHECK_EQ(r[2].status, 201);
  CHECK(strstr(r[2].body, "a\\u0000b"));
  CHECK_OK(keel_http_stop(s));
}

KT_MAIN(KT_ENTRY(get_returns_the_body_with_request_id_and_security_headers),
        KT_ENTRY(a_well_formed_request_id_is_echoed_and_a_bad_one_replaced),
        KT_ENTRY(keep_alive_and_pipelined_requests_are_answered_in_order),
        KT_ENTRY(routes_prefer_literal_segments_and_unknown_methods_get_405_with_allow),
        KT_ENTRY(json_bodies_validation_and_malformed_json),
        KT_ENTRY(limits_answer_413_431_and_400_with_the_envelope_and_close),
        KT_ENTRY(crashes_and_internal_errors_give_500_without_internals),
        KT_ENTRY(a_handler_past_the_request_timeout_gets_503_and_is_killed),
        KT_ENTRY(the_rate_limit_refuses_past_the_limit_with_retry_after_and_skips_health),
        KT_ENTRY(cors_allows_listed_origins_answers_preflights_and_refuses_others),
        KT_ENTRY(a_slowloris_connection_is_closed_while_others_are_served),
        KT_ENTRY(drain_finishes_requests_in_flight_with_connection_close_and_stops_accepting),
        KT_ENTRY(a_client_that_half_closes_still_gets_every_answer),
        KT_ENTRY(stop_cuts_connections_and_kills_handlers_still_running),
        KT_ENTRY(a_socket_passed_by_systemd_is_served_without_binding),
        KT_ENTRY(a_client_that_resets_before_its_answer_does_not_kill_the_node),
        KT_ENTRY(an_internal_error_is_logged_with_the_request_id_and_the_body_redacted),
        KT_ENTRY(a_port_in_use_fails_with_eaddrinuse_and_closes_no_descriptor_of_others),
        KT_ENTRY(a_405_or_429_on_a_routed_path_is_labelled_with_its_route_and_only_unrouted_paths_unmatched),
        KT_ENTRY(routes_match_the_raw_path_and_parameters_are_decoded_once),
        KT_ENTRY(any_valid_json_is_parsed_bare_scalars_and_strings_with_nul_too))
