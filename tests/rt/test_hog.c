/* test_hog.c - a process that computes for a long time costs only itself:
 * keel_consume yields its scheduler to the others (and to that scheduler's
 * I/O), the other schedulers take what waits behind a hog that never
 * yields, and a hog limit kills a process that runs too long without
 * waiting.
 *
 * No case asserts a duration. Each hog loops until the processes it could
 * starve have finished their work, or until a cap of 20 s; a starved
 * process shows as the cap reached, which fails the case. The round-trip
 * times of the pinger are printed (to stderr) for docs/runtime.md, not
 * checked: on this 2-core machine, a ping through a scheduler shared with a
 * consuming hog took a max of about 1-2 ms (the 1 ms slice plus a switch),
 * the same pinger on a node whose only other scheduler is held by a hog that
 * never yields about 50 ms once (the watchdog's tick before the steal), then
 * microseconds.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "keel/message.h"
#include "keel/process.h"
#include "keel/runtime.h"
#include "rt/kt_rt.h"

#define PINGS    50
#define CAP_MS   20000
#define TAG_PING 1
#define TAG_PONG 2

static atomic_bool g_done;       /* the pinger finished its round trips */
static atomic_bool g_capped;     /* a hog reached the cap: something was starved */
static atomic_int g_yields;      /* keel_consume said it yielded */
static _Atomic int64_t g_max_us; /* the pinger's slowest round trip */

static void echo_main(void *arg) {
  (void)arg;
  for (;;) {
    keel_msg_t *m = NULL;
    if (keel_receive(&m, KEEL_INFINITY) != 0) return;
    keel_pid_t from = keel_msg_from(m);
    uint32_t tag = keel_msg_tag(m);
    keel_msg_free(m);
    if (tag != TAG_PING) return;
    kt_send_tag(from, TAG_PONG);
  }
}

/* PINGS round trips to the echo process given as arg, then g_done. */
static void pinger_main(void *arg) {
  keel_pid_t echo = *(keel_pid_t *)arg;
  int64_t worst = 0;
  for (int i = 0; i < PINGS; i++) {
    int64_t t0 = kt_now_ns();
    kt_send_tag(echo, TAG_PING);
    keel_msg_free(kt_recv_tag(TAG_PONG, KEEL_INFINITY));
    int64_t us = (kt_now_ns() - t0) / 1000;
    if (us > worst) worst = us;
  }
  atomic_store(&g_max_us, worst);
  atomic_store(&g_done, true);
}

static atomic_bool g_started; /* the hog runs */

/* Computes until the pinger is done (or the cap), counting its work with
 * keel_consume when arg is non-NULL, else never yielding at all. */
static void hog_main(void *arg) {
  bool consume = arg != NULL;
  atomic_store(&g_started, true);
  int64_t t0 = kt_now_ms();
  volatile uint64_t x = 1;
  while (!atomic_load(&g_done)) {
    for (int i = 0; i < 100; i++)
      x = x * 6364136223846793005ull + 1442695040888963407ull;
    if (consume && keel_consume(1) == 1) atomic_fetch_add(&g_yields, 1);
    if (kt_now_ms() - t0 > CAP_MS) {
      atomic_store(&g_capped, true);
      return;
    }
  }
}

static void reset(void) {
  atomic_store(&g_done, false);
  atomic_store(&g_capped, false);
  atomic_store(&g_started, false);
  atomic_store(&g_yields, 0);
  atomic_store(&g_max_us, 0);
}

/* The driver: starts the hog on scheduler 0, and once it runs there, an
 * echo and a pinger on scheduler 0 too (behind the hog); waits for the hog
 * to end. It runs on the last scheduler (pinned there when there are two,
 * so it is not itself stuck behind the hog). */
static void driver_main(void *arg) {
  bool consume = arg != NULL;
  keel_spawn_opts o;
  keel_spawn_opts_init(&o);
  o.scheduler = KEEL_ON_SCHEDULER(0);
  keel_pid_t hog, echo, pinger;
  keel_ref_t ref;
  CHECK_OK(keel_spawn(hog_main, consume ? (void *)1 : NULL, &o, &hog));
  CHECK_OK(keel_monitor(hog, &ref));
  while (!atomic_load(&g_started))
    keel_sleep(1);
  CHECK_OK(keel_spawn(echo_main, NULL, &o, &echo));
  CHECK_OK(keel_spawn(pinger_main, &echo, &o, &pinger));
  kt_wait_down(ref, hog, NULL, 0);
  kt_send_tag(echo, 99); /* ends it */
}

static void run_with_hog(bool consume) {
  reset();
  keel_spawn_opts o;
  keel_spawn_opts_init(&o);
  int last = keel_sched_count() - 1;
  o.scheduler = KEEL_ON_SCHEDULER(last);
  o.pin = last > 0;
  o.monitor = true;
  keel_ref_t ref;
  o.monitor_ref = &ref;
  keel_pid_t driver;
  CHECK_OK(keel_spawn(driver_main, consume ? (void *)1 : NULL, &o, &driver));
  CHECK_EQ(kt_wait_down(ref, driver, NULL, 0), KEEL_REASON_NORMAL);
  CHECK(!atomic_load(&g_capped)); /* the pinger was not starved */
  CHECK(atomic_load(&g_done));
}

