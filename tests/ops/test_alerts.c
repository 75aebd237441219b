/* test_alerts.c - the alert manager (include/keel/alerts.h).
 *
 * Most cases run the manager with interval_ms < 0 (it never samples on its
 * own) and an injected clock, and drive it with keel_alerts_sweep_now, so
 * that what fires, when it resolves and how long it lasted are decided by
 * the test, never by timing. The mailbox under test belongs to a "victim"
 * process that only sleeps: messages sent to it stay queued untouched, so
 * its depth is exactly what the test sent, until the test tells it (through
 * an atomic flag) to drain its mailbox. Alert messages come to the test
 * process itself as a subscriber; after each sweep the test checks that no
 * other message arrived (the manager sends before it answers sweep_now).
 * Log lines are read back from a file and parsed with jansson.
 * One case runs the manager on its own interval (real clock) and only bounds
 * the wait for the alert generously.
 */
#include <jansson.h>
#include <stdatomic.h>
#include <sys/resource.h>
#include <unistd.h>

#include "keel/alerts.h"
#include "keel/health.h"
#include "keel/sysinfo.h"
#include "otp/kt_otp.h"

enum { T_FLOOD = 9001, T_DRAINED = 9002 };

/* ---- the injected clock ------------------------------------------------------------- */

static _Atomic int64_t fake_now = 1000000;

static int64_t fake_clock(void *ud) {
  (void)ud;
  return atomic_load(&fake_now);
}

static void advance(int64_t ms) {
  atomic_fetch_add(&fake_now, ms);
}

static keel_alerts_opts test_opts(void) {
  keel_alerts_opts o;
  keel_alerts_opts_init(&o);
  o.interval_ms = -1; /* only keel_alerts_sweep_now samples */
  o.clock_ms = fake_clock;
  o.health_interval_ms = -1; /* no health probes: the case about them turns them on */
  return o;
}

static keel_alerts_stats stats(void) {
  keel_alerts_stats s;
  keel_alerts_stats_get(&s);
  return s;
}

static void sweeps(int n) {
  for (int i = 0; i < n; i++)
    CHECK_OK(keel_alerts_sweep_now());
}

/* ---- the victim: a process whose mailbox the test fills and drains -------------------- */

typedef struct victim {
  keel_pid_t pid;
  keel_pid_t boss;
  atomic_int drain;
} victim;

static void victim_main(void *arg) {
  victim *v = arg;
  for (;;) {
    if (atomic_exchange(&v->drain, 0)) {
      keel_msg_t *m = NULL;
      uint64_t n = 0;
      while (keel_receive(&m, KEEL_NOWAIT) == 0) {
        keel_msg_free(m);
        n++;
      }
      kt_send_u64(v->boss, T_DRAINED, n);
    }
    keel_sleep(1);
  }
}

static void victim_start(victim *v, const char *name) {
  v->boss = keel_self();
  atomic_store(&v->drain, 0);
  keel_spawn_opts so;
  keel_spawn_opts_init(&so);
  so.name = name;
  CHECK_OK(keel_spawn(victim_main, v, &so, &v->pid));
}

static uint64_t depth(keel_pid_t pid) {
  keel_proc_info info;
  CHECK_OK(keel_rt_process_info(pid, &info));
  return info.mailbox_len;
}

static void flood(victim *v, int n) {
  uint64_t before = depth(v->pid);
  for (int i = 0; i < n; i++)
    kt_send_tag(v->pid, T_FLOOD);
  CHECK_EQ(depth(v->pid), before + (uint64_t)n);
}

static uint64_t drain(victim *v) {
  atomic_store(&v->drain, 1);
  uint64_t n = kt_recv_tag_u64(T_DRAINED, KT_LONG);
  CHECK_EQ(depth(v->pid), 0);
  return n;
}

static void victim_kill(victim *v) {
  keel_ref_t ref;
  CHECK_OK(keel_monitor(v->pid, &ref));
  CHECK_OK(keel_exit_signal(v->pid, KEEL_REASON_KILL, NULL));
  kt_wait_down(ref, v->pid, NULL, 0);
}

/* ---- receiving alerts ------------------------------------------------------------------ */

static bool match_alert(const keel_msg_t *m, void *arg) {
  (void)arg;
  return keel_alert_msg(m, NULL) > 0;
}

/* The next alert message (must be there already); returns its kind. */
static int next_alert(keel_alert *out) {
  keel_msg_t *m = NULL;
  int rc = keel_receive_match(match_alert, NULL, &m, KEEL_NOWAIT);
  if (rc) {
    fprintf(stderr, "no alert message: %s\n", keel_err_name(rc));
    abort();
  }
  int kind = keel_alert_msg(m, out);
  keel_msg_free(m);
  return kind;
}

static void no_alert_message(void) {
  keel_msg_t *m = NULL;
  CHECK_EQ(keel_receive_match(match_alert, NULL, &m, KEEL_NOWAIT), KEEL_ETIMEDOUT);
}

static int64_t wall_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- log files --------------------------------------------------------------------------- */

static char g_path[256];

static void log_start(const char *tag) {
  snprintf(g_path, sizeof g_path, "/tmp/keel_test_alerts_%d_%s.log", (int)getpid(), tag);
  unlink(g_path);
  keel_log_opts o;
  keel_log_opts_init(&o);
  o.level = KEEL_LOG_INFO;
  o.format = KEEL_LOG_JSON;
  o.service = "alerts-test";
  o.file = g_path;
  CHECK_OK(keel_log_init(&o));
}

