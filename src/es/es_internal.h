/* es_internal.h - what the event store's files share (not installed).
 *
 * src/es/ sits above ops (DESIGN.md): it uses the runtime (processes,
 * replies, the blocking pool), the logger and the metrics. The files:
 *   store.c   opening (URL, pragmas), the read-connection pool, closing
 *   schema.c  the versioned migrations
 *   writer.c  the writer thread: its queue, group commit, every write
 *   append.c  the public write calls: validation, encoding, submission
 *   read.c    the public read calls and the events they return
 *   upcast.c  the upcaster registry and its application on every read path
 *   snapshot.c   the snapshot calls (save through the writer, load on a reader)
 *   aggregate.c  aggregates: load (snapshot + tail), decide, append, retry
 * and the PostgreSQL backend, to which the public calls dispatch on es->kind:
 *   pg_conn.c    one libpq connection: connect, the asynchronous query loop
 *   pg_pool.c    the connection pool (min/max, acquire timeout, waiters,
 *                the maintainer: idle recycling, lifetime, pings; the size helper)
 *   store_health.c  the health check of both backends
 *   pg_schema.c  the versioned migrations on PostgreSQL
 *   pg_write.c   appends and stream management in one transaction per call
 *   pg_read.c    the reads, with the xid8 horizon of read_all
 *   pg_snapshot.c  snapshot save and load on PostgreSQL
 *   es_trace.c   the spans of appends, reads and transactions (both backends)
 * and, for both, the notifications (appends waking waiting readers):
 *   notify.c     keel_es_wait, the list of waiting processes, their wake-up
 *   pg_listen.c  PostgreSQL: the LISTEN connection's thread, NOTIFY to other instances
 */
#ifndef KEEL_ES_INTERNAL_H
#define KEEL_ES_INTERNAL_H

#include <libpq-fe.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>

#include "keel/eventstore.h"
#include "keel/message.h"
#include "keel/trace.h"

/* ---- the writer's requests ------------------------------------------------ */

/* One event, encoded by the caller's process before submission: the writer
 * touches no caller memory. */
typedef struct es_row {
  char id[37];
  bool given_id; /* the caller named it: look it up for idempotency */
  int schema_version;
  int64_t occurred_at;
  char *type;     /* malloc'd */
  char *payload;  /* malloc'd JSON text */
  char *metadata; /* malloc'd JSON object text, or NULL */
} es_row;

typedef struct es_stream_req {
  char *stream; /* malloc'd */
  int64_t expected;
  size_t n;
  es_row *rows; /* malloc'd, n of them */
} es_stream_req;

typedef enum es_req_kind {
  ES_REQ_APPEND,      /* streams[0..nstreams) in one savepoint */
  ES_REQ_DELETE,      /* streams[0].stream, .expected */
  ES_REQ_TRUNCATE,    /* streams[0].stream, arg */
  ES_REQ_HARD_DELETE, /* streams[0].stream */
  ES_REQ_SET_META,    /* streams[0].stream, text */
  ES_REQ_FN,          /* fn(db, fn_arg) on the writer's connection, outside any transaction */
  ES_REQ_SNAPSHOT,    /* streams[0].stream, arg the version, arg2 the schema version, text */
} es_req_kind;

/* A request: heap, owned by the writer once submitted (it frees it after
 * replying). The reply is a message whose payload is an es_reply. */
typedef struct es_req {
  struct es_req *next;
  es_req_kind kind;
  keel_pid_t pid;
  keel_ref_t ref;
  size_t nstreams;
  es_stream_req *streams;
  size_t nevents; /* total, for the group limit */
  int64_t arg;
  char *text;
  void (*fn)(sqlite3 *db, void *arg);
  void *fn_arg;
  keel_es_tx_fn tx_fn; /* ES_REQ_APPEND of keel_es_transact: run after the appends */
  void *tx_arg;
  bool tx_internal; /* keel's own transaction: its tables may be written */
  bool lazy;        /* keel__es_transact_lazy: the commit need not reach the disk before the
                       answer (SQLite: synchronous=NORMAL; PostgreSQL: synchronous_commit off) */
  double t0;        /* submission time (monotonic s), for the duration histogram */
  int64_t arg2;
  keel_span_ctx trace; /* ES_REQ_APPEND: the caller's span (valid false: none), which
                          keel_es_tx carries to fn (keel_jobs_enqueue_tx's parent) */
} es_req;

typedef struct es_reply {
  int rc;
  size_t failed;
  int64_t stored_at; /* an append: the stored_at its events were given (the live tail) */
  size_t nresults;
  bool stored;                     /* ES_REQ_SNAPSHOT: the snapshot was written */
  keel_es_append_result results[]; /* one per stream of an append */
} es_reply;

/* ---- upcasters -------------------------------------------------------------- */

