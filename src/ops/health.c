/* health.c - health checks and the live / ready / startup / detailed probes.
 *
 * The node has one registry of checks: a list of refcounted entries under a
 * mutex. A probe takes a reference on each entry it will run, then spawns
 * one process per check, all before it waits for any: each process is
 * monitored with a reference the probe armed (keel_await_ref), and replies
 * with that reference, so the probe collects each outcome in O(1) with
 * keel_await, in turn, each until its own absolute deadline. The three
 * outcomes: a reply (status, duration measured by the check process itself,
 * message, details serialised into the payload), a DOWN (the check crashed:
 * critical with the reason), or the deadline (critical "timeout"; the process
 * is killed and demonitored, and a reply it still sends is dropped because
 * the reference is disarmed). Waiting in turn is enough for concurrency: the
 * processes run meanwhile, and the total wait is the largest deadline. The
 * check processes are placed on schedulers other than the probe's (skipping
 * any the watchdog flags stuck), because the probe's deadline is a timer on
 * its own scheduler's loop, which a check that never yields would stop.
 *
 * Lifetimes. A check process's argument is shared by the probe and the
 * process (two shares); the process's share is released by an exit hook
 * installed with keel_on_exit_of, which runs whatever way the process ends,
 * even if it is destroyed by keel_rt_stop before it ever ran. The argument
 * holds a reference on the entry, so a check unregistered while it runs
 * keeps its name and ud until its last process ended; then ud_free runs.
 * A check killed for its timeout counts as a "zombie" of its entry until its
 * exit hook ran; while one is pending, later probes report it as timed out
 * without spawning another, so a check that hangs its process (blocking
 * system call, endless loop) cannot pile up processes.
 *
 * live pings every scheduler with a process pinned to it (spawn option
 * scheduler = i). A ping that runs there proves the scheduler answers; one
 * that was stolen or is late leaves the probe watching keel_rt_sched_info:
 * a scheduler seen switching or idle is responsive, one held by the same
 * process with no switch for the whole live timeout is not.
 *
 * Restarts are counted by a supervisor-event subscriber (installed once, on
 * the first call of any keel_health_ function) into a ring of the last 1024
 * restart times, so "restarts in the last window" is exact up to 1024.
 *
 * Sections let other modules (the alert manager) add top-level members to
 * the detailed body; a probe marks a section busy while it calls it, and
 * replacing or removing one waits until it is not busy.
 *
 * JSON is built with jansson (not a hot path). Status words and field names
 * follow the reference the users know: "ok" / "warning" / "critical" per
 * check, "healthy" / "degraded" / "unhealthy" overall, "alive", "ready" /
 * "not_ready", "started" / "starting".
 *
 * The checks keel registers itself (processes, restarts, memory,
 * schedulers) are in health_builtin.c.
 */
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "keel/health.h"
#include "keel/message.h"
#include "keel/process.h"
#include "keel/runtime.h"
#include "keel/supervisor.h"
#include "keel/timer.h"
#include "keel/sysinfo.h"
#include "ops/health_internal.h"

#define NAME_MAX_       63
#define DEFAULT_LIVE_MS 500
#define RING            1024

/* ---- state ------------------------------------------------------------------ */

typedef struct entry {
  struct entry *next;
  char name[NAME_MAX_ + 1];
  keel_health_fn fn;
  void *ud;
  void (*ud_free)(void *);
  bool required;
  int64_t timeout_ms;
  /* Owners: the registry (1), each probe that snapshotted it, each check
   * argument. acq_rel on the decrement: the last owner sees every write the
   * others made before they let go, then frees. */
  atomic_int refs;
  /* Processes killed for their timeout whose exit hook has not run yet.
   * Relaxed: a hint for the next probe, no other memory depends on it. */
  atomic_int zombies;
} entry;

typedef struct section {
  struct section *next;
  char key[NAME_MAX_ + 1];
  char *(*fn)(void *);
  void *ud;
  int busy; /* probes inside fn; under mu */
} section;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER; /* checks, sections, service */
static pthread_cond_t section_cv = PTHREAD_COND_INITIALIZER;
static entry *checks;
static section *sections;
static char *service_name, *service_version;

/* Flags read by probes on any thread. Relaxed: each is a single independent
 * word; a probe that reads a value a moment old answers as it would have a
 * moment earlier, which is all a probe promises. */
static atomic_bool started, draining;
static _Atomic int64_t live_timeout_ms;

