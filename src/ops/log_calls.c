/* log_calls.c - the logging context follows gen_server calls and casts.
 *
 * keel_log_follow_calls() registers gen_server context hooks: a caller's
 * logging context (its correlation id, for one) is exported into a blob that
 * travels as the request's attachment, and the server handles the request
 * with that context pushed on top of its own, popped afterwards. So one id
 * follows a request through every process it touches. The attachment is one
 * malloc'd block: the blob's length, then its bytes.
 */
#include <stdlib.h>
#include <string.h>

#include "keel/gen_server.h"
#include "keel/log.h"

typedef struct ctx_blob {
  size_t len;
  char bytes[];
} ctx_blob;

static void *capture(void) {
  char *b = NULL;
  size_t n = 0;
  if (keel_log_context_export(&b, &n) != 0 || !b) return NULL;
  ctx_blob *x = malloc(sizeof *x + n);
  if (x) {
    x->len = n;
    memcpy(x->bytes, b, n);
  }
  free(b);
  return x;
}

static void *install(const void *blob) {
  const ctx_blob *x = blob;
  /* non-NULL tells restore that a context was pushed */
  return keel_log_context_push(x->bytes, x->len) == 0 ? (void *)1 : NULL;
}

static void restore(void *pushed) {
  if (pushed) keel_log_context_pop();
}

static const keel_gs_context_hooks hooks = {capture, install, restore};

void keel_log_follow_calls(bool on) {
  keel_gs_set_context_hooks(on ? &hooks : NULL);
}
