/* test_sub_rebuild.c - a blue/green rebuild of a transactional projection:
 * the new version catches up beside the live one while live events keep
 * flowing into the old read model; keel_sub_switch swaps the read model in
 * one transaction when the new version has caught up, stops the old one
 * and drops its table; the new version saw every event before the switch
 * as a replay (keel_sub_replaying) and the later ones as new. Both
 * backends. */
#include <stdatomic.h>
#include <stdlib.h>

#include "es/kt_es.h"
#include "keel/subscription.h"

enum { TAG_SWITCHED = 77 };

static atomic_int hold_v2; /* 1: the new version's projection fails (it makes no progress) */

static int exec(keel_es_tx *tx, void *arg) {
  return keel_es_tx_exec(tx, arg, NULL, 0, NULL);
}

static void ddl(keel_es *es, const char *sql) {
  CHECK_OK(keel_es_transact(es, NULL, 0, NULL, NULL, exec, (void *)sql));
}

static int project_v1(keel_es_tx *tx, const keel_es_event *ev, void *ud) {
  (void)ud;
  char pos[24];
  snprintf(pos, sizeof pos, "%lld", (long long)ev->position);
  return keel_es_tx_exec(tx,
                         "INSERT INTO seen_v1 (position, stream) VALUES (CAST($1 AS BIGINT), $2)",
                         (const char *[]){pos, ev->stream}, 2, NULL);
}

/* The new version also records whether it saw the event as a replay (its
 * side effect, were it a mail, would be skipped then). */
static int project_v2(keel_es_tx *tx, const keel_es_event *ev, void *ud) {
  (void)ud;
  if (atomic_load(&hold_v2)) return KEEL_EBUSY;
  char pos[24];
  snprintf(pos, sizeof pos, "%lld", (long long)ev->position);
  return keel_es_tx_exec(
      tx,
      "INSERT INTO seen_v2 (position, stream, replay) VALUES "
      "(CAST($1 AS BIGINT), $2, CAST($3 AS INTEGER))",
      (const char *[]){pos, ev->stream, keel_sub_replaying("totals", ev) ? "1" : "0"}, 3, NULL);
}

/* The switch: readers find the read model's table in read_model. */
static int cutover(keel_es_tx *tx, void *ud) {
  (void)ud;
  int rc = keel_es_tx_exec(tx, "UPDATE read_model SET tbl = 'seen_v2' WHERE name = 'totals'", NULL,
                           0, NULL);
  return rc ? rc : keel_es_tx_exec(tx, "DROP TABLE seen_v1", NULL, 0, NULL);
}

static int64_t count(keel_es *es, const char *sql) {
  keel_es_rows rows;
  CHECK_OK(keel_es_query(es, sql, NULL, 0, &rows));
  CHECK_EQ(rows.nrows, 1);
  int64_t n = strtoll(keel_es_rows_get(&rows, 0, 0), NULL, 10);
  keel_es_rows_free(&rows);
  return n;
}

static const char *model_table(keel_es *es, char *out, size_t cap) {
  keel_es_rows rows;
  CHECK_OK(keel_es_query(es, "SELECT tbl FROM read_model WHERE name = 'totals'", NULL, 0, &rows));
  CHECK_EQ(rows.nrows, 1);
  snprintf(out, cap, "%s", keel_es_rows_get(&rows, 0, 0));
  keel_es_rows_free(&rows);
  return out;
}

static keel_sub_status status_of(const char *name) {
  keel_sub_status st;
  CHECK_OK(keel_sub_status_get(name, &st));
  return st;
}

