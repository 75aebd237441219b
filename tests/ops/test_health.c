/* test_health.c - health checks and probes (include/keel/health.h).
 *
 * Every probe is called directly, as the HTTP handler will: the status code
 * is checked and the body parsed with jansson, down to the exact set of
 * members. Checks are real functions run by the real probe machinery: slow
 * ones sleep past their timeout, crashing ones exit with an error, stuck
 * ones spin without yielding. Concurrency is proved without timing: three
 * checks each wait for a "go" that a coordinator sends only once all three
 * told it they are running, so run one at a time they would all time out.
 * Timing never decides a verdict; the bounds below are generous liveness
 * limits only.
 *
 * The health registry is node-global and survives across the cases of this
 * executable (each case is a fresh runtime): every case starts with
 * keel_health_reset().
 */
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#include "keel_test.h"
#include "keel/health.h"

/* ---- helpers ------------------------------------------------------------------- */

static void quiet(const keel_report *r, void *ud) {
  (void)r;
  (void)ud;
}

static void begin(void) {
  keel_rt_set_report_handler(quiet, NULL);
  keel_health_reset();
}

static uint64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Runs a probe, checks its HTTP status, returns the parsed body. */
static json_t *probe(int (*fn)(keel_health_response *), int want_http) {
  keel_health_response r;
  CHECK_OK(fn(&r));
  CHECK(r.body != NULL);
  if (r.http_status != want_http) {
    fprintf(stderr, "http %d, want %d: %s\n", r.http_status, want_http, r.body);
    abort();
  }
  json_error_t err;
  json_t *j = json_loads(r.body, 0, &err);
  if (!j) fprintf(stderr, "bad JSON (%s): %s\n", err.text, r.body);
  CHECK(json_is_object(j));
  keel_health_response_free(&r);
  CHECK(r.body == NULL);
  return j;
}

/* The object has exactly these members (NULL-terminated list). */
static void check_keys(json_t *o, const char *const *keys) {
  CHECK(json_is_object(o));
  size_t n = 0;
  for (; keys[n]; n++)
    if (!json_object_get(o, keys[n])) {
      fprintf(stderr, "missing member %s in %s\n", keys[n], json_dumps(o, 0));
      abort();
    }
  if (json_object_size(o) != n) {
    fprintf(stderr, "unexpected members in %s\n", json_dumps(o, 0));
    abort();
  }
}
#define KEYS(o, ...) check_keys((o), (const char *const[]){__VA_ARGS__, NULL})

static const char *str(json_t *o, const char *k) {
  json_t *v = json_object_get(o, k);
  CHECK(json_is_string(v));
  return json_string_value(v);
}

static json_t *check_of(json_t *body, const char *name) {
  json_t *c = json_object_get(json_object_get(body, "checks"), name);
  if (!c) fprintf(stderr, "no check %s\n", name);
  CHECK(json_is_object(c));
  return c;
}

/* An ISO 8601 UTC timestamp with milliseconds: 2024-01-25T12:00:30.000Z */
static void check_timestamp(json_t *body) {
  const char *t = str(body, "timestamp");
  CHECK_EQ(strlen(t), 24);
  CHECK(t[4] == '-' && t[10] == 'T' && t[19] == '.' && t[23] == 'Z');
}

/* A check returning what its ud says, counting its runs. */
typedef struct fixed {
  keel_health_status status;
  const char *message;
  const char *details;
  atomic_int runs;
} fixed;

static keel_health_status fixed_check(void *ud, keel_health_result *res) {
  fixed *f = ud;
  atomic_fetch_add(&f->runs, 1);
  if (f->message) CHECK_OK(keel_health_result_message(res, "%s", f->message));
  if (f->details) res->details = strdup(f->details);
  return f->status;
}

/* ---- startup ---------------------------------------------------------------------- */

KT_CASE(startup_answers_starting_until_started) {
  begin();
  json_t *j = probe(keel_health_startup, 503);
  KEYS(j, "status", "timestamp");
  CHECK_STR(str(j, "status"), "starting");
  check_timestamp(j);
  json_decref(j);

  keel_health_set_started(true);
  j = probe(keel_health_startup, 200);
  KEYS(j, "status", "timestamp");
  CHECK_STR(str(j, "status"), "started");
  json_decref(j);

  keel_health_set_started(false);
  j = probe(keel_health_startup, 503);
  json_decref(j);
}

/* ---- detailed: shape and overall status -------------------------------------------- */

