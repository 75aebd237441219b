/* gen_server.c - the generic server behaviour on top of the process runtime.
 *
 * Protocol. A call is a message marked KEEL_PROTO_CALL whose reference is a
 * monitor the caller holds on the server, armed with keel_await_ref: the reply
 * (keel_reply with that reference) and the DOWN of that monitor both end the
 * caller's keel_await in O(1), so a call learns of the server's death at once
 * and a reply that comes after a timeout is dropped by the runtime. A cast is
 * marked KEEL_PROTO_CAST. A stop request is a KEEL_PROTO_SYSTEM message, so it
 * is handled in queue order, after everything sent before it.
 *
 * Start is synchronous, as in OTP's proc_lib: the starter arms a reference
 * and monitors the new process; the server registers its name, runs init and
 * replies with the outcome. On failure the server unlinks from its starter
 * before exiting, so a linked starter is told by the return value, not killed.
 * If init does not answer in time the starter unlinks and kills it, and waits
 * for its DOWN, so that nothing is left behind when start returns. A
 * behaviour built on gen_server (gen_statem.c) may ask from init for a
 * continue step (keel__gs_continue), run after the ack and before the first
 * receive: where gen_statem makes its first state enter call.
 *
 * A trapping server whose parent (the linked starter, normally a supervisor)
 * sends an exit signal terminates with that reason, running terminate, as
 * OTP's gen_server does; so does a callback that calls keel_exit
 * (keel_before_exit runs terminate in the process before it ends). A kill
 * runs no terminate.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/error.h"
#include "keel/gen_server.h"
#include "keel/message.h"
#include "keel/process.h"
#include "keel/registry.h"
#include "otp/gs_internal.h"

enum { SYS_STOP = 1 };

typedef struct sys_stop {
  uint32_t op;
  keel_reason_kind kind;
  char text[];
} sys_stop;

/* What the starter hands to the new process; lives on the starter's stack
 * until the ack, so the server copies what it needs before acking. */
typedef struct start_arg {
  const keel_gen_server *beh;
  void *arg;
  keel_pid_t starter;
  keel_ref_t ack;
  const char *name;
  bool linked;
  bool trace;
} start_arg;

typedef struct ack {
  int rc;
  keel_reason_kind kind;
  char text[256];
} ack;

/* Per-server state while its callbacks run (process-local slot). */
typedef struct gs_server {
  const keel_gen_server *beh;
  keel_msg_t *cur; /* the message being handled */
  void *state;
  keel_pid_t parent; /* linked starter, or 0 */
  bool in_init;
  int (*cont)(void *state); /* keel__gs_continue: runs after the ack */
  bool stop_set;
  keel_reason_kind stop_kind;
  char stop_text[256];
  bool trace;          /* opts.trace: a span around each call and cast */
  char trace_name[64]; /* the span's server name */
  bool named;          /* registered: trace_name is its name */
} gs_server;

static const keel_gs_context_hooks *_Atomic ctx_hooks;

void keel_gs_set_context_hooks(const keel_gs_context_hooks *hooks) {
  /* release: a process that sees the pointer sees the struct's contents */
  atomic_store_explicit(&ctx_hooks, hooks, memory_order_release);
}

/* Attaches the caller's context to an outgoing request, if hooks say so. */
static keel_msg_t *with_context(keel_msg_t *m) {
  const keel_gs_context_hooks *h = atomic_load_explicit(&ctx_hooks, memory_order_acquire);
  if (!h || !h->capture) return m;
  void *blob = h->capture();
  if (!blob) return m;
  keel_msg_t *n = keel_msg_attach(m, blob);
  if (!n) { /* out of memory: the call goes without its context */
    free(blob);
    return m;
  }
  return n;
}

/* Installs the context a request carries; returns what restore needs. */
static void *context_enter(const keel_msg_t *m, const keel_gs_context_hooks **used) {
  const keel_gs_context_hooks *h = atomic_load_explicit(&ctx_hooks, memory_order_acquire);
  const void *blob = keel_msg_attachment(m);
  *used = NULL;
  if (!h || !h->install || !blob) return NULL;
  *used = h;
  return h->install(blob);
}

static void context_leave(const keel_gs_context_hooks *used, void *prev) {
  if (used && used->restore) used->restore(prev);
}

static const keel_gs_span_hooks *_Atomic span_hooks;

void keel_gs_set_span_hooks(const keel_gs_span_hooks *hooks) {
  /* release: as keel_gs_set_context_hooks */
  atomic_store_explicit(&span_hooks, hooks, memory_order_release);
}

