/* test_sub.c - subscriptions: catch up then live with every event handled
 * once and in order while a writer appends; the checkpoint stored and
 * resumed; a transactional projection equal to the feed; a poison event
 * retried, parked with its stream's later events waiting behind it while
 * other streams go on, then retried or resolved; skip and stop; pause and
 * resume. Both backends. */
#include <stdatomic.h>
#include <stdlib.h>

#include "es/es_internal.h"
#include "es/kt_es.h"
#include "keel/health.h"
#include "keel/subscription.h"

/* What a side-effecting handler saw (written by the subscription's
 * process, read by the test after a status call has synchronised them). */
typedef struct seen {
  int64_t pos[4096];
  char stream[4096][16];
  atomic_size_t n;
  atomic_int poison_fixed; /* 0: events with {"poison": true} fail */
  atomic_int calls;
} seen;

static int record(const keel_es_event *ev, void *ud) {
  seen *s = ud;
  atomic_fetch_add(&s->calls, 1);
  if (!atomic_load(&s->poison_fixed) && json_is_true(json_object_get(keel_es_event_payload(ev), "poison")))
    return KEEL_EIO;
  size_t i = atomic_load(&s->n);
  if (i < 4096) {
    s->pos[i] = ev->position;
    snprintf(s->stream[i], sizeof s->stream[i], "%s", ev->stream);
  }
  atomic_store(&s->n, i + 1);
  return 0;
}

static keel_sub_status status_of(const char *name) {
  keel_sub_status st;
  CHECK_OK(keel_sub_status_get(name, &st));
  return st;
}

/* Waits (20 s at most) until the subscription has its checkpoint at pos
 * and is live (at the head, nothing in hand). */
static keel_sub_status wait_checkpoint(const char *name, int64_t pos) {
  for (int i = 0; i < 2000; i++) {
    keel_sub_status st = status_of(name);
    if (st.checkpoint >= pos && st.state == KEEL_SUB_LIVE) return st;
    keel_sleep(10);
  }
  keel_sub_status st = status_of(name);
  fprintf(stderr, "checkpoint %lld, wanted %lld\n", (long long)st.checkpoint, (long long)pos);
  CHECK(!"the subscription did not reach the position");
  return st;
}

static int64_t head_of(keel_es *es) {
  int64_t h;
  CHECK_OK(keel_es_head(es, &h));
  return h;
}

static void check_in_order_once(const seen *s, int64_t expected_n) {
  CHECK_EQ((int64_t)atomic_load(&s->n), expected_n);
  for (size_t i = 1; i < atomic_load(&s->n); i++)
    CHECK(s->pos[i] > s->pos[i - 1]);
}

/* ---- catch up, then live ------------------------------------------------------------ */

enum { TAG_DONE = 9 };

typedef struct writer {
  keel_es *es;
  keel_pid_t parent;
  int count;
} writer;

static void write_loop(void *arg) {
  writer *w = arg;
  for (int i = 0; i < w->count; i++) {
    char stream[16];
    snprintf(stream, sizeof stream, "live-%d", i % 5);
    CHECK_OK(kt_append_n(w->es, stream, KEEL_ES_ANY, "Live", 1 + (size_t)(i % 3), i, NULL));
    if (i % 10 == 0) keel_sleep(1);
  }
  kt_send_u64(w->parent, TAG_DONE, 0);
}

