/* test_sub_admin.c - the operators' routes for subscriptions over loopback
 * HTTP: the status board, a subscription's dead letters, retry and resolve
 * of a parked event (with the token required for the POSTs), and the
 * answers when the event or the subscription is not there. Both backends. */
#define _GNU_SOURCE /* memmem, in kt_http.h */
#include <stdatomic.h>
#include <stdlib.h>

#include "es/kt_es.h"
#include "http/kt_http.h"
#include "keel/http.h"
#include "keel/subscription.h"

static atomic_int poison_fixed;
static atomic_int handled_n;

static int handle(const keel_es_event *ev, void *ud) {
  (void)ud;
  if (!atomic_load(&poison_fixed) &&
      json_is_true(json_object_get(keel_es_event_payload(ev), "poison")))
    return KEEL_EIO;
  atomic_fetch_add(&handled_n, 1);
  return 0;
}

static void append_one(keel_es *es, const char *stream, bool poison) {
  keel_es_event_in in = {.type = poison ? "Poison" : "Fine",
                         .payload = json_pack("{s:b}", "poison", poison)};
  CHECK_OK(keel_es_append(es, stream, KEEL_ES_ANY, &in, 1, NULL));
  json_decref(in.payload);
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

static json_t *board_entry(int port, const char *name) {
  json_t *b = NULL;
  CHECK_EQ(kt_request_json(port, "GET", "/admin/subscriptions", NULL, &b), 200);
  json_t *arr = json_object_get(b, "subscriptions");
  CHECK(json_is_array(arr));
  json_t *found = NULL;
  size_t i;
  json_t *e;
  json_array_foreach(arr, i, e) {
    if (strcmp(json_string_value(json_object_get(e, "name")), name) == 0) found = json_incref(e);
  }
  json_decref(b);
  return found;
}

/* The dashboard panel's row of subscription `name` (a new reference), or NULL. */
static json_t *panel_row(int port, const char *name) {
  json_t *b = NULL, *found = NULL, *e;
  size_t i;
  CHECK_EQ(kt_request_json(port, "GET", "/admin/panels/subscriptions", NULL, &b), 200);
  CHECK_STR(json_string_value(json_object_get(b, "title")), "Subscriptions");
  json_array_foreach(json_object_get(b, "data"), i, e) {
    if (strcmp(json_string_value(json_object_get(e, "subscription")), name) == 0)
      found = json_incref(e);
  }
  json_decref(b);
  return found;
}

KT_CASE(operators_list_retry_and_resolve_parked_events_over_http) {
  kt_store st;
  keel_es *es = kt_store_open(&st, NULL);
  atomic_store(&poison_fixed, 0);
  atomic_store(&handled_n, 0);
  append_one(es, "a-1", false); /* 1 */
  append_one(es, "a-1", true);  /* 2: fails, parked */
  append_one(es, "a-1", false); /* 3: waits behind 2 */
  append_one(es, "b-1", false); /* 4: another stream goes on */
  append_one(es, "c-1", true);  /* 5: fails, parked, to be resolved */

  keel_sub_admin_opts ao = {.es = es, .token = "s3cret"};
  keel_http_router *router = keel_http_router_new();
  CHECK(router != NULL);
  CHECK_EQ(keel_sub_admin_routes(NULL, &ao), KEEL_EINVAL);
  CHECK_OK(keel_sub_admin_routes(router, &ao));
  keel_http_opts ho;
  keel_http_opts_init(&ho);
  ho.host = "127.0.0.1";
  ho.no_listen_fds = true;
  ho.no_access_log = true;
  keel_http_server *srv = NULL;
  CHECK_OK(keel_http_start(&ho, router, &srv));
  int port = keel_http_port(srv);

  /* no subscription ever ran on this store: empty, not an error */
  json_t *b = NULL;
  CHECK_EQ(kt_request_json(port, "GET", "/admin/subscriptions/adm/parked", NULL, &b), 200);
  CHECK_EQ(json_array_size(json_object_get(b, "parked")), 0);
  json_decref(b);

  keel_sub_opts o = {.name = "adm", .es = es, .handle = handle, .max_attempts = 1, .poll_ms = 20};
  CHECK_OK(keel_sub_start(&o, false, NULL));
  WAIT_FOR(status_of("adm").checkpoint == 5 && status_of("adm").state == KEEL_SUB_LIVE);

  /* the board */
  json_t *e = board_entry(port, "adm");
  CHECK(e != NULL);
  CHECK_STR(json_string_value(json_object_get(e, "state")), "live");
  CHECK_EQ(json_integer_value(json_object_get(e, "checkpoint")), 5);
  CHECK_EQ(json_integer_value(json_object_get(e, "parked")), 3);
  CHECK_STR(json_string_value(json_object_get(e, "breaker")), "closed");
  json_decref(e);

  /* the dashboard's panel, registered with the routes: the same figures;
   * events/s unknown at the first reading */
  keel_http_server *adm = kt_admin_port();
  int ap = keel_http_port(adm);
  json_t *pr = panel_row(ap, "adm");
  CHECK(pr != NULL);
  CHECK_STR(json_string_value(json_object_get(pr, "state")), "live");
  CHECK_EQ(json_integer_value(json_object_get(pr, "lag")), 0);
  CHECK_EQ(json_integer_value(json_object_get(pr, "parked")), 3);
  CHECK_STR(json_string_value(json_object_get(pr, "breaker")), "closed");
  CHECK(json_is_null(json_object_get(pr, "events_per_sec")));
  json_decref(pr);

  /* the dead letters */
  CHECK_EQ(kt_request_json(port, "GET", "/admin/subscriptions/adm/parked", NULL, &b), 200);
  json_t *pk = json_object_get(b, "parked");
  CHECK_EQ(json_array_size(pk), 3);
  json_t *p0 = json_array_get(pk, 0);
  CHECK_EQ(json_integer_value(json_object_get(p0, "position")), 2);
  CHECK_STR(json_string_value(json_object_get(p0, "status")), "failed");
  CHECK_STR(json_string_value(json_object_get(p0, "stream")), "a-1");
  CHECK_EQ(json_integer_value(json_object_get(p0, "attempts")), 1);
  CHECK(strlen(json_string_value(json_object_get(p0, "error"))) > 0);
  CHECK_STR(json_string_value(json_object_get(json_array_get(pk, 1), "status")), "waiting");
  CHECK_EQ(json_integer_value(json_object_get(json_array_get(pk, 2), "position")), 5);
  json_decref(b);
  CHECK_EQ(kt_request_json(port, "GET", "/admin/subscriptions/adm/parked?limit=1", NULL, &b), 200);
  CHECK_EQ(json_array_size(json_object_get(b, "parked")), 1);
  json_decref(b);
  CHECK_EQ(kt_request_json(port, "GET", "/admin/subscriptions/adm/parked?limit=0", NULL, NULL),
           400);
  CHECK_EQ(kt_request_json(port, "GET", "/admin/subscriptions/bad%20name/parked", NULL, NULL), 400);

  /* the POSTs want the token */
  CHECK_EQ(kt_request_json(port, "POST", "/admin/subscriptions/adm/parked/2/retry", NULL, NULL),
           401);
  CHECK_EQ(kt_request_json(port, "POST", "/admin/subscriptions/adm/parked/2/retry", "Bearer s3cres",
                           NULL),
           401);
  CHECK_EQ(kt_request_json(port, "POST", "/admin/subscriptions/adm/parked/2/retry",
                           "Bearer s3cret1", NULL),
           401);
  const char *tok = "Bearer s3cret";
  CHECK_EQ(kt_request_json(port, "POST", "/admin/subscriptions/adm/parked/x2/retry", tok, NULL),
           400);
  CHECK_EQ(kt_request_json(port, "POST", "/admin/subscriptions/adm/parked/3/retry", tok, NULL),
           404); /* waiting, not failed */
  CHECK_EQ(kt_request_json(port, "GET", "/admin/subscriptions/adm/parked/2/retry", tok, NULL), 405);
  CHECK_EQ(atomic_load(&handled_n), 2); /* 1 and 4, nothing retried yet */

  /* fixed: retry hands 2 then 3 to the handler */
  atomic_store(&poison_fixed, 1);
  CHECK_EQ(kt_request_json(port, "POST", "/admin/subscriptions/adm/parked/2/retry", tok, &b), 200);
  CHECK_STR(json_string_value(json_object_get(b, "action")), "retried");
  json_decref(b);
  WAIT_FOR(status_of("adm").parked == 1);
  CHECK_EQ(atomic_load(&handled_n), 4);
  /* 5 given up: resolved, never handled */
  CHECK_EQ(kt_request_json(port, "POST", "/admin/subscriptions/adm/parked/5/resolve", tok, &b),
           200);
  CHECK_STR(json_string_value(json_object_get(b, "action")), "resolved");
  json_decref(b);
  WAIT_FOR(status_of("adm").parked == 0);
  /* two more handled since the panel's first reading: a rate above 0 once
   * a second has passed (the panel's shortest interval) */
  keel_sleep(1000);
  pr = panel_row(ap, "adm");
  CHECK(pr != NULL);
  CHECK(json_is_number(json_object_get(pr, "events_per_sec")));
  CHECK(json_number_value(json_object_get(pr, "events_per_sec")) > 0);
  CHECK_EQ(json_integer_value(json_object_get(pr, "parked")), 0);
  json_decref(pr);
  keel_http_stop(adm);
  CHECK_EQ(kt_request_json(port, "POST", "/admin/subscriptions/adm/parked/5/resolve", tok, NULL),
           404);
  CHECK_EQ(atomic_load(&handled_n), 4);
  CHECK_EQ(kt_request_json(port, "GET", "/admin/subscriptions/adm/parked", NULL, &b), 200);
  CHECK_EQ(json_array_size(json_object_get(b, "parked")), 0);
  json_decref(b);

  /* stopped: off the board, and its POSTs are a conflict */
  CHECK_OK(keel_sub_stop("adm", 0));
  e = board_entry(port, "adm");
  CHECK(e == NULL);
  CHECK_EQ(kt_request_json(port, "POST", "/admin/subscriptions/adm/parked/2/retry", tok, NULL),
           409);
  keel_http_stop(srv);
  kt_store_close(&st);
}

KT_MAIN(KT_ENTRY(operators_list_retry_and_resolve_parked_events_over_http))
