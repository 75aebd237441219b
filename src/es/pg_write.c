/* pg_write.c - appends and stream management on PostgreSQL.
 *
 * Every call is one transaction on one pooled connection, run by the calling
 * process (append.c encodes and validates first, exactly as for SQLite).
 * There is no writer thread and no global write lock: appends to different
 * streams run in parallel on different connections; two appends to one
 * stream meet on its streams row.
 *
 * An append:
 *   BEGIN
 *   per stream, the idempotency check  every given id looked up: all present in
 *                                      this stream in order -> the original
 *                                      result, duplicate (that stream writes
 *                                      nothing); some -> KEEL_EEXIST
 *   SELECT keel_es_reserve(n) after    the transaction's id and the n positions
 *   the streams' turns                 (the turns: advisory locks, so that a
 *                                      stream's versions follow its positions,
 *                                      pg_group.c; one statement)
 *                                      of the new events, assigned together
 *                                      (pg_schema.c)
 *   per stream with new events:
 *     INSERT INTO streams ... ON CONFLICT DO UPDATE ... RETURNING version, deleted
 *                                      creates the row or locks the existing one:
 *                                      the stream's writers take turns from here
 *     the expected-version check       KEEL_ECONFLICT with expected and actual
 *     one multi-row INSERT             the rows travel as one JSON array
 *                                      (json_to_recordset): one parameter, one
 *                                      statement, whatever the batch's size
 *     UPDATE streams SET version
 *   COMMIT (or ROLLBACK on any failure: nothing of the call is stored)
 * A concurrent retry of the same batch that passed the check before the
 * first commit meets the ids at its insert (a unique violation): the call
 * rolls back and runs once more, and then gets the original result. A
 * conflict leaves a hole in the positions (they are never reused; holes are
 * allowed).
 *
 * Simple appends (one stream, no given ids) do not come here: pg_group.c
 * folds concurrent ones into one transaction (group commit).
 */
#include <stdlib.h>
#include <string.h>

#include "es/es_internal.h"
#include "keel/error.h"
#include "keel/log.h"

static void i64s(char out[24], int64_t v) {
  snprintf(out, 24, "%lld", (long long)v);
}

static int64_t val_i64(const PGresult *r, int row, int col) {
  return strtoll(PQgetvalue(r, row, col), NULL, 10);
}

/* ---- an append --------------------------------------------------------------------- */

typedef struct id_ix {
  const char *id;
  size_t k;
} id_ix;

static int id_cmp(const void *a, const void *b) {
  return strcmp(((const id_ix *)a)->id, ((const id_ix *)b)->id);
}

/* Idempotency, as on SQLite (writer.c): 1 when every id of the batch is
 * stored, in this stream, in this order (res filled with the original
 * result); 0 when none is; else KEEL_EEXIST. */
static int find_duplicate(es_pg *pg, es_pgconn *c, const es_stream_req *s,
                          keel_es_append_result *res) {
  size_t given = 0;
  for (size_t k = 0; k < s->n; k++)
    given += s->rows[k].given_id;
  if (given == 0) return 0;
  es_sbuf ids = {0};
  keel__es_sb_str(&ids, "{");
  id_ix *ix = calloc(given, sizeof *ix);
  size_t g = 0;
  for (size_t k = 0; k < s->n; k++) {
    if (!s->rows[k].given_id) continue;
    if (g) keel__es_sb_str(&ids, ",");
    keel__es_sb_str(&ids, s->rows[k].id);
    if (ix) ix[g++] = (id_ix){s->rows[k].id, k};
  }
  keel__es_sb_str(&ids, "}");
  if (!ix || ids.oom) {
    free(ix);
    free(ids.p);
    return KEEL_ENOMEM;
  }
  qsort(ix, given, sizeof *ix, id_cmp);
  const char *params[1] = {ids.p};
  PGresult *r;
  int rc = keel__es_pg_query(pg, c, "looking up event ids",
                             "SELECT id::text, stream, version, position FROM events "
                             "WHERE id = ANY($1::uuid[])",
                             1, params, &r);
  free(ids.p);
  if (rc) {
    free(ix);
    return rc;
  }
  int rows = PQntuples(r);
  if (rows == 0) {
    PQclear(r);
    free(ix);
    return 0;
  }
  /* per batch index: the row found for it, or -1 */
  int *at = malloc(s->n * sizeof *at);
  if (!at) {
    PQclear(r);
    free(ix);
    return KEEL_ENOMEM;
  }
  for (size_t k = 0; k < s->n; k++)
    at[k] = -1;
  for (int i = 0; i < rows; i++) {
    id_ix key = {PQgetvalue(r, i, 0), 0};
    id_ix *hit = bsearch(&key, ix, given, sizeof *ix, id_cmp);
    if (hit) at[hit->k] = i;
  }
  size_t found = 0;
  bool same = true;
  int64_t v0 = 0;
  for (size_t k = 0; k < s->n; k++) {
    if (at[k] < 0) continue;
    found++;
    int i = at[k];
    int64_t v = val_i64(r, i, 2), pos = val_i64(r, i, 3);
    if (k == 0) v0 = v;
    if (strcmp(PQgetvalue(r, i, 1), s->stream) != 0 || v != v0 + (int64_t)k) same = false;
    if (k == 0) res->first_position = pos;
    if (k == s->n - 1) {
      res->last_position = pos;
      res->version = v;
    }
  }
  PQclear(r);
  free(ix);
  free(at);
  return keel__es_dup_verdict(found, given, s->n, same, res);
}

