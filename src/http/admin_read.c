/* admin_read.c - the admin API's reads: what the dashboard and keelctl show.
 *
 * Each route is a view over an existing source, never a second bookkeeping:
 * the overview over the runtime's counters, the schedulers, keel/sysinfo.h
 * and keel/health.h; processes, one process and the tree over an observer
 * snapshot (the same shapes as /admin/observer); alerts over
 * keel/alerts.h plus the recorder's recent events (admin_recorder.c); logs
 * over the logger's ring (keel_log_recent); HTTP over the metrics registry's
 * exposition (the http_* families the API server keeps); panels over the
 * providers later modules registered (admin_panels.c). Inputs are checked
 * and a bad one is a 400 with the envelope; an unknown process a 404.
 */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http/admin_internal.h"
#include "http/http_internal.h"
#include "keel/error.h"
#include "keel/health.h"
#include "keel/log.h"
#include "keel/metrics.h"
#include "keel/observer.h"
#include "keel/registry.h"
#include "keel/runtime.h"
#include "keel/sysinfo.h"

#define PROCS_DEFAULT 100
#define PROCS_MAX     10000
#define LOGS_DEFAULT  200

/* ---- small pieces ------------------------------------------------------------------ */

json_t *keel__admin_pid_json(keel_pid_t pid) {
  if (!pid) return json_null();
  char t[32];
  keel_pid_format(pid, t, sizeof t);
  return json_string(t);
}

typedef struct pid_find {
  const char *want;
  keel_pid_t found;
} pid_find;

static bool find_pid(const keel_proc_info *info, void *ud) {
  pid_find *f = ud;
  char t[32];
  keel_pid_format(info->pid, t, sizeof t);
  if (strcmp(t, f->want) != 0) return true;
  f->found = info->pid;
  return false;
}

keel_pid_t keel__admin_pid_parse(const char *text) {
  if (!text || !*text || strlen(text) > 64) return 0;
  unsigned a, b, c;
  char end;
  char canon[40];
  if (sscanf(text, "<%u.%u.%u%c", &a, &b, &c, &end) == 4 && end == '>' &&
      text[strlen(text) - 1] == '>')
    snprintf(canon, sizeof canon, "<%u.%u.%u>", a, b, c);
  else if (sscanf(text, "%u.%u.%u%c", &a, &b, &c, &end) == 3)
    snprintf(canon, sizeof canon, "<%u.%u.%u>", a, b, c);
  else
    return keel_whereis(text); /* a registered name */
  pid_find f = {canon, 0};
  keel_rt_processes(find_pid, &f);
  return f.found;
}

static uint64_t now_ns(void) {
  return keel__http_now_ns();
}

static uint64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* keel_rt_started_ms is on CLOCK_MONOTONIC, as the observer reads it */
static uint64_t uptime_ms(void) {
  uint64_t now = now_ns() / 1000000u, started = keel_rt_started_ms();
  return now > started ? now - started : 0;
}

static int reply(keel_http_res *res, json_t *j) {
  if (!j) return keel_http_fail(res, KEEL_HTTP_INTERNAL, "out of memory", NULL);
  return keel_http_reply_json(res, 200, j);
}

static int bad(keel_http_res *res, const char *msg) {
  return keel_http_fail(res, KEEL_HTTP_VALIDATION, msg, NULL);
}

/* A query parameter as an integer in [lo, hi]; dflt when absent. -1 when bad. */
static int query_int(keel_http_req *req, const char *name, long dflt, long lo, long hi, long *out) {
  const char *v = keel_http_query_param(req, name);
  if (!v) {
    *out = dflt;
    return 0;
  }
  char *end;
  long n = strtol(v, &end, 10);
  if (!*v || *end || n < lo || n > hi) return -1;
  *out = n;
  return 0;
}

/* ---- stats and overview ------------------------------------------------------------------ */

