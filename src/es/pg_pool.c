/* pg_pool.c - the PostgreSQL backend's connection pool, and its opening.
 *
 * A mutex-guarded free list of idle connections, a count of every
 * connection the pool owns (idle, in use, being opened) and a FIFO of the
 * processes waiting for one. Acquire takes an idle connection, or, below
 * pool_max, the right to open a new one (on the blocking pool, outside the
 * lock); otherwise the process queues a waiter on its own stack and waits
 * for a reply with keel_await, at most acquire_timeout_ms (KEEL_ETIMEDOUT):
 * its scheduler runs the others meanwhile. Release hands the connection to
 * the first waiter directly (under the lock, then a reply wakes it), or puts
 * it back on the free list. A connection that broke (a socket error, a
 * timeout) or that was left inside a transaction is closed instead, and its
 * place handed to the first waiter, who opens a new one: a pool whose server
 * went away recovers when it returns. The waiter decides under the lock
 * whether it was served or timed out, so a hand-over and a timeout never
 * both happen; a late reply is dropped by the runtime. Callers hold their
 * exit signals from acquire to release (pg_write.c, pg_read.c), so a waiter
 * never leaves a dangling entry nor a connection in use behind.
 *
 * keel__es_pg_open makes the pool, opens pool_min connections and migrates
 * the schema on the first (pg_schema.c). Metrics, with opts.metrics:
 * es_pool_connections{state="in_use|idle"}, es_pool_waiting and
 * es_pool_acquire_seconds.
 *
 * Not here yet: idle recycling and a periodic health ping (a connection
 * that died while idle is found broken at its next use, that call fails
 * with KEEL_EIO, and the next one gets a fresh connection).
 */
#include <stdlib.h>
#include <string.h>

#include "es/es_internal.h"
#include "keel/error.h"
#include "keel/io.h"
#include "keel/log.h"
#include "keel/message.h"

/* Under pg->mu. */
static void gauges(es_pg *pg) {
  if (!pg->g_idle) return;
  keel_gauge_set(pg->g_idle, (double)pg->nidle);
  keel_gauge_set(pg->g_in_use, (double)(pg->total - pg->nidle));
  keel_gauge_set(pg->g_waiting, (double)pg->nwaiting);
}

static void close_conn(es_pgconn *c) {
  if (!c) return;
  PQfinish(c->conn);
  free(c);
}

typedef struct connect_job {
  es_pg *pg;
  es_pgconn *c;
  int rc;
} connect_job;

static void connect_on_pool(void *arg) {
  connect_job *j = arg;
  j->rc = keel__es_pg_connect(j->pg, &j->c);
}

static int open_conn(es_pg *pg, es_pgconn **out) {
  connect_job j = {.pg = pg};
  int rc = keel_blocking(connect_on_pool, &j);
  if (rc == 0) rc = j.rc;
  *out = rc == 0 ? j.c : NULL;
  if (rc) close_conn(j.c);
  return rc;
}

/* The first waiter, taken off the queue and marked done (the caller gives
 * it a slot or a connection); NULL when none waits. Under pg->mu. */
static es_pgwaiter *pop_waiter(es_pg *pg) {
  es_pgwaiter *w = pg->wq;
  if (!w) return NULL;
  pg->wq = w->next;
  if (!pg->wq) pg->wq_tail = NULL;
  pg->nwaiting--;
  w->done = true;
  return w;
}

/* Updates the gauges, unlocks pg->mu and wakes w (if any). w's pid and ref
 * are read before the unlock: once unlocked, w (on the waiter's stack) may
 * be gone. */
static void wake_after_unlock(es_pg *pg, es_pgwaiter *w) {
  keel_pid_t pid = w ? w->pid : 0;
  keel_ref_t ref = w ? w->ref : 0;
  gauges(pg);
  pthread_mutex_unlock(&pg->mu);
  if (pid) keel_reply(pid, ref, keel_msg_new(0, 0));
}

/* Gives up a slot (a connection that could not be opened or was dropped):
 * to the first waiter, who will open one, or back to the count. */
