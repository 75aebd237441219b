/* gen_statem.c - the state machine behaviour, as a gen_server's callbacks.
 *
 * A machine is a gen_server (gen_server.c) whose callbacks turn each call,
 * cast and message into an event and run the state machine on it, so the
 * start, the call protocol, deferred replies, stop, the parent's exit, the
 * callers' log context and terminate are gen_server's, unchanged. What this
 * file adds is OTP's gen_statem event loop, inside one gen_server callback:
 *
 *   - Queues. Events the machine owns but has not handled yet live in one
 *     FIFO (`queue`): inserted events (next_event) go to its front, and
 *     after a state change the postponed events (`postponed`, a FIFO in
 *     arrival order) go to its front too, behind the inserted ones. A
 *     gen_server callback handles its event and then drains the queue, so
 *     between two messages the queue is always empty and only postponed
 *     events are kept. The event being handled is `cur`, so that a kill in
 *     the middle of a handler frees it (the exit hook), and the common case
 *     (a message handled and not postponed) allocates nothing.
 *
 *   - Timeouts. One slot each for the state timeout and the event timeout,
 *     and one per running generic timeout (by name). A slot with a delay
 *     owns a keel_send_after timer whose message is a marker (protocol
 *     KEEL_PROTO_STATEM_TIMER) carrying a fresh reference; the content
 *     stays in the slot. A marker whose reference is not a running slot's
 *     belongs to a timeout cancelled after it fired and is dropped unseen:
 *     that is how a cancelled timeout is never handled, whatever the race
 *     with its timer. Zero timeouts have no timer: they fire after the
 *     queue is drained, before the gen_server receives again (OTP's
 *     "time-out zero" queue), in the order they were set, and a
 *     cancellation simply clears their slot.
 *
 *   - Transitions. Actions are applied as the handler asks for them, except
 *     what OTP applies at the end of the transition: the next state,
 *     postpone and the inserted events. The state timeout is cancelled by a
 *     state change unless this transition set it (it then belongs to the
 *     new state); the event timeout is cancelled as any event starts.
 *
 * The first state enter call and init's actions run in the gen_server's
 * continue step (keel__gs_continue), after the start has returned and
 * before the first message, as in OTP.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/error.h"
#include "keel/gen_server.h"
#include "keel/gen_statem.h"
#include "keel/message.h"
#include "keel/process.h"
#include "keel/timer.h"
#include "otp/gs_internal.h"

/* Handle this many queued events in a row, then let other processes run: a
 * machine that keeps inserting events must not hold its scheduler. */
#define DRAIN_BUDGET 64

typedef struct sm_node {
  keel_sm_event ev;
  char *name; /* KEEL_SM_TIMEOUT: owned; ev.timeout points here */
  struct sm_node *next;
} sm_node;

typedef struct sm_fifo {
  sm_node *head, *tail;
} sm_fifo;

typedef struct sm_timer {
  keel_sm_event_type type; /* STATE_TIMEOUT, EVENT_TIMEOUT or TIMEOUT */
  char *name;              /* generic: owned */
  bool active;
  bool zero;       /* time-out zero: no timer, fires when the queue is drained */
  uint64_t zseq;   /* order among zero timeouts */
  keel_ref_t id;   /* the running timer's marker reference */
  keel_ref_t tref; /* the keel timer, for keel_cancel_timer */
  keel_msg_t *content;
} sm_timer;

struct keel_sm {
  const keel_gen_statem *beh;
  keel_pid_t self;
  int state;
  void *data;

  sm_fifo queue;     /* owned events not handled yet (empty between messages) */
  sm_fifo postponed; /* in arrival order */
  sm_node ext;       /* the current message's event: no allocation per message */
  sm_node *cur;      /* the event being handled (&ext or a queued node), or NULL */

  sm_timer state_to, event_to;
  sm_timer *generic; /* running generic timeouts */
  size_t ngeneric, capgeneric;
  uint64_t zseq;

  /* The callback running now and what it asked for. */
  bool in_cb, in_init, in_enter;
  bool next_set, repeat, postpone, state_to_set;
  int next_state;
  sm_fifo inserted;
  sm_fifo pending;     /* the inserted events of the transition in progress */
  char violation[160]; /* an action the callback may not take: crash with this */
};

