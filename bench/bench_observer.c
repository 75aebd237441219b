/* bench_observer.c - the observer's snapshot of a node with many processes.
 *
 *   observer_snapshot       ms  keel_observer_snapshot_take listing every one
 *                               of 100,000 idle processes (each waiting in
 *                               receive); median of 9 snapshots
 *   observer_snapshot_json  ms  the same snapshot encoded as JSON
 *                               (keel_observer_snapshot_to_json, every
 *                               process listed); median of 9 encodings
 *   observer_snapshot_default ms the default snapshot (totals over all
 *                               100,000, the 10,000 longest mailboxes listed)
 *                               taken and encoded (keel_observer_snapshot_json,
 *                               what /admin/observer serves); median of 9
 *
 * Each run is a fresh process (bench_driver.h); the figure of a run is the
 * median of its repetitions, and the line printed is the median of the runs.
 * The idle processes use 16 KiB stacks (the smallest the runtime allows), so
 * the node fits in memory; the snapshot does not touch stacks, so their size
 * does not change the figure. Usage: bench_observer [--runs N] [workload...]
 */
#include <stdio.h>
#include <stdlib.h>

#include "bench_driver.h"
#include "keel/observer.h"

#define NPROCS 100000
#define REPS   9

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, bench_cmp_double);
  return v[n / 2];
}

static void check_snapshot(const keel_observer_snapshot *s, size_t want_listed) {
  if (s->totals.processes < NPROCS || s->nprocs < want_listed) {
    fprintf(stderr, "bench: snapshot saw %llu processes, listed %zu\n",
            (unsigned long long)s->totals.processes, s->nprocs);
    exit(2);
  }
}

static void snapshot_main(void *arg) {
  (void)arg;
  keel_pid_t *pids = bench_idle_spawn(NPROCS, 100);
  keel_observer_opts o;
  keel_observer_opts_init(&o);
  o.max_processes = KEEL_OBSERVER_ALL_PROCS;
  double v[REPS];
  for (int r = 0; r < REPS; r++) {
    keel_observer_snapshot s;
    double t0 = bench_now_s();
    int rc = keel_observer_snapshot_take(&o, &s);
    v[r] = (bench_now_s() - t0) * 1e3;
    if (rc) bench_fail("snapshot", rc);
    check_snapshot(&s, NPROCS);
    keel_observer_snapshot_free(&s);
  }
  bench_result = median(v, REPS);
  bench_idle_stop(pids, NPROCS);
}

static void json_main(void *arg) {
  (void)arg;
  keel_pid_t *pids = bench_idle_spawn(NPROCS, 100);
  keel_observer_opts o;
  keel_observer_opts_init(&o);
  o.max_processes = KEEL_OBSERVER_ALL_PROCS;
  keel_observer_snapshot s;
  int rc = keel_observer_snapshot_take(&o, &s);
  if (rc) bench_fail("snapshot", rc);
  check_snapshot(&s, NPROCS);
  double v[REPS];
  size_t bytes = 0;
  for (int r = 0; r < REPS; r++) {
    char *json;
    double t0 = bench_now_s();
    rc = keel_observer_snapshot_to_json(&s, &json, &bytes);
    v[r] = (bench_now_s() - t0) * 1e3;
    if (rc) bench_fail("json", rc);
    free(json);
  }
  fprintf(stderr, "  (JSON of %zu processes: %zu bytes)\n", s.nprocs, bytes);
  keel_observer_snapshot_free(&s);
  bench_result = median(v, REPS);
  bench_idle_stop(pids, NPROCS);
}

static void default_main(void *arg) {
  (void)arg;
  keel_pid_t *pids = bench_idle_spawn(NPROCS, 100);
  double v[REPS];
  size_t bytes = 0;
  for (int r = 0; r < REPS; r++) {
    char *json;
    double t0 = bench_now_s();
    int rc = keel_observer_snapshot_json(&json, &bytes);
    v[r] = (bench_now_s() - t0) * 1e3;
    if (rc) bench_fail("snapshot_json", rc);
    free(json);
  }
  fprintf(stderr, "  (default JSON: %zu bytes)\n", bytes);
  bench_result = median(v, REPS);
  bench_idle_stop(pids, NPROCS);
}

int main(int argc, char **argv) {
  static const bench_workload ws[] = {
      {"observer_snapshot", "ms", snapshot_main, 3},
      {"observer_snapshot_json", "ms", json_main, 3},
      {"observer_snapshot_default", "ms", default_main, 3},
  };
  return bench_main("bench_observer", ws, sizeof ws / sizeof ws[0], argc, argv, NULL);
}
