/* test_process.c - processes: spawn and its options (stack size, scheduler
 * hint, atomic link and monitor, trap_exit, name), self, exit from inside with
 * each reason, exit signals from outside (kill is untrappable, normal is
 * ignored unless trapping, an error kills or becomes a KEEL_MSG_EXIT), pids
 * that are never reused, pid formatting, yield, keel_on_exit and crash reports.
 */
#include <stdatomic.h>

#include "rt/kt_rt.h"

enum { T_HELLO = 1, T_PID, T_VALUE, T_GO, T_STOP, T_ALIVE, T_NAME, T_SCHED, T_TRAP };

/* ---- spawn ---------------------------------------------------------------- */

typedef struct hello_arg {
  keel_pid_t parent;
  uint64_t value;
} hello_arg;

static void hello_proc(void *arg) {
  hello_arg *a = arg;
  kt_send_u64(a->parent, T_VALUE, a->value);
  kt_send_u64(a->parent, T_PID, keel_self());
}

KT_CASE(spawn_runs_function_with_its_argument_and_self_matches_pid) {
  static hello_arg a;
  a.parent = keel_self();
  a.value = 0xfeedbeefcafe;
  CHECK(a.parent != 0);
  keel_pid_t pid = 0;
  CHECK_OK(keel_spawn(hello_proc, &a, NULL, &pid));
  CHECK(pid != 0);
  CHECK(pid != keel_self());
  keel_msg_t *m = kt_recv(KT_LONG);
  CHECK_EQ(keel_msg_kind_of(m), KEEL_MSG_USER);
  CHECK_EQ(keel_msg_tag(m), T_VALUE);
  CHECK_EQ(kt_u64(m), 0xfeedbeefcafe);
  CHECK_EQ(keel_msg_from(m), pid);
  keel_msg_free(m);
  CHECK_EQ(kt_recv_tag_u64(T_PID, KT_LONG), pid);
}

KT_CASE(spawn_with_null_out_pid_still_runs) {
  static hello_arg a;
  a.parent = keel_self();
  a.value = 7;
  CHECK_OK(keel_spawn(hello_proc, &a, NULL, NULL));
  CHECK_EQ(kt_recv_tag_u64(T_VALUE, KT_LONG), 7);
  CHECK(kt_recv_tag_u64(T_PID, KT_LONG) != 0);
}

/* Uses about 600 KiB of stack: more than the 128 KiB default. */
static __attribute__((noinline)) uint64_t use_stack(int depth) {
  volatile char buf[4096];
  for (size_t i = 0; i < sizeof buf; i += 512)
    buf[i] = (char)(depth + (int)i);
  if (depth == 0) return (unsigned char)buf[0];
  uint64_t r = use_stack(depth - 1);
  return r + (unsigned char)buf[512];
}

static keel_pid_t g_parent;

static void quick_proc(void *arg) {
  (void)arg;
}

static void deep_proc(void *arg) {
  (void)arg;
  uint64_t r = use_stack(150);
  kt_send_u64(g_parent, T_VALUE, r);
}

KT_CASE(spawn_with_large_stack_size_allows_deep_recursion) {
  g_parent = keel_self();
  keel_spawn_opts o;
  keel_spawn_opts_init(&o);
  o.stack_size = 2u << 20;
  o.monitor = true;
  keel_ref_t ref = 0;
  o.monitor_ref = &ref;
  keel_pid_t pid;
  CHECK_OK(keel_spawn(deep_proc, NULL, &o, &pid));
  (void)kt_recv_tag_u64(T_VALUE, KT_LONG);
  CHECK_EQ(kt_wait_down(ref, pid, NULL, 0), KEEL_REASON_NORMAL);
}

KT_CASE(spawn_with_odd_stack_size_is_rounded_up) {
  g_parent = keel_self();
  keel_spawn_opts o;
  keel_spawn_opts_init(&o);
  o.stack_size = (1u << 20) + 123; /* not a page multiple */
  keel_ref_t ref = 0;
  o.monitor = true;
  o.monitor_ref = &ref;
  keel_pid_t pid;
  CHECK_OK(keel_spawn(deep_proc, NULL, &o, &pid));
  (void)kt_recv_tag_u64(T_VALUE, KT_LONG);
  CHECK_EQ(kt_wait_down(ref, pid, NULL, 0), KEEL_REASON_NORMAL);
}

static void report_sched_proc(void *arg) {
  (void)arg;
  /* Read at first run, before anything that can yield. */
  int s = keel_sched_current();
  kt_send_u64(g_parent, T_SCHED, (uint64_t)(int64_t)s);
}

