/* test_pool.c - the PostgreSQL backend's connection pool: waiters served in
 * turn, the acquire timeout, its metrics, and connections the server killed
 * replaced before a call uses them (on SQLite there is no pool: the cases are skipped). */
#include "es/kt_es.h"

typedef struct writer_arg {
  keel_es *es;
  int i;
  int rc;
} writer_arg;

static void writer(void *arg) {
  writer_arg *w = arg;
  char stream[32];
  snprintf(stream, sizeof stream, "w-%d", w->i);
  w->rc = 0;
  for (int k = 0; k < 5 && w->rc == 0; k++)
    w->rc = kt_append_n(w->es, stream, KEEL_ES_ANY, "T", 2, k, NULL);
}

static void await_all(keel_ref_t *refs, int n) {
  for (int i = 0; i < n; i++) {
    keel_msg_t *m;
    CHECK_OK(keel_receive(&m, 120000));
    keel_msg_free(m);
  }
  (void)refs;
}

KT_CASE(many_processes_share_two_connections) {
  KT_PG_ONLY();
  keel_metrics *reg;
  CHECK_OK(keel_metrics_new(&reg, 0));
  kt_store s;
  keel_es *es = kt_store_open(&s, &(keel_es_opts){.pool_max = 2, .metrics = reg});
  enum { N = 24 };
  writer_arg w[N];
  keel_ref_t refs[N];
  for (int i = 0; i < N; i++) {
    w[i] = (writer_arg){.es = es, .i = i, .rc = 1};
    keel_spawn_opts so;
    keel_spawn_opts_init(&so);
    so.monitor = true;
    so.monitor_ref = &refs[i];
    CHECK_OK(keel_spawn(writer, &w[i], &so, NULL));
  }
  await_all(refs, N);
  for (int i = 0; i < N; i++)
    CHECK_OK(w[i].rc);
  int64_t head;
  CHECK_OK(keel_es_head(es, &head));
  CHECK_EQ(head, N * 5 * 2);
  keel_metrics_buf b = {0};
  CHECK_OK(keel_metrics_render(reg, KEEL_METRICS_TEXT, &b));
  CHECK(strstr(b.data, "es_pool_connections{state=\"in_use\"} 0") != NULL);
  CHECK(strstr(b.data, "es_pool_connections{state=\"idle\"} 2") != NULL);
  CHECK(strstr(b.data, "es_pool_waiting 0") != NULL);
  CHECK(strstr(b.data, "es_pool_acquire_seconds_count") != NULL);
  keel_metrics_buf_free(&b);
  kt_store_close(&s);
  keel_metrics_free(reg);
}

typedef struct held {
  keel_es *es;
  int rc;
} held;

static void append_held(void *arg) {
  held *h = arg;
  h->rc = kt_append_n(h->es, "lock-1", KEEL_ES_ANY, "T", 1, 0, NULL);
}

