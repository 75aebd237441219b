/* tail.c - the live tail: the events this instance has just committed, kept
 * in memory so that a subscription at the head can take them without a
 * read of the database.
 *
 * Why. A live event used to reach its handler through the writer thread,
 * the subscription's waker process, a read of the head and a page read,
 * each of those reads a hop to a blocking-pool thread (SQLite) or a round
 * trip (PostgreSQL). On a loaded machine every thread wake-up is a chance
 * to wait for a core, and the tail of the latency was those hops
 * (docs/decisions/0034). The writer already holds the rows it committed:
 * it hands them here, and the subscription copies them out under a mutex.
 *
 * What it holds. A window of consecutive positions [lo, lo + n), each
 * event copied whole (one allocation: the struct and its strings), pushed
 * after its transaction committed and before the waiters are woken. The
 * window only ever holds consecutive positions: a push that does not
 * follow the last one (a hole left by a conflict or a rollback, another
 * instance's append on PostgreSQL, a push skipped while nobody used the
 * tail, two appends of one PostgreSQL instance committing out of order)
 * starts the window again at that event, and one below the window is
 * dropped. So "the tail holds after + 1" means every position from after + 1
 * to the window's end is committed and here: handing them out after a
 * reader's position `after` can never skip or repeat an event, whatever
 * the horizon (an open transaction elsewhere holds read_all back but cannot
 * put an event between two consecutive positions). A reader whose next
 * position is not in the window falls back to read_all.
 *
 * Events committed and then hidden (a soft delete, a truncation, a hard
 * delete) would still be in the window: this instance's deletes empty it
 * (after their commit), so a reader sees what read_all would show; another
 * instance's delete is not seen here, as a reader that read a moment
 * earlier would not have seen it either.
 *
 * Limit (documented in decision 0034, not fixed): the window can hand out
 * an event read_all would hide at that moment, never skip or reorder one.
 * A truncation ahead of the stream (truncate_before(s, 100) at version
 * 3) hides versions appended later; pushes do not know truncated_before
 * and serve them. A delete that commits after an append but empties the
 * window before the append's push (PostgreSQL: different processes) moves
 * the epoch on: the append read it before its COMMIT, and its push is
 * dropped (a hole). A tenant filter is refused (the tenant is in the metadata's JSON):
 * such a reader uses read_all and keel_es_wait.
 *
 * Cost. Pushing costs a copy per event on the committing thread, and only
 * while some subscription uses the tail (`users`, one relaxed load
 * otherwise). Users are counted by process: one killed without its
 * terminate is pruned within 256 pushes (keel_is_alive). The window keeps at most TAIL_MAX events
 * and TAIL_BYTES bytes: a subscription far behind reads the database, as it always did.
 */
#include <stdlib.h>
#include <string.h>

#include "es/es_internal.h"
#include "keel/error.h"

/* TAIL_READ_BYTES: what one read copies out under the mutex at most (the
 * writer that pushes waits for it), past its first event; the reader's
 * page then ends there (scanned) and its next read goes on from it. */
enum { TAIL_MAX = 4096, TAIL_BYTES = 8 << 20, TAIL_READ_BYTES = 256 << 10 };

typedef struct tail_ev {
  int64_t position, version, occurred_at, stored_at;
  int schema_version;
  uint32_t hash;
  size_t size; /* of the allocation, for the byte budget */
  size_t payload_len, meta_len;
  const char *stream, *type, *payload, *meta; /* into text */
  char id[37];
  char text[];
} tail_ev;

struct es_tail {
  pthread_mutex_t mu; /* guards what follows */
  tail_ev *ring[TAIL_MAX];
  size_t start, n; /* ring[start] holds position lo; n consecutive positions */
  int64_t lo;
  size_t bytes;
  keel_pid_t *pids;  /* the users' processes, one entry per use */
  size_t npids, cap; /* (a killed one is pruned: see prune) */
  unsigned pushes;   /* since the last prune */
  uint64_t epoch;    /* resets so far */
  atomic_int users;  /* npids, read without the lock: pushes are skipped at 0 */
};

int keel__es_tail_open(keel_es *es) {
  es_tail *t = calloc(1, sizeof *t);
  if (!t) return KEEL_ENOMEM;
  pthread_mutex_init(&t->mu, NULL);
  es->live_tail = t;
  return 0;
}

/* Under mu. */
static void drop_all(es_tail *t) {
  for (size_t i = 0; i < t->n; i++)
    free(t->ring[(t->start + i) % TAIL_MAX]);
  t->start = t->n = 0;
  t->bytes = 0;
}

void keel__es_tail_free(keel_es *es) {
  es_tail *t = es ? es->live_tail : NULL;
  if (!t) return;
  drop_all(t);
  free(t->pids);
  pthread_mutex_destroy(&t->mu);
  free(t);
  es->live_tail = NULL;
}

