/* server.c - the HTTP/1.1 server: listeners, connections, the request
 * lifecycle, draining.
 *
 * Threads. A server has one listener per scheduler. keel_http_start binds
 * the sockets (SO_REUSEPORT, so a second instance can bind the same port
 * during a rolling restart, or sockets passed by systemd) and spawns one
 * acceptor process per scheduler, pinned there: it puts a dup of its socket
 * on its scheduler's libuv loop and then only waits for control messages
 * (drain, stop). Everything about a connection happens on the loop of the
 * scheduler that accepted it: libuv callbacks read and parse (parse.c,
 * llhttp in strict mode, docs/decisions/0007), and each request that reaches
 * a route is handled by a new process pinned to the same scheduler. So a
 * connection, its requests and their handlers are only ever touched by one
 * thread, and nothing here locks; the counters shared with other threads
 * are atomics.
 *
 * A request's life. Bytes are parsed where they were read (the listener's
 * read buffer); the parser stops after each whole request. On the loop:
 * request id, trace context, client address, CORS (a preflight is answered
 * here), the rate limit (429 here), the route (404/405 here). Then a
 * handler process runs the route's handler; an exit hook registered with its
 * spawn (keel_spawn_opts.on_exit) sends the response when the process ends,
 * however it ends: normally with the handler's response, by a crash with
 * 500. A per-connection request timer answers 503 and kills a handler that
 * runs past request_timeout_ms. After the response: the access log line,
 * the metrics, then the next pipelined request or reading again.
 *
 * Pipelining, bounded. One loop, conn_parse, parses and answers in turn:
 * answers made on the loop (errors, 404, 429, preflights) never call back
 * into the parser, so a burst costs neither stack nor copies. Bytes that
 * cannot be parsed yet (a handler has the request, the answers are backed
 * up, the connection used its turn) are kept in the connection's input
 * buffer, parsed in place later. A connection answers at most RUN_BUDGET
 * requests per turn and then queues behind the others (the listener's
 * idle handle); it stops reading with PIPELINE_MAX bytes unparsed, and stops
 * parsing while WRITE_HIGH bytes of answers are unsent (the client meets TCP
 * back-pressure), for at most send_timeout_ms.
 *
 * Timeouts per connection (a second uv timer): the head of a request must be
 * complete within header_timeout_ms of its first byte (blank lines count) or
 * of the accept, and nothing but a complete head stops that clock (408); a
 * body must keep coming (body_timeout_ms between reads, 408); an idle
 * keep-alive connection is closed after keepalive_timeout_ms.
 *
 * Descriptors. A listener stops accepting for a back-off when an accepted
 * descriptor lands in the last fd_reserve under the soft limit, or on
 * EMFILE: see accept_pause.
 *
 * Closing. A connection we close after an error or on drain is shut down for
 * writing first and then read and discarded for up to a second (a lingering
 * close), so the client reads our answer instead of a reset.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "http/http_internal.h"
#include "http/parse.h"
#include "keel/error.h"
#include "keel/io.h"
#include "keel/log.h"
#include "keel/message.h"
#include "keel/metrics.h"
#include "keel/process.h"
#include "keel/runtime.h"
#include "ops/json_write.h"

#define READ_BUF     65536
#define LINGER_MS    1000
#define TAG_CTL      0x4b485431u /* acceptor control messages */

/* Pipelining bounds (docs/http.md, "Limits"). A connection parses and
 * answers at most RUN_BUDGET requests per turn of the loop, then waits its
 * turn behind the other connections; it keeps at most PIPELINE_MAX bytes
 * read and not parsed, and stops reading past that; it stops parsing (and
 * so reading) while more than WRITE_HIGH bytes of answers wait for the
 * client to read them, and goes on once they are under WRITE_LOW. So a
 * connection costs at most about PIPELINE_MAX + WRITE_HIGH + one answer,
 * however many requests it sends. */
#define RUN_BUDGET   32
#define PIPELINE_MAX (64 * 1024)
#define WRITE_HIGH   (256 * 1024)
#define WRITE_LOW    (64 * 1024)

/* Out of descriptors: stop accepting for ACCEPT_BACKOFF_MS, close up to
 * IDLE_SHED idle keep-alive connections, log once per ACCEPT_LOG_MS. */
#define ACCEPT_BACKOFF_MS 100
#define IDLE_SHED         16
#define SILENT_SHED_MS    1000 /* a connection silent this long since its accept may be shed */
#define ACCEPT_LOG_MS     10000
#define RESUME_ROOM       8 /* free descriptors under the reserve before accepting again */

enum { CTL_DRAIN = 1, CTL_STOP = 2, CTL_CLOSE = 3 };
#define DRAIN_GRACE_MS 250 /* an idle connection may still bring one request when a drain begins */
enum { T_NONE = 0, T_HEAD, T_BODY, T_IDLE, T_SEND, T_LINGER };

struct keel__listener {
  keel_http_server *srv;
  int sched;
  int fd; /* bound and listening; the loop's handle holds a dup of it */
  uv_loop_t *loop;
  uv_tcp_t tcp;
  bool tcp_open;  /* tcp is initialised and not closing */
  bool paused;    /* out of descriptors: not accepting until the back-off ends */
  bool stopping;  /* CTL_STOP: the handles below are closing */
  int handles;    /* tcp, backoff and resume while open (the loop's thread only) */
  atomic_bool closed; /* stop asked and every handle's close callback ran */
  uv_timer_t backoff; /* the accept pause */
  uv_idle_t resume;   /* runs connections whose pipeline went over its budget */
  keel__conn *runq, *runq_tail; /* those connections, in turn */
  keel_pid_t acceptor;
  keel__conn *conns;     /* doubly linked list of open connections */
  keel_http_req *reqs;   /* requests whose handler process has not ended */
  char rbuf[READ_BUF];
  char date[40]; /* "Date: ...\r\n", refreshed once a second */
  uint64_t date_s;
};

struct keel__conn {
  uv_tcp_t tcp; /* first: the handle's address is the connection's */
  keel__listener *l;
  keel__conn *prev, *next;
  keel__conn *rnext, *rprev; /* in l->runq while queued */
  uv_timer_t timer;  /* head, body, keep-alive, send and linger timeouts */
  uv_timer_t rtimer; /* the request timeout of the request being handled */
  int tmode;
  uint64_t born_ns; /* accepted at (CLOCK_MONOTONIC) */
  bool served;      /* it sent at least one request */
  char peer[64]; /* the client's address, read once at accept */
  keel__reqparse rp; /* the request being parsed */
  keel_http_req *rq; /* taken from the parser: being handled or answered */
  bool busy;      /* a handler process has the request */
  bool queued;    /* in l->runq */
  bool closing, lingering;
  bool done;    /* an answer said Connection: close: close once it is out */
  bool blocked; /* answers backed up: parsing waits for the client to read */
  bool reading; /* uv_read_start is in effect */
  bool eof;     /* the client half-closed: answer what came, then close */
  char *in;     /* bytes read but not parsed yet: in[in_off, in_len) */
  size_t in_off, in_len, in_cap;
};

struct keel_http_server {
  keel_http_opts o;
  char *host, *name, *csp, *cors_origins, *rate_skip;
  keel_http_router *router;
  int nl;
  keel__listener *ls;
  int port;
  int fd_high; /* an accepted descriptor at or above this pauses accepting; 0: no limit */
  _Atomic size_t in_flight, conns;
  atomic_bool draining, stopping, drain_begun;
  keel__ratelimit *rl;
  keel__cors *cors;
  char *sec_headers; /* the security headers, preformatted "Name: value\r\n..." */
  size_t sec_len;
  keel__access acc; /* the access log line and the request metrics */
  keel_metric_family *m_in_flight, *m_paused;
  keel_gauge *in_flight_g;
  keel_counter *paused_c;       /* accept pauses for want of descriptors */
  _Atomic int64_t pause_log_ms; /* when the last pause was logged */
  _Atomic uint64_t pause_quiet; /* pauses since then, not logged */
};

