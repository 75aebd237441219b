/* test_client.c - the HTTP client (keel/http_client.h) against keel's own
 * server in the same process, and against sockets that never answer or
 * refuse: answers and JSON, timeouts, oversize bodies, retries (their count,
 * order, the budget, Retry-After), the breaker's transitions, the request id
 * and traceparent sent on, many requests at once, a caller killed mid-request,
 * and the client freed, or the node stopped, with requests in flight.
 *
 * Timing never decides a verdict: the retry tests count attempts as the
 * server saw them; the one duration checked is Retry-After's lower bound.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "keel_test.h"

/* ---- the server's routes ---------------------------------------------------------- */

static atomic_int g_calls;      /* calls of the counting routes */
static atomic_int g_fail_first; /* /flaky fails this many calls first */
static uint64_t g_seen_ms[8];   /* when /ra saw its calls */

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int h_hello(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req, (void)ud;
  return keel_http_reply_text(res, 200, "application/json", "{\"hello\":\"world\"}");
}

static int h_echo(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)ud;
  int err;
  json_t *j = keel_http_json(req, &err);
  if (!j) return keel_http_fail(res, KEEL_HTTP_BAD_REQUEST, "Malformed JSON body", NULL);
  return keel_http_reply_json(res, 201, json_incref(j));
}

/* What the server saw of the request's headers. */
static int h_headers(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)ud;
  const char *rid = keel_http_header(req, "x-request-id");
  const char *tp = keel_http_header(req, "traceparent");
  return keel_http_reply_json(res, 200,
                              json_pack("{s:s, s:s, s:s}", "requestId", rid ? rid : "",
                                        "traceparent", tp ? tp : "", "method",
                                        keel_http_method(req)));
}

static int h_status(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)ud;
  atomic_fetch_add(&g_calls, 1);
  int code = atoi(keel_http_param(req, "code"));
  return keel_http_reply_text(res, code, "text/plain", "status");
}

static int h_flaky(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req, (void)ud;
  int n = atomic_fetch_add(&g_calls, 1);
  if (n < atomic_load(&g_fail_first)) return keel_http_reply_text(res, 503, "text/plain", "busy");
  return keel_http_reply_text(res, 200, "text/plain", "fine");
}

/* 429 with Retry-After: 1 on the first call, then 200. */
static int h_ra(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req, (void)ud;
  int n = atomic_fetch_add(&g_calls, 1);
  if (n < 8) g_seen_ms[n] = now_ms();
  if (n == 0) {
    keel_http_set_header(res, "Retry-After", "1");
    return keel_http_reply_text(res, 429, "text/plain", "slow down");
  }
  return keel_http_reply_text(res, 200, "text/plain", "ok");
}

static int h_ra_long(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req, (void)ud;
  atomic_fetch_add(&g_calls, 1);
  keel_http_set_header(res, "Retry-After", "3600");
  return keel_http_reply_text(res, 503, "text/plain", "maintenance");
}

static int h_big(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req, (void)ud;
  static char body[100000];
  memset(body, 'x', sizeof body);
  return keel_http_reply(res, 200, "text/plain", body, sizeof body);
}

static int h_redirect(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req, (void)ud;
  keel_http_set_header(res, "Location", "/hello");
  return keel_http_reply_text(res, 302, "text/plain", "moved");
}

static keel_http_client *g_proxy_client;
static int g_port;

/* A handler that calls another service: the trace goes on. */
static int h_proxy(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req, (void)ud;
  char url[64];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/headers", g_port);
  keel_http_client_res r;
  json_t *j = NULL;
  int rc = keel_http_client_json(g_proxy_client, "GET", url, NULL, NULL, &r, &j);
  keel_http_client_res_free(&r);
  if (rc) return rc;
  return keel_http_reply_json(res, 200, j);
}

