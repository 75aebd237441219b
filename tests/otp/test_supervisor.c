/* test_supervisor.c - supervision trees (include/keel/supervisor.h).
 *
 * The children are the test worker of kt_otp.h: a gen_server that traps exits
 * and logs "start:ID" from init and "stop:ID:REASON" from terminate into the
 * shared event log, so the order in which a supervisor starts, stops and
 * restarts its children can be read back as one string. Crashes are provoked
 * with a KW_CRASH cast (the worker stops with reason error "boom N").
 * Waiting for a restart polls keel_sup_which_pid until the child's pid
 * changes: the whole restart round runs in one step of the supervisor, so
 * once the new pid is visible the round is over and the log is complete.
 */
#include "otp/kt_otp.h"

/* ---- helpers ------------------------------------------------------------------------- */

static keel_pid_t sup_start(const keel_sup_spec *spec, const char *name) {
  keel_sup_opts o = {name, false};
  keel_pid_t sup = 0;
  keel_gs_exit why;
  int rc = keel_sup_start(spec, &o, &sup, &why);
  if (rc) {
    fprintf(stderr, "keel_sup_start: %s (%s)\n", keel_err_name(rc), rc == KEEL_EDOWN ? why.text : "");
    abort();
  }
  CHECK(sup != 0);
  return sup;
}

static void crash(keel_pid_t pid, uint64_t n) { CHECK_OK(keel_gs_cast(pid, kt_msg_u64(KW_CRASH, n))); }

static uint64_t alive_now(void) {
  keel_rt_stats s;
  keel_rt_stats_get(&s);
  return s.procs_alive;
}

static keel_sup_child_info child_info(keel_pid_t sup, const char *id) {
  keel_sup_child_info info[32];
  size_t n = 0;
  CHECK_OK(keel_sup_which_children(sup, info, 32, &n));
  for (size_t i = 0; i < n && i < 32; i++)
    if (strcmp(info[i].id, id) == 0) return info[i];
  fprintf(stderr, "no child %s\n", id);
  abort();
}

/* Waits until child id is not running (its exit was handled). */
static void wait_not_running(keel_pid_t sup, const char *id) {
  KT_WAIT_UNTIL(kt_child_pid(sup, id) == 0);
}

/* ---- start and stop ------------------------------------------------------------------ */

KT_CASE(children_start_in_order_and_stop_in_reverse) {
  kt_quiet();
  kt_log_reset();
  kt_worker_cfg a = {.id = "a"}, b = {.id = "b"}, c = {.id = "c"};
  keel_sup_child_spec ch[] = {kt_worker_spec(&a), kt_worker_spec(&b), kt_worker_spec(&c)};
  keel_sup_spec spec = kt_sup_spec(KEEL_SUP_ONE_FOR_ONE, ch, 3);
  keel_pid_t sup = sup_start(&spec, "top_sup");
  CHECK_LOG(0, "start:a,start:b,start:c");
  CHECK_EQ(keel_whereis("top_sup"), sup);

  keel_sup_child_info info[8];
  size_t n = 0;
  CHECK_OK(keel_sup_which_children(sup, info, 8, &n));
  CHECK_EQ(n, 3);
  CHECK(strcmp(info[0].id, "a") == 0 && strcmp(info[1].id, "b") == 0 &&
        strcmp(info[2].id, "c") == 0);
  for (int i = 0; i < 3; i++) {
    CHECK(info[i].pid != 0 && keel_is_alive(info[i].pid));
    CHECK_EQ(info[i].type, KEEL_SUP_WORKER);
    CHECK_EQ(info[i].restart, KEEL_SUP_PERMANENT);
    CHECK_EQ(info[i].restarts, 0);
    CHECK_EQ(kt_call_u64(info[i].pid, KW_PING, 0), 0);
  }
  CHECK_OK(keel_sup_which_children(sup, info, 1, &n)); /* n counts all, even past max */
  CHECK_EQ(n, 3);
  keel_sup_child_counts cc;
  CHECK_OK(keel_sup_count_children(sup, &cc));
  CHECK_EQ(cc.specs, 3);
  CHECK_EQ(cc.active, 3);
  CHECK_EQ(cc.workers, 3);
  CHECK_EQ(cc.supervisors, 0);

  size_t mark = kt_log_len();
  kt_stop(sup);
  CHECK_LOG(mark, "stop:c:shutdown,stop:b:shutdown,stop:a:shutdown");
  for (int i = 0; i < 3; i++)
    CHECK(!keel_is_alive(info[i].pid));
  CHECK_EQ(keel_whereis("top_sup"), 0);
}

KT_CASE(failing_child_start_stops_the_started_ones) {
  kt_quiet();
  kt_log_reset();
  uint64_t before = alive_now();
  kt_worker_cfg a = {.id = "a"}, b = {.id = "b"}, c = {.id = "c", .fail_start = KEEL_EIO},
                d = {.id = "d"};
  keel_sup_child_spec ch[] = {kt_worker_spec(&a), kt_worker_spec(&b), kt_worker_spec(&c),
                              kt_worker_spec(&d)};
  keel_sup_spec spec = kt_sup_spec(KEEL_SUP_ONE_FOR_ONE, ch, 4);
  keel_sup_opts o = {"failing_sup", false};
  keel_pid_t sup = 0;
  keel_gs_exit why;
  memset(&why, 0, sizeof why);
  int rc = keel_sup_start(&spec, &o, &sup, &why);
  CHECK(rc == KEEL_EIO || rc == KEEL_EDOWN);
  CHECK_EQ(sup, 0);
  CHECK_LOG(0, "start:a,start:b,fail:c,stop:b:shutdown,stop:a:shutdown");
  CHECK_EQ(keel_whereis("failing_sup"), 0);
  CHECK_EQ(alive_now(), before); /* no supervisor, no child left */

  /* the same when linked: the caller learns it from the result, not a signal */
  kt_log_reset();
  o.link = true;
  rc = keel_sup_start(&spec, &o, &sup, &why);
  CHECK(rc == KEEL_EIO || rc == KEEL_EDOWN);
  CHECK_LOG(0, "start:a,start:b,fail:c,stop:b:shutdown,stop:a:shutdown");
  CHECK_EQ(alive_now(), before);
  CHECK_EQ(keel_mailbox_len(), 0);
}

