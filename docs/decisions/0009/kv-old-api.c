/* kv - a key-value service with expiry, written against keel's API as of
 * a1fee12 (the same service as the tutorial's, for comparison).
 *
 *   PUT    /kv/:key  {"value": <any JSON>, "ttl": <ms, optional>}  -> 201 new, 200 replaced
 *   GET    /kv/:key  -> {"key": ..., "value": ..., "expiresIn": <ms or null>}
 *   DELETE /kv/:key  -> 204
 *   GET    /kv       -> {"keys": <count>}
 *
 * One gen_server ("kv") owns the map; a janitor tick (every KV_SWEEP) drops
 * expired keys; a key past its ttl is gone even before the janitor runs. The
 * store refuses new keys past KV_MAX_KEYS with 507. Around it, what every
 * service does: configuration, JSON logs, metrics, health probes, the
 * observer, alerts, the admin port (HEALTH_PORT) and a drain on SIGTERM.
 */
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "keel.h"

/* ---- configuration ------------------------------------------------------------ */

typedef struct config {
  char *service_name;
  int app_env;
  char *host;
  int64_t port, health_port;
  int log_level, log_format;
  char *log_file;
  int64_t shutdown_timeout, request_timeout, rate_limit, rate_window;
  keel_config_list cors_origins;
  bool trust_proxy;
  int64_t slow_request_ms, max_body_bytes;
  int64_t max_keys, default_ttl, sweep_ms;
} config;

static config cfg;

static const char *const envs[] = {"development", "staging", "production", NULL};
static const char *const levels[] = {"trace", "debug", "info", "warn", "error", "fatal", NULL};
static const char *const formats[] = {"json", "pretty", NULL};

#define F(e, t, m) .env = (e), .type = (t), .offset = offsetof(config, m)
static const keel_config_field fields[] = {
    {F("SERVICE_NAME", KEEL_CONFIG_STRING, service_name), .def = "kv", .min = 1, .max = 64},
    {F("APP_ENV", KEEL_CONFIG_ENUM, app_env), .def = "development", .values = envs},
    {F("HOST", KEEL_CONFIG_STRING, host), .def = "0.0.0.0", .min = 1, .max = 255},
    {F("PORT", KEEL_CONFIG_INT, port), .def = "3000", .min = 1, .max = 65535},
    {F("HEALTH_PORT", KEEL_CONFIG_INT, health_port), .def = "9090", .min = 1, .max = 65535},
    {F("LOG_LEVEL", KEEL_CONFIG_ENUM, log_level), .def = "info",
     .by_env = {[KEEL_CONFIG_DEVELOPMENT] = "debug"}, .values = levels},
    {F("LOG_FORMAT", KEEL_CONFIG_ENUM, log_format), .def = "json", .values = formats},
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
    {F("KV_MAX_KEYS", KEEL_CONFIG_INT, max_keys), .def = "10000", .min = 1, .max = 10000000},
    {F("KV_DEFAULT_TTL", KEEL_CONFIG_DURATION, default_ttl), .def = "0"}, /* 0: none */
    {F("KV_SWEEP", KEEL_CONFIG_DURATION, sweep_ms), .def = "1s", .min = 10, .max = 3600000},
};
#define NFIELDS (sizeof fields / sizeof *fields)

static int ports_differ(const void *c, void *arg, char *why, size_t whylen) {
  (void)arg;
  const config *conf = c;
  if (conf->health_port != conf->port) return 0;
  snprintf(why, whylen, "must differ from PORT, got %" PRId64, conf->health_port);
  return 1;
}

/* ---- messages: bytes, so requests and replies travel as JSON text ----------------- */

static keel_msg_t *msg_from_json(uint32_t tag, json_t *v) { /* steals v */
  char *s = v ? json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
  json_decref(v);
  keel_msg_t *m = s ? keel_msg_copy(tag, s, strlen(s)) : keel_msg_new(tag, 0);
  free(s);
  return m;
}

static json_t *msg_to_json(const keel_msg_t *m) {
  return json_loadb(keel_msg_data(m), keel_msg_size(m), JSON_DECODE_ANY, NULL);
}

/* ---- the store: a gen_server --------------------------------------------------- */

enum { KV_GET = 1, KV_PUT, KV_DEL, KV_COUNT, KV_SWEEP };

typedef struct store {
  json_t *map; /* key -> {"v": value, "exp": ms since boot or 0} */
  keel_ref_t janitor;
} store;

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static bool expired(json_t *entry, int64_t now) {
  json_int_t exp = json_integer_value(json_object_get(entry, "exp"));
  return exp && exp <= now;
}

