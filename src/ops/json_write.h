/* json_write.h - the JSON writer shared by the log encoder and the observer
 * (internal, not installed).
 *
 * A growing byte buffer and the encoders of JSON scalars: strings escaped
 * eight bytes at a time with invalid UTF-8 replaced by U+FFFD, integers, and
 * doubles as the shortest decimal that reads back exactly. Everything is
 * static inline: the log encoder is a hot path and keeps its inlining; a
 * caller that runs out of memory finds b->oom set and the buffer unchanged
 * from that point on.
 */
#ifndef KEEL_OPS_JSON_WRITE_H
#define KEEL_OPS_JSON_WRITE_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct keel__jw {
  char *p;
  size_t len, cap;
  bool oom;
} keel__jw;

static inline bool keel__jw_grow(keel__jw *b, size_t need) {
  size_t cap = b->cap ? b->cap : 1024;
  while (cap < b->len + need)
    cap *= 2;
  char *p = realloc(b->p, cap);
  if (!p) {
    b->oom = true;
    return false;
  }
  b->p = p;
  b->cap = cap;
  return true;
}

/* Makes room for n more bytes; false (and b->oom) when memory ran out. */
static inline bool keel__jw_room(keel__jw *b, size_t n) {
  if (b->len + n <= b->cap) return true;
  return keel__jw_grow(b, n);
}

static inline void keel__jw_put(keel__jw *b, const char *s, size_t n) {
  if (n == 0 || !keel__jw_room(b, n)) return;
  memcpy(b->p + b->len, s, n);
  b->len += n;
}

#define KEEL__JW_LIT(b, lit) keel__jw_put((b), (lit), sizeof(lit) - 1)

static inline void keel__jw_ch(keel__jw *b, char c) {
  if (!keel__jw_room(b, 1)) return;
  b->p[b->len++] = c;
}

/* 0: copy as is; 1: needs an escape or UTF-8 validation. */
static const unsigned char keel__jw_special[256] = {
    ['\0'] = 1, [1] = 1,    [2] = 1,    [3] = 1,    [4] = 1,    [5] = 1,    [6] = 1,    [7] = 1,
    [8] = 1,    [9] = 1,    [10] = 1,   [11] = 1,   [12] = 1,   [13] = 1,   [14] = 1,   [15] = 1,
    [16] = 1,   [17] = 1,   [18] = 1,   [19] = 1,   [20] = 1,   [21] = 1,   [22] = 1,   [23] = 1,
    [24] = 1,   [25] = 1,   [26] = 1,   [27] = 1,   [28] = 1,   [29] = 1,   [30] = 1,   [31] = 1,
    ['"'] = 1,  ['\\'] = 1,
#define HI16(x)                                                                                    \
  [x + 0] = 1, [x + 1] = 1, [x + 2] = 1, [x + 3] = 1, [x + 4] = 1, [x + 5] = 1, [x + 6] = 1,       \
       [x + 7] = 1, [x + 8] = 1, [x + 9] = 1, [x + 10] = 1, [x + 11] = 1, [x + 12] = 1,            \
       [x + 13] = 1, [x + 14] = 1, [x + 15] = 1
    HI16(0x80), HI16(0x90), HI16(0xa0), HI16(0xb0), HI16(0xc0), HI16(0xd0), HI16(0xe0), HI16(0xf0),
#undef HI16
};

/* Length of the valid UTF-8 sequence at s (n bytes left), 0 if invalid
 * (overlong forms, surrogates, code points above U+10FFFF, truncation). */
static inline size_t keel__jw_utf8_len(const unsigned char *s, size_t n) {
  unsigned char c = s[0];
#define CONT(i) (n > (i) && (s[i] & 0xc0) == 0x80)
  if (c >= 0xc2 && c <= 0xdf) return CONT(1) ? 2 : 0;
  if (c >= 0xe0 && c <= 0xef) {
    if (n < 3 || !CONT(2)) return 0;
    unsigned char lo = 0x80, hi = 0xbf;
    if (c == 0xe0) lo = 0xa0;
    if (c == 0xed) hi = 0x9f;
    return (s[1] >= lo && s[1] <= hi) ? 3 : 0;
  }
  if (c >= 0xf0 && c <= 0xf4) {
    if (n < 4 || !CONT(2) || !CONT(3)) return 0;
    unsigned char lo = 0x80, hi = 0xbf;
    if (c == 0xf0) lo = 0x90;
    if (c == 0xf4) hi = 0x8f;
    return (s[1] >= lo && s[1] <= hi) ? 4 : 0;
  }
#undef CONT
  return 0;
}

#define KEEL__JW_ONES  0x0101010101010101ull
#define KEEL__JW_HIGHS 0x8080808080808080ull