/* The lines of the current log file whose "event" is `event`, parsed (call
 * after keel_log_shutdown). The caller json_decref's the array. */
static json_t *log_events(const char *event) {
  FILE *f = fopen(g_path, "r");
  CHECK(f != NULL);
  json_t *out = json_array();
  char line[8192];
  while (fgets(line, sizeof line, f)) {
    json_error_t err;
    json_t *j = json_loads(line, 0, &err);
    if (!j) {
      fprintf(stderr, "bad log line: %s (%s)\n", line, err.text);
      abort();
    }
    const char *ev = json_string_value(json_object_get(j, "event"));
    if (ev && strcmp(ev, event) == 0)
      json_array_append_new(out, j);
    else
      json_decref(j);
  }
  fclose(f);
  return out;
}

static const char *jstr(json_t *o, const char *key) {
  const char *s = json_string_value(json_object_get(o, key));
  CHECK(s != NULL);
  return s;
}

static double jnum(json_t *o, const char *key) {
  json_t *v = json_object_get(o, key);
  CHECK(json_is_number(v));
  return json_number_value(v);
}

/* Cases that do not check the log keep the alert lines off stderr (they go
 * there, synchronously, while keel_log_init has not run). */
static void quiet_log(void) {
  CHECK_OK(keel_log_set_level(KEEL_LOG_OFF));
}

/* ---- cases ------------------------------------------------------------------------------- */

KT_CASE(flooded_mailbox_fires_once_and_resolves_after_drain) {
  log_start("flood");
  keel_alerts_opts o = test_opts(); /* defaults: k 2, 30 samples, 10 s cooldown, floor 10 */
  CHECK_OK(keel_alerts_start(&o));
  CHECK_OK(keel_alerts_subscribe(keel_self()));
  victim v;
  victim_start(&v, "victim");
  char vpid[24];
  keel_pid_format(v.pid, vpid, sizeof vpid);

  sweeps(30); /* the baseline: depth 0, thirty times */
  CHECK_EQ(stats().fired, 0);
  no_alert_message();

  flood(&v, 500);
  int64_t t_fire = atomic_load(&fake_now);
  int64_t wall_before = wall_now_ms();
  sweeps(1);
  keel_alert a;
  CHECK_EQ(next_alert(&a), KEEL_ALERTS_EV_TRIGGERED);
  no_alert_message();
  CHECK_EQ(stats().fired, 1);
  CHECK(strncmp(a.id, "alert-", 6) == 0);
  CHECK_EQ(a.type, KEEL_ALERT_QUEUE_SIZE);
  CHECK_EQ(a.pid, v.pid);
  CHECK_STR(a.name, "victim");
  CHECK(a.value == 500);
  CHECK(a.mean == 0 && a.stddev == 0 && a.threshold == 0); /* mean + 2 * 0 */
  char want[200];
  snprintf(want, sizeof want, "Queue size exceeded threshold: 500 > 0.0 (process: victim %s)",
           vpid);
  CHECK_STR(a.message, want);
  CHECK(a.time_ms >= wall_before - 1000 && a.time_ms <= wall_now_ms() + 1000);
  CHECK_EQ(a.resolved_ms, 0);

  /* active: listed in C and in JSON */
  keel_alert act[4];
  CHECK_EQ(keel_alerts_active(act, 4), 1);
  CHECK_STR(act[0].id, a.id);
  char *js = keel_alerts_active_json();
  CHECK(js != NULL);
  json_error_t jerr;
  json_t *arr = json_loads(js, 0, &jerr);
  CHECK(json_is_array(arr) && json_array_size(arr) == 1);
  json_t *ja = json_array_get(arr, 0);
  CHECK_STR(jstr(ja, "id"), a.id);
  CHECK_STR(jstr(ja, "type"), "high_queue_size");
  CHECK_STR(jstr(json_object_get(ja, "process"), "pid"), vpid);
  CHECK_STR(jstr(json_object_get(ja, "process"), "name"), "victim");
  CHECK(jnum(ja, "value") == 500 && jnum(ja, "threshold") == 0);
  CHECK_STR(jstr(ja, "message"), want);
  CHECK_EQ(strlen(jstr(ja, "time")), 24);
  json_decref(arr);
  free(js);
  char *hs = keel_alerts_health_section(NULL);
  CHECK(hs != NULL && strstr(hs, a.id) != NULL);
  free(hs);

  /* still flooded: still one alert, no new message; it shows the latest value */
  flood(&v, 100);
  advance(2000);
  sweeps(3);
  no_alert_message();
  CHECK_EQ(stats().fired, 1);
  CHECK_EQ(keel_alerts_active(act, 4), 1);
  CHECK(act[0].value == 600);

  /* drained: resolved, with its duration on the injected clock */
  CHECK_EQ(drain(&v), 600);
  advance(3000);
  sweeps(1);
  keel_alert r;
  CHECK_EQ(next_alert(&r), KEEL_ALERTS_EV_RESOLVED);
  no_alert_message();
  CHECK_STR(r.id, a.id);
  CHECK_EQ(r.pid, v.pid);
  CHECK(r.value == 0);
  CHECK_EQ(r.duration_ms, atomic_load(&fake_now) - t_fire);
  CHECK_EQ(r.duration_ms, 5000);
  CHECK(r.resolved_ms >= r.time_ms);
  CHECK(strstr(r.message, "back under") != NULL);
  CHECK_EQ(keel_alerts_active(NULL, 0), 0);
  js = keel_alerts_active_json();
  CHECK_STR(js, "[]");
  free(js);

  /* flooded again within the cooldown (10 s after the first fired): nothing */
  advance(1000); /* t_fire + 6 s */
  flood(&v, 500);
  sweeps(1);
  no_alert_message();
  CHECK_EQ(stats().fired, 1);
  CHECK(stats().suppressed >= 1);
  CHECK_EQ(keel_alerts_active(NULL, 0), 0);

  /* cooldown over: the same flood fires a new alert with a new id */
  advance(4000); /* t_fire + 10 s */
  sweeps(1);
  keel_alert b;
  CHECK_EQ(next_alert(&b), KEEL_ALERTS_EV_TRIGGERED);
  CHECK(strcmp(b.id, a.id) != 0);
  CHECK_EQ(b.pid, v.pid);
  CHECK_EQ(stats().fired, 2);
  CHECK_EQ(drain(&v), 500);
  sweeps(1);
  CHECK_EQ(next_alert(&r), KEEL_ALERTS_EV_RESOLVED);
  CHECK_STR(r.id, b.id);
  no_alert_message();

  victim_kill(&v);
  CHECK_OK(keel_alerts_stop());
  CHECK(!keel_alerts_running());

  /* the log has the same events */
  CHECK_OK(keel_log_shutdown());
  json_t *trig = log_events("alert_triggered");
  CHECK_EQ(json_array_size(trig), 2);
  json_t *l0 = json_array_get(trig, 0);
  CHECK_STR(jstr(l0, "level"), "warn");
  CHECK_STR(jstr(l0, "msg"), "alert_triggered");
  json_t *la = json_object_get(l0, "alert");
  CHECK_STR(jstr(la, "id"), a.id);
  CHECK_STR(jstr(la, "type"), "high_queue_size");
  CHECK_STR(jstr(json_object_get(la, "process"), "pid"), vpid);
  CHECK_STR(jstr(json_object_get(la, "process"), "name"), "victim");
  CHECK(jnum(la, "threshold") == 0 && jnum(la, "value") == 500);
  CHECK(jnum(la, "mean") == 0 && jnum(la, "stddev") == 0);
  CHECK_STR(jstr(la, "message"), want);
  CHECK_EQ(strlen(jstr(la, "time")), 24);
  CHECK_STR(jstr(json_object_get(json_array_get(trig, 1), "alert"), "id"), b.id);
  char fired_at[32];
  snprintf(fired_at, sizeof fired_at, "%s", jstr(la, "time"));
  json_decref(trig);

  json_t *res = log_events("alert_resolved");
  CHECK_EQ(json_array_size(res), 2);
  json_t *r0 = json_array_get(res, 0);
  CHECK_STR(jstr(r0, "level"), "info");
  json_t *ra = json_object_get(r0, "alert");
  CHECK_STR(jstr(ra, "id"), a.id);
  CHECK(jnum(ra, "duration_ms") == 5000);
  CHECK(jnum(ra, "value") == 0);
  CHECK_STR(jstr(ra, "triggered_at"), fired_at);
  CHECK_EQ(strlen(jstr(ra, "time")), 24);
  json_decref(res);
  unlink(g_path);
}