/* Locks (creating when needed) the stream's row; its version and deleted. */
static int lock_stream(es_pg *pg, es_pgconn *c, const char *stream, int64_t *version,
                       bool *deleted) {
  const char *params[1] = {stream};
  PGresult *r;
  int rc = keel__es_pg_query(pg, c, "locking a stream",
                             "INSERT INTO streams AS s (stream) VALUES ($1) "
                             "ON CONFLICT (stream) DO UPDATE SET stream = s.stream "
                             "RETURNING s.version, s.deleted",
                             1, params, &r);
  if (rc) return rc;
  *version = val_i64(r, 0, 0);
  *deleted = PQgetvalue(r, 0, 1)[0] == 't';
  PQclear(r);
  return 0;
}

/* Appends one stream's rows (its idempotency check already done). *raced:
 * the insert met an id a concurrent transaction stored meanwhile. */
static int append_stream(es_pg *pg, es_pgconn *c, const es_stream_req *s, int64_t *next_pos,
                         int64_t now, keel_es_append_result *res, bool *raced) {
  memset(res, 0, sizeof *res);
  int64_t actual;
  bool deleted;
  int rc = lock_stream(pg, c, s->stream, &actual, &deleted);
  if (rc) return rc;
  if (!keel__es_expected_ok(s->expected, actual, deleted)) {
    res->expected = s->expected;
    res->actual = actual;
    return KEEL_ECONFLICT;
  }
  es_sbuf b = {0};
  keel__es_sb_str(&b, "[");
  for (size_t k = 0; k < s->n; k++) {
    const es_row *e = &s->rows[k];
    keel__es_sb_str(&b, k ? ",{\"p\":" : "{\"p\":");
    keel__es_sb_i64(&b, *next_pos + (int64_t)k);
    keel__es_sb_str(&b, ",\"v\":");
    keel__es_sb_i64(&b, actual + (int64_t)k + 1);
    keel__es_sb_str(&b, ",\"id\":\"");
    keel__es_sb_str(&b, e->id);
    keel__es_sb_str(&b, "\",\"t\":");
    keel__es_sb_json_string(&b, e->type);
    keel__es_sb_str(&b, ",\"sv\":");
    keel__es_sb_i64(&b, e->schema_version);
    keel__es_sb_str(&b, ",\"oa\":");
    keel__es_sb_i64(&b, e->occurred_at);
    keel__es_sb_str(&b, ",\"pl\":");
    keel__es_sb_str(&b, e->payload);
    keel__es_sb_str(&b, ",\"md\":");
    keel__es_sb_str(&b, e->metadata ? e->metadata : "null");
    keel__es_sb_str(&b, "}");
  }
  keel__es_sb_str(&b, "]");
  if (b.oom) {
    free(b.p);
    return KEEL_ENOMEM;
  }
  char now_s[24], hash_s[24];
  i64s(now_s, now);
  i64s(hash_s, (int64_t)keel__es_stream_hash(s->stream));
  const char *params[4] = {s->stream, now_s, b.p, hash_s};
  rc = keel__es_pg_query(
      pg, c, "inserting events",
      "INSERT INTO events (position, stream, version, id, type, schema_version, payload, "
      "metadata, occurred_at, stored_at, stream_hash) "
      "SELECT r.p, $1, r.v, r.id, r.t, r.sv, r.pl, r.md, r.oa, $2::bigint, $4::bigint "
      "FROM json_to_recordset($3::json) AS r(p bigint, v bigint, id uuid, t text, sv integer, "
      "oa bigint, pl json, md json)",
      4, params, NULL);
  free(b.p);
  if (rc == KEEL_EEXIST) *raced = true;
  if (rc) return rc;
  char ver[24];
  i64s(ver, actual + (int64_t)s->n);
  const char *up[2] = {s->stream, ver};
  if ((rc = keel__es_pg_query(pg, c, "updating a stream's version",
                              "UPDATE streams SET version = $2::bigint, deleted = false "
                              "WHERE stream = $1",
                              2, up, NULL)))
    return rc;
  res->first_position = *next_pos;
  res->last_position = *next_pos + (int64_t)s->n - 1;
  res->version = actual + (int64_t)s->n;
  *next_pos += (int64_t)s->n;
  return 0;
}