/* What keel_sm_start hands to init (on the starter's stack until init returns). */
typedef struct sm_start {
  const keel_gen_statem *beh;
  void *arg;
} sm_start;

/* ---- nodes and queues ------------------------------------------------------- */

static void fifo_push(sm_fifo *q, sm_node *n) {
  n->next = NULL;
  if (q->tail)
    q->tail->next = n;
  else
    q->head = n;
  q->tail = n;
}

static sm_node *fifo_pop(sm_fifo *q) {
  sm_node *n = q->head;
  if (!n) return NULL;
  q->head = n->next;
  if (!q->head) q->tail = NULL;
  n->next = NULL;
  return n;
}

/* Puts all of `front` ahead of q, in its order; front ends empty. */
static void fifo_prepend(sm_fifo *q, sm_fifo *front) {
  if (!front->head) return;
  front->tail->next = q->head;
  if (!q->tail) q->tail = front->tail;
  q->head = front->head;
  front->head = front->tail = NULL;
}

static void node_release(keel_sm_t *sm, sm_node *n) {
  keel_msg_free(n->ev.msg);
  free(n->name);
  if (n == &sm->ext)
    memset(n, 0, sizeof *n);
  else
    free(n);
}

static void fifo_free(keel_sm_t *sm, sm_fifo *q) {
  sm_node *n;
  while ((n = fifo_pop(q)))
    node_release(sm, n);
}

/* A heap node for n (n itself unless it is the per-message one). */
static sm_node *node_keep(keel_sm_t *sm, sm_node *n) {
  if (n != &sm->ext) return n;
  sm_node *h = malloc(sizeof *h);
  if (!h) return NULL;
  *h = *n;
  if (h->name) h->ev.timeout = h->name;
  memset(n, 0, sizeof *n);
  return h;
}

/* ---- state names and crash reasons ------------------------------------------ */

static bool state_functions(const keel_sm_t *sm) {
  return sm->beh->handle_event == NULL;
}

static bool state_defined(const keel_sm_t *sm, int state) {
  if (!state_functions(sm)) return true;
  return state >= 0 && (size_t)state < sm->beh->nstates && sm->beh->states[state].handle;
}

static const char *state_label(const keel_sm_t *sm, int state, char *buf, size_t len) {
  if (state_functions(sm) && state_defined(sm, state) && sm->beh->states[state].name)
    return sm->beh->states[state].name;
  snprintf(buf, len, "%d", state);
  return buf;
}

/* Records that the running callback took an action it may not take; the
 * machine crashes with this reason when the callback returns. */
static int violate(keel_sm_t *sm, const char *what) {
  if (!sm->violation[0]) {
    char b[16];
    snprintf(sm->violation, sizeof sm->violation, "gen_statem: %s (state %s)", what,
             state_label(sm, sm->state, b, sizeof b));
  }
  return KEEL_EINVAL;
}

/* ---- timeouts --------------------------------------------------------------- */

static void timer_stop(sm_timer *t) {
  if (!t->active) return;
  /* A timer that already fired has its marker on the way: with id cleared
   * no slot matches it, so it is dropped when it arrives. */
  if (!t->zero) keel_cancel_timer(t->tref);
  keel_msg_free(t->content);
  t->content = NULL;
  t->active = t->zero = false;
  t->id = t->tref = 0;
}

/* (Re)starts t: after ms, or at once (0) through the zero queue. Takes content. */
static int timer_start(keel_sm_t *sm, sm_timer *t, int64_t ms, keel_msg_t *content) {
  timer_stop(t);
  if (ms == 0) {
    t->zero = true;
    t->zseq = ++sm->zseq;
  } else {
    keel_msg_t *marker = keel_msg_new(0, 0);
    if (!marker) {
      keel_msg_free(content);
      return KEEL_ENOMEM;
    }
    t->id = keel_make_ref();
    keel_msg_set_proto(marker, KEEL_PROTO_STATEM_TIMER);
    keel_msg_set_ref(marker, t->id);
    int rc = keel_send_after(sm->self, ms, marker, &t->tref);
    if (rc) {
      t->id = 0;
      keel_msg_free(content);
      return rc;
    }
  }
  t->content = content;
  t->active = true;
  return 0;
}

static sm_timer *generic_find(keel_sm_t *sm, const char *name) {
  for (size_t i = 0; i < sm->ngeneric; i++)
    if (strcmp(sm->generic[i].name, name) == 0) return &sm->generic[i];
  return NULL;
}

