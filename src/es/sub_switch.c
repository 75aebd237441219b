/* sub_switch.c - blue/green rebuilds of a projection (keel_sub_switch,
 * keel_sub_replaying; keel/subscription.h).
 *
 * The new version is an ordinary subscription the caller started beside
 * the live one; this file only does the switch, in an order that loses
 * nothing: wait until the new version is caught up (so the pause that
 * follows is short), pause the live one (it hands out nothing more after
 * the pause call returns: calls are served between events), wait until the
 * new one's checkpoint has passed the live one's, run the caller's cutover
 * in one transaction, stop the live one. Any failure before the cutover
 * commits resumes the live version: readers keep the old read model.
 *
 * It waits by reading the status board every 10 ms rather than by
 * subscribing to changes: a switch is rare, and the board never waits
 * behind a handler.
 *
 * GROUPS (o->partitions > 0) run on several instances, so the pause cannot
 * be a call: it is written in the database. The switch
 *   1. waits until every partition of the new group has a checkpoint at or
 *      past the head as it was when the switch began (read from
 *      keel_sub_checkpoints: the partitions may run anywhere);
 *   2. retires the live group in one transaction: a row of the group's own
 *      name with owner "retired", and the same owner on each of its
 *      partitions' rows, which fences them (sub.c: a partition's checkpoint
 *      moves only under its owner's token, and its projection's rows commit
 *      with it), so the live read model stops moving on every instance at
 *      once; the coordinators see the mark on their next round, stop their
 *      partitions and idle;
 *   3. waits until the new group's lowest checkpoint has passed the live
 *      group's highest (now final);
 *   4. runs the caller's cutover in one transaction, if the group is still
 *      retired (nobody undid it).
 * A failure after 2 (a timeout, the cutover's error) undoes the retirement:
 * the coordinators take their partitions again on their next round. A claim
 * and a retirement take turns on the group's lock (keel__sub_group_lock),
 * so a claim never overwrites the fence.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "es/es_internal.h"
#include "keel/error.h"
#include "keel/log.h"
#include "keel/process.h"
#include "keel/registry.h"
#include "keel/runtime.h"
#include "keel/subscription.h"
#include "keel/timer.h"

enum { SWITCH_POLL_MS = 10 };

typedef struct clock_budget {
  int64_t deadline; /* monotonic ms; -1: none */
} clock_budget;

static int64_t now_ms(void) {
  return (int64_t)(keel__es_now_s() * 1000.0);
}

static bool expired(const clock_budget *b) {
  return b->deadline >= 0 && now_ms() >= b->deadline;
}

/* Waits until `name`'s status passes pred (with arg). */
static int wait_status(const char *name, bool (*pred)(const keel_sub_status *, int64_t),
                       int64_t arg, const clock_budget *b) {
  for (;;) {
    keel_sub_status st;
    int rc = keel_sub_status_get(name, &st);
    if (rc) return rc;
    if (pred(&st, arg)) return 0;
    if (expired(b)) return KEEL_ETIMEDOUT;
    keel_sleep(SWITCH_POLL_MS);
  }
}

static bool is_caught_up(const keel_sub_status *st, int64_t unused) {
  (void)unused;
  return st->caught_up && st->lag == 0;
}

static bool has_passed(const keel_sub_status *st, int64_t pos) {
  return st->checkpoint >= pos;
}

/* ---- groups ------------------------------------------------------------------------- */

/* The groups' checkpoints, as keel_sub_checkpoints has them. */
typedef struct group_cps {
  int64_t live_max; /* the live group's highest partition checkpoint */
  int64_t next_min; /* the new group's lowest, over the partitions that have a row */
  int next_rows;    /* how many of the new group's partitions have a row */
  bool more;        /* the new group has a partition at or above o->partitions */
} group_cps;

