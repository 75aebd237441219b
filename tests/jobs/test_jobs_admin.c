/* test_jobs_admin.c - the operators' routes for jobs (/admin/jobs) over a
 * real HTTP server on loopback: list with filters, one job, retry and
 * cancel behind the token, the error statuses. */
#define _GNU_SOURCE /* memmem, in kt_http.h */
#include <stdatomic.h>
#include <stdlib.h>

#include "es/es_internal.h"
#include "es/kt_es.h"
#include "http/kt_http.h"
#include "keel/http.h"
#include "keel/jobs.h"

static int failing(keel_job *job, void *ud) {
  (void)ud;
  return keel_job_error(job, KEEL_EIO, "always");
}

static const char *state_of(keel_jobs *j, int64_t id) {
  static char s[32];
  json_t *o = NULL;
  CHECK_OK(keel_jobs_get(j, id, &o));
  snprintf(s, sizeof s, "%s", json_string_value(json_object_get(o, "state")));
  json_decref(o);
  return s;
}

KT_CASE(operators_list_retry_and_cancel_jobs_over_http) {
  kt_store st;
  keel_es *es = kt_store_open(&st, NULL);
  static const keel_job_worker w[] = {{.name = "failing", .perform = failing}};
  static const keel_job_queue q[] = {{.name = "default"}};
  keel_jobs *j = NULL;
  CHECK_OK(keel_jobs_start(
      &(keel_jobs_opts){
          .es = es, .workers = w, .nworkers = 1, .queues = q, .nqueues = 1, .poll_ms = 20},
      &j));
  int64_t bad = 0, later = 0;
  CHECK_OK(
      keel_jobs_enqueue(j, &(keel_job_new){.worker = "failing", .max_attempts = 1}, &bad, NULL));
  CHECK_OK(keel_jobs_enqueue(
      j, &(keel_job_new){.worker = "failing", .queue = "other", .run_in_ms = 3600000}, &later,
      NULL));
  for (int i = 0; i < 3000 && strcmp(state_of(j, bad), "discarded") != 0; i++)
    keel_sleep(10);
  CHECK_STR(state_of(j, bad), "discarded");

  keel_http_router *router = keel_http_router_new();
  CHECK(router != NULL);
  CHECK_EQ(keel_jobs_admin_routes(NULL, router, NULL), KEEL_EINVAL);
  CHECK_OK(keel_jobs_admin_routes(j, router, "s3cret"));
  keel_http_opts ho;
  keel_http_opts_init(&ho);
  ho.host = "127.0.0.1";
  ho.no_listen_fds = true;
  ho.no_access_log = true;
  keel_http_server *srv = NULL;
  CHECK_OK(keel_http_start(&ho, router, &srv));
  int port = keel_http_port(srv);

  json_t *b = NULL;
  CHECK_EQ(kt_request_json(port, "GET", "/admin/jobs", NULL, &b), 200);
  CHECK_EQ(json_array_size(json_object_get(b, "jobs")), (size_t)2);
  json_decref(b);
  CHECK_EQ(kt_request_json(port, "GET", "/admin/jobs?state=discarded", NULL, &b), 200);
  json_t *list = json_object_get(b, "jobs");
  CHECK_EQ(json_array_size(list), (size_t)1);
  json_t *first = json_array_get(list, 0);
  CHECK_EQ(json_integer_value(json_object_get(first, "id")), bad);
  CHECK_STR(json_string_value(
                json_object_get(json_array_get(json_object_get(first, "errors"), 0), "error")),
            "always");
  json_decref(b);
  CHECK_EQ(kt_request_json(port, "GET", "/admin/jobs?limit=0", NULL, NULL), 400);
  char path[128];
  snprintf(path, sizeof path, "/admin/jobs/%lld", (long long)later);
  CHECK_EQ(kt_request_json(port, "GET", path, NULL, &b), 200);
  CHECK_STR(json_string_value(json_object_get(b, "queue")), "other");
  json_decref(b);
  CHECK_EQ(kt_request_json(port, "GET", "/admin/jobs/999999", NULL, NULL), 404);

  /* actions need the token */
  snprintf(path, sizeof path, "/admin/jobs/%lld/cancel", (long long)later);
  CHECK_EQ(kt_request_json(port, "POST", path, NULL, NULL), 401);
  CHECK_EQ(kt_request_json(port, "POST", path, "Bearer wrong", NULL), 401);
  CHECK_STR(state_of(j, later), "available");
  CHECK_EQ(kt_request_json(port, "POST", path, "Bearer s3cret", &b), 200);
  CHECK_STR(json_string_value(json_object_get(b, "action")), "cancelled");
  json_decref(b);
  CHECK_STR(state_of(j, later), "cancelled");
  CHECK_EQ(kt_request_json(port, "POST", path, "Bearer s3cret", NULL), 409); /* finished */
  /* retry: the discarded job runs again (and fails again: one more attempt) */
  snprintf(path, sizeof path, "/admin/jobs/%lld/retry", (long long)bad);
  CHECK_EQ(kt_request_json(port, "POST", path, "Bearer s3cret", NULL), 200);
  json_t *o = NULL;
  for (int i = 0; i < 3000; i++) {
    CHECK_OK(keel_jobs_get(j, bad, &o));
    bool again = json_integer_value(json_object_get(o, "attempt")) == 2 &&
                 strcmp(json_string_value(json_object_get(o, "state")), "discarded") == 0;
    json_decref(o);
    if (again) break;
    keel_sleep(10);
  }
  CHECK_OK(keel_jobs_get(j, bad, &o));
  CHECK_EQ(json_integer_value(json_object_get(o, "attempt")), 2);
  CHECK_EQ(json_array_size(json_object_get(o, "errors")), (size_t)2);
  json_decref(o);
  CHECK_EQ(kt_request_json(port, "POST", "/admin/jobs/999999/retry", "Bearer s3cret", NULL), 404);

  /* the dashboard's panel: a row per queue run here, the janitor's figures */
  CHECK_OK(keel_jobs_maintain(j));
  keel_http_server *adm = kt_admin_port();
  int ap = keel_http_port(adm);
  CHECK_EQ(kt_request_json(ap, "GET", "/admin/panels", NULL, &b), 200);
  bool listed = false;
  json_t *pe;
  size_t pi;
  json_array_foreach(json_object_get(b, "panels"), pi, pe) {
    listed = listed || strcmp(json_string_value(json_object_get(pe, "name")), "jobs") == 0;
  }
  CHECK(listed);
  json_decref(b);
  CHECK_EQ(kt_request_json(ap, "GET", "/admin/panels/jobs", NULL, &b), 200);
  CHECK_STR(json_string_value(json_object_get(b, "title")), "Job queues");
  json_t *rows = json_object_get(b, "data");
  CHECK_EQ(json_array_size(rows), (size_t)1); /* "other" is not run here */
  json_t *row = json_array_get(rows, 0);
  CHECK_STR(json_string_value(json_object_get(row, "queue")), "default");
  CHECK_EQ(json_integer_value(json_object_get(row, "depth")), 0);
  CHECK_EQ(json_integer_value(json_object_get(row, "running")), 0);
  CHECK_EQ(json_integer_value(json_object_get(row, "failed_last_hour")), 1);
  CHECK_EQ(json_integer_value(json_object_get(row, "concurrency")), 10);
  CHECK(json_is_false(json_object_get(row, "paused")));
  json_decref(b);
  /* paused shows after the next round */
  CHECK_OK(keel_jobs_pause(j, "default"));
  CHECK_OK(keel_jobs_maintain(j));
  CHECK_EQ(kt_request_json(ap, "GET", "/admin/panels/jobs", NULL, &b), 200);
  CHECK(json_is_true(json_object_get(json_array_get(json_object_get(b, "data"), 0), "paused")));
  json_decref(b);
  keel_http_stop(adm);

  keel_http_stop(srv);
  keel_jobs_stop(j, 1000);
  /* stopping the jobs took their panel away (j is freed) */
  CHECK_EQ(keel_admin_panel_unregister("jobs"), KEEL_ENOENT);
  kt_store_close(&st);
}

