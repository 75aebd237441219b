/* trace_otlp.c - spans as an OTLP ExportTraceServiceRequest in protobuf.
 *
 * A small protobuf writer for the one message keel sends (decision 0022):
 * varints, fixed64/fixed32, length-delimited fields, and nested messages
 * written in place. A nested message reserves one byte for its length and,
 * when the body turns out to be 128 bytes or longer, moves it up by the
 * extra length bytes; spans are written once and moved at most three times
 * (span, scope, resource), each move a memmove of contiguous bytes.
 *
 * Field numbers are those of opentelemetry-proto v1 (trace.proto,
 * common.proto, resource.proto, trace_service.proto):
 *   ExportTraceServiceRequest  1 resource_spans
 *   ResourceSpans              1 resource, 2 scope_spans
 *   Resource                   1 attributes
 *   ScopeSpans                 1 scope, 2 spans
 *   InstrumentationScope       1 name, 2 version
 *   Span   1 trace_id, 2 span_id, 3 trace_state, 4 parent_span_id, 5 name,
 *          6 kind, 7 start_time_unix_nano (fixed64), 8 end_time_unix_nano
 *          (fixed64), 9 attributes, 10 dropped_attributes_count, 11 events,
 *          12 dropped_events_count, 15 status, 16 flags (fixed32)
 *   Event  1 time_unix_nano (fixed64), 2 name, 3 attributes,
 *          4 dropped_attributes_count
 *   Status 2 message, 3 code
 *   KeyValue 1 key, 2 value; AnyValue 1 string, 2 bool, 3 int, 4 double
 * Span.flags carries the W3C flags in bits 0-7 and, in bits 8 and 9,
 * whether the parent was remote (SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK and
 * SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK).
 */
#include <stdlib.h>
#include <string.h>

#include "keel/error.h"
#include "keel/trace_export.h"
#include "http/http_internal.h"
#include "ops/trace_internal.h"

typedef struct pb {
  uint8_t *p;
  size_t len, cap;
  bool oom;
} pb;

static bool pb_room(pb *b, size_t n) {
  if (b->oom) return false;
  if (b->len + n <= b->cap) return true;
  size_t cap = b->cap ? b->cap : 1024;
  while (cap < b->len + n)
    cap *= 2;
  uint8_t *np = realloc(b->p, cap);
  if (!np) {
    b->oom = true;
    return false;
  }
  b->p = np, b->cap = cap;
  return true;
}

static size_t varint_len(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80)
    v >>= 7, n++;
  return n;
}

static void put_varint_at(uint8_t *p, uint64_t v) {
  while (v >= 0x80) {
    *p++ = (uint8_t)(v | 0x80);
    v >>= 7;
  }
  *p = (uint8_t)v;
}

static void pb_varint(pb *b, uint64_t v) {
  if (!pb_room(b, 10)) return;
  put_varint_at(b->p + b->len, v);
  b->len += varint_len(v);
}

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_I32 = 5 };

static void pb_tag(pb *b, unsigned field, unsigned wt) {
  pb_varint(b, (uint64_t)field << 3 | wt);
}

static void pb_bytes(pb *b, unsigned field, const void *v, size_t n) {
  pb_tag(b, field, WT_LEN);
  pb_varint(b, n);
  if (!pb_room(b, n)) return;
  memcpy(b->p + b->len, v, n);
  b->len += n;
}

static void pb_str(pb *b, unsigned field, const char *s) {
  pb_bytes(b, field, s, strlen(s));
}

static void pb_fixed64(pb *b, unsigned field, uint64_t v) {
  pb_tag(b, field, WT_I64);
  if (!pb_room(b, 8)) return;
  for (int i = 0; i < 8; i++) /* little-endian, as protobuf says */
    b->p[b->len++] = (uint8_t)(v >> (8 * i));
}

static void pb_fixed32(pb *b, unsigned field, uint32_t v) {
  pb_tag(b, field, WT_I32);
  if (!pb_room(b, 4)) return;
  for (int i = 0; i < 4; i++)
    b->p[b->len++] = (uint8_t)(v >> (8 * i));
}

