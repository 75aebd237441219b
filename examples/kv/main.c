/* kv - a key-value service with expiry, the tutorial's service
 * (docs/tutorial.md builds it step by step).
 *
 *   PUT    /kv/:key  {"value": <any JSON>, "ttl": <ms, optional>}  -> 201 new, 200 replaced
 *   GET    /kv/:key  -> {"key": ..., "value": ..., "expiresIn": <ms or null>}
 *   DELETE /kv/:key  -> 204
 *   GET    /kv       -> {"keys": <count>}
 *
 * One gen_server ("kv") owns the map; a janitor tick (every KV_SWEEP) drops
 * expired keys; a key past its ttl is gone even before the janitor runs. The
 * store refuses new keys past KV_MAX_KEYS with 507. keel_service_main gives
 * it the rest: configuration, logs, metrics, health, admin port, drain.
 */
#include <stddef.h>
#include <time.h>

#include "keel.h"

typedef struct kv_config {
  int64_t max_keys, default_ttl, sweep_ms;
} kv_config;

static kv_config cfg;

#define F(e, t, m) .env = (e), .type = (t), .offset = offsetof(kv_config, m)
static const keel_config_field fields[] = {
    {F("KV_MAX_KEYS", KEEL_CONFIG_INT, max_keys), .def = "10000", .min = 1, .max = 10000000},
    {F("KV_DEFAULT_TTL", KEEL_CONFIG_DURATION, default_ttl), .def = "0"}, /* 0: none */
    {F("KV_SWEEP", KEEL_CONFIG_DURATION, sweep_ms), .def = "1s", .min = 10, .max = 3600000},
};

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

static int kv_init(void *arg, void **state) {
  const kv_config *c = arg;
  store *s = calloc(1, sizeof *s);
  if (s && (s->map = json_object()) &&
      keel_send_interval(keel_self(), c->sweep_ms, keel_msg_new(KV_SWEEP, 0), &s->janitor) == 0) {
    *state = s;
    return 0;
  }
  if (s) json_decref(s->map);
  free(s);
  return KEEL_ENOMEM; /* terminate does not run after a failed init */
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
  json_t *req = keel_msg_to_json(*request);
  *reply = keel_msg_from_json(0, kv_handle(st, keel_msg_tag(*request), req));
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
  return KEEL_GS_OK;
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

static int h_get(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)ud;
  const char *key = keel_http_param(req, "key");
  json_t *r;
  if (keel_http_call(res, "kv", KV_GET, json_pack("{s:s}", "key", key), &r, 0) < 0) return 0;
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
  if (keel_http_call(res, "kv", KV_PUT, put, &r, 0) < 0) return 0;
  int status = json_is_true(json_object_get(r, "created")) ? 201 : 200;
  bool full = json_is_true(json_object_get(r, "full"));
  json_decref(r);
  if (full) return keel_http_fail(res, KEEL_HTTP_INSUFFICIENT_STORAGE, "the store is full", NULL);
  return keel_http_reply_json(res, status, json_pack("{s:s}", "key", key));
}

static int h_delete(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)ud;
  json_t *r;
  if (keel_http_call(res, "kv", KV_DEL, json_pack("{s:s}", "key", keel_http_param(req, "key")), &r,
                     0) < 0)
    return 0;
  bool found = json_is_true(json_object_get(r, "found"));
  json_decref(r);
  if (!found) return keel_http_fail(res, KEEL_HTTP_NOT_FOUND, "no such key", NULL);
  return keel_http_reply(res, 204, NULL, NULL, 0);
}

static int h_count(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req, (void)ud;
  json_t *r;
  if (keel_http_call(res, "kv", KV_COUNT, NULL, &r, 0) < 0) return 0;
  return keel_http_reply_json(res, 200, r);
}

/* ---- the service ------------------------------------------------------------------- */

static keel_health_status kv_check(void *ud, keel_health_result *res) {
  (void)ud;
  if (keel_whereis("kv")) return KEEL_HEALTH_OK;
  keel_health_result_message(res, "the store is not running");
  return KEEL_HEALTH_CRITICAL;
}

static int kv_start(void *c, keel_pid_t root) {
  (void)c, (void)root;
  return keel_health_register("kv", kv_check, NULL, true, 1000);
}

static const keel_sup_child_spec children[] = {
    {.id = "kv", .gen_server = &kv_server, .arg = &cfg, .name = "kv"}};

static const keel_service_route routes[] = {{"GET", "/kv/:key", h_get},
                                            {"PUT", "/kv/:key", h_put},
                                            {"DELETE", "/kv/:key", h_delete},
                                            {"GET", "/kv", h_count},
                                            {0}};

int main(void) {
  return keel_service_main(&(keel_service){.name = "kv",
                                           .version = "1.0.0",
                                           KEEL_SERVICE_CONFIG(fields, cfg),
                                           .tree = {.children = children, .nchildren = 1},
                                           .routes = routes,
                                           .start = kv_start});
}
