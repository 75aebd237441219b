/* pg_read.c - the read calls on PostgreSQL.
 *
 * read_stream is one REPEATABLE READ, READ ONLY transaction on a pooled
 * connection, so that what it checks (the stream's row) and what it returns
 * come from one snapshot, as on SQLite. read_all needs no transaction: each
 * page is one statement whose snapshot covers its check for hidden streams,
 * its horizon and its rows; a page costs one round trip, as a raw paged
 * SELECT does (it cost four with BEGIN, a separate probe and COMMIT). Rows arrive as text and are
 * decoded in the calling process (read.c's keel__es_evec_add: the texts are copied, payloads are
 * parsed only when used), and the upcasters run there too (keel__es_upcast), on every path.
 *
 * The horizon. Positions are assigned before commit, so on a server with
 * many writers a transaction holding a lower position may commit after one
 * holding a higher position: a reader that returned the higher one and moved
 * its cursor past it would never see the lower one. read_all therefore
 * returns only the events whose transaction id (events.tx) is below
 * pg_snapshot_xmin(pg_current_snapshot()), the oldest transaction still
 * running: every transaction below it has ended, committed or rolled back.
 * And because keel_es_reserve (pg_schema.c) hands out transaction ids and
 * positions together, an event not yet visible always has a higher
 * transaction id, hence a higher position, than every event returned: the
 * answer is a gap-free prefix of the order. A rolled-back append ends its
 * transaction and so never holds the feed; a transaction left open (by any
 * client of the database, not only appends) does, until it ends.
 */
#include <stdlib.h>
#include <string.h>

#include "es/es_internal.h"
#include "keel/error.h"
#include "keel/log.h"

#define EVENT_COLS                                                                                 \
  "e.position, e.stream, e.version, e.id::text, e.type, e.schema_version, e.payload::text, "       \
  "e.metadata::text, e.occurred_at, e.stored_at"

/* A bigint column's text as an int64: the server writes plain decimal
 * ("-"? digits), so a digit loop does, at a fraction of strtoll's cost (five
 * columns per event read). */
static int64_t val_i64(const PGresult *r, int row, int col) {
  const char *s = PQgetvalue(r, row, col);
  bool neg = *s == '-';
  uint64_t v = 0;
  for (s += neg; *s >= '0' && *s <= '9'; s++)
    v = v * 10 + (uint64_t)(*s - '0');
  return neg ? (int64_t)(0 - v) : (int64_t)v;
}

/* Decodes r's events into out; *n (may be NULL) gets how many. A row whose
 * position is NULL is read_all's row for the head alone (no event). */
static int decode(const PGresult *r, es_evec *out, size_t *n) {
  int rows = PQntuples(r);
  if (n) *n = 0;
  for (int i = 0; i < rows; i++) {
    if (PQgetisnull(r, i, 0)) continue;
    if (n) (*n)++;
    bool no_meta = PQgetisnull(r, i, 7);
    int rc = keel__es_evec_add(
        out, val_i64(r, i, 0), PQgetvalue(r, i, 1), val_i64(r, i, 2), PQgetvalue(r, i, 3),
        PQgetvalue(r, i, 4), (int)val_i64(r, i, 5), PQgetvalue(r, i, 6),
        (size_t)PQgetlength(r, i, 6), no_meta ? NULL : PQgetvalue(r, i, 7),
        no_meta ? 0 : (size_t)PQgetlength(r, i, 7), val_i64(r, i, 8), val_i64(r, i, 9));
    if (rc) return rc;
  }
  return 0;
}

static void i64s(char out[24], int64_t v) {
  snprintf(out, 24, "%lld", (long long)v);
}

static int read_stream(es_pg *pg, es_pgconn *c, es_read_call *rc_) {
  const char *p1[1] = {rc_->stream};
  PGresult *r;
  int rc = keel__es_pg_query(pg, c, "reading a stream",
                             "SELECT version, deleted, truncated_before FROM streams "
                             "WHERE stream = $1",
                             1, p1, &r);
  if (rc) return rc;
  bool found = PQntuples(r) > 0;
  int64_t version = found ? val_i64(r, 0, 0) : 0, truncated = found ? val_i64(r, 0, 2) : 0;
  bool deleted = found && PQgetvalue(r, 0, 1)[0] == 't';
  PQclear(r);
  if (!found || deleted || version == 0) return KEEL_ENOENT;
  const keel_es_read_opts *o = &rc_->ro;
  int64_t lo, hi;
  keel__es_read_range(o, truncated, &lo, &hi);
  char slo[24], shi[24], slim[24];
  i64s(slo, lo);
  i64s(shi, hi);
  i64s(slim, (int64_t)rc_->limit);
  const char *p4[4] = {rc_->stream, slo, shi, slim};
  rc = keel__es_pg_query(pg, c, "reading a stream",
                         o->backwards ? "SELECT " EVENT_COLS " FROM events e WHERE e.stream = $1 "
                                        "AND e.version BETWEEN $2::bigint AND $3::bigint "
                                        "ORDER BY e.version DESC LIMIT $4::bigint"
                                      : "SELECT " EVENT_COLS " FROM events e WHERE e.stream = $1 "
                                        "AND e.version BETWEEN $2::bigint AND $3::bigint "
                                        "ORDER BY e.version ASC LIMIT $4::bigint",
                         4, p4, &r);
  if (rc) return rc;
  rc = decode(r, &rc_->ev, NULL);
  PQclear(r);
  if (rc == 0) rc = keel__es_upcast_page(rc_->es, &rc_->ev, 0, NULL, NULL);
  return rc;
}

