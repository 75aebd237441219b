/* test_sub_rebuild.c - a blue/green rebuild of a transactional projection:
 * the new version catches up beside the live one while live events keep
 * flowing into the old read model; keel_sub_switch swaps the read model in
 * one transaction when the new version has caught up, stops the old one
 * and drops its table; the new version saw every event before the switch
 * as a replay (keel_sub_replaying) and the later ones as new. Both
 * backends. */
#include <stdatomic.h>
#include <stdlib.h>

#include "es/es_internal.h"
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

/* ---- groups ---------------------------------------------------------------------------- */

static int project_g(keel_es_tx *tx, const keel_es_event *ev, void *ud) {
  char pos[24];
  snprintf(pos, sizeof pos, "%lld", (long long)ev->position);
  char sql[96];
  snprintf(sql, sizeof sql, "INSERT INTO %s (position, stream) VALUES (CAST($1 AS BIGINT), $2)",
           (const char *)ud);
  return keel_es_tx_exec(tx, sql, (const char *[]){pos, ev->stream}, 2, NULL);
}

/* What the cutover's transaction saw: the old model's rows, those of them
 * missing from the new one, and the switch's marker. */
static int64_t cut_v1 = -1, cut_missing = -1;
static char cut_marker[32];

static int64_t tx_count(keel_es_tx *tx, const char *sql) {
  keel_es_rows rows;
  if (keel_es_tx_exec(tx, sql, NULL, 0, &rows)) return -1;
  const char *v = keel_es_rows_get(&rows, 0, 0);
  int64_t n = v ? strtoll(v, NULL, 10) : -1;
  keel_es_rows_free(&rows);
  return n;
}

static int cutover_model(keel_es_tx *tx, void *ud) {
  (void)ud;
  keel_es_rows rows;
  if (keel_es_tx_exec(tx, "SELECT owner FROM keel_sub_checkpoints WHERE name = 'gt#switch'", NULL,
                      0, &rows) == 0) {
    snprintf(cut_marker, sizeof cut_marker, "%s",
             rows.nrows ? keel_es_rows_get(&rows, 0, 0) : "(none)");
    keel_es_rows_free(&rows);
  }
  cut_v1 = tx_count(tx, "SELECT count(*) FROM seen_v1");
  cut_missing = tx_count(tx, "SELECT count(*) FROM seen_v1 WHERE position NOT IN "
                             "(SELECT position FROM seen_v2)");
  return keel_es_tx_exec(tx, "UPDATE read_model SET tbl = 'seen_v2' WHERE name = 'totals'", NULL,
                         0, NULL);
}

typedef struct group_switcher {
  keel_es *es;
  keel_pid_t parent;
  int rc;
} group_switcher;

static void group_switch_main(void *arg) {
  group_switcher *w = arg;
  keel_sub_switch_opts so = {.es = w->es,
                             .live = "gt",
                             .next = "gt2",
                             .cutover = cutover_model,
                             .timeout_ms = 60000,
                             .partitions = 3};
  w->rc = keel_sub_switch(&so);
  kt_send_u64(w->parent, TAG_SWITCHED, 0);
}

static void writer_main(void *arg) {
  keel_es *es = arg;
  for (int i = 0; i < 40; i++) {
    append_events(es, 1, 60 + i);
    keel_sleep(5);
  }
}

/* A group's state, 0 before its coordinator's first round published it. */
static int state_of(const char *name) {
  keel_sub_status st;
  return keel_sub_status_get(name, &st) == 0 ? (int)st.state : 0;
}

static void start_groups(keel_es *es) {
  /* the live group of 4 partitions and the new one of 3 (a rebuild may
   * change the count), each coordinating every 50 ms */
  static keel_sub_opts g1, g2;
  g1 = (keel_sub_opts){.name = "gt", .es = es, .project = project_g, .ud = "seen_v1",
                       .partitions = 4, .poll_ms = 20, .rebalance_ms = 50};
  g2 = (keel_sub_opts){.name = "gt2", .es = es, .project = project_g, .ud = "seen_v2",
                       .partitions = 3, .poll_ms = 20, .rebalance_ms = 50};
  CHECK_OK(keel_sub_start(&g1, false, NULL));
  WAIT_FOR(count(es, "SELECT count(*) FROM seen_v1") == 60);
  CHECK_OK(keel_sub_start(&g2, false, NULL));
}

