/* aggregate.c - aggregates: load (snapshot + tail), decide, append, retry.
 *
 * Everything here is built on the store's public calls (snapshot.c's
 * keel_es_snapshot_load and _save, keel_es_read_stream, keel_es_append), so
 * an aggregate sees what every reader sees: upcast events, no soft-deleted
 * or truncated history, and the same conflicts.
 *
 * Loading. The state starts from init(), or from the snapshot when one is
 * usable: saved with the definition's snapshot_version and accepted by
 * decode(). Anything else (another version, refused by decode, unreadable)
 * is logged once per load and ignored: the state is rebuilt from the events.
 * Then the events after the state's version are read in pages and folded
 * with apply(). A page that does not start right after the state's version
 * means the stream was truncated or deleted between two reads: the load
 * starts over. When nothing at all was folded, the stream's row says the
 * version to append at (0 for a new stream, the kept version of a
 * soft-deleted one, the version of one whose whole history is truncated);
 * if the row shows readable events after all, an append raced the reads and
 * the load starts over. Starting over is bounded (LOAD_ROUNDS); a stream that
 * keeps changing under the load answers KEEL_ECONFLICT.
 *
 * Executing. decide() sees the loaded state and fills a decision; its
 * events are appended with expected = the loaded version exactly. A
 * conflict reloads (a full load: a delete or truncate may be the reason) and
 * decides again, up to max_retries times. After a successful append the
 * events are applied to the state as emitted (ids and occurred_at are fixed
 * at emit time, so they are the stored ones; version and position come from
 * the append's result) and, when the batch crossed a multiple of
 * snapshot_every or the load replayed that many events, the state is saved as
 * a snapshot; a failure there is logged, not returned: the command is stored.
 * An append answered as a duplicate (every id stored before) applies
 * nothing: its events are already in the stream and in the loaded state.
 *
 * What it refuses to do: cache states between calls (every command loads;
 * a cache is a process's business, and the snapshot keeps loads short), or
 * retry errors other than a conflict.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "es/es_internal.h"
#include "keel/aggregate.h"
#include "keel/error.h"
#include "keel/log.h"

enum {
  PAGE = 1000,     /* stored events per read of the tail */
  LOAD_ROUNDS = 8, /* a load that keeps racing changes of its stream gives up */
  DEFAULT_RETRIES = 3,
};

/* ---- the decision ------------------------------------------------------------ */

struct keel_agg_decision {
  keel_es_event_in *ev; /* type, payload, metadata owned; id points into ids */
  char (*ids)[37];
  size_t n, cap;
  int err;      /* the first emit that failed */
  char *reason; /* the result's buffer */
  size_t reason_size;
};

static void decision_free(keel_agg_decision *d) {
  for (size_t k = 0; k < d->n; k++) {
    free((char *)d->ev[k].type);
    json_decref(d->ev[k].payload);
    json_decref(d->ev[k].metadata);
  }
  free(d->ev);
  free(d->ids);
  d->ev = NULL;
  d->ids = NULL;
  d->n = d->cap = 0;
  d->err = 0;
}

static int grow(keel_agg_decision *d) {
  if (d->n < d->cap) return 0;
  size_t cap = d->cap ? d->cap * 2 : 4;
  keel_es_event_in *ev = realloc(d->ev, cap * sizeof *ev);
  if (!ev) return KEEL_ENOMEM;
  d->ev = ev;
  char(*ids)[37] = realloc(d->ids, cap * sizeof *ids);
  if (!ids) return KEEL_ENOMEM;
  d->ids = ids;
  d->cap = cap;
  return 0;
}

