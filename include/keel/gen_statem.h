/* keel/gen_statem.h - the generic state machine behaviour.
 *
 * A gen_statem is a gen_server whose behaviour is a state machine, with
 * Erlang/OTP's gen_statem semantics. It is started, called, cast to and
 * stopped exactly as a gen_server is: keel_sm_start takes keel_gs_opts
 * (name, link, trap_exit, init_timeout, scheduler, trace: a span for each
 * call and cast, named "<name> call" or, unnamed, "gen_statem call", with
 * the state callbacks' own spans as its children), and keel_gs_call,
 * keel_gs_cast, keel_gs_reply and keel_gs_stop work on it unchanged, with
 * their errors, their deferred replies and the callers' log context (a
 * postponed event is retried with its sender's). A supervisor starts one
 * from a child spec's .gen_statem.
 *
 * The machine has a state (an int) and data (a pointer init sets). Each
 * event goes to the state's handler, which may ask for transition actions
 * by calling keel_sm_* functions on the sm it was given, and returns
 * KEEL_SM_OK, keel_gs_stopping(...) to stop, or a negative KEEL_E* code,
 * which crashes the machine as it crashes a gen_server.
 *
 * CALLBACK MODES. One handler per state (.states, a table indexed by state,
 * OTP's state_functions), or one handler for every state (.handle_event,
 * OTP's handle_event_function). With .state_enter, the handler is also
 * called with a KEEL_SM_ENTER event each time the state changes (and once
 * for the initial state, after the start has returned): an enter call may
 * set timeouts and reply, but may not change the state, postpone or insert
 * events (the machine crashes if it tries, as in OTP).
 *
 * EVENTS, in the order they are handled:
 *   1. events inserted with keel_sm_next_event, in the order inserted;
 *   2. after a state change, the postponed events, oldest first;
 *   3. the rest of the events already queued;
 *   4. timeouts set to 0 ms (time-out zero), in the order set;
 *   5. the mailbox: calls, casts, infos and the timeouts that fired.
 *
 * TIMEOUTS. A state timeout is cancelled by a state change (not by a
 * same-state transition, not by other events); an event timeout by any
 * event; a generic timeout (by name) only by keel_sm_timeout_cancel, a new
 * keel_sm_timeout with its name, or the end of the machine. Setting a
 * timeout that is running restarts it. A timeout that fired but was
 * cancelled before it was handled is never seen. Times are delays in ms:
 * 0 means at once (step 4 above), KEEL_INFINITY cancels, other negatives
 * are KEEL_EINVAL.
 *
 * OWNERSHIP. An event's message (ev->msg) belongs to the machine, which
 * frees it after the handler returns, unless the handler takes it (sets
 * ev->msg = NULL) or postpones the event (it is kept, and handed back when
 * the event is retried: do not take a message you postpone). Messages
 * given to keel_sm_next_event and to the timeouts move to the machine,
 * always, even when the call fails. The data is the user's: free it in
 * terminate (which does not run after a kill: see keel_on_exit).
 *
 * Hibernation is not offered: keel processes have no heap to compact.
 *
 *   enum { LOCKED, OPEN };
 *   static int locked(keel_sm_t *sm, int st, keel_sm_event *ev, void *data) {
 *     if (ev->type == KEEL_SM_CAST && code_ok(data, ev->msg)) keel_sm_next_state(sm, OPEN);
 *     return KEEL_SM_OK;
 *   }
 *   static int open(keel_sm_t *sm, int st, keel_sm_event *ev, void *data) {
 *     if (ev->type == KEEL_SM_ENTER) keel_sm_state_timeout(sm, 10000, NULL);
 *     else if (ev->type == KEEL_SM_STATE_TIMEOUT) keel_sm_next_state(sm, LOCKED);
 *     else if (ev->type == KEEL_SM_CAST) keel_sm_postpone(sm); // a button: after relocking
 *     return KEEL_SM_OK;
 *   }
 *   static const keel_sm_state lock_states[] = {[LOCKED] = {"locked", locked},
 *                                               [OPEN] = {"open", open}};
 *   static const keel_gen_statem code_lock = {.init = lock_init, KEEL_SM_STATES(lock_states),
 *                                             .state_enter = true};
 */
#ifndef KEEL_GEN_STATEM_H
#define KEEL_GEN_STATEM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "keel/gen_server.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The running machine, as its callbacks see it: the handle for actions.
 * Valid only inside the machine's own callbacks (init and the handlers). */
typedef struct keel_sm keel_sm_t;

typedef enum keel_sm_event_type {
  KEEL_SM_ENTER = 1,     /* state enter call; ev->old_state is the state left (the same
                            state for the first enter and for keel_sm_repeat_state) */
  KEEL_SM_CALL,          /* keel_gs_call: answer with keel_gs_reply(ev->from, ...), now or
                            in any later state, from any process */
  KEEL_SM_CAST,          /* keel_gs_cast */
  KEEL_SM_INFO,          /* any other message: plain sends, timers, DOWN, EXIT when trapping */
  KEEL_SM_INTERNAL,      /* inserted by keel_sm_next_event */
  KEEL_SM_STATE_TIMEOUT, /* keel_sm_state_timeout expired; msg is its content */
  KEEL_SM_EVENT_TIMEOUT, /* keel_sm_event_timeout expired */
  KEEL_SM_TIMEOUT,       /* a generic timeout expired; ev->timeout is its name */
} keel_sm_event_type;

typedef struct keel_sm_event {
  keel_sm_event_type type;
  keel_msg_t *msg;     /* the request, cast, message, inserted event or timeout content;
                          may be NULL (ENTER, a timeout set without content) */
  keel_gs_from from;   /* KEEL_SM_CALL: who to reply to */
  int old_state;       /* KEEL_SM_ENTER */
  const char *timeout; /* KEEL_SM_TIMEOUT: the name; valid during the handler */
} keel_sm_event;

