/* test_tx.c - the service's SQL in the store's database: keel_es_transact
 * (appends, then the service's statements, one commit or none),
 * keel_es_tx_exec's rules (one statement, no transaction control, the first
 * error dooms the transaction), keel_es_query, and many processes
 * transacting at once (group commit on SQLite, parallel transactions on
 * PostgreSQL) without a lost update. Both backends. */
#include <stdlib.h>

#include "es/es_internal.h"
#include "es/kt_es.h"

static int exec(keel_es_tx *tx, const char *sql) {
  return keel_es_tx_exec(tx, sql, NULL, 0, NULL);
}

static int create_tables(keel_es_tx *tx, void *arg) {
  (void)arg;
  int rc = exec(tx, "CREATE TABLE IF NOT EXISTS orders_view (id TEXT PRIMARY KEY, "
                    "status TEXT NOT NULL, total BIGINT, note TEXT)");
  if (!rc) rc = exec(tx, "CREATE TABLE IF NOT EXISTS outbox (id TEXT PRIMARY KEY, body TEXT)");
  if (!rc) rc = exec(tx, "CREATE TABLE IF NOT EXISTS counter (k INTEGER PRIMARY KEY, n BIGINT)");
  if (!rc) rc = exec(tx, "INSERT INTO counter (k, n) VALUES (1, 0) ON CONFLICT (k) DO NOTHING");
  return rc;
}

static keel_es *open_with_tables(kt_store *s) {
  keel_es *es = kt_store_open(s, NULL);
  CHECK_OK(keel_es_transact(es, NULL, 0, NULL, NULL, create_tables, NULL));
  return es;
}

static int64_t count_rows(keel_es *es, const char *table) {
  char sql[96];
  snprintf(sql, sizeof sql, "SELECT count(*) FROM %s", table);
  keel_es_rows rows;
  CHECK_OK(keel_es_query(es, sql, NULL, 0, &rows));
  CHECK_EQ(rows.nrows, 1);
  int64_t n = strtoll(keel_es_rows_get(&rows, 0, 0), NULL, 10);
  keel_es_rows_free(&rows);
  return n;
}

/* ---- statements and results ---------------------------------------------------------- */

typedef struct upsert_arg {
  const char *id, *status, *total;
  int64_t changed;
  int rc;
} upsert_arg;

static int upsert(keel_es_tx *tx, void *arg) {
  upsert_arg *a = arg;
  keel_es_rows rows;
  /* $2 before $1, and $1 twice: parameters are bound by number, not place */
  a->rc = keel_es_tx_exec(tx,
                          "INSERT INTO orders_view (status, id, total, note) "
                          "VALUES ($2, $1, CAST($3 AS BIGINT), $1 || '!') "
                          "ON CONFLICT (id) DO UPDATE SET status = excluded.status",
                          (const char *[]){a->id, a->status, a->total}, 3, &rows);
  a->changed = rows.changed;
  keel_es_rows_free(&rows);
  return a->rc;
}

KT_CASE(statements_bind_by_number_and_results_come_back_as_text) {
  kt_store s;
  keel_es *es = open_with_tables(&s);
  upsert_arg a = {.id = "o-1", .status = "placed", .total = "42"};
  CHECK_OK(keel_es_transact(es, NULL, 0, NULL, NULL, upsert, &a));
  CHECK_EQ(a.changed, 1);
  a = (upsert_arg){.id = "o-2", .status = "paid", .total = NULL};
  CHECK_OK(keel_es_transact(es, NULL, 0, NULL, NULL, upsert, &a));
  a = (upsert_arg){.id = "o-1", .status = "shipped", .total = "7"};
  CHECK_OK(keel_es_transact(es, NULL, 0, NULL, NULL, upsert, &a));
  CHECK_EQ(a.changed, 1);

  keel_es_rows rows;
  CHECK_OK(keel_es_query(es, "SELECT id, status, total, note FROM orders_view ORDER BY id", NULL, 0,
                         &rows));
  CHECK_EQ(rows.nrows, 2);
  CHECK_EQ(rows.ncols, 4);
  CHECK_STR(rows.names[0], "id");
  CHECK_STR(rows.names[3], "note");
  CHECK_STR(keel_es_rows_get(&rows, 0, 0), "o-1");
  CHECK_STR(keel_es_rows_get(&rows, 0, 1), "shipped");
  CHECK_STR(keel_es_rows_get(&rows, 0, 2), "42"); /* the update kept the total */
  CHECK_STR(keel_es_rows_get(&rows, 0, 3), "o-1!");
  CHECK_STR(keel_es_rows_get(&rows, 1, 1), "paid");
  CHECK(keel_es_rows_get(&rows, 1, 2) == NULL); /* SQL NULL */
  CHECK(keel_es_rows_get(&rows, 2, 0) == NULL); /* out of range */
  CHECK(keel_es_rows_get(&rows, 0, 4) == NULL);
  CHECK_EQ(rows.changed, 0); /* a SELECT changes nothing, on both backends */
  keel_es_rows_free(&rows);

  CHECK_OK(keel_es_query(es, "SELECT id FROM orders_view WHERE status = $1",
                         (const char *[]){"nothing"}, 1, &rows));
  CHECK_EQ(rows.nrows, 0);
  CHECK_EQ(rows.ncols, 1);
  keel_es_rows_free(&rows);
  keel_es_rows_free(&rows); /* twice is fine */
  kt_store_close(&s);
}

/* ---- the rules ------------------------------------------------------------------------- */

typedef struct rules_arg {
  int two, control, params, bad_sql, after_bad, own_table;
} rules_arg;