static int arm_janitor(store *s) { /* one tick at a time: re-armed after each */
  return keel_send_after(keel_self(), cfg.sweep_ms, keel_msg_new(KV_SWEEP, 0), &s->janitor);
}

static int kv_init(void *arg, void **state) {
  (void)arg;
  store *s = calloc(1, sizeof *s);
  if (!s || !(s->map = json_object())) return KEEL_ENOMEM;
  *state = s;
  return arm_janitor(s);
}

/* Requests are {"key": ...} plus "value" and "ttl" for a put; replies are
 * {"found": ...}, {"created": ...}, {"full": true} or {"keys": n}. */
static json_t *kv_handle(store *s, uint32_t op, json_t *req) {
  const char *key = json_string_value(json_object_get(req, "key"));
  int64_t now = now_ms();
  json_t *e = key ? json_object_get(s->map, key) : NULL;
  if (e && expired(e, now)) {
    json_object_del(s->map, key);
    e = NULL;
  }
  switch (op) {
  case KV_GET: {
    if (!e) return json_pack("{s:b}", "found", 0);
    json_int_t exp = json_integer_value(json_object_get(e, "exp"));
    return json_pack("{s:b, s:O, s:o}", "found", 1, "value", json_object_get(e, "v"), "expiresIn",
                     exp ? json_integer(exp - now) : json_null());
  }
  case KV_PUT: {
    if (!e && (int64_t)json_object_size(s->map) >= cfg.max_keys)
      return json_pack("{s:b}", "full", 1);
    json_int_t ttl = json_integer_value(json_object_get(req, "ttl"));
    if (!json_object_get(req, "ttl")) ttl = cfg.default_ttl;
    json_object_set_new(s->map, key,
                        json_pack("{s:O, s:I}", "v", json_object_get(req, "value"), "exp",
                                  ttl > 0 ? now + ttl : 0));
    return json_pack("{s:b}", "created", e == NULL);
  }
  case KV_DEL:
    if (e) json_object_del(s->map, key);
    return json_pack("{s:b}", "found", e != NULL);
  default: return json_pack("{s:I}", "keys", (json_int_t)json_object_size(s->map));
  }
}

static int kv_call(void *st, keel_gs_from from, keel_msg_t **request, keel_msg_t **reply) {
  (void)from;
  json_t *req = msg_to_json(*request);
  *reply = msg_from_json(0, kv_handle(st, keel_msg_tag(*request), req));
  json_decref(req);
  return KEEL_GS_REPLY;
}

static int kv_info(void *st, keel_msg_t **msg) { /* the janitor's tick */
  store *s = st;
  if (keel_msg_tag(*msg) != KV_SWEEP) return KEEL_GS_OK;
  int64_t now = now_ms();
  const char *key;
  json_t *e, *tmp;
  json_object_foreach_safe(s->map, tmp, key, e) {
    if (expired(e, now)) json_object_del(s->map, key);
  }
  return arm_janitor(s);
}

static void kv_terminate(keel_reason reason, void *st) {
  (void)reason;
  store *s = st;
  keel_cancel_timer(s->janitor);
  json_decref(s->map);
  free(s);
}

static const keel_gen_server kv_server = {
    .init = kv_init, .handle_call = kv_call, .handle_info = kv_info, .terminate = kv_terminate};

/* ---- HTTP ------------------------------------------------------------------------ */

/* Calls the store with a JSON request (stolen); on failure fills res with the
 * error and returns a negative value. */
static int store_call(keel_http_res *res, uint32_t op, json_t *request, json_t **reply) {
  keel_msg_t *m = NULL;
  int rc = keel_gs_call_name("kv", msg_from_json(op, request), &m, 0, NULL);
  if (!rc && !(*reply = msg_to_json(m))) rc = KEEL_EINVAL;
  keel_msg_free(m);
  if (rc == KEEL_ENOPROC || rc == KEEL_EDOWN)
    return keel_http_fail(res, KEEL_HTTP_UNAVAILABLE, "kv is not running", NULL);
  return rc ? keel_http_fail(res, KEEL_HTTP_INTERNAL, keel_strerror(rc), NULL) : 0;
}