static sm_timer *generic_add(keel_sm_t *sm, const char *name) {
  if (sm->ngeneric == sm->capgeneric) {
    size_t cap = sm->capgeneric ? sm->capgeneric * 2 : 4;
    sm_timer *g = realloc(sm->generic, cap * sizeof *g);
    if (!g) return NULL;
    sm->generic = g;
    sm->capgeneric = cap;
  }
  char *copy = strdup(name);
  if (!copy) return NULL;
  sm_timer *t = &sm->generic[sm->ngeneric++];
  memset(t, 0, sizeof *t);
  t->type = KEEL_SM_TIMEOUT;
  t->name = copy;
  return t;
}

/* Removes a stopped generic slot; *name_out takes its name if not NULL. */
static void generic_remove(keel_sm_t *sm, sm_timer *t, char **name_out) {
  if (name_out)
    *name_out = t->name;
  else
    free(t->name);
  *t = sm->generic[--sm->ngeneric];
}

/* A fired (or zero) timeout, as an event node; the slot is emptied. */
static sm_node *timer_event(keel_sm_t *sm, sm_timer *t) {
  sm_node *n = calloc(1, sizeof *n);
  if (!n) return NULL;
  n->ev.type = t->type;
  n->ev.msg = t->content;
  t->content = NULL;
  t->active = t->zero = false;
  t->id = t->tref = 0;
  if (t->type == KEEL_SM_TIMEOUT) {
    generic_remove(sm, t, &n->name);
    n->ev.timeout = n->name;
  }
  return n;
}

/* The zero timeout set first, or NULL. */
static sm_timer *zero_next(keel_sm_t *sm) {
  sm_timer *best = NULL;
  sm_timer *fixed[2] = {&sm->state_to, &sm->event_to};
  for (int i = 0; i < 2; i++)
    if (fixed[i]->active && fixed[i]->zero && (!best || fixed[i]->zseq < best->zseq))
      best = fixed[i];
  for (size_t i = 0; i < sm->ngeneric; i++) {
    sm_timer *t = &sm->generic[i];
    if (t->active && t->zero && (!best || t->zseq < best->zseq)) best = t;
  }
  return best;
}

/* The slot a marker belongs to, or NULL for a cancelled timeout's marker. */
static sm_timer *timer_of_marker(keel_sm_t *sm, keel_ref_t id) {
  if (!id) return NULL;
  if (sm->state_to.active && !sm->state_to.zero && sm->state_to.id == id) return &sm->state_to;
  if (sm->event_to.active && !sm->event_to.zero && sm->event_to.id == id) return &sm->event_to;
  for (size_t i = 0; i < sm->ngeneric; i++) {
    sm_timer *t = &sm->generic[i];
    if (t->active && !t->zero && t->id == id) return t;
  }
  return NULL;
}

/* ---- actions ---------------------------------------------------------------- */

static bool acting(const keel_sm_t *sm) {
  return sm && sm->in_cb;
}

static bool bad_time(int64_t ms) {
  return ms < 0 && ms != KEEL_INFINITY;
}

int keel_sm_next_state(keel_sm_t *sm, int state) {
  if (!acting(sm)) return KEEL_ESTATE;
  if (sm->in_init) return violate(sm, "init may not change state (it sets *state)");
  if (sm->in_enter && state != sm->state)
    return violate(sm, "a state enter call may not change state");
  if (!state_defined(sm, state)) {
    char b[64];
    snprintf(b, sizeof b, "next state %d has no handler", state);
    return violate(sm, b);
  }
  sm->next_set = true;
  sm->next_state = state;
  return 0;
}

int keel_sm_repeat_state(keel_sm_t *sm) {
  if (!acting(sm)) return KEEL_ESTATE;
  if (sm->in_init) return violate(sm, "init may not repeat the state");
  sm->repeat = true;
  return 0;
}

int keel_sm_postpone(keel_sm_t *sm) {
  if (!acting(sm)) return KEEL_ESTATE;
  if (sm->in_init) return violate(sm, "init may not postpone");
  if (sm->in_enter) return violate(sm, "a state enter call may not postpone");
  sm->postpone = true;
  return 0;
}

