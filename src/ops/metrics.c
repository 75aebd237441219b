/* metrics.c - the metrics registry, its sharded hot path and the exposition.
 *
 * A registry is a list of families (registration order) under one mutex. A
 * family holds its children in a small chained hash table keyed by the label
 * values joined with NUL bytes (values are C strings, so the join is
 * unambiguous), plus a list in creation order for rendering; both under the
 * family's mutex, which only get-or-create and rendering take. A child never
 * moves or dies before the registry, so the pointer a caller caches stays good.
 *
 * The hot path. Each counter and histogram child owns nshards + 1 shards,
 * each starting on its own 64-byte cache line: shard i belongs to scheduler i,
 * the last one is shared by every other thread (the blocking pool, main,
 * foreign threads) and by schedulers whose index is >= nshards. keel
 * schedules cooperatively, so between reading the thread's scheduler index
 * (keel_sched_current(), cached per thread) and the update the calling code
 * cannot yield: shard i is written only by the thread of scheduler i, one
 * update at a time. That single writer lets the update be a relaxed load and
 * a relaxed store (no locked instruction, no cache line bouncing). A counter
 * shard holds an integer for whole increments (exact, one cycle) and a double
 * for fractional ones. The shared shard has many writers and uses fetch_add
 * or a compare-exchange loop instead. A render sums the shards with relaxed
 * loads. Relaxed is enough because a metric's value is only the sum: no other
 * memory is published through a shard, and a concurrent scrape sees for each
 * shard some value between the one before and the one after an in-flight
 * update, which is what a scrape taken "at some instant during the render"
 * means; a reader that needs the final total (a test) gets it from the
 * happens-before its own synchronisation (a join, a message) already gives
 * it. A histogram's _count is computed from the same bucket reads as its
 * buckets, so _count always equals the +Inf bucket; its _sum may lag a
 * concurrent observation by one. Gauges are one atomic double (set is a
 * store; add a compare-exchange loop). A gauge histogram is a histogram child
 * whose contents a collector replaces at each render (keel_histogram_set:
 * zero the scheduler shards, store the counts in the shared one); only its
 * rendering differs (OpenMetrics "gaugehistogram" with _gcount and _gsum).
 *
 * Rendering writes straight into the caller's growable buffer with a small
 * hand-written number formatter (integers without printf, other values with
 * the shortest of %.15g / %.17g that reads back exactly), so 10,000 series
 * render in a few milliseconds.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "keel/metrics.h"
#include "keel/runtime.h"
#include "ops/ops_internal.h"

#define LINE        64
#define MAX_BUCKETS 256

enum { T_COUNTER, T_GAUGE, T_HISTOGRAM, T_GAUGE_HISTOGRAM };

#define IS_HIST(t) ((t) == T_HISTOGRAM || (t) == T_GAUGE_HISTOGRAM)

typedef struct child {
  struct keel_metric_family *f;
  struct child *next;  /* creation order */
  struct child *hnext; /* hash chain */
  uint64_t hash;
  char *key; /* values joined by NUL; values[i] point into it */
  size_t keylen;
  const char **values;
  unsigned char *shards; /* counters, histograms: (nshards + 1) * stride bytes */
  int nshards;           /* copy of the registry's, next to shards for the hot path */
  _Atomic double gauge;
} child;

typedef struct collector {
  keel_metrics_collector_fn fn;
  void *ud;
} collector;

struct keel_metric_family {
  keel_metrics *reg;
  struct keel_metric_family *next;
  int type;
  char *name; /* family name (a counter's without _total) */
  char *help;
  char **labels;
  size_t nlabels;
  double *bounds; /* histograms: finite upper bounds */
  size_t nbounds;
  size_t stride; /* bytes per shard, a multiple of LINE */
  pthread_mutex_t lock;
  child **table;
  size_t tcap, count;
  child *first, *last;
};

struct keel_metrics {
  pthread_mutex_t lock;        /* families list, collectors */
  pthread_mutex_t render_lock; /* one render at a time (collectors are not reentrant) */
  int nshards;                 /* per-scheduler shards; the shared one is index nshards */
  struct keel_metric_family *first, *last;
  collector *collectors;
  size_t ncollectors;
  void *builtin; /* owned by metrics_builtin.c through keel__metrics_builtin_free */
};

/* ---- names ----------------------------------------------------------------- */

static int valid_metric_name(const char *s) {
  if (!s || !*s) return 0;
  for (size_t i = 0; s[i]; i++) {
    char c = s[i];
    int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
             (i > 0 && c >= '0' && c <= '9');
    if (!ok) return 0;
  }
  return 1;
}