/* ---- options ------------------------------------------------------------------ */

void keel_http_opts_init(keel_http_opts *o) {
  memset(o, 0, sizeof *o);
}

#define OR_DEFAULT(field, dflt)        \
  do {                                 \
    if (o->field == 0) o->field = (dflt); \
  } while (0)

/* Zeros become the defaults http.h states; KEEL_INFINITY ("none") becomes
 * the internal "not armed" (0 for the request timeout and the slow-request
 * warning, which test > 0), < 0 reserve becomes none. */
static int resolve_opts(keel_http_opts *o) {
  if (o->port < 0 || o->port > 65535) return KEEL_EINVAL;
  OR_DEFAULT(max_header_bytes, 16384);
  OR_DEFAULT(max_body_bytes, (size_t)1 << 20);
  OR_DEFAULT(header_timeout_ms, 10000);
  OR_DEFAULT(body_timeout_ms, 10000);
  OR_DEFAULT(keepalive_timeout_ms, 5000);
  OR_DEFAULT(request_timeout_ms, 30000);
  OR_DEFAULT(send_timeout_ms, 30000);
  OR_DEFAULT(fd_reserve, 64);
  OR_DEFAULT(slow_request_ms, 1000);
  OR_DEFAULT(rate_window_ms, 60000);
  OR_DEFAULT(rate_max_clients, 100000);
  OR_DEFAULT(cors_max_age_s, 600);
  if (!o->rate_limit_skip) o->rate_limit_skip = "/health,/metrics,/internal/";
  if (o->request_timeout_ms == KEEL_INFINITY) o->request_timeout_ms = 0;
  if (o->slow_request_ms == KEEL_INFINITY) o->slow_request_ms = 0;
  if (o->fd_reserve < 0) o->fd_reserve = 0;
  if (o->header_timeout_ms < 0 || o->body_timeout_ms < 0 || o->keepalive_timeout_ms < 0 ||
      o->send_timeout_ms < 0 || o->request_timeout_ms < 0 || o->slow_request_ms < 0 ||
      o->rate_limit < 0 || o->rate_window_ms < 0)
    return KEEL_EINVAL;
  return 0;
}
#undef OR_DEFAULT

/* ---- small helpers ------------------------------------------------------------- */

static const char *date_header(keel__listener *l) {
  time_t t = time(NULL);
  if ((uint64_t)t != l->date_s) {
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(l->date, sizeof l->date, "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
    l->date_s = (uint64_t)t;
  }
  return l->date;
}

static bool skip_rate_limit(const keel_http_server *s, const char *path) {
  const char *p = s->rate_skip;
  while (p && *p) {
    const char *comma = strchr(p, ',');
    size_t n = comma ? (size_t)(comma - p) : strlen(p);
    while (n && *p == ' ') p++, n--;
    if (n && strncmp(path, p, n) == 0) return true;
    p = comma ? comma + 1 : NULL;
  }
  return false;
}

/* ---- connections: timers and closing ------------------------------------------ */

static void conn_closed(uv_handle_t *h) {
  keel__conn *c = (keel__conn *)h;
  keel__reqparse_free(&c->rp);
  free(c->in);
  free(c);
}

static void rtimer_closed(uv_handle_t *h) {
  keel__conn *c = (keel__conn *)((char *)h - offsetof(keel__conn, rtimer));
  uv_close((uv_handle_t *)&c->tcp, conn_closed);
}

static void timer_closed(uv_handle_t *h) {
  keel__conn *c = h->data;
  uv_close((uv_handle_t *)&c->rtimer, rtimer_closed);
}

static void release_req(keel_http_req *rq);

static void runq_remove(keel__conn *c) {
  if (!c->queued) return;
  c->queued = false;
  if (c->rprev) c->rprev->rnext = c->rnext;
  else c->l->runq = c->rnext;
  if (c->rnext) c->rnext->rprev = c->rprev;
  else c->l->runq_tail = c->rprev;
  c->rnext = c->rprev = NULL;
}

static void conn_close(keel__conn *c) {
  if (c->closing) return;
  c->closing = true;
  keel__listener *l = c->l;
  if (c->prev) c->prev->next = c->next;
  else l->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  runq_remove(c);
  atomic_fetch_sub_explicit(&l->srv->conns, 1, memory_order_relaxed);
  if (c->rq) {
    keel_http_req *rq = c->rq;
    c->rq = NULL;
    rq->conn = NULL; /* a handler still running finds no connection */
    release_req(rq); /* the connection's reference; the handler holds the other */
  }
  uv_read_stop((uv_stream_t *)&c->tcp);
  c->reading = false;
  uv_timer_stop(&c->timer);
  uv_timer_stop(&c->rtimer); /* a handler still running is not timed out any more */
  uv_close((uv_handle_t *)&c->timer, timer_closed);
}

static void on_timer(uv_timer_t *t);

static void timer_set(keel__conn *c, int mode, int64_t ms) {
  c->tmode = mode;
  if (mode == T_NONE || ms <= 0) uv_timer_stop(&c->timer);
  else uv_timer_start(&c->timer, on_timer, (uint64_t)ms, 0);
}

static void on_linger_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf) {
  (void)buf;
  if (n < 0) conn_close((keel__conn *)st);
}

static void linger_alloc(uv_handle_t *h, size_t sz, uv_buf_t *buf) {
  (void)sz;
  keel__conn *c = (keel__conn *)h;
  *buf = uv_buf_init(c->l->rbuf, sizeof c->l->rbuf);
}

static void on_shutdown(uv_shutdown_t *req, int status) {
  keel__conn *c = req->data;
  free(req);
  if (c->closing) return;
  if (status < 0 || uv_read_start((uv_stream_t *)&c->tcp, linger_alloc, on_linger_read) != 0) {
    conn_close(c);
    return;
  }
  timer_set(c, T_LINGER, LINGER_MS);
}

/* Half-closes, then reads and discards until the peer closes or a second
 * passes, so that unread input does not turn our answer into a reset. */
static void conn_linger_close(keel__conn *c) {
  if (c->closing || c->lingering) return;
  c->lingering = true;
  runq_remove(c);
  uv_read_stop((uv_stream_t *)&c->tcp);
  c->reading = false;
  uv_shutdown_t *req = malloc(sizeof *req);
  if (!req) {
    conn_close(c);
    return;
  }
  req->data = c;
  if (uv_shutdown(req, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
    free(req);
    conn_close(c);
  }
}

static size_t write_queued(keel__conn *c) {
  return uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
}

static void conn_fail(keel__conn *c, keel_http_req *rq, int status, const char *reason);
static void conn_settle(keel__conn *c, int budget);

static void on_timer(uv_timer_t *t) {
  keel__conn *c = t->data;
  switch (c->tmode) {
  case T_HEAD: /* a head that did not come in time (slowloris) */
  case T_BODY: /* a body that stopped coming */
    if (keel__reqparse_busy(&c->rp) && !c->busy && !c->rq) { /* something came: say why */
      conn_fail(c, keel__reqparse_take(&c->rp), 408,
                c->tmode == T_HEAD ? "Request head not received in time"
                                   : "Request body not received in time");
      conn_settle(c, RUN_BUDGET); /* closes once the answer is out */
      break;
    }
    conn_close(c);
    break;
  case T_IDLE:   /* an idle keep-alive connection */
  case T_SEND:   /* a client that does not read its answers */
  case T_LINGER: conn_close(c); break;
  default: break;
  }
}

/* ---- writing ------------------------------------------------------------------------ */

typedef struct wreq {
  uv_write_t w;
  char *buf;
  keel__conn *c;
} wreq;

static void conn_resume(keel__conn *c);

static void on_write(uv_write_t *w, int status) {
  wreq *r = (wreq *)w;
  keel__conn *c = r->c;
  size_t queued = w->handle->write_queue_size;
  free(r->buf);
  free(r);
  if (c->closing) return;
  if (status < 0) {
    conn_close(c);
  } else if (c->done) {
    if (!c->busy && queued == 0) conn_linger_close(c);
  } else if (c->blocked) { /* the client reads again */
    if (queued <= WRITE_LOW) {
      c->blocked = false;
      timer_set(c, T_NONE, 0);
      conn_resume(c);
    } else {
      timer_set(c, T_SEND, c->l->srv->o.send_timeout_ms);
    }
  }
}

/* Writes buf (taking it); false when the connection failed. */
static bool conn_write(keel__conn *c, char *buf, size_t len) {
  if (c->closing || c->lingering) {
    free(buf);
    return false;
  }
  uv_buf_t b = uv_buf_init(buf, (unsigned)len);
  int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1); /* EAGAIN while others wait */
  if (n == (int)len) {
    free(buf);
    return true;
  }
  if (n < 0 && n != UV_EAGAIN) {
    free(buf);
    conn_close(c);
    return false;
  }
  size_t off = n > 0 ? (size_t)n : 0;
  wreq *r = malloc(sizeof *r);
  if (!r) {
    free(buf);
    conn_close(c);
    return false;
  }
  r->buf = buf;
  r->c = c;
  b = uv_buf_init(buf + off, (unsigned)(len - off));
  if (uv_write(&r->w, (uv_stream_t *)&c->tcp, &b, 1, on_write) != 0) {
    free(buf);
    free(r);
    conn_close(c);
    return false;
  }
  return true;
}

