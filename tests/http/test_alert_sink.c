/* test_alert_sink.c - alert delivery (keel/alert_sink.h) to a local receiver
 * (keel's own server in the same process): the JSON, Slack, Discord and
 * Alertmanager bodies byte for byte, the JSON body's HMAC-SHA256 signature,
 * a real alert from the alert manager delivered, the cooldown, and a sink
 * that is down (alerts dropped past the bound and counted, the node going
 * on).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "keel_test.h"

/* ---- the receiver ------------------------------------------------------------------ */

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static char g_body[8][2048];
static char g_sig[8][128];
static char g_path[8][64];
static int g_n;

static int h_hook(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)ud;
  size_t len;
  const char *b = keel_http_body(req, &len);
  const char *sig = keel_http_header(req, "x-keel-signature");
  pthread_mutex_lock(&g_lock);
  if (g_n < 8) { /* the first 8 are kept; all are counted */
    snprintf(g_body[g_n], sizeof g_body[0], "%.*s", (int)len, b ? b : "");
    snprintf(g_sig[g_n], sizeof g_sig[0], "%s", sig ? sig : "");
    snprintf(g_path[g_n], sizeof g_path[0], "%s", keel_http_path(req));
  }
  g_n++;
  pthread_mutex_unlock(&g_lock);
  return keel_http_reply_text(res, 200, "text/plain", "ok");
}

static int g_port;

static keel_http_server *start_receiver(void) {
  keel_http_router *r = keel_http_router_new();
  CHECK_OK(keel_http_route(r, "POST", "/hook", h_hook, NULL));
  CHECK_OK(keel_http_route(r, "POST", "/am/api/v2/alerts", h_hook, NULL));
  keel_http_opts o;
  keel_http_opts_init(&o);
  o.host = "127.0.0.1";
  keel_http_server *s;
  CHECK_OK(keel_http_start(&o, r, &s));
  g_port = keel_http_port(s);
  pthread_mutex_lock(&g_lock);
  g_n = 0;
  pthread_mutex_unlock(&g_lock);
  return s;
}

static int received(void) {
  pthread_mutex_lock(&g_lock);
  int n = g_n;
  pthread_mutex_unlock(&g_lock);
  return n;
}

/* Waits (liveness bound only) until n posts arrived. */
static void wait_received(int n) {
  for (int i = 0; i < 2000 && received() < n; i++)
    keel_sleep(5);
  CHECK_EQ(received(), n);
}

/* Waits (liveness bound only) until the sink counted n posts sent: the
 * receiver has them a moment before the sink has the answers. */
static void wait_sent(keel_alert_sink *s, uint64_t n) {
  keel_alert_sink_stats st;
  for (int i = 0; i < 2000; i++) {
    keel_alert_sink_stats_get(s, &st);
    if (st.sent >= n) break;
    keel_sleep(5);
  }
  CHECK_EQ(st.sent, n);
}

static const char *url(const char *path) {
  static char buf[128];
  snprintf(buf, sizeof buf, "http://127.0.0.1:%d%s", g_port, path);
  return buf;
}

static void start_alerts(void) {
  keel_alerts_opts o;
  keel_alerts_opts_init(&o);
  o.interval_ms = -1;
  o.errors_per_min = 2;
  CHECK_OK(keel_alerts_start(&o));
}

static keel_alert sample_alert(void) {
  keel_alert a;
  memset(&a, 0, sizeof a);
  snprintf(a.id, sizeof a.id, "alert-7");
  a.type = KEEL_ALERT_ERROR_RATE;
  a.threshold = 5;
  a.value = 7;
  snprintf(a.message, sizeof a.message, "Error rate exceeded threshold: 7 > 5");
  a.time_ms = 1764000000123;
  return a;
}

/* ---- bodies -------------------------------------------------------------------------- */

