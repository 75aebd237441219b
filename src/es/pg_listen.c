/* pg_listen.c - PostgreSQL notifications: one LISTEN connection per store.
 *
 * Many keel instances share one database; an append in one must wake the
 * processes in keel_es_wait in the others. Each store keeps one dedicated
 * connection (not from the pool: LISTEN is session state, and a pooled
 * connection is lent to whoever calls) that LISTENs on the store's channel
 * (keel_es_<schema>, see keel__es_listen_channel_of), served by a plain thread: blocking libpq
 * plus poll() on the socket and on a wake pipe, the pattern of SQLite's
 * writer thread. A notification carries the highest position an append
 * committed; the thread hands it to notify.c, which wakes the waiters whose
 * position is below it. Notifications from this instance are skipped (its
 * appends wake its waiters directly, without the round trip). A thread
 * rather than a keel process on a scheduler's loop: the connection lives as
 * long as the store, not as any process, needs no supervisor, and close
 * stops it with a write and a join.
 *
 * Sending. The same thread sends this instance's NOTIFYs: an append, after
 * its COMMIT, raises a shared "highest position to announce" and pokes the
 * pipe; the thread sends one `SELECT pg_notify(channel, position)` for
 * whatever accumulated, so a burst of appends costs one NOTIFY (in a
 * transaction of its own that does not wait for its WAL flush). Why not
 * NOTIFY inside the append's transaction, delivered atomically at commit:
 * PostgreSQL serialises the commits of notifying transactions on one
 * database-wide lock held until the commit is durable (async.c,
 * PreCommit_Notify), which would turn parallel appends into a global write
 * lock of one WAL flush each. Sent after the commit, a NOTIFY can be lost
 * (this process dies in between, the connection is down): the waiters' poll
 * (notify_poll_ms) covers that.
 *
 * Outages. When the connection drops (the socket reports an error, the
 * server terminated it; TCP keepalives catch a peer that vanished), the
 * thread reconnects with a backoff of 100 ms doubling to 5 s, logs a warning
 * once per outage and an info line when LISTEN is back, counts
 * es_listen_reconnects_total and shows es_listen_up (1/0). Meanwhile the
 * waiters poll; once back it wakes every waiter for one more read of the
 * head (what was appended during the outage was not announced) and sends
 * what this instance has to announce. The first connection is made the
 * same way, by the thread, right after open (open does not wait for it).
 * Close writes to the pipe: the thread leaves any wait, connecting
 * included, at once.
 *
 * The connection's application_name is keel_es_listen unless the URL sets
 * one (fallback_application_name), so an operator can find it in
 * pg_stat_activity.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "es/es_internal.h"
#include "keel/error.h"
#include "keel/log.h"

enum {
  LISTEN_BACKOFF_MIN_MS = 100,
  LISTEN_BACKOFF_MAX_MS = 5000,
  LISTEN_CONNECT_TIMEOUT_MS = 10000,
  LISTEN_QUERY_TIMEOUT_MS = 30000, /* LISTEN or NOTIFY without an answer: the connection is dead */
};

struct es_listen {
  keel_es *es;
  char *url;
  char channel[64]; /* the thread's: keel_es_<schema>; "" until the first connection */
  pthread_t thread;
  bool started;
  int wake[2]; /* the pipe: [0] polled by the thread, [1] written to poke it */
  atomic_bool stop;
  /* The highest position this instance appended, to announce, and whether
   * the thread has been poked since it last looked: an appender raises
   * to_notify then sets kicked (both seq_cst); the thread clears kicked then
   * reads to_notify, so a raise it does not see has set kicked again and
   * written to the pipe. */
  _Atomic int64_t to_notify;
  atomic_bool kicked;
  int64_t notified; /* the thread's: the highest position announced */
  atomic_bool up;   /* LISTEN established; for tests and the gauge */
  /* The jobs' side channel: a wake-up to send (set by any thread, taken by
   * the thread), and the hooks that hear other instances' (under hook_mu):
   * one per keel_jobs on this store. */
  atomic_bool jobs_pending;
  pthread_mutex_t hook_mu;
  struct jobs_hook {
    void (*fn)(void *ud, const char *payload);
    void *ud;
  } * hooks;
  size_t nhooks, caphooks;
  keel_gauge *g_up; /* NULL without metrics */
  keel_counter *c_reconnects;
};

