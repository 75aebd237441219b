/* keel/http_client.h - an HTTP client for keel processes: libcurl on the
 * schedulers' libuv loops, with retries, a retry budget and a circuit
 * breaker per destination.
 *
 * A request blocks only the calling process: the transfer runs on the libuv
 * loop of the scheduler the process is on (libcurl's multi interface, its
 * sockets and timer driven by that loop), and the process waits pinned to
 * that scheduler until the answer is in. Each client keeps one libcurl multi
 * handle per scheduler, made on first use there, so connections (keep-alive,
 * TLS sessions, DNS answers) are reused by every request of that client on
 * that scheduler (docs/decisions/0017).
 *
 *   keel_http_client *c;
 *   keel_http_client_new(NULL, &c);                   // defaults
 *   keel_http_client_res res;
 *   keel_http_client_req rq = {.url = "http://inventory:8080/api/items/42"};
 *   int rc = keel_http_client_request(c, &rq, &res);  // in a keel process
 *   if (rc == 0 && res.status == 200) use(res.body, res.len);
 *   keel_http_client_res_free(&res);
 *
 * What a request does, in order: the destination's breaker is asked (open:
 * KEEL_EBUSY at once, nothing sent); the request is sent with the caller's
 * request id (X-Request-Id) and a traceparent continuing the caller's trace,
 * both taken from the process's log context unless given; a failure that is
 * safe to retry (a connection error or timeout, 502, 503, 504, 429) of an
 * idempotent method (GET HEAD PUT DELETE OPTIONS, or any with retry_unsafe)
 * is retried after an exponential backoff with full jitter (a 429's or 503's
 * Retry-After is honoured instead, up to retry_max_ms) while the client's
 * retry budget allows; each attempt is logged ("http client request", debug
 * level; warn for 5xx and errors) and counted in metrics.
 *
 * Results. 0 means an HTTP answer came, whatever its status (res->status);
 * a negative KEEL_E* means none did: KEEL_ETIMEDOUT (the connect or total
 * timeout of the last attempt), KEEL_EIO (could not connect, the connection
 * broke, TLS refused: res->error says what libcurl saw), KEEL_ERANGE (the
 * answer is longer than max_response_bytes), KEEL_EBUSY (the breaker is
 * open), KEEL_EINVAL (a bad argument or URL), KEEL_ENOMEM, KEEL_ENOTPROC.
 * A 5xx that was retried until the budget or attempts ran out returns 0 with
 * the last status.
 *
 * Metrics (when opts.metrics is set): http_client_requests_total{host,method,
 * status} per attempt (status is the code, or "error", "timeout", "too_large",
 * "open" for the breaker's refusals), http_client_request_duration_seconds
 * {host,method} per attempt, http_client_retries_total{host},
 * http_client_breaker_state{host} (0 closed, 1 open, 2 half-open).
 *
 * Threads: new and free as documented on them; requests from any keel
 * process, concurrently, on any scheduler.
 */
#ifndef KEEL_HTTP_CLIENT_H
#define KEEL_HTTP_CLIENT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "keel/metrics.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct keel_http_client keel_http_client;

/* Options of a client. Zeroed fields take the defaults in brackets;
 * timeouts follow keel/runtime.h (0 default, KEEL_INFINITY none). */
typedef struct keel_http_client_opts {
  const char *name;             /* for logs ["http_client"]; copied */
  keel_metrics *metrics;        /* register http_client_* here; NULL: none. Borrowed: it must
                                   outlive the client */
  const char *ca_file;          /* PEM bundle to verify servers with; NULL: the system's.
                                   Copied. Verification is always on unless insecure */
  bool insecure;                /* do not verify the server's certificate (tests only) */
  int64_t connect_timeout_ms;   /* per attempt [10000] */
  int64_t timeout_ms;           /* whole attempt, connect included [30000] */
  size_t max_response_bytes;    /* longer bodies are refused with KEEL_ERANGE [8 MiB] */
  int max_redirects;            /* redirects followed; 0: [0], none; > 0 that many */
  int max_retries;              /* retries after the first attempt [2]; < 0: none */
  int64_t retry_base_ms;        /* backoff: attempt n waits rand(0, min(max, base * 2^n)) [100] */
  int64_t retry_max_ms;         /* cap of a backoff and of a Retry-After [10000] */
  double retry_budget_ratio;    /* retries allowed per request sent, over time [0.2] */
  int retry_budget_min;         /* retries always allowed before the ratio applies [10] */
  bool no_breaker;              /* no circuit breaker */
  double breaker_failure_ratio; /* open when failures/calls in the window reach it [0.5] */
  int breaker_min_calls;        /* ... and at least this many calls were seen [20] */
  int64_t breaker_window_ms;    /* the window the ratio is taken over [10000] */
  int64_t breaker_open_ms;      /* open this long before probing (half-open) [5000] */
  int breaker_probes;           /* half-open: probes let through; all must succeed [1] */
  bool access_log;              /* log each attempt at info level instead of debug */
} keel_http_client_opts;

