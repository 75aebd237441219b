/* alert_sink.c - alerts delivered to people: a process per sink that takes
 * the alert manager's messages (keel/alerts.h) and posts them with the HTTP
 * client (keel/http_client.h) as a Slack or Discord message, a signed JSON
 * webhook or Alertmanager API v2 alerts.
 *
 * The alert manager sends each alert to its subscribers as a message and
 * never waits. The sink process moves messages from its mailbox into a
 * bounded queue of its own (full: the oldest goes and is counted), and
 * between two messages posts the queue's head; so while a post waits or
 * retries, alerts pile up in the queue and nowhere else grows without bound
 * for long. Delivery is at most once per alert: after the client's retries
 * a failed post is counted and dropped, because a backlog of stale alerts
 * helps nobody. The cooldown (per alert type and process) holds back an
 * alert that fires again too soon, and the resolution of an alert that was
 * held back.
 *
 * This lives in the http layer, above ops where alerts are made, because it
 * needs the client; ops knows nothing of it (it only has subscribers).
 */
#include <errno.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "keel/alert_sink.h"
#include "keel/error.h"
#include "keel/log.h"
#include "keel/message.h"
#include "keel/process.h"
#include "keel/timer.h"

#define MSG_STOP 0x4b4c5301u

struct keel_alert_sink {
  keel_alert_sink_opts o;
  char *url, *secret, *service;
  keel_http_client *client;
  bool own_client;
  keel_pid_t pid;
  atomic_uint_fast64_t sent, failed, dropped, suppressed, filtered, resent;
};

typedef struct queued {
  int event;
  keel_alert a;
} queued;

typedef struct cool {
  struct cool *next;
  keel_alert_type type;
  keel_alert_severity severity; /* an escalation (degraded, then unhealthy) is a new alert */
  keel_pid_t pid;
  int64_t sent_ms;
  bool held; /* its last trigger was held back: hold its resolution too */
} cool;

keel_alert_sink_format keel_alert_sink_format_parse(const char *name) {
  if (!name) return 0;
  if (strcmp(name, "json") == 0) return KEEL_ALERT_SINK_JSON;
  if (strcmp(name, "slack") == 0) return KEEL_ALERT_SINK_SLACK;
  if (strcmp(name, "discord") == 0) return KEEL_ALERT_SINK_DISCORD;
  if (strcmp(name, "alertmanager") == 0) return KEEL_ALERT_SINK_ALERTMANAGER;
  if (strcmp(name, "pagerduty") == 0) return KEEL_ALERT_SINK_PAGERDUTY;
  return 0;
}

/* ---- bodies ----------------------------------------------------------------------- */

static void iso_time(int64_t ms, char out[32]) {
  time_t s = (time_t)(ms / 1000);
  struct tm tm;
  gmtime_r(&s, &tm);
  size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(out + n, 32 - n, ".%03dZ", (int)(ms % 1000));
}

static int64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *sev(const keel_alert *a) {
  return keel_alert_severity_name(a->severity ? a->severity : keel_alert_type_severity(a->type));
}

static json_t *process_json(const keel_alert *a) {
  if (!a->pid) return json_null();
  char pid[24];
  keel_pid_format(a->pid, pid, sizeof pid);
  return json_pack("{s:s, s:s}", "pid", pid, "name", a->name);
}

static char *body_json(const keel_alert_sink *s, int ev, const keel_alert *a) {
  char t[32], r[32];
  iso_time(a->time_ms, t);
  if (a->resolved_ms) iso_time(a->resolved_ms, r);
  json_t *alert =
      json_pack("{s:s, s:s, s:s, s:o, s:f, s:f, s:s, s:s, s:o}", "id", a->id, "type",
                keel_alert_type_name(a->type), "severity", sev(a), "process", process_json(a),
                "threshold", a->threshold, "value", a->value, "message", a->message, "time", t,
                "resolvedAt", a->resolved_ms ? json_string(r) : json_null());
  json_t *j = json_pack("{s:s, s:s, s:o}", "event",
                        ev == KEEL_ALERTS_EV_RESOLVED ? "resolved" : "triggered", "service",
                        s->service, "alert", alert);
  char *out = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
  json_decref(j);
  return out;
}

