/* test_links_view.c - a process's links and monitors seen from outside
 * (keel_rt_process_links, _monitors, _monitored_by): both sides of a link
 * and of a monitor, a change another process sent to a sleeping process
 * (still a pending signal) already counted, a short array filled and the full
 * size told, a dead pid refused; and a reader thread copying the sets while
 * processes link, unlink, monitor, demonitor and die on two schedulers (run
 * under ThreadSanitizer by make test: the sets are the owners' data).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>

#include "rt/kt_rt.h"

enum { T_STOP = 1, T_PING, T_PONG, T_DONE };

/* Sleeps in receive until T_STOP (or T_PING, answered with T_PONG). */
static void sleeper_proc(void *arg) {
  (void)arg;
  for (;;) {
    keel_msg_t *m = kt_recv(KT_LONG);
    uint32_t tag = keel_msg_tag(m);
    keel_pid_t from = (keel_pid_t)kt_u64(m);
    keel_msg_free(m);
    if (tag == T_STOP) return;
    if (tag == T_PING) kt_send_u64(from, T_PONG, 0);
  }
}

static bool has(const keel_pid_t *v, size_t n, keel_pid_t pid) {
  for (size_t i = 0; i < n; i++)
    if (v[i] == pid) return true;
  return false;
}

static void ping(keel_pid_t to) {
  kt_send_u64(to, T_PING, keel_self());
  keel_msg_free(kt_recv_tag(T_PONG, KT_LONG));
}

KT_CASE(links_and_monitors_show_on_both_sides_even_before_the_peer_runs) {
  keel_pid_t self = keel_self(), a, b;
  CHECK_OK(keel_spawn(sleeper_proc, NULL, NULL, &a));
  CHECK_OK(keel_spawn(sleeper_proc, NULL, NULL, &b));
  ping(a); /* both asleep in receive from here on */
  ping(b);

  CHECK_OK(keel_link(a));
  keel_ref_t ra, rb;
  CHECK_OK(keel_monitor(a, &ra));
  CHECK_OK(keel_monitor(b, &rb));
  /* no wait: a and b have not run since, the changes are pending signals */
  keel_pid_t v[8];
  size_t n = 99;
  CHECK_OK(keel_rt_process_links(a, v, 8, &n));
  CHECK_EQ(n, 1);
  CHECK_EQ(v[0], self);
  CHECK_OK(keel_rt_process_links(self, v, 8, &n));
  CHECK_EQ(n, 1);
  CHECK_EQ(v[0], a);
  CHECK_OK(keel_rt_process_monitored_by(a, v, 8, &n));
  CHECK_EQ(n, 1);
  CHECK_EQ(v[0], self);
  CHECK_OK(keel_rt_process_monitors(self, v, 8, &n));
  CHECK_EQ(n, 2);
  CHECK(has(v, n, a) && has(v, n, b));
  CHECK_OK(keel_rt_process_monitors(a, v, 8, &n));
  CHECK_EQ(n, 0);

  /* a short array: filled as far as it goes, the full size told */
  keel_pid_t one[1] = {0};
  CHECK_OK(keel_rt_process_monitors(self, one, 1, &n));
  CHECK_EQ(n, 2);
  CHECK(one[0] == a || one[0] == b);
  CHECK_OK(keel_rt_process_monitors(self, NULL, 0, &n));
  CHECK_EQ(n, 2);
  CHECK_EQ(keel_rt_process_monitors(self, NULL, 1, &n), KEEL_EINVAL);
  CHECK_EQ(keel_rt_process_monitors(self, v, 8, NULL), KEEL_EINVAL);

  /* undone, and still seen at once on the sleeping side */
  CHECK_OK(keel_unlink(a));
  CHECK_OK(keel_demonitor(ra));
  CHECK_OK(keel_rt_process_links(a, v, 8, &n));
  CHECK_EQ(n, 0);
  CHECK_OK(keel_rt_process_monitored_by(a, v, 8, &n));
  CHECK_EQ(n, 0);
  CHECK_OK(keel_rt_process_monitors(self, v, 8, &n));
  CHECK_EQ(n, 1);
  CHECK_EQ(v[0], b);
  ping(a); /* handled for real now: the same answer */
  CHECK_OK(keel_rt_process_links(a, v, 8, &n));
  CHECK_EQ(n, 0);
  CHECK_OK(keel_rt_process_monitored_by(b, v, 8, &n));
  CHECK_EQ(n, 1);
  CHECK_EQ(v[0], self);

  /* a dead process is refused, its pid never shows a later incarnation */
  kt_send_u64(b, T_STOP, 0);
  keel_msg_free(kt_recv_kind(KEEL_MSG_DOWN, KT_LONG));
  CHECK_EQ(keel_rt_process_links(b, v, 8, &n), KEEL_ENOPROC);
  CHECK_EQ(keel_rt_process_monitored_by(b, v, 8, &n), KEEL_ENOPROC);
  CHECK_OK(keel_rt_process_monitors(self, v, 8, &n));
  CHECK_EQ(n, 0); /* the DOWN was received */
  CHECK_EQ(keel_rt_process_links(0, v, 8, &n), KEEL_ENOPROC);
  kt_send_u64(a, T_STOP, 0);
}