/* Runs until killed; says which process it is. */
static _Atomic keel_pid_t hung;
static int hangs(keel_job *job, void *ud) {
  (void)job, (void)ud;
  atomic_store(&hung, keel_self());
  for (;;)
    keel_sleep(5);
  return 0;
}

/* The admin endpoint of an instance that runs no queue cancels a job that
 * runs on another ("a"): the attempt's process there is killed (PostgreSQL:
 * the cancel's NOTIFY; SQLite: a's janitor round, the fallback, run here by
 * keel_jobs_maintain), and a second cancel answers 409. */
KT_CASE(the_admin_cancel_kills_the_attempt_on_another_instance) {
  atomic_store(&hung, 0);
  kt_store st;
  keel_es *es = kt_store_open(&st, NULL);
  keel_es *es2 = NULL;
  CHECK_OK(keel_es_open(&(keel_es_opts){.url = st.url}, &es2));
  /* PostgreSQL: a's listener is up before the cancel's NOTIFY goes out */
  for (int i = 0; i < 3000 && kt_es_pg_url() && !keel__es_notify_listening(es); i++)
    keel_sleep(10);
  static const keel_job_worker w[] = {
      {.name = "hangs", .perform = hangs, .timeout_ms = KEEL_INFINITY}};
  static const keel_job_queue q[] = {{.name = "default"}};
  keel_jobs *a = NULL, *b = NULL;
  CHECK_OK(keel_jobs_start(&(keel_jobs_opts){.es = es,
                                             .workers = w,
                                             .nworkers = 1,
                                             .queues = q,
                                             .nqueues = 1,
                                             .poll_ms = 20,
                                             .instance = "a"},
                           &a));
  CHECK_OK(keel_jobs_start(&(keel_jobs_opts){.es = es2, .instance = "b"}, &b));
  int64_t id = 0;
  CHECK_OK(keel_jobs_enqueue(b, &(keel_job_new){.worker = "hangs"}, &id, NULL));
  for (int i = 0; i < 3000 && !atomic_load(&hung); i++)
    keel_sleep(10);
  keel_pid_t pid = atomic_load(&hung);
  CHECK(pid != 0);

  keel_http_router *router = keel_http_router_new();
  CHECK(router != NULL);
  CHECK_OK(keel_jobs_admin_routes(b, router, "s3cret"));
  keel_http_opts ho;
  keel_http_opts_init(&ho);
  ho.host = "127.0.0.1";
  ho.no_listen_fds = true;
  ho.no_access_log = true;
  keel_http_server *srv = NULL;
  CHECK_OK(keel_http_start(&ho, router, &srv));
  int port = keel_http_port(srv);
  char path[128];
  snprintf(path, sizeof path, "/admin/jobs/%lld/cancel", (long long)id);
  CHECK_EQ(kt_request_json(port, "POST", path, "Bearer s3cret", NULL), 200);
  if (!kt_es_pg_url()) CHECK_OK(keel_jobs_maintain(a)); /* no NOTIFY on SQLite */
  for (int i = 0; i < 2000 && keel_is_alive(pid); i++)  /* a bound only */
    keel_sleep(10);
  CHECK(!keel_is_alive(pid));
  CHECK_STR(state_of(a, id), "cancelled");
  CHECK_EQ(kt_request_json(port, "POST", path, "Bearer s3cret", NULL), 409);
  keel_http_stop(srv);
  keel_jobs_stop(b, 1000);
  keel_jobs_stop(a, 1000);
  keel_es_close(es2);
  kt_store_close(&st);
}

KT_MAIN(KT_ENTRY_SCHED(operators_list_retry_and_cancel_jobs_over_http, 2),
        KT_ENTRY_SCHED(the_admin_cancel_kills_the_attempt_on_another_instance, 2))
