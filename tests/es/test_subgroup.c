/* test_subgroup.c - partitioned subscription groups: every event handled by
 * exactly one partition, its stream's; on PostgreSQL, three instances (OS
 * processes) share eight partitions, one is killed with SIGKILL, its
 * partitions move to the survivors within the documented bound, and
 * nothing is lost or handled twice; and the server drops connections under
 * running instances (every LISTEN connection, one instance's lock session):
 * the listeners reconnect, that instance stops its partitions and takes its
 * share again, and every event is still handled exactly once.
 *
 * The read model is a table keyed by event id, written by a transactional
 * projection: an event handled twice would be a unique violation, retried
 * and then parked, so "no parked event and one row per event" means once.
 * The instances re-execute this binary ("member URL ID"). */
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>

#include "es/es_internal.h"
#include "es/kt_es.h"
#include "keel/subscription.h"

static int project(keel_es_tx *tx, const keel_es_event *ev, void *ud) {
  const char *member = ud;
  return keel_es_tx_exec(tx, "INSERT INTO seen (event_id, stream, member) VALUES ($1, $2, $3)",
                         (const char *[]){ev->id, ev->stream, member}, 3, NULL);
}

static int create_seen(keel_es_tx *tx, void *arg) {
  (void)arg;
  return keel_es_tx_exec(tx,
                         "CREATE TABLE IF NOT EXISTS seen (event_id TEXT PRIMARY KEY, "
                         "stream TEXT NOT NULL, member TEXT NOT NULL)",
                         NULL, 0, NULL);
}

static int64_t scalar(keel_es *es, const char *sql) {
  keel_es_rows rows;
  CHECK_OK(keel_es_query(es, sql, NULL, 0, &rows));
  int64_t v = rows.nrows ? strtoll(keel_es_rows_get(&rows, 0, 0), NULL, 10) : -1;
  keel_es_rows_free(&rows);
  return v;
}

static int64_t count_events(keel_es *es) {
  int64_t n = 0, after = 0;
  for (;;) {
    keel_es_events evs;
    CHECK_OK(keel_es_read_all(es, after, 1000, NULL, &evs));
    size_t k = evs.n;
    if (k) after = evs.v[k - 1].position;
    n += (int64_t)k;
    keel_es_events_free(&evs);
    if (!k) return n;
  }
}

/* ---- one node ---------------------------------------------------------------------------- */

KT_CASE(each_event_is_handled_by_its_streams_partition_once) {
  kt_store st;
  keel_es *es = kt_store_open(&st, NULL);
  CHECK_OK(keel_es_transact(es, NULL, 0, NULL, NULL, create_seen, NULL));
  for (int i = 0; i < 40; i++) {
    char stream[16];
    snprintf(stream, sizeof stream, "g-%d", i % 13);
    CHECK_OK(kt_append_n(es, stream, KEEL_ES_ANY, "T", 3, i, NULL));
  }
  keel_sub_opts o = {.name = "grp", .es = es, .project = project, .ud = "solo", .partitions = 4,
                     .poll_ms = 20, .rebalance_ms = 50};
  keel_pid_t pid;
  CHECK_OK(keel_sub_start(&o, false, &pid));
  int64_t total = count_events(es);
  for (int i = 0; i < 2000 && scalar(es, "SELECT count(*) FROM seen") < total; i++)
    keel_sleep(10);
  CHECK_EQ(scalar(es, "SELECT count(*) FROM seen"), total);
  CHECK_EQ(scalar(es, "SELECT count(*) FROM keel_sub_parked"), 0);
  /* four partitions, each with its checkpoint at the head's neighbourhood,
   * and each stream's events in one partition only */
  CHECK_EQ(scalar(es, "SELECT count(*) FROM keel_sub_checkpoints WHERE name LIKE 'grp.p%'"), 4);
  keel_sub_status s;
  for (int i = 0; i < 500; i++) {
    CHECK_OK(keel_sub_status_get("grp", &s));
    if (s.caught_up && s.handled == (uint64_t)total) break;
    keel_sleep(10);
  }
  CHECK_EQ(s.handled, (uint64_t)total);
  keel_sub_status p0;
  CHECK_OK(keel_sub_status_get("grp.p0", &p0));
  CHECK(p0.handled > 0 && p0.handled < (uint64_t)total);
  CHECK_EQ(keel__sub_partition_of("g-0", 4), keel__sub_partition_of("g-0", 4));
  CHECK_OK(keel_sub_stop("grp", 0));
  CHECK_EQ(keel_sub_status_get("grp.p0", NULL), KEEL_ENOPROC);
  /* bad group options */
  keel_sub_opts bad = o;
  bad.partitions = 2000;
  CHECK_EQ(keel_sub_start(&bad, false, NULL), KEEL_EINVAL);
  kt_store_close(&st);
}

