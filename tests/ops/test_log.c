/* test_log.c - structured logs: levels, JSON encoding, context, redaction,
 * buffering and sinks.
 *
 * Each case logs to a fresh file under /tmp, flushes, and reads the file
 * back. Lines are compared exactly after their 24-character timestamp, which
 * is checked for shape. The "no line lost" case re-runs this executable as a
 * child (argv[1] names the child case, an environment variable gives it its
 * file) so that the child's whole life, stop included, is observed from
 * outside. The jq_sample_lines case is a no-op unless KT_LOG_JQ_FILE is set:
 * test_log_jq.sh runs it to produce lines that jq then parses.
 */
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stddef.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "keel_test.h"
#include "keel/log.h"

extern char **environ;

static char g_path[256];

static const char *tmp_path(const char *tag) {
  snprintf(g_path, sizeof g_path, "/tmp/keel_test_log_%d_%s.log", (int)getpid(), tag);
  unlink(g_path);
  return g_path;
}

static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return strdup("");
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *s = malloc((size_t)n + 1);
  CHECK(s != NULL);
  CHECK(fread(s, 1, (size_t)n, f) == (size_t)n);
  s[n] = 0;
  fclose(f);
  return s;
}

/* Copies the line at *cur (up to its newline) into out, NUL-terminated, and
 * moves *cur past it; false at the end of the text. Parsing a copy keeps the
 * sanitizers' string interceptors from scanning the whole rest of the file
 * on each call. */
static bool next_line(const char **cur, char *out, size_t cap) {
  const char *l = *cur;
  if (!*l) return false;
  const char *nl = memchr(l, '\n', strnlen(l, cap));
  CHECK(nl != NULL); /* every line ends with a newline and fits */
  memcpy(out, l, (size_t)(nl - l));
  out[nl - l] = 0;
  *cur = nl + 1;
  return true;
}

static size_t count_lines(const char *s) {
  size_t n = 0;
  for (; *s; s++)
    n += *s == '\n';
  return n;
}

/* Starts logging to a fresh file with options tweaked by the caller. */
static void start(const char *tag, keel_log_opts *o) {
  keel_log_opts d;
  if (!o) {
    keel_log_opts_init(&d);
    o = &d;
  }
  if (o->level == 0) o->level = KEEL_LOG_TRACE;
  if (o->format == 0) o->format = KEEL_LOG_JSON;
  if (!o->service) o->service = "svc";
  o->file = tmp_path(tag);
  CHECK_OK(keel_log_init(o));
}

static char *stop_and_read(void) {
  CHECK_OK(keel_log_shutdown());
  char *s = slurp(g_path);
  unlink(g_path);
  return s;
}

static bool digits(const char *s, int n) {
  for (int i = 0; i < n; i++)
    if (s[i] < '0' || s[i] > '9') return false;
  return true;
}

/* Checks line i (0-based) of text: {"time":"YYYY-MM-DDTHH:MM:SS.mmmZ" then
 * exactly `rest` up to the newline. */
static void check_json_line(const char *text, int i, const char *rest) {
  const char *l = text;
  for (int k = 0; k < i; k++) {
    l = strchr(l, '\n');
    CHECK(l != NULL);
    l++;
  }
  const char *nl = strchr(l, '\n');
  CHECK(nl != NULL);
  CHECK(strncmp(l, "{\"time\":\"", 9) == 0);
  const char *t = l + 9;
  CHECK(digits(t, 4) && t[4] == '-' && digits(t + 5, 2) && t[7] == '-' && digits(t + 8, 2));
  CHECK(t[10] == 'T' && digits(t + 11, 2) && t[13] == ':' && digits(t + 14, 2) && t[16] == ':');
  CHECK(digits(t + 17, 2) && t[19] == '.' && digits(t + 20, 3) && t[23] == 'Z' && t[24] == '"');
  size_t n = (size_t)(nl - (t + 25));
  if (n != strlen(rest) || memcmp(t + 25, rest, n) != 0) {
    fprintf(stderr, "line %d:\n  got  %.*s\n  want %s\n", i, (int)n, t + 25, rest);
    CHECK(!"line differs");
  }
}

/* ---- levels ------------------------------------------------------------- */

static int evaluated;
static int64_t count_eval(void) {
  return ++evaluated;
}

KT_CASE(levels_filter_by_minimum_from_env_and_change_at_run_time) {
  keel_log_level l;
  CHECK_OK(keel_log_level_parse("WARN", &l));
  CHECK_EQ(l, KEEL_LOG_WARN);
  CHECK_EQ(keel_log_level_parse("verbose", &l), KEEL_EINVAL);
  CHECK(strcmp(keel_log_level_name(KEEL_LOG_FATAL), "fatal") == 0);

  setenv("LOG_LEVEL", "loud", 1);
  keel_log_opts o;
  keel_log_opts_init(&o);
  o.file = tmp_path("levels");
  CHECK_EQ(keel_log_init(&o), KEEL_EINVAL);
  setenv("LOG_LEVEL", "warn", 1);
  setenv("LOG_FORMAT", "xml", 1);
  CHECK_EQ(keel_log_init(&o), KEEL_EINVAL);
  unsetenv("LOG_FORMAT");
  CHECK_OK(keel_log_init(&o));
  unsetenv("LOG_LEVEL");
  CHECK_EQ(keel_log_init(&o), KEEL_ESTATE);
  CHECK_EQ(keel_log_get_level(), KEEL_LOG_WARN);

  keel_log_info(NULL, "skipped", KEEL_INT("n", count_eval()));
  CHECK_EQ(evaluated, 0); /* a disabled level does not evaluate its fields */
  keel_log_warn(NULL, "kept warn");
  keel_log_error(NULL, "kept error");
  CHECK_OK(keel_log_set_level(KEEL_LOG_DEBUG));
  CHECK_EQ(keel_log_set_level((keel_log_level)9), KEEL_EINVAL);
  keel_log_trace(NULL, "skipped trace");
  keel_log_debug(NULL, "kept debug", KEEL_INT("n", count_eval()));
  CHECK_EQ(evaluated, 1);
  CHECK_OK(keel_log_set_level(KEEL_LOG_OFF));
  keel_log_fatal(NULL, "skipped fatal");
  CHECK_OK(keel_log_set_level(KEEL_LOG_INFO));

  CHECK_OK(keel_log_flush());
  keel_log_stats st;
  keel_log_stats_get(&st);
  CHECK_EQ(st.lines[KEEL_LOG_TRACE], 0);
  CHECK_EQ(st.lines[KEEL_LOG_DEBUG], 1);
  CHECK_EQ(st.lines[KEEL_LOG_INFO], 0);
  CHECK_EQ(st.lines[KEEL_LOG_WARN], 1);
  CHECK_EQ(st.lines[KEEL_LOG_ERROR], 1);
  CHECK_EQ(st.lines[KEEL_LOG_FATAL], 0);
  CHECK_EQ(st.dropped, 0);
  char *s = stop_and_read();
  CHECK_EQ(count_lines(s), 3);
  check_json_line(s, 0, ",\"level\":\"warn\",\"msg\":\"kept warn\",\"service\":\"keel\"}");
  check_json_line(s, 2,
                  ",\"level\":\"debug\",\"msg\":\"kept debug\",\"service\":\"keel\",\"n\":1}");
  free(s);
  CHECK_EQ(keel_log_shutdown(), KEEL_ESTATE);
  CHECK_EQ(keel_log_flush(), KEEL_ESTATE);
}