static void give_slot(es_pg *pg) {
  pthread_mutex_lock(&pg->mu);
  es_pgwaiter *w = pop_waiter(pg);
  if (w)
    w->slot = true;
  else
    pg->total--;
  wake_after_unlock(pg, w);
}

int keel__es_pg_acquire(keel_es *es, es_pgconn **out) {
  es_pg *pg = es->pg;
  *out = NULL;
  double t0 = keel__es_now_s();
  es_pgconn *c = NULL;
  bool slot = false;
  for (;;) {
    pthread_mutex_lock(&pg->mu);
    if ((c = pg->idle) != NULL) {
      pg->idle = c->next;
      pg->nidle--;
    } else if (pg->total < pg->max) {
      pg->total++;
      slot = true;
    }
    gauges(pg);
    pthread_mutex_unlock(&pg->mu);
    if (c && PQstatus(c->conn) != CONNECTION_OK) { /* died while idle */
      close_conn(c);
      c = NULL;
      slot = true; /* its place is ours */
    }
    break;
  }
  if (!c && !slot) {
    es_pgwaiter w = {.pid = keel_self(), .ref = keel_make_ref()};
    int rc = keel_await_ref(w.ref);
    if (rc) return rc;
    bool queued = false; /* w.done is the releaser's once w is queued: read it under mu */
    pthread_mutex_lock(&pg->mu);
    /* a release may have come between the two locks */
    if ((c = pg->idle) != NULL) {
      pg->idle = c->next;
      pg->nidle--;
      w.done = true;
      w.conn = c;
    } else if (pg->total < pg->max) {
      pg->total++;
      w.done = true;
      w.slot = true;
    } else {
      if (pg->wq_tail)
        pg->wq_tail->next = &w;
      else
        pg->wq = &w;
      pg->wq_tail = &w;
      pg->nwaiting++;
      queued = true;
    }
    gauges(pg);
    pthread_mutex_unlock(&pg->mu);
    if (queued) {
      keel_msg_t *m = NULL;
      rc = keel_await(w.ref, &m, pg->acquire_timeout_ms);
      keel_msg_free(m);
      if (rc) keel_await_cancel(w.ref);
      pthread_mutex_lock(&pg->mu);
      if (!w.done) { /* timed out: leave the queue */
        es_pgwaiter **pp = &pg->wq, *prev = NULL;
        while (*pp && *pp != &w) {
          prev = *pp;
          pp = &(*pp)->next;
        }
        if (*pp) {
          *pp = w.next;
          if (pg->wq_tail == &w) pg->wq_tail = prev;
        }
        pg->nwaiting--;
      }
      gauges(pg);
      pthread_mutex_unlock(&pg->mu);
      if (!w.done) {
        if (pg->h_acquire) keel_histogram_observe(pg->h_acquire, keel__es_now_s() - t0);
        keel_log_warn(NULL, "event store: no PostgreSQL connection in time",
                      KEEL_INT("pool_max", (int64_t)pg->max),
                      KEEL_INT("acquire_timeout_ms", pg->acquire_timeout_ms));
        return KEEL_ETIMEDOUT;
      }
    } else {
      keel_await_cancel(w.ref);
    }
    c = w.conn;
    slot = w.slot;
  }
  if (slot && !c) {
    int rc = open_conn(pg, &c);
    if (rc) {
      give_slot(pg);
      return rc;
    }
  }
  if (pg->h_acquire) keel_histogram_observe(pg->h_acquire, keel__es_now_s() - t0);
  *out = c;
  return 0;
}

void keel__es_pg_release(keel_es *es, es_pgconn *c) {
  es_pg *pg = es->pg;
  if (!c) return;
  if (c->broken || PQstatus(c->conn) != CONNECTION_OK ||
      PQtransactionStatus(c->conn) != PQTRANS_IDLE) {
    close_conn(c);
    give_slot(pg);
    return;
  }
  pthread_mutex_lock(&pg->mu);
  es_pgwaiter *w = pop_waiter(pg);
  if (w) {
    w->conn = c;
  } else {
    c->next = pg->idle;
    pg->idle = c;
    pg->nidle++;
  }
  wake_after_unlock(pg, w);
}

