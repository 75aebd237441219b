/* microservice - the reference service: an HTTP API in front of a router
 * gen_server and a pool of worker gen_servers under a supervisor, with the
 * operations keel gives every service (configuration, JSON logs, metrics,
 * health probes, the observer, alerts) and a shutdown that drops nothing.
 *
 *   POST /api/process  {"anything": ..., "delayMs": 0..10000}
 *       -> the router hands it round-robin to a worker, which answers the
 *          caller directly: {"processed":true,"workerId":"worker-2","requestId":"..."}
 *   GET  /api/stats    -> the router's totals
 *   dashboard panel "workers" (keel_admin_panel_register): each worker's
 *       pid and the requests it handled, with no call to any process
 *   admin port (HEALTH_PORT): /health/live, /health/ready, /health/startup,
 *       /health, /metrics, /admin/observer, the admin API under /admin/ and
 *       the dashboard at /dashboard (actions need ADMIN_TOKEN, docs/dashboard.md)
 *
 * The start and stop are keel_service_main's (keel/service.h): configuration,
 * logs, metrics, health, observer, alerts, both ports. Shutdown (SIGTERM or
 * SIGINT): readiness answers 503 at once; the API listener closes and
 * requests in flight finish; then this service's prep_stop drains the router
 * and the workers (work that still arrives gets 503 "Service is shutting
 * down"); the tree stops; logs are flushed; exit 0. Past SHUTDOWN_TIMEOUT
 * what is left is cut and the exit code is 1. A second signal ends the
 * program at once.
 *
 * Only public headers are used. Build: make; run: make run (or
 * build/bin/microservice); configuration: .env.example.
 */
#include <inttypes.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel.h"

#define VERSION "0.1.0"

/* ---- configuration ------------------------------------------------------------ */

/* keel_service_main reads keel's own variables (PORT, HEALTH_PORT, LOG_*,
 * SHUTDOWN_TIMEOUT, REQUEST_TIMEOUT, RATE_LIMIT, CORS_ORIGINS, ...); the
 * service adds its own. */
typedef struct config {
  int64_t worker_count;
} config;

static config cfg;

static const keel_config_field fields[] = {
    {.env = "WORKER_COUNT", .type = KEEL_CONFIG_INT, .offset = offsetof(config, worker_count),
     .def = "4", .min = 1, .max = 100},
};

/* ---- the worker ---------------------------------------------------------------- */

enum { W_WORK = 10, W_DRAIN, W_STATS, R_ROUTE = 20, R_STATS, R_DRAIN, REPLY_OK = 30, REPLY_DRAINING };

typedef struct work {
  keel_gs_from from;
  int64_t delay_ms;
} work;

typedef struct worker {
  char id[32];
  int n; /* its number, 1..WORKER_COUNT */
  uint64_t requests;
  bool draining;
} worker;

/* Requests handled per worker number, across restarts: the dashboard's
 * "workers" panel reads them from any thread (a panel provider must not
 * wait, so it cannot ask the workers). Relaxed: each is a counter with one
 * writer at a time, read for display. */
static _Atomic uint64_t served[101];

static int worker_init(void *arg, void **state) {
  worker *w = calloc(1, sizeof *w);
  /* freed when the process ends, however it ends: a worker killed at the
   * end of SHUTDOWN_TIMEOUT runs no terminate */
  if (!w || keel_on_exit(free, w) != 0) {
    free(w);
    return KEEL_ENOMEM;
  }
  w->n = (int)(intptr_t)arg;
  snprintf(w->id, sizeof w->id, "worker-%d", w->n);
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
  if (w->n > 0 && w->n <= 100) atomic_fetch_add_explicit(&served[w->n], 1, memory_order_relaxed);
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
  r->nworkers = (int)((const config *)arg)->worker_count;
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

static int shutting_down(keel_http_res *res) {
  return keel_http_fail(res, KEEL_HTTP_UNAVAILABLE, "Service is shutting down", NULL);
}

/* The router or a worker may be gone while the service stops: that is a
 * 503 "shutting down", not an error. */
static int call_router(keel_http_res *res, keel_msg_t *req, keel_msg_t **reply, int64_t timeout) {
  int rc = keel_gs_call_name("router", req, reply, timeout, NULL);
  if (rc == KEEL_ENOPROC || rc == KEEL_EDOWN) return shutting_down(res);
  if (rc) return keel_http_fail(res, KEEL_HTTP_INTERNAL, keel_strerror(rc), NULL);
  if (keel_msg_tag(*reply) != REPLY_DRAINING) return 0;
  keel_msg_free(*reply);
  return shutting_down(res);
}

static int h_process(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)ud;
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
  int rc = call_router(res, keel_msg_copy(R_ROUTE, &delay, sizeof delay), &reply,
                       keel_service_settings()->request_timeout + 1000);
  if (rc) return rc;
  json_t *out = json_pack("{s:b, s:s, s:s}", "processed", 1, "workerId",
                          (const char *)keel_msg_data(reply), "requestId",
                          keel_http_request_id(req));
  keel_msg_free(reply);
  return keel_http_reply_json(res, 200, out);
}