/* ---- responses ------------------------------------------------------------------------ */

/* A response header line (name and value already checked for CR/LF). */
static void sb_hdr(keel__jw *b, const char *name, const char *value) {
  keel__jw_put(b, name, strlen(name));
  KEEL__JW_LIT(b, ": ");
  keel__jw_put(b, value, strlen(value));
  KEEL__JW_LIT(b, "\r\n");
}

/* Serialises rq's response and writes it on its connection, then logs and
 * counts it. The request stays the connection's (c->rq) until
 * conn_request_done. */
static void send_response(keel_http_req *rq) {
  keel_http_server *s = rq->srv;
  keel__conn *c = rq->conn;
  /* a failed write closes the connection, which drops its reference to rq:
   * hold one of our own until the access log is written (found by the
   * fuzzer: a use after free when the client had gone) */
  rq->refs++;
  rq->responded = true;
  keel_http_res *res = &rq->res;
  if (!res->status) keel_http_fail(res, KEEL_HTTP_INTERNAL, "handler returned no response", NULL);
  if (res->status >= 500 && res->err_log) keel__access_failure(rq);
  /* a request the parser refused or that timed out has keepalive false
   * (conn_fail); a 400 a handler returns leaves the connection in step */
  bool keep = rq->keepalive && !atomic_load_explicit(&s->draining, memory_order_relaxed);
  bool head = strcmp(rq->method, "HEAD") == 0;
  size_t bytes_out = 0;
  if (c && !c->closing) {
    keel__jw b = {0};
    keel__jw_room(&b, 2048); /* the usual response in one allocation */
    char line[64], num[32];
    snprintf(line, sizeof line, "HTTP/1.1 %d %s\r\n", res->status,
             keel__status_reason(res->status));
    keel__jw_put(&b, line, strlen(line));
    const char *date = date_header(c->l);
    keel__jw_put(&b, date, strlen(date));
    if (res->len || res->content_type)
      sb_hdr(&b, "Content-Type", res->content_type ? res->content_type : "application/octet-stream");
    snprintf(num, sizeof num, "%zu", res->len);
    if (res->status != 204 && res->status >= 200) sb_hdr(&b, "Content-Length", num);
    sb_hdr(&b, "Connection", keep ? "keep-alive" : "close");
    if (rq->reqid[0]) sb_hdr(&b, "X-Request-Id", rq->reqid);
    if (rq->traceparent[0]) sb_hdr(&b, "traceparent", rq->traceparent);
    if (s->sec_headers) keel__jw_put(&b, s->sec_headers, s->sec_len);
    for (size_t i = 0; i < rq->mw.n; i++)
      sb_hdr(&b, rq->mw.v[i].name, rq->mw.v[i].value);
    for (size_t i = 0; i < res->headers.n; i++)
      sb_hdr(&b, res->headers.v[i].name, res->headers.v[i].value);
    keel__jw_put(&b, "\r\n", 2);
    if (!head && res->status != 204) keel__jw_put(&b, res->body, res->len);
    if (!b.oom) {
      bytes_out = b.len;
      conn_write(c, b.p, b.len);
    } else {
      free(b.p);
      conn_close(c);
    }
  }
  keel__access_record(&s->acc, rq, bytes_out);
  if (!keep && c) c->done = true;
  release_req(rq);
}

/* The connection is done with its request (answered, or gone with it). */
static void conn_request_done(keel__conn *c) {
  keel_http_req *rq = c->rq;
  c->rq = NULL;
  if (rq) release_req(rq);
}

/* A response made on the loop, without a handler (errors, preflights): sent
 * and forgotten; the parse loop that dispatched it goes on (no recursion). */
static void respond_now(keel__conn *c, keel_http_req *rq) {
  send_response(rq);
  conn_request_done(c);
}

static void fail_now(keel__conn *c, keel_http_req *rq, keel_http_error_kind kind,
                     const char *msg) {
  keel_http_fail(&rq->res, kind, msg, NULL);
  respond_now(c, rq);
}

/* ---- handler processes ----------------------------------------------------------------- */

static void release_req(keel_http_req *rq) {
  if (--rq->refs == 0) keel__req_free(rq);
}

static void handler_main(void *arg) {
  keel_http_req *rq = arg;
  keel_log_context_set(KEEL_STR("requestId", rq->reqid));
  const keel__route *rt = rq->match.route;
  int rc = rt->fn(rq, &rq->res, rt->ud);
  if (rc < 0 && !rq->res.status) {
    char msg[96];
    snprintf(msg, sizeof msg, "handler failed: %s", keel_strerror(rc));
    keel_http_fail(&rq->res, KEEL_HTTP_INTERNAL, msg, NULL);
  }
  rq->pid = 0; /* finished: the exit hook sends the response */
}

/* Runs when the handler process ends, on its scheduler (it is pinned), or on
 * the thread stopping the runtime for a process that never ran. */
static void handler_exited(void *arg) {
  keel_http_req *rq = arg;
  keel_http_server *s = rq->srv;
  keel__listener *l = rq->l;
  if (rq->lprev) rq->lprev->lnext = rq->lnext;
  else l->reqs = rq->lnext;
  if (rq->lnext) rq->lnext->lprev = rq->lprev;
  atomic_fetch_sub_explicit(&s->in_flight, 1, memory_order_relaxed);
  if (s->in_flight_g) keel_gauge_dec(s->in_flight_g);
  keel__conn *c = rq->conn;
  if (keel_sched_current() < 0) { /* the runtime is stopping: no loop to answer on */
    if (c) { /* nothing will close the connection now: drop its reference too */
      c->busy = false;
      c->rq = NULL;
      rq->conn = NULL;
      release_req(rq);
    }
    release_req(rq);
    return;
  }
  if (c) uv_timer_stop(&c->rtimer);
  if (!rq->responded) {
    if (rq->pid) { /* did not finish: crashed or was killed */
      keel__res_clear(&rq->res);
      keel_http_fail(&rq->res, KEEL_HTTP_INTERNAL, "handler process crashed", NULL);
    }
    if (c) {
      send_response(rq);
    } else {
      rq->responded = true;
      rq->res.status = rq->res.status ? rq->res.status : 499; /* client closed first */
      keel__access_record(&s->acc, rq, 0);
    }
  }
  if (c) {
    c->busy = false;
    conn_request_done(c);
    conn_resume(c); /* the next pipelined request, or reading again */
  }
  release_req(rq);
}

