/* application.c - the application behaviour: a supervision tree with a
 * lifecycle (start, orderly stop, signals, events, exit code).
 *
 * Each application has a master process, as in OTP's application_master. It
 * traps exits, runs beh->start (so the root supervisor, started linked to the
 * caller, has the master as its parent), links to the root, and then waits
 * for one of three things: a stop request (a KEEL_PROTO_SYSTEM message from
 * keel_app_stop_async), a signal (a message from the signal watcher), or the
 * root supervisor's EXIT (it gave up or crashed). Each leads to the same stop
 * sequence, run by the master under one deadline (the stop timeout):
 * prep_stop in a helper process (so a prep_stop that hangs can be killed),
 * then keel_gs_stop(root, shutdown) - the supervisor stops its
 * children in reverse order, each within its own shutdown time - and, if the
 * deadline passes first, a kill of the root and of every process of the tree
 * as walked (keel_sup_which_children, recursively) just before the shutdown
 * began; then beh->stop in the master. The master records the exit code,
 * publishes `stopped` and exits.
 *
 * keel_app_start spawns the master with a monitor whose reference it arms,
 * and awaits the master's answer (start done or failed) or its DOWN, up to
 * the start timeout, after which it kills the master (the tree, linked to
 * it, goes down with it) and waits for it to be gone.
 *
 * The handle (keel_app_t) is reference-counted: one reference for the caller
 * (keel_app_free), one for the master, dropped by an exit hook registered on
 * the master right after it is spawned, so it is dropped however the master
 * ends. Fields read from other threads are atomics.
 *
 * The signal watcher is a process pinned to its scheduler (keel_io_begin)
 * with two one-shot uv_signal_t handles (SIGTERM, SIGINT) on that
 * scheduler's libuv loop. The first signal resets both to their default
 * action (one-shot handles reset theirs in the kernel, SA_RESETHAND; the
 * callback stops the other), so a second signal terminates the program at
 * once without any keel code running. The handles live in a heap block closed
 * by an exit hook of the watcher, which runs on the watcher's own scheduler
 * thread (the loop's thread); the master ends the watcher with an exit signal.
 *
 * Subscribers to lifecycle events are otp's one subscriber list
 * (sublist.h): dispatched synchronously under its mutex, so an unsubscribe
 * that returns guarantees no later call.
 */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "keel/application.h"
#include "keel/error.h"
#include "keel/gen_server.h"
#include "keel/io.h"
#include "keel/message.h"
#include "keel/process.h"
#include "keel/runtime.h"
#include "keel/supervisor.h"
#include "keel/timer.h"
#include "otp/sublist.h"

enum { TAG_STOP = 0x6b53746fu /* "kSto" */, TAG_SIGNAL = 0x6b536967u /* "kSig" */ };

enum { ST_STARTING = 0, ST_RUNNING, ST_STOPPING, ST_STOPPED, ST_FAILED };

struct keel_app {
  atomic_int refs;
  const keel_application *beh;
  char name[64];
  void *config;
  bool handle_signals;
  int64_t start_timeout;
  int64_t stop_timeout;
  atomic_int state;
  _Atomic keel_pid_t root;
  _Atomic keel_pid_t master;
  atomic_int exit_code; /* -1 until stopped */
};

/* ---- time ------------------------------------------------------------------ */

static int64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- subscribers ------------------------------------------------------------ */

/* One list for every application's events (sublist.h: no limit, dispatched
 * under its mutex, unsubscribe means no later call). */
static keel__sublist subs = KEEL__SUBLIST_INIT;

int keel_app_subscribe(keel_app_event_fn fn, void *ud) {
  return keel__sublist_add(&subs, (keel__sub_fn)fn, ud);
}

int keel_app_unsubscribe(int handle) {
  return keel__sublist_remove(&subs, handle);
}

static void call_sub(keel__sub_fn fn, void *ud, const void *ev) {
  ((keel_app_event_fn)fn)(ev, ud);
}

static void dispatch(keel_app_event *ev) {
  ev->timestamp_ms = wall_ms();
  if (!ev->error_text) ev->error_text = "";
  keel__sublist_emit(&subs, call_sub, ev);
}

