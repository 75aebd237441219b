/* test_config.c - typed configuration: types, bounds, .env, precedence,
 * APP_ENV, secrets, rules, describe, load_or_exit.
 *
 * Configuration runs before the runtime, so these cases are plain functions
 * run by a main() of their own (no keel process). Each case starts from a
 * clean environment (every variable the tables use is unset) and writes its
 * .env files with mkstemp under /tmp.
 */
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "keel_test.h"
#include "keel/config.h"

static const char *const all_vars[] = {
    "APP_ENV", "HOST",       "PORT", "HEALTH_PORT", "DEBUG", "TIMEOUT", "LOG_LEVEL", "DATABASE_URL",
    "TAGS",    "JWT_SECRET", "POOL", "NAME",        "N",     "D",       "B",         "E",
    "U",       "L",          "S",    "MY_ENV",      NULL};

static void clean_env(void) {
  for (size_t i = 0; all_vars[i]; i++)
    unsetenv(all_vars[i]);
}

/* Writes text to a fresh file under /tmp; returns its malloc'd path. */
static char *write_file(const char *text) {
  char *path = strdup("/tmp/keel-config-XXXXXX");
  CHECK(path);
  int fd = mkstemp(path);
  CHECK(fd >= 0);
  size_t n = strlen(text);
  CHECK(write(fd, text, n) == (ssize_t)n);
  close(fd);
  return path;
}

static void drop_file(char *path) {
  unlink(path);
  free(path);
}

static int count_lines(const char *s) {
  int n = 0;
  for (; s && *s; s++)
    n += *s == '\n';
  return n;
}

/* ---- the service table used by most cases -------------------------------- */

typedef struct svc {
  char *host;
  int64_t port, health_port;
  bool debug;
  int64_t timeout_ms;
  int level;
  keel_config_url db;
  keel_config_list tags;
  char *jwt;
  int64_t pool;
} svc;

static const char *const levels[] = {"trace", "debug", "info", "warn", "error", "fatal", NULL};

static const keel_config_field svc_table[] = {
    {.env = "HOST", .type = KEEL_CONFIG_STRING, .offset = offsetof(svc, host), .def = "0.0.0.0"},
    {.env = "PORT",
     .name = "port",
     .type = KEEL_CONFIG_INT,
     .offset = offsetof(svc, port),
     .def = "3000",
     .min = 1,
     .max = 65535},
    {.env = "HEALTH_PORT",
     .type = KEEL_CONFIG_INT,
     .offset = offsetof(svc, health_port),
     .def = "9090",
     .min = 1,
     .max = 65535},
    {.env = "DEBUG", .type = KEEL_CONFIG_BOOL, .offset = offsetof(svc, debug), .def = "false"},
    {.env = "TIMEOUT",
     .type = KEEL_CONFIG_DURATION,
     .offset = offsetof(svc, timeout_ms),
     .def = "30s",
     .min = 100,
     .max = 60000},
    {.env = "LOG_LEVEL",
     .type = KEEL_CONFIG_ENUM,
     .offset = offsetof(svc, level),
     .def = "info",
     .values = levels},
    {.env = "DATABASE_URL",
     .type = KEEL_CONFIG_URL,
     .offset = offsetof(svc, db),
     .by_env = {[KEEL_CONFIG_DEVELOPMENT] = "postgresql://localhost:5432/app_dev"},
     .flags = KEEL_CONFIG_REQUIRED},
    {.env = "TAGS", .type = KEEL_CONFIG_LIST, .offset = offsetof(svc, tags), .def = "a,b"},
    {.env = "JWT_SECRET",
     .type = KEEL_CONFIG_STRING,
     .offset = offsetof(svc, jwt),
     .def = "dev-secret-change-in-prod",
     .flags = KEEL_CONFIG_SECRET},
    {.env = "POOL",
     .type = KEEL_CONFIG_INT,
     .offset = offsetof(svc, pool),
     .def = "10",
     .by_env = {[KEEL_CONFIG_DEVELOPMENT] = "5", [KEEL_CONFIG_PRODUCTION] = "50"},
     .min = 1,
     .max = 100},
};
#define SVC_N (sizeof svc_table / sizeof svc_table[0])

/* Loads svc_table with an optional .env path; returns rc, *errors owned. */
static int load_svc(svc *s, const char *dotenv, char **errors, keel_config_opts *o_out) {
  keel_config_opts o;
  keel_config_opts_init(&o);
  o.dotenv_path = dotenv;
  int rc = keel_config_load(svc_table, SVC_N, s, &o, errors);
  if (o_out) *o_out = o;
  return rc;
}

/* A one-field table for type cases: loads `value` (NULL: unset) into a field
 * of type t; returns rc and the error text (owned by the caller). */
typedef union one {
  char *s;
  int64_t i;
  bool b;
  int e;
  keel_config_url u;
  keel_config_list l;
} one;

