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
 * es_pool_connections{state="in_use|idle"}, es_pool_waiting,
 * es_pool_acquire_seconds and es_pool_recycled_total{reason}.
 *
 * Dead idle connections. An idle connection is checked when acquire takes
 * it, before anything is sent on it (usable(): a poll for the error a
 * terminated backend leaves behind, and a ping when it was idle long), and
 * a dead one is dropped for the next: a server restart or a killed backend
 * costs no call an error. A connection that dies while in use still fails
 * its call (KEEL_EIO): keel never resends what may have reached the server.
 *
 * Maintenance. A process of the pool's own (maintain(), started at open,
 * stopped and awaited by close) sweeps the idle list periodically: it closes
 * connections idle past pool_idle_timeout_ms down to pool_min and those
 * past pool_max_lifetime_ms, pings those idle for pool_ping_idle_ms (taken
 * off the list meanwhile, so no caller gets one mid-ping) and opens
 * connections back up to pool_min.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "es/es_internal.h"
#include "keel/error.h"
#include "keel/io.h"
#include "keel/log.h"
#include "keel/message.h"
#include "keel/process.h"

/* Under pg->mu. */
static void gauges(es_pg *pg) {
  if (!pg->g_idle) return;
  keel_gauge_set(pg->g_idle, (double)pg->nidle);
  keel_gauge_set(pg->g_in_use, (double)(pg->total - pg->nidle));
  keel_gauge_set(pg->g_waiting, (double)pg->nwaiting);
}

void keel__es_pg_conn_close(es_pgconn *c) {
  if (!c) return;
  PQfinish(c->conn);
  keel__es_pg_named_free(c);
  free(c);
}

typedef struct connect_job {
  es_pg *pg;
  const char *url;
  es_pgconn *c;
  int rc;
} connect_job;

static void connect_on_pool(void *arg) {
  connect_job *j = arg;
  j->rc = keel__es_pg_connect(j->pg, j->url, &j->c);
}

static int conn_open(es_pg *pg, const char *url, es_pgconn **out) {
  connect_job j = {.pg = pg, .url = url};
  int rc = keel_blocking(connect_on_pool, &j);
  if (rc == 0) rc = j.rc;
  *out = rc == 0 ? j.c : NULL;
  if (rc) keel__es_pg_conn_close(j.c);
  return rc;
}

int keel__es_pg_conn_open(es_pg *pg, es_pgconn **out) {
  return conn_open(pg, pg->url, out);
}

int keel__es_pg_session_open(es_pg *pg, es_pgconn **out) {
  return conn_open(pg, pg->session_url, out);
}

/* The first waiter, taken off the queue and marked done (the caller gives
 * it a slot or a connection); NULL when none waits. Under pg->mu. */
static es_pgwaiter *pop_waiter(es_pg *pg) {
  es_pgwaiter *w = pg->wq;
  if (!w) return NULL;
  pg->wq = w->next;
  if (!pg->wq) pg->wq_tail = NULL;
  if (--pg->nwaiting == 0) pg->waiting_since = 0;
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

/* ---- checks on idle connections --------------------------------------------------- */

/* Whether c has outlived pool_max_lifetime_ms. */
static bool too_old(const es_pg *pg, const es_pgconn *c, double now) {
  return pg->max_lifetime_s >= 0 && now - c->opened_at >= pg->max_lifetime_s;
}

/* How long a ping may take: a server that does not answer an empty query
 * in this time is treated as gone (the call then opens a new connection). */
static int64_t ping_timeout_ms(const es_pg *pg) {
  return pg->statement_timeout_ms < 5000 ? pg->statement_timeout_ms : 5000;
}

/* Closes c, which the pool no longer counts for (the caller gives its slot
 * back), counting why: dead (broken, terminated, no answer) or too old. */
static void drop_conn(es_pg *pg, es_pgconn *c) {
  bool dead = c->broken || PQstatus(c->conn) != CONNECTION_OK ||
              PQtransactionStatus(c->conn) != PQTRANS_IDLE || !too_old(pg, c, keel__es_now_s());
  keel_counter *ctr = dead ? pg->c_dead : pg->c_lifetime;
  if (ctr) keel_counter_inc(ctr);
  keel__es_pg_conn_close(c);
}

/* Whether an idle connection just taken from the list may be handed out.
 * Nothing has been sent on it yet, so a dead one costs its caller nothing
 * but a new connection. The usual case costs one poll(2) with no wait: a
 * server that terminated the backend (pg_terminate_backend, a restart,
 * idle_session_timeout) sent an error and closed the socket, which is then
 * readable. A connection idle longer than pool_ping_idle_ms, or with
 * anything to read, is pinged too (a silent network path shows no input). */
static bool usable(es_pg *pg, es_pgconn *c) {
  double now = keel__es_now_s();
  if (c->broken || PQstatus(c->conn) != CONNECTION_OK || too_old(pg, c, now)) return false;
  bool input = keel__es_pg_idle_input(c);
  if (!input && (pg->ping_idle_s < 0 || now - c->idle_since < pg->ping_idle_s)) return true;
  if (keel__es_pg_ping(c, ping_timeout_ms(pg)) == 0) return true;
  keel_log_warn(NULL, "event store: replacing a dead idle PostgreSQL connection",
                KEEL_STR("error", PQerrorMessage(c->conn)));
  return false;
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
    if (!c || usable(pg, c)) break;
    /* dead or too old while idle: nothing was sent on it, so no call fails;
     * its place goes back (to a waiter, if any) and the next idle one is tried */
    drop_conn(pg, c);
    c = NULL;
    give_slot(pg);
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
      if (pg->nwaiting++ == 0) pg->waiting_since = keel__es_now_s();
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
        if (--pg->nwaiting == 0) pg->waiting_since = 0;
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
    /* taken from the idle list above (not handed over): check it as well */
    if (c && !queued && !usable(pg, c)) {
      drop_conn(pg, c);
      c = NULL;
      slot = true; /* its place is ours: a new connection takes it */
    }
  }
  if (slot && !c) {
    int rc = keel__es_pg_conn_open(pg, &c);
    if (rc) {
      give_slot(pg);
      return rc;
    }
  }
  if (pg->h_acquire) keel_histogram_observe(pg->h_acquire, keel__es_now_s() - t0);
  *out = c;
  return 0;
}