static int valid_label_name(const char *s) {
  if (!s || !*s) return 0;
  if (s[0] == '_' && s[1] == '_') return 0; /* reserved for Prometheus' own use */
  for (size_t i = 0; s[i]; i++) {
    char c = s[i];
    int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
             (i > 0 && c >= '0' && c <= '9');
    if (!ok) return 0;
  }
  return 1;
}

static int ends_with(const char *s, const char *suf) {
  size_t a = strlen(s), b = strlen(suf);
  return a >= b && memcmp(s + a - b, suf, b) == 0;
}

/* ---- registry -------------------------------------------------------------- */

int keel_metrics_new(keel_metrics **out, int shards) {
  if (!out || shards < 0 || shards > 1024) return KEEL_EINVAL;
  if (shards == 0) {
    shards = keel_sched_count();
    if (shards <= 0) {
      long n = sysconf(_SC_NPROCESSORS_ONLN);
      shards = n > 0 && n <= 1024 ? (int)n : 1;
    }
  }
  keel_metrics *r = calloc(1, sizeof *r);
  if (!r) return KEEL_ENOMEM;
  pthread_mutex_init(&r->lock, NULL);
  pthread_mutex_init(&r->render_lock, NULL);
  r->nshards = shards;
  *out = r;
  return 0;
}

static void child_free(child *c) {
  free(c->key);
  free(c->values);
  free(c->shards);
  free(c);
}

static void family_free(struct keel_metric_family *f) {
  for (child *c = f->first, *n; c; c = n) {
    n = c->next;
    child_free(c);
  }
  for (size_t i = 0; i < f->nlabels; i++)
    free(f->labels[i]);
  free(f->labels);
  free(f->bounds);
  free(f->table);
  free(f->name);
  free(f->help);
  pthread_mutex_destroy(&f->lock);
  free(f);
}

void keel_metrics_free(keel_metrics *r) {
  if (!r) return;
  if (r->builtin) keel__metrics_builtin_free(r->builtin);
  for (struct keel_metric_family *f = r->first, *n; f; f = n) {
    n = f->next;
    family_free(f);
  }
  free(r->collectors);
  pthread_mutex_destroy(&r->lock);
  pthread_mutex_destroy(&r->render_lock);
  free(r);
}

int keel_metrics_add_collector(keel_metrics *r, keel_metrics_collector_fn fn, void *ud) {
  if (!r || !fn) return KEEL_EINVAL;
  pthread_mutex_lock(&r->lock);
  collector *n = realloc(r->collectors, (r->ncollectors + 1) * sizeof *n);
  if (!n) {
    pthread_mutex_unlock(&r->lock);
    return KEEL_ENOMEM;
  }
  n[r->ncollectors++] = (collector){fn, ud};
  r->collectors = n;
  pthread_mutex_unlock(&r->lock);
  return 0;
}

int keel__metrics_set_builtin(keel_metrics *r, void *b) {
  pthread_mutex_lock(&r->lock);
  int rc = r->builtin ? KEEL_EEXIST : 0;
  if (!rc) r->builtin = b;
  pthread_mutex_unlock(&r->lock);
  return rc;
}

