/* supervisor.c - supervision trees, as a gen_server that traps exits.
 *
 * State: the children in start order (id, start function, restart type,
 * shutdown, current pid), the restart history of the last period, and for
 * simple_one_for_one the template and each child's copied arguments.
 *
 * A child exit arrives as an EXIT message (the supervisor traps exits and is
 * linked to every child), so the supervisor reacts at once; nothing polls.
 * handle_info decides from the child's restart type and exit reason whether
 * to restart, counts the restart against intensity/period, and applies the
 * strategy: one_for_one and simple_one_for_one restart the child,
 * one_for_all stops the others in reverse order and restarts everyone in
 * order, rest_for_one does that for the children after the one that exited.
 * A restart whose start fails is retried through a message to ourselves, and
 * counts as another restart, as in OTP. Past the intensity, the supervisor
 * stops all children in reverse order and exits with reason shutdown.
 *
 * Stopping a child is OTP's shutdown protocol: monitor it, unlink (which also
 * drops an EXIT from it already queued), send an exit signal `shutdown`, wait
 * for the DOWN up to the child's shutdown time, then kill it. brutal_kill
 * kills at once; infinity waits as long as it takes.
 *
 * The dynamic API (start_child, terminate_child, ...) is a set of gen_server
 * calls, so it is serialised with exit handling.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "keel/error.h"
#include "keel/gen_server.h"
#include "keel/gen_statem.h"
#include "keel/message.h"
#include "keel/process.h"
#include "keel/supervisor.h"
#include "keel/timer.h"
#include "otp/sublist.h"

#define DEFAULT_INTENSITY       3
#define DEFAULT_PERIOD_MS       5000
#define DEFAULT_WORKER_SHUTDOWN 5000

typedef struct child {
  char *id;
  const keel_gen_server *gen_server;
  const keel_gen_statem *gen_statem;
  const keel_sup_spec *supervisor;
  keel_sup_start_fn start;
  void *arg;
  char *name; /* gen_server, gen_statem or supervisor: registered name, or NULL */
  keel_sup_restart restart;
  int64_t shutdown;
  keel_sup_child_type type;
  bool significant;
  keel_pid_t pid; /* 0: not running */
  void *args;     /* simple_one_for_one: owned copy */
  size_t args_len;
  unsigned restarts;
} child;

typedef struct sup {
  keel_sup_strategy strategy;
  int intensity;
  int64_t period_ms;
  keel_sup_auto_shutdown auto_shutdown;
  child **c; /* start order */
  size_t n, cap;
  child tmpl;    /* simple_one_for_one */
  int64_t *hist; /* restart times (ms), oldest first */
  size_t nhist;
  char name[64];
  unsigned long long anon; /* simple_one_for_one child ids */
  unsigned restarts;       /* every restart this supervisor made */
  keel_pid_t self;
} sup;

/* ---- the list of live supervisors (for the observer) ------------------------------ */

static pthread_mutex_t list_lock = PTHREAD_MUTEX_INITIALIZER;
static keel_pid_t *list_v;
static size_t list_n, list_cap;

static int list_add(keel_pid_t pid) {
  pthread_mutex_lock(&list_lock);
  int rc = 0;
  if (list_n == list_cap) {
    size_t cap = list_cap ? list_cap * 2 : 16;
    keel_pid_t *v = realloc(list_v, cap * sizeof *v);
    if (!v) rc = KEEL_ENOMEM;
    else {
      list_v = v;
      list_cap = cap;
    }
  }
  if (!rc) list_v[list_n++] = pid;
  pthread_mutex_unlock(&list_lock);
  return rc;
}

static void list_del(keel_pid_t pid) {
  pthread_mutex_lock(&list_lock);
  for (size_t i = 0; i < list_n; i++)
    if (list_v[i] == pid) {
      memmove(&list_v[i], &list_v[i + 1], (list_n - i - 1) * sizeof *list_v);
      list_n--;
      break;
    }
  if (!list_n) { /* nothing left: give the memory back (no leak at exit) */
    free(list_v);
    list_v = NULL;
    list_cap = 0;
  }
  pthread_mutex_unlock(&list_lock);
}

size_t keel_sup_list(keel_pid_t *out, size_t max) {
  pthread_mutex_lock(&list_lock);
  size_t n = list_n;
  for (size_t i = 0; i < n && i < max; i++)
    out[i] = list_v[i];
  pthread_mutex_unlock(&list_lock);
  return n;
}

