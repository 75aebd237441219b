/* observer_json.c - the observer's snapshot as JSON (keel_observer_snapshot_to_json,
 * and keel_observer_snapshot_json, which takes one and renders it).
 *
 * JSON. The encoder is hand-written into a growing buffer (not jansson): a
 * 100,000-process snapshot is about a million JSON values, and building a
 * jansson tree for it costs several times the walk. Strings are escaped and
 * invalid UTF-8 is replaced by U+FFFD, so any jansson/jq reader accepts it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/observer.h"
#include "ops/json_write.h"
#include "ops/observer_internal.h"

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

/* One shared table; its id is the handle, a number (as keel_table_t). */
static void jb_table(keel__jw *b, const keel_table_info *t) {
  KEEL__JW_LIT(b, "{");
  jb_key(b, "id", true);
  keel__jw_u64(b, t->table);
  jb_key(b, "name", false);
  keel__jw_str(b, t->name);
  jb_key(b, "owner", false);
  jb_pid(b, t->owner);
  jb_key(b, "heir", false);
  jb_pid(b, t->heir);
  jb_key(b, "type", false);
  keel__jw_str(b, keel_table_type_name(t->type));
  jb_key(b, "access", false);
  keel__jw_str(b, keel_table_access_name(t->access));
  jb_key(b, "size", false);
  keel__jw_u64(b, t->size);
  jb_key(b, "memory", false);
  keel__jw_u64(b, t->memory);
  KEEL__JW_LIT(b, "}");
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

static void jb_tree(keel__jw *b, const keel_observer_snapshot *snap, const keel__pidmap *supmap,
                    size_t i) {
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
    if (keel__pidmap_get(supmap, s->children[c].pid, &j) && snap->sups[j].parent_index == i) {
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
  keel__pidmap supmap = {0};
  if (keel__pidmap_init(&supmap, snap->nsups)) return KEEL_ENOMEM;
  for (size_t i = 0; i < snap->nsups; i++)
    keel__pidmap_put(&supmap, snap->sups[i].pid, i);
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
  jb_key(&b, "tables", false);
  keel__jw_u64(&b, t->tables);
  jb_key(&b, "table_memory", false);
  keel__jw_u64(&b, t->table_memory);
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

  jb_key(&b, "tables", false);
  KEEL__JW_LIT(&b, "[");
  for (size_t i = 0; i < snap->ntables; i++) {
    if (i) KEEL__JW_LIT(&b, ",");
    jb_table(&b, &snap->tables[i]);
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
  keel__pidmap_free(&supmap);
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