KT_CASE(bad_specs_are_refused) {
  kt_quiet();
  kt_log_reset();
  uint64_t before = alive_now();
  kt_worker_cfg a = {.id = "a"}, a2 = {.id = "a"};
  keel_sup_child_spec ch[] = {kt_worker_spec(&a), kt_worker_spec(&a2)};
  keel_sup_spec spec = kt_sup_spec(KEEL_SUP_ONE_FOR_ONE, ch, 2);
  keel_pid_t sup = 0;
  CHECK_EQ(keel_sup_start(&spec, NULL, &sup, NULL), KEEL_EINVAL); /* duplicate id */
  CHECK_LOG(0, ""); /* nothing was started */

  ch[1].id = "b";
  ch[1].significant = true; /* significant and permanent */
  spec.auto_shutdown = KEEL_SUP_ANY_SIGNIFICANT;
  CHECK_EQ(keel_sup_start(&spec, NULL, &sup, NULL), KEEL_EINVAL);

  ch[1].significant = false;
  spec.auto_shutdown = KEEL_SUP_AUTO_SHUTDOWN_NEVER;
  spec.strategy = KEEL_SUP_SIMPLE_ONE_FOR_ONE; /* two templates */
  CHECK_EQ(keel_sup_start(&spec, NULL, &sup, NULL), KEEL_EINVAL);
  spec.nchildren = 0;
  CHECK_EQ(keel_sup_start(&spec, NULL, &sup, NULL), KEEL_EINVAL);
  CHECK_LOG(0, "");
  CHECK_EQ(alive_now(), before);

  /* a name in use */
  spec = kt_sup_spec(KEEL_SUP_ONE_FOR_ONE, ch, 1);
  sup = sup_start(&spec, "sup_name");
  keel_pid_t other = 0;
  keel_sup_opts o = {"sup_name", false};
  CHECK_EQ(keel_sup_start(&spec, &o, &other, NULL), KEEL_EEXIST);
  CHECK_EQ(keel_whereis("sup_name"), sup);
  kt_stop(sup);
}

KT_CASE(duplicate_child_id_refused_by_start_child) {
  kt_quiet();
  kt_log_reset();
  kt_worker_cfg a = {.id = "a"}, a2 = {.id = "a"};
  keel_sup_child_spec ch[] = {kt_worker_spec(&a)};
  keel_sup_spec spec = kt_sup_spec(KEEL_SUP_ONE_FOR_ONE, ch, 1);
  keel_pid_t sup = sup_start(&spec, NULL);
  keel_sup_child_spec dup = kt_worker_spec(&a2);
  keel_pid_t pid = 0;
  CHECK_EQ(keel_sup_start_child(sup, &dup, &pid), KEEL_EEXIST);
  CHECK_LOG(0, "start:a");
  kt_stop(sup);
}

/* ---- strategies ---------------------------------------------------------------------- */

KT_CASE(one_for_one_restarts_only_the_crashed_child) {
  kt_quiet();
  kt_log_reset();
  kt_worker_cfg a = {.id = "a"}, b = {.id = "b"}, c = {.id = "c"};
  keel_sup_child_spec ch[] = {kt_worker_spec(&a), kt_worker_spec(&b), kt_worker_spec(&c)};
  keel_sup_spec spec = kt_sup_spec(KEEL_SUP_ONE_FOR_ONE, ch, 3);
  keel_pid_t sup = sup_start(&spec, NULL);
  keel_pid_t pa = kt_child_pid(sup, "a"), pb = kt_child_pid(sup, "b"), pc = kt_child_pid(sup, "c");
  size_t mark = kt_log_len();
  crash(pb, 1);
  keel_pid_t nb = kt_wait_new_pid(sup, "b", pb);
  CHECK_LOG(mark, "stop:b:error,start:b");
  CHECK_EQ(kt_child_pid(sup, "a"), pa);
  CHECK_EQ(kt_child_pid(sup, "c"), pc);
  CHECK(!keel_is_alive(pb));
  CHECK_EQ(kt_call_u64(nb, KW_PING, 0), 0);
  CHECK_EQ(child_info(sup, "b").restarts, 1);
  CHECK_EQ(child_info(sup, "a").restarts, 0);

  /* a kill is a crash too */
  mark = kt_log_len();
  CHECK_OK(keel_exit_signal(nb, KEEL_REASON_KILL, NULL));
  keel_pid_t nb2 = kt_wait_new_pid(sup, "b", nb);
  CHECK(nb2 != pb);
  CHECK_LOG(mark, "start:b");
  CHECK_EQ(child_info(sup, "b").restarts, 2);
  kt_stop(sup);
}

KT_CASE(one_for_all_restarts_all_in_order) {
  kt_quiet();
  kt_log_reset();
  kt_worker_cfg a = {.id = "a"}, b = {.id = "b"}, c = {.id = "c"};
  keel_sup_child_spec ch[] = {kt_worker_spec(&a), kt_worker_spec(&b), kt_worker_spec(&c)};
  keel_sup_spec spec = kt_sup_spec(KEEL_SUP_ONE_FOR_ALL, ch, 3);
  keel_pid_t sup = sup_start(&spec, NULL);
  keel_pid_t pa = kt_child_pid(sup, "a"), pb = kt_child_pid(sup, "b"), pc = kt_child_pid(sup, "c");
  size_t mark = kt_log_len();
  crash(pb, 1);
  kt_wait_new_pid(sup, "b", pb);
  CHECK_LOG(mark, "stop:b:error,stop:c:shutdown,stop:a:shutdown,start:a,start:b,start:c");
  CHECK(kt_child_pid(sup, "a") != pa);
  CHECK(kt_child_pid(sup, "c") != pc);
  CHECK(!keel_is_alive(pa) && !keel_is_alive(pc));
  kt_stop(sup);
}

KT_CASE(rest_for_one_restarts_the_crashed_child_and_those_after_it) {
  kt_quiet();
  kt_log_reset();
  kt_worker_cfg a = {.id = "a"}, b = {.id = "b"}, c = {.id = "c"}, d = {.id = "d"};
  keel_sup_child_spec ch[] = {kt_worker_spec(&a), kt_worker_spec(&b), kt_worker_spec(&c),
                              kt_worker_spec(&d)};
  keel_sup_spec spec = kt_sup_spec(KEEL_SUP_REST_FOR_ONE, ch, 4);
  keel_pid_t sup = sup_start(&spec, NULL);
  keel_pid_t pa = kt_child_pid(sup, "a"), pb = kt_child_pid(sup, "b"), pc = kt_child_pid(sup, "c"),
             pd = kt_child_pid(sup, "d");
  size_t mark = kt_log_len();
  crash(pb, 1);
  kt_wait_new_pid(sup, "b", pb);
  CHECK_LOG(mark, "stop:b:error,stop:d:shutdown,stop:c:shutdown,start:b,start:c,start:d");
  CHECK_EQ(kt_child_pid(sup, "a"), pa);
  CHECK(kt_child_pid(sup, "c") != pc && kt_child_pid(sup, "d") != pd);

  /* the last one crashing restarts only itself */
  mark = kt_log_len();
  pd = kt_child_pid(sup, "d");
  crash(pd, 2);
  kt_wait_new_pid(sup, "d", pd);
  CHECK_LOG(mark, "stop:d:error,start:d");
  kt_stop(sup);
}

/* ---- restart types ------------------------------------------------------------------- */

