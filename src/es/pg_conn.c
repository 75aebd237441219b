/* pg_conn.c - one PostgreSQL connection: opening it, and the query loop.
 *
 * Opening runs PQconnectdbParams on the blocking pool (name resolution and the TLS
 * handshake block inside libpq, so they never run on a scheduler thread),
 * sets the connection's statement_timeout, silences the server's notices
 * (CREATE ... IF NOT EXISTS sends them) and makes the socket non-blocking.
 *
 * Every query after that runs in the calling process with libpq's
 * asynchronous API: PQsendQueryParams (or PQsendQuery for the simple
 * multi-statement queries of transactions and migrations), PQflush until
 * the request is out, then PQconsumeInput / PQisBusy / PQgetResult until the
 * last result, the process waiting on the socket with keel_wait_fd between
 * steps: only that process waits, its scheduler runs the others. No thread
 * per connection.
 *
 * Named statements (decision 0041): on a connection with names on (none
 * when a session_url other than url says url is pooled, nor with
 * opts.no_prepare: es_pg.prepare, .prepare_session), keel's own statement
 * with parameters whose text this connection has seen before is prepared
 * under a name of its own, in the same round trip as its first run, and
 * from then on only bound and run: the server neither parses nor plans it
 * again (its plan cache picks a generic plan after five runs when that
 * costs no more). A text seen only once (a migration, a text built with
 * its values) takes no name; at most ES_PG_NAMED texts keep one per
 * connection, the least recently used deallocated (in the same round trip)
 * to make room. A name holds a random nonce drawn at connect, so no two
 * connections' names meet.
 *
 * The service's statements (keel_es_tx_exec, keel_es_query) always run
 * unnamed: a migration by another instance may change a SELECT *'s
 * columns, which a named statement's plan refuses (0A000). Names are off on
 * a connection whose backend pid, as the server says it, is not the one
 * the connection's start gave: a pooler or proxy answered the start
 * (PgBouncer in any mode, RDS Proxy), and the next call may reach another
 * server connection. Names that still do not match the server's (missing,
 * taken, another text's: a pooler that passes the pid on, a DEALLOCATE
 * ALL) turn names off for good, for the pool's connections (or the session
 * ones), logged once, and the call runs again unnamed when it began
 * outside a transaction and no COMMIT of it went through (nothing of it
 * stayed). A named statement whose result changed under it (0A000) fails
 * its call, and the next run of the text deallocates it and prepares the
 * text again under a new name (names are never reused).
 *
 * A wait that outlasts statement_timeout by ten seconds, or a socket error,
 * marks the connection broken: the pool closes it on release and opens a new
 * one when needed. Server errors are mapped to keel's codes: a unique
 * violation is KEEL_EEXIST (the callers expect it), a cancelled statement
 * (statement_timeout) KEEL_ETIMEDOUT, anything else KEEL_EIO, logged with
 * the server's SQLSTATE and message.
 */
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "es/es_internal.h"
#include "keel/error.h"
#include "keel/io.h"
#include "keel/log.h"

static bool names_on(const es_pgconn *c);

static void no_notices(void *arg, const char *message) {
  (void)arg;
  (void)message;
}

