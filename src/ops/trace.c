/* trace.c - spans: start and end, attributes, events, the current span,
 * W3C trace context in and out.
 *
 * A keel_span is the caller's storage; it always carries ids (so the trace
 * propagates) and, when sampled while tracing runs, points to a
 * keel_span_data on the heap that records the rest. That is the only
 * allocation a span makes, so an unsampled span costs two random draws and a
 * few stores. The current span lives in the process-local slot
 * KEEL_LOCAL_TRACE as the top of a chain through keel_span.prev: start
 * pushes, end pops. A context from elsewhere (a gen_server caller, the wire)
 * is pushed as a heap keel_span that owns a copy of its tracestate
 * (keel_trace_ctx_push). The exporter's process is marked with a sentinel
 * span so that its own HTTP requests make no spans.
 *
 * Times are CLOCK_REALTIME nanoseconds, what OTLP wants, read through
 * trace_clock.c; no monotonic pairing (a step of the wall clock during a span
 * shows in its duration, as in every OpenTelemetry SDK).
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "keel/error.h"
#include "ops/trace_internal.h"

/* The exporter's marker (keel__trace_suppress): never recorded, never ended. */
static keel_span suppress_marker;

static void rand_nonzero(uint8_t *b, size_t n) {
  for (;;) {
    uint64_t any = 0;
    for (size_t i = 0; i < n; i += 8) {
      uint64_t v = keel__rand64();
      any |= v;
      memcpy(b + i, &v, n - i < 8 ? n - i : 8);
    }
    if (any) return; /* 64 zero bits in a row: never in practice, but W3C forbids zero ids */
  }
}

/* ---- the current span, and what a process owns ------------------------------- */

/* KEEL_LOCAL_TRACE holds the current span itself while the process owns no
 * heap object of tracing (so an unsampled span allocates nothing), or, with
 * bit 0 set, its tslot: the current span and the list of what the process
 * owns (records of open spans, pushed contexts, the gen_server hooks' span
 * blocks). The tslot is made on the first owned object, with an exit hook
 * like the log context's: a process that dies inside a traced callback, a
 * task or its own span would otherwise leak them (the spans on its stack are
 * gone with it, so only this list can find them). The hook ends each open
 * span as an error, so the trace shows where the process died, and frees
 * the rest. */
enum { OWN_RECORD = 1, OWN_PUSHED, OWN_HEAPSPAN };

typedef struct tslot {
  keel_span *top;
  keel__towned owned; /* sentinel of a circular list */
} tslot;

static tslot *as_slot(void *v) {
  return ((uintptr_t)v & 1u) ? (tslot *)((uintptr_t)v & ~(uintptr_t)1) : NULL;
}

static keel_span *top_of(void *v) {
  tslot *t = as_slot(v);
  return t ? t->top : v;
}

/* v: the slot's value as read; outside a process the set fails harmlessly. */
static void top_set(void *v, keel_span *sp) {
  tslot *t = as_slot(v);
  if (t)
    t->top = sp;
  else
    keel_local_set(KEEL_LOCAL_TRACE, sp);
}

static void owned_link(tslot *t, keel__towned *o, uint8_t kind) {
  o->kind = kind;
  o->prev = &t->owned;
  o->next = t->owned.next;
  t->owned.next->prev = o;
  t->owned.next = o;
}

static void owned_unlink(keel__towned *o) {
  if (!o->next) return; /* not owned (made outside a process) */
  o->prev->next = o->next;
  o->next->prev = o->prev;
  o->next = o->prev = NULL;
}

/* An open span's record when its process ended without ending it: ended
 * now, as an error, and queued like any other. */
static void end_abandoned(keel__span_data *d) {
  d->end_ns = keel__trace_now_ns();
  d->status = KEEL_SPAN_ERROR;
  free(d->status_msg);
  d->status_msg = strdup("the process ended before the span did");
  keel__trace_push(d);
}

/* The exit hook: runs on the scheduler after the process's stack is gone,
 * so it touches only the list, never a keel_span of the process's stack. */
