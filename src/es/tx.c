/* tx.c - the service's own SQL in the store's database: statements inside a
 * keel_es_transact (after its appends, before its commit), read-only
 * queries outside, and their results.
 *
 * One SQL text for both backends: parameters are $1..$n. PostgreSQL takes
 * them as they are; SQLite reads "$1" as a parameter named "$1", so each is
 * bound by its name (a statement may use them in any order, or twice).
 *
 * The rules both backends keep alike:
 *   - one statement per call (SQLite would silently ignore the rest);
 *   - no transaction control (BEGIN, COMMIT, ROLLBACK, SAVEPOINT, ...):
 *     the transaction is keel's, and on SQLite it is the writer's whole
 *     group commit, which a stray COMMIT would split;
 *   - the first failed statement dooms the transaction, as PostgreSQL does
 *     by itself: later statements answer KEEL_ESTATE and it is rolled back.
 * On SQLite an authorizer also refuses, inside a transaction, ATTACH,
 * DETACH, pragmas that set something, and writes to keel's own tables (the
 * events' invariants are the writer's); on PostgreSQL the events table's
 * trigger refuses updates and deletes, and the rest is documented.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "es/es_internal.h"
#include "keel/error.h"
#include "keel/log.h"
#include "keel/process.h"

keel_es_backend_kind keel_es_backend(const keel_es *es) {
  return es && es->kind == ES_PG ? KEEL_ES_POSTGRESQL : KEEL_ES_SQLITE;
}

/* ---- results ---------------------------------------------------------------------- */

/* The texts of a result in one buffer (offsets while it grows; NULL cells
 * are SIZE_MAX), turned into pointers once complete. */
typedef struct rows_build {
  char *buf;
  size_t len, cap;
  size_t *off;
  size_t n, capn;
  bool oom;
} rows_build;

static void rb_add(rows_build *b, const char *s, size_t len) {
  if (b->oom) return;
  if (b->n == b->capn) {
    size_t cap = b->capn ? b->capn * 2 : 64;
    size_t *o = realloc(b->off, cap * sizeof *o);
    if (!o) {
      b->oom = true;
      return;
    }
    b->off = o;
    b->capn = cap;
  }
  if (!s) {
    b->off[b->n++] = SIZE_MAX;
    return;
  }
  if (b->len + len + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + len + 1)
      cap *= 2;
    char *p = realloc(b->buf, cap);
    if (!p) {
      b->oom = true;
      return;
    }
    b->buf = p;
    b->cap = cap;
  }
  memcpy(b->buf + b->len, s, len);
  b->buf[b->len + len] = 0;
  b->off[b->n++] = b->len;
  b->len += len + 1;
}

/* The layout behind rows->priv_: the pointers (names, then cells), then
 * the texts they point into. */
static int rb_finish(rows_build *b, size_t ncols, keel_es_rows *rows) {
  if (b->oom) {
    free(b->buf);
    free(b->off);
    return KEEL_ENOMEM;
  }
  size_t bytes = b->n * sizeof(char *) + b->len;
  char **ptrs = malloc(bytes ? bytes : 1);
  if (!ptrs) {
    free(b->buf);
    free(b->off);
    return KEEL_ENOMEM;
  }
  char *text = (char *)(ptrs + b->n);
  if (b->len) memcpy(text, b->buf, b->len);
  for (size_t i = 0; i < b->n; i++)
    ptrs[i] = b->off[i] == SIZE_MAX ? NULL : text + b->off[i];
  free(b->buf);
  free(b->off);
  rows->priv_ = ptrs;
  rows->ncols = ncols;
  rows->names = (const char *const *)ptrs;
  rows->cells = (const char *const *)(ptrs + ncols);
  rows->nrows = ncols ? (b->n - ncols) / ncols : 0;
  return 0;
}

const char *keel_es_rows_get(const keel_es_rows *rows, size_t row, size_t col) {
  if (!rows || row >= rows->nrows || col >= rows->ncols) return NULL;
  return rows->cells[row * rows->ncols + col];
}

void keel_es_rows_free(keel_es_rows *rows) {
  if (!rows) return;
  free(rows->priv_);
  memset(rows, 0, sizeof *rows);
}

/* ---- the rules ---------------------------------------------------------------------- */

static void set_error(keel_es_tx *tx, int rc, const char *msg) {
  if (!tx) return;
  if (!tx->failed) tx->failed = rc;
  snprintf(tx->err, sizeof tx->err, "%s", msg ? msg : "");
}

