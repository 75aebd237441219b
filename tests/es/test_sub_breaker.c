/* test_sub_breaker.c - a subscription's circuit breakers: the handler's
 * opens after a run of failed attempts across events, holds every event
 * back while open, lets one probe through after breaker_open_ms and closes
 * when it passes; the database's backs off (poll_ms doubled per failure,
 * capped) and shows open while the feed cannot be read (the events table
 * renamed away under the store), then closes by itself when reads pass.
 * Both backends. */
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "es/es_internal.h"
#include "es/kt_es.h"
#include "keel/health.h"
#include "keel/subscription.h"

static keel_sub_status status_of(const char *name) {
  keel_sub_status st;
  CHECK_OK(keel_sub_status_get(name, &st));
  return st;
}

static int64_t head_of(keel_es *es) {
  int64_t h;
  CHECK_OK(keel_es_head(es, &h));
  return h;
}

/* Waits (20 s at most) for pred on the subscription's status. */
#define WAIT_STATUS(name, st, pred)                                                                \
  do {                                                                                             \
    int i_;                                                                                        \
    for (i_ = 0; i_ < 2000; i_++) {                                                                \
      st = status_of(name);                                                                        \
      if (pred) break;                                                                             \
      keel_sleep(10);                                                                              \
    }                                                                                              \
    if (i_ == 2000) {                                                                              \
      fprintf(stderr, "timed out waiting for %s\n", #pred);                                        \
      CHECK(!"status not reached");                                                                \
    }                                                                                              \
  } while (0)

static json_t *check_entry(const char *name) {
  keel_health_response r;
  CHECK_OK(keel_health_detailed(&r));
  json_t *body = json_loads(r.body, 0, NULL);
  CHECK(body != NULL);
  json_t *c = json_incref(json_object_get(json_object_get(body, "checks"), name));
  CHECK(c != NULL);
  json_decref(body);
  keel_health_response_free(&r);
  return c;
}

/* ---- the database's backoff ------------------------------------------------------------ */

KT_CASE(the_database_backoff_doubles_from_poll_ms_up_to_its_cap) {
  CHECK_EQ(keel__sub_db_delay(100, 1000, 1), 100);
  CHECK_EQ(keel__sub_db_delay(100, 1000, 2), 200);
  CHECK_EQ(keel__sub_db_delay(100, 1000, 3), 400);
  CHECK_EQ(keel__sub_db_delay(100, 1000, 4), 800);
  CHECK_EQ(keel__sub_db_delay(100, 1000, 5), 1000);
  CHECK_EQ(keel__sub_db_delay(100, 1000, 1000000), 1000); /* no overflow */
  CHECK_EQ(keel__sub_db_delay(1000, 30000, 6), 30000);
}

/* ---- the handler's breaker ------------------------------------------------------------- */

typedef struct flaky {
  atomic_int broken; /* 1: every event fails */
  atomic_int calls;
  atomic_int passed;
} flaky;

static int flaky_handle(const keel_es_event *ev, void *ud) {
  (void)ev;
  flaky *f = ud;
  atomic_fetch_add(&f->calls, 1);
  if (atomic_load(&f->broken)) return KEEL_EIO;
  atomic_fetch_add(&f->passed, 1);
  return 0;
}

KT_CASE(failures_in_a_row_open_the_breaker_which_holds_events_until_its_probe_passes) {
  keel_health_reset();
  keel_health_set_started(true);
  kt_store st;
  keel_es *es = kt_store_open(&st, NULL);
  keel_metrics *m = NULL;
  CHECK_OK(keel_metrics_new(&m, 0));
  for (int i = 0; i < 4; i++) {
    char stream[16];
    snprintf(stream, sizeof stream, "b-%d", i);
    CHECK_OK(kt_append_n(es, stream, KEEL_ES_ANY, "T", 1, i, NULL));
  }
  flaky *f = calloc(1, sizeof *f);
  atomic_store(&f->broken, 1);
  /* two attempts an event, the breaker at three in a row: event 1 fails
   * twice and is parked, event 2's first failure opens the breaker */
  keel_sub_opts o = {.name = "brk",
                     .es = es,
                     .handle = flaky_handle,
                     .ud = f,
                     .max_attempts = 2,
                     .backoff_ms = 1,
                     .backoff_max_ms = 1,
                     .on_failure = KEEL_SUB_SKIP,
                     .poll_ms = 20,
                     .breaker_failures = 3,
                     .breaker_open_ms = 3000,
                     .metrics = m};
  CHECK_OK(keel_sub_health_register("brk", NULL));
  CHECK_OK(keel_sub_start(&o, false, NULL));
  keel_sub_status ss;
  WAIT_STATUS("brk", ss, ss.breaker == KEEL_SUB_BREAKER_OPEN);
  CHECK_EQ(atomic_load(&f->calls), 3);
  CHECK_EQ(ss.parked, 1);
  CHECK_EQ(ss.checkpoint, 1);
  json_t *c = check_entry("sub.brk");
  CHECK_STR(json_string_value(json_object_get(c, "status")), "warning");
  CHECK_STR(json_string_value(json_object_get(c, "breaker")), "open");
  json_decref(c);
  keel_metrics_buf b = {0};
  CHECK_OK(keel_metrics_render(m, KEEL_METRICS_TEXT, &b));
  CHECK(strstr(b.data, "sub_breaker_state{subscription=\"brk\",breaker=\"handler\"} 1") != NULL);
  keel_metrics_buf_free(&b);
  /* open: nothing is handed out (the backoff alone would have retried at
   * once); open_ms is ten times the look, so a slow machine does not see
   * the probe early */
  keel_sleep(300);
  CHECK_EQ(atomic_load(&f->calls), 3);
  CHECK_EQ(status_of("brk").breaker, KEEL_SUB_BREAKER_OPEN);
  /* the handler is fixed: after open_ms one probe (event 2's retry) passes,
   * the breaker closes, the rest follows */
  atomic_store(&f->broken, 0);
  WAIT_STATUS("brk", ss, ss.checkpoint == 4 && ss.state == KEEL_SUB_LIVE);
  CHECK_EQ(ss.breaker, KEEL_SUB_BREAKER_CLOSED);
  CHECK_EQ(atomic_load(&f->calls), 6);
  CHECK_EQ(atomic_load(&f->passed), 3);
  CHECK_EQ(ss.parked, 1); /* event 1, before the breaker opened */
  c = check_entry("sub.brk");
  CHECK_STR(json_string_value(json_object_get(c, "breaker")), "closed");
  json_decref(c);

  /* a failed probe opens it again: broken, two new events fail three
   * times in a row (the first parked after two, the second's first try), ... */
  atomic_store(&f->broken, 1);
  atomic_store(&f->calls, 0);
  CHECK_OK(kt_append_n(es, "b-9", KEEL_ES_ANY, "T", 2, 0, NULL));
  WAIT_STATUS("brk", ss, ss.breaker == KEEL_SUB_BREAKER_OPEN);
  CHECK_EQ(atomic_load(&f->calls), 3);
  /* ... its probe after open_ms fails: open again, one call more */
  WAIT_STATUS("brk", ss, atomic_load(&f->calls) == 4);
  keel_sleep(50);
  ss = status_of("brk");
  CHECK_EQ(ss.breaker, KEEL_SUB_BREAKER_OPEN);
  CHECK_EQ(atomic_load(&f->calls), 4);
  /* fixed: with nothing left to hand out it stays half-open after
   * open_ms; the next event is the probe, and closes it */
  atomic_store(&f->broken, 0);
  WAIT_STATUS("brk", ss, ss.breaker == KEEL_SUB_BREAKER_HALF_OPEN);
  CHECK_EQ(atomic_load(&f->calls), 4);
  CHECK_OK(kt_append_n(es, "b-10", KEEL_ES_ANY, "T", 1, 0, NULL));
  WAIT_STATUS("brk", ss, ss.checkpoint == head_of(es) && ss.state == KEEL_SUB_LIVE);
  CHECK_EQ(ss.breaker, KEEL_SUB_BREAKER_CLOSED);
  CHECK_EQ(atomic_load(&f->calls), 5);
  CHECK_OK(keel_sub_stop("brk", 0));
  keel_health_reset();
  keel_metrics_free(m);
  free(f);
  kt_store_close(&st);
}

KT_CASE(a_negative_breaker_failures_turns_the_breaker_off) {
  kt_store st;
  keel_es *es = kt_store_open(&st, NULL);
  for (int i = 0; i < 5; i++)
    CHECK_OK(kt_append_n(es, "off", KEEL_ES_ANY, "T", 1, i, NULL));
  flaky *f = calloc(1, sizeof *f);
  atomic_store(&f->broken, 1);
  keel_sub_opts o = {.name = "nobrk",
                     .es = es,
                     .handle = flaky_handle,
                     .ud = f,
                     .max_attempts = 2,
                     .backoff_ms = 1,
                     .backoff_max_ms = 1,
                     .on_failure = KEEL_SUB_SKIP,
                     .poll_ms = 20,
                     .breaker_failures = -1};
  CHECK_OK(keel_sub_start(&o, false, NULL));
  keel_sub_status ss;
  WAIT_STATUS("nobrk", ss, ss.checkpoint == 5 && ss.state == KEEL_SUB_LIVE);
  CHECK_EQ(ss.breaker, KEEL_SUB_BREAKER_CLOSED);
  CHECK_EQ(ss.parked, 5);
  CHECK_EQ(atomic_load(&f->calls), 10);
  CHECK_OK(keel_sub_stop("nobrk", 0));
  free(f);
  kt_store_close(&st);
}

/* ---- the database's breaker -------------------------------------------------------------- */

/* Runs sql on the store's database from outside the store. */
static void store_exec(kt_store *st, const char *sql) {
  if (kt_es_pg_url()) {
    char err[512];
    if (kt_pg_exec(st->url, sql, err, sizeof err)) {
      fprintf(stderr, "%s: %s\n", sql, err);
      CHECK(!"sql failed");
    }
    return;
  }
  char path[300];
  snprintf(path, sizeof path, "%s/es.db", st->dir);
  sqlite3 *db = NULL;
  CHECK_EQ(sqlite3_open(path, &db), SQLITE_OK);
  sqlite3_busy_timeout(db, 10000);
  char *err = NULL;
  if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK) {
    fprintf(stderr, "%s: %s\n", sql, err ? err : "?");
    CHECK(!"sql failed");
  }
  sqlite3_free(err);
  sqlite3_close(db);
}

