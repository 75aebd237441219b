/* test_append.c - the event store's schema, opening, appends and stream reads:
 * the expected-version matrix, versions and positions, read_stream's
 * directions and bounds, append_multi's all-or-nothing. */
#include <sys/stat.h>

#include "es/kt_es.h"

KT_CASE(open_makes_the_folder_and_migrating_again_changes_nothing) {
  KT_SQLITE_ONLY();
  kt_store s;
  kt_store_mkdir(&s);
  char url[400];
  snprintf(url, sizeof url, "sqlite:%s/a/b/es.db", s.dir);
  keel_es_opts o = {.url = url};
  keel_es *es;
  CHECK_OK(keel_es_open(&o, &es));
  CHECK_OK(kt_append_n(es, "order-1", KEEL_ES_NO_STREAM, "Placed", 2, 0, NULL));
  keel_es_close(es);
  /* Again: the schema is there, the data too. */
  CHECK_OK(keel_es_open(&o, &es));
  keel_es_events evs;
  CHECK_OK(keel_es_read_stream(es, "order-1", NULL, &evs));
  CHECK_EQ(evs.n, 2);
  keel_es_events_free(&evs);
  int64_t head;
  CHECK_OK(keel_es_head(es, &head));
  CHECK_EQ(head, 2);
  keel_es_close(es);
  char p[600];
  snprintf(p, sizeof p, "%s/a/b/es.db", s.dir);
  unlink(p);
  snprintf(p, sizeof p, "%s/a/b/es.db-wal", s.dir);
  unlink(p);
  snprintf(p, sizeof p, "%s/a/b/es.db-shm", s.dir);
  unlink(p);
  snprintf(p, sizeof p, "%s/a/b", s.dir);
  CHECK_OK(rmdir(p));
  snprintf(p, sizeof p, "%s/a", s.dir);
  CHECK_OK(rmdir(p));
  kt_store_rmdir(&s);
}

/* Both backends: a second open finds the schema and the data. On
 * PostgreSQL, four first opens run at once and take turns on the migration's
 * advisory lock; on SQLite they run one after the other (concurrent first
 * opens of a new file can meet SQLITE_BUSY on the journal_mode pragma, which
 * the busy timeout does not cover: a known limit of the SQLite backend). */
static void open_again(void *arg) {
  keel_es *es;
  CHECK_OK(keel_es_open(&(keel_es_opts){.url = arg}, &es));
  keel_es_close(es);
}

KT_CASE(reopening_and_concurrent_opens_keep_the_schema_and_the_data) {
  kt_store s;
  kt_store_mkdir(&s);
  keel_pid_t pids[4];
  keel_ref_t refs[4];
  for (int i = 0; i < 4; i++) { /* four first opens at once: one migrates */
    keel_spawn_opts so;
    keel_spawn_opts_init(&so);
    so.monitor = true;
    so.monitor_ref = &refs[i];
    CHECK_OK(keel_spawn(open_again, s.url, &so, &pids[i]));
    if (!kt_es_pg_url()) { /* SQLite: one at a time */
      keel_msg_t *m;
      CHECK_OK(keel_receive(&m, 60000));
      keel_pid_t who;
      keel_reason why;
      CHECK_OK(keel_msg_exit_info(m, &who, &why));
      CHECK_EQ(why.kind, KEEL_REASON_NORMAL);
      keel_msg_free(m);
    }
  }
  for (int i = 0; kt_es_pg_url() && i < 4; i++) {
    keel_msg_t *m;
    CHECK_OK(keel_receive(&m, 60000));
    keel_pid_t who;
    keel_reason why;
    CHECK_OK(keel_msg_exit_info(m, &who, &why));
    CHECK_EQ(why.kind, KEEL_REASON_NORMAL);
    keel_msg_free(m);
  }
  keel_es *es;
  CHECK_OK(keel_es_open(&(keel_es_opts){.url = s.url}, &es));
  CHECK_OK(kt_append_n(es, "order-1", KEEL_ES_NO_STREAM, "Placed", 2, 0, NULL));
  keel_es_close(es);
  CHECK_OK(keel_es_open(&(keel_es_opts){.url = s.url}, &es));
  keel_es_events evs;
  CHECK_OK(keel_es_read_stream(es, "order-1", NULL, &evs));
  CHECK_EQ(evs.n, 2);
  keel_es_events_free(&evs);
  int64_t head;
  CHECK_OK(keel_es_head(es, &head));
  CHECK_EQ(head, 2);
  keel_es_close(es);
  kt_store_rmdir(&s);
}

