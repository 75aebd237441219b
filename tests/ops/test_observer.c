/* test_observer.c - the observer: exact snapshot contents for a known tree,
 * its JSON (parsed back with jansson), truncation, consistency while
 * processes churn on both schedulers, and the event subscriptions (order and
 * reasons, supervisor events, stats polling, dead subscribers, overload).
 *
 * The known tree: supervisor "obs_root" (one_for_one, intensity 5 / 7000 ms)
 * with workers "w1" (registered "worker_one"), "w2" ("worker_two") and a
 * nested supervisor "inner" (one_for_all) holding worker "w3". A worker
 * waits for control messages only (selective receive), so other messages
 * stay queued; told to hold, it sleeps, so its mailbox length is exact.
 */
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/observer.h"
#include "rt/kt_rt.h"

enum { T_CRASH = 11, T_HOLD = 12, T_FLOOD = 13, T_GO = 14 };

static void quiet_report(const keel_report *r, void *ud) {
  (void)r;
  (void)ud;
}

/* ---- the known tree ---------------------------------------------------------- */

static bool match_ctl(const keel_msg_t *m, void *arg) {
  (void)arg;
  return keel_msg_kind_of(m) == KEEL_MSG_USER &&
         (keel_msg_tag(m) == T_CRASH || keel_msg_tag(m) == T_HOLD);
}

static void worker(void *arg) {
  (void)arg;
  for (;;) {
    keel_msg_t *m = NULL;
    if (keel_receive_match(match_ctl, NULL, &m, KEEL_INFINITY)) return;
    uint32_t tag = keel_msg_tag(m);
    keel_msg_free(m);
    if (tag == T_CRASH) keel_exitf("crash requested");
    if (tag == T_HOLD) keel_sleep(100000000);
  }
}

/* arg: the name to register it under (NULL: none) */
static int worker_start(void *arg, const void *args, size_t args_len, keel_pid_t *pid) {
  (void)args;
  (void)args_len;
  keel_spawn_opts o;
  keel_spawn_opts_init(&o);
  o.link = true;
  o.name = "obs_worker";
  int rc = keel_spawn(worker, NULL, &o, pid);
  if (rc == 0 && arg) rc = keel_register(arg, *pid);
  return rc;
}

static keel_sup_child_spec inner_children[] = {
    {.id = "w3", .start = worker_start, .restart = KEEL_SUP_PERMANENT},
};
static keel_sup_spec inner_spec = {
    .strategy = KEEL_SUP_ONE_FOR_ALL, .children = inner_children, .nchildren = 1};
static keel_sup_child_spec root_children[] = {
    {.id = "w1", .start = worker_start, .arg = "worker_one", .restart = KEEL_SUP_PERMANENT},
    {.id = "w2", .start = worker_start, .arg = "worker_two", .restart = KEEL_SUP_PERMANENT},
    {.id = "inner",
     .supervisor = &inner_spec,
     .restart = KEEL_SUP_PERMANENT},
};

typedef struct tree {
  keel_pid_t root, inner, w1, w1_old, w2, w3;
} tree;

static keel_pid_t which(keel_pid_t sup, const char *id) {
  keel_pid_t p = 0;
  CHECK_OK(keel_sup_which_pid(sup, id, &p));
  CHECK(p != 0);
  return p;
}

static void waiting_for_timer(keel_pid_t pid) {
  keel_proc_info pi;
  KT_WAIT_UNTIL(keel_rt_process_info(pid, &pi) == 0 && strcmp(pi.waiting_for, "timer") == 0);
}

/* Starts the tree, crashes w1 once, floods w2 with 100 messages. */
static tree tree_start(void) {
  keel_rt_set_report_handler(quiet_report, NULL);
  keel_sup_spec spec = {.strategy = KEEL_SUP_ONE_FOR_ONE,
                        .intensity = 5,
                        .period_ms = 7000,
                        .children = root_children,
                        .nchildren = 3};
  keel_sup_opts so = {.name = "obs_root"};
  tree t = {0};
  CHECK_OK(keel_sup_start(&spec, &so, &t.root, NULL));
  t.inner = which(t.root, "inner");
  t.w3 = which(t.inner, "w3");
  t.w2 = which(t.root, "w2");
  t.w1_old = which(t.root, "w1");
  kt_send_tag(t.w1_old, T_CRASH);
  KT_WAIT_UNTIL((t.w1 = which(t.root, "w1")) != t.w1_old);
  KT_WAIT_UNTIL(keel_whereis("worker_one") == t.w1);
  kt_send_tag(t.w2, T_HOLD);
  waiting_for_timer(t.w2);
  for (int i = 0; i < 100; i++)
    kt_send_tag(t.w2, T_FLOOD);
  return t;
}

static void tree_stop(tree *t) {
  CHECK_OK(keel_gs_stop(t->root, KEEL_REASON_SHUTDOWN, NULL, KT_LONG));
  CHECK(!keel_is_alive(t->root));
}