KT_CASE(nothing_fires_before_min_samples) {
  quiet_log();
  keel_alerts_opts o = test_opts();
  o.min_samples = 20;
  CHECK_OK(keel_alerts_start(&o));
  CHECK_OK(keel_alerts_subscribe(keel_self()));
  victim v;
  victim_start(&v, "early");
  sweeps(5);
  flood(&v, 1000); /* a flood while the baseline is still being learned */
  sweeps(14);      /* 19 samples */
  no_alert_message();
  CHECK_EQ(stats().fired, 0);
  CHECK_EQ(keel_alerts_active(NULL, 0), 0);
  /* the warm-up learned every sample, the flood included: 1000 is no outlier
   * of what it learned (15 samples of 1000 out of 20) */
  sweeps(10);
  no_alert_message();
  CHECK_EQ(stats().fired, 0);
  victim_kill(&v);
  CHECK_OK(keel_alerts_stop());
}

KT_CASE(floor_keeps_shallow_mailboxes_quiet) {
  quiet_log();
  keel_alerts_opts o = test_opts();
  o.min_samples = 5; /* floor: the default 10 */
  CHECK_OK(keel_alerts_start(&o));
  CHECK_OK(keel_alerts_subscribe(keel_self()));
  victim v;
  victim_start(&v, "shallow");
  sweeps(50);
  flood(&v, 9); /* far above mean + k * 0, but under the floor: learned */
  sweeps(1);
  no_alert_message();
  CHECK_EQ(stats().fired, 0);
  flood(&v, 1); /* 10: at the floor, and above mean + k * stddev */
  sweeps(1);
  keel_alert a;
  CHECK_EQ(next_alert(&a), KEEL_ALERTS_EV_TRIGGERED);
  CHECK_EQ(a.pid, v.pid);
  CHECK(a.value == 10);
  CHECK(a.threshold > 0 && a.threshold < 10); /* it learned the depth-9 sample */
  drain(&v);
  sweeps(1);
  CHECK_EQ(next_alert(&a), KEEL_ALERTS_EV_RESOLVED);
  CHECK(strstr(a.message, "back under the floor") != NULL ||
        strstr(a.message, "back under threshold") != NULL);
  CHECK_OK(keel_alerts_stop());

  /* floor 1 (none): a mailbox that was always empty alerts on depth 1. Even
   * the test process may alert then, when an alert message sits in its
   * mailbox at the moment it is sampled: what the floor is there for. */
  o.floor = 1;
  CHECK_OK(keel_alerts_start(&o));
  CHECK_OK(keel_alerts_subscribe(keel_self()));
  sweeps(5);
  flood(&v, 1);
  sweeps(1);
  bool victim_alerted = false;
  keel_msg_t *m = NULL;
  while (keel_receive_match(match_alert, NULL, &m, KEEL_NOWAIT) == 0) {
    if (keel_alert_msg(m, &a) == KEEL_ALERTS_EV_TRIGGERED && a.pid == v.pid) {
      victim_alerted = true;
      CHECK(a.value == 1);
    }
    keel_msg_free(m);
  }
  CHECK(victim_alerted);
  victim_kill(&v);
  CHECK_OK(keel_alerts_stop());
}