static int rules(keel_es_tx *tx, void *arg) {
  rules_arg *a = arg;
  a->two = exec(tx, "INSERT INTO outbox VALUES ('a', 'x'); INSERT INTO outbox VALUES ('b', 'y')");
  a->control = exec(tx, "  -- sneaky\n COMMIT");
  a->params = keel_es_tx_exec(tx, "SELECT $1, $2", (const char *[]){"1"}, 1, NULL);
  return 0;
}

static int doomed(keel_es_tx *tx, void *arg) {
  rules_arg *a = arg;
  CHECK_OK(exec(tx, "INSERT INTO outbox VALUES ('kept?', 'no')"));
  a->bad_sql = exec(tx, "SELEKT nothing");
  CHECK(keel_es_tx_error(tx)[0] != 0);
  a->after_bad = exec(tx, "INSERT INTO outbox VALUES ('c', 'z')");
  return 0; /* fn says commit, but the transaction is doomed */
}

static int dup_key(keel_es_tx *tx, void *arg) {
  (void)arg;
  CHECK_OK(exec(tx, "INSERT INTO outbox VALUES ('k', 'first')"));
  return exec(tx, "INSERT INTO outbox VALUES ('k', 'second')");
}

static int touch_events(keel_es_tx *tx, void *arg) {
  rules_arg *a = arg;
  a->own_table = exec(tx, "DELETE FROM events");
  return a->own_table;
}

KT_CASE(one_statement_no_transaction_control_and_the_first_error_dooms_the_rest) {
  kt_store s;
  keel_es *es = open_with_tables(&s);
  rules_arg a = {0};
  /* every refusal dooms the transaction: the later ones answer KEEL_ESTATE */
  CHECK_EQ(keel_es_transact(es, NULL, 0, NULL, NULL, rules, &a), KEEL_EINVAL);
  CHECK_EQ(a.two, KEEL_EINVAL);
  CHECK_EQ(a.control, KEEL_ESTATE);
  CHECK_EQ(a.params, KEEL_ESTATE);
  CHECK_EQ(count_rows(es, "outbox"), 0);

  /* each rule on its own */
  CHECK_EQ(keel_es_query(es, "COMMIT", NULL, 0, NULL), KEEL_EINVAL);
  CHECK_EQ(keel_es_query(es, "SELECT $1, $2", (const char *[]){"1"}, 1, NULL), KEEL_EINVAL);

  CHECK_EQ(keel_es_transact(es, NULL, 0, NULL, NULL, doomed, &a), KEEL_EINVAL);
  CHECK_EQ(a.bad_sql, KEEL_EINVAL);
  CHECK_EQ(a.after_bad, KEEL_ESTATE);
  CHECK_EQ(count_rows(es, "outbox"), 0); /* the statement before the error is rolled back */

  CHECK_EQ(keel_es_transact(es, NULL, 0, NULL, NULL, dup_key, NULL), KEEL_EEXIST);
  CHECK_EQ(count_rows(es, "outbox"), 0);

  /* keel's tables are keel's: SQLite refuses at compile time, PostgreSQL's
   * trigger at run time (either way an error, and nothing is deleted) */
  CHECK_OK(kt_append_n(es, "o-1", KEEL_ES_NO_STREAM, "T", 2, 0, NULL));
  CHECK(keel_es_transact(es, NULL, 0, NULL, NULL, touch_events, &a) != 0);
  CHECK(a.own_table != 0);
  int64_t head;
  CHECK_OK(keel_es_head(es, &head));
  CHECK_EQ(head, 2);
  keel_es_events evs;
  CHECK_OK(keel_es_read_stream(es, "o-1", NULL, &evs));
  CHECK_EQ(evs.n, 2);
  keel_es_events_free(&evs);
  kt_store_close(&s);
}

KT_CASE(query_refuses_writes_on_sqlite) {
  KT_SQLITE_ONLY();
  kt_store s;
  keel_es *es = open_with_tables(&s);
  CHECK_EQ(keel_es_query(es, "INSERT INTO outbox VALUES ('a', 'b')", NULL, 0, NULL), KEEL_EINVAL);
  CHECK_EQ(count_rows(es, "outbox"), 0);
  kt_store_close(&s);
}

/* ---- appends and the service's rows together ----------------------------------------- */

typedef struct outbox_arg {
  const char *id;
  int runs;
  int fail; /* fn's answer */
} outbox_arg;

static int write_outbox(keel_es_tx *tx, void *arg) {
  outbox_arg *a = arg;
  a->runs++;
  CHECK_OK(keel_es_tx_exec(tx, "INSERT INTO outbox (id, body) VALUES ($1, 'mail')",
                           (const char *[]){a->id}, 1, NULL));
  return a->fail;
}

#define EV1 "11111111-aaaa-4aaa-8aaa-111111111111"
#define EV2 "22222222-aaaa-4aaa-8aaa-222222222222"