/* ---- three instances on PostgreSQL ------------------------------------------------------ */

/* An instance's store: url for every call, session_url for LISTEN and the
 * group's locks (the direct connection when url goes through PgBouncer, in
 * the es.bouncer run; the same as url otherwise). */
static const char *member_url, *member_session_url, *member_id;

static void member_main(void *arg) {
  (void)arg;
  keel_es *es;
  if (keel_es_open(&(keel_es_opts){.url = member_url, .session_url = member_session_url}, &es) !=
      0)
    _exit(2);
  if (keel_es_transact(es, NULL, 0, NULL, NULL, create_seen, NULL) != 0) _exit(2);
  static keel_sub_opts o;
  o = (keel_sub_opts){.name = "orders", .es = es, .project = project, .ud = (void *)member_id,
                      .partitions = 8, .member = member_id, .poll_ms = 20, .rebalance_ms = 200,
                      .member_timeout_ms = 1500};
  if (keel_sub_start(&o, false, NULL) != 0) _exit(3);
  keel_sleep(600000); /* killed long before */
  _exit(5);
}

/* Starts an instance; its log (stderr: keel logs there when no log is set
 * up) goes to `log` when not NULL. */
static pid_t spawn_member(const char *url, const char *session_url, const char *id,
                          const char *log) {
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* a failing test leaves no instance behind */
    int fd = log ? open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644) : -1;
    if (fd >= 0) dup2(fd, 2);
    execl("/proc/self/exe", "test_subgroup", "member", url, session_url, id, (char *)NULL);
    _exit(127);
  }
  return pid;
}

/* Partitions whose checkpoint row names an owner among `owners`. */
static int64_t owned_by(keel_es *es, const char *owners_sql_list) {
  char sql[256];
  snprintf(sql, sizeof sql,
           "SELECT count(*) FROM keel_sub_checkpoints WHERE name LIKE 'orders.p%%' AND owner IN (%s)",
           owners_sql_list);
  return scalar(es, sql);
}

enum { TAG_DONE = 5 };

typedef struct writer_arg {
  keel_es *es;
  keel_pid_t parent;
  int count;
  atomic_int written; /* read by the test while it runs; a counter, relaxed is enough */
} writer_arg;

static void writer(void *arg) {
  writer_arg *w = arg;
  for (int i = 0; i < w->count; i++) {
    char stream[16];
    snprintf(stream, sizeof stream, "order-%d", i % 37);
    CHECK_OK(kt_append_n(w->es, stream, KEEL_ES_ANY, "Placed", 1, i, NULL));
    atomic_fetch_add_explicit(&w->written, 1, memory_order_relaxed);
    keel_sleep(2);
  }
  kt_send_u64(w->parent, TAG_DONE, 0);
}

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

