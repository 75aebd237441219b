/* observer.c - the node seen whole: snapshots, their JSON, and live events.
 *
 * SNAPSHOT. keel_observer_snapshot_take builds its answer from public calls
 * only, in an order chosen so that every cross-reference can be resolved
 * with a hash lookup: first the supervisors (keel_sup_list, then
 * keel_sup_info_get on each with a per-supervisor timeout and an overall
 * budget, so a busy supervisor is marked unresponsive instead of hanging the
 * caller); from their children lists two maps, supervisor pid -> index and
 * child pid -> (supervisor, child id), and the tree (a supervisor listed as
 * another's child is nested under it; the others are roots), which reorders
 * the supervisors into pre-order; then the registered names (keel_registered,
 * copied into one string arena the snapshot owns, pid -> smallest name);
 * then one walk of the process table (keel_rt_processes). The walk sums the
 * totals over every process and keeps the max_processes processes with the
 * longest mailboxes in a bounded min-heap (O(n log k)), sorted at the end, so
 * a node with a million processes produces a bounded answer with complete
 * totals and a "truncated" flag. A process appears at most once: the walk
 * visits each table slot once and keeps a reading only if the slot held the
 * same incarnation throughout. Scheduler utilisation needs two readings of
 * each scheduler's idle time: the previous snapshot's readings are kept here
 * (tagged with the runtime's start time), and the first snapshot of a runtime
 * measures since start.
 *
 * JSON. The encoder is hand-written into a growing buffer (not jansson): a
 * 100,000-process snapshot is about a million JSON values, and building a
 * jansson tree for it costs several times the walk. Strings are escaped and
 * invalid UTF-8 is replaced by U+FFFD, so any jansson/jq reader accepts it.
 *
 * EVENTS. One observer process relays events to subscribers. Sources: the
 * runtime's lifecycle hook (keel_rt_set_proc_events; one per node, installed
 * by keel_observer_start) and a supervisor event handler (keel_sup_subscribe).
 * Both run in other processes' contexts or mid-spawn/mid-exit on scheduler
 * threads, so they do only this: check an atomic mask of what any subscriber
 * wants, reserve a slot in a bounded count of events in flight (past
 * queue_max the event is dropped and counted at the source), and keel_send a
 * filled keel_observer_event to the observer process. The observer process
 * fans each event out to the subscribers that asked for its kind, at most
 * rate_max per subscriber per second and never to a subscriber whose mailbox
 * already holds mailbox_max messages; whatever is not delivered is counted
 * and the count rides on the next event that is (and in the stats). It also
 * sends each stats subscriber a keel_observer_stats every interval (its
 * receive timeout is the next one due), and monitors every subscriber so a
 * dead one is removed. The hooks use only static state (the struct `obs`
 * below): a hook may still be running on another thread just after it was
 * uninstalled, so nothing it touches is ever freed. That state is the
 * observer's share of the node's global state: there is one lifecycle hook
 * per node, so one observer per node. The subscriber table is a fixed array
 * under a mutex (subscribe and unsubscribe come from any thread and take
 * effect at once); the observer process holds the mutex only for short
 * non-waiting work (keel_send never waits). The observer's exit (stop,
 * crash, or keel_rt_stop destroying it) runs a cleanup registered with
 * keel_on_exit_of that uninstalls both hooks and forgets the subscribers.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "keel/message.h"
#include "keel/observer.h"
#include "keel/registry.h"
#include "ops/json_write.h"

#define SUP_TIMEOUT_DEFAULT 500
#define SUP_BUDGET_DEFAULT  3000
#define MAX_SCHEDS          1024 /* keel_rt_start's own limit */

static uint64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- pid -> index hash map (open addressing; pid 0 marks an empty slot) --- */

typedef struct pidmap {
  keel_pid_t *k;
  size_t *v;
  size_t mask; /* capacity - 1; capacity a power of two, at least twice the entries */
} pidmap;

static int pm_init(pidmap *m, size_t n) {
  size_t cap = 16;
  while (cap < 2 * n + 2)
    cap *= 2;
  m->k = calloc(cap, sizeof *m->k);
  m->v = malloc(cap * sizeof *m->v);
  m->mask = cap - 1;
  if (!m->k || !m->v) {
    free(m->k);
    free(m->v);
    memset(m, 0, sizeof *m);
    return KEEL_ENOMEM;
  }
  return 0;
}

static void pm_free(pidmap *m) {
  free(m->k);
  free(m->v);
  memset(m, 0, sizeof *m);
}

static size_t pm_slot(const pidmap *m, keel_pid_t pid) {
  uint64_t h = pid * 0x9E3779B97F4A7C15ull;
  size_t i = (size_t)(h >> 17) & m->mask;
  while (m->k[i] && m->k[i] != pid)
    i = (i + 1) & m->mask;
  return i;
}

/* Inserts pid -> v unless pid is there; returns the slot. Capacity is sized
 * up front by pm_init, so the table never fills. */
static size_t pm_put(pidmap *m, keel_pid_t pid, size_t v) {
  size_t i = pm_slot(m, pid);
  if (!m->k[i]) {
    m->k[i] = pid;
    m->v[i] = v;
  }
  return i;
}

static bool pm_get(const pidmap *m, keel_pid_t pid, size_t *v) {
  if (!m->k || !pid) return false;
  size_t i = pm_slot(m, pid);
  if (!m->k[i]) return false;
  *v = m->v[i];
  return true;
}

/* ---- snapshot ---------------------------------------------------------- */

void keel_observer_opts_init(keel_observer_opts *o) {
  memset(o, 0, sizeof *o);
}

void keel_observer_snapshot_free(keel_observer_snapshot *s) {
  if (!s) return;
  for (size_t i = 0; i < s->nsups; i++)
    free(s->sups[i].children);
  free(s->sups);
  free(s->procs);
  free(s->scheds);
  free(s->strings_);
  memset(s, 0, sizeof *s);
}

const keel_observer_sup *keel_observer_snapshot_sup(const keel_observer_snapshot *s,
                                                    keel_pid_t pid) {
  if (!s || !pid) return NULL;
  for (size_t i = 0; i < s->nsups; i++)
    if (s->sups[i].pid == pid) return &s->sups[i];
  return NULL;
}

