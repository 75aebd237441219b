/* test_sub_crash.c - a transactional projection survives SIGKILL: each
 * event applied exactly once to its read model, the subscription resuming
 * exactly after its checkpoint.
 *
 * The test binary re-executes itself as a child ("child URL ROUND"): a keel
 * node with a writer process appending batches of 1-3 events to five
 * streams, and a subscription whose projection keeps, per stream, the count
 * of its events and the sum of their payloads' "i", in the transaction that
 * moves its checkpoint. The parent SIGKILLs the child at a random moment
 * (50-400 ms after it reports that it runs), then opens the store itself and recomputes the read model
 * from the feed up to the stored checkpoint: it must equal the projection's
 * rows exactly (a missed event or one applied twice shows). Several rounds
 * on the same database, each child resuming where the last one was killed.
 * Both backends (on PostgreSQL, the suite's server and a schema of its own).
 */
#include <signal.h>
#include <sys/wait.h>
#include <time.h>

#include "es/kt_es.h"
#include "keel/io.h"
#include "keel/subscription.h"

enum { ROUNDS = 10, STREAMS = 5 };

/* ---- the child ------------------------------------------------------------------ */

static const char *child_url;

static int project(keel_es_tx *tx, const keel_es_event *ev, void *ud) {
  (void)ud;
  char i[24];
  snprintf(i, sizeof i, "%lld", (long long)json_integer_value(json_object_get(keel_es_event_payload(ev), "i")));
  return keel_es_tx_exec(tx,
                         "INSERT INTO crash_model (stream, n, total) VALUES ($1, 1, CAST($2 AS "
                         "BIGINT)) ON CONFLICT (stream) DO UPDATE SET n = crash_model.n + 1, "
                         "total = crash_model.total + excluded.total",
                         (const char *[]){ev->stream, i}, 2, NULL);
}

static int create_model(keel_es_tx *tx, void *arg) {
  (void)arg;
  return keel_es_tx_exec(tx,
                         "CREATE TABLE IF NOT EXISTS crash_model (stream TEXT PRIMARY KEY, "
                         "n BIGINT NOT NULL, total BIGINT NOT NULL)",
                         NULL, 0, NULL);
}

static void child_writer(void *arg) {
  keel_es *es = arg;
  unsigned seed = (unsigned)getpid();
  for (int i = 0;; i++) {
    seed = seed * 1103515245u + 12345u;
    char stream[16];
    snprintf(stream, sizeof stream, "crash-%u", (seed >> 16) % STREAMS);
    if (kt_append_n(es, stream, KEEL_ES_ANY, "Tick", 1 + (seed >> 20) % 3, i, NULL) != 0) _exit(3);
  }
}

static void child_main(void *arg) {
  (void)arg;
  keel_es *es;
  if (keel_es_open(&(keel_es_opts){.url = child_url}, &es) != 0) _exit(2);
  if (keel_es_transact(es, NULL, 0, NULL, NULL, create_model, NULL) != 0) _exit(2);
  static keel_sub_opts o;
  o = (keel_sub_opts){.name = "crash", .es = es, .project = project, .batch = 20, .poll_ms = 5};
  if (keel_sub_start(&o, false, NULL) != 0) _exit(2);
  keel_spawn(child_writer, es, NULL, NULL);
  if (write(1, "r", 1) != 1) _exit(4); /* running: the parent's clock starts */
  keel_sleep(60000); /* killed long before */
  _exit(5);
}

/* ---- the parent ------------------------------------------------------------------- */

static void verify(const char *url, int round) {
  keel_es *es;
  CHECK_OK(keel_es_open(&(keel_es_opts){.url = url}, &es));
  keel_es_rows rows;
  /* a child killed before it made its tables leaves none (KEEL_EINVAL: no
   * such table): nothing projected yet */
  int rc = keel_es_query(es, "SELECT position FROM keel_sub_checkpoints WHERE name = 'crash'",
                         NULL, 0, &rows);
  CHECK(rc == 0 || rc == KEEL_EINVAL);
  int64_t checkpoint = rc == 0 && rows.nrows ? strtoll(keel_es_rows_get(&rows, 0, 0), NULL, 10) : 0;
  keel_es_rows_free(&rows);
  /* the read model as the feed says it must be, up to the checkpoint */
  long long n[STREAMS] = {0}, total[STREAMS] = {0};
  int64_t after = 0;
  for (;;) {
    keel_es_events evs;
    CHECK_OK(keel_es_read_all(es, after, 1000, NULL, &evs));
    size_t k = 0;
    for (; k < evs.n && evs.v[k].position <= checkpoint; k++) {
      int s = atoi(evs.v[k].stream + strlen("crash-"));
      n[s]++;
      total[s] += json_integer_value(json_object_get(keel_es_event_payload(&evs.v[k]), "i"));
    }
    bool more = evs.n > 0 && k == evs.n;
    if (evs.n) after = evs.v[evs.n - 1].position;
    keel_es_events_free(&evs);
    if (!more) break;
  }
  rc = keel_es_query(es, "SELECT stream, n, total FROM crash_model", NULL, 0, &rows);
  CHECK(rc == 0 || (rc == KEEL_EINVAL && checkpoint == 0));
  long long got_n[STREAMS] = {0}, got_total[STREAMS] = {0};
  for (size_t r = 0; r < rows.nrows; r++) {
    int s = atoi(keel_es_rows_get(&rows, r, 0) + strlen("crash-"));
    got_n[s] = strtoll(keel_es_rows_get(&rows, r, 1), NULL, 10);
    got_total[s] = strtoll(keel_es_rows_get(&rows, r, 2), NULL, 10);
  }
  keel_es_rows_free(&rows);
  long long events = 0;
  for (int s = 0; s < STREAMS; s++) {
    CHECK_EQ(got_n[s], n[s]);
    CHECK_EQ(got_total[s], total[s]);
    events += n[s];
  }
  int64_t head;
  CHECK_OK(keel_es_head(es, &head));
  fprintf(stderr, "round %d: checkpoint %lld of head %lld, %lld events projected, exact\n", round,
          (long long)checkpoint, (long long)head, events);
  keel_es_close(es);
}

KT_CASE(a_projection_killed_at_random_applies_each_event_exactly_once) {
  kt_store s;
  kt_store_mkdir(&s);
  unsigned seed = (unsigned)time(NULL);
  fprintf(stderr, "seed %u\n", seed);
  for (int round = 0; round < ROUNDS; round++) {
    int rfd;
    pid_t child = kt_child_start("test_sub_crash", s.url, round, &rfd);
    /* the clock starts when the child runs (a loaded machine can take long
     * to start a sanitized child) */
    CHECK_OK(keel_wait_fd(rfd, KEEL_READABLE, 60000, NULL));
    char c;
    CHECK_EQ(read(rfd, &c, 1), 1);
    close(rfd);
    seed = seed * 1103515245u + 12345u;
    keel_sleep(50 + (int64_t)((seed >> 16) % 350));
    kill(child, SIGKILL);
    int status;
    CHECK_EQ(waitpid(child, &status, 0), child);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    verify(s.url, round);
  }
  kt_store_rmdir(&s);
}

int main(int argc, char **argv) {
  if (argc == 4 && strcmp(argv[1], "child") == 0) {
    child_url = argv[2];
    return keel_run(child_main, NULL, NULL);
  }
  static const kt_case cases[] = {
      KT_ENTRY(a_projection_killed_at_random_applies_each_event_exactly_once)};
  return kt_run_cases(cases, 1, argc, argv);
}
