/* http_internal.h - what the HTTP server's files share (not installed).
 *
 * server.c starts, drains and stops a server; listener.c accepts; conn.c
 * owns connections; dispatch.c the request lifecycle (middleware, handler
 * processes, responses); their structures are in server.h. router.c matches
 * paths to routes; request.c holds the request accessors and the response
 * builders (the envelope included); middleware.h the connection-free pieces.
 */
#ifndef KEEL_HTTP_INTERNAL_H
#define KEEL_HTTP_INTERNAL_H

#include <stdatomic.h>
#include <time.h>
#include <uv.h>

#include "http/middleware.h"
#include "keel/http.h"
#include "keel/process.h"
#include "keel/trace.h"
#include "keel/trace_export.h"

#define KEEL__HTTP_MAX_PARAMS 8

/* ---- router ---------------------------------------------------------------- */

typedef struct keel__route {
  char method[12];
  char *pattern;
  char **seg; /* pattern split at '/' (":name", "*" or literal) */
  size_t nseg;
  int nstatic; /* literal segments: more wins when several routes match */
  keel_http_handler fn;
  void *ud;
} keel__route;

struct keel_http_router {
  keel__route **v;
  size_t n, cap;
};

typedef struct keel__match {
  const keel__route *route; /* NULL: no route for this method */
  const char *pattern;      /* the pattern of the route the path matched, with this
                               method or another (405): the metrics label; NULL: none */
  size_t nparams;
  const char *pname[KEEL__HTTP_MAX_PARAMS];
  char *pval[KEEL__HTTP_MAX_PARAMS]; /* malloc'd, owned by the match */
  char allow[96];                     /* when route is NULL and the path is known */
} keel__match;

/* Matches method + raw path (its path_len bytes, percent-encoded; segments
 * are decoded one by one). Returns 0 with m->route set, KEEL_ENOENT (unknown path), 1 (known
 * path, other method: m->allow lists the methods, m->pattern names it),
 * KEEL_EINVAL (a bad percent escape) or KEEL_ENOMEM. */
int keel__router_match(const keel_http_router *r, const char *method, const char *path,
                       size_t path_len, keel__match *m);
void keel__match_free(keel__match *m);

/* ---- requests and responses ---------------------------------------------- */

struct keel_http_res {
  int status; /* 0: not set */
  keel__hdrs headers;
  char *body;
  size_t len;
  const char *content_type; /* static or in headers */
  keel_http_error_kind err_kind;
  char *err_log; /* internal error text for the log, never sent */
};

typedef struct keel__conn keel__conn;
typedef struct keel__listener keel__listener;

struct keel_http_req {
  keel_http_server *srv;
  keel__conn *conn; /* NULL once the connection is gone */
  int refs;         /* the connection side and the handler process */
  char method[16];
  char *target; /* raw request target */
  char *path;   /* percent-decoded path */
  char *query;  /* raw query */
  char **hname, **hval; /* names lowercased */
  size_t nh, caph;
  char *body;
  size_t body_len, body_cap;
  json_t *json;
  bool json_done;
  int json_err;
  keel__match match;
  char **qname, **qval; /* decoded query params, parsed on first use */
  size_t nq;
  bool q_done;
  char reqid[130];
  char traceparent[56];
  keel_span span; /* the server span (trace_http.c); its ids are in traceparent */
  bool traced;
  char client_ip[64];
  uint64_t start_ns;
  size_t bytes_in;
  keel_http_res res;
  keel__hdrs mw; /* headers from the middleware (rate limit, CORS, Allow): kept
                    whatever happens to the handler's response */
  keel_pid_t pid;     /* the handler process while it runs the handler, else 0 */
  keel_http_req *lprev, *lnext; /* in its listener's list of requests being handled */
  keel__listener *l;
  bool responded, timed_out, keepalive, crashed;
  size_t stream_max; /* a streamed answer (stream.c): unread bytes allowed; 0: not streaming */
  int http_minor;
};

/* ---- the clock, the access log ------------------------------------------------ */

/* CLOCK_MONOTONIC in nanoseconds: request start and duration, timeouts. */
static inline uint64_t keel__http_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* What access_log.c needs of a server: its options and metric families. */
typedef struct keel__access {
  bool log;        /* write "request completed" lines (access_log option) */
  int64_t slow_ms; /* warn above; 0: never */
  const char *server;
  keel_metric_family *total, *duration; /* NULL: no metrics */
} keel__access;

/* trace_http.c: the request's server span, started when it is dispatched
 * (continuing the caller's traceparent/tracestate, or a new trace) and ended
 * with the response (OpenTelemetry's HTTP server conventions). end is
 * idempotent; req_free calls it for a request never answered. */
