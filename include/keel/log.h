/* keel/log.h - structured logs: JSON lines, levels, bound context, redaction.
 *
 * One line per call, JSON by default:
 *
 *   {"time":"2026-11-22T01:02:03.456Z","level":"info","msg":"order placed",
 *    "service":"shop","requestId":"r-7","orderId":42}
 *
 * (on one line), or a coloured human-readable line when LOG_FORMAT=pretty.
 * Fields are typed and passed as a compound-literal list, so a call costs
 * no allocation:
 *
 *   keel_log_info(NULL, "order placed", KEEL_STR("user", name), KEEL_INT("orderId", 42),
 *                 KEEL_OBJ("card", KEEL_STR("last4", "4242"), KEEL_STR("token", tok)));
 *
 * The logger argument may be NULL (the root logger) or a child logger that
 * carries bound fields. Each keel process also has a logging context
 * (keel_log_context_set): fields that every line the process writes carries,
 * such as a request's correlation id. The values of sensitive keys (password,
 * token, secret, apiKey, authorization, cookie, plus any configured ones,
 * compared case-insensitively) are written as "[REDACTED]" wherever they
 * appear: call fields, child fields, context fields, nested objects.
 *
 * Lines are formatted by the calling thread into a per-thread buffer and
 * written by a writer thread (a plain pthread), so producers never do I/O;
 * the writer flushes every flush_ms, when a buffer is half full, on a fatal
 * line (synchronously), on keel_log_flush and on keel_log_shutdown. A line
 * that does not fit waits up to overflow_wait_ms for room, then is dropped and
 * counted (keel_log_stats). Lines come out in the order they were logged
 * whenever one happened before the other, on one thread or across threads
 * (a process that moved between schedulers; a line logged before a send and
 * the receiver's line after it): the writer merges the threads' buffers by a
 * node-wide sequence number.
 *
 * Thread safety: every function may be called from any thread (processes,
 * scheduler threads, plain threads) except keel_log_init and
 * keel_log_shutdown, which must not run concurrently with any other keel_log
 * call (call them from main, before the runtime starts and after it stops).
 * Before keel_log_init (and after shutdown) lines are written synchronously
 * to stderr in JSON with the default settings.
 */
#ifndef KEEL_LOG_H
#define KEEL_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "keel/error.h"
#include "keel/runtime.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum keel_log_level {
  /* 0 is no level: "the default" in keel_log_opts */
  KEEL_LOG_TRACE = 1,
  KEEL_LOG_DEBUG = 2,
  KEEL_LOG_INFO = 3,
  KEEL_LOG_WARN = 4,
  KEEL_LOG_ERROR = 5,
  KEEL_LOG_FATAL = 6,
  KEEL_LOG_OFF = 7, /* only as a minimum level: nothing is written */
} keel_log_level;

typedef enum keel_log_format {
  /* 0: the default ($LOG_FORMAT, else json) */
  KEEL_LOG_JSON = 1,   /* one JSON object per line */
  KEEL_LOG_PRETTY = 2, /* "2026-11-22 01:02:03.456 INFO  msg (service) key=value ..." */
} keel_log_format;

/* ---- fields --------------------------------------------------------------- */

typedef enum keel_log_type {
  KEEL_LOG_T_END = 0, /* terminates a field list (the macros add it) */
  KEEL_LOG_T_STR,
  KEEL_LOG_T_INT,
  KEEL_LOG_T_UINT,
  KEEL_LOG_T_DOUBLE,
  KEEL_LOG_T_BOOL,
  KEEL_LOG_T_NULL,
  KEEL_LOG_T_OBJ, /* a nested object: v.obj is an END-terminated field list */
} keel_log_type;

/* One key and a typed value. Everything is borrowed for the duration of the
 * call that receives it; keel copies what it keeps. A NULL string value is
 * written as null. Doubles that are not finite are written as null. */
