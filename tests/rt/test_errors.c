/* test_errors.c - error codes and misuse: keel_strerror and keel_err_name for
 * every code, keel_reason_name, the runtime's start/wait/stop state errors
 * (run from main, outside any runtime), bad options and $KEEL_SCHEDULERS,
 * KEEL_ENOTPROC for calls made outside a process, and KEEL_EINVAL / KEEL_ENOENT
 * for bad arguments. Also the message accessors.
 */
#define _GNU_SOURCE
#include <stdatomic.h>
#include <sys/wait.h>
#include <unistd.h>

#include "rt/kt_rt.h"

/* ---- error strings ------------------------------------------------------------ */

KT_CASE(every_error_code_has_a_name_and_a_description) {
  static const struct {
    int code;
    const char *name;
  } codes[] = {
      {KEEL_ENOMEM, "KEEL_ENOMEM"},       {KEEL_EINVAL, "KEEL_EINVAL"},
      {KEEL_ENOPROC, "KEEL_ENOPROC"},     {KEEL_ETIMEDOUT, "KEEL_ETIMEDOUT"},
      {KEEL_ENOTPROC, "KEEL_ENOTPROC"},   {KEEL_ENOENT, "KEEL_ENOENT"},
      {KEEL_ESTATE, "KEEL_ESTATE"},       {KEEL_EIO, "KEEL_EIO"},
      {KEEL_ECANCELED, "KEEL_ECANCELED"}, {KEEL_EEXIST, "KEEL_EEXIST"},
      {KEEL_EBUSY, "KEEL_EBUSY"},         {KEEL_EDOWN, "KEEL_EDOWN"},
      {KEEL_ERANGE, "KEEL_ERANGE"},       {KEEL_EADDRINUSE, "KEEL_EADDRINUSE"},
      {KEEL_ECONFLICT, "KEEL_ECONFLICT"}, {KEEL_EPERM, "KEEL_EPERM"},
  };
  size_t n = sizeof codes / sizeof codes[0];
  CHECK_EQ(n, -KEEL_ERROR_MIN_);
  for (size_t i = 0; i < n; i++) {
    const char *name = keel_err_name(codes[i].code);
    const char *text = keel_strerror(codes[i].code);
    CHECK(name != NULL && text != NULL);
    if (strcmp(name, codes[i].name) != 0) {
      fprintf(stderr, "keel_err_name(%d) = %s, want %s\n", codes[i].code, name, codes[i].name);
      CHECK(!"wrong error name");
    }
    CHECK(strlen(text) > 0);
    CHECK(strcmp(text, "unknown error") != 0);
    for (size_t j = 0; j < i; j++)
      CHECK(strcmp(text, keel_strerror(codes[j].code)) != 0);
  }
  CHECK(strcmp(keel_strerror(KEEL_ENOPROC), "no such process") == 0);
  static const int unknown[] = {KEEL_ERROR_MIN_ - 1, -1000, 1, 42};
  for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
    CHECK(strcmp(keel_strerror(unknown[i]), "unknown error") == 0);
    CHECK(strcmp(keel_err_name(unknown[i]), "KEEL_E?") == 0);
  }
  CHECK(keel_strerror(KEEL_OK) != NULL);
  CHECK(keel_err_name(KEEL_OK) != NULL);
}

KT_CASE(every_reason_kind_has_its_name) {
  CHECK(strcmp(keel_reason_name(KEEL_REASON_NORMAL), "normal") == 0);
  CHECK(strcmp(keel_reason_name(KEEL_REASON_SHUTDOWN), "shutdown") == 0);
  CHECK(strcmp(keel_reason_name(KEEL_REASON_KILL), "kill") == 0);
  CHECK(strcmp(keel_reason_name(KEEL_REASON_KILLED), "killed") == 0);
  CHECK(strcmp(keel_reason_name(KEEL_REASON_NOPROC), "noproc") == 0);
  CHECK(strcmp(keel_reason_name(KEEL_REASON_ERROR), "error") == 0);
}

/* ---- outside a process --------------------------------------------------------- */

static keel_pid_t g_parent;
static atomic_int g_outside_done;

static void noop_proc(void *arg) {
  (void)arg;
}