KT_CASE(detailed_reports_every_check_and_the_node) {
  begin();
  fixed db = {KEEL_HEALTH_OK, NULL, NULL, 0};
  fixed cache = {KEEL_HEALTH_OK, "hit ratio fine", "{\"hits\":7,\"status\":\"mine\"}", 0};
  CHECK_OK(keel_health_register("database", fixed_check, &db, true, 2000));
  CHECK_OK(keel_health_register("cache", fixed_check, &cache, false, 2000));
  keel_health_set_service("orders", "1.4.2");
  keel_health_set_started(true);

  json_t *j = probe(keel_health_detailed, 200);
  KEYS(j, "status", "timestamp", "uptime", "service", "version", "started", "draining", "processes",
       "restarts", "memory", "checks");
  CHECK_STR(str(j, "status"), "healthy");
  check_timestamp(j);
  CHECK_STR(str(j, "service"), "orders");
  CHECK_STR(str(j, "version"), "1.4.2");
  CHECK(json_is_true(json_object_get(j, "started")));
  CHECK(json_is_false(json_object_get(j, "draining")));
  CHECK(json_is_number(json_object_get(j, "uptime")));
  CHECK(json_number_value(json_object_get(j, "uptime")) >= 0);
  CHECK(json_integer_value(json_object_get(j, "processes")) >= 1); /* this case, at least */
  CHECK_EQ(json_integer_value(json_object_get(j, "restarts")), 0);
  json_t *mem = json_object_get(j, "memory");
  KEYS(mem, "rssMB", "heapUsedMB", "limitMB");
  CHECK(json_integer_value(json_object_get(mem, "rssMB")) > 0);
  CHECK(json_integer_value(json_object_get(mem, "limitMB")) > 0);

  /* checks in registration order, each with the same members */
  json_t *checks = json_object_get(j, "checks");
  CHECK_EQ(json_object_size(checks), 2);
  CHECK_STR(json_object_iter_key(json_object_iter(checks)), "database");
  json_t *c = check_of(j, "database");
  KEYS(c, "status", "required", "duration_ms", "message");
  CHECK_STR(str(c, "status"), "ok");
  CHECK(json_is_true(json_object_get(c, "required")));
  CHECK(json_is_real(json_object_get(c, "duration_ms")));
  CHECK(json_real_value(json_object_get(c, "duration_ms")) >= 0);
  CHECK_STR(str(c, "message"), "");
  c = check_of(j, "cache");
  KEYS(c, "status", "required", "duration_ms", "message", "hits");
  CHECK_STR(str(c, "status"), "ok"); /* the details may not overwrite keel's members */
  CHECK(json_is_false(json_object_get(c, "required")));
  CHECK_STR(str(c, "message"), "hit ratio fine");
  CHECK_EQ(json_integer_value(json_object_get(c, "hits")), 7);
  json_decref(j);
  CHECK_EQ(atomic_load(&db.runs), 1);
  CHECK_EQ(atomic_load(&cache.runs), 1);

  /* service cleared: null, not absent */
  keel_health_set_service(NULL, NULL);
  j = probe(keel_health_detailed, 200);
  CHECK(json_is_null(json_object_get(j, "service")));
  CHECK(json_is_null(json_object_get(j, "version")));
  json_decref(j);
  keel_health_reset();
}

KT_CASE(required_critical_is_unhealthy_optional_is_degraded) {
  begin();
  fixed req = {KEEL_HEALTH_OK, NULL, NULL, 0}, opt = {KEEL_HEALTH_OK, NULL, NULL, 0};
  CHECK_OK(keel_health_register("req", fixed_check, &req, true, 2000));
  CHECK_OK(keel_health_register("opt", fixed_check, &opt, false, 2000));
  struct {
    keel_health_status r, o;
    int http;
    const char *word;
  } table[] = {
      {KEEL_HEALTH_OK, KEEL_HEALTH_OK, 200, "healthy"},
      {KEEL_HEALTH_OK, KEEL_HEALTH_WARNING, 200, "degraded"},
      {KEEL_HEALTH_OK, KEEL_HEALTH_CRITICAL, 200, "degraded"},
      {KEEL_HEALTH_WARNING, KEEL_HEALTH_OK, 200, "degraded"},
      {KEEL_HEALTH_CRITICAL, KEEL_HEALTH_OK, 503, "unhealthy"},
      {KEEL_HEALTH_CRITICAL, KEEL_HEALTH_CRITICAL, 503, "unhealthy"},
  };
  for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
    req.status = table[i].r;
    opt.status = table[i].o;
    json_t *j = probe(keel_health_detailed, table[i].http);
    CHECK_STR(str(j, "status"), table[i].word);
    CHECK_STR(str(check_of(j, "req"), "status"), keel_health_status_name(table[i].r));
    CHECK_STR(str(check_of(j, "opt"), "status"), keel_health_status_name(table[i].o));
    json_decref(j);
  }
  keel_health_reset();
}

/* ---- timeouts, crashes, concurrency -------------------------------------------------- */

static keel_health_status sleepy_check(void *ud, keel_health_result *res) {
  (void)ud;
  (void)res;
  keel_sleep(60000); /* far past its timeout: only the kill ends it */
  return KEEL_HEALTH_OK;
}

typedef struct find {
  const char *name;
  bool found;
} find;

static bool find_named(const keel_proc_info *info, void *ud) {
  find *f = ud;
  if (strcmp(info->name, f->name) == 0) f->found = true;
  return !f->found;
}

static bool process_named_alive(const char *name) {
  find f = {name, false};
  keel_rt_processes(find_named, &f);
  return f.found;
}

KT_CASE(slow_check_times_out_without_hanging_the_probe) {
  begin();
  fixed fast = {KEEL_HEALTH_OK, NULL, NULL, 0};
  CHECK_OK(keel_health_register("slow", sleepy_check, NULL, true, 100));
  CHECK_OK(keel_health_register("fast", fixed_check, &fast, true, 2000));
  uint64_t t0 = mono_ms();
  json_t *j = probe(keel_health_detailed, 503);
  CHECK(mono_ms() - t0 < 30000); /* liveness bound: the check alone would take 60 s */
  CHECK_STR(str(j, "status"), "unhealthy");
  json_t *c = check_of(j, "slow");
  CHECK_STR(str(c, "status"), "critical");
  CHECK_STR(str(c, "message"), "timeout");
  CHECK_EQ(json_real_value(json_object_get(c, "duration_ms")), 100);
  CHECK_STR(str(check_of(j, "fast"), "status"), "ok");
  json_decref(j);
  /* the timed-out process was killed */
  for (int i = 0; process_named_alive("health:slow"); i++) {
    CHECK(i < 3000);
    keel_sleep(10);
  }
  keel_health_reset();
}

