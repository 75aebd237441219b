/* keel/runtime.h - starting and stopping the keel runtime (the "node").
 *
 * The runtime owns one scheduler per core: an OS thread running a libuv loop
 * and the keel processes placed on it. A program starts the runtime, spawns
 * processes, and waits until every process has exited (or until somebody calls
 * keel_rt_halt), then stops it. keel_run() does all four in one call.
 *
 *   static void hello(void *arg) { puts("hello from a process"); }
 *   int main(void) { return keel_run(hello, NULL, NULL); }
 */
#ifndef KEEL_RUNTIME_H
#define KEEL_RUNTIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "keel/error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Timeouts. Every keel function and option that takes a timeout in
 * milliseconds reads it the same way:
 *
 *   0 (KEEL_TIMEOUT_DEFAULT)  the default that function or field documents
 *                             (so a zeroed options struct means defaults)
 *   > 0                       that many milliseconds
 *   KEEL_INFINITY             wait as long as it takes
 *   KEEL_NOWAIT               do not wait: take what is there now
 *
 * Other negative values are KEEL_EINVAL. */
#define KEEL_TIMEOUT_DEFAULT ((int64_t)0)
#define KEEL_INFINITY        ((int64_t)-1)
#define KEEL_NOWAIT          ((int64_t)-2)

/* The convention above for your own functions: timeout_ms, or dflt when it
 * is KEEL_TIMEOUT_DEFAULT. */
static inline int64_t keel_timeout_or(int64_t timeout_ms, int64_t dflt) {
  return timeout_ms == KEEL_TIMEOUT_DEFAULT ? dflt : timeout_ms;
}

/* A process id. 64 bits, never reused: the id of a dead process never names a
 * later process. 0 is never a valid pid. Format with keel_pid_format. */
typedef uint64_t keel_pid_t;

/* A reference: a 64-bit value unique within the node (monitor references,
 * call references, timer references). 0 is never a valid reference. */
typedef uint64_t keel_ref_t;

/* The entry point of a process. Returning from it exits the process with
 * reason normal. */
typedef void (*keel_proc_fn)(void *arg);

typedef struct keel_rt_opts {
  int schedulers;    /* scheduler threads; 0: $KEEL_SCHEDULERS, else one per online core */
  size_t stack_size; /* default process stack (bytes, rounded up to pages); 0: 128 KiB */
  int64_t stuck_ms;  /* report a process holding a scheduler longer than this; 0: 100 ms; <0: off */
  int budget;        /* messages a process may receive before it must yield; 0: 100 */
  int deterministic; /* 1: one scheduler, runnable processes picked in a seeded order */
  uint64_t seed;     /* seed for deterministic mode; 0: $KEEL_SEED, else time-based (printed) */
  /* Stream affinity: a process that spends whole budgets receiving from one
   * busy sender, at most this many ns per message (its slice and whatever
   * ran between two of them), moves to the sender's scheduler and the two
   * are not split by work stealing; past 3x this they may be split again.
   * 0: 150 ns; <0: off (docs/decisions/0033). */
  int64_t stream_follow_ns;
} keel_rt_opts;

/* Fills *o with defaults (all zero: every field takes its default). */
void keel_rt_opts_init(keel_rt_opts *o);

/* Starts the runtime: stack pool, process table, scheduler threads. o may be
 * NULL for defaults. Errors: KEEL_ESTATE if already started, KEEL_EINVAL for
 * a bad option (a bad $KEEL_SCHEDULERS names itself on stderr), KEEL_ENOMEM,
 * KEEL_EIO if a closed descriptor 0-2 cannot be given /dev/null (a program
 * started with its stdio closed gets /dev/null there, so that no descriptor
 * of the runtime's lands on them). Sets SIGPIPE to SIG_IGN if it is SIG_DFL.
 * Call from one thread (normally main) that is not a scheduler thread. */
int keel_rt_start(const keel_rt_opts *o);

/* Blocks the calling (non-scheduler) thread until no process is alive or
 * keel_rt_halt() was called. Returns the halt status, or 0 when the last
 * process exited. Errors: KEEL_ESTATE if not started or called from a
 * scheduler thread. */
int keel_rt_wait(void);

/* Asks the node to stop: keel_rt_wait() returns `status`. Processes still
 * alive are not run again; keel_rt_stop() destroys them. Any thread. */
void keel_rt_halt(int status);

