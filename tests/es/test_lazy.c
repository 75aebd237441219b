/* test_lazy.c - read events carry their payload and metadata as the stored
 * JSON texts and parse them only when asked (keel_es_event_payload /
 * keel_es_event_metadata), once; a text that does not decode fails only
 * its accessor, or the read when an upcaster needs it; upcast events carry
 * their new texts. */
#include <sqlite3.h>

#include "es/kt_es.h"

static void put(keel_es *es, const char *stream, const char *type, json_t *payload, json_t *meta) {
  keel_es_event_in ev = {.type = type, .payload = payload, .metadata = meta};
  CHECK_OK(keel_es_append(es, stream, KEEL_ES_ANY, &ev, 1, NULL));
  json_decref(payload);
  json_decref(meta);
}

/* The checks on one event read back: text first, nothing parsed, then the
 * values, parsed once. */
static void check_event(const keel_es_event *e, const char *payload, const char *meta) {
  CHECK(e->parsed_.payload == NULL && e->parsed_.metadata == NULL); /* the read parsed nothing */
  CHECK_STR(e->payload_json, payload);
  CHECK_EQ(e->payload_len, strlen(payload));
  CHECK_STR(e->metadata_json, meta);
  CHECK_EQ(e->metadata_len, strlen(meta));
  json_t *want = json_loads(payload, JSON_DECODE_ANY, NULL);
  json_t *p = keel_es_event_payload(e);
  CHECK(p != NULL && json_equal(p, want));
  CHECK(keel_es_event_payload(e) == p); /* cached: the same value */
  json_decref(want);
  want = json_loads(meta, 0, NULL);
  json_t *m = keel_es_event_metadata(e);
  CHECK(json_is_object(m) && json_equal(m, want));
  CHECK(keel_es_event_metadata(e) == m);
  json_decref(want);
}

KT_CASE(reads_hand_out_the_stored_text_and_parse_it_once_when_asked) {
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  put(es, "l-1", "A", json_pack("{s:i,s:[b,n]}", "a", 1, "b", 1), NULL);
  put(es, "l-1", "B", json_string("just a string"),
      json_pack("{s:s,s:s}", "tenant", "acme", "actor", "u-9"));
  put(es, "l-1", "C", json_integer(42), NULL);

  keel_es_events evs;
  CHECK_OK(keel_es_read_stream(es, "l-1", NULL, &evs));
  CHECK_EQ(evs.n, 3);
  check_event(&evs.v[0], "{\"a\":1,\"b\":[true,null]}", "{}");
  check_event(&evs.v[1], "\"just a string\"", "{\"tenant\":\"acme\",\"actor\":\"u-9\"}");
  check_event(&evs.v[2], "42", "{}");
  keel_es_events_free(&evs);

  /* read_all: the same texts; an event whose values are never asked for
   * costs no parse, and freeing half-parsed events leaks nothing (ASan) */
  CHECK_OK(keel_es_read_all(es, 0, 0, NULL, &evs));
  CHECK_EQ(evs.n, 3);
  CHECK_STR(evs.v[0].payload_json, "{\"a\":1,\"b\":[true,null]}");
  CHECK_EQ(json_integer_value(keel_es_event_payload(&evs.v[2])), 42);
  CHECK(evs.v[0].parsed_.payload == NULL && evs.v[1].parsed_.metadata == NULL);
  keel_es_events_free(&evs);

  /* the tenant filter is SQL's: it needs no parse in keel */
  CHECK_OK(keel_es_read_all(es, 0, 0, &(keel_es_filter){.tenant = "acme"}, &evs));
  CHECK_EQ(evs.n, 1);
  CHECK_STR(evs.v[0].type, "B");
  CHECK(evs.v[0].parsed_.metadata == NULL);
  CHECK_STR(json_string_value(json_object_get(keel_es_event_metadata(&evs.v[0]), "tenant")),
            "acme");
  keel_es_events_free(&evs);

  keel_es_events_free(&evs); /* a freed (zeroed) keel_es_events is fine */
  CHECK(keel_es_event_payload(NULL) == NULL);
  kt_store_close(&s);
}

/* Inserts one event row behind keel's back (SQLite: the events table
 * accepts INSERTs from any connection), with texts keel never wrote. */
static void insert_raw(kt_store *s, int64_t version, const char *type, const char *payload,
                       const char *meta) {
  sqlite3 *db;
  CHECK(sqlite3_open(s->url + strlen("sqlite:"), &db) == SQLITE_OK);
  sqlite3_busy_timeout(db, 10000);
  sqlite3_stmt *st;
  CHECK(sqlite3_prepare_v2(db,
                           "INSERT INTO events (stream, version, id, type, schema_version, "
                           "payload, metadata, occurred_at, stored_at) VALUES ('raw-1', ?1, "
                           "printf('00000000-0000-4000-8000-%012d', ?1), ?2, 1, ?3, ?4, 1, 1)",
                           -1, &st, NULL) == SQLITE_OK);
  sqlite3_bind_int64(st, 1, version);
  sqlite3_bind_text(st, 2, type, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 3, payload, -1, SQLITE_STATIC);
  if (meta) sqlite3_bind_text(st, 4, meta, -1, SQLITE_STATIC);
  CHECK(sqlite3_step(st) == SQLITE_DONE);
  sqlite3_finalize(st);
  sqlite3_close(db);
}

