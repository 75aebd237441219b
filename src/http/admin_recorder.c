/* admin_recorder.c - the recent restarts and alerts the admin port shows.
 *
 * The observer relays restarts and the alert manager alerts as they happen,
 * to processes; nothing keeps the last few. So the admin port runs one small
 * process (label "admin_recorder") that subscribes to both and keeps the
 * last KEEL__ADMIN_RECENT of each in rings in the port's state (under its
 * mutex), for GET /admin/tree's recent_restarts and GET /admin/alerts's
 * recent. It holds a reference to the state; the server's end sends it a
 * shutdown and it lets go when it exits. Without an observer or an alert
 * manager running it records nothing of that kind (and says so in neither
 * place: the lists are just empty).
 */
#include <string.h>

#include "http/admin_internal.h"
#include "keel/alerts.h"
#include "keel/error.h"
#include "keel/message.h"
#include "keel/observer.h"
#include "keel/process.h"
#include "keel/runtime.h"

static void recorder_exit(void *arg) {
  keel__admin_unref(arg);
}

static void record(keel__admin *a, keel_msg_t *m) {
  keel_alert al;
  int kind = keel_alert_msg(m, &al);
  pthread_mutex_lock(&a->mu);
  if (kind == KEEL_ALERTS_EV_TRIGGERED || kind == KEEL_ALERTS_EV_RESOLVED) {
    a->alerts[a->alert_next] = (keel__admin_alert_ev){kind, al};
    a->alert_next = (a->alert_next + 1) % KEEL__ADMIN_RECENT;
    if (a->nalerts < KEEL__ADMIN_RECENT) a->nalerts++;
  } else if (keel_msg_tag(m) == KEEL_OBSERVER_TAG_EVENT &&
             keel_msg_size(m) == sizeof(keel_observer_event)) {
    memcpy(&a->restarts[a->restart_next].ev, keel_msg_data(m), sizeof(keel_observer_event));
    a->restart_next = (a->restart_next + 1) % KEEL__ADMIN_RECENT;
    if (a->nrestarts < KEEL__ADMIN_RECENT) a->nrestarts++;
  }
  pthread_mutex_unlock(&a->mu);
}

static void recorder_main(void *arg) {
  keel__admin *a = arg;
  keel_on_exit(recorder_exit, a);
  if (keel_observer_running())
    keel_observer_subscribe(keel_self(), KEEL_OBS_CHILD_RESTARTED | KEEL_OBS_INTENSITY_EXCEEDED, 0);
  if (keel_alerts_running()) keel_alerts_subscribe(keel_self());
  for (;;) {
    keel_msg_t *m;
    if (keel_receive(&m, KEEL_INFINITY) != 0) return;
    if (keel_msg_kind_of(m) == KEEL_MSG_USER) record(a, m);
    keel_msg_free(m);
  }
}

int keel__admin_recorder_start(keel__admin *a) {
  keel_spawn_opts o;
  keel_spawn_opts_init(&o);
  o.name = "admin_recorder";
  atomic_fetch_add_explicit(&a->refs, 1, memory_order_relaxed); /* the recorder's */
  int rc = keel_spawn(recorder_main, a, &o, &a->recorder);
  if (rc) {
    atomic_fetch_sub_explicit(&a->refs, 1, memory_order_relaxed);
    a->recorder = 0;
  }
  return rc;
}

void keel__admin_recorder_stop(keel__admin *a) {
  if (a && a->recorder) keel_exit_signal(a->recorder, KEEL_REASON_SHUTDOWN, NULL);
}

json_t *keel__admin_observer_event_json(const keel_observer_event *ev) {
  return json_pack("{s:s, s:I, s:o, s:o, s:o, s:s, s:s, s:s, s:s, s:s, s:i, s:I}", "kind",
                   keel_observer_kind_name(ev->kind), "time_ms", (json_int_t)ev->time_ms, "pid",
                   keel__admin_pid_json(ev->pid), "parent", keel__admin_pid_json(ev->parent),
                   "supervisor", keel__admin_pid_json(ev->supervisor), "name", ev->name, "sup_name",
                   ev->sup_name, "child_id", ev->child_id, "reason", keel_reason_name(ev->reason),
                   "reason_text", ev->reason_text, "attempt", (int)ev->attempt, "dropped",
                   (json_int_t)ev->dropped);
}

json_t *keel__admin_alert_json(int kind, const keel_alert *al) {
  return json_pack("{s:s, s:s, s:s, s:o, s:s, s:f, s:f, s:s, s:I, s:I}", "event",
                   kind == KEEL_ALERTS_EV_RESOLVED ? "resolved" : "triggered", "id", al->id, "type",
                   keel_alert_type_name(al->type), "pid", keel__admin_pid_json(al->pid), "name",
                   al->name, "threshold", al->threshold, "value", al->value, "message", al->message,
                   "time_ms", (json_int_t)al->time_ms, "resolved_ms", (json_int_t)al->resolved_ms);
}

/* Newest first. */
json_t *keel__admin_recent_restarts(keel__admin *a) {
  json_t *v = json_array();
  pthread_mutex_lock(&a->mu);
  for (size_t i = 0; i < a->nrestarts; i++) {
    size_t at = (a->restart_next + KEEL__ADMIN_RECENT - 1 - i) % KEEL__ADMIN_RECENT;
    json_array_append_new(v, keel__admin_observer_event_json(&a->restarts[at].ev));
  }
  pthread_mutex_unlock(&a->mu);
  return v;
}

json_t *keel__admin_recent_alerts(keel__admin *a) {
  json_t *v = json_array();
  pthread_mutex_lock(&a->mu);
  for (size_t i = 0; i < a->nalerts; i++) {
    size_t at = (a->alert_next + KEEL__ADMIN_RECENT - 1 - i) % KEEL__ADMIN_RECENT;
    json_array_append_new(v, keel__admin_alert_json(a->alerts[at].kind, &a->alerts[at].alert));
  }
  pthread_mutex_unlock(&a->mu);
  return v;
}