/* Adds ev, taking the references of payload and metadata (always). */
static int add(keel_agg_decision *d, const keel_es_event_in *ev, json_t *payload,
               json_t *metadata) {
  int rc = 0;
  if (!d || !ev->type || !payload || (ev->id && strlen(ev->id) != 36))
    rc = KEEL_EINVAL;
  else if ((rc = grow(d)) == 0) {
    keel_es_event_in *e = &d->ev[d->n];
    *e = *ev;
    e->payload = payload;
    e->metadata = metadata;
    /* the id and the time are fixed here, so that what apply() sees after
     * the append is what the store holds */
    char *id = d->ids[d->n];
    if (ev->id) {
      snprintf(id, 37, "%s", ev->id);
      for (char *p = id; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    } else if (keel__es_uuid_v4(id) != 0) {
      rc = KEEL_EIO;
    }
    if (!e->occurred_at_ms) e->occurred_at_ms = keel__es_unix_ms();
    if (!e->schema_version) e->schema_version = 1;
    if (rc == 0 && !(e->type = strdup(ev->type))) rc = KEEL_ENOMEM;
    if (rc == 0) {
      d->n++;
      return 0;
    }
  }
  json_decref(payload);
  json_decref(metadata);
  if (d && !d->err) d->err = rc;
  return rc;
}

int keel_agg_emit(keel_agg_decision *d, const char *type, json_t *payload) {
  keel_es_event_in ev = {.type = type};
  return add(d, &ev, payload, NULL);
}

int keel_agg_emit_event(keel_agg_decision *d, const keel_es_event_in *ev) {
  if (!ev) {
    if (d && !d->err) d->err = KEEL_EINVAL;
    return KEEL_EINVAL;
  }
  return add(d, ev, json_incref(ev->payload), json_incref(ev->metadata));
}

int keel_agg_reject(keel_agg_decision *d, int code, const char *fmt, ...) {
  if (d && d->reason && fmt) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->reason, d->reason_size, fmt, ap);
    va_end(ap);
  }
  return code;
}

/* ---- loading -------------------------------------------------------------------- */

typedef struct agg {
  keel_es *es;
  const keel_agg_def *def;
  char stream[256];
  void *state;
  int64_t version;  /* the last event folded into state */
  int64_t replayed; /* stored events read and folded by the last load */
  bool warned;      /* a snapshot was ignored (logged once per load) */
} agg;

static bool def_ok(const keel_agg_def *def) {
  if (!def || !def->init || !def->apply || !def->destroy) return false;
  if (!def->encode != !def->decode) return false;
  if (def->snapshot_every < 0 || (def->snapshot_every > 0 && !def->encode)) return false;
  return def->max_retries >= KEEL_AGG_NO_RETRY && def->snapshot_version >= 0;
}

static int snapshot_version(const keel_agg_def *def) {
  return def->snapshot_version ? def->snapshot_version : 1;
}

static int agg_begin(agg *a, keel_es *es, const keel_agg_def *def, const char *id) {
  memset(a, 0, sizeof *a);
  a->es = es;
  a->def = def;
  if (!es || !def_ok(def) || !id) return KEEL_EINVAL;
  int n = def->category && *def->category
              ? snprintf(a->stream, sizeof a->stream, "%s-%s", def->category, id)
              : snprintf(a->stream, sizeof a->stream, "%s", id);
  if (n < 0 || (size_t)n >= sizeof a->stream || !keel__es_stream_ok(a->stream)) return KEEL_EINVAL;
  return 0;
}

static void drop_state(agg *a) {
  if (a->state) a->def->destroy(a->state, a->def->ud);
  a->state = NULL;
}

/* A fresh state at version 0. */
static int reset(agg *a) {
  drop_state(a);
  a->version = 0;
  a->replayed = 0;
  a->state = a->def->init(a->def->ud);
  return a->state ? 0 : KEEL_ENOMEM;
}

static void ignore_snapshot(agg *a, const char *why, const keel_es_snapshot *s, int rc) {
  if (a->warned) return;
  a->warned = true;
  keel_log_warn(NULL, "aggregate: snapshot ignored, state rebuilt from events",
                KEEL_STR("stream", a->stream), KEEL_STR("reason", why),
                KEEL_INT("snapshot_version", s->version),
                KEEL_INT("snapshot_schema", s->schema_version),
                KEEL_INT("wanted_schema", snapshot_version(a->def)),
                KEEL_STR("error", rc ? keel_err_name(rc) : ""));
}

/* Starts the state from the stream's snapshot when one is usable; *taken
 * gets its taken_at (0: none used), which with its version names it. */
static void use_snapshot(agg *a, int64_t *taken) {
  *taken = 0;
  if (!a->def->decode) return;
  keel_es_snapshot s;
  int rc = keel_es_snapshot_load(a->es, a->stream, &s);
  if (rc == KEEL_ENOENT) return;
  if (rc) {
    ignore_snapshot(a, "unreadable", &s, rc);
    return;
  }
  if (s.schema_version != snapshot_version(a->def)) {
    ignore_snapshot(a, "another schema version", &s, 0);
  } else {
    void *st = a->def->decode(s.state, a->def->ud);
    if (!st) {
      ignore_snapshot(a, "decode refused it", &s, 0);
    } else {
      drop_state(a);
      a->state = st;
      a->version = s.version;
      *taken = s.taken_at_ms ? s.taken_at_ms : 1;
    }
  }
  keel_es_snapshot_free(&s);
}