static void slot_exit(void *arg) {
  tslot *t = arg;
  keel__towned *o = t->owned.next;
  while (o != &t->owned) {
    keel__towned *next = o->next;
    o->next = o->prev = NULL;
    if (o->kind == OWN_RECORD)
      end_abandoned((keel__span_data *)o); /* own is the record's first member */
    else
      free(o); /* pushed and heapspan start with their own */
    o = next;
  }
  free(t);
}

/* The calling process's tslot, made (with its exit hook) on first need;
 * NULL outside a process or without memory (the object is then not owned:
 * it leaks only if the process dies before ending it, as before). */
static tslot *slot_need(void *v) {
  tslot *t = as_slot(v);
  if (t || !keel_self()) return t;
  if (!(t = malloc(sizeof *t))) return NULL;
  t->top = v;
  t->owned.prev = t->owned.next = &t->owned;
  if (keel_on_exit(slot_exit, t) != 0) {
    free(t);
    return NULL;
  }
  keel_local_set(KEEL_LOCAL_TRACE, (void *)((uintptr_t)t | 1u));
  return t;
}

/* Links o into the calling process's list; returns the slot's value now
 * (v, or the tagged tslot just made). */
static void *own(void *v, keel__towned *o, uint8_t kind) {
  tslot *t = slot_need(v);
  if (!t) {
    o->next = o->prev = NULL;
    return v;
  }
  owned_link(t, o, kind);
  return (void *)((uintptr_t)t | 1u);
}

keel_span *keel_span_current(void) {
  keel_span *s = top_of(keel_local_get(KEEL_LOCAL_TRACE));
  return s == &suppress_marker ? NULL : s;
}

int keel__trace_suppress(void) {
  if (!keel_self()) return KEEL_ENOTPROC;
  top_set(keel_local_get(KEEL_LOCAL_TRACE), &suppress_marker);
  return 0;
}

bool keel__trace_suppressed(void) {
  return top_of(keel_local_get(KEEL_LOCAL_TRACE)) == &suppress_marker;
}

bool keel__trace_log_ids(char trace_hex[33], char span_hex[17]) {
  keel_span *s = keel_span_current();
  if (!s || !s->ctx.valid) return false;
  keel_trace_hex(s->ctx.trace_id, 16, trace_hex);
  keel_trace_hex(s->ctx.span_id, 8, span_hex);
  return true;
}

/* A pushed context: the span keeps a copy of the tracestate after it. */
typedef struct pushed {
  keel__towned own; /* first: the exit hook frees the block through it */
  keel_span sp;
  char ts[];
} pushed;

int keel_trace_ctx_push(const keel_span_ctx *ctx) {
  if (!ctx) return KEEL_EINVAL;
  if (!keel_self()) return KEEL_ENOTPROC;
  if (keel__trace_suppressed()) return KEEL_ESTATE; /* the exporter takes no trace context */
  size_t tl = ctx->tracestate ? strlen(ctx->tracestate) + 1 : 0;
  pushed *p = calloc(1, sizeof *p + tl);
  if (!p) return KEEL_ENOMEM;
  p->sp.ctx = *ctx;
  if (tl) {
    memcpy(p->ts, ctx->tracestate, tl);
    p->sp.ctx.tracestate = p->ts;
  }
  void *v = own(keel_local_get(KEEL_LOCAL_TRACE), &p->own, OWN_PUSHED);
  p->sp.prev = top_of(v);
  p->sp.current = true;
  p->sp.ended = true; /* nothing to end: it only stands for its context */
  top_set(v, &p->sp);
  return 0;
}

void keel_trace_ctx_pop(void) {
  void *v = keel_local_get(KEEL_LOCAL_TRACE);
  keel_span *s = top_of(v);
  if (!s || s == &suppress_marker) return;
  top_set(v, s->prev);
  pushed *p = (pushed *)((char *)s - offsetof(pushed, sp));
  owned_unlink(&p->own);
  free(p);
}

/* A span block for the gen_server hooks (log_calls.c). */
typedef struct heapspan {
  keel__towned own; /* first, as pushed's */
  keel_span sp;
} heapspan;

