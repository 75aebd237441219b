/* msg_json.c - JSON values carried by messages (keel/json.h).
 *
 * The payload is the value's compact text without a terminating NUL;
 * jansson escapes a NUL inside a string (\u0000), so the text never holds
 * one and parsing takes exactly the payload's bytes.
 */
#include <stdlib.h>
#include <string.h>

#include "keel/json.h"

#define DUMP_FLAGS (JSON_COMPACT | JSON_ENCODE_ANY)

keel_msg_t *keel_msg_from_json(uint32_t tag, json_t *v) {
  if (!v) return NULL;
  /* one pass to size, one to write: no intermediate string */
  size_t n = json_dumpb(v, NULL, 0, DUMP_FLAGS);
  keel_msg_t *m = n ? keel_msg_new(tag, n) : NULL;
  if (m && json_dumpb(v, keel_msg_data(m), n, DUMP_FLAGS) != n) {
    keel_msg_free(m);
    m = NULL;
  }
  json_decref(v);
  return m;
}

json_t *keel_msg_to_json(const keel_msg_t *m) {
  if (!m || keel_msg_size(m) == 0) return NULL;
  return json_loadb(keel_msg_data(m), keel_msg_size(m), JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
}

/* An empty message for a NULL request, else the JSON one; NULL: no memory. */
static keel_msg_t *request_msg(uint32_t tag, json_t *v) {
  return v ? keel_msg_from_json(tag, v) : keel_msg_new(tag, 0);
}

/* The tail of both calls: the reply's JSON, or KEEL_EINVAL if it is not. */
static int take_reply(int rc, keel_msg_t *rep, json_t **reply) {
  if (!rc && rep && keel_msg_size(rep) > 0 && !(*reply = keel_msg_to_json(rep))) rc = KEEL_EINVAL;
  keel_msg_free(rep);
  return rc;
}

int keel_gs_call_json(keel_pid_t server, uint32_t tag, json_t *request, json_t **reply,
                      int64_t timeout_ms, keel_gs_exit *why) {
  keel_msg_t *req = request_msg(tag, request);
  if (!reply || !req) {
    keel_msg_free(req);
    return reply ? KEEL_ENOMEM : KEEL_EINVAL;
  }
  *reply = NULL;
  keel_msg_t *rep = NULL;
  int rc = keel_gs_call(server, req, &rep, timeout_ms, why);
  return take_reply(rc, rep, reply);
}

int keel_gs_call_json_name(const char *name, uint32_t tag, json_t *request, json_t **reply,
                           int64_t timeout_ms, keel_gs_exit *why) {
  keel_msg_t *req = request_msg(tag, request);
  if (!reply || !req || !name) {
    keel_msg_free(req);
    return reply && name ? KEEL_ENOMEM : KEEL_EINVAL;
  }
  *reply = NULL;
  keel_msg_t *rep = NULL;
  int rc = keel_gs_call_name(name, req, &rep, timeout_ms, why);
  return take_reply(rc, rep, reply);
}

int keel_gs_cast_json(keel_pid_t server, uint32_t tag, json_t *msg) {
  keel_msg_t *m = request_msg(tag, msg);
  return m ? keel_gs_cast(server, m) : KEEL_ENOMEM;
}

int keel_gs_cast_json_name(const char *name, uint32_t tag, json_t *msg) {
  keel_msg_t *m = request_msg(tag, msg);
  return m ? keel_gs_cast_name(name, m) : KEEL_ENOMEM;
}
