/* kt_es.h - what the event store's tests share: a store in a fresh temporary
 * folder (a file, WAL: the readers need their own connections, which a
 * private :memory: database cannot give), and small append helpers. */
#ifndef KT_ES_H
#define KT_ES_H

#include <dirent.h>
#include <unistd.h>

#include "keel_test.h"
#include "keel/eventstore.h"

typedef struct kt_store {
  char dir[256];
  char url[300];
  keel_es *es;
} kt_store;

static inline void kt_store_mkdir(kt_store *s) {
  const char *t = getenv("TMPDIR");
  snprintf(s->dir, sizeof s->dir, "%s/keel-es-test-XXXXXX", t && *t ? t : "/tmp");
  CHECK(mkdtemp(s->dir) != NULL);
  snprintf(s->url, sizeof s->url, "sqlite:%s/es.db", s->dir);
}

/* Opens a store in a new folder; o may be NULL (defaults). */
static inline keel_es *kt_store_open(kt_store *s, const keel_es_opts *o) {
  kt_store_mkdir(s);
  keel_es_opts oo = {0};
  if (o) oo = *o;
  oo.url = s->url;
  CHECK_OK(keel_es_open(&oo, &s->es));
  return s->es;
}

static inline void kt_store_rmdir(kt_store *s) {
  DIR *d = opendir(s->dir);
  if (d) {
    struct dirent *e;
    char p[600];
    while ((e = readdir(d)))
      if (e->d_name[0] != '.') {
        snprintf(p, sizeof p, "%s/%s", s->dir, e->d_name);
        unlink(p);
      }
    closedir(d);
  }
  rmdir(s->dir);
}

static inline void kt_store_close(kt_store *s) {
  keel_es_close(s->es);
  s->es = NULL;
  kt_store_rmdir(s);
}

/* Appends n events of `type` with payload {"i": first + k}; returns the code. */
static inline int kt_append_n(keel_es *es, const char *stream, int64_t expected, const char *type,
                              size_t n, int first, keel_es_append_result *r) {
  keel_es_event_in *ev = calloc(n ? n : 1, sizeof *ev);
  CHECK(ev != NULL);
  for (size_t k = 0; k < n; k++) {
    ev[k].type = type;
    ev[k].payload = json_pack("{s:i}", "i", first + (int)k);
  }
  int rc = keel_es_append(es, stream, expected, ev, n, r);
  for (size_t k = 0; k < n; k++)
    json_decref(ev[k].payload);
  free(ev);
  return rc;
}

static inline int kt_payload_i(const keel_es_event *e) {
  return (int)json_integer_value(json_object_get(e->payload, "i"));
}

#endif