KT_CASE(urls_other_than_sqlite_are_refused) {
  keel_es *es = (keel_es *)1;
  /* PostgreSQL URLs are taken; a server that is not there is KEEL_EIO */
  keel_es_opts o = {.url = "postgresql://127.0.0.1:1/keel?connect_timeout=5"};
  CHECK_EQ(keel_es_open(&o, &es), KEEL_EIO);
  CHECK(es == NULL);
  o.url = "postgres://127.0.0.1:1/keel?connect_timeout=5";
  CHECK_EQ(keel_es_open(&o, &es), KEEL_EIO);
  o.url = "mysql://x";
  CHECK_EQ(keel_es_open(&o, &es), KEEL_EINVAL);
  o.url = "sqlite:";
  CHECK_EQ(keel_es_open(&o, &es), KEEL_EINVAL);
}

/* One case of the matrix: a stream at `at` (0: fresh), append with expected. */
static void matrix_case(keel_es *es, int *serial, int64_t at, int64_t expected, bool ok) {
  char stream[64];
  snprintf(stream, sizeof stream, "m-%d", (*serial)++);
  if (at) CHECK_OK(kt_append_n(es, stream, KEEL_ES_NO_STREAM, "Seed", (size_t)at, 0, NULL));
  keel_es_append_result r;
  int rc = kt_append_n(es, stream, expected, "Next", 1, 0, &r);
  keel_es_stream_info info;
  int irc = keel_es_stream_info_get(es, stream, &info);
  if (ok) {
    CHECK_OK(rc);
    CHECK_EQ(r.version, at + 1);
    CHECK(!r.duplicate);
    CHECK_OK(irc);
    CHECK_EQ(info.version, at + 1);
  } else {
    CHECK_EQ(rc, KEEL_ECONFLICT);
    CHECK_EQ(r.expected, expected);
    CHECK_EQ(r.actual, at);
    /* nothing was written */
    if (at) {
      CHECK_OK(irc);
      CHECK_EQ(info.version, at);
    } else {
      CHECK_EQ(irc, KEEL_ENOENT);
    }
  }
  keel_es_stream_info_free(&info);
}

KT_CASE(expected_version_matrix_on_fresh_and_existing_streams) {
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  int n = 0;
  /* fresh */
  matrix_case(es, &n, 0, KEEL_ES_ANY, true);
  matrix_case(es, &n, 0, KEEL_ES_NO_STREAM, true);
  matrix_case(es, &n, 0, KEEL_ES_STREAM_EXISTS, false);
  matrix_case(es, &n, 0, 1, false);
  matrix_case(es, &n, 0, 5, false);
  /* existing, at version 3 */
  matrix_case(es, &n, 3, KEEL_ES_ANY, true);
  matrix_case(es, &n, 3, KEEL_ES_NO_STREAM, false);
  matrix_case(es, &n, 3, KEEL_ES_STREAM_EXISTS, true);
  matrix_case(es, &n, 3, 3, true);
  matrix_case(es, &n, 3, 2, false);
  matrix_case(es, &n, 3, 4, false);
  /* an expected version that is none of those */
  CHECK_EQ(kt_append_n(es, "m-x", -3, "T", 1, 0, NULL), KEEL_EINVAL);
  kt_store_close(&s);
}