KT_CASE(json_body_is_as_documented_and_signed) {
  keel_http_server *srv = start_receiver();
  start_alerts();
  keel_alert_sink_opts o = {
      .format = KEEL_ALERT_SINK_JSON, .url = url("/hook"), .secret = "s3cret", .service = "orders"};
  keel_alert_sink *s;
  CHECK_OK(keel_alert_sink_start(&o, &s));
  keel_alert a = sample_alert();
  CHECK_OK(keel_alert_sink_push(s, KEEL_ALERTS_EV_TRIGGERED, &a));
  a.resolved_ms = a.time_ms + 60000;
  CHECK_OK(keel_alert_sink_push(s, KEEL_ALERTS_EV_RESOLVED, &a));
  wait_received(2);
  CHECK_STR(g_body[0],
            "{\"event\":\"triggered\",\"service\":\"orders\",\"alert\":{\"id\":\"alert-7\","
            "\"type\":\"high_error_rate\",\"severity\":\"critical\",\"process\":null,\"threshold\":"
            "5.0,\"value\":7.0,"
            "\"message\":\"Error rate exceeded threshold: 7 > 5\","
            "\"time\":\"2025-11-24T16:00:00.123Z\",\"resolvedAt\":null}}");
  CHECK_STR(g_body[1],
            "{\"event\":\"resolved\",\"service\":\"orders\",\"alert\":{\"id\":\"alert-7\","
            "\"type\":\"high_error_rate\",\"severity\":\"critical\",\"process\":null,\"threshold\":"
            "5.0,\"value\":7.0,"
            "\"message\":\"Error rate exceeded threshold: 7 > 5\","
            "\"time\":\"2025-11-24T16:00:00.123Z\",\"resolvedAt\":\"2025-11-24T16:01:00.123Z\"}}");
  /* the signature: HMAC-SHA256 of the body with the secret, in hex */
  unsigned char mac[32];
  unsigned int n = 0;
  HMAC(EVP_sha256(), "s3cret", 6, (const unsigned char *)g_body[0], strlen(g_body[0]), mac, &n);
  char want[80] = "sha256=";
  for (unsigned i = 0; i < n; i++)
    snprintf(want + 7 + 2 * i, 3, "%02x", mac[i]);
  CHECK_STR(g_sig[0], want);
  wait_sent(s, 2);
  keel_alert_sink_stop(s);
  CHECK_OK(keel_alerts_stop());
  CHECK_OK(keel_http_stop(srv));
}

KT_CASE(slack_discord_and_alertmanager_bodies) {
  keel_http_server *srv = start_receiver();
  start_alerts();
  keel_alert_sink *sl, *dc, *am;
  keel_alert_sink_opts o = {
      .format = KEEL_ALERT_SINK_SLACK, .url = url("/hook"), .service = "orders", .cooldown_ms = -1};
  CHECK_OK(keel_alert_sink_start(&o, &sl));
  keel_alert a = sample_alert();
  CHECK_OK(keel_alert_sink_push(sl, KEEL_ALERTS_EV_TRIGGERED, &a));
  wait_received(1);
  CHECK_STR(g_body[0],
            "{\"text\":\"[FIRING] high_error_rate (critical) on orders: Error rate exceeded "
            "threshold: 7 > 5\"}");
  CHECK_STR(g_sig[0], ""); /* only the JSON format is signed */
  o.format = KEEL_ALERT_SINK_DISCORD;
  CHECK_OK(keel_alert_sink_start(&o, &dc));
  a.resolved_ms = a.time_ms + 1000;
  CHECK_OK(keel_alert_sink_push(dc, KEEL_ALERTS_EV_RESOLVED, &a));
  wait_received(2);
  CHECK_STR(g_body[1], "{\"content\":\"[RESOLVED] high_error_rate (critical) on orders: Error rate "
                       "exceeded threshold: 7 > 5\"}");
  o.format = KEEL_ALERT_SINK_ALERTMANAGER;
  o.url = url("/am/");
  o.resend_ms = -1; /* no re-sends and no endsAt while firing: a body known in advance */
  CHECK_OK(keel_alert_sink_start(&o, &am));
  a = sample_alert();
  CHECK_OK(keel_alert_sink_push(am, KEEL_ALERTS_EV_TRIGGERED, &a));
  wait_received(3);
  CHECK_STR(g_path[2], "/am/api/v2/alerts");
  CHECK_STR(g_body[2],
            "[{\"labels\":{\"alertname\":\"high_error_rate\",\"service\":\"orders\","
            "\"severity\":\"critical\"},\"annotations\":{\"summary\":\"Error rate exceeded "
            "threshold: 7 > 5\",\"description\":\"value 7, threshold 5\"},"
            "\"startsAt\":\"2025-11-24T16:00:00.123Z\"}]");
  a.resolved_ms = a.time_ms + 60000;
  CHECK_OK(keel_alert_sink_push(am, KEEL_ALERTS_EV_RESOLVED, &a));
  wait_received(4);
  CHECK(strstr(g_body[3], "\"endsAt\":\"2025-11-24T16:01:00.123Z\"") != NULL);
  /* PagerDuty Events v2: trigger, then resolve under the same dedup_key */
  keel_alert_sink *pd;
  keel_alert_sink_opts po = {.format = KEEL_ALERT_SINK_PAGERDUTY,
                             .url = url("/hook"),
                             .secret = "R0UT1NG",
                             .service = "orders",
                             .cooldown_ms = -1};
  CHECK_OK(keel_alert_sink_start(&po, &pd));
  a = sample_alert();
  CHECK_OK(keel_alert_sink_push(pd, KEEL_ALERTS_EV_TRIGGERED, &a));
  wait_received(5);
  CHECK_STR(g_body[4],
            "{\"routing_key\":\"R0UT1NG\",\"event_action\":\"trigger\","
            "\"dedup_key\":\"orders:high_error_rate:0\",\"payload\":{\"summary\":\"Error rate "
            "exceeded threshold: 7 > 5\",\"source\":\"orders\",\"severity\":\"critical\","
            "\"timestamp\":\"2025-11-24T16:00:00.123Z\",\"custom_details\":{\"value\":7.0,"
            "\"threshold\":5.0}}}");
  CHECK_OK(keel_alert_sink_push(pd, KEEL_ALERTS_EV_RESOLVED, &a));
  wait_received(6);
  CHECK(strstr(g_body[5],
               "\"event_action\":\"resolve\",\"dedup_key\":\"orders:high_error_rate:0\"") != NULL);
  /* a PagerDuty sink needs its routing key */
  po.secret = NULL;
  keel_alert_sink *none;
  CHECK_EQ(keel_alert_sink_start(&po, &none), KEEL_EINVAL);
  keel_alert_sink_stop(sl);
  keel_alert_sink_stop(dc);
  keel_alert_sink_stop(am);
  keel_alert_sink_stop(pd);
  CHECK_OK(keel_alerts_stop());
  CHECK_OK(keel_http_stop(srv));
}

