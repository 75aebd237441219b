/* keel/trace_export.h - sending spans to an OpenTelemetry collector (OTLP/HTTP).
 *
 * The exporter is one keel process: it takes ended spans from the batch
 * queue (keel/trace.h) every schedule delay, or as soon as a batch's worth
 * waits, encodes them as an OTLP ExportTraceServiceRequest in protobuf and
 * POSTs them with the HTTP client (keel/http_client.h). A 429, 502, 503 or
 * 504 is retried with exponential backoff within the export timeout; any
 * other failure counts the batch as failed (keel_trace_spans_failed_total)
 * and goes on. Requests never wait for it: a slow or absent collector only
 * fills the queue, and a full queue drops spans.
 *
 * With OTEL_TRACES_EXPORTER=console the batches are written as JSON lines to
 * the log instead (no collector needed).
 */
#ifndef KEEL_TRACE_EXPORT_H
#define KEEL_TRACE_EXPORT_H

#include <stdint.h>

#include "keel/trace.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum keel_trace_exporter {
  KEEL_TRACE_EXPORT_OTLP = 0, /* OTLP/HTTP protobuf */
  KEEL_TRACE_EXPORT_CONSOLE,  /* JSON lines in the log */
  KEEL_TRACE_EXPORT_NONE
} keel_trace_exporter;

/* A zeroed struct is OpenTelemetry's defaults. Strings are copied. */
typedef struct keel_trace_export_opts {
  keel_trace_exporter exporter;
  /* the full URL spans are POSTed to; NULL: base_endpoint + "/v1/traces" */
  const char *endpoint;
  const char *base_endpoint; /* NULL: http://localhost:4318 (OTLP/HTTP's default) */
  const char *headers;       /* "k1=v1,k2=v2" (URL-encoded values), as OTEL_EXPORTER_OTLP_HEADERS */
  const char *service_name;  /* resource service.name; NULL: "unknown_service" */
  const char *resource_attrs; /* "k1=v1,k2=v2", as OTEL_RESOURCE_ATTRIBUTES */
  int max_batch;              /* spans per request; 0: 512 */
  int64_t schedule_delay_ms;  /* 0: 5000 */
  int64_t export_timeout_ms;  /* one export with its retries; 0: 30000 */
} keel_trace_export_opts;

/* Fills o from the environment: OTEL_TRACES_EXPORTER (otlp, console, none),
 * OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (used as is) or OTEL_EXPORTER_OTLP_ENDPOINT
 * (+ "/v1/traces"), OTEL_EXPORTER_OTLP_TRACES_HEADERS or
 * OTEL_EXPORTER_OTLP_HEADERS, OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES,
 * OTEL_BSP_MAX_EXPORT_BATCH_SIZE, OTEL_BSP_SCHEDULE_DELAY,
 * OTEL_BSP_EXPORT_TIMEOUT. The strings point into the environment (valid
 * while it is not changed). KEEL_EINVAL with a line naming the variable in
 * err when a value is invalid. */
int keel_trace_export_opts_from_env(keel_trace_export_opts *o, char *err, size_t errcap);

/* Starts the exporter process. Tracing must be started (keel_trace_start),
 * else KEEL_ESTATE; KEEL_ESTATE also when an exporter runs. Call from a keel
 * process. KEEL_EINVAL, KEEL_ENOMEM. */
int keel_trace_export_start(const keel_trace_export_opts *o);
/* Exports what is queued (spans ended before the call) and stops the
 * exporter, waiting at most timeout_ms (0: the export timeout; the service
 * passes what is left of its drain budget). KEEL_ETIMEDOUT when the last
 * export did not finish (the exporter is killed). 0 when none ran. Call from
 * a keel process. */
int keel_trace_export_stop(int64_t timeout_ms);
/* Exports what is queued now and waits for it (tests, a command): 0,
 * KEEL_ETIMEDOUT, KEEL_ESTATE (no exporter). From a keel process. */
int keel_trace_export_flush(int64_t timeout_ms);

/* Encodes spans as an OTLP ExportTraceServiceRequest (protobuf) into a new
 * buffer (*out, *len; free() it). Used by the exporter and the benchmark. */
struct keel_span_data;
int keel_trace_encode_otlp(struct keel_span_data *const *spans, size_t n,
                           const keel_trace_export_opts *o, uint8_t **out, size_t *len);

#ifdef __cplusplus
}
#endif
#endif