KT_CASE(transient_restarts_on_error_only) {
  kt_quiet();
  kt_log_reset();
  kt_worker_cfg a = {.id = "a"}, keep = {.id = "keep"};
  keel_sup_child_spec ch[] = {kt_worker_spec(&a), kt_worker_spec(&keep)};
  ch[0].restart = KEEL_SUP_TRANSIENT;
  keel_sup_spec spec = kt_sup_spec(KEEL_SUP_ONE_FOR_ONE, ch, 2);
  keel_pid_t sup = sup_start(&spec, NULL);

  keel_pid_t pa = kt_child_pid(sup, "a");
  crash(pa, 1);
  pa = kt_wait_new_pid(sup, "a", pa); /* error: restarted */

  size_t mark = kt_log_len();
  CHECK_OK(keel_gs_cast(pa, keel_msg_new(KW_EXIT_NORMAL, 0)));
  wait_not_running(sup, "a"); /* normal: not restarted */
  keel_sleep(20);
  CHECK_EQ(kt_child_pid(sup, "a"), 0);
  CHECK_LOG(mark, "stop:a:normal");
  keel_sup_child_counts cc;
  CHECK_OK(keel_sup_count_children(sup, &cc));
  CHECK_EQ(cc.specs, 2);
  CHECK_EQ(cc.active, 1);

  CHECK_OK(keel_sup_restart_child(sup, "a", &pa));
  CHECK(pa != 0);
  mark = kt_log_len();
  CHECK_OK(keel_gs_cast(pa, keel_msg_new(KW_EXIT_SHUTDOWN, 0)));
  wait_not_running(sup, "a"); /* shutdown: not restarted either */
  keel_sleep(20);
  CHECK_EQ(kt_child_pid(sup, "a"), 0);
  CHECK_LOG(mark, "stop:a:shutdown");
  kt_stop(sup);
}

KT_CASE(temporary_never_restarts) {
  kt_quiet();
  kt_log_reset();
  kt_worker_cfg t = {.id = "t"}, keep = {.id = "keep"};
  keel_sup_child_spec ch[] = {kt_worker_spec(&t), kt_worker_spec(&keep)};
  ch[0].restart = KEEL_SUP_TEMPORARY;
  keel_sup_spec spec = kt_sup_spec(KEEL_SUP_ONE_FOR_ONE, ch, 2);
  keel_pid_t sup = sup_start(&spec, NULL);
  keel_pid_t pt = kt_child_pid(sup, "t");
  size_t mark = kt_log_len();
  crash(pt, 1);
  KT_WAIT_UNTIL(({
    keel_sup_child_counts cc;
    CHECK_OK(keel_sup_count_children(sup, &cc));
    cc.active == 1;
  }));
  keel_sleep(20);
  CHECK_EQ(kt_child_pid(sup, "t"), 0);
  CHECK_LOG(mark, "stop:t:error");
  kt_stop(sup);
}

/* ---- shutdown ------------------------------------------------------------------------- */

KT_CASE(child_ignoring_shutdown_is_killed_after_its_timeout) {
  kt_quiet();
  kt_log_reset();
  kt_worker_cfg x = {.id = "x", .stubborn = true}, a = {.id = "a"};
  keel_sup_child_spec ch[] = {kt_worker_spec(&x), kt_worker_spec(&a)};
  ch[0].shutdown = 100;
  keel_sup_spec spec = kt_sup_spec(KEEL_SUP_ONE_FOR_ONE, ch, 2);
  keel_pid_t sup = sup_start(&spec, NULL);
  keel_pid_t px = kt_child_pid(sup, "x");
  keel_ref_t ref;
  CHECK_OK(keel_monitor(px, &ref));
  kt_stop(sup);
  CHECK_EQ(kt_wait_down(ref, px, NULL, 0), KEEL_REASON_KILLED);
  CHECK_LOG(0, "start:x,start:a,stop:a:shutdown,ignored:x");
}

KT_CASE(brutal_kill_child_is_killed_at_once) {
  kt_quiet();
  kt_log_reset();
  kt_worker_cfg a = {.id = "a"}, b = {.id = "b"};
  keel_sup_child_spec ch[] = {kt_worker_spec(&a), kt_worker_spec(&b)};
  ch[1].shutdown = KEEL_SUP_SHUTDOWN_BRUTAL_KILL;
  keel_sup_spec spec = kt_sup_spec(KEEL_SUP_ONE_FOR_ONE, ch, 2);
  keel_pid_t sup = sup_start(&spec, NULL);
  keel_pid_t pb = kt_child_pid(sup, "b");
  keel_ref_t ref;
  CHECK_OK(keel_monitor(pb, &ref));
  kt_stop(sup);
  CHECK_EQ(kt_wait_down(ref, pb, NULL, 0), KEEL_REASON_KILLED);
  CHECK_LOG(0, "start:a,start:b,stop:a:shutdown"); /* b's terminate never ran */
}

KT_CASE(killed_supervisor_takes_its_children_along) {
  kt_quiet();
  kt_log_reset();
  kt_worker_cfg a = {.id = "a"}, b = {.id = "b"};
  keel_sup_child_spec ch[] = {kt_worker_spec(&a), kt_worker_spec(&b)};
  keel_sup_spec spec = kt_sup_spec(KEEL_SUP_ONE_FOR_ONE, ch, 2);
  keel_pid_t sup = sup_start(&spec, NULL);
  keel_pid_t pa = kt_child_pid(sup, "a"), pb = kt_child_pid(sup, "b");
  keel_ref_t ra, rb;
  CHECK_OK(keel_monitor(pa, &ra));
  CHECK_OK(keel_monitor(pb, &rb));
  CHECK_OK(keel_exit_signal(sup, KEEL_REASON_KILL, NULL));
  CHECK_EQ(kt_wait_down(ra, pa, NULL, 0), KEEL_REASON_KILLED);
  CHECK_EQ(kt_wait_down(rb, pb, NULL, 0), KEEL_REASON_KILLED);
}

KT_CASE(nested_supervisors_stop_depth_first_in_reverse_order) {
  kt_quiet();
  kt_log_reset();
  kt_worker_cfg a = {.id = "a"}, b = {.id = "b"}, c = {.id = "c"}, d = {.id = "d"},
                e = {.id = "e"};
  keel_sup_child_spec sub1_ch[] = {kt_worker_spec(&b), kt_worker_spec(&c)};
  keel_sup_spec sub1 = kt_sup_spec(KEEL_SUP_ONE_FOR_ONE, sub1_ch, 2);
  keel_sup_child_spec sub2_ch[] = {kt_worker_spec(&e)};
  keel_sup_spec sub2 = kt_sup_spec(KEEL_SUP_ONE_FOR_ALL, sub2_ch, 1);
  keel_sup_child_spec top_ch[] = {kt_worker_spec(&a), kt_sup_child_spec("sub1", &sub1),
                                  kt_worker_spec(&d), kt_sup_child_spec("sub2", &sub2)};
  keel_sup_spec top = kt_sup_spec(KEEL_SUP_ONE_FOR_ONE, top_ch, 4);
  keel_pid_t sup = sup_start(&top, NULL);
  CHECK_LOG(0, "start:a,start:b,start:c,start:d,start:e");
  keel_sup_child_counts cc;
  CHECK_OK(keel_sup_count_children(sup, &cc));
  CHECK_EQ(cc.specs, 4);
  CHECK_EQ(cc.active, 4);
  CHECK_EQ(cc.supervisors, 2);
  CHECK_EQ(cc.workers, 2);
  keel_pid_t s1 = kt_child_pid(sup, "sub1");
  CHECK(s1 != 0);
  CHECK_EQ(child_info(sup, "sub1").type, KEEL_SUP_SUPERVISOR);
  CHECK(kt_child_pid(s1, "b") != 0); /* the nested supervisor answers the API too */
  size_t mark = kt_log_len();
  kt_stop(sup);
  CHECK_LOG(mark, "stop:e:shutdown,stop:d:shutdown,stop:c:shutdown,stop:b:shutdown,stop:a:shutdown");
  CHECK(!keel_is_alive(s1));
}