static char *body_chat(const keel_alert_sink *s, int ev, const keel_alert *a, const char *key) {
  char text[400];
  snprintf(text, sizeof text, "[%s] %s (%s) on %s: %s",
           ev == KEEL_ALERTS_EV_RESOLVED ? "RESOLVED" : "FIRING", keel_alert_type_name(a->type),
           sev(a), s->service, a->message);
  json_t *j = json_pack("{s:s}", key, text);
  char *out = j ? json_dumps(j, JSON_COMPACT) : NULL;
  json_decref(j);
  return out;
}

/* A firing alert carries endsAt = ends_ms when that is not 0 (the re-send
 * horizon); a resolved one, when it resolved. */
static char *body_alertmanager(const keel_alert_sink *s, int ev, const keel_alert *a,
                               int64_t ends_ms) {
  char t[32], r[32], value[64];
  iso_time(a->time_ms, t);
  snprintf(value, sizeof value, "value %g, threshold %g", a->value, a->threshold);
  json_t *labels = json_pack("{s:s, s:s, s:s}", "alertname", keel_alert_type_name(a->type),
                             "service", s->service, "severity", sev(a));
  if (labels && a->pid) {
    char pid[24];
    keel_pid_format(a->pid, pid, sizeof pid);
    json_object_set_new(labels, "process", json_string(a->name[0] ? a->name : pid));
  }
  json_t *one = json_pack("{s:o, s:{s:s, s:s}, s:s}", "labels", labels, "annotations", "summary",
                          a->message, "description", value, "startsAt", t);
  if (one && ev == KEEL_ALERTS_EV_RESOLVED) {
    iso_time(a->resolved_ms ? a->resolved_ms : a->time_ms, r);
    json_object_set_new(one, "endsAt", json_string(r));
  } else if (one && ends_ms) {
    iso_time(ends_ms, r);
    json_object_set_new(one, "endsAt", json_string(r));
  }
  json_t *arr = one ? json_pack("[o]", one) : NULL;
  char *out = arr ? json_dumps(arr, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
  json_decref(arr);
  return out;
}

/* PagerDuty Events API v2: a trigger, or a resolve of the same dedup_key. */
static char *body_pagerduty(const keel_alert_sink *s, int ev, const keel_alert *a) {
  char t[32], key[160];
  iso_time(a->time_ms, t);
  snprintf(key, sizeof key, "%s:%s:%llu", s->service, keel_alert_type_name(a->type),
           (unsigned long long)a->pid);
  json_t *j =
      json_pack("{s:s, s:s, s:s, s:{s:s, s:s, s:s, s:s, s:{s:f, s:f}}}", "routing_key", s->secret,
                "event_action", ev == KEEL_ALERTS_EV_RESOLVED ? "resolve" : "trigger", "dedup_key",
                key, "payload", "summary", a->message, "source", s->service, "severity", sev(a),
                "timestamp", t, "custom_details", "value", a->value, "threshold", a->threshold);
  char *out = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
  json_decref(j);
  return out;
}

/* "sha256=" + the hex HMAC-SHA256 of body under secret. */
static void sign(const char *secret, const char *body, char out[80]) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  HMAC(EVP_sha256(), secret, (int)strlen(secret), (const unsigned char *)body, strlen(body), mac,
       &n);
  static const char hex[] = "0123456789abcdef";
  memcpy(out, "sha256=", 7);
  for (unsigned int i = 0; i < n && i < 32; i++) {
    out[7 + 2 * i] = hex[mac[i] >> 4];
    out[8 + 2 * i] = hex[mac[i] & 15];
  }
  out[7 + 2 * (n < 32 ? n : 32)] = '\0';
}

/* ---- delivery ----------------------------------------------------------------------- */

/* Posts one alert event; resend: a firing alert posted again (counted as
 * resent, not sent). */