/* opts.trace: the hooks' span around one callback (NULL when none). */
static void *span_begin(const gs_server *sv, bool call, const keel_gs_span_hooks **h) {
  *h = sv->trace ? atomic_load_explicit(&span_hooks, memory_order_acquire) : NULL;
  if (!*h || !(*h)->begin) return NULL;
  return (*h)->begin(sv->trace_name, call);
}

static void span_end(const keel_gs_span_hooks *h, void *span, int rc) {
  if (h && span && h->end) h->end(span, rc);
}

keel_msg_t *keel__gs_with_context(keel_msg_t *m) {
  return with_context(m);
}

void *keel__gs_context_enter(const keel_msg_t *m, const keel_gs_context_hooks **used) {
  if (!m) {
    *used = NULL;
    return NULL;
  }
  return context_enter(m, used);
}

void keel__gs_context_leave(const keel_gs_context_hooks *used, void *prev) {
  context_leave(used, prev);
}

int keel__gs_continue(int (*fn)(void *state)) {
  gs_server *sv = keel_local_get(KEEL_LOCAL_GEN_SERVER);
  if (!sv || !sv->in_init) return KEEL_ESTATE;
  sv->cont = fn;
  return 0;
}

int keel__gs_trace_kind(const char *kind) {
  gs_server *sv = keel_local_get(KEEL_LOCAL_GEN_SERVER);
  if (!sv || !sv->in_init || !kind) return KEEL_ESTATE;
  if (!sv->named) snprintf(sv->trace_name, sizeof sv->trace_name, "%s", kind);
  return 0;
}

void keel_gs_opts_init(keel_gs_opts *o) {
  memset(o, 0, sizeof *o);
}

static void set_exit(keel_gs_exit *why, keel_reason_kind kind, const char *text) {
  if (!why) return;
  why->kind = kind;
  snprintf(why->text, sizeof why->text, "%s", text ? text : "");
}

int keel_gs_stopping(keel_reason_kind kind, const char *fmt, ...) {
  gs_server *sv = keel_local_get(KEEL_LOCAL_GEN_SERVER);
  if (sv) {
    sv->stop_set = true;
    sv->stop_kind = kind;
    sv->stop_text[0] = 0;
    if (fmt) {
      va_list ap;
      va_start(ap, fmt);
      vsnprintf(sv->stop_text, sizeof sv->stop_text, fmt, ap);
      va_end(ap);
    }
  }
  return KEEL_GS_STOP;
}

static void send_ack(keel_pid_t to, keel_ref_t ref, int rc, keel_reason_kind kind,
                     const char *text) {
  ack a = {.rc = rc, .kind = kind};
  snprintf(a.text, sizeof a.text, "%s", text ? text : "");
  keel_reply(to, ref, keel_msg_copy(0, &a, sizeof a));
}

/* Ends the server: exit with the reason; terminate runs on the way out, in
 * run_terminate, the same path as a callback's own keel_exit. */
_Noreturn static void finish(keel_reason_kind kind, const char *text) {
  char buf[256];
  snprintf(buf, sizeof buf, "%s", text ? text : "");
  keel_exit(kind, buf);
}

/* Turns a callback's result into: continue (0), or finish. */
static void check(gs_server *sv, int rc) {
  if (rc >= 0 && rc != KEEL_GS_STOP) return;
  if (rc == KEEL_GS_STOP) {
    if (!sv->stop_set) finish(KEEL_REASON_NORMAL, NULL);
    finish(sv->stop_kind, sv->stop_text);
  }
  char text[128];
  snprintf(text, sizeof text, "callback returned %s (%s)", keel_err_name(rc), keel_strerror(rc));
  finish(KEEL_REASON_ERROR, sv->stop_set ? sv->stop_text : text);
}

/* The server's keel_before_exit hook: terminate with the reason, in the
 * process, whether the server ends by finish or a callback calls keel_exit
 * itself (as OTP's gen_server does for exit/1 in a callback). */
static void run_terminate(keel_reason_kind kind, const char *text, void *arg) {
  gs_server *sv = arg;
  if (sv->beh->terminate) sv->beh->terminate((keel_reason){kind, text ? text : ""}, sv->state);
  keel_local_set(KEEL_LOCAL_GEN_SERVER, NULL);
}

/* Runs when the server process ends, however it ends (a kill runs no
 * terminate): frees the message being handled and the bookkeeping. */
static void server_cleanup(void *arg) {
  gs_server *sv = arg;
  keel_msg_free(sv->cur);
  free(sv);
}

