/* microservice - the reference service: an HTTP API in front of a router
 * gen_server and a pool of worker gen_servers under a supervisor, with the
 * operations keel gives every service (configuration, JSON logs, metrics,
 * health probes, the observer, alerts) and a shutdown that drops nothing.
 *
 *   POST /api/process  {"anything": ..., "delayMs": 0..10000}
 *       -> the router hands it round-robin to a worker, which answers the
 *          caller directly: {"processed":true,"workerId":"worker-2","requestId":"..."}
 *   GET  /api/stats    -> the router's totals
 *   admin port (HEALTH_PORT): /health/live, /health/ready, /health/startup,
 *       /health, /metrics, /admin/observer
 *
 * Shutdown (SIGTERM or SIGINT): readiness answers 503 at once; the API
 * listener closes and requests in flight finish (prep_stop drains the HTTP
 * server, then the router and the workers: work that still arrives gets 503
 * "Service is shutting down"); the tree stops; logs are flushed; exit 0. Past
 * SHUTDOWN_TIMEOUT what is left is cut and the exit code is 1. A second
 * signal ends the program at once.
 *
 * Only public headers are used. Build: make; run: make run (or
 * build/bin/microservice); configuration: .env.example.
 */
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel.h"

#define VERSION "0.1.0"

/* ---- configuration ------------------------------------------------------------ */

typedef struct config {
  char *service_name;
  int app_env;
  int64_t port;
  char *host;
  int64_t health_port;
  int log_level;
  int log_format;
  char *log_file;
  int64_t worker_count;
  int64_t shutdown_timeout;
  int64_t request_timeout;
  int64_t rate_limit;
  keel_config_list cors_origins;
  bool trust_proxy;
  int64_t slow_request_ms;
  int64_t max_body_bytes;
} config;

static const char *const envs[] = {"development", "staging", "production", NULL};

#define F(e, t, m) .env = (e), .type = (t), .offset = offsetof(config, m)
static const keel_config_field fields[] = {
    {F("SERVICE_NAME", KEEL_CONFIG_STRING, service_name), .def = "keel-microservice", .min = 1,
     .max = 64},
    {F("APP_ENV", KEEL_CONFIG_ENUM, app_env), .def = "development", .values = envs},
    {F("PORT", KEEL_CONFIG_INT, port), .def = "3000", .min = 1, .max = 65535},
    {F("HOST", KEEL_CONFIG_STRING, host), .def = "0.0.0.0", .min = 1, .max = 255},
    {F("HEALTH_PORT", KEEL_CONFIG_INT, health_port), .def = "9090", .min = 1, .max = 65535},
    {F("LOG_LEVEL", KEEL_CONFIG_ENUM, log_level), .def = "info",
     .by_env = {[KEEL_CONFIG_DEVELOPMENT] = "debug"}, .values = keel_log_level_names},
    {F("LOG_FORMAT", KEEL_CONFIG_ENUM, log_format), .def = "json", .values = keel_log_format_names},
    {F("LOG_FILE", KEEL_CONFIG_STRING, log_file)},
    {F("WORKER_COUNT", KEEL_CONFIG_INT, worker_count), .def = "4", .min = 1, .max = 100},
    {F("SHUTDOWN_TIMEOUT", KEEL_CONFIG_DURATION, shutdown_timeout), .def = "30s", .min = 100,
     .max = 3600000},
    {F("REQUEST_TIMEOUT", KEEL_CONFIG_DURATION, request_timeout), .def = "30s", .min = 10,
     .max = 600000},
    {F("RATE_LIMIT", KEEL_CONFIG_INT, rate_limit), .def = "100", .min = 0, .max = 100000000},
    {F("CORS_ORIGINS", KEEL_CONFIG_LIST, cors_origins)},
    {F("TRUST_PROXY", KEEL_CONFIG_BOOL, trust_proxy), .def = "false"},
    {F("SLOW_REQUEST_MS", KEEL_CONFIG_INT, slow_request_ms), .def = "1000", .min = 0,
     .max = 3600000},
    {F("MAX_BODY_BYTES", KEEL_CONFIG_INT, max_body_bytes), .def = "1048576", .min = 1,
     .max = 1073741824},
};
#define NFIELDS (sizeof fields / sizeof *fields)

