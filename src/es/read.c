/* read.c - the public read calls, and the events they hand out.
 *
 * Every read runs its SQL on a read connection (store.c: the blocking pool
 * with a pooled connection, or the writer's connection for an in-memory
 * store), inside one read transaction, so that what it checks (the stream's
 * row, whether any stream has hidden events) and what it returns come from
 * one snapshot. Rows are decoded there too, and the upcasters are applied
 * there (upcast.c), on every path: read_stream and read_all alike. The
 * events' strings, payload and metadata texts included, are copied into an
 * arena the keel_es_events owns (a few large chunks, not a malloc per
 * string).
 *
 * Payloads are parsed lazily (docs/decisions/0011): decoding a row copies
 * its JSON texts and parses nothing, because parsing every payload with
 * jansson cost two thirds of a read_all (0.32x a raw paged SELECT, against
 * 1.04x without the parse). keel_es_event_payload/_metadata parse on first
 * use and cache the value in the event; keel_es_events_free releases it.
 * Only upcasting parses during the read, and only the events an upcaster
 * matches (upcast.c).
 *
 * read_all and hidden events: events of soft-deleted streams, and versions
 * below a stream's truncated_before, are not returned. A partial index
 * (schema.c) answers "is anything hidden?" in one probe, and only when
 * something is does the query pay for the NOT EXISTS per row.
 *
 * read_all and types: when upcasters exist, a stored type may become
 * another, so the type filter is applied after upcasting. The SQL then also
 * selects every type an upcaster starts from, and the call reads further
 * pages until it has `limit` events or the feed ends, so that an empty
 * answer still means "nothing more".
 */
#include <stdlib.h>
#include <string.h>

#include "es/es_internal.h"
#include "keel/error.h"
#include "keel/log.h"

/* ---- the arena ------------------------------------------------------------- */

typedef struct es_chunk {
  struct es_chunk *next;
  size_t used, cap;
  char data[];
} es_chunk;

struct es_arena {
  es_chunk *head;
};

enum { CHUNK = 64 * 1024, BIG = CHUNK / 4 };

/* Room for n bytes: in the current chunk, or a new one. A string larger
 * than BIG gets a chunk of its own, linked behind the current one, so that
 * one large payload does not waste the rest of a chunk still being filled. */
static char *arena_alloc(es_arena *a, size_t n) {
  es_chunk *c = a->head;
  if (c && c->cap - c->used >= n) {
    char *p = c->data + c->used;
    c->used += n;
    return p;
  }
  size_t cap = n > BIG ? n : CHUNK;
  es_chunk *nc = malloc(sizeof *nc + cap);
  if (!nc) return NULL;
  nc->cap = cap;
  nc->used = n;
  if (n > BIG && c) {
    nc->next = c->next;
    c->next = nc;
  } else {
    nc->next = c;
    a->head = nc;
  }
  return nc->data;
}

char *keel__es_arena_copy(es_arena *a, const char *s, size_t len) {
  char *p = arena_alloc(a, len + 1);
  if (!p) return NULL;
  memcpy(p, s, len);
  p[len] = 0;
  return p;
}

es_arena *keel__es_arena_new(void) {
  return calloc(1, sizeof(es_arena));
}

char *keel__es_arena_strdup(es_arena *a, const char *s) {
  return keel__es_arena_copy(a, s, strlen(s));
}

static void arena_free(es_arena *a) {
  if (!a) return;
  for (es_chunk *c = a->head, *next; c; c = next) {
    next = c->next;
    free(c);
  }
  free(a);
}

void keel__es_event_release(keel_es_event *e) {
  json_decref(e->parsed_.payload);
  json_decref(e->parsed_.metadata);
  e->parsed_.payload = e->parsed_.metadata = NULL;
}

void keel_es_events_free(keel_es_events *evs) {
  if (!evs) return;
  for (size_t i = 0; i < evs->n; i++)
    keel__es_event_release(&evs->v[i]);
  free(evs->v);
  arena_free(evs->priv_);
  memset(evs, 0, sizeof *evs);
}

/* ---- the lazy accessors ---------------------------------------------------------- */

