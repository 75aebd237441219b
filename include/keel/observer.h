/* keel/observer.h - a look at the whole node without stopping it.
 *
 * Two halves:
 *
 * SNAPSHOT. keel_observer_snapshot_take walks every process (keel_rt_processes),
 * asks every supervisor for its settings and children (with a timeout, so a
 * busy supervisor cannot hang it), reads the schedulers, the runtime counters
 * and the OS memory figures, and hands back one struct of plain arrays:
 * processes (with registered name and supervisor), supervisors (in tree
 * order), schedulers (with utilisation), totals and memory. Nothing is
 * stopped: each value is one the node had during the snapshot. The same
 * snapshot exports as JSON (keel_observer_snapshot_json, what the HTTP admin
 * endpoint /admin/observer serves). The snapshot functions talk to
 * supervisors, so they must be called from a keel process.
 *
 * EVENTS. keel_observer_start runs the observer process, which relays to
 * subscribers (keel_observer_subscribe): process started / exited (with the
 * reason), child restarted, supervisor intensity exceeded, and a stats
 * message every N ms. Events are bounded: a node that spawns a million
 * processes a second does not flood anyone; what is not delivered is counted
 * and reported ("dropped").
 *
 * See docs/observer.md for the JSON shapes and the message layouts.
 */
#ifndef KEEL_OBSERVER_H
#define KEEL_OBSERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "keel/process.h"
#include "keel/runtime.h"
#include "keel/supervisor.h"
#include "keel/sysinfo.h"
#include "keel/table.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- snapshot ------------------------------------------------------------ */

#define KEEL_OBSERVER_MAX_PROCS_DEFAULT 10000 /* processes listed when not told otherwise */
#define KEEL_OBSERVER_ALL_PROCS         SIZE_MAX
#define KEEL_OBSERVER_NONE              SIZE_MAX /* "no index" (a root's parent_index) */

typedef struct keel_observer_opts {
  bool skip_processes;    /* true: list no process (totals are still complete) */
  size_t max_processes;   /* list at most this many (those with the longest
                             mailboxes); 0: KEEL_OBSERVER_MAX_PROCS_DEFAULT;
                             KEEL_OBSERVER_ALL_PROCS: every one */
  int64_t sup_timeout_ms; /* how long one supervisor may take to answer; 0: 500 */
  int64_t sup_budget_ms;  /* all supervisors together; past it the rest get 1 ms
                             each; 0: 3000 */
} keel_observer_opts;

/* Fills *o with the defaults (all zero). */
void keel_observer_opts_init(keel_observer_opts *o);

/* One process. */
typedef struct keel_observer_proc {
  keel_pid_t pid;
  keel_pid_t parent;         /* the process that spawned it, 0 when spawned from outside */
  keel_pid_t supervisor;     /* the supervisor whose children list holds it, 0 for none */
  const char *child_id;      /* its id in that supervisor, "" for none (owned by the snapshot) */
  const char *registered;    /* its registered name ("" none; the smallest when it has
                                several; owned by the snapshot) */
  char name[32];             /* its label (keel_spawn_opts.name) or "" */
  const char *status;        /* "runnable", "running", "waiting", "exiting" (static) */
  const char *waiting_for;   /* "message", "reply", "io", "timer", "signal" or "" (static) */
  int scheduler;             /* the scheduler it runs or last ran on */
  bool is_supervisor;        /* it is one of the snapshot's supervisors */
  uint64_t mailbox_len;      /* messages queued */
  uint64_t messages_in;      /* messages ever delivered to it */
  uint64_t messages_handled; /* messages its receives returned */
  size_t memory;             /* control block + stack reservation, bytes */
  int64_t age_ms;            /* since it was spawned */
} keel_observer_proc;

/* One supervisor. status 0: it answered; KEEL_ETIMEDOUT: it did not answer in
 * time ("unresponsive": settings and children unknown, nchildren 0);
 * KEEL_ENOPROC / KEEL_EDOWN: it exited during the snapshot ("gone"); another
 * negative code: the query failed ("error"). */
typedef struct keel_observer_sup {
  keel_pid_t pid;
  keel_pid_t parent;   /* the supervisor whose children include it, 0 for a root */
  size_t parent_index; /* index of that supervisor in sups, KEEL_OBSERVER_NONE for a root */
  unsigned depth;      /* 0 for a root */
  int status;
  char name[64]; /* registered name or "" */
  keel_sup_strategy strategy;
  int intensity;
  int64_t period_ms;
  unsigned restarts; /* restart rounds so far */
  size_t nchildren;
  keel_sup_child_info *children; /* start order (id, pid, type, restart, restarts) */
} keel_observer_sup;

