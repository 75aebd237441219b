/* log_events.c - keel's own events, in the log, with stable names.
 *
 * keel_log_keel_events(true) subscribes the logger to what the lower layers
 * publish: application lifecycle events (app_starting, app_started,
 * app_stopping with its reason, app_stopped, app_start_failed), supervisor
 * events (supervisor_restart with child id, attempt and reason;
 * child_start_failed; intensity_exceeded), and runtime reports
 * (process_crashed, process_stuck, through keel_log_report_handler).
 * keel_log_config writes the one config_loaded line, secrets masked. The
 * event names are an interface: dashboards and alerts match on them.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/application.h"
#include "keel/config.h"
#include "keel/error.h"
#include "keel/log.h"
#include "keel/process.h"
#include "keel/runtime.h"
#include "keel/supervisor.h"

static int app_sub, sup_sub;

static void on_app(const keel_app_event *ev, void *ud) {
  (void)ud;
  const char *app = ev->name ? ev->name : "";
  switch (ev->kind) {
  case KEEL_APP_STARTING:
    keel_log_event(KEEL_LOG_INFO, "app_starting", KEEL_STR("app", app));
    break;
  case KEEL_APP_STARTED: keel_log_event(KEEL_LOG_INFO, "app_started", KEEL_STR("app", app)); break;
  case KEEL_APP_STOPPING: {
    /* the signal only when a signal stopped it, the error only when there is one */
    keel_log_level lvl = ev->reason == KEEL_APP_STOP_ERROR ? KEEL_LOG_ERROR : KEEL_LOG_INFO;
    keel_log_field f[5];
    size_t n = 0;
    f[n++] = (keel_log_field)KEEL_STR("app", app);
    f[n++] = (keel_log_field)KEEL_STR("reason", keel_app_stop_reason_name(ev->reason));
    if (ev->signum) f[n++] = (keel_log_field)KEEL_INT("signal", ev->signum);
    if (ev->error_text && *ev->error_text) f[n++] = (keel_log_field)KEEL_STR("error", ev->error_text);
    f[n] = (keel_log_field)KEEL_LOG__END;
    if (keel_log_enabled(lvl)) keel_log_event_list(lvl, "app_stopping", f);
    break;
  }
  case KEEL_APP_STOPPED:
    keel_log_event(ev->forced || ev->exit_code ? KEEL_LOG_WARN : KEEL_LOG_INFO, "app_stopped",
                   KEEL_STR("app", app), KEEL_INT("exit_code", ev->exit_code),
                   KEEL_BOOL("forced", ev->forced));
    break;
  case KEEL_APP_START_FAILED:
    keel_log_event(KEEL_LOG_ERROR, "app_start_failed", KEEL_STR("app", app),
                   KEEL_STR("error", keel_err_name(ev->error)),
                   KEEL_STR("reason", ev->error_text ? ev->error_text : ""));
    break;
  }
}

static void on_sup(const keel_sup_event *ev, void *ud) {
  (void)ud;
  char sup[32];
  if (ev->sup_name && *ev->sup_name)
    snprintf(sup, sizeof sup, "%s", ev->sup_name);
  else
    keel_pid_format(ev->sup, sup, sizeof sup);
  switch (ev->kind) {
  case KEEL_SUP_CHILD_RESTARTED:
    keel_log_event(KEEL_LOG_WARN, "supervisor_restart", KEEL_STR("supervisor", sup),
                   KEEL_STR("child", ev->child_id), KEEL_UINT("attempt", ev->attempt),
                   KEEL_STR("reason", keel_reason_name(ev->reason.kind)),
                   KEEL_STR("reason_text", ev->reason.text));
    break;
  case KEEL_SUP_CHILD_START_FAILED:
    keel_log_event(KEEL_LOG_ERROR, "child_start_failed", KEEL_STR("supervisor", sup),
                   KEEL_STR("child", ev->child_id), KEEL_STR("reason_text", ev->reason.text));
    break;
  case KEEL_SUP_INTENSITY_EXCEEDED:
    keel_log_event(KEEL_LOG_ERROR, "intensity_exceeded", KEEL_STR("supervisor", sup),
                   KEEL_UINT("restarts", ev->attempt), KEEL_STR("reason_text", ev->reason.text));
    break;
  case KEEL_SUP_CHILD_SHUTDOWN_TIMEOUT:
    keel_log_event(KEEL_LOG_WARN, "child_shutdown_timeout", KEEL_STR("supervisor", sup),
                   KEEL_STR("child", ev->child_id), KEEL_UINT("shutdown_ms", ev->attempt),
                   KEEL_STR("reason_text", ev->reason.text));
    break;
  default: break; /* started/exited children are not worth a line each */
  }
}

int keel_log_keel_events(bool on) {
  if (!on) {
    if (app_sub > 0) keel_app_unsubscribe(app_sub);
    if (sup_sub > 0) keel_sup_unsubscribe(sup_sub);
    app_sub = sup_sub = 0;
    keel_rt_set_report_handler(NULL, NULL);
    return 0;
  }
  if (app_sub > 0) return 0;
  app_sub = keel_app_subscribe(on_app, NULL);
  if (app_sub < 0) return app_sub;
  sup_sub = keel_sup_subscribe(on_sup, NULL);
  if (sup_sub < 0) {
    int rc = sup_sub;
    keel_app_unsubscribe(app_sub);
    app_sub = sup_sub = 0;
    return rc;
  }
  keel_rt_set_report_handler(keel_log_report_handler, NULL);
  return 0;
}

typedef struct cfg_fields {
  keel_log_field *f;
  char **vals;
  size_t n;
} cfg_fields;

static int collect(const keel_config_field *field, const char *value, void *arg) {
  cfg_fields *cf = arg;
  char *v = strdup(value);
  if (!v) return KEEL_ENOMEM;
  cf->vals[cf->n] = v;
  cf->f[cf->n] = KEEL_STR(field->env, v);
  cf->n++;
  return 0;
}

int keel_log_config(const keel_config_field *table, size_t n, const void *cfg,
                    const char *app_env) {
  cfg_fields cf = {calloc(n + 1, sizeof *cf.f), calloc(n ? n : 1, sizeof *cf.vals), 0};
  int rc = cf.f && cf.vals ? keel_config_each(table, n, cfg, collect, &cf) : KEEL_ENOMEM;
  if (rc == 0) {
    cf.f[cf.n] = KEEL_LOG__END;
    keel_log_field outer[] = {KEEL_STR("app_env", app_env ? app_env : ""),
                              {.key = "config", .type = KEEL_LOG_T_OBJ, .v = {.obj = cf.f}},
                              KEEL_LOG__END};
    keel_log_event_list(KEEL_LOG_INFO, "config_loaded", outer);
  }
  for (size_t i = 0; i < cf.n; i++)
    free(cf.vals[i]);
  free(cf.vals);
  free(cf.f);
  return rc;
}
