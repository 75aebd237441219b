/* test_io.c - waiting for I/O and blocking work without blocking a
 * scheduler: keel_wait_fd on pipes (readable when another process writes,
 * writable at once, timeout, many round trips across schedulers), libuv
 * handles through keel_io_begin/keel_io_loop/keel_io_wait/keel_io_ready
 * (uv_timer_t, uv_idle_t, timeout, pinning), and keel_blocking (fn runs on
 * another thread, other processes keep running meanwhile, many jobs at once,
 * an exit signal waits for fn to return).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

#include "rt/kt_rt.h"

enum { T_DONE = 1, T_GO, T_FD };

static keel_pid_t g_parent;

static void make_pipe(int fds[2]) {
  CHECK_OK(pipe2(fds, O_NONBLOCK | O_CLOEXEC));
}

/* ---- file descriptors ------------------------------------------------------------ */

static void delayed_writer_proc(void *arg) {
  int fd = (int)(intptr_t)arg;
  CHECK_OK(keel_sleep(50));
  CHECK_EQ(write(fd, "hi!", 3), 3);
  kt_send_tag(g_parent, T_DONE);
}

KT_CASE(wait_fd_returns_readable_when_another_process_writes) {
  g_parent = keel_self();
  int fds[2];
  make_pipe(fds);
  int n = keel_sched_count();
  kt_spawn_on(delayed_writer_proc, (void *)(intptr_t)fds[1], n > 1 ? 1 : 0);
  int rev = 0;
  CHECK_OK(keel_wait_fd(fds[0], KEEL_READABLE, KT_LONG, &rev));
  CHECK(rev & KEEL_READABLE);
  char buf[8];
  CHECK_EQ(read(fds[0], buf, sizeof buf), 3);
  CHECK(memcmp(buf, "hi!", 3) == 0);
  keel_msg_free(kt_recv_tag(T_DONE, KT_LONG));
  close(fds[0]);
  close(fds[1]);
}

KT_CASE(wait_fd_times_out_when_nothing_comes) {
  int fds[2];
  make_pipe(fds);
  int64_t t0 = kt_now_ms();
  int rev = -1;
  CHECK_EQ(keel_wait_fd(fds[0], KEEL_READABLE, 100, &rev), KEEL_ETIMEDOUT);
  CHECK(kt_now_ms() - t0 >= 90);
  CHECK_EQ(keel_wait_fd(fds[0], KEEL_READABLE, KEEL_NOWAIT, NULL), KEEL_ETIMEDOUT);
  /* KEEL_NOWAIT takes what is ready now (it used to time out even then) */
  CHECK_EQ(write(fds[1], "x", 1), 1);
  rev = 0;
  CHECK_OK(keel_wait_fd(fds[0], KEEL_READABLE | KEEL_WRITABLE, KEEL_NOWAIT, &rev));
  CHECK_EQ(rev, KEEL_READABLE);
  CHECK_OK(keel_wait_fd(fds[1], KEEL_WRITABLE, KEEL_NOWAIT, &rev));
  CHECK_EQ(rev, KEEL_WRITABLE);
  close(fds[0]);
  close(fds[1]);
}

KT_CASE(wait_fd_returns_at_once_when_already_ready) {
  int fds[2];
  make_pipe(fds);
  int rev = 0;
  CHECK_OK(keel_wait_fd(fds[1], KEEL_WRITABLE, KT_LONG, &rev));
  CHECK(rev & KEEL_WRITABLE);
  CHECK_EQ(write(fds[1], "x", 1), 1);
  rev = 0;
  CHECK_OK(keel_wait_fd(fds[0], KEEL_READABLE | KEEL_WRITABLE, KT_LONG, &rev));
  CHECK(rev & KEEL_READABLE);
  close(fds[0]);
  close(fds[1]);
}

KT_CASE(wait_fd_sees_the_write_end_closed) {
  int fds[2];
  make_pipe(fds);
  close(fds[1]);
  int rev = 0;
  int rc = keel_wait_fd(fds[0], KEEL_READABLE, KT_LONG, &rev);
  CHECK(rc == 0 || rc == KEEL_EIO); /* hang-up: readable (EOF) or an error */
  if (rc == 0) {
    char c;
    CHECK_EQ(read(fds[0], &c, 1), 0);
  }
  close(fds[0]);
}