/* A text[] literal of the strings: {"a","b"} with " and \ escaped. */
static char *text_array(const char *const *a, size_t na, const char **b, size_t nb) {
  size_t cap = 3;
  for (size_t i = 0; i < na + nb; i++)
    cap += 2 * strlen(i < na ? a[i] : b[i - na]) + 3;
  char *s = malloc(cap), *p = s;
  if (!s) return NULL;
  *p++ = '{';
  for (size_t i = 0; i < na + nb; i++) {
    const char *t = i < na ? a[i] : b[i - na];
    if (i) *p++ = ',';
    *p++ = '"';
    for (; *t; t++) {
      if (*t == '"' || *t == '\\') *p++ = '\\';
      *p++ = *t;
    }
    *p++ = '"';
  }
  *p++ = '}';
  *p = 0;
  return s;
}

/* read_all's end: the highest position below the horizon, in the page's
 * own statement (one snapshot), so that a page that comes back short says
 * how far it looked (keel_es_events.scanned) even when its filter matched
 * nothing. The rows above the horizon are few (transactions in flight): the
 * backward scan of the primary key stops at the first row below it. The
 * page's rows come from a LATERAL join on this one row, so that a page
 * with no event still answers one row, with the head and NULL events. */
#define TOP_SQL                                                                                    \
  "SELECT coalesce((SELECT position FROM events WHERE tx < "                                       \
  "pg_snapshot_xmin(pg_current_snapshot()) ORDER BY position DESC LIMIT 1), 0) AS top"

static int read_all(es_pg *pg, es_pgconn *c, es_read_call *call) {
  const keel_es_filter *f = call->f;
  PGresult *r;
  int rc = 0;

  size_t nup = 0, ntypes = 0;
  const char **uptypes = NULL;
  bool post_filter = false;
  if (f && f->types) {
    uptypes = keel__es_upcaster_types(call->es, &nup);
    post_filter = nup > 0;
    while (f->types[ntypes])
      ntypes++;
  }
  char sql[3072]; /* at most ~1300 bytes with every filter */
  int len = snprintf(sql, sizeof sql,
                     "SELECT e.*, t.top FROM (" TOP_SQL ") t LEFT JOIN LATERAL (SELECT " EVENT_COLS
                     " FROM events e WHERE e.position > $1::bigint AND e.position <= t.top "
                     "AND e.tx < pg_snapshot_xmin(pg_current_snapshot())");
  const char *params[8];
  char parts_s[24], part_s[24];
  char *types_lit = NULL;
  int np = 2;
  if (f && f->types) {
    if (!(types_lit = text_array(f->types, ntypes, uptypes, nup))) {
      free(uptypes);
      return KEEL_ENOMEM;
    }
    params[np++] = types_lit;
    len += snprintf(sql + len, sizeof sql - (size_t)len, " AND e.type = ANY($%d::text[])", np);
  }
  if (f && f->stream_prefix) {
    params[np++] = f->stream_prefix;
    len += snprintf(sql + len, sizeof sql - (size_t)len, " AND left(e.stream, length($%d)) = $%d",
                    np, np);
  }
  if (f && f->category) {
    params[np++] = f->category;
    len += snprintf(sql + len, sizeof sql - (size_t)len,
                    " AND (e.stream = $%d OR left(e.stream, length($%d) + 1) = $%d || '-')", np, np,
                    np);
  }
  if (f && f->tenant) {
    params[np++] = f->tenant;
    len += snprintf(sql + len, sizeof sql - (size_t)len, " AND e.metadata->>'tenant' = $%d", np);
  }
  if (f && f->partitions) {
    /* NULL: a row an older keel wrote beside this one; the caller sorts it */
    i64s(parts_s, (int64_t)f->partitions);
    i64s(part_s, (int64_t)f->partition);
    params[np++] = parts_s;
    params[np++] = part_s;
    len += snprintf(sql + len, sizeof sql - (size_t)len,
                    " AND (e.stream_hash IS NULL OR e.stream_hash %% $%d::bigint = $%d::bigint)",
                    np - 1, np);
  }
  /* Hidden events, in the statement itself: the uncorrelated EXISTS is an
   * InitPlan, run once (the streams_hidden partial index answers it), and
   * only when it finds something does the per-row NOT EXISTS run (OR
   * evaluates its arms in order). One statement, one snapshot: the probe,
   * the horizon and the rows agree without a transaction around them. */
  len += snprintf(sql + len, sizeof sql - (size_t)len,
                  " AND (NOT EXISTS (SELECT 1 FROM streams WHERE deleted OR truncated_before > 1)"
                  " OR NOT EXISTS (SELECT 1 FROM streams s WHERE s.stream = e.stream AND "
                  "(s.deleted OR e.version < s.truncated_before)))");
  snprintf(sql + len, sizeof sql - (size_t)len,
           " ORDER BY e.position LIMIT $2::bigint) e ON true ORDER BY e.position");

  int64_t cursor = call->after, top = 0;
  bool short_page = false; /* the last statement found fewer rows than asked: the end */
  char scur[24], slim[24];
  while (rc == 0 && call->ev.n < call->limit) {
    size_t want = call->limit - call->ev.n, start = call->ev.n;
    i64s(scur, cursor);
    i64s(slim, (int64_t)want);
    params[0] = scur;
    params[1] = slim;
    if ((rc = keel__es_pg_query(pg, c, "reading events", sql, np, params, &r))) break;
    size_t rows = 0;
    if (PQntuples(r) > 0) top = val_i64(r, 0, 10);
    rc = decode(r, &call->ev, &rows);
    PQclear(r);
    short_page = rows < want;
    if (rc || rows == 0) break;
    cursor = call->ev.v[start + rows - 1].position;
    rc = keel__es_upcast_page(call->es, &call->ev, start, post_filter ? f->types : NULL, f);
    if (rc) break;
    if (!post_filter || rows < want) break;
  }
  call->scanned = cursor;
  if (rc == 0 && short_page && top > cursor) call->scanned = top;
  free(types_lit);
  free(uptypes);
  return rc;
}