/* Under mu: users whose process is gone no longer count. A subscription
 * says it stopped using the tail in its terminate, which a kill
 * (KEEL_REASON_KILL, keel_gs_stop's fallback past its timeout) skips;
 * without this, every later append would be copied for the store's life. */
static void prune(es_tail *t) {
  size_t k = 0;
  for (size_t i = 0; i < t->npids; i++)
    if (keel_is_alive(t->pids[i])) t->pids[k++] = t->pids[i];
  t->npids = k;
  t->pushes = 0;
  atomic_store_explicit(&t->users, (int)k, memory_order_relaxed);
  if (k == 0) drop_all(t);
}

void keel__es_tail_use(keel_es *es, int delta) {
  es_tail *t = es->live_tail;
  if (!t) return;
  keel_pid_t self = keel_self();
  pthread_mutex_lock(&t->mu);
  /* relaxed: a push that misses a new user only leaves a hole, which the
   * user's next read fills from the database. The first user starts from
   * an empty window: what it held was kept while nobody looked. */
  if (delta > 0) {
    if (t->npids == t->cap) {
      size_t cap = t->cap ? 2 * t->cap : 8;
      keel_pid_t *p = realloc(t->pids, cap * sizeof *p);
      if (!p) { /* not counted: the user reads the database */
        pthread_mutex_unlock(&t->mu);
        return;
      }
      t->pids = p;
      t->cap = cap;
    }
    if (t->npids == 0) drop_all(t);
    t->pids[t->npids++] = self;
  } else {
    for (size_t i = 0; i < t->npids; i++)
      if (t->pids[i] == self) {
        t->pids[i] = t->pids[--t->npids];
        break;
      }
  }
  atomic_store_explicit(&t->users, (int)t->npids, memory_order_relaxed);
  prune(t);
  pthread_mutex_unlock(&t->mu);
}

void keel__es_tail_reset(keel_es *es) {
  es_tail *t = es->live_tail;
  if (!t) return;
  pthread_mutex_lock(&t->mu);
  drop_all(t);
  t->epoch++;
  pthread_mutex_unlock(&t->mu);
}

uint64_t keel__es_tail_epoch(keel_es *es) {
  es_tail *t = es->live_tail;
  if (!t) return 0;
  pthread_mutex_lock(&t->mu);
  uint64_t e = t->epoch;
  pthread_mutex_unlock(&t->mu);
  return e;
}

static tail_ev *copy_row(const char *stream, uint32_t hash, const es_row *e, int64_t position,
                         int64_t version, int64_t stored_at) {
  size_t ls = strlen(stream), lt = strlen(e->type), lp = strlen(e->payload);
  size_t lm = e->metadata ? strlen(e->metadata) : 0;
  size_t size = sizeof(tail_ev) + ls + lt + lp + lm + 4;
  tail_ev *v = malloc(size);
  if (!v) return NULL;
  v->position = position;
  v->version = version;
  v->occurred_at = e->occurred_at;
  v->stored_at = stored_at;
  v->schema_version = e->schema_version;
  v->hash = hash;
  v->size = size;
  memcpy(v->id, e->id, sizeof v->id);
  char *p = v->text;
  v->stream = p;
  memcpy(p, stream, ls + 1);
  p += ls + 1;
  v->type = p;
  memcpy(p, e->type, lt + 1);
  p += lt + 1;
  v->payload = p;
  memcpy(p, e->payload, lp + 1);
  p += lp + 1;
  v->payload_len = lp;
  v->meta = NULL;
  if (e->metadata) {
    v->meta = p;
    memcpy(p, e->metadata, lm + 1);
  }
  v->meta_len = lm;
  return v;
}

/* Under mu: ev joins the window, or starts it again. */
static void put(es_tail *t, tail_ev *ev) {
  if (t->n && ev->position < t->lo) { /* older than the window: not needed */
    free(ev);
    return;
  }
  if (t->n && ev->position != t->lo + (int64_t)t->n) drop_all(t); /* not consecutive */
  if (t->n == 0) {
    t->start = 0;
    t->lo = ev->position;
  }
  while (t->n && (t->n == TAIL_MAX || t->bytes + ev->size > TAIL_BYTES)) {
    t->bytes -= t->ring[t->start]->size;
    free(t->ring[t->start]);
    t->start = (t->start + 1) % TAIL_MAX;
    t->n--;
    t->lo++;
  }
  t->ring[(t->start + t->n) % TAIL_MAX] = ev;
  t->n++;
  t->bytes += ev->size;
}

