/* writer.c - the event store's one writer: a thread, its queue, group commit.
 *
 * SQLite has one writer at a time per file, so keel gives it exactly one: a
 * plain pthread that owns the write connection. A process that writes (an
 * append, a delete, stream metadata) encodes its request on its own stack
 * (append.c), hands the heap request to this thread through a
 * mutex-and-condvar queue and waits for the reply with keel_await: only that
 * process waits, its scheduler runs others meanwhile. The thread replies with
 * keel_reply, which any thread may call; a reply to a caller that is gone is
 * dropped by the runtime.
 *
 * Group commit. When the thread wakes it takes every request waiting, up to
 * group_max_events events (always at least one request), and runs them in one
 * IMMEDIATE transaction, each inside its own SAVEPOINT: a request's
 * expected-version check, idempotency check and inserts see the effects of
 * the requests before it in the group, and a conflict or any error rolls back
 * only that request's savepoint. Then one COMMIT (with synchronous=FULL, one
 * fsync of the WAL for the whole group), then a reply to each request: no
 * request is answered before its transaction is durable. Under load the
 * queue fills while a commit's fsync runs, so the groups grow with the
 * concurrency instead of every append paying its own fsync. A COMMIT that
 * fails turns every success of the group into KEEL_EIO (nothing of the
 * group is stored).
 *
 * Order. Positions are the events table's AUTOINCREMENT rowid, assigned by
 * this one thread inside the transactions it commits one after the other:
 * position order is commit order, and a reader's snapshot holds a prefix of
 * it. That is why read_all never skips on SQLite without any extra device.
 *
 * Lazy requests (keel__es_transact_lazy: the jobs' claims and completions)
 * need no fsync of their own. The thread takes them out of the group it
 * took, in their order, and commits them first, in a transaction of their
 * own with synchronous=NORMAL (WAL: written to the OS, not fsync'd), then
 * the durable rest with synchronous=FULL as before. Moving them ahead of
 * durable requests queued before them is safe: every request in the queue
 * is a different process's, still waiting, so no caller has seen any of
 * them happen. A lazy request thus does not wait for the durable group's
 * fsync, and the durable group's fsync makes the lazy commit before it
 * durable too (the WAL is written in commit order). On a store opened with
 * KEEL_ES_SYNC_NORMAL every group is lazy and nothing is split.
 *
 * After each commit that stored events the thread wakes the processes
 * waiting in keel_es_wait for a position below them (notify.c).
 *
 * Requests of kind ES_REQ_FN (reads of an in-memory store, store.c) run alone,
 * outside any transaction, in queue order.
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "es/es_internal.h"
#include "keel/error.h"
#include "keel/log.h"

/* ---- requests -------------------------------------------------------------- */

es_req *keel__es_req_new(es_req_kind kind, const char *stream) {
  es_req *r = calloc(1, sizeof *r);
  if (!r) return NULL;
  r->kind = kind;
  if (stream) {
    r->streams = calloc(1, sizeof *r->streams);
    if (!r->streams || !(r->streams[0].stream = strdup(stream))) {
      free(r->streams);
      free(r);
      return NULL;
    }
    r->nstreams = 1;
  }
  return r;
}

void keel__es_req_free(es_req *r) {
  if (!r) return;
  for (size_t i = 0; i < r->nstreams; i++) {
    es_stream_req *s = &r->streams[i];
    for (size_t k = 0; k < s->n && s->rows; k++) {
      free(s->rows[k].type);
      free(s->rows[k].payload);
      free(s->rows[k].metadata);
    }
    free(s->rows);
    free(s->stream);
  }
  free(r->streams);
  free(r->text);
  free(r);
}

