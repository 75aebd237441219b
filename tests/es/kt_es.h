/* kt_es.h - what the event store's tests share: a store in a fresh temporary
 * folder (a file, WAL: the readers need their own connections, which a
 * private :memory: database cannot give), and small append helpers.
 *
 * Backends. With KEEL_TEST_ES_URL (a postgresql:// URL) or
 * KEEL_TEST_ES_URL_FILE (a file holding one: tests/es/pg_cluster.sh writes
 * it) set, every store is on PostgreSQL instead, each in a schema of its own
 * (created here, dropped by kt_store_close), so that suites running at once
 * under ctest -j never meet. KT_SQLITE_ONLY() skips a case that is about
 * SQLite itself.
 *
 * Behind PgBouncer (the es.bouncer.* suites): with KEEL_TEST_ES_BOUNCER_PORT_FILE
 * set too (tests/es/pgbouncer.sh writes it), each store gets a database of its
 * own instead (PgBouncer refuses the options startup parameter a schema needs),
 * created and dropped on the server directly, and the store connects to it
 * through PgBouncer in transaction mode, with session_url the direct
 * connection (LISTEN and a group's locks need a session). s->admin_url is
 * that direct connection, also for a test's own statements; s->schema is
 * then "public". */
#ifndef KT_ES_H
#define KT_ES_H

#include <dirent.h>
#include <libpq-fe.h>
#include <unistd.h>

#include "keel_test.h"
#include "keel/eventstore.h"

typedef struct kt_store {
  char dir[256];
  char url[1200];
  char schema[64]; /* PostgreSQL: the store's schema ("" on SQLite) */
  char database[64]; /* behind PgBouncer: the store's database ("" otherwise) */
  char admin_url[1200]; /* PostgreSQL: a direct connection to the store's database */
  keel_es *es;
} kt_store;

/* The PostgreSQL URL the suite runs on, or NULL (SQLite). */
static inline const char *kt_es_pg_url(void) {
  static char buf[1024];
  const char *u = getenv("KEEL_TEST_ES_URL");
  if (u && *u) return u;
  const char *file = getenv("KEEL_TEST_ES_URL_FILE");
  if (!file || !*file) return NULL;
  if (buf[0]) return buf;
  FILE *f = fopen(file, "r");
  if (!f) {
    fprintf(stderr, "kt_es: %s missing (is the PostgreSQL fixture running?)\n", file);
    abort();
  }
  if (!fgets(buf, sizeof buf, f)) buf[0] = 0;
  fclose(f);
  buf[strcspn(buf, "\r\n")] = 0;
  CHECK(buf[0] != 0);
  return buf;
}

/* The PgBouncer port the suite's stores connect through, or 0 (none). */
static inline int kt_es_bouncer_port(void) {
  const char *file = getenv("KEEL_TEST_ES_BOUNCER_PORT_FILE");
  if (!file || !*file) return 0;
  FILE *f = fopen(file, "r");
  if (!f) {
    fprintf(stderr, "kt_es: %s missing (is the PgBouncer fixture running?)\n", file);
    abort();
  }
  int port = 0;
  if (fscanf(f, "%d", &port) != 1) port = 0;
  fclose(f);
  CHECK(port > 0);
  return port;
}

#define KT_SQLITE_ONLY()                                                                           \
  do {                                                                                             \
    if (kt_es_pg_url()) {                                                                          \
      fprintf(stderr, "   (SQLite only: skipped on PostgreSQL)\n");                                \
      return;                                                                                      \
    }                                                                                              \
  } while (0)

#define KT_PG_ONLY()                                                                               \
  do {                                                                                             \
    if (!kt_es_pg_url()) {                                                                         \
      fprintf(stderr, "   (PostgreSQL only: skipped on SQLite)\n");                                \
      return;                                                                                      \
    }                                                                                              \
  } while (0)

/* One statement on a test's own libpq connection; aborts the test with the
 * server's message when it fails. The caller PQclears the result. */
static inline PGresult *kt_pg_run(PGconn *c, const char *sql) {
  PGresult *r = PQexec(c, sql);
  if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
    fprintf(stderr, "%s: %s\n", sql, PQresultErrorMessage(r));
    abort();
  }
  return r;
}

/* Runs sql on the store's database outside keel (a blocking client, a test
 * only). 0 or nonzero, the server's message in err. On SQLite, on the file. */
static inline void kt_pg_quiet(void *arg, const char *msg) {
  (void)arg;
  (void)msg;
}

static inline int kt_pg_exec(const char *url, const char *sql, char *err, size_t errlen) {
  PGconn *c = PQconnectdb(url);
  CHECK(PQstatus(c) == CONNECTION_OK);
  PQsetNoticeProcessor(c, kt_pg_quiet, NULL);
  PGresult *r = PQexec(c, sql);
  int bad = PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK;
  if (err) snprintf(err, errlen, "%s", bad ? PQresultErrorMessage(r) : "");
  PQclear(r);
  PQfinish(c);
  return bad;
}