/* ---- restart intensity ------------------------------------------------------------------ */

typedef struct ev_rec {
  keel_sup_event_kind kind;
  keel_pid_t sup, child;
  char sup_name[64], child_id[64], reason_text[128];
  unsigned attempt;
  keel_reason_kind reason;
} ev_rec;

static pthread_mutex_t ev_mu = PTHREAD_MUTEX_INITIALIZER;
static ev_rec evs[256];
static size_t nevs;

static void on_event(const keel_sup_event *ev, void *ud) {
  CHECK(ud == (void *)&evs);
  pthread_mutex_lock(&ev_mu);
  if (nevs < 256) {
    ev_rec *r = &evs[nevs++];
    r->kind = ev->kind;
    r->sup = ev->sup;
    r->child = ev->child;
    snprintf(r->sup_name, sizeof r->sup_name, "%s", ev->sup_name ? ev->sup_name : "(null)");
    snprintf(r->child_id, sizeof r->child_id, "%s", ev->child_id ? ev->child_id : "(null)");
    snprintf(r->reason_text, sizeof r->reason_text, "%s",
             ev->reason.text ? ev->reason.text : "(null)");
    r->attempt = ev->attempt;
    r->reason = ev->reason.kind;
  }
  pthread_mutex_unlock(&ev_mu);
}

static size_t ev_count(keel_sup_event_kind kind, keel_pid_t sup) {
  pthread_mutex_lock(&ev_mu);
  size_t k = 0;
  for (size_t i = 0; i < nevs; i++)
    k += evs[i].kind == kind && (!sup || evs[i].sup == sup);
  pthread_mutex_unlock(&ev_mu);
  return k;
}

/* The i-th event of this kind (a copy). */
static ev_rec ev_get(keel_sup_event_kind kind, size_t i) {
  pthread_mutex_lock(&ev_mu);
  for (size_t j = 0; j < nevs; j++)
    if (evs[j].kind == kind && i-- == 0) {
      ev_rec r = evs[j];
      pthread_mutex_unlock(&ev_mu);
      return r;
    }
  pthread_mutex_unlock(&ev_mu);
  fprintf(stderr, "no such event\n");
  abort();
}

static void ev_reset(void) {
  pthread_mutex_lock(&ev_mu);
  nevs = 0;
  pthread_mutex_unlock(&ev_mu);
}

KT_CASE(intensity_exceeded_at_the_top_stops_the_children_and_exits_with_shutdown) {
  kt_quiet();
  kt_log_reset();
  ev_reset();
  int h = keel_sup_subscribe(on_event, &evs);
  CHECK(h > 0);
  kt_worker_cfg a = {.id = "a"}, b = {.id = "b"};
  keel_sup_child_spec ch[] = {kt_worker_spec(&a), kt_worker_spec(&b)};
  keel_sup_spec spec = kt_sup_spec(KEEL_SUP_ONE_FOR_ONE, ch, 2);
  spec.intensity = 1;
  spec.period_ms = 60000;
  keel_pid_t sup = sup_start(&spec, NULL);
  keel_ref_t ref;
  CHECK_OK(keel_monitor(sup, &ref));
  keel_pid_t pa = kt_child_pid(sup, "a");
  crash(pa, 1);
  pa = kt_wait_new_pid(sup, "a", pa); /* one restart is allowed */
  size_t mark = kt_log_len();
  crash(pa, 2); /* the second within the period is one too many */
  CHECK_EQ(kt_wait_down(ref, sup, NULL, 0), KEEL_REASON_SHUTDOWN);
  CHECK_LOG(mark, "stop:a:error,stop:b:shutdown");
  CHECK_EQ(ev_count(KEEL_SUP_INTENSITY_EXCEEDED, sup), 1);
  CHECK_OK(keel_sup_unsubscribe(h));

  /* intensity < 0: no restart at all */
  kt_log_reset();
  spec.intensity = -1;
  sup = sup_start(&spec, NULL);
  CHECK_OK(keel_monitor(sup, &ref));
  crash(kt_child_pid(sup, "b"), 1);
  CHECK_EQ(kt_wait_down(ref, sup, NULL, 0), KEEL_REASON_SHUTDOWN);
  CHECK_LOG(0, "start:a,start:b,stop:b:error,stop:a:shutdown");
}

KT_CASE(intensity_exceeded_escalates_to_the_parent_supervisor) {
  kt_quiet();
  kt_log_reset();
  kt_worker_cfg w = {.id = "w"}, z = {.id = "z"};
  keel_sup_child_spec mid_ch[] = {kt_worker_spec(&w)};
  keel_sup_spec mid = kt_sup_spec(KEEL_SUP_ONE_FOR_ONE, mid_ch, 1);
  mid.intensity = 1;
  mid.period_ms = 60000;
  keel_sup_child_spec top_ch[] = {kt_sup_child_spec("mid", &mid), kt_worker_spec(&z)};
  keel_sup_spec top = kt_sup_spec(KEEL_SUP_ONE_FOR_ONE, top_ch, 2);
  top.intensity = 10;
  keel_pid_t sup = sup_start(&top, NULL);
  keel_pid_t pmid = kt_child_pid(sup, "mid"), pz = kt_child_pid(sup, "z");
  keel_ref_t mref;
  CHECK_OK(keel_monitor(pmid, &mref));

  keel_pid_t pw = kt_child_pid(pmid, "w");
  crash(pw, 1);
  pw = kt_wait_new_pid(pmid, "w", pw);
  crash(pw, 2);
  CHECK_EQ(kt_wait_down(mref, pmid, NULL, 0), KEEL_REASON_SHUTDOWN);
  keel_pid_t nmid = kt_wait_new_pid(sup, "mid", pmid);
  CHECK_EQ(child_info(sup, "mid").restarts, 1);
  CHECK_EQ(kt_child_pid(sup, "z"), pz); /* one_for_one at the top: z untouched */
  keel_pid_t nw = kt_child_pid(nmid, "w");
  CHECK(nw != 0 && nw != pw);
  CHECK_EQ(kt_call_u64(nw, KW_PING, 0), 0);
  CHECK_LOG(0, "start:w,start:z,stop:w:error,start:w,stop:w:error,start:w");
  kt_stop(sup);
}