KT_CASE(spawn_link_and_monitor_show_on_parent_and_child) {
  keel_spawn_opts o;
  keel_spawn_opts_init(&o);
  o.link = true;
  o.monitor = true;
  keel_ref_t ref;
  o.monitor_ref = &ref;
  keel_pid_t c, v[4];
  size_t n;
  CHECK_OK(keel_spawn(sleeper_proc, NULL, &o, &c));
  CHECK_OK(keel_rt_process_links(c, v, 4, &n));
  CHECK_EQ(n, 1);
  CHECK_EQ(v[0], keel_self());
  CHECK_OK(keel_rt_process_monitored_by(c, v, 4, &n));
  CHECK_EQ(n, 1);
  CHECK_EQ(v[0], keel_self());
  CHECK_OK(keel_rt_process_links(keel_self(), v, 4, &n));
  CHECK_EQ(n, 1);
  CHECK_EQ(v[0], c);
  CHECK_OK(keel_unlink(c));
  kt_send_u64(c, T_STOP, 0);
  keel_msg_free(kt_recv_kind(KEEL_MSG_DOWN, KT_LONG));
}

/* ---- a reader thread against churn --------------------------------------------------------- */

#define CHURNERS 8
static keel_pid_t g_hub, g_main;
static _Atomic keel_pid_t g_churner[CHURNERS];
static atomic_bool g_stop;
static atomic_long g_reads, g_bad;

/* Links to and monitors the hub, and undoes it, many times; every other
 * round it leaves the link and the monitor in place and dies with them
 * (normal: the hub, not trapping, lives on), replaced by a fresh one. */
static void churner_proc(void *arg) {
  uintptr_t slot = (uintptr_t)arg;
  atomic_store(&g_churner[slot], keel_self());
  uint64_t rounds = kt_scale_tsan(400, 60);
  for (uint64_t i = 0; i < rounds; i++) {
    keel_ref_t ref;
    CHECK_OK(keel_link(g_hub));
    CHECK_OK(keel_monitor(g_hub, &ref));
    keel_pid_t v[4];
    size_t n;
    CHECK_OK(keel_rt_process_links(keel_self(), v, 4, &n));
    CHECK_EQ(n, 1);
    CHECK_EQ(v[0], g_hub);
    CHECK_OK(keel_unlink(g_hub));
    CHECK_OK(keel_demonitor(ref));
    if (i % 16 == 0) keel_yield();
  }
  CHECK_OK(keel_link(g_hub));
  keel_ref_t ref;
  CHECK_OK(keel_monitor(g_hub, &ref));
  kt_send_u64(g_main, T_DONE, slot);
}

/* Any thread may read: copies the churners' and the hub's sets as fast as it
 * can; a churner may only ever be linked to and monitor the hub. */
