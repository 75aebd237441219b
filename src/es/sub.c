/* sub.c - subscriptions (keel/subscription.h): a gen_server per
 * subscription that reads the global feed after its checkpoint and hands
 * the events to a handler, in order, one page at a time.
 *
 * The server never blocks between pages: each page is one PUMP message it
 * sends itself, so calls (status, pause, retry) are served between pages,
 * and a retry's backoff is a timer, not a sleep. At the head it waits for a
 * WAKE: the store's notification, or poll_ms at the latest. A waker process
 * does that waiting, and while the subscription catches up it stores each
 * page's checkpoint (save_behind) as the next page is read.
 *
 * Its two tables live in the store's database, created at start:
 *   keel_sub_checkpoints (name, position, updated_at)
 *       moved by compare-and-set (only up), in the same transaction as a
 *       transactional projection's rows or a parked event's row;
 *   keel_sub_parked (name, position, stream, event_id, type, status,
 *                    error, attempts, first_failure, last_failure)
 *       the dead letters: status 'failed' (gave up after max_attempts),
 *       'waiting' (behind a failed event of its stream) or 'retry' (handed
 *       out again by keel_sub_retry or keel_sub_resolve, in position order,
 *       before the feed).
 * A stream with any parked row is blocked (KEEL_SUB_PARK): its later
 * events from the feed are parked as 'waiting' instead of handled, so a
 * stream's events are never handled out of order, while other streams go
 * on and the checkpoint keeps moving.
 */
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "es/es_internal.h"
#include "keel/error.h"
#include "keel/gen_server.h"
#include "keel/health.h"
#include "keel/log.h"
#include "keel/process.h"
#include "keel/registry.h"
#include "keel/subscription.h"
#include "keel/timer.h"
#include "keel/timer.h"

enum {
  TAG_PUMP = 0x73756201,
  TAG_WAKE,
  TAG_RETRY,
  TAG_TICK,
  TAG_JOB,
  TAG_JOB_DONE,
  TAG_WATCH,
  TAG_WATCHED,
  TAG_SAVE,
  TAG_SAVED
};
/* run_page's answers besides 0 (done), KEEL_GS_STOP and errors. */
enum { PAGE_WAIT = 100, PAGE_YIELD = 101 };
enum { OP_STATUS = 1, OP_PAUSE, OP_RESUME, OP_RETRY, OP_RESOLVE };

typedef struct sub_req {
  int op;
  int64_t position;
} sub_req;

typedef struct sub_rep {
  int rc;
  keel_sub_status st;
} sub_rep;

typedef struct sub {
  keel_sub_opts o;
  char name[64];
  char regname[112];
  int64_t pos;    /* every event at or below it is handled or parked */
  int64_t stored; /* as stored */
  int64_t head;
  double head_read_at; /* keel__es_now_s() of the last keel_es_head (see read_head) */
  keel_es_events page;
  size_t idx;   /* the next event of page to hand out */
  int attempts; /* of page.v[idx] */
  int64_t first_failure;
  char err[256];
  bool paused, retrying, live, retry_pending, pump_queued;
  keel_ref_t tick;
  keel_ref_t wait_timer; /* the one retry timer armed after an error (0: none) */
  keel_pid_t waker;      /* waits in keel_es_wait for the subscription (0: none yet) */
  keel_pid_t saver;      /* stores checkpoints behind it (save_behind; 0: none yet) */
  bool tail_user;        /* counted among the live tail's users (tail.c) */
  bool watching;         /* a TAG_WATCH is with the waker */
  bool saving;           /* a TAG_SAVE is with the waker (see save_behind) */
  bool save_again;       /* a page passed while it was: save again when it answers */
  char **blocked;        /* streams with parked events (KEEL_SUB_PARK) */
  size_t nblocked;
  uint64_t handled, failures, nparked;
  uint64_t fail_bucket[6]; /* failed attempts per 10 s, the last minute */
  int64_t fail_stamp[6];   /* which 10 s each bucket counts */
  bool caught_up;
  bool fenced;           /* a partition's checkpoint was refused: another instance owns it */
  keel_pid_t worker;     /* runs handle/handle_batch when a handler timeout is set */
  keel_ref_t worker_mon; /* its monitor */
  uint64_t job_seq;      /* the hand-out the worker's answer must name */
  uint64_t rng;
  int part_index, part_count; /* a partition of a group: only its streams (count 0: all) */
  char owner[128];            /* a partition's fencing token ("" when not a partition) */
  keel_counter *m_handled, *m_failed, *m_parked;
  keel_gauge *g_lag, *g_checkpoint, *g_parked;
  /* the circuit breakers (keel/subscription.h, breaker_failures) */
  keel_sub_breaker breaker; /* the handler's */
  int fails_in_row;         /* failed attempts since the last success, across events */
  int64_t open_until;       /* monotonic ms: the handler's breaker lets a probe through */
  keel_sub_breaker db_breaker;
  int db_errors; /* database failures in a row */
  keel_gauge *g_breaker, *g_db_breaker;
} sub;

static void i64s(char out[24], int64_t v) {
  snprintf(out, 24, "%lld", (long long)v);
}

/* ---- the tables ------------------------------------------------------------------------ */

static const char *const schema_sql[] = {
    "CREATE TABLE IF NOT EXISTS keel_sub_checkpoints (name TEXT PRIMARY KEY, "
    "position BIGINT NOT NULL, updated_at BIGINT NOT NULL, owner TEXT)",
    "CREATE TABLE IF NOT EXISTS keel_sub_members (grp TEXT NOT NULL, member TEXT NOT NULL, "
    "last_seen BIGINT NOT NULL, PRIMARY KEY (grp, member))",
    "CREATE TABLE IF NOT EXISTS keel_sub_parked (name TEXT NOT NULL, position BIGINT NOT NULL, "
    "stream TEXT NOT NULL, event_id TEXT NOT NULL, type TEXT NOT NULL, status TEXT NOT NULL, "
    "error TEXT NOT NULL, attempts INTEGER NOT NULL, first_failure BIGINT NOT NULL, "
    "last_failure BIGINT NOT NULL, PRIMARY KEY (name, position))",
};

static const char *const save_sql =
    "INSERT INTO keel_sub_checkpoints (name, position, updated_at) "
    "VALUES ($1, CAST($2 AS BIGINT), CAST($3 AS BIGINT)) "
    "ON CONFLICT (name) DO UPDATE SET position = excluded.position, "
    "updated_at = excluded.updated_at WHERE keel_sub_checkpoints.position <= excluded.position";

static const char *const park_sql =
    "INSERT INTO keel_sub_parked (name, position, stream, event_id, type, status, error, "
    "attempts, first_failure, last_failure) VALUES ($1, CAST($2 AS BIGINT), $3, $4, $5, $6, $7, "
    "CAST($8 AS INTEGER), CAST($9 AS BIGINT), CAST($10 AS BIGINT)) "
    "ON CONFLICT (name, position) DO UPDATE SET status = excluded.status, error = excluded.error, "
    "attempts = keel_sub_parked.attempts + excluded.attempts, "
    "last_failure = excluded.last_failure";

static int create_tables(keel_es_tx *tx, void *arg) {
  (void)arg;
  int rc;
  /* CREATE TABLE IF NOT EXISTS races another instance's on PostgreSQL */
  rc = keel_es_tx_lock(tx, "keel_sub tables");
  for (size_t i = 0; i < sizeof schema_sql / sizeof schema_sql[0] && rc == 0; i++)
    rc = keel_es_tx_exec(tx, schema_sql[i], NULL, 0, NULL);
  return rc;
}

int keel__sub_tables(keel_es *es) {
  int rc = keel__es_transact_internal(es, create_tables, NULL);
  /* an instance of an older keel beside this one creates them without the
   * lock: its race answers 23505 (KEEL_EEXIST) or 42710 (KEEL_EIO); once
   * more finds them made */
  if (rc == KEEL_EEXIST || rc == KEEL_EIO) rc = keel__es_transact_internal(es, create_tables, NULL);
  return rc;
}

/* The checkpoint's compare-and-set, in tx. */
/* A partition's checkpoint moves only while this instance owns it (the
 * fencing token written when it took the partition): an instance that lost
 * its partition without knowing it yet cannot commit, so its projection's
 * rows roll back with the refused checkpoint (KEEL_ECONFLICT). */
static const char *const save_owned_sql =
    "UPDATE keel_sub_checkpoints SET position = CAST($2 AS BIGINT), "
    "updated_at = CAST($3 AS BIGINT) WHERE name = $1 AND owner = $4 AND "
    "position <= CAST($2 AS BIGINT)";

static int save_in(keel_es_tx *tx, const sub *s, int64_t pos) {
  char p[24], now[24];
  i64s(p, pos);
  i64s(now, keel__es_unix_ms());
  if (!s->owner[0])
    return keel_es_tx_exec(tx, save_sql, (const char *[]){s->name, p, now}, 3, NULL);
  keel_es_rows rows;
  int rc =
      keel_es_tx_exec(tx, save_owned_sql, (const char *[]){s->name, p, now, s->owner}, 4, &rows);
  if (rc == 0 && rows.changed != 1) rc = KEEL_ECONFLICT;
  keel_es_rows_free(&rows);
  return rc;
}