/* One scheduler: nobody can steal, so only the hog's own yields let the
 * others run. */
KT_CASE(consume_lets_the_others_of_its_scheduler_run) {
  run_with_hog(true);
  CHECK(atomic_load(&g_yields) > 0);
  fprintf(stderr, "one scheduler, a consuming hog: slowest round trip %lld us, %d yields\n",
          (long long)atomic_load(&g_max_us), atomic_load(&g_yields));
}

/* Two schedulers: a hog that never yields holds scheduler 0; the echo and
 * the pinger, queued there behind it (in its inbox: they were spawned from
 * scheduler 1), move to scheduler 1, stolen from a scheduler the watchdog
 * saw stuck. */
KT_CASE(the_others_leave_a_scheduler_held_by_a_hog) {
  run_with_hog(false);
  fprintf(stderr, "two schedulers, a hog that never yields: slowest round trip %lld us\n",
          (long long)atomic_load(&g_max_us));
}

/* Consumes forever, or until the cap. */
static void endless_main(void *arg) {
  (void)arg;
  int64_t t0 = kt_now_ms();
  volatile uint64_t x = 1;
  while (kt_now_ms() - t0 < CAP_MS) {
    for (int i = 0; i < 100; i++)
      x = x * 6364136223846793005ull + 1442695040888963407ull;
    keel_consume(1);
  }
  atomic_store(&g_capped, true);
}

KT_CASE(a_hog_limit_kills_a_process_that_runs_too_long) {
  reset();
  keel_rt_stats before;
  keel_rt_stats_get(&before);
  keel_spawn_opts o;
  keel_spawn_opts_init(&o);
  o.hog_limit_ms = 150;
  o.monitor = true;
  keel_ref_t ref;
  o.monitor_ref = &ref;
  keel_pid_t pid;
  CHECK_OK(keel_spawn(endless_main, NULL, &o, &pid));
  char why[128] = "";
  CHECK_EQ(kt_wait_down(ref, pid, why, sizeof why), KEEL_REASON_KILLED);
  CHECK(!atomic_load(&g_capped));
  if (strncmp(why, "hog: ran ", 9) != 0) fprintf(stderr, "why: [%s]\n", why);
  CHECK(strncmp(why, "hog: ran ", 9) == 0);
  CHECK(strstr(why, "without waiting (limit 150 ms)") != NULL);
  keel_rt_stats after;
  keel_rt_stats_get(&after);
  CHECK_EQ(after.hog_kills, before.hog_kills + 1);
}

/* A process that waits between bursts is never a hog, however long it lives. */
static void bursty_main(void *arg) {
  (void)arg;
  CHECK_OK(keel_set_hog_limit(500)); /* far above a burst, even on a loaded machine */
  volatile uint64_t x = 1;
  for (int burst = 0; burst < 100; burst++) { /* 1 s of work in all: twice the limit */
    int64_t t0 = kt_now_ms();
    while (kt_now_ms() - t0 < 10) { /* 10 ms of work, then a wait */
      for (int i = 0; i < 100; i++)
        x = x * 6364136223846793005ull + 1442695040888963407ull;
      keel_consume(1);
    }
    keel_sleep(1);
  }
}

KT_CASE(waiting_resets_the_hog_clock) {
  keel_spawn_opts o;
  keel_spawn_opts_init(&o);
  o.monitor = true;
  keel_ref_t ref;
  o.monitor_ref = &ref;
  keel_pid_t pid;
  CHECK_OK(keel_spawn(bursty_main, NULL, &o, &pid));
  CHECK_EQ(kt_wait_down(ref, pid, NULL, 0), KEEL_REASON_NORMAL);
}

KT_CASE(hog_limit_errors) {
  CHECK_EQ(keel_set_hog_limit(-1), KEEL_EINVAL);
  CHECK_OK(keel_set_hog_limit(0));
  keel_spawn_opts o;
  keel_spawn_opts_init(&o);
  o.hog_limit_ms = -5;
  keel_pid_t pid;
  CHECK_EQ(keel_spawn(echo_main, NULL, &o, &pid), KEEL_EINVAL);
}

static void *outside(void *arg) {
  (void)arg;
  CHECK_EQ(keel_consume(1), KEEL_ENOTPROC);
  CHECK_EQ(keel_set_hog_limit(10), KEEL_ENOTPROC);
  return NULL;
}

KT_CASE(outside_a_process) {
  pthread_t t;
  pthread_create(&t, NULL, outside, NULL);
  pthread_join(t, NULL);
}

KT_MAIN(KT_ENTRY_SCHED(consume_lets_the_others_of_its_scheduler_run, 1),
        KT_ENTRY_SCHED(the_others_leave_a_scheduler_held_by_a_hog, 2),
        KT_ENTRY_SCHED(a_hog_limit_kills_a_process_that_runs_too_long, 2),
        KT_ENTRY_SCHED(waiting_resets_the_hog_clock, 2), KT_ENTRY(hog_limit_errors),
        KT_ENTRY(outside_a_process))