const char *keel_sup_strategy_name(keel_sup_strategy st) {
  switch (st) {
  case KEEL_SUP_ONE_FOR_ONE: return "one_for_one";
  case KEEL_SUP_ONE_FOR_ALL: return "one_for_all";
  case KEEL_SUP_REST_FOR_ONE: return "rest_for_one";
  case KEEL_SUP_SIMPLE_ONE_FOR_ONE: return "simple_one_for_one";
  }
  return "unknown";
}

/* ---- requests (gen_server calls) ------------------------------------------------ */

enum {
  OP_START_CHILD = 1,
  OP_START_ARGS,
  OP_TERMINATE,
  OP_RESTART,
  OP_DELETE,
  OP_WHICH_PID,
  OP_WHICH_CHILDREN,
  OP_COUNT,
  OP_INFO,
  OP_RETRY
};

typedef struct req {
  int op;
  const keel_sup_child_spec *spec; /* OP_START_CHILD: the caller blocks, so it stays valid */
  char id[64];
  keel_pid_t pid;
  size_t max; /* which_children */
  size_t args_len;
  unsigned char args[]; /* OP_START_ARGS */
} req;

typedef struct rep {
  int rc;
  keel_pid_t pid;
  keel_sup_child_counts counts;
  keel_sup_info sinfo; /* OP_INFO (its children array is not used here) */
  size_t n;
  keel_sup_child_info info[]; /* which_children */
} rep;

/* ---- events ---------------------------------------------------------------------- */

/* One list for every supervisor's events (sublist.h: no limit, unsubscribe
 * means no later call). */
static keel__sublist subs = KEEL__SUBLIST_INIT;

int keel_sup_subscribe(keel_sup_event_fn fn, void *ud) {
  return keel__sublist_add(&subs, (keel__sub_fn)fn, ud);
}

int keel_sup_unsubscribe(int handle) { return keel__sublist_remove(&subs, handle); }

static void call_sub(keel__sub_fn fn, void *ud, const void *ev) {
  ((keel_sup_event_fn)fn)(ev, ud);
}

static void emit(sup *s, keel_sup_event_kind kind, const child *c, keel_pid_t pid, unsigned attempt,
                 keel_reason_kind rk, const char *text) {
  keel_sup_event ev = {.kind = kind,
                       .sup = keel_self(),
                       .sup_name = s->name,
                       .child_id = c ? c->id : "",
                       .child = pid,
                       .attempt = attempt,
                       .reason = {rk, text ? text : ""}};
  keel__sublist_emit(&subs, call_sub, &ev);
}

/* ---- children -------------------------------------------------------------------- */

static int64_t shutdown_of(const child *c) {
  if (c->shutdown != KEEL_SUP_SHUTDOWN_DEFAULT) return c->shutdown;
  return c->type == KEEL_SUP_SUPERVISOR ? KEEL_SUP_SHUTDOWN_INFINITY : DEFAULT_WORKER_SHUTDOWN;
}

static child *child_new(const keel_sup_child_spec *spec, const char *id) {
  child *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->id = strdup(id ? id : (spec->id ? spec->id : ""));
  if (!c->id) {
    free(c);
    return NULL;
  }
  if (spec->name && !(c->name = strdup(spec->name))) {
    free(c->id);
    free(c);
    return NULL;
  }
  c->gen_server = spec->gen_server;
  c->gen_statem = spec->gen_statem;
  c->supervisor = spec->supervisor;
  c->start = spec->start;
  c->arg = spec->arg;
  c->restart = spec->restart;
  c->shutdown = spec->shutdown;
  c->type = spec->supervisor ? KEEL_SUP_SUPERVISOR : spec->type;
  c->significant = spec->significant;
  return c;
}

static void child_free(child *c) {
  free(c->id);
  free(c->name);
  free(c->args);
  free(c);
}

static child *find_id(sup *s, const char *id) {
  for (size_t i = 0; i < s->n; i++)
    if (strcmp(s->c[i]->id, id) == 0) return s->c[i];
  return NULL;
}

static size_t index_of(sup *s, const child *c) {
  for (size_t i = 0; i < s->n; i++)
    if (s->c[i] == c) return i;
  return s->n;
}

static child *find_pid(sup *s, keel_pid_t pid) {
  for (size_t i = 0; i < s->n; i++)
    if (s->c[i]->pid == pid) return s->c[i];
  return NULL;
}

static int add_child(sup *s, child *c) {
  if (s->n == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 8;
    child **nc = realloc(s->c, cap * sizeof *nc);
    if (!nc) return KEEL_ENOMEM;
    s->c = nc;
    s->cap = cap;
  }
  s->c[s->n++] = c;
  return 0;
}

static void remove_child(sup *s, child *c) {
  size_t i = index_of(s, c);
  if (i == s->n) return;
  memmove(&s->c[i], &s->c[i + 1], (s->n - i - 1) * sizeof *s->c);
  s->n--;
  child_free(c);
}

