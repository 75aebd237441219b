/* test_health.c - the store's health check: ok on a working store (both
 * backends), registered under keel/health.h, and on PostgreSQL the two
 * warnings: a long-open transaction holding read_all back (named by its
 * backend's pid and application_name) and a saturated pool. */
#include "es/kt_es.h"
#include "keel/health.h"

static keel_health_status check(keel_es *es, const keel_es_health_opts *o, char *msg, size_t mlen,
                                char *details, size_t dlen) {
  keel_health_result res = {0};
  keel_health_status st = keel_es_health(es, o, &res);
  if (msg) snprintf(msg, mlen, "%s", res.message ? res.message : "");
  if (details) snprintf(details, dlen, "%s", res.details ? res.details : "");
  free(res.message);
  free(res.details);
  return st;
}

/* Polls the check (up to 20 s) until it answers `want`. */
static bool await_status(keel_es *es, const keel_es_health_opts *o, keel_health_status want,
                         char *msg, size_t mlen, char *details, size_t dlen) {
  for (int i = 0; i < 2000; i++) {
    if (check(es, o, msg, mlen, details, dlen) == want) return true;
    keel_sleep(10);
  }
  return false;
}

KT_CASE(a_working_store_is_healthy) {
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  CHECK_OK(kt_append_n(es, "h-1", KEEL_ES_NO_STREAM, "T", 1, 0, NULL));
  char msg[512], details[1024];
  /* on PostgreSQL another suite's leftovers cannot hold a transaction
   * (suites run one at a time), so this is ok at once */
  CHECK_EQ(check(es, NULL, msg, sizeof msg, details, sizeof details), KEEL_HEALTH_OK);
  json_t *d = json_loads(details, 0, NULL);
  CHECK(d != NULL);
  const char *backend = json_string_value(json_object_get(d, "backend"));
  CHECK(backend != NULL);
  if (kt_es_pg_url()) {
    CHECK_STR(backend, "postgresql");
    json_t *pool = json_object_get(d, "pool");
    CHECK(json_is_object(pool));
    CHECK_EQ(json_integer_value(json_object_get(pool, "waiting")), 0);
    CHECK_EQ(json_integer_value(json_object_get(pool, "max")), 10);
    CHECK(json_object_get(d, "horizon") != NULL);
  } else {
    CHECK_STR(backend, "sqlite");
    CHECK(json_is_number(json_object_get(d, "writer_ms")));
  }
  json_decref(d);
  kt_store_close(&s);
}

KT_CASE(the_registered_check_appears_in_the_detailed_probe) {
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  CHECK_OK(keel_es_health_register(es, &(keel_es_health_opts){.name = "events"}));
  CHECK_EQ(keel_es_health_register(es, &(keel_es_health_opts){.name = "events"}), KEEL_EEXIST);
  keel_health_set_started(true);
  keel_health_response r;
  CHECK_OK(keel_health_detailed(&r));
  json_t *body = json_loads(r.body, 0, NULL);
  CHECK(body != NULL);
  json_t *checks = json_object_get(body, "checks");
  json_t *mine = json_object_get(checks, "events");
  if (!mine && json_is_array(checks)) { /* whichever shape docs/health.md gives */
    size_t i;
    json_t *v;
    json_array_foreach(checks, i, v) {
      const char *n = json_string_value(json_object_get(v, "name"));
      if (n && strcmp(n, "events") == 0) mine = v;
    }
  }
  CHECK(mine != NULL);
  CHECK_STR(json_string_value(json_object_get(mine, "status")), "ok");
  CHECK(json_object_get(mine, "backend") != NULL); /* the details are merged in */
  CHECK_EQ(r.http_status, 200);
  json_decref(body);
  keel_health_response_free(&r);
  CHECK_OK(keel_health_unregister("events"));
  keel_health_reset();
  kt_store_close(&s);
}