KT_CASE(catch_up_then_live_every_event_once_in_order) {
  kt_store st;
  keel_es *es = kt_store_open(&st, NULL);
  for (int i = 0; i < 30; i++) {
    char stream[16];
    snprintf(stream, sizeof stream, "old-%d", i % 7);
    CHECK_OK(kt_append_n(es, stream, KEEL_ES_ANY, "Old", 10, i * 10, NULL));
  }
  seen *s = calloc(1, sizeof *s);
  keel_sub_opts o = {.name = "all", .es = es, .handle = record, .ud = s, .batch = 64,
                     .poll_ms = 20};
  keel_pid_t pid;
  CHECK_OK(keel_sub_start(&o, false, &pid));
  CHECK_EQ(keel_sub_start(&o, false, NULL), KEEL_EEXIST); /* one per name in a node */
  /* a writer appends while the subscription catches up */
  writer w = {.es = es, .parent = keel_self(), .count = 200};
  CHECK_OK(keel_spawn(write_loop, &w, NULL, NULL));
  keel_msg_free(kt_recv(60000));
  int64_t head = head_of(es);
  keel_sub_status ss = wait_checkpoint("all", head);
  CHECK_EQ(ss.state, KEEL_SUB_LIVE);
  CHECK_EQ(ss.lag, 0);
  CHECK_EQ(ss.handled, (uint64_t)head);
  check_in_order_once(s, head); /* positions 1..head, each once */
  CHECK_EQ(s->pos[0], 1);

  /* stopped and started again: from the stored checkpoint, nothing twice */
  CHECK_OK(keel_sub_stop("all", 0));
  CHECK_EQ(keel_sub_status_get("all", NULL), KEEL_ENOPROC);
  CHECK_OK(kt_append_n(es, "after-1", KEEL_ES_ANY, "After", 5, 0, NULL));
  CHECK_OK(keel_sub_start(&o, false, &pid));
  wait_checkpoint("all", head + 5);
  check_in_order_once(s, head + 5);

  /* a filter: only one category, from the beginning under another name */
  seen *f = calloc(1, sizeof *f);
  keel_sub_opts fo = {.name = "old-only", .es = es, .handle = record, .ud = f, .poll_ms = 20,
                      .filter = {.category = "old"}};
  CHECK_OK(keel_sub_start(&fo, false, NULL));
  for (int i = 0; i < 2000 && atomic_load(&f->n) < 300; i++)
    keel_sleep(10);
  status_of("old-only");
  check_in_order_once(f, 300);
  for (size_t i = 0; i < 300; i++)
    CHECK(strncmp(f->stream[i], "old-", 4) == 0);
  CHECK_OK(keel_sub_stop("old-only", 0));
  CHECK_OK(keel_sub_stop("all", 0));
  free(s);
  free(f);
  kt_store_close(&st);
}

/* ---- a transactional projection ----------------------------------------------------- */

static int project_counts(keel_es_tx *tx, const keel_es_event *ev, void *ud) {
  (void)ud;
  char pos[24];
  snprintf(pos, sizeof pos, "%lld", (long long)ev->position);
  return keel_es_tx_exec(tx,
                         "INSERT INTO stream_counts (stream, n, last) VALUES ($1, 1, "
                         "CAST($2 AS BIGINT)) ON CONFLICT (stream) DO UPDATE SET "
                         "n = stream_counts.n + 1, last = excluded.last",
                         (const char *[]){ev->stream, pos}, 2, NULL);
}

static int create_counts(keel_es_tx *tx, void *arg) {
  (void)arg;
  return keel_es_tx_exec(tx,
                         "CREATE TABLE IF NOT EXISTS stream_counts (stream TEXT PRIMARY KEY, "
                         "n BIGINT NOT NULL, last BIGINT NOT NULL)",
                         NULL, 0, NULL);
}

KT_CASE(a_transactional_projection_applies_each_event_once) {
  kt_store st;
  keel_es *es = kt_store_open(&st, NULL);
  CHECK_OK(keel_es_transact(es, NULL, 0, NULL, NULL, create_counts, NULL));
  int per[4] = {0};
  for (int i = 0; i < 120; i++) {
    char stream[16];
    snprintf(stream, sizeof stream, "acct-%d", i % 4);
    CHECK_OK(kt_append_n(es, stream, KEEL_ES_ANY, "Moved", 1 + (size_t)(i % 2), i, NULL));
    per[i % 4] += 1 + i % 2;
  }
  keel_sub_opts o = {.name = "counts", .es = es, .project = project_counts, .batch = 50,
                     .poll_ms = 20};
  CHECK_OK(keel_sub_start(&o, false, NULL));
  wait_checkpoint("counts", head_of(es));
  /* stop mid-way through more appends, start again: still each once */
  CHECK_OK(kt_append_n(es, "acct-0", KEEL_ES_ANY, "Moved", 7, 0, NULL));
  per[0] += 7;
  CHECK_OK(keel_sub_stop("counts", 0));
  CHECK_OK(keel_sub_start(&o, false, NULL));
  wait_checkpoint("counts", head_of(es));
  keel_es_rows rows;
  CHECK_OK(keel_es_query(es, "SELECT stream, n FROM stream_counts ORDER BY stream", NULL, 0,
                         &rows));
  CHECK_EQ(rows.nrows, 4);
  for (size_t r = 0; r < 4; r++)
    CHECK_EQ(strtoll(keel_es_rows_get(&rows, r, 1), NULL, 10), per[r]);
  keel_es_rows_free(&rows);
  CHECK_OK(keel_es_query(es, "SELECT position FROM keel_sub_checkpoints WHERE name = $1",
                         (const char *[]){"counts"}, 1, &rows));
  CHECK_EQ(strtoll(keel_es_rows_get(&rows, 0, 0), NULL, 10), head_of(es));
  keel_es_rows_free(&rows);
  CHECK_OK(keel_sub_stop("counts", 0));
  kt_store_close(&st);
}

