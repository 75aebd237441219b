/* trace_queue.c - the batch processor's queue: ended spans waiting for export.
 *
 * A bounded multi-producer multi-consumer ring after Dmitry Vyukov's design:
 * each cell has a sequence number that says whether it is free for the
 * producer at position pos (seq == pos) or full for the consumer (seq ==
 * pos + 1); a producer claims a position with one compare-and-swap on the
 * tail, so keel_span_end never takes a lock and never waits. A full ring
 * drops the span and counts it (keel_trace_spans_dropped_total): tracing
 * must never slow down or block a request.
 *
 * Start and stop: keel_trace_start allocates the ring and sets `on`; pushes
 * bracket themselves with `users` so that keel_trace_stop, after clearing
 * `on`, waits for pushes in progress before freeing the ring. Both sides use
 * sequentially consistent operations on `on` and `users`: either the pusher
 * sees `on` cleared, or the stopper sees the pusher counted.
 *
 * The exporter (src/http/trace_export.c) takes batches; when the queue holds
 * a batch's worth it gets one wake-up call (its thread's condition signal), so that a busy node
 * exports full batches without waiting out the schedule delay.
 *
 * Records are reused: each thread keeps a few in a cache of its own (no
 * atomic operation at all for a span's record in the common case), in front
 * of a shared pool ring that threads refill from and spill to half a cache
 * at a time (the exporter frees whole batches on its thread, the schedulers
 * take them back).
 */
#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "keel/error.h"
#include "ops/trace_internal.h"

typedef struct cell {
  _Atomic size_t seq;
  keel__span_data *d;
} cell;

typedef struct ring {
  size_t cap;
  size_t mask; /* cap - 1 when cap is a power of two (the default 2048), else 0 */
  cell *cells;
  /* apart, so producers and the consumer do not share a cache line */
  _Alignas(64) _Atomic size_t tail; /* next position to fill */
  _Alignas(64) _Atomic size_t head; /* next position to take */
} ring;

static ring *_Atomic g_ring;
/* Records of ended spans, kept for reuse: the exporter frees a batch at a
 * time on its own thread, and handing 512 records back to malloc at once
 * made it trim the heap and fault the pages in again on the next batch
 * (perf: a third of a sampled span's time). Same ring, same capacity as the
 * queue; a full pool frees, an empty one mallocs. */
static ring *_Atomic g_pool;
static atomic_bool g_on;
static atomic_int g_users;
static atomic_flag g_lifecycle = ATOMIC_FLAG_INIT; /* one start or stop at a time */
static _Atomic uint64_t g_dropped, g_exported, g_failed;

static void (*_Atomic g_waker)(void);
static _Atomic size_t g_waker_at;
static atomic_bool g_woken;

bool keel__trace_queue_on(void) {
  /* relaxed: a span started just as tracing turns on or off may go either
   * way; push re-checks under the users bracket */
  return atomic_load_explicit(&g_on, memory_order_relaxed);
}

/* pos's cell. A power of two masks: a 64-bit division was in every push's
 * profile. */
static cell *cell_at(ring *r, size_t pos) {
  return &r->cells[r->mask ? pos & r->mask : pos % r->cap];
}

static bool ring_put(ring *r, keel__span_data *d) {
  size_t pos = atomic_load_explicit(&r->tail, memory_order_relaxed);
  for (;;) {
    cell *c = cell_at(r, pos);
    /* acquire: pairs with the consumer's release that freed the cell */
    size_t seq = atomic_load_explicit(&c->seq, memory_order_acquire);
    intptr_t dif = (intptr_t)seq - (intptr_t)pos;
    if (dif == 0) {
      if (atomic_compare_exchange_weak_explicit(&r->tail, &pos, pos + 1, memory_order_relaxed,
                                                memory_order_relaxed)) {
        c->d = d;
        /* release: the consumer that sees seq sees d and the span's data */
        atomic_store_explicit(&c->seq, pos + 1, memory_order_release);
        return true;
      }
    } else if (dif < 0) {
      return false; /* full */
    } else {
      pos = atomic_load_explicit(&r->tail, memory_order_relaxed);
    }
  }
}

static keel__span_data *ring_get(ring *r) {
  size_t pos = atomic_load_explicit(&r->head, memory_order_relaxed);
  for (;;) {
    cell *c = cell_at(r, pos);
    size_t seq = atomic_load_explicit(&c->seq, memory_order_acquire);
    intptr_t dif = (intptr_t)seq - (intptr_t)(pos + 1);
    if (dif == 0) {
      if (atomic_compare_exchange_weak_explicit(&r->head, &pos, pos + 1, memory_order_relaxed,
                                                memory_order_relaxed)) {
        keel__span_data *d = c->d;
        /* release: the producer that sees the cell free may overwrite d */
        atomic_store_explicit(&c->seq, pos + r->cap, memory_order_release);
        return d;
      }
    } else if (dif < 0) {
      return NULL; /* empty */
    } else {
      pos = atomic_load_explicit(&r->head, memory_order_relaxed);
    }
  }
}