/* ---- from the alert manager, the cooldown, a receiver that is down ------------------- */

KT_CASE(an_alert_raised_by_the_manager_is_delivered) {
  /* error lines are counted by an initialised logger */
  char path[128];
  snprintf(path, sizeof path, "/tmp/keel_test_alert_sink_%d.log", (int)getpid());
  keel_log_opts lo;
  keel_log_opts_init(&lo);
  lo.file = path;
  CHECK_OK(keel_log_init(&lo));
  keel_http_server *srv = start_receiver();
  start_alerts();
  keel_alert_sink_opts o = {
      .format = KEEL_ALERT_SINK_JSON, .url = url("/hook"), .service = "orders"};
  keel_alert_sink *s;
  CHECK_OK(keel_alert_sink_start(&o, &s));
  CHECK_OK(keel_alerts_sweep_now()); /* the baseline of the error count */
  for (int i = 0; i < 3; i++)
    keel_log_error(NULL, "something broke", KEEL_INT("i", i));
  CHECK_OK(keel_alerts_sweep_now());
  wait_received(1);
  json_t *j = json_loads(g_body[0], 0, NULL);
  CHECK(j != NULL);
  CHECK_STR(json_string_value(json_object_get(j, "event")), "triggered");
  CHECK_STR(json_string_value(json_object_get(json_object_get(j, "alert"), "type")),
            "high_error_rate");
  json_decref(j);
  keel_alert_sink_stop(s);
  CHECK_OK(keel_alerts_stop());
  CHECK_OK(keel_http_stop(srv));
  keel_log_shutdown();
  unlink(path);
}