static int load_one(keel_config_field f, const char *value, one *out, char **errors) {
  clean_env();
  f.env = "N";
  f.offset = 0;
  if (value) setenv("N", value, 1);
  memset(out, 0, sizeof *out);
  int rc = keel_config_load(&f, 1, out, NULL, errors);
  unsetenv("N");
  return rc;
}

/* Expects value to be refused with exactly the line "Invalid configuration: N: <line>". */
static void expect_error(keel_config_field f, const char *value, const char *line) {
  one o;
  char *err = NULL;
  CHECK_EQ(load_one(f, value, &o, &err), KEEL_EINVAL);
  char want[512];
  snprintf(want, sizeof want, "Invalid configuration: N: %s\n", line);
  CHECK_STR(err, want);
  free(err);
}

/* ---- cases ------------------------------------------------------------- */

static void defaults_fill_every_type(void) {
  svc s;
  char *err = (char *)1;
  keel_config_opts o;
  CHECK_OK(load_svc(&s, NULL, &err, &o));
  CHECK(err == NULL);
  CHECK_EQ(o.app_env, KEEL_CONFIG_DEVELOPMENT);
  CHECK_STR(s.host, "0.0.0.0");
  CHECK_EQ(s.port, 3000);
  CHECK_EQ(s.health_port, 9090);
  CHECK_EQ(s.debug, false);
  CHECK_EQ(s.timeout_ms, 30000);
  CHECK_EQ(s.level, 2);
  CHECK_STR(s.db.scheme, "postgresql");
  CHECK_STR(s.db.host, "localhost");
  CHECK_EQ(s.db.port, 5432);
  CHECK_STR(s.db.path, "/app_dev");
  CHECK_EQ(s.tags.count, 2);
  CHECK_STR(s.tags.items[1], "b");
  CHECK_STR(s.jwt, "dev-secret-change-in-prod");
  CHECK_EQ(s.pool, 5);
  keel_config_free(svc_table, SVC_N, &s);
  CHECK(s.host == NULL && s.db.raw == NULL && s.tags.items == NULL && s.jwt == NULL);
  keel_config_free(svc_table, SVC_N, &s); /* twice is harmless */
}

static void environment_sets_every_type(void) {
  setenv("HOST", "example.org", 1);
  setenv("PORT", "8080", 1);
  setenv("DEBUG", "YES", 1);
  setenv("TIMEOUT", "500ms", 1);
  setenv("LOG_LEVEL", "Warn", 1);
  setenv("DATABASE_URL", "postgres://u:pw@db:6543/x", 1);
  setenv("TAGS", " x , y ,, z ", 1);
  setenv("JWT_SECRET", "s3cr3t", 1);
  setenv("POOL", "7", 1);
  svc s;
  CHECK_OK(load_svc(&s, NULL, NULL, NULL));
  CHECK_STR(s.host, "example.org");
  CHECK_EQ(s.port, 8080);
  CHECK_EQ(s.debug, true);
  CHECK_EQ(s.timeout_ms, 500);
  CHECK_EQ(s.level, 3);
  CHECK_STR(s.db.user, "u");
  CHECK_STR(s.db.password, "pw");
  CHECK_EQ(s.db.port, 6543);
  CHECK_EQ(s.tags.count, 3);
  CHECK_STR(s.tags.items[0], "x");
  CHECK_STR(s.tags.items[2], "z");
  CHECK_STR(s.jwt, "s3cr3t");
  CHECK_EQ(s.pool, 7);
  keel_config_free(svc_table, SVC_N, &s);
}

static void durations_parse_units_and_refuse_the_rest(void) {
  keel_config_field f = {.type = KEEL_CONFIG_DURATION};
  const struct {
    const char *in;
    int64_t ms;
  } ok[] = {{"500ms", 500}, {"30s", 30000}, {"5m", 300000}, {"1h", 3600000},
            {"250", 250},   {" 2S ", 2000}, {"0", 0},       {"1MS", 1}};
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    one o;
    CHECK_OK(load_one(f, ok[i].in, &o, NULL));
    CHECK_EQ(o.i, ok[i].ms);
  }
  const char *bad[] = {"5x", "-1s", "1.5s", "", "ms", "1 s", "1hh"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char line[128];
    snprintf(line, sizeof line, "must be a duration such as 500ms, 30s, 5m or 1h, got %s",
             bad[i][0] ? bad[i] : "\"\"");
    expect_error(f, bad[i], line);
  }
  expect_error(f, "9999999999999999h", "is too large, got 9999999999999999h");
  expect_error(f, "99999999999999999999", "is too large, got 99999999999999999999");
  f.min = 100;
  f.max = 30000;
  expect_error(f, "1m", "must be between 100ms and 30s, got 1m");
  expect_error(f, "99", "must be between 100ms and 30s, got 99");
}