/* Starts c's process, linked to the supervisor (the caller). */
static int start_proc(const child *c, keel_pid_t *pid) {
  if (c->gen_server) {
    keel_gs_opts o = {.name = c->name, .link = true, .trap_exit = true};
    return keel_gs_start(c->gen_server, c->args_len ? c->args : c->arg, &o, pid, NULL);
  }
  if (c->gen_statem) {
    keel_gs_opts o = {.name = c->name, .link = true, .trap_exit = true};
    return keel_sm_start(c->gen_statem, c->args_len ? c->args : c->arg, &o, pid, NULL);
  }
  if (c->supervisor) {
    keel_sup_opts o = {.name = c->name, .link = true};
    return keel_sup_start(c->supervisor, &o, pid, NULL);
  }
  return c->start ? c->start(c->arg, c->args, c->args_len, pid) : KEEL_EINVAL;
}

/* Starts c; 0, KEEL_SUP_IGNORE or the error. */
static int start_one(sup *s, child *c) {
  keel_pid_t pid = 0;
  int rc = start_proc(c, &pid);
  if (rc == KEEL_SUP_IGNORE) {
    c->pid = 0;
    return KEEL_SUP_IGNORE;
  }
  if (rc < 0) {
    emit(s, KEEL_SUP_CHILD_START_FAILED, c, 0, c->restarts, KEEL_REASON_ERROR, keel_strerror(rc));
    return rc;
  }
  c->pid = pid;
  emit(s, KEEL_SUP_CHILD_STARTED, c, pid, c->restarts, KEEL_REASON_NORMAL, NULL);
  return 0;
}

static bool is_down_for(const keel_msg_t *m, void *arg) {
  return keel_msg_kind_of(m) == KEEL_MSG_DOWN && keel_msg_ref(m) == *(keel_ref_t *)arg;
}

/* OTP's shutdown protocol for one child. */
static void stop_one(sup *s, child *c) {
  keel_pid_t pid = c->pid;
  if (!pid) return;
  c->pid = 0;
  keel_ref_t mref;
  if (keel_monitor(pid, &mref) != 0) return;
  keel_unlink(pid); /* also drops an EXIT from it already queued */
  int64_t t = shutdown_of(c);
  keel_msg_t *m = NULL;
  if (t == KEEL_SUP_SHUTDOWN_BRUTAL_KILL) {
    keel_exit_signal(pid, KEEL_REASON_KILL, NULL);
  } else {
    keel_await_ref(mref);
    keel_exit_signal(pid, KEEL_REASON_SHUTDOWN, NULL);
    if (keel_await(mref, &m, t) == 0) {
      keel_msg_free(m);
      return;
    }
    emit(s, KEEL_SUP_CHILD_SHUTDOWN_TIMEOUT, c, pid, (unsigned)(t > UINT32_MAX ? UINT32_MAX : t),
         KEEL_REASON_KILL, "ignored its shutdown: killed");
    keel_exit_signal(pid, KEEL_REASON_KILL, NULL); /* it ignored shutdown */
  }
  if (keel_receive_match(is_down_for, &mref, &m, KEEL_INFINITY) == 0) keel_msg_free(m);
}

static void stop_from(sup *s, size_t first) {
  for (size_t i = s->n; i > first; i--)
    stop_one(s, s->c[i - 1]);
}

/* Records a restart; false when that exceeds the intensity. */
static bool count_restart(sup *s) {
  int64_t now = keel_monotonic_ms();
  size_t keep = 0;
  for (size_t i = 0; i < s->nhist; i++)
    if (now - s->hist[i] <= s->period_ms) s->hist[keep++] = s->hist[i];
  s->nhist = keep;
  if (s->intensity < 0) return false;
  int64_t *nh = realloc(s->hist, (s->nhist + 1) * sizeof *nh);
  if (nh) {
    s->hist = nh;
    s->hist[s->nhist++] = now;
  }
  return s->nhist <= (size_t)s->intensity;
}

static bool wants_restart(const child *c, keel_reason_kind kind) {
  switch (c->restart) {
  case KEEL_SUP_PERMANENT: return true;
  case KEEL_SUP_TRANSIENT: return kind != KEEL_REASON_NORMAL && kind != KEEL_REASON_SHUTDOWN;
  case KEEL_SUP_TEMPORARY: return false;
  }
  return false;
}

static void schedule_retry(child *c) {
  req r = {.op = OP_RETRY};
  snprintf(r.id, sizeof r.id, "%s", c->id);
  keel_gs_cast(keel_self(), keel_msg_copy(0, &r, sizeof r));
}