static void pb_double(pb *b, unsigned field, double d) {
  uint64_t v;
  memcpy(&v, &d, 8);
  pb_fixed64(b, field, v);
}

/* A nested message: begin writes the tag and one length byte, end fixes it. */
static size_t pb_begin(pb *b, unsigned field) {
  pb_tag(b, field, WT_LEN);
  if (!pb_room(b, 1)) return 0;
  b->p[b->len++] = 0;
  return b->len;
}

static void pb_end(pb *b, size_t body) {
  if (b->oom) return;
  size_t n = b->len - body, extra = varint_len(n) - 1;
  if (extra) {
    if (!pb_room(b, extra)) return;
    memmove(b->p + body + extra, b->p + body, n);
    b->len += extra;
  }
  put_varint_at(b->p + body - 1, n);
}

/* ---- OTLP messages ------------------------------------------------------------------ */

static void kv_str(pb *b, unsigned field, const char *k, const char *v, size_t vlen) {
  size_t kv = pb_begin(b, field);
  pb_str(b, 1, k);
  size_t av = pb_begin(b, 2);
  pb_bytes(b, 1, v, vlen);
  pb_end(b, av);
  pb_end(b, kv);
}

static void attr(pb *b, unsigned field, const keel__tattr *a) {
  size_t kv = pb_begin(b, field);
  pb_bytes(b, 1, a->key, a->klen);
  size_t av = pb_begin(b, 2);
  switch (a->type) {
  case KEEL__TA_STR: pb_bytes(b, 1, a->v.s, a->vlen); break;
  case KEEL__TA_BOOL:
    pb_tag(b, 2, WT_VARINT);
    pb_varint(b, a->v.b);
    break;
  case KEEL__TA_INT:
    pb_tag(b, 3, WT_VARINT);
    pb_varint(b, (uint64_t)a->v.i); /* int64: two's complement, 10 bytes when negative */
    break;
  case KEEL__TA_DOUBLE: pb_double(b, 4, a->v.d); break;
  default: break;
  }
  pb_end(b, av);
  pb_end(b, kv);
}

static void attrs(pb *b, unsigned field, const keel__tattrs *as) {
  for (uint32_t i = 0; i < as->n; i++)
    attr(b, field, &as->a[i]);
}

static void span(pb *b, const keel__span_data *d) {
  size_t s = pb_begin(b, 2); /* ScopeSpans.spans */
  pb_bytes(b, 1, d->trace_id, 16);
  pb_bytes(b, 2, d->span_id, 8);
  if (d->tracestate) pb_str(b, 3, d->tracestate);
  if (d->has_parent) pb_bytes(b, 4, d->parent_id, 8);
  pb_str(b, 5, d->name);
  pb_tag(b, 6, WT_VARINT);
  pb_varint(b, d->kind);
  pb_fixed64(b, 7, d->start_ns);
  pb_fixed64(b, 8, d->end_ns);
  attrs(b, 9, &d->attrs);
  if (d->attrs.dropped) {
    pb_tag(b, 10, WT_VARINT);
    pb_varint(b, d->attrs.dropped);
  }
  for (uint32_t i = 0; i < d->nevents; i++) {
    const keel__tevent *e = &d->events[i];
    size_t ev = pb_begin(b, 11);
    pb_fixed64(b, 1, e->t_ns);
    pb_str(b, 2, e->name);
    attrs(b, 3, &e->attrs);
    if (e->attrs.dropped) {
      pb_tag(b, 4, WT_VARINT);
      pb_varint(b, e->attrs.dropped);
    }
    pb_end(b, ev);
  }
  if (d->dropped_events) {
    pb_tag(b, 12, WT_VARINT);
    pb_varint(b, d->dropped_events);
  }
  if (d->status) {
    size_t st = pb_begin(b, 15);
    if (d->status_msg) pb_str(b, 2, d->status_msg);
    pb_tag(b, 3, WT_VARINT);
    pb_varint(b, d->status);
    pb_end(b, st);
  }
  pb_fixed32(b, 16, (uint32_t)d->flags | 0x100u | (d->parent_remote ? 0x200u : 0));
  pb_end(b, s);
}

