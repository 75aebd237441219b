/* test_observe.c - the runtime seen from outside: every live process listed
 * with its name, parent, status, mailbox length and messages handled; a dead
 * pid refused; scheduler information; and a walk that stays consistent while
 * processes are spawned and exit on every scheduler at once.
 */
#define _GNU_SOURCE
#include <stdatomic.h>

#include "rt/kt_rt.h"

enum { T_DATA = 1, T_GO, T_DONE };

static keel_pid_t g_parent;

/* Waits for T_GO, then takes `n` messages (the u64 of T_GO), reports T_DONE
 * and waits to be killed. */
static void holder_proc(void *arg) {
  (void)arg;
  uint32_t tag = T_GO;
  keel_msg_t *m;
  CHECK_OK(keel_receive_match(kt_match_tag_fn, &tag, &m, KT_LONG));
  uint64_t n = kt_u64(m);
  keel_msg_free(m);
  for (uint64_t i = 0; i < n; i++) {
    tag = T_DATA;
    CHECK_OK(keel_receive_match(kt_match_tag_fn, &tag, &m, KT_LONG));
    keel_msg_free(m);
  }
  kt_send_u64(g_parent, T_DONE, 0);
  keel_sleep(KT_LONG); /* killed by the test */
}

typedef struct {
  keel_pid_t want;
  keel_proc_info got;
  int seen;
} find_ctx;

static bool find_fn(const keel_proc_info *info, void *ud) {
  find_ctx *f = ud;
  if (info->pid == f->want) {
    f->got = *info;
    f->seen++;
  }
  return true;
}

static keel_proc_info find(keel_pid_t pid) {
  find_ctx f = {.want = pid};
  CHECK(keel_rt_processes(find_fn, &f) >= 1);
  CHECK_EQ(f.seen, 1);
  return f.got;
}

KT_CASE(processes_lists_each_live_process_with_name_parent_and_mailbox) {
  g_parent = keel_self();
  keel_spawn_opts o;
  keel_spawn_opts_init(&o);
  o.name = "holder";
  keel_pid_t h;
  CHECK_OK(keel_spawn(holder_proc, NULL, &o, &h));
  for (uint64_t i = 0; i < 25; i++)
    kt_send_u64(h, T_DATA, i);
  CHECK_OK(keel_sleep(20)); /* let it start and wait for T_GO */

  keel_proc_info a = find(h);
  CHECK_EQ(a.pid, h);
  CHECK_EQ(a.parent, keel_self());
  CHECK_STR(a.name, "holder");
  CHECK_EQ(a.mailbox_len, 25);
  CHECK_EQ(a.messages_in, 25);
  CHECK_EQ(a.messages_handled, 0);
  CHECK_STR(a.status, "waiting");
  CHECK_STR(a.waiting_for, "message");
  CHECK(a.memory > 16384); /* at least a minimal stack */
  CHECK(a.scheduler >= 0 && a.scheduler < keel_sched_count());

  keel_proc_info b;
  CHECK_OK(keel_rt_process_info(h, &b));
  CHECK_EQ(b.mailbox_len, 25);

  /* the process asking sees itself running */
  CHECK_OK(keel_rt_process_info(keel_self(), &b));
  CHECK_STR(b.status, "running");

  kt_send_u64(h, T_GO, 10);
  keel_msg_t *m = kt_recv_tag(T_DONE, KT_LONG);
  keel_msg_free(m);
  CHECK_OK(keel_rt_process_info(h, &b));
  CHECK_EQ(b.mailbox_len, 15);
  CHECK_EQ(b.messages_handled, 11); /* T_GO and ten T_DATA */
  CHECK_EQ(b.messages_in, 26);

  keel_ref_t ref;
  CHECK_OK(keel_monitor(h, &ref));
  CHECK_OK(keel_exit_signal(h, KEEL_REASON_KILL, NULL));
  m = kt_recv_kind(KEEL_MSG_DOWN, KT_LONG);
  keel_msg_free(m);
  CHECK_EQ(keel_rt_process_info(h, &b), KEEL_ENOPROC);
  find_ctx f = {.want = h};
  keel_rt_processes(find_fn, &f);
  CHECK_EQ(f.seen, 0);
}

static bool count_fn(const keel_proc_info *info, void *ud) {
  (void)info;
  return ++*(int *)ud < 3; /* stop after three */
}

static void sleeper_proc(void *arg) {
  (void)arg;
  keel_sleep(KT_LONG);
}

KT_CASE(processes_walk_stops_when_the_callback_says_so) {
  keel_pid_t p[5];
  for (int i = 0; i < 5; i++)
    CHECK_OK(keel_spawn(sleeper_proc, NULL, NULL, &p[i]));
  int n = 0;
  CHECK_EQ(keel_rt_processes(count_fn, &n), 3);
  CHECK_EQ(n, 3);
  keel_proc_info info;
  CHECK_OK(keel_yield());
  CHECK_OK(keel_rt_process_info(p[0], &info));
  for (int i = 0; i < 5; i++)
    CHECK_OK(keel_exit_signal(p[i], KEEL_REASON_KILL, NULL));
}

