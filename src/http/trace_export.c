/* trace_export.c - the batch exporter: ended spans to an OTLP/HTTP collector.
 *
 * One thread of its own (not a keel process: decision 0035) exports in
 * batches of at most max_batch spans: on a periodic tick (the schedule
 * delay), when the queue says a batch's worth waits (keel__trace_set_waker:
 * one condition signal, not one per span), on a flush call, and once more
 * when it stops. A batch is encoded (trace_otlp.c) into a buffer the thread
 * reuses and POSTed as application/x-protobuf with libcurl, on this thread:
 * the schedulers that serve requests never encode, never post and never
 * free a batch. 429, 502, 503 and 504 (and a transport error: a collector
 * restarting refuses connections for a moment) are retried with exponential
 * backoff from 100 ms while the export timeout lasts; then the batch counts
 * as failed and is dropped. Spans never wait in the exporter beyond one
 * batch: the queue is the only buffer, and it is bounded.
 *
 * Stopping gives the thread a deadline (the drain budget): it exports what
 * is queued until then, and a transfer still running at the deadline is cut
 * (the transfer is driven with curl_multi_poll in slices of at most 50 ms,
 * so the cut is prompt). Flush and stop wait for the thread without blocking
 * a scheduler (keel_blocking) when called from a process.
 *
 * The thread is no keel process, so its HTTP requests make no spans and
 * carry no trace context.
 *
 * With KEEL_TRACE_EXPORT_CONSOLE each span becomes a log line instead
 * ("trace_span" event, JSON like every line), for a node without a collector.
 */
#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "keel/error.h"
#include "keel/io.h"
#include "keel/log.h"
#include "keel/process.h"
#include "keel/trace_export.h"
#include "http/http_internal.h"
#include "ops/trace_internal.h"

typedef struct exporter {
  keel_trace_export_opts o;
  char *endpoint, *service, *res_attrs;
  char **headers; /* "Name: value", NULL-terminated */
  struct curl_slist *hlist;
  CURLM *multi;
  CURL *easy; /* one handle for every POST: its connection stays open */
  keel__span_data **batch;
  uint8_t *buf; /* the encoded batch, reused */
  size_t buf_cap;
  pthread_t thread;
  bool was_cut; /* a transfer was cut by a stop's deadline */
} exporter;

static exporter *_Atomic g_exp; /* the running exporter's state (one per node) */

/* What the callers and the thread say to each other, under g_mu. Static, not
 * in the exporter: the queue's waker may signal after the exporter is gone. */
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv;      /* the thread waits here (CLOCK_MONOTONIC) */
static pthread_cond_t g_done_cv; /* callers wait here for a flush or the end */
static bool g_wake, g_finished, g_complete;
static uint64_t g_flush_asked, g_flush_done;
static atomic_bool g_stop;
static _Atomic int64_t g_export_timeout; /* the running exporter's, for flush */
static _Atomic int64_t g_stop_deadline;  /* monotonic ms */
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static CURLcode g_curl_rc;