static const keel_observer_proc *find_proc(const keel_observer_snapshot *s, keel_pid_t pid) {
  for (size_t i = 0; i < s->nprocs; i++)
    if (s->procs[i].pid == pid) return &s->procs[i];
  return NULL;
}

KT_CASE(snapshot_lists_a_known_tree_exactly) {
  tree t = tree_start();
  keel_observer_opts o;
  keel_observer_opts_init(&o);
  o.max_processes = KEEL_OBSERVER_ALL_PROCS;
  keel_observer_snapshot s;
  CHECK_OK(keel_observer_snapshot_take(&o, &s));

  /* supervisors, in tree order */
  CHECK_EQ(s.nsups, 2);
  CHECK_EQ(s.totals.supervisors, 2);
  CHECK_EQ(s.totals.unresponsive_supervisors, 0);
  const keel_observer_sup *r = &s.sups[0], *in = &s.sups[1];
  CHECK_EQ(r->pid, t.root);
  CHECK_EQ(r->status, 0);
  CHECK_STR(r->name, "obs_root");
  CHECK_EQ(r->strategy, KEEL_SUP_ONE_FOR_ONE);
  CHECK_EQ(r->intensity, 5);
  CHECK_EQ(r->period_ms, 7000);
  CHECK_EQ(r->restarts, 1);
  CHECK_EQ(r->depth, 0);
  CHECK_EQ(r->parent, 0);
  CHECK(r->parent_index == KEEL_OBSERVER_NONE);
  CHECK_EQ(r->nchildren, 3);
  CHECK_STR(r->children[0].id, "w1");
  CHECK_EQ(r->children[0].pid, t.w1);
  CHECK_EQ(r->children[0].restarts, 1);
  CHECK_STR(r->children[1].id, "w2");
  CHECK_EQ(r->children[1].pid, t.w2);
  CHECK_EQ(r->children[1].restarts, 0);
  CHECK_STR(r->children[2].id, "inner");
  CHECK_EQ(r->children[2].type, KEEL_SUP_SUPERVISOR);
  CHECK_EQ(in->pid, t.inner);
  CHECK_STR(in->name, "");
  CHECK_EQ(in->strategy, KEEL_SUP_ONE_FOR_ALL);
  CHECK_EQ(in->restarts, 0);
  CHECK_EQ(in->depth, 1);
  CHECK_EQ(in->parent, t.root);
  CHECK_EQ(in->parent_index, 0);
  CHECK_EQ(in->nchildren, 1);
  CHECK_EQ(in->children[0].pid, t.w3);
  CHECK(keel_observer_snapshot_sup(&s, t.inner) == in);
  CHECK(keel_observer_snapshot_sup(&s, t.w1) == NULL);
  CHECK_EQ(s.totals.restarts, 1);

  /* processes: every one listed, the flooded one first */
  CHECK(!s.truncated);
  CHECK_EQ(s.nprocs, s.totals.processes);
  CHECK_EQ(s.procs[0].pid, t.w2);
  CHECK_EQ(s.procs[0].mailbox_len, 100);
  CHECK_EQ(s.totals.max_mailbox_len, 100);
  CHECK(s.totals.mailbox_messages >= 100);
  for (size_t i = 1; i < s.nprocs; i++)
    CHECK(s.procs[i - 1].mailbox_len >= s.procs[i].mailbox_len);
  const keel_observer_proc *p = find_proc(&s, t.w2);
  CHECK_STR(p->registered, "worker_two");
  CHECK_STR(p->name, "obs_worker");
  CHECK_STR(p->status, "waiting");
  CHECK_STR(p->waiting_for, "timer");
  CHECK_EQ(p->supervisor, t.root);
  CHECK_STR(p->child_id, "w2");
  CHECK_EQ(p->parent, t.root);
  CHECK(!p->is_supervisor);
  CHECK(p->memory > 0);
  p = find_proc(&s, t.w1);
  CHECK(p != NULL);
  CHECK_STR(p->registered, "worker_one");
  CHECK_EQ(p->supervisor, t.root);
  CHECK_STR(p->child_id, "w1");
  CHECK_EQ(p->mailbox_len, 0);
  CHECK(find_proc(&s, t.w1_old) == NULL); /* the crashed one is gone */
  p = find_proc(&s, t.w3);
  CHECK_EQ(p->supervisor, t.inner);
  CHECK_STR(p->child_id, "w3");
  CHECK_STR(p->registered, "");
  p = find_proc(&s, t.inner);
  CHECK(p->is_supervisor);
  CHECK_EQ(p->supervisor, t.root);
  CHECK_STR(p->child_id, "inner");
  p = find_proc(&s, t.root);
  CHECK(p->is_supervisor);
  CHECK_STR(p->registered, "obs_root");
  CHECK_EQ(p->supervisor, 0);
  p = find_proc(&s, keel_self());
  CHECK(p != NULL);
  CHECK_STR(p->status, "running");
  CHECK_EQ(s.totals.registered_names, 3);

  /* schedulers, totals, memory */
  CHECK_EQ(s.nscheds, 2);
  for (size_t i = 0; i < s.nscheds; i++) {
    CHECK_EQ(s.scheds[i].info.id, (int)i);
    CHECK(s.scheds[i].utilisation >= 0 && s.scheds[i].utilisation <= 1);
  }
  CHECK(s.totals.rt.procs_alive >= 1 && s.totals.rt.procs_spawned >= 6);
  CHECK(s.memory.rss_bytes > 0);
  CHECK(s.memory.system_bytes > 0);
  CHECK(s.time_ms > 1600000000000ull);
  keel_observer_snapshot_free(&s);
  CHECK(s.procs == NULL && s.nprocs == 0);

  /* restart counts after another crash, in the nested supervisor */
  kt_send_tag(t.w3, T_CRASH);
  keel_pid_t w3b;
  KT_WAIT_UNTIL((w3b = which(t.inner, "w3")) != t.w3);
  CHECK_OK(keel_observer_snapshot_take(NULL, &s));
  in = keel_observer_snapshot_sup(&s, t.inner);
  CHECK_EQ(in->restarts, 1);
  CHECK_EQ(in->children[0].restarts, 1);
  CHECK_EQ(in->children[0].pid, w3b);
  CHECK_EQ(keel_observer_snapshot_sup(&s, t.root)->restarts, 1);
  CHECK_EQ(s.totals.restarts, 2);
  CHECK_EQ(find_proc(&s, w3b)->supervisor, t.inner);
  CHECK(s.utilisation_window_ms >= 0);
  keel_observer_snapshot_free(&s);
  tree_stop(&t);
}

