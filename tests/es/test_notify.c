/* test_notify.c - keel_es_wait: appends wake waiting readers, on both
 * backends; on PostgreSQL also across instances (LISTEN/NOTIFY), through a
 * killed LISTEN connection (polling, then the reconnect), and behind the
 * horizon (a notified event that read_all cannot return yet). No verdict
 * rests on speed: "promptly" means "long before a long timeout". */
#include <pthread.h>
#include <time.h>

#include "es/es_internal.h"
#include "es/kt_es.h"
#include "keel/metrics.h"

enum { LONG_MS = 60000 };

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* A process that waits once and reports (a message to parent). */
typedef struct waiter_arg {
  keel_es *es;
  int64_t after, timeout;
  keel_pid_t parent;
  int rc;
  int64_t head;
  double secs;
} waiter_arg;

static void waiter(void *arg) {
  waiter_arg *a = arg;
  double t0 = now_s();
  a->rc = keel_es_wait(a->es, a->after, a->timeout, &a->head);
  a->secs = now_s() - t0;
  keel_send(a->parent, keel_msg_new(1, 0));
}

static keel_pid_t spawn_waiter(waiter_arg *a, keel_es *es, int64_t after, int64_t timeout) {
  *a = (waiter_arg){.es = es, .after = after, .timeout = timeout, .parent = keel_self(), .rc = 1};
  keel_pid_t pid;
  CHECK_OK(keel_spawn(waiter, a, NULL, &pid));
  return pid;
}

/* Until n processes are inside keel_es_wait on es. */
static void until_waiting(keel_es *es, size_t n) {
  for (int i = 0; keel__es_notify_waiting(es) < n; i++) {
    CHECK(i < LONG_MS);
    keel_sleep(1);
  }
}

static void report(void) {
  keel_msg_t *m;
  CHECK_OK(keel_receive(&m, LONG_MS));
  keel_msg_free(m);
}

/* Until the store's LISTEN connection is up (it is made after open). */
static void until_listening(keel_es *es) {
  for (int i = 0; !keel__es_notify_listening(es); i++) {
    CHECK(i < LONG_MS);
    keel_sleep(1);
  }
}

static double metric(keel_metrics *reg, const char *name) {
  keel_metrics_buf b = {0};
  CHECK_OK(keel_metrics_render(reg, KEEL_METRICS_TEXT, &b));
  char key[128];
  snprintf(key, sizeof key, "\n%s ", name);
  const char *p = strstr(b.data, key);
  double v = p ? strtod(p + strlen(key), NULL) : -1;
  keel_metrics_buf_free(&b);
  return v;
}

KT_CASE(a_waiter_is_woken_by_an_append_from_another_process) {
  kt_store s;
  keel_es *es = kt_store_open(&s, &(keel_es_opts){.notify_poll_ms = KEEL_INFINITY});
  keel_es_append_result r0, r1;
  CHECK_OK(kt_append_n(es, "a-1", KEEL_ES_NO_STREAM, "T", 2, 0, &r0));
  waiter_arg w;
  spawn_waiter(&w, es, r0.last_position, LONG_MS);
  until_waiting(es, 1);
  CHECK_EQ(w.rc, 1); /* still waiting */
  CHECK_OK(kt_append_n(es, "a-1", KEEL_ES_ANY, "T", 3, 2, &r1));
  report();
  CHECK_OK(w.rc);
  CHECK_EQ(w.head, r1.last_position);
  CHECK(w.secs < LONG_MS / 2000.0); /* woken, not polled (no polling), not timed out */
  /* and read_all(after) has the events */
  keel_es_events evs;
  CHECK_OK(keel_es_read_all(es, r0.last_position, 0, NULL, &evs));
  CHECK_EQ(evs.n, 3);
  keel_es_events_free(&evs);
  kt_store_close(&s);
}

KT_CASE(a_wait_times_out_when_nothing_comes) {
  kt_store s;
  keel_es *es = kt_store_open(&s, &(keel_es_opts){.notify_poll_ms = 50});
  CHECK_OK(kt_append_n(es, "t-1", KEEL_ES_NO_STREAM, "T", 1, 0, NULL));
  int64_t head = 99;
  double t0 = now_s();
  CHECK_EQ(keel_es_wait(es, 1, 300, &head), KEEL_ETIMEDOUT);
  CHECK(now_s() - t0 >= 0.29);
  CHECK_EQ(head, 0);
  CHECK_EQ(keel__es_notify_waiting(es), 0);
  kt_store_close(&s);
}

