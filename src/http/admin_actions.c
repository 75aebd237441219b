/* admin_actions.c - what an operator may do to a running node from the
 * admin port: kill a process with a reason, restart or terminate a
 * supervisor's child, change the log level.
 *
 * The guard (admin.c) has already checked the token and the action rate
 * limit. Here every input is validated before anything happens (a bad body,
 * reason or level: 400 VALIDATION_ERROR; an unknown process, supervisor or
 * child: 404 NOT_FOUND; something the supervisor refuses: 409 CONFLICT),
 * and each action that is carried out is logged at warn with its parameters,
 * the client's address and the request id (the log context), so the log
 * says who did what to the node.
 */
#include <stdio.h>
#include <string.h>

#include "http/admin_internal.h"
#include "keel/error.h"
#include "keel/log.h"
#include "keel/process.h"
#include "keel/supervisor.h"

#define REASON_MAX 120

static int bad(keel_http_res *res, const char *msg) {
  return keel_http_fail(res, KEEL_HTTP_VALIDATION, msg, NULL);
}

/* The JSON object body, or NULL with the answer set (an empty body gives an
 * empty object when empty_ok). */
static json_t *body_object(keel_http_req *req, keel_http_res *res, bool empty_ok, int *rc) {
  int err = 0;
  json_t *j = keel_http_json(req, &err);
  if (!j && err == KEEL_ENOENT && empty_ok) return json_object(); /* caller decrefs */
  if (!j) {
    *rc = keel_http_fail(res, KEEL_HTTP_BAD_REQUEST,
                         err == KEEL_ENOENT ? "a JSON body is required" : "the body is not JSON",
                         NULL);
    return NULL;
  }
  if (!json_is_object(j)) {
    *rc = bad(res, "the body must be a JSON object");
    return NULL;
  }
  return json_incref(j); /* borrowed from the request: one of our own */
}

static bool printable(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) return false;
  return true;
}

static void log_action(keel_http_req *req, const char *action, const keel_log_field *extra) {
  keel_log_field f[8];
  size_t n = 0;
  f[n++] = KEEL_STR("action", action);
  f[n++] = KEEL_STR("client", keel_http_client_ip(req));
  for (; extra && extra->type != KEEL_LOG_T_END && n < 7; extra++)
    f[n++] = *extra;
  f[n] = KEEL_LOG__END;
  keel_log_write(NULL, KEEL_LOG_WARN, "admin action", f);
}

/* ---- kill -------------------------------------------------------------------------------- */

static int h_kill(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)ud;
  int rc = 0;
  json_t *body = body_object(req, res, true, &rc);
  if (!body) return rc;
  json_t *jr = json_object_get(body, "reason");
  const char *reason = "kill";
  size_t rlen = 4;
  if (jr && !json_is_string(jr)) {
    json_decref(body);
    return bad(res, "reason must be a string");
  }
  if (jr) {
    reason = json_string_value(jr);
    rlen = json_string_length(jr);
  }
  if (rlen == 0 || rlen > REASON_MAX || strlen(reason) != rlen || !printable(reason, rlen)) {
    json_decref(body);
    return bad(res, "reason must be 1 to 120 printable characters");
  }
  if (strcmp(reason, "normal") == 0) {
    json_decref(body);
    return bad(res, "reason normal does not stop a process: use kill, shutdown or a text");
  }
  /* untrappable, with the operator's text: a gen_server traps exits, and an
   * exit signal with an error reason from outside its parent would only be
   * a message to it. "shutdown" is the polite request (a trapping process
   * decides what to do with it). */
  keel_reason_kind kind = strcmp(reason, "shutdown") == 0 ? KEEL_REASON_SHUTDOWN : KEEL_REASON_KILL;
  const char *text = strcmp(reason, "kill") == 0 || kind == KEEL_REASON_SHUTDOWN ? NULL : reason;
  const char *ptext = keel_http_param(req, "pid");
  keel_pid_t pid = keel__admin_pid_parse(ptext);
  if (!pid) {
    json_decref(body);
    return keel_http_fail(res, KEEL_HTTP_NOT_FOUND, "no such process", NULL);
  }
  char pbuf[32];
  keel_pid_format(pid, pbuf, sizeof pbuf);
  keel_log_field extra[] = {KEEL_STR("pid", pbuf), KEEL_STR("reason", reason), KEEL_LOG__END};
  log_action(req, "kill", extra);
  rc = keel_exit_signal(pid, kind, text);
  json_decref(body);
  if (rc == KEEL_ENOPROC) return keel_http_fail(res, KEEL_HTTP_NOT_FOUND, "no such process", NULL);
  if (rc) return keel_http_fail(res, KEEL_HTTP_INTERNAL, keel_strerror(rc), NULL);
  return keel_http_reply_json(res, 202,
                              json_pack("{s:s, s:s, s:s}", "pid", pbuf, "reason", reason, "signal",
                                        keel_reason_name(kind)));
}