static int hexdig(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* "k1=v1,k2=v2" with percent-encoded values (the W3C Baggage form that
 * OTEL_RESOURCE_ATTRIBUTES uses); a pair without '=' is skipped. */
static void resource_pairs(pb *b, const char *list, const char *skip_key) {
  const char *p = list;
  while (p && *p) {
    const char *end = strchr(p, ',');
    size_t n = end ? (size_t)(end - p) : strlen(p);
    const char *eq = memchr(p, '=', n);
    if (eq && eq > p) {
      char key[128], val[512];
      size_t kl = (size_t)(eq - p), vl = 0;
      while (kl && p[kl - 1] == ' ')
        kl--;
      const char *k0 = p;
      while (kl && *k0 == ' ')
        k0++, kl--;
      if (kl && kl < sizeof key) {
        memcpy(key, k0, kl);
        key[kl] = '\0';
        for (const char *v = eq + 1; v < p + n && vl < sizeof val - 1; v++) {
          int hi, lo;
          if (*v == '%' && v + 2 < p + n && (hi = hexdig(v[1])) >= 0 && (lo = hexdig(v[2])) >= 0) {
            val[vl++] = (char)(hi << 4 | lo);
            v += 2;
          } else {
            val[vl++] = *v;
          }
        }
        if (!skip_key || strcmp(key, skip_key) != 0) kv_str(b, 1, key, val, vl);
      }
    }
    p = end ? end + 1 : NULL;
  }
}

/* The request into b (its buffer kept whatever happens). */
static void encode(pb *b, struct keel_span_data *const *spans, size_t n,
                   const keel_trace_export_opts *o) {
  size_t rs = pb_begin(b, 1);  /* ExportTraceServiceRequest.resource_spans */
  size_t res = pb_begin(b, 1); /* ResourceSpans.resource */
  /* OTEL_SERVICE_NAME wins over a service.name in OTEL_RESOURCE_ATTRIBUTES */
  const char *svc = o->service_name;
  if (svc) kv_str(b, 1, "service.name", svc, strlen(svc));
  resource_pairs(b, o->resource_attrs, svc ? "service.name" : NULL);
  if (!svc && !(o->resource_attrs && strstr(o->resource_attrs, "service.name=")))
    kv_str(b, 1, "service.name", "unknown_service", 15);
  kv_str(b, 1, "telemetry.sdk.name", "keel", 4);
  pb_end(b, res);
  size_t ss = pb_begin(b, 2); /* ResourceSpans.scope_spans */
  size_t sc = pb_begin(b, 1); /* ScopeSpans.scope */
  pb_str(b, 1, "keel");
  pb_end(b, sc);
  for (size_t i = 0; i < n; i++)
    span(b, spans[i]);
  pb_end(b, ss);
  pb_end(b, rs);
}

int keel__trace_encode_into(struct keel_span_data *const *spans, size_t n,
                            const keel_trace_export_opts *o, uint8_t **buf, size_t *len,
                            size_t *cap) {
  keel_trace_export_opts none = {0};
  pb b = {.p = *buf, .cap = *cap};
  pb_room(&b, 256 + n * 256);
  encode(&b, spans, n, o ? o : &none);
  *buf = b.p, *cap = b.cap, *len = b.oom ? 0 : b.len;
  return b.oom ? KEEL_ENOMEM : 0;
}

int keel_trace_encode_otlp(struct keel_span_data *const *spans, size_t n,
                           const keel_trace_export_opts *o, uint8_t **out, size_t *len) {
  if (!out || !len || (n && !spans)) return KEEL_EINVAL;
  *out = NULL;
  *len = 0;
  uint8_t *p = NULL;
  size_t cap = 0;
  int rc = keel__trace_encode_into(spans, n, o, &p, len, &cap);
  if (rc) {
    free(p);
    *len = 0;
    return rc;
  }
  *out = p;
  return 0;
}
