/* tz.c - a time zone from its TZif file, without the C library's TZ state.
 *
 * localtime_r and mktime answer for one zone per OS process, the one in
 * $TZ, and changing it (setenv + tzset) races with every other thread that
 * reads the time: a multi-threaded runtime cannot use them for "this job
 * runs on Paris time, that one on New York time". So cron reads zones here.
 *
 * A TZif file (RFC 8536, tzdata's format under /usr/share/zoneinfo) lists
 * the instants at which a zone's UTC offset changed, each with the offset
 * that follows, and ends (version 2 and later) with a POSIX TZ string such as
 * "CET-1CEST,M3.5.0,M10.5.0/3" that gives the rule for every instant after
 * the last listed one. We keep the 64-bit transitions and the rule; the
 * abbreviations, the isdst flags and the standard/wall indicators are not
 * needed to map instants to local time, so they are skipped. Files with leap
 * seconds (the right/ zones) count seconds differently from Unix time and
 * are refused.
 *
 * keel__tz_period_at answers with the stretch of constant offset around an
 * instant, with the offset just before it, which is all cron needs to find
 * spring-forward gaps and fall-back repeats: from the table by binary search,
 * past it from the rule's transitions of the years around the instant.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "keel/error.h"
#include "tz_internal.h"

/* A POSIX TZ rule date: Jn (1-365, Feb 29 never counted), n (0-365, counted)
 * or Mm.w.d (day d of week w of month m, w 5 = last), at time seconds of
 * the local time then in effect (may be negative or past 24h, RFC 8536). */
typedef struct tz_date {
  char kind; /* 'J', 'N' or 'M' */
  int n, m, w, d;
  int32_t time;
} tz_date;

struct keel__tz {
  int64_t *trans; /* ascending transition instants */
  int32_t *off;   /* off[i]: the offset from trans[i] on */
  size_t n;
  int32_t off0; /* before the first transition (time type 0) */
  bool rule_dst;
  int32_t std_off, dst_off; /* seconds east of UTC */
  tz_date start, end;       /* into and out of daylight time */
};

int keel__tz_fail(char *err, size_t errlen, const char *fmt, ...) {
  if (err && errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
  }
  return KEEL_EINVAL;
}

/* ---- the POSIX TZ footer ---------------------------------------------------- */