static int ports_differ(const void *cfg, void *arg, char *why, size_t whylen) {
  (void)arg;
  const config *c = cfg;
  if (c->health_port != c->port) return 0;
  snprintf(why, whylen, "must differ from PORT, got %" PRId64, c->health_port);
  return 1;
}

/* ---- the worker ---------------------------------------------------------------- */

enum { W_WORK = 10, W_DRAIN, W_STATS, R_ROUTE = 20, R_STATS, R_DRAIN, REPLY_OK = 30, REPLY_DRAINING };

typedef struct work {
  keel_gs_from from;
  int64_t delay_ms;
} work;

typedef struct worker {
  char id[32];
  uint64_t requests;
  bool draining;
} worker;

static int worker_init(void *arg, void **state) {
  worker *w = calloc(1, sizeof *w);
  /* freed when the process ends, however it ends: a worker killed at the
   * end of SHUTDOWN_TIMEOUT runs no terminate */
  if (!w || keel_on_exit(free, w) != 0) {
    free(w);
    return KEEL_ENOMEM;
  }
  snprintf(w->id, sizeof w->id, "worker-%d", (int)(intptr_t)arg);
  *state = w;
  keel_log_debug(NULL, "worker initialized", KEEL_STR("workerId", w->id));
  return 0;
}

static keel_msg_t *text_msg(uint32_t tag, const char *s) {
  return keel_msg_copy(tag, s, strlen(s) + 1);
}

/* A unit of work arrives by cast with the caller's address: the worker
 * answers the HTTP handler directly, not through the router. */
static int worker_cast(void *state, keel_msg_t **m) {
  worker *w = state;
  if (keel_msg_tag(*m) != W_WORK || keel_msg_size(*m) != sizeof(work)) return KEEL_GS_OK;
  work wk;
  memcpy(&wk, keel_msg_data(*m), sizeof wk);
  if (w->draining) {
    keel_gs_reply(wk.from, text_msg(REPLY_DRAINING, "draining"));
    return KEEL_GS_OK;
  }
  w->requests++;
  keel_log_info(NULL, "processing request", KEEL_STR("workerId", w->id),
                KEEL_INT("delayMs", wk.delay_ms));
  if (wk.delay_ms > 0) keel_sleep(wk.delay_ms); /* the simulated work */
  char out[64];
  snprintf(out, sizeof out, "%s", w->id);
  keel_gs_reply(wk.from, text_msg(REPLY_OK, out));
  return KEEL_GS_OK;
}

static int worker_call(void *state, keel_gs_from from, keel_msg_t **req, keel_msg_t **reply) {
  (void)from;
  worker *w = state;
  if (keel_msg_tag(*req) == W_DRAIN) {
    /* casts are handled in order: everything queued before this is done */
    w->draining = true;
    keel_log_info(NULL, "worker drained", KEEL_STR("workerId", w->id),
                  KEEL_UINT("totalRequests", w->requests));
  }
  *reply = keel_msg_copy(0, &w->requests, sizeof w->requests);
  return KEEL_GS_REPLY;
}

static void worker_terminate(keel_reason reason, void *state) {
  worker *w = state;
  keel_log_info(NULL, "worker terminated", KEEL_STR("workerId", w->id),
                KEEL_UINT("totalRequests", w->requests),
                KEEL_STR("reason", keel_reason_name(reason.kind)));
}

static const keel_gen_server worker_beh = {
    .init = worker_init,
    .handle_call = worker_call,
    .handle_cast = worker_cast,
    .terminate = worker_terminate,
};

/* ---- the router ----------------------------------------------------------------- */

typedef struct router {
  int nworkers;
  int next;
  uint64_t total;
  bool draining;
} router;

static int router_init(void *arg, void **state) {
  router *r = calloc(1, sizeof *r);
  if (!r || keel_on_exit(free, r) != 0) { /* as the worker's */
    free(r);
    return KEEL_ENOMEM;
  }
  r->nworkers = (int)(intptr_t)arg;
  *state = r;
  return 0;
}