/* Asks every supervisor; fills *sups_out (list order) and *n_out. */
static int query_sups(const keel_observer_opts *o, keel_observer_sup **sups_out, size_t *n_out) {
  keel_pid_t *pids = NULL;
  size_t n = 0, cap = 0;
  for (;;) { /* the list may grow between the two calls: retry with room */
    n = keel_sup_list(pids, cap);
    if (n <= cap) break;
    free(pids);
    cap = n + 16;
    if (!(pids = malloc(cap * sizeof *pids))) return KEEL_ENOMEM;
  }
  keel_observer_sup *sups = n ? calloc(n, sizeof *sups) : NULL;
  if (n && !sups) {
    free(pids);
    return KEEL_ENOMEM;
  }
  keel_pid_t self = keel_self();
  uint64_t deadline = mono_ns() + (uint64_t)o->sup_budget_ms * 1000000u;
  for (size_t i = 0; i < n; i++) {
    keel_observer_sup *s = &sups[i];
    s->pid = pids[i];
    s->parent_index = KEEL_OBSERVER_NONE;
    if (pids[i] == self) { /* it would be asked while it waits for the answer */
      s->status = KEEL_EBUSY;
      continue;
    }
    uint64_t now = mono_ns();
    int64_t left = now < deadline ? (int64_t)((deadline - now) / 1000000u) : 0;
    int64_t t = o->sup_timeout_ms < left ? o->sup_timeout_ms : left;
    if (t < 1) t = 1;
    keel_sup_info si;
    int rc = keel_sup_info_get(pids[i], t, &si);
    s->status = rc;
    if (rc == KEEL_ENOMEM) {
      for (size_t j = 0; j < i; j++)
        free(sups[j].children);
      free(sups);
      free(pids);
      return rc;
    }
    if (rc) continue;
    snprintf(s->name, sizeof s->name, "%s", si.name);
    s->strategy = si.strategy;
    s->intensity = si.intensity;
    s->period_ms = si.period_ms;
    s->restarts = si.restarts;
    s->nchildren = si.nchildren;
    s->children = si.children; /* ownership moves to the snapshot */
  }
  free(pids);
  *sups_out = sups;
  *n_out = n;
  return 0;
}

/* Pre-order: appends sup i, then the supervisors nested under it in the order
 * of i's children list. */
static void preorder(keel_observer_sup *sups, const pidmap *supmap, size_t i, unsigned depth,
                     bool *done, size_t *order, size_t *k) {
  done[i] = true;
  sups[i].depth = depth;
  order[(*k)++] = i;
  for (size_t c = 0; c < sups[i].nchildren; c++) {
    size_t j;
    if (pm_get(supmap, sups[i].children[c].pid, &j) && !done[j] && sups[j].parent == sups[i].pid)
      preorder(sups, supmap, j, depth + 1, done, order, k);
  }
}

/* Finds each supervisor's parent and reorders sups into tree pre-order. */
static int build_tree(keel_observer_sup *sups, size_t n) {
  if (!n) return 0;
  pidmap supmap;
  if (pm_init(&supmap, n)) return KEEL_ENOMEM;
  for (size_t i = 0; i < n; i++)
    pm_put(&supmap, sups[i].pid, i);
  for (size_t i = 0; i < n; i++)
    for (size_t c = 0; c < sups[i].nchildren; c++) {
      size_t j;
      if (pm_get(&supmap, sups[i].children[c].pid, &j) && j != i && !sups[j].parent)
        sups[j].parent = sups[i].pid;
    }
  bool *done = calloc(n, sizeof *done);
  size_t *order = malloc(n * sizeof *order);
  keel_observer_sup *tmp = malloc(n * sizeof *tmp);
  if (!done || !order || !tmp) {
    free(done);
    free(order);
    free(tmp);
    pm_free(&supmap);
    return KEEL_ENOMEM;
  }
  size_t k = 0;
  for (size_t i = 0; i < n; i++)
    if (!sups[i].parent) preorder(sups, &supmap, i, 0, done, order, &k);
  for (size_t i = 0; i < n; i++) /* a cycle (not possible in a real tree): roots */
    if (!done[i]) {
      sups[i].parent = 0;
      preorder(sups, &supmap, i, 0, done, order, &k);
    }
  size_t *newpos = malloc(n * sizeof *newpos);
  if (!newpos) {
    free(done);
    free(order);
    free(tmp);
    pm_free(&supmap);
    return KEEL_ENOMEM;
  }
  for (size_t r = 0; r < n; r++) {
    tmp[r] = sups[order[r]];
    newpos[order[r]] = r;
  }
  for (size_t r = 0; r < n; r++) {
    size_t j;
    tmp[r].parent_index = KEEL_OBSERVER_NONE;
    if (tmp[r].parent && pm_get(&supmap, tmp[r].parent, &j)) tmp[r].parent_index = newpos[j];
  }
  memcpy(sups, tmp, n * sizeof *sups);
  free(newpos);
  free(done);
  free(order);
  free(tmp);
  pm_free(&supmap);
  return 0;
}

/* Registered names, collected into one arena. */
typedef struct names {
  char *arena;
  size_t len, cap;
  keel_pid_t *pid;
  size_t *off;
  size_t n, ncap;
  bool oom;
} names;

static void collect_name(const char *name, keel_pid_t pid, void *ud) {
  names *nm = ud;
  if (nm->oom) return;
  size_t l = strlen(name) + 1;
  if (nm->len + l > nm->cap) {
    size_t cap = nm->cap ? nm->cap : 1024;
    while (cap < nm->len + l)
      cap *= 2;
    char *a = realloc(nm->arena, cap);
    if (!a) {
      nm->oom = true;
      return;
    }
    nm->arena = a;
    nm->cap = cap;
  }
  if (nm->n == nm->ncap) {
    size_t cap = nm->ncap ? nm->ncap * 2 : 32;
    keel_pid_t *p = realloc(nm->pid, cap * sizeof *p);
    if (p) nm->pid = p;
    size_t *o = p ? realloc(nm->off, cap * sizeof *o) : NULL;
    if (!o) {
      nm->oom = true;
      return;
    }
    nm->off = o;
    nm->ncap = cap;
  }
  memcpy(nm->arena + nm->len, name, l);
  nm->pid[nm->n] = pid;
  nm->off[nm->n++] = nm->len;
  nm->len += l;
}

/* The walk's state. */
typedef struct walk {
  keel_observer_snapshot *s;
  size_t max; /* 0: list none */
  size_t cap;
  bool heap; /* procs is a min-heap of the best `max` (when max is finite) */
  bool oom;
  const pidmap *names, *children, *sups;
  const char *arena;
  const keel_pid_t *child_sup;
  const char *const *child_id;
} walk;

/* a ranks before b: longer mailbox, then lower pid */
static bool ranks_before(const keel_observer_proc *a, const keel_observer_proc *b) {
  return a->mailbox_len > b->mailbox_len || (a->mailbox_len == b->mailbox_len && a->pid < b->pid);
}

static int cmp_rank(const void *x, const void *y) {
  const keel_observer_proc *a = x, *b = y;
  return ranks_before(a, b) ? -1 : ranks_before(b, a) ? 1 : 0;
}

static void heap_down(keel_observer_proc *h, size_t n, size_t i) {
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, w = i; /* w: the one ranking last */
    if (l < n && ranks_before(&h[w], &h[l])) w = l;
    if (r < n && ranks_before(&h[w], &h[r])) w = r;
    if (w == i) return;
    keel_observer_proc t = h[i];
    h[i] = h[w];
    h[w] = t;
    i = w;
  }
}

static void heap_up(keel_observer_proc *h, size_t i) {
  while (i) {
    size_t p = (i - 1) / 2;
    if (!ranks_before(&h[p], &h[i])) return;
    keel_observer_proc t = h[i];
    h[i] = h[p];
    h[p] = t;
    i = p;
  }
}

