/* keel/trace.h - spans: W3C trace context, samplers, the current span.
 *
 * A span is one timed piece of work in a trace: a trace id (16 bytes), a
 * span id (8 bytes), its parent's span id, a name, a kind, a start and an end
 * (nanoseconds since the Unix epoch), a status, attributes and events. keel
 * makes spans for every HTTP request served and sent (keel/http.h,
 * keel/http_client.h) and, when a server asks for it, for gen_server calls;
 * this header is the small manual API for the user's own.
 *
 * Ownership, once: a keel_span is the caller's storage (usually a local
 * variable of the process that starts it). keel_span_start fills it and makes
 * it the process's current span; keel_span_end ends it, hands what it recorded
 * to the batch processor (keel/trace_export.h sends it) and makes the previous
 * span current again. Spans end in the reverse order they started, in the
 * process that started them. A span that is not sampled records nothing and
 * allocates nothing: it only carries ids, so the trace still propagates.
 * Strings given to the API are copied when the span records them.
 *
 * The current span follows the request: a gen_server call or cast carries it
 * to the server (with the log context, keel_log_follow_calls), the HTTP
 * client sends it as traceparent and tracestate, the HTTP server continues
 * the caller's. Every log line written while a span is current carries its
 * trace_id and span_id.
 *
 * Sampling follows OpenTelemetry's environment variables (OTEL_TRACES_SAMPLER,
 * OTEL_TRACES_SAMPLER_ARG; keel_trace_opts_from_env). Until keel_trace_start
 * runs, spans propagate ids (sampled as parentbased_always_on says) but none
 * records.
 */
#ifndef KEEL_TRACE_H
#define KEEL_TRACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "keel/log.h"
#include "keel/metrics.h"

