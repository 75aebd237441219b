/* alerts.c - the alert manager: learns each process's normal mailbox depth
 * and fires when a sample is an outlier; watches restart and error-log rates.
 *
 * The manager is a gen_server (label "keel_alerts"). A timer it sets itself
 * (keel_send_after, one outstanding tick) wakes it every interval_ms, so it
 * samples whether or not anybody asks, and before handle_info handles any
 * message it runs a sweep that is due, so a busy mailbox cannot starve the
 * sweeps. Subscribe, unsubscribe and sweep now are gen_server calls (casts
 * from threads that are not processes, which cannot wait), stop is
 * keel_gs_stop, and handle_info takes the ticks, the DOWNs of the
 * subscribers it monitors, and restart events that a keel_sup_subscribe
 * callback forwards to it as messages (the callback runs in the supervisor's
 * process and only sends). init claims the node's one manager slot, so a
 * second start is refused; a thread that is not a process starts it through
 * a short-lived process and waits for the answer.
 *
 * A sweep walks the process table (keel_rt_processes) and, for each process,
 * finds its statistics in an open-addressing hash table keyed by pid (linear
 * probing, power-of-two size, at most half full). The statistics are an
 * exponentially weighted mean and variance whose weight is 1/n for the first
 * `window` samples (so they equal the exact running mean and variance,
 * Welford's recurrence, while the history is short) and 1/window afterwards:
 * 16 bytes of state that forget old behaviour with a horizon of about
 * `window` samples, where the reference keeps a ring of 1000 samples per
 * process (8 KB: 800 MB at 100k processes). Once min_samples samples are
 * learned, a sample above mean + k * stddev that is also at least `floor`
 * is an anomaly: it fires an alert unless one is active or the cooldown
 * holds, and it is NOT learned, so that a flood does not teach the baseline
 * that floods are normal (the reference learns every sample, the flooded one
 * included, so a long flood raises its own threshold until the alert
 * resolves while the mailbox is still full). An active alert resolves at the
 * first sample that is no anomaly, or when its process is gone. Every entry
 * carries the number of the sweep that last saw it; when a sweep saw fewer
 * processes than the table holds, the table is rebuilt with only the live
 * ones, at a size that follows them (memory is bounded by the live
 * processes, not by how many ever lived). The walk yields every 4096
 * processes so that a large node does not lose a scheduler for a whole sweep.
 *
 * Restart rate (per supervisor) and error-log rate (error + fatal lines, the
 * delta of keel_log_stats_get) are counted in 60 one-second buckets; the sum
 * over the last minute is compared with the configured per-minute limits at
 * each sweep. Cooldowns, rates and durations use opts.clock_ms (tests inject
 * a clock) or CLOCK_MONOTONIC; alert times use the wall clock.
 *
 * Sharing. Everything above belongs to the manager process alone. What other
 * threads read, the active alerts and the counters, lives in `g` under g.mu:
 * the manager is its only writer and takes the mutex to change it; readers
 * take it to copy. Alerts are appended in firing order (their seq grows), a
 * resolved one is only flagged dead (its owner finds it by binary search on
 * seq) and the dead are compacted away at the end of each sweep, so the list
 * stays oldest-first without an O(n) move per resolve. The manager's pid is
 * an atomic so that the supervisor callback can read it from any thread.
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
#include <strings.h>
#include <time.h>

#include "keel/alerts.h"
#include "keel/gen_server.h"
#include "keel/health.h"
#include "keel/log.h"
#include "keel/message.h"
#include "keel/process.h"
#include "keel/registry.h"
#include "keel/supervisor.h"
#include "keel/sysinfo.h"
#include "keel/timer.h"

#define DEF_K         2.0
#define DEF_MIN       30
#define DEF_COOLDOWN  10000
#define DEF_INTERVAL  1000
#define DEF_FLOOR     10
#define DEF_WINDOW    1000
#define DEF_RESTARTS  5
#define DEF_ERRORS    10
#define DEF_FD_PCT    90
#define DEF_HEALTH    15000
#define RATE_SECONDS  60
#define CALL_TIMEOUT  30000
#define STOP_POLL_MAX 10000

/* Tags of what the manager receives: requests (calls, or casts from threads
 * that are not processes) and its own messages (handle_info). */
enum {
  REQ_SUBSCRIBE = 0x4b4c4180u, /* call or cast; payload: the pid */
  REQ_UNSUBSCRIBE,             /* call or cast; payload: the pid */
  REQ_SWEEP,                   /* call */
  REQ_STOP,                    /* cast, from a thread or the manager itself */
  EV_RESTART,                  /* info: a restart_ev from the supervisor callback */
  T_TICK,                      /* info: the interval's timer */
  T_SWEEP,                     /* info: a sweep_now to run; payload: the caller's keel_gs_from */
  EV_HEALTH,                   /* info: a health probe's verdict; payload: a health_ev */
};

/* ---- state -------------------------------------------------------------------- */

/* One active (or, until the next compaction, just resolved) alert. */
typedef struct act {
  keel_alert a;
  uint64_t seq;       /* firing order, > 0 */
  int64_t start_mono; /* clock_ms() when it fired */
  bool dead;          /* resolved; dropped at the next compaction */
} act;

/* Shared with other threads, under mu. */
static struct {
  pthread_mutex_t mu;
  act *v;
  size_t n, cap, live; /* n entries, `live` of them not dead */
  keel_alerts_stats stats;
} g = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* The manager's pid, 0 when none runs. Written under g.mu; read without it
 * by the supervisor callback and the request functions. Acquire/release is
 * not needed for what the pid guards (messages carry their own ordering);
 * relaxed loads and stores suffice, the mutex orders the writers. */
static _Atomic keel_pid_t g_pid;

/* Alert ids: a counter for the life of the OS process, so ids never repeat
 * across stop/start. Relaxed: only uniqueness matters. */
static atomic_uint_fast64_t g_next_id;

/* Statistics of one process. pid 0 marks an empty slot. */
typedef struct pstat {
  keel_pid_t pid;
  uint32_t seen; /* number of the last sweep that saw the process */
  uint32_t n;    /* samples learned (saturates) */
  double mean, var;
  int64_t last_fire; /* clock_ms() of its last alert, INT64_MIN: never */
  uint64_t aseq;     /* seq of its active alert, 0: none */
} pstat;

typedef struct bucket {
  int64_t sec;
  uint32_t count;
} bucket;

/* A per-minute rate: 60 one-second buckets, and the alert state. */
typedef struct rate {
  keel_pid_t pid;
  char name[64];
  int64_t width_ms; /* a bucket's span: the window is RATE_SECONDS of them */
  bucket b[RATE_SECONDS];
  int64_t last_fire;
  uint64_t aseq;
} rate;

typedef struct sub {
  keel_pid_t pid;
  keel_ref_t mref;
} sub;

typedef struct mgr {
  keel_alerts_opts o; /* defaults resolved */
  keel_pid_t self;
  int sup_handle;
  int64_t next_sweep; /* keel_monotonic_ms() when the next sweep is due (interval_ms > 0) */
  bool torn_down;     /* the shared state was already released by the process itself */

  pstat *tab;
  size_t cap, count;
  uint32_t gen;
  size_t live_seen; /* processes the current sweep saw */

  rate *sups;
  size_t nsups, capsups;
  rate errs;
  uint64_t err_total; /* error + fatal lines counted so far */
  uint64_t err_since; /* error + fatal lines since the last error alert fired */
  bool err_fired;     /* an error alert has fired (err_since means something) */
  uint64_t fd_aseq;   /* the active high_fd_usage alert, 0: none */
  int64_t fd_last_fire;
  int health_status;       /* 0 healthy, 1 degraded, 2 unhealthy: as the last probe said */
  uint64_t health_aseq;    /* the active health_status alert, 0: none */
  keel_pid_t health_probe; /* the probe running now, 0: none */
  keel_ref_t health_ref;   /* its monitor */
  int64_t health_last;     /* now_of() when the last probe started, INT64_MIN: never */

  sub *subs;
  size_t nsubs, capsubs;

  uint64_t next_seq;
  uint64_t sweeps, fired, resolved, suppressed, last_sweep_us;
} mgr;