static void fill_proc(const walk *w, const keel_proc_info *in, keel_observer_proc *p) {
  p->pid = in->pid;
  p->parent = in->parent;
  memcpy(p->name, in->name, sizeof p->name);
  p->status = in->status;
  p->waiting_for = in->waiting_for;
  p->scheduler = in->scheduler;
  p->mailbox_len = in->mailbox_len;
  p->messages_in = in->messages_in;
  p->messages_handled = in->messages_handled;
  p->memory = in->memory;
  p->age_ms = in->age_ms;
  size_t v;
  p->registered = pm_get(w->names, in->pid, &v) ? w->arena + v : "";
  if (pm_get(w->children, in->pid, &v)) {
    p->supervisor = w->child_sup[v];
    p->child_id = w->child_id[v];
  } else {
    p->supervisor = 0;
    p->child_id = "";
  }
  p->is_supervisor = pm_get(w->sups, in->pid, &v);
}

static bool visit(const keel_proc_info *in, void *ud) {
  walk *w = ud;
  keel_observer_snapshot *s = w->s;
  keel_observer_totals *t = &s->totals;
  t->processes++;
  if (t->processes % 16384 == 0) keel_yield(); /* a long walk lets others run */
  t->mailbox_messages += in->mailbox_len;
  if (in->mailbox_len > t->max_mailbox_len) t->max_mailbox_len = in->mailbox_len;
  t->messages_handled += in->messages_handled;
  t->process_memory += in->memory;
  if (!w->max || w->oom) return true;
  if (s->nprocs < w->max) {
    if (s->nprocs == w->cap) {
      size_t cap = w->cap ? w->cap * 2 : 1024;
      if (cap > w->max) cap = w->max;
      keel_observer_proc *v = realloc(s->procs, cap * sizeof *v);
      if (!v) {
        w->oom = true;
        return true;
      }
      s->procs = v;
      w->cap = cap;
    }
    fill_proc(w, in, &s->procs[s->nprocs]);
    if (w->heap) heap_up(s->procs, s->nprocs);
    s->nprocs++;
    return true;
  }
  /* full: keep it only if it ranks before the last-ranked kept one (the root) */
  s->truncated = true;
  keel_observer_proc root = s->procs[0];
  keel_observer_proc cand;
  cand.pid = in->pid;
  cand.mailbox_len = in->mailbox_len;
  if (!ranks_before(&cand, &root)) return true;
  fill_proc(w, in, &s->procs[0]);
  heap_down(s->procs, s->nprocs, 0);
  return true;
}

/* The previous scheduler readings, for utilisation between snapshots. */
static struct {
  pthread_mutex_t lock;
  uint64_t started_ms; /* the runtime they belong to */
  int n;
  uint64_t t_ns;
  uint64_t idle[MAX_SCHEDS];
} prev = {.lock = PTHREAD_MUTEX_INITIALIZER};

static int read_scheds(keel_observer_snapshot *s) {
  int n = keel_sched_count();
  if (n <= 0) return KEEL_ESTATE;
  if (n > MAX_SCHEDS) n = MAX_SCHEDS;
  s->scheds = calloc((size_t)n, sizeof *s->scheds);
  if (!s->scheds) return KEEL_ENOMEM;
  s->nscheds = (size_t)n;
  uint64_t started = keel_rt_started_ms();
  uint64_t now = mono_ns();
  pthread_mutex_lock(&prev.lock);
  bool have = prev.started_ms == started && prev.n == n && now > prev.t_ns + 1000000u;
  uint64_t from = have ? prev.t_ns : started * 1000000u;
  uint64_t window = now > from ? now - from : 1;
  s->utilisation_window_ms = (int64_t)(window / 1000000u);
  for (int i = 0; i < n; i++) {
    keel_observer_sched *sc = &s->scheds[i];
    if (keel_rt_sched_info(i, &sc->info)) continue;
    uint64_t base = have ? prev.idle[i] : 0;
    uint64_t idle = sc->info.idle_ns > base ? sc->info.idle_ns - base : 0;
    double u = 1.0 - (double)idle / (double)window;
    sc->utilisation = u < 0 ? 0 : u > 1 ? 1 : u;
    prev.idle[i] = sc->info.idle_ns;
  }
  prev.started_ms = started;
  prev.n = n;
  prev.t_ns = now;
  pthread_mutex_unlock(&prev.lock);
  return 0;
}

int keel_observer_snapshot_take(const keel_observer_opts *opts, keel_observer_snapshot *out) {
  if (!out) return KEEL_EINVAL;
  memset(out, 0, sizeof *out);
  keel_observer_opts o;
  if (opts)
    o = *opts;
  else
    keel_observer_opts_init(&o);
  if (o.sup_timeout_ms < 0 || o.sup_budget_ms < 0) return KEEL_EINVAL;
  if (!o.sup_timeout_ms) o.sup_timeout_ms = SUP_TIMEOUT_DEFAULT;
  if (!o.sup_budget_ms) o.sup_budget_ms = SUP_BUDGET_DEFAULT;
  if (!o.max_processes) o.max_processes = KEEL_OBSERVER_MAX_PROCS_DEFAULT;
  if (o.skip_processes) o.max_processes = 0;
  if (keel_sched_count() <= 0) return KEEL_ESTATE;
  if (!keel_self()) return KEEL_ENOTPROC;

  uint64_t t0 = mono_ns();
  keel_observer_snapshot *s = out;
  s->time_ms = wall_ms();
  uint64_t started = keel_rt_started_ms();
  s->uptime_ms = t0 / 1000000u > started ? t0 / 1000000u - started : 0;

  pidmap supmap = {0}, childmap = {0}, namemap = {0};
  keel_pid_t *child_sup = NULL;
  const char **child_id = NULL;
  names nm = {0};
  int rc = query_sups(&o, &s->sups, &s->nsups);
  if (rc) goto fail;
  if ((rc = build_tree(s->sups, s->nsups))) goto fail;

  size_t nchildren = 0;
  for (size_t i = 0; i < s->nsups; i++)
    nchildren += s->sups[i].nchildren;
  rc = KEEL_ENOMEM;
  if (pm_init(&supmap, s->nsups) || pm_init(&childmap, nchildren)) goto fail;
  child_sup = malloc((nchildren ? nchildren : 1) * sizeof *child_sup);
  child_id = malloc((nchildren ? nchildren : 1) * sizeof *child_id);
  if (!child_sup || !child_id) goto fail;
  size_t k = 0;
  for (size_t i = 0; i < s->nsups; i++) {
    keel_observer_sup *sp = &s->sups[i];
    pm_put(&supmap, sp->pid, i);
    s->totals.restarts += sp->restarts;
    if (sp->status) s->totals.unresponsive_supervisors++;
    for (size_t c = 0; c < sp->nchildren; c++) {
      if (!sp->children[c].pid) continue;
      child_sup[k] = sp->pid;
      child_id[k] = sp->children[c].id;
      pm_put(&childmap, sp->children[c].pid, k++);
    }
  }
  s->totals.supervisors = s->nsups;

  keel_registered(collect_name, &nm);
  if (nm.oom) goto fail;
  s->totals.registered_names = nm.n;
  if (pm_init(&namemap, nm.n)) goto fail;
  for (size_t i = 0; i < nm.n; i++) {
    size_t slot = pm_put(&namemap, nm.pid[i], nm.off[i]);
    if (strcmp(nm.arena + nm.off[i], nm.arena + namemap.v[slot]) < 0) namemap.v[slot] = nm.off[i];
  }
  s->strings_ = nm.arena;
  nm.arena = NULL;

  walk w = {.s = s,
            .max = o.max_processes,
            .heap = o.max_processes != KEEL_OBSERVER_ALL_PROCS,
            .names = &namemap,
            .children = &childmap,
            .sups = &supmap,
            .arena = s->strings_,
            .child_sup = child_sup,
            .child_id = child_id};
  keel_rt_processes(visit, &w);
  if (w.oom) goto fail;
  if (s->nprocs) qsort(s->procs, s->nprocs, sizeof *s->procs, cmp_rank);

  if ((rc = read_scheds(s))) goto fail;
  keel_rt_stats_get(&s->totals.rt);
  keel_sys_memory_get(&s->memory);
  rc = 0;
  s->duration_us = (int64_t)((mono_ns() - t0) / 1000u);
fail:
  pm_free(&supmap);
  pm_free(&childmap);
  pm_free(&namemap);
  free(child_sup);
  free(child_id);
  free(nm.arena);
  free(nm.pid);
  free(nm.off);
  if (rc) keel_observer_snapshot_free(s);
  return rc;
}

