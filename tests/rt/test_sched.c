/* test_sched.c - schedulers: one thread per scheduler with the hint honoured,
 * fairness (a flooded process and a busy yielder do not starve others, timers
 * still fire), work spreading to idle schedulers, stuck-process detection and
 * its report, and the deterministic mode (same seed, same order; different
 * seeds, different orders). The deterministic cases need several runtimes per
 * case, so this file has its own main() after the KT cases.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>

#include "rt/kt_rt.h"

enum { T_DATA = 1, T_STOP, T_DONE, T_SCHED };

static keel_pid_t g_parent;

/* ---- placement ----------------------------------------------------------------- */

static void where_proc(void *arg) {
  (void)arg;
  int s = keel_sched_current();
  kt_send_u64(g_parent, T_SCHED, (uint64_t)(int64_t)s);
}

KT_CASE(every_scheduler_runs_processes_placed_on_it) {
  g_parent = keel_self();
  int n = keel_sched_count();
  CHECK(n >= 1);
  int here = keel_sched_current();
  CHECK(here >= 0 && here < n);
  uint64_t seen = 0;
  for (int round = 0; round < 5; round++) {
    for (int s = 0; s < n; s++)
      kt_spawn_on(where_proc, NULL, s);
    for (int s = 0; s < n; s++) {
      int64_t got = (int64_t)kt_recv_tag_u64(T_SCHED, KT_LONG);
      CHECK(got >= 0 && got < n);
      seen |= 1ull << got;
    }
  }
  CHECK_EQ(seen, (n >= 64 ? ~0ull : (1ull << n) - 1));
}

KT_CASE(scheduler_count_follows_the_option) {
  CHECK_EQ(keel_sched_count(), 3);
  int s = keel_sched_current();
  CHECK(s >= 0 && s < 3);
}

/* ---- fairness ---------------------------------------------------------------------- */

static atomic_int g_flood_stop;
static atomic_uint_fast64_t g_flooded_handled;

/* Always has a mailbox full of messages: it starts with a flood of them and
 * sends itself a new one for each it handles, so it never waits. It stops
 * when the other process, which can only get there by running, says so. */
static void flooded_proc(void *arg) {
  (void)arg;
  int64_t deadline = kt_now_ms() + KT_LONG;
  for (;;) {
    keel_msg_t *m = kt_recv(KT_LONG);
    atomic_fetch_add(&g_flooded_handled, 1);
    if (atomic_load(&g_flood_stop)) {
      keel_msg_free(m);
      return; /* the rest of the flood is freed with the mailbox */
    }
    CHECK_OK(keel_send(keel_self(), m)); /* refill: the flood never ends */
    if (kt_now_ms() > deadline) CHECK(!"the other process never ran: starved");
  }
}

/* Needs 100 turns of the scheduler, then ends the flood. */
static void counter_proc(void *arg) {
  (void)arg;
  for (int i = 0; i < 100; i++)
    CHECK_OK(keel_yield());
  atomic_store(&g_flood_stop, 1);
}

KT_CASE(a_flooded_process_does_not_starve_the_others) {
  CHECK_EQ(keel_sched_count(), 1);
  uint64_t flood = kt_scale(100000, 20000);
  atomic_store(&g_flood_stop, 0);
  atomic_store(&g_flooded_handled, 0);
  keel_ref_t fref, cref;
  keel_pid_t flooded = kt_spawn_monitor(flooded_proc, NULL, -1, &fref);
  for (uint64_t i = 0; i < flood; i++)
    CHECK_OK(keel_send(flooded, keel_msg_new(1, 0)));
  keel_pid_t counter = kt_spawn_monitor(counter_proc, NULL, -1, &cref);
  /* the counter finishes although the flooded process always has work */
  CHECK_EQ(kt_wait_down(cref, counter, NULL, 0), KEEL_REASON_NORMAL);
  CHECK_EQ(kt_wait_down(fref, flooded, NULL, 0), KEEL_REASON_NORMAL);
  uint64_t handled = atomic_load(&g_flooded_handled);
  fprintf(stderr, "   the flooded process handled %" PRIu64 " messages meanwhile\n", handled);
  CHECK(handled > 0);
}

