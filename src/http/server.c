/* server.c - the HTTP/1.1 server: its options, start, drain and stop.
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
 * The parts, one file each: listener.c accepts (the acceptor processes,
 * the sockets, the pause when descriptors run out); conn.c runs a
 * connection (reading, parsing, pipelining, writing, timeouts, closing);
 * dispatch.c takes a whole request to its response (the middleware on the
 * loop, the handler process). This file resolves the options, starts the
 * listeners, and drains and stops them: a drain first closes every
 * listener, then tells the connections; a stop closes everything and cuts
 * the handlers still running.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http/http_internal.h"
#include "http/server.h"
#include "keel/error.h"
#include "keel/log.h"
#include "keel/metrics.h"
#include "keel/process.h"
#include "keel/runtime.h"
#include "ops/json_write.h"

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

/* ---- start, drain, stop ------------------------------------------------------------------------ */

static void server_free(keel_http_server *s) {
  if (!s) return;
  if (s->on_free) s->on_free(s->on_free_arg);
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
      keel__http_header_line(&b, h.v[i].name, h.v[i].value);
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
  int passed = o->no_listen_fds ? -1 : keel__listen_fd_from_env();
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
      /* port 0: the first picks, others follow */
      rc = keel__bind_socket(s->host, port, &l->fd, &port);
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
    if (keel_spawn(keel__acceptor_main, &s->ls[i], &so, &s->ls[i].acceptor) != 0) {
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

int keel_http_drain(keel_http_server *s, int64_t timeout_ms) {
  timeout_ms = keel_timeout_or(timeout_ms, 30000);
  if (!s) return KEEL_EINVAL;
  if (!keel_self()) return KEEL_ENOTPROC;
  if (!atomic_exchange(&s->drain_begun, true)) {
    keel__listeners_control(s, KEEL__CTL_CLOSE); /* first every listener */
    atomic_store(&s->draining, true);
    keel__listeners_control(s, KEEL__CTL_DRAIN); /* then the connections */
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
  keel__listeners_control(s, KEEL__CTL_STOP);
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