typedef struct es_upcaster {
  char *type;
  int from_version;
  keel_es_upcast_fn fn;
  void *ud;
} es_upcaster;

/* ---- the store ---------------------------------------------------------------- */

typedef enum es_kind { ES_SQLITE = 0, ES_PG } es_kind;
typedef struct es_pg es_pg;         /* pg_pool.c */
typedef struct es_notify es_notify; /* notify.c */

struct keel_es {
  es_kind kind;
  es_pg *pg;   /* ES_PG: the pool and its settings */
  char *path;  /* the file, or a shared-cache URI for ":memory:" */
  bool memory; /* ":memory:": reads go through the writer's connection */
  keel_es_sync sync;
  size_t max_event_bytes, max_batch, group_max_events;

  /* the writer: the queue is guarded by mu; stopping tells it to drain and exit */
  pthread_t writer;
  bool writer_started;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  es_req *head, *tail;
  bool stopping;
  sqlite3 *wdb; /* the writer thread's only, after open */
  sqlite3_stmt *st_find_id, *st_stream, *st_insert, *st_upsert;
  /* the group commit's transaction control, prepared once (writer.c) */
  sqlite3_stmt *st_begin, *st_commit, *st_savepoint, *st_release, *st_rollback_to;
  bool wlazy; /* the writer's connection is at synchronous=NORMAL for a lazy group (writer only) */
  /* keel_es_tx_exec's statements, kept prepared (tx.c; writer thread only) */
  struct es_stmt_cache *stc;
  /* the transaction whose statement the writer prepares now, NULL for the
   * writer's own: the authorizer installed on wdb for good reads it
   * (writer thread only, like wdb) */
  keel_es_tx *wtx;

  /* read connections, checked out per call (file stores only) */
  pthread_mutex_t rmu;
  sqlite3 **rpool;
  size_t nr, capr;

  /* upcasters: registered before reading (guarded by umu all the same) */
  pthread_mutex_t umu;
  es_upcaster *ups;
  size_t nups;
  atomic_size_t nups_hint; /* relaxed: a hint that avoids the lock when none exist */

  /* metrics (NULL when opts.metrics was NULL) */
  keel_counter *m_ok, *m_conflict, *m_duplicate, *m_error, *m_events, *m_reads;
  keel_histogram *m_duration, *m_group;

  es_notify *notify; /* notify.c: the processes in keel_es_wait (and PostgreSQL's listener) */
  struct es_tail *live_tail; /* tail.c: the events this instance just committed */
};

/* store.c: a SQLite code and message as a log line; returns KEEL_EIO. */
int keel__es_sqlite_error(sqlite3 *db, int src, const char *what);
/* store.c: opens one connection to es->path with the store's pragmas. */
int keel__es_connect(keel_es *es, bool reader, sqlite3 **out);
/* store.c: runs fn(db, arg) with a read connection: a pooled one on the
 * blocking pool (file stores), or the writer's (":memory:"). Call from a
 * process. 0, or KEEL_ENOTPROC, KEEL_ENOMEM, KEEL_EIO (no connection). */
int keel__es_with_reader(keel_es *es, void (*fn)(sqlite3 *db, void *arg), void *arg);
/* store.c: monotonic seconds, and Unix milliseconds. */
double keel__es_now_s(void);
int64_t keel__es_unix_ms(void);

/* schema.c: creates or migrates the schema (idempotent); *version gets the
 * schema version now in the file. */
int keel__es_migrate(sqlite3 *db, int *version);
extern const int keel__es_schema_version;

/* writer.c: prepares the writer's statements on es->wdb (blocking pool). */
int keel__es_writer_prepare(keel_es *es);
/* writer.c: starts and stops the writer thread (stop drains the queue,
 * closes the write connection). */
int keel__es_writer_start(keel_es *es);
void keel__es_writer_stop(keel_es *es);
/* writer.c: submits req (ownership passes to the writer, always) and waits
 * for its reply, which *out receives (the caller frees it). Call from a
 * process. Errors: KEEL_ENOTPROC, KEEL_ENOMEM. */
int keel__es_submit(keel_es *es, es_req *req, keel_msg_t **out);
/* writer.c: frees a request and everything it holds. */
void keel__es_req_free(es_req *req);
/* writer.c: a request of one kind on one stream (stream copied). NULL: ENOMEM. */
es_req *keel__es_req_new(es_req_kind kind, const char *stream);

/* append.c: whether a stream at version actual (deleted or not) meets an
 * append's expected version (KEEL_ES_ANY, KEEL_ES_STREAM_EXISTS, exact). */
bool keel__es_expected_ok(int64_t expected, int64_t actual, bool deleted);

/* append.c: the idempotency verdict of a batch of n events, given ids of
 * which `found` are stored, all in that stream in that order (`same`): 0 new
 * (none found), 1 the original result (all given, all found, same; sets
 * res->duplicate), KEEL_EEXIST a mix. Both backends' lookups end here. */
