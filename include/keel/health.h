/* keel/health.h - health checks and the Kubernetes probes.
 *
 * A node keeps one registry of health checks: a name, a function, whether the
 * check is required, and a timeout. Every probe that needs the checks spawns
 * one keel process per check, all at once, and waits for each until its own
 * deadline: a check that overruns is reported "critical" with the message
 * "timeout" and its process is killed; a check whose process crashes is
 * reported "critical" with the crash reason. A slow check never makes a
 * probe late.
 *
 * The probes produce an HTTP status and a JSON body (the HTTP server serves
 * them at /health/live, /health/ready, /health/startup and /health):
 *
 *   live     200 "alive" while every scheduler answers (a process pinned to
 *            each one replies, or the scheduler is seen switching);
 *            503 "not_alive" when one is held by the same process throughout.
 *   ready    200 "ready" when started, not draining and every required check
 *            passes (ok or warning); else 503 "not_ready" with a reason.
 *            Draining or not started answers 503 at once, running nothing.
 *   startup  200 "started" / 503 "starting" (keel_health_set_started).
 *   detailed every check with status, duration and message, the overall
 *            status "healthy", "degraded" (a check warns, or an optional
 *            check is critical) or "unhealthy" (a required check is
 *            critical), process count, restarts, memory, uptime, service
 *            name and version. 200 for healthy and degraded, 503 unhealthy.
 *
 *   static keel_health_status db_ping(void *ud, keel_health_result *res) {
 *     if (ping(ud) != 0) { keel_health_result_message(res, "no answer"); return
 * KEEL_HEALTH_CRITICAL; } return KEEL_HEALTH_OK;
 *   }
 *   keel_health_register("database", db_ping, db, true, 2000);
 *   keel_health_register_builtin(NULL);        // processes, restarts, memory, schedulers
 *   keel_health_set_started(true);
 *   ...in a process: keel_health_response r; keel_health_detailed(&r); ...
 * keel_health_response_free(&r);
 *
 * Threads: registration, state setters and keel_health_startup may be called
 * from any thread; live, ready and detailed wait for processes and must be
 * called from a keel process. See docs/health.md for the JSON shapes.
 */
#ifndef KEEL_HEALTH_H
#define KEEL_HEALTH_H

#include <stdbool.h>
#include <stdint.h>

#include "keel/error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A check's verdict, with the reference's words: "ok", "warning", "critical".
 * critical is a failure; warning is a pass that degrades the node. */
typedef enum keel_health_status {
  KEEL_HEALTH_OK = 0,
  KEEL_HEALTH_WARNING = 1,
  KEEL_HEALTH_CRITICAL = 2,
} keel_health_status;

/* "ok", "warning", "critical" (static; "critical" for anything unknown). */
const char *keel_health_status_name(keel_health_status s);

/* What a check may say besides its status. Both start NULL; a check may set
 * them to malloc'd text, which keel frees after the probe copied it.
 *   message: a short human-readable line;
 *   details: a JSON object text whose members are added to the check's entry
 *            in the detailed body (e.g. {"count": 12}); the members "status",
 *            "required", "duration_ms" and "message" are keel's and are not
 *            overwritten. Invalid JSON is ignored. */
typedef struct keel_health_result {
  char *message;
  char *details;
} keel_health_result;

/* Sets res->message to a printf-formatted text (replacing and freeing an
 * earlier one). Returns 0, KEEL_EINVAL or KEEL_ENOMEM. */