KT_CASE(appends_and_rows_commit_together_or_not_at_all) {
  kt_store s;
  keel_es *es = open_with_tables(&s);
  json_t *p = json_object();
  keel_es_event_in ev[2] = {{.id = EV1, .type = "Placed", .payload = p},
                            {.id = EV2, .type = "Mailed", .payload = p}};
  keel_es_append_req req[2] = {
      {.stream = "order-1", .expected = KEEL_ES_NO_STREAM, .events = ev, .n = 1},
      {.stream = "mail-1", .expected = KEEL_ES_ANY, .events = ev + 1, .n = 1}};
  keel_es_append_result res[2];
  size_t failed = 99;

  /* fn refuses: nothing of the appends is stored, no result claims otherwise */
  outbox_arg a = {.id = "m-1", .fail = -1000};
  CHECK_EQ(keel_es_transact(es, req, 2, res, &failed, write_outbox, &a), -1000);
  CHECK_EQ(failed, 2); /* nreqs: fn failed */
  CHECK_EQ(res[0].version, 0);
  CHECK_EQ(res[1].last_position, 0);
  CHECK_EQ(count_rows(es, "outbox"), 0);
  keel_es_stream_info info;
  CHECK_EQ(keel_es_stream_info_get(es, "order-1", &info), KEEL_ENOENT);

  /* both: the events and the row */
  a = (outbox_arg){.id = "m-1"};
  CHECK_OK(keel_es_transact(es, req, 2, res, &failed, write_outbox, &a));
  CHECK(a.runs >= 1);
  CHECK_EQ(res[0].version, 1);
  CHECK_EQ(res[1].version, 1);
  CHECK(res[1].first_position > res[0].last_position);
  CHECK_EQ(count_rows(es, "outbox"), 1);

  /* the retry after a lost acknowledgement: the original results, fn not run again */
  a = (outbox_arg){.id = "m-1"};
  CHECK_OK(keel_es_transact(es, req, 2, res, &failed, write_outbox, &a));
  CHECK(res[0].duplicate && res[1].duplicate);
  CHECK_EQ(a.runs, 0);
  CHECK_EQ(count_rows(es, "outbox"), 1);

  /* a conflict: fn does not run, nothing stored, the conflict says why */
  keel_es_event_in ev3 = {.type = "Paid", .payload = p};
  keel_es_append_req req3 = {.stream = "order-1", .expected = 5, .events = &ev3, .n = 1};
  a = (outbox_arg){.id = "m-2"};
  CHECK_EQ(keel_es_transact(es, &req3, 1, res, &failed, write_outbox, &a), KEEL_ECONFLICT);
  CHECK_EQ(failed, 0);
  CHECK_EQ(res[0].expected, 5);
  CHECK_EQ(res[0].actual, 1);
  CHECK_EQ(a.runs, 0);
  CHECK_EQ(count_rows(es, "outbox"), 1);

  /* arguments */
  CHECK_EQ(keel_es_transact(es, NULL, 0, NULL, NULL, NULL, NULL), KEEL_EINVAL);
  CHECK_EQ(keel_es_append_multi(es, req, 0, res, NULL), KEEL_EINVAL);
  json_decref(p);
  kt_store_close(&s);
}

/* ---- many processes at once --------------------------------------------------------------- */

enum { TAG_DONE = 7 };

typedef struct bumper {
  keel_es *es;
  keel_pid_t parent;
  int index, count, failures;
} bumper;

static int bump(keel_es_tx *tx, void *arg) {
  (void)arg;
  keel_es_rows rows;
  int rc =
      keel_es_tx_exec(tx, "UPDATE counter SET n = n + 1 WHERE k = 1 RETURNING n", NULL, 0, &rows);
  if (rc == 0 && (rows.changed != 1 || rows.nrows != 1)) rc = -1000;
  keel_es_rows_free(&rows);
  return rc;
}

static void bump_loop(void *arg) {
  bumper *b = arg;
  char stream[32];
  snprintf(stream, sizeof stream, "b-%d", b->index);
  json_t *p = json_object();
  for (int i = 0; i < b->count; i++) {
    keel_es_event_in ev = {.type = "Bumped", .payload = p};
    keel_es_append_req req = {.stream = stream, .expected = i / 2, .events = &ev, .n = 1};
    keel_es_append_result res = {0};
    /* half with an event, half the counter alone, of which half lazy
     * (keel's commits without an fsync of their own, split from the
     * writer's groups on SQLite) */
    int rc = i % 4 == 1 ? keel__es_transact_lazy(b->es, bump, NULL)
             : i % 2    ? keel_es_transact(b->es, NULL, 0, NULL, NULL, bump, NULL)
                        : keel_es_transact(b->es, &req, 1, &res, NULL, bump, NULL);
    if (rc || (i % 2 == 0 && res.version != i / 2 + 1)) {
      b->failures++;
      break; /* the stream's next expected version would be wrong */
    }
  }
  json_decref(p);
  kt_send_u64(b->parent, TAG_DONE, 0);
}

KT_CASE(many_processes_transacting_at_once_lose_no_update) {
  kt_store s;
  keel_es *es = open_with_tables(&s);
  enum { N = 16, COUNT = 20 };
  bumper b[N];
  for (int i = 0; i < N; i++) {
    b[i] = (bumper){.es = es, .parent = keel_self(), .index = i, .count = COUNT};
    CHECK_OK(keel_spawn(bump_loop, &b[i], NULL, NULL));
  }
  for (int i = 0; i < N; i++)
    keel_msg_free(kt_recv(60000));
  for (int i = 0; i < N; i++)
    CHECK_EQ(b[i].failures, 0);
  keel_es_rows rows;
  CHECK_OK(
      keel_es_query(es, "SELECT n FROM counter WHERE k = $1", (const char *[]){"1"}, 1, &rows));
  CHECK_STR(keel_es_rows_get(&rows, 0, 0), "320"); /* N * COUNT */
  keel_es_rows_free(&rows);
  int64_t head;
  CHECK_OK(keel_es_head(es, &head));
  CHECK_EQ(head, N * COUNT / 2);
  kt_store_close(&s);
}

/* ---- keel_es_tx_lock ------------------------------------------------------------------ */

