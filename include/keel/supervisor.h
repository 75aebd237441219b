/* keel/supervisor.h - supervision trees.
 *
 * A supervisor is a process (a gen_server that traps exits) that starts its
 * children in order, learns at once through links when one exits, and
 * restarts according to its strategy; it stops its children in reverse order.
 * Supervisors supervise supervisors: a real tree. When children crash more
 * than `intensity` times within `period_ms`, the supervisor stops all its
 * children in reverse order and exits with reason shutdown, so its own
 * supervisor deals with it; at the top, the application stops and the
 * program exits non-zero (keel/application.h).
 *
 * Semantics are Erlang/OTP's supervisor (see docs/otp.md for the few
 * differences from the reference and from OTP).
 */
#ifndef KEEL_SUPERVISOR_H
#define KEEL_SUPERVISOR_H

#include <stdbool.h>
#include <stddef.h>

#include "keel/gen_server.h"
#include "keel/gen_statem.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum keel_sup_strategy {
  KEEL_SUP_ONE_FOR_ONE = 0,   /* restart the child that exited */
  KEEL_SUP_ONE_FOR_ALL,       /* stop all (reverse order), restart all (in order) */
  KEEL_SUP_REST_FOR_ONE,      /* stop the children after it (reverse), restart it and them */
  KEEL_SUP_SIMPLE_ONE_FOR_ONE /* one template, children added with keel_sup_start_child_args */
} keel_sup_strategy;

typedef enum keel_sup_restart {
  KEEL_SUP_PERMANENT = 0, /* always restarted */
  KEEL_SUP_TRANSIENT,     /* restarted only after an abnormal exit (not normal or shutdown) */
  KEEL_SUP_TEMPORARY      /* never restarted */
} keel_sup_restart;

typedef enum keel_sup_child_type { KEEL_SUP_WORKER = 0, KEEL_SUP_SUPERVISOR } keel_sup_child_type;

typedef enum keel_sup_auto_shutdown {
  KEEL_SUP_AUTO_SHUTDOWN_NEVER = 0,
  KEEL_SUP_ANY_SIGNIFICANT, /* the supervisor stops when any significant child exits */
  KEEL_SUP_ALL_SIGNIFICANT  /* ... when all significant children have exited */
} keel_sup_auto_shutdown;

/* Shutdown values for keel_sup_child_spec.shutdown (otherwise a timeout in ms after
 * which a child that ignores its shutdown signal is killed). */
#define KEEL_SUP_SHUTDOWN_DEFAULT     0 /* 5000 ms for workers, infinity for supervisors */
#define KEEL_SUP_SHUTDOWN_BRUTAL_KILL ((int64_t)-2) /* killed at once, untrappably */
#define KEEL_SUP_SHUTDOWN_INFINITY    KEEL_INFINITY /* wait as long as it takes (for supervisors) */

/* Starts one child. It must start a process LINKED to the calling process
 * (the supervisor): keel_gs_start with opts.link, keel_sup_start with link,
 * or keel_spawn with link. Store its pid in *pid and return 0; return
 * KEEL_SUP_IGNORE to start nothing (the child is kept as not running); any
 * negative code means the start failed. `arg` is the spec's arg; `args` /
 * `args_len` are the arguments given to keel_sup_start_child_args
 * (simple_one_for_one; NULL/0 otherwise), owned by the supervisor and kept
 * across restarts. */
typedef int (*keel_sup_start_fn)(void *arg, const void *args, size_t args_len, keel_pid_t *pid);
#define KEEL_SUP_IGNORE 1

/* A child: what to start (exactly one of gen_server, gen_statem, supervisor
 * and start),
 * and how to treat it. The common cases are one line:
 *
 *   {.id = "kv", .gen_server = &kv_server, .arg = &cfg, .name = "kv"}
 *   {.id = "workers", .supervisor = &workers_spec}
 *   {.id = "lock", .gen_statem = &code_lock, .arg = &code}
 *
 * A gen_server child is linked to the supervisor and traps exits (so its
 * terminate runs when the supervisor shuts it down); its init gets the
 * simple_one_for_one arguments when there are any, else arg; a gen_statem
 * child is started the same way (keel_sm_start). A supervisor
 * child is the keel_sup_spec given, started linked (its type is
 * KEEL_SUP_SUPERVISOR whatever .type says). start is for anything else. */