/* The cache is written through a const pointer: parsing does not change
 * what the event says, only how soon it can say it again. The events
 * themselves are never const objects (they live in a malloc'd array), so
 * writing through the cast is defined. */
static json_t *parse_cached(const keel_es_event *ev, json_t *const *slot, const char *text,
                            size_t len, bool object, const char *what) {
  if (*slot) return *slot;
  json_error_t jerr;
  jerr.text[0] = 0;
  json_t *v = json_loadb(text, len, object ? 0 : JSON_DECODE_ANY, &jerr);
  if (v && object && !json_is_object(v)) {
    json_decref(v);
    v = NULL;
    snprintf(jerr.text, sizeof jerr.text, "not an object");
  }
  if (!v) {
    keel_log_error(NULL, "event store: a stored event does not decode", KEEL_STR("part", what),
                   KEEL_INT("position", ev->position), KEEL_STR("stream", ev->stream),
                   KEEL_STR("error", jerr.text));
    return NULL;
  }
  *(json_t **)slot = v;
  return v;
}

json_t *keel_es_event_payload(const keel_es_event *ev) {
  if (!ev || !ev->payload_json) return NULL;
  return parse_cached(ev, &ev->parsed_.payload, ev->payload_json, ev->payload_len, false,
                      "payload");
}

json_t *keel_es_event_metadata(const keel_es_event *ev) {
  if (!ev || !ev->metadata_json) return NULL;
  return parse_cached(ev, &ev->parsed_.metadata, ev->metadata_json, ev->metadata_len, true,
                      "metadata");
}

/* ---- decoding ---------------------------------------------------------------- */

#define EVENT_COLS                                                                                 \
  "e.position, e.stream, e.version, e.id, e.type, e.schema_version, e.payload, e.metadata, "       \
  "e.occurred_at, e.stored_at"

typedef es_evec evec;

/* The previous event's copy of s, when it is the same string (a page often
 * holds runs of one stream or one type), else a new copy in the arena. */
static const char *arena_intern(es_evec *out, const char *prev, const char *s, size_t len) {
  if (prev && strncmp(prev, s, len) == 0 && prev[len] == 0) return prev;
  return keel__es_arena_copy(out->arena, s, len);
}

int keel__es_evec_add(es_evec *out, int64_t position, const char *stream, int64_t version,
                      const char *id, const char *type, int schema_version, const char *payload,
                      size_t payload_len, const char *meta, size_t meta_len, int64_t occurred_at,
                      int64_t stored_at) {
  if (out->n == out->cap) {
    size_t cap = out->cap ? out->cap * 2 : 64;
    keel_es_event *v = realloc(out->v, cap * sizeof *v);
    if (!v) return KEEL_ENOMEM;
    out->v = v;
    out->cap = cap;
  }
  const keel_es_event *prev = out->n ? &out->v[out->n - 1] : NULL;
  keel_es_event *e = &out->v[out->n];
  memset(e, 0, sizeof *e);
  e->position = position;
  e->version = version;
  size_t idlen = id ? strnlen(id, sizeof e->id - 1) : 0;
  memcpy(e->id, id ? id : "", idlen);
  e->id[idlen] = 0;
  e->schema_version = schema_version;
  e->occurred_at_ms = occurred_at;
  e->stored_at_ms = stored_at;
  if (!stream) stream = "";
  if (!type) type = "";
  if (!payload) {
    payload = "null";
    payload_len = 4;
  }
  if (!meta) {
    meta = "{}";
    meta_len = 2;
  }
  if (!(e->stream = arena_intern(out, prev ? prev->stream : NULL, stream, strlen(stream))) ||
      !(e->type = arena_intern(out, prev ? prev->type : NULL, type, strlen(type))) ||
      !(e->payload_json = keel__es_arena_copy(out->arena, payload, payload_len)))
    return KEEL_ENOMEM;
  e->payload_len = payload_len;
  /* "{}" (no metadata, the common case) needs no copy: a static string */
  e->metadata_json = meta_len == 2 && memcmp(meta, "{}", 2) == 0
                         ? "{}"
                         : keel__es_arena_copy(out->arena, meta, meta_len);
  if (!e->metadata_json) return KEEL_ENOMEM;
  e->metadata_len = meta_len;
  out->n++;
  return 0;
}

