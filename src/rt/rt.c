/* rt.c - starting, waiting for and stopping the node; statistics; reports.
 *
 * All of the runtime's global state lives in one struct, keel__g (sched.c).
 * keel_rt_start brings up, in order: stacks, the process table, timers, the
 * SIGSEGV handler for overflow reports, the scheduler threads and the
 * watchdog. keel_rt_stop takes them down in reverse order, destroying any
 * process still alive. The node ends by itself when its last process exits
 * (the thread that frees it signals keel_rt_wait), or when keel_rt_halt is
 * called.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "rt/internal.h"

#define DEFAULT_STACK  (128u * 1024u)
#define DEFAULT_BUDGET 100

void keel_rt_opts_init(keel_rt_opts *o) {
  memset(o, 0, sizeof *o);
}

static int parse_env_int(const char *name, long lo, long hi, long *out) {
  const char *v = getenv(name);
  if (!v || !*v) return 0;
  char *end;
  errno = 0;
  long x = strtol(v, &end, 10);
  if (errno || *end || x < lo || x > hi) {
    fprintf(stderr, "keel: invalid %s=\"%s\": must be an integer between %ld and %ld\n", name, v,
            lo, hi);
    return KEEL_EINVAL;
  }
  *out = x;
  return 1;
}

/* Opens /dev/null on each of descriptors 0-2 that is closed. A program
 * started with its stdio closed would otherwise get the runtime's own
 * descriptors there (a loop's epoll, its spare /dev/null), and a later
 * write to "stderr" would land in them; libuv also aborts when it closes a
 * descriptor of its own below 3 (uv__close). Returns 0 or a keel error. */
static int stdio_fill(void) {
  for (int fd = 0; fd <= 2; fd++) {
    if (fcntl(fd, F_GETFD) >= 0 || errno != EBADF) continue;
    int got = open("/dev/null", O_RDWR); /* the lowest free: fd itself */
    if (got < 0) return KEEL_EIO;
    if (got != fd) close(got); /* another thread's open took fd meanwhile */
  }
  return 0;
}

static void report_default(const keel_report *r, void *ud) {
  (void)ud;
  char pid[32];
  keel_pid_format(r->pid, pid, sizeof pid);
  const char *name = r->name && r->name[0] ? r->name : "unnamed";
  if (r->kind == KEEL_REPORT_STUCK)
    fprintf(stderr, "keel: process %s (%s) has held scheduler %d for %lld ms without yielding\n",
            pid, name, r->scheduler, (long long)r->held_ms);
  else if (r->kind == KEEL_REPORT_CRASH)
    fprintf(stderr, "keel: process %s (%s) crashed: %s\n", pid, name, r->reason ? r->reason : "");
}

void keel_rt_set_report_handler(keel_report_fn fn, void *ud) {
  atomic_store(&keel__g.report_ud, ud);
  atomic_store(&keel__g.report_fn, fn);
}

void keel__report(const keel_report *r) {
  keel_report_fn fn = atomic_load(&keel__g.report_fn);
  void *ud = atomic_load(&keel__g.report_ud);
  if (fn)
    fn(r, ud);
  else
    report_default(r, NULL);
}

