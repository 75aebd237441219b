/* test_aggregate.c - aggregates and snapshots (keel/aggregate.h, the snapshot
 * calls of keel/eventstore.h), on both backends: snapshot plus tail equals
 * full replay; snapshots every N, a batch crossing a multiple; a snapshot of
 * another version or one that does not decode is ignored, logged, not fatal;
 * an older save never replaces a newer snapshot; truncate and delete; N
 * processes on one aggregate (retries, and too few retries); a rejection
 * appends nothing; upcasters on the aggregate's load. Concurrent processes:
 * run under ThreadSanitizer too. */
#include <stdatomic.h>

#include "es/es_internal.h"
#include "es/kt_es.h"
#include "keel/aggregate.h"

/* ---- a bank account ------------------------------------------------------------ */

/* content: what the events say (equal for two accounts given the same
 * commands); identity: which stored events they were (ids, positions,
 * occurred_at: equal only for two loads of the same stream). */
typedef struct account {
  int64_t balance, deposits, withdrawals, version;
  int64_t content, identity;
} account;

enum { INSUFFICIENT_FUNDS = 1 }; /* the application's own rejection code */

static int64_t mix(int64_t h, int64_t v) {
  return (int64_t)(((uint64_t)h ^ (uint64_t)v) * 1099511628211ull);
}

static int64_t mix_str(int64_t h, const char *s) {
  for (; *s; s++)
    h = mix(h, (unsigned char)*s);
  return h;
}

static void *acct_init(void *ud) {
  (void)ud;
  return calloc(1, sizeof(account));
}

static void acct_destroy(void *s, void *ud) {
  (void)ud;
  free(s);
}

static int acct_apply(void *s, const keel_es_event *e, void *ud) {
  (void)ud;
  account *a = s;
  int64_t amount = json_integer_value(json_object_get(keel_es_event_payload(e), "amount"));
  if (strcmp(e->type, "Deposited") == 0) {
    a->balance += amount;
    a->deposits++;
  } else if (strcmp(e->type, "Withdrawn") == 0) {
    a->balance -= amount;
    a->withdrawals++;
  } else {
    return KEEL_EINVAL;
  }
  a->version = e->version;
  a->content = mix(mix(mix_str(a->content, e->type), amount), e->version);
  a->identity =
      mix(mix(mix_str(a->identity, e->id), e->position), e->occurred_at_ms + e->schema_version);
  return 0;
}

static json_t *acct_encode(const void *s, void *ud) {
  (void)ud;
  const account *a = s;
  return json_pack("{s:I,s:I,s:I,s:I,s:I,s:I}", "balance", (json_int_t)a->balance, "deposits",
                   (json_int_t)a->deposits, "withdrawals", (json_int_t)a->withdrawals, "version",
                   (json_int_t)a->version, "content", (json_int_t)a->content, "identity",
                   (json_int_t)a->identity);
}

static atomic_int decode_calls;

static void *acct_decode(const json_t *j, void *ud) {
  (void)ud;
  atomic_fetch_add(&decode_calls, 1);
  json_int_t v[6];
  if (json_unpack((json_t *)j, "{s:I,s:I,s:I,s:I,s:I,s:I}", "balance", &v[0], "deposits", &v[1],
                  "withdrawals", &v[2], "version", &v[3], "content", &v[4], "identity", &v[5]) != 0)
    return NULL;
  account *a = calloc(1, sizeof *a);
  if (a) *a = (account){v[0], v[1], v[2], v[3], v[4], v[5]};
  return a;
}

static const keel_agg_def plain = {
    .category = "acct", .init = acct_init, .apply = acct_apply, .destroy = acct_destroy};

static keel_agg_def with_snapshots(int64_t every) {
  keel_agg_def d = plain;
  d.encode = acct_encode;
  d.decode = acct_decode;
  d.snapshot_every = every;
  return d;
}

/* ---- commands -------------------------------------------------------------------- */

typedef struct barrier {
  atomic_int arrived;
  int n;
} barrier;

typedef struct cmd {
  int64_t deposit;  /* > 0: deposit this, `count` times */
  int64_t withdraw; /* > 0: withdraw this (rejected beyond the balance) */
  int count;
  barrier *b; /* concurrent tests: the first decide waits for every process */
  int *calls;
} cmd;

static int decide(const void *state, const void *c_, keel_agg_decision *d) {
  const account *a = state;
  const cmd *c = c_;
  if (c->calls && (*c->calls)++ == 0 && c->b) {
    atomic_fetch_add(&c->b->arrived, 1);
    while (atomic_load(&c->b->arrived) < c->b->n)
      keel_sleep(1);
  }
  if (c->withdraw > 0) {
    if (c->withdraw > a->balance)
      return keel_agg_reject(d, INSUFFICIENT_FUNDS, "balance %lld, asked %lld",
                             (long long)a->balance, (long long)c->withdraw);
    return keel_agg_emit(d, "Withdrawn", json_pack("{s:I}", "amount", (json_int_t)c->withdraw));
  }
  for (int k = 0; k < (c->count ? c->count : 1); k++) {
    int rc = keel_agg_emit(d, "Deposited", json_pack("{s:I}", "amount", (json_int_t)c->deposit));
    if (rc) return rc;
  }
  return 0;
}

