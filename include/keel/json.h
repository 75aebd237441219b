/* keel/json.h - JSON in and out of messages and gen_server calls.
 *
 * A message is bytes; most services send structured values. These carry a
 * jansson value (any JSON: object, array, string, number, true, false, null)
 * as its compact JSON text, so the receiver gets its own copy, as Erlang's
 * messages are copies: nothing is shared between processes.
 *
 *   // the caller
 *   json_t *reply;
 *   int rc = keel_gs_call_json_name("kv", KV_GET, json_pack("{s:s}", "key", k), &reply, 0, NULL);
 *
 *   // the server's handle_call
 *   json_t *req = keel_msg_to_json(*request);   // yours: json_decref it
 *   *reply = keel_msg_from_json(0, json_pack("{s:O}", "value", v));
 *
 * The message tag says which operation; the JSON holds its arguments.
 */
#ifndef KEEL_JSON_H
#define KEEL_JSON_H

#include <jansson.h>
#include <stdint.h>

#include "keel/gen_server.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A message with tag whose payload is v as compact JSON text. Steals the
 * reference to v (also on failure). NULL when v is NULL or memory ran out. */
keel_msg_t *keel_msg_from_json(uint32_t tag, json_t *v);

/* The payload parsed as JSON (any value), a new reference the caller
 * releases with json_decref. NULL when m is NULL, empty or not JSON. */
json_t *keel_msg_to_json(const keel_msg_t *m);

/* keel_gs_call with a JSON request and reply. request is stolen (also on
 * failure; NULL sends an empty request). On 0, *reply is the reply as JSON
 * (a new reference) or NULL if the server replied with an empty message.
 * Errors: those of keel_gs_call (KEEL_ETIMEDOUT, KEEL_ENOPROC, KEEL_EDOWN
 * with *why, ...), KEEL_ENOMEM, KEEL_EINVAL (the reply is not JSON). The
 * timeout follows keel/runtime.h (0: KEEL_GS_DEFAULT_TIMEOUT). */
int keel_gs_call_json(keel_pid_t server, uint32_t tag, json_t *request, json_t **reply,
                      int64_t timeout_ms, keel_gs_exit *why);
int keel_gs_call_json_name(const char *name, uint32_t tag, json_t *request, json_t **reply,
                           int64_t timeout_ms, keel_gs_exit *why);

/* keel_gs_cast with a JSON message (stolen). Errors as keel_gs_cast, and
 * KEEL_ENOMEM. */
int keel_gs_cast_json(keel_pid_t server, uint32_t tag, json_t *msg);
int keel_gs_cast_json_name(const char *name, uint32_t tag, json_t *msg);

#ifdef __cplusplus
}
#endif
#endif
