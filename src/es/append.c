/* append.c - the public write calls: validation and encoding, then the writer.
 *
 * Everything a write needs is checked and encoded here, in the calling
 * process, before anything reaches the writer thread (writer.c): stream ids,
 * types, event ids (UUIDs, lower-cased; a missing one is a new random v4
 * UUID from getrandom), payloads and metadata serialised to JSON text once
 * (a payload that cannot be serialised, metadata that is not an object, an
 * event above max_event_bytes, a batch above max_batch, an empty batch: each
 * a clear error, and nothing is written). The request the writer receives
 * owns copies of all of it, so the writer never touches the caller's memory
 * and a caller that dies while waiting leaves nothing dangling.
 *
 * The stream management writes (soft delete, truncate, hard delete, stream
 * metadata) go through the same writer and the same group commit.
 *
 * On PostgreSQL (es->kind == ES_PG) the same encoded request is run by
 * pg_write.c in the calling process instead of being submitted to a writer.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "es/es_internal.h"
#include "keel/error.h"
#include "keel/log.h"
#include "keel/process.h"

bool keel__es_expected_ok(int64_t expected, int64_t actual, bool deleted) {
  if (expected == KEEL_ES_ANY) return true;
  if (expected == KEEL_ES_STREAM_EXISTS) return actual > 0 && !deleted;
  return expected == actual;
}

int keel__es_dup_verdict(size_t found, size_t given, size_t n, bool same,
                         keel_es_append_result *res) {
  if (found == 0) return 0;
  if (found == n && given == n && same) {
    res->duplicate = true;
    return 1;
  }
  return KEEL_EEXIST;
}

bool keel__es_stream_ok(const char *stream) {
  if (!stream) return false;
  size_t n = 0;
  for (const unsigned char *p = (const unsigned char *)stream; *p; p++, n++)
    if (*p < 0x21 || *p > 0x7e || n >= 255) return false;
  return n > 0;
}

uint32_t keel__es_stream_hash(const char *stream) {
  uint32_t h = 2166136261u; /* FNV-1a, 32-bit */
  for (const unsigned char *p = (const unsigned char *)stream; *p; p++) {
    h ^= *p;
    h *= 16777619u;
  }
  return h;
}

/* A UUID "8-4-4-4-12" of hex digits, any case, into out (lower case). */
static bool uuid_parse(const char *id, char out[37]) {
  if (strlen(id) != 36) return false;
  for (int i = 0; i < 36; i++) {
    char c = id[i];
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (c != '-') return false;
    } else if (!isxdigit((unsigned char)c)) {
      return false;
    }
    out[i] = (char)tolower((unsigned char)c);
  }
  out[36] = 0;
  return true;
}

static int uuid_v4(char out[37]) {
  unsigned char b[16];
  size_t got = 0;
  while (got < sizeof b) {
    ssize_t n = getrandom(b + got, sizeof b - got, 0);
    if (n < 0) return KEEL_EIO;
    got += (size_t)n;
  }
  b[6] = (unsigned char)((b[6] & 0x0f) | 0x40); /* version 4 */
  b[8] = (unsigned char)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
  static const char hex[] = "0123456789abcdef";
  int o = 0;
  for (int i = 0; i < 16; i++) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out[o++] = '-';
    out[o++] = hex[b[i] >> 4];
    out[o++] = hex[b[i] & 15];
  }
  out[36] = 0;
  return 0;
}

int keel__es_uuid_v4(char out[37]) {
  return uuid_v4(out);
}

static int encode_event(keel_es *es, const keel_es_event_in *in, es_row *row) {
  if (!in->type || !*in->type || strlen(in->type) > 255) return KEEL_EINVAL;
  if (in->schema_version < 0 || !in->payload) return KEEL_EINVAL;
  if (in->metadata && !json_is_object(in->metadata)) return KEEL_EINVAL;
  if (in->id) {
    if (!uuid_parse(in->id, row->id)) return KEEL_EINVAL;
    row->given_id = true;
  } else if (uuid_v4(row->id) != 0) {
    return KEEL_EIO;
  }
  row->schema_version = in->schema_version ? in->schema_version : 1;
  row->occurred_at = in->occurred_at_ms ? in->occurred_at_ms : keel__es_unix_ms();
  if (!(row->type = strdup(in->type))) return KEEL_ENOMEM;
  /* NULL from json_dumps: a value jansson cannot serialise (invalid UTF-8
   * in a string made with json_string_nocheck, a cycle), or no memory. */
  if (!(row->payload = json_dumps(in->payload, JSON_COMPACT | JSON_ENCODE_ANY))) return KEEL_EINVAL;
  if (in->metadata && json_object_size(in->metadata) > 0 &&
      !(row->metadata = json_dumps(in->metadata, JSON_COMPACT)))
    return KEEL_EINVAL;
  size_t bytes = strlen(row->payload) + (row->metadata ? strlen(row->metadata) : 0);
  if (bytes > es->max_event_bytes) return KEEL_ERANGE;
  return 0;
}