static json_t *memory_json(const keel_sys_memory *m) {
  json_t *j = json_pack("{s:I, s:I, s:I, s:I}", "rss_bytes", (json_int_t)m->rss_bytes, "heap_bytes",
                        (json_int_t)m->heap_bytes, "system_bytes", (json_int_t)m->system_bytes,
                        "cgroup_usage_bytes", (json_int_t)m->cgroup_usage_bytes);
  uint64_t limit = keel_sys_memory_limit(m);
  json_object_set_new(j, "limit_bytes",
                      m->limit_bytes ? json_integer((json_int_t)m->limit_bytes) : json_null());
  json_object_set_new(j, "effective_limit_bytes", json_integer((json_int_t)limit));
  json_object_set_new(j, "used_fraction",
                      json_real(limit ? (double)m->rss_bytes / (double)limit : 0.0));
  return j;
}

json_t *keel__admin_stats_json(keel__admin *a, keel__admin_sample *prev) {
  (void)a;
  uint64_t t = now_ns();
  keel_rt_stats st;
  keel_rt_stats_get(&st);
  keel_sys_memory mem = {0};
  keel_sys_memory_get(&mem);
  double dt = prev->ns ? (double)(t - prev->ns) / 1e9 : 0;
  json_t *scheds = json_array();
  int n = keel_sched_count();
  double busy_sum = 0;
  for (int i = 0; i < n; i++) {
    keel_sched_info si;
    if (keel_rt_sched_info(i, &si) != 0) continue;
    double util = 0;
    if (i < 64 && prev->ns && t > prev->ns && si.idle_ns >= prev->idle[i]) {
      util = 1.0 - (double)(si.idle_ns - prev->idle[i]) / (double)(t - prev->ns);
      util = util < 0 ? 0 : util > 1 ? 1 : util;
    }
    if (i < 64) prev->idle[i] = si.idle_ns;
    busy_sum += util;
    json_array_append_new(scheds, json_pack("{s:i, s:f, s:i, s:b, s:I}", "id", si.id, "utilisation",
                                            util, "run_queue", (int)si.run_queue, "stuck", si.stuck,
                                            "held_ms", (json_int_t)si.held_ms));
  }
  double rate = dt > 0 && st.msgs_sent >= prev->msgs ? (double)(st.msgs_sent - prev->msgs) / dt : 0;
  prev->ns = t;
  prev->msgs = st.msgs_sent;
  uint64_t restarts = 0, recent = 0;
  keel_health_restarts(60000, &restarts, &recent);
  json_t *j = json_pack("{s:I, s:I, s:I, s:I, s:I, s:f, s:I, s:I, s:o, s:f, s:o, s:I, s:I}",
                        "time_ms", (json_int_t)wall_ms(), "uptime_ms", (json_int_t)uptime_ms(),
                        "processes", (json_int_t)st.procs_alive, "spawned",
                        (json_int_t)st.procs_spawned, "exited", (json_int_t)st.procs_exited,
                        "messages_per_sec", rate, "messages_sent", (json_int_t)st.msgs_sent,
                        "restarts", (json_int_t)restarts, "schedulers", scheds, "utilisation",
                        n ? busy_sum / n : 0.0, "memory", memory_json(&mem), "restarts_last_min",
                        (json_int_t)recent, "stuck_reports", (json_int_t)st.stuck_reports);
  return j;
}

