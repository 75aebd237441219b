/* keel/metrics.h - Prometheus metrics: counters, gauges, histograms, exposition.
 *
 * A registry (keel_metrics) holds metric families. A family has a name, help
 * text, a type and label names; each set of label values is a child, created
 * on first use and never freed before the registry. Look a child up once and
 * keep the pointer: incrementing through it is the hot path (a few ns, no
 * lock, no contention between schedulers: counters and histograms keep one
 * cache-line-padded shard per scheduler and one shared shard for other
 * threads, summed when scraped).
 *
 *   keel_metrics *reg;
 *   keel_metric_family *reqs;
 *   keel_counter *ok;
 *   keel_metrics_new(&reg, 0);
 *   keel_metrics_counter(reg, "http_requests_total", "Requests served.",
 *                        (const char *[]){"code"}, 1, &reqs);
 *   keel_counter_get(reqs, (const char *[]){"200"}, &ok);
 *   keel_counter_inc(ok);                       // hot path
 *   keel_metrics_buf b = {0};
 *   keel_metrics_render(reg, KEEL_METRICS_TEXT, &b);   // b.data, b.len
 *   keel_metrics_buf_free(&b);
 *
 * Threads: every function may be called from any thread, in or out of a keel
 * process; none of them waits (get-or-create and rendering take short
 * internal mutexes, never held across a yield). See docs/metrics.md.
 */
#ifndef KEEL_METRICS_H
#define KEEL_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "keel/error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct keel_metrics keel_metrics;             /* a registry */
typedef struct keel_metric_family keel_metric_family; /* one name, many label sets */
typedef struct keel_counter keel_counter;             /* a counter child */
typedef struct keel_gauge keel_gauge;                 /* a gauge child */
typedef struct keel_histogram keel_histogram;         /* a histogram child */

/* ---- registry ------------------------------------------------------------ */

/* Creates an empty registry in *out. `shards` is the number of per-scheduler
 * shards each counter and histogram child keeps (plus one shared shard);
 * 0 means keel_sched_count() when the runtime runs, else the number of online
 * cores. A scheduler whose index is >= shards uses the shared shard: still
 * exact, only slower. The caller owns *out and frees it with
 * keel_metrics_free. Errors: KEEL_EINVAL (out NULL, shards < 0 or > 1024),
 * KEEL_ENOMEM. */
int keel_metrics_new(keel_metrics **out, int shards);

/* Frees the registry, its families and children (every pointer obtained from
 * it becomes invalid) and unsubscribes the built-in collector's supervisor
 * handler. No other thread may use the registry any more; when built-ins are
 * registered, call it after the supervisors stopped (or after keel_rt_stop),
 * so no restart event is being delivered. NULL is accepted. */
void keel_metrics_free(keel_metrics *r);

/* ---- families -------------------------------------------------------------- */

/* Registers a family. name must match [a-zA-Z_:][a-zA-Z0-9_:]*; each label
 * name [a-zA-Z_][a-zA-Z0-9_]* without a leading "__", distinct, and "le" is
 * reserved for histograms. A counter's name may end in "_total"; the suffix
 * is stripped to form the family name and added back to the sample, as the
 * formats require. A gauge's or histogram's name must not end in "_total",
 * nor a histogram's in "_bucket", "_sum", "_count". help may be NULL (""), is
 * any UTF-8 text and is escaped on output. name, help and labels are copied
 * (borrowed for the call only). *out is owned by the registry, valid until
 * keel_metrics_free. A family without labels has exactly one child, got with
 * values NULL. Errors: KEEL_EINVAL (a bad name, label, bucket list),
 * KEEL_EEXIST (a family of that name exists), KEEL_ENOMEM. */
int keel_metrics_counter(keel_metrics *r, const char *name, const char *help,
                         const char *const *labels, size_t nlabels, keel_metric_family **out);
int keel_metrics_gauge(keel_metrics *r, const char *name, const char *help,
                       const char *const *labels, size_t nlabels, keel_metric_family **out);