int keel__es_pg_connect(es_pg *pg, const char *url, es_pgconn **out) {
  *out = NULL;
  /* connect_timeout 10 s unless the URL says otherwise (a later keyword's
   * value wins over an earlier one's, and the URL is expanded last): an
   * unreachable host must not hold a blocking-pool thread for the kernel's
   * TCP timeout. */
  static const char *const keys[] = {"connect_timeout", "dbname", NULL};
  const char *const vals[] = {"10", url, NULL};
  PGconn *conn = PQconnectdbParams(keys, vals, 1);
  if (!conn) return KEEL_ENOMEM;
  if (PQstatus(conn) != CONNECTION_OK) {
    keel_log_error(NULL, "event store: cannot connect to PostgreSQL",
                   KEEL_STR("error", PQerrorMessage(conn)));
    PQfinish(conn);
    return KEEL_EIO;
  }
  PQsetNoticeProcessor(conn, no_notices, NULL);
  /* the backend's pid as the server says it, against the one the connection
   * start gave: a pooler or proxy between them answers the start itself
   * (PgBouncer makes up the key a cancel needs), so they differ, and a name
   * prepared now might not be there at the next call: none on this one */
  char sql[128];
  snprintf(sql, sizeof sql, "SET statement_timeout = %lld; SELECT pg_backend_pid()",
           (long long)pg->statement_timeout_ms);
  PGresult *r = PQexec(conn, sql);
  bool ok = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1;
  bool direct = ok && strtol(PQgetvalue(r, 0, 0), NULL, 10) == (long)PQbackendPID(conn);
  PQclear(r);
  if (!ok || PQsetnonblocking(conn, 1) != 0) {
    keel_log_error(NULL, "event store: cannot set up a PostgreSQL connection",
                   KEEL_STR("error", PQerrorMessage(conn)));
    PQfinish(conn);
    return KEEL_EIO;
  }
  es_pgconn *c = calloc(1, sizeof *c);
  if (!c) {
    PQfinish(conn);
    return KEEL_ENOMEM;
  }
  c->conn = conn;
  c->opened_at = c->idle_since = keel__es_now_s();
  c->names = !direct ? NULL : url == pg->url ? &pg->prepare : &pg->prepare_session;
  if (getrandom(&c->nonce, sizeof c->nonce, GRND_NONBLOCK) != (ssize_t)sizeof c->nonce)
    c->nonce = (uint64_t)(uintptr_t)c ^ (uint64_t)(c->opened_at * 1e9); /* unique enough here */
  *out = c;
  return 0;
}

static int broken(es_pgconn *c, const char *what, int rc) {
  c->broken = true;
  keel_log_error(NULL, "event store: PostgreSQL connection failed", KEEL_STR("during", what),
                 KEEL_STR("error", PQerrorMessage(c->conn)));
  return rc;
}

static int wait_sock(es_pg *pg, es_pgconn *c, int events, int *revents) {
  int sock = PQsocket(c->conn);
  if (sock < 0) return KEEL_EIO;
  return keel_wait_fd(sock, events, pg->statement_timeout_ms + 10000, revents);
}

static int map_error(PGresult *err, const char *what) {
  const char *state = PQresultErrorField(err, PG_DIAG_SQLSTATE);
  if (state && strcmp(state, "23505") == 0) return KEEL_EEXIST;
  const char *msg = PQresultErrorMessage(err);
  keel_log_error(NULL, "event store: PostgreSQL error", KEEL_STR("during", what),
                 KEEL_STR("sqlstate", state ? state : ""), KEEL_STR("pg_message", msg ? msg : ""));
  if (state && strcmp(state, "57014") == 0) return KEEL_ETIMEDOUT;
  return KEEL_EIO;
}

/* A statement's error result: its SQLSTATE and message kept on c (for
 * the caller's error text), err freed, c marked broken if the connection
 * went with it. The error code. */
static int took_error(es_pgconn *c, PGresult *err, const char *what) {
  const char *state = PQresultErrorField(err, PG_DIAG_SQLSTATE);
  const char *msg = PQresultErrorField(err, PG_DIAG_MESSAGE_PRIMARY);
  snprintf(c->sqlstate, sizeof c->sqlstate, "%s", state ? state : "");
  snprintf(c->errmsg, sizeof c->errmsg, "%s", msg ? msg : "");
  int rc = map_error(err, what);
  PQclear(err);
  if (PQstatus(c->conn) != CONNECTION_OK) c->broken = true;
  return rc;
}

/* Sends what libpq has buffered for c, reading what the server sends
 * meanwhile (it may not read more until its output is taken). 0, or c is
 * broken and the error is returned. */
static int flush_out(es_pg *pg, es_pgconn *c, const char *what) {
  int rc, rev;
  for (;;) {
    int f = PQflush(c->conn);
    if (f == 0) return 0;
    if (f < 0) return broken(c, what, KEEL_EIO);
    if ((rc = wait_sock(pg, c, KEEL_READABLE | KEEL_WRITABLE, &rev)) != 0)
      return broken(c, what, rc == KEEL_ETIMEDOUT ? KEEL_ETIMEDOUT : KEEL_EIO);
    if ((rev & KEEL_READABLE) && !PQconsumeInput(c->conn)) return broken(c, what, KEEL_EIO);
  }
}

