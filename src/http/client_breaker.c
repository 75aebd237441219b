/* client_breaker.c - a circuit breaker per destination, and the health check
 * that shows them.
 *
 * A destination is an origin, "scheme://host:port". Its breaker is closed
 * (calls go), open (calls are refused at once with KEEL_EBUSY) or half-open
 * (a few probes go; the others are refused). Closed counts calls and
 * failures over breaker_window_ms in ten buckets, so old outcomes age out a
 * tenth of the window at a time; when at least breaker_min_calls were seen
 * and the failed share reaches breaker_failure_ratio, it opens. After
 * breaker_open_ms the next call finds it half-open and goes as a probe; when
 * breaker_probes probes succeeded it closes with a clean window, and one
 * failed probe opens it again. A failure is no answer at all or a 5xx.
 *
 * The breakers of a client are shared by all its schedulers: one mutex
 * guards the list (a handful of destinations; a call takes it twice).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http/client_internal.h"
#include "keel/error.h"
#include "keel/health.h"
#include "keel/timer.h"

#define NBUCKETS 10

typedef struct breaker {
  struct breaker *next;
  char *origin;
  keel_http_breaker_state state;
  int64_t opened_ms;
  int probes_out, probes_ok;
  uint64_t epoch[NBUCKETS]; /* which window slice each bucket counts */
  uint32_t calls[NBUCKETS], fails[NBUCKETS];
} breaker;

struct keel__hc_breakers {
  pthread_mutex_t lock;
  breaker *list;
};

keel__hc_breakers *keel__hc_breakers_new(void) {
  keel__hc_breakers *b = calloc(1, sizeof *b);
  if (b) pthread_mutex_init(&b->lock, NULL);
  return b;
}

void keel__hc_breakers_free(keel__hc_breakers *b) {
  if (!b) return;
  while (b->list) {
    breaker *n = b->list->next;
    free(b->list->origin);
    free(b->list);
    b->list = n;
  }
  pthread_mutex_destroy(&b->lock);
  free(b);
}

static breaker *find(keel__hc_breakers *b, const char *origin, bool create) {
  for (breaker *k = b->list; k; k = k->next)
    if (strcmp(k->origin, origin) == 0) return k;
  if (!create) return NULL;
  breaker *k = calloc(1, sizeof *k);
  if (!k || !(k->origin = strdup(origin))) {
    free(k);
    return NULL;
  }
  k->next = b->list;
  b->list = k;
  return k;
}

static const char *host_of(const char *origin) {
  const char *p = strstr(origin, "://");
  return p ? p + 3 : origin;
}

static void set_state(keel_http_client *c, breaker *k, keel_http_breaker_state st) {
  k->state = st;
  if (st == KEEL_HTTP_BREAKER_OPEN) k->opened_ms = keel_monotonic_ms();
  if (st == KEEL_HTTP_BREAKER_HALF_OPEN) k->probes_out = k->probes_ok = 0;
  if (st == KEEL_HTTP_BREAKER_CLOSED) {
    memset(k->calls, 0, sizeof k->calls);
    memset(k->fails, 0, sizeof k->fails);
  }
  keel__hc_breaker_gauge(c, host_of(k->origin), (int)st);
}

int keel__hc_breaker_admit(keel_http_client *c, const char *origin, bool *probe) {
  *probe = false;
  if (c->o.no_breaker) return 0;
  keel__hc_breakers *b = c->breakers;
  pthread_mutex_lock(&b->lock);
  breaker *k = find(b, origin, false);
  int rc = 0;
  if (k && k->state == KEEL_HTTP_BREAKER_OPEN &&
      keel_monotonic_ms() - k->opened_ms >= c->o.breaker_open_ms)
    set_state(c, k, KEEL_HTTP_BREAKER_HALF_OPEN);
  if (k && k->state == KEEL_HTTP_BREAKER_OPEN) rc = KEEL_EBUSY;
  if (k && k->state == KEEL_HTTP_BREAKER_HALF_OPEN) {
    if (k->probes_out < c->o.breaker_probes) {
      k->probes_out++;
      *probe = true;
    } else {
      rc = KEEL_EBUSY;
    }
  }
  pthread_mutex_unlock(&b->lock);
  return rc;
}