static int router_call(void *state, keel_gs_from from, keel_msg_t **req, keel_msg_t **reply) {
  router *r = state;
  switch (keel_msg_tag(*req)) {
  case R_ROUTE: {
    if (r->draining) {
      *reply = text_msg(REPLY_DRAINING, "draining");
      return KEEL_GS_REPLY;
    }
    int64_t delay = 0;
    if (keel_msg_size(*req) == sizeof delay) memcpy(&delay, keel_msg_data(*req), sizeof delay);
    /* round robin over the workers that are alive now (a worker being
     * restarted by the supervisor is skipped) */
    for (int tries = 0; tries < r->nworkers; tries++) {
      char name[32];
      snprintf(name, sizeof name, "worker-%d", r->next + 1);
      r->next = (r->next + 1) % r->nworkers;
      keel_pid_t w = keel_whereis(name);
      if (!w) continue;
      work wk = {.from = from, .delay_ms = delay};
      if (keel_gs_cast(w, keel_msg_copy(W_WORK, &wk, sizeof wk)) == 0) {
        r->total++;
        return KEEL_GS_NOREPLY; /* the worker answers */
      }
    }
    *reply = text_msg(REPLY_DRAINING, "no worker available");
    return KEEL_GS_REPLY;
  }
  case R_STATS: {
    char buf[128];
    snprintf(buf, sizeof buf, "{\"totalRequests\":%" PRIu64 ",\"workerCount\":%d,\"draining\":%s}",
             r->total, r->nworkers, r->draining ? "true" : "false");
    *reply = text_msg(REPLY_OK, buf);
    return KEEL_GS_REPLY;
  }
  case R_DRAIN: {
    keel_log_info(NULL, "router draining all workers", KEEL_INT("workers", r->nworkers));
    r->draining = true;
    for (int i = 0; i < r->nworkers; i++) {
      char name[32];
      snprintf(name, sizeof name, "worker-%d", i + 1);
      keel_msg_t *rep = NULL;
      if (keel_gs_call_name(name, keel_msg_new(W_DRAIN, 0), &rep, 10000, NULL) == 0)
        keel_msg_free(rep);
    }
    keel_log_info(NULL, "all workers drained", KEEL_UINT("totalRequests", r->total));
    *reply = NULL;
    return KEEL_GS_REPLY;
  }
  default: *reply = NULL; return KEEL_GS_REPLY;
  }
}

static const keel_gen_server router_beh = {
    .init = router_init,
    .handle_call = router_call,
};

/* ---- HTTP handlers --------------------------------------------------------------- */

typedef struct service {
  const config *cfg;
  keel_metrics *metrics;
  keel_http_server *api, *admin;
  keel_sup_child_spec *specs;
  char (*worker_names)[32];
} service;

static int shutting_down(keel_http_res *res) {
  return keel_http_fail(res, KEEL_HTTP_UNAVAILABLE, "Service is shutting down", NULL);
}

static int h_process(keel_http_req *req, keel_http_res *res, void *ud) {
  const service *svc = ud;
  int err;
  json_t *body = keel_http_json(req, &err);
  if (!body) return keel_http_fail(res, KEEL_HTTP_BAD_REQUEST, "Body must be valid JSON", NULL);
  if (!json_is_object(body))
    return keel_http_fail(res, KEEL_HTTP_VALIDATION, "Body must be a JSON object", NULL);
  int64_t delay = 0;
  json_t *d = json_object_get(body, "delayMs");
  if (d) {
    if (!json_is_integer(d) || json_integer_value(d) < 0 || json_integer_value(d) > 10000)
      return keel_http_fail(res, KEEL_HTTP_VALIDATION, "delayMs must be an integer 0..10000",
                            json_pack("[{s:s, s:s}]", "field", "delayMs", "reason",
                                      "must be an integer between 0 and 10000"));
    delay = json_integer_value(d);
  }
  keel_msg_t *reply = NULL;
  int rc = keel_gs_call_name("router", keel_msg_copy(R_ROUTE, &delay, sizeof delay), &reply,
                             svc->cfg->request_timeout + 1000, NULL);
  if (rc == KEEL_ENOPROC || rc == KEEL_EDOWN) return shutting_down(res);
  if (rc) return keel_http_fail(res, KEEL_HTTP_INTERNAL, keel_strerror(rc), NULL);
  if (keel_msg_tag(reply) == REPLY_DRAINING) {
    keel_msg_free(reply);
    return shutting_down(res);
  }
  json_t *out = json_pack("{s:b, s:s, s:s}", "processed", 1, "workerId",
                          (const char *)keel_msg_data(reply), "requestId",
                          keel_http_request_id(req));
  keel_msg_free(reply);
  return keel_http_reply_json(res, 200, out);
}