static pthread_mutex_t rmu = PTHREAD_MUTEX_INITIALIZER; /* the restart ring */
static uint64_t ring[RING];
static uint64_t restarts_total;

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static void on_sup_event(const keel_sup_event *ev, void *ud) {
  (void)ud;
  if (ev->kind != KEEL_SUP_CHILD_RESTARTED) return;
  uint64_t t = (uint64_t)keel_monotonic_ms();
  pthread_mutex_lock(&rmu);
  ring[restarts_total % RING] = t;
  restarts_total++;
  pthread_mutex_unlock(&rmu);
}

static void init(void) {
  keel_sup_subscribe(on_sup_event, NULL);
}
void keel__health_init(void) {
  pthread_once(&init_once, init);
}

void keel_health_restarts(int64_t window_ms, uint64_t *total, uint64_t *recent) {
  keel__health_init();
  uint64_t t = (uint64_t)keel_monotonic_ms(), n = 0;
  pthread_mutex_lock(&rmu);
  uint64_t have = restarts_total < RING ? restarts_total : RING;
  for (uint64_t i = 0; i < have; i++)
    if (window_ms < 0 || t - ring[i] < (uint64_t)window_ms) n++;
  if (total) *total = restarts_total;
  pthread_mutex_unlock(&rmu);
  if (recent) *recent = n;
}

const char *keel_health_status_name(keel_health_status s) {
  switch (s) {
  case KEEL_HEALTH_OK: return "ok";
  case KEEL_HEALTH_WARNING: return "warning";
  default: return "critical";
  }
}

int keel_health_result_message(keel_health_result *res, const char *fmt, ...) {
  if (!res || !fmt) return KEEL_EINVAL;
  va_list ap;
  va_start(ap, fmt);
  char *s = NULL;
  int n = vasprintf(&s, fmt, ap);
  va_end(ap);
  if (n < 0) return KEEL_ENOMEM;
  free(res->message);
  res->message = s;
  return 0;
}

/* ---- registry -------------------------------------------------------------- */

static void entry_unref(entry *e) {
  if (atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) != 1) return;
  if (e->ud_free) e->ud_free(e->ud);
  free(e);
}

static bool name_ok(const char *name) {
  return name && name[0] && strlen(name) <= NAME_MAX_;
}

int keel_health_register_check(const keel_health_check *c) {
  keel__health_init();
  if (!c || !c->fn || !name_ok(c->name) || c->timeout_ms < 0) return KEEL_EINVAL;
  entry *e = calloc(1, sizeof *e);
  if (!e) return KEEL_ENOMEM;
  strcpy(e->name, c->name);
  e->fn = c->fn;
  e->ud = c->ud;
  e->ud_free = c->ud_free;
  e->required = c->required;
  e->timeout_ms = c->timeout_ms ? c->timeout_ms : KEEL__HEALTH_TIMEOUT_DEFAULT;
  atomic_init(&e->refs, 1);
  atomic_init(&e->zombies, 0);
  pthread_mutex_lock(&mu);
  entry **pp = &checks;
  for (; *pp; pp = &(*pp)->next)
    if (strcmp((*pp)->name, e->name) == 0) {
      pthread_mutex_unlock(&mu);
      free(e);
      return KEEL_EEXIST;
    }
  *pp = e; /* at the end: probes report checks in registration order */
  pthread_mutex_unlock(&mu);
  return 0;
}

int keel_health_register(const char *name, keel_health_fn fn, void *ud, bool required,
                         int64_t timeout_ms) {
  keel_health_check c = {
      .name = name, .fn = fn, .ud = ud, .required = required, .timeout_ms = timeout_ms};
  return keel_health_register_check(&c);
}

int keel_health_unregister(const char *name) {
  keel__health_init();
  if (!name) return KEEL_EINVAL;
  pthread_mutex_lock(&mu);
  for (entry **pp = &checks; *pp; pp = &(*pp)->next)
    if (strcmp((*pp)->name, name) == 0) {
      entry *e = *pp;
      *pp = e->next;
      pthread_mutex_unlock(&mu);
      entry_unref(e);
      return 0;
    }
  pthread_mutex_unlock(&mu);
  return KEEL_ENOENT;
}

void keel_health_set_started(bool on) {
  keel__health_init();
  atomic_store_explicit(&started, on, memory_order_relaxed);
}

void keel_health_set_draining(bool on) {
  keel__health_init();
  atomic_store_explicit(&draining, on, memory_order_relaxed);
}

