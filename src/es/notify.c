/* notify.c - keel_es_wait: processes waiting for appends, and their wake-up.
 *
 * A process that has read the feed up to position P calls keel_es_wait(P)
 * and must be woken as soon as read_all(P) would return something, never
 * missing an append and never spinning. It puts a waiter (heap, on the
 * store's list under a mutex) with its pid, P and an armed reference, then
 * reads the readable head; only if that is not past P does it wait for a
 * reply with keel_await. Registering before reading is what makes a wake-up
 * impossible to miss: an append committed before the registration is seen
 * by the read, one committed after it finds the waiter on the list.
 *
 * Who wakes. After each committed group, SQLite's writer thread calls
 * keel__es_notify_appended with the group's highest position; a PostgreSQL
 * append calls it after its COMMIT, and the listener (pg_listen.c) calls
 * keel__es_notify_wake for other instances' NOTIFYs. The waker replies (an
 * empty message) to each waiter whose P is below the position, at most once
 * per armed reference, and records the position in the waiter. The woken
 * process reads the head again. Without waiters the writer pays one atomic
 * load per commit (the `count` hint).
 *
 * The horizon (PostgreSQL). A notified position may not be readable yet:
 * an older transaction still open holds the horizon (docs/eventstore.md).
 * The waiter then knows a position it was told of is above the readable
 * head, and re-reads the head every 10 ms doubling to 200 ms until read_all
 * can return it (or the timeout): not a spin, and no dependence on another
 * notification that may never come. Apart from that the head is re-read
 * every notify_poll_ms (default 1 s) whatever happens: the fallback when the
 * listener is down or off, or a notification was lost.
 *
 * Exit signals end a waiting process as they end any keel wait. Its waiter
 * stays on the list (a reply to it is dropped by the runtime) until a later
 * registration prunes the waiters of dead processes (when the list has
 * doubled since the last pruning: amortised O(1)) or the store closes. A
 * waiter is freed only by its own process, or by whoever finds that process
 * dead, so a live process may keep a pointer to its waiter.
 *
 * Close. keel__es_notify_close marks the list closing, wakes every waiter,
 * and waits until each has left keel_es_wait (KEEL_ECANCELED) or is found
 * dead: no process touches the store after keel_es_close returns. The list
 * itself is freed (keel__es_notify_free) after the writer thread has
 * stopped, since the writer wakes through it.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "es/es_internal.h"
#include "keel/error.h"
#include "keel/log.h"
#include "keel/message.h"
#include "keel/runtime.h"

enum {
  ES_POLL_DEFAULT_MS = 1000,
  ES_HORIZON_RETRY_MIN_MS = 10,  /* a notified position not readable yet: re-read after this, */
  ES_HORIZON_RETRY_MAX_MS = 200, /* doubling up to this */
  ES_PRUNE_MIN = 64,
};

typedef struct es_waiter {
  struct es_waiter *prev, *next;
  keel_pid_t pid;
  int64_t after;
  keel_ref_t ref;   /* armed for the current wait; 0 between waits */
  bool signalled;   /* a reply to ref is on its way */
  int64_t notified; /* the highest position announced to this waiter */
} es_waiter;

struct es_notify {
  pthread_mutex_t mu; /* guards the list, closing and every waiter's fields */
  es_waiter *head;
  size_t n, prune_at;
  bool closing;
  /* the number of waiters, read without the lock by wakers to skip the lock
   * when there are none; see keel__es_notify_wake on its ordering */
  atomic_size_t count;
  int64_t poll_ms; /* KEEL_INFINITY: no polling */
  es_listen *listen;
  keel_counter *m_checks;
  keel_gauge *m_waiting;
};

/* ---- the list ----------------------------------------------------------------- */

/* Under mu. */
static void unlink_waiter(es_notify *nt, es_waiter *w) {
  if (w->prev)
    w->prev->next = w->next;
  else
    nt->head = w->next;
  if (w->next) w->next->prev = w->prev;
  w->prev = w->next = NULL;
  nt->n--;
  atomic_store(&nt->count, nt->n);
  if (nt->m_waiting) keel_gauge_set(nt->m_waiting, (double)nt->n);
}

/* Frees the waiters of processes that are dead (killed while waiting).
 * A pid is never reused, so a dead pid's waiter is nobody's. Under mu. */
static void prune(es_notify *nt) {
  for (es_waiter *w = nt->head, *next; w; w = next) {
    next = w->next;
    if (!keel_is_alive(w->pid)) {
      unlink_waiter(nt, w);
      free(w);
    }
  }
  nt->prune_at = nt->n * 2 > ES_PRUNE_MIN ? nt->n * 2 : ES_PRUNE_MIN;
}