/* ---- JSON ---------------------------------------------------------------- */

static void jb_bool(keel__jw *b, bool v) {
  if (v)
    KEEL__JW_LIT(b, "true");
  else
    KEEL__JW_LIT(b, "false");
}

static void jb_pid(keel__jw *b, keel_pid_t pid) {
  if (!pid) {
    KEEL__JW_LIT(b, "null");
    return;
  }
  char t[32];
  keel_pid_format(pid, t, sizeof t);
  keel__jw_str(b, t);
}

/* ,"key": */
static void jb_key(keel__jw *b, const char *key, bool first) {
  if (!first) KEEL__JW_LIT(b, ",");
  keel__jw_str(b, key);
  KEEL__JW_LIT(b, ":");
}

static const char *sup_status_name(int status) {
  switch (status) {
  case 0: return "ok";
  case KEEL_ETIMEDOUT:
  case KEEL_EBUSY: return "unresponsive";
  case KEEL_ENOPROC:
  case KEEL_EDOWN: return "gone";
  default: return "error";
  }
}

static const char *restart_name(keel_sup_restart r) {
  switch (r) {
  case KEEL_SUP_PERMANENT: return "permanent";
  case KEEL_SUP_TRANSIENT: return "transient";
  case KEEL_SUP_TEMPORARY: return "temporary";
  }
  return "unknown";
}

static void jb_child(keel__jw *b, const keel_sup_child_info *c) {
  jb_key(b, "id", true);
  keel__jw_str(b, c->id);
  jb_key(b, "pid", false);
  jb_pid(b, c->pid);
  jb_key(b, "type", false);
  keel__jw_str(b, c->type == KEEL_SUP_SUPERVISOR ? "supervisor" : "worker");
  jb_key(b, "restart", false);
  keel__jw_str(b, restart_name(c->restart));
  jb_key(b, "restarts", false);
  keel__jw_u64(b, c->restarts);
}

/* The fields a supervisor has in "supervisors" and in "tree" (no braces). */
static void jb_sup_fields(keel__jw *b, const keel_observer_sup *s) {
  jb_key(b, "pid", true);
  jb_pid(b, s->pid);
  jb_key(b, "name", false);
  keel__jw_str(b, s->name);
  jb_key(b, "status", false);
  keel__jw_str(b, sup_status_name(s->status));
  jb_key(b, "strategy", false);
  if (s->status)
    KEEL__JW_LIT(b, "null");
  else
    keel__jw_str(b, keel_sup_strategy_name(s->strategy));
  jb_key(b, "intensity", false);
  keel__jw_i64(b, s->intensity);
  jb_key(b, "period_ms", false);
  keel__jw_i64(b, s->period_ms);
  jb_key(b, "restarts", false);
  keel__jw_u64(b, s->restarts);
}

static void jb_tree(keel__jw *b, const keel_observer_snapshot *snap, const pidmap *supmap, size_t i) {
  const keel_observer_sup *s = &snap->sups[i];
  KEEL__JW_LIT(b, "{");
  jb_sup_fields(b, s);
  jb_key(b, "children", false);
  KEEL__JW_LIT(b, "[");
  for (size_t c = 0; c < s->nchildren; c++) {
    if (c) KEEL__JW_LIT(b, ",");
    KEEL__JW_LIT(b, "{");
    jb_child(b, &s->children[c]);
    size_t j;
    if (pm_get(supmap, s->children[c].pid, &j) && snap->sups[j].parent_index == i) {
      jb_key(b, "supervisor", false);
      jb_tree(b, snap, supmap, j);
    }
    KEEL__JW_LIT(b, "}");
  }
  KEEL__JW_LIT(b, "]}");
}

/* A formatted pid, remembered: parents and supervisors repeat from one
 * process to the next, and formatting is most of a process's encoding. */
typedef struct pidcache {
  keel_pid_t pid;
  size_t len;
  char s[40];
} pidcache;

static void jb_pid_cached(keel__jw *b, pidcache *c, keel_pid_t pid) {
  if (!pid) {
    KEEL__JW_LIT(b, "null");
    return;
  }
  if (c->pid != pid) {
    char t[32];
    keel_pid_format(pid, t, sizeof t);
    c->len = (size_t)snprintf(c->s, sizeof c->s, "\"%s\"", t); /* pids need no escaping */
    c->pid = pid;
  }
  keel__jw_put(b, c->s, c->len);
}

static void jb_proc(keel__jw *b, const keel_observer_proc *p, pidcache pc[3]) {
  KEEL__JW_LIT(b, "{\"pid\":");
  jb_pid_cached(b, &pc[0], p->pid);
  KEEL__JW_LIT(b, ",\"name\":");
  keel__jw_str(b, p->name);
  KEEL__JW_LIT(b, ",\"registered\":");
  if (p->registered && *p->registered)
    keel__jw_str(b, p->registered);
  else
    KEEL__JW_LIT(b, "null");
  KEEL__JW_LIT(b, ",\"status\":");
  keel__jw_str(b, p->status);
  KEEL__JW_LIT(b, ",\"waiting_for\":");
  keel__jw_str(b, p->waiting_for);
  KEEL__JW_LIT(b, ",\"scheduler\":");
  keel__jw_i64(b, p->scheduler);
  KEEL__JW_LIT(b, ",\"mailbox_len\":");
  keel__jw_u64(b, p->mailbox_len);
  KEEL__JW_LIT(b, ",\"messages_in\":");
  keel__jw_u64(b, p->messages_in);
  KEEL__JW_LIT(b, ",\"messages_handled\":");
  keel__jw_u64(b, p->messages_handled);
  KEEL__JW_LIT(b, ",\"memory\":");
  keel__jw_u64(b, p->memory);
  KEEL__JW_LIT(b, ",\"age_ms\":");
  keel__jw_i64(b, p->age_ms);
  KEEL__JW_LIT(b, ",\"parent\":");
  jb_pid_cached(b, &pc[1], p->parent);
  KEEL__JW_LIT(b, ",\"supervisor\":");
  jb_pid_cached(b, &pc[2], p->supervisor);
  KEEL__JW_LIT(b, ",\"child_id\":");
  if (p->supervisor)
    keel__jw_str(b, p->child_id);
  else
    KEEL__JW_LIT(b, "null");
  KEEL__JW_LIT(b, ",\"is_supervisor\":");
  jb_bool(b, p->is_supervisor);
  KEEL__JW_LIT(b, "}");
}

