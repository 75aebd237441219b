/* service.c - keel_service_main: the start and stop every service repeats.
 *
 * Configuration is one load of one table: keel's fields (offsets into a
 * keel_service_config at the front of a buffer) followed by the service's
 * (their offsets moved past it), so a bad value anywhere is reported the same
 * way, the .env file is read once and config_loaded is one line. The
 * service's rules are wrapped to see its own struct. After the load the
 * service's part is copied to its config_out (the strings stay owned by the
 * buffer, freed when main returns).
 *
 * The rest is an application (keel/application.h) whose start brings up the
 * operations modules, the tree, the admin port and the API in that order,
 * whose prep_stop drains the API before the tree stops, and whose stop takes
 * everything down in reverse.
 */
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "http/http_internal.h"
#include "keel/alert_sink.h"
#include "keel/alerts.h"
#include "keel/application.h"
#include "keel/health.h"
#include "keel/log.h"
#include "keel/metrics.h"
#include "keel/observer.h"
#include "keel/service.h"
#include "keel/trace.h"
#include "keel/trace_export.h"

typedef struct rule_wrap {
  const keel_config_rule *rule;
  size_t off;
} rule_wrap;

typedef struct svc {
  const keel_service *def;
  keel_service_config kc;
  char *buf; /* keel's config, then the service's at off_user */
  size_t off_user, ntable;
  keel_config_field *table;
  keel_config_rule *rules;
  rule_wrap *wraps;
  char *origins;
  keel_metrics *metrics;
  _Atomic(keel_http_server *) api, admin;
  keel_alert_sink *sinks[2]; /* from ALERT_WEBHOOK_URL, ALERTMANAGER_URL */
  int nsinks;
  bool tracing; /* the OTEL_* variables asked for it (trace_config) */
  keel_trace_opts trace;
  keel_trace_export_opts export;
  uint64_t drain_start_ns; /* prep_stop's start: the trace flush gets what is left */
} svc;

static atomic_bool g_ran;
static _Atomic(svc *) g_svc;

/* ---- configuration ---------------------------------------------------------------- */

/* keel_alert_severity's names, in its order (info = 1: index + 1) */
static const char *const severity_names[] = {"info", "warning", "critical", NULL};

#define F(e, t, m) .env = (e), .type = (t), .offset = offsetof(keel_service_config, m)
static const keel_config_field builtin[] = {
    {F("SERVICE_NAME", KEEL_CONFIG_STRING, service_name), .min = 1, .max = 64},
    {F("HOST", KEEL_CONFIG_STRING, host), .def = "0.0.0.0", .min = 1, .max = 255},
    {F("PORT", KEEL_CONFIG_INT, port), .def = "3000", .min = 1, .max = 65535},
    {F("HEALTH_PORT", KEEL_CONFIG_INT, health_port), .def = "9090", .min = 1, .max = 65535},
    {F("LOG_LEVEL", KEEL_CONFIG_ENUM, log_level), .def = "info",
     .by_env = {[KEEL_CONFIG_DEVELOPMENT] = "debug"}, .values = keel_log_level_names},
    {F("LOG_FORMAT", KEEL_CONFIG_ENUM, log_format), .def = "json", .values = keel_log_format_names},
    {F("LOG_FILE", KEEL_CONFIG_STRING, log_file)},
    {F("SHUTDOWN_TIMEOUT", KEEL_CONFIG_DURATION, shutdown_timeout), .def = "30s", .min = 100,
     .max = 3600000},
    {F("REQUEST_TIMEOUT", KEEL_CONFIG_DURATION, request_timeout), .def = "30s", .min = 10,
     .max = 600000},
    {F("RATE_LIMIT", KEEL_CONFIG_INT, rate_limit), .def = "100", .min = 0, .max = 100000000},
    {F("RATE_WINDOW", KEEL_CONFIG_DURATION, rate_window), .def = "1m", .min = 1000,
     .max = 86400000},
    {F("CORS_ORIGINS", KEEL_CONFIG_LIST, cors_origins)},
    {F("TRUST_PROXY", KEEL_CONFIG_BOOL, trust_proxy), .def = "false"},
    {F("SLOW_REQUEST_MS", KEEL_CONFIG_INT, slow_request_ms), .def = "1000", .min = 0,
     .max = 3600000},
    {F("MAX_BODY_BYTES", KEEL_CONFIG_INT, max_body_bytes), .def = "1048576", .min = 1,
     .max = 1073741824},
    /* the reference's error alert: 5 in 5 minutes, then 15 minutes' quiet */
    {F("ALERT_ERRORS", KEEL_CONFIG_INT, alert_errors), .def = "5", .min = 1, .max = 1000000},
    {F("ALERT_ERROR_WINDOW", KEEL_CONFIG_DURATION, alert_error_window), .def = "5m", .min = 1000,
     .max = 86400000},
    {F("ALERT_ERROR_COOLDOWN", KEEL_CONFIG_DURATION, alert_error_cooldown), .def = "15m", .min = 0,
     .max = 86400000},
    /* read by keel_alert_sinks_from_env too; checked here so a bad value stops the start */
    {F("ALERT_COOLDOWN_MS", KEEL_CONFIG_INT, alert_cooldown_ms), .def = "900000", .min = 0,
     .max = 86400000},
    {F("ALERT_WEBHOOK_MIN_SEVERITY", KEEL_CONFIG_ENUM, alert_webhook_min_severity), .def = "info",
     .values = severity_names},
    {F("ALERTMANAGER_MIN_SEVERITY", KEEL_CONFIG_ENUM, alertmanager_min_severity), .def = "info",
     .values = severity_names},
    {F("ALERTMANAGER_RESEND_MS", KEEL_CONFIG_INT, alertmanager_resend_ms), .def = "60000",
     .min = 1000, .max = 3600000},
    /* health status changes as alerts: the detailed probe this often; 0: never */
    {F("ALERT_HEALTH_INTERVAL", KEEL_CONFIG_DURATION, alert_health_interval), .def = "15s",
     .min = 0, .max = 3600000},
    /* the admin API and dashboard (docs/dashboard.md) */
    {F("ADMIN_TOKEN", KEEL_CONFIG_STRING, admin_token), .flags = KEEL_CONFIG_SECRET, .max = 256},
    {F("ADMIN_READ_OPEN", KEEL_CONFIG_BOOL, admin_read_open), .def = "false"},
    {F("ADMIN_MAX_STREAMS", KEEL_CONFIG_INT, admin_max_streams), .def = "8", .min = 1, .max = 1000},
};
#undef F
#define NBUILTIN (sizeof builtin / sizeof *builtin)

