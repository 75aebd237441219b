/* cron.c - crontab expressions and the search for their next slot.
 *
 * Parsing turns the five fields into bit sets (minute 0-59, hour 0-23,
 * day-of-month 1-31, month 1-12, day-of-week 0-6 with 7 folded onto 0) and
 * keeps the three flags Vixie cron keeps, from whether a field's text starts
 * with '*': the day-of-month and day-of-week flags choose between "both day
 * fields match" and "either matches" (Vixie's day rule, quirk included:
 * "*\/2" counts as a star), and the minute and hour flags say whether a job
 * is "wildcard" for daylight-saving changes (below).
 *
 * The search works on local civil time written as seconds ("local seconds":
 * the Unix time the same calendar reading would have in UTC), one stretch
 * of constant UTC offset at a time (keel__tz_period_at). Inside a stretch
 * local seconds and Unix seconds differ by the offset, so the first matching
 * local minute is found with plain calendar arithmetic that jumps over
 * months, days and hours that cannot match, and is then turned back into an
 * instant. Where one stretch meets the next, cronie's documented rule
 * applies (docs/decisions/0025-cron-dst-like-cronie.md):
 * - a spring-forward gap: the local minutes the clock skipped do not exist.
 *   A fixed-time job (neither minute nor hour starts with '*') that matches
 *   any of them runs once at the first instant after the gap; a wildcard job
 *   does not run for them.
 * - a fall-back repeat: the local minutes shown twice run twice for a
 *   wildcard job (it follows the clock) and once, the first time, for a
 *   fixed-time job: its search in the later stretch starts after the repeat.
 * The search gives up after 10 years (Feb 30 never comes; Feb 29 alone is at
 * most 8 years away).
 */
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "keel/cron.h"
#include "keel/error.h"
#include "tz_internal.h"

struct keel_cron {
  uint64_t minute;
  uint32_t hour, dom; /* dom: bits 1-31 */
  uint16_t month;     /* bits 1-12 */
  uint8_t dow;        /* bits 0-6, Sunday 0 */
  bool dom_star, dow_star;
  bool wild; /* the minute or the hour field starts with '*' */
  keel__tz *tz;
};

enum { F_MIN, F_HOUR, F_DOM, F_MON, F_DOW, NFIELDS };

static const struct field {
  const char *name;
  int lo, hi;
} fields[NFIELDS] = {{"minute", 0, 59},
                     {"hour", 0, 23},
                     {"day-of-month", 1, 31},
                     {"month", 1, 12},
                     {"day-of-week", 0, 7}};

static const char *const month_names[] = {"jan", "feb", "mar", "apr", "may", "jun",
                                          "jul", "aug", "sep", "oct", "nov", "dec"};
static const char *const day_names[] = {"sun", "mon", "tue", "wed", "thu", "fri", "sat"};

static const struct macro {
  const char *name, *expr;
} macros[] = {{"@yearly", "0 0 1 1 *"}, {"@annually", "0 0 1 1 *"}, {"@monthly", "0 0 1 * *"},
              {"@weekly", "0 0 * * 0"}, {"@daily", "0 0 * * *"},    {"@midnight", "0 0 * * *"},
              {"@hourly", "0 * * * *"}};

enum { HORIZON_S = 10 * 366 * 86400 };
/* About +-30000 years: local seconds and day counts stay far from overflow. */
static const int64_t LIMIT_S = INT64_C(30000) * 366 * 86400;

/* ---- parsing ---------------------------------------------------------------- */

