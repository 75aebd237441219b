/* test_task.c - tasks: results, timeouts, crashes, await_many, supervision. */
#include "keel_test.h"
#include "keel/task.h"

static int square(void *arg, keel_msg_t **result) {
  uint64_t v = *(uint64_t *)arg;
  v *= v;
  *result = keel_msg_copy(0, &v, sizeof v);
  return 0;
}

/* Sleeps arg[0] ms, then returns arg[1]. */
static int slow_echo(void *arg, keel_msg_t **result) {
  uint64_t *a = arg;
  keel_sleep((int64_t)a[0]);
  *result = keel_msg_copy(0, &a[1], sizeof a[1]);
  return 0;
}

static int fails(void *arg, keel_msg_t **result) {
  (void)arg;
  *result = keel_msg_new(0, 0); /* freed by keel: the task crashes */
  return KEEL_EIO;
}

static int exits_with_error(void *arg, keel_msg_t **result) {
  (void)arg;
  (void)result;
  keel_exitf("boom %d", 42);
}

static int sleeps_forever(void *arg, keel_msg_t **result) {
  (void)arg;
  (void)result;
  keel_sleep(1000000);
  return 0;
}

static uint64_t result_u64(keel_msg_t *m) {
  CHECK(keel_msg_kind_of(m) == KEEL_MSG_REPLY);
  uint64_t v;
  CHECK_EQ(keel_msg_size(m), sizeof v);
  memcpy(&v, keel_msg_data(m), sizeof v);
  keel_msg_free(m);
  return v;
}

/* Nothing of a task is left for the caller: no message arrives within
 * 20 ms. A receive, not keel_mailbox_len: a DOWN the task sends after it
 * turned EXITING (keel_is_alive false), past the caller's demonitor, sits
 * in the queue and is counted until a receive reaches it and drops it (CI
 * saw keel_mailbox_len at 1 there); what must not happen is that one is
 * received. */
static void no_message_left(void) {
  keel_msg_t *m = NULL;
  int rc = keel_receive(&m, 20);
  if (rc == 0) fprintf(stderr, "left behind: a message of kind %d\n", (int)keel_msg_kind_of(m));
  CHECK_EQ(rc, KEEL_ETIMEDOUT);
}

KT_CASE(async_task_returns_its_result) {
  uint64_t x = 12;
  keel_task_t t;
  CHECK_OK(keel_task_async(square, &x, &t));
  CHECK(t.pid != 0 && t.ref != 0 && t.linked);
  keel_msg_t *r = NULL;
  CHECK_OK(keel_task_await(&t, &r, 5000, NULL));
  CHECK_EQ(result_u64(r), 144);
  CHECK_EQ(t.ref, 0);
  /* Awaited once: a second await says so. */
  CHECK_EQ(keel_task_await(&t, &r, 0, NULL), KEEL_ENOENT);
  /* Nothing of the task is left in our mailbox (no DOWN, no EXIT). */
  no_message_left();
}

KT_CASE(result_and_down_racing_leave_no_message_behind) {
  /* Let the task finish (reply, then DOWN) before we await, many times. */
  keel_trap_exit(true);
  for (int i = 0; i < 200; i++) {
    uint64_t x = (uint64_t)i;
    keel_task_t t;
    CHECK_OK(keel_task_async(square, &x, &t));
    while (keel_is_alive(t.pid))
      keel_yield();
    keel_msg_t *r = NULL;
    CHECK_OK(keel_task_await(&t, &r, 5000, NULL));
    CHECK_EQ(result_u64(r), x * x);
  }
  no_message_left();
  keel_trap_exit(false);
}

KT_CASE(await_times_out_and_the_late_result_is_never_seen) {
  uint64_t a[2] = {200, 7};
  keel_task_t t;
  CHECK_OK(keel_task_async(slow_echo, a, &t));
  keel_pid_t pid = t.pid;
  keel_msg_t *r = NULL;
  keel_rt_stats before;
  keel_rt_stats_get(&before);
  CHECK_EQ(keel_task_await(&t, &r, 20, NULL), KEEL_ETIMEDOUT);
  CHECK(r == NULL);
  CHECK(keel_is_alive(pid)); /* it runs on */
  /* Wait until it has finished and replied; its result was dropped. */
  while (keel_is_alive(pid))
    keel_sleep(10);
  keel_msg_t *m = NULL;
  CHECK_EQ(keel_receive(&m, 50), KEEL_ETIMEDOUT);
  keel_rt_stats after;
  keel_rt_stats_get(&after);
  CHECK(after.replies_dropped > before.replies_dropped);
  CHECK_EQ(keel_task_await(&t, &r, 0, NULL), KEEL_ENOENT);
}

KT_CASE(crash_of_a_linked_task_reaches_a_trapping_caller_as_an_error) {
  keel_trap_exit(true);
  keel_task_t t;
  CHECK_OK(keel_task_async(fails, NULL, &t));
  keel_msg_t *r = NULL;
  keel_gs_exit why;
  CHECK_EQ(keel_task_await(&t, &r, 5000, &why), KEEL_EDOWN);
  CHECK(r == NULL);
  CHECK_EQ(why.kind, KEEL_REASON_ERROR);
  CHECK(strstr(why.text, "KEEL_EIO") != NULL);
  no_message_left(); /* the EXIT went with the unlink */
  keel_trap_exit(false);
}