static void emit(keel_app_t *app, keel_app_event_kind kind) {
  keel_app_event ev = {
      .kind = kind, .name = app->name, .app = app, .root = atomic_load(&app->root)};
  dispatch(&ev);
}

const char *keel_app_event_name(keel_app_event_kind kind) {
  switch (kind) {
  case KEEL_APP_STARTING: return "starting";
  case KEEL_APP_STARTED: return "started";
  case KEEL_APP_STOPPING: return "stopping";
  case KEEL_APP_STOPPED: return "stopped";
  case KEEL_APP_START_FAILED: return "start_failed";
  }
  return "?";
}

const char *keel_app_stop_reason_name(keel_app_stop_reason reason) {
  switch (reason) {
  case KEEL_APP_STOP_NORMAL: return "normal";
  case KEEL_APP_STOP_SIGNAL: return "signal";
  case KEEL_APP_STOP_ERROR: return "error";
  }
  return "?";
}

/* ---- the handle --------------------------------------------------------------- */

static void app_release(void *p) {
  keel_app_t *app = p;
  /* acq_rel: the last releaser must see every write of the other holder. */
  if (atomic_fetch_sub_explicit(&app->refs, 1, memory_order_acq_rel) == 1) free(app);
}

void keel_app_free(keel_app_t *app) {
  if (app) app_release(app);
}

void keel_app_opts_init(keel_app_opts *o) {
  memset(o, 0, sizeof *o);
}

bool keel_app_is_running(const keel_app_t *app) {
  return app && atomic_load(&app->state) == ST_RUNNING;
}

keel_pid_t keel_app_root(const keel_app_t *app) {
  return app ? atomic_load(&app->root) : 0;
}

keel_pid_t keel_app_master(const keel_app_t *app) {
  return app ? atomic_load(&app->master) : 0;
}

const char *keel_app_name(const keel_app_t *app) {
  return app ? app->name : "";
}

int keel_app_exit_code(const keel_app_t *app) {
  return app ? atomic_load(&app->exit_code) : -1;
}

/* ---- small helpers -------------------------------------------------------------- */

static bool is_down_for(const keel_msg_t *m, void *arg) {
  return keel_msg_kind_of(m) == KEEL_MSG_DOWN && keel_msg_ref(m) == *(keel_ref_t *)arg;
}

static void wait_down(keel_ref_t ref) {
  keel_msg_t *m = NULL;
  if (keel_receive_match(is_down_for, &ref, &m, KEEL_INFINITY) == 0) keel_msg_free(m);
}

/* Kills pid and waits until it is gone. */
static void kill_and_wait(keel_pid_t pid) {
  keel_ref_t ref;
  if (keel_monitor(pid, &ref) != 0) return;
  keel_exit_signal(pid, KEEL_REASON_KILL, NULL);
  wait_down(ref);
}

static int send_system(keel_pid_t to, uint32_t tag, const void *data, size_t len) {
  keel_msg_t *m = keel_msg_copy(tag, data, len);
  if (!m) return KEEL_ENOMEM;
  keel_msg_set_proto(m, KEEL_PROTO_SYSTEM);
  return keel_send(to, m);
}

/* ---- the signal watcher ------------------------------------------------------------ */

typedef struct sigwatch {
  uv_signal_t term;
  uv_signal_t intr;
  keel_io_t *io; /* the watcher's wait, NULL once it is gone */
  int closed;
} sigwatch;

typedef struct sig_start {
  keel_pid_t master;
  keel_ref_t ack;
} sig_start;

static void on_signal(uv_signal_t *h, int signum) {
  sigwatch *sw = h->data;
  /* Both back to the default action: a second signal ends the program. */
  uv_signal_stop(&sw->term);
  uv_signal_stop(&sw->intr);
  if (sw->io) keel_io_ready(sw->io, signum);
}

static void sig_closed(uv_handle_t *h) {
  sigwatch *sw = h->data;
  if (++sw->closed == 2) free(sw);
}

/* Exit hook of the watcher: runs on its scheduler's thread (it is pinned),
 * or at keel_rt_stop when no loop runs. */