static bool expected_valid(int64_t expected) {
  return expected >= 0 || expected == KEEL_ES_ANY || expected == KEEL_ES_STREAM_EXISTS;
}

static int encode_stream(keel_es *es, const char *stream, int64_t expected,
                         const keel_es_event_in *events, size_t n, es_stream_req *s) {
  if (!keel__es_stream_ok(stream) || !expected_valid(expected)) return KEEL_EINVAL;
  if (n == 0 || !events) return KEEL_EINVAL;
  if (n > es->max_batch) return KEEL_ERANGE;
  s->expected = expected;
  if (!(s->stream = strdup(stream))) return KEEL_ENOMEM;
  if (!(s->rows = calloc(n, sizeof *s->rows))) return KEEL_ENOMEM;
  s->n = n;
  for (size_t i = 0; i < n; i++) {
    int rc = encode_event(es, &events[i], &s->rows[i]);
    if (rc) return rc;
  }
  return 0;
}

/* Runs r on the store's backend: the SQLite writer (which takes r), or
 * PostgreSQL in this process (r freed here). *out: the reply message. */
static int submit(keel_es *es, es_req *r, keel_msg_t **out) {
  if (es->kind != ES_PG) return keel__es_submit(es, r, out);
  *out = NULL;
  if (keel_self() == 0) {
    keel__es_req_free(r);
    return KEEL_ENOTPROC;
  }
  size_t size = sizeof(es_reply) + r->nstreams * sizeof(keel_es_append_result);
  keel_msg_t *m = keel_msg_new(0, size);
  if (!m) {
    keel__es_req_free(r);
    return KEEL_ENOMEM;
  }
  es_reply *rep = keel_msg_data(m);
  memset(rep, 0, size);
  rep->nresults = r->nstreams;
  keel__es_pg_write(es, r, rep);
  keel__es_req_free(r);
  *out = m;
  return 0;
}

/* transact's work: the request built, submitted and answered; sp is the
 * call's span (NULL: none), the parent fn's enqueues take. */
static int transact_run(keel_es *es, const keel_es_append_req *reqs, size_t nreqs,
                        keel_es_append_result *results, size_t *failed, keel_es_tx_fn fn, void *arg,
                        bool internal, bool lazy, const keel_span *sp) {
  if (nreqs) memset(results, 0, nreqs * sizeof *results);
  es_req *r = keel__es_req_new(ES_REQ_APPEND, NULL);
  if (!r || (nreqs && !(r->streams = calloc(nreqs, sizeof *r->streams)))) {
    keel__es_req_free(r);
    return KEEL_ENOMEM;
  }
  r->nstreams = nreqs;
  r->tx_fn = fn;
  r->tx_arg = arg;
  r->tx_internal = internal;
  r->lazy = lazy;
  /* fn's parent span (keel_jobs_enqueue_tx): this call's, else the caller's */
  const keel_span *cur = sp ? sp : keel_span_current();
  if (cur) r->trace = cur->ctx;
  for (size_t i = 0; i < nreqs; i++) {
    int rc = encode_stream(es, reqs[i].stream, reqs[i].expected, reqs[i].events, reqs[i].n,
                           &r->streams[i]);
    if (rc) {
      if (failed) *failed = i;
      keel__es_req_free(r);
      return rc;
    }
    r->nevents += reqs[i].n;
  }
  /* SQLite runs fn on the writer thread with arg, which may point into this
   * process's stack: the process must outlive the call. */
  int held = fn ? keel_hold_exits(true) : 1;
  keel_msg_t *m = NULL;
  int rc = submit(es, r, &m);
  if (rc == 0) {
    const es_reply *rep = keel_msg_data(m);
    rc = rep->rc;
    if (nreqs && rep->nresults == nreqs) memcpy(results, rep->results, nreqs * sizeof *results);
    if (rc) { /* nothing was stored: only the failed stream's result says why */
      for (size_t i = 0; i < nreqs; i++)
        if (i != rep->failed) memset(&results[i], 0, sizeof results[i]);
      if (failed) *failed = rep->failed;
    }
    keel_msg_free(m);
  }
  if (held == 0) keel_hold_exits(false);
  return rc;
}