/* The statement's first word, skipping blanks and comments, is transaction
 * control. */
static bool is_tx_control(const char *sql) {
  const char *p = sql;
  for (;;) {
    while (isspace((unsigned char)*p))
      p++;
    if (p[0] == '-' && p[1] == '-') {
      while (*p && *p != '\n')
        p++;
    } else if (p[0] == '/' && p[1] == '*') {
      const char *e = strstr(p + 2, "*/");
      p = e ? e + 2 : p + strlen(p);
    } else {
      break;
    }
  }
  static const char *const words[] = {"BEGIN",   "COMMIT", "ROLLBACK", "SAVEPOINT",
                                      "RELEASE", "END",    "START",    "ABORT",
                                      "PREPARE", "VACUUM", "ATTACH",   "DETACH"};
  size_t n = 0;
  while (isalpha((unsigned char)p[n]))
    n++;
  for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
    if (strlen(words[i]) == n && strncasecmp(p, words[i], n) == 0) return true;
  return false;
}

/* ---- SQLite --------------------------------------------------------------------------- */

static bool keel_table(const char *t) {
  static const char *const own[] = {"events", "streams", "es_control", "snapshots"};
  if (!t) return false;
  if (strncmp(t, "keel_", 5) == 0) return true;
  for (size_t i = 0; i < sizeof own / sizeof own[0]; i++)
    if (strcasecmp(t, own[i]) == 0) return true;
  return false;
}

/* The authorizer is installed on the writer's connection once and for all
 * (keel__es_tx_authorizer): sqlite3_set_authorizer expires every prepared
 * statement of the connection, so setting it around each statement, as
 * this file once did, re-prepared the writer's own statements too and ruled
 * out keeping any. It judges the statement being prepared by the
 * transaction the writer runs it for (es->wtx: NULL for the writer's own
 * statements, which may do anything), and SQLite also calls it when it
 * re-prepares a kept statement after a schema change: a kept statement runs
 * only in a transaction of the mode it was prepared for (the cache's key),
 * so it is judged again by the same rules. */
static int authorize(void *ud, int action, const char *a, const char *b, const char *db,
                     const char *trigger) {
  const keel_es *es = ud;
  const keel_es_tx *tx = es->wtx;
  (void)db;
  if (!tx) return SQLITE_OK;     /* the writer's own statements */
  if (trigger) return SQLITE_OK; /* keel's own triggers, reached by an allowed statement */
  switch (action) {
  case SQLITE_TRANSACTION:
  case SQLITE_SAVEPOINT:
  case SQLITE_ATTACH:
  case SQLITE_DETACH: return SQLITE_DENY;
  case SQLITE_PRAGMA: return b ? SQLITE_DENY : SQLITE_OK; /* pragma x = y sets x */
  case SQLITE_INSERT:
  case SQLITE_UPDATE:
  case SQLITE_DELETE:
  case SQLITE_DROP_TABLE:
  case SQLITE_ALTER_TABLE: return keel_table(a) && !tx->internal ? SQLITE_DENY : SQLITE_OK;
  default: return SQLITE_OK;
  }
}

int keel__es_tx_authorizer(keel_es *es) {
  int src = sqlite3_set_authorizer(es->wdb, authorize, es);
  return src == SQLITE_OK ? 0 : keel__es_sqlite_error(es->wdb, src, "setting the authorizer");
}

/* ---- the statement cache ---------------------------------------------------------------- */

/* The writer's statements of keel_es_tx_exec, kept prepared: keel's jobs
 * and subscriptions run a handful of texts thousands of times, and
 * preparing one costs more than running it (19 % of the writer's time in
 * the jobs benchmark before this cache, docs/decisions/0031). Keyed by the
 * text and the transaction's mode (internal or the service's): the
 * authorizer decided at preparation under that mode, so a statement refused
 * to a service is never found in the cache by a service's transaction
 * because keel ran the same text. Least recently used goes first; a
 * statement whose run failed is dropped rather than trusted again. */
enum { STMT_CACHE_SIZE = 64 };

typedef struct es_stmt {
  char *sql; /* NULL: a free entry */
  uint64_t hash, used;
  bool internal;
  sqlite3_stmt *st;
} es_stmt;

struct es_stmt_cache {
  es_stmt e[STMT_CACHE_SIZE];
  uint64_t tick;
};

uint64_t keel__es_text_hash(const char *s) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

