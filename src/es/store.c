/* store.c - opening and closing the SQLite event store, and its readers.
 *
 * keel_es_open turns a URL into a file ("sqlite:PATH", default
 * sqlite:./data/keel.db, the folder made), opens the writer's connection on
 * the blocking pool (file I/O never runs on a scheduler thread), creates or
 * migrates the schema (schema.c), prepares the writer's statements and
 * starts the writer thread (writer.c), which owns that connection from then
 * on. Every connection gets the same pragmas: WAL (readers never block the
 * writer nor each other), synchronous FULL by default (a commit is on disk
 * when it returns) or NORMAL on request, foreign keys off, a busy timeout.
 * Setting WAL is retried while busy (set_wal): concurrent first opens of a
 * new file must all succeed.
 *
 * Reads run on the blocking pool with a read connection checked out of a
 * small mutex-guarded pool for the call and put back after: one per pool
 * thread at most, opened lazily, all closed by keel_es_close (a pool of
 * connections rather than thread-locals, because the blocking pool's threads
 * outlive the store and thread-locals could not be closed from here). A
 * private in-memory store (":memory:", tests) cannot share its database with
 * another connection, so its reads run on the writer's connection instead,
 * queued behind the writes like any request.
 *
 * A PostgreSQL URL ("postgresql://", "postgres://") opens the other backend
 * instead (pg_pool.c): no writer thread, no SQLite connection. URLs of any
 * other scheme are refused (KEEL_EINVAL, logged).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "es/es_internal.h"
#include "keel/error.h"
#include "keel/io.h"
#include "keel/log.h"
#include "keel/metrics.h"

/* How long a connection waits for a lock: busy_timeout, and set_wal's retries. */
enum { ES_BUSY_TIMEOUT_MS = 10000 };

double keel__es_now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int64_t keel__es_unix_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int keel__es_sqlite_error(sqlite3 *db, int src, const char *what) {
  keel_log_error(NULL, "event store: SQLite error", KEEL_STR("during", what),
                 KEEL_INT("sqlite_code", src),
                 KEEL_STR("sqlite_message", db ? sqlite3_errmsg(db) : sqlite3_errstr(src)));
  return src == SQLITE_NOMEM ? KEEL_ENOMEM : KEEL_EIO;
}

/* mkdir -p of path's folder. */
static int make_parent(const char *path) {
  char *d = strdup(path);
  if (!d) return KEEL_ENOMEM;
  char *slash = strrchr(d, '/');
  int rc = 0;
  if (slash && slash != d) {
    *slash = 0;
    for (char *p = d + 1; rc == 0; p++) {
      if (*p != '/' && *p != 0) continue;
      char c = *p;
      *p = 0;
      if (mkdir(d, 0755) != 0 && errno != EEXIST) rc = KEEL_EIO;
      *p = c;
      if (c == 0) break;
    }
  }
  if (rc)
    keel_log_error(NULL, "event store: cannot create the database's folder", KEEL_STR("path", d),
                   KEEL_STR("error", strerror(errno)));
  free(d);
  return rc;
}

/* The file named by url ("sqlite:PATH"; NULL: $DATABASE_URL, else the
 * default) into *path (malloc'd). */
static bool is_pg_url(const char *url) {
  return strncmp(url, "postgresql://", 13) == 0 || strncmp(url, "postgres://", 11) == 0;
}

static const char *effective_url(const char *url) {
  if (!url || !*url) url = getenv("DATABASE_URL");
  if (!url || !*url) url = "sqlite:./data/keel.db";
  return url;
}

static int parse_url(const char *url, char **path, bool *memory) {
  url = effective_url(url);
  if (strncmp(url, "sqlite:", 7) != 0) {
    keel_log_error(NULL, "event store: unknown database URL (want sqlite:PATH or postgresql://...)",
                   KEEL_STR("url", url));
    return KEEL_EINVAL;
  }
  const char *p = url + 7;
  if (strncmp(p, "//", 2) == 0) p += 2; /* sqlite:///abs/path, sqlite://rel/path */
  if (!*p) return KEEL_EINVAL;
  *memory = strcmp(p, ":memory:") == 0;
  *path = strdup(p);
  return *path ? 0 : KEEL_ENOMEM;
}