KT_CASE(a_call_that_gets_no_connection_in_time_times_out) {
  KT_PG_ONLY();
  kt_store s;
  keel_es *es = kt_store_open(&s, &(keel_es_opts){.pool_max = 1, .acquire_timeout_ms = 200});
  CHECK_OK(kt_append_n(es, "lock-1", KEEL_ES_NO_STREAM, "T", 1, 0, NULL));
  PGconn *c = PQconnectdb(s.url);
  CHECK(PQstatus(c) == CONNECTION_OK);
  PQclear(PQexec(c, "BEGIN"));
  PQclear(PQexec(c, "SELECT 1 FROM streams WHERE stream = 'lock-1' FOR UPDATE"));
  held h = {.es = es, .rc = 1};
  keel_ref_t ref;
  keel_spawn_opts so;
  keel_spawn_opts_init(&so);
  so.monitor = true;
  so.monitor_ref = &ref;
  CHECK_OK(keel_spawn(append_held, &h, &so, NULL));
  /* wait until the append holds the only connection (it waits on the row) */
  for (int i = 0; i < 5000; i++) {
    PGresult *r = PQexec(c, "SELECT count(*) FROM pg_locks WHERE NOT granted");
    long waiting = strtol(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    if (waiting > 0) break;
    keel_sleep(2);
  }
  int64_t head;
  CHECK_EQ(keel_es_head(es, &head), KEEL_ETIMEDOUT);
  PQclear(PQexec(c, "COMMIT"));
  keel_msg_t *m;
  CHECK_OK(keel_receive(&m, 60000));
  keel_msg_free(m);
  CHECK_OK(h.rc);
  CHECK_OK(keel_es_head(es, &head));
  CHECK_EQ(head, 2);
  PQfinish(c);
  kt_store_close(&s);
}

KT_CASE(idle_connections_the_server_killed_are_replaced_without_failing_a_call) {
  KT_PG_ONLY();
  kt_store s;
  kt_store_mkdir(&s);
  char app[64], url[1400];
  snprintf(app, sizeof app, "kt_pool_%d", (int)getpid());
  snprintf(url, sizeof url, "%s&application_name=%s", s.url, app);
  keel_es *es;
  CHECK_OK(keel_es_open(&(keel_es_opts){.url = url, .pool_min = 3}, &es));
  CHECK_OK(kt_append_n(es, "k-1", KEEL_ES_NO_STREAM, "T", 1, 0, NULL));
  char sql[256];
  snprintf(sql, sizeof sql,
           /* with a timeout, the call returns once each backend has exited */
           "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
           "WHERE application_name = '%s'",
           app);
  CHECK_OK(kt_pg_exec(s.url, sql, NULL, 0));
  /* a dead idle connection is found before anything is sent on it and
   * replaced: no call fails */
  for (int i = 0; i < 3; i++)
    CHECK_OK(kt_append_n(es, "k-1", KEEL_ES_ANY, "T", 1, 0, NULL));
  keel_es_stream_info info;
  CHECK_OK(keel_es_stream_info_get(es, "k-1", &info));
  CHECK_EQ(info.version, 4);
  keel_es_stream_info_free(&info);
  keel_es_close(es);
  kt_store_rmdir(&s);
}

/* ---- maintenance: idle recycling, lifetime, the periodic ping --------------- */

/* The backends of the store's connections (by application_name), as a
 * comma-separated list of pids in *pids (may be NULL); returns how many. */
static int backends(const char *url, const char *app, char *pids, size_t len) {
  PGconn *c = PQconnectdb(url);
  CHECK(PQstatus(c) == CONNECTION_OK);
  char sql[256];
  snprintf(sql, sizeof sql,
           "SELECT count(*), coalesce(string_agg(pid::text, ',' ORDER BY pid), '') "
           "FROM pg_stat_activity WHERE application_name = '%s'",
           app);
  PGresult *r = PQexec(c, sql);
  CHECK(PQresultStatus(r) == PGRES_TUPLES_OK);
  int n = (int)strtol(PQgetvalue(r, 0, 0), NULL, 10);
  if (pids) snprintf(pids, len, "%s", PQgetvalue(r, 0, 1));
  PQclear(r);
  PQfinish(c);
  return n;
}

/* A store whose connections carry a name of their own (to find them in
 * pg_stat_activity). */
static keel_es *open_named(kt_store *s, char *app, size_t applen, keel_es_opts o) {
  static int serial;
  kt_store_mkdir(s);
  snprintf(app, applen, "kt_pool_%d_%d", (int)getpid(), ++serial);
  static char url[1400];
  snprintf(url, sizeof url, "%s&application_name=%s", s->url, app);
  o.url = url;
  o.no_listen = true; /* the LISTEN connection would carry the name too: only the pool's */
  CHECK_OK(keel_es_open(&o, &s->es));
  return s->es;
}

/* Waits (polling, up to 20 s: timing never decides the verdict, only
 * whether the state is reached) until the store has `want` backends. */
static bool await_backends(const char *url, const char *app, int want, char *pids, size_t len) {
  for (int i = 0; i < 2000; i++) {
    if (backends(url, app, pids, len) == want) return true;
    keel_sleep(10);
  }
  return false;
}

KT_CASE(idle_connections_above_pool_min_are_closed_after_the_idle_timeout) {
  KT_PG_ONLY();
  kt_store s;
  char app[64];
  keel_metrics *reg;
  CHECK_OK(keel_metrics_new(&reg, 0));
  keel_es *es = open_named(
      &s, app, sizeof app,
      (keel_es_opts){.pool_min = 1, .pool_max = 4, .metrics = reg, .pool_idle_timeout_ms = 100});
  enum { N = 12 };
  writer_arg w[N];
  keel_ref_t refs[N];
  for (int i = 0; i < N; i++) {
    w[i] = (writer_arg){.es = es, .i = i, .rc = 1};
    keel_spawn_opts so;
    keel_spawn_opts_init(&so);
    so.monitor = true;
    so.monitor_ref = &refs[i];
    CHECK_OK(keel_spawn(writer, &w[i], &so, NULL));
  }
  await_all(refs, N);
  for (int i = 0; i < N; i++)
    CHECK_OK(w[i].rc);
  /* back down to pool_min, with no call to trigger it */
  CHECK(await_backends(s.url, app, 1, NULL, 0));
  keel_metrics_buf b = {0};
  CHECK_OK(keel_metrics_render(reg, KEEL_METRICS_TEXT, &b));
  CHECK(strstr(b.data, "es_pool_connections{state=\"idle\"} 1") != NULL);
  CHECK(strstr(b.data, "es_pool_recycled_total{reason=\"idle\"}") != NULL);
  CHECK(strstr(b.data, "es_pool_recycled_total{reason=\"idle\"} 0\n") == NULL);
  keel_metrics_buf_free(&b);
  CHECK_OK(kt_append_n(es, "after-idle", KEEL_ES_NO_STREAM, "T", 1, 0, NULL));
  kt_store_close(&s);
  keel_metrics_free(reg);
}

KT_CASE(connections_older_than_the_max_lifetime_are_replaced) {
  KT_PG_ONLY();
  kt_store s;
  char app[64], before[256], after[256];
  keel_es *es =
      open_named(&s, app, sizeof app,
                 (keel_es_opts){.pool_min = 1, .pool_max = 2, .pool_max_lifetime_ms = 150});
  CHECK_OK(kt_append_n(es, "life-1", KEEL_ES_NO_STREAM, "T", 1, 0, NULL));
  CHECK(await_backends(s.url, app, 1, before, sizeof before));
  /* the maintainer replaces it (closed, then opened again up to pool_min) */
  bool replaced = false;
  for (int i = 0; i < 2000 && !replaced; i++) {
    replaced = backends(s.url, app, after, sizeof after) == 1 && strcmp(before, after) != 0;
    if (!replaced) keel_sleep(10);
  }
  CHECK(replaced);
  /* and calls go on without an error all along */
  for (int i = 0; i < 5; i++) {
    CHECK_OK(kt_append_n(es, "life-1", KEEL_ES_ANY, "T", 1, 0, NULL));
    keel_sleep(50);
  }
  kt_store_close(&s);
}

KT_CASE(the_periodic_ping_replaces_dead_idle_connections_before_any_call) {
  KT_PG_ONLY();
  kt_store s;
  char app[64], before[256], after[256];
  keel_metrics *reg;
  CHECK_OK(keel_metrics_new(&reg, 0));
  keel_es *es = open_named(
      &s, app, sizeof app,
      (keel_es_opts){.pool_min = 2, .pool_max = 4, .pool_ping_idle_ms = 50, .metrics = reg});
  CHECK(await_backends(s.url, app, 2, before, sizeof before));
  char sql[256];
  snprintf(sql, sizeof sql,
           "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
           "WHERE application_name = '%s'",
           app);
  CHECK_OK(kt_pg_exec(s.url, sql, NULL, 0));
  bool replaced = false;
  for (int i = 0; i < 2000 && !replaced; i++) {
    replaced = backends(s.url, app, after, sizeof after) == 2 && strcmp(before, after) != 0;
    if (!replaced) keel_sleep(10);
  }
  CHECK(replaced);
  keel_metrics_buf b = {0};
  CHECK_OK(keel_metrics_render(reg, KEEL_METRICS_TEXT, &b));
  CHECK(strstr(b.data, "es_pool_recycled_total{reason=\"dead\"} 2") != NULL);
  keel_metrics_buf_free(&b);
  CHECK_OK(kt_append_n(es, "ping-1", KEEL_ES_NO_STREAM, "T", 1, 0, NULL));
  kt_store_close(&s);
  keel_metrics_free(reg);
}

/* ---- sizing ------------------------------------------------------------------ */

static void sized(int instances, int max_connections, int reserved, size_t want_min,
                  size_t want_max) {
  size_t mn = 0, mx = 0;
  CHECK_OK(keel_es_pool_size(instances, max_connections, reserved, &mn, &mx));
  CHECK_EQ(mn, want_min);
  CHECK_EQ(mx, want_max);
  CHECK(mx * (size_t)instances <= (size_t)max_connections);
}

KT_CASE(the_pool_size_helper_follows_the_reference_formula) {
  /* eventsource-py: usable = int(max * 0.9), per = usable // instances,
   * pool_size = max(2, per // 3), max_overflow = per - pool_size */
  sized(1, 100, -1, 30, 90);
  sized(2, 100, -1, 15, 45);
  sized(4, 100, -1, 7, 22);
  sized(8, 100, -1, 3, 11);
  sized(3, 97, -1, 9, 29);  /* int(97 * 0.9) = 87 */
  sized(4, 100, 20, 6, 20); /* an explicit reserve */
  sized(4, 100, 0, 8, 25);
  sized(30, 100, -1, 2, 3); /* pool_min's floor of 2 */
  sized(90, 100, -1, 1, 1); /* ... but never above pool_max */
  size_t mn, mx;
  CHECK_EQ(keel_es_pool_size(91, 100, -1, &mn, &mx), KEEL_ERANGE);
  CHECK_EQ(keel_es_pool_size(1, 10, 10, &mn, &mx), KEEL_ERANGE);
  CHECK_EQ(keel_es_pool_size(0, 100, -1, &mn, &mx), KEEL_EINVAL);
  CHECK_EQ(keel_es_pool_size(1, 0, -1, &mn, &mx), KEEL_EINVAL);
  CHECK_EQ(keel_es_pool_size(1, 100, -1, NULL, &mx), KEEL_EINVAL);
}

KT_MAIN(KT_ENTRY(the_pool_size_helper_follows_the_reference_formula),
        KT_ENTRY(many_processes_share_two_connections),
        KT_ENTRY(a_call_that_gets_no_connection_in_time_times_out),
        KT_ENTRY(idle_connections_the_server_killed_are_replaced_without_failing_a_call),
        KT_ENTRY(idle_connections_above_pool_min_are_closed_after_the_idle_timeout),
        KT_ENTRY(connections_older_than_the_max_lifetime_are_replaced),
        KT_ENTRY(the_periodic_ping_replaces_dead_idle_connections_before_any_call))