/* No 507 kind in http.h: the standard error envelope, by hand. */
static int fail_507(keel_http_req *req, keel_http_res *res, const char *message) {
  struct timespec now;
  struct tm tm;
  char ts[40];
  clock_gettime(CLOCK_REALTIME, &now);
  gmtime_r(&now.tv_sec, &tm);
  size_t n = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(ts + n, sizeof ts - n, ".%03ldZ", now.tv_nsec / 1000000);
  return keel_http_reply_json(res, 507,
                              json_pack("{s:b, s:{s:s, s:s, s:n, s:s, s:s}}", "success", 0, "error",
                                        "code", "INSUFFICIENT_STORAGE", "message", message,
                                        "details", "traceId", keel_http_request_id(req),
                                        "timestamp", ts));
}

static int h_get(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)ud;
  const char *key = keel_http_param(req, "key");
  json_t *r;
  if (store_call(res, KV_GET, json_pack("{s:s}", "key", key), &r) < 0) return 0;
  if (!json_is_true(json_object_get(r, "found"))) {
    json_decref(r);
    return keel_http_fail(res, KEEL_HTTP_NOT_FOUND, "no such key", NULL);
  }
  json_object_del(r, "found");
  json_object_set_new(r, "key", json_string(key));
  return keel_http_reply_json(res, 200, r);
}

static int h_put(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)ud;
  int err;
  json_t *body = keel_http_json(req, &err), *r; /* borrowed from the request */
  json_t *value = json_object_get(body, "value"), *ttl = json_object_get(body, "ttl");
  if (!value || (ttl && (!json_is_integer(ttl) || json_integer_value(ttl) < 0)))
    return keel_http_fail(res, KEEL_HTTP_VALIDATION, "expected {\"value\": ..., \"ttl\": ms >= 0}",
                          NULL);
  const char *key = keel_http_param(req, "key");
  json_t *put = json_pack("{s:s, s:O, s:O?}", "key", key, "value", value, "ttl", ttl);
  if (store_call(res, KV_PUT, put, &r) < 0) return 0;
  int status = json_is_true(json_object_get(r, "created")) ? 201 : 200;
  bool full = json_is_true(json_object_get(r, "full"));
  json_decref(r);
  if (full) return fail_507(req, res, "the store is full");
  return keel_http_reply_json(res, status, json_pack("{s:s}", "key", key));
}

static int h_delete(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)ud;
  json_t *r;
  if (store_call(res, KV_DEL, json_pack("{s:s}", "key", keel_http_param(req, "key")), &r) < 0)
    return 0;
  bool found = json_is_true(json_object_get(r, "found"));
  json_decref(r);
  if (!found) return keel_http_fail(res, KEEL_HTTP_NOT_FOUND, "no such key", NULL);
  return keel_http_reply(res, 204, NULL, NULL, 0);
}

static int h_count(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req, (void)ud;
  json_t *r;
  if (store_call(res, KV_COUNT, NULL, &r) < 0) return 0;
  return keel_http_reply_json(res, 200, r);
}

/* ---- the application ------------------------------------------------------------- */

static keel_health_status kv_check(void *ud, keel_health_result *res) {
  (void)ud;
  if (keel_whereis("kv")) return KEEL_HEALTH_OK;
  keel_health_result_message(res, "the store is not running");
  return KEEL_HEALTH_CRITICAL;
}

static keel_gs_child kv_child = {.beh = &kv_server, .name = "kv"};
static const keel_child_spec children[] = {
    {.id = "kv", .start = keel_gs_child_start, .arg = &kv_child}};

static struct {
  keel_metrics *metrics;
  keel_http_server *api, *admin;
} svc;

static void ops_stop(void) {
  keel_alerts_stop();
  keel_observer_stop();
  keel_health_reset();
  keel_metrics_free(svc.metrics);
}

static int start_api(void) {
  keel_http_router *r = keel_http_router_new();
  int rc = r ? 0 : KEEL_ENOMEM;
  if (!rc) rc = keel_http_route(r, "GET", "/kv/:key", h_get, NULL);
  if (!rc) rc = keel_http_route(r, "PUT", "/kv/:key", h_put, NULL);
  if (!rc) rc = keel_http_route(r, "DELETE", "/kv/:key", h_delete, NULL);
  if (!rc) rc = keel_http_route(r, "GET", "/kv", h_count, NULL);
  char origins[4096] = "";
  for (size_t i = 0; i < cfg.cors_origins.count; i++) {
    size_t l = strlen(origins);
    snprintf(origins + l, sizeof origins - l, "%s%s", i ? "," : "", cfg.cors_origins.items[i]);
  }
  keel_http_options ho;
  keel_http_options_init(&ho);
  ho.host = cfg.host;
  ho.port = (int)cfg.port;
  ho.metrics = svc.metrics;
  ho.request_timeout_ms = cfg.request_timeout;
  ho.rate_limit = (int)cfg.rate_limit;
  ho.rate_window_ms = cfg.rate_window;
  ho.trust_proxy = cfg.trust_proxy;
  ho.cors_origins = origins;
  ho.slow_request_ms = cfg.slow_request_ms;
  ho.max_body_bytes = (size_t)cfg.max_body_bytes;
  if (!rc) rc = keel_http_start(&ho, r, &svc.api);
  if (rc) keel_http_router_free(r);
  return rc;
}

