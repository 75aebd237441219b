/* kt_http.h - a blocking HTTP/1.1 test client for the server tests.
 *
 * Not a test file itself. The client runs on libuv's thread pool through
 * keel_blocking, so the test process waits while the server's schedulers
 * keep serving. It sends raw bytes (so tests can send malformed, pipelined
 * or oversized requests) and reads responses back, splitting them by
 * Content-Length.
 */
#ifndef KT_HTTP_H
#define KT_HTTP_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "keel/http.h"
#include "rt/kt_rt.h"

typedef struct kt_resp {
  int status;
  char head[8192];
  char body[65536];
  size_t body_len;
} kt_resp;

typedef struct kt_conn {
  int fd;
  char buf[1 << 18];
  size_t len;
} kt_conn;

static inline int kt_connect(int port, kt_conn *c) {
  c->len = 0;
  c->fd = socket(AF_INET, SOCK_STREAM, 0);
  if (c->fd < 0) return -1;
  struct timeval tv = {.tv_sec = 20};
  setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(c->fd, (struct sockaddr *)&a, sizeof a) != 0) {
    close(c->fd);
    c->fd = -1;
    return -1;
  }
  return 0;
}

static inline int kt_send_all(kt_conn *c, const char *p, size_t n) {
  while (n) {
    ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
    if (w <= 0) return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* The value of header `name` in head (case-insensitive), copied to out. */
static inline const char *kt_hdr(const kt_resp *r, const char *name, char *out, size_t cap) {
  size_t nl = strlen(name);
  for (const char *p = strstr(r->head, "\r\n"); p && p[2]; p = strstr(p + 2, "\r\n")) {
    const char *line = p + 2;
    if (strncasecmp(line, name, nl) == 0 && line[nl] == ':') {
      const char *v = line + nl + 1;
      while (*v == ' ')
        v++;
      size_t len = strcspn(v, "\r");
      if (len >= cap) len = cap - 1;
      memcpy(out, v, len);
      out[len] = 0;
      return out;
    }
  }
  return NULL;
}

/* The error envelope of r: its status, its code, a message, a traceId that
 * is the X-Request-Id header, a UTC timestamp with milliseconds. */
static inline void kt_check_envelope(const kt_resp *r, int status, const char *code) {
  CHECK_EQ(r->status, status);
  json_error_t e;
  json_t *j = json_loads(r->body, 0, &e);
  CHECK(j != NULL);
  CHECK(json_is_false(json_object_get(j, "success")));
  json_t *err = json_object_get(j, "error");
  CHECK_STR(json_string_value(json_object_get(err, "code")), code);
  CHECK(json_string_value(json_object_get(err, "message")) != NULL);
  CHECK(json_string_length(json_object_get(err, "traceId")) > 0);
  const char *ts = json_string_value(json_object_get(err, "timestamp"));
  CHECK(ts && strlen(ts) == 24 && ts[23] == 'Z'); /* 2026-11-22T03:00:00.000Z */
  char rid[160];
  CHECK(kt_hdr(r, "X-Request-Id", rid, sizeof rid) != NULL);
  CHECK_STR(json_string_value(json_object_get(err, "traceId")), rid);
  json_decref(j);
}

/* Reads one response; -1 on EOF or timeout before a whole one. HEAD
 * responses: pass head_only. */
static inline int kt_read_resp(kt_conn *c, kt_resp *r, bool head_only) {
  memset(r, 0, sizeof *r);
  for (;;) {
    char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
    if (end) {
      size_t hl = (size_t)(end - c->buf) + 4;
      if (hl >= sizeof r->head) return -1;
      memcpy(r->head, c->buf, hl);
      r->head[hl] = 0;
      sscanf(r->head, "HTTP/1.%*d %d", &r->status);
      char cl[32];
      size_t blen = 0;
      if (!head_only && kt_hdr(r, "Content-Length", cl, sizeof cl)) blen = strtoul(cl, NULL, 10);
      if (r->status == 100) { /* skip interim responses */
        memmove(c->buf, c->buf + hl, c->len - hl);
        c->len -= hl;
        continue;
      }
      if (c->len >= hl + blen) {
        if (blen >= sizeof r->body) return -1;
        memcpy(r->body, c->buf + hl, blen);
        r->body[blen] = 0;
        r->body_len = blen;
        memmove(c->buf, c->buf + hl + blen, c->len - hl - blen);
        c->len -= hl + blen;
        return 0;
      }
    }
    if (c->len == sizeof c->buf) return -1;
    ssize_t n = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
    if (n <= 0) return -1;
    c->len += (size_t)n;
  }
}

/* True when the server closed the connection (EOF or reset) within the
 * receive timeout, with nothing more to read. */
static inline bool kt_closed(kt_conn *c) {
  char b[256];
  for (;;) {
    ssize_t n = recv(c->fd, b, sizeof b, 0);
    if (n == 0) return true;
    if (n < 0) return errno == ECONNRESET;
  }
}

static inline void kt_close(kt_conn *c) {
  if (c->fd >= 0) close(c->fd);
  c->fd = -1;
}

/* ---- one exchange on the thread pool ---------------------------------------- */

typedef struct kt_job {
  int port;
  const char *req;
  size_t req_len;
  int nresp;
  bool head_only;
  kt_resp *resp; /* nresp of them */
  int got;
  bool closed_after; /* the server closed the connection after the responses */
  bool half_close;   /* shut the sending side down after the request */
} kt_job;

static inline void kt_job_run(void *arg) {
  kt_job *j = arg;
  static __thread kt_conn c;
  j->got = 0;
  if (kt_connect(j->port, &c) != 0) return;
  if (kt_send_all(&c, j->req, j->req_len ? j->req_len : strlen(j->req)) == 0) {
    if (j->half_close) shutdown(c.fd, SHUT_WR);
  }
  if (c.fd >= 0)
    while (j->got < j->nresp && kt_read_resp(&c, &j->resp[j->got], j->head_only) == 0)
      j->got++;
  struct timeval tv = {.tv_sec = 0, .tv_usec = 300000};
  setsockopt(c.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  j->closed_after = kt_closed(&c);
  kt_close(&c);
}

/* Sends req on a new connection and reads nresp responses into resp; returns
 * how many came. */
static inline int kt_exchange(int port, const char *req, kt_resp *resp, int nresp) {
  kt_job j = {.port = port, .req = req, .nresp = nresp, .resp = resp};
  CHECK_OK(keel_blocking(kt_job_run, &j));
  return j.got;
}

/* An admin port (keel_admin_start) on loopback, without the dashboard
 * page: where the admin API and the registered panels show. */
static inline keel_http_server *kt_admin_port(void) {
  keel_admin_opts ao;
  keel_admin_opts_init(&ao);
  ao.host = "127.0.0.1";
  ao.no_dashboard = true;
  keel_http_server *s = NULL;
  CHECK_OK(keel_admin_start(&ao, &s));
  return s;
}

/* One request without a body on a new connection (auth: the Authorization
 * header's value, or NULL); the response's body parsed as JSON into *body
 * (a new reference, or NULL when it is not JSON) if body is not NULL.
 * Returns the status. */
static inline int kt_request_json(int port, const char *method, const char *path, const char *auth,
                                  json_t **body) {
  char req[1024];
  snprintf(req, sizeof req,
           "%s %s HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n%s%s%sConnection: close\r\n\r\n",
           method, path, auth ? "Authorization: " : "", auth ? auth : "", auth ? "\r\n" : "");
  kt_resp *r = calloc(1, sizeof *r);
  CHECK(r != NULL);
  CHECK_EQ(kt_exchange(port, req, r, 1), 1);
  int status = r->status;
  if (body) *body = json_loadb(r->body, r->body_len, 0, NULL);
  free(r);
  return status;
}

#endif
