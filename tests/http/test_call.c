/* test_call.c - a handler's call to a gen_server in one line
 * (keel_http_call): the reply on success, and on failure the envelope that
 * says what went wrong (503 no such server, 503 it died during the call, 504
 * it did not answer in time, 500 a reply that is not JSON); the statuses
 * without a kind of their own (keel_http_fail_status) and the new kinds. */
#define _GNU_SOURCE
#include <string.h>

#include "http/kt_http.h"
#include "keel/http.h"
#include "keel/json.h"

enum { OP_DOUBLE = 1, OP_HANG, OP_CRASH, OP_JUNK };

static int calc_init(void *arg, void **state) {
  (void)arg;
  *state = NULL;
  return 0;
}

static int calc_call(void *st, keel_gs_from from, keel_msg_t **req, keel_msg_t **reply) {
  (void)st, (void)from;
  json_t *in = keel_msg_to_json(*req);
  json_int_t n = json_integer_value(json_object_get(in, "n"));
  json_decref(in);
  switch (keel_msg_tag(*req)) {
  case OP_DOUBLE:
    *reply = keel_msg_from_json(0, json_pack("{s:I}", "n", 2 * n));
    return KEEL_GS_REPLY;
  case OP_HANG: return KEEL_GS_NOREPLY; /* never replies */
  case OP_CRASH: return keel_gs_stopping(KEEL_REASON_ERROR, "disk on fire");
  default: *reply = keel_msg_copy(0, "{oops", 5); return KEEL_GS_REPLY;
  }
}

static const keel_gen_server calc = {.init = calc_init, .handle_call = calc_call};

/* GET /call/:op  -> calls "calc" (or "nobody" for op=missing) */
static int h_call(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)ud;
  const char *op = keel_http_param(req, "op");
  uint32_t tag = !strcmp(op, "hang")    ? OP_HANG
                 : !strcmp(op, "crash") ? OP_CRASH
                 : !strcmp(op, "junk")  ? OP_JUNK
                                        : OP_DOUBLE;
  const char *server = !strcmp(op, "missing") ? "nobody" : "calc";
  json_t *r;
  if (keel_http_call(res, server, tag, json_pack("{s:i}", "n", 21), &r, 200) < 0) return 0;
  return keel_http_reply_json(res, 200, r);
}

static int h_status(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)ud;
  const char *s = keel_http_param(req, "s");
  if (!strcmp(s, "422")) return keel_http_fail(res, KEEL_HTTP_UNPROCESSABLE, "no such thing", NULL);
  if (!strcmp(s, "504")) return keel_http_fail(res, KEEL_HTTP_GATEWAY_TIMEOUT, "late", NULL);
  if (!strcmp(s, "507")) return keel_http_fail(res, KEEL_HTTP_INSUFFICIENT_STORAGE, "full", NULL);
  /* bad statuses and codes are refused and leave res as it was */
  CHECK_EQ(keel_http_fail_status(res, 200, "OK", "x", NULL), KEEL_EINVAL);
  CHECK_EQ(keel_http_fail_status(res, 451, "lower_case", "x", NULL), KEEL_EINVAL);
  CHECK_EQ(keel_http_fail_status(res, 451, "", "x", json_object()), KEEL_EINVAL);
  return keel_http_fail_status(res, 451, "UNAVAILABLE_FOR_LEGAL_REASONS", "gone",
                               json_pack("{s:s}", "why", "court order"));
}

static void get(int port, const char *path, kt_resp *r) {
  char req[256];
  snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path);
  CHECK_EQ(kt_exchange(port, req, r, 1), 1);
}

KT_CASE(a_handler_calls_a_gen_server_in_one_line_and_failures_become_envelopes) {
  keel_gs_opts go = {.name = "calc"};
  keel_pid_t calc_pid;
  CHECK_OK(keel_gs_start(&calc, NULL, &go, &calc_pid, NULL));
  keel_http_router *rt = keel_http_router_new();
  CHECK_OK(keel_http_route(rt, "GET", "/call/:op", h_call, NULL));
  CHECK_OK(keel_http_route(rt, "GET", "/status/:s", h_status, NULL));
  keel_http_opts o = {.host = "127.0.0.1", .no_access_log = true};
  keel_http_server *s;
  CHECK_OK(keel_http_start(&o, rt, &s));
  int port = keel_http_port(s);
  static kt_resp r;

  get(port, "/call/double", &r);
  CHECK_EQ(r.status, 200);
  CHECK_STR(r.body, "{\"n\":42}");
  get(port, "/call/missing", &r);
  kt_check_envelope(&r, 503, "SERVICE_UNAVAILABLE");
  CHECK(strstr(r.body, "nobody is not running") != NULL);
  get(port, "/call/hang", &r);
  kt_check_envelope(&r, 504, "GATEWAY_TIMEOUT");
  get(port, "/call/junk", &r);
  kt_check_envelope(&r, 500, "INTERNAL_ERROR");
  get(port, "/call/crash", &r);
  kt_check_envelope(&r, 503, "SERVICE_UNAVAILABLE");
  CHECK(strstr(r.body, "disk on fire") == NULL); /* the reason is logged, not sent */
  CHECK(!keel_is_alive(calc_pid));

  get(port, "/status/422", &r);
  kt_check_envelope(&r, 422, "UNPROCESSABLE_ENTITY");
  get(port, "/status/504", &r);
  kt_check_envelope(&r, 504, "GATEWAY_TIMEOUT");
  get(port, "/status/507", &r);
  kt_check_envelope(&r, 507, "INSUFFICIENT_STORAGE");
  get(port, "/status/451", &r);
  kt_check_envelope(&r, 451, "UNAVAILABLE_FOR_LEGAL_REASONS");
  CHECK(strstr(r.body, "court order") != NULL);
  CHECK_OK(keel_http_stop(s));
}

KT_MAIN(KT_ENTRY(a_handler_calls_a_gen_server_in_one_line_and_failures_become_envelopes))
