/* keel/gen_server.h - the generic server behaviour.
 *
 * A gen_server is a process that owns some state and serves requests one at a
 * time: calls (request and reply, with a timeout), casts (fire and forget)
 * and plain messages (timers, DOWN, EXIT when trapping, anything else). The
 * user writes callbacks; keel runs the loop, the protocol and the failure
 * handling, with Erlang/OTP's semantics:
 *
 *   - start returns only after init has run: an init that fails or times out
 *     returns an error and leaves nothing behind (no process, no name);
 *   - a call gets its reply, or a distinct error: KEEL_ETIMEDOUT (a reply
 *     that comes later is dropped unseen), KEEL_ENOPROC (no such server), or
 *     KEEL_EDOWN (the server died during the call; *reason says why);
 *   - a callback that returns an error, or asks to stop, ends the server:
 *     terminate runs with the reason and the state, links and monitors are
 *     told, waiting callers get KEEL_EDOWN. A crash is never swallowed.
 *
 * MESSAGES IN CALLBACKS. Callbacks get the message as keel_msg_t **msg: the
 * server owns it and frees it after the callback returns, unless the callback
 * takes it by setting *msg = NULL (to forward it, for instance).
 *
 *   static int counter_call(void *st, keel_gs_from from, keel_msg_t **req,
 *                           keel_msg_t **reply) {
 *     long *n = st;
 *     *n += 1;
 *     *reply = keel_msg_copy(0, n, sizeof *n);
 *     return KEEL_GS_REPLY;
 *   }
 */
#ifndef KEEL_GEN_SERVER_H
#define KEEL_GEN_SERVER_H

#include <stdarg.h>
#include <stdbool.h>

#include "keel/message.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KEEL_GS_DEFAULT_TIMEOUT 5000

/* Who made a call: enough to reply later, from any process. Plain data. */
typedef struct keel_gs_from {
  keel_pid_t pid;
  keel_ref_t ref;
} keel_gs_from;

/* What a callback asks for. Callbacks return one of these, or a negative
 * KEEL_E* code, which crashes the server with reason error and that code's
 * description (use keel_gs_stopping for a text of your own). */
enum {
  KEEL_GS_OK = 0,      /* cast/info: carry on */
  KEEL_GS_REPLY = 0,   /* call: *reply is sent to the caller (NULL sends an empty reply) */
  KEEL_GS_NOREPLY = 1, /* call: no reply now; reply later with keel_gs_reply(from, ...) */
  KEEL_GS_STOP = 2,    /* stop; the reason was set with keel_gs_stopping (default: normal) */
};

typedef struct keel_gen_server {
  /* Sets *state. Return 0, or a negative code / keel_gs_stopping(...) to refuse
   * to start (the start returns the code, or KEEL_EDOWN with the reason). */
  int (*init)(void *arg, void **state);
  /* A call. Set *reply (owned by keel once returned) and return
   * KEEL_GS_REPLY, or return KEEL_GS_NOREPLY and reply later. Returning
   * KEEL_GS_STOP with *reply set sends the reply and then stops. */
  int (*handle_call)(void *state, keel_gs_from from, keel_msg_t **request, keel_msg_t **reply);
  int (*handle_cast)(void *state, keel_msg_t **msg);
  /* Everything that is neither call nor cast. May be NULL (messages are
   * dropped). */
  int (*handle_info)(void *state, keel_msg_t **msg);
  /* Runs when the server stops for any reason other than kill; frees the
   * state. May be NULL. reason.text is valid during the call only. */
  void (*terminate)(keel_reason reason, void *state);
} keel_gen_server;

typedef struct keel_gs_opts {
  const char *name;     /* register the server under this name (keel/registry.h) */
  int64_t init_timeout; /* ms; 0: 5000; KEEL_INFINITY allowed */
  bool link;            /* link the server to the caller (start_link) */
  bool trap_exit;       /* the server traps exits (EXIT messages go to handle_info) */
  size_t stack_size;    /* 0: the runtime default */
  int scheduler;        /* 0: here; KEEL_ON_SCHEDULER(i): scheduler i (keel/process.h) */
  bool trace;           /* a span for each call and cast handled, a child of the caller's
                           (keel/trace.h; through the context hooks' span_begin/span_end) */
} keel_gs_opts;

void keel_gs_opts_init(keel_gs_opts *o);

/* Why a server went away, in storage the caller owns. */
typedef struct keel_gs_exit {
  keel_reason_kind kind;
  char text[256]; /* NUL-terminated, truncated if longer */
} keel_gs_exit;