static void server_main(void *p) {
  start_arg *sa = p;
  keel_pid_t starter = sa->starter;
  keel_ref_t ack_ref = sa->ack;
  gs_server *sv = calloc(1, sizeof *sv);
  if (!sv || keel_on_exit(server_cleanup, sv) != 0) {
    free(sv);
    if (sa->linked) keel_unlink(starter);
    send_ack(starter, ack_ref, KEEL_ENOMEM, KEEL_REASON_ERROR, "out of memory");
    return;
  }
  sv->beh = sa->beh;
  sv->parent = sa->linked ? starter : 0;
  sv->trace = sa->trace;
  snprintf(sv->trace_name, sizeof sv->trace_name, "%s", sa->name ? sa->name : "gen_server");
  sv->named = sa->name != NULL;
  keel_local_set(KEEL_LOCAL_GEN_SERVER, sv);

  if (sa->name) {
    int rc = keel_register(sa->name, keel_self());
    if (rc) {
      if (sa->linked) keel_unlink(starter);
      send_ack(starter, ack_ref, rc, KEEL_REASON_NORMAL, NULL);
      keel_local_set(KEEL_LOCAL_GEN_SERVER, NULL);
      return;
    }
  }
  sv->in_init = true;
  int rc = sv->beh->init ? sv->beh->init(sa->arg, &sv->state) : 0;
  sv->in_init = false;
  if (rc < 0 || rc == KEEL_GS_STOP) {
    const char *name = sa->name;
    if (name) keel_unregister(name);
    if (sa->linked) keel_unlink(starter);
    keel_reason_kind kind = sv->stop_set ? sv->stop_kind : KEEL_REASON_ERROR;
    char text[256];
    if (sv->stop_set)
      snprintf(text, sizeof text, "%s", sv->stop_text);
    else
      snprintf(text, sizeof text, "init returned %s", keel_err_name(rc));
    send_ack(starter, ack_ref, rc == KEEL_GS_STOP ? KEEL_EDOWN : rc, kind, text);
    keel_local_set(KEEL_LOCAL_GEN_SERVER, NULL);
    keel_exit(kind, text);
  }
  sv->stop_set = false;
  keel_before_exit(run_terminate, sv); /* from here, terminate runs on keel_exit */
  send_ack(starter, ack_ref, 0, KEEL_REASON_NORMAL, NULL);
  /* sa is gone from here on: the starter has returned. */
  if (sv->cont) { /* keel__gs_continue: before any message, as OTP's gen_statem */
    int (*cont)(void *) = sv->cont;
    sv->cont = NULL;
    check(sv, cont(sv->state));
  }

  /* The message being handled lives in sv->cur, so that a kill in the middle
   * of a callback frees it (server_cleanup); callbacks get &sv->cur and may
   * take it by setting it to NULL. */
  for (;;) {
    keel_receive(&sv->cur, KEEL_INFINITY);
    keel_msg_t *m = sv->cur;
    sv->stop_set = false;
    switch (keel_msg_proto(m)) {
    case KEEL_PROTO_CALL: {
      keel_gs_from from = {keel_msg_from(m), keel_msg_ref(m)};
      keel_msg_t *reply = NULL;
      const keel_gs_context_hooks *used;
      void *prev = context_enter(m, &used);
      const keel_gs_span_hooks *sh;
      void *span = span_begin(sv, true, &sh);
      rc = sv->beh->handle_call ? sv->beh->handle_call(sv->state, from, &sv->cur, &reply)
                                : KEEL_EINVAL;
      span_end(sh, span, rc);
      context_leave(used, prev);
      if (rc == KEEL_GS_REPLY || (rc == KEEL_GS_STOP && reply))
        keel_gs_reply(from, reply ? reply : keel_msg_new(0, 0));
      else
        keel_msg_free(reply);
      break;
    }
    case KEEL_PROTO_CAST: {
      const keel_gs_context_hooks *used;
      void *prev = context_enter(m, &used);
      const keel_gs_span_hooks *sh;
      void *span = span_begin(sv, false, &sh);
      rc = sv->beh->handle_cast ? sv->beh->handle_cast(sv->state, &sv->cur) : 0;
      span_end(sh, span, rc);
      context_leave(used, prev);
      break;
    }
    case KEEL_PROTO_SYSTEM: {
      sys_stop st;
      rc = 0;
      if (keel_msg_size(m) >= sizeof st) {
        memcpy(&st, keel_msg_data(m), sizeof st);
        if (st.op == SYS_STOP) {
          char text[256];
          snprintf(text, sizeof text, "%s", ((sys_stop *)keel_msg_data(m))->text);
          keel_msg_free(sv->cur);
          sv->cur = NULL;
          finish(st.kind, text);
        }
      }
      break;
    }
    default:
      if (keel_msg_kind_of(m) == KEEL_MSG_EXIT && sv->parent) {
        keel_pid_t who;
        keel_reason r;
        keel_msg_exit_info(m, &who, &r);
        if (who == sv->parent) { /* our parent is going: so are we */
          char text[256];
          snprintf(text, sizeof text, "%s", r.text);
          keel_reason_kind kind = r.kind;
          keel_msg_free(sv->cur);
          sv->cur = NULL;
          finish(kind, text);
        }
      }
      rc = sv->beh->handle_info ? sv->beh->handle_info(sv->state, &sv->cur) : 0;
      break;
    }
    keel_msg_free(sv->cur);
    sv->cur = NULL;
    check(sv, rc);
  }
}

