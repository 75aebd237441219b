/* keel/task.h - run a function in a new process and await its result.
 *
 * A task is a process that runs one function and replies with its result.
 * The caller awaits it with a timeout; the wait is O(1) (the result and the
 * task's DOWN carry the same armed monitor reference, see keel/message.h),
 * and a result that arrives after the caller gave up is dropped by the
 * runtime, never seen by a later receive.
 *
 * Two kinds, as Elixir's Task.async and Task.Supervisor.async_nolink:
 *
 *   - keel_task_async: the task is LINKED to the caller. If the task crashes,
 *     the caller gets the exit signal and crashes too, unless it traps exits
 *     (then the await returns KEEL_EDOWN). If the caller crashes, the task
 *     dies with it. Use it for work the caller cannot do without.
 *   - keel_task_sup_async: the task runs under a task supervisor (a
 *     supervisor with temporary children) and is NOT linked to the caller. A
 *     crash becomes KEEL_EDOWN for the awaiter, which carries on. The task
 *     supervisor can sit in an application's tree, so stopping the
 *     application stops its tasks.
 *
 *   static int square(void *arg, keel_msg_t **result) {
 *     long v = *(long *)arg * *(long *)arg;
 *     *result = keel_msg_copy(0, &v, sizeof v);
 *     return 0;
 *   }
 *   keel_task_t t;
 *   keel_task_async(square, &x, &t);
 *   keel_msg_t *r;
 *   if (keel_task_await(&t, &r, 1000, NULL) == 0) { ... keel_msg_free(r); }
 *
 * A task is awaited once: after keel_task_await returns (result, error or
 * timeout), the task's monitor is gone and a later result is dropped. After a
 * timeout the task keeps running (and a linked one stays linked): call
 * keel_task_shutdown to stop it. Everything here must be called from a keel
 * process, and a keel_task_t may only be used by the process that created it.
 */
#ifndef KEEL_TASK_H
#define KEEL_TASK_H

#include <stdbool.h>
#include <stddef.h>

#include "keel/gen_server.h"
#include "keel/supervisor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The task's work. Runs in the task's own process. Return 0 and set *result
 * (a message the function allocated; keel owns it from then on and sends it
 * to the awaiter; NULL sends an empty message), or return a negative KEEL_E*
 * code: the task then exits with reason error ("task returned KEEL_E...")
 * and *result, if set, is freed. keel_exit/keel_exitf also end the task.
 * `arg` is borrowed from the caller: it must stay valid until the task has
 * finished (after a timeout the task may still be using it). */
typedef int (*keel_task_fn)(void *arg, keel_msg_t **result);

/* A running task, as the caller sees it. Plain data owned by the caller
 * (normally on its stack); no function allocates or frees it. */
typedef struct keel_task {
  keel_pid_t pid; /* the task's process */
  keel_ref_t ref; /* the armed monitor reference; 0 once awaited */
  bool linked;    /* keel_task_async: linked to the caller */
} keel_task_t;

/* Starts fn(arg) in a new process LINKED to the caller and monitored by it.
 * *out describes it. Errors: KEEL_ENOTPROC, KEEL_EINVAL, KEEL_ENOMEM. */
int keel_task_async(keel_task_fn fn, void *arg, keel_task_t *out);

#define KEEL_TASK_DEFAULT_TIMEOUT 5000 /* ms: a timeout of 0 in the calls below */

/* Waits up to timeout_ms (0: KEEL_TASK_DEFAULT_TIMEOUT; KEEL_INFINITY;
 * KEEL_NOWAIT only checks) for the
 * task's result. On success *result is the message the task produced (kind
 * KEEL_MSG_REPLY, owned by the caller: keel_msg_free it). Errors:
 * KEEL_ETIMEDOUT (the task keeps running; a result it sends later is dropped),
 * KEEL_EDOWN (the task exited without a result: crashed, was killed, or ended
 * without replying; *why, if not NULL, gets its exit reason), KEEL_ENOENT
 * (already awaited), KEEL_ENOTPROC, KEEL_EINVAL. Whatever the outcome the task
 * is awaited: t->ref becomes 0. When the task has finished (result or
 * KEEL_EDOWN) a linked task is unlinked, so a caller that traps exits finds
 * no EXIT message from it in its mailbox. */
int keel_task_await(keel_task_t *t, keel_msg_t **result, int64_t timeout_ms, keel_gs_exit *why);

/* Awaits n tasks with ONE overall timeout (as keel_task_await's). results[i] gets task i's result
 * (or NULL), codes[i] (may be NULL) its keel_task_await code: results are in
 * the order of the tasks, not of completion. Tasks still running when the
 * deadline passes get KEEL_ETIMEDOUT. Returns 0 when every task produced a
 * result, else the first non-zero code in task order. results is an array of
 * n pointers owned by the caller, as are the messages stored in it. */
int keel_task_await_many(keel_task_t *tasks, size_t n, keel_msg_t **results, int *codes,
                         int64_t timeout_ms);

/* Stops a task: unlinks it, sends it an exit signal `shutdown`, waits up to
 * timeout_ms (0: KEEL_TASK_DEFAULT_TIMEOUT) for it to end and kills it if it has not. If its
 * result arrived before it ended and result is not NULL, *result gets it
 * (owned by the caller; else it is freed). Returns 0 (also for a task that
 * had already finished or been awaited), KEEL_ENOTPROC, KEEL_EINVAL. */
int keel_task_shutdown(keel_task_t *t, int64_t timeout_ms, keel_msg_t **result);

/* ---- task supervisor --------------------------------------------------- */

/* Starts a task supervisor: a simple_one_for_one supervisor whose children
 * are temporary tasks (never restarted). opts may be NULL (not linked, no
 * name); with opts->link it is linked to the caller. *sup gets its pid. Stop
 * it like any supervisor (keel_gs_stop): running tasks are shut down
 * (5000 ms each, then killed). Errors: those of keel_sup_start. */
int keel_task_sup_start(const keel_sup_opts *opts, keel_pid_t *sup);

/* A keel_sup_start_fn that starts a task supervisor linked to the calling
 * supervisor, for a child spec (type KEEL_SUP_SUPERVISOR). arg is ignored. */
int keel_task_sup_child_start(void *arg, const void *args, size_t args_len, keel_pid_t *pid);

/* Starts fn(arg) as a child of task supervisor `sup`, NOT linked to the
 * caller and monitored by it: a crash is reported by keel_task_await as
 * KEEL_EDOWN and the caller carries on. If the caller exits before the task
 * has begun, the task does not run. Errors: KEEL_ENOTPROC, KEEL_EINVAL,
 * KEEL_ENOPROC (no such supervisor), the supervisor's start_child errors. */
int keel_task_sup_async(keel_pid_t sup, keel_task_fn fn, void *arg, keel_task_t *out);

/* Fire and forget: starts fn(arg) under `sup` with nobody awaiting it (its
 * result, if any, is freed). *pid (may be NULL) gets the task's pid. */
int keel_task_sup_start_child(keel_pid_t sup, keel_task_fn fn, void *arg, keel_pid_t *pid);

#ifdef __cplusplus
}
#endif
#endif