static char *dupstr(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

static child *child_new(struct keel_metric_family *f, const char *const *values, uint64_t hash);

static int family_new(keel_metrics *r, int type, const char *name, const char *help,
                      const char *const *labels, size_t nlabels, const double *buckets,
                      size_t nbuckets, keel_metric_family **out) {
  if (!r || !out || !valid_metric_name(name) || (nlabels && !labels) || nlabels > 64)
    return KEEL_EINVAL;
  if (!help) help = "";
  size_t namelen = strlen(name);
  if (type == T_COUNTER && ends_with(name, "_total")) {
    namelen -= 6;
    if (namelen == 0) return KEEL_EINVAL;
  } else if (type != T_COUNTER && ends_with(name, "_total")) {
    return KEEL_EINVAL;
  }
  if (IS_HIST(type) &&
      (ends_with(name, "_bucket") || ends_with(name, "_sum") || ends_with(name, "_count") ||
       ends_with(name, "_gsum") || ends_with(name, "_gcount")))
    return KEEL_EINVAL;
  for (size_t i = 0; i < nlabels; i++) {
    if (!valid_label_name(labels[i])) return KEEL_EINVAL;
    if (IS_HIST(type) && strcmp(labels[i], "le") == 0) return KEEL_EINVAL;
    for (size_t j = 0; j < i; j++)
      if (strcmp(labels[i], labels[j]) == 0) return KEEL_EINVAL;
  }
  static const double defaults[] = {.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10};
  if (IS_HIST(type)) {
    if (!buckets || nbuckets == 0) {
      buckets = defaults;
      nbuckets = sizeof defaults / sizeof defaults[0];
    }
    if (nbuckets > MAX_BUCKETS) return KEEL_EINVAL;
    for (size_t i = 0; i < nbuckets; i++) {
      if (!isfinite(buckets[i])) return KEEL_EINVAL;
      if (i > 0 && !(buckets[i] > buckets[i - 1])) return KEEL_EINVAL;
    }
  }

  struct keel_metric_family *f = calloc(1, sizeof *f);
  if (!f) return KEEL_ENOMEM;
  pthread_mutex_init(&f->lock, NULL);
  f->reg = r;
  f->type = type;
  f->name = malloc(namelen + 1);
  f->help = dupstr(help);
  f->labels = calloc(nlabels ? nlabels : 1, sizeof *f->labels);
  int bad = !f->name || !f->help || !f->labels;
  if (f->name) {
    memcpy(f->name, name, namelen);
    f->name[namelen] = 0;
  }
  for (size_t i = 0; !bad && i < nlabels; i++) {
    f->labels[i] = dupstr(labels[i]);
    if (!f->labels[i]) bad = 1;
    f->nlabels = i + 1;
  }
  if (!bad && IS_HIST(type)) {
    f->bounds = malloc(nbuckets * sizeof *f->bounds);
    if (f->bounds) {
      memcpy(f->bounds, buckets, nbuckets * sizeof *f->bounds);
      f->nbounds = nbuckets;
    } else {
      bad = 1;
    }
  }
  /* histogram shard: nbounds + 1 bucket counts, then the sum; counter shard:
   * an integer and a double */
  size_t bytes = IS_HIST(type) ? (f->nbounds + 2) * 8 : 16;
  f->stride = (bytes + LINE - 1) / LINE * LINE;
  if (!bad && nlabels == 0 && !child_new(f, NULL, 0)) bad = 1;
  if (bad) {
    family_free(f);
    return KEEL_ENOMEM;
  }

  pthread_mutex_lock(&r->lock);
  for (struct keel_metric_family *g = r->first; g; g = g->next)
    if (strcmp(g->name, f->name) == 0) {
      pthread_mutex_unlock(&r->lock);
      family_free(f);
      return KEEL_EEXIST;
    }
  if (r->last)
    r->last->next = f;
  else
    r->first = f;
  r->last = f;
  pthread_mutex_unlock(&r->lock);
  *out = f;
  return 0;
}

keel_metric_family *keel_metrics_find(keel_metrics *r, const char *name) {
  if (!r || !name) return NULL;
  /* a counter is kept under its name without "_total" (as registered) */
  size_t len = strlen(name);
  if (ends_with(name, "_total")) len -= 6;
  pthread_mutex_lock(&r->lock);
  struct keel_metric_family *g = r->first;
  while (g && !(strncmp(g->name, name, len) == 0 && g->name[len] == 0))
    g = g->next;
  pthread_mutex_unlock(&r->lock);
  return g;
}

int keel_metrics_counter(keel_metrics *r, const char *name, const char *help,
                         const char *const *labels, size_t nlabels, keel_metric_family **out) {
  return family_new(r, T_COUNTER, name, help, labels, nlabels, NULL, 0, out);
}

int keel_metrics_gauge(keel_metrics *r, const char *name, const char *help,
                       const char *const *labels, size_t nlabels, keel_metric_family **out) {
  return family_new(r, T_GAUGE, name, help, labels, nlabels, NULL, 0, out);
}

int keel_metrics_histogram(keel_metrics *r, const char *name, const char *help,
                           const char *const *labels, size_t nlabels, const double *buckets,
                           size_t nbuckets, keel_metric_family **out) {
  return family_new(r, T_HISTOGRAM, name, help, labels, nlabels, buckets, nbuckets, out);
}

int keel_metrics_gauge_histogram(keel_metrics *r, const char *name, const char *help,
                                 const char *const *labels, size_t nlabels, const double *buckets,
                                 size_t nbuckets, keel_metric_family **out) {
  return family_new(r, T_GAUGE_HISTOGRAM, name, help, labels, nlabels, buckets, nbuckets, out);
}

/* ---- children -------------------------------------------------------------- */

static uint64_t hash_values(const char *const *values, size_t n) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a over the values and their NULs */
  for (size_t i = 0; i < n; i++) {
    for (const unsigned char *p = (const unsigned char *)values[i]; *p; p++)
      h = (h ^ *p) * 1099511628211ull;
    h = h * 1099511628211ull;
  }
  return h;
}