/* Two processes on different schedulers bounce a counter over two pipes. */
typedef struct pingpong {
  int a2b[2], b2a[2];
  int rounds;
} pingpong;

static void pong_proc(void *arg) {
  pingpong *p = arg;
  for (int i = 0; i < p->rounds; i++) {
    uint32_t v;
    CHECK_OK(keel_wait_fd(p->a2b[0], KEEL_READABLE, KT_LONG, NULL));
    CHECK_EQ(read(p->a2b[0], &v, sizeof v), sizeof v);
    CHECK_EQ(v, (uint32_t)i);
    v++;
    CHECK_EQ(write(p->b2a[1], &v, sizeof v), sizeof v);
  }
}

KT_CASE(wait_fd_round_trips_between_schedulers) {
  static pingpong p;
  make_pipe(p.a2b);
  make_pipe(p.b2a);
  p.rounds = (int)kt_scale(2000, 500);
  int n = keel_sched_count();
  keel_ref_t ref;
  keel_pid_t pid =
      kt_spawn_monitor(pong_proc, &p, n > 1 ? (keel_sched_current() + 1) % n : 0, &ref);
  for (int i = 0; i < p.rounds; i++) {
    uint32_t v = (uint32_t)i;
    CHECK_EQ(write(p.a2b[1], &v, sizeof v), sizeof v);
    CHECK_OK(keel_wait_fd(p.b2a[0], KEEL_READABLE, KT_LONG, NULL));
    CHECK_EQ(read(p.b2a[0], &v, sizeof v), sizeof v);
    CHECK_EQ(v, (uint32_t)i + 1);
  }
  CHECK_EQ(kt_wait_down(ref, pid, NULL, 0), KEEL_REASON_NORMAL);
  for (int i = 0; i < 2; i++) {
    close(p.a2b[i]);
    close(p.b2a[i]);
  }
}

static void fd_waiter_proc(void *arg) {
  int fd = (int)(intptr_t)arg;
  keel_wait_fd(fd, KEEL_READABLE, KEEL_INFINITY, NULL);
  CHECK(!"should have been killed while waiting");
}

KT_CASE(a_process_waiting_on_an_fd_can_be_killed) {
  int fds[2];
  make_pipe(fds);
  keel_ref_t ref;
  keel_pid_t pid = kt_spawn_monitor(fd_waiter_proc, (void *)(intptr_t)fds[0], -1, &ref);
  CHECK_OK(keel_sleep(50));
  CHECK_OK(keel_exit_signal(pid, KEEL_REASON_KILL, NULL));
  CHECK_EQ(kt_wait_down(ref, pid, NULL, 0), KEEL_REASON_KILLED);
  /* the fd can be waited on again afterwards (the old poll handle is gone) */
  CHECK_EQ(write(fds[1], "x", 1), 1);
  CHECK_OK(keel_wait_fd(fds[0], KEEL_READABLE, KT_LONG, NULL));
  close(fds[0]);
  close(fds[1]);
}

/* ---- libuv handles -------------------------------------------------------------------- */

static _Atomic pthread_t g_cb_thread;

static void timer_cb(uv_timer_t *t) {
  atomic_store(&g_cb_thread, pthread_self());
  keel_io_ready(t->data, 42);
}

static void free_handle_cb(uv_handle_t *h) {
  free(h);
}

KT_CASE(io_wait_returns_the_status_a_uv_timer_callback_passes_to_ready) {
  for (int round = 0; round < 20; round++) {
    keel_io_t io;
    CHECK_OK(keel_io_begin(&io));
    int sched = keel_sched_current();
    pthread_t me = pthread_self();
    uv_loop_t *loop = keel_io_loop(&io);
    CHECK(loop != NULL);
    /* the handle is on the heap: its close completes later, on the loop */
    uv_timer_t *t = malloc(sizeof *t);
    CHECK(t != NULL);
    CHECK_OK(uv_timer_init(loop, t));
    t->data = &io;
    CHECK_OK(uv_timer_start(t, timer_cb, (uint64_t)(round % 3) * 10, 0));
    CHECK_EQ(keel_io_wait(&io, KT_LONG), 42);
    CHECK_EQ(keel_sched_current(), sched); /* pinned */
    CHECK(pthread_equal(atomic_load(&g_cb_thread), me));
    uv_timer_stop(t);
    uv_close((uv_handle_t *)t, free_handle_cb);
    keel_io_end(&io);
    CHECK_OK(keel_yield());
  }
}