static int enlist(es_notify *nt, es_waiter *w) {
  pthread_mutex_lock(&nt->mu);
  if (nt->closing) {
    pthread_mutex_unlock(&nt->mu);
    return KEEL_ECANCELED;
  }
  if (nt->n >= nt->prune_at) prune(nt);
  w->next = nt->head;
  if (nt->head) nt->head->prev = w;
  nt->head = w;
  nt->n++;
  /* seq_cst: see keel__es_notify_wake */
  atomic_store(&nt->count, nt->n);
  if (nt->m_waiting) keel_gauge_set(nt->m_waiting, (double)nt->n);
  pthread_mutex_unlock(&nt->mu);
  return 0;
}

static void delist(es_notify *nt, es_waiter *w) {
  pthread_mutex_lock(&nt->mu);
  unlink_waiter(nt, w);
  pthread_mutex_unlock(&nt->mu);
  free(w);
}

/* Replies to w once per armed reference. Under mu. */
static void signal_waiter(es_waiter *w) {
  if (w->ref == 0 || w->signalled) return;
  w->signalled = true;
  keel_reply(w->pid, w->ref, keel_msg_new(0, 0));
}

void keel__es_notify_wake(keel_es *es, int64_t position, bool recheck) {
  es_notify *nt = es->notify;
  /* The waiter stores count (seq_cst) before it reads the head; the waker
   * committed before this load (seq_cst, after a full fence). So either the
   * waker sees the waiter, or the waiter's read comes after the commit and
   * sees it: the pair cannot both miss, and the common case of no waiters
   * costs this one load. */
  atomic_thread_fence(memory_order_seq_cst);
  if (!nt || atomic_load(&nt->count) == 0) return;
  pthread_mutex_lock(&nt->mu);
  for (es_waiter *w = nt->head; w; w = w->next) {
    if (!recheck) { /* recheck: a read of the head, nothing announced */
      if (w->after >= position) continue;
      if (position > w->notified) w->notified = position;
    }
    signal_waiter(w);
  }
  pthread_mutex_unlock(&nt->mu);
}

void keel__es_notify_appended(keel_es *es, int64_t position) {
  if (!es->notify) return;
  keel__es_notify_wake(es, position, false);
  if (es->notify->listen) keel__es_listen_kick(es->notify->listen, position);
}

size_t keel__es_notify_waiting(keel_es *es) {
  es_notify *nt = es->notify;
  pthread_mutex_lock(&nt->mu);
  size_t n = nt->n;
  pthread_mutex_unlock(&nt->mu);
  return n;
}

int keel__es_notify_jobs_hook_add(keel_es *es, void (*fn)(void *ud, const char *payload),
                                  void *ud) {
  if (!es->notify || !es->notify->listen) return KEEL_ENOENT;
  return keel__es_listen_jobs_hook_add(es->notify->listen, fn, ud);
}

void keel__es_notify_jobs_hook_remove(keel_es *es, void (*fn)(void *ud, const char *payload),
                                      void *ud) {
  if (es->notify && es->notify->listen)
    keel__es_listen_jobs_hook_remove(es->notify->listen, fn, ud);
}

void keel__es_notify_jobs_kick(keel_es *es) {
  if (es->notify && es->notify->listen) keel__es_listen_jobs_kick(es->notify->listen);
}

bool keel__es_notify_listening(keel_es *es) {
  return es->notify && keel__es_listen_up(es->notify->listen);
}

/* ---- the readable head ----------------------------------------------------------- */

static void sqlite_head(sqlite3 *db, void *arg) {
  int64_t *h = arg;
  sqlite3_stmt *st = NULL;
  int src = sqlite3_prepare_v2(db, "SELECT coalesce(max(position), 0) FROM events", -1, &st, NULL);
  if (src == SQLITE_OK) src = sqlite3_step(st);
  if (src == SQLITE_ROW)
    *h = sqlite3_column_int64(st, 0);
  else
    *h = keel__es_sqlite_error(db, src, "reading the head (wait)");
  sqlite3_finalize(st);
}

/* The highest position read_all can return now: on PostgreSQL, below the
 * horizon (every event at or below it is visible: decision 0010). */