static void once_init(void) {
  pthread_condattr_t a;
  pthread_condattr_init(&a);
  pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
  pthread_cond_init(&g_cv, &a);
  pthread_cond_init(&g_done_cv, &a);
  pthread_condattr_destroy(&a);
  g_curl_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct timespec abs_ts(int64_t ms) {
  return (struct timespec){.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000};
}

/* The queue's waker: a batch's worth waits. */
static void wake(void) {
  pthread_mutex_lock(&g_mu);
  g_wake = true;
  pthread_cond_signal(&g_cv);
  pthread_mutex_unlock(&g_mu);
}

/* deadline, or the stop's deadline when that is sooner. */
static int64_t cut(int64_t deadline) {
  if (!atomic_load(&g_stop)) return deadline;
  int64_t s = atomic_load(&g_stop_deadline);
  return s < deadline ? s : deadline;
}

/* ---- options ------------------------------------------------------------------------- */

static const char *env(const char *n) {
  const char *v = getenv(n);
  return v && *v ? v : NULL;
}

static int env_int(const char *name, int64_t min, int64_t max, int64_t *out, char *err,
                   size_t errcap) {
  const char *v = env(name);
  if (!v) return 0;
  char *end;
  errno = 0;
  long long n = strtoll(v, &end, 10);
  if (errno || *end || n < min || n > max) {
    snprintf(err, errcap, "%s: must be an integer between %lld and %lld, got %.64s", name,
             (long long)min, (long long)max, v);
    return KEEL_EINVAL;
  }
  *out = n;
  return 0;
}

int keel_trace_export_opts_from_env(keel_trace_export_opts *o, char *err, size_t errcap) {
  if (!o) return KEEL_EINVAL;
  memset(o, 0, sizeof *o);
  char dummy[8];
  if (!err) err = dummy, errcap = sizeof dummy;
  err[0] = '\0';
  const char *e = env("OTEL_TRACES_EXPORTER");
  if (e) {
    if (strcmp(e, "otlp") == 0)
      o->exporter = KEEL_TRACE_EXPORT_OTLP;
    else if (strcmp(e, "console") == 0 || strcmp(e, "logging") == 0)
      o->exporter = KEEL_TRACE_EXPORT_CONSOLE;
    else if (strcmp(e, "none") == 0)
      o->exporter = KEEL_TRACE_EXPORT_NONE;
    else {
      snprintf(err, errcap, "OTEL_TRACES_EXPORTER: must be otlp, console or none, got %.64s", e);
      return KEEL_EINVAL;
    }
  }
  o->endpoint = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
  o->base_endpoint = env("OTEL_EXPORTER_OTLP_ENDPOINT");
  for (const char *u = o->endpoint ? o->endpoint : o->base_endpoint; u; u = NULL)
    if (strncmp(u, "http://", 7) != 0 && strncmp(u, "https://", 8) != 0) {
      snprintf(err, errcap, "%s: must be an http:// or https:// URL, got %.64s",
               o->endpoint ? "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" : "OTEL_EXPORTER_OTLP_ENDPOINT",
               u);
      return KEEL_EINVAL;
    }
  o->headers = env("OTEL_EXPORTER_OTLP_TRACES_HEADERS");
  if (!o->headers) o->headers = env("OTEL_EXPORTER_OTLP_HEADERS");
  o->service_name = env("OTEL_SERVICE_NAME");
  o->resource_attrs = env("OTEL_RESOURCE_ATTRIBUTES");
  int64_t v = 0;
  int rc = env_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 1, 1 << 20, &v, err, errcap);
  if (!rc) o->max_batch = (int)v, v = 0;
  if (!rc) rc = env_int("OTEL_BSP_SCHEDULE_DELAY", 1, 86400000, &v, err, errcap);
  if (!rc) o->schedule_delay_ms = v, v = 0;
  if (!rc) rc = env_int("OTEL_BSP_EXPORT_TIMEOUT", 1, 86400000, &v, err, errcap);
  if (!rc) o->export_timeout_ms = v;
  return rc;
}

/* "k1=v1,k2=v2" (values percent-encoded) as "k1: v1" header lines; a pair
 * with a character that could break a header line is skipped. */
static char **parse_headers(const char *list) {
  size_t n = 1;
  for (const char *p = list; p && *p; p++)
    n += *p == ',';
  char **h = calloc(n + 1, sizeof *h);
  if (!h) return NULL;
  size_t k = 0;
  for (const char *p = list; p && *p;) {
    const char *end = strchr(p, ',');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    const char *eq = memchr(p, '=', len);
    char line[1024];
    size_t o = 0;
    bool ok = eq && eq > p && len < sizeof line - 4;
    for (const char *c = p; ok && c < eq; c++)
      if (*c != ' ') line[o++] = *c;
    if (ok) line[o++] = ':', line[o++] = ' ';
    for (const char *c = eq + (ok ? 1 : 0); ok && c < p + len; c++) {
      char ch = *c;
      if (ch == '%' && c + 2 < p + len) {
        char hex[3] = {c[1], c[2], 0};
        char *e2;
        long x = strtol(hex, &e2, 16);
        if (!*e2) ch = (char)x, c += 2;
      }
      if ((unsigned char)ch < 0x20 || ch == 0x7f) ok = false;
      line[o++] = ch;
    }
    if (ok) {
      line[o] = '\0';
      h[k] = strdup(line);
      if (h[k]) k++;
    }
    p = end ? end + 1 : p + len;
  }
  return h;
}

