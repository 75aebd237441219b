/* keel/http.h - the HTTP/1.1 server: routes, handlers in processes, and the
 * production middleware.
 *
 * A server listens on one port with one listening socket per scheduler
 * (SO_REUSEPORT) or on sockets passed by systemd (LISTEN_FDS). Connections
 * are served on the scheduler that accepted them: parsing, keep-alive,
 * pipelining and writing happen on that scheduler's libuv loop. Each request
 * that reaches a route is handled in its own keel process, pinned to that
 * scheduler, so a handler is plain blocking code that may call gen_servers,
 * sleep or wait for I/O; the response is sent when the handler returns.
 *
 *   static int hello(keel_http_req *req, keel_http_res *res, void *ud) {
 *     return keel_http_reply_text(res, 200, "application/json", "{\"hello\":\"world\"}");
 *   }
 *   keel_http_router *r = keel_http_router_new();
 *   keel_http_route(r, "GET", "/api/hello", hello, NULL);
 *   keel_http_opts o;
 *   keel_http_opts_init(&o);
 *   o.port = 3000;
 *   keel_http_server *srv;
 *   keel_http_start(&o, r, &srv);      // the server owns the router now
 *
 * Middleware (on by default unless said, each configurable in keel_http_opts):
 * request ids (X-Request-Id / X-Correlation-Id taken when well-formed, else
 * made; returned; put in the handler process's log context), W3C traceparent,
 * an access log line per request, Prometheus metrics, per-client-IP rate
 * limiting (off unless rate_limit is set), security headers, CORS (off
 * unless cors_origins is set). Errors use one envelope:
 *   {"success":false,"error":{"code":"NOT_FOUND","message":"...","details":...,
 *    "traceId":"<request id>","timestamp":"2026-11-22T03:00:00.000Z"}}
 *
 * Thread rules: keel_http_start/drain/stop are called from a keel process.
 * Request and response objects belong to the handler's process and are valid
 * until the handler returns.
 */
#ifndef KEEL_HTTP_H
#define KEEL_HTTP_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "keel/metrics.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct keel_http_server keel_http_server;
typedef struct keel_http_router keel_http_router;
typedef struct keel_http_req keel_http_req;
typedef struct keel_http_res keel_http_res;

/* ---- errors: typed, mapped to a status and the envelope's code ---------- */

typedef enum keel_http_error_kind {
  KEEL_HTTP_VALIDATION = 1, /* 400 VALIDATION_ERROR */
  KEEL_HTTP_BAD_REQUEST,    /* 400 BAD_REQUEST (malformed JSON, bad syntax) */
  KEEL_HTTP_UNAUTHORIZED,   /* 401 UNAUTHORIZED */
  KEEL_HTTP_FORBIDDEN,      /* 403 FORBIDDEN */
  KEEL_HTTP_NOT_FOUND,      /* 404 NOT_FOUND */
  KEEL_HTTP_METHOD_NOT_ALLOWED, /* 405 METHOD_NOT_ALLOWED */
  KEEL_HTTP_CONFLICT,       /* 409 CONFLICT */
  KEEL_HTTP_TOO_LARGE,      /* 413 PAYLOAD_TOO_LARGE */
  KEEL_HTTP_RATE_LIMITED,   /* 429 RATE_LIMITED */
  KEEL_HTTP_HEADERS_TOO_LARGE, /* 431 HEADERS_TOO_LARGE */
  KEEL_HTTP_INTERNAL,       /* 500 INTERNAL_ERROR: the message is logged, never sent */
  KEEL_HTTP_UNAVAILABLE,    /* 503 SERVICE_UNAVAILABLE */
  KEEL_HTTP_REQUEST_TIMEOUT, /* 408 REQUEST_TIMEOUT: the head or body did not come in time */
  KEEL_HTTP_UNPROCESSABLE,   /* 422 UNPROCESSABLE_ENTITY: well-formed, but cannot be done */
  KEEL_HTTP_GATEWAY_TIMEOUT, /* 504 GATEWAY_TIMEOUT: what it waited on did not answer in time */
  KEEL_HTTP_INSUFFICIENT_STORAGE, /* 507 INSUFFICIENT_STORAGE: no room to store it */
} keel_http_error_kind;