/* ---- a supervisor's child ----------------------------------------------------------------- */

static bool is_supervisor(keel_pid_t pid) {
  keel_pid_t sups[1024];
  size_t n = keel_sup_list(sups, sizeof sups / sizeof *sups);
  for (size_t i = 0; i < n && i < sizeof sups / sizeof *sups; i++)
    if (sups[i] == pid) return true;
  return false;
}

static int child_action(keel_http_req *req, keel_http_res *res, bool restart) {
  const char *stext = keel_http_param(req, "sup"), *id = keel_http_param(req, "id");
  if (!id || !*id || strlen(id) > 63 || !printable(id, strlen(id)))
    return bad(res, "the child id must be 1 to 63 printable characters");
  keel_pid_t sup = keel__admin_pid_parse(stext);
  if (!sup || !is_supervisor(sup))
    return keel_http_fail(res, KEEL_HTTP_NOT_FOUND, "no such supervisor", NULL);
  char sbuf[32];
  keel_pid_format(sup, sbuf, sizeof sbuf);
  keel_log_field extra[] = {KEEL_STR("supervisor", sbuf), KEEL_STR("child", id), KEEL_LOG__END};
  log_action(req, restart ? "restart_child" : "terminate_child", extra);
  int rc = keel_sup_terminate_child(sup, id, 0);
  if (rc == KEEL_ENOENT)
    return keel_http_fail(res, KEEL_HTTP_NOT_FOUND, "the supervisor has no such child", NULL);
  if (rc == KEEL_ENOPROC || rc == KEEL_EDOWN)
    return keel_http_fail(res, KEEL_HTTP_NOT_FOUND, "no such supervisor", NULL);
  if (rc) return keel_http_fail(res, KEEL_HTTP_CONFLICT, keel_strerror(rc), NULL);
  keel_pid_t pid = 0;
  if (restart) {
    rc = keel_sup_restart_child(sup, id, &pid);
    if (rc) {
      char msg[128];
      snprintf(msg, sizeof msg, "the child was stopped but did not start again: %s",
               keel_strerror(rc));
      return keel_http_fail(res, KEEL_HTTP_CONFLICT, msg, NULL);
    }
  }
  return keel_http_reply_json(res, 200,
                              json_pack("{s:s, s:s, s:s, s:o}", "supervisor", sbuf, "id", id,
                                        "action", restart ? "restarted" : "terminated", "pid",
                                        keel__admin_pid_json(pid)));
}

static int h_restart(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)ud;
  return child_action(req, res, true);
}

static int h_terminate(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)ud;
  return child_action(req, res, false);
}

/* ---- the log level ------------------------------------------------------------------------ */

static int h_log_level(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)ud;
  int rc = 0;
  json_t *body = body_object(req, res, false, &rc);
  if (!body) return rc;
  json_t *jl = json_object_get(body, "level");
  keel_log_level level;
  if (!json_is_string(jl) || keel_log_level_parse(json_string_value(jl), &level) != 0) {
    json_decref(body);
    return bad(res, "level must be one of trace, debug, info, warn, error, fatal, off");
  }
  json_decref(body);
  const char *prev = keel_log_level_name(keel_log_get_level());
  const char *next = keel_log_level_name(level);
  keel_log_field extra[] = {KEEL_STR("level", next), KEEL_STR("previous", prev), KEEL_LOG__END};
  log_action(req, "log_level", extra); /* before: a higher level would hide it */
  keel_log_set_level(level);
  return keel_http_reply_json(res, 200, json_pack("{s:s, s:s}", "level", next, "previous", prev));
}

int keel__admin_action_routes(keel__admin *a, keel_http_router *r, keel__admin_add_fn add) {
  int rc = add(a, r, "POST", "/admin/processes/:pid/kill", h_kill, KEEL__ADMIN_ACTION);
  if (!rc)
    rc = add(a, r, "POST", "/admin/supervisors/:sup/children/:id/restart", h_restart,
             KEEL__ADMIN_ACTION);
  if (!rc)
    rc = add(a, r, "POST", "/admin/supervisors/:sup/children/:id/terminate", h_terminate,
             KEEL__ADMIN_ACTION);
  if (!rc) rc = add(a, r, "POST", "/admin/log-level", h_log_level, KEEL__ADMIN_ACTION);
  return rc;
}
