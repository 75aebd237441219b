/* test_hostile.c - the HTTP server against a hostile client over loopback:
 * requests that RFC 9112 says to refuse (whitespace in or after a field
 * name, bad chunk framing, unknown versions, a missing or repeated Host,
 * obs-fold, the request smuggling family, garbage, NULs, the HTTP/2
 * preface), the head and body limits, blank lines before a request line,
 * and the header, body and keep-alive timeouts against clients that dribble,
 * stall or say nothing.
 *
 * Every refusal is one answer with the error envelope and Connection: close,
 * then the server closes the connection: a request smuggled after the
 * refused one (GET /api/smuggled) is never answered and never reaches its
 * handler. Every case ends by checking the server still serves a fresh
 * connection and holds no connection or request any more.
 *
 * The client is raw sockets (kt_http.h) run on libuv's thread pool through
 * keel_blocking, so the schedulers keep serving while it waits. Time bounds
 * are generous liveness bounds (an answer within seconds against timeouts of
 * a few hundred milliseconds), never performance thresholds.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdatomic.h>

#include "http/kt_http.h"

/* How long the client waits for an answer or a close before it calls the
 * server silent. A passing case never waits this long. */
#define HX_WAIT_MS 5000
/* A dribbling client sends one piece this often. */
#define DRIP_MS 100
/* ... for at most this long; the server must have ended it well before. */
#define DRIP_MAX_MS 4000
/* A timeout of a few hundred milliseconds must have ended the connection
 * within this (generous: sanitizers and a busy machine). */
#define CLOSED_WITHIN_MS 3000

/* A request a parser fooled into splitting the stream would answer. */
#define SMUG   "GET /api/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
#define LIT(s) s, sizeof(s) - 1

/* ---- routes ----------------------------------------------------------------------- */

static atomic_int g_smuggled; /* requests that reached /api/smuggled */

static int h_hello(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req, (void)ud;
  return keel_http_reply_text(res, 200, "application/json", "{\"hello\":\"world\"}");
}

static int h_echo(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)ud;
  size_t n = 0;
  const void *b = keel_http_body(req, &n);
  return keel_http_reply(res, 200, "application/octet-stream", b, n);
}

static int h_smuggled(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req, (void)ud;
  atomic_fetch_add(&g_smuggled, 1);
  return keel_http_reply_text(res, 200, "text/plain", "smuggled");
}

static keel_http_router *routes(void) {
  keel_http_router *r = keel_http_router_new();
  CHECK(r != NULL);
  CHECK_OK(keel_http_route(r, "GET", "/", h_hello, NULL));
  CHECK_OK(keel_http_route(r, "GET", "/api/hello", h_hello, NULL));
  CHECK_OK(keel_http_route(r, "POST", "/api/echo", h_echo, NULL));
  CHECK_OK(keel_http_route(r, "GET", "/api/smuggled", h_smuggled, NULL));
  CHECK_OK(keel_http_route(r, "POST", "/api/smuggled", h_smuggled, NULL));
  return r;
}

/* Options for the parser cases: no rate limit (a case sends many requests),
 * and timeouts short enough that a server which wrongly keeps a connection
 * open ends the case in about a second instead of HX_WAIT_MS. */
static void parser_options(keel_http_opts *o) {
  keel_http_opts_init(o);
  o->rate_limit = 0;
  o->header_timeout_ms = 2000;
  o->body_timeout_ms = 2000;
  o->keepalive_timeout_ms = 1000;
}

/* Options for the timeout cases. */
static void timeout_options(keel_http_opts *o) {
  keel_http_opts_init(o);
  o->rate_limit = 0;
  o->header_timeout_ms = 400;
  o->body_timeout_ms = 400;
  o->keepalive_timeout_ms = 300;
}

static keel_http_server *start(keel_http_opts *o) {
  keel_http_server *s;
  o->host = "127.0.0.1";
  o->port = 0;
  atomic_store(&g_smuggled, 0);
  CHECK_OK(keel_http_start(o, routes(), &s));
  CHECK(keel_http_port(s) > 0);
  return s;
}

/* The error envelope, as test_server.c checks it, and Connection: close. */
static void check_envelope(const kt_resp *r, int status, const char *code) {
  kt_check_envelope(r, status, code);
  char v[64];
  CHECK_STR(kt_hdr(r, "Connection", v, sizeof v), "close");
}