static atomic_int g_stop_spinning;
static atomic_uint_fast64_t g_spins;

static void spinner_proc(void *arg) {
  (void)arg;
  while (!atomic_load(&g_stop_spinning)) {
    atomic_fetch_add_explicit(&g_spins, 1, memory_order_relaxed);
    CHECK_OK(keel_yield());
  }
}

KT_CASE(timers_and_sleeps_fire_while_another_process_is_always_runnable) {
  CHECK_EQ(keel_sched_count(), 1);
  atomic_store(&g_stop_spinning, 0);
  atomic_store(&g_spins, 0);
  keel_ref_t ref;
  keel_pid_t spinner = kt_spawn_monitor(spinner_proc, NULL, -1, &ref);
  for (int i = 0; i < 10; i++)
    CHECK_OK(keel_sleep(10));
  keel_msg_t *m = NULL;
  CHECK_EQ(keel_receive(&m, 20), KEEL_ETIMEDOUT);
  CHECK_OK(keel_send_after(keel_self(), 10, keel_msg_new(T_DATA, 0), NULL));
  keel_msg_free(kt_recv_tag(T_DATA, KT_LONG));
  atomic_store(&g_stop_spinning, 1);
  CHECK_EQ(kt_wait_down(ref, spinner, NULL, 0), KEEL_REASON_NORMAL);
  CHECK(atomic_load(&g_spins) > 0);
}

/* ---- balancing ------------------------------------------------------------------------ */

static atomic_int g_moved;
static atomic_uint_fast64_t g_sink;
static atomic_int g_balance_stop;

/* Computes in small slices with yields; records whether it ever ran on a
 * scheduler other than 0, where all of these were placed. */
static void busy_yielder_proc(void *arg) {
  (void)arg;
  while (!atomic_load(&g_balance_stop)) {
    uint64_t x = 0;
    for (int i = 0; i < 20000; i++)
      x = x * 31 + (uint64_t)i;
    atomic_fetch_add_explicit(&g_sink, x, memory_order_relaxed);
    CHECK_OK(keel_yield());
    if (keel_sched_current() != 0) atomic_store(&g_moved, 1);
  }
}

KT_CASE(work_spreads_to_an_idle_scheduler) {
  CHECK_EQ(keel_sched_count(), 2);
  atomic_store(&g_moved, 0);
  atomic_store(&g_balance_stop, 0);
  enum { N = 8 };
  keel_ref_t refs[N];
  keel_pid_t pids[N];
  for (int i = 0; i < N; i++)
    pids[i] = kt_spawn_monitor(busy_yielder_proc, NULL, 0, &refs[i]);
  /* a liveness bound, not a speed test: balancing must happen at some point */
  int64_t deadline = kt_now_ms() + 10000;
  while (!atomic_load(&g_moved) && kt_now_ms() < deadline)
    CHECK_OK(keel_sleep(5));
  atomic_store(&g_balance_stop, 1);
  for (int i = 0; i < N; i++)
    CHECK_EQ(kt_wait_down(refs[i], pids[i], NULL, 0), KEEL_REASON_NORMAL);
  CHECK(atomic_load(&g_moved));
}

/* ---- stuck detection -------------------------------------------------------------------- */

static atomic_int g_stuck_reports;
static _Atomic keel_pid_t g_stuck_pid;
static _Atomic int64_t g_stuck_held;
static char g_stuck_name[32];

