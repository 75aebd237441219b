/* sub_board.c - the subscriptions' status board and what reads it:
 * keel_sub_status_get, the board as JSON (the admin endpoint, dashboards),
 * the state and breaker names, and the health check (keel/subscription.h).
 *
 * Every running subscription (and group coordinator) publishes its latest
 * status here as it goes, so that status, health and dashboards never wait
 * behind a handler in progress.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "es/es_internal.h"
#include "keel/error.h"
#include "keel/health.h"
#include "keel/subscription.h"

typedef struct board_entry {
  struct board_entry *next;
  char name[64];
  keel_sub_status st;
} board_entry;

static pthread_mutex_t board_mu = PTHREAD_MUTEX_INITIALIZER;
static board_entry *board;

static board_entry *board_find(const char *name) {
  board_entry *e = board;
  while (e && strcmp(e->name, name) != 0)
    e = e->next;
  return e;
}

static void board_remove(const char *name) {
  pthread_mutex_lock(&board_mu);
  for (board_entry **p = &board; *p; p = &(*p)->next)
    if (strcmp((*p)->name, name) == 0) {
      board_entry *e = *p;
      *p = e->next;
      free(e);
      break;
    }
  pthread_mutex_unlock(&board_mu);
}

void keel__sub_publish(const char *name, const keel_sub_status *st) {
  pthread_mutex_lock(&board_mu);
  board_entry *e = board_find(name);
  if (!e && (e = calloc(1, sizeof *e))) {
    snprintf(e->name, sizeof e->name, "%s", name);
    e->next = board;
    board = e;
  }
  if (e) e->st = *st;
  pthread_mutex_unlock(&board_mu);
}

void keel__sub_unpublish(const char *name) {
  board_remove(name);
}

json_t *keel__sub_status_json(const keel_sub_status *st) {
  return json_pack("{s:s,s:I,s:I,s:I,s:I,s:f,s:I,s:I,s:I,s:I,s:i,s:b,s:s,s:s,s:i}", "state",
                   keel_sub_state_name(st->state), "checkpoint", (json_int_t)st->checkpoint,
                   "stored", (json_int_t)st->stored, "head", (json_int_t)st->head, "lag",
                   (json_int_t)st->lag, "lag_seconds", st->lag_seconds, "handled",
                   (json_int_t)st->handled, "failures", (json_int_t)st->failures, "parked",
                   (json_int_t)st->parked, "failures_last_minute",
                   (json_int_t)st->failures_last_minute, "attempts", st->attempts, "caught_up",
                   st->caught_up, "breaker", keel_sub_breaker_name(st->breaker), "db_breaker",
                   keel_sub_breaker_name(st->db_breaker), "db_errors", st->db_errors);
}

static int by_name(const void *a, const void *b) {
  return strcmp(json_string_value(json_object_get(*(json_t *const *)a, "name")),
                json_string_value(json_object_get(*(json_t *const *)b, "name")));
}

json_t *keel__sub_board_json(void) {
  json_t *all = json_array();
  if (!all) return NULL;
  pthread_mutex_lock(&board_mu);
  for (board_entry *e = board; e; e = e->next) {
    json_t *j = keel__sub_status_json(&e->st);
    if (!j || json_object_set_new(j, "name", json_string(e->name)) != 0 ||
        json_array_append_new(all, j) != 0) {
      json_decref(all);
      all = NULL;
      break;
    }
  }
  pthread_mutex_unlock(&board_mu);
  if (!all) return NULL;
  /* sorted by name: a stable page for operators and tests */
  size_t n = json_array_size(all);
  json_t **v = n ? malloc(n * sizeof *v) : NULL;
  if (n && !v) {
    json_decref(all);
    return NULL;
  }
  for (size_t i = 0; i < n; i++)
    v[i] = json_incref(json_array_get(all, i));
  if (n > 1) qsort(v, n, sizeof *v, by_name);
  json_array_clear(all);
  for (size_t i = 0; i < n; i++)
    json_array_append_new(all, v[i]);
  free(v);
  return all;
}

int keel_sub_status_get(const char *name, keel_sub_status *out) {
  if (!keel__sub_name_ok(name)) return KEEL_EINVAL;
  pthread_mutex_lock(&board_mu);
  board_entry *e = board_find(name);
  if (e && out) *out = e->st;
  pthread_mutex_unlock(&board_mu);
  return e ? 0 : KEEL_ENOPROC;
}