/* The status and envelope code of an error kind ("NOT_FOUND", ...). */
int keel_http_error_status(keel_http_error_kind kind);
const char *keel_http_error_code(keel_http_error_kind kind);

/* ---- handlers ------------------------------------------------------------ */

/* A handler fills res and returns 0. Returning a negative value without a
 * response (or after keel_http_fail) sends the error: a KEEL_E* code or any
 * other failure becomes 500 INTERNAL_ERROR. A handler that crashes (its
 * process exits abnormally) also gives 500; one that runs past the request
 * timeout gives 503 and is killed. */
typedef int (*keel_http_handler)(keel_http_req *req, keel_http_res *res, void *ud);

/* ---- the request (borrowed; valid until the handler returns) ------------ */

const char *keel_http_method(const keel_http_req *req);  /* "GET" */
const char *keel_http_path(const keel_http_req *req);    /* decoded path, no query */
const char *keel_http_query(const keel_http_req *req);   /* raw query without '?', or "" */
/* The value of query parameter `name` (percent-decoded), or NULL. */
const char *keel_http_query_param(keel_http_req *req, const char *name);
/* The route's pattern ("/api/orders/:id"), the value of path parameter
 * `name`, or NULL. */
const char *keel_http_route_pattern(const keel_http_req *req);
const char *keel_http_param(const keel_http_req *req, const char *name);
/* A request header's value (name case-insensitive; the first if repeated),
 * or NULL. */
const char *keel_http_header(const keel_http_req *req, const char *name);
/* The body (not NUL-terminated; *len gets its size). */
const void *keel_http_body(const keel_http_req *req, size_t *len);
/* The body parsed as JSON, any JSON text (an object, an array or a bare
 * scalar; strings may hold \u0000: use json_string_length), duplicate keys
 * refused (borrowed: do not decref), or NULL with *err set
 * to KEEL_EINVAL (malformed; the caller usually returns
 * keel_http_fail(res, KEEL_HTTP_BAD_REQUEST, ...)) or KEEL_ENOENT (empty). */
json_t *keel_http_json(keel_http_req *req, int *err);
const char *keel_http_request_id(const keel_http_req *req);
const char *keel_http_client_ip(const keel_http_req *req);

/* ---- the response -------------------------------------------------------- */

/* Adds a response header (copied). Errors: KEEL_EINVAL (bad name or a value
 * with CR/LF), KEEL_ENOMEM. */
int keel_http_set_header(keel_http_res *res, const char *name, const char *value);
/* Sets status and body (copied). */
int keel_http_reply(keel_http_res *res, int status, const char *content_type, const void *body,
                    size_t len);
int keel_http_reply_text(keel_http_res *res, int status, const char *content_type,
                         const char *body);
/* Sets status and a JSON body; steals the reference to body. */
int keel_http_reply_json(keel_http_res *res, int status, json_t *body);
/* Sets the error envelope for `kind` with message and details (details:
 * stolen reference or NULL). For KEEL_HTTP_INTERNAL the message goes to the
 * log with the request's context and the client gets a generic message.
 * Returns a negative value for the handler to return. */
int keel_http_fail(keel_http_res *res, keel_http_error_kind kind, const char *message,
                   json_t *details);

/* The envelope with any error status (400-599) and code (1-64 of A-Z, 0-9,
 * '_'), for statuses keel_http_error_kind does not name:
 *   return keel_http_fail_status(res, 451, "UNAVAILABLE_FOR_LEGAL_REASONS", "...", NULL);
 * 500 keeps its message for the log, as KEEL_HTTP_INTERNAL does. details is
 * stolen. Returns a negative value for the handler to return, or KEEL_EINVAL
 * (bad status or code: nothing is set). */
int keel_http_fail_status(keel_http_res *res, int status, const char *code, const char *message,
                          json_t *details);

