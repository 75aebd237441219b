/* test_admin.c - the admin API on the admin port: the guard (token, read
 * open, actions off, rate limit), every read and action with its validation
 * and envelope, and the event stream's framing and bounds. */
#define _GNU_SOURCE
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "http/kt_http.h"
#include "keel.h"
#include "keel_test.h"

#define TOKEN "s3cret-t0ken"

static keel_metrics *g_metrics;

static keel_http_server *start_admin(const char *token, bool read_open, int max_streams,
                                     size_t max_queued, int rate) {
  keel_admin_opts o;
  keel_admin_opts_init(&o);
  o.host = "127.0.0.1";
  o.token = token;
  o.read_open = read_open;
  o.max_streams = max_streams;
  o.stream_max_queued = max_queued;
  o.action_rate_limit = rate;
  o.metrics = g_metrics;
  o.service_name = "admintest";
  o.version = "1.2.3";
  keel_http_server *s = NULL;
  CHECK_OK(keel_admin_start(&o, &s));
  return s;
}

/* One request; the body (if any) is JSON. Returns the parsed body (or NULL)
 * and fills *r. */
static json_t *call(keel_http_server *s, const char *method, const char *path, const char *token,
                    const char *body, kt_resp *r) {
  char req[4096];
  char auth[128] = "";
  if (token) snprintf(auth, sizeof auth, "Authorization: Bearer %s\r\n", token);
  snprintf(req, sizeof req,
           "%s %s HTTP/1.1\r\nHost: x\r\n%sContent-Type: application/json\r\n"
           "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
           method, path, auth, body ? strlen(body) : 0, body ? body : "");
  CHECK_EQ(kt_exchange(keel_http_port(s), req, r, 1), 1);
  return json_loads(r->body, 0, NULL);
}

static void expect_error(keel_http_server *s, const char *method, const char *path,
                         const char *token, const char *body, int status, const char *code) {
  static kt_resp r; /* big: not on the process stack */
  json_t *j = call(s, method, path, token, body, &r);
  json_decref(j);
  kt_check_envelope(&r, status, code);
}

static int status_of(keel_http_server *s, const char *method, const char *path, const char *token) {
  static kt_resp r; /* big: not on the process stack */
  json_decref(call(s, method, path, token, NULL, &r));
  return r.status;
}

static void setup(void) {
  CHECK_OK(keel_metrics_new(&g_metrics, 0));
  keel_log_opts lo;
  keel_log_opts_init(&lo);
  lo.file = "/dev/null";
  lo.flush_ms = 20;
  CHECK_OK(keel_log_init(&lo));
  keel_observer_start(NULL);
}

static void teardown(keel_http_server *s) {
  CHECK_OK(keel_http_stop(s));
  keel_observer_stop();
  keel_log_shutdown();
  keel_metrics_free(g_metrics);
  g_metrics = NULL;
}

/* ---- the guard ----------------------------------------------------------------- */

KT_CASE(with_a_token_reads_need_it_and_probes_stay_open) {
  setup();
  keel_http_server *s = start_admin(TOKEN, false, 0, 0, 0);
  CHECK_EQ(status_of(s, "GET", "/health/live", NULL), 200);
  CHECK_EQ(status_of(s, "GET", "/metrics", NULL), 200);
  expect_error(s, "GET", "/admin/overview", NULL, NULL, 401, "UNAUTHORIZED");
  expect_error(s, "GET", "/admin/overview", "wrong", NULL, 401, "UNAUTHORIZED");
  expect_error(s, "GET", "/admin/observer", NULL, NULL, 401, "UNAUTHORIZED");
  expect_error(s, "GET", "/admin/events", NULL, NULL, 401, "UNAUTHORIZED");
  /* a token as long as the right one but different, and one that is a prefix */
  expect_error(s, "GET", "/admin/overview", "s3cret-t0kem", NULL, 401, "UNAUTHORIZED");
  expect_error(s, "GET", "/admin/overview", "s3cret", NULL, 401, "UNAUTHORIZED");
  /* never from the URL */
  expect_error(s, "GET", "/admin/overview?token=" TOKEN, NULL, NULL, 401, "UNAUTHORIZED");
  static kt_resp r; /* big: not on the process stack */
  json_t *j = call(s, "GET", "/admin/overview", NULL, NULL, &r);
  char h[128];
  CHECK(kt_hdr(&r, "WWW-Authenticate", h, sizeof h) && strncmp(h, "Bearer", 6) == 0);
  json_decref(j);
  j = call(s, "GET", "/admin/overview", TOKEN, NULL, &r);
  CHECK_EQ(r.status, 200);
  CHECK_STR(json_string_value(json_object_get(j, "service")), "admintest");
  CHECK_STR(json_string_value(json_object_get(j, "version")), "1.2.3");
  CHECK(json_is_true(json_object_get(j, "actions")));
  CHECK(json_integer_value(json_object_get(j, "processes")) > 0);
  CHECK(json_array_size(json_object_get(j, "schedulers")) == (size_t)keel_sched_count());
  CHECK(json_is_object(json_object_get(json_object_get(j, "memory"), "rss_bytes")) == false);
  CHECK(json_integer_value(json_object_get(json_object_get(j, "memory"), "rss_bytes")) > 0);
  CHECK(json_is_string(json_object_get(j, "health")));
  CHECK(json_is_string(json_object_get(j, "log_level")));
  json_decref(j);
  /* the page and its assets hold nothing about the node: open, with a CSP
   * that allows no inline script */
  j = call(s, "GET", "/dashboard", NULL, NULL, &r);
  CHECK_EQ(r.status, 200);
  char csp[512];
  CHECK(kt_hdr(&r, "Content-Security-Policy", csp, sizeof csp));
  CHECK(strstr(csp, "script-src 'self'") != NULL);
  CHECK(strstr(csp, "unsafe-inline") == NULL);
  CHECK(strstr(r.body, "<script src=\"/dashboard/app.js\"") != NULL);
  CHECK_EQ(status_of(s, "GET", "/dashboard/app.js", NULL), 200);
  CHECK_EQ(status_of(s, "GET", "/dashboard/app.css", NULL), 200);
  teardown(s);
}