const char *keel_sub_breaker_name(keel_sub_breaker b) {
  switch (b) {
  case KEEL_SUB_BREAKER_CLOSED: return "closed";
  case KEEL_SUB_BREAKER_OPEN: return "open";
  case KEEL_SUB_BREAKER_HALF_OPEN: return "half_open";
  default: return "unknown";
  }
}

const char *keel_sub_state_name(keel_sub_state s) {
  switch (s) {
  case KEEL_SUB_CATCHING_UP: return "catching_up";
  case KEEL_SUB_LIVE: return "live";
  case KEEL_SUB_RETRYING: return "retrying";
  case KEEL_SUB_PAUSED: return "paused";
  case KEEL_SUB_RETIRED: return "retired";
  default: return "unknown";
  }
}

/* ---- health ------------------------------------------------------------------------------ */

typedef struct sub_check {
  char name[64];
  keel_sub_health_opts o;
} sub_check;

static keel_health_status sub_health(void *ud, keel_health_result *res) {
  const sub_check *c = ud;
  keel_sub_status st;
  int rc = keel_sub_status_get(c->name, &st);
  if (rc) {
    keel_health_result_message(res, "subscription %s: %s", c->name,
                               rc == KEEL_ENOPROC ? "not running" : keel_strerror(rc));
    return KEEL_HEALTH_CRITICAL;
  }
  json_t *d = keel__sub_status_json(&st);
  if (d) {
    res->details = json_dumps(d, JSON_COMPACT);
    json_decref(d);
  }
  if (c->o.hold_readiness && !st.caught_up) {
    keel_health_result_message(res, "catching up: %lld events behind", (long long)st.lag);
    return KEEL_HEALTH_CRITICAL;
  }
  if (st.lag >= c->o.lag_critical) {
    keel_health_result_message(res, "%lld events behind (critical at %lld)", (long long)st.lag,
                               (long long)c->o.lag_critical);
    return KEEL_HEALTH_CRITICAL;
  }
  if (st.lag >= c->o.lag_warning) {
    keel_health_result_message(res, "%lld events behind (warning at %lld)", (long long)st.lag,
                               (long long)c->o.lag_warning);
    return KEEL_HEALTH_WARNING;
  }
  if (st.db_breaker != KEEL_SUB_BREAKER_CLOSED) {
    keel_health_result_message(res, "database circuit breaker open: %d failures in a row",
                               st.db_errors);
    return KEEL_HEALTH_WARNING;
  }
  if (st.breaker != KEEL_SUB_BREAKER_CLOSED) {
    keel_health_result_message(res, "circuit breaker %s: the handler keeps failing",
                               keel_sub_breaker_name(st.breaker));
    return KEEL_HEALTH_WARNING;
  }
  if ((double)st.failures_last_minute > c->o.errors_per_minute) {
    keel_health_result_message(res, "%llu failed attempts in the last minute",
                               (unsigned long long)st.failures_last_minute);
    return KEEL_HEALTH_WARNING;
  }
  if (st.parked) {
    keel_health_result_message(res, "%llu parked events", (unsigned long long)st.parked);
    return KEEL_HEALTH_WARNING;
  }
  if (st.state == KEEL_SUB_PAUSED) {
    keel_health_result_message(res, "paused");
    return KEEL_HEALTH_WARNING;
  }
  if (st.state == KEEL_SUB_RETIRED) {
    keel_health_result_message(res, "retired by a blue/green switch: runs nothing");
    return KEEL_HEALTH_WARNING;
  }
  return KEEL_HEALTH_OK;
}

int keel_sub_health_register(const char *name, const keel_sub_health_opts *o) {
  if (!keel__sub_name_ok(name)) return KEEL_EINVAL;
  sub_check *c = calloc(1, sizeof *c);
  if (!c) return KEEL_ENOMEM;
  snprintf(c->name, sizeof c->name, "%s", name);
  if (o) c->o = *o;
  if (!c->o.lag_warning) c->o.lag_warning = 5000;
  if (!c->o.lag_critical) c->o.lag_critical = 50000;
  if (c->o.errors_per_minute <= 0) c->o.errors_per_minute = 10;
  char check[112];
  snprintf(check, sizeof check, "sub.%s", name);
  keel_health_check hc = {
      .name = check, .fn = sub_health, .ud = c, .ud_free = free, .required = c->o.hold_readiness};
  int rc = keel_health_register_check(&hc);
  if (rc) free(c);
  return rc;
}