int keel__es_dup_verdict(size_t found, size_t given, size_t n, bool same,
                         keel_es_append_result *res);

/* append.c: a new random (v4) UUID, lower-case. 0 or KEEL_EIO. */
int keel__es_uuid_v4(char out[37]);

/* snapshot.c: runs an ES_REQ_SNAPSHOT on the writer's connection, inside the
 * writer's transaction (rep->stored says whether it wrote). */
int keel__es_snapshot_write(keel_es *es, const es_req *r, es_reply *rep);
/* snapshot.c: parses a stored state (text) into out->state. 0, or KEEL_EIO
 * (it does not parse; logged with the stream and out->version). */
int keel__es_snapshot_parse(const char *stream, const char *text, keel_es_snapshot *out);

/* append.c: whether a stream id is valid (1-255 printable ASCII, no space). */
bool keel__es_stream_ok(const char *stream);
/* append.c: FNV-1a (32-bit) of the stream id's bytes: stored with each
 * event (events.stream_hash) at append, so that read_all's partition filter
 * (keel_es_filter.partitions) runs in SQL. A documented function of the id
 * alone: it must never change (stored rows and running groups depend on it). */
uint32_t keel__es_stream_hash(const char *stream);

/* upcast.c: applies the upcasters to events[from..*n) (the array may be
 * reallocated and grow: splits). Runs on whatever thread reads. 0 or
 * KEEL_EINVAL (an upcaster failed; logged), KEEL_ENOMEM; on error the array
 * still holds only owned events, for the caller to free. */
typedef struct es_arena es_arena;
int keel__es_upcast(keel_es *es, es_arena *arena, keel_es_event **events, size_t *n, size_t *cap,
                    size_t from);
/* upcast.c: the types upcasters start from (malloc'd array of borrowed
 * strings, *n of them; NULL when none). Valid while no upcaster is added. */
const char **keel__es_upcaster_types(keel_es *es, size_t *n);
void keel__es_upcasters_free(keel_es *es);

/* read.c: a new empty arena (NULL: ENOMEM); keel_es_events_free frees it
 * as the events' priv_. */
es_arena *keel__es_arena_new(void);
/* read.c: copies s into the arena (NULL: ENOMEM). */
char *keel__es_arena_strdup(es_arena *a, const char *s);
/* read.c: copies len bytes of s into the arena and ends them with a NUL
 * (NULL: ENOMEM). */
char *keel__es_arena_copy(es_arena *a, const char *s, size_t len);
/* read.c: closes a read connection, finalizing the statements read.c keeps
 * on it (NULL is ignored). */
void keel__es_close_reader(sqlite3 *db);
/* read.c: drops the values an event's accessors parsed (its texts live in
 * the arena and stay). */
void keel__es_event_release(keel_es_event *e);

/* ---- transactions (tx.c) -------------------------------------------------------------- */

typedef struct es_pgconn es_pgconn;

/* A keel_es_transact in progress, on one backend's connection. */
struct keel_es_tx {
  keel_es *es;
  sqlite3 *db;   /* SQLite: the writer's connection (or a reader's for keel_es_query) */
  es_pgconn *pc; /* PostgreSQL: the call's pooled connection */
  bool internal; /* keel's own (keel__es_transact_internal): keel's tables allowed */
  int failed;    /* the first failed statement's error: the transaction is doomed */
  char err[256];
  const keel_span_ctx *trace; /* the transaction's span, or NULL: fn may run on the SQLite
                                 writer's thread, where no span is current */
};

/* es_trace.c: a span of kind client for operation op (on stream, may be
 * NULL) when the calling process is inside a trace; false (sp untouched)
 * otherwise. end ends it with rc and the number of events (-1: none said);
 * on is what begin returned. */
bool keel__es_span_begin(keel_es *es, keel_span *sp, const char *op, const char *stream);
void keel__es_span_end(keel_span *sp, bool on, int rc, int64_t events);

/* tx.c: whether r's fn runs after its appends (not when every append was a
 * duplicate: the transaction committed before), and running it. Both
 * backends' writers call these inside the transaction, after the appends.
 * Returns fn's answer, or the error that doomed the transaction. */
bool keel__es_tx_wanted(const es_req *r, const keel_es_append_result *results);
int keel__es_tx_run(keel_es *es, const es_req *r, sqlite3 *db, es_pgconn *pc);
/* tx.c: installs the authorizer on the writer's connection, once, for its
 * life: changing an authorizer expires every prepared statement of the
 * connection, which would defeat the statement cache (0 or KEEL_EIO). */
int keel__es_tx_authorizer(keel_es *es);
/* tx.c: finalizes the cached statements (before wdb closes). */
void keel__es_tx_cache_free(keel_es *es);
/* tx.c: FNV-1a of a NUL-terminated text (the statement caches' keys, the
 * LISTEN channel of a schema whose name is not plain). */