typedef struct keel_log_field {
  const char *key;
  keel_log_type type;
  union {
    const char *s;
    int64_t i;
    uint64_t u;
    double d;
    bool b;
    const struct keel_log_field *obj;
  } v;
} keel_log_field;

#define KEEL_LOG__FIRST(a, ...) a
#define KEEL_LOG__REST(a, ...)  __VA_ARGS__
#define KEEL_LOG__END           ((keel_log_field){.key = NULL, .type = KEEL_LOG_T_END})
#define KEEL_LOG__LIST(...)     ((const keel_log_field[]){__VA_ARGS__})
/* An END-terminated field list from one or more fields: KEEL_FIELDS(f1, f2). */
#define KEEL_FIELDS(...) KEEL_LOG__LIST(__VA_ARGS__, KEEL_LOG__END)

#define KEEL_STR(k, x)    ((keel_log_field){.key = (k), .type = KEEL_LOG_T_STR, .v = {.s = (x)}})
#define KEEL_INT(k, x)    ((keel_log_field){.key = (k), .type = KEEL_LOG_T_INT, .v = {.i = (x)}})
#define KEEL_UINT(k, x)   ((keel_log_field){.key = (k), .type = KEEL_LOG_T_UINT, .v = {.u = (x)}})
#define KEEL_DOUBLE(k, x) ((keel_log_field){.key = (k), .type = KEEL_LOG_T_DOUBLE, .v = {.d = (x)}})
#define KEEL_BOOL(k, x)   ((keel_log_field){.key = (k), .type = KEEL_LOG_T_BOOL, .v = {.b = (x)}})
#define KEEL_NULL(k)      ((keel_log_field){.key = (k), .type = KEEL_LOG_T_NULL})
/* KEEL_OBJ("key", field...): a nested object (up to 8 levels deep; deeper
 * levels are written as null). */
#define KEEL_OBJ(...)                                                                              \
  ((keel_log_field){.key = KEEL_LOG__FIRST(__VA_ARGS__, 0),                                        \
                    .type = KEEL_LOG_T_OBJ,                                                        \
                    .v = {.obj = KEEL_LOG__LIST(KEEL_LOG__REST(__VA_ARGS__, KEEL_LOG__END))}})

/* ---- setup ---------------------------------------------------------------- */

typedef struct keel_log_opts {
  int level;                 /* minimum level (keel_log_level); 0: $LOG_LEVEL, else info */
  int format;                /* keel_log_format; 0: $LOG_FORMAT ("json" or "pretty"), else json */
  const char *service;       /* "service" field (copied); NULL: $SERVICE_NAME, else "keel" */
  const char *file;          /* append to this file (copied); NULL: $LOG_FILE, else stdout */
  int fd;                    /* 0: as `file`; > 0: write to this fd (borrowed) */
  int color;                 /* pretty only: 0: when the output is a terminal; 1: always;
                                -1: never */
  int64_t flush_ms;          /* writer interval; 0: 100 ms */
  size_t buffer_size;        /* per-thread buffer in bytes; 0: 1 MiB. Longer lines are dropped */
  int64_t overflow_wait_ms;  /* wait for room before dropping a line; 0: 10 ms;
                                KEEL_NOWAIT: drop at once; KEEL_INFINITY: wait */
  const char *const *redact; /* extra sensitive keys, NULL-terminated (copied); may be NULL */
  bool no_sighup_reopen;     /* do not reopen `file` on SIGHUP (file sink only) */
} keel_log_opts;

/* Fills *o with the defaults described above: all zero. */
void keel_log_opts_init(keel_log_opts *o);

/* Starts logging: reads the environment where the options say so, opens the
 * sink, starts the writer thread and, for a file sink, installs a SIGHUP
 * handler that makes the writer reopen the file (for rotation). Registers an
 * atexit flush once. o may be NULL. Errors: KEEL_ESTATE (already started),
 * KEEL_EINVAL (a bad LOG_LEVEL or LOG_FORMAT: named on stderr, or a bad
 * option), KEEL_EIO (the file cannot be opened), KEEL_ENOMEM. Not
 * concurrently with other keel_log calls. */