static int decode_row(sqlite3_stmt *st, evec *out) {
  /* column_text before column_bytes: the length of the text as converted */
  const char *payload = (const char *)sqlite3_column_text(st, 6);
  size_t payload_len = (size_t)sqlite3_column_bytes(st, 6);
  const char *meta = (const char *)sqlite3_column_text(st, 7);
  size_t meta_len = (size_t)sqlite3_column_bytes(st, 7);
  return keel__es_evec_add(
      out, sqlite3_column_int64(st, 0), (const char *)sqlite3_column_text(st, 1),
      sqlite3_column_int64(st, 2), (const char *)sqlite3_column_text(st, 3),
      (const char *)sqlite3_column_text(st, 4), sqlite3_column_int(st, 5), payload, payload_len,
      meta, meta_len, sqlite3_column_int64(st, 8), sqlite3_column_int64(st, 9));
}

/* Steps st to the end, decoding every row into out. *rows: rows read. */
static int decode_all(sqlite3 *db, sqlite3_stmt *st, evec *out, size_t *rows) {
  int src, rc = 0;
  size_t k = 0;
  while ((src = sqlite3_step(st)) == SQLITE_ROW) {
    k++;
    if ((rc = decode_row(st, out))) break;
  }
  if (rows) *rows = k;
  if (rc == 0 && src != SQLITE_DONE) rc = keel__es_sqlite_error(db, src, "reading events");
  return rc;
}

static void evec_free(evec *v) {
  keel_es_events e = {.n = v->n, .v = v->v, .priv_ = v->arena};
  keel_es_events_free(&e);
  memset(v, 0, sizeof *v);
}

/* ---- the calls on the reading thread ------------------------------------------------ */

typedef es_read_call read_call;

/* ---- statements: prepared once per read connection ---------------------------------- */

/* Preparing a read's statements cost a fifth of a read_all page's work on
 * the reading thread, so a read connection keeps them, reset, for the next
 * call with the same SQL. They are found again through SQLite's own list of
 * the connection's statements (sqlite3_next_stmt, compared by SQL text), so
 * the cache needs no structure of its own; keel__es_close_reader finalizes
 * them. A connection holds at most CACHE_MAX (distinct filter combinations
 * make distinct SQL); past that the unused ones are dropped. The writer's
 * connection, which an in-memory store reads through, caches nothing: its
 * own statements are the writer's. */
enum { CACHE_MAX = 32 };

static bool caching(const read_call *c, sqlite3 *db) {
  return db != c->es->wdb;
}

static void drop_cached(sqlite3 *db) {
  sqlite3_stmt *s = sqlite3_next_stmt(db, NULL);
  while (s) {
    sqlite3_stmt *next = sqlite3_next_stmt(db, s);
    if (!sqlite3_stmt_busy(s)) sqlite3_finalize(s);
    s = next;
  }
}

static int prepare(const read_call *c, sqlite3 *db, const char *sql, sqlite3_stmt **st) {
  unsigned flags = 0;
  if (caching(c, db)) {
    size_t n = 0;
    for (sqlite3_stmt *s = sqlite3_next_stmt(db, NULL); s; s = sqlite3_next_stmt(db, s), n++) {
      if (!sqlite3_stmt_busy(s) && strcmp(sqlite3_sql(s), sql) == 0) {
        *st = s;
        return 0;
      }
    }
    if (n >= CACHE_MAX) drop_cached(db);
    flags = SQLITE_PREPARE_PERSISTENT; /* kept: a hint to SQLite's allocator */
  }
  int src = sqlite3_prepare_v3(db, sql, -1, flags, st, NULL);
  return src == SQLITE_OK ? 0 : keel__es_sqlite_error(db, src, "preparing a read");
}

/* Done with st: reset for the next call, or finalized when not cached. */
static void finish(const read_call *c, sqlite3 *db, sqlite3_stmt *st) {
  if (!caching(c, db)) {
    sqlite3_finalize(st);
    return;
  }
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
}

void keel__es_close_reader(sqlite3 *db) {
  if (!db) return;
  drop_cached(db);
  sqlite3_close(db);
}