static const char *const group_rows_sql =
    "SELECT name, position FROM keel_sub_checkpoints WHERE "
    "substr(name, 1, length(CAST($1 AS TEXT)) + 2) = CAST($1 AS TEXT) || '.p' OR "
    "substr(name, 1, length(CAST($2 AS TEXT)) + 2) = CAST($2 AS TEXT) || '.p'";

/* name is "<group>.p<digits>" with the digits below count (count 0: any);
 * the partition's index, or -1. */
static int partition_index(const char *name, const char *group, int count) {
  size_t n = strlen(group);
  if (strncmp(name, group, n) != 0 || strncmp(name + n, ".p", 2) != 0) return -1;
  const char *d = name + n + 2;
  if (!*d || strlen(d) > 5) return -1;
  int k = 0;
  for (; *d; d++) {
    if (*d < '0' || *d > '9') return -1;
    k = k * 10 + (*d - '0');
  }
  return count && k >= count ? -1 : k;
}

static void fold_rows(const keel_sub_switch_opts *o, const keel_es_rows *rows, group_cps *out) {
  *out = (group_cps){.live_max = 0, .next_min = INT64_MAX};
  for (size_t r = 0; r < rows->nrows; r++) {
    const char *name = keel_es_rows_get(rows, r, 0);
    int64_t pos = strtoll(keel_es_rows_get(rows, r, 1), NULL, 10);
    if (partition_index(name, o->live, 0) >= 0 && pos > out->live_max) out->live_max = pos;
    int k = partition_index(name, o->next, 0);
    if (k >= o->partitions) out->more = true;
    if (k >= 0 && k < o->partitions) {
      out->next_rows++;
      if (pos < out->next_min) out->next_min = pos;
    }
  }
}

static int read_cps(const keel_sub_switch_opts *o, group_cps *out) {
  keel_es_rows rows;
  int rc = keel_es_query(o->es, group_rows_sql, (const char *[]){o->live, o->next}, 2, &rows);
  if (rc) return rc;
  fold_rows(o, &rows, out);
  keel_es_rows_free(&rows);
  return 0;
}

/* Waits until every partition of the new group is at or past `pos`. */
static int wait_next_at(const keel_sub_switch_opts *o, int64_t pos, bool above_live,
                        const clock_budget *b) {
  for (;;) {
    group_cps c;
    int rc = read_cps(o, &c);
    if (rc) return rc;
    if (c.more) return KEEL_EINVAL; /* o->partitions is not the new group's count */
    if (c.next_rows == o->partitions && c.next_min >= pos &&
        (!above_live || c.next_min >= c.live_max))
      return 0;
    if (expired(b)) return KEEL_ETIMEDOUT;
    keel_sleep(SWITCH_POLL_MS * 5);
  }
}

typedef struct retire_arg {
  const keel_sub_switch_opts *o;
  bool undo;
} retire_arg;

/* The marker's owner: KEEL__SUB_RETIRED, KEEL__SUB_CUTOVER, or "" (none). */
static int marker_state(keel_es_tx *tx, const char *group, char *out, size_t cap) {
  char marker[72];
  keel__sub_marker_name(group, marker, sizeof marker);
  keel_es_rows rows;
  int rc = keel_es_tx_exec(tx, "SELECT owner FROM keel_sub_checkpoints WHERE name = $1",
                           (const char *[]){marker}, 1, &rows);
  if (rc) return rc;
  const char *v = rows.nrows == 1 ? keel_es_rows_get(&rows, 0, 0) : NULL;
  snprintf(out, cap, "%s", v ? v : "");
  keel_es_rows_free(&rows);
  return 0;
}

/* Retires the live group: the marker, then each partition's row fenced.
 * Again on a retired group (a switch called again after its caller died):
 * the same, so it goes on. On a group already cut over: KEEL_EEXIST,
 * nothing changed. Undo: the marker goes, unless the cutover committed. */