KT_CASE(cooldown_holds_back_a_repeat_and_its_resolution) {
  keel_http_server *srv = start_receiver();
  start_alerts();
  keel_alert_sink_opts o = {
      .format = KEEL_ALERT_SINK_SLACK, .url = url("/hook"), .cooldown_ms = 3600000};
  keel_alert_sink *s;
  CHECK_OK(keel_alert_sink_start(&o, &s));
  keel_alert a = sample_alert();
  CHECK_OK(keel_alert_sink_push(s, KEEL_ALERTS_EV_TRIGGERED, &a)); /* sent */
  CHECK_OK(keel_alert_sink_push(s, KEEL_ALERTS_EV_TRIGGERED, &a)); /* held back */
  CHECK_OK(keel_alert_sink_push(s, KEEL_ALERTS_EV_RESOLVED, &a));  /* its resolution too */
  a.type = KEEL_ALERT_FD_USAGE;                                    /* another key: sent */
  CHECK_OK(keel_alert_sink_push(s, KEEL_ALERTS_EV_TRIGGERED, &a));
  wait_received(2);
  keel_alert_sink_stats st;
  for (int i = 0; i < 2000; i++) {
    keel_alert_sink_stats_get(s, &st);
    if (st.suppressed == 1 && st.sent == 2) break;
    keel_sleep(5);
  }
  keel_sleep(100); /* nothing more comes (a later third post would show below) */
  CHECK_EQ(received(), 2);
  CHECK(strstr(g_body[1], "high_fd_usage") != NULL);
  keel_alert_sink_stats_get(s, &st);
  CHECK_EQ(st.sent, 2);
  CHECK_EQ(st.suppressed, 1);
  keel_alert_sink_stop(s);
  CHECK_OK(keel_alerts_stop());
  CHECK_OK(keel_http_stop(srv));
}

KT_CASE(a_receiver_that_is_down_drops_past_the_bound_and_counts) {
  start_alerts();
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK_OK(bind(fd, (struct sockaddr *)&sa, sizeof sa));
  socklen_t sl = sizeof sa;
  CHECK_OK(getsockname(fd, (struct sockaddr *)&sa, &sl));
  close(fd); /* nothing listens there now */
  char u[64];
  snprintf(u, sizeof u, "http://127.0.0.1:%d/hook", ntohs(sa.sin_port));
  keel_alert_sink_opts o = {.format = KEEL_ALERT_SINK_JSON,
                            .url = u,
                            .queue_max = 2,
                            .max_retries = -1,
                            .cooldown_ms = -1};
  keel_alert_sink *s;
  CHECK_OK(keel_alert_sink_start(&o, &s));
  keel_alert a = sample_alert();
  for (int i = 0; i < 10; i++) {
    a.pid = (keel_pid_t)(i + 1);
    CHECK_OK(keel_alert_sink_push(s, KEEL_ALERTS_EV_TRIGGERED, &a));
  }
  keel_alert_sink_stats st;
  for (int i = 0; i < 2000; i++) {
    keel_alert_sink_stats_get(s, &st);
    if (st.failed + st.dropped == 10) break;
    keel_sleep(5);
  }
  CHECK_EQ(st.failed + st.dropped, 10);
  CHECK_EQ(st.sent, 0);
  CHECK(st.dropped >= 7); /* at most one in flight and two queued got their try */
  /* the node goes on: the sink still takes alerts */
  CHECK_OK(keel_alert_sink_push(s, KEEL_ALERTS_EV_TRIGGERED, &a));
  keel_alert_sink_stop(s);
  CHECK_OK(keel_alerts_stop());
}

KT_CASE(sinks_from_the_environment) {
  start_alerts();
  keel_alert_sink *s[2];
  unsetenv("ALERT_WEBHOOK_URL");
  unsetenv("ALERTMANAGER_URL");
  CHECK_EQ(keel_alert_sinks_from_env("svc", s, 2), 0);
  setenv("ALERT_WEBHOOK_URL", "http://127.0.0.1:9/hook", 1);
  setenv("ALERT_WEBHOOK_FORMAT", "teams", 1);
  CHECK_EQ(keel_alert_sinks_from_env("svc", s, 2), KEEL_EINVAL);
  setenv("ALERT_WEBHOOK_FORMAT", "slack", 1);
  setenv("ALERTMANAGER_URL", "http://127.0.0.1:9", 1);
  CHECK_EQ(keel_alert_sinks_from_env("svc", s, 2), 2);
  keel_alert_sink_stop(s[0]);
  keel_alert_sink_stop(s[1]);
  unsetenv("ALERT_WEBHOOK_URL");
  unsetenv("ALERT_WEBHOOK_FORMAT");
  unsetenv("ALERTMANAGER_URL");
  CHECK_OK(keel_alerts_stop());
}

/* ---- a real Alertmanager (run by test_alert_sink_am.sh; skipped without it) ---------- */

/* The alerts Alertmanager lists now whose alertname is name and whose
 * service label is svc. */
