/* test_links.c - links, monitors and trap_exit: link cascades through a chain
 * of processes, a trapping process stopping the cascade, DOWN reasons (normal,
 * shutdown, error text, killed, noproc), link to a dead pid (KEEL_ENOPROC),
 * monitor of a dead pid (noproc DOWN), demonitor removing a queued DOWN,
 * unlink dropping a pending exit signal, and races between spawn/link/monitor
 * and a process dying on another scheduler.
 */
#include <stdatomic.h>

#include "rt/kt_rt.h"

enum { T_PID = 1, T_STOP, T_EXIT_SEEN, T_READY, T_GO, T_ALIVE };

static keel_pid_t g_parent;

/* ---- chains ---------------------------------------------------------------- */

typedef struct chain {
  int n;       /* length */
  int trap_at; /* index of the trapping process, -1 for none */
  keel_pid_t *pids;
} chain;

static chain g_chain;

/* Process i of the chain: spawns process i+1 linked to itself, reports its
 * pid to the parent, then waits: T_STOP ends it normally; an EXIT (when it
 * traps) is reported to the parent. */
static void chain_proc(void *arg) {
  int i = (int)(intptr_t)arg;
  if (i == g_chain.trap_at) keel_trap_exit(true);
  if (i + 1 < g_chain.n) {
    keel_spawn_opts o;
    keel_spawn_opts_init(&o);
    o.link = true;
    o.scheduler = KEEL_ON_SCHEDULER((i + 1) % keel_sched_count()); /* spread over schedulers */
    CHECK_OK(keel_spawn(chain_proc, (void *)(intptr_t)(i + 1), &o, NULL));
  }
  kt_send_u64(g_parent, T_PID, ((uint64_t)i << 48) | keel_self());
  for (;;) {
    keel_msg_t *m = kt_recv(KEEL_INFINITY);
    if (keel_msg_kind_of(m) == KEEL_MSG_EXIT) {
      kt_report_exit(m, g_parent, T_EXIT_SEEN);
      continue;
    }
    uint32_t tag = keel_msg_tag(m);
    keel_msg_free(m);
    if (tag == T_STOP) return;
  }
}

static void build_chain(int n, int trap_at, keel_ref_t *refs) {
  g_parent = keel_self();
  g_chain.n = n;
  g_chain.trap_at = trap_at;
  g_chain.pids = calloc((size_t)n, sizeof(keel_pid_t));
  CHECK(g_chain.pids != NULL);
  CHECK_OK(keel_spawn(chain_proc, (void *)(intptr_t)0, NULL, NULL));
  for (int k = 0; k < n; k++) {
    uint64_t v = kt_recv_tag_u64(T_PID, KT_LONG);
    int i = (int)(v >> 48);
    CHECK(i >= 0 && i < n);
    g_chain.pids[i] = v & ((1ull << 48) - 1);
  }
  for (int i = 0; i < n; i++)
    CHECK_OK(keel_monitor(g_chain.pids[i], &refs[i]));
}

static void free_chain(void) {
  free(g_chain.pids);
  g_chain.pids = NULL;
}

KT_CASE(link_cascade_brings_down_the_whole_chain_with_the_error_text) {
  enum { N = 200 };
  static keel_ref_t refs[N];
  build_chain(N, -1, refs);
  CHECK_OK(keel_exit_signal(g_chain.pids[N / 2], KEEL_REASON_ERROR, "boom"));
  for (int i = 0; i < N; i++) {
    char text[32];
    CHECK_EQ(kt_wait_down(refs[i], g_chain.pids[i], text, sizeof text), KEEL_REASON_ERROR);
    CHECK(strcmp(text, "boom") == 0);
  }
  for (int i = 0; i < N; i++)
    CHECK(!keel_is_alive(g_chain.pids[i]));
  free_chain();
}

KT_CASE(kill_cascades_as_killed_through_links) {
  enum { N = 50 };
  static keel_ref_t refs[N];
  build_chain(N, -1, refs);
  CHECK_OK(keel_exit_signal(g_chain.pids[0], KEEL_REASON_KILL, NULL));
  for (int i = 0; i < N; i++)
    CHECK_EQ(kt_wait_down(refs[i], g_chain.pids[i], NULL, 0), KEEL_REASON_KILLED);
  free_chain();
}