static keel_http_server *start_server(void) {
  keel_http_router *r = keel_http_router_new();
  CHECK(r != NULL);
  CHECK_OK(keel_http_route(r, "GET", "/hello", h_hello, NULL));
  CHECK_OK(keel_http_route(r, "POST", "/echo", h_echo, NULL));
  CHECK_OK(keel_http_route(r, "GET", "/headers", h_headers, NULL));
  CHECK_OK(keel_http_route(r, "GET", "/status/:code", h_status, NULL));
  CHECK_OK(keel_http_route(r, "POST", "/status/:code", h_status, NULL));
  CHECK_OK(keel_http_route(r, "GET", "/flaky", h_flaky, NULL));
  CHECK_OK(keel_http_route(r, "GET", "/ra", h_ra, NULL));
  CHECK_OK(keel_http_route(r, "GET", "/ra-long", h_ra_long, NULL));
  CHECK_OK(keel_http_route(r, "GET", "/big", h_big, NULL));
  CHECK_OK(keel_http_route(r, "GET", "/redirect", h_redirect, NULL));
  CHECK_OK(keel_http_route(r, "GET", "/proxy", h_proxy, NULL));
  keel_http_opts o;
  keel_http_opts_init(&o);
  o.host = "127.0.0.1";
  o.port = 0;
  keel_http_server *s;
  CHECK_OK(keel_http_start(&o, r, &s));
  g_port = keel_http_port(s);
  atomic_store(&g_calls, 0);
  atomic_store(&g_fail_first, 0);
  return s;
}

static const char *url(const char *path) {
  static _Thread_local char buf[128];
  snprintf(buf, sizeof buf, "http://127.0.0.1:%d%s", g_port, path);
  return buf;
}

/* A socket on loopback that accepts (the kernel completes the handshake
 * into the backlog) and never answers. Returns the listening fd. */
static int silent_listener(int *port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  CHECK(fd >= 0);
  struct sockaddr_in a = {.sin_family = AF_INET};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK_OK(bind(fd, (struct sockaddr *)&a, sizeof a));
  CHECK_OK(listen(fd, 64));
  socklen_t len = sizeof a;
  CHECK_OK(getsockname(fd, (struct sockaddr *)&a, &len));
  *port = ntohs(a.sin_port);
  return fd;
}

/* A port nothing listens on. */
static int closed_port(void) {
  int port;
  int fd = silent_listener(&port);
  close(fd);
  return port;
}

static double counter(keel_metrics *m, const char *family, const char *const *values) {
  keel_metric_family *f = keel_metrics_find(m, family);
  CHECK(f != NULL);
  keel_counter *c;
  CHECK_OK(keel_counter_get(f, values, &c));
  return keel_counter_value(c);
}

/* ---- answers --------------------------------------------------------------------- */

KT_CASE(get_returns_status_body_and_headers) {
  keel_http_server *s = start_server();
  keel_metrics *m;
  CHECK_OK(keel_metrics_new(&m, 0));
  keel_http_client_opts o = {.metrics = m};
  keel_http_client *c;
  CHECK_OK(keel_http_client_new(&o, &c));
  keel_http_client_res r;
  keel_http_client_req rq = {.url = url("/hello")};
  CHECK_OK(keel_http_client_request(c, &rq, &r));
  CHECK_EQ(r.status, 200);
  CHECK_STR(r.body, "{\"hello\":\"world\"}");
  CHECK_EQ(r.len, strlen(r.body));
  CHECK_EQ(r.attempts, 1);
  CHECK_STR(keel_http_client_res_header(&r, "Content-Type"), "application/json");
  CHECK(keel_http_client_res_header(&r, "x-request-id") != NULL);
  keel_http_client_res_free(&r);
  /* the second reuses the connection; both counted */
  CHECK_OK(keel_http_client_request(c, &rq, &r));
  CHECK_EQ(r.status, 200);
  keel_http_client_res_free(&r);
  char host[32];
  snprintf(host, sizeof host, "127.0.0.1:%d", g_port);
  const char *v[] = {host, "GET", "200"};
  CHECK_EQ(counter(m, "http_client_requests_total", v), 2);
  /* a 404 is an answer, not an error */
  rq.url = url("/nowhere");
  CHECK_OK(keel_http_client_request(c, &rq, &r));
  CHECK_EQ(r.status, 404);
  keel_http_client_res_free(&r);
  /* not a URL this client speaks */
  rq.url = "ftp://127.0.0.1/x";
  CHECK_EQ(keel_http_client_request(c, &rq, &r), KEEL_EINVAL);
  keel_http_client_res_free(&r);
  keel_http_client_free(c);
  CHECK_OK(keel_http_stop(s));
  keel_metrics_free(m);
}