static atomic_bool spin_hold, spin_ok;
static keel_health_status spinning_check(void *ud, keel_health_result *res) {
  (void)ud;
  (void)res;
  while (atomic_load(&spin_hold)) {
  } /* no yield: cannot be killed while it spins */
  return atomic_load(&spin_ok) ? KEEL_HEALTH_OK : KEEL_HEALTH_CRITICAL;
}

KT_CASE(a_hung_check_is_not_started_again_while_it_hangs) {
  begin();
  atomic_store(&spin_hold, true);
  atomic_store(&spin_ok, false);
  CHECK_OK(keel_health_register("hung", spinning_check, NULL, false, 100));
  json_t *j = probe(keel_health_detailed, 200); /* optional: degraded */
  CHECK_STR(str(j, "status"), "degraded");
  CHECK_STR(str(check_of(j, "hung"), "message"), "timeout");
  json_decref(j);
  j = probe(keel_health_detailed, 200);
  CHECK_STR(str(check_of(j, "hung"), "message"), "timeout (the previous run has not ended)");
  json_decref(j);
  /* let it go: once its process has ended, the check runs again */
  atomic_store(&spin_ok, true);
  atomic_store(&spin_hold, false);
  for (int i = 0;; i++) {
    CHECK(i < 3000);
    j = probe(keel_health_detailed, 200);
    bool healthy = strcmp(str(j, "status"), "healthy") == 0;
    json_decref(j);
    if (healthy) break;
    keel_sleep(10);
  }
  keel_health_reset();
}

static keel_health_status crashing_check(void *ud, keel_health_result *res) {
  (void)ud;
  (void)res;
  keel_exit(KEEL_REASON_ERROR, "boom");
}

static keel_health_status quitting_check(void *ud, keel_health_result *res) {
  (void)ud;
  (void)res;
  keel_exit(KEEL_REASON_NORMAL, NULL);
}

static keel_health_status bogus_check(void *ud, keel_health_result *res) {
  (void)ud;
  (void)res;
  return (keel_health_status)7;
}

KT_CASE(crashing_check_is_critical_with_the_reason) {
  begin();
  CHECK_OK(keel_health_register("crasher", crashing_check, NULL, true, 5000));
  CHECK_OK(keel_health_register("quitter", quitting_check, NULL, false, 5000));
  CHECK_OK(keel_health_register("bogus", bogus_check, NULL, false, 5000));
  json_t *j = probe(keel_health_detailed, 503);
  json_t *c = check_of(j, "crasher");
  CHECK_STR(str(c, "status"), "critical");
  CHECK_STR(str(c, "message"), "crashed: boom");
  c = check_of(j, "quitter");
  CHECK_STR(str(c, "status"), "critical");
  CHECK_STR(str(c, "message"), "crashed: exited (normal) without a result");
  c = check_of(j, "bogus");
  CHECK_STR(str(c, "status"), "critical");
  CHECK_STR(str(c, "message"), "invalid status 7");
  json_decref(j);
  keel_health_reset();
}

/* Each check tells the coordinator it runs, then waits for "go", which the
 * coordinator sends only when it heard from all three. */
enum { TAG_RUNNING = 1, TAG_GO = 2 };

static keel_health_status rendezvous_check(void *ud, keel_health_result *res) {
  keel_pid_t coord = *(keel_pid_t *)ud;
  kt_send_u64(coord, TAG_RUNNING, 0);
  keel_msg_t *m = NULL;
  if (keel_receive(&m, 60000) != 0) {
    keel_health_result_message(res, "no go");
    return KEEL_HEALTH_CRITICAL;
  }
  bool go = keel_msg_tag(m) == TAG_GO;
  keel_msg_free(m);
  return go ? KEEL_HEALTH_OK : KEEL_HEALTH_CRITICAL;
}

static void coordinator(void *arg) {
  (void)arg;
  keel_pid_t who[3];
  for (int i = 0; i < 3; i++) {
    keel_msg_t *m = kt_recv(60000);
    CHECK_EQ(keel_msg_tag(m), TAG_RUNNING);
    who[i] = keel_msg_from(m);
    keel_msg_free(m);
  }
  for (int i = 0; i < 3; i++)
    kt_send_u64(who[i], TAG_GO, 0);
}

KT_CASE(checks_run_concurrently) {
  begin();
  static keel_pid_t coord;
  CHECK_OK(keel_spawn(coordinator, NULL, NULL, &coord));
  CHECK_OK(keel_health_register("a", rendezvous_check, &coord, true, 60000));
  CHECK_OK(keel_health_register("b", rendezvous_check, &coord, true, 60000));
  CHECK_OK(keel_health_register("c", rendezvous_check, &coord, true, 60000));
  json_t *j = probe(keel_health_detailed, 200);
  CHECK_STR(str(j, "status"), "healthy");
  CHECK_STR(str(check_of(j, "a"), "status"), "ok");
  CHECK_STR(str(check_of(j, "b"), "status"), "ok");
  CHECK_STR(str(check_of(j, "c"), "status"), "ok");
  json_decref(j);
  keel_health_reset();
}

/* ---- ready ------------------------------------------------------------------------- */