/* The server still answers a plain GET on a new connection, and once that
 * client has gone it holds no connection and no request. */
static void check_healthy(keel_http_server *s) {
  static kt_resp r;
  CHECK_EQ(kt_exchange(keel_http_port(s),
                       "GET /api/hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", &r, 1),
           1);
  CHECK_EQ(r.status, 200);
  CHECK_STR(r.body, "{\"hello\":\"world\"}");
  KT_WAIT_UNTIL(keel_http_connections(s) == 0);
  KT_WAIT_UNTIL(keel_http_in_flight(s) == 0);
}

static void finish(keel_http_server *s) {
  check_healthy(s);
  CHECK_EQ(atomic_load(&g_smuggled), 0);
  CHECK_OK(keel_http_stop(s));
}

/* Prints bytes with CR, LF and the unprintable escaped (for a failure). */
static void print_escaped(const char *p, size_t n) {
  for (size_t i = 0; i < n && i < 240; i++) {
    unsigned char ch = (unsigned char)p[i];
    if (ch == '\r')
      fputs("\\r", stderr);
    else if (ch == '\n')
      fputs("\\n", stderr);
    else if (ch == '\t')
      fputs("\\t", stderr);
    else if (ch < 0x20 || ch >= 0x7f)
      fprintf(stderr, "\\x%02x", ch);
    else
      fputc(ch, stderr);
  }
  if (n > 240) fputs("...", stderr);
  fputc('\n', stderr);
}

static void set_rcvtimeo(int fd, int64_t ms) {
  struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
}

/* ---- one burst: send it all, read what comes back ------------------------------------ */

typedef struct hx {
  int port;
  const char *req;
  size_t len;
  kt_resp resp[2]; /* at most two answers are read: one more than a refusal may give */
  int got;
  bool closed;     /* the server closed the connection after them */
  size_t leftover; /* bytes received that were not a whole answer */
} hx;

static void hx_run(void *arg) {
  hx *x = arg;
  x->got = 0;
  x->closed = false;
  x->leftover = 0;
  kt_conn *c = malloc(sizeof *c);
  if (!c) return;
  if (kt_connect(x->port, c) != 0) {
    free(c);
    return;
  }
  set_rcvtimeo(c->fd, HX_WAIT_MS);
  (void)kt_send_all(c, x->req, x->len); /* the server may refuse before it has read all */
  while (x->got < 2 && kt_read_resp(c, &x->resp[x->got], false) == 0)
    x->got++;
  x->leftover = c->len;
  x->closed = kt_closed(c);
  kt_close(c);
  free(c);
}

static hx *hx_send(int port, const char *req, size_t len) {
  static hx x;
  memset(&x, 0, sizeof x);
  x.port = port;
  x.req = req;
  x.len = len;
  CHECK_OK(keel_blocking(hx_run, &x));
  return &x;
}

/* Sends req (len bytes, NULs allowed) on a new connection and checks it is
 * refused: exactly one answer, `status` with the envelope `code` and
 * Connection: close, then the connection closed, and nothing smuggled after
 * the refused request reached a handler. */
static void refused(int port, const char *what, const char *req, size_t len, int status,
                    const char *code) {
  hx *x = hx_send(port, req, len);
  bool ok = x->got == 1 && x->resp[0].status == status && x->closed && x->leftover == 0 &&
            atomic_load(&g_smuggled) == 0;
  if (!ok) {
    fprintf(stderr,
            "refused(%s): want one %d and a close; got %d answer(s) (statuses %d %d), "
            "closed %d, %zu stray bytes, %d smuggled served\n  sent: ",
            what, status, x->got, x->resp[0].status, x->resp[1].status, (int)x->closed, x->leftover,
            atomic_load(&g_smuggled));
    print_escaped(req, len);
  }
  CHECK_EQ(x->got, 1);
  check_envelope(&x->resp[0], status, code);
  CHECK(x->closed);
  CHECK_EQ(x->leftover, 0);
  CHECK_EQ(atomic_load(&g_smuggled), 0);
}