static int retire_fn(keel_es_tx *tx, void *arg) {
  const retire_arg *a = arg;
  const char *live = a->o->live;
  char marker[72], now[24], state[24];
  keel__sub_marker_name(live, marker, sizeof marker);
  snprintf(now, sizeof now, "%lld", (long long)keel__es_unix_ms());
  int rc = keel__sub_group_lock(tx, live);
  if (rc) return rc;
  if (a->undo)
    return keel_es_tx_exec(
        tx, "DELETE FROM keel_sub_checkpoints WHERE name = $1 AND owner = '" KEEL__SUB_RETIRED "'",
        (const char *[]){marker}, 1, NULL);
  if ((rc = marker_state(tx, live, state, sizeof state)) != 0) return rc;
  if (strcmp(state, KEEL__SUB_CUTOVER) == 0) return KEEL_EEXIST;
  rc = keel_es_tx_exec(tx,
                       "INSERT INTO keel_sub_checkpoints (name, position, updated_at, owner) "
                       "VALUES ($1, 0, CAST($2 AS BIGINT), '" KEEL__SUB_RETIRED "') "
                       "ON CONFLICT (name) DO NOTHING",
                       (const char *[]){marker, now}, 2, NULL);
  keel_es_rows rows;
  if (!rc) rc = keel_es_tx_exec(tx, group_rows_sql, (const char *[]){live, live}, 2, &rows);
  if (rc) return rc;
  /* each partition's row by its exact name (a plain subscription "<live>.px"
   * is not one); on PostgreSQL the update waits for a partition's commit in
   * flight, and the partition's next one is refused. A partition without a
   * row cannot be claimed while the marker exists (sub.c, claim_fn). */
  for (size_t r = 0; r < rows.nrows && !rc; r++) {
    const char *name = keel_es_rows_get(&rows, r, 0);
    if (partition_index(name, live, 0) < 0) continue;
    rc = keel_es_tx_exec(
        tx, "UPDATE keel_sub_checkpoints SET owner = '" KEEL__SUB_RETIRED "' WHERE name = $1",
        (const char *[]){name}, 1, NULL);
  }
  keel_es_rows_free(&rows);
  return rc;
}

/* The caller's cutover, if the live group is still retired and not cut
 * over, with the marker set to "cut over" in the same transaction: after
 * this commits, nothing undoes the retirement. */
static int group_cutover_fn(keel_es_tx *tx, void *arg) {
  const keel_sub_switch_opts *o = arg;
  char marker[72], state[24];
  keel__sub_marker_name(o->live, marker, sizeof marker);
  int rc = keel__sub_group_lock(tx, o->live);
  if (!rc) rc = marker_state(tx, o->live, state, sizeof state);
  if (rc) return rc;
  if (strcmp(state, KEEL__SUB_RETIRED) != 0) return KEEL_ESTATE;
  rc = keel_es_tx_exec(
      tx, "UPDATE keel_sub_checkpoints SET owner = '" KEEL__SUB_CUTOVER "' WHERE name = $1",
      (const char *[]){marker}, 1, NULL);
  return rc ? rc : o->cutover(tx, o->ud);
}

/* 1 when `group` was retired by a switch, 0 when not, or an error. */
static int is_retired(keel_es *es, const char *group) {
  char marker[72];
  keel__sub_marker_name(group, marker, sizeof marker);
  keel_es_rows rows;
  int rc = keel_es_query(es, "SELECT count(*) FROM keel_sub_checkpoints WHERE name = $1",
                         (const char *[]){marker}, 1, &rows);
  if (rc) return rc;
  rc = strtoll(keel_es_rows_get(&rows, 0, 0), NULL, 10) > 0;
  keel_es_rows_free(&rows);
  return rc;
}