int keel_health_result_message(keel_health_result *res, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* A check. Runs in a keel process of its own (spawned for each probe), so it
 * may wait: gen_server calls, I/O, keel_sleep. It must not keep res. */
typedef keel_health_status (*keel_health_fn)(void *ud, keel_health_result *res);

/* A check's registration. */
typedef struct keel_health_check {
  const char *name; /* unique, 1..63 bytes (copied) */
  keel_health_fn fn;
  void *ud;                  /* passed to fn */
  void (*ud_free)(void *ud); /* may be NULL; called once nothing uses ud any
                                more: after unregister (or reset) AND after
                                the last process running this check ended,
                                on whatever thread that happens */
  bool required;             /* critical makes the node unhealthy / not ready */
  int64_t timeout_ms;        /* 0: 1000 */
} keel_health_check;

/* Registers a check. Errors: KEEL_EINVAL (no fn, bad name, negative
 * timeout), KEEL_EEXIST (name taken), KEEL_ENOMEM. On error ud_free is not
 * called. Any thread. */
int keel_health_register_check(const keel_health_check *check);

/* Shorthand for keel_health_register_check without ud_free: ud is borrowed and
 * must stay valid until unregistered and no probe still runs the check. */
int keel_health_register(const char *name, keel_health_fn fn, void *ud, bool required,
                         int64_t timeout_ms);

/* Removes a check. Probes that already started it still report it; its
 * ud_free runs once they are done with it. Errors: KEEL_ENOENT. Any thread. */
int keel_health_unregister(const char *name);

/* ---- built-in checks ------------------------------------------------------ */

/* Thresholds of the built-in checks; warning / critical pairs as in the
 * reference (heap below 80 % ok, below 95 % warning; restarts below 10 ok,
 * below 50 warning). A threshold of 0 takes the default shown. */
typedef struct keel_health_builtin_opts {
  /* all four checks are registered, each required, unless told here */
  bool no_processes, no_restarts, no_memory, no_schedulers; /* leave that check out */
  bool processes_optional, restarts_optional, memory_optional, schedulers_optional;
  int64_t timeout_ms;         /* per check; 0: 1000 */
  uint64_t min_processes;     /* "processes": critical below this many alive; 0: 1 */
  int64_t restart_window_ms;  /* "restarts": the window counted; 0: 60000 */
  unsigned restarts_warning;  /* warning at this many restarts in the window; 0: 10 */
  unsigned restarts_critical; /* critical at this many; 0: 50 */
  double memory_warning;      /* "memory": RSS / limit at which it warns; 0: 0.80 */
  double memory_critical;     /* ... and is critical; 0: 0.95 */
  int64_t stuck_ms;           /* "schedulers": critical when one process holds a
                                 scheduler this long; 0: 100 */
} keel_health_builtin_opts;

/* Every check on, every check required, every threshold at its default. */
void keel_health_builtin_opts_init(keel_health_builtin_opts *o);

/* Registers the selected built-in checks under the names "processes",
 * "restarts", "memory" and "schedulers" (opts NULL: all, with defaults; opts
 * are copied). Errors as keel_health_register_check (KEEL_EEXIST if one is
 * registered already; those registered before the error stay). */
int keel_health_register_builtin(const keel_health_builtin_opts *opts);

/* ---- node state ------------------------------------------------------------ */

/* Startup finished (startup and ready answer accordingly). Any thread. */
void keel_health_set_started(bool started);
/* The node is draining (graceful shutdown): ready answers 503 at once. */
void keel_health_set_draining(bool draining);
/* Name and version shown in the detailed body (copied; NULL clears). */
void keel_health_set_service(const char *name, const char *version);
/* How long live waits for the schedulers (0: 500 ms). Any thread. */
void keel_health_set_live_timeout(int64_t ms);

/* Supervisor restarts counted since the health module first ran (it
 * subscribes to supervisor events on first use of any keel_health_ call),
 * in total and within the last window_ms. Any thread. */
void keel_health_restarts(int64_t window_ms, uint64_t *total, uint64_t *recent);

/* ---- sections: other modules' parts of the detailed body ---------------- */

/* Adds (or replaces) a top-level member `key` of the detailed body: fn(ud)
 * returns malloc'd JSON text (keel frees it), called in the probing process
 * at each detailed probe; it may wait, but the probe waits with it. NULL text
 * or invalid JSON gives null. fn NULL removes the section. Replacing or
 * removing returns only once no probe is still inside the old fn, so ud may
 * be freed afterwards (do not call it from inside fn). Errors: KEEL_EINVAL
 * (key empty, longer than 63 bytes, or one of the body's own members),
 * KEEL_ENOENT (removing an absent key), KEEL_ENOMEM. Any thread. */
int keel_health_set_section(const char *key, char *(*fn)(void *ud), void *ud);

/* ---- probes --------------------------------------------------------------- */

typedef struct keel_health_response {
  int http_status; /* 200 or 503 */
  char *body;      /* malloc'd JSON text, NUL-terminated; keel_health_response_free */
} keel_health_response;

/* Frees r->body and zeroes *r. NULL is ignored. */
void keel_health_response_free(keel_health_response *r);

/* Liveness: pings every scheduler (see the top of this file). Waits up to
 * the live timeout. Errors: KEEL_ENOTPROC (not in a process), KEEL_ENOMEM;
 * on error *out is zeroed. */
int keel_health_live(keel_health_response *out);

/* Readiness: started, not draining, every required check passes. Runs the
 * required checks (not the optional ones); returns within the largest
 * required timeout. Errors as keel_health_live. */
int keel_health_ready(keel_health_response *out);

/* Startup: the started flag. Never waits; any thread. Errors: KEEL_ENOMEM. */
int keel_health_startup(keel_health_response *out);

/* Everything: runs every check concurrently, then the sections. Returns
 * within the largest check timeout plus the time the sections take. Errors
 * as keel_health_live. */
int keel_health_detailed(keel_health_response *out);

/* Unregisters every check, removes every section and clears the node state
 * (started, draining, service, live timeout, restart counts). For tests and
 * for a program that starts the runtime again. Any thread. */
void keel_health_reset(void);

#ifdef __cplusplus
}
#endif
#endif