KT_CASE(read_open_lets_reads_through_but_not_actions) {
  setup();
  keel_http_server *s = start_admin(TOKEN, true, 0, 0, 0);
  CHECK_EQ(status_of(s, "GET", "/admin/overview", NULL), 200);
  CHECK_EQ(status_of(s, "GET", "/admin/tree", NULL), 200);
  expect_error(s, "POST", "/admin/log-level", NULL, "{\"level\":\"info\"}", 401, "UNAUTHORIZED");
  teardown(s);
}

KT_CASE(without_a_token_actions_are_off_and_reads_are_open) {
  setup();
  keel_http_server *s = start_admin(NULL, false, 0, 0, 0);
  static kt_resp r; /* big: not on the process stack */
  json_t *j = call(s, "POST", "/admin/log-level", TOKEN, "{\"level\":\"debug\"}", &r);
  kt_check_envelope(&r, 403, "FORBIDDEN");
  CHECK(strstr(json_string_value(json_object_get(json_object_get(j, "error"), "message")),
               "actions are off") != NULL);
  json_decref(j);
  CHECK(keel_log_get_level() != KEEL_LOG_DEBUG);
  j = call(s, "GET", "/admin/overview", NULL, NULL, &r);
  CHECK_EQ(r.status, 200);
  CHECK(json_is_false(json_object_get(j, "actions")));
  json_decref(j);
  teardown(s);
}

KT_CASE(actions_are_rate_limited_per_client) {
  setup();
  keel_http_server *s = start_admin(TOKEN, false, 0, 0, 3);
  for (int i = 0; i < 3; i++)
    CHECK_EQ(status_of(s, "POST", "/admin/log-level", TOKEN), 400); /* no body: still counted */
  static kt_resp r; /* big: not on the process stack */
  json_decref(call(s, "POST", "/admin/log-level", TOKEN, "{\"level\":\"info\"}", &r));
  kt_check_envelope(&r, 429, "RATE_LIMITED");
  char h[32];
  CHECK(kt_hdr(&r, "Retry-After", h, sizeof h) != NULL);
  CHECK_EQ(status_of(s, "GET", "/admin/overview", TOKEN), 200); /* reads are not limited */
  teardown(s);
}

/* ---- actions ------------------------------------------------------------------- */

static void idle_main(void *arg) {
  (void)arg;
  keel_msg_t *m;
  while (keel_receive(&m, KEEL_INFINITY) == 0)
    keel_msg_free(m);
}

static void trap_main(void *arg) {
  (void)arg;
  keel_trap_exit(true);
  idle_main(NULL);
}

static bool log_has(const char *needle) {
  keel_log_flush();
  keel_log_recent_line *v;
  size_t n;
  CHECK_OK(keel_log_recent(0, KEEL_LOG_TRACE, 0, &v, &n));
  bool found = false;
  for (size_t i = 0; i < n && !found; i++)
    found = strstr(v[i].text, needle) != NULL;
  keel_log_recent_free(v, n);
  return found;
}