/* ---- poison events ---------------------------------------------------------------------- */

static void append_poison(keel_es *es, const char *stream) {
  json_t *p = json_pack("{s:b}", "poison", 1);
  keel_es_event_in ev = {.type = "Bad", .payload = p};
  CHECK_OK(keel_es_append(es, stream, KEEL_ES_ANY, &ev, 1, NULL));
  json_decref(p);
}

/* acct-1: 2 good; acct-2: 1 good, the poison, 3 good; acct-1: 2 good. */
static int64_t poison_fixture(keel_es *es) {
  CHECK_OK(kt_append_n(es, "acct-1", KEEL_ES_ANY, "Ok", 2, 0, NULL));
  CHECK_OK(kt_append_n(es, "acct-2", KEEL_ES_ANY, "Ok", 1, 0, NULL));
  append_poison(es, "acct-2");
  int64_t poison = head_of(es);
  CHECK_OK(kt_append_n(es, "acct-2", KEEL_ES_ANY, "Ok", 3, 0, NULL));
  CHECK_OK(kt_append_n(es, "acct-1", KEEL_ES_ANY, "Ok", 2, 0, NULL));
  return poison;
}

static size_t count_stream(const seen *s, const char *stream) {
  size_t k = 0;
  for (size_t i = 0; i < atomic_load(&s->n); i++)
    k += strcmp(s->stream[i], stream) == 0;
  return k;
}