KT_CASE(versions_and_positions_follow_each_other) {
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  keel_es_append_result r;
  CHECK_OK(kt_append_n(es, "a-1", KEEL_ES_NO_STREAM, "T", 3, 0, &r));
  CHECK_EQ(r.version, 3);
  CHECK_EQ(r.first_position, 1);
  CHECK_EQ(r.last_position, 3);
  CHECK_OK(kt_append_n(es, "b-1", KEEL_ES_ANY, "T", 2, 0, &r));
  CHECK_EQ(r.version, 2);
  CHECK_EQ(r.first_position, 4);
  CHECK_EQ(r.last_position, 5);
  CHECK_OK(kt_append_n(es, "a-1", 3, "T", 1, 3, &r));
  CHECK_EQ(r.version, 4);
  CHECK_EQ(r.first_position, 6);
  keel_es_events evs;
  CHECK_OK(keel_es_read_stream(es, "a-1", NULL, &evs));
  CHECK_EQ(evs.n, 4);
  for (size_t i = 0; i < evs.n; i++) {
    CHECK_EQ(evs.v[i].version, (int64_t)i + 1);
    CHECK_EQ(kt_payload_i(&evs.v[i]), (int)i);
    CHECK_STR(evs.v[i].stream, "a-1");
    CHECK_STR(evs.v[i].type, "T");
    CHECK_EQ(evs.v[i].schema_version, 1);
    CHECK(json_is_object(keel_es_event_metadata(&evs.v[i])));
    CHECK_STR(evs.v[i].metadata_json, "{}");
    CHECK(evs.v[i].stored_at_ms > 0 && evs.v[i].occurred_at_ms > 0);
    CHECK_EQ(strlen(evs.v[i].id), 36);
    CHECK_EQ(evs.v[i].id[14], '4'); /* a v4 UUID */
  }
  CHECK_EQ(evs.v[3].position, 6);
  keel_es_events_free(&evs);
  kt_store_close(&s);
}

KT_CASE(an_event_keeps_what_it_was_given) {
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  json_t *meta =
      json_pack("{s:s,s:s,s:s}", "correlation_id", "c-1", "tenant", "acme", "actor", "u");
  json_t *payload = json_pack("[i,s,n]", 1, "two");
  keel_es_event_in ev = {.id = "6F9619FF-8B86-D011-B42D-00CF4FC964FF",
                         .type = "Odd",
                         .schema_version = 3,
                         .payload = payload,
                         .metadata = meta,
                         .occurred_at_ms = 1234};
  CHECK_OK(keel_es_append(es, "x-1", KEEL_ES_ANY, &ev, 1, NULL));
  json_decref(meta);
  keel_es_events evs;
  CHECK_OK(keel_es_read_stream(es, "x-1", NULL, &evs));
  CHECK_EQ(evs.n, 1);
  CHECK_STR(evs.v[0].id, "6f9619ff-8b86-d011-b42d-00cf4fc964ff");
  CHECK_EQ(evs.v[0].schema_version, 3);
  CHECK_EQ(evs.v[0].occurred_at_ms, 1234);
  CHECK(json_equal(keel_es_event_payload(&evs.v[0]), payload));
  CHECK_STR(json_string_value(json_object_get(keel_es_event_metadata(&evs.v[0]), "tenant")),
            "acme");
  json_decref(payload);
  keel_es_events_free(&evs);
  kt_store_close(&s);
}

static void expect_versions(keel_es *es, const keel_es_read_opts *o, const int *want, size_t n) {
  keel_es_events evs;
  CHECK_OK(keel_es_read_stream(es, "r-1", o, &evs));
  CHECK_EQ(evs.n, n);
  for (size_t i = 0; i < n; i++)
    CHECK_EQ(evs.v[i].version, want[i]);
  keel_es_events_free(&evs);
}