static int exec(const read_call *c, sqlite3 *db, const char *sql, const char *what) {
  sqlite3_stmt *st;
  int rc = prepare(c, db, sql, &st);
  if (rc) return rc;
  int src = sqlite3_step(st);
  finish(c, db, st);
  return src == SQLITE_DONE ? 0 : keel__es_sqlite_error(db, src, what);
}

static int begin(const read_call *c, sqlite3 *db) {
  return exec(c, db, "BEGIN", "starting a read");
}

static void end(const read_call *c, sqlite3 *db) {
  exec(c, db, "COMMIT", "ending a read");
}

static int64_t max3(int64_t a, int64_t b, int64_t c) {
  int64_t m = a > b ? a : b;
  return m > c ? m : c;
}

void keel__es_read_range(const keel_es_read_opts *o, int64_t truncated, int64_t *lo, int64_t *hi) {
  if (o->backwards) {
    *hi = o->from ? o->from : INT64_MAX;
    *lo = max3(o->to, truncated, 1);
  } else {
    *lo = max3(o->from, truncated, 1);
    *hi = o->to ? o->to : INT64_MAX;
  }
}

static int do_read_stream(sqlite3 *db, read_call *c) {
  sqlite3_stmt *st;
  int rc = prepare(c, db, "SELECT version, deleted, truncated_before FROM streams WHERE stream = ?",
                   &st);
  if (rc) return rc;
  sqlite3_bind_text(st, 1, c->stream, -1, SQLITE_STATIC);
  int src = sqlite3_step(st);
  int64_t version = 0, truncated = 0;
  bool deleted = false;
  if (src == SQLITE_ROW) {
    version = sqlite3_column_int64(st, 0);
    deleted = sqlite3_column_int(st, 1) != 0;
    truncated = sqlite3_column_int64(st, 2);
  }
  finish(c, db, st);
  if (src != SQLITE_ROW && src != SQLITE_DONE)
    return keel__es_sqlite_error(db, src, "reading a stream");
  if (src == SQLITE_DONE || deleted || version == 0) return KEEL_ENOENT;
  const keel_es_read_opts *o = &c->ro;
  int64_t lo, hi;
  keel__es_read_range(o, truncated, &lo, &hi);
  if ((rc = prepare(c, db,
                    o->backwards ? "SELECT " EVENT_COLS " FROM events e WHERE e.stream = ? AND "
                                   "e.version BETWEEN ? AND ? ORDER BY e.version DESC LIMIT ?"
                                 : "SELECT " EVENT_COLS " FROM events e WHERE e.stream = ? AND "
                                   "e.version BETWEEN ? AND ? ORDER BY e.version ASC LIMIT ?",
                    &st)))
    return rc;
  sqlite3_bind_text(st, 1, c->stream, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 2, lo);
  sqlite3_bind_int64(st, 3, hi);
  sqlite3_bind_int64(st, 4, (int64_t)c->limit);
  rc = decode_all(db, st, &c->ev, NULL);
  finish(c, db, st);
  if (rc == 0) rc = keel__es_upcast_page(c->es, &c->ev, 0, NULL, NULL);
  return rc;
}

static bool type_wanted(const char *const *types, const char *type) {
  for (size_t i = 0; types[i]; i++)
    if (strcmp(types[i], type) == 0) return true;
  return false;
}

/* Drops the events of ev->v[start..n) outside f's partition: the SQL
 * matched stream_hash, but a row an older keel wrote has none (NULL matches
 * every partition there), so the answer is made exact here. */
static void partition_page(es_evec *ev, size_t start, const keel_es_filter *f) {
  size_t w = start;
  for (size_t i = start; i < ev->n; i++) {
    if (keel__es_stream_hash(ev->v[i].stream) % f->partitions == f->partition)
      ev->v[w++] = ev->v[i];
    else
      keel__es_event_release(&ev->v[i]);
  }
  ev->n = w;
}

