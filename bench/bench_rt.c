/* bench_rt.c - the runtime's benchmarks, the same workloads as
 * bench/erlang/keel_bench.erl so that `make bench-compare` can put keel and
 * BEAM side by side.
 *
 *   spawn               ns/process     spawn 100,000 processes that wait for a message
 *   idle_process_memory bytes/process  resident memory added per idle process (100,000)
 *   cast_throughput     msgs/s         one sender, one receiver, 2,000,000 messages
 *   ring                ns/hop         1,000 processes pass a token 2,000,000 hops
 *   pairs_roundtrips    roundtrips/s   4 ping-pong pairs per scheduler, 200,000 each
 *
 * Each workload runs several times, each time in a fresh runtime inside a
 * fresh child process (so one run's pooled memory cannot flatter the next),
 * and prints the median as {"bench": NAME, "unit": UNIT, "value": N}.
 * Usage: bench_rt [--runs N] [workload...]
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "keel.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static long rss_bytes(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  long size = 0, res = 0;
  if (!f) return 0;
  if (fscanf(f, "%ld %ld", &size, &res) != 2) res = 0;
  fclose(f);
  return res * sysconf(_SC_PAGESIZE);
}

static double result; /* set by the workload's main process */

/* Waits (sleeping, so schedulers stay free) until *ctr reaches n. */
static void wait_count(atomic_long *ctr, long n) {
  while (atomic_load(ctr) < n)
    keel_sleep(1);
}

static void fail(const char *what, int rc) {
  fprintf(stderr, "bench: %s: %s\n", what, keel_strerror(rc));
  exit(2);
}

/* Runtime counters of the run, to stderr with KEEL_BENCH_STATS=1. */
static void print_stats(const char *name) {
  if (!getenv("KEEL_BENCH_STATS")) return;
  keel_rt_stats st;
  keel_rt_stats_get(&st);
  fprintf(stderr, "  %s: switches %llu steals %llu sent %llu\n", name,
          (unsigned long long)st.context_switches, (unsigned long long)st.steals,
          (unsigned long long)st.msgs_sent);
}

/* ---- spawn and idle_process_memory ------------------------------------------- */

#define NPROC 100000
static atomic_long started, finished;
static keel_pid_t *pids;

static void idle_child(void *arg) {
  (void)arg;
  atomic_fetch_add(&started, 1);
  keel_msg_t *m;
  keel_receive(&m, KEEL_INFINITY);
  keel_msg_free(m);
  atomic_fetch_add(&finished, 1);
}

static void release_all(void) {
  for (long i = 0; i < NPROC; i++)
    keel_send(pids[i], keel_msg_new(0, 0));
  wait_count(&finished, NPROC);
}

static void spawn_main(void *arg) {
  (void)arg;
  double t0 = now_s();
  for (long i = 0; i < NPROC; i++) {
    int rc = keel_spawn(idle_child, NULL, NULL, &pids[i]);
    if (rc) fail("spawn", rc);
  }
  double t1 = now_s();
  wait_count(&started, NPROC);
  result = (t1 - t0) * 1e9 / NPROC;
  release_all();
}

static void memory_main(void *arg) {
  (void)arg;
  keel_sleep(20);
  long before = rss_bytes();
  for (long i = 0; i < NPROC; i++) {
    int rc = keel_spawn(idle_child, NULL, NULL, &pids[i]);
    if (rc) fail("spawn", rc);
  }
  wait_count(&started, NPROC);
  keel_sleep(20);
  long after = rss_bytes();
  result = (double)(after - before) / NPROC;
  release_all();
}

/* ---- cast_throughput ------------------------------------------------------------ */

#define NCAST 2000000L
static keel_pid_t cast_main_pid;

static void cast_receiver(void *arg) {
  (void)arg;
  long sum = 0;
  for (long i = 0; i < NCAST; i++) {
    keel_msg_t *m;
    keel_receive(&m, KEEL_INFINITY);
    sum += *(long *)keel_msg_data(m);
    keel_msg_free(m);
  }
  if (sum != NCAST * (NCAST - 1) / 2) {
    fprintf(stderr, "cast: lost or duplicated messages\n");
    exit(3);
  }
  keel_send(cast_main_pid, keel_msg_new(1, 0));
}

static void cast_sender(void *arg) {
  keel_pid_t to = *(keel_pid_t *)arg;
  for (long i = 0; i < NCAST; i++)
    keel_send(to, keel_msg_copy(0, &i, sizeof i));
}

static void cast_main(void *arg) {
  (void)arg;
  cast_main_pid = keel_self();
  keel_pid_t rx;
  keel_spawn(cast_receiver, NULL, NULL, &rx);
  double t0 = now_s();
  keel_spawn(cast_sender, &rx, NULL, NULL);
  keel_msg_t *m;
  keel_receive(&m, KEEL_INFINITY);
  keel_msg_free(m);
  result = NCAST / (now_s() - t0);
  print_stats("cast_throughput");
}

/* ---- ring --------------------------------------------------------------------------- */

#define RING 1000
#define HOPS 2000000L
static keel_pid_t ring_pids[RING];
static keel_pid_t ring_main_pid;