KT_CASE(restart_window_slides) {
  kt_quiet();
  kt_log_reset();
  kt_worker_cfg a = {.id = "a"};
  keel_sup_child_spec ch[] = {kt_worker_spec(&a)};
  keel_sup_spec spec = kt_sup_spec(KEEL_SUP_ONE_FOR_ONE, ch, 1);
  spec.intensity = 1;
  spec.period_ms = 100;
  keel_pid_t sup = sup_start(&spec, NULL);
  keel_ref_t ref;
  CHECK_OK(keel_monitor(sup, &ref));
  /* one crash per 400 ms with 1 restart allowed per 100 ms: each restart
   * is alone in its window, so the supervisor never gives up */
  keel_pid_t pa = kt_child_pid(sup, "a");
  for (uint64_t i = 0; i < 4; i++) {
    keel_sleep(400);
    crash(pa, i);
    pa = kt_wait_new_pid(sup, "a", pa);
  }
  CHECK(keel_is_alive(sup));
  CHECK_EQ(child_info(sup, "a").restarts, 4);
  CHECK_OK(keel_demonitor(ref));
  kt_stop(sup);
}

KT_CASE(restart_events_reach_subscribers) {
  kt_quiet();
  kt_log_reset();
  ev_reset();
  int h = keel_sup_subscribe(on_event, &evs);
  CHECK(h > 0);
  kt_worker_cfg a = {.id = "a"};
  keel_sup_child_spec ch[] = {kt_worker_spec(&a)};
  keel_sup_spec spec = kt_sup_spec(KEEL_SUP_ONE_FOR_ONE, ch, 1);
  spec.intensity = 5;
  spec.period_ms = 60000;
  keel_pid_t sup = sup_start(&spec, "ev_sup");
  CHECK(ev_count(KEEL_SUP_CHILD_STARTED, sup) >= 1);
  keel_pid_t pa = kt_child_pid(sup, "a");
  crash(pa, 1);
  keel_pid_t pa2 = kt_wait_new_pid(sup, "a", pa);
  crash(pa2, 2);
  keel_pid_t pa3 = kt_wait_new_pid(sup, "a", pa2);
  CHECK_EQ(ev_count(KEEL_SUP_CHILD_RESTARTED, sup), 2);
  CHECK_EQ(ev_count(KEEL_SUP_CHILD_EXITED, sup), 2);
  for (unsigned i = 0; i < 2; i++) {
    ev_rec r = ev_get(KEEL_SUP_CHILD_RESTARTED, i);
    CHECK_EQ(r.sup, sup);
    CHECK(strcmp(r.sup_name, "ev_sup") == 0);
    CHECK(strcmp(r.child_id, "a") == 0);
    CHECK_EQ(r.attempt, i + 1);
    (void)pa3; /* r.child: the header does not say which pid a RESTARTED event names */
    CHECK_EQ(r.reason, KEEL_REASON_ERROR);
    char want[32];
    snprintf(want, sizeof want, "boom %u", i + 1);
    CHECK(strcmp(r.reason_text, want) == 0);
    ev_rec x = ev_get(KEEL_SUP_CHILD_EXITED, i);
    CHECK(strcmp(x.child_id, "a") == 0);
    CHECK_EQ(x.child, i == 0 ? pa : pa2); /* the pid that exited */
    CHECK_EQ(x.reason, KEEL_REASON_ERROR);
    CHECK(strcmp(x.reason_text, want) == 0);
  }
  CHECK_OK(keel_sup_unsubscribe(h));
  CHECK(keel_sup_unsubscribe(h) < 0);
  /* no more events after unsubscribing */
  size_t before = ev_count(KEEL_SUP_CHILD_RESTARTED, 0);
  crash(pa3, 3);
  kt_wait_new_pid(sup, "a", pa3);
  CHECK_EQ(ev_count(KEEL_SUP_CHILD_RESTARTED, 0), before);
  kt_stop(sup);
}

/* Counts CHILD_RESTARTED events; the slow one spins inside its call. */
typedef struct {
  atomic_int restarted;
  atomic_int inside;
  bool slow;
} sub_probe;

static void probe_on_event(const keel_sup_event *ev, void *ud) {
  sub_probe *p = ud;
  if (ev->kind != KEEL_SUP_CHILD_RESTARTED) return;
  atomic_store(&p->inside, 1);
  if (p->slow) {
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do /* 100 ms inside the call, without yielding (callbacks must not) */
      clock_gettime(CLOCK_MONOTONIC, &t);
    while ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 < 100);
  }
  atomic_fetch_add(&p->restarted, 1);
  atomic_store(&p->inside, 0);
}

typedef struct {
  sub_probe *probe;
  int handle, rc, inside_after, restarted_after;
} late_unsub;

/* On the blocking pool (another thread): waits until the probe is inside
 * its call, then unsubscribes and looks. */
static void unsubscribe_when_inside(void *arg) {
  late_unsub *u = arg;
  while (!atomic_load(&u->probe->inside)) {
    struct timespec ms = {0, 1000000};
    nanosleep(&ms, NULL);
  }
  u->rc = keel_sup_unsubscribe(u->handle);
  u->inside_after = atomic_load(&u->probe->inside);
  u->restarted_after = atomic_load(&u->probe->restarted);
}

KT_CASE(every_subscriber_hears_every_event_and_unsubscribe_means_no_later_call) {
  kt_quiet();
  enum { N = 20 };
  static sub_probe probes[N];
  int h[N];
  for (int i = 0; i < N; i++) {
    atomic_store(&probes[i].restarted, 0);
    atomic_store(&probes[i].inside, 0);
    probes[i].slow = i == N - 1;
    h[i] = keel_sup_subscribe(probe_on_event, &probes[i]);
    CHECK(h[i] > 0);
  }
  kt_worker_cfg a = {.id = "a"};
  keel_sup_child_spec ch[] = {kt_worker_spec(&a)};
  keel_sup_spec spec = kt_sup_spec(KEEL_SUP_ONE_FOR_ONE, ch, 1);
  spec.intensity = 10;
  spec.period_ms = 60000;
  keel_pid_t sup = sup_start(&spec, NULL);
  keel_pid_t pa = kt_child_pid(sup, "a");
  crash(pa, 1);
  pa = kt_wait_new_pid(sup, "a", pa);
  KT_WAIT_UNTIL(atomic_load(&probes[N - 1].restarted) == 1);
  for (int i = 0; i < N; i++) /* all twenty, not the first sixteen */
    CHECK_EQ(atomic_load(&probes[i].restarted), 1);
  /* unsubscribe, from another thread, while the slow subscriber is inside
   * its call: it returns only after the call, and no call follows */
  late_unsub u = {.probe = &probes[N - 1], .handle = h[N - 1]};
  crash(pa, 2);
  CHECK_OK(keel_blocking(unsubscribe_when_inside, &u));
  CHECK_OK(u.rc);
  CHECK_EQ(u.inside_after, 0);
  CHECK_EQ(u.restarted_after, 2);
  pa = kt_wait_new_pid(sup, "a", pa);
  crash(pa, 3);
  pa = kt_wait_new_pid(sup, "a", pa);
  KT_WAIT_UNTIL(atomic_load(&probes[0].restarted) == 3);
  CHECK_EQ(atomic_load(&probes[N - 1].restarted), 2);
  for (int i = 0; i < N - 1; i++)
    CHECK_OK(keel_sup_unsubscribe(h[i]));
  CHECK_EQ(keel_sup_unsubscribe(h[0]), KEEL_ENOENT);
  kt_stop(sup);
}