/* Sets WAL on db. On a new file this takes an exclusive lock while holding a
 * shared one, and SQLite answers SQLITE_BUSY at once rather than call the
 * busy handler (a deadlock it will not wait on): concurrent first opens of
 * one file, in this process or others, would fail. So the pragma is retried,
 * its statement finalized between tries (the shared lock released), with a
 * backoff of 1 ms doubling to 50 ms, for at most the busy timeout. */
static int set_wal(sqlite3 *db) {
  double deadline = keel__es_now_s() + ES_BUSY_TIMEOUT_MS / 1000.0;
  long backoff_us = 1000;
  for (;;) {
    sqlite3_stmt *st = NULL;
    int src = sqlite3_prepare_v2(db, "PRAGMA journal_mode = WAL", -1, &st, NULL);
    if (src == SQLITE_OK) {
      src = sqlite3_step(st);
      if (src == SQLITE_ROW || src == SQLITE_DONE) src = SQLITE_OK;
    }
    sqlite3_finalize(st);
    if (src == SQLITE_OK) return 0;
    if ((src & 0xff) != SQLITE_BUSY && (src & 0xff) != SQLITE_LOCKED)
      return keel__es_sqlite_error(db, src, "setting the journal mode (WAL)");
    if (keel__es_now_s() >= deadline)
      return keel__es_sqlite_error(db, src, "setting the journal mode (WAL): still busy");
    struct timespec ts = {.tv_sec = 0, .tv_nsec = backoff_us * 1000};
    nanosleep(&ts, NULL);
    if (backoff_us < 50000) backoff_us *= 2;
  }
}

int keel__es_connect(keel_es *es, bool reader, sqlite3 **out) {
  sqlite3 *db = NULL;
  int src = sqlite3_open_v2(es->path, &db,
                            SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
  if (src != SQLITE_OK) {
    int rc = keel__es_sqlite_error(db, src, "opening the database");
    sqlite3_close(db);
    return rc;
  }
  sqlite3_busy_timeout(db, ES_BUSY_TIMEOUT_MS);
  if ((src = set_wal(db)) != 0) {
    sqlite3_close(db);
    return src;
  }
  char sql[256];
  snprintf(sql, sizeof sql, "PRAGMA synchronous = %s; PRAGMA foreign_keys = OFF;%s",
           es->sync == KEEL_ES_SYNC_NORMAL ? "NORMAL" : "FULL",
           reader ? " PRAGMA query_only = 1;" : "");
  src = sqlite3_exec(db, sql, NULL, NULL, NULL);
  if (src != SQLITE_OK) {
    int rc = keel__es_sqlite_error(db, src, "setting the connection's pragmas");
    sqlite3_close(db);
    return rc;
  }
  *out = db;
  return 0;
}

/* ---- readers -------------------------------------------------------------- */

typedef struct read_job {
  keel_es *es;
  void (*fn)(sqlite3 *, void *);
  void *arg;
  int rc;
} read_job;

static void read_on_pool(void *arg) {
  read_job *j = arg;
  keel_es *es = j->es;
  sqlite3 *db = NULL;
  pthread_mutex_lock(&es->rmu);
  if (es->nr > 0) db = es->rpool[--es->nr];
  pthread_mutex_unlock(&es->rmu);
  if (!db && (j->rc = keel__es_connect(es, true, &db)) != 0) return;
  j->fn(db, j->arg);
  pthread_mutex_lock(&es->rmu);
  if (es->nr == es->capr) {
    size_t cap = es->capr ? es->capr * 2 : 8;
    sqlite3 **v = realloc(es->rpool, cap * sizeof *v);
    if (v) es->rpool = v, es->capr = cap;
  }
  if (es->nr < es->capr) {
    es->rpool[es->nr++] = db;
    db = NULL;
  }
  pthread_mutex_unlock(&es->rmu);
  keel__es_close_reader(db); /* NULL when pooled */
}

int keel__es_with_reader(keel_es *es, void (*fn)(sqlite3 *db, void *arg), void *arg) {
  if (es->memory) {
    es_req *r = keel__es_req_new(ES_REQ_FN, NULL);
    if (!r) return KEEL_ENOMEM;
    r->fn = fn;
    r->fn_arg = arg;
    /* fn writes into the caller's memory: the caller must outlive it. */
    int held = keel_hold_exits(true);
    keel_msg_t *m = NULL;
    int rc = keel__es_submit(es, r, &m);
    if (rc == 0) rc = ((es_reply *)keel_msg_data(m))->rc;
    keel_msg_free(m);
    if (held == 0) keel_hold_exits(false);
    return rc;
  }
  read_job j = {.es = es, .fn = fn, .arg = arg};
  int rc = keel_blocking(read_on_pool, &j);
  return rc ? rc : j.rc;
}

/* ---- open and close ---------------------------------------------------------- */

static const double duration_buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                          0.05,   0.1,   0.25,   0.5,   1,    2.5};
static const double group_buckets[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};