static int count_handle(const keel_es_event *ev, void *ud) {
  (void)ev;
  atomic_fetch_add((atomic_int *)ud, 1);
  return 0;
}

KT_CASE(a_database_that_fails_reads_opens_the_db_breaker_until_a_read_passes) {
  keel_health_reset();
  keel_health_set_started(true);
  kt_store st;
  keel_es *es = kt_store_open(&st, &(keel_es_opts){.no_listen = true});
  CHECK_OK(kt_append_n(es, "d-1", KEEL_ES_ANY, "T", 3, 0, NULL));
  static atomic_int n;
  atomic_store(&n, 0);
  keel_sub_opts o = {.name = "dbb",
                     .es = es,
                     .handle = count_handle,
                     .ud = &n,
                     .poll_ms = 20,
                     .db_breaker_failures = 3,
                     .db_backoff_max_ms = 100};
  CHECK_OK(keel_sub_health_register("dbb", NULL));
  CHECK_OK(keel_sub_start(&o, false, NULL));
  keel_sub_status ss;
  WAIT_STATUS("dbb", ss, ss.checkpoint == 3 && ss.state == KEEL_SUB_LIVE);
  /* the feed's table goes away: reads fail */
  store_exec(&st, "ALTER TABLE events RENAME TO events_away");
  WAIT_STATUS("dbb", ss, ss.db_breaker == KEEL_SUB_BREAKER_OPEN && ss.db_errors >= 4);
  json_t *c = check_entry("sub.dbb");
  CHECK_STR(json_string_value(json_object_get(c, "status")), "warning");
  CHECK_STR(json_string_value(json_object_get(c, "db_breaker")), "open");
  json_decref(c);
  /* back: the next read passes, the breaker closes, appends flow again */
  store_exec(&st, "ALTER TABLE events_away RENAME TO events");
  CHECK_OK(kt_append_n(es, "d-1", KEEL_ES_ANY, "T", 2, 0, NULL));
  WAIT_STATUS("dbb", ss, ss.checkpoint == 5 && ss.state == KEEL_SUB_LIVE);
  CHECK_EQ(ss.db_breaker, KEEL_SUB_BREAKER_CLOSED);
  CHECK_EQ(ss.db_errors, 0);
  CHECK_EQ(atomic_load(&n), 5);
  CHECK_OK(keel_sub_stop("dbb", 0));
  keel_health_reset();
  kt_store_close(&st);
}

KT_MAIN(KT_ENTRY(the_database_backoff_doubles_from_poll_ms_up_to_its_cap),
        KT_ENTRY(failures_in_a_row_open_the_breaker_which_holds_events_until_its_probe_passes),
        KT_ENTRY(a_negative_breaker_failures_turns_the_breaker_off),
        KT_ENTRY(a_database_that_fails_reads_opens_the_db_breaker_until_a_read_passes))