KT_CASE(nowait_only_checks) {
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  int64_t head = 99;
  CHECK_EQ(keel_es_wait(es, 0, KEEL_NOWAIT, &head), KEEL_ETIMEDOUT);
  CHECK_EQ(head, 0);
  keel_es_append_result r;
  CHECK_OK(kt_append_n(es, "n-1", KEEL_ES_NO_STREAM, "T", 2, 0, &r));
  CHECK_OK(keel_es_wait(es, 0, KEEL_NOWAIT, &head));
  CHECK_EQ(head, r.last_position);
  CHECK_EQ(keel_es_wait(es, r.last_position, KEEL_NOWAIT, &head), KEEL_ETIMEDOUT);
  kt_store_close(&s);
}

KT_CASE(a_waiter_below_the_head_returns_at_once) {
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  keel_es_append_result r;
  CHECK_OK(kt_append_n(es, "b-1", KEEL_ES_NO_STREAM, "T", 3, 0, &r));
  int64_t head = 0;
  CHECK_OK(keel_es_wait(es, r.first_position, KEEL_INFINITY, &head));
  CHECK_EQ(head, r.last_position);
  CHECK_OK(keel_es_wait(es, 0, 0, NULL)); /* default timeout, head not wanted */
  kt_store_close(&s);
}

KT_CASE(many_waiters_are_woken_by_one_append) {
  kt_store s;
  keel_es *es = kt_store_open(&s, &(keel_es_opts){.notify_poll_ms = KEEL_INFINITY});
  keel_es_append_result r;
  enum { N = 40 };
  static waiter_arg w[N];
  for (int i = 0; i < N; i++)
    spawn_waiter(&w[i], es, 0, LONG_MS);
  until_waiting(es, N);
  CHECK_OK(kt_append_n(es, "m-1", KEEL_ES_NO_STREAM, "T", 1, 0, &r));
  for (int i = 0; i < N; i++)
    report();
  for (int i = 0; i < N; i++) {
    CHECK_OK(w[i].rc);
    CHECK_EQ(w[i].head, r.last_position);
    CHECK(w[i].secs < LONG_MS / 2000.0);
  }
  kt_store_close(&s);
}

KT_CASE(waiters_beyond_the_append_keep_waiting) {
  kt_store s;
  keel_es *es = kt_store_open(&s, &(keel_es_opts){.notify_poll_ms = KEEL_INFINITY});
  keel_es_append_result r;
  waiter_arg far;
  spawn_waiter(&far, es, 2, LONG_MS); /* wants position 3 */
  until_waiting(es, 1);
  CHECK_OK(kt_append_n(es, "f-1", KEEL_ES_NO_STREAM, "T", 2, 0, &r));
  CHECK_EQ(r.last_position, 2);
  keel_msg_t *m;
  CHECK_EQ(keel_receive(&m, 200), KEEL_ETIMEDOUT); /* not yet */
  CHECK_OK(kt_append_n(es, "f-1", KEEL_ES_ANY, "T", 1, 2, &r));
  report();
  CHECK_OK(far.rc);
  CHECK_EQ(far.head, 3);
  kt_store_close(&s);
}

KT_CASE(appends_through_another_handle_on_the_file_are_seen_by_polling) {
  KT_SQLITE_ONLY(); /* another writer on the same file: as another OS process would be */
  kt_store s;
  keel_es *a = kt_store_open(&s, &(keel_es_opts){.notify_poll_ms = 100});
  keel_es *b;
  CHECK_OK(keel_es_open(&(keel_es_opts){.url = s.url}, &b));
  waiter_arg w;
  spawn_waiter(&w, a, 0, LONG_MS);
  until_waiting(a, 1);
  keel_es_append_result r;
  CHECK_OK(kt_append_n(b, "o-1", KEEL_ES_NO_STREAM, "T", 1, 0, &r));
  report();
  CHECK_OK(w.rc);
  CHECK_EQ(w.head, r.last_position);
  keel_es_close(b);
  kt_store_close(&s);
}

