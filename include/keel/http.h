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

/* ---- streamed answers (Server-Sent Events) --------------------------------- */

/* Starts a streamed answer from inside the handler: writes the status line
 * and headers now (content_type, Cache-Control: no-store, Connection: close,
 * the request id, the security and middleware headers and those set with
 * keel_http_set_header so far; no Content-Length: the body ends when the
 * connection closes), and lifts the request timeout. The handler then
 * writes with keel_http_stream_write for as long as it likes; when it
 * returns, the connection is closed once the bytes are out. Nothing the
 * handler returns afterwards is sent. max_queued bounds what the server
 * keeps for a client that does not read (bytes written and not yet taken
 * by the kernel, whose send buffer for this connection is set to the same
 * size): 0: 256 KiB; at least 4 KiB. Call only from the handler's own
 * process. Errors: KEEL_EINVAL (status outside 200-599, bad content type),
 * KEEL_ENOTPROC (not the handler's process), KEEL_ESTATE (already answered
 * or streaming), KEEL_EIO (the client is gone), KEEL_ECANCELED (the server
 * drains or stops), KEEL_ENOMEM. */
int keel_http_stream_begin(keel_http_req *req, int status, const char *content_type,
                           size_t max_queued);

/* Writes len bytes of a streamed answer (copied). Never waits: a client
 * that has more than max_queued bytes unread is cut off at once
 * (KEEL_EBUSY: the connection is closed, stop writing). Errors: KEEL_EINVAL,
 * KEEL_ENOTPROC, KEEL_ESTATE (not streaming), KEEL_EIO (the client closed or
 * reset the connection), KEEL_ECANCELED (the server drains or stops: return
 * from the handler), KEEL_EBUSY, KEEL_ENOMEM. */
int keel_http_stream_write(keel_http_req *req, const void *data, size_t len);

/* Whether a streamed answer can still be written (the client is there and
 * the server is not draining). The handler's process only. */
bool keel_http_stream_open(keel_http_req *req);

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

/* A second server for operators (see src/http/admin.c, docs/dashboard.md):
 * GET /health/live, /health/ready, /health/startup, /health (keel/health.h),
 * /metrics (when metrics is set; text or OpenMetrics by Accept); unless
 * no_observer: /admin/observer (the observer snapshot as JSON), the admin
 * API under /admin/ (overview, processes, tree, alerts, logs, HTTP, panels,
 * the event stream /admin/events, and the actions: kill a process, restart
 * or terminate a supervisor's child, set the log level) and the dashboard
 * (GET /dashboard). No rate limit (but on actions), no CORS, no access log
 * unless asked.
 *
 * Auth: with token set, actions need "Authorization: Bearer <token>" (401
 * without it), and so do the reads unless read_open; the probes and /metrics
 * stay open. Without a token every action answers 403 ("actions are off")
 * and the reads are open. The token is compared in constant time and never
 * taken from a cookie or the URL. Routes added by the routes hook are
 * guarded the same way (GET and HEAD as reads, other methods as actions). */
typedef struct keel_admin_opts {
  const char *host;      /* NULL: "0.0.0.0" */
  int port;              /* 0: ephemeral (services use HEALTH_PORT, 9090) */
  keel_metrics *metrics; /* served at /metrics, and read by /admin/http; NULL: neither */
  bool no_observer;      /* serve only the probes and /metrics: no /admin/, no dashboard */
  bool no_dashboard;     /* serve the admin API but not the page */
  bool access_log;       /* log probes too (off: they would bury the API's lines) */
  const char *token;     /* ADMIN_TOKEN (copied); NULL or "": actions off */
  bool read_open;        /* ADMIN_READ_OPEN: reads need no token even when one is set */
  int max_streams;       /* ADMIN_MAX_STREAMS: event streams open at once; 0: 8 */
  size_t stream_max_queued;  /* unread bytes kept per stream before it is dropped; 0: 256 KiB */
  int64_t stats_interval_ms; /* the event stream's stats period; 0: 1000 */
  int action_rate_limit;     /* actions per client address per minute; 0: 30; < 0: none */
  const char *service_name;  /* shown by the overview; NULL: "keel" */
  const char *version;       /* likewise; NULL: "" */
  /* more routes on the admin port (e.g. keel_sub_admin_routes), added after
   * keel's; NULL: none. A negative return fails the start. */
  int (*routes)(keel_http_router *r, void *ud);
  void *routes_ud;
} keel_admin_opts;

void keel_admin_opts_init(keel_admin_opts *o);

/* Starts the admin server; stop it with keel_http_drain / keel_http_stop.
 * Call from a keel process. Errors as keel_http_start. */
int keel_admin_start(const keel_admin_opts *o, keel_http_server **out);

/* ---- dashboard panels ------------------------------------------------------ */

/* A later module shows itself on the dashboard without editing the page: it
 * registers a panel, a name and a title with a provider of JSON text, and
 * the page renders it generically (an object as a table of its members, an
 * array of objects as a table with a column per member; GET /admin/panels
 * lists them, GET /admin/panels/:name calls the provider). The provider
 * returns malloc'd JSON text (keel frees it; NULL or invalid JSON shows as
 * null); it runs in the admin request's process under the panel table's
 * read lock, so it must not wait (no receive, call, sleep, I/O or database
 * query: a process that waits may resume on another thread, which could not
 * release the lock); read figures kept up to date elsewhere.
 * Registering a name again replaces the provider. Unregistering returns once
 * no request is inside the old provider, so ud may be freed afterwards (not
 * from inside the provider). name: 1-32 of [a-z0-9_-]; title: 1-64 bytes
 * (copied). Errors: KEEL_EINVAL, KEEL_ENOENT (unregistering an unknown
 * name), KEEL_ERANGE (KEEL_ADMIN_MAX_PANELS already), KEEL_ENOMEM. Any
 * thread. */
#define KEEL_ADMIN_MAX_PANELS 32
typedef char *(*keel_admin_panel_fn)(void *ud);
int keel_admin_panel_register(const char *name, const char *title, keel_admin_panel_fn fn,
                              void *ud);
int keel_admin_panel_unregister(const char *name);

#ifdef __cplusplus
}
#endif
#endif