static void exporter_free(exporter *x) {
  if (!x) return;
  if (x->easy) curl_easy_cleanup(x->easy);
  if (x->multi) curl_multi_cleanup(x->multi);
  curl_slist_free_all(x->hlist);
  free(x->buf);
  for (char **h = x->headers; h && *h; h++)
    free(*h);
  free(x->headers);
  free(x->endpoint);
  free(x->service);
  free(x->res_attrs);
  free(x->batch);
  free(x);
}

/* ---- one export ---------------------------------------------------------------------------- */

static bool retryable(int rc, int status) {
  if (rc == 0) return status == 429 || status == 502 || status == 503 || status == 504;
  return rc == KEEL_EIO || rc == KEEL_ETIMEDOUT;
}

static size_t discard(char *p, size_t size, size_t n, void *ud) {
  (void)p, (void)ud;
  return size * n;
}

/* One POST, driven until it ends or the deadline (or a stop's) passes.
 * 0 with *status, KEEL_ETIMEDOUT, KEEL_EIO (transport). */
static int transfer(exporter *x, const uint8_t *body, size_t len, int64_t deadline, long *status) {
  int64_t left = cut(deadline) - mono_ms();
  if (left <= 0) {
    if (cut(deadline) < deadline) x->was_cut = true;
    return KEEL_ETIMEDOUT;
  }
  CURL *e = x->easy;
  if (!e) return KEEL_EINVAL; /* OTEL_TRACES_EXPORTER=none: nothing to post to */
  curl_easy_setopt(e, CURLOPT_POSTFIELDS, (const char *)body);
  curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)left);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)left);
  if (curl_multi_add_handle(x->multi, e) != CURLM_OK) return KEEL_EIO;
  int running = 1, rc = KEEL_EIO;
  for (;;) {
    if (curl_multi_perform(x->multi, &running) != CURLM_OK) break;
    if (!running) break;
    int64_t wait = cut(deadline) - mono_ms();
    if (wait <= 0) { /* the deadline (or a stop's, sooner): the transfer is cut */
      rc = KEEL_ETIMEDOUT;
      break;
    }
    curl_multi_poll(x->multi, NULL, 0, wait < 50 ? (int)wait : 50, NULL);
  }
  int q;
  for (CURLMsg *m; (m = curl_multi_info_read(x->multi, &q));)
    if (m->msg == CURLMSG_DONE) {
      rc = m->data.result == CURLE_OK                   ? 0
           : m->data.result == CURLE_OPERATION_TIMEDOUT ? KEEL_ETIMEDOUT
                                                        : KEEL_EIO;
      if (!rc) curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, status);
    }
  curl_multi_remove_handle(x->multi, e);
  /* cut by the stop: by our check or by libcurl's timeout set from its deadline */
  if (rc == KEEL_ETIMEDOUT && cut(deadline) < deadline) x->was_cut = true;
  return rc;
}

/* Sleeps until `until`, or less when a stop's deadline comes first. */
static void backoff_sleep(int64_t until) {
  for (int64_t now; (now = mono_ms()) < cut(until);) {
    int64_t step = cut(until) - now;
    struct timespec ts = {.tv_sec = 0, .tv_nsec = (step < 20 ? step : 20) * 1000000};
    nanosleep(&ts, NULL);
  }
}