static int identity(const keel_es_event *in, keel_es_upcast_out *out, size_t *n, void *ud) {
  out[0].payload = json_incref(keel_es_event_payload(in));
  *n = 1;
  return 0;
}

KT_CASE(a_stored_text_that_does_not_decode_fails_its_accessor_not_the_read) {
  /* PostgreSQL's json columns refuse such a text at insert: SQLite only */
  KT_SQLITE_ONLY();
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  put(es, "l-1", "A", json_pack("{s:i}", "i", 1), NULL);
  insert_raw(&s, 1, "A", "{\"i\": 2", NULL);   /* a truncated payload */
  insert_raw(&s, 2, "A", "{\"i\": 3}", "[1]"); /* metadata not an object */
  put(es, "l-1", "A", json_pack("{s:i}", "i", 4), NULL);

  keel_es_events evs;
  CHECK_OK(keel_es_read_all(es, 0, 0, NULL, &evs));
  CHECK_EQ(evs.n, 4);
  CHECK_EQ(json_integer_value(json_object_get(keel_es_event_payload(&evs.v[0]), "i")), 1);
  CHECK_STR(evs.v[1].payload_json, "{\"i\": 2"); /* the text as stored, still there */
  CHECK(keel_es_event_payload(&evs.v[1]) == NULL);
  CHECK(json_is_object(keel_es_event_metadata(&evs.v[1])));
  CHECK_EQ(json_integer_value(json_object_get(keel_es_event_payload(&evs.v[2]), "i")), 3);
  CHECK(keel_es_event_metadata(&evs.v[2]) == NULL);
  CHECK_EQ(json_integer_value(json_object_get(keel_es_event_payload(&evs.v[3]), "i")), 4);
  keel_es_events_free(&evs);

  /* an upcaster needs the value: the read fails (KEEL_EIO), rather than
   * leave a hole in the history or call the upcaster with NULL */
  CHECK_OK(keel_es_upcaster(es, "A", 1, identity, NULL));
  CHECK_EQ(keel_es_read_all(es, 0, 0, NULL, &evs), KEEL_EIO);
  CHECK_EQ(evs.n, 0);
  CHECK_OK(keel_es_read_all(es, 0, 1, NULL, &evs)); /* the event before it still reads */
  CHECK_EQ(evs.n, 1);
  CHECK_EQ(evs.v[0].schema_version, 2);
  keel_es_events_free(&evs);
  kt_store_close(&s);
}

/* Rename v1 -> v2 with a changed payload; on "Tagged", new metadata too. */
static int bump(const keel_es_event *in, keel_es_upcast_out *out, size_t *n, void *ud) {
  json_t *p = keel_es_event_payload(in);
  out[0].payload = json_pack("{s:I}", "value", json_integer_value(json_object_get(p, "v")) * 10);
  if (strcmp(in->type, "Tagged") == 0) {
    out[0].metadata = json_deep_copy(keel_es_event_metadata(in));
    json_object_set_new(out[0].metadata, "upcast", json_true());
  }
  *n = 1;
  return 0;
}

KT_CASE(upcast_events_carry_their_new_values_and_texts) {
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  CHECK_OK(keel_es_upcaster(es, "Plain", 1, bump, NULL));
  CHECK_OK(keel_es_upcaster(es, "Tagged", 1, bump, NULL));
  put(es, "l-1", "Plain", json_pack("{s:i}", "v", 1), json_pack("{s:s}", "tenant", "t1"));
  put(es, "l-1", "Tagged", json_pack("{s:i}", "v", 2), json_pack("{s:s}", "tenant", "t2"));
  put(es, "l-1", "Other", json_pack("{s:i}", "v", 3), NULL);

  keel_es_events evs;
  CHECK_OK(keel_es_read_stream(es, "l-1", NULL, &evs));
  CHECK_EQ(evs.n, 3);
  /* upcast: parsed already, and the texts say the same as the values */
  CHECK_EQ(evs.v[0].schema_version, 2);
  CHECK(evs.v[0].parsed_.payload != NULL);
  CHECK_STR(evs.v[0].payload_json, "{\"value\":10}");
  CHECK_EQ(evs.v[0].payload_len, strlen("{\"value\":10}"));
  CHECK_STR(evs.v[0].metadata_json, "{\"tenant\":\"t1\"}"); /* the input's */
  CHECK_STR(json_string_value(json_object_get(keel_es_event_metadata(&evs.v[0]), "tenant")), "t1");
  CHECK_STR(evs.v[1].payload_json, "{\"value\":20}");
  CHECK_STR(evs.v[1].metadata_json, "{\"tenant\":\"t2\",\"upcast\":true}");
  CHECK_EQ(evs.v[1].metadata_len, strlen(evs.v[1].metadata_json));
  CHECK(json_is_true(json_object_get(keel_es_event_metadata(&evs.v[1]), "upcast")));
  /* not upcast: not parsed */
  CHECK_EQ(evs.v[2].schema_version, 1);
  CHECK(evs.v[2].parsed_.payload == NULL);
  CHECK_EQ(json_integer_value(json_object_get(keel_es_event_payload(&evs.v[2]), "v")), 3);
  keel_es_events_free(&evs);
  kt_store_close(&s);
}

KT_MAIN(KT_ENTRY(reads_hand_out_the_stored_text_and_parse_it_once_when_asked),
        KT_ENTRY(a_stored_text_that_does_not_decode_fails_its_accessor_not_the_read),
        KT_ENTRY(upcast_events_carry_their_new_values_and_texts))