#ifdef __cplusplus
extern "C" {
#endif

/* OTLP's SpanKind numbers. */
typedef enum keel_span_kind {
  KEEL_SPAN_INTERNAL = 1,
  KEEL_SPAN_SERVER = 2,
  KEEL_SPAN_CLIENT = 3,
  KEEL_SPAN_PRODUCER = 4,
  KEEL_SPAN_CONSUMER = 5
} keel_span_kind;

/* OTLP's Status.StatusCode numbers. */
typedef enum keel_span_status {
  KEEL_SPAN_UNSET = 0,
  KEEL_SPAN_OK = 1,
  KEEL_SPAN_ERROR = 2
} keel_span_status;

#define KEEL_TRACE_SAMPLED 0x01 /* the W3C trace flag */

/* A span context: what propagates. tracestate is borrowed (NULL: none); in
 * a span it lives as long as the span's parent. */
typedef struct keel_span_ctx {
  uint8_t trace_id[16];
  uint8_t span_id[8];
  uint8_t flags; /* KEEL_TRACE_SAMPLED */
  bool remote;   /* came from another process over the wire */
  bool valid;    /* false: no context (all zero) */
  const char *tracestate;
} keel_span_ctx;

struct keel_span_data; /* what a recording span keeps; the library's */

/* A span. Read ctx and parent_id; the rest is the library's. */
typedef struct keel_span {
  keel_span_ctx ctx;
  uint8_t parent_id[8];        /* zero for a root span */
  struct keel_span *prev;      /* the process's previous current span */
  struct keel_span_data *data; /* NULL when not recording */
  bool current;                /* installed as the process's current span */
  bool ended;
} keel_span;

typedef struct keel_span_opts {
  const keel_span_ctx *parent; /* NULL: the process's current span (if any) */
  bool root;                   /* a new trace even if a span is current */
  bool no_current;             /* do not make it the current span */
  uint64_t start_ns;           /* 0: now (CLOCK_REALTIME) */
  bool propagate_only;         /* ids and flags only: never records */
} keel_span_opts;

/* Starts span sp named name (copied when recording) of kind kind, a child of
 * opts->parent or the current span, sampled as the sampler decides. opts may
 * be NULL. Always leaves a usable span: 0, or KEEL_ENOMEM when the span could
 * not record (it then propagates only). Any thread; outside a keel process
 * no span is current. */
int keel_span_start(keel_span *sp, const char *name, keel_span_kind kind,
                    const keel_span_opts *opts);
/* Ends sp now (end_ns 0) or at end_ns; a second end does nothing. */
void keel_span_end_at(keel_span *sp, uint64_t end_ns);
#define keel_span_end(sp) keel_span_end_at((sp), 0)

/* True when sp records (sampled and tracing started). */
bool keel_span_recording(const keel_span *sp);

/* Attributes: string, integer, double, bool (keel_log_field's types; other
 * types are skipped). A key set again keeps both (as OTLP receivers show
 * them). Nothing happens on a span that does not record; after 128
 * attributes further ones are counted as dropped. */
void keel_span_set_attr_list(keel_span *sp, const keel_log_field *fields);
#define keel_span_set(sp, ...) keel_span_set_attr_list((sp), KEEL_FIELDS(__VA_ARGS__))
void keel_span_set_str(keel_span *sp, const char *key, const char *v);
void keel_span_set_int(keel_span *sp, const char *key, int64_t v);
void keel_span_set_double(keel_span *sp, const char *key, double v);
void keel_span_set_bool(keel_span *sp, const char *key, bool v);
/* An event now, with attributes (fields may be NULL); 128 at most. */
void keel_span_event_list(keel_span *sp, const char *name, const keel_log_field *fields);
#define keel_span_event(sp, name, ...) keel_span_event_list((sp), (name), KEEL_FIELDS(__VA_ARGS__))
/* The status; msg (copied, may be NULL) only counts with KEEL_SPAN_ERROR. */
void keel_span_set_status(keel_span *sp, keel_span_status status, const char *msg);
/* Renames the span (the HTTP server names its span once the route is known). */
void keel_span_set_name(keel_span *sp, const char *name);

/* The calling process's current span, or NULL (none, or not in a process). */
keel_span *keel_span_current(void);
/* Installs ctx (copied; its tracestate too) as the calling process's current
 * remote parent until keel_trace_ctx_pop: what a server does with a context
 * from the wire. KEEL_ENOTPROC outside a process, KEEL_ENOMEM. */
int keel_trace_ctx_push(const keel_span_ctx *ctx);
void keel_trace_ctx_pop(void);

/* ---- W3C trace context ------------------------------------------------------ */

/* Parses a traceparent header (W3C Trace Context level 1, later versions as
 * it says) and an optional tracestate (borrowed into out->tracestate when it
 * is 1..512 printable characters; otherwise dropped, as W3C allows).
 * true when traceparent was valid; out->remote is set. */
bool keel_trace_parse(const char *traceparent, const char *tracestate, keel_span_ctx *out);
/* Formats ctx as a version 00 traceparent (55 characters and a NUL). */
void keel_trace_format(const keel_span_ctx *ctx, char out[56]);
/* Lowercase hex of n bytes into out (2n characters and a NUL). */
void keel_trace_hex(const uint8_t *bytes, size_t n, char *out);

/* ---- sampling and start-up ---------------------------------------------------- */

typedef enum keel_sampler {
  KEEL_SAMPLER_PARENTBASED_ALWAYS_ON = 0, /* OpenTelemetry's default */
  KEEL_SAMPLER_ALWAYS_ON,
  KEEL_SAMPLER_ALWAYS_OFF,
  KEEL_SAMPLER_TRACEIDRATIO,
  KEEL_SAMPLER_PARENTBASED_ALWAYS_OFF,
  KEEL_SAMPLER_PARENTBASED_TRACEIDRATIO
} keel_sampler;

typedef struct keel_trace_opts {
  keel_sampler sampler; /* 0: parentbased_always_on */
  double ratio;         /* traceidratio's probability, 0..1; used only by the ratio samplers */
  bool ratio_set;       /* false: ratio 1.0 (OpenTelemetry's default argument) */
  int max_queue;        /* ended spans waiting for export; 0: OTEL_BSP_MAX_QUEUE_SIZE's 2048 */
} keel_trace_opts;

/* Fills o from OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG (unset or
 * empty: the defaults) and OTEL_BSP_MAX_QUEUE_SIZE. KEEL_EINVAL with a line
 * naming the variable in err ("OTEL_TRACES_SAMPLER: must be one of ..., got
 * x") when a value is invalid. err may be NULL. */
int keel_trace_opts_from_env(keel_trace_opts *o, char *err, size_t errcap);

/* The sampler's decision for a new span of trace_id under parent (NULL or
 * !valid: a root span). Pure; any thread. traceidratio samples when the trace
 * id's last 8 bytes, read big-endian, are below ratio x 2^64. */
bool keel_trace_sample(keel_sampler s, double ratio, const keel_span_ctx *parent,
                       const uint8_t trace_id[16]);

/* Starts recording: sampled spans go to the batch queue from now on. opts
 * may be NULL (the defaults; not the environment). KEEL_ESTATE when started,
 * KEEL_EINVAL for a bad ratio, KEEL_ENOMEM. Any thread. */
int keel_trace_start(const keel_trace_opts *opts);
/* Stops recording and frees the spans still queued. Spans ending later are
 * not recorded. Call after the exporter stopped. */
void keel_trace_stop(void);
/* True between keel_trace_start and keel_trace_stop. */
bool keel_trace_started(void);

/* What the batch processor counted since start: spans dropped because the
 * queue was full, exported, failed to export; and queued now. */
typedef struct keel_trace_stats {
  uint64_t dropped, exported, failed, queued;
} keel_trace_stats;
void keel_trace_stats_get(keel_trace_stats *out);

/* Registers keel_trace_spans_dropped_total, keel_trace_spans_exported_total,
 * keel_trace_spans_failed_total and keel_trace_queue_spans in registry r. */
int keel_trace_register_metrics(keel_metrics *r);

#ifdef __cplusplus
}
#endif
#endif
