/* test_upcast.c - upcasters on every read path (read_stream, read_all, and
 * read_all's type filter): a rename, a split, a version chain, a failure. */
#include "es/kt_es.h"

/* OrderCreated v1 -> OrderPlaced v2 */
static int rename_fn(const keel_es_event *in, keel_es_upcast_out *out, size_t *n, void *ud) {
  out[0].type = "OrderPlaced";
  out[0].payload = json_deep_copy(keel_es_event_payload(in));
  *n = 1;
  return 0;
}

/* AddressSet v1 -> StreetSet v2 + CitySet v2 */
static int split_fn(const keel_es_event *in, keel_es_upcast_out *out, size_t *n, void *ud) {
  out[0].type = "StreetSet";
  out[0].payload =
      json_pack("{s:O}", "street", json_object_get(keel_es_event_payload(in), "street"));
  out[1].type = "CitySet";
  out[1].payload = json_pack("{s:O}", "city", json_object_get(keel_es_event_payload(in), "city"));
  *n = 2;
  return 0;
}

/* Price v1 {amount} -> v2 {amount, currency: EUR} -> v3 {value, currency} */
static int price_1_2(const keel_es_event *in, keel_es_upcast_out *out, size_t *n, void *ud) {
  out[0].payload = json_deep_copy(keel_es_event_payload(in));
  json_object_set_new(out[0].payload, "currency", json_string("EUR"));
  *n = 1;
  return 0;
}
static int price_2_3(const keel_es_event *in, keel_es_upcast_out *out, size_t *n, void *ud) {
  out[0].payload =
      json_pack("{s:O,s:O}", "value", json_object_get(keel_es_event_payload(in), "amount"),
                "currency", json_object_get(keel_es_event_payload(in), "currency"));
  *n = 1;
  return 0;
}

static int fails(const keel_es_event *in, keel_es_upcast_out *out, size_t *n, void *ud) {
  return KEEL_EINVAL;
}

static void put(keel_es *es, const char *stream, const char *type, int sv, json_t *payload) {
  keel_es_event_in ev = {.type = type, .schema_version = sv, .payload = payload};
  CHECK_OK(keel_es_append(es, stream, KEEL_ES_ANY, &ev, 1, NULL));
  json_decref(payload);
}

static keel_es *setup(kt_store *s) {
  keel_es *es = kt_store_open(s, NULL);
  CHECK_OK(keel_es_upcaster(es, "OrderCreated", 1, rename_fn, NULL));
  CHECK_OK(keel_es_upcaster(es, "AddressSet", 1, split_fn, NULL));
  CHECK_OK(keel_es_upcaster(es, "Price", 1, price_1_2, NULL));
  CHECK_OK(keel_es_upcaster(es, "Price", 2, price_2_3, NULL));
  CHECK_EQ(keel_es_upcaster(es, "Price", 2, price_2_3, NULL), KEEL_EEXIST);
  CHECK_EQ(keel_es_upcaster(es, "Price", 0, price_2_3, NULL), KEEL_EINVAL);
  put(es, "u-1", "OrderCreated", 1, json_pack("{s:i}", "total", 42));                        /* 1 */
  put(es, "u-1", "AddressSet", 1, json_pack("{s:s,s:s}", "street", "Main", "city", "Oslo")); /* 2 */
  put(es, "u-1", "Price", 1, json_pack("{s:i}", "amount", 10));                              /* 3 */
  put(es, "u-1", "Price", 2, json_pack("{s:i,s:s}", "amount", 7, "currency", "USD"));        /* 4 */
  put(es, "u-1", "Price", 3, json_pack("{s:i,s:s}", "value", 5, "currency", "GBP"));         /* 5 */
  put(es, "u-1", "OrderPlaced", 2, json_pack("{s:i}", "total", 1));                          /* 6 */
  return es;
}