int keel__es_pg_query(es_pg *pg, es_pgconn *c, const char *what, const char *sql, int nparams,
                      const char *const *params, PGresult **out) {
  if (out) *out = NULL;
  if (c->broken) return KEEL_EIO;
  if (names_on(c) && nparams >= 0) { /* a named statement's first run is two messages */
    PGresult *res = NULL;
    int rc = keel__es_pg_pipeline(pg, c, what, 1, &(es_pgstmt){sql, nparams, params}, 0, &res);
    if (out)
      *out = res;
    else
      PQclear(res);
    return rc;
  }
  int ok = nparams < 0 ? PQsendQuery(c->conn, sql)
                       : PQsendQueryParams(c->conn, sql, nparams, NULL, params, NULL, NULL, 0);
  if (!ok) return broken(c, what, KEEL_EIO);
  int rc = flush_out(pg, c, what);
  if (rc) return rc;
  PGresult *res = NULL, *err = NULL;
  for (;;) {
    while (PQisBusy(c->conn)) {
      if ((rc = wait_sock(pg, c, KEEL_READABLE, NULL)) != 0 || !PQconsumeInput(c->conn)) {
        PQclear(res);
        PQclear(err);
        return broken(c, what, rc == KEEL_ETIMEDOUT ? KEEL_ETIMEDOUT : KEEL_EIO);
      }
    }
    PGresult *r = PQgetResult(c->conn);
    if (!r) break;
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK || st == PGRES_EMPTY_QUERY) {
      PQclear(res);
      res = r;
    } else if (!err) {
      err = r;
    } else {
      PQclear(r);
    }
  }
  if (err) {
    PQclear(res);
    return took_error(c, err, what);
  }
  if (!res) return broken(c, what, KEEL_EIO);
  if (out)
    *out = res;
  else
    PQclear(res);
  return 0;
}

/* ---- named statements -------------------------------------------------------------- */

static bool names_on(const es_pgconn *c) {
  return c->names && !c->names_off && !c->service &&
         atomic_load_explicit(c->names, memory_order_relaxed);
}

enum { ES_PG_NAMED = 128, ES_PG_SEEN = 256 };

typedef struct es_pgnamed {
  char *sql; /* NULL: a free entry */
  uint64_t hash;
  uint64_t used; /* the connection's tick at its last use: the least recent goes first */
  uint32_t name; /* keel_<the connection's nonce>_<name> on the server */
  bool stale;    /* its result's columns changed under it (0A000): replaced at next use */
} es_pgnamed;

/* A name as the server knows it: unique to this connection (a random
 * nonce drawn at connect), so a name that reaches another connection's
 * backend (a pooler that nobody declared) is missing there, not another
 * text's. */
static void name_of(const es_pgconn *c, uint32_t n, char out[48]) {
  snprintf(out, 48, "keel_%016" PRIx64 "_%" PRIu32, c->nonce, n);
}

/* what a connection remembers besides its named statements: the hashes of
 * texts seen once (a ring), so that a one-off text takes no name */
typedef struct es_pgseen {
  uint64_t h[ES_PG_SEEN];
  size_t at;
} es_pgseen;

void keel__es_pg_named_free(es_pgconn *c) {
  for (size_t i = 0; c->named && i < ES_PG_NAMED; i++)
    free(c->named[i].sql);
  free(c->named);
  free(c->seen);
  c->named = NULL;
  c->seen = NULL;
}

/* The named entry for sql on c: found (used now); or made now (*fresh: to
 * prepare in this round trip) when the text was seen before, in a free
 * entry or the least recently used one's (*drop: that one's old name, to
 * deallocate first; a stale entry of the same text is replaced the same
 * way); or NULL (run it unnamed: a text seen once, or every entry in use
 * by this round trip). */
