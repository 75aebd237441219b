/* pg_group.c - group commit on PostgreSQL: concurrent simple appends folded
 * into one transaction.
 *
 * Why. An append on its own is six statements (BEGIN, keel_es_reserve, the
 * stream's lock, the insert, the version update, COMMIT), six round trips
 * from the calling process and a commit each. Under many concurrent
 * single-event appends that costs several times what a raw single-row
 * INSERT costs, on the client and on the server. Folding the appends
 * waiting at one moment into one transaction makes a group of any size cost
 * the same six statements: set-based ones.
 *
 * What is folded. "Simple" appends only: one stream, no caller-given event
 * ids (so no idempotency lookup is needed: the ids are fresh random UUIDs).
 * append_multi, appends that name their ids, keel_es_transact's appends
 * (the service's function runs in their transaction), and every other write keep the
 * one-transaction-per-call path of pg_write.c.
 *
 * How. Flat combining. An append that finds fewer than max_leaders groups
 * running leads one: it takes itself and every append queued (up to
 * group_max_events events), checks a connection out and runs
 *   BEGIN
 *   SELECT keel_es_reserve(N) after    every position of the group, with the
 *   the streams' turns                 (the turns: a transaction-scoped advisory
 *                                      lock per stream, see below; one statement)
 *                                      transaction's id (the xid8 horizon's
 *                                      rule, decision 0010: ids and positions
 *                                      assigned together, before any write)
 *   INSERT INTO streams ... SELECT the distinct streams, sorted (a fixed lock
 *          order between groups) ON CONFLICT DO UPDATE ... RETURNING version,
 *          deleted, and whether the row is new
 *   each append's expected-version check, in queue order, in this process
 *          (a second append to a stream sees the first one's new version); a
 *          conflict is that append's result alone
 *   one INSERT of every passing append's rows, one UPDATE of the versions,
 *   a DELETE of stream rows this group created for appends that all
 *          conflicted (so they leave nothing behind), COMMIT
 * and replies to each. An append that finds max_leaders groups running
 * queues itself (on its stack; its exits are held by pg_write.c) and waits
 * for one reply: its result, or the leadership, handed to the first queued
 * append by a leader that finishes while appends wait. A conflicting append
 * leaves holes in the positions (its reserved positions are not used), as a
 * conflict does on the other path. If the transaction fails (the server, the
 * connection), every append of the group that passed its check gets the
 * error and nothing of the group is stored, as on SQLite.
 *
 * A stream's versions follow its positions. Positions are reserved before
 * the stream's row is locked (the horizon needs the reserve first, before
 * anything assigns the transaction an id), so without more, a transaction
 * that reserved later could lock the stream first and give a higher
 * version a lower position: read_all would then show that stream's events
 * out of version order. keel__es_pg_turns_and_reserve takes each stream's turn
 * before the reserve, with advisory locks that assign no transaction id,
 * so whoever reserves first for a stream also writes it first. pg_write.c's
 * appends take the same turns.
 */
#include <stdlib.h>
#include <string.h>

#include "es/es_internal.h"
#include "keel/error.h"
#include "keel/log.h"

/* How many groups may run at once: half the pool, at least two. One group
 * committing while the next gathers keeps the server busy; more let appends
 * pass a group that waits (a stream row another client holds locked), at
 * the price of smaller groups. */
static size_t max_leaders(const es_pg *pg) {
  return pg->max / 2 > 2 ? pg->max / 2 : 2;
}

/* ---- a stream's turn ------------------------------------------------------------------ */

