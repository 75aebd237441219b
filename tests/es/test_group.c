/* test_group.c - group commit: many concurrent appends folded into shared
 * transactions (SQLite's writer; PostgreSQL's pg_group.c) each keep their
 * own verdict: appends to one stream get contiguous versions, a conflict
 * fails only its append and leaves no stream behind, of N appends racing for
 * a new stream exactly one wins, and the global order holds every event
 * once, in position order. Whether appends were actually folded depends on
 * timing, so the verdicts never do: they hold for any grouping. */
#include <stdatomic.h>

#include "es/kt_es.h"

enum { SHARED = 24, SHARED_EACH = 5, FRESH = 12, MISSING = 12, RACERS = 8 };

typedef enum { W_SHARED, W_FRESH, W_MISSING, W_RACE } wkind;

typedef struct warg {
  keel_es *es;
  wkind kind;
  int i;
  int rc;
  int ok;
  keel_es_append_result r;
} warg;

static void worker(void *arg) {
  warg *w = arg;
  char stream[48];
  switch (w->kind) {
  case W_SHARED:
    for (int k = 0; k < SHARED_EACH; k++) {
      int rc = kt_append_n(w->es, "g-shared", KEEL_ES_ANY, "T", 1, k, &w->r);
      if (rc == 0) w->ok++;
      w->rc = w->rc ? w->rc : rc;
    }
    break;
  case W_FRESH:
    snprintf(stream, sizeof stream, "g-fresh-%d", w->i);
    w->rc = kt_append_n(w->es, stream, KEEL_ES_NO_STREAM, "T", 2, 0, &w->r);
    break;
  case W_MISSING:
    snprintf(stream, sizeof stream, "g-missing-%d", w->i);
    w->rc = kt_append_n(w->es, stream, KEEL_ES_STREAM_EXISTS, "T", 1, 0, &w->r);
    break;
  case W_RACE: w->rc = kt_append_n(w->es, "g-race", KEEL_ES_NO_STREAM, "T", 1, 0, &w->r); break;
  }
}

KT_CASE(concurrent_appends_in_groups_keep_their_own_verdicts) {
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  enum { N = SHARED + FRESH + MISSING + RACERS };
  static warg w[N];
  int n = 0;
  for (int i = 0; i < SHARED; i++)
    w[n++] = (warg){.es = es, .kind = W_SHARED, .i = i};
  for (int i = 0; i < FRESH; i++) {
    w[n++] = (warg){.es = es, .kind = W_FRESH, .i = i};
    w[n++] = (warg){.es = es, .kind = W_MISSING, .i = i};
  }
  for (int i = 0; i < RACERS; i++)
    w[n++] = (warg){.es = es, .kind = W_RACE, .i = i};
  CHECK_EQ(n, N);
  for (int i = 0; i < N; i++) {
    keel_spawn_opts so;
    keel_spawn_opts_init(&so);
    so.monitor = true;
    CHECK_OK(keel_spawn(worker, &w[i], &so, NULL));
  }
  for (int i = 0; i < N; i++) {
    keel_msg_t *m;
    CHECK_OK(keel_receive(&m, 120000));
    keel_msg_free(m);
  }
  int race_wins = 0;
  for (int i = 0; i < N; i++) {
    switch (w[i].kind) {
    case W_SHARED:
      CHECK_OK(w[i].rc);
      CHECK_EQ(w[i].ok, SHARED_EACH);
      break;
    case W_FRESH:
      CHECK_OK(w[i].rc);
      CHECK_EQ(w[i].r.version, 2);
      CHECK_EQ(w[i].r.last_position, w[i].r.first_position + 1);
      break;
    case W_MISSING:
      CHECK_EQ(w[i].rc, KEEL_ECONFLICT);
      CHECK_EQ(w[i].r.expected, KEEL_ES_STREAM_EXISTS);
      CHECK_EQ(w[i].r.actual, 0);
      break;
    case W_RACE:
      if (w[i].rc == 0) {
        race_wins++;
        CHECK_EQ(w[i].r.version, 1);
      } else {
        CHECK_EQ(w[i].rc, KEEL_ECONFLICT);
        CHECK_EQ(w[i].r.actual, 1);
      }
      break;
    }
  }
  CHECK_EQ(race_wins, 1);
  /* a conflict leaves nothing: not even the stream's row */
  for (int i = 0; i < MISSING; i++) {
    char stream[48];
    snprintf(stream, sizeof stream, "g-missing-%d", i);
    keel_es_stream_info info;
    CHECK_EQ(keel_es_stream_info_get(es, stream, &info), KEEL_ENOENT);
  }
  /* the shared stream: versions 1..N contiguous, positions increasing */
  keel_es_events evs;
  CHECK_OK(keel_es_read_stream(es, "g-shared", &(keel_es_read_opts){.limit = 100000}, &evs));
  CHECK_EQ(evs.n, (size_t)(SHARED * SHARED_EACH));
  for (size_t k = 0; k < evs.n; k++) {
    CHECK_EQ(evs.v[k].version, (int64_t)k + 1);
    if (k) CHECK(evs.v[k].position > evs.v[k - 1].position);
  }
  keel_es_events_free(&evs);
  /* the global order: every stored event once, in position order */
  size_t want = SHARED * SHARED_EACH + FRESH * 2 + 1, got = 0;
  int64_t after = 0;
  for (int tries = 0; got < want && tries < 2000; tries++) {
    CHECK_OK(keel_es_read_all(es, after, 0, NULL, &evs));
    for (size_t k = 0; k < evs.n; k++) {
      CHECK(evs.v[k].position > after);
      after = evs.v[k].position;
    }
    got += evs.n;
    if (evs.n == 0) keel_sleep(5); /* PostgreSQL: until the horizon passes them */
    keel_es_events_free(&evs);
  }
  CHECK_EQ(got, want);
  kt_store_close(&s);
}

