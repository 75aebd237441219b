/* admin.c - the admin port: probes, metrics, the observer, the admin API and
 * the dashboard, apart from the API.
 *
 * Kubernetes probes and Prometheus scrapes must keep answering when the API
 * port is saturated, rate limited or draining, and must not be reachable
 * from the public side of a load balancer; so they live on their own port
 * (HEALTH_PORT, 9090 by default), on a server of their own with the API's
 * middleware minus the rate limit, CORS and (by default) the access log: a
 * probe every few seconds would bury the lines that matter. Each route is a
 * thin wrapper over the operations layer: keel/health.h produces the status
 * and the JSON, keel/metrics.h the exposition (text or OpenMetrics, chosen by
 * the Accept header), keel/observer.h the snapshot.
 *
 * The guard. Every route is registered through one wrapper that knows its
 * kind: OPEN (the probes and /metrics: Kubernetes and Prometheus expect no
 * credentials), READ (the observer, the admin reads, the event stream, the
 * dashboard: they need the token when one is set, unless read_open) or
 * ACTION (a POST that changes the node: needs the token, and without one
 * configured is refused with 403 "actions are off"; then rate limited per
 * client address). Routes a service adds through the routes hook are
 * guarded the same way: GET and HEAD as reads, anything else as actions.
 * The token travels only as "Authorization: Bearer", compared in time that
 * depends on the configured token's length only; it is never read from a
 * cookie or the URL (docs/decisions/0023).
 */
#include <stdlib.h>
#include <string.h>

#include "http/admin_internal.h"
#include "http/http_internal.h"
#include "http/server.h"
#include "keel/error.h"
#include "keel/health.h"
#include "keel/log.h"
#include "keel/metrics.h"
#include "keel/observer.h"
#include "keel/runtime.h"

#define MAX_STREAMS_DEFAULT    8
#define ACTION_LIMIT_DEFAULT   30 /* per client per minute */
#define STATS_INTERVAL_DEFAULT 1000

void keel_admin_opts_init(keel_admin_opts *o) {
  memset(o, 0, sizeof *o);
}

/* ---- the guard ------------------------------------------------------------------- */

typedef struct wrap {
  keel__admin *a;
  keel_http_handler fn;
  void *ud;
  int kind;
} wrap;

/* Equal, in a time that depends only on the length of `want` (the token):
 * every byte of it is compared whatever the given value is. */
static bool token_equal(const char *given, const char *want) {
  size_t gl = strlen(given), wl = strlen(want);
  unsigned char diff = gl != wl;
  for (size_t i = 0; i < wl; i++) {
    unsigned char g = i < gl ? (unsigned char)given[i] : 0;
    diff |= (unsigned char)(g ^ (unsigned char)want[i]);
  }
  return diff == 0;
}

static bool bearer_ok(const keel__admin *a, keel_http_req *req) {
  const char *auth = keel_http_header(req, "authorization");
  if (!a->token || !auth || strncasecmp(auth, "Bearer ", 7) != 0) return false;
  const char *t = auth + 7;
  while (*t == ' ')
    t++;
  return token_equal(t, a->token);
}

static int unauthorized(keel_http_res *res, const char *msg) {
  keel_http_set_header(res, "WWW-Authenticate", "Bearer realm=\"keel admin\"");
  return keel_http_fail(res, KEEL_HTTP_UNAUTHORIZED, msg, NULL);
}

/* 0 when the request may go on; else the answer is set (a negative value). */
static int guard(keel__admin *a, keel_http_req *req, keel_http_res *res, int kind) {
  if (kind == KEEL__ADMIN_OPEN) return 0;
  if (kind == KEEL__ADMIN_READ) {
    if (!a->token || a->read_open || bearer_ok(a, req)) return 0;
    return unauthorized(res, "this admin read needs the ADMIN_TOKEN as a bearer token");
  }
  if (!a->token)
    return keel_http_fail(res, KEEL_HTTP_FORBIDDEN,
                          "admin actions are off: ADMIN_TOKEN is not set on this node", NULL);
  if (!bearer_ok(a, req)) {
    keel_log_warn(NULL, "admin action refused", KEEL_STR("path", keel_http_path(req)),
                  KEEL_STR("client", keel_http_client_ip(req)),
                  KEEL_STR("why", "missing or wrong token"));
    return unauthorized(res, "admin actions need the ADMIN_TOKEN as a bearer token");
  }
  if (a->rl) {
    keel__rl_result r;
    keel__ratelimit_hit(a->rl, keel_http_client_ip(req), keel__http_now_ns() / 1000000, &r);
    if (!r.allowed) {
      char v[32];
      snprintf(v, sizeof v, "%lld", (long long)r.retry_after_s);
      keel_http_set_header(res, "Retry-After", v);
      return keel_http_fail(res, KEEL_HTTP_RATE_LIMITED, "too many admin actions, try again later",
                            NULL);
    }
  }
  return 0;
}