static void on_request_timeout(uv_timer_t *t) {
  keel_http_req *rq = t->data;
  if (rq->responded) return;
  rq->timed_out = true;
  keel__res_clear(&rq->res);
  keel_http_fail(&rq->res, KEEL_HTTP_UNAVAILABLE, "Request timed out", NULL);
  if (rq->conn) {
    send_response(rq);
  } else {
    rq->responded = true;
    keel__access_record(&rq->srv->acc, rq, 0);
  }
  if (rq->pid) keel_exit_signal(rq->pid, KEEL_REASON_KILL, NULL);
}

static void dispatch_handler(keel__conn *c, keel_http_req *rq) {
  keel_http_server *s = c->l->srv;
  keel_spawn_opts o;
  keel_spawn_opts_init(&o);
  o.scheduler = KEEL_ON_SCHEDULER(c->l->sched);
  o.pin = true;
  o.stack_size = s->o.handler_stack_size;
  o.name = "http_handler";
  o.on_exit = handler_exited; /* registered with the spawn: it runs however the process ends */
  o.on_exit_arg = rq;
  keel_pid_t pid;
  c->busy = true;
  rq->refs = 2;
  if (keel_spawn(handler_main, rq, &o, &pid) != 0) {
    rq->refs = 1;
    c->busy = false;
    fail_now(c, rq, KEEL_HTTP_UNAVAILABLE, "Server is overloaded");
    return;
  }
  rq->pid = pid;
  rq->l = c->l;
  rq->lnext = c->l->reqs;
  if (rq->lnext) rq->lnext->lprev = rq;
  c->l->reqs = rq;
  atomic_fetch_add_explicit(&s->in_flight, 1, memory_order_relaxed);
  if (s->in_flight_g) keel_gauge_inc(s->in_flight_g);
  if (s->o.request_timeout_ms > 0) {
    c->rtimer.data = rq;
    uv_timer_start(&c->rtimer, on_request_timeout, (uint64_t)s->o.request_timeout_ms, 0);
  }
}

/* ---- dispatch: the middleware on the loop ------------------------------------------------ */

static void set_client_ip(keel__conn *c, keel_http_req *rq) {
  keel_http_server *s = c->l->srv;
  const char *xff = s->o.trust_proxy ? keel_http_header(rq, "x-forwarded-for") : NULL;
  if (xff && *xff) {
    size_t n = strcspn(xff, ",");
    while (n && (xff[n - 1] == ' ')) n--;
    while (*xff == ' ' && n) xff++, n--;
    if (n && n < sizeof rq->client_ip) {
      memcpy(rq->client_ip, xff, n);
      rq->client_ip[n] = 0;
      return;
    }
  }
  memcpy(rq->client_ip, c->peer, sizeof rq->client_ip);
}

/* Takes a whole request from the parser: answers it here, or hands it to a
 * handler process (c->busy until it ends). */
static void dispatch(keel__conn *c, keel_http_req *rq) {
  keel_http_server *s = c->l->srv;
  rq->srv = s;
  rq->conn = c;
  c->rq = rq;
  c->served = true;
  timer_set(c, T_NONE, 0);

  /* request id and trace context first: every answer carries them */
  const char *given = keel_http_header(rq, "x-request-id");
  if (!given) given = keel_http_header(rq, "x-correlation-id");
  if (!s->o.no_request_id && given && keel__reqid_valid(given))
    snprintf(rq->reqid, sizeof rq->reqid, "%s", given);
  else
    keel__reqid_make(rq->reqid);
  if (!s->o.no_request_id) {
    keel__traceparent tp;
    const char *tph = keel_http_header(rq, "traceparent");
    char span[17];
    keel__traceparent_next(tph && keel__traceparent_parse(tph, &tp) ? &tp : NULL, rq->traceparent,
                           span);
  }
  set_client_ip(c, rq);

  /* the target: path and query; routing matches the raw path (segments
   * decoded one by one), rq->path is the whole path decoded */
  const char *t = rq->target ? rq->target : "/";
  const char *qm = strchr(t, '?');
  size_t plen = qm ? (size_t)(qm - t) : strlen(t);
  rq->path = keel__pct_decode(t, plen, false);
  rq->query = strdup(qm ? qm + 1 : "");
  if (!rq->path || !rq->query || rq->path[0] != '/' || t[0] != '/') {
    fail_now(c, rq, KEEL_HTTP_BAD_REQUEST, "Malformed request target");
    return;
  }

  /* CORS: a preflight is answered here */
  if (s->cors) {
    keel__cors_verdict v = keel__cors_decide(
        s->cors, rq->method, keel_http_header(rq, "origin"),
        keel_http_header(rq, "access-control-request-method"),
        keel_http_header(rq, "access-control-request-headers"), &rq->mw);
    if (v == KEEL__CORS_PREFLIGHT_OK) {
      rq->res.status = 204;
      respond_now(c, rq);
      return;
    }
    if (v == KEEL__CORS_PREFLIGHT_REFUSED) {
      fail_now(c, rq, KEEL_HTTP_FORBIDDEN, "CORS preflight refused");
      return;
    }
  }

  /* the route first (a 429 or 405 on a routed path is labelled with its
   * route), answered after the rate limit */
  int m = keel__router_match(s->router, rq->method, t, plen, &rq->match);

  /* rate limit */
  if (s->rl && !skip_rate_limit(s, rq->path)) {
    keel__rl_result r;
    keel__ratelimit_hit(s->rl, rq->client_ip, keel__http_now_ns() / 1000000, &r);
    char v[32];
    snprintf(v, sizeof v, "%d", r.limit);
    keel__hdrs_add(&rq->mw, "X-RateLimit-Limit", v);
    snprintf(v, sizeof v, "%d", r.remaining);
    keel__hdrs_add(&rq->mw, "X-RateLimit-Remaining", v);
    snprintf(v, sizeof v, "%lld", (long long)r.reset_s);
    keel__hdrs_add(&rq->mw, "X-RateLimit-Reset", v);
    if (!r.allowed) {
      snprintf(v, sizeof v, "%lld", (long long)r.retry_after_s);
      keel__hdrs_add(&rq->mw, "Retry-After", v);
      keel_http_fail(&rq->res, KEEL_HTTP_RATE_LIMITED, "Too many requests, try again later",
                     NULL);
      respond_now(c, rq);
      return;
    }
  }

  if (m == KEEL_ENOENT) {
    fail_now(c, rq, KEEL_HTTP_NOT_FOUND, "Route not found");
    return;
  }
  if (m == 1) {
    keel__hdrs_add(&rq->mw, "Allow", rq->match.allow);
    fail_now(c, rq, KEEL_HTTP_METHOD_NOT_ALLOWED, "Method not allowed");
    return;
  }
  if (m != 0) {
    fail_now(c, rq, KEEL_HTTP_BAD_REQUEST, "Malformed path");
    return;
  }
  dispatch_handler(c, rq);
}

/* ---- parsing and reading ------------------------------------------------------------- */

/* Answers a request the parser refused, or one whose head or body did not
 * come in time, and closes after the answer. rq is the partial request (or
 * NULL when none had begun). */
static void conn_fail(keel__conn *c, keel_http_req *rq, int status, const char *reason) {
  if (!rq) {
    rq = calloc(1, sizeof *rq);
    if (!rq) {
      conn_close(c);
      return;
    }
    rq->refs = 1;
    rq->start_ns = keel__http_now_ns();
  }
  rq->srv = c->l->srv;
  rq->conn = c;
  c->rq = rq;
  if (!rq->method[0] && rq->target)
    snprintf(rq->method, sizeof rq->method, "%s", llhttp_method_name(c->rp.p.method));
  if (!rq->reqid[0]) keel__reqid_make(rq->reqid);
  set_client_ip(c, rq);
  rq->keepalive = false; /* send_response closes after the answer */
  timer_set(c, T_NONE, 0);
  keel_http_error_kind k = status == 413   ? KEEL_HTTP_TOO_LARGE
                           : status == 431 ? KEEL_HTTP_HEADERS_TOO_LARGE
                           : status == 408 ? KEEL_HTTP_REQUEST_TIMEOUT
                           : status >= 500 ? KEEL_HTTP_INTERNAL
                                           : KEEL_HTTP_BAD_REQUEST;
  keel_http_fail(&rq->res, k, reason ? reason : "Malformed request", NULL);
  respond_now(c, rq);
}

