/* test_streams.c - exactly-once appends by event id, soft delete and
 * recreation, truncation, hard delete, the append-only triggers, stream
 * metadata. */
#include <sqlite3.h>

#include "es/es_internal.h"
#include "es/kt_es.h"

#define ID1 "aaaaaaaa-1111-4111-8111-11111111111b"
#define ID2 "22222222-2222-4222-8222-222222222222"
#define ID3 "33333333-3333-4333-8333-333333333333"

static int append_ids(keel_es *es, const char *stream, int64_t expected, const char *const *ids,
                      size_t n, keel_es_append_result *r) {
  keel_es_event_in ev[8];
  json_t *p = json_object();
  for (size_t i = 0; i < n; i++)
    ev[i] = (keel_es_event_in){.id = ids[i], .type = "T", .payload = p};
  int rc = keel_es_append(es, stream, expected, ev, n, r);
  json_decref(p);
  return rc;
}

static int64_t head_of(keel_es *es) {
  int64_t h;
  CHECK_OK(keel_es_head(es, &h));
  return h;
}

KT_CASE(a_repeated_batch_returns_the_original_result) {
  keel_metrics *reg;
  CHECK_OK(keel_metrics_new(&reg, 0));
  kt_store s;
  keel_es *es = kt_store_open(&s, &(keel_es_opts){.metrics = reg});
  CHECK_OK(kt_append_n(es, "o-1", KEEL_ES_NO_STREAM, "First", 1, 0, NULL));
  keel_es_append_result r1, r2;
  CHECK_OK(append_ids(es, "o-1", 1, (const char *[]){ID1, ID2}, 2, &r1));
  CHECK(!r1.duplicate);
  CHECK_EQ(r1.version, 3);
  /* The retry after a lost acknowledgement, with the same expected version:
   * not a conflict, the original result. */
  CHECK_OK(append_ids(es, "o-1", 1, (const char *[]){ID1, ID2}, 2, &r2));
  CHECK(r2.duplicate);
  CHECK_EQ(r2.version, r1.version);
  CHECK_EQ(r2.first_position, r1.first_position);
  CHECK_EQ(r2.last_position, r1.last_position);
  /* The stream moved on meanwhile: still the original result. */
  CHECK_OK(kt_append_n(es, "o-1", 3, "Later", 1, 0, NULL));
  CHECK_OK(append_ids(es, "o-1", KEEL_ES_ANY, (const char *[]){ID1, ID2}, 2, &r2));
  CHECK(r2.duplicate);
  CHECK_EQ(r2.version, 3);
  CHECK_EQ(r2.first_position, r1.first_position);
  /* Upper-case spelling of the same ids is the same ids. */
  CHECK_OK(append_ids(es, "o-1", KEEL_ES_ANY,
                      (const char *[]){"AAAAAAAA-1111-4111-8111-11111111111B",
                                       "22222222-2222-4222-8222-222222222222"},
                      2, &r2));
  CHECK(r2.duplicate);
  CHECK_EQ(head_of(es), 4);
  CHECK_EQ(keel_counter_value(es->m_duplicate), 3);
  CHECK_EQ(keel_counter_value(es->m_events), 4);
  keel_es_events evs;
  CHECK_OK(keel_es_read_stream(es, "o-1", NULL, &evs));
  keel_es_events_free(&evs);
  keel_metrics_buf b = {0};
  CHECK_OK(keel_metrics_render(reg, KEEL_METRICS_TEXT, &b));
  CHECK(strstr(b.data, "es_appends_total{result=\"duplicate\"} 3") != NULL);
  CHECK(strstr(b.data, "es_appends_total{result=\"ok\"} 3") != NULL);
  CHECK(strstr(b.data, "es_events_appended_total 4") != NULL);
  CHECK(strstr(b.data, "es_reads_total 2") != NULL);
  CHECK(strstr(b.data, "es_append_duration_seconds_count 6") != NULL);
  CHECK(strstr(b.data, "es_group_commit_size_count") != NULL);
  keel_metrics_buf_free(&b);
  kt_store_close(&s);
  keel_metrics_free(reg);
}