typedef struct idle_state {
  keel_io_t *io;
  int calls;
} idle_state;

static void idle_cb(uv_idle_t *h) {
  idle_state *st = h->data;
  if (++st->calls == 3) {
    uv_idle_stop(h);
    keel_io_ready(st->io, 7);
  }
}

KT_CASE(io_wait_works_with_a_uv_idle_handle) {
  keel_io_t io;
  CHECK_OK(keel_io_begin(&io));
  uv_idle_t *h = malloc(sizeof *h);
  CHECK(h != NULL);
  static idle_state st;
  st.io = &io;
  st.calls = 0;
  CHECK_OK(uv_idle_init(keel_io_loop(&io), h));
  h->data = &st;
  CHECK_OK(uv_idle_start(h, idle_cb));
  CHECK_EQ(keel_io_wait(&io, KT_LONG), 7);
  CHECK_EQ(st.calls, 3);
  uv_close((uv_handle_t *)h, free_handle_cb);
  keel_io_end(&io);
}

KT_CASE(io_wait_times_out_without_ready) {
  keel_io_t io;
  CHECK_OK(keel_io_begin(&io));
  int64_t t0 = kt_now_ms();
  CHECK_EQ(keel_io_wait(&io, 50), KEEL_ETIMEDOUT);
  CHECK(kt_now_ms() - t0 >= 40);
  keel_io_end(&io);
}

KT_CASE(io_ready_before_wait_is_not_lost) {
  keel_io_t io;
  CHECK_OK(keel_io_begin(&io));
  /* we run on the loop's thread (pinned), so we may signal readiness
   * ourselves; the wait that follows must see it at once */
  keel_io_ready(&io, 5);
  CHECK_EQ(keel_io_wait(&io, KT_LONG), 5);
  keel_io_end(&io);
}

/* ---- blocking work --------------------------------------------------------------------- */

static atomic_uint_fast64_t g_ticks;
static atomic_int g_ticker_stop;

static void ticker_proc(void *arg) {
  (void)arg;
  while (!atomic_load(&g_ticker_stop)) {
    atomic_fetch_add(&g_ticks, 1);
    CHECK_OK(keel_sleep(2));
  }
}

typedef struct blocking_job {
  pthread_t thread;
  uint64_t ticks_before, ticks_after;
  uint64_t running;
  int done;
} blocking_job;

static void sleepy_job(void *arg) {
  blocking_job *j = arg;
  j->thread = pthread_self();
  keel_rt_stats st;
  keel_rt_stats_get(&st);
  j->running = st.blocking_running;
  j->ticks_before = atomic_load(&g_ticks);
  usleep(200 * 1000);
  j->ticks_after = atomic_load(&g_ticks);
  j->done = 1;
}

KT_CASE(blocking_runs_fn_on_another_thread_while_others_keep_running) {
  CHECK_EQ(keel_sched_count(), 1); /* so a blocked scheduler would stop the ticker */
  atomic_store(&g_ticks, 0);
  atomic_store(&g_ticker_stop, 0);
  keel_ref_t ref;
  keel_pid_t ticker = kt_spawn_monitor(ticker_proc, NULL, -1, &ref);
  CHECK_OK(keel_yield());
  blocking_job j;
  memset(&j, 0, sizeof j);
  pthread_t me = pthread_self();
  CHECK_OK(keel_blocking(sleepy_job, &j));
  CHECK_EQ(j.done, 1);
  CHECK(!pthread_equal(j.thread, me));
  CHECK(j.running >= 1);
  fprintf(stderr, "   ticker advanced %" PRIu64 " times during the job\n",
          j.ticks_after - j.ticks_before);
  CHECK(j.ticks_after > j.ticks_before);
  atomic_store(&g_ticker_stop, 1);
  CHECK_EQ(kt_wait_down(ref, ticker, NULL, 0), KEEL_REASON_NORMAL);
}