KT_CASE(kill_validates_its_input_then_kills_with_the_reason) {
  setup();
  keel_http_server *s = start_admin(TOKEN, false, 0, 0, 0);
  keel_ref_t ref;
  keel_pid_t victim = kt_spawn_monitor(idle_main, NULL, 0, &ref);
  char pid[32], path[96];
  keel_pid_format(victim, pid, sizeof pid);
  snprintf(path, sizeof path, "/admin/processes/%s/kill", pid);
  expect_error(s, "POST", path, TOKEN, "{\"reason\":5}", 400, "VALIDATION_ERROR");
  expect_error(s, "POST", path, TOKEN, "{\"reason\":\"\"}", 400, "VALIDATION_ERROR");
  expect_error(s, "POST", path, TOKEN, "{\"reason\":\"normal\"}", 400, "VALIDATION_ERROR");
  expect_error(s, "POST", path, TOKEN, "{\"reason\":\"a\\nb\"}", 400, "VALIDATION_ERROR");
  expect_error(s, "POST", path, TOKEN, "[1]", 400, "VALIDATION_ERROR");
  expect_error(s, "POST", path, TOKEN, "{nope", 400, "BAD_REQUEST");
  expect_error(s, "POST", "/admin/processes/<0.999999.7>/kill", TOKEN, "{}", 404, "NOT_FOUND");
  expect_error(s, "POST", "/admin/processes/nobody_by_that_name/kill", TOKEN, "{}", 404,
               "NOT_FOUND");
  CHECK(keel_is_alive(victim));
  static kt_resp r; /* big: not on the process stack */
  json_t *j = call(s, "POST", path, TOKEN, "{\"reason\":\"operator test\"}", &r);
  CHECK_EQ(r.status, 202);
  CHECK_STR(json_string_value(json_object_get(j, "pid")), pid);
  json_decref(j);
  char text[64];
  CHECK_EQ(kt_wait_down(ref, victim, text, sizeof text), KEEL_REASON_KILLED);
  CHECK_STR(text, "operator test"); /* untrappable, and the text is kept */
  CHECK(log_has("\"action\":\"kill\""));
  CHECK(log_has("\"reason\":\"operator test\""));
  CHECK(log_has("\"client\":\"127.0.0.1\""));
  /* a process that traps exits (as every gen_server does) is killed all the same */
  victim = kt_spawn_monitor(trap_main, NULL, 0, &ref);
  keel_sleep(20); /* trapping by now */
  keel_pid_format(victim, pid, sizeof pid);
  snprintf(path, sizeof path, "/admin/processes/%s/kill", pid);
  CHECK_EQ(status_of(s, "POST", path, TOKEN), 202);
  CHECK_EQ(kt_wait_down(ref, victim, NULL, 0), KEEL_REASON_KILLED);
  /* an empty body means a plain kill */
  victim = kt_spawn_monitor(idle_main, NULL, 0, &ref);
  keel_pid_format(victim, pid, sizeof pid);
  /* "0.x.y" (without the angle brackets) names it too */
  snprintf(path, sizeof path, "/admin/processes/%.*s/kill", (int)strlen(pid) - 2, pid + 1);
  CHECK_EQ(status_of(s, "POST", path, TOKEN), 202);
  CHECK_EQ(kt_wait_down(ref, victim, NULL, 0), KEEL_REASON_KILLED);
  teardown(s);
}

static int start_idle(void *arg, const void *args, size_t len, keel_pid_t *pid) {
  (void)arg, (void)args, (void)len;
  keel_spawn_opts o;
  keel_spawn_opts_init(&o);
  o.link = true;
  o.name = "adm_worker";
  return keel_spawn(idle_main, NULL, &o, pid);
}

KT_CASE(restart_and_terminate_a_supervisors_child) {
  setup();
  keel_http_server *s = start_admin(TOKEN, false, 0, 0, 0);
  keel_sup_child_spec kids[] = {{.id = "w1", .start = start_idle},
                                {.id = "w2", .start = start_idle}};
  keel_sup_spec spec = {.strategy = KEEL_SUP_ONE_FOR_ONE, .children = kids, .nchildren = 2};
  keel_sup_opts so = {.name = "adm_sup"};
  keel_pid_t sup;
  CHECK_OK(keel_sup_start(&spec, &so, &sup, NULL));
  keel_pid_t before;
  CHECK_OK(keel_sup_which_pid(sup, "w1", &before));
  static kt_resp r; /* big: not on the process stack */
  json_t *j = call(s, "POST", "/admin/supervisors/adm_sup/children/w1/restart", TOKEN, NULL, &r);
  CHECK_EQ(r.status, 200);
  keel_pid_t after;
  CHECK_OK(keel_sup_which_pid(sup, "w1", &after));
  CHECK(after != before && after != 0);
  CHECK(!keel_is_alive(before));
  char ap[32];
  CHECK_STR(json_string_value(json_object_get(j, "pid")), keel_pid_format(after, ap, sizeof ap));
  json_decref(j);
  expect_error(s, "POST", "/admin/supervisors/adm_sup/children/nope/restart", TOKEN, NULL, 404,
               "NOT_FOUND");
  expect_error(s, "POST", "/admin/supervisors/no_such_sup/children/w1/restart", TOKEN, NULL, 404,
               "NOT_FOUND");
  char path[128], pid[32];
  keel_pid_format(after, pid, sizeof pid); /* a worker is not a supervisor */
  snprintf(path, sizeof path, "/admin/supervisors/%s/children/w1/restart", pid);
  expect_error(s, "POST", path, TOKEN, NULL, 404, "NOT_FOUND");
  keel_pid_format(sup, pid, sizeof pid); /* by pid */
  snprintf(path, sizeof path, "/admin/supervisors/%s/children/w2/terminate", pid);
  j = call(s, "POST", path, TOKEN, NULL, &r);
  CHECK_EQ(r.status, 200);
  CHECK(json_is_null(json_object_get(j, "pid")));
  json_decref(j);
  keel_pid_t w2;
  keel_sup_which_pid(sup, "w2", &w2);
  CHECK_EQ(w2, 0);
  CHECK(log_has("\"action\":\"terminate_child\""));
  /* a stopped child starts again with restart */
  snprintf(path, sizeof path, "/admin/supervisors/%s/children/w2/restart", pid);
  CHECK_EQ(status_of(s, "POST", path, TOKEN), 200);
  keel_sup_which_pid(sup, "w2", &w2);
  CHECK(w2 != 0);
  keel_ref_t sref;
  CHECK_OK(keel_monitor(sup, &sref));
  keel_exit_signal(sup, KEEL_REASON_KILL, NULL); /* its linked workers go with it */
  kt_wait_down(sref, sup, NULL, 0);
  teardown(s);
}