static void crashing_caller(void *arg) {
  (void)arg;
  keel_task_t t;
  CHECK_OK(keel_task_async(exits_with_error, NULL, &t));
  keel_msg_t *r = NULL;
  keel_task_await(&t, &r, 5000, NULL);
  CHECK(0 && "the linked task's crash must take the caller down");
}

KT_CASE(crash_of_a_linked_task_takes_a_non_trapping_caller_down) {
  keel_spawn_opts so;
  keel_spawn_opts_init(&so);
  keel_ref_t ref = 0;
  so.monitor = true;
  so.monitor_ref = &ref;
  keel_pid_t caller;
  CHECK_OK(keel_spawn(crashing_caller, NULL, &so, &caller));
  keel_msg_t *m = kt_recv(5000);
  CHECK(keel_msg_kind_of(m) == KEEL_MSG_DOWN);
  keel_pid_t who;
  keel_reason r;
  CHECK_OK(keel_msg_exit_info(m, &who, &r));
  CHECK_EQ(who, caller);
  CHECK_EQ(r.kind, KEEL_REASON_ERROR);
  CHECK(strstr(r.text, "boom 42") != NULL);
  keel_msg_free(m);
}

KT_CASE(await_many_returns_results_in_task_order) {
  enum { N = 8 };
  uint64_t args[N][2];
  keel_task_t ts[N];
  for (int i = 0; i < N; i++) {
    args[i][0] = (uint64_t)(N - i) * 5; /* the last started finishes first */
    args[i][1] = (uint64_t)i * 100;
    CHECK_OK(keel_task_async(slow_echo, args[i], &ts[i]));
  }
  keel_msg_t *res[N];
  int codes[N];
  CHECK_OK(keel_task_await_many(ts, N, res, codes, 10000));
  for (int i = 0; i < N; i++) {
    CHECK_EQ(codes[i], 0);
    CHECK_EQ(result_u64(res[i]), (uint64_t)i * 100);
  }
  no_message_left();
}

KT_CASE(await_many_has_one_overall_timeout) {
  /* Three tasks: quick, slow, quick. With one 1000 ms deadline the slow one
   * times out and the quick ones after it are still collected. */
  uint64_t quick[2] = {0, 1}, slow[2] = {60000, 2}, quick2[2] = {0, 3};
  keel_task_t ts[3];
  CHECK_OK(keel_task_async(slow_echo, quick, &ts[0]));
  CHECK_OK(keel_task_async(slow_echo, slow, &ts[1]));
  CHECK_OK(keel_task_async(slow_echo, quick2, &ts[2]));
  keel_msg_t *res[3];
  int codes[3];
  CHECK_EQ(keel_task_await_many(ts, 3, res, codes, 1000), KEEL_ETIMEDOUT);
  CHECK_EQ(codes[0], 0);
  CHECK_EQ(codes[1], KEEL_ETIMEDOUT);
  CHECK_EQ(codes[2], 0);
  CHECK(res[1] == NULL);
  CHECK_EQ(result_u64(res[0]), 1);
  CHECK_EQ(result_u64(res[2]), 3);
  keel_pid_t slow_pid = ts[1].pid;
  CHECK_OK(keel_task_shutdown(&ts[1], 1000, NULL));
  CHECK(!keel_is_alive(slow_pid));
}

KT_CASE(supervised_task_crash_is_an_error_and_the_caller_survives) {
  keel_pid_t sup;
  CHECK_OK(keel_task_sup_start(NULL, &sup));
  /* Not trapping exits: a linked crash would kill us. */
  keel_task_t t;
  CHECK_OK(keel_task_sup_async(sup, exits_with_error, NULL, &t));
  CHECK(!t.linked);
  keel_msg_t *r = NULL;
  keel_gs_exit why;
  CHECK_EQ(keel_task_await(&t, &r, 5000, &why), KEEL_EDOWN);
  CHECK_EQ(why.kind, KEEL_REASON_ERROR);
  CHECK(strstr(why.text, "boom 42") != NULL);
  /* The supervisor did not restart it (temporary) and is still there. The
   * task's DOWN (to us) and its exit signal (to the supervisor) travel
   * separately, so the supervisor may not have handled the exit yet when our
   * await returns: wait until it has (a liveness bound, not a timing check). */
  CHECK(keel_is_alive(sup));
  keel_sup_child_counts cc;
  for (int i = 0; i < 5000; i++) {
    CHECK_OK(keel_sup_count_children(sup, &cc));
    if (cc.active == 0) break;
    keel_sleep(1);
  }
  CHECK_EQ(cc.active, 0);
  CHECK_EQ(cc.specs, 0); /* temporary: removed, never restarted */
  /* And a supervised task that succeeds returns its result. */
  uint64_t x = 9;
  CHECK_OK(keel_task_sup_async(sup, square, &x, &t));
  CHECK_OK(keel_task_await(&t, &r, 5000, NULL));
  CHECK_EQ(result_u64(r), 81);
  CHECK_OK(keel_gs_stop(sup, KEEL_REASON_SHUTDOWN, NULL, 5000));
  no_message_left();
}