KT_CASE(ready_needs_started_not_draining_and_required_checks) {
  begin();
  fixed req = {KEEL_HEALTH_OK, NULL, NULL, 0}, opt = {KEEL_HEALTH_CRITICAL, NULL, NULL, 0};
  CHECK_OK(keel_health_register("req", fixed_check, &req, true, 2000));
  CHECK_OK(keel_health_register("opt", fixed_check, &opt, false, 2000));

  json_t *j = probe(keel_health_ready, 503); /* not started: at once */
  KEYS(j, "status", "timestamp", "reason", "started", "draining");
  CHECK_STR(str(j, "status"), "not_ready");
  CHECK_STR(str(j, "reason"), "starting");
  json_decref(j);
  CHECK_EQ(atomic_load(&req.runs), 0);

  keel_health_set_started(true);
  j = probe(keel_health_ready, 200);
  KEYS(j, "status", "timestamp", "started", "draining", "processCount", "checks");
  CHECK_STR(str(j, "status"), "ready");
  CHECK(json_integer_value(json_object_get(j, "processCount")) >= 1);
  CHECK_EQ(json_object_size(json_object_get(j, "checks")), 1); /* only the required one */
  CHECK_STR(str(check_of(j, "req"), "status"), "ok");
  json_decref(j);
  CHECK_EQ(atomic_load(&req.runs), 1);
  CHECK_EQ(atomic_load(&opt.runs), 0); /* optional checks do not decide readiness */

  req.status = KEEL_HEALTH_WARNING; /* a warning still passes */
  j = probe(keel_health_ready, 200);
  json_decref(j);

  req.status = KEEL_HEALTH_CRITICAL;
  j = probe(keel_health_ready, 503);
  CHECK_STR(str(j, "status"), "not_ready");
  CHECK_STR(str(j, "reason"), "check failed: req");
  CHECK_STR(str(check_of(j, "req"), "status"), "critical");
  json_decref(j);

  req.status = KEEL_HEALTH_OK;
  keel_health_set_draining(true);
  int runs = atomic_load(&req.runs);
  j = probe(keel_health_ready, 503);
  KEYS(j, "status", "timestamp", "reason", "started", "draining");
  CHECK_STR(str(j, "reason"), "draining");
  CHECK(json_is_true(json_object_get(j, "draining")));
  json_decref(j);
  CHECK_EQ(atomic_load(&req.runs), runs); /* nothing ran */

  /* the detailed body shows the state too; draining alone is not unhealthy */
  j = probe(keel_health_detailed, 200);
  CHECK(json_is_true(json_object_get(j, "draining")));
  json_decref(j);
  keel_health_reset();
}

/* ---- live ---------------------------------------------------------------------------- */

KT_CASE(live_answers_alive_with_every_scheduler) {
  begin();
  json_t *j = probe(keel_health_live, 200);
  KEYS(j, "status", "timestamp", "schedulers");
  CHECK_STR(str(j, "status"), "alive");
  json_t *arr = json_object_get(j, "schedulers");
  CHECK_EQ(json_array_size(arr), keel_sched_count());
  for (size_t i = 0; i < json_array_size(arr); i++) {
    json_t *s = json_array_get(arr, i);
    KEYS(s, "id", "responsive", "stuck", "run_queue");
    CHECK_EQ(json_integer_value(json_object_get(s, "id")), i);
    CHECK(json_is_true(json_object_get(s, "responsive")));
  }
  json_decref(j);
}

/* ---- stuck scheduler -------------------------------------------------------------- */

static atomic_bool spinner_on, spinner_stop;
static void spinner(void *arg) {
  (void)arg;
  atomic_store(&spinner_on, true);
  while (!atomic_load(&spinner_stop)) {
  } /* holds its scheduler: no yield */
}