static int am_count_of(keel_http_client *c, const char *base, const char *svc, const char *name) {
  char u[160];
  snprintf(u, sizeof u, "%s/api/v2/alerts", base);
  keel_http_client_res r;
  json_t *j = NULL;
  CHECK_OK(keel_http_client_json(c, "GET", u, NULL, NULL, &r, &j));
  CHECK_EQ(r.status, 200);
  int n = 0;
  size_t i;
  json_t *v;
  json_array_foreach(j, i, v) {
    json_t *l = json_object_get(v, "labels");
    const char *an = json_string_value(json_object_get(l, "alertname"));
    const char *sv = json_string_value(json_object_get(l, "service"));
    if (an && sv && strcmp(an, name) == 0 && strcmp(sv, svc) == 0) n++;
  }
  json_decref(j);
  keel_http_client_res_free(&r);
  return n;
}

static int am_count(keel_http_client *c, const char *base, const char *svc) {
  return am_count_of(c, base, svc, "high_error_rate");
}

static keel_alert_sink_stats sink_stats(keel_alert_sink *s) {
  keel_alert_sink_stats st;
  keel_alert_sink_stats_get(s, &st);
  return st;
}

/* A sink with a minimum severity sends what reaches it and counts the rest;
 * the test alert (info) always goes. */
KT_CASE(min_severity_filters_but_not_the_test_alert) {
  keel_http_server *srv = start_receiver();
  start_alerts();
  keel_alert_sink_opts o = {.format = KEEL_ALERT_SINK_SLACK,
                            .url = url("/hook"),
                            .service = "orders",
                            .cooldown_ms = -1,
                            .min_severity = KEEL_ALERT_CRITICAL};
  keel_alert_sink *s;
  CHECK_OK(keel_alert_sink_start(&o, &s));
  keel_alert a = sample_alert();
  a.type = KEEL_ALERT_QUEUE_SIZE; /* warning by its type */
  CHECK_OK(keel_alert_sink_push(s, KEEL_ALERTS_EV_TRIGGERED, &a));
  a = sample_alert(); /* error rate: critical */
  CHECK_OK(keel_alert_sink_push(s, KEEL_ALERTS_EV_TRIGGERED, &a));
  a.type = KEEL_ALERT_HEALTH;
  a.severity = KEEL_ALERT_WARNING; /* a degraded node: its own severity, not the type's */
  CHECK_OK(keel_alert_sink_push(s, KEEL_ALERTS_EV_TRIGGERED, &a));
  CHECK_OK(keel_alert_sink_test(s));
  wait_sent(s, 2);
  CHECK_EQ(sink_stats(s).filtered, 2);
  CHECK_EQ(received(), 2);
  CHECK(strstr(g_body[0], "high_error_rate (critical)") != NULL);
  CHECK(strstr(g_body[1], "test_alert (info)") != NULL);
  keel_alert_sink_opts bad = o;
  bad.min_severity = 4;
  keel_alert_sink *none;
  CHECK_EQ(keel_alert_sink_start(&bad, &none), KEEL_EINVAL);
  keel_alert_sink_stop(s);
  CHECK_OK(keel_alerts_stop());
  CHECK_OK(keel_http_stop(srv));
}

/* Alertmanager: a firing alert is posted again every resend_ms with endsAt
 * four intervals ahead, until it resolves; the test alert is not re-sent. */
KT_CASE(alertmanager_firing_alerts_are_sent_again_until_resolved) {
  keel_http_server *srv = start_receiver();
  start_alerts();
  keel_alert_sink_opts o = {.format = KEEL_ALERT_SINK_ALERTMANAGER,
                            .url = url("/am"),
                            .service = "orders",
                            .resend_ms = 40};
  keel_alert_sink *s;
  CHECK_OK(keel_alert_sink_start(&o, &s));
  CHECK_OK(keel_alert_sink_test(s));
  wait_sent(s, 1);
  keel_alert a = sample_alert();
  CHECK_OK(keel_alert_sink_push(s, KEEL_ALERTS_EV_TRIGGERED, &a));
  wait_sent(s, 2);
  for (int i = 0; i < 2000 && sink_stats(s).resent < 3; i++)
    keel_sleep(5);
  CHECK(sink_stats(s).resent >= 3);
  for (int i = 0; i < 2000 && received() < 4; i++)
    keel_sleep(5);
  CHECK(received() >= 4);
  /* every re-send is the error alert, with an endsAt; the test alert had none */
  CHECK(strstr(g_body[0], "test_alert") && !strstr(g_body[0], "endsAt"));
  for (int i = 2; i < 4; i++) {
    CHECK(strstr(g_body[i], "high_error_rate") != NULL);
    CHECK(strstr(g_body[i], "\"endsAt\":") != NULL);
  }
  a.resolved_ms = a.time_ms + 1000;
  CHECK_OK(keel_alert_sink_push(s, KEEL_ALERTS_EV_RESOLVED, &a));
  wait_sent(s, 3);
  uint64_t resent = sink_stats(s).resent;
  keel_sleep(200); /* five intervals: a re-send now would be of a resolved alert */
  CHECK_EQ(sink_stats(s).resent, resent);
  keel_alert_sink_stop(s);
  CHECK_OK(keel_alerts_stop());
  CHECK_OK(keel_http_stop(srv));
}