static void stuck_handler(const keel_report *r, void *ud) {
  (void)ud;
  if (r->kind != KEEL_REPORT_STUCK) return;
  if (atomic_load(&g_stuck_reports) == 0) {
    snprintf(g_stuck_name, sizeof g_stuck_name, "%s", r->name ? r->name : "(null)");
    atomic_store(&g_stuck_pid, r->pid);
    atomic_store(&g_stuck_held, r->held_ms);
  }
  atomic_fetch_add(&g_stuck_reports, 1);
}

static void hog_proc(void *arg) {
  (void)arg;
  int64_t until = kt_now_ms() + 300;
  while (kt_now_ms() < until) {
    /* busy, never yielding */
  }
}

KT_CASE(a_process_holding_its_scheduler_is_reported_as_stuck) {
  atomic_store(&g_stuck_reports, 0);
  atomic_store(&g_stuck_pid, 0);
  keel_rt_stats before, after;
  keel_rt_stats_get(&before);
  keel_rt_set_report_handler(stuck_handler, NULL);
  int n = keel_sched_count();
  keel_spawn_opts o;
  keel_spawn_opts_init(&o);
  o.name = "hog";
  o.scheduler = KEEL_ON_SCHEDULER(n > 1 ? (keel_sched_current() + 1) % n : 0);
  keel_ref_t ref = 0;
  o.monitor = true;
  o.monitor_ref = &ref;
  keel_pid_t pid;
  CHECK_OK(keel_spawn(hog_proc, NULL, &o, &pid));
  CHECK_EQ(kt_wait_down(ref, pid, NULL, 0), KEEL_REASON_NORMAL);
  KT_WAIT_UNTIL(atomic_load(&g_stuck_reports) >= 1);
  keel_rt_set_report_handler(NULL, NULL);
  CHECK_EQ(atomic_load(&g_stuck_pid), pid);
  CHECK(strcmp(g_stuck_name, "hog") == 0);
  CHECK(atomic_load(&g_stuck_held) >= 100);
  keel_rt_stats_get(&after);
  CHECK(after.stuck_reports > before.stuck_reports);
}

KT_CASE(a_process_that_yields_is_not_reported_as_stuck) {
  atomic_store(&g_stuck_reports, 0);
  keel_rt_set_report_handler(stuck_handler, NULL);
  /* 300 ms of work in slices of about 1 ms, yielding between them */
  int64_t until = kt_now_ms() + 300;
  while (kt_now_ms() < until) {
    int64_t slice = kt_now_ms() + 1;
    while (kt_now_ms() < slice) {
    }
    CHECK_OK(keel_yield());
  }
  CHECK_OK(keel_sleep(150)); /* leave the watchdog time to (wrongly) report */
  keel_rt_set_report_handler(NULL, NULL);
  CHECK_EQ(atomic_load(&g_stuck_reports), 0);
}

/* ---- deterministic mode ----------------------------------------------------------------- */

enum { DET_PROCS = 8, DET_STEPS = 4, DET_LEN = DET_PROCS * DET_STEPS + DET_PROCS };
static int g_order[DET_LEN];
static atomic_int g_order_n;
static atomic_int g_det_sched_count;

static void det_record(int v) {
  int i = atomic_fetch_add(&g_order_n, 1);
  CHECK(i < DET_LEN);
  g_order[i] = v;
}

static void det_child(void *arg) {
  int id = (int)(intptr_t)arg;
  for (int step = 0; step < DET_STEPS; step++) {
    det_record(id * 10 + step);
    if (step == 1) {
      kt_send_u64(g_parent, T_DATA, (uint64_t)id); /* makes the parent runnable */
    }
    CHECK_OK(keel_yield());
  }
}

static void det_root(void *arg) {
  (void)arg;
  atomic_store(&g_det_sched_count, keel_sched_count());
  g_parent = keel_self();
  for (int i = 0; i < DET_PROCS; i++)
    CHECK_OK(keel_spawn(det_child, (void *)(intptr_t)i, NULL, NULL));
  for (int i = 0; i < DET_PROCS; i++) {
    keel_msg_t *m = kt_recv(KT_LONG);
    det_record(100 + (int)kt_u64(m));
    keel_msg_free(m);
  }
}

