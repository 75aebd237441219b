/* test_idle.c - an idle node sleeps: with a few processes waiting forever in
 * receive (one of them with a long receive timeout pending) and nothing to
 * do, the whole OS process uses under 1% of one CPU. Measured as process CPU
 * time (CLOCK_PROCESS_CPUTIME_ID, all threads) over a 2 s window of wall
 * time: the bound is 20 ms (40 ms under sanitizers, whose own threads tick).
 * This is a check that nothing spins, not a benchmark: a busy-polling
 * scheduler burns the whole 2000 ms.
 */
#include <stdatomic.h>
#include <time.h>

#include "rt/kt_rt.h"

enum { T_STOP = 1 };

static int64_t cpu_ns(void) {
  struct timespec ts;
  CHECK_OK(clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts));
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void idle_proc(void *arg) {
  int64_t timeout = (int64_t)(intptr_t)arg;
  for (;;) {
    keel_msg_t *m = NULL;
    int rc = keel_receive(&m, timeout);
    if (rc == KEEL_ETIMEDOUT) continue;
    CHECK_OK(rc);
    uint32_t tag = keel_msg_tag(m);
    keel_msg_free(m);
    if (tag == T_STOP) return;
  }
}

static void measure_idle(int64_t window_ms) {
  enum { N = 6 };
  int n = keel_sched_count();
  keel_pid_t pids[N];
  keel_ref_t refs[N];
  for (int i = 0; i < N; i++) {
    /* most wait forever; one waits with a long timeout armed */
    int64_t timeout = i == 0 ? 60000 : KEEL_INFINITY;
    pids[i] = kt_spawn_monitor(idle_proc, (void *)(intptr_t)timeout, i % n, &refs[i]);
  }
  CHECK_OK(keel_sleep(300)); /* let start-up work settle */
  int64_t c0 = cpu_ns(), t0 = kt_now_ns();
  CHECK_OK(keel_sleep(window_ms));
  int64_t c1 = cpu_ns(), t1 = kt_now_ns();
  double cpu_ms = (double)(c1 - c0) / 1e6, wall_ms = (double)(t1 - t0) / 1e6;
  fprintf(stderr, "   idle node: %.2f ms CPU over %.0f ms wall with %d schedulers (%.3f%%)\n",
          cpu_ms, wall_ms, n, 100.0 * cpu_ms / wall_ms);
  double bound = (KT_SANITIZED ? 40.0 : 20.0) * (double)window_ms / 2000.0;
  CHECK(cpu_ms < bound);
  for (int i = 0; i < N; i++)
    kt_send_tag(pids[i], T_STOP);
  for (int i = 0; i < N; i++)
    CHECK_EQ(kt_wait_down(refs[i], pids[i], NULL, 0), KEEL_REASON_NORMAL);
}

KT_CASE(an_idle_node_uses_under_one_percent_cpu) {
  measure_idle(2000);
}

KT_CASE(an_idle_node_with_four_schedulers_uses_under_one_percent_cpu) {
  measure_idle(2000);
}

KT_MAIN(KT_ENTRY(an_idle_node_uses_under_one_percent_cpu),
        KT_ENTRY_SCHED(an_idle_node_with_four_schedulers_uses_under_one_percent_cpu, 4))