KT_CASE(sched_info_reports_each_scheduler_and_idle_time_grows_when_idle) {
  int n = keel_sched_count();
  CHECK(n >= 1);
  keel_sched_info before[64], after;
  for (int i = 0; i < n && i < 64; i++)
    CHECK_OK(keel_rt_sched_info(i, &before[i]));
  CHECK_EQ(keel_rt_sched_info(n, &after), KEEL_EINVAL);
  CHECK_EQ(keel_rt_sched_info(-1, &after), KEEL_EINVAL);
  CHECK_OK(keel_sleep(200)); /* the whole node idles */
  uint64_t grown = 0;
  for (int i = 0; i < n && i < 64; i++) {
    CHECK_OK(keel_rt_sched_info(i, &after));
    CHECK_EQ(after.id, i);
    CHECK(after.idle_ns >= before[i].idle_ns);
    grown += after.idle_ns - before[i].idle_ns;
  }
  CHECK(grown > 0);
  CHECK(keel_rt_started_ms() > 0);
}

/* ---- consistency under churn --------------------------------------------------- */

static atomic_int g_stop;

static void short_proc(void *arg) {
  (void)arg;
  keel_yield();
}

static void churner_proc(void *arg) {
  (void)arg;
  keel_spawn_opts o;
  keel_spawn_opts_init(&o);
  o.name = "churn";
  while (!atomic_load(&g_stop)) {
    for (int i = 0; i < 50; i++)
      keel_spawn(short_proc, NULL, &o, NULL);
    keel_yield();
  }
  kt_send_u64(g_parent, T_DONE, 0);
}

typedef struct {
  keel_pid_t last;
  int bad;
  size_t n;
} walk_ctx;

static bool walk_fn(const keel_proc_info *info, void *ud) {
  walk_ctx *w = ud;
  /* table order: slot indexes strictly increase; fields are sane */
  if (w->n && (uint32_t)info->pid <= (uint32_t)w->last) w->bad++;
  if (!info->pid || info->scheduler < 0 || info->mailbox_len > 1000000) w->bad++;
  if (strcmp(info->status, "free") == 0) w->bad++;
  w->last = info->pid;
  w->n++;
  return true;
}

KT_CASE(processes_walk_is_consistent_while_processes_churn) {
  g_parent = keel_self();
  atomic_store(&g_stop, 0);
  int n = keel_sched_count();
  for (int i = 0; i < n; i++) {
    keel_spawn_opts o;
    keel_spawn_opts_init(&o);
    o.scheduler = KEEL_ON_SCHEDULER(i);
    CHECK_OK(keel_spawn(churner_proc, NULL, &o, NULL));
  }
  int walks = (int)kt_scale(300, 40);
  for (int i = 0; i < walks; i++) {
    walk_ctx w = {0};
    keel_rt_processes(walk_fn, &w);
    CHECK_EQ(w.bad, 0);
    CHECK(w.n >= 1); /* at least the caller */
    keel_yield();
  }
  atomic_store(&g_stop, 1);
  for (int i = 0; i < n; i++)
    keel_msg_free(kt_recv_tag(T_DONE, KT_LONG));
}

/* ---- lifecycle events ---------------------------------------------------------- */

static atomic_int g_started, g_exited, g_order_bad;
static _Atomic keel_pid_t g_watch;
static atomic_int g_reason;

static void on_proc_event(const keel_proc_event *ev, void *ud) {
  CHECK(ud == &g_watch);
  if (ev->pid != atomic_load(&g_watch) && strcmp(ev->name, "watched") != 0) return;
  if (ev->kind == KEEL_PROC_STARTED) {
    atomic_fetch_add(&g_started, 1);
    if (strcmp(ev->name, "watched") != 0) atomic_fetch_add(&g_order_bad, 1);
  } else {
    if (atomic_load(&g_started) == 0) atomic_fetch_add(&g_order_bad, 1);
    atomic_store(&g_reason, ev->reason);
    if (strcmp(ev->reason_text, "on purpose") != 0) atomic_fetch_add(&g_order_bad, 1);
    atomic_fetch_add(&g_exited, 1);
  }
}

static void crasher_proc(void *arg) {
  (void)arg;
  keel_exit(KEEL_REASON_ERROR, "on purpose");
}

KT_CASE(lifecycle_events_report_start_then_exit_with_the_reason) {
  atomic_store(&g_started, 0);
  atomic_store(&g_exited, 0);
  atomic_store(&g_order_bad, 0);
  keel_rt_set_proc_events(on_proc_event, &g_watch);
  keel_spawn_opts o;
  keel_spawn_opts_init(&o);
  o.name = "watched";
  o.monitor = true;
  keel_ref_t ref;
  o.monitor_ref = &ref;
  keel_pid_t pid;
  CHECK_OK(keel_spawn(crasher_proc, NULL, &o, &pid));
  atomic_store(&g_watch, pid);
  keel_msg_free(kt_recv_kind(KEEL_MSG_DOWN, KT_LONG));
  keel_rt_set_proc_events(NULL, NULL);
  CHECK_EQ(atomic_load(&g_started), 1);
  CHECK_EQ(atomic_load(&g_exited), 1); /* DOWN is sent after the event */
  CHECK_EQ(atomic_load(&g_reason), KEEL_REASON_ERROR);
  CHECK_EQ(atomic_load(&g_order_bad), 0);
}

KT_MAIN(KT_ENTRY(processes_lists_each_live_process_with_name_parent_and_mailbox),
        KT_ENTRY(processes_walk_stops_when_the_callback_says_so),
        KT_ENTRY(sched_info_reports_each_scheduler_and_idle_time_grows_when_idle),
        KT_ENTRY_SCHED(processes_walk_is_consistent_while_processes_churn, 2),
        KT_ENTRY(lifecycle_events_report_start_then_exit_with_the_reason))