int keel_observer_snapshot_to_json(const keel_observer_snapshot *snap, char **json, size_t *len) {
  if (!snap || !json) return KEEL_EINVAL;
  *json = NULL;
  if (len) *len = 0;
  pidmap supmap = {0};
  if (pm_init(&supmap, snap->nsups)) return KEEL_ENOMEM;
  for (size_t i = 0; i < snap->nsups; i++)
    pm_put(&supmap, snap->sups[i].pid, i);
  keel__jw b = {0};
  keel__jw_room(&b, 512 + snap->nprocs * 320 + snap->nsups * 256);
  const keel_observer_totals *t = &snap->totals;
  const keel_rt_stats *rt = &t->rt;

  KEEL__JW_LIT(&b, "{\"version\":1");
  jb_key(&b, "time_ms", false);
  keel__jw_u64(&b, snap->time_ms);
  jb_key(&b, "uptime_ms", false);
  keel__jw_u64(&b, snap->uptime_ms);
  jb_key(&b, "duration_us", false);
  keel__jw_i64(&b, snap->duration_us);
  jb_key(&b, "truncated", false);
  jb_bool(&b, snap->truncated);
  jb_key(&b, "processes_listed", false);
  keel__jw_u64(&b, snap->nprocs);

  jb_key(&b, "totals", false);
  KEEL__JW_LIT(&b, "{");
  jb_key(&b, "processes", true);
  keel__jw_u64(&b, t->processes);
  jb_key(&b, "mailbox_messages", false);
  keel__jw_u64(&b, t->mailbox_messages);
  jb_key(&b, "max_mailbox_len", false);
  keel__jw_u64(&b, t->max_mailbox_len);
  jb_key(&b, "messages_handled", false);
  keel__jw_u64(&b, t->messages_handled);
  jb_key(&b, "process_memory", false);
  keel__jw_u64(&b, t->process_memory);
  jb_key(&b, "supervisors", false);
  keel__jw_u64(&b, t->supervisors);
  jb_key(&b, "unresponsive_supervisors", false);
  keel__jw_u64(&b, t->unresponsive_supervisors);
  jb_key(&b, "restarts", false);
  keel__jw_u64(&b, t->restarts);
  jb_key(&b, "registered_names", false);
  keel__jw_u64(&b, t->registered_names);
  jb_key(&b, "procs_alive", false);
  keel__jw_u64(&b, rt->procs_alive);
  jb_key(&b, "procs_spawned", false);
  keel__jw_u64(&b, rt->procs_spawned);
  jb_key(&b, "procs_exited", false);
  keel__jw_u64(&b, rt->procs_exited);
  jb_key(&b, "msgs_sent", false);
  keel__jw_u64(&b, rt->msgs_sent);
  jb_key(&b, "msgs_to_dead", false);
  keel__jw_u64(&b, rt->msgs_to_dead);
  jb_key(&b, "replies_dropped", false);
  keel__jw_u64(&b, rt->replies_dropped);
  jb_key(&b, "context_switches", false);
  keel__jw_u64(&b, rt->context_switches);
  jb_key(&b, "steals", false);
  keel__jw_u64(&b, rt->steals);
  jb_key(&b, "blocking_queued", false);
  keel__jw_u64(&b, rt->blocking_queued);
  jb_key(&b, "blocking_running", false);
  keel__jw_u64(&b, rt->blocking_running);
  jb_key(&b, "stuck_reports", false);
  keel__jw_u64(&b, rt->stuck_reports);
  KEEL__JW_LIT(&b, "}");

  const keel_sys_memory *m = &snap->memory;
  jb_key(&b, "memory", false);
  KEEL__JW_LIT(&b, "{");
  jb_key(&b, "rss_bytes", true);
  keel__jw_u64(&b, m->rss_bytes);
  jb_key(&b, "heap_bytes", false);
  keel__jw_u64(&b, m->heap_bytes);
  jb_key(&b, "virtual_bytes", false);
  keel__jw_u64(&b, m->virtual_bytes);
  jb_key(&b, "limit_bytes", false);
  if (m->limit_bytes)
    keel__jw_u64(&b, m->limit_bytes);
  else
    KEEL__JW_LIT(&b, "null");
  jb_key(&b, "cgroup_usage_bytes", false);
  keel__jw_u64(&b, m->cgroup_usage_bytes);
  jb_key(&b, "system_bytes", false);
  keel__jw_u64(&b, m->system_bytes);
  jb_key(&b, "process_bytes", false);
  keel__jw_u64(&b, t->process_memory);
  KEEL__JW_LIT(&b, "}");

  jb_key(&b, "schedulers", false);
  KEEL__JW_LIT(&b, "[");
  for (size_t i = 0; i < snap->nscheds; i++) {
    const keel_observer_sched *s = &snap->scheds[i];
    if (i) KEEL__JW_LIT(&b, ",");
    KEEL__JW_LIT(&b, "{");
    jb_key(&b, "id", true);
    keel__jw_i64(&b, s->info.id);
    jb_key(&b, "utilisation", false);
    keel__jw_double(&b, s->utilisation);
    jb_key(&b, "stuck", false);
    jb_bool(&b, s->info.stuck);
    jb_key(&b, "running", false);
    jb_pid(&b, s->info.running);
    jb_key(&b, "run_queue", false);
    keel__jw_u64(&b, s->info.run_queue);
    jb_key(&b, "idle_ns", false);
    keel__jw_u64(&b, s->info.idle_ns);
    jb_key(&b, "switches", false);
    keel__jw_u64(&b, s->info.switches);
    KEEL__JW_LIT(&b, "}");
  }
  KEEL__JW_LIT(&b, "]");
  jb_key(&b, "utilisation_window_ms", false);
  keel__jw_i64(&b, snap->utilisation_window_ms);

  jb_key(&b, "supervisors", false);
  KEEL__JW_LIT(&b, "[");
  for (size_t i = 0; i < snap->nsups; i++) {
    const keel_observer_sup *s = &snap->sups[i];
    if (i) KEEL__JW_LIT(&b, ",");
    KEEL__JW_LIT(&b, "{");
    jb_sup_fields(&b, s);
    jb_key(&b, "supervisor", false);
    jb_pid(&b, s->parent);
    jb_key(&b, "depth", false);
    keel__jw_u64(&b, s->depth);
    jb_key(&b, "children", false);
    KEEL__JW_LIT(&b, "[");
    for (size_t c = 0; c < s->nchildren; c++) {
      if (c) KEEL__JW_LIT(&b, ",");
      KEEL__JW_LIT(&b, "{");
      jb_child(&b, &s->children[c]);
      KEEL__JW_LIT(&b, "}");
    }
    KEEL__JW_LIT(&b, "]}");
  }
  KEEL__JW_LIT(&b, "]");

  jb_key(&b, "tree", false);
  KEEL__JW_LIT(&b, "[");
  bool first = true;
  for (size_t i = 0; i < snap->nsups; i++) {
    if (snap->sups[i].parent_index != KEEL_OBSERVER_NONE) continue;
    if (!first) KEEL__JW_LIT(&b, ",");
    first = false;
    jb_tree(&b, snap, &supmap, i);
  }
  KEEL__JW_LIT(&b, "]");

  jb_key(&b, "processes", false);
  KEEL__JW_LIT(&b, "[");
  pidcache pc[3];
  memset(pc, 0, sizeof pc);
  for (size_t i = 0; i < snap->nprocs; i++) {
    if (i) KEEL__JW_LIT(&b, ",");
    jb_proc(&b, &snap->procs[i], pc);
    if (i % 4096 == 4095)
      keel_yield(); /* a long encoding lets others run (no-op outside a process) */
  }
  KEEL__JW_LIT(&b, "]}");
  pm_free(&supmap);
  keel__jw_room(&b, 1); /* the terminator */
  if (b.oom) {
    free(b.p);
    return KEEL_ENOMEM;
  }
  b.p[b.len] = 0;
  *json = b.p;
  if (len) *len = b.len;
  return 0;
}