static void *outside_thread(void *arg) {
  int *rc = arg;
  keel_observer_snapshot s;
  rc[0] = keel_observer_snapshot_take(NULL, &s);
  char *json = NULL;
  rc[1] = keel_observer_snapshot_json(&json, NULL);
  return NULL;
}

KT_CASE(snapshot_needs_a_process_and_valid_options) {
  int rc[2] = {0, 0};
  pthread_t th;
  CHECK_OK(pthread_create(&th, NULL, outside_thread, rc));
  CHECK_OK(pthread_join(th, NULL));
  CHECK_EQ(rc[0], KEEL_ENOTPROC);
  CHECK_EQ(rc[1], KEEL_ENOTPROC);
  keel_observer_snapshot s;
  keel_observer_opts o;
  keel_observer_opts_init(&o);
  o.sup_timeout_ms = -1;
  CHECK_EQ(keel_observer_snapshot_take(&o, &s), KEEL_EINVAL);
  CHECK_EQ(keel_observer_snapshot_take(NULL, NULL), KEEL_EINVAL);
  keel_observer_snapshot_free(NULL);
  keel_observer_snapshot_free(&s); /* zeroed by the failed take */
}

/* ---- JSON ------------------------------------------------------------------------ */

static json_t *jget(json_t *o, const char *key) {
  json_t *v = json_object_get(o, key);
  if (!v) {
    fprintf(stderr, "missing JSON key %s\n", key);
    abort();
  }
  return v;
}

static void weird_named(void *arg) {
  (void)arg;
  keel_msg_t *m = kt_recv(KT_LONG);
  keel_msg_free(m);
}