/* The parser's head callback: a body may follow. */
static void on_head(keel__reqparse *rp, void *ud) {
  keel__conn *c = ud;
  keel_http_server *s = c->l->srv;
  const char *expect = keel_http_header(rp->rq, "expect");
  if (expect && strcasecmp(expect, "100-continue") == 0 && rp->rq->http_minor >= 1) {
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    char *b = malloc(sizeof cont - 1);
    if (b) {
      memcpy(b, cont, sizeof cont - 1);
      conn_write(c, b, sizeof cont - 1);
    }
  }
  if ((rp->p.flags & F_CHUNKED) || rp->p.content_length > 0)
    timer_set(c, T_BODY, s->o.body_timeout_ms);
}

/* Parses data and answers each whole request, on the loop or by handing it
 * to a handler process. Stops when a handler has the request (one at a
 * time: answers go out in order), when an answer closes the connection,
 * when answers back up (WRITE_HIGH) and after *budget requests. Returns the
 * bytes used; the caller keeps the rest. */
static size_t conn_parse(keel__conn *c, const char *data, size_t n, int *budget) {
  size_t off = 0;
  while (off < n && !c->closing && !c->lingering && !c->busy && !c->done) {
    if (*budget <= 0 || write_queued(c) > WRITE_HIGH) break;
    /* the first byte of a request starts the header timeout; nothing after
     * it (blank lines, a head in pieces) starts it again */
    if (!keel__reqparse_busy(&c->rp) && c->tmode != T_HEAD)
      timer_set(c, T_HEAD, c->l->srv->o.header_timeout_ms);
    off += keel__reqparse_feed(&c->rp, data + off, n - off);
    if (c->rp.status) {
      int st = c->rp.status;
      conn_fail(c, keel__reqparse_take(&c->rp), st, c->rp.reason);
      break;
    }
    if (c->rp.complete) {
      (*budget)--;
      dispatch(c, keel__reqparse_take(&c->rp));
    }
  }
  return off;
}

/* Keeps n bytes read from the socket for later. False on ENOMEM (closed). */
static bool conn_keep(keel__conn *c, const char *data, size_t n) {
  if (c->in_off) { /* what was parsed goes first */
    memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
    c->in_len -= c->in_off;
    c->in_off = 0;
  }
  if (c->in_len + n > c->in_cap) {
    size_t cap = c->in_cap ? c->in_cap : 4096;
    while (cap < c->in_len + n)
      cap *= 2;
    char *p = realloc(c->in, cap);
    if (!p) {
      conn_close(c);
      return false;
    }
    c->in = p;
    c->in_cap = cap;
  }
  memcpy(c->in + c->in_len, data, n);
  c->in_len += n;
  return true;
}

static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf);

static void on_alloc(uv_handle_t *h, size_t sz, uv_buf_t *buf) {
  (void)sz;
  keel__conn *c = (keel__conn *)h;
  *buf = uv_buf_init(c->l->rbuf, sizeof c->l->rbuf);
}

/* Reads while there is room for what comes: not after the client's EOF or
 * a closing answer, not while PIPELINE_MAX bytes wait to be parsed, not
 * while answers are backed up. */
static void conn_update_reading(keel__conn *c) {
  bool want = !c->closing && !c->lingering && !c->eof && !c->done && !c->blocked &&
              c->in_len - c->in_off < PIPELINE_MAX;
  if (want && !c->reading) {
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) {
      conn_close(c);
      return;
    }
    c->reading = true;
  } else if (!want && c->reading) {
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = false;
  }
}

static void on_resume(uv_idle_t *h);

static void runq_add(keel__conn *c) {
  keel__listener *l = c->l;
  if (c->queued) return;
  c->queued = true;
  c->rnext = NULL;
  c->rprev = NULL;
  if (l->runq_tail) { /* at the tail: connections take turns */
    l->runq_tail->rnext = c;
    c->rprev = l->runq_tail;
  } else {
    l->runq = c;
    uv_idle_start(&l->resume, on_resume);
  }
  l->runq_tail = c;
}

/* After parsing: wait for the handler, for the client to read its answers,
 * for more bytes or for our turn; or close. */
static void conn_settle(keel__conn *c, int budget) {
  if (c->closing || c->lingering || c->busy) return; /* busy: the handler's end resumes it */
  keel_http_server *s = c->l->srv;
  if (c->done) { /* an answer said close: once it is out (else on_write does it) */
    if (write_queued(c) == 0) {
      conn_linger_close(c);
    } else {
      conn_update_reading(c);
      timer_set(c, T_SEND, s->o.send_timeout_ms);
    }
    return;
  }
  if (c->in_len > c->in_off) { /* parsing stopped early */
    if (write_queued(c) > WRITE_HIGH) {
      c->blocked = true;
      timer_set(c, T_SEND, s->o.send_timeout_ms);
    } else if (budget <= 0) {
      runq_add(c);
    }
    conn_update_reading(c);
    return;
  }
  if (c->eof) { /* the client said all it had to say */
    conn_linger_close(c);
    return;
  }
  conn_update_reading(c);
  if (!keel__reqparse_busy(&c->rp)) { /* between requests */
    bool draining = atomic_load_explicit(&s->draining, memory_order_relaxed);
    timer_set(c, T_IDLE, draining ? DRAIN_GRACE_MS : s->o.keepalive_timeout_ms);
  }
}

/* Goes on with a connection after a handler's answer, when its answers
 * drained, or on its turn: parses what is buffered, then settles. */
static void conn_resume(keel__conn *c) {
  if (c->closing || c->lingering || c->busy || c->blocked) return;
  int budget = RUN_BUDGET;
  if (c->in_len > c->in_off) {
    size_t used = conn_parse(c, c->in + c->in_off, c->in_len - c->in_off, &budget);
    if (c->closing) return;
    c->in_off += used;
    if (c->in_off == c->in_len) { /* all parsed: an idle connection keeps no buffer */
      free(c->in);
      c->in = NULL;
      c->in_off = c->in_len = c->in_cap = 0;
    }
  }
  conn_settle(c, budget);
}

/* The listener's idle handle: connections over their budget take turns. */
static void on_resume(uv_idle_t *h) {
  keel__listener *l = h->data;
  size_t n = 0;
  for (keel__conn *c = l->runq; c; c = c->rnext)
    n++;
  while (n-- && l->runq) { /* those queued now; a connection queued again waits */
    keel__conn *c = l->runq;
    runq_remove(c);
    conn_resume(c);
  }
  if (!l->runq) uv_idle_stop(h);
}

static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf) {
  keel__conn *c = (keel__conn *)st;
  if (n == 0) return;
  if (n < 0) {
    uv_read_stop(st);
    c->reading = false;
    if (n != UV_EOF) {
      conn_close(c);
      return;
    }
    c->eof = true; /* answer what came first */
    conn_settle(c, RUN_BUDGET);
    return;
  }
  if (c->done) return; /* closing after an answer: what comes is dropped */
  keel_http_server *s = c->l->srv;
  if (c->tmode == T_BODY) timer_set(c, T_BODY, s->o.body_timeout_ms); /* it keeps coming */
  if (c->in_len > c->in_off || c->busy || c->queued || c->blocked) {
    /* requests wait before these bytes: keep them (pipelining) */
    if (conn_keep(c, buf->base, (size_t)n)) conn_update_reading(c);
    return;
  }
  int budget = RUN_BUDGET;
  size_t used = conn_parse(c, buf->base, (size_t)n, &budget); /* in place */
  if (c->closing) return;
  if (used < (size_t)n && !c->done && !c->lingering && !conn_keep(c, buf->base + used, (size_t)n - used))
    return;
  conn_settle(c, budget);
}