static void *outside(void *arg) {
  keel_es *es = arg;
  int64_t head;
  return (void *)(intptr_t)keel_es_wait(es, 0, KEEL_NOWAIT, &head);
}

KT_CASE(bad_arguments_are_refused) {
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  int64_t head;
  CHECK_EQ(keel_es_wait(NULL, 0, 10, &head), KEEL_EINVAL);
  CHECK_EQ(keel_es_wait(es, -1, 10, &head), KEEL_EINVAL);
  CHECK_EQ(keel_es_wait(es, 0, -7, &head), KEEL_EINVAL);
  pthread_t t;
  void *rc;
  CHECK_OK(pthread_create(&t, NULL, outside, es));
  CHECK_OK(pthread_join(t, &rc));
  CHECK_EQ((intptr_t)rc, KEEL_ENOTPROC);
  kt_store_close(&s);
}

KT_CASE(close_with_a_waiter_pending_cancels_it) {
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  waiter_arg w;
  spawn_waiter(&w, es, 0, KEEL_INFINITY);
  until_waiting(es, 1);
  keel_es_close(es);
  s.es = NULL;
  report();
  CHECK_EQ(w.rc, KEEL_ECANCELED);
  kt_store_rmdir(&s);
}

KT_CASE(a_killed_waiter_leaves_nothing_behind) {
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  waiter_arg w[3];
  keel_pid_t pid[3];
  for (int i = 0; i < 3; i++)
    pid[i] = spawn_waiter(&w[i], es, 0, KEEL_INFINITY);
  until_waiting(es, 3);
  keel_ref_t mon;
  CHECK_OK(keel_monitor(pid[0], &mon));
  CHECK_OK(keel_exit_signal(pid[0], KEEL_REASON_KILL, NULL));
  keel_msg_t *m;
  CHECK_OK(keel_receive(&m, LONG_MS)); /* its DOWN */
  CHECK_EQ(keel_msg_kind_of(m), KEEL_MSG_DOWN);
  keel_msg_free(m);
  /* the others are woken as usual, the dead one's wake-up is dropped */
  CHECK_OK(kt_append_n(es, "k-1", KEEL_ES_NO_STREAM, "T", 1, 0, NULL));
  report();
  report();
  CHECK_OK(w[1].rc);
  CHECK_OK(w[2].rc);
  /* one more, killed and never woken: close finds it dead (LeakSanitizer
   * checks that its waiter is freed) */
  pid[0] = spawn_waiter(&w[0], es, 5, KEEL_INFINITY);
  until_waiting(es, 2); /* it, and the first one's waiter, not pruned yet */
  CHECK_OK(keel_exit_signal(pid[0], KEEL_REASON_KILL, NULL));
  kt_store_close(&s);
}

/* ---- PostgreSQL: other instances, the listener, the horizon ------------------------- */

KT_CASE(an_append_from_another_instance_wakes_a_waiter) {
  KT_PG_ONLY();
  kt_store s;
  /* no polling: only the NOTIFY can wake it */
  keel_es *a = kt_store_open(&s, &(keel_es_opts){.notify_poll_ms = KEEL_INFINITY});
  keel_es *b;
  CHECK_OK(keel_es_open(&(keel_es_opts){.url = s.url}, &b));
  until_listening(a);
  until_listening(b);
  for (int round = 0; round < 3; round++) {
    int64_t head;
    CHECK_OK(keel_es_head(a, &head));
    waiter_arg w;
    spawn_waiter(&w, a, head, LONG_MS);
    until_waiting(a, 1);
    keel_es_append_result r;
    CHECK_OK(kt_append_n(b, "x-1", KEEL_ES_ANY, "T", 1, round, &r));
    report();
    CHECK_OK(w.rc);
    CHECK_EQ(w.head, r.last_position);
    CHECK(w.secs < LONG_MS / 2000.0);
  }
  keel_es_close(b);
  kt_store_close(&s);
}