static es_pgnamed *named_for(es_pgconn *c, const char *sql, bool *fresh, uint32_t *drop) {
  *fresh = false;
  *drop = 0;
  if (!c->named) {
    c->named = calloc(ES_PG_NAMED, sizeof *c->named);
    c->seen = calloc(1, sizeof *c->seen);
    if (!c->named || !c->seen) {
      keel__es_pg_named_free(c);
      c->names_off = true; /* out of memory: unnamed from now on */
      return NULL;
    }
  }
  uint64_t h = keel__es_text_hash(sql) | 1; /* never 0: 0 marks a free ring slot */
  es_pgnamed *slot = NULL;
  for (size_t i = 0; i < ES_PG_NAMED; i++) {
    es_pgnamed *e = &c->named[i];
    if (e->sql && e->hash == h && strcmp(e->sql, sql) == 0) {
      e->used = c->tick;
      if (!e->stale) return e;
      *drop = e->name; /* the same text again, under a new name */
      e->name = ++c->next_name;
      e->stale = false;
      *fresh = true;
      return e;
    }
    if (!slot || (slot->sql && (!e->sql || e->used < slot->used))) slot = e;
  }
  if (slot->sql && slot->used == c->tick) return NULL; /* all in use by this round trip */
  es_pgseen *sn = c->seen;
  bool seen = false;
  for (size_t i = 0; i < ES_PG_SEEN && !seen; i++)
    seen = sn->h[i] == h;
  if (!seen) {
    sn->h[sn->at] = h;
    sn->at = (sn->at + 1) % ES_PG_SEEN;
    return NULL;
  }
  char *copy = strdup(sql);
  if (!copy) return NULL;
  if (slot->sql) *drop = slot->name;
  free(slot->sql);
  *slot = (es_pgnamed){.sql = copy, .hash = h, .used = c->tick, .name = ++c->next_name};
  *fresh = true;
  return slot;
}

static void named_forget(es_pgnamed *e) {
  free(e->sql);
  e->sql = NULL;
}

/* ---- several statements, one round trip ---------------------------------------- */

/* Waits until c has a whole result to give (PQgetResult then does not block). */
static int await_result(es_pg *pg, es_pgconn *c) {
  while (PQisBusy(c->conn)) {
    int rc = wait_sock(pg, c, KEEL_READABLE, NULL);
    if (rc != 0 || !PQconsumeInput(c->conn))
      return rc == KEEL_ETIMEDOUT ? KEEL_ETIMEDOUT : KEEL_EIO;
  }
  return 0;
}

/* What the pipeline sent, in order: each answered by results up to a NULL. */
enum { OP_RUN, OP_PREPARE, OP_DEALLOCATE };
typedef struct pg_op {
  int kind;
  es_pgnamed *named; /* a prepare's entry, or a named run's (NULL: unnamed run) */
  size_t stmt;       /* a run's statement */
} pg_op;

static bool send_stmt(es_pgconn *c, const es_pgstmt *s, size_t i, pg_op *ops, size_t *nops) {
  bool fresh = false;
  uint32_t drop = 0;
  es_pgnamed *e = names_on(c) && s->nparams >= 0 ? named_for(c, s->sql, &fresh, &drop) : NULL;
  char name[48];
  if (drop) { /* the entry's old statement first: the server keeps no more than we know of */
    char sql[64];
    name_of(c, drop, name);
    snprintf(sql, sizeof sql, "DEALLOCATE %s", name);
    if (!PQsendQueryParams(c->conn, sql, 0, NULL, NULL, NULL, NULL, 0)) return false;
    ops[(*nops)++] = (pg_op){.kind = OP_DEALLOCATE};
  }
  if (e) name_of(c, e->name, name);
  if (fresh) {
    if (!PQsendPrepare(c->conn, name, s->sql, s->nparams, NULL)) return false;
    ops[(*nops)++] = (pg_op){.kind = OP_PREPARE, .named = e};
  }
  ops[(*nops)++] = (pg_op){.kind = OP_RUN, .named = e, .stmt = i};
  return e ? PQsendQueryPrepared(c->conn, name, s->nparams, s->params, NULL, NULL, 0)
           : PQsendQueryParams(c->conn, s->sql, s->nparams, NULL, s->params, NULL, NULL, 0);
}