/* The turns of the streams this append writes, then its nnew positions
 * (pg_group.c: a stream's versions then follow its positions). */
static int reserve(es_pg *pg, es_pgconn *c, const es_req *r, const bool *dup, size_t nnew,
                   int64_t *first) {
  const char **names = malloc(r->nstreams * sizeof *names);
  if (!names) return KEEL_ENOMEM;
  size_t n = 0;
  for (size_t k = 0; k < r->nstreams; k++)
    if (!dup[k]) names[n++] = r->streams[k].stream;
  int rc = keel__es_pg_turns_and_reserve(pg, c, names, n, nnew, first);
  free(names);
  return rc;
}

/* One attempt, in the transaction begun on c: the idempotency checks first
 * (plain reads: no transaction id yet, and a batch that is all duplicates
 * uses no position), then the positions, then each stream under its row
 * lock. */
static int append_once(keel_es *es, es_pgconn *c, const es_req *r, es_reply *rep, bool *raced) {
  es_pg *pg = es->pg;
  int rc = 0;
  size_t nnew = 0;
  bool *dup = calloc(r->nstreams, sizeof *dup);
  if (!dup) return KEEL_ENOMEM;
  for (size_t k = 0; k < r->nstreams; k++) {
    memset(&rep->results[k], 0, sizeof rep->results[k]);
    rc = find_duplicate(pg, c, &r->streams[k], &rep->results[k]);
    if (rc < 0) {
      rep->failed = k;
      free(dup);
      return rc;
    }
    dup[k] = rc == 1;
    if (!dup[k]) nnew += r->streams[k].n;
  }
  rc = 0;
  if (nnew > 0) {
    int64_t pos = 0;
    if ((rc = reserve(pg, c, r, dup, nnew, &pos)) == 0) {
      int64_t now = keel__es_unix_ms();
      rep->stored_at = now;
      for (size_t k = 0; k < r->nstreams && rc == 0; k++) {
        if (dup[k]) continue;
        rc = append_stream(pg, c, &r->streams[k], &pos, now, &rep->results[k], raced);
        if (rc) rep->failed = k;
      }
    }
  }
  free(dup);
  if (rc == 0 && keel__es_tx_wanted(r, rep->results) && (rc = keel__es_tx_run(es, r, NULL, c)) != 0)
    rep->failed = r->nstreams;
  if (rc) return rc;
  return keel__es_pg_query(pg, c, "committing an append", "COMMIT", -1, NULL, NULL);
}

/* A concurrent retry of the same batch can pass the idempotency check before
 * the first one commits and then meet its ids at the insert: roll back and
 * run once more, when the check sees them. */
static int do_append(keel_es *es, es_pgconn *c, const es_req *r, es_reply *rep) {
  bool raced = false;
  int rc = append_once(es, c, r, rep, &raced);
  if (rc == KEEL_EEXIST && raced) {
    rc = keel__es_pg_query(es->pg, c, "rolling back", "ROLLBACK", -1, NULL, NULL);
    raced = false;
    if (rc == 0) rc = keel__es_pg_query(es->pg, c, "starting an append", "BEGIN", -1, NULL, NULL);
    if (rc == 0) rc = append_once(es, c, r, rep, &raced);
  }
  return rc;
}

