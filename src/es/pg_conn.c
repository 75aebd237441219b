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
 * A wait that outlasts statement_timeout by ten seconds, or a socket error,
 * marks the connection broken: the pool closes it on release and opens a new
 * one when needed. Server errors are mapped to keel's codes: a unique
 * violation is KEEL_EEXIST (the callers expect it), a cancelled statement
 * (statement_timeout) KEEL_ETIMEDOUT, anything else KEEL_EIO, logged with
 * the server's SQLSTATE and message.
 */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "es/es_internal.h"
#include "keel/error.h"
#include "keel/io.h"
#include "keel/log.h"

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
  char sql[96];
  snprintf(sql, sizeof sql, "SET statement_timeout = %lld", (long long)pg->statement_timeout_ms);
  PGresult *r = PQexec(conn, sql);
  bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
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

int keel__es_pg_pipeline(es_pg *pg, es_pgconn *c, const char *what, size_t n,
                         const es_pgstmt *stmts, size_t want, PGresult **out) {
  *out = NULL;
  if (c->broken) return KEEL_EIO;
  if (!PQenterPipelineMode(c->conn)) return broken(c, what, KEEL_EIO);
  for (size_t i = 0; i < n; i++)
    if (!PQsendQueryParams(c->conn, stmts[i].sql, stmts[i].nparams, NULL, stmts[i].params, NULL,
                           NULL, 0))
      return broken(c, what, KEEL_EIO);
  if (!PQpipelineSync(c->conn)) return broken(c, what, KEEL_EIO);
  int rc = flush_out(pg, c, what);
  if (rc) return rc;
  /* each statement's results end with a NULL; after an error the server
   * skips the rest (PGRES_PIPELINE_ABORTED each) up to the sync */
  PGresult *res = NULL, *err = NULL;
  for (size_t i = 0; i < n; i++) {
    for (;;) {
      if ((rc = await_result(pg, c)) != 0) {
        PQclear(res);
        PQclear(err);
        return broken(c, what, rc);
      }
      PGresult *r = PQgetResult(c->conn);
      if (!r) break;
      ExecStatusType st = PQresultStatus(r);
      if ((st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) && i == want && !res)
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
    return broken(c, what, rc ? rc : KEEL_EIO);
  }
  if (err) {
    PQclear(res);
    return took_error(c, err, what);
  }
  if (!res) return broken(c, what, KEEL_EIO);
  *out = res;
  return 0;
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