KT_CASE(three_instances_share_partitions_and_survive_one_killed) {
  KT_PG_ONLY(); /* instances share a server */
  kt_store st;
  keel_es *es = kt_store_open(&st, NULL);
  CHECK_OK(keel_es_transact(es, NULL, 0, NULL, NULL, create_seen, NULL));
  pid_t m[3] = {spawn_member(st.url, st.admin_url, "m0", NULL),
                spawn_member(st.url, st.admin_url, "m1", NULL),
                spawn_member(st.url, st.admin_url, "m2", NULL)};
  writer_arg w = {.es = es, .parent = keel_self(), .count = 400};
  CHECK_OK(keel_spawn(writer, &w, NULL, NULL));
  /* all eight partitions owned, by all three instances */
  int64_t distinct = 0;
  for (int i = 0; i < 3000; i++) {
    if (scalar(es, "SELECT count(*) FROM information_schema.tables WHERE table_name = "
                   "'keel_sub_checkpoints' AND table_schema = current_schema()") == 1 &&
        owned_by(es, "'m0','m1','m2'") == 8 &&
        (distinct = scalar(es, "SELECT count(DISTINCT owner) FROM keel_sub_checkpoints WHERE "
                               "name LIKE 'orders.p%'")) == 3)
      break;
    keel_sleep(10);
  }
  CHECK_EQ(distinct, 3);
  keel_sleep(300);
  /* one instance dies; its partitions move to the two others */
  CHECK_OK(kill(m[1], SIGKILL));
  int status;
  CHECK_EQ(waitpid(m[1], &status, 0), m[1]);
  double t0 = now_s();
  while (owned_by(es, "'m0','m2'") < 8 && now_s() - t0 < 30)
    keel_sleep(20);
  double moved = now_s() - t0;
  fprintf(stderr, "partitions moved in %.2f s\n", moved);
  CHECK_EQ(owned_by(es, "'m0','m2'"), 8);
  /* documented bound: member_timeout_ms + 2 * rebalance_ms, here 1.9 s, and
   * the time the survivors take to start a partition on a loaded machine */
  CHECK(moved < 10);
  keel_msg_free(kt_recv(120000)); /* the writer is done */
  int64_t total = count_events(es);
  for (int i = 0; i < 3000 && scalar(es, "SELECT count(*) FROM seen") < total; i++)
    keel_sleep(10);
  CHECK_EQ(scalar(es, "SELECT count(*) FROM seen"), total);
  CHECK_EQ(scalar(es, "SELECT count(*) FROM keel_sub_parked"), 0);
  CHECK(scalar(es, "SELECT count(*) FROM seen WHERE member = 'm1'") > 0); /* it did work */
  for (int i = 0; i < 3; i += 2) {
    kill(m[i], SIGKILL);
    waitpid(m[i], &status, 0);
  }
  kt_store_close(&st);
}

/* ---- connections dropped under running instances ---------------------------------------- */

/* The backends that `where` (a condition on pg_stat_activity) selects, as
 * "pid,pid,...", into out ("" when none). */
static void backends(keel_es *es, const char *where, char *out, size_t len) {
  char sql[512];
  snprintf(sql, sizeof sql,
           "SELECT coalesce(string_agg(pid::text, ',' ORDER BY pid), '') FROM pg_stat_activity "
           "WHERE datname = current_database() AND pid <> pg_backend_pid() AND (%s)",
           where);
  keel_es_rows rows;
  CHECK_OK(keel_es_query(es, sql, NULL, 0, &rows));
  snprintf(out, len, "%s", rows.nrows ? keel_es_rows_get(&rows, 0, 0) : "");
  keel_es_rows_free(&rows);
}

/* How many pids a list from backends() names. */
static int count_pids(const char *list) {
  int n = *list != 0;
  for (const char *p = list; *p; p++)
    n += *p == ',';
  return n;
}

/* Ends the backends listed in pids ("pid,pid,..."), as an operator or a
 * failover would: the clients see their connection closed by the server. */
static void terminate(keel_es *es, const char *pids) {
  /* one call per listed pid and no other: a pg_terminate_backend in a
   * WHERE beside a filter may be evaluated on rows the filter rejects */
  keel_es_rows rows;
  CHECK_OK(keel_es_query(es,
                         "SELECT count(*) FILTER (WHERE pg_terminate_backend(p)) FROM "
                         "unnest(string_to_array($1, ',')::int[]) AS p",
                         (const char *[]){pids}, 1, &rows));
  CHECK_EQ(strtoll(keel_es_rows_get(&rows, 0, 0), NULL, 10), count_pids(pids));
  keel_es_rows_free(&rows);
}