static int ports_differ(const void *cfg, void *arg, char *why, size_t whylen) {
  (void)arg;
  const keel_service_config *c = cfg;
  if (c->health_port != c->port) return 0;
  snprintf(why, whylen, "must differ from PORT, got %" PRId64, c->health_port);
  return 1;
}

static int user_rule(const void *cfg, void *arg, char *why, size_t whylen) {
  const rule_wrap *w = arg;
  return w->rule->check((const char *)cfg + w->off, w->rule->arg, why, whylen);
}

/* Builds the one table and its rules; loads it (exits 78 when invalid). */
static int load_config(svc *s) {
  const keel_service *d = s->def;
  s->off_user = (sizeof(keel_service_config) + 15) & ~(size_t)15;
  s->ntable = NBUILTIN + d->nconfig;
  s->buf = calloc(1, s->off_user + d->config_size);
  s->table = calloc(s->ntable, sizeof *s->table);
  s->rules = calloc(1 + d->nrules, sizeof *s->rules);
  s->wraps = calloc(d->nrules ? d->nrules : 1, sizeof *s->wraps);
  if (!s->buf || !s->table || !s->rules || !s->wraps) return KEEL_ENOMEM;
  memcpy(s->table, builtin, sizeof builtin);
  s->table[0].def = d->name; /* SERVICE_NAME defaults to the service's name */
  for (size_t i = 0; i < d->nconfig; i++) {
    s->table[NBUILTIN + i] = d->config[i];
    s->table[NBUILTIN + i].offset += s->off_user;
  }
  s->rules[0] = (keel_config_rule){.env = "HEALTH_PORT", .check = ports_differ};
  for (size_t i = 0; i < d->nrules; i++) {
    s->wraps[i] = (rule_wrap){&d->rules[i], s->off_user};
    s->rules[1 + i] =
        (keel_config_rule){.env = d->rules[i].env, .check = user_rule, .arg = &s->wraps[i]};
  }
  keel_config_opts co = {.dotenv_path = d->dotenv_path ? d->dotenv_path : ".env",
                         .rules = s->rules,
                         .nrules = 1 + d->nrules};
  keel_config_load_or_exit(s->table, s->ntable, s->buf, &co);
  memcpy(&s->kc, s->buf, sizeof s->kc);
  s->kc.app_env = (int)co.app_env; /* read by the loader itself (APP_ENV) */
  if (d->config_size) memcpy(d->config_out, s->buf + s->off_user, d->config_size);
  return 0;
}

/* ---- the application --------------------------------------------------------------- */