/* Hands c to the first waiter or puts it on the idle list. */
static void put_back(es_pg *pg, es_pgconn *c) {
  c->idle_since = keel__es_now_s();
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

int keel__es_pg_acquire_begin(keel_es *es, es_pgconn **out, const char *what, const char *begin) {
  for (int tries = 0;; tries++) {
    int rc = keel__es_pg_acquire(es, out);
    if (rc) return rc;
    rc = keel__es_pg_query(es->pg, *out, what, begin ? begin : "BEGIN", -1, NULL, NULL);
    if (rc == 0) return 0;
    bool dead = (*out)->broken || PQstatus((*out)->conn) != CONNECTION_OK;
    keel__es_pg_release(es, *out); /* a dead one is dropped */
    *out = NULL;
    if (!dead || tries == 1) return rc;
  }
}

void keel__es_pg_release(keel_es *es, es_pgconn *c) {
  es_pg *pg = es->pg;
  if (!c) return;
  if (c->broken || PQstatus(c->conn) != CONNECTION_OK ||
      PQtransactionStatus(c->conn) != PQTRANS_IDLE || too_old(pg, c, keel__es_now_s())) {
    drop_conn(pg, c);
    give_slot(pg);
    return;
  }
  put_back(pg, c);
}

void keel__es_pg_stats(keel_es *es, size_t *in_use, size_t *idle, size_t *waiting, size_t *max,
                       double *waiting_for_s) {
  es_pg *pg = es->pg;
  pthread_mutex_lock(&pg->mu);
  *in_use = pg->total - pg->nidle;
  *idle = pg->nidle;
  *waiting = pg->nwaiting;
  *max = pg->max;
  *waiting_for_s = pg->nwaiting ? keel__es_now_s() - pg->waiting_since : 0;
  pthread_mutex_unlock(&pg->mu);
}

/* ---- maintenance ------------------------------------------------------------------- */

/* What the maintainer does with one idle connection at `now`. */
typedef enum { KEEP, PING, RECYCLE_IDLE, RECYCLE_OLD } idle_verdict;

/* Under pg->mu. Idle recycling stops at pool_min (total counts down as the
 * sweep drops connections). */
static idle_verdict judge(const es_pg *pg, const es_pgconn *c, double now) {
  if (too_old(pg, c, now)) return RECYCLE_OLD;
  double idle = now - c->idle_since;
  if (pg->idle_timeout_s >= 0 && idle >= pg->idle_timeout_s && pg->total > pg->min)
    return RECYCLE_IDLE;
  if (c->broken || (pg->ping_idle_s >= 0 && idle >= pg->ping_idle_s)) return PING;
  return KEEP;
}

/* One pass: closes the idle connections past their idle timeout (down to
 * pool_min) or their lifetime, pings those idle for pool_ping_idle_ms (out
 * of the list meanwhile: they count as in use), replaces the dead, and
 * opens connections up to pool_min again. */
static void sweep(es_pg *pg) {
  double now = keel__es_now_s();
  es_pgconn *drop = NULL, *check = NULL;
  size_t nidle_recycled = 0;
  pthread_mutex_lock(&pg->mu);
  for (es_pgconn **pp = &pg->idle; *pp;) {
    es_pgconn *c = *pp;
    idle_verdict v = judge(pg, c, now);
    if (v == KEEP) {
      pp = &c->next;
      continue;
    }
    *pp = c->next;
    pg->nidle--;
    if (v == PING) {
      c->next = check;
      check = c;
    } else {
      pg->total--;
      nidle_recycled += v == RECYCLE_IDLE;
      c->next = drop;
      drop = c;
    }
  }
  gauges(pg);
  pthread_mutex_unlock(&pg->mu);
  if (pg->c_idle && nidle_recycled) keel_counter_add(pg->c_idle, (double)nidle_recycled);
  for (es_pgconn *c = drop, *next; c; c = next) {
    next = c->next;
    if (too_old(pg, c, now) && pg->c_lifetime) keel_counter_inc(pg->c_lifetime);
    keel__es_pg_conn_close(c);
  }
  for (es_pgconn *c = check, *next; c; c = next) {
    next = c->next;
    keel__es_pg_idle_input(c);
    if (keel__es_pg_ping(c, ping_timeout_ms(pg)) == 0) {
      put_back(pg, c);
    } else {
      keel_log_warn(NULL, "event store: an idle PostgreSQL connection is dead; replaced",
                    KEEL_STR("error", PQerrorMessage(c->conn)));
      drop_conn(pg, c);
      give_slot(pg);
    }
  }
  for (;;) { /* back up to pool_min */
    pthread_mutex_lock(&pg->mu);
    bool below = pg->total < pg->min && !pg->wq;
    if (below) pg->total++;
    pthread_mutex_unlock(&pg->mu);
    if (!below) break;
    es_pgconn *c;
    if (keel__es_pg_conn_open(pg, &c) != 0) { /* logged; the next pass tries again */
      give_slot(pg);
      break;
    }
    put_back(pg, c);
  }
}

/* How often the maintainer wakes: half the shortest period it watches,
 * between 10 ms and 60 s; 0 when every period is turned off. */
static int64_t maint_every_ms(const es_pg *pg) {
  double p[3] = {pg->idle_timeout_s, pg->max_lifetime_s, pg->ping_idle_s}, least = -1;
  for (int i = 0; i < 3; i++)
    if (p[i] >= 0 && (least < 0 || p[i] < least)) least = p[i];
  if (least < 0) return 0;
  double ms = least * 500.0;
  return ms < 10 ? 10 : ms > 60000 ? 60000 : (int64_t)ms;
}

static void maint_exited(void *arg) {
  es_pg *pg = arg;
  /* release: close reads it with acquire, then frees what we used */
  atomic_store_explicit(&pg->maint_done, true, memory_order_release);
}

/* The maintainer: a process of its own that sweeps every maint_every_ms
 * until close sets maint_stop and wakes it. */
static void maintain(void *arg) {
  es_pg *pg = arg;
  int64_t every = maint_every_ms(pg);
  /* acquire: pairs with close's release store, nothing else to see */
  while (!atomic_load_explicit(&pg->maint_stop, memory_order_acquire)) {
    keel_msg_t *m = NULL;
    keel_receive(&m, every);
    keel_msg_free(m);
    if (atomic_load_explicit(&pg->maint_stop, memory_order_acquire)) break;
    sweep(pg);
  }
}

static void start_maintainer(es_pg *pg) {
  atomic_init(&pg->maint_stop, false);
  atomic_init(&pg->maint_done, true);
  if (maint_every_ms(pg) == 0) return;
  keel_spawn_opts so;
  keel_spawn_opts_init(&so);
  so.name = "es_pool";
  so.on_exit = maint_exited;
  so.on_exit_arg = pg;
  atomic_store_explicit(&pg->maint_done, false, memory_order_relaxed);
  if (keel_spawn(maintain, pg, &so, &pg->maintainer) != 0) {
    atomic_store_explicit(&pg->maint_done, true, memory_order_relaxed);
    pg->maintainer = 0;
    keel_log_warn(NULL, "event store: no pool maintainer (idle recycling and pings off)");
  }
}

/* Stops the maintainer and waits until it has exited (it may be in the
 * middle of a ping or an open: bounded by their timeouts). */
static void stop_maintainer(es_pg *pg) {
  if (!pg->maintainer) return;
  atomic_store_explicit(&pg->maint_stop, true, memory_order_release);
  keel_send(pg->maintainer, keel_msg_new(0, 0));
  while (!atomic_load_explicit(&pg->maint_done, memory_order_acquire)) {
    if (keel_sleep(1) != 0) { /* not in a process: a plain thread may sleep */
      struct timespec ts = {0, 1000000};
      nanosleep(&ts, NULL);
    }
  }
  pg->maintainer = 0;
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
  static const char *const reason_label[] = {"reason"};
  if ((rc = keel_metrics_counter(r, "es_pool_recycled_total",
                                 "Event store PostgreSQL connections closed by the pool, by reason "
                                 "(idle: past the idle timeout; lifetime: too old; dead: found "
                                 "broken, terminated or not answering a ping).",
                                 reason_label, 1, &f)))
    return rc;
  static const char *const reasons[] = {"idle", "lifetime", "dead"};
  keel_counter **slots[] = {&pg->c_idle, &pg->c_lifetime, &pg->c_dead};
  for (int i = 0; i < 3; i++)
    if ((rc = keel_counter_get(f, &reasons[i], slots[i]))) return rc;
  if ((rc = keel_metrics_histogram(r, "es_pool_acquire_seconds",
                                   "Time to check a connection out of the event store's pool.",
                                   NULL, 0, acquire_buckets,
                                   sizeof acquire_buckets / sizeof acquire_buckets[0], &f)) ||
      (rc = keel_histogram_get(f, NULL, &pg->h_acquire)))
    return rc;
  return 0;
}

/* An option in ms as seconds: 0 the default, KEEL_INFINITY (or any
 * negative) -1, off. */
static double period_s(int64_t ms, int64_t dflt) {
  if (ms == 0) ms = dflt;
  return ms < 0 ? -1.0 : (double)ms / 1000.0;
}

int keel__es_pg_open(keel_es *es, const char *url, const keel_es_opts *o) {
  es_pg *pg = calloc(1, sizeof *pg);
  if (!pg) return KEEL_ENOMEM;
  pthread_mutex_init(&pg->mu, NULL);
  pthread_mutex_init(&pg->gmu, NULL);
  es->pg = pg;
  if (!(pg->url = strdup(url))) return KEEL_ENOMEM;
  if (!(pg->session_url = strdup(o->session_url && *o->session_url ? o->session_url : url)))
    return KEEL_ENOMEM;
  atomic_init(&pg->prepare_session, !o->no_prepare);
  atomic_init(&pg->prepare, !o->no_prepare && strcmp(pg->session_url, url) == 0);
  pg->max = o->pool_max ? o->pool_max : 10;
  pg->min = o->pool_min ? o->pool_min : 1;
  if (pg->min > pg->max) pg->min = pg->max;
  pg->acquire_timeout_ms = o->acquire_timeout_ms > 0 ? o->acquire_timeout_ms : 5000;
  pg->statement_timeout_ms = o->statement_timeout_ms > 0 ? o->statement_timeout_ms : 30000;
  pg->idle_timeout_s = period_s(o->pool_idle_timeout_ms, 300000);
  pg->max_lifetime_s = period_s(o->pool_max_lifetime_ms, 1800000);
  pg->ping_idle_s = period_s(o->pool_ping_idle_ms, 5000);
  if (o->metrics) {
    int rc = register_metrics(pg, o->metrics);
    if (rc == KEEL_EEXIST) {
      pg->g_in_use = pg->g_idle = pg->g_waiting = NULL;
      pg->h_acquire = NULL;
      pg->c_idle = pg->c_lifetime = pg->c_dead = NULL;
    } else if (rc) {
      return rc;
    }
  }
  int version = 0;
  for (size_t i = 0; i < pg->min; i++) {
    es_pgconn *c;
    int rc = keel__es_pg_conn_open(pg, &c);
    if (rc) return rc;
    if (i == 0 && (rc = keel__es_pg_migrate(pg, c, &version)) != 0) {
      keel__es_pg_conn_close(c);
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
  start_maintainer(pg);
  return 0;
}

void keel__es_pg_close(keel_es *es) {
  es_pg *pg = es->pg;
  if (!pg) return;
  stop_maintainer(pg);
  for (es_pgconn *c = pg->idle, *next; c; c = next) {
    next = c->next;
    keel__es_pg_conn_close(c);
  }
  pg->idle = NULL;
  pg->nidle = pg->total = 0;
  gauges(pg);
  pthread_mutex_destroy(&pg->mu);
  pthread_mutex_destroy(&pg->gmu);
  free(pg->url);
  free(pg->session_url);
  free(pg);
  es->pg = NULL;
}

/* ---- sizing (keel_es_pool_size) ------------------------------------------------------ */

int keel_es_pool_size(int instances, int max_connections, int reserved, size_t *pool_min,
                      size_t *pool_max) {
  if (instances < 1 || max_connections < 1 || !pool_min || !pool_max) return KEEL_EINVAL;
  /* the reference keeps int(max_connections * 0.9): its reserve rounds up */
  if (reserved < 0) reserved = max_connections - (int)((int64_t)max_connections * 9 / 10);
  int per = (max_connections - reserved) / instances;
  if (per < 1) return KEEL_ERANGE;
  *pool_max = (size_t)per;
  *pool_min = per / 3 > 2 ? (size_t)(per / 3) : 2;
  if (*pool_min > *pool_max) *pool_min = *pool_max;
  return 0;
}