/* ---- accepting ----------------------------------------------------------------------------- */

static void on_connection(uv_stream_t *server, int status);

/* The listener's handles close one by one; the last one tells stop. */
static void listener_handle_closed(uv_handle_t *h) {
  keel__listener *l = h->data;
  if (h == (uv_handle_t *)&l->tcp) l->tcp_open = false;
  if (--l->handles == 0 && l->stopping) atomic_store_explicit(&l->closed, true, memory_order_release);
}

/* A new descriptor for the listening socket, close-on-exec. dup, not
 * fcntl(F_DUPFD_CLOEXEC): ThreadSanitizer follows descriptors through dup
 * but not through fcntl, and would take a number reused across schedulers
 * for a race. */
static int listener_dup(const keel__listener *l) {
  int fd = dup(l->fd);
  if (fd >= 0) fcntl(fd, F_SETFD, FD_CLOEXEC);
  return fd;
}

/* Puts a dup of the listening socket on the loop (the socket itself stays
 * ours, so closing the handle for a pause keeps the kernel's queue). Linux
 * hands out the lowest free descriptor, so the dup's number also says
 * whether the reserve is free again. */
static int listener_open(keel__listener *l) {
  if (l->paused && l->srv->fd_high) {
    /* after a pause: RESUME_ROOM free descriptors under the reserve, or
     * wait (one hole would let a connection in, the next would cross) */
    int probe[RESUME_ROOM], n = 0;
    bool room = true;
    while (room && n < RESUME_ROOM) {
      probe[n] = listener_dup(l);
      room = probe[n] >= 0 && probe[n] < l->srv->fd_high;
      if (probe[n] >= 0) n++;
    }
    while (n)
      close(probe[--n]);
    if (!room) return KEEL_EBUSY; /* still in the reserve */
  }
  int fd = listener_dup(l);
  if (fd < 0) return KEEL_EIO;
  int rc = uv_tcp_init(l->loop, &l->tcp);
  if (rc != 0) {
    close(fd);
    return KEEL_EIO;
  }
  l->tcp.data = l;
  l->tcp_open = true;
  l->handles++;
  rc = uv_tcp_open(&l->tcp, fd);
  if (rc != 0) close(fd);
  if (rc == 0) rc = uv_listen((uv_stream_t *)&l->tcp, 1024, on_connection);
  if (rc != 0) {
    uv_close((uv_handle_t *)&l->tcp, listener_handle_closed);
    return KEEL_EIO;
  }
  return 0;
}

/* Closes up to IDLE_SHED connections of this listener that hold a
 * descriptor for nothing: idle keep-alive ones first (a client between
 * requests loses nothing but a reconnect), then those that have not sent a
 * byte in the SILENT_SHED_MS since their accept. Each lets a waiting
 * client in. */
static int shed_idle(keel__listener *l) {
  int shed = 0;
  uint64_t now = keel__http_now_ns();
  for (int pass = 0; pass < 2; pass++) {
    for (keel__conn *c = l->conns, *next; c && shed < IDLE_SHED; c = next) {
      next = c->next;
      if (c->busy || c->rq || c->lingering || keel__reqparse_busy(&c->rp)) continue;
      bool idle = c->tmode == T_IDLE;
      bool silent = c->tmode == T_HEAD && !c->served &&
                    now - c->born_ns >= (uint64_t)SILENT_SHED_MS * 1000000u;
      if (pass == 0 ? idle : silent) {
        conn_close(c);
        shed++;
      }
    }
  }
  return shed;
}

static void on_backoff(uv_timer_t *t) {
  keel__listener *l = t->data;
  if (l->stopping || l->fd < 0 || !l->paused) return;
  if (l->tcp_open || listener_open(l) != 0) { /* still closing, or still no descriptor */
    shed_idle(l);
    uv_timer_start(&l->backoff, on_backoff, ACCEPT_BACKOFF_MS, 0);
    return;
  }
  l->paused = false;
}

/* Out of descriptors, or into the reserve. On EMFILE/ENFILE libuv's accept
 * loop would call us again at once, forever, when its spare descriptor was
 * taken by another loop; and when its spare works, it accepts and closes
 * every queued connection. So the server pauses before: when an accepted
 * descriptor lands in the last fd_reserve under the limit. Either way:
 * close the handle (that ends libuv's loop), shed idle keep-alive
 * connections, and listen again after a back-off. Connections wait in the
 * kernel's queue meanwhile; probes on other ports (a smaller reserve),
 * timers and signals go on. status: a libuv error, or 0 for the reserve. */
static void accept_pause(keel__listener *l, int status) {
  keel_http_server *s = l->srv;
  if (l->paused) return;
  l->paused = true;
  if (l->tcp_open && !uv_is_closing((uv_handle_t *)&l->tcp))
    uv_close((uv_handle_t *)&l->tcp, listener_handle_closed);
  int shed = shed_idle(l);
  uv_timer_start(&l->backoff, on_backoff, ACCEPT_BACKOFF_MS, 0);
  if (s->paused_c) keel_counter_inc(s->paused_c);
  int64_t now = (int64_t)(keel__http_now_ns() / 1000000u), last = atomic_load_explicit(&s->pause_log_ms, memory_order_relaxed);
  if (last && now - last < ACCEPT_LOG_MS) {
    atomic_fetch_add_explicit(&s->pause_quiet, 1, memory_order_relaxed);
    return;
  }
  if (!atomic_compare_exchange_strong(&s->pause_log_ms, &last, now)) return; /* another loop logs */
  uint64_t quiet = atomic_exchange_explicit(&s->pause_quiet, 0, memory_order_relaxed);
  if (keel_log_enabled(KEEL_LOG_WARN)) {
    keel_log_field f[] = {KEEL_STR("server", s->name),
                          KEEL_INT("port", s->port),
                          KEEL_STR("error", status ? uv_err_name(status) : "reserve reached"),
                          KEEL_INT("fd_limit_reserve_at", s->fd_high),
                          KEEL_INT("scheduler", l->sched),
                          KEEL_INT("open_connections", (int64_t)keel_http_connections(s)),
                          KEEL_INT("idle_closed", shed),
                          KEEL_INT("backoff_ms", ACCEPT_BACKOFF_MS),
                          KEEL_UINT("pauses_not_logged", quiet),
                          KEEL_LOG__END};
    keel_log_write(NULL, KEEL_LOG_WARN, "accept paused: out of file descriptors", f);
  }
}

static void on_connection(uv_stream_t *server, int status) {
  keel__listener *l = server->data;
  if (status == UV_EMFILE || status == UV_ENFILE) {
    accept_pause(l, status);
    return;
  }
  if (status < 0) return;
  keel__conn *c = calloc(1, sizeof *c);
  if (!c) return;
  c->l = l;
  uv_tcp_init(l->loop, &c->tcp);
  if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
    uv_close((uv_handle_t *)&c->tcp, (uv_close_cb)free);
    return;
  }
  uv_os_fd_t fd;
  if (l->srv->fd_high && uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0 && fd >= l->srv->fd_high)
    accept_pause(l, 0); /* this one is served; the next wait in the queue */
  uv_tcp_nodelay(&c->tcp, 1);
  uv_timer_init(l->loop, &c->timer);
  c->timer.data = c;
  uv_timer_init(l->loop, &c->rtimer);
  struct sockaddr_storage ss;
  int sl = sizeof ss;
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl) == 0) {
    if (ss.ss_family == AF_INET) uv_ip4_name((struct sockaddr_in *)&ss, c->peer, sizeof c->peer);
    else if (ss.ss_family == AF_INET6)
      uv_ip6_name((struct sockaddr_in6 *)&ss, c->peer, sizeof c->peer);
  }
  keel_http_server *s = l->srv;
  c->born_ns = keel__http_now_ns();
  keel__reqparse_init(&c->rp, s->o.max_header_bytes, s->o.max_body_bytes, on_head, c);
  c->next = l->conns;
  if (l->conns) l->conns->prev = c;
  l->conns = c;
  atomic_fetch_add_explicit(&s->conns, 1, memory_order_relaxed);
  if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) {
    conn_close(c);
    return;
  }
  c->reading = true;
  timer_set(c, T_HEAD, s->o.header_timeout_ms); /* from the accept */
}