KT_CASE(snapshot_json_parses_with_the_documented_fields) {
  tree t = tree_start();
  keel_spawn_opts so;
  keel_spawn_opts_init(&so);
  so.name = "we\"ird\\\n\x01\xff";
  keel_pid_t odd;
  CHECK_OK(keel_spawn(weird_named, NULL, &so, &odd));

  char *text = NULL;
  size_t len = 0;
  CHECK_OK(keel_observer_snapshot_json(&text, &len));
  CHECK(text && len == strlen(text));
  json_error_t err;
  json_t *root = json_loadb(text, len, 0, &err);
  if (!root) fprintf(stderr, "JSON error: %s at %d\n", err.text, err.position);
  CHECK(root != NULL);
  CHECK_EQ(json_integer_value(jget(root, "version")), 1);
  CHECK(json_integer_value(jget(root, "time_ms")) > 0);
  CHECK(json_is_integer(jget(root, "uptime_ms")));
  CHECK(json_is_false(jget(root, "truncated")));

  json_t *tot = jget(root, "totals");
  json_int_t nprocs = json_integer_value(jget(tot, "processes"));
  CHECK(nprocs >= 7);
  CHECK_EQ(json_integer_value(jget(tot, "supervisors")), 2);
  CHECK_EQ(json_integer_value(jget(tot, "restarts")), 1);
  CHECK_EQ(json_integer_value(jget(tot, "max_mailbox_len")), 100);
  CHECK(json_integer_value(jget(tot, "procs_spawned")) >= nprocs);
  CHECK_EQ(json_integer_value(jget(root, "processes_listed")), nprocs);

  json_t *mem = jget(root, "memory");
  CHECK(json_integer_value(jget(mem, "rss_bytes")) > 0);
  CHECK(json_is_integer(jget(mem, "heap_bytes")));
  json_t *lim = jget(mem, "limit_bytes");
  CHECK(json_is_null(lim) || json_integer_value(lim) > 0);

  json_t *sch = jget(root, "schedulers");
  CHECK_EQ(json_array_size(sch), 2);
  double u = json_real_value(jget(json_array_get(sch, 1), "utilisation"));
  CHECK(u >= 0 && u <= 1);
  CHECK(json_is_boolean(jget(json_array_get(sch, 0), "stuck")));

  char rootpid[32], innerpid[32], w2pid[32];
  keel_pid_format(t.root, rootpid, sizeof rootpid);
  keel_pid_format(t.inner, innerpid, sizeof innerpid);
  keel_pid_format(t.w2, w2pid, sizeof w2pid);

  json_t *sups = jget(root, "supervisors");
  CHECK_EQ(json_array_size(sups), 2);
  json_t *s0 = json_array_get(sups, 0);
  CHECK_STR(json_string_value(jget(s0, "pid")), rootpid);
  CHECK_STR(json_string_value(jget(s0, "name")), "obs_root");
  CHECK_STR(json_string_value(jget(s0, "status")), "ok");
  CHECK_STR(json_string_value(jget(s0, "strategy")), "one_for_one");
  CHECK_EQ(json_integer_value(jget(s0, "intensity")), 5);
  CHECK(json_is_null(jget(s0, "supervisor")));
  CHECK_EQ(json_array_size(jget(s0, "children")), 3);
  json_t *s1 = json_array_get(sups, 1);
  CHECK_STR(json_string_value(jget(s1, "supervisor")), rootpid);
  CHECK_EQ(json_integer_value(jget(s1, "depth")), 1);

  json_t *tr = jget(root, "tree");
  CHECK_EQ(json_array_size(tr), 1);
  json_t *kids = jget(json_array_get(tr, 0), "children");
  CHECK_EQ(json_array_size(kids), 3);
  json_t *w1 = json_array_get(kids, 0);
  CHECK_STR(json_string_value(jget(w1, "id")), "w1");
  CHECK_STR(json_string_value(jget(w1, "type")), "worker");
  CHECK_STR(json_string_value(jget(w1, "restart")), "permanent");
  CHECK_EQ(json_integer_value(jget(w1, "restarts")), 1);
  CHECK(json_object_get(w1, "supervisor") == NULL);
  json_t *nested = jget(json_array_get(kids, 2), "supervisor");
  CHECK_STR(json_string_value(jget(nested, "pid")), innerpid);
  CHECK_STR(json_string_value(jget(nested, "strategy")), "one_for_all");
  CHECK_STR(json_string_value(jget(json_array_get(jget(nested, "children"), 0), "id")), "w3");

  json_t *procs = jget(root, "processes");
  CHECK_EQ((json_int_t)json_array_size(procs), nprocs);
  json_t *p0 = json_array_get(procs, 0);
  CHECK_STR(json_string_value(jget(p0, "pid")), w2pid);
  CHECK_EQ(json_integer_value(jget(p0, "mailbox_len")), 100);
  CHECK_STR(json_string_value(jget(p0, "registered")), "worker_two");
  CHECK_STR(json_string_value(jget(p0, "supervisor")), rootpid);
  CHECK_STR(json_string_value(jget(p0, "child_id")), "w2");
  CHECK_STR(json_string_value(jget(p0, "status")), "waiting");
  CHECK(json_is_integer(jget(p0, "messages_handled")));
  CHECK(json_is_integer(jget(p0, "memory")));
  CHECK(json_is_false(jget(p0, "is_supervisor")));
  bool found_odd = false;
  char oddpid[32];
  keel_pid_format(odd, oddpid, sizeof oddpid);
  for (size_t i = 0; i < json_array_size(procs); i++) {
    json_t *p = json_array_get(procs, i);
    if (strcmp(json_string_value(jget(p, "pid")), oddpid) != 0) continue;
    found_odd = true;
    /* escaped and back; the invalid byte became U+FFFD */
    CHECK_STR(json_string_value(jget(p, "name")), "we\"ird\\\n\x01\xEF\xBF\xBD");
    CHECK(json_is_null(jget(p, "registered")));
    CHECK(json_is_null(jget(p, "supervisor")));
  }
  CHECK(found_odd);
  json_decref(root);
  free(text);
  kt_send_tag(odd, T_GO);
  tree_stop(&t);
}

/* ---- truncation ---------------------------------------------------------------------- */

static void sleeper(void *arg) {
  (void)arg;
  keel_sleep(100000000);
}

