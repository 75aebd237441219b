/* upcast.c - schema evolution: one chain of upcasters per event type.
 *
 * An upcaster turns an event of (type, v) into zero or more events of
 * version v + 1, possibly renamed or split. Registration keeps a small
 * array (a store has tens of upcasters, not thousands), guarded by a mutex
 * because reads run on several pool threads at once. keel__es_upcast is the
 * one place upcasting happens, called by every read path (read.c:
 * read_stream and read_all), on the thread that decoded the rows: it expands
 * each event depth-first until no upcaster matches its (type, version), so a
 * chain v1 -> v2 -> v3 and a rename followed by the new type's own chain
 * both apply, in order. Versions only go up, so a chain always ends.
 *
 * An upcaster that fails (a negative return, a NULL payload, more than 8
 * outputs) fails the whole read with KEEL_EINVAL and one error line naming
 * the event: a reader never gets a half-upcast history.
 *
 * Payloads are parsed lazily (read.c), and here only: an event an upcaster
 * matches has its payload parsed before the upcaster is called (a stored
 * payload that does not decode fails the read with KEEL_EIO: the upcaster
 * cannot run, and skipping the event would be a silent hole). The events an
 * upcaster produces carry its values already parsed, and their texts (which
 * an event always has) are those values serialised into the page's arena;
 * an output without metadata shares its input's text and value.
 *
 * Upcasters therefore run on the blocking pool's threads (or the writer
 * thread for an in-memory store), not in the reading process: they must be
 * pure functions of their input, which upcasters are by nature.
 */
#include <stdlib.h>
#include <string.h>

#include "es/es_internal.h"
#include "keel/error.h"
#include "keel/log.h"

enum { UPCAST_CAP = 8 };

int keel_es_upcaster(keel_es *es, const char *type, int from_version, keel_es_upcast_fn fn,
                     void *ud) {
  if (!es || !type || !*type || strlen(type) > 255 || from_version < 1 || !fn) return KEEL_EINVAL;
  int rc = 0;
  pthread_mutex_lock(&es->umu);
  for (size_t i = 0; i < es->nups; i++)
    if (es->ups[i].from_version == from_version && strcmp(es->ups[i].type, type) == 0)
      rc = KEEL_EEXIST;
  if (rc == 0) {
    es_upcaster *v = realloc(es->ups, (es->nups + 1) * sizeof *v);
    char *t = strdup(type);
    if (!v || !t) {
      free(t);
      if (v) es->ups = v;
      rc = KEEL_ENOMEM;
    } else {
      es->ups = v;
      es->ups[es->nups++] =
          (es_upcaster){.type = t, .from_version = from_version, .fn = fn, .ud = ud};
      /* relaxed: a hint only; readers that see it take umu, which orders the array */
      atomic_store_explicit(&es->nups_hint, es->nups, memory_order_relaxed);
    }
  }
  pthread_mutex_unlock(&es->umu);
  return rc;
}

void keel__es_upcasters_free(keel_es *es) {
  for (size_t i = 0; i < es->nups; i++)
    free(es->ups[i].type);
  free(es->ups);
  es->ups = NULL;
  es->nups = 0;
}

static bool find(keel_es *es, const char *type, int version, es_upcaster *out) {
  bool found = false;
  pthread_mutex_lock(&es->umu);
  for (size_t i = 0; i < es->nups && !found; i++) {
    if (es->ups[i].from_version == version && strcmp(es->ups[i].type, type) == 0) {
      *out = es->ups[i];
      found = true;
    }
  }
  pthread_mutex_unlock(&es->umu);
  return found;
}

const char **keel__es_upcaster_types(keel_es *es, size_t *n) {
  *n = 0;
  if (atomic_load_explicit(&es->nups_hint, memory_order_relaxed) == 0) return NULL;
  pthread_mutex_lock(&es->umu);
  const char **v = malloc((es->nups ? es->nups : 1) * sizeof *v);
  for (size_t i = 0; v && i < es->nups; i++) {
    bool seen = false;
    for (size_t k = 0; k < *n && !seen; k++)
      seen = strcmp(v[k], es->ups[i].type) == 0;
    if (!seen) v[(*n)++] = es->ups[i].type;
  }
  pthread_mutex_unlock(&es->umu);
  return v;
}

typedef struct outvec {
  keel_es_event *v;
  size_t n, cap;
} outvec;

static int push(outvec *o, const keel_es_event *e) {
  if (o->n == o->cap) {
    size_t cap = o->cap ? o->cap * 2 : 64;
    keel_es_event *v = realloc(o->v, cap * sizeof *v);
    if (!v) return KEEL_ENOMEM;
    o->v = v;
    o->cap = cap;
  }
  o->v[o->n++] = *e;
  return 0;
}

static void drop(keel_es_event *e) {
  keel__es_event_release(e);
}

