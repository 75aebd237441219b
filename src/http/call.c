/* call.c - from a handler to a gen_server in one call (keel_http_call):
 * the JSON call, and the envelope for each way it can fail, so the handler
 * deals only with the answer it wanted. */
#include <stdio.h>

#include "keel/http.h"
#include "keel/json.h"
#include "keel/log.h"

int keel_http_call(keel_http_res *res, const char *server, uint32_t tag, json_t *request,
                   json_t **reply, int64_t timeout_ms) {
  if (reply) *reply = NULL;
  if (!res || !server || !reply) {
    json_decref(request);
    return KEEL_EINVAL;
  }
  keel_gs_exit why;
  int rc = keel_gs_call_json_name(server, tag, request, reply, timeout_ms, &why);
  char msg[160];
  switch (rc) {
  case 0: return 0;
  case KEEL_ENOPROC:
    snprintf(msg, sizeof msg, "%s is not running", server);
    keel_http_fail(res, KEEL_HTTP_UNAVAILABLE, msg, NULL);
    break;
  case KEEL_EDOWN:
    keel_log_warn(NULL, "gen_server call failed", KEEL_STR("server", server),
                  KEEL_STR("error", "exited during the call"),
                  KEEL_STR("reason", keel_reason_name(why.kind)), KEEL_STR("text", why.text));
    snprintf(msg, sizeof msg, "%s failed while handling the request", server);
    keel_http_fail(res, KEEL_HTTP_UNAVAILABLE, msg, NULL);
    break;
  case KEEL_ETIMEDOUT:
    snprintf(msg, sizeof msg, "%s did not answer in time", server);
    keel_http_fail(res, KEEL_HTTP_GATEWAY_TIMEOUT, msg, NULL);
    break;
  default:
    snprintf(msg, sizeof msg, "call to %s: %s", server, keel_strerror(rc));
    keel_http_fail(res, KEEL_HTTP_INTERNAL, msg, NULL);
  }
  return rc;
}