int keel__es_upcast_page(keel_es *es, es_evec *ev, size_t start, const char *const *types,
                         const keel_es_filter *part) {
  if (part && part->partitions) partition_page(ev, start, part);
  int rc = keel__es_upcast(es, ev->arena, &ev->v, &ev->n, &ev->cap, start);
  if (rc || !types) return rc;
  size_t w = start; /* keep the events whose latest type is wanted */
  for (size_t i = start; i < ev->n; i++) {
    if (type_wanted(types, ev->v[i].type))
      ev->v[w++] = ev->v[i];
    else
      keel__es_event_release(&ev->v[i]);
  }
  ev->n = w;
  return 0;
}

/* The highest position in the read's snapshot (read_all's end when a page
 * came back short): in the same transaction as the page, so nothing between
 * the page's last row and it can be missed. */
static int read_top(const read_call *c, sqlite3 *db, int64_t *top) {
  sqlite3_stmt *st;
  int rc = prepare(c, db, "SELECT coalesce(max(position), 0) FROM events", &st);
  if (rc) return rc;
  int src = sqlite3_step(st);
  if (src == SQLITE_ROW) *top = sqlite3_column_int64(st, 0);
  finish(c, db, st);
  return src == SQLITE_ROW ? 0 : keel__es_sqlite_error(db, src, "reading the head");
}

static int do_read_all(sqlite3 *db, read_call *c) {
  const keel_es_filter *f = c->f;
  sqlite3_stmt *st;
  int rc = prepare(c, db,
                   "SELECT EXISTS (SELECT 1 FROM streams "
                   "WHERE deleted <> 0 OR truncated_before > 1)",
                   &st);
  if (rc) return rc;
  int src = sqlite3_step(st);
  bool hidden = src == SQLITE_ROW && sqlite3_column_int(st, 0) != 0;
  finish(c, db, st);
  if (src != SQLITE_ROW) return keel__es_sqlite_error(db, src, "reading the hidden streams");

  size_t nup = 0;
  const char **uptypes = NULL;
  bool post_filter = false;
  if (f && f->types) {
    uptypes = keel__es_upcaster_types(c->es, &nup);
    post_filter = nup > 0;
  }
  /* The query, with numbered parameters: ?1 after, ?2 limit, then the filters'. */
  size_t cap = 1024;
  char *sql = malloc(cap);
  if (!sql) {
    free(uptypes);
    return KEEL_ENOMEM;
  }
  int len = snprintf(sql, cap, "SELECT " EVENT_COLS " FROM events e WHERE e.position > ?1");
  int p = 3;
  int p_types = 0, p_prefix = 0, p_cat = 0, p_tenant = 0, p_part = 0;
  size_t ntypes = 0;
#define APPEND(...)                                                                                \
  do {                                                                                             \
    int need = snprintf(NULL, 0, __VA_ARGS__);                                                     \
    while ((size_t)(len + need + 1) > cap) {                                                       \
      char *s2 = realloc(sql, cap * 2);                                                            \
      if (!s2) {                                                                                   \
        free(sql);                                                                                 \
        free(uptypes);                                                                             \
        return KEEL_ENOMEM;                                                                        \
      }                                                                                            \
      sql = s2;                                                                                    \
      cap *= 2;                                                                                    \
    }                                                                                              \
    len += snprintf(sql + len, cap - (size_t)len, __VA_ARGS__);                                    \
  } while (0)
  if (f && f->types) {
    while (f->types[ntypes])
      ntypes++;
    p_types = p;
    APPEND(" AND e.type IN (");
    for (size_t i = 0; i < ntypes + nup; i++, p++)
      APPEND("%s?%d", i ? ", " : "", p);
    if (ntypes + nup == 0) APPEND("NULL");
    APPEND(")");
  }
  if (f && f->stream_prefix) {
    p_prefix = p;
    APPEND(" AND substr(e.stream, 1, length(?%d)) = ?%d", p, p);
    p++;
  }
  if (f && f->category) {
    p_cat = p;
    APPEND(" AND (e.stream = ?%d OR substr(e.stream, 1, length(?%d) + 1) = ?%d || '-')", p, p, p);
    p++;
  }
  if (f && f->tenant) {
    p_tenant = p;
    APPEND(" AND json_extract(e.metadata, '$.tenant') = ?%d", p);
    p++;
  }
  if (f && f->partitions) {
    /* NULL: a row an older keel wrote beside this one; the caller sorts it */
    p_part = p;
    APPEND(" AND (e.stream_hash IS NULL OR e.stream_hash %% ?%d = ?%d)", p, p + 1);
    p += 2;
  }
  if (hidden)
    APPEND(" AND NOT EXISTS (SELECT 1 FROM streams s WHERE s.stream = e.stream AND "
           "(s.deleted <> 0 OR e.version < s.truncated_before))");
  APPEND(" ORDER BY e.position LIMIT ?2");
#undef APPEND
  rc = prepare(c, db, sql, &st);
  free(sql);
  if (rc) {
    free(uptypes);
    return rc;
  }
  if (p_types) {
    for (size_t i = 0; i < ntypes; i++)
      sqlite3_bind_text(st, p_types + (int)i, f->types[i], -1, SQLITE_STATIC);
    for (size_t i = 0; i < nup; i++)
      sqlite3_bind_text(st, p_types + (int)(ntypes + i), uptypes[i], -1, SQLITE_STATIC);
  }
  if (p_prefix) sqlite3_bind_text(st, p_prefix, f->stream_prefix, -1, SQLITE_STATIC);
  if (p_cat) sqlite3_bind_text(st, p_cat, f->category, -1, SQLITE_STATIC);
  if (p_tenant) sqlite3_bind_text(st, p_tenant, f->tenant, -1, SQLITE_STATIC);
  if (p_part) {
    sqlite3_bind_int64(st, p_part, (sqlite3_int64)f->partitions);
    sqlite3_bind_int64(st, p_part + 1, (sqlite3_int64)f->partition);
  }

  int64_t cursor = c->after;
  bool short_page = false; /* the last query found fewer rows than asked: the end */
  while (rc == 0 && c->ev.n < c->limit) {
    size_t want = c->limit - c->ev.n, start = c->ev.n, rows = 0;
    sqlite3_bind_int64(st, 1, cursor);
    sqlite3_bind_int64(st, 2, (int64_t)want);
    rc = decode_all(db, st, &c->ev, &rows);
    sqlite3_reset(st);
    short_page = rows < want;
    if (rc || rows == 0) break;
    /* the decoded rows' last, before upcasting may split or drop it */
    cursor = c->ev.v[start + rows - 1].position;
    rc = keel__es_upcast_page(c->es, &c->ev, start, post_filter ? f->types : NULL, f);
    if (rc) break;
    if (!post_filter || rows < want) break;
  }
  finish(c, db, st);
  free(uptypes);
  c->scanned = cursor;
  if (rc == 0 && short_page) { /* read to the end: the head of this snapshot */
    int64_t top = 0;
    rc = read_top(c, db, &top);
    if (top > c->scanned) c->scanned = top;
  }
  return rc;
}