static void sig_cleanup(void *p) {
  sigwatch *sw = p;
  sw->io = NULL;
  uv_close((uv_handle_t *)&sw->term, sig_closed);
  uv_close((uv_handle_t *)&sw->intr, sig_closed);
}

static void sig_ack(const sig_start *st, int rc) {
  keel_reply(st->master, st->ack, keel_msg_copy(0, &rc, sizeof rc));
}

static void sig_main(void *p) {
  sig_start st = *(sig_start *)p;
  keel_io_t io;
  sigwatch *sw = calloc(1, sizeof *sw);
  if (!sw) {
    sig_ack(&st, KEEL_ENOMEM);
    return;
  }
  keel_io_begin(&io);
  uv_loop_t *loop = keel_io_loop(&io);
  uv_signal_init(loop, &sw->term);
  uv_signal_init(loop, &sw->intr);
  sw->term.data = sw->intr.data = sw;
  if (keel_on_exit(sig_cleanup, sw) != 0) {
    sig_cleanup(sw);
    sig_ack(&st, KEEL_ENOMEM);
    return;
  }
  sw->io = &io;
  if (uv_signal_start_oneshot(&sw->term, on_signal, SIGTERM) != 0 ||
      uv_signal_start_oneshot(&sw->intr, on_signal, SIGINT) != 0) {
    sig_ack(&st, KEEL_EIO);
    return;
  }
  sig_ack(&st, 0);
  for (;;) {
    int signum = keel_io_wait(&io, KEEL_INFINITY);
    if (signum > 0) send_system(st.master, TAG_SIGNAL, &signum, sizeof signum);
  }
}

/* Starts the watcher linked to the caller (the master). */
static int sig_start_watcher(keel_pid_t *out) {
  sig_start st = {.master = keel_self()};
  keel_spawn_opts so;
  keel_spawn_opts_init(&so);
  so.link = true;
  so.monitor = true;
  so.await_monitor = true;
  so.monitor_ref = &st.ack;
  so.name = "app signals";
  int rc = keel_spawn(sig_main, &st, &so, out);
  if (rc) return rc;
  keel_ref_t ref = st.ack;
  keel_msg_t *m = NULL;
  keel_await(ref, &m, KEEL_INFINITY);
  if (keel_msg_kind_of(m) == KEEL_MSG_DOWN) {
    keel_msg_free(m);
    keel_unlink(*out);
    *out = 0;
    return KEEL_EDOWN;
  }
  memcpy(&rc, keel_msg_data(m), sizeof rc);
  keel_msg_free(m);
  keel_demonitor(ref);
  if (rc) { /* it is exiting; its hook closes what it opened */
    keel_unlink(*out);
    *out = 0;
  }
  return rc;
}

static void sig_stop_watcher(keel_pid_t pid) {
  if (!pid) return;
  keel_unlink(pid);
  keel_ref_t ref;
  if (keel_monitor(pid, &ref) != 0) return;
  keel_exit_signal(pid, KEEL_REASON_SHUTDOWN, NULL);
  wait_down(ref);
}

/* ---- the tree, as it stands ------------------------------------------------------------ */

typedef struct pidset {
  keel_pid_t *v;
  size_t n, cap;
} pidset;

static void pidset_add(pidset *ps, keel_pid_t pid) {
  if (ps->n == ps->cap) {
    size_t cap = ps->cap ? ps->cap * 2 : 64;
    keel_pid_t *v = realloc(ps->v, cap * sizeof *v);
    if (!v) return;
    ps->v = v;
    ps->cap = cap;
  }
  ps->v[ps->n++] = pid;
}

/* Kills root and every pid of the tree at once, then waits until all are
 * gone. */
static void kill_all_and_wait(keel_pid_t root, const pidset *tree) {
  size_t n = tree->n + 1;
  keel_ref_t *refs = calloc(n, sizeof *refs);
  for (size_t i = 0; i < n; i++) {
    keel_pid_t pid = i < tree->n ? tree->v[i] : root;
    if (!refs) { /* no memory for the batch: one at a time */
      kill_and_wait(pid);
      continue;
    }
    if (keel_monitor(pid, &refs[i]) == 0)
      keel_exit_signal(pid, KEEL_REASON_KILL, NULL);
    else
      refs[i] = 0;
  }
  for (size_t i = 0; refs && i < n; i++)
    if (refs[i]) wait_down(refs[i]);
  free(refs);
}