static bool sqlstate_is(PGresult *r, const char *code) {
  const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
  return state && strcmp(state, code) == 0;
}

/* An error that says this connection's names do not match the server's:
 * a name missing (26000: invalid_sql_statement_name) at a run or a
 * deallocation, a name already taken at a prepare (42P05), a named run
 * whose statement wants other parameters (08P01: another text under the
 * name). Not a fault of the statement's: names cannot be trusted. */
static bool names_gone(const pg_op *op, PGresult *r) {
  switch (op->kind) {
  case OP_RUN: return op->named && (sqlstate_is(r, "26000") || sqlstate_is(r, "08P01"));
  case OP_PREPARE: return sqlstate_is(r, "42P05");
  default: return sqlstate_is(r, "26000");
  }
}

/* This connection's names do not match the server's (names_gone): a
 * pooler that nobody declared (its next server connection lacks them), or
 * a DEALLOCATE ALL. Either way names cannot be trusted here: every
 * connection of the same kind (the pool's, or the session ones) runs
 * unnamed from now on, the others as soon as they look, said once. */
static void no_more_names(es_pgconn *c) {
  if (atomic_exchange(c->names, false))
    keel_log_warn(NULL,
                  "event store: a named statement went missing on its connection (a pooler in "
                  "transaction mode? a DEALLOCATE ALL?); running statements unnamed from now on. "
                  "Behind PgBouncer set session_url (or no_prepare)");
}

static int pipeline(es_pg *pg, es_pgconn *c, const char *what, size_t n, const es_pgstmt *stmts,
                    size_t want, PGresult **out, bool *lost, bool *committed) {
  pg_op small[24], *ops = n <= 8 ? small : malloc(3 * n * sizeof *ops);
  if (!ops) return KEEL_ENOMEM;
  size_t nops = 0;
  int rc = 0;
  c->tick++; /* the entries this round trip uses are not evicted by it */
  if (!PQenterPipelineMode(c->conn)) {
    rc = broken(c, what, KEEL_EIO);
    goto out;
  }
  for (size_t i = 0; i < n; i++)
    if (!send_stmt(c, &stmts[i], i, ops, &nops)) {
      rc = broken(c, what, KEEL_EIO);
      goto out;
    }
  if (!PQpipelineSync(c->conn)) {
    rc = broken(c, what, KEEL_EIO);
    goto out;
  }
  if ((rc = flush_out(pg, c, what)) != 0) goto out;
  /* each message's results end with a NULL; after an error the server
   * skips the rest (PGRES_PIPELINE_ABORTED each) up to the sync */
  PGresult *res = NULL, *err = NULL;
  for (size_t k = 0; k < nops; k++) {
    for (;;) {
      if ((rc = await_result(pg, c)) != 0) {
        PQclear(res);
        PQclear(err);
        rc = broken(c, what, rc);
        goto out;
      }
      PGresult *r = PQgetResult(c->conn);
      if (!r) break;
      ExecStatusType st = PQresultStatus(r);
      pg_op *op = &ops[k];
      if (op->kind == OP_PREPARE && st != PGRES_COMMAND_OK && op->named->sql)
        named_forget(op->named); /* not prepared: the next run prepares it */
      if (st == PGRES_FATAL_ERROR && names_gone(op, r)) {
        if (op->named && op->named->sql) named_forget(op->named);
        no_more_names(c);
        *lost = true;
      } else if (st == PGRES_FATAL_ERROR && op->kind == OP_RUN && op->named &&
                 sqlstate_is(r, "0A000")) {
        op->named->stale = true; /* cached plan must not change result type */
      }
      if (op->kind == OP_RUN && st == PGRES_COMMAND_OK && strcmp(PQcmdStatus(r), "COMMIT") == 0)
        *committed = true; /* whatever fails after it, that transaction stays */
      if (op->kind == OP_RUN && (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) &&
          op->stmt == want && !res)
        res = r;
      else if (st == PGRES_FATAL_ERROR && !err)
        err = r;
      else
        PQclear(r);
    }
  }
  PGresult *sync = NULL;
  if ((rc = await_result(pg, c)) == 0) sync = PQgetResult(c->conn);
  bool synced = sync && PQresultStatus(sync) == PGRES_PIPELINE_SYNC;
  PQclear(sync);
  if (!synced || !PQexitPipelineMode(c->conn)) {
    PQclear(res);
    PQclear(err);
    rc = broken(c, what, rc ? rc : KEEL_EIO);
  } else if (err) {
    PQclear(res);
    rc = took_error(c, err, what);
  } else if (!res) {
    rc = broken(c, what, KEEL_EIO);
  } else {
    *out = res;
  }
out:
  if (ops != small) free(ops);
  return rc;
}