static int h_stats(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req, (void)ud;
  keel_msg_t *reply = NULL;
  int rc = call_router(res, keel_msg_new(R_STATS, 0), &reply, 0);
  if (rc) return rc;
  rc = keel_http_reply_text(res, 200, "application/json; charset=utf-8",
                            (const char *)keel_msg_data(reply));
  keel_msg_free(reply);
  return rc;
}

/* ---- the service ------------------------------------------------------------------ */

static keel_health_status router_check(void *ud, keel_health_result *res) {
  (void)ud;
  if (keel_whereis("router")) return KEEL_HEALTH_OK;
  keel_health_result_message(res, "router is not running");
  return KEEL_HEALTH_CRITICAL;
}

/* The "workers" panel on the dashboard: a row per worker, rendered by the
 * page as a table (docs/dashboard.md). keel_whereis reads the registry
 * without waiting. */
static char *workers_panel(void *ud) {
  const config *conf = ud;
  json_t *rows = json_array();
  for (int i = 1; i <= (int)conf->worker_count && i <= 100; i++) {
    char name[32], pid[32] = "";
    snprintf(name, sizeof name, "worker-%d", i);
    keel_pid_t p = keel_whereis(name);
    if (p) keel_pid_format(p, pid, sizeof pid);
    json_array_append_new(
        rows,
        json_pack("{s:s, s:s, s:I}", "worker", name, "pid", p ? pid : "(restarting)", "requests",
                  (json_int_t)atomic_load_explicit(&served[i], memory_order_relaxed)));
  }
  char *text = json_dumps(rows, JSON_COMPACT);
  json_decref(rows);
  return text;
}

/* The router is a static child; the workers, as many as WORKER_COUNT, join
 * the root supervisor here, after it, each under its own name. */
static int ms_start(void *c, keel_pid_t root) {
  const config *conf = c;
  int rc = keel_health_register("router", router_check, NULL, true, 1000);
  if (!rc) rc = keel_admin_panel_register("workers", "Workers", workers_panel, c);
  for (int i = 1; !rc && i <= (int)conf->worker_count; i++) {
    char name[32];
    snprintf(name, sizeof name, "worker-%d", i);
    keel_sup_child_spec w = {.id = name, .gen_server = &worker_beh, .arg = (void *)(intptr_t)i, .name = name};
    rc = keel_sup_start_child(root, &w, NULL);
  }
  return rc;
}

/* After the API drained: the router drains the workers (work still queued
 * is finished; new work gets 503). */
static void ms_prep_stop(void *c) {
  (void)c;
  keel_msg_t *rep = NULL;
  if (keel_gs_call_name("router", keel_msg_new(R_DRAIN, 0), &rep,
                        keel_service_settings()->shutdown_timeout, NULL) == 0)
    keel_msg_free(rep);
}

static const keel_sup_child_spec children[] = {
    {.id = "router", .gen_server = &router_beh, .arg = &cfg, .name = "router"}};

static const keel_service_route routes[] = {
    {"POST", "/api/process", h_process}, {"GET", "/api/stats", h_stats}, {0}};

int main(void) {
  return keel_service_main(&(keel_service){
      .name = "keel-microservice",
      .version = VERSION,
      KEEL_SERVICE_CONFIG(fields, cfg),
      .tree = {.intensity = 10, .period_ms = 10000, .children = children, .nchildren = 1},
      .routes = routes,
      .start = ms_start,
      .prep_stop = ms_prep_stop});
}