/* Creates a client. o may be NULL (defaults); it is copied. The runtime must
 * be running (the client keeps a slot per scheduler). *out is owned by the
 * caller: keel_http_client_free. Errors: KEEL_EINVAL, KEEL_ESTATE (runtime
 * not running), KEEL_ENOMEM, KEEL_EIO (libcurl failed to initialise). Any
 * thread. */
int keel_http_client_new(const keel_http_client_opts *o, keel_http_client **out);

/* Frees a client. Call it either from a keel process (requests in flight get
 * KEEL_ECANCELED, new ones too; its per-scheduler parts are closed on their
 * own schedulers; the call waits for that and for every caller to leave the
 * client), or after keel_rt_stop (requests that were in flight then are
 * freed with it). From a thread outside the runtime
 * while it runs, it cannot close the schedulers' parts: it says so on stderr
 * and leaks the client. NULL is accepted. */
void keel_http_client_free(keel_http_client *c);

/* A request. Borrowed for the call. Zeroed fields take the client's values. */
typedef struct keel_http_client_req {
  const char *method;         /* NULL: "GET", or "POST" when there is a body */
  const char *url;            /* http:// or https:// (required) */
  const char *const *headers; /* "Name: value" strings, NULL-terminated; NULL: none */
  const void *body;           /* NULL: none */
  size_t body_len;
  const char *content_type;   /* for the body; NULL: none (or "application/json" from the
                                 JSON helper) */
  int64_t connect_timeout_ms; /* 0: the client's */
  int64_t timeout_ms;         /* 0: the client's */
  size_t max_response_bytes;  /* 0: the client's */
  int max_redirects;          /* 0: the client's; < 0: none */
  int max_retries;            /* 0: the client's; < 0: none */
  bool retry_unsafe;          /* retry a non-idempotent method too (it is safe for this call) */
  const char *request_id;     /* NULL: the log context's requestId, if any */
  const char *traceparent;    /* NULL: the log context's traceparent, continued */
} keel_http_client_req;

typedef struct keel_http_client_res {
  int status; /* the last attempt's HTTP status, 0 when none came */
  char *body; /* malloc'd, NUL-terminated (not counted in len); NULL when empty */
  size_t len;
  char **hname, **hval; /* the last answer's headers, names lowercased */
  size_t nh;
  int attempts;    /* attempts made */
  char error[256]; /* what went wrong when the call failed ("" otherwise) */
} keel_http_client_res;

/* Sends a request and waits for its answer (see the top of this file).
 * *res is filled on success and on failure (status 0, error set); free it
 * with keel_http_client_res_free either way. Needs a keel process. */
int keel_http_client_request(keel_http_client *c, const keel_http_client_req *rq,
                             keel_http_client_res *res);

/* JSON in and out: sends `body` (may be NULL; taken: decref'd by the call)
 * with Content-Type application/json and Accept application/json, and parses
 * the answer's body into *json (new reference, the caller decrefs; NULL when
 * the body is empty). rq may be NULL (method and url then given here);
 * method/url override rq's when not NULL. Errors: as request, and KEEL_EINVAL
 * when the answer is not JSON (res is kept for a look at it). */
int keel_http_client_json(keel_http_client *c, const char *method, const char *url,
                          const keel_http_client_req *rq, json_t *body, keel_http_client_res *res,
                          json_t **json);

/* The value of an answer's header (name case-insensitive, the first), or NULL. */
const char *keel_http_client_res_header(const keel_http_client_res *res, const char *name);

/* Frees what res holds and zeroes it. NULL is accepted. */
void keel_http_client_res_free(keel_http_client_res *res);

/* Breaker states, as http_client_breaker_state reports them. */
typedef enum keel_http_breaker_state {
  KEEL_HTTP_BREAKER_CLOSED = 0,
  KEEL_HTTP_BREAKER_OPEN = 1,
  KEEL_HTTP_BREAKER_HALF_OPEN = 2,
} keel_http_breaker_state;

/* The breaker state of destination `origin` ("http://host:port", scheme and
 * port always written), CLOSED when unknown. Any thread. */
keel_http_breaker_state keel_http_client_breaker(keel_http_client *c, const char *origin);

/* Registers a readiness check named `name` (NULL: "http_client") in the
 * node's health registry (keel/health.h): degraded while a breaker is
 * half-open, down while one is open, naming the destinations. The client
 * must outlive the registration. Errors as keel_health_register. */
int keel_http_client_health_register(keel_http_client *c, const char *name);

#ifdef __cplusplus
}
#endif
#endif