static void det_run(uint64_t seed, int out[DET_LEN]) {
  keel_rt_opts o;
  keel_rt_opts_init(&o);
  o.deterministic = 1;
  o.seed = seed;
  o.schedulers = 0;
  atomic_store(&g_order_n, 0);
  memset(g_order, -1, sizeof g_order);
  CHECK_OK(keel_run(det_root, NULL, &o));
  CHECK_EQ(atomic_load(&g_det_sched_count), 1);
  CHECK_EQ(atomic_load(&g_order_n), DET_LEN);
  memcpy(out, g_order, sizeof g_order);
}

static void deterministic_mode_repeats_the_order_for_a_seed(void) {
  int a[DET_LEN], b[DET_LEN];
  for (uint64_t seed = 1; seed <= 3; seed++) {
    det_run(seed * 7919, a);
    det_run(seed * 7919, b);
    if (memcmp(a, b, sizeof a) != 0) {
      fprintf(stderr, "seed %" PRIu64 ": two runs gave different orders\n", seed * 7919);
      for (int i = 0; i < DET_LEN; i++)
        fprintf(stderr, "%d/%d ", a[i], b[i]);
      fprintf(stderr, "\n");
      CHECK(!"deterministic mode is not deterministic");
    }
  }
}

static void deterministic_mode_orders_differ_between_seeds(void) {
  int first[DET_LEN], other[DET_LEN];
  det_run(1, first);
  int differing = 0;
  for (uint64_t seed = 2; seed <= 6; seed++) {
    det_run(seed, other);
    if (memcmp(first, other, sizeof first) != 0) differing++;
  }
  fprintf(stderr, "   %d of 5 other seeds gave a different order\n", differing);
  CHECK(differing >= 1);
}

static void deterministic_mode_takes_the_seed_from_keel_seed(void) {
  /* seed 0 means $KEEL_SEED: the order must be the one of that seed */
  int a[DET_LEN], b[DET_LEN];
  det_run(4242, a);
  setenv("KEEL_SEED", "4242", 1);
  det_run(0, b);
  unsetenv("KEEL_SEED");
  CHECK(memcmp(a, b, sizeof a) == 0);
}

static void deterministic_mode_ignores_the_scheduler_count(void) {
  /* deterministic mode means one scheduler, whatever was asked */
  keel_rt_opts o;
  keel_rt_opts_init(&o);
  o.deterministic = 1;
  o.seed = 99;
  o.schedulers = 4;
  atomic_store(&g_order_n, 0);
  CHECK_OK(keel_run(det_root, NULL, &o));
  CHECK_EQ(atomic_load(&g_det_sched_count), 1);
}

/* ---- the budget option ------------------------------------------------------------------ */

static atomic_uint_fast64_t g_budget_handled;
static atomic_int g_budget_done;
static uint64_t g_budget_max_run;

static void budget_flooded_proc(void *arg) {
  uint64_t total = (uint64_t)(uintptr_t)arg;
  keel_msg_free(kt_recv_tag(T_STOP, KT_LONG)); /* the go signal, after the flood */
  for (uint64_t i = 0; i < total; i++) {
    keel_msg_free(kt_recv(KT_LONG));
    atomic_fetch_add(&g_budget_handled, 1);
  }
  atomic_store(&g_budget_done, 1);
}

/* Looks at the flooded process's count at each of its own turns: the most
 * it advanced between two turns is the longest run it had. */
static void budget_observer_proc(void *arg) {
  (void)arg;
  uint64_t last = atomic_load(&g_budget_handled);
  while (!atomic_load(&g_budget_done)) {
    CHECK_OK(keel_yield());
    uint64_t now = atomic_load(&g_budget_handled);
    if (now - last > g_budget_max_run) g_budget_max_run = now - last;
    last = now;
  }
}

