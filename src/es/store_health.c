/* store_health.c - the event store's health check (keel/health.h).
 *
 * keel_es_health answers "can this store take appends now, and is anything
 * holding readers back?" with one keel_health_status, a message a person can
 * act on, and a JSON details object for /health.
 *
 * On SQLite it sends a request through the writer thread that takes the
 * write lock and lets it go (BEGIN IMMEDIATE; ROLLBACK: nothing is written,
 * no fsync), which proves the writer is alive and not wedged, and checks the
 * file is still writable (access(2)).
 *
 * On PostgreSQL it checks a connection out of the pool and runs one query
 * that is the ping and the horizon report at once: the backend whose
 * transaction holds the oldest transaction id (backend_xid in
 * pg_stat_activity, or a prepared transaction) is what holds read_all's
 * xid8 horizon back (docs/eventstore.md, "the horizon"); when it has been
 * open longer than horizon_warn_ms the check warns, naming its pid,
 * application_name, state and how long. A pool with processes waiting for a
 * connection longer than waiting_warn_ms warns too (saturation); while any
 * process waits, the check does not queue behind them for a connection of
 * its own: the waiting is the news. A pool that cannot reach the server is
 * critical.
 *
 * What it refuses to do: it never writes, and it never waits longer than
 * the pool's own timeouts (the health module's deadline kills it after its
 * timeout_ms; it holds exits while it has a connection out, so the
 * connection always goes back).
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "es/es_internal.h"
#include "keel/error.h"
#include "keel/process.h"

typedef struct health_cfg {
  double horizon_warn_s, waiting_warn_s; /* < 0: never */
} health_cfg;

static double warn_s(int64_t ms, int64_t dflt) {
  if (ms == 0) ms = dflt;
  return ms < 0 ? -1.0 : (double)ms / 1000.0;
}

static void set_details(keel_health_result *res, json_t *details) {
  char *text = json_dumps(details, JSON_COMPACT);
  json_decref(details);
  if (!text) return;
  free(res->details);
  res->details = text;
}

/* ---- SQLite --------------------------------------------------------------------------- */

typedef struct lock_probe {
  int rc;
  char err[200];
} lock_probe;

static void take_write_lock(sqlite3 *db, void *arg) {
  lock_probe *p = arg;
  p->rc = sqlite3_exec(db, "BEGIN IMMEDIATE; ROLLBACK", NULL, NULL, NULL);
  if (p->rc != SQLITE_OK) {
    snprintf(p->err, sizeof p->err, "%s", sqlite3_errmsg(db));
    sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
  }
}

static keel_health_status sqlite_check(keel_es *es, keel_health_result *res) {
  json_t *details = json_pack("{s:s}", "backend", "sqlite");
  if (!es->memory && access(es->path, W_OK) != 0) {
    keel_health_result_message(res, "the database file %s is not writable", es->path);
    set_details(res, details);
    return KEEL_HEALTH_CRITICAL;
  }
  es_req *r = keel__es_req_new(ES_REQ_FN, NULL);
  if (!r) {
    json_decref(details);
    return KEEL_HEALTH_CRITICAL;
  }
  lock_probe p = {.rc = SQLITE_OK};
  r->fn = take_write_lock;
  r->fn_arg = &p; /* on this stack: exits are held until the writer replied */
  int held = keel_hold_exits(true);
  keel_msg_t *m = NULL;
  double t0 = keel__es_now_s();
  int rc = keel__es_submit(es, r, &m);
  double took = keel__es_now_s() - t0;
  keel_msg_free(m);
  if (held == 0) keel_hold_exits(false);
  json_object_set_new(details, "writer_ms", json_real(took * 1000.0));
  set_details(res, details);
  if (rc != 0) {
    keel_health_result_message(res, "the writer did not answer: %s", keel_strerror(rc));
    return KEEL_HEALTH_CRITICAL;
  }
  if (p.rc != SQLITE_OK) {
    keel_health_result_message(res, "cannot take the write lock: %s", p.err);
    return KEEL_HEALTH_CRITICAL;
  }
  return KEEL_HEALTH_OK;
}

/* ---- PostgreSQL ----------------------------------------------------------------------- */

/* The transaction holding read_all's horizon: the oldest running
 * transaction id of the cluster, a session's or a prepared transaction's.
 * A transaction without an id (a plain SELECT) holds nothing. */
static const char horizon_sql[] =
    "SELECT h.who, h.app, h.state, h.held_ms FROM ("
    " SELECT pid::text AS who, coalesce(application_name, '') AS app,"
    "  coalesce(state, '') AS state,"
    "  (extract(epoch FROM clock_timestamp() - xact_start) * 1000)::bigint AS held_ms,"
    "  age(backend_xid) AS xage"
    " FROM pg_stat_activity WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()"
    " UNION ALL"
    " SELECT 'prepared ' || gid, '', 'prepared',"
    "  (extract(epoch FROM clock_timestamp() - prepared) * 1000)::bigint, age(transaction)"
    " FROM pg_prepared_xacts"
    ") h ORDER BY h.xage DESC LIMIT 1";