KT_CASE(an_anomaly_does_not_become_the_baseline) {
  quiet_log();
  keel_alerts_opts o = test_opts();
  o.min_samples = 10;
  o.window = 20; /* a short memory: learning the flood would absorb it fast */
  CHECK_OK(keel_alerts_start(&o));
  CHECK_OK(keel_alerts_subscribe(keel_self()));
  victim v;
  victim_start(&v, "steady");
  sweeps(10);
  flood(&v, 300);
  sweeps(1);
  keel_alert a;
  CHECK_EQ(next_alert(&a), KEEL_ALERTS_EV_TRIGGERED);
  sweeps(100); /* five windows long: still the same active alert */
  no_alert_message();
  CHECK_EQ(keel_alerts_active(NULL, 0), 1);
  CHECK_EQ(stats().fired, 1);
  CHECK_EQ(stats().resolved, 0);
  /* a process that exits while alerting resolves its alert */
  victim_kill(&v);
  sweeps(1);
  keel_alert r;
  CHECK_EQ(next_alert(&r), KEEL_ALERTS_EV_RESOLVED);
  CHECK_STR(r.id, a.id);
  CHECK(r.value == 0);
  CHECK(strncmp(r.message, "Process exited", 14) == 0);
  CHECK_EQ(keel_alerts_active(NULL, 0), 0);
  CHECK_OK(keel_alerts_stop());
}

KT_CASE(restart_rate_alert_after_provoked_restarts) {
  quiet_log();
  kt_quiet();
  kt_log_reset();
  keel_alerts_opts o = test_opts();
  o.restarts_per_min = 3;
  CHECK_OK(keel_alerts_start(&o));
  CHECK_OK(keel_alerts_subscribe(keel_self()));

  kt_worker_cfg w = {.id = "w"};
  keel_sup_child_spec ch[] = {kt_worker_spec(&w)};
  keel_sup_spec spec = kt_sup_spec(KEEL_SUP_ONE_FOR_ONE, ch, 1);
  spec.intensity = 100;
  spec.period_ms = 60000;
  keel_sup_opts so = {"crashy_sup", false};
  keel_pid_t sup = 0;
  CHECK_OK(keel_sup_start(&spec, &so, &sup, NULL));

  keel_pid_t child = kt_child_pid(sup, "w");
  for (int i = 0; i < 2; i++) {
    CHECK_OK(keel_gs_cast(child, kt_msg_u64(KW_CRASH, (uint64_t)i)));
    child = kt_wait_new_pid(sup, "w", child);
  }
  sweeps(1); /* two restarts: under the limit */
  no_alert_message();
  CHECK_EQ(stats().supervisors, 1);

  advance(10000);
  CHECK_OK(keel_gs_cast(child, kt_msg_u64(KW_CRASH, 2)));
  child = kt_wait_new_pid(sup, "w", child); /* the restart event reached the manager first */
  sweeps(1);
  keel_alert a;
  CHECK_EQ(next_alert(&a), KEEL_ALERTS_EV_TRIGGERED);
  no_alert_message();
  CHECK_EQ(a.type, KEEL_ALERT_RESTART_RATE);
  CHECK_EQ(a.pid, sup);
  CHECK_STR(a.name, "crashy_sup");
  CHECK(a.value == 3 && a.threshold == 3);
  CHECK(strstr(a.message, "Restart rate exceeded threshold: 3 restarts") == a.message);

  /* the first two restarts leave the minute: 1 left, resolved */
  advance(51000);
  sweeps(1);
  keel_alert r;
  CHECK_EQ(next_alert(&r), KEEL_ALERTS_EV_RESOLVED);
  CHECK_STR(r.id, a.id);
  CHECK(r.value == 1);
  CHECK_EQ(r.duration_ms, 51000);

  /* and after another minute the supervisor is forgotten */
  advance(60000);
  sweeps(1);
  CHECK_EQ(stats().supervisors, 0);
  no_alert_message();

  kt_stop(sup);
  CHECK_OK(keel_alerts_stop());
}