keel_span *keel__span_heap_new(void) {
  heapspan *h = calloc(1, sizeof *h);
  if (!h) return NULL;
  own(keel_local_get(KEEL_LOCAL_TRACE), &h->own, OWN_HEAPSPAN);
  return &h->sp;
}

void keel__span_heap_free(keel_span *sp) {
  if (!sp) return;
  heapspan *h = (heapspan *)((char *)sp - offsetof(heapspan, sp));
  owned_unlink(&h->own);
  free(h);
}

/* ---- span data -------------------------------------------------------------------- */

static void attrs_free(keel__tattrs *a) {
  for (uint32_t i = 0; i < a->n; i++)
    if (a->a[i].heap) free((char *)a->a[i].key); /* the string value shares its block */
  if (!a->inl) free(a->a);
}

void keel__span_data_free(keel__span_data *d) {
  if (!d) return;
  if (d->name != d->name_buf) free(d->name);
  free(d->status_msg);
  free(d->tracestate);
  attrs_free(&d->attrs);
  for (uint32_t i = 0; i < d->nevents; i++) {
    free(d->events[i].name);
    attrs_free(&d->events[i].attrs);
  }
  free(d->events);
  keel__trace_record_recycle(d);
}

/* The name a and b (b may be NULL), joined by a space when b is given. */
static int set_name2(keel__span_data *d, const char *a, size_t alen, const char *b, size_t blen) {
  size_t n = b ? alen + 1 + blen : alen;
  char *dst = d->name_buf;
  if (n >= sizeof d->name_buf && !(dst = malloc(n + 1))) return KEEL_ENOMEM;
  if (d->name && d->name != d->name_buf) free(d->name);
  memcpy(dst, a, alen);
  if (b) {
    dst[alen] = ' ';
    memcpy(dst + alen + 1, b, blen);
  }
  dst[n] = '\0';
  d->name = dst;
  return 0;
}

static int set_name(keel__span_data *d, const char *name) {
  return set_name2(d, name ? name : "", name ? strlen(name) : 0, NULL, 0);
}

/* ---- start and end ------------------------------------------------------------------ */

int keel_span_start(keel_span *sp, const char *name, keel_span_kind kind, const keel_span_opts *o) {
  const keel_span_ctx *parent = o ? o->parent : NULL;
  void *slot = keel_local_get(KEEL_LOCAL_TRACE);
  keel_span *cur = top_of(slot);
  bool suppressed = cur == &suppress_marker;
  if (!parent && !(o && o->root) && cur && !suppressed) parent = &cur->ctx;
  if (parent && !parent->valid) parent = NULL;

  memset(sp, 0, sizeof *sp);
  sp->ctx.valid = true;
  if (parent) {
    memcpy(sp->ctx.trace_id, parent->trace_id, 16);
    memcpy(sp->parent_id, parent->span_id, 8);
    sp->ctx.tracestate = parent->tracestate;
  } else {
    rand_nonzero(sp->ctx.trace_id, 16);
  }
  rand_nonzero(sp->ctx.span_id, 8);
  bool sampled = !suppressed && keel__trace_decide(parent, sp->ctx.trace_id);
  sp->ctx.flags = sampled ? KEEL_TRACE_SAMPLED : 0;

  int rc = 0;
  if (sampled && keel__trace_queue_on() && !(o && o->propagate_only)) { /* the one allocation */
    keel__span_data *d = keel__trace_record_alloc();
    if (d) {
      /* field by field, not memset: a 150-byte memset became `rep stos`,
       * whose start-up cost was half of this function's time (perf) */
      d->name = d->status_msg = d->tracestate = NULL;
      d->attrs = (keel__tattrs){.a = d->attr_inl, .cap = KEEL__TRACE_INLINE_ATTRS, .inl = true};
      d->arena_used = 0;
      d->events = NULL;
      d->nevents = d->evcap = d->dropped_events = 0;
      d->status = KEEL_SPAN_UNSET;
      d->end_ns = 0;
      memcpy(d->trace_id, sp->ctx.trace_id, 16);
      memcpy(d->span_id, sp->ctx.span_id, 8);
      memcpy(d->parent_id, sp->parent_id, 8);
      d->has_parent = parent != NULL;
      d->parent_remote = parent && parent->remote;
      d->flags = sp->ctx.flags;
      d->kind = (uint8_t)kind;
      d->start_ns = o && o->start_ns ? o->start_ns : keel__trace_now_ns();
      if (set_name(d, name) != 0 ||
          (sp->ctx.tracestate && !(d->tracestate = strdup(sp->ctx.tracestate)))) {
        keel__span_data_free(d);
        d = NULL;
      } else {
        slot = own(slot, &d->own, OWN_RECORD); /* it may make the tslot */
      }
    }
    if (!d) rc = KEEL_ENOMEM;
    sp->data = d;
  }
  if (!(o && o->no_current) && keel_self() && !suppressed) {
    sp->prev = cur;
    sp->current = true;
    top_set(slot, sp);
  }
  return rc;
}

