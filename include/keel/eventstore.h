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
 * transaction per call; concurrent single-stream appends without given ids
 * are folded into shared transactions, group commit, each with its own
 * result). Call from a keel process; a handle
 * may be shared by every process of the node.
 *
 * OWNERSHIP. Inputs are borrowed for the call. Results (keel_es_events,
 * keel_es_stream_info, keel_es_snapshot) are the caller's: free them with
 * their _free call.
 */
#ifndef KEEL_EVENTSTORE_H
#define KEEL_EVENTSTORE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "keel/health.h"
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
  size_t group_max_events; /* (on PostgreSQL too: simple appends, docs/eventstore.md) */
  keel_metrics *metrics;   /* register es_* metrics here; NULL: none */
  /* PostgreSQL only (SQLite ignores them): the connection pool. */
  size_t pool_min; /* connections opened at open and kept; 0: 1 */
  size_t pool_max; /* at most this many; 0: 10 */
  int64_t
      acquire_timeout_ms; /* a call waiting for a connection gives up (KEEL_ETIMEDOUT); 0: 5000 */
  int64_t statement_timeout_ms; /* the server's statement_timeout on every connection; 0: 30000 */
  /* Pool maintenance (PostgreSQL only; docs/eventstore.md, "the pool"). Each is
   * ms; KEEL_INFINITY turns it off. */
  int64_t pool_idle_timeout_ms; /* idle connections above pool_min are closed after
                                   this long; 0: 300000 (5 min) */
  int64_t pool_max_lifetime_ms; /* a connection this old is closed when released, or
                                   when idle, and replaced as needed; 0: 1800000 (30 min) */
  int64_t pool_ping_idle_ms;    /* a connection idle this long is pinged (an empty
                                   query) before it is handed out, and idle ones are
                                   pinged this often; 0: 5000 */
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
  /* PostgreSQL: where what needs a session of its own connects (the LISTEN
   * connection; a subscription group's partition locks, which are session
   * advisory locks), when url goes through a pooler in transaction mode
   * (PgBouncer, RDS Proxy): a direct connection string to the same database.
   * NULL: $DATABASE_SESSION_URL when url is NULL too (taken from
   * $DATABASE_URL), else url. Borrowed during keel_es_open only. SQLite
   * ignores it. */
  const char *session_url;
  /* PostgreSQL: send keel's own statements unnamed, parsed and planned at
   * each call. By default each text of keel's (appends, reads, the jobs'
   * claims and completions) is prepared once per connection under a name,
   * the second time that connection sees it, and from then on only bound
   * and run (at most 128 texts per connection, the least recently used
   * deallocated to make room). The service's statements
   * (keel_es_tx_exec, keel_es_query) always run unnamed. A pooler in
   * transaction mode (PgBouncer before 1.21) does not carry names from one
   * server connection to the next: names are off on its connections when a
   * session_url other than url is in effect. Behind such a pooler without
   * one, set this: names are off already where the backend's pid differs
   * from the one the connection's start reported (PgBouncer makes it up),
   * and names that still do not match the server's turn names off for the
   * store (logged once), that call running again unnamed, or failing when
   * it ran inside a transaction. SQLite ignores it. */
  bool no_prepare;
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

/* An event as read. Strings are owned by the keel_es_events that holds it.
 * Upcasters have been applied: type and schema_version are the latest.
 *
 * PAYLOADS ARE PARSED LAZILY. A read hands out the JSON texts as stored
 * (payload_json, metadata_json: always there, NUL-terminated, valid until
 * keel_es_events_free) and parses nothing: a reader that routes by type,
 * copies the text elsewhere or skips most events pays no JSON parse.
 * keel_es_event_payload() and keel_es_event_metadata() parse on first call
 * and cache the value in the event (docs/decisions/0011). For an event an
 * upcaster produced, the texts are the upcaster's output serialised, and
 * the values come already parsed. */
typedef struct keel_es_event {
  char id[37];
  const char *stream;
  const char *type;
  int schema_version;
  const char *payload_json;  /* the payload's JSON text (any JSON value) */
  size_t payload_len;        /* its length in bytes, without the NUL */
  const char *metadata_json; /* the metadata's JSON text: an object, "{}" when none */
  size_t metadata_len;
  int64_t occurred_at_ms, stored_at_ms;
  int64_t version;
  int64_t position;
  struct {
    json_t *payload, *metadata;
  } parsed_; /* keel's: the accessors' cache (NULL: not parsed yet) */
} keel_es_event;