KT_CASE(log_level_changes_at_run_time) {
  setup();
  keel_http_server *s = start_admin(TOKEN, false, 0, 0, 0);
  keel_log_level was = keel_log_get_level();
  static kt_resp r; /* big: not on the process stack */
  json_t *j = call(s, "POST", "/admin/log-level", TOKEN, "{\"level\":\"debug\"}", &r);
  CHECK_EQ(r.status, 200);
  CHECK_STR(json_string_value(json_object_get(j, "level")), "debug");
  CHECK_STR(json_string_value(json_object_get(j, "previous")), keel_log_level_name(was));
  json_decref(j);
  CHECK_EQ(keel_log_get_level(), KEEL_LOG_DEBUG);
  expect_error(s, "POST", "/admin/log-level", TOKEN, "{\"level\":\"loud\"}", 400,
               "VALIDATION_ERROR");
  expect_error(s, "POST", "/admin/log-level", TOKEN, "{}", 400, "VALIDATION_ERROR");
  expect_error(s, "POST", "/admin/log-level", TOKEN, NULL, 400, "BAD_REQUEST");
  CHECK_EQ(keel_log_get_level(), KEEL_LOG_DEBUG);
  keel_log_set_level(was);
  teardown(s);
}

/* ---- reads ---------------------------------------------------------------------- */

static void hoard_main(void *arg) {
  (void)arg;
  keel_set_name("adm_hoarder");
  keel_sleep(600000); /* never reads: what it is sent stays queued (killed by the test) */
}

KT_CASE(processes_sort_filter_limit_and_one_process) {
  setup();
  keel_http_server *s = start_admin(TOKEN, false, 0, 0, 0);
  keel_pid_t big = kt_spawn_on(hoard_main, NULL, 0), small = kt_spawn_on(hoard_main, NULL, 0);
  keel_sleep(20); /* both named and waiting */
  for (int i = 0; i < 30; i++)
    kt_send_tag(big, 1);
  for (int i = 0; i < 5; i++)
    kt_send_tag(small, 1);
  static kt_resp r; /* big: not on the process stack */
  json_t *j = call(s, "GET", "/admin/processes?sort=mailbox&limit=1", TOKEN, NULL, &r);
  CHECK_EQ(r.status, 200);
  json_t *procs = json_object_get(j, "processes");
  CHECK_EQ(json_array_size(procs), 1);
  char bp[32];
  keel_pid_format(big, bp, sizeof bp);
  CHECK_STR(json_string_value(json_object_get(json_array_get(procs, 0), "pid")), bp);
  CHECK(json_integer_value(json_object_get(json_array_get(procs, 0), "mailbox_len")) >= 30);
  CHECK(json_integer_value(json_object_get(j, "total")) > 1);
  json_decref(j);
  j = call(s, "GET", "/admin/processes?name=adm_hoard&sort=age", TOKEN, NULL, &r);
  CHECK_EQ(r.status, 200);
  CHECK_EQ(json_integer_value(json_object_get(j, "matched")), 2);
  json_decref(j);
  keel_ref_t ref;
  CHECK_OK(keel_monitor(small, &ref));
  keel_exit_signal(small, KEEL_REASON_KILL, NULL);
  kt_wait_down(ref, small, NULL, 0);
  j = call(s, "GET", "/admin/processes?name=adm_hoard", TOKEN, NULL, &r);
  CHECK_EQ(json_integer_value(json_object_get(j, "matched")), 1);
  json_decref(j);
  expect_error(s, "GET", "/admin/processes?sort=size", TOKEN, NULL, 400, "VALIDATION_ERROR");
  expect_error(s, "GET", "/admin/processes?limit=0", TOKEN, NULL, 400, "VALIDATION_ERROR");
  expect_error(s, "GET", "/admin/processes?limit=x", TOKEN, NULL, 400, "VALIDATION_ERROR");
  char path[96];
  snprintf(path, sizeof path, "/admin/processes/%s", bp);
  j = call(s, "GET", path, TOKEN, NULL, &r);
  CHECK_EQ(r.status, 200);
  CHECK_STR(json_string_value(json_object_get(j, "name")), "adm_hoarder");
  CHECK(json_integer_value(json_object_get(j, "mailbox_len")) >= 30);
  json_decref(j);
  expect_error(s, "GET", "/admin/processes/<0.999999.3>", TOKEN, NULL, 404, "NOT_FOUND");
  CHECK_OK(keel_monitor(big, &ref));
  keel_exit_signal(big, KEEL_REASON_KILL, NULL);
  kt_wait_down(ref, big, NULL, 0);
  teardown(s);
}

