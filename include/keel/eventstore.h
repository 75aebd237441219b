/* keel/eventstore.h - an append-only event store: streams of events with
 * optimistic concurrency, one global order, exactly-once appends by event id.
 *
 * Embedded by default (SQLite, a file under ./data, WAL, synchronous=FULL:
 * when an append returns, its events survive a power cut); PostgreSQL when
 * many instances share one database (DATABASE_URL=postgresql://... or
 * postgres://...: a pool of libpq connections, see docs/eventstore.md).
 *
 *   keel_es *es;
 *   keel_es_open(NULL, &es);                       // $DATABASE_URL, else sqlite:./data/keel.db
 *   keel_es_event_in ev = {.type = "OrderPlaced", .payload = json_pack("{s:i}", "total", 42)};
 *   keel_es_append_result r;
 *   int rc = keel_es_append(es, "order-17", KEEL_ES_NO_STREAM, &ev, 1, &r);
 *   json_decref(ev.payload);                        // append borrows what it is given
 *   if (rc == KEEL_ECONFLICT) ...                   // r.expected, r.actual say why
 *
 * EVENTS. An event has a stream id, an event id (a UUID, generated when not
 * given), a type, a schema version, a JSON payload and JSON metadata
 * (correlation_id, causation_id, tenant, actor and anything else the caller
 * adds), the time it occurred (the caller's, default now) and the time it was
 * stored; the store gives it its stream version (1, 2, ... within the stream)
 * and its global position (strictly increasing across the store, in commit
 * order: a reader of the global feed never sees a lower position after a
 * higher one).
 *
 * APPENDS are atomic per call: all the batch's events or none. expected is
 * KEEL_ES_ANY, KEEL_ES_NO_STREAM (the stream has no events; same as exact 0),
 * KEEL_ES_STREAM_EXISTS, or the exact version the stream must be at. A
 * mismatch is KEEL_ECONFLICT with expected and actual in the result. A batch
 * whose event ids were all appended before (to the same stream, in the same
 * order) returns the original result with duplicate set: a retry after a lost
 * acknowledgement is safe. A batch mixing appended and new ids, or reusing an
 * id of another stream, is KEEL_EEXIST. An empty batch is KEEL_EINVAL.
 *
 * CALLS block only the calling keel process: SQLite appends go to one writer
 * thread, which folds concurrent appends into one transaction (group commit;
 * each append keeps its own expected-version check and its own result), and
 * reads run on the blocking pool. On PostgreSQL each call checks a
 * connection out of the store's pool and talks to the server with libpq's
 * asynchronous API, the calling process waiting on the socket (one
 * transaction per call, no group commit). Call from a keel process; a handle
 * may be shared by every process of the node.
 *
 * OWNERSHIP. Inputs are borrowed for the call. Results (keel_es_events,
 * keel_es_stream_info) are the caller's: free them with their _free call.
 */
#ifndef KEEL_EVENTSTORE_H
#define KEEL_EVENTSTORE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "keel/metrics.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct keel_es keel_es;

/* ---- opening ------------------------------------------------------------- */

typedef enum keel_es_sync {
  KEEL_ES_SYNC_FULL = 0, /* the default: fsync at every commit (survives a power cut) */
  KEEL_ES_SYNC_NORMAL,   /* WAL's NORMAL: survives a crash of the process, not of the machine */
} keel_es_sync;