/* ---- encoding ----------------------------------------------------------- */

KT_CASE(json_line_has_time_level_msg_service_and_typed_fields) {
  start("fields", NULL);
  keel_log_info(NULL, "order placed", KEEL_STR("user", "ann"), KEEL_INT("delta", -42),
                KEEL_INT("min", INT64_MIN), KEEL_UINT("max", UINT64_MAX),
                KEEL_DOUBLE("price", 3.25), KEEL_BOOL("paid", true), KEEL_BOOL("gift", false),
                KEEL_NULL("coupon"), KEEL_STR("note", NULL),
                KEEL_OBJ("addr", KEEL_STR("city", "Oslo"), KEEL_OBJ("geo", KEEL_INT("z", 0))),
                KEEL_OBJ("empty"));
  keel_log_error(NULL, NULL);
  char *s = stop_and_read();
  check_json_line(s, 0,
                  ",\"level\":\"info\",\"msg\":\"order placed\",\"service\":\"svc\","
                  "\"user\":\"ann\",\"delta\":-42,\"min\":-9223372036854775808,"
                  "\"max\":18446744073709551615,\"price\":3.25,\"paid\":true,\"gift\":false,"
                  "\"coupon\":null,\"note\":null,\"addr\":{\"city\":\"Oslo\",\"geo\":{\"z\":0}},"
                  "\"empty\":{}}");
  check_json_line(s, 1, ",\"level\":\"error\",\"msg\":\"\",\"service\":\"svc\"}");
  free(s);
}

KT_CASE(escapes_quotes_backslash_controls_and_replaces_invalid_utf8) {
  start("escape", NULL);
  keel_log_info(NULL, "say \"hi\" \\ \n\t\r\b\f\x01\x1f\x7f",
                KEEL_STR("utf8", "h\xc3\xa9llo \xe2\x9c\x93 \xf0\x9f\x98\x80"),
                KEEL_STR("bad", "\xff a \xc3 \xe0\x80\x80 \xed\xa0\x80 \xf4\x90\x80\x80 \xc0\xaf"),
                KEEL_STR("cut", "end\xe2\x9c"), KEEL_STR("k\"ey\n", "v"));
  char *s = stop_and_read();
#define R "\xef\xbf\xbd"
  check_json_line(
      s, 0,
      ",\"level\":\"info\",\"msg\":\"say \\\"hi\\\" \\\\ \\n\\t\\r\\b\\f\\u0001\\u001f"
      "\x7f\",\"service\":\"svc\",\"utf8\":\"h\xc3\xa9llo \xe2\x9c\x93 \xf0\x9f\x98\x80\","
      "\"bad\":\"" R " a " R " " R R R " " R R R " " R R R R " " R R "\","
      "\"cut\":\"end" R R "\",\"k\\\"ey\\n\":\"v\"}");
#undef R
  free(s);
}

KT_CASE(doubles_are_shortest_round_trip_and_non_finite_is_null) {
  start("double", NULL);
  keel_log_info(NULL, "d", KEEL_DOUBLE("a", 0.1), KEEL_DOUBLE("b", -0.5), KEEL_DOUBLE("c", 100.0),
                KEEL_DOUBLE("d", 1e-7), KEEL_DOUBLE("e", 1.5e300), KEEL_DOUBLE("f", 0.000001),
                KEEL_DOUBLE("g", NAN), KEEL_DOUBLE("h", -INFINITY), KEEL_DOUBLE("i", -0.0),
                KEEL_DOUBLE("j", 123456.789), KEEL_DOUBLE("k", 1.0 / 3));
  /* Random bit patterns: every finite one must read back exactly. */
  uint64_t x = 88172645463325252ull;
  double vals[2000];
  int nv = 0;
  while (nv < 2000) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    double d;
    uint64_t bits = (nv % 2) ? x : (x >> 12) | ((uint64_t)(1023 + (int)(x % 40) - 20) << 52);
    memcpy(&d, &bits, sizeof d);
    if (!isfinite(d)) continue;
    vals[nv++] = d;
    keel_log_info(NULL, "r", KEEL_DOUBLE("v", d));
  }
  char *s = stop_and_read();
  check_json_line(s, 0,
                  ",\"level\":\"info\",\"msg\":\"d\",\"service\":\"svc\",\"a\":0.1,\"b\":-0.5,"
                  "\"c\":100,\"d\":1e-07,\"e\":1.5e+300,\"f\":0.000001,\"g\":null,\"h\":null,"
                  "\"i\":0,\"j\":123456.789,\"k\":0.3333333333333333}");
  const char *cur = s;
  char line[512];
  CHECK(next_line(&cur, line, sizeof line)); /* the fixed values, checked above */
  for (int i = 0; i < nv; i++) {
    CHECK(next_line(&cur, line, sizeof line));
    const char *p = strstr(line, "\"v\":");
    CHECK(p != NULL);
    p += 4;
    char *end;
    double back = strtod(p, &end);
    CHECK(*end == '}');
    CHECK(memcmp(&back, &vals[i], sizeof back) == 0 || (back == 0 && vals[i] == 0));
  }
  free(s);
}

/* ---- bound context ------------------------------------------------------ */

KT_CASE(child_loggers_carry_their_parents_fields) {
  start("child", NULL);
  keel_logger *db = keel_log_child(NULL, KEEL_STR("module", "db"));
  CHECK(db != NULL);
  keel_logger *shard = keel_log_child(db, KEEL_INT("shard", 3), KEEL_OBJ("o", KEEL_BOOL("b", 1)));
  CHECK(shard != NULL);
  keel_log_free(db); /* children do not refer to their parent */
  keel_log_warn(shard, "slow query", KEEL_INT("ms", 250));
  keel_log_free(shard);
  keel_log_free(NULL);
  char *s = stop_and_read();
  check_json_line(
      s, 0,
      ",\"level\":\"warn\",\"msg\":\"slow query\",\"service\":\"svc\",\"module\":\"db\","
      "\"shard\":3,\"o\":{\"b\":true},\"ms\":250}");
  free(s);
}