static int start_api(svc *s) {
  const keel_service_config *c = &s->kc;
  keel_http_router *r = keel_http_router_new();
  int rc = r ? 0 : KEEL_ENOMEM;
  for (const keel_service_route *rt = s->def->routes; !rc && rt && rt->method; rt++)
    rc = keel_http_route(r, rt->method, rt->pattern, rt->fn, s->def->config_out);
  size_t len = 1;
  for (size_t i = 0; i < c->cors_origins.count; i++)
    len += strlen(c->cors_origins.items[i]) + 1;
  if (!rc && !(s->origins = calloc(1, len))) rc = KEEL_ENOMEM;
  for (size_t i = 0; !rc && i < c->cors_origins.count; i++) {
    if (i) strcat(s->origins, ",");
    strcat(s->origins, c->cors_origins.items[i]);
  }
  keel_http_opts ho = {.host = c->host,
                       .port = (int)c->port,
                       .metrics = s->metrics,
                       .request_timeout_ms = c->request_timeout,
                       .rate_limit = (int)c->rate_limit,
                       .rate_window_ms = c->rate_window,
                       .trust_proxy = c->trust_proxy,
                       .cors_origins = s->origins,
                       .slow_request_ms = c->slow_request_ms ? c->slow_request_ms : KEEL_INFINITY,
                       .max_body_bytes = (size_t)c->max_body_bytes};
  keel_http_server *api = NULL;
  if (!rc) rc = keel_http_start(&ho, r, &api);
  if (rc) keel_http_router_free(r);
  atomic_store(&s->api, api);
  return rc;
}

/* POST /admin/alerts/test: one test alert through every configured sink,
 * for the deployment checklist. The admin port guards it as an action
 * (admin.c): it needs ADMIN_TOKEN as a bearer token, and without ADMIN_TOKEN
 * set it is refused (it posts to the outside world). */
static int h_alert_test(keel_http_req *req, keel_http_res *res, void *ud) {
  svc *s = ud;
  keel_log_warn(NULL, "admin action", KEEL_STR("action", "alert_test"),
                KEEL_STR("client", keel_http_client_ip(req)), KEEL_INT("sinks", s->nsinks));
  json_t *sent = json_array();
  for (int i = 0; i < s->nsinks; i++)
    json_array_append_new(sent, json_integer(keel_alert_sink_test(s->sinks[i])));
  return keel_http_reply_json(res, 202,
                              json_pack("{s:i, s:o}", "sinks", s->nsinks, "queued", sent));
}

static int admin_routes(keel_http_router *r, void *ud) {
  const svc *s = ud;
  int rc = keel_http_route(r, "POST", "/admin/alerts/test", h_alert_test, (void *)s);
  if (!rc && s->def->admin_routes) rc = s->def->admin_routes(s->def->config_out, r);
  return rc;
}

/* ---- tracing (docs/tracing.md) ----------------------------------------------------------- */

/* Tracing is on when an exporter is asked for: OTEL_TRACES_EXPORTER other
 * than none, or an OTLP endpoint; OTEL_SDK_DISABLED=true turns it off.
 * Invalid OTEL_* values stop the service like any configuration error. */
static int trace_config(svc *s) {
  char err[256];
  if (keel_trace_opts_from_env(&s->trace, err, sizeof err) != 0 ||
      keel_trace_export_opts_from_env(&s->export, err, sizeof err) != 0) {
    fprintf(stderr, "Invalid configuration: %s\n", err);
    return 78;
  }
  const char *off = getenv("OTEL_SDK_DISABLED"), *ex = getenv("OTEL_TRACES_EXPORTER");
  bool asked = (ex && *ex) || s->export.endpoint || s->export.base_endpoint;
  s->tracing = asked && s->export.exporter != KEEL_TRACE_EXPORT_NONE &&
               !(off && strcasecmp(off, "true") == 0);
  if (!s->export.service_name) s->export.service_name = s->kc.service_name;
  return 0;
}

static int trace_start(svc *s) {
  if (!s->tracing) return 0;
  int rc = keel_trace_start(&s->trace);
  if (!rc) rc = keel_trace_register_metrics(s->metrics);
  if (!rc) rc = keel_trace_export_start(&s->export);
  if (!rc)
    keel_log_info(
        NULL, "tracing started",
        KEEL_STR("exporter", s->export.exporter == KEEL_TRACE_EXPORT_CONSOLE ? "console" : "otlp"));
  return rc;
}

/* The spans of the drained requests go out within what is left of the
 * drain budget (at least 100 ms). */