KT_CASE(mixed_reordered_or_foreign_ids_are_refused) {
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  CHECK_OK(append_ids(es, "o-1", KEEL_ES_NO_STREAM, (const char *[]){ID1, ID2}, 2, NULL));
  keel_es_append_result r;
  CHECK_EQ(append_ids(es, "o-1", KEEL_ES_ANY, (const char *[]){ID1, ID3}, 2, &r), KEEL_EEXIST);
  CHECK_EQ(append_ids(es, "o-1", KEEL_ES_ANY, (const char *[]){ID3, ID2}, 2, &r), KEEL_EEXIST);
  CHECK_EQ(append_ids(es, "o-1", KEEL_ES_ANY, (const char *[]){ID2, ID1}, 2, &r), KEEL_EEXIST);
  CHECK_EQ(append_ids(es, "o-2", KEEL_ES_ANY, (const char *[]){ID1, ID2}, 2, &r), KEEL_EEXIST);
  CHECK_EQ(append_ids(es, "o-2", KEEL_ES_ANY, (const char *[]){ID1}, 1, &r), KEEL_EEXIST);
  /* one id twice in a new batch */
  CHECK_EQ(append_ids(es, "o-3", KEEL_ES_ANY, (const char *[]){ID3, ID3}, 2, &r), KEEL_EEXIST);
  /* a generated id beside a stored one is a mix too */
  json_t *p = json_object();
  keel_es_event_in ev[2] = {{.id = ID1, .type = "T", .payload = p}, {.type = "T", .payload = p}};
  CHECK_EQ(keel_es_append(es, "o-1", KEEL_ES_ANY, ev, 2, &r), KEEL_EEXIST);
  json_decref(p);
  CHECK_EQ(head_of(es), 2);
  keel_es_stream_info info;
  CHECK_EQ(keel_es_stream_info_get(es, "o-2", &info), KEEL_ENOENT);
  CHECK_EQ(keel_es_stream_info_get(es, "o-3", &info), KEEL_ENOENT);
  kt_store_close(&s);
}

static size_t count_all(keel_es *es, const char *prefix) {
  keel_es_events evs;
  CHECK_OK(keel_es_read_all(es, 0, 0, &(keel_es_filter){.stream_prefix = prefix}, &evs));
  size_t n = evs.n;
  keel_es_events_free(&evs);
  return n;
}

KT_CASE(soft_delete_hides_and_a_recreated_stream_continues_its_numbering) {
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  CHECK_OK(kt_append_n(es, "d-1", KEEL_ES_NO_STREAM, "T", 3, 0, NULL));
  CHECK_OK(kt_append_n(es, "d-2", KEEL_ES_NO_STREAM, "T", 2, 0, NULL));
  CHECK_EQ(keel_es_delete_stream(es, "d-1", 2), KEEL_ECONFLICT);
  CHECK_EQ(keel_es_delete_stream(es, "nope-1", KEEL_ES_ANY), KEEL_ENOENT);
  CHECK_OK(keel_es_delete_stream(es, "d-1", 3));
  CHECK_OK(keel_es_delete_stream(es, "d-1", KEEL_ES_ANY)); /* again: nothing to do */
  keel_es_events evs;
  CHECK_EQ(keel_es_read_stream(es, "d-1", NULL, &evs), KEEL_ENOENT);
  CHECK_EQ(count_all(es, "d-1"), 0);
  CHECK_EQ(count_all(es, "d-2"), 2);
  keel_es_stream_info info;
  CHECK_OK(keel_es_stream_info_get(es, "d-1", &info));
  CHECK(info.deleted);
  CHECK_EQ(info.version, 3);
  keel_es_stream_info_free(&info);
  /* Recreating: no_stream conflicts (the version is kept), the kept version works. */
  keel_es_append_result r;
  CHECK_EQ(kt_append_n(es, "d-1", KEEL_ES_NO_STREAM, "T", 1, 0, &r), KEEL_ECONFLICT);
  CHECK_EQ(r.actual, 3);
  CHECK_EQ(kt_append_n(es, "d-1", KEEL_ES_STREAM_EXISTS, "T", 1, 0, &r), KEEL_ECONFLICT);
  CHECK_OK(kt_append_n(es, "d-1", 3, "T", 1, 100, &r));
  CHECK_EQ(r.version, 4);
  CHECK_OK(keel_es_read_stream(es, "d-1", NULL, &evs));
  CHECK_EQ(evs.n, 1); /* the old events stay hidden */
  CHECK_EQ(evs.v[0].version, 4);
  CHECK_EQ(kt_payload_i(&evs.v[0]), 100);
  keel_es_events_free(&evs);
  CHECK_EQ(count_all(es, "d-1"), 1);
  CHECK_OK(keel_es_stream_info_get(es, "d-1", &info));
  CHECK(!info.deleted);
  keel_es_stream_info_free(&info);
  /* any recreates too */
  CHECK_OK(keel_es_delete_stream(es, "d-2", KEEL_ES_ANY));
  CHECK_OK(kt_append_n(es, "d-2", KEEL_ES_ANY, "T", 1, 0, &r));
  CHECK_EQ(r.version, 3);
  kt_store_close(&s);
}