static void log_without_context(void *arg) {
  keel_log_info(NULL, "other");
}

static void *ctx_outside_process(void *arg) {
  int *rc = arg;
  rc[0] = keel_log_context_set(KEEL_STR("k", "v"));
  rc[1] = keel_log_context_clear();
  rc[2] = keel_log_context_get() == NULL;
  char *b;
  size_t n;
  rc[3] = keel_log_context_export(&b, &n);
  rc[4] = keel_log_context_push(NULL, 0);
  rc[5] = keel_log_context_pop();
  return NULL;
}

KT_CASE(process_context_is_on_every_line_it_writes_and_only_its_own) {
  start("ctx", NULL);
  char *g = keel_log_context_get();
  CHECK(g && strcmp(g, "{}") == 0);
  free(g);
  CHECK_OK(keel_log_context_clear());
  CHECK_OK(keel_log_context_set(KEEL_STR("correlationId", "c-1")));
  keel_log_info(NULL, "one", KEEL_INT("n", 1));
  keel_pid_t other;
  keel_spawn_opts so;
  keel_spawn_opts_init(&so);
  so.monitor = true;
  keel_ref_t ref;
  so.monitor_ref = &ref;
  CHECK_OK(keel_spawn(log_without_context, NULL, &so, &other));
  keel_msg_free(kt_recv(10000)); /* DOWN */
  CHECK_OK(keel_log_context_add(KEEL_STR("user", "ann")));
  g = keel_log_context_get();
  CHECK(g && strcmp(g, "{\"correlationId\":\"c-1\",\"user\":\"ann\"}") == 0);
  free(g);
  keel_log_info(NULL, "two");
  CHECK_OK(keel_log_context_set(KEEL_STR("correlationId", "c-2")));
  keel_log_info(NULL, "three");
  CHECK_OK(keel_log_context_clear());
  keel_log_info(NULL, "four");
  g = keel_log_context_get();
  CHECK(g && strcmp(g, "{}") == 0);
  free(g);
  CHECK_OK(keel_log_context_set(KEEL_STR("left", "for the exit cleanup")));

  pthread_t th;
  int rc[6];
  CHECK_OK(pthread_create(&th, NULL, ctx_outside_process, rc));
  CHECK_OK(pthread_join(th, NULL));
  CHECK_EQ(rc[0], KEEL_ENOTPROC);
  CHECK_EQ(rc[1], KEEL_ENOTPROC);
  CHECK_EQ(rc[2], 1);
  CHECK_EQ(rc[3], KEEL_ENOTPROC);
  CHECK_EQ(rc[4], KEEL_ENOTPROC);
  CHECK_EQ(rc[5], KEEL_ENOTPROC);

  char *s = stop_and_read();
  CHECK_EQ(count_lines(s), 5);
  check_json_line(s, 0,
                  ",\"level\":\"info\",\"msg\":\"one\",\"service\":\"svc\","
                  "\"correlationId\":\"c-1\",\"n\":1}");
  check_json_line(s, 1, ",\"level\":\"info\",\"msg\":\"other\",\"service\":\"svc\"}");
  check_json_line(s, 2,
                  ",\"level\":\"info\",\"msg\":\"two\",\"service\":\"svc\","
                  "\"correlationId\":\"c-1\",\"user\":\"ann\"}");
  check_json_line(s, 3,
                  ",\"level\":\"info\",\"msg\":\"three\",\"service\":\"svc\","
                  "\"correlationId\":\"c-2\"}");
  check_json_line(s, 4, ",\"level\":\"info\",\"msg\":\"four\",\"service\":\"svc\"}");
  free(s);
}

enum { TAG_CALL = 7, TAG_DONE = 8 };

/* A stand-in for a gen_server: installs the caller's context for each
 * request, logs, restores its own. */
static void server(void *arg) {
  CHECK_OK(keel_log_context_set(KEEL_STR("role", "server")));
  keel_msg_t *m = kt_recv(10000);
  CHECK_EQ(keel_msg_tag(m), TAG_CALL);
  CHECK_OK(keel_log_context_push(keel_msg_data(m), keel_msg_size(m)));
  keel_log_info(NULL, "handling");
  CHECK_OK(keel_log_context_push(NULL, 0)); /* a call without context */
  keel_log_info(NULL, "nested");
  CHECK_OK(keel_log_context_pop());
  CHECK_OK(keel_log_context_pop());
  CHECK_EQ(keel_log_context_pop(), KEEL_ESTATE);
  keel_log_info(NULL, "back");
  CHECK_EQ(keel_log_context_push(",x", 2), KEEL_EINVAL);
  CHECK_EQ(keel_log_context_push("\"a\":1", 5), KEEL_EINVAL);
  /* exits with a pushed context: the exit cleanup frees the whole stack */
  CHECK_OK(keel_log_context_push(keel_msg_data(m), keel_msg_size(m)));
  keel_msg_free(m);
  kt_send_u64(*(keel_pid_t *)arg, TAG_DONE, 0);
}

KT_CASE(context_travels_with_a_call_and_is_restored_after) {
  start("call", NULL);
  static keel_pid_t client;
  client = keel_self();
  char *blob;
  size_t len;
  CHECK_OK(keel_log_context_export(&blob, &len));
  CHECK(blob == NULL && len == 0);
  CHECK_OK(keel_log_context_set(KEEL_STR("correlationId", "req-9"), KEEL_STR("token", "t0p")));
  CHECK_OK(keel_log_context_export(&blob, &len));
  CHECK(blob != NULL && len > 0);
  keel_pid_t srv;
  CHECK_OK(keel_spawn(server, &client, NULL, &srv));
  keel_msg_t *m = keel_msg_copy(TAG_CALL, blob, len);
  CHECK(m != NULL);
  free(blob);
  CHECK_OK(keel_send(srv, m));
  keel_msg_t *done = kt_recv(10000);
  CHECK_EQ(keel_msg_tag(done), TAG_DONE);
  keel_msg_free(done);
  char *s = stop_and_read();
  CHECK_EQ(count_lines(s), 3);
  check_json_line(s, 0,
                  ",\"level\":\"info\",\"msg\":\"handling\",\"service\":\"svc\","
                  "\"correlationId\":\"req-9\",\"token\":\"[REDACTED]\"}");
  check_json_line(s, 1, ",\"level\":\"info\",\"msg\":\"nested\",\"service\":\"svc\"}");
  check_json_line(s, 2,
                  ",\"level\":\"info\",\"msg\":\"back\",\"service\":\"svc\",\"role\":\"server\"}");
  free(s);
}

