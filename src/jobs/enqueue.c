/* enqueue.c - putting jobs in keel_jobs, alone or in a service's transaction.
 *
 * An enqueue is one INSERT ... RETURNING id, validated and encoded first
 * in the caller's process (args serialised, tags as a JSON array). Inside a
 * service's keel_es_transact (keel_jobs_enqueue_tx) it runs in that
 * transaction, so the job commits or rolls back with the events: the
 * transactional outbox. keel_jobs is one of keel's own tables, which a
 * service's statements may not write on SQLite (the store's authorizer);
 * the insert is keel's statement, so it is allowed for its duration.
 *
 * Unique jobs: the key (given, or worker + queue + the args' canonical
 * JSON) is looked up among the jobs it still blocks (within the period, or
 * not finished), under keel_es_tx_lock on the key: concurrent enqueuers of
 * one key take turns (on SQLite the one writer serialises them anyway), so
 * exactly one inserts and the others get its id.
 */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "es/es_internal.h"
#include "jobs/jobs_internal.h"
#include "keel/error.h"

enum { DEFAULT_MAX_ATTEMPTS = 20 };

/* A job encoded for the insert: every parameter as text. */
typedef struct enc {
  keel_jobs *j;
  const char *queue, *worker;
  char *args, *tags, *unique_key;
  char priority[24], max_attempts[24], run_at[24], now[24], unique_until[24];
  bool has_until;
  int64_t id;
  bool duplicate;
  char traceparent[56]; /* the producer span's ("": enqueued outside a trace) */
} enc;

static void enc_free(enc *e) {
  free(e->args);
  free(e->tags);
  free(e->unique_key);
}