#define WAIT_FOR(cond)                                                                             \
  do {                                                                                             \
    int i_;                                                                                        \
    for (i_ = 0; i_ < 2000 && !(cond); i_++)                                                       \
      keel_sleep(10);                                                                              \
    if (!(cond)) CHECK(!"timed out waiting for " #cond);                                           \
  } while (0)

static void append_events(keel_es *es, int n, int first) {
  for (int i = 0; i < n; i++) {
    char stream[16];
    snprintf(stream, sizeof stream, "s-%d", (first + i) % 5);
    CHECK_OK(kt_append_n(es, stream, KEEL_ES_ANY, "T", 1, first + i, NULL));
  }
}

typedef struct switcher {
  keel_es *es;
  keel_pid_t parent;
} switcher;

static void switch_main(void *arg) {
  switcher *w = arg;
  keel_sub_switch_opts so = {
      .es = w->es, .live = "totals", .next = "totals.v2", .cutover = cutover, .timeout_ms = 60000};
  int rc = keel_sub_switch(&so);
  kt_send_u64(w->parent, TAG_SWITCHED, (uint64_t)(int64_t)rc);
}

KT_CASE(a_new_version_catches_up_beside_the_live_one_then_takes_over_in_one_switch) {
  kt_store st;
  keel_es *es = kt_store_open(&st, NULL);
  ddl(es, "CREATE TABLE seen_v1 (position BIGINT PRIMARY KEY, stream TEXT NOT NULL)");
  ddl(es, "CREATE TABLE seen_v2 (position BIGINT PRIMARY KEY, stream TEXT NOT NULL, "
          "replay INTEGER NOT NULL)");
  ddl(es, "CREATE TABLE read_model (name TEXT PRIMARY KEY, tbl TEXT NOT NULL)");
  ddl(es, "INSERT INTO read_model (name, tbl) VALUES ('totals', 'seen_v1')");
  append_events(es, 50, 0);

  keel_sub_opts v1 = {.name = "totals", .es = es, .project = project_v1, .poll_ms = 20};
  CHECK_OK(keel_sub_start(&v1, false, NULL));
  WAIT_FOR(status_of("totals").checkpoint == 50);

  /* the new version, held back so that the test sees both at work */
  atomic_store(&hold_v2, 1);
  keel_sub_opts v2 = {.name = "totals.v2",
                      .es = es,
                      .project = project_v2,
                      .poll_ms = 20,
                      .batch = 7,
                      .max_attempts = 1000000,
                      .backoff_ms = 5,
                      .backoff_max_ms = 20,
                      .breaker_failures = -1};
  CHECK_OK(keel_sub_start(&v2, false, NULL));
  switcher w = {.es = es, .parent = keel_self()};
  CHECK_OK(keel_spawn(switch_main, &w, NULL, NULL));

  /* live events keep flowing into the old read model */
  append_events(es, 10, 50);
  WAIT_FOR(status_of("totals").checkpoint == 60);
  CHECK_EQ(count(es, "SELECT count(*) FROM seen_v1"), 60);
  CHECK_EQ(status_of("totals.v2").checkpoint, 0);
  CHECK_EQ(count(es, "SELECT count(*) FROM seen_v2"), 0);
  char tbl[32];
  CHECK_STR(model_table(es, tbl, sizeof tbl), "seen_v1");
  CHECK_EQ(status_of("totals").state, KEEL_SUB_LIVE); /* not paused while v2 is behind */

  /* the new version catches up; the switch follows */
  atomic_store(&hold_v2, 0);
  keel_msg_t *m = kt_recv(60000);
  CHECK_EQ(keel_msg_tag(m), TAG_SWITCHED);
  CHECK_EQ((int64_t)kt_u64(m), 0);
  keel_msg_free(m);
  CHECK_EQ(keel_sub_status_get("totals", NULL), KEEL_ENOPROC); /* the old one stopped */
  CHECK_STR(model_table(es, tbl, sizeof tbl), "seen_v2");
  keel_es_rows rows;
  CHECK(keel_es_query(es, "SELECT count(*) FROM seen_v1", NULL, 0, &rows) != 0); /* dropped */
  CHECK(status_of("totals.v2").checkpoint >= 60);
  CHECK_EQ(count(es, "SELECT count(*) FROM seen_v2"), 60);
  /* every event before the switch was the old version's: a replay */
  CHECK_EQ(count(es, "SELECT count(*) FROM seen_v2 WHERE replay = 1"), 60);

  /* after the switch the new version is current, and its events are new */
  append_events(es, 5, 60);
  WAIT_FOR(status_of("totals.v2").checkpoint == 65);
  CHECK_EQ(count(es, "SELECT count(*) FROM seen_v2"), 65);
  CHECK_EQ(count(es, "SELECT count(*) FROM seen_v2 WHERE replay = 0"), 5);
  CHECK_EQ(count(es, "SELECT min(position) FROM seen_v2 WHERE replay = 0"), 61);
  CHECK(status_of("totals.v2").failures > 0); /* it was held back */
  CHECK_EQ(status_of("totals.v2").parked, 0);
  CHECK_OK(keel_sub_stop("totals.v2", 0));
  kt_store_close(&st);
}

KT_CASE(a_switch_whose_cutover_fails_leaves_the_live_version_serving) {
  kt_store st;
  keel_es *es = kt_store_open(&st, NULL);
  ddl(es, "CREATE TABLE seen_v1 (position BIGINT PRIMARY KEY, stream TEXT NOT NULL)");
  ddl(es, "CREATE TABLE seen_v2 (position BIGINT PRIMARY KEY, stream TEXT NOT NULL, "
          "replay INTEGER NOT NULL)");
  /* no read_model table: the cutover fails */
  append_events(es, 5, 0);
  atomic_store(&hold_v2, 0);
  keel_sub_opts v1 = {.name = "totals", .es = es, .project = project_v1, .poll_ms = 20};
  keel_sub_opts v2 = {.name = "totals.v2", .es = es, .project = project_v2, .poll_ms = 20};
  CHECK_OK(keel_sub_start(&v1, false, NULL));
  CHECK_OK(keel_sub_start(&v2, false, NULL));
  keel_sub_switch_opts so = {.es = es, .live = "totals", .next = "totals.v2", .cutover = cutover};
  CHECK(keel_sub_switch(&so) != 0);
  CHECK_EQ(count(es, "SELECT count(*) FROM seen_v1"), 5); /* rolled back: not dropped */
  /* the live version was resumed: it takes new events */
  CHECK(status_of("totals").state != KEEL_SUB_PAUSED);
  append_events(es, 2, 5);
  WAIT_FOR(status_of("totals").checkpoint == 7);
  CHECK_EQ(count(es, "SELECT count(*) FROM seen_v1"), 7);
  so.next = "nope";
  CHECK_EQ(keel_sub_switch(&so), KEEL_ENOPROC);
  so.next = "totals";
  CHECK_EQ(keel_sub_switch(&so), KEEL_EINVAL);
  CHECK_OK(keel_sub_stop("totals.v2", 0));
  CHECK_OK(keel_sub_stop("totals", 0));
  kt_store_close(&st);
}

KT_MAIN(KT_ENTRY(a_new_version_catches_up_beside_the_live_one_then_takes_over_in_one_switch),
        KT_ENTRY(a_switch_whose_cutover_fails_leaves_the_live_version_serving))