static int do_info(sqlite3 *db, read_call *c) {
  sqlite3_stmt *st;
  int rc = prepare(c, db,
                   "SELECT version, deleted, truncated_before, metadata FROM streams "
                   "WHERE stream = ?",
                   &st);
  if (rc) return rc;
  sqlite3_bind_text(st, 1, c->stream, -1, SQLITE_STATIC);
  int src = sqlite3_step(st);
  if (src == SQLITE_ROW) {
    c->info->version = sqlite3_column_int64(st, 0);
    c->info->deleted = sqlite3_column_int(st, 1) != 0;
    c->info->truncated_before = sqlite3_column_int64(st, 2);
    const char *meta = (const char *)sqlite3_column_text(st, 3);
    c->info->metadata = meta ? json_loads(meta, 0, NULL) : json_object();
    if (!c->info->metadata) c->info->metadata = json_object();
  }
  finish(c, db, st);
  if (src == SQLITE_DONE) return KEEL_ENOENT;
  return src == SQLITE_ROW ? 0 : keel__es_sqlite_error(db, src, "reading a stream's info");
}

static int do_head(sqlite3 *db, read_call *c) {
  sqlite3_stmt *st;
  int rc = prepare(c, db, "SELECT coalesce(max(position), 0) FROM events", &st);
  if (rc) return rc;
  int src = sqlite3_step(st);
  if (src == SQLITE_ROW) c->head = sqlite3_column_int64(st, 0);
  finish(c, db, st);
  return src == SQLITE_ROW ? 0 : keel__es_sqlite_error(db, src, "reading the head");
}