void keel__es_tail_push(keel_es *es, const es_stream_req *s, const keel_es_append_result *res,
                        int64_t stored_at, uint64_t epoch) {
  es_tail *t = es->live_tail;
  if (!t || atomic_load_explicit(&t->users, memory_order_relaxed) == 0) return;
  if (res->duplicate || res->first_position <= 0 ||
      res->last_position - res->first_position + 1 != (int64_t)s->n)
    return; /* nothing new, or not one position per row: leave it to read_all */
  uint32_t hash = keel__es_stream_hash(s->stream);
  int64_t first_version = res->version - (int64_t)s->n + 1;
  tail_ev *evs[64];
  tail_ev **v = s->n <= 64 ? evs : malloc(s->n * sizeof(tail_ev *));
  bool ok = v != NULL;
  for (size_t k = 0; ok && k < s->n; k++) /* copied outside the lock */
    ok = (v[k] = copy_row(s->stream, hash, &s->rows[k], res->first_position + (int64_t)k,
                          first_version + (int64_t)k, stored_at)) != NULL;
  pthread_mutex_lock(&t->mu);
  if (++t->pushes >= 256) prune(t); /* a killed user stops the copies */
  if (ok && t->npids && epoch == t->epoch) {
    for (size_t k = 0; k < s->n; k++)
      put(t, v[k]);
  } else if (ok) { /* the last user is gone, or a delete committed after
                    * these rows and emptied the window before this push
                    * (PostgreSQL: the deleter is another process): a hole */
    for (size_t k = 0; k < s->n; k++)
      free(v[k]);
  } else {
    drop_all(t); /* out of memory: a hole, the readers fall back */
  }
  pthread_mutex_unlock(&t->mu);
  if (!ok)
    for (size_t k = 0; v && k < s->n && v[k]; k++)
      free(v[k]);
  if (v != evs) free(v);
}

/* Whether ev passes f, but for the type filter when upcasters may change
 * types (then keel__es_upcast_page applies it after upcasting). */
static bool passes(const tail_ev *ev, const keel_es_filter *f, bool types_now) {
  if (!f) return true;
  if (types_now && f->types) {
    bool any = false;
    for (size_t i = 0; f->types[i] && !any; i++)
      any = strcmp(f->types[i], ev->type) == 0;
    if (!any) return false;
  }
  if (f->stream_prefix && strncmp(ev->stream, f->stream_prefix, strlen(f->stream_prefix)) != 0)
    return false;
  if (f->category) {
    size_t lc = strlen(f->category);
    if (strcmp(ev->stream, f->category) != 0 &&
        !(strncmp(ev->stream, f->category, lc) == 0 && ev->stream[lc] == '-'))
      return false;
  }
  if (f->partitions && ev->hash % f->partitions != f->partition) return false;
  return true;
}

bool keel__es_tail_past(keel_es *es, int64_t after, int64_t *top) {
  es_tail *t = es->live_tail;
  if (!t || atomic_load_explicit(&t->users, memory_order_relaxed) == 0) return false;
  pthread_mutex_lock(&t->mu);
  bool hit = t->n && t->lo <= after + 1 && after + 1 < t->lo + (int64_t)t->n;
  if (hit) *top = t->lo + (int64_t)t->n - 1;
  pthread_mutex_unlock(&t->mu);
  return hit;
}

int keel__es_tail_read(keel_es *es, int64_t after, size_t limit, const keel_es_filter *f,
                       keel_es_events *out) {
  memset(out, 0, sizeof *out);
  es_tail *t = es->live_tail;
  if (!t || (f && f->tenant)) return KEEL_ENOENT; /* the tenant is in the metadata's JSON */
  if (f && f->partitions && f->partition >= f->partitions) return KEEL_EINVAL;
  if (limit == 0) limit = 1000;
  size_t nup = 0;
  const char **uptypes = f && f->types ? keel__es_upcaster_types(es, &nup) : NULL;
  free(uptypes);
  bool post_filter = nup > 0; /* as read_all: types matched after upcasting */
  es_evec ev = {0};
  if (!(ev.arena = keel__es_arena_new())) return KEEL_ENOMEM;
  int rc = KEEL_ENOENT;
  int64_t scanned = after;
  pthread_mutex_lock(&t->mu);
  if (t->n && t->lo <= after + 1 && after + 1 < t->lo + (int64_t)t->n) {
    rc = 0;
    size_t i = (size_t)(after + 1 - t->lo), copied = 0;
    for (size_t k = 0; rc == 0 && k < limit && i < t->n && copied < TAIL_READ_BYTES; k++, i++) {
      const tail_ev *e = t->ring[(t->start + i) % TAIL_MAX];
      scanned = e->position;
      if (!passes(e, f, !post_filter)) continue;
      copied += e->size;
      rc = keel__es_evec_add(&ev, e->position, e->stream, e->version, e->id, e->type,
                             e->schema_version, e->payload, e->payload_len, e->meta, e->meta_len,
                             e->occurred_at, e->stored_at);
    }
  }
  pthread_mutex_unlock(&t->mu);
  /* the upcasters run outside the lock, as on read_all's paths */
  if (rc == 0) rc = keel__es_upcast_page(es, &ev, 0, post_filter ? f->types : NULL, NULL);
  keel_es_events e = {.n = ev.n, .v = ev.v, .priv_ = ev.arena};
  if (rc) {
    keel_es_events_free(&e);
    return rc;
  }
  e.scanned = scanned;
  *out = e;
  return 0;
}