/* ---- stream management ------------------------------------------------------------- */

/* The transaction a request runs in, begun by keel__es_pg_acquire_begin
 * (NULL: one autocommit statement). */
static const char *begin_of(const es_req *r) {
  switch (r->kind) {
  case ES_REQ_APPEND:
    /* lazy (keel__es_transact_lazy): the commit returns before its WAL is
     * flushed; sent with the BEGIN, no round trip of its own */
    return r->lazy ? "BEGIN; SET LOCAL synchronous_commit = off" : "BEGIN";
  case ES_REQ_DELETE: return "BEGIN";
  case ES_REQ_HARD_DELETE: return "BEGIN; SELECT set_config('keel.hard_delete', 'on', true)";
  default: return NULL;
  }
}

/* A request other than an append, in begin_of(r)'s transaction if any. */
static int do_other(keel_es *es, es_pgconn *c, const es_req *r, es_reply *rep) {
  es_pg *pg = es->pg;
  const char *stream = r->streams[0].stream;
  PGresult *res;
  int rc;
  switch (r->kind) {
  case ES_REQ_DELETE: {
    const char *p1[1] = {stream};
    if ((rc = keel__es_pg_query(pg, c, "soft-deleting a stream",
                                "SELECT version, deleted FROM streams WHERE stream = $1 "
                                "FOR UPDATE",
                                1, p1, &res)))
      return rc;
    int64_t version = PQntuples(res) ? val_i64(res, 0, 0) : 0;
    bool deleted = PQntuples(res) && PQgetvalue(res, 0, 1)[0] == 't';
    PQclear(res);
    if (version == 0) return KEEL_ENOENT;
    if (!keel__es_expected_ok(r->streams[0].expected, version, false)) {
      rep->results[0].expected = r->streams[0].expected;
      rep->results[0].actual = version;
      return KEEL_ECONFLICT;
    }
    if (!deleted &&
        (rc = keel__es_pg_query(pg, c, "soft-deleting a stream",
                                "UPDATE streams SET deleted = true, truncated_before = version + 1 "
                                "WHERE stream = $1",
                                1, p1, NULL)))
      return rc;
    /* the snapshot goes with the stream (snapshot.c) */
    if (!deleted &&
        (rc = keel__es_pg_query(pg, c, "soft-deleting a stream's snapshot",
                                "DELETE FROM snapshots WHERE stream = $1", 1, p1, NULL)))
      return rc;
    return keel__es_pg_query(pg, c, "soft-deleting a stream", "COMMIT", -1, NULL, NULL);
  }
  case ES_REQ_TRUNCATE: {
    char before[24];
    i64s(before, r->arg);
    const char *p2[2] = {stream, before};
    if ((rc = keel__es_pg_query(pg, c, "truncating a stream",
                                "UPDATE streams SET truncated_before = "
                                "greatest(truncated_before, $2::bigint) "
                                "WHERE stream = $1 AND version > 0 RETURNING 1",
                                2, p2, &res)))
      return rc;
    int n = PQntuples(res);
    PQclear(res);
    return n ? 0 : KEEL_ENOENT;
  }
  case ES_REQ_HARD_DELETE: {
    const char *p1[1] = {stream};
    if ((rc = keel__es_pg_query(pg, c, "hard-deleting events",
                                "DELETE FROM events WHERE stream = $1", 1, p1, NULL)) ||
        (rc = keel__es_pg_query(pg, c, "hard-deleting a stream",
                                "DELETE FROM streams WHERE stream = $1 RETURNING 1", 1, p1, &res)))
      return rc;
    int n = PQntuples(res);
    PQclear(res);
    if (n == 0) return KEEL_ENOENT;
    if ((rc = keel__es_pg_query(pg, c, "hard-deleting a stream's snapshot",
                                "DELETE FROM snapshots WHERE stream = $1", 1, p1, NULL)))
      return rc;
    if ((rc = keel__es_pg_query(pg, c, "hard delete", "COMMIT", -1, NULL, NULL))) return rc;
    keel_log_warn(NULL, "event store: stream hard-deleted", KEEL_STR("stream", stream));
    return 0;
  }
  case ES_REQ_SET_META: {
    const char *p2[2] = {stream, r->text};
    return keel__es_pg_query(pg, c, "setting a stream's metadata",
                             "INSERT INTO streams (stream, metadata) VALUES ($1, $2::json) "
                             "ON CONFLICT (stream) DO UPDATE SET metadata = excluded.metadata",
                             2, p2, NULL);
  }
  default: return KEEL_EINVAL;
  }
}