/* Every process of the tree below sup, supervisors before their children. */
static void collect_tree(keel_pid_t sup, pidset *ps, int depth) {
  size_t max = 64, n = 0;
  keel_sup_child_info *info = malloc(max * sizeof *info);
  if (!info) return;
  if (keel_sup_which_children(sup, info, max, &n) == 0 && n > max) {
    keel_sup_child_info *bigger = realloc(info, n * sizeof *info);
    if (bigger) {
      info = bigger;
      max = n;
      if (keel_sup_which_children(sup, info, max, &n) != 0) n = 0;
    }
  }
  if (n > max) n = max;
  for (size_t i = 0; i < n; i++) {
    if (!info[i].pid) continue;
    pidset_add(ps, info[i].pid);
    if (info[i].type == KEEL_SUP_SUPERVISOR && depth < 64) collect_tree(info[i].pid, ps, depth + 1);
  }
  free(info);
}

/* ---- the master ------------------------------------------------------------------------ */

typedef struct start_reply {
  int rc;
  keel_reason_kind kind;
  char text[256];
} start_reply;

typedef struct master_arg {
  keel_app_t *app;
  keel_pid_t starter;
  keel_ref_t ack;
} master_arg;

typedef struct prep_arg {
  const keel_application *beh;
  void *state;
  keel_pid_t root;
} prep_arg;

static void prep_main(void *p) {
  prep_arg *a = p;
  a->beh->prep_stop(a->state, a->root);
}

/* Milliseconds left before deadline (KEEL_INFINITY for none), at least 0. */
static int64_t left(int64_t deadline) {
  if (deadline < 0) return KEEL_INFINITY;
  int64_t l = deadline - keel_monotonic_ms();
  return l > 0 ? l : 0;
}

/* Runs prep_stop in a helper bounded by the deadline. false: it overran and
 * was killed. */
static bool run_prep_stop(keel_app_t *app, void *state, keel_pid_t root, int64_t deadline) {
  prep_arg a = {.beh = app->beh, .state = state, .root = root};
  keel_ref_t ref;
  keel_spawn_opts so;
  keel_spawn_opts_init(&so);
  so.monitor = true;
  so.await_monitor = true;
  so.monitor_ref = &ref;
  so.name = "app prep_stop";
  keel_pid_t pid;
  if (keel_spawn(prep_main, &a, &so, &pid) != 0) { /* no memory for the helper: run it here */
    app->beh->prep_stop(state, root);
    return true;
  }
  keel_msg_t *m = NULL;
  int64_t l = left(deadline);
  int rc = l == 0 ? KEEL_ETIMEDOUT : keel_await(ref, &m, l);
  if (rc == 0) {
    keel_msg_free(m);
    return true;
  }
  if (l == 0) keel_await_cancel(ref);
  keel_exit_signal(pid, KEEL_REASON_KILL, NULL); /* `a` stays valid until it is gone */
  wait_down(ref);
  return false;
}

/* The stop sequence; does not return. */
_Noreturn static void master_stop(keel_app_t *app, void *state, keel_pid_t sigpid,
                                  keel_app_stop_reason reason, int signum, bool root_gone,
                                  const char *why) {
  keel_pid_t root = atomic_load(&app->root);
  atomic_store(&app->state, ST_STOPPING);
  keel_app_event ev = {.kind = KEEL_APP_STOPPING,
                       .name = app->name,
                       .app = app,
                       .root = root,
                       .reason = reason,
                       .signum = signum,
                       .error_text = why};
  dispatch(&ev);

  int64_t deadline =
      app->stop_timeout == KEEL_INFINITY ? -1 : keel_monotonic_ms() + app->stop_timeout;
  bool forced = false;
  if (app->beh->prep_stop) forced = !run_prep_stop(app, state, root_gone ? 0 : root, deadline);

  if (!root_gone && keel_is_alive(root)) {
    pidset tree = {0};
    collect_tree(root, &tree, 0);
    int64_t l = left(deadline);
    int rc = KEEL_ETIMEDOUT;
    if (!forced && l != 0) rc = keel_gs_stop(root, KEEL_REASON_SHUTDOWN, "application stopping", l);
    if (rc != 0) {
      /* every kill is sent before any is waited for: killing one at a time
       * would let the others act on the first death (a supervisor go on
       * with its shutdown, a trapping child run its terminate), or not,
       * depending on a race */
      forced = true;
      kill_all_and_wait(root, &tree);
    }
    free(tree.v);
  }
  keel_unlink(root); /* and the root's EXIT, if queued, with it */
  sig_stop_watcher(sigpid);

  if (app->beh->stop) app->beh->stop(state);

  int code = root_gone ? KEEL_APP_EXIT_CRASHED : forced ? KEEL_APP_EXIT_FORCED : KEEL_APP_EXIT_OK;
  atomic_store(&app->exit_code, code);
  atomic_store(&app->root, 0);
  atomic_store(&app->state, ST_STOPPED);
  ev.kind = KEEL_APP_STOPPED;
  ev.root = 0;
  ev.forced = forced;
  ev.exit_code = code;
  dispatch(&ev);
  keel_exit(KEEL_REASON_NORMAL, NULL);
}

