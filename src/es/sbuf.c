/* sbuf.c - a growing text buffer, for the JSON texts the PostgreSQL writes
 * send as one parameter (pg_write.c, pg_group.c). An allocation failure
 * sets oom and makes every later add a no-op: callers check it once, at
 * the end. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "es/es_internal.h"

void keel__es_sb_add(es_sbuf *b, const char *s, size_t len) {
  if (b->oom) return;
  if (b->n + len + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->n + len + 1)
      cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
      b->oom = true;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->n, s, len);
  b->n += len;
  b->p[b->n] = 0;
}

void keel__es_sb_str(es_sbuf *b, const char *s) {
  keel__es_sb_add(b, s, strlen(s));
}

void keel__es_sb_i64(es_sbuf *b, int64_t v) {
  char t[32];
  int n = snprintf(t, sizeof t, "%lld", (long long)v);
  keel__es_sb_add(b, t, (size_t)n);
}

void keel__es_sb_json_string(es_sbuf *b, const char *s) {
  json_t *j = json_string(s);
  char *t = j ? json_dumps(j, JSON_ENCODE_ANY) : NULL;
  json_decref(j);
  if (!t) {
    b->oom = true;
    return;
  }
  keel__es_sb_str(b, t);
  free(t);
}