/* Up to max records at once with one compare-and-swap: the cells from the
 * head that are full are claimed together by moving the head past them
 * (none can be taken by another consumer without moving the head first, so
 * a failed CAS means someone did: look again). The per-thread caches move
 * records to and from the pool this way. */
static size_t ring_get_many(ring *r, keel__span_data **out, size_t max) {
  size_t pos = atomic_load_explicit(&r->head, memory_order_relaxed);
  for (;;) {
    size_t n = 0;
    /* acquire: pairs with the producers' release of each cell */
    while (n < max &&
           atomic_load_explicit(&cell_at(r, pos + n)->seq, memory_order_acquire) == pos + n + 1)
      n++;
    if (n == 0) {
      size_t now = atomic_load_explicit(&r->head, memory_order_relaxed);
      if (now == pos) return 0; /* empty */
      pos = now;
      continue;
    }
    if (atomic_compare_exchange_weak_explicit(&r->head, &pos, pos + n, memory_order_relaxed,
                                              memory_order_relaxed)) {
      for (size_t i = 0; i < n; i++) {
        cell *c = cell_at(r, pos + i);
        out[i] = c->d;
        /* release: as ring_get's */
        atomic_store_explicit(&c->seq, pos + i + r->cap, memory_order_release);
      }
      return n;
    }
  }
}

/* Up to n records at once, the producers' side of ring_get_many: the free
 * cells from the tail are claimed together. Returns how many it took. */
static size_t ring_put_many(ring *r, keel__span_data *const *in, size_t n) {
  size_t pos = atomic_load_explicit(&r->tail, memory_order_relaxed);
  for (;;) {
    size_t k = 0;
    /* acquire: pairs with the consumers' release that freed each cell */
    while (k < n &&
           atomic_load_explicit(&cell_at(r, pos + k)->seq, memory_order_acquire) == pos + k)
      k++;
    if (k == 0) {
      size_t now = atomic_load_explicit(&r->tail, memory_order_relaxed);
      if (now == pos) return 0; /* full */
      pos = now;
      continue;
    }
    if (atomic_compare_exchange_weak_explicit(&r->tail, &pos, pos + k, memory_order_relaxed,
                                              memory_order_relaxed)) {
      for (size_t i = 0; i < k; i++) {
        cell *c = cell_at(r, pos + i);
        c->d = in[i];
        atomic_store_explicit(&c->seq, pos + i + 1, memory_order_release);
      }
      return k;
    }
  }
}

static size_t ring_len(ring *r) {
  size_t t = atomic_load_explicit(&r->tail, memory_order_relaxed);
  size_t h = atomic_load_explicit(&r->head, memory_order_relaxed);
  return t > h ? t - h : 0;
}

static void wake_maybe(ring *r) {
  void (*fn)(void) = atomic_load_explicit(&g_waker, memory_order_relaxed);
  if (!fn || ring_len(r) < atomic_load_explicit(&g_waker_at, memory_order_relaxed)) return;
  if (atomic_exchange_explicit(&g_woken, true, memory_order_relaxed)) return;
  fn();
}

static ring *ring_new(size_t cap) {
  ring *r = calloc(1, sizeof *r);
  if (r) r->cells = calloc(cap, sizeof *r->cells);
  if (!r || !r->cells) {
    free(r);
    return NULL;
  }
  r->cap = cap;
  r->mask = (cap & (cap - 1)) == 0 ? cap - 1 : 0;
  for (size_t i = 0; i < cap; i++)
    atomic_init(&r->cells[i].seq, i);
  return r;
}

/* Frees r and what it holds: ended spans (their data too), or, for the
 * pool, bare records whose fields are stale. */
static void ring_free(ring *r, bool records) {
  keel__span_data *d;
  while ((d = ring_get(r)))
    if (records)
      free(d);
    else
      keel__span_data_free(d);
  free(r->cells);
  free(r);
}

/* ---- the per-thread record cache ------------------------------------------------------ */

/* perf (bench_trace span_sampled): taking a record from the pool ring and
 * giving it back cost two users brackets and two compare-and-swaps per
 * span, a fifth of a sampled span's time. The cache is touched only inside
 * these functions, which never yield, so a process that moves between
 * schedulers never carries it across threads. A thread's cache is freed
 * when the thread ends (a key destructor); the main thread's stays
 * reachable to the end. */