/* Zeroed: the defaults. */
typedef struct keel_es_opts {
  /* "sqlite:PATH" (":memory:" for a private in-memory store, tests),
   * "postgresql://..." or "postgres://..." (a libpq URI);
   * NULL: $DATABASE_URL, else "sqlite:./data/keel.db" (the folder is made) */
  const char *url;
  keel_es_sync sync;
  size_t max_event_bytes; /* payload + metadata of one event; 0: 1 MiB; larger: KEEL_ERANGE */
  size_t max_batch;       /* events in one append; 0: 10000; more: KEEL_ERANGE */
  /* group commit: appends waiting when a transaction starts are folded into
   * it, up to this many events; 0: 10000 */
  size_t group_max_events;
  keel_metrics *metrics; /* register es_* metrics here; NULL: none */
  /* PostgreSQL only (SQLite ignores them): the connection pool. */
  size_t pool_min; /* connections opened at open and kept; 0: 1 */
  size_t pool_max; /* at most this many; 0: 10 */
  int64_t
      acquire_timeout_ms; /* a call waiting for a connection gives up (KEEL_ETIMEDOUT); 0: 5000 */
  int64_t statement_timeout_ms; /* the server's statement_timeout on every connection; 0: 30000 */
  /* Notifications (keel_es_wait). A waiting process re-reads the head at
   * least this often whatever it is told (the fallback when the PostgreSQL
   * listener is down or off, or a notification was lost; on SQLite, appends
   * by another OS process on the same file); 0: 1000; KEEL_INFINITY: only
   * when woken. */
  int64_t notify_poll_ms;
  /* PostgreSQL: no LISTEN connection and no NOTIFY (PgBouncer in transaction
   * mode cannot LISTEN): waiters see other instances' appends by polling
   * (notify_poll_ms); this instance's appends still wake its own waiters at
   * once. SQLite ignores it. */
  bool no_listen;
} keel_es_opts;

/* Opens (creating or migrating the schema as needed) the store. Call from a
 * keel process. Errors: KEEL_EINVAL (bad url, notify_poll_ms), KEEL_EIO (the database cannot
 * be opened, created or reached; logged with the cause), KEEL_ENOMEM,
 * KEEL_ENOTPROC. */
int keel_es_open(const keel_es_opts *o, keel_es **out);

/* Waits for appends in flight, closes the database, frees es. NULL is
 * ignored. Processes inside keel_es_wait are woken with KEEL_ECANCELED and
 * close returns once they have left it; no other call on es may run or
 * follow. */
void keel_es_close(keel_es *es);

/* ---- appending ----------------------------------------------------------- */

#define KEEL_ES_ANY           ((int64_t)-1)
#define KEEL_ES_NO_STREAM     ((int64_t)0)
#define KEEL_ES_STREAM_EXISTS ((int64_t)-2)

/* One event to append. Only type and payload are required. */
typedef struct keel_es_event_in {
  const char *id;         /* a UUID ("8-4-4-4-12" hex); NULL: a new random one */
  const char *type;       /* 1-255 bytes */
  int schema_version;     /* 0: 1 */
  json_t *payload;        /* any JSON value; borrowed */
  json_t *metadata;       /* a JSON object or NULL; borrowed */
  int64_t occurred_at_ms; /* Unix ms; 0: now */
} keel_es_event_in;

typedef struct keel_es_append_result {
  int64_t version;        /* the stream's version after the append (its last event's) */
  int64_t first_position; /* the batch's first and last global positions */
  int64_t last_position;
  bool duplicate;   /* every id had been appended: this is the original result */
  int64_t expected; /* KEEL_ECONFLICT: what the caller expected ... */
  int64_t actual;   /* ... and the stream's version (0: no events) */
} keel_es_append_result;

/* Stream ids: 1-255 bytes of printable ASCII without spaces; the category
 * is the part before the first '-' ("order-17" -> "order"). Errors:
 * KEEL_ECONFLICT (result->expected, ->actual), KEEL_EEXIST (ids, see
 * APPENDS), KEEL_EINVAL (stream id, expected, type, id not a UUID, payload
 * missing or not serialisable, metadata not an object, empty batch),
 * KEEL_ERANGE (an event above max_event_bytes, a batch above max_batch),
 * KEEL_EIO (the database failed; logged with its message: nothing of the
 * batch is stored), KEEL_ETIMEDOUT (PostgreSQL: no pooled connection within
 * acquire_timeout_ms, or the statement timed out; nothing stored),
 * KEEL_ENOTPROC. result may be NULL. */
int keel_es_append(keel_es *es, const char *stream, int64_t expected,
                   const keel_es_event_in *events, size_t n, keel_es_append_result *result);

/* Appends to several streams in one transaction: all or none. On
 * KEEL_ECONFLICT, results[i] of the stream that conflicted holds expected and
 * actual and *failed (may be NULL) its index. */