static void *reader_thread(void *arg) {
  (void)arg;
  keel_pid_t v[64];
  while (!atomic_load(&g_stop)) {
    for (int i = 0; i < CHURNERS; i++) {
      keel_pid_t c = atomic_load(&g_churner[i]);
      size_t n;
      if (c && keel_rt_process_links(c, v, 64, &n) == 0)
        for (size_t k = 0; k < n && k < 64; k++)
          if (v[k] != g_hub) atomic_fetch_add(&g_bad, 1);
      if (c && keel_rt_process_monitors(c, v, 64, &n) == 0)
        for (size_t k = 0; k < n && k < 64; k++)
          if (v[k] != g_hub) atomic_fetch_add(&g_bad, 1);
    }
    size_t n;
    /* one generation of churners at a time, each linked once at most */
    if (keel_rt_process_links(g_hub, v, 64, &n) == 0 && n > CHURNERS) atomic_fetch_add(&g_bad, 1);
    if (keel_rt_process_monitored_by(g_hub, v, 64, &n) == 0 && n > CHURNERS)
      atomic_fetch_add(&g_bad, 1);
    atomic_fetch_add(&g_reads, 1);
  }
  return NULL;
}

KT_CASE(reader_thread_copies_sets_while_processes_link_unlink_and_die) {
  g_main = keel_self();
  atomic_store(&g_stop, false);
  atomic_store(&g_reads, 0);
  atomic_store(&g_bad, 0);
  for (int i = 0; i < CHURNERS; i++)
    atomic_store(&g_churner[i], 0);
  CHECK_OK(keel_spawn(sleeper_proc, NULL, NULL, &g_hub));
  pthread_t th;
  CHECK_OK(pthread_create(&th, NULL, reader_thread, NULL));
  int generations = (int)kt_scale_tsan(4, 2);
  for (int g = 0; g < generations; g++) {
    for (uintptr_t i = 0; i < CHURNERS; i++)
      CHECK_OK(keel_spawn(churner_proc, (void *)i, NULL, NULL));
    for (int i = 0; i < CHURNERS; i++)
      keel_msg_free(kt_recv_tag(T_DONE, KT_LONG));
    for (int i = 0; i < CHURNERS; i++) {
      keel_pid_t c = atomic_load(&g_churner[i]);
      while (keel_is_alive(c))
        keel_sleep(1);
    }
    if (g + 1 < generations) ping(g_hub); /* lets it drain its signal queue */
  }
  /* the last churners died linked to and monitoring the hub: the hub, asleep
   * since, must come to show none of them. Not at once: a churner is no
   * longer alive a moment before its exit signals are queued to the hub, so
   * this waits (bounded) for the view, while the hub still sleeps; without
   * the pending signals applied by the reader it would never get there */
  atomic_store(&g_stop, true);
  pthread_join(th, NULL);
  keel_pid_t v[64];
  size_t n = 1, m = 1;
  for (int i = 0; i < 5000 && (n || m); i++) {
    CHECK_OK(keel_rt_process_links(g_hub, v, 64, &n));
    CHECK_OK(keel_rt_process_monitored_by(g_hub, v, 64, &m));
    if (n || m) keel_sleep(1);
  }
  CHECK_EQ(n, 0);
  CHECK_EQ(m, 0);
  ping(g_hub); /* and the same once it has handled its signals */
  CHECK_OK(keel_rt_process_links(g_hub, v, 64, &n));
  CHECK_EQ(n, 0);
  CHECK_OK(keel_rt_process_monitored_by(g_hub, v, 64, &n));
  CHECK_EQ(n, 0);
  CHECK(atomic_load(&g_reads) > 0);
  CHECK_EQ(atomic_load(&g_bad), 0);
  kt_send_u64(g_hub, T_STOP, 0);
}

KT_MAIN(KT_ENTRY(links_and_monitors_show_on_both_sides_even_before_the_peer_runs),
        KT_ENTRY(spawn_link_and_monitor_show_on_parent_and_child),
        KT_ENTRY_SCHED(reader_thread_copies_sets_while_processes_link_unlink_and_die, 2))