/* Starts a server running beh with init(arg). Blocks the calling process
 * until init has returned. arg is borrowed until init returns. beh must stay
 * valid for the server's life (normally a static const). On success *out (may
 * be NULL) is the server's pid. Errors: KEEL_EEXIST (name taken), KEEL_ETIMEDOUT
 * (init did not return in time: the server was killed), the negative code
 * init returned, KEEL_EDOWN (init crashed, or stopped with keel_gs_stopping; *why,
 * if not NULL, gets the reason), KEEL_ENOTPROC. */
int keel_gs_start(const keel_gen_server *beh, void *arg, const keel_gs_opts *opts, keel_pid_t *out,
                  keel_gs_exit *why);

/* Calls the server with request (ownership moves, always) and waits up to
 * timeout_ms (KEEL_GS_DEFAULT_TIMEOUT if 0; KEEL_INFINITY allowed) for the
 * reply, stored in *reply (owned by the caller). Errors: KEEL_ETIMEDOUT,
 * KEEL_ENOPROC, KEEL_EDOWN (the server exited during the call; *why, if not
 * NULL, gets its exit reason), KEEL_ENOTPROC, KEEL_EINVAL. */
int keel_gs_call(keel_pid_t server, keel_msg_t *request, keel_msg_t **reply, int64_t timeout_ms,
                 keel_gs_exit *why);

/* keel_gs_call by registered name (KEEL_ENOPROC if no such name). */
int keel_gs_call_name(const char *name, keel_msg_t *request, keel_msg_t **reply, int64_t timeout_ms,
                      keel_gs_exit *why);

/* Sends msg as a cast (ownership moves). Never blocks. Returns 0, or
 * KEEL_EINVAL. A cast to a dead server is dropped, as any message. */
int keel_gs_cast(keel_pid_t server, keel_msg_t *msg);
int keel_gs_cast_name(const char *name, keel_msg_t *msg); /* KEEL_ENOPROC if no such name */

/* Replies to a call that the server answered with KEEL_GS_NOREPLY, from any
 * process (or thread). Ownership of reply moves. Replying twice, or after the
 * caller gave up, is harmless: the extra reply is dropped. */
int keel_gs_reply(keel_gs_from from, keel_msg_t *reply);

/* Records why a callback wants the server to stop, and returns KEEL_GS_STOP
 * for the callback to return. The text is formatted now. Only in callbacks. */
int keel_gs_stopping(keel_reason_kind kind, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Stops a server: it handles the messages already queued, then runs terminate
 * with the reason and exits. Waits up to timeout_ms (0: KEEL_GS_DEFAULT_TIMEOUT)
 * for it to be gone; if it
 * is still alive then, it is killed and KEEL_ETIMEDOUT is returned. Stopping
 * a server that is already gone returns 0 (stop is idempotent). Errors:
 * KEEL_ETIMEDOUT, KEEL_ENOTPROC, KEEL_EINVAL (stopping oneself). */
int keel_gs_stop(keel_pid_t server, keel_reason_kind kind, const char *text, int64_t timeout_ms);

/* Context propagation. A layer above the behaviours (the logger, for its
 * correlation ids) registers hooks, and from then on every call and cast
 * carries a blob captured in the caller (capture: a malloc'd blob, or NULL
 * for none), attached to the request (keel_msg_attach), and the server runs
 * the callback with it installed (install returns the previous state, which
 * is handed to restore afterwards; install must copy what it keeps, since
 * the blob goes with the message). NULL removes the hooks. Hooks run in the
 * caller's and the server's processes; they must not wait. Any thread; set
 * them once at start-up. The struct must outlive its registration. */
typedef struct keel_gs_context_hooks {
  void *(*capture)(void);
  void *(*install)(const void *blob);
  void (*restore)(void *previous);
} keel_gs_context_hooks;
void keel_gs_set_context_hooks(const keel_gs_context_hooks *hooks);

/* Span hooks (keel/trace.h installs them): begin and end wrap each call or
 * cast that a server started with opts.trace handles, inside the context
 * hooks' install and restore. begin gets the server's name and whether it is
 * a call and returns what end needs (NULL: nothing); end gets the callback's
 * return code. Same rules as the context hooks; NULL removes them. */
typedef struct keel_gs_span_hooks {
  void *(*begin)(const char *server, bool call);
  void (*end)(void *span, int rc);
} keel_gs_span_hooks;
void keel_gs_set_span_hooks(const keel_gs_span_hooks *hooks);

#ifdef __cplusplus
}
#endif
#endif
