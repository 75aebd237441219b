/* admin.c - the operators' HTTP routes for jobs, in the style of the
 * subscriptions' (src/es/sub_admin.c): a list with filters, one job, and
 * the two actions (retry, cancel), the actions behind a bearer token when
 * one is given. The handlers call the public calls and map their codes.
 */
#include <stdlib.h>
#include <string.h>

#include "jobs/jobs_internal.h"
#include "keel/error.h"
#include "keel/http.h"

static int fail_rc(keel_http_res *res, int rc) {
  switch (rc) {
  case KEEL_EINVAL: return keel_http_fail(res, KEEL_HTTP_VALIDATION, "bad argument", NULL);
  case KEEL_ENOENT: return keel_http_fail(res, KEEL_HTTP_NOT_FOUND, "no such job", NULL);
  case KEEL_ESTATE:
    return keel_http_fail(res, KEEL_HTTP_CONFLICT, "the job is not in a state for this", NULL);
  default: return keel_http_fail(res, KEEL_HTTP_INTERNAL, keel_strerror(rc), NULL);
  }
}

/* A decimal in [lo, hi] and nothing else, or -1. */
static int64_t parse_int(const char *p, int64_t lo, int64_t hi) {
  if (!p || !*p || strlen(p) > 18) return -1;
  for (const char *q = p; *q; q++)
    if (*q < '0' || *q > '9') return -1;
  long long v = strtoll(p, NULL, 10);
  return v >= lo && v <= hi ? (int64_t)v : -1;
}

/* Constant time in the given header's length (as sub_admin.c). */
static bool authorized(const keel_jobs *j, keel_http_req *req) {
  const char *t = j->admin_token;
  if (!t || !t[0]) return true;
  const char *h = keel_http_header(req, "authorization");
  if (!h || strncmp(h, "Bearer ", 7) != 0) return false;
  h += 7;
  size_t n = strlen(h), m = strlen(t);
  unsigned char diff = n != m;
  for (size_t i = 0; i < n; i++)
    diff |= (unsigned char)h[i] ^ (unsigned char)t[i < m ? i : 0];
  return diff == 0;
}

static int h_list(keel_http_req *req, keel_http_res *res, void *ud) {
  keel_jobs *j = ud;
  keel_jobs_filter f = {.queue = keel_http_query_param(req, "queue"),
                        .worker = keel_http_query_param(req, "worker"),
                        .state = keel_http_query_param(req, "state")};
  const char *after = keel_http_query_param(req, "after");
  const char *limit = keel_http_query_param(req, "limit");
  int64_t a = after ? parse_int(after, 0, INT64_MAX / 2) : 0;
  int64_t l = limit ? parse_int(limit, 1, 1000) : 100;
  if (a < 0 || l < 0)
    return keel_http_fail(res, KEEL_HTTP_VALIDATION, "after: an id; limit: 1 to 1000", NULL);
  f.after_id = a;
  f.limit = (size_t)l;
  json_t *list = NULL;
  int rc = keel_jobs_list(j, &f, &list);
  if (rc) return fail_rc(res, rc);
  return keel_http_reply_json(res, 200, json_pack("{s:o}", "jobs", list));
}

static int h_get(keel_http_req *req, keel_http_res *res, void *ud) {
  int64_t id = parse_int(keel_http_param(req, "id"), 1, INT64_MAX / 2);
  if (id < 0) return keel_http_fail(res, KEEL_HTTP_VALIDATION, "id: a positive integer", NULL);
  json_t *job = NULL;
  int rc = keel_jobs_get(ud, id, &job);
  if (rc) return fail_rc(res, rc);
  return keel_http_reply_json(res, 200, job);
}

static int act(keel_http_req *req, keel_http_res *res, keel_jobs *j, bool cancel) {
  if (!authorized(j, req))
    return keel_http_fail(res, KEEL_HTTP_UNAUTHORIZED, "an admin token is required", NULL);
  int64_t id = parse_int(keel_http_param(req, "id"), 1, INT64_MAX / 2);
  if (id < 0) return keel_http_fail(res, KEEL_HTTP_VALIDATION, "id: a positive integer", NULL);
  int rc = cancel ? keel_jobs_cancel(j, id) : keel_jobs_retry(j, id);
  if (rc) return fail_rc(res, rc);
  return keel_http_reply_json(
      res, 200,
      json_pack("{s:I,s:s}", "id", (json_int_t)id, "action", cancel ? "cancelled" : "retried"));
}

static int h_retry(keel_http_req *req, keel_http_res *res, void *ud) {
  return act(req, res, ud, false);
}

static int h_cancel(keel_http_req *req, keel_http_res *res, void *ud) {
  return act(req, res, ud, true);
}

int keel_jobs_admin_routes(keel_jobs *j, keel_http_router *r, const char *token) {
  if (!j || !r) return KEEL_EINVAL;
  free(j->admin_token);
  j->admin_token = token && *token ? strdup(token) : NULL;
  if (token && *token && !j->admin_token) return KEEL_ENOMEM;
  int rc = keel_http_route(r, "GET", "/admin/jobs", h_list, j);
  if (!rc) rc = keel_http_route(r, "GET", "/admin/jobs/:id", h_get, j);
  if (!rc) rc = keel_http_route(r, "POST", "/admin/jobs/:id/retry", h_retry, j);
  if (!rc) rc = keel_http_route(r, "POST", "/admin/jobs/:id/cancel", h_cancel, j);
  if (!rc) rc = keel__jobs_panel_register(j); /* the dashboard's panel (panel.c) */
  return rc;
}