int keel_log_init(const keel_log_opts *o);

/* Writes out every buffered line, stops the writer thread, closes the file
 * (not a borrowed fd), restores SIGHUP. Returns 0 or KEEL_ESTATE (not
 * started). Not concurrently with other keel_log calls. Lines logged
 * afterwards go synchronously to stderr. */
int keel_log_shutdown(void);

/* Blocks until every line logged before the call (by this thread, or by
 * others that synchronised with it) has been written to the sink. Any
 * thread; it blocks the calling thread, so a process calling it holds its
 * scheduler until the write is done. 0, or KEEL_ESTATE when not started. */
int keel_log_flush(void);

/* Asks the writer to reopen the log file now (what SIGHUP does). Any thread.
 * 0, or KEEL_ESTATE when not started. */
int keel_log_reopen(void);

/* The minimum level; set it at any time from any thread (atomic; lines
 * already being written are not affected). KEEL_EINVAL for a bad level. */
int keel_log_set_level(keel_log_level level);
keel_log_level keel_log_get_level(void);
/* Whether a line at `level` would be written. Cheap (one atomic load). */
bool keel_log_enabled(keel_log_level level);
/* The level and format names, NULL-terminated, in enum order, for a
 * KEEL_CONFIG_ENUM field (keel/config.h): an ENUM field stores the index i,
 * which is the level KEEL_LOG_TRACE + i, or the format KEEL_LOG_JSON + i:
 *
 *   {.env = "LOG_LEVEL", .type = KEEL_CONFIG_ENUM, .values = keel_log_level_names, ...}
 *   opts.level = KEEL_LOG_TRACE + cfg.log_level;
 */
extern const char *const keel_log_level_names[];  /* "trace" ... "fatal", "off" */
extern const char *const keel_log_format_names[]; /* "json", "pretty" */

/* "trace" ... "fatal", "off"; NULL for a bad value. Static strings. */
const char *keel_log_level_name(keel_log_level level);
/* Parses "trace".."fatal", "off" (case-insensitive) into *out. KEEL_EINVAL. */
int keel_log_level_parse(const char *text, keel_log_level *out);

/* ---- the recent lines (what the admin port's log tail shows) ------------- */

/* The logger keeps the last KEEL_LOG_RECENT_MAX lines it wrote (each cut at
 * KEEL_LOG_RECENT_LINE_MAX bytes), copied by its writer thread, so logging
 * pays nothing for it. A line is there once the writer took it (within
 * flush_ms, or at keel_log_flush). */
#define KEEL_LOG_RECENT_MAX      1000
#define KEEL_LOG_RECENT_LINE_MAX 8192

typedef struct keel_log_recent_line {
  uint64_t seq;         /* its number in the node's order (strictly increasing) */
  keel_log_level level; /* the level it was logged at */
  bool truncated;       /* cut at KEEL_LOG_RECENT_LINE_MAX */
  size_t len;
  char *text; /* the line as written, without its newline (NUL-terminated) */
} keel_log_recent_line;

/* Copies the kept lines numbered `since` or later at min_level or above, the
 * newest max of them (0 or more than KEEL_LOG_RECENT_MAX: all), oldest
 * first, into a malloc'd array *out of *n lines; free it with
 * keel_log_recent_free. To follow the log, pass the last line's seq + 1 as
 * the next since (lines that scrolled out of the ring in between are
 * missed: compare seq). Errors: KEEL_EINVAL (NULL out or n, bad level),
 * KEEL_ENOMEM. Any thread. */
int keel_log_recent(uint64_t since, keel_log_level min_level, size_t max,
                    keel_log_recent_line **out, size_t *n);
void keel_log_recent_free(keel_log_recent_line *v, size_t n);
/* The number the next kept line will have at least (the newest kept + 1; 0
 * when none): a since that skips what is there now. Any thread. */
uint64_t keel_log_recent_last(void);