/* The appends of reqs, then fn, in one transaction (fn NULL: a plain
 * append_multi, which needs at least one stream), inside the call's span. */
static int transact(keel_es *es, const keel_es_append_req *reqs, size_t nreqs,
                    keel_es_append_result *results, size_t *failed, keel_es_tx_fn fn, void *arg,
                    bool internal, bool lazy) {
  if (failed) *failed = 0;
  if (!es || (nreqs > 0 && (!reqs || !results)) || (nreqs == 0 && !fn)) return KEEL_EINVAL;
  /* keel's own transactions (checkpoints, the jobs' statements) make no span
   * here: the jobs make their own, and a checkpoint is not the user's work */
  keel_span sp;
  bool spanned = !internal && keel__es_span_begin(es, &sp, fn ? "transact" : "append",
                                                  nreqs == 1 ? reqs[0].stream : NULL);
  int rc =
      transact_run(es, reqs, nreqs, results, failed, fn, arg, internal, lazy, spanned ? &sp : NULL);
  int64_t events = 0;
  for (size_t i = 0; i < nreqs; i++)
    events += (int64_t)reqs[i].n;
  keel__es_span_end(&sp, spanned, rc, events);
  return rc;
}

int keel_es_append_multi(keel_es *es, const keel_es_append_req *reqs, size_t nreqs,
                         keel_es_append_result *results, size_t *failed) {
  if (nreqs == 0) return KEEL_EINVAL;
  return transact(es, reqs, nreqs, results, failed, NULL, NULL, false, false);
}

int keel_es_transact(keel_es *es, const keel_es_append_req *reqs, size_t nreqs,
                     keel_es_append_result *results, size_t *failed, keel_es_tx_fn fn, void *arg) {
  return transact(es, reqs, nreqs, results, failed, fn, arg, false, false);
}

int keel__es_transact_internal(keel_es *es, keel_es_tx_fn fn, void *arg) {
  return transact(es, NULL, 0, NULL, NULL, fn, arg, true, false);
}

int keel__es_transact_lazy(keel_es *es, keel_es_tx_fn fn, void *arg) {
  return transact(es, NULL, 0, NULL, NULL, fn, arg, true, true);
}

int keel_es_append(keel_es *es, const char *stream, int64_t expected,
                   const keel_es_event_in *events, size_t n, keel_es_append_result *result) {
  keel_es_append_req req = {.stream = stream, .expected = expected, .events = events, .n = n};
  keel_es_append_result tmp;
  return keel_es_append_multi(es, &req, 1, result ? result : &tmp, NULL);
}

/* ---- stream management ------------------------------------------------------------ */

static int manage(keel_es *es, es_req_kind kind, const char *stream, int64_t expected, int64_t arg,
                  json_t *metadata) {
  if (!es || !keel__es_stream_ok(stream)) return KEEL_EINVAL;
  es_req *r = keel__es_req_new(kind, stream);
  if (!r) return KEEL_ENOMEM;
  r->streams[0].expected = expected;
  r->arg = arg;
  if (metadata && !(r->text = json_dumps(metadata, JSON_COMPACT))) {
    keel__es_req_free(r);
    return KEEL_EINVAL;
  }
  keel_msg_t *m = NULL;
  int rc = submit(es, r, &m);
  if (rc) return rc;
  rc = ((const es_reply *)keel_msg_data(m))->rc;
  keel_msg_free(m);
  return rc;
}

int keel_es_delete_stream(keel_es *es, const char *stream, int64_t expected) {
  if (!expected_valid(expected)) return KEEL_EINVAL;
  return manage(es, ES_REQ_DELETE, stream, expected, 0, NULL);
}

int keel_es_truncate_before(keel_es *es, const char *stream, int64_t before) {
  if (before < 0) return KEEL_EINVAL;
  return manage(es, ES_REQ_TRUNCATE, stream, 0, before, NULL);
}

int keel_es_hard_delete(keel_es *es, const char *stream) {
  return manage(es, ES_REQ_HARD_DELETE, stream, 0, 0, NULL);
}

int keel_es_stream_set_metadata(keel_es *es, const char *stream, json_t *metadata) {
  if (!json_is_object(metadata)) return KEEL_EINVAL;
  return manage(es, ES_REQ_SET_META, stream, 0, 0, metadata);
}