KT_CASE(json_in_and_out) {
  keel_http_server *s = start_server();
  keel_http_client *c;
  CHECK_OK(keel_http_client_new(NULL, &c));
  keel_http_client_res r;
  json_t *j = NULL;
  CHECK_OK(keel_http_client_json(c, "POST", url("/echo"), NULL,
                                 json_pack("{s:s, s:i}", "name", "keel", "n", 3), &r, &j));
  CHECK_EQ(r.status, 201);
  CHECK_STR(json_string_value(json_object_get(j, "name")), "keel");
  CHECK_EQ(json_integer_value(json_object_get(j, "n")), 3);
  json_decref(j);
  keel_http_client_res_free(&r);
  /* an answer that is not JSON is KEEL_EINVAL, the answer kept */
  CHECK_EQ(keel_http_client_json(c, "GET", url("/status/200"), NULL, NULL, &r, &j), KEEL_EINVAL);
  CHECK(j == NULL);
  CHECK_EQ(r.status, 200);
  CHECK_STR(r.body, "status");
  keel_http_client_res_free(&r);
  keel_http_client_free(c);
  CHECK_OK(keel_http_stop(s));
}

KT_CASE(redirects_are_followed_only_when_asked) {
  keel_http_server *s = start_server();
  keel_http_client *c;
  CHECK_OK(keel_http_client_new(NULL, &c));
  keel_http_client_res r;
  keel_http_client_req rq = {.url = url("/redirect")};
  CHECK_OK(keel_http_client_request(c, &rq, &r));
  CHECK_EQ(r.status, 302);
  keel_http_client_res_free(&r);
  rq.max_redirects = 3;
  CHECK_OK(keel_http_client_request(c, &rq, &r));
  CHECK_EQ(r.status, 200);
  CHECK_STR(r.body, "{\"hello\":\"world\"}");
  keel_http_client_res_free(&r);
  keel_http_client_free(c);
  CHECK_OK(keel_http_stop(s));
}

KT_CASE(request_id_and_traceparent_go_on_from_the_handler) {
  keel_http_server *s = start_server();
  CHECK_OK(keel_http_client_new(NULL, &g_proxy_client));
  keel_http_client *c;
  CHECK_OK(keel_http_client_new(NULL, &c));
  const char *trace = "0af7651916cd43dd8448eb211c80319c";
  const char *in_tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
  char tph[96];
  snprintf(tph, sizeof tph, "traceparent: %s", in_tp);
  const char *hdrs[] = {"X-Request-Id: req-abc-123", tph, NULL};
  keel_http_client_res r;
  json_t *j = NULL;
  keel_http_client_req rq = {.headers = hdrs, .request_id = "", .traceparent = ""};
  CHECK_OK(keel_http_client_json(c, "GET", url("/proxy"), &rq, NULL, &r, &j));
  CHECK_EQ(r.status, 200);
  /* what /headers saw from the handler of /proxy */
  CHECK_STR(json_string_value(json_object_get(j, "requestId")), "req-abc-123");
  const char *tp = json_string_value(json_object_get(j, "traceparent"));
  CHECK(tp && strlen(tp) == 55);
  CHECK(strncmp(tp + 3, trace, 32) == 0);               /* the same trace */
  CHECK(strncmp(tp + 36, "b7ad6b7169203331", 16) != 0); /* a new span */
  json_decref(j);
  keel_http_client_res_free(&r);
  /* given explicitly, they win over the (empty) context */
  keel_http_client_req rq2 = {.request_id = "mine-1", .traceparent = in_tp};
  CHECK_OK(keel_http_client_json(c, "GET", url("/headers"), &rq2, NULL, &r, &j));
  CHECK_STR(json_string_value(json_object_get(j, "requestId")), "mine-1");
  CHECK(strncmp(json_string_value(json_object_get(j, "traceparent")) + 3, trace, 32) == 0);
  json_decref(j);
  keel_http_client_res_free(&r);
  keel_http_client_free(c);
  keel_http_client_free(g_proxy_client);
  CHECK_OK(keel_http_stop(s));
}

/* ---- limits and failures ------------------------------------------------------------ */