typedef struct keel_sup_child_spec {
  const char *id; /* unique among the supervisor's children (copied) */
  const keel_gen_server *gen_server; /* borrowed for the child's life (normally static) */
  const keel_gen_statem *gen_statem; /* borrowed for the child's life (normally static) */
  const struct keel_sup_spec *supervisor; /* borrowed for the child's life */
  keel_sup_start_fn start;
  void *arg;        /* gen_server's or gen_statem's init argument, or start's; borrowed for
                       the child's life */
  const char *name; /* gen_server, gen_statem or supervisor: register under this name
                       (copied); NULL: none */
  keel_sup_restart restart;
  int64_t shutdown; /* see KEEL_SUP_SHUTDOWN_* */
  keel_sup_child_type type;
  bool significant; /* with auto_shutdown: its exit may stop the supervisor */
} keel_sup_child_spec;

typedef struct keel_sup_spec {
  keel_sup_strategy strategy;
  int intensity;     /* restarts allowed in period_ms; 0 means the default 3; <0: none */
  int64_t period_ms; /* 0: 5000 */
  keel_sup_auto_shutdown auto_shutdown;
  const keel_sup_child_spec *children; /* started in order; copied */
  size_t nchildren;                    /* simple_one_for_one: exactly one, the template */
} keel_sup_spec;

typedef struct keel_sup_opts {
  const char *name; /* register the supervisor under this name */
  bool link;        /* link to the caller (a supervisor starting a child supervisor) */
} keel_sup_opts;

/* Starts a supervisor and, in order, its children. Returns once all started;
 * if one fails, those already started are stopped in reverse order and the
 * error is returned (KEEL_EDOWN with *why describing the child and reason, or
 * the child's start code). Errors also: KEEL_EINVAL (bad spec: duplicate id,
 * simple_one_for_one without exactly one template, significant child with
 * restart permanent), KEEL_EEXIST (name), KEEL_ENOTPROC. */
int keel_sup_start(const keel_sup_spec *spec, const keel_sup_opts *opts, keel_pid_t *out,
                   keel_gs_exit *why);

/* Adds and starts a child (not simple_one_for_one). Errors: KEEL_EEXIST (id in
 * use), KEEL_EINVAL, the child's start error. *pid may be NULL. */
int keel_sup_start_child(keel_pid_t sup, const keel_sup_child_spec *spec, keel_pid_t *pid);

/* simple_one_for_one: starts a child from the template with a copy of args. */
int keel_sup_start_child_args(keel_pid_t sup, const void *args, size_t args_len, keel_pid_t *pid);

/* Stops a running child (its spec stays: restart_child starts it again).
 * simple_one_for_one: pass the child's pid as `pid` and id NULL; the child is
 * removed. Errors: KEEL_ENOENT. */
int keel_sup_terminate_child(keel_pid_t sup, const char *id, keel_pid_t pid);

/* Starts a child stopped with terminate_child. Errors: KEEL_ENOENT,
 * KEEL_EBUSY (it is running), the start error. */
int keel_sup_restart_child(keel_pid_t sup, const char *id, keel_pid_t *pid);

/* Removes a stopped child's spec. Errors: KEEL_ENOENT, KEEL_EBUSY (running). */
int keel_sup_delete_child(keel_pid_t sup, const char *id);

/* The current pid of child `id` (it changes across restarts), or 0 with
 * KEEL_ENOENT / not running. */
int keel_sup_which_pid(keel_pid_t sup, const char *id, keel_pid_t *pid);

