/* admin_events.c - GET /admin/events: the dashboard's one live stream
 * (Server-Sent Events).
 *
 * Each stream is its request's handler process, writing a streamed answer
 * (keel_http_stream_begin, stream.c) until the client goes away or the
 * server stops. It subscribes itself to the observer (process started and
 * exited, child restarted, intensity exceeded) and to the alert manager,
 * follows the logger's ring of recent lines (keel_log_recent, every 250 ms)
 * and makes a stats event every stats_interval_ms (default 1 s) from the
 * runtime's counters: no process walk, so a node with 100,000 processes
 * pays the same as an empty one. What one wake-up produced goes out as one
 * write.
 *
 * Events ("event: <name>\ndata: <one line of JSON>\n\n"): hello (once:
 * service, version, whether actions are on), stats, process (started or
 * exited), restart (child restarted or intensity exceeded), alert, log.
 *
 * Bounds (docs/decisions/0023). At most max_streams streams at once (a
 * dashboard left open in many tabs, or a script, cannot take the node's
 * memory): more are refused with 503. A client that does not read is cut off
 * once stream_max_queued bytes wait for it (stream.c: the kernel's send
 * buffer is set to the same size), never buffered without limit; a client
 * that disconnects (even in the middle of an event) is noticed at the next
 * write, at most one stats period later, and its process, subscriptions and
 * slot are released. The observer drops what a stream cannot take in time
 * (and counts it: each event carries "dropped").
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/admin_internal.h"
#include "http/http_internal.h"
#include "keel/alerts.h"
#include "keel/error.h"
#include "keel/log.h"
#include "keel/message.h"
#include "keel/observer.h"
#include "keel/process.h"
#include "keel/runtime.h"
#include "ops/json_write.h"

#define LOG_POLL_MS   250
#define LOG_BATCH_MAX 200

static void stream_slot_free(void *arg) {
  keel__admin *a = arg;
  atomic_fetch_sub_explicit(&a->streams, 1, memory_order_relaxed);
}

/* Appends one event to b (the JSON is stolen). */
static void put_event(keel__jw *b, const char *name, json_t *j) {
  if (!j) return;
  char *text = json_dumps(j, JSON_COMPACT);
  json_decref(j);
  if (!text) {
    b->oom = true;
    return;
  }
  KEEL__JW_LIT(b, "event: ");
  keel__jw_put(b, name, strlen(name));
  KEEL__JW_LIT(b, "\ndata: ");
  keel__jw_put(b, text, strlen(text));
  KEEL__JW_LIT(b, "\n\n");
  free(text);
}

static void put_message(keel__jw *b, keel_msg_t *m) {
  keel_alert al;
  int kind = keel_alert_msg(m, &al);
  if (kind == KEEL_ALERTS_EV_TRIGGERED || kind == KEEL_ALERTS_EV_RESOLVED) {
    put_event(b, "alert", keel__admin_alert_json(kind, &al));
    return;
  }
  if (keel_msg_tag(m) != KEEL_OBSERVER_TAG_EVENT || keel_msg_size(m) != sizeof(keel_observer_event))
    return;
  const keel_observer_event *ev = keel_msg_data(m);
  bool restart = ev->kind == KEEL_OBS_CHILD_RESTARTED || ev->kind == KEEL_OBS_INTENSITY_EXCEEDED;
  put_event(b, restart ? "restart" : "process", keel__admin_observer_event_json(ev));
}

static uint64_t put_logs(keel__jw *b, uint64_t since, keel_log_level level) {
  keel_log_recent_line *v;
  size_t n;
  if (keel_log_recent(since, level, LOG_BATCH_MAX, &v, &n) != 0) return since;
  for (size_t i = 0; i < n; i++)
    put_event(b, "log", keel__admin_log_line_json(&v[i]));
  uint64_t next = n ? v[n - 1].seq + 1 : since;
  keel_log_recent_free(v, n);
  /* lines below our level move the cursor too, so they are not read again */
  uint64_t last = keel_log_recent_last();
  return last > next ? last : next;
}