static bool post(exporter *x, const uint8_t *body, size_t len) {
  int64_t deadline = mono_ms() + x->o.export_timeout_ms, backoff = 100;
  for (;;) {
    long status = 0;
    int rc = transfer(x, body, len, deadline, &status);
    if (rc == 0 && status >= 200 && status < 300) return true;
    if (!retryable(rc, (int)status) || mono_ms() + backoff >= cut(deadline)) {
      keel_log_debug(NULL, "trace export failed", KEEL_STR("endpoint", x->endpoint),
                     KEEL_INT("status", status), KEEL_STR("error", rc ? keel_err_name(rc) : ""));
      return false;
    }
    backoff_sleep(mono_ms() + backoff);
    backoff = backoff * 2 > 5000 ? 5000 : backoff * 2;
  }
}

static void console(keel__span_data *const *spans, size_t n) {
  static const char *kinds[] = {"unspecified", "internal", "server",
                                "client",      "producer", "consumer"};
  static const char *codes[] = {"unset", "ok", "error"};
  for (size_t i = 0; i < n; i++) {
    const keel__span_data *d = spans[i];
    char tid[33], sid[17], pid[17];
    keel_trace_hex(d->trace_id, 16, tid);
    keel_trace_hex(d->span_id, 8, sid);
    keel_trace_hex(d->parent_id, 8, pid);
    keel_log_field *attrs = calloc(d->attrs.n + 1, sizeof *attrs);
    if (!attrs) continue;
    for (uint32_t k = 0; k < d->attrs.n; k++) {
      const keel__tattr *a = &d->attrs.a[k];
      attrs[k].key = a->key;
      switch (a->type) {
      case KEEL__TA_STR: attrs[k] = KEEL_STR(a->key, a->v.s); break;
      case KEEL__TA_INT: attrs[k] = KEEL_INT(a->key, a->v.i); break;
      case KEEL__TA_DOUBLE: attrs[k] = KEEL_DOUBLE(a->key, a->v.d); break;
      default: attrs[k] = KEEL_BOOL(a->key, a->v.b); break;
      }
    }
    attrs[d->attrs.n] = KEEL_LOG__END;
    keel_log_field f[] = {KEEL_STR("name", d->name),
                          KEEL_STR("traceId", tid),
                          KEEL_STR("spanId", sid),
                          KEEL_STR("parentSpanId", d->has_parent ? pid : ""),
                          KEEL_STR("kind", kinds[d->kind <= 5 ? d->kind : 0]),
                          KEEL_UINT("startTimeUnixNano", d->start_ns),
                          KEEL_DOUBLE("durationMs", (double)(d->end_ns - d->start_ns) / 1e6),
                          KEEL_STR("status", codes[d->status <= 2 ? d->status : 0]),
                          {.key = "attributes", .type = KEEL_LOG_T_OBJ, .v = {.obj = attrs}},
                          KEEL_LOG__END};
    keel_log_write(NULL, KEEL_LOG_INFO, "trace_span", f);
    free(attrs);
  }
}

static void free_batch(keel__span_data **b, size_t n) {
  for (size_t i = 0; i < n; i++)
    keel__span_data_free(b[i]);
}

/* Exports batches until the queue is empty; false when a stop's deadline
 * passed first (what is left stays queued, for keel_trace_stop to free). */
static bool export_queued(exporter *x) {
  size_t n;
  while ((n = keel__trace_take(x->batch, (size_t)x->o.max_batch)) > 0) {
    if (x->o.exporter == KEEL_TRACE_EXPORT_CONSOLE) {
      console(x->batch, n);
      keel__trace_count(n, 0);
    } else {
      uint8_t *body = x->buf;
      size_t len = x->buf_cap;
      bool ok = keel__trace_encode_into(x->batch, n, &x->o, &body, &len, &x->buf_cap) == 0;
      x->buf = body; /* grown or not, the thread keeps it for the next batch */
      ok = ok && post(x, body, len);
      keel__trace_count(ok ? n : 0, ok ? 0 : n);
    }
    free_batch(x->batch, n);
    if (atomic_load(&g_stop) && mono_ms() >= atomic_load(&g_stop_deadline)) {
      keel_trace_stats st;
      keel_trace_stats_get(&st);
      return st.queued == 0 && !x->was_cut;
    }
  }
  return true;
}

