/* keel/process.h - lightweight processes: spawn, exit, links, monitors.
 *
 * A process is a coroutine with its own stack and mailbox, run cooperatively by
 * one of the node's schedulers. It runs until it waits (receive, await, sleep,
 * I/O, blocking work) or yields; a process that receives many messages in a
 * row yields after its budget so that no process starves the others.
 *
 * Failure follows Erlang: a process that exits with a reason other than normal
 * sends an exit signal to every linked process, which then exits too unless it
 * traps exits (it receives a KEEL_MSG_EXIT message instead). Monitors receive a
 * KEEL_MSG_DOWN message when the monitored process exits. An exit signal with
 * reason kill cannot be trapped; the killed process exits with reason killed.
 *
 * Exit signals are handled when the target next enters the runtime (a receive,
 * a yield, any wait). A process that computes without yielding cannot be
 * killed until it yields; the runtime reports it (see stuck_ms). keel does not
 * unwind C stacks: a process killed while it owns heap memory loses it unless
 * it registered a cleanup with keel_on_exit.
 */
#ifndef KEEL_PROCESS_H
#define KEEL_PROCESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "keel/runtime.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Why a process exited. */
typedef enum keel_reason_kind {
  KEEL_REASON_NORMAL = 0,   /* finished; links are not brought down */
  KEEL_REASON_SHUTDOWN = 1, /* asked to stop by its supervisor; not a crash */
  KEEL_REASON_KILL = 2,     /* only as an exit signal: untrappable; the target exits with KILLED */
  KEEL_REASON_KILLED = 3,   /* exited because of a kill signal */
  KEEL_REASON_NOPROC = 4,   /* the process did not exist (link/monitor of a dead process) */
  KEEL_REASON_ERROR = 5,    /* crashed; the text says why */
} keel_reason_kind;

/* An exit reason: a kind and, for ERROR (optionally SHUTDOWN), a text.
 * Where keel hands out a keel_reason, `text` is borrowed from the object it
 * came from (the message) and lives as long as that object; it is never NULL
 * ("" when there is none). */
typedef struct keel_reason {
  keel_reason_kind kind;
  const char *text;
} keel_reason;

/* "normal", "shutdown", "kill", "killed", "noproc", "error". Static string. */
const char *keel_reason_name(keel_reason_kind kind);

typedef struct keel_spawn_opts {
  size_t stack_size;       /* 0: the runtime default. Rounded up to whole pages. */
  int scheduler;           /* where the process first runs: 0 (default): here (the caller's
                              scheduler); KEEL_ON_SCHEDULER(i): scheduler i */
  bool link;               /* link the new process to the caller, atomically with the spawn */
  bool monitor;            /* monitor it atomically with the spawn; the ref goes to *monitor_ref */
  keel_ref_t *monitor_ref; /* out: the monitor's reference when monitor is set */
  keel_ref_t monitor_with; /* in: if not 0 (a keel_make_ref), the monitor uses this
                              reference, so the child can be told it before it runs */
  bool await_monitor;      /* with monitor: the monitor's reference is armed in the caller
                              (keel_await_ref) before the child can run, so the child may
                              reply to it and keel_await gets its reply or its DOWN. Point
                              monitor_ref into the child's arg: it is written before the
                              child runs. Disarmed again if the spawn fails. The
                              spawn-and-await of gen_server, task, application... */
  bool trap_exit;          /* the new process starts trapping exits */
  const char *name;        /* a label for reports and the observer (copied, up to 31 bytes) */
  bool pin;                /* run only on `scheduler` (or the spawner's) for its whole life,
                              never stolen: for processes that use that scheduler's libuv
                              handles (the HTTP server's request handlers) */
  void (*on_exit)(void *arg); /* if set: runs when the process exits, however it exits
                                 (as keel_on_exit), registered atomically with the spawn */
  void *on_exit_arg;
  int64_t hog_limit_ms; /* as keel_set_hog_limit, from the start; 0: none; < 0: KEEL_EINVAL */
} keel_spawn_opts;

/* A scheduler for keel_spawn_opts.scheduler and keel_gs_opts.scheduler: i
 * counts from 0 (< keel_sched_count()); a negative i means "here", as 0 does,
 * so that a zeroed options struct is the default. */