KT_CASE(a_trapping_process_in_the_chain_gets_exit_and_stops_the_cascade) {
  enum { N = 20, TRAP = 10 };
  static keel_ref_t refs[N];
  build_chain(N, TRAP, refs);
  /* kill the far end: TRAP+1 .. N-1 die, TRAP traps, 0 .. TRAP-1 live on */
  CHECK_OK(keel_exit_signal(g_chain.pids[N - 1], KEEL_REASON_ERROR, "boom"));
  for (int i = N - 1; i > TRAP; i--) {
    char text[32];
    CHECK_EQ(kt_wait_down(refs[i], g_chain.pids[i], text, sizeof text), KEEL_REASON_ERROR);
    CHECK(strcmp(text, "boom") == 0);
  }
  kt_exit_seen e = kt_recv_exit_seen(T_EXIT_SEEN);
  CHECK_EQ(e.self, g_chain.pids[TRAP]);
  CHECK_EQ(e.from, g_chain.pids[TRAP + 1]);
  CHECK_EQ(e.kind, KEEL_REASON_ERROR);
  CHECK(strcmp(e.text, "boom") == 0);
  /* the rest is alive and answers */
  for (int i = 0; i <= TRAP; i++)
    CHECK(keel_is_alive(g_chain.pids[i]));
  keel_msg_t *m = NULL;
  CHECK_EQ(keel_receive_match(kt_match_kind_fn, &(keel_msg_kind){KEEL_MSG_DOWN}, &m, 100),
           KEEL_ETIMEDOUT);
  /* normal exits do not bring links down: stop them one by one, leaf first */
  for (int i = TRAP; i >= 0; i--) {
    kt_send_tag(g_chain.pids[i], T_STOP);
    CHECK_EQ(kt_wait_down(refs[i], g_chain.pids[i], NULL, 0), KEEL_REASON_NORMAL);
  }
  free_chain();
}

/* ---- links ------------------------------------------------------------------- */

static void crash_proc(void *arg) {
  keel_exit(KEEL_REASON_ERROR, (const char *)arg);
}
static void quick_proc(void *arg) {
  (void)arg;
}

static void wait_forever_proc(void *arg) {
  (void)arg;
  for (;;) {
    keel_msg_t *m = kt_recv(KEEL_INFINITY);
    uint32_t tag = keel_msg_tag(m);
    keel_msg_free(m);
    if (tag == T_STOP) return;
    if (tag == T_ALIVE) kt_send_tag(g_parent, T_ALIVE);
  }
}

/* Links itself to the pid in arg, tells the parent, then crashes on T_GO. */
static void link_then_crash_proc(void *arg) {
  keel_pid_t to = (keel_pid_t)(uintptr_t)arg;
  CHECK_OK(keel_link(to));
  kt_send_tag(g_parent, T_READY);
  keel_msg_free(kt_recv_tag(T_GO, KT_LONG));
  keel_exit(KEEL_REASON_ERROR, "linked crash");
}

KT_CASE(links_are_bidirectional) {
  g_parent = keel_self();
  /* child links to us and crashes: we (trapping) get EXIT */
  CHECK_EQ(keel_trap_exit(true), 0);
  keel_pid_t child;
  CHECK_OK(keel_spawn(link_then_crash_proc, (void *)(uintptr_t)keel_self(), NULL, &child));
  keel_msg_free(kt_recv_tag(T_READY, KT_LONG));
  kt_send_tag(child, T_GO);
  char why[64];
  CHECK_EQ(kt_recv_exit(child, why, sizeof why), KEEL_REASON_ERROR);
  CHECK(strcmp(why, "linked crash") == 0);
  CHECK_EQ(keel_trap_exit(false), 1);

  /* the other direction: w is linked by the crasher, which dies: w dies too */
  keel_ref_t wref;
  keel_pid_t w = kt_spawn_monitor(wait_forever_proc, NULL, -1, &wref);
  keel_ref_t cref;
  keel_pid_t c = kt_spawn_monitor(link_then_crash_proc, (void *)(uintptr_t)w, -1, &cref);
  keel_msg_free(kt_recv_tag(T_READY, KT_LONG));
  kt_send_tag(c, T_GO);
  CHECK_EQ(kt_wait_down(cref, c, NULL, 0), KEEL_REASON_ERROR);
  char text[32];
  CHECK_EQ(kt_wait_down(wref, w, text, sizeof text), KEEL_REASON_ERROR);
  CHECK(strcmp(text, "linked crash") == 0);
}

KT_CASE(normal_exit_does_not_bring_down_links_but_is_seen_when_trapping) {
  keel_spawn_opts o;
  keel_spawn_opts_init(&o);
  o.link = true;
  keel_pid_t pid;
  CHECK_OK(keel_spawn(quick_proc, NULL, &o, &pid));
  keel_ref_t ref;
  CHECK_OK(keel_monitor(pid, &ref)); /* may already be dead: then noproc */
  keel_reason_kind k = kt_wait_down(ref, pid, NULL, 0);
  CHECK(k == KEEL_REASON_NORMAL || k == KEEL_REASON_NOPROC);
  CHECK(keel_is_alive(keel_self())); /* still here */

  CHECK_EQ(keel_trap_exit(true), 0);
  CHECK_OK(keel_spawn(quick_proc, NULL, &o, &pid));
  CHECK_EQ(kt_recv_exit(pid, NULL, 0), KEEL_REASON_NORMAL);
}