/* Stops accepting for good: the handle and the socket itself (so the kernel
 * sends new connections to other instances on the port). */
static void listener_close(keel__listener *l) {
  if (l->tcp_open && !uv_is_closing((uv_handle_t *)&l->tcp))
    uv_close((uv_handle_t *)&l->tcp, listener_handle_closed);
  uv_timer_stop(&l->backoff);
  l->paused = false;
  if (l->fd >= 0) close(l->fd);
  l->fd = -1;
}

/* The acceptor: puts the socket on its scheduler's loop, then obeys control
 * messages. It is pinned, so it runs on the thread of that loop. */
static void acceptor_main(void *arg) {
  keel__listener *l = arg;
  keel_io_t io;
  keel_io_begin(&io);
  l->loop = keel_io_loop(&io);
  uv_timer_init(l->loop, &l->backoff);
  l->backoff.data = l;
  uv_idle_init(l->loop, &l->resume);
  l->resume.data = l;
  l->handles = 2;
  if (listener_open(l) != 0) listener_close(l);
  for (;;) {
    keel_msg_t *m;
    if (keel_receive(&m, KEEL_INFINITY) != 0) continue;
    if (keel_msg_tag(m) != TAG_CTL || keel_msg_size(m) != sizeof(int)) {
      keel_msg_free(m);
      continue;
    }
    int op;
    memcpy(&op, keel_msg_data(m), sizeof op);
    keel_pid_t from = keel_msg_from(m);
    keel_msg_free(m);
    listener_close(l);
    /* CTL_CLOSE only closes the listener: every listener of the server is
     * closed before any connection is told to go, so a client that
     * reconnects after a Connection: close never finds one still open on
     * another scheduler and then gets reset. On CTL_DRAIN every answer from
     * now on says Connection: close (s->draining); an idle connection gets
     * a short grace for a request already on its way. */
    for (keel__conn *c = op == CTL_CLOSE ? NULL : l->conns, *next; c; c = next) {
      next = c->next;
      if (op == CTL_STOP) conn_close(c);
      else if (!c->busy && !c->rq && !c->lingering && !c->blocked && !c->queued &&
               !keel__reqparse_busy(&c->rp) && c->in_len == c->in_off)
        timer_set(c, T_IDLE, DRAIN_GRACE_MS); /* nothing of a request came yet */
    }
    if (op == CTL_STOP) { /* handlers still running are cut: their answers would go nowhere */
      for (keel_http_req *rq = l->reqs; rq; rq = rq->lnext)
        if (rq->pid) keel_exit_signal(rq->pid, KEEL_REASON_KILL, NULL);
      l->stopping = true;
      uv_close((uv_handle_t *)&l->backoff, listener_handle_closed);
      uv_close((uv_handle_t *)&l->resume, listener_handle_closed);
    }
    keel_msg_t *ack = keel_msg_new(TAG_CTL, 0);
    if (ack) keel_send(from, ack);
    if (op == CTL_STOP) break;
  }
  keel_io_end(&io);
}

/* ---- sockets ----------------------------------------------------------------------------------- */

static int bind_socket(const char *host, int port, int *fd_out, int *port_out) {
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                           .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
  struct addrinfo *res;
  char ps[16];
  snprintf(ps, sizeof ps, "%d", port);
  if (getaddrinfo(host, ps, &hints, &res) != 0) return KEEL_EINVAL;
  int rc = KEEL_EIO;
  for (struct addrinfo *a = res; a; a = a->ai_next) {
    int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) continue;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, 1024) == 0) {
      struct sockaddr_storage ss;
      socklen_t sl = sizeof ss;
      getsockname(fd, (struct sockaddr *)&ss, &sl);
      *port_out = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                 : ((struct sockaddr_in *)&ss)->sin_port);
      *fd_out = fd;
      rc = 0;
      break;
    }
    rc = errno == EADDRINUSE ? KEEL_EADDRINUSE : KEEL_EIO;
    close(fd);
  }
  freeaddrinfo(res);
  return rc;
}

/* systemd socket activation: LISTEN_PID is us and LISTEN_FDS >= 1; the
 * sockets start at fd 3. Returns the first one or -1. */
static int listen_fd_from_env(void) {
  const char *pid = getenv("LISTEN_PID"), *n = getenv("LISTEN_FDS");
  if (!pid || !n || atol(pid) != (long)getpid() || atoi(n) < 1) return -1;
  return 3;
}

/* ---- start, drain, stop ------------------------------------------------------------------------ */

static void server_free(keel_http_server *s) {
  if (!s) return;
  keel_http_router_free(s->router);
  keel__ratelimit_free(s->rl);
  keel__cors_free(s->cors);
  free(s->sec_headers);
  free(s->host);
  free(s->name);
  free(s->csp);
  free(s->cors_origins);
  free(s->rate_skip);
  free(s->ls);
  free(s);
}

static int setup_middleware(keel_http_server *s) {
  if (s->o.rate_limit > 0) {
    s->rl = keel__ratelimit_new(s->o.rate_limit, s->o.rate_window_ms, s->o.rate_max_clients);
    if (!s->rl) return KEEL_ENOMEM;
  }
  if (s->cors_origins && *s->cors_origins) {
    int err = 0;
    s->cors = keel__cors_new(s->cors_origins, !s->o.no_cors_credentials, s->o.cors_max_age_s, &err);
    if (!s->cors) return err ? err : KEEL_ENOMEM;
  }
  if (!s->o.no_security_headers) {
    keel__hdrs h = {0};
    int rc = keel__security_headers(&h, !s->o.no_hsts, s->csp);
    keel__jw b = {0};
    for (size_t i = 0; !rc && i < h.n; i++)
      sb_hdr(&b, h.v[i].name, h.v[i].value);
    keel__hdrs_free(&h);
    if (rc || b.oom) {
      free(b.p);
      return rc ? rc : KEEL_ENOMEM;
    }
    s->sec_headers = b.p;
    s->sec_len = b.len;
  }
  if (s->o.metrics) {
    static const char *const l3[] = {"method", "route", "status"};
    static const double buckets[] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1,
                                     0.25,  0.5,   1,    2.5,   5,    10};
    int rc = keel_metrics_counter(s->o.metrics, "http_requests_total", "HTTP requests answered.",
                                  l3, 3, &s->acc.total);
    if (!rc)
      rc = keel_metrics_histogram(s->o.metrics, "http_request_duration_seconds",
                                  "HTTP request duration in seconds.", l3, 3, buckets,
                                  sizeof buckets / sizeof *buckets, &s->acc.duration);
    if (!rc)
      rc = keel_metrics_gauge(s->o.metrics, "http_requests_in_flight",
                              "HTTP requests being handled now.", NULL, 0, &s->m_in_flight);
    if (!rc) rc = keel_gauge_get(s->m_in_flight, NULL, &s->in_flight_g);
    if (!rc)
      rc = keel_metrics_counter(s->o.metrics, "http_accept_paused_total",
                                "Times a listener stopped accepting for a back-off because the "
                                "process was out of file descriptors.",
                                NULL, 0, &s->m_paused);
    if (!rc) rc = keel_counter_get(s->m_paused, NULL, &s->paused_c);
    if (rc) return rc;
  }
  return 0;
}

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

/* A server holds a descriptor per connection: the soft RLIMIT_NOFILE goes
 * up to the hard limit, once per process, and the log says so. */