/* Runs on a blocking-pool thread: not a process, not a scheduler. */
static void outside_calls(void *arg) {
  (void)arg;
  CHECK_EQ(keel_self(), 0);
  CHECK_EQ(keel_sched_current(), -1);
  CHECK_EQ(keel_mailbox_len(), 0);
  keel_msg_t *m = (keel_msg_t *)1;
  CHECK_EQ(keel_receive(&m, KEEL_NOWAIT), KEEL_ENOTPROC);
  CHECK_EQ(keel_link(g_parent), KEEL_ENOTPROC);
  CHECK_EQ(keel_unlink(g_parent), KEEL_ENOTPROC);
  keel_ref_t ref = 0;
  CHECK_EQ(keel_monitor(g_parent, &ref), KEEL_ENOTPROC);
  CHECK_EQ(keel_demonitor(12345), KEEL_ENOTPROC);
  CHECK_EQ(keel_trap_exit(true), KEEL_ENOTPROC);
  CHECK_EQ(keel_yield(), KEEL_ENOTPROC);
  CHECK_EQ(keel_sleep(1), KEEL_ENOTPROC);
  CHECK_EQ(keel_await_ref(keel_make_ref()), KEEL_ENOTPROC);
  m = NULL;
  CHECK_EQ(keel_await(keel_make_ref(), &m, KEEL_NOWAIT), KEEL_ENOTPROC);
  CHECK_EQ(keel_on_exit(noop_proc, NULL), KEEL_ENOTPROC);
  CHECK_EQ(keel_blocking(noop_proc, NULL), KEEL_ENOTPROC);
  CHECK_EQ(keel_wait_fd(0, KEEL_READABLE, 0, NULL), KEEL_ENOTPROC);
  /* send_after takes the message even when it fails */
  CHECK_EQ(keel_send_after(g_parent, 10, keel_msg_new(1, 8), NULL), KEEL_ENOTPROC);

  /* spawn works from any thread, but link/monitor need a calling process */
  keel_spawn_opts o;
  keel_spawn_opts_init(&o);
  o.link = true;
  CHECK_EQ(keel_spawn(noop_proc, NULL, &o, NULL), KEEL_ENOTPROC);
  keel_spawn_opts_init(&o);
  o.monitor = true;
  o.monitor_ref = &ref;
  CHECK_EQ(keel_spawn(noop_proc, NULL, &o, NULL), KEEL_ENOTPROC);
  keel_pid_t pid = 0;
  CHECK_OK(keel_spawn(noop_proc, NULL, NULL, &pid));
  CHECK(pid != 0);

  /* a message sent from outside a process has sender 0 */
  kt_send_u64(g_parent, 9, 99);
  atomic_store(&g_outside_done, 1);
}

KT_CASE(calls_outside_a_process_return_enotproc) {
  g_parent = keel_self();
  atomic_store(&g_outside_done, 0);
  CHECK_OK(keel_blocking(outside_calls, NULL));
  CHECK_EQ(atomic_load(&g_outside_done), 1);
  keel_msg_t *m = kt_recv(KT_LONG);
  CHECK_EQ(keel_msg_tag(m), 9);
  CHECK_EQ(kt_u64(m), 99);
  CHECK_EQ(keel_msg_from(m), 0);
  keel_msg_free(m);
  /* the failed send_after delivered nothing */
  m = NULL;
  CHECK_EQ(keel_receive(&m, 100), KEEL_ETIMEDOUT);
}

static void call_wait_proc(void *arg) {
  (void)arg;
  kt_send_u64(g_parent, 1, (uint64_t)(int64_t)keel_rt_wait());
  kt_send_u64(g_parent, 2, (uint64_t)(int64_t)keel_rt_start(NULL));
}

KT_CASE(wait_and_start_from_a_scheduler_thread_are_estate) {
  g_parent = keel_self();
  CHECK_EQ((int64_t)keel_rt_wait(), KEEL_ESTATE);
  CHECK_EQ((int64_t)keel_rt_start(NULL), KEEL_ESTATE);
  CHECK_OK(keel_spawn(call_wait_proc, NULL, NULL, NULL));
  CHECK_EQ((int64_t)kt_recv_tag_u64(1, KT_LONG), KEEL_ESTATE);
  CHECK_EQ((int64_t)kt_recv_tag_u64(2, KT_LONG), KEEL_ESTATE);
}

/* ---- bad arguments --------------------------------------------------------------- */