/* One scheduler. */
typedef struct keel_observer_sched {
  keel_sched_info info; /* id, stuck, running, run_queue, idle_ns, switches */
  double utilisation;   /* busy fraction 0..1 over utilisation_window_ms */
} keel_observer_sched;

/* Totals: always over every process and supervisor, listed or not. */
typedef struct keel_observer_totals {
  uint64_t processes;        /* live processes the walk saw */
  uint64_t mailbox_messages; /* sum of mailbox lengths */
  uint64_t max_mailbox_len;  /* the longest mailbox */
  uint64_t messages_handled; /* sum over live processes */
  uint64_t process_memory;   /* sum of keel_observer_proc.memory */
  size_t supervisors;
  size_t unresponsive_supervisors; /* status != 0 */
  uint64_t restarts;               /* sum of the supervisors' restart rounds */
  size_t registered_names;
  keel_rt_stats rt;      /* the runtime's counters (spawned, exited, sent, ...) */
  size_t tables;         /* live shared tables (keel/table.h) */
  uint64_t table_memory; /* the bytes they hold */
} keel_observer_totals;

typedef struct keel_observer_snapshot {
  uint64_t time_ms;    /* wall clock (Unix epoch, ms) when it was taken */
  uint64_t uptime_ms;  /* since keel_rt_start */
  int64_t duration_us; /* how long taking it took */
  keel_observer_totals totals;
  keel_sys_memory memory; /* rss, heap, cgroup limit (0: none), system */
  size_t nprocs;
  keel_observer_proc *procs; /* longest mailbox first (ties: lower pid first) */
  bool truncated;            /* totals.processes > nprocs because of max_processes */
  size_t nsups;
  keel_observer_sup *sups; /* tree pre-order: each root, then its subtree; a
                              child supervisor follows its parent */
  size_t nscheds;
  keel_observer_sched *scheds;
  int64_t utilisation_window_ms; /* since the previous snapshot, or since start */
  size_t ntables;
  keel_table_info *tables; /* every live shared table: name, owner, heir, type,
                              access, size, memory (keel_tables) */
  void *strings_;          /* private: names owned by the snapshot */
} keel_observer_snapshot;

/* Takes a snapshot into *out (opts may be NULL for the defaults). The caller
 * owns it and frees it with keel_observer_snapshot_free. Must be called from
 * a keel process (it calls supervisors); it waits at most about
 * sup_budget_ms + sup_timeout_ms on supervisors. Errors: KEEL_ENOTPROC (not
 * in a process), KEEL_ESTATE (runtime not running), KEEL_EINVAL, KEEL_ENOMEM
 * (then *out is empty). */
int keel_observer_snapshot_take(const keel_observer_opts *opts, keel_observer_snapshot *out);

/* Frees what a snapshot owns and zeroes it. NULL and a zeroed snapshot are
 * fine. Any thread. */
void keel_observer_snapshot_free(keel_observer_snapshot *snap);

/* The supervisor with this pid in the snapshot, or NULL. Borrowed from snap. */
const keel_observer_sup *keel_observer_snapshot_sup(const keel_observer_snapshot *snap,
                                                    keel_pid_t pid);

/* Encodes a snapshot as one JSON object (docs/observer.md has its shape) into
 * a malloc'd NUL-terminated string: *json, its length in *len (len may be
 * NULL). The caller frees *json; snap is only read. Errors: KEEL_EINVAL,
 * KEEL_ENOMEM. Any thread; in a process it yields every 4,096 processes
 * encoded, so a large snapshot does not hold a scheduler. */
int keel_observer_snapshot_to_json(const keel_observer_snapshot *snap, char **json, size_t *len);

/* Takes a snapshot with the default options and encodes it: what
 * /admin/observer serves. The caller frees *json. Errors as
 * keel_observer_snapshot_take (KEEL_ENOTPROC outside a process). */
int keel_observer_snapshot_json(char **json, size_t *len);

/* ---- events --------------------------------------------------------------- */

/* What a subscriber hears about (a bit mask). */
typedef enum keel_observer_kind {
  KEEL_OBS_PROC_STARTED = 1u << 0,       /* a process was spawned */
  KEEL_OBS_PROC_EXITED = 1u << 1,        /* a process exited (with its reason) */
  KEEL_OBS_CHILD_RESTARTED = 1u << 2,    /* a supervisor restarted a child */
  KEEL_OBS_INTENSITY_EXCEEDED = 1u << 3, /* a supervisor gave up (too many restarts) */
  KEEL_OBS_STATS = 1u << 4,              /* a keel_observer_stats every interval */
} keel_observer_kind;
#define KEEL_OBS_ALL 0x1fu

/* Message tags of what subscribers receive (KEEL_MSG_USER messages sent by
 * the observer process). */
#define KEEL_OBSERVER_TAG_EVENT 0x6B6F6265u /* payload: keel_observer_event */
#define KEEL_OBSERVER_TAG_STATS 0x6B6F6273u /* payload: keel_observer_stats */