static int app_start(keel_app_t *app, void *arg, keel_pid_t *root, void **state) {
  (void)app, (void)arg, (void)state;
  int rc = keel_metrics_new(&svc.metrics, 0);
  if (!rc) rc = keel_metrics_register_builtin(svc.metrics);
  keel_health_set_service(cfg.service_name, "1.0.0");
  if (!rc) rc = keel_health_register_builtin(NULL);
  if (!rc) rc = keel_observer_start(NULL);
  if (!rc) rc = keel_alerts_start(NULL);
  if (!rc) keel_health_set_section("alerts", keel_alerts_health_section, NULL);
  keel_sup_spec tree = {.children = children, .nchildren = 1};
  if (!rc) rc = keel_sup_start(&tree, &(keel_sup_opts){.name = "kv_sup", .link = true}, root, NULL);
  if (!rc) rc = keel_health_register("kv", kv_check, NULL, true, 1000);
  if (!rc) {
    keel_admin_options ad;
    keel_admin_options_init(&ad);
    ad.host = cfg.host;
    ad.port = (int)cfg.health_port;
    ad.metrics = svc.metrics;
    rc = keel_admin_start(&ad, &svc.admin);
  }
  if (!rc) rc = start_api();
  if (rc) {
    keel_log_error(NULL, "service failed to start", KEEL_STR("error", keel_strerror(rc)));
    if (svc.admin) keel_http_stop(svc.admin);
    if (*root) keel_exit_signal(*root, KEEL_REASON_SHUTDOWN, NULL);
    ops_stop();
    return rc;
  }
  keel_log_info(NULL, "service started", KEEL_INT("port", keel_http_port(svc.api)),
                KEEL_INT("healthPort", keel_http_port(svc.admin)));
  keel_health_set_started(true);
  return 0;
}

/* Not ready any more, no new connections, finish what is in flight. */
static void app_prep_stop(void *state, keel_pid_t root) {
  (void)state, (void)root;
  keel_log_info(NULL, "preparing for shutdown");
  keel_health_set_draining(true);
  int rc = keel_http_drain(svc.api, cfg.shutdown_timeout);
  keel_log_info(NULL, "http drained", KEEL_STR("result", rc ? keel_strerror(rc) : "ok"),
                KEEL_UINT("inFlight", keel_http_in_flight(svc.api)));
}

static void app_stop(void *state) {
  (void)state;
  keel_http_stop(svc.api);
  keel_http_stop(svc.admin);
  ops_stop();
  keel_log_info(NULL, "service stopped");
}

static const keel_application kv_app = {
    .start = app_start, .prep_stop = app_prep_stop, .stop = app_stop};

int main(void) {
  keel_config_rule rules[] = {{.env = "HEALTH_PORT", .check = ports_differ}};
  keel_config_options co = {.dotenv_path = ".env", .rules = rules, .nrules = 1};
  keel_config_load_or_exit(fields, NFIELDS, &cfg, &co);

  keel_log_options lo;
  keel_log_options_init(&lo);
  lo.level = cfg.log_level;
  lo.format = cfg.log_format;
  lo.service = cfg.service_name;
  lo.file = cfg.log_file && *cfg.log_file ? cfg.log_file : NULL;
  if (keel_log_init(&lo) != 0) {
    fprintf(stderr, "kv: cannot start logging\n");
    return 1;
  }
  keel_log_keel_events(true);
  keel_log_config(fields, NFIELDS, &cfg, keel_config_env_name(co.app_env));
  keel_log_flush(); /* lines are buffered per thread: this one first */

  keel_app_opts ao = {
      .name = cfg.service_name, .handle_signals = true, .stop_timeout = cfg.shutdown_timeout};
  int code = keel_app_main(&kv_app, &ao, NULL) == KEEL_APP_EXIT_OK ? 0 : 1;
  keel_log_info(NULL, "exiting", KEEL_INT("code", code));
  keel_log_shutdown();
  keel_config_free(fields, NFIELDS, &cfg);
  return code;
}