typedef struct restart_ev {
  keel_pid_t sup;
  char name[64];
} restart_ev;

/* ---- small helpers ------------------------------------------------------------- */

static int64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t now_of(const mgr *m) {
  return m->o.clock_ms ? m->o.clock_ms(m->o.clock_ud) : keel_monotonic_ms();
}

/* "2026-11-22T01:02:03.456Z" into buf (80 bytes: room for any int fields). */
static void iso_time(int64_t ms, char *buf, size_t len) {
  time_t s = (time_t)(ms / 1000);
  struct tm tm;
  gmtime_r(&s, &tm);
  snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
           tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
}

static uint64_t mix(uint64_t x) { /* splitmix64's finalizer: pids are sequential-ish */
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

static int64_t floor_div(int64_t a, int64_t b) {
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}

const char *keel_alert_type_name(keel_alert_type type) {
  switch (type) {
  case KEEL_ALERT_QUEUE_SIZE: return "high_queue_size";
  case KEEL_ALERT_RESTART_RATE: return "high_restart_rate";
  case KEEL_ALERT_ERROR_RATE: return "high_error_rate";
  case KEEL_ALERT_FD_USAGE: return "high_fd_usage";
  case KEEL_ALERT_TEST: return "test_alert";
  case KEEL_ALERT_HEALTH: return "health_status";
  }
  return "unknown";
}

const char *keel_alert_severity_name(keel_alert_severity s) {
  switch (s) {
  case KEEL_ALERT_INFO: return "info";
  case KEEL_ALERT_WARNING: return "warning";
  case KEEL_ALERT_CRITICAL: return "critical";
  }
  return "unknown";
}

keel_alert_severity keel_alert_severity_parse(const char *name) {
  if (!name) return 0;
  for (keel_alert_severity s = KEEL_ALERT_INFO; s <= KEEL_ALERT_CRITICAL; s++)
    if (strcasecmp(name, keel_alert_severity_name(s)) == 0) return s;
  return 0;
}

keel_alert_severity keel_alert_type_severity(keel_alert_type type) {
  switch (type) {
  case KEEL_ALERT_ERROR_RATE:
  case KEEL_ALERT_FD_USAGE: return KEEL_ALERT_CRITICAL;
  case KEEL_ALERT_TEST: return KEEL_ALERT_INFO;
  case KEEL_ALERT_QUEUE_SIZE:
  case KEEL_ALERT_RESTART_RATE:
  case KEEL_ALERT_HEALTH: break;
  }
  return KEEL_ALERT_WARNING;
}

void keel_alerts_opts_init(keel_alerts_opts *o) {
  memset(o, 0, sizeof *o);
}

int keel_alert_msg(const keel_msg_t *m, keel_alert *out) {
  if (!m || keel_msg_kind_of(m) != KEEL_MSG_USER || keel_msg_size(m) != sizeof(keel_alert))
    return KEEL_EINVAL;
  uint32_t tag = keel_msg_tag(m);
  int kind;
  if (tag == KEEL_ALERTS_MSG_TRIGGERED)
    kind = KEEL_ALERTS_EV_TRIGGERED;
  else if (tag == KEEL_ALERTS_MSG_RESOLVED)
    kind = KEEL_ALERTS_EV_RESOLVED;
  else
    return KEEL_EINVAL;
  if (out) memcpy(out, keel_msg_data(m), sizeof *out);
  return kind;
}

/* ---- the statistics table ----------------------------------------------------- */

static pstat *tab_find(mgr *m, keel_pid_t pid) {
  if (!m->cap) return NULL;
  size_t mask = m->cap - 1;
  for (size_t i = mix(pid) & mask;; i = (i + 1) & mask) {
    if (m->tab[i].pid == pid) return &m->tab[i];
    if (!m->tab[i].pid) return NULL;
  }
}

/* Puts e into a table known to have room and not to hold e->pid. */
static void tab_place(pstat *tab, size_t cap, const pstat *e) {
  size_t mask = cap - 1;
  size_t i = mix(e->pid) & mask;
  while (tab[i].pid)
    i = (i + 1) & mask;
  tab[i] = *e;
}

/* Rebuilds the table with capacity cap, keeping every entry or (only_seen)
 * only those the current sweep saw. */
static int tab_rebuild(mgr *m, size_t cap, bool only_seen) {
  pstat *nt = calloc(cap, sizeof *nt);
  if (!nt) return KEEL_ENOMEM;
  size_t n = 0;
  for (size_t i = 0; i < m->cap; i++) {
    const pstat *e = &m->tab[i];
    if (!e->pid || (only_seen && e->seen != m->gen)) continue;
    tab_place(nt, cap, e);
    n++;
  }
  free(m->tab);
  m->tab = nt;
  m->cap = cap;
  m->count = n;
  return 0;
}

static size_t cap_for(size_t n) {
  size_t cap = 64;
  while (cap < 2 * n + 2)
    cap *= 2;
  return cap;
}

/* The entry for pid, created (empty statistics) when missing; NULL on ENOMEM.
 * May move every entry: do not keep pointers across calls. */
static pstat *tab_get(mgr *m, keel_pid_t pid) {
  pstat *e = tab_find(m, pid);
  if (e) return e;
  if (2 * (m->count + 1) > m->cap && tab_rebuild(m, cap_for(m->count + 1), false) != 0) return NULL;
  pstat fresh = {.pid = pid, .last_fire = INT64_MIN};
  tab_place(m->tab, m->cap, &fresh);
  m->count++;
  return tab_find(m, pid);
}

/* ---- active alerts (shared) ----------------------------------------------------- */

/* The live entry with this seq, or NULL. Manager only (it is the only writer,
 * so it may read without the lock). */
static act *act_find(uint64_t seq) {
  size_t lo = 0, hi = g.n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (g.v[mid].seq < seq)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo < g.n && g.v[lo].seq == seq && !g.v[lo].dead ? &g.v[lo] : NULL;
}

/* Appends an alert; returns its seq, 0 on ENOMEM. */
static uint64_t act_add(mgr *m, const keel_alert *a, int64_t now) {
  pthread_mutex_lock(&g.mu);
  if (g.n == g.cap) {
    size_t cap = g.cap ? g.cap * 2 : 16;
    act *nv = realloc(g.v, cap * sizeof *nv);
    if (!nv) {
      pthread_mutex_unlock(&g.mu);
      return 0;
    }
    g.v = nv;
    g.cap = cap;
  }
  uint64_t seq = ++m->next_seq;
  g.v[g.n++] = (act){.a = *a, .seq = seq, .start_mono = now, .dead = false};
  g.live++;
  pthread_mutex_unlock(&g.mu);
  return seq;
}

static void act_compact(void) {
  pthread_mutex_lock(&g.mu);
  size_t w = 0;
  for (size_t r = 0; r < g.n; r++)
    if (!g.v[r].dead) g.v[w++] = g.v[r];
  g.n = w;
  if (g.cap > 64 && g.n < g.cap / 4) {
    size_t cap = g.cap / 2;
    act *nv = realloc(g.v, cap * sizeof *nv);
    if (nv) {
      g.v = nv;
      g.cap = cap;
    }
  }
  pthread_mutex_unlock(&g.mu);
}

static void publish_stats(mgr *m) {
  pthread_mutex_lock(&g.mu);
  g.stats.running = true;
  g.stats.tracked = m->count;
  g.stats.table_slots = m->cap;
  g.stats.supervisors = m->nsups;
  g.stats.subscribers = m->nsubs;
  g.stats.active = g.live;
  g.stats.sweeps = m->sweeps;
  g.stats.fired = m->fired;
  g.stats.resolved = m->resolved;
  g.stats.suppressed = m->suppressed;
  g.stats.last_sweep_us = m->last_sweep_us;
  pthread_mutex_unlock(&g.mu);
}

/* ---- events --------------------------------------------------------------------- */

/* Sends the alert to every subscriber and writes it to the log. */
static void emit(mgr *m, bool triggered, const keel_alert *a) {
  uint32_t tag = triggered ? KEEL_ALERTS_MSG_TRIGGERED : KEEL_ALERTS_MSG_RESOLVED;
  for (size_t i = 0; i < m->nsubs; i++) {
    keel_msg_t *msg = keel_msg_copy(tag, a, sizeof *a);
    if (msg) keel_send(m->subs[i].pid, msg);
  }

  keel_log_level level = triggered ? KEEL_LOG_WARN : KEEL_LOG_INFO;
  if (!keel_log_enabled(level)) return;
  char pidbuf[24], when[80], fired_at[80];
  keel_pid_format(a->pid, pidbuf, sizeof pidbuf);
  iso_time(triggered ? a->time_ms : a->resolved_ms, when, sizeof when);
  iso_time(a->time_ms, fired_at, sizeof fired_at);
  const keel_log_field proc[] = {KEEL_STR("pid", pidbuf), KEEL_STR("name", a->name), KEEL_LOG__END};
  keel_log_field f[16];
  size_t n = 0;
  f[n++] = KEEL_STR("id", a->id);
  f[n++] = KEEL_STR("type", keel_alert_type_name(a->type));
  f[n++] = KEEL_STR("severity", keel_alert_severity_name(a->severity));
  if (a->pid)
    f[n++] = (keel_log_field){.key = "process", .type = KEEL_LOG_T_OBJ, .v = {.obj = proc}};
  else
    f[n++] = KEEL_NULL("process");
  f[n++] = KEEL_DOUBLE("threshold", a->threshold);
  f[n++] = KEEL_DOUBLE("value", a->value);
  if (a->type == KEEL_ALERT_QUEUE_SIZE) {
    f[n++] = KEEL_DOUBLE("mean", a->mean);
    f[n++] = KEEL_DOUBLE("stddev", a->stddev);
  }
  f[n++] = KEEL_STR("message", a->message);
  f[n++] = KEEL_STR("time", when);
  if (!triggered) {
    f[n++] = KEEL_STR("triggered_at", fired_at);
    f[n++] = KEEL_INT("duration_ms", a->duration_ms);
  }
  f[n++] = KEEL_LOG__END;
  const keel_log_field top[] = {
      {.key = "alert", .type = KEEL_LOG_T_OBJ, .v = {.obj = f}},
      KEEL_LOG__END,
  };
  keel_log_event_list(level, triggered ? "alert_triggered" : "alert_resolved", top);
}

typedef struct name_find {
  keel_pid_t pid;
  char *out;
  size_t len;
  bool found;
} name_find;

static void on_registered(const char *name, keel_pid_t pid, void *ud) {
  name_find *nf = ud;
  if (!nf->found && pid == nf->pid) {
    snprintf(nf->out, nf->len, "%s", name);
    nf->found = true;
  }
}

/* The name an alert shows: registered name, else `label`, else "". */
static void name_of(keel_pid_t pid, const char *label, char *out, size_t len) {
  name_find nf = {pid, out, len, false};
  out[0] = 0;
  keel_registered(on_registered, &nf);
  if (!nf.found) snprintf(out, len, "%s", label ? label : "");
}

/* "worker <0.12.1>" or "<0.12.1>". */
static void who(const keel_alert *a, char *out, size_t len) {
  char pidbuf[24];
  keel_pid_format(a->pid, pidbuf, sizeof pidbuf);
  if (a->name[0])
    snprintf(out, len, "%s %s", a->name, pidbuf);
  else
    snprintf(out, len, "%s", pidbuf);
}

/* snprintf for alert texts: a name or pid that does not fit is cut, which is
 * fine for a human-readable line (vsnprintf keeps GCC from warning). */
static void textf(char *buf, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void textf(char *buf, size_t len, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, len, fmt, ap);
  va_end(ap);
}

static bool cooldown_over_for(int64_t cooldown_ms, int64_t last_fire, int64_t now) {
  return cooldown_ms < 0 || last_fire == INT64_MIN || now - last_fire >= cooldown_ms;
}

static bool cooldown_over(const mgr *m, int64_t last_fire, int64_t now) {
  return cooldown_over_for(m->o.cooldown_ms, last_fire, now);
}

/* "60 s", "5 min": a rate's window for messages. */
static void window_text(int64_t ms, char *out, size_t cap) {
  if (ms == 60000)
    snprintf(out, cap, "minute");
  else if (ms > 60000 && ms % 60000 == 0)
    snprintf(out, cap, "%lld min", (long long)(ms / 60000));
  else
    snprintf(out, cap, "%lld s", (long long)((ms + 999) / 1000));
}

/* Fires a new alert: records it, emits it. Returns its seq (0: ENOMEM). */
static uint64_t fire(mgr *m, keel_alert *a, int64_t now) {
  if (!a->severity) a->severity = keel_alert_type_severity(a->type);
  snprintf(a->id, sizeof a->id, "alert-%" PRIuFAST64,
           (uint_fast64_t)(atomic_fetch_add_explicit(&g_next_id, 1, memory_order_relaxed) + 1));
  a->time_ms = wall_ms();
  uint64_t seq = act_add(m, a, now);
  if (!seq) return 0;
  m->fired++;
  emit(m, true, a);
  return seq;
}

/* Resolves the active alert seq with the value now and a reason text. */
static void resolve(mgr *m, uint64_t seq, double value, const char *why, int64_t now) {
  act *e = act_find(seq);
  if (!e) return;
  pthread_mutex_lock(&g.mu);
  e->dead = true;
  g.live--;
  keel_alert a = e->a;
  pthread_mutex_unlock(&g.mu);
  a.value = value;
  a.resolved_ms = wall_ms();
  a.duration_ms = now - e->start_mono;
  textf(a.message, sizeof a.message, "%s", why);
  m->resolved++;
  emit(m, false, &a);
}

/* Updates the value an active alert shows. */
static void act_update(uint64_t seq, double value) {
  act *e = act_find(seq);
  if (!e) return;
  pthread_mutex_lock(&g.mu);
  e->a.value = value;
  pthread_mutex_unlock(&g.mu);
}

/* ---- mailbox depth ---------------------------------------------------------------- */

static double stddev_of(const mgr *m, const pstat *e) {
  if (e->n < 2) return 0;
  double var = e->var;
  if (e->n <= m->o.window) var *= (double)e->n / (double)(e->n - 1); /* sample variance */
  return var > 0 ? sqrt(var) : 0;
}

static void learn(const mgr *m, pstat *e, double x) {
  if (e->n < UINT32_MAX) e->n++;
  double alpha = e->n <= m->o.window ? 1.0 / e->n : 1.0 / m->o.window;
  double diff = x - e->mean;
  double incr = alpha * diff;
  e->mean += incr;
  e->var = (1 - alpha) * (e->var + diff * incr);
}

typedef struct sweep_ctx {
  mgr *m;
  int64_t now;
  size_t visited;
} sweep_ctx;

/* Processes visited between two yields: a sweep of 100k processes takes
 * ~15 ms, which would hold one scheduler that long in one go. */
#define SWEEP_YIELD_EVERY 4096

static bool visit(const keel_proc_info *info, void *ud) {
  sweep_ctx *c = ud;
  mgr *m = c->m;
  if (++c->visited % SWEEP_YIELD_EVERY == 0) keel_yield();
  if (info->pid == m->self) return true;
  pstat *e = tab_get(m, info->pid);
  if (!e) return true; /* out of memory: skip it this time */
  if (e->seen != m->gen) {
    e->seen = m->gen;
    m->live_seen++;
  }
  double x = (double)info->mailbox_len;
  bool ready = e->n >= m->o.min_samples;
  double sd = ready ? stddev_of(m, e) : 0;
  double thr = e->mean + m->o.k * sd;
  bool anomaly = ready && x > thr && info->mailbox_len >= m->o.floor;

  if (e->aseq) {
    if (anomaly) {
      act_update(e->aseq, x);
    } else {
      char whobuf[100], why[200];
      act *a = act_find(e->aseq);
      if (a)
        who(&a->a, whobuf, sizeof whobuf);
      else
        whobuf[0] = 0;
      if (info->mailbox_len < m->o.floor)
        textf(why, sizeof why,
              "Queue size back under the floor: %" PRIu64 " < %" PRIu64 " (process: %s)",
              info->mailbox_len, m->o.floor, whobuf);
      else
        textf(why, sizeof why, "Queue size back under threshold: %" PRIu64 " <= %.1f (process: %s)",
              info->mailbox_len, thr, whobuf);
      resolve(m, e->aseq, x, why, c->now);
      e->aseq = 0;
    }
  } else if (anomaly) {
    if (cooldown_over(m, e->last_fire, c->now)) {
      keel_alert a;
      memset(&a, 0, sizeof a);
      a.type = KEEL_ALERT_QUEUE_SIZE;
      a.pid = info->pid;
      name_of(info->pid, info->name, a.name, sizeof a.name);
      a.threshold = thr;
      a.value = x;
      a.mean = e->mean;
      a.stddev = sd;
      char whobuf[100];
      who(&a, whobuf, sizeof whobuf);
      textf(a.message, sizeof a.message,
            "Queue size exceeded threshold: %" PRIu64 " > %.1f (process: %s)", info->mailbox_len,
            thr, whobuf);
      uint64_t seq = fire(m, &a, c->now);
      /* name_of and fire do not touch the table: e is still valid */
      e->aseq = seq;
      if (seq) e->last_fire = c->now;
    } else {
      m->suppressed++;
    }
  }
  if (!anomaly) learn(m, e, x);
  return true;
}

/* After a walk: resolve the alerts of processes that are gone, then rebuild
 * the table without them (and at a size that follows the live count). */
static void prune(mgr *m, int64_t now) {
  if (m->live_seen == m->count && m->cap <= cap_for(m->count) * 2) return;
  for (size_t i = 0; i < m->cap; i++) {
    pstat *e = &m->tab[i];
    if (!e->pid || e->seen == m->gen || !e->aseq) continue;
    char whobuf[100] = "", why[200];
    act *a = act_find(e->aseq);
    if (a) who(&a->a, whobuf, sizeof whobuf);
    textf(why, sizeof why, "Process exited (process: %s)", whobuf);
    resolve(m, e->aseq, 0, why, now);
    e->aseq = 0;
  }
  tab_rebuild(m, cap_for(m->live_seen), true); /* on ENOMEM the old table stays */
}

/* ---- rates -------------------------------------------------------------------------- */

static void rate_add(rate *r, int64_t now, uint32_t n) {
  int64_t sec = floor_div(now, r->width_ms);
  bucket *b = &r->b[(size_t)(((sec % RATE_SECONDS) + RATE_SECONDS) % RATE_SECONDS)];
  if (b->sec != sec) {
    b->sec = sec;
    b->count = 0;
  }
  b->count += n;
}

static uint64_t rate_count(const rate *r, int64_t now) {
  int64_t sec = floor_div(now, r->width_ms);
  uint64_t sum = 0;
  for (size_t i = 0; i < RATE_SECONDS; i++)
    if (r->b[i].count && r->b[i].sec > sec - RATE_SECONDS && r->b[i].sec <= sec)
      sum += r->b[i].count;
  return sum;
}

static void rate_init(rate *r, keel_pid_t pid, const char *name) {
  memset(r, 0, sizeof *r);
  r->pid = pid;
  r->width_ms = 1000;
  r->last_fire = INT64_MIN;
  snprintf(r->name, sizeof r->name, "%s", name ? name : "");
  for (size_t i = 0; i < RATE_SECONDS; i++)
    r->b[i].sec = INT64_MIN;
}

/* Checks one rate against its limit: fires, updates or resolves. */
static void rate_check(mgr *m, rate *r, keel_alert_type type, int limit, int64_t now) {
  if (limit < 0) return;
  uint64_t c = rate_count(r, now);
  bool over = c >= (uint64_t)limit;
  const bool restart = type == KEEL_ALERT_RESTART_RATE;
  const char *what = restart ? "Restart rate" : "Error log rate";
  const char *unit = restart ? "restarts" : "error lines";
  char win[24];
  window_text(r->width_ms * RATE_SECONDS, win, sizeof win);
  int64_t cooldown = restart || !m->o.error_cooldown_ms ? m->o.cooldown_ms : m->o.error_cooldown_ms;
  if (r->aseq) {
    if (over) {
      act_update(r->aseq, (double)c);
    } else {
      char why[200], whobuf[100] = "";
      act *a = act_find(r->aseq);
      if (a && restart) who(&a->a, whobuf, sizeof whobuf);
      textf(why, sizeof why, "%s back under threshold: %" PRIu64 " %s in the last %s < %d%s%s%s",
            what, c, unit, win, limit, restart ? " (supervisor: " : "", whobuf, restart ? ")" : "");
      resolve(m, r->aseq, (double)c, why, now);
      r->aseq = 0;
    }
    return;
  }
  if (!over) return;
  if (!cooldown_over_for(cooldown, r->last_fire, now)) {
    m->suppressed++;
    return;
  }
  keel_alert a;
  memset(&a, 0, sizeof a);
  a.type = type;
  a.pid = r->pid;
  snprintf(a.name, sizeof a.name, "%s", r->name);
  a.threshold = limit;
  a.value = (double)c;
  char whobuf[100] = "";
  if (restart) who(&a, whobuf, sizeof whobuf);
  if (restart) {
    textf(a.message, sizeof a.message,
          "%s exceeded threshold: %" PRIu64 " %s in the last %s >= %d (supervisor: %s)", what, c,
          unit, win, limit, whobuf);
  } else {
    /* what went wrong last, for the person paged: the newest error line's
     * message and request id, and how many came since the last alert */
    char last[64], rid[40], since[48] = "";
    keel_log_last_error(last, sizeof last, rid, sizeof rid);
    if (m->err_fired)
      snprintf(since, sizeof since, "; %" PRIu64 " since the last alert", m->err_since);
    textf(a.message, sizeof a.message,
          "%s exceeded threshold: %" PRIu64 " %s in the last %s >= %d; last: %s%s%s%s", what, c,
          unit, win, limit, last, rid[0] ? " (requestId " : "", rid, rid[0] ? ")" : "");
    size_t len = strlen(a.message);
    if (since[0] && len + strlen(since) < sizeof a.message)
      memcpy(a.message + len, since, strlen(since) + 1);
  }
  r->aseq = fire(m, &a, now);
  if (r->aseq) {
    r->last_fire = now;
    if (!restart) {
      m->err_fired = true;
      m->err_since = 0;
    }
  }
}

static rate *sup_find(mgr *m, keel_pid_t pid) {
  for (size_t i = 0; i < m->nsups; i++)
    if (m->sups[i].pid == pid) return &m->sups[i];
  return NULL;
}

static void on_restart_event(mgr *m, const restart_ev *ev) {
  rate *r = sup_find(m, ev->sup);
  if (!r) {
    if (m->nsups == m->capsups) {
      size_t cap = m->capsups ? m->capsups * 2 : 4;
      rate *ns = realloc(m->sups, cap * sizeof *ns);
      if (!ns) return;
      m->sups = ns;
      m->capsups = cap;
    }
    r = &m->sups[m->nsups++];
    char name[64];
    if (ev->name[0])
      snprintf(name, sizeof name, "%s", ev->name);
    else
      name_of(ev->sup, "", name, sizeof name);
    if (!name[0]) {
      keel_proc_info info;
      if (keel_rt_process_info(ev->sup, &info) == 0) snprintf(name, sizeof name, "%s", info.name);
    }
    rate_init(r, ev->sup, name);
  }
  rate_add(r, now_of(m), 1);
}

/* Runs in the supervisor's process: forward restarts to the manager. */
static void sup_event_cb(const keel_sup_event *ev, void *ud) {
  (void)ud;
  if (ev->kind != KEEL_SUP_CHILD_RESTARTED) return;
  keel_pid_t to = atomic_load_explicit(&g_pid, memory_order_relaxed);
  if (!to) return;
  restart_ev re;
  memset(&re, 0, sizeof re);
  re.sup = ev->sup;
  snprintf(re.name, sizeof re.name, "%s", ev->sup_name ? ev->sup_name : "");
  keel_msg_t *msg = keel_msg_copy(EV_RESTART, &re, sizeof re);
  if (msg) keel_send(to, msg);
}

static void check_rates(mgr *m, int64_t now) {
  for (size_t i = 0; i < m->nsups;) {
    rate *r = &m->sups[i];
    rate_check(m, r, KEEL_ALERT_RESTART_RATE, m->o.restarts_per_min, now);
    if (!r->aseq && rate_count(r, now) == 0)
      m->sups[i] = m->sups[--m->nsups]; /* nothing to remember */
    else
      i++;
  }

  keel_log_stats ls;
  keel_log_stats_get(&ls);
  uint64_t total = ls.lines[KEEL_LOG_ERROR] + ls.lines[KEEL_LOG_FATAL];
  uint64_t delta = total >= m->err_total ? total - m->err_total : total; /* log restarted */
  if (delta) rate_add(&m->errs, now, delta > UINT32_MAX ? UINT32_MAX : (uint32_t)delta);
  m->err_since += delta;
  m->err_total = total;
  rate_check(m, &m->errs, KEEL_ALERT_ERROR_RATE, m->o.errors_per_min, now);
}

/* ---- descriptors -------------------------------------------------------------------- */

/* Open descriptors against the soft RLIMIT_NOFILE: at or above fd_percent
 * it fires (a node about to refuse connections, or refusing them), under it
 * it resolves. */
static void check_fds(mgr *m, int64_t now) {
  if (m->o.fd_percent < 0) return;
  keel_sys_process sp;
  if (keel_sys_process_get(&sp) != 0 || sp.open_fds < 0 || sp.max_fds <= 0) return;
  double pct = 100.0 * (double)sp.open_fds / (double)sp.max_fds;
  bool over = pct >= m->o.fd_percent;
  if (m->fd_aseq) {
    if (over) {
      act_update(m->fd_aseq, (double)sp.open_fds);
    } else {
      char why[200];
      textf(why, sizeof why,
            "Open file descriptors back under threshold: %ld of %ld (%.0f%% < %d%%)", sp.open_fds,
            sp.max_fds, pct, m->o.fd_percent);
      resolve(m, m->fd_aseq, (double)sp.open_fds, why, now);
      m->fd_aseq = 0;
    }
    return;
  }
  if (!over) return;
  if (!cooldown_over(m, m->fd_last_fire, now)) {
    m->suppressed++;
    return;
  }
  keel_alert a;
  memset(&a, 0, sizeof a);
  a.type = KEEL_ALERT_FD_USAGE;
  a.threshold = (double)sp.max_fds * m->o.fd_percent / 100.0;
  a.value = (double)sp.open_fds;
  textf(a.message, sizeof a.message,
        "Open file descriptors exceeded threshold: %ld of %ld (%.0f%% >= %d%%)", sp.open_fds,
        sp.max_fds, pct, m->o.fd_percent);
  m->fd_aseq = fire(m, &a, now);
  if (m->fd_aseq) m->fd_last_fire = now;
}

/* ---- health status ------------------------------------------------------------------ */

/* What a probe reports: the overall status and the checks that are not ok. */
typedef struct health_ev {
  int32_t status; /* 0 healthy, 1 degraded, 2 unhealthy */
  char detail[160];
} health_ev;

static const char *const health_words[] = {"healthy", "degraded", "unhealthy"};

/* "database: critical (timeout); memory: warning" from the detailed body. */
static void health_detail(json_t *checks, char *out, size_t cap) {
  size_t len = 0;
  const char *name;
  json_t *c;
  out[0] = 0;
  json_object_foreach(checks, name, c) {
    const char *st = json_string_value(json_object_get(c, "status"));
    if (!st || strcmp(st, "ok") == 0 || len >= cap) continue;
    const char *msg = json_string_value(json_object_get(c, "message"));
    int w = snprintf(out + len, cap - len, "%s%s: %s%s%s%s", len ? "; " : "", name, st,
                     msg && *msg ? " (" : "", msg && *msg ? msg : "", msg && *msg ? ")" : "");
    len = w < 0 ? cap : len + (size_t)w;
  }
}

/* The probe: a process of its own, because the checks may take up to their
 * timeouts and the manager must go on sweeping. It sends its verdict and
 * ends; a probe that fails says nothing (the manager sees its DOWN). */
static void health_probe_main(void *arg) {
  keel_pid_t mgr_pid = *(keel_pid_t *)arg;
  free(arg);
  keel_health_response r;
  if (keel_health_detailed(&r) != 0) return;
  json_t *j = json_loads(r.body, 0, NULL);
  keel_health_response_free(&r);
  const char *st = json_string_value(json_object_get(j, "status"));
  health_ev ev = {.status = -1};
  for (int i = 0; st && i < 3; i++)
    if (strcmp(st, health_words[i]) == 0) ev.status = i;
  if (ev.status >= 0) health_detail(json_object_get(j, "checks"), ev.detail, sizeof ev.detail);
  json_decref(j);
  keel_msg_t *msg = ev.status >= 0 ? keel_msg_copy(EV_HEALTH, &ev, sizeof ev) : NULL;
  if (msg) keel_send(mgr_pid, msg);
}

/* At a sweep: starts a probe when one is due and none runs. */
static void health_due(mgr *m, int64_t now) {
  if (m->o.health_interval_ms < 0 || m->health_probe) return;
  if (m->health_last != INT64_MIN && now - m->health_last < m->o.health_interval_ms) return;
  keel_pid_t *arg = malloc(sizeof *arg);
  if (!arg) return;
  *arg = m->self;
  keel_spawn_opts so;
  keel_spawn_opts_init(&so);
  so.name = "keel_alerts_health";
  keel_pid_t pid;
  if (keel_spawn(health_probe_main, arg, &so, &pid) != 0) {
    free(arg);
    return;
  }
  if (keel_monitor(pid, &m->health_ref) != 0) return; /* it ended already: nothing to wait for */
  m->health_probe = pid;
  m->health_last = now;
}

/* A probe's verdict: a change of status resolves the alert that was active
 * and fires the new status's (none when healthy). The manager's cooldown does
 * not apply: the probe's interval already spaces changes, and a sink's
 * cooldown holds back a flapping status. */
static void on_health(mgr *m, const health_ev *ev) {
  if (m->health_probe) keel_demonitor(m->health_ref);
  m->health_probe = 0;
  int64_t now = now_of(m);
  if (ev->status == m->health_status) return;
  if (m->health_aseq) {
    char why[200];
    textf(why, sizeof why, "Health %s, was %s%s%s", health_words[ev->status],
          health_words[m->health_status], ev->detail[0] ? ": " : "", ev->detail);
    resolve(m, m->health_aseq, ev->status, why, now);
    m->health_aseq = 0;
  }
  m->health_status = ev->status;
  if (!ev->status) return;
  keel_alert a;
  memset(&a, 0, sizeof a);
  a.type = KEEL_ALERT_HEALTH;
  a.severity = ev->status == 2 ? KEEL_ALERT_CRITICAL : KEEL_ALERT_WARNING;
  a.threshold = 1;
  a.value = ev->status;
  textf(a.message, sizeof a.message, "Health %s%s%s", health_words[ev->status],
        ev->detail[0] ? ": " : "", ev->detail);
  m->health_aseq = fire(m, &a, now);
}

/* ---- the sweep ---------------------------------------------------------------------- */

static void sweep(mgr *m) {
  int64_t t0 = ((int64_t)(keel_monotonic_ns() / 1000u));
  int64_t now = now_of(m);
  m->gen++;
  m->live_seen = 0;
  sweep_ctx c = {m, now, 0};
  keel_rt_processes(visit, &c);
  prune(m, now);
  check_rates(m, now);
  check_fds(m, now);
  health_due(m, now);
  act_compact();
  m->sweeps++;
  m->last_sweep_us = (uint64_t)(((int64_t)(keel_monotonic_ns() / 1000u)) - t0);
  publish_stats(m);
}

/* ---- subscribers -------------------------------------------------------------------- */

static int sub_add(mgr *m, keel_pid_t pid) {
  for (size_t i = 0; i < m->nsubs; i++)
    if (m->subs[i].pid == pid) return 0;
  if (m->nsubs == m->capsubs) {
    size_t cap = m->capsubs ? m->capsubs * 2 : 4;
    sub *ns = realloc(m->subs, cap * sizeof *ns);
    if (!ns) return KEEL_ENOMEM;
    m->subs = ns;
    m->capsubs = cap;
  }
  keel_ref_t ref;
  int rc = keel_monitor(pid, &ref); /* a dead pid: its DOWN comes at once and removes it */
  if (rc) return rc;
  m->subs[m->nsubs++] = (sub){pid, ref};
  return 0;
}

static int sub_del(mgr *m, keel_pid_t pid, keel_ref_t ref) {
  for (size_t i = 0; i < m->nsubs; i++)
    if ((pid && m->subs[i].pid == pid) || (ref && m->subs[i].mref == ref)) {
      if (pid) keel_demonitor(m->subs[i].mref);
      m->subs[i] = m->subs[--m->nsubs];
      return 0;
    }
  return KEEL_ENOENT;
}

/* ---- the manager: a gen_server -------------------------------------------------------- */

static void reply_rc(keel_gs_from from, int rc) {
  int32_t v = rc;
  keel_gs_reply(from, keel_msg_copy(0, &v, sizeof v)); /* NULL (no memory): an empty reply */
}

static keel_pid_t pid_payload(const keel_msg_t *msg) {
  keel_pid_t pid = 0;
  if (keel_msg_size(msg) == sizeof pid) memcpy(&pid, keel_msg_data(msg), sizeof pid);
  return pid;
}

/* Releases the shared state and the supervisor subscription (once). Called
 * by terminate when the manager stops normally, so that keel_alerts_stop's
 * caller can start a new manager as soon as it sees the DOWN; and by the exit
 * hook for any other end (a kill, the runtime stopping). */
static void teardown_shared(mgr *m) {
  if (m->torn_down) return;
  m->torn_down = true;
  if (m->sup_handle > 0) keel_sup_unsubscribe(m->sup_handle);
  m->sup_handle = 0;
  pthread_mutex_lock(&g.mu);
  if (atomic_load_explicit(&g_pid, memory_order_relaxed) == m->self) {
    atomic_store_explicit(&g_pid, 0, memory_order_relaxed);
    free(g.v);
    g.v = NULL;
    g.n = g.cap = g.live = 0;
    memset(&g.stats, 0, sizeof g.stats);
  }
  pthread_mutex_unlock(&g.mu);
}

static void mgr_destroy(mgr *m) {
  free(m->tab);
  free(m->sups);
  free(m->subs);
  free(m);
}

/* The manager's exit hook: runs however it ends, a kill included. */
static void mgr_free(void *arg) {
  mgr *m = arg;
  teardown_shared(m);
  mgr_destroy(m);
}

/* Sends the manager its next tick, for when the next sweep is due. One is
 * outstanding at a time: init sends the first, each tick the next. */
static int arm_tick(mgr *m) {
  int64_t wait = m->next_sweep - keel_monotonic_ms();
  keel_msg_t *t = keel_msg_new(T_TICK, 0);
  if (!t) return KEEL_ENOMEM;
  return keel_send_after(m->self, wait > 0 ? wait : 0, t, NULL);
}

/* Sweeps if the interval says so. Runs before handle_info handles anything,
 * so that a busy mailbox (restart events, DOWNs) cannot starve the sweep
 * until its tick comes round. */
static void sweep_if_due(mgr *m) {
  if (m->o.interval_ms <= 0) return;
  int64_t now = keel_monotonic_ms();
  if (now < m->next_sweep) return;
  sweep(m);
  m->next_sweep += m->o.interval_ms;
  if (m->next_sweep <= now) m->next_sweep = now + m->o.interval_ms;
}

/* What keel_gs_start hands to init; on the starter's stack until init has
 * returned. */
typedef struct start_arg {
  mgr *m;
  int rc;     /* why init refused, when it did */
  bool owned; /* init succeeded: m belongs to the manager (its exit hook frees it) */
} start_arg;

/* init refuses with a normal stop (not a crash: no crash report) and says
 * why in sa->rc. */
static int refuse(start_arg *sa, int rc) {
  sa->rc = rc;
  return keel_gs_stopping(KEEL_REASON_NORMAL, "%s", keel_strerror(rc));
}

/* Claims the node's one manager slot, subscribes to supervisor events, sends
 * the first tick and registers the exit hook that frees m; nothing in it
 * waits. Until the hook is registered (the last step) a failure undoes what
 * was done and leaves m to the starter. */
static int mgr_init(void *arg, void **state) {
  start_arg *sa = arg;
  mgr *m = sa->m;
  m->self = keel_self();
  keel_set_name("keel_alerts");
  pthread_mutex_lock(&g.mu);
  if (atomic_load_explicit(&g_pid, memory_order_relaxed)) {
    pthread_mutex_unlock(&g.mu);
    return refuse(sa, KEEL_ESTATE);
  }
  atomic_store_explicit(&g_pid, m->self, memory_order_relaxed);
  memset(&g.stats, 0, sizeof g.stats);
  g.stats.running = true;
  pthread_mutex_unlock(&g.mu);
  int rc = keel_sup_subscribe(sup_event_cb, NULL);
  if (rc >= 0) {
    m->sup_handle = rc;
    rc = 0;
  }
  if (!rc && m->o.interval_ms > 0) {
    m->next_sweep = keel_monotonic_ms() + m->o.interval_ms;
    rc = arm_tick(m);
  }
  if (!rc) rc = keel_on_exit(mgr_free, m);
  if (rc) {
    teardown_shared(m);
    return refuse(sa, rc);
  }
  sa->owned = true;
  publish_stats(m);
  *state = m;
  return 0;
}

/* Calls from processes: subscribe, unsubscribe, sweep now. The reply is the
 * result code (an int32_t). */
static int mgr_call(void *state, keel_gs_from from, keel_msg_t **req, keel_msg_t **reply) {
  mgr *m = state;
  int32_t rc;
  switch (keel_msg_tag(*req)) {
  case REQ_SUBSCRIBE: rc = sub_add(m, pid_payload(*req)); break;
  case REQ_UNSUBSCRIBE: rc = sub_del(m, pid_payload(*req), 0); break;
  case REQ_SWEEP: {
    /* The sweep runs in handle_info, which answers the caller: a callback
     * for a call runs in the caller's logging context, and the alerts a sweep
     * logs are the node's, not the caller's. */
    keel_msg_t *s = keel_msg_copy(T_SWEEP, &from, sizeof from);
    if (s) {
      keel_send(m->self, s);
      return KEEL_GS_NOREPLY;
    }
    rc = KEEL_ENOMEM;
    break;
  }
  default: rc = KEEL_EINVAL; break;
  }
  publish_stats(m);
  *reply = keel_msg_copy(0, &rc, sizeof rc);
  return KEEL_GS_REPLY;
}

/* Casts, from threads that are not processes (which cannot wait for a
 * reply): subscribe, unsubscribe, stop. */
static int mgr_cast(void *state, keel_msg_t **msg) {
  mgr *m = state;
  switch (keel_msg_tag(*msg)) {
  case REQ_SUBSCRIBE: sub_add(m, pid_payload(*msg)); break;
  case REQ_UNSUBSCRIBE: sub_del(m, pid_payload(*msg), 0); break;
  case REQ_STOP: return KEEL_GS_STOP; /* a normal stop: terminate runs */
  default: return KEEL_GS_OK;         /* not ours: dropped */
  }
  publish_stats(m);
  return KEEL_GS_OK;
}

/* Ticks, deferred sweeps, restart events, and the DOWNs of subscribers. */
static int mgr_info(void *state, keel_msg_t **msg) {
  mgr *m = state;
  const keel_msg_t *x = *msg;
  sweep_if_due(m);
  if (keel_msg_kind_of(x) == KEEL_MSG_DOWN) {
    if (m->health_probe && keel_msg_ref(x) == m->health_ref) {
      m->health_probe = 0; /* it failed or crashed: the next sweep that is due tries again */
      return KEEL_GS_OK;
    }
    sub_del(m, 0, keel_msg_ref(x));
    publish_stats(m);
    return KEEL_GS_OK;
  }
  if (keel_msg_kind_of(x) != KEEL_MSG_USER) return KEEL_GS_OK;
  switch (keel_msg_tag(x)) {
  case T_TICK: return arm_tick(m); /* out of memory: the manager crashes, as OTP would */
  case T_SWEEP:
    if (keel_msg_size(x) == sizeof(keel_gs_from)) {
      keel_gs_from from;
      memcpy(&from, keel_msg_data(x), sizeof from);
      sweep(m);
      reply_rc(from, 0);
    }
    break;
  case EV_HEALTH:
    if (keel_msg_size(x) == sizeof(health_ev)) {
      health_ev ev;
      memcpy(&ev, keel_msg_data(x), sizeof ev);
      if (ev.status >= 0 && ev.status <= 2) on_health(m, &ev);
    }
    break;
  case EV_RESTART:
    if (keel_msg_size(x) == sizeof(restart_ev)) {
      restart_ev ev;
      memcpy(&ev, keel_msg_data(x), sizeof ev);
      on_restart_event(m, &ev);
    }
    break;
  default: break; /* not ours: dropped */
  }
  return KEEL_GS_OK;
}

/* A normal stop (keel_alerts_stop) or a crash; not a kill, after which the
 * exit hook does the same. m itself is freed by the exit hook. */
static void mgr_terminate(keel_reason reason, void *state) {
  (void)reason;
  teardown_shared(state);
}

static const keel_gen_server manager = {
    .init = mgr_init,
    .handle_call = mgr_call,
    .handle_cast = mgr_cast,
    .handle_info = mgr_info,
    .terminate = mgr_terminate,
};

/* Starts the manager from a process. m is the manager's if it started, and
 * freed here if not. */
static int start_manager(mgr *m) {
  start_arg sa = {.m = m};
  keel_gs_opts go;
  keel_gs_opts_init(&go);
  go.init_timeout = KEEL_INFINITY; /* init never waits: its ack or its DOWN ends the start */
  int rc = keel_gs_start(&manager, &sa, &go, NULL, NULL);
  if (rc && sa.rc) rc = sa.rc;
  if (!sa.owned) mgr_destroy(m);
  return rc;
}

/* A start from a thread that is not a process: a short-lived process starts
 * the manager and the thread waits for its answer. */
typedef struct thread_start {
  mgr *m;
  int rc;
  bool ran, done;
  pthread_mutex_t mu;
  pthread_cond_t cv;
} thread_start;

static void starter_main(void *arg) {
  thread_start *ts = arg;
  pthread_mutex_lock(&ts->mu);
  ts->ran = true;
  pthread_mutex_unlock(&ts->mu);
  int rc = start_manager(ts->m);
  pthread_mutex_lock(&ts->mu);
  ts->rc = rc;
  pthread_mutex_unlock(&ts->mu);
}

/* The starter's exit hook, however it ended: wakes the thread. */
static void starter_done(void *arg) {
  thread_start *ts = arg;
  pthread_mutex_lock(&ts->mu);
  if (!ts->ran) mgr_destroy(ts->m); /* destroyed before it ran (the runtime stopping) */
  ts->done = true;
  pthread_cond_signal(&ts->cv);
  pthread_mutex_unlock(&ts->mu);
}

static int start_from_thread(mgr *m) {
  if (keel_sched_current() >= 0) { /* a scheduler's own thread: waiting could stall it */
    mgr_destroy(m);
    return KEEL_ENOTPROC;
  }
  thread_start ts = {.m = m, .rc = KEEL_ESTATE};
  pthread_mutex_init(&ts.mu, NULL);
  pthread_cond_init(&ts.cv, NULL);
  keel_spawn_opts so;
  keel_spawn_opts_init(&so);
  so.name = "keel_alerts_start";
  so.on_exit = starter_done;
  so.on_exit_arg = &ts;
  int rc = keel_spawn(starter_main, &ts, &so, NULL);
  if (rc) {
    mgr_destroy(m);
  } else {
    pthread_mutex_lock(&ts.mu);
    while (!ts.done)
      pthread_cond_wait(&ts.cv, &ts.mu);
    rc = ts.rc;
    pthread_mutex_unlock(&ts.mu);
  }
  pthread_cond_destroy(&ts.cv);
  pthread_mutex_destroy(&ts.mu);
  return rc;
}

/* ---- public API ----------------------------------------------------------------------- */

int keel_alerts_start(const keel_alerts_opts *o) {
  keel_alerts_opts d;
  keel_alerts_opts_init(&d);
  if (o) d = *o;
  if (d.k < 0 || !isfinite(d.k)) return KEEL_EINVAL;
  if (d.k == 0) d.k = DEF_K;
  if (!d.min_samples) d.min_samples = DEF_MIN;
  if (!d.cooldown_ms) d.cooldown_ms = DEF_COOLDOWN;
  if (!d.interval_ms) d.interval_ms = DEF_INTERVAL;
  if (!d.floor) d.floor = DEF_FLOOR;
  if (!d.window) d.window = DEF_WINDOW;
  if (!d.restarts_per_min) d.restarts_per_min = DEF_RESTARTS;
  if (!d.errors_per_min) d.errors_per_min = DEF_ERRORS;
  if (!d.error_window_ms) d.error_window_ms = 60000;
  if (d.error_window_ms < 0) return KEEL_EINVAL;
  if (!d.fd_percent) d.fd_percent = DEF_FD_PCT;
  if (!d.health_interval_ms) d.health_interval_ms = DEF_HEALTH;
  if (d.fd_percent > 100) return KEEL_EINVAL;
  if (!keel_sched_count()) return KEEL_ESTATE;
  /* a hint; init claims the one manager slot under the lock */
  if (atomic_load_explicit(&g_pid, memory_order_relaxed)) return KEEL_ESTATE;

  mgr *m = calloc(1, sizeof *m);
  if (!m) return KEEL_ENOMEM;
  m->o = d;
  rate_init(&m->errs, 0, "");
  /* the window is RATE_SECONDS buckets: each a sixtieth of it */
  m->errs.width_ms = d.error_window_ms / RATE_SECONDS > 0 ? d.error_window_ms / RATE_SECONDS : 1;
  m->fd_last_fire = INT64_MIN;
  m->health_last = INT64_MIN;
  keel_log_stats ls; /* error lines logged before the start do not count */
  keel_log_stats_get(&ls);
  m->err_total = ls.lines[KEEL_LOG_ERROR] + ls.lines[KEEL_LOG_FATAL];
  return keel_self() ? start_manager(m) : start_from_thread(m);
}

/* A request to the manager: from a process a gen_server call that waits for
 * the result; from any other thread a cast. */
static int request(uint32_t tag, keel_pid_t arg) {
  keel_pid_t mgr_pid = atomic_load_explicit(&g_pid, memory_order_relaxed);
  if (!mgr_pid) return KEEL_ESTATE;
  keel_msg_t *req = keel_msg_copy(tag, &arg, sizeof arg);
  if (!req) return KEEL_ENOMEM;
  if (!keel_self()) return keel_gs_cast(mgr_pid, req);
  if (keel_self() == mgr_pid) {
    keel_msg_free(req);
    return KEEL_EINVAL; /* would wait on itself */
  }
  keel_msg_t *rep = NULL;
  int rc = keel_gs_call(mgr_pid, req, &rep, CALL_TIMEOUT, NULL);
  if (rc == KEEL_ENOPROC || rc == KEEL_EDOWN) return KEEL_ESTATE; /* it stopped meanwhile */
  if (rc) return rc;
  int32_t v = KEEL_ENOMEM; /* an empty reply: the manager had no memory for it */
  if (keel_msg_size(rep) == sizeof v) memcpy(&v, keel_msg_data(rep), sizeof v);
  keel_msg_free(rep);
  return v;
}

int keel_alerts_subscribe(keel_pid_t pid) {
  if (!pid) return KEEL_EINVAL;
  return request(REQ_SUBSCRIBE, pid);
}

int keel_alerts_unsubscribe(keel_pid_t pid) {
  if (!pid) return KEEL_EINVAL;
  return request(REQ_UNSUBSCRIBE, pid);
}

int keel_alerts_sweep_now(void) {
  if (!keel_self()) return KEEL_ENOTPROC;
  return request(REQ_SWEEP, 0);
}

int keel_alerts_stop(void) {
  keel_pid_t pid = atomic_load_explicit(&g_pid, memory_order_relaxed);
  if (!pid) return KEEL_ESTATE;
  if (keel_self() && keel_self() != pid) {
    /* in queue order; terminate releases the shared state before the exit,
     * after a kill the exit hook does it, a moment after the DOWN */
    int rc = keel_gs_stop(pid, KEEL_REASON_NORMAL, NULL, CALL_TIMEOUT);
    if (rc) return rc;
  } else { /* from inside (it stops after this message), or from a thread */
    keel_msg_t *req = keel_msg_new(REQ_STOP, 0);
    if (!req) return KEEL_ENOMEM;
    keel_gs_cast(pid, req);
    if (keel_self()) return 0;
  }
  for (int i = 0; i < STOP_POLL_MAX; i++) {
    if (atomic_load_explicit(&g_pid, memory_order_relaxed) != pid) return 0;
    if (keel_self())
      keel_sleep(1);
    else
      nanosleep(&(struct timespec){0, 1000000}, NULL);
  }
  return KEEL_ETIMEDOUT;
}

bool keel_alerts_running(void) {
  return atomic_load_explicit(&g_pid, memory_order_relaxed) != 0;
}

size_t keel_alerts_active(keel_alert *out, size_t max) {
  pthread_mutex_lock(&g.mu);
  size_t n = 0;
  for (size_t i = 0; i < g.n; i++) {
    if (g.v[i].dead) continue;
    if (out && n < max) out[n] = g.v[i].a;
    n++;
  }
  pthread_mutex_unlock(&g.mu);
  return n;
}

static json_t *alert_json(const keel_alert *a) {
  json_t *o = json_object();
  if (!o) return NULL;
  char pidbuf[24], when[80];
  json_object_set_new(o, "id", json_string(a->id));
  json_object_set_new(o, "type", json_string(keel_alert_type_name(a->type)));
  json_object_set_new(o, "severity", json_string(keel_alert_severity_name(a->severity)));
  if (a->pid) {
    keel_pid_format(a->pid, pidbuf, sizeof pidbuf);
    json_t *p = json_object();
    json_object_set_new(p, "pid", json_string(pidbuf));
    json_object_set_new(p, "name", json_string(a->name));
    json_object_set_new(o, "process", p);
  } else {
    json_object_set_new(o, "process", json_null());
  }
  json_object_set_new(o, "threshold", json_real(a->threshold));
  json_object_set_new(o, "value", json_real(a->value));
  if (a->type == KEEL_ALERT_QUEUE_SIZE) {
    json_object_set_new(o, "mean", json_real(a->mean));
    json_object_set_new(o, "stddev", json_real(a->stddev));
  }
  json_object_set_new(o, "message", json_string(a->message));
  iso_time(a->time_ms, when, sizeof when);
  json_object_set_new(o, "time", json_string(when));
  return o;
}

char *keel_alerts_active_json(void) {
  size_t n = keel_alerts_active(NULL, 0);
  keel_alert *v = NULL;
  for (;;) { /* the list may grow between the count and the copy */
    keel_alert *nv = realloc(v, (n ? n : 1) * sizeof *nv);
    if (!nv) {
      free(v);
      return NULL;
    }
    v = nv;
    size_t got = keel_alerts_active(v, n);
    if (got <= n) {
      n = got;
      break;
    }
    n = got;
  }
  json_t *arr = json_array();
  char *s = NULL;
  if (arr) {
    bool ok = true;
    for (size_t i = 0; i < n && ok; i++) {
      json_t *o = alert_json(&v[i]);
      ok = o && json_array_append_new(arr, o) == 0;
    }
    if (ok) s = json_dumps(arr, JSON_COMPACT | JSON_REAL_PRECISION(10));
    json_decref(arr);
  }
  free(v);
  return s;
}

char *keel_alerts_health_section(void *ud) {
  (void)ud;
  return keel_alerts_active_json();
}

void keel_alerts_stats_get(keel_alerts_stats *out) {
  pthread_mutex_lock(&g.mu);
  *out = g.stats;
  out->running = atomic_load_explicit(&g_pid, memory_order_relaxed) != 0;
  pthread_mutex_unlock(&g.mu);
}
