/* keel/alert_sink.h - alert delivery: every alert keel raises (keel/alerts.h),
 * posted to a webhook (Slack, Discord, a generic JSON receiver signed with
 * HMAC-SHA256) or to Prometheus Alertmanager, through the HTTP client.
 *
 * A sink is one keel process subscribed to the alert manager. Alerts wait in
 * the sink's bounded queue (the oldest is dropped and counted when it is
 * full), so the process that raised an alert never waits for delivery; the
 * sink posts them one at a time, with the client's retries (connection
 * errors, 502/503/504/429, backoff with jitter, Retry-After) and a cooldown
 * per alert (its type, process and severity): an alert that fires again
 * within the cooldown is not sent again, and neither is its resolution. A
 * sink may take only alerts at or above a minimum severity (the test alert,
 * which is info, always goes through: it checks the path).
 *
 * Alertmanager forgets a firing alert that is not sent again: each firing
 * alert is posted with endsAt four re-send intervals ahead and re-sent every
 * interval until keel resolves it (what Prometheus itself does), so a node
 * that dies leaves alerts that resolve by themselves a few minutes later
 * instead of firing forever, and a live node's alerts never lapse.
 *
 *   keel_alert_sink_opts o = {.format = KEEL_ALERT_SINK_SLACK,
 *                             .url = "https://hooks.slack.com/services/..."};
 *   keel_alert_sink *s;
 *   keel_alert_sink_start(&o, &s);   // after keel_alerts_start
 *
 * Bodies (docs/alerts.md#delivery has them in full):
 *   JSON          {"event":"triggered","service":"orders","alert":{"id":...,"type":...,
 *                  "process":...,"threshold":...,"value":...,"message":...,
 *                  "time":"...","resolvedAt":null}}; with a secret, the header
 *                  X-Keel-Signature: sha256=<hex HMAC-SHA256 of the body>
 *   Slack         {"text":"[FIRING] high_error_rate (critical) on orders: <message>"}
 *   Discord       {"content":"[RESOLVED] high_error_rate (critical) on orders: <message>"}
 *   Alertmanager  POST <url>/api/v2/alerts [{"labels":{"alertname":...,"service":...,
 *                  "severity":...,"process":...},"annotations":{"summary":...},
 *                  "startsAt":...,"endsAt":...}] (firing: four re-send intervals ahead;
 *                  resolved: when it resolved)
 *   PagerDuty     Events API v2 (url: https://events.pagerduty.com/v2/enqueue)
 *                  {"routing_key":...,"event_action":"trigger"|"resolve",
 *                   "dedup_key":"<service>:<type>:<pid>","payload":{"summary":...,
 *                   "source":...,"severity":"critical","timestamp":...}}
 */
#ifndef KEEL_ALERT_SINK_H
#define KEEL_ALERT_SINK_H

#include <stddef.h>
#include <stdint.h>

#include "keel/alerts.h"
#include "keel/http_client.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct keel_alert_sink keel_alert_sink;

typedef enum keel_alert_sink_format {
  KEEL_ALERT_SINK_JSON = 1,
  KEEL_ALERT_SINK_SLACK = 2,
  KEEL_ALERT_SINK_DISCORD = 3,
  KEEL_ALERT_SINK_ALERTMANAGER = 4,
  KEEL_ALERT_SINK_PAGERDUTY = 5,
} keel_alert_sink_format;

/* "json", "slack", "discord", "alertmanager", "pagerduty" <-> the enum; 0 for
 * an unknown name. */
keel_alert_sink_format keel_alert_sink_format_parse(const char *name);

