/* admin_internal.h - what the admin port's files share (not installed).
 *
 * admin.c builds the router and guards every route (the token, the action
 * rate limit); admin_read.c answers the reads (overview, processes, tree,
 * alerts, logs, HTTP, panels); admin_actions.c the actions (kill, child
 * restart and terminate, log level); admin_events.c the event stream;
 * admin_recorder.c keeps the recent alerts and restarts; dashboard.c serves
 * the page. Their one shared object is the port's state, below: it lives as
 * long as the admin server (freed with it) and the recorder process, which
 * hold one reference each.
 */
#ifndef KEEL_HTTP_ADMIN_INTERNAL_H
#define KEEL_HTTP_ADMIN_INTERNAL_H

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "http/middleware.h"
#include "keel/alerts.h"
#include "keel/http.h"
#include "keel/log.h"
#include "keel/observer.h"

#define KEEL__ADMIN_RECENT 50 /* recent alerts and restarts kept */

/* One recent restart (a child_restarted or intensity_exceeded event). */
typedef struct keel__admin_restart {
  keel_observer_event ev;
} keel__admin_restart;

/* One recent alert event. */
typedef struct keel__admin_alert_ev {
  int kind; /* KEEL_ALERTS_EV_TRIGGERED / _RESOLVED */
  keel_alert alert;
} keel__admin_alert_ev;

typedef struct keel__admin {
  atomic_int refs;
  char *token; /* NULL: actions off */
  bool read_open;
  int max_streams;
  size_t stream_max_queued;
  int64_t stats_interval_ms;
  char *service, *version;
  keel_metrics *metrics;
  keel__ratelimit *rl; /* actions per client; NULL: none */
  atomic_int streams;  /* event streams open now */
  /* the route wrappers (admin.c), freed with the state */
  void **wraps;
  size_t nwraps, capwraps;
  /* the overview's rates: the previous sample (mu) */
  pthread_mutex_t mu;
  uint64_t last_ns, last_msgs;
  uint64_t last_idle[64];
  double last_rate;
  /* the recorder (admin_recorder.c), rings under mu */
  keel_pid_t recorder;
  keel__admin_restart restarts[KEEL__ADMIN_RECENT];
  size_t nrestarts, restart_next;
  keel__admin_alert_ev alerts[KEEL__ADMIN_RECENT];
  size_t nalerts, alert_next;
} keel__admin;

void keel__admin_unref(keel__admin *a);

/* admin.c: the request guard's outcome for a route kind. */
enum { KEEL__ADMIN_OPEN = 0, KEEL__ADMIN_READ = 1, KEEL__ADMIN_ACTION = 2 };

/* admin_read.c, admin_actions.c, admin_events.c, dashboard.c: their routes
 * (add(r, method, pattern, fn, kind) wraps each in the guard). */
typedef int (*keel__admin_add_fn)(keel__admin *a, keel_http_router *r, const char *method,
                                  const char *pattern, keel_http_handler fn, int kind);
int keel__admin_read_routes(keel__admin *a, keel_http_router *r, keel__admin_add_fn add);
int keel__admin_action_routes(keel__admin *a, keel_http_router *r, keel__admin_add_fn add);
int keel__admin_event_routes(keel__admin *a, keel_http_router *r, keel__admin_add_fn add);
int keel__admin_dashboard_routes(keel__admin *a, keel_http_router *r, keel__admin_add_fn add);

/* dashboard_assets.c, generated at build time by cmake/embed.cmake from
 * src/http/dashboard/: the page's three files. */
extern const unsigned char keel__dash_index_html[], keel__dash_app_js[], keel__dash_app_css[];
extern const size_t keel__dash_index_html_len, keel__dash_app_js_len, keel__dash_app_css_len;

/* admin_read.c: pieces the event stream shares. */
json_t *keel__admin_pid_json(keel_pid_t pid);
/* A pid from text: "<0.12.3>", "0.12.3" or a registered name; 0 if none lives. */
keel_pid_t keel__admin_pid_parse(const char *text);
/* The 1 Hz stats object (cheap: no process walk). prev_* hold the caller's
 * previous sample (zeroed the first time) and are updated. */
typedef struct keel__admin_sample {
  uint64_t ns, msgs;
  uint64_t idle[64];
} keel__admin_sample;
json_t *keel__admin_stats_json(keel__admin *a, keel__admin_sample *prev);
json_t *keel__admin_observer_event_json(const keel_observer_event *ev);
json_t *keel__admin_alert_json(int kind, const keel_alert *al);
json_t *keel__admin_log_line_json(const keel_log_recent_line *l);

/* admin_panels.c: the list, and one panel called ({name,title,data}; NULL: none) */
json_t *keel__admin_panels_list(void);
json_t *keel__admin_panel_call(const char *name);

/* admin_recorder.c */
int keel__admin_recorder_start(keel__admin *a);
void keel__admin_recorder_stop(keel__admin *a);
json_t *keel__admin_recent_restarts(keel__admin *a);
json_t *keel__admin_recent_alerts(keel__admin *a);

#endif