/* Creates a table at once with the other processes, then reads the counter,
 * waits (PostgreSQL: so that the others' transactions overlap this one),
 * and writes the value read plus one: without the lock, READ COMMITTED
 * loses updates; with it, none. */
static int create_shared(keel_es_tx *tx, void *arg) {
  (void)arg;
  int rc = keel_es_tx_lock(tx, "shared schema");
  if (!rc) rc = exec(tx, "CREATE TABLE IF NOT EXISTS shared_t (id TEXT PRIMARY KEY)");
  if (!rc) rc = exec(tx, "CREATE INDEX IF NOT EXISTS shared_t_id ON shared_t (id)");
  return rc;
}

static int read_then_write(keel_es_tx *tx, void *arg) {
  bool pg = *(bool *)arg;
  int rc = keel_es_tx_lock(tx, "counter 2");
  keel_es_rows rows = {0};
  if (!rc) rc = keel_es_tx_exec(tx, "SELECT n FROM counter WHERE k = 2", NULL, 0, &rows);
  char next[24] = "";
  if (!rc && rows.nrows == 1)
    snprintf(next, sizeof next, "%lld", strtoll(keel_es_rows_get(&rows, 0, 0), NULL, 10) + 1);
  keel_es_rows_free(&rows);
  if (!rc && !next[0]) rc = -1000;
  if (!rc && pg) rc = exec(tx, "SELECT pg_sleep(0.01)");
  if (!rc)
    rc = keel_es_tx_exec(tx, "UPDATE counter SET n = CAST($1 AS BIGINT) WHERE k = 2",
                         (const char *[]){next}, 1, NULL);
  return rc;
}

static void locker_loop(void *arg) {
  bumper *b = arg;
  bool pg = keel_es_backend(b->es) == KEEL_ES_POSTGRESQL;
  if (keel_es_transact(b->es, NULL, 0, NULL, NULL, create_shared, NULL)) b->failures++;
  for (int i = 0; i < b->count && !b->failures; i++)
    if (keel_es_transact(b->es, NULL, 0, NULL, NULL, read_then_write, &pg)) b->failures++;
  kt_send_u64(b->parent, TAG_DONE, 0);
}

static int lock_empty(keel_es_tx *tx, void *arg) {
  *(int *)arg = keel_es_tx_lock(tx, "");
  return 0;
}

static int counter2_init(keel_es_tx *tx, void *arg) {
  (void)arg;
  return exec(tx, "INSERT INTO counter (k, n) VALUES (2, 0) ON CONFLICT (k) DO NOTHING");
}

KT_CASE(a_tx_lock_serialises_creates_and_read_then_write_across_connections) {
  kt_store s;
  keel_es *es = open_with_tables(&s);
  int empty = 0;
  CHECK_OK(keel_es_transact(es, NULL, 0, NULL, NULL, lock_empty, &empty));
  CHECK_EQ(empty, KEEL_EINVAL);
  CHECK_EQ(keel_es_tx_lock(NULL, "k"), KEEL_EINVAL);
  CHECK_OK(keel_es_transact(es, NULL, 0, NULL, NULL, counter2_init, NULL));
  enum { N = 6, COUNT = 15 };
  bumper b[N];
  for (int i = 0; i < N; i++) {
    b[i] = (bumper){.es = es, .parent = keel_self(), .index = i, .count = COUNT};
    CHECK_OK(keel_spawn(locker_loop, &b[i], NULL, NULL));
  }
  for (int i = 0; i < N; i++)
    keel_msg_free(kt_recv(60000));
  for (int i = 0; i < N; i++)
    CHECK_EQ(b[i].failures, 0);
  keel_es_rows rows;
  CHECK_OK(keel_es_query(es, "SELECT n FROM counter WHERE k = 2", NULL, 0, &rows));
  CHECK_STR(keel_es_rows_get(&rows, 0, 0), "90"); /* N * COUNT */
  keel_es_rows_free(&rows);
  CHECK_EQ(count_rows(es, "shared_t"), 0);
  kt_store_close(&s);
}

/* ---- the writer's kept statements -------------------------------------------------------- */

static const char *const probe_insert =
    "INSERT INTO keel_cache_probe (n) VALUES (CAST($1 AS BIGINT))";

static int make_probe(keel_es_tx *tx, void *arg) {
  (void)arg;
  return exec(tx, "CREATE TABLE IF NOT EXISTS keel_cache_probe (n BIGINT)");
}

static int insert_probe(keel_es_tx *tx, void *arg) {
  return keel_es_tx_exec(tx, probe_insert, (const char *[]){arg}, 1, NULL);
}

typedef struct modes_arg {
  int as_keel, as_service;
} modes_arg;

/* keel's statement inside a service's transaction (keel_jobs_enqueue_tx
 * does this): the mode is the one at each statement */
static int both_modes(keel_es_tx *tx, void *arg) {
  modes_arg *a = arg;
  tx->internal = true;
  a->as_keel = keel_es_tx_exec(tx, probe_insert, (const char *[]){"5"}, 1, NULL);
  tx->internal = false;
  a->as_service = keel_es_tx_exec(tx, probe_insert, (const char *[]){"6"}, 1, NULL);
  return 0;
}

