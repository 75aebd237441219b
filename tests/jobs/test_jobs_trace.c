/* test_jobs_trace.c - the event store's and the jobs' spans (issue 13): a
 * traced request that appends, runs a transaction that enqueues a job,
 * enqueues another and reads gives one trace whose spans have the right
 * parents, down to the jobs' runs; on SQLite, and on PostgreSQL as
 * jobs.pg.test_jobs_trace. Spans are read back from the batch queue
 * (keel__trace_take), as tests/ops/test_trace.c does.
 */
#include <stdatomic.h>

#include "es/kt_es.h"
#include "keel/jobs.h"
#include "keel/process.h"
#include "keel/trace.h"
#include "ops/trace_internal.h"

static keel__span_data *got[4096];
static size_t ngot;

static void take_all(void) {
  ngot += keel__trace_take(got + ngot, 4096 - ngot);
}
static void free_all(void) {
  for (size_t i = 0; i < ngot; i++)
    keel__span_data_free(got[i]);
  ngot = 0;
}

/* The k-th (0-based) span named name, or NULL. */
static const keel__span_data *nth(const char *name, int k) {
  for (size_t i = 0; i < ngot; i++)
    if (strcmp(got[i]->name, name) == 0 && k-- == 0) return got[i];
  return NULL;
}
static int count(const char *name) {
  int n = 0;
  for (size_t i = 0; i < ngot; i++)
    n += strcmp(got[i]->name, name) == 0;
  return n;
}

static const keel__tattr *attr(const keel__span_data *d, const char *key) {
  for (uint32_t i = 0; i < d->attrs.n; i++)
    if (strcmp(d->attrs.a[i].key, key) == 0) return &d->attrs.a[i];
  return NULL;
}
static const char *attr_s(const keel__span_data *d, const char *key) {
  const keel__tattr *a = attr(d, key);
  return a && a->type == KEEL__TA_STR ? a->v.s : "";
}
static int64_t attr_i(const keel__span_data *d, const char *key) {
  const keel__tattr *a = attr(d, key);
  return a && a->type == KEEL__TA_INT ? a->v.i : -1;
}

static bool child_of(const keel__span_data *d, const uint8_t parent[8]) {
  return d && d->has_parent && memcmp(d->parent_id, parent, 8) == 0;
}

/* ---- the worker ------------------------------------------------------------------------------ */

static atomic_int g_performed;

static int traced_worker(keel_job *job, void *ud) {
  (void)job, (void)ud;
  keel_span inner; /* a child of the job's perform span */
  keel_span_start(&inner, "in the worker", KEEL_SPAN_INTERNAL, NULL);
  keel_span_end(&inner);
  atomic_fetch_add(&g_performed, 1);
  return 0;
}

static const keel_job_worker workers[] = {{.name = "mailer", .perform = traced_worker}};
static const keel_job_queue queues[] = {{.name = "mail", .concurrency = 2}};

static keel_jobs *start_jobs(keel_es *es) {
  keel_jobs_opts o = {.es = es,
                      .workers = workers,
                      .nworkers = 1,
                      .queues = queues,
                      .nqueues = 1,
                      .instance = "t",
                      .poll_ms = 20};
  keel_jobs *j = NULL;
  CHECK_OK(keel_jobs_start(&o, &j));
  return j;
}

static void wait_performed(int n) {
  for (int i = 0; i < 6000 && atomic_load(&g_performed) < n; i++)
    keel_sleep(5);
  CHECK(atomic_load(&g_performed) >= n);
}

typedef struct enq {
  keel_jobs *j;
  int64_t id;
} enq;

static int enqueue_in_tx(keel_es_tx *tx, void *arg) {
  enq *e = arg;
  return keel_jobs_enqueue_tx(e->j, tx, &(keel_job_new){.worker = "mailer", .queue = "mail"},
                              &e->id, NULL);
}

static void start_tracing(void) {
  keel_trace_opts o = {.sampler = KEEL_SAMPLER_ALWAYS_ON, .max_queue = 4096};
  CHECK_OK(keel_trace_start(&o));
}

