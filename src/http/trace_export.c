/* trace_export.c - the batch exporter: ended spans to an OTLP/HTTP collector.
 *
 * One gen_server, registered as "keel_trace_exporter", owns an HTTP client
 * and exports in batches of at most max_batch spans: on a periodic tick
 * (the schedule delay), when the queue says a batch's worth waits
 * (keel__trace_set_waker: one message, not one per span), on a flush call,
 * and once more when it stops. A batch is encoded (trace_otlp.c) and POSTed
 * as application/x-protobuf; 429, 502, 503 and 504 (and a transport error:
 * a collector restarting refuses connections for a moment) are retried with
 * exponential backoff from 100 ms while the export timeout lasts; then the
 * batch counts as failed and is dropped. Spans never wait in the exporter
 * beyond one batch: the queue is the only buffer, and it is bounded.
 *
 * The exporter's process is marked (keel__trace_suppress), so its own HTTP
 * requests make no spans, and gen_server calls to it bring no trace context.
 *
 * With KEEL_TRACE_EXPORT_CONSOLE each span becomes a log line instead
 * ("trace_span" event, JSON like every line), for a node without a collector.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/error.h"
#include "keel/gen_server.h"
#include "keel/http_client.h"
#include "keel/log.h"
#include "keel/message.h"
#include "keel/registry.h"
#include "keel/timer.h"
#include "keel/trace_export.h"
#include "ops/trace_internal.h"

#define EXPORTER_NAME "keel_trace_exporter"

enum { TAG_TICK = 0x7472ac01, TAG_WAKE, TAG_FLUSH };

typedef struct exporter {
  keel_trace_export_opts o;
  char *endpoint, *service, *res_attrs;
  char **headers; /* "Name: value", NULL-terminated */
  keel_http_client *client;
  keel_ref_t tick;
  keel__span_data **batch;
} exporter;

static exporter *_Atomic g_exp; /* the running exporter's state (one per node) */

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
  keel_http_client_free(x->client);
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

static int64_t now_ms(void) {
  return (int64_t)(keel__trace_now_ns() / 1000000u);
}