KT_CASE(spawn_scheduler_hint_places_first_run_there) {
  g_parent = keel_self();
  int n = keel_sched_count();
  CHECK_EQ(n, 2);
  for (int round = 0; round < 20; round++) {
    int want = round % n;
    kt_spawn_on(report_sched_proc, NULL, want);
    CHECK_EQ((int64_t)kt_recv_tag_u64(T_SCHED, KT_LONG), want);
  }
}

static void crash_proc(void *arg) {
  keel_exit(KEEL_REASON_ERROR, (const char *)arg);
}

KT_CASE(spawn_with_link_delivers_exit_to_trapping_parent) {
  CHECK_EQ(keel_trap_exit(true), 0);
  keel_spawn_opts o;
  keel_spawn_opts_init(&o);
  o.link = true;
  keel_pid_t pid;
  CHECK_OK(keel_spawn(crash_proc, "boom", &o, &pid));
  char why[64];
  CHECK_EQ(kt_recv_exit(pid, why, sizeof why), KEEL_REASON_ERROR);
  CHECK(strcmp(why, "boom") == 0);
  CHECK_EQ(keel_trap_exit(false), 1);
}

KT_CASE(spawn_with_monitor_returns_ref_and_delivers_down) {
  keel_ref_t ref = 0;
  keel_pid_t pid = kt_spawn_monitor(quick_proc, NULL, -1, &ref);
  keel_msg_t *m = kt_recv_kind(KEEL_MSG_DOWN, KT_LONG);
  CHECK_EQ(keel_msg_ref(m), ref);
  keel_pid_t who;
  keel_reason r;
  CHECK_OK(keel_msg_exit_info(m, &who, &r));
  CHECK_EQ(who, pid);
  CHECK_EQ(r.kind, KEEL_REASON_NORMAL);
  CHECK(r.text != NULL);
  keel_msg_free(m);
}

KT_CASE(spawn_monitor_ref_is_an_output_whatever_it_held_before) {
  /* monitor_ref is "out": what the variable held before (here the same stale
   * value twice, as an uninitialised variable might) must not matter; each
   * monitor gets its own fresh, unique reference */
  keel_ref_t a = 0x5a5a5a5a5a5a5a5aull, b = 0x5a5a5a5a5a5a5a5aull;
  keel_spawn_opts o;
  keel_spawn_opts_init(&o);
  o.monitor = true;
  o.monitor_ref = &a;
  keel_pid_t pa, pb;
  CHECK_OK(keel_spawn(quick_proc, NULL, &o, &pa));
  o.monitor_ref = &b;
  CHECK_OK(keel_spawn(quick_proc, NULL, &o, &pb));
  CHECK(a != 0 && b != 0);
  CHECK(a != b);
  CHECK_EQ(kt_wait_down(a, pa, NULL, 0), KEEL_REASON_NORMAL);
  CHECK_EQ(kt_wait_down(b, pb, NULL, 0), KEEL_REASON_NORMAL);
}

static void trap_report_proc(void *arg) {
  (void)arg;
  /* Started trapping by the spawn option: the previous setting is 1. */
  int prev = keel_trap_exit(true);
  kt_send_u64(g_parent, T_TRAP, (uint64_t)prev);
  char why[64];
  CHECK_EQ(kt_recv_exit(g_parent, why, sizeof why), KEEL_REASON_ERROR);
  CHECK(strcmp(why, "please stop") == 0);
  kt_send_u64(g_parent, T_TRAP, 2);
}

KT_CASE(spawn_with_trap_exit_starts_trapping) {
  g_parent = keel_self();
  keel_spawn_opts o;
  keel_spawn_opts_init(&o);
  o.trap_exit = true;
  keel_pid_t pid;
  CHECK_OK(keel_spawn(trap_report_proc, NULL, &o, &pid));
  CHECK_EQ(kt_recv_tag_u64(T_TRAP, KT_LONG), 1);
  CHECK_OK(keel_exit_signal(pid, KEEL_REASON_ERROR, "please stop"));
  CHECK_EQ(kt_recv_tag_u64(T_TRAP, KT_LONG), 2);
}

static void name_proc(void *arg) {
  const char *want = arg;
  const char *got = keel_self_name();
  CHECK(got != NULL);
  CHECK(strcmp(got, want) == 0);
  CHECK_OK(keel_set_name("renamed"));
  CHECK(strcmp(keel_self_name(), "renamed") == 0);
  kt_send_tag(g_parent, T_NAME);
}

static void long_name_proc(void *arg) {
  const char *full = arg;
  const char *got = keel_self_name();
  size_t n = strlen(got);
  CHECK(n >= 1 && n <= 31);
  CHECK(strncmp(got, full, n) == 0);
  kt_send_tag(g_parent, T_NAME);
}

static void unnamed_proc(void *arg) {
  (void)arg;
  CHECK(strcmp(keel_self_name(), "") == 0);
  kt_send_tag(g_parent, T_NAME);
}