void keel__sub_marker_name(const char *group, char *out, size_t cap) {
  snprintf(out, cap, "%s#switch", group);
}

int keel__sub_group_lock(keel_es_tx *tx, const char *group) {
  char key[80];
  snprintf(key, sizeof key, "keel_sub group %s", group);
  return keel_es_tx_lock(tx, key);
}

/* Takes the partition's checkpoint row for this instance (under the
 * partition's lock: the previous owner is gone or fenced), unless a switch
 * retired the group (KEEL_ESTATE): under the group's lock, so that a claim
 * never overwrites the fence a switch has just put on the row. */
static int claim_fn(keel_es_tx *tx, void *arg) {
  const sub *s = arg;
  char now[24];
  i64s(now, keel__es_unix_ms());
  int rc = keel__sub_group_lock(tx, s->o.name);
  char marker[72];
  keel__sub_marker_name(s->o.name, marker, sizeof marker);
  keel_es_rows rows = {0};
  if (!rc)
    rc = keel_es_tx_exec(tx,
                         "INSERT INTO keel_sub_checkpoints (name, position, updated_at, owner) "
                         "SELECT $1, 0, CAST($2 AS BIGINT), $3 WHERE NOT EXISTS (SELECT 1 FROM "
                         "keel_sub_checkpoints WHERE name = $4) ON CONFLICT (name) DO UPDATE "
                         "SET owner = excluded.owner, updated_at = excluded.updated_at",
                         (const char *[]){s->name, now, s->owner, marker}, 4, &rows);
  if (!rc && rows.changed != 1) rc = KEEL_ESTATE;
  keel_es_rows_free(&rows);
  return rc;
}

/* FNV-1a of the stream id: the partition of a stream (stable: a documented
 * function of the id alone). */
uint32_t keel__sub_partition_of(const char *stream, int count) {
  return count > 0 ? keel__es_stream_hash(stream) % (uint32_t)count : 0;
}

static bool ours(const sub *s, const keel_es_event *ev) {
  return s->part_count == 0 ||
         keel__sub_partition_of(ev->stream, s->part_count) == (uint32_t)s->part_index;
}

typedef struct save_arg {
  sub *s;
  int64_t pos;
} save_arg;

static int save_fn(keel_es_tx *tx, void *arg) {
  save_arg *a = arg;
  return save_in(tx, a->s, a->pos);
}

static void fill_status(sub *s, keel_sub_status *st);

/* Publishes the status on the board (and the gauges). */
static void publish(sub *s) {
  keel_sub_status st;
  fill_status(s, &st);
  keel__sub_publish(s->name, &st);
}

static void gauges(sub *s) {
  if (s->g_checkpoint) keel_gauge_set(s->g_checkpoint, (double)s->pos);
  if (s->g_lag)
    keel_gauge_set(s->g_lag, s->live ? 0 : (double)(s->head > s->pos ? s->head - s->pos : 0));
  if (s->g_parked) keel_gauge_set(s->g_parked, (double)s->nparked);
  publish(s);
}

static void save_wait(sub *s);

static int save(sub *s) {
  save_wait(s); /* one save at a time: a stale one must not land after this one */
  if (s->pos <= s->stored) return 0;
  save_arg a = {s, s->pos};
  int rc = keel__es_transact_internal(s->o.es, save_fn, &a);
  if (rc == 0) s->stored = s->pos;
  if (rc == KEEL_ECONFLICT && s->owner[0]) s->fenced = true;
  gauges(s);
  return rc;
}

/* A parked row for ev (status "failed" or "waiting"). */
static int park_in(keel_es_tx *tx, const sub *s, const keel_es_event *ev, bool waiting,
                   int attempts, int64_t first, const char *err) {
  char pos[24], att[24], f[24], l[24];
  i64s(pos, ev->position);
  i64s(att, waiting ? 0 : attempts);
  i64s(f, waiting ? 0 : first);
  i64s(l, waiting ? 0 : keel__es_unix_ms());
  return keel_es_tx_exec(tx, park_sql,
                         (const char *[]){s->name, pos, ev->stream, ev->id, ev->type,
                                          waiting ? "waiting" : "failed", waiting ? "" : err, att,
                                          f, l},
                         10, NULL);
}

/* Streams with parked rows, and how many rows, from the table. */
static int load_parked(sub *s) {
  for (size_t i = 0; i < s->nblocked; i++)
    free(s->blocked[i]);
  free(s->blocked);
  s->blocked = NULL;
  s->nblocked = 0;
  keel_es_rows rows;
  int rc = keel_es_query(s->o.es,
                         "SELECT stream, count(*) FROM keel_sub_parked WHERE name = $1 "
                         "GROUP BY stream ORDER BY stream",
                         (const char *[]){s->name}, 1, &rows);
  if (rc) return rc;
  s->nparked = 0;
  if (rows.nrows && s->o.on_failure == KEEL_SUB_PARK &&
      !(s->blocked = calloc(rows.nrows, sizeof *s->blocked))) {
    keel_es_rows_free(&rows);
    return KEEL_ENOMEM;
  }
  for (size_t r = 0; r < rows.nrows; r++) {
    s->nparked += strtoull(keel_es_rows_get(&rows, r, 1), NULL, 10);
    if (s->blocked && (s->blocked[s->nblocked] = strdup(keel_es_rows_get(&rows, r, 0))))
      s->nblocked++;
  }
  keel_es_rows_free(&rows);
  gauges(s);
  return 0;
}