int keel__es_pg_turns_and_reserve(es_pg *pg, es_pgconn *c, const char *const *streams, size_t n,
                                  size_t events, int64_t *first) {
  es_sbuf b = {0};
  keel__es_sb_str(&b, "[");
  for (size_t i = 0; i < n; i++) {
    if (i) keel__es_sb_str(&b, ",");
    keel__es_sb_json_string(&b, streams[i]);
  }
  keel__es_sb_str(&b, "]");
  if (b.oom) {
    free(b.p);
    return KEEL_ENOMEM;
  }
  char nev[24];
  snprintf(nev, sizeof nev, "%zu", events);
  const char *params[2] = {b.p, nev};
  PGresult *r = NULL;
  /* the turns: transaction-scoped advisory locks (they take no transaction
   * id), keyed by this schema's streams table and the name's hash, in hash
   * order (one order for every transaction: no deadlock; two names of one
   * hash just take turns). The aggregate ends before the outer row, and so
   * keel_es_reserve, is evaluated: turns first, in one round trip. */
  int rc = keel__es_pg_query(pg, c, "reserving positions",
                             "SELECT keel_es_reserve($2::integer) FROM "
                             "(SELECT count(pg_advisory_xact_lock("
                             "'streams'::regclass::oid::integer, h)) FROM "
                             "(SELECT DISTINCT hashtext(value) AS h "
                             "FROM json_array_elements_text($1::json) ORDER BY 1) s) t",
                             2, params, &r);
  free(b.p);
  if (rc == 0) *first = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
  PQclear(r);
  return rc;
}

/* ---- the queue -------------------------------------------------------------------- */

bool keel__es_pg_groupable(const es_req *r) {
  /* keel_es_transact's appends run the service's function inside their
   * transaction: never folded */
  if (r->kind != ES_REQ_APPEND || r->nstreams != 1 || r->tx_fn) return false;
  for (size_t k = 0; k < r->streams[0].n; k++)
    if (r->streams[0].rows[k].given_id) return false;
  return true;
}

/* Takes `first` plus queued appends, up to max events, into a batch (array
 * of at most cap). Under pg->gmu. */
static size_t take_batch(es_pg *pg, es_pggm *first, es_pggm **batch, size_t cap, size_t max) {
  size_t n = 0, events = first->s->n;
  batch[n++] = first;
  while (pg->gq && n < cap && events + pg->gq->s->n <= max) {
    es_pggm *m = pg->gq;
    pg->gq = m->next;
    if (!pg->gq) pg->gq_tail = NULL;
    events += m->s->n;
    batch[n++] = m;
  }
  return n;
}

/* ---- one group -------------------------------------------------------------------- */

typedef struct gstream {
  const char *name;
  int64_t version;
  bool deleted, created, used;
} gstream;

static int gs_cmp(const void *a, const void *b) {
  return strcmp(((const gstream *)a)->name, ((const gstream *)b)->name);
}

static gstream *gs_find(gstream *v, size_t n, const char *name) {
  gstream key = {.name = name};
  return bsearch(&key, v, n, sizeof *v, gs_cmp);
}

/* The distinct streams of the batch, sorted; *n of them. NULL: ENOMEM. */
static gstream *distinct_streams(es_pggm **batch, size_t nb, size_t *n) {
  gstream *v = calloc(nb, sizeof *v);
  if (!v) return NULL;
  for (size_t i = 0; i < nb; i++)
    v[i].name = batch[i]->s->stream;
  qsort(v, nb, sizeof *v, gs_cmp);
  size_t k = 0;
  for (size_t i = 0; i < nb; i++)
    if (k == 0 || strcmp(v[k - 1].name, v[i].name) != 0) v[k++] = v[i];
  *n = k;
  return v;
}