KT_CASE(a_statement_refused_to_a_service_stays_refused_after_keel_ran_the_same_text) {
  KT_SQLITE_ONLY(); /* the authorizer is SQLite's; PostgreSQL guards only events */
  kt_store s;
  keel_es *es = open_with_tables(&s);
  CHECK_OK(keel__es_transact_internal(es, make_probe, NULL));
  /* keel's own transactions write keel_ tables; the text is kept after the first */
  for (int i = 0; i < 3; i++)
    CHECK_OK(keel__es_transact_internal(es, insert_probe, "1"));
  CHECK_EQ(count_rows(es, "keel_cache_probe"), 3);
  /* the same text in a service's transaction: refused, nothing written */
  CHECK_EQ(keel_es_transact(es, NULL, 0, NULL, NULL, insert_probe, "2"), KEEL_EINVAL);
  CHECK_EQ(count_rows(es, "keel_cache_probe"), 3);
  /* and the service's refusal does not spoil keel's kept statement */
  CHECK_OK(keel__es_transact_internal(es, insert_probe, "3"));
  CHECK_EQ(keel_es_transact(es, NULL, 0, NULL, NULL, insert_probe, "4"), KEEL_EINVAL);
  CHECK_EQ(count_rows(es, "keel_cache_probe"), 4);
  /* both modes in one transaction: keel's passes, the service's dooms it */
  modes_arg a = {0};
  CHECK_EQ(keel_es_transact(es, NULL, 0, NULL, NULL, both_modes, &a), KEEL_EINVAL);
  CHECK_OK(a.as_keel);
  CHECK_EQ(a.as_service, KEEL_EINVAL);
  CHECK_EQ(count_rows(es, "keel_cache_probe"), 4); /* rolled back with it */
  kt_store_close(&s);
}

enum { MANY_TEXTS = 150 }; /* more than the writer keeps */

static int many_texts(keel_es_tx *tx, void *arg) {
  (void)arg;
  for (int i = 0; i < MANY_TEXTS; i++) {
    char sql[96];
    snprintf(sql, sizeof sql, "INSERT INTO outbox (id, body) VALUES ('m%d', 'b')", i);
    int rc = exec(tx, sql);
    if (rc) return rc;
  }
  return 0;
}

static int insert_note(keel_es_tx *tx, void *arg) {
  return keel_es_tx_exec(tx, "INSERT INTO outbox (id, body) VALUES ($1, 'n')",
                         (const char *[]){arg}, 1, NULL);
}

static int add_column(keel_es_tx *tx, void *arg) {
  (void)arg;
  return exec(tx, "ALTER TABLE outbox ADD COLUMN tag TEXT DEFAULT 'tagged'");
}

static int recreate_outbox(keel_es_tx *tx, void *arg) {
  (void)arg;
  int rc = exec(tx, "DROP TABLE outbox");
  if (!rc) rc = exec(tx, "CREATE TABLE outbox (body TEXT, id TEXT PRIMARY KEY)");
  return rc;
}

KT_CASE(kept_statements_follow_schema_changes_and_any_number_of_texts) {
  kt_store s;
  keel_es *es = open_with_tables(&s);
  CHECK_OK(keel_es_transact(es, NULL, 0, NULL, NULL, insert_note, "n1"));
  CHECK_OK(keel_es_transact(es, NULL, 0, NULL, NULL, add_column, NULL));
  CHECK_OK(keel_es_transact(es, NULL, 0, NULL, NULL, insert_note, "n2"));
  keel_es_rows rows;
  CHECK_OK(keel_es_query(es, "SELECT count(*) FROM outbox WHERE tag = 'tagged'", NULL, 0, &rows));
  CHECK_STR(keel_es_rows_get(&rows, 0, 0), "2");
  keel_es_rows_free(&rows);
  /* a unique violation of a kept statement, then the same statement again */
  CHECK_EQ(keel_es_transact(es, NULL, 0, NULL, NULL, insert_note, "n2"), KEEL_EEXIST);
  CHECK_OK(keel_es_transact(es, NULL, 0, NULL, NULL, insert_note, "n3"));
  CHECK_OK(keel_es_transact(es, NULL, 0, NULL, NULL, many_texts, NULL));
  CHECK_EQ(count_rows(es, "outbox"), 3 + MANY_TEXTS);
  /* the table dropped and made again, its columns in another order */
  CHECK_OK(keel_es_transact(es, NULL, 0, NULL, NULL, recreate_outbox, NULL));
  CHECK_OK(keel_es_transact(es, NULL, 0, NULL, NULL, insert_note, "n4"));
  CHECK_OK(keel_es_query(es, "SELECT id, body FROM outbox", NULL, 0, &rows));
  CHECK_EQ(rows.nrows, 1);
  CHECK_STR(keel_es_rows_get(&rows, 0, 0), "n4");
  CHECK_STR(keel_es_rows_get(&rows, 0, 1), "n");
  keel_es_rows_free(&rows);
  kt_store_close(&s);
}

/* ---- named statements (PostgreSQL, decision 0041) ------------------------------------------ */

/* How many of the one pooled connection's named statements hold `like`,
 * and how many runs they have had (-1 when none). */
static int64_t named_runs(keel_es *es, const char *like, int64_t *count) {
  keel_es_rows rows;
  CHECK_OK(keel_es_query(es,
                         "SELECT count(*), coalesce(sum(generic_plans + custom_plans), -1) "
                         "FROM pg_prepared_statements WHERE statement LIKE $1",
                         (const char *[]){like}, 1, &rows));
  *count = strtoll(keel_es_rows_get(&rows, 0, 0), NULL, 10);
  int64_t runs = strtoll(keel_es_rows_get(&rows, 0, 1), NULL, 10);
  keel_es_rows_free(&rows);
  return runs;
}