static void master_main(void *p) {
  master_arg ma = *(master_arg *)p; /* copied: the starter's stack is only ours until the ack */
  keel_app_t *app = ma.app;
  atomic_store(&app->master, keel_self());
  emit(app, KEEL_APP_STARTING);

  keel_pid_t sigpid = 0;
  keel_pid_t root = 0;
  void *state = app->config;
  start_reply rep = {.rc = 0, .kind = KEEL_REASON_NORMAL};
  int rc = 0;
  if (app->handle_signals && (rc = sig_start_watcher(&sigpid)) != 0)
    snprintf(rep.text, sizeof rep.text, "signal handlers: %s", keel_strerror(rc));
  if (rc == 0) {
    rc = app->beh->start(app, app->config, &root, &state);
    if (rc > 0) rc = 0;
    if (rc)
      snprintf(rep.text, sizeof rep.text, "start returned %s (%s)", keel_err_name(rc),
               keel_strerror(rc));
    else if (!root)
      snprintf(rep.text, sizeof rep.text, "start returned no root supervisor"), rc = KEEL_EINVAL;
    else if (keel_link(root) != 0)
      snprintf(rep.text, sizeof rep.text, "the root supervisor exited during start"),
          rc = KEEL_ENOPROC;
  }
  if (rc) {
    sig_stop_watcher(sigpid);
    atomic_store(&app->exit_code, KEEL_APP_EXIT_START_FAILED);
    atomic_store(&app->state, ST_FAILED);
    keel_app_event ev = {.kind = KEEL_APP_START_FAILED,
                         .name = app->name,
                         .app = app,
                         .error = rc,
                         .error_text = rep.text,
                         .exit_code = KEEL_APP_EXIT_START_FAILED};
    dispatch(&ev);
    rep.rc = rc;
    rep.kind = KEEL_REASON_ERROR;
    keel_reply(ma.starter, ma.ack, keel_msg_copy(0, &rep, sizeof rep));
    return;
  }
  atomic_store(&app->root, root);
  atomic_store(&app->state, ST_RUNNING);
  emit(app, KEEL_APP_STARTED);
  keel_reply(ma.starter, ma.ack, keel_msg_copy(0, &rep, sizeof rep));

  for (;;) {
    keel_msg_t *m = NULL;
    keel_receive(&m, KEEL_INFINITY);
    if (keel_msg_kind_of(m) == KEEL_MSG_EXIT) {
      keel_pid_t who;
      keel_reason r;
      keel_msg_exit_info(m, &who, &r);
      if (who == root) {
        char why[300];
        snprintf(why, sizeof why, "root supervisor exited: %s%s%s", keel_reason_name(r.kind),
                 r.text[0] ? ": " : "", r.text);
        keel_msg_free(m);
        master_stop(app, state, sigpid, KEEL_APP_STOP_ERROR, 0, true, why);
      }
      if (who == sigpid) sigpid = 0; /* the watcher died: signals are not handled any more */
    } else if (keel_msg_kind_of(m) == KEEL_MSG_USER && keel_msg_proto(m) == KEEL_PROTO_SYSTEM) {
      if (keel_msg_tag(m) == TAG_STOP) {
        keel_msg_free(m);
        master_stop(app, state, sigpid, KEEL_APP_STOP_NORMAL, 0, false, NULL);
      }
      if (keel_msg_tag(m) == TAG_SIGNAL && keel_msg_size(m) == sizeof(int)) {
        int signum;
        memcpy(&signum, keel_msg_data(m), sizeof signum);
        keel_msg_free(m);
        master_stop(app, state, sigpid, KEEL_APP_STOP_SIGNAL, signum, false, NULL);
      }
    }
    keel_msg_free(m);
  }
}