static es_stmt *cache_find(keel_es *es, const char *sql, uint64_t hash, bool internal) {
  struct es_stmt_cache *c = es->stc;
  if (!c) return NULL;
  for (size_t i = 0; i < STMT_CACHE_SIZE; i++) {
    es_stmt *e = &c->e[i];
    if (e->sql && e->hash == hash && e->internal == internal && strcmp(e->sql, sql) == 0) {
      e->used = ++c->tick;
      return e;
    }
  }
  return NULL;
}

static void cache_drop(es_stmt *e) {
  sqlite3_finalize(e->st);
  free(e->sql);
  memset(e, 0, sizeof *e);
}

/* Keeps st (NULL without memory: the caller finalizes st itself). */
static es_stmt *cache_put(keel_es *es, const char *sql, uint64_t hash, bool internal,
                          sqlite3_stmt *st) {
  if (!es->stc && !(es->stc = calloc(1, sizeof *es->stc))) return NULL;
  struct es_stmt_cache *c = es->stc;
  es_stmt *victim = &c->e[0];
  for (size_t i = 0; i < STMT_CACHE_SIZE && victim->sql; i++)
    if (!c->e[i].sql || c->e[i].used < victim->used) victim = &c->e[i];
  char *copy = strdup(sql);
  if (!copy) return NULL;
  if (victim->sql) cache_drop(victim);
  *victim = (es_stmt){.sql = copy, .hash = hash, .used = ++c->tick, .internal = internal, .st = st};
  return victim;
}

void keel__es_tx_cache_free(keel_es *es) {
  if (!es->stc) return;
  for (size_t i = 0; i < STMT_CACHE_SIZE; i++)
    if (es->stc->e[i].sql) cache_drop(&es->stc->e[i]);
  free(es->stc);
  es->stc = NULL;
}

/* ---- running a statement ---------------------------------------------------------------- */

static int sqlite_rc(sqlite3 *db, int src) {
  int ext = sqlite3_extended_errcode(db);
  if (ext == SQLITE_CONSTRAINT_UNIQUE || ext == SQLITE_CONSTRAINT_PRIMARYKEY) return KEEL_EEXIST;
  if (src == SQLITE_NOMEM) return KEEL_ENOMEM;
  return KEEL_EIO;
}

static int sq_fail(keel_es_tx *tx, sqlite3 *db, int rc, const char *msg) {
  keel_log_error(NULL, "event store: SQL statement failed", KEEL_STR("error", msg),
                 KEEL_INT("code", sqlite3_extended_errcode(db)));
  set_error(tx, rc, msg);
  return rc;
}

/* Binds params to their $i names (or, for a statement written with plain
 * ?, by position). */
static int sq_bind(sqlite3_stmt *st, const char *const *params, size_t n) {
  if ((size_t)sqlite3_bind_parameter_count(st) != n) return KEEL_EINVAL;
  for (size_t i = 0; i < n; i++) {
    char name[24];
    snprintf(name, sizeof name, "$%zu", i + 1);
    int idx = sqlite3_bind_parameter_index(st, name);
    if (idx == 0) {
      if (sqlite3_bind_parameter_name(st, (int)i + 1) != NULL) return KEEL_EINVAL;
      idx = (int)i + 1;
    }
    int src = params[i] ? sqlite3_bind_text(st, idx, params[i], -1, SQLITE_STATIC)
                        : sqlite3_bind_null(st, idx);
    if (src != SQLITE_OK) return KEEL_EINVAL;
  }
  return 0;
}

/* Prepares sql (one statement; a write only outside readonly) into *out.
 * In a transaction the writer's authorizer judges it by tx's mode. */
static int sq_prepare(keel_es_tx *tx, sqlite3 *db, bool readonly, const char *sql,
                      sqlite3_stmt **out) {
  sqlite3_stmt *st = NULL;
  const char *tail = NULL;
  if (!readonly) tx->es->wtx = tx;
  int src = sqlite3_prepare_v3(db, sql, -1, readonly ? 0 : SQLITE_PREPARE_PERSISTENT, &st, &tail);
  if (src != SQLITE_OK) {
    int rc = src == SQLITE_NOMEM ? KEEL_ENOMEM : KEEL_EINVAL;
    return sq_fail(tx, db, rc, sqlite3_errmsg(db));
  }
  if (!st) return sq_fail(tx, db, KEEL_EINVAL, "no statement");
  while (tail && isspace((unsigned char)*tail))
    tail++;
  int rc = 0;
  if (tail && *tail)
    rc = sq_fail(tx, db, KEEL_EINVAL, "more than one statement");
  else if (readonly && !sqlite3_stmt_readonly(st))
    rc = sq_fail(tx, db, KEEL_EINVAL, "a write outside keel_es_transact");
  if (rc) {
    sqlite3_finalize(st);
    return rc;
  }
  *out = st;
  return 0;
}

