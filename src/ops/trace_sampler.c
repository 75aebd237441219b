/* trace_sampler.c - OpenTelemetry's samplers and their environment variables.
 *
 * always_on, always_off, traceidratio and the parentbased_* forms of them,
 * as OpenTelemetry's SDK specification defines them: a parentbased sampler
 * follows a parent's sampled flag (remote or local alike here: the
 * specification's four parent delegates default to exactly that) and uses
 * its root sampler only for a span without a parent. traceidratio compares
 * the trace id's last 8 bytes, read big-endian, with ratio x 2^64, so every
 * service with the same ratio takes the same decision for a trace, and a
 * lower ratio samples a subset of a higher one's traces.
 *
 * The installed sampler is two words read with relaxed atomics on every span
 * start; keel_trace_start writes them before it turns recording on (release
 * through trace_queue.c's started flag).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/error.h"
#include "ops/trace_internal.h"

static _Atomic int g_sampler;
static _Atomic uint64_t g_bound; /* ratio x 2^64, saturated */
static atomic_bool g_all;        /* ratio 1: every trace id (the bound cannot say 2^64) */

static uint64_t ratio_bound(double r, bool *all) {
  *all = r >= 1.0;
  if (r <= 0.0) return 0;
  if (r >= 1.0) return UINT64_MAX;
  return (uint64_t)ldexp(r, 64);
}

static bool ratio_says(const uint8_t id[16], uint64_t bound, bool all) {
  if (all) return true;
  uint64_t v = 0;
  for (int i = 8; i < 16; i++)
    v = v << 8 | id[i];
  return v < bound;
}

static bool decide(keel_sampler s, uint64_t bound, bool all, const keel_span_ctx *parent,
                   const uint8_t id[16]) {
  bool has_parent = parent && parent->valid;
  switch (s) {
  case KEEL_SAMPLER_ALWAYS_ON: return true;
  case KEEL_SAMPLER_ALWAYS_OFF: return false;
  case KEEL_SAMPLER_TRACEIDRATIO: return ratio_says(id, bound, all);
  case KEEL_SAMPLER_PARENTBASED_ALWAYS_OFF:
    return has_parent ? (parent->flags & KEEL_TRACE_SAMPLED) != 0 : false;
  case KEEL_SAMPLER_PARENTBASED_TRACEIDRATIO:
    return has_parent ? (parent->flags & KEEL_TRACE_SAMPLED) != 0 : ratio_says(id, bound, all);
  case KEEL_SAMPLER_PARENTBASED_ALWAYS_ON:
  default: return has_parent ? (parent->flags & KEEL_TRACE_SAMPLED) != 0 : true;
  }
}

bool keel_trace_sample(keel_sampler s, double ratio, const keel_span_ctx *parent,
                       const uint8_t trace_id[16]) {
  bool all;
  uint64_t b = ratio_bound(ratio, &all);
  return decide(s, b, all, parent, trace_id);
}

bool keel__trace_decide(const keel_span_ctx *parent, const uint8_t trace_id[16]) {
  /* before keel_trace_start: the default sampler, so flags propagate as
   * OpenTelemetry's would; the span then only records if tracing runs */
  return decide((keel_sampler)atomic_load_explicit(&g_sampler, memory_order_relaxed),
                atomic_load_explicit(&g_bound, memory_order_relaxed),
                atomic_load_explicit(&g_all, memory_order_relaxed), parent, trace_id);
}

int keel__trace_sampler_set(const keel_trace_opts *o) {
  keel_trace_opts d = {0};
  if (!o) o = &d;
  double r = o->ratio_set ? o->ratio : 1.0;
  if (!(r >= 0.0 && r <= 1.0) || o->sampler < KEEL_SAMPLER_PARENTBASED_ALWAYS_ON ||
      o->sampler > KEEL_SAMPLER_PARENTBASED_TRACEIDRATIO)
    return KEEL_EINVAL;
  bool all;
  uint64_t b = ratio_bound(r, &all);
  atomic_store_explicit(&g_sampler, (int)o->sampler, memory_order_relaxed);
  atomic_store_explicit(&g_bound, b, memory_order_relaxed);
  atomic_store_explicit(&g_all, all, memory_order_relaxed);
  return 0;
}

/* ---- the environment ---------------------------------------------------------------- */

static const struct {
  const char *name;
  keel_sampler s;
} samplers[] = {
    {"always_on", KEEL_SAMPLER_ALWAYS_ON},
    {"always_off", KEEL_SAMPLER_ALWAYS_OFF},
    {"traceidratio", KEEL_SAMPLER_TRACEIDRATIO},
    {"parentbased_always_on", KEEL_SAMPLER_PARENTBASED_ALWAYS_ON},
    {"parentbased_always_off", KEEL_SAMPLER_PARENTBASED_ALWAYS_OFF},
    {"parentbased_traceidratio", KEEL_SAMPLER_PARENTBASED_TRACEIDRATIO},
};

static const char *env(const char *name) {
  const char *v = getenv(name);
  return v && *v ? v : NULL;
}

int keel_trace_opts_from_env(keel_trace_opts *o, char *err, size_t errcap) {
  if (!o) return KEEL_EINVAL;
  memset(o, 0, sizeof *o);
  char dummy[8];
  if (!err) err = dummy, errcap = sizeof dummy;
  err[0] = '\0';
  const char *s = env("OTEL_TRACES_SAMPLER");
  if (s) {
    size_t i = 0, n = sizeof samplers / sizeof samplers[0];
    while (i < n && strcmp(samplers[i].name, s) != 0)
      i++;
    if (i == n) {
      snprintf(err, errcap,
               "OTEL_TRACES_SAMPLER: must be one of always_on, always_off, traceidratio, "
               "parentbased_always_on, parentbased_always_off, parentbased_traceidratio, got %.64s",
               s);
      return KEEL_EINVAL;
    }
    o->sampler = samplers[i].s;
  }
  const char *a = env("OTEL_TRACES_SAMPLER_ARG");
  bool uses_ratio = o->sampler == KEEL_SAMPLER_TRACEIDRATIO ||
                    o->sampler == KEEL_SAMPLER_PARENTBASED_TRACEIDRATIO;
  if (a && uses_ratio) { /* other samplers take no argument: ignored, as the spec says */
    char *end;
    errno = 0;
    double r = strtod(a, &end);
    if (errno || *end || end == a || !(r >= 0.0 && r <= 1.0)) {
      snprintf(err, errcap, "OTEL_TRACES_SAMPLER_ARG: must be a number between 0 and 1, got %.64s",
               a);
      return KEEL_EINVAL;
    }
    o->ratio = r;
    o->ratio_set = true;
  }
  const char *q = env("OTEL_BSP_MAX_QUEUE_SIZE");
  if (q) {
    char *end;
    errno = 0;
    long v = strtol(q, &end, 10);
    if (errno || *end || v < 1 || v > 1 << 20) {
      snprintf(err, errcap,
               "OTEL_BSP_MAX_QUEUE_SIZE: must be an integer between 1 and 1048576, got %.64s", q);
      return KEEL_EINVAL;
    }
    o->max_queue = (int)v;
  }
  return 0;
}
