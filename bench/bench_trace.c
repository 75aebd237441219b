/* bench_trace.c - what a span costs, and what exporting one costs.
 *
 *   span_unsampled    ns/span  keel_span_start + keel_span_end, sampler always_off
 *   span_sampled      ns/span  the same, always_on: the span is recorded and queued
 *   span_sampled_http ns/span  sampled, with the 8 attributes a server span carries
 *   span_anchor       ns/span  the floor any recording span pays: two
 *                              clock_gettime(CLOCK_REALTIME) and a malloc/free of
 *                              the record's size
 *   otlp_encode       ns/span  a batch of 512 server-like spans to OTLP protobuf
 *   json_encode       ns/span  the same batch as OTLP/JSON-like objects through
 *                              jansson (the anchor of the encoder: what JSON
 *                              export would cost instead)
 *
 * Times are the thread's CPU time (the loops never wait), so a busy shared
 * machine inflates them less than wall time would. The span loops run 1,000 spans per round and
 * drain the queue between rounds (not timed), so sampled spans are measured as queued, never as
 * dropped. Each figure is the median of its runs (each in a fresh process). Target (issue 13): a
 * span started and ended under 100 ns. Usage: bench_trace [--runs N] [workload...]
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>

#include "bench_driver.h"
#include "keel/trace.h"
#include "keel/trace_export.h"
#include "ops/trace_internal.h"

#define ROUNDS 2000
#define PER    1000

static keel__span_data *drain_buf[PER];

/* The loops never yield: the thread's CPU time is the time they took, and
 * other load on a shared machine does not count in it (as bench_metrics). */
static double cpu_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void drain(void) {
  size_t n;
  while ((n = keel__trace_take(drain_buf, PER)) > 0)
    for (size_t i = 0; i < n; i++)
      keel__span_data_free(drain_buf[i]);
}

static void spans(keel_sampler s, bool attrs) {
  keel_trace_opts o = {.sampler = s, .max_queue = 2 * PER};
  int rc = keel_trace_start(&o);
  if (rc) bench_fail("trace_start", rc);
  double total = 0;
  for (int r = 0; r < ROUNDS; r++) {
    double t0 = cpu_s();
    for (int i = 0; i < PER; i++) {
      keel_span sp;
      keel_span_start(&sp, "GET /orders/:id", KEEL_SPAN_SERVER, NULL);
      if (attrs)
        keel_span_set(&sp, KEEL_STR("http.request.method", "GET"),
                      KEEL_STR("url.path", "/orders/42"), KEEL_STR("url.scheme", "http"),
                      KEEL_INT("http.response.status_code", 200),
                      KEEL_STR("client.address", "10.0.0.7"), KEEL_STR("http.route", "/orders/:id"),
                      KEEL_STR("server.address", "api.example"), KEEL_INT("server.port", 3000));
      keel_span_end(&sp);
    }
    total += cpu_s() - t0;
    drain();
  }
  keel_trace_stats st;
  keel_trace_stats_get(&st);
  if (st.dropped) fprintf(stderr, "  dropped %llu (should be 0)\n", (unsigned long long)st.dropped);
  keel_trace_stop();
  bench_result = total / ((double)ROUNDS * PER) * 1e9;
}

static void unsampled_main(void *a) {
  (void)a;
  spans(KEEL_SAMPLER_ALWAYS_OFF, false);
}
static void sampled_main(void *a) {
  (void)a;
  spans(KEEL_SAMPLER_ALWAYS_ON, false);
}
static void sampled_http_main(void *a) {
  (void)a;
  spans(KEEL_SAMPLER_ALWAYS_ON, true);
}

static void anchor_main(void *a) {
  (void)a;
  double total = 0;
  volatile uint64_t sink = 0;
  for (int r = 0; r < ROUNDS; r++) {
    double t0 = cpu_s();
    for (int i = 0; i < PER; i++) {
      struct timespec ts;
      clock_gettime(CLOCK_REALTIME, &ts);
      void *p = malloc(sizeof(keel__span_data));
      sink += (uint64_t)ts.tv_nsec + (uintptr_t)p;
      clock_gettime(CLOCK_REALTIME, &ts);
      sink += (uint64_t)ts.tv_nsec;
      free(p);
    }
    total += cpu_s() - t0;
  }
  (void)sink;
  bench_result = total / ((double)ROUNDS * PER) * 1e9;
}

/* ---- encoding ----------------------------------------------------------------------------- */

#define BATCH 512
static keel__span_data *batch[BATCH];