KT_CASE(bad_arguments_are_einval_or_enoent) {
  /* send takes ownership even on failure (LeakSanitizer checks it) */
  CHECK_EQ(keel_send(0, keel_msg_new(1, 16)), KEEL_EINVAL);
  CHECK_EQ(keel_send(keel_self(), NULL), KEEL_EINVAL);
  CHECK_EQ(keel_reply(keel_self(), keel_make_ref(), NULL), KEEL_EINVAL);
  CHECK_EQ(keel_await_ref(0), KEEL_EINVAL);
  keel_msg_t *m = NULL;
  CHECK_EQ(keel_await(keel_make_ref(), &m, KEEL_NOWAIT), KEEL_ENOENT);
  CHECK_EQ(keel_await_cancel(keel_make_ref()), KEEL_ENOENT);
  CHECK_EQ(keel_cancel_timer(keel_make_ref()), KEEL_ENOENT);
  CHECK_EQ(keel_cancel_timer(0), KEEL_ENOENT);
  CHECK_EQ(keel_send_after(keel_self(), 10, NULL, NULL), KEEL_EINVAL);
  CHECK_EQ(keel_send_after(keel_self(), -5, keel_msg_new(1, 0), NULL), KEEL_EINVAL);
  CHECK_EQ(keel_sleep(-5), KEEL_EINVAL);
  CHECK_EQ(keel_demonitor(keel_make_ref()), KEEL_ENOENT);
  CHECK_EQ(keel_wait_fd(0, 0, 0, NULL), KEEL_EINVAL);
  int rc = keel_wait_fd(-1, KEEL_READABLE, 0, NULL);
  CHECK(rc == KEEL_EINVAL || rc == KEEL_EIO);
  CHECK_EQ(keel_spawn(NULL, NULL, NULL, NULL), KEEL_EINVAL);

  keel_msg_t *u = keel_msg_new(3, 4);
  keel_pid_t who = 1;
  keel_reason r;
  CHECK_EQ(keel_msg_exit_info(u, &who, &r), KEEL_EINVAL);
  keel_msg_free(u);
  keel_msg_free(NULL);
  /* nothing of the above reached the mailbox */
  CHECK_EQ(keel_receive(&m, 50), KEEL_ETIMEDOUT);
}

/* ---- message accessors --------------------------------------------------------------- */

KT_CASE(message_accessors_report_what_was_built) {
  keel_msg_t *m = keel_msg_new(77, 100);
  CHECK(m != NULL);
  CHECK_EQ(keel_msg_tag(m), 77);
  CHECK_EQ(keel_msg_size(m), 100);
  CHECK_EQ(keel_msg_kind_of(m), KEEL_MSG_USER);
  CHECK_EQ(keel_msg_ref(m), 0);
  CHECK(keel_msg_data(m) != NULL);
  memset(keel_msg_data(m), 0xab, 100);
  CHECK_OK(keel_send(keel_self(), m));
  m = kt_recv(KT_LONG);
  CHECK_EQ(keel_msg_tag(m), 77);
  CHECK_EQ(keel_msg_size(m), 100);
  CHECK_EQ(keel_msg_from(m), keel_self());
  const unsigned char *p = keel_msg_data(m);
  for (int i = 0; i < 100; i++)
    CHECK_EQ(p[i], 0xab);
  keel_msg_free(m);

  char data[] = "payload bytes";
  m = keel_msg_copy(5, data, sizeof data);
  CHECK(m != NULL);
  data[0] = 'X'; /* copied at creation */
  CHECK(strcmp(keel_msg_data(m), "payload bytes") == 0);
  keel_msg_free(m);

  m = keel_msg_new(0, 0);
  CHECK(m != NULL);
  CHECK_EQ(keel_msg_size(m), 0);
  keel_msg_free(m);

  /* a large payload survives the trip */
  size_t big = 1u << 20;
  m = keel_msg_new(6, big);
  CHECK(m != NULL);
  memset(keel_msg_data(m), 0x5a, big);
  CHECK_OK(keel_send(keel_self(), m));
  m = kt_recv(KT_LONG);
  CHECK_EQ(keel_msg_size(m), big);
  CHECK_EQ(((unsigned char *)keel_msg_data(m))[big - 1], 0x5a);
  keel_msg_free(m);
}

/* ---- state errors, run from main ---------------------------------------------------- */

static atomic_int g_sched_seen;

static void count_scheds_proc(void *arg) {
  (void)arg;
  atomic_store(&g_sched_seen, keel_sched_count());
}

static void halt_proc(void *arg) {
  (void)arg;
  keel_rt_halt(7);
}