/* Names exist on direct PostgreSQL connections only. */
#define NAMES_ONLY()                                                                               \
  do {                                                                                             \
    KT_PG_ONLY();                                                                                  \
    if (kt_es_bouncer_port()) {                                                                    \
      fprintf(stderr, "   (direct connections only: behind PgBouncer names are off)\n");           \
      return;                                                                                      \
    }                                                                                              \
  } while (0)

/* A store whose pool is one connection: every call sees its names. */
static keel_es *one_connection(kt_store *s) {
  return kt_store_open(s, &(keel_es_opts){.pool_min = 1, .pool_max = 1});
}

static int64_t plus_one(keel_es *es, const char *sql, int64_t v) {
  char in[24];
  snprintf(in, sizeof in, "%lld", (long long)v);
  keel_es_rows rows;
  CHECK_OK(keel__es_exec(es, sql, (const char *[]){in}, 1, &rows));
  CHECK_EQ(rows.nrows, 1);
  int64_t out = strtoll(keel_es_rows_get(&rows, 0, 0), NULL, 10);
  keel_es_rows_free(&rows);
  return out;
}

KT_CASE(keels_own_texts_are_named_on_second_sight_and_the_services_never) {
  NAMES_ONLY();
  kt_store s;
  keel_es *es = one_connection(&s);
  int64_t count;
  /* keel's text: unnamed the first time, named and run the second and third */
  for (int i = 0; i < 3; i++)
    CHECK_EQ(plus_one(es, "SELECT CAST($1 AS BIGINT) + 1 AS named_probe", i), i + 1);
  CHECK_EQ(named_runs(es, "%named_probe%", &count), 2);
  CHECK_EQ(count, 1);
  /* the service's texts never take a name, however often they run */
  for (int i = 0; i < 3; i++) {
    keel_es_rows rows;
    CHECK_OK(keel_es_query(es, "SELECT CAST($1 AS BIGINT) * 7 AS service_probe",
                           (const char *[]){"6"}, 1, &rows));
    CHECK_STR(keel_es_rows_get(&rows, 0, 0), "42");
    keel_es_rows_free(&rows);
  }
  named_runs(es, "%service_probe%", &count);
  CHECK_EQ(count, 0);
  /* texts seen once take none; past 128 names the rest run unnamed, and
   * every answer is right either way */
  char sql[128];
  for (int i = 0; i < 300; i++) {
    snprintf(sql, sizeof sql, "SELECT CAST($1 AS BIGINT) + %d AS once_probe", i);
    CHECK_EQ(plus_one(es, sql, 5), 5 + i);
  }
  named_runs(es, "%once_probe%", &count);
  CHECK_EQ(count, 0);
  for (int round = 0; round < 3; round++)
    for (int i = 0; i < 200; i++) {
      snprintf(sql, sizeof sql, "SELECT CAST($1 AS BIGINT) + %d AS many_probe", i);
      CHECK_EQ(plus_one(es, sql, round), round + i);
    }
  named_runs(es, "%", &count);
  CHECK(count <= 128); /* the least recently used were deallocated */
  CHECK(count >= 100);
  /* a text that comes after them still gets a name, in place of the
   * least recently used */
  for (int i = 0; i < 3; i++)
    CHECK_EQ(plus_one(es, "SELECT CAST($1 AS BIGINT) + 1 AS late_probe", i), i + 1);
  CHECK_EQ(named_runs(es, "%late_probe%", &count), 2);
  CHECK_EQ(count, 1);
  named_runs(es, "%", &count);
  CHECK(count <= 128);
  kt_store_close(&s);
}

static int add_probe_column(keel_es_tx *tx, void *arg) {
  (void)arg;
  return keel_es_tx_exec(tx, "ALTER TABLE star_probe ADD COLUMN b INTEGER DEFAULT 7", NULL, 0,
                         NULL);
}

static int make_probe_table(keel_es_tx *tx, void *arg) {
  (void)arg;
  int rc = keel_es_tx_exec(tx, "CREATE TABLE star_probe (a INTEGER)", NULL, 0, NULL);
  if (!rc) rc = keel_es_tx_exec(tx, "INSERT INTO star_probe VALUES (1)", NULL, 0, NULL);
  return rc;
}

/* One connection and a table star_probe holding the row a = 1. */
static keel_es *probe_store(kt_store *s) {
  keel_es *es = one_connection(s);
  CHECK_OK(keel_es_transact(es, NULL, 0, NULL, NULL, make_probe_table, NULL));
  return es;
}

KT_CASE(a_named_select_star_fails_once_after_a_migration_then_runs_the_new_columns) {
  NAMES_ONLY();
  kt_store s;
  keel_es *es = probe_store(&s);
  keel_es_rows rows;
  const char *star = "SELECT * FROM star_probe WHERE a = CAST($1 AS INTEGER)";
  for (int i = 0; i < 3; i++) {
    CHECK_OK(keel__es_exec(es, star, (const char *[]){"1"}, 1, &rows));
    CHECK_EQ(rows.ncols, 1);
    keel_es_rows_free(&rows);
  }
  int64_t count;
  CHECK_EQ(named_runs(es, "%star_probe%", &count), 2);
  /* another instance's migration: PostgreSQL refuses the old plan's shape
   * to that call (why the service's own statements are never named) ... */
  CHECK_OK(keel_es_transact(es, NULL, 0, NULL, NULL, add_probe_column, NULL));
  CHECK_EQ(keel__es_exec(es, star, (const char *[]){"1"}, 1, &rows), KEEL_EIO);
  keel_es_rows_free(&rows);
  /* ... and the next run prepares the text again, in place of the old one */
  CHECK_OK(keel__es_exec(es, star, (const char *[]){"1"}, 1, &rows));
  CHECK_EQ(rows.ncols, 2);
  CHECK_STR(keel_es_rows_get(&rows, 0, 1), "7");
  keel_es_rows_free(&rows);
  named_runs(es, "%star_probe%", &count);
  CHECK_EQ(count, 1);
  kt_store_close(&s);
}