typedef struct keel_es_append_req {
  const char *stream;
  int64_t expected;
  const keel_es_event_in *events;
  size_t n;
} keel_es_append_req;
int keel_es_append_multi(keel_es *es, const keel_es_append_req *reqs, size_t nreqs,
                         keel_es_append_result *results, size_t *failed);

/* ---- reading ------------------------------------------------------------- */

/* An event as read. Strings and JSON are owned by the keel_es_events that
 * holds it. Upcasters have been applied: type and schema_version are the
 * latest. */
typedef struct keel_es_event {
  char id[37];
  const char *stream;
  const char *type;
  int schema_version;
  json_t *payload;
  json_t *metadata; /* an object, {} when none */
  int64_t occurred_at_ms, stored_at_ms;
  int64_t version;
  int64_t position;
} keel_es_event;

typedef struct keel_es_events {
  size_t n;
  keel_es_event *v;
  void *priv_; /* keel's */
} keel_es_events;

void keel_es_events_free(keel_es_events *evs);

/* Zeroed: the whole stream forwards. */
typedef struct keel_es_read_opts {
  int64_t from; /* first version to read (backwards: the highest); 0: the start
                   (backwards: the end) */
  int64_t to;   /* last version to read, inclusive; 0: no bound */
  bool backwards;
  size_t limit; /* stored events; 0: 1000; above 100000: KEEL_ERANGE */
} keel_es_read_opts;

/* Versions below the stream's truncated_before are skipped. A stored event
 * an upcaster splits counts once against limit, so out->n may exceed it.
 * Errors: KEEL_ENOENT (no such stream, soft-deleted, or only metadata),
 * KEEL_EINVAL (bad stream id, negative bounds, an upcaster failed),
 * KEEL_ERANGE (limit). */
int keel_es_read_stream(keel_es *es, const char *stream, const keel_es_read_opts *o,
                        keel_es_events *out);

/* Zeroed: every event. */
typedef struct keel_es_filter {
  const char *const *types;  /* NULL-terminated; NULL: any type */
  const char *stream_prefix; /* NULL: any stream */
  const char *category;      /* streams "<category>-..."; NULL: any */
  const char *tenant;        /* metadata.tenant equals this; NULL: any */
} keel_es_filter;

/* The events after position `after` (exclusive; 0: from the start) in global
 * order, at most limit (0: 1000; above 100000: KEEL_ERANGE) stored events
 * (an upcaster's split may return more), filtered. Events of soft-deleted
 * streams and below a stream's truncated_before are not returned. The type
 * filter matches the type after upcasting. Page with `after` = the last
 * returned position; an empty answer means nothing more for now. Never
 * skips: an event is returned only once every event before it in the order
 * is visible (on SQLite, one writer assigns positions in commit order; on
 * PostgreSQL, an event is returned once no transaction that could still
 * commit a lower position is open: docs/eventstore.md, "the horizon"). */
int keel_es_read_all(keel_es *es, int64_t after, size_t limit, const keel_es_filter *f,
                     keel_es_events *out);

/* The highest position stored (0: none; it goes down when a hard delete
 * removes the newest events, but positions are never reused). */
int keel_es_head(keel_es *es, int64_t *position);

typedef struct keel_es_stream_info {
  int64_t version;          /* 0: no events */
  int64_t truncated_before; /* versions below this are not read (0: none); a
                               soft delete sets it past the kept version */
  bool deleted;             /* soft-deleted */
  json_t *metadata;         /* the stream's metadata object ({} when none); the caller's */
} keel_es_stream_info;

/* A stream that only has metadata has version 0. Errors: KEEL_ENOENT (no
 * such stream). */
int keel_es_stream_info_get(keel_es *es, const char *stream, keel_es_stream_info *out);
void keel_es_stream_info_free(keel_es_stream_info *info);

/* Replaces a stream's metadata (a JSON object, borrowed); the stream need
 * not have events yet. Errors: KEEL_EINVAL (not an object, bad stream id). */
int keel_es_stream_set_metadata(keel_es *es, const char *stream, json_t *metadata);

/* ---- waiting for appends ------------------------------------------------- */

#define KEEL_ES_WAIT_DEFAULT_MS 30000 /* keel_es_wait's timeout of 0 */

