/* observer.c - the node seen whole: its snapshot.
 *
 * The observer has three parts, one file each: this one takes the snapshot;
 * observer_json.c renders a snapshot as JSON; observer_events.c relays live
 * events to subscribing processes. observer_internal.h holds what they share
 * (the clocks and a pid -> index map).
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
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "keel/observer.h"
#include "keel/registry.h"
#include "ops/observer_internal.h"

#define SUP_TIMEOUT_DEFAULT 500
#define SUP_BUDGET_DEFAULT  3000
#define MAX_SCHEDS          1024 /* keel_rt_start's own limit */

uint64_t keel__obs_mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t keel__obs_wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- pid -> index hash map (open addressing; pid 0 marks an empty slot) --- */

int keel__pidmap_init(keel__pidmap *m, size_t n) {
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

void keel__pidmap_free(keel__pidmap *m) {
  free(m->k);
  free(m->v);
  memset(m, 0, sizeof *m);
}

static size_t pm_slot(const keel__pidmap *m, keel_pid_t pid) {
  uint64_t h = pid * 0x9E3779B97F4A7C15ull;
  size_t i = (size_t)(h >> 17) & m->mask;
  while (m->k[i] && m->k[i] != pid)
    i = (i + 1) & m->mask;
  return i;
}

/* Inserts pid -> v unless pid is there; returns the slot. Capacity is sized
 * up front by keel__pidmap_init, so the table never fills. */
size_t keel__pidmap_put(keel__pidmap *m, keel_pid_t pid, size_t v) {
  size_t i = pm_slot(m, pid);
  if (!m->k[i]) {
    m->k[i] = pid;
    m->v[i] = v;
  }
  return i;
}

bool keel__pidmap_get(const keel__pidmap *m, keel_pid_t pid, size_t *v) {
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
  free(s->tables);
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
  uint64_t deadline = keel__obs_mono_ns() + (uint64_t)o->sup_budget_ms * 1000000u;
  for (size_t i = 0; i < n; i++) {
    keel_observer_sup *s = &sups[i];
    s->pid = pids[i];
    s->parent_index = KEEL_OBSERVER_NONE;
    if (pids[i] == self) { /* it would be asked while it waits for the answer */
      s->status = KEEL_EBUSY;
      continue;
    }
    uint64_t now = keel__obs_mono_ns();
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
static void preorder(keel_observer_sup *sups, const keel__pidmap *supmap, size_t i, unsigned depth,
                     bool *done, size_t *order, size_t *k) {
  done[i] = true;
  sups[i].depth = depth;
  order[(*k)++] = i;
  for (size_t c = 0; c < sups[i].nchildren; c++) {
    size_t j;
    if (keel__pidmap_get(supmap, sups[i].children[c].pid, &j) && !done[j] &&
        sups[j].parent == sups[i].pid)
      preorder(sups, supmap, j, depth + 1, done, order, k);
  }
}

/* Finds each supervisor's parent and reorders sups into tree pre-order. */
static int build_tree(keel_observer_sup *sups, size_t n) {
  if (!n) return 0;
  keel__pidmap supmap;
  if (keel__pidmap_init(&supmap, n)) return KEEL_ENOMEM;
  for (size_t i = 0; i < n; i++)
    keel__pidmap_put(&supmap, sups[i].pid, i);
  for (size_t i = 0; i < n; i++)
    for (size_t c = 0; c < sups[i].nchildren; c++) {
      size_t j;
      if (keel__pidmap_get(&supmap, sups[i].children[c].pid, &j) && j != i && !sups[j].parent)
        sups[j].parent = sups[i].pid;
    }
  bool *done = calloc(n, sizeof *done);
  size_t *order = malloc(n * sizeof *order);
  keel_observer_sup *tmp = malloc(n * sizeof *tmp);
  if (!done || !order || !tmp) {
    free(done);
    free(order);
    free(tmp);
    keel__pidmap_free(&supmap);
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
    keel__pidmap_free(&supmap);
    return KEEL_ENOMEM;
  }
  for (size_t r = 0; r < n; r++) {
    tmp[r] = sups[order[r]];
    newpos[order[r]] = r;
  }
  for (size_t r = 0; r < n; r++) {
    size_t j;
    tmp[r].parent_index = KEEL_OBSERVER_NONE;
    if (tmp[r].parent && keel__pidmap_get(&supmap, tmp[r].parent, &j))
      tmp[r].parent_index = newpos[j];
  }
  memcpy(sups, tmp, n * sizeof *sups);
  free(newpos);
  free(done);
  free(order);
  free(tmp);
  keel__pidmap_free(&supmap);
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
  const keel__pidmap *names, *children, *sups;
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
  p->registered = keel__pidmap_get(w->names, in->pid, &v) ? w->arena + v : "";
  if (keel__pidmap_get(w->children, in->pid, &v)) {
    p->supervisor = w->child_sup[v];
    p->child_id = w->child_id[v];
  } else {
    p->supervisor = 0;
    p->child_id = "";
  }
  p->is_supervisor = keel__pidmap_get(w->sups, in->pid, &v);
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
  uint64_t now = keel__obs_mono_ns();
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

/* The shared tables (keel_tables copies each one's figures under its own
 * locks; nothing here waits on a table's owner). */
typedef struct tables_acc {
  keel_observer_snapshot *s;
  size_t cap;
  bool oom;
} tables_acc;

static void collect_table(const keel_table_info *info, void *ud) {
  tables_acc *a = ud;
  keel_observer_snapshot *s = a->s;
  if (a->oom) return;
  if (s->ntables == a->cap) {
    size_t cap = a->cap ? a->cap * 2 : 16;
    keel_table_info *t = realloc(s->tables, cap * sizeof *t);
    if (!t) {
      a->oom = true;
      return;
    }
    s->tables = t;
    a->cap = cap;
  }
  s->tables[s->ntables++] = *info;
  s->totals.tables++;
  s->totals.table_memory += info->memory;
}

static int read_tables(keel_observer_snapshot *s) {
  tables_acc a = {s, 0, false};
  keel_tables(collect_table, &a);
  return a.oom ? KEEL_ENOMEM : 0;
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

  uint64_t t0 = keel__obs_mono_ns();
  keel_observer_snapshot *s = out;
  s->time_ms = keel__obs_wall_ms();
  uint64_t started = keel_rt_started_ms();
  s->uptime_ms = t0 / 1000000u > started ? t0 / 1000000u - started : 0;

  keel__pidmap supmap = {0}, childmap = {0}, namemap = {0};
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
  if (keel__pidmap_init(&supmap, s->nsups) || keel__pidmap_init(&childmap, nchildren)) goto fail;
  child_sup = malloc((nchildren ? nchildren : 1) * sizeof *child_sup);
  child_id = malloc((nchildren ? nchildren : 1) * sizeof *child_id);
  if (!child_sup || !child_id) goto fail;
  size_t k = 0;
  for (size_t i = 0; i < s->nsups; i++) {
    keel_observer_sup *sp = &s->sups[i];
    keel__pidmap_put(&supmap, sp->pid, i);
    s->totals.restarts += sp->restarts;
    if (sp->status) s->totals.unresponsive_supervisors++;
    for (size_t c = 0; c < sp->nchildren; c++) {
      if (!sp->children[c].pid) continue;
      child_sup[k] = sp->pid;
      child_id[k] = sp->children[c].id;
      keel__pidmap_put(&childmap, sp->children[c].pid, k++);
    }
  }
  s->totals.supervisors = s->nsups;

  keel_registered(collect_name, &nm);
  if (nm.oom) goto fail;
  s->totals.registered_names = nm.n;
  if (keel__pidmap_init(&namemap, nm.n)) goto fail;
  for (size_t i = 0; i < nm.n; i++) {
    size_t slot = keel__pidmap_put(&namemap, nm.pid[i], nm.off[i]);
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
  if ((rc = read_tables(s))) goto fail;
  keel_rt_stats_get(&s->totals.rt);
  keel_sys_memory_get(&s->memory);
  rc = 0;
  s->duration_us = (int64_t)((keel__obs_mono_ns() - t0) / 1000u);
fail:
  keel__pidmap_free(&supmap);
  keel__pidmap_free(&childmap);
  keel__pidmap_free(&namemap);
  free(child_sup);
  free(child_id);
  free(nm.arena);
  free(nm.pid);
  free(nm.off);
  if (rc) keel_observer_snapshot_free(s);
  return rc;
}