static int h_overview(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req;
  keel__admin *a = ud;
  keel__admin_sample s;
  pthread_mutex_lock(&a->mu);
  s.ns = a->last_ns;
  s.msgs = a->last_msgs;
  memcpy(s.idle, a->last_idle, sizeof s.idle);
  pthread_mutex_unlock(&a->mu);
  json_t *j = keel__admin_stats_json(a, &s);
  pthread_mutex_lock(&a->mu);
  a->last_ns = s.ns;
  a->last_msgs = s.msgs;
  memcpy(a->last_idle, s.idle, sizeof s.idle);
  pthread_mutex_unlock(&a->mu);
  if (!j) return reply(res, NULL);
  /* health: the detailed probe's status (it runs every check) */
  keel_health_response hr;
  json_t *health = NULL;
  if (keel_health_detailed(&hr) == 0) {
    json_t *h = json_loads(hr.body, 0, NULL);
    json_t *status = h ? json_object_get(h, "status") : NULL;
    health = status ? json_incref(status) : NULL;
    json_decref(h);
    keel_health_response_free(&hr);
  }
  json_object_set_new(j, "health", health ? health : json_string("unknown"));
  json_object_set_new(j, "service", json_string(a->service));
  json_object_set_new(j, "version", json_string(a->version));
  json_object_set_new(j, "actions", json_boolean(a->token != NULL));
  json_object_set_new(j, "log_level", json_string(keel_log_level_name(keel_log_get_level())));
  json_object_set_new(j, "supervisors", json_integer((json_int_t)keel_sup_list(NULL, 0)));
  json_object_set_new(j, "streams", json_integer(atomic_load(&a->streams)));
  json_object_set_new(j, "max_streams", json_integer(a->max_streams));
  return reply(res, j);
}

/* ---- processes ------------------------------------------------------------------------- */

static json_t *proc_json(const keel_observer_proc *p) {
  json_t *j = json_pack(
      "{s:o, s:s, s:o, s:s, s:s, s:i, s:I, s:I, s:I, s:I, s:I, s:o, s:o, s:o, s:b}", "pid",
      keel__admin_pid_json(p->pid), "name", p->name, "registered",
      p->registered && *p->registered ? json_string(p->registered) : json_null(), "status",
      p->status ? p->status : "", "waiting_for", p->waiting_for ? p->waiting_for : "", "scheduler",
      p->scheduler, "mailbox_len", (json_int_t)p->mailbox_len, "messages_in",
      (json_int_t)p->messages_in, "messages_handled", (json_int_t)p->messages_handled, "memory",
      (json_int_t)p->memory, "age_ms", (json_int_t)p->age_ms, "parent",
      keel__admin_pid_json(p->parent), "supervisor", keel__admin_pid_json(p->supervisor),
      "child_id", p->child_id && *p->child_id ? json_string(p->child_id) : json_null(),
      "is_supervisor", p->is_supervisor);
  return j;
}

typedef enum { BY_MAILBOX, BY_MEMORY, BY_MESSAGES, BY_AGE } sort_key;

static uint64_t key_of(const keel_observer_proc *p, sort_key k) {
  switch (k) {
  case BY_MAILBOX: return p->mailbox_len;
  case BY_MEMORY: return p->memory;
  case BY_MESSAGES: return p->messages_handled;
  case BY_AGE: return (uint64_t)(p->age_ms < 0 ? 0 : p->age_ms);
  }
  return 0;
}

static _Thread_local sort_key g_sort; /* qsort has no context argument; set just before it */

static int by_key_desc(const void *x, const void *y) {
  const keel_observer_proc *a = *(keel_observer_proc *const *)x,
                           *b = *(keel_observer_proc *const *)y;
  uint64_t ka = key_of(a, g_sort), kb = key_of(b, g_sort);
  if (ka != kb) return ka > kb ? -1 : 1;
  return a->pid < b->pid ? -1 : a->pid > b->pid;
}

static bool name_matches(const keel_observer_proc *p, const char *filter) {
  if (!filter || !*filter) return true;
  if (strstr(p->name, filter)) return true;
  if (p->registered && strstr(p->registered, filter)) return true;
  if (p->child_id && strstr(p->child_id, filter)) return true;
  char t[32];
  keel_pid_format(p->pid, t, sizeof t);
  return strstr(t, filter) != NULL;
}