/* The member `key` of one process's page (a links/monitors list) holds
 * exactly one entry: pid `want`, with these names (NULL: JSON null). */
static void check_set(json_t *proc, const char *key, keel_pid_t want, const char *name,
                      const char *registered) {
  json_t *list = json_object_get(proc, key);
  CHECK(json_is_array(list));
  CHECK_EQ(json_array_size(list), 1);
  char t[32] = "", total[40];
  snprintf(total, sizeof total, "%s_total", key);
  CHECK_EQ(json_integer_value(json_object_get(proc, total)), 1);
  json_t *e = json_array_get(list, 0);
  keel_pid_format(want, t, sizeof t);
  CHECK_STR(json_string_value(json_object_get(e, "pid")), t);
  if (name)
    CHECK_STR(json_string_value(json_object_get(e, "name")), name);
  else
    CHECK(json_is_null(json_object_get(e, "name")));
  if (registered)
    CHECK_STR(json_string_value(json_object_get(e, "registered")), registered);
  else
    CHECK(json_is_null(json_object_get(e, "registered")));
}

KT_CASE(process_page_lists_links_and_monitors_with_names) {
  setup();
  keel_http_server *s = start_admin(TOKEN, false, 0, 0, 0);
  keel_pid_t h = kt_spawn_on(hoard_main, NULL, 0);
  keel_sleep(20); /* named and asleep: what we do to it stays a pending signal */
  CHECK_OK(keel_set_name("adm_tester"));
  CHECK_OK(keel_register("adm_tester_reg", keel_self()));
  CHECK_OK(keel_link(h));
  keel_ref_t ref;
  CHECK_OK(keel_monitor(h, &ref));
  static kt_resp r; /* big: not on the process stack */
  char path[96], hp[32];
  keel_pid_format(h, hp, sizeof hp);
  snprintf(path, sizeof path, "/admin/processes/%s", hp);
  json_t *j = call(s, "GET", path, TOKEN, NULL, &r);
  CHECK_EQ(r.status, 200);
  check_set(j, "links", keel_self(), "adm_tester", "adm_tester_reg");
  check_set(j, "monitored_by", keel_self(), "adm_tester", "adm_tester_reg");
  CHECK_EQ(json_array_size(json_object_get(j, "monitors")), 0);
  CHECK_EQ(json_integer_value(json_object_get(j, "monitors_total")), 0);
  json_decref(j);
  /* our own page, by registered name: the other side */
  j = call(s, "GET", "/admin/processes/adm_tester_reg", TOKEN, NULL, &r);
  CHECK_EQ(r.status, 200);
  check_set(j, "links", h, "adm_hoarder", NULL);
  check_set(j, "monitors", h, "adm_hoarder", NULL);
  CHECK_EQ(json_array_size(json_object_get(j, "monitored_by")), 0);
  json_decref(j);
  /* undone: gone from both pages */
  CHECK_OK(keel_unlink(h));
  CHECK_OK(keel_demonitor(ref));
  j = call(s, "GET", path, TOKEN, NULL, &r);
  CHECK_EQ(json_array_size(json_object_get(j, "links")), 0);
  CHECK_EQ(json_array_size(json_object_get(j, "monitored_by")), 0);
  json_decref(j);
  CHECK_OK(keel_unregister("adm_tester_reg"));
  CHECK_OK(keel_monitor(h, &ref));
  keel_exit_signal(h, KEEL_REASON_KILL, NULL);
  kt_wait_down(ref, h, NULL, 0);
  teardown(s);
}

static char *panel_fn(void *ud) {
  int *calls = ud;
  (*calls)++;
  return strdup("{\"queues\":[{\"name\":\"mail\",\"depth\":3}]}");
}

static int h_hello(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req, (void)ud;
  return keel_http_reply_text(res, 200, "text/plain", "hi");
}