static void trace_stop(svc *s) {
  if (!s->tracing || !keel_trace_started()) return;
  int64_t budget = s->kc.shutdown_timeout;
  if (s->drain_start_ns) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t now = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    budget -= (int64_t)((now - s->drain_start_ns) / 1000000u);
  }
  int rc = keel_trace_export_stop(budget < 100 ? 100 : budget);
  keel_trace_stats st;
  keel_trace_stats_get(&st);
  keel_log_info(NULL, "tracing stopped", KEEL_STR("result", rc ? keel_strerror(rc) : "ok"),
                KEEL_UINT("exported", st.exported), KEEL_UINT("dropped", st.dropped),
                KEEL_UINT("failed", st.failed));
  keel_trace_stop();
}

static void ops_stop(svc *s) {
  trace_stop(s);
  while (s->nsinks > 0)
    keel_alert_sink_stop(s->sinks[--s->nsinks]);
  keel_alerts_stop();
  keel_observer_stop();
  keel_health_reset();
  keel_metrics_free(s->metrics);
  s->metrics = NULL;
}

static int app_start(keel_app_t *app, void *arg, keel_pid_t *root, void **state) {
  (void)app;
  svc *s = arg;
  const keel_service *d = s->def;
  int rc = keel_metrics_new(&s->metrics, 0);
  if (!rc) rc = keel_metrics_register_builtin(s->metrics);
  keel_health_set_service(s->kc.service_name, d->version ? d->version : "0.0.0");
  if (!rc) rc = keel_health_register_builtin(NULL);
  if (!rc) rc = keel_observer_start(NULL);
  if (!rc) {
    keel_alerts_opts ao;
    keel_alerts_opts_init(&ao);
    ao.errors_per_min = (int)s->kc.alert_errors;
    ao.error_window_ms = s->kc.alert_error_window;
    ao.error_cooldown_ms = s->kc.alert_error_cooldown ? s->kc.alert_error_cooldown : -1;
    ao.health_interval_ms = s->kc.alert_health_interval ? s->kc.alert_health_interval : -1;
    rc = keel_alerts_start(&ao);
  }
  if (!rc) keel_health_set_section("alerts", keel_alerts_health_section, NULL);
  if (!rc) rc = trace_start(s);
  if (!rc) { /* alert delivery, when the environment asks for it */
    int n = keel_alert_sinks_from_env(s->kc.service_name, s->sinks, 2);
    if (n < 0)
      rc = n;
    else
      s->nsinks = n;
  }
  const char *what = "operations";
  if (!rc) {
    what = "supervision tree";
    char name[80];
    snprintf(name, sizeof name, "%s_sup", s->kc.service_name);
    keel_sup_opts so = {.name = name, .link = true};
    keel_gs_exit why = {0};
    rc = keel_sup_start(&d->tree, &so, root, &why);
    if (rc && why.text[0])
      keel_log_error(NULL, "supervision tree failed to start", KEEL_STR("reason", why.text));
  }
  if (!rc && d->start) {
    what = "start hook";
    rc = d->start(d->config_out, *root);
  }
  bool hooked = !rc; /* stop pairs with a start that succeeded (or none) */
  if (!rc) {
    what = "admin port";
    keel_admin_opts ad = {.host = s->kc.host,
                          .port = (int)s->kc.health_port,
                          .metrics = s->metrics,
                          .token = s->kc.admin_token,
                          .read_open = s->kc.admin_read_open,
                          .max_streams = (int)s->kc.admin_max_streams,
                          .service_name = s->kc.service_name,
                          .version = d->version ? d->version : "0.0.0",
                          .routes = admin_routes,
                          .routes_ud = s};
    keel_http_server *admin = NULL;
    rc = keel_admin_start(&ad, &admin);
    atomic_store(&s->admin, admin);
  }
  if (!rc) {
    what = "API";
    rc = start_api(s);
  }
  if (rc) {
    keel_log_error(NULL, "service failed to start", KEEL_STR("stage", what),
                   KEEL_STR("error", keel_strerror(rc)));
    keel_http_server *admin = atomic_exchange(&s->admin, NULL);
    if (admin) keel_http_stop(admin);
    if (*root) keel_exit_signal(*root, KEEL_REASON_SHUTDOWN, NULL);
    if (hooked && d->stop) d->stop(d->config_out);
    ops_stop(s);
    return rc < 0 ? rc : KEEL_EINVAL;
  }
  keel_rt_stats st;
  keel_rt_stats_get(&st);
  keel_log_info(NULL, "service started", KEEL_STR("version", d->version ? d->version : "0.0.0"),
                KEEL_INT("port", keel_http_port(atomic_load(&s->api))),
                KEEL_INT("healthPort", keel_http_port(atomic_load(&s->admin))),
                KEEL_UINT("processCount", st.procs_alive));
  keel_health_set_started(true);
  *state = s;
  return 0;
}