int keel_observer_snapshot_json(char **json, size_t *len) {
  if (!json) return KEEL_EINVAL;
  *json = NULL;
  keel_observer_snapshot snap;
  int rc = keel_observer_snapshot_take(NULL, &snap);
  if (rc) return rc;
  rc = keel_observer_snapshot_to_json(&snap, json, len);
  keel_observer_snapshot_free(&snap);
  return rc;
}

/* ---- events ---------------------------------------------------------------- */

const char *keel_observer_kind_name(keel_observer_kind k) {
  switch (k) {
  case KEEL_OBS_PROC_STARTED: return "process_started";
  case KEEL_OBS_PROC_EXITED: return "process_exited";
  case KEEL_OBS_CHILD_RESTARTED: return "child_restarted";
  case KEEL_OBS_INTENSITY_EXCEEDED: return "intensity_exceeded";
  case KEEL_OBS_STATS: return "stats";
  }
  return "unknown";
}

/* Messages to the observer process (never seen by subscribers). */
enum {
  T_EVENT = 0x6B6F6201u, /* a keel_observer_event to fan out */
  T_SUB = 0x6B6F6202u,   /* a pid subscribed: monitor it, recompute timers */
  T_UNSUB = 0x6B6F6203u  /* a monitor ref to drop */
};

#define RATE_DEFAULT    1000
#define QUEUE_DEFAULT   4096
#define MAILBOX_DEFAULT 10000
#define STATS_DEFAULT   1000
#define STATS_MIN       10

typedef struct sub {
  keel_pid_t pid;
  unsigned kinds;
  int64_t interval_ms;
  /* the observer process's bookkeeping */
  keel_ref_t mon;
  uint64_t next_stats_ms; /* monotonic */
  uint64_t win_start_ms;
  uint32_t win_count;
  uint64_t dropped; /* since the last event it was sent */
  uint64_t dropped_total;
  uint64_t last_idle_ns, last_ns; /* scheduler idle sum at its previous stats */
} sub;

static struct {
  pthread_mutex_t lock; /* guards everything below but the atomics */
  keel_pid_t pid;       /* the observer process, 0 when not running */
  int sup_handle;
  keel_observer_start_opts opt;
  sub subs[KEEL_OBSERVER_MAX_SUBSCRIBERS];
  size_t nsubs;
  /* Read by the hooks without the lock. relaxed everywhere: each is a hint
   * or a counter; a hook that reads a stale `relay` sends one message to a
   * dead process (dropped by the runtime) or misses one event at the very
   * moment of a subscribe on another thread, never anything worse. A
   * subscribe that happens-before a spawn is seen by that spawn's hook (the
   * coherence of a single atomic). */
  _Atomic keel_pid_t relay;
  atomic_uint want;    /* union of the subscribers' kinds */
  atomic_uint pending; /* events sent to the observer and not yet handled */
  atomic_uint queue_max;
  atomic_ullong src_dropped[4]; /* dropped at the source (queue full or no memory),
                                   by kind (bit index) */
} obs = {.lock = PTHREAD_MUTEX_INITIALIZER};

static uint64_t mono_ms(void) {
  return mono_ns() / 1000000u;
}

static unsigned kind_index(unsigned bit) {
  return bit == KEEL_OBS_PROC_STARTED      ? 0
         : bit == KEEL_OBS_PROC_EXITED     ? 1
         : bit == KEEL_OBS_CHILD_RESTARTED ? 2
                                           : 3;
}

static void src_drop(unsigned bit) {
  atomic_fetch_add_explicit(&obs.src_dropped[kind_index(bit)], 1, memory_order_relaxed);
}

/* Sends ev to the observer if its bounded queue of events has room. */
static void relay_event(keel_pid_t to, const keel_observer_event *ev) {
  unsigned n = atomic_fetch_add_explicit(&obs.pending, 1, memory_order_relaxed);
  if (n >= atomic_load_explicit(&obs.queue_max, memory_order_relaxed)) {
    atomic_fetch_sub_explicit(&obs.pending, 1, memory_order_relaxed);
    src_drop(ev->kind);
    return;
  }
  keel_msg_t *m = keel_msg_copy(T_EVENT, ev, sizeof *ev);
  if (!m) {
    atomic_fetch_sub_explicit(&obs.pending, 1, memory_order_relaxed);
    src_drop(ev->kind);
    return;
  }
  keel_send(to, m);
}

/* The runtime's lifecycle hook: mid-spawn or mid-exit on a scheduler thread. */
static void on_proc_event(const keel_proc_event *pe, void *ud) {
  (void)ud;
  unsigned bit = pe->kind == KEEL_PROC_STARTED ? KEEL_OBS_PROC_STARTED : KEEL_OBS_PROC_EXITED;
  if (!(atomic_load_explicit(&obs.want, memory_order_relaxed) & bit)) return;
  keel_pid_t to = atomic_load_explicit(&obs.relay, memory_order_relaxed);
  if (!to || pe->pid == to) return;
  keel_observer_event ev;
  memset(&ev, 0, sizeof ev);
  ev.kind = (keel_observer_kind)bit;
  ev.pid = pe->pid;
  ev.parent = pe->parent;
  snprintf(ev.name, sizeof ev.name, "%s", pe->name ? pe->name : "");
  if (pe->kind == KEEL_PROC_EXITED) {
    ev.reason = (keel_reason_kind)pe->reason;
    snprintf(ev.reason_text, sizeof ev.reason_text, "%s", pe->reason_text ? pe->reason_text : "");
  }
  relay_event(to, &ev);
}