static void deliver(keel_alert_sink *s, const queued *q, bool resend) {
  char *body = NULL;
  char url[600];
  snprintf(url, sizeof url, "%s", s->url);
  switch (s->o.format) {
  case KEEL_ALERT_SINK_JSON: body = body_json(s, q->event, &q->a); break;
  case KEEL_ALERT_SINK_SLACK: body = body_chat(s, q->event, &q->a, "text"); break;
  case KEEL_ALERT_SINK_DISCORD: body = body_chat(s, q->event, &q->a, "content"); break;
  case KEEL_ALERT_SINK_PAGERDUTY: body = body_pagerduty(s, q->event, &q->a); break;
  case KEEL_ALERT_SINK_ALERTMANAGER:
    body = body_alertmanager(
        s, q->event, &q->a,
        s->o.resend_ms > 0 && q->a.type != KEEL_ALERT_TEST ? wall_ms() + 4 * s->o.resend_ms : 0);
    snprintf(url, sizeof url, "%.*s/api/v2/alerts",
             (int)strlen(s->url) - (s->url[strlen(s->url) - 1] == '/'), s->url);
    break;
  }
  if (!body) {
    atomic_fetch_add(&s->failed, 1);
    return;
  }
  char sig[112] = "";
  const char *hdrs[2] = {NULL, NULL};
  if (s->secret && s->o.format == KEEL_ALERT_SINK_JSON) {
    char mac[80];
    sign(s->secret, body, mac);
    snprintf(sig, sizeof sig, "X-Keel-Signature: %s", mac);
    hdrs[0] = sig;
  }
  keel_http_client_req rq = {.method = "POST",
                             .url = url,
                             .headers = hdrs,
                             .body = body,
                             .body_len = strlen(body),
                             .content_type = "application/json",
                             .max_retries = s->o.max_retries,
                             .retry_unsafe = true /* a repeated alert is harmless */};
  keel_http_client_res res;
  int rc = keel_http_client_request(s->client, &rq, &res);
  if (rc == 0 && res.status >= 200 && res.status < 300) {
    atomic_fetch_add(resend ? &s->resent : &s->sent, 1);
  } else {
    atomic_fetch_add(&s->failed, 1);
    keel_log_warn(NULL, "alert delivery failed", KEEL_STR("url", s->url),
                  KEEL_INT("status", res.status), KEEL_STR("error", res.error),
                  KEEL_STR("alert", q->a.id));
  }
  keel_http_client_res_free(&res);
  free(body);
}

/* Whether q passes the cooldown (and records it). */
static bool cooldown_pass(keel_alert_sink *s, cool **list, const queued *q) {
  if (s->o.cooldown_ms < 0) return true;
  cool *c = *list;
  while (c && !(c->type == q->a.type && c->pid == q->a.pid && c->severity == q->a.severity))
    c = c->next;
  if (q->event == KEEL_ALERTS_EV_RESOLVED) return !(c && c->held);
  int64_t now = keel_monotonic_ms();
  if (c && now - c->sent_ms < s->o.cooldown_ms) {
    c->held = true;
    atomic_fetch_add(&s->suppressed, 1);
    return false;
  }
  if (!c && (c = calloc(1, sizeof *c))) {
    c->type = q->a.type;
    c->severity = q->a.severity;
    c->pid = q->a.pid;
    c->next = *list;
    *list = c;
  }
  if (c) {
    c->sent_ms = now;
    c->held = false;
  }
  return true;
}

/* Alertmanager: the firing alerts this sink delivered, re-sent every
 * resend_ms until they resolve. Bounded: past FIRING_MAX the oldest is no
 * longer re-sent (Alertmanager lets it lapse after its endsAt). */
#define FIRING_MAX 256

typedef struct firing {
  queued v[FIRING_MAX];
  size_t n;
  int64_t next_ms; /* keel_monotonic_ms() of the next re-send */
} firing;