int keel_sm_next_event(keel_sm_t *sm, keel_sm_event_type type, keel_msg_t *msg) {
  int rc = 0;
  if (!acting(sm))
    rc = KEEL_ESTATE;
  else if (type != KEEL_SM_INTERNAL && type != KEEL_SM_CAST && type != KEEL_SM_INFO)
    rc = KEEL_EINVAL;
  else if (sm->in_enter)
    rc = violate(sm, "a state enter call may not insert events");
  if (rc) {
    keel_msg_free(msg);
    return rc;
  }
  sm_node *n = calloc(1, sizeof *n);
  if (!n) {
    keel_msg_free(msg);
    return KEEL_ENOMEM;
  }
  n->ev.type = type;
  n->ev.msg = msg;
  fifo_push(&sm->inserted, n);
  return 0;
}

/* Checks shared by the timeout actions; frees content on failure. */
static int timeout_args(keel_sm_t *sm, int64_t ms, keel_msg_t *content) {
  int rc = !acting(sm) ? KEEL_ESTATE : bad_time(ms) ? KEEL_EINVAL : 0;
  if (rc) keel_msg_free(content);
  return rc;
}

static int set_timeout(keel_sm_t *sm, sm_timer *t, int64_t ms, keel_msg_t *content) {
  if (ms == KEEL_INFINITY) {
    keel_msg_free(content);
    timer_stop(t);
    return 0;
  }
  return timer_start(sm, t, ms, content);
}

int keel_sm_state_timeout(keel_sm_t *sm, int64_t ms, keel_msg_t *content) {
  int rc = timeout_args(sm, ms, content);
  if (rc) return rc;
  sm->state_to_set = true; /* survives this transition's state change */
  return set_timeout(sm, &sm->state_to, ms, content);
}

int keel_sm_event_timeout(keel_sm_t *sm, int64_t ms, keel_msg_t *content) {
  int rc = timeout_args(sm, ms, content);
  if (rc) return rc;
  return set_timeout(sm, &sm->event_to, ms, content);
}

int keel_sm_timeout(keel_sm_t *sm, const char *name, int64_t ms, keel_msg_t *content) {
  int rc = timeout_args(sm, ms, content);
  if (rc) return rc;
  if (!name) {
    keel_msg_free(content);
    return KEEL_EINVAL;
  }
  sm_timer *t = generic_find(sm, name);
  if (ms == KEEL_INFINITY) {
    keel_msg_free(content);
    if (t) {
      timer_stop(t);
      generic_remove(sm, t, NULL);
    }
    return 0;
  }
  if (!t && !(t = generic_add(sm, name))) {
    keel_msg_free(content);
    return KEEL_ENOMEM;
  }
  rc = timer_start(sm, t, ms, content);
  if (rc) generic_remove(sm, t, NULL);
  return rc;
}

int keel_sm_timeout_update(keel_sm_t *sm, const char *name, keel_msg_t *content) {
  int rc = timeout_args(sm, 0, content);
  if (rc) return rc;
  if (!name) {
    keel_msg_free(content);
    return KEEL_EINVAL;
  }
  sm_timer *t = generic_find(sm, name);
  if (!t) return keel_sm_timeout(sm, name, 0, content); /* not running: fires at once */
  keel_msg_free(t->content);
  t->content = content;
  return 0;
}

int keel_sm_timeout_cancel(keel_sm_t *sm, const char *name) {
  return keel_sm_timeout(sm, name, KEEL_INFINITY, NULL);
}

/* ---- running the handlers --------------------------------------------------- */

static void actions_reset(keel_sm_t *sm) {
  sm->next_set = sm->repeat = sm->postpone = false;
  sm->violation[0] = 0;
}

/* Calls the state's handler with ev; returns 0, or what ends the machine
 * (KEEL_GS_STOP with the reason recorded, or a negative code). */