/* The supervisor handler: runs in the supervisor's process. */
static void on_sup_event(const keel_sup_event *se, void *ud) {
  (void)ud;
  unsigned bit;
  if (se->kind == KEEL_SUP_CHILD_RESTARTED)
    bit = KEEL_OBS_CHILD_RESTARTED;
  else if (se->kind == KEEL_SUP_INTENSITY_EXCEEDED)
    bit = KEEL_OBS_INTENSITY_EXCEEDED;
  else
    return;
  if (!(atomic_load_explicit(&obs.want, memory_order_relaxed) & bit)) return;
  keel_pid_t to = atomic_load_explicit(&obs.relay, memory_order_relaxed);
  if (!to) return;
  keel_observer_event ev;
  memset(&ev, 0, sizeof ev);
  ev.kind = (keel_observer_kind)bit;
  ev.pid = se->child;
  ev.supervisor = se->sup;
  ev.attempt = se->attempt;
  ev.reason = se->reason.kind;
  snprintf(ev.sup_name, sizeof ev.sup_name, "%s", se->sup_name ? se->sup_name : "");
  snprintf(ev.child_id, sizeof ev.child_id, "%s", se->child_id ? se->child_id : "");
  snprintf(ev.reason_text, sizeof ev.reason_text, "%s", se->reason.text ? se->reason.text : "");
  relay_event(to, &ev);
}

static void recompute_want_locked(void) {
  unsigned w = 0;
  for (size_t i = 0; i < obs.nsubs; i++)
    w |= obs.subs[i].kinds;
  atomic_store_explicit(&obs.want, w, memory_order_relaxed);
}

static sub *find_locked(keel_pid_t pid) {
  for (size_t i = 0; i < obs.nsubs; i++)
    if (obs.subs[i].pid == pid) return &obs.subs[i];
  return NULL;
}

static void remove_locked(sub *s) {
  size_t i = (size_t)(s - obs.subs);
  memmove(&obs.subs[i], &obs.subs[i + 1], (obs.nsubs - i - 1) * sizeof *s);
  obs.nsubs--;
  recompute_want_locked();
}

/* Uninstalls the hooks and forgets the subscribers. */
static void teardown_locked(void) {
  atomic_store_explicit(&obs.relay, 0, memory_order_relaxed);
  atomic_store_explicit(&obs.want, 0, memory_order_relaxed);
  keel_rt_set_proc_events(NULL, NULL);
  if (obs.sup_handle > 0) keel_sup_unsubscribe(obs.sup_handle);
  obs.sup_handle = 0;
  obs.nsubs = 0;
  obs.pid = 0;
}

/* Runs when the observer process is gone, whatever ended it. */
static void on_observer_exit(void *arg) {
  keel_pid_t pid = (keel_pid_t)(uintptr_t)arg;
  pthread_mutex_lock(&obs.lock);
  if (obs.pid == pid) teardown_locked();
  pthread_mutex_unlock(&obs.lock);
}

static uint64_t idle_sum(int n) {
  uint64_t t = 0;
  for (int i = 0; i < n; i++) {
    keel_sched_info si;
    if (keel_rt_sched_info(i, &si) == 0) t += si.idle_ns;
  }
  return t;
}

/* Sends the stats that are due; returns the time to the next one (ms) or
 * KEEL_INFINITY. */
static int64_t stats_tick(void) {
  uint64_t now = mono_ms();
  int64_t wait = KEEL_INFINITY;
  keel_observer_stats st;
  bool have = false;
  uint64_t idle = 0, now_ns = 0;
  pthread_mutex_lock(&obs.lock);
  for (size_t i = 0; i < obs.nsubs; i++) {
    sub *s = &obs.subs[i];
    if (!(s->kinds & KEEL_OBS_STATS)) continue;
    if (!s->next_stats_ms) s->next_stats_ms = now + (uint64_t)s->interval_ms;
    if (now >= s->next_stats_ms) {
      if (!have) {
        memset(&st, 0, sizeof st);
        st.time_ms = wall_ms();
        uint64_t started = keel_rt_started_ms();
        st.uptime_ms = now > started ? now - started : 0;
        keel_rt_stats_get(&st.rt);
        keel_sys_memory_get(&st.memory);
        st.schedulers = keel_sched_count();
        st.supervisors = keel_sup_list(NULL, 0);
        idle = idle_sum(st.schedulers);
        now_ns = mono_ns();
        have = true;
      }
      uint64_t from_ns = s->last_ns ? s->last_ns : keel_rt_started_ms() * 1000000u;
      uint64_t from_idle = s->last_ns ? s->last_idle_ns : 0;
      double wall = (double)(now_ns > from_ns ? now_ns - from_ns : 1) * st.schedulers;
      double u = 1.0 - (double)(idle > from_idle ? idle - from_idle : 0) / (wall > 0 ? wall : 1);
      st.utilisation = u < 0 ? 0 : u > 1 ? 1 : u;
      st.events_dropped = s->dropped_total;
      s->last_ns = now_ns;
      s->last_idle_ns = idle;
      keel_msg_t *m = keel_msg_copy(KEEL_OBSERVER_TAG_STATS, &st, sizeof st);
      if (m) keel_send(s->pid, m);
      s->next_stats_ms = now + (uint64_t)s->interval_ms;
    }
    int64_t d = (int64_t)(s->next_stats_ms - now);
    if (wait == KEEL_INFINITY || d < wait) wait = d;
  }
  pthread_mutex_unlock(&obs.lock);
  return wait;
}

static void fan_out(keel_observer_event *ev) {
  uint64_t now = mono_ms();
  ev->time_ms = wall_ms();
  pthread_mutex_lock(&obs.lock);
  uint64_t lost[4];
  for (unsigned k = 0; k < 4; k++)
    lost[k] = atomic_exchange_explicit(&obs.src_dropped[k], 0, memory_order_relaxed);
  for (size_t i = 0; i < obs.nsubs; i++) {
    sub *s = &obs.subs[i];
    for (unsigned k = 0; k < 4; k++)
      if (lost[k] && (s->kinds & (1u << k))) {
        s->dropped += lost[k];
        s->dropped_total += lost[k];
      }
    if (!(s->kinds & ev->kind)) continue;
    if (now - s->win_start_ms >= 1000) {
      s->win_start_ms = now;
      s->win_count = 0;
    }
    keel_proc_info pi;
    bool full = keel_rt_process_info(s->pid, &pi) == 0 && pi.mailbox_len >= obs.opt.mailbox_max;
    if (s->win_count >= obs.opt.rate_max || full) {
      s->dropped++;
      s->dropped_total++;
      continue;
    }
    ev->dropped = s->dropped;
    keel_msg_t *m = keel_msg_copy(KEEL_OBSERVER_TAG_EVENT, ev, sizeof *ev);
    if (!m) {
      s->dropped++;
      s->dropped_total++;
      continue;
    }
    s->dropped = 0;
    s->win_count++;
    keel_send(s->pid, m);
  }
  pthread_mutex_unlock(&obs.lock);
}

static void monitor_sub(keel_pid_t pid) {
  pthread_mutex_lock(&obs.lock);
  sub *s = find_locked(pid);
  if (s && !s->mon) {
    keel_ref_t ref;
    if (keel_monitor(pid, &ref) == 0) s->mon = ref;
  }
  pthread_mutex_unlock(&obs.lock);
}

static void sub_down(keel_ref_t ref) {
  pthread_mutex_lock(&obs.lock);
  for (size_t i = 0; i < obs.nsubs; i++)
    if (obs.subs[i].mon == ref) {
      remove_locked(&obs.subs[i]);
      break;
    }
  pthread_mutex_unlock(&obs.lock);
}