static bool posix_name(const char **sp) {
  const char *s = *sp;
  if (*s == '<') {
    const char *e = strchr(s, '>');
    if (!e || e - s < 4) return false;
    *sp = e + 1;
    return true;
  }
  const char *b = s;
  while ((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z'))
    s++;
  if (s - b < 3) return false;
  *sp = s;
  return true;
}

/* [+-]hh[:mm[:ss]], hours up to 167 (RFC 8536's extension); seconds. */
static bool posix_time(const char **sp, int32_t *out) {
  const char *s = *sp;
  int sign = 1;
  if (*s == '+' || *s == '-') sign = *s++ == '-' ? -1 : 1;
  int part[3] = {0, 0, 0}, np = 0;
  while (np < 3) {
    if (*s < '0' || *s > '9') return false;
    int v = 0, nd = 0;
    while (*s >= '0' && *s <= '9' && nd < 3)
      v = v * 10 + (*s++ - '0'), nd++;
    part[np++] = v;
    if (*s != ':') break;
    s++;
  }
  if (part[0] > 167 || part[1] > 59 || part[2] > 59) return false;
  *out = sign * (part[0] * 3600 + part[1] * 60 + part[2]);
  *sp = s;
  return true;
}

static bool posix_num(const char **sp, int lo, int hi, int *out) {
  const char *s = *sp;
  int v = 0, nd = 0;
  while (*s >= '0' && *s <= '9' && nd < 4)
    v = v * 10 + (*s++ - '0'), nd++;
  if (nd == 0 || v < lo || v > hi) return false;
  *out = v;
  *sp = s;
  return true;
}

static bool posix_date(const char **sp, tz_date *d) {
  const char *s = *sp;
  memset(d, 0, sizeof *d);
  if (*s == 'M') {
    s++;
    d->kind = 'M';
    if (!posix_num(&s, 1, 12, &d->m) || *s++ != '.' || !posix_num(&s, 1, 5, &d->w) || *s++ != '.' ||
        !posix_num(&s, 0, 6, &d->d))
      return false;
  } else if (*s == 'J') {
    s++;
    d->kind = 'J';
    if (!posix_num(&s, 1, 365, &d->n)) return false;
  } else {
    d->kind = 'N';
    if (!posix_num(&s, 0, 365, &d->n)) return false;
  }
  d->time = 7200; /* 02:00:00 unless said */
  if (*s == '/' && (s++, !posix_time(&s, &d->time))) return false;
  *sp = s;
  return true;
}

static bool posix_tz(const char *s, keel__tz *z) {
  int32_t t;
  if (!posix_name(&s) || !posix_time(&s, &t) || t < -25 * 3600 || t > 25 * 3600) return false;
  z->std_off = -t; /* POSIX counts west of UTC */
  if (!*s) return true;
  if (!posix_name(&s)) return false;
  z->dst_off = z->std_off + 3600;
  if (*s && *s != ',') {
    if (!posix_time(&s, &t) || t < -25 * 3600 || t > 25 * 3600) return false;
    z->dst_off = -t;
  }
  if (*s++ != ',' || !posix_date(&s, &z->start) || *s++ != ',' || !posix_date(&s, &z->end) || *s)
    return false;
  z->rule_dst = true;
  return true;
}

/* The instant a rule date falls on in year y, its time read in local time
 * at offset off. */
static int64_t rule_instant(const tz_date *d, int64_t y, int32_t off) {
  int64_t day;
  if (d->kind == 'J') {
    day = keel__days_from_civil(y, 1, 1) + d->n - 1 + (keel__is_leap(y) && d->n >= 60);
  } else if (d->kind == 'N') {
    day = keel__days_from_civil(y, 1, 1) + d->n;
  } else {
    int64_t first = keel__days_from_civil(y, d->m, 1);
    int md = 1 + (d->d - keel__weekday(first) + 7) % 7 + (d->w - 1) * 7;
    while (md > keel__days_in_month(y, d->m))
      md -= 7; /* week 5: the last one */
    day = first + md - 1;
  }
  return day * 86400 + d->time - off;
}

/* ---- the TZif file ---------------------------------------------------------- */

static uint32_t be32(const unsigned char *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int64_t be64(const unsigned char *p) {
  return (int64_t)((uint64_t)be32(p) << 32 | be32(p + 4));
}

typedef struct tzif_counts {
  uint32_t isut, isstd, leap, time, type, chars;
} tzif_counts;

/* Reads a header at p (44 bytes, checked by the caller); the size of the
 * data block that follows it for time values of tsize bytes. */
static size_t tzif_header(const unsigned char *p, tzif_counts *c, size_t tsize) {
  c->isut = be32(p + 20);
  c->isstd = be32(p + 24);
  c->leap = be32(p + 28);
  c->time = be32(p + 32);
  c->type = be32(p + 36);
  c->chars = be32(p + 40);
  if (c->time > 100000 || c->type > 256 || c->chars > 65536 || c->leap > 100000 || c->isut > 256 ||
      c->isstd > 256)
    return SIZE_MAX;
  return (size_t)c->time * tsize + c->time + (size_t)c->type * 6 + c->chars +
         (size_t)c->leap * (tsize + 4) + c->isstd + c->isut;
}

int keel__tz_parse(const unsigned char *buf, size_t len, keel__tz **out, char *err, size_t errlen) {
  *out = NULL;
  if (len < 44 || memcmp(buf, "TZif", 4) != 0) return keel__tz_fail(err, errlen, "not a TZif file");
  tzif_counts c;
  size_t v1 = tzif_header(buf, &c, 4);
  if (v1 == SIZE_MAX || 44 + v1 > len) return keel__tz_fail(err, errlen, "truncated TZif file");
  size_t tsize = 4, data = v1;
  const unsigned char *p = buf + 44, *end = buf + len;
  if (buf[4] >= '2') { /* skip the 32-bit block, use the 64-bit one */
    p += v1;
    if ((size_t)(end - p) < 44 || memcmp(p, "TZif", 4) != 0)
      return keel__tz_fail(err, errlen, "bad second TZif header");
    data = tzif_header(p, &c, 8);
    p += 44;
    if (data == SIZE_MAX || data > (size_t)(end - p))
      return keel__tz_fail(err, errlen, "truncated TZif file");
    tsize = 8;
  }
  if (c.leap)
    return keel__tz_fail(err, errlen, "zones with leap seconds (right/) are not supported");
  if (c.type == 0) return keel__tz_fail(err, errlen, "TZif file without time types");

  keel__tz *z = calloc(1, sizeof *z);
  if (!z) return KEEL_ENOMEM;
  z->n = c.time;
  if (c.time) {
    z->trans = malloc(c.time * sizeof *z->trans);
    z->off = malloc(c.time * sizeof *z->off);
    if (!z->trans || !z->off) {
      keel__tz_free(z);
      return KEEL_ENOMEM;
    }
  }
  const unsigned char *times = p, *idx = p + (size_t)c.time * tsize, *types = idx + c.time;
  for (uint32_t i = 0; i < c.time; i++) {
    z->trans[i] = tsize == 8 ? be64(times + 8 * i) : (int32_t)be32(times + 4 * i);
    /* Within +-2^60 s (zic's "big bang" is -2^59): offsets added to any
     * transition stay far from overflow. */
    if (idx[i] >= c.type || (i && z->trans[i] <= z->trans[i - 1]) ||
        z->trans[i] < -(INT64_C(1) << 60) || z->trans[i] > INT64_C(1) << 60) {
      keel__tz_free(z);
      return keel__tz_fail(err, errlen, "bad TZif transition %u", i);
    }
    z->off[i] = (int32_t)be32(types + 6 * idx[i]);
  }
  z->off0 = (int32_t)be32(types);
  for (uint32_t i = 0; i < c.type; i++) {
    int32_t o = (int32_t)be32(types + 6 * i);
    if (o < -25 * 3600 || o > 26 * 3600) {
      keel__tz_free(z);
      return keel__tz_fail(err, errlen, "TZif offset %d out of range", (int)o);
    }
  }
  if (tsize == 8) { /* the footer: "\n" POSIX-TZ "\n" */
    p += data;
    char tzs[128];
    const unsigned char *nl = p + 1 <= end ? memchr(p + 1, '\n', (size_t)(end - p - 1)) : NULL;
    if (p >= end || *p != '\n' || !nl || (size_t)(nl - p - 1) >= sizeof tzs) {
      keel__tz_free(z);
      return keel__tz_fail(err, errlen, "bad TZif footer");
    }
    memcpy(tzs, p + 1, (size_t)(nl - p - 1));
    tzs[nl - p - 1] = 0;
    if (tzs[0] && !posix_tz(tzs, z)) {
      keel__tz_free(z);
      return keel__tz_fail(err, errlen, "unsupported TZ rule \"%s\"", tzs);
    }
  }
  *out = z;
  return 0;
}

/* A zone name is a relative path of plain components: nothing that could
 * climb out of the zoneinfo directory. */
static bool valid_name(const char *name) {
  size_t n = strlen(name);
  if (n == 0 || n > 200 || name[0] == '/') return false;
  for (const char *s = name; *s; s++) {
    char ch = *s;
    if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
          ch == '/' || ch == '_' || ch == '-' || ch == '+' || ch == '.'))
      return false;
    if (ch == '.' && (s == name || s[-1] == '/')) return false; /* ".", "..", hidden */
  }
  return true;
}

int keel__tz_load(const char *name, keel__tz **out, char *err, size_t errlen) {
  *out = NULL;
  if (!valid_name(name))
    return keel__tz_fail(err, errlen, "time zone \"%s\": not a zone name", name);
  const char *dir = getenv("TZDIR");
  if (!dir || !*dir) dir = "/usr/share/zoneinfo";
  char path[512];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "rb");
  if (!f)
    return keel__tz_fail(err, errlen, "unknown time zone \"%s\" (%s: %s)", name, path,
                         strerror(errno));
  /* tzdata's largest file is a few kB; a zone file is never near 1 MB. */
  struct stat st;
  size_t cap = fstat(fileno(f), &st) == 0 && S_ISREG(st.st_mode) && st.st_size < (1 << 20)
                   ? (size_t)st.st_size + 1
                   : 0;
  unsigned char *buf = cap ? malloc(cap) : NULL;
  if (cap && !buf) {
    fclose(f);
    return KEEL_ENOMEM;
  }
  size_t len = buf ? fread(buf, 1, cap, f) : 0;
  bool bad = !buf || ferror(f) || len == cap; /* not a file, or it grew */
  fclose(f);
  int rc;
  if (bad) {
    rc = keel__tz_fail(err, errlen, "unknown time zone \"%s\" (%s is not a zone file)", name, path);
  } else {
    char why[160] = "";
    rc = keel__tz_parse(buf, len, out, why, sizeof why);
    if (rc == KEEL_EINVAL) keel__tz_fail(err, errlen, "time zone \"%s\" (%s): %s", name, path, why);
  }
  free(buf);
  return rc;
}