static int call_handler(keel_sm_t *sm, sm_node *n) {
  keel_sm_handler fn = sm->beh->handle_event;
  if (!fn) {
    if (!state_defined(sm, sm->state)) {
      char b[16];
      return keel_gs_stopping(KEEL_REASON_ERROR, "gen_statem: state %s has no handler",
                              state_label(sm, sm->state, b, sizeof b));
    }
    fn = sm->beh->states[sm->state].handle;
  }
  /* The current message's context is installed by gen_server; an event
   * kept from an earlier message (postponed) brings back its own. */
  const keel_gs_context_hooks *used = NULL;
  void *prev = n != &sm->ext ? keel__gs_context_enter(n->ev.msg, &used) : NULL;
  sm->in_cb = true;
  int rc = fn(sm, sm->state, &n->ev, sm->data);
  sm->in_cb = false;
  keel__gs_context_leave(used, prev);
  if (rc < 0 || rc == KEEL_SM_STOP) return rc;
  if (rc != KEEL_SM_OK)
    return keel_gs_stopping(KEEL_REASON_ERROR, "gen_statem: handler returned %d", rc);
  if (sm->violation[0]) return keel_gs_stopping(KEEL_REASON_ERROR, "%s", sm->violation);
  return 0;
}

/* The state enter call(s) after a transition from `old`. */
static int run_enter(keel_sm_t *sm, int old) {
  sm_node n;
  for (;;) {
    memset(&n, 0, sizeof n);
    n.ev.type = KEEL_SM_ENTER;
    n.ev.old_state = old;
    actions_reset(sm);
    sm->in_enter = true;
    int rc = call_handler(sm, &n);
    sm->in_enter = false;
    if (rc) return rc;
    if (!sm->repeat) return 0;
  }
}

/* Handles one event (sm->cur) and makes the transition it asks for. */
static int run_event(keel_sm_t *sm, sm_node *n) {
  timer_stop(&sm->event_to); /* any event cancels the event timeout */
  sm->cur = n;
  actions_reset(sm);
  sm->state_to_set = false;
  int rc = call_handler(sm, n);
  if (rc) return rc; /* sm->cur and sm->inserted are freed by the exit hook */
  /* Kept in sm, not here: an enter call that waits can be killed. */
  sm->pending = sm->inserted;
  sm->inserted.head = sm->inserted.tail = NULL;
  int old = sm->state;
  bool changed = sm->next_set && sm->next_state != old;
  bool enter = sm->beh->state_enter && (changed || sm->repeat);
  sm->state = sm->next_set ? sm->next_state : old;
  sm->cur = NULL;
  if (sm->postpone) {
    sm_node *kept = node_keep(sm, n);
    if (!kept) {
      node_release(sm, n);
      return keel_gs_stopping(KEEL_REASON_ERROR, "gen_statem: out of memory postponing an event");
    }
    fifo_push(&sm->postponed, kept);
  } else {
    node_release(sm, n);
  }
  if (changed) {
    if (!sm->state_to_set) timer_stop(&sm->state_to);
    fifo_prepend(&sm->queue, &sm->postponed);
  }
  if (enter && (rc = run_enter(sm, old)) != 0) return rc;
  fifo_prepend(&sm->queue, &sm->pending);
  return 0;
}

/* Handles the queued events, then the zero timeouts, until none is left. */
static int drain(keel_sm_t *sm) {
  for (unsigned handled = 1;; handled++) {
    sm_node *n = fifo_pop(&sm->queue);
    if (!n) {
      sm_timer *t = zero_next(sm);
      if (!t) return 0;
      if (!(n = timer_event(sm, t)))
        return keel_gs_stopping(KEEL_REASON_ERROR, "gen_statem: out of memory");
    }
    int rc = run_event(sm, n);
    if (rc) return rc;
    if (handled % DRAIN_BUDGET == 0) keel_yield();
  }
}

/* One event from the mailbox, then everything it queued. */
static int handle_message(keel_sm_t *sm, keel_sm_event_type type, keel_msg_t **msg,
                          keel_gs_from from) {
  sm_node *n = &sm->ext;
  memset(n, 0, sizeof *n);
  n->ev.type = type;
  n->ev.msg = *msg;
  n->ev.from = from;
  *msg = NULL; /* ours now: freed by node_release, or kept if postponed */
  int rc = run_event(sm, n);
  return rc ? rc : drain(sm);
}

/* ---- the gen_server callbacks ----------------------------------------------- */

/* The exit hook: runs however the machine ends, a kill included. */
static void sm_cleanup(void *arg) {
  keel_sm_t *sm = arg;
  if (sm->cur) node_release(sm, sm->cur);
  fifo_free(sm, &sm->queue);
  fifo_free(sm, &sm->postponed);
  fifo_free(sm, &sm->inserted);
  fifo_free(sm, &sm->pending);
  timer_stop(&sm->state_to);
  timer_stop(&sm->event_to);
  for (size_t i = 0; i < sm->ngeneric; i++) {
    timer_stop(&sm->generic[i]);
    free(sm->generic[i].name);
  }
  free(sm->generic);
  free(sm);
}