KT_CASE(a_traced_request_that_appends_and_enqueues_gives_spans_with_the_right_parents) {
  atomic_store(&g_performed, 0);
  start_tracing();
  kt_store st;
  keel_es *es = kt_store_open(&st, NULL);
  keel_jobs *j = start_jobs(es);
  const char *db = kt_es_pg_url() ? "postgresql" : "sqlite";

  keel_span req;
  keel_span_start(&req, "POST /orders", KEEL_SPAN_SERVER, NULL);
  CHECK_OK(kt_append_n(es, "order-1", KEEL_ES_ANY, "placed", 2, 0, NULL));
  keel_es_event_in ev = {.type = "confirmed", .payload = json_pack("{s:i}", "i", 9)};
  keel_es_append_req ar = {.stream = "order-1", .expected = 2, .events = &ev, .n = 1};
  keel_es_append_result res;
  enq e = {.j = j};
  CHECK_OK(keel_es_transact(es, &ar, 1, &res, NULL, enqueue_in_tx, &e));
  int64_t plain = 0;
  CHECK_OK(
      keel_jobs_enqueue(j, &(keel_job_new){.worker = "mailer", .queue = "mail"}, &plain, NULL));
  keel_es_events out;
  CHECK_OK(keel_es_read_stream(es, "order-1", NULL, &out));
  CHECK_EQ(out.n, 3);
  keel_es_events_free(&out);
  CHECK_EQ(keel_es_append(es, "order-1", 0, &ev, 1, NULL), KEEL_ECONFLICT); /* a failed append */
  json_decref(ev.payload);
  keel_span_end(&req);

  /* outside a trace: a read (a subscription's page) makes no span */
  CHECK_OK(keel_es_read_all(es, 0, 10, NULL, &out));
  keel_es_events_free(&out);

  wait_performed(2);
  keel_jobs_stop(j, 5000);
  take_all();

  CHECK_EQ(count("read_all"), 0);
  CHECK_EQ(count("append"), 2);
  const keel__span_data *append = nth("append", 0), *failed = nth("append", 1);
  const keel__span_data *tx = nth("transact", 0), *read = nth("read", 0);
  CHECK(append && failed && tx && read);
  const keel__span_data *db_spans[] = {append, failed, tx, read};
  for (size_t i = 0; i < 4; i++) {
    CHECK(memcmp(db_spans[i]->trace_id, req.ctx.trace_id, 16) == 0);
    CHECK(child_of(db_spans[i], req.ctx.span_id));
    CHECK_EQ(db_spans[i]->kind, KEEL_SPAN_CLIENT);
    CHECK_STR(attr_s(db_spans[i], "db.system"), db);
    CHECK_STR(attr_s(db_spans[i], "db.collection.name"), "order-1");
  }
  CHECK_STR(attr_s(append, "db.operation.name"), "append");
  CHECK_EQ(attr_i(append, "keel.es.events"), 2);
  CHECK_EQ(append->status, KEEL_SPAN_UNSET);
  CHECK_EQ(failed->status, KEEL_SPAN_ERROR);
  CHECK_STR(attr_s(failed, "error.type"), "KEEL_ECONFLICT");
  CHECK_STR(attr_s(tx, "db.operation.name"), "transact");
  CHECK_EQ(attr_i(tx, "keel.es.events"), 1);
  CHECK_EQ(attr_i(read, "keel.es.events"), 3);

  /* the producers: one a child of the transaction, one of the request */
  CHECK_EQ(count("enqueue mail"), 2);
  const keel__span_data *p_tx = nth("enqueue mail", 0), *p_plain = nth("enqueue mail", 1);
  if (!child_of(p_tx, tx->span_id)) {
    const keel__span_data *t = p_tx;
    p_tx = p_plain, p_plain = t;
  }
  CHECK(p_tx && p_plain && child_of(p_tx, tx->span_id));
  CHECK(child_of(p_plain, req.ctx.span_id));
  for (int k = 0; k < 2; k++) {
    const keel__span_data *p = k ? p_plain : p_tx;
    CHECK_EQ(p->kind, KEEL_SPAN_PRODUCER);
    CHECK(memcmp(p->trace_id, req.ctx.trace_id, 16) == 0);
    CHECK_STR(attr_s(p, "messaging.system"), "keel_jobs");
    CHECK_STR(attr_s(p, "messaging.destination.name"), "mail");
    CHECK_STR(attr_s(p, "messaging.operation.type"), "send");
  }
  char id_tx[24], id_plain[24];
  snprintf(id_tx, sizeof id_tx, "%lld", (long long)e.id);
  snprintf(id_plain, sizeof id_plain, "%lld", (long long)plain);
  CHECK_STR(attr_s(p_tx, "messaging.message.id"), id_tx);
  CHECK_STR(attr_s(p_plain, "messaging.message.id"), id_plain);

  /* the consumers continue the trace, each a child of its job's producer */
  CHECK_EQ(count("perform mail"), 2);
  int matched = 0;
  for (int k = 0; k < 2; k++) {
    const keel__span_data *c = nth("perform mail", k);
    CHECK_EQ(c->kind, KEEL_SPAN_CONSUMER);
    CHECK(memcmp(c->trace_id, req.ctx.trace_id, 16) == 0);
    CHECK_STR(attr_s(c, "messaging.operation.type"), "process");
    const keel__span_data *p =
        strcmp(attr_s(c, "messaging.message.id"), id_tx) == 0 ? p_tx : p_plain;
    matched += child_of(c, p->span_id);
    /* the worker's own span is a child of its perform span */
    int inner = 0;
    for (int m = 0; m < 2; m++)
      inner += child_of(nth("in the worker", m), c->span_id);
    CHECK_EQ(inner, 1);
  }
  CHECK_EQ(matched, 2);
  free_all();
  keel_trace_stop();
  kt_store_close(&st);
}

