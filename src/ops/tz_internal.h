/* tz_internal.h - time zones read from TZif files, for cron (not installed).
 *
 * tz.c reads a zone's TZif file (RFC 8536) and its POSIX TZ footer into a
 * keel__tz; cron.c asks it for the period of constant UTC offset around an
 * instant. Nothing here touches the process's TZ or the C library's zone
 * state, so any thread may use any zone. The civil-date helpers are shared
 * by both files (one home) and work on proleptic Gregorian dates.
 */
#ifndef KEEL_TZ_INTERNAL_H
#define KEEL_TZ_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

typedef struct keel__tz keel__tz;

/* A stretch of time with one UTC offset: instants [start, end) show local
 * time instant + off. prev_off is the offset in effect just before start
 * (== off when start is INT64_MIN): prev_off < off means a spring-forward
 * gap at start, prev_off > off a repeated stretch of local time. end is
 * INT64_MAX when no change is known. */
typedef struct keel__tz_period {
  int64_t start, end;
  int32_t off, prev_off;
} keel__tz_period;

/* Loads the zone called name ("Europe/Paris") from $TZDIR or
 * /usr/share/zoneinfo. 0, KEEL_EINVAL (bad name, no such zone, not a TZif
 * file; a message in err), KEEL_ENOMEM. The caller frees *out. */
int keel__tz_load(const char *name, keel__tz **out, char *err, size_t errlen);

/* Parses a TZif image in memory (what keel__tz_load reads). Same errors. */
int keel__tz_parse(const unsigned char *buf, size_t len, keel__tz **out, char *err, size_t errlen);

void keel__tz_free(keel__tz *z);

/* Writes a printf-formatted message into err (when err and errlen) and
 * returns KEEL_EINVAL: the parse errors of cron.c and tz.c. */
int keel__tz_fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The period containing instant u. z NULL is UTC: one endless period. */
void keel__tz_period_at(const keel__tz *z, int64_t u, keel__tz_period *p);

/* ---- civil dates (Howard Hinnant's algorithms) ------------------------------ */

static inline int64_t keel__floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

/* Days since 1970-01-01 of y-m-d (m 1-12, d 1-31). */
static inline int64_t keel__days_from_civil(int64_t y, int m, int d) {
  y -= m <= 2;
  int64_t era = keel__floor_div(y, 400);
  int64_t yoe = y - era * 400;
  int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

static inline void keel__civil_from_days(int64_t z, int64_t *y, int *m, int *d) {
  z += 719468;
  int64_t era = keel__floor_div(z, 146097);
  int64_t doe = z - era * 146097;
  int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  int64_t mp = (5 * doy + 2) / 153;
  *d = (int)(doy - (153 * mp + 2) / 5 + 1);
  *m = (int)(mp < 10 ? mp + 3 : mp - 9);
  *y = yoe + era * 400 + (*m <= 2);
}

/* 0 = Sunday. */
static inline int keel__weekday(int64_t days) {
  int64_t w = (days + 4) % 7; /* 1970-01-01 was a Thursday */
  return (int)(w < 0 ? w + 7 : w);
}

static inline int keel__is_leap(int64_t y) {
  return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static inline int keel__days_in_month(int64_t y, int m) {
  static const int n[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return m == 2 && keel__is_leap(y) ? 29 : n[m - 1];
}

#endif