KT_CASE(truncation_keeps_the_longest_mailboxes_and_complete_totals) {
  enum { N = 60 };
  keel_pid_t pids[N];
  for (int i = 0; i < N; i++) {
    pids[i] = kt_spawn_on(sleeper, NULL, -1);
    waiting_for_timer(pids[i]);
    for (int k = 0; k < i + 1; k++)
      kt_send_tag(pids[i], T_FLOOD);
  }
  keel_observer_opts o;
  keel_observer_opts_init(&o);
  o.max_processes = 10;
  keel_observer_snapshot s;
  CHECK_OK(keel_observer_snapshot_take(&o, &s));
  CHECK(s.truncated);
  CHECK_EQ(s.nprocs, 10);
  CHECK(s.totals.processes >= N + 1);
  CHECK_EQ(s.totals.mailbox_messages, N * (N + 1) / 2);
  for (int i = 0; i < 10; i++) {
    CHECK_EQ(s.procs[i].pid, pids[N - 1 - i]);
    CHECK_EQ(s.procs[i].mailbox_len, N - i);
  }
  char *text;
  size_t len;
  CHECK_OK(keel_observer_snapshot_to_json(&s, &text, &len));
  json_t *root = json_loadb(text, len, 0, NULL);
  CHECK(root != NULL);
  CHECK(json_is_true(jget(root, "truncated")));
  CHECK_EQ(json_array_size(jget(root, "processes")), 10);
  CHECK_EQ(json_integer_value(jget(jget(root, "totals"), "processes")),
           (json_int_t)s.totals.processes);
  json_decref(root);
  free(text);
  uint64_t total = s.totals.processes;
  keel_observer_snapshot_free(&s);

  o.skip_processes = true;
  CHECK_OK(keel_observer_snapshot_take(&o, &s));
  CHECK_EQ(s.nprocs, 0);
  CHECK(s.procs == NULL);
  CHECK(s.truncated == false);
  CHECK_EQ(s.totals.processes, total);
  CHECK_EQ(s.totals.mailbox_messages, N * (N + 1) / 2);
  keel_observer_snapshot_free(&s);

  for (int i = 0; i < N; i++)
    CHECK_OK(keel_exit_signal(pids[i], KEEL_REASON_KILL, NULL));
}

/* ---- churn -------------------------------------------------------------------------- */

static atomic_bool churn_stop;
static atomic_ulong churned;

static void short_lived(void *arg) {
  (void)arg;
  keel_yield();
}

static void churner(void *arg) {
  keel_pid_t parent = (keel_pid_t)(uintptr_t)arg;
  int sched = keel_sched_current();
  while (!atomic_load(&churn_stop)) {
    for (int i = 0; i < 20; i++) {
      keel_spawn_opts o;
      keel_spawn_opts_init(&o);
      o.scheduler = KEEL_ON_SCHEDULER((sched + i) % 2);
      o.name = "churn";
      o.monitor = true;
      keel_ref_t ref;
      o.monitor_ref = &ref;
      CHECK_OK(keel_spawn(short_lived, NULL, &o, NULL));
      atomic_fetch_add(&churned, 1);
    }
    for (int i = 0; i < 20; i++) /* bounded: wait for this batch to end */
      keel_msg_free(kt_recv_kind(KEEL_MSG_DOWN, KT_LONG));
  }
  kt_send_tag(parent, T_GO);
}

static int cmp_pid(const void *a, const void *b) {
  keel_pid_t x = *(const keel_pid_t *)a, y = *(const keel_pid_t *)b;
  return (x > y) - (x < y);
}

KT_CASE(snapshot_consistent_while_processes_churn) {
  tree t = tree_start();
  atomic_store(&churn_stop, false);
  atomic_store(&churned, 0);
  for (int i = 0; i < 2; i++)
    kt_spawn_on(churner, (void *)(uintptr_t)keel_self(), i);
  KT_WAIT_UNTIL(atomic_load(&churned) > 100);
  int rounds = (int)kt_scale(60, 15);
  keel_observer_opts o;
  keel_observer_opts_init(&o);
  o.max_processes = KEEL_OBSERVER_ALL_PROCS;
  uint64_t max_seen = 0;
  for (int r = 0; r < rounds; r++) {
    keel_observer_snapshot s;
    o.skip_processes = r % 5 == 4;
    CHECK_OK(keel_observer_snapshot_take(&o, &s));
    if (!o.skip_processes) {
      CHECK_EQ(s.nprocs, s.totals.processes);
      CHECK(!s.truncated);
    }
    CHECK(s.totals.processes >= 7); /* the tree, the churners, this one */
    CHECK(s.totals.processes <= s.totals.rt.procs_spawned);
    CHECK_EQ(s.nsups, 2);
    CHECK_EQ(keel_observer_snapshot_sup(&s, t.root)->status, 0);
    keel_pid_t *v = malloc((s.nprocs + 1) * sizeof *v);
    CHECK(v != NULL);
    uint64_t mb = 0;
    for (size_t i = 0; i < s.nprocs; i++) {
      const keel_observer_proc *p = &s.procs[i];
      CHECK(p->pid != 0);
      CHECK(p->status != NULL && p->waiting_for != NULL && p->registered != NULL);
      CHECK(p->scheduler >= 0 && p->scheduler < 2);
      mb += p->mailbox_len;
      v[i] = p->pid;
    }
    if (!o.skip_processes) CHECK_EQ(mb, s.totals.mailbox_messages);
    qsort(v, s.nprocs, sizeof *v, cmp_pid);
    for (size_t i = 1; i < s.nprocs; i++)
      CHECK(v[i] != v[i - 1]); /* no process twice */
    free(v);
    if (r % 10 == 0) {
      char *text;
      size_t len;
      CHECK_OK(keel_observer_snapshot_to_json(&s, &text, &len));
      json_t *root = json_loadb(text, len, 0, NULL);
      CHECK(root != NULL);
      json_decref(root);
      free(text);
    }
    if (s.totals.processes > max_seen) max_seen = s.totals.processes;
    keel_observer_snapshot_free(&s);
    keel_yield();
  }
  atomic_store(&churn_stop, true);
  keel_msg_free(kt_recv_tag(T_GO, KT_LONG));
  keel_msg_free(kt_recv_tag(T_GO, KT_LONG));
  CHECK(atomic_load(&churned) > 100);
  CHECK(max_seen >= 7);
  tree_stop(&t);
}