static void bools_accept_six_spellings_in_any_case(void) {
  keel_config_field f = {.type = KEEL_CONFIG_BOOL};
  const char *t[] = {"true", "TRUE", "1", "yes", "Yes", "on", "ON"};
  const char *fl[] = {"false", "False", "0", "no", "NO", "off", " off "};
  for (size_t i = 0; i < 7; i++) {
    one o;
    CHECK_OK(load_one(f, t[i], &o, NULL));
    CHECK_EQ(o.b, true);
    CHECK_OK(load_one(f, fl[i], &o, NULL));
    CHECK_EQ(o.b, false);
  }
  expect_error(f, "maybe", "must be a boolean (true/false, 1/0, yes/no, on/off), got maybe");
  expect_error(f, "2", "must be a boolean (true/false, 1/0, yes/no, on/off), got 2");
}

static void ints_check_syntax_and_overflow(void) {
  keel_config_field f = {.type = KEEL_CONFIG_INT};
  one o;
  CHECK_OK(load_one(f, "9223372036854775807", &o, NULL));
  CHECK_EQ(o.i, INT64_MAX);
  CHECK_OK(load_one(f, "-9223372036854775808", &o, NULL));
  CHECK(o.i == INT64_MIN);
  CHECK_OK(load_one(f, " +42 ", &o, NULL));
  CHECK_EQ(o.i, 42);
  expect_error(f, "9223372036854775808", "is too large, got 9223372036854775808");
  expect_error(f, "-9223372036854775809", "is too large, got -9223372036854775809");
  expect_error(f, "12abc", "must be an integer, got 12abc");
  expect_error(f, "0x10", "must be an integer, got 0x10");
  expect_error(f, "", "must be an integer, got \"\"");
  expect_error(f, "-", "must be an integer, got -");
  expect_error(f, "1\n2", "must be an integer, got 1\\n2"); /* echoed on one line */
}

static void bounds_are_reported_with_the_offending_value(void) {
  keel_config_field f = {.type = KEEL_CONFIG_INT, .min = 1, .max = 65535};
  expect_error(f, "70000", "must be between 1 and 65535, got 70000");
  expect_error(f, "0", "must be between 1 and 65535, got 0");
  expect_error(f, "99999999999999999999", "must be between 1 and 65535, got 99999999999999999999");
  one o;
  CHECK_OK(load_one(f, "65535", &o, NULL));
  CHECK_OK(load_one(f, "1", &o, NULL));
  f.max = INT64_MAX;
  expect_error(f, "0", "must be at least 1, got 0");
  f.min = INT64_MIN;
  f.max = 10;
  expect_error(f, "11", "must be at most 10, got 11");
  keel_config_field s = {.type = KEEL_CONFIG_STRING, .min = 3, .max = 5};
  expect_error(s, "ab", "must be between 3 and 5 characters long, got ab");
  CHECK_OK(load_one(s, "abc", &o, NULL));
  free(o.s);
  s.flags = KEEL_CONFIG_SECRET;
  s.max = INT64_MAX;
  s.min = 32;
  expect_error(s, "short", "must be at least 32 characters long, got (secret)");
}

static void enums_match_any_case_and_list_the_choices(void) {
  keel_config_field f = {.type = KEEL_CONFIG_ENUM, .values = levels};
  one o;
  CHECK_OK(load_one(f, "FATAL", &o, NULL));
  CHECK_EQ(o.e, 5);
  CHECK_OK(load_one(f, NULL, &o, NULL));
  CHECK_EQ(o.e, -1); /* unset */
  expect_error(f, "verbose", "must be one of trace, debug, info, warn, error, fatal, got verbose");
}

static void urls_expose_their_parts(void) {
  keel_config_field f = {.type = KEEL_CONFIG_URL};
  one o;
  CHECK_OK(
      load_one(f, "PostgreSQL://user:p%40ss@db.internal:5432/app?sslmode=require#x", &o, NULL));
  CHECK_STR(o.u.scheme, "postgresql");
  CHECK_STR(o.u.user, "user");
  CHECK_STR(o.u.password, "p%40ss");
  CHECK_STR(o.u.host, "db.internal");
  CHECK_EQ(o.u.port, 5432);
  CHECK_STR(o.u.path, "/app");
  CHECK_STR(o.u.query, "sslmode=require");
  keel_config_free(&f, 1, &o);
  CHECK_OK(load_one(f, "https://example.com", &o, NULL));
  CHECK_STR(o.u.host, "example.com");
  CHECK_EQ(o.u.port, 0);
  CHECK_STR(o.u.path, "");
  CHECK_STR(o.u.user, "");
  CHECK_STR(o.u.password, "");
  CHECK_STR(o.u.query, "");
  keel_config_free(&f, 1, &o);
  CHECK_OK(load_one(f, "http://[::1]:8080/x", &o, NULL));
  CHECK_STR(o.u.host, "[::1]");
  CHECK_EQ(o.u.port, 8080);
  keel_config_free(&f, 1, &o);
  const char *bad[] = {"localhost:5432", "http://",   "http://h:0", "http://h:70000", "http://h:x",
                       "http://a b",     "1http://h", "http://h:",  "http://[zz]",    "http://:80"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char line[160];
    snprintf(line, sizeof line, "must be a URL such as scheme://host[:port][/path], got %s",
             bad[i]);
    expect_error(f, bad[i], line);
  }
  static const char *const schemes[] = {"postgres", "postgresql", NULL};
  f.values = schemes;
  CHECK_OK(load_one(f, "postgres://h/db", &o, NULL));
  keel_config_free(&f, 1, &o);
  /* the password of a non-secret URL is masked when the URL is echoed */
  expect_error(f, "mysql://root:hunter2@h/db",
               "must be a URL with one of the schemes postgres, postgresql, got "
               "mysql://root:****@h/db");
}