static int deposit(keel_es *es, const keel_agg_def *def, const char *id, int64_t amount, int count,
                   keel_agg_result *r) {
  cmd c = {.deposit = amount, .count = count};
  return keel_agg_execute(es, def, id, decide, &c, r);
}

static account load(keel_es *es, const keel_agg_def *def, const char *id) {
  void *s = NULL;
  int64_t version = -1;
  CHECK_OK(keel_agg_load(es, def, id, &s, &version));
  account a = *(account *)s;
  /* the state's last event is the version, unless no event is readable */
  if (a.deposits + a.withdrawals > 0) CHECK_EQ(a.version, version);
  a.version = version;
  free(s);
  return a;
}

/* The account folded by hand from read_stream, up to version `to` (0: all). */
static account replay(keel_es *es, const char *stream, int64_t to) {
  account a = {0};
  keel_es_events evs;
  CHECK_OK(keel_es_read_stream(es, stream, &(keel_es_read_opts){.to = to, .limit = 100000}, &evs));
  for (size_t i = 0; i < evs.n; i++)
    CHECK_OK(acct_apply(&a, &evs.v[i], NULL));
  keel_es_events_free(&evs);
  return a;
}

static void check_same(const account *x, const account *y) {
  CHECK_EQ(x->balance, y->balance);
  CHECK_EQ(x->deposits, y->deposits);
  CHECK_EQ(x->withdrawals, y->withdrawals);
  CHECK_EQ(x->version, y->version);
  CHECK_EQ(x->content, y->content);
  CHECK_EQ(x->identity, y->identity);
}

/* ---- snapshot plus tail -------------------------------------------------------------- */

KT_CASE(snapshot_plus_tail_equals_full_replay) {
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  keel_agg_def snap = with_snapshots(7);
  int saved = 0;
  /* the same commands on two accounts: with snapshots and without */
  for (int i = 0; i < 120; i++) {
    cmd c = {.deposit = 10 + i % 13, .count = 1 + i % 3};
    if (i % 5 == 4) c = (cmd){.withdraw = 15 + (i * 7) % 40};
    keel_agg_result r1, r2;
    int rc1 = keel_agg_execute(es, &snap, "on", decide, &c, &r1);
    int rc2 = keel_agg_execute(es, &plain, "off", decide, &c, &r2);
    CHECK_EQ(rc1, rc2);
    CHECK(rc1 == 0 || rc1 == INSUFFICIENT_FUNDS);
    CHECK_EQ(r1.version, r2.version);
    CHECK(!r2.snapshot_saved);
    saved += r1.snapshot_saved;
  }
  CHECK(saved > 10);
  /* end on a command that saved nothing: the head is past the snapshot */
  for (;;) {
    keel_agg_result r1, r2;
    CHECK_OK(deposit(es, &snap, "on", 1, 1, &r1));
    CHECK_OK(deposit(es, &plain, "off", 1, 1, &r2));
    if (!r1.snapshot_saved) break;
  }
  account on = load(es, &snap, "on"), off = load(es, &plain, "off");
  CHECK_EQ(on.balance, off.balance);
  CHECK_EQ(on.deposits, off.deposits);
  CHECK_EQ(on.withdrawals, off.withdrawals);
  CHECK_EQ(on.version, off.version);
  CHECK_EQ(on.content, off.content);
  /* the snapshot is behind the head: the load above was snapshot + tail */
  keel_es_snapshot sn;
  CHECK_OK(keel_es_snapshot_load(es, "acct-on", &sn));
  CHECK(sn.version > 0 && sn.version < on.version);
  CHECK_EQ(sn.schema_version, 1);
  CHECK(sn.taken_at_ms > 0);
  /* the state saved after an append (events applied as emitted) is the
   * state a replay of the stored events up to its version gives: same ids,
   * positions, times */
  account *at = acct_decode(sn.state, NULL);
  CHECK(at != NULL);
  account want = replay(es, "acct-on", sn.version);
  check_same(at, &want);
  free(at);
  keel_es_snapshot_free(&sn);
  /* and the load from snapshot + tail is the full replay, identity included */
  atomic_store(&decode_calls, 0);
  account full = replay(es, "acct-on", 0);
  account again = load(es, &snap, "on");
  CHECK_EQ(atomic_load(&decode_calls), 1);
  check_same(&again, &full);
  check_same(&on, &full);
  kt_store_close(&s);
}