static int pg_head(keel_es *es, int64_t *h) {
  int held = keel_hold_exits(true); /* the connection goes back to the pool */
  es_pgconn *c = NULL;
  int rc = keel__es_pg_acquire(es, &c);
  if (rc == 0) {
    PGresult *r = NULL;
    rc = keel__es_pg_query(es->pg, c, "reading the readable head (wait)",
                           "SELECT coalesce(max(position), 0) FROM events "
                           "WHERE tx < pg_snapshot_xmin(pg_current_snapshot())",
                           0, NULL, &r);
    if (rc == 0) *h = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    keel__es_pg_release(es, c);
  }
  if (held == 0) keel_hold_exits(false);
  return rc;
}

static int readable_head(keel_es *es, int64_t *h) {
  if (es->notify->m_checks) keel_counter_inc(es->notify->m_checks);
  if (es->kind == ES_PG) return pg_head(es, h);
  *h = 0;
  int rc = keel__es_with_reader(es, sqlite_head, h);
  if (rc == 0 && *h < 0) rc = (int)*h; /* sqlite_head's error */
  return rc;
}

/* ---- keel_es_wait ------------------------------------------------------------------ */

static int64_t min64(int64_t a, int64_t b) {
  return a < b ? a : b;
}

/* Arms ref as w's current reference (a wake-up replies to it at most once)
 * and takes the position last announced to w. false: the store is closing. */
static bool arm(es_notify *nt, es_waiter *w, keel_ref_t ref, int64_t *notified) {
  pthread_mutex_lock(&nt->mu);
  bool closing = nt->closing;
  w->ref = ref;
  w->signalled = false;
  *notified = w->notified;
  pthread_mutex_unlock(&nt->mu);
  return !closing;
}

/* How long to wait before reading the head again: the poll interval, or
 * the horizon's short retry (10 ms doubling to 200 ms) while a position
 * announced to the waiter is above the readable head h; never past the
 * deadline. */
static int64_t next_slice(const es_notify *nt, int64_t notified, int64_t h, double left_s,
                          int64_t *retry_ms) {
  int64_t slice = nt->poll_ms;
  if (notified > h) {
    *retry_ms = *retry_ms ? min64(*retry_ms * 2, ES_HORIZON_RETRY_MAX_MS) : ES_HORIZON_RETRY_MIN_MS;
    slice = slice == KEEL_INFINITY ? *retry_ms : min64(slice, *retry_ms);
  } else {
    *retry_ms = 0;
  }
  if (isfinite(left_s)) {
    int64_t left_ms = (int64_t)ceil(left_s * 1e3);
    slice = slice == KEEL_INFINITY ? left_ms : min64(slice, left_ms);
  }
  return slice == KEEL_INFINITY || slice >= 1 ? slice : 1;
}

/* The wait proper: w is on the list. Each round arms a fresh reference,
 * reads the head, and waits for a wake-up or the next slice. With tail_ok,
 * the live tail holding the position after w->after (tail.c: committed by
 * this instance, consecutive) answers before the head is read: no hop to
 * the database for an append this instance made. */
static int wait_registered(keel_es *es, es_waiter *w, double deadline, int64_t *h, bool tail_ok) {
  es_notify *nt = es->notify;
  int64_t retry_ms = 0;
  for (;;) {
    keel_ref_t ref = keel_make_ref();
    int rc = keel_await_ref(ref);
    if (rc) return rc;
    int64_t notified;
    if (!arm(nt, w, ref, &notified)) rc = KEEL_ECANCELED;
    if (rc == 0 && tail_ok && keel__es_tail_past(es, w->after, h)) {
      keel_await_cancel(ref);
      return 0;
    }
    if (rc == 0 && (rc = readable_head(es, h)) == 0 && *h <= w->after) {
      double left_s = deadline - keel__es_now_s();
      if (left_s <= 0) rc = KEEL_ETIMEDOUT;
      if (rc == 0) {
        keel_msg_t *m = NULL;
        rc = keel_await(ref, &m, next_slice(nt, notified, *h, left_s, &retry_ms));
        keel_msg_free(m);
        if (rc == 0 || rc == KEEL_ETIMEDOUT) continue; /* woken or polling: read again */
        return rc;
      }
    }
    keel_await_cancel(ref);
    return rc;
  }
}