void keel_span_end_at(keel_span *sp, uint64_t end_ns) {
  if (!sp || sp->ended) return;
  sp->ended = true;
  if (sp->current) {
    /* end in reverse order of start; if an inner span was left open, the
     * chain is cut back to before this one all the same */
    top_set(keel_local_get(KEEL_LOCAL_TRACE), sp->prev);
    sp->current = false;
  }
  keel__span_data *d = sp->data;
  if (!d) return;
  sp->data = NULL;
  owned_unlink(&d->own);
  d->end_ns = end_ns ? end_ns : keel__trace_now_ns();
  if (d->end_ns < d->start_ns) d->end_ns = d->start_ns; /* two threads' clocks (trace_clock.c) */
  keel__trace_push(d);
}

bool keel_span_recording(const keel_span *sp) {
  return sp && sp->data;
}

/* ---- attributes, events, status ------------------------------------------------------ */

/* The next attribute slot of a, grown when full (the record's inline
 * array is copied out to the heap once); NULL when the attribute is dropped
 * (counted). */
static keel__tattr *attr_slot(keel__tattrs *a) {
  if (a->n >= KEEL__TRACE_MAX_ATTRS) {
    a->dropped++;
    return NULL;
  }
  if (a->n == a->cap) {
    uint32_t cap = a->cap ? a->cap * 2 : 4;
    keel__tattr *na = a->inl ? malloc(cap * sizeof *na) : realloc(a->a, cap * sizeof *na);
    if (!na) {
      a->dropped++;
      return NULL;
    }
    if (a->inl) memcpy(na, a->a, a->n * sizeof *na);
    a->a = na, a->cap = cap, a->inl = false;
  }
  return &a->a[a->n];
}

/* n bytes of s and a NUL in the record's arena; NULL when it is full. */
static char *arena_copy(keel__span_data *d, const char *s, size_t n) {
  if (n + 1 > sizeof d->arena - d->arena_used) return NULL;
  char *dst = d->arena + d->arena_used;
  memcpy(dst, s, n);
  dst[n] = '\0';
  d->arena_used += (uint32_t)n + 1;
  return dst;
}

/* Claims the next attribute of a with key (copied unless key_static) of
 * type; a string value v of vlen bytes is copied too: into the arena when
 * both fit, else into one malloc'd block. The caller stores a scalar's value
 * in the slot returned (NULL: dropped, counted). Fields are stored one by
 * one, straight into the slot: a keel__tattr built on the stack and copied
 * whole made the compiler read back its byte-wide fields with 16-byte
 * loads, a store-forwarding stall each (perf: half of the set's time). */