static void ring_node(void *arg) {
  long idx = (long)(intptr_t)arg;
  keel_pid_t next = 0;
  for (;;) {
    keel_msg_t *m;
    keel_receive(&m, KEEL_INFINITY);
    long left = *(long *)keel_msg_data(m);
    if (!next) next = ring_pids[(idx + 1) % RING];
    if (left < 0) { /* shutdown token goes round once */
      keel_send(next, m);
      return;
    }
    if (left == 0) {
      keel_msg_free(m);
      keel_send(ring_main_pid, keel_msg_new(1, 0));
      continue;
    }
    *(long *)keel_msg_data(m) = left - 1;
    keel_send(next, m); /* the same buffer travels: ownership moves on */
  }
}

static void ring_main(void *arg) {
  (void)arg;
  ring_main_pid = keel_self();
  for (long i = 0; i < RING; i++)
    keel_spawn(ring_node, (void *)(intptr_t)i, NULL, &ring_pids[i]);
  keel_sleep(10);
  long hops = HOPS;
  double t0 = now_s();
  keel_send(ring_pids[0], keel_msg_copy(0, &hops, sizeof hops));
  keel_msg_t *m;
  keel_receive(&m, KEEL_INFINITY);
  keel_msg_free(m);
  result = (now_s() - t0) * 1e9 / HOPS;
  print_stats("ring");
  long stop = -1;
  for (long i = 0; i < RING; i++)
    keel_send(ring_pids[i], keel_msg_copy(0, &stop, sizeof stop));
}

/* ---- pairs_roundtrips ------------------------------------------------------------------- */

#define ROUNDS 200000L
static keel_pid_t pairs_main_pid;

static void pong(void *arg) {
  (void)arg;
  for (;;) {
    keel_msg_t *m;
    keel_receive(&m, KEEL_INFINITY);
    if (keel_msg_tag(m) == 9) {
      keel_msg_free(m);
      return;
    }
    keel_send(keel_msg_from(m), m);
  }
}

static void ping(void *arg) {
  (void)arg;
  keel_pid_t peer;
  keel_spawn(pong, NULL, NULL, &peer);
  keel_msg_t *m = keel_msg_new(0, 8);
  for (long i = 0; i < ROUNDS; i++) {
    keel_send(peer, m);
    keel_receive(&m, KEEL_INFINITY);
  }
  keel_msg_free(m);
  keel_send(peer, keel_msg_new(9, 0));
  keel_send(pairs_main_pid, keel_msg_new(1, 0));
}

static void pairs_main(void *arg) {
  (void)arg;
  pairs_main_pid = keel_self();
  int npairs = 4 * keel_sched_count();
  double t0 = now_s();
  for (int i = 0; i < npairs; i++) {
    keel_spawn_opts o;
    keel_spawn_opts_init(&o);
    o.scheduler = i % keel_sched_count();
    keel_spawn(ping, NULL, &o, NULL);
  }
  for (int i = 0; i < npairs; i++) {
    keel_msg_t *m;
    keel_receive(&m, KEEL_INFINITY);
    keel_msg_free(m);
  }
  result = (double)npairs * ROUNDS / (now_s() - t0);
  print_stats("pairs_roundtrips");
}

/* ---- driver --------------------------------------------------------------------------------- */

typedef struct {
  const char *name, *unit;
  keel_proc_fn fn;
  int runs;
} workload;

static const workload workloads[] = {
    {"spawn", "ns/process", spawn_main, 5},
    {"idle_process_memory", "bytes/process", memory_main, 3},
    {"cast_throughput", "msgs/s", cast_main, 5},
    {"ring", "ns/hop", ring_main, 5},
    {"pairs_roundtrips", "roundtrips/s", pairs_main, 5},
};

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* One run in a fresh child process; the value comes back through a pipe. */
static double run_once(const workload *w) {
  int fd[2];
  if (pipe(fd) != 0) exit(2);
  pid_t child = fork();
  if (child == 0) {
    close(fd[0]);
    pids = calloc(NPROC, sizeof *pids);
    int rc = keel_run(w->fn, NULL, NULL);
    if (rc) fail(w->name, rc);
    if (write(fd[1], &result, sizeof result) != (ssize_t)sizeof result) _exit(2);
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

int main(int argc, char **argv) {
  int runs_override = 0;
  int first = 1;
  if (argc > 2 && strcmp(argv[1], "--runs") == 0) {
    runs_override = atoi(argv[2]);
    first = 3;
  }
  for (size_t i = 0; i < sizeof workloads / sizeof workloads[0]; i++) {
    const workload *w = &workloads[i];
    if (argc > first) {
      int wanted = 0;
      for (int a = first; a < argc; a++)
        wanted |= strcmp(argv[a], w->name) == 0;
      if (!wanted) continue;
    }
    int runs = runs_override > 0 ? runs_override : w->runs;
    double v[32];
    if (runs > 32) runs = 32;
    for (int r = 0; r < runs; r++) {
      v[r] = run_once(w);
      fprintf(stderr, "  %s run %d: %.1f %s\n", w->name, r + 1, v[r], w->unit);
    }
    qsort(v, (size_t)runs, sizeof v[0], cmp_double);
    printf("{\"bench\": \"%s\", \"unit\": \"%s\", \"value\": %.1f}\n", w->name, w->unit,
           v[runs / 2]);
    fflush(stdout);
  }
  return 0;
}