uint64_t keel__es_text_hash(const char *s);
/* append.c: keel_es_transact without appends, for keel's own tables (the
 * subscriptions' checkpoints and dead letters), which the service's
 * transactions may not write on SQLite. */
int keel__es_transact_internal(keel_es *es, keel_es_tx_fn fn, void *arg);
/* append.c: keel__es_transact_internal whose commit is answered before it
 * is on disk: SQLite runs it in a group of its own with synchronous=NORMAL
 * (WAL: written to the OS, not fsync'd), PostgreSQL with synchronous_commit
 * off. It survives a crash of the process (and, on SQLite, the OS keeps it);
 * a crash of the machine (or of PostgreSQL's server) may lose it, and only
 * it: the log is written in commit order and every durable commit makes
 * every commit before it durable, so what a crash loses is a suffix of lazy
 * commits. For writes whose loss only redoes work (the jobs' claims and
 * completions, docs/decisions/0036); never for what a caller was told is
 * stored. On a store opened with KEEL_ES_SYNC_NORMAL every commit is lazy. */
int keel__es_transact_lazy(keel_es *es, keel_es_tx_fn fn, void *arg);
/* tx.c: one statement (keel's own, as keel_es_tx_exec takes it) in a lazy
 * transaction of its own: on SQLite keel__es_transact_lazy's, on
 * PostgreSQL one round trip (BEGIN, SET LOCAL synchronous_commit = off,
 * the statement and COMMIT pipelined). rows (may be NULL) as
 * keel_es_tx_exec's; errors as keel_es_transact's. */
int keel__es_exec_lazy(keel_es *es, const char *sql, const char *const *params, size_t n,
                       keel_es_rows *rows);
/* tx.c: the same, durable (keel__es_transact_internal's commit); on
 * PostgreSQL the statement alone in its implicit transaction, one round
 * trip. */
int keel__es_exec(keel_es *es, const char *sql, const char *const *params, size_t n,
                  keel_es_rows *rows);

/* ---- subscriptions (sub.c, subgroup.c) ------------------------------------------------- */

struct keel_gen_server;
struct keel_sub_opts;
struct keel_sub_status;
/* subgroup.c: a group's coordinator (opts.partitions > 0). */
extern const struct keel_gen_server keel__subgroup_behaviour;
/* sub.c: starts partition `index` of `count` (named name, owned under the
 * fencing token owner), linked to the caller. */
int keel__sub_start_partition(const struct keel_sub_opts *o, const char *name, int index, int count,
                              const char *owner, keel_pid_t *out);
int keel__sub_opts_ok(const struct keel_sub_opts *o);
/* sub.c: creates the subscriptions' tables (idempotent). */
int keel__sub_tables(keel_es *es);
uint32_t keel__sub_partition_of(const char *stream, int count);
/* sub.c: a group retired by a blue/green switch (sub_switch.c) has a marker
 * row in keel_sub_checkpoints named "<group>#switch" (no subscription name
 * has a '#') whose owner is KEEL__SUB_RETIRED until the cutover commits,
 * then KEEL__SUB_CUTOVER for good; its partitions' rows get the owner
 * KEEL__SUB_RETIRED (their owners' next checkpoint is refused: members may
 * not start with '#'), and while the marker exists they cannot be claimed.
 * A claim and a switch take turns on keel__sub_group_lock. */
#define KEEL__SUB_RETIRED "#retired"
#define KEEL__SUB_CUTOVER "#cutover"
int keel__sub_group_lock(keel_es_tx *tx, const char *group);
/* The marker's name into out (at least 72 bytes). */
void keel__sub_marker_name(const char *group, char *out, size_t cap);
/* sub.c: a subscription's name: 1-59 bytes of [A-Za-z0-9_.-]. */
bool keel__sub_name_ok(const char *n);
/* sub_board.c: the status board (keel_sub_status_get reads it). */
void keel__sub_publish(const char *name, const struct keel_sub_status *st);
void keel__sub_unpublish(const char *name);
/* sub.c: the database breaker's wait before the next read after `errors`
 * failures in a row (>= 1): poll_ms doubled per further failure, at most
 * max_ms. */
int64_t keel__sub_db_delay(int64_t poll_ms, int64_t max_ms, int errors);
/* sub_board.c: a status as JSON (a new reference, NULL without memory), and
 * every subscription on the status board, sorted by name, each with its "name". */
json_t *keel__sub_status_json(const struct keel_sub_status *st);
json_t *keel__sub_board_json(void);
/* sub_panel.c: registers the dashboard panel "subscriptions" (keel_sub_admin_routes) */
int keel__sub_panel_register(void);

/* ---- reads, shared by both backends ------------------------------------------------ */

/* Events being read: a growing array and the arena of their strings. */
typedef struct es_evec {
  keel_es_event *v;
  size_t n, cap;
  es_arena *arena;
} es_evec;

