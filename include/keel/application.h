/* keel/application.h - applications: a supervision tree with a lifecycle.
 *
 * An application is what a program runs: a root supervisor started from a
 * configuration, stopped in order, observable through lifecycle events. Each
 * application has an application master, a keel process (trapping exits)
 * that runs the behaviour's callbacks and is linked to the root supervisor,
 * as in Erlang/OTP:
 *
 *   - start(app, config) runs in the master and starts the root supervisor
 *     LINKED to the caller (keel_sup_opts.link = true), so that the master
 *     is the supervisor's parent;
 *   - an orderly stop (keel_app_stop, SIGTERM/SIGINT with handle_signals)
 *     runs prep_stop (drain), then stops the root supervisor with reason
 *     shutdown - it stops its children in reverse start order, each within
 *     its own shutdown time - then runs stop;
 *   - if the root supervisor exits by itself (its restart intensity was
 *     exceeded, or it crashed), the application stops with an error:
 *     prep_stop and stop still run, as in OTP's application master, and the
 *     exit code is non-zero.
 *
 * The stop timeout bounds prep_stop and the tree's shutdown together. When it
 * expires, what is left is killed: the prep_stop helper, the root supervisor
 * and every process of the tree as it was when the shutdown began (found by
 * walking keel_sup_which_children); the stop is then reported as forced.
 * stop(state) always runs afterwards, so that it can free the state; it is
 * not bounded by the stop timeout and must not wait for long.
 *
 * Signals (handle_signals): a dedicated process watches SIGTERM and SIGINT
 * with one-shot libuv uv_signal_t handles on its scheduler's loop (pinned with
 * keel_io_begin). The first of either begins an orderly stop and puts both
 * signals back to their default action, so a second SIGTERM or SIGINT ends
 * the program at once, from the kernel, whatever the schedulers are doing
 * (the shell sees 128 + the signal number). The handlers are removed when the
 * application stops.
 *
 * Lifecycle events are delivered to every subscriber (keel_app_subscribe) in
 * the order they happen for one application: starting, then started or
 * start_failed; later stopping, then stopped.
 */
#ifndef KEEL_APPLICATION_H
#define KEEL_APPLICATION_H

#include <stdbool.h>
#include <stdint.h>

#include "keel/gen_server.h"
#include "keel/supervisor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A running (or stopped) application. Allocated by keel_app_start, released
 * by keel_app_free; the master keeps its own reference while it runs, so the
 * handle stays valid for the master whatever the caller does. */
typedef struct keel_app keel_app_t;

typedef struct keel_application {
  /* Starts the root supervisor (linked to the calling process, the master)
   * and stores its pid in *root; may set *state (default: config), which is
   * passed to prep_stop and stop. `app` is borrowed for the application's
   * life: keep it to call keel_app_stop_async from inside the tree. Return 0,
   * or a negative KEEL_E* code for a failed start (then leave nothing
   * running: keel_sup_start already cleans up after itself). Required. */
  int (*start)(keel_app_t *app, void *config, keel_pid_t *root, void **state);
  /* Before the tree stops: stop taking work, drain. The tree still runs.
   * Runs in a helper process, so the stop timeout can bound it. May be NULL. */
  void (*prep_stop)(void *state, keel_pid_t root);
  /* After the tree has stopped (also after a forced stop or a crash of the
   * root): free the state. Runs in the master. May be NULL. */
  void (*stop)(void *state);
} keel_application;

#define KEEL_APP_DEFAULT_START_TIMEOUT 30000
#define KEEL_APP_DEFAULT_STOP_TIMEOUT  30000

typedef struct keel_app_opts {
  const char *name;      /* for events and reports (copied, up to 63 bytes); NULL: "app" */
  void *config;          /* passed to start; borrowed for the application's life */
  bool handle_signals;   /* SIGTERM/SIGINT stop the application (see above) */
  int64_t start_timeout; /* ms; 0: 30000; KEEL_INFINITY allowed */
  int64_t stop_timeout;  /* ms; 0: 30000; KEEL_INFINITY allowed */
} keel_app_opts;

/* Fills *o with the defaults (all zero). */
void keel_app_opts_init(keel_app_opts *o);

/* Exit codes (keel_app_exit_code, keel_app_main). */
enum {
  KEEL_APP_EXIT_OK = 0,           /* stopped in order (API call or signal) */
  KEEL_APP_EXIT_START_FAILED = 1, /* start failed, timed out, or the runtime did not start */
  KEEL_APP_EXIT_CRASHED = 2,      /* the root supervisor exited by itself */
  KEEL_APP_EXIT_FORCED = 3,       /* the stop timeout expired and the rest was killed */
};

/* Starts an application: spawns its master, which publishes `starting`,
 * installs the signal handlers if asked, runs beh->start and publishes
 * `started`. Returns once started; *out (owned by the caller: release it with
 * keel_app_free) is the handle. beh must outlive the application (normally a
 * static const). On failure *out is NULL, `start_failed` was published,
 * nothing of the application is left running and the code is returned: the
 * one start returned, KEEL_ETIMEDOUT (start did not return within the start
 * timeout: the master was killed, taking the linked tree with it), KEEL_EDOWN
 * (the master died during start; *why, if not NULL, says why), KEEL_EINVAL,
 * KEEL_ENOMEM, KEEL_ENOTPROC (call from a keel process). */