/* Histogram buckets: the upper bounds, strictly increasing finite numbers;
 * +Inf is always added. buckets NULL (nbuckets 0) takes the default
 * Prometheus buckets .005 .01 .025 .05 .1 .25 .5 1 2.5 5 10. At most 256
 * bounds; copied. Errors as above. */
int keel_metrics_histogram(keel_metrics *r, const char *name, const char *help,
                           const char *const *labels, size_t nlabels, const double *buckets,
                           size_t nbuckets, keel_metric_family **out);

/* A gauge histogram: the same buckets, but a distribution of values now (the
 * mailbox depths of all processes at this scrape), not an accumulation of
 * events, so its buckets may go down. Typically filled by a collector with
 * keel_histogram_set. Rendered as OpenMetrics "gaugehistogram" (samples
 * _bucket, _gcount, _gsum) and, since the text format 0.0.4 has no such
 * type, as "histogram" there (_bucket, _count, _sum). Children are
 * keel_histogram, got with keel_histogram_get. Arguments and errors as
 * keel_metrics_histogram; the name must not end in _gcount or _gsum either. */
int keel_metrics_gauge_histogram(keel_metrics *r, const char *name, const char *help,
                                 const char *const *labels, size_t nlabels, const double *buckets,
                                 size_t nbuckets, keel_metric_family **out);

/* The family registered under name (a counter's with or without its
 * "_total"), or NULL: for a module that registers
 * its families once per registry and shares them among its instances (it
 * gets KEEL_EEXIST from the second registration, then finds the first). */
keel_metric_family *keel_metrics_find(keel_metrics *r, const char *name);

/* ---- children (get-or-create; cache the pointer) -------------------------- */

/* The child of family f for the label values (one per label name, in the
 * order the family declared them; any UTF-8, copied; NULL when the family has
 * no labels). *out is owned by the registry and valid until keel_metrics_free.
 * Errors: KEEL_EINVAL (f of another type, a NULL value), KEEL_ENOMEM. */
int keel_counter_get(keel_metric_family *f, const char *const *values, keel_counter **out);
int keel_gauge_get(keel_metric_family *f, const char *const *values, keel_gauge **out);
int keel_histogram_get(keel_metric_family *f, const char *const *values, keel_histogram **out);

/* ---- the hot path ---------------------------------------------------------- */

/* Adds 1 (or n) to a counter. Any thread; a few ns on a scheduler thread. */
void keel_counter_inc(keel_counter *c);
void keel_counter_add(keel_counter *c, double n); /* n < 0 or NaN is ignored */

/* For collectors mirroring a total kept elsewhere: makes the counter's value
 * `total` (by adding the difference to its shared shard). Do not mix with
 * inc/add on the same child. */
void keel_counter_set(keel_counter *c, double total);

/* The counter's current value (the sum of its shards). Any thread. */
double keel_counter_value(const keel_counter *c);

/* Gauges: one atomic double. Any thread. */
void keel_gauge_set(keel_gauge *g, double v);
void keel_gauge_add(keel_gauge *g, double d); /* d may be negative */
void keel_gauge_inc(keel_gauge *g);
void keel_gauge_dec(keel_gauge *g);
double keel_gauge_value(const keel_gauge *g);

/* Records one observation (NaN is ignored). Any thread. */
void keel_histogram_observe(keel_histogram *h, double v);

/* For collectors (of gauge histograms mostly): replaces the histogram's
 * contents with counts[i] observations in bucket i (not cumulative: counts[i]
 * values v with bound[i-1] < v <= bound[i]; the last entry is the +Inf
 * bucket) and the given sum. ncounts must be the number of bounds + 1.
 * Renders are serialised with collectors, so a render never sees half a set
 * made by a collector; do not mix with keel_histogram_observe on the same
 * child from other threads (an observation made during the set may be lost).
 * Errors: KEEL_EINVAL (NULL h or counts, wrong ncounts, NaN sum). Any thread. */
