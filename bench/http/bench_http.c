/* bench_http.c - the keel side of the HTTP benchmark (bench/http/run.sh),
 * built as build/bin/bench-http.
 *
 * A server answering GET /api/hello with {"hello":"world"} through the whole
 * default middleware chain of keel/http.h: request ids, an access log line
 * per request (to the file named by LOG_FILE), Prometheus metrics (the http_*
 * families plus keel's built-ins, served at GET /metrics), a per-client-IP
 * rate limit too high to trigger, security headers and CORS with an origin
 * allow-list. It is what a user would write, nothing tuned for the benchmark.
 *
 * It runs as an application (keel_app_main): the root supervisor has one
 * child, the "http" gen_server, whose init starts the server and whose
 * terminate drains it (up to 5 s) and stops it. SIGTERM or SIGINT stops the
 * application in order, so the access log is complete when the program
 * exits. The metrics registry is made in the application's start (the runtime
 * is up, so it gets one shard per scheduler) and freed in its stop, after the
 * tree has stopped.
 *
 * Environment: PORT (default 3000), HOST (default 0.0.0.0), LOG_FILE (the
 * access log and every other line; default stdout), LOG_LEVEL, LOG_FORMAT,
 * SERVICE_NAME (keel_log_init reads them), KEEL_SCHEDULERS (scheduler
 * threads; run.sh sets 1). Exit status: keel_app_main's, or 78 (EX_CONFIG)
 * for a bad PORT.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel.h"
#include "keel/http.h"

#define CORS_ORIGINS "https://app.example.com,http://localhost:3000"
#define RATE_LIMIT   1000000000 /* per client IP per minute: never reached */
#define DRAIN_MS     5000       /* in-flight requests get this long at shutdown */

typedef struct bench_cfg {
  const char *host;
  int port;
} bench_cfg;

/* What the application keeps between start and stop. */
typedef struct bench_state {
  const bench_cfg *cfg;
  keel_metrics *metrics;
} bench_state;

/* ---- handlers ---------------------------------------------------------------- */

static int hello(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req;
  (void)ud;
  return keel_http_reply_text(res, 200, "application/json", "{\"hello\":\"world\"}");
}

/* The registry in the format the Accept header asks for. */
static int metrics(keel_http_req *req, keel_http_res *res, void *ud) {
  keel_metrics_format fmt;
  const char *type;
  int rc = keel_metrics_negotiate(keel_http_header(req, "Accept"), &fmt, &type);
  if (rc) return rc;
  keel_metrics_buf b = {0};
  rc = keel_metrics_render(ud, fmt, &b);
  if (!rc) rc = keel_http_reply(res, 200, type, b.data, b.len);
  keel_metrics_buf_free(&b);
  return rc;
}

/* ---- the "http" gen_server: owns the server -------------------------------- */

static int http_init(void *arg, void **state) {
  const bench_state *st = arg;
  keel_http_router *r = keel_http_router_new();
  if (!r) return KEEL_ENOMEM;
  int rc = keel_http_route(r, "GET", "/api/hello", hello, NULL);
  if (!rc) rc = keel_http_route(r, "GET", "/metrics", metrics, st->metrics);
  if (rc) {
    keel_http_router_free(r);
    return rc;
  }

  /* tracing as keel_service_main turns it on: an OTLP endpoint or
   * OTEL_TRACES_EXPORTER in the environment (the tracing-on rounds of run.sh) */
  keel_trace_opts to;
  keel_trace_export_opts eo;
  if (keel_trace_opts_from_env(&to, NULL, 0) == 0 &&
      keel_trace_export_opts_from_env(&eo, NULL, 0) == 0 &&
      (eo.base_endpoint || eo.endpoint || getenv("OTEL_TRACES_EXPORTER"))) {
    rc = keel_trace_start(&to);
    if (!rc) rc = keel_trace_export_start(&eo);
    if (rc) return rc;
    keel_log_info(NULL, "tracing on");
  }

  keel_http_opts o;
  keel_http_opts_init(&o);
  o.name = "api";
  o.host = st->cfg->host;
  o.port = st->cfg->port;
  o.metrics = st->metrics;
  o.rate_limit = RATE_LIMIT;
  o.cors_origins = CORS_ORIGINS;
  keel_http_server *srv;
  rc = keel_http_start(&o, r, &srv); /* the server takes the router (keel/http.h) */
  if (rc) return rc;
  keel_log_info(NULL, "listening", KEEL_STR("host", o.host), KEEL_INT("port", keel_http_port(srv)));
  *state = srv;
  return 0;
}

