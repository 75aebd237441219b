/* log_recent.c - the last lines the logger wrote, kept for the admin port
 * (GET /admin/logs, the dashboard's log tail, keelctl logs).
 *
 * A ring of KEEL_LOG_RECENT_MAX slots indexed by the line's sequence number
 * (log.c numbers every line in the node's order), filled by the log writer
 * thread after it takes a pass of lines (log.c, drain): so producers pay
 * nothing for it, and a line is in the ring once it is on its way to the
 * sink. A slot keeps its own copy (at most KEEL_LOG_RECENT_LINE_MAX bytes;
 * a longer line is cut there and flagged), so the ring's memory is bounded
 * by slots x that, and in practice by slots x the usual line.
 *
 * Readers (any thread) copy what they ask for under the ring's mutex; the
 * writer holds it for one line at a time. Slot by sequence number: lines of
 * one pass come per thread, not in order, and a newer line simply takes the
 * slot of the one KEEL_LOG_RECENT_MAX before it.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "keel/error.h"
#include "keel/log.h"
#include "ops/ops_internal.h"

typedef struct slot {
  uint64_t seq; /* 0: empty (line numbers start at 0: stored + 1) */
  int level;
  bool cut;
  size_t len, cap;
  char *text;
} slot;

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static slot g_ring[KEEL_LOG_RECENT_MAX];

void keel__log_recent_add(uint64_t seq, int level, const char *line, size_t len) {
  while (len && (line[len - 1] == '\n' || line[len - 1] == '\r'))
    len--;
  bool cut = len > KEEL_LOG_RECENT_LINE_MAX;
  if (cut) len = KEEL_LOG_RECENT_LINE_MAX;
  slot *s = &g_ring[seq % KEEL_LOG_RECENT_MAX];
  pthread_mutex_lock(&g_mu);
  if (s->cap < len + 1) {
    size_t cap = len + 1 < 256 ? 256 : len + 1;
    char *p = realloc(s->text, cap);
    if (!p) { /* no memory: the slot is emptied rather than left stale */
      s->seq = 0;
      pthread_mutex_unlock(&g_mu);
      return;
    }
    s->text = p;
    s->cap = cap;
  }
  memcpy(s->text, line, len);
  s->text[len] = 0;
  s->len = len;
  s->level = level;
  s->cut = cut;
  s->seq = seq + 1;
  pthread_mutex_unlock(&g_mu);
}

static int by_seq(const void *a, const void *b) {
  const keel_log_recent_line *x = a, *y = b;
  return x->seq < y->seq ? -1 : x->seq > y->seq;
}

int keel_log_recent(uint64_t since, keel_log_level min_level, size_t max,
                    keel_log_recent_line **out, size_t *n) {
  if (!out || !n) return KEEL_EINVAL;
  *out = NULL;
  *n = 0;
  if ((int)min_level < KEEL_LOG_TRACE || min_level > KEEL_LOG_OFF) return KEEL_EINVAL;
  if (!max || max > KEEL_LOG_RECENT_MAX) max = KEEL_LOG_RECENT_MAX;
  /* pick under the lock (numbers only), newest max, then copy those */
  keel_log_recent_line *v = calloc(KEEL_LOG_RECENT_MAX, sizeof *v);
  if (!v) return KEEL_ENOMEM;
  size_t k = 0;
  int rc = 0;
  pthread_mutex_lock(&g_mu);
  for (size_t i = 0; i < KEEL_LOG_RECENT_MAX; i++) {
    const slot *s = &g_ring[i];
    if (!s->seq || s->seq - 1 < since) continue;
    if (s->level < (int)min_level) continue;
    v[k].seq = s->seq - 1;
    v[k].level = (keel_log_level)s->level;
    v[k].len = i; /* the slot, for the copy below */
    k++;
  }
  qsort(v, k, sizeof *v, by_seq);
  size_t first = k > max ? k - max : 0;
  for (size_t j = first; j < k && !rc; j++) {
    const slot *s = &g_ring[v[j].len];
    v[j - first] = v[j];
    v[j - first].truncated = s->cut;
    v[j - first].text = malloc(s->len + 1);
    if (!v[j - first].text) {
      rc = KEEL_ENOMEM;
      k = j;
      break;
    }
    memcpy(v[j - first].text, s->text, s->len + 1);
    v[j - first].len = s->len;
  }
  pthread_mutex_unlock(&g_mu);
  size_t got = k > first ? k - first : 0;
  if (rc) {
    keel_log_recent_free(v, got);
    return rc;
  }
  *out = v;
  *n = got;
  return 0;
}

void keel_log_recent_free(keel_log_recent_line *v, size_t n) {
  if (!v) return;
  for (size_t i = 0; i < n; i++)
    free(v[i].text);
  free(v);
}

uint64_t keel_log_recent_last(void) {
  uint64_t last = 0;
  pthread_mutex_lock(&g_mu);
  for (size_t i = 0; i < KEEL_LOG_RECENT_MAX; i++)
    if (g_ring[i].seq > last) last = g_ring[i].seq;
  pthread_mutex_unlock(&g_mu);
  return last; /* the newest line's number + 1: the `since` of what comes next */
}
