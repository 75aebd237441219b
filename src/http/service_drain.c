/* service_drain.c - the drain phases of keel_service_main's stop.
 *
 * The stop's order (the reference's: HTTP, then the workers, then the
 * queue, then the database) needs modules above http - durable jobs, the
 * event store's subscriptions - to stop taking work once the API has
 * drained and before the tree stops, with what is left of SHUTDOWN_TIMEOUT.
 * http cannot name them (layers: a layer uses only those below it), so they
 * register a phase here and the service's prep_stop runs them: a hook the
 * higher layer installs, as scripts/check-layers.sh asks for an upward
 * dependency.
 *
 * Phases run one after another, the last registered first (what started
 * last stops first, as a supervisor's children), each with the time left
 * then. The table is small and fixed: a service registers a handful.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "http/http_internal.h"
#include "keel/error.h"
#include "keel/log.h"
#include "keel/service.h"

enum { MAX_PHASES = 16 };

typedef struct phase {
  char name[32];
  keel_service_drain_fn fn;
  void *ud;
} phase;

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static phase g_phases[MAX_PHASES];
static size_t g_n;

int keel_service_on_drain(const char *name, keel_service_drain_fn fn, void *ud) {
  if (!name || !*name || !fn) return KEEL_EINVAL;
  int rc = 0;
  pthread_mutex_lock(&g_mu);
  for (size_t i = 0; i < g_n && !rc; i++)
    if (g_phases[i].fn == fn && g_phases[i].ud == ud) rc = KEEL_EEXIST;
  if (!rc && g_n == MAX_PHASES) rc = KEEL_ENOMEM;
  if (!rc) {
    phase *p = &g_phases[g_n++];
    snprintf(p->name, sizeof p->name, "%s", name);
    p->fn = fn;
    p->ud = ud;
  }
  pthread_mutex_unlock(&g_mu);
  return rc;
}

int keel_service_off_drain(keel_service_drain_fn fn, void *ud) {
  int rc = KEEL_ENOENT;
  pthread_mutex_lock(&g_mu);
  for (size_t i = 0; i < g_n; i++)
    if (g_phases[i].fn == fn && g_phases[i].ud == ud) {
      memmove(&g_phases[i], &g_phases[i + 1], (g_n - i - 1) * sizeof *g_phases);
      g_n--;
      rc = 0;
      break;
    }
  pthread_mutex_unlock(&g_mu);
  return rc;
}

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void keel__service_drain_run(int64_t deadline_ms, int64_t reserve_ms) {
  /* a copy: a phase may unregister itself (or another) while it runs */
  phase v[MAX_PHASES];
  pthread_mutex_lock(&g_mu);
  size_t n = g_n;
  memcpy(v, g_phases, n * sizeof *v);
  pthread_mutex_unlock(&g_mu);
  for (size_t i = n; i-- > 0;) {
    int64_t left = deadline_ms - reserve_ms - mono_ms();
    if (left < 1) left = 1; /* late: each phase still cuts its work off, at once */
    keel_log_info(NULL, "drain phase", KEEL_STR("phase", v[i].name), KEEL_INT("budgetMs", left));
    v[i].fn(v[i].ud, left);
  }
}