KT_CASE(a_snapshot_is_saved_when_a_batch_crosses_a_multiple) {
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  keel_agg_def snap = with_snapshots(5);
  /* batches of 3: versions 3, 6 (crosses 5), 9, 12 (crosses 10), 15 (reaches 15) */
  static const struct {
    int64_t version;
    bool saved;
  } want[] = {{3, false}, {6, true}, {9, false}, {12, true}, {15, true}, {18, false}};
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
    keel_agg_result r;
    CHECK_OK(deposit(es, &snap, "x", 1, 3, &r));
    CHECK_EQ(r.version, want[i].version);
    CHECK_EQ(r.appended, 3);
    CHECK_EQ(r.attempts, 1);
    CHECK_EQ(r.snapshot_saved, want[i].saved);
    CHECK_EQ(r.last_position - r.first_position, 2);
  }
  keel_es_snapshot sn;
  CHECK_OK(keel_es_snapshot_load(es, "acct-x", &sn));
  CHECK_EQ(sn.version, 15);
  keel_es_snapshot_free(&sn);
  /* one batch over several multiples: one snapshot, at its end */
  keel_agg_result r;
  CHECK_OK(deposit(es, &snap, "x", 1, 12, &r));
  CHECK_EQ(r.version, 30);
  CHECK(r.snapshot_saved);
  CHECK_OK(keel_es_snapshot_load(es, "acct-x", &sn));
  CHECK_EQ(sn.version, 30);
  keel_es_snapshot_free(&sn);
  /* a command that emits nothing appends nothing and saves nothing */
  CHECK_OK(deposit(es, &snap, "x", 1, 0, &r)); /* count 0 is one deposit ... */
  CHECK_EQ(r.version, 31);
  cmd none = {.deposit = 0, .count = -1}; /* ... a negative count none */
  CHECK_OK(keel_agg_execute(es, &snap, "x", decide, &none, &r));
  CHECK_EQ(r.appended, 0);
  CHECK_EQ(r.version, 31);
  CHECK(!r.snapshot_saved);
  kt_store_close(&s);
}

/* ---- snapshots that are ignored ---------------------------------------------------- */

/* A store whose node logs to a file, to read what was logged. The logger
 * is set up before the store opens and shut down after it closes:
 * keel_log_init and keel_log_shutdown must not run while another thread
 * logs (the store's writer, its LISTEN thread on PostgreSQL). */
static keel_es *open_logged(kt_store *s, char *path, size_t len) {
  kt_store_mkdir(s);
  snprintf(path, len, "%s/log.json", s->dir);
  keel_log_opts o = {.file = path, .level = KEEL_LOG_INFO};
  CHECK_OK(keel_log_init(&o));
  CHECK_OK(keel_es_open(&(keel_es_opts){.url = s->url}, &s->es));
  return s->es;
}

static void close_logged(kt_store *s) {
  keel_es_close(s->es);
  s->es = NULL;
  CHECK_OK(keel_log_shutdown());
  kt_store_rmdir(s);
}

static int count_in_log(const char *path, const char *needle) {
  CHECK_OK(keel_log_flush());
  FILE *f = fopen(path, "r");
  CHECK(f != NULL);
  char line[4096];
  int n = 0;
  while (fgets(line, sizeof line, f))
    n += strstr(line, needle) != NULL;
  fclose(f);
  return n;
}

KT_CASE(a_snapshot_of_another_schema_version_is_ignored_and_replaced) {
  kt_store s;
  char logp[512];
  keel_es *es = open_logged(&s, logp, sizeof logp);
  keel_agg_def v1 = with_snapshots(4);
  keel_agg_result r;
  for (int i = 0; i < 5; i++)
    CHECK_OK(deposit(es, &v1, "y", 10, 2, &r)); /* version 10; snapshots at 4 and 8 */
  keel_es_snapshot sn;
  CHECK_OK(keel_es_snapshot_load(es, "acct-y", &sn));
  CHECK_EQ(sn.version, 8);
  CHECK_EQ(sn.schema_version, 1);
  keel_es_snapshot_free(&sn);

  keel_agg_def v2 = v1;
  v2.snapshot_version = 2;
  atomic_store(&decode_calls, 0);
  account a = load(es, &v2, "y");
  CHECK_EQ(atomic_load(&decode_calls), 0); /* never offered to decode */
  account full = replay(es, "acct-y", 0);
  check_same(&a, &full);
  CHECK_EQ(a.balance, 100);
  CHECK_EQ(count_in_log(logp, "snapshot ignored"), 1);
  CHECK_EQ(count_in_log(logp, "another schema version"), 1);
  /* the next command replays more than snapshot_every: it saves a v2 one */
  CHECK_OK(deposit(es, &v2, "y", 1, 1, &r));
  CHECK(r.snapshot_saved);
  CHECK_EQ(count_in_log(logp, "snapshot ignored"), 2); /* once per load */
  CHECK_OK(keel_es_snapshot_load(es, "acct-y", &sn));
  CHECK_EQ(sn.version, 11);
  CHECK_EQ(sn.schema_version, 2);
  keel_es_snapshot_free(&sn);
  atomic_store(&decode_calls, 0);
  a = load(es, &v2, "y");
  CHECK_EQ(atomic_load(&decode_calls), 1);
  CHECK_EQ(a.balance, 101);
  CHECK_EQ(count_in_log(logp, "snapshot ignored"), 2);
  close_logged(&s);
}