/* Runs a prepared statement, its rows into *rows (when given). */
static int sq_run(keel_es_tx *tx, sqlite3 *db, sqlite3_stmt *st, keel_es_rows *rows) {
  size_t ncols = (size_t)sqlite3_column_count(st);
  rows_build b = {0};
  for (size_t c = 0; c < ncols && rows; c++) {
    const char *name = sqlite3_column_name(st, (int)c);
    rb_add(&b, name ? name : "", name ? strlen(name) : 0);
  }
  int src, rc = 0;
  while ((src = sqlite3_step(st)) == SQLITE_ROW) {
    for (size_t c = 0; c < ncols && rows; c++) {
      if (sqlite3_column_type(st, (int)c) == SQLITE_NULL) {
        rb_add(&b, NULL, 0);
      } else {
        const char *v = (const char *)sqlite3_column_text(st, (int)c);
        rb_add(&b, v ? v : "", (size_t)sqlite3_column_bytes(st, (int)c));
      }
    }
  }
  if (src != SQLITE_DONE) {
    rc = sq_fail(tx, db, sqlite_rc(db, src), sqlite3_errmsg(db));
  } else if (rows) {
    memset(rows, 0, sizeof *rows);
    rows->changed = sqlite3_stmt_readonly(st) ? 0 : sqlite3_changes64(db);
    rc = rb_finish(&b, ncols, rows);
    b.buf = NULL;
    b.off = NULL;
  }
  free(b.buf);
  free(b.off);
  return rc;
}

/* A statement: in a transaction (on the writer's connection) through the
 * cache; a read-only query (a reader's connection) prepared each time. */
static int sq_exec(keel_es_tx *tx, sqlite3 *db, bool readonly, const char *sql,
                   const char *const *params, size_t n, keel_es_rows *rows) {
  if (!readonly && (!tx || db != tx->es->wdb)) return KEEL_EINVAL; /* the authorizer is there */
  uint64_t hash = readonly ? 0 : keel__es_text_hash(sql);
  es_stmt *kept = readonly ? NULL : cache_find(tx->es, sql, hash, tx->internal);
  sqlite3_stmt *st = kept ? kept->st : NULL;
  int rc = 0;
  if (!kept) {
    rc = sq_prepare(tx, db, readonly, sql, &st);
    if (!readonly) tx->es->wtx = NULL;
    if (rc) return rc;
    if (!readonly) kept = cache_put(tx->es, sql, hash, tx->internal, st);
  }
  if (sq_bind(st, params, n) != 0)
    rc = sq_fail(tx, db, KEEL_EINVAL, "parameters do not match the statement's $1..$n");
  /* a kept statement re-prepared after a schema change is judged by its
   * own transaction's mode */
  if (!readonly) tx->es->wtx = tx;
  if (rc == 0) rc = sq_run(tx, db, st, rows);
  if (!readonly) tx->es->wtx = NULL;
  if (!kept) {
    sqlite3_finalize(st);
  } else if (rc == KEEL_EIO) {
    cache_drop(kept); /* SQLite failed running it (a schema gone, ...): prepare afresh next time */
  } else {
    sqlite3_reset(st);
    sqlite3_clear_bindings(st); /* the bound texts were the caller's */
  }
  return rc;
}

/* ---- PostgreSQL ---------------------------------------------------------------------- */

static int pg_rows(PGresult *res, keel_es_rows *rows);

static int pg_exec(keel_es *es, keel_es_tx *tx, es_pgconn *c, const char *sql,
                   const char *const *params, size_t n, keel_es_rows *rows) {
  c->sqlstate[0] = c->errmsg[0] = 0;
  PGresult *res = NULL;
  c->service = !tx || !tx->internal; /* keel_es_query: tx NULL */
  int rc = keel__es_pg_query(es->pg, c, "a service's statement", sql, (int)n, params, &res);
  c->service = false;
  if (rc) {
    /* syntax errors and undefined names (class 42), and parameters that do
     * not match the statement (08P01 at bind), are the caller's */
    if (rc == KEEL_EIO && (strncmp(c->sqlstate, "42", 2) == 0 || strcmp(c->sqlstate, "08P01") == 0))
      rc = KEEL_EINVAL;
    set_error(tx, rc, c->errmsg[0] ? c->errmsg : "the connection failed");
    return rc;
  }
  if (rows) rc = pg_rows(res, rows);
  PQclear(res);
  return rc;
}