static void lists_split_trim_and_check_items(void) {
  keel_config_field f = {.type = KEEL_CONFIG_LIST};
  one o;
  CHECK_OK(load_one(f, " a, b ,,c ,", &o, NULL));
  CHECK_EQ(o.l.count, 3);
  CHECK_STR(o.l.items[0], "a");
  CHECK_STR(o.l.items[1], "b");
  CHECK_STR(o.l.items[2], "c");
  keel_config_free(&f, 1, &o);
  CHECK_OK(load_one(f, "", &o, NULL));
  CHECK_EQ(o.l.count, 0);
  static const char *const allowed[] = {"GET", "POST", NULL};
  f.values = allowed;
  CHECK_OK(load_one(f, "get,POST", &o, NULL));
  CHECK_EQ(o.l.count, 2);
  keel_config_free(&f, 1, &o);
  expect_error(f, "GET,PUT", "must be a comma-separated list of GET, POST, got GET,PUT");
}

static void required_fields_must_be_set_and_non_empty(void) {
  keel_config_field f = {.type = KEEL_CONFIG_STRING, .flags = KEEL_CONFIG_REQUIRED};
  one o;
  char *err;
  CHECK_EQ(load_one(f, NULL, &o, &err), KEEL_EINVAL);
  CHECK_STR(err, "Invalid configuration: N: is required but not set\n");
  free(err);
  CHECK_EQ(load_one(f, "", &o, &err), KEEL_EINVAL);
  CHECK_STR(err, "Invalid configuration: N: is required but empty\n");
  free(err);
  /* not required: unset leaves the member zero, an empty string is a value */
  f.flags = 0;
  CHECK_OK(load_one(f, NULL, &o, NULL));
  CHECK(o.s == NULL);
  CHECK_OK(load_one(f, "", &o, NULL));
  CHECK_STR(o.s, "");
  free(o.s);
}

static void every_error_is_reported_at_once_in_table_order(void) {
  setenv("PORT", "70000", 1);
  setenv("DEBUG", "maybe", 1);
  setenv("TIMEOUT", "5x", 1);
  setenv("DATABASE_URL", "nope", 1);
  setenv("HOST", "fine", 1);
  svc s;
  char *err = NULL;
  CHECK_EQ(load_svc(&s, NULL, &err, NULL), KEEL_EINVAL);
  CHECK_EQ(count_lines(err), 4);
  CHECK_STR(err,
            "Invalid configuration: PORT: must be between 1 and 65535, got 70000\n"
            "Invalid configuration: DEBUG: must be a boolean (true/false, 1/0, yes/no, on/off), "
            "got maybe\n"
            "Invalid configuration: TIMEOUT: must be a duration such as 500ms, 30s, 5m or 1h, "
            "got 5x\n"
            "Invalid configuration: DATABASE_URL: must be a URL such as "
            "scheme://host[:port][/path], got nope\n");
  free(err);
  /* the struct owns nothing after a failure */
  CHECK(s.host == NULL && s.tags.items == NULL && s.jwt == NULL && s.db.raw == NULL);
}

static void dotenv_reads_comments_quotes_and_export(void) {
  char *path = write_file("# a comment\n"
                          "\n"
                          "   \n"
                          "export HOST=dot.example\n"
                          "PORT = 4000   # trailing comment\n"
                          "TAGS=\"x y, #z\"\n"
                          "JWT_SECRET='lit\\n$eral # kept'\r\n"
                          "NAME=\"line1\\nq\\\"uote\\\\\"  # after\n"
                          "LOG_LEVEL=\n"
                          "LOG_LEVEL=debug\n"
                          "D=a#b\n"
                          "UNKNOWN_KEY=ignored");
  keel_config_field name = {.env = "NAME", .type = KEEL_CONFIG_STRING};
  keel_config_field debug = {.env = "D", .type = KEEL_CONFIG_STRING};
  svc s;
  CHECK_OK(load_svc(&s, path, NULL, NULL));
  CHECK_STR(s.host, "dot.example");
  CHECK_EQ(s.port, 4000);
  CHECK_EQ(s.tags.count, 2);
  CHECK_STR(s.tags.items[0], "x y");
  CHECK_STR(s.tags.items[1], "#z");
  CHECK_STR(s.jwt, "lit\\n$eral # kept");
  CHECK_EQ(s.level, 1); /* the last line for a key wins */
  keel_config_free(svc_table, SVC_N, &s);
  char *v = NULL;
  keel_config_opts o;
  keel_config_opts_init(&o);
  o.dotenv_path = path;
  CHECK_OK(keel_config_load(&name, 1, &v, &o, NULL));
  CHECK_STR(v, "line1\nq\"uote\\");
  free(v);
  CHECK_OK(keel_config_load(&debug, 1, &v, &o, NULL));
  CHECK_STR(v, "a#b"); /* '#' starts a comment only after whitespace */
  free(v);
  drop_file(path);
  /* a missing file is not an error */
  o.dotenv_path = "/tmp/keel-config-does-not-exist.env";
  CHECK_OK(keel_config_load(&name, 1, &v, &o, NULL));
  CHECK(v == NULL);
}