/* ---- the thread -------------------------------------------------------------------------- */

static void *ex_main(void *arg) {
  exporter *x = arg;
  pthread_setname_np(pthread_self(), "keel-trace-exp"); /* top, perf: not a scheduler's name */
  int64_t next_tick = mono_ms() + x->o.schedule_delay_ms;
  pthread_mutex_lock(&g_mu);
  for (;;) {
    while (!g_wake && !atomic_load(&g_stop) && g_flush_asked == g_flush_done &&
           mono_ms() < next_tick) {
      struct timespec ts = abs_ts(next_tick);
      pthread_cond_timedwait(&g_cv, &g_mu, &ts);
    }
    bool stopping = atomic_load(&g_stop);
    uint64_t asked = g_flush_asked;
    g_wake = false;
    pthread_mutex_unlock(&g_mu);
    if (mono_ms() >= next_tick) next_tick = mono_ms() + x->o.schedule_delay_ms;
    bool complete = export_queued(x) && !x->was_cut;
    pthread_mutex_lock(&g_mu);
    g_flush_done = asked;
    pthread_cond_broadcast(&g_done_cv);
    if (stopping) {
      g_complete = complete;
      break;
    }
  }
  g_finished = true;
  pthread_cond_broadcast(&g_done_cv);
  pthread_mutex_unlock(&g_mu);
  return NULL;
}

/* Waiting for the thread: a flush's number done, or the thread's end. */
typedef struct waiter {
  uint64_t flush; /* 0: the end */
  int64_t deadline;
  bool ok;
} waiter;

static void wait_thread(void *arg) {
  waiter *w = arg;
  pthread_mutex_lock(&g_mu);
  for (;;) {
    w->ok = w->flush ? g_flush_done >= w->flush || g_finished : g_finished;
    if (w->ok || mono_ms() >= w->deadline) break;
    struct timespec ts = abs_ts(w->deadline);
    pthread_cond_timedwait(&g_done_cv, &g_mu, &ts);
  }
  pthread_mutex_unlock(&g_mu);
}

/* From a process the wait runs on the blocking pool, so the scheduler runs
 * other processes (the collector may be one of them). */
static void wait_for(waiter *w) {
  if (!keel_self() || keel_blocking(wait_thread, w) != 0) wait_thread(w);
}

static int curl_setup(exporter *x) {
  char **h = x->headers;
  struct curl_slist *l = curl_slist_append(NULL, "Content-Type: application/x-protobuf");
  if (l) l = curl_slist_append(l, "Expect:"); /* no 100-continue round trip */
  for (; l && h && *h; h++)
    if (!curl_slist_append(l, *h)) l = (curl_slist_free_all(l), NULL);
  x->hlist = l;
  x->multi = curl_multi_init();
  x->easy = curl_easy_init();
  if (!l || !x->multi || !x->easy) return KEEL_ENOMEM;
  CURL *e = x->easy;
  curl_easy_setopt(e, CURLOPT_URL, x->endpoint);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->hlist);
  curl_easy_setopt(e, CURLOPT_POST, 1L);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard);
  curl_easy_setopt(e, CURLOPT_USERAGENT, "keel-otlp");
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  return 0;
}