KT_CASE(oversize_body_is_refused) {
  keel_http_server *s = start_server();
  keel_http_client_opts o = {.max_response_bytes = 1000};
  keel_http_client *c;
  CHECK_OK(keel_http_client_new(&o, &c));
  keel_http_client_res r;
  keel_http_client_req rq = {.url = url("/big")};
  CHECK_EQ(keel_http_client_request(c, &rq, &r), KEEL_ERANGE);
  CHECK(r.body == NULL);
  CHECK(r.error[0] != '\0');
  keel_http_client_res_free(&r);
  rq.max_response_bytes = 100000; /* exactly the size: fine */
  CHECK_OK(keel_http_client_request(c, &rq, &r));
  CHECK_EQ(r.len, 100000);
  keel_http_client_res_free(&r);
  keel_http_client_free(c);
  CHECK_OK(keel_http_stop(s));
}

KT_CASE(a_server_that_never_answers_times_out) {
  int port;
  int fd = silent_listener(&port);
  keel_http_client_opts o = {.timeout_ms = 300, .max_retries = -1};
  keel_http_client *c;
  CHECK_OK(keel_http_client_new(&o, &c));
  char u[64];
  snprintf(u, sizeof u, "http://127.0.0.1:%d/x", port);
  keel_http_client_res r;
  keel_http_client_req rq = {.url = u};
  CHECK_EQ(keel_http_client_request(c, &rq, &r), KEEL_ETIMEDOUT);
  CHECK_EQ(r.status, 0);
  CHECK_EQ(r.attempts, 1);
  keel_http_client_res_free(&r);
  keel_http_client_free(c);
  close(fd);
}

KT_CASE(a_refused_connection_is_eio_and_retried) {
  keel_metrics *m;
  CHECK_OK(keel_metrics_new(&m, 0));
  keel_http_client_opts o = {.metrics = m, .retry_base_ms = 1, .max_retries = 2};
  keel_http_client *c;
  CHECK_OK(keel_http_client_new(&o, &c));
  int port = closed_port();
  char u[64], host[32];
  snprintf(u, sizeof u, "http://127.0.0.1:%d/x", port);
  snprintf(host, sizeof host, "127.0.0.1:%d", port);
  keel_http_client_res r;
  keel_http_client_req rq = {.url = u};
  CHECK_EQ(keel_http_client_request(c, &rq, &r), KEEL_EIO);
  CHECK_EQ(r.attempts, 3);
  CHECK(r.error[0] != '\0');
  keel_http_client_res_free(&r);
  const char *v[] = {host, "GET", "error"};
  CHECK_EQ(counter(m, "http_client_requests_total", v), 3);
  const char *vr[] = {host};
  CHECK_EQ(counter(m, "http_client_retries_total", vr), 2);
  keel_http_client_free(c);
  keel_metrics_free(m);
}

/* ---- retries ------------------------------------------------------------------------ */

KT_CASE(retries_a_503_until_it_passes) {
  keel_http_server *s = start_server();
  atomic_store(&g_fail_first, 2);
  keel_http_client_opts o = {.retry_base_ms = 1, .max_retries = 3};
  keel_http_client *c;
  CHECK_OK(keel_http_client_new(&o, &c));
  keel_http_client_res r;
  keel_http_client_req rq = {.url = url("/flaky")};
  CHECK_OK(keel_http_client_request(c, &rq, &r));
  CHECK_EQ(r.status, 200);
  CHECK_EQ(r.attempts, 3);
  CHECK_EQ(atomic_load(&g_calls), 3); /* 503, 503, then 200, in that order */
  keel_http_client_res_free(&r);
  /* out of attempts: the last answer stands */
  atomic_store(&g_calls, 0);
  atomic_store(&g_fail_first, 100);
  CHECK_OK(keel_http_client_request(c, &rq, &r));
  CHECK_EQ(r.status, 503);
  CHECK_EQ(r.attempts, 4);
  CHECK_EQ(atomic_load(&g_calls), 4);
  keel_http_client_res_free(&r);
  keel_http_client_free(c);
  CHECK_OK(keel_http_stop(s));
}