/* Waits until the global feed has an event beyond position `after` that
 * read_all can return, i.e. until the readable head passes `after`; *head
 * (may be NULL) gets that head. Then read_all(after) returns the events up
 * to *head that pass its filters (none, if every one is filtered out,
 * soft-deleted or hard-deleted: continue from *head). Returns at once when
 * the head is already past `after`. Blocks only the calling process.
 *
 * Woken: on SQLite by the writer thread after each commit; on PostgreSQL by
 * this instance's appends at once and by other instances' through
 * LISTEN/NOTIFY. A notified event that read_all cannot return yet (an
 * older transaction still open holds the horizon, see docs/eventstore.md)
 * is re-checked every 10 ms doubling to 200 ms until it can; in any case
 * the head is re-read every opts.notify_poll_ms. Never misses an append:
 * the process is registered before it reads the head.
 *
 * timeout_ms: 0 is KEEL_ES_WAIT_DEFAULT_MS, KEEL_INFINITY waits as long as
 * it takes, KEEL_NOWAIT only checks. Like every keel wait it ends when an
 * exit signal ends the process (nothing is left behind). Errors:
 * KEEL_ETIMEDOUT (nothing readable beyond `after` in time), KEEL_ECANCELED
 * (keel_es_close ran meanwhile: it wakes the waiting processes and returns
 * once they have left this call; do not call it again on that store),
 * KEEL_EINVAL (es NULL, after < 0, a bad timeout), KEEL_ENOTPROC, and the
 * read errors of keel_es_head (KEEL_EIO, KEEL_ETIMEDOUT on PostgreSQL).
 * Any process; es may be shared. */
int keel_es_wait(keel_es *es, int64_t after, int64_t timeout_ms, int64_t *head);

/* ---- deleting ------------------------------------------------------------ */

/* Soft delete: the stream is hidden from reads (its events stay in the
 * global feed's history for positions, but read_stream answers KEEL_ENOENT
 * and read_all skips them); its version is kept, so appending again (expected
 * KEEL_ES_ANY or the kept version) recreates it, continuing the numbering,
 * with the events from before the delete still hidden. Deleting a deleted
 * stream is 0. Errors: KEEL_ENOENT (no events), KEEL_ECONFLICT (expected). */
int keel_es_delete_stream(keel_es *es, const char *stream, int64_t expected);

/* Versions below `before` are no longer read (read_stream and read_all);
 * it never goes down. Errors: KEEL_ENOENT, KEEL_EINVAL (before < 0). */
int keel_es_truncate_before(keel_es *es, const char *stream, int64_t before);

/* Removes the stream's events and its row for good: an operator's action
 * (logged). Appending again starts at version 1; positions are not reused.
 * The events table refuses UPDATE and DELETE otherwise (triggers, for any
 * connection to the file). Errors: KEEL_ENOENT. */
int keel_es_hard_delete(keel_es *es, const char *stream);

/* ---- schema evolution ---------------------------------------------------- */

/* An upcaster turns an event of `type` at schema version v into the events
 * of version v + 1 (usually one; it may rename the type or split the event
 * into several). It fills out[0..*n) (*n starts at the capacity, 8) with
 * new payloads (new references, the caller's), types (static strings or
 * NULL for the same type) and returns 0, or a negative code (the read
 * fails with KEEL_EINVAL, logged). *n = 0 drops the event. Upcasters run on
 * the thread that reads (SQLite: the blocking pool's; PostgreSQL: the
 * reading process): they must be pure functions of their input and must not
 * wait. */
typedef struct keel_es_upcast_out {
  const char *type;
  json_t *payload;
  json_t *metadata; /* NULL: the input's */
} keel_es_upcast_out;
typedef int (*keel_es_upcast_fn)(const keel_es_event *in, keel_es_upcast_out *out, size_t *n,
                                 void *ud);

/* Registers the upcaster from `from_version` to from_version + 1 of type.
 * Register before reading; applied on every read path. Errors: KEEL_EEXIST
 * (one is registered for that type and version). */
int keel_es_upcaster(keel_es *es, const char *type, int from_version, keel_es_upcast_fn fn,
                     void *ud);

#ifdef __cplusplus
}
#endif
#endif