KT_CASE(spawn_name_is_copied_and_visible_to_the_process) {
  g_parent = keel_self();
  keel_spawn_opts o;
  keel_spawn_opts_init(&o);
  char name[32];
  snprintf(name, sizeof name, "worker-%d", 7);
  o.name = name;
  CHECK_OK(keel_spawn(name_proc, "worker-7", &o, NULL));
  memset(name, 'x', sizeof name - 1); /* the option was copied */
  keel_msg_free(kt_recv_tag(T_NAME, KT_LONG));

  static const char long_name[] = "a-process-name-that-is-longer-than-thirty-one-bytes";
  o.name = long_name;
  CHECK_OK(keel_spawn(long_name_proc, (void *)long_name, &o, NULL));
  keel_msg_free(kt_recv_tag(T_NAME, KT_LONG));

  CHECK_OK(keel_spawn(unnamed_proc, NULL, NULL, NULL));
  keel_msg_free(kt_recv_tag(T_NAME, KT_LONG));
}

/* ---- exit from inside ------------------------------------------------------ */

typedef struct exit_how {
  int mode;
} exit_how;

static void exiter_proc(void *arg) {
  int mode = ((exit_how *)arg)->mode;
  switch (mode) {
  case 0: return; /* returning is a normal exit */
  case 1: keel_exit(KEEL_REASON_NORMAL, NULL);
  case 2: keel_exit(KEEL_REASON_SHUTDOWN, "supervisor said so");
  case 3: keel_exit(KEEL_REASON_ERROR, "disk on fire");
  case 4: keel_exitf("code %d in %s", 42, "handler");
  case 5: keel_exit(KEEL_REASON_ERROR, NULL);
  }
  CHECK(!"unreachable");
}

KT_CASE(exit_from_inside_with_each_reason_reaches_monitors) {
  static exit_how how[6];
  static const keel_reason_kind want[6] = {KEEL_REASON_NORMAL,   KEEL_REASON_NORMAL,
                                           KEEL_REASON_SHUTDOWN, KEEL_REASON_ERROR,
                                           KEEL_REASON_ERROR,    KEEL_REASON_ERROR};
  static const char *want_text[6] = {
      NULL, NULL, "supervisor said so", "disk on fire", "code 42 in handler", ""};
  for (int i = 0; i < 6; i++) {
    how[i].mode = i;
    keel_ref_t ref;
    keel_pid_t pid = kt_spawn_monitor(exiter_proc, &how[i], -1, &ref);
    char text[64];
    CHECK_EQ(kt_wait_down(ref, pid, text, sizeof text), want[i]);
    if (want_text[i]) CHECK(strcmp(text, want_text[i]) == 0);
  }
}

/* ---- exit signals from outside --------------------------------------------- */

/* Waits for messages forever; answers T_ALIVE pings; exits on T_STOP. Traps
 * exits when arg is non-NULL and reports each EXIT to the parent (T_TRAP). */
static void victim_proc(void *arg) {
  if (arg) keel_trap_exit(true);
  for (;;) {
    keel_msg_t *m = kt_recv(KEEL_INFINITY);
    if (keel_msg_kind_of(m) == KEEL_MSG_EXIT) {
      kt_report_exit(m, g_parent, T_TRAP);
      continue;
    }
    uint32_t tag = keel_msg_tag(m);
    keel_msg_free(m);
    if (tag == T_STOP) return;
    if (tag == T_ALIVE) kt_send_tag(g_parent, T_ALIVE);
  }
}

static keel_pid_t spawn_victim(bool trapping, keel_ref_t *ref) {
  g_parent = keel_self();
  keel_pid_t pid = kt_spawn_monitor(victim_proc, trapping ? (void *)1 : NULL, -1, ref);
  /* make sure it runs (and traps) before we signal it */
  kt_send_tag(pid, T_ALIVE);
  keel_msg_free(kt_recv_tag(T_ALIVE, KT_LONG));
  return pid;
}

KT_CASE(exit_signal_kill_cannot_be_trapped) {
  keel_ref_t ref;
  keel_pid_t pid = spawn_victim(true, &ref);
  CHECK_OK(keel_exit_signal(pid, KEEL_REASON_KILL, NULL));
  CHECK_EQ(kt_wait_down(ref, pid, NULL, 0), KEEL_REASON_KILLED);
  CHECK(!keel_is_alive(pid));
  /* no EXIT message was forwarded: the kill was not turned into a message */
  keel_msg_t *m = NULL;
  CHECK_EQ(keel_receive(&m, KEEL_NOWAIT), KEEL_ETIMEDOUT);
  CHECK(m == NULL);
}