KT_CASE(alertmanager_lists_then_resolves) {
  const char *base = getenv("KEEL_TEST_AM_URL");
  if (!base) {
    fprintf(stderr, "skipped: run by test_alert_sink_am.sh (KEEL_TEST_AM_URL)\n");
    return;
  }
  start_alerts();
  keel_http_client *c;
  CHECK_OK(keel_http_client_new(NULL, &c));
  /* re-sent every 300 ms, so each post says endsAt 1.2 s ahead */
  keel_alert_sink_opts o = {.format = KEEL_ALERT_SINK_ALERTMANAGER,
                            .url = base,
                            .service = "keel-am-test",
                            .client = c,
                            .resend_ms = 300};
  keel_alert_sink *s;
  CHECK_OK(keel_alert_sink_start(&o, &s));
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  keel_alert a = sample_alert();
  a.time_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
  CHECK_OK(keel_alert_sink_push(s, KEEL_ALERTS_EV_TRIGGERED, &a));
  wait_sent(s, 1);
  int n = 0;
  for (int i = 0; i < 200 && (n = am_count(c, base, "keel-am-test")) == 0; i++)
    keel_sleep(50);
  CHECK_EQ(n, 1); /* listed, active */
  /* past the first post's endsAt: still active, because it was sent again */
  keel_sleep(2500);
  CHECK(sink_stats(s).resent >= 2);
  CHECK_EQ(am_count(c, base, "keel-am-test"), 1);
  clock_gettime(CLOCK_REALTIME, &ts);
  a.resolved_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
  CHECK_OK(keel_alert_sink_push(s, KEEL_ALERTS_EV_RESOLVED, &a));
  wait_sent(s, 2);
  for (int i = 0; i < 200 && (n = am_count(c, base, "keel-am-test")) != 0; i++)
    keel_sleep(50);
  CHECK_EQ(n, 0); /* resolved: no longer listed as firing */
  /* a node that stops sending (here: the sink stops): its firing alert
   * lapses at its endsAt instead of firing forever */
  a.type = KEEL_ALERT_FD_USAGE;
  snprintf(a.id, sizeof a.id, "alert-8");
  CHECK_OK(keel_alert_sink_push(s, KEEL_ALERTS_EV_TRIGGERED, &a));
  wait_sent(s, 3);
  for (int i = 0; i < 200 && (n = am_count_of(c, base, "keel-am-test", "high_fd_usage")) == 0; i++)
    keel_sleep(50);
  CHECK_EQ(n, 1);
  keel_alert_sink_stop(s);
  for (int i = 0; i < 200 && (n = am_count_of(c, base, "keel-am-test", "high_fd_usage")) != 0; i++)
    keel_sleep(50);
  CHECK_EQ(n, 0);
  keel_http_client_free(c);
  CHECK_OK(keel_alerts_stop());
}

KT_MAIN(KT_ENTRY(json_body_is_as_documented_and_signed),
        KT_ENTRY(slack_discord_and_alertmanager_bodies),
        KT_ENTRY(an_alert_raised_by_the_manager_is_delivered),
        KT_ENTRY(cooldown_holds_back_a_repeat_and_its_resolution),
        KT_ENTRY(a_receiver_that_is_down_drops_past_the_bound_and_counts),
        KT_ENTRY(sinks_from_the_environment), KT_ENTRY(alertmanager_lists_then_resolves),
        KT_ENTRY(min_severity_filters_but_not_the_test_alert),
        KT_ENTRY(alertmanager_firing_alerts_are_sent_again_until_resolved))