KT_CASE(read_stream_forwards_backwards_from_to_limit) {
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  CHECK_OK(kt_append_n(es, "r-1", KEEL_ES_NO_STREAM, "T", 10, 0, NULL));
  CHECK_OK(kt_append_n(es, "r-2", KEEL_ES_NO_STREAM, "T", 3, 0, NULL));
  expect_versions(es, &(keel_es_read_opts){0}, (int[]){1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, 10);
  expect_versions(es, &(keel_es_read_opts){.from = 4}, (int[]){4, 5, 6, 7, 8, 9, 10}, 7);
  expect_versions(es, &(keel_es_read_opts){.from = 4, .to = 6}, (int[]){4, 5, 6}, 3);
  expect_versions(es, &(keel_es_read_opts){.from = 2, .limit = 3}, (int[]){2, 3, 4}, 3);
  expect_versions(es, &(keel_es_read_opts){.backwards = true, .limit = 3}, (int[]){10, 9, 8}, 3);
  expect_versions(es, &(keel_es_read_opts){.backwards = true, .from = 5, .to = 3}, (int[]){5, 4, 3},
                  3);
  expect_versions(es, &(keel_es_read_opts){.backwards = true, .from = 2}, (int[]){2, 1}, 2);
  expect_versions(es, &(keel_es_read_opts){.from = 11}, NULL, 0);
  keel_es_events evs;
  CHECK_EQ(keel_es_read_stream(es, "nope-1", NULL, &evs), KEEL_ENOENT);
  CHECK_EQ(evs.n, 0);
  CHECK_EQ(keel_es_read_stream(es, "r-1", &(keel_es_read_opts){.limit = 100001}, &evs),
           KEEL_ERANGE);
  CHECK_EQ(keel_es_read_stream(es, "bad stream", NULL, &evs), KEEL_EINVAL);
  kt_store_close(&s);
}

KT_CASE(append_multi_is_all_or_nothing) {
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  CHECK_OK(kt_append_n(es, "acct-2", KEEL_ES_NO_STREAM, "Opened", 1, 0, NULL));
  json_t *p = json_object();
  keel_es_event_in ev = {.type = "Moved", .payload = p};
  keel_es_append_req reqs[3] = {
      {"acct-1", KEEL_ES_NO_STREAM, &ev, 1},
      {"acct-2", 1, &ev, 1},
      {"acct-3", KEEL_ES_STREAM_EXISTS, &ev, 1}, /* does not exist: conflicts */
  };
  keel_es_append_result res[3];
  size_t failed = 99;
  CHECK_EQ(keel_es_append_multi(es, reqs, 3, res, &failed), KEEL_ECONFLICT);
  CHECK_EQ(failed, 2);
  CHECK_EQ(res[2].expected, KEEL_ES_STREAM_EXISTS);
  CHECK_EQ(res[2].actual, 0);
  CHECK_EQ(res[0].version, 0); /* nothing of it stands */
  keel_es_stream_info info;
  CHECK_EQ(keel_es_stream_info_get(es, "acct-1", &info), KEEL_ENOENT);
  CHECK_OK(keel_es_stream_info_get(es, "acct-2", &info));
  CHECK_EQ(info.version, 1);
  keel_es_stream_info_free(&info);
  int64_t head;
  CHECK_OK(keel_es_head(es, &head));
  CHECK_EQ(head, 1);
  /* Fixed, it goes through whole. */
  reqs[2].expected = KEEL_ES_NO_STREAM;
  CHECK_OK(keel_es_append_multi(es, reqs, 3, res, &failed));
  CHECK_EQ(res[0].version, 1);
  CHECK_EQ(res[1].version, 2);
  CHECK_EQ(res[2].version, 1);
  CHECK_EQ(res[0].first_position + 1, res[1].first_position);
  CHECK_EQ(res[1].first_position + 1, res[2].first_position);
  json_decref(p);
  kt_store_close(&s);
}

KT_CASE(a_private_memory_store_works_through_the_writer) {
  KT_SQLITE_ONLY();
  keel_es_opts o = {.url = "sqlite::memory:"};
  keel_es *es;
  CHECK_OK(keel_es_open(&o, &es));
  CHECK_OK(kt_append_n(es, "m-1", KEEL_ES_NO_STREAM, "T", 5, 0, NULL));
  keel_es_events evs;
  CHECK_OK(keel_es_read_stream(es, "m-1", NULL, &evs));
  CHECK_EQ(evs.n, 5);
  keel_es_events_free(&evs);
  CHECK_OK(keel_es_read_all(es, 2, 0, NULL, &evs));
  CHECK_EQ(evs.n, 3);
  CHECK_EQ(evs.v[0].position, 3);
  keel_es_events_free(&evs);
  keel_es_close(es);
}

KT_MAIN(KT_ENTRY(open_makes_the_folder_and_migrating_again_changes_nothing),
        KT_ENTRY(reopening_and_concurrent_opens_keep_the_schema_and_the_data),
        KT_ENTRY(urls_other_than_sqlite_are_refused),
        KT_ENTRY(expected_version_matrix_on_fresh_and_existing_streams),
        KT_ENTRY(versions_and_positions_follow_each_other),
        KT_ENTRY(an_event_keeps_what_it_was_given),
        KT_ENTRY(read_stream_forwards_backwards_from_to_limit),
        KT_ENTRY(append_multi_is_all_or_nothing),
        KT_ENTRY(a_private_memory_store_works_through_the_writer))
