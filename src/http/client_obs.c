/* client_obs.c - what the HTTP client tells operators: one log line and
 * metrics per attempt, retries, breaker states; and the destination of a
 * URL (its origin and the host label), parsed by libcurl's URL parser so the
 * client and libcurl agree on it.
 *
 * The log line, "http client request", is at debug level (info with the
 * access_log option), warn for a 5xx or no answer; it names the method, the
 * URL without its query (queries carry tokens), status or error, duration
 * and attempt, and carries the process's log context (its requestId).
 */
#include <ctype.h>
#include <curl/curl.h>
#include <stdio.h>
#include <string.h>

#include "http/client_internal.h"
#include "keel/error.h"
#include "keel/log.h"

static int family(keel_metrics *r, int kind, const char *name, const char *help,
                  const char *const *labels, size_t n, keel_metric_family **out) {
  static const double buckets[] = {.001, .0025, .005, .01, .025, .05, .1,
                                   .25,  .5,    1,    2.5, 5,    10,  30};
  int rc = kind == 0   ? keel_metrics_counter(r, name, help, labels, n, out)
           : kind == 1 ? keel_metrics_gauge(r, name, help, labels, n, out)
                       : keel_metrics_histogram(r, name, help, labels, n, buckets,
                                                sizeof buckets / sizeof *buckets, out);
  if (rc == KEEL_EEXIST) { /* another client registered it on this registry */
    *out = keel_metrics_find(r, name);
    rc = *out ? 0 : KEEL_EEXIST;
  }
  return rc;
}

int keel__hc_metrics_register(keel_http_client *c) {
  keel_metrics *r = c->o.metrics;
  if (!r) return 0;
  static const char *const l3[] = {"host", "method", "status"};
  int rc = family(r, 0, "http_client_requests_total", "HTTP client attempts by outcome.", l3, 3,
                  &c->m_total);
  if (!rc)
    rc = family(r, 2, "http_client_request_duration_seconds",
                "HTTP client attempt duration in seconds.", l3, 2, &c->m_duration);
  if (!rc)
    rc = family(r, 0, "http_client_retries_total", "HTTP client retries.", l3, 1, &c->m_retries);
  if (!rc)
    rc = family(r, 1, "http_client_breaker_state",
                "Circuit breaker per destination: 0 closed, 1 open, 2 half-open.", l3, 1,
                &c->m_breaker);
  return rc;
}

static const char *metric_method(const char *m) {
  static const char *known[] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"};
  for (size_t i = 0; i < sizeof known / sizeof *known; i++)
    if (strcmp(m, known[i]) == 0) return known[i];
  return "OTHER";
}

static const char *outcome(int status, int rc, char buf[16]) {
  if (status > 0) {
    snprintf(buf, 16, "%d", status);
    return buf;
  }
  switch (rc) {
  case KEEL_ETIMEDOUT: return "timeout";
  case KEEL_ERANGE: return "too_large";
  case KEEL_EBUSY: return "open";
  default: return "error";
  }
}

void keel__hc_observe(keel_http_client *c, const char *host, const char *method, const char *url,
                      int status, int rc, double seconds, int attempt, const char *error) {
  char buf[16];
  const char *st = outcome(status, rc, buf);
  const char *m = metric_method(method);
  if (c->m_total) {
    const char *v[3] = {host, m, st};
    keel_counter *k;
    if (keel_counter_get(c->m_total, v, &k) == 0) keel_counter_inc(k);
    keel_histogram *h;
    if (rc != KEEL_EBUSY && keel_histogram_get(c->m_duration, v, &h) == 0)
      keel_histogram_observe(h, seconds);
  }
  bool bad = status >= 500 || (status == 0 && rc < 0);
  keel_log_level lvl = bad ? KEEL_LOG_WARN : c->o.access_log ? KEEL_LOG_INFO : KEEL_LOG_DEBUG;
  if (!keel_log_enabled(lvl)) return;
  char shown[512];
  size_t n = strcspn(url, "?#");
  snprintf(shown, sizeof shown, "%.*s", (int)(n < sizeof shown ? n : sizeof shown - 1), url);
  keel_log_field f[] = {KEEL_STR("client", c->name),
                        KEEL_STR("method", method),
                        KEEL_STR("url", shown),
                        KEEL_INT("status", status),
                        KEEL_DOUBLE("duration_ms", seconds * 1000.0),
                        KEEL_INT("attempt", attempt),
                        KEEL_STR("error", rc < 0 && error ? error : ""),
                        KEEL_LOG__END};
  keel_log_write(NULL, lvl, "http client request", f);
}

void keel__hc_breaker_gauge(keel_http_client *c, const char *host, int state) {
  if (!c->m_breaker) return;
  const char *v[1] = {host};
  keel_gauge *g;
  if (keel_gauge_get(c->m_breaker, v, &g) == 0) keel_gauge_set(g, state);
}

void keel__hc_retry_count(keel_http_client *c, const char *host) {
  if (!c->m_retries) return;
  const char *v[1] = {host};
  keel_counter *k;
  if (keel_counter_get(c->m_retries, v, &k) == 0) keel_counter_inc(k);
}

int keel__hc_origin(const char *url, char *out, size_t cap, char *host, size_t hcap) {
  CURLU *u = curl_url();
  if (!u) return KEEL_ENOMEM;
  char *scheme = NULL, *h = NULL, *port = NULL;
  int rc = KEEL_EINVAL;
  if (curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_HOST, &h, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK &&
      (strcmp(scheme, "http") == 0 || strcmp(scheme, "https") == 0)) {
    for (char *p = h; *p; p++)
      *p = (char)tolower((unsigned char)*p);
    int n = snprintf(out, cap, "%s://%s:%s", scheme, h, port);
    int m = host ? snprintf(host, hcap, "%s:%s", h, port) : 0;
    if (n > 0 && (size_t)n < cap && m >= 0 && (!host || (size_t)m < hcap)) rc = 0;
  }
  curl_free(scheme);
  curl_free(h);
  curl_free(port);
  curl_url_cleanup(u);
  return rc;
}
