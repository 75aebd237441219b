/* client.c - the HTTP client's public face: options, the retry loop with
 * its budget, the trace headers, JSON in and out.
 *
 * keel_http_client_request resolves the request against the client's
 * options, then loops over attempts: ask the destination's breaker, run one
 * attempt on this scheduler (client_engine.c), record it (client_obs.c, the
 * breaker), and decide whether to try again. A retry needs all of: attempts
 * left, a safe failure (no answer at all, or 502/503/504/429), an idempotent
 * method or the caller's retry_unsafe, and a token from the client's retry
 * budget. The budget is a bucket of retry_budget_min tokens that each first
 * attempt refills by retry_budget_ratio: when a destination fails for
 * everyone, retries stop at that ratio of the traffic instead of multiplying
 * it. The wait before a retry is the server's Retry-After when it gave one
 * (429, 503), else full jitter: a uniform draw in [0, min(retry_max_ms,
 * retry_base_ms * 2^retry)] (the AWS architecture blog's "Exponential
 * Backoff And Jitter": it spreads synchronised clients best).
 *
 * The request id and traceparent come from the calling process's log
 * context (the HTTP server puts requestId and traceparent there for its
 * handlers) unless the caller gives them; the traceparent sent continues
 * the caller's trace with a new span id.
 */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "http/client_internal.h"
#include "http/middleware.h"
#include "keel/error.h"
#include "keel/io.h"
#include "keel/log.h"
#include "keel/message.h"
#include "keel/process.h"
#include "keel/runtime.h"
#include "keel/trace.h"
#include "ops/trace_internal.h"

/* ---- the client --------------------------------------------------------------- */

#define OR_DEFAULT(field, dflt)                                                                    \
  do {                                                                                             \
    if (o->field == 0) o->field = (dflt);                                                          \
  } while (0)