static int h_processes(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)ud;
  const char *sort = keel_http_query_param(req, "sort");
  sort_key k = BY_MAILBOX;
  if (!sort || strcmp(sort, "mailbox") == 0)
    k = BY_MAILBOX;
  else if (strcmp(sort, "memory") == 0)
    k = BY_MEMORY;
  else if (strcmp(sort, "messages") == 0)
    k = BY_MESSAGES;
  else if (strcmp(sort, "age") == 0)
    k = BY_AGE;
  else
    return bad(res, "sort must be one of mailbox, memory, messages, age");
  long limit;
  if (query_int(req, "limit", PROCS_DEFAULT, 1, PROCS_MAX, &limit))
    return bad(res, "limit must be an integer from 1 to 10000");
  const char *filter = keel_http_query_param(req, "name");
  if (filter && strlen(filter) > 64) return bad(res, "name is at most 64 bytes");

  keel_observer_opts oo;
  keel_observer_opts_init(&oo);
  oo.max_processes = KEEL_OBSERVER_ALL_PROCS;
  keel_observer_snapshot snap;
  int rc = keel_observer_snapshot_take(&oo, &snap);
  if (rc) return keel_http_fail(res, KEEL_HTTP_INTERNAL, keel_strerror(rc), NULL);
  keel_observer_proc **v = malloc((snap.nprocs ? snap.nprocs : 1) * sizeof *v);
  if (!v) {
    keel_observer_snapshot_free(&snap);
    return reply(res, NULL);
  }
  size_t m = 0;
  for (size_t i = 0; i < snap.nprocs; i++)
    if (name_matches(&snap.procs[i], filter)) v[m++] = &snap.procs[i];
  g_sort = k;
  qsort(v, m, sizeof *v, by_key_desc);
  json_t *list = json_array();
  for (size_t i = 0; i < m && i < (size_t)limit; i++)
    json_array_append_new(list, proc_json(v[i]));
  json_t *j =
      json_pack("{s:I, s:I, s:s, s:o}", "total", (json_int_t)snap.totals.processes, "matched",
                (json_int_t)m, "sort", sort ? sort : "mailbox", "processes", list);
  free(v);
  keel_observer_snapshot_free(&snap);
  return reply(res, j);
}

/* A process's links and monitors (keel_rt_process_links and friends: a
 * consistent copy that never waits on the process, decision 0030), each pid
 * with its label and registered name from the same snapshot. At most
 * PROC_SET_MAX of each are listed (a supervisor may link to thousands);
 * `<set>_total` says how many there are. A set that cannot be read (the
 * process ended meanwhile) is null. */
#define PROC_SET_MAX 500

typedef struct proc_set {
  const char *key, *total_key;
  int (*read)(keel_pid_t pid, keel_pid_t *out, size_t cap, size_t *n);
  keel_pid_t v[PROC_SET_MAX];
  size_t n, total;
  int rc;
} proc_set;

static int pid_cmp(const void *x, const void *y) {
  keel_pid_t a = *(const keel_pid_t *)x, b = *(const keel_pid_t *)y;
  return a < b ? -1 : a > b;
}