KT_CASE(truncate_before_hides_the_older_versions) {
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  CHECK_OK(kt_append_n(es, "t-1", KEEL_ES_NO_STREAM, "T", 5, 0, NULL));
  CHECK_EQ(keel_es_truncate_before(es, "nope-1", 2), KEEL_ENOENT);
  CHECK_EQ(keel_es_truncate_before(es, "t-1", -1), KEEL_EINVAL);
  CHECK_OK(keel_es_truncate_before(es, "t-1", 3));
  keel_es_events evs;
  CHECK_OK(keel_es_read_stream(es, "t-1", NULL, &evs));
  CHECK_EQ(evs.n, 3);
  CHECK_EQ(evs.v[0].version, 3);
  keel_es_events_free(&evs);
  CHECK_OK(keel_es_read_stream(es, "t-1", &(keel_es_read_opts){.backwards = true}, &evs));
  CHECK_EQ(evs.n, 3);
  CHECK_EQ(evs.v[2].version, 3);
  keel_es_events_free(&evs);
  CHECK_EQ(count_all(es, "t-1"), 3);
  keel_es_stream_info info;
  CHECK_OK(keel_es_stream_info_get(es, "t-1", &info));
  CHECK_EQ(info.truncated_before, 3);
  CHECK_EQ(info.version, 5);
  keel_es_stream_info_free(&info);
  CHECK_OK(keel_es_truncate_before(es, "t-1", 2)); /* never lowers it */
  CHECK_EQ(count_all(es, "t-1"), 3);
  kt_store_close(&s);
}

/* sql on the store's database behind keel's back: 0 when it succeeded. */
static int raw_exec(const kt_store *s, const char *sql, char *err, size_t errlen) {
  if (kt_es_pg_url()) return kt_pg_exec(s->url, sql, err, errlen);
  char path[400];
  snprintf(path, sizeof path, "%s/es.db", s->dir);
  sqlite3 *db;
  CHECK_EQ(sqlite3_open(path, &db), SQLITE_OK);
  sqlite3_busy_timeout(db, 5000);
  char *msg = NULL;
  int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
  snprintf(err, errlen, "%s", msg ? msg : "");
  sqlite3_free(msg);
  sqlite3_close(db);
  return rc;
}