static int h_stats(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req, (void)ud;
  keel_msg_t *reply = NULL;
  int rc = keel_gs_call_name("router", keel_msg_new(R_STATS, 0), &reply, 5000, NULL);
  if (rc == KEEL_ENOPROC || rc == KEEL_EDOWN) return shutting_down(res);
  if (rc) return keel_http_fail(res, KEEL_HTTP_INTERNAL, keel_strerror(rc), NULL);
  rc = keel_http_reply_text(res, 200, "application/json; charset=utf-8",
                            (const char *)keel_msg_data(reply));
  keel_msg_free(reply);
  return rc;
}

/* ---- health: the router is a required dependency ---------------------------------- */

static keel_health_status router_check(void *ud, keel_health_result *res) {
  (void)ud;
  if (keel_whereis("router")) return KEEL_HEALTH_OK;
  keel_health_result_message(res, "router is not running");
  return KEEL_HEALTH_CRITICAL;
}

/* ---- the application ------------------------------------------------------------- */

static int app_start(keel_app_t *app, void *arg, keel_pid_t *root, void **state) {
  (void)app;
  const config *cfg = arg;
  service *svc = calloc(1, sizeof *svc);
  int n = (int)cfg->worker_count;
  if (!svc) return KEEL_ENOMEM;
  svc->cfg = cfg;
  svc->specs = calloc((size_t)n + 1, sizeof *svc->specs);
  svc->worker_names = calloc((size_t)n, sizeof *svc->worker_names);
  int rc = (svc->specs && svc->worker_names) ? 0 : KEEL_ENOMEM;

  /* operations: metrics, health, observer, alerts */
  if (!rc) rc = keel_metrics_new(&svc->metrics, 0);
  if (!rc) rc = keel_metrics_register_builtin(svc->metrics);
  keel_health_set_service(cfg->service_name, VERSION);
  keel_health_builtin_opts hb;
  keel_health_builtin_opts_init(&hb);
  if (!rc) rc = keel_health_register_builtin(&hb);
  if (!rc) rc = keel_health_register("router", router_check, NULL, true, 1000);
  if (!rc) rc = keel_observer_start(NULL);
  keel_alerts_opts ao;
  keel_alerts_opts_init(&ao);
  if (!rc) rc = keel_alerts_start(&ao);
  if (!rc) keel_health_set_section("alerts", keel_alerts_health_section, NULL);

  /* the tree: the router first, then the workers */
  if (!rc) {
    svc->specs[0] = (keel_sup_child_spec){
        .id = "router", .gen_server = &router_beh, .arg = (void *)(intptr_t)n, .name = "router"};
    for (int i = 0; i < n; i++) {
      snprintf(svc->worker_names[i], sizeof svc->worker_names[i], "worker-%d", i + 1);
      svc->specs[i + 1] = (keel_sup_child_spec){.id = svc->worker_names[i],
                                                .gen_server = &worker_beh,
                                                .arg = (void *)(intptr_t)(i + 1),
                                                .name = svc->worker_names[i]};
    }
    keel_sup_spec spec = {.strategy = KEEL_SUP_ONE_FOR_ONE,
                          .intensity = 10,
                          .period_ms = 10000,
                          .children = svc->specs,
                          .nchildren = (size_t)n + 1};
    keel_sup_opts so = {.name = "microservice_sup", .link = true};
    rc = keel_sup_start(&spec, &so, root, NULL);
  }

  /* the admin port, then the API */
  if (!rc) {
    keel_admin_opts ad;
    keel_admin_opts_init(&ad);
    ad.host = cfg->host;
    ad.port = (int)cfg->health_port;
    ad.metrics = svc->metrics;
    rc = keel_admin_start(&ad, &svc->admin);
  }
  if (!rc) {
    keel_http_router *r = keel_http_router_new();
    rc = r ? 0 : KEEL_ENOMEM;
    if (!rc) rc = keel_http_route(r, "POST", "/api/process", h_process, svc);
    if (!rc) rc = keel_http_route(r, "GET", "/api/stats", h_stats, svc);
    char origins[4096] = "";
    for (size_t i = 0; i < cfg->cors_origins.count; i++) {
      size_t l = strlen(origins);
      snprintf(origins + l, sizeof origins - l, "%s%s", i ? "," : "", cfg->cors_origins.items[i]);
    }
    keel_http_opts ho;
    keel_http_opts_init(&ho);
    ho.host = cfg->host;
    ho.port = (int)cfg->port;
    ho.metrics = svc->metrics;
    ho.request_timeout_ms = cfg->request_timeout;
    ho.rate_limit = (int)cfg->rate_limit;
    ho.trust_proxy = cfg->trust_proxy;
    ho.cors_origins = origins;
    ho.slow_request_ms = cfg->slow_request_ms;
    ho.max_body_bytes = (size_t)cfg->max_body_bytes;
    if (!rc) rc = keel_http_start(&ho, r, &svc->api);
    if (rc) keel_http_router_free(r);
  }
  if (rc) {
    keel_log_error(NULL, "microservice failed to start", KEEL_STR("error", keel_strerror(rc)));
    if (svc->admin) keel_http_stop(svc->admin);
    if (*root) keel_exit_signal(*root, KEEL_REASON_SHUTDOWN, NULL);
    keel_alerts_stop();
    keel_observer_stop();
    keel_health_reset();
    keel_metrics_free(svc->metrics);
    free(svc->specs);
    free(svc->worker_names);
    free(svc);
    return rc;
  }
  keel_rt_stats st;
  keel_rt_stats_get(&st);
  keel_log_info(NULL, "microservice started", KEEL_UINT("processCount", st.procs_alive),
                KEEL_INT("port", keel_http_port(svc->api)),
                KEEL_INT("healthPort", keel_http_port(svc->admin)), KEEL_INT("workers", n));
  keel_health_set_started(true);
  *state = svc;
  return 0;
}