static void add_proc_sets(json_t *j, keel_pid_t pid, const keel_observer_snapshot *snap) {
  proc_set *sets = calloc(3, sizeof *sets);
  keel_pid_t *want = malloc(3 * PROC_SET_MAX * sizeof *want);
  const keel_observer_proc **who = calloc(3 * PROC_SET_MAX, sizeof *who);
  if (!sets || !want || !who) {
    free(sets);
    free(want);
    free(who);
    return;
  }
  /* field by field: a compound literal would put a 4 KB temporary on the
   * request process's stack */
  static const char *const keys[3] = {"links", "monitors", "monitored_by"};
  static const char *const totals[3] = {"links_total", "monitors_total", "monitored_by_total"};
  int (*const reads[3])(keel_pid_t, keel_pid_t *, size_t, size_t *) = {
      keel_rt_process_links, keel_rt_process_monitors, keel_rt_process_monitored_by};
  for (int s = 0; s < 3; s++) {
    sets[s].key = keys[s];
    sets[s].total_key = totals[s];
    sets[s].read = reads[s];
  }
  size_t nw = 0;
  for (int s = 0; s < 3; s++) {
    sets[s].rc = sets[s].read(pid, sets[s].v, PROC_SET_MAX, &sets[s].total);
    sets[s].n = sets[s].rc ? 0 : sets[s].total < PROC_SET_MAX ? sets[s].total : PROC_SET_MAX;
    for (size_t i = 0; i < sets[s].n; i++)
      want[nw++] = sets[s].v[i];
  }
  /* names: one pass over the snapshot, each process looked up among the
   * wanted pids (sorted), instead of a walk per linked pid */
  qsort(want, nw, sizeof *want, pid_cmp);
  for (size_t i = 0; i < snap->nprocs; i++) {
    keel_pid_t *hit = bsearch(&snap->procs[i].pid, want, nw, sizeof *want, pid_cmp);
    if (hit) who[hit - want] = &snap->procs[i];
  }
  for (int s = 0; s < 3; s++) {
    if (sets[s].rc) {
      json_object_set_new(j, sets[s].key, json_null());
      json_object_set_new(j, sets[s].total_key, json_null());
      continue;
    }
    json_t *list = json_array();
    for (size_t i = 0; i < sets[s].n; i++) {
      keel_pid_t *hit = bsearch(&sets[s].v[i], want, nw, sizeof *want, pid_cmp);
      const keel_observer_proc *p = hit ? who[hit - want] : NULL;
      json_array_append_new(
          list, json_pack("{s:o, s:o, s:o}", "pid", keel__admin_pid_json(sets[s].v[i]), "name",
                          p && *p->name ? json_string(p->name) : json_null(), "registered",
                          p && p->registered && *p->registered ? json_string(p->registered)
                                                               : json_null()));
    }
    json_object_set_new(j, sets[s].key, list);
    json_object_set_new(j, sets[s].total_key, json_integer((json_int_t)sets[s].total));
  }
  free(sets);
  free(want);
  free(who);
}

static int h_process(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)ud;
  const char *text = keel_http_param(req, "pid");
  keel_pid_t pid = keel__admin_pid_parse(text);
  if (!pid) return keel_http_fail(res, KEEL_HTTP_NOT_FOUND, "no such process", NULL);
  keel_observer_opts oo;
  keel_observer_opts_init(&oo);
  oo.max_processes = KEEL_OBSERVER_ALL_PROCS;
  keel_observer_snapshot snap;
  int rc = keel_observer_snapshot_take(&oo, &snap);
  if (rc) return keel_http_fail(res, KEEL_HTTP_INTERNAL, keel_strerror(rc), NULL);
  json_t *j = NULL;
  for (size_t i = 0; i < snap.nprocs && !j; i++)
    if (snap.procs[i].pid == pid) j = proc_json(&snap.procs[i]);
  if (j) {
    const keel_observer_sup *sup = keel_observer_snapshot_sup(&snap, pid);
    if (sup) { /* a supervisor: its settings and children too */
      json_t *kids = json_array();
      for (size_t c = 0; c < sup->nchildren; c++)
        json_array_append_new(kids, json_pack("{s:s, s:o, s:I}", "id", sup->children[c].id, "pid",
                                              keel__admin_pid_json(sup->children[c].pid),
                                              "restarts", (json_int_t)sup->children[c].restarts));
      json_object_set_new(j, "strategy", json_string(keel_sup_strategy_name(sup->strategy)));
      json_object_set_new(j, "children", kids);
    }
    add_proc_sets(j, pid, &snap);
  }
  keel_observer_snapshot_free(&snap);
  if (!j) return keel_http_fail(res, KEEL_HTTP_NOT_FOUND, "no such process", NULL);
  return reply(res, j);
}

/* ---- the tree ------------------------------------------------------------------------------ */