/* read.c: appends one decoded event: strings and the JSON texts (payload_len
 * and meta_len bytes, NUL not needed) copied into the arena, nothing parsed
 * (the accessors parse on first use); payload NULL: "null", meta NULL: "{}".
 * 0 or KEEL_ENOMEM. */
int keel__es_evec_add(es_evec *out, int64_t position, const char *stream, int64_t version,
                      const char *id, const char *type, int schema_version, const char *payload,
                      size_t payload_len, const char *meta, size_t meta_len, int64_t occurred_at,
                      int64_t stored_at);

typedef enum { R_STREAM, R_ALL, R_HEAD, R_INFO } es_read_kind;

/* One read call, validated by read.c, run by a backend. */
typedef struct es_read_call {
  keel_es *es;
  es_read_kind kind;
  const char *stream;
  keel_es_read_opts ro;
  int64_t after;
  size_t limit;
  const keel_es_filter *f;
  es_evec ev;
  keel_es_stream_info *info;
  int64_t head;
  int64_t scanned; /* R_ALL: how far the read covered the feed (keel_es_events.scanned) */
  int rc;
} es_read_call;

/* read.c: the versions lo..hi (inclusive) a stream read covers: o's bounds
 * (0: the stream's end on that side; backwards, from is the highest), never
 * below the stream's truncated_before nor below 1. */
void keel__es_read_range(const keel_es_read_opts *o, int64_t truncated, int64_t *lo, int64_t *hi);

/* read.c: applies the upcasters to a page just decoded, ev->v[start..n),
 * and with types (a read_all type filter matched after upcasting; NULL: no
 * filter) drops the events whose latest type is not wanted; with part (may
 * be NULL) and part->partitions, first drops the events outside its
 * partition (rows without a stored hash). Both backends' read_all loop
 * through it. 0 or keel__es_upcast's error. */
int keel__es_upcast_page(keel_es *es, es_evec *ev, size_t start, const char *const *types,
                         const keel_es_filter *part);

/* ---- a growing text buffer (sbuf.c) ----------------------------------------------- */

typedef struct es_sbuf {
  char *p; /* NUL-terminated; the caller frees it */
  size_t n, cap;
  bool oom; /* an allocation failed: later adds do nothing */
} es_sbuf;
void keel__es_sb_add(es_sbuf *b, const char *s, size_t len);
void keel__es_sb_str(es_sbuf *b, const char *s);
void keel__es_sb_i64(es_sbuf *b, int64_t v);
void keel__es_sb_json_string(es_sbuf *b, const char *s); /* s as a JSON string literal */

/* ---- the PostgreSQL backend ---------------------------------------------------------- */

/* One pooled connection (non-blocking once made). */
struct es_pgconn {
  struct es_pgconn *next; /* the idle list */
  PGconn *conn;
  bool broken;      /* an I/O error or a timeout: dropped when released */
  char sqlstate[6]; /* the last server error's SQLSTATE and message ("" when none) */
  char errmsg[256];
  double opened_at;  /* monotonic s: for pool_max_lifetime_ms */
  double idle_since; /* monotonic s, set when it went idle: for the ping and idle recycling */
  /* named statements (pg_conn.c): the texts prepared on this connection, at
   * most ES_PG_NAMED (the least recently used deallocated past that); a
   * text gets a name the second time it is seen */
  struct es_pgnamed *named; /* ES_PG_NAMED entries, allocated at first use */
  struct es_pgseen *seen;   /* the texts seen once */
  uint32_t next_name;       /* names are never reused on a connection */
  uint64_t nonce;           /* in every name: unique to this connection */
  uint64_t tick;            /* a round trip's number, for the least recently used */
  atomic_bool *names;       /* statements with parameters go named while this holds
                               (es_pg.prepare or .prepare_session; NULL: never) */
  bool names_off;           /* this connection's own: out of memory for the record */
  bool service;             /* the statement now running is the service's: unnamed (a
                               migration elsewhere may change its columns under a name) */
};

/* An append waiting in a group commit (pg_group.c), on its process's stack
 * (exits held). */
typedef struct es_pggm {
  struct es_pggm *next; /* the queue */
  keel_pid_t pid;
  keel_ref_t ref;
  const es_stream_req *s;     /* the append (borrowed) */
  keel_es_append_result *res; /* its result, written by the leader */
  int rc;                     /* its code, written by the leader */
  bool done, lead;            /* the one reply it gets: its result, or the leadership */
} es_pggm;

/* A process waiting for a connection (on its stack, exits held). */
typedef struct es_pgwaiter {
  struct es_pgwaiter *next;
  keel_pid_t pid;
  keel_ref_t ref;
  es_pgconn *conn; /* handed over by a release ... */
  bool slot;       /* ... or the right to open a new one */
  bool done;
} es_pgwaiter;