/* The real thing: keel_log_init turns on context propagation through
 * gen_server, so a server's lines carry its caller's correlation id for that
 * call only (issue 4: "one id follows a request through every process"). */
static int corr_init(void *arg, void **state) {
  (void)arg;
  *state = NULL;
  return keel_log_context_set(KEEL_STR("role", "server"));
}

static int corr_call(void *st, keel_gs_from from, keel_msg_t **req, keel_msg_t **reply) {
  (void)st;
  (void)from;
  (void)req;
  keel_log_info(NULL, "handled");
  *reply = keel_msg_new(0, 0);
  return KEEL_GS_REPLY;
}

static int corr_cast(void *st, keel_msg_t **msg) {
  (void)st;
  (void)msg;
  keel_log_info(NULL, "cast");
  return KEEL_GS_OK;
}

static const keel_gen_server corr_server = {
    .init = corr_init, .handle_call = corr_call, .handle_cast = corr_cast};

KT_CASE(a_correlation_id_follows_a_gen_server_call) {
  start("gscall", NULL);
  keel_pid_t srv;
  CHECK_OK(keel_gs_start(&corr_server, NULL, NULL, &srv, NULL));
  CHECK_OK(keel_log_context_set(KEEL_STR("correlationId", "req-77")));
  keel_msg_t *r;
  CHECK_OK(keel_gs_call(srv, keel_msg_new(0, 0), &r, 0, NULL));
  keel_msg_free(r);
  CHECK_OK(keel_gs_cast(srv, keel_msg_new(0, 0)));
  CHECK_OK(keel_log_context_clear());
  CHECK_OK(keel_gs_call(srv, keel_msg_new(0, 0), &r, 0, NULL)); /* no context now */
  keel_msg_free(r);
  CHECK_OK(keel_gs_stop(srv, KEEL_REASON_NORMAL, NULL, 0));
  char *s = stop_and_read();
  CHECK_EQ(count_lines(s), 3);
  check_json_line(s, 0,
                  ",\"level\":\"info\",\"msg\":\"handled\",\"service\":\"svc\","
                  "\"correlationId\":\"req-77\"}");
  check_json_line(s, 1,
                  ",\"level\":\"info\",\"msg\":\"cast\",\"service\":\"svc\","
                  "\"correlationId\":\"req-77\"}");
  check_json_line(s, 2,
                  ",\"level\":\"info\",\"msg\":\"handled\",\"service\":\"svc\","
                  "\"role\":\"server\"}");
  free(s);
}

/* ---- redaction ---------------------------------------------------------- */

KT_CASE(redaction_hides_sensitive_keys_at_any_depth_and_in_bound_fields) {
  keel_log_opts o;
  keel_log_opts_init(&o);
  static const char *const extra[] = {"ssn", "X-Session", NULL};
  o.redact = extra;
  start("redact", &o);
  keel_logger *lg = keel_log_child(NULL, KEEL_STR("Authorization", "Bearer abc"));
  CHECK(lg != NULL);
  CHECK_OK(keel_log_context_set(KEEL_STR("cookie", "sid=1"), KEEL_STR("rid", "r1")));
  keel_log_info(lg, "login", KEEL_STR("password", "hunter2"), KEEL_STR("TOKEN", "x"),
                KEEL_STR("passwords", "kept"),
                KEEL_OBJ("user", KEEL_STR("name", "ann"),
                         KEEL_OBJ("creds", KEEL_STR("APIKEY", "k"), KEEL_INT("Secret", 5))),
                KEEL_OBJ("secret", KEEL_STR("inner", "v")), KEEL_STR("ssn", "123"),
                KEEL_STR("x-session", "s"), KEEL_STR("apiKey", "k2"));
  keel_log_free(lg);
  char *g = keel_log_context_get();
  CHECK(g && strcmp(g, "{\"cookie\":\"[REDACTED]\",\"rid\":\"r1\"}") == 0);
  free(g);
  char *s = stop_and_read();
  check_json_line(s, 0,
                  ",\"level\":\"info\",\"msg\":\"login\",\"service\":\"svc\","
                  "\"Authorization\":\"[REDACTED]\",\"cookie\":\"[REDACTED]\",\"rid\":\"r1\","
                  "\"password\":\"[REDACTED]\",\"TOKEN\":\"[REDACTED]\",\"passwords\":\"kept\","
                  "\"user\":{\"name\":\"ann\",\"creds\":{\"APIKEY\":\"[REDACTED]\","
                  "\"Secret\":\"[REDACTED]\"}},\"secret\":\"[REDACTED]\",\"ssn\":\"[REDACTED]\","
                  "\"x-session\":\"[REDACTED]\",\"apiKey\":\"[REDACTED]\"}");
  free(s);
}

/* ---- pretty ------------------------------------------------------------- */

KT_CASE(pretty_format_is_readable_and_coloured_on_request) {
  keel_log_opts o;
  keel_log_opts_init(&o);
  o.format = KEEL_LOG_PRETTY;
  o.color = -1;
  start("pretty", &o);
  CHECK_OK(keel_log_context_set(KEEL_STR("rid", "r,1")));
  keel_log_info(NULL, "hello\nworld", KEEL_STR("k", "a \"b\""), KEEL_INT("n", 3),
                KEEL_OBJ("o", KEEL_INT("a", 1), KEEL_INT("b", 2)));
  char *s = stop_and_read();
  /* "2026-11-22 01:02:03.456 INFO  ..." */
  CHECK(strlen(s) > 24 && digits(s, 4) && s[10] == ' ' && s[19] == '.' && s[23] == ' ');
  const char *want = "INFO  hello\\nworld (svc) rid=\"r,1\" k=\"a \\\"b\\\"\" n=3 "
                     "o={\"a\":1,\"b\":2}\n";
  if (strcmp(s + 24, want) != 0) {
    fprintf(stderr, "got  %s\nwant %s", s + 24, want);
    CHECK(!"pretty line differs");
  }
  free(s);

  o.color = 1;
  CHECK_OK(keel_log_context_clear());
  start("pretty2", &o);
  keel_log_error(NULL, "bad", KEEL_STR("k", "v"));
  s = stop_and_read();
  CHECK(strstr(s, "\x1b[31mERROR\x1b[0m bad (svc) \x1b[36mk\x1b[0m=\"v\"\n") != NULL);
  free(s);
}

/* ---- buffering, sinks, stats -------------------------------------------- */