static void runtime_state_errors(void) {
  fprintf(stderr, "-- runtime_state_errors_outside_a_runtime\n");
  /* not started */
  CHECK_EQ(keel_sched_count(), 0);
  CHECK_EQ(keel_sched_current(), -1);
  CHECK_EQ(keel_self(), 0);
  CHECK_EQ(keel_spawn(noop_proc, NULL, NULL, NULL), KEEL_ESTATE);
  CHECK_EQ(keel_rt_wait(), KEEL_ESTATE);
  CHECK_EQ(keel_rt_stop(), KEEL_ESTATE);

  /* started twice */
  keel_rt_opts o;
  keel_rt_opts_init(&o);
  o.schedulers = 2;
  CHECK_OK(keel_rt_start(&o));
  CHECK_EQ(keel_rt_start(&o), KEEL_ESTATE);
  CHECK_EQ(keel_sched_count(), 2);
  CHECK_OK(keel_spawn(noop_proc, NULL, NULL, NULL));
  CHECK_OK(keel_rt_wait());
  CHECK_OK(keel_rt_stop());
  CHECK_EQ(keel_rt_stop(), KEEL_ESTATE);
  CHECK_EQ(keel_sched_count(), 0);
  printf("ok - runtime_state_errors_outside_a_runtime\n");

  fprintf(stderr, "-- halt_status_is_returned_by_run\n");
  CHECK_EQ(keel_run(halt_proc, NULL, NULL), 7);
  printf("ok - halt_status_is_returned_by_run\n");

  fprintf(stderr, "-- bad_options_are_einval\n");
  keel_rt_opts_init(&o);
  o.schedulers = -3;
  CHECK_EQ(keel_run(noop_proc, NULL, &o), KEEL_EINVAL);
  CHECK_EQ(keel_sched_count(), 0);
  keel_rt_opts_init(&o);
  setenv("KEEL_SCHEDULERS", "lots", 1);
  CHECK_EQ(keel_run(noop_proc, NULL, &o), KEEL_EINVAL);
  printf("ok - bad_options_are_einval\n");

  fprintf(stderr, "-- keel_schedulers_env_sets_the_thread_count\n");
  setenv("KEEL_SCHEDULERS", "3", 1);
  atomic_store(&g_sched_seen, 0);
  CHECK_OK(keel_run(count_scheds_proc, NULL, &o));
  CHECK_EQ(atomic_load(&g_sched_seen), 3);
  o.schedulers = 1; /* the option wins over the environment */
  CHECK_OK(keel_run(count_scheds_proc, NULL, &o));
  CHECK_EQ(atomic_load(&g_sched_seen), 1);
  unsetenv("KEEL_SCHEDULERS");
  printf("ok - keel_schedulers_env_sets_the_thread_count\n");

  fprintf(stderr, "-- default_scheduler_count_is_one_per_core\n");
  keel_rt_opts_init(&o);
  atomic_store(&g_sched_seen, 0);
  CHECK_OK(keel_run(count_scheds_proc, NULL, &o));
  CHECK_EQ(atomic_load(&g_sched_seen), sysconf(_SC_NPROCESSORS_ONLN));
  printf("ok - default_scheduler_count_is_one_per_core\n");
}

/* A runtime started with descriptors 0-2 closed (a daemon's way) opens
 * /dev/null there first: otherwise its loops' own descriptors land on them,
 * and libuv aborts when it closes one below 3 at keel_rt_stop. Run in a
 * child, which exits 0 if the runtime started and stopped and 0-2 name
 * /dev/null after; an abort or another status fails. */
static int stdio_child(void) {
  for (int fd = 0; fd <= 2; fd++)
    close(fd);
  keel_rt_opts o;
  keel_rt_opts_init(&o);
  o.schedulers = 2;
  if (keel_run(noop_proc, NULL, &o) != 0) return 3;
  for (int fd = 0; fd <= 2; fd++) {
    char path[32], link[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, link, sizeof link - 1);
    if (n < 0) return 4;
    link[n] = 0;
    if (strcmp(link, "/dev/null") != 0) return 5;
  }
  return 0;
}

static void runtime_started_without_stdio(void) {
  fprintf(stderr, "-- a_runtime_started_with_stdio_closed_fills_it_with_dev_null\n");
  fflush(stdout);
  fflush(stderr);
  pid_t child = fork();
  CHECK(child >= 0);
  if (child == 0) _exit(stdio_child());
  int status = 0;
  CHECK_EQ(waitpid(child, &status, 0), child);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    fprintf(stderr, "child status %#x (exit %d, signal %d)\n", status,
            WIFEXITED(status) ? WEXITSTATUS(status) : -1,
            WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  printf("ok - a_runtime_started_with_stdio_closed_fills_it_with_dev_null\n");
}

int main(int argc, char **argv) {
  static const kt_case cases[] = {
      KT_ENTRY(every_error_code_has_a_name_and_a_description),
      KT_ENTRY(every_reason_kind_has_its_name),
      KT_ENTRY(calls_outside_a_process_return_enotproc),
      KT_ENTRY(wait_and_start_from_a_scheduler_thread_are_estate),
      KT_ENTRY(bad_arguments_are_einval_or_enoent),
      KT_ENTRY(message_accessors_report_what_was_built),
  };
  if (argc <= 1) {
    unsetenv("KEEL_SCHEDULERS");
    runtime_state_errors();
    runtime_started_without_stdio();
  }
  return kt_run_cases(cases, sizeof cases / sizeof cases[0], argc, argv);
}