/* ---- API ------------------------------------------------------------------------------------ */

int keel_app_start(const keel_application *beh, const keel_app_opts *opts, keel_app_t **out,
                   keel_gs_exit *why) {
  if (out) *out = NULL;
  if (!beh || !beh->start || !out) return KEEL_EINVAL;
  if (!keel_self()) return KEEL_ENOTPROC;
  keel_app_opts defaults;
  if (!opts) {
    keel_app_opts_init(&defaults);
    opts = &defaults;
  }
  if ((opts->start_timeout < 0 && opts->start_timeout != KEEL_INFINITY) ||
      (opts->stop_timeout < 0 && opts->stop_timeout != KEEL_INFINITY))
    return KEEL_EINVAL;
  keel_app_t *app = calloc(1, sizeof *app);
  if (!app) return KEEL_ENOMEM;
  atomic_init(&app->refs, 2); /* the caller's and the master's */
  app->beh = beh;
  snprintf(app->name, sizeof app->name, "%s", opts->name ? opts->name : "app");
  app->config = opts->config;
  app->handle_signals = opts->handle_signals;
  app->start_timeout = opts->start_timeout ? opts->start_timeout : KEEL_APP_DEFAULT_START_TIMEOUT;
  app->stop_timeout = opts->stop_timeout ? opts->stop_timeout : KEEL_APP_DEFAULT_STOP_TIMEOUT;
  atomic_init(&app->state, ST_STARTING);
  atomic_init(&app->root, 0);
  atomic_init(&app->master, 0);
  atomic_init(&app->exit_code, -1);

  master_arg ma = {.app = app, .starter = keel_self()};
  keel_spawn_opts so;
  keel_spawn_opts_init(&so);
  so.trap_exit = true;
  so.monitor = true;
  so.await_monitor = true; /* the master's monitor and its answer: one await */
  so.monitor_ref = &ma.ack;
  so.name = app->name;
  keel_pid_t pid;
  int rc = keel_spawn(master_main, &ma, &so, &pid);
  keel_ref_t ref = ma.ack;
  if (rc) {
    free(app);
    return rc;
  }
  atomic_store(&app->master, pid);
  if (keel_on_exit_of(pid, app_release, app) != 0) app_release(app); /* already gone */

  keel_msg_t *m = NULL;
  rc = keel_await(ref, &m, app->start_timeout);
  if (rc == KEEL_ETIMEDOUT) {
    keel_exit_signal(pid, KEEL_REASON_KILL, NULL);
    wait_down(ref);
    atomic_store(&app->exit_code, KEEL_APP_EXIT_START_FAILED);
    atomic_store(&app->state, ST_FAILED);
    keel_app_event ev = {.kind = KEEL_APP_START_FAILED,
                         .name = app->name,
                         .app = app,
                         .error = KEEL_ETIMEDOUT,
                         .error_text = "start timed out",
                         .exit_code = KEEL_APP_EXIT_START_FAILED};
    dispatch(&ev);
    if (why) {
      why->kind = KEEL_REASON_KILLED;
      snprintf(why->text, sizeof why->text, "start timed out");
    }
    app_release(app);
    return KEEL_ETIMEDOUT;
  }
  if (keel_msg_kind_of(m) == KEEL_MSG_DOWN) { /* the master died during start */
    keel_pid_t who;
    keel_reason r;
    keel_msg_exit_info(m, &who, &r);
    char text[300];
    snprintf(text, sizeof text, "application master exited during start: %s%s%s",
             keel_reason_name(r.kind), r.text[0] ? ": " : "", r.text);
    if (why) {
      why->kind = r.kind;
      snprintf(why->text, sizeof why->text, "%s", r.text);
    }
    keel_msg_free(m);
    atomic_store(&app->exit_code, KEEL_APP_EXIT_START_FAILED);
    atomic_store(&app->state, ST_FAILED);
    keel_app_event ev = {.kind = KEEL_APP_START_FAILED,
                         .name = app->name,
                         .app = app,
                         .error = KEEL_EDOWN,
                         .error_text = text,
                         .exit_code = KEEL_APP_EXIT_START_FAILED};
    dispatch(&ev);
    app_release(app);
    return KEEL_EDOWN;
  }
  start_reply rep;
  memcpy(&rep, keel_msg_data(m), sizeof rep);
  keel_msg_free(m);
  if (rep.rc) {
    wait_down(ref); /* nothing of it outlives the error */
    if (why) {
      why->kind = rep.kind;
      snprintf(why->text, sizeof why->text, "%s", rep.text);
    }
    app_release(app);
    return rep.rc;
  }
  keel_demonitor(ref);
  *out = app;
  return 0;
}

