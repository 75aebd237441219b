/* test_jobs_service.c - durable jobs in keel_service_main's stop, in the
 * reference's order: the API drains, then the jobs' drain phase (the
 * runners stop fetching; running jobs get what is left of
 * SHUTDOWN_TIMEOUT; one cut off goes back to available, its attempt given
 * back), then the service's prep_stop, the tree, and the stop hook, where
 * keel_jobs_stop only frees (the heartbeat row goes) before the store
 * closes. On SQLite, and on PostgreSQL as jobs.pg.test_jobs_service.
 *
 * The program is the service: main sets the environment (free ports,
 * SHUTDOWN_TIMEOUT=10s) and calls keel_service_main; the start hook starts
 * the jobs and a process that sends SIGTERM once both jobs run. A job of 6 s
 * outlives keel_jobs_stop's default budget (5 s) but not the service's (10 s
 * less the API's drain and a fifth kept for the tree), so it completes only
 * if the phase passes the service's budget; a job that never ends is cut
 * off. The verdicts are checked after keel_service_main returns.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <unistd.h>

#include "es/kt_es.h"
#include "keel/jobs.h"
#include "keel/service.h"

static kt_store st;
static keel_es *es;
static keel_jobs *jobs;
static int64_t slow_id, hang_id;
static atomic_int running, hang_flag = 1;

/* what the phases saw, in order */
static atomic_int step; /* 1: the test's phase ran, 2: prep_stop, 3: stop */
static char phase_slow[16], phase_hang[16];
static int64_t phase_hang_attempt = -1, phase_budget = -1;
static int prep_saw_step = -1, stop_saw_step = -1;
static size_t stop_instances = 99;

static int slow(keel_job *job, void *ud) {
  (void)job, (void)ud;
  atomic_fetch_add(&running, 1);
  keel_sleep(6000);
  return 0;
}

static int hang(keel_job *job, void *ud) {
  (void)job, (void)ud;
  atomic_fetch_add(&running, 1);
  while (atomic_load(&hang_flag))
    keel_sleep(10);
  return 0;
}

static const keel_job_worker workers[] = {{.name = "slow", .perform = slow},
                                          {.name = "hang", .perform = hang}};
static const keel_job_queue queues[] = {{.name = "default", .concurrency = 2}};

static void state_of(int64_t id, char *out, size_t n, int64_t *attempt) {
  json_t *o = NULL;
  if (keel_jobs_get(jobs, id, &o) != 0) return;
  snprintf(out, n, "%s", json_string_value(json_object_get(o, "state")));
  if (attempt) *attempt = json_integer_value(json_object_get(o, "attempt"));
  json_decref(o);
}

/* Registered before the jobs start, so it runs after their phase. */
static void test_phase(void *ud, int64_t budget_ms) {
  (void)ud;
  phase_budget = budget_ms;
  state_of(slow_id, phase_slow, sizeof phase_slow, NULL);
  state_of(hang_id, phase_hang, sizeof phase_hang, &phase_hang_attempt);
  atomic_store(&step, 1);
}

static void terminator(void *arg) {
  (void)arg;
  while (atomic_load(&running) < 2)
    keel_sleep(10);
  kill(getpid(), SIGTERM);
}

static int svc_start(void *cfg, keel_pid_t root) {
  (void)cfg, (void)root;
  keel_es_opts eo = {.url = st.url};
  if (st.database[0]) eo.session_url = st.admin_url;
  int rc = keel_es_open(&eo, &es);
  if (rc) return rc;
  if ((rc = keel_service_on_drain("test", test_phase, NULL)) != 0) return rc;
  rc = keel_jobs_start(&(keel_jobs_opts){.es = es,
                                         .workers = workers,
                                         .nworkers = 2,
                                         .queues = queues,
                                         .nqueues = 1,
                                         .poll_ms = 50,
                                         .service_drain = true},
                       &jobs);
  if (rc) return rc;
  if ((rc = keel_jobs_enqueue(jobs, &(keel_job_new){.worker = "slow"}, &slow_id, NULL)) != 0)
    return rc;
  if ((rc = keel_jobs_enqueue(jobs, &(keel_job_new){.worker = "hang"}, &hang_id, NULL)) != 0)
    return rc;
  return keel_spawn(terminator, NULL, NULL, NULL);
}

static void svc_prep_stop(void *cfg) {
  (void)cfg;
  prep_saw_step = atomic_load(&step);
  atomic_store(&step, 2);
}

static void svc_stop(void *cfg) {
  (void)cfg;
  stop_saw_step = atomic_load(&step);
  atomic_store(&step, 3);
  keel_jobs_stop(jobs, 0); /* drained already: it frees */
  keel_es_rows rows = {0};
  if (keel_es_query(es, "SELECT instance FROM keel_jobs_instances", NULL, 0, &rows) == 0)
    stop_instances = rows.nrows;
  keel_es_rows_free(&rows);
  keel_service_off_drain(test_phase, NULL);
  keel_es_close(es);
  atomic_store(&hang_flag, 0);
}

static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  CHECK(fd >= 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  CHECK(bind(fd, (struct sockaddr *)&a, sizeof a) == 0);
  socklen_t len = sizeof a;
  CHECK(getsockname(fd, (struct sockaddr *)&a, &len) == 0);
  close(fd);
  return ntohs(a.sin_port);
}

int main(void) {
  char port[16], hport[16];
  int p = free_port(), h = free_port();
  while (h == p)
    h = free_port();
  snprintf(port, sizeof port, "%d", p);
  snprintf(hport, sizeof hport, "%d", h);
  setenv("PORT", port, 1);
  setenv("HEALTH_PORT", hport, 1);
  setenv("HOST", "127.0.0.1", 1);
  setenv("SHUTDOWN_TIMEOUT", "10s", 1);
  setenv("LOG_LEVEL", "warn", 1);
  kt_store_mkdir(&st);
  int code = keel_service_main(&(keel_service){.name = "jobs-service-test",
                                               .dotenv_path = "/nonexistent/.env",
                                               .start = svc_start,
                                               .prep_stop = svc_prep_stop,
                                               .stop = svc_stop});
  kt_store_rmdir(&st);
  fprintf(stderr, "   exit %d; test phase: budget %lld ms, slow %s, hang %s attempt %lld\n", code,
          (long long)phase_budget, phase_slow, phase_hang, (long long)phase_hang_attempt);
  CHECK_EQ(code, 0);
  /* the phases' order: the jobs' phase, the test's, prep_stop, stop */
  CHECK_EQ(prep_saw_step, 1);
  CHECK_EQ(stop_saw_step, 2);
  /* the jobs' phase had the service's budget: the 6 s job completed */
  CHECK_STR(phase_slow, "completed");
  /* the one that ignored it was cut off and given back */
  CHECK_STR(phase_hang, "available");
  CHECK_EQ(phase_hang_attempt, 0);
  CHECK(phase_budget > 0 && phase_budget <= 8000);
  /* a clean stop: the heartbeat row is gone */
  CHECK_EQ(stop_instances, (size_t)0);
  printf("ok - jobs stop in keel_service_main's drain phases\n");
  return 0;
}