static int h_tree(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req;
  keel__admin *a = ud;
  keel_observer_opts oo;
  keel_observer_opts_init(&oo);
  oo.skip_processes = true;
  keel_observer_snapshot snap;
  int rc = keel_observer_snapshot_take(&oo, &snap);
  if (rc) return keel_http_fail(res, KEEL_HTTP_INTERNAL, keel_strerror(rc), NULL);
  char *text = NULL;
  rc = keel_observer_snapshot_to_json(&snap, &text, NULL);
  keel_observer_snapshot_free(&snap);
  if (rc) return keel_http_fail(res, KEEL_HTTP_INTERNAL, keel_strerror(rc), NULL);
  json_t *all = json_loads(text, 0, NULL);
  free(text);
  if (!all) return reply(res, NULL);
  json_t *j =
      json_pack("{s:O, s:O, s:O, s:o}", "time_ms", json_object_get(all, "time_ms"), "tree",
                json_object_get(all, "tree"), "supervisors", json_object_get(all, "supervisors"),
                "recent_restarts", keel__admin_recent_restarts(a));
  json_decref(all);
  return reply(res, j);
}

/* ---- alerts -------------------------------------------------------------------------------- */

static int h_alerts(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req;
  keel__admin *a = ud;
  char *act = keel_alerts_active_json();
  json_t *active = act ? json_loads(act, 0, NULL) : NULL;
  free(act);
  keel_alerts_stats st;
  keel_alerts_stats_get(&st);
  json_t *j =
      json_pack("{s:o, s:o, s:{s:b, s:I, s:I, s:I, s:I}}", "active", active ? active : json_array(),
                "recent", keel__admin_recent_alerts(a), "stats", "running", st.running, "fired",
                (json_int_t)st.fired, "resolved", (json_int_t)st.resolved, "suppressed",
                (json_int_t)st.suppressed, "active", (json_int_t)st.active);
  return reply(res, j);
}

/* ---- logs ---------------------------------------------------------------------------------- */

json_t *keel__admin_log_line_json(const keel_log_recent_line *l) {
  return json_pack("{s:I, s:s, s:s%, s:b}", "seq", (json_int_t)l->seq, "level",
                   keel_log_level_name(l->level), "line", l->text, l->len, "truncated",
                   l->truncated);
}

static int h_logs(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)ud;
  keel_log_level level = KEEL_LOG_TRACE;
  const char *lv = keel_http_query_param(req, "level");
  if (lv && (keel_log_level_parse(lv, &level) != 0 || level == KEEL_LOG_OFF))
    return bad(res, "level must be one of trace, debug, info, warn, error, fatal");
  long limit, since;
  if (query_int(req, "limit", LOGS_DEFAULT, 1, KEEL_LOG_RECENT_MAX, &limit))
    return bad(res, "limit must be an integer from 1 to 1000");
  if (query_int(req, "since", 0, 0, LONG_MAX, &since))
    return bad(res, "since must be a line number (a non-negative integer)");
  keel_log_flush(); /* what was logged before this request is in the ring */
  keel_log_recent_line *v;
  size_t n;
  int rc = keel_log_recent((uint64_t)since, level, (size_t)limit, &v, &n);
  if (rc) return keel_http_fail(res, KEEL_HTTP_INTERNAL, keel_strerror(rc), NULL);
  json_t *lines = json_array();
  for (size_t i = 0; i < n; i++)
    json_array_append_new(lines, keel__admin_log_line_json(&v[i]));
  uint64_t next = n ? v[n - 1].seq + 1 : (uint64_t)since;
  keel_log_recent_free(v, n);
  return reply(res, json_pack("{s:o, s:I, s:s}", "lines", lines, "next", (json_int_t)next, "level",
                              keel_log_level_name(keel_log_get_level())));
}

/* ---- HTTP, from the metrics registry's exposition ------------------------------------------ */

/* The value of label `name` in a {...} label set (unescaped into out). */
static bool label(const char *set, const char *name, char *out, size_t cap) {
  size_t nl = strlen(name);
  for (const char *p = set; (p = strstr(p, name)) != NULL; p++) {
    if ((p != set && p[-1] != ',' && p[-1] != '{') || strncmp(p + nl, "=\"", 2) != 0) continue;
    p += nl + 2;
    size_t o = 0;
    while (*p && *p != '"') {
      char ch = *p++;
      if (ch == '\\' && *p) {
        ch = *p++;
        if (ch == 'n') ch = '\n';
      }
      if (o + 1 < cap) out[o++] = ch;
    }
    out[o] = 0;
    return true;
  }
  return false;
}

