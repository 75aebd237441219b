/* test_subgroup.c - partitioned subscription groups: every event handled by
 * exactly one partition, its stream's; on PostgreSQL, three instances (OS
 * processes) share eight partitions, one is killed with SIGKILL, its
 * partitions move to the survivors within the documented bound, and
 * nothing is lost or handled twice.
 *
 * The read model is a table keyed by event id, written by a transactional
 * projection: an event handled twice would be a unique violation, retried
 * and then parked, so "no parked event and one row per event" means once.
 * The instances re-execute this binary ("member URL ID"). */
#include <signal.h>
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

static const char *member_url, *member_id;

static void member_main(void *arg) {
  (void)arg;
  keel_es *es;
  if (keel_es_open(&(keel_es_opts){.url = member_url}, &es) != 0) _exit(2);
  if (keel_es_transact(es, NULL, 0, NULL, NULL, create_seen, NULL) != 0) _exit(2);
  static keel_sub_opts o;
  o = (keel_sub_opts){.name = "orders", .es = es, .project = project, .ud = (void *)member_id,
                      .partitions = 8, .member = member_id, .poll_ms = 20, .rebalance_ms = 200,
                      .member_timeout_ms = 1500};
  if (keel_sub_start(&o, false, NULL) != 0) _exit(3);
  keel_sleep(600000); /* killed long before */
  _exit(5);
}

static pid_t spawn_member(const char *url, const char *id) {
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* a failing test leaves no instance behind */
    execl("/proc/self/exe", "test_subgroup", "member", url, id, (char *)NULL);
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
} writer_arg;

static void writer(void *arg) {
  writer_arg *w = arg;
  for (int i = 0; i < w->count; i++) {
    char stream[16];
    snprintf(stream, sizeof stream, "order-%d", i % 37);
    CHECK_OK(kt_append_n(w->es, stream, KEEL_ES_ANY, "Placed", 1, i, NULL));
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
  pid_t m[3] = {spawn_member(st.url, "m0"), spawn_member(st.url, "m1"),
                spawn_member(st.url, "m2")};
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

int main(int argc, char **argv) {
  if (argc == 4 && strcmp(argv[1], "member") == 0) {
    member_url = argv[2];
    member_id = argv[3];
    return keel_run(member_main, NULL, NULL);
  }
  static const kt_case cases[] = {
      KT_ENTRY(each_event_is_handled_by_its_streams_partition_once),
      KT_ENTRY_SCHED(three_instances_share_partitions_and_survive_one_killed, 2)};
  return kt_run_cases(cases, 2, argc, argv);
}