KT_CASE(error_log_rate_alert_reaches_subscriber_and_log) {
  log_start("errors");
  keel_alerts_opts o = test_opts();
  o.errors_per_min = 5;
  CHECK_OK(keel_alerts_start(&o));
  CHECK_OK(keel_alerts_subscribe(keel_self()));
  keel_log_error(NULL, "before the first sweep"); /* counts: logged after the start */
  sweeps(1);
  no_alert_message();
  for (int i = 0; i < 3; i++)
    keel_log_error(NULL, "something failed", KEEL_INT("i", i));
  keel_log_warn(NULL, "warnings do not count");
  sweeps(1);
  no_alert_message(); /* 4 */
  advance(1000);
  keel_log_fatal(NULL, "fatal counts too");
  sweeps(1); /* 5 */
  keel_alert a;
  CHECK_EQ(next_alert(&a), KEEL_ALERTS_EV_TRIGGERED);
  no_alert_message();
  CHECK_EQ(a.type, KEEL_ALERT_ERROR_RATE);
  CHECK_EQ(a.pid, 0);
  CHECK(a.value == 5 && a.threshold == 5);
  CHECK_STR(a.message, "Error log rate exceeded threshold: 5 error lines in the last minute >= 5; "
                       "last: fatal counts too");

  char *js = keel_alerts_active_json();
  json_error_t jerr;
  json_t *arr = json_loads(js, 0, &jerr);
  CHECK(json_array_size(arr) == 1);
  CHECK(json_is_null(json_object_get(json_array_get(arr, 0), "process")));
  CHECK_STR(jstr(json_array_get(arr, 0), "type"), "high_error_rate");
  json_decref(arr);
  free(js);

  advance(59000); /* the four of the first second have left the minute, the fatal has not */
  sweeps(1);
  keel_alert r;
  CHECK_EQ(next_alert(&r), KEEL_ALERTS_EV_RESOLVED);
  CHECK_STR(r.id, a.id);
  CHECK(r.value == 1);
  CHECK_EQ(r.duration_ms, 59000);
  CHECK_OK(keel_alerts_stop());

  CHECK_OK(keel_log_shutdown());
  json_t *trig = log_events("alert_triggered");
  CHECK_EQ(json_array_size(trig), 1);
  json_t *la = json_object_get(json_array_get(trig, 0), "alert");
  CHECK_STR(jstr(la, "id"), a.id);
  CHECK_STR(jstr(la, "type"), "high_error_rate");
  CHECK(json_is_null(json_object_get(la, "process")));
  CHECK(jnum(la, "threshold") == 5 && jnum(la, "value") == 5);
  CHECK_STR(jstr(la, "message"), a.message);
  json_decref(trig);
  unlink(g_path);
}

/* The reference's error alert: 5 errors in 5 minutes, a 15-minute cooldown,
 * the newest error's message and request id, and after the cooldown how
 * many came meanwhile. */
KT_CASE(error_alert_says_what_failed_last_and_how_many_since) {
  log_start("errors5");
  keel_alerts_opts o = test_opts();
  o.errors_per_min = 5;
  o.error_window_ms = 300000;
  o.error_cooldown_ms = 900000;
  CHECK_OK(keel_alerts_start(&o));
  CHECK_OK(keel_alerts_subscribe(keel_self()));
  sweeps(1);
  for (int i = 0; i < 4; i++) {
    keel_log_error(NULL, "payment declined", KEEL_INT("i", i));
    advance(60000); /* one a minute: all still inside the 5-minute window */
    sweeps(1);
  }
  no_alert_message();
  CHECK_OK(keel_log_context_set(KEEL_STR("requestId", "req-42")));
  keel_log_error(NULL, "db timeout");
  CHECK_OK(keel_log_context_clear());
  char msg[64], rid[40];
  CHECK(keel_log_last_error(msg, sizeof msg, rid, sizeof rid) > 0);
  CHECK_STR(msg, "db timeout");
  CHECK_STR(rid, "req-42");
  sweeps(1);
  keel_alert a;
  CHECK_EQ(next_alert(&a), KEEL_ALERTS_EV_TRIGGERED);
  CHECK_STR(a.message, "Error log rate exceeded threshold: 5 error lines in the last 5 min >= 5; "
                       "last: db timeout (requestId req-42)");
  /* resolved once the window empties; more errors within the cooldown are
   * counted, not alerted */
  advance(300000);
  sweeps(1);
  CHECK_EQ(next_alert(NULL), KEEL_ALERTS_EV_RESOLVED);
  for (int i = 0; i < 6; i++)
    keel_log_error(NULL, "payment declined again", KEEL_STR("requestId", "req-7"));
  sweeps(1);
  no_alert_message(); /* cooldown: 300 s of 900 s */
  advance(600000);    /* past the cooldown, but those six have left the window */
  sweeps(1);
  no_alert_message();
  for (int i = 0; i < 5; i++)
    keel_log_error(NULL, "card service down", KEEL_STR("requestId", "req-9"));
  sweeps(1);
  CHECK_EQ(next_alert(&a), KEEL_ALERTS_EV_TRIGGERED);
  CHECK_STR(a.message, "Error log rate exceeded threshold: 5 error lines in the last 5 min >= 5; "
                       "last: card service down (requestId req-9); 11 since the last alert");
  CHECK_OK(keel_alerts_stop());
  CHECK_OK(keel_log_shutdown());
  unlink(g_path);
}