static keel__tattr *attr_put(keel__span_data *d, keel__tattrs *a, const char *key, size_t klen,
                             bool key_static, uint8_t type, const char *v, size_t vlen) {
  keel__tattr *slot = attr_slot(a);
  if (!slot) return NULL;
  size_t need = (key_static ? 0 : klen + 1) + (v ? vlen + 1 : 0);
  if (need <= sizeof d->arena - d->arena_used) {
    slot->key = key_static ? key : arena_copy(d, key, klen);
    if (v) slot->v.s = arena_copy(d, v, vlen);
    slot->heap = false;
  } else {
    char *blk = malloc(klen + 1 + (v ? vlen + 1 : 0));
    if (!blk) {
      a->dropped++;
      return NULL;
    }
    memcpy(blk, key, klen);
    blk[klen] = '\0';
    if (v) {
      memcpy(blk + klen + 1, v, vlen);
      blk[klen + 1 + vlen] = '\0';
      slot->v.s = blk + klen + 1;
    }
    slot->key = blk;
    slot->heap = true;
  }
  slot->klen = (uint32_t)klen;
  slot->vlen = (uint32_t)vlen;
  slot->type = type;
  a->n++;
  return slot;
}

static void attr_add(keel__span_data *d, keel__tattrs *a, const keel_log_field *f) {
  if (!f->key) return;
  size_t kl = strlen(f->key);
  keel__tattr *t;
  switch (f->type) {
  case KEEL_LOG_T_STR: {
    const char *v = f->v.s ? f->v.s : "";
    attr_put(d, a, f->key, kl, false, KEEL__TA_STR, v, strlen(v));
    break;
  }
  case KEEL_LOG_T_INT:
    if ((t = attr_put(d, a, f->key, kl, false, KEEL__TA_INT, NULL, 0))) t->v.i = f->v.i;
    break;
  case KEEL_LOG_T_UINT:
    if ((t = attr_put(d, a, f->key, kl, false, KEEL__TA_INT, NULL, 0))) t->v.i = (int64_t)f->v.u;
    break;
  case KEEL_LOG_T_DOUBLE:
    if ((t = attr_put(d, a, f->key, kl, false, KEEL__TA_DOUBLE, NULL, 0))) t->v.d = f->v.d;
    break;
  case KEEL_LOG_T_BOOL:
    if ((t = attr_put(d, a, f->key, kl, false, KEEL__TA_BOOL, NULL, 0))) t->v.b = f->v.b;
    break;
  default: break; /* objects and the rest: not an OTLP scalar */
  }
}

void keel__span_attr_str(keel_span *sp, const char *key, size_t klen, const char *v, size_t vlen) {
  if (!sp || !sp->data) return;
  attr_put(sp->data, &sp->data->attrs, key, klen, true, KEEL__TA_STR, v ? v : "", v ? vlen : 0);
}

void keel__span_attr_int(keel_span *sp, const char *key, size_t klen, int64_t v) {
  if (!sp || !sp->data) return;
  keel__tattr *t = attr_put(sp->data, &sp->data->attrs, key, klen, true, KEEL__TA_INT, NULL, 0);
  if (t) t->v.i = v;
}

void keel__span_name2(keel_span *sp, const char *a, size_t alen, const char *b, size_t blen) {
  if (sp && sp->data) set_name2(sp->data, a, alen, b, blen);
}

void keel_span_set_attr_list(keel_span *sp, const keel_log_field *fields) {
  if (!sp || !sp->data || !fields) return;
  for (const keel_log_field *f = fields; f->type != KEEL_LOG_T_END; f++)
    attr_add(sp->data, &sp->data->attrs, f);
}

void keel_span_set_str(keel_span *sp, const char *key, const char *v) {
  keel_span_set(sp, KEEL_STR(key, v));
}
void keel_span_set_int(keel_span *sp, const char *key, int64_t v) {
  keel_span_set(sp, KEEL_INT(key, v));
}
void keel_span_set_double(keel_span *sp, const char *key, double v) {
  keel_span_set(sp, KEEL_DOUBLE(key, v));
}
void keel_span_set_bool(keel_span *sp, const char *key, bool v) {
  keel_span_set(sp, KEEL_BOOL(key, v));
}