KT_CASE(exit_signal_kill_stops_a_non_trapping_process) {
  keel_ref_t ref;
  keel_pid_t pid = spawn_victim(false, &ref);
  CHECK_OK(keel_exit_signal(pid, KEEL_REASON_KILL, "ignored text"));
  CHECK_EQ(kt_wait_down(ref, pid, NULL, 0), KEEL_REASON_KILLED);
}

KT_CASE(exit_signal_normal_is_ignored_by_a_non_trapping_process) {
  keel_ref_t ref;
  keel_pid_t pid = spawn_victim(false, &ref);
  CHECK_OK(keel_exit_signal(pid, KEEL_REASON_NORMAL, NULL));
  /* the ping is sent after the signal: if it is answered, the signal was handled and ignored */
  kt_send_tag(pid, T_ALIVE);
  keel_msg_free(kt_recv_tag(T_ALIVE, KT_LONG));
  CHECK(keel_is_alive(pid));
  kt_send_tag(pid, T_STOP);
  CHECK_EQ(kt_wait_down(ref, pid, NULL, 0), KEEL_REASON_NORMAL);
}

KT_CASE(exit_signal_normal_to_a_trapping_process_becomes_exit_message) {
  keel_ref_t ref;
  keel_pid_t pid = spawn_victim(true, &ref);
  CHECK_OK(keel_exit_signal(pid, KEEL_REASON_NORMAL, NULL));
  kt_exit_seen e = kt_recv_exit_seen(T_TRAP);
  CHECK_EQ(e.from, keel_self());
  CHECK_EQ(e.kind, KEEL_REASON_NORMAL);
  kt_send_tag(pid, T_STOP);
  CHECK_EQ(kt_wait_down(ref, pid, NULL, 0), KEEL_REASON_NORMAL);
}

KT_CASE(exit_signal_error_kills_a_non_trapping_process_with_its_text) {
  keel_ref_t ref;
  keel_pid_t pid = spawn_victim(false, &ref);
  CHECK_OK(keel_exit_signal(pid, KEEL_REASON_ERROR, "bad input"));
  char text[64];
  CHECK_EQ(kt_wait_down(ref, pid, text, sizeof text), KEEL_REASON_ERROR);
  CHECK(strcmp(text, "bad input") == 0);
}

KT_CASE(exit_signal_shutdown_stops_a_non_trapping_process) {
  keel_ref_t ref;
  keel_pid_t pid = spawn_victim(false, &ref);
  CHECK_OK(keel_exit_signal(pid, KEEL_REASON_SHUTDOWN, NULL));
  CHECK_EQ(kt_wait_down(ref, pid, NULL, 0), KEEL_REASON_SHUTDOWN);
}

KT_CASE(exit_signal_error_to_a_trapping_process_becomes_exit_message) {
  keel_ref_t ref;
  keel_pid_t pid = spawn_victim(true, &ref);
  CHECK_OK(keel_exit_signal(pid, KEEL_REASON_ERROR, "bad input"));
  kt_exit_seen e = kt_recv_exit_seen(T_TRAP);
  CHECK_EQ(e.from, keel_self());
  CHECK_EQ(e.kind, KEEL_REASON_ERROR);
  CHECK(strcmp(e.text, "bad input") == 0);
  /* it survived */
  kt_send_tag(pid, T_ALIVE);
  keel_msg_free(kt_recv_tag(T_ALIVE, KT_LONG));
  kt_send_tag(pid, T_STOP);
  CHECK_EQ(kt_wait_down(ref, pid, NULL, 0), KEEL_REASON_NORMAL);
}

static void self_normal_signal_proc(void *arg) {
  (void)arg;
  CHECK_OK(keel_exit_signal(keel_self(), KEEL_REASON_NORMAL, NULL));
  keel_yield();
  keel_msg_t *m = NULL;
  (void)keel_receive(&m, 100);
  keel_msg_free(m);
  kt_send_tag(g_parent, T_ALIVE); /* must not get here */
}

KT_CASE(exit_signal_normal_to_self_exits_the_caller) {
  g_parent = keel_self();
  keel_ref_t ref;
  keel_pid_t pid = kt_spawn_monitor(self_normal_signal_proc, NULL, -1, &ref);
  CHECK_EQ(kt_wait_down(ref, pid, NULL, 0), KEEL_REASON_NORMAL);
  keel_msg_t *m = NULL;
  CHECK_EQ(keel_receive(&m, KEEL_NOWAIT), KEEL_ETIMEDOUT);
}

KT_CASE(exit_signal_to_a_dead_process_is_enoproc) {
  keel_ref_t ref;
  keel_pid_t pid = kt_spawn_monitor(quick_proc, NULL, -1, &ref);
  CHECK_EQ(kt_wait_down(ref, pid, NULL, 0), KEEL_REASON_NORMAL);
  CHECK_EQ(keel_exit_signal(pid, KEEL_REASON_KILL, NULL), KEEL_ENOPROC);
  CHECK_EQ(keel_exit_signal(pid, KEEL_REASON_ERROR, "x"), KEEL_ENOPROC);
}