/* ---- events -------------------------------------------------------------------------- */

static bool match_event(const keel_msg_t *m, void *arg) {
  (void)arg;
  return keel_msg_kind_of(m) == KEEL_MSG_USER && keel_msg_tag(m) == KEEL_OBSERVER_TAG_EVENT;
}

/* The next event (other messages stay queued). */
static keel_observer_event next_event(void) {
  keel_msg_t *m = NULL;
  CHECK_OK(keel_receive_match(match_event, NULL, &m, KT_LONG));
  keel_observer_event ev;
  CHECK_EQ(keel_msg_size(m), sizeof ev);
  memcpy(&ev, keel_msg_data(m), sizeof ev);
  keel_msg_free(m);
  CHECK(ev.time_ms > 0);
  return ev;
}

/* The next event about pid with one of these kinds. */
static keel_observer_event next_event_for(keel_pid_t pid, unsigned kinds) {
  for (;;) {
    keel_observer_event ev = next_event();
    if ((ev.pid == pid || ev.supervisor == pid) && (ev.kind & kinds)) return ev;
  }
}

static void doomed(void *arg) {
  (void)arg;
  keel_msg_t *m = kt_recv(KT_LONG);
  keel_msg_free(m);
  keel_exitf("boom %d", 7);
}

static void quick(void *arg) {
  (void)arg;
}