static int lock_streams(es_pg *pg, es_pgconn *c, gstream *gs, size_t ns) {
  es_sbuf b = {0};
  keel__es_sb_str(&b, "[");
  for (size_t i = 0; i < ns; i++) {
    if (i) keel__es_sb_str(&b, ",");
    keel__es_sb_json_string(&b, gs[i].name);
  }
  keel__es_sb_str(&b, "]");
  if (b.oom) {
    free(b.p);
    return KEEL_ENOMEM;
  }
  const char *params[1] = {b.p};
  PGresult *r;
  /* xmax = 0: the row was inserted by this statement, not updated */
  int rc = keel__es_pg_query(pg, c, "locking streams (group)",
                             "INSERT INTO streams AS s (stream) "
                             "SELECT value FROM json_array_elements_text($1::json) "
                             "ORDER BY value COLLATE \"C\" "
                             "ON CONFLICT (stream) DO UPDATE SET stream = s.stream "
                             "RETURNING s.stream, s.version, s.deleted, s.xmax = 0",
                             1, params, &r);
  free(b.p);
  if (rc) return rc;
  for (int i = 0; i < PQntuples(r); i++) {
    gstream *g = gs_find(gs, ns, PQgetvalue(r, i, 0));
    if (!g) continue;
    g->version = strtoll(PQgetvalue(r, i, 1), NULL, 10);
    g->deleted = PQgetvalue(r, i, 2)[0] == 't';
    g->created = PQgetvalue(r, i, 3)[0] == 't';
  }
  PQclear(r);
  return 0;
}

/* Each append's expected-version check in queue order, its positions and
 * versions; the rows of the passing ones into rows (a JSON array). */
static void plan(es_pggm **batch, size_t nb, gstream *gs, size_t ns, int64_t pos, es_sbuf *rows,
                 size_t *npass) {
  keel__es_sb_str(rows, "[");
  bool first_row = true;
  *npass = 0;
  for (size_t i = 0; i < nb; i++) {
    es_pggm *m = batch[i];
    const es_stream_req *s = m->s;
    gstream *g = gs_find(gs, ns, s->stream);
    memset(m->res, 0, sizeof *m->res);
    if (!keel__es_expected_ok(s->expected, g->version, g->deleted)) {
      m->rc = KEEL_ECONFLICT;
      m->res->expected = s->expected;
      m->res->actual = g->version;
      pos += (int64_t)s->n; /* a hole, as a conflict leaves on the other path */
      continue;
    }
    m->rc = 0;
    m->res->first_position = pos;
    uint32_t hash = keel__es_stream_hash(s->stream);
    for (size_t k = 0; k < s->n; k++, pos++) {
      const es_row *e = &s->rows[k];
      keel__es_sb_str(rows, first_row ? "{\"p\":" : ",{\"p\":");
      first_row = false;
      keel__es_sb_i64(rows, pos);
      keel__es_sb_str(rows, ",\"s\":");
      keel__es_sb_json_string(rows, s->stream);
      keel__es_sb_str(rows, ",\"h\":");
      keel__es_sb_i64(rows, (int64_t)hash);
      keel__es_sb_str(rows, ",\"v\":");
      keel__es_sb_i64(rows, g->version + (int64_t)k + 1);
      keel__es_sb_str(rows, ",\"id\":\"");
      keel__es_sb_str(rows, e->id);
      keel__es_sb_str(rows, "\",\"t\":");
      keel__es_sb_json_string(rows, e->type);
      keel__es_sb_str(rows, ",\"sv\":");
      keel__es_sb_i64(rows, e->schema_version);
      keel__es_sb_str(rows, ",\"oa\":");
      keel__es_sb_i64(rows, e->occurred_at);
      keel__es_sb_str(rows, ",\"pl\":");
      keel__es_sb_str(rows, e->payload);
      keel__es_sb_str(rows, ",\"md\":");
      keel__es_sb_str(rows, e->metadata ? e->metadata : "null");
      keel__es_sb_str(rows, "}");
    }
    m->res->last_position = pos - 1;
    g->version += (int64_t)s->n;
    g->deleted = false;
    g->used = true;
    m->res->version = g->version;
    (*npass)++;
  }
  keel__es_sb_str(rows, "]");
}

/* The new versions of the streams the group wrote, and the rows it created
 * for nothing (every append to them conflicted), as JSON arrays. */