KT_CASE(an_append_after_a_grouped_conflict_on_a_new_stream_starts_at_version_one) {
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  keel_es_append_result r;
  CHECK_EQ(kt_append_n(es, "g-later", 3, "T", 1, 0, &r), KEEL_ECONFLICT);
  CHECK_EQ(r.actual, 0);
  CHECK_OK(kt_append_n(es, "g-later", KEEL_ES_NO_STREAM, "T", 1, 0, &r));
  CHECK_EQ(r.version, 1);
  /* metadata set before any event survives a conflicting append */
  json_t *md = json_pack("{s:s}", "owner", "ops");
  CHECK_OK(keel_es_stream_set_metadata(es, "g-meta", md));
  json_decref(md);
  CHECK_EQ(kt_append_n(es, "g-meta", KEEL_ES_STREAM_EXISTS, "T", 1, 0, &r), KEEL_ECONFLICT);
  keel_es_stream_info info;
  CHECK_OK(keel_es_stream_info_get(es, "g-meta", &info));
  CHECK_EQ(info.version, 0);
  CHECK_STR(json_string_value(json_object_get(info.metadata, "owner")), "ops");
  keel_es_stream_info_free(&info);
  kt_store_close(&s);
}

/* ---- PostgreSQL: a group that waits does not hold the others ------------------ */

typedef struct blocked {
  keel_es *es;
  const char *stream;
  atomic_int finished;
  int rc;
} blocked;

static void append_blocked(void *arg) {
  blocked *b = arg;
  b->rc = kt_append_n(b->es, b->stream, KEEL_ES_ANY, "T", 1, 0, NULL);
  atomic_store(&b->finished, 1);
}

static long waiting_locks(PGconn *c) {
  PGresult *r = PQexec(c, "SELECT count(*) FROM pg_locks WHERE NOT granted");
  long n = strtol(PQgetvalue(r, 0, 0), NULL, 10);
  PQclear(r);
  return n;
}

KT_CASE(appends_pass_groups_that_wait_on_rows_other_clients_hold) {
  if (!kt_es_pg_url()) {
    fprintf(stderr, "   (PostgreSQL only: skipped on SQLite)\n");
    return;
  }
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL); /* pool_max 10: five groups at a time */
  CHECK_OK(kt_append_n(es, "hol-a", KEEL_ES_NO_STREAM, "T", 1, 0, NULL));
  CHECK_OK(kt_append_n(es, "hol-c", KEEL_ES_NO_STREAM, "T", 1, 0, NULL));
  PGconn *c = PQconnectdb(s.url);
  CHECK(PQstatus(c) == CONNECTION_OK);
  PQclear(PQexec(c, "BEGIN"));
  PQclear(PQexec(c, "SELECT 1 FROM streams WHERE stream IN ('hol-a', 'hol-c') FOR UPDATE"));
  /* two appends, each leading a group that waits on a row lock */
  blocked b[2] = {{.es = es, .stream = "hol-a"}, {.es = es, .stream = "hol-c"}};
  for (int i = 0; i < 2; i++) {
    keel_spawn_opts so;
    keel_spawn_opts_init(&so);
    so.monitor = true;
    CHECK_OK(keel_spawn(append_blocked, &b[i], &so, NULL));
  }
  for (int i = 0; i < 5000 && waiting_locks(c) < 2; i++)
    keel_sleep(2);
  CHECK_EQ(waiting_locks(c), 2);
  /* appends to other streams go through while both still wait */
  for (int k = 0; k < 5; k++)
    CHECK_OK(kt_append_n(es, "hol-b", KEEL_ES_ANY, "T", 1, k, NULL));
  CHECK_EQ(atomic_load(&b[0].finished), 0);
  CHECK_EQ(atomic_load(&b[1].finished), 0);
  PQclear(PQexec(c, "COMMIT"));
  for (int i = 0; i < 2; i++) {
    keel_msg_t *m;
    CHECK_OK(keel_receive(&m, 60000));
    keel_msg_free(m);
    CHECK_OK(b[i].rc);
  }
  PQfinish(c);
  kt_store_close(&s);
}

KT_MAIN(KT_ENTRY(concurrent_appends_in_groups_keep_their_own_verdicts),
        KT_ENTRY(an_append_after_a_grouped_conflict_on_a_new_stream_starts_at_version_one),
        KT_ENTRY(appends_pass_groups_that_wait_on_rows_other_clients_hold))