typedef struct keel_alert_sink_opts {
  keel_alert_sink_format format; /* required */
  const char *url;               /* the webhook; Alertmanager: its base URL (required; copied) */
  const char *secret;            /* JSON format: sign bodies with it; NULL: unsigned. PagerDuty: the
                                    integration's routing key (required). Copied */
  const char *service;      /* the service named in messages and labels; NULL: "keel" (copied) */
  int64_t cooldown_ms;      /* per alert type and process; 0: 900000 (15 min); < 0: none */
  size_t queue_max;         /* alerts waiting; 0: 100 */
  int max_retries;          /* per alert, as keel_http_client_req; 0: 3; < 0: none */
  keel_http_client *client; /* borrowed, outlives the sink; NULL: the sink makes its own */
  keel_alert_severity min_severity; /* alerts below it are not sent (counted as filtered);
                                       0: info, everything. The test alert always goes */
  int64_t resend_ms; /* Alertmanager: re-send firing alerts this often; 0: 60000; < 0:
                        never, and no endsAt (Alertmanager's resolve_timeout decides) */
} keel_alert_sink_opts;

/* Starts a sink (a process subscribed to the alert manager, which must be
 * running). *out is the caller's: keel_alert_sink_stop. From a process.
 * Errors: KEEL_EINVAL (no format or url), KEEL_ESTATE (no alert manager),
 * KEEL_ENOMEM, KEEL_ENOTPROC. */
int keel_alert_sink_start(const keel_alert_sink_opts *o, keel_alert_sink **out);

/* Stops the sink (alerts still queued are dropped and counted) and frees
 * it. From a process. NULL is accepted. */
void keel_alert_sink_stop(keel_alert_sink *s);

/* Queues one alert event (KEEL_ALERTS_EV_TRIGGERED or _RESOLVED) as if the
 * manager had sent it: for a test alert from an admin endpoint, and tests.
 * Never waits. Errors: KEEL_EINVAL, KEEL_ENOMEM, KEEL_ENOPROC (stopped). Any thread. */
int keel_alert_sink_push(keel_alert_sink *s, int event, const keel_alert *a);

/* Queues a test alert (type KEEL_ALERT_TEST, "Test alert from <service>:
 * alert delivery works", triggered now) on the sink, for a deployment
 * checklist. Errors as keel_alert_sink_push. Any thread. */
int keel_alert_sink_test(keel_alert_sink *s);

typedef struct keel_alert_sink_stats {
  uint64_t sent;       /* posted and answered 2xx */
  uint64_t failed;     /* gave up after the retries */
  uint64_t dropped;    /* pushed out of a full queue, or queued at stop */
  uint64_t suppressed; /* held back by the cooldown */
  uint64_t filtered;   /* below min_severity */
  uint64_t resent;     /* Alertmanager: firing alerts posted again (not counted in sent) */
} keel_alert_sink_stats;

/* Counters so far. Any thread. */
void keel_alert_sink_stats_get(const keel_alert_sink *s, keel_alert_sink_stats *out);

/* Starts the sinks the environment asks for, each at most once:
 *   ALERT_WEBHOOK_URL + ALERT_WEBHOOK_FORMAT (json, slack, discord, pagerduty;
 *   default json) + ALERT_WEBHOOK_SECRET (json: the signing key; pagerduty:
 *   the routing key) + ALERT_WEBHOOK_MIN_SEVERITY (info, warning, critical;
 *   default info), and ALERTMANAGER_URL + ALERTMANAGER_MIN_SEVERITY +
 *   ALERTMANAGER_RESEND_MS (default 60000);
 *   ALERT_COOLDOWN_MS for both. service names them in messages.
 * Up to max sinks go to out; returns how many were started (0: none asked
 * for) or a negative KEEL_E* (KEEL_EINVAL: ALERT_WEBHOOK_FORMAT or a
 * severity unknown, ALERT_COOLDOWN_MS or ALERTMANAGER_RESEND_MS not a
 * whole number of ms in range; keel_service_main checks them first and
 * names the variable). */
int keel_alert_sinks_from_env(const char *service, keel_alert_sink **out, size_t max);

#ifdef __cplusplus
}
#endif
#endif