static void stream_updates(gstream *gs, size_t ns, es_sbuf *up, es_sbuf *unused) {
  keel__es_sb_str(up, "[");
  keel__es_sb_str(unused, "[");
  bool fu = true, fn = true;
  for (size_t i = 0; i < ns; i++) {
    if (gs[i].used) {
      keel__es_sb_str(up, fu ? "{\"s\":" : ",{\"s\":");
      fu = false;
      keel__es_sb_json_string(up, gs[i].name);
      keel__es_sb_str(up, ",\"v\":");
      keel__es_sb_i64(up, gs[i].version);
      keel__es_sb_str(up, "}");
    } else if (gs[i].created) {
      if (!fn) keel__es_sb_str(unused, ",");
      fn = false;
      keel__es_sb_json_string(unused, gs[i].name);
    }
  }
  keel__es_sb_str(up, "]");
  keel__es_sb_str(unused, "]");
}

static int write_group(es_pg *pg, es_pgconn *c, gstream *gs, size_t ns, const es_sbuf *rows,
                       size_t npass, int64_t stored_at) {
  int rc = 0;
  if (npass > 0) {
    char now[24];
    snprintf(now, sizeof now, "%lld", (long long)stored_at);
    const char *params[2] = {now, rows->p};
    rc = keel__es_pg_query(
        pg, c, "inserting events (group)",
        "INSERT INTO events (position, stream, version, id, type, schema_version, payload, "
        "metadata, occurred_at, stored_at, stream_hash) "
        "SELECT r.p, r.s, r.v, r.id, r.t, r.sv, r.pl, r.md, r.oa, $1::bigint, r.h "
        "FROM json_to_recordset($2::json) AS r(p bigint, s text, h bigint, v bigint, id uuid, "
        "t text, sv integer, oa bigint, pl json, md json)",
        2, params, NULL);
    if (rc) return rc;
  }
  es_sbuf up = {0}, unused = {0};
  stream_updates(gs, ns, &up, &unused);
  if (up.oom || unused.oom) rc = KEEL_ENOMEM;
  if (rc == 0 && npass > 0) {
    const char *params[1] = {up.p};
    rc = keel__es_pg_query(pg, c, "updating stream versions (group)",
                           "UPDATE streams AS s SET version = u.v, deleted = false "
                           "FROM json_to_recordset($1::json) AS u(s text, v bigint) "
                           "WHERE s.stream = u.s",
                           1, params, NULL);
  }
  if (rc == 0 && strcmp(unused.p, "[]") != 0) {
    const char *params[1] = {unused.p};
    rc = keel__es_pg_query(pg, c, "removing unused stream rows (group)",
                           "DELETE FROM streams WHERE stream IN "
                           "(SELECT value FROM json_array_elements_text($1::json)) "
                           "AND version = 0 AND metadata IS NULL",
                           1, params, NULL);
  }
  free(up.p);
  free(unused.p);
  return rc;
}

/* Runs one group on a pooled connection; every member's rc and res are set. */
static void run_group(keel_es *es, es_pggm **batch, size_t nb) {
  es_pg *pg = es->pg;
  size_t events = 0;
  for (size_t i = 0; i < nb; i++)
    events += batch[i]->s->n;
  size_t ns = 0;
  gstream *gs = distinct_streams(batch, nb, &ns);
  es_sbuf rows = {0};
  size_t npass = 0;
  es_pgconn *c = NULL;
  int64_t stored_at = keel__es_unix_ms();
  int rc = gs ? keel__es_pg_acquire_begin(es, &c, "starting an append (group)", NULL) : KEEL_ENOMEM;
  if (rc == 0) {
    const char **names = malloc(ns * sizeof *names);
    for (size_t i = 0; names && i < ns; i++)
      names[i] = gs[i].name;
    int64_t pos = 0;
    rc = names ? 0 : KEEL_ENOMEM;
    if (rc == 0) rc = keel__es_pg_turns_and_reserve(pg, c, names, ns, events, &pos);
    free(names);
    if (rc == 0) rc = lock_streams(pg, c, gs, ns);
    if (rc == 0) {
      plan(batch, nb, gs, ns, pos, &rows, &npass);
      rc = rows.oom ? KEEL_ENOMEM : write_group(pg, c, gs, ns, &rows, npass, stored_at);
    }
    uint64_t epoch = keel__es_tail_epoch(es); /* before the COMMIT: see pg_write.c */
    if (rc == 0)
      rc = keel__es_pg_query(pg, c, "committing an append (group)", "COMMIT", -1, NULL, NULL);
    /* committed: the group's events to the live tail, in position order
     * (the queue's), before any member wakes its waiters */
    for (size_t i = 0; rc == 0 && i < nb; i++)
      if (batch[i]->rc == 0) keel__es_tail_push(es, batch[i]->s, batch[i]->res, stored_at, epoch);
    if (rc != 0 && PQtransactionStatus(c->conn) != PQTRANS_IDLE)
      keel__es_pg_query(pg, c, "rolling back (group)", "ROLLBACK", -1, NULL, NULL);
    keel__es_pg_release(es, c);
  }
  if (es->m_group) keel_histogram_observe(es->m_group, (double)nb);
  for (size_t i = 0; i < nb; i++) {
    es_pggm *m = batch[i];
    if (rc != 0 && m->rc != KEEL_ECONFLICT) { /* nothing stored */
      m->rc = rc;
      memset(m->res, 0, sizeof *m->res);
    }
  }
  free(rows.p);
  free(gs);
}

