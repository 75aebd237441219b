/* bench_rt.c - the runtime's benchmarks, the same workloads as
 * bench/erlang/keel_bench.erl so that `make bench-compare` can put keel and
 * BEAM side by side.
 *
 *   spawn               ns/process     spawn 100,000 processes that wait for a message;
 *                                      7 rounds in one runtime (as on the BEAM), the median
 *   idle_process_memory bytes/process  resident memory added per idle process (100,000)
 *   cast_throughput     msgs/s         one sender, one receiver, 2,000,000 messages
 *   pipeline            msgs/s         source -> relay -> sink, 2,000,000 messages
 *   ring                ns/hop         1,000 processes pass a token 2,000,000 hops
 *   pairs_roundtrips    roundtrips/s   4 ping-pong pairs per scheduler, 200,000 each
 *   link_unlink         ns/pair        keel_link + keel_unlink to a peer, 1,000,000 times
 *   monitor_demonitor   ns/pair        keel_monitor + keel_demonitor of a peer, 1,000,000 times
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

#include "bench_driver.h"

static long rss_bytes(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  long size = 0, res = 0;
  if (!f) return 0;
  if (fscanf(f, "%ld %ld", &size, &res) != 2) res = 0;
  fclose(f);
  return res * sysconf(_SC_PAGESIZE);
}

/* Waits (sleeping, so schedulers stay free) until *ctr reaches n. */
static void wait_count(atomic_long *ctr, long n) {
  while (atomic_load(ctr) < n)
    keel_sleep(1);
}

/* Runtime counters of the run, to stderr with KEEL_BENCH_STATS=1. */
static void print_stats(const char *name) {
  if (!getenv("KEEL_BENCH_STATS")) return;
  keel_rt_stats st;
  keel_rt_stats_get(&st);
  fprintf(stderr, "  %s: switches %llu steals %llu migrations %llu sent %llu\n", name,
          (unsigned long long)st.context_switches, (unsigned long long)st.steals,
          (unsigned long long)st.migrations, (unsigned long long)st.msgs_sent);
}

/* ---- spawn and idle_process_memory ------------------------------------------- */

#define NPROC 100000
static atomic_long started, finished;
static keel_pid_t *pids;

static void alloc_pids(void) {
  pids = calloc(NPROC, sizeof *pids);
}

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

/* Waits until only `n` processes are alive: exited processes have given
 * their stacks and slots back (keel_bench.erl's wait_process_count). */
static void wait_alive(uint64_t n) {
  keel_rt_stats st;
  for (keel_rt_stats_get(&st); st.procs_alive > n; keel_rt_stats_get(&st))
    keel_sleep(1);
}

/* SPAWN_REPS rounds in this runtime, as keel_bench.erl's 7 repetitions in
 * one VM: the first takes fresh memory (cold), the later ones reuse the
 * stacks and slots of the round before (warm). The figure is the median of
 * all, the BEAM's rule; the cold one also goes to stderr. */
#define SPAWN_REPS 7

static void spawn_main(void *arg) {
  (void)arg;
  keel_rt_stats base;
  keel_rt_stats_get(&base);
  double samples[SPAWN_REPS];
  for (int r = 0; r < SPAWN_REPS; r++) {
    atomic_store(&started, 0);
    atomic_store(&finished, 0);
    double t0 = bench_now_s();
    for (long i = 0; i < NPROC; i++) {
      int rc = keel_spawn(idle_child, NULL, NULL, &pids[i]);
      if (rc) bench_fail("spawn", rc);
    }
    double t1 = bench_now_s();
    wait_count(&started, NPROC);
    samples[r] = (t1 - t0) * 1e9 / NPROC;
    release_all();
    wait_alive(base.procs_alive);
  }
  bench_result = bench_warm_median("spawn", "ns/process", samples, SPAWN_REPS);
}

static void memory_main(void *arg) {
  (void)arg;
  keel_sleep(20);
  long before = rss_bytes();
  for (long i = 0; i < NPROC; i++) {
    int rc = keel_spawn(idle_child, NULL, NULL, &pids[i]);
    if (rc) bench_fail("spawn", rc);
  }
  wait_count(&started, NPROC);
  keel_sleep(20);
  long after = rss_bytes();
  bench_result = (double)(after - before) / NPROC;
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
  double t0 = bench_now_s();
  keel_spawn(cast_sender, &rx, NULL, NULL);
  keel_msg_t *m;
  keel_receive(&m, KEEL_INFINITY);
  keel_msg_free(m);
  bench_result = NCAST / (bench_now_s() - t0);
  print_stats("cast_throughput");
}

/* ---- pipeline ------------------------------------------------------------------------ */

/* Three stages, source -> relay -> sink, 2,000,000 messages: each stage
 * follows its sender under stream affinity (decision 0033), while a ring of
 * three may still be stolen from; this shows whether the stages settle or
 * keep moving (KEEL_BENCH_STATS=1 prints the steals and migrations). The
 * relay forwards the same buffer. */
static void pipe_relay(void *arg) {
  keel_pid_t to = *(keel_pid_t *)arg;
  for (long i = 0; i < NCAST; i++) {
    keel_msg_t *m;
    keel_receive(&m, KEEL_INFINITY);
    keel_send(to, m);
  }
}