static void dotenv_malformed_lines_are_reported_with_their_numbers(void) {
  char *path = write_file("PORT=1\n"
                          "# fine\n"
                          "this is not an assignment\n"
                          "HOST=\"unterminated\n"
                          "1BAD=x\n"
                          "JWT_SECRET='x' trailing\n"
                          "TAGS='open\n");
  svc s;
  char *err = NULL;
  CHECK_EQ(load_svc(&s, path, &err, NULL), KEEL_EINVAL);
  char want[1024];
  snprintf(want, sizeof want,
           "Invalid configuration: %s:3: expected KEY=VALUE\n"
           "Invalid configuration: %s:4: unterminated double quote\n"
           "Invalid configuration: %s:5: expected KEY=VALUE\n"
           "Invalid configuration: %s:6: unexpected text after the closing quote\n"
           "Invalid configuration: %s:7: unterminated single quote\n",
           path, path, path, path, path);
  CHECK_STR(err, want);
  free(err);
  drop_file(path);
  /* an unreadable file (a directory) is an error */
  CHECK_EQ(load_svc(&s, "/tmp", &err, NULL), KEEL_EINVAL);
  CHECK(strncmp(err, "Invalid configuration: /tmp: cannot read: ", 42) == 0);
  CHECK_EQ(count_lines(err), 1);
  free(err);
}

static void precedence_is_environment_dotenv_by_env_default(void) {
  keel_config_field f = {.env = "POOL",
                         .type = KEEL_CONFIG_INT,
                         .def = "10",
                         .by_env = {[KEEL_CONFIG_STAGING] = "20"}};
  int64_t v = 0;
  keel_config_opts o;
  keel_config_opts_init(&o);
  setenv("APP_ENV", "staging", 1);
  char *path = write_file("POOL=30\n");
  o.dotenv_path = path;
  setenv("POOL", "40", 1);
  CHECK_OK(keel_config_load(&f, 1, &v, &o, NULL));
  CHECK_EQ(v, 40); /* environment */
  unsetenv("POOL");
  CHECK_OK(keel_config_load(&f, 1, &v, &o, NULL));
  CHECK_EQ(v, 30); /* .env */
  o.dotenv_path = NULL;
  CHECK_OK(keel_config_load(&f, 1, &v, &o, NULL));
  CHECK_EQ(v, 20); /* default for APP_ENV */
  unsetenv("APP_ENV");
  CHECK_OK(keel_config_load(&f, 1, &v, &o, NULL));
  CHECK_EQ(v, 10); /* default */
  /* an empty environment value is a value: it wins over .env */
  o.dotenv_path = path;
  setenv("POOL", "", 1);
  CHECK_EQ(keel_config_load(&f, 1, &v, &o, NULL), KEEL_EINVAL);
  drop_file(path);
}

static void app_env_selects_defaults_and_is_validated(void) {
  svc s;
  keel_config_opts o;
  setenv("APP_ENV", "staging", 1);
  setenv("DATABASE_URL", "postgresql://db/x", 1);
  CHECK_OK(load_svc(&s, NULL, NULL, &o));
  CHECK_EQ(o.app_env, KEEL_CONFIG_STAGING);
  CHECK_EQ(s.pool, 10); /* no staging default: the plain default */
  keel_config_free(svc_table, SVC_N, &s);
  setenv("APP_ENV", "production", 1);
  setenv("JWT_SECRET", "real", 1);
  CHECK_OK(load_svc(&s, NULL, NULL, &o));
  CHECK_EQ(o.app_env, KEEL_CONFIG_PRODUCTION);
  CHECK_STR(keel_config_env_name(o.app_env), "production");
  CHECK_EQ(s.pool, 50);
  keel_config_free(svc_table, SVC_N, &s);
  /* production has no DATABASE_URL default: required */
  unsetenv("DATABASE_URL");
  char *err = NULL;
  CHECK_EQ(load_svc(&s, NULL, &err, NULL), KEEL_EINVAL);
  CHECK_STR(err, "Invalid configuration: DATABASE_URL: is required but not set\n");
  free(err);
  /* APP_ENV from .env; the environment wins */
  unsetenv("APP_ENV");
  char *path = write_file("APP_ENV=production\nDATABASE_URL=postgresql://x/y\n");
  CHECK_OK(load_svc(&s, path, NULL, &o));
  CHECK_EQ(o.app_env, KEEL_CONFIG_PRODUCTION);
  keel_config_free(svc_table, SVC_N, &s);
  setenv("APP_ENV", "development", 1);
  CHECK_OK(load_svc(&s, path, NULL, &o));
  CHECK_EQ(o.app_env, KEEL_CONFIG_DEVELOPMENT);
  CHECK_EQ(s.pool, 5);
  keel_config_free(svc_table, SVC_N, &s);
  drop_file(path);
  /* an invalid APP_ENV is an error line of its own, alongside the others */
  setenv("APP_ENV", "prod", 1);
  setenv("PORT", "x", 1);
  setenv("DATABASE_URL", "postgresql://db/x", 1);
  CHECK_EQ(load_svc(&s, NULL, &err, NULL), KEEL_EINVAL);
  CHECK_STR(err, "Invalid configuration: APP_ENV: must be one of development, staging, "
                 "production, got prod\n"
                 "Invalid configuration: PORT: must be an integer, got x\n");
  free(err);
  /* a different variable name */
  unsetenv("APP_ENV");
  unsetenv("PORT");
  setenv("MY_ENV", "staging", 1);
  keel_config_opts_init(&o);
  o.app_env_var = "MY_ENV";
  CHECK_OK(keel_config_load(svc_table, SVC_N, &s, &o, NULL));
  CHECK_EQ(o.app_env, KEEL_CONFIG_STAGING);
  keel_config_free(svc_table, SVC_N, &s);
}