void keel_span_event_list(keel_span *sp, const char *name, const keel_log_field *fields) {
  if (!sp || !sp->data) return;
  keel__span_data *d = sp->data;
  if (d->nevents >= KEEL__TRACE_MAX_EVENTS) {
    d->dropped_events++;
    return;
  }
  if (d->nevents == d->evcap) {
    uint32_t cap = d->evcap ? d->evcap * 2 : 4;
    keel__tevent *ne = realloc(d->events, cap * sizeof *ne);
    if (!ne) {
      d->dropped_events++;
      return;
    }
    d->events = ne, d->evcap = cap;
  }
  keel__tevent *e = &d->events[d->nevents];
  memset(e, 0, sizeof *e);
  if (!(e->name = strdup(name ? name : ""))) {
    d->dropped_events++;
    return;
  }
  e->t_ns = keel__trace_now_ns();
  d->nevents++;
  if (fields)
    for (const keel_log_field *f = fields; f->type != KEEL_LOG_T_END; f++)
      attr_add(d, &e->attrs, f);
}

void keel_span_set_status(keel_span *sp, keel_span_status status, const char *msg) {
  if (!sp || !sp->data) return;
  keel__span_data *d = sp->data;
  d->status = (uint8_t)status;
  free(d->status_msg);
  d->status_msg = status == KEEL_SPAN_ERROR && msg ? strdup(msg) : NULL;
}

void keel_span_set_name(keel_span *sp, const char *name) {
  if (sp && sp->data) set_name(sp->data, name);
}

/* ---- W3C trace context ------------------------------------------------------------------ */

static const char HEX[] = "0123456789abcdef";

void keel_trace_hex(const uint8_t *b, size_t n, char *out) {
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = HEX[b[i] >> 4];
    out[2 * i + 1] = HEX[b[i] & 15];
  }
  out[2 * n] = '\0';
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1; /* uppercase is invalid in traceparent */
}

/* n bytes from 2n lowercase hex digits; false on a bad digit or, when
 * nonzero, all zero. */
static bool unhex(const char *s, uint8_t *out, size_t n, bool nonzero) {
  uint8_t any = 0;
  for (size_t i = 0; i < n; i++) {
    int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out[i] = (uint8_t)(hi << 4 | lo);
    any |= out[i];
  }
  return any || !nonzero;
}

/* tracestate: W3C caps it at 32 members; 512 characters is what a vendor
 * must pass on. Printable ASCII only, so it cannot break a header. */
static bool tracestate_ok(const char *s) {
  size_t n = 0;
  for (; s[n]; n++)
    if (n >= 512 || (unsigned char)s[n] < 0x20 || (unsigned char)s[n] > 0x7e) return false;
  return n > 0;
}

bool keel_trace_parse(const char *s, const char *tracestate, keel_span_ctx *out) {
  keel_span_ctx c = {0};
  if (out) *out = c;
  if (!s) return false;
  size_t len = strlen(s);
  uint8_t ver;
  /* version(2) - trace-id(32) - parent-id(16) - flags(2) = 55 */
  if (len < 55 || !unhex(s, &ver, 1, false) || s[2] != '-' || ver == 0xff) return false;
  if ((ver == 0 && len != 55) || (len > 55 && s[55] != '-')) return false;
  if (!unhex(s + 3, c.trace_id, 16, true) || s[35] != '-') return false;
  if (!unhex(s + 36, c.span_id, 8, true) || s[52] != '-') return false;
  if (!unhex(s + 53, &c.flags, 1, false)) return false;
  c.flags &= KEEL_TRACE_SAMPLED; /* level 1: the other bits are not ours to pass on */
  c.remote = c.valid = true;
  if (tracestate && tracestate_ok(tracestate)) c.tracestate = tracestate;
  if (out) *out = c;
  return true;
}

void keel_trace_format(const keel_span_ctx *c, char out[56]) {
  memcpy(out, "00-", 3);
  keel_trace_hex(c->trace_id, 16, out + 3);
  out[35] = '-';
  keel_trace_hex(c->span_id, 8, out + 36);
  out[52] = '-';
  out[53] = '0';
  out[54] = (c->flags & KEEL_TRACE_SAMPLED) ? '1' : '0';
  out[55] = '\0';
}