void keel_health_set_live_timeout(int64_t ms) {
  keel__health_init();
  atomic_store_explicit(&live_timeout_ms, ms > 0 ? ms : 0, memory_order_relaxed);
}

void keel_health_set_service(const char *name, const char *version) {
  keel__health_init();
  char *n = name ? strdup(name) : NULL, *v = version ? strdup(version) : NULL;
  pthread_mutex_lock(&mu);
  char *on = service_name, *ov = service_version;
  service_name = n;
  service_version = v;
  pthread_mutex_unlock(&mu);
  free(on);
  free(ov);
}

/* ---- sections --------------------------------------------------------------- */

static const char *const reserved[] = {"status",  "timestamp", "uptime",   "service",
                                       "version", "processes", "restarts", "memory",
                                       "checks",  "started",   "draining", NULL};

/* Waits (mu held) until no probe is inside s->fn; s is already unlinked. */
static void section_drain(section *s) {
  while (s->busy > 0) {
    if (keel_self()) {
      /* A scheduler thread must not block: the busy probe may need it. */
      pthread_mutex_unlock(&mu);
      keel_sleep(1);
      pthread_mutex_lock(&mu);
    } else {
      pthread_cond_wait(&section_cv, &mu);
    }
  }
}

int keel_health_set_section(const char *key, char *(*fn)(void *ud), void *ud) {
  keel__health_init();
  if (!name_ok(key)) return KEEL_EINVAL;
  for (const char *const *r = reserved; *r; r++)
    if (strcmp(*r, key) == 0) return KEEL_EINVAL;
  section *ns = NULL;
  if (fn) {
    ns = calloc(1, sizeof *ns);
    if (!ns) return KEEL_ENOMEM;
    strcpy(ns->key, key);
    ns->fn = fn;
    ns->ud = ud;
  }
  pthread_mutex_lock(&mu);
  section *old = NULL;
  section **pp = &sections;
  for (; *pp; pp = &(*pp)->next)
    if (strcmp((*pp)->key, key) == 0) {
      old = *pp;
      break;
    }
  if (old) {
    if (ns) {
      ns->next = old->next;
      *pp = ns; /* keeps its place in the body */
    } else {
      *pp = old->next;
    }
    section_drain(old);
  } else if (ns) {
    *pp = ns;
  }
  pthread_mutex_unlock(&mu);
  free(old);
  return old || ns ? 0 : KEEL_ENOENT;
}

void keel_health_reset(void) {
  keel__health_init();
  pthread_mutex_lock(&mu);
  entry *cl = checks;
  checks = NULL;
  while (sections) {
    section *s = sections;
    sections = s->next;
    section_drain(s);
    free(s);
  }
  char *on = service_name, *ov = service_version;
  service_name = service_version = NULL;
  pthread_mutex_unlock(&mu);
  free(on);
  free(ov);
  while (cl) {
    entry *n = cl->next;
    entry_unref(cl);
    cl = n;
  }
  atomic_store_explicit(&started, false, memory_order_relaxed);
  atomic_store_explicit(&draining, false, memory_order_relaxed);
  atomic_store_explicit(&live_timeout_ms, 0, memory_order_relaxed);
  pthread_mutex_lock(&rmu);
  restarts_total = 0;
  pthread_mutex_unlock(&rmu);
}

/* ---- running checks ---------------------------------------------------------- */

/* The reply payload; message and details bytes follow. */
typedef struct wire {
  double duration_ms;
  uint32_t status, msg_len, det_len;
} wire;

/* Shared by the probe and the check process (see the top of the file). */
typedef struct check_arg {
  entry *e;
  keel_pid_t caller;
  keel_ref_t ref;
  atomic_int shares; /* acq_rel decrement: the last one frees after the other's writes */
  atomic_int phase;  /* 0 running, 1 killed by the probe, 2 ended; seq_cst CAS/exchange
                        so probe and hook agree on who saw what first */
} check_arg;

static void arg_release(check_arg *a) {
  if (atomic_fetch_sub_explicit(&a->shares, 1, memory_order_acq_rel) != 1) return;
  entry_unref(a->e);
  free(a);
}

/* Health's own processes (checks, scheduler pings) while they live: not
 * the service's, so not counted in processCount or the processes check
 * (which would otherwise disagree in one body by the checks running).
 * relaxed: a count, read for a report. */
static atomic_size_t own_procs;