/* Escaped text of s (n bytes) without quotes. */
static inline void keel__jw_escaped(keel__jw *b, const char *str, size_t n) {
  if (!keel__jw_room(b, n * 6)) return; /* worst case: every byte becomes \u00XX */
  const unsigned char *s = (const unsigned char *)str;
  char *o = b->p + b->len;
  size_t i = 0;
  while (i < n) {
    size_t start = i;
    /* Eight bytes at a time while none is keel__jw_special: no byte below 0x20, no
     * quote, no backslash, no high bit (the classic haszero/hasless tests,
     * exact for existence). */
    while (i + 8 <= n) {
      uint64_t v;
      memcpy(&v, s + i, 8);
      uint64_t q = v ^ (KEEL__JW_ONES * '"'), bs = v ^ (KEEL__JW_ONES * '\\');
      uint64_t bad = ((v - KEEL__JW_ONES * 0x20) & ~v) | ((q - KEEL__JW_ONES) & ~q) | ((bs - KEEL__JW_ONES) & ~bs) | v;
      if (bad & KEEL__JW_HIGHS) break;
      i += 8;
    }
    while (i < n && !keel__jw_special[s[i]])
      i++;
    memcpy(o, s + start, i - start);
    o += i - start;
    if (i == n) break;
    unsigned char c = s[i];
    if (c >= 0x80) {
      size_t l = keel__jw_utf8_len(s + i, n - i);
      if (l) {
        memcpy(o, s + i, l);
        o += l;
        i += l;
      } else {
        memcpy(o, "\xef\xbf\xbd", 3); /* U+FFFD for each invalid byte */
        o += 3;
        i++;
      }
      continue;
    }
    *o++ = '\\';
    switch (c) {
    case '"': *o++ = '"'; break;
    case '\\': *o++ = '\\'; break;
    case '\n': *o++ = 'n'; break;
    case '\t': *o++ = 't'; break;
    case '\r': *o++ = 'r'; break;
    case '\b': *o++ = 'b'; break;
    case '\f': *o++ = 'f'; break;
    default:
      memcpy(o, "u00", 3);
      o[3] = "0123456789abcdef"[c >> 4];
      o[4] = "0123456789abcdef"[c & 15];
      o += 5;
    }
    i++;
  }
  b->len = (size_t)(o - b->p);
}

static inline void keel__jw_str(keel__jw *b, const char *s) {
  keel__jw_ch(b, '"');
  if (s) keel__jw_escaped(b, s, strlen(s));
  keel__jw_ch(b, '"');
}

static inline size_t keel__jw_fmt_u64(char *out, uint64_t v) {
  char tmp[20];
  size_t n = 0;
  do {
    tmp[n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  for (size_t i = 0; i < n; i++)
    out[i] = tmp[n - 1 - i];
  return n;
}

static inline void keel__jw_u64(keel__jw *b, uint64_t v) {
  if (!keel__jw_room(b, 20)) return;
  b->len += keel__jw_fmt_u64(b->p + b->len, v);
}

static inline void keel__jw_i64(keel__jw *b, int64_t v) {
  if (v < 0) {
    keel__jw_ch(b, '-');
    keel__jw_u64(b, (uint64_t)0 - (uint64_t)v);
  } else {
    keel__jw_u64(b, (uint64_t)v);
  }
}

/* The shortest decimal that reads back as d; JSON has no NaN or infinities. */
static inline void keel__jw_double(keel__jw *b, double d) {
  if (!isfinite(d)) {
    KEEL__JW_LIT(b, "null");
    return;
  }
  if (d == 0) {
    keel__jw_ch(b, '0');
    return;
  }
  if (!keel__jw_room(b, 32)) return;
  double a = fabs(d);
  if (a >= 1e-6 && a < 1e15) {
    static const double p10[] = {1e0, 1e1, 1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15};
    for (int k = 0; k < 16; k++) {
      double s = a * p10[k];
      if (s >= 9007199254740992.0) break; /* 2^53: m would not be exact */
      uint64_t m = (uint64_t)(s + 0.5);
      /* m / 10^k is correctly rounded, and so is strtod of the decimal we
       * print: equal means the text reads back as d. */
      if ((double)m / p10[k] != a) continue;
      char digits[20];
      size_t nd = keel__jw_fmt_u64(digits, m);
      char *o = b->p + b->len;
      if (d < 0) *o++ = '-';
      if ((size_t)k >= nd) {
        *o++ = '0';
        *o++ = '.';
        for (size_t z = 0; z < (size_t)k - nd; z++)
          *o++ = '0';
        memcpy(o, digits, nd);
        o += nd;
      } else {
        memcpy(o, digits, nd - (size_t)k);
        o += nd - (size_t)k;
        if (k) {
          *o++ = '.';
          memcpy(o, digits + nd - (size_t)k, (size_t)k);
          o += k;
        }
      }
      b->len = (size_t)(o - b->p);
      return;
    }
  }
  char tmp[32];
  for (int prec = 15; prec <= 17; prec++) {
    snprintf(tmp, sizeof tmp, "%.*g", prec, d);
    if (strtod(tmp, NULL) == d) break;
  }
  keel__jw_put(b, tmp, strlen(tmp));
}

#endif
