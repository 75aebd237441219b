/* test_jobs_sigkill.c - jobs survive SIGKILLs of the node running them.
 *
 * The parent enqueues N jobs, then in ROUNDS rounds starts a child OS
 * process (this binary, "child URL") that runs them (8 at a time, each
 * sleeping a few ms) and SIGKILLs it at a random moment 50-300 ms after its
 * first job ended. Then the parent runs what is left itself: on SQLite the
 * jobs a killed child left running are rescued at once (one instance per
 * file), on PostgreSQL after rescue_after_ms (500 here) without a heartbeat.
 * Every job must end completed (none lost, none discarded: 25 attempts is
 * more than the rounds can spend), its completion recorded once, and every
 * attempt but the last failed as "instance lost".
 */
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>

#include "es/kt_es.h"
#include "keel/io.h"
#include "keel/jobs.h"

enum { N = 200, ROUNDS = 4 };

static const char *child_url;

static int work(keel_job *job, void *ud) {
  (void)ud;
  keel_sleep(1 + job->id % 10);
  char line[32];
  int n = snprintf(line, sizeof line, "%lld\n", (long long)job->id);
  if (child_url && write(1, line, (size_t)n) < 0) return KEEL_EIO; /* the parent's clock */
  return 0;
}

static const keel_job_worker workers[] = {{.name = "work", .perform = work}};
static const keel_job_queue queues[] = {{.name = "default", .concurrency = 8}};

static keel_jobs *start(keel_es *es, bool run) {
  keel_jobs_opts o = {.es = es,
                      .workers = workers,
                      .nworkers = 1,
                      .queues = run ? queues : NULL,
                      .nqueues = run ? 1 : 0,
                      .poll_ms = 20,
                      .heartbeat_ms = 100,
                      .rescue_after_ms = 500,
                      .backoff_ms = 1,
                      .backoff_max_ms = 5};
  keel_jobs *j = NULL;
  CHECK_OK(keel_jobs_start(&o, &j));
  return j;
}

static void child_main(void *arg) {
  (void)arg;
  keel_es *es = NULL;
  CHECK_OK(keel_es_open(&(keel_es_opts){.url = child_url}, &es));
  start(es, true);
  for (;;)
    keel_sleep(1000);
}

static size_t count_state(keel_jobs *j, const char *state) {
  json_t *all = NULL;
  CHECK_OK(keel_jobs_list(j, &(keel_jobs_filter){.state = state, .limit = 1000}, &all));
  size_t n = json_array_size(all);
  json_decref(all);
  return n;
}

static int64_t elapsed_ms(const struct timespec *t0) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (t.tv_sec - t0->tv_sec) * 1000 + (t.tv_nsec - t0->tv_nsec) / 1000000;
}

/* One child, killed run_ms after its first finished job. */
static void round_of(const char *url, int64_t run_ms) {
  int fd[2];
  CHECK_OK(pipe(fd));
  pid_t child = fork();
  CHECK(child >= 0);
  if (child == 0) {
    dup2(fd[1], 1);
    close(fd[0]);
    close(fd[1]);
    execl("/proc/self/exe", "test_jobs_sigkill", "child", url, (char *)NULL);
    _exit(127);
  }
  close(fd[1]);
  fcntl(fd[0], F_SETFL, O_NONBLOCK);
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  bool started = false, killed = false, eof = false;
  int lines = 0;
  char buf[4096];
  while (!eof) {
    int64_t el = elapsed_ms(&t0);
    CHECK(started || el < 60000);
    if (started && !killed && el >= run_ms) {
      kill(child, SIGKILL);
      killed = true;
    }
    if (keel_wait_fd(fd[0], KEEL_READABLE, killed ? 5000 : 5, NULL) == KEEL_ETIMEDOUT) {
      /* every job done before the kill: nothing more will come */
      if (!killed && started && el > 5000) {
        kill(child, SIGKILL);
        killed = true;
      }
      continue;
    }
    ssize_t n = read(fd[0], buf, sizeof buf);
    if (n > 0) {
      for (ssize_t i = 0; i < n; i++)
        lines += buf[i] == '\n';
      if (!started) {
        started = true;
        clock_gettime(CLOCK_MONOTONIC, &t0);
      }
    } else if (n == 0) {
      eof = true;
    } else {
      CHECK(errno == EAGAIN || errno == EINTR);
    }
  }
  close(fd[0]);
  int status;
  CHECK_EQ(waitpid(child, &status, 0), child);
  CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  fprintf(stderr, "   killed after %lld ms, %d jobs ended in the child\n", (long long)run_ms,
          lines);
}

KT_CASE(every_job_ends_completed_after_sigkills_of_the_node_running_it) {
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  keel_jobs *j = start(es, false);
  for (int i = 0; i < N; i++)
    CHECK_OK(
        keel_jobs_enqueue(j, &(keel_job_new){.worker = "work", .max_attempts = 25}, NULL, NULL));
  keel_jobs_stop(j, 100);
  keel_es_close(es); /* the children open the database on their own */
  unsigned seed = (unsigned)time(NULL);
  fprintf(stderr, "   seed %u\n", seed);
  for (int r = 0; r < ROUNDS; r++) {
    seed = seed * 1103515245u + 12345u;
    round_of(s.url, 50 + (seed >> 16) % 250);
  }
  CHECK_OK(keel_es_open(&(keel_es_opts){.url = s.url}, &s.es));
  j = start(s.es, true);
  for (int i = 0; i < 3000; i++) {
    if (count_state(j, "completed") + count_state(j, "discarded") == N) break;
    keel_sleep(10);
  }
  CHECK_EQ(count_state(j, "completed"), (size_t)N);
  CHECK_EQ(count_state(j, "available") + count_state(j, "running"), (size_t)0);
  /* one completion per job, and every attempt before it lost with its node */
  json_t *all = NULL;
  CHECK_OK(keel_jobs_list(j, &(keel_jobs_filter){.limit = 1000}, &all));
  size_t i;
  json_t *o;
  int retried = 0;
  json_array_foreach(all, i, o) {
    json_t *errs = json_object_get(o, "errors");
    int64_t attempt = json_integer_value(json_object_get(o, "attempt"));
    CHECK_EQ((int64_t)json_array_size(errs) + 1, attempt);
    retried += attempt > 1;
    size_t k;
    json_t *e;
    json_array_foreach(errs, k, e) {
      CHECK_STR(json_string_value(json_object_get(e, "error")), "instance lost");
    }
  }
  json_decref(all);
  fprintf(stderr, "   %d jobs were rescued at least once\n", retried);
  keel_jobs_stop(j, 1000);
  kt_store_close(&s);
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "child") == 0) {
    child_url = argv[2];
    return keel_run(child_main, NULL, NULL);
  }
  static const kt_case cases[] = {
      KT_ENTRY_SCHED(every_job_ends_completed_after_sigkills_of_the_node_running_it, 2)};
  return kt_run_cases(cases, 1, argc, argv);
}