static double now_s(void) {
  return keel__es_now_s();
}

static void drain(int fd) {
  char buf[64];
  while (read(fd, buf, sizeof buf) > 0) {
  }
}

/* Waits for fd (events: POLLIN/POLLOUT; fd < 0: none, a sleep) or the pipe,
 * at most timeout_ms (< 0: no limit). 1: fd ready, 0: timed out, -1: stop,
 * 2: poked while waiting for POLLIN (something to announce; a caller in the
 * middle of a statement just waits on). */
static int wait_fd(es_listen *l, int fd, short events, int timeout_ms) {
  struct pollfd p[2] = {{.fd = l->wake[0], .events = POLLIN}, {.fd = fd, .events = events}};
  double deadline = timeout_ms < 0 ? 0 : now_s() + timeout_ms / 1e3;
  for (;;) {
    if (atomic_load(&l->stop)) return -1;
    int t = timeout_ms < 0 ? -1 : (int)((deadline - now_s()) * 1e3);
    if (timeout_ms >= 0 && t <= 0) return 0;
    int n = poll(p, fd >= 0 ? 2 : 1, t);
    if (n < 0 && errno != EINTR) return 0;
    if (n <= 0) continue;
    if (p[0].revents) drain(l->wake[0]); /* a poke: stop, or something to announce */
    if (atomic_load(&l->stop)) return -1;
    if (fd >= 0 && p[1].revents) return 1;
    if (p[0].revents && fd >= 0 && events == POLLIN) return 2; /* the caller may want to send */
  }
}

static void set_up(es_listen *l, bool up) {
  atomic_store(&l->up, up);
  if (l->g_up) keel_gauge_set(l->g_up, up ? 1 : 0);
}

/* The server's notices and an error that arrives outside a query (the
 * server ending the connection: "FATAL: terminating connection due to
 * administrator command") would go to stderr by libpq's default; the loss
 * is logged by the listener itself, as structured lines. */
static void quiet(void *arg, const char *message) {
  (void)arg;
  (void)message;
}

/* Connects without blocking past the pipe: close interrupts it. */
static PGconn *connect_listen(es_listen *l, char *err, size_t errlen) {
  static const char *const keys[] = {"fallback_application_name",
                                     "keepalives",
                                     "keepalives_idle",
                                     "keepalives_interval",
                                     "keepalives_count",
                                     "dbname",
                                     NULL};
  const char *const vals[] = {"keel_es_listen", "1", "30", "10", "3", l->url, NULL};
  PGconn *c = PQconnectStartParams(keys, vals, 1);
  if (!c) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  double deadline = now_s() + LISTEN_CONNECT_TIMEOUT_MS / 1e3;
  PostgresPollingStatusType st =
      PQstatus(c) == CONNECTION_BAD ? PGRES_POLLING_FAILED : PGRES_POLLING_WRITING;
  while (st != PGRES_POLLING_OK && st != PGRES_POLLING_FAILED) {
    int left = (int)((deadline - now_s()) * 1e3);
    int r = left > 0 ? wait_fd(l, PQsocket(c), st == PGRES_POLLING_READING ? POLLIN : POLLOUT, left)
                     : 0;
    if (r == 2) continue;
    if (r <= 0) {
      snprintf(err, errlen, "%s", r < 0 ? "closing" : "timeout expired");
      PQfinish(c);
      return NULL;
    }
    st = PQconnectPoll(c);
  }
  if (st == PGRES_POLLING_FAILED) {
    snprintf(err, errlen, "%s", PQerrorMessage(c));
    PQfinish(c);
    return NULL;
  }
  PQsetNoticeProcessor(c, quiet, NULL);
  return c;
}

/* Runs sql (one or several statements, no parameters), consuming the
 * notifications that arrive meanwhile; val (may be NULL) gets the first
 * value of the last row set. 0, or -1 (the connection is no good; err says
 * why), or -2 (stop). */