KT_CASE(a_snapshot_that_does_not_decode_is_ignored_logged_not_fatal) {
  kt_store s;
  char logp[512];
  keel_es *es = open_logged(&s, logp, sizeof logp);
  keel_agg_def snap = with_snapshots(100);
  keel_agg_result r;
  CHECK_OK(deposit(es, &snap, "z", 5, 6, &r));
  /* a state decode() refuses, at the right schema version */
  bool stored = false;
  json_t *bad = json_pack("{s:s}", "garbage", "yes");
  CHECK_OK(keel_es_snapshot_save(es, "acct-z", 4, 1, bad, &stored));
  json_decref(bad);
  CHECK(stored);
  account a = load(es, &snap, "z");
  account full = replay(es, "acct-z", 0);
  check_same(&a, &full);
  CHECK_EQ(a.balance, 30);
  CHECK_EQ(count_in_log(logp, "decode refused it"), 1);
  /* commands still work, and the replay of 6 events is below 100: no save */
  CHECK_OK(deposit(es, &snap, "z", 5, 1, &r));
  CHECK_EQ(r.version, 7);
  CHECK(!r.snapshot_saved);
  CHECK_EQ(count_in_log(logp, "decode refused it"), 2);

  if (!kt_es_pg_url()) {
    /* a stored state that is not JSON at all (a damaged file): the
     * low-level load says KEEL_EIO, the aggregate rebuilds */
    sqlite3 *db;
    char path[600];
    snprintf(path, sizeof path, "%s/es.db", s.dir);
    CHECK_EQ(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 10000);
    CHECK_EQ(sqlite3_exec(db, "UPDATE snapshots SET state = '{not json' WHERE stream = 'acct-z'",
                          NULL, NULL, NULL),
             SQLITE_OK);
    sqlite3_close(db);
    keel_es_snapshot sn;
    CHECK_EQ(keel_es_snapshot_load(es, "acct-z", &sn), KEEL_EIO);
    CHECK(sn.state == NULL);
    a = load(es, &snap, "z");
    CHECK_EQ(a.balance, 35);
    CHECK_EQ(a.version, 7);
    CHECK_EQ(count_in_log(logp, "\"unreadable\""), 1);
  }
  close_logged(&s);
}

/* ---- the storage's rules ----------------------------------------------------------- */

static bool save(keel_es *es, const char *stream, int64_t v, int tag) {
  json_t *st = json_pack("{s:i}", "tag", tag);
  bool stored = true;
  CHECK_OK(keel_es_snapshot_save(es, stream, v, 1, st, &stored));
  json_decref(st);
  return stored;
}

static int64_t snap_tag(keel_es *es, const char *stream, int64_t *version) {
  keel_es_snapshot sn;
  int rc = keel_es_snapshot_load(es, stream, &sn);
  if (rc) return rc;
  int64_t tag = json_integer_value(json_object_get(sn.state, "tag"));
  *version = sn.version;
  keel_es_snapshot_free(&sn);
  return tag;
}

KT_CASE(an_older_save_never_replaces_a_newer_snapshot) {
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  CHECK_OK(kt_append_n(es, "snap-1", KEEL_ES_NO_STREAM, "E", 10, 0, NULL));
  keel_es_snapshot sn;
  CHECK_EQ(keel_es_snapshot_load(es, "snap-1", &sn), KEEL_ENOENT);
  int64_t v = 0;
  CHECK(save(es, "snap-1", 8, 1));
  CHECK(!save(es, "snap-1", 5, 2)); /* older: 0, nothing written */
  CHECK(!save(es, "snap-1", 8, 3)); /* the same version: the first stays */
  CHECK_EQ(snap_tag(es, "snap-1", &v), 1);
  CHECK_EQ(v, 8);
  CHECK(save(es, "snap-1", 10, 4));
  CHECK_EQ(snap_tag(es, "snap-1", &v), 4);
  CHECK_EQ(v, 10);
  CHECK(!save(es, "snap-1", 9, 5));
  CHECK_EQ(snap_tag(es, "snap-1", &v), 4);
  /* bad calls */
  json_t *st = json_object();
  CHECK_EQ(keel_es_snapshot_save(es, "snap-1", 11, 1, st, NULL), KEEL_ERANGE);
  CHECK_EQ(keel_es_snapshot_save(es, "nope-1", 1, 1, st, NULL), KEEL_ENOENT);
  CHECK_EQ(keel_es_snapshot_save(es, "snap-1", 0, 1, st, NULL), KEEL_EINVAL);
  CHECK_EQ(keel_es_snapshot_save(es, "snap-1", 1, -1, st, NULL), KEEL_EINVAL);
  CHECK_EQ(keel_es_snapshot_save(es, "bad stream", 1, 1, st, NULL), KEEL_EINVAL);
  CHECK_EQ(keel_es_snapshot_save(es, "snap-1", 1, 1, NULL, NULL), KEEL_EINVAL);
  json_decref(st);
  CHECK_EQ(keel_es_snapshot_load(es, "nope-1", &sn), KEEL_ENOENT);
  kt_store_close(&s);
}