static int switch_groups(const keel_sub_switch_opts *o, const clock_budget *b) {
  /* the new group runs here (so its partitions run somewhere) and was not
   * itself replaced */
  char reg[80];
  snprintf(reg, sizeof reg, "sub.%s", o->next);
  if (!keel_whereis(reg)) return KEEL_ENOPROC;
  int rc = is_retired(o->es, o->next);
  if (rc) return rc < 0 ? rc : KEEL_ESTATE;
  int64_t head;
  if ((rc = keel_es_head(o->es, &head)) != 0) return rc;
  keel_log_info(NULL, "subscription switch: waiting for the new group to catch up",
                KEEL_STR("live", o->live), KEEL_STR("next", o->next), KEEL_INT("head", head),
                KEEL_INT("partitions", o->partitions));
  if ((rc = wait_next_at(o, head, false, b)) != 0) return rc;
  retire_arg ra = {.o = o};
  if ((rc = keel__es_transact_internal(o->es, retire_fn, &ra)) != 0) return rc; /* nothing done */
  keel_log_info(NULL, "subscription switch: live group retired, waiting for the new one to pass it",
                KEEL_STR("live", o->live), KEEL_STR("next", o->next));
  rc = wait_next_at(o, 0, true, b);
  /* internal: the marker is keel's table (the caller's cutover runs in it too) */
  if (rc == 0) rc = keel__es_transact_internal(o->es, group_cutover_fn, (void *)o);
  if (rc) {
    ra.undo = true;
    int urc = keel__es_transact_internal(o->es, retire_fn, &ra);
    keel_log_warn(NULL, "subscription switch failed: the live group goes on (unless it was cut over)",
                  KEEL_STR("live", o->live), KEEL_STR("next", o->next),
                  KEEL_STR("error", keel_strerror(rc)),
                  KEEL_STR("undo", urc ? keel_strerror(urc) : "ok"));
    return rc;
  }
  keel_log_info(NULL, "subscription switch: cut over; the old group stays retired",
                KEEL_STR("live", o->live), KEEL_STR("next", o->next));
  return 0;
}

int keel_sub_switch(const keel_sub_switch_opts *o) {
  if (!o || !o->es || !o->live || !o->next || !o->cutover || strcmp(o->live, o->next) == 0 ||
      (o->timeout_ms < 0 && o->timeout_ms != KEEL_INFINITY) || o->partitions < 0 ||
      o->partitions > 1024)
    return KEEL_EINVAL;
  clock_budget b = {.deadline = o->timeout_ms == 0 || o->timeout_ms == KEEL_INFINITY
                                    ? -1
                                    : now_ms() + o->timeout_ms};
  if (o->partitions) return switch_groups(o, &b);
  keel_sub_status live;
  int rc = keel_sub_status_get(o->live, &live);
  if (rc == 0) rc = keel_sub_status_get(o->next, NULL);
  if (rc) return rc;
  keel_log_info(NULL, "subscription switch: waiting for the new version to catch up",
                KEEL_STR("live", o->live), KEEL_STR("next", o->next));
  if ((rc = wait_status(o->next, is_caught_up, 0, &b)) != 0) return rc;
  if ((rc = keel_sub_pause(o->live)) != 0) return rc;
  /* paused: the live version hands nothing out after this, so its
   * checkpoint is final */
  rc = keel_sub_status_get(o->live, &live);
  if (rc == 0) rc = wait_status(o->next, has_passed, live.checkpoint, &b);
  if (rc == 0) rc = keel_es_transact(o->es, NULL, 0, NULL, NULL, o->cutover, o->ud);
  if (rc) {
    keel_log_warn(NULL, "subscription switch failed: the live version goes on",
                  KEEL_STR("live", o->live), KEEL_STR("next", o->next),
                  KEEL_STR("error", keel_strerror(rc)));
    keel_sub_resume(o->live);
    return rc;
  }
  keel_log_info(NULL, "subscription switch: cut over, stopping the old version",
                KEEL_STR("live", o->live), KEEL_STR("next", o->next),
                KEEL_INT("checkpoint", live.checkpoint));
  rc = keel_sub_stop(o->live, 0);
  return rc == KEEL_ENOPROC ? 0 : rc;
}

bool keel_sub_replaying(const char *live, const keel_es_event *ev) {
  keel_sub_status st;
  return ev && keel_sub_status_get(live, &st) == 0 && st.checkpoint >= ev->position;
}