/* The process's exit hook: it ended (however), so it is no zombie any more. */
static void check_ended(void *p) {
  check_arg *a = p;
  atomic_fetch_sub_explicit(&own_procs, 1, memory_order_relaxed);
  if (atomic_exchange(&a->phase, 2) == 1)
    atomic_fetch_sub_explicit(&a->e->zombies, 1, memory_order_relaxed);
  arg_release(a);
}

static void ping_ended(void *p) {
  atomic_fetch_sub_explicit(&own_procs, 1, memory_order_relaxed);
  free(p);
}

static void check_main(void *p) {
  check_arg *a = p;
  keel_health_result res = {0};
  uint64_t t0 = keel_monotonic_ns();
  keel_health_status st = a->e->fn(a->e->ud, &res);
  double dur = (double)(keel_monotonic_ns() - t0) / 1e6;
  size_t ml = res.message ? strlen(res.message) : 0, dl = res.details ? strlen(res.details) : 0;
  keel_msg_t *m = keel_msg_new(0, sizeof(wire) + ml + dl);
  if (m) {
    wire w = {.duration_ms = dur,
              .status = (uint32_t)st,
              .msg_len = (uint32_t)ml,
              .det_len = (uint32_t)dl};
    char *d = keel_msg_data(m);
    memcpy(d, &w, sizeof w);
    if (ml) memcpy(d + sizeof w, res.message, ml);
    if (dl) memcpy(d + sizeof w + ml, res.details, dl);
  }
  free(res.message);
  free(res.details);
  if (!m) keel_exit(KEEL_REASON_ERROR, "out of memory for the check's result");
  keel_reply(a->caller, a->ref, m);
}

/* One check in one probe. */
typedef struct run {
  entry *e;
  check_arg *arg; /* the probe's share, NULL when nothing was spawned */
  keel_pid_t pid;
  keel_ref_t ref;
  uint64_t t0_ns, deadline_ms;
  keel_health_status status;
  double duration_ms;
  char *message, *details;
} run;

char *keel__health_dupf(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char *s = NULL;
  if (vasprintf(&s, fmt, ap) < 0) s = NULL;
  va_end(ap);
  return s;
}

static void run_start(run *r, int place) {
  entry *e = r->e;
  r->t0_ns = keel_monotonic_ns();
  r->deadline_ms = r->t0_ns / 1000000u + (uint64_t)e->timeout_ms;
  if (atomic_load_explicit(&e->zombies, memory_order_relaxed) > 0) {
    r->status = KEEL_HEALTH_CRITICAL;
    r->message = strdup("timeout (the previous run has not ended)");
    return;
  }
  check_arg *a = calloc(1, sizeof *a);
  r->ref = keel_make_ref();
  int rc = a ? keel_await_ref(r->ref) : KEEL_ENOMEM;
  if (rc) {
    free(a);
    r->status = KEEL_HEALTH_CRITICAL;
    r->message = keel__health_dupf("could not start: %s", keel_strerror(rc));
    return;
  }
  /* relaxed: taken by a holder of another reference, which keeps e alive */
  atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed); /* the argument's */
  a->e = e;
  a->caller = keel_self();
  a->ref = r->ref;
  atomic_init(&a->shares, 2);
  atomic_init(&a->phase, 0);
  keel_spawn_opts o;
  keel_spawn_opts_init(&o);
  o.monitor = true;
  o.monitor_with = r->ref;
  o.scheduler = KEEL_ON_SCHEDULER(place);
  char pname[32];
  memcpy(pname, "health:", 7);
  size_t nl = strnlen(e->name, sizeof pname - 8);
  memcpy(pname + 7, e->name, nl); /* a label: truncated to what fits */
  pname[7 + nl] = 0;
  o.name = pname;
  atomic_fetch_add_explicit(&own_procs, 1, memory_order_relaxed); /* check_ended takes it back */
  rc = keel_spawn(check_main, a, &o, &r->pid);
  if (rc) {
    atomic_fetch_sub_explicit(&own_procs, 1, memory_order_relaxed);
    keel_await_cancel(r->ref);
    entry_unref(e);
    free(a);
    r->status = KEEL_HEALTH_CRITICAL;
    r->message = keel__health_dupf("could not start: %s", keel_strerror(rc));
    return;
  }
  r->arg = a;
  if (keel_on_exit_of(r->pid, check_ended, a) != 0) check_ended(a); /* already ended */
}

