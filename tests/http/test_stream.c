/* test_stream.c - streamed answers (keel_http_stream_begin/write): the head
 * without a length, the chunks in order, the close at the end, the errors. */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>

#include "http/kt_http.h"
#include "keel.h"
#include "keel_test.h"

static int g_codes[8];

static void other_process(void *arg) {
  keel_http_req *req = arg;
  g_codes[4] = keel_http_stream_write(req, "x", 1); /* not the handler's process */
}

static int h_stream(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)res, (void)ud;
  g_codes[0] = keel_http_stream_write(req, "early", 5); /* before begin */
  keel_http_set_header(res, "X-Extra", "yes");
  g_codes[1] = keel_http_stream_begin(req, 200, "text/event-stream", 0);
  g_codes[2] = keel_http_stream_begin(req, 200, "text/plain", 0); /* twice */
  g_codes[3] = keel_http_stream_open(req) ? 0 : -1;
  keel_ref_t ref;
  keel_pid_t p;
  keel_spawn_opts o;
  keel_spawn_opts_init(&o);
  o.monitor = true;
  o.monitor_ref = &ref;
  CHECK_OK(keel_spawn(other_process, req, &o, &p));
  kt_wait_down(ref, p, NULL, 0);
  for (int i = 0; i < 3; i++) {
    char chunk[32];
    snprintf(chunk, sizeof chunk, "data: %d\n\n", i);
    CHECK_OK(keel_http_stream_write(req, chunk, strlen(chunk)));
    keel_sleep(10);
  }
  return keel_http_reply_text(res, 500, "text/plain", "ignored: the answer was streamed");
}

static int h_bad(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)ud;
  g_codes[5] = keel_http_stream_begin(req, 99, "text/plain", 0);
  g_codes[6] = keel_http_stream_begin(req, 200, "text/plain\r\nX: y", 0);
  return keel_http_reply_text(res, 200, "text/plain", "plain");
}

typedef struct rd {
  int port;
  char buf[8192];
  size_t len;
  bool closed;
} rd;

static void read_all(void *arg) {
  rd *r = arg;
  kt_conn c;
  if (kt_connect(r->port, &c) != 0) return;
  const char req[] = "GET /s HTTP/1.1\r\nHost: x\r\n\r\n";
  kt_send_all(&c, req, sizeof req - 1);
  for (;;) {
    ssize_t n = recv(c.fd, r->buf + r->len, sizeof r->buf - r->len - 1, 0);
    if (n <= 0) {
      r->closed = n == 0;
      break;
    }
    r->len += (size_t)n;
  }
  r->buf[r->len] = 0;
  kt_close(&c);
}

KT_CASE(a_streamed_answer_comes_in_order_and_ends_with_the_connection) {
  keel_http_router *r = keel_http_router_new();
  CHECK_OK(keel_http_route(r, "GET", "/s", h_stream, NULL));
  CHECK_OK(keel_http_route(r, "GET", "/bad", h_bad, NULL));
  keel_http_opts o;
  keel_http_opts_init(&o);
  o.host = "127.0.0.1";
  o.no_access_log = true;
  o.request_timeout_ms = 20; /* a stream outlives the request timeout */
  keel_http_server *s;
  CHECK_OK(keel_http_start(&o, r, &s));
  static rd rr;
  rr.port = keel_http_port(s);
  CHECK_OK(keel_blocking(read_all, &rr));
  CHECK(rr.closed);
  CHECK(strncmp(rr.buf, "HTTP/1.1 200 OK\r\n", 17) == 0);
  CHECK(strstr(rr.buf, "Content-Type: text/event-stream\r\n") != NULL);
  CHECK(strstr(rr.buf, "Connection: close\r\n") != NULL);
  CHECK(strstr(rr.buf, "X-Extra: yes\r\n") != NULL);
  CHECK(strstr(rr.buf, "Content-Length") == NULL);
  const char *body = strstr(rr.buf, "\r\n\r\n");
  CHECK(body != NULL);
  CHECK_STR(body + 4, "data: 0\n\ndata: 1\n\ndata: 2\n\n"); /* nothing after: not the 500 */
  CHECK_EQ(g_codes[0], KEEL_ESTATE);
  CHECK_EQ(g_codes[1], 0);
  CHECK_EQ(g_codes[2], KEEL_ESTATE);
  CHECK_EQ(g_codes[3], 0);
  CHECK_EQ(g_codes[4], KEEL_ENOTPROC);
  static kt_resp resp;
  CHECK_EQ(kt_exchange(keel_http_port(s), "GET /bad HTTP/1.1\r\nHost: x\r\n\r\n", &resp, 1), 1);
  CHECK_EQ(resp.status, 200);
  CHECK_EQ(g_codes[5], KEEL_EINVAL);
  CHECK_EQ(g_codes[6], KEEL_EINVAL);
  CHECK_OK(keel_http_stop(s));
}

KT_MAIN(KT_ENTRY(a_streamed_answer_comes_in_order_and_ends_with_the_connection))
