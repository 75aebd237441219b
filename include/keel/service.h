/* keel/service.h - the main every service writes, in one call.
 *
 * keel_service_main does what every keel service's main does, in this order:
 * loads the configuration (keel's own variables below, plus the service's
 * fields, from the environment and .env; an invalid value names the variable
 * and the reason and exits 78); starts JSON logging and writes one
 * config_loaded line; starts the runtime and an application whose root is a
 * supervisor of the service's children; starts the built-in metrics, health
 * checks, the observer and the alert manager; serves the admin port
 * (HEALTH_PORT: the /health probes, /metrics, /admin/observer) and the API (PORT,
 * the service's routes, rate limit, CORS, request timeout, from the
 * configuration); marks the service started. On SIGTERM or SIGINT: readiness
 * answers 503, the API stops accepting and finishes the requests in flight
 * (SHUTDOWN_TIMEOUT bounds it all), the drain phases run (keel_service_on_drain:
 * durable jobs stop there), the service's prep_stop runs, the tree
 * stops in reverse order, the logs are flushed, and main returns 0 (1 when
 * something was cut or failed).
 *
 *   static kv_config cfg;
 *   static const keel_config_field fields[] = {
 *       {.env = "KV_MAX_KEYS", .type = KEEL_CONFIG_INT, .offset = offsetof(kv_config, max_keys),
 *        .def = "10000", .min = 1, .max = 10000000}};
 *   static const keel_sup_child_spec children[] = {
 *       {.id = "kv", .gen_server = &kv_server, .arg = &cfg, .name = "kv"}};
 *   static const keel_service_route routes[] = {
 *       {"GET", "/kv/:key", h_get}, {"PUT", "/kv/:key", h_put}, {0}};
 *
 *   int main(void) {
 *     return keel_service_main(&(keel_service){
 *         .name = "kv", .version = "1.0.0", KEEL_SERVICE_CONFIG(fields, cfg),
 *         .tree = {.children = children, .nchildren = 1}, .routes = routes});
 *   }
 *
 * keel's variables (defaults in parentheses): SERVICE_NAME (the service's
 * name), APP_ENV (development), HOST (0.0.0.0), PORT (3000), HEALTH_PORT
 * (9090, must differ from PORT), LOG_LEVEL (info; debug in development),
 * LOG_FORMAT (json), LOG_FILE (stdout), SHUTDOWN_TIMEOUT (30s),
 * REQUEST_TIMEOUT (30s), RATE_LIMIT (100 requests per client IP per
 * RATE_WINDOW; 0 turns it off), RATE_WINDOW (1m), CORS_ORIGINS (none),
 * TRUST_PROXY (false), SLOW_REQUEST_MS (1000), MAX_BODY_BYTES (1048576).
 */
#ifndef KEEL_SERVICE_H
#define KEEL_SERVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "keel/config.h"
#include "keel/http.h"
#include "keel/supervisor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* keel's own configuration, as loaded (keel_service_settings()). */
typedef struct keel_service_config {
  char *service_name;
  int app_env; /* keel_config_env */
  char *host;
  int64_t port, health_port;
  int log_level, log_format; /* indexes into keel_log_level_names / keel_log_format_names */
  char *log_file;
  int64_t shutdown_timeout, request_timeout; /* ms */
  int64_t rate_limit, rate_window;           /* requests, ms */
  keel_config_list cors_origins;
  bool trust_proxy;
  int64_t slow_request_ms, max_body_bytes;
  /* the error alert (keel/alerts.h): ALERT_ERRORS error lines within
   * ALERT_ERROR_WINDOW (ms) fire it, then not again for ALERT_ERROR_COOLDOWN
   * (ms); ALERT_COOLDOWN_MS: a delivered alert's repeat (keel/alert_sink.h) */
  int64_t alert_errors, alert_error_window, alert_error_cooldown, alert_cooldown_ms;
  /* delivery (keel/alert_sink.h, read again by keel_alert_sinks_from_env):
   * minimum severities (index into "info", "warning", "critical"), the
   * Alertmanager re-send interval (ms); ALERT_HEALTH_INTERVAL (ms, 0: off):
   * how often health status changes are looked for (keel/alerts.h) */
  int alert_webhook_min_severity, alertmanager_min_severity;
  int64_t alertmanager_resend_ms, alert_health_interval;
  /* the admin API and dashboard (docs/dashboard.md): ADMIN_TOKEN (secret;
   * unset: actions off), ADMIN_READ_OPEN (reads need no token even when one
   * is set), ADMIN_MAX_STREAMS (event streams at once) */
  char *admin_token;
  bool admin_read_open;
  int64_t admin_max_streams;
} keel_service_config;