/* ---- pids ------------------------------------------------------------------ */

static void one_msg_reporter_proc(void *arg) {
  (void)arg;
  keel_msg_t *m = kt_recv(KT_LONG);
  kt_send_u64(g_parent, T_VALUE, keel_msg_tag(m));
  keel_msg_free(m);
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

KT_CASE(pid_of_a_dead_process_never_reaches_a_new_one) {
  g_parent = keel_self();
  enum { N = 2000 };
  static uint64_t pids[N + 1];
  keel_ref_t ref;
  keel_pid_t old = kt_spawn_monitor(quick_proc, NULL, -1, &ref);
  CHECK_EQ(kt_wait_down(ref, old, NULL, 0), KEEL_REASON_NORMAL);
  CHECK(!keel_is_alive(old));

  keel_rt_stats before;
  keel_rt_stats_get(&before);
  /* new processes that each report the tag of the first message they get */
  for (int i = 0; i < N; i++) {
    CHECK_OK(keel_spawn(one_msg_reporter_proc, NULL, NULL, &pids[i]));
    CHECK(pids[i] != 0 && pids[i] != old);
  }
  pids[N] = old;
  /* messages to the dead pid go nowhere, even though its slot may be reused */
  for (int i = 0; i < 10; i++)
    kt_send_u64(old, 666, (uint64_t)i);
  CHECK(!keel_is_alive(old));
  keel_rt_stats after;
  keel_rt_stats_get(&after);
  CHECK_EQ(after.msgs_to_dead - before.msgs_to_dead, 10);

  for (int i = 0; i < N; i++)
    kt_send_tag(pids[i], T_GO);
  for (int i = 0; i < N; i++)
    CHECK_EQ(kt_recv_tag_u64(T_VALUE, KT_LONG), T_GO);

  qsort(pids, N + 1, sizeof pids[0], cmp_u64);
  for (int i = 1; i <= N; i++)
    CHECK(pids[i] != pids[i - 1]);
}

KT_CASE(pids_stay_unique_across_many_spawns_and_exits) {
  enum { N = 20000 };
  static uint64_t pids[N];
  for (int i = 0; i < N; i++) {
    keel_ref_t ref;
    pids[i] = kt_spawn_monitor(quick_proc, NULL, i % 2, &ref);
    CHECK_EQ(kt_wait_down(ref, pids[i], NULL, 0), KEEL_REASON_NORMAL);
    if (i > 0) CHECK(!keel_is_alive(pids[i - 1]));
  }
  qsort(pids, N, sizeof pids[0], cmp_u64);
  for (int i = 1; i < N; i++)
    CHECK(pids[i] != pids[i - 1]);
}

KT_CASE(pid_format_is_erlang_style_and_always_terminated) {
  char buf[24];
  keel_pid_t self = keel_self();
  CHECK(keel_pid_format(self, buf, sizeof buf) == buf);
  unsigned long a, b, c;
  char tail;
  CHECK_EQ(sscanf(buf, "<%lu.%lu.%lu%c", &a, &b, &c, &tail), 4);
  CHECK_EQ(a, 0);
  CHECK_EQ(tail, '>');
  CHECK_EQ(buf[strlen(buf) - 1], '>');
  char other[24];
  keel_pid_format(UINT64_MAX, other, sizeof other); /* 24 bytes are always enough */
  CHECK(strlen(other) < sizeof other);
  char tiny[5];
  memset(tiny, 'z', sizeof tiny);
  keel_pid_format(self, tiny, sizeof tiny);
  CHECK(memchr(tiny, '\0', sizeof tiny) != NULL);
  /* two different live pids format differently */
  keel_pid_t pid;
  CHECK_OK(keel_spawn(quick_proc, NULL, NULL, &pid));
  keel_pid_format(pid, other, sizeof other);
  CHECK(strcmp(buf, other) != 0);
}

KT_CASE(is_alive_is_true_for_self_and_false_for_zero) {
  CHECK(keel_is_alive(keel_self()));
  CHECK(!keel_is_alive(0));
}

KT_CASE(make_ref_gives_unique_nonzero_refs) {
  enum { N = 10000 };
  static uint64_t refs[N];
  for (int i = 0; i < N; i++) {
    refs[i] = keel_make_ref();
    CHECK(refs[i] != 0);
  }
  qsort(refs, N, sizeof refs[0], cmp_u64);
  for (int i = 1; i < N; i++)
    CHECK(refs[i] != refs[i - 1]);
}

/* ---- yield ------------------------------------------------------------------ */

static atomic_int g_flag;

static void set_flag_proc(void *arg) {
  (void)arg;
  atomic_store(&g_flag, 1);
}

KT_CASE(yield_lets_another_process_on_the_same_scheduler_run) {
  atomic_store(&g_flag, 0);
  CHECK_EQ(keel_sched_count(), 1);
  CHECK_OK(keel_spawn(set_flag_proc, NULL, NULL, NULL));
  for (int i = 0; i < 1000000 && !atomic_load(&g_flag); i++)
    CHECK_OK(keel_yield());
  CHECK(atomic_load(&g_flag));
}

/* ---- floating-point control words are part of a process's context ------------------ */

/* The rounding-control bits of the FP control registers (MXCSR and the x87
 * control word on x86-64, FPCR on AArch64): the ABI makes them callee-saved,
 * so a context switch must keep each process's own setting. Read and set
 * with compiler builtins / inline asm, so the tests need no libm. */
#if defined(__x86_64__)
#define KT_HAVE_FPCTL 1
static unsigned fp_rounding_get(void) {
  unsigned short cw;
  __asm__ __volatile__("fnstcw %0" : "=m"(cw));
  unsigned sse = (__builtin_ia32_stmxcsr() >> 13) & 3u;
  unsigned x87 = (cw >> 10) & 3u;
  return sse | (x87 << 2);
}
static void fp_rounding_set(unsigned mode) { /* mode 0..3: same for SSE and x87 */
  __builtin_ia32_ldmxcsr((__builtin_ia32_stmxcsr() & ~(3u << 13)) | (mode << 13));
  unsigned short cw;
  __asm__ __volatile__("fnstcw %0" : "=m"(cw));
  cw = (unsigned short)((cw & ~(3u << 10)) | (mode << 10));
  __asm__ __volatile__("fldcw %0" : : "m"(cw));
}
static unsigned fp_mode_word(unsigned mode) {
  return mode | (mode << 2);
}
#elif defined(__aarch64__)
#define KT_HAVE_FPCTL 1
static unsigned fp_rounding_get(void) {
  uint64_t fpcr;
  __asm__ __volatile__("mrs %0, fpcr" : "=r"(fpcr));
  return (unsigned)(fpcr >> 22) & 3u;
}
static void fp_rounding_set(unsigned mode) {
  uint64_t fpcr;
  __asm__ __volatile__("mrs %0, fpcr" : "=r"(fpcr));
  fpcr = (fpcr & ~(3ull << 22)) | ((uint64_t)mode << 22);
  __asm__ __volatile__("msr fpcr, %0" : : "r"(fpcr));
}
static unsigned fp_mode_word(unsigned mode) {
  return mode;
}
#else
#define KT_HAVE_FPCTL 0
#endif

#if KT_HAVE_FPCTL
static atomic_int g_fp_ok;

static void fp_mode_proc(void *arg) {
  unsigned mode = (unsigned)(uintptr_t)arg;
  /* a new process starts with the default: round to nearest */
  CHECK_EQ(fp_rounding_get(), fp_mode_word(0));
  fp_rounding_set(mode);
  for (int i = 0; i < 2000; i++) {
    CHECK_OK(keel_yield()); /* the others set other modes meanwhile */
    CHECK_EQ(fp_rounding_get(), fp_mode_word(mode));
    if (i % 100 == 0) CHECK_OK(keel_sleep(0));
  }
  fp_rounding_set(0);
  atomic_fetch_add(&g_fp_ok, 1);
}
#endif

KT_CASE(floating_point_rounding_mode_is_kept_per_process_across_switches) {
#if KT_HAVE_FPCTL
  atomic_store(&g_fp_ok, 0);
  unsigned before = fp_rounding_get();
  fp_rounding_set(2); /* the spawner's own mode does not leak into children */
  int n = keel_sched_count();
  enum { N = 8 };
  keel_ref_t refs[N];
  keel_pid_t pids[N];
  for (int i = 0; i < N; i++)
    pids[i] = kt_spawn_monitor(fp_mode_proc, (void *)(uintptr_t)(unsigned)(i % 4), i % n, &refs[i]);
  for (int i = 0; i < N; i++)
    CHECK_EQ(kt_wait_down(refs[i], pids[i], NULL, 0), KEEL_REASON_NORMAL);
  CHECK_EQ(fp_rounding_get(), fp_mode_word(2));
  fp_rounding_set(before & 3u);
  CHECK_EQ(atomic_load(&g_fp_ok), N);
#else
  fprintf(stderr, "   (no FP control test on this architecture)\n");
#endif
}

/* ---- exit signals from outside any process ------------------------------------------ */

static keel_pid_t g_foreign_target;

static void signal_from_pool(void *arg) {
  (void)arg;
  CHECK_OK(keel_exit_signal(g_foreign_target, KEEL_REASON_ERROR, "from a pool thread"));
}

KT_CASE(exit_signal_can_be_sent_from_a_non_process_thread) {
  keel_ref_t ref;
  keel_pid_t pid = spawn_victim(false, &ref);
  g_foreign_target = pid;
  CHECK_OK(keel_blocking(signal_from_pool, NULL));
  char text[64];
  CHECK_EQ(kt_wait_down(ref, pid, text, sizeof text), KEEL_REASON_ERROR);
  CHECK(strcmp(text, "from a pool thread") == 0);
}

/* ---- on_exit ---------------------------------------------------------------- */

static atomic_int g_onexit_log[4];
static atomic_int g_onexit_n;

static void onexit_record(void *arg) {
  int i = atomic_fetch_add(&g_onexit_n, 1);
  if (i < 4) atomic_store(&g_onexit_log[i], (int)(intptr_t)arg);
}

static void onexit_free(void *arg) {
  free(arg);
  onexit_record((void *)(intptr_t)3);
}

static void onexit_proc(void *arg) {
  (void)arg;
  CHECK_OK(keel_on_exit(onexit_record, (void *)(intptr_t)1));
  CHECK_OK(keel_on_exit(onexit_record, (void *)(intptr_t)2));
  void *owned = malloc(1000); /* freed by the cleanup even though we are killed */
  CHECK(owned != NULL);
  CHECK_OK(keel_on_exit(onexit_free, owned));
  kt_send_tag(g_parent, T_ALIVE);
  keel_msg_t *m = kt_recv(KEEL_INFINITY); /* killed while waiting here */
  keel_msg_free(m);
}

KT_CASE(on_exit_cleanups_run_in_reverse_order_even_when_killed) {
  g_parent = keel_self();
  atomic_store(&g_onexit_n, 0);
  keel_ref_t ref;
  keel_pid_t pid = kt_spawn_monitor(onexit_proc, NULL, -1, &ref);
  keel_msg_free(kt_recv_tag(T_ALIVE, KT_LONG));
  CHECK_OK(keel_exit_signal(pid, KEEL_REASON_KILL, NULL));
  CHECK_EQ(kt_wait_down(ref, pid, NULL, 0), KEEL_REASON_KILLED);
  KT_WAIT_UNTIL(atomic_load(&g_onexit_n) == 3);
  CHECK_EQ(atomic_load(&g_onexit_log[0]), 3);
  CHECK_EQ(atomic_load(&g_onexit_log[1]), 2);
  CHECK_EQ(atomic_load(&g_onexit_log[2]), 1);
}

/* ---- crash reports ----------------------------------------------------------- */

static atomic_int g_crash_reports;
static _Atomic keel_pid_t g_crash_pid;
static char g_crash_text[64];
static char g_crash_name[32];

static void crash_handler(const keel_report *r, void *ud) {
  (void)ud;
  if (r->kind != KEEL_REPORT_CRASH) return;
  if (atomic_load(&g_crash_reports) == 0) {
    snprintf(g_crash_text, sizeof g_crash_text, "%s", r->reason ? r->reason : "(null)");
    snprintf(g_crash_name, sizeof g_crash_name, "%s", r->name ? r->name : "(null)");
    atomic_store(&g_crash_pid, r->pid);
  }
  atomic_fetch_add(&g_crash_reports, 1); /* release: publishes the text above */
}

static void shutdown_proc(void *arg) {
  (void)arg;
  keel_exit(KEEL_REASON_SHUTDOWN, NULL);
}

KT_CASE(crash_is_reported_but_normal_and_shutdown_are_not) {
  atomic_store(&g_crash_reports, 0);
  keel_rt_set_report_handler(crash_handler, NULL);
  keel_ref_t ref;
  keel_pid_t pid = kt_spawn_monitor(quick_proc, NULL, -1, &ref);
  CHECK_EQ(kt_wait_down(ref, pid, NULL, 0), KEEL_REASON_NORMAL);
  pid = kt_spawn_monitor(shutdown_proc, NULL, -1, &ref);
  CHECK_EQ(kt_wait_down(ref, pid, NULL, 0), KEEL_REASON_SHUTDOWN);

  keel_spawn_opts o;
  keel_spawn_opts_init(&o);
  o.monitor = true;
  ref = 0;
  o.monitor_ref = &ref;
  o.name = "crasher";
  CHECK_OK(keel_spawn(crash_proc, "out of cheese", &o, &pid));
  CHECK_EQ(kt_wait_down(ref, pid, NULL, 0), KEEL_REASON_ERROR);
  KT_WAIT_UNTIL(atomic_load(&g_crash_reports) >= 1);
  keel_rt_set_report_handler(NULL, NULL);
  CHECK_EQ(atomic_load(&g_crash_reports), 1);
  CHECK_EQ(atomic_load(&g_crash_pid), pid);
  CHECK(strstr(g_crash_text, "out of cheese") != NULL);
  CHECK(strcmp(g_crash_name, "crasher") == 0);
}

/* await_monitor: the reference is armed before the child runs and is in
 * the child's argument by then, so one keel_await gets the child's reply,
 * or its DOWN when it dies first. */
typedef struct await_arg {
  keel_pid_t parent;
  keel_ref_t ref;
  bool die;
} await_arg;

static void await_child(void *arg) {
  await_arg *a = arg;
  if (a->die) keel_exit(KEEL_REASON_ERROR, "died first");
  keel_reply(a->parent, a->ref, keel_msg_copy(0, "hi", 3));
}

static void no_report(const keel_report *r, void *ud) {
  (void)r;
  (void)ud;
}

KT_CASE(spawn_with_await_monitor_arms_the_ref_before_the_child_runs) {
  keel_rt_set_report_handler(no_report, NULL); /* the crash is on purpose */
  for (int die = 0; die < 2; die++) {
    await_arg a = {.parent = keel_self(), .die = die};
    keel_spawn_opts o = {.monitor = true,
                         .await_monitor = true,
                         .monitor_ref = &a.ref,
                         .scheduler = KEEL_ON_SCHEDULER(1)};
    keel_pid_t pid;
    CHECK_OK(keel_spawn(await_child, &a, &o, &pid));
    CHECK(a.ref != 0);
    keel_msg_t *m = NULL;
    CHECK_OK(keel_await(a.ref, &m, KT_LONG));
    CHECK_EQ(keel_msg_kind_of(m), die ? KEEL_MSG_DOWN : KEEL_MSG_REPLY);
    keel_msg_free(m);
    keel_demonitor(a.ref);
  }
  /* without monitor it means nothing: refused */
  keel_spawn_opts bad = {.await_monitor = true};
  CHECK_EQ(keel_spawn(await_child, NULL, &bad, NULL), KEEL_EINVAL);
  CHECK_EQ(keel_mailbox_len(), 0);
  keel_rt_set_report_handler(NULL, NULL);
}

KT_MAIN(KT_ENTRY(spawn_runs_function_with_its_argument_and_self_matches_pid),
        KT_ENTRY(spawn_with_null_out_pid_still_runs),
        KT_ENTRY(spawn_with_large_stack_size_allows_deep_recursion),
        KT_ENTRY(spawn_with_odd_stack_size_is_rounded_up),
        KT_ENTRY_SCHED(spawn_scheduler_hint_places_first_run_there, 2),
        KT_ENTRY(spawn_with_link_delivers_exit_to_trapping_parent),
        KT_ENTRY(spawn_with_monitor_returns_ref_and_delivers_down),
        KT_ENTRY(spawn_monitor_ref_is_an_output_whatever_it_held_before),
        KT_ENTRY(spawn_with_trap_exit_starts_trapping),
        KT_ENTRY(spawn_name_is_copied_and_visible_to_the_process),
        KT_ENTRY(exit_from_inside_with_each_reason_reaches_monitors),
        KT_ENTRY(exit_signal_kill_cannot_be_trapped),
        KT_ENTRY(exit_signal_kill_stops_a_non_trapping_process),
        KT_ENTRY(exit_signal_normal_is_ignored_by_a_non_trapping_process),
        KT_ENTRY(exit_signal_normal_to_a_trapping_process_becomes_exit_message),
        KT_ENTRY(exit_signal_error_kills_a_non_trapping_process_with_its_text),
        KT_ENTRY(exit_signal_shutdown_stops_a_non_trapping_process),
        KT_ENTRY(exit_signal_error_to_a_trapping_process_becomes_exit_message),
        KT_ENTRY(exit_signal_normal_to_self_exits_the_caller),
        KT_ENTRY(exit_signal_to_a_dead_process_is_enoproc),
        KT_ENTRY(pid_of_a_dead_process_never_reaches_a_new_one),
        KT_ENTRY_SCHED(pids_stay_unique_across_many_spawns_and_exits, 2),
        KT_ENTRY(pid_format_is_erlang_style_and_always_terminated),
        KT_ENTRY(is_alive_is_true_for_self_and_false_for_zero),
        KT_ENTRY(make_ref_gives_unique_nonzero_refs),
        KT_ENTRY_SCHED(yield_lets_another_process_on_the_same_scheduler_run, 1),
        KT_ENTRY(floating_point_rounding_mode_is_kept_per_process_across_switches),
        KT_ENTRY_SCHED(exit_signal_can_be_sent_from_a_non_process_thread, 1),
        KT_ENTRY(on_exit_cleanups_run_in_reverse_order_even_when_killed),
        KT_ENTRY(crash_is_reported_but_normal_and_shutdown_are_not),
        KT_ENTRY_SCHED(spawn_with_await_monitor_arms_the_ref_before_the_child_runs, 2))