int keel_rt_start(const keel_rt_opts *o) {
  int expected = 0;
  if (!atomic_compare_exchange_strong(&keel__g.state, &expected, 3)) return KEEL_ESTATE;
  keel_rt_opts opt;
  if (o)
    opt = *o;
  else
    keel_rt_opts_init(&opt);

  long v;
  int rc;
  if (opt.schedulers < 0 || opt.budget < 0) goto einval;
  if (opt.deterministic) {
    opt.schedulers = 1;
    if (!opt.seed) {
      if ((rc = parse_env_int("KEEL_SEED", 1, 0x7fffffffffffffffL, &v)) < 0) goto einval;
      opt.seed = rc ? (uint64_t)v : (uint64_t)time(NULL) ^ (uint64_t)getpid();
      fprintf(stderr, "keel: deterministic mode, seed %llu (KEEL_SEED=%llu reproduces it)\n",
              (unsigned long long)opt.seed, (unsigned long long)opt.seed);
    }
  }
  if (opt.schedulers == 0) {
    if ((rc = parse_env_int("KEEL_SCHEDULERS", 1, 1024, &v)) < 0) goto einval;
    if (rc) {
      opt.schedulers = (int)v;
    } else {
      long n = sysconf(_SC_NPROCESSORS_ONLN);
      opt.schedulers = n > 0 ? (int)n : 1;
    }
  }
  if (opt.schedulers > 1024) goto einval;
  if ((rc = stdio_fill()) != 0) goto fail;
  /* A write to a socket whose peer has gone raises SIGPIPE, whose default
   * action ends the whole node: every server ignores it and takes EPIPE
   * from the write instead (libuv writes with write(2), not send with
   * MSG_NOSIGNAL). A handler the program installed itself is kept. */
  struct sigaction pipe_sa;
  if (sigaction(SIGPIPE, NULL, &pipe_sa) == 0 && pipe_sa.sa_handler == SIG_DFL)
    signal(SIGPIPE, SIG_IGN);
  keel__g.page = (size_t)sysconf(_SC_PAGESIZE);
  if (!opt.stack_size) opt.stack_size = DEFAULT_STACK;
  opt.stack_size = (opt.stack_size + keel__g.page - 1) / keel__g.page * keel__g.page;
  if (opt.stack_size < 16384) opt.stack_size = 16384;
  if (!opt.budget) opt.budget = DEFAULT_BUDGET;
  if (!opt.stuck_ms) opt.stuck_ms = 100;
  if (!opt.stream_follow_ns) opt.stream_follow_ns = 150;
  if (opt.stream_follow_ns > 1000000000) opt.stream_follow_ns = 1000000000; /* 3x fits */
  keel__g.opt = opt;
  keel__g.nsched = opt.schedulers;

  atomic_store(&keel__g.alive, 0);
  atomic_store(&keel__g.started_ms, keel__now_ns() / 1000000);
  atomic_store(&keel__g.nsleeping, 0);
  atomic_store(&keel__g.nspinning, 0);
  atomic_store(&keel__g.grq_len, 0);
  keel__g.grq_head = keel__g.grq_tail = NULL;
  atomic_store(&keel__g.ext_sent, 0);
  atomic_store(&keel__g.ext_to_dead, 0);
  atomic_store(&keel__g.ext_spawned, 0);
  atomic_store(&keel__g.ext_replies_dropped, 0);
  atomic_store(&keel__g.blocking_queued, 0);
  atomic_store(&keel__g.blocking_running, 0);
  atomic_store(&keel__g.stuck_reports, 0);
  atomic_store(&keel__g.hog_kills, 0);
  pthread_mutex_init(&keel__g.grq_lock, NULL);
  pthread_mutex_init(&keel__g.wait_lock, NULL);
  pthread_cond_init(&keel__g.wait_cond, NULL);
  keel__g.halted = 0;
  keel__g.halt_status = 0;

  if ((rc = keel__stacks_init()) != 0) goto fail;
  if ((rc = keel__table_init()) != 0) goto fail;
  keel__timers_init();
  keel__overflow_handler_install();
  atomic_store(&keel__g.state, 1);
  if ((rc = keel__sched_start_all()) != 0) goto fail;
  if (opt.stuck_ms > 0 || opt.schedulers > 1) {
    if ((rc = keel__watchdog_start()) != 0) goto fail;
  }
  return 0;

einval:
  atomic_store(&keel__g.state, 0);
  return KEEL_EINVAL;
fail:
  fprintf(stderr, "keel: runtime start failed: %s\n", keel_strerror(rc));
  atomic_store(&keel__g.state, 0);
  return rc;
}

void keel__alive_dec(void) {
  if (atomic_fetch_sub_explicit(&keel__g.alive, 1, memory_order_acq_rel) == 1) {
    pthread_mutex_lock(&keel__g.wait_lock);
    pthread_cond_broadcast(&keel__g.wait_cond);
    pthread_mutex_unlock(&keel__g.wait_lock);
  }
}

int keel_rt_wait(void) {
  int st = atomic_load(&keel__g.state);
  if ((st != 1 && st != 2) || keel__sched_self()) return KEEL_ESTATE;
  pthread_mutex_lock(&keel__g.wait_lock);
  while (!keel__g.halted && atomic_load(&keel__g.alive) > 0)
    pthread_cond_wait(&keel__g.wait_cond, &keel__g.wait_lock);
  int status = keel__g.halted ? keel__g.halt_status : 0;
  pthread_mutex_unlock(&keel__g.wait_lock);
  return status;
}