/* Registers the es_* families; a registry that already has them (a second
 * store) shares them. */
static int register_metrics(keel_es *es, keel_metrics *r) {
  keel_metric_family *f;
  static const char *const result_label[] = {"result"};
  int rc = keel_metrics_counter(r, "es_appends_total",
                                "Event store appends, by result (ok, duplicate, conflict, error).",
                                result_label, 1, &f);
  if (rc) return rc;
  const char *v[1];
  v[0] = "ok";
  if ((rc = keel_counter_get(f, v, &es->m_ok))) return rc;
  v[0] = "duplicate";
  if ((rc = keel_counter_get(f, v, &es->m_duplicate))) return rc;
  v[0] = "conflict";
  if ((rc = keel_counter_get(f, v, &es->m_conflict))) return rc;
  v[0] = "error";
  if ((rc = keel_counter_get(f, v, &es->m_error))) return rc;
  if ((rc = keel_metrics_counter(r, "es_events_appended_total", "Events appended to the store.",
                                 NULL, 0, &f)) ||
      (rc = keel_counter_get(f, NULL, &es->m_events)))
    return rc;
  if ((rc = keel_metrics_histogram(
           r, "es_append_duration_seconds", "Time from an append's submission to its reply.", NULL,
           0, duration_buckets, sizeof duration_buckets / sizeof duration_buckets[0], &f)) ||
      (rc = keel_histogram_get(f, NULL, &es->m_duration)))
    return rc;
  if ((rc = keel_metrics_histogram(r, "es_group_commit_size",
                                   "Appends folded into one transaction (one commit, one fsync).",
                                   NULL, 0, group_buckets,
                                   sizeof group_buckets / sizeof group_buckets[0], &f)) ||
      (rc = keel_histogram_get(f, NULL, &es->m_group)))
    return rc;
  if ((rc = keel_metrics_counter(r, "es_reads_total", "Event store reads (every read call).", NULL,
                                 0, &f)) ||
      (rc = keel_counter_get(f, NULL, &es->m_reads)))
    return rc;
  return 0;
}

typedef struct open_job {
  keel_es *es;
  int rc, version;
} open_job;

static void open_on_pool(void *arg) {
  open_job *j = arg;
  keel_es *es = j->es;
  if (!es->memory && (j->rc = make_parent(es->path)) != 0) return;
  if ((j->rc = keel__es_connect(es, false, &es->wdb)) != 0) return;
  if ((j->rc = keel__es_migrate(es->wdb, &j->version)) != 0) return;
  j->rc = keel__es_writer_prepare(es);
}

static void close_on_pool(void *arg) {
  keel_es *es = arg;
  keel__es_writer_stop(es);
  for (size_t i = 0; i < es->nr; i++)
    keel__es_close_reader(es->rpool[i]);
  es->nr = 0;
}