/* Stops the scheduler threads, destroys processes still alive (their mailboxes
 * and stacks are freed; memory they malloc'd themselves is theirs to lose),
 * and frees everything the runtime allocated. Returns 0 or KEEL_ESTATE.
 * Call from the thread that started the runtime. */
int keel_rt_stop(void);

/* keel_rt_start + spawn fn(arg) + keel_rt_wait + keel_rt_stop. Returns the
 * wait status, or a negative KEEL_E* code if the runtime could not start. */
int keel_run(keel_proc_fn fn, void *arg, const keel_rt_opts *o);

/* Number of scheduler threads, 0 when the runtime is not running. Any thread. */
int keel_sched_count(void);

/* Index of the scheduler the calling thread runs, or -1 outside scheduler
 * threads. A process may move between schedulers at any wait: do not cache it
 * across a call that can yield. */
int keel_sched_current(void);

/* Counters of the whole node, summed when read (cheap, but not a hot-path
 * call). Any thread. */
typedef struct keel_rt_stats {
  uint64_t procs_alive;
  uint64_t procs_spawned;
  uint64_t procs_exited;
  uint64_t msgs_sent;       /* messages delivered to a live process's mailbox */
  uint64_t msgs_to_dead;    /* messages sent to a dead process (dropped) */
  uint64_t replies_dropped; /* replies nobody awaited any more (late replies) */
  uint64_t context_switches;
  uint64_t steals;           /* processes moved by work stealing */
  uint64_t blocking_queued;  /* blocking jobs submitted and not yet started */
  uint64_t blocking_running; /* blocking jobs running on the pool now */
  uint64_t stuck_reports;    /* processes reported for holding a scheduler too long */
  uint64_t hog_kills;        /* processes killed past their hog limit (keel_set_hog_limit) */
  uint64_t migrations;       /* receivers moved to their sender's scheduler (stream affinity) */
} keel_rt_stats;
void keel_rt_stats_get(keel_rt_stats *out);

/* ---- introspection (the observer, health checks, alerts, metrics) ------- */

/* One process as seen from outside, without stopping it. The fields are read
 * racily: each is a value the process had recently, and a process may exit
 * while it is being read (then it is skipped). */
typedef struct keel_proc_info {
  keel_pid_t pid;
  keel_pid_t parent; /* the process that spawned it, 0 when spawned from outside */
  char name[32];     /* its label (keel_spawn_opts.name, keel_set_name) or "" */
  const char *status;      /* "runnable", "running", "waiting" or "exiting" (static) */
  const char *waiting_for; /* when waiting: "message", "reply", "io", "timer", "signal";
                              else "" (static) */
  int scheduler;           /* the scheduler it runs or last ran on */
  uint64_t mailbox_len;    /* messages queued, kept-aside ones included */
  uint64_t messages_in;    /* messages ever delivered to its mailbox */
  uint64_t messages_handled; /* messages its receives returned */
  size_t memory;           /* control block + stack reservation (message payloads not counted) */
  int64_t age_ms;          /* since it was spawned */
} keel_proc_info;

/* Calls fn(info, ud) for every live process, in table order, and returns how
 * many were visited; fn returns false to stop early. fn runs on the calling
 * thread while no lock is held, so it may do anything but must not assume the
 * process still lives. Cost: one pass over the process table (about 10 ns per
 * slot). Any thread. */
size_t keel_rt_processes(bool (*fn)(const keel_proc_info *info, void *ud), void *ud);

/* Fills *out for one process. Errors: KEEL_ENOPROC (not alive), KEEL_ESTATE. */
int keel_rt_process_info(keel_pid_t pid, keel_proc_info *out);

/* A process's links and monitors, as seen from outside (the observer's
 * process page). Each copies one set of pid: the processes it is linked to
 * (keel_rt_process_links), the processes it monitors
 * (keel_rt_process_monitors) and the processes that monitor it
 * (keel_rt_process_monitored_by; a watcher monitoring it twice appears
 * twice). The set is copied as one state it really had (the owner publishes
 * each change through a sequence lock the reader checks), with the changes
 * other processes already sent it applied (a sleeping
 * process handles them only when it next runs), so the copy is the set as
 * the node sees it at that moment, except for the signals the process is
 * handling at that instant (taken from its queue, not yet applied: a
 * transient lag); it may change right after. A monitor
 * whose DOWN is queued but not yet received still shows in
 * keel_rt_process_monitors.
 * Writes at most cap pids to out (the caller's array; out may be NULL when cap
 * is 0) and sets *n to the set's full size, which may exceed cap: call again
 * with a larger array to see them all. Errors: KEEL_ENOPROC (not alive),
 * KEEL_EINVAL (n NULL, or out NULL with cap > 0), KEEL_ENOMEM, KEEL_ESTATE
 * (runtime not running). Any thread, never waits on the process (decision 0030). */