static int apply_one(agg *a, const keel_es_event *ev) {
  int rc = a->def->apply(a->state, ev, a->def->ud);
  if (rc) {
    keel_log_error(NULL, "aggregate: apply failed", KEEL_STR("stream", a->stream),
                   KEEL_INT("version", ev->version), KEEL_STR("type", ev->type),
                   KEEL_STR("error", keel_err_name(rc)));
    return rc;
  }
  a->version = ev->version;
  return 0;
}

/* Folds the events after a->version, page by page. With check_last, the
 * read starts at a->version itself (the snapshot's last event, not applied
 * again) to see that it is still readable. *gone: the stream has no
 * readable events (none, soft-deleted, only metadata). *gap: the events do
 * not follow the state (truncated or deleted meanwhile; with check_last,
 * the snapshot's last event is hidden). */
static int catch_up(agg *a, bool check_last, bool *gone, bool *gap) {
  *gone = *gap = false;
  for (bool first = true;; first = false) {
    int64_t from = first && check_last ? a->version : a->version + 1;
    keel_es_read_opts ro = {.from = from, .limit = PAGE};
    keel_es_events evs;
    int rc = keel_es_read_stream(a->es, a->stream, &ro, &evs);
    if (rc == KEEL_ENOENT) {
      *gone = true;
      return 0;
    }
    if (rc) return rc;
    if (a->version > 0 && (evs.n > 0 ? evs.v[0].version != from : first && check_last)) *gap = true;
    size_t stored = 0; /* an upcaster may split one stored event into several */
    int64_t last = -1;
    for (size_t i = 0; i < evs.n && rc == 0 && !*gap; i++) {
      int64_t v = evs.v[i].version;
      bool seen = first && check_last && v == from; /* the snapshot's own last event */
      if (v != last) {
        stored++;
        last = v;
        a->replayed += !seen;
      }
      if (!seen) rc = apply_one(a, &evs.v[i]);
    }
    keel_es_events_free(&evs);
    if (rc || *gap || stored < PAGE) return rc;
  }
}

/* Nothing was folded: the version to append at comes from the stream's
 * row. *raced: the row shows readable events the read did not see. */
static int settle_version(agg *a, bool *raced) {
  *raced = false;
  keel_es_stream_info info;
  int rc = keel_es_stream_info_get(a->es, a->stream, &info);
  if (rc == KEEL_ENOENT) return 0;
  if (rc) return rc;
  if (info.deleted || info.version == 0 || info.truncated_before > info.version)
    a->version = info.version;
  else
    *raced = true;
  keel_es_stream_info_free(&info);
  return 0;
}

/* A snapshot's own last event is read again (check_last) to see that it
 * is still readable: a soft delete (and a recreation) between the snapshot
 * load and the event read then shows as a gap, and the next round finds the
 * snapshot gone (deletes remove it). When it is hidden because the history
 * it covers was truncated (truncate_before(version + 1)), the next round
 * finds the same snapshot (same version and taken_at: after a delete no
 * save at or below the deleted version is accepted) and trusts it. */
static int load(agg *a) {
  a->warned = false;
  int64_t hidden_version = -1, hidden_taken = -1; /* a snapshot whose last event was hidden */
  for (int round = 0; round < LOAD_ROUNDS; round++) {
    int rc = reset(a);
    if (rc) return rc;
    int64_t taken;
    use_snapshot(a, &taken);
    int64_t snap_version = a->version;
    bool trusted = taken && snap_version == hidden_version && taken == hidden_taken;
    bool gone, gap, raced;
    if ((rc = catch_up(a, taken && !trusted, &gone, &gap))) return rc;
    if (gap) {
      hidden_version = taken ? snap_version : -1;
      hidden_taken = taken;
      continue;
    }
    if (gone && a->version > 0 && (rc = reset(a))) return rc; /* deleted since the snapshot */
    if (a->version > 0) return 0;
    if ((rc = settle_version(a, &raced)) || !raced) return rc;
  }
  keel_log_warn(NULL, "aggregate: the stream kept changing during the load",
                KEEL_STR("stream", a->stream));
  return KEEL_ECONFLICT;
}

/* ---- executing ------------------------------------------------------------------- */

static bool crossed(int64_t before, int64_t after, int64_t every) {
  return every > 0 && before / every != after / every;
}

static void save_snapshot(agg *a, keel_agg_result *res) {
  const keel_agg_def *def = a->def;
  json_t *j = def->encode(a->state, def->ud);
  if (!j) return;
  bool stored = false;
  int rc = keel_es_snapshot_save(a->es, a->stream, a->version, snapshot_version(def), j, &stored);
  json_decref(j);
  if (rc)
    keel_log_warn(NULL, "aggregate: snapshot not saved", KEEL_STR("stream", a->stream),
                  KEEL_INT("version", a->version), KEEL_STR("error", keel_err_name(rc)));
  res->snapshot_saved = rc == 0 && stored;
}