#define REFUSED_400(port, what, lit) refused(port, what, LIT(lit), 400, "BAD_REQUEST")

/* ---- a slow client: send a piece every DRIP_MS, watch for the server's end ---------- */

typedef struct drip {
  int port;
  const char *first; /* sent on connecting (NULL: nothing) */
  bool first_is_req; /* first is a whole request: its answer is read before dripping */
  const char *piece; /* then sent every DRIP_MS (NULL: the client only waits) */
  const char *after; /* sent once the server answered or closed (NULL: nothing) */
  /* what happened */
  kt_resp warm; /* the answer to first, when first_is_req */
  int warm_got;
  int64_t stopped_ms;   /* from the start of the dripping to the server's answer or close */
  bool ended_by_server; /* the socket became readable, or a send failed, before DRIP_MAX_MS */
  int pieces;           /* pieces sent */
  kt_resp resp;         /* the server's answer to the dripping, if any */
  int got;
  bool closed;
  size_t leftover;
  kt_resp late; /* an answer to `after` (must not come) */
  bool after_answered;
} drip;

static void drip_run(void *arg) {
  drip *d = arg;
  kt_conn *c = malloc(sizeof *c);
  if (!c) return;
  if (kt_connect(d->port, c) != 0) {
    free(c);
    return;
  }
  set_rcvtimeo(c->fd, HX_WAIT_MS);
  if (d->first) (void)kt_send_all(c, d->first, strlen(d->first));
  if (d->first_is_req) d->warm_got = kt_read_resp(c, &d->warm, false) == 0;
  int64_t t0 = kt_now_ms();
  for (;;) {
    int64_t left = DRIP_MAX_MS - (kt_now_ms() - t0);
    if (left <= 0) break;
    struct pollfd p = {.fd = c->fd, .events = POLLIN};
    int n = poll(&p, 1, (int)(d->piece && left > DRIP_MS ? DRIP_MS : left));
    if (n < 0 && errno == EINTR) continue;
    if (n != 0) { /* readable: an answer or the close (or a poll error) */
      d->ended_by_server = true;
      break;
    }
    if (d->piece) {
      if (kt_send_all(c, d->piece, strlen(d->piece)) != 0) { /* reset by the server */
        d->ended_by_server = true;
        break;
      }
      d->pieces++;
    }
  }
  d->stopped_ms = kt_now_ms() - t0;
  d->got = kt_read_resp(c, &d->resp, false) == 0;
  d->leftover = c->len;
  d->closed = kt_closed(c);
  if (d->after && kt_send_all(c, d->after, strlen(d->after)) == 0)
    d->after_answered = kt_read_resp(c, &d->late, false) == 0;
  kt_close(c);
  free(c);
}

static drip *drip_start(void) {
  static drip d;
  memset(&d, 0, sizeof d);
  return &d;
}

static void drip_go(drip *d) {
  CHECK_OK(keel_blocking(drip_run, d));
  fprintf(stderr,
          "   ended by the server: %d after %" PRId64 " ms (%d pieces), answer %d (%d), "
          "closed %d\n",
          (int)d->ended_by_server, d->stopped_ms, d->pieces, d->got, d->resp.status,
          (int)d->closed);
}

/* ---- 1. parser strictness -------------------------------------------------------------- */

KT_CASE(whitespace_inside_or_after_a_field_name_gets_400_and_close) {
  keel_http_opts o;
  parser_options(&o);
  keel_http_server *s = start(&o);
  int port = keel_http_port(s);
  REFUSED_400(port, "space before the colon",
              "POST /api/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n"
              "Content-Length: 5\r\n\r\n0\r\n\r\n" SMUG);
  REFUSED_400(port, "tab before the colon",
              "GET /api/hello HTTP/1.1\r\nHost: x\r\nX-A\t: y\r\n\r\n" SMUG);
  REFUSED_400(port, "space inside a field name",
              "GET /api/hello HTTP/1.1\r\nHost: x\r\nHo st: x\r\n\r\n" SMUG);
  finish(s);
}

KT_CASE(chunk_data_not_followed_by_crlf_gets_400_and_close) {
  keel_http_opts o;
  parser_options(&o);
  keel_http_server *s = start(&o);
  REFUSED_400(keel_http_port(s), "chunk data then XX",
              "POST /api/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
              "2\r\n{}XX0\r\n\r\n" SMUG);
  finish(s);
}