static void pipeline_main(void *arg) {
  (void)arg;
  cast_main_pid = keel_self(); /* the sink is cast_throughput's receiver */
  static keel_pid_t sink, relay;
  keel_spawn(cast_receiver, NULL, NULL, &sink);
  keel_spawn(pipe_relay, &sink, NULL, &relay);
  double t0 = bench_now_s();
  keel_spawn(cast_sender, &relay, NULL, NULL);
  keel_msg_t *m;
  keel_receive(&m, KEEL_INFINITY);
  keel_msg_free(m);
  bench_result = NCAST / (bench_now_s() - t0);
  print_stats("pipeline");
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
  double t0 = bench_now_s();
  keel_send(ring_pids[0], keel_msg_copy(0, &hops, sizeof hops));
  keel_msg_t *m;
  keel_receive(&m, KEEL_INFINITY);
  keel_msg_free(m);
  bench_result = (bench_now_s() - t0) * 1e9 / HOPS;
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
  double t0 = bench_now_s();
  for (int i = 0; i < npairs; i++) {
    keel_spawn_opts o;
    keel_spawn_opts_init(&o);
    o.scheduler = KEEL_ON_SCHEDULER(i % keel_sched_count());
    keel_spawn(ping, NULL, &o, NULL);
  }
  for (int i = 0; i < npairs; i++) {
    keel_msg_t *m;
    keel_receive(&m, KEEL_INFINITY);
    keel_msg_free(m);
  }
  bench_result = (double)npairs * ROUNDS / (bench_now_s() - t0);
  print_stats("pairs_roundtrips");
}

/* ---- keel_consume ------------------------------------------------------------------------ */

/* The cost of keel_consume(1) in a loop, per call, the slice's yields
 * included (a process alone on its scheduler: each yield is a switch out and
 * back). 100 M calls: about 0.2 s. */
static void consume_main(void *arg) {
  (void)arg;
  const long n = 100 * 1000 * 1000;
  double t0 = bench_now_s();
  for (long i = 0; i < n; i++)
    keel_consume(1);
  bench_result = (bench_now_s() - t0) * 1e9 / (double)n;
}

/* ---- link and monitor ------------------------------------------------------------------------ */

/* keel_link + keel_unlink (and keel_monitor + keel_demonitor) to a live
 * peer on another scheduler, per pair: the owner's side of a link change
 * (its own set, under its signal lock since decision 0030) plus the signal
 * to the peer. Every 1024 pairs a round trip lets the peer handle what it
 * was sent (bookkeeping signals do not wake it). 1 M pairs. */
#define LINK_PAIRS (1000 * 1000)
#define LINK_BATCH 1024

static void link_peer(void *arg) {
  (void)arg;
  for (;;) {
    keel_msg_t *m;
    if (keel_receive(&m, KEEL_INFINITY) != 0) return;
    keel_pid_t from = keel_msg_from(m);
    keel_msg_free(m);
    keel_send(from, keel_msg_new(1, 0));
  }
}

static keel_pid_t link_peer_start(void) {
  keel_spawn_opts o;
  keel_spawn_opts_init(&o);
  o.scheduler = KEEL_ON_SCHEDULER(keel_sched_count() > 1 ? 1 : 0);
  keel_pid_t peer;
  int rc = keel_spawn(link_peer, NULL, &o, &peer);
  if (rc) bench_fail("spawn", rc);
  return peer;
}

static void link_sync(keel_pid_t peer) {
  keel_send(peer, keel_msg_new(1, 0));
  keel_msg_t *m;
  if (keel_receive(&m, KEEL_INFINITY) == 0) keel_msg_free(m);
}

static void link_main(void *arg) {
  (void)arg;
  keel_pid_t peer = link_peer_start();
  link_sync(peer);
  double t0 = bench_now_s();
  for (long i = 1; i <= LINK_PAIRS; i++) {
    keel_link(peer);
    keel_unlink(peer);
    if (i % LINK_BATCH == 0) link_sync(peer);
  }
  bench_result = (bench_now_s() - t0) * 1e9 / LINK_PAIRS;
  keel_exit_signal(peer, KEEL_REASON_KILL, NULL);
}

static void monitor_main(void *arg) {
  (void)arg;
  keel_pid_t peer = link_peer_start();
  link_sync(peer);
  double t0 = bench_now_s();
  for (long i = 1; i <= LINK_PAIRS; i++) {
    keel_ref_t ref;
    keel_monitor(peer, &ref);
    keel_demonitor(ref);
    if (i % LINK_BATCH == 0) link_sync(peer);
  }
  bench_result = (bench_now_s() - t0) * 1e9 / LINK_PAIRS;
  keel_exit_signal(peer, KEEL_REASON_KILL, NULL);
}

/* ---- driver --------------------------------------------------------------------------------- */

static const bench_workload workloads[] = {
    {"spawn", "ns/process", spawn_main, 3},
    {"idle_process_memory", "bytes/process", memory_main, 3},
    {"cast_throughput", "msgs/s", cast_main, 5},
    {"pipeline", "msgs/s", pipeline_main, 5},
    {"ring", "ns/hop", ring_main, 5},
    {"pairs_roundtrips", "roundtrips/s", pairs_main, 5},
    {"consume", "ns/call", consume_main, 5},
    {"link_unlink", "ns/pair", link_main, 5},
    {"monitor_demonitor", "ns/pair", monitor_main, 5},
};

int main(int argc, char **argv) {
  return bench_main("bench_rt", workloads, sizeof workloads / sizeof workloads[0], argc, argv,
                    alloc_pids);
}