#define NB 13 /* the server's 12 bounds + Inf */

typedef struct route_stat {
  char method[16], route[160];
  json_t *status; /* {"200": n, ...} */
  double requests, rate_limited;
  double le[NB], cum[NB]; /* cumulative bucket counts over statuses */
  int nle;
} route_stat;

static route_stat *route_get(route_stat **v, size_t *n, size_t *cap, const char *m, const char *r) {
  for (size_t i = 0; i < *n; i++)
    if (!strcmp((*v)[i].method, m) && !strcmp((*v)[i].route, r)) return &(*v)[i];
  if (*n == *cap) {
    size_t c = *cap ? *cap * 2 : 16;
    route_stat *nv = realloc(*v, c * sizeof *nv);
    if (!nv) return NULL;
    *v = nv;
    *cap = c;
  }
  route_stat *s = &(*v)[(*n)++];
  memset(s, 0, sizeof *s);
  snprintf(s->method, sizeof s->method, "%s", m);
  snprintf(s->route, sizeof s->route, "%s", r);
  s->status = json_object();
  return s;
}

/* The q quantile (0..1) from cumulative buckets, interpolated in its bucket
 * (as Prometheus's histogram_quantile); NaN without observations. */
static double quantile(const route_stat *s, double q) {
  if (!s->nle || s->cum[s->nle - 1] <= 0) return NAN;
  double rank = q * s->cum[s->nle - 1];
  for (int i = 0; i < s->nle; i++) {
    if (s->cum[i] < rank) continue;
    if (isinf(s->le[i])) return i ? s->le[i - 1] : 0;
    double lo = i ? s->le[i - 1] : 0, below = i ? s->cum[i - 1] : 0;
    double in = s->cum[i] - below;
    return in > 0 ? lo + (s->le[i] - lo) * (rank - below) / in : s->le[i];
  }
  return s->le[s->nle - 1];
}

static void parse_line(const char *line, route_stat **v, size_t *n, size_t *cap,
                       double *in_flight) {
  const char *brace = strchr(line, '{'), *close = brace ? strrchr(line, '}') : NULL;
  const char *val = close ? close + 1 : strchr(line, ' ');
  if (!val) return;
  double x = strtod(val, NULL);
  if (strncmp(line, "http_requests_in_flight", 23) == 0 && (line[23] == ' ' || line[23] == '{')) {
    *in_flight += x;
    return;
  }
  bool total = strncmp(line, "http_requests_total{", 20) == 0;
  bool bucket = strncmp(line, "http_request_duration_seconds_bucket{", 37) == 0;
  if (!(total || bucket) || !close) return;
  size_t setlen = (size_t)(close - brace) + 1;
  char set[1024], m[16], r[160], st[8], le[32];
  if (setlen >= sizeof set) return;
  memcpy(set, brace, setlen);
  set[setlen] = 0;
  if (!label(set, "method", m, sizeof m) || !label(set, "route", r, sizeof r) ||
      !label(set, "status", st, sizeof st))
    return;
  route_stat *s = route_get(v, n, cap, m, r);
  if (!s) return;
  if (total) {
    s->requests += x;
    if (!strcmp(st, "429")) s->rate_limited += x;
    json_t *old = json_object_get(s->status, st);
    json_object_set_new(s->status, st,
                        json_integer((json_int_t)(x + (old ? json_integer_value(old) : 0))));
    return;
  }
  if (!label(set, "le", le, sizeof le)) return;
  double bound = strcmp(le, "+Inf") == 0 ? INFINITY : strtod(le, NULL);
  int i = 0;
  while (i < s->nle && s->le[i] != bound)
    i++;
  if (i == s->nle) {
    if (s->nle == NB) return;
    int at = s->nle++; /* keep the bounds sorted (they come sorted per series) */
    while (at > 0 && s->le[at - 1] > bound) {
      s->le[at] = s->le[at - 1];
      s->cum[at] = s->cum[at - 1];
      at--;
    }
    s->le[at] = bound;
    s->cum[at] = 0;
    i = at;
  }
  s->cum[i] += x;
}