struct es_pg {
  char *url;
  atomic_bool prepare;         /* named statements on url's connections: not behind a pooler
                                  in transaction mode (session_url distinct from url); turned
                                  off for good when names do not match the server's */
  atomic_bool prepare_session; /* on session_url's: !opts.no_prepare */
  char *session_url; /* what needs a session (LISTEN, a group's locks): opts.session_url, or url */
  size_t min, max;
  int64_t acquire_timeout_ms, statement_timeout_ms;
  pthread_mutex_t mu; /* guards what follows */
  es_pgconn *idle;
  size_t nidle, total; /* total: idle + in use + being opened */
  es_pgwaiter *wq, *wq_tail;
  size_t nwaiting;
  keel_gauge *g_in_use, *g_idle, *g_waiting; /* NULL without metrics */
  keel_histogram *h_acquire;
  /* maintenance (pg_pool.c): seconds, < 0 when turned off */
  double idle_timeout_s, max_lifetime_s, ping_idle_s;
  double waiting_since;   /* monotonic s when nwaiting last rose from 0 (under mu) */
  keel_pid_t maintainer;  /* the process that recycles, pings and refills; 0: none */
  atomic_bool maint_stop; /* close tells it to stop ... */
  atomic_bool maint_done; /* ... and it says it is gone (its on_exit) */
  /* es_pool_recycled_total{reason="idle|lifetime|dead"}; NULL without metrics */
  keel_counter *c_idle, *c_lifetime, *c_dead;
  /* group commit (pg_group.c): guarded by gmu */
  pthread_mutex_t gmu;
  es_pggm *gq, *gq_tail; /* appends waiting for a group */
  int nleaders;          /* groups running */
};

/* pg_conn.c: opens one connection to url (pg->url or pg->session_url;
 * blocking: call on the blocking pool), sets its statement_timeout and makes
 * it non-blocking. KEEL_EIO (logged). */
int keel__es_pg_connect(es_pg *pg, const char *url, es_pgconn **out);
/* pg_conn.c: runs sql on c with the asynchronous API, the calling process
 * waiting on the socket. nparams < 0: a simple query (several statements,
 * no parameters). *out (may be NULL) gets the last result (PQclear it).
 * Errors: KEEL_EEXIST (a unique violation, not logged), KEEL_ETIMEDOUT
 * (statement_timeout, or no answer in time: the connection is then broken),
 * KEEL_EIO (anything else; logged with the server's message and `what`). */
int keel__es_pg_query(es_pg *pg, es_pgconn *c, const char *what, const char *sql, int nparams,
                      const char *const *params, PGresult **out);
/* pg_conn.c: n statements sent at once in libpq's pipeline mode, one
 * round trip for all (each with its parameters; no several-statement
 * texts). *out gets the result of statement `want` (PQclear it). After the
 * first error the server skips the rest; that error is the answer, as
 * keel__es_pg_query's (an explicit transaction the statements began is then
 * left aborted: the caller rolls it back). */
typedef struct es_pgstmt {
  const char *sql;
  int nparams;
  const char *const *params;
} es_pgstmt;
int keel__es_pg_pipeline(es_pg *pg, es_pgconn *c, const char *what, size_t n,
                         const es_pgstmt *stmts, size_t want, PGresult **out);
/* pg_conn.c: frees c's record of its named statements (the server drops
 * them with the connection). */
void keel__es_pg_named_free(es_pgconn *c);
/* pg_conn.c: an empty query on an idle connection, waiting at most timeout_ms:
 * 0 when the server answered, KEEL_EIO or KEEL_ETIMEDOUT (c is then broken;
 * not logged: the pool replaces it). Call from a process. */
int keel__es_pg_ping(es_pgconn *c, int64_t timeout_ms);
/* pg_conn.c: whether an idle connection's socket has something to read (a
 * server that terminated the backend sent an error and closed it); reads it
 * in. An idle connection should have nothing: the pool pings it then. */
bool keel__es_pg_idle_input(es_pgconn *c);
/* pg_pool.c: a snapshot of the pool for health: in use, idle, waiting, max,
 * and how long processes have been waiting (0 when none waits). */
void keel__es_pg_stats(keel_es *es, size_t *in_use, size_t *idle, size_t *waiting, size_t *max,
                       double *waiting_for_s);
/* pg_pool.c: opens one connection outside the pool's books (blocking part on
 * the blocking pool; call from a process), and closes one (NULL-safe):
 * the pool's own, and (keel__es_pg_session_open, to session_url) a
 * subscription group's lock session. */
int keel__es_pg_conn_open(es_pg *pg, es_pgconn **out);
int keel__es_pg_session_open(es_pg *pg, es_pgconn **out);
void keel__es_pg_conn_close(es_pgconn *c);
/* pg_pool.c: checks a connection out of the pool, waiting without blocking
 * the scheduler at most acquire_timeout_ms. KEEL_ETIMEDOUT, KEEL_EIO. */