#define KEEL_ON_SCHEDULER(i) ((i) < 0 ? 0 : (i) + 1)

/* Fills *o with the defaults: all zero. */
void keel_spawn_opts_init(keel_spawn_opts *o);

/* Spawns a process running fn(arg) and stores its pid in *out (may be NULL).
 * arg is borrowed by the new process: keep it valid for as long as the
 * process uses it. opts may be NULL. link and monitor need a calling process
 * (else KEEL_ENOTPROC). May be called from any thread once the runtime runs.
 * Errors: KEEL_ESTATE (runtime not running), KEEL_ENOMEM (no memory, or no
 * address space or mappings left for another stack), KEEL_EINVAL. */
int keel_spawn(keel_proc_fn fn, void *arg, const keel_spawn_opts *opts, keel_pid_t *out);

/* The calling process's pid, 0 outside a process. */
keel_pid_t keel_self(void);

/* Exits the calling process with the given reason; text (may be NULL) is
 * copied. Does not return. Outside a process it aborts the program. */
_Noreturn void keel_exit(keel_reason_kind kind, const char *text);

/* Exits the calling process with reason ERROR and a printf-formatted text. */
_Noreturn void keel_exitf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Sends an exit signal with the given reason to `to`, as Erlang's exit/2:
 * KILL kills it (it exits with KILLED, untrappable); NORMAL is ignored unless
 * `to` traps exits (then it gets a KEEL_MSG_EXIT message) or `to` is the
 * caller itself; any other reason kills it unless it traps exits.
 * Any thread. Errors: KEEL_ENOPROC, KEEL_EINVAL. */
int keel_exit_signal(keel_pid_t to, keel_reason_kind kind, const char *text);

/* Links the caller and `pid` (idempotent). If pid is dead, returns
 * KEEL_ENOPROC at once and no link exists; if it dies before the link is
 * established, the caller gets an exit signal with reason noproc.
 * Errors: KEEL_ENOTPROC, KEEL_ENOPROC. */
int keel_link(keel_pid_t pid);

/* Removes a link (idempotent). An exit signal from `pid` that was already on
 * its way is dropped. Errors: KEEL_ENOTPROC. */
int keel_unlink(keel_pid_t pid);

/* Monitors `pid`: when it exits, the caller receives a KEEL_MSG_DOWN message
 * carrying *ref, pid and the exit reason. If pid is already dead the DOWN
 * message (reason noproc) is sent at once and the call still succeeds.
 * Errors: KEEL_ENOTPROC, KEEL_EINVAL. */
int keel_monitor(keel_pid_t pid, keel_ref_t *ref);

/* Removes a monitor. A DOWN message for it that is already queued is removed
 * too (it will never be received). Errors: KEEL_ENOTPROC, KEEL_ENOENT. */
int keel_demonitor(keel_ref_t ref);

/* Sets whether the caller traps exits; returns the previous setting (0/1) or
 * KEEL_ENOTPROC. */
int keel_trap_exit(bool on);

/* Holds exit signals, kill included, while a short critical section runs:
 * they take effect when the last hold is released (hold=false), at once.
 * Holds nest. Use it where dying halfway would leave memory another process
 * still uses: gen_server's start holds exits while it waits for the child's
 * init, which reads the starter's memory. A process holding exits cannot be
 * stopped, so keep the section short and bounded. Errors: KEEL_ENOTPROC,
 * KEEL_ESTATE (release without hold). */
int keel_hold_exits(bool hold);

/* Lets other runnable processes run; the caller continues later. Returns 0 or
 * KEEL_ENOTPROC. */
int keel_yield(void);

/* Counts `units` of work done by a long computation, as Erlang counts
 * reductions, and yields when the caller has used its slice: call it in any
 * loop that may run longer than a millisecond without receiving or waiting,
 * so the other processes of its scheduler (and the I/O of its loop, which
 * they share) are not held up. The slice is 1 ms of running time, checked
 * every 1000 units, so one unit may stand for anything from a few
 * nanoseconds of work to a microsecond; more per unit only makes the slice
 * coarser. Costs a decrement and a compare on most calls (bench_rt:
 * consume). Exit signals sent meanwhile (a kill, the hog limit below) take
 * effect here. Returns 1 if it yielded, 0 if not, KEEL_ENOTPROC. */
int keel_consume(unsigned units);