KT_CASE(events_arrive_in_order_with_reasons) {
  keel_rt_set_report_handler(quiet_report, NULL);
  CHECK_EQ(keel_observer_subscribe(keel_self(), KEEL_OBS_ALL, 0), KEEL_ESTATE);
  CHECK_OK(keel_observer_start(NULL));
  CHECK_EQ(keel_observer_start(NULL), KEEL_ESTATE); /* already running: left as it is */
  CHECK(keel_observer_running());
  CHECK_EQ(keel_observer_subscribe(0, KEEL_OBS_ALL, 0), KEEL_EINVAL);
  CHECK_EQ(keel_observer_subscribe(keel_self(), 0, 0), KEEL_EINVAL);
  CHECK_OK(keel_observer_subscribe(keel_self(),
                                   KEEL_OBS_PROC_STARTED | KEEL_OBS_PROC_EXITED |
                                       KEEL_OBS_CHILD_RESTARTED | KEEL_OBS_INTENSITY_EXCEEDED,
                                   0));
  CHECK_EQ(keel_observer_subscribers(), 1);

  keel_spawn_opts so;
  keel_spawn_opts_init(&so);
  so.name = "doomed";
  keel_pid_t d;
  CHECK_OK(keel_spawn(doomed, NULL, &so, &d));
  keel_observer_event ev = next_event_for(d, KEEL_OBS_PROC_STARTED | KEEL_OBS_PROC_EXITED);
  CHECK_EQ(ev.kind, KEEL_OBS_PROC_STARTED);
  CHECK_STR(ev.name, "doomed");
  CHECK_EQ(ev.parent, keel_self());
  CHECK_STR(keel_observer_kind_name(ev.kind), "process_started");
  kt_send_tag(d, T_GO);
  ev = next_event_for(d, KEEL_OBS_PROC_STARTED | KEEL_OBS_PROC_EXITED);
  CHECK_EQ(ev.kind, KEEL_OBS_PROC_EXITED);
  CHECK_EQ(ev.reason, KEEL_REASON_ERROR);
  CHECK_STR(ev.reason_text, "boom 7");
  CHECK_STR(ev.name, "doomed");
  CHECK_EQ(ev.dropped, 0);

  keel_pid_t q = kt_spawn_on(quick, NULL, 1);
  ev = next_event_for(q, KEEL_OBS_PROC_STARTED | KEEL_OBS_PROC_EXITED);
  CHECK_EQ(ev.kind, KEEL_OBS_PROC_STARTED);
  ev = next_event_for(q, KEEL_OBS_PROC_STARTED | KEEL_OBS_PROC_EXITED);
  CHECK_EQ(ev.kind, KEEL_OBS_PROC_EXITED);
  CHECK_EQ(ev.reason, KEEL_REASON_NORMAL);
  CHECK_STR(ev.reason_text, "");

  /* supervisor events: one restart, then too many */
  static keel_sup_child_spec ch[] = {
      {.id = "w1", .start = worker_start, .restart = KEEL_SUP_PERMANENT}};
  keel_sup_spec spec = {.strategy = KEEL_SUP_ONE_FOR_ONE,
                        .intensity = 1,
                        .period_ms = 60000,
                        .children = ch,
                        .nchildren = 1};
  keel_sup_opts sopt = {.name = "fragile"};
  keel_pid_t sup;
  CHECK_OK(keel_sup_start(&spec, &sopt, &sup, NULL));
  keel_pid_t w = which(sup, "w1");
  kt_send_tag(w, T_CRASH);
  ev = next_event_for(sup, KEEL_OBS_CHILD_RESTARTED | KEEL_OBS_INTENSITY_EXCEEDED);
  CHECK_EQ(ev.kind, KEEL_OBS_CHILD_RESTARTED);
  CHECK_EQ(ev.supervisor, sup);
  CHECK_STR(ev.sup_name, "fragile");
  CHECK_STR(ev.child_id, "w1");
  CHECK_EQ(ev.reason, KEEL_REASON_ERROR);
  CHECK_STR(ev.reason_text, "crash requested");
  CHECK_EQ(ev.attempt, 1);
  keel_pid_t w2 = ev.pid;
  CHECK(w2 != 0 && w2 != w);
  CHECK_EQ(which(sup, "w1"), w2);
  keel_ref_t ref;
  CHECK_OK(keel_monitor(sup, &ref));
  kt_send_tag(w2, T_CRASH);
  ev = next_event_for(sup, KEEL_OBS_CHILD_RESTARTED | KEEL_OBS_INTENSITY_EXCEEDED);
  CHECK_EQ(ev.kind, KEEL_OBS_INTENSITY_EXCEEDED);
  CHECK_STR(ev.sup_name, "fragile");
  CHECK_STR(keel_observer_kind_name(ev.kind), "intensity_exceeded");
  kt_wait_down(ref, sup, NULL, 0);

  CHECK_OK(keel_observer_unsubscribe(keel_self()));
  CHECK_EQ(keel_observer_unsubscribe(keel_self()), KEEL_ENOENT);
  CHECK_EQ(keel_observer_subscribers(), 0);
  CHECK_OK(keel_observer_stop());
  CHECK(!keel_observer_running());
  CHECK_OK(keel_observer_stop()); /* idempotent */
  CHECK_EQ(keel_observer_subscribe(keel_self(), KEEL_OBS_ALL, 0), KEEL_ESTATE);
}

static bool match_stats(const keel_msg_t *m, void *arg) {
  (void)arg;
  return keel_msg_kind_of(m) == KEEL_MSG_USER && keel_msg_tag(m) == KEEL_OBSERVER_TAG_STATS;
}

static keel_observer_stats next_stats(void) {
  keel_msg_t *m = NULL;
  CHECK_OK(keel_receive_match(match_stats, NULL, &m, KT_LONG));
  keel_observer_stats st;
  CHECK_EQ(keel_msg_size(m), sizeof st);
  memcpy(&st, keel_msg_data(m), sizeof st);
  keel_msg_free(m);
  return st;
}

KT_CASE(stats_polling_delivers_periodically) {
  CHECK_OK(keel_observer_start(NULL));
  CHECK_OK(keel_observer_subscribe(keel_self(), KEEL_OBS_STATS, 50));
  int64_t t0 = kt_now_ms();
  keel_observer_stats a = next_stats();
  keel_observer_stats b = next_stats();
  CHECK(kt_now_ms() - t0 < KT_LONG);
  CHECK(b.time_ms >= a.time_ms);
  CHECK(a.rt.procs_alive >= 2); /* this one and the observer */
  CHECK_EQ(a.schedulers, 2);
  CHECK(a.utilisation >= 0 && a.utilisation <= 1);
  CHECK(b.memory.rss_bytes > 0);
  CHECK_EQ(b.events_dropped, 0);
  CHECK_EQ(b.supervisors, 0);
  /* resubscribing replaces the kinds: no more stats after unsubscribing */
  CHECK_OK(keel_observer_subscribe(keel_self(), KEEL_OBS_PROC_EXITED, 0));
  CHECK_EQ(keel_observer_subscribers(), 1);
  CHECK_OK(keel_observer_stop());
  CHECK_EQ(keel_observer_subscribers(), 0);
}

