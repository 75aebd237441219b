/* reqid.c - request ids and W3C trace context for the HTTP middleware.
 *
 * A request id from the client (X-Request-Id, X-Correlation-Id) is taken only
 * when it is 1..128 characters of [A-Za-z0-9._:-]: enough for a UUID, a ULID,
 * a W3C trace id or a cloud load balancer's id, and nothing that could break a
 * log line, a header or a JSON string. Otherwise the server makes a UUID v4.
 *
 * Randomness comes from keel__rand64 (src/ops/rand.c, per-thread xoshiro256**).
 *
 * traceparent parsing follows W3C Trace Context Level 1, section 3.2 and its
 * rules for versions it does not know: "version-traceid-parentid-flags",
 * lowercase hex only; version ff is invalid; an all-zero trace id or parent
 * id is invalid; version 00 is exactly 55 characters; a higher version must be
 * at least 55 and, if longer, have '-' right after the flags (the rest is
 * that version's business and is ignored). What we propagate is always
 * version 00 with the caller's trace id, a new parent id (our span) and only
 * the sampled flag (level 1: other flag bits must be sent as zero).
 */
#include <string.h>

#include "http/middleware.h"
#include "ops/trace_internal.h"

static const char HEX[] = "0123456789abcdef";

static void hex_bytes(char *out, const unsigned char *b, size_t n) {
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = HEX[b[i] >> 4];
    out[2 * i + 1] = HEX[b[i] & 15];
  }
}

/* n random bytes, not all zero (W3C: all-zero ids are invalid). */
static void random_nonzero(unsigned char *b, size_t n) {
  for (;;) {
    for (size_t i = 0; i < n; i += 8) {
      uint64_t v = keel__rand64();
      for (size_t j = 0; j < 8 && i + j < n; j++)
        b[i + j] = (unsigned char)(v >> (8 * j));
    }
    for (size_t i = 0; i < n; i++)
      if (b[i]) return;
  }
}

/* ---- request ids ----------------------------------------------------------------- */

bool keel__reqid_valid(const char *s) {
  if (!s) return false;
  size_t n = 0;
  for (; s[n]; n++) {
    unsigned char c = (unsigned char)s[n];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == ':' || c == '-';
    if (!ok || n >= 128) return false;
  }
  return n >= 1;
}

void keel__reqid_make(char out[37]) {
  unsigned char b[16];
  uint64_t a = keel__rand64(), c = keel__rand64();
  for (int i = 0; i < 8; i++) {
    b[i] = (unsigned char)(a >> (8 * i));
    b[8 + i] = (unsigned char)(c >> (8 * i));
  }
  b[6] = (unsigned char)((b[6] & 0x0f) | 0x40); /* version 4 */
  b[8] = (unsigned char)((b[8] & 0x3f) | 0x80); /* variant 10xx (RFC 9562) */
  char *o = out;
  for (int i = 0; i < 16; i++) {
    if (i == 4 || i == 6 || i == 8 || i == 10) *o++ = '-';
    *o++ = HEX[b[i] >> 4];
    *o++ = HEX[b[i] & 15];
  }
  *o = '\0';
}

/* ---- traceparent ------------------------------------------------------------------- */

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1; /* uppercase is invalid in traceparent */
}

/* n lowercase hex digits, not all zero when nonzero is set. */
static bool hex_field(const char *s, size_t n, bool nonzero) {
  bool any = false;
  for (size_t i = 0; i < n; i++) {
    if (hexval(s[i]) < 0) return false;
    if (s[i] != '0') any = true;
  }
  return any || !nonzero;
}

bool keel__traceparent_parse(const char *s, keel__traceparent *out) {
  if (!s) return false;
  size_t len = strlen(s);
  /* version(2) - trace-id(32) - parent-id(16) - flags(2) = 55 */
  if (len < 55) return false;
  if (!hex_field(s, 2, false) || s[2] != '-') return false;
  int version = hexval(s[0]) * 16 + hexval(s[1]);
  if (version == 0xff) return false;
  if (version == 0 && len != 55) return false;
  if (len > 55 && s[55] != '-') return false;
  if (!hex_field(s + 3, 32, true) || s[35] != '-') return false;
  if (!hex_field(s + 36, 16, true) || s[52] != '-') return false;
  if (!hex_field(s + 53, 2, false)) return false;
  if (out) {
    memcpy(out->trace_id, s + 3, 32);
    out->trace_id[32] = '\0';
    memcpy(out->parent_id, s + 36, 16);
    out->parent_id[16] = '\0';
    out->flags = (uint8_t)(hexval(s[53]) * 16 + hexval(s[54]));
  }
  return true;
}

void keel__traceparent_next(const keel__traceparent *in, char out[56], char span_out[17]) {
  unsigned char b[16] = {0};
  char trace[33];
  uint8_t flags;
  if (in) {
    memcpy(trace, in->trace_id, 33);
    flags = in->flags & 0x01; /* sampled; level 1 sends the other bits as zero */
  } else {
    random_nonzero(b, 16);
    hex_bytes(trace, b, 16);
    trace[32] = '\0';
    flags = 0x01;
  }
  random_nonzero(b, 8);
  hex_bytes(span_out, b, 8);
  span_out[16] = '\0';
  memcpy(out, "00-", 3);
  memcpy(out + 3, trace, 32);
  out[35] = '-';
  memcpy(out + 36, span_out, 16);
  out[52] = '-';
  out[53] = HEX[flags >> 4];
  out[54] = HEX[flags & 15];
  out[55] = '\0';
}