/* Calls the gen_server registered as `server` with request (JSON, stolen;
 * NULL: an empty request) under tag, waiting up to timeout_ms (keel/runtime.h;
 * 0: KEEL_GS_DEFAULT_TIMEOUT). On 0, *reply is the reply (a new reference the
 * handler releases, or NULL for an empty reply). When the call fails, res
 * already holds the answer and the code is returned, so a handler is:
 *
 *   json_t *r;
 *   if (keel_http_call(res, "kv", KV_GET, json_pack("{s:s}", "key", k), &r, 0) < 0) return 0;
 *
 * no such server: 503 SERVICE_UNAVAILABLE ("kv is not running"); it died
 * during the call: 503 (its exit reason goes to the log, not to the client);
 * no answer in time: 504 GATEWAY_TIMEOUT; a reply that is not JSON, or no
 * memory: 500. */
int keel_http_call(keel_http_res *res, const char *server, uint32_t tag, json_t *request,
                   json_t **reply, int64_t timeout_ms);

/* ---- router -------------------------------------------------------------- */

keel_http_router *keel_http_router_new(void);
void keel_http_router_free(keel_http_router *r);
/* Adds a route. pattern: segments separated by '/', a segment ":name" binds a
 * path parameter, a last segment "*" matches the rest. A known path with an
 * unknown method answers 405 with Allow. Errors: KEEL_EINVAL (bad method or
 * pattern), KEEL_EEXIST (same method and pattern), KEEL_ENOMEM. */
int keel_http_route(keel_http_router *r, const char *method, const char *pattern,
                    keel_http_handler fn, void *ud);

/* ---- server -------------------------------------------------------------- */

/* Every field's zero is its default: a zeroed struct is a working server
 * (on an ephemeral port, with request ids, the access log and the security
 * headers on, rate limiting and CORS off). Timeouts follow keel/runtime.h:
 * 0 is the default shown. KEEL_INFINITY (none) is taken by
 * request_timeout_ms and slow_request_ms only: the connection timeouts
 * (header, body, keep-alive, send) must end, or one client holds a
 * connection forever, so they refuse it (KEEL_EINVAL). */
typedef struct keel_http_opts {
  const char *host;   /* NULL: "0.0.0.0" */
  int port;           /* 0: an ephemeral port (keel_http_port tells which) */
  bool no_listen_fds; /* do not take sockets from systemd (LISTEN_FDS/LISTEN_PID) */
  const char *name;   /* for logs and metrics; NULL: "api" */
  size_t max_header_bytes; /* request line + headers; 0: 16 KiB -> 431 */
  size_t max_body_bytes;   /* 0: 1 MiB -> 413 */
  /* a request's head must be complete within this of its first byte (or of
   * the accept): 408 and close; bytes that do not complete it never extend
   * it; 0: 10 s */
  int64_t header_timeout_ms;
  int64_t body_timeout_ms;      /* idle time allowed while reading a body: 408; 0: 10 s */
  int64_t keepalive_timeout_ms; /* idle keep-alive connection closed after; 0: 5 s */
  int64_t request_timeout_ms;   /* handler time before 503; 0: 30 s; KEEL_INFINITY: none */
  /* a client that reads none of its answers for this long while they are
   * backed up is closed; 0: 30 s */
  int64_t send_timeout_ms;
  /* descriptors kept free for everything else (probes, logs, outgoing
   * connections): the server stops accepting for a back-off when an
   * accepted connection leaves fewer than this under the soft
   * RLIMIT_NOFILE (at most a quarter of the limit); 0: 64 (the admin port
   * 16, so probes still answer while the API sheds); < 0: none */
  int fd_reserve;
  size_t handler_stack_size; /* handler process stacks; 0: the runtime default */
  /* middleware */
  bool no_request_id;      /* do not take or make X-Request-Id */
  bool no_trace;           /* make no server spans (keel/trace.h; traceparent still goes on);
                              the admin port sets it: probes and scrapes are not traced */
  bool no_access_log;      /* write no access log line */
  int64_t slow_request_ms; /* warn above; 0: 1000; KEEL_INFINITY: never */
  keel_metrics *metrics;   /* register http_* metrics here; NULL: none */
  int rate_limit;          /* requests per client IP per window; 0: off */
  int64_t rate_window_ms;  /* 0: 60000 */
  size_t rate_max_clients; /* bounded memory: clients tracked at most; 0: 100000 */
  bool trust_proxy;        /* believe X-Forwarded-For */
  bool no_security_headers;    /* send none of the security headers */
  bool no_hsts;                /* no Strict-Transport-Security */
  const char *csp;             /* Content-Security-Policy; NULL: a strict default */
  const char *cors_origins;    /* comma-separated allow-list; NULL/"": CORS off */
  bool no_cors_credentials;    /* no Access-Control-Allow-Credentials */
  int64_t cors_max_age_s;      /* preflight cache; 0: 600 */
  /* paths that skip rate limiting (prefix match, comma-separated);
   * NULL: "/health,/metrics,/internal/" */
  const char *rate_limit_skip;
} keel_http_opts;