static void run_collect(run *r) {
  if (!r->arg) return;
  uint64_t t = (uint64_t)keel_monotonic_ms();
  int64_t left = r->deadline_ms > t ? (int64_t)(r->deadline_ms - t) : 0;
  keel_msg_t *m = NULL;
  int rc = keel_await(r->ref, &m, left > 0 ? left : KEEL_NOWAIT);
  if (rc == 0 && keel_msg_kind_of(m) == KEEL_MSG_REPLY) {
    keel_demonitor(r->ref); /* and its DOWN (normal) with it */
    wire w;
    const char *d = keel_msg_data(m);
    size_t sz = keel_msg_size(m);
    if (sz >= sizeof w) memcpy(&w, d, sizeof w);
    if (sz < sizeof w || sz != sizeof w + w.msg_len + w.det_len) {
      r->status = KEEL_HEALTH_CRITICAL;
      r->message = strdup("malformed result");
    } else {
      r->status =
          w.status <= KEEL_HEALTH_CRITICAL ? (keel_health_status)w.status : KEEL_HEALTH_CRITICAL;
      r->duration_ms = w.duration_ms;
      if (w.status > KEEL_HEALTH_CRITICAL)
        r->message = keel__health_dupf("invalid status %" PRIu32, w.status);
      else if (w.msg_len)
        r->message = strndup(d + sizeof w, w.msg_len);
      if (w.det_len) r->details = strndup(d + sizeof w + w.msg_len, w.det_len);
    }
  } else if (rc == 0) { /* DOWN: it ended without replying */
    keel_pid_t who;
    keel_reason why;
    keel_msg_exit_info(m, &who, &why);
    r->status = KEEL_HEALTH_CRITICAL;
    r->duration_ms = (double)(keel_monotonic_ns() - r->t0_ns) / 1e6;
    r->message = why.text && why.text[0]
                     ? keel__health_dupf("crashed: %s", why.text)
                     : keel__health_dupf("crashed: exited (%s) without a result",
                                         keel_reason_name(why.kind));
  } else { /* the deadline */
    keel_exit_signal(r->pid, KEEL_REASON_KILL, NULL);
    keel_demonitor(r->ref);
    int zero = 0;
    if (atomic_compare_exchange_strong(&r->arg->phase, &zero, 1))
      atomic_fetch_add_explicit(&r->e->zombies, 1, memory_order_relaxed);
    r->status = KEEL_HEALTH_CRITICAL;
    r->duration_ms = (double)r->e->timeout_ms;
    r->message = strdup("timeout");
  }
  keel_msg_free(m);
}

static void runs_free(run *rs, size_t n) {
  for (size_t i = 0; i < n; i++) {
    free(rs[i].message);
    free(rs[i].details);
  }
  free(rs);
}

/* Runs every check (or only the required ones) concurrently; *out gets the
 * outcomes in registration order, holding a reference on each entry until
 * runs_release. */
static int run_checks(bool required_only, run **out, size_t *nout) {
  *out = NULL;
  *nout = 0;
  pthread_mutex_lock(&mu);
  size_t n = 0;
  for (entry *e = checks; e; e = e->next)
    if (!required_only || e->required) n++;
  run *rs = n ? calloc(n, sizeof *rs) : NULL;
  if (n && !rs) {
    pthread_mutex_unlock(&mu);
    return KEEL_ENOMEM;
  }
  size_t i = 0;
  for (entry *e = checks; e; e = e->next)
    if (!required_only || e->required) {
      atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed); /* the probe's */
      rs[i++].e = e;
    }
  pthread_mutex_unlock(&mu);

  /* Checks go to the other schedulers, round robin: the probe waits on a
   * timer of its own scheduler's loop, which a check that never yields would
   * stop along with the deadline. Schedulers seen stuck are skipped (what is
   * spawned onto one waits in its inbox, which nobody can steal from); when
   * every other one is stuck, or there is only one, checks run here. */
  int ns = keel_sched_count(), here = keel_sched_current();
  int places[64], np = 0;
  for (int k = 1; k < ns && here >= 0 && np < 64; k++) {
    keel_sched_info si;
    int id = (here + k) % ns;
    if (keel_rt_sched_info(id, &si) == 0 && !si.stuck) places[np++] = id;
  }
  for (i = 0; i < n; i++)
    run_start(&rs[i], np ? places[i % (size_t)np] : -1);
  for (i = 0; i < n; i++)
    run_collect(&rs[i]);
  for (i = 0; i < n; i++) {
    if (rs[i].arg) arg_release(rs[i].arg);
    rs[i].arg = NULL;
  }
  *out = rs;
  *nout = n;
  return 0;
}

