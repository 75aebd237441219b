/* sub_admin.c - the operators' HTTP routes for subscriptions
 * (keel_sub_admin_routes, keel/subscription.h): the status board as JSON,
 * a subscription's dead letters, and retry / resolve of a parked event.
 *
 * It is a thin shell over the C API: the board is read without waiting
 * (keel__sub_board_json), the dead letters straight from the table
 * (keel_sub_parked: the subscription need not run), and retry / resolve go
 * through the running subscription's process (keel_sub_retry,
 * keel_sub_resolve), which serializes them with its own hand-outs. It
 * refuses to start a subscription or to touch the table behind a running
 * one's back. A POST is an operator's action: with a token set it needs
 * "Authorization: Bearer <token>", compared in constant time.
 */
#include <stdlib.h>
#include <string.h>

#include "es/es_internal.h"
#include "keel/error.h"
#include "keel/http.h"
#include "keel/subscription.h"

enum { PARKED_DEFAULT = 100, PARKED_MAX = 1000 };

static int fail_rc(keel_http_res *res, int rc, const char *what) {
  switch (rc) {
  case KEEL_EINVAL: return keel_http_fail(res, KEEL_HTTP_VALIDATION, what, NULL);
  case KEEL_ENOENT: return keel_http_fail(res, KEEL_HTTP_NOT_FOUND, what, NULL);
  case KEEL_ENOPROC:
    return keel_http_fail(res, KEEL_HTTP_CONFLICT, "the subscription does not run in this node",
                          NULL);
  case KEEL_ETIMEDOUT:
    return keel_http_fail(res, KEEL_HTTP_GATEWAY_TIMEOUT, "the subscription did not answer", NULL);
  default: return keel_http_fail(res, KEEL_HTTP_INTERNAL, keel_strerror(rc), NULL);
  }
}

/* A decimal in [lo, hi] and nothing else, or -1. */
static int64_t parse_int(const char *p, int64_t lo, int64_t hi) {
  if (!p || !*p || strlen(p) > 19) return -1;
  for (const char *q = p; *q; q++)
    if (*q < '0' || *q > '9') return -1;
  long long v = strtoll(p, NULL, 10);
  return v >= lo && v <= hi ? (int64_t)v : -1;
}

/* Constant time in the length of the given header: a token is not
 * guessed a byte at a time from response times. */
static bool authorized(const keel_sub_admin_opts *o, keel_http_req *req) {
  if (!o->token || !o->token[0]) return true;
  const char *h = keel_http_header(req, "authorization");
  if (!h || strncmp(h, "Bearer ", 7) != 0) return false;
  h += 7;
  size_t n = strlen(h), m = strlen(o->token);
  unsigned char diff = n != m;
  for (size_t i = 0; i < n; i++)
    diff |= (unsigned char)h[i] ^ (unsigned char)o->token[i < m ? i : 0];
  return diff == 0;
}

static int h_list(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req, (void)ud;
  json_t *all = keel__sub_board_json();
  if (!all) return keel_http_fail(res, KEEL_HTTP_INTERNAL, "no memory", NULL);
  return keel_http_reply_json(res, 200, json_pack("{s:o}", "subscriptions", all));
}

static json_t *parked_json(const keel_sub_parked_event *e) {
  return json_pack("{s:I,s:s,s:s,s:s,s:s,s:s,s:i,s:I,s:I}", "position", (json_int_t)e->position,
                   "stream", e->stream, "event_id", e->event_id, "type", e->type, "status",
                   e->waiting ? "waiting" : "failed", "error", e->error, "attempts", e->attempts,
                   "first_failure_ms", (json_int_t)e->first_failure_ms, "last_failure_ms",
                   (json_int_t)e->last_failure_ms);
}

static int h_parked(keel_http_req *req, keel_http_res *res, void *ud) {
  const keel_sub_admin_opts *o = ud;
  const char *name = keel_http_param(req, "name");
  const char *lim = keel_http_query_param(req, "limit");
  int64_t max = lim ? parse_int(lim, 1, PARKED_MAX) : PARKED_DEFAULT;
  if (max < 0) return keel_http_fail(res, KEEL_HTTP_VALIDATION, "limit: 1 to 1000", NULL);
  keel_sub_parked_event *v = calloc((size_t)max, sizeof *v);
  if (!v) return keel_http_fail(res, KEEL_HTTP_INTERNAL, "no memory", NULL);
  size_t n = 0;
  int rc = keel_sub_parked(o->es, name, v, (size_t)max, &n);
  if (rc == KEEL_ENOENT) rc = 0, n = 0; /* no subscription ever ran on this store: none */
  if (rc) {
    free(v);
    return fail_rc(res, rc, "bad subscription name");
  }
  json_t *arr = json_array();
  for (size_t i = 0; arr && i < n; i++)
    if (json_array_append_new(arr, parked_json(&v[i])) != 0) {
      json_decref(arr);
      arr = NULL;
    }
  free(v);
  if (!arr) return keel_http_fail(res, KEEL_HTTP_INTERNAL, "no memory", NULL);
  return keel_http_reply_json(res, 200,
                              json_pack("{s:s,s:o}", "subscription", name, "parked", arr));
}

static int act(keel_http_req *req, keel_http_res *res, const keel_sub_admin_opts *o, bool resolve) {
  if (!authorized(o, req))
    return keel_http_fail(res, KEEL_HTTP_UNAUTHORIZED, "an admin token is required", NULL);
  const char *name = keel_http_param(req, "name");
  int64_t pos = parse_int(keel_http_param(req, "position"), 1, INT64_MAX);
  if (pos < 0)
    return keel_http_fail(res, KEEL_HTTP_VALIDATION, "position: a positive integer", NULL);
  int rc = resolve ? keel_sub_resolve(name, pos) : keel_sub_retry(name, pos);
  if (rc)
    return fail_rc(res, rc, rc == KEEL_ENOENT ? "no such failed event" : "bad subscription name");
  return keel_http_reply_json(res, 200,
                              json_pack("{s:s,s:I,s:s}", "subscription", name, "position",
                                        (json_int_t)pos, "action",
                                        resolve ? "resolved" : "retried"));
}

static int h_retry(keel_http_req *req, keel_http_res *res, void *ud) {
  return act(req, res, ud, false);
}

static int h_resolve(keel_http_req *req, keel_http_res *res, void *ud) {
  return act(req, res, ud, true);
}

int keel_sub_admin_routes(keel_http_router *r, const keel_sub_admin_opts *o) {
  if (!r || !o || !o->es) return KEEL_EINVAL;
  void *ud = (void *)o;
  int rc = keel_http_route(r, "GET", "/admin/subscriptions", h_list, ud);
  if (!rc) rc = keel_http_route(r, "GET", "/admin/subscriptions/:name/parked", h_parked, ud);
  if (!rc)
    rc = keel_http_route(r, "POST", "/admin/subscriptions/:name/parked/:position/retry", h_retry,
                         ud);
  if (!rc)
    rc = keel_http_route(r, "POST", "/admin/subscriptions/:name/parked/:position/resolve",
                         h_resolve, ud);
  if (!rc) rc = keel__sub_panel_register(); /* the dashboard's panel (sub_panel.c) */
  return rc;
}
