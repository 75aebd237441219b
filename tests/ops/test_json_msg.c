/* test_json_msg.c - JSON in and out of messages and gen_server calls
 * (keel/json.h): any JSON value survives a round trip exactly, a non-JSON
 * payload is refused, and a call or cast carries JSON both ways with
 * gen_server's own errors. */
#include <string.h>

#include "keel_test.h"
#include "keel/json.h"
#include "keel/registry.h"

enum { OP_ECHO = 1, OP_ADD, OP_EMPTY, OP_JUNK, OP_CAST_SET, OP_GET };

static void check_round_trip(const char *text) {
  json_error_t err;
  json_t *v = json_loads(text, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
  CHECK(v != NULL);
  json_t *keep = json_incref(v);
  keel_msg_t *m = keel_msg_from_json(7, v); /* steals v */
  CHECK(m != NULL);
  CHECK_EQ(keel_msg_tag(m), 7);
  json_t *back = keel_msg_to_json(m);
  CHECK(back != NULL);
  if (!json_equal(back, keep)) {
    fprintf(stderr, "round trip of %s differs\n", text);
    CHECK(!"round trip");
  }
  json_decref(back);
  json_decref(keep);
  keel_msg_free(m);
}

KT_CASE(any_json_value_round_trips) {
  check_round_trip("{\"a\":1,\"b\":[true,false,null],\"c\":{\"d\":\"e\"}}");
  check_round_trip("42");
  check_round_trip("-1.5e10");
  check_round_trip("\"a string\"");
  check_round_trip("\"nul \\u0000 inside\"");
  check_round_trip("\"\\u00e9\\u20ac\\ud83d\\ude00\"");
  check_round_trip("null");
  check_round_trip("[]");
  /* a large value */
  json_t *arr = json_array();
  for (int i = 0; i < 10000; i++)
    json_array_append_new(arr, json_integer(i));
  keel_msg_t *m = keel_msg_from_json(1, json_incref(arr));
  json_t *back = keel_msg_to_json(m);
  CHECK(json_equal(back, arr));
  json_decref(back);
  json_decref(arr);
  keel_msg_free(m);
}

KT_CASE(a_payload_that_is_not_json_gives_null) {
  CHECK(keel_msg_from_json(1, NULL) == NULL);
  CHECK(keel_msg_to_json(NULL) == NULL);
  keel_msg_t *m = keel_msg_new(1, 0);
  CHECK(keel_msg_to_json(m) == NULL); /* empty */
  keel_msg_free(m);
  m = keel_msg_copy(1, "{\"a\":", 5);
  CHECK(keel_msg_to_json(m) == NULL); /* truncated */
  keel_msg_free(m);
  m = keel_msg_copy(1, "1 2", 3);
  CHECK(keel_msg_to_json(m) == NULL); /* trailing data */
  keel_msg_free(m);
}

/* ---- a server speaking JSON ------------------------------------------------------- */

static int js_init(void *arg, void **state) {
  (void)arg;
  *state = json_object();
  return 0;
}

static int js_call(void *st, keel_gs_from from, keel_msg_t **req, keel_msg_t **reply) {
  (void)from;
  json_t *in = keel_msg_to_json(*req);
  switch (keel_msg_tag(*req)) {
  case OP_ECHO: *reply = keel_msg_from_json(0, in ? in : json_null()); return KEEL_GS_REPLY;
  case OP_ADD: {
    json_int_t a = json_integer_value(json_object_get(in, "a"));
    json_int_t b = json_integer_value(json_object_get(in, "b"));
    json_decref(in);
    *reply = keel_msg_from_json(0, json_pack("{s:I}", "sum", a + b));
    return KEEL_GS_REPLY;
  }
  case OP_GET:
    json_decref(in);
    *reply = keel_msg_from_json(0, json_incref(st));
    return KEEL_GS_REPLY;
  case OP_JUNK:
    json_decref(in);
    *reply = keel_msg_copy(0, "not json", 8);
    return KEEL_GS_REPLY;
  default: /* OP_EMPTY */
    json_decref(in);
    *reply = NULL;
    return KEEL_GS_REPLY;
  }
}

static int js_cast(void *st, keel_msg_t **msg) {
  json_t *in = keel_msg_to_json(*msg);
  if (keel_msg_tag(*msg) == OP_CAST_SET && json_is_object(in)) json_object_update(st, in);
  json_decref(in);
  return KEEL_GS_OK;
}

static void js_terminate(keel_reason reason, void *st) {
  (void)reason;
  json_decref(st);
}

static const keel_gen_server js_server = {
    .init = js_init, .handle_call = js_call, .handle_cast = js_cast, .terminate = js_terminate};

KT_CASE(calls_and_casts_carry_json_both_ways) {
  keel_gs_opts o = {.name = "json_server"};
  keel_pid_t s = 0;
  CHECK_OK(keel_gs_start(&js_server, NULL, &o, &s, NULL));

  json_t *r = NULL;
  CHECK_OK(keel_gs_call_json(s, OP_ADD, json_pack("{s:i,s:i}", "a", 40, "b", 2), &r, 0, NULL));
  CHECK_EQ(json_integer_value(json_object_get(r, "sum")), 42);
  json_decref(r);

  CHECK_OK(keel_gs_call_json_name("json_server", OP_ECHO, json_string("hi"), &r, 0, NULL));
  CHECK_STR(json_string_value(r), "hi");
  json_decref(r);

  CHECK_OK(keel_gs_call_json(s, OP_ECHO, NULL, &r, 0, NULL)); /* empty request */
  CHECK(json_is_null(r));
  json_decref(r);

  r = json_true(); /* cleared on every outcome */
  CHECK_OK(keel_gs_call_json(s, OP_EMPTY, json_null(), &r, 0, NULL));
  CHECK(r == NULL); /* an empty reply */
  CHECK_EQ(keel_gs_call_json(s, OP_JUNK, json_null(), &r, 0, NULL), KEEL_EINVAL);
  CHECK(r == NULL);

  CHECK_OK(keel_gs_cast_json(s, OP_CAST_SET, json_pack("{s:s}", "k", "v")));
  CHECK_OK(keel_gs_cast_json_name("json_server", OP_CAST_SET, json_pack("{s:i}", "n", 1)));
  CHECK_OK(keel_gs_call_json(s, OP_GET, NULL, &r, 0, NULL)); /* casts are handled before */
  CHECK_STR(json_string_value(json_object_get(r, "k")), "v");
  CHECK_EQ(json_integer_value(json_object_get(r, "n")), 1);
  json_decref(r);

  /* gen_server's own errors come through; the request is freed either way */
  CHECK_EQ(keel_gs_call_json_name("no_such_server", OP_ECHO, json_string("x"), &r, 0, NULL),
           KEEL_ENOPROC);
  CHECK(r == NULL);
  CHECK_EQ(keel_gs_cast_json_name("no_such_server", OP_CAST_SET, json_object()), KEEL_ENOPROC);
  CHECK_EQ(keel_gs_call_json(s, OP_ECHO, json_string("x"), NULL, 0, NULL), KEEL_EINVAL);
  CHECK_OK(keel_gs_stop(s, KEEL_REASON_NORMAL, NULL, 0));
  CHECK_EQ(keel_gs_call_json(s, OP_ECHO, json_string("x"), &r, 0, NULL), KEEL_ENOPROC);
}

KT_MAIN(KT_ENTRY(any_json_value_round_trips), KT_ENTRY(a_payload_that_is_not_json_gives_null),
        KT_ENTRY(calls_and_casts_carry_json_both_ways))
