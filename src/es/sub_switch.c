/* sub_switch.c - blue/green rebuilds of a projection (keel_sub_switch,
 * keel_sub_replaying; keel/subscription.h).
 *
 * The new version is an ordinary subscription the caller started beside
 * the live one; this file only does the switch, in an order that loses
 * nothing: wait until the new version is caught up (so the pause that
 * follows is short), pause the live one (it hands out nothing more after
 * the pause call returns: calls are served between events), wait until the
 * new one's checkpoint has passed the live one's, run the caller's cutover
 * in one transaction, stop the live one. Any failure before the cutover
 * commits resumes the live version: readers keep the old read model.
 *
 * It waits by reading the status board every 10 ms rather than by
 * subscribing to changes: a switch is rare, and the board never waits
 * behind a handler.
 */
#include <string.h>

#include "es/es_internal.h"
#include "keel/error.h"
#include "keel/log.h"
#include "keel/process.h"
#include "keel/runtime.h"
#include "keel/subscription.h"
#include "keel/timer.h"

enum { SWITCH_POLL_MS = 10 };

typedef struct clock_budget {
  int64_t deadline; /* monotonic ms; -1: none */
} clock_budget;

static int64_t now_ms(void) {
  return (int64_t)(keel__es_now_s() * 1000.0);
}

static bool expired(const clock_budget *b) {
  return b->deadline >= 0 && now_ms() >= b->deadline;
}

/* Waits until `name`'s status passes pred (with arg). */
static int wait_status(const char *name, bool (*pred)(const keel_sub_status *, int64_t),
                       int64_t arg, const clock_budget *b) {
  for (;;) {
    keel_sub_status st;
    int rc = keel_sub_status_get(name, &st);
    if (rc) return rc;
    if (pred(&st, arg)) return 0;
    if (expired(b)) return KEEL_ETIMEDOUT;
    keel_sleep(SWITCH_POLL_MS);
  }
}

static bool is_caught_up(const keel_sub_status *st, int64_t unused) {
  (void)unused;
  return st->caught_up && st->lag == 0;
}

static bool has_passed(const keel_sub_status *st, int64_t pos) {
  return st->checkpoint >= pos;
}

int keel_sub_switch(const keel_sub_switch_opts *o) {
  if (!o || !o->es || !o->live || !o->next || !o->cutover || strcmp(o->live, o->next) == 0 ||
      (o->timeout_ms < 0 && o->timeout_ms != KEEL_INFINITY))
    return KEEL_EINVAL;
  clock_budget b = {.deadline = o->timeout_ms == 0 || o->timeout_ms == KEEL_INFINITY
                                    ? -1
                                    : now_ms() + o->timeout_ms};
  keel_sub_status live;
  int rc = keel_sub_status_get(o->live, &live);
  if (rc == 0) rc = keel_sub_status_get(o->next, NULL);
  if (rc) return rc;
  keel_log_info(NULL, "subscription switch: waiting for the new version to catch up",
                KEEL_STR("live", o->live), KEEL_STR("next", o->next));
  if ((rc = wait_status(o->next, is_caught_up, 0, &b)) != 0) return rc;
  if ((rc = keel_sub_pause(o->live)) != 0) return rc;
  /* paused: the live version hands nothing out after this, so its
   * checkpoint is final */
  rc = keel_sub_status_get(o->live, &live);
  if (rc == 0) rc = wait_status(o->next, has_passed, live.checkpoint, &b);
  if (rc == 0) rc = keel_es_transact(o->es, NULL, 0, NULL, NULL, o->cutover, o->ud);
  if (rc) {
    keel_log_warn(NULL, "subscription switch failed: the live version goes on",
                  KEEL_STR("live", o->live), KEEL_STR("next", o->next),
                  KEEL_STR("error", keel_strerror(rc)));
    keel_sub_resume(o->live);
    return rc;
  }
  keel_log_info(NULL, "subscription switch: cut over, stopping the old version",
                KEEL_STR("live", o->live), KEEL_STR("next", o->next),
                KEEL_INT("checkpoint", live.checkpoint));
  rc = keel_sub_stop(o->live, 0);
  return rc == KEEL_ENOPROC ? 0 : rc;
}

bool keel_sub_replaying(const char *live, const keel_es_event *ev) {
  keel_sub_status st;
  return ev && keel_sub_status_get(live, &st) == 0 && st.checkpoint >= ev->position;
}