KT_CASE(descriptors_near_the_limit_fire_high_fd_usage_and_resolve) {
  quiet_log();
  keel_alerts_opts o = test_opts();
  o.fd_percent = 90;
  CHECK_OK(keel_alerts_start(&o));
  CHECK_OK(keel_alerts_subscribe(keel_self()));
  /* a soft limit 40 above what is open now; the hard limit stays */
  struct rlimit old, lim;
  CHECK_OK(getrlimit(RLIMIT_NOFILE, &old));
  keel_sys_process sp;
  CHECK_OK(keel_sys_process_get(&sp));
  lim = old;
  lim.rlim_cur = (rlim_t)sp.open_fds + 40;
  CHECK_OK(setrlimit(RLIMIT_NOFILE, &lim));
  sweeps(1);
  no_alert_message(); /* 40 free of open + 40: under 90% */
  int fds[40], n = 0;
  double need = 0.9 * (double)lim.rlim_cur;
  while (n < 40 && keel_sys_process_get(&sp) == 0 && (double)sp.open_fds < need + 1)
    CHECK((fds[n++] = dup(2)) >= 0);
  sweeps(1);
  keel_alert a;
  CHECK_EQ(next_alert(&a), KEEL_ALERTS_EV_TRIGGERED);
  CHECK_EQ(a.type, KEEL_ALERT_FD_USAGE);
  CHECK_EQ(a.pid, 0);
  CHECK(a.threshold == need);
  CHECK(a.value >= need);
  CHECK(strstr(a.message, "Open file descriptors exceeded threshold") != NULL);
  sweeps(1);
  no_alert_message(); /* still over: one alert, updated */
  while (n > 0)
    close(fds[--n]);
  sweeps(1);
  keel_alert r;
  CHECK_EQ(next_alert(&r), KEEL_ALERTS_EV_RESOLVED);
  CHECK_STR(r.id, a.id);
  CHECK(r.value < need);
  CHECK_OK(setrlimit(RLIMIT_NOFILE, &old));
  CHECK_OK(keel_alerts_stop());
  o.fd_percent = 101;
  CHECK_EQ(keel_alerts_start(&o), KEEL_EINVAL);
}

static void subscriber_main(void *arg) {
  keel_pid_t boss = (keel_pid_t)(uintptr_t)arg;
  CHECK_OK(keel_alerts_subscribe(keel_self()));
  kt_send_u64(boss, T_DRAINED, 1);
  /* and exits */
}

KT_CASE(a_dead_subscriber_is_dropped) {
  quiet_log();
  keel_alerts_opts o = test_opts();
  CHECK_OK(keel_alerts_start(&o));
  CHECK_OK(keel_alerts_subscribe(keel_self()));
  CHECK_OK(keel_alerts_subscribe(keel_self())); /* once only */
  CHECK_EQ(stats().subscribers, 1);
  keel_ref_t ref;
  keel_pid_t s = kt_spawn_monitor(subscriber_main, (void *)(uintptr_t)keel_self(), -1, &ref);
  CHECK_EQ(kt_recv_tag_u64(T_DRAINED, KT_LONG), 1);
  kt_wait_down(ref, s, NULL, 0);
  /* the manager hears of it through its own monitor */
  KT_WAIT_UNTIL(keel_alerts_sweep_now() == 0 && stats().subscribers == 1);
  CHECK_OK(keel_alerts_unsubscribe(keel_self()));
  CHECK_EQ(keel_alerts_unsubscribe(keel_self()), KEEL_ENOENT);
  CHECK_EQ(stats().subscribers, 0);
  /* a pid that is already dead is dropped as soon as its DOWN arrives */
  CHECK_OK(keel_alerts_subscribe(s));
  KT_WAIT_UNTIL(keel_alerts_sweep_now() == 0 && stats().subscribers == 0);
  CHECK_OK(keel_alerts_stop());
}

static void idle_main(void *arg) {
  (void)arg;
  keel_msg_t *m = NULL;
  keel_receive(&m, KEEL_INFINITY);
  keel_msg_free(m);
}

static uint64_t alive_now(void) {
  keel_rt_stats s;
  keel_rt_stats_get(&s);
  return s.procs_alive;
}

KT_CASE(table_follows_live_processes_under_churn) {
  quiet_log();
  keel_alerts_opts o = test_opts();
  CHECK_OK(keel_alerts_start(&o));
  uint64_t base = alive_now(); /* this process and the manager */
  const size_t n = (size_t)kt_scale(5000, 1000);
  keel_pid_t *pids = calloc(n, sizeof *pids);
  size_t max_slots = 0;
  uint64_t max_sweep_us = 0;
  for (int round = 0; round < 5; round++) {
    for (size_t i = 0; i < n; i++)
      pids[i] = kt_spawn_on(idle_main, NULL, -1);
    sweeps(2);
    keel_alerts_stats st = stats();
    CHECK_EQ(st.tracked, base - 1 + n); /* every live process but the manager */
    if (st.table_slots > max_slots) max_slots = st.table_slots;
    if (st.last_sweep_us > max_sweep_us) max_sweep_us = st.last_sweep_us;
    for (size_t i = 0; i < n; i++)
      kt_send_tag(pids[i], 1);
    KT_WAIT_UNTIL(alive_now() == base);
    sweeps(1);
    st = stats();
    CHECK_EQ(st.tracked, base - 1);
    CHECK(st.table_slots <= 64);
  }
  /* the table never held more than one generation of processes */
  CHECK(max_slots <= 4 * (n + base));
  fprintf(stderr, "   %zu processes: %zu slots, slowest sweep %llu us (a figure, not a verdict)\n",
          n, max_slots, (unsigned long long)max_sweep_us);
  free(pids);
  CHECK_OK(keel_alerts_stop());
}

/* The runtime stops under a running manager (the node halts without
 * keel_alerts_stop): the manager's exit hook releases everything, so the
 * next runtime starts a new one (start_stop_and_errors, run next, checks
 * that nothing is left running; ASan that nothing leaked). */