/* A PostgreSQL result as keel_es_rows (texts copied; 0 or KEEL_ENOMEM). */
static int pg_rows(PGresult *res, keel_es_rows *rows) {
  memset(rows, 0, sizeof *rows);
  size_t nr = (size_t)PQntuples(res), nc = (size_t)PQnfields(res);
  rows_build b = {0};
  for (size_t k = 0; k < nc; k++) {
    const char *name = PQfname(res, (int)k);
    rb_add(&b, name, strlen(name));
  }
  for (size_t r = 0; r < nr; r++)
    for (size_t k = 0; k < nc; k++)
      rb_add(&b, PQgetisnull(res, (int)r, (int)k) ? NULL : PQgetvalue(res, (int)r, (int)k),
             (size_t)PQgetlength(res, (int)r, (int)k));
  /* PQcmdTuples counts a SELECT's rows too; SQLite's changes do not */
  const char *cmd = PQcmdStatus(res);
  if (strncmp(cmd, "INSERT", 6) == 0 || strncmp(cmd, "UPDATE", 6) == 0 ||
      strncmp(cmd, "DELETE", 6) == 0 || strncmp(cmd, "MERGE", 5) == 0)
    rows->changed = strtoll(PQcmdTuples(res), NULL, 10);
  return rb_finish(&b, nc, rows);
}

/* ---- one statement, a lazy transaction of its own ------------------------------------ */

typedef struct exec1 {
  const char *sql;
  const char *const *params;
  size_t n;
  keel_es_rows *rows;
} exec1;

static int exec1_fn(keel_es_tx *tx, void *arg) {
  exec1 *e = arg;
  return keel_es_tx_exec(tx, e->sql, e->params, e->n, e->rows);
}

/* PostgreSQL: BEGIN, the lazy level, the statement and COMMIT go in one
 * pipeline, one round trip where a transaction took three (BEGIN, the
 * statement, COMMIT) */
static int pg_exec_lazy(keel_es *es, const char *sql, const char *const *params, size_t n,
                        keel_es_rows *rows) {
  int held = keel_hold_exits(true); /* until the connection is back in the pool */
  es_pgconn *c = NULL;
  int rc = keel__es_pg_acquire(es, &c);
  if (rc == 0) {
    const es_pgstmt st[] = {{"BEGIN", 0, NULL},
                            {"SET LOCAL synchronous_commit = off", 0, NULL},
                            {sql, (int)n, params},
                            {"COMMIT", 0, NULL}};
    PGresult *res = NULL;
    rc = keel__es_pg_pipeline(es->pg, c, "keel's statement", 4, st, 2, &res);
    if (rc == 0 && rows) rc = pg_rows(res, rows);
    PQclear(res);
    if (rc != 0 && !c->broken && PQtransactionStatus(c->conn) != PQTRANS_IDLE)
      keel__es_pg_query(es->pg, c, "rolling back", "ROLLBACK", -1, NULL, NULL);
    keel__es_pg_release(es, c);
  }
  if (held == 0) keel_hold_exits(false);
  return rc;
}

/* PostgreSQL: the statement alone, its own implicit transaction, durable
 * as any commit: one round trip where BEGIN and COMMIT made three */
static int pg_exec_once(keel_es *es, const char *sql, const char *const *params, size_t n,
                        keel_es_rows *rows) {
  int held = keel_hold_exits(true); /* until the connection is back in the pool */
  es_pgconn *c = NULL;
  int rc = keel__es_pg_acquire(es, &c);
  if (rc == 0) {
    PGresult *res = NULL;
    rc = keel__es_pg_query(es->pg, c, "keel's statement", sql, (int)n, params, &res);
    if (rc == 0 && rows) rc = pg_rows(res, rows);
    PQclear(res);
    keel__es_pg_release(es, c);
  }
  if (held == 0) keel_hold_exits(false);
  return rc;
}

/* keel__es_exec and keel__es_exec_lazy: one statement, its own transaction */
static int exec_one(keel_es *es, bool lazy, const char *sql, const char *const *params, size_t n,
                    keel_es_rows *rows) {
  if (rows) memset(rows, 0, sizeof *rows);
  if (!es || !sql || (n && !params)) return KEEL_EINVAL;
  if (keel_es_backend(es) == KEEL_ES_POSTGRESQL)
    return lazy ? pg_exec_lazy(es, sql, params, n, rows) : pg_exec_once(es, sql, params, n, rows);
  exec1 e = {.sql = sql, .params = params, .n = n, .rows = rows};
  return lazy ? keel__es_transact_lazy(es, exec1_fn, &e)
              : keel__es_transact_internal(es, exec1_fn, &e);
}