static int64_t mono_ms(void) {
  return (int64_t)(keel__http_now_ns() / 1000000u);
}

static int h_events(keel_http_req *req, keel_http_res *res, void *ud) {
  keel__admin *a = ud;
  keel_log_level level = KEEL_LOG_TRACE;
  const char *lv = keel_http_query_param(req, "level");
  if (lv && (keel_log_level_parse(lv, &level) != 0))
    return keel_http_fail(res, KEEL_HTTP_VALIDATION,
                          "level must be one of trace, debug, info, warn, error, fatal, off", NULL);
  if (atomic_fetch_add_explicit(&a->streams, 1, memory_order_relaxed) >= a->max_streams) {
    atomic_fetch_sub_explicit(&a->streams, 1, memory_order_relaxed);
    keel_http_set_header(res, "Retry-After", "5");
    return keel_http_fail(res, KEEL_HTTP_UNAVAILABLE,
                          "too many event streams are open (ADMIN_MAX_STREAMS)", NULL);
  }
  keel_on_exit(stream_slot_free, a); /* however the process ends */
  int rc =
      keel_http_stream_begin(req, 200, "text/event-stream; charset=utf-8", a->stream_max_queued);
  if (rc) return 0; /* the client is gone, or the server stops */
  keel_pid_t self = keel_self();
  if (keel_observer_running())
    keel_observer_subscribe(self,
                            KEEL_OBS_PROC_STARTED | KEEL_OBS_PROC_EXITED |
                                KEEL_OBS_CHILD_RESTARTED | KEEL_OBS_INTENSITY_EXCEEDED,
                            0);
  if (keel_alerts_running()) keel_alerts_subscribe(self);

  keel__admin_sample sample = {0};
  json_decref(keel__admin_stats_json(a, &sample)); /* the first sample: rates from here on */
  uint64_t cursor = keel_log_recent_last();
  keel__jw b = {0};
  KEEL__JW_LIT(&b, "retry: 2000\n\n");
  put_event(&b, "hello",
            json_pack("{s:s, s:s, s:b, s:I}", "service", a->service, "version", a->version,
                      "actions", a->token != NULL, "stats_interval_ms",
                      (json_int_t)a->stats_interval_ms));
  int64_t next_stats = mono_ms(), next_logs = mono_ms() + LOG_POLL_MS;
  while (rc == 0) {
    int64_t now = mono_ms();
    if (now >= next_stats) {
      put_event(&b, "stats", keel__admin_stats_json(a, &sample));
      next_stats = now + a->stats_interval_ms;
    }
    if (now >= next_logs) {
      cursor = put_logs(&b, cursor, level);
      next_logs = now + LOG_POLL_MS;
    }
    if (b.oom) break;
    if (b.len) {
      rc = keel_http_stream_write(req, b.p, b.len);
      b.len = 0;
      if (rc) break;
    }
    int64_t wait = (next_stats < next_logs ? next_stats : next_logs) - mono_ms();
    keel_msg_t *m = NULL;
    int r = keel_receive(&m, wait > 0 ? wait : KEEL_NOWAIT);
    while (r == 0) { /* everything waiting now, in one write */
      if (keel_msg_kind_of(m) == KEEL_MSG_USER) put_message(&b, m);
      keel_msg_free(m);
      if (b.len > 64 * 1024) break;
      r = keel_receive(&m, KEEL_NOWAIT);
    }
  }
  free(b.p);
  if (keel_observer_running()) keel_observer_unsubscribe(self);
  if (keel_alerts_running()) keel_alerts_unsubscribe(self);
  return 0;
}

int keel__admin_event_routes(keel__admin *a, keel_http_router *r, keel__admin_add_fn add) {
  return add(a, r, "GET", "/admin/events", h_events, KEEL__ADMIN_READ);
}