static void raise_nofile(void) {
  struct rlimit r;
  if (getrlimit(RLIMIT_NOFILE, &r) != 0 || r.rlim_cur >= r.rlim_max) return;
  uint64_t from = (uint64_t)r.rlim_cur;
  r.rlim_cur = r.rlim_max;
  if (setrlimit(RLIMIT_NOFILE, &r) != 0) {
    if (keel_log_enabled(KEEL_LOG_WARN)) {
      keel_log_field f[] = {KEEL_UINT("soft", from), KEEL_UINT("hard", (uint64_t)r.rlim_max),
                            KEEL_STR("error", strerror(errno)), KEEL_LOG__END};
      keel_log_write(NULL, KEEL_LOG_WARN, "could not raise the open-file limit", f);
    }
    return;
  }
  if (keel_log_enabled(KEEL_LOG_INFO)) {
    keel_log_field f[] = {KEEL_UINT("from", from), KEEL_UINT("to", (uint64_t)r.rlim_max),
                          KEEL_LOG__END};
    keel_log_write(NULL, KEEL_LOG_INFO, "raised the open-file limit", f);
  }
}

int keel_http_start(const keel_http_opts *o, keel_http_router *router, keel_http_server **out) {
  if (out) *out = NULL;
  if (!o || !router || !out) return KEEL_EINVAL;
  if (!keel_self()) return KEEL_ENOTPROC;
  keel_http_opts ro = *o;
  if (resolve_opts(&ro)) return KEEL_EINVAL;
  o = &ro;
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, raise_nofile);

  keel_http_server *s = calloc(1, sizeof *s);
  if (!s) return KEEL_ENOMEM;
  s->o = *o;
  s->host = strdup(o->host ? o->host : "0.0.0.0");
  s->name = strdup(o->name ? o->name : "api");
  s->csp = dup_or_null(o->csp);
  s->cors_origins = dup_or_null(o->cors_origins);
  s->rate_skip = dup_or_null(o->rate_limit_skip);
  s->acc.log = !o->no_access_log;
  s->acc.slow_ms = o->slow_request_ms;
  s->acc.server = s->name;
  s->router = router;
  int rc = (!s->host || !s->name) ? KEEL_ENOMEM : setup_middleware(s);
  s->nl = keel_sched_count();
  if (!rc && !(s->ls = calloc((size_t)s->nl, sizeof *s->ls))) rc = KEEL_ENOMEM;
  if (rc) {
    s->router = NULL; /* the caller keeps it on failure */
    server_free(s);
    return rc;
  }
  /* the sockets: passed by systemd, or bound here (errors surface now) */
  int passed = o->no_listen_fds ? -1 : listen_fd_from_env();
  int port = o->port;
  for (int i = 0; i < s->nl; i++) /* before any can fail: the cleanup closes only these */
    s->ls[i].fd = -1;
  for (int i = 0; i < s->nl && !rc; i++) {
    keel__listener *l = &s->ls[i];
    l->srv = s;
    l->sched = i;
    if (passed >= 0) {
      l->fd = dup(passed);
      if (l->fd < 0) rc = KEEL_EIO;
      struct sockaddr_storage ss;
      socklen_t sl = sizeof ss;
      if (!rc && getsockname(l->fd, (struct sockaddr *)&ss, &sl) == 0)
        port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                              : ((struct sockaddr_in *)&ss)->sin_port);
    } else {
      rc = bind_socket(s->host, port, &l->fd, &port); /* port 0: the first picks, others follow */
    }
  }
  s->port = port;
  struct rlimit nofile;
  if (o->fd_reserve > 0 && getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur != RLIM_INFINITY &&
      nofile.rlim_cur < INT32_MAX) {
    int lim = (int)nofile.rlim_cur, reserve = o->fd_reserve < lim / 4 ? o->fd_reserve : lim / 4;
    s->fd_high = lim - reserve;
  }
  if (rc) {
    for (int i = 0; i < s->nl; i++)
      if (s->ls[i].fd >= 0) close(s->ls[i].fd);
    if (keel_log_enabled(KEEL_LOG_ERROR)) {
      keel_log_field f[] = {KEEL_STR("server", s->name), KEEL_STR("host", s->host),
                            KEEL_INT("port", o->port), KEEL_STR("error", keel_strerror(rc)),
                            KEEL_LOG__END};
      keel_log_write(NULL, KEEL_LOG_ERROR, "http listen failed", f);
    }
    s->router = NULL;
    server_free(s);
    return rc;
  }
  for (int i = 0; i < s->nl; i++) {
    keel_spawn_opts so;
    keel_spawn_opts_init(&so);
    so.scheduler = KEEL_ON_SCHEDULER(i);
    so.pin = true;
    so.name = "http_acceptor";
    if (keel_spawn(acceptor_main, &s->ls[i], &so, &s->ls[i].acceptor) != 0) {
      close(s->ls[i].fd);
      s->ls[i].acceptor = 0;
    }
  }
  if (keel_log_enabled(KEEL_LOG_INFO)) {
    keel_log_field f[] = {KEEL_STR("server", s->name), KEEL_STR("host", s->host),
                          KEEL_INT("port", s->port), KEEL_INT("listeners", s->nl),
                          KEEL_BOOL("socket_activation", passed >= 0), KEEL_LOG__END};
    keel_log_write(NULL, KEEL_LOG_INFO, "http listening", f);
  }
  *out = s;
  return 0;
}

int keel_http_port(const keel_http_server *s) { return s ? s->port : -1; }

size_t keel_http_in_flight(const keel_http_server *s) {
  return s ? atomic_load_explicit(&s->in_flight, memory_order_relaxed) : 0;
}

size_t keel_http_connections(const keel_http_server *s) {
  return s ? atomic_load_explicit(&s->conns, memory_order_relaxed) : 0;
}

static bool is_ctl(const keel_msg_t *m, void *arg) {
  (void)arg;
  return keel_msg_tag(m) == TAG_CTL;
}

/* Sends op to every acceptor and waits for their acknowledgements. */
static void control_all(keel_http_server *s, int op) {
  int sent = 0;
  for (int i = 0; i < s->nl; i++) {
    if (!s->ls[i].acceptor) continue;
    if (keel_send(s->ls[i].acceptor, keel_msg_copy(TAG_CTL, &op, sizeof op)) == 0) sent++;
  }
  for (int i = 0; i < sent; i++) {
    keel_msg_t *m;
    if (keel_receive_match(is_ctl, NULL, &m, 10000) != 0) break;
    keel_msg_free(m);
  }
}

int keel_http_drain(keel_http_server *s, int64_t timeout_ms) {
  timeout_ms = keel_timeout_or(timeout_ms, 30000);
  if (!s) return KEEL_EINVAL;
  if (!keel_self()) return KEEL_ENOTPROC;
  if (!atomic_exchange(&s->drain_begun, true)) {
    control_all(s, CTL_CLOSE); /* first every listener */
    atomic_store(&s->draining, true);
    control_all(s, CTL_DRAIN); /* then the connections */
  }
  int64_t waited = 0;
  while (keel_http_in_flight(s) > 0 || keel_http_connections(s) > 0) {
    if (timeout_ms != KEEL_INFINITY && waited >= timeout_ms) return KEEL_ETIMEDOUT;
    keel_sleep(10);
    waited += 10;
  }
  return 0;
}

int keel_http_stop(keel_http_server *s) {
  if (!s) return KEEL_EINVAL;
  if (!keel_self()) return KEEL_ENOTPROC;
  atomic_store(&s->draining, true);
  atomic_store(&s->stopping, true);
  control_all(s, CTL_STOP);
  /* the acceptors killed the handlers still running; their exit hooks (on
   * their schedulers) release the requests, which point at the server */
  for (int i = 0; keel_http_in_flight(s) > 0; i++)
    keel_sleep(i < 100 ? 1 : 10);
  /* the listening handles live in s->ls: wait for their close callbacks */
  for (int i = 0; i < s->nl; i++)
    while (s->ls[i].acceptor && !atomic_load_explicit(&s->ls[i].closed, memory_order_acquire))
      keel_sleep(1);
  server_free(s);
  return 0;
}