/* A limit for the caller (or, through keel_spawn_opts.hog_limit_ms, a new
 * process): running that long without waiting is fatal, an untrappable kill
 * whose text says so ("hog: ran 212 ms without waiting (limit 200 ms)").
 * Waiting means a receive that found nothing, a sleep, a timer, I/O; a yield
 * (keel_consume's included) or a receive that found a message at once is
 * not a wait. Checked at keel_consume's clock looks, so a loop that
 * consumes is killed within a thousand units past the limit; a loop that
 * never consumes, yields, sends or receives cannot be stopped (C has no safe
 * way to preempt it): the runtime's watchdog reports it (stuck_ms) and, past
 * the limit without a switch, sends it the kill ("hog: held scheduler 0 for
 * 212 ms (limit 200 ms)"), which takes effect when it next calls into keel. 0 (the default): no limit, reports only; < 0:
 * KEEL_EINVAL. keel_rt_stats.hog_kills counts them. Returns 0, KEEL_EINVAL,
 * KEEL_ENOTPROC. */
int keel_set_hog_limit(int64_t ms);

/* Suspends the caller for ms milliseconds (messages stay queued). Exit
 * signals still end it. Returns 0, KEEL_EINVAL or KEEL_ENOTPROC. */
int keel_sleep(int64_t ms);

/* Whether `pid` names a live process. A hint: it may die right after. */
bool keel_is_alive(keel_pid_t pid);

/* Formats a pid as "<0.INDEX.SERIAL>" into buf (always NUL-terminated).
 * Returns buf. 24 bytes are always enough. */
char *keel_pid_format(keel_pid_t pid, char *buf, size_t len);

/* Sets the caller's name (copied, up to 31 bytes), shown in reports. */
int keel_set_name(const char *name);

/* Copies the name of the calling process into buf; "" when unnamed. */
const char *keel_self_name(void);

/* Registers fn(arg) to run when the calling process exits, for whatever
 * reason, in reverse order of registration, on the scheduler after the
 * process's stack is gone (so fn must not use pointers into that stack).
 * Use it to free what a process owns so that a kill loses nothing.
 * Errors: KEEL_ENOTPROC, KEEL_ENOMEM. */
int keel_on_exit(void (*fn)(void *arg), void *arg);

/* Sets fn(kind, text, arg) to run in the calling process, on its own stack,
 * when it calls keel_exit (or keel_exitf), before it ends, with the reason
 * as given to keel_exit; not when an exit
 * signal ends it, nor when its function returns. One per process: a new
 * call replaces it, fn NULL clears it; it is cleared before it runs (a
 * keel_exit inside fn ends the process at once). For behaviours whose
 * cleanup callback must run in the process (gen_server's terminate when a
 * callback calls keel_exit, as in OTP). Errors: KEEL_ENOTPROC. */
int keel_before_exit(void (*fn)(keel_reason_kind kind, const char *text, void *arg), void *arg);

/* Registers fn(arg) to run when process `pid` exits (as keel_on_exit, but for
 * another process: the request travels as a signal). If pid is already dead
 * the call returns KEEL_ENOPROC and fn is not called: the caller cleans up
 * itself. fn runs on a scheduler thread. Any thread. */
int keel_on_exit_of(keel_pid_t pid, void (*fn)(void *arg), void *arg);

/* Process-local storage: a few pointers per process, NULL at spawn. Slots
 * below KEEL_LOCAL_USER are used by keel's own layers. Outside a process
 * keel_local_get returns NULL and keel_local_set KEEL_ENOTPROC. */
enum {
  KEEL_LOCAL_GEN_SERVER = 0, /* gen_server.c: the running server */
  KEEL_LOCAL_LOG = 1,        /* the process's logging context */
  KEEL_LOCAL_TRACE = 2,      /* the process's current span (keel/trace.h) */
  KEEL_LOCAL_PORTS = 3,      /* port.c: the ports the process owns */
  KEEL_LOCAL_USER = 4,       /* 4..7: the application's */
  KEEL_LOCAL_SLOTS = 8
};
void *keel_local_get(int slot);
int keel_local_set(int slot, void *value);

/* A new reference, unique within the node. Any thread. */
keel_ref_t keel_make_ref(void);

#ifdef __cplusplus
}
#endif
#endif