static void secrets_are_never_printed_in_errors(void) {
  keel_config_field f = {.type = KEEL_CONFIG_INT, .min = 1, .max = 10, .flags = KEEL_CONFIG_SECRET};
  expect_error(f, "4242", "must be between 1 and 10, got (secret)");
  expect_error(f, "hunter2", "must be an integer, got (secret)");
  keel_config_field u = {.type = KEEL_CONFIG_URL, .flags = KEEL_CONFIG_SECRET};
  expect_error(u, "hunter2://", "must be a URL such as scheme://host[:port][/path], got (secret)");
  keel_config_field e = {.type = KEEL_CONFIG_ENUM, .values = levels, .flags = KEEL_CONFIG_SECRET};
  expect_error(e, "hunter2", "must be one of trace, debug, info, warn, error, fatal, got (secret)");
}

static void production_refuses_a_secret_left_at_its_development_default(void) {
  svc s;
  char *err = NULL;
  setenv("APP_ENV", "production", 1);
  setenv("DATABASE_URL", "postgresql://db/x", 1);
  CHECK_EQ(load_svc(&s, NULL, &err, NULL), KEEL_EINVAL);
  CHECK_STR(err, "Invalid configuration: JWT_SECRET: must not keep its development default in "
                 "production, got (secret)\n");
  CHECK(strstr(err, "dev-secret") == NULL);
  free(err);
  /* set explicitly to the same value: still refused */
  setenv("JWT_SECRET", "dev-secret-change-in-prod", 1);
  CHECK_EQ(load_svc(&s, NULL, &err, NULL), KEEL_EINVAL);
  free(err);
  setenv("JWT_SECRET", "a-real-one", 1);
  CHECK_OK(load_svc(&s, NULL, NULL, NULL));
  keel_config_free(svc_table, SVC_N, &s);
  /* staging and development keep the default */
  unsetenv("JWT_SECRET");
  setenv("APP_ENV", "staging", 1);
  CHECK_OK(load_svc(&s, NULL, NULL, NULL));
  keel_config_free(svc_table, SVC_N, &s);
  /* the development default may be a by_env entry */
  keel_config_field f = {.env = "S",
                         .type = KEEL_CONFIG_STRING,
                         .flags = KEEL_CONFIG_SECRET,
                         .by_env = {[KEEL_CONFIG_DEVELOPMENT] = "devkey"}};
  char *v = NULL;
  setenv("APP_ENV", "production", 1);
  setenv("S", "devkey", 1);
  CHECK_EQ(keel_config_load(&f, 1, &v, NULL, NULL), KEEL_EINVAL);
  CHECK(v == NULL);
}

static int ports_differ(const void *cfg, void *arg, char *why, size_t len) {
  const svc *s = cfg;
  if (s->health_port != s->port) return 0;
  snprintf(why, len, "must differ from PORT, got %" PRId64, s->health_port);
  return 1;
}

static int always_fails(const void *cfg, void *arg, char *why, size_t len) {
  ++*(int *)arg;
  snprintf(why, len, "is refused by rule two");
  return 1;
}