typedef struct keel_es_events {
  size_t n;
  keel_es_event *v;
  /* read_all: how far the read covered the feed. Every event after `after`
   * and at or below `scanned` that passes the filter is in v; the next page
   * starts after it. At least the last returned event's position; beyond it
   * when the events after it up to the readable head were filtered out (or
   * hidden), so that a reader whose filter matches nothing for a long run
   * still moves on instead of reading that run again (`after` when nothing
   * is readable past it). 0 for read_stream. */
  int64_t scanned;
  void *priv_; /* keel's */
} keel_es_events;

/* The event's payload as a jansson value, parsed from payload_json on the
 * first call and cached: later calls return the same value. The value is
 * borrowed: the keel_es_events owns it and frees it in keel_es_events_free
 * (json_incref it to keep it longer; do not modify it, the next caller
 * would see the change). NULL when the stored text does not decode (a
 * corrupt row: logged at error with its position, on every such call) or
 * memory ran out.
 *
 * Call it on an event inside evs->v (or an upcaster's `in`), never on a
 * copy of the struct: the cache lives in the event, and a copy's cache would
 * not be freed. Not for concurrent use on the same events: a keel_es_events
 * belongs to one process at a time (two processes may read different
 * keel_es_events at once). Any thread; does not block. */
json_t *keel_es_event_payload(const keel_es_event *ev);

/* The event's metadata as a jansson object ({} when none), parsed and
 * cached as keel_es_event_payload's, with the same ownership and rules.
 * NULL when the stored text does not decode to an object (logged) or memory
 * ran out. */
json_t *keel_es_event_metadata(const keel_es_event *ev);

/* Frees the events, their texts and every value the accessors parsed.
 * NULL and a zeroed keel_es_events are fine. */
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
  /* partitions > 0: only the streams of partition `partition` (0 ..
   * partitions-1): FNV-1a (32-bit) of the stream id's bytes, modulo
   * partitions; a stream's events all land in one partition. Matched in
   * the database (the hash is stored with each event). 0: any stream. */
  uint32_t partitions, partition;
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
 * commit a lower position is open: docs/eventstore.md, "the horizon").
 * out->scanned says where the next page starts (above). Errors:
 * KEEL_EINVAL (also partition >= partitions), KEEL_ERANGE (limit). */
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

/* ---- transactions and SQL ------------------------------------------------ */

/* The store's database is also the service's: a read model, a checkpoint,
 * an outbox row can be written in the same transaction as events, so that
 * they exist if and only if the events do (transactional projections and
 * outboxes). SQL is written once for both backends: parameters are $1, $2,
 * ... (sent as text; cast on PostgreSQL where a type is needed, e.g.
 * $1::bigint), and ON CONFLICT, RETURNING, CREATE TABLE IF NOT EXISTS work
 * on both. keel_es_backend tells a statement that must differ which to use. */

typedef enum keel_es_backend_kind {
  KEEL_ES_SQLITE = 1,
  KEEL_ES_POSTGRESQL,
} keel_es_backend_kind;
keel_es_backend_kind keel_es_backend(const keel_es *es);

/* A statement's result: every value as text (NULL for SQL NULL), row-major. */
typedef struct keel_es_rows {
  size_t nrows, ncols;
  const char *const *cells; /* cells[row * ncols + col] */
  const char *const *names; /* the columns' names, ncols of them */
  int64_t changed;          /* rows inserted, updated or deleted by the statement */
  void *priv_;              /* keel's */
} keel_es_rows;

/* The value at (row, col), or NULL (SQL NULL, or out of range). */
const char *keel_es_rows_get(const keel_es_rows *rows, size_t row, size_t col);
void keel_es_rows_free(keel_es_rows *rows); /* NULL and zeroed are fine */

/* A transaction in progress: valid only inside the keel_es_tx_fn it is given. */
typedef struct keel_es_tx keel_es_tx;

/* Runs one statement (no trailing second statement) in the transaction.
 * params[0..nparams) are $1..$n (a NULL entry is SQL NULL). rows may be
 * NULL; otherwise it receives the result (free it with keel_es_rows_free,
 * inside or after fn). Errors: KEEL_EEXIST (a unique or primary key
 * violation), KEEL_EINVAL (the statement does not compile, or nparams does
 * not match), KEEL_ETIMEDOUT (PostgreSQL's statement_timeout), KEEL_EIO
 * (anything else). Every error is logged with the database's message
 * (keel_es_tx_error gives it too) and DOOMS the transaction on both backends
 * (as PostgreSQL does): later statements answer KEEL_ESTATE, and the whole
 * transaction is rolled back whatever fn returns. Write ON CONFLICT DO
 * NOTHING rather than catching KEEL_EEXIST. */
int keel_es_tx_exec(keel_es_tx *tx, const char *sql, const char *const *params, size_t nparams,
                    keel_es_rows *rows);