/* Restarts children [first, n) in order (those not running). */
static int restart_from(sup *s, size_t first) {
  for (size_t i = first; i < s->n; i++) {
    child *c = s->c[i];
    if (c->pid) continue;
    if (c->restart == KEEL_SUP_TEMPORARY && i != first) continue;
    int rc = start_one(s, c);
    if (rc < 0) {
      schedule_retry(c);
      return rc;
    }
  }
  return 0;
}

static int give_up(sup *s, const char *why) {
  emit(s, KEEL_SUP_INTENSITY_EXCEEDED, NULL, 0, (unsigned)s->nhist, KEEL_REASON_SHUTDOWN, why);
  stop_from(s, 0);
  return keel_gs_stopping(KEEL_REASON_SHUTDOWN, "%s", why);
}

static bool significant_running(sup *s) {
  for (size_t i = 0; i < s->n; i++)
    if (s->c[i]->significant && s->c[i]->pid) return true;
  return false;
}

/* Applies the strategy after c exited with reason r and must be restarted.
 * The RESTARTED event goes out once c runs again, with its new pid, the
 * attempt number within the period, and the reason that caused it. */
static int restart_after(sup *s, child *c, keel_reason r) {
  c->restarts++;
  s->restarts++;
  if (!count_restart(s)) return give_up(s, "reached max restart intensity");
  size_t i = index_of(s, c);
  switch (s->strategy) {
  case KEEL_SUP_ONE_FOR_ONE:
  case KEEL_SUP_SIMPLE_ONE_FOR_ONE:
    if (start_one(s, c) < 0) schedule_retry(c);
    break;
  case KEEL_SUP_ONE_FOR_ALL:
    stop_from(s, 0);
    restart_from(s, 0);
    break;
  case KEEL_SUP_REST_FOR_ONE:
    stop_from(s, i + 1);
    restart_from(s, i);
    break;
  }
  emit(s, KEEL_SUP_CHILD_RESTARTED, c, c->pid, (unsigned)s->nhist, r.kind, r.text);
  return KEEL_GS_OK;
}

static int on_exit_msg(sup *s, keel_pid_t pid, keel_reason r) {
  child *c = find_pid(s, pid);
  if (!c) return KEEL_GS_OK; /* not (or no longer) ours */
  c->pid = 0;
  emit(s, KEEL_SUP_CHILD_EXITED, c, pid, c->restarts, r.kind, r.text);
  if (wants_restart(c, r.kind)) return restart_after(s, c, r);
  bool significant = c->significant;
  if (c->restart == KEEL_SUP_TEMPORARY || s->strategy == KEEL_SUP_SIMPLE_ONE_FOR_ONE)
    remove_child(s, c); /* not restarted: gone */
  if (significant && s->auto_shutdown == KEEL_SUP_ANY_SIGNIFICANT) {
    stop_from(s, 0);
    return keel_gs_stopping(KEEL_REASON_SHUTDOWN, "a significant child exited");
  }
  if (significant && s->auto_shutdown == KEEL_SUP_ALL_SIGNIFICANT && !significant_running(s)) {
    stop_from(s, 0);
    return keel_gs_stopping(KEEL_REASON_SHUTDOWN, "all significant children exited");
  }
  return KEEL_GS_OK;
}

/* ---- gen_server callbacks -------------------------------------------------------- */

typedef struct init_arg {
  const keel_sup_spec *spec;
  const char *name;
} init_arg;

static void sup_free(sup *s) {
  for (size_t i = 0; i < s->n; i++)
    child_free(s->c[i]);
  free(s->c);
  free(s->tmpl.id);
  free(s->tmpl.name);
  free(s->hist);
  free(s);
}

static void sup_free_hook(void *arg) {
  sup *s = arg;
  if (s->self) list_del(s->self);
  sup_free(s);
}