static inline void kt_store_mkdir(kt_store *s) {
  const char *t = getenv("TMPDIR");
  snprintf(s->dir, sizeof s->dir, "%s/keel-es-test-XXXXXX", t && *t ? t : "/tmp");
  CHECK(mkdtemp(s->dir) != NULL);
  s->schema[0] = 0;
  s->database[0] = 0;
  s->admin_url[0] = 0;
  const char *pg = kt_es_pg_url();
  if (!pg) {
    snprintf(s->url, sizeof s->url, "sqlite:%s/es.db", s->dir);
    return;
  }
  static int serial;
  char err[512];
  int bouncer = kt_es_bouncer_port();
  if (bouncer) {
    snprintf(s->database, sizeof s->database, "kt_%d_%d", (int)getpid(), ++serial);
    snprintf(s->schema, sizeof s->schema, "public");
    char sql[200];
    snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", s->database);
    kt_pg_exec(pg, sql, NULL, 0);
    snprintf(sql, sizeof sql, "CREATE DATABASE %s", s->database);
    if (kt_pg_exec(pg, sql, err, sizeof err)) {
      fprintf(stderr, "kt_es: %s\n", err);
      abort();
    }
    snprintf(s->admin_url, sizeof s->admin_url, "%s%cdbname=%s", pg, strchr(pg, '?') ? '&' : '?',
             s->database);
    snprintf(s->url, sizeof s->url, "postgresql://postgres@127.0.0.1:%d/%s", bouncer,
             s->database);
    return;
  }
  snprintf(s->schema, sizeof s->schema, "kt_%d_%d", (int)getpid(), ++serial);
  char sql[200];
  snprintf(sql, sizeof sql, "DROP SCHEMA IF EXISTS %s CASCADE; CREATE SCHEMA %s", s->schema,
           s->schema);
  if (kt_pg_exec(pg, sql, err, sizeof err)) {
    fprintf(stderr, "kt_es: %s\n", err);
    abort();
  }
  snprintf(s->url, sizeof s->url, "%s%coptions=-csearch_path%%3D%s", pg,
           strchr(pg, '?') ? '&' : '?', s->schema);
  snprintf(s->admin_url, sizeof s->admin_url, "%s", s->url);
}

/* Opens a store in a new folder; o may be NULL (defaults). */
static inline keel_es *kt_store_open(kt_store *s, const keel_es_opts *o) {
  kt_store_mkdir(s);
  keel_es_opts oo = {0};
  if (o) oo = *o;
  oo.url = s->url;
  if (s->database[0] && !oo.session_url) oo.session_url = s->admin_url;
  CHECK_OK(keel_es_open(&oo, &s->es));
  return s->es;
}

static inline void kt_store_rmdir(kt_store *s) {
  DIR *d = opendir(s->dir);
  if (d) {
    struct dirent *e;
    char p[600];
    while ((e = readdir(d)))
      if (e->d_name[0] != '.') {
        snprintf(p, sizeof p, "%s/%s", s->dir, e->d_name);
        unlink(p);
      }
    closedir(d);
  }
  rmdir(s->dir);
  if (s->database[0]) {
    char sql[128];
    snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", s->database);
    kt_pg_exec(kt_es_pg_url(), sql, NULL, 0);
    s->database[0] = 0;
    s->schema[0] = 0;
  } else if (s->schema[0]) {
    char sql[128];
    snprintf(sql, sizeof sql, "DROP SCHEMA IF EXISTS %s CASCADE", s->schema);
    kt_pg_exec(kt_es_pg_url(), sql, NULL, 0);
    s->schema[0] = 0;
  }
}

static inline void kt_store_close(kt_store *s) {
  keel_es_close(s->es);
  s->es = NULL;
  kt_store_rmdir(s);
}

/* Appends n events of `type` with payload {"i": first + k}; returns the code. */
static inline int kt_append_n(keel_es *es, const char *stream, int64_t expected, const char *type,
                              size_t n, int first, keel_es_append_result *r) {
  keel_es_event_in *ev = calloc(n ? n : 1, sizeof *ev);
  CHECK(ev != NULL);
  for (size_t k = 0; k < n; k++) {
    ev[k].type = type;
    ev[k].payload = json_pack("{s:i}", "i", first + (int)k);
  }
  int rc = keel_es_append(es, stream, expected, ev, n, r);
  for (size_t k = 0; k < n; k++)
    json_decref(ev[k].payload);
  free(ev);
  return rc;
}

static inline int kt_payload_i(const keel_es_event *e) {
  return (int)json_integer_value(json_object_get(keel_es_event_payload(e), "i"));
}

/* Runs this test program again as a child, `/proc/self/exe child TARGET
 * ROUND` (argv[0] NAME), its stdout a pipe whose read end is *rfd (the
 * caller closes it); returns the child's pid. For the tests that SIGKILL a
 * writer at random and check what survived (test_durability, test_sub_crash). */
static inline pid_t kt_child_start(const char *name, const char *target, int round, int *rfd) {
  int fd[2];
  CHECK_OK(pipe(fd));
  pid_t child = fork();
  CHECK(child >= 0);
  if (child == 0) {
    dup2(fd[1], 1);
    close(fd[0]);
    close(fd[1]);
    char r[16];
    snprintf(r, sizeof r, "%d", round);
    execl("/proc/self/exe", name, "child", target, r, (char *)NULL);
    _exit(127);
  }
  close(fd[1]);
  *rfd = fd[0];
  return child;
}

#endif