/* Takes a lock named `key` until the transaction ends (commit or rollback):
 * every other transaction that takes the same key, from any instance sharing
 * the database, waits for it. For read-then-write work that must not
 * interleave, and for a service's CREATE TABLE IF NOT EXISTS at start, which
 * races another instance's on PostgreSQL (two creators can both fail with
 * "type already exists"). PostgreSQL: pg_advisory_xact_lock on a hash of the
 * schema and key (distinct keys may rarely share a lock); SQLite: 0 at once
 * (the store's one writer already serialises every transaction). Take one
 * key per transaction, or always in the same order: two transactions taking
 * two keys in opposite orders (or two keys whose hashes collide) deadlock,
 * and PostgreSQL ends one with an error (KEEL_EIO, SQLSTATE 40P01). Errors:
 * KEEL_EINVAL (key NULL or ""), those of keel_es_tx_exec. */
int keel_es_tx_lock(keel_es_tx *tx, const char *key);
/* The database's message for the transaction's failed statement ("" when none). */
const char *keel_es_tx_error(const keel_es_tx *tx);

/* fn's answer: 0 commits; anything else rolls back and is returned by
 * keel_es_transact. */
typedef int (*keel_es_tx_fn)(keel_es_tx *tx, void *arg);

/* One transaction: the appends reqs[0..nreqs) first (exactly as
 * keel_es_append_multi, whose arguments these are; nreqs may be 0), then
 * fn(tx, arg) (may be NULL), then COMMIT; any failure rolls everything back.
 * Appends come first because on PostgreSQL an appending transaction must take
 * its id and its positions together (the horizon, docs/eventstore.md).
 * When every append is a duplicate (a retry of a transaction that committed),
 * fn is NOT run again and 0 is returned with the original results: an outbox
 * row written by fn exists once.
 *
 * WHERE fn RUNS. SQLite: on the store's writer thread, inside the group
 * commit (fn shares the group's fsync; its effects are isolated by a
 * savepoint); so fn must be quick, must not wait, and must not call keel
 * process functions (send, call, log is fine). PostgreSQL: in the calling
 * process, on a pooled connection. On both, fn may run more than once for
 * one call (PostgreSQL retries a transaction that raced on an event id), so
 * it must only do database work through tx; only one of its runs commits.
 * Errors: those of keel_es_append_multi, those of keel_es_tx_exec, or fn's. */
int keel_es_transact(keel_es *es, const keel_es_append_req *reqs, size_t nreqs,
                     keel_es_append_result *results, size_t *failed, keel_es_tx_fn fn, void *arg);

/* One read-only statement outside any transaction (SQLite: a read
 * connection on the blocking pool; PostgreSQL: a pooled connection), e.g. a
 * read model's query. Same parameters, results and errors as
 * keel_es_tx_exec; a write is refused on SQLite (KEEL_EINVAL) and must not
 * be attempted on PostgreSQL (use keel_es_transact). Call from a process. */
int keel_es_query(keel_es *es, const char *sql, const char *const *params, size_t nparams,
                  keel_es_rows *rows);

/* ---- snapshots ------------------------------------------------------------ */

/* A snapshot is a stream's state folded up to a version, saved so that a
 * reader can start there and read only the events after it (the aggregate
 * layer, keel/aggregate.h, does both; these are its storage). One per
 * stream: the newest. The state is any JSON value in the caller's format,
 * numbered by schema_version (the caller's numbering: a reader that expects
 * another version ignores it and rebuilds from events). */
typedef struct keel_es_snapshot {
  int64_t version;     /* the stream version the state includes (its last event) */
  int schema_version;  /* the state's format, as saved */
  json_t *state;       /* owned by the snapshot: keel_es_snapshot_free */
  int64_t taken_at_ms; /* when it was saved (Unix ms) */
} keel_es_snapshot;

/* Saves state (borrowed; serialised at once) as the stream's snapshot at
 * `version`, unless the stream already has one at this version or a newer
 * one: a save never replaces a newer snapshot; it is 0 and does nothing
 * (*stored, which may be NULL, says whether it wrote). Nor is a snapshot
 * stored below the stream's truncated_before (0, *stored false): its history
 * is no longer readable. A soft delete and a hard delete remove the stream's
 * snapshot with it. schema_version 0 is 1. Errors: KEEL_EINVAL (stream id,
 * version < 1, schema_version < 0, state NULL or not serialisable), KEEL_ENOENT (the
 * stream has no events or is soft-deleted), KEEL_ERANGE (version above the
 * stream's), KEEL_EIO, KEEL_ETIMEDOUT (as for appends), KEEL_ENOTPROC. On
 * SQLite the write goes through the writer thread (and its group commit). */
int keel_es_snapshot_save(keel_es *es, const char *stream, int64_t version, int schema_version,
                          json_t *state, bool *stored);