static int run(es_listen *l, PGconn *c, const char *sql, char *val, size_t vallen, char *err,
               size_t errlen) {
  if (!PQsendQuery(c, sql)) {
    snprintf(err, errlen, "%s", PQerrorMessage(c));
    return -1;
  }
  double deadline = now_s() + LISTEN_QUERY_TIMEOUT_MS / 1e3;
  int rc = 0;
  for (;;) {
    while (PQisBusy(c)) {
      int left = (int)((deadline - now_s()) * 1e3);
      int r = left > 0 ? wait_fd(l, PQsocket(c), POLLIN, left) : 0;
      if (r == 2) continue;
      if (r < 0) return -2;
      if (r == 0 || !PQconsumeInput(c)) {
        snprintf(err, errlen, "%s", r == 0 ? "no answer" : PQerrorMessage(c));
        return -1;
      }
    }
    PGresult *res = PQgetResult(c);
    if (!res) break;
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && rc == 0) {
      snprintf(err, errlen, "%s", PQresultErrorMessage(res));
      rc = -1;
    }
    if (st == PGRES_TUPLES_OK && val && PQntuples(res) > 0)
      snprintf(val, vallen, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
  }
  return rc;
}

/* The NOTIFY channel of a store: its schema's name when that is a plain
 * lower-case identifier, else a hash of it, so that two stores in one
 * database never wake each other's waiters. */