KT_CASE(truncate_keeps_a_snapshot_that_joins_the_readable_events) {
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  keel_agg_def snap = with_snapshots(5);
  keel_agg_result r;
  CHECK_OK(deposit(es, &snap, "t", 1, 6, &r)); /* snapshot at 6 */
  CHECK(r.snapshot_saved);
  CHECK_OK(deposit(es, &snap, "t", 2, 2, &r)); /* 8 */
  int64_t v = 0;
  keel_es_snapshot sn;
  /* dropping the history the snapshot covers keeps it usable ... */
  CHECK_OK(keel_es_truncate_before(es, "acct-t", 7));
  CHECK_OK(keel_es_snapshot_load(es, "acct-t", &sn));
  CHECK_EQ(sn.version, 6);
  keel_es_snapshot_free(&sn);
  account a = load(es, &snap, "t");
  CHECK_EQ(a.balance, 6 + 4); /* the snapshot's 6 events and the tail's 2 */
  CHECK_EQ(a.version, 8);
  /* ... truncating past it leaves a gap: not used, the readable events are */
  CHECK_OK(keel_es_truncate_before(es, "acct-t", 8));
  CHECK_EQ(keel_es_snapshot_load(es, "acct-t", &sn), KEEL_ENOENT);
  CHECK(!save(es, "acct-t", 7, 1)); /* below truncated_before: not stored */
  a = load(es, &snap, "t");
  CHECK_EQ(a.balance, 2);
  CHECK_EQ(a.version, 8);
  /* a stream whose whole history is truncated loads at its version */
  CHECK_OK(keel_es_truncate_before(es, "acct-t", 9));
  a = load(es, &snap, "t");
  CHECK_EQ(a.balance, 0);
  CHECK_EQ(a.version, 8);
  CHECK_OK(deposit(es, &snap, "t", 3, 1, &r));
  CHECK_EQ(r.version, 9);
  CHECK_EQ(snap_tag(es, "acct-t", &v), KEEL_ENOENT);
  kt_store_close(&s);
}

KT_CASE(deletes_remove_the_snapshot_and_deleted_state_never_comes_back) {
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  keel_agg_def snap = with_snapshots(3);
  keel_agg_result r;
  keel_es_snapshot sn;
  /* soft delete: the aggregate starts over at the kept version */
  CHECK_OK(deposit(es, &snap, "d", 100, 4, &r)); /* snapshot at 4 */
  CHECK(r.snapshot_saved);
  CHECK_OK(keel_es_delete_stream(es, "acct-d", 4));
  CHECK_EQ(keel_es_snapshot_load(es, "acct-d", &sn), KEEL_ENOENT);
  json_t *empty = json_object();
  CHECK_EQ(keel_es_snapshot_save(es, "acct-d", 4, 1, empty, NULL), KEEL_ENOENT);
  json_decref(empty);
  account a = load(es, &snap, "d");
  CHECK_EQ(a.balance, 0);
  CHECK_EQ(a.version, 4);
  CHECK_OK(deposit(es, &snap, "d", 1, 1, &r)); /* recreates it at 5 */
  CHECK_EQ(r.version, 5);
  /* a slow save of the state from before the delete lands now: refused */
  CHECK(!save(es, "acct-d", 4, 9));
  CHECK_EQ(keel_es_snapshot_load(es, "acct-d", &sn), KEEL_ENOENT);
  a = load(es, &snap, "d");
  CHECK_EQ(a.balance, 1);
  CHECK_EQ(a.version, 5);
  CHECK_OK(deposit(es, &snap, "d", 1, 1, &r)); /* 6: crosses 6 */
  CHECK(r.snapshot_saved);

  /* hard delete: the snapshot goes with the events */
  CHECK_OK(keel_es_hard_delete(es, "acct-d"));
  CHECK_EQ(keel_es_snapshot_load(es, "acct-d", &sn), KEEL_ENOENT);
  a = load(es, &snap, "d");
  CHECK_EQ(a.balance, 0);
  CHECK_EQ(a.version, 0);
  CHECK_OK(deposit(es, &snap, "d", 7, 1, &r));
  CHECK_EQ(r.version, 1);
  a = load(es, &snap, "d");
  CHECK_EQ(a.balance, 7);
  /* a snapshot of another stream is untouched by either */
  CHECK_OK(deposit(es, &snap, "other", 1, 3, &r));
  CHECK(r.snapshot_saved);
  CHECK_OK(keel_es_hard_delete(es, "acct-d"));
  CHECK_OK(keel_es_snapshot_load(es, "acct-other", &sn));
  keel_es_snapshot_free(&sn);
  kt_store_close(&s);
}

/* decode() runs between the snapshot's load and the events' read: this one
 * soft-deletes the stream there and recreates it, once. */
static keel_es *race_es;
static bool race_armed;

static void *deleting_decode(const json_t *j, void *ud) {
  if (race_armed) {
    race_armed = false;
    CHECK_OK(keel_es_delete_stream(race_es, "acct-rd", KEEL_ES_ANY));
    json_t *p = json_pack("{s:i}", "amount", 1000);
    keel_es_event_in ev = {.type = "Deposited", .payload = p};
    CHECK_OK(keel_es_append(race_es, "acct-rd", KEEL_ES_ANY, &ev, 1, NULL));
    json_decref(p);
  }
  return acct_decode(j, ud);
}