int keel__es_pg_acquire(keel_es *es, es_pgconn **out);
/* pg_pool.c: puts c back (a broken one, or one left inside a transaction,
 * is closed and its place given to the next waiter). */
void keel__es_pg_release(keel_es *es, es_pgconn *c);
/* keel__es_pg_acquire, then `begin` on it (NULL: "BEGIN"; a text that
 * starts a transaction and sets it up, e.g. "BEGIN; SELECT set_config(...)",
 * and does nothing else). A connection found dead there (the server ended
 * its backend after the pool's idle check, before the news reached the
 * socket: pg_terminate_backend, a failover) has done nothing yet: it is
 * dropped and one more is taken, once. Every transaction keel opens on a
 * pooled connection starts here. The failure is logged as any statement's.
 * Errors: acquire's, the query's. */
int keel__es_pg_acquire_begin(keel_es *es, es_pgconn **out, const char *what, const char *begin);
/* pg_schema.c: creates or migrates the schema (under an advisory lock). */
int keel__es_pg_migrate(es_pg *pg, es_pgconn *c, int *version);

/* pg_pool.c: opens the pool (pool_min connections) and migrates the schema.
 * url is borrowed. KEEL_EIO (logged), KEEL_ENOMEM. */
int keel__es_pg_open(keel_es *es, const char *url, const keel_es_opts *o);
/* pg_pool.c: closes every connection and frees es->pg. */
void keel__es_pg_close(keel_es *es);
/* pg_write.c: runs a write request (the caller keeps ownership of r); rep
 * has r->nstreams results. Call from a process. Returns rep->rc. */
int keel__es_pg_write(keel_es *es, const es_req *r, es_reply *rep);
/* pg_group.c: whether an append can be folded into a group (one stream, no
 * caller-given ids, not keel_es_transact's). */
bool keel__es_pg_groupable(const es_req *r);
/* pg_group.c: runs a groupable append in a group commit (the caller holds
 * its exits); rep->results[0] and the return as keel__es_pg_write. */
int keel__es_pg_group_append(keel_es *es, const es_req *r, es_reply *rep);
/* pg_group.c: in the current transaction, takes the streams' turns
 * (advisory locks held to its end, taking no transaction id), then
 * keel_es_reserve(events) (*first: the first position), in one statement:
 * appends to one stream reserve positions in the order they write it, so
 * its versions follow its positions. 0 or keel__es_pg_query's errors. */
int keel__es_pg_turns_and_reserve(es_pg *pg, es_pgconn *c, const char *const *streams, size_t n,
                                  size_t events, int64_t *first);
/* pg_read.c: runs a read call into c (c->rc is set and returned). */
int keel__es_pg_read(keel_es *es, es_read_call *c);
/* pg_snapshot.c: keel_es_snapshot_save and _load on PostgreSQL (arguments
 * checked by snapshot.c; state is the JSON text). Call from a process. */
int keel__es_pg_snapshot_save(keel_es *es, const char *stream, int64_t version, int schema_version,
                              const char *state, bool *stored);
int keel__es_pg_snapshot_load(keel_es *es, const char *stream, keel_es_snapshot *out);

/* ---- the live tail (tail.c) ------------------------------------------------------------ */

typedef struct es_tail es_tail;
/* tail.c: creates and frees es->live_tail (KEEL_ENOMEM). */
int keel__es_tail_open(keel_es *es);
void keel__es_tail_free(keel_es *es);
/* tail.c: a subscription starts (+1) or stops (-1) reading the tail;
 * nothing is kept while no one does. Any thread. */
void keel__es_tail_use(keel_es *es, int delta);
/* tail.c: one append's rows, committed (res: its result, stored_at the
 * value stored with them). Called by whoever committed, before the waiters
 * are woken. Any thread; never blocks beyond a short mutex. epoch: what
 * keel__es_tail_epoch said before the append's COMMIT; the rows are not
 * pushed if a reset came since (a delete that committed after them). */
void keel__es_tail_push(keel_es *es, const es_stream_req *s, const keel_es_append_result *res,
                        int64_t stored_at, uint64_t epoch);
/* tail.c: forgets every event (a delete, a truncation committed); the
 * epoch moves on. */
void keel__es_tail_reset(keel_es *es);
/* tail.c: the resets so far (0 without a tail). */
uint64_t keel__es_tail_epoch(keel_es *es);
/* tail.c: read_all(after, limit, f) from the tail when it holds position
 * after + 1: 0 and *out (n may be 0 when every event was filtered out;
 * out->scanned is the last position looked at), or KEEL_ENOENT when it does
 * not (read the database), KEEL_ENOMEM, an upcaster's KEEL_EINVAL. Call
 * from a process (upcasters run in it). */
int keel__es_tail_read(keel_es *es, int64_t after, size_t limit, const keel_es_filter *f,
                       keel_es_events *out);