static void cross_field_rules_report_after_the_fields(void) {
  int calls = 0;
  keel_config_rule rules[] = {{"HEALTH_PORT", ports_differ, NULL}, {"POOL", always_fails, &calls}};
  keel_config_opts o;
  keel_config_opts_init(&o);
  o.rules = rules;
  o.nrules = 2;
  setenv("PORT", "8080", 1);
  setenv("HEALTH_PORT", "8080", 1);
  svc s;
  char *err = NULL;
  CHECK_EQ(keel_config_load(svc_table, SVC_N, &s, &o, &err), KEEL_EINVAL);
  CHECK_STR(err, "Invalid configuration: HEALTH_PORT: must differ from PORT, got 8080\n"
                 "Invalid configuration: POOL: is refused by rule two\n");
  CHECK_EQ(calls, 1);
  free(err);
  /* a rule passes */
  o.nrules = 1;
  setenv("HEALTH_PORT", "8081", 1);
  CHECK_OK(keel_config_load(svc_table, SVC_N, &s, &o, NULL));
  keel_config_free(svc_table, SVC_N, &s);
  /* with an invalid field the rules are skipped */
  o.nrules = 2;
  setenv("HEALTH_PORT", "x", 1);
  CHECK_EQ(keel_config_load(svc_table, SVC_N, &s, &o, &err), KEEL_EINVAL);
  CHECK_STR(err, "Invalid configuration: HEALTH_PORT: must be an integer, got x\n");
  CHECK_EQ(calls, 1);
  free(err);
}

static void describe_masks_secrets_and_is_a_valid_dotenv(void) {
  setenv("HOST", "a host", 1);
  setenv("DATABASE_URL", "postgresql://me:pw@db:5432/app", 1);
  setenv("TIMEOUT", "1500", 1);
  setenv("JWT_SECRET", "top-secret", 1);
  svc s;
  CHECK_OK(load_svc(&s, NULL, NULL, NULL));
  char buf[1024];
  size_t need = 0;
  CHECK_OK(keel_config_describe(svc_table, SVC_N, &s, buf, sizeof buf, &need));
  const char *want = "HOST=\"a host\"\n"
                     "PORT=3000\n"
                     "HEALTH_PORT=9090\n"
                     "DEBUG=false\n"
                     "TIMEOUT=1500ms\n"
                     "LOG_LEVEL=info\n"
                     "DATABASE_URL=postgresql://me:****@db:5432/app\n"
                     "TAGS=a,b\n"
                     "JWT_SECRET=****\n"
                     "POOL=5\n";
  CHECK_STR(buf, want);
  CHECK_EQ(need, strlen(want));
  CHECK(strstr(buf, "top-secret") == NULL && strstr(buf, ":pw@") == NULL);
  /* truncated */
  char small[10];
  CHECK_EQ(keel_config_describe(svc_table, SVC_N, &s, small, sizeof small, &need), KEEL_ERANGE);
  CHECK_STR(small, "HOST=\"a h");
  CHECK_EQ(need, strlen(want));
  CHECK_EQ(keel_config_describe(svc_table, SVC_N, &s, NULL, 0, &need), KEEL_ERANGE);
  CHECK_EQ(need, strlen(want));
  /* the text loads back to the same values (secrets aside) */
  clean_env();
  char *path = write_file(buf);
  svc t;
  CHECK_OK(load_svc(&t, path, NULL, NULL));
  CHECK_STR(t.host, "a host");
  CHECK_EQ(t.timeout_ms, 1500);
  CHECK_STR(t.db.host, "db");
  CHECK_STR(t.jwt, "****");
  drop_file(path);
  keel_config_free(svc_table, SVC_N, &t);
  keel_config_free(svc_table, SVC_N, &s);
}

typedef struct seen {
  int n;
  char text[512];
} seen;

static int visit(const keel_config_field *f, const char *value, void *arg) {
  seen *s = arg;
  s->n++;
  size_t len = strlen(s->text);
  snprintf(s->text + len, sizeof s->text - len, "%s=%s;", f->name ? f->name : f->env, value);
  return s->n == 3 ? 7 : 0;
}

static void each_visits_fields_in_order_and_stops_on_request(void) {
  setenv("JWT_SECRET", "x", 1);
  svc s;
  CHECK_OK(load_svc(&s, NULL, NULL, NULL));
  seen v = {0};
  CHECK_EQ(keel_config_each(svc_table, SVC_N, &s, visit, &v), 7);
  CHECK_EQ(v.n, 3);
  CHECK_STR(v.text, "HOST=0.0.0.0;port=3000;HEALTH_PORT=9090;");
  keel_config_free(svc_table, SVC_N, &s);
  /* unset values render empty; an unset secret is not masked */
  keel_config_field f[] = {
      {.env = "S",
       .type = KEEL_CONFIG_STRING,
       .offset = offsetof(svc, host),
       .flags = KEEL_CONFIG_SECRET},
      {.env = "E", .type = KEEL_CONFIG_ENUM, .offset = offsetof(svc, level), .values = levels},
      {.env = "U", .type = KEEL_CONFIG_URL, .offset = offsetof(svc, db)}};
  CHECK_OK(keel_config_load(f, 3, &s, NULL, NULL));
  char buf[64];
  CHECK_OK(keel_config_describe(f, 3, &s, buf, sizeof buf, NULL));
  CHECK_STR(buf, "S=\"\"\nE=\"\"\nU=\"\"\n");
}