static int guarded(keel_http_req *req, keel_http_res *res, void *ud) {
  wrap *w = ud;
  int rc = guard(w->a, req, res, w->kind);
  if (rc < 0) return rc;
  return w->fn(req, res, w->ud);
}

static wrap *wrap_new(keel__admin *a, keel_http_handler fn, void *ud, int kind) {
  if (a->nwraps == a->capwraps) {
    size_t cap = a->capwraps ? a->capwraps * 2 : 32;
    void **v = realloc(a->wraps, cap * sizeof *v);
    if (!v) return NULL;
    a->wraps = v;
    a->capwraps = cap;
  }
  wrap *w = malloc(sizeof *w);
  if (!w) return NULL;
  *w = (wrap){a, fn, ud, kind};
  a->wraps[a->nwraps++] = w;
  return w;
}

static int add(keel__admin *a, keel_http_router *r, const char *method, const char *pattern,
               keel_http_handler fn, int kind) {
  wrap *w = wrap_new(a, fn, a, kind);
  if (!w) return KEEL_ENOMEM;
  return keel_http_route(r, method, pattern, guarded, w);
}

/* Routes the hook added after index `from`: guarded like keel's own. */
static int guard_hook_routes(keel__admin *a, keel_http_router *r, size_t from) {
  for (size_t i = from; i < r->n; i++) {
    keel__route *rt = r->v[i];
    bool read = strcmp(rt->method, "GET") == 0 || strcmp(rt->method, "HEAD") == 0;
    wrap *w = wrap_new(a, rt->fn, rt->ud, read ? KEEL__ADMIN_READ : KEEL__ADMIN_ACTION);
    if (!w) return KEEL_ENOMEM;
    rt->fn = guarded;
    rt->ud = w;
  }
  return 0;
}

/* ---- the state ------------------------------------------------------------------- */

void keel__admin_unref(keel__admin *a) {
  /* acq_rel: the last holder sees every write the others made before letting go */
  if (!a || atomic_fetch_sub_explicit(&a->refs, 1, memory_order_acq_rel) != 1) return;
  for (size_t i = 0; i < a->nwraps; i++)
    free(a->wraps[i]);
  free(a->wraps);
  keel__ratelimit_free(a->rl);
  pthread_mutex_destroy(&a->mu);
  free(a->token);
  free(a->service);
  free(a->version);
  free(a);
}

static void admin_server_freed(void *arg) {
  keel__admin *a = arg;
  keel__admin_recorder_stop(a);
  keel__admin_unref(a);
}

static keel__admin *admin_new(const keel_admin_opts *o) {
  keel__admin *a = calloc(1, sizeof *a);
  if (!a) return NULL;
  atomic_init(&a->refs, 1);
  pthread_mutex_init(&a->mu, NULL);
  a->token = o->token && *o->token ? strdup(o->token) : NULL;
  a->read_open = o->read_open;
  a->max_streams = o->max_streams > 0 ? o->max_streams : MAX_STREAMS_DEFAULT;
  a->stream_max_queued = o->stream_max_queued;
  a->stats_interval_ms = o->stats_interval_ms > 0 ? o->stats_interval_ms : STATS_INTERVAL_DEFAULT;
  a->service = strdup(o->service_name ? o->service_name : "keel");
  a->version = strdup(o->version ? o->version : "");
  a->metrics = o->metrics;
  int limit = o->action_rate_limit ? o->action_rate_limit : ACTION_LIMIT_DEFAULT;
  if (limit > 0) a->rl = keel__ratelimit_new(limit, 60000, 10000);
  if ((o->token && *o->token && !a->token) || !a->service || !a->version || (limit > 0 && !a->rl)) {
    keel__admin_unref(a);
    return NULL;
  }
  return a;
}

/* ---- the probes, /metrics, the observer ------------------------------------------- */

static int reply_health(keel_http_res *res, int rc, keel_health_response *hr) {
  if (rc) return keel_http_fail(res, KEEL_HTTP_INTERNAL, keel_strerror(rc), NULL);
  rc = keel_http_reply(res, hr->http_status, "application/json; charset=utf-8", hr->body,
                       strlen(hr->body));
  keel_health_response_free(hr);
  return rc;
}

static int h_live(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req, (void)ud;
  keel_health_response hr;
  return reply_health(res, keel_health_live(&hr), &hr);
}

static int h_ready(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req, (void)ud;
  keel_health_response hr;
  return reply_health(res, keel_health_ready(&hr), &hr);
}