KT_CASE(a_poison_event_is_retried_then_parked_and_its_stream_waits_behind_it) {
  kt_store st;
  keel_metrics *reg;
  CHECK_OK(keel_metrics_new(&reg, 0));
  keel_es *es = kt_store_open(&st, NULL);
  int64_t poison = poison_fixture(es);
  seen *s = calloc(1, sizeof *s);
  keel_sub_opts o = {.name = "mail", .es = es, .handle = record, .ud = s, .max_attempts = 3,
                     .backoff_ms = 1, .backoff_max_ms = 5, .poll_ms = 20, .metrics = reg};
  CHECK_OK(keel_sub_start(&o, false, NULL));
  keel_sub_status ss = wait_checkpoint("mail", head_of(es));
  /* acct-1 went on, acct-2's later events wait */
  CHECK_EQ(count_stream(s, "acct-1"), 4);
  CHECK_EQ(count_stream(s, "acct-2"), 1);
  CHECK_EQ(atomic_load(&s->calls), 4 + 1 + 3); /* the poison tried three times */
  CHECK_EQ(ss.failures, 3);
  CHECK_EQ(ss.parked, 4);
  keel_sub_parked_event pk[8];
  size_t n;
  CHECK_OK(keel_sub_parked(es, "mail", pk, 8, &n));
  CHECK_EQ(n, 4);
  CHECK_EQ(pk[0].position, poison);
  CHECK(!pk[0].waiting);
  CHECK_EQ(pk[0].attempts, 3);
  CHECK(pk[0].first_failure_ms > 0 && pk[0].last_failure_ms >= pk[0].first_failure_ms);
  CHECK_STR(pk[0].stream, "acct-2");
  CHECK_STR(pk[0].type, "Bad");
  CHECK(pk[0].error[0] != 0);
  for (size_t i = 1; i < 4; i++) {
    CHECK(pk[i].waiting);
    CHECK_EQ(pk[i].position, poison + (int64_t)i);
  }
  /* the checkpoint is stored past them: a restart does not hand them out */
  CHECK_OK(keel_sub_stop("mail", 0));
  CHECK_OK(keel_sub_start(&o, false, NULL));
  /* new events of the blocked stream wait too */
  CHECK_OK(kt_append_n(es, "acct-2", KEEL_ES_ANY, "Ok", 1, 0, NULL));
  ss = wait_checkpoint("mail", head_of(es));
  CHECK_EQ(ss.parked, 5);
  CHECK_EQ(count_stream(s, "acct-2"), 1);
  /* retrying an event that is not a failed one */
  CHECK_EQ(keel_sub_retry("mail", poison + 1), KEEL_ENOENT);
  CHECK_EQ(keel_sub_retry("mail", 99999), KEEL_ENOENT);
  /* still broken: parked again, nothing behind it moves */
  CHECK_OK(keel_sub_retry("mail", poison));
  for (int i = 0; i < 500; i++) {
    CHECK_OK(keel_sub_parked(es, "mail", pk, 8, &n));
    if (pk[0].attempts == 4) break;
    keel_sleep(10);
  }
  CHECK_EQ(pk[0].attempts, 4);
  CHECK(!pk[0].waiting);
  CHECK_EQ(n, 5);
  /* fixed: the retry hands it out, then the waiting ones, in order */
  atomic_store(&s->poison_fixed, 1);
  CHECK_OK(keel_sub_retry("mail", poison));
  for (int i = 0; i < 500; i++) {
    CHECK_OK(keel_sub_parked(es, "mail", pk, 8, &n));
    if (n == 0) break;
    keel_sleep(10);
  }
  CHECK_EQ(n, 0);
  /* the table is empty; the status follows once the server has looked */
  for (int i = 0; i < 500 && status_of("mail").parked; i++)
    keel_sleep(10);
  ss = status_of("mail");
  CHECK_EQ(ss.parked, 0);
  CHECK_EQ(count_stream(s, "acct-2"), 1 + 5);
  /* acct-2's events came in their order */
  int64_t last = 0;
  for (size_t i = 0; i < atomic_load(&s->n); i++)
    if (strcmp(s->stream[i], "acct-2") == 0) {
      CHECK(s->pos[i] > last);
      last = s->pos[i];
    }
  /* and the stream is free again */
  CHECK_OK(kt_append_n(es, "acct-2", KEEL_ES_ANY, "Ok", 1, 0, NULL));
  wait_checkpoint("mail", head_of(es));
  CHECK_EQ(count_stream(s, "acct-2"), 7);
  keel_counter *failed_c;
  CHECK_OK(keel_counter_get(keel_metrics_find(reg, "sub_events_total"),
                            (const char *[]){"mail", "failed"}, &failed_c));
  CHECK_EQ(keel_counter_value(failed_c), 4); /* three tries, then one more retry */
  CHECK_OK(keel_sub_stop("mail", 0));
  free(s);
  kt_store_close(&st);
  keel_metrics_free(reg);
}

KT_CASE(resolve_gives_the_event_up_and_releases_its_stream) {
  kt_store st;
  keel_es *es = kt_store_open(&st, NULL);
  int64_t poison = poison_fixture(es);
  seen *s = calloc(1, sizeof *s);
  keel_sub_opts o = {.name = "res", .es = es, .handle = record, .ud = s, .max_attempts = 1,
                     .poll_ms = 20};
  CHECK_OK(keel_sub_start(&o, false, NULL));
  keel_sub_status ss = wait_checkpoint("res", head_of(es));
  CHECK_EQ(ss.parked, 4);
  CHECK_EQ(atomic_load(&s->calls), 4 + 1 + 1); /* max_attempts 1: no retry */
  CHECK_EQ(keel_sub_resolve("res", poison + 1), KEEL_ENOENT); /* a waiting one */
  CHECK_OK(keel_sub_resolve("res", poison));
  keel_sub_parked_event pk[8];
  size_t n = 1;
  for (int i = 0; i < 500 && n; i++) {
    CHECK_OK(keel_sub_parked(es, "res", pk, 8, &n));
    keel_sleep(10);
  }
  CHECK_EQ(n, 0);
  CHECK_EQ(count_stream(s, "acct-2"), 1 + 3); /* the poison never handled */
  CHECK_OK(keel_sub_stop("res", 0));
  free(s);
  kt_store_close(&st);
}