KT_CASE(stuck_scheduler_fails_the_check_and_live) {
  begin();
  atomic_store(&spinner_on, false);
  atomic_store(&spinner_stop, false);
  keel_health_builtin_opts o;
  keel_health_builtin_opts_init(&o);
  o.no_processes = o.no_restarts = o.no_memory = true;
  o.stuck_ms = 200;
  CHECK_OK(keel_health_register_builtin(&o));

  json_t *j = probe(keel_health_detailed, 200);
  json_t *c = check_of(j, "schedulers");
  KEYS(c, "status", "required", "duration_ms", "message", "count", "stuck", "held_ms",
       "stuck_ms");
  CHECK_STR(str(c, "status"), "ok");
  CHECK_EQ(json_integer_value(json_object_get(c, "count")), 2);
  CHECK_EQ(json_array_size(json_object_get(c, "stuck")), 0);
  CHECK_EQ(json_array_size(json_object_get(c, "held_ms")), 2);
  json_decref(j);

  int here = keel_sched_current();
  keel_spawn_opts so;
  keel_spawn_opts_init(&so);
  so.scheduler = KEEL_ON_SCHEDULER(1 - here);
  CHECK_OK(keel_spawn(spinner, NULL, &so, NULL));
  for (int i = 0; !atomic_load(&spinner_on); i++) {
    CHECK(i < 3000);
    keel_sleep(10);
  }
  int stuck = 1 - here;
  /* and until the watchdog saw it held for stuck_ms (checks are not placed
   * on a scheduler known to be stuck; one not yet known is a race the test
   * avoids). The check reads the watchdog's figure: it does not sample. */
  for (int i = 0;; i++) {
    keel_sched_info si;
    CHECK_OK(keel_rt_sched_info(stuck, &si));
    CHECK(si.watched);
    if (si.stuck && si.held_ms >= 200) break;
    CHECK(i < 3000);
    keel_sleep(10);
  }

  j = probe(keel_health_detailed, 503);
  CHECK_STR(str(j, "status"), "unhealthy");
  c = check_of(j, "schedulers");
  CHECK_STR(str(c, "status"), "critical");
  json_t *arr = json_object_get(c, "stuck");
  CHECK_EQ(json_array_size(arr), 1);
  CHECK_EQ(json_integer_value(json_array_get(arr, 0)), stuck);
  CHECK(json_integer_value(json_array_get(json_object_get(c, "held_ms"), (size_t)stuck)) >= 200);
  char want[32];
  snprintf(want, sizeof want, "scheduler %d held by", stuck);
  CHECK(strncmp(str(c, "message"), want, strlen(want)) == 0);
  json_decref(j);

  keel_health_set_live_timeout(300);
  j = probe(keel_health_live, 503);
  KEYS(j, "status", "timestamp", "reason", "schedulers");
  CHECK_STR(str(j, "status"), "not_alive");
  arr = json_object_get(j, "schedulers");
  CHECK(json_is_false(json_object_get(json_array_get(arr, (size_t)stuck), "responsive")));
  CHECK(json_is_true(json_object_get(json_array_get(arr, (size_t)stuck), "stuck")));
  CHECK(json_is_true(json_object_get(json_array_get(arr, (size_t)(1 - stuck)), "responsive")));
  json_decref(j);

  atomic_store(&spinner_stop, true);
  for (int i = 0;; i++) {
    CHECK(i < 3000);
    keel_health_response r;
    CHECK_OK(keel_health_live(&r));
    int http = r.http_status;
    keel_health_response_free(&r);
    if (http == 200) break;
    keel_sleep(10);
  }
  j = probe(keel_health_detailed, 200);
  CHECK_STR(str(check_of(j, "schedulers"), "status"), "ok");
  json_decref(j);
  keel_health_reset();
}

/* ---- built-in checks -------------------------------------------------------------- */

static void worker(void *arg) {
  (void)arg;
  keel_msg_t *m = NULL;
  keel_receive(&m, KEEL_INFINITY); /* until killed */
  keel_msg_free(m);
}

static int worker_start(void *arg, const void *args, size_t len, keel_pid_t *pid) {
  (void)arg;
  (void)args;
  (void)len;
  keel_spawn_opts o;
  keel_spawn_opts_init(&o);
  o.link = true;
  return keel_spawn(worker, NULL, &o, pid);
}

static void restart_child(keel_pid_t sup, uint64_t expect_total) {
  keel_pid_t pid = 0;
  CHECK_OK(keel_sup_which_pid(sup, "w", &pid));
  CHECK_OK(keel_exit_signal(pid, KEEL_REASON_KILL, NULL));
  for (int i = 0;; i++) {
    uint64_t total;
    keel_health_restarts(60000, &total, NULL);
    if (total >= expect_total) break;
    CHECK(i < 3000);
    keel_sleep(10);
  }
}

KT_CASE(builtin_restarts_over_threshold_degrade_then_fail) {
  begin();
  keel_health_builtin_opts o;
  keel_health_builtin_opts_init(&o);
  o.no_processes = o.no_memory = o.no_schedulers = true;
  o.restarts_warning = 2;
  o.restarts_critical = 4;
  CHECK_OK(keel_health_register_builtin(&o));
  CHECK_EQ(keel_health_register_builtin(&o), KEEL_EEXIST);

  keel_sup_child_spec ch = {.id = "w", .start = worker_start, .restart = KEEL_SUP_PERMANENT};
  keel_sup_spec spec = {.strategy = KEEL_SUP_ONE_FOR_ONE,
                        .intensity = 100,
                        .period_ms = 60000,
                        .children = &ch,
                        .nchildren = 1};
  keel_pid_t sup;
  CHECK_OK(keel_sup_start(&spec, NULL, &sup, NULL));

  json_t *j = probe(keel_health_detailed, 200);
  json_t *c = check_of(j, "restarts");
  KEYS(c, "status", "required", "duration_ms", "message", "total", "recent", "window_ms");
  CHECK_STR(str(c, "status"), "ok");
  CHECK_EQ(json_integer_value(json_object_get(c, "recent")), 0);
  CHECK_EQ(json_integer_value(json_object_get(c, "window_ms")), 60000);
  json_decref(j);

  restart_child(sup, 1);
  restart_child(sup, 2);
  j = probe(keel_health_detailed, 200);
  CHECK_STR(str(j, "status"), "degraded");
  c = check_of(j, "restarts");
  CHECK_STR(str(c, "status"), "warning");
  CHECK_EQ(json_integer_value(json_object_get(c, "recent")), 2);
  CHECK_STR(str(c, "message"), "2 restarts in the last 60000 ms");
  json_decref(j);

  restart_child(sup, 3);
  restart_child(sup, 4);
  j = probe(keel_health_detailed, 503);
  CHECK_STR(str(j, "status"), "unhealthy");
  c = check_of(j, "restarts");
  CHECK_STR(str(c, "status"), "critical");
  CHECK_EQ(json_integer_value(json_object_get(c, "recent")), 4);
  CHECK_EQ(json_integer_value(json_object_get(c, "total")), 4);
  CHECK_EQ(json_integer_value(json_object_get(j, "restarts")), 4);
  json_decref(j);

  /* the window: restarts older than it do not count */
  uint64_t total, recent;
  keel_sleep(30);
  keel_health_restarts(20, &total, &recent);
  CHECK_EQ(total, 4);
  CHECK_EQ(recent, 0);

  CHECK_OK(keel_gs_stop(sup, KEEL_REASON_SHUTDOWN, NULL, 10000));
  keel_health_reset();
}

