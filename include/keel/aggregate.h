/* keel/aggregate.h - aggregates on the event store: load, decide, append, retry.
 *
 * An aggregate is a stream ("<category>-<id>") whose events fold into a
 * state. A command is handled in three steps, as the event-sourcing
 * literature describes it: load the state (the latest usable snapshot, then
 * the events after it, upcast like every read), let decide() turn the
 * command into new events or a rejection, and append them with the exact
 * version that was loaded. If another writer appended meanwhile the append
 * conflicts: the state is loaded again and decide() runs again, at most
 * max_retries times, after which the call answers KEEL_ECONFLICT. So a
 * decision is always taken on the state its events follow: no lost update.
 *
 *   static void *init(void *ud) { return calloc(1, sizeof(account)); }
 *   static int apply(void *s, const keel_es_event *e, void *ud) {
 *     account *a = s;
 *     if (strcmp(e->type, "Deposited") == 0)
 *       a->balance += json_integer_value(json_object_get(keel_es_event_payload(e), "amount"));
 *     return 0;
 *   }
 *   static int deposit(const void *s, const void *cmd, keel_agg_decision *d) {
 *     int64_t amount = *(const int64_t *)cmd;
 *     if (amount <= 0) return keel_agg_reject(d, KEEL_EINVAL, "amount must be positive");
 *     return keel_agg_emit(d, "Deposited", json_pack("{s:I}", "amount", amount));
 *   }
 *   static const keel_agg_def accounts = {.category = "account", .init = init,
 *     .apply = apply, .destroy = destroy, .encode = encode, .decode = decode,
 *     .snapshot_every = 100};
 *   keel_agg_result r;
 *   int rc = keel_agg_execute(es, &accounts, "17", deposit, &(int64_t){50}, &r);
 *
 * SNAPSHOTS. With encode and decode and snapshot_every = N, a command whose
 * events take the stream's version across a multiple of N (a batch that
 * jumps over one counts) saves the new state as the stream's snapshot, and
 * so does a command whose load had to replay N events or more after the
 * snapshot (snapshots just enabled, a snapshot that was ignored, a save that
 * failed). A save never replaces a newer snapshot, and a failed save is
 * logged, never an error of the command (the events are stored; the next
 * crossing tries again). A snapshot saved with another snapshot_version, or
 * that decode() refuses, is ignored with one warning per load and the state
 * is rebuilt from the events: a snapshot is a cache, never the truth.
 *
 * REPLAY EQUALS SNAPSHOT PLUS TAIL. That holds when apply() is a pure
 * function of the state and the event, and encode/decode round-trip the
 * state. After a successful append, the command's events are applied to the
 * state as decide() emitted them (with their version, position and id, not
 * upcast): emit events at their latest schema version, as new code does.
 *
 * DELETES. A soft-deleted stream loads as a new aggregate at the kept
 * version (appending recreates it, as keel_es_delete_stream says); its
 * snapshot was removed with it. Truncated history is not read: the state is
 * folded from the readable events (and a snapshot, if one covers the
 * truncated part). A hard delete removes the snapshot too.
 *
 * CALLS. From a keel process; they block only the calling process. A
 * definition is read-only and may be shared by every process; callbacks run
 * in the calling process and may be called again for a retry, so decide()
 * must not have effects outside the decision. One command at a time per
 * aggregate is not required: concurrency is what the retries are for.
 */
#ifndef KEEL_AGGREGATE_H
#define KEEL_AGGREGATE_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "keel/eventstore.h"

