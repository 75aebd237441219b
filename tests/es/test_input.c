/* test_input.c - bad input: each refused with a clear code, nothing written. */
#include "es/kt_es.h"

static void nothing_written(keel_es *es) {
  int64_t head;
  CHECK_OK(keel_es_head(es, &head));
  CHECK_EQ(head, 0);
}

static int one(keel_es *es, const char *stream, keel_es_event_in ev) {
  keel_es_append_result r;
  return keel_es_append(es, stream, KEEL_ES_ANY, &ev, 1, &r);
}

KT_CASE(bad_streams_types_ids_payloads_and_metadata_are_refused) {
  kt_store s;
  keel_es *es = kt_store_open(&s, &(keel_es_opts){.max_event_bytes = 200, .max_batch = 5});
  json_t *p = json_object();
  keel_es_event_in ok = {.type = "T", .payload = p};
  char long_name[300];
  memset(long_name, 'a', 256);
  long_name[256] = 0;
  /* stream ids */
  CHECK_EQ(one(es, NULL, ok), KEEL_EINVAL);
  CHECK_EQ(one(es, "", ok), KEEL_EINVAL);
  CHECK_EQ(one(es, "has space", ok), KEEL_EINVAL);
  CHECK_EQ(one(es, "tab\tbed", ok), KEEL_EINVAL);
  CHECK_EQ(one(es, "caf\xc3\xa9", ok), KEEL_EINVAL);
  CHECK_EQ(one(es, long_name, ok), KEEL_EINVAL);
  long_name[255] = 0;
  CHECK_OK(one(es, long_name, ok)); /* 255 is fine */
  CHECK_OK(keel_es_hard_delete(es, long_name));
  /* types */
  CHECK_EQ(one(es, "s-1", (keel_es_event_in){.type = NULL, .payload = p}), KEEL_EINVAL);
  CHECK_EQ(one(es, "s-1", (keel_es_event_in){.type = "", .payload = p}), KEEL_EINVAL);
  long_name[255] = 'a';
  CHECK_EQ(one(es, "s-1", (keel_es_event_in){.type = long_name, .payload = p}), KEEL_EINVAL);
  /* ids */
  CHECK_EQ(one(es, "s-1", (keel_es_event_in){.id = "not-a-uuid", .type = "T", .payload = p}),
           KEEL_EINVAL);
  CHECK_EQ(one(es, "s-1",
               (keel_es_event_in){
                   .id = "g1111111-1111-4111-8111-111111111111", .type = "T", .payload = p}),
           KEEL_EINVAL);
  CHECK_EQ(one(es, "s-1",
               (keel_es_event_in){
                   .id = "111111111111-4111-8111-1111-11111111", .type = "T", .payload = p}),
           KEEL_EINVAL);
  /* schema version */
  CHECK_EQ(one(es, "s-1", (keel_es_event_in){.type = "T", .schema_version = -1, .payload = p}),
           KEEL_EINVAL);
  /* payloads: none, not serialisable (a string with invalid UTF-8) */
  CHECK_EQ(one(es, "s-1", (keel_es_event_in){.type = "T"}), KEEL_EINVAL);
  json_t *bad = json_pack("{s:o}", "x", json_string_nocheck("\xff\xfe"));
  CHECK_EQ(one(es, "s-1", (keel_es_event_in){.type = "T", .payload = bad}), KEEL_EINVAL);
  /* metadata: not an object, not serialisable */
  json_t *arr = json_array();
  CHECK_EQ(one(es, "s-1", (keel_es_event_in){.type = "T", .payload = p, .metadata = arr}),
           KEEL_EINVAL);
  CHECK_EQ(one(es, "s-1", (keel_es_event_in){.type = "T", .payload = p, .metadata = bad}),
           KEEL_EINVAL);
  /* sizes: payload, metadata, the two together */
  json_t *big = json_pack("{s:s}", "s", long_name); /* > 200 bytes */
  CHECK_EQ(one(es, "s-1", (keel_es_event_in){.type = "T", .payload = big}), KEEL_ERANGE);
  CHECK_EQ(one(es, "s-1", (keel_es_event_in){.type = "T", .payload = p, .metadata = big}),
           KEEL_ERANGE);
  char half[120];
  memset(half, 'h', 110);
  half[110] = 0;
  json_t *h = json_pack("{s:s}", "s", half);
  CHECK_OK(one(es, "s-2", (keel_es_event_in){.type = "T", .payload = h}));
  CHECK_OK(keel_es_hard_delete(es, "s-2"));
  CHECK_EQ(one(es, "s-1", (keel_es_event_in){.type = "T", .payload = h, .metadata = h}),
           KEEL_ERANGE);
  /* batches: empty, too many, one bad event among good ones */
  keel_es_event_in six[6];
  for (int i = 0; i < 6; i++)
    six[i] = ok;
  keel_es_append_result r;
  CHECK_EQ(keel_es_append(es, "s-1", KEEL_ES_ANY, six, 0, &r), KEEL_EINVAL);
  CHECK_EQ(keel_es_append(es, "s-1", KEEL_ES_ANY, NULL, 1, &r), KEEL_EINVAL);
  CHECK_EQ(keel_es_append(es, "s-1", KEEL_ES_ANY, six, 6, &r), KEEL_ERANGE);
  six[3].payload = big;
  CHECK_EQ(keel_es_append(es, "s-1", KEEL_ES_ANY, six, 5, &r), KEEL_ERANGE);
  /* append_multi: one bad request fails the whole call, and says which */
  keel_es_append_req reqs[2] = {{"s-1", KEEL_ES_ANY, &ok, 1}, {"bad stream", KEEL_ES_ANY, &ok, 1}};
  keel_es_append_result res[2];
  size_t failed = 9;
  CHECK_EQ(keel_es_append_multi(es, reqs, 2, res, &failed), KEEL_EINVAL);
  CHECK_EQ(failed, 1);
  CHECK_EQ(keel_es_append_multi(es, reqs, 0, res, &failed), KEEL_EINVAL);
  nothing_written(es);
  json_decref(h);
  json_decref(big);
  json_decref(arr);
  json_decref(bad);
  json_decref(p);
  kt_store_close(&s);
}

KT_CASE(calls_outside_a_process_or_with_null_say_so) {
  keel_es *es = NULL;
  CHECK_EQ(keel_es_open(NULL, NULL), KEEL_EINVAL);
  keel_es_close(NULL);
  keel_es_events evs;
  CHECK_EQ(keel_es_read_all(NULL, 0, 0, NULL, &evs), KEEL_EINVAL);
  CHECK_EQ(keel_es_append(NULL, "a-1", KEEL_ES_ANY, NULL, 0, NULL), KEEL_EINVAL);
  (void)es;
}

KT_MAIN(KT_ENTRY(bad_streams_types_ids_payloads_and_metadata_are_refused),
        KT_ENTRY(calls_outside_a_process_or_with_null_say_so))