static bool post(exporter *x, const uint8_t *body, size_t len) {
  int64_t deadline = now_ms() + x->o.export_timeout_ms, backoff = 100;
  for (;;) {
    int64_t left = deadline - now_ms();
    if (left <= 0) return false;
    keel_http_client_req rq = {.method = "POST",
                               .url = x->endpoint,
                               .headers = (const char *const *)x->headers,
                               .body = body,
                               .body_len = len,
                               .content_type = "application/x-protobuf",
                               .timeout_ms = left,
                               .connect_timeout_ms = left,
                               .max_retries = -1,
                               .request_id = "",
                               .traceparent = ""};
    keel_http_client_res res;
    int rc = keel_http_client_request(x->client, &rq, &res);
    int status = res.status;
    keel_http_client_res_free(&res);
    if (rc == 0 && status >= 200 && status < 300) return true;
    if (!retryable(rc, status) || now_ms() + backoff >= deadline) {
      keel_log_debug(NULL, "trace export failed", KEEL_STR("endpoint", x->endpoint),
                     KEEL_INT("status", status), KEEL_STR("error", rc ? keel_err_name(rc) : ""));
      return false;
    }
    keel_sleep(backoff);
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

/* Exports batches until the queue is empty (or, with once, one batch). */
static void export_queued(exporter *x, bool once) {
  size_t n;
  while ((n = keel__trace_take(x->batch, (size_t)x->o.max_batch)) > 0) {
    if (x->o.exporter == KEEL_TRACE_EXPORT_CONSOLE) {
      console(x->batch, n);
      keel__trace_count(n, 0);
    } else {
      uint8_t *body = NULL;
      size_t len;
      bool ok = keel_trace_encode_otlp(x->batch, n, &x->o, &body, &len) == 0 && post(x, body, len);
      free(body);
      keel__trace_count(ok ? n : 0, ok ? 0 : n);
    }
    free_batch(x->batch, n);
    if (once && n < (size_t)x->o.max_batch) break;
  }
}

/* ---- the server ---------------------------------------------------------------------------- */

static int ex_init(void *arg, void **state) {
  exporter *x = arg;
  keel__trace_suppress();
  int rc =
      keel_send_interval(keel_self(), x->o.schedule_delay_ms, keel_msg_new(TAG_TICK, 0), &x->tick);
  if (rc) return rc;
  keel__trace_set_waker(keel_self(), TAG_WAKE, (size_t)x->o.max_batch);
  *state = x;
  return 0;
}

static int ex_call(void *state, keel_gs_from from, keel_msg_t **req, keel_msg_t **reply) {
  (void)from;
  (void)req;
  export_queued(state, false);
  *reply = NULL;
  return KEEL_GS_REPLY;
}

static int ex_info(void *state, keel_msg_t **m) {
  uint32_t tag = keel_msg_tag(*m);
  if (tag == TAG_TICK || tag == TAG_WAKE) export_queued(state, false);
  return KEEL_GS_OK;
}

static void ex_terminate(keel_reason reason, void *state) {
  (void)reason;
  exporter *x = state;
  keel__trace_set_waker(0, 0, 0);
  keel_cancel_timer(x->tick);
  export_queued(x, false); /* the last spans, within the stopper's budget */
}

static const keel_gen_server exporter_server = {
    .init = ex_init, .handle_call = ex_call, .handle_info = ex_info, .terminate = ex_terminate};

int keel_trace_export_start(const keel_trace_export_opts *o) {
  keel_trace_export_opts d = {0};
  if (!o) o = &d;
  if (!keel_trace_started()) return KEEL_ESTATE;
  if (o->max_batch < 0 || o->schedule_delay_ms < 0 || o->export_timeout_ms < 0) return KEEL_EINVAL;
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
  keel_http_client_opts co = {.name = "trace_exporter", .no_breaker = true, .max_retries = -1};
  if (!rc && x->o.exporter == KEEL_TRACE_EXPORT_OTLP) rc = keel_http_client_new(&co, &x->client);
  exporter *none = NULL;
  if (!rc && !atomic_compare_exchange_strong(&g_exp, &none, x)) rc = KEEL_ESTATE;
  if (!rc) {
    keel_gs_opts go;
    keel_gs_opts_init(&go);
    go.name = EXPORTER_NAME;
    rc = keel_gs_start(&exporter_server, x, &go, NULL, NULL);
    if (rc) atomic_store(&g_exp, NULL);
  }
  if (rc) exporter_free(x);
  return rc;
}

int keel_trace_export_flush(int64_t timeout_ms) {
  exporter *x = atomic_load(&g_exp);
  if (!x) return KEEL_ESTATE;
  keel_msg_t *r = NULL;
  int rc = keel_gs_call_name(EXPORTER_NAME, keel_msg_new(TAG_FLUSH, 0), &r,
                             timeout_ms ? timeout_ms : x->o.export_timeout_ms, NULL);
  keel_msg_free(r);
  return rc == KEEL_ENOPROC ? KEEL_ESTATE : rc;
}

int keel_trace_export_stop(int64_t timeout_ms) {
  exporter *x = atomic_load(&g_exp);
  if (!x) return 0;
  keel_pid_t pid = keel_whereis(EXPORTER_NAME);
  int rc = pid ? keel_gs_stop(pid, KEEL_REASON_SHUTDOWN, NULL,
                              timeout_ms ? timeout_ms : x->o.export_timeout_ms)
               : 0;
  keel__trace_set_waker(0, 0, 0);
  atomic_store(&g_exp, NULL);
  exporter_free(x); /* from this process: in-flight requests of a killed exporter end here */
  return rc;
}