#define TCACHE 64

typedef struct tcache {
  keel__span_data *v[TCACHE];
  int n;
  bool keyed; /* the destructor knows this thread's cache */
} tcache;

static _Thread_local tcache tl_cache;
static pthread_key_t tc_key;
static pthread_once_t tc_once = PTHREAD_ONCE_INIT;
static bool tc_key_ok;

static void tc_destroy(void *p) {
  tcache *c = p;
  while (c->n > 0)
    free(c->v[--c->n]);
  c->keyed = false; /* a record freed by a later destructor hooks the cache again */
}

static void tc_key_make(void) {
  tc_key_ok = pthread_key_create(&tc_key, tc_destroy) == 0;
}

/* The calling thread's cache, or NULL when its end could not be hooked
 * (then records go straight to the pool or malloc). */
static tcache *tc_get(void) {
  tcache *c = &tl_cache;
  if (!c->keyed) {
    pthread_once(&tc_once, tc_key_make);
    if (!tc_key_ok || pthread_setspecific(tc_key, c) != 0) return NULL;
    c->keyed = true;
  }
  return c;
}

/* Moves up to want records from the pool into c (one users bracket, one
 * compare-and-swap). */
static void tc_refill(tcache *c, int want) {
  atomic_fetch_add(&g_users, 1);
  ring *p = atomic_load(&g_on) ? atomic_load_explicit(&g_pool, memory_order_acquire) : NULL;
  if (p && want > c->n) c->n += (int)ring_get_many(p, c->v + c->n, (size_t)(want - c->n));
  atomic_fetch_sub(&g_users, 1);
}

/* Gives the older half of c to the pool, freeing what it has no room for. */
static void tc_spill(tcache *c) {
  size_t half = TCACHE / 2, put = 0;
  atomic_fetch_add(&g_users, 1);
  ring *p = atomic_load(&g_on) ? atomic_load_explicit(&g_pool, memory_order_acquire) : NULL;
  if (p) put = ring_put_many(p, c->v, half);
  atomic_fetch_sub(&g_users, 1);
  for (size_t i = put; i < half; i++)
    free(c->v[i]);
  memmove(c->v, c->v + half, (size_t)(c->n - (int)half) * sizeof c->v[0]);
  c->n -= (int)half;
}

keel__span_data *keel__trace_record_alloc(void) {
  tcache *c = tc_get();
  if (c && c->n == 0) tc_refill(c, TCACHE / 2);
  if (c && c->n > 0) return c->v[--c->n];
  return malloc(sizeof(keel__span_data));
}

void keel__trace_record_recycle(keel__span_data *d) {
  tcache *c = tc_get();
  if (!c) {
    free(d);
    return;
  }
  if (c->n == TCACHE) tc_spill(c);
  c->v[c->n++] = d;
}

void keel__trace_push(keel__span_data *d) {
  atomic_fetch_add(&g_users, 1);
  ring *r = atomic_load(&g_on) ? atomic_load_explicit(&g_ring, memory_order_acquire) : NULL;
  if (!r) {
    keel__span_data_free(d); /* stopped meanwhile: not recorded, not counted */
  } else if (!ring_put(r, d)) {
    keel__span_data_free(d);
    atomic_fetch_add_explicit(&g_dropped, 1, memory_order_relaxed);
  } else {
    wake_maybe(r);
  }
  atomic_fetch_sub(&g_users, 1);
}

size_t keel__trace_take(keel__span_data **out, size_t max) {
  atomic_fetch_add(&g_users, 1);
  ring *r = atomic_load(&g_on) ? atomic_load_explicit(&g_ring, memory_order_acquire) : NULL;
  size_t n = 0;
  if (r) {
    atomic_store_explicit(&g_woken, false, memory_order_relaxed);
    while (n < max && (out[n] = ring_get(r)))
      n++;
  }
  atomic_fetch_sub(&g_users, 1);
  return n;
}

void keel__trace_count(uint64_t exported, uint64_t failed) {
  atomic_fetch_add_explicit(&g_exported, exported, memory_order_relaxed);
  atomic_fetch_add_explicit(&g_failed, failed, memory_order_relaxed);
}

void keel__trace_set_waker(void (*fn)(void), size_t threshold) {
  atomic_store_explicit(&g_waker_at, threshold ? threshold : 1, memory_order_relaxed);
  atomic_store_explicit(&g_woken, false, memory_order_relaxed);
  atomic_store_explicit(&g_waker, fn, memory_order_relaxed);
}

