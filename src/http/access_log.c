/* access_log.c - what a served request leaves behind: the access log line
 * ("request completed", its level by status), the "slow request" warning,
 * the http_requests_total and http_request_duration_seconds metrics
 * (labelled by method, route pattern and status: bounded, "unmatched" for
 * paths no route knows), and the "request failed" error line of a 500 with
 * the request's JSON body handed to the logger as fields, so that its
 * redaction (password, token, authorization, ... at any depth) applies.
 *
 * Called on the loop of the connection's scheduler once per answer; it
 * reads the request and writes nothing back to it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/http_internal.h"
#include "keel/log.h"
#include "keel/metrics.h"

static const char *metric_method(const char *m) {
  static const char *known[] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"};
  for (size_t i = 0; i < sizeof known / sizeof *known; i++)
    if (strcmp(m, known[i]) == 0) return known[i];
  return "OTHER";
}

void keel__access_record(const keel__access *a, keel_http_req *rq, size_t bytes_out) {
  keel__http_span_end(rq);
  uint64_t ns = keel__http_now_ns() - rq->start_ns;
  double ms = (double)ns / 1e6;
  const char *route = rq->match.pattern ? rq->match.pattern : "unmatched";
  int st = rq->res.status;
  if (a->total) {
    char status[8];
    snprintf(status, sizeof status, "%d", st);
    const char *v3[3] = {metric_method(rq->method), route, status};
    keel_counter *c;
    if (keel_counter_get(a->total, v3, &c) == 0) keel_counter_inc(c);
    keel_histogram *h;
    if (keel_histogram_get(a->duration, v3, &h) == 0) keel_histogram_observe(h, ms / 1000.0);
  }
  if (!a->log) return;
  keel_log_level lvl = st >= 500 ? KEEL_LOG_ERROR : st >= 400 ? KEEL_LOG_WARN : KEEL_LOG_INFO;
  if (keel_log_enabled(lvl)) {
    const char *ua = keel_http_header(rq, "user-agent");
    keel_log_field f[] = {KEEL_STR("requestId", rq->reqid),
                          KEEL_STR("method", rq->method),
                          KEEL_STR("path", rq->path ? rq->path : rq->target ? rq->target : ""),
                          KEEL_STR("route", route),
                          KEEL_INT("status", st),
                          KEEL_DOUBLE("duration_ms", ms),
                          KEEL_UINT("bytes_in", rq->bytes_in),
                          KEEL_UINT("bytes_out", bytes_out),
                          KEEL_STR("client_ip", rq->client_ip),
                          KEEL_STR("user_agent", ua ? ua : ""),
                          KEEL_STR("server", a->server),
                          KEEL_LOG__END, /* trace_id, span_id when traced */
                          KEEL_LOG__END,
                          KEEL_LOG__END};
    /* the line is written on the loop, outside the handler's process, so it
     * names the request's span itself (docs/tracing.md) */
    char tid[33], sid[17];
    if (rq->traced) {
      size_t n = sizeof f / sizeof f[0] - 3;
      keel_trace_hex(rq->span.ctx.trace_id, 16, tid);
      keel_trace_hex(rq->span.ctx.span_id, 8, sid);
      f[n] = KEEL_STR("trace_id", tid);
      f[n + 1] = KEEL_STR("span_id", sid);
    }
    keel_log_write(NULL, lvl, "request completed", f);
  }
  if (a->slow_ms > 0 && ms > (double)a->slow_ms &&
      keel_log_enabled(KEEL_LOG_WARN)) {
    keel_log_field f[] = {KEEL_STR("requestId", rq->reqid), KEEL_STR("method", rq->method),
                          KEEL_STR("route", route), KEEL_DOUBLE("duration_ms", ms),
                          KEEL_INT("threshold_ms", a->slow_ms), KEEL_LOG__END};
    keel_log_write(NULL, KEEL_LOG_WARN, "slow request", f);
  }
}