KT_CASE(a_delete_between_the_snapshot_and_the_events_is_seen) {
  kt_store s;
  keel_es *es = race_es = kt_store_open(&s, NULL);
  keel_agg_def snap = with_snapshots(3);
  snap.decode = deleting_decode;
  keel_agg_result r;
  CHECK_OK(deposit(es, &snap, "rd", 10, 3, &r)); /* snapshot at 3, the version deleted */
  CHECK(r.snapshot_saved);
  race_armed = true;
  account a = load(es, &snap, "rd");
  CHECK(!race_armed);
  CHECK_EQ(a.balance, 1000); /* the recreated stream's event only */
  CHECK_EQ(a.deposits, 1);
  CHECK_EQ(a.version, 4);
  /* and a truncation of exactly the snapshot's history keeps it in use */
  CHECK_OK(deposit(es, &snap, "rd", 1, 2, &r)); /* 6: snapshot */
  CHECK(r.snapshot_saved);
  CHECK_OK(keel_es_truncate_before(es, "acct-rd", 7));
  atomic_store(&decode_calls, 0);
  a = load(es, &snap, "rd");
  CHECK_EQ(a.balance, 1002);
  CHECK_EQ(a.version, 6);
  CHECK_EQ(atomic_load(&decode_calls), 2); /* its last event hidden: checked twice */
  CHECK_OK(deposit(es, &snap, "rd", 1, 1, &r));
  CHECK_EQ(r.version, 7);
  kt_store_close(&s);
}

KT_CASE(a_store_of_schema_version_1_is_migrated_on_open) {
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  CHECK_OK(kt_append_n(es, "old-1", KEEL_ES_NO_STREAM, "E", 3, 0, NULL));
  keel_es_close(es);
  s.es = NULL;
  /* back to version 1: no snapshots table (nor version 3's stream_hash) */
  if (kt_es_pg_url()) {
    char sql[512];
    snprintf(sql, sizeof sql,
             "DROP TABLE %s.snapshots; ALTER TABLE %s.events DROP COLUMN stream_hash; "
             "DROP FUNCTION %s.keel_es_stream_hash(text); UPDATE %s.keel_es_schema SET version = 1",
             s.schema, s.schema, s.schema, s.schema);
    CHECK_OK(kt_pg_exec(s.admin_url, sql, NULL, 0));
  } else {
    sqlite3 *db;
    char path[600];
    snprintf(path, sizeof path, "%s/es.db", s.dir);
    CHECK_EQ(sqlite3_open(path, &db), SQLITE_OK);
    CHECK_EQ(sqlite3_exec(db,
                          "DROP TABLE snapshots; ALTER TABLE events DROP COLUMN stream_hash; "
                          "PRAGMA user_version = 1",
                          NULL, NULL, NULL),
             SQLITE_OK);
    sqlite3_close(db);
  }
  CHECK_OK(keel_es_open(&(keel_es_opts){.url = s.url}, &s.es));
  es = s.es;
  CHECK(save(es, "old-1", 3, 1));
  int64_t v = 0;
  CHECK_EQ(snap_tag(es, "old-1", &v), 1);
  CHECK_EQ(v, 3);
  /* and opening again migrates nothing */
  keel_es *es2;
  CHECK_OK(keel_es_open(&(keel_es_opts){.url = s.url}, &es2));
  CHECK_EQ(snap_tag(es2, "old-1", &v), 1);
  keel_es_close(es2);
  kt_store_close(&s);
}

/* ---- decisions -------------------------------------------------------------------------- */

static int emit_then_fail(const void *state, const void *c, keel_agg_decision *d) {
  (void)state;
  (void)c;
  CHECK_OK(keel_agg_emit(d, "Deposited", json_pack("{s:i}", "amount", 1)));
  CHECK_EQ(keel_agg_emit(d, "Deposited", NULL), KEEL_EINVAL); /* json_pack failed */
  return 0;
}

static int emit_full(const void *state, const void *c, keel_agg_decision *d) {
  (void)state;
  (void)c;
  json_t *p = json_pack("{s:i}", "amount", 3);
  json_t *m = json_pack("{s:s}", "actor", "tester");
  keel_es_event_in ev = {.id = "0B9D6C1E-0000-4000-8000-00000000AB01",
                         .type = "Deposited",
                         .payload = p,
                         .metadata = m,
                         .occurred_at_ms = 1234};
  int rc = keel_agg_emit_event(d, &ev);
  json_decref(p);
  json_decref(m);
  return rc;
}