KT_CASE(tree_alerts_logs_http_and_panels) {
  setup();
  keel_http_server *s = start_admin(TOKEN, false, 0, 0, 0);
  static kt_resp r; /* big: not on the process stack */
  json_t *j = call(s, "GET", "/admin/tree", TOKEN, NULL, &r);
  CHECK_EQ(r.status, 200);
  CHECK(json_is_array(json_object_get(j, "tree")));
  CHECK(json_is_array(json_object_get(j, "recent_restarts")));
  json_decref(j);
  j = call(s, "GET", "/admin/alerts", TOKEN, NULL, &r);
  CHECK_EQ(r.status, 200);
  CHECK(json_is_array(json_object_get(j, "active")));
  CHECK(json_is_array(json_object_get(j, "recent")));
  json_decref(j);
  /* logs: a level filter, and a cursor */
  keel_log_warn(NULL, "adm warn line");
  keel_log_info(NULL, "adm info line");
  j = call(s, "GET", "/admin/logs?level=warn", TOKEN, NULL, &r);
  CHECK_EQ(r.status, 200);
  json_t *lines = json_object_get(j, "lines");
  bool warn = false, info = false;
  for (size_t i = 0; i < json_array_size(lines); i++) {
    const char *t = json_string_value(json_object_get(json_array_get(lines, i), "line"));
    warn |= strstr(t, "adm warn line") != NULL;
    info |= strstr(t, "adm info line") != NULL;
    CHECK(strcmp(json_string_value(json_object_get(json_array_get(lines, i), "level")), "info") !=
          0);
  }
  CHECK(warn && !info);
  char path[96];
  snprintf(path, sizeof path, "/admin/logs?since=%lld",
           (long long)json_integer_value(json_object_get(j, "next")));
  json_decref(j);
  keel_log_error(NULL, "adm later line");
  j = call(s, "GET", path, TOKEN, NULL, &r);
  lines = json_object_get(j, "lines");
  CHECK(json_array_size(lines) >= 1);
  CHECK(strstr(json_string_value(json_object_get(json_array_get(lines, 0), "line")), "adm warn") ==
        NULL);
  json_decref(j);
  expect_error(s, "GET", "/admin/logs?level=loud", TOKEN, NULL, 400, "VALIDATION_ERROR");
  expect_error(s, "GET", "/admin/logs?limit=5000", TOKEN, NULL, 400, "VALIDATION_ERROR");
  /* HTTP: from the registry an API server on the same metrics fills */
  keel_http_router *rt = keel_http_router_new();
  CHECK_OK(keel_http_route(rt, "GET", "/hello", h_hello, NULL));
  keel_http_opts ho;
  keel_http_opts_init(&ho);
  ho.host = "127.0.0.1";
  ho.metrics = g_metrics;
  ho.no_access_log = true;
  keel_http_server *api;
  CHECK_OK(keel_http_start(&ho, rt, &api));
  for (int i = 0; i < 3; i++) {
    static kt_resp hr; /* big: not on the process stack */
    json_decref(call(api, "GET", "/hello", NULL, NULL, &hr));
    CHECK_EQ(hr.status, 200);
  }
  j = call(s, "GET", "/admin/http", TOKEN, NULL, &r);
  CHECK_EQ(r.status, 200);
  json_t *routes = json_object_get(j, "routes");
  bool seen = false;
  for (size_t i = 0; i < json_array_size(routes); i++) {
    json_t *o = json_array_get(routes, i);
    if (strcmp(json_string_value(json_object_get(o, "route")), "/hello") != 0) continue;
    seen = true;
    CHECK_EQ(json_integer_value(json_object_get(o, "requests")), 3);
    CHECK_EQ(json_integer_value(json_object_get(json_object_get(o, "status"), "200")), 3);
    CHECK(json_is_real(json_object_get(o, "p50_ms")));
    CHECK(json_real_value(json_object_get(o, "p99_ms")) >=
          json_real_value(json_object_get(o, "p50_ms")));
  }
  CHECK(seen);
  CHECK_EQ(json_integer_value(json_object_get(j, "requests")), 3);
  json_decref(j);
  CHECK_OK(keel_http_stop(api));
  /* panels */
  int calls = 0;
  CHECK_EQ(keel_admin_panel_register("Bad Name", "x", panel_fn, &calls), KEEL_EINVAL);
  CHECK_OK(keel_admin_panel_register("jobs", "Job queues", panel_fn, &calls));
  j = call(s, "GET", "/admin/panels", TOKEN, NULL, &r);
  CHECK_EQ(json_array_size(json_object_get(j, "panels")), 1);
  json_decref(j);
  j = call(s, "GET", "/admin/panels/jobs", TOKEN, NULL, &r);
  CHECK_EQ(r.status, 200);
  CHECK_STR(json_string_value(json_object_get(j, "title")), "Job queues");
  CHECK_EQ(json_integer_value(json_object_get(
               json_array_get(json_object_get(json_object_get(j, "data"), "queues"), 0), "depth")),
           3);
  json_decref(j);
  CHECK_EQ(calls, 1);
  expect_error(s, "GET", "/admin/panels/nope", TOKEN, NULL, 404, "NOT_FOUND");
  CHECK_OK(keel_admin_panel_unregister("jobs"));
  CHECK_EQ(keel_admin_panel_unregister("jobs"), KEEL_ENOENT);
  teardown(s);
}