KT_CASE(fatal_is_written_before_the_call_returns) {
  keel_log_opts o;
  keel_log_opts_init(&o);
  o.flush_ms = 600000; /* the interval never fires during the test */
  start("fatal", &o);
  keel_log_info(NULL, "before");
  keel_log_fatal(NULL, "disk gone", KEEL_STR("path", "/data"));
  char *s = slurp(g_path);
  CHECK_EQ(count_lines(s), 2);
  check_json_line(s, 1,
                  ",\"level\":\"fatal\",\"msg\":\"disk gone\",\"service\":\"svc\","
                  "\"path\":\"/data\"}");
  free(s);
  free(stop_and_read());
}

KT_CASE(stats_count_lines_by_level_and_dropped_lines) {
  keel_log_opts o;
  keel_log_opts_init(&o);
  o.buffer_size = 4096;
  o.overflow_wait_ms = -1; /* drop at once */
  start("stats", &o);
  static char big[5000];
  memset(big, 'x', sizeof big - 1);
  keel_log_info(NULL, "too long", KEEL_STR("big", big)); /* longer than a buffer: dropped */
  for (int i = 0; i < 3; i++)
    keel_log_info(NULL, "i");
  keel_log_warn(NULL, "w");
  CHECK_OK(keel_log_flush());
  keel_log_stats st;
  keel_log_stats_get(&st);
  CHECK_EQ(st.lines[KEEL_LOG_INFO], 3);
  CHECK_EQ(st.lines[KEEL_LOG_WARN], 1);
  CHECK_EQ(st.dropped, 1);
  CHECK_EQ(st.write_errors, 0);
  struct stat sb;
  CHECK_OK(stat(g_path, &sb));
  CHECK_EQ(st.bytes_written, sb.st_size);
  char *s = stop_and_read();
  CHECK_EQ(count_lines(s), 4);
  free(s);
}

KT_CASE(file_is_reopened_on_sighup_for_rotation) {
  start("rotate", NULL);
  char rotated[300];
  snprintf(rotated, sizeof rotated, "%s.1", g_path);
  keel_log_info(NULL, "one");
  CHECK_OK(keel_log_flush());
  CHECK_OK(rename(g_path, rotated));
  CHECK_OK(raise(SIGHUP));
  keel_log_info(NULL, "two");
  CHECK_OK(keel_log_flush());
  char *old = slurp(rotated);
  CHECK_EQ(count_lines(old), 1);
  CHECK(strstr(old, "\"msg\":\"one\"") != NULL);
  free(old);
  CHECK_OK(rename(g_path, rotated));
  CHECK_OK(keel_log_reopen());
  keel_log_info(NULL, "three");
  CHECK_OK(keel_log_flush());
  old = slurp(rotated);
  unlink(rotated);
  CHECK_EQ(count_lines(old), 1);
  CHECK(strstr(old, "\"msg\":\"two\"") != NULL);
  free(old);
  keel_log_stats st;
  keel_log_stats_get(&st);
  CHECK_EQ(st.reopens, 2);
  char *s = stop_and_read();
  CHECK_EQ(count_lines(s), 1);
  CHECK(strstr(s, "\"msg\":\"three\"") != NULL);
  free(s);
}

/* Many producers at once: processes on every scheduler and plain threads
 * (which then exit, so their buffers are reclaimed), through small buffers
 * that fill many times. Nothing is lost or torn. */
enum { PER_PRODUCER = 3000, N_PROCS = 6, N_THREADS = 2 };

static void produce(int who) {
  for (int i = 0; i < PER_PRODUCER; i++)
    keel_log_info(NULL, "line", KEEL_INT("w", who), KEEL_INT("i", i));
}

static void proc_producer(void *arg) {
  keel_log_context_set(KEEL_STR("p", "x"));
  int who = (int)(intptr_t)arg;
  for (int i = 0; i < PER_PRODUCER; i++) {
    keel_log_info(NULL, "line", KEEL_INT("w", who), KEEL_INT("i", i));
    if (i % 64 == 0) keel_yield(); /* let it move between schedulers */
  }
}

static void *thread_producer(void *arg) {
  produce((int)(intptr_t)arg);
  return NULL;
}

static void check_all_lines(const char *s, int producers) {
  static int next[64];
  memset(next, 0, sizeof next);
  size_t n = 0;
  char l[512];
  for (const char *cur = s; next_line(&cur, l, sizeof l);) {
    if (strstr(l, "\"msg\":\"last\"")) { /* logged after every producer's DOWN */
      CHECK(*cur == 0);
      continue;
    }
    n++;
    const char *w = strstr(l, "\"w\":");
    CHECK(w != NULL);
    int who = atoi(w + 4), i = atoi(strstr(w, "\"i\":") + 4);
    CHECK(who >= 0 && who < producers);
    CHECK_EQ(i, next[who]); /* in order per producer (a process that never waits stays put) */
    next[who]++;
  }
  CHECK_EQ(n, (size_t)producers * PER_PRODUCER);
}

KT_CASE(concurrent_producers_lose_nothing_through_small_buffers) {
  keel_log_opts o;
  keel_log_opts_init(&o);
  o.buffer_size = 16384;
  o.overflow_wait_ms = KEEL_INFINITY;
  start("many", &o);
  pthread_t th[N_THREADS];
  for (int t = 0; t < N_THREADS; t++)
    CHECK_OK(pthread_create(&th[t], NULL, thread_producer, (void *)(intptr_t)(N_PROCS + t)));
  for (int p = 0; p < N_PROCS; p++) {
    keel_spawn_opts so;
    keel_spawn_opts_init(&so);
    so.monitor = true;
    keel_ref_t ref;
    so.monitor_ref = &ref;
    so.scheduler = KEEL_ON_SCHEDULER(p % keel_sched_count());
    CHECK_OK(keel_spawn(proc_producer, (void *)(intptr_t)p, &so, NULL));
  }
  for (int p = 0; p < N_PROCS; p++)
    keel_msg_free(kt_recv(60000));
  for (int t = 0; t < N_THREADS; t++)
    CHECK_OK(pthread_join(th[t], NULL));
  CHECK_OK(keel_log_flush());
  keel_log_stats st;
  keel_log_stats_get(&st);
  CHECK_EQ(st.lines[KEEL_LOG_INFO], (N_PROCS + N_THREADS) * PER_PRODUCER);
  CHECK_EQ(st.dropped, 0);
  char *s = stop_and_read();
  /* Every producer's lines in order, a process's too when it moved between
   * schedulers (its lines then sit in several threads' buffers). */
  static int seen[N_PROCS + N_THREADS][PER_PRODUCER];
  memset(seen, 0, sizeof seen);
  size_t n = 0;
  int next_i[N_PROCS + N_THREADS] = {0};
  char l[512];
  for (const char *cur = s; next_line(&cur, l, sizeof l); n++) {
    CHECK(strncmp(l, "{\"time\":\"", 9) == 0);
    const char *w = strstr(l, "\"w\":");
    CHECK(w != NULL);
    int who = atoi(w + 4), i = atoi(strstr(w, "\"i\":") + 4);
    CHECK(who >= 0 && who < N_PROCS + N_THREADS && i >= 0 && i < PER_PRODUCER);
    seen[who][i]++;
    CHECK_EQ(i, next_i[who]);
    next_i[who]++;
    if (who < N_PROCS) CHECK(strstr(l, "\"p\":\"x\"") != NULL);
    CHECK(l[strlen(l) - 1] == '}');
  }
  CHECK_EQ(n, (size_t)(N_PROCS + N_THREADS) * PER_PRODUCER);
  for (int w = 0; w < N_PROCS + N_THREADS; w++)
    for (int i = 0; i < PER_PRODUCER; i++)
      CHECK_EQ(seen[w][i], 1);
  free(s);
}