#ifdef __cplusplus
extern "C" {
#endif

/* max_retries: no retry at all (a conflict is returned at once). */
#define KEEL_AGG_NO_RETRY (-1)

/* The events a decide() call emits (keel's; valid during the call). */
typedef struct keel_agg_decision keel_agg_decision;

/* An aggregate type. Zeroed optional fields are their defaults. */
typedef struct keel_agg_def {
  /* streams are "<category>-<id>"; NULL or "": the id is the stream */
  const char *category;
  /* a new, empty state (NULL: out of memory) */
  void *(*init)(void *ud);
  /* folds one event into the state: 0, or a negative code that fails the
   * load (logged with the stream and version; after a command's append the
   * failure is logged and the command still answers 0: its events are
   * stored) */
  int (*apply)(void *state, const keel_es_event *ev, void *ud);
  /* frees a state made by init or decode */
  void (*destroy)(void *state, void *ud);
  /* snapshots (optional, both or neither): the state as a new JSON value
   * (NULL: skip this snapshot), and a new state from one (NULL: refused; the
   * snapshot is ignored and the state rebuilt from events) */
  json_t *(*encode)(const void *state, void *ud);
  void *(*decode)(const json_t *json, void *ud);
  int snapshot_version;   /* the encoding's version; 0: 1 */
  int64_t snapshot_every; /* N (see SNAPSHOTS); 0: no snapshots */
  int max_retries;        /* loads and decides after a conflict; 0: 3; KEEL_AGG_NO_RETRY */
  void *ud;               /* passed to the callbacks */
} keel_agg_def;

/* Turns a command into events (keel_agg_emit) and returns 0, or rejects it:
 * any other value, which keel_agg_execute returns unchanged with nothing
 * appended (keel's own errors are negative KEEL_E* codes, so positive values
 * are free for the application's). state is the loaded state (read only).
 * Emitting nothing and returning 0 is a command with no effect. */
typedef int (*keel_agg_decide_fn)(const void *state, const void *cmd, keel_agg_decision *d);

/* Adds an event of `type` (copied) with `payload` to the decision; takes
 * the payload's reference, always, even when it fails, so
 * keel_agg_emit(d, "X", json_pack(...)) leaks nothing. Errors: KEEL_EINVAL
 * (type or payload NULL: json_pack failed), KEEL_ENOMEM. A failed emit fails
 * the command with its code even if decide() then returns 0. */
int keel_agg_emit(keel_agg_decision *d, const char *type, json_t *payload);

/* Adds a full event (id, schema_version, metadata, occurred_at: see
 * keel_es_event_in); everything is borrowed and copied. Errors as above. */
int keel_agg_emit_event(keel_agg_decision *d, const keel_es_event_in *ev);

/* Records why decide() rejects the command (printf format; the text is
 * kept in the result's reason, cut at its size) and returns code, for
 * `return keel_agg_reject(d, CODE, "...")`. */
int keel_agg_reject(keel_agg_decision *d, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

typedef struct keel_agg_result {
  int64_t version;        /* the stream's version after the command (as loaded if nothing was
                             appended) */
  size_t appended;        /* events appended (0: none emitted, rejected, or failed) */
  int64_t first_position; /* the appended events' global positions */
  int64_t last_position;
  int attempts;        /* decide() calls: 1 + the conflicts retried */
  bool rejected;       /* decide() rejected: the return value is decide()'s */
  bool snapshot_saved; /* this command saved a snapshot */
  char reason[200];    /* the rejection's text (keel_agg_reject), "" otherwise */
} keel_agg_result;

/* Handles one command on the aggregate `id` of def: load, decide, append
 * with the loaded version, retry on conflict (see the top). cmd is passed to
 * decide() as given. result may be NULL. Returns 0 (the events, if any, are
 * stored), decide()'s rejection (result->rejected), KEEL_ECONFLICT (still
 * conflicting after max_retries; result->attempts says how many), KEEL_EINVAL
 * (def lacks init, apply or destroy, or has one of encode/decode without the
 * other or snapshot_every without them, max_retries below
 * KEEL_AGG_NO_RETRY, an invalid stream id, or an emitted event is invalid),
 * an apply() error, or the store's errors (KEEL_EIO, KEEL_ETIMEDOUT,
 * KEEL_ERANGE, ...). */
int keel_agg_execute(keel_es *es, const keel_agg_def *def, const char *id,
                     keel_agg_decide_fn decide, const void *cmd, keel_agg_result *result);

/* Loads the aggregate's current state for a query: *state gets a new state
 * (the caller's: def->destroy), *version the stream version it includes (0:
 * no events; a new aggregate's state is init()'s). version may be NULL.
 * Errors as keel_agg_execute's load; *state is NULL on error. */
int keel_agg_load(keel_es *es, const keel_agg_def *def, const char *id, void **state,
                  int64_t *version);

#ifdef __cplusplus
}
#endif
#endif