int keel_rt_process_links(keel_pid_t pid, keel_pid_t *out, size_t cap, size_t *n);
int keel_rt_process_monitors(keel_pid_t pid, keel_pid_t *out, size_t cap, size_t *n);
int keel_rt_process_monitored_by(keel_pid_t pid, keel_pid_t *out, size_t cap, size_t *n);

/* One scheduler as seen from outside. */
typedef struct keel_sched_info {
  int id;
  bool stuck;          /* the watchdog saw one process hold it for a whole tick */
  keel_pid_t running;  /* the process it runs now, 0 when none */
  uint32_t run_queue;  /* processes queued to run on it */
  uint64_t idle_ns;    /* total time asleep with nothing to run, the sleep in
                          progress included (utilisation =
                          1 - delta(idle_ns) / delta(wall time)) */
  uint64_t switches;   /* context switches so far */
  /* How long the process running now has held it without a switch, as the
   * runtime's watchdog saw it (it looks every stuck_ms / 4, between 5 and
   * 50 ms: a hold shorter than a look is 0); 0 when it switches or idles.
   * Kept only while the watchdog runs (watched: stuck_ms > 0 or more than one
   * scheduler). Reading it costs nothing: no sampling, no wait. */
  int64_t held_ms;
  bool watched;
} keel_sched_info;

/* Fills *out for scheduler i (0 <= i < keel_sched_count()). Errors:
 * KEEL_EINVAL, KEEL_ESTATE. Any thread. */
int keel_rt_sched_info(int i, keel_sched_info *out);

/* Process lifecycle events, for the observer. */
typedef enum keel_proc_event_kind { KEEL_PROC_STARTED = 1, KEEL_PROC_EXITED = 2 } keel_proc_event_kind;
typedef struct keel_proc_event {
  keel_proc_event_kind kind;
  keel_pid_t pid;
  keel_pid_t parent;       /* STARTED: the spawning process or 0 */
  const char *name;        /* its label or "" (borrowed for the call) */
  int reason;              /* EXITED: a keel_reason_kind (keel/process.h) */
  const char *reason_text; /* EXITED: "" or the text (borrowed for the call) */
} keel_proc_event;
typedef void (*keel_proc_event_fn)(const keel_proc_event *ev, void *ud);

/* Installs fn(ev, ud) to hear of every process start and exit (NULL removes
 * it); one hook per node (the observer's). STARTED is called by the spawning
 * thread before the process can run, EXITED by the scheduler finishing the
 * process, so a process's STARTED always comes before its EXITED. fn runs on
 * scheduler threads in the middle of a spawn or an exit: it must be short,
 * must not wait, and may only send messages. Any thread. */
void keel_rt_set_proc_events(keel_proc_event_fn fn, void *ud);

/* CLOCK_MONOTONIC milliseconds at which the runtime started, 0 when stopped. */
uint64_t keel_rt_started_ms(void);

/* Runtime reports: things an operator must hear about. The default handler
 * writes one line to stderr. The operations layer installs its own to log
 * them as structured events. */
typedef enum keel_report_kind {
  KEEL_REPORT_STUCK = 1, /* a process held a scheduler longer than stuck_ms */
  KEEL_REPORT_CRASH = 2, /* a process exited with a reason other than normal/shutdown */
} keel_report_kind;

typedef struct keel_report {
  keel_report_kind kind;
  keel_pid_t pid;
  const char *name; /* process name or "" */
  int scheduler;
  int64_t held_ms;    /* STUCK: how long the process has held its scheduler */
  const char *reason; /* CRASH: the exit reason as text */
} keel_report;

/* Installs fn(report, ud) as the report handler (NULL restores the default).
 * fn is called from scheduler or watchdog threads; it must not block for long
 * and must not call keel functions that wait. */
typedef void (*keel_report_fn)(const keel_report *r, void *ud);
void keel_rt_set_report_handler(keel_report_fn fn, void *ud);

#ifdef __cplusplus
}
#endif
#endif