/* Lines come out in the order they were logged whenever one happened before
 * the other, whichever threads logged them (issue 11: the microservice's
 * config_loaded, logged on the main thread before the runtime started, came
 * out after app_started, logged later on a scheduler). A plain thread logs
 * step 0; then two processes pinned to different schedulers play ping-pong,
 * each logging the step it received before sending the next one; the case
 * logs the last step once both are done. Each step is caused by the one
 * before, so the file must read 0, 1, 2, ... in order. First with a writer
 * that runs only at the end (the order comes from how the buffers are
 * merged), then with one draining every millisecond through tiny buffers (a
 * drain may fall between any two steps). */
enum { TAG_PEER = 20, TAG_STEP = 21, TAG_PONG_DONE = 22 };

typedef struct pong_peers {
  keel_pid_t peer, parent;
} pong_peers;

static void *log_step_zero(void *arg) {
  (void)arg;
  keel_log_info(NULL, "step", KEEL_INT("n", 0));
  return NULL;
}

static void pong(void *arg) {
  uint64_t last = (uint64_t)(uintptr_t)arg;
  keel_msg_t *m = kt_recv(60000);
  CHECK_EQ(keel_msg_tag(m), TAG_PEER);
  pong_peers pp;
  CHECK(keel_msg_size(m) == sizeof pp);
  memcpy(&pp, keel_msg_data(m), sizeof pp);
  keel_msg_free(m);
  for (;;) {
    m = kt_recv(60000);
    CHECK_EQ(keel_msg_tag(m), TAG_STEP);
    uint64_t n = kt_u64(m);
    keel_msg_free(m);
    if (n > last) {
      if (n == last + 1) kt_send_u64(pp.peer, TAG_STEP, n + 1); /* the peer stops too */
      kt_send_u64(pp.parent, TAG_PONG_DONE, 0);
      return;
    }
    keel_log_info(NULL, "step", KEEL_INT("n", (int64_t)n));
    kt_send_u64(pp.peer, TAG_STEP, n + 1);
  }
}

static void ping_pong_in_order(const char *tag, keel_log_opts *o, uint64_t last) {
  start(tag, o);
  pthread_t th;
  CHECK_OK(pthread_create(&th, NULL, log_step_zero, NULL));
  CHECK_OK(pthread_join(th, NULL));
  keel_pid_t p[2];
  for (int i = 0; i < 2; i++) {
    keel_spawn_opts so;
    keel_spawn_opts_init(&so);
    so.scheduler = KEEL_ON_SCHEDULER(i);
    so.pin = true;
    CHECK_OK(keel_spawn(pong, (void *)(uintptr_t)last, &so, &p[i]));
  }
  for (int i = 0; i < 2; i++) {
    pong_peers pp = {p[1 - i], keel_self()};
    keel_msg_t *m = keel_msg_copy(TAG_PEER, &pp, sizeof pp);
    CHECK(m != NULL);
    CHECK_OK(keel_send(p[i], m));
  }
  kt_send_u64(p[0], TAG_STEP, 1);
  for (int i = 0; i < 2; i++) {
    keel_msg_t *m = kt_recv(60000);
    CHECK_EQ(keel_msg_tag(m), TAG_PONG_DONE);
    keel_msg_free(m);
  }
  keel_log_info(NULL, "step", KEEL_INT("n", (int64_t)last + 1));
  char *s = stop_and_read();
  uint64_t want = 0;
  char l[512];
  for (const char *cur = s; next_line(&cur, l, sizeof l); want++) {
    const char *n = strstr(l, "\"n\":");
    CHECK(n != NULL);
    if ((uint64_t)atoll(n + 4) != want) {
      fprintf(stderr, "%s: line %" PRIu64 " is %s\n", tag, want, l);
      CHECK(!"lines out of causal order");
    }
  }
  CHECK_EQ(want, last + 2);
  free(s);
}

KT_CASE(lines_come_out_in_causal_order_across_threads) {
  CHECK(keel_sched_count() >= 2);
  keel_log_opts o;
  keel_log_opts_init(&o);
  o.flush_ms = 600000; /* no pass before the end */
  ping_pong_in_order("causal_end", &o, 200);
  keel_log_opts_init(&o);
  o.flush_ms = 1;
  o.buffer_size = 4096;
  o.overflow_wait_ms = KEEL_INFINITY;
  ping_pong_in_order("causal_busy", &o, 5000);
}

/* ---- no line lost on a clean stop (a child process) ----------------------- */

static void child_proc(void *arg) {
  produce((int)(intptr_t)arg);
}

/* Runs only as a child (KT_LOG_CHILD_FILE set): logs from several processes
 * through a small buffer with a long interval, then stops, either with
 * keel_log_shutdown or (KT_LOG_CHILD_MODE=exit) only through the exit path. */
KT_CASE(child_logs_then_stops) {
  const char *path = getenv("KT_LOG_CHILD_FILE");
  if (!path) return;
  keel_log_opts o;
  keel_log_opts_init(&o);
  o.file = path;
  o.level = KEEL_LOG_INFO;
  o.format = KEEL_LOG_JSON;
  o.buffer_size = 8192;
  o.flush_ms = 600000;
  o.overflow_wait_ms = KEEL_INFINITY;
  CHECK_OK(keel_log_init(&o));
  for (int p = 0; p < 4; p++) {
    keel_spawn_opts so;
    keel_spawn_opts_init(&so);
    so.monitor = true;
    keel_ref_t ref;
    so.monitor_ref = &ref;
    CHECK_OK(keel_spawn(child_proc, (void *)(intptr_t)p, &so, NULL));
  }
  for (int p = 0; p < 4; p++)
    keel_msg_free(kt_recv(60000));
  keel_log_info(NULL, "last", KEEL_INT("w", 4), KEEL_INT("i", 0));
  const char *mode = getenv("KT_LOG_CHILD_MODE");
  if (!mode || strcmp(mode, "exit") != 0) CHECK_OK(keel_log_shutdown());
}