KT_CASE(a_group_switch_retires_the_live_group_everywhere_and_cuts_over_once) {
  kt_store st;
  keel_es *es = kt_store_open(&st, NULL);
  ddl(es, "CREATE TABLE seen_v1 (position BIGINT PRIMARY KEY, stream TEXT NOT NULL)");
  ddl(es, "CREATE TABLE seen_v2 (position BIGINT PRIMARY KEY, stream TEXT NOT NULL)");
  ddl(es, "CREATE TABLE read_model (name TEXT PRIMARY KEY, tbl TEXT NOT NULL)");
  ddl(es, "INSERT INTO read_model (name, tbl) VALUES ('totals', 'seen_v1')");
  append_events(es, 60, 0);
  start_groups(es);
  /* appends go on during the switch */
  CHECK_OK(keel_spawn(writer_main, es, NULL, NULL));
  group_switcher w = {.es = es, .parent = keel_self()};
  CHECK_OK(keel_spawn(group_switch_main, &w, NULL, NULL));
  keel_msg_free(kt_recv(60000));
  CHECK_OK(w.rc);
  char tbl[32];
  CHECK_STR(model_table(es, tbl, sizeof tbl), "seen_v2");
  /* in the cutover's transaction: marked cut over, and the new model had
   * every event of the old one; the old one never moves after it */
  CHECK_STR(cut_marker, "#cutover");
  CHECK_EQ(cut_missing, 0);
  int64_t frozen = cut_v1;
  CHECK(frozen >= 60);
  CHECK_EQ(count(es, "SELECT count(*) FROM seen_v1"), frozen);
  WAIT_FOR(state_of("gt") == KEEL_SUB_RETIRED);
  WAIT_FOR(count(es, "SELECT count(*) FROM seen_v2") == 100); /* the writer's 40 too */
  append_events(es, 10, 100);
  WAIT_FOR(count(es, "SELECT count(*) FROM seen_v2") == 110);
  CHECK_EQ(count(es, "SELECT count(*) FROM seen_v1"), frozen);
  CHECK_EQ(status_of("gt").state, KEEL_SUB_RETIRED);
  CHECK_EQ(status_of("gt2").parked, 0);
  /* the same switch again (a retried deploy hook): done already, nothing undone */
  keel_sub_switch_opts again_so = {
      .es = es, .live = "gt", .next = "gt2", .cutover = cutover_model, .partitions = 3};
  CHECK_EQ(keel_sub_switch(&again_so), KEEL_EEXIST);
  CHECK_STR(model_table(es, tbl, sizeof tbl), "seen_v2");
  append_events(es, 3, 110);
  WAIT_FOR(count(es, "SELECT count(*) FROM seen_v2") == 113);
  keel_sleep(200);
  CHECK_EQ(count(es, "SELECT count(*) FROM seen_v1"), frozen);
  CHECK_EQ(state_of("gt"), KEEL_SUB_RETIRED);
  /* a retired group started again (an instance still on the old code) runs nothing */
  CHECK_OK(keel_sub_stop("gt", 0));
  static keel_sub_opts again;
  again = (keel_sub_opts){.name = "gt", .es = es, .project = project_g, .ud = "seen_v1",
                          .partitions = 4, .poll_ms = 20, .rebalance_ms = 50};
  CHECK_OK(keel_sub_start(&again, false, NULL));
  WAIT_FOR(state_of("gt") == KEEL_SUB_RETIRED);
  append_events(es, 5, 113);
  WAIT_FOR(count(es, "SELECT count(*) FROM seen_v2") == 118);
  keel_sleep(200); /* four rounds: it would have taken a partition by now */
  CHECK_EQ(count(es, "SELECT count(*) FROM seen_v1"), frozen);
  CHECK_OK(keel_sub_stop("gt", 0));
  CHECK_OK(keel_sub_stop("gt2", 0));
  kt_store_close(&st);
}