static void run_read(sqlite3 *db, void *arg) {
  read_call *c = arg;
  if ((c->rc = begin(c, db)) != 0) return;
  switch (c->kind) {
  case R_STREAM: c->rc = do_read_stream(db, c); break;
  case R_ALL: c->rc = do_read_all(db, c); break;
  case R_INFO: c->rc = do_info(db, c); break;
  case R_HEAD: c->rc = do_head(db, c); break;
  }
  end(c, db);
}

static int run(keel_es *es, read_call *c, keel_es_events *out) {
  if (es->m_reads) keel_counter_inc(es->m_reads);
  if (out) {
    memset(out, 0, sizeof *out);
    if (!(c->ev.arena = calloc(1, sizeof *c->ev.arena))) return KEEL_ENOMEM;
  }
  c->es = es;
  int rc = es->kind == ES_PG ? keel__es_pg_read(es, c) : keel__es_with_reader(es, run_read, c);
  if (rc == 0) rc = c->rc;
  if (out) {
    if (rc) {
      evec_free(&c->ev);
    } else {
      out->n = c->ev.n;
      out->v = c->ev.v;
      out->priv_ = c->ev.arena;
      if (c->kind == R_ALL) { /* never below a returned event, nor `after` */
        out->scanned = c->scanned > c->after ? c->scanned : c->after;
        if (c->ev.n && c->ev.v[c->ev.n - 1].position > out->scanned)
          out->scanned = c->ev.v[c->ev.n - 1].position;
      }
    }
  }
  return rc;
}

/* run inside a span (es_trace.c: only when the caller is inside a trace). */
static int run_spanned(keel_es *es, read_call *c, keel_es_events *out, const char *op,
                       const char *stream) {
  keel_span sp;
  bool on = keel__es_span_begin(es, &sp, op, stream);
  int rc = run(es, c, out);
  keel__es_span_end(&sp, on, rc, rc == 0 ? (int64_t)out->n : -1);
  return rc;
}

int keel_es_read_stream(keel_es *es, const char *stream, const keel_es_read_opts *o,
                        keel_es_events *out) {
  if (out) memset(out, 0, sizeof *out);
  if (!es || !out || !keel__es_stream_ok(stream)) return KEEL_EINVAL;
  read_call c = {.kind = R_STREAM, .stream = stream};
  if (o) c.ro = *o;
  if (c.ro.from < 0 || c.ro.to < 0) return KEEL_EINVAL;
  if (c.ro.limit > 100000) return KEEL_ERANGE;
  c.limit = c.ro.limit ? c.ro.limit : 1000;
  return run_spanned(es, &c, out, "read", stream);
}

int keel_es_read_all(keel_es *es, int64_t after, size_t limit, const keel_es_filter *f,
                     keel_es_events *out) {
  if (out) memset(out, 0, sizeof *out);
  if (!es || !out || after < 0) return KEEL_EINVAL;
  if (limit > 100000) return KEEL_ERANGE;
  if (f && f->partitions && f->partition >= f->partitions) return KEEL_EINVAL;
  read_call c = {.kind = R_ALL, .after = after, .limit = limit ? limit : 1000, .f = f};
  return run_spanned(es, &c, out, "read_all", NULL);
}

int keel_es_head(keel_es *es, int64_t *position) {
  if (!es || !position) return KEEL_EINVAL;
  read_call c = {.kind = R_HEAD};
  int rc = run(es, &c, NULL);
  *position = rc == 0 ? c.head : 0;
  return rc;
}

int keel_es_stream_info_get(keel_es *es, const char *stream, keel_es_stream_info *out) {
  if (out) memset(out, 0, sizeof *out);
  if (!es || !out || !keel__es_stream_ok(stream)) return KEEL_EINVAL;
  read_call c = {.kind = R_INFO, .stream = stream, .info = out};
  int rc = run(es, &c, NULL);
  if (rc) keel_es_stream_info_free(out);
  return rc;
}

void keel_es_stream_info_free(keel_es_stream_info *info) {
  if (!info) return;
  json_decref(info->metadata);
  memset(info, 0, sizeof *info);
}