/* A job enqueued outside any trace runs as the root of a trace of its own. */
KT_CASE(a_job_enqueued_outside_a_trace_starts_its_own) {
  atomic_store(&g_performed, 0);
  start_tracing();
  kt_store st;
  keel_es *es = kt_store_open(&st, NULL);
  keel_jobs *j = start_jobs(es);
  CHECK_OK(keel_jobs_enqueue(j, &(keel_job_new){.worker = "mailer", .queue = "mail"}, NULL, NULL));
  wait_performed(1);
  keel_jobs_stop(j, 5000);
  take_all();
  CHECK_EQ(count("enqueue mail"), 0);
  const keel__span_data *c = nth("perform mail", 0);
  CHECK(c != NULL);
  CHECK(!c->has_parent);
  CHECK(child_of(nth("in the worker", 0), c->span_id));
  free_all();
  keel_trace_stop();
  kt_store_close(&st);
}

static int old_table(keel_es_tx *tx, void *arg) {
  bool pg = *(bool *)arg;
  char sql[1024];
  snprintf(
      sql, sizeof sql,
      "CREATE TABLE keel_jobs (id %s, queue TEXT NOT NULL, worker TEXT NOT NULL, args TEXT NOT "
      "NULL, state TEXT NOT NULL, priority INTEGER NOT NULL, attempt INTEGER NOT NULL, "
      "max_attempts INTEGER NOT NULL, run_at BIGINT NOT NULL, inserted_at BIGINT NOT NULL, "
      "attempted_at BIGINT, finished_at BIGINT, instance TEXT, errors TEXT NOT NULL, tags "
      "TEXT NOT NULL, unique_key TEXT, unique_until BIGINT)",
      pg ? "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
         : "INTEGER PRIMARY KEY AUTOINCREMENT");
  return keel_es_tx_exec(tx, sql, NULL, 0, NULL);
}

/* A keel_jobs table made before traceparent existed gains the column. */
KT_CASE(a_jobs_table_from_before_tracing_gains_the_traceparent_column) {
  atomic_store(&g_performed, 0);
  start_tracing();
  kt_store st;
  keel_es *es = kt_store_open(&st, NULL);
  bool pg = kt_es_pg_url() != NULL;
  CHECK_OK(keel_es_transact(es, NULL, 0, NULL, NULL, old_table, &pg));
  keel_jobs *j = start_jobs(es);
  keel_span req;
  keel_span_start(&req, "request", KEEL_SPAN_SERVER, NULL);
  int64_t id = 0;
  CHECK_OK(keel_jobs_enqueue(j, &(keel_job_new){.worker = "mailer", .queue = "mail"}, &id, NULL));
  keel_span_end(&req);
  wait_performed(1);
  keel_jobs_stop(j, 5000);
  char ids[24];
  snprintf(ids, sizeof ids, "%lld", (long long)id);
  keel_es_rows rows = {0};
  CHECK_OK(keel_es_query(es, "SELECT traceparent FROM keel_jobs WHERE id = CAST($1 AS BIGINT)",
                         (const char *[]){ids}, 1, &rows));
  CHECK_EQ(rows.nrows, 1);
  take_all();
  const keel__span_data *p = nth("enqueue mail", 0);
  CHECK(p != NULL);
  keel_span_ctx pc = {.flags = p->flags, .valid = true};
  memcpy(pc.trace_id, p->trace_id, 16);
  memcpy(pc.span_id, p->span_id, 8);
  char want[56];
  keel_trace_format(&pc, want);
  CHECK_STR(keel_es_rows_get(&rows, 0, 0), want);
  keel_es_rows_free(&rows);
  free_all();
  keel_trace_stop();
  kt_store_close(&st);
}

KT_MAIN(KT_ENTRY(a_traced_request_that_appends_and_enqueues_gives_spans_with_the_right_parents),
        KT_ENTRY(a_job_enqueued_outside_a_trace_starts_its_own),
        KT_ENTRY(a_jobs_table_from_before_tracing_gains_the_traceparent_column))
