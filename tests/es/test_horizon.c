/* test_horizon.c - read_all never skips an event that commits late, and a
 * rolled-back append does not stall the feed (PostgreSQL's xid8 horizon;
 * on SQLite, one writer commits in position order and these cases are
 * skipped). A second writer is a plain libpq connection held open by the
 * test, inserting as keel's appends do (keel_es_reserve, then the row). */
#include "es/kt_beside.h"
#include "es/kt_es.h"

static size_t read_after(keel_es *es, int64_t after, int64_t *first, int64_t *last) {
  keel_es_events evs;
  CHECK_OK(keel_es_read_all(es, after, 0, NULL, &evs));
  size_t n = evs.n;
  if (n) {
    *first = evs.v[0].position;
    *last = evs.v[n - 1].position;
  }
  keel_es_events_free(&evs);
  return n;
}

KT_CASE(a_lower_position_that_commits_last_is_never_skipped) {
  KT_PG_ONLY();
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  keel_es_append_result r0, rb;
  CHECK_OK(kt_append_n(es, "a-1", KEEL_ES_NO_STREAM, "T", 1, 0, &r0));
  PGconn *c = PQconnectdb(s.url);
  CHECK(PQstatus(c) == CONNECTION_OK);
  int64_t late = kt_pg_open_writer(c, "late-1"); /* the lower position, still open */
  CHECK(late > r0.last_position);
  CHECK_OK(kt_append_n(es, "b-1", KEEL_ES_NO_STREAM, "T", 1, 0, &rb)); /* committed */
  CHECK(rb.first_position > late);
  int64_t first = 0, last = 0;
  /* The reader sees neither: the committed one waits behind the open one. */
  CHECK_EQ(read_after(es, r0.last_position, &first, &last), 0);
  PQclear(kt_pg_run(c, "COMMIT"));
  /* Then both, in order. */
  CHECK_EQ(read_after(es, r0.last_position, &first, &last), 2);
  CHECK_EQ(first, late);
  CHECK_EQ(last, rb.first_position);
  PQfinish(c);
  kt_store_close(&s);
}

KT_CASE(a_rolled_back_append_does_not_stall_the_feed) {
  KT_PG_ONLY();
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  PGconn *c = PQconnectdb(s.url);
  CHECK(PQstatus(c) == CONNECTION_OK);
  int64_t lost = kt_pg_open_writer(c, "lost-1");
  keel_es_append_result rb;
  CHECK_OK(kt_append_n(es, "b-1", KEEL_ES_NO_STREAM, "T", 2, 0, &rb));
  int64_t first = 0, last = 0;
  CHECK_EQ(read_after(es, 0, &first, &last), 0);
  PQclear(kt_pg_run(c, "ROLLBACK"));
  CHECK_EQ(read_after(es, 0, &first, &last), 2);
  CHECK_EQ(first, rb.first_position);
  CHECK(first > lost);
  /* and a reader's cursor past the hole goes on */
  CHECK_OK(kt_append_n(es, "b-1", 2, "T", 1, 0, NULL));
  CHECK_EQ(read_after(es, last, &first, &last), 1);
  PQfinish(c);
  kt_store_close(&s);
}

/* Keel's own appends from two processes, one held inside its transaction by
 * a lock the test owns: the same guarantee end to end. */
typedef struct held_append {
  keel_es *es;
  keel_es_append_result r;
  int rc;
} held_append;

static void append_blocked(void *arg) {
  held_append *h = arg;
  h->rc = kt_append_n(h->es, "held-1", KEEL_ES_ANY, "T", 1, 0, &h->r);
}

KT_CASE(an_append_waiting_on_a_lock_holds_the_feed_until_it_commits) {
  KT_PG_ONLY();
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  CHECK_OK(kt_append_n(es, "held-1", KEEL_ES_NO_STREAM, "T", 1, 0, NULL));
  /* the test locks held-1's row: keel's append reserves its position, then
   * waits for the row inside its transaction */
  PGconn *c = PQconnectdb(s.url);
  CHECK(PQstatus(c) == CONNECTION_OK);
  PQclear(kt_pg_run(c, "BEGIN"));
  PQclear(kt_pg_run(c, "SELECT 1 FROM streams WHERE stream = 'held-1' FOR UPDATE"));
  held_append h = {.es = es, .rc = 1};
  keel_ref_t ref;
  keel_spawn_opts so;
  keel_spawn_opts_init(&so);
  so.monitor = true;
  so.monitor_ref = &ref;
  CHECK_OK(keel_spawn(append_blocked, &h, &so, NULL));
  /* wait until its reservation is made (the sequence moved) */
  for (int i = 0; i < 5000; i++) {
    PGresult *r = kt_pg_run(c, "SELECT last_value FROM events_position_seq");
    int64_t v = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    if (v >= 2) break;
    keel_sleep(2);
  }
  keel_es_append_result rb;
  CHECK_OK(kt_append_n(es, "other-1", KEEL_ES_NO_STREAM, "T", 1, 0, &rb)); /* commits */
  int64_t first = 0, last = 0;
  CHECK_EQ(read_after(es, 1, &first, &last), 0);
  PQclear(kt_pg_run(c, "COMMIT")); /* the held append goes on and commits */
  keel_msg_t *m;
  CHECK_OK(keel_receive(&m, 60000));
  keel_msg_free(m);
  CHECK_OK(h.rc);
  CHECK(h.r.first_position < rb.first_position);
  CHECK_EQ(read_after(es, 1, &first, &last), 2);
  CHECK_EQ(first, h.r.first_position);
  CHECK_EQ(last, rb.first_position);
  PQfinish(c);
  kt_store_close(&s);
}

KT_MAIN(KT_ENTRY(a_lower_position_that_commits_last_is_never_skipped),
        KT_ENTRY(a_rolled_back_append_does_not_stall_the_feed),
        KT_ENTRY(an_append_waiting_on_a_lock_holds_the_feed_until_it_commits))