/* ---- auto_shutdown ------------------------------------------------------------------------ */

KT_CASE(auto_shutdown_any_significant) {
  kt_quiet();
  kt_log_reset();
  kt_worker_cfg a = {.id = "a"}, b = {.id = "b"};
  keel_sup_child_spec ch[] = {kt_worker_spec(&a), kt_worker_spec(&b)};
  ch[0].restart = KEEL_SUP_TRANSIENT;
  ch[0].significant = true;
  keel_sup_spec spec = kt_sup_spec(KEEL_SUP_ONE_FOR_ONE, ch, 2);
  spec.auto_shutdown = KEEL_SUP_ANY_SIGNIFICANT;
  keel_pid_t sup = sup_start(&spec, NULL);
  keel_ref_t ref;
  CHECK_OK(keel_monitor(sup, &ref));
  /* a crash of a transient significant child is restarted, not a shutdown */
  keel_pid_t pa = kt_child_pid(sup, "a");
  crash(pa, 1);
  pa = kt_wait_new_pid(sup, "a", pa);
  CHECK(keel_is_alive(sup));
  /* its normal exit stops the supervisor */
  size_t mark = kt_log_len();
  CHECK_OK(keel_gs_cast(pa, keel_msg_new(KW_EXIT_NORMAL, 0)));
  CHECK_EQ(kt_wait_down(ref, sup, NULL, 0), KEEL_REASON_SHUTDOWN);
  CHECK_LOG(mark, "stop:a:normal,stop:b:shutdown");
}

KT_CASE(auto_shutdown_all_significant) {
  kt_quiet();
  kt_log_reset();
  kt_worker_cfg a = {.id = "a"}, b = {.id = "b"}, c = {.id = "c"};
  keel_sup_child_spec ch[] = {kt_worker_spec(&a), kt_worker_spec(&b), kt_worker_spec(&c)};
  ch[0].restart = KEEL_SUP_TRANSIENT;
  ch[0].significant = true;
  ch[1].restart = KEEL_SUP_TEMPORARY;
  ch[1].significant = true;
  keel_sup_spec spec = kt_sup_spec(KEEL_SUP_ONE_FOR_ONE, ch, 3);
  spec.auto_shutdown = KEEL_SUP_ALL_SIGNIFICANT;
  keel_pid_t sup = sup_start(&spec, NULL);
  keel_ref_t ref;
  CHECK_OK(keel_monitor(sup, &ref));
  keel_pid_t pa = kt_child_pid(sup, "a"), pb = kt_child_pid(sup, "b");
  CHECK_OK(keel_gs_cast(pa, keel_msg_new(KW_EXIT_NORMAL, 0)));
  wait_not_running(sup, "a");
  keel_sleep(20);
  CHECK(keel_is_alive(sup)); /* b is still running */
  CHECK(kt_child_pid(sup, "c") != 0);
  size_t mark = kt_log_len();
  crash(pb, 1); /* temporary: any exit counts */
  CHECK_EQ(kt_wait_down(ref, sup, NULL, 0), KEEL_REASON_SHUTDOWN);
  CHECK_LOG(mark, "stop:b:error,stop:c:shutdown");
}

/* ---- simple_one_for_one ------------------------------------------------------------------- */

static size_t running_children(keel_pid_t sup, keel_pid_t *out, size_t max) {
  keel_sup_child_info info[16];
  size_t n = 0, k = 0;
  CHECK_OK(keel_sup_which_children(sup, info, 16, &n));
  for (size_t i = 0; i < n && i < 16; i++)
    if (info[i].pid && k < max) out[k++] = info[i].pid;
  return k;
}

KT_CASE(simple_one_for_one_keeps_each_childs_arguments_across_restarts) {
  kt_quiet();
  kt_log_reset();
  kt_worker_cfg s = {.id = "s"};
  keel_sup_child_spec tmpl = kt_worker_spec(&s);
  keel_sup_spec spec = kt_sup_spec(KEEL_SUP_SIMPLE_ONE_FOR_ONE, &tmpl, 1);
  keel_pid_t sup = sup_start(&spec, NULL);
  CHECK_LOG(0, ""); /* the template starts nothing */
  keel_pid_t p[3];
  for (uint64_t i = 0; i < 3; i++) {
    uint64_t v = 10 * (i + 1);
    CHECK_OK(keel_sup_start_child_args(sup, &v, sizeof v, &p[i]));
    CHECK(p[i] != 0);
  }
  CHECK_LOG(0, "start:s:10,start:s:20,start:s:30");
  for (int i = 0; i < 3; i++)
    CHECK_EQ(kt_call_u64(p[i], KW_PING, 0), 10 * (i + 1));
  keel_sup_child_counts cc;
  CHECK_OK(keel_sup_count_children(sup, &cc));
  CHECK_EQ(cc.active, 3);
  CHECK_EQ(cc.workers, 3);

  size_t mark = kt_log_len();
  crash(p[1], 1);
  keel_pid_t now[8], fresh = 0;
  KT_WAIT_UNTIL(({
    size_t k = running_children(sup, now, 8);
    fresh = 0;
    for (size_t i = 0; i < k; i++)
      if (now[i] != p[0] && now[i] != p[1] && now[i] != p[2]) fresh = now[i];
    k == 3 && fresh != 0;
  }));
  CHECK_EQ(kt_call_u64(fresh, KW_PING, 0), 20); /* same arguments as before */
  CHECK_LOG(mark, "stop:s:error,start:s:20");

  /* terminate_child by pid removes the child */
  CHECK_OK(keel_sup_terminate_child(sup, NULL, p[0]));
  CHECK(!keel_is_alive(p[0]));
  CHECK_OK(keel_sup_count_children(sup, &cc));
  CHECK_EQ(cc.active, 2);
  CHECK_EQ(keel_sup_terminate_child(sup, NULL, p[0]), KEEL_ENOENT);
  kt_stop(sup);
  CHECK(!keel_is_alive(fresh) && !keel_is_alive(p[2]));
}

/* ---- dynamic API -------------------------------------------------------------------------- */