static int sup_init(void *arg, void **state) {
  const init_arg *ia = arg;
  const keel_sup_spec *spec = ia->spec;
  sup *s = calloc(1, sizeof *s);
  if (!s) return KEEL_ENOMEM;
  /* The state is freed when the process ends, however it ends (a killed
   * supervisor runs no terminate). */
  if (keel_on_exit(sup_free_hook, s) != 0) {
    free(s);
    return KEEL_ENOMEM;
  }
  s->self = keel_self();
  if (list_add(s->self) != 0) s->self = 0; /* not listed: the observer will not see it */
  s->strategy = spec->strategy;
  s->intensity = spec->intensity == 0 ? DEFAULT_INTENSITY : spec->intensity;
  s->period_ms = spec->period_ms ? spec->period_ms : DEFAULT_PERIOD_MS;
  s->auto_shutdown = spec->auto_shutdown;
  snprintf(s->name, sizeof s->name, "%s", ia->name ? ia->name : "");
  if (s->strategy == KEEL_SUP_SIMPLE_ONE_FOR_ONE) {
    /* the state is freed by the exit hook, also when this fails */
    child *t = child_new(&spec->children[0], spec->children[0].id ? NULL : "child");
    if (!t) return KEEL_ENOMEM;
    s->tmpl = *t;
    free(t);
    *state = s;
    return 0;
  }
  for (size_t i = 0; i < spec->nchildren; i++) {
    child *c = child_new(&spec->children[i], NULL);
    if (!c || add_child(s, c) != 0) {
      if (c) child_free(c);
      return KEEL_ENOMEM;
    }
  }
  for (size_t i = 0; i < s->n; i++) {
    int rc = start_one(s, s->c[i]);
    if (rc < 0) {
      for (size_t j = i; j > 0; j--)
        stop_one(s, s->c[j - 1]); /* started ones, in reverse */
      char id[64];
      snprintf(id, sizeof id, "%s", s->c[i]->id);
      keel_gs_stopping(KEEL_REASON_SHUTDOWN, "child %s failed to start: %s", id, keel_strerror(rc));
      return rc;
    }
  }
  *state = s;
  return 0;
}

static void sup_terminate(keel_reason reason, void *state) {
  sup *s = state;
  stop_from(s, 0); /* the state itself goes with the process (sup_free_hook) */
}

static int sup_info(void *state, keel_msg_t **m) {
  sup *s = state;
  if (keel_msg_kind_of(*m) != KEEL_MSG_EXIT) return KEEL_GS_OK;
  keel_pid_t pid;
  keel_reason r;
  keel_msg_exit_info(*m, &pid, &r);
  return on_exit_msg(s, pid, r);
}

static int sup_cast(void *state, keel_msg_t **m) {
  sup *s = state;
  req r;
  if (keel_msg_size(*m) < sizeof r) return KEEL_GS_OK;
  memcpy(&r, keel_msg_data(*m), sizeof r);
  if (r.op != OP_RETRY) return KEEL_GS_OK;
  child *c = find_id(s, r.id);
  if (!c || c->pid) return KEEL_GS_OK;
  c->restarts++;
  s->restarts++;
  if (!count_restart(s)) return give_up(s, "reached max restart intensity");
  size_t i = index_of(s, c);
  if (s->strategy == KEEL_SUP_REST_FOR_ONE || s->strategy == KEEL_SUP_ONE_FOR_ALL)
    restart_from(s, s->strategy == KEEL_SUP_ONE_FOR_ALL ? 0 : i);
  else if (start_one(s, c) < 0)
    schedule_retry(c);
  emit(s, KEEL_SUP_CHILD_RESTARTED, c, c->pid, (unsigned)s->nhist, KEEL_REASON_ERROR,
       "retry after a failed start");
  return KEEL_GS_OK;
}

static keel_msg_t *reply_rc(int rc, keel_pid_t pid) {
  rep r = {.rc = rc, .pid = pid};
  return keel_msg_copy(0, &r, sizeof r);
}

/* Exactly one way to start it. */
static bool has_one_start(const keel_sup_child_spec *c) {
  return (c->gen_server != NULL) + (c->gen_statem != NULL) + (c->supervisor != NULL) +
             (c->start != NULL) ==
         1;
}

static bool spec_ok(const keel_sup_child_spec *c) {
  return c && c->id && *c->id && strlen(c->id) < 64 && has_one_start(c) &&
         !(c->significant && c->restart == KEEL_SUP_PERMANENT);
}