/* Checks the upcast history of u-1 as read by either path. */
static void check_history(const keel_es_events *e) {
  CHECK_EQ(e->n, 7);
  CHECK_STR(e->v[0].type, "OrderPlaced");
  CHECK_EQ(e->v[0].schema_version, 2);
  CHECK_EQ(json_integer_value(json_object_get(keel_es_event_payload(&e->v[0]), "total")), 42);
  CHECK_STR(e->v[1].type, "StreetSet");
  CHECK_STR(json_string_value(json_object_get(keel_es_event_payload(&e->v[1]), "street")), "Main");
  CHECK_STR(e->v[2].type, "CitySet");
  CHECK_STR(json_string_value(json_object_get(keel_es_event_payload(&e->v[2]), "city")), "Oslo");
  CHECK_EQ(e->v[1].position, e->v[2].position); /* one stored event, split */
  CHECK_EQ(e->v[1].version, 2);
  for (int i = 3; i <= 5; i++) {
    CHECK_STR(e->v[i].type, "Price");
    CHECK_EQ(e->v[i].schema_version, 3);
    CHECK(json_object_get(keel_es_event_payload(&e->v[i]), "amount") == NULL);
  }
  CHECK_EQ(json_integer_value(json_object_get(keel_es_event_payload(&e->v[3]), "value")), 10);
  CHECK_STR(json_string_value(json_object_get(keel_es_event_payload(&e->v[3]), "currency")), "EUR");
  CHECK_EQ(json_integer_value(json_object_get(keel_es_event_payload(&e->v[4]), "value")), 7);
  CHECK_STR(json_string_value(json_object_get(keel_es_event_payload(&e->v[4]), "currency")), "USD");
  CHECK_EQ(json_integer_value(json_object_get(keel_es_event_payload(&e->v[5]), "value")), 5);
  CHECK_STR(e->v[6].type, "OrderPlaced");
  CHECK_EQ(e->v[6].schema_version, 2);
}

KT_CASE(upcasters_apply_on_read_stream_and_read_all) {
  kt_store s;
  keel_es *es = setup(&s);
  keel_es_events evs;
  CHECK_OK(keel_es_read_stream(es, "u-1", NULL, &evs));
  check_history(&evs);
  keel_es_events_free(&evs);
  CHECK_OK(keel_es_read_all(es, 0, 0, NULL, &evs));
  check_history(&evs);
  keel_es_events_free(&evs);
  /* backwards: the same events, each upcast, in reverse stored order */
  CHECK_OK(keel_es_read_stream(es, "u-1", &(keel_es_read_opts){.backwards = true}, &evs));
  CHECK_EQ(evs.n, 7);
  CHECK_STR(evs.v[6].type, "OrderPlaced");
  CHECK_EQ(evs.v[6].position, 1);
  keel_es_events_free(&evs);
  kt_store_close(&s);
}

KT_CASE(read_all_filters_types_after_upcasting) {
  kt_store s;
  keel_es *es = setup(&s);
  for (int i = 0; i < 30; i++)
    put(es, "noise-1", "Noise", 1, json_object());
  put(es, "u-2", "OrderCreated", 1, json_pack("{s:i}", "total", 3)); /* 37 */
  keel_es_events evs;
  CHECK_OK(keel_es_read_all(
      es, 0, 0, &(keel_es_filter){.types = (const char *const[]){"OrderPlaced", NULL}}, &evs));
  CHECK_EQ(evs.n, 3);
  CHECK_EQ(evs.v[0].position, 1);
  CHECK_EQ(evs.v[1].position, 6);
  CHECK_EQ(evs.v[2].position, 37);
  keel_es_events_free(&evs);
  CHECK_OK(keel_es_read_all(
      es, 0, 0, &(keel_es_filter){.types = (const char *const[]){"OrderCreated", NULL}}, &evs));
  CHECK_EQ(evs.n, 0);
  keel_es_events_free(&evs);
  /* Paging one at a time with the filter still finds each, then ends. */
  int64_t after = 0;
  int found = 0;
  for (;;) {
    CHECK_OK(keel_es_read_all(
        es, after, 1, &(keel_es_filter){.types = (const char *const[]){"CitySet", NULL}}, &evs));
    if (evs.n == 0) break;
    found++;
    after = evs.v[0].position;
    keel_es_events_free(&evs);
  }
  keel_es_events_free(&evs);
  CHECK_EQ(found, 1);
  kt_store_close(&s);
}

KT_CASE(a_failing_upcaster_fails_the_read_on_every_path) {
  kt_store s;
  keel_es *es = setup(&s);
  CHECK_OK(keel_es_upcaster(es, "Broken", 1, fails, NULL));
  put(es, "u-1", "Broken", 1, json_object());
  keel_es_events evs;
  CHECK_EQ(keel_es_read_stream(es, "u-1", NULL, &evs), KEEL_EINVAL);
  CHECK_EQ(evs.n, 0);
  CHECK_EQ(keel_es_read_all(es, 0, 0, NULL, &evs), KEEL_EINVAL);
  CHECK_EQ(evs.n, 0);
  /* the events before it still read */
  CHECK_OK(keel_es_read_all(es, 0, 6, NULL, &evs));
  CHECK_EQ(evs.n, 7);
  keel_es_events_free(&evs);
  kt_store_close(&s);
}

KT_MAIN(KT_ENTRY(upcasters_apply_on_read_stream_and_read_all),
        KT_ENTRY(read_all_filters_types_after_upcasting),
        KT_ENTRY(a_failing_upcaster_fails_the_read_on_every_path))