/* ---- open and close ----------------------------------------------------------------- */

static const double acquire_buckets[] = {0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5};

static int register_metrics(es_pg *pg, keel_metrics *r) {
  keel_metric_family *f;
  static const char *const state_label[] = {"state"};
  int rc = keel_metrics_gauge(r, "es_pool_connections",
                              "Event store PostgreSQL connections, by state (in_use, idle).",
                              state_label, 1, &f);
  if (rc) return rc;
  const char *v[1] = {"in_use"};
  if ((rc = keel_gauge_get(f, v, &pg->g_in_use))) return rc;
  v[0] = "idle";
  if ((rc = keel_gauge_get(f, v, &pg->g_idle))) return rc;
  if ((rc = keel_metrics_gauge(r, "es_pool_waiting",
                               "Processes waiting for an event store PostgreSQL connection.", NULL,
                               0, &f)) ||
      (rc = keel_gauge_get(f, NULL, &pg->g_waiting)))
    return rc;
  if ((rc = keel_metrics_histogram(r, "es_pool_acquire_seconds",
                                   "Time to check a connection out of the event store's pool.",
                                   NULL, 0, acquire_buckets,
                                   sizeof acquire_buckets / sizeof acquire_buckets[0], &f)) ||
      (rc = keel_histogram_get(f, NULL, &pg->h_acquire)))
    return rc;
  return 0;
}

int keel__es_pg_open(keel_es *es, const char *url, const keel_es_opts *o) {
  es_pg *pg = calloc(1, sizeof *pg);
  if (!pg) return KEEL_ENOMEM;
  pthread_mutex_init(&pg->mu, NULL);
  es->pg = pg;
  if (!(pg->url = strdup(url))) return KEEL_ENOMEM;
  pg->max = o->pool_max ? o->pool_max : 10;
  pg->min = o->pool_min ? o->pool_min : 1;
  if (pg->min > pg->max) pg->min = pg->max;
  pg->acquire_timeout_ms = o->acquire_timeout_ms > 0 ? o->acquire_timeout_ms : 5000;
  pg->statement_timeout_ms = o->statement_timeout_ms > 0 ? o->statement_timeout_ms : 30000;
  if (o->metrics) {
    int rc = register_metrics(pg, o->metrics);
    if (rc == KEEL_EEXIST) {
      pg->g_in_use = pg->g_idle = pg->g_waiting = NULL;
      pg->h_acquire = NULL;
    } else if (rc) {
      return rc;
    }
  }
  int version = 0;
  for (size_t i = 0; i < pg->min; i++) {
    es_pgconn *c;
    int rc = open_conn(pg, &c);
    if (rc) return rc;
    if (i == 0 && (rc = keel__es_pg_migrate(pg, c, &version)) != 0) {
      close_conn(c);
      return rc;
    }
    pthread_mutex_lock(&pg->mu);
    c->next = pg->idle;
    pg->idle = c;
    pg->nidle++;
    pg->total++;
    gauges(pg);
    pthread_mutex_unlock(&pg->mu);
  }
  keel_log_info(NULL, "event store opened", KEEL_STR("backend", "postgresql"),
                KEEL_INT("schema_version", version), KEEL_INT("pool_min", (int64_t)pg->min),
                KEEL_INT("pool_max", (int64_t)pg->max), KEEL_INT("libpq", (int64_t)PQlibVersion()));
  return 0;
}

void keel__es_pg_close(keel_es *es) {
  es_pg *pg = es->pg;
  if (!pg) return;
  for (es_pgconn *c = pg->idle, *next; c; c = next) {
    next = c->next;
    close_conn(c);
  }
  pg->idle = NULL;
  pg->nidle = pg->total = 0;
  gauges(pg);
  pthread_mutex_destroy(&pg->mu);
  free(pg->url);
  free(pg);
  es->pg = NULL;
}