static int resolve_opts(keel_http_client_opts *o) {
  OR_DEFAULT(connect_timeout_ms, 10000);
  OR_DEFAULT(timeout_ms, 30000);
  OR_DEFAULT(max_response_bytes, (size_t)8 << 20);
  OR_DEFAULT(max_retries, 2);
  OR_DEFAULT(retry_base_ms, 100);
  OR_DEFAULT(retry_max_ms, 10000);
  OR_DEFAULT(retry_budget_ratio, 0.2);
  OR_DEFAULT(retry_budget_min, 10);
  OR_DEFAULT(breaker_failure_ratio, 0.5);
  OR_DEFAULT(breaker_min_calls, 20);
  OR_DEFAULT(breaker_window_ms, 10000);
  OR_DEFAULT(breaker_open_ms, 5000);
  OR_DEFAULT(breaker_probes, 1);
  if (o->max_retries < 0) o->max_retries = 0;
  if (o->max_redirects < 0) o->max_redirects = 0;
  if ((o->connect_timeout_ms < 0 && o->connect_timeout_ms != KEEL_INFINITY) ||
      (o->timeout_ms < 0 && o->timeout_ms != KEEL_INFINITY) || o->retry_base_ms < 0 ||
      o->retry_max_ms < 0 || o->retry_budget_ratio < 0 || o->retry_budget_min < 0 ||
      o->breaker_failure_ratio < 0 || o->breaker_failure_ratio > 1 || o->breaker_min_calls < 0 ||
      o->breaker_window_ms < 0 || o->breaker_open_ms < 0 || o->breaker_probes < 0)
    return KEEL_EINVAL;
  return 0;
}
#undef OR_DEFAULT

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;
static void curl_init(void) {
  curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

int keel_http_client_new(const keel_http_client_opts *opts, keel_http_client **out) {
  if (!out) return KEEL_EINVAL;
  *out = NULL;
  int n = keel_sched_count();
  if (n <= 0) return KEEL_ESTATE;
  pthread_once(&curl_once, curl_init);
  if (curl_init_rc != CURLE_OK) return KEEL_EIO;
  keel_http_client *c = calloc(1, sizeof *c);
  if (!c) return KEEL_ENOMEM;
  if (opts) c->o = *opts;
  int rc = resolve_opts(&c->o);
  if (rc) {
    free(c);
    return rc;
  }
  c->name = strdup(c->o.name ? c->o.name : "http_client");
  c->ca_file = c->o.ca_file ? strdup(c->o.ca_file) : NULL;
  c->o.name = c->name;
  c->o.ca_file = c->ca_file;
  c->nsched = n;
  c->engines = calloc((size_t)n, sizeof *c->engines);
  c->breakers = keel__hc_breakers_new();
  pthread_mutex_init(&c->budget_lock, NULL);
  c->budget = c->o.retry_budget_min;
  rc = (!c->name || (opts && opts->ca_file && !c->ca_file) || !c->engines || !c->breakers)
           ? KEEL_ENOMEM
           : keel__hc_metrics_register(c);
  if (rc) {
    keel_http_client_free(c);
    return rc;
  }
  *out = c;
  return 0;
}

typedef struct closer_arg {
  keel__hc_engine *e;
} closer_arg;

static void closer_main(void *arg) {
  keel__hc_engine_close(((closer_arg *)arg)->e, false);
}

/* From a process: each engine is closed by a process pinned to its
 * scheduler, since its handles belong to that loop. */
static void close_engines_in_runtime(keel_http_client *c) {
  for (int i = 0; i < c->nsched; i++) {
    if (!c->engines[i]) continue;
    closer_arg a = {c->engines[i]};
    keel_ref_t ref = 0;
    keel_spawn_opts so;
    keel_spawn_opts_init(&so);
    so.scheduler = KEEL_ON_SCHEDULER(i);
    so.pin = true;
    so.monitor = true;
    so.await_monitor = true;
    so.monitor_ref = &ref;
    so.name = "http_client_close";
    keel_hold_exits(true); /* the closer reads `a` on our stack */
    if (keel_spawn(closer_main, &a, &so, NULL) == 0) {
      keel_msg_t *m = NULL;
      keel_await(ref, &m, KEEL_INFINITY);
      keel_msg_free(m);
    } /* a failed spawn disarmed the ref */
    keel_hold_exits(false);
    c->engines[i] = NULL;
  }
  /* callers woken with KEEL_ECANCELED are still on their way out */
  while (atomic_load_explicit(&c->active, memory_order_acquire) > 0)
    keel_sleep(1);
}

void keel_http_client_free(keel_http_client *c) {
  if (!c) return;
  atomic_store(&c->closing, true);
  if (c->engines && keel_self() == 0 && keel_sched_count() > 0) {
    /* a thread outside the runtime while it runs: the loops are busy and
     * not ours to touch; leaking is the only safe thing left */
    fprintf(stderr, "keel_http_client_free: call it from a keel process or after "
                    "keel_rt_stop (the client is leaked)\n");
    return;
  }
  if (c->engines) {
    if (keel_self() != 0) {
      close_engines_in_runtime(c);
    } else { /* after keel_rt_stop: the loops are gone */
      for (int i = 0; i < c->nsched; i++)
        keel__hc_engine_close(c->engines[i], true);
    }
  }
  free(c->engines);
  keel__hc_breakers_free(c->breakers);
  pthread_mutex_destroy(&c->budget_lock);
  free(c->name);
  free(c->ca_file);
  free(c);
}

/* ---- answers ------------------------------------------------------------------- */

void keel__hc_res_clear_answer(keel_http_client_res *res) {
  free(res->body);
  for (size_t i = 0; i < res->nh; i++) {
    free(res->hname[i]);
    free(res->hval[i]);
  }
  free(res->hname);
  free(res->hval);
  res->body = NULL;
  res->len = 0;
  res->hname = res->hval = NULL;
  res->nh = 0;
}

void keel_http_client_res_free(keel_http_client_res *res) {
  if (!res) return;
  keel__hc_res_clear_answer(res);
  memset(res, 0, sizeof *res);
}

const char *keel_http_client_res_header(const keel_http_client_res *res, const char *name) {
  if (!res || !name) return NULL;
  for (size_t i = 0; i < res->nh; i++)
    if (strcasecmp(res->hname[i], name) == 0) return res->hval[i];
  return NULL;
}

/* ---- retries ---------------------------------------------------------------------- */

static bool idempotent(const char *m) {
  static const char *const safe[] = {"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"};
  for (size_t i = 0; i < sizeof safe / sizeof *safe; i++)
    if (strcmp(m, safe[i]) == 0) return true;
  return false;
}

static bool retryable(int rc, int status) {
  if (rc == KEEL_EIO || rc == KEEL_ETIMEDOUT) return true;
  return rc == 0 && (status == 502 || status == 503 || status == 504 || status == 429);
}

static bool budget_take(keel_http_client *c) {
  pthread_mutex_lock(&c->budget_lock);
  bool ok = c->budget >= 1.0;
  if (ok) c->budget -= 1.0;
  pthread_mutex_unlock(&c->budget_lock);
  return ok;
}

static void budget_refill(keel_http_client *c) {
  pthread_mutex_lock(&c->budget_lock);
  c->budget += c->o.retry_budget_ratio;
  if (c->budget > c->o.retry_budget_min) c->budget = c->o.retry_budget_min;
  pthread_mutex_unlock(&c->budget_lock);
}

/* Retry-After (RFC 9110 10.2.3): delay-seconds or an HTTP-date; -1 when
 * absent or unreadable. */
static int64_t retry_after_ms(const keel_http_client_res *res) {
  const char *v = keel_http_client_res_header(res, "retry-after");
  if (!v || !*v) return -1;
  char *end;
  long long s = strtoll(v, &end, 10);
  if (end != v && *end == '\0') return s < 0 ? -1 : s * 1000;
  time_t t = curl_getdate(v, NULL);
  if (t < 0) return -1;
  time_t now = time(NULL);
  return t <= now ? 0 : (int64_t)(t - now) * 1000;
}

static int64_t backoff_ms(const keel_http_client_opts *o, int retry) {
  int64_t cap = o->retry_base_ms;
  for (int i = 0; i < retry && cap < o->retry_max_ms; i++)
    cap *= 2;
  if (cap > o->retry_max_ms) cap = o->retry_max_ms;
  if (cap <= 0) return 0;
  return (int64_t)arc4random_uniform((uint32_t)(cap > UINT32_MAX - 1 ? UINT32_MAX - 1 : cap) + 1);
}

static void sleeper_abandon(void *arg) {
  keel_http_client *c = arg;
  atomic_fetch_sub_explicit(&c->active, 1, memory_order_acq_rel);
}

/* keel_sleep, but a caller killed meanwhile still leaves the count of
 * requests in flight (keel_http_client_free waits for it to reach 0). */
static void backoff_sleep(keel_http_client *c, int64_t ms) {
  keel_io_t io;
  if (keel_io_begin(&io) != 0) return;
  keel_io_on_abandon(&io, sleeper_abandon, c);
  keel_io_wait(&io, ms); /* nobody calls ready: it returns KEEL_ETIMEDOUT after ms */
  keel_io_end(&io);
}

/* ---- trace context -------------------------------------------------------------- */

typedef struct trace_ids {
  char request_id[130];
  char traceparent[56];
  const char *tracestate;
  keel_span span; /* the client span, when traced */
  bool traced;
} trace_ids;

/* The request's client span: a child of the caller's current span (or a new
 * trace when tracing runs and none is current); traceparent and tracestate
 * are sent from it. Not current: nothing runs in this process meanwhile. */
static bool client_span_begin(const keel_http_client_req *rq, trace_ids *t, const char *method) {
  if (rq->traceparent || keel__trace_suppressed()) return false;
  if (!keel_span_current() && !keel_trace_started()) return false;
  keel_span_opts so = {.no_current = true};
  keel_span_start(&t->span, method, KEEL_SPAN_CLIENT, &so);
  keel_trace_format(&t->span.ctx, t->traceparent);
  t->tracestate = t->span.ctx.tracestate;
  t->traced = true;
  return true;
}

static void trace_from_context(const keel_http_client_req *rq, trace_ids *t, const char *method) {
  t->request_id[0] = t->traceparent[0] = '\0';
  t->tracestate = NULL;
  t->traced = false;
  bool spanned = client_span_begin(rq, t, method);
  const char *rid = rq->request_id, *tp = spanned ? "" : rq->traceparent;
  json_t *ctx = NULL;
  if (!rid || !tp) {
    char *s = keel_log_context_get();
    if (s && strcmp(s, "{}") != 0) ctx = json_loads(s, 0, NULL);
    free(s);
    if (!rid) rid = json_string_value(json_object_get(ctx, "requestId"));
    if (!tp) tp = json_string_value(json_object_get(ctx, "traceparent"));
  }
  if (rid && keel__reqid_valid(rid)) snprintf(t->request_id, sizeof t->request_id, "%s", rid);
  keel__traceparent in;
  if (!spanned && tp && keel__traceparent_parse(tp, &in)) {
    char span[17];
    keel__traceparent_next(&in, t->traceparent, span);
  }
  json_decref(ctx);
}

/* OpenTelemetry's HTTP client conventions; 4xx and 5xx and transport
 * errors are errors for a client. */
static void client_span_end(trace_ids *t, const keel__hc_attempt *a, const char *host, int rc,
                            const keel_http_client_res *res) {
  if (!t->traced) return;
  keel_span *sp = &t->span;
  if (keel_span_recording(sp)) {
    keel_span_set(sp, KEEL_STR("http.request.method", a->method), KEEL_STR("url.full", a->url));
    const char *colon = strrchr(host, ':');
    if (colon && host[0] != '[') {
      char h[280];
      snprintf(h, sizeof h, "%.*s", (int)(colon - host), host);
      keel_span_set(sp, KEEL_STR("server.address", h), KEEL_INT("server.port", atoi(colon + 1)));
    } else {
      keel_span_set_str(sp, "server.address", host);
    }
    if (res->attempts > 1) keel_span_set_int(sp, "http.request.resend_count", res->attempts - 1);
    if (rc == 0) keel_span_set_int(sp, "http.response.status_code", res->status);
    if (rc != 0 || res->status >= 400) {
      char code[16];
      snprintf(code, sizeof code, "%d", res->status);
      keel_span_set_str(sp, "error.type", rc ? keel_err_name(rc) : code);
      keel_span_set_status(sp, KEEL_SPAN_ERROR, rc ? res->error : NULL);
    }
  }
  keel_span_end(sp);
}

/* ---- the request ------------------------------------------------------------------- */

static int64_t pick_timeout(int64_t req, int64_t client) {
  int64_t t = req ? req : client;
  return t == KEEL_INFINITY ? 0 : t;
}

int keel_http_client_request(keel_http_client *c, const keel_http_client_req *rq,
                             keel_http_client_res *res) {
  if (res) memset(res, 0, sizeof *res);
  if (!c || !rq || !rq->url || !res) return KEEL_EINVAL;
  if (keel_self() == 0) return KEEL_ENOTPROC;
  char origin[300], host[280];
  if (keel__hc_origin(rq->url, origin, sizeof origin, host, sizeof host) != 0) {
    snprintf(res->error, sizeof res->error, "not an http(s) URL");
    return KEEL_EINVAL;
  }
  atomic_fetch_add(&c->active, 1); /* seq_cst: see closing in client_internal.h */
  if (atomic_load(&c->closing)) {
    atomic_fetch_sub_explicit(&c->active, 1, memory_order_acq_rel);
    snprintf(res->error, sizeof res->error, "cancelled: the client is closing");
    return KEEL_ECANCELED;
  }
  trace_ids t;
  const char *method = rq->method ? rq->method : rq->body ? "POST" : "GET";
  trace_from_context(rq, &t, method);
  keel__hc_attempt a = {
      .method = method,
      .url = rq->url,
      .headers = rq->headers,
      .content_type = rq->content_type,
      .request_id = t.request_id[0] ? t.request_id : NULL,
      .traceparent = t.traceparent[0] ? t.traceparent : NULL,
      .tracestate = t.tracestate,
      .body = rq->body,
      .body_len = rq->body_len,
      .connect_timeout_ms = pick_timeout(rq->connect_timeout_ms, c->o.connect_timeout_ms),
      .timeout_ms = pick_timeout(rq->timeout_ms, c->o.timeout_ms),
      .max_bytes = rq->max_response_bytes ? rq->max_response_bytes : c->o.max_response_bytes,
      .max_redirects = rq->max_redirects < 0 ? 0
                       : rq->max_redirects   ? rq->max_redirects
                                             : c->o.max_redirects,
  };
  int max_retries = rq->max_retries < 0 ? 0 : rq->max_retries ? rq->max_retries : c->o.max_retries;
  bool may_retry = rq->retry_unsafe || idempotent(a.method);
  budget_refill(c);
  int rc = 0;
  for (int attempt = 0;; attempt++) {
    bool probe = false;
    int admit = keel__hc_breaker_admit(c, origin, &probe);
    if (admit) {
      keel__hc_observe(c, host, a.method, rq->url, 0, admit, 0, attempt + 1, "breaker open");
      if (attempt > 0) break; /* the last attempt's outcome stands */
      rc = admit;
      snprintf(res->error, sizeof res->error, "circuit breaker open for %.200s", origin);
      break;
    }
    res->attempts = attempt + 1;
    res->error[0] = '\0';
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    rc = keel__hc_attempt_run(c, &a, res);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    if (rc == KEEL_ECANCELED) break;
    bool failed =
        (rc < 0 && rc != KEEL_ERANGE && rc != KEEL_EINVAL) || (rc == 0 && res->status >= 500);
    keel__hc_breaker_record(c, origin, !failed, probe);
    keel__hc_observe(c, host, a.method, rq->url, rc == 0 ? res->status : 0, rc, secs, attempt + 1,
                     res->error);
    if (attempt >= max_retries || !may_retry || !retryable(rc, res->status)) break;
    int64_t wait = -1;
    if (rc == 0 && (res->status == 429 || res->status == 503)) {
      wait = retry_after_ms(res);
      if (wait > c->o.retry_max_ms) break; /* longer than we are willing to wait */
    }
    if (wait < 0) wait = backoff_ms(&c->o, attempt);
    if (!budget_take(c)) break;
    keel__hc_retry_count(c, host);
    if (wait > 0) backoff_sleep(c, wait);
    if (atomic_load(&c->closing)) {
      rc = KEEL_ECANCELED;
      snprintf(res->error, sizeof res->error, "cancelled: the client is closing");
      break;
    }
  }
  client_span_end(&t, &a, host, rc, res);
  atomic_fetch_sub_explicit(&c->active, 1, memory_order_acq_rel);
  return rc;
}

/* ---- JSON ------------------------------------------------------------------------------ */

int keel_http_client_json(keel_http_client *c, const char *method, const char *url,
                          const keel_http_client_req *rq, json_t *body, keel_http_client_res *res,
                          json_t **json) {
  if (json) *json = NULL;
  keel_http_client_req r = {0};
  if (rq) r = *rq;
  if (method) r.method = method;
  if (url) r.url = url;
  char *text = NULL;
  if (body) {
    text = json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(body);
    if (!text) {
      if (res) memset(res, 0, sizeof *res);
      return KEEL_ENOMEM;
    }
    r.body = text;
    r.body_len = strlen(text);
    if (!r.content_type) r.content_type = "application/json";
  }
  const char *hdrs[34];
  size_t n = 0;
  for (const char *const *h = r.headers; h && *h && n < 32; h++)
    hdrs[n++] = *h;
  hdrs[n++] = "Accept: application/json";
  hdrs[n] = NULL;
  r.headers = hdrs;
  int rc = keel_http_client_request(c, &r, res);
  free(text);
  if (rc || !json || !res->body || res->len == 0) return rc;
  json_error_t err;
  *json = json_loadb(res->body, res->len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &err);
  if (!*json) {
    snprintf(res->error, sizeof res->error, "the answer is not JSON: %s", err.text);
    return KEEL_EINVAL;
  }
  return 0;
}