int keel_histogram_set(keel_histogram *h, const uint64_t *counts, size_t ncounts, double sum);

/* A histogram's count and sum (summed over shards). Any thread. */
void keel_histogram_totals(const keel_histogram *h, uint64_t *count, double *sum);

/* ---- collectors ------------------------------------------------------------ */

/* A function run at the start of every render, to bring values kept elsewhere
 * up to date (with keel_gauge_set, keel_counter_set). It runs on the thread
 * that renders and must not wait. ud is borrowed until keel_metrics_free.
 * Errors: KEEL_EINVAL, KEEL_ENOMEM. */
typedef void (*keel_metrics_collector_fn)(keel_metrics *r, void *ud);
int keel_metrics_add_collector(keel_metrics *r, keel_metrics_collector_fn fn, void *ud);

/* Registers the built-in metrics and their collector: process_cpu_seconds_total,
 * process_resident_memory_bytes, process_virtual_memory_bytes,
 * process_open_fds, process_max_fds, process_start_time_seconds (from
 * /proc/self), keel_processes_alive, keel_processes_spawned_total,
 * keel_processes_exited_total, keel_messages_sent_total,
 * keel_messages_to_dead_total, keel_blocking_queue, keel_blocking_running
 * (from keel_rt_stats_get), keel_mailbox_depth_max and the gauge histogram
 * keel_mailbox_depth (a walk of every process at each render),
 * keel_scheduler_utilization{scheduler} (busy fraction since the previous
 * render, or since the runtime started), keel_scheduler_run_queue{scheduler},
 * keel_scheduler_stuck{scheduler}, keel_scheduler_context_switches_total
 * {scheduler} (keel_rt_sched_info), keel_log_lines_total{level} and
 * keel_log_dropped_lines_total (keel_log_stats_get; 0 until keel_log_init) and
 * keel_supervisor_restarts_total{supervisor,child} (counted from supervisor
 * restart events; the supervisor label is its registered name, else its pid).
 * Once per registry. Errors: KEEL_EEXIST (already registered, or a name
 * taken), KEEL_ENOMEM, or keel_sup_subscribe's. */
int keel_metrics_register_builtin(keel_metrics *r);

/* ---- exposition ------------------------------------------------------------ */

typedef enum keel_metrics_format {
  KEEL_METRICS_TEXT = 0,        /* Prometheus text format 0.0.4 */
  KEEL_METRICS_OPENMETRICS = 1, /* OpenMetrics 1.0.0 text */
} keel_metrics_format;

/* A growable output buffer owned by the caller: start from {0} (or reuse one;
 * render appends), free with keel_metrics_buf_free. data is NUL-terminated
 * after a successful render; len excludes the NUL. */
typedef struct keel_metrics_buf {
  char *data;
  size_t len, cap;
} keel_metrics_buf;
void keel_metrics_buf_free(keel_metrics_buf *b);

/* Runs the collectors, then appends the exposition of every family (in
 * registration order, children in creation order) to *out. Errors:
 * KEEL_EINVAL, KEEL_ENOMEM (out keeps what it had). Any thread; renders
 * serialise with each other. */
int keel_metrics_render(keel_metrics *r, keel_metrics_format fmt, keel_metrics_buf *out);

/* Chooses the format for an HTTP Accept header value (NULL or "" means text):
 * OpenMetrics when application/openmetrics-text (version 1.0.0 or none) has a
 * q at least that of every text/plain or wildcard range, else text 0.0.4.
 * Sets *fmt and *content_type (a static string for the Content-Type header;
 * either pointer may be NULL). Returns 0. */
int keel_metrics_negotiate(const char *accept, keel_metrics_format *fmt, const char **content_type);

#define KEEL_METRICS_TEXT_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
#define KEEL_METRICS_OPENMETRICS_CONTENT_TYPE                                                      \
  "application/openmetrics-text; version=1.0.0; charset=utf-8"

#ifdef __cplusplus
}
#endif
#endif