KT_CASE(only_safe_failures_and_methods_are_retried) {
  keel_http_server *s = start_server();
  keel_http_client_opts o = {.retry_base_ms = 1, .max_retries = 2, .no_breaker = true};
  keel_http_client *c;
  CHECK_OK(keel_http_client_new(&o, &c));
  keel_http_client_res r;
  /* a 500 is not retried (the server may have done the work) */
  keel_http_client_req rq = {.url = url("/status/500")};
  CHECK_OK(keel_http_client_request(c, &rq, &r));
  CHECK_EQ(r.attempts, 1);
  CHECK_EQ(atomic_load(&g_calls), 1);
  keel_http_client_res_free(&r);
  /* 502, 504 and 429 are */
  const char *retried[] = {"/status/502", "/status/504", "/status/429"};
  for (int i = 0; i < 3; i++) {
    atomic_store(&g_calls, 0);
    keel_http_client_req g = {.url = url(retried[i])};
    CHECK_OK(keel_http_client_request(c, &g, &r));
    CHECK_EQ(r.attempts, 3);
    CHECK_EQ(atomic_load(&g_calls), 3);
    keel_http_client_res_free(&r);
  }
  /* a POST is not, unless the caller says it is safe */
  atomic_store(&g_calls, 0);
  keel_http_client_req p = {
      .method = "POST", .url = url("/status/503"), .body = "{}", .body_len = 2};
  CHECK_OK(keel_http_client_request(c, &p, &r));
  CHECK_EQ(r.attempts, 1);
  CHECK_EQ(atomic_load(&g_calls), 1);
  keel_http_client_res_free(&r);
  atomic_store(&g_calls, 0);
  p.retry_unsafe = true;
  CHECK_OK(keel_http_client_request(c, &p, &r));
  CHECK_EQ(r.attempts, 3);
  CHECK_EQ(atomic_load(&g_calls), 3);
  keel_http_client_res_free(&r);
  /* the request's max_retries < 0: none */
  atomic_store(&g_calls, 0);
  keel_http_client_req n = {.url = url("/status/503"), .max_retries = -1};
  CHECK_OK(keel_http_client_request(c, &n, &r));
  CHECK_EQ(r.attempts, 1);
  keel_http_client_res_free(&r);
  keel_http_client_free(c);
  CHECK_OK(keel_http_stop(s));
}

KT_CASE(the_retry_budget_stops_retries_from_multiplying_an_outage) {
  keel_http_server *s = start_server();
  /* two tokens, no refill: the first request may retry twice, later ones not */
  keel_http_client_opts o = {.retry_base_ms = 1,
                             .max_retries = 5,
                             .retry_budget_min = 2,
                             .retry_budget_ratio = 1e-9,
                             .no_breaker = true};
  keel_http_client *c;
  CHECK_OK(keel_http_client_new(&o, &c));
  keel_http_client_res r;
  keel_http_client_req rq = {.url = url("/status/503")};
  CHECK_OK(keel_http_client_request(c, &rq, &r));
  CHECK_EQ(r.attempts, 3);
  keel_http_client_res_free(&r);
  for (int i = 0; i < 3; i++) {
    CHECK_OK(keel_http_client_request(c, &rq, &r));
    CHECK_EQ(r.attempts, 1);
    keel_http_client_res_free(&r);
  }
  CHECK_EQ(atomic_load(&g_calls), 6);
  keel_http_client_free(c);
  CHECK_OK(keel_http_stop(s));
}

KT_CASE(retry_after_is_honoured) {
  keel_http_server *s = start_server();
  keel_http_client_opts o = {.retry_base_ms = 1, .max_retries = 2};
  keel_http_client *c;
  CHECK_OK(keel_http_client_new(&o, &c));
  keel_http_client_res r;
  keel_http_client_req rq = {.url = url("/ra")};
  CHECK_OK(keel_http_client_request(c, &rq, &r));
  CHECK_EQ(r.status, 200);
  CHECK_EQ(r.attempts, 2);
  CHECK_EQ(atomic_load(&g_calls), 2);
  /* a lower bound only: the second call came no sooner than asked */
  CHECK(g_seen_ms[1] - g_seen_ms[0] >= 990);
  keel_http_client_res_free(&r);
  /* a Retry-After longer than retry_max_ms: no retry, the answer returned */
  atomic_store(&g_calls, 0);
  rq.url = url("/ra-long");
  CHECK_OK(keel_http_client_request(c, &rq, &r));
  CHECK_EQ(r.status, 503);
  CHECK_EQ(r.attempts, 1);
  CHECK_EQ(atomic_load(&g_calls), 1);
  CHECK_STR(keel_http_client_res_header(&r, "retry-after"), "3600");
  keel_http_client_res_free(&r);
  keel_http_client_free(c);
  CHECK_OK(keel_http_stop(s));
}