static void firing_note(firing *f, const queued *q) {
  size_t i = 0;
  while (i < f->n && strcmp(f->v[i].a.id, q->a.id) != 0)
    i++;
  if (q->event == KEEL_ALERTS_EV_RESOLVED) {
    if (i < f->n) memmove(&f->v[i], &f->v[i + 1], (f->n - i - 1) * sizeof f->v[0]);
    if (i < f->n) f->n--;
    return;
  }
  if (i < f->n || q->a.type == KEEL_ALERT_TEST) return; /* a test alert is never resolved */
  if (f->n == FIRING_MAX) memmove(&f->v[0], &f->v[1], --f->n * sizeof f->v[0]);
  f->v[f->n++] = *q;
}

/* The receive timeout: until the next re-send when one is due, else forever. */
static int64_t firing_wait(const firing *f) {
  if (!f || !f->n) return KEEL_INFINITY;
  int64_t now = keel_monotonic_ms();
  return f->next_ms > now ? f->next_ms - now : 0;
}

static void firing_resend(keel_alert_sink *s, firing *f) {
  if (!f || !f->n || keel_monotonic_ms() < f->next_ms) return;
  for (size_t i = 0; i < f->n; i++)
    deliver(s, &f->v[i], true);
  f->next_ms = keel_monotonic_ms() + s->o.resend_ms;
}

/* Whether the sink takes q at all. */
static bool wanted(keel_alert_sink *s, const queued *q) {
  keel_alert_severity v = q->a.severity ? q->a.severity : keel_alert_type_severity(q->a.type);
  if (q->a.type == KEEL_ALERT_TEST || v >= s->o.min_severity) return true;
  atomic_fetch_add(&s->filtered, 1);
  return false;
}

/* The sink process. */
static void sink_main(void *arg) {
  keel_alert_sink *s = arg;
  size_t cap = s->o.queue_max, head = 0, n = 0;
  queued *q = calloc(cap, sizeof *q);
  firing *f = NULL;
  if (s->o.format == KEEL_ALERT_SINK_ALERTMANAGER && s->o.resend_ms > 0) f = calloc(1, sizeof *f);
  cool *cools = NULL;
  bool stop = !q || (s->o.format == KEEL_ALERT_SINK_ALERTMANAGER && s->o.resend_ms > 0 && !f);
  while (!stop) {
    keel_msg_t *m = NULL;
    /* take everything waiting before posting: a full queue drops the oldest */
    int rc = keel_receive(&m, n ? KEEL_NOWAIT : firing_wait(f));
    if (rc == 0) {
      keel_alert a;
      int ev = keel_alert_msg(m, &a);
      if (keel_msg_tag(m) == MSG_STOP && keel_msg_kind_of(m) == KEEL_MSG_USER) {
        stop = true;
      } else if (ev > 0) {
        if (n == cap) { /* the oldest goes */
          head = (head + 1) % cap;
          n--;
          atomic_fetch_add(&s->dropped, 1);
        }
        q[(head + n) % cap] = (queued){ev, a};
        n++;
      }
      keel_msg_free(m);
      continue;
    }
    if (!n) {
      firing_resend(s, f);
      continue;
    }
    queued one = q[head];
    head = (head + 1) % cap;
    n--;
    if (!wanted(s, &one)) continue;
    if (f && one.event == KEEL_ALERTS_EV_RESOLVED) firing_note(f, &one);
    if (!cooldown_pass(s, &cools, &one)) continue;
    deliver(s, &one, false);
    if (f && one.event == KEEL_ALERTS_EV_TRIGGERED) {
      if (!f->n) f->next_ms = keel_monotonic_ms() + s->o.resend_ms;
      firing_note(f, &one);
    }
  }
  atomic_fetch_add(&s->dropped, n);
  while (cools) {
    cool *c = cools->next;
    free(cools);
    cools = c;
  }
  free(f);
  free(q);
}

/* ---- start, stop ---------------------------------------------------------------- */

static void sink_free(keel_alert_sink *s) {
  if (s->own_client) keel_http_client_free(s->client);
  free(s->url);
  free(s->secret);
  free(s->service);
  free(s);
}