int keel__es_submit(keel_es *es, es_req *req, keel_msg_t **out) {
  *out = NULL;
  req->pid = keel_self();
  if (req->pid == 0) {
    keel__es_req_free(req);
    return KEEL_ENOTPROC;
  }
  req->ref = keel_make_ref();
  int rc = keel_await_ref(req->ref);
  if (rc) {
    keel__es_req_free(req);
    return rc;
  }
  keel_ref_t ref = req->ref;
  req->t0 = keel__es_now_s();
  pthread_mutex_lock(&es->mu);
  bool stopping = es->stopping;
  if (!stopping) {
    req->next = NULL;
    if (es->tail)
      es->tail->next = req;
    else
      es->head = req;
    es->tail = req;
    pthread_cond_signal(&es->cv);
  }
  pthread_mutex_unlock(&es->mu);
  if (stopping) {
    keel_await_cancel(ref);
    keel__es_req_free(req);
    return KEEL_ESTATE;
  }
  /* req is the writer's now. */
  keel_msg_t *m = NULL;
  rc = keel_await(ref, &m, KEEL_INFINITY);
  if (rc) return rc;
  if (keel_msg_kind_of(m) != KEEL_MSG_REPLY || keel_msg_size(m) < sizeof(es_reply)) {
    keel_msg_free(m);
    return KEEL_EIO;
  }
  *out = m;
  return 0;
}

/* ---- one append ---------------------------------------------------------------- */

static int step_done(keel_es *es, sqlite3_stmt *st, const char *what) {
  int src = sqlite3_step(st);
  sqlite3_reset(st);
  if (src == SQLITE_DONE || src == SQLITE_ROW) return 0;
  if (sqlite3_extended_errcode(es->wdb) == SQLITE_CONSTRAINT_UNIQUE ||
      sqlite3_extended_errcode(es->wdb) == SQLITE_CONSTRAINT_PRIMARYKEY)
    return KEEL_EEXIST;
  return keel__es_sqlite_error(es->wdb, src, what);
}

/* The stream's version (0: none) and whether it is soft-deleted; *exists
 * says whether it has a row. */
static int stream_state(keel_es *es, const char *stream, int64_t *version, bool *deleted,
                        bool *exists) {
  sqlite3_stmt *st = es->st_stream;
  sqlite3_bind_text(st, 1, stream, -1, SQLITE_STATIC);
  int src = sqlite3_step(st);
  *version = 0;
  *deleted = false;
  *exists = src == SQLITE_ROW;
  if (src == SQLITE_ROW) {
    *version = sqlite3_column_int64(st, 0);
    *deleted = sqlite3_column_int(st, 1) != 0;
  }
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  if (src != SQLITE_ROW && src != SQLITE_DONE)
    return keel__es_sqlite_error(es->wdb, src, "reading a stream's version");
  return 0;
}

/* Idempotency: 1 when every id of the batch is stored, in this stream, in
 * this order (res filled with the original result); 0 when none is; else
 * KEEL_EEXIST. Generated ids are new by construction and not looked up. */