typedef struct keel_sup_child_info {
  char id[64];
  keel_pid_t pid; /* 0 when not running */
  keel_sup_child_type type;
  keel_sup_restart restart;
  unsigned restarts; /* how often this child was restarted */
} keel_sup_child_info;

/* Copies up to max children (in start order) into out; *n gets how many there
 * are. */
int keel_sup_which_children(keel_pid_t sup, keel_sup_child_info *out, size_t max, size_t *n);

typedef struct keel_sup_child_counts {
  size_t specs, active, supervisors, workers;
} keel_sup_child_counts;
int keel_sup_count_children(keel_pid_t sup, keel_sup_child_counts *out);

/* ---- introspection (the observer) ---------------------------------------- */

/* Copies the pids of up to max live supervisors into out (oldest first) and
 * returns how many there are. Any thread. */
size_t keel_sup_list(keel_pid_t *out, size_t max);

typedef struct keel_sup_info {
  keel_pid_t pid;
  char name[64]; /* registered name or "" */
  keel_sup_strategy strategy;
  int intensity;
  int64_t period_ms;
  unsigned restarts;          /* restart rounds so far (one per exit it acted on) */
  size_t nchildren;
  keel_sup_child_info *children; /* nchildren entries, start order; free with keel_sup_info_free */
} keel_sup_info;

/* Asks supervisor `sup` for its settings and children, waiting at most
 * timeout_ms (a supervisor busy restarting answers late; the observer must
 * not hang on it). On success the caller owns out->children. Errors:
 * KEEL_ETIMEDOUT, KEEL_ENOPROC, KEEL_EDOWN, KEEL_ENOTPROC (not a process),
 * KEEL_ENOMEM. */
int keel_sup_info_get(keel_pid_t sup, int64_t timeout_ms, keel_sup_info *out);
void keel_sup_info_free(keel_sup_info *info);

/* "one_for_one", "one_for_all", "rest_for_one", "simple_one_for_one". */
const char *keel_sup_strategy_name(keel_sup_strategy s);

/* Events for the observer and the logs. Handlers run in the supervisor's
 * process, synchronously: keep them short and never wait in them. */
typedef enum keel_sup_event_kind {
  KEEL_SUP_CHILD_STARTED = 1,
  KEEL_SUP_CHILD_EXITED,    /* a child exited (reason in the event) */
  KEEL_SUP_CHILD_RESTARTED, /* after the restart: child = the new pid (0 if its start
                               failed and is retried), attempt = restarts within the
                               period, reason = why the child had exited */
  KEEL_SUP_CHILD_START_FAILED,
  KEEL_SUP_INTENSITY_EXCEEDED, /* the supervisor is giving up */
  KEEL_SUP_CHILD_SHUTDOWN_TIMEOUT /* a child ignored its shutdown for its shutdown time
                                     (attempt = that time in ms) and is being killed */
} keel_sup_event_kind;

typedef struct keel_sup_event {
  keel_sup_event_kind kind;
  keel_pid_t sup;
  const char *sup_name; /* registered name or "" */
  const char *child_id;
  keel_pid_t child;
  unsigned attempt;
  keel_reason reason;
} keel_sup_event;

/* Called in the supervisor's process, synchronously, for every event of
 * every supervisor: it must not block, wait or yield (send a message, count). */
typedef void (*keel_sup_event_fn)(const keel_sup_event *ev, void *ud);
/* Adds a subscriber (no limit on their number); returns a handle for
 * keel_sup_unsubscribe (> 0), KEEL_EINVAL, KEEL_ENOMEM, or KEEL_EBUSY from a
 * subscriber's own callback. Any thread. */
int keel_sup_subscribe(keel_sup_event_fn fn, void *ud);
/* Removes it. When this returns, no call to it runs or will run: ud may be
 * freed at once. 0, KEEL_ENOENT, or KEEL_EBUSY from a callback. Any thread. */
int keel_sup_unsubscribe(int handle);

#ifdef __cplusplus
}
#endif
#endif