KT_CASE(builtin_memory_and_processes_thresholds) {
  begin();
  keel_health_builtin_opts o;
  keel_health_builtin_opts_init(&o);
  o.no_restarts = o.no_schedulers = true;
  CHECK_OK(keel_health_register_builtin(&o));
  keel_health_response r;
  CHECK_OK(keel_health_detailed(&r));
  json_t *j = json_loads(r.body, 0, NULL);
  CHECK(j != NULL);
  json_t *c = check_of(j, "memory");
  KEYS(c, "status", "required", "duration_ms", "message", "rssMB", "heapUsedMB", "limitMB",
       "percent");
  double pct = json_number_value(json_object_get(c, "percent"));
  CHECK(pct > 0);
  /* the verdict agrees with the figure it reports (default 80 % / 95 %) */
  CHECK_STR(str(c, "status"), pct < 80 ? "ok" : pct < 95 ? "warning" : "critical");
  CHECK_EQ(r.http_status, pct < 95 ? 200 : 503);
  keel_health_response_free(&r);
  c = check_of(j, "processes");
  KEYS(c, "status", "required", "duration_ms", "message", "count", "min");
  CHECK_STR(str(c, "status"), "ok");
  CHECK(json_integer_value(json_object_get(c, "count")) >= 1); /* this case; not the check */
  /* the node's figure and the check's agree in one body: health's own
   * processes (the two checks here) are in neither. One of slack: a check
   * process that already answered may be between its exit hook and its
   * removal for a few microseconds when the node's figure is read; counting
   * the checks gave a difference of 2 */
  json_int_t node = json_integer_value(json_object_get(j, "processes"));
  json_int_t check = json_integer_value(json_object_get(c, "count"));
  CHECK(node - check <= 1 && check - node <= 1);
  CHECK_EQ(json_integer_value(json_object_get(c, "min")), 1);
  json_decref(j);
  keel_health_reset();

  /* a tiny threshold: critical, and required makes the node unhealthy */
  keel_health_builtin_opts_init(&o);
  o.no_restarts = o.no_schedulers = true;
  o.memory_warning = 1e-9;
  o.memory_critical = 2e-9;
  o.min_processes = 1000000;
  o.processes_optional = true;
  CHECK_OK(keel_health_register_builtin(&o));
  j = probe(keel_health_detailed, 503);
  CHECK_STR(str(j, "status"), "unhealthy");
  c = check_of(j, "memory");
  CHECK_STR(str(c, "status"), "critical");
  CHECK(strstr(str(c, "message"), "of the limit") != NULL);
  c = check_of(j, "processes");
  CHECK_STR(str(c, "status"), "critical");
  CHECK(json_is_false(json_object_get(c, "required")));
  CHECK(strstr(str(c, "message"), "fewer than 1000000") != NULL);
  json_decref(j);

  /* memory optional: only degraded */
  keel_health_reset();
  o.memory_optional = true;
  o.no_processes = true;
  CHECK_OK(keel_health_register_builtin(&o));
  j = probe(keel_health_detailed, 200);
  CHECK_STR(str(j, "status"), "degraded");
  json_decref(j);
  keel_health_reset();
}

/* ---- sections, registry, threads ------------------------------------------------- */

static char *alerts_section(void *ud) {
  return strdup((const char *)ud);
}
static char *null_section(void *ud) {
  (void)ud;
  return NULL;
}

/* A large block malloc has handed out but nobody has touched (malloc maps it
 * whole; the kernel gives it pages only as they are written) is in malloc's
 * books but not in memory: the heap figure must not exceed the resident set,
 * in keel_sys_memory_get and in the same body of the detailed probe. Issue 11:
 * 256 MiB untouched made heapUsedMB about 256 above rssMB. */
static char *volatile untouched; /* volatile: the compiler may not drop the block */

KT_CASE(heap_used_never_exceeds_rss_with_an_untouched_large_block) {
  begin();
  untouched = malloc((size_t)256 << 20);
  CHECK(untouched != NULL);
  keel_sys_memory m;
  CHECK_OK(keel_sys_memory_get(&m));
  CHECK(m.rss_bytes > 0);
  if (m.heap_bytes > m.rss_bytes)
    fprintf(stderr, "heap %" PRIu64 " > rss %" PRIu64 "\n", m.heap_bytes, m.rss_bytes);
  CHECK(m.heap_bytes <= m.rss_bytes);

  keel_health_builtin_opts o;
  keel_health_builtin_opts_init(&o);
  o.no_restarts = o.no_schedulers = o.no_processes = true;
  o.memory_warning = 0.999; /* the verdict is not under test here */
  o.memory_critical = 1.0;
  CHECK_OK(keel_health_register_builtin(&o));
  keel_health_response r;
  CHECK_OK(keel_health_detailed(&r));
  json_t *j = json_loads(r.body, 0, NULL);
  CHECK(j != NULL);
  json_t *mem = json_object_get(j, "memory");
  json_t *c = check_of(j, "memory");
  json_int_t rss = json_integer_value(json_object_get(mem, "rssMB"));
  json_int_t heap = json_integer_value(json_object_get(mem, "heapUsedMB"));
  json_int_t crss = json_integer_value(json_object_get(c, "rssMB"));
  json_int_t cheap = json_integer_value(json_object_get(c, "heapUsedMB"));
  if (heap > rss || cheap > crss) fprintf(stderr, "%s\n", r.body);
  CHECK(heap <= rss);
  CHECK(cheap <= crss);
  json_decref(j);
  keel_health_response_free(&r);

  /* touched, the block is memory: the figure follows it (when malloc keeps
   * books at all: a sanitizer's allocator does not report to mallinfo2) */
  memset(untouched, 1, (size_t)64 << 20);
  CHECK_OK(keel_sys_memory_get(&m));
  CHECK(m.heap_bytes <= m.rss_bytes);
  if (m.heap_bytes) CHECK(m.heap_bytes >= (uint64_t)64 << 20);
  free(untouched);
  untouched = NULL;
  keel_health_reset();
}