/* Before the tree stops: not ready any more, no new connections, finish
 * what is in flight, then drain the router and the workers. */
static void app_prep_stop(void *state, keel_pid_t root) {
  (void)root;
  service *svc = state;
  keel_log_info(NULL, "preparing for shutdown");
  keel_health_set_draining(true);
  int rc = keel_http_drain(svc->api, svc->cfg->shutdown_timeout);
  keel_log_info(NULL, "http drained", KEEL_STR("result", rc ? keel_strerror(rc) : "ok"),
                KEEL_UINT("inFlight", keel_http_in_flight(svc->api)));
  keel_msg_t *rep = NULL;
  if (keel_gs_call_name("router", keel_msg_new(R_DRAIN, 0), &rep, svc->cfg->shutdown_timeout,
                        NULL) == 0)
    keel_msg_free(rep);
  keel_log_info(NULL, "shutdown preparation complete");
}

static void app_stop(void *state) {
  service *svc = state;
  keel_http_stop(svc->api);
  keel_http_stop(svc->admin);
  keel_alerts_stop();
  keel_observer_stop();
  keel_health_reset();
  keel_metrics_free(svc->metrics);
  keel_log_info(NULL, "microservice stopped");
  free(svc->specs);
  free(svc->worker_names);
  free(svc);
}

static const keel_application microservice = {
    .start = app_start,
    .prep_stop = app_prep_stop,
    .stop = app_stop,
};

int main(void) {
  config cfg;
  keel_config_rule rules[] = {{.env = "HEALTH_PORT", .check = ports_differ}};
  keel_config_opts co;
  keel_config_opts_init(&co);
  co.dotenv_path = ".env";
  co.rules = rules;
  co.nrules = 1;
  keel_config_load_or_exit(fields, NFIELDS, &cfg, &co);

  keel_log_opts lo;
  keel_log_opts_init(&lo);
  lo.level = KEEL_LOG_TRACE + cfg.log_level;
  lo.format = KEEL_LOG_JSON + cfg.log_format;
  lo.service = cfg.service_name;
  lo.file = cfg.log_file && *cfg.log_file ? cfg.log_file : NULL;
  if (keel_log_init(&lo) != 0) {
    fprintf(stderr, "microservice: cannot start logging\n");
    return 1;
  }
  keel_log_keel_events(true);
  keel_log_config(fields, NFIELDS, &cfg, keel_config_env_name(co.app_env));

  keel_app_opts ao;
  keel_app_opts_init(&ao);
  ao.name = cfg.service_name;
  ao.config = &cfg;
  ao.handle_signals = true;
  ao.stop_timeout = cfg.shutdown_timeout;
  int code = keel_app_main(&microservice, &ao, NULL);
  keel_log_info(NULL, "exiting", KEEL_INT("code", code == KEEL_APP_EXIT_OK ? 0 : 1));
  keel_log_shutdown();
  keel_config_free(fields, NFIELDS, &cfg);
  return code == KEEL_APP_EXIT_OK ? 0 : 1;
}