KT_CASE(a_group_switch_whose_cutover_fails_gives_the_live_group_back) {
  kt_store st;
  keel_es *es = kt_store_open(&st, NULL);
  ddl(es, "CREATE TABLE seen_v1 (position BIGINT PRIMARY KEY, stream TEXT NOT NULL)");
  ddl(es, "CREATE TABLE seen_v2 (position BIGINT PRIMARY KEY, stream TEXT NOT NULL)");
  /* no read_model table: the cutover fails after the retirement */
  append_events(es, 60, 0);
  start_groups(es);
  keel_sub_switch_opts so = {
      .es = es, .live = "gt", .next = "gt2", .cutover = cutover_model, .partitions = 3};
  cut_marker[0] = 0;
  CHECK(keel_sub_switch(&so) != 0);
  CHECK_STR(cut_marker, "#cutover"); /* it was retired and reached the cutover, */
  CHECK_EQ(count(es, "SELECT count(*) FROM keel_sub_checkpoints WHERE name = 'gt#switch'"),
           0); /* which rolled back, and the retirement was undone */
  /* retirement undone: the live group's coordinators take their partitions again */
  append_events(es, 10, 60);
  WAIT_FOR(count(es, "SELECT count(*) FROM seen_v1") == 70);
  CHECK(state_of("gt") != KEEL_SUB_RETIRED);
  so.partitions = -1;
  CHECK_EQ(keel_sub_switch(&so), KEEL_EINVAL);
  CHECK_OK(keel_sub_stop("gt", 0));
  CHECK_OK(keel_sub_stop("gt2", 0));
  kt_store_close(&st);
}

/* A dead letter of the retired group retried after the cutover, before its
 * coordinator's next round stopped the partition: refused by the fence, so
 * the old read model does not move (it did: found in review). */
static atomic_int poison = 1;
static int project_poisoned(keel_es_tx *tx, const keel_es_event *ev, void *ud) {
  if (atomic_load(&poison) && ev->position == 5) return KEEL_EBUSY;
  return project_g(tx, ev, ud);
}

KT_CASE(a_retired_partitions_dead_letter_cannot_be_retried_into_the_old_model) {
  kt_store st;
  keel_es *es = kt_store_open(&st, NULL);
  ddl(es, "CREATE TABLE seen_v1 (position BIGINT PRIMARY KEY, stream TEXT NOT NULL)");
  ddl(es, "CREATE TABLE seen_v2 (position BIGINT PRIMARY KEY, stream TEXT NOT NULL)");
  ddl(es, "CREATE TABLE read_model (name TEXT PRIMARY KEY, tbl TEXT NOT NULL)");
  ddl(es, "INSERT INTO read_model (name, tbl) VALUES ('totals', 'seen_v1')");
  append_events(es, 20, 0);
  static keel_sub_opts g1, g2;
  /* slow rounds: the retired partitions still run when the retry comes */
  g1 = (keel_sub_opts){.name = "gt", .es = es, .project = project_poisoned, .ud = "seen_v1",
                       .partitions = 4, .poll_ms = 20, .rebalance_ms = 5000, .max_attempts = 1};
  g2 = (keel_sub_opts){.name = "gt2", .es = es, .project = project_g, .ud = "seen_v2",
                       .partitions = 3, .poll_ms = 20, .rebalance_ms = 50};
  CHECK_OK(keel_sub_start(&g1, false, NULL));
  /* 19 handled, position 5 parked (its stream's later events wait behind it) */
  WAIT_FOR(count(es, "SELECT count(*) FROM keel_sub_parked WHERE name LIKE 'gt.p%'") == 4);
  CHECK_OK(keel_sub_start(&g2, false, NULL));
  keel_sub_switch_opts so = {.es = es, .live = "gt", .next = "gt2", .cutover = cutover_model,
                             .timeout_ms = 60000, .partitions = 3};
  CHECK_OK(keel_sub_switch(&so));
  atomic_store(&poison, 0);
  char part[32];
  snprintf(part, sizeof part, "gt.p%u", keel__sub_partition_of("s-4", 4)); /* position 5's */
  CHECK_EQ(keel_sub_retry(part, 5), KEEL_ECONFLICT);
  keel_sleep(300);
  CHECK_EQ(count(es, "SELECT count(*) FROM seen_v1 WHERE position = 5"), 0);
  CHECK_EQ(count(es, "SELECT count(*) FROM seen_v1"), cut_v1);
  CHECK_OK(keel_sub_stop("gt", 0));
  CHECK_OK(keel_sub_stop("gt2", 0));
  kt_store_close(&st);
}

KT_MAIN(KT_ENTRY(a_new_version_catches_up_beside_the_live_one_then_takes_over_in_one_switch),
        KT_ENTRY(a_switch_whose_cutover_fails_leaves_the_live_version_serving),
        KT_ENTRY_SCHED(a_group_switch_retires_the_live_group_everywhere_and_cuts_over_once, 2),
        KT_ENTRY_SCHED(a_group_switch_whose_cutover_fails_gives_the_live_group_back, 2),
        KT_ENTRY_SCHED(a_retired_partitions_dead_letter_cannot_be_retried_into_the_old_model, 2))
