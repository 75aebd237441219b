/* io.c - waiting for file descriptors, libuv handles and blocking work.
 *
 * All three follow one pattern. The process pins itself to the scheduler it
 * runs on (keel_io_begin), starts something on that scheduler's libuv loop
 * whose callback calls keel_io_ready, and parks with the W_IO mask. The
 * callback runs on the same thread, marks the keel_io_t ready and wakes the
 * process; pinned processes are only ever run by their home scheduler, so the
 * process can safely stop or close its handle afterwards.
 *
 * Blocking work goes to libuv's thread pool (uv_queue_work; its size is
 * UV_THREADPOOL_SIZE, default 4). While fn runs, exit signals are deferred:
 * the process cannot die with fn still using its stack.
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>

#include "keel/io.h"
#include "rt/internal.h"

int keel_io_begin(keel_io_t *io) {
  keel__proc *p = keel__proc_self();
  if (!p) return KEEL_ENOTPROC;
  if (!io) return KEEL_EINVAL;
  io->pid = p->pid;
  io->sched = keel__sched_self();
  io->seq = 0;
  io->status = 0;
  io->ready = 0;
  p->pinned++;
  return 0;
}

uv_loop_t *keel_io_loop(const keel_io_t *io) {
  return io && io->sched ? &((keel__sched *)io->sched)->loop : NULL;
}

void keel_io_ready(keel_io_t *io, int status) {
  io->status = status;
  io->ready = 1;
  keel__proc *p = keel__lookup_live(io->pid);
  if (p) keel__wake(p, KEEL__PID_GEN(io->pid), KEEL__W_IO);
}

int keel_io_wait(keel_io_t *io, int64_t timeout_ms) {
  keel__proc *p = keel__proc_self();
  if (!p) return KEEL_ENOTPROC;
  timeout_ms = keel__timeout(timeout_ms, KEEL_INFINITY);
  if (!io || io->pid != p->pid || timeout_ms == KEEL__BAD_TIMEOUT) return KEEL_EINVAL;
  uint64_t deadline = keel__deadline(timeout_ms);
  uint32_t cause = 0;
  for (;;) {
    keel__signals_handle(p);
    if (io->ready) {
      io->ready = 0;
      return io->status;
    }
    if (timeout_ms == 0) return KEEL_ETIMEDOUT;
    if (deadline && (cause == KEEL__W_TIMER || keel__past(deadline))) return KEEL_ETIMEDOUT;
    cause = keel__wait(p, KEEL__W_IO, deadline);
  }
}

int keel_io_on_abandon(keel_io_t *io, void (*fn)(void *), void *arg) {
  keel__proc *p = keel__proc_self();
  if (!p) return KEEL_ENOTPROC;
  if (!io || io->pid != p->pid || !io->sched) return KEEL_EINVAL;
  p->io_cleanup = fn;
  p->io_cleanup_arg = arg;
  return 0;
}

void keel_io_end(keel_io_t *io) {
  keel__proc *p = keel__proc_self();
  if (p && io && io->pid == p->pid && p->pinned > 0) p->pinned--;
  if (p && io && io->pid == p->pid) p->io_cleanup = NULL; /* keel_io_on_abandon's */
  if (io) io->sched = NULL;
}

/* ---- file descriptors -------------------------------------------------------- */

typedef struct fd_poll {
  uv_poll_t h; /* first: the handle's address is the struct's */
  keel_io_t *io;
} fd_poll;

static void on_poll(uv_poll_t *h, int status, int events) {
  keel_io_t *io = ((fd_poll *)h)->io;
  uv_poll_stop(h);
  if (!io) return;
  int r = 0;
  if (status < 0) {
    r = KEEL_EIO;
  } else {
    if (events & UV_READABLE) r |= KEEL_READABLE;
    if (events & UV_WRITABLE) r |= KEEL_WRITABLE;
  }
  keel_io_ready(io, r);
}

/* Runs if the process dies inside keel_wait_fd (an exit signal while it
 * waits): the handle must not outlive it, or the fd stays registered. */
static void poll_cleanup(void *arg) {
  fd_poll *fp = arg;
  fp->io = NULL;
  uv_poll_stop(&fp->h);
  uv_close((uv_handle_t *)&fp->h, keel__handle_close_cb);
}

/* KEEL_NOWAIT: what is ready now, without the loop (a uv_poll_t would only
 * report on the next turn, after the check had already given up). An error
 * or hang-up on the descriptor counts as ready, as libuv reports it. */
