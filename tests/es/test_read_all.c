/* test_read_all.c - the global feed: positions strictly increasing, "after"
 * exclusive, paging, and the filters (types, stream prefix, category,
 * tenant), alone and together. */
#include "es/kt_es.h"

static void put(keel_es *es, const char *stream, const char *type, const char *tenant) {
  json_t *p = json_object();
  json_t *m = tenant ? json_pack("{s:s}", "tenant", tenant) : NULL;
  keel_es_event_in ev = {.type = type, .payload = p, .metadata = m};
  CHECK_OK(keel_es_append(es, stream, KEEL_ES_ANY, &ev, 1, NULL));
  json_decref(p);
  json_decref(m);
}

/* The positions read_all returns for filter f, as a string "1,4,5". */
static void expect(keel_es *es, const keel_es_filter *f, const char *want) {
  keel_es_events evs;
  CHECK_OK(keel_es_read_all(es, 0, 0, f, &evs));
  char got[256] = "";
  for (size_t i = 0; i < evs.n; i++) {
    char one[32];
    snprintf(one, sizeof one, "%s%lld", i ? "," : "", (long long)evs.v[i].position);
    strcat(got, one);
  }
  keel_es_events_free(&evs);
  CHECK_STR(got, want);
}

static void fill(keel_es *es) {
  put(es, "order-1", "A", "acme");   /* 1 */
  put(es, "order-2", "B", "acme");   /* 2 */
  put(es, "orders-x", "A", "other"); /* 3 */
  put(es, "user-1", "C", NULL);      /* 4 */
  put(es, "order", "A", "acme");     /* 5 */
  put(es, "order-1", "C", "other");  /* 6 */
}

KT_CASE(filters_alone_and_together) {
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  fill(es);
  expect(es, NULL, "1,2,3,4,5,6");
  expect(es, &(keel_es_filter){0}, "1,2,3,4,5,6");
  expect(es, &(keel_es_filter){.types = (const char *const[]){"A", NULL}}, "1,3,5");
  expect(es, &(keel_es_filter){.types = (const char *const[]){"A", "C", NULL}}, "1,3,4,5,6");
  expect(es, &(keel_es_filter){.types = (const char *const[]){NULL}}, "");
  expect(es, &(keel_es_filter){.stream_prefix = "order-"}, "1,2,6");
  expect(es, &(keel_es_filter){.stream_prefix = "order"}, "1,2,3,5,6");
  expect(es, &(keel_es_filter){.category = "order"}, "1,2,5,6");
  expect(es, &(keel_es_filter){.category = "orders"}, "3");
  expect(es, &(keel_es_filter){.category = "ord"}, "");
  expect(es, &(keel_es_filter){.tenant = "acme"}, "1,2,5");
  expect(es, &(keel_es_filter){.tenant = "nobody"}, "");
  expect(es,
         &(keel_es_filter){
             .category = "order", .types = (const char *const[]){"A", NULL}, .tenant = "acme"},
         "1,5");
  /* LIKE's wildcards mean nothing in a prefix */
  expect(es, &(keel_es_filter){.stream_prefix = "order_"}, "");
  expect(es, &(keel_es_filter){.stream_prefix = "%"}, "");
  kt_store_close(&s);
}

KT_CASE(after_is_exclusive_and_pages_cover_everything_once) {
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  for (int i = 0; i < 25; i++) {
    char stream[16];
    snprintf(stream, sizeof stream, "p-%d", i % 4);
    CHECK_OK(kt_append_n(es, stream, KEEL_ES_ANY, "T", (size_t)(1 + i % 3), i * 10, NULL));
  }
  int64_t head;
  CHECK_OK(keel_es_head(es, &head));
  keel_es_events evs;
  CHECK_OK(keel_es_read_all(es, 3, 2, NULL, &evs));
  CHECK_EQ(evs.n, 2);
  CHECK_EQ(evs.v[0].position, 4);
  CHECK_EQ(evs.v[1].position, 5);
  keel_es_events_free(&evs);
  for (size_t page = 1; page <= 7; page++) {
    int64_t after = 0, last = 0, seen = 0;
    for (;;) {
      CHECK_OK(keel_es_read_all(es, after, page, NULL, &evs));
      if (evs.n == 0) break;
      CHECK(evs.n <= page);
      for (size_t i = 0; i < evs.n; i++) {
        CHECK_EQ(evs.v[i].position, last + 1); /* strictly increasing, no gap */
        last = evs.v[i].position;
        seen++;
      }
      after = last;
      keel_es_events_free(&evs);
    }
    keel_es_events_free(&evs);
    CHECK_EQ(seen, head);
  }
  CHECK_OK(keel_es_read_all(es, head, 0, NULL, &evs));
  CHECK_EQ(evs.n, 0);
  keel_es_events_free(&evs);
  CHECK_EQ(keel_es_read_all(es, -1, 0, NULL, &evs), KEEL_EINVAL);
  CHECK_EQ(keel_es_read_all(es, 0, 100001, NULL, &evs), KEEL_ERANGE);
  kt_store_close(&s);
}

/* Reads keep their prepared statements per connection (SQLite), at most a
 * few dozen: many distinct filters (each a distinct SQL text) in turn, and
 * each again, all still answer right, and the store closes cleanly (ASan:
 * nothing leaked, every statement finalized). */
KT_CASE(many_distinct_filters_in_turn_each_answer_right) {
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  fill(es);
  const char *types[60];
  for (int round = 0; round < 2; round++) {
    for (int k = 1; k <= 50; k++) { /* k types: "A", then k - 1 that match nothing */
      for (int i = 0; i < k; i++)
        types[i] = i == 0 ? "A" : "Z";
      types[k] = NULL;
      expect(es, &(keel_es_filter){.types = types}, "1,3,5");
      if (k % 10 == 0) expect(es, NULL, "1,2,3,4,5,6");
    }
  }
  keel_es_events evs;
  CHECK_OK(keel_es_read_stream(es, "order-1", NULL, &evs));
  CHECK_EQ(evs.n, 2);
  keel_es_events_free(&evs);
  kt_store_close(&s);
}

KT_MAIN(KT_ENTRY(filters_alone_and_together),
        KT_ENTRY(after_is_exclusive_and_pages_cover_everything_once),
        KT_ENTRY(many_distinct_filters_in_turn_each_answer_right))