/* The payload of a KEEL_OBSERVER_TAG_EVENT message (a plain struct, copy it
 * out with memcpy or read it in place while the message lives). */
typedef struct keel_observer_event {
  keel_observer_kind kind; /* one bit */
  uint64_t time_ms;        /* wall clock (Unix epoch, ms) when the observer relayed it */
  keel_pid_t pid;          /* PROC_*: the process; CHILD_RESTARTED: the child's new pid
                              (0 if its start failed); INTENSITY_EXCEEDED: the child
                              whose exit was one too many */
  keel_pid_t parent;       /* PROC_STARTED: the spawning process, 0 from outside */
  keel_pid_t supervisor;   /* child events: the supervisor */
  char name[32];           /* PROC_*: the process's label */
  char sup_name[64];       /* child events: the supervisor's registered name or "" */
  char child_id[64];       /* child events: the child's id */
  keel_reason_kind reason; /* PROC_EXITED: why; child events: why the child exited */
  char reason_text[128];   /* its text, truncated to fit, or "" */
  unsigned attempt;        /* CHILD_RESTARTED: restarts within the period */
  uint64_t dropped;        /* events this subscriber lost (overload) since the
                              previous event it was sent */
} keel_observer_event;

/* The payload of a KEEL_OBSERVER_TAG_STATS message. Cheap to produce: no
 * process walk (take a snapshot for that). */
typedef struct keel_observer_stats {
  uint64_t time_ms; /* wall clock (Unix epoch, ms) */
  uint64_t uptime_ms;
  keel_rt_stats rt; /* processes alive/spawned/exited, messages, ... */
  keel_sys_memory memory;
  int schedulers;
  double utilisation;      /* mean busy fraction of the schedulers since this
                              subscriber's previous stats message (or start) */
  size_t supervisors;      /* live supervisors */
  uint64_t events_dropped; /* events this subscriber lost so far in total */
} keel_observer_stats;

typedef struct keel_observer_start_opts {
  uint32_t rate_max;    /* events per subscriber per second; more are dropped
                           and counted; 0: 1000 */
  uint32_t queue_max;   /* process events waiting in the observer's mailbox;
                           more are dropped at the source; 0: 4096 */
  uint64_t mailbox_max; /* a subscriber whose mailbox holds more is sent no
                           events (they are counted as dropped); 0: 10000 */
} keel_observer_start_opts;

#define KEEL_OBSERVER_MAX_SUBSCRIBERS 64

/* Starts the observer process (named "keel_observer") and installs the
 * node's process lifecycle hook (keel_rt_set_proc_events: there is one per
 * node; the observer owns it while it runs) and a supervisor event handler.
 * A running observer is left as it is (its options too) and KEEL_ESTATE is
 * returned, as for every start of something already running. o may
 * be NULL. Any thread once the runtime runs. The observer stops with
 * keel_observer_stop, or when the runtime stops (nothing leaks).
 * Errors: KEEL_ESTATE (already running, or the runtime is not), KEEL_ENOMEM. */
int keel_observer_start(const keel_observer_start_opts *o);

/* Stops the observer: removes the hook and the handler at once, forgets every
 * subscriber, and ends the observer process (from a keel process, waits up to
 * 5 s for it to be gone). Idempotent. Any thread. */
int keel_observer_stop(void);

/* Whether the observer runs. Any thread. */
bool keel_observer_running(void);

/* Subscribes process `pid` to the events in `kinds` (keel_observer_kind bits);
 * with KEEL_OBS_STATS it gets a keel_observer_stats every stats_interval_ms
 * (0: 1000; at least 10). Subscribing again replaces the kinds and interval.
 * Takes effect at once: events that happen after the call returns are
 * relayed. A subscriber that exits is removed (the observer monitors it).
 * Any thread. Errors: KEEL_ESTATE (observer not running), KEEL_EINVAL (pid 0,
 * no kind, negative interval), KEEL_ENOPROC (pid dead), KEEL_EBUSY
 * (KEEL_OBSERVER_MAX_SUBSCRIBERS already). */
int keel_observer_subscribe(keel_pid_t pid, unsigned kinds, int64_t stats_interval_ms);

/* Removes a subscription (messages already sent stay in its mailbox).
 * Errors: KEEL_ENOENT. Any thread. */
int keel_observer_unsubscribe(keel_pid_t pid);

/* Number of current subscribers. Any thread. */
size_t keel_observer_subscribers(void);

/* "process_started", "process_exited", "child_restarted",
 * "intensity_exceeded", "stats"; "unknown" otherwise. Static. */
const char *keel_observer_kind_name(keel_observer_kind kind);

#ifdef __cplusplus
}
#endif
#endif