/* ---- the breaker ------------------------------------------------------------------------ */

static int status_of(keel_http_client *c, const char *path) {
  keel_http_client_res r;
  keel_http_client_req rq = {.url = url(path), .max_retries = -1};
  int rc = keel_http_client_request(c, &rq, &r);
  int st = rc == 0 ? r.status : rc;
  keel_http_client_res_free(&r);
  return st;
}

KT_CASE(breaker_opens_refuses_and_shows_in_metrics_and_health) {
  keel_http_server *s = start_server();
  keel_metrics *m;
  CHECK_OK(keel_metrics_new(&m, 0));
  keel_http_client_opts o = {.metrics = m,
                             .breaker_min_calls = 4,
                             .breaker_failure_ratio = 0.5,
                             .breaker_open_ms = 3600000};
  keel_http_client *c;
  CHECK_OK(keel_http_client_new(&o, &c));
  CHECK_OK(keel_http_client_health_register(c, "upstream"));
  char origin[64], host[32];
  snprintf(origin, sizeof origin, "http://127.0.0.1:%d", g_port);
  snprintf(host, sizeof host, "127.0.0.1:%d", g_port);
  /* two successes, then failures: the fourth call makes 2 of 4 */
  CHECK_EQ(status_of(c, "/hello"), 200);
  CHECK_EQ(status_of(c, "/hello"), 200);
  CHECK_EQ(status_of(c, "/status/500"), 500);
  CHECK_EQ(keel_http_client_breaker(c, origin), KEEL_HTTP_BREAKER_CLOSED);
  CHECK_EQ(status_of(c, "/status/500"), 500);
  CHECK_EQ(keel_http_client_breaker(c, origin), KEEL_HTTP_BREAKER_OPEN);
  /* open: refused without a call */
  atomic_store(&g_calls, 0);
  CHECK_EQ(status_of(c, "/status/200"), KEEL_EBUSY);
  CHECK_EQ(atomic_load(&g_calls), 0);
  keel_metric_family *f = keel_metrics_find(m, "http_client_breaker_state");
  keel_gauge *g;
  const char *v[] = {host};
  CHECK_OK(keel_gauge_get(f, v, &g));
  CHECK_EQ(keel_gauge_value(g), 1);
  const char *vo[] = {host, "GET", "open"};
  CHECK_EQ(counter(m, "http_client_requests_total", vo), 1);
  keel_health_response hr;
  CHECK_OK(keel_health_detailed(&hr));
  CHECK(strstr(hr.body, "circuit open") != NULL);
  keel_health_response_free(&hr);
  CHECK_OK(keel_health_unregister("upstream"));
  /* another destination is not affected */
  keel_http_client_res r;
  int port = closed_port();
  char u[64];
  snprintf(u, sizeof u, "http://localhost:%d/", port);
  keel_http_client_req rq = {.url = u, .max_retries = -1};
  CHECK_EQ(keel_http_client_request(c, &rq, &r), KEEL_EIO);
  keel_http_client_res_free(&r);
  keel_http_client_free(c);
  CHECK_OK(keel_http_stop(s));
  keel_metrics_free(m);
}

KT_CASE(breaker_half_open_probe_closes_or_reopens_it) {
  keel_http_server *s = start_server();
  keel_http_client_opts o = {
      .breaker_min_calls = 2, .breaker_failure_ratio = 0.5, .breaker_open_ms = 50};
  keel_http_client *c;
  CHECK_OK(keel_http_client_new(&o, &c));
  char origin[64];
  snprintf(origin, sizeof origin, "http://127.0.0.1:%d", g_port);
  CHECK_EQ(status_of(c, "/status/500"), 500);
  CHECK_EQ(status_of(c, "/status/500"), 500);
  CHECK_EQ(keel_http_client_breaker(c, origin), KEEL_HTTP_BREAKER_OPEN);
  keel_sleep(100);                            /* past open_ms: the next call is the probe */
  CHECK_EQ(status_of(c, "/status/500"), 500); /* the probe fails: open again */
  CHECK_EQ(keel_http_client_breaker(c, origin), KEEL_HTTP_BREAKER_OPEN);
  keel_sleep(100);
  CHECK_EQ(status_of(c, "/hello"), 200); /* the probe passes: closed */
  CHECK_EQ(keel_http_client_breaker(c, origin), KEEL_HTTP_BREAKER_CLOSED);
  CHECK_EQ(status_of(c, "/hello"), 200);
  keel_http_client_free(c);
  CHECK_OK(keel_http_stop(s));
}