KT_CASE(sections_add_members_to_the_detailed_body) {
  begin();
  CHECK_OK(keel_health_set_section("alerts", alerts_section, "[{\"name\":\"HighLatency\"}]"));
  CHECK_OK(keel_health_set_section("broken", alerts_section, "{not json"));
  CHECK_OK(keel_health_set_section("empty", null_section, NULL));
  CHECK_EQ(keel_health_set_section("status", alerts_section, "1"), KEEL_EINVAL);
  CHECK_EQ(keel_health_set_section("checks", alerts_section, "1"), KEEL_EINVAL);
  CHECK_EQ(keel_health_set_section("", alerts_section, "1"), KEEL_EINVAL);
  json_t *j = probe(keel_health_detailed, 200);
  json_t *a = json_object_get(j, "alerts");
  CHECK_EQ(json_array_size(a), 1);
  CHECK_STR(str(json_array_get(a, 0), "name"), "HighLatency");
  CHECK(json_is_null(json_object_get(j, "broken")));
  CHECK(json_is_null(json_object_get(j, "empty")));
  json_decref(j);

  CHECK_OK(keel_health_set_section("alerts", alerts_section, "[]")); /* replace */
  CHECK_OK(keel_health_set_section("broken", NULL, NULL));
  CHECK_OK(keel_health_set_section("empty", NULL, NULL));
  CHECK_EQ(keel_health_set_section("empty", NULL, NULL), KEEL_ENOENT);
  j = probe(keel_health_detailed, 200);
  CHECK_EQ(json_array_size(json_object_get(j, "alerts")), 0);
  CHECK(json_object_get(j, "broken") == NULL);
  KEYS(j, "status", "timestamp", "uptime", "service", "version", "started", "draining", "processes",
       "restarts", "memory", "checks", "alerts");
  json_decref(j);
  keel_health_reset();
  j = probe(keel_health_detailed, 200);
  CHECK(json_object_get(j, "alerts") == NULL);
  json_decref(j);
}

static atomic_int freed;
static void count_free(void *ud) {
  (void)ud;
  atomic_fetch_add(&freed, 1);
}

static void *outside_thread(void *arg) {
  keel_health_response *r = arg;
  int rc = keel_health_live(r);
  keel_health_response startup;
  CHECK_OK(keel_health_startup(&startup)); /* never waits: any thread */
  keel_health_response_free(&startup);
  return (void *)(intptr_t)rc;
}

KT_CASE(registry_rules_and_ud_free) {
  begin();
  atomic_store(&freed, 0);
  fixed f = {KEEL_HEALTH_OK, NULL, NULL, 0};
  keel_health_check c = {
      .name = "x", .fn = fixed_check, .ud = &f, .ud_free = count_free, .required = true};
  CHECK_OK(keel_health_register_check(&c));
  CHECK_EQ(keel_health_register_check(&c), KEEL_EEXIST);
  c.name = "";
  CHECK_EQ(keel_health_register_check(&c), KEEL_EINVAL);
  c.name = "a-name-that-is-far-too-long-for-a-health-check-because-it-has-64-b";
  CHECK_EQ(keel_health_register_check(&c), KEEL_EINVAL);
  c.name = "y";
  c.fn = NULL;
  CHECK_EQ(keel_health_register_check(&c), KEEL_EINVAL);
  c.fn = fixed_check;
  c.timeout_ms = -1;
  CHECK_EQ(keel_health_register_check(&c), KEEL_EINVAL);
  CHECK_EQ(atomic_load(&freed), 0);

  json_t *j = probe(keel_health_detailed, 200);
  CHECK_EQ(json_object_size(json_object_get(j, "checks")), 1);
  json_decref(j);
  CHECK_OK(keel_health_unregister("x"));
  CHECK_EQ(atomic_load(&freed), 1); /* nothing ran it any more */
  CHECK_EQ(keel_health_unregister("x"), KEEL_ENOENT);
  j = probe(keel_health_detailed, 200);
  CHECK_EQ(json_object_size(json_object_get(j, "checks")), 0);
  CHECK_STR(str(j, "status"), "healthy");
  json_decref(j);

  /* reset frees too */
  c.name = "z";
  c.timeout_ms = 0;
  CHECK_OK(keel_health_register_check(&c));
  keel_health_reset();
  CHECK_EQ(atomic_load(&freed), 2);

  /* the waiting probes need a process */
  pthread_t t;
  keel_health_response r = {.http_status = 1};
  CHECK_EQ(pthread_create(&t, NULL, outside_thread, &r), 0);
  void *rc;
  CHECK_EQ(pthread_join(t, &rc), 0);
  CHECK_EQ((intptr_t)rc, KEEL_ENOTPROC);
  CHECK(r.body == NULL && r.http_status == 0);
}