KT_CASE(only_http_1_0_and_1_1_are_served_other_versions_get_400_and_close) {
  keel_http_opts o;
  parser_options(&o);
  keel_http_server *s = start(&o);
  int port = keel_http_port(s);
  REFUSED_400(port, "HTTP/9.9", "GET /api/hello HTTP/9.9\r\nHost: x\r\n\r\n" SMUG);
  REFUSED_400(port, "HTTP/1.2", "GET /api/hello HTTP/1.2\r\nHost: x\r\n\r\n" SMUG);
  REFUSED_400(port, "HTTP/2.0", "GET /api/hello HTTP/2.0\r\nHost: x\r\n\r\n" SMUG);
  REFUSED_400(port, "HTTP/0.9", "GET /api/hello HTTP/0.9\r\nHost: x\r\n\r\n" SMUG);
  /* the two that are served */
  static kt_resp r;
  CHECK_EQ(kt_exchange(port, "GET /api/hello HTTP/1.0\r\nHost: x\r\n\r\n", &r, 1), 1);
  CHECK_EQ(r.status, 200);
  CHECK_EQ(
      kt_exchange(port, "GET /api/hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", &r, 1),
      1);
  CHECK_EQ(r.status, 200);
  finish(s);
}

KT_CASE(an_http_1_1_request_without_exactly_one_host_gets_400_and_close) {
  keel_http_opts o;
  parser_options(&o);
  keel_http_server *s = start(&o);
  int port = keel_http_port(s);
  REFUSED_400(port, "no Host", "GET /api/hello HTTP/1.1\r\nAccept: */*\r\n\r\n" SMUG);
  REFUSED_400(port, "two different Hosts",
              "GET /api/hello HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n" SMUG);
  REFUSED_400(port, "the same Host twice",
              "GET /api/hello HTTP/1.1\r\nHost: x\r\nAccept: */*\r\nHost: x\r\n\r\n" SMUG);
  finish(s);
}

KT_CASE(an_http_1_0_request_without_host_is_served) {
  keel_http_opts o;
  parser_options(&o);
  keel_http_server *s = start(&o);
  static kt_resp r;
  kt_job j = {
      .port = keel_http_port(s), .req = "GET /api/hello HTTP/1.0\r\n\r\n", .nresp = 1, .resp = &r};
  CHECK_OK(keel_blocking(kt_job_run, &j));
  CHECK_EQ(j.got, 1);
  CHECK_EQ(r.status, 200);
  CHECK_STR(r.body, "{\"hello\":\"world\"}");
  finish(s);
}

KT_CASE(obs_fold_continuation_lines_get_400_and_close) {
  keel_http_opts o;
  parser_options(&o);
  keel_http_server *s = start(&o);
  int port = keel_http_port(s);
  REFUSED_400(port, "fold with a space",
              "GET /api/hello HTTP/1.1\r\nHost: x\r\nX-A: one\r\n two\r\n\r\n" SMUG);
  REFUSED_400(port, "fold with a tab",
              "GET /api/hello HTTP/1.1\r\nHost: x\r\nX-A: one\r\n\ttwo\r\n\r\n" SMUG);
  REFUSED_400(port, "fold of the Host line",
              "GET /api/hello HTTP/1.1\r\nHost: x\r\n  y\r\nAccept: */*\r\n\r\n" SMUG);
  finish(s);
}

typedef struct variant {
  const char *what;
  const char *req;
  size_t len;
} variant;

#define V(what, lit)                                                                               \
  { what, LIT(lit) }
#define POST_ECHO "POST /api/echo HTTP/1.1\r\nHost: x\r\n"