static void subscribe_and_exit(void *arg) {
  (void)arg;
  CHECK_OK(keel_observer_subscribe(keel_self(), KEEL_OBS_STATS | KEEL_OBS_PROC_EXITED, 20));
  keel_msg_free(kt_recv_tag(T_GO, KT_LONG));
}

KT_CASE(dead_subscriber_is_removed) {
  CHECK_OK(keel_observer_start(NULL));
  keel_ref_t ref;
  keel_pid_t p = kt_spawn_monitor(subscribe_and_exit, NULL, -1, &ref);
  KT_WAIT_UNTIL(keel_observer_subscribers() == 1);
  kt_send_tag(p, T_GO);
  kt_wait_down(ref, p, NULL, 0);
  KT_WAIT_UNTIL(keel_observer_subscribers() == 0);
  CHECK_EQ(keel_observer_unsubscribe(p), KEEL_ENOENT);
  CHECK_EQ(keel_observer_subscribe(p, KEEL_OBS_ALL, 0), KEEL_ENOPROC);
  CHECK_OK(keel_observer_stop());
}

static void quick_flood(void *arg) {
  (void)arg;
}

KT_CASE(overload_is_bounded_and_counted) {
  keel_observer_start_opts opt = {.rate_max = 10};
  CHECK_OK(keel_observer_start(&opt));
  CHECK_OK(keel_observer_subscribe(
      keel_self(), KEEL_OBS_PROC_STARTED | KEEL_OBS_PROC_EXITED | KEEL_OBS_STATS, 20));
  enum { N = 300 };
  for (int i = 0; i < N; i++)
    CHECK_OK(keel_spawn(quick_flood, NULL, NULL, NULL));
  /* every event is either delivered or counted as dropped */
  uint64_t delivered = 0, dropped = 0;
  int64_t deadline = kt_now_ms() + KT_LONG;
  while (delivered + dropped < 2 * N) {
    CHECK(kt_now_ms() < deadline);
    keel_msg_t *m = kt_recv(KT_LONG);
    if (keel_msg_tag(m) == KEEL_OBSERVER_TAG_EVENT) {
      delivered++;
    } else if (keel_msg_tag(m) == KEEL_OBSERVER_TAG_STATS) {
      keel_observer_stats st;
      memcpy(&st, keel_msg_data(m), sizeof st);
      dropped = st.events_dropped;
    }
    keel_msg_free(m);
  }
  CHECK_EQ(delivered + dropped, 2 * N);
  CHECK(dropped > 0);
  CHECK(delivered >= 10);
  CHECK_OK(keel_observer_stop());
}

/* The node halts with the observer and a subscriber still there: keel_rt_stop
 * destroys the observer, whose exit cleanup uninstalls the hooks (ASan's
 * leak check and the next case's fresh start check that nothing is left). */
KT_CASE(observer_left_running_is_cleaned_up_at_stop) {
  CHECK_OK(keel_observer_start(NULL));
  CHECK_OK(keel_observer_subscribe(keel_self(), KEEL_OBS_ALL, 10));
  keel_spawn(quick, NULL, NULL, NULL);
  keel_rt_halt(0);
}

KT_CASE(a_new_runtime_starts_with_no_observer) {
  CHECK(!keel_observer_running());
  CHECK_EQ(keel_observer_subscribers(), 0);
  CHECK_OK(keel_observer_start(NULL));
  CHECK_OK(keel_observer_subscribe(keel_self(), KEEL_OBS_PROC_STARTED, 0));
  keel_pid_t q = kt_spawn_on(quick, NULL, -1);
  keel_observer_event ev = next_event_for(q, KEEL_OBS_PROC_STARTED);
  CHECK_EQ(ev.kind, KEEL_OBS_PROC_STARTED);
  CHECK_OK(keel_observer_stop());
}

KT_MAIN(KT_ENTRY_SCHED(snapshot_lists_a_known_tree_exactly, 2),
        KT_ENTRY_SCHED(snapshot_needs_a_process_and_valid_options, 2),
        KT_ENTRY_SCHED(snapshot_json_parses_with_the_documented_fields, 2),
        KT_ENTRY_SCHED(truncation_keeps_the_longest_mailboxes_and_complete_totals, 2),
        KT_ENTRY_SCHED(snapshot_consistent_while_processes_churn, 2),
        KT_ENTRY_SCHED(events_arrive_in_order_with_reasons, 2),
        KT_ENTRY_SCHED(stats_polling_delivers_periodically, 2),
        KT_ENTRY_SCHED(dead_subscriber_is_removed, 2),
        KT_ENTRY_SCHED(overload_is_bounded_and_counted, 2),
        KT_ENTRY_SCHED(observer_left_running_is_cleaned_up_at_stop, 2),
        KT_ENTRY_SCHED(a_new_runtime_starts_with_no_observer, 2))