/* A check unregistered while its process still runs keeps its ud until the
 * process ended. */
static atomic_bool slow_release;
static keel_health_status held_check(void *ud, keel_health_result *res) {
  (void)ud;
  (void)res;
  while (!atomic_load(&slow_release))
    keel_sleep(5);
  return KEEL_HEALTH_OK;
}

static void unregister_later(void *arg) {
  (void)arg;
  keel_sleep(50);
  CHECK_OK(keel_health_unregister("held"));
  CHECK_EQ(atomic_load(&freed), 0); /* the probe's process still runs it */
  atomic_store(&slow_release, true);
}

KT_CASE(unregister_while_running_defers_ud_free) {
  begin();
  atomic_store(&freed, 0);
  atomic_store(&slow_release, false);
  keel_health_check c = {.name = "held",
                         .fn = held_check,
                         .ud_free = count_free,
                         .required = true,
                         .timeout_ms = 60000};
  CHECK_OK(keel_health_register_check(&c));
  CHECK_OK(keel_spawn(unregister_later, NULL, NULL, NULL));
  json_t *j = probe(keel_health_detailed, 200);
  CHECK_STR(str(check_of(j, "held"), "status"), "ok"); /* still reported */
  json_decref(j);
  for (int i = 0; atomic_load(&freed) == 0; i++) {
    CHECK(i < 3000);
    keel_sleep(10);
  }
  CHECK_EQ(atomic_load(&freed), 1);
}

/* For ThreadSanitizer: the registry, the sections and the state setters
 * change on a plain thread while processes probe. */
static atomic_bool churn_stop;
static char *churn_section(void *ud) {
  (void)ud;
  return strdup("{\"ok\":true}");
}
static void *churn(void *arg) {
  (void)arg;
  static fixed f = {KEEL_HEALTH_WARNING, "churn", NULL, 0};
  for (int i = 0; !atomic_load(&churn_stop); i++) {
    keel_health_register("churn", fixed_check, &f, false, 1000);
    keel_health_set_section("extra", churn_section, NULL);
    keel_health_set_started(i % 2);
    keel_health_set_service(i % 2 ? "a" : "b", "v");
    keel_health_unregister("churn");
    keel_health_set_section("extra", NULL, NULL);
  }
  return NULL;
}

static void prober(void *arg) {
  keel_pid_t parent = *(keel_pid_t *)arg;
  for (int i = 0; i < 30; i++) {
    keel_health_response r;
    CHECK_OK(i % 3 == 0   ? keel_health_ready(&r)
             : i % 3 == 1 ? keel_health_detailed(&r)
                          : keel_health_live(&r));
    CHECK(r.http_status == 200 || r.http_status == 503);
    json_t *j = json_loads(r.body, 0, NULL);
    CHECK(json_is_object(j));
    json_decref(j);
    keel_health_response_free(&r);
  }
  kt_send_u64(parent, 9, 0);
}

KT_CASE(probes_and_registry_changes_race_safely) {
  begin();
  fixed ok = {KEEL_HEALTH_OK, NULL, NULL, 0};
  CHECK_OK(keel_health_register("steady", fixed_check, &ok, true, 5000));
  atomic_store(&churn_stop, false);
  pthread_t t;
  CHECK_EQ(pthread_create(&t, NULL, churn, NULL), 0);
  static keel_pid_t self;
  self = keel_self();
  for (int i = 0; i < 3; i++)
    CHECK_OK(keel_spawn(prober, &self, NULL, NULL));
  for (int i = 0; i < 3; i++)
    keel_msg_free(kt_recv(120000));
  atomic_store(&churn_stop, true);
  CHECK_EQ(pthread_join(t, NULL), 0);
  keel_health_reset();
}

KT_MAIN(KT_ENTRY(startup_answers_starting_until_started),
        KT_ENTRY(detailed_reports_every_check_and_the_node),
        KT_ENTRY(required_critical_is_unhealthy_optional_is_degraded),
        KT_ENTRY_SCHED(slow_check_times_out_without_hanging_the_probe, 2),
        KT_ENTRY_SCHED(a_hung_check_is_not_started_again_while_it_hangs, 2),
        KT_ENTRY(crashing_check_is_critical_with_the_reason),
        KT_ENTRY_SCHED(checks_run_concurrently, 2), KT_ENTRY_SCHED(checks_run_concurrently, 1),
        KT_ENTRY(ready_needs_started_not_draining_and_required_checks),
        KT_ENTRY(live_answers_alive_with_every_scheduler),
        KT_ENTRY_SCHED(live_answers_alive_with_every_scheduler, 1),
        KT_ENTRY_SCHED(stuck_scheduler_fails_the_check_and_live, 2),
        KT_ENTRY(builtin_restarts_over_threshold_degrade_then_fail),
        KT_ENTRY(builtin_memory_and_processes_thresholds),
        KT_ENTRY(heap_used_never_exceeds_rss_with_an_untouched_large_block),
        KT_ENTRY(sections_add_members_to_the_detailed_body), KT_ENTRY(registry_rules_and_ud_free),
        KT_ENTRY_SCHED(unregister_while_running_defers_ud_free, 2),
        KT_ENTRY_SCHED(probes_and_registry_changes_race_safely, 2))