KT_CASE(link_to_a_dead_pid_returns_enoproc_and_links_nothing) {
  keel_ref_t ref;
  keel_pid_t pid = kt_spawn_monitor(quick_proc, NULL, -1, &ref);
  CHECK_EQ(kt_wait_down(ref, pid, NULL, 0), KEEL_REASON_NORMAL);
  CHECK_EQ(keel_trap_exit(true), 0);
  CHECK_EQ(keel_link(pid), KEEL_ENOPROC);
  keel_msg_t *m = NULL;
  CHECK_EQ(keel_receive(&m, 100), KEEL_ETIMEDOUT); /* no exit signal either */
  CHECK_OK(keel_unlink(pid));                      /* idempotent */
}

KT_CASE(link_is_idempotent) {
  g_parent = keel_self();
  CHECK_EQ(keel_trap_exit(true), 0);
  keel_pid_t pid;
  CHECK_OK(keel_spawn(wait_forever_proc, NULL, NULL, &pid));
  CHECK_OK(keel_link(pid));
  CHECK_OK(keel_link(pid));
  CHECK_OK(keel_exit_signal(pid, KEEL_REASON_ERROR, "once"));
  keel_msg_free(kt_recv_kind(KEEL_MSG_EXIT, KT_LONG));
  keel_msg_t *m = NULL;
  CHECK_EQ(keel_receive(&m, 100), KEEL_ETIMEDOUT); /* one link, one EXIT */
}

/* ---- DOWN reasons ------------------------------------------------------------- */

static void shutdown_proc(void *arg) {
  keel_exit(KEEL_REASON_SHUTDOWN, (const char *)arg);
}

KT_CASE(down_carries_each_exit_reason) {
  g_parent = keel_self();
  keel_ref_t ref;
  char text[64];
  keel_pid_t pid = kt_spawn_monitor(quick_proc, NULL, -1, &ref);
  CHECK_EQ(kt_wait_down(ref, pid, text, sizeof text), KEEL_REASON_NORMAL);
  CHECK(strcmp(text, "") == 0);

  pid = kt_spawn_monitor(shutdown_proc, "draining", -1, &ref);
  CHECK_EQ(kt_wait_down(ref, pid, text, sizeof text), KEEL_REASON_SHUTDOWN);
  CHECK(strcmp(text, "draining") == 0);

  static const char long_text[] =
      "a long error text that is preserved byte for byte through the DOWN message, "
      "including punctuation: {}[]()<>!?";
  pid = kt_spawn_monitor(crash_proc, (void *)long_text, -1, &ref);
  char big[256];
  CHECK_EQ(kt_wait_down(ref, pid, big, sizeof big), KEEL_REASON_ERROR);
  CHECK(strcmp(big, long_text) == 0);

  pid = kt_spawn_monitor(wait_forever_proc, NULL, -1, &ref);
  CHECK_OK(keel_exit_signal(pid, KEEL_REASON_KILL, NULL));
  CHECK_EQ(kt_wait_down(ref, pid, NULL, 0), KEEL_REASON_KILLED);

  /* monitor at a time the pid is already dead: noproc, at once */
  keel_ref_t ref2 = 0;
  CHECK_OK(keel_monitor(pid, &ref2));
  CHECK(ref2 != 0 && ref2 != ref);
  CHECK_EQ(kt_wait_down(ref2, pid, NULL, 0), KEEL_REASON_NOPROC);
}

KT_CASE(two_monitors_give_two_downs_with_their_own_refs) {
  g_parent = keel_self();
  keel_pid_t pid;
  CHECK_OK(keel_spawn(wait_forever_proc, NULL, NULL, &pid));
  keel_ref_t a, b;
  CHECK_OK(keel_monitor(pid, &a));
  CHECK_OK(keel_monitor(pid, &b));
  CHECK(a != b);
  kt_send_tag(pid, T_STOP);
  CHECK_EQ(kt_wait_down(b, pid, NULL, 0), KEEL_REASON_NORMAL);
  CHECK_EQ(kt_wait_down(a, pid, NULL, 0), KEEL_REASON_NORMAL);
}