void keel__hc_breaker_record(keel_http_client *c, const char *origin, bool ok, bool probe) {
  if (c->o.no_breaker) return;
  keel__hc_breakers *b = c->breakers;
  pthread_mutex_lock(&b->lock);
  breaker *k = find(b, origin, true);
  if (!k) goto out;
  if (k->state == KEEL_HTTP_BREAKER_HALF_OPEN) {
    if (!probe) goto out; /* a call admitted before it opened: its news is old */
    if (!ok)
      set_state(c, k, KEEL_HTTP_BREAKER_OPEN);
    else if (++k->probes_ok >= c->o.breaker_probes)
      set_state(c, k, KEEL_HTTP_BREAKER_CLOSED);
    goto out;
  }
  if (k->state == KEEL_HTTP_BREAKER_OPEN) goto out;
  uint64_t slice = (uint64_t)c->o.breaker_window_ms / NBUCKETS;
  uint64_t ep = (uint64_t)keel_monotonic_ms() / (slice ? slice : 1);
  int i = (int)(ep % NBUCKETS);
  if (k->epoch[i] != ep) {
    k->epoch[i] = ep;
    k->calls[i] = k->fails[i] = 0;
  }
  k->calls[i]++;
  if (!ok) k->fails[i]++;
  uint64_t calls = 0, fails = 0;
  for (int j = 0; j < NBUCKETS; j++) {
    if (ep - k->epoch[j] >= NBUCKETS) continue; /* older than the window */
    calls += k->calls[j];
    fails += k->fails[j];
  }
  if (!ok && calls >= (uint64_t)c->o.breaker_min_calls &&
      (double)fails >= c->o.breaker_failure_ratio * (double)calls)
    set_state(c, k, KEEL_HTTP_BREAKER_OPEN);
out:
  pthread_mutex_unlock(&b->lock);
}

keel_http_breaker_state keel_http_client_breaker(keel_http_client *c, const char *origin) {
  if (!c || !origin) return KEEL_HTTP_BREAKER_CLOSED;
  pthread_mutex_lock(&c->breakers->lock);
  breaker *k = find(c->breakers, origin, false);
  keel_http_breaker_state st = k ? k->state : KEEL_HTTP_BREAKER_CLOSED;
  pthread_mutex_unlock(&c->breakers->lock);
  return st;
}

/* ---- the health check ------------------------------------------------------------- */

static keel_health_status health_check(void *ud, keel_health_result *res) {
  keel_http_client *c = ud;
  char open[512] = "", half[512] = "";
  size_t no = 0, nh = 0;
  pthread_mutex_lock(&c->breakers->lock);
  for (breaker *k = c->breakers->list; k; k = k->next) {
    char *buf = k->state == KEEL_HTTP_BREAKER_OPEN        ? open
                : k->state == KEEL_HTTP_BREAKER_HALF_OPEN ? half
                                                          : NULL;
    if (!buf) continue;
    size_t *n = buf == open ? &no : &nh;
    size_t used = strlen(buf);
    snprintf(buf + used, 512 - used, "%s%s", *n ? ", " : "", k->origin);
    (*n)++;
  }
  pthread_mutex_unlock(&c->breakers->lock);
  if (no) {
    keel_health_result_message(res, "circuit open: %s%s%s", open, nh ? "; half-open: " : "", half);
    return KEEL_HEALTH_CRITICAL;
  }
  if (nh) {
    keel_health_result_message(res, "circuit half-open: %s", half);
    return KEEL_HEALTH_WARNING;
  }
  return KEEL_HEALTH_OK;
}

int keel_http_client_health_register(keel_http_client *c, const char *name) {
  if (!c) return KEEL_EINVAL;
  return keel_health_register(name ? name : "http_client", health_check, c, false, 0);
}
