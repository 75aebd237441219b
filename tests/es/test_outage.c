/* test_outage.c - PostgreSQL down, or gone mid-call: a clear error, nothing
 * half-done, and the pool recovers when the server is back.
 *
 *  - a server that is not there: keel_es_open fails with KEEL_EIO (logged
 *    with libpq's reason), promptly, and leaves nothing behind;
 *  - every backend of the store terminated (what a server restart does to
 *    its sessions) while a statement runs: that call fails with KEEL_EIO,
 *    the next calls succeed on new connections, and an append that failed
 *    stored nothing (the stream's version is unchanged).
 * PostgreSQL only (on SQLite there is no server to lose). */
#include <pthread.h>

#include "es/kt_es.h"

KT_CASE(a_server_that_is_not_there_is_a_clear_error_at_open) {
  KT_PG_ONLY();
  /* port 1 on loopback: nothing listens there (connection refused at once) */
  keel_es *es = NULL;
  int rc = keel_es_open(
      &(keel_es_opts){.url = "postgresql://keel@127.0.0.1:1/keel?connect_timeout=2"}, &es);
  CHECK_EQ(rc, KEEL_EIO);
  CHECK(es == NULL);
}

static int terminate(const char *url, const char *app, const char *extra) {
  char sql[400];
  snprintf(sql, sizeof sql,
           "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
           "WHERE application_name = '%s' %s",
           app, extra);
  return kt_pg_exec(url, sql, NULL, 0);
}

static int active_sleepers(const char *url, const char *app) {
  PGconn *c = PQconnectdb(url);
  CHECK(PQstatus(c) == CONNECTION_OK);
  char sql[300];
  snprintf(sql, sizeof sql,
           "SELECT count(*) FROM pg_stat_activity WHERE application_name = '%s' "
           "AND state = 'active' AND query LIKE '%%pg_sleep%%'",
           app);
  PGresult *r = PQexec(c, sql);
  int n = PQresultStatus(r) == PGRES_TUPLES_OK ? atoi(PQgetvalue(r, 0, 0)) : -1;
  PQclear(r);
  PQfinish(c);
  return n;
}

enum { TAG_DONE = 3 };

typedef struct sleeper {
  keel_es *es;
  keel_pid_t parent;
  int rc;
} sleeper;

static void sleep_query(void *arg) {
  sleeper *s = arg;
  s->rc = keel_es_query(s->es, "SELECT pg_sleep(20)", NULL, 0, NULL);
  kt_send_u64(s->parent, TAG_DONE, 0);
}

KT_CASE(backends_killed_mid_call_fail_that_call_and_the_pool_recovers) {
  KT_PG_ONLY();
  kt_store s;
  kt_store_mkdir(&s);
  char app[64], url[1400];
  snprintf(app, sizeof app, "kt_outage_%d", (int)getpid());
  snprintf(url, sizeof url, "%s&application_name=%s", s.url, app);
  keel_es *es;
  CHECK_OK(keel_es_open(&(keel_es_opts){.url = url, .pool_min = 2, .pool_max = 4,
                                        .no_listen = true},
                        &es));
  CHECK_OK(kt_append_n(es, "o-1", KEEL_ES_NO_STREAM, "T", 2, 0, NULL));

  /* a statement in flight when the server drops every session */
  sleeper sl = {.es = es, .parent = keel_self(), .rc = 1};
  CHECK_OK(keel_spawn(sleep_query, &sl, NULL, NULL));
  for (int i = 0; i < 2000 && active_sleepers(s.url, app) < 1; i++)
    keel_sleep(10);
  CHECK_EQ(active_sleepers(s.url, app), 1);
  CHECK_OK(terminate(s.url, app, ""));
  keel_msg_free(kt_recv(30000));
  CHECK_EQ(sl.rc, KEEL_EIO); /* that call: a clear error, at once (not after 20 s) */

  /* the pool is back: appends and reads work on new connections */
  keel_es_append_result r;
  CHECK_OK(kt_append_n(es, "o-1", 2, "T", 1, 0, &r));
  CHECK_EQ(r.version, 3);
  keel_es_events evs;
  CHECK_OK(keel_es_read_stream(es, "o-1", NULL, &evs));
  CHECK_EQ(evs.n, 3);
  keel_es_events_free(&evs);

  /* again, with every idle connection gone too: still no failed call after */
  CHECK_OK(terminate(s.url, app, ""));
  for (int i = 0; i < 5; i++)
    CHECK_OK(kt_append_n(es, "o-2", KEEL_ES_ANY, "T", 1, i, NULL));
  keel_es_stream_info info;
  CHECK_OK(keel_es_stream_info_get(es, "o-2", &info));
  CHECK_EQ(info.version, 5);
  keel_es_stream_info_free(&info);
  keel_es_close(es);
  kt_store_rmdir(&s);
}

/* Each call that opens a transaction (an append keel_es_transact makes, a
 * soft delete, a snapshot save, a stream read), made right after every
 * session was terminated: the pool's idle check can pass a connection whose
 * backend is ending, its FATAL not yet on the socket. The call's BEGIN then
 * fails; nothing was done, so the call takes another connection instead of
 * failing (only the group append did, and only its test caught the race). */
KT_CASE(a_transaction_begun_on_a_connection_just_ended_is_begun_again) {
  KT_PG_ONLY();
  kt_store s;
  kt_store_mkdir(&s);
  char app[64], url[1400];
  snprintf(app, sizeof app, "kt_begin_%d", (int)getpid());
  snprintf(url, sizeof url, "%s&application_name=%s", s.url, app);
  keel_es *es;
  CHECK_OK(keel_es_open(&(keel_es_opts){.url = url, .pool_min = 2, .pool_max = 4,
                                        .no_listen = true},
                        &es));
  json_t *state = json_pack("{s:i}", "n", 1);
  for (int round = 0; round < 10; round++) {
    char stream[32];
    snprintf(stream, sizeof stream, "b-%d", round);
    keel_es_event_in ev = {.type = "T", .payload = state};
    keel_es_append_req req = {.stream = stream, .expected = KEEL_ES_NO_STREAM, .events = &ev,
                              .n = 1};
    keel_es_append_result res;
    CHECK_OK(terminate(s.url, app, ""));
    CHECK_OK(keel_es_transact(es, &req, 1, &res, NULL, NULL, NULL));
    CHECK_OK(terminate(s.url, app, ""));
    CHECK_OK(keel_es_snapshot_save(es, stream, 1, 1, state, NULL));
    CHECK_OK(terminate(s.url, app, ""));
    keel_es_events evs;
    CHECK_OK(keel_es_read_stream(es, stream, NULL, &evs));
    CHECK_EQ(evs.n, 1);
    keel_es_events_free(&evs);
    CHECK_OK(terminate(s.url, app, ""));
    CHECK_OK(keel_es_delete_stream(es, stream, 1));
  }
  json_decref(state);
  keel_es_close(es);
  kt_store_rmdir(&s);
}

KT_MAIN(KT_ENTRY(a_server_that_is_not_there_is_a_clear_error_at_open),
        KT_ENTRY(backends_killed_mid_call_fail_that_call_and_the_pool_recovers),
        KT_ENTRY(a_transaction_begun_on_a_connection_just_ended_is_begun_again))