/* ---- TLS (run by test_client_tls.sh with nginx; skipped without it) ----------------- */

KT_CASE(tls_is_verified_with_the_given_ca) {
  const char *u = getenv("KEEL_TEST_TLS_URL"), *ca = getenv("KEEL_TEST_TLS_CA");
  if (!u || !ca) {
    fprintf(stderr, "skipped: run by test_client_tls.sh (KEEL_TEST_TLS_URL, KEEL_TEST_TLS_CA)\n");
    return;
  }
  keel_http_client_res r;
  keel_http_client_req rq = {.url = u, .max_retries = -1};
  /* the system's CAs do not know a self-signed certificate: refused */
  keel_http_client *c;
  CHECK_OK(keel_http_client_new(NULL, &c));
  CHECK_EQ(keel_http_client_request(c, &rq, &r), KEEL_EIO);
  CHECK_EQ(r.status, 0);
  fprintf(stderr, "refused as expected: %s\n", r.error);
  CHECK(strcasestr(r.error, "certificate") != NULL);
  keel_http_client_res_free(&r);
  keel_http_client_free(c);
  /* with it as the CA file: accepted */
  keel_http_client_opts o = {.ca_file = ca};
  CHECK_OK(keel_http_client_new(&o, &c));
  CHECK_OK(keel_http_client_request(c, &rq, &r));
  CHECK_EQ(r.status, 200);
  CHECK_STR(r.body, "{\"hello\":\"tls\"}");
  keel_http_client_res_free(&r);
  keel_http_client_free(c);
}

/* ---- many at once, and callers that go away -------------------------------------------- */

typedef struct caller {
  keel_http_client *c;
  const char *url;
  keel_pid_t parent;
} caller;

enum { TAG_RESULT = 100 };

static void caller_main(void *arg) {
  caller *a = arg;
  keel_http_client_res r;
  keel_http_client_req rq = {.url = a->url};
  int rc = keel_http_client_request(a->c, &rq, &r);
  int64_t v = rc == 0 ? r.status : rc;
  keel_http_client_res_free(&r);
  kt_send_u64(a->parent, TAG_RESULT, (uint64_t)v);
}

KT_CASE(many_processes_at_once_on_every_scheduler) {
  keel_http_server *s = start_server();
  keel_http_client *c;
  CHECK_OK(keel_http_client_new(NULL, &c));
  enum { N = 200 };
  static caller a;
  a = (caller){c, url("/hello"), keel_self()};
  for (int i = 0; i < N; i++)
    CHECK_OK(keel_spawn(caller_main, &a, NULL, NULL));
  for (int i = 0; i < N; i++) {
    keel_msg_t *m = kt_recv(60000);
    CHECK_EQ((int64_t)kt_u64(m), 200);
    keel_msg_free(m);
  }
  keel_http_client_free(c);
  CHECK_OK(keel_http_stop(s));
}

KT_CASE(a_caller_killed_mid_request_leaves_nothing_behind) {
  int port;
  int fd = silent_listener(&port);
  keel_http_client *c;
  CHECK_OK(keel_http_client_new(NULL, &c));
  static char u[64];
  snprintf(u, sizeof u, "http://127.0.0.1:%d/x", port);
  static caller a;
  a = (caller){c, u, keel_self()};
  keel_pid_t pids[8];
  for (int i = 0; i < 8; i++)
    CHECK_OK(keel_spawn(caller_main, &a, NULL, &pids[i]));
  keel_sleep(50); /* let them start their requests (if not, they die earlier: also fine) */
  for (int i = 0; i < 8; i++) {
    keel_ref_t ref;
    CHECK_OK(keel_monitor(pids[i], &ref));
    CHECK_OK(keel_exit_signal(pids[i], KEEL_REASON_KILL, NULL));
    keel_msg_t *m = kt_recv(10000);
    CHECK_EQ(keel_msg_kind_of(m), KEEL_MSG_DOWN);
    keel_msg_free(m);
  }
  keel_http_client_free(c);
  close(fd);
}

