/* trace_internal.h - what the tracing files share with each other and with
 * the exporter in src/http (not installed).
 *
 * A recording span keeps a keel_span_data: ids, times, name, status and its
 * attributes and events, all owned by it. keel_span_end hands it to the batch
 * queue (trace_queue.c); the exporter's thread takes batches with
 * keel__trace_take, encodes them (src/http/trace_otlp.c) and frees them with
 * keel__span_data_free.
 */
#ifndef KEEL_TRACE_INTERNAL_H
#define KEEL_TRACE_INTERNAL_H

#include <stdatomic.h>

#include "keel/process.h"
#include "keel/trace.h"

#define KEEL__TRACE_INLINE_ATTRS 16
#define KEEL__TRACE_ARENA        512

enum { KEEL__TA_STR = 1, KEEL__TA_BOOL, KEEL__TA_INT, KEEL__TA_DOUBLE };

/* An attribute. key and a string value are NUL-terminated and carry their
 * lengths, so the encoder never measures them. They live in the record's
 * arena, or in one malloc'd block (key first, then the value) when heap is
 * set, or, for a key, in static storage (the server span's literal keys). */
typedef struct keel__tattr {
  const char *key;
  uint32_t klen, vlen; /* vlen: a string value's length */
  uint8_t type;        /* KEEL__TA_* */
  bool heap;           /* key is a malloc'd block holding key and value */
  union {
    const char *s;
    int64_t i;
    double d;
    bool b;
  } v;
} keel__tattr;

typedef struct keel__tattrs {
  keel__tattr *a;
  uint32_t n, cap, dropped;
  bool inl; /* a is the record's attr_inl (not freed) */
} keel__tattrs;

typedef struct keel__tevent {
  char *name;
  uint64_t t_ns;
  keel__tattrs attrs;
} keel__tevent;

/* A heap object a process owns while it runs (trace.c): the record of a
 * span it started and has not ended, a context it pushed and has not popped,
 * a span block of the gen_server hooks. A circular list per process with a
 * sentinel, so unlinking needs no owner; the process's exit hook ends or
 * frees what is still linked when it dies. */
typedef struct keel__towned {
  struct keel__towned *prev, *next; /* NULL: not owned */
  uint8_t kind;                     /* trace.c's OWN_* */
} keel__towned;

struct keel_span_data {
  keel__towned own; /* linked while a process owns the open span; first member */
  uint8_t trace_id[16], span_id[8], parent_id[8];
  uint8_t flags, kind, status;
  bool has_parent, parent_remote;
  uint64_t start_ns, end_ns;
  char *name; /* name_buf, or malloc'd when longer */
  char *status_msg;
  char *tracestate;
  keel__tattrs attrs;
  keel__tevent *events;
  uint32_t nevents, evcap, dropped_events;
  uint32_t arena_used;
  char name_buf[40];
  /* A span's first attributes and their strings live here, in the record
   * the pool recycles: an HTTP server span (about ten attributes, short
   * values) allocates nothing (decision 0035). */
  keel__tattr attr_inl[KEEL__TRACE_INLINE_ATTRS];
  char arena[KEEL__TRACE_ARENA];
};
typedef struct keel_span_data keel__span_data;

#define KEEL__TRACE_MAX_ATTRS  128
#define KEEL__TRACE_MAX_EVENTS 128

/* trace.c */
void keel__span_data_free(keel__span_data *d);
/* Attributes whose key is static storage of klen bytes (a literal: not
 * copied) and whose string value has vlen bytes (copied, NUL added): what
 * the HTTP server span sets without a strlen or a malloc. As
 * keel_span_set_str and keel_span_set_int otherwise. */
void keel__span_attr_str(keel_span *sp, const char *key, size_t klen, const char *v, size_t vlen);
void keel__span_attr_int(keel_span *sp, const char *key, size_t klen, int64_t v);
#define KEEL__SPAN_STR(sp, lit, v, vlen) keel__span_attr_str((sp), lit, sizeof lit - 1, (v), (vlen))
#define KEEL__SPAN_INT(sp, lit, v)       keel__span_attr_int((sp), lit, sizeof lit - 1, (v))
/* Renames the span to a and b joined by a space (the HTTP server's
 * "METHOD route"), without formatting. */
void keel__span_name2(keel_span *sp, const char *a, size_t alen, const char *b, size_t blen);
/* A keel_span on the heap that the calling process owns: freed with
 * keel__span_heap_free, or by the process's exit hook if it dies first
 * (after the hook ended its span as an error). NULL: no memory. */
keel_span *keel__span_heap_new(void);
void keel__span_heap_free(keel_span *sp);
/* trace_clock.c: the wall clock in ns, cheaply (the TSC between anchors). */
uint64_t keel__trace_now_ns(void);
/* The current span's ids as hex for a log line; false when no span is current. */
bool keel__trace_log_ids(char trace_hex[33], char span_hex[17]);
/* The exporter's process records no spans of its own (its HTTP requests
 * would be traced, exported, traced ...): this marks the calling process. */
int keel__trace_suppress(void);
bool keel__trace_suppressed(void);
/* 64 random bits from the calling thread's xoshiro256** stream. */
uint64_t keel__rand64(void);

/* trace_sampler.c: the sampler keel_trace_start installed; false when not started. */
bool keel__trace_decide(const keel_span_ctx *parent, const uint8_t trace_id[16]);
int keel__trace_sampler_set(const keel_trace_opts *o);

/* trace_queue.c: records come from and go back to a pool while tracing
 * runs (malloc/free otherwise); keel__span_data_free recycles. */
keel__span_data *keel__trace_record_alloc(void);
void keel__trace_record_recycle(keel__span_data *d);

/* trace_queue.c: the batch queue. push takes d (freed when the queue is full
 * or tracing stopped, and counted as dropped). */
void keel__trace_push(keel__span_data *d);
int keel__trace_queue_start(int max_queue);
void keel__trace_queue_stop(void);
bool keel__trace_queue_on(void);
/* Up to max ended spans, oldest first; the caller frees each. */
size_t keel__trace_take(keel__span_data **out, size_t max);
/* The exporter's outcome for n spans. */
void keel__trace_count(uint64_t exported, uint64_t failed);
/* When at least threshold spans wait, call fn once to wake the exporter
 * (once until keel__trace_take runs), on the thread that pushed: fn must be
 * quick and must stay callable after the exporter stopped (it may race
 * with the stop). NULL turns it off. */
void keel__trace_set_waker(void (*fn)(void), size_t threshold);

/* log_calls.c: trace context rides gen_server calls with the log context. */
void keel__trace_follow_calls(bool on);

#endif