typedef struct sum_job {
  uint64_t n, result;
} sum_job;

static void sum_fn(void *arg) {
  sum_job *j = arg;
  usleep(20 * 1000);
  uint64_t s = 0;
  for (uint64_t i = 1; i <= j->n; i++)
    s += i;
  j->result = s;
}

static atomic_int g_jobs_ok;

static void job_user_proc(void *arg) {
  uint64_t id = (uint64_t)(uintptr_t)arg;
  for (int k = 0; k < 5; k++) {
    sum_job j = {id * 100 + (uint64_t)k, 0};
    CHECK_OK(keel_blocking(sum_fn, &j));
    CHECK_EQ(j.result, j.n * (j.n + 1) / 2);
  }
  atomic_fetch_add(&g_jobs_ok, 1);
}

KT_CASE(many_blocking_jobs_from_all_schedulers_complete) {
  atomic_store(&g_jobs_ok, 0);
  enum { USERS = 16 };
  int n = keel_sched_count();
  keel_ref_t refs[USERS];
  keel_pid_t pids[USERS];
  for (int i = 0; i < USERS; i++)
    pids[i] = kt_spawn_monitor(job_user_proc, (void *)(uintptr_t)(i + 1), i % n, &refs[i]);
  for (int i = 0; i < USERS; i++)
    CHECK_EQ(kt_wait_down(refs[i], pids[i], NULL, 0), KEEL_REASON_NORMAL);
  CHECK_EQ(atomic_load(&g_jobs_ok), USERS);
  keel_rt_stats st;
  keel_rt_stats_get(&st);
  CHECK_EQ(st.blocking_running, 0);
  CHECK_EQ(st.blocking_queued, 0);
}

static atomic_int g_slow_started, g_slow_done;

static void slow_fn(void *arg) {
  int *p = arg;
  atomic_store(&g_slow_started, 1);
  usleep(200 * 1000);
  *p = 1234; /* arg must still be valid: it lives on the killed process's stack */
  atomic_store(&g_slow_done, 1);
}

static void blocker_proc(void *arg) {
  (void)arg;
  int local = 0;
  keel_blocking(slow_fn, &local);
  CHECK(!"killed processes do not come back from keel_blocking");
}

KT_CASE(an_exit_signal_during_blocking_takes_effect_after_fn_returns) {
  atomic_store(&g_slow_started, 0);
  atomic_store(&g_slow_done, 0);
  keel_ref_t ref;
  keel_pid_t pid = kt_spawn_monitor(blocker_proc, NULL, -1, &ref);
  KT_WAIT_UNTIL(atomic_load(&g_slow_started));
  CHECK_OK(keel_exit_signal(pid, KEEL_REASON_KILL, NULL));
  CHECK_EQ(kt_wait_down(ref, pid, NULL, 0), KEEL_REASON_KILLED);
  CHECK_EQ(atomic_load(&g_slow_done), 1);
}

KT_MAIN(KT_ENTRY(wait_fd_returns_readable_when_another_process_writes),
        KT_ENTRY(wait_fd_times_out_when_nothing_comes),
        KT_ENTRY(wait_fd_returns_at_once_when_already_ready),
        KT_ENTRY(wait_fd_sees_the_write_end_closed),
        KT_ENTRY(wait_fd_round_trips_between_schedulers),
        KT_ENTRY(a_process_waiting_on_an_fd_can_be_killed),
        KT_ENTRY(io_wait_returns_the_status_a_uv_timer_callback_passes_to_ready),
        KT_ENTRY(io_wait_works_with_a_uv_idle_handle), KT_ENTRY(io_wait_times_out_without_ready),
        KT_ENTRY(io_ready_before_wait_is_not_lost),
        KT_ENTRY_SCHED(blocking_runs_fn_on_another_thread_while_others_keep_running, 1),
        KT_ENTRY(many_blocking_jobs_from_all_schedulers_complete),
        KT_ENTRY(an_exit_signal_during_blocking_takes_effect_after_fn_returns))