void keel__tz_free(keel__tz *z) {
  if (!z) return;
  free(z->trans);
  free(z->off);
  free(z);
}

/* ---- periods ---------------------------------------------------------------- */

/* The rule's changes around year y, in order, as (instant, offset from
 * then on); at most 8. Five years are laid out and the outermost entries
 * left out, so that what is returned has its neighbours on both sides
 * (a rule for daylight time all year, "EST5EDT,0/0,J365/25", ends one year
 * at the instant it starts the next). Entries at the same instant are one
 * change, to the later one's offset. Some "changes" may change nothing: the
 * caller compares with the offset it has. */
static int rule_changes(const keel__tz *z, int64_t y, int64_t *at, int32_t *off) {
  int64_t t[10];
  int32_t o[10];
  int n = 0;
  for (int64_t yy = y - 2; yy <= y + 2; yy++) {
    t[n] = rule_instant(&z->start, yy, z->std_off), o[n++] = z->dst_off;
    t[n] = rule_instant(&z->end, yy, z->dst_off), o[n++] = z->std_off;
  }
  for (int i = 1; i < n; i++) /* insertion sort, stable: a year's order kept on ties */
    for (int j = i; j > 0 && t[j] < t[j - 1]; j--) {
      int64_t tt = t[j];
      t[j] = t[j - 1], t[j - 1] = tt;
      int32_t oo = o[j];
      o[j] = o[j - 1], o[j - 1] = oo;
    }
  int k = 0;
  for (int i = 1; i < n - 1; i++)
    if (t[i + 1] != t[i]) at[k] = t[i], off[k++] = o[i];
  return k;
}

