/* keel/io.h - waiting for file descriptors and libuv handles, and blocking
 * work, without ever blocking a scheduler thread.
 *
 * A process waiting on I/O stays on its scheduler ("pinned") for the length of
 * the wait, because libuv handles belong to one loop and one thread.
 */
#ifndef KEEL_IO_H
#define KEEL_IO_H

#include <stdint.h>
#include <uv.h>

#include "keel/process.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KEEL_READABLE 1
#define KEEL_WRITABLE 2

/* Waits until fd is readable and/or writable (events: KEEL_READABLE |
 * KEEL_WRITABLE) or timeout_ms passes. *revents (may be NULL) gets the ready
 * events. timeout_ms follows keel/runtime.h (0: forever; KEEL_NOWAIT: what is
 * ready now). The fd must be non-blocking-capable (a socket, pipe, eventfd...).
 * Errors: KEEL_ETIMEDOUT, KEEL_EIO (the poll failed), KEEL_EINVAL,
 * KEEL_ENOTPROC. */
int keel_wait_fd(int fd, int events, int64_t timeout_ms, int *revents);

/* Waiting for an arbitrary libuv handle:
 *
 *   keel_io_t io;
 *   keel_io_begin(&io);                  // pins the caller to its scheduler
 *   uv_loop_t *loop = keel_io_loop(&io); // the scheduler's loop
 *   ... start a handle on loop whose callback calls keel_io_ready(&io, status)
 *   int rc = keel_io_wait(&io, timeout); // status passed to ready, or ETIMEDOUT
 *   ... stop/close the handle on loop
 *   keel_io_end(&io);                    // unpins
 *
 * Between begin and end the process does not move to another scheduler, so
 * handles on the loop may be used from it. io is owned by the caller (usually
 * on its stack). The callback must run on that loop's thread. */
typedef struct keel_io {
  keel_pid_t pid;
  uint64_t seq;
  void *sched;
  int status;
  int ready;
} keel_io_t;

int keel_io_begin(keel_io_t *io);
uv_loop_t *keel_io_loop(const keel_io_t *io);
int keel_io_wait(keel_io_t *io, int64_t timeout_ms);
void keel_io_ready(keel_io_t *io, int status);
void keel_io_end(keel_io_t *io);

/* Sets fn(arg) to run if the process dies while inside this begin/end pair
 * (an exit signal during keel_io_wait): it must release what the wait
 * started on the loop (a handle, a transfer), because the process's stack is
 * gone by then. fn runs on the process's scheduler thread; it is not run at
 * keel_rt_stop for processes destroyed then (the loops are closed by then:
 * whoever owns the handles frees them). One per process; keel_io_end clears
 * it. Errors: KEEL_ENOTPROC, KEEL_EINVAL (io not begun by the caller). */
int keel_io_on_abandon(keel_io_t *io, void (*fn)(void *arg), void *arg);

/* Runs fn(arg) on the blocking-work thread pool and waits for it to return;
 * the scheduler runs other processes meanwhile. Use it for anything that may
 * block: file I/O, SQLite, DNS, a synchronous library. Exit signals that
 * arrive meanwhile take effect when fn has returned, so arg stays valid for
 * fn's whole run. Errors: KEEL_ENOTPROC, KEEL_ENOMEM. */
int keel_blocking(void (*fn)(void *arg), void *arg);

#ifdef __cplusplus
}
#endif
#endif