static void run_child(const char *path, const char *mode) {
  char exe[512];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  CHECK(n > 0);
  exe[n] = 0;
  setenv("KT_LOG_CHILD_FILE", path, 1);
  setenv("KT_LOG_CHILD_MODE", mode, 1);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  char *argv[] = {exe, "child_logs_then_stops", NULL};
  pid_t pid;
  CHECK_OK(posix_spawn(&pid, exe, &fa, NULL, argv, environ));
  posix_spawn_file_actions_destroy(&fa);
  unsetenv("KT_LOG_CHILD_FILE");
  unsetenv("KT_LOG_CHILD_MODE");
  int status;
  CHECK(waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

KT_CASE(no_line_is_lost_when_the_application_stops) {
  const char *modes[] = {"shutdown", "exit"};
  for (int m = 0; m < 2; m++) {
    const char *path = tmp_path(modes[m]);
    run_child(path, modes[m]);
    char *s = slurp(path);
    unlink(path);
    /* 4 processes x PER_PRODUCER lines, each in order, and "last" at the
     * end: logged after the producers' DOWN messages, so after their lines. */
    CHECK_EQ(count_lines(s), 4 * PER_PRODUCER + 1);
    char *last = strstr(s, "\"msg\":\"last\"");
    CHECK(last != NULL && strstr(last + 1, "\"msg\":\"last\"") == NULL);
    check_all_lines(s, 4);
    free(s);
  }
}

/* ---- events and runtime reports ----------------------------------------- */

static void crasher(void *arg) {
  keel_exitf("boom %d", 7);
}

/* keel_log_keel_events: a supervisor restart is logged as
 * "supervisor_restart" with the child, attempt and reason; keel_log_config
 * writes one "config_loaded" line with secrets masked. */
static atomic_int restart_child_starts;

static void restarting_child(void *arg) {
  (void)arg;
  if (atomic_fetch_add(&restart_child_starts, 1) == 0)
    keel_exit(KEEL_REASON_ERROR, "first run fails");
  keel_msg_t *m;
  keel_receive(&m, KEEL_INFINITY);
  keel_msg_free(m);
}

static int restarting_start(void *arg, const void *args, size_t len, keel_pid_t *pid) {
  (void)arg;
  (void)args;
  (void)len;
  keel_spawn_opts o;
  keel_spawn_opts_init(&o);
  o.link = true;
  return keel_spawn(restarting_child, NULL, &o, pid);
}

static void stubborn_child(void *arg) {
  (void)arg;
  for (;;) { /* traps exits from its spawn on: ignores its shutdown signal */
    keel_msg_t *m;
    if (keel_receive(&m, KEEL_INFINITY) == 0) keel_msg_free(m);
  }
}

static int stubborn_start(void *arg, const void *args, size_t len, keel_pid_t *pid) {
  (void)arg, (void)args, (void)len;
  keel_spawn_opts o;
  keel_spawn_opts_init(&o);
  o.link = true;
  o.trap_exit = true;
  return keel_spawn(stubborn_child, NULL, &o, pid);
}

/* A child killed because it ignored its shutdown leaves a warning. */
KT_CASE(a_child_killed_past_its_shutdown_time_is_logged) {
  start("shutdown_timeout", NULL);
  CHECK_OK(keel_log_keel_events(true));
  keel_sup_child_spec ch = {.id = "stubborn", .start = stubborn_start, .shutdown = 50};
  keel_sup_spec spec = {.strategy = KEEL_SUP_ONE_FOR_ONE, .children = &ch, .nchildren = 1};
  keel_pid_t sup;
  CHECK_OK(keel_sup_start(&spec, &(keel_sup_opts){.name = "stopsup"}, &sup, NULL));
  CHECK_OK(keel_gs_stop(sup, KEEL_REASON_SHUTDOWN, NULL, 5000));
  CHECK_OK(keel_log_keel_events(false));
  char *s = stop_and_read();
  CHECK(strstr(s, "\"level\":\"warn\"") != NULL);
  CHECK(strstr(s, "\"event\":\"child_shutdown_timeout\",\"supervisor\":\"stopsup\","
                  "\"child\":\"stubborn\",\"shutdown_ms\":50") != NULL);
  free(s);
}

static int tiny_app_start(keel_app_t *app, void *config, keel_pid_t *root, void **state) {
  (void)app, (void)config, (void)state;
  keel_sup_spec spec = {.strategy = KEEL_SUP_ONE_FOR_ONE};
  return keel_sup_start(&spec, NULL, root, NULL);
}

/* app_stopping says the signal only when a signal stopped the application,
 * the error only when there is one. */
KT_CASE(app_stopping_carries_only_the_fields_that_apply) {
  start("app_stopping", NULL);
  CHECK_OK(keel_log_keel_events(true));
  static const keel_application tiny = {.start = tiny_app_start};
  keel_app_opts o;
  keel_app_opts_init(&o);
  o.name = "tiny";
  keel_app_t *app = NULL;
  CHECK_OK(keel_app_start(&tiny, &o, &app, NULL));
  CHECK_OK(keel_app_stop(app));
  keel_app_free(app);
  CHECK_OK(keel_log_keel_events(false));
  char *s = stop_and_read();
  CHECK(strstr(s, "\"event\":\"app_stopping\",\"app\":\"tiny\",\"reason\":\"normal\"}\n") != NULL);
  free(s);
}

typedef struct small_cfg {
  int64_t port;
  char *password;
} small_cfg;

KT_CASE(keel_events_and_configuration_reach_the_log) {
  start("keelev", NULL);
  CHECK_OK(keel_log_keel_events(true));
  atomic_store(&restart_child_starts, 0);
  keel_sup_child_spec ch = {.id = "flaky", .start = restarting_start};
  keel_sup_spec spec = {.strategy = KEEL_SUP_ONE_FOR_ONE, .children = &ch, .nchildren = 1};
  keel_pid_t sup;
  CHECK_OK(keel_sup_start(&spec, &(keel_sup_opts){.name = "logsup"}, &sup, NULL));
  const char *want = "\"event\":\"supervisor_restart\",\"supervisor\":\"logsup\","
                     "\"child\":\"flaky\",\"attempt\":1,\"reason\":\"error\","
                     "\"reason_text\":\"first run fails\"";
  char *s = NULL;
  for (int tries = 0; tries < 1000; tries++) { /* liveness bound: the restart is async */
    CHECK_OK(keel_log_flush());
    free(s);
    s = slurp(g_path);
    if (strstr(s, want)) break;
    keel_sleep(10);
  }
  CHECK(strstr(s, want) != NULL);
  free(s);
  CHECK_OK(keel_gs_stop(sup, KEEL_REASON_SHUTDOWN, NULL, 5000));

  static const keel_config_field table[] = {
      {.env = "PORT", .type = KEEL_CONFIG_INT, .offset = offsetof(small_cfg, port), .def = "8080"},
      {.env = "DB_PASSWORD",
       .type = KEEL_CONFIG_STRING,
       .offset = offsetof(small_cfg, password),
       .def = "hunter2",
       .flags = KEEL_CONFIG_SECRET},
  };
  small_cfg cfg;
  memset(&cfg, 0, sizeof cfg);
  unsetenv("PORT");
  unsetenv("DB_PASSWORD");
  char *errors = NULL;
  CHECK_OK(keel_config_load(table, 2, &cfg, NULL, &errors));
  CHECK_OK(keel_log_config(table, 2, &cfg, "development"));
  keel_config_free(table, 2, &cfg);
  CHECK_OK(keel_log_keel_events(false));
  s = stop_and_read();
  CHECK(strstr(s, "\"event\":\"config_loaded\",\"app_env\":\"development\","
                  "\"config\":{\"PORT\":\"8080\",\"DB_PASSWORD\":\"****\"}") != NULL);
  CHECK(strstr(s, "hunter2") == NULL);
  free(s);
}

KT_CASE(events_and_crash_reports_have_stable_names) {
  start("events", NULL);
  keel_rt_set_report_handler(keel_log_report_handler, NULL);
  keel_log_event(KEEL_LOG_INFO, "app_started", KEEL_STR("app", "shop"));
  keel_spawn_opts so;
  keel_spawn_opts_init(&so);
  so.monitor = true;
  keel_ref_t ref;
  so.monitor_ref = &ref;
  so.name = "worker";
  keel_pid_t pid;
  CHECK_OK(keel_spawn(crasher, NULL, &so, &pid));
  keel_msg_free(kt_recv(10000));
  char want[200], pidtxt[24];
  keel_pid_format(pid, pidtxt, sizeof pidtxt);
  snprintf(want, sizeof want,
           "\"event\":\"process_crashed\",\"pid\":\"%s\",\"name\":\"worker\",\"reason\":\"boom 7\"",
           pidtxt);
  char *s = NULL;
  for (int tries = 0; tries < 1000; tries++) { /* the report may follow the DOWN */
    CHECK_OK(keel_log_flush());
    free(s);
    s = slurp(g_path);
    if (strstr(s, want)) break;
    keel_sleep(10);
  }
  keel_rt_set_report_handler(NULL, NULL);
  CHECK(strstr(s, want) != NULL);
  CHECK(strstr(s, ",\"level\":\"error\",\"msg\":\"process_crashed\",\"service\":\"svc\"") != NULL);
  free(s);
  s = stop_and_read();
  check_json_line(s, 0,
                  ",\"level\":\"info\",\"msg\":\"app_started\",\"service\":\"svc\","
                  "\"event\":\"app_started\",\"app\":\"shop\"}");
  free(s);
}

/* ---- lines for test_log_jq.sh -------------------------------------------- */

KT_CASE(jq_sample_lines) {
  const char *path = getenv("KT_LOG_JQ_FILE");
  if (!path) return;
  keel_log_opts o;
  keel_log_opts_init(&o);
  o.file = path;
  o.level = KEEL_LOG_TRACE;
  o.format = KEEL_LOG_JSON;
  o.service = "jq-svc";
  CHECK_OK(keel_log_init(&o));
  keel_log_info(NULL, "fields", KEEL_STR("s", "text"), KEEL_INT("i", -7),
                KEEL_UINT("u", UINT64_MAX), KEEL_DOUBLE("d", 2.5), KEEL_BOOL("b", true),
                KEEL_NULL("z"));
  keel_log_warn(NULL, "escapes",
                KEEL_STR("s", "q\"b\\n\n\t\x01 \xc3\xa9 \xe2\x9c\x93 \xf0\x9f\x98\x80 \xff"));
  CHECK_OK(keel_log_context_set(KEEL_STR("correlationId", "abc-123")));
  keel_logger *lg = keel_log_child(NULL, KEEL_STR("module", "auth"));
  keel_log_error(
      lg, "redacted", KEEL_STR("password", "p"),
      KEEL_OBJ("a", KEEL_OBJ("b", KEEL_OBJ("c", KEEL_STR("Token", "t"), KEEL_INT("x", 1)))));
  keel_log_free(lg);
  keel_log_event(KEEL_LOG_INFO, "app_started", KEEL_STR("app", "jq"));
  CHECK_OK(keel_log_shutdown());
}

KT_MAIN(KT_ENTRY(levels_filter_by_minimum_from_env_and_change_at_run_time),
        KT_ENTRY(a_correlation_id_follows_a_gen_server_call),
        KT_ENTRY(json_line_has_time_level_msg_service_and_typed_fields),
        KT_ENTRY(escapes_quotes_backslash_controls_and_replaces_invalid_utf8),
        KT_ENTRY(doubles_are_shortest_round_trip_and_non_finite_is_null),
        KT_ENTRY(child_loggers_carry_their_parents_fields),
        KT_ENTRY(process_context_is_on_every_line_it_writes_and_only_its_own),
        KT_ENTRY(context_travels_with_a_call_and_is_restored_after),
        KT_ENTRY(redaction_hides_sensitive_keys_at_any_depth_and_in_bound_fields),
        KT_ENTRY(pretty_format_is_readable_and_coloured_on_request),
        KT_ENTRY(fatal_is_written_before_the_call_returns),
        KT_ENTRY(stats_count_lines_by_level_and_dropped_lines),
        KT_ENTRY(file_is_reopened_on_sighup_for_rotation),
        KT_ENTRY_SCHED(concurrent_producers_lose_nothing_through_small_buffers, 4),
        KT_ENTRY_SCHED(lines_come_out_in_causal_order_across_threads, 2),
        KT_ENTRY(no_line_is_lost_when_the_application_stops),
        KT_ENTRY(events_and_crash_reports_have_stable_names),
        KT_ENTRY(keel_events_and_configuration_reach_the_log),
        KT_ENTRY(a_child_killed_past_its_shutdown_time_is_logged),
        KT_ENTRY(app_stopping_carries_only_the_fields_that_apply), KT_ENTRY(child_logs_then_stops),
        KT_ENTRY(jq_sample_lines))