static int encode(keel_jobs *j, const keel_job_new *n, enc *e) {
  memset(e, 0, sizeof *e);
  e->j = j;
  if (!j || !n || !keel__jobs_name_ok(n->worker)) return KEEL_EINVAL;
  e->queue = n->queue ? n->queue : "default";
  e->worker = n->worker;
  if (!keel__jobs_name_ok(e->queue) || n->priority < 0 || n->priority > 9 || n->run_in_ms < 0 ||
      n->run_at_ms < 0 || n->max_attempts < 0 || n->unique_period_ms < 0 ||
      (n->unique_key && !*n->unique_key))
    return KEEL_EINVAL;
  int64_t now = keel__jobs_now(j);
  json_t *empty = json_object();
  e->args = json_dumps(n->args ? n->args : empty, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
  json_decref(empty);
  json_t *tags = json_array();
  for (size_t i = 0; n->tags && n->tags[i] && tags; i++)
    json_array_append_new(tags, json_string(n->tags[i]));
  e->tags = tags ? json_dumps(tags, JSON_COMPACT) : NULL;
  json_decref(tags);
  if (!e->args || !e->tags) return e->args ? KEEL_ENOMEM : KEEL_EINVAL;
  if (n->unique_key || n->unique_args) {
    size_t len = strlen(e->worker) + strlen(e->queue) + strlen(e->args) + 8;
    const char *key = n->unique_key;
    e->unique_key = key ? strdup(key) : malloc(len);
    if (!e->unique_key) return KEEL_ENOMEM;
    if (!key) snprintf(e->unique_key, len, "args:%s:%s:%s", e->worker, e->queue, e->args);
    e->has_until = n->unique_period_ms > 0;
    keel__jobs_i64(e->unique_until, now + n->unique_period_ms);
  }
  keel__jobs_i64(e->priority, n->priority);
  keel__jobs_i64(e->max_attempts, n->max_attempts ? n->max_attempts : DEFAULT_MAX_ATTEMPTS);
  keel__jobs_i64(e->run_at, n->run_at_ms ? n->run_at_ms : now + n->run_in_ms);
  keel__jobs_i64(e->now, now);
  return 0;
}

static int find_unique(keel_es_tx *tx, enc *e) {
  /* the store hashes the lock's key: a long args key is fine */
  size_t len = strlen(e->unique_key) + 20;
  char *key = malloc(len);
  if (!key) return KEEL_ENOMEM;
  snprintf(key, len, "keel_jobs unique %s", e->unique_key);
  int rc = keel_es_tx_lock(tx, key);
  free(key);
  keel_es_rows rows = {0};
  if (rc == 0)
    rc = keel_es_tx_exec(tx,
                         "SELECT id FROM keel_jobs WHERE unique_key = $1 AND ((unique_until IS "
                         "NULL AND state IN ('available', 'running')) OR unique_until > "
                         "CAST($2 AS BIGINT)) ORDER BY id LIMIT 1",
                         (const char *[]){e->unique_key, e->now}, 2, &rows);
  if (rc == 0 && rows.nrows == 1) {
    e->id = keel__jobs_atoi(keel_es_rows_get(&rows, 0, 0));
    e->duplicate = true;
  }
  keel_es_rows_free(&rows);
  return rc;
}

static const char *const insert_sql =
    "INSERT INTO keel_jobs (queue, worker, args, state, priority, attempt, "
    "max_attempts, run_at, inserted_at, errors, tags, unique_key, unique_until, "
    "traceparent) "
    "VALUES ($1, $2, $3, 'available', CAST($4 AS INTEGER), 0, "
    "CAST($5 AS INTEGER), CAST($6 AS BIGINT), CAST($7 AS BIGINT), '[]', $8, $9, "
    "CAST($10 AS BIGINT), $11) RETURNING id";

/* The insert alone: tx NULL runs it as a transaction of its own (a job that
 * is not unique needs no other statement: one round trip on PostgreSQL). */
static int insert_row(keel_es_tx *tx, enc *e) {
  keel_es_rows rows = {0};
  const char *params[] = {e->queue,
                          e->worker,
                          e->args,
                          e->priority,
                          e->max_attempts,
                          e->run_at,
                          e->now,
                          e->tags,
                          e->unique_key,
                          e->has_until ? e->unique_until : NULL,
                          e->traceparent[0] ? e->traceparent : NULL};
  int rc = tx ? keel_es_tx_exec(tx, insert_sql, params, 11, &rows)
              : keel__es_exec(e->j->es, insert_sql, params, 11, &rows);
  if (rc == 0 && rows.nrows != 1) rc = KEEL_EIO;
  if (rc == 0) e->id = keel__jobs_atoi(keel_es_rows_get(&rows, 0, 0));
  keel_es_rows_free(&rows);
  return rc;
}

/* ---- PostgreSQL: concurrent enqueues, one INSERT ------------------------------------ */

/* One job's row of the batch's VALUES: its number in the batch (ord), then
 * its parameters from $(k + 1) on. */
static int values_row(char *at, size_t cap, size_t ord, size_t k) {
  return snprintf(at, cap,
                  "%s(%zu, $%zu, $%zu, $%zu, CAST($%zu AS INTEGER), CAST($%zu AS INTEGER), "
                  "CAST($%zu AS BIGINT), CAST($%zu AS BIGINT), $%zu, $%zu)",
                  ord ? ", " : "", ord, k + 1, k + 2, k + 3, k + 4, k + 5, k + 6, k + 7, k + 8,
                  k + 9);
}

/* Plain enqueues that arrive together (keel__jobs_combine) are one
 * INSERT, one round trip and one durable commit for the batch where each
 * was its own: every caller is answered after that commit, so an enqueue
 * that returned is as durable as before. The batch commits or fails as one
 * (its rows are independent: no unique lookup, whose enqueues keep their
 * own transaction). Each row's id is drawn with nextval in a CTE and
 * returned beside the row's number in the batch, so the mapping of ids to
 * callers rests on nothing PostgreSQL leaves unspecified (the evaluation
 * order of a multi-row VALUES, the order of RETURNING, a sequence that an
 * operator restarted). */
static int insert_batch(keel_jobs *j, void **items, size_t n) {
  enum { PER = 9 };
  size_t cap = 1024 + n * 320; /* a row's VALUES is under 200 bytes with 3-digit numbers */
  char *sql = malloc(cap);
  const char **p = calloc(n * PER, sizeof *p);
  if (!sql || !p) {
    free(sql);
    free(p);
    return KEEL_ENOMEM;
  }
  size_t at = (size_t)snprintf(sql, cap,
                               "WITH v AS (SELECT nextval(pg_get_serial_sequence('keel_jobs', "
                               "'id')) AS id, t.* FROM (VALUES ");
  for (size_t k = 0; k < n; k++) {
    enc *e = items[k];
    assert(!e->unique_key); /* a unique enqueue looks up its key in a transaction of its own */
    const char *row[PER] = {
        e->queue,    e->worker,       e->args,
        e->priority, e->max_attempts, e->run_at,
        e->now,      e->tags,         e->traceparent[0] ? e->traceparent : NULL};
    memcpy(p + k * PER, row, sizeof row);
    at += (size_t)values_row(sql + at, cap - at, k, k * PER);
  }
  snprintf(sql + at, cap - at,
           ") AS t(ord, queue, worker, args, priority, max_attempts, run_at, inserted_at, tags, "
           "traceparent)), ins AS (INSERT INTO keel_jobs (id, queue, worker, args, state, "
           "priority, attempt, max_attempts, run_at, inserted_at, errors, tags, traceparent) "
           "SELECT id, queue, worker, args, 'available', priority, 0, max_attempts, run_at, "
           "inserted_at, '[]', tags, traceparent FROM v) SELECT ord, id FROM v");
  keel_es_rows rows = {0};
  int rc = keel__es_exec(j->es, sql, p, n * PER, &rows);
  free(sql);
  free(p);
  if (rc == 0 && rows.nrows != n) rc = KEEL_EIO;
  bool seen[JOBS_COMBINE_MAX] = {false};
  for (size_t r = 0; rc == 0 && r < n; r++) {
    int64_t ord = keel__jobs_atoi(keel_es_rows_get(&rows, r, 0));
    if (ord < 0 || (size_t)ord >= n || seen[ord]) {
      rc = KEEL_EIO; /* not reached: each row's number comes back once */
      break;
    }
    seen[ord] = true;
    ((enc *)items[ord])->id = keel__jobs_atoi(keel_es_rows_get(&rows, r, 1));
  }
  keel_es_rows_free(&rows);
  return rc;
}

static int insert(keel_es_tx *tx, enc *e) {
  int rc = e->unique_key ? find_unique(tx, e) : 0;
  if (rc || e->duplicate) return rc;
  return insert_row(tx, e);
}

static int insert_fn(keel_es_tx *tx, void *arg) {
  enc *e = arg;
  e->duplicate = false; /* fn may run again (PostgreSQL's retry) */
  return insert(tx, e);
}

static void done(enc *e, int64_t *id, bool *duplicate) {
  if (id) *id = e->id;
  if (duplicate) *duplicate = e->duplicate;
  if (!e->duplicate) keel__jobs_count(e->j, e->j->f_enqueued, e->queue, e->worker);
}

int keel_jobs_enqueue(keel_jobs *j, const keel_job_new *n, int64_t *id, bool *duplicate) {
  enc e;
  int rc = encode(j, n, &e);
  keel_span sp;
  bool spanned = rc == 0 && keel__jobs_span_send(&sp, NULL, e.queue, e.worker, e.traceparent);
  if (rc == 0)
    rc = e.unique_key       ? keel__es_transact_internal(j->es, insert_fn, &e)
         : keel__jobs_pg(j) ? keel__jobs_combine(&j->enq, j, insert_batch, &e)
                            : insert_row(NULL, &e);
  keel__jobs_span_sent(&sp, spanned, rc, e.id, e.duplicate);
  if (rc == 0) {
    done(&e, id, duplicate);
    keel_jobs_notify(j, e.queue);
  }
  enc_free(&e);
  return rc;
}

int keel_jobs_enqueue_tx(keel_jobs *j, keel_es_tx *tx, const keel_job_new *n, int64_t *id,
                         bool *duplicate) {
  if (!tx) return KEEL_EINVAL;
  enc e;
  int rc = encode(j, n, &e);
  if (rc == 0) {
    /* keel's own statement in the service's transaction: the authorizer
     * reads tx->internal at each statement's preparation */
    bool was = tx->internal;
    tx->internal = true;
    /* the parent is the transaction's span: fn may run on the SQLite
     * writer's thread, where no span is current */
    keel_span sp;
    bool spanned = keel__jobs_span_send(&sp, tx->trace, e.queue, e.worker, e.traceparent);
    rc = insert(tx, &e);
    keel__jobs_span_sent(&sp, spanned, rc, e.id, e.duplicate);
    tx->internal = was;
  }
  if (rc == 0) done(&e, id, duplicate);
  enc_free(&e);
  return rc;
}