int keel_alert_sink_start(const keel_alert_sink_opts *o, keel_alert_sink **out) {
  if (!out) return KEEL_EINVAL;
  *out = NULL;
  if (!o || !o->url || !*o->url || !o->format || o->format > KEEL_ALERT_SINK_PAGERDUTY ||
      o->min_severity < 0 || o->min_severity > KEEL_ALERT_CRITICAL ||
      (o->format == KEEL_ALERT_SINK_PAGERDUTY && (!o->secret || !*o->secret)))
    return KEEL_EINVAL;
  if (keel_self() == 0) return KEEL_ENOTPROC;
  if (!keel_alerts_running()) return KEEL_ESTATE;
  keel_alert_sink *s = calloc(1, sizeof *s);
  if (!s) return KEEL_ENOMEM;
  s->o = *o;
  if (!s->o.cooldown_ms) s->o.cooldown_ms = 15 * 60 * 1000;
  if (!s->o.queue_max) s->o.queue_max = 100;
  if (!s->o.max_retries) s->o.max_retries = 3;
  if (!s->o.min_severity) s->o.min_severity = KEEL_ALERT_INFO;
  if (!s->o.resend_ms) s->o.resend_ms = 60000;
  s->url = strdup(o->url);
  s->secret = o->secret ? strdup(o->secret) : NULL;
  s->service = strdup(o->service ? o->service : "keel");
  int rc = (!s->url || !s->service || (o->secret && !s->secret)) ? KEEL_ENOMEM : 0;
  if (!rc && o->client) {
    s->client = o->client;
  } else if (!rc) {
    keel_http_client_opts co = {
        .name = "alert_sink", .retry_base_ms = 500, .retry_max_ms = 30000, .timeout_ms = 10000};
    rc = keel_http_client_new(&co, &s->client);
    s->own_client = rc == 0;
  }
  keel_spawn_opts so;
  keel_spawn_opts_init(&so);
  so.name = "keel_alert_sink";
  if (!rc) rc = keel_spawn(sink_main, s, &so, &s->pid);
  if (!rc) {
    rc = keel_alerts_subscribe(s->pid);
    if (rc) {
      keel_exit_signal(s->pid, KEEL_REASON_KILL, NULL);
      s->pid = 0;
    }
  }
  if (rc) {
    sink_free(s);
    return rc;
  }
  *out = s;
  return 0;
}

static bool is_down(const keel_msg_t *m, void *arg) {
  return keel_msg_kind_of(m) == KEEL_MSG_DOWN && keel_msg_ref(m) == *(keel_ref_t *)arg;
}

void keel_alert_sink_stop(keel_alert_sink *s) {
  if (!s) return;
  keel_ref_t ref;
  if (s->pid && keel_monitor(s->pid, &ref) == 0) {
    keel_alerts_unsubscribe(s->pid);
    keel_msg_t *m = keel_msg_new(MSG_STOP, 0);
    if (m) keel_send(s->pid, m);
    m = NULL;
    if (keel_receive_match(is_down, &ref, &m, KEEL_INFINITY) == 0) keel_msg_free(m);
  }
  sink_free(s);
}

int keel_alert_sink_push(keel_alert_sink *s, int event, const keel_alert *a) {
  if (!s || !a || (event != KEEL_ALERTS_EV_TRIGGERED && event != KEEL_ALERTS_EV_RESOLVED))
    return KEEL_EINVAL;
  keel_msg_t *m = keel_msg_copy(event == KEEL_ALERTS_EV_RESOLVED ? KEEL_ALERTS_MSG_RESOLVED
                                                                 : KEEL_ALERTS_MSG_TRIGGERED,
                                a, sizeof *a);
  if (!m) return KEEL_ENOMEM;
  return keel_send(s->pid, m) == 0 && keel_is_alive(s->pid) ? 0 : KEEL_ENOPROC;
}

