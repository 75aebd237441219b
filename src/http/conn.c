/* conn.c - a connection, from its accept to its close: reading and
 * parsing, pipelining, writing, its timeouts, closing.
 *
 * Everything about a connection happens on the loop of the scheduler that
 * accepted it (listener.c hands it over, keel__conn_start): libuv callbacks
 * read and parse (parse.c, llhttp in strict mode, docs/decisions/0007) where
 * the bytes were read (the listener's read buffer); the parser stops after
 * each whole request, which goes to dispatch.c (keel__dispatch) to be
 * answered on the loop or by a handler process. Only that one thread touches
 * a connection, so nothing here locks.
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
 * Closing. A connection we close after an error or on drain is shut down for
 * writing first and then read and discarded for up to a second (a lingering
 * close), so the client reads our answer instead of a reset.
 */
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "http/http_internal.h"
#include "http/parse.h"
#include "http/server.h"
#include "keel/http.h"

#define LINGER_MS 1000

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

/* When a listener runs out of descriptors (listener.c, accept_pause), it
 * closes up to IDLE_SHED connections: idle ones, then silent ones. */
#define IDLE_SHED      16
#define SILENT_SHED_MS 1000 /* a connection silent this long since its accept may be shed */

#define DRAIN_GRACE_MS 250 /* an idle connection may still bring one request when a drain begins */

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

static void runq_remove(keel__conn *c) {
  if (!c->queued) return;
  c->queued = false;
  if (c->rprev) c->rprev->rnext = c->rnext;
  else c->l->runq = c->rnext;
  if (c->rnext) c->rnext->rprev = c->rprev;
  else c->l->runq_tail = c->rprev;
  c->rnext = c->rprev = NULL;
}

void keel__conn_close(keel__conn *c) {
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
    keel__req_release(rq); /* the connection's reference; the handler holds the other */
  }
  uv_read_stop((uv_stream_t *)&c->tcp);
  c->reading = false;
  uv_timer_stop(&c->timer);
  uv_timer_stop(&c->rtimer); /* a handler still running is not timed out any more */
  uv_close((uv_handle_t *)&c->timer, timer_closed);
}

static void on_timer(uv_timer_t *t);

void keel__conn_timer_set(keel__conn *c, int mode, int64_t ms) {
  c->tmode = mode;
  if (mode == KEEL__T_NONE || ms <= 0) uv_timer_stop(&c->timer);
  else uv_timer_start(&c->timer, on_timer, (uint64_t)ms, 0);
}

static void on_linger_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf) {
  (void)buf;
  if (n < 0) keel__conn_close((keel__conn *)st);
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
    keel__conn_close(c);
    return;
  }
  keel__conn_timer_set(c, KEEL__T_LINGER, LINGER_MS);
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
    keel__conn_close(c);
    return;
  }
  req->data = c;
  if (uv_shutdown(req, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
    free(req);
    keel__conn_close(c);
  }
}

static size_t write_queued(keel__conn *c) {
  return uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
}

static void conn_settle(keel__conn *c, int budget);

static void on_timer(uv_timer_t *t) {
  keel__conn *c = t->data;
  switch (c->tmode) {
  case KEEL__T_HEAD: /* a head that did not come in time (slowloris) */
  case KEEL__T_BODY: /* a body that stopped coming */
    if (keel__reqparse_busy(&c->rp) && !c->busy && !c->rq) { /* something came: say why */
      keel__conn_fail(c, keel__reqparse_take(&c->rp), 408,
                      c->tmode == KEEL__T_HEAD ? "Request head not received in time"
                                               : "Request body not received in time");
      conn_settle(c, RUN_BUDGET); /* closes once the answer is out */
      break;
    }
    keel__conn_close(c);
    break;
  case KEEL__T_IDLE:   /* an idle keep-alive connection */
  case KEEL__T_SEND:   /* a client that does not read its answers */
  case KEEL__T_LINGER: keel__conn_close(c); break;
  default: break;
  }
}

/* ---- writing ------------------------------------------------------------------------ */

typedef struct wreq {
  uv_write_t w;
  char *buf;
  keel__conn *c;
} wreq;

static void on_write(uv_write_t *w, int status) {
  wreq *r = (wreq *)w;
  keel__conn *c = r->c;
  size_t queued = w->handle->write_queue_size;
  free(r->buf);
  free(r);
  if (c->closing) return;
  if (status < 0) {
    keel__conn_close(c);
  } else if (c->done) {
    if (!c->busy && queued == 0) conn_linger_close(c);
  } else if (c->blocked) { /* the client reads again */
    if (queued <= WRITE_LOW) {
      c->blocked = false;
      keel__conn_timer_set(c, KEEL__T_NONE, 0);
      keel__conn_resume(c);
    } else {
      keel__conn_timer_set(c, KEEL__T_SEND, c->l->srv->o.send_timeout_ms);
    }
  }
}