int keel_trace_export_start(const keel_trace_export_opts *o) {
  keel_trace_export_opts d = {0};
  if (!o) o = &d;
  if (!keel_trace_started()) return KEEL_ESTATE;
  if (o->max_batch < 0 || o->schedule_delay_ms < 0 || o->export_timeout_ms < 0) return KEEL_EINVAL;
  pthread_once(&g_once, once_init);
  if (g_curl_rc != CURLE_OK) return KEEL_EIO;
  exporter *x = calloc(1, sizeof *x);
  if (!x) return KEEL_ENOMEM;
  x->o = *o;
  if (!x->o.max_batch) x->o.max_batch = 512;
  if (!x->o.schedule_delay_ms) x->o.schedule_delay_ms = 5000;
  if (!x->o.export_timeout_ms) x->o.export_timeout_ms = 30000;
  const char *base = o->base_endpoint ? o->base_endpoint : "http://localhost:4318";
  size_t bl = strlen(base);
  while (bl && base[bl - 1] == '/')
    bl--;
  if (o->endpoint)
    x->endpoint = strdup(o->endpoint);
  else if ((x->endpoint = malloc(bl + 12)))
    snprintf(x->endpoint, bl + 12, "%.*s/v1/traces", (int)bl, base);
  x->service = o->service_name ? strdup(o->service_name) : NULL;
  x->res_attrs = o->resource_attrs ? strdup(o->resource_attrs) : NULL;
  x->headers = parse_headers(o->headers);
  x->batch = calloc((size_t)x->o.max_batch, sizeof *x->batch);
  x->o.endpoint = x->endpoint;
  x->o.base_endpoint = NULL;
  x->o.service_name = x->service;
  x->o.resource_attrs = x->res_attrs;
  x->o.headers = NULL;
  int rc = (!x->endpoint || (o->service_name && !x->service) ||
            (o->resource_attrs && !x->res_attrs) || !x->headers || !x->batch)
               ? KEEL_ENOMEM
               : 0;
  if (!rc && x->o.exporter == KEEL_TRACE_EXPORT_OTLP) rc = curl_setup(x);
  exporter *none = NULL;
  if (!rc && !atomic_compare_exchange_strong(&g_exp, &none, x)) rc = KEEL_ESTATE;
  if (!rc) {
    pthread_mutex_lock(&g_mu);
    g_wake = g_finished = g_complete = false;
    g_flush_asked = g_flush_done = 0;
    atomic_store(&g_stop, false);
    atomic_store(&g_export_timeout, x->o.export_timeout_ms);
    pthread_mutex_unlock(&g_mu);
    if (pthread_create(&x->thread, NULL, ex_main, x) != 0) {
      atomic_store(&g_exp, NULL);
      rc = KEEL_ENOMEM;
    } else {
      keel__trace_set_waker(wake, (size_t)x->o.max_batch);
    }
  }
  if (rc) exporter_free(x);
  return rc;
}

int keel_trace_export_flush(int64_t timeout_ms) {
  /* x is not read: a stop may free it meanwhile (the wait ends with the
   * thread then) */
  if (!atomic_load(&g_exp)) return KEEL_ESTATE;
  waiter w = {.deadline = mono_ms() + (timeout_ms ? timeout_ms : atomic_load(&g_export_timeout))};
  pthread_mutex_lock(&g_mu);
  w.flush = ++g_flush_asked;
  pthread_cond_signal(&g_cv);
  pthread_mutex_unlock(&g_mu);
  wait_for(&w);
  return w.ok ? 0 : KEEL_ETIMEDOUT;
}

int keel_trace_export_stop(int64_t timeout_ms) {
  exporter *x = atomic_exchange(&g_exp, NULL);
  if (!x) return 0;
  keel__trace_set_waker(NULL, 0);
  int64_t deadline = mono_ms() + (timeout_ms ? timeout_ms : x->o.export_timeout_ms);
  pthread_mutex_lock(&g_mu);
  atomic_store(&g_stop_deadline, deadline);
  atomic_store(&g_stop, true);
  pthread_cond_signal(&g_cv);
  pthread_mutex_unlock(&g_mu);
  /* the thread ends by the deadline (transfers are cut then); the slack
   * covers one poll slice and the batch being freed */
  waiter w = {.deadline = deadline + 1000};
  wait_for(&w);
  pthread_join(x->thread, NULL);
  bool complete = g_complete;
  exporter_free(x);
  return complete ? 0 : KEEL_ETIMEDOUT;
}
