/* log_calls.c - the logging context and the current span follow gen_server
 * calls and casts.
 *
 * keel_log_follow_calls() (logs) and keel_trace_start (spans) register one
 * set of gen_server context hooks: a caller's logging context (its
 * correlation id, for one) is exported into a blob, with the ids of its
 * current span (keel/trace.h) and that span's tracestate, that travels as the
 * request's attachment; the server handles the request with that context
 * pushed on top of its own and the span installed as its current parent,
 * both popped afterwards. So one id and one trace follow a request through
 * every process it touches. The attachment is one malloc'd block: a header,
 * then the log context's bytes, then the tracestate.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/error.h"
#include "keel/gen_server.h"
#include "keel/log.h"
#include "ops/trace_internal.h"

typedef struct ctx_blob {
  size_t len;   /* log context bytes */
  size_t tslen; /* tracestate bytes after them, NUL included; 0: none */
  bool has_span;
  uint8_t trace_id[16], span_id[8], flags;
  char bytes[];
} ctx_blob;

/* Which contexts travel; the hooks are registered while either does.
 * Relaxed: each is a plain switch read on the next call. */
static atomic_bool follow_log, follow_trace;

static void *capture(void) {
  char *b = NULL;
  size_t n = 0;
  if (atomic_load_explicit(&follow_log, memory_order_relaxed) &&
      keel_log_context_export(&b, &n) != 0)
    b = NULL, n = 0;
  keel_span *sp = keel_span_current(); /* always: ids cost nothing and keep log lines joined */
  if (sp && !sp->ctx.valid) sp = NULL;
  if (!b && !sp) return NULL;
  size_t tl = sp && sp->ctx.tracestate ? strlen(sp->ctx.tracestate) + 1 : 0;
  ctx_blob *x = malloc(sizeof *x + n + tl);
  if (x) {
    memset(x, 0, sizeof *x);
    x->len = b ? n : 0;
    if (b) memcpy(x->bytes, b, n);
    if (sp) {
      x->has_span = true;
      memcpy(x->trace_id, sp->ctx.trace_id, 16);
      memcpy(x->span_id, sp->ctx.span_id, 8);
      x->flags = sp->ctx.flags;
      x->tslen = tl;
      if (tl) memcpy(x->bytes + x->len, sp->ctx.tracestate, tl);
    }
  }
  free(b);
  return x;
}

/* What restore undoes, as bits in a non-NULL pointer. */
enum { PUSHED = 1, PUSHED_LOG = 2, PUSHED_SPAN = 4 };

static void *install(const void *blob) {
  const ctx_blob *x = blob;
  uintptr_t done = PUSHED;
  if (x->len && keel_log_context_push(x->bytes, x->len) == 0) done |= PUSHED_LOG;
  if (x->has_span) {
    keel_span_ctx c = {
        .flags = x->flags, .valid = true, .tracestate = x->tslen ? x->bytes + x->len : NULL};
    memcpy(c.trace_id, x->trace_id, 16);
    memcpy(c.span_id, x->span_id, 8);
    if (keel_trace_ctx_push(&c) == 0) done |= PUSHED_SPAN;
  }
  return (void *)done;
}

static void restore(void *pushed) {
  uintptr_t done = (uintptr_t)pushed;
  if (done & PUSHED_SPAN) keel_trace_ctx_pop();
  if (done & PUSHED_LOG) keel_log_context_pop();
}

/* opts.trace servers: one span per call or cast, a child of the caller's.
 * The span block is owned by the server's process (trace.c), so a callback
 * that crashes leaves nothing behind: the exit hook ends the span as an
 * error and frees the block. */
static void *span_begin(const char *server, bool call) {
  keel_span *sp = keel__span_heap_new();
  if (!sp) return NULL;
  char name[96];
  snprintf(name, sizeof name, "%s %s", server, call ? "call" : "cast");
  keel_span_start(sp, name, KEEL_SPAN_INTERNAL, NULL);
  keel_span_set(sp, KEEL_STR("keel.gen_server", server),
                KEEL_STR("keel.message", call ? "call" : "cast"));
  return sp;
}

static void span_end(void *span, int rc) {
  keel_span *sp = span;
  if (rc < 0) {
    keel_span_set_str(sp, "error.type", keel_err_name(rc));
    keel_span_set_status(sp, KEEL_SPAN_ERROR, keel_strerror(rc));
  }
  keel_span_end(sp);
  keel__span_heap_free(sp);
}

static const keel_gs_context_hooks hooks = {capture, install, restore};
static const keel_gs_span_hooks span_hooks = {span_begin, span_end};

static void update(void) {
  bool any = atomic_load(&follow_log) || atomic_load(&follow_trace);
  keel_gs_set_context_hooks(any ? &hooks : NULL);
}

void keel_log_follow_calls(bool on) {
  atomic_store(&follow_log, on);
  update();
}

void keel__trace_follow_calls(bool on) {
  atomic_store(&follow_trace, on);
  keel_gs_set_span_hooks(on ? &span_hooks : NULL);
  update();
}