static void http_terminate(keel_reason reason, void *state) {
  (void)reason;
  keel_http_server *srv = state;
  if (keel_http_drain(srv, DRAIN_MS) == KEEL_ETIMEDOUT)
    keel_log_warn(NULL, "drain timed out", KEEL_INT("timeout_ms", DRAIN_MS));
  keel_http_stop(srv);
  if (keel_trace_started()) {
    keel_trace_export_stop(DRAIN_MS);
    /* what trace_run.sh reports beside the req/s: a span dropped is one not paid for */
    keel_trace_stats ts;
    keel_trace_stats_get(&ts);
    keel_log_info(NULL, "tracing stopped", KEEL_UINT("exported", ts.exported),
                  KEEL_UINT("dropped", ts.dropped), KEEL_UINT("failed", ts.failed));
    keel_trace_stop();
  }
}

static const keel_gen_server http_server = {
    .init = http_init,
    .terminate = http_terminate,
};

/* ---- the application ----------------------------------------------------------- */

static int app_start(keel_app_t *app, void *config, keel_pid_t *root, void **state) {
  (void)app;
  bench_state *st = calloc(1, sizeof *st);
  if (!st) return KEEL_ENOMEM;
  st->cfg = config;
  int rc = keel_metrics_new(&st->metrics, 0);
  if (!rc) rc = keel_metrics_register_builtin(st->metrics);
  if (rc) goto fail;

  keel_sup_child_spec spec = {
      .id = "http",
      .gen_server = &http_server,
      .arg = st,
      .name = "http",
      .restart = KEEL_SUP_PERMANENT,
      .shutdown = DRAIN_MS + 2000, /* terminate drains for up to DRAIN_MS */
  };
  keel_sup_spec sup = {.strategy = KEEL_SUP_ONE_FOR_ONE, .children = &spec, .nchildren = 1};
  keel_sup_opts so = {.name = "bench_http_sup", .link = true};
  keel_gs_exit why;
  rc = keel_sup_start(&sup, &so, root, &why);
  if (rc) {
    keel_log_error(NULL, "start failed", KEEL_STR("error", keel_strerror(rc)),
                   KEEL_STR("why", rc == KEEL_EDOWN ? why.text : ""));
    goto fail;
  }
  *state = st;
  return 0;

fail:
  keel_metrics_free(st->metrics);
  free(st);
  return rc;
}

static void app_stop(void *state) {
  bench_state *st = state;
  keel_metrics_free(st->metrics);
  free(st);
}

static const keel_application bench_app = {.start = app_start, .stop = app_stop};

/* ---- main --------------------------------------------------------------------- */

/* PORT as 1..65535, or -1 (and a line on stderr). */
static int env_port(void) {
  const char *s = getenv("PORT");
  if (!s || !*s) return 3000;
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || *end || v < 1 || v > 65535) {
    fprintf(stderr, "Invalid configuration: PORT: must be between 1 and 65535, got %s\n", s);
    return -1;
  }
  return (int)v;
}

int main(void) {
  bench_cfg cfg = {.host = getenv("HOST"), .port = env_port()};
  if (cfg.port < 0) return KEEL_CONFIG_EXIT;
  if (!cfg.host || !*cfg.host) cfg.host = "0.0.0.0";

  keel_log_opts lo;
  keel_log_opts_init(&lo); /* LOG_FILE, LOG_LEVEL, LOG_FORMAT, SERVICE_NAME */
  if (!getenv("SERVICE_NAME")) lo.service = "bench-http";
  int rc = keel_log_init(&lo);
  if (rc) {
    fprintf(stderr, "bench-http: keel_log_init: %s\n", keel_strerror(rc));
    return KEEL_CONFIG_EXIT;
  }
  keel_log_keel_events(true);

  keel_app_opts ao;
  keel_app_opts_init(&ao);
  ao.name = "bench-http";
  ao.config = &cfg;
  ao.handle_signals = true;
  ao.stop_timeout = DRAIN_MS + 5000;
  int code = keel_app_main(&bench_app, &ao, NULL); /* KEEL_SCHEDULERS from the env */

  keel_log_keel_events(false);
  keel_log_shutdown();
  return code;
}