static void malformed_tables_are_refused(void) {
  keel_config_field f[] = {
      {.env = "E", .type = KEEL_CONFIG_ENUM},
      {.env = "N", .type = KEEL_CONFIG_INT, .offset = 8},
      {.env = "N", .type = KEEL_CONFIG_INT, .offset = 16},
      {.type = KEEL_CONFIG_INT},
      {.env = "B", .type = KEEL_CONFIG_INT, .min = 5, .max = 1},
  };
  int64_t store[8];
  char *err = NULL;
  CHECK_EQ(keel_config_load(f, 5, store, NULL, &err), KEEL_EINVAL);
  CHECK_STR(err, "Invalid configuration: E: invalid table: field is an enum without values\n"
                 "Invalid configuration: N: invalid table: field is declared twice\n"
                 "Invalid configuration: table entry 3: invalid table: field has no environment "
                 "variable\n"
                 "Invalid configuration: B: invalid table: field has min greater than max\n");
  free(err);
  /* a malformed table leaves the struct alone: garbage pointers are not freed */
  keel_config_field g[] = {{.env = "S", .type = KEEL_CONFIG_STRING},
                           {.env = "S", .type = KEEL_CONFIG_STRING, .offset = sizeof(char *)}};
  char *garbage[2] = {(char *)0x10, (char *)0x20};
  CHECK_EQ(keel_config_load(g, 2, garbage, NULL, NULL), KEEL_EINVAL);
  CHECK(garbage[0] == (char *)0x10 && garbage[1] == (char *)0x20);
  CHECK_EQ(keel_config_load(NULL, 1, store, NULL, NULL), KEEL_EINVAL);
  CHECK_OK(keel_config_load(NULL, 0, store, NULL, NULL));
}

static void load_or_exit_prints_every_line_and_exits_78(void) {
  setenv("PORT", "70000", 1);
  setenv("LOG_LEVEL", "loud", 1);
  setenv("JWT_SECRET", "x", 1);
  int fds[2];
  CHECK_OK(pipe(fds));
  fflush(NULL);
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    close(fds[0]);
    dup2(fds[1], 2);
    svc s;
    keel_config_load_or_exit(svc_table, SVC_N, &s, NULL);
    _exit(0); /* not reached */
  }
  close(fds[1]);
  char out[2048];
  size_t got = 0;
  ssize_t r;
  while ((r = read(fds[0], out + got, sizeof out - 1 - got)) > 0)
    got += (size_t)r;
  out[got] = '\0';
  close(fds[0]);
  int status = 0;
  CHECK_EQ(waitpid(pid, &status, 0), pid);
  CHECK(WIFEXITED(status));
  CHECK_EQ(WEXITSTATUS(status), KEEL_CONFIG_EXIT);
  CHECK_STR(out, "Invalid configuration: PORT: must be between 1 and 65535, got 70000\n"
                 "Invalid configuration: LOG_LEVEL: must be one of trace, debug, info, warn, "
                 "error, fatal, got loud\n");
  /* and returns on success */
  unsetenv("PORT");
  unsetenv("LOG_LEVEL");
  svc s;
  keel_config_load_or_exit(svc_table, SVC_N, &s, NULL);
  CHECK_EQ(s.port, 3000);
  keel_config_free(svc_table, SVC_N, &s);
}

typedef struct tcase {
  const char *name;
  void (*fn)(void);
} tcase;

#define T(f)                                                                                       \
  { #f, f }

int main(int argc, char **argv) {
  static const tcase cases[] = {
      T(defaults_fill_every_type),
      T(environment_sets_every_type),
      T(durations_parse_units_and_refuse_the_rest),
      T(bools_accept_six_spellings_in_any_case),
      T(ints_check_syntax_and_overflow),
      T(bounds_are_reported_with_the_offending_value),
      T(enums_match_any_case_and_list_the_choices),
      T(urls_expose_their_parts),
      T(lists_split_trim_and_check_items),
      T(required_fields_must_be_set_and_non_empty),
      T(every_error_is_reported_at_once_in_table_order),
      T(dotenv_reads_comments_quotes_and_export),
      T(dotenv_malformed_lines_are_reported_with_their_numbers),
      T(precedence_is_environment_dotenv_by_env_default),
      T(app_env_selects_defaults_and_is_validated),
      T(secrets_are_never_printed_in_errors),
      T(production_refuses_a_secret_left_at_its_development_default),
      T(cross_field_rules_report_after_the_fields),
      T(describe_masks_secrets_and_is_a_valid_dotenv),
      T(each_visits_fields_in_order_and_stops_on_request),
      T(malformed_tables_are_refused),
      T(load_or_exit_prints_every_line_and_exits_78),
  };
  size_t passed = 0;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    if (argc > 1 && strcmp(argv[1], cases[i].name) != 0) continue;
    fprintf(stderr, "-- %s\n", cases[i].name);
    clean_env();
    cases[i].fn();
    printf("ok - %s\n", cases[i].name);
    passed++;
  }
  printf("%zu passed, 0 failed\n", passed);
  return 0;
}