KT_CASE(a_long_open_transaction_is_reported_with_its_backend_and_age) {
  KT_PG_ONLY();
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  keel_es_health_opts o = {.horizon_warn_ms = 200};
  char msg[512], details[1024];
  CHECK_EQ(check(es, &o, msg, sizeof msg, NULL, 0), KEEL_HEALTH_OK);
  char url[1400];
  /* an outside client, connected directly (behind PgBouncer too) */
  snprintf(url, sizeof url, "%s%capplication_name=kt_holder", s.admin_url,
           strchr(s.admin_url, '?') ? '&' : '?');
  PGconn *c = PQconnectdb(url);
  CHECK(PQstatus(c) == CONNECTION_OK);
  PQclear(kt_pg_run(c, "BEGIN"));
  PGresult *r = kt_pg_run(c, "SELECT pg_backend_pid(), pg_current_xact_id()"); /* takes an id */
  char pid[32];
  snprintf(pid, sizeof pid, "%s", PQgetvalue(r, 0, 0));
  PQclear(r);
  /* reported once it has been open horizon_warn_ms */
  CHECK(await_status(es, &o, KEEL_HEALTH_WARNING, msg, sizeof msg, details, sizeof details));
  CHECK(strstr(msg, pid) != NULL);
  CHECK(strstr(msg, "kt_holder") != NULL);
  CHECK(strstr(msg, "held back for") != NULL);
  json_t *d = json_loads(details, 0, NULL);
  json_t *h = json_object_get(d, "horizon");
  CHECK_STR(json_string_value(json_object_get(h, "backend")), pid);
  CHECK_STR(json_string_value(json_object_get(h, "application_name")), "kt_holder");
  CHECK(json_integer_value(json_object_get(h, "held_ms")) >= 200);
  json_decref(d);
  /* a transaction without an id holds nothing: only the one above counts */
  PQclear(kt_pg_run(c, "COMMIT"));
  CHECK(await_status(es, &o, KEEL_HEALTH_OK, msg, sizeof msg, NULL, 0));
  PQclear(kt_pg_run(c, "BEGIN"));
  PQclear(kt_pg_run(c, "SELECT 1")); /* no id */
  keel_sleep(300);
  CHECK_EQ(check(es, &o, msg, sizeof msg, NULL, 0), KEEL_HEALTH_OK);
  PQclear(kt_pg_run(c, "COMMIT"));
  PQfinish(c);
  kt_store_close(&s);
}

typedef struct appender {
  keel_es *es;
  int rc;
} appender;

static void append_one(void *arg) {
  appender *a = arg;
  a->rc = kt_append_n(a->es, "sat-1", KEEL_ES_ANY, "T", 1, 0, NULL);
}

KT_CASE(a_saturated_pool_is_reported) {
  KT_PG_ONLY();
  kt_store s;
  keel_es *es = kt_store_open(&s, &(keel_es_opts){.pool_max = 1, .acquire_timeout_ms = 60000});
  CHECK_OK(kt_append_n(es, "sat-1", KEEL_ES_NO_STREAM, "T", 1, 0, NULL));
  PGconn *c = PQconnectdb(s.url);
  CHECK(PQstatus(c) == CONNECTION_OK);
  PQclear(kt_pg_run(c, "BEGIN"));
  PQclear(kt_pg_run(c, "SELECT 1 FROM streams WHERE stream = 'sat-1' FOR UPDATE"));
  /* the first appender takes the only connection and waits on the row
   * lock; the second waits for the connection */
  enum { N = 2 };
  appender a[N];
  for (int i = 0; i < N; i++) {
    a[i] = (appender){.es = es, .rc = 1};
    keel_spawn_opts so;
    keel_spawn_opts_init(&so);
    so.monitor = true;
    CHECK_OK(keel_spawn(append_one, &a[i], &so, NULL));
  }
  keel_es_health_opts o = {.waiting_warn_ms = 100, .horizon_warn_ms = KEEL_INFINITY};
  char msg[512], details[1024];
  CHECK(await_status(es, &o, KEEL_HEALTH_WARNING, msg, sizeof msg, details, sizeof details));
  CHECK(strstr(msg, "saturated") != NULL);
  CHECK(strstr(msg, "1 processes waiting") != NULL);
  PQclear(kt_pg_run(c, "COMMIT"));
  for (int i = 0; i < N; i++) {
    keel_msg_t *m;
    CHECK_OK(keel_receive(&m, 60000));
    keel_msg_free(m);
  }
  for (int i = 0; i < N; i++)
    CHECK_OK(a[i].rc);
  CHECK_EQ(check(es, &o, msg, sizeof msg, NULL, 0), KEEL_HEALTH_OK);
  PQfinish(c);
  kt_store_close(&s);
}

KT_MAIN(KT_ENTRY(a_working_store_is_healthy),
        KT_ENTRY(the_registered_check_appears_in_the_detailed_probe),
        KT_ENTRY(a_long_open_transaction_is_reported_with_its_backend_and_age),
        KT_ENTRY(a_saturated_pool_is_reported))