static void runs_release(run *rs, size_t n) {
  for (size_t i = 0; i < n; i++)
    entry_unref(rs[i].e);
  runs_free(rs, n);
}

/* ---- JSON -------------------------------------------------------------------- */

static void timestamp(char *buf, size_t len) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  size_t k = strftime(buf, len, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(buf + k, len - k, ".%03ldZ", ts.tv_nsec / 1000000);
}

static json_t *body_new(const char *status) {
  char ts[40];
  timestamp(ts, sizeof ts);
  json_t *o = json_object();
  json_object_set_new(o, "status", json_string(status));
  json_object_set_new(o, "timestamp", json_string(ts));
  return o;
}

static double round3(double x) {
  return round(x * 1000.0) / 1000.0;
}

static json_t *check_json(const run *r) {
  json_t *c = json_object();
  json_object_set_new(c, "status", json_string(keel_health_status_name(r->status)));
  json_object_set_new(c, "required", json_boolean(r->e->required));
  json_object_set_new(c, "duration_ms", json_real(round3(r->duration_ms)));
  json_object_set_new(c, "message", json_string(r->message ? r->message : ""));
  if (r->details) {
    json_t *d = json_loads(r->details, 0, NULL);
    if (json_is_object(d)) {
      const char *k;
      json_t *v;
      json_object_foreach(d, k, v) {
        if (!json_object_get(c, k)) json_object_set(c, k, v);
      }
    }
    json_decref(d);
  }
  return c;
}

static int respond(keel_health_response *out, int http, json_t *body) {
  out->http_status = http;
  out->body = body ? json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(12)) : NULL;
  json_decref(body);
  if (!out->body) {
    out->http_status = 0;
    return KEEL_ENOMEM;
  }
  return 0;
}

void keel_health_response_free(keel_health_response *r) {
  if (!r) return;
  free(r->body);
  r->body = NULL;
  r->http_status = 0;
}

uint64_t keel__health_alive_count(void) {
  keel_rt_stats st;
  keel_rt_stats_get(&st);
  size_t own = atomic_load_explicit(&own_procs, memory_order_relaxed);
  return st.procs_alive > own ? st.procs_alive - own : 0;
}

/* ---- probes ------------------------------------------------------------------ */

int keel_health_startup(keel_health_response *out) {
  keel__health_init();
  if (!out) return KEEL_EINVAL;
  bool on = atomic_load_explicit(&started, memory_order_relaxed);
  return respond(out, on ? 200 : 503, body_new(on ? "started" : "starting"));
}

/* The probes that wait run with exits held: processes, references and
 * memory are in flight, and a probe killed halfway would leak them (keel does
 * not unwind). The hold is bounded by the probe's own deadlines (plus the
 * sections' time for detailed); a kill takes effect when the probe returns,
 * losing only the body it produced for a caller that is dying anyway. */
static int probe(int (*impl)(keel_health_response *), keel_health_response *out) {
  keel__health_init();
  if (!out) return KEEL_EINVAL;
  memset(out, 0, sizeof *out);
  if (!keel_self()) return KEEL_ENOTPROC;
  keel_hold_exits(true);
  int rc = impl(out);
  keel_hold_exits(false);
  return rc;
}

static int ready_impl(keel_health_response *out) {
  bool st = atomic_load_explicit(&started, memory_order_relaxed);
  bool dr = atomic_load_explicit(&draining, memory_order_relaxed);
  if (!st || dr) { /* at once, running nothing */
    json_t *b = body_new("not_ready");
    json_object_set_new(b, "reason", json_string(dr ? "draining" : "starting"));
    json_object_set_new(b, "started", json_boolean(st));
    json_object_set_new(b, "draining", json_boolean(dr));
    return respond(out, 503, b);
  }
  run *rs;
  size_t n;
  int rc = run_checks(true, &rs, &n);
  if (rc) return rc;
  const run *failed = NULL;
  json_t *checks_o = json_object();
  for (size_t i = 0; i < n; i++) {
    if (rs[i].status == KEEL_HEALTH_CRITICAL && !failed) failed = &rs[i];
    json_object_set_new(checks_o, rs[i].e->name, check_json(&rs[i]));
  }
  json_t *b = body_new(failed ? "not_ready" : "ready");
  if (failed) {
    char *why = keel__health_dupf("check failed: %s", failed->e->name);
    json_object_set_new(b, "reason", json_string(why ? why : "check failed"));
    free(why);
  }
  json_object_set_new(b, "started", json_true());
  json_object_set_new(b, "draining", json_false());
  json_object_set_new(b, "processCount", json_integer((json_int_t)keel__health_alive_count()));
  json_object_set_new(b, "checks", checks_o);
  runs_release(rs, n);
  return respond(out, failed ? 503 : 200, b);
}