/* The stream's snapshot into *out (the caller frees it with
 * keel_es_snapshot_free). A snapshot is returned only when it can be
 * combined with the stream's readable events: the stream is not
 * soft-deleted, and no event between the snapshot and the first readable
 * version was truncated away (version >= truncated_before - 1; so
 * keel_es_truncate_before(stream, snapshot.version + 1) keeps it usable).
 * Errors: KEEL_ENOENT (none usable), KEEL_EINVAL, KEEL_EIO (the stored state
 * does not parse; logged), KEEL_ETIMEDOUT, KEEL_ENOTPROC. */
int keel_es_snapshot_load(keel_es *es, const char *stream, keel_es_snapshot *out);

/* Frees what a loaded snapshot holds and zeroes it. NULL is ignored. */
void keel_es_snapshot_free(keel_es_snapshot *s);

/* ---- schema evolution ---------------------------------------------------- */

/* An upcaster turns an event of `type` at schema version v into the events
 * of version v + 1 (usually one; it may rename the type or split the event
 * into several). It reads the input's values with keel_es_event_payload(in)
 * and keel_es_event_metadata(in) (parsed before the upcaster is called: a
 * stored payload that does not decode fails the read with KEEL_EIO, logged,
 * and the upcaster is not called). It fills out[0..*n) (*n starts at the
 * capacity, 8) with
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

/* ---- pool sizing --------------------------------------------------------- */

/* Pool sizes for one of `instances` keel instances that share a PostgreSQL
 * server whose max_connections is max_connections, leaving `reserved`
 * connections to everything else (superuser_reserved_connections, psql,
 * monitoring, migrations; < 0: 10% of max_connections). The rule of
 * eventsource-py's production guide: each instance gets
 * per = (max_connections - reserved) / instances connections, so that every
 * instance at its maximum still fits; *pool_max = per and *pool_min =
 * max(2, per / 3), never above per (its pool_size : max_overflow of 1 : 2).
 * E.g. 4 instances, max_connections 100: 22 and 7. Set keel_es_opts's
 * pool_max and pool_min from it (and count any other pools the instances
 * open, such as a listener's connection, in reserved). Errors: KEEL_EINVAL
 * (instances < 1, max_connections < 1, a NULL out), KEEL_ERANGE (fewer than
 * one connection per instance: add connections or a pooler such as
 * PgBouncer). Any thread. */
int keel_es_pool_size(int instances, int max_connections, int reserved, size_t *pool_min,
                      size_t *pool_max);

/* ---- health -------------------------------------------------------------- */

/* Zeroed: the defaults. */
typedef struct keel_es_health_opts {
  const char *name;        /* the check's name (copied); NULL: "eventstore" */
  bool optional;           /* zeroed: required (critical makes the node not ready) */
  int64_t timeout_ms;      /* the health module's deadline for the check; 0: 2000 */
  int64_t horizon_warn_ms; /* PostgreSQL: warning once one transaction has held read_all's
                              horizon this long; 0: 30000; KEEL_INFINITY: never */
  int64_t waiting_warn_ms; /* PostgreSQL: warning once processes have waited this long for a
                              pooled connection; 0: 1000; KEEL_INFINITY: never */
} keel_es_health_opts;

/* Checks the store (o NULL: defaults). SQLite: the writer thread takes and
 * drops the write lock (nothing written) and the file is writable; else
 * KEEL_HEALTH_CRITICAL. PostgreSQL: a pooled connection answers (else
 * critical); the oldest open transaction that holds an id (what holds
 * read_all back) is reported, and the check warns when it has been open
 * horizon_warn_ms, its message naming the backend's pid, application_name,
 * state and how long; the pool warns when processes have waited
 * waiting_warn_ms for a connection (and then runs no query of its own).
 * res->message says why on a warning or a failure; res->details gets a JSON
 * object: {"backend", "pool": {in_use, idle, waiting, max, waiting_s},
 * "horizon": {backend, application_name, state, held_ms} or null} on
 * PostgreSQL, {"backend", "writer_ms"} on SQLite. Seeing other roles'
 * sessions in pg_stat_activity takes the pg_read_all_stats role. Call from a
 * keel process; it waits (the writer, the pool, the server). */
keel_health_status keel_es_health(keel_es *es, const keel_es_health_opts *o,
                                  keel_health_result *res);

/* Registers keel_es_health as a health check (keel_health_register_check)
 * with o's name, required flag and timeout (o is copied; NULL: defaults).
 * Unregister it (keel_health_unregister(name)) before keel_es_close. Errors
 * as keel_health_register_check: KEEL_EEXIST (the name is taken),
 * KEEL_EINVAL, KEEL_ENOMEM. Any thread. */
int keel_es_health_register(keel_es *es, const keel_es_health_opts *o);

#ifdef __cplusplus
}
#endif
#endif