/* ---- the calls -------------------------------------------------------------------- */

/* Marks m done (or handed the leadership) and wakes it; pid and ref are read
 * under the lock, as m lives on its owner's stack. */
static void wake(es_pg *pg, es_pggm *m, bool lead) {
  pthread_mutex_lock(&pg->gmu);
  keel_pid_t pid = m->pid;
  keel_ref_t ref = m->ref;
  if (lead)
    m->lead = true;
  else
    m->done = true;
  pthread_mutex_unlock(&pg->gmu);
  keel_reply(pid, ref, keel_msg_new(0, 0));
}

int keel__es_pg_group_append(keel_es *es, const es_req *r, es_reply *rep) {
  es_pg *pg = es->pg;
  es_pggm me = {.pid = keel_self(),
                .ref = keel_make_ref(),
                .s = &r->streams[0],
                .res = &rep->results[0],
                .rc = KEEL_EIO};
  int rc = keel_await_ref(me.ref);
  if (rc) return rc;
  pthread_mutex_lock(&pg->gmu);
  bool lead = (size_t)pg->nleaders < max_leaders(pg);
  if (lead) {
    pg->nleaders++;
  } else { /* queued: the queue is non-empty only while every leader runs */
    if (pg->gq_tail)
      pg->gq_tail->next = &me;
    else
      pg->gq = &me;
    pg->gq_tail = &me;
  }
  pthread_mutex_unlock(&pg->gmu);
  if (!lead) {
    keel_msg_t *m = NULL;
    rc = keel_await(me.ref, &m, KEEL_INFINITY);
    keel_msg_free(m);
    if (rc) return rc; /* not reached: one reply always comes */
    pthread_mutex_lock(&pg->gmu);
    bool done = me.done;
    pthread_mutex_unlock(&pg->gmu);
    if (done) return me.rc;
    /* handed the leadership: we are off the queue, lead a group with us in it */
  } else {
    keel_await_cancel(me.ref);
  }
  es_pggm *batch[256]; /* appends per group; the rest wait for the next */
  size_t max = es->group_max_events ? es->group_max_events : 10000;
  pthread_mutex_lock(&pg->gmu);
  size_t nb = take_batch(pg, &me, batch, sizeof batch / sizeof batch[0], max);
  pthread_mutex_unlock(&pg->gmu);
  run_group(es, batch, nb);
  for (size_t i = 1; i < nb; i++)
    wake(pg, batch[i], false);
  /* pass the leadership on to the first waiting append, or step down */
  pthread_mutex_lock(&pg->gmu);
  es_pggm *next = pg->gq;
  if (next) {
    pg->gq = next->next;
    if (!pg->gq) pg->gq_tail = NULL;
  } else {
    pg->nleaders--;
  }
  pthread_mutex_unlock(&pg->gmu);
  if (next) wake(pg, next, true);
  return me.rc;
}