/* A run of a named statement that went missing fails before the statement
 * runs, and the pipeline's statements run in one transaction (implicit, or
 * one the pipeline began and the error left aborted): begun on an idle
 * connection, nothing of it stays, so it runs again, unnamed. Not when a
 * COMMIT of the pipeline's went through before (that transaction stays),
 * nor inside the caller's transaction: the error is the answer. */
int keel__es_pg_pipeline(es_pg *pg, es_pgconn *c, const char *what, size_t n,
                         const es_pgstmt *stmts, size_t want, PGresult **out) {
  *out = NULL;
  if (c->broken) return KEEL_EIO;
  bool idle = PQtransactionStatus(c->conn) == PQTRANS_IDLE, lost = false, committed = false;
  int rc = pipeline(pg, c, what, n, stmts, want, out, &lost, &committed);
  if (rc == 0 || !lost || !idle || committed || c->broken) return rc;
  if (PQtransactionStatus(c->conn) != PQTRANS_IDLE &&
      keel__es_pg_query(pg, c, "rolling back", "ROLLBACK", -1, NULL, NULL) != 0)
    return rc;
  return pipeline(pg, c, what, n, stmts, want, out, &lost, &committed);
}

/* ---- checks on an idle connection (the pool's) ------------------------------ */

bool keel__es_pg_idle_input(es_pgconn *c) {
  int sock = PQsocket(c->conn);
  if (sock < 0) return true;
  struct pollfd p = {.fd = sock, .events = POLLIN};
  if (poll(&p, 1, 0) <= 0) return false; /* nothing: the usual case, one system call */
  /* an error the server sent before closing (terminated, idle timeout),
   * or a parameter change: either way the pool pings before trusting it */
  if (!PQconsumeInput(c->conn)) c->broken = true;
  return true;
}

int keel__es_pg_ping(es_pgconn *c, int64_t timeout_ms) {
  if (c->broken || PQstatus(c->conn) != CONNECTION_OK) return KEEL_EIO;
  int sock = PQsocket(c->conn);
  /* an empty query: the cheapest round trip (EmptyQueryResponse) */
  if (sock < 0 || !PQsendQuery(c->conn, "")) goto dead;
  double deadline = keel__es_now_s() + (double)timeout_ms / 1000.0;
  int f;
  while ((f = PQflush(c->conn)) != 0) {
    int rev = 0;
    int64_t left = (int64_t)((deadline - keel__es_now_s()) * 1000.0);
    if (f < 0 || left <= 0) goto dead;
    if (keel_wait_fd(sock, KEEL_READABLE | KEEL_WRITABLE, left, &rev) != 0) goto dead;
    if ((rev & KEEL_READABLE) && !PQconsumeInput(c->conn)) goto dead;
  }
  bool ok = false;
  for (;;) {
    while (PQisBusy(c->conn)) {
      int64_t left = (int64_t)((deadline - keel__es_now_s()) * 1000.0);
      if (left <= 0 || keel_wait_fd(sock, KEEL_READABLE, left, NULL) != 0 ||
          !PQconsumeInput(c->conn))
        goto dead;
    }
    PGresult *r = PQgetResult(c->conn);
    if (!r) break;
    if (PQresultStatus(r) == PGRES_EMPTY_QUERY) ok = true;
    PQclear(r);
  }
  if (ok && PQstatus(c->conn) == CONNECTION_OK) return 0;
dead:
  c->broken = true;
  return KEEL_EIO;
}