typedef struct holder {
  bool found;
  char who[80], app[80], state[40];
  int64_t held_ms;
} holder;

static int query_holder(keel_es *es, holder *h) {
  int held = keel_hold_exits(true); /* the connection always goes back */
  es_pgconn *c = NULL;
  int rc = keel__es_pg_acquire(es, &c);
  if (rc == 0) {
    PGresult *r = NULL;
    rc = keel__es_pg_query(es->pg, c, "checking health", horizon_sql, 0, NULL, &r);
    if (rc == 0 && PQntuples(r) == 1) {
      h->found = true;
      snprintf(h->who, sizeof h->who, "%s", PQgetvalue(r, 0, 0));
      snprintf(h->app, sizeof h->app, "%s", PQgetvalue(r, 0, 1));
      snprintf(h->state, sizeof h->state, "%s", PQgetvalue(r, 0, 2));
      h->held_ms = strtoll(PQgetvalue(r, 0, 3), NULL, 10);
    }
    PQclear(r);
    keel__es_pg_release(es, c);
  }
  if (held == 0) keel_hold_exits(false);
  return rc;
}

static keel_health_status pg_check(keel_es *es, const health_cfg *cfg, keel_health_result *res) {
  size_t in_use, idle, waiting, max;
  double waited;
  keel__es_pg_stats(es, &in_use, &idle, &waiting, &max, &waited);
  json_t *details = json_pack("{s:s,s:{s:I,s:I,s:I,s:I,s:f}}", "backend", "postgresql", "pool",
                              "in_use", (json_int_t)in_use, "idle", (json_int_t)idle, "waiting",
                              (json_int_t)waiting, "max", (json_int_t)max, "waiting_s", waited);
  if (waiting > 0) {
    set_details(res, details);
    if (cfg->waiting_warn_s >= 0 && waited >= cfg->waiting_warn_s) {
      keel_health_result_message(res,
                                 "connection pool saturated: %zu processes waiting, for %.1f s "
                                 "(pool_max %zu)",
                                 waiting, waited, max);
      return KEEL_HEALTH_WARNING;
    }
    return KEEL_HEALTH_OK; /* busy, not yet for long: no query queued behind them */
  }
  holder h = {0};
  int rc = query_holder(es, &h);
  if (rc != 0) {
    set_details(res, details);
    keel_health_result_message(res, "PostgreSQL does not answer: %s", keel_strerror(rc));
    return KEEL_HEALTH_CRITICAL;
  }
  json_object_set_new(details, "horizon",
                      h.found ? json_pack("{s:s,s:s,s:s,s:I}", "backend", h.who, "application_name",
                                          h.app, "state", h.state, "held_ms", (json_int_t)h.held_ms)
                              : json_null());
  set_details(res, details);
  if (h.found && cfg->horizon_warn_s >= 0 && (double)h.held_ms / 1000.0 >= cfg->horizon_warn_s) {
    keel_health_result_message(res,
                               "read_all held back for %.1f s by backend %s "
                               "(application_name '%s', state '%s'): its transaction is open",
                               (double)h.held_ms / 1000.0, h.who, h.app, h.state);
    return KEEL_HEALTH_WARNING;
  }
  return KEEL_HEALTH_OK;
}

/* ---- the public calls ----------------------------------------------------------------- */

static void cfg_from(const keel_es_health_opts *o, health_cfg *cfg) {
  keel_es_health_opts z = {0};
  if (!o) o = &z;
  cfg->horizon_warn_s = warn_s(o->horizon_warn_ms, 30000);
  cfg->waiting_warn_s = warn_s(o->waiting_warn_ms, 1000);
}

keel_health_status keel_es_health(keel_es *es, const keel_es_health_opts *o,
                                  keel_health_result *res) {
  health_cfg cfg;
  cfg_from(o, &cfg);
  return es->kind == ES_PG ? pg_check(es, &cfg, res) : sqlite_check(es, res);
}

typedef struct registered {
  keel_es *es;
  keel_es_health_opts o;
} registered;

static keel_health_status run_registered(void *ud, keel_health_result *res) {
  registered *r = ud;
  return keel_es_health(r->es, &r->o, res);
}

int keel_es_health_register(keel_es *es, const keel_es_health_opts *o) {
  if (!es) return KEEL_EINVAL;
  registered *r = calloc(1, sizeof *r);
  if (!r) return KEEL_ENOMEM;
  r->es = es;
  if (o) r->o = *o;
  r->o.name = NULL; /* not kept: the health module copies the name */
  keel_health_check chk = {
      .name = o && o->name ? o->name : "eventstore",
      .fn = run_registered,
      .ud = r,
      .ud_free = free,
      .required = !(o && o->optional),
      .timeout_ms = o && o->timeout_ms > 0 ? o->timeout_ms : 2000,
  };
  int rc = keel_health_register_check(&chk);
  if (rc) free(r);
  return rc;
}