/* One API route; its handler's ud is the service's configuration struct
 * (config_out). A {0} entry ends the array. */
typedef struct keel_service_route {
  const char *method, *pattern;
  keel_http_handler fn;
} keel_service_route;

typedef struct keel_service {
  const char *name;    /* SERVICE_NAME's default, and the log's "service"; required */
  const char *version; /* in /health and the start line; NULL: "0.0.0" */
  /* the service's own configuration fields, loaded with keel's into
   * config_out (config_size bytes): KEEL_SERVICE_CONFIG(fields, cfg) */
  const keel_config_field *config;
  size_t nconfig;
  void *config_out;
  size_t config_size;
  const keel_config_rule *rules; /* rules over config_out's struct */
  size_t nrules;
  const char *dotenv_path; /* NULL: ".env" (a missing file is no error) */
  /* the root supervisor (keel_sup_spec; zero: one_for_one, 3 restarts in 5 s) */
  keel_sup_spec tree;
  const keel_service_route *routes; /* ended by {0}; NULL: none */
  /* Optional hooks, each given config_out. start runs once the tree is up
   * and before the ports open (register health checks, add children to
   * root); a negative return fails the start (exit 1). prep_stop runs after
   * the API has drained, before the tree stops; stop after it stopped, and
   * only when start succeeded (or there is none): a start that fails
   * cleans up after itself. */
  int (*start)(void *cfg, keel_pid_t root);
  void (*prep_stop)(void *cfg);
  void (*stop)(void *cfg);
  /* Optional: more routes on the admin port (after start, before the port
   * opens), e.g. keel_sub_admin_routes; a negative return fails the start. */
  int (*admin_routes)(void *cfg, keel_http_router *admin);
} keel_service;

#define KEEL_SERVICE_CONFIG(fields_, cfg_)                                                         \
  .config = (fields_), .nconfig = sizeof(fields_) / sizeof *(fields_), .config_out = &(cfg_),      \
  .config_size = sizeof(cfg_)

/* Runs the service as the program (see above) and returns main's exit code:
 * 0 after a clean stop, 1 when the start failed or the stop was cut, 78
 * (EX_CONFIG) for invalid configuration (it exits there). Call from main,
 * once: a second call in the same process returns 1 at once. */
int keel_service_main(const keel_service *svc);

/* Drain phases: work a module above the HTTP server must stop in order
 * when the service stops (durable jobs: keel_jobs_opts.service_drain).
 * keel_service_main's stop runs them after the API has drained and before
 * the service's prep_stop hook and the tree's stop, one at a time, the
 * last registered first, each called as fn(ud, budget_ms) in a keel process
 * with what is left of SHUTDOWN_TIMEOUT then, less a fifth of it kept for
 * the tree's stop (at least 1 ms). The stop order is then: the API drains,
 * the phases, prep_stop, the tree, the stop hook (close the database
 * there). name (copied, up to 31 bytes) is for the log. Register from
 * anywhere (outside keel_service_main a phase never runs); unregister
 * before ud goes away, not while the phases run (the stop hook runs after
 * them). Errors: KEEL_EINVAL (no name or fn), KEEL_EEXIST (fn and ud
 * already registered), KEEL_ENOMEM (16 phases already). */
typedef void (*keel_service_drain_fn)(void *ud, int64_t budget_ms);
int keel_service_on_drain(const char *name, keel_service_drain_fn fn, void *ud);
/* Errors: KEEL_ENOENT (not registered). */
int keel_service_off_drain(keel_service_drain_fn fn, void *ud);

/* keel's configuration of the running service; NULL outside
 * keel_service_main. */
const keel_service_config *keel_service_settings(void);

/* The API and admin servers of the running service (NULL before they
 * started), for tests and extra routes' bookkeeping. */
keel_http_server *keel_service_api(void);
keel_http_server *keel_service_admin(void);

/* The running service's metrics registry (what the admin port serves at
 * /metrics), for the service's own metrics and for the keel modules that
 * take one (keel_es_opts.metrics, keel_sub_opts.metrics). Set before the
 * start hook runs; freed after the stop hook returned (close what
 * registered into it there, or before). NULL outside keel_service_main. */
keel_metrics *keel_service_metrics(void);

#ifdef __cplusplus
}
#endif
#endif