static void observer_main(void *arg) {
  (void)arg;
  int64_t wait = KEEL_INFINITY;
  for (;;) {
    keel_msg_t *m = NULL;
    int rc = keel_receive(&m, wait);
    if (rc == 0 && keel_msg_kind_of(m) == KEEL_MSG_DOWN) {
      sub_down(keel_msg_ref(m));
    } else if (rc == 0 && keel_msg_kind_of(m) == KEEL_MSG_USER) {
      uint32_t tag = keel_msg_tag(m);
      if (tag == T_EVENT && keel_msg_size(m) == sizeof(keel_observer_event)) {
        atomic_fetch_sub_explicit(&obs.pending, 1, memory_order_relaxed);
        fan_out(keel_msg_data(m));
      } else if (tag == T_SUB && keel_msg_size(m) == sizeof(keel_pid_t)) {
        keel_pid_t pid;
        memcpy(&pid, keel_msg_data(m), sizeof pid);
        monitor_sub(pid);
      } else if (tag == T_UNSUB && keel_msg_size(m) == sizeof(keel_ref_t)) {
        keel_ref_t ref;
        memcpy(&ref, keel_msg_data(m), sizeof ref);
        keel_demonitor(ref);
      }
    }
    keel_msg_free(m);
    wait = stats_tick();
  }
}

int keel_observer_start(const keel_observer_start_opts *o) {
  if (keel_sched_count() <= 0) return KEEL_ESTATE;
  pthread_mutex_lock(&obs.lock);
  if (obs.pid) {
    pthread_mutex_unlock(&obs.lock);
    return 0;
  }
  keel_observer_start_opts opt = o ? *o : (keel_observer_start_opts){0};
  if (!opt.rate_max) opt.rate_max = RATE_DEFAULT;
  if (!opt.queue_max) opt.queue_max = QUEUE_DEFAULT;
  if (!opt.mailbox_max) opt.mailbox_max = MAILBOX_DEFAULT;
  keel_spawn_opts so;
  keel_spawn_opts_init(&so);
  so.name = "keel_observer";
  keel_pid_t pid = 0;
  int rc = keel_spawn(observer_main, NULL, &so, &pid);
  if (rc) {
    pthread_mutex_unlock(&obs.lock);
    return rc;
  }
  obs.opt = opt;
  obs.pid = pid;
  obs.nsubs = 0;
  atomic_store_explicit(&obs.pending, 0, memory_order_relaxed);
  for (unsigned k = 0; k < 4; k++)
    atomic_store_explicit(&obs.src_dropped[k], 0, memory_order_relaxed);
  atomic_store_explicit(&obs.queue_max, opt.queue_max, memory_order_relaxed);
  atomic_store_explicit(&obs.want, 0, memory_order_relaxed);
  atomic_store_explicit(&obs.relay, pid, memory_order_relaxed);
  keel_rt_set_proc_events(on_proc_event, NULL);
  int h = keel_sup_subscribe(on_sup_event, NULL);
  obs.sup_handle = h > 0 ? h : 0;
  if (h <= 0) {
    teardown_locked();
    pthread_mutex_unlock(&obs.lock);
    keel_exit_signal(pid, KEEL_REASON_KILL, NULL);
    return h < 0 ? h : KEEL_ENOMEM;
  }
  pthread_mutex_unlock(&obs.lock);
  /* outside the lock: if it is already gone, the hook may not run: do its work */
  if (keel_on_exit_of(pid, on_observer_exit, (void *)(uintptr_t)pid) != 0)
    on_observer_exit((void *)(uintptr_t)pid);
  return 0;
}

static bool match_down(const keel_msg_t *m, void *arg) {
  return keel_msg_kind_of(m) == KEEL_MSG_DOWN && keel_msg_ref(m) == *(const keel_ref_t *)arg;
}

int keel_observer_stop(void) {
  pthread_mutex_lock(&obs.lock);
  keel_pid_t pid = obs.pid;
  if (pid) teardown_locked();
  pthread_mutex_unlock(&obs.lock);
  if (!pid) return 0;
  keel_pid_t self = keel_self();
  keel_ref_t ref = 0;
  bool wait = self && self != pid && keel_monitor(pid, &ref) == 0;
  keel_exit_signal(pid, KEEL_REASON_SHUTDOWN, NULL); /* not a crash: no report */
  if (wait) {
    keel_msg_t *m = NULL;
    if (keel_receive_match(match_down, &ref, &m, 5000) == 0)
      keel_msg_free(m);
    else
      keel_demonitor(ref); /* removes the DOWN should it come later */
  }
  return 0;
}

bool keel_observer_running(void) {
  pthread_mutex_lock(&obs.lock);
  bool r = obs.pid != 0;
  pthread_mutex_unlock(&obs.lock);
  return r;
}

int keel_observer_subscribe(keel_pid_t pid, unsigned kinds, int64_t stats_interval_ms) {
  if (!pid || !(kinds & KEEL_OBS_ALL) || stats_interval_ms < 0) return KEEL_EINVAL;
  if (!stats_interval_ms) stats_interval_ms = STATS_DEFAULT;
  if (stats_interval_ms < STATS_MIN) stats_interval_ms = STATS_MIN;
  if (!keel_is_alive(pid)) return KEEL_ENOPROC;
  pthread_mutex_lock(&obs.lock);
  keel_pid_t observer = obs.pid;
  if (!observer) {
    pthread_mutex_unlock(&obs.lock);
    return KEEL_ESTATE;
  }
  sub *s = find_locked(pid);
  if (!s) {
    if (obs.nsubs == KEEL_OBSERVER_MAX_SUBSCRIBERS) {
      pthread_mutex_unlock(&obs.lock);
      return KEEL_EBUSY;
    }
    s = &obs.subs[obs.nsubs++];
    memset(s, 0, sizeof *s);
    s->pid = pid;
  }
  s->kinds = kinds & KEEL_OBS_ALL;
  if (s->interval_ms != stats_interval_ms) s->next_stats_ms = 0; /* rescheduled by the observer */
  s->interval_ms = stats_interval_ms;
  recompute_want_locked();
  pthread_mutex_unlock(&obs.lock);
  /* the observer monitors it and recomputes its timer */
  keel_msg_t *m = keel_msg_copy(T_SUB, &pid, sizeof pid);
  if (m) keel_send(observer, m);
  return 0;
}

int keel_observer_unsubscribe(keel_pid_t pid) {
  pthread_mutex_lock(&obs.lock);
  sub *s = find_locked(pid);
  if (!s) {
    pthread_mutex_unlock(&obs.lock);
    return KEEL_ENOENT;
  }
  keel_ref_t mon = s->mon;
  keel_pid_t observer = obs.pid;
  remove_locked(s);
  pthread_mutex_unlock(&obs.lock);
  if (mon && observer) {
    keel_msg_t *m = keel_msg_copy(T_UNSUB, &mon, sizeof mon);
    if (m) keel_send(observer, m);
  }
  return 0;
}

size_t keel_observer_subscribers(void) {
  pthread_mutex_lock(&obs.lock);
  size_t n = obs.nsubs;
  pthread_mutex_unlock(&obs.lock);
  return n;
}