void keel__http_span_begin(keel_http_req *rq);
void keel__http_span_end(keel_http_req *rq);

/* trace_otlp.c: keel_trace_encode_otlp into a buffer the caller keeps
 * (*buf of *cap bytes, NULL and 0 at first; grown with realloc, so the
 * caller frees it once): the exporter thread reuses one for every batch.
 * *len gets the encoded length. KEEL_ENOMEM leaves *buf valid. */
int keel__trace_encode_into(struct keel_span_data *const *spans, size_t n,
                            const keel_trace_export_opts *o, uint8_t **buf, size_t *len,
                            size_t *cap);

/* The access log line, the slow-request warning and the metrics of an
 * answered request (res.status set). Any scheduler's loop. */
void keel__access_record(const keel__access *a, keel_http_req *rq, size_t bytes_out);
/* The "request failed" error line of a 500, with the body redacted. */
void keel__access_failure(keel_http_req *rq);

/* The standard error envelope as JSON text (malloc'd). */
char *keel__envelope(const char *code, const char *message, json_t *details,
                     const char *trace_id);
void keel__res_clear(keel_http_res *res);
void keel__req_free(keel_http_req *rq);
const char *keel__status_reason(int status);
/* RFC 3986 percent-decoding into a new string; '+' kept unless plus_space.
 * NULL on a bad escape or ENOMEM. */
char *keel__pct_decode(const char *s, size_t n, bool plus_space);

/* ---- the server's files (server.h has their structures) ---------------------- */

struct keel__jw;

/* conn.c: a connection, on the loop of the scheduler that accepted it. */

/* Starts a connection listener.c accepted (c->l and c->tcp set): reads, with
 * the header timeout running from the accept. */
void keel__conn_start(keel__conn *c);
/* Closes now (no lingering); its request, if any, loses its connection. */
void keel__conn_close(keel__conn *c);
/* Arms the connection's timer for mode (KEEL__T_*, server.h) in ms; KEEL__T_NONE
 * or ms <= 0 stops it. */
void keel__conn_timer_set(keel__conn *c, int mode, int64_t ms);
/* Writes buf (taking it); false when the connection failed. */
bool keel__conn_write(keel__conn *c, char *buf, size_t len);
/* Goes on after a handler's answer: parses what is buffered, then settles. */
void keel__conn_resume(keel__conn *c);
/* A drain began: a connection with nothing of a request yet is closed after
 * a short grace (one may be on its way). */
void keel__conn_drain(keel__conn *c);
/* For a listener out of descriptors: closes up to IDLE_SHED (16) idle or
 * silent connections of l; returns how many. */
int keel__conn_shed_idle(keel__listener *l);

/* dispatch.c: a whole request, from the parser to its response. */

/* Takes a whole request from the parser: answers it on the loop, or hands it
 * to a handler process (c->busy until it ends). */
void keel__dispatch(keel__conn *c, keel_http_req *rq);
/* Answers a request the parser refused (or NULL: none had begun), or whose
 * head or body did not come in time, with status, and closes after it. */
void keel__conn_fail(keel__conn *c, keel_http_req *rq, int status, const char *reason);
/* Drops one reference to rq (the connection's or the handler's); the last
 * frees it. */
void keel__req_release(keel_http_req *rq);
/* "Date: ...\r\n" of the current second, cached per listener (its loop only). */
const char *keel__http_date(keel__listener *l);
/* Appends "name: value\r\n" (both already checked for CR/LF) to b. */
void keel__http_header_line(struct keel__jw *b, const char *name, const char *value);

/* listener.c: accepting, the acceptor processes, the sockets. */

/* The acceptor process of one listener (arg: its keel__listener). */
void keel__acceptor_main(void *arg);
/* Sends op (KEEL__CTL_*, server.h) to every acceptor of s and waits for
 * their acknowledgements. */
void keel__listeners_control(keel_http_server *s, int op);
/* Binds and listens on host:port (SO_REUSEPORT); *port_out is the port bound
 * (port 0: the one picked). 0, KEEL_EINVAL, KEEL_EADDRINUSE or KEEL_EIO. */
int keel__bind_socket(const char *host, int port, int *fd_out, int *port_out);
/* systemd socket activation: the first passed socket, or -1. */
int keel__listen_fd_from_env(void);

/* ---- the service's drain phases (service_drain.c) ------------------------------- */

/* Runs the registered drain phases (keel_service_on_drain), the last
 * registered first, each given what is left until deadline_ms (CLOCK_MONOTONIC
 * ms) less reserve_ms, at least 1. From keel_service_main's prep_stop. */
void keel__service_drain_run(int64_t deadline_ms, int64_t reserve_ms);

#endif