int keel_app_start(const keel_application *beh, const keel_app_opts *opts, keel_app_t **out,
                   keel_gs_exit *why);

/* Stops the application in order and waits until it has stopped (or returns
 * at once if it already has). Returns 0 after a clean stop, KEEL_ETIMEDOUT
 * if the stop was forced, KEEL_EDOWN if the application had stopped because
 * its root supervisor exited, KEEL_ENOTPROC, KEEL_EINVAL. Must not be called
 * from a process of the application's own tree (it would wait for its own
 * shutdown): use keel_app_stop_async there. */
int keel_app_stop(keel_app_t *app);

/* Asks the application to stop in order and returns at once. Idempotent.
 * Any thread. Returns 0 or KEEL_EINVAL. */
int keel_app_stop_async(keel_app_t *app);

/* Waits up to timeout_ms (0 or KEEL_INFINITY: as long as it takes) until the
 * application has stopped. Returns 0 or
 * KEEL_ETIMEDOUT, KEEL_ENOTPROC, KEEL_EINVAL. */
int keel_app_wait(keel_app_t *app, int64_t timeout_ms);

/* Whether the application has started and is not stopping. Any thread. */
bool keel_app_is_running(const keel_app_t *app);

/* The root supervisor's pid while the application runs (and while it stops),
 * else 0. Any thread. */
keel_pid_t keel_app_root(const keel_app_t *app);

/* The application master's pid. Any thread. */
keel_pid_t keel_app_master(const keel_app_t *app);

/* The application's name (owned by the handle). Any thread. */
const char *keel_app_name(const keel_app_t *app);

/* The exit code (KEEL_APP_EXIT_*) once stopped; -1 while not stopped. */
int keel_app_exit_code(const keel_app_t *app);

/* Releases the caller's handle. Does not stop the application: a running
 * application runs on, and its memory is freed when its master exits too.
 * NULL is ignored. Any thread. */
void keel_app_free(keel_app_t *app);

/* ---- lifecycle events --------------------------------------------------- */

typedef enum keel_app_event_kind {
  KEEL_APP_STARTING = 1,
  KEEL_APP_STARTED,
  KEEL_APP_STOPPING,
  KEEL_APP_STOPPED,
  KEEL_APP_START_FAILED
} keel_app_event_kind;

typedef enum keel_app_stop_reason {
  KEEL_APP_STOP_NORMAL = 0, /* keel_app_stop / keel_app_stop_async */
  KEEL_APP_STOP_SIGNAL,     /* SIGTERM or SIGINT (signum in the event) */
  KEEL_APP_STOP_ERROR       /* the root supervisor exited (error_text says why) */
} keel_app_stop_reason;

typedef struct keel_app_event {
  keel_app_event_kind kind;
  int64_t timestamp_ms;        /* CLOCK_REALTIME, milliseconds since the epoch */
  const char *name;            /* the application's name */
  keel_app_t *app;             /* borrowed for the callback's duration */
  keel_pid_t root;             /* STARTED, STOPPING: the root supervisor */
  keel_app_stop_reason reason; /* STOPPING, STOPPED */
  int signum;                  /* STOPPING/STOPPED with reason SIGNAL */
  int error;                   /* START_FAILED: the KEEL_E* code */
  const char *error_text;      /* START_FAILED, reason ERROR: why ("" otherwise) */
  bool forced;                 /* STOPPED: the stop timeout expired */
  int exit_code;               /* STOPPED, START_FAILED: KEEL_APP_EXIT_* */
} keel_app_event;

/* Called synchronously from the process where the event happens (normally
 * the master) with the event, borrowed for the call. Keep it short, never
 * wait in it, and do not subscribe or unsubscribe from it. */
typedef void (*keel_app_event_fn)(const keel_app_event *ev, void *ud);

/* Adds a subscriber to the events of every application. Returns a handle
 * (> 0) for keel_app_unsubscribe, or KEEL_EINVAL / KEEL_ENOMEM / KEEL_EBUSY
 * (called from a callback). Any thread. */
int keel_app_subscribe(keel_app_event_fn fn, void *ud);

/* Removes a subscriber; once it returns, fn is not called again. Errors:
 * KEEL_ENOENT, KEEL_EBUSY (called from a callback). Any thread. */
int keel_app_unsubscribe(int handle);

/* "starting", "started", ...; "normal", "signal", "error". Static strings. */
const char *keel_app_event_name(keel_app_event_kind kind);
const char *keel_app_stop_reason_name(keel_app_stop_reason reason);

/* ---- as a program's main --------------------------------------------------- */

/* Runs an application as the program: starts the runtime (rt may be NULL),
 * starts the application, waits until it stops (a signal when
 * opts->handle_signals is set, keel_app_stop_async, or its root supervisor
 * exiting), stops the runtime (processes still alive outside the tree are
 * destroyed) and returns the exit code, ready for main to return:
 * KEEL_APP_EXIT_OK after a clean stop, else KEEL_APP_EXIT_START_FAILED /
 * _CRASHED / _FORCED. Call from main, outside the runtime. */
int keel_app_main(const keel_application *beh, const keel_app_opts *opts, const keel_rt_opts *rt);

#ifdef __cplusplus
}
#endif
#endif