static bool is_down_for(const keel_msg_t *m, void *arg) {
  return keel_msg_kind_of(m) == KEEL_MSG_DOWN && keel_msg_ref(m) == *(keel_ref_t *)arg;
}

/* Waits for the DOWN of monitor ref once its await has ended (the DOWN then
 * comes to the mailbox like any message, and may already be there). */
static void wait_down(keel_ref_t ref) {
  keel_msg_t *m = NULL;
  if (keel_receive_match(is_down_for, &ref, &m, KEEL_INFINITY) == 0) keel_msg_free(m);
}

static int start_wait(start_arg *sa, keel_spawn_opts *so, int64_t timeout, bool link,
                      keel_pid_t *out, keel_gs_exit *why);

int keel_gs_start(const keel_gen_server *beh, void *arg, const keel_gs_opts *opts, keel_pid_t *out,
                  keel_gs_exit *why) {
  if (out) *out = 0;
  if (!beh) return KEEL_EINVAL;
  keel_pid_t self = keel_self();
  if (!self) return KEEL_ENOTPROC;
  keel_gs_opts defaults;
  if (!opts) {
    keel_gs_opts_init(&defaults);
    opts = &defaults;
  }
  int64_t timeout = opts->init_timeout ? opts->init_timeout : KEEL_GS_DEFAULT_TIMEOUT;
  /* One reference serves as the monitor and as the ack's reference, so one
   * await ends on whichever comes first: the ack, or the DOWN. */
  start_arg sa = {.beh = beh,
                  .arg = arg,
                  .starter = self,
                  .name = opts->name,
                  .linked = opts->link,
                  .trace = opts->trace};
  keel_spawn_opts so;
  keel_spawn_opts_init(&so);
  so.stack_size = opts->stack_size;
  so.scheduler = opts->scheduler;
  so.link = opts->link;
  so.trap_exit = opts->trap_exit;
  so.name = opts->name;
  so.monitor = true;
  so.await_monitor = true;
  so.monitor_ref = &sa.ack; /* written before the child runs */
  /* The child reads sa (on our stack) and arg until it acks, so we must not
   * die before that: exit signals are held until start returns. */
  keel_hold_exits(true);
  keel_pid_t pid = 0;
  int rc = start_wait(&sa, &so, timeout, opts->link, &pid, why);
  keel_hold_exits(false);
  if (rc == 0 && out) *out = pid;
  return rc;
}

static int start_wait(start_arg *sa, keel_spawn_opts *so, int64_t timeout, bool link,
                      keel_pid_t *out, keel_gs_exit *why) {
  keel_pid_t pid;
  int rc = keel_spawn(server_main, sa, so, &pid); /* a failed spawn disarms the ref */
  if (rc) return rc;
  keel_ref_t ref = sa->ack;
  keel_msg_t *m = NULL;
  rc = keel_await(ref, &m, timeout);
  if (rc == KEEL_ETIMEDOUT) {
    /* Init took too long: kill it (unlinked first, or its death would take
     * us along) and wait until it is gone. */
    if (link) keel_unlink(pid);
    keel_exit_signal(pid, KEEL_REASON_KILL, NULL);
    wait_down(ref);
    set_exit(why, KEEL_REASON_KILLED, "init timed out");
    return KEEL_ETIMEDOUT;
  }
  if (keel_msg_kind_of(m) == KEEL_MSG_DOWN) { /* it died before acking */
    keel_pid_t who;
    keel_reason r;
    keel_msg_exit_info(m, &who, &r);
    set_exit(why, r.kind, r.text);
    keel_msg_free(m);
    return KEEL_EDOWN;
  }
  ack a;
  memcpy(&a, keel_msg_data(m), sizeof a);
  keel_msg_free(m);
  if (a.rc != 0) {
    /* It refused and is exiting: wait for its DOWN, so that no process (and
     * no name) outlives the error we return. */
    wait_down(ref);
    set_exit(why, a.kind, a.text);
    return a.rc;
  }
  keel_demonitor(ref);
  *out = pid;
  return 0;
}