KT_CASE(a_rejection_is_returned_unchanged_and_nothing_is_appended) {
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  keel_agg_def snap = with_snapshots(2);
  keel_agg_result r;
  CHECK_OK(deposit(es, &snap, "r", 10, 1, &r));
  cmd w = {.withdraw = 50};
  CHECK_EQ(keel_agg_execute(es, &snap, "r", decide, &w, &r), INSUFFICIENT_FUNDS);
  CHECK(r.rejected);
  CHECK_STR(r.reason, "balance 10, asked 50");
  CHECK_EQ(r.appended, 0);
  CHECK_EQ(r.version, 1);
  CHECK_EQ(r.attempts, 1);
  CHECK(!r.snapshot_saved);
  keel_es_stream_info info;
  CHECK_OK(keel_es_stream_info_get(es, "acct-r", &info));
  CHECK_EQ(info.version, 1);
  keel_es_stream_info_free(&info);
  /* an emit that failed fails the command even though decide returned 0 */
  CHECK_EQ(keel_agg_execute(es, &snap, "r", emit_then_fail, NULL, &r), KEEL_EINVAL);
  CHECK(!r.rejected);
  CHECK_EQ(r.appended, 0);
  CHECK_EQ(load(es, &snap, "r").version, 1);
  /* a full event: its id, metadata and time are the stored ones */
  CHECK_OK(keel_agg_execute(es, &snap, "r", emit_full, NULL, &r));
  CHECK_EQ(r.version, 2);
  CHECK(r.snapshot_saved);
  keel_es_events evs;
  CHECK_OK(keel_es_read_stream(es, "acct-r", &(keel_es_read_opts){.from = 2}, &evs));
  CHECK_EQ(evs.n, 1);
  CHECK_STR(evs.v[0].id, "0b9d6c1e-0000-4000-8000-00000000ab01");
  CHECK_EQ(evs.v[0].occurred_at_ms, 1234);
  CHECK_STR(json_string_value(json_object_get(keel_es_event_metadata(&evs.v[0]), "actor")),
            "tester");
  keel_es_events_free(&evs);
  keel_es_snapshot sn;
  CHECK_OK(keel_es_snapshot_load(es, "acct-r", &sn));
  account *at = acct_decode(sn.state, NULL);
  account full = replay(es, "acct-r", 0);
  check_same(at, &full);
  free(at);
  keel_es_snapshot_free(&sn);
  /* the same event again: a duplicate, the original result, nothing applied */
  CHECK_OK(keel_agg_execute(es, &snap, "r", emit_full, NULL, &r));
  CHECK_EQ(r.version, 2);
  CHECK_EQ(r.appended, 0);
  /* bad definitions and ids */
  keel_agg_def bad = plain;
  bad.apply = NULL;
  CHECK_EQ(keel_agg_execute(es, &bad, "r", decide, &w, &r), KEEL_EINVAL);
  bad = plain;
  bad.snapshot_every = 5; /* without encode and decode */
  CHECK_EQ(keel_agg_execute(es, &bad, "r", decide, &w, &r), KEEL_EINVAL);
  bad = plain;
  bad.max_retries = -2;
  CHECK_EQ(keel_agg_execute(es, &bad, "r", decide, &w, &r), KEEL_EINVAL);
  CHECK_EQ(keel_agg_execute(es, &plain, "has space", decide, &w, &r), KEEL_EINVAL);
  CHECK_EQ(keel_agg_execute(es, &plain, "r", NULL, &w, &r), KEEL_EINVAL);
  void *st;
  CHECK_EQ(keel_agg_load(es, &plain, NULL, &st, NULL), KEEL_EINVAL);
  CHECK(st == NULL);
  kt_store_close(&s);
}

/* ---- upcasters on the aggregate's load ------------------------------------------------ */

/* Deposit v1 {cents} -> Deposited v2 {amount: cents / 100} */
static int deposit_v1_v2(const keel_es_event *in, keel_es_upcast_out *out, size_t *n, void *ud) {
  (void)ud;
  out[0].type = "Deposited";
  out[0].payload = json_pack(
      "{s:I}", "amount",
      (json_int_t)(json_integer_value(json_object_get(keel_es_event_payload(in), "cents")) / 100));
  *n = 1;
  return 0;
}

KT_CASE(upcasters_apply_on_the_aggregate_load) {
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  CHECK_OK(keel_es_upcaster(es, "Deposit", 1, deposit_v1_v2, NULL));
  for (int i = 0; i < 3; i++) {
    json_t *p = json_pack("{s:i}", "cents", 2500);
    keel_es_event_in ev = {.type = "Deposit", .schema_version = 1, .payload = p};
    CHECK_OK(keel_es_append(es, "acct-u", KEEL_ES_ANY, &ev, 1, NULL));
    json_decref(p);
  }
  keel_agg_def snap = with_snapshots(4);
  /* acct_apply refuses unknown types: "Deposit" reaching it would fail */
  account a = load(es, &snap, "u");
  CHECK_EQ(a.balance, 75);
  CHECK_EQ(a.deposits, 3);
  /* and through execute: the withdrawal is decided on the upcast balance */
  cmd w = {.withdraw = 70};
  keel_agg_result r;
  CHECK_OK(keel_agg_execute(es, &snap, "u", decide, &w, &r));
  CHECK_EQ(r.version, 4);
  CHECK(r.snapshot_saved);
  a = load(es, &snap, "u");
  CHECK_EQ(a.balance, 5);
  kt_store_close(&s);
}

/* ---- concurrent commands ---------------------------------------------------------------- */