KT_CASE(dynamic_children_start_terminate_restart_delete) {
  kt_quiet();
  kt_log_reset();
  kt_worker_cfg a = {.id = "a"}, b = {.id = "b"}, n = {.id = "n", .ignore = true};
  keel_sup_child_spec ch[] = {kt_worker_spec(&a)};
  keel_sup_spec spec = kt_sup_spec(KEEL_SUP_ONE_FOR_ONE, ch, 1);
  keel_pid_t sup = sup_start(&spec, NULL);

  keel_sup_child_spec bs = kt_worker_spec(&b);
  keel_pid_t pb = 0;
  CHECK_OK(keel_sup_start_child(sup, &bs, &pb));
  CHECK(pb != 0 && keel_is_alive(pb));
  CHECK_EQ(kt_child_pid(sup, "b"), pb);
  CHECK_EQ(keel_sup_start_child(sup, &bs, NULL), KEEL_EEXIST);
  CHECK_LOG(0, "start:a,start:b");

  /* a child whose start says ignore is kept, not running */
  keel_sup_child_spec ns = kt_worker_spec(&n);
  keel_pid_t pn = 1;
  CHECK_OK(keel_sup_start_child(sup, &ns, &pn));
  CHECK_EQ(pn, 0);

  keel_sup_child_info info[8];
  size_t cnt = 0;
  CHECK_OK(keel_sup_which_children(sup, info, 8, &cnt));
  CHECK_EQ(cnt, 3);
  CHECK(strcmp(info[0].id, "a") == 0 && strcmp(info[1].id, "b") == 0 &&
        strcmp(info[2].id, "n") == 0);
  CHECK_EQ(info[2].pid, 0);
  keel_sup_child_counts cc;
  CHECK_OK(keel_sup_count_children(sup, &cc));
  CHECK_EQ(cc.specs, 3);
  CHECK_EQ(cc.active, 2);

  /* terminate: the spec stays, not running */
  size_t mark = kt_log_len();
  CHECK_OK(keel_sup_terminate_child(sup, "b", 0));
  CHECK_LOG(mark, "stop:b:shutdown");
  CHECK(!keel_is_alive(pb));
  keel_pid_t w = 1;
  int rc = keel_sup_which_pid(sup, "b", &w);
  CHECK(rc == 0 || rc == KEEL_ENOENT);
  CHECK_EQ(w, 0);
  CHECK_EQ(keel_sup_which_pid(sup, "nosuch", &w), KEEL_ENOENT);
  CHECK_EQ(keel_sup_terminate_child(sup, "nosuch", 0), KEEL_ENOENT);
  CHECK_OK(keel_sup_count_children(sup, &cc));
  CHECK_EQ(cc.specs, 3);
  CHECK_EQ(cc.active, 1);

  /* restart it; restarting a running child is EBUSY */
  keel_pid_t pb2 = 0;
  CHECK_OK(keel_sup_restart_child(sup, "b", &pb2));
  CHECK(pb2 != 0 && pb2 != pb);
  CHECK_EQ(kt_child_pid(sup, "b"), pb2);
  CHECK_EQ(keel_sup_restart_child(sup, "b", NULL), KEEL_EBUSY);
  CHECK_EQ(keel_sup_restart_child(sup, "nosuch", NULL), KEEL_ENOENT);

  /* delete: only a stopped child */
  CHECK_EQ(keel_sup_delete_child(sup, "b"), KEEL_EBUSY);
  CHECK_OK(keel_sup_terminate_child(sup, "b", 0));
  CHECK_OK(keel_sup_delete_child(sup, "b"));
  CHECK_EQ(keel_sup_delete_child(sup, "b"), KEEL_ENOENT);
  CHECK_EQ(keel_sup_restart_child(sup, "b", NULL), KEEL_ENOENT);
  CHECK_OK(keel_sup_count_children(sup, &cc));
  CHECK_EQ(cc.specs, 2);

  /* the id is free again */
  CHECK_OK(keel_sup_start_child(sup, &bs, &pb));
  CHECK_OK(keel_sup_count_children(sup, &cc));
  CHECK_EQ(cc.specs, 3);
  CHECK_EQ(cc.active, 2);

  /* which_pid changes across restarts */
  keel_pid_t pa = kt_child_pid(sup, "a");
  crash(pa, 1);
  keel_pid_t pa2 = kt_wait_new_pid(sup, "a", pa);
  CHECK(pa2 != pa);
  CHECK_EQ(child_info(sup, "a").restarts, 1);

  /* a child started dynamically stops in reverse order too: b last in, first out */
  mark = kt_log_len();
  kt_stop(sup);
  CHECK_LOG(mark, "stop:b:shutdown,stop:a:shutdown");
}

KT_CASE(dynamic_api_on_a_dead_supervisor_is_enoproc) {
  kt_quiet();
  kt_worker_cfg a = {.id = "a"};
  keel_sup_child_spec ch[] = {kt_worker_spec(&a)};
  keel_sup_spec spec = kt_sup_spec(KEEL_SUP_ONE_FOR_ONE, ch, 1);
  keel_pid_t sup = sup_start(&spec, NULL);
  kt_stop(sup);
  keel_pid_t pid = 0;
  keel_sup_child_counts cc;
  keel_sup_child_info info[2];
  size_t n;
  CHECK_EQ(keel_sup_which_pid(sup, "a", &pid), KEEL_ENOPROC);
  CHECK_EQ(keel_sup_count_children(sup, &cc), KEEL_ENOPROC);
  CHECK_EQ(keel_sup_which_children(sup, info, 2, &n), KEEL_ENOPROC);
  CHECK_EQ(keel_sup_terminate_child(sup, "a", 0), KEEL_ENOPROC);
  CHECK_EQ(keel_sup_start_child(sup, &ch[0], &pid), KEEL_ENOPROC);
}

/* ---- introspection --------------------------------------------------------------- */

static bool listed(keel_pid_t sup) {
  keel_pid_t v[64];
  size_t n = keel_sup_list(v, 64);
  for (size_t i = 0; i < n && i < 64; i++)
    if (v[i] == sup) return true;
  return false;
}

KT_CASE(supervisors_are_listed_while_alive_and_report_their_settings_and_children) {
  kt_quiet();
  kt_worker_cfg a = {.id = "a"}, b = {.id = "b"};
  keel_sup_child_spec ch[] = {kt_worker_spec(&a), kt_worker_spec(&b)};
  keel_sup_spec spec = kt_sup_spec(KEEL_SUP_REST_FOR_ONE, ch, 2);
  spec.intensity = 7;
  spec.period_ms = 9000;
  keel_pid_t sup = sup_start(&spec, "introspected");
  CHECK(listed(sup));
  keel_pid_t pa = kt_child_pid(sup, "a");
  crash(pa, 1);
  kt_wait_new_pid(sup, "a", pa);

  keel_sup_info si;
  CHECK_OK(keel_sup_info_get(sup, KT_LONG, &si));
  CHECK_EQ(si.pid, sup);
  CHECK_STR(si.name, "introspected");
  CHECK_EQ(si.strategy, KEEL_SUP_REST_FOR_ONE);
  CHECK_STR(keel_sup_strategy_name(si.strategy), "rest_for_one");
  CHECK_EQ(si.intensity, 7);
  CHECK_EQ(si.period_ms, 9000);
  CHECK_EQ(si.restarts, 1); /* one round, though b was restarted with a */
  CHECK_EQ(si.nchildren, 2);
  CHECK_STR(si.children[0].id, "a");
  CHECK_STR(si.children[1].id, "b");
  CHECK_EQ(si.children[0].restarts, 1);
  CHECK_EQ(si.children[0].pid, kt_child_pid(sup, "a"));
  keel_sup_info_free(&si);
  CHECK(si.children == NULL);

  kt_stop(sup);
  CHECK(!listed(sup));
  CHECK_EQ(keel_sup_info_get(sup, KT_LONG, &si), KEEL_ENOPROC);
}