static int deallocate_all(keel_es_tx *tx, void *arg) {
  (void)arg;
  return keel_es_tx_exec(tx, "DEALLOCATE ALL", NULL, 0, NULL);
}

/* Deallocates the one named statement whose text holds arg. */
static int deallocate_like(keel_es_tx *tx, void *arg) {
  keel_es_rows rows = {0};
  int rc = keel_es_tx_exec(tx, "SELECT name FROM pg_prepared_statements WHERE statement LIKE $1",
                           (const char *[]){arg}, 1, &rows);
  if (rc == 0 && rows.nrows != 1) rc = KEEL_ENOENT;
  char sql[128];
  if (rc == 0) snprintf(sql, sizeof sql, "DEALLOCATE %s", keel_es_rows_get(&rows, 0, 0));
  keel_es_rows_free(&rows);
  return rc ? rc : keel_es_tx_exec(tx, sql, NULL, 0, NULL);
}

KT_CASE(a_name_gone_inside_a_pipelines_transaction_rolls_back_and_runs_again) {
  NAMES_ONLY();
  kt_store s;
  keel_es *es = probe_store(&s);
  keel_es_rows rows;
  const char *ins = "INSERT INTO star_probe (a) VALUES (CAST($1 AS INTEGER)) RETURNING a";
  for (int i = 0; i < 3; i++) {
    CHECK_OK(keel__es_exec_lazy(es, ins, (const char *[]){"2"}, 1, &rows));
    keel_es_rows_free(&rows);
  }
  /* BEGIN and SET LOCAL keep their names: the pipeline's transaction is
   * open when the insert's name is found missing */
  CHECK_OK(keel_es_transact(es, NULL, 0, NULL, NULL, deallocate_like, "%INSERT INTO star_probe%"));
  CHECK_OK(keel__es_exec_lazy(es, ins, (const char *[]){"3"}, 1, &rows));
  CHECK_STR(keel_es_rows_get(&rows, 0, 0), "3");
  keel_es_rows_free(&rows);
  CHECK_OK(keel_es_query(es, "SELECT count(*) FROM star_probe WHERE a = 3", NULL, 0, &rows));
  CHECK_STR(keel_es_rows_get(&rows, 0, 0), "1"); /* once, not twice */
  keel_es_rows_free(&rows);
  kt_store_close(&s);
}

KT_CASE(a_name_gone_missing_turns_names_off_and_the_call_runs_again_unnamed) {
  NAMES_ONLY();
  kt_store s;
  keel_es *es = one_connection(&s);
  int64_t count;
  keel_es_rows rows;
  for (int i = 0; i < 3; i++) {
    CHECK_EQ(plus_one(es, "SELECT CAST($1 AS BIGINT) + 1 AS gone_probe", i), i + 1);
    CHECK_OK(keel__es_exec_lazy(es, "SELECT CAST($1 AS BIGINT) + 3 AS lazy_probe",
                                (const char *[]){"1"}, 1, &rows));
    keel_es_rows_free(&rows);
  }
  CHECK_EQ(named_runs(es, "%gone_probe%", &count), 2);
  CHECK_EQ(named_runs(es, "%lazy_probe%", &count), 2);
  /* what a pooler that passes the backend's pid on would do: the next
   * server connection has none of them */
  CHECK_OK(keel_es_transact(es, NULL, 0, NULL, NULL, deallocate_all, NULL));
  /* a pipeline that begins a transaction (lazy), then a plain statement */
  CHECK_OK(keel__es_exec_lazy(es, "SELECT CAST($1 AS BIGINT) + 3 AS lazy_probe",
                              (const char *[]){"9"}, 1, &rows));
  CHECK_STR(keel_es_rows_get(&rows, 0, 0), "12");
  keel_es_rows_free(&rows);
  CHECK_EQ(plus_one(es, "SELECT CAST($1 AS BIGINT) + 1 AS gone_probe", 41), 42);
  for (int i = 0; i < 3; i++)
    CHECK_EQ(plus_one(es, "SELECT CAST($1 AS BIGINT) + 2 AS after_probe", i), i + 2);
  named_runs(es, "%_probe%", &count);
  CHECK_EQ(count, 0); /* off for good */
  kt_store_close(&s);
}

/* ---- lazy commits ------------------------------------------------------------------------ */

typedef struct level_arg {
  const char *note;
  char level[16];
} level_arg;

/* Notes a row and reads the connection's commit level: SQLite's synchronous
 * (1 NORMAL, 2 FULL), PostgreSQL's synchronous_commit. */
static int note_and_level(keel_es_tx *tx, void *arg) {
  level_arg *a = arg;
  int rc = insert_note(tx, (void *)a->note);
  keel_es_rows rows = {0};
  if (!rc)
    rc = keel_es_tx_exec(tx, kt_es_pg_url() ? "SHOW synchronous_commit" : "PRAGMA synchronous",
                         NULL, 0, &rows);
  if (!rc && rows.nrows == 1)
    snprintf(a->level, sizeof a->level, "%s", keel_es_rows_get(&rows, 0, 0));
  keel_es_rows_free(&rows);
  return rc;
}