void keel__es_listen_channel_of(const char *schema, char out[64]) {
  bool plain = *schema && strlen(schema) <= 40;
  for (const char *p = schema; *p && plain; p++)
    plain = (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_';
  if (plain) {
    snprintf(out, 64, "keel_es_%s", schema);
    return;
  }
  snprintf(out, 64, "keel_es_h%016llx", (unsigned long long)keel__es_text_hash(schema));
}

/* Opens the connection, learns the store's channel from its schema (the
 * first in search_path, where the tables are: the same URL as the pool's)
 * and LISTENs. NULL on failure (err says why). */
static PGconn *open_listen(es_listen *l, char *err, size_t errlen) {
  PGconn *c = connect_listen(l, err, errlen);
  if (!c) return NULL;
  char schema[256] = "", sql[96];
  int rc = run(l, c, "SELECT coalesce(current_schema(), '')", schema, sizeof schema, err, errlen);
  if (rc == 0) {
    keel__es_listen_channel_of(schema, l->channel);
    snprintf(sql, sizeof sql, "LISTEN %s", l->channel); /* a plain lower-case identifier */
    rc = run(l, c, sql, NULL, 0, err, errlen);
  }
  if (rc) {
    PQfinish(c);
    return NULL;
  }
  return c;
}

/* Hands this connection's notifications (other instances' appends) to the
 * waiters. */
static void deliver(es_listen *l, PGconn *c) {
  int self = PQbackendPID(c);
  PGnotify *n;
  while ((n = PQnotifies(c)) != NULL) {
    if (n->be_pid != self && strncmp(n->extra, "jobs", 4) == 0) {
      /* "jobs" (a wake-up) or "jobs:..." (the jobs' own messages: a cancel) */
      pthread_mutex_lock(&l->hook_mu);
      for (size_t i = 0; i < l->nhooks; i++)
        l->hooks[i].fn(l->hooks[i].ud, n->extra);
      pthread_mutex_unlock(&l->hook_mu);
    } else if (n->be_pid != self) {
      int64_t pos = strtoll(n->extra, NULL, 10);
      if (pos > 0) keel__es_notify_wake(l->es, pos, false);
    }
    PQfreemem(n);
  }
}

/* Announces what this instance appended since the last NOTIFY. 0 or -1/-2
 * as run. */
static int announce(es_listen *l, PGconn *c, char *err, size_t errlen) {
  atomic_store(&l->kicked, false);
  int64_t pos = atomic_load(&l->to_notify);
  bool jobs = atomic_exchange(&l->jobs_pending, false);
  if (pos <= l->notified && !jobs) return 0;
  /* Its own short transaction (a NOTIFY takes a transaction id and a
   * commit record): without waiting for its flush, since the events it
   * announces are durable already and a lost NOTIFY only costs a poll. The
   * channel is a plain identifier (keel__es_listen_channel_of) and pos a number: safe to
   * inline. */
  char sql[384], events[128] = "", jobs_sql[96] = "";
  if (pos > l->notified)
    snprintf(events, sizeof events, "SELECT pg_notify('%s', '%lld'); ", l->channel, (long long)pos);
  if (jobs) snprintf(jobs_sql, sizeof jobs_sql, "SELECT pg_notify('%s', 'jobs'); ", l->channel);
  snprintf(sql, sizeof sql, "BEGIN; SET LOCAL synchronous_commit = off; %s%sCOMMIT", events,
           jobs_sql);
  int rc = run(l, c, sql, NULL, 0, err, errlen);
  if (rc == 0 && pos > l->notified) l->notified = pos;
  if (rc && jobs) atomic_store(&l->jobs_pending, true); /* again once reconnected */
  deliver(l, c);
  return rc;
}

/* Serves c until it fails (-1) or the store closes (-2). */
static int serve(es_listen *l, PGconn *c, char *err, size_t errlen) {
  for (;;) {
    int rc = announce(l, c, err, errlen);
    if (rc) return rc;
    int r = wait_fd(l, PQsocket(c), POLLIN, -1);
    if (r < 0) return -2;
    if (r != 1) continue; /* poked: announce */
    if (!PQconsumeInput(c) || PQstatus(c) != CONNECTION_OK) {
      snprintf(err, errlen, "%s", PQerrorMessage(c));
      return -1;
    }
    deliver(l, c);
  }
}

static void *listen_main(void *arg) {
  es_listen *l = arg;
  PGconn *c = NULL;
  int64_t backoff = LISTEN_BACKOFF_MIN_MS;
  bool ever_up = false, warned = false;
  double down_since = now_s();
  char err[512] = "";
  while (!atomic_load(&l->stop)) {
    c = open_listen(l, err, sizeof err);
    if (!c) {
      if (atomic_load(&l->stop)) break;
      if (!warned) /* once per outage */
        keel_log_warn(NULL, "event store: the LISTEN connection is down; waiting processes poll",
                      KEEL_STR("channel", l->channel), KEEL_STR("error", err));
      warned = true;
      wait_fd(l, -1, 0, (int)backoff);
      backoff = backoff * 2 > LISTEN_BACKOFF_MAX_MS ? LISTEN_BACKOFF_MAX_MS : backoff * 2;
      continue;
    }
    if (ever_up) {
      if (l->c_reconnects) keel_counter_inc(l->c_reconnects);
      keel_log_info(NULL, "event store: the LISTEN connection is back",
                    KEEL_STR("channel", l->channel),
                    KEEL_INT("down_ms", (int64_t)((now_s() - down_since) * 1e3)));
    } else {
      keel_log_info(NULL, "event store: listening for appends", KEEL_STR("channel", l->channel));
    }
    ever_up = true;
    warned = false;
    backoff = LISTEN_BACKOFF_MIN_MS;
    set_up(l, true);
    /* what was appended before LISTEN took effect was not announced here */
    keel__es_notify_wake(l->es, INT64_MAX, true);
    int rc = serve(l, c, err, sizeof err);
    set_up(l, false);
    PQfinish(c);
    c = NULL;
    if (rc == -2) break;
    down_since = now_s();
    keel_log_warn(NULL, "event store: the LISTEN connection is down; waiting processes poll",
                  KEEL_STR("channel", l->channel), KEEL_STR("error", err));
    warned = true;
  }
  return NULL;
}

/* ---- start, kick, stop ----------------------------------------------------------------- */

static int register_metrics(es_listen *l, keel_metrics *r) {
  keel_metric_family *f;
  int rc = keel_metrics_gauge(r, "es_listen_up",
                              "1 while the event store's LISTEN connection (PostgreSQL) is up.",
                              NULL, 0, &f);
  if (rc == 0) rc = keel_gauge_get(f, NULL, &l->g_up);
  if (rc == 0)
    rc = keel_metrics_counter(r, "es_listen_reconnects_total",
                              "Times the event store's LISTEN connection was re-established "
                              "after it dropped.",
                              NULL, 0, &f);
  if (rc == 0) rc = keel_counter_get(f, NULL, &l->c_reconnects);
  return rc;
}

int keel__es_listen_start(keel_es *es, keel_metrics *metrics, es_listen **out) {
  *out = NULL;
  es_listen *l = calloc(1, sizeof *l);
  if (!l) return KEEL_ENOMEM;
  l->es = es;
  l->wake[0] = l->wake[1] = -1;
  pthread_mutex_init(&l->hook_mu, NULL);
  if (!(l->url = strdup(es->pg->session_url)) || pipe2(l->wake, O_NONBLOCK | O_CLOEXEC) != 0) {
    keel__es_listen_stop(l);
    return KEEL_ENOMEM;
  }
  if (metrics) {
    int rc = register_metrics(l, metrics);
    if (rc == KEEL_EEXIST) { /* a second store in this registry */
      l->g_up = NULL;
      l->c_reconnects = NULL;
    } else if (rc) {
      keel__es_listen_stop(l);
      return rc;
    }
  }
  if (l->g_up) keel_gauge_set(l->g_up, 0);
  /* The connection is made by the thread, so that open does not wait for
   * a second connection (until LISTEN is up, waiters poll). */
  if (pthread_create(&l->thread, NULL, listen_main, l) != 0) {
    keel__es_listen_stop(l);
    return KEEL_EIO;
  }
  pthread_setname_np(l->thread, "keel-es-listen");
  l->started = true;
  *out = l;
  return 0;
}

void keel__es_listen_kick(es_listen *l, int64_t position) {
  int64_t cur = atomic_load(&l->to_notify);
  while (cur < position && !atomic_compare_exchange_weak(&l->to_notify, &cur, position)) {
  }
  if (!atomic_exchange(&l->kicked, true)) {
    ssize_t n = write(l->wake[1], "k", 1); /* a full pipe is already a poke */
    (void)n;
  }
}

void keel__es_listen_jobs_kick(es_listen *l) {
  atomic_store(&l->jobs_pending, true);
  if (!atomic_exchange(&l->kicked, true)) {
    ssize_t n = write(l->wake[1], "k", 1); /* a full pipe is already a poke */
    (void)n;
  }
}

int keel__es_listen_jobs_hook_add(es_listen *l, void (*fn)(void *ud, const char *payload),
                                  void *ud) {
  pthread_mutex_lock(&l->hook_mu);
  int rc = 0;
  if (l->nhooks == l->caphooks) {
    size_t cap = l->caphooks ? 2 * l->caphooks : 2;
    struct jobs_hook *h = realloc(l->hooks, cap * sizeof *h);
    if (h) {
      l->hooks = h;
      l->caphooks = cap;
    } else {
      rc = KEEL_ENOMEM;
    }
  }
  if (rc == 0) l->hooks[l->nhooks++] = (struct jobs_hook){fn, ud};
  pthread_mutex_unlock(&l->hook_mu);
  return rc;
}

void keel__es_listen_jobs_hook_remove(es_listen *l, void (*fn)(void *ud, const char *payload),
                                      void *ud) {
  pthread_mutex_lock(&l->hook_mu);
  for (size_t i = 0; i < l->nhooks; i++) {
    if (l->hooks[i].fn != fn || l->hooks[i].ud != ud) continue;
    l->hooks[i] = l->hooks[--l->nhooks];
    break;
  }
  pthread_mutex_unlock(&l->hook_mu);
}

bool keel__es_listen_up(es_listen *l) {
  return l && atomic_load(&l->up);
}

void keel__es_listen_stop(es_listen *l) {
  if (!l) return;
  if (l->started) {
    atomic_store(&l->stop, true);
    ssize_t n = write(l->wake[1], "s", 1);
    (void)n;
    pthread_join(l->thread, NULL);
  }
  if (l->wake[0] >= 0) close(l->wake[0]);
  if (l->wake[1] >= 0) close(l->wake[1]);
  if (l->g_up) keel_gauge_set(l->g_up, 0);
  pthread_mutex_destroy(&l->hook_mu);
  free(l->hooks);
  free(l->url);
  free(l);
}