KT_CASE(two_stores_in_one_database_do_not_wake_each_other) {
  KT_PG_ONLY();
  kt_store s1, s2;
  keel_es *a = kt_store_open(&s1, &(keel_es_opts){.notify_poll_ms = KEEL_INFINITY});
  keel_es *b = kt_store_open(&s2, NULL);
  until_listening(a);
  until_listening(b);
  waiter_arg w;
  spawn_waiter(&w, a, 0, 500);
  until_waiting(a, 1);
  CHECK_OK(kt_append_n(b, "o-1", KEEL_ES_NO_STREAM, "T", 1, 0, NULL));
  report();
  CHECK_EQ(w.rc, KEEL_ETIMEDOUT);
  CHECK(w.secs >= 0.49);
  kt_store_close(&s2);
  kt_store_close(&s1);
}

/* Terminates the LISTEN connections of the store in `schema` (its channel
 * is keel_es_<schema>; its last statement names it). */
static int kill_listeners(const char *url, const char *schema) {
  PGconn *c = PQconnectdb(url);
  CHECK(PQstatus(c) == CONNECTION_OK);
  char sql[256];
  snprintf(sql, sizeof sql,
           "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
           "WHERE application_name = 'keel_es_listen' AND query LIKE '%%keel_es_%s%%'",
           schema);
  PGresult *r = PQexec(c, sql);
  CHECK(PQresultStatus(r) == PGRES_TUPLES_OK);
  int n = PQntuples(r);
  PQclear(r);
  PQfinish(c);
  return n;
}

KT_CASE(a_killed_listen_connection_falls_back_to_polling_and_reconnects) {
  KT_PG_ONLY();
  keel_metrics *reg;
  CHECK_OK(keel_metrics_new(&reg, 0));
  kt_store s;
  keel_es *a = kt_store_open(&s, &(keel_es_opts){.metrics = reg, .notify_poll_ms = 200});
  until_listening(a);
  CHECK_EQ(metric(reg, "es_listen_up"), 1);
  CHECK_EQ(metric(reg, "es_listen_reconnects_total"), 0);
  /* another instance that does not NOTIFY: only polling can tell a */
  keel_es *b;
  CHECK_OK(keel_es_open(&(keel_es_opts){.url = s.url, .no_listen = true}, &b));
  CHECK_EQ(kill_listeners(s.url, s.schema), 1);
  int64_t head;
  CHECK_OK(keel_es_head(a, &head));
  waiter_arg w;
  spawn_waiter(&w, a, head, LONG_MS);
  until_waiting(a, 1);
  keel_es_append_result r;
  CHECK_OK(kt_append_n(b, "p-1", KEEL_ES_NO_STREAM, "T", 1, 0, &r));
  report();
  CHECK_OK(w.rc);
  CHECK_EQ(w.head, r.last_position);
  /* the listener comes back on its own */
  for (int i = 0; metric(reg, "es_listen_reconnects_total") < 1; i++) {
    CHECK(i < LONG_MS / 10);
    keel_sleep(10);
  }
  CHECK_EQ(metric(reg, "es_listen_up"), 1);
  keel_es_close(b);
  kt_store_close(&s);
  keel_metrics_free(reg);
}

KT_CASE(with_listen_off_other_instances_are_seen_by_polling) {
  KT_PG_ONLY();
  kt_store s;
  keel_es *a = kt_store_open(&s, &(keel_es_opts){.no_listen = true, .notify_poll_ms = 100});
  keel_es *b;
  CHECK_OK(keel_es_open(&(keel_es_opts){.url = s.url, .no_listen = true}, &b));
  CHECK(a->notify && b->notify);
  waiter_arg w;
  spawn_waiter(&w, a, 0, LONG_MS);
  until_waiting(a, 1);
  keel_es_append_result r;
  CHECK_OK(kt_append_n(b, "q-1", KEEL_ES_NO_STREAM, "T", 1, 0, &r));
  report();
  CHECK_OK(w.rc);
  CHECK_EQ(w.head, r.last_position);
  keel_es_close(b);
  kt_store_close(&s);
}

KT_CASE(with_listen_off_own_appends_still_wake_at_once) {
  KT_PG_ONLY();
  kt_store s;
  keel_es *a =
      kt_store_open(&s, &(keel_es_opts){.no_listen = true, .notify_poll_ms = KEEL_INFINITY});
  waiter_arg w;
  spawn_waiter(&w, a, 0, LONG_MS);
  until_waiting(a, 1);
  keel_es_append_result r;
  CHECK_OK(kt_append_n(a, "q-1", KEEL_ES_NO_STREAM, "T", 1, 0, &r));
  report();
  CHECK_OK(w.rc);
  CHECK_EQ(w.head, r.last_position);
  kt_store_close(&s);
}