static int h_startup(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req, (void)ud;
  keel_health_response hr;
  return reply_health(res, keel_health_startup(&hr), &hr);
}

static int h_health(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req, (void)ud;
  keel_health_response hr;
  return reply_health(res, keel_health_detailed(&hr), &hr);
}

static int h_metrics(keel_http_req *req, keel_http_res *res, void *ud) {
  keel__admin *a = ud;
  keel_metrics_format fmt;
  const char *ctype;
  keel_metrics_negotiate(keel_http_header(req, "accept"), &fmt, &ctype);
  keel_metrics_buf b = {0};
  int rc = keel_metrics_render(a->metrics, fmt, &b);
  if (!rc) rc = keel_http_reply(res, 200, ctype, b.data, b.len);
  keel_metrics_buf_free(&b);
  return rc ? keel_http_fail(res, KEEL_HTTP_INTERNAL, keel_strerror(rc), NULL) : 0;
}

static int h_observer(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req, (void)ud;
  char *json = NULL;
  size_t len = 0;
  int rc = keel_observer_snapshot_json(&json, &len);
  if (rc) return keel_http_fail(res, KEEL_HTTP_INTERNAL, keel_strerror(rc), NULL);
  rc = keel_http_reply(res, 200, "application/json; charset=utf-8", json, len);
  free(json);
  return rc;
}

static int add_routes(keel__admin *a, const keel_admin_opts *o, keel_http_router *r) {
  int rc = add(a, r, "GET", "/health/live", h_live, KEEL__ADMIN_OPEN);
  if (!rc) rc = add(a, r, "GET", "/health/ready", h_ready, KEEL__ADMIN_OPEN);
  if (!rc) rc = add(a, r, "GET", "/health/startup", h_startup, KEEL__ADMIN_OPEN);
  if (!rc) rc = add(a, r, "GET", "/health", h_health, KEEL__ADMIN_OPEN);
  if (!rc && o->metrics) rc = add(a, r, "GET", "/metrics", h_metrics, KEEL__ADMIN_OPEN);
  if (!o->no_observer) {
    if (!rc) rc = add(a, r, "GET", "/admin/observer", h_observer, KEEL__ADMIN_READ);
    if (!rc) rc = keel__admin_read_routes(a, r, add);
    if (!rc) rc = keel__admin_action_routes(a, r, add);
    if (!rc) rc = keel__admin_event_routes(a, r, add);
    if (!rc && !o->no_dashboard) rc = keel__admin_dashboard_routes(a, r, add);
  }
  if (!rc && o->routes) {
    size_t from = r->n;
    rc = o->routes(r, o->routes_ud);
    if (!rc) rc = guard_hook_routes(a, r, from);
  }
  return rc;
}

int keel_admin_start(const keel_admin_opts *o, keel_http_server **out) {
  if (out) *out = NULL;
  if (!o || !out || o->max_streams < 0 || o->stats_interval_ms < 0) return KEEL_EINVAL;
  keel__admin *a = admin_new(o);
  if (!a) return KEEL_ENOMEM;
  keel_http_router *r = keel_http_router_new();
  if (!r) {
    keel__admin_unref(a);
    return KEEL_ENOMEM;
  }
  int rc = add_routes(a, o, r);
  if (!rc && !o->no_observer) rc = keel__admin_recorder_start(a);
  if (rc) {
    keel_http_router_free(r);
    keel__admin_recorder_stop(a);
    keel__admin_unref(a);
    return rc;
  }
  keel_http_opts ho;
  keel_http_opts_init(&ho);
  ho.host = o->host ? o->host : "0.0.0.0";
  ho.port = o->port;
  ho.name = "admin";
  ho.no_trace = true;      /* a probe every few seconds is not a trace anyone wants */
  ho.no_listen_fds = true; /* passed sockets are the API's */
  ho.no_access_log = !o->access_log;
  ho.request_timeout_ms = 10000;
  ho.no_hsts = true;
  ho.fd_reserve = 16; /* probes answer while the API, which keeps 64, sheds */
  /* the dashboard's own script and style only: no inline script, no
   * framing, nothing fetched from elsewhere */
  ho.csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
           "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
  rc = keel_http_start(&ho, r, out);
  if (rc) {
    keel_http_router_free(r);
    keel__admin_recorder_stop(a);
    keel__admin_unref(a);
    return rc;
  }
  (*out)->on_free_arg = a;
  (*out)->on_free = admin_server_freed;
  if (!a->token)
    keel_log_info(NULL, "admin actions are off (ADMIN_TOKEN is not set)",
                  KEEL_INT("port", keel_http_port(*out)));
  return 0;
}