static void count(keel_es *es, const es_req *r, const es_reply *rep, double t0) {
  if (es->m_duration) keel_histogram_observe(es->m_duration, keel__es_now_s() - t0);
  keel_counter *ctr = es->m_ok;
  if (rep->rc == KEEL_ECONFLICT) {
    ctr = es->m_conflict;
  } else if (rep->rc != 0) {
    ctr = es->m_error;
  } else {
    size_t dups = 0, n = 0;
    for (size_t i = 0; i < rep->nresults; i++) {
      dups += rep->results[i].duplicate;
      if (!rep->results[i].duplicate) n += r->streams[i].n;
    }
    if (dups) ctr = es->m_duplicate;
    if (es->m_events && n) keel_counter_add(es->m_events, (double)n);
  }
  if (ctr) keel_counter_inc(ctr);
}

/* A committed append wakes this instance's waiters at once and asks the
 * listener to NOTIFY the others (pg_listen.c: outside the append's
 * transaction, see there why). */
static void announce(keel_es *es, const es_reply *rep) {
  int64_t top = 0;
  for (size_t i = 0; i < rep->nresults; i++)
    if (!rep->results[i].duplicate && rep->results[i].last_position > top)
      top = rep->results[i].last_position;
  if (top > 0) keel__es_notify_appended(es, top);
}

int keel__es_pg_write(keel_es *es, const es_req *r, es_reply *rep) {
  double t0 = keel__es_now_s();
  /* exits wait until the connection is back in the pool */
  int held = keel_hold_exits(true);
  es_pgconn *c = NULL;
  int rc;
  bool grouped = keel__es_pg_groupable(r);
  /* before the COMMIT: a delete that commits after this append and empties
   * the tail before its push makes the push a hole (tail.c) */
  uint64_t epoch = keel__es_tail_epoch(es);
  if (grouped) { /* folded with concurrent appends: pg_group.c */
    rc = keel__es_pg_group_append(es, r, rep);
  } else {
    const char *begin = begin_of(r);
    rc = begin ? keel__es_pg_acquire_begin(es, &c, "starting a write", begin)
               : keel__es_pg_acquire(es, &c);
    if (rc == 0) {
      rc = r->kind == ES_REQ_APPEND ? do_append(es, c, r, rep) : do_other(es, c, r, rep);
      if (rc != 0 && PQtransactionStatus(c->conn) != PQTRANS_IDLE)
        keel__es_pg_query(es->pg, c, "rolling back", "ROLLBACK", -1, NULL, NULL);
      keel__es_pg_release(es, c);
    }
  }
  if (rc != 0 && rc != KEEL_ECONFLICT) /* nothing stored: no result says otherwise */
    memset(rep->results, 0, rep->nresults * sizeof rep->results[0]);
  rep->rc = rc;
  if (r->kind == ES_REQ_APPEND && r->nstreams > 0) count(es, r, rep, t0);
  /* committed: the events to the live tail (a group's leader has done it
   * for the group), a delete empties it; then the waiters wake */
  if (rc == 0 && r->kind == ES_REQ_APPEND && !grouped)
    for (size_t k = 0; k < rep->nresults; k++)
      keel__es_tail_push(es, &r->streams[k], &rep->results[k], rep->stored_at, epoch);
  else if (rc == 0 && (r->kind == ES_REQ_DELETE || r->kind == ES_REQ_TRUNCATE ||
                       r->kind == ES_REQ_HARD_DELETE))
    keel__es_tail_reset(es);
  if (rc == 0 && r->kind == ES_REQ_APPEND) announce(es, rep);
  if (held == 0) keel_hold_exits(false);
  return rc;
}