/* Whether the file at path contains text. */
static bool log_has(const char *path, const char *text) {
  FILE *f = fopen(path, "r");
  if (!f) return false;
  char line[4096];
  bool found = false;
  while (!found && fgets(line, sizeof line, f))
    found = strstr(line, text) != NULL;
  fclose(f);
  return found;
}

/* Instance mN's LISTEN connection: its URL names it (application_name),
 * and an instance that appends nothing has LISTEN as its last statement. */
#define LISTEN_OF(member) "application_name = '" member "' AND query LIKE 'LISTEN %'"
#define LISTEN_OF_MEMBERS LISTEN_OF("m0") " OR " LISTEN_OF("m1") " OR " LISTEN_OF("m2")
/* The lock session of instance m1: its backend holding the group's
 * partition locks (subgroup.c's key: hashtext(schema:keel_sub:group), i). */
#define LOCK_SESSION_OF_M1                                                                         \
  "application_name = 'm1' AND pid IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND "  \
  "granted AND classid = hashtext(current_schema() || ':keel_sub:orders')::oid)"

KT_CASE(three_instances_survive_their_listen_and_lock_sessions_killed) {
  KT_PG_ONLY(); /* LISTEN and the lock sessions are PostgreSQL's */
  kt_store st;
  keel_es *es = kt_store_open(&st, NULL);
  CHECK_OK(keel_es_transact(es, NULL, 0, NULL, NULL, create_seen, NULL));
  const char *ids[3] = {"m0", "m1", "m2"};
  char urls[3][1300], session_urls[3][1300], logs[3][300];
  pid_t m[3];
  for (int i = 0; i < 3; i++) {
    snprintf(urls[i], sizeof urls[i], "%s%capplication_name=%s", st.url,
             strchr(st.url, '?') ? '&' : '?', ids[i]);
    snprintf(session_urls[i], sizeof session_urls[i], "%s%capplication_name=%s", st.admin_url,
             strchr(st.admin_url, '?') ? '&' : '?', ids[i]);
    snprintf(logs[i], sizeof logs[i], "%s/%s.log", st.dir, ids[i]);
    m[i] = spawn_member(urls[i], session_urls[i], ids[i], logs[i]);
  }
  /* every instance listening, all eight partitions owned, by all three */
  char pids[512] = "";
  int64_t distinct = 0;
  for (double t0 = now_s(); now_s() - t0 < 60; keel_sleep(10)) {
    if (scalar(es, "SELECT count(*) FROM information_schema.tables WHERE table_name = "
                   "'keel_sub_checkpoints' AND table_schema = current_schema()") != 1)
      continue;
    backends(es, LISTEN_OF_MEMBERS, pids, sizeof pids);
    distinct = scalar(es, "SELECT count(DISTINCT owner) FROM keel_sub_checkpoints WHERE "
                          "name LIKE 'orders.p%'");
    if (count_pids(pids) == 3 && owned_by(es, "'m0','m1','m2'") == 8 && distinct == 3) break;
  }
  CHECK_EQ(distinct, 3);
  writer_arg w = {.es = es, .parent = keel_self(), .count = 1000};
  CHECK_OK(keel_spawn(writer, &w, NULL, NULL));
  /* while the writer appends: the server drops every LISTEN connection
   * (the three instances' and the writer's own, which sends its NOTIFYs) */
  while (atomic_load_explicit(&w.written, memory_order_relaxed) < 100)
    keel_sleep(5);
  char listen_pids[600];
  backends(es, LISTEN_OF_MEMBERS " OR application_name = 'keel_es_listen'", listen_pids,
           sizeof listen_pids);
  fprintf(stderr, "LISTEN backends terminated: %s\n", listen_pids);
  CHECK_EQ(count_pids(listen_pids), 4);
  terminate(es, listen_pids);
  /* ... then m1's lock session: the server releases its partition locks */
  while (atomic_load_explicit(&w.written, memory_order_relaxed) < 300)
    keel_sleep(5);
  char lock_pid[64];
  backends(es, LOCK_SESSION_OF_M1, lock_pid, sizeof lock_pid);
  CHECK_EQ(count_pids(lock_pid), 1);
  fprintf(stderr, "m1's lock session terminated: %s\n", lock_pid);
  terminate(es, lock_pid);
  /* both while the writer was still appending */
  CHECK(atomic_load_explicit(&w.written, memory_order_relaxed) < w.count);
  keel_msg_free(kt_recv(120000)); /* the writer is done */
  CHECK_EQ(atomic_load_explicit(&w.written, memory_order_relaxed), w.count);

  /* every event handled exactly once: one row each (a second would be a
   * unique violation, retried, then parked), nothing parked */
  int64_t total = count_events(es);
  for (double t0 = now_s(); now_s() - t0 < 60 && scalar(es, "SELECT count(*) FROM seen") < total;)
    keel_sleep(10);
  CHECK_EQ(scalar(es, "SELECT count(*) FROM seen"), total);
  CHECK_EQ(scalar(es, "SELECT count(*) FROM keel_sub_parked"), 0);

  /* the listeners reconnected: each instance has a new LISTEN connection
   * and logged it, and so has the writer's store */
  char sql[900], now_pids[600] = "";
  snprintf(sql, sizeof sql, "(%s OR application_name = 'keel_es_listen') AND pid NOT IN (%s)",
           LISTEN_OF_MEMBERS, listen_pids);
  bool logged = false;
  for (double t0 = now_s(); now_s() - t0 < 60; keel_sleep(20)) {
    backends(es, sql, now_pids, sizeof now_pids);
    logged = true;
    for (int i = 0; i < 3; i++)
      logged = logged && log_has(logs[i], "the LISTEN connection is back");
    if (logged && count_pids(now_pids) == 4) break;
  }
  CHECK(logged);
  CHECK_EQ(count_pids(now_pids), 4); /* four new LISTEN connections */

  /* m1 saw its session go, stopped its partitions, and holds its share
   * again on a new session: all eight owned, by all three */
  CHECK(log_has(logs[1], "lock session lost; stopping its partitions"));
  char again[64] = "";
  for (double t0 = now_s(); now_s() - t0 < 60; keel_sleep(20)) {
    backends(es, LOCK_SESSION_OF_M1, again, sizeof again);
    distinct = scalar(es, "SELECT count(DISTINCT owner) FROM keel_sub_checkpoints WHERE "
                          "name LIKE 'orders.p%'");
    if (again[0] && strcmp(again, lock_pid) != 0 && owned_by(es, "'m0','m1','m2'") == 8 &&
        distinct == 3)
      break;
  }
  CHECK(again[0] && strcmp(again, lock_pid) != 0);
  CHECK_EQ(owned_by(es, "'m0','m1','m2'"), 8);
  CHECK_EQ(distinct, 3);
  for (int i = 0; i < 3; i++) {
    int status;
    CHECK_EQ(waitpid(m[i], &status, WNOHANG), 0); /* no instance died on the way */
    kill(m[i], SIGKILL);
    waitpid(m[i], &status, 0);
  }
  kt_store_close(&st);
}

int main(int argc, char **argv) {
  if (argc == 5 && strcmp(argv[1], "member") == 0) {
    member_url = argv[2];
    member_session_url = argv[3];
    member_id = argv[4];
    return keel_run(member_main, NULL, NULL);
  }
  static const kt_case cases[] = {
      KT_ENTRY(each_event_is_handled_by_its_streams_partition_once),
      KT_ENTRY_SCHED(three_instances_share_partitions_and_survive_one_killed, 2),
      KT_ENTRY_SCHED(three_instances_survive_their_listen_and_lock_sessions_killed, 2)};
  return kt_run_cases(cases, 3, argc, argv);
}