static int poll_now(int fd, int events, int *revents) {
  struct pollfd p = {.fd = fd,
                     .events = (short)(((events & KEEL_READABLE) ? POLLIN : 0) |
                                       ((events & KEEL_WRITABLE) ? POLLOUT : 0))};
  int n;
  do {
    n = poll(&p, 1, 0);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return KEEL_EIO;
  if (p.revents & POLLNVAL) return KEEL_EINVAL;
  int r = 0;
  if (p.revents & (POLLIN | POLLHUP | POLLERR)) r |= events & KEEL_READABLE;
  if (p.revents & (POLLOUT | POLLERR)) r |= events & KEEL_WRITABLE;
  if (!r) return KEEL_ETIMEDOUT;
  if (revents) *revents = r;
  return 0;
}

int keel_wait_fd(int fd, int events, int64_t timeout_ms, int *revents) {
  if (revents) *revents = 0;
  if (fd < 0 || !(events & (KEEL_READABLE | KEEL_WRITABLE)) ||
      (events & ~(KEEL_READABLE | KEEL_WRITABLE)))
    return KEEL_EINVAL;
  timeout_ms = keel__timeout(timeout_ms, KEEL_INFINITY);
  if (timeout_ms == KEEL__BAD_TIMEOUT) return KEEL_EINVAL;
  if (timeout_ms == 0) return poll_now(fd, events, revents);
  keel_io_t io;
  int rc = keel_io_begin(&io);
  if (rc) return rc;
  fd_poll *fp = malloc(sizeof *fp);
  if (!fp) {
    keel_io_end(&io);
    return KEEL_ENOMEM;
  }
  uv_poll_t *h = &fp->h;
  if (uv_poll_init(keel_io_loop(&io), h, fd) != 0) {
    free(fp);
    keel_io_end(&io);
    return KEEL_EINVAL; /* not pollable (a regular file?) or not a descriptor */
  }
  h->data = keel__handle_tag;
  fp->io = &io;
  int uvev =
      ((events & KEEL_READABLE) ? UV_READABLE : 0) | ((events & KEEL_WRITABLE) ? UV_WRITABLE : 0);
  uv_poll_start(h, uvev, on_poll);
  keel__proc *p = keel__proc_self();
  p->io_cleanup = poll_cleanup;
  p->io_cleanup_arg = fp;
  rc = keel_io_wait(&io, timeout_ms);
  p->io_cleanup = NULL;
  poll_cleanup(fp);
  keel_io_end(&io);
  if (rc < 0) return rc;
  if (revents) *revents = rc;
  return 0;
}

/* ---- blocking work --------------------------------------------------------------- */

typedef struct blocking_job {
  uv_work_t req;
  void (*fn)(void *);
  void *arg;
  keel_io_t *io;
} blocking_job;

static void blocking_run(uv_work_t *req) {
  blocking_job *j = req->data;
  atomic_fetch_sub_explicit(&keel__g.blocking_queued, 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&keel__g.blocking_running, 1, memory_order_relaxed);
  j->fn(j->arg);
  atomic_fetch_sub_explicit(&keel__g.blocking_running, 1, memory_order_relaxed);
}

static void blocking_done(uv_work_t *req, int status) {
  blocking_job *j = req->data;
  keel_io_ready(j->io, status < 0 ? KEEL_ECANCELED : 0);
}

int keel_blocking(void (*fn)(void *), void *arg) {
  keel__proc *p = keel__proc_self();
  if (!p) return KEEL_ENOTPROC;
  if (!fn) return KEEL_EINVAL;
  keel_io_t io;
  keel_io_begin(&io);
  blocking_job j = {.fn = fn, .arg = arg, .io = &io};
  j.req.data = &j;
  p->hold_exits++;
  atomic_fetch_add_explicit(&keel__g.blocking_queued, 1, memory_order_relaxed);
  int rc = uv_queue_work(keel_io_loop(&io), &j.req, blocking_run, blocking_done);
  if (rc != 0) {
    atomic_fetch_sub_explicit(&keel__g.blocking_queued, 1, memory_order_relaxed);
    p->hold_exits--;
    keel_io_end(&io);
    return KEEL_ENOMEM;
  }
  rc = keel_io_wait(&io, KEEL_INFINITY);
  p->hold_exits--;
  keel_io_end(&io);
  keel__signals_handle(p); /* deferred exit signals take effect now */
  return rc;
}