static void lock_lifecycle(void) {
  while (atomic_flag_test_and_set_explicit(&g_lifecycle, memory_order_acquire))
    sched_yield();
}
static void unlock_lifecycle(void) {
  atomic_flag_clear_explicit(&g_lifecycle, memory_order_release);
}

int keel_trace_start(const keel_trace_opts *o) {
  keel_trace_opts d = {0};
  if (!o) o = &d;
  if (o->max_queue < 0) return KEEL_EINVAL;
  lock_lifecycle();
  int rc = 0;
  ring *r = NULL;
  if (atomic_load(&g_on)) {
    rc = KEEL_ESTATE;
  } else if ((rc = keel__trace_sampler_set(o)) == 0) {
    size_t cap = o->max_queue ? (size_t)o->max_queue : 2048;
    r = ring_new(cap);
    ring *pool = r ? ring_new(cap) : NULL;
    if (!pool) {
      if (r) ring_free(r, false);
      rc = KEEL_ENOMEM;
    } else {
      atomic_store_explicit(&g_pool, pool, memory_order_release);
      atomic_store(&g_dropped, 0);
      atomic_store(&g_exported, 0);
      atomic_store(&g_failed, 0);
      atomic_store_explicit(&g_ring, r, memory_order_release);
      atomic_store(&g_on, true);
      keel__trace_follow_calls(true);
    }
  }
  unlock_lifecycle();
  return rc;
}

void keel_trace_stop(void) {
  lock_lifecycle();
  if (atomic_exchange(&g_on, false)) {
    while (atomic_load(&g_users) > 0) /* pushes in progress: a few instructions each */
      sched_yield();
    /* the queue first: its records may go to the pool, which is then on its
     * way out too (recycle sees g_on cleared and frees) */
    ring_free(atomic_exchange(&g_ring, NULL), false);
    ring_free(atomic_exchange(&g_pool, NULL), true);
    keel__trace_set_waker(NULL, 0);
  }
  unlock_lifecycle();
}

bool keel_trace_started(void) {
  return atomic_load(&g_on);
}

void keel_trace_stats_get(keel_trace_stats *out) {
  if (!out) return;
  ring *r = NULL;
  atomic_fetch_add(&g_users, 1);
  if (atomic_load(&g_on)) r = atomic_load_explicit(&g_ring, memory_order_acquire);
  out->queued = r ? ring_len(r) : 0;
  atomic_fetch_sub(&g_users, 1);
  out->dropped = atomic_load_explicit(&g_dropped, memory_order_relaxed);
  out->exported = atomic_load_explicit(&g_exported, memory_order_relaxed);
  out->failed = atomic_load_explicit(&g_failed, memory_order_relaxed);
}

/* ---- metrics ---------------------------------------------------------------------------- */

static void collect(keel_metrics *reg, void *ud) {
  (void)ud;
  keel_trace_stats st;
  keel_trace_stats_get(&st);
  static const struct {
    const char *name;
    size_t off;
  } cs[] = {{"keel_trace_spans_dropped_total", offsetof(keel_trace_stats, dropped)},
            {"keel_trace_spans_exported_total", offsetof(keel_trace_stats, exported)},
            {"keel_trace_spans_failed_total", offsetof(keel_trace_stats, failed)}};
  for (size_t i = 0; i < 3; i++) {
    keel_counter *c;
    keel_metric_family *f = keel_metrics_find(reg, cs[i].name);
    if (f && keel_counter_get(f, NULL, &c) == 0)
      keel_counter_set(c, (double)*(const uint64_t *)((const char *)&st + cs[i].off));
  }
  keel_gauge *g;
  keel_metric_family *f = keel_metrics_find(reg, "keel_trace_queue_spans");
  if (f && keel_gauge_get(f, NULL, &g) == 0) keel_gauge_set(g, (double)st.queued);
}

int keel_trace_register_metrics(keel_metrics *r) {
  if (!r) return KEEL_EINVAL;
  keel_metric_family *f;
  int rc =
      keel_metrics_counter(r, "keel_trace_spans_dropped_total",
                           "Ended spans dropped because the export queue was full", NULL, 0, &f);
  if (!rc)
    rc = keel_metrics_counter(r, "keel_trace_spans_exported_total", "Spans the collector accepted",
                              NULL, 0, &f);
  if (!rc)
    rc = keel_metrics_counter(r, "keel_trace_spans_failed_total",
                              "Spans that could not be exported (collector down or refusing)", NULL,
                              0, &f);
  if (!rc)
    rc = keel_metrics_gauge(r, "keel_trace_queue_spans", "Ended spans waiting for export", NULL, 0,
                            &f);
  if (!rc) rc = keel_metrics_add_collector(r, collect, NULL);
  return rc;
}