int keel_gs_call(keel_pid_t server, keel_msg_t *request, keel_msg_t **reply, int64_t timeout_ms,
                 keel_gs_exit *why) {
  if (reply) *reply = NULL;
  if (!request) return KEEL_EINVAL;
  if (!reply || !server) {
    keel_msg_free(request);
    return KEEL_EINVAL;
  }
  if (!keel_self()) {
    keel_msg_free(request);
    return KEEL_ENOTPROC;
  }
  if (timeout_ms == 0) timeout_ms = KEEL_GS_DEFAULT_TIMEOUT;
  keel_ref_t mref;
  int rc = keel_monitor(server, &mref);
  if (rc) {
    keel_msg_free(request);
    return rc;
  }
  keel_await_ref(mref);
  request = with_context(request);
  keel_msg_set_proto(request, KEEL_PROTO_CALL);
  keel_msg_set_ref(request, mref);
  keel_send(server, request);
  keel_msg_t *m = NULL;
  rc = keel_await(mref, &m, timeout_ms);
  if (rc) {
    keel_demonitor(mref); /* and a reply that comes later is dropped */
    return rc;
  }
  if (keel_msg_kind_of(m) == KEEL_MSG_REPLY) {
    keel_demonitor(mref);
    *reply = m;
    return 0;
  }
  keel_pid_t who;
  keel_reason r;
  keel_msg_exit_info(m, &who, &r);
  set_exit(why, r.kind, r.text);
  rc = r.kind == KEEL_REASON_NOPROC ? KEEL_ENOPROC : KEEL_EDOWN;
  keel_msg_free(m);
  return rc;
}

int keel_gs_call_name(const char *name, keel_msg_t *request, keel_msg_t **reply, int64_t timeout_ms,
                      keel_gs_exit *why) {
  keel_pid_t pid = keel_whereis(name);
  if (!pid) {
    keel_msg_free(request);
    if (reply) *reply = NULL;
    keel_yield(); /* a call is a scheduling point, even one that fails at once */
    return KEEL_ENOPROC;
  }
  return keel_gs_call(pid, request, reply, timeout_ms, why);
}

int keel_gs_cast(keel_pid_t server, keel_msg_t *msg) {
  if (!msg) return KEEL_EINVAL;
  msg = with_context(msg);
  keel_msg_set_proto(msg, KEEL_PROTO_CAST);
  return keel_send(server, msg);
}

int keel_gs_cast_name(const char *name, keel_msg_t *msg) {
  keel_pid_t pid = keel_whereis(name);
  if (!pid) {
    keel_msg_free(msg);
    return KEEL_ENOPROC;
  }
  return keel_gs_cast(pid, msg);
}

int keel_gs_reply(keel_gs_from from, keel_msg_t *reply) {
  if (!reply) reply = keel_msg_new(0, 0);
  return keel_reply(from.pid, from.ref, reply);
}

int keel_gs_stop(keel_pid_t server, keel_reason_kind kind, const char *text, int64_t timeout_ms) {
  keel_pid_t self = keel_self();
  if (!self) return KEEL_ENOTPROC;
  if (!server || server == self) return KEEL_EINVAL;
  if (timeout_ms == 0) timeout_ms = KEEL_GS_DEFAULT_TIMEOUT;
  keel_ref_t mref;
  int rc = keel_monitor(server, &mref);
  if (rc) return rc;
  keel_await_ref(mref);
  size_t len = text ? strlen(text) : 0;
  keel_msg_t *m = keel_msg_new(0, sizeof(sys_stop) + len + 1);
  if (!m) {
    keel_await_cancel(mref);
    keel_demonitor(mref);
    return KEEL_ENOMEM;
  }
  sys_stop *st = keel_msg_data(m);
  st->op = SYS_STOP;
  st->kind = kind;
  memcpy(st->text, text ? text : "", len + 1);
  keel_msg_set_proto(m, KEEL_PROTO_SYSTEM);
  keel_send(server, m);
  keel_msg_t *down = NULL;
  rc = keel_await(mref, &down, timeout_ms);
  if (rc == 0) {
    keel_msg_free(down); /* gone (or was already: noproc) */
    return 0;
  }
  keel_exit_signal(server, KEEL_REASON_KILL, NULL);
  wait_down(mref);
  return KEEL_ETIMEDOUT;
}