KT_CASE(hard_delete_removes_for_good_and_nothing_else_can_delete_or_update) {
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  CHECK_OK(kt_append_n(es, "h-1", KEEL_ES_NO_STREAM, "T", 3, 0, NULL));
  CHECK_OK(kt_append_n(es, "h-2", KEEL_ES_NO_STREAM, "T", 2, 0, NULL));
  CHECK_OK(kt_append_n(es, "h-1", KEEL_ES_ANY, "T", 1, 0, NULL)); /* position 6, the last */
  char err[256];
  CHECK(raw_exec(&s, "DELETE FROM events WHERE stream = 'h-2'", err, sizeof err) != 0);
  CHECK(strstr(err, "append-only") != NULL);
  CHECK(raw_exec(&s, "UPDATE events SET type = 'X'", err, sizeof err) != 0);
  CHECK(strstr(err, "append-only") != NULL);
  CHECK(raw_exec(&s, "DELETE FROM events", err, sizeof err) != 0);
  if (kt_es_pg_url()) CHECK(raw_exec(&s, "TRUNCATE events", err, sizeof err) != 0);
  CHECK_EQ(head_of(es), 6);
  CHECK_EQ(keel_es_hard_delete(es, "nope-1"), KEEL_ENOENT);
  CHECK_OK(keel_es_hard_delete(es, "h-1"));
  keel_es_events evs;
  CHECK_EQ(keel_es_read_stream(es, "h-1", NULL, &evs), KEEL_ENOENT);
  keel_es_stream_info info;
  CHECK_EQ(keel_es_stream_info_get(es, "h-1", &info), KEEL_ENOENT);
  CHECK_EQ(count_all(es, "h-"), 2);
  /* The flag is down again: a plain delete still fails after a hard delete. */
  CHECK(raw_exec(&s, "DELETE FROM events", err, sizeof err) != 0);
  CHECK_EQ(count_all(es, "h-"), 2);
  /* The stream starts over; positions are never reused. */
  keel_es_append_result r;
  CHECK_OK(kt_append_n(es, "h-1", KEEL_ES_NO_STREAM, "T", 1, 0, &r));
  CHECK_EQ(r.version, 1);
  CHECK_EQ(r.first_position, 7);
  kt_store_close(&s);
}

KT_CASE(stream_metadata_is_replaced_and_read_back) {
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  json_t *m = json_pack("{s:i,s:s}", "max_age", 3600, "owner", "billing");
  CHECK_OK(keel_es_stream_set_metadata(es, "md-1", m)); /* before any event */
  keel_es_stream_info info;
  CHECK_OK(keel_es_stream_info_get(es, "md-1", &info));
  CHECK_EQ(info.version, 0);
  CHECK(json_equal(info.metadata, m));
  keel_es_stream_info_free(&info);
  keel_es_events evs;
  CHECK_EQ(keel_es_read_stream(es, "md-1", NULL, &evs), KEEL_ENOENT);
  CHECK_OK(kt_append_n(es, "md-1", KEEL_ES_NO_STREAM, "T", 2, 0, NULL));
  json_t *m2 = json_pack("{s:b}", "frozen", 1);
  CHECK_OK(keel_es_stream_set_metadata(es, "md-1", m2));
  CHECK_OK(keel_es_stream_info_get(es, "md-1", &info));
  CHECK_EQ(info.version, 2);
  CHECK(json_equal(info.metadata, m2));
  keel_es_stream_info_free(&info);
  CHECK_OK(kt_append_n(es, "md-2", KEEL_ES_NO_STREAM, "T", 1, 0, NULL));
  CHECK_OK(keel_es_stream_info_get(es, "md-2", &info));
  CHECK_EQ(json_object_size(info.metadata), 0);
  keel_es_stream_info_free(&info);
  json_t *arr = json_array();
  CHECK_EQ(keel_es_stream_set_metadata(es, "md-1", arr), KEEL_EINVAL);
  CHECK_EQ(keel_es_stream_set_metadata(es, "bad stream", m), KEEL_EINVAL);
  json_decref(arr);
  json_decref(m);
  json_decref(m2);
  kt_store_close(&s);
}

KT_MAIN(KT_ENTRY(a_repeated_batch_returns_the_original_result),
        KT_ENTRY(mixed_reordered_or_foreign_ids_are_refused),
        KT_ENTRY(soft_delete_hides_and_a_recreated_stream_continues_its_numbering),
        KT_ENTRY(truncate_before_hides_the_older_versions),
        KT_ENTRY(hard_delete_removes_for_good_and_nothing_else_can_delete_or_update),
        KT_ENTRY(stream_metadata_is_replaced_and_read_back))