static void make_batch(void) {
  keel_trace_opts o = {.sampler = KEEL_SAMPLER_ALWAYS_ON, .max_queue = BATCH};
  int rc = keel_trace_start(&o);
  if (rc) bench_fail("trace_start", rc);
  for (int i = 0; i < BATCH; i++) {
    keel_span sp;
    keel_span_start(&sp, "GET /orders/:id", KEEL_SPAN_SERVER, NULL);
    keel_span_set(&sp, KEEL_STR("http.request.method", "GET"), KEEL_STR("url.path", "/orders/42"),
                  KEEL_STR("url.scheme", "http"), KEEL_INT("http.response.status_code", 200),
                  KEEL_STR("client.address", "10.0.0.7"), KEEL_STR("http.route", "/orders/:id"),
                  KEEL_STR("server.address", "api.example"), KEEL_INT("server.port", 3000));
    keel_span_end(&sp);
  }
  if (keel__trace_take(batch, BATCH) != BATCH) bench_fail("take", KEEL_EIO);
}

static void free_batch(void) {
  for (int i = 0; i < BATCH; i++)
    keel__span_data_free(batch[i]);
  keel_trace_stop();
}

static void encode_main(void *a) {
  (void)a;
  make_batch();
  keel_trace_export_opts eo = {.service_name = "orders"};
  double t[50];
  size_t bytes = 0;
  for (int r = 0; r < 50; r++) {
    uint8_t *out;
    double t0 = cpu_s();
    int rc = keel_trace_encode_otlp(batch, BATCH, &eo, &out, &bytes);
    t[r] = cpu_s() - t0;
    if (rc) bench_fail("encode", rc);
    free(out);
  }
  qsort(t, 50, sizeof t[0], bench_cmp_double);
  fprintf(stderr, "  otlp_encode: %zu bytes per %d spans\n", bytes, BATCH);
  bench_result = t[25] / BATCH * 1e9;
  free_batch();
}

static json_t *json_attrs(const keel__tattrs *as) {
  json_t *arr = json_array();
  for (uint32_t i = 0; i < as->n; i++) {
    const keel__tattr *x = &as->a[i];
    json_t *v = x->type == KEEL__TA_STR   ? json_pack("{s:s}", "stringValue", x->v.s)
                : x->type == KEEL__TA_INT ? json_pack("{s:I}", "intValue", (json_int_t)x->v.i)
                                          : json_pack("{s:b}", "boolValue", x->v.b);
    json_array_append_new(arr, json_pack("{s:s, s:o}", "key", x->key, "value", v));
  }
  return arr;
}

static void json_main(void *a) {
  (void)a;
  make_batch();
  double t[50];
  size_t bytes = 0;
  for (int r = 0; r < 50; r++) {
    double t0 = cpu_s();
    json_t *spans_j = json_array();
    for (int i = 0; i < BATCH; i++) {
      const keel__span_data *d = batch[i];
      char tid[33], sid[17];
      keel_trace_hex(d->trace_id, 16, tid);
      keel_trace_hex(d->span_id, 8, sid);
      char st[24], en[24];
      snprintf(st, sizeof st, "%llu", (unsigned long long)d->start_ns);
      snprintf(en, sizeof en, "%llu", (unsigned long long)d->end_ns);
      json_array_append_new(spans_j, json_pack("{s:s, s:s, s:s, s:i, s:s, s:s, s:o}", "traceId",
                                               tid, "spanId", sid, "name", d->name, "kind", d->kind,
                                               "startTimeUnixNano", st, "endTimeUnixNano", en,
                                               "attributes", json_attrs(&d->attrs)));
    }
    json_t *req = json_pack("{s:[{s:{s:[{s:s, s:{s:s}}]}, s:[{s:{s:s}, s:o}]}]}", "resourceSpans",
                            "resource", "attributes", "key", "service.name", "value", "stringValue",
                            "orders", "scopeSpans", "scope", "name", "keel", "spans", spans_j);
    char *s = json_dumps(req, JSON_COMPACT);
    t[r] = cpu_s() - t0;
    bytes = strlen(s);
    free(s);
    json_decref(req);
  }
  qsort(t, 50, sizeof t[0], bench_cmp_double);
  fprintf(stderr, "  json_encode: %zu bytes per %d spans\n", bytes, BATCH);
  bench_result = t[25] / BATCH * 1e9;
  free_batch();
}

int main(int argc, char **argv) {
  static const bench_workload ws[] = {
      {"span_unsampled", "ns", unsampled_main, 5},
      {"span_anchor", "ns", anchor_main, 5},
      {"span_sampled", "ns", sampled_main, 5},
      {"span_sampled_http", "ns", sampled_http_main, 5},
      {"otlp_encode", "ns", encode_main, 5},
      {"json_encode", "ns", json_main, 5},
  };
  return bench_main("bench_trace", ws, sizeof ws / sizeof ws[0], argc, argv, NULL);
}