typedef struct ping_arg {
  keel_pid_t caller;
  keel_ref_t ref;
} ping_arg;

static void ping_main(void *p) {
  ping_arg *a = p;
  int32_t where = keel_sched_current();
  keel_reply(a->caller, a->ref, keel_msg_copy(0, &where, sizeof where));
}

static int live_impl(keel_health_response *out) {
  int64_t window = atomic_load_explicit(&live_timeout_ms, memory_order_relaxed);
  if (window <= 0) window = DEFAULT_LIVE_MS;
  int n = keel_sched_count();
  if (n <= 0) return KEEL_ESTATE;
  keel_sched_info *before = calloc((size_t)n, sizeof *before);
  keel_ref_t *refs = calloc((size_t)n, sizeof *refs);
  bool *ok = calloc((size_t)n, sizeof *ok);
  if (!before || !refs || !ok) {
    free(before);
    free(refs);
    free(ok);
    return KEEL_ENOMEM;
  }
  uint64_t deadline = (uint64_t)keel_monotonic_ms() + (uint64_t)window;
  for (int i = 0; i < n; i++) {
    keel_rt_sched_info(i, &before[i]);
    ping_arg *a = malloc(sizeof *a);
    keel_ref_t ref = keel_make_ref();
    if (!a || keel_await_ref(ref) != 0) {
      free(a);
      continue; /* judged by watching it below */
    }
    a->caller = keel_self();
    a->ref = ref;
    keel_spawn_opts o;
    keel_spawn_opts_init(&o);
    o.scheduler = KEEL_ON_SCHEDULER(i);
    o.name = "health:ping";
    keel_pid_t pid;
    atomic_fetch_add_explicit(&own_procs, 1, memory_order_relaxed); /* ping_ended takes it back */
    if (keel_spawn(ping_main, a, &o, &pid) != 0) {
      atomic_fetch_sub_explicit(&own_procs, 1, memory_order_relaxed);
      keel_await_cancel(ref);
      free(a);
      continue;
    }
    /* The ping owns a; freed when it ends, even if it never runs. */
    if (keel_on_exit_of(pid, ping_ended, a) != 0) ping_ended(a);
    refs[i] = ref;
  }
  for (int i = 0; i < n; i++) {
    if (!refs[i]) continue;
    uint64_t t = (uint64_t)keel_monotonic_ms();
    keel_msg_t *m = NULL;
    if (keel_await(refs[i], &m, deadline > t ? (int64_t)(deadline - t) : KEEL_NOWAIT) == 0 &&
        keel_msg_size(m) == sizeof(int32_t)) {
      int32_t where;
      memcpy(&where, keel_msg_data(m), sizeof where);
      ok[i] = where == i;
    }
    keel_msg_free(m);
  }
  /* Schedulers whose own ping did not prove them: watch them switch. */
  keel_sched_info now_i;
  for (;;) {
    bool pending = false;
    for (int i = 0; i < n; i++) {
      if (ok[i]) continue;
      keel_rt_sched_info(i, &now_i);
      if (now_i.running == 0 || now_i.running != before[i].running ||
          now_i.switches != before[i].switches)
        ok[i] = true;
      else
        pending = true;
    }
    if (!pending || (uint64_t)keel_monotonic_ms() >= deadline) break;
    keel_sleep(5);
  }

  int bad = -1;
  json_t *arr = json_array();
  for (int i = 0; i < n; i++) {
    keel_rt_sched_info(i, &now_i);
    if (!ok[i] && bad < 0) bad = i;
    json_t *s = json_object();
    json_object_set_new(s, "id", json_integer(i));
    json_object_set_new(s, "responsive", json_boolean(ok[i]));
    json_object_set_new(s, "stuck", json_boolean(now_i.stuck));
    json_object_set_new(s, "run_queue", json_integer(now_i.run_queue));
    json_array_append_new(arr, s);
  }
  json_t *b = body_new(bad < 0 ? "alive" : "not_alive");
  if (bad >= 0) {
    char why[96];
    snprintf(why, sizeof why, "scheduler %d unresponsive for %" PRId64 " ms", bad, window);
    json_object_set_new(b, "reason", json_string(why));
  }
  json_object_set_new(b, "schedulers", arr);
  free(before);
  free(refs);
  free(ok);
  return respond(out, bad < 0 ? 200 : 503, b);
}