KT_CASE(demonitor_removes_a_down_already_queued) {
  g_parent = keel_self();
  keel_ref_t ref;
  keel_pid_t pid = kt_spawn_monitor(quick_proc, NULL, -1, &ref);
  (void)pid;
  /* sleeping leaves messages queued: by the end the DOWN is in our mailbox */
  CHECK_OK(keel_sleep(100));
  CHECK_OK(keel_demonitor(ref));
  keel_msg_t *m = NULL;
  CHECK_EQ(keel_receive(&m, 100), KEEL_ETIMEDOUT);
  CHECK_EQ(keel_mailbox_len(), 0);
  CHECK_EQ(keel_demonitor(ref), KEEL_ENOENT);

  /* demonitor of a live process: no DOWN when it exits later */
  CHECK_OK(keel_spawn(wait_forever_proc, NULL, NULL, &pid));
  CHECK_OK(keel_monitor(pid, &ref));
  CHECK_OK(keel_demonitor(ref));
  keel_ref_t other;
  CHECK_OK(keel_monitor(pid, &other));
  kt_send_tag(pid, T_STOP);
  CHECK_EQ(kt_wait_down(other, pid, NULL, 0), KEEL_REASON_NORMAL);
  CHECK_EQ(keel_receive(&m, 100), KEEL_ETIMEDOUT);

  /* demonitor of a noproc DOWN */
  CHECK_OK(keel_monitor(pid, &ref));
  CHECK_OK(keel_demonitor(ref));
  CHECK_EQ(keel_receive(&m, 50), KEEL_ETIMEDOUT);
}

/* ---- unlink ---------------------------------------------------------------------- */

KT_CASE(unlink_drops_a_pending_exit_message_when_trapping) {
  g_parent = keel_self();
  CHECK_EQ(keel_trap_exit(true), 0);
  for (int round = 0; round < 20; round++) {
    keel_pid_t pid;
    CHECK_OK(keel_spawn(wait_forever_proc, NULL, NULL, &pid));
    CHECK_OK(keel_link(pid));
    keel_ref_t ref;
    CHECK_OK(keel_monitor(pid, &ref));
    CHECK_OK(keel_exit_signal(pid, KEEL_REASON_ERROR, "gone"));
    /* wait for the DOWN only: the EXIT is on its way or queued by then */
    CHECK_EQ(kt_wait_down(ref, pid, NULL, 0), KEEL_REASON_ERROR);
    CHECK_OK(keel_unlink(pid));
    keel_msg_t *m = NULL;
    CHECK_EQ(keel_receive(&m, round == 0 ? 100 : 5), KEEL_ETIMEDOUT);
    CHECK(m == NULL);
  }
}

static _Atomic keel_pid_t g_unlink_child;

static void die_on_go_proc(void *arg) {
  (void)arg;
  atomic_store(&g_unlink_child, keel_self());
  keel_msg_free(kt_recv_tag(T_GO, KT_LONG));
  keel_exit(KEEL_REASON_ERROR, "child died");
}

KT_CASE(unlink_saves_a_non_trapping_process_from_a_pending_exit) {
  /* the child runs on the other scheduler; we never enter the runtime
   * between its death and the unlink, so its exit signal is pending */
  g_parent = keel_self();
  CHECK_EQ(keel_sched_count(), 2);
  int here = keel_sched_current();
  keel_spawn_opts o;
  keel_spawn_opts_init(&o);
  o.link = true;
  o.scheduler = KEEL_ON_SCHEDULER(1 - here);
  keel_pid_t pid;
  CHECK_OK(keel_spawn(die_on_go_proc, NULL, &o, &pid));
  kt_send_tag(pid, T_GO);
  int64_t deadline = kt_now_ms() + KT_LONG;
  while (keel_is_alive(pid))
    CHECK(kt_now_ms() < deadline); /* busy wait, no yield */
  /* give the exit signal time to be emitted, still without yielding */
  int64_t until = kt_now_ms() + 20;
  while (kt_now_ms() < until) {
  }
  CHECK_OK(keel_unlink(pid));
  CHECK_OK(keel_yield());
  keel_msg_t *m = NULL;
  CHECK_EQ(keel_receive(&m, 50), KEEL_ETIMEDOUT); /* and we are alive */
}

/* ---- races with a process dying on another scheduler ------------------------------- */