/* tail.c: whether the tail holds position after + 1; *top gets its last. */
bool keel__es_tail_past(keel_es *es, int64_t after, int64_t *top);

/* ---- notifications (notify.c, pg_listen.c) ------------------------------------------- */

/* notify.c: sets up the waiters' list (and on PostgreSQL the listener,
 * unless opts.no_listen) once the backend is open. Call from a process.
 * KEEL_ENOMEM, or the metrics registry's error. */
int keel__es_notify_open(keel_es *es, const keel_es_opts *o);
/* notify.c: stops the listener, wakes every waiting process with
 * KEEL_ECANCELED and waits until they have left keel_es_wait (a killed one
 * is noticed dead). First thing keel_es_close does. NULL-safe. */
void keel__es_notify_close(keel_es *es);
/* notify.c: frees the list, once nothing can wake through it (the writer
 * thread stopped). NULL-safe. */
void keel__es_notify_free(keel_es *es);
/* notify.c: events up to `position` were committed by this instance: wakes
 * the waiters whose `after` is below it and (PostgreSQL) asks the listener
 * to announce it to other instances. Any thread. Without waiters and
 * without a listener it costs one atomic load. */
void keel__es_notify_appended(keel_es *es, int64_t position);
/* notify.c: wakes the waiters whose `after` is below position (the
 * listener's notifications); recheck: wake every waiter for one check of
 * the head without taking position as announced (after the listener was
 * down, something may have been missed). Any thread. */
void keel__es_notify_wake(keel_es *es, int64_t position, bool recheck);
/* notify.c: keel_es_wait for a reader of the live tail (a subscription's
 * waker): the tail holding position after + 1 answers on both backends,
 * *head then being the tail's last position, which read_all may not return
 * yet on PostgreSQL (the horizon) while the tail does. */
int keel__es_wait_tail(keel_es *es, int64_t after, int64_t timeout_ms, int64_t *head);
/* notify.c: the number of processes inside keel_es_wait (tests). */
size_t keel__es_notify_waiting(keel_es *es);
/* notify.c: whether the store's LISTEN connection is up (tests). */
bool keel__es_notify_listening(keel_es *es);

typedef struct es_listen es_listen; /* pg_listen.c */
/* pg_listen.c: starts the thread that opens the LISTEN connection (at
 * once, then again whenever it drops) and serves it; the channel is named
 * after the connection's schema. metrics may be NULL. KEEL_ENOMEM, KEEL_EIO
 * (no thread). */
int keel__es_listen_start(keel_es *es, keel_metrics *metrics, es_listen **out);
/* pg_listen.c: stops the thread, closes its connection, frees l. NULL-safe. */
void keel__es_listen_stop(es_listen *l);
/* pg_listen.c: asks the listener to NOTIFY other instances that events up
 * to position are committed (folded: one NOTIFY for many appends). Any
 * thread; never blocks. */
void keel__es_listen_kick(es_listen *l, int64_t position);
/* pg_listen.c: whether the LISTEN connection is up now (tests). */
bool keel__es_listen_up(es_listen *l);

/* The jobs' messages between instances ride on the store's channel
 * (payloads starting with "jobs", which older readers ignore: not a
 * position). A wake-up is "jobs": keel__es_listen_jobs_kick asks the
 * listener to send one (folded with the next announcement). Others
 * ("jobs:cancel:...", src/jobs) are sent by the jobs themselves with
 * pg_notify inside their transaction, on the channel
 * keel__es_listen_channel_of names. A received one, from another backend,
 * calls every hook added (one per keel_jobs on the store) with its payload,
 * on the listener's thread. Adding (0 or KEEL_ENOMEM) and removing a hook
 * wait out a call in flight, so once removed, ud is no longer used. */
void keel__es_listen_jobs_kick(es_listen *l);
int keel__es_listen_jobs_hook_add(es_listen *l, void (*fn)(void *ud, const char *payload),
                                  void *ud);
void keel__es_listen_jobs_hook_remove(es_listen *l, void (*fn)(void *ud, const char *payload),
                                      void *ud);
/* pg_listen.c: the NOTIFY channel of the store whose tables are in schema
 * (current_schema()): a plain identifier, safe to inline in SQL. */
void keel__es_listen_channel_of(const char *schema, char out[64]);
/* notify.c: the same on a store: add returns 0, KEEL_ENOMEM, or KEEL_ENOENT
 * when it has no listener (SQLite, no_listen): the jobs then rely on their
 * poll and janitor. Any thread. */
int keel__es_notify_jobs_hook_add(keel_es *es, void (*fn)(void *ud, const char *payload), void *ud);
void keel__es_notify_jobs_hook_remove(keel_es *es, void (*fn)(void *ud, const char *payload),
                                      void *ud);
void keel__es_notify_jobs_kick(keel_es *es);

#endif