typedef struct keel_log_stats {
  uint64_t lines[KEEL_LOG_FATAL + 1]; /* lines accepted into a buffer, by level
                                         (lines[KEEL_LOG_INFO]; lines[0] is 0) */
  uint64_t dropped;       /* lines dropped: no room after overflow_wait_ms, or too long */
  uint64_t bytes_written; /* bytes written to the sink */
  uint64_t write_errors;  /* failed writes (the chunk is lost) */
  uint64_t reopens;       /* successful reopens of the file */
} keel_log_stats;
/* Sums the counters since keel_log_init. Any thread. */
void keel_log_stats_get(keel_log_stats *out);

/* The newest error or fatal line logged (at its level, so also before
 * keel_log_init): its message into msg (msg_cap bytes, truncated, "" when
 * none) and its request id (the "requestId" field of its context or of the
 * line itself, "" when none) into request_id (may be NULL). Returns how many
 * error and fatal lines have been logged since the process started (0:
 * none). For alerts that say what went wrong (keel/alerts.h). Any thread;
 * a line costs one uncontended mutex at these levels only. */
uint64_t keel_log_last_error(char *msg, size_t msg_cap, char *request_id, size_t rid_cap);

/* ---- writing lines -------------------------------------------------------- */

/* A logger: bound fields, already encoded (and redacted). Opaque. */
typedef struct keel_logger keel_logger;

/* A child of `parent` (NULL: the root) carrying the parent's fields and
 * `fields` (an END-terminated list, borrowed for the call; values are
 * copied). The caller owns the result and frees it with keel_log_free after
 * its last use (children do not refer to their parent). NULL on ENOMEM.
 * Any thread. Use the keel_log_child macro. */
keel_logger *keel_log_child_list(const keel_logger *parent, const keel_log_field *fields);
#define keel_log_child(parent, ...) keel_log_child_list((parent), KEEL_FIELDS(__VA_ARGS__))
/* Frees a child logger (NULL is fine). */
void keel_log_free(keel_logger *lg);

/* Writes one line at `level` with message `msg` (borrowed; NULL is "") and
 * an END-terminated field list (borrowed; may be NULL), through logger `lg`
 * (NULL: the root), adding the calling process's context. Lines below the
 * minimum level are skipped. A fatal line is flushed before the call
 * returns. Never does I/O otherwise. Any thread. */
void keel_log_write(const keel_logger *lg, keel_log_level level, const char *msg,
                    const keel_log_field *fields);

/* keel_log_info(lg, "msg", KEEL_STR("k", v), ...): field values are not
 * evaluated when the level is disabled. */
#define keel_log_at(lg, level, ...)                                                                \
  do {                                                                                             \
    if (keel_log_enabled(level))                                                                   \
      keel_log_write((lg), (level), KEEL_LOG__FIRST(__VA_ARGS__, 0),                               \
                     KEEL_LOG__LIST(KEEL_LOG__REST(__VA_ARGS__, KEEL_LOG__END)));                  \
  } while (0)
#define keel_log_trace(lg, ...) keel_log_at(lg, KEEL_LOG_TRACE, __VA_ARGS__)
#define keel_log_debug(lg, ...) keel_log_at(lg, KEEL_LOG_DEBUG, __VA_ARGS__)
#define keel_log_info(lg, ...)  keel_log_at(lg, KEEL_LOG_INFO, __VA_ARGS__)
#define keel_log_warn(lg, ...)  keel_log_at(lg, KEEL_LOG_WARN, __VA_ARGS__)
#define keel_log_error(lg, ...) keel_log_at(lg, KEEL_LOG_ERROR, __VA_ARGS__)
#define keel_log_fatal(lg, ...) keel_log_at(lg, KEEL_LOG_FATAL, __VA_ARGS__)

/* keel's own events: a line on the root logger with "msg" and "event" both
 * set to a stable event name (app_started, process_crashed, ...), e.g.
 * keel_log_event(KEEL_LOG_INFO, "app_started", KEEL_STR("app", name)).
 * Any thread. */