KT_CASE(freeing_the_client_cancels_every_request_in_flight) {
  int port;
  int fd = silent_listener(&port);
  keel_http_client *c;
  CHECK_OK(keel_http_client_new(NULL, &c));
  static char u[64];
  snprintf(u, sizeof u, "http://127.0.0.1:%d/x", port);
  static caller a;
  a = (caller){c, u, keel_self()};
  enum { N = 16 };
  for (int i = 0; i < N; i++)
    CHECK_OK(keel_spawn(caller_main, &a, NULL, NULL));
  keel_sleep(50);
  keel_http_client_free(c); /* waits until every caller is out */
  for (int i = 0; i < N; i++) {
    keel_msg_t *m = kt_recv(10000);
    CHECK_EQ((int64_t)kt_u64(m), KEEL_ECANCELED);
    keel_msg_free(m);
  }
  close(fd);
}

/* The node stops with requests in flight: the callers are destroyed with it,
 * and the client freed afterwards frees their transfers (ASan checks). Run
 * from main, outside the KT cases. */
static keel_http_client *g_stop_client;
static atomic_int g_started;

static void stop_caller(void *arg) {
  atomic_fetch_add(&g_started, 1);
  keel_http_client_res r;
  keel_http_client_req rq = {.url = arg};
  keel_http_client_request(g_stop_client, &rq, &r);
  keel_http_client_res_free(&r);
}

static void stop_main(void *arg) {
  CHECK_OK(keel_http_client_new(NULL, &g_stop_client));
  for (int i = 0; i < 16; i++)
    CHECK_OK(keel_spawn(stop_caller, arg, NULL, NULL));
  while (atomic_load(&g_started) < 16)
    keel_sleep(5);
  keel_sleep(50);
  keel_rt_halt(0);
}

static int node_stop_with_requests_in_flight(void) {
  int port;
  int fd = silent_listener(&port);
  static char u[64];
  snprintf(u, sizeof u, "http://127.0.0.1:%d/x", port);
  fprintf(stderr, "-- node_stop_with_requests_in_flight\n");
  int rc = keel_run(stop_main, u, NULL);
  keel_http_client_free(g_stop_client); /* after keel_rt_stop: frees what was in flight */
  close(fd);
  if (rc != 0) return 1;
  printf("ok - node_stop_with_requests_in_flight\n");
  return 0;
}

int main(int argc, char **argv) {
  static const kt_case cases[] = {
      KT_ENTRY(get_returns_status_body_and_headers),
      KT_ENTRY(json_in_and_out),
      KT_ENTRY(redirects_are_followed_only_when_asked),
      KT_ENTRY(request_id_and_traceparent_go_on_from_the_handler),
      KT_ENTRY(oversize_body_is_refused),
      KT_ENTRY(a_server_that_never_answers_times_out),
      KT_ENTRY(a_refused_connection_is_eio_and_retried),
      KT_ENTRY(retries_a_503_until_it_passes),
      KT_ENTRY(only_safe_failures_and_methods_are_retried),
      KT_ENTRY(the_retry_budget_stops_retries_from_multiplying_an_outage),
      KT_ENTRY(retry_after_is_honoured),
      KT_ENTRY(breaker_opens_refuses_and_shows_in_metrics_and_health),
      KT_ENTRY(breaker_half_open_probe_closes_or_reopens_it),
      KT_ENTRY(tls_is_verified_with_the_given_ca),
      KT_ENTRY(many_processes_at_once_on_every_scheduler),
      KT_ENTRY(a_caller_killed_mid_request_leaves_nothing_behind),
      KT_ENTRY(freeing_the_client_cancels_every_request_in_flight),
  };
  int rc = kt_run_cases(cases, sizeof cases / sizeof *cases, argc, argv);
  if (rc || (argc > 1 && strcmp(argv[1], "node_stop_with_requests_in_flight") != 0)) return rc;
  return node_stop_with_requests_in_flight();
}