/* v serialised into the arena: *text, *len. 0, KEEL_EINVAL (jansson cannot
 * serialise it: invalid UTF-8 in a string), KEEL_ENOMEM. */
static int dump_into(es_arena *arena, json_t *v, const char **text, size_t *len) {
  char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
  if (!s) return KEEL_EINVAL;
  *len = strlen(s);
  *text = keel__es_arena_copy(arena, s, *len);
  free(s);
  return *text ? 0 : KEEL_ENOMEM;
}

/* The event an upcaster's output j makes of e: version + 1, the output's
 * values (taken), their texts. On error n holds only what it owns. */
static int make_output(es_arena *arena, const keel_es_event *e, keel_es_upcast_out *out,
                       keel_es_event *n) {
  bool own_meta = out->metadata != NULL;
  *n = *e;
  n->schema_version = e->schema_version + 1;
  n->parsed_.payload = out->payload;
  n->parsed_.metadata = own_meta ? out->metadata : json_incref(e->parsed_.metadata);
  out->payload = out->metadata = NULL;
  int rc = dump_into(arena, n->parsed_.payload, &n->payload_json, &n->payload_len);
  if (rc == 0 && own_meta)
    rc = dump_into(arena, n->parsed_.metadata, &n->metadata_json, &n->metadata_len);
  if (rc == 0 && out->type && !(n->type = keel__es_arena_strdup(arena, out->type)))
    rc = KEEL_ENOMEM;
  return rc;
}

/* Expands e (owned) into o. On error e is freed too. */
static int expand(keel_es *es, es_arena *arena, keel_es_event *e, outvec *o, int depth) {
  es_upcaster u;
  if (depth > 1000 || !find(es, e->type, e->schema_version, &u)) {
    int rc = push(o, e);
    if (rc) drop(e);
    return rc;
  }
  if (!keel_es_event_payload(e)) { /* logged by the accessor */
    drop(e);
    return KEEL_EIO;
  }
  keel_es_upcast_out outs[UPCAST_CAP];
  memset(outs, 0, sizeof outs);
  size_t k = UPCAST_CAP;
  int urc = u.fn(e, outs, &k, u.ud);
  int rc = 0;
  if (urc < 0 || k > UPCAST_CAP) rc = KEEL_EINVAL;
  for (size_t j = 0; rc == 0 && j < k; j++)
    if (!outs[j].payload || (outs[j].metadata && !json_is_object(outs[j].metadata)))
      rc = KEEL_EINVAL;
  if (rc) {
    keel_log_error(NULL, "event store: an upcaster failed; the read fails",
                   KEEL_STR("type", e->type), KEEL_INT("schema_version", e->schema_version),
                   KEEL_STR("stream", e->stream), KEEL_INT("position", e->position),
                   KEEL_INT("upcaster_rc", urc));
    for (size_t j = 0; j < k && j < UPCAST_CAP; j++) {
      json_decref(outs[j].payload);
      json_decref(outs[j].metadata);
    }
    drop(e);
    return KEEL_EINVAL;
  }
  size_t j = 0;
  for (; rc == 0 && j < k; j++) {
    keel_es_event n;
    if ((rc = make_output(arena, e, &outs[j], &n))) {
      if (rc == KEEL_EINVAL)
        keel_log_error(NULL, "event store: an upcaster's payload cannot be serialised",
                       KEEL_STR("type", e->type), KEEL_INT("position", e->position));
      drop(&n);
      break;
    }
    rc = expand(es, arena, &n, o, depth + 1);
  }
  for (; j < k; j++) {
    json_decref(outs[j].payload);
    json_decref(outs[j].metadata);
  }
  drop(e);
  return rc;
}

int keel__es_upcast(keel_es *es, es_arena *arena, keel_es_event **events, size_t *n, size_t *cap,
                    size_t from) {
  if (atomic_load_explicit(&es->nups_hint, memory_order_relaxed) == 0 || from >= *n) return 0;
  outvec o = {0};
  int rc = 0;
  size_t i = from;
  for (; i < *n && rc == 0; i++)
    rc = expand(es, arena, &(*events)[i], &o, 0);
  for (; i < *n; i++)
    drop(&(*events)[i]); /* after an error: the unexpanded rest */
  /* events[from..) now lives in o: put it back after the untouched prefix */
  size_t total = from + o.n;
  if (total > *cap) {
    keel_es_event *v = realloc(*events, total * sizeof *v);
    if (!v) {
      for (size_t k = 0; k < o.n; k++)
        drop(&o.v[k]);
      free(o.v);
      *n = from;
      return KEEL_ENOMEM;
    }
    *events = v;
    *cap = total;
  }
  if (o.n) memcpy(*events + from, o.v, o.n * sizeof *o.v);
  *n = total;
  free(o.v);
  return rc;
}