KT_CASE(skip_lets_the_stream_go_on_and_stop_stops) {
  kt_store st;
  keel_es *es = kt_store_open(&st, NULL);
  int64_t poison = poison_fixture(es);
  seen *s = calloc(1, sizeof *s);
  keel_sub_opts o = {.name = "skip", .es = es, .handle = record, .ud = s, .max_attempts = 2,
                     .backoff_ms = 1, .poll_ms = 20, .on_failure = KEEL_SUB_SKIP};
  CHECK_OK(keel_sub_start(&o, false, NULL));
  keel_sub_status ss = wait_checkpoint("skip", head_of(es));
  CHECK_EQ(ss.parked, 1);
  CHECK_EQ(count_stream(s, "acct-2"), 1 + 3);
  CHECK_OK(keel_sub_stop("skip", 0));

  /* stop: the subscription exits, its checkpoint just before the poison */
  seen *t = calloc(1, sizeof *t);
  keel_sub_opts so = {.name = "stopper", .es = es, .handle = record, .ud = t, .max_attempts = 2,
                      .backoff_ms = 1, .poll_ms = 20, .on_failure = KEEL_SUB_STOP};
  keel_pid_t pid;
  CHECK_OK(keel_sub_start(&so, false, &pid));
  keel_ref_t mon;
  CHECK_OK(keel_monitor(pid, &mon));
  keel_msg_t *down = kt_recv(20000);
  CHECK_EQ(keel_msg_kind_of(down), KEEL_MSG_DOWN);
  CHECK_EQ(keel_msg_ref(down), mon);
  keel_msg_free(down);
  keel_es_rows rows;
  CHECK_OK(keel_es_query(es, "SELECT position FROM keel_sub_checkpoints WHERE name = $1",
                         (const char *[]){"stopper"}, 1, &rows));
  CHECK_EQ(strtoll(keel_es_rows_get(&rows, 0, 0), NULL, 10), poison - 1);
  keel_es_rows_free(&rows);
  free(s);
  free(t);
  kt_store_close(&st);
}

KT_CASE(pause_holds_events_resume_hands_them_out) {
  kt_store st;
  keel_es *es = kt_store_open(&st, NULL);
  seen *s = calloc(1, sizeof *s);
  keel_sub_opts o = {.name = "p", .es = es, .handle = record, .ud = s, .poll_ms = 20,
                     .from = KEEL_SUB_FROM_END};
  CHECK_OK(kt_append_n(es, "before-1", KEEL_ES_ANY, "T", 3, 0, NULL)); /* before the start */
  CHECK_OK(keel_sub_start(&o, false, NULL));
  CHECK_OK(keel_sub_pause("p"));
  CHECK_EQ(status_of("p").state, KEEL_SUB_PAUSED);
  CHECK_OK(kt_append_n(es, "p-1", KEEL_ES_ANY, "T", 4, 0, NULL));
  keel_sleep(100);
  CHECK_EQ(atomic_load(&s->n), 0);
  CHECK_OK(keel_sub_resume("p"));
  wait_checkpoint("p", head_of(es));
  check_in_order_once(s, 4); /* from the end: the earlier three are not handed out */
  CHECK_EQ(s->pos[0], 4);
  CHECK_OK(keel_sub_stop("p", 0));

  /* bad options */
  keel_sub_opts bad = {.name = "b", .es = es};
  CHECK_EQ(keel_sub_start(&bad, false, NULL), KEEL_EINVAL); /* no handler */
  bad = (keel_sub_opts){.name = "b c", .es = es, .handle = record};
  CHECK_EQ(keel_sub_start(&bad, false, NULL), KEEL_EINVAL);
  bad = (keel_sub_opts){.name = "b", .es = es, .handle = record, .project = project_counts};
  CHECK_EQ(keel_sub_start(&bad, false, NULL), KEEL_EINVAL);
  CHECK_EQ(keel_sub_pause("nobody"), KEEL_ENOPROC);
  free(s);
  kt_store_close(&st);
}