void keel_log_event_list(keel_log_level level, const char *event, const keel_log_field *fields);
#define keel_log_event(level, ...)                                                                 \
  do {                                                                                             \
    if (keel_log_enabled(level))                                                                   \
      keel_log_event_list((level), KEEL_LOG__FIRST(__VA_ARGS__, 0),                                \
                          KEEL_LOG__LIST(KEEL_LOG__REST(__VA_ARGS__, KEEL_LOG__END)));             \
  } while (0)

/* A report handler for keel_rt_set_report_handler(keel_log_report_handler,
 * NULL): a crash becomes an error event "process_crashed" {pid, name,
 * reason, scheduler}; a stuck process a warn event "process_stuck" {pid,
 * name, scheduler, held_ms}. Never blocks: the lines are buffered like any other. */
void keel_log_report_handler(const keel_report *r, void *ud);

/* keel's own events in the log (log_events.c): on = true subscribes to
 * application lifecycle events (app_starting, app_started, app_stopping,
 * app_stopped, app_start_failed), supervisor events (supervisor_restart,
 * child_start_failed, intensity_exceeded) and runtime reports (installs
 * keel_log_report_handler); false undoes it. Returns 0 or a negative code.
 * Call it from main after keel_log_init. */
int keel_log_keel_events(bool on);

/* Writes the one "config_loaded" event line: app_env and a "config" object
 * with every field's value as keel_config_each renders it (secrets "****").
 * Returns 0 or KEEL_ENOMEM. Any thread. */
struct keel_config_field;
int keel_log_config(const struct keel_config_field *table, size_t n, const void *cfg,
                    const char *app_env);

/* ---- the process's logging context --------------------------------------- */

/* The context lives in the process-local slot KEEL_LOCAL_LOG and is freed
 * when the process exits (keel_on_exit). Every line the process writes
 * carries its fields after the logger's own. All of these need a calling
 * process: outside one they return KEEL_ENOTPROC (get returns NULL). */

/* Replaces the current context's fields with `fields` (END-terminated,
 * borrowed; values copied; the macro takes one or more fields). An empty
 * list clears it. KEEL_ENOMEM,
 * KEEL_ENOTPROC. Use the keel_log_context_set macro. */
int keel_log_context_set_list(const keel_log_field *fields);
#define keel_log_context_set(...) keel_log_context_set_list(KEEL_FIELDS(__VA_ARGS__))
/* Adds fields to the current context (keeps the existing ones). */
int keel_log_context_add_list(const keel_log_field *fields);
#define keel_log_context_add(...) keel_log_context_add_list(KEEL_FIELDS(__VA_ARGS__))
/* Removes the current context's fields. 0 or KEEL_ENOTPROC. */
int keel_log_context_clear(void);
/* The current context as a JSON object text ("{}" when empty), newly
 * allocated: the caller frees it with free(). NULL outside a process or on
 * ENOMEM. */
char *keel_log_context_get(void);

/* Propagation (for gen_server calls and the like). export copies the current
 * context into a new blob of *len bytes that the caller owns (free() it;
 * *blob is NULL and *len 0 when the context is empty); it is plain bytes, fit
 * to travel inside a message. push installs a copy of such a blob (borrowed)
 * as the current context, keeping the previous one underneath; pop frees the
 * current context and brings the previous one back. Pushed contexts still
 * there when the process exits are freed with it. Only pass blobs made by
 * export. Errors: KEEL_ENOTPROC, KEEL_ENOMEM, KEEL_EINVAL (blob not from
 * export), KEEL_ESTATE (pop without push). */
int keel_log_context_export(char **blob, size_t *len);
int keel_log_context_push(const char *blob, size_t len);
int keel_log_context_pop(void);

/* Makes (on = true) every gen_server call and cast carry the caller's
 * logging context to the server, which handles it with that context (see
 * keel_gs_set_context_hooks). keel_log_init turns it on; off removes it. */
void keel_log_follow_calls(bool on);

#ifdef __cplusplus
}
#endif
#endif