KT_CASE(supervised_task_late_result_after_timeout_is_never_seen) {
  keel_pid_t sup;
  CHECK_OK(keel_task_sup_start(NULL, &sup));
  uint64_t a[2] = {150, 5};
  keel_task_t t;
  CHECK_OK(keel_task_sup_async(sup, slow_echo, a, &t));
  keel_pid_t pid = t.pid;
  keel_msg_t *r = NULL;
  CHECK_EQ(keel_task_await(&t, &r, 10, NULL), KEEL_ETIMEDOUT);
  while (keel_is_alive(pid))
    keel_sleep(10);
  keel_msg_t *m = NULL;
  CHECK_EQ(keel_receive(&m, 50), KEEL_ETIMEDOUT);
  CHECK_OK(keel_gs_stop(sup, KEEL_REASON_SHUTDOWN, NULL, 5000));
}

KT_CASE(stopping_the_task_supervisor_stops_its_tasks) {
  keel_pid_t sup;
  CHECK_OK(keel_task_sup_start(NULL, &sup));
  keel_task_t t;
  CHECK_OK(keel_task_sup_async(sup, sleeps_forever, NULL, &t));
  keel_pid_t fire;
  CHECK_OK(keel_task_sup_start_child(sup, sleeps_forever, NULL, &fire));
  CHECK(keel_is_alive(fire));
  CHECK_OK(keel_gs_stop(sup, KEEL_REASON_SHUTDOWN, NULL, 5000));
  CHECK(!keel_is_alive(fire));
  keel_msg_t *r = NULL;
  keel_gs_exit why;
  CHECK_EQ(keel_task_await(&t, &r, 5000, &why), KEEL_EDOWN);
  CHECK_EQ(why.kind, KEEL_REASON_SHUTDOWN);
}

KT_CASE(shutdown_stops_a_running_task) {
  keel_task_t t;
  CHECK_OK(keel_task_async(sleeps_forever, NULL, &t));
  keel_pid_t pid = t.pid;
  CHECK_OK(keel_task_shutdown(&t, 1000, NULL));
  CHECK(!keel_is_alive(pid));
  CHECK_EQ(t.pid, 0);
  no_message_left();
  CHECK_OK(keel_task_shutdown(&t, 1000, NULL)); /* idempotent */
}

static void dies_before_sending_the_job(void *arg) {
  /* Starts a supervised child through the supervisor API directly and exits
   * before any job: the task must not wait forever. */
  keel_pid_t sup = *(keel_pid_t *)arg;
  keel_pid_t self = keel_self(), pid;
  CHECK_OK(keel_sup_start_child_args(sup, &self, sizeof self, &pid));
  kt_send_u64(*((keel_pid_t *)arg + 1), 1, pid);
}

KT_CASE(supervised_task_whose_caller_died_does_not_run) {
  keel_pid_t pids[2];
  CHECK_OK(keel_task_sup_start(NULL, &pids[0]));
  pids[1] = keel_self();
  CHECK_OK(keel_spawn(dies_before_sending_the_job, pids, NULL, NULL));
  keel_msg_t *m = kt_recv(5000);
  keel_pid_t task = kt_u64(m);
  keel_msg_free(m);
  while (keel_is_alive(task))
    keel_sleep(5);
  CHECK_OK(keel_gs_stop(pids[0], KEEL_REASON_SHUTDOWN, NULL, 5000));
}

/* Workaround for supervisor.c's emit(): memcpy from a NULL subscriber array
 * when nobody subscribed (UBSan: nonnull-attribute). Remove once fixed. */
static void no_op_sup_event(const keel_sup_event *ev, void *ud) {
  (void)ev;
  (void)ud;
}

static const kt_case cases[] = {
    KT_ENTRY(async_task_returns_its_result),
    KT_ENTRY(result_and_down_racing_leave_no_message_behind),
    KT_ENTRY(await_times_out_and_the_late_result_is_never_seen),
    KT_ENTRY(crash_of_a_linked_task_reaches_a_trapping_caller_as_an_error),
    KT_ENTRY(crash_of_a_linked_task_takes_a_non_trapping_caller_down),
    KT_ENTRY(await_many_returns_results_in_task_order),
    KT_ENTRY(await_many_has_one_overall_timeout),
    KT_ENTRY(supervised_task_crash_is_an_error_and_the_caller_survives),
    KT_ENTRY(supervised_task_late_result_after_timeout_is_never_seen),
    KT_ENTRY(stopping_the_task_supervisor_stops_its_tasks),
    KT_ENTRY(shutdown_stops_a_running_task),
    KT_ENTRY(supervised_task_whose_caller_died_does_not_run)};

int main(int argc, char **argv) {
  int h = keel_sup_subscribe(no_op_sup_event, NULL);
  int rc = kt_run_cases(cases, sizeof cases / sizeof cases[0], argc, argv);
  keel_sup_unsubscribe(h);
  return rc;
}