/* ---- health ---------------------------------------------------------------------------- */

static int slow(const keel_es_event *ev, void *ud) {
  (void)ev;
  atomic_int *gate = ud;
  while (!atomic_load(gate))
    keel_sleep(5);
  return 0;
}

static json_t *check_entry(const char *name) {
  keel_health_response r;
  CHECK_OK(keel_health_detailed(&r));
  json_t *body = json_loads(r.body, 0, NULL);
  CHECK(body != NULL);
  json_t *c = json_incref(json_object_get(json_object_get(body, "checks"), name));
  if (!c) fprintf(stderr, "%s\n", r.body);
  CHECK(c != NULL);
  json_decref(body);
  keel_health_response_free(&r);
  return c;
}

KT_CASE(health_reports_lag_parked_events_and_holds_readiness_while_catching_up) {
  keel_health_reset();
  keel_health_set_started(true);
  kt_store st;
  keel_es *es = kt_store_open(&st, NULL);
  CHECK_OK(kt_append_n(es, "h-1", KEEL_ES_ANY, "T", 30, 0, NULL));
  static atomic_int gate;
  atomic_store(&gate, 0);
  keel_sub_opts o = {.name = "h", .es = es, .handle = slow, .ud = &gate, .batch = 10,
                     .poll_ms = 20};
  CHECK_OK(keel_sub_health_register("h", &(keel_sub_health_opts){.lag_warning = 5,
                                                                 .lag_critical = 25,
                                                                 .hold_readiness = true}));
  /* not running: critical, and the node is not ready */
  json_t *c = check_entry("sub.h");
  CHECK_STR(json_string_value(json_object_get(c, "status")), "critical");
  json_decref(c);
  CHECK_OK(keel_sub_start(&o, false, NULL));
  keel_health_response r;
  CHECK_OK(keel_health_ready(&r));
  CHECK_EQ(r.http_status, 503); /* holding readiness: catching up */
  keel_health_response_free(&r);
  c = check_entry("sub.h");
  CHECK_STR(json_string_value(json_object_get(c, "status")), "critical");
  CHECK_EQ(json_integer_value(json_object_get(c, "lag")), 30);
  CHECK_STR(json_string_value(json_object_get(c, "state")), "catching_up");
  json_decref(c);
  atomic_store(&gate, 1);
  wait_checkpoint("h", 30);
  CHECK_OK(keel_health_ready(&r));
  CHECK_EQ(r.http_status, 200);
  keel_health_response_free(&r);
  c = check_entry("sub.h");
  CHECK_STR(json_string_value(json_object_get(c, "status")), "ok");
  CHECK_EQ(json_integer_value(json_object_get(c, "lag")), 0);
  CHECK(json_is_true(json_object_get(c, "caught_up")));
  json_decref(c);
  /* paused behind new events: lag, a warning */
  CHECK_OK(keel_sub_pause("h"));
  CHECK_OK(kt_append_n(es, "h-1", KEEL_ES_ANY, "T", 1, 0, NULL));
  c = check_entry("sub.h");
  CHECK_STR(json_string_value(json_object_get(c, "status")), "warning");
  json_decref(c);
  CHECK_OK(keel_sub_stop("h", 0));
  keel_health_reset();
  kt_store_close(&st);
}

/* ---- a handler that hangs -------------------------------------------------------------- */

static int hang_on_poison(const keel_es_event *ev, void *ud) {
  if (json_is_true(json_object_get(keel_es_event_payload(ev), "poison"))) keel_sleep(600000);
  return record(ev, ud);
}