KT_CASE(runtime_stop_releases_a_running_manager) {
  quiet_log();
  keel_alerts_opts o = test_opts();
  CHECK_OK(keel_alerts_start(&o));
  CHECK_OK(keel_alerts_subscribe(keel_self()));
  victim v;
  victim_start(&v, "left");
  sweeps(30);
  flood(&v, 100);
  sweeps(1);
  CHECK_EQ(keel_alerts_active(NULL, 0), 1);
  keel_rt_halt(0);
}

static bool find_manager(const keel_proc_info *pi, void *ud) {
  if (strcmp(pi->name, "keel_alerts") == 0) {
    *(keel_pid_t *)ud = pi->pid;
    return false;
  }
  return true;
}

KT_CASE(start_stop_and_errors) {
  quiet_log();
  keel_alerts_stats st = stats();
  CHECK(!st.running);
  CHECK(!keel_alerts_running());
  CHECK_EQ(keel_alerts_active(NULL, 0), 0);
  CHECK_EQ(keel_alerts_stop(), KEEL_ESTATE);
  CHECK_EQ(keel_alerts_sweep_now(), KEEL_ESTATE);
  CHECK_EQ(keel_alerts_subscribe(keel_self()), KEEL_ESTATE);
  char *js = keel_alerts_active_json();
  CHECK_STR(js, "[]");
  free(js);
  keel_alerts_opts o = test_opts();
  o.k = -1;
  CHECK_EQ(keel_alerts_start(&o), KEEL_EINVAL);
  CHECK_OK(keel_alerts_start(NULL));
  CHECK_EQ(keel_alerts_start(NULL), KEEL_ESTATE);
  CHECK(keel_alerts_running());
  CHECK(stats().running);
  CHECK_EQ(keel_alerts_subscribe(0), KEEL_EINVAL);
  CHECK_STR(keel_alert_type_name(KEEL_ALERT_QUEUE_SIZE), "high_queue_size");
  CHECK_STR(keel_alert_type_name(KEEL_ALERT_RESTART_RATE), "high_restart_rate");
  CHECK_STR(keel_alert_type_name(KEEL_ALERT_ERROR_RATE), "high_error_rate");
  CHECK_STR(keel_alert_type_name(KEEL_ALERT_FD_USAGE), "high_fd_usage");
  keel_msg_t *m = keel_msg_new(KEEL_ALERTS_MSG_TRIGGERED, 3);
  CHECK_EQ(keel_alert_msg(m, NULL), KEEL_EINVAL); /* wrong size */
  keel_msg_free(m);
  CHECK_OK(keel_alerts_stop());
  CHECK(!keel_alerts_running());
  /* a killed manager releases everything too, and can be started again */
  CHECK_OK(keel_alerts_start(NULL));
  keel_pid_t mgr = 0;
  keel_rt_processes(find_manager, &mgr);
  CHECK(mgr != 0);
  keel_ref_t ref;
  CHECK_OK(keel_monitor(mgr, &ref));
  CHECK_OK(keel_exit_signal(mgr, KEEL_REASON_KILL, NULL));
  kt_wait_down(ref, mgr, NULL, 0);
  KT_WAIT_UNTIL(!keel_alerts_running());
  CHECK(!stats().running);
  CHECK_OK(keel_alerts_start(NULL));
  CHECK_OK(keel_alerts_stop());
}

/* The manager samples on its own: nobody calls sweep_now here. */
KT_CASE(alerts_are_computed_on_the_interval) {
  quiet_log();
  keel_alerts_opts o;
  keel_alerts_opts_init(&o);
  o.interval_ms = 5;
  o.min_samples = 5;
  CHECK_OK(keel_alerts_start(&o));
  CHECK_OK(keel_alerts_subscribe(keel_self()));
  victim v;
  victim_start(&v, "polled");
  KT_WAIT_UNTIL(stats().sweeps >= 8);
  flood(&v, 200);
  keel_msg_t *m = NULL;
  CHECK_OK(keel_receive_match(match_alert, NULL, &m, KT_LONG));
  keel_alert a;
  CHECK_EQ(keel_alert_msg(m, &a), KEEL_ALERTS_EV_TRIGGERED);
  keel_msg_free(m);
  CHECK_EQ(a.pid, v.pid);
  CHECK(a.value >= 10 && a.value <= 200); /* a sweep may catch the flood halfway */
  atomic_store(&v.drain, 1);
  CHECK_OK(keel_receive_match(match_alert, NULL, &m, KT_LONG));
  CHECK_EQ(keel_alert_msg(m, &a), KEEL_ALERTS_EV_RESOLVED);
  keel_msg_free(m);
  victim_kill(&v);
  CHECK_OK(keel_alerts_stop());
}

/* ---- health status ----------------------------------------------------------------- */

static atomic_int flaky_status;

static keel_health_status flaky_check(void *ud, keel_health_result *res) {
  (void)ud;
  int st = atomic_load(&flaky_status);
  if (st) keel_health_result_message(res, "%s", st == 1 ? "disk slow" : "disk gone");
  return (keel_health_status)st;
}

/* Receives the next alert event of type t (others are skipped). */
static int next_of(keel_alert_type t, keel_alert *a) {
  for (;;) {
    keel_msg_t *m = NULL;
    CHECK_OK(keel_receive_match(match_alert, NULL, &m, KT_LONG));
    int ev = keel_alert_msg(m, a);
    keel_msg_free(m);
    if (a->type == t) return ev;
  }
}

/* Degraded fires a warning, unhealthy resolves it and fires a critical one,
 * healthy resolves that; a probe runs only when its interval (on the test
 * clock) has passed. */