enum { TAG_DONE = 7 };

typedef struct worker {
  keel_es *es;
  const keel_agg_def *def;
  keel_pid_t parent;
  barrier *b;
  int64_t amount;
  int calls, rc;
  keel_agg_result r;
} worker;

static void work(void *arg) {
  worker *w = arg;
  cmd c = {.deposit = w->amount, .count = 1, .b = w->b, .calls = &w->calls};
  w->rc = keel_agg_execute(w->es, w->def, "race", decide, &c, &w->r);
  kt_send_u64(w->parent, TAG_DONE, 0);
}

/* N processes, each one deposit; every first decide waits until all N
 * have loaded, so all start from the same version and N - 1 conflict. */
static void race(keel_es *es, const keel_agg_def *def, worker *w, int n) {
  barrier b = {.n = n};
  for (int i = 0; i < n; i++) {
    w[i] = (worker){.es = es, .def = def, .parent = keel_self(), .b = &b, .amount = 1 << i};
    CHECK_OK(keel_spawn(work, &w[i], NULL, NULL));
  }
  for (int i = 0; i < n; i++)
    keel_msg_free(kt_recv(60000));
}

KT_CASE(concurrent_commands_all_succeed_through_retries) {
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  enum { N = 8 };
  keel_agg_def def = with_snapshots(3);
  def.max_retries = N;
  worker w[N];
  race(es, &def, w, N);
  int first_try = 0, conflicts = 0;
  for (int i = 0; i < N; i++) {
    CHECK_OK(w[i].rc);
    CHECK_EQ(w[i].r.appended, 1);
    CHECK_EQ(w[i].calls, w[i].r.attempts);
    first_try += w[i].r.attempts == 1;
    conflicts += w[i].r.attempts - 1;
  }
  CHECK_EQ(first_try, 1); /* everyone loaded version 0: one append won */
  CHECK(conflicts >= N - 1);
  /* no lost update: every deposit is in the balance, once */
  account a = load(es, &def, "race");
  CHECK_EQ(a.balance, (1 << N) - 1);
  CHECK_EQ(a.version, N);
  account full = replay(es, "acct-race", 0);
  check_same(&a, &full);
  kt_store_close(&s);
}

KT_CASE(too_few_retries_answer_conflict_and_lose_nothing) {
  kt_store s;
  keel_es *es = kt_store_open(&s, NULL);
  enum { N = 8 };
  keel_agg_def def = with_snapshots(3);
  def.max_retries = KEEL_AGG_NO_RETRY;
  worker w[N];
  race(es, &def, w, N);
  int ok = 0;
  int64_t sum = 0;
  for (int i = 0; i < N; i++) {
    CHECK_EQ(w[i].r.attempts, 1);
    if (w[i].rc == 0) {
      ok++;
      sum += w[i].amount;
      CHECK_EQ(w[i].r.version, 1);
    } else {
      CHECK_EQ(w[i].rc, KEEL_ECONFLICT);
      CHECK(!w[i].r.rejected);
      CHECK_EQ(w[i].r.appended, 0);
    }
  }
  CHECK_EQ(ok, 1);
  account a = load(es, &def, "race");
  CHECK_EQ(a.balance, sum);
  CHECK_EQ(a.version, 1);
  /* one retry: the second round races again without a barrier; whatever
   * wins, the state is the sum of the successes */
  def.max_retries = 1;
  race(es, &def, w, N);
  for (int i = 0; i < N; i++) {
    CHECK(w[i].rc == 0 || w[i].rc == KEEL_ECONFLICT);
    CHECK(w[i].r.attempts <= 2);
    if (w[i].rc == 0) {
      ok++;
      sum += w[i].amount;
    }
  }
  a = load(es, &def, "race");
  CHECK_EQ(a.balance, sum);
  CHECK_EQ(a.version, ok);
  account full = replay(es, "acct-race", 0);
  check_same(&a, &full);
  kt_store_close(&s);
}

KT_MAIN(KT_ENTRY(snapshot_plus_tail_equals_full_replay),
        KT_ENTRY(a_snapshot_is_saved_when_a_batch_crosses_a_multiple),
        KT_ENTRY(a_snapshot_of_another_schema_version_is_ignored_and_replaced),
        KT_ENTRY(a_snapshot_that_does_not_decode_is_ignored_logged_not_fatal),
        KT_ENTRY(an_older_save_never_replaces_a_newer_snapshot),
        KT_ENTRY(truncate_keeps_a_snapshot_that_joins_the_readable_events),
        KT_ENTRY(deletes_remove_the_snapshot_and_deleted_state_never_comes_back),
        KT_ENTRY(a_delete_between_the_snapshot_and_the_events_is_seen),
        KT_ENTRY(a_store_of_schema_version_1_is_migrated_on_open),
        KT_ENTRY(a_rejection_is_returned_unchanged_and_nothing_is_appended),
        KT_ENTRY(upcasters_apply_on_the_aggregate_load),
        KT_ENTRY(concurrent_commands_all_succeed_through_retries),
        KT_ENTRY(too_few_retries_answer_conflict_and_lose_nothing))