int keel_app_stop_async(keel_app_t *app) {
  if (!app) return KEEL_EINVAL;
  keel_pid_t master = atomic_load(&app->master);
  if (!master) return KEEL_EINVAL;
  send_system(master, TAG_STOP, NULL, 0);
  return 0;
}

int keel_app_wait(keel_app_t *app, int64_t timeout_ms) {
  if (!app) return KEEL_EINVAL;
  if (!keel_self()) return KEEL_ENOTPROC;
  keel_pid_t master = atomic_load(&app->master);
  if (!master) return KEEL_EINVAL;
  keel_ref_t ref;
  int rc = keel_monitor(master, &ref);
  if (rc) return rc;
  if ((rc = keel_await_ref(ref)) != 0) {
    keel_demonitor(ref);
    return rc;
  }
  keel_msg_t *m = NULL;
  rc = keel_await(ref, &m, timeout_ms);
  if (rc) {
    keel_demonitor(ref);
    return rc;
  }
  keel_msg_free(m);
  return 0;
}

int keel_app_stop(keel_app_t *app) {
  if (!app) return KEEL_EINVAL;
  if (!keel_self()) return KEEL_ENOTPROC;
  int rc = keel_app_stop_async(app);
  if (rc) return rc;
  rc = keel_app_wait(app, KEEL_INFINITY);
  if (rc) return rc;
  switch (keel_app_exit_code(app)) {
  case KEEL_APP_EXIT_OK: return 0;
  case KEEL_APP_EXIT_FORCED: return KEEL_ETIMEDOUT;
  default: return KEEL_EDOWN;
  }
}

/* ---- as a program's main ----------------------------------------------------------------------
 */

typedef struct main_ctx {
  const keel_application *beh;
  const keel_app_opts *opts;
} main_ctx;

static void main_proc(void *p) {
  main_ctx *c = p;
  keel_app_t *app = NULL;
  if (keel_app_start(c->beh, c->opts, &app, NULL) != 0) {
    keel_rt_halt(KEEL_APP_EXIT_START_FAILED);
    return;
  }
  keel_app_wait(app, KEEL_INFINITY);
  int code = keel_app_exit_code(app);
  keel_app_free(app);
  keel_rt_halt(code < 0 ? KEEL_APP_EXIT_CRASHED : code);
}

int keel_app_main(const keel_application *beh, const keel_app_opts *opts, const keel_rt_opts *rt) {
  int rc = keel_rt_start(rt);
  if (rc) {
    fprintf(stderr, "keel: cannot start the runtime: %s\n", keel_strerror(rc));
    return KEEL_APP_EXIT_START_FAILED;
  }
  main_ctx c = {.beh = beh, .opts = opts};
  keel_spawn_opts so;
  keel_spawn_opts_init(&so);
  so.name = "main";
  rc = keel_spawn(main_proc, &c, &so, NULL);
  int status = rc ? KEEL_APP_EXIT_START_FAILED : keel_rt_wait();
  keel_rt_stop();
  return status < 0 ? KEEL_APP_EXIT_START_FAILED : status;
}