/* A JSON value as log fields, for the logger to redact: objects nest,
 * arrays become objects keyed by index, at most 8 levels and 64 members a
 * level. Returns a malloc'd END-terminated list (json_fields_free), or NULL
 * when v is not an object or an array. The strings stay borrowed from v. */
static keel_log_field *json_fields(json_t *v, int depth) {
  if ((!json_is_object(v) && !json_is_array(v)) || depth >= 8) return NULL;
  size_t n = json_is_object(v) ? json_object_size(v) : json_array_size(v);
  if (n > 64) n = 64;
  keel_log_field *f = calloc(n + 1, sizeof *f);
  char *keys = json_is_array(v) ? calloc(n, 8) : NULL;
  if (!f || (json_is_array(v) && !keys)) {
    free(f);
    free(keys);
    return NULL;
  }
  size_t i = 0;
  const char *k;
  json_t *x;
  void *it = json_is_object(v) ? json_object_iter(v) : NULL;
  for (; i < n; i++) {
    if (json_is_object(v)) {
      k = json_object_iter_key(it);
      x = json_object_iter_value(it);
      it = json_object_iter_next(v, it);
    } else {
      snprintf(keys + i * 8, 8, "%u", (unsigned)(i % 100)); /* i < 64 */
      k = keys + i * 8;
      x = json_array_get(v, i);
    }
    f[i].key = k;
    switch (json_typeof(x)) {
    case JSON_STRING: f[i].type = KEEL_LOG_T_STR, f[i].v.s = json_string_value(x); break;
    case JSON_INTEGER: f[i].type = KEEL_LOG_T_INT, f[i].v.i = json_integer_value(x); break;
    case JSON_REAL: f[i].type = KEEL_LOG_T_DOUBLE, f[i].v.d = json_real_value(x); break;
    case JSON_TRUE: f[i].type = KEEL_LOG_T_BOOL, f[i].v.b = true; break;
    case JSON_FALSE: f[i].type = KEEL_LOG_T_BOOL, f[i].v.b = false; break;
    case JSON_NULL: f[i].type = KEEL_LOG_T_NULL; break;
    default:
      f[i].type = KEEL_LOG_T_OBJ;
      f[i].v.obj = json_fields(x, depth + 1);
      if (!f[i].v.obj) f[i].type = KEEL_LOG_T_NULL;
    }
  }
  /* the keys of an array's members live right after the END entry's slot:
   * keep the buffer with the list so one free releases both */
  f[n].type = KEEL_LOG_T_END;
  f[n].v.s = keys;
  return f;
}

static void json_fields_free(keel_log_field *f) {
  if (!f) return;
  size_t i = 0;
  for (; f[i].type != KEEL_LOG_T_END; i++)
    if (f[i].type == KEEL_LOG_T_OBJ) json_fields_free((keel_log_field *)f[i].v.obj);
  free((char *)f[i].v.s);
  free(f);
}

void keel__access_failure(keel_http_req *rq) {
  if (!keel_log_enabled(KEEL_LOG_ERROR)) return;
  keel_log_field *body = NULL;
  json_t *j = rq->body_len ? keel_http_json(rq, NULL) : NULL;
  if (j) body = json_fields(j, 0);
  keel_log_field f[] = {KEEL_STR("requestId", rq->reqid),
                        KEEL_STR("method", rq->method),
                        KEEL_STR("path", rq->path ? rq->path : ""),
                        KEEL_STR("error", rq->res.err_log ? rq->res.err_log : ""),
                        body ? (keel_log_field){.key = "body", .type = KEEL_LOG_T_OBJ, .v = {.obj = body}}
                             : KEEL_UINT("body_bytes", rq->body_len),
                        KEEL_LOG__END};
  keel_log_write(NULL, KEEL_LOG_ERROR, "request failed", f);
  json_fields_free(body);
}