static const variant smuggling[] = {
    V("Content-Length then Transfer-Encoding",
      POST_ECHO "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" SMUG),
    V("Transfer-Encoding then Content-Length",
      POST_ECHO "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n" SMUG),
    V("two different Content-Lengths",
      POST_ECHO "Content-Length: 2\r\nContent-Length: 41\r\n\r\n{}" SMUG),
    V("two equal Content-Lengths",
      POST_ECHO "Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}" SMUG),
    V("Content-Length: +1", POST_ECHO "Content-Length: +1\r\n\r\nx" SMUG),
    V("Content-Length: -1", POST_ECHO "Content-Length: -1\r\n\r\nx" SMUG),
    V("Content-Length: 1 1", POST_ECHO "Content-Length: 1 1\r\n\r\nx" SMUG),
    V("Transfer-Encoding: chunked, gzip",
      POST_ECHO "Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n" SMUG),
    V("Transfer-Encoding chunked then gzip on two lines",
      POST_ECHO "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n" SMUG),
    V("Transfer-Encoding: gzip (chunked not last)",
      POST_ECHO "Transfer-Encoding: gzip\r\n\r\n0\r\n\r\n" SMUG),
    V("Transfer-Encoding: xchunked", POST_ECHO "Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" SMUG),
    V("Transfer-Encoding: chunked with a vertical tab",
      POST_ECHO "Transfer-Encoding: chunked\x0b\r\n\r\n0\r\n\r\n" SMUG),
    V("Transfer-Encoding: vertical tab then chunked", POST_ECHO "Transfer-Encoding:\x0b"
                                                                "chunked\r\n\r\n0\r\n\r\n" SMUG),
    V("a tab before the Transfer-Encoding name (first field line)",
      "POST /api/echo HTTP/1.1\r\n\tTransfer-Encoding: chunked\r\nHost: x\r\n"
      "Content-Length: 5\r\n\r\n0\r\n\r\n" SMUG),
    V("a tab before the Transfer-Encoding name (after Host)",
      POST_ECHO "\tTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n" SMUG),
    V("a tab between the Transfer-Encoding name and the colon",
      POST_ECHO "Transfer-Encoding\t: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n" SMUG),
    V("a chunk size with a non-hex character",
      POST_ECHO "Transfer-Encoding: chunked\r\n\r\n2x\r\n{}\r\n0\r\n\r\n" SMUG),
    V("a chunk size of 17 hex digits (overflow)",
      POST_ECHO "Transfer-Encoding: chunked\r\n\r\n10000000000000002\r\n{}\r\n0\r\n\r\n" SMUG),
    V("a bare LF ending a field line", "GET /api/hello HTTP/1.1\r\nHost: x\nX-A: y\r\n\r\n" SMUG),
    V("bare LFs ending the whole head", "GET /api/hello HTTP/1.1\nHost: x\n\n" SMUG),
};

KT_CASE(smuggling_attempts_get_400_and_close_and_the_smuggled_request_is_never_answered) {
  keel_http_opts o;
  parser_options(&o);
  keel_http_server *s = start(&o);
  int port = keel_http_port(s);
  size_t n = sizeof smuggling / sizeof smuggling[0];
  CHECK(n >= 13);
  for (size_t i = 0; i < n; i++)
    refused(port, smuggling[i].what, smuggling[i].req, smuggling[i].len, 400, "BAD_REQUEST");
  finish(s);
}

KT_CASE(garbage_a_nul_in_a_header_and_the_http2_preface_get_400_and_close) {
  keel_http_opts o;
  parser_options(&o);
  keel_http_server *s = start(&o);
  int port = keel_http_port(s);
  REFUSED_400(port, "text that is not HTTP", "NOT HTTP AT ALL\r\n\r\n" SMUG);
  REFUSED_400(port, "a TLS ClientHello",
              "\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\x00\x01\x02\x03\r\n\r\n" SMUG);
  REFUSED_400(port, "binary bytes", "\xff\xfe\x00\x01\x80\x7f\r\n\r\n" SMUG);
  REFUSED_400(port, "a NUL inside a header value",
              "GET /api/hello HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n" SMUG);
  REFUSED_400(port, "a NUL inside the target", "GET /api/he\0llo HTTP/1.1\r\nHost: x\r\n\r\n" SMUG);
  REFUSED_400(port, "the HTTP/2 connection preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" SMUG);
  finish(s);
}

