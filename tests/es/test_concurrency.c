/* test_concurrency.c - the event store under concurrent processes: racing
 * writers with one expected version, group commit, and read_all paging while
 * writers append (no skip, no repeat), and first opens of one new file at once. Run under ThreadSanitizer too. */
#include <time.h>

#include "es/es_internal.h"
#include "es/kt_es.h"

enum { TAG_GO = 1, TAG_DONE = 2 };

typedef struct racer {
  keel_es *es;
  keel_pid_t parent;
  const char *stream;
  int64_t expected;
  int rc;
  keel_es_append_result r;
} racer;

static void race_one(void *arg) {
  racer *a = arg;
  keel_msg_free(kt_recv(10000)); /* TAG_GO: everyone starts together */
  a->rc = kt_append_n(a->es, a->stream, a->expected, "Raced", 1, 0, &a->r);
  kt_send_u64(a->parent, TAG_DONE, 0);
}

KT_CASE(sixteen_writers_with_one_expected_version_one_wins) {
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  enum { N = 16, ROUNDS = 10 };
  for (int round = 0; round < ROUNDS; round++) {
    char stream[32];
    snprintf(stream, sizeof stream, "race-%d", round);
    int64_t at = round % 3; /* fresh, then existing streams */
    if (at) CHECK_OK(kt_append_n(es, stream, KEEL_ES_NO_STREAM, "Seed", (size_t)at, 0, NULL));
    racer r[N];
    keel_pid_t pids[N];
    for (int i = 0; i < N; i++) {
      r[i] = (racer){.es = es, .parent = keel_self(), .stream = stream, .expected = at};
      CHECK_OK(keel_spawn(race_one, &r[i], NULL, &pids[i]));
    }
    for (int i = 0; i < N; i++)
      kt_send_u64(pids[i], TAG_GO, 0);
    for (int i = 0; i < N; i++)
      keel_msg_free(kt_recv(30000));
    int wins = 0;
    for (int i = 0; i < N; i++) {
      if (r[i].rc == 0) {
        wins++;
        CHECK_EQ(r[i].r.version, at + 1);
      } else {
        CHECK_EQ(r[i].rc, KEEL_ECONFLICT);
        CHECK_EQ(r[i].r.expected, at);
        CHECK_EQ(r[i].r.actual, at + 1);
      }
    }
    CHECK_EQ(wins, 1);
    keel_es_stream_info info;
    CHECK_OK(keel_es_stream_info_get(es, stream, &info));
    CHECK_EQ(info.version, at + 1);
    keel_es_stream_info_free(&info);
  }
  kt_store_close(&s);
}

/* ---- group commit ------------------------------------------------------------- */

typedef struct appender {
  keel_es *es;
  keel_pid_t parent;
  int index, count;
} appender;

static void append_loop(void *arg) {
  appender *a = arg;
  char stream[32];
  snprintf(stream, sizeof stream, "g-%d", a->index);
  for (int i = 0; i < a->count; i++) {
    keel_es_append_result r;
    CHECK_OK(kt_append_n(a->es, stream, i, "Tick", 1, i, &r));
    CHECK_EQ(r.version, i + 1);
  }
  kt_send_u64(a->parent, TAG_DONE, 0);
}