/* ---- the event stream ----------------------------------------------------------- */

typedef struct sse_job {
  int port;
  const char *token;
  char buf[65536];
  size_t len;
  const char *want[4]; /* read until each appears */
  int status;
  int fd; /* left open when keep */
  bool keep;
} sse_job;

static void sse_run(void *arg) {
  sse_job *j = arg;
  kt_conn *c = malloc(sizeof *c);
  j->len = 0;
  j->status = 0;
  j->fd = -1;
  if (kt_connect(j->port, c) != 0) {
    free(c);
    return;
  }
  char req[256];
  snprintf(req, sizeof req,
           "GET /admin/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", j->token);
  kt_send_all(c, req, strlen(req));
  for (;;) {
    bool all = true;
    for (int i = 0; i < 4 && j->want[i]; i++)
      all &= memmem(j->buf, j->len, j->want[i], strlen(j->want[i])) != NULL;
    if (all || j->len + 1 >= sizeof j->buf) break;
    ssize_t n = recv(c->fd, j->buf + j->len, sizeof j->buf - j->len - 1, 0);
    if (n <= 0) break;
    j->len += (size_t)n;
    j->buf[j->len] = 0;
  }
  sscanf(j->buf, "HTTP/1.1 %d", &j->status);
  if (j->keep)
    j->fd = c->fd;
  else
    close(c->fd);
  free(c);
}

static json_t *overview(keel_http_server *s) {
  static kt_resp r; /* big: not on the process stack */
  json_t *j = call(s, "GET", "/admin/overview", TOKEN, NULL, &r);
  CHECK_EQ(r.status, 200);
  return j;
}

static int streams_open(keel_http_server *s) {
  json_t *j = overview(s);
  int n = (int)json_integer_value(json_object_get(j, "streams"));
  json_decref(j);
  return n;
}

KT_CASE(event_stream_sends_hello_stats_and_process_events_and_is_capped) {
  setup();
  keel_http_server *s = start_admin(TOKEN, false, 2, 0, 0);
  sse_job *j = calloc(1, sizeof *j);
  j->port = keel_http_port(s);
  j->token = TOKEN;
  j->want[0] = "event: hello";
  j->want[1] = "event: stats";
  j->keep = true;
  CHECK_OK(keel_blocking(sse_run, j));
  CHECK_EQ(j->status, 200);
  CHECK(strstr(j->buf, "Content-Type: text/event-stream") != NULL);
  CHECK(strstr(j->buf, "Content-Length") == NULL);
  /* each event: "event: name\ndata: <one JSON line>\n\n" */
  char *data = strstr(j->buf, "event: stats\ndata: ");
  CHECK(data != NULL);
  data += strlen("event: stats\ndata: ");
  char *end = strstr(data, "\n\n");
  CHECK(end != NULL);
  *end = 0;
  json_t *st = json_loads(data, 0, NULL);
  CHECK(st != NULL);
  CHECK(json_integer_value(json_object_get(st, "processes")) > 0);
  CHECK(json_is_array(json_object_get(st, "schedulers")));
  json_decref(st);
  int fd1 = j->fd;
  /* a second stream, then a third is refused (the cap is 2) */
  sse_job *j2 = calloc(1, sizeof *j2);
  *j2 = (sse_job){.port = j->port, .token = TOKEN, .want = {"event: hello"}, .keep = true};
  CHECK_OK(keel_blocking(sse_run, j2));
  CHECK_EQ(j2->status, 200);
  CHECK_EQ(streams_open(s), 2);
  expect_error(s, "GET", "/admin/events", TOKEN, NULL, 503, "SERVICE_UNAVAILABLE");
  /* a process exits: the stream says so */
  keel_ref_t ref;
  keel_pid_t p = kt_spawn_monitor(idle_main, NULL, 0, &ref);
  keel_exit_signal(p, KEEL_REASON_KILL, NULL);
  kt_wait_down(ref, p, NULL, 0);
  char pid[32], want[64];
  keel_pid_format(p, pid, sizeof pid);
  snprintf(want, sizeof want, "\"pid\":\"%s\"", pid);
  close(j2->fd);
  /* read on the first stream until the exit shows */
  bool seen = false;
  char buf[8192];
  size_t len = 0;
  int64_t until = kt_now_ms() + 10000;
  while (!seen && kt_now_ms() < until) {
    ssize_t n = recv(fd1, buf + len, sizeof buf - len - 1, MSG_DONTWAIT);
    if (n > 0) {
      len += (size_t)n;
      buf[len] = 0;
      if (strstr(buf, want)) {
        seen = true;
        break;
      }
      if (len > sizeof buf / 2) { /* keep the tail only */
        memmove(buf, buf + len - 256, 256);
        len = 256;
      }
    } else {
      keel_sleep(20);
    }
  }
  CHECK(seen);
  CHECK(strstr(buf, "process_exited") != NULL || strstr(buf, "process_started") != NULL);
  close(fd1);
  /* both closed: their slots come back */
  for (int i = 0; i < 300 && streams_open(s) > 0; i++)
    keel_sleep(20);
  CHECK_EQ(streams_open(s), 0);
  free(j);
  free(j2);
  teardown(s);
}