static int child_matches(const child *c, const char *const *values, size_t n) {
  const char *k = c->key;
  for (size_t i = 0; i < n; i++) {
    size_t l = strlen(values[i]);
    if ((size_t)(k - c->key) + l >= c->keylen || memcmp(k, values[i], l + 1) != 0) return 0;
    k += l + 1;
  }
  return 1;
}

/* Creates a child and links it in; the caller holds f->lock (or f is not yet
 * published). Returns NULL when out of memory. */
static child *child_new(struct keel_metric_family *f, const char *const *values, uint64_t hash) {
  if (f->count + 1 > f->tcap * 3 / 4) {
    size_t ncap = f->tcap ? f->tcap * 2 : 8;
    child **nt = calloc(ncap, sizeof *nt);
    if (!nt) return NULL;
    for (child *c = f->first; c; c = c->next) {
      size_t b = c->hash & (ncap - 1);
      c->hnext = nt[b];
      nt[b] = c;
    }
    free(f->table);
    f->table = nt;
    f->tcap = ncap;
  }
  child *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->f = f;
  c->hash = hash;
  size_t keylen = 0;
  for (size_t i = 0; i < f->nlabels; i++)
    keylen += strlen(values[i]) + 1;
  c->key = malloc(keylen ? keylen : 1);
  c->values = calloc(f->nlabels ? f->nlabels : 1, sizeof *c->values);
  if (f->type != T_GAUGE) {
    size_t bytes = (size_t)(f->reg->nshards + 1) * f->stride;
    c->shards = aligned_alloc(LINE, bytes);
    c->nshards = f->reg->nshards;
    if (c->shards) memset(c->shards, 0, bytes);
  }
  if (!c->key || !c->values || (f->type != T_GAUGE && !c->shards)) {
    child_free(c);
    return NULL;
  }
  c->keylen = keylen;
  char *k = c->key;
  for (size_t i = 0; i < f->nlabels; i++) {
    size_t l = strlen(values[i]) + 1;
    memcpy(k, values[i], l);
    c->values[i] = k;
    k += l;
  }
  atomic_init(&c->gauge, 0.0);
  size_t b = hash & (f->tcap - 1);
  c->hnext = f->table[b];
  f->table[b] = c;
  if (f->last)
    f->last->next = c;
  else
    f->first = c;
  f->last = c;
  f->count++;
  return c;
}

static int child_get(keel_metric_family *f, int type, const char *const *values, child **out) {
  if (!f || !out || (f->type != type && !(type == T_HISTOGRAM && IS_HIST(f->type))))
    return KEEL_EINVAL;
  if (f->nlabels == 0) {
    *out = f->first; /* created with the family, never changes */
    return 0;
  }
  if (!values) return KEEL_EINVAL;
  for (size_t i = 0; i < f->nlabels; i++)
    if (!values[i]) return KEEL_EINVAL;
  uint64_t h = hash_values(values, f->nlabels);
  pthread_mutex_lock(&f->lock);
  child *c = f->tcap ? f->table[h & (f->tcap - 1)] : NULL;
  while (c && !(c->hash == h && child_matches(c, values, f->nlabels)))
    c = c->hnext;
  if (!c) c = child_new(f, values, h);
  pthread_mutex_unlock(&f->lock);
  if (!c) return KEEL_ENOMEM;
  *out = c;
  return 0;
}

int keel_counter_get(keel_metric_family *f, const char *const *values, keel_counter **out) {
  return child_get(f, T_COUNTER, values, (child **)out);
}
int keel_gauge_get(keel_metric_family *f, const char *const *values, keel_gauge **out) {
  return child_get(f, T_GAUGE, values, (child **)out);
}
int keel_histogram_get(keel_metric_family *f, const char *const *values, keel_histogram **out) {
  return child_get(f, T_HISTOGRAM, values, (child **)out);
}

/* ---- the hot path ---------------------------------------------------------- */

/* Adds d to an atomic double with many writers. Relaxed: see the file comment
 * (only the value matters; nothing is published through it). */
static inline void shared_add(_Atomic double *p, double d) {
  double old = atomic_load_explicit(p, memory_order_relaxed);
  while (!atomic_compare_exchange_weak_explicit(p, &old, old + d, memory_order_relaxed,
                                                memory_order_relaxed)) {
  }
}

