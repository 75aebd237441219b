/* admin.c - the admin port: probes, metrics and the observer, apart from
 * the API.
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
 */
#include <stdlib.h>
#include <string.h>

#include "http/http_internal.h"
#include "keel/error.h"
#include "keel/health.h"
#include "keel/metrics.h"
#include "keel/observer.h"

void keel_admin_opts_init(keel_admin_opts *o) {
  memset(o, 0, sizeof *o);
}

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
  keel_metrics *m = ud;
  keel_metrics_format fmt;
  const char *ctype;
  keel_metrics_negotiate(keel_http_header(req, "accept"), &fmt, &ctype);
  keel_metrics_buf b = {0};
  int rc = keel_metrics_render(m, fmt, &b);
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

int keel_admin_start(const keel_admin_opts *o, keel_http_server **out) {
  if (out) *out = NULL;
  if (!o || !out) return KEEL_EINVAL;
  keel_http_router *r = keel_http_router_new();
  if (!r) return KEEL_ENOMEM;
  int rc = keel_http_route(r, "GET", "/health/live", h_live, NULL);
  if (!rc) rc = keel_http_route(r, "GET", "/health/ready", h_ready, NULL);
  if (!rc) rc = keel_http_route(r, "GET", "/health/startup", h_startup, NULL);
  if (!rc) rc = keel_http_route(r, "GET", "/health", h_health, NULL);
  if (!rc && o->metrics) rc = keel_http_route(r, "GET", "/metrics", h_metrics, o->metrics);
  if (!rc && !o->no_observer) rc = keel_http_route(r, "GET", "/admin/observer", h_observer, NULL);
  if (!rc && o->routes) rc = o->routes(r, o->routes_ud);
  if (rc) {
    keel_http_router_free(r);
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
  rc = keel_http_start(&ho, r, out);
  if (rc) keel_http_router_free(r);
  return rc;
}