static int wait_for(keel_es *es, int64_t after, int64_t timeout_ms, int64_t *head, bool tail_ok) {
  if (head) *head = 0;
  if (!es || !es->notify || after < 0 ||
      (timeout_ms < 0 && timeout_ms != KEEL_INFINITY && timeout_ms != KEEL_NOWAIT))
    return KEEL_EINVAL;
  keel_pid_t self = keel_self();
  if (self == 0) return KEEL_ENOTPROC;
  int64_t h = 0;
  int rc;
  if (timeout_ms == KEEL_NOWAIT) {
    rc = readable_head(es, &h);
    if (rc == 0 && h <= after) rc = KEEL_ETIMEDOUT;
  } else {
    int64_t timeout = keel_timeout_or(timeout_ms, KEEL_ES_WAIT_DEFAULT_MS);
    double deadline =
        timeout == KEEL_INFINITY ? INFINITY : keel__es_now_s() + (double)timeout / 1e3;
    es_waiter *w = calloc(1, sizeof *w);
    if (!w) return KEEL_ENOMEM;
    w->pid = self;
    w->after = after;
    if ((rc = enlist(es->notify, w)) != 0) {
      free(w);
      return rc;
    }
    rc = wait_registered(es, w, deadline, &h, tail_ok);
    delist(es->notify, w);
  }
  if (rc == 0 && head) *head = h;
  return rc;
}

/* On SQLite a committed position is readable at once, so the tail's word
 * meets keel_es_wait's promise (read_all returns up to *head). On
 * PostgreSQL it would not (an open transaction elsewhere can hold the
 * horizon below it, and a caller that reads read_all would come back at
 * once, again and again): only keel__es_wait_tail, whose caller reads the
 * tail itself, takes it there. */
int keel_es_wait(keel_es *es, int64_t after, int64_t timeout_ms, int64_t *head) {
  return wait_for(es, after, timeout_ms, head, es && es->kind == ES_SQLITE);
}

int keel__es_wait_tail(keel_es *es, int64_t after, int64_t timeout_ms, int64_t *head) {
  return wait_for(es, after, timeout_ms, head, true);
}

/* ---- open and close ----------------------------------------------------------------- */

static int register_metrics(es_notify *nt, keel_metrics *r) {
  keel_metric_family *f;
  int rc = keel_metrics_counter(r, "es_wait_checks_total",
                                "Reads of the readable head by processes in keel_es_wait "
                                "(on entry, when woken, and polling).",
                                NULL, 0, &f);
  if (rc == 0) rc = keel_counter_get(f, NULL, &nt->m_checks);
  if (rc == 0)
    rc = keel_metrics_gauge(r, "es_waiting", "Processes waiting in keel_es_wait.", NULL, 0, &f);
  if (rc == 0) rc = keel_gauge_get(f, NULL, &nt->m_waiting);
  return rc;
}

int keel__es_notify_open(keel_es *es, const keel_es_opts *o) {
  if (o->notify_poll_ms < 0 && o->notify_poll_ms != KEEL_INFINITY) return KEEL_EINVAL;
  es_notify *nt = calloc(1, sizeof *nt);
  if (!nt) return KEEL_ENOMEM;
  pthread_mutex_init(&nt->mu, NULL);
  nt->prune_at = ES_PRUNE_MIN;
  nt->poll_ms = keel_timeout_or(o->notify_poll_ms, ES_POLL_DEFAULT_MS);
  es->notify = nt;
  if (o->metrics) {
    int rc = register_metrics(nt, o->metrics);
    if (rc == KEEL_EEXIST) { /* a second store in this registry: the first one's are exported */
      nt->m_checks = NULL;
      nt->m_waiting = NULL;
    } else if (rc) {
      return rc;
    }
  }
  if (es->kind == ES_PG && !o->no_listen) return keel__es_listen_start(es, o->metrics, &nt->listen);
  return 0;
}

static void nap_ms(int64_t ms) {
  if (keel_self() != 0) {
    keel_sleep(ms);
  } else {
    struct timespec ts = {0, (long)ms * 1000000L};
    nanosleep(&ts, NULL);
  }
}

void keel__es_notify_close(keel_es *es) {
  es_notify *nt = es ? es->notify : NULL;
  if (!nt) return;
  /* first the listener: it calls into the list */
  keel__es_listen_stop(nt->listen);
  nt->listen = NULL;
  pthread_mutex_lock(&nt->mu);
  nt->closing = true;
  for (es_waiter *w = nt->head; w; w = w->next)
    signal_waiter(w);
  pthread_mutex_unlock(&nt->mu);
  /* Each woken process leaves within one read of the head; a killed one
   * never will, and is found dead by prune. */
  for (;;) {
    pthread_mutex_lock(&nt->mu);
    prune(nt);
    size_t n = nt->n;
    pthread_mutex_unlock(&nt->mu);
    if (n == 0) break;
    nap_ms(2);
  }
}

void keel__es_notify_free(keel_es *es) {
  es_notify *nt = es ? es->notify : NULL;
  if (!nt) return;
  keel__es_listen_stop(nt->listen); /* when open failed before close */
  pthread_mutex_destroy(&nt->mu);
  free(nt);
  es->notify = NULL;
}