KT_CASE(an_oversized_head_gets_431_with_the_envelope_and_close) {
  keel_http_opts o;
  parser_options(&o);
  o.max_header_bytes = 1024;
  keel_http_server *s = start(&o);
  int port = keel_http_port(s);
  static char big[8192];
  /* one field too large */
  int n = snprintf(big, sizeof big, "GET /api/hello HTTP/1.1\r\nHost: x\r\nX-Big: ");
  memset(big + n, 'a', 2000);
  n += 2000;
  n += snprintf(big + n, sizeof big - (size_t)n, "\r\n\r\n" SMUG);
  refused(port, "one 2000-byte field", big, (size_t)n, 431, "HEADERS_TOO_LARGE");
  /* many small fields adding up past the limit */
  n = snprintf(big, sizeof big, "GET /api/hello HTTP/1.1\r\nHost: x\r\n");
  for (int i = 0; i < 80; i++)
    n += snprintf(big + n, sizeof big - (size_t)n, "X-Field-%02d: value-value\r\n", i);
  n += snprintf(big + n, sizeof big - (size_t)n, "\r\n" SMUG);
  refused(port, "80 small fields", big, (size_t)n, 431, "HEADERS_TOO_LARGE");
  finish(s);
}

KT_CASE(an_oversized_body_declared_or_chunked_gets_413_with_the_envelope_and_close) {
  keel_http_opts o;
  parser_options(&o);
  o.max_body_bytes = 1000;
  keel_http_server *s = start(&o);
  int port = keel_http_port(s);
  /* declared too large: answered before the body is read */
  refused(port, "Content-Length above the limit",
          LIT(POST_ECHO "Content-Length: 5000\r\n\r\n{\"name\":" SMUG), 413, "PAYLOAD_TOO_LARGE");
  /* chunked, growing past the limit */
  static char big[4096];
  int n = snprintf(big, sizeof big, POST_ECHO "Transfer-Encoding: chunked\r\n\r\n");
  for (int i = 0; i < 3; i++)
    n += snprintf(big + n, sizeof big - (size_t)n, "1f4\r\n%0500d\r\n", 0);
  n += snprintf(big + n, sizeof big - (size_t)n, "0\r\n\r\n" SMUG);
  refused(port, "a chunked body past the limit", big, (size_t)n, 413, "PAYLOAD_TOO_LARGE");
  /* at the limit exactly: served */
  n = snprintf(big, sizeof big, POST_ECHO "Content-Length: 1000\r\nConnection: close\r\n\r\n");
  memset(big + n, 'b', 1000);
  n += 1000;
  hx *x = hx_send(port, big, (size_t)n);
  CHECK_EQ(x->got, 1);
  CHECK_EQ(x->resp[0].status, 200);
  CHECK_EQ(x->resp[0].body_len, 1000);
  finish(s);
}

/* ---- 2. blank lines before a request line --------------------------------------------- */