static void es_free(keel_es *es) {
  keel__es_notify_free(es);
  keel__es_tail_free(es);
  pthread_mutex_destroy(&es->mu);
  pthread_cond_destroy(&es->cv);
  pthread_mutex_destroy(&es->rmu);
  pthread_mutex_destroy(&es->umu);
  keel__es_upcasters_free(es);
  free(es->rpool);
  free(es->path);
  free(es);
}

int keel_es_open(const keel_es_opts *o, keel_es **out) {
  static const keel_es_opts zero;
  if (!out) return KEEL_EINVAL;
  *out = NULL;
  if (!o) o = &zero;
  if (keel_self() == 0) return KEEL_ENOTPROC;
  keel_es *es = calloc(1, sizeof *es);
  if (!es) return KEEL_ENOMEM;
  pthread_mutex_init(&es->mu, NULL);
  pthread_cond_init(&es->cv, NULL);
  pthread_mutex_init(&es->rmu, NULL);
  pthread_mutex_init(&es->umu, NULL);
  if (keel__es_tail_open(es) != 0) {
    es_free(es);
    return KEEL_ENOMEM;
  }
  es->sync = o->sync == KEEL_ES_SYNC_NORMAL ? KEEL_ES_SYNC_NORMAL : KEEL_ES_SYNC_FULL;
  es->max_event_bytes = o->max_event_bytes ? o->max_event_bytes : (size_t)1 << 20;
  es->max_batch = o->max_batch ? o->max_batch : 10000;
  es->group_max_events = o->group_max_events ? o->group_max_events : 10000;
  const char *url = effective_url(o->url);
  if (is_pg_url(url)) es->kind = ES_PG;
  int rc = es->kind == ES_PG ? 0 : parse_url(url, &es->path, &es->memory);
  if (rc == 0 && o->metrics) rc = register_metrics(es, o->metrics);
  if (rc == KEEL_EEXIST) {
    keel_log_warn(NULL, "event store: es_* metrics already registered in this registry; "
                        "this store's are not exported");
    es->m_ok = es->m_duplicate = es->m_conflict = es->m_error = es->m_events = es->m_reads = NULL;
    es->m_duration = es->m_group = NULL;
    rc = 0;
  }
  if (rc) {
    es_free(es);
    return rc;
  }
  if (es->kind == ES_PG) {
    /* the session URL follows the URL: from the environment only when the
     * URL is (an explicit url with a stray $DATABASE_SESSION_URL must not
     * send the LISTEN connection to another database) */
    keel_es_opts po = *o;
    if ((!o->url || !*o->url) && (!po.session_url || !*po.session_url))
      po.session_url = getenv("DATABASE_SESSION_URL");
    if ((rc = keel__es_pg_open(es, url, &po)) != 0 || (rc = keel__es_notify_open(es, o)) != 0) {
      keel__es_notify_free(es);
      keel__es_pg_close(es);
      es_free(es);
      return rc;
    }
    *out = es;
    return 0;
  }
  open_job j = {.es = es};
  rc = keel_blocking(open_on_pool, &j);
  if (rc == 0) rc = j.rc;
  if (rc == 0) rc = keel__es_notify_open(es, o);
  if (rc == 0) rc = keel__es_writer_start(es);
  if (rc) {
    keel__es_writer_stop(es); /* finalizes and closes what open made */
    es_free(es);
    return rc;
  }
  keel_log_info(NULL, "event store opened", KEEL_STR("path", es->path),
                KEEL_STR("sync", es->sync == KEEL_ES_SYNC_NORMAL ? "normal" : "full"),
                KEEL_INT("schema_version", j.version), KEEL_STR("sqlite", sqlite3_libversion()));
  *out = es;
  return 0;
}

void keel_es_close(keel_es *es) {
  if (!es) return;
  keel__es_notify_close(es); /* waiting processes leave first */
  if (es->kind == ES_PG) {
    keel__es_pg_close(es);
    es_free(es);
    return;
  }
  if (keel_blocking(close_on_pool, es) != 0) close_on_pool(es); /* outside a process */
  es_free(es);
}