KT_CASE(a_notified_event_behind_the_horizon_is_waited_for_without_spinning) {
  KT_PG_ONLY();
  keel_metrics *reg;
  CHECK_OK(keel_metrics_new(&reg, 0));
  kt_store s;
  keel_es *es = kt_store_open(&s, &(keel_es_opts){.metrics = reg});
  keel_es_append_result r0, rb;
  CHECK_OK(kt_append_n(es, "h-1", KEEL_ES_NO_STREAM, "T", 1, 0, &r0));
  /* a second writer holds a lower position, uncommitted (test_horizon.c) */
  PGconn *c = PQconnectdb(s.url);
  CHECK(PQstatus(c) == CONNECTION_OK);
  PQclear(kt_pg_run(c, "BEGIN"));
  PGresult *res = kt_pg_run(c, "SELECT keel_es_reserve(1)");
  long long late = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
  PQclear(res);
  char sql[512];
  snprintf(sql, sizeof sql,
           "INSERT INTO events (position, stream, version, id, type, schema_version, payload, "
           "occurred_at, stored_at) VALUES (%lld, 'late-1', 1, gen_random_uuid(), 'Late', 1, "
           "'{}', 0, 0)",
           late);
  PQclear(kt_pg_run(c, sql));
  waiter_arg w;
  spawn_waiter(&w, es, r0.last_position, LONG_MS);
  until_waiting(es, 1);
  double checks0 = metric(reg, "es_wait_checks_total");
  CHECK_OK(kt_append_n(es, "h-2", KEEL_ES_NO_STREAM, "T", 1, 0, &rb)); /* wakes it */
  CHECK(rb.last_position > late);
  keel_msg_t *m;
  CHECK_EQ(keel_receive(&m, 600), KEEL_ETIMEDOUT); /* read_all has nothing: it waits on */
  double checks = metric(reg, "es_wait_checks_total") - checks0;
  /* 10, 20, 40, ... 200 ms: about 7 reads in 600 ms; a spin would make thousands */
  fprintf(stderr, "   head reads while the horizon held it for 600 ms: %.0f\n", checks);
  CHECK(checks >= 1);
  CHECK(checks <= 40);
  keel_es_events evs;
  CHECK_OK(keel_es_read_all(es, r0.last_position, 0, NULL, &evs));
  CHECK_EQ(evs.n, 0);
  keel_es_events_free(&evs);
  PQclear(kt_pg_run(c, "COMMIT"));
  report();
  CHECK_OK(w.rc);
  CHECK_EQ(w.head, rb.last_position);
  CHECK_OK(keel_es_read_all(es, r0.last_position, 0, NULL, &evs));
  CHECK_EQ(evs.n, 2);
  keel_es_events_free(&evs);
  PQfinish(c);
  kt_store_close(&s);
  keel_metrics_free(reg);
}

KT_MAIN(KT_ENTRY(a_waiter_is_woken_by_an_append_from_another_process),
        KT_ENTRY(a_wait_times_out_when_nothing_comes), KT_ENTRY(nowait_only_checks),
        KT_ENTRY(a_waiter_below_the_head_returns_at_once),
        KT_ENTRY(many_waiters_are_woken_by_one_append),
        KT_ENTRY(waiters_beyond_the_append_keep_waiting),
        KT_ENTRY(appends_through_another_handle_on_the_file_are_seen_by_polling),
        KT_ENTRY(bad_arguments_are_refused), KT_ENTRY(close_with_a_waiter_pending_cancels_it),
        KT_ENTRY(a_killed_waiter_leaves_nothing_behind),
        KT_ENTRY(an_append_from_another_instance_wakes_a_waiter),
        KT_ENTRY(two_stores_in_one_database_do_not_wake_each_other),
        KT_ENTRY(a_killed_listen_connection_falls_back_to_polling_and_reconnects),
        KT_ENTRY(with_listen_off_other_instances_are_seen_by_polling),
        KT_ENTRY(with_listen_off_own_appends_still_wake_at_once),
        KT_ENTRY(a_notified_event_behind_the_horizon_is_waited_for_without_spinning))