int keel__es_exec(keel_es *es, const char *sql, const char *const *params, size_t n,
                  keel_es_rows *rows) {
  return exec_one(es, false, sql, params, n, rows);
}

int keel__es_exec_lazy(keel_es *es, const char *sql, const char *const *params, size_t n,
                       keel_es_rows *rows) {
  return exec_one(es, true, sql, params, n, rows);
}

/* ---- statements in a transaction --------------------------------------------------- */

int keel_es_tx_exec(keel_es_tx *tx, const char *sql, const char *const *params, size_t nparams,
                    keel_es_rows *rows) {
  if (rows) memset(rows, 0, sizeof *rows);
  if (!tx || !sql || (nparams && !params)) return KEEL_EINVAL;
  if (tx->failed) return KEEL_ESTATE;
  if (is_tx_control(sql)) {
    set_error(tx, KEEL_EINVAL, "transaction control belongs to keel_es_transact");
    return KEEL_EINVAL;
  }
  if (tx->db) return sq_exec(tx, tx->db, false, sql, params, nparams, rows);
  return pg_exec(tx->es, tx, tx->pc, sql, params, nparams, rows);
}

int keel_es_tx_lock(keel_es_tx *tx, const char *key) {
  if (!tx || !key || !*key) return KEEL_EINVAL;
  if (tx->failed) return KEEL_ESTATE;
  if (tx->db) return 0;
  /* 1801808237: the service's keys (the store's own migrations use 1801808235) */
  return pg_exec(
      tx->es, tx, tx->pc,
      "SELECT pg_advisory_xact_lock(1801808237, hashtext(current_schema() || '/' || $1))",
      (const char *[]){key}, 1, NULL);
}

const char *keel_es_tx_error(const keel_es_tx *tx) {
  return tx ? tx->err : "";
}

bool keel__es_tx_wanted(const es_req *r, const keel_es_append_result *results) {
  if (!r->tx_fn) return false;
  if (r->nstreams == 0) return true;
  for (size_t k = 0; k < r->nstreams; k++)
    if (!results[k].duplicate) return true;
  return false;
}

int keel__es_tx_run(keel_es *es, const es_req *r, sqlite3 *db, es_pgconn *pc) {
  keel_es_tx tx = {.es = es,
                   .db = db,
                   .pc = pc,
                   .internal = r->tx_internal,
                   .trace = r->trace.valid ? &r->trace : NULL};
  int rc = r->tx_fn(&tx, r->tx_arg);
  return rc ? rc : tx.failed;
}

/* ---- queries outside a transaction -------------------------------------------------- */

typedef struct query_job {
  const char *sql;
  const char *const *params;
  size_t n;
  keel_es_rows *rows;
  int rc;
} query_job;

static void query_on_reader(sqlite3 *db, void *arg) {
  query_job *j = arg;
  j->rc = sq_exec(NULL, db, true, j->sql, j->params, j->n, j->rows);
}

int keel_es_query(keel_es *es, const char *sql, const char *const *params, size_t nparams,
                  keel_es_rows *rows) {
  if (rows) memset(rows, 0, sizeof *rows);
  if (!es || !sql || (nparams && !params)) return KEEL_EINVAL;
  if (is_tx_control(sql)) return KEEL_EINVAL;
  if (keel_self() == 0) return KEEL_ENOTPROC;
  keel_es_rows tmp = {0};
  query_job j = {.sql = sql, .params = params, .n = nparams, .rows = rows ? rows : &tmp};
  if (es->kind != ES_PG) {
    int rc = keel__es_with_reader(es, query_on_reader, &j);
    if (!rows) keel_es_rows_free(&tmp);
    return rc ? rc : j.rc;
  }
  /* exits wait until the connection is back in the pool */
  int held = keel_hold_exits(true);
  es_pgconn *c = NULL;
  int rc = keel__es_pg_acquire(es, &c);
  if (rc == 0) {
    rc = pg_exec(es, NULL, c, sql, params, nparams, j.rows);
    keel__es_pg_release(es, c);
  }
  if (!rows) keel_es_rows_free(&tmp);
  if (held == 0) keel_hold_exits(false);
  return rc;
}