/* The calling thread's scheduler index, cached per thread. A thread never
 * changes role: a scheduler thread runs the same scheduler for its whole life
 * and every other thread stays outside them (a new runtime starts new
 * scheduler threads). The cache is read and written within one call that
 * cannot yield, so the hazard of a process resuming on another thread (see
 * docs/runtime.md) does not apply: no TLS address outlives the call. A stale
 * or unknown value only sends the update to the shared shard, which is
 * always correct. initial-exec: one instruction to reach the variable. */
static _Thread_local int tl_sched __attribute__((tls_model("initial-exec"))) = -2;

static inline int sched_index(void) {
  int i = tl_sched;
  if (i == -2) {
    i = keel_sched_current();
    /* Before its scheduler is set up a scheduler thread reads -1: do not
     * cache that, ask again next time. */
    if (i >= 0) tl_sched = i;
  }
  return i;
}

/* Counter shard layout: _Atomic uint64_t ints (increments by whole numbers),
 * then _Atomic double frac (other additions). Whole increments stay integer
 * arithmetic: exact to 2^64 and one cycle. */
static inline _Atomic uint64_t *counter_ints(const child *c, int i) {
  return (_Atomic uint64_t *)(void *)(c->shards + (size_t)i * LINE);
}
static inline _Atomic double *counter_frac(const child *c, int i) {
  return (_Atomic double *)(void *)(c->shards + (size_t)i * LINE + 8);
}

static inline void counter_add_u64(child *c, uint64_t n) {
  int i = sched_index();
  if ((unsigned)i < (unsigned)c->nshards) {
    /* Single writer (the thread of scheduler i, which cannot yield between
     * the load and the store): relaxed load + relaxed store is a plain
     * read-modify-write with no locked instruction; the render's relaxed load
     * never sees a torn value because the store is atomic. */
    _Atomic uint64_t *p = counter_ints(c, i);
    atomic_store_explicit(p, atomic_load_explicit(p, memory_order_relaxed) + n,
                          memory_order_relaxed);
  } else {
    /* Many writers: a locked add. Relaxed: only the sum is ever read. */
    atomic_fetch_add_explicit(counter_ints(c, c->nshards), n, memory_order_relaxed);
  }
}

void keel_counter_inc(keel_counter *c) {
  counter_add_u64((child *)c, 1);
}

void keel_counter_add(keel_counter *cp, double n) {
  child *c = (child *)cp;
  if (!(n >= 0)) return; /* negative or NaN */
  if (n == floor(n) && n < 9.007199254740992e15) {
    counter_add_u64(c, (uint64_t)n);
    return;
  }
  int i = sched_index();
  if ((unsigned)i < (unsigned)c->nshards) {
    _Atomic double *p = counter_frac(c, i); /* single writer, as above */
    atomic_store_explicit(p, atomic_load_explicit(p, memory_order_relaxed) + n,
                          memory_order_relaxed);
  } else {
    shared_add(counter_frac(c, c->nshards), n);
  }
}

double keel_counter_value(const keel_counter *cp) {
  const child *c = (const child *)cp;
  uint64_t ints = 0;
  double frac = 0;
  for (int i = 0; i <= c->nshards; i++) {
    ints += atomic_load_explicit(counter_ints(c, i), memory_order_relaxed);
    frac += atomic_load_explicit(counter_frac(c, i), memory_order_relaxed);
  }
  return (double)ints + frac;
}

void keel_counter_set(keel_counter *cp, double total) {
  child *c = (child *)cp;
  double d = total - keel_counter_value(cp);
  if (d != 0 && !isnan(d)) shared_add(counter_frac(c, c->nshards), d);
}

/* Gauges: one atomic double; relaxed, because a gauge's value is all that is
 * read and nothing else is published with it. */
void keel_gauge_set(keel_gauge *g, double v) {
  atomic_store_explicit(&((child *)g)->gauge, v, memory_order_relaxed);
}
void keel_gauge_add(keel_gauge *g, double d) {
  shared_add(&((child *)g)->gauge, d);
}
void keel_gauge_inc(keel_gauge *g) {
  shared_add(&((child *)g)->gauge, 1.0);
}
void keel_gauge_dec(keel_gauge *g) {
  shared_add(&((child *)g)->gauge, -1.0);
}
double keel_gauge_value(const keel_gauge *g) {
  return atomic_load_explicit(&((const child *)g)->gauge, memory_order_relaxed);
}

/* Histogram shard layout: _Atomic uint64_t counts[nbounds + 1], then
 * _Atomic double sum. */
static inline _Atomic uint64_t *hist_counts(const child *c, int i) {
  return (_Atomic uint64_t *)(void *)(c->shards + (size_t)i * c->f->stride);
}
static inline _Atomic double *hist_sum(const child *c, int i) {
  return (_Atomic double *)(void *)(c->shards + (size_t)i * c->f->stride + (c->f->nbounds + 1) * 8);
}