KT_CASE(up_to_two_blank_lines_before_a_request_line_are_tolerated) {
  keel_http_opts o;
  parser_options(&o);
  keel_http_server *s = start(&o);
  int port = keel_http_port(s);
  static const variant ok[] = {
      V("one blank line", "\r\nGET /api/hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
      V("two blank lines",
        "\r\n\r\nGET /api/hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
  };
  for (size_t i = 0; i < 2; i++) {
    hx *x = hx_send(port, ok[i].req, ok[i].len);
    if (x->got != 1 || x->resp[0].status != 200) fprintf(stderr, "failed: %s\n", ok[i].what);
    CHECK_EQ(x->got, 1);
    CHECK_EQ(x->resp[0].status, 200);
    CHECK_STR(x->resp[0].body, "{\"hello\":\"world\"}");
    CHECK(x->closed); /* Connection: close was asked */
  }
  /* between pipelined requests on a keep-alive connection too (a client
   * that ends a body with an extra CRLF) */
  hx *x = hx_send(port, LIT(POST_ECHO "Content-Length: 2\r\n\r\n{}\r\n\r\n"
                                      "GET /api/hello HTTP/1.1\r\nHost: x\r\n"
                                      "Connection: close\r\n\r\n"));
  CHECK_EQ(x->got, 2);
  CHECK_EQ(x->resp[0].status, 200);
  CHECK_STR(x->resp[0].body, "{}");
  CHECK_EQ(x->resp[1].status, 200);
  CHECK_STR(x->resp[1].body, "{\"hello\":\"world\"}");
  CHECK(x->closed);
  finish(s);
}

KT_CASE(a_third_blank_line_before_a_request_line_gets_400_and_close) {
  keel_http_opts o;
  parser_options(&o);
  keel_http_server *s = start(&o);
  int port = keel_http_port(s);
  REFUSED_400(port, "three blank lines", "\r\n\r\n\r\n" SMUG);
  REFUSED_400(port, "five blank lines", "\r\n\r\n\r\n\r\n\r\n" SMUG);
  /* after a served request on a keep-alive connection: the first is
   * answered, the three blank lines refused, the request after them not */
  hx *x = hx_send(port, LIT("GET /api/hello HTTP/1.1\r\nHost: x\r\n\r\n\r\n\r\n\r\n" SMUG));
  CHECK_EQ(x->got, 1 + 1);
  CHECK_EQ(x->resp[0].status, 200);
  check_envelope(&x->resp[1], 400, "BAD_REQUEST");
  CHECK(x->closed);
  CHECK_EQ(x->leftover, 0);
  finish(s);
}

/* ---- 3. timeouts ------------------------------------------------------------------------- */

KT_CASE(a_head_dribbled_line_by_line_gets_408_and_is_closed_before_the_dribble_ends) {
  keel_http_opts o;
  timeout_options(&o);
  keel_http_server *s = start(&o);
  drip *d = drip_start();
  d->port = keel_http_port(s);
  d->first = "GET /api/hello HTTP/1.1\r\nHost: x\r\n";
  d->piece = "X-N: v\r\n"; /* each line arrives well within the timeout; the head never ends */
  drip_go(d);
  CHECK(d->ended_by_server);
  CHECK(d->stopped_ms < CLOSED_WITHIN_MS);
  CHECK_EQ(d->got, 1);
  check_envelope(&d->resp, 408, "REQUEST_TIMEOUT");
  CHECK(d->closed);
  CHECK_EQ(d->leftover, 0);
  finish(s);
}

KT_CASE(blank_lines_sent_slowly_get_400_at_the_third_and_the_connection_is_closed) {
  keel_http_opts o;
  timeout_options(&o);
  /* a header timeout well past the third line (at about 300 ms), so that the
   * blank-line limit, not the timeout, is what ends it */
  o.header_timeout_ms = 2000;
  keel_http_server *s = start(&o);
  drip *d = drip_start();
  d->port = keel_http_port(s);
  d->piece = "\r\n";
  d->after = SMUG;
  drip_go(d);
  CHECK(d->ended_by_server);
  CHECK(d->stopped_ms < CLOSED_WITHIN_MS);
  CHECK_EQ(d->got, 1);
  check_envelope(&d->resp, 400, "BAD_REQUEST");
  CHECK(d->closed);
  CHECK_EQ(d->leftover, 0);
  CHECK(!d->after_answered);
  finish(s);
}

KT_CASE(bare_lfs_after_a_served_request_get_the_connection_closed_and_nothing_more_served) {
  keel_http_opts o;
  timeout_options(&o);
  keel_http_server *s = start(&o);
  drip *d = drip_start();
  d->port = keel_http_port(s);
  d->first = "GET /api/hello HTTP/1.1\r\nHost: x\r\n\r\n";
  d->first_is_req = true;
  d->piece = "\n";
  d->after = SMUG;
  drip_go(d);
  CHECK_EQ(d->warm_got, 1);
  CHECK_EQ(d->warm.status, 200);
  CHECK(d->ended_by_server);
  CHECK(d->stopped_ms < CLOSED_WITHIN_MS);
  if (d->got) { /* refused (400) or timed out (408) with an answer; a bare close is fine too */
    CHECK(d->resp.status == 400 || d->resp.status == 408);
    check_envelope(&d->resp, d->resp.status,
                   d->resp.status == 400 ? "BAD_REQUEST" : "REQUEST_TIMEOUT");
  }
  CHECK(d->closed);
  CHECK_EQ(d->leftover, 0);
  CHECK(!d->after_answered);
  finish(s);
}

KT_CASE(an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout_without_bytes) {
  keel_http_opts o;
  timeout_options(&o);
  keel_http_server *s = start(&o);
  drip *d = drip_start();
  d->port = keel_http_port(s);
  d->first = "GET /api/hello HTTP/1.1\r\nHost: x\r\n\r\n";
  d->first_is_req = true;
  drip_go(d);
  CHECK_EQ(d->warm_got, 1);
  CHECK_EQ(d->warm.status, 200);
  char v[64];
  CHECK_STR(kt_hdr(&d->warm, "Connection", v, sizeof v), "keep-alive");
  CHECK(d->ended_by_server);
  CHECK(d->stopped_ms < CLOSED_WITHIN_MS);
  CHECK_EQ(d->got, 0); /* closed without a word */
  CHECK_EQ(d->leftover, 0);
  CHECK(d->closed);
  finish(s);
}

KT_CASE(a_body_that_stops_coming_gets_408_and_close) {
  keel_http_opts o;
  timeout_options(&o);
  keel_http_server *s = start(&o);
  drip *d = drip_start();
  d->port = keel_http_port(s);
  d->first = POST_ECHO "Content-Length: 100\r\n\r\n{\"name\":";
  drip_go(d);
  CHECK(d->ended_by_server);
  CHECK(d->stopped_ms < CLOSED_WITHIN_MS);
  CHECK_EQ(d->got, 1);
  check_envelope(&d->resp, 408, "REQUEST_TIMEOUT");
  CHECK(d->closed);
  CHECK_EQ(d->leftover, 0);
  /* a chunked body that stops between chunks, too */
  d = drip_start();
  d->port = keel_http_port(s);
  d->first = POST_ECHO "Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n";
  drip_go(d);
  CHECK(d->ended_by_server);
  CHECK(d->stopped_ms < CLOSED_WITHIN_MS);
  CHECK_EQ(d->got, 1);
  check_envelope(&d->resp, 408, "REQUEST_TIMEOUT");
  CHECK(d->closed);
  CHECK_EQ(d->leftover, 0);
  finish(s);
}

KT_CASE(a_connection_that_sends_nothing_is_closed_by_the_header_timeout) {
  keel_http_opts o;
  timeout_options(&o);
  keel_http_server *s = start(&o);
  drip *d = drip_start();
  d->port = keel_http_port(s);
  drip_go(d);
  CHECK(d->ended_by_server);
  CHECK(d->stopped_ms < CLOSED_WITHIN_MS);
  if (d->got) check_envelope(&d->resp, 408, "REQUEST_TIMEOUT"); /* or closed without a word */
  CHECK_EQ(d->leftover, 0);
  CHECK(d->closed);
  finish(s);
}

KT_MAIN(KT_ENTRY(whitespace_inside_or_after_a_field_name_gets_400_and_close),
        KT_ENTRY(chunk_data_not_followed_by_crlf_gets_400_and_close),
        KT_ENTRY(only_http_1_0_and_1_1_are_served_other_versions_get_400_and_close),
        KT_ENTRY(an_http_1_1_request_without_exactly_one_host_gets_400_and_close),
        KT_ENTRY(an_http_1_0_request_without_host_is_served),
        KT_ENTRY(obs_fold_continuation_lines_get_400_and_close),
        KT_ENTRY(smuggling_attempts_get_400_and_close_and_the_smuggled_request_is_never_answered),
        KT_ENTRY(garbage_a_nul_in_a_header_and_the_http2_preface_get_400_and_close),
        KT_ENTRY(an_oversized_head_gets_431_with_the_envelope_and_close),
        KT_ENTRY(an_oversized_body_declared_or_chunked_gets_413_with_the_envelope_and_close),
        KT_ENTRY(up_to_two_blank_lines_before_a_request_line_are_tolerated),
        KT_ENTRY(a_third_blank_line_before_a_request_line_gets_400_and_close),
        KT_ENTRY(a_head_dribbled_line_by_line_gets_408_and_is_closed_before_the_dribble_ends),
        KT_ENTRY(blank_lines_sent_slowly_get_400_at_the_third_and_the_connection_is_closed),
        KT_ENTRY(bare_lfs_after_a_served_request_get_the_connection_closed_and_nothing_more_served),
        KT_ENTRY(an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout_without_bytes),
        KT_ENTRY(a_body_that_stops_coming_gets_408_and_close),
        KT_ENTRY(a_connection_that_sends_nothing_is_closed_by_the_header_timeout))
