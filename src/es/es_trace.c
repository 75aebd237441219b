/* es_trace.c - the event store's spans.
 *
 * An append, a read, a read of the whole log and a transaction each make
 * one span of kind client, after OpenTelemetry's database conventions:
 * db.system (sqlite or postgresql), db.operation.name (append, read,
 * read_all, transact), db.collection.name (the stream, when the call names
 * one), keel.es.events (events appended or read) and, on failure,
 * error.type (the KEEL_E* name) with status error. The span is named after
 * the operation alone: streams are per entity, and a name per stream would
 * make as many span names as a raw URL path would (the HTTP conventions
 * refuse those too).
 *
 * Spans are made only inside a trace (a span is current in the calling
 * process): a subscription catching up or a projection polling reads page
 * after page with no request behind it, and must not start a trace per
 * page. Outside a trace the cost is one read of the process's slot.
 */
#include "es/es_internal.h"
#include "keel/error.h"

bool keel__es_span_begin(keel_es *es, keel_span *sp, const char *op, const char *stream) {
  if (!keel_span_current()) return false;
  keel_span_start(sp, op, KEEL_SPAN_CLIENT, NULL);
  if (keel_span_recording(sp)) {
    keel_span_set(sp, KEEL_STR("db.system", es->kind == ES_PG ? "postgresql" : "sqlite"),
                  KEEL_STR("db.operation.name", op));
    if (stream) keel_span_set_str(sp, "db.collection.name", stream);
  }
  return true;
}

void keel__es_span_end(keel_span *sp, bool on, int rc, int64_t events) {
  if (!on) return;
  if (keel_span_recording(sp)) {
    if (rc == 0 && events >= 0) keel_span_set_int(sp, "keel.es.events", events);
    if (rc < 0) {
      keel_span_set_str(sp, "error.type", keel_err_name(rc));
      keel_span_set_status(sp, KEEL_SPAN_ERROR, keel_strerror(rc));
    }
  }
  keel_span_end(sp);
}