KT_CASE(a_handler_that_hangs_is_killed_after_its_timeout_and_the_event_parked) {
  kt_store st;
  keel_es *es = kt_store_open(&st, NULL);
  int64_t poison = poison_fixture(es);
  seen *s = calloc(1, sizeof *s);
  atomic_store(&s->poison_fixed, 1); /* record() would pass it: only the hang fails it */
  keel_sub_opts o = {.name = "hang", .es = es, .handle = hang_on_poison, .ud = s,
                     .handler_timeout_ms = 50, .max_attempts = 2, .backoff_ms = 1,
                     .on_failure = KEEL_SUB_SKIP, .poll_ms = 20};
  CHECK_OK(keel_sub_start(&o, false, NULL));
  keel_sub_status ss = wait_checkpoint("hang", head_of(es));
  CHECK_EQ(ss.failures, 2);
  CHECK_EQ(ss.parked, 1);
  CHECK_EQ(atomic_load(&s->n), 8); /* all but the poison */
  keel_sub_parked_event pk[2];
  size_t n;
  CHECK_OK(keel_sub_parked(es, "hang", pk, 2, &n));
  CHECK_EQ(n, 1);
  CHECK_EQ(pk[0].position, poison);
  CHECK(strstr(pk[0].error, "longer than 50 ms") != NULL);
  CHECK_OK(keel_sub_stop("hang", 0));
  free(s);
  kt_store_close(&st);
}

/* ---- catching up: the checkpoint stored behind the pages, the head known --------------- */

typedef struct midway {
  int64_t at;         /* the position whose hand-out looks at the status */
  keel_sub_status st; /* what it saw */
  atomic_int looked;
} midway;

static int look_midway(const keel_es_event *ev, void *ud) {
  midway *m = ud;
  if (ev->position == m->at) {
    CHECK_OK(keel_sub_status_get("midway", &m->st));
    atomic_store(&m->looked, 1);
  }
  return 0;
}

KT_CASE(catching_up_stores_every_pages_checkpoint_and_knows_the_head) {
  kt_store st;
  keel_es *es = kt_store_open(&st, NULL);
  for (int i = 0; i < 50; i++)
    CHECK_OK(kt_append_n(es, "page-1", KEEL_ES_ANY, "Paged", 10, i * 10, NULL));
  midway *m = calloc(1, sizeof *m);
  m->at = 250;
  keel_sub_opts o = {
      .name = "midway", .es = es, .handle = look_midway, .ud = m, .batch = 10, .poll_ms = 20};
  CHECK_OK(keel_sub_start(&o, false, NULL));
  keel_sub_status ss = wait_checkpoint("midway", 500);
  /* halfway through, the head was known without being read before each page */
  CHECK_EQ(atomic_load(&m->looked), 1);
  CHECK_EQ(m->st.state, KEEL_SUB_CATCHING_UP);
  CHECK_EQ(m->st.head, 500);
  CHECK_EQ(m->st.checkpoint, 249);
  CHECK_EQ(m->st.lag, 251);
  CHECK(m->st.stored <= m->st.checkpoint);
  /* live: every page's checkpoint is stored, in the table too, with no stop */
  CHECK_EQ(ss.stored, 500);
  keel_es_rows rows;
  CHECK_OK(keel_es_query(es, "SELECT position FROM keel_sub_checkpoints WHERE name = 'midway'",
                         NULL, 0, &rows));
  CHECK_EQ(rows.nrows, (size_t)1);
  CHECK_EQ(strtoll(keel_es_rows_get(&rows, 0, 0), NULL, 10), 500);
  keel_es_rows_free(&rows);
  /* live appends move the head it reports */
  CHECK_OK(kt_append_n(es, "page-2", KEEL_ES_ANY, "Paged", 3, 0, NULL));
  ss = wait_checkpoint("midway", 503);
  CHECK_EQ(ss.head, 503);
  CHECK_EQ(ss.lag, 0);
  CHECK_OK(keel_sub_stop("midway", 0));
  free(m);
  kt_store_close(&st);
}

KT_MAIN(KT_ENTRY_SCHED(catch_up_then_live_every_event_once_in_order, 2),
        KT_ENTRY(a_transactional_projection_applies_each_event_once),
        KT_ENTRY(a_poison_event_is_retried_then_parked_and_its_stream_waits_behind_it),
        KT_ENTRY(resolve_gives_the_event_up_and_releases_its_stream),
        KT_ENTRY(skip_lets_the_stream_go_on_and_stop_stops),
        KT_ENTRY(pause_holds_events_resume_hands_them_out),
        KT_ENTRY(health_reports_lag_parked_events_and_holds_readiness_while_catching_up),
        KT_ENTRY(a_handler_that_hangs_is_killed_after_its_timeout_and_the_event_parked),
        KT_ENTRY(catching_up_stores_every_pages_checkpoint_and_knows_the_head))