/* The continue step: the first enter call, then init's inserted events. */
static int sm_continue(void *state) {
  keel_sm_t *sm = state;
  sm->pending = sm->inserted; /* init's, kept aside from the enter call */
  sm->inserted.head = sm->inserted.tail = NULL;
  if (sm->beh->state_enter) {
    sm->state_to_set = false;
    int rc = run_enter(sm, sm->state);
    if (rc) return rc;
  }
  fifo_prepend(&sm->queue, &sm->pending);
  int rc = drain(sm);
  return rc ? rc : KEEL_GS_OK;
}

static int sm_init(void *arg, void **state) {
  const sm_start *st = arg;
  keel_sm_t *sm = calloc(1, sizeof *sm);
  if (!sm) return KEEL_ENOMEM;
  if (keel_on_exit(sm_cleanup, sm) != 0) {
    free(sm);
    return KEEL_ENOMEM;
  }
  sm->beh = st->beh;
  sm->self = keel_self();
  sm->state_to.type = KEEL_SM_STATE_TIMEOUT;
  sm->event_to.type = KEEL_SM_EVENT_TIMEOUT;
  sm->in_cb = sm->in_init = true;
  int rc = sm->beh->init(sm, st->arg, &sm->state, &sm->data);
  sm->in_cb = sm->in_init = false;
  if (rc < 0 || rc == KEEL_SM_STOP) return rc;
  if (rc != KEEL_SM_OK)
    return keel_gs_stopping(KEEL_REASON_ERROR, "gen_statem: init returned %d", rc);
  if (sm->violation[0]) return keel_gs_stopping(KEEL_REASON_ERROR, "%s", sm->violation);
  if (!state_defined(sm, sm->state))
    return keel_gs_stopping(KEEL_REASON_ERROR, "gen_statem: initial state %d has no handler",
                            sm->state);
  keel__gs_continue(sm_continue);
  keel__gs_trace_kind("gen_statem"); /* an unnamed machine's spans (opts.trace) */
  *state = sm;
  return 0;
}

static int gs_result(int rc) {
  return rc ? rc : KEEL_GS_NOREPLY;
}

static int sm_call(void *state, keel_gs_from from, keel_msg_t **req, keel_msg_t **reply) {
  (void)reply; /* a machine replies with keel_gs_reply, now or later */
  return gs_result(handle_message(state, KEEL_SM_CALL, req, from));
}

static int sm_cast(void *state, keel_msg_t **msg) {
  return handle_message(state, KEEL_SM_CAST, msg, (keel_gs_from){0, 0});
}

static int sm_info(void *state, keel_msg_t **msg) {
  keel_sm_t *sm = state;
  if (keel_msg_proto(*msg) != KEEL_PROTO_STATEM_TIMER)
    return handle_message(sm, KEEL_SM_INFO, msg, (keel_gs_from){0, 0});
  sm_timer *t = timer_of_marker(sm, keel_msg_ref(*msg));
  if (!t) return KEEL_GS_OK; /* cancelled after it fired: never seen */
  sm_node *n = timer_event(sm, t);
  if (!n) return keel_gs_stopping(KEEL_REASON_ERROR, "gen_statem: out of memory");
  int rc = run_event(sm, n);
  return rc ? rc : drain(sm);
}

static void sm_terminate(keel_reason reason, void *state) {
  keel_sm_t *sm = state;
  if (sm->beh->terminate) sm->beh->terminate(reason, sm->state, sm->data);
}

static const keel_gen_server sm_server = {
    .init = sm_init,
    .handle_call = sm_call,
    .handle_cast = sm_cast,
    .handle_info = sm_info,
    .terminate = sm_terminate,
};

int keel_sm_start(const keel_gen_statem *beh, void *arg, const keel_gs_opts *opts, keel_pid_t *out,
                  keel_gs_exit *why) {
  if (out) *out = 0;
  if (!beh || !beh->init || (beh->states != NULL) == (beh->handle_event != NULL) ||
      (beh->states && beh->nstates == 0))
    return KEEL_EINVAL;
  sm_start st = {beh, arg};
  return keel_gs_start(&sm_server, &st, opts, out, why);
}