void keel_histogram_observe(keel_histogram *hp, double v) {
  child *c = (child *)hp;
  if (isnan(v)) return;
  const struct keel_metric_family *f = c->f;
  size_t lo = 0, hi = f->nbounds; /* first bound >= v, or nbounds (+Inf) */
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (v <= f->bounds[mid])
      hi = mid;
    else
      lo = mid + 1;
  }
  int i = sched_index();
  int ns = c->nshards;
  if ((unsigned)i < (unsigned)ns) {
    /* Single writer, as in keel_counter_add. */
    _Atomic uint64_t *b = &hist_counts(c, i)[lo];
    atomic_store_explicit(b, atomic_load_explicit(b, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    _Atomic double *s = hist_sum(c, i);
    atomic_store_explicit(s, atomic_load_explicit(s, memory_order_relaxed) + v,
                          memory_order_relaxed);
  } else {
    atomic_fetch_add_explicit(&hist_counts(c, ns)[lo], 1, memory_order_relaxed);
    shared_add(hist_sum(c, ns), v);
  }
}

int keel_histogram_set(keel_histogram *hp, const uint64_t *counts, size_t ncounts, double sum) {
  child *c = (child *)hp;
  if (!c || !counts || ncounts != c->f->nbounds + 1 || isnan(sum)) return KEEL_EINVAL;
  /* Relaxed stores: as for the hot path, only the values are read, and a
   * render that must see the whole set runs after it under the render lock
   * (collectors) or is ordered by the caller's own synchronisation. */
  for (int i = 0; i < c->nshards; i++) {
    _Atomic uint64_t *b = hist_counts(c, i);
    for (size_t k = 0; k < ncounts; k++)
      atomic_store_explicit(&b[k], 0, memory_order_relaxed);
    atomic_store_explicit(hist_sum(c, i), 0.0, memory_order_relaxed);
  }
  _Atomic uint64_t *b = hist_counts(c, c->nshards);
  for (size_t k = 0; k < ncounts; k++)
    atomic_store_explicit(&b[k], counts[k], memory_order_relaxed);
  atomic_store_explicit(hist_sum(c, c->nshards), sum, memory_order_relaxed);
  return 0;
}

/* Sums the shards: counts[nbounds + 1] (not cumulative) and the sum. */
static void hist_read(const child *c, uint64_t *counts, double *sum) {
  size_t nb = c->f->nbounds + 1;
  memset(counts, 0, nb * sizeof *counts);
  double s = 0;
  for (int i = 0; i <= c->nshards; i++) {
    const _Atomic uint64_t *b = hist_counts(c, i);
    for (size_t k = 0; k < nb; k++)
      counts[k] += atomic_load_explicit(&b[k], memory_order_relaxed);
    s += atomic_load_explicit(hist_sum(c, i), memory_order_relaxed);
  }
  *sum = s;
}

void keel_histogram_totals(const keel_histogram *hp, uint64_t *count, double *sum) {
  const child *c = (const child *)hp;
  uint64_t counts[MAX_BUCKETS + 1];
  double s;
  hist_read(c, counts, &s);
  uint64_t n = 0;
  for (size_t k = 0; k <= c->f->nbounds; k++)
    n += counts[k];
  if (count) *count = n;
  if (sum) *sum = s;
}

/* ---- exposition ------------------------------------------------------------ */

void keel_metrics_buf_free(keel_metrics_buf *b) {
  if (!b) return;
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

typedef struct out {
  keel_metrics_buf *b;
  int oom;
} out;

static int reserve(out *o, size_t n) {
  keel_metrics_buf *b = o->b;
  if (o->oom) return 0;
  if (b->len + n + 1 <= b->cap) return 1;
  size_t cap = b->cap ? b->cap : 4096;
  while (cap < b->len + n + 1)
    cap *= 2;
  char *d = realloc(b->data, cap);
  if (!d) {
    o->oom = 1;
    return 0;
  }
  b->data = d;
  b->cap = cap;
  return 1;
}

static void put(out *o, const char *s, size_t n) {
  if (!reserve(o, n)) return;
  memcpy(o->b->data + o->b->len, s, n);
  o->b->len += n;
}

static void puts_(out *o, const char *s) {
  put(o, s, strlen(s));
}

/* Escapes label values (\\, \", \n) or help text (\\, \n; and \" when
 * quote is set, for OpenMetrics). */
static void put_escaped(out *o, const char *s, int quote) {
  size_t n = strlen(s);
  if (!reserve(o, 2 * n)) return;
  char *d = o->b->data + o->b->len;
  for (size_t i = 0; i < n; i++) {
    char ch = s[i];
    if (ch == '\\') {
      *d++ = '\\';
      *d++ = '\\';
    } else if (ch == '\n') {
      *d++ = '\\';
      *d++ = 'n';
    } else if (ch == '"' && quote) {
      *d++ = '\\';
      *d++ = '"';
    } else {
      *d++ = ch;
    }
  }
  o->b->len = (size_t)(d - o->b->data);
}

/* Formats v: NaN, +Inf, -Inf, integers without an exponent (with ".0" when
 * dot is set, as OpenMetrics wants for le), other values with the shortest
 * %.15g / %.17g that reads back exactly. */
static void put_double(out *o, double v, int dot) {
  char tmp[40];
  size_t n;
  if (isnan(v)) {
    puts_(o, "NaN");
    return;
  }
  if (isinf(v)) {
    puts_(o, v > 0 ? "+Inf" : "-Inf");
    return;
  }
  if (v == floor(v) && fabs(v) < 1e15) {
    long long x = (long long)v;
    unsigned long long u = x < 0 ? (unsigned long long)-x : (unsigned long long)x;
    char *e = tmp + sizeof tmp, *p = e;
    if (dot) {
      *--p = '0';
      *--p = '.';
    }
    do {
      *--p = (char)('0' + u % 10);
      u /= 10;
    } while (u);
    if (x < 0) *--p = '-';
    put(o, p, (size_t)(e - p));
    return;
  }
  n = (size_t)snprintf(tmp, sizeof tmp, "%.15g", v);
  if (strtod(tmp, NULL) != v) n = (size_t)snprintf(tmp, sizeof tmp, "%.17g", v);
  put(o, tmp, n);
}

static void put_u64(out *o, uint64_t u) {
  char tmp[24], *e = tmp + sizeof tmp, *p = e;
  do {
    *--p = (char)('0' + u % 10);
    u /= 10;
  } while (u);
  put(o, p, (size_t)(e - p));
}

/* name + suffix + {labels[, le="..."]} + ' ' */
static void put_series(out *o, const struct keel_metric_family *f, const child *c,
                       const char *suffix, const double *le, int om) {
  puts_(o, f->name);
  puts_(o, suffix);
  if (f->nlabels || le) {
    put(o, "{", 1);
    for (size_t i = 0; i < f->nlabels; i++) {
      if (i) put(o, ",", 1);
      puts_(o, f->labels[i]);
      put(o, "=\"", 2);
      put_escaped(o, c->values[i], 1);
      put(o, "\"", 1);
    }
    if (le) {
      if (f->nlabels) put(o, ",", 1);
      put(o, "le=\"", 4);
      put_double(o, *le, om);
      put(o, "\"", 1);
    }
    put(o, "}", 1);
  }
  put(o, " ", 1);
}

static void render_family(out *o, struct keel_metric_family *f, int om) {
  /* The text format 0.0.4 has no gauge histogram: it is a histogram there. */
  static const char *const tnames[] = {"counter", "gauge", "histogram", "histogram"};
  const char *tname = om && f->type == T_GAUGE_HISTOGRAM ? "gaugehistogram" : tnames[f->type];
  const char *sum_suffix = "_sum", *count_suffix = "_count";
  if (om && f->type == T_GAUGE_HISTOGRAM) {
    sum_suffix = "_gsum";
    count_suffix = "_gcount";
  }
  const char *tsuffix = f->type == T_COUNTER && !om ? "_total" : "";
  put(o, "# HELP ", 7);
  puts_(o, f->name);
  puts_(o, tsuffix);
  put(o, " ", 1);
  put_escaped(o, f->help, om);
  put(o, "\n# TYPE ", 8);
  puts_(o, f->name);
  puts_(o, tsuffix);
  put(o, " ", 1);
  puts_(o, tname);
  put(o, "\n", 1);
  uint64_t counts[MAX_BUCKETS + 1];
  pthread_mutex_lock(&f->lock);
  for (const child *c = f->first; c && !o->oom; c = c->next) {
    if (f->type == T_COUNTER) {
      put_series(o, f, c, "_total", NULL, om);
      put_double(o, keel_counter_value((const keel_counter *)c), 0);
      put(o, "\n", 1);
    } else if (f->type == T_GAUGE) {
      put_series(o, f, c, "", NULL, om);
      put_double(o, keel_gauge_value((const keel_gauge *)c), 0);
      put(o, "\n", 1);
    } else {
      double sum;
      hist_read(c, counts, &sum);
      uint64_t cum = 0;
      for (size_t k = 0; k <= f->nbounds; k++) {
        double le = k < f->nbounds ? f->bounds[k] : INFINITY;
        cum += counts[k];
        put_series(o, f, c, "_bucket", &le, om);
        put_u64(o, cum);
        put(o, "\n", 1);
      }
      put_series(o, f, c, sum_suffix, NULL, om);
      put_double(o, sum, 0);
      put(o, "\n", 1);
      put_series(o, f, c, count_suffix, NULL, om);
      put_u64(o, cum);
      put(o, "\n", 1);
    }
  }
  pthread_mutex_unlock(&f->lock);
}

int keel_metrics_render(keel_metrics *r, keel_metrics_format fmt, keel_metrics_buf *buf) {
  if (!r || !buf || (fmt != KEEL_METRICS_TEXT && fmt != KEEL_METRICS_OPENMETRICS))
    return KEEL_EINVAL;
  pthread_mutex_lock(&r->render_lock);
  /* Collectors may register children (get-or-create), so they run without
   * r->lock; the list of collectors only grows, and its length is read under
   * the lock. */
  pthread_mutex_lock(&r->lock);
  size_t nc = r->ncollectors;
  pthread_mutex_unlock(&r->lock);
  for (size_t i = 0; i < nc; i++) {
    pthread_mutex_lock(&r->lock);
    collector c = r->collectors[i];
    pthread_mutex_unlock(&r->lock);
    c.fn(r, c.ud);
  }
  out o = {buf, 0};
  size_t start = buf->len;
  int om = fmt == KEEL_METRICS_OPENMETRICS;
  pthread_mutex_lock(&r->lock);
  for (struct keel_metric_family *f = r->first; f && !o.oom; f = f->next)
    render_family(&o, f, om);
  pthread_mutex_unlock(&r->lock);
  if (om) puts_(&o, "# EOF\n");
  if (!o.oom) reserve(&o, 0);
  pthread_mutex_unlock(&r->render_lock);
  if (o.oom) {
    buf->len = start;
    if (buf->data) buf->data[start] = 0;
    return KEEL_ENOMEM;
  }
  buf->data[buf->len] = 0;
  return 0;
}

/* ---- content negotiation --------------------------------------------------- */

static const char *skip_ws(const char *p, const char *e) {
  while (p < e && (*p == ' ' || *p == '\t'))
    p++;
  return p;
}

static int token_is(const char *p, const char *e, const char *s) {
  while (e > p && (e[-1] == ' ' || e[-1] == '\t'))
    e--;
  size_t n = strlen(s);
  return (size_t)(e - p) == n && strncasecmp(p, s, n) == 0;
}

int keel_metrics_negotiate(const char *accept, keel_metrics_format *fmt,
                           const char **content_type) {
  double om_q = -1, text_q = -1;
  for (const char *p = accept ? accept : ""; *p;) {
    const char *end = strchr(p, ',');
    if (!end) end = p + strlen(p);
    const char *semi = memchr(p, ';', (size_t)(end - p));
    const char *tend = semi ? semi : end;
    const char *t = skip_ws(p, tend);
    double q = 1;
    int version_ok = 1; /* for openmetrics: no version, or 1.0.0 */
    for (const char *a = semi; a && a < end;) {
      const char *an = memchr(a + 1, ';', (size_t)(end - a - 1));
      const char *ae = an ? an : end;
      const char *k = skip_ws(a + 1, ae);
      const char *eq = memchr(k, '=', (size_t)(ae - k));
      if (eq) {
        const char *v = skip_ws(eq + 1, ae);
        if (token_is(k, eq, "q")) q = strtod(v, NULL);
        if (token_is(k, eq, "version")) version_ok = token_is(v, ae, "1.0.0");
      }
      a = an;
    }
    if (token_is(t, tend, "application/openmetrics-text")) {
      if (version_ok && q > om_q) om_q = q;
    } else if (token_is(t, tend, "text/plain") || token_is(t, tend, "text/*") ||
               token_is(t, tend, "*/*")) {
      if (q > text_q) text_q = q;
    }
    p = *end ? end + 1 : end;
  }
  int om = om_q > 0 && om_q >= text_q;
  if (fmt) *fmt = om ? KEEL_METRICS_OPENMETRICS : KEEL_METRICS_TEXT;
  if (content_type)
    *content_type = om ? KEEL_METRICS_OPENMETRICS_CONTENT_TYPE : KEEL_METRICS_TEXT_CONTENT_TYPE;
  return 0;
}