KT_CASE(a_lazy_commit_skips_its_own_sync_and_the_next_durable_one_syncs_again) {
  kt_store s;
  keel_es *es = open_with_tables(&s);
  /* the store's own level, as a durable transaction sees it */
  level_arg d0 = {.note = "d0"};
  CHECK_OK(keel__es_transact_internal(es, note_and_level, &d0));
  CHECK_STR(d0.level, kt_es_pg_url() ? d0.level : "2"); /* SQLite: FULL, the default */
  for (int i = 0; i < 2; i++) {
    level_arg l = {.note = i ? "l1" : "l0"}, d = {.note = i ? "d2" : "d1"};
    CHECK_OK(keel__es_transact_lazy(es, note_and_level, &l));
    CHECK_STR(l.level, kt_es_pg_url() ? "off" : "1"); /* NORMAL: WAL written, not fsync'd */
    CHECK_OK(keel__es_transact_internal(es, note_and_level, &d));
    CHECK_STR(d.level, d0.level); /* the lazy level did not stay */
  }
  CHECK_EQ(count_rows(es, "outbox"), 5); /* the lazy ones committed too */
  kt_store_close(&s);
}

KT_CASE(one_statement_commits_alone_lazy_or_not_and_a_failed_one_leaves_nothing) {
  kt_store s;
  keel_es *es = open_with_tables(&s);
  keel_es_rows rows;
  CHECK_OK(keel__es_exec_lazy(es, "INSERT INTO outbox (id, body) VALUES ($1, $2) RETURNING id",
                              (const char *[]){"x1", "b"}, 2, &rows));
  CHECK_EQ(rows.nrows, 1);
  CHECK_EQ(rows.changed, 1);
  CHECK_STR(keel_es_rows_get(&rows, 0, 0), "x1");
  keel_es_rows_free(&rows);
  /* a failed statement: its error, nothing stored, and the connection (the
   * pool's, on PostgreSQL) serves the next one */
  for (int i = 0; i < 3; i++) {
    CHECK_EQ(keel__es_exec_lazy(es, "INSERT INTO outbox (id, body) VALUES ($1, 'c')",
                                (const char *[]){"x1"}, 1, NULL),
             KEEL_EEXIST);
    CHECK_EQ(keel__es_exec_lazy(es, "INSERT INTO nowhere (id) VALUES ($1)", (const char *[]){"x1"},
                                1, NULL) != 0,
             1);
  }
  CHECK_OK(keel__es_exec_lazy(es, "UPDATE outbox SET body = $1 WHERE id = 'x1'",
                              (const char *[]){"b2"}, 1, &rows));
  CHECK_EQ(rows.changed, 1);
  keel_es_rows_free(&rows);
  CHECK_OK(keel__es_exec_lazy(es, kt_es_pg_url() ? "SHOW synchronous_commit" : "PRAGMA synchronous",
                              NULL, 0, &rows));
  CHECK_STR(keel_es_rows_get(&rows, 0, 0), kt_es_pg_url() ? "off" : "1");
  keel_es_rows_free(&rows);
  /* keel__es_exec: the same, durable (SQLite's FULL; PostgreSQL's own level) */
  CHECK_OK(keel__es_exec(es, "INSERT INTO outbox (id, body) VALUES ($1, 'd') RETURNING id",
                         (const char *[]){"x2"}, 1, &rows));
  CHECK_STR(keel_es_rows_get(&rows, 0, 0), "x2");
  keel_es_rows_free(&rows);
  CHECK_EQ(keel__es_exec(es, "INSERT INTO outbox (id, body) VALUES ($1, 'd')",
                         (const char *[]){"x2"}, 1, NULL),
           KEEL_EEXIST);
  if (!kt_es_pg_url()) {
    CHECK_OK(keel__es_exec(es, "PRAGMA synchronous", NULL, 0, &rows));
    CHECK_STR(keel_es_rows_get(&rows, 0, 0), "2");
    keel_es_rows_free(&rows);
  }
  CHECK_OK(keel_es_query(es, "SELECT body FROM outbox ORDER BY id", NULL, 0, &rows));
  CHECK_EQ(rows.nrows, 2);
  CHECK_STR(keel_es_rows_get(&rows, 0, 0), "b2");
  keel_es_rows_free(&rows);
  kt_store_close(&s);
}

KT_MAIN(KT_ENTRY(statements_bind_by_number_and_results_come_back_as_text),
        KT_ENTRY(one_statement_no_transaction_control_and_the_first_error_dooms_the_rest),
        KT_ENTRY(query_refuses_writes_on_sqlite),
        KT_ENTRY(appends_and_rows_commit_together_or_not_at_all),
        KT_ENTRY(a_statement_refused_to_a_service_stays_refused_after_keel_ran_the_same_text),
        KT_ENTRY(kept_statements_follow_schema_changes_and_any_number_of_texts),
        KT_ENTRY(keels_own_texts_are_named_on_second_sight_and_the_services_never),
        KT_ENTRY(a_name_gone_missing_turns_names_off_and_the_call_runs_again_unnamed),
        KT_ENTRY(a_name_gone_inside_a_pipelines_transaction_rolls_back_and_runs_again),
        KT_ENTRY(a_named_select_star_fails_once_after_a_migration_then_runs_the_new_columns),
        KT_ENTRY(a_lazy_commit_skips_its_own_sync_and_the_next_durable_one_syncs_again),
        KT_ENTRY(one_statement_commits_alone_lazy_or_not_and_a_failed_one_leaves_nothing),
        KT_ENTRY_SCHED(many_processes_transacting_at_once_lose_no_update, 2),
        KT_ENTRY_SCHED(a_tx_lock_serialises_creates_and_read_then_write_across_connections, 2))