static void budget_root(void *arg) {
  (void)arg;
  enum { TOTAL = 5000 };
  atomic_store(&g_budget_handled, 0);
  atomic_store(&g_budget_done, 0);
  g_budget_max_run = 0;
  keel_ref_t fref, oref;
  keel_pid_t f = kt_spawn_monitor(budget_flooded_proc, (void *)(uintptr_t)TOTAL, -1, &fref);
  keel_pid_t o = kt_spawn_monitor(budget_observer_proc, NULL, -1, &oref);
  for (int i = 0; i < TOTAL; i++)
    CHECK_OK(keel_send(f, keel_msg_new(T_DATA, 0)));
  kt_send_tag(f, T_STOP);
  CHECK_EQ(kt_wait_down(fref, f, NULL, 0), KEEL_REASON_NORMAL);
  CHECK_EQ(kt_wait_down(oref, o, NULL, 0), KEEL_REASON_NORMAL);
}

static void budget_option_bounds_the_messages_handled_per_turn(void) {
  static const int budgets[] = {10, 0 /* default: 100 */};
  for (size_t i = 0; i < sizeof budgets / sizeof budgets[0]; i++) {
    keel_rt_opts o;
    keel_rt_opts_init(&o);
    o.schedulers = 1;
    o.budget = budgets[i];
    CHECK_OK(keel_run(budget_root, NULL, &o));
    int want = budgets[i] ? budgets[i] : 100;
    fprintf(stderr, "   budget %d: longest run %" PRIu64 " messages\n", want, g_budget_max_run);
    CHECK(g_budget_max_run > 0);
    CHECK(g_budget_max_run <= (uint64_t)want);
  }
}

typedef struct extra_case {
  const char *name;
  void (*fn)(void);
} extra_case;

int main(int argc, char **argv) {
  static const kt_case cases[] = {
      KT_ENTRY(every_scheduler_runs_processes_placed_on_it),
      KT_ENTRY_SCHED(scheduler_count_follows_the_option, 3),
      KT_ENTRY_SCHED(a_flooded_process_does_not_starve_the_others, 1),
      KT_ENTRY_SCHED(timers_and_sleeps_fire_while_another_process_is_always_runnable, 1),
      KT_ENTRY_SCHED(work_spreads_to_an_idle_scheduler, 2),
      KT_ENTRY(a_process_holding_its_scheduler_is_reported_as_stuck),
      KT_ENTRY(a_process_that_yields_is_not_reported_as_stuck),
  };
  static const extra_case extra[] = {
      {"deterministic_mode_repeats_the_order_for_a_seed",
       deterministic_mode_repeats_the_order_for_a_seed},
      {"deterministic_mode_orders_differ_between_seeds",
       deterministic_mode_orders_differ_between_seeds},
      {"deterministic_mode_takes_the_seed_from_keel_seed",
       deterministic_mode_takes_the_seed_from_keel_seed},
      {"deterministic_mode_ignores_the_scheduler_count",
       deterministic_mode_ignores_the_scheduler_count},
      {"budget_option_bounds_the_messages_handled_per_turn",
       budget_option_bounds_the_messages_handled_per_turn},
  };
  size_t nextra = sizeof extra / sizeof extra[0];
  int only_extra = 0;
  for (size_t i = 0; argc > 1 && i < nextra; i++)
    if (strcmp(argv[1], extra[i].name) == 0) only_extra = 1;
  if (!only_extra) {
    int rc = kt_run_cases(cases, sizeof cases / sizeof cases[0], argc, argv);
    if (rc != 0) return rc;
  }
  for (size_t i = 0; i < nextra; i++) {
    if (argc > 1 && strcmp(argv[1], extra[i].name) != 0) continue;
    fprintf(stderr, "-- %s\n", extra[i].name);
    extra[i].fn();
    printf("ok - %s\n", extra[i].name);
  }
  return 0;
}