void keel__tz_period_at(const keel__tz *z, int64_t u, keel__tz_period *p) {
  p->start = INT64_MIN, p->end = INT64_MAX;
  if (!z) {
    p->off = p->prev_off = 0;
    return;
  }
  size_t n = z->n;
  if (n && u < z->trans[0]) {
    p->end = z->trans[0];
    p->off = p->prev_off = z->off0;
    return;
  }
  if (n && u < z->trans[n - 1]) {
    size_t lo = 0, hi = n - 1; /* trans[lo] <= u < trans[hi] */
    while (hi - lo > 1) {
      size_t mid = lo + (hi - lo) / 2;
      if (z->trans[mid] <= u)
        lo = mid;
      else
        hi = mid;
    }
    p->start = z->trans[lo], p->end = z->trans[hi];
    p->off = z->off[lo];
    p->prev_off = lo ? z->off[lo - 1] : z->off0;
    return;
  }
  /* At or past the last transition: the table's last offset until the
   * rule's first change after it. */
  p->start = n ? z->trans[n - 1] : INT64_MIN;
  p->off = n ? z->off[n - 1] : z->off0;
  p->prev_off = n > 1 ? z->off[n - 2] : n ? z->off0 : p->off;
  if (!z->rule_dst) return;
  int64_t y, at[8];
  int32_t off[8];
  int m, d;
  keel__civil_from_days(keel__floor_div(u + z->std_off, 86400), &y, &m, &d);
  int k = rule_changes(z, y, at, off);
  for (int i = 0; i < k; i++) {
    if (at[i] <= p->start || off[i] == p->off) continue; /* before the table's end, or no change */
    if (at[i] > u) {
      p->end = at[i];
      break;
    }
    p->start = at[i], p->prev_off = p->off, p->off = off[i];
  }
}
