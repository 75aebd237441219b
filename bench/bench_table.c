/* bench_table.c - shared tables (keel/table.h) against ETS: the same
 * workloads as bench/erlang/ets_bench.erl, so `make bench-compare` puts them
 * side by side.
 *
 *   table_lookup_1s           ops/s   one process: 2,000,000 lookups
 *   table_lookup_2s           ops/s   two processes, one per scheduler, at once
 *   table_insert_1s / _2s     ops/s   inserts that replace an existing key
 *   table_update_counter_1s / _2s     ops/s   +1 on a counter
 *
 * The table is a public set of 65,536 keys prefilled, keys and values 8-byte
 * integers (ETS: {K, V} tuples of small integers in a set with
 * read_concurrency and write_concurrency). Worker w does ops on keys
 * (i * 2654435761) mod 65536 for i in [w * OPS, (w + 1) * OPS): spread
 * over the table, the same sequence on both sides; two workers share every
 * key. Every lookup must find its key. The figure is all workers' ops over
 * the wall time from the first spawn to the last worker's end.
 * Usage: bench_table [--runs N] [workload...]
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_driver.h"

#define KEYS 65536u
#define OPS  2000000u
#define MUL  2654435761u

typedef enum { OP_LOOKUP, OP_INSERT, OP_COUNTER } op_kind;

typedef struct worker_arg {
  keel_pid_t main;
  keel_table_t table;
  op_kind op;
  uint64_t from;
} worker_arg;

static void worker(void *arg) {
  worker_arg *w = arg;
  keel_table_t t = w->table;
  for (uint64_t i = w->from; i < w->from + OPS; i++) {
    uint64_t k = (i * MUL) & (KEYS - 1);
    int64_t v = (int64_t)i, r = 0;
    int rc;
    switch (w->op) {
    case OP_LOOKUP: rc = keel_table_lookup(t, &k, sizeof k, &r, sizeof r, NULL); break;
    case OP_INSERT: rc = keel_table_insert(t, &k, sizeof k, &v, sizeof v); break;
    default: rc = keel_table_update_counter(t, &k, sizeof k, 1, NULL, &r); break;
    }
    if (rc) bench_fail("table op", rc);
  }
  keel_send(w->main, keel_msg_new(1, 0));
}

static void run(op_kind op, int workers) {
  keel_table_opts o = {.access = KEEL_TABLE_PUBLIC};
  keel_table_t t;
  int rc = keel_table_new(&o, &t);
  if (rc) bench_fail("keel_table_new", rc);
  for (uint64_t k = 0; k < KEYS; k++) {
    int64_t v = (int64_t)k;
    rc = keel_table_insert(t, &k, sizeof k, &v, sizeof v);
    if (rc) bench_fail("prefill", rc);
  }
  worker_arg args[2];
  double t0 = bench_now_s();
  for (int i = 0; i < workers; i++) {
    args[i] = (worker_arg){keel_self(), t, op, (uint64_t)i * OPS};
    keel_spawn_opts so = {.scheduler = KEEL_ON_SCHEDULER(i % keel_sched_count())};
    rc = keel_spawn(worker, &args[i], &so, NULL);
    if (rc) bench_fail("keel_spawn", rc);
  }
  for (int i = 0; i < workers; i++) {
    keel_msg_t *m;
    keel_receive(&m, KEEL_INFINITY);
    keel_msg_free(m);
  }
  bench_result = (double)workers * OPS / (bench_now_s() - t0);
  keel_table_delete(t);
}

static void lookup_1s(void *a) {
  (void)a;
  run(OP_LOOKUP, 1);
}
static void lookup_2s(void *a) {
  (void)a;
  run(OP_LOOKUP, 2);
}
static void insert_1s(void *a) {
  (void)a;
  run(OP_INSERT, 1);
}
static void insert_2s(void *a) {
  (void)a;
  run(OP_INSERT, 2);
}
static void counter_1s(void *a) {
  (void)a;
  run(OP_COUNTER, 1);
}
static void counter_2s(void *a) {
  (void)a;
  run(OP_COUNTER, 2);
}

static const bench_workload workloads[] = {
    {"table_lookup_1s", "ops/s", lookup_1s, 5},
    {"table_lookup_2s", "ops/s", lookup_2s, 5},
    {"table_insert_1s", "ops/s", insert_1s, 5},
    {"table_insert_2s", "ops/s", insert_2s, 5},
    {"table_update_counter_1s", "ops/s", counter_1s, 5},
    {"table_update_counter_2s", "ops/s", counter_2s, 5},
};

int main(int argc, char **argv) {
  return bench_main("bench_table", workloads, sizeof workloads / sizeof workloads[0], argc, argv,
                    NULL);
}