static int sup_call(void *state, keel_gs_from from, keel_msg_t **m, keel_msg_t **reply) {
  sup *s = state;
  const req *r = keel_msg_data(*m);
  if (keel_msg_size(*m) < sizeof *r) {
    *reply = reply_rc(KEEL_EINVAL, 0);
    return KEEL_GS_REPLY;
  }
  child *c;
  int rc;
  switch (r->op) {
  case OP_START_CHILD:
    if (s->strategy == KEEL_SUP_SIMPLE_ONE_FOR_ONE || !spec_ok(r->spec)) {
      *reply = reply_rc(KEEL_EINVAL, 0);
      break;
    }
    if (find_id(s, r->spec->id)) {
      *reply = reply_rc(KEEL_EEXIST, 0);
      break;
    }
    c = child_new(r->spec, NULL);
    if (!c || add_child(s, c) != 0) {
      if (c) child_free(c);
      *reply = reply_rc(KEEL_ENOMEM, 0);
      break;
    }
    rc = start_one(s, c);
    if (rc < 0) remove_child(s, c);
    *reply = reply_rc(rc < 0 ? rc : 0, rc < 0 ? 0 : c->pid);
    break;
  case OP_START_ARGS: {
    if (s->strategy != KEEL_SUP_SIMPLE_ONE_FOR_ONE) {
      *reply = reply_rc(KEEL_EINVAL, 0);
      break;
    }
    char id[64];
    snprintf(id, sizeof id, "%s-%llu", s->tmpl.id, ++s->anon);
    c = child_new(&(keel_sup_child_spec){.id = id,
                                         .gen_server = s->tmpl.gen_server,
                                         .gen_statem = s->tmpl.gen_statem,
                                         .supervisor = s->tmpl.supervisor,
                                         .start = s->tmpl.start,
                                         .arg = s->tmpl.arg,
                                         .name = s->tmpl.name,
                                         .restart = s->tmpl.restart,
                                         .shutdown = s->tmpl.shutdown,
                                         .type = s->tmpl.type},
                  id);
    if (c && r->args_len) {
      c->args = malloc(r->args_len);
      if (c->args) {
        memcpy(c->args, r->args, r->args_len);
        c->args_len = r->args_len;
      }
    }
    if (!c || (r->args_len && !c->args) || add_child(s, c) != 0) {
      if (c) child_free(c);
      *reply = reply_rc(KEEL_ENOMEM, 0);
      break;
    }
    rc = start_one(s, c);
    keel_pid_t pid = c->pid;
    if (rc != 0) remove_child(s, c); /* failed or ignored: simple_one_for_one keeps nothing */
    *reply = reply_rc(rc < 0 ? rc : 0, pid);
    break;
  }
  case OP_TERMINATE:
    c = r->id[0] ? find_id(s, r->id) : find_pid(s, r->pid);
    if (!c) {
      *reply = reply_rc(KEEL_ENOENT, 0);
      break;
    }
    stop_one(s, c);
    if (s->strategy == KEEL_SUP_SIMPLE_ONE_FOR_ONE || c->restart == KEEL_SUP_TEMPORARY)
      remove_child(s, c);
    *reply = reply_rc(0, 0);
    break;
  case OP_RESTART:
    c = find_id(s, r->id);
    if (!c || s->strategy == KEEL_SUP_SIMPLE_ONE_FOR_ONE)
      rc = KEEL_ENOENT;
    else if (c->pid)
      rc = KEEL_EBUSY;
    else
      rc = start_one(s, c);
    *reply = reply_rc(rc < 0 ? rc : 0, c && rc >= 0 ? c->pid : 0);
    break;
  case OP_DELETE:
    c = find_id(s, r->id);
    if (!c || s->strategy == KEEL_SUP_SIMPLE_ONE_FOR_ONE)
      rc = KEEL_ENOENT;
    else if (c->pid)
      rc = KEEL_EBUSY;
    else {
      remove_child(s, c);
      rc = 0;
    }
    *reply = reply_rc(rc, 0);
    break;
  case OP_WHICH_PID:
    c = find_id(s, r->id);
    *reply = reply_rc(c ? 0 : KEEL_ENOENT, c ? c->pid : 0);
    break;
  case OP_WHICH_CHILDREN: {
    size_t k = s->n < r->max ? s->n : r->max;
    keel_msg_t *out = keel_msg_new(0, sizeof(rep) + k * sizeof(keel_sup_child_info));
    if (!out) {
      *reply = reply_rc(KEEL_ENOMEM, 0);
      break;
    }
    rep *rp = keel_msg_data(out);
    memset(rp, 0, sizeof *rp);
    rp->n = s->n;
    for (size_t i = 0; i < k; i++) {
      keel_sup_child_info *ci = &rp->info[i];
      memset(ci, 0, sizeof *ci);
      snprintf(ci->id, sizeof ci->id, "%s", s->c[i]->id);
      ci->pid = s->c[i]->pid;
      ci->type = s->c[i]->type;
      ci->restart = s->c[i]->restart;
      ci->restarts = s->c[i]->restarts;
    }
    *reply = out;
    break;
  }
  case OP_INFO: {
    rep rp = {.rc = 0};
    keel_sup_info *si = &rp.sinfo;
    si->pid = s->self ? s->self : keel_self();
    snprintf(si->name, sizeof si->name, "%s", s->name);
    si->strategy = s->strategy;
    si->intensity = s->intensity;
    si->period_ms = s->period_ms;
    si->restarts = s->restarts;
    si->nchildren = s->n;
    *reply = keel_msg_copy(0, &rp, sizeof rp);
    break;
  }
  case OP_COUNT: {
    rep rp = {.rc = 0};
    rp.counts.specs = s->n;
    for (size_t i = 0; i < s->n; i++) {
      if (s->c[i]->pid) rp.counts.active++;
      if (s->c[i]->type == KEEL_SUP_SUPERVISOR)
        rp.counts.supervisors++;
      else
        rp.counts.workers++;
    }
    *reply = keel_msg_copy(0, &rp, sizeof rp);
    break;
  }
  default: *reply = reply_rc(KEEL_EINVAL, 0);
  }
  (void)from;
  return KEEL_GS_REPLY;
}