static json_t *num_or_null(double x) {
  return isnan(x) ? json_null() : json_real(x);
}

static int h_http(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req;
  keel__admin *a = ud;
  if (!a->metrics)
    return keel_http_fail(res, KEEL_HTTP_NOT_FOUND, "this admin port has no metrics registry",
                          NULL);
  keel_metrics_buf b = {0};
  int rc = keel_metrics_render(a->metrics, KEEL_METRICS_TEXT, &b);
  if (rc) {
    keel_metrics_buf_free(&b);
    return keel_http_fail(res, KEEL_HTTP_INTERNAL, keel_strerror(rc), NULL);
  }
  route_stat *v = NULL;
  size_t n = 0, cap = 0;
  double in_flight = 0, total = 0, limited = 0;
  for (char *line = b.data, *nl; line && *line; line = nl ? nl + 1 : NULL) {
    nl = strchr(line, '\n');
    if (nl) *nl = 0;
    if (strncmp(line, "http_", 5) == 0) parse_line(line, &v, &n, &cap, &in_flight);
  }
  keel_metrics_buf_free(&b);
  json_t *routes = json_array();
  for (size_t i = 0; i < n; i++) {
    total += v[i].requests;
    limited += v[i].rate_limited;
    double p50 = quantile(&v[i], 0.5), p99 = quantile(&v[i], 0.99);
    json_array_append_new(routes, json_pack("{s:s, s:s, s:I, s:o, s:o, s:o}", "method", v[i].method,
                                            "route", v[i].route, "requests",
                                            (json_int_t)v[i].requests, "status", v[i].status,
                                            "p50_ms", num_or_null(isnan(p50) ? p50 : p50 * 1000),
                                            "p99_ms", num_or_null(isnan(p99) ? p99 : p99 * 1000)));
  }
  free(v);
  return reply(res, json_pack("{s:I, s:I, s:I, s:I, s:o}", "time_ms", (json_int_t)wall_ms(),
                              "requests", (json_int_t)total, "in_flight", (json_int_t)in_flight,
                              "rate_limited", (json_int_t)limited, "routes", routes));
}

/* ---- panels ---------------------------------------------------------------------------------- */

static int h_panels(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req, (void)ud;
  return reply(res, json_pack("{s:o}", "panels", keel__admin_panels_list()));
}

static int h_panel(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)ud;
  json_t *j = keel__admin_panel_call(keel_http_param(req, "name"));
  if (!j) return keel_http_fail(res, KEEL_HTTP_NOT_FOUND, "no such panel", NULL);
  return reply(res, j);
}

int keel__admin_read_routes(keel__admin *a, keel_http_router *r, keel__admin_add_fn add) {
  int rc = add(a, r, "GET", "/admin/overview", h_overview, KEEL__ADMIN_READ);
  if (!rc) rc = add(a, r, "GET", "/admin/processes", h_processes, KEEL__ADMIN_READ);
  if (!rc) rc = add(a, r, "GET", "/admin/processes/:pid", h_process, KEEL__ADMIN_READ);
  if (!rc) rc = add(a, r, "GET", "/admin/tree", h_tree, KEEL__ADMIN_READ);
  if (!rc) rc = add(a, r, "GET", "/admin/alerts", h_alerts, KEEL__ADMIN_READ);
  if (!rc) rc = add(a, r, "GET", "/admin/logs", h_logs, KEEL__ADMIN_READ);
  if (!rc) rc = add(a, r, "GET", "/admin/http", h_http, KEEL__ADMIN_READ);
  if (!rc) rc = add(a, r, "GET", "/admin/panels", h_panels, KEEL__ADMIN_READ);
  if (!rc) rc = add(a, r, "GET", "/admin/panels/:name", h_panel, KEEL__ADMIN_READ);
  return rc;
}