/* Sets *o to the defaults: all zero. */
void keel_http_opts_init(keel_http_opts *o);

/* Starts the server: binds, listens on every scheduler and returns. The
 * server takes ownership of `router` on success; on failure the caller keeps
 * it (keel_http_router_free). Requests may be served as soon as a listener is
 * up, before this returns *out. Call from a keel process. Errors, each with
 * an error log line "http listen failed" when binding failed:
 * KEEL_EADDRINUSE (the port is taken), KEEL_EIO (another socket error),
 * KEEL_EINVAL (bad options or an unresolvable host), KEEL_ENOTPROC,
 * KEEL_ENOMEM. */
int keel_http_start(const keel_http_opts *o, keel_http_router *router, keel_http_server **out);

/* The bound port (useful with port 0). */
int keel_http_port(const keel_http_server *s);

/* Graceful drain: closes every listener first, then answers requests in
 * flight normally but with Connection: close; an idle keep-alive connection
 * gets a 250 ms grace (a request already on its way is served, with
 * Connection: close) and is closed. Returns 0 when no request and no
 * connection is left, or KEEL_ETIMEDOUT after timeout_ms (0: 30 s;
 * KEEL_INFINITY) (keel_http_stop then cuts what is left). Call from a keel
 * process. */
int keel_http_drain(keel_http_server *s, int64_t timeout_ms);

/* Stops at once: closes the listeners and every connection, kills the
 * handlers still running (their answers would go nowhere), waits for them to
 * end, and frees the server. Call from a keel process. */
int keel_http_stop(keel_http_server *s);

/* Requests being handled now, and connections open now. Any thread. */
size_t keel_http_in_flight(const keel_http_server *s);
size_t keel_http_connections(const keel_http_server *s);

/* ---- the admin port ------------------------------------------------------- */

/* A second server for operators (see src/http/admin.c): GET /health/live,
 * /health/ready, /health/startup, /health (keel/health.h), /metrics (when
 * metrics is set; text or OpenMetrics by Accept) and /admin/observer (the
 * observer snapshot as JSON, unless no_observer). No rate limit, no CORS,
 * no access log unless asked. */
typedef struct keel_admin_opts {
  const char *host;      /* NULL: "0.0.0.0" */
  int port;              /* 0: ephemeral (services use HEALTH_PORT, 9090) */
  keel_metrics *metrics; /* served at /metrics; NULL: no /metrics */
  bool no_observer;      /* do not serve /admin/observer */
  bool access_log;       /* log probes too (off: they would bury the API's lines) */
  /* more routes on the admin port (e.g. keel_sub_admin_routes), added after
   * keel's; NULL: none. A negative return fails the start. */
  int (*routes)(keel_http_router *r, void *ud);
  void *routes_ud;
} keel_admin_opts;

void keel_admin_opts_init(keel_admin_opts *o);

/* Starts the admin server; stop it with keel_http_drain / keel_http_stop.
 * Call from a keel process. Errors as keel_http_start. */
int keel_admin_start(const keel_admin_opts *o, keel_http_server **out);

#ifdef __cplusplus
}
#endif
#endif