static bool is_digit(char c) {
  return c >= '0' && c <= '9';
}
static bool is_alpha(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}
static char lower(char c) {
  return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

/* A number or, in the month and day-of-week fields, a three-letter name, at
 * *sp (which it advances). 0, or KEEL_EINVAL with a message. */
static int parse_value(const char **sp, const char *end, int f, int *out, char *err,
                       size_t errlen) {
  const char *s = *sp;
  const struct field *fd = &fields[f];
  if (s < end && is_digit(*s)) {
    long v = 0;
    while (s < end && is_digit(*s)) {
      if (v < 100000) v = v * 10 + (*s - '0');
      s++;
    }
    if (v < fd->lo || v > fd->hi)
      return keel__tz_fail(err, errlen, "%s: %ld is out of range %d-%d", fd->name, v, fd->lo,
                           fd->hi);
    *out = (int)v;
    *sp = s;
    return 0;
  }
  const char *b = s;
  while (s < end && is_alpha(*s))
    s++;
  if (s == b) {
    if (b == end) return keel__tz_fail(err, errlen, "%s: a value is missing", fd->name);
    return keel__tz_fail(err, errlen, "%s: unexpected '%c'", fd->name, *b);
  }
  const char *const *names = f == F_MON ? month_names : f == F_DOW ? day_names : NULL;
  int nnames = f == F_MON ? 12 : 7;
  if (!names)
    return keel__tz_fail(err, errlen,
                         "%s: names are allowed only in month and day-of-week (\"%.*s\")", fd->name,
                         (int)(s - b), b);
  if (s - b == 3)
    for (int i = 0; i < nnames; i++)
      if (lower(b[0]) == names[i][0] && lower(b[1]) == names[i][1] && lower(b[2]) == names[i][2]) {
        *out = f == F_MON ? i + 1 : i;
        *sp = s;
        return 0;
      }
  return keel__tz_fail(err, errlen, "%s: unknown name \"%.*s\"", fd->name, (int)(s - b), b);
}

/* One list item: '*', a, a-b, each optionally /step; a/step is a-max/step. */
static int parse_item(const char *s, const char *end, int f, uint64_t *bits, char *err,
                      size_t errlen) {
  const struct field *fd = &fields[f];
  int lo, hi, step = 1, rc;
  if (s == end) return keel__tz_fail(err, errlen, "%s: empty list item", fd->name);
  if (*s == '*') {
    lo = fd->lo, hi = fd->hi;
    s++;
  } else {
    if ((rc = parse_value(&s, end, f, &lo, err, errlen))) return rc;
    hi = lo;
    if (s < end && *s == '-') {
      s++;
      if ((rc = parse_value(&s, end, f, &hi, err, errlen))) return rc;
      if (hi < lo)
        return keel__tz_fail(err, errlen, "%s: range %d-%d runs backwards", fd->name, lo, hi);
    } else if (s < end && *s == '/') {
      hi = fd->hi;
    }
  }
  if (s < end && *s == '/') {
    s++;
    long v = 0;
    const char *b = s;
    while (s < end && is_digit(*s)) {
      if (v < 100000) v = v * 10 + (*s - '0');
      s++;
    }
    if (s == b) return keel__tz_fail(err, errlen, "%s: a step needs a number after '/'", fd->name);
    if (v < 1 || v > fd->hi - fd->lo + 1)
      return keel__tz_fail(err, errlen, "%s: step %ld is out of range 1-%d", fd->name, v,
                           fd->hi - fd->lo + 1);
    step = (int)v;
  }
  if (s < end) return keel__tz_fail(err, errlen, "%s: unexpected '%c'", fd->name, *s);
  for (int v = lo; v <= hi; v += step)
    *bits |= UINT64_C(1) << v;
  return 0;
}

static int parse_field(const char *s, const char *end, int f, uint64_t *bits, char *err,
                       size_t errlen) {
  *bits = 0;
  for (;;) {
    const char *comma = memchr(s, ',', (size_t)(end - s));
    const char *e = comma ? comma : end;
    int rc = parse_item(s, e, f, bits, err, errlen);
    if (rc) return rc;
    if (!comma) break;
    s = comma + 1;
  }
  if (f == F_DOW && (*bits & (1u << 7))) *bits = (*bits | 1u) & 0x7f; /* 7 is Sunday */
  return 0;
}

static bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static int parse_fields(const char *expr, keel_cron *c, char *err, size_t errlen) {
  const char *tok[NFIELDS + 1][2];
  int n = 0;
  for (const char *s = expr; *s;) {
    while (is_space(*s))
      s++;
    if (!*s) break;
    const char *b = s;
    while (*s && !is_space(*s))
      s++;
    if (n <= NFIELDS) tok[n][0] = b, tok[n][1] = s;
    n++;
  }
  if (n != NFIELDS)
    return keel__tz_fail(
        err, errlen, "expected 5 fields (minute hour day-of-month month day-of-week), got %d", n);
  uint64_t bits[NFIELDS];
  for (int f = 0; f < NFIELDS; f++) {
    int rc = parse_field(tok[f][0], tok[f][1], f, &bits[f], err, errlen);
    if (rc) return rc;
  }
  c->minute = bits[F_MIN];
  c->hour = (uint32_t)bits[F_HOUR];
  c->dom = (uint32_t)bits[F_DOM];
  c->month = (uint16_t)bits[F_MON];
  c->dow = (uint8_t)bits[F_DOW];
  c->wild = *tok[F_MIN][0] == '*' || *tok[F_HOUR][0] == '*';
  c->dom_star = *tok[F_DOM][0] == '*';
  c->dow_star = *tok[F_DOW][0] == '*';
  return 0;
}

static int parse_expr(const char *expr, keel_cron *c, char *err, size_t errlen) {
  while (is_space(*expr))
    expr++;
  if (*expr != '@') return parse_fields(expr, c, err, errlen);
  size_t n = 0;
  while (expr[n] && !is_space(expr[n]))
    n++;
  for (const char *s = expr + n; *s; s++)
    if (!is_space(*s))
      return keel__tz_fail(err, errlen, "unexpected text after %.*s", (int)n, expr);
  for (size_t i = 0; i < sizeof macros / sizeof macros[0]; i++)
    if (strlen(macros[i].name) == n && strncasecmp(expr, macros[i].name, n) == 0)
      return parse_fields(macros[i].expr, c, err, errlen);
  if (n == 7 && strncasecmp(expr, "@reboot", 7) == 0)
    return keel__tz_fail(err, errlen, "@reboot is not a time schedule");
  return keel__tz_fail(err, errlen, "unknown macro \"%.*s\"", (int)n, expr);
}

int keel_cron_parse(const char *expr, const char *tz, keel_cron **out, char *err, size_t errlen) {
  if (err && errlen) err[0] = 0;
  if (!out) return keel__tz_fail(err, errlen, "out is NULL");
  *out = NULL;
  if (!expr) return keel__tz_fail(err, errlen, "expression is NULL");
  keel_cron *c = calloc(1, sizeof *c);
  if (!c) return KEEL_ENOMEM;
  int rc = parse_expr(expr, c, err, errlen);
  if (!rc && tz && *tz && strcmp(tz, "UTC") != 0) rc = keel__tz_load(tz, &c->tz, err, errlen);
  if (rc) {
    keel_cron_free(c);
    return rc;
  }
  *out = c;
  return 0;
}

void keel_cron_free(keel_cron *c) {
  if (!c) return;
  keel__tz_free(c->tz);
  free(c);
}

/* ---- the search ------------------------------------------------------------- */

#define NONE INT64_MIN

/* The lowest set bit of b at or above i, or -1. */
static int next_bit(uint64_t b, int i) {
  if (i >= 64) return -1;
  b >>= i;
  return b ? i + __builtin_ctzll(b) : -1;
}

static bool day_matches(const keel_cron *c, int64_t days, int d) {
  bool dom = c->dom >> d & 1, dow = c->dow >> keel__weekday(days) & 1;
  return c->dom_star || c->dow_star ? dom && dow : dom || dow;
}

/* The first matching local minute in local seconds [from, to] (from on a
 * minute), or NONE (local seconds before 1970 are negative). */
static int64_t first_local(const keel_cron *c, int64_t from, int64_t to) {
  int64_t days = keel__floor_div(from, 86400), y;
  int sod = (int)(from - days * 86400), h = sod / 3600, mi = sod % 3600 / 60, m, d;
  keel__civil_from_days(days, &y, &m, &d);
  for (;;) {
    if (days * 86400 + h * 3600 + mi * 60 > to) return NONE;
    if (!(c->month >> m & 1)) { /* to the 1st of the next month */
      days += keel__days_in_month(y, m) - d + 1;
      if (++m > 12) m = 1, y++;
      d = 1, h = mi = 0;
      continue;
    }
    if (day_matches(c, days, d)) { /* this day: the next hour and minute in it */
      int nh = next_bit(c->hour, h), nm = -1;
      if (nh == h) nm = next_bit(c->minute, mi);
      if (nh == h && nm < 0) nh = next_bit(c->hour, h + 1);
      if (nh >= 0) {
        if (nm < 0) nm = next_bit(c->minute, 0); /* a field is never empty */
        int64_t t = days * 86400 + nh * 3600 + nm * 60;
        return t <= to ? t : NONE;
      }
    }
    days++; /* to the next day */
    if (++d > keel__days_in_month(y, m)) {
      d = 1;
      if (++m > 12) m = 1, y++;
    }
    h = mi = 0;
  }
}

static int64_t ceil_minute(int64_t t) {
  return keel__floor_div(t + 59, 60) * 60;
}

int64_t keel_cron_next(const keel_cron *c, int64_t after_unix_s) {
  if (!c || after_unix_s < -LIMIT_S || after_unix_s > LIMIT_S) return -1;
  int64_t horizon = after_unix_s + HORIZON_S;
  for (int64_t u = after_unix_s + 1; u <= horizon;) {
    keel__tz_period p;
    keel__tz_period_at(c->tz, u, &p);
    /* A gap just before this stretch, not yet behind us: a fixed-time job
     * that matched a skipped minute runs now. */
    if (!c->wild && p.prev_off < p.off && p.start >= u &&
        first_local(c, ceil_minute(p.start + p.prev_off), p.start + p.off - 1) != NONE)
      return p.start;
    int64_t from = ceil_minute(u + p.off);
    /* A repeat: a fixed-time job ran in the first pass. */
    if (!c->wild && p.prev_off > p.off && ceil_minute(p.start + p.prev_off) > from)
      from = ceil_minute(p.start + p.prev_off);
    bool last = p.end > horizon;
    int64_t to = (last ? horizon : p.end - 1) + p.off;
    int64_t l = first_local(c, from, to);
    if (l != NONE) return l - p.off;
    if (last) break;
    u = p.end;
  }
  return -1;
}