/* Runs on the writer thread: holds it until `want` requests are queued. */
typedef struct hold_arg {
  keel_es *es;
  size_t want;
  atomic_int running; /* set by the writer thread once it holds */
} hold_arg;
static void hold_writer(sqlite3 *db, void *arg) {
  hold_arg *h = arg;
  atomic_store(&h->running, 1);
  for (;;) {
    size_t n = 0;
    pthread_mutex_lock(&h->es->mu);
    for (es_req *r = h->es->head; r; r = r->next)
      n++;
    pthread_mutex_unlock(&h->es->mu);
    if (n >= h->want) return;
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
}

static void holder(void *arg) {
  hold_arg *h = arg;
  es_req *r = keel__es_req_new(ES_REQ_FN, NULL);
  CHECK(r != NULL);
  r->fn = hold_writer;
  r->fn_arg = h;
  keel_msg_t *m = NULL;
  CHECK_OK(keel__es_submit(h->es, r, &m));
  keel_msg_free(m);
}

KT_CASE(concurrent_appends_are_folded_into_one_commit) {
  KT_SQLITE_ONLY(); /* group commit is the SQLite writer's */
  keel_metrics *reg;
  CHECK_OK(keel_metrics_new(&reg, 0));
  kt_store s;
  keel_es *es = kt_store_open(&s, &(keel_es_opts){.metrics = reg});
  enum { N = 64 };
  /* Deterministic: the writer is held until all N appends wait, so they
   * must form one group, each with its own result. */
  hold_arg h = {.es = es, .want = N};
  keel_pid_t hp;
  CHECK_OK(keel_spawn(holder, &h, NULL, &hp));
  while (!atomic_load(&h.running))
    keel_sleep(1);
  appender a[N];
  for (int i = 0; i < N; i++) {
    a[i] = (appender){.es = es, .parent = keel_self(), .index = i, .count = 1};
    CHECK_OK(keel_spawn(append_loop, &a[i], NULL, NULL));
  }
  for (int i = 0; i < N; i++)
    keel_msg_free(kt_recv(30000));
  keel_histogram *g = es->m_group;
  uint64_t count;
  double sum;
  keel_histogram_totals(g, &count, &sum);
  CHECK_EQ(count, 1);
  CHECK_EQ((int)sum, N);
  /* Now free-running: 64 processes x 20 appends; every one stored, and
   * (reported, not asserted: timing) how many appends a commit carried. */
  for (int i = 0; i < N; i++) {
    a[i] = (appender){.es = es, .parent = keel_self(), .index = 100 + i, .count = 20};
    CHECK_OK(keel_spawn(append_loop, &a[i], NULL, NULL));
  }
  for (int i = 0; i < N; i++)
    keel_msg_free(kt_recv(60000));
  uint64_t count2;
  double sum2;
  keel_histogram_totals(g, &count2, &sum2);
  CHECK_EQ((int)(sum2 - sum), N * 20);
  fprintf(stderr, "free-running: %d appends in %llu commits (%.1f per commit)\n", N * 20,
          (unsigned long long)(count2 - count), (sum2 - sum) / (double)(count2 - count));
  int64_t head;
  CHECK_OK(keel_es_head(es, &head));
  CHECK_EQ(head, N + N * 20);
  CHECK_EQ(keel_counter_value(es->m_ok), N + N * 20);
  CHECK_EQ(keel_counter_value(es->m_events), N + N * 20);
  kt_store_close(&s);
  keel_metrics_free(reg);
}

/* ---- read_all while writers append --------------------------------------------- */

typedef struct feeder {
  keel_es *es;
  keel_pid_t parent;
  int index;
} feeder;

static void feed(void *arg) {
  feeder *a = arg;
  char stream[32];
  snprintf(stream, sizeof stream, "feed-%d", a->index);
  unsigned seed = (unsigned)a->index * 7919u + 1;
  for (int i = 0; i < 60; i++) {
    seed = seed * 1103515245u + 12345u;
    CHECK_OK(kt_append_n(a->es, stream, KEEL_ES_ANY, "Fed", 1 + (seed >> 16) % 3, i, NULL));
  }
  kt_send_u64(a->parent, TAG_DONE, 0);
}

KT_CASE(paging_read_all_while_eight_writers_append_never_skips_nor_repeats) {
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  enum { W = 8 };
  feeder f[W];
  for (int i = 0; i < W; i++) {
    f[i] = (feeder){.es = es, .parent = keel_self(), .index = i};
    CHECK_OK(keel_spawn(feed, &f[i], NULL, NULL));
  }
  int64_t after = 0, versions[W] = {0};
  int done = 0, pages = 0;
  bool final = false;
  for (;;) {
    keel_es_events evs;
    CHECK_OK(keel_es_read_all(es, after, 7, NULL, &evs));
    pages++;
    for (size_t i = 0; i < evs.n; i++) {
      CHECK_EQ(evs.v[i].position, after + 1); /* no skip, no repeat */
      after = evs.v[i].position;
      int w = atoi(evs.v[i].stream + 5);
      CHECK(w >= 0 && w < W);
      CHECK_EQ(evs.v[i].version, versions[w] + 1); /* each stream in order */
      versions[w] = evs.v[i].version;
    }
    size_t n = evs.n;
    keel_es_events_free(&evs);
    if (n == 0 && final) break;
    keel_msg_t *m = NULL;
    while (done < W && keel_receive(&m, KEEL_NOWAIT) == 0) {
      keel_msg_free(m);
      done++;
    }
    if (done == W && n == 0) final = true; /* one more read after the last append */
  }
  int64_t head, total = 0;
  CHECK_OK(keel_es_head(es, &head));
  CHECK_EQ(after, head);
  for (int i = 0; i < W; i++) {
    keel_es_stream_info info;
    char stream[32];
    snprintf(stream, sizeof stream, "feed-%d", i);
    CHECK_OK(keel_es_stream_info_get(es, stream, &info));
    CHECK_EQ(info.version, versions[i]);
    total += info.version;
    keel_es_stream_info_free(&info);
  }
  CHECK_EQ(total, head);
  fprintf(stderr, "read %lld events in %d pages while 8 writers appended\n", (long long)head,
          pages);
  kt_store_close(&s);
}


/* ---- concurrent first opens of a new file ------------------------------------------------ */

typedef struct opener {
  const char *url;
  keel_pid_t parent;
  int rc;
} opener;

static void open_one(void *arg) {
  opener *a = arg;
  keel_msg_free(kt_recv(10000)); /* TAG_GO: everyone opens together */
  keel_es *es = NULL;
  keel_es_opts o = {.url = a->url};
  a->rc = keel_es_open(&o, &es);
  if (a->rc == 0) a->rc = kt_append_n(es, "opened", KEEL_ES_ANY, "Opened", 1, 0, NULL);
  keel_es_close(es);
  kt_send_u64(a->parent, TAG_DONE, 0);
}

/* Setting WAL on a fresh file takes an exclusive lock, which busy_timeout
 * does not always wait for: every opener must succeed all the same. */
KT_CASE(eight_processes_opening_one_new_file_at_once_all_succeed) {
  KT_SQLITE_ONLY();
  enum { N = 8, ROUNDS = 25 };
  for (int round = 0; round < ROUNDS; round++) {
    kt_store s;
    kt_store_mkdir(&s);
    opener o[N];
    keel_pid_t pids[N];
    for (int i = 0; i < N; i++) {
      o[i] = (opener){.url = s.url, .parent = keel_self()};
      CHECK_OK(keel_spawn(open_one, &o[i], NULL, &pids[i]));
    }
    for (int i = 0; i < N; i++)
      kt_send_u64(pids[i], TAG_GO, 0);
    for (int i = 0; i < N; i++)
      keel_msg_free(kt_recv(30000));
    for (int i = 0; i < N; i++)
      CHECK_OK(o[i].rc);
    s.es = NULL;
    kt_store_rmdir(&s);
  }
}

KT_MAIN(KT_ENTRY(sixteen_writers_with_one_expected_version_one_wins),
        KT_ENTRY(concurrent_appends_are_folded_into_one_commit),
        KT_ENTRY(paging_read_all_while_eight_writers_append_never_skips_nor_repeats),
        KT_ENTRY(eight_processes_opening_one_new_file_at_once_all_succeed))