/* A handler: `state` is the current state. Returns KEEL_SM_OK (with the
 * actions it asked for), keel_gs_stopping(kind, fmt, ...) to stop (replies
 * sent with keel_gs_reply before that are delivered: OTP's stop_and_reply),
 * or a negative KEEL_E* code, which crashes the machine. */
typedef int (*keel_sm_handler)(keel_sm_t *sm, int state, keel_sm_event *ev, void *data);

/* One state of a state-functions machine. */
typedef struct keel_sm_state {
  const char *name; /* for crash reasons; may be NULL */
  keel_sm_handler handle;
} keel_sm_state;

typedef struct keel_gen_statem {
  /* Sets the initial *state and *data. May set timeouts and insert events
   * (they are handled after the start has returned), but not postpone or
   * change state. Return 0, or a negative code / keel_gs_stopping(...) to
   * refuse to start, as a gen_server's init. Required. */
  int (*init)(keel_sm_t *sm, void *arg, int *state, void **data);
  /* Exactly one of the two modes. states[s].handle handles state s; a state
   * with no handler (or out of range) crashes the machine when entered. */
  const keel_sm_state *states;
  size_t nstates;
  keel_sm_handler handle_event;
  bool state_enter; /* call the handler with KEEL_SM_ENTER on each state change */
  /* Runs when the machine stops for any reason other than kill. May be NULL.
   * reason.text is valid during the call only. */
  void (*terminate)(keel_reason reason, int state, void *data);
} keel_gen_statem;

/* .states and .nstates from a static array, in a designated initializer. */
#define KEEL_SM_STATES(table) .states = (table), .nstates = sizeof(table) / sizeof((table)[0])

enum {
  KEEL_SM_OK = 0,              /* carry on, with the actions asked for */
  KEEL_SM_STOP = KEEL_GS_STOP, /* what keel_gs_stopping returns */
};

/* Starts a machine running beh with init(arg), as keel_gs_start starts a
 * gen_server (opts may be NULL; opts->link makes it start_link): it returns
 * once init has returned, arg is borrowed until then, beh must stay valid
 * for the machine's life. Errors: those of keel_gs_start, and KEEL_EINVAL
 * (beh NULL, without init, or not exactly one callback mode). */
int keel_sm_start(const keel_gen_statem *beh, void *arg, const keel_gs_opts *opts, keel_pid_t *out,
                  keel_gs_exit *why);

/* ---- transition actions: only in the machine's own callbacks --------------
 * Each returns 0, or KEEL_ESTATE outside a callback, KEEL_EINVAL for a bad
 * argument. An action the callback may not take (OTP's rules: postpone or
 * change state in init or in an enter call, insert events in an enter call)
 * returns KEEL_EINVAL and crashes the machine when the callback returns. */

/* Go to `state` after this event. A state other than the current one is a
 * state change: postponed events are retried, the state timeout is
 * cancelled (unless one is set by this transition), and the enter call
 * runs. Setting the current state is a same-state transition: none of that. */
int keel_sm_next_state(keel_sm_t *sm, int state);

/* Run the enter call again although the state does not change (OTP's
 * repeat_state); postponed events are not retried. */
int keel_sm_repeat_state(keel_sm_t *sm);

/* Keep the current event and retry it after the next state change, in the
 * order events were postponed. The handler must not take ev->msg then. */
int keel_sm_postpone(keel_sm_t *sm);

/* Insert an event (KEEL_SM_INTERNAL, KEEL_SM_CAST or KEEL_SM_INFO) with
 * content msg (may be NULL; ownership moves), handled before anything
 * already queued, after the events inserted before it by this callback.
 * Errors: KEEL_EINVAL (another type), KEEL_ENOMEM. */
int keel_sm_next_event(keel_sm_t *sm, keel_sm_event_type type, keel_msg_t *msg);

/* Start (or restart) the state timeout: after ms, a KEEL_SM_STATE_TIMEOUT
 * event with content (may be NULL; ownership moves), unless the state
 * changes first. Set in a transition that changes the state, it belongs to
 * the new state. KEEL_INFINITY cancels it. Errors: KEEL_EINVAL (ms < 0 and
 * not KEEL_INFINITY), KEEL_ENOMEM. */
int keel_sm_state_timeout(keel_sm_t *sm, int64_t ms, keel_msg_t *content);

/* Start (or restart) the event timeout: after ms, a KEEL_SM_EVENT_TIMEOUT
 * event, unless any event comes first (one already queued included).
 * KEEL_INFINITY cancels it. Errors as keel_sm_state_timeout. */
int keel_sm_event_timeout(keel_sm_t *sm, int64_t ms, keel_msg_t *content);

/* Start (or restart) the generic timeout `name` (copied): after ms, a
 * KEEL_SM_TIMEOUT event with ev->timeout = name. State changes and other
 * events leave it running. KEEL_INFINITY cancels it. Errors as
 * keel_sm_state_timeout, and KEEL_EINVAL for a NULL name. */
int keel_sm_timeout(keel_sm_t *sm, const char *name, int64_t ms, keel_msg_t *content);

/* Replaces the content of the running generic timeout `name` without
 * changing when it fires; if it is not running, it fires at once (time-out
 * zero), as in OTP. Errors as keel_sm_timeout. */
int keel_sm_timeout_update(keel_sm_t *sm, const char *name, keel_msg_t *content);

/* Cancels the generic timeout `name`; a timeout not running is no error. */
int keel_sm_timeout_cancel(keel_sm_t *sm, const char *name);

#ifdef __cplusplus
}
#endif
#endif
