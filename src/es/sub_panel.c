/* sub_panel.c - the subscriptions' panel on the dashboard
 * (keel_admin_panel_register, keel/http.h): one row per subscription running
 * in this node with its state, lag, events handled per second, parked
 * events, failures in the last minute and breakers.
 *
 * It reads the status board (sub_board.c), which every subscription keeps
 * up to date as it goes, so the panel never waits behind a handler, as a
 * panel provider must not. Events per second is the change of `handled`
 * over the time since the previous reading of the panel (any viewer's), as
 * the admin overview's messages per second: the first reading, and one less
 * than a second after the previous, shows the last rate computed (null
 * before there is one). keel_sub_admin_routes registers the panel, as it is
 * where a node attaches its subscriptions to the admin port.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "es/es_internal.h"
#include "keel/http.h"

#define RATE_MIN_NS  1000000000ull /* a shorter interval keeps the previous rate */
#define RATE_ENTRIES 64            /* subscriptions whose rate is kept; more show null */

typedef struct rate_entry {
  char name[64];
  uint64_t handled, ns;
  double rate;
  bool has_rate;
} rate_entry;

static pthread_mutex_t rate_mu = PTHREAD_MUTEX_INITIALIZER;
static rate_entry rates[RATE_ENTRIES];
static size_t nrates;

static uint64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The events/s of `name` given its handled count now: a new JSON number, or
 * null before two readings a second apart. */
static json_t *rate_of(const char *name, uint64_t handled, uint64_t now) {
  pthread_mutex_lock(&rate_mu);
  rate_entry *e = NULL;
  for (size_t i = 0; i < nrates && !e; i++)
    if (strcmp(rates[i].name, name) == 0) e = &rates[i];
  if (!e && nrates < RATE_ENTRIES) {
    e = &rates[nrates++];
    memset(e, 0, sizeof *e);
    strncpy(e->name, name, sizeof e->name - 1);
    e->handled = handled;
    e->ns = now;
  }
  json_t *v = NULL;
  if (e) {
    /* a restarted subscription counts from 0 again: no negative rate */
    if (handled < e->handled) e->handled = handled, e->ns = now;
    if (now - e->ns >= RATE_MIN_NS) {
      e->rate = (double)(handled - e->handled) * 1e9 / (double)(now - e->ns);
      e->has_rate = true;
      e->handled = handled;
      e->ns = now;
    }
    if (e->has_rate) v = json_real(e->rate);
  }
  pthread_mutex_unlock(&rate_mu);
  return v ? v : json_null();
}

static char *sub_panel(void *ud) {
  (void)ud;
  json_t *board = keel__sub_board_json();
  if (!board) return NULL;
  json_t *rows = json_array();
  uint64_t now = mono_ns();
  size_t i;
  json_t *s;
  json_array_foreach(board, i, s) {
    const char *name = json_string_value(json_object_get(s, "name"));
    json_t *row = json_pack(
        "{s:s, s:O, s:O, s:O, s:o, s:O, s:O, s:O}", "subscription", name, "state",
        json_object_get(s, "state"), "lag", json_object_get(s, "lag"), "lag_seconds",
        json_object_get(s, "lag_seconds"), "events_per_sec",
        rate_of(name, (uint64_t)json_integer_value(json_object_get(s, "handled")), now), "parked",
        json_object_get(s, "parked"), "failures_last_minute",
        json_object_get(s, "failures_last_minute"), "breaker", json_object_get(s, "breaker"));
    if (row) json_array_append_new(rows, row);
  }
  json_decref(board);
  char *text = json_dumps(rows, JSON_COMPACT);
  json_decref(rows);
  return text;
}

int keel__sub_panel_register(void) {
  return keel_admin_panel_register("subscriptions", "Subscriptions", sub_panel, NULL);
}