/* 100 clients that never read (tiny receive buffers) plus one that hangs up
 * in the middle of an event, while the node logs a flood: every stream is
 * cut off (bounded, never buffered without limit), its slot comes back, and
 * the node keeps serving. */
typedef struct flood_job {
  int port;
  int fds[100];
  int n;
} flood_job;

static void open_readers(void *arg) {
  flood_job *f = arg;
  char req[256];
  snprintf(req, sizeof req,
           "GET /admin/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", TOKEN);
  for (int i = 0; i < 100; i++) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int small = 2048;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)f->port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
      close(fd);
      continue;
    }
    send(fd, req, strlen(req), MSG_NOSIGNAL);
    f->fds[f->n++] = fd;
  }
}

static void hang_up_mid_event(void *arg) {
  int port = *(int *)arg;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK_OK(connect(fd, (struct sockaddr *)&a, sizeof a));
  char req[256];
  snprintf(req, sizeof req,
           "GET /admin/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", TOKEN);
  send(fd, req, strlen(req), MSG_NOSIGNAL);
  char buf[4096];
  size_t len = 0;
  struct timeval tv = {.tv_sec = 10};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  while (len < sizeof buf - 1 && !memmem(buf, len, "event: hello\ndata: {", 20)) {
    ssize_t n = recv(fd, buf + len, 1, 0); /* byte by byte: stop inside the event */
    if (n <= 0) break;
    len += (size_t)n;
  }
  CHECK(memmem(buf, len, "event: hello\ndata: {", 20) != NULL);
  struct linger lg = {1, 0}; /* a reset, in the middle of the event */
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  close(fd);
}

KT_CASE(event_stream_drops_clients_that_do_not_read_and_keeps_serving) {
  setup();
  keel_http_server *s = start_admin(TOKEN, false, 128, 65536, 0);
  int port = keel_http_port(s);
  CHECK_OK(keel_blocking(hang_up_mid_event, &port));
  flood_job *f = calloc(1, sizeof *f);
  f->port = port;
  CHECK_OK(keel_blocking(open_readers, f));
  CHECK_EQ(f->n, 100);
  for (int i = 0; i < 300 && streams_open(s) < 100; i++)
    keel_sleep(20);
  CHECK(streams_open(s) >= 100);
  /* a flood of log lines: each goes to every stream */
  char pad[200];
  memset(pad, 'x', sizeof pad - 1);
  pad[sizeof pad - 1] = 0;
  for (int round = 0; round < 400; round++) {
    for (int i = 0; i < 50; i++)
      keel_log_info(NULL, "flood", KEEL_STR("pad", pad), KEEL_INT("i", i));
    keel_sleep(25);
    if (round % 20 == 19 && streams_open(s) == 0) break;
  }
  CHECK_EQ(streams_open(s), 0); /* every reader that never read was cut off */
  CHECK_EQ(status_of(s, "GET", "/health/live", NULL), 200);
  json_t *o = overview(s);
  CHECK_EQ(json_integer_value(json_object_get(o, "streams")), 0);
  json_decref(o);
  /* the server holds no connection of theirs any more (the overview's own
   * is the one left, or none) */
  CHECK(keel_http_connections(s) <= 1);
  for (int i = 0; i < f->n; i++)
    close(f->fds[i]);
  free(f);
  teardown(s);
}

KT_MAIN(KT_ENTRY(with_a_token_reads_need_it_and_probes_stay_open),
        KT_ENTRY(read_open_lets_reads_through_but_not_actions),
        KT_ENTRY(without_a_token_actions_are_off_and_reads_are_open),
        KT_ENTRY(actions_are_rate_limited_per_client),
        KT_ENTRY(kill_validates_its_input_then_kills_with_the_reason),
        KT_ENTRY(restart_and_terminate_a_supervisors_child),
        KT_ENTRY(log_level_changes_at_run_time),
        KT_ENTRY(processes_sort_filter_limit_and_one_process),
        KT_ENTRY(process_page_lists_links_and_monitors_with_names),
        KT_ENTRY(tree_alerts_logs_http_and_panels),
        KT_ENTRY(event_stream_sends_hello_stats_and_process_events_and_is_capped),
        KT_ENTRY(event_stream_drops_clients_that_do_not_read_and_keeps_serving))
