/* jobs_trace.c - the jobs' spans: enqueue (producer) and perform (consumer).
 *
 * After OpenTelemetry's messaging conventions: an enqueue made inside a
 * trace is a span of kind producer, "enqueue <queue>", whose traceparent
 * the job's row keeps (keel_jobs.traceparent); the job's run is a span of
 * kind consumer, "perform <queue>", a child of that producer span, so a
 * request and the jobs it enqueued make one trace however much later, and
 * on whichever instance, the job runs. A job enqueued outside any trace
 * (cron, a script) has no traceparent, and its run starts a trace of its
 * own. Attributes: messaging.system (keel_jobs), messaging.destination.name
 * (the queue), messaging.operation.type (send, process),
 * messaging.operation.name (enqueue, perform), messaging.message.id (the
 * job id), keel.job.worker, keel.job.attempt; a failed attempt sets
 * error.type and status error.
 *
 * The perform span is the job process's current span: the worker's log
 * lines, event-store calls and HTTP requests are its children. A job
 * process that dies (a crash, a timeout's kill, a cancel) has its span
 * ended as an error by the trace context's exit hook (src/ops/trace.c).
 */
#include <stdio.h>

#include "jobs/jobs_internal.h"
#include "keel/error.h"
#include "keel/trace.h"

static void common(keel_span *sp, const char *queue, const char *worker, const char *type,
                   const char *op) {
  keel_span_set(sp, KEEL_STR("messaging.system", "keel_jobs"),
                KEEL_STR("messaging.destination.name", queue),
                KEEL_STR("messaging.operation.type", type),
                KEEL_STR("messaging.operation.name", op), KEEL_STR("keel.job.worker", worker));
}

static void message_id(keel_span *sp, int64_t id) {
  char s[24];
  snprintf(s, sizeof s, "%lld", (long long)id);
  keel_span_set_str(sp, "messaging.message.id", s);
}

static void fail(keel_span *sp, const char *type, const char *msg) {
  keel_span_set_str(sp, "error.type", type);
  keel_span_set_status(sp, KEEL_SPAN_ERROR, msg);
}

bool keel__jobs_span_send(keel_span *sp, const keel_span_ctx *parent, const char *queue,
                          const char *worker, char traceparent[56]) {
  traceparent[0] = '\0';
  if (!parent) {
    const keel_span *cur = keel_span_current();
    parent = cur ? &cur->ctx : NULL;
  }
  if (!parent || !parent->valid) return false;
  char name[96];
  snprintf(name, sizeof name, "enqueue %s", queue);
  /* not current: enqueue_tx may run on the SQLite writer's thread */
  keel_span_opts so = {.parent = parent, .no_current = true};
  keel_span_start(sp, name, KEEL_SPAN_PRODUCER, &so);
  if (keel_span_recording(sp)) common(sp, queue, worker, "send", "enqueue");
  keel_trace_format(&sp->ctx, traceparent);
  return true;
}

void keel__jobs_span_sent(keel_span *sp, bool on, int rc, int64_t id, bool duplicate) {
  if (!on) return;
  if (keel_span_recording(sp)) {
    if (rc == 0) message_id(sp, id);
    if (rc == 0 && duplicate) keel_span_set_bool(sp, "keel.job.duplicate", true);
    if (rc < 0) fail(sp, keel_err_name(rc), keel_strerror(rc));
  }
  keel_span_end(sp);
}

void keel__jobs_span_perform(keel_span *sp, const jobs_row *r) {
  keel_span_ctx parent;
  bool has = r->traceparent && keel_trace_parse(r->traceparent, NULL, &parent);
  char name[96];
  snprintf(name, sizeof name, "perform %s", r->queue);
  keel_span_opts so = {.parent = has ? &parent : NULL, .root = !has};
  keel_span_start(sp, name, KEEL_SPAN_CONSUMER, &so);
  if (!keel_span_recording(sp)) return;
  common(sp, r->queue, r->worker, "process", "perform");
  message_id(sp, r->id);
  keel_span_set_int(sp, "keel.job.attempt", r->attempt);
}

void keel__jobs_span_performed(keel_span *sp, int rc, const char *error) {
  if (keel_span_recording(sp) && rc != 0 && rc != KEEL_JOB_SNOOZE && rc != KEEL_JOB_CANCEL)
    fail(sp, rc < 0 ? keel_err_name(rc) : "bad answer", error);
  keel_span_end(sp);
}