static int info(es_pg *pg, es_pgconn *c, es_read_call *call) {
  const char *p1[1] = {call->stream};
  PGresult *r;
  int rc = keel__es_pg_query(pg, c, "reading a stream's info",
                             "SELECT version, deleted, truncated_before, metadata::text "
                             "FROM streams WHERE stream = $1",
                             1, p1, &r);
  if (rc) return rc;
  if (PQntuples(r) == 0) {
    PQclear(r);
    return KEEL_ENOENT;
  }
  call->info->version = val_i64(r, 0, 0);
  call->info->deleted = PQgetvalue(r, 0, 1)[0] == 't';
  call->info->truncated_before = val_i64(r, 0, 2);
  call->info->metadata =
      PQgetisnull(r, 0, 3) ? json_object() : json_loads(PQgetvalue(r, 0, 3), 0, NULL);
  if (!call->info->metadata) call->info->metadata = json_object();
  PQclear(r);
  return 0;
}

static int head(es_pg *pg, es_pgconn *c, es_read_call *call) {
  PGresult *r;
  int rc = keel__es_pg_query(pg, c, "reading the head",
                             "SELECT coalesce(max(position), 0) FROM events", 0, NULL, &r);
  if (rc) return rc;
  call->head = val_i64(r, 0, 0);
  PQclear(r);
  return 0;
}

int keel__es_pg_read(keel_es *es, es_read_call *call) {
  es_pg *pg = es->pg;
  int held = keel_hold_exits(true);
  es_pgconn *c = NULL;
  /* read_stream checks the stream's row, then reads its events: one
   * snapshot for both. read_all is one statement per page (above). */
  bool tx = call->kind == R_STREAM;
  int rc = tx ? keel__es_pg_acquire_begin(es, &c, "starting a read",
                                          "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
              : keel__es_pg_acquire(es, &c);
  if (rc == 0) {
    switch (call->kind) {
    case R_STREAM: rc = read_stream(pg, c, call); break;
    case R_ALL: rc = read_all(pg, c, call); break;
    case R_INFO: rc = info(pg, c, call); break;
    case R_HEAD: rc = head(pg, c, call); break;
    }
    if (tx && PQtransactionStatus(c->conn) != PQTRANS_IDLE) {
      int rc2 =
          keel__es_pg_query(pg, c, "ending a read", rc ? "ROLLBACK" : "COMMIT", -1, NULL, NULL);
      if (rc == 0) rc = rc2;
    }
    keel__es_pg_release(es, c);
  }
  if (held == 0) keel_hold_exits(false);
  call->rc = rc;
  return rc;
}