int keel_alert_sink_test(keel_alert_sink *s) {
  if (!s) return KEEL_EINVAL;
  keel_alert a;
  memset(&a, 0, sizeof a);
  static atomic_uint n;
  snprintf(a.id, sizeof a.id, "test-%u", atomic_fetch_add(&n, 1) + 1);
  a.type = KEEL_ALERT_TEST;
  snprintf(a.message, sizeof a.message, "Test alert from %.100s: alert delivery works", s->service);
  a.severity = KEEL_ALERT_INFO;
  a.time_ms = wall_ms();
  return keel_alert_sink_push(s, KEEL_ALERTS_EV_TRIGGERED, &a);
}

void keel_alert_sink_stats_get(const keel_alert_sink *s, keel_alert_sink_stats *out) {
  memset(out, 0, sizeof *out);
  if (!s) return;
  keel_alert_sink *w = (keel_alert_sink *)s;
  out->sent = atomic_load(&w->sent);
  out->failed = atomic_load(&w->failed);
  out->dropped = atomic_load(&w->dropped);
  out->suppressed = atomic_load(&w->suppressed);
  out->filtered = atomic_load(&w->filtered);
  out->resent = atomic_load(&w->resent);
}

/* An integer of ms from the environment in [lo, hi]; def when unset or "". */
static int env_ms(const char *name, int64_t def, int64_t lo, int64_t hi, int64_t *out) {
  const char *v = getenv(name);
  *out = def;
  if (!v || !*v) return 0;
  char *end;
  errno = 0;
  long long x = strtoll(v, &end, 10);
  if (errno || *end || x < lo || x > hi) return KEEL_EINVAL;
  *out = x;
  return 0;
}

/* A severity name from the environment; info when unset or "". */
static int env_severity(const char *name, keel_alert_severity *out) {
  const char *v = getenv(name);
  *out = v && *v ? keel_alert_severity_parse(v) : KEEL_ALERT_INFO;
  return *out ? 0 : KEEL_EINVAL;
}

int keel_alert_sinks_from_env(const char *service, keel_alert_sink **out, size_t max) {
  int n = 0;
  int64_t cooldown, resend;
  keel_alert_severity hook_min, am_min;
  if (env_ms("ALERT_COOLDOWN_MS", 0, 0, 86400000, &cooldown) ||
      env_ms("ALERTMANAGER_RESEND_MS", 0, 1000, 3600000, &resend) ||
      env_severity("ALERT_WEBHOOK_MIN_SEVERITY", &hook_min) ||
      env_severity("ALERTMANAGER_MIN_SEVERITY", &am_min))
    return KEEL_EINVAL;
  if (!cooldown && getenv("ALERT_COOLDOWN_MS") && *getenv("ALERT_COOLDOWN_MS"))
    cooldown = -1; /* "0" says: no cooldown (0 in the options is the default) */
  const char *hook = getenv("ALERT_WEBHOOK_URL");
  if (hook && *hook && (size_t)n < max) {
    const char *f = getenv("ALERT_WEBHOOK_FORMAT");
    keel_alert_sink_format fmt = f && *f ? keel_alert_sink_format_parse(f) : KEEL_ALERT_SINK_JSON;
    if (!fmt || fmt == KEEL_ALERT_SINK_ALERTMANAGER) return KEEL_EINVAL;
    keel_alert_sink_opts o = {.format = fmt,
                              .url = hook,
                              .secret = getenv("ALERT_WEBHOOK_SECRET"),
                              .service = service,
                              .cooldown_ms = cooldown,
                              .min_severity = hook_min};
    int rc = keel_alert_sink_start(&o, &out[n]);
    if (rc) return rc;
    n++;
  }
  const char *am = getenv("ALERTMANAGER_URL");
  if (am && *am && (size_t)n < max) {
    keel_alert_sink_opts o = {.format = KEEL_ALERT_SINK_ALERTMANAGER,
                              .url = am,
                              .service = service,
                              .cooldown_ms = cooldown,
                              .min_severity = am_min,
                              .resend_ms = resend};
    int rc = keel_alert_sink_start(&o, &out[n]);
    if (rc) {
      while (n > 0)
        keel_alert_sink_stop(out[--n]);
      return rc;
    }
    n++;
  }
  return n;
}