static const keel_gen_server sup_behaviour = {
    .init = sup_init,
    .handle_call = sup_call,
    .handle_cast = sup_cast,
    .handle_info = sup_info,
    .terminate = sup_terminate,
};

/* ---- public API -------------------------------------------------------------------- */

static uint64_t id_hash(const char *s) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  while (*s)
    h = (h ^ (unsigned char)*s++) * 1099511628211ull;
  return h;
}

/* Whether two children share an id: a hash set, so a supervisor with
 * thousands of children validates in linear time (pairwise strcmp was most
 * of supervisor_start with 1,000 children). */
static bool has_duplicate_id(const keel_sup_child_spec *c, size_t n) {
  size_t cap = 16;
  while (cap < n * 2)
    cap *= 2;
  const char **set = calloc(cap, sizeof *set);
  if (!set) { /* no memory for the set: fall back to pairwise */
    for (size_t i = 0; i < n; i++)
      for (size_t j = 0; j < i; j++)
        if (strcmp(c[i].id, c[j].id) == 0) return true;
    return false;
  }
  bool dup = false;
  for (size_t i = 0; i < n && !dup; i++) {
    size_t k = id_hash(c[i].id) & (cap - 1);
    while (set[k] && !(dup = strcmp(set[k], c[i].id) == 0))
      k = (k + 1) & (cap - 1);
    set[k] = c[i].id;
  }
  free(set);
  return dup;
}

static int validate(const keel_sup_spec *spec) {
  if (!spec) return KEEL_EINVAL;
  if (spec->strategy == KEEL_SUP_SIMPLE_ONE_FOR_ONE) {
    if (spec->nchildren != 1 || !spec->children || !has_one_start(&spec->children[0]))
      return KEEL_EINVAL;
    return 0;
  }
  if (spec->nchildren && !spec->children) return KEEL_EINVAL;
  for (size_t i = 0; i < spec->nchildren; i++)
    if (!spec_ok(&spec->children[i])) return KEEL_EINVAL;
  return has_duplicate_id(spec->children, spec->nchildren) ? KEEL_EINVAL : 0;
}

int keel_sup_start(const keel_sup_spec *spec, const keel_sup_opts *opts, keel_pid_t *out,
                   keel_gs_exit *why) {
  if (out) *out = 0;
  int rc = validate(spec);
  if (rc) return rc;
  keel_gs_opts go;
  keel_gs_opts_init(&go);
  go.name = opts ? opts->name : NULL;
  go.link = opts ? opts->link : false;
  go.trap_exit = true;
  go.init_timeout = KEEL_INFINITY; /* children have their own init timeouts */
  init_arg ia = {spec, go.name};
  return keel_gs_start(&sup_behaviour, &ia, &go, out, why);
}

static int call(keel_pid_t s, req *r, size_t len, rep *out) {
  keel_msg_t *reply = NULL;
  int rc = keel_gs_call(s, keel_msg_copy(0, r, len), &reply, KEEL_INFINITY, NULL);
  if (rc) return rc;
  if (out) memcpy(out, keel_msg_data(reply), sizeof *out);
  rc = ((rep *)keel_msg_data(reply))->rc;
  keel_msg_free(reply);
  return rc;
}

static int id_req(req *r, int op, const char *id) {
  memset(r, 0, sizeof *r);
  r->op = op;
  if (!id || !*id || strlen(id) >= sizeof r->id) return KEEL_EINVAL;
  snprintf(r->id, sizeof r->id, "%s", id);
  return 0;
}

int keel_sup_start_child(keel_pid_t s, const keel_sup_child_spec *spec, keel_pid_t *pid) {
  if (pid) *pid = 0;
  if (!spec_ok(spec)) return KEEL_EINVAL;
  req r = {.op = OP_START_CHILD, .spec = spec};
  rep out;
  int rc = call(s, &r, sizeof r, &out);
  if (rc == 0 && pid) *pid = out.pid;
  return rc;
}