/* Not ready any more, no new connections, finish what is in flight; then
 * the service's own preparation, before the tree stops. */
static void app_prep_stop(void *state, keel_pid_t root) {
  (void)root;
  svc *s = state;
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  s->drain_start_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
  keel_log_info(NULL, "preparing for shutdown");
  keel_health_set_draining(true);
  keel_http_server *api = atomic_load(&s->api);
  int rc = keel_http_drain(api, s->kc.shutdown_timeout);
  keel_log_info(NULL, "http drained", KEEL_STR("result", rc ? keel_strerror(rc) : "ok"),
                KEEL_UINT("inFlight", keel_http_in_flight(api)));
  /* the modules above http (jobs) stop taking work, with what is left */
  int64_t start_ms = (int64_t)(s->drain_start_ns / 1000000u);
  keel__service_drain_run(start_ms + s->kc.shutdown_timeout, s->kc.shutdown_timeout / 5);
  if (s->def->prep_stop) s->def->prep_stop(s->def->config_out);
  keel_log_info(NULL, "shutdown preparation complete");
}

static void app_stop(void *state) {
  svc *s = state;
  keel_http_stop(atomic_exchange(&s->api, NULL));
  keel_http_stop(atomic_exchange(&s->admin, NULL));
  if (s->def->stop) s->def->stop(s->def->config_out);
  ops_stop(s);
  keel_log_info(NULL, "service stopped");
}

static const keel_application service_app = {
    .start = app_start, .prep_stop = app_prep_stop, .stop = app_stop};

/* ---- main ----------------------------------------------------------------------------- */

static void svc_free(svc *s) {
  if (s->buf) keel_config_free(s->table, s->ntable, s->buf);
  free(s->buf);
  free(s->table);
  free(s->rules);
  free(s->wraps);
  free(s->origins);
  free(s);
}

int keel_service_main(const keel_service *def) {
  if (!def || !def->name || (def->nconfig && (!def->config || !def->config_out)) ||
      (def->nrules && !def->rules)) {
    fprintf(stderr, "keel_service_main: the service needs a name, and config_out for its fields\n");
    return 1;
  }
  if (atomic_exchange(&g_ran, true)) {
    fprintf(stderr, "keel_service_main: %s: a service runs once per process\n", def->name);
    return 1;
  }
  svc *s = calloc(1, sizeof *s);
  if (!s || (s->def = def, load_config(s)) != 0) {
    fprintf(stderr, "%s: out of memory\n", def->name);
    if (s) svc_free(s);
    return 1;
  }
  if (trace_config(s) != 0) {
    svc_free(s);
    return 78;
  }
  keel_log_opts lo = {.level = KEEL_LOG_TRACE + s->kc.log_level,
                      .format = KEEL_LOG_JSON + s->kc.log_format,
                      .service = s->kc.service_name,
                      .file = s->kc.log_file && *s->kc.log_file ? s->kc.log_file : NULL};
  if (keel_log_init(&lo) != 0) {
    fprintf(stderr, "%s: cannot start logging\n", def->name);
    svc_free(s);
    return 1;
  }
  keel_log_keel_events(true);
  keel_log_config(s->table, s->ntable, s->buf,
                  keel_config_env_name((keel_config_env)s->kc.app_env));
  atomic_store(&g_svc, s);
  keel_app_opts ao = {.name = s->kc.service_name,
                      .config = s,
                      .handle_signals = true,
                      .stop_timeout = s->kc.shutdown_timeout};
  int code = keel_app_main(&service_app, &ao, NULL) == KEEL_APP_EXIT_OK ? 0 : 1;
  keel_log_info(NULL, "exiting", KEEL_INT("code", code));
  atomic_store(&g_svc, NULL);
  keel_log_shutdown();
  svc_free(s);
  return code;
}

const keel_service_config *keel_service_settings(void) {
  svc *s = atomic_load(&g_svc);
  return s ? &s->kc : NULL;
}

keel_http_server *keel_service_api(void) {
  svc *s = atomic_load(&g_svc);
  return s ? atomic_load(&s->api) : NULL;
}

keel_http_server *keel_service_admin(void) {
  svc *s = atomic_load(&g_svc);
  return s ? atomic_load(&s->admin) : NULL;
}

keel_metrics *keel_service_metrics(void) {
  svc *s = atomic_load(&g_svc);
  return s ? s->metrics : NULL;
}
