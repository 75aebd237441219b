/* dispatch.c - a whole request, from the parser to its response: the
 * middleware on the loop, the handler process, the response written.
 *
 * A request's life. conn.c parses bytes where they were read and hands
 * each whole request here (keel__dispatch). On the loop: request id, trace
 * context, client address, CORS (a preflight is answered here), the rate
 * limit (429 here), the route (404/405 here). Then a handler process runs
 * the route's handler; an exit hook registered with its spawn
 * (keel_spawn_opts.on_exit) sends the response when the process ends,
 * however it ends: normally with the handler's response, by a crash with
 * 500. A per-connection request timer answers 503 and kills a handler that
 * runs past request_timeout_ms. After the response: the access log line,
 * the metrics (access_log.c), then the next pipelined request or reading
 * again (keel__conn_resume). A request the parser refused, or whose head or
 * body did not come in time, is answered here too (keel__conn_fail).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http/http_internal.h"
#include "http/parse.h"
#include "http/server.h"
#include "keel/error.h"
#include "keel/http.h"
#include "keel/log.h"
#include "keel/metrics.h"
#include "keel/process.h"
#include "keel/runtime.h"
#include "ops/json_write.h"

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

/* ---- responses ------------------------------------------------------------------------ */

/* A response header line (name and value already checked for CR/LF). */
void keel__http_header_line(keel__jw *b, const char *name, const char *value) {
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
   * (keel__conn_fail); a 400 a handler returns leaves the connection in step */
  bool keep = rq->keepalive && !atomic_load_explicit(&s->draining, memory_order_relaxed);
  bool head = strcmp(rq->method, "HEAD") == 0;
  size_t bytes_out = 0;
  /* the span ends before the bytes go: a client that has its answer finds
   * the server's span already ended (and queued for export) */
  keel__http_span_end(rq);
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
      keel__http_header_line(&b, "Content-Type",
                             res->content_type ? res->content_type : "application/octet-stream");
    snprintf(num, sizeof num, "%zu", res->len);
    if (res->status != 204 && res->status >= 200) keel__http_header_line(&b, "Content-Length", num);
    keel__http_header_line(&b, "Connection", keep ? "keep-alive" : "close");
    if (rq->reqid[0]) keel__http_header_line(&b, "X-Request-Id", rq->reqid);
    if (rq->traceparent[0]) keel__http_header_line(&b, "traceparent", rq->traceparent);
    if (s->sec_headers) keel__jw_put(&b, s->sec_headers, s->sec_len);
    for (size_t i = 0; i < rq->mw.n; i++)
      keel__http_header_line(&b, rq->mw.v[i].name, rq->mw.v[i].value);
    for (size_t i = 0; i < res->headers.n; i++)
      keel__http_header_line(&b, res->headers.v[i].name, res->headers.v[i].value);
    keel__jw_put(&b, "\r\n", 2);
    if (!head && res->status != 204) keel__jw_put(&b, res->body, res->len);
    if (!b.oom) {
      bytes_out = b.len;
      keel__conn_write(c, b.p, b.len);
    } else {
      free(b.p);
      keel__conn_close(c);
    }
  }
  keel__access_record(&s->acc, rq, bytes_out);
  if (!keep && c) c->done = true;
  keel__req_release(rq);
}

/* The connection is done with its request (answered, or gone with it). */
static void conn_request_done(keel__conn *c) {
  keel_http_req *rq = c->rq;
  c->rq = NULL;
  if (rq) keel__req_release(rq);
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

void keel__req_release(keel_http_req *rq) {
  if (--rq->refs == 0) keel__req_free(rq);
}

static void handler_main(void *arg) {
  keel_http_req *rq = arg;
  /* the request's span is the handler's current span: its own spans, its
   * calls and its HTTP client requests are children of it. rq (and so the
   * span) outlives the process: the process holds a reference. */
  if (rq->traced) keel_local_set(KEEL_LOCAL_TRACE, &rq->span);
  /* the HTTP client (keel/http_client.h) sends both on from here */
  if (rq->traceparent[0])
    keel_log_context_set(KEEL_STR("requestId", rq->reqid),
                         KEEL_STR("traceparent", rq->traceparent));
  else
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
      keel__req_release(rq);
    }
    keel__req_release(rq);
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
    keel__conn_resume(c); /* the next pipelined request, or reading again */
  }
  keel__req_release(rq);
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
void keel__dispatch(keel__conn *c, keel_http_req *rq) {
  keel_http_server *s = c->l->srv;
  rq->srv = s;
  rq->conn = c;
  c->rq = rq;
  c->served = true;
  keel__conn_timer_set(c, KEEL__T_NONE, 0);

  /* request id and trace context first: every answer carries them */
  const char *given = keel_http_header(rq, "x-request-id");
  if (!given) given = keel_http_header(rq, "x-correlation-id");
  if (!s->o.no_request_id && given && keel__reqid_valid(given))
    snprintf(rq->reqid, sizeof rq->reqid, "%s", given);
  else
    keel__reqid_make(rq->reqid);
  if (!s->o.no_request_id) keel__http_span_begin(rq); /* sets rq->traceparent */
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

/* ---- requests the parser refused ----------------------------------------------------------- */

/* Answers a request the parser refused, or one whose head or body did not
 * come in time, and closes after the answer. rq is the partial request (or
 * NULL when none had begun). */
void keel__conn_fail(keel__conn *c, keel_http_req *rq, int status, const char *reason) {
  if (!rq) {
    rq = calloc(1, sizeof *rq);
    if (!rq) {
      keel__conn_close(c);
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
  keel__conn_timer_set(c, KEEL__T_NONE, 0);
  keel_http_error_kind k = status == 413   ? KEEL_HTTP_TOO_LARGE
                           : status == 431 ? KEEL_HTTP_HEADERS_TOO_LARGE
                           : status == 408 ? KEEL_HTTP_REQUEST_TIMEOUT
                           : status >= 500 ? KEEL_HTTP_INTERNAL
                                           : KEEL_HTTP_BAD_REQUEST;
  keel_http_fail(&rq->res, k, reason ? reason : "Malformed request", NULL);
  respond_now(c, rq);
}