KT_CASE(spawn_link_and_monitor_are_atomic_with_an_instant_crash) {
  g_parent = keel_self();
  CHECK_EQ(keel_trap_exit(true), 0);
  int n = keel_sched_count();
  for (int i = 0; i < 300; i++) {
    keel_spawn_opts o;
    keel_spawn_opts_init(&o);
    o.link = true;
    o.monitor = true;
    keel_ref_t ref = 0;
    o.monitor_ref = &ref;
    o.scheduler = KEEL_ON_SCHEDULER(i % n);
    keel_pid_t pid;
    CHECK_OK(keel_spawn(crash_proc, "early", &o, &pid));
    /* never noproc: the link and monitor existed before the child ran */
    char text[16];
    CHECK_EQ(kt_wait_down(ref, pid, text, sizeof text), KEEL_REASON_ERROR);
    CHECK(strcmp(text, "early") == 0);
    CHECK_EQ(kt_recv_exit(pid, text, sizeof text), KEEL_REASON_ERROR);
    CHECK(strcmp(text, "early") == 0);
  }
  CHECK_EQ(keel_mailbox_len(), 0);
}

KT_CASE(link_racing_with_a_crash_gives_enoproc_or_an_exit_signal) {
  g_parent = keel_self();
  CHECK_EQ(keel_trap_exit(true), 0);
  int n = keel_sched_count();
  int here = keel_sched_current();
  int enoproc = 0, linked = 0;
  for (int i = 0; i < 300; i++) {
    keel_pid_t pid;
    keel_spawn_opts o;
    keel_spawn_opts_init(&o);
    o.scheduler = KEEL_ON_SCHEDULER(n > 1 ? (here + 1) % n : 0);
    CHECK_OK(keel_spawn(crash_proc, "race", &o, &pid));
    for (int spin = 0; spin < i % 50; spin++)
      atomic_signal_fence(memory_order_seq_cst);
    int rc = keel_link(pid);
    if (rc == KEEL_ENOPROC) {
      enoproc++;
      continue;
    }
    CHECK_OK(rc);
    linked++;
    char text[64];
    keel_reason_kind kind = kt_recv_exit(pid, text, sizeof text);
    CHECK(kind == KEEL_REASON_ERROR || kind == KEEL_REASON_NOPROC);
    if (kind == KEEL_REASON_ERROR) CHECK(strcmp(text, "race") == 0);
  }
  fprintf(stderr, "   %d linked, %d enoproc\n", linked, enoproc);
  keel_msg_t *m = NULL;
  CHECK_EQ(keel_receive(&m, 50), KEEL_ETIMEDOUT); /* exactly one EXIT per link */
}

KT_CASE(monitor_racing_with_a_crash_gives_exactly_one_down) {
  g_parent = keel_self();
  int n = keel_sched_count();
  int here = keel_sched_current();
  for (int i = 0; i < 300; i++) {
    keel_pid_t pid;
    keel_spawn_opts o;
    keel_spawn_opts_init(&o);
    o.scheduler = KEEL_ON_SCHEDULER(n > 1 ? (here + 1) % n : 0);
    CHECK_OK(keel_spawn(crash_proc, "race", &o, &pid));
    keel_ref_t ref;
    CHECK_OK(keel_monitor(pid, &ref));
    char text[16];
    keel_reason_kind k = kt_wait_down(ref, pid, text, sizeof text);
    CHECK(k == KEEL_REASON_ERROR || k == KEEL_REASON_NOPROC);
    if (k == KEEL_REASON_ERROR) CHECK(strcmp(text, "race") == 0);
  }
  keel_msg_t *m = NULL;
  CHECK_EQ(keel_receive(&m, 50), KEEL_ETIMEDOUT);
}

KT_MAIN(KT_ENTRY(link_cascade_brings_down_the_whole_chain_with_the_error_text),
        KT_ENTRY(kill_cascades_as_killed_through_links),
        KT_ENTRY(a_trapping_process_in_the_chain_gets_exit_and_stops_the_cascade),
        KT_ENTRY(links_are_bidirectional),
        KT_ENTRY(normal_exit_does_not_bring_down_links_but_is_seen_when_trapping),
        KT_ENTRY(link_to_a_dead_pid_returns_enoproc_and_links_nothing),
        KT_ENTRY(link_is_idempotent), KT_ENTRY(down_carries_each_exit_reason),
        KT_ENTRY(two_monitors_give_two_downs_with_their_own_refs),
        KT_ENTRY(demonitor_removes_a_down_already_queued),
        KT_ENTRY(unlink_drops_a_pending_exit_message_when_trapping),
        KT_ENTRY_SCHED(unlink_saves_a_non_trapping_process_from_a_pending_exit, 2),
        KT_ENTRY(spawn_link_and_monitor_are_atomic_with_an_instant_crash),
        KT_ENTRY(link_racing_with_a_crash_gives_enoproc_or_an_exit_signal),
        KT_ENTRY(monitor_racing_with_a_crash_gives_exactly_one_down))