void keel_rt_halt(int status) {
  pthread_mutex_lock(&keel__g.wait_lock);
  if (!keel__g.halted) {
    keel__g.halted = 1;
    keel__g.halt_status = status;
  }
  pthread_cond_broadcast(&keel__g.wait_cond);
  pthread_mutex_unlock(&keel__g.wait_lock);
}

int keel_rt_stop(void) {
  int st = atomic_load(&keel__g.state);
  if ((st != 1 && st != 2) || keel__sched_self()) return KEEL_ESTATE;
  atomic_store(&keel__g.state, 2);
  keel__watchdog_stop();
  keel__sched_stop_all();
  /* Every scheduler thread has exited: nothing runs concurrently any more. */
  for (int i = 0; i < keel__g.nsched; i++) {
    keel__sched *s = &keel__g.scheds[i];
    s->current = NULL;
  }
  keel__table_fini(); /* destroys processes still alive */
  keel__sched_free_all();
  for (int i = 0; i < keel__g.nsched; i++) {
    keel__sched *s = &keel__g.scheds[i];
    keel__stack_cache_flush(s);
    s->slot_cache = NULL;
    s->slot_cache_n = 0;
  }
  keel__stacks_fini();
  keel__timers_global_fini();
  keel__overflow_handler_remove();
  free(keel__g.scheds);
  keel__g.scheds = NULL;
  keel__g.nsched = 0;
  pthread_mutex_destroy(&keel__g.grq_lock);
  pthread_cond_destroy(&keel__g.wait_cond);
  pthread_mutex_destroy(&keel__g.wait_lock);
  atomic_store(&keel__g.started_ms, 0);
  atomic_store(&keel__g.state, 0);
  return 0;
}

int keel_run(keel_proc_fn fn, void *arg, const keel_rt_opts *o) {
  int rc = keel_rt_start(o);
  if (rc) return rc;
  keel_spawn_opts so;
  keel_spawn_opts_init(&so);
  so.name = "main";
  rc = keel_spawn(fn, arg, &so, NULL);
  int status = rc ? rc : keel_rt_wait();
  keel_rt_stop();
  return status;
}

int keel_sched_count(void) {
  int st = atomic_load(&keel__g.state);
  return (st == 1 || st == 2) ? keel__g.nsched : 0;
}

int keel_sched_current(void) {
  keel__sched *s = keel__sched_self();
  return s ? s->id : -1;
}

void keel_rt_stats_get(keel_rt_stats *out) {
  memset(out, 0, sizeof *out);
  int st = atomic_load(&keel__g.state);
  if (st != 1 && st != 2) return;
  for (int i = 0; i < keel__g.nsched; i++) {
    keel__sched *s = &keel__g.scheds[i];
    out->procs_spawned += atomic_load_explicit(&s->n_spawned, memory_order_relaxed);
    out->procs_exited += atomic_load_explicit(&s->n_exited, memory_order_relaxed);
    out->msgs_sent += atomic_load_explicit(&s->n_sent, memory_order_relaxed);
    out->msgs_to_dead += atomic_load_explicit(&s->n_to_dead, memory_order_relaxed);
    out->replies_dropped += atomic_load_explicit(&s->n_replies_dropped, memory_order_relaxed);
    out->context_switches += atomic_load_explicit(&s->n_switches, memory_order_relaxed);
    out->steals += atomic_load_explicit(&s->n_steals, memory_order_relaxed);
    out->migrations += atomic_load_explicit(&s->n_migrations, memory_order_relaxed);
  }
  out->procs_spawned += atomic_load(&keel__g.ext_spawned);
  out->replies_dropped += atomic_load(&keel__g.ext_replies_dropped);
  out->msgs_sent += atomic_load(&keel__g.ext_sent);
  out->msgs_to_dead += atomic_load(&keel__g.ext_to_dead);
  int64_t alive = atomic_load(&keel__g.alive);
  out->procs_alive = alive > 0 ? (uint64_t)alive : 0;
  out->blocking_queued = atomic_load(&keel__g.blocking_queued);
  out->blocking_running = atomic_load(&keel__g.blocking_running);
  out->stuck_reports = atomic_load(&keel__g.stuck_reports);
  out->hog_kills = atomic_load(&keel__g.hog_kills);
}