/* ---- one-line child specs ------------------------------------------------------------------ */

static int u64_init(void *arg, void **state) {
  *state = arg; /* points to a uint64_t: the spec's arg, or the simple_one_for_one copy */
  return 0;
}

static int u64_call(void *st, keel_gs_from from, keel_msg_t **req, keel_msg_t **reply) {
  (void)from, (void)req;
  *reply = keel_msg_copy(0, st, sizeof(uint64_t));
  return KEEL_GS_REPLY;
}

static const keel_gen_server u64_server = {.init = u64_init, .handle_call = u64_call};

static uint64_t call_u64(keel_pid_t p) {
  keel_msg_t *r = NULL;
  if (keel_gs_call(p, keel_msg_new(0, 0), &r, 0, NULL) != 0) return 0;
  uint64_t v = 0;
  memcpy(&v, keel_msg_data(r), sizeof v);
  keel_msg_free(r);
  return v;
}

KT_CASE(gen_server_and_supervisor_children_in_one_line) {
  kt_quiet();
  static uint64_t seven = 7;
  kt_worker_cfg w = {.id = "w"};
  keel_sup_child_spec inner_ch[] = {kt_worker_spec(&w)};
  keel_sup_spec inner = kt_sup_spec(KEEL_SUP_ONE_FOR_ONE, inner_ch, 1);
  keel_sup_child_spec ch[] = {
      {.id = "g", .gen_server = &u64_server, .arg = &seven, .name = "one_line_g"},
      {.id = "s", .supervisor = &inner, .name = "one_line_s"},
  };
  keel_sup_spec spec = kt_sup_spec(KEEL_SUP_ONE_FOR_ONE, ch, 2);
  keel_pid_t sup = sup_start(&spec, NULL);
  keel_pid_t g = 0, s = 0;
  CHECK_OK(keel_sup_which_pid(sup, "g", &g));
  CHECK_OK(keel_sup_which_pid(sup, "s", &s));
  CHECK_EQ(keel_whereis("one_line_g"), g);
  CHECK_EQ(keel_whereis("one_line_s"), s);
  CHECK_EQ(call_u64(g), 7);
  keel_sup_child_counts cc;
  CHECK_OK(keel_sup_count_children(sup, &cc));
  CHECK_EQ(cc.supervisors, 1); /* .supervisor makes the type, whatever .type says */
  CHECK_EQ(cc.workers, 1);
  CHECK_OK(keel_sup_count_children(s, &cc));
  CHECK_EQ(cc.active, 1);

  /* restarted under its name with the same argument */
  keel_exit_signal(g, KEEL_REASON_KILL, NULL);
  keel_pid_t g2 = 0;
  KT_WAIT_UNTIL(keel_sup_which_pid(sup, "g", &g2) == 0 && g2 != 0 && g2 != g);
  KT_WAIT_UNTIL(keel_whereis("one_line_g") == g2);
  CHECK_EQ(call_u64(g2), 7);
  kt_stop(sup);
  CHECK_EQ(keel_whereis("one_line_g"), 0);

  /* exactly one way to start: none, or two, is refused */
  keel_sup_child_spec bad[] = {{.id = "x", .gen_server = &u64_server, .start = kt_worker_start}};
  keel_sup_spec bs = kt_sup_spec(KEEL_SUP_ONE_FOR_ONE, bad, 1);
  keel_pid_t none = 0;
  CHECK_EQ(keel_sup_start(&bs, NULL, &none, NULL), KEEL_EINVAL);
  bad[0] = (keel_sup_child_spec){.id = "x"};
  CHECK_EQ(keel_sup_start(&bs, NULL, &none, NULL), KEEL_EINVAL);

  /* a gen_server template: init gets each child's arguments */
  keel_sup_child_spec tmpl = {.id = "t", .gen_server = &u64_server, .arg = &seven};
  keel_sup_spec ts = kt_sup_spec(KEEL_SUP_SIMPLE_ONE_FOR_ONE, &tmpl, 1);
  sup = sup_start(&ts, NULL);
  uint64_t v = 42;
  keel_pid_t c = 0;
  CHECK_OK(keel_sup_start_child_args(sup, &v, sizeof v, &c));
  v = 0; /* the supervisor keeps its own copy */
  CHECK_EQ(call_u64(c), 42);
  kt_stop(sup);
}

KT_MAIN(KT_ENTRY(children_start_in_order_and_stop_in_reverse),
        KT_ENTRY(failing_child_start_stops_the_started_ones),
        KT_ENTRY(bad_specs_are_refused),
        KT_ENTRY(duplicate_child_id_refused_by_start_child),
        KT_ENTRY(one_for_one_restarts_only_the_crashed_child),
        KT_ENTRY(one_for_all_restarts_all_in_order),
        KT_ENTRY(rest_for_one_restarts_the_crashed_child_and_those_after_it),
        KT_ENTRY(transient_restarts_on_error_only),
        KT_ENTRY(temporary_never_restarts),
        KT_ENTRY(child_ignoring_shutdown_is_killed_after_its_timeout),
        KT_ENTRY(brutal_kill_child_is_killed_at_once),
        KT_ENTRY(killed_supervisor_takes_its_children_along),
        KT_ENTRY(nested_supervisors_stop_depth_first_in_reverse_order),
        KT_ENTRY(intensity_exceeded_at_the_top_stops_the_children_and_exits_with_shutdown),
        KT_ENTRY(intensity_exceeded_escalates_to_the_parent_supervisor),
        KT_ENTRY(restart_window_slides),
        KT_ENTRY(restart_events_reach_subscribers),
        KT_ENTRY(every_subscriber_hears_every_event_and_unsubscribe_means_no_later_call),
        KT_ENTRY(auto_shutdown_any_significant),
        KT_ENTRY(auto_shutdown_all_significant),
        KT_ENTRY(simple_one_for_one_keeps_each_childs_arguments_across_restarts),
        KT_ENTRY(dynamic_children_start_terminate_restart_delete),
        KT_ENTRY(dynamic_api_on_a_dead_supervisor_is_enoproc),
        KT_ENTRY(supervisors_are_listed_while_alive_and_report_their_settings_and_children),
        KT_ENTRY(gen_server_and_supervisor_children_in_one_line))