/* Writes buf (taking it); false when the connection failed. */
bool keel__conn_write(keel__conn *c, char *buf, size_t len) {
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
    keel__conn_close(c);
    return false;
  }
  size_t off = n > 0 ? (size_t)n : 0;
  wreq *r = malloc(sizeof *r);
  if (!r) {
    free(buf);
    keel__conn_close(c);
    return false;
  }
  r->buf = buf;
  r->c = c;
  b = uv_buf_init(buf + off, (unsigned)(len - off));
  if (uv_write(&r->w, (uv_stream_t *)&c->tcp, &b, 1, on_write) != 0) {
    free(buf);
    free(r);
    keel__conn_close(c);
    return false;
  }
  return true;
}

/* ---- parsing and reading ------------------------------------------------------------- */

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
      keel__conn_write(c, b, sizeof cont - 1);
    }
  }
  if ((rp->p.flags & F_CHUNKED) || rp->p.content_length > 0)
    keel__conn_timer_set(c, KEEL__T_BODY, s->o.body_timeout_ms);
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
    if (!keel__reqparse_busy(&c->rp) && c->tmode != KEEL__T_HEAD)
      keel__conn_timer_set(c, KEEL__T_HEAD, c->l->srv->o.header_timeout_ms);
    off += keel__reqparse_feed(&c->rp, data + off, n - off);
    if (c->rp.status) {
      int st = c->rp.status;
      keel__conn_fail(c, keel__reqparse_take(&c->rp), st, c->rp.reason);
      break;
    }
    if (c->rp.complete) {
      (*budget)--;
      keel__dispatch(c, keel__reqparse_take(&c->rp));
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
      keel__conn_close(c);
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
      keel__conn_close(c);
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
      keel__conn_timer_set(c, KEEL__T_SEND, s->o.send_timeout_ms);
    }
    return;
  }
  if (c->in_len > c->in_off) { /* parsing stopped early */
    if (write_queued(c) > WRITE_HIGH) {
      c->blocked = true;
      keel__conn_timer_set(c, KEEL__T_SEND, s->o.send_timeout_ms);
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
    keel__conn_timer_set(c, KEEL__T_IDLE, draining ? DRAIN_GRACE_MS : s->o.keepalive_timeout_ms);
  }
}

/* Goes on with a connection after a handler's answer, when its answers
 * drained, or on its turn: parses what is buffered, then settles. */
void keel__conn_resume(keel__conn *c) {
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
    keel__conn_resume(c);
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
      keel__conn_close(c);
      return;
    }
    c->eof = true; /* answer what came first */
    conn_settle(c, RUN_BUDGET);
    return;
  }
  if (c->done) return; /* closing after an answer: what comes is dropped */
  keel_http_server *s = c->l->srv;
  if (c->tmode == KEEL__T_BODY) /* it keeps coming */
    keel__conn_timer_set(c, KEEL__T_BODY, s->o.body_timeout_ms);
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

/* ---- accepted, drained, shed ------------------------------------------------------ */

/* A connection the listener accepted (c->tcp, c->l set): starts reading,
 * with the header timeout running from the accept. */
void keel__conn_start(keel__conn *c) {
  keel__listener *l = c->l;
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
    keel__conn_close(c);
    return;
  }
  c->reading = true;
  keel__conn_timer_set(c, KEEL__T_HEAD, s->o.header_timeout_ms); /* from the accept */
}

/* A drain began: a connection with nothing of a request yet gets a short
 * grace for one already on its way; the others close after their answer
 * (every answer from now on says Connection: close). */
void keel__conn_drain(keel__conn *c) {
  if (!c->busy && !c->rq && !c->lingering && !c->blocked && !c->queued &&
      !keel__reqparse_busy(&c->rp) && c->in_len == c->in_off)
    keel__conn_timer_set(c, KEEL__T_IDLE, DRAIN_GRACE_MS); /* nothing of a request came yet */
}

/* Closes up to IDLE_SHED connections of this listener that hold a
 * descriptor for nothing: idle keep-alive ones first (a client between
 * requests loses nothing but a reconnect), then those that have not sent a
 * byte in the SILENT_SHED_MS since their accept. Each lets a waiting
 * client in. */
int keel__conn_shed_idle(keel__listener *l) {
  int shed = 0;
  uint64_t now = keel__http_now_ns();
  for (int pass = 0; pass < 2; pass++) {
    for (keel__conn *c = l->conns, *next; c && shed < IDLE_SHED; c = next) {
      next = c->next;
      if (c->busy || c->rq || c->lingering || keel__reqparse_busy(&c->rp)) continue;
      bool idle = c->tmode == KEEL__T_IDLE;
      bool silent = c->tmode == KEEL__T_HEAD && !c->served &&
                    now - c->born_ns >= (uint64_t)SILENT_SHED_MS * 1000000u;
      if (pass == 0 ? idle : silent) {
        keel__conn_close(c);
        shed++;
      }
    }
  }
  return shed;
}