static bool blocked(const sub *s, const char *stream) {
  size_t lo = 0, hi = s->nblocked;
  while (lo < hi) { /* sorted by the query, and kept sorted by add_blocked */
    size_t mid = (lo + hi) / 2;
    int c = strcmp(s->blocked[mid], stream);
    if (c == 0) return true;
    if (c < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  return false;
}

/* ---- messages to itself ----------------------------------------------------------------- */

static void arm_wait(sub *s);
static void arm_wait_ms(sub *s, int64_t delay_ms);

static void pump(sub *s) {
  if (s->pump_queued || s->paused) return;
  s->pump_queued = keel_send(keel_self(), keel_msg_new(TAG_PUMP, 0)) == 0;
}

/* At the head: the waker waits for an append beyond the checkpoint
 * (keel_es_wait: the store's notifications, its polling fallback, the
 * horizon on PostgreSQL), at most poll_ms, and tells the subscription,
 * which meanwhile serves its calls. One watch at a time. */
typedef struct watch {
  keel_es *es;
  int64_t after, timeout_ms;
  bool tail_ok; /* the subscription reads the tail: its word wakes the waker */
} watch;

typedef struct saved {
  int64_t pos;
  int rc;
} saved;

/* A checkpoint save behind the subscription's back (save_behind): answers
 * TAG_SAVED with the position and the result. */
static void waker_save(keel_pid_t sub_pid, keel_msg_t *m) {
  save_arg a;
  memcpy(&a, keel_msg_data(m), sizeof a);
  keel_msg_free(m);
  saved r = {.pos = a.pos, .rc = keel__es_transact_internal(a.s->o.es, save_fn, &a)};
  keel_send(sub_pid, keel_msg_copy(TAG_SAVED, &r, sizeof r));
}

static void waker_main(void *arg) {
  keel_pid_t sub_pid = (keel_pid_t)(uintptr_t)arg;
  for (;;) {
    keel_msg_t *m = NULL;
    if (keel_receive(&m, KEEL_INFINITY) != 0) continue;
    if (keel_msg_tag(m) == TAG_SAVE && keel_msg_size(m) == sizeof(save_arg)) {
      waker_save(sub_pid, m);
      continue;
    }
    watch w;
    bool ok = keel_msg_tag(m) == TAG_WATCH && keel_msg_size(m) == sizeof w;
    if (ok) memcpy(&w, keel_msg_data(m), sizeof w);
    keel_msg_free(m);
    if (!ok) continue;
    int64_t head = 0;
    /* the live tail answers for this instance's appends (tail.c), when
     * the subscription can read them there; otherwise the database's
     * head (keel_es_wait: on PostgreSQL, the horizon's) */
    int rc = w.tail_ok ? keel__es_wait_tail(w.es, w.after, w.timeout_ms, &head)
                       : keel_es_wait(w.es, w.after, w.timeout_ms, &head);
    if (rc != 0 && rc != KEEL_ETIMEDOUT) keel_sleep(w.timeout_ms); /* the store failed: later */
    if (rc != 0) head = 0;                                         /* the head is not known */
    /* the head keel_es_wait read: the subscription need not read it again */
    keel_send(sub_pid, keel_msg_copy(TAG_WATCHED, &head, sizeof head));
  }
}

static int spawn_helper(keel_pid_t *pid, const char *name) {
  if (*pid) return 0;
  keel_spawn_opts so = {.link = true, .name = name};
  int rc = keel_spawn(waker_main, (void *)(uintptr_t)keel_self(), &so, pid);
  if (rc) *pid = 0;
  return rc;
}

/* Two helpers: the waker waits for appends, the saver stores checkpoints.
 * One process doing both queued a watch behind a checkpoint's commit (an
 * fsync on SQLite): a live event arriving meanwhile waited for it. */
static int spawn_waker(sub *s) {
  return spawn_helper(&s->waker, "sub-waker");
}

static int spawn_saver(sub *s) {
  return spawn_helper(&s->saver, "sub-saver");
}

/* The answer to the save in flight. */
static void saved_in(sub *s, const keel_msg_t *m) {
  saved r = {0};
  if (keel_msg_size(m) == sizeof r) memcpy(&r, keel_msg_data(m), sizeof r);
  s->saving = false;
  if (r.rc == 0 && r.pos > s->stored) s->stored = r.pos;
  /* a partition's save refused: fenced, unless a later checkpoint is
   * already stored. A projection stores its checkpoint in each page's own
   * transaction, which does not wait for the save behind it: when that
   * commits first, the behind save (position <= the stored one) matches no
   * row, and is only stale. The later save that passed proved the
   * partition still ours; a takeover since is seen by the next save. */
  if (r.rc == KEEL_ECONFLICT && s->owner[0] && r.pos > s->stored) s->fenced = true;
  if (r.rc && r.rc != KEEL_ECONFLICT)
    keel_log_warn(NULL, "subscription: cannot store its checkpoint",
                  KEEL_STR("subscription", s->name), KEEL_STR("error", keel_strerror(r.rc)));
}

static bool is_saved(const keel_msg_t *m, void *arg) {
  (void)arg;
  return keel_msg_kind_of(m) == KEEL_MSG_USER && keel_msg_tag(m) == TAG_SAVED;
}

/* Waits for the save in flight, if any (the writer always answers). */
static void save_wait(sub *s) {
  if (!s->saving) return;
  keel_msg_t *m = NULL;
  if (keel_receive_match(is_saved, NULL, &m, KEEL_INFINITY) == 0) {
    saved_in(s, m);
    keel_msg_free(m);
  }
}

/* Catching up, the checkpoint after a page is stored by the waker while
 * the subscription reads and hands out the next page: the page's fsync is
 * no longer on the catch-up's path. One save in flight at a time; pages
 * that pass meanwhile are folded into the next. A failed save is retried
 * with the next page (and at the head, synchronously). */
static void save_behind(sub *s) {
  if (s->pos <= s->stored) return;
  if (s->saving) {
    s->save_again = true;
    return;
  }
  save_arg a = {s, s->pos};
  if (spawn_saver(s) != 0 || keel_send(s->saver, keel_msg_copy(TAG_SAVE, &a, sizeof a)) != 0) {
    save(s); /* no waker: in line */
    return;
  }
  s->saving = true;
  s->save_again = false;
}

/* Whether the live tail can serve this subscription: not with a tenant
 * filter (the tenant is in the metadata's JSON, which the tail does not
 * read; keel__es_tail_read refuses it). Waiting on the tail then would
 * wake at once for an event it cannot take, and on PostgreSQL, while the
 * horizon holds read_all below that event, again and again. */
static bool tail_ok(const sub *s) {
  return !s->o.filter.tenant;
}

static void arm_watch(sub *s) {
  if (s->watching) return;
  if (spawn_waker(s) != 0) {
    arm_wait(s); /* no process: poll */
    return;
  }
  watch w = {.es = s->o.es, .after = s->pos, .timeout_ms = s->o.poll_ms, .tail_ok = tail_ok(s)};
  s->watching = keel_send(s->waker, keel_msg_copy(TAG_WATCH, &w, sizeof w)) == 0;
  if (!s->watching) arm_wait(s);
}

/* Try again in delay_ms. One timer at a time. */
static void arm_wait_ms(sub *s, int64_t delay_ms) {
  if (s->wait_timer) keel_cancel_timer(s->wait_timer);
  s->wait_timer = 0;
  keel_send_after(keel_self(), delay_ms, keel_msg_new(TAG_WAKE, 0), &s->wait_timer);
}

static void arm_wait(sub *s) {
  arm_wait_ms(s, s->o.poll_ms);
}

static int64_t backoff(sub *s) {
  int64_t cap = s->o.backoff_ms;
  for (int i = 1; i < s->attempts && cap < s->o.backoff_max_ms; i++)
    cap *= 2;
  if (cap > s->o.backoff_max_ms) cap = s->o.backoff_max_ms;
  s->rng ^= s->rng << 13;
  s->rng ^= s->rng >> 7;
  s->rng ^= s->rng << 17;
  int64_t d = (int64_t)(s->rng % (uint64_t)(cap + 1)); /* full jitter */
  return d > 0 ? d : 1;
}

static void count_failure(sub *s) {
  s->failures++;
  if (s->m_failed) keel_counter_inc(s->m_failed);
  int64_t slot = (int64_t)(keel__es_now_s() / 10);
  size_t i = (size_t)(slot % 6);
  if (s->fail_stamp[i] != slot) {
    s->fail_stamp[i] = slot;
    s->fail_bucket[i] = 0;
  }
  s->fail_bucket[i]++;
}

static uint64_t failures_last_minute(const sub *s) {
  int64_t slot = (int64_t)(keel__es_now_s() / 10);
  uint64_t n = 0;
  for (size_t i = 0; i < 6; i++)
    if (s->fail_stamp[i] > slot - 6) n += s->fail_bucket[i];
  return n;
}

/* ---- the circuit breakers ------------------------------------------------------------- */

/* The database's backoff: poll_ms after the first failure in a row,
 * doubled for each further one, at most max_ms. No jitter: one read per
 * subscription, and the cap is what bounds the load. */
int64_t keel__sub_db_delay(int64_t poll_ms, int64_t max_ms, int errors) {
  int64_t d = poll_ms > 0 ? poll_ms : 1;
  for (int i = 1; i < errors && d < max_ms; i++)
    d *= 2;
  return d < max_ms ? d : max_ms;
}

static void breaker_gauges(sub *s) {
  if (s->g_breaker) keel_gauge_set(s->g_breaker, (double)s->breaker);
  if (s->g_db_breaker) keel_gauge_set(s->g_db_breaker, (double)s->db_breaker);
}

static void breaker_to(sub *s, keel_sub_breaker to, bool db) {
  keel_sub_breaker *b = db ? &s->db_breaker : &s->breaker;
  if (*b == to) return;
  keel_sub_breaker from = *b;
  *b = to;
  const char *msg = db ? "subscription: database circuit breaker" : "subscription: circuit breaker";
  if (to == KEEL_SUB_BREAKER_OPEN)
    keel_log_error(NULL, msg, KEEL_STR("subscription", s->name),
                   KEEL_STR("from", keel_sub_breaker_name(from)), KEEL_STR("to", "open"),
                   KEEL_INT("failures_in_row", db ? s->db_errors : s->fails_in_row),
                   KEEL_INT("open_ms", db ? 0 : s->o.breaker_open_ms));
  else
    keel_log_warn(NULL, msg, KEEL_STR("subscription", s->name),
                  KEEL_STR("from", keel_sub_breaker_name(from)),
                  KEEL_STR("to", keel_sub_breaker_name(to)));
  breaker_gauges(s);
}

/* A failed attempt of a hand-out: the handler's breaker opens at
 * breaker_failures in a row, or again when its probe failed. */
static void breaker_failed(sub *s) {
  s->fails_in_row++;
  if (s->o.breaker_failures < 0) return;
  if (s->breaker == KEEL_SUB_BREAKER_HALF_OPEN || s->fails_in_row >= s->o.breaker_failures) {
    s->open_until = keel_monotonic_ms() + s->o.breaker_open_ms;
    breaker_to(s, KEEL_SUB_BREAKER_OPEN, false);
  }
}

static void breaker_passed(sub *s) {
  s->fails_in_row = 0;
  breaker_to(s, KEEL_SUB_BREAKER_CLOSED, false);
}

/* Before a hand-out: while the breaker is open, nothing is handed out; a
 * timer (the retry's) comes back when open_ms has passed, and the next
 * hand-out is the probe. true: wait. */
static bool breaker_holds(sub *s) {
  if (s->breaker != KEEL_SUB_BREAKER_OPEN) return false;
  int64_t left = s->open_until - keel_monotonic_ms();
  if (left > 0) {
    s->retrying = true;
    keel_send_after(keel_self(), left, keel_msg_new(TAG_RETRY, 0), NULL);
    return true;
  }
  breaker_to(s, KEEL_SUB_BREAKER_HALF_OPEN, false);
  return false;
}

/* A database failure (reading the feed or the dead letters): the next read
 * waits keel__sub_db_delay, and the breaker shows open from
 * db_breaker_failures in a row. */
static void db_failed(sub *s, int rc, const char *what) {
  s->db_errors++;
  int64_t delay = keel__sub_db_delay(s->o.poll_ms, s->o.db_backoff_max_ms, s->db_errors);
  keel_log_warn(NULL, what, KEEL_STR("subscription", s->name), KEEL_STR("error", keel_strerror(rc)),
                KEEL_INT("failures_in_row", s->db_errors), KEEL_INT("retry_ms", delay));
  if (s->db_errors >= s->o.db_breaker_failures) breaker_to(s, KEEL_SUB_BREAKER_OPEN, true);
  publish(s);
  arm_wait_ms(s, delay);
}

static void db_passed(sub *s) {
  if (!s->db_errors) return;
  s->db_errors = 0;
  breaker_to(s, KEEL_SUB_BREAKER_CLOSED, true);
}

/* ---- handling ------------------------------------------------------------------------- */

/* A transactional projection's page: events [from, to) and the checkpoint
 * in one transaction. Runs where keel_es_transact's function runs. */
typedef struct proj_run {
  sub *s;
  size_t from, to;
  size_t failed_at; /* the event whose project failed (to: none) */
  size_t applied;   /* events of this partition projected */
  char err[256];
} proj_run;

static int proj_fn(keel_es_tx *tx, void *arg) {
  proj_run *p = arg;
  sub *s = p->s;
  p->failed_at = p->to;
  p->applied = 0; /* fn may run more than once */
  for (size_t i = p->from; i < p->to; i++) {
    const keel_es_event *ev = &s->page.v[i];
    if (!ours(s, ev)) continue;
    p->applied++;
    int rc = blocked(s, ev->stream) ? park_in(tx, s, ev, true, 0, 0, NULL)
                                    : s->o.project(tx, ev, s->o.ud);
    if (rc) {
      p->failed_at = i;
      snprintf(p->err, sizeof p->err, "%s%s%s", keel_strerror(rc),
               keel_es_tx_error(tx)[0] ? ": " : "", keel_es_tx_error(tx));
      return rc;
    }
  }
  return save_in(tx, s, s->page.v[p->to - 1].position);
}

typedef struct park_arg {
  sub *s;
  const keel_es_event *ev;
  bool waiting;
} park_arg;

static int park_fn(keel_es_tx *tx, void *arg) {
  park_arg *a = arg;
  int rc = park_in(tx, a->s, a->ev, a->waiting, a->s->attempts, a->s->first_failure, a->s->err);
  return rc ? rc : save_in(tx, a->s, a->ev->position);
}

/* Parks ev (its checkpoint move included). */
static int park(sub *s, const keel_es_event *ev, bool waiting) {
  save_wait(s); /* parking moves the checkpoint too */
  park_arg a = {s, ev, waiting};
  int rc = keel__es_transact_internal(s->o.es, park_fn, &a);
  if (rc == KEEL_ECONFLICT && s->owner[0]) s->fenced = true;
  if (rc) return rc;
  s->pos = s->stored = ev->position;
  if (s->m_parked) keel_counter_inc(s->m_parked);
  if (!waiting)
    keel_log_error(NULL, "subscription: event parked", KEEL_STR("subscription", s->name),
                   KEEL_INT("position", ev->position), KEEL_STR("stream", ev->stream),
                   KEEL_STR("event_id", ev->id), KEEL_INT("attempts", s->attempts),
                   KEEL_STR("error", s->err));
  return load_parked(s);
}

/* The event in hand failed (rc): a retry after a backoff, or, attempts
 * spent, the on_failure rule. Returns PAGE_WAIT when the page must wait (a
 * retry is scheduled), 0 to go on, or KEEL_GS_STOP / an error. */
static int failed(sub *s, int rc, const char *why) {
  const keel_es_event *ev = &s->page.v[s->idx];
  count_failure(s);
  breaker_failed(s);
  if (s->attempts++ == 0) s->first_failure = keel__es_unix_ms();
  if (why == s->err)
    ; /* invoke wrote it already */
  else if (why && *why)
    snprintf(s->err, sizeof s->err, "%s", why);
  else
    snprintf(s->err, sizeof s->err, "%s", keel_strerror(rc));
  keel_log_warn(NULL, "subscription: handler failed", KEEL_STR("subscription", s->name),
                KEEL_INT("position", ev->position), KEEL_INT("attempt", s->attempts),
                KEEL_STR("error", s->err));
  if (s->attempts < s->o.max_attempts) {
    s->retrying = true;
    publish(s);
    /* an open breaker holds the retry until its probe (breaker_holds) */
    int64_t d = backoff(s);
    if (s->breaker == KEEL_SUB_BREAKER_OPEN && s->open_until - keel_monotonic_ms() > d)
      d = s->open_until - keel_monotonic_ms();
    keel_send_after(keel_self(), d, keel_msg_new(TAG_RETRY, 0), NULL);
    return PAGE_WAIT;
  }
  if (s->o.on_failure == KEEL_SUB_STOP) {
    save(s);
    return keel_gs_stopping(KEEL_REASON_ERROR, "subscription %s: event %lld failed %d times: %s",
                            s->name, (long long)ev->position, s->attempts, s->err);
  }
  int prc = park(s, ev, false);
  s->attempts = 0;
  s->idx++;
  if (prc == 0 && breaker_holds(s)) {
    publish(s);
    return PAGE_WAIT;
  }
  return prc;
}

static void handled(sub *s, size_t n, int64_t pos) {
  s->handled += n;
  if (s->m_handled) keel_counter_add(s->m_handled, (double)n);
  s->pos = pos;
  s->attempts = 0;
  if (n) breaker_passed(s); /* a page of other partitions' events proves nothing */
  publish(s);
}

/* ---- the handler, with its timeout ---------------------------------------------------- */

/* One hand-out to a side-effect handler, run by the subscription's worker
 * process when a handler timeout is set: the subscription waits for the
 * reply at most handler_timeout_ms, then kills the worker and waits for it
 * to be gone (its DOWN) before it touches the events again. */
typedef struct job {
  keel_sub_handle_fn handle;
  keel_sub_batch_fn handle_batch;
  void *ud;
  const keel_es_event *evs;
  size_t n, done;
  int rc;
  keel_pid_t owner;
  uint64_t seq;
} job;

static int run_job(job *j) {
  if (j->handle_batch) return j->handle_batch(j->evs, j->n, &j->done, j->ud);
  return j->handle(j->evs, j->ud);
}

static void worker_main(void *arg) {
  (void)arg;
  for (;;) {
    keel_msg_t *m = NULL;
    if (keel_receive(&m, KEEL_INFINITY) != 0) continue;
    job *j = NULL;
    if (keel_msg_tag(m) == TAG_JOB && keel_msg_size(m) == sizeof j)
      memcpy(&j, keel_msg_data(m), sizeof j);
    keel_msg_free(m); /* before the handler: a worker killed in it holds nothing of ours */
    if (!j) continue;
    j->rc = run_job(j);
    uint64_t seq = j->seq;
    keel_send(j->owner, keel_msg_copy(TAG_JOB_DONE, &seq, sizeof seq));
  }
}

/* The worker's answer to hand-out seq, or its DOWN. */
static bool job_end(const keel_msg_t *m, void *arg) {
  const sub *s = arg;
  if (keel_msg_kind_of(m) == KEEL_MSG_DOWN) return keel_msg_ref(m) == s->worker_mon;
  uint64_t seq;
  if (keel_msg_kind_of(m) != KEEL_MSG_USER || keel_msg_tag(m) != TAG_JOB_DONE ||
      keel_msg_size(m) != sizeof seq)
    return false;
  memcpy(&seq, keel_msg_data(m), sizeof seq);
  return seq == s->job_seq;
}

static bool worker_down(const keel_msg_t *m, void *arg) {
  const sub *s = arg;
  return keel_msg_kind_of(m) == KEEL_MSG_DOWN && keel_msg_ref(m) == s->worker_mon;
}

/* Hands evs[0..n) to the handler. 0, or its error, or KEEL_ETIMEDOUT (too
 * slow), or KEEL_EDOWN (the handler ended its process). */
static int invoke(sub *s, const keel_es_event *evs, size_t n, size_t *done) {
  job j = {.handle = s->o.handle,
           .handle_batch = s->o.handle_batch,
           .ud = s->o.ud,
           .evs = evs,
           .n = n,
           .owner = keel_self()};
  *done = 0;
  if (s->o.handler_timeout_ms == KEEL_INFINITY) {
    int rc = run_job(&j);
    *done = j.done;
    return rc;
  }
  if (!s->worker) {
    keel_spawn_opts so = {
        .link = true, .monitor = true, .monitor_ref = &s->worker_mon, .name = "sub-worker"};
    int rc = keel_spawn(worker_main, NULL, &so, &s->worker);
    if (rc) return rc;
  }
  j.seq = ++s->job_seq;
  job *jp = &j;
  keel_send(s->worker, keel_msg_copy(TAG_JOB, &jp, sizeof jp));
  keel_msg_t *m = NULL;
  int rc = keel_receive_match(job_end, s, &m, s->o.handler_timeout_ms);
  if (rc == 0 && keel_msg_kind_of(m) == KEEL_MSG_USER) {
    keel_msg_free(m);
    *done = j.done;
    return j.rc;
  }
  if (rc == 0) { /* DOWN: the handler ended the worker (keel_exit, a kill) */
    keel_pid_t who;
    keel_reason why;
    keel_msg_exit_info(m, &who, &why);
    snprintf(s->err, sizeof s->err, "the handler's process exited: %s",
             why.text && *why.text ? why.text : keel_reason_name(why.kind));
    keel_msg_free(m);
    s->worker = 0;
    return KEEL_EDOWN;
  }
  /* too slow: the worker goes, and is gone before j and evs are touched again */
  keel_exit_signal(s->worker, KEEL_REASON_KILL, NULL);
  keel_receive_match(worker_down, s, &m, KEEL_INFINITY);
  keel_msg_free(m);
  s->worker = 0;
  snprintf(s->err, sizeof s->err, "the handler took longer than %lld ms",
           (long long)s->o.handler_timeout_ms);
  return KEEL_ETIMEDOUT;
}

/* A partition taken over by another instance: stop at once, handing
 * nothing more out (the partition's lock is the other instance's). */
static int lost(sub *s) {
  keel_log_warn(NULL, "subscription: partition taken over by another instance",
                KEEL_STR("subscription", s->name), KEEL_INT("checkpoint", s->stored));
  return keel_gs_stopping(KEEL_REASON_SHUTDOWN, "partition %s lost", s->name);
}

/* Hands out page.v[idx..) until the page is done (0), a retry waits
 * (PAGE_WAIT), a message waits (PAGE_YIELD: calls, a stop, are served
 * between events, not after the page), or the server must stop
 * (KEEL_GS_STOP / error). */
static int run_page(sub *s) {
  while (s->idx < s->page.n) {
    const keel_es_event *ev = &s->page.v[s->idx];
    if (s->o.project) {
      /* after a failure, the failing event alone until it passes or parks */
      size_t to = s->attempts ? s->idx + 1 : s->page.n;
      proj_run p = {.s = s, .from = s->idx, .to = to};
      int rc = keel__es_transact_internal(s->o.es, proj_fn, &p);
      if (rc == 0) {
        handled(s, p.applied, s->page.v[to - 1].position);
        s->stored = s->pos;
        s->idx = to;
        if (s->idx < s->page.n && keel_mailbox_len() > 0) return PAGE_YIELD;
        continue;
      }
      if (p.failed_at == to && rc == KEEL_ECONFLICT && s->owner[0]) {
        s->fenced = true; /* the partition is another instance's now */
        return lost(s);
      }
      if (p.failed_at == to) { /* the checkpoint's statement failed: the database */
        snprintf(s->err, sizeof s->err, "%s", keel_strerror(rc));
        return failed(s, rc, NULL);
      }
      if (p.failed_at > s->idx) { /* the events before the failing one, on their own */
        proj_run q = {.s = s, .from = s->idx, .to = p.failed_at};
        if ((rc = keel__es_transact_internal(s->o.es, proj_fn, &q)) != 0)
          return failed(s, rc, q.err);
        handled(s, q.applied, s->page.v[p.failed_at - 1].position);
        s->stored = s->pos;
        s->idx = p.failed_at;
      }
      int f = failed(s, rc, p.err);
      if (f) return f;
      continue;
    }
    if (!ours(s, ev)) { /* another partition's */
      s->pos = ev->position;
      s->idx++;
      continue;
    }
    if (blocked(s, ev->stream)) {
      int rc = park(s, ev, true);
      if (rc) return failed(s, rc, NULL);
      s->idx++;
      continue;
    }
    size_t n = 1;
    int rc;
    if (s->o.handle_batch) {
      while (s->idx + n < s->page.n && !s->attempts && ours(s, &s->page.v[s->idx + n]) &&
             !blocked(s, s->page.v[s->idx + n].stream))
        n++;
      size_t done = 0;
      rc = invoke(s, ev, n, &done);
      if (rc && done > 0 && done < n) {
        handled(s, done, s->page.v[s->idx + done - 1].position);
        s->idx += done;
      }
      if (rc == 0) done = n;
      if (rc && done >= n) rc = 0; /* a handler that claims all done */
    } else {
      size_t done;
      rc = invoke(s, ev, 1, &done);
    }
    if (rc) {
      int f = failed(s, rc, rc == KEEL_ETIMEDOUT || rc == KEEL_EDOWN ? s->err : NULL);
      if (f) return f;
      continue;
    }
    handled(s, n, s->page.v[s->idx + n - 1].position);
    s->idx += n;
    if (s->o.checkpoint == KEEL_SUB_CHECKPOINT_EVENT) save(s);
    if (s->idx < s->page.n && keel_mailbox_len() > 0) return PAGE_YIELD;
  }
  return 0;
}

/* ---- retried dead letters ------------------------------------------------------------ */

typedef struct retry_arg {
  sub *s;
  const keel_es_event *ev; /* NULL when gone */
  int64_t position;
  bool ok, gone;
  char err[256];
} retry_arg;

/* After a retried event passed (or was given up): when its stream has no
 * failed event left, the events waiting behind it are handed out next. */
static int release_in(keel_es_tx *tx, const sub *s, const char *stream) {
  return keel_es_tx_exec(
      tx,
      "UPDATE keel_sub_parked SET status = 'retry' WHERE name = $1 AND stream = $2 AND "
      "status = 'waiting' AND NOT EXISTS (SELECT 1 FROM keel_sub_parked f WHERE f.name = $1 AND "
      "f.stream = $2 AND f.status = 'failed')",
      (const char *[]){s->name, stream}, 2, NULL);
}

/* A partition's work commits only while this instance owns it (the fencing
 * token), as its checkpoint does (save_in): a retried dead letter, a
 * resolve. KEEL_ECONFLICT when it does not (taken over, or retired by a
 * switch: the old read model must not move). */
static int fence_in(keel_es_tx *tx, const sub *s) {
  if (!s->owner[0]) return 0;
  char now[24];
  i64s(now, keel__es_unix_ms());
  keel_es_rows rows;
  int rc = keel_es_tx_exec(tx,
                           "UPDATE keel_sub_checkpoints SET updated_at = CAST($3 AS BIGINT) "
                           "WHERE name = $1 AND owner = $2",
                           (const char *[]){s->name, s->owner, now}, 3, &rows);
  if (rc == 0 && rows.changed != 1) rc = KEEL_ECONFLICT;
  keel_es_rows_free(&rows);
  return rc;
}

static int retry_done_fn(keel_es_tx *tx, void *arg) {
  retry_arg *a = arg;
  char pos[24];
  i64s(pos, a->position);
  int frc = fence_in(tx, a->s);
  if (frc) return frc;
  if (a->ok || a->gone) {
    int rc = a->ok && a->s->o.project ? a->s->o.project(tx, a->ev, a->s->o.ud) : 0;
    if (rc) {
      snprintf(a->err, sizeof a->err, "%s%s%s", keel_strerror(rc),
               keel_es_tx_error(tx)[0] ? ": " : "", keel_es_tx_error(tx));
      return rc;
    }
    keel_es_rows rows;
    if ((rc = keel_es_tx_exec(tx,
                              "DELETE FROM keel_sub_parked WHERE name = $1 AND position = "
                              "CAST($2 AS BIGINT) RETURNING stream",
                              (const char *[]){a->s->name, pos}, 2, &rows)))
      return rc;
    if (rows.nrows == 1) rc = release_in(tx, a->s, keel_es_rows_get(&rows, 0, 0));
    keel_es_rows_free(&rows);
    return rc;
  }
  /* failed again: parked as failed, and the stream's later retries wait again */
  char now[24];
  i64s(now, keel__es_unix_ms());
  int rc = keel_es_tx_exec(tx,
                           "UPDATE keel_sub_parked SET status = 'failed', error = $3, "
                           "attempts = attempts + 1, last_failure = CAST($4 AS BIGINT) "
                           "WHERE name = $1 AND position = CAST($2 AS BIGINT)",
                           (const char *[]){a->s->name, pos, a->err, now}, 4, NULL);
  if (rc) return rc;
  return keel_es_tx_exec(tx,
                         "UPDATE keel_sub_parked SET status = 'waiting' WHERE name = $1 AND "
                         "stream = $2 AND status = 'retry' AND position > CAST($3 AS BIGINT)",
                         (const char *[]){a->s->name, a->ev->stream, pos}, 3, NULL);
}

/* Hands out the first parked event marked for retry. 1: one was handled
 * (look again), 0: none left, or an error (of the database). */
static int run_one_retry(sub *s) {
  keel_es_rows rows;
  int rc = keel_es_query(s->o.es,
                         "SELECT position FROM keel_sub_parked WHERE name = $1 AND "
                         "status = 'retry' ORDER BY position LIMIT 1",
                         (const char *[]){s->name}, 1, &rows);
  if (rc) return rc;
  if (rows.nrows == 0) {
    keel_es_rows_free(&rows);
    return 0;
  }
  int64_t pos = strtoll(keel_es_rows_get(&rows, 0, 0), NULL, 10);
  keel_es_rows_free(&rows);
  keel_es_events evs;
  if ((rc = keel_es_read_all(s->o.es, pos - 1, 1, NULL, &evs)) != 0) return rc;
  if (evs.n == 0 || evs.v[0].position != pos) {
    /* the event is gone (its stream deleted): its row goes, its stream is released */
    keel_log_warn(NULL, "subscription: a parked event no longer exists",
                  KEEL_STR("subscription", s->name), KEEL_INT("position", pos));
    keel_es_events_free(&evs);
    retry_arg g = {.s = s, .position = pos, .gone = true};
    rc = keel__es_transact_internal(s->o.es, retry_done_fn, &g);
    if (rc == KEEL_ECONFLICT && s->owner[0]) s->fenced = true;
    return rc ? rc : 1;
  }
  retry_arg a = {.s = s, .ev = &evs.v[0], .position = pos, .ok = true};
  if (!s->o.project) {
    size_t done;
    int hrc = invoke(s, a.ev, 1, &done);
    if (hrc) {
      a.ok = false;
      snprintf(a.err, sizeof a.err, "%s",
               hrc == KEEL_ETIMEDOUT || hrc == KEEL_EDOWN ? s->err : keel_strerror(hrc));
    }
  }
  rc = keel__es_transact_internal(s->o.es, retry_done_fn, &a);
  if (rc == KEEL_ECONFLICT && s->owner[0]) { /* not ours any more */
    keel_es_events_free(&evs);
    s->fenced = true;
    return rc;
  }
  if (rc && a.ok && s->o.project) { /* the projection failed again */
    a.ok = false;
    rc = keel__es_transact_internal(s->o.es, retry_done_fn, &a);
  }
  if (rc == 0) {
    if (a.ok) {
      breaker_passed(s);
      s->handled++;
      if (s->m_handled) keel_counter_inc(s->m_handled);
      keel_log_info(NULL, "subscription: parked event handled", KEEL_STR("subscription", s->name),
                    KEEL_INT("position", pos));
    } else {
      count_failure(s);
      breaker_failed(s);
      keel_log_error(NULL, "subscription: parked event failed again",
                     KEEL_STR("subscription", s->name), KEEL_INT("position", pos),
                     KEEL_STR("error", a.err));
    }
  }
  keel_es_events_free(&evs);
  return rc ? rc : 1;
}

/* ---- one step --------------------------------------------------------------------------- */

/* The head is for the status only (head, lag): read it (a hop to the
 * blocking pool on SQLite, a round trip on PostgreSQL) when the checkpoint
 * has reached what is known of it, or once a second while catching up, not
 * before every page. Between reads, a page's last position and the head the
 * waker's keel_es_wait read keep it from falling behind the checkpoint. */
static void read_head(sub *s) {
  double now = keel__es_now_s();
  if (s->pos < s->head && now - s->head_read_at < 1.0) return;
  if (keel_es_head(s->o.es, &s->head) == 0) s->head_read_at = now;
}

/* One PUMP: a retried dead letter, or the rest of the page in hand, or the
 * next page. Returns 0, or KEEL_GS_STOP / an error for the server. */
static int step(sub *s) {
  if (s->paused || s->retrying) return 0;
  if (breaker_holds(s)) {
    publish(s);
    return 0;
  }
  if (s->retry_pending) {
    int rc = run_one_retry(s);
    if (rc >= 0) db_passed(s);
    if (rc == 1) {
      load_parked(s);
      pump(s);
      return 0;
    }
    if (s->fenced) return lost(s);
    if (rc == 0) {
      s->retry_pending = false;
      load_parked(s);
    } else {
      db_failed(s, rc, "subscription: cannot read its dead letters");
      return 0;
    }
  }
  bool tailed = false; /* the page came from the live tail */
  if (s->idx >= s->page.n) {
    keel_es_events_free(&s->page);
    s->idx = 0;
    /* a partition's streams are matched in SQL (events.stream_hash); ours()
     * still checks each event, for rows an older keel wrote without it */
    keel_es_filter f = s->o.filter;
    if (s->part_count) {
      f.partitions = (uint32_t)s->part_count;
      f.partition = (uint32_t)s->part_index;
    }
    /* live: the events this instance just committed, from memory (tail.c),
     * when they follow the checkpoint; the database otherwise */
    int rc = s->live && tail_ok(s) ? keel__es_tail_read(s->o.es, s->pos, s->o.batch, &f, &s->page)
                                   : KEEL_ENOENT;
    tailed = rc == 0;
    if (rc == KEEL_ENOENT) {
      read_head(s);
      rc = keel_es_read_all(s->o.es, s->pos, s->o.batch, &f, &s->page);
    }
    if (rc) {
      memset(&s->page, 0, sizeof s->page);
      db_failed(s, rc, "subscription: cannot read the feed");
      return 0;
    }
    db_passed(s);
    if (s->page.scanned > s->head) s->head = s->page.scanned;
    if (s->page.n == 0) { /* at the head */
      /* the events up to `scanned` were all filtered out (other partitions',
       * other categories', hidden): nothing to hand out there, so the
       * checkpoint moves past them, as past an event handled, and the next
       * watch waits beyond them instead of waking at once for them again */
      if (s->page.scanned > s->pos) s->pos = s->page.scanned;
      int64_t top;
      if (tailed && keel__es_tail_past(s->o.es, s->pos, &top)) { /* more in the tail */
        pump(s);
        return 0;
      }
      if (!s->caught_up)
        keel_log_info(NULL, "subscription caught up", KEEL_STR("subscription", s->name),
                      KEEL_INT("checkpoint", s->pos));
      bool was_live = s->live;
      s->live = s->caught_up = true;
      if (!s->tail_user && tail_ok(s)) {
        keel__es_tail_use(s->o.es, 1);
        s->tail_user = true;
      }
      /* arriving at the head, the checkpoint is stored before the status
       * says live; once live, behind it (the saver), so that the next live
       * event does not wait for a commit */
      if (s->o.checkpoint != KEEL_SUB_CHECKPOINT_PERIODIC) {
        if (was_live && s->o.checkpoint == KEEL_SUB_CHECKPOINT_BATCH)
          save_behind(s);
        else
          save(s);
      }
      if (s->fenced) return lost(s);
      gauges(s);
      arm_watch(s);
      return 0;
    }
    if (!tailed) s->live = false;
    if (s->page.v[s->page.n - 1].position > s->head) s->head = s->page.v[s->page.n - 1].position;
    publish(s);
  }
  int rc = run_page(s);
  if (s->fenced) return lost(s);
  if (rc == PAGE_WAIT) return 0; /* a retry is scheduled */
  if (rc == PAGE_YIELD) {        /* messages wait: serve them, then go on */
    pump(s);
    return 0;
  }
  if (rc) return rc;
  /* the page is done: past its last event, the rows it covered were
   * filtered out (keel_es_events.scanned) */
  if (s->page.scanned > s->pos) s->pos = s->page.scanned;
  if (s->o.checkpoint == KEEL_SUB_CHECKPOINT_BATCH) save_behind(s);
  if (s->fenced) return lost(s);
  gauges(s);
  int64_t top;
  if (s->live && !keel__es_tail_past(s->o.es, s->pos, &top)) {
    /* live and the tail has nothing after it: wait (the waker reads the
     * head, so another instance's append is not missed) rather than read
     * the database for an empty page first */
    arm_watch(s);
    return 0;
  }
  pump(s);
  return 0;
}

/* ---- the gen_server ------------------------------------------------------------------------ */

bool keel__sub_name_ok(const char *n) {
  size_t len = n ? strlen(n) : 0;
  if (len == 0 || len > 59) return false;
  for (const char *p = n; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
          *p == '_' || *p == '.' || *p == '-'))
      return false;
  return true;
}

static int opts_ok(const keel_sub_opts *o) {
  if (!o || !o->es || !keel__sub_name_ok(o->name)) return KEEL_EINVAL;
  int kinds = !!o->project + !!o->handle + !!o->handle_batch;
  if (o->partitions < 0 || o->partitions > 1024 || (o->partitions && strlen(o->name) > 50) ||
      o->rebalance_ms < 0 || o->member_timeout_ms < 0 || o->breaker_open_ms < 0 ||
      o->db_breaker_failures < 0 || o->db_backoff_max_ms < 0 ||
      (o->handler_timeout_ms < 0 && o->handler_timeout_ms != KEEL_INFINITY))
    return KEEL_EINVAL;
  if (kinds != 1 || o->batch > 10000 || o->max_attempts < 0 || o->backoff_ms < 0 ||
      o->backoff_max_ms < 0 || o->poll_ms < 0 || o->checkpoint_ms < 0 ||
      (o->from == KEEL_SUB_FROM_POSITION && o->position < 0))
    return KEEL_EINVAL;
  return 0;
}

static void metric_children(sub *s, keel_metrics *r) {
  static const char *const lbl2[] = {"subscription", "result"};
  static const char *const lbl1[] = {"subscription"};
  keel_metric_family *f;
  if (keel_metrics_counter(r, "sub_events_total",
                           "Events a subscription handled, failed (an attempt) or parked.", lbl2, 2,
                           &f) != 0)
    f = keel_metrics_find(r, "sub_events_total");
  if (f) {
    keel_counter_get(f, (const char *[]){s->name, "handled"}, &s->m_handled);
    keel_counter_get(f, (const char *[]){s->name, "failed"}, &s->m_failed);
    keel_counter_get(f, (const char *[]){s->name, "parked"}, &s->m_parked);
  }
  static const struct {
    const char *name, *help;
    size_t off;
  } g[] = {
      {"sub_lag_events", "Positions between a subscription's checkpoint and the head.",
       offsetof(sub, g_lag)},
      {"sub_checkpoint_position", "A subscription's checkpoint.", offsetof(sub, g_checkpoint)},
      {"sub_parked_events", "A subscription's parked events (failed or waiting).",
       offsetof(sub, g_parked)},
  };
  for (size_t i = 0; i < sizeof g / sizeof g[0]; i++) {
    if (keel_metrics_gauge(r, g[i].name, g[i].help, lbl1, 1, &f) != 0)
      f = keel_metrics_find(r, g[i].name);
    if (f) keel_gauge_get(f, (const char *[]){s->name}, (keel_gauge **)((char *)s + g[i].off));
  }
  static const char *const lblb[] = {"subscription", "breaker"};
  if (keel_metrics_gauge(r, "sub_breaker_state",
                         "A subscription's circuit breaker: 0 closed, 1 open, 2 half-open "
                         "(breaker: handler or db).",
                         lblb, 2, &f) != 0)
    f = keel_metrics_find(r, "sub_breaker_state");
  if (f) {
    keel_gauge_get(f, (const char *[]){s->name, "handler"}, &s->g_breaker);
    keel_gauge_get(f, (const char *[]){s->name, "db"}, &s->g_db_breaker);
  }
  breaker_gauges(s);
}

static void sub_free(sub *s) {
  for (size_t i = 0; i < s->nblocked; i++)
    free(s->blocked[i]);
  free(s->blocked);
  keel_es_events_free(&s->page);
  free(s);
}

/* What a subscription server starts from: the user's options, and for a
 * partition of a group, its name, index and fencing token. */
typedef struct sub_start {
  const keel_sub_opts *o;
  const char *name; /* NULL: o->name */
  int part_index, part_count;
  const char *owner;
} sub_start;

static int sub_init_with(const sub_start *a, void **state) {
  const keel_sub_opts *o = a->o;
  int rc = a->name ? 0 : opts_ok(o);
  if (rc) return rc;
  sub *s = calloc(1, sizeof *s);
  if (!s) return KEEL_ENOMEM;
  s->o = *o;
  const char *name = a->name ? a->name : o->name;
  snprintf(s->name, sizeof s->name, "%s", name);
  snprintf(s->regname, sizeof s->regname, "sub.%s", name);
  s->part_index = a->part_index;
  s->part_count = a->part_count;
  if (a->owner) snprintf(s->owner, sizeof s->owner, "%s", a->owner);
  if (!s->o.batch) s->o.batch = 100;
  if (!s->o.max_attempts) s->o.max_attempts = 6;
  if (!s->o.backoff_ms) s->o.backoff_ms = 100;
  if (!s->o.backoff_max_ms) s->o.backoff_max_ms = 30000;
  if (!s->o.poll_ms) s->o.poll_ms = 1000;
  if (!s->o.checkpoint_ms) s->o.checkpoint_ms = 1000;
  if (!s->o.handler_timeout_ms) s->o.handler_timeout_ms = 30000;
  if (!s->o.breaker_failures) s->o.breaker_failures = 20;
  if (!s->o.breaker_open_ms) s->o.breaker_open_ms = 30000;
  if (!s->o.db_breaker_failures) s->o.db_breaker_failures = 3;
  if (!s->o.db_backoff_max_ms) s->o.db_backoff_max_ms = 30000;
  if (s->o.db_backoff_max_ms < s->o.poll_ms) s->o.db_backoff_max_ms = s->o.poll_ms;
  s->rng = (uint64_t)keel__es_unix_ms() * 0x9E3779B97F4A7C15ull ^ (uint64_t)keel_self();
  if (!s->rng) s->rng = 1;
  if ((rc = keel_register(s->regname, keel_self())) != 0) {
    free(s);
    return rc;
  }
  rc = keel__sub_tables(o->es);
  if (rc == 0 && s->owner[0]) rc = keel__es_transact_internal(o->es, claim_fn, s);
  keel_es_rows rows = {0};
  if (rc == 0)
    rc = keel_es_query(o->es, "SELECT position FROM keel_sub_checkpoints WHERE name = $1",
                       (const char *[]){s->name}, 1, &rows);
  if (rc == 0) {
    bool have = rows.nrows == 1;
    s->stored = have ? strtoll(keel_es_rows_get(&rows, 0, 0), NULL, 10) : 0;
    keel_es_rows_free(&rows);
    switch (o->from) {
    case KEEL_SUB_FROM_CHECKPOINT: s->pos = s->stored; break;
    case KEEL_SUB_FROM_BEGINNING:
      /* a group's partition resumes from its checkpoint (a new group's rows
       * start at 0): a takeover must not replay its partition, and could
       * not store a checkpoint below the stored one anyway */
      s->pos = s->owner[0] ? s->stored : 0;
      break;
    case KEEL_SUB_FROM_END:
      if (have)
        s->pos = s->stored;
      else
        rc = keel_es_head(o->es, &s->pos);
      break;
    case KEEL_SUB_FROM_POSITION: s->pos = have ? s->stored : o->position; break;
    }
  }
  if (rc == 0) rc = keel_es_head(o->es, &s->head);
  s->head_read_at = keel__es_now_s();
  if (rc == 0 && o->metrics) metric_children(s, o->metrics);
  if (rc == 0) rc = load_parked(s);
  if (rc == 0 && s->nparked) {
    keel_es_rows r2;
    if (keel_es_query(o->es, "SELECT 1 FROM keel_sub_parked WHERE name = $1 AND status = 'retry'",
                      (const char *[]){s->name}, 1, &r2) == 0) {
      s->retry_pending = r2.nrows > 0;
      keel_es_rows_free(&r2);
    }
  }
  if (rc == 0 && s->o.checkpoint == KEEL_SUB_CHECKPOINT_PERIODIC && !o->project)
    rc = keel_send_interval(keel_self(), s->o.checkpoint_ms, keel_msg_new(TAG_TICK, 0), &s->tick);
  if (rc) {
    keel_unregister(s->regname);
    keel__sub_unpublish(s->name);
    sub_free(s);
    return rc;
  }
  keel_log_info(NULL, "subscription started", KEEL_STR("subscription", s->name),
                KEEL_INT("checkpoint", s->pos), KEEL_INT("parked", (int64_t)s->nparked));
  gauges(s);
  pump(s);
  *state = s;
  return 0;
}

static int sub_init(void *arg, void **state) {
  sub_start a = {.o = arg};
  return sub_init_with(&a, state);
}

static int part_init(void *arg, void **state) {
  return sub_init_with(arg, state);
}

static void fill_status(sub *s, keel_sub_status *st) {
  memset(st, 0, sizeof *st);
  st->state = s->paused     ? KEEL_SUB_PAUSED
              : s->retrying ? KEEL_SUB_RETRYING
              : s->live     ? KEEL_SUB_LIVE
                            : KEEL_SUB_CATCHING_UP;
  st->checkpoint = s->pos;
  st->stored = s->stored;
  st->head = s->head > s->pos ? s->head : s->pos;
  st->lag = s->live ? 0 : st->head - s->pos;
  if (!s->live && s->idx < s->page.n) {
    double d = (double)(keel__es_unix_ms() - s->page.v[s->idx].stored_at_ms) / 1000.0;
    st->lag_seconds = d > 0 ? d : 0;
  }
  st->handled = s->handled;
  st->failures = s->failures;
  st->parked = s->nparked;
  st->attempts = s->attempts;
  st->failures_last_minute = failures_last_minute(s);
  st->caught_up = s->caught_up;
  st->breaker = s->breaker;
  st->db_breaker = s->db_breaker;
  st->db_errors = s->db_errors;
}

typedef struct mark_arg {
  sub *s;
  int64_t position;
  bool resolve;
  int64_t changed;
} mark_arg;

static int mark_fn(keel_es_tx *tx, void *arg) {
  mark_arg *a = arg;
  char pos[24];
  i64s(pos, a->position);
  keel_es_rows rows;
  int rc = fence_in(tx, a->s);
  if (rc) return rc;
  rc = keel_es_tx_exec(tx,
                       a->resolve ? "DELETE FROM keel_sub_parked WHERE name = $1 AND "
                                    "position = CAST($2 AS BIGINT) AND status = 'failed' "
                                    "RETURNING stream"
                                  : "UPDATE keel_sub_parked SET status = 'retry' WHERE "
                                    "name = $1 AND position = CAST($2 AS BIGINT) AND "
                                    "status = 'failed' RETURNING stream",
                       (const char *[]){a->s->name, pos}, 2, &rows);
  if (rc) return rc;
  a->changed = rows.changed;
  if (a->resolve && rows.nrows == 1) rc = release_in(tx, a->s, keel_es_rows_get(&rows, 0, 0));
  keel_es_rows_free(&rows);
  return rc;
}

static int sub_call(void *state, keel_gs_from from, keel_msg_t **req, keel_msg_t **reply) {
  (void)from;
  sub *s = state;
  sub_rep rep = {0};
  if (keel_msg_size(*req) != sizeof(sub_req)) {
    rep.rc = KEEL_EINVAL;
  } else {
    const sub_req *r = keel_msg_data(*req);
    switch (r->op) {
    case OP_STATUS: fill_status(s, &rep.st); break;
    case OP_PAUSE:
      if (!s->paused) keel_log_info(NULL, "subscription paused", KEEL_STR("subscription", s->name));
      s->paused = true;
      break;
    case OP_RESUME:
      if (s->paused) keel_log_info(NULL, "subscription resumed", KEEL_STR("subscription", s->name));
      s->paused = false;
      pump(s);
      break;
    case OP_RETRY:
    case OP_RESOLVE: {
      mark_arg a = {.s = s, .position = r->position, .resolve = r->op == OP_RESOLVE};
      rep.rc = keel__es_transact_internal(s->o.es, mark_fn, &a);
      if (rep.rc == KEEL_ECONFLICT && s->owner[0]) s->fenced = true; /* stops at the next tick */
      if (rep.rc == 0 && a.changed == 0) rep.rc = KEEL_ENOENT;
      if (rep.rc == 0) {
        keel_log_warn(NULL,
                      a.resolve ? "subscription: parked event resolved (given up)"
                                : "subscription: parked event retried",
                      KEEL_STR("subscription", s->name), KEEL_INT("position", r->position));
        s->retry_pending = true;
        load_parked(s);
        pump(s);
      }
      break;
    }
    default: rep.rc = KEEL_EINVAL;
    }
  }
  publish(s);
  *reply = keel_msg_copy(0, &rep, sizeof rep);
  return KEEL_GS_REPLY;
}

static int sub_info(void *state, keel_msg_t **msg) {
  sub *s = state;
  if (keel_msg_kind_of(*msg) != KEEL_MSG_USER) return KEEL_GS_OK;
  switch (keel_msg_tag(*msg)) {
  case TAG_PUMP: s->pump_queued = false; return step(s);
  case TAG_WAKE:
    s->wait_timer = 0;
    pump(s);
    return KEEL_GS_OK;
  case TAG_WATCHED: {
    int64_t head = 0;
    if (keel_msg_size(*msg) == sizeof head) memcpy(&head, keel_msg_data(*msg), sizeof head);
    if (head > s->head) {
      s->head = head;
      s->head_read_at = keel__es_now_s();
    }
    s->watching = false;
    pump(s);
    return KEEL_GS_OK;
  }
  case TAG_RETRY:
    s->retrying = false;
    pump(s);
    return KEEL_GS_OK;
  case TAG_SAVED:
    saved_in(s, *msg);
    if (s->save_again) save_behind(s);
    gauges(s);
    return s->fenced ? lost(s) : KEEL_GS_OK;
  case TAG_TICK: save(s); return s->fenced ? lost(s) : KEEL_GS_OK;
  default: return KEEL_GS_OK;
  }
}

static int sub_cast(void *state, keel_msg_t **msg) {
  (void)state;
  (void)msg;
  return KEEL_GS_OK;
}

/* Shutdown, in the reference's phases, each logged: reading stops (this
 * callback runs between events: the event in hand was finished), the
 * worker goes, the checkpoint is stored, the subscription closes. */
static void sub_terminate(keel_reason reason, void *state) {
  sub *s = state;
  keel_log_info(NULL, "subscription stopping: reading stopped, in-flight event finished",
                KEEL_STR("subscription", s->name),
                KEEL_STR("reason", keel_reason_name(reason.kind)), KEEL_INT("checkpoint", s->pos));
  if (s->tick) keel_cancel_timer(s->tick);
  if (s->wait_timer) keel_cancel_timer(s->wait_timer);
  save_wait(s); /* the saver is not killed inside a save */
  if (s->worker) keel_exit_signal(s->worker, KEEL_REASON_KILL, NULL);
  if (s->waker) keel_exit_signal(s->waker, KEEL_REASON_KILL, NULL);
  if (s->saver) keel_exit_signal(s->saver, KEEL_REASON_KILL, NULL);
  if (s->tail_user) keel__es_tail_use(s->o.es, -1);
  int rc = save(s);
  keel_log_info(NULL, "subscription stopped: checkpoint stored, closed",
                KEEL_STR("subscription", s->name), KEEL_INT("checkpoint", s->stored),
                KEEL_STR("saved", rc ? keel_strerror(rc) : "ok"));
  keel_unregister(s->regname);
  keel__sub_unpublish(s->name);
  sub_free(s);
}

static const keel_gen_server sub_behaviour = {
    .init = sub_init,
    .handle_call = sub_call,
    .handle_cast = sub_cast,
    .handle_info = sub_info,
    .terminate = sub_terminate,
};

/* A partition of a group (subgroup.c starts them). */
static const keel_gen_server part_behaviour = {
    .init = part_init,
    .handle_call = sub_call,
    .handle_cast = sub_cast,
    .handle_info = sub_info,
    .terminate = sub_terminate,
};

int keel__sub_start_partition(const keel_sub_opts *o, const char *name, int index, int count,
                              const char *owner, keel_pid_t *out) {
  sub_start a = {.o = o, .name = name, .part_index = index, .part_count = count, .owner = owner};
  keel_gs_opts go = {.link = true, .trap_exit = true, .init_timeout = 30000};
  return keel_gs_start(&part_behaviour, &a, &go, out, NULL);
}

/* ---- the API ----------------------------------------------------------------------------------
 */

int keel_sub_start(const keel_sub_opts *opts, bool link, keel_pid_t *out) {
  int rc = opts_ok(opts);
  if (rc) return rc;
  keel_gs_opts go = {.link = link, .trap_exit = true, .init_timeout = 30000};
  return keel_gs_start(opts->partitions ? &keel__subgroup_behaviour : &sub_behaviour, (void *)opts,
                       &go, out, NULL);
}

keel_sup_child_spec keel_sub_child(const keel_sub_opts *opts) {
  return (keel_sup_child_spec){.id = opts->name,
                               .gen_server =
                                   opts->partitions ? &keel__subgroup_behaviour : &sub_behaviour,
                               .arg = (void *)opts};
}

int keel__sub_opts_ok(const keel_sub_opts *o) {
  return opts_ok(o);
}

static int call(const char *name, int op, int64_t position, keel_sub_status *st) {
  if (!keel__sub_name_ok(name)) return KEEL_EINVAL;
  char reg[112];
  snprintf(reg, sizeof reg, "sub.%s", name);
  sub_req r = {.op = op, .position = position};
  keel_msg_t *reply = NULL;
  int rc = keel_gs_call_name(reg, keel_msg_copy(0, &r, sizeof r), &reply, 30000, NULL);
  if (rc) return rc;
  sub_rep rep;
  if (keel_msg_size(reply) != sizeof rep) {
    keel_msg_free(reply);
    return KEEL_EIO;
  }
  memcpy(&rep, keel_msg_data(reply), sizeof rep);
  keel_msg_free(reply);
  if (st) *st = rep.st;
  return rep.rc;
}

int keel_sub_pause(const char *name) {
  return call(name, OP_PAUSE, 0, NULL);
}
int keel_sub_resume(const char *name) {
  return call(name, OP_RESUME, 0, NULL);
}
int keel_sub_retry(const char *name, int64_t position) {
  return call(name, OP_RETRY, position, NULL);
}
int keel_sub_resolve(const char *name, int64_t position) {
  return call(name, OP_RESOLVE, position, NULL);
}

int keel_sub_stop(const char *name, int64_t timeout_ms) {
  if (!keel__sub_name_ok(name)) return KEEL_EINVAL;
  char reg[112];
  snprintf(reg, sizeof reg, "sub.%s", name);
  keel_pid_t pid = keel_whereis(reg);
  if (!pid) return KEEL_ENOPROC;
  return keel_gs_stop(pid, KEEL_REASON_NORMAL, NULL, timeout_ms);
}

int keel_sub_parked(keel_es *es, const char *name, keel_sub_parked_event *out, size_t max,
                    size_t *n) {
  if (n) *n = 0;
  if (!es || !keel__sub_name_ok(name) || (max && !out) || !n) return KEEL_EINVAL;
  char lim[24];
  i64s(lim, (int64_t)max);
  keel_es_rows rows;
  int rc = keel_es_query(es,
                         "SELECT position, stream, event_id, type, status, error, attempts, "
                         "first_failure, last_failure FROM keel_sub_parked WHERE name = $1 "
                         "ORDER BY position LIMIT CAST($2 AS BIGINT)",
                         (const char *[]){name, lim}, 2, &rows);
  if (rc == KEEL_EINVAL) return KEEL_ENOENT; /* no table yet: no subscription ever ran */
  if (rc) return rc;
  for (size_t r = 0; r < rows.nrows && r < max; r++) {
    keel_sub_parked_event *e = &out[r];
    memset(e, 0, sizeof *e);
    e->position = strtoll(keel_es_rows_get(&rows, r, 0), NULL, 10);
    snprintf(e->stream, sizeof e->stream, "%s", keel_es_rows_get(&rows, r, 1));
    snprintf(e->event_id, sizeof e->event_id, "%s", keel_es_rows_get(&rows, r, 2));
    snprintf(e->type, sizeof e->type, "%s", keel_es_rows_get(&rows, r, 3));
    e->waiting = strcmp(keel_es_rows_get(&rows, r, 4), "failed") != 0;
    snprintf(e->error, sizeof e->error, "%s", keel_es_rows_get(&rows, r, 5));
    e->attempts = atoi(keel_es_rows_get(&rows, r, 6));
    e->first_failure_ms = strtoll(keel_es_rows_get(&rows, r, 7), NULL, 10);
    e->last_failure_ms = strtoll(keel_es_rows_get(&rows, r, 8), NULL, 10);
    *n = r + 1;
  }
  keel_es_rows_free(&rows);
  return 0;
}