KT_CASE(health_status_changes_fire_and_resolve) {
  quiet_log();
  keel_health_reset();
  CHECK_OK(keel_health_register("flaky", flaky_check, NULL, true, 1000));
  atomic_store(&flaky_status, KEEL_HEALTH_WARNING);
  keel_alerts_opts o = test_opts();
  o.health_interval_ms = 1000;
  CHECK_OK(keel_alerts_start(&o));
  CHECK_OK(keel_alerts_subscribe(keel_self()));
  sweeps(1); /* the first sweep probes at once */
  keel_alert a;
  CHECK_EQ(next_of(KEEL_ALERT_HEALTH, &a), KEEL_ALERTS_EV_TRIGGERED);
  CHECK_EQ(a.severity, KEEL_ALERT_WARNING);
  CHECK_EQ(a.pid, 0);
  CHECK_EQ(a.value, 1);
  CHECK_STR(a.message, "Health degraded: flaky: warning (disk slow)");
  CHECK_EQ(keel_alerts_active(NULL, 0), 1);
  char *j = keel_alerts_active_json();
  CHECK(j && strstr(j, "\"type\":\"health_status\",\"severity\":\"warning\""));
  free(j);

  atomic_store(&flaky_status, KEEL_HEALTH_CRITICAL);
  sweeps(3); /* not due: the interval has not passed on the test clock */
  CHECK_EQ(keel_alerts_active(NULL, 0), 1);
  keel_alert act;
  CHECK_EQ(keel_alerts_active(&act, 1), 1);
  CHECK_EQ(act.severity, KEEL_ALERT_WARNING);
  advance(1000);
  sweeps(1);
  CHECK_EQ(next_of(KEEL_ALERT_HEALTH, &a), KEEL_ALERTS_EV_RESOLVED);
  CHECK_EQ(a.severity, KEEL_ALERT_WARNING);
  CHECK_STR(a.message, "Health unhealthy, was degraded: flaky: critical (disk gone)");
  CHECK_EQ(next_of(KEEL_ALERT_HEALTH, &a), KEEL_ALERTS_EV_TRIGGERED);
  CHECK_EQ(a.severity, KEEL_ALERT_CRITICAL);
  CHECK_EQ(a.value, 2);
  CHECK_STR(a.message, "Health unhealthy: flaky: critical (disk gone)");

  atomic_store(&flaky_status, KEEL_HEALTH_OK);
  advance(1000);
  sweeps(1);
  CHECK_EQ(next_of(KEEL_ALERT_HEALTH, &a), KEEL_ALERTS_EV_RESOLVED);
  CHECK_EQ(a.severity, KEEL_ALERT_CRITICAL);
  CHECK_STR(a.message, "Health healthy, was unhealthy");
  CHECK_EQ(a.value, 0);
  KT_WAIT_UNTIL(keel_alerts_active(NULL, 0) == 0);
  CHECK_OK(keel_alerts_stop());
  keel_health_reset();
}

KT_CASE(severities_by_type_and_name) {
  CHECK_EQ(keel_alert_type_severity(KEEL_ALERT_QUEUE_SIZE), KEEL_ALERT_WARNING);
  CHECK_EQ(keel_alert_type_severity(KEEL_ALERT_RESTART_RATE), KEEL_ALERT_WARNING);
  CHECK_EQ(keel_alert_type_severity(KEEL_ALERT_ERROR_RATE), KEEL_ALERT_CRITICAL);
  CHECK_EQ(keel_alert_type_severity(KEEL_ALERT_FD_USAGE), KEEL_ALERT_CRITICAL);
  CHECK_EQ(keel_alert_type_severity(KEEL_ALERT_TEST), KEEL_ALERT_INFO);
  CHECK_STR(keel_alert_severity_name(KEEL_ALERT_CRITICAL), "critical");
  CHECK_STR(keel_alert_severity_name(0), "unknown");
  CHECK_EQ(keel_alert_severity_parse("Warning"), KEEL_ALERT_WARNING);
  CHECK_EQ(keel_alert_severity_parse("page"), 0);
  CHECK_EQ(keel_alert_severity_parse(NULL), 0);
  CHECK_STR(keel_alert_type_name(KEEL_ALERT_HEALTH), "health_status");
}

KT_MAIN(KT_ENTRY(flooded_mailbox_fires_once_and_resolves_after_drain),
        KT_ENTRY_SCHED(nothing_fires_before_min_samples, 2),
        KT_ENTRY(floor_keeps_shallow_mailboxes_quiet),
        KT_ENTRY_SCHED(an_anomaly_does_not_become_the_baseline, 2),
        KT_ENTRY_SCHED(restart_rate_alert_after_provoked_restarts, 2),
        KT_ENTRY(error_log_rate_alert_reaches_subscriber_and_log),
        KT_ENTRY(error_alert_says_what_failed_last_and_how_many_since),
        KT_ENTRY(descriptors_near_the_limit_fire_high_fd_usage_and_resolve),
        KT_ENTRY_SCHED(a_dead_subscriber_is_dropped, 2),
        KT_ENTRY_SCHED(table_follows_live_processes_under_churn, 2),
        KT_ENTRY_SCHED(runtime_stop_releases_a_running_manager, 2),
        KT_ENTRY_SCHED(start_stop_and_errors, 2),
        KT_ENTRY_SCHED(alerts_are_computed_on_the_interval, 2),
        KT_ENTRY_SCHED(health_status_changes_fire_and_resolve, 2),
        KT_ENTRY(severities_by_type_and_name))
