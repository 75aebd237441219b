/* bench_driver.h - what every keel benchmark binary shares.
 *
 * A binary lists its workloads (name, unit, the first process of a fresh
 * runtime, how many runs) and calls bench_main. Each run happens in a fresh
 * child process, so that memory one run pooled cannot flatter the next; the
 * workload stores its figure in bench_result, which comes back through a
 * pipe. The median of the runs is printed as one JSON line:
 * {"bench": NAME, "unit": UNIT, "value": N}. Individual runs go to stderr.
 * Usage of every binary: NAME [--runs N] [workload...]
 */
#ifndef KEEL_BENCH_DRIVER_H
#define KEEL_BENCH_DRIVER_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "keel.h"

typedef struct bench_workload {
  const char *name, *unit;
  keel_proc_fn fn;
  int runs;
} bench_workload;

static double bench_result; /* set by the workload's main process */

static inline double bench_now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline void bench_fail(const char *what, int rc) {
  fprintf(stderr, "bench: %s: %s\n", what, keel_strerror(rc));
  exit(2);
}

static inline int bench_cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* The median of n rounds measured in one runtime, as keel_bench.erl
 * measures the BEAM's (only its first round is cold): the first round and
 * the others go to stderr, so the cold figure is seen beside the median.
 * Sorts samples. */
static inline double bench_warm_median(const char *name, const char *unit, double *samples, int n) {
  fprintf(stderr, "  %s: cold (first) %.0f %s, then", name, samples[0], unit);
  for (int r = 1; r < n; r++)
    fprintf(stderr, " %.0f", samples[r]);
  fprintf(stderr, "\n");
  qsort(samples, (size_t)n, sizeof samples[0], bench_cmp_double);
  return samples[n / 2];
}

/* A process that waits for one message, forever: the idle population of the
 * observer and dashboard workloads. */
static inline void bench_idle_main(void *arg) {
  (void)arg;
  keel_msg_t *m = NULL;
  if (keel_receive(&m, KEEL_INFINITY) == 0) keel_msg_free(m);
}

/* Spawns n idle processes (16 KiB stacks) spread over the schedulers and
 * returns once they are all alive, plus settle_ms for them to reach their
 * receive. The caller ends them with bench_idle_stop. */
static inline keel_pid_t *bench_idle_spawn(int n, int64_t settle_ms) {
  keel_pid_t *pids = malloc((size_t)n * sizeof *pids);
  if (!pids) bench_fail("malloc", KEEL_ENOMEM);
  keel_spawn_opts o;
  keel_spawn_opts_init(&o);
  o.stack_size = 16384;
  for (int i = 0; i < n; i++) {
    o.scheduler = KEEL_ON_SCHEDULER(i % keel_sched_count());
    int rc = keel_spawn(bench_idle_main, NULL, &o, &pids[i]);
    if (rc) bench_fail("spawn", rc);
    if (i % 1000 == 999) keel_yield();
  }
  keel_rt_stats st;
  do {
    keel_sleep(10);
    keel_rt_stats_get(&st);
  } while (st.procs_alive < (uint64_t)n + 1);
  keel_sleep(settle_ms);
  return pids;
}

static inline void bench_idle_stop(keel_pid_t *pids, int n) {
  for (int i = 0; i < n; i++) {
    keel_exit_signal(pids[i], KEEL_REASON_KILL, NULL);
    if (i % 1000 == 999) keel_yield();
  }
  free(pids);
}

/* One run in a fresh child process; setup (may be NULL) runs in the child
 * before the runtime starts. */
static inline double bench_run_once(const bench_workload *w, void (*setup)(void)) {
  int fd[2];
  if (pipe(fd) != 0) exit(2);
  pid_t child = fork();
  if (child == 0) {
    close(fd[0]);
    if (setup) setup();
    keel_rt_opts o;
    keel_rt_opts_init(&o);
    const char *follow =
        getenv("KEEL_BENCH_STREAM_FOLLOW_NS"); /* decision 0033's knob, to compare */
    if (follow) o.stream_follow_ns = atoll(follow);
    int rc = keel_run(w->fn, NULL, &o);
    if (rc) bench_fail(w->name, rc);
    if (write(fd[1], &bench_result, sizeof bench_result) != (ssize_t)sizeof bench_result) _exit(2);
    _exit(0);
  }
  close(fd[1]);
  double v = -1;
  ssize_t n = read(fd[0], &v, sizeof v);
  close(fd[0]);
  int status;
  waitpid(child, &status, 0);
  if (n != (ssize_t)sizeof v || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    fprintf(stderr, "bench: %s failed (status %d)\n", w->name, status);
    exit(2);
  }
  return v;
}

static inline int bench_main(const char *prog, const bench_workload *ws, size_t nw, int argc,
                             char **argv, void (*setup)(void)) {
  int runs_override = 0, first = 1;
  if (argc > 2 && strcmp(argv[1], "--runs") == 0) {
    runs_override = atoi(argv[2]);
    first = 3;
  }
  for (int a = first; a < argc; a++) {
    int known = 0;
    for (size_t i = 0; i < nw; i++)
      known |= strcmp(argv[a], ws[i].name) == 0;
    if (!known) {
      fprintf(stderr, "%s: unknown workload %s\n", prog, argv[a]);
      return 2;
    }
  }
  for (size_t i = 0; i < nw; i++) {
    const bench_workload *w = &ws[i];
    if (argc > first) {
      int wanted = 0;
      for (int a = first; a < argc; a++)
        wanted |= strcmp(argv[a], w->name) == 0;
      if (!wanted) continue;
    }
    int runs = runs_override > 0 ? runs_override : w->runs;
    if (runs > 32) runs = 32;
    double v[32];
    for (int r = 0; r < runs; r++) {
      v[r] = bench_run_once(w, setup);
      fprintf(stderr, "  %s run %d: %.1f %s\n", w->name, r + 1, v[r], w->unit);
    }
    qsort(v, (size_t)runs, sizeof v[0], bench_cmp_double);
    printf("{\"bench\": \"%s\", \"unit\": \"%s\", \"value\": %.1f}\n", w->name, w->unit,
           v[runs / 2]);
    fflush(stdout);
  }
  return 0;
}

#endif