typedef struct sec_call {
  section *s;
  char key[NAME_MAX_ + 1];
  char *(*fn)(void *);
  void *ud;
} sec_call;

static int detailed_impl(keel_health_response *out) {
  run *rs;
  size_t n;
  int rc = run_checks(false, &rs, &n);
  if (rc) return rc;
  bool unhealthy = false, degraded = false;
  json_t *checks_o = json_object();
  for (size_t i = 0; i < n; i++) {
    if (rs[i].status == KEEL_HEALTH_CRITICAL && rs[i].e->required)
      unhealthy = true;
    else if (rs[i].status != KEEL_HEALTH_OK)
      degraded = true;
    json_object_set_new(checks_o, rs[i].e->name, check_json(&rs[i]));
  }
  runs_release(rs, n);
  const char *word = unhealthy ? "unhealthy" : degraded ? "degraded" : "healthy";
  json_t *b = body_new(word);

  uint64_t st = keel_rt_started_ms(), t = (uint64_t)keel_monotonic_ms();
  json_object_set_new(b, "uptime", json_real(round3(st && t > st ? (double)(t - st) / 1e3 : 0)));
  pthread_mutex_lock(&mu);
  json_object_set_new(b, "service", service_name ? json_string(service_name) : json_null());
  json_object_set_new(b, "version", service_version ? json_string(service_version) : json_null());
  pthread_mutex_unlock(&mu);
  json_object_set_new(b, "started",
                      json_boolean(atomic_load_explicit(&started, memory_order_relaxed)));
  json_object_set_new(b, "draining",
                      json_boolean(atomic_load_explicit(&draining, memory_order_relaxed)));
  json_object_set_new(b, "processes", json_integer((json_int_t)keel__health_alive_count()));
  uint64_t total;
  keel_health_restarts(-1, &total, NULL);
  json_object_set_new(b, "restarts", json_integer((json_int_t)total));
  keel_sys_memory m;
  keel_sys_memory_get(&m);
  json_t *mem = json_object();
  json_object_set_new(mem, "rssMB", json_integer((json_int_t)((m.rss_bytes + (1u << 19)) >> 20)));
  json_object_set_new(mem, "heapUsedMB",
                      json_integer((json_int_t)((m.heap_bytes + (1u << 19)) >> 20)));
  uint64_t lim = keel_sys_memory_limit(&m);
  json_object_set_new(mem, "limitMB", json_integer((json_int_t)((lim + (1u << 19)) >> 20)));
  json_object_set_new(b, "memory", mem);
  json_object_set_new(b, "checks", checks_o);

  /* Sections: marked busy while called, outside the lock. */
  pthread_mutex_lock(&mu);
  size_t ns = 0;
  for (section *s = sections; s; s = s->next)
    ns++;
  sec_call *calls = ns ? calloc(ns, sizeof *calls) : NULL;
  if (calls) {
    size_t i = 0;
    for (section *s = sections; s; s = s->next, i++) {
      s->busy++;
      calls[i].s = s;
      memcpy(calls[i].key, s->key, sizeof calls[i].key);
      calls[i].fn = s->fn;
      calls[i].ud = s->ud;
    }
  } else {
    ns = 0;
  }
  pthread_mutex_unlock(&mu);
  for (size_t i = 0; i < ns; i++) {
    char *text = calls[i].fn(calls[i].ud);
    json_t *v = text ? json_loads(text, JSON_DECODE_ANY, NULL) : NULL;
    free(text);
    json_object_set_new(b, calls[i].key, v ? v : json_null());
    pthread_mutex_lock(&mu);
    calls[i].s->busy--;
    pthread_cond_broadcast(&section_cv);
    pthread_mutex_unlock(&mu);
  }
  free(calls);
  return respond(out, unhealthy ? 503 : 200, b);
}

int keel_health_live(keel_health_response *out) {
  return probe(live_impl, out);
}
int keel_health_ready(keel_health_response *out) {
  return probe(ready_impl, out);
}
int keel_health_detailed(keel_health_response *out) {
  return probe(detailed_impl, out);
}