/* The append succeeded: fold its events into the state, then snapshot. */
static void after_append(agg *a, const keel_agg_decision *d, const keel_es_append_result *ar,
                         keel_agg_result *res) {
  int64_t before = a->version, now = keel__es_unix_ms();
  json_t *empty = json_object();
  for (size_t k = 0; k < d->n; k++) {
    const keel_es_event_in *in = &d->ev[k];
    json_t *meta = in->metadata ? in->metadata : empty;
    /* as a read would hand it out: the texts, and the values already parsed
     * (borrowed: this event is not freed by keel_es_events_free) */
    char *ptext = json_dumps(in->payload, JSON_COMPACT | JSON_ENCODE_ANY);
    char *mtext = json_dumps(meta, JSON_COMPACT);
    keel_es_event e = {.stream = a->stream,
                       .type = in->type,
                       .schema_version = in->schema_version,
                       .payload_json = ptext ? ptext : "null",
                       .payload_len = ptext ? strlen(ptext) : 4,
                       .metadata_json = mtext ? mtext : "{}",
                       .metadata_len = mtext ? strlen(mtext) : 2,
                       .parsed_ = {.payload = in->payload, .metadata = meta},
                       .occurred_at_ms = in->occurred_at_ms,
                       .stored_at_ms = now,
                       .version = ar->version - (int64_t)d->n + 1 + (int64_t)k,
                       .position = ar->first_position + (int64_t)k};
    memcpy(e.id, d->ids[k], sizeof e.id);
    int arc = apply_one(a, &e);
    free(ptext);
    free(mtext);
    if (arc != 0) { /* logged; the events are stored all the same */
      json_decref(empty);
      return;
    }
  }
  json_decref(empty);
  int64_t every = a->def->snapshot_every;
  if (every > 0 && (crossed(before, a->version, every) || a->replayed >= every))
    save_snapshot(a, res);
}

static int max_retries(const keel_agg_def *def) {
  if (def->max_retries == KEEL_AGG_NO_RETRY) return 0;
  return def->max_retries ? def->max_retries : DEFAULT_RETRIES;
}

int keel_agg_execute(keel_es *es, const keel_agg_def *def, const char *id,
                     keel_agg_decide_fn decide, const void *cmd, keel_agg_result *result) {
  keel_agg_result tmp;
  keel_agg_result *res = result ? result : &tmp;
  memset(res, 0, sizeof *res);
  agg a;
  int rc = agg_begin(&a, es, def, id);
  if (rc == 0 && !decide) rc = KEEL_EINVAL;
  if (rc == 0) rc = load(&a);
  for (int attempt = 1; rc == 0; attempt++) {
    res->attempts = attempt;
    res->version = a.version;
    res->reason[0] = 0;
    keel_agg_decision d = {.reason = res->reason, .reason_size = sizeof res->reason};
    int drc = decide(a.state, cmd, &d);
    if (drc != 0 || d.err != 0) {
      res->rejected = drc != 0;
      rc = drc ? drc : d.err;
      decision_free(&d);
      break;
    }
    if (d.n == 0) {
      decision_free(&d);
      break;
    }
    for (size_t k = 0; k < d.n; k++)
      d.ev[k].id = d.ids[k];
    keel_es_append_result ar;
    rc = keel_es_append(es, a.stream, a.version, d.ev, d.n, &ar);
    if (rc == KEEL_ECONFLICT && attempt <= max_retries(def)) {
      decision_free(&d);
      rc = load(&a); /* a full load: a delete or a truncate may be why */
      continue;
    }
    if (rc == 0) {
      res->version = ar.version;
      if (!ar.duplicate) {
        res->appended = d.n;
        res->first_position = ar.first_position;
        res->last_position = ar.last_position;
        after_append(&a, &d, &ar, res);
      }
    }
    decision_free(&d);
    break;
  }
  drop_state(&a);
  return rc;
}

int keel_agg_load(keel_es *es, const keel_agg_def *def, const char *id, void **state,
                  int64_t *version) {
  if (state) *state = NULL;
  if (version) *version = 0;
  if (!state) return KEEL_EINVAL;
  agg a;
  int rc = agg_begin(&a, es, def, id);
  if (rc == 0) rc = load(&a);
  if (rc) {
    drop_state(&a);
    return rc;
  }
  *state = a.state;
  if (version) *version = a.version;
  return 0;
}