static int find_duplicate(keel_es *es, const es_stream_req *s, keel_es_append_result *res) {
  size_t found = 0, given = 0;
  bool same = true;
  int64_t v0 = 0;
  for (size_t k = 0; k < s->n; k++) {
    if (!s->rows[k].given_id) continue;
    given++;
    sqlite3_stmt *st = es->st_find_id;
    sqlite3_bind_text(st, 1, s->rows[k].id, -1, SQLITE_STATIC);
    int src = sqlite3_step(st);
    if (src == SQLITE_ROW) {
      found++;
      const char *stream = (const char *)sqlite3_column_text(st, 0);
      int64_t v = sqlite3_column_int64(st, 1), pos = sqlite3_column_int64(st, 2);
      if (k == 0) v0 = v;
      if (!stream || strcmp(stream, s->stream) != 0 || v != v0 + (int64_t)k) same = false;
      if (k == 0) res->first_position = pos;
      if (k == s->n - 1) {
        res->last_position = pos;
        res->version = v;
      }
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (src != SQLITE_ROW && src != SQLITE_DONE)
      return keel__es_sqlite_error(es->wdb, src, "looking up an event id");
  }
  return keel__es_dup_verdict(found, given, s->n, same, res);
}

static int append_one(keel_es *es, const es_stream_req *s, keel_es_append_result *res,
                      int64_t now) {
  memset(res, 0, sizeof *res);
  int rc = find_duplicate(es, s, res);
  if (rc != 0) return rc < 0 ? rc : 0;
  int64_t actual;
  bool deleted, exists;
  if ((rc = stream_state(es, s->stream, &actual, &deleted, &exists))) return rc;
  if (!keel__es_expected_ok(s->expected, actual, deleted)) {
    res->expected = s->expected;
    res->actual = actual;
    return KEEL_ECONFLICT;
  }
  sqlite3_stmt *st = es->st_insert;
  uint32_t hash = keel__es_stream_hash(s->stream);
  for (size_t k = 0; k < s->n; k++) {
    const es_row *e = &s->rows[k];
    sqlite3_bind_text(st, 1, s->stream, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, actual + (int64_t)k + 1);
    sqlite3_bind_text(st, 3, e->id, 36, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, e->type, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 5, e->schema_version);
    sqlite3_bind_text(st, 6, e->payload, -1, SQLITE_STATIC);
    if (e->metadata)
      sqlite3_bind_text(st, 7, e->metadata, -1, SQLITE_STATIC);
    else
      sqlite3_bind_null(st, 7);
    sqlite3_bind_int64(st, 8, e->occurred_at);
    sqlite3_bind_int64(st, 9, now);
    sqlite3_bind_int64(st, 10, (sqlite3_int64)hash);
    rc = step_done(es, st, "inserting an event");
    sqlite3_clear_bindings(st);
    if (rc) return rc;
    int64_t pos = sqlite3_last_insert_rowid(es->wdb);
    if (k == 0) res->first_position = pos;
    res->last_position = pos;
  }
  st = es->st_upsert;
  sqlite3_bind_text(st, 1, s->stream, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 2, actual + (int64_t)s->n);
  rc = step_done(es, st, "updating a stream's version");
  sqlite3_clear_bindings(st);
  if (rc) return rc;
  res->version = actual + (int64_t)s->n;
  return 0;
}

/* ---- the other writes ------------------------------------------------------------ */

static int exec_sql(keel_es *es, const char *sql, const char *stream, int64_t arg, bool use_arg,
                    const char *text, const char *what) {
  sqlite3_stmt *st;
  int src = sqlite3_prepare_v2(es->wdb, sql, -1, &st, NULL);
  if (src != SQLITE_OK) return keel__es_sqlite_error(es->wdb, src, what);
  int i = 1;
  if (stream) sqlite3_bind_text(st, i++, stream, -1, SQLITE_STATIC);
  if (use_arg) sqlite3_bind_int64(st, i++, arg);
  if (text) sqlite3_bind_text(st, i++, text, -1, SQLITE_STATIC);
  src = sqlite3_step(st);
  int rc = src == SQLITE_DONE || src == SQLITE_ROW ? 0 : keel__es_sqlite_error(es->wdb, src, what);
  sqlite3_finalize(st);
  return rc;
}

static int exec_other(keel_es *es, es_req *r, es_reply *rep) {
  const char *stream = r->streams[0].stream;
  int64_t version;
  bool deleted, exists;
  int rc = stream_state(es, stream, &version, &deleted, &exists);
  if (rc) return rc;
  switch (r->kind) {
  case ES_REQ_DELETE:
    if (!exists || version == 0) return KEEL_ENOENT;
    if (!keel__es_expected_ok(r->streams[0].expected, version, false)) {
      rep->results[0].expected = r->streams[0].expected;
      rep->results[0].actual = version;
      return KEEL_ECONFLICT;
    }
    if (deleted) return 0;
    /* the snapshot goes with the stream: it must not bring the deleted
     * history back when the stream is recreated */
    if ((rc = exec_sql(es, "DELETE FROM snapshots WHERE stream = ?", stream, 0, false, NULL,
                       "soft-deleting a stream's snapshot")))
      return rc;
    return exec_sql(es,
                    "UPDATE streams SET deleted = 1, truncated_before = version + 1 "
                    "WHERE stream = ?",
                    stream, 0, false, NULL, "soft-deleting a stream");
  case ES_REQ_TRUNCATE:
    if (!exists || version == 0) return KEEL_ENOENT;
    return exec_sql(es,
                    "UPDATE streams SET truncated_before = max(truncated_before, ?2) "
                    "WHERE stream = ?1",
                    stream, r->arg, true, NULL, "truncating a stream");
  case ES_REQ_HARD_DELETE:
    if (!exists) return KEEL_ENOENT;
    if ((rc = exec_sql(es, "UPDATE es_control SET hard_delete = 1 WHERE id = 1", NULL, 0, false,
                       NULL, "hard delete")) ||
        (rc = exec_sql(es, "DELETE FROM events WHERE stream = ?", stream, 0, false, NULL,
                       "hard-deleting events")) ||
        (rc = exec_sql(es, "DELETE FROM streams WHERE stream = ?", stream, 0, false, NULL,
                       "hard-deleting a stream")) ||
        (rc = exec_sql(es, "DELETE FROM snapshots WHERE stream = ?", stream, 0, false, NULL,
                       "hard-deleting a stream's snapshot")) ||
        (rc = exec_sql(es, "UPDATE es_control SET hard_delete = 0 WHERE id = 1", NULL, 0, false,
                       NULL, "hard delete")))
      return rc;
    keel_log_warn(NULL, "event store: stream hard-deleted", KEEL_STR("stream", stream));
    return 0;
  case ES_REQ_SET_META:
    return exec_sql(es,
                    "INSERT INTO streams (stream, metadata) VALUES (?, ?) "
                    "ON CONFLICT (stream) DO UPDATE SET metadata = excluded.metadata",
                    stream, 0, false, r->text, "setting a stream's metadata");
  case ES_REQ_SNAPSHOT: return keel__es_snapshot_write(es, r, rep);
  default: return KEEL_EINVAL;
  }
}

/* ---- the thread ------------------------------------------------------------------- */

/* Runs one of the writer's prepared transaction-control statements. */
static int run_ctl(keel_es *es, sqlite3_stmt *st) {
  int src = sqlite3_step(st);
  int rc = src == SQLITE_DONE ? 0 : keel__es_sqlite_error(es->wdb, src, sqlite3_sql(st));
  sqlite3_reset(st);
  return rc;
}

static keel_msg_t *new_reply(size_t nresults) {
  size_t size = sizeof(es_reply) + nresults * sizeof(keel_es_append_result);
  keel_msg_t *m = keel_msg_new(0, size);
  if (m) {
    memset(keel_msg_data(m), 0, size);
    ((es_reply *)keel_msg_data(m))->nresults = nresults;
  }
  return m;
}

/* Replies to r with m (NULL: out of memory; the caller's await then waits
 * for ever, so retry until there is memory) and frees r. */
static void finish(keel_es *es, es_req *r, keel_msg_t *m) {
  while (!m) {
    m = new_reply(r->nstreams);
    if (!m) {
      struct timespec ts = {0, 1000000};
      nanosleep(&ts, NULL);
    }
  }
  if (r->kind == ES_REQ_APPEND && r->nstreams > 0) { /* a transact without appends is not one */
    es_reply *rep = keel_msg_data(m);
    if (es->m_duration) keel_histogram_observe(es->m_duration, keel__es_now_s() - r->t0);
    keel_counter *c = es->m_ok;
    if (rep->rc == KEEL_ECONFLICT)
      c = es->m_conflict;
    else if (rep->rc != 0)
      c = es->m_error;
    else {
      size_t dups = 0;
      for (size_t i = 0; i < rep->nresults; i++)
        dups += rep->results[i].duplicate;
      if (dups) c = es->m_duplicate;
      if (es->m_events && dups < r->nstreams) {
        size_t n = 0;
        for (size_t i = 0; i < r->nstreams; i++)
          if (!rep->results[i].duplicate) n += r->streams[i].n;
        keel_counter_add(es->m_events, (double)n);
      }
    }
    if (c) keel_counter_inc(c);
  }
  keel_reply(r->pid, r->ref, m);
  keel__es_req_free(r);
}

/* After a commit, before the waiters wake: the group's new events go to
 * the live tail (tail.c; in position order, which is the group's order on
 * the one writer), and a committed delete or truncation empties it. */
static void feed_tail(keel_es *es, es_req *group, keel_msg_t **msgs, int64_t now) {
  size_t i = 0;
  bool hidden = false;
  for (es_req *r = group; r && msgs; r = r->next, i++) {
    if (!msgs[i]) continue;
    const es_reply *rep = keel_msg_data(msgs[i]);
    if (rep->rc != 0) continue;
    if (r->kind == ES_REQ_APPEND)
      for (size_t k = 0; k < rep->nresults; k++)
        keel__es_tail_push(es, &r->streams[k], &rep->results[k], now,
                           keel__es_tail_epoch(es)); /* the one writer: in commit order */
    else if (r->kind == ES_REQ_DELETE || r->kind == ES_REQ_TRUNCATE ||
             r->kind == ES_REQ_HARD_DELETE)
      hidden = true;
  }
  if (hidden) keel__es_tail_reset(es);
}

/* After a commit: the waiting readers whose position is below the group's
 * highest new position are woken (notify.c; one atomic load when none
 * waits). */
static void wake_waiters(keel_es *es, es_req *group, keel_msg_t **msgs) {
  int64_t top = 0;
  size_t i = 0;
  for (es_req *r = group; r && msgs; r = r->next, i++) {
    if (r->kind != ES_REQ_APPEND || !msgs[i]) continue;
    const es_reply *rep = keel_msg_data(msgs[i]);
    for (size_t k = 0; rep->rc == 0 && k < rep->nresults; k++)
      if (!rep->results[k].duplicate && rep->results[k].last_position > top)
        top = rep->results[k].last_position;
  }
  if (top > 0) keel__es_notify_appended(es, top);
}

/* A group of one request runs without a savepoint: its failure rolls the
 * whole transaction back instead. The savepoint's statements cost as much
 * as a small request, and while one is open SQLite copies each page the
 * request changes into its sub-journal. */
static void run_group(keel_es *es, es_req *group, size_t nreq, int rc0) {
  keel_msg_t **msgs = calloc(nreq, sizeof *msgs);
  int64_t now = keel__es_unix_ms();
  size_t i = 0, nappends = 0;
  int rc = !msgs ? KEEL_ENOMEM : rc0 ? rc0 : run_ctl(es, es->st_begin);
  bool broken = rc != 0, savepoints = nreq > 1, undo = false;
  for (es_req *r = group; r; r = r->next, i++) {
    keel_msg_t *m = msgs ? (msgs[i] = new_reply(r->nstreams)) : NULL;
    if (!m) continue;
    es_reply *rep = keel_msg_data(m);
    if (broken) {
      rep->rc = rc ? rc : KEEL_EIO;
      continue;
    }
    nappends += r->kind == ES_REQ_APPEND;
    if (savepoints && (rep->rc = run_ctl(es, es->st_savepoint)) != 0) {
      broken = true;
      continue;
    }
    if (r->kind == ES_REQ_APPEND) {
      for (size_t k = 0; k < r->nstreams && rep->rc == 0; k++) {
        rep->rc = append_one(es, &r->streams[k], &rep->results[k], now);
        if (rep->rc) rep->failed = k;
      }
      if (rep->rc == 0 && keel__es_tx_wanted(r, rep->results))
        if ((rep->rc = keel__es_tx_run(es, r, es->wdb, NULL)) != 0) rep->failed = r->nstreams;
    } else {
      rep->rc = exec_other(es, r, rep);
    }
    if (!savepoints) {
      undo = rep->rc != 0;
      continue;
    }
    if (rep->rc != 0 && run_ctl(es, es->st_rollback_to) != 0) broken = true;
    if (run_ctl(es, es->st_release) != 0) broken = true;
  }
  if (!broken && !undo && run_ctl(es, es->st_commit) != 0) broken = true;
  if (broken || undo) sqlite3_exec(es->wdb, "ROLLBACK", NULL, NULL, NULL);
  if (broken) {
    for (size_t k = 0; msgs && k < nreq; k++) {
      if (!msgs[k]) continue;
      es_reply *rep = keel_msg_data(msgs[k]);
      if (rep->rc == 0 || rep->rc == KEEL_ECONFLICT || rep->rc == KEEL_ENOENT) {
        /* nothing of the group is stored: every answer is an I/O error */
        memset(rep->results, 0, rep->nresults * sizeof rep->results[0]);
        rep->rc = KEEL_EIO;
      }
    }
  }
  if (es->m_group && nappends) keel_histogram_observe(es->m_group, (double)nappends);
  if (!broken) feed_tail(es, group, msgs, now);
  if (!broken && nappends) wake_waiters(es, group, msgs);
  i = 0;
  for (es_req *r = group, *next; r; r = next, i++) {
    next = r->next;
    keel_msg_t *m = msgs ? msgs[i] : NULL;
    if (!m) {
      m = new_reply(r->nstreams);
      if (m) ((es_reply *)keel_msg_data(m))->rc = KEEL_ENOMEM;
    }
    finish(es, r, m);
  }
  free(msgs);
}

/* The writer connection's synchronous level: lazy (NORMAL) or the store's
 * FULL. Switched only between transactions, and only when it changes. Not
 * a kept statement: PRAGMA synchronous takes effect when it is prepared,
 * and stepping a kept one again does nothing. */
static int set_lazy(keel_es *es, bool lazy) {
  if (es->wlazy == lazy) return 0;
  const char *sql = lazy ? "PRAGMA synchronous = NORMAL" : "PRAGMA synchronous = FULL";
  int src = sqlite3_exec(es->wdb, sql, NULL, NULL, NULL);
  if (src != SQLITE_OK) return keel__es_sqlite_error(es->wdb, src, sql);
  es->wlazy = lazy;
  return 0;
}

/* Runs a group taken from the queue: its lazy requests first, in a commit
 * without fsync of their own, then the durable rest (the file's opening
 * says why the order may change). A durable group never runs below FULL:
 * if the level cannot be raised back, it fails with that error instead. */
static void run_groups(keel_es *es, es_req *group, size_t nreq) {
  if (es->sync != KEEL_ES_SYNC_FULL) {
    run_group(es, group, nreq, 0);
    return;
  }
  es_req *lazy = NULL, **lt = &lazy, *durable = NULL, **dt = &durable;
  size_t nl = 0;
  for (es_req *r = group, *next; r; r = next) {
    next = r->next;
    r->next = NULL;
    if (r->lazy) {
      *lt = r;
      lt = &r->next;
      nl++;
    } else {
      *dt = r;
      dt = &r->next;
    }
  }
  if (lazy) {
    /* not lowered: it runs durable, which is only slower */
    if (set_lazy(es, true) != 0)
      keel_log_warn(NULL, "event store: could not lower synchronous for a lazy commit");
    run_group(es, lazy, nl, 0);
  }
  if (durable) run_group(es, durable, nreq - nl, set_lazy(es, false));
}

static void *writer_main(void *arg) {
  keel_es *es = arg;
  for (;;) {
    pthread_mutex_lock(&es->mu);
    while (!es->head && !es->stopping)
      pthread_cond_wait(&es->cv, &es->mu);
    if (!es->head) {
      pthread_mutex_unlock(&es->mu);
      break;
    }
    es_req *group = es->head, *last = es->head;
    size_t nreq = 1, nev = group->nevents;
    if (group->kind != ES_REQ_FN) {
      while (last->next && last->next->kind != ES_REQ_FN &&
             nev + last->next->nevents <= es->group_max_events) {
        last = last->next;
        nev += last->nevents;
        nreq++;
      }
    }
    es->head = last->next;
    if (!es->head) es->tail = NULL;
    last->next = NULL;
    pthread_mutex_unlock(&es->mu);
    if (group->kind == ES_REQ_FN) {
      group->fn(es->wdb, group->fn_arg);
      finish(es, group, new_reply(0));
    } else {
      run_groups(es, group, nreq);
    }
  }
  return NULL;
}

int keel__es_writer_prepare(keel_es *es) {
  static const struct {
    size_t off;
    const char *sql;
  } stmts[] = {
      {offsetof(keel_es, st_find_id), "SELECT stream, version, position FROM events WHERE id = ?"},
      {offsetof(keel_es, st_stream), "SELECT version, deleted FROM streams WHERE stream = ?"},
      {offsetof(keel_es, st_insert),
       "INSERT INTO events (stream, version, id, type, schema_version, payload, metadata, "
       "occurred_at, stored_at, stream_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"},
      {offsetof(keel_es, st_upsert),
       "INSERT INTO streams (stream, version) VALUES (?1, ?2) "
       "ON CONFLICT (stream) DO UPDATE SET version = ?2, deleted = 0"},
      {offsetof(keel_es, st_begin), "BEGIN IMMEDIATE"},
      {offsetof(keel_es, st_commit), "COMMIT"},
      {offsetof(keel_es, st_savepoint), "SAVEPOINT req"},
      {offsetof(keel_es, st_release), "RELEASE req"},
      {offsetof(keel_es, st_rollback_to), "ROLLBACK TO req"},
  };
  /* the service's statements in a transaction are judged by the
   * authorizer, installed before any statement is kept (tx.c). temp_store
   * in memory: the savepoints' sub-journal then grows in 1 KiB chunks
   * instead of SQLite's 64 KiB spill buffer, whose free after every
   * savepoint made glibc give the writer's heap back to the kernel and take
   * it again (madvise, 15 % of the writer's time, docs/decisions/0031) */
  int rc = keel__es_tx_authorizer(es);
  if (rc) return rc;
  int src = sqlite3_exec(es->wdb, "PRAGMA temp_store = MEMORY", NULL, NULL, NULL);
  if (src != SQLITE_OK) return keel__es_sqlite_error(es->wdb, src, "setting temp_store");
  for (size_t i = 0; i < sizeof stmts / sizeof stmts[0]; i++) {
    sqlite3_stmt **st = (sqlite3_stmt **)((char *)es + stmts[i].off);
    src = sqlite3_prepare_v3(es->wdb, stmts[i].sql, -1, SQLITE_PREPARE_PERSISTENT, st, NULL);
    if (src != SQLITE_OK) return keel__es_sqlite_error(es->wdb, src, "preparing statements");
  }
  return 0;
}

int keel__es_writer_start(keel_es *es) {
  if (pthread_create(&es->writer, NULL, writer_main, es) != 0) return KEEL_ENOMEM;
  pthread_setname_np(es->writer, "keel-es-writer");
  es->writer_started = true;
  return 0;
}

void keel__es_writer_stop(keel_es *es) {
  if (es->writer_started) {
    pthread_mutex_lock(&es->mu);
    es->stopping = true;
    pthread_cond_broadcast(&es->cv);
    pthread_mutex_unlock(&es->mu);
    pthread_join(es->writer, NULL);
    es->writer_started = false;
  }
  keel__es_tx_cache_free(es);
  sqlite3_stmt **sts[] = {&es->st_find_id,   &es->st_stream,  &es->st_insert,
                          &es->st_upsert,    &es->st_begin,   &es->st_commit,
                          &es->st_savepoint, &es->st_release, &es->st_rollback_to};
  for (size_t i = 0; i < sizeof sts / sizeof sts[0]; i++) {
    sqlite3_finalize(*sts[i]);
    *sts[i] = NULL;
  }
  if (es->wdb) sqlite3_close(es->wdb);
  es->wdb = NULL;
}