int keel_sup_start_child_args(keel_pid_t s, const void *args, size_t args_len, keel_pid_t *pid) {
  if (pid) *pid = 0;
  req *r = calloc(1, sizeof *r + args_len);
  if (!r) return KEEL_ENOMEM;
  r->op = OP_START_ARGS;
  r->args_len = args_len;
  if (args_len) memcpy(r->args, args, args_len);
  rep out;
  int rc = call(s, r, sizeof *r + args_len, &out);
  free(r);
  if (rc == 0 && pid) *pid = out.pid;
  return rc;
}

int keel_sup_terminate_child(keel_pid_t s, const char *id, keel_pid_t pid) {
  req r;
  memset(&r, 0, sizeof r);
  r.op = OP_TERMINATE;
  if (id) {
    if (id_req(&r, OP_TERMINATE, id)) return KEEL_EINVAL;
  } else {
    if (!pid) return KEEL_EINVAL;
    r.pid = pid;
  }
  return call(s, &r, sizeof r, NULL);
}

int keel_sup_restart_child(keel_pid_t s, const char *id, keel_pid_t *pid) {
  if (pid) *pid = 0;
  req r;
  if (id_req(&r, OP_RESTART, id)) return KEEL_EINVAL;
  rep out;
  int rc = call(s, &r, sizeof r, &out);
  if (rc == 0 && pid) *pid = out.pid;
  return rc;
}

int keel_sup_delete_child(keel_pid_t s, const char *id) {
  req r;
  if (id_req(&r, OP_DELETE, id)) return KEEL_EINVAL;
  return call(s, &r, sizeof r, NULL);
}

int keel_sup_which_pid(keel_pid_t s, const char *id, keel_pid_t *pid) {
  if (pid) *pid = 0;
  req r;
  if (id_req(&r, OP_WHICH_PID, id)) return KEEL_EINVAL;
  rep out;
  int rc = call(s, &r, sizeof r, &out);
  if (rc == 0 && pid) *pid = out.pid;
  return rc;
}

int keel_sup_which_children(keel_pid_t s, keel_sup_child_info *out, size_t max, size_t *n) {
  if (n) *n = 0;
  req r = {.op = OP_WHICH_CHILDREN, .max = out ? max : 0};
  keel_msg_t *reply = NULL;
  int rc = keel_gs_call(s, keel_msg_copy(0, &r, sizeof r), &reply, KEEL_INFINITY, NULL);
  if (rc) return rc;
  const rep *rp = keel_msg_data(reply);
  rc = rp->rc;
  if (rc == 0) {
    size_t k = rp->n < r.max ? rp->n : r.max;
    if (k) memcpy(out, rp->info, k * sizeof *out);
    if (n) *n = rp->n;
  }
  keel_msg_free(reply);
  return rc;
}

int keel_sup_count_children(keel_pid_t s, keel_sup_child_counts *out) {
  req r = {.op = OP_COUNT};
  rep rp;
  int rc = call(s, &r, sizeof r, &rp);
  if (rc == 0 && out) *out = rp.counts;
  return rc;
}

int keel_sup_info_get(keel_pid_t s, int64_t timeout_ms, keel_sup_info *out) {
  if (!out) return KEEL_EINVAL;
  memset(out, 0, sizeof *out);
  req r = {.op = OP_INFO};
  keel_msg_t *reply = NULL;
  int rc = keel_gs_call(s, keel_msg_copy(0, &r, sizeof r), &reply, timeout_ms, NULL);
  if (rc) return rc;
  const rep *rp = keel_msg_data(reply);
  rc = rp->rc;
  if (rc == 0) *out = rp->sinfo;
  keel_msg_free(reply);
  if (rc || !out->nchildren) return rc;
  /* the children in a second call: their number may have changed between
   * the two, so take what the second one says */
  size_t want = out->nchildren + 16, n = 0;
  keel_sup_child_info *v = calloc(want, sizeof *v);
  if (!v) return KEEL_ENOMEM;
  req r2 = {.op = OP_WHICH_CHILDREN, .max = want};
  rc = keel_gs_call(s, keel_msg_copy(0, &r2, sizeof r2), &reply, timeout_ms, NULL);
  if (rc) {
    free(v);
    return rc;
  }
  rp = keel_msg_data(reply);
  if ((rc = rp->rc) == 0) {
    n = rp->n < want ? rp->n : want;
    memcpy(v, rp->info, n * sizeof *v);
  }
  keel_msg_free(reply);
  if (rc) {
    free(v);
    return rc;
  }
  out->children = v;
  out->nchildren = n;
  return 0;
}

void keel_sup_info_free(keel_sup_info *info) {
  if (!info) return;
  free(info->children);
  info->children = NULL;
  info->nchildren = 0;
}
