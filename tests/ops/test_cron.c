/* test_cron.c - crontab expressions and their next slot (include/keel/cron.h).
 *
 * Hand-computed tables: every expected instant below is written as a UTC
 * calendar reading (turned into Unix seconds by the C library's timegm, not
 * by the module's own date code) and was worked out from the calendar and
 * the zone's published rules, the DST cases from docs/cron.md's rules. The
 * random cross-check against python3's zoneinfo is ops.cron_oracle
 * (test_cron_oracle.py); this file holds the cases a reader can check by
 * eye, the error messages, and the TZif footer rules no tzdata zone uses
 * today (checked against glibc's reading of the same TZ strings).
 */
#include <time.h>

#include "keel_test.h"
#include "keel/cron.h"
#include "ops/tz_internal.h"

static int64_t utc(int y, int mo, int d, int h, int mi) {
  struct tm tm = {.tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d, .tm_hour = h, .tm_min = mi};
  return (int64_t)timegm(&tm);
}

static keel_cron *parse_ok(const char *expr, const char *tz) {
  keel_cron *c = NULL;
  char err[256] = "";
  int rc = keel_cron_parse(expr, tz, &c, err, sizeof err);
  if (rc != 0) fprintf(stderr, "parse \"%s\" in %s: %s\n", expr, tz ? tz : "UTC", err);
  CHECK_OK(rc);
  CHECK(c != NULL);
  return c;
}

/* The slots after `after`, one by one, are exactly want[0..n-1]. */
static void expect_seq(const char *expr, const char *tz, int64_t after, const int64_t *want,
                       size_t n) {
  keel_cron *c = parse_ok(expr, tz);
  for (size_t i = 0; i < n; i++) {
    int64_t got = keel_cron_next(c, after);
    if (got != want[i]) {
      fprintf(stderr,
              "\"%s\" in %s, slot %zu after %" PRId64 ": got %" PRId64 ", want %" PRId64 "\n", expr,
              tz ? tz : "UTC", i, after, got, want[i]);
      abort();
    }
    after = got;
  }
  keel_cron_free(c);
}
#define SEQ(expr, tz, after, ...)                                                                  \
  expect_seq(expr, tz, after, (const int64_t[]){__VA_ARGS__},                                      \
             sizeof((const int64_t[]){__VA_ARGS__}) / sizeof(int64_t))

static void expect_error(const char *expr, const char *tz, const char *want) {
  keel_cron *c = (keel_cron *)1;
  char err[256] = "";
  int rc = keel_cron_parse(expr, tz, &c, err, sizeof err);
  if (rc != KEEL_EINVAL || c != NULL || !strstr(err, want)) {
    fprintf(stderr, "\"%s\" in %s: rc %d, err \"%s\", want KEEL_EINVAL and \"%s\"\n", expr,
            tz ? tz : "UTC", rc, err, want);
    abort();
  }
}

/* ---- syntax ----------------------------------------------------------------- */

KT_CASE(every_minute_is_strictly_after) {
  int64_t t = utc(2026, 1, 1, 0, 0);
  SEQ("* * * * *", NULL, t, t + 60, t + 120, t + 180);
  SEQ("* * * * *", NULL, t + 30, t + 60);
  SEQ("* * * * *", NULL, t - 1, t);
}

KT_CASE(before_1970) {
  /* Negative Unix seconds are instants like any other. */
  SEQ("* * * * *", NULL, -1000000, -999960, -999900);
  SEQ("0 0 * * *", NULL, utc(1960, 1, 1, 12, 0), utc(1960, 1, 2, 0, 0));
  SEQ("0 0 29 2 *", NULL, utc(1899, 1, 1, 0, 0), utc(1904, 2, 29, 0, 0)); /* 1900 is not leap */
  SEQ("0 12 * * *", "Europe/Paris", utc(1950, 7, 1, 0, 0), utc(1950, 7, 1, 11, 0)); /* CET */
}

KT_CASE(values_ranges_steps_and_lists) {
  int64_t t = utc(2026, 1, 1, 0, 0); /* a Thursday */
  SEQ("5,10-12,*/20 * * * *", NULL, t, t + 5 * 60, t + 10 * 60, t + 11 * 60, t + 12 * 60,
      t + 20 * 60, t + 40 * 60, t + 60 * 60);
  SEQ("10-30/10 9 * * *", NULL, t, utc(2026, 1, 1, 9, 10), utc(2026, 1, 1, 9, 20),
      utc(2026, 1, 1, 9, 30), utc(2026, 1, 2, 9, 10));
  SEQ("50/5 * * * *", NULL, t, t + 50 * 60, t + 55 * 60, t + 110 * 60); /* a/n = a-59/n */
  SEQ("0 */6 * * *", NULL, t, utc(2026, 1, 1, 6, 0), utc(2026, 1, 1, 12, 0), utc(2026, 1, 1, 18, 0),
      utc(2026, 1, 2, 0, 0));
  SEQ("0 0 1-31/10 * *", NULL, t, utc(2026, 1, 11, 0, 0), utc(2026, 1, 21, 0, 0),
      utc(2026, 1, 31, 0, 0), utc(2026, 2, 1, 0, 0));
  SEQ("\t 15  3 * *   * ", NULL, t, utc(2026, 1, 1, 3, 15)); /* any blanks between fields */
}

KT_CASE(month_and_day_names_any_case) {
  int64_t t = utc(2026, 1, 1, 0, 0);
  SEQ("0 12 1 jan,MAR-May *", NULL, t, utc(2026, 1, 1, 12, 0), utc(2026, 3, 1, 12, 0),
      utc(2026, 4, 1, 12, 0), utc(2026, 5, 1, 12, 0), utc(2027, 1, 1, 12, 0));
  SEQ("0 8 * * Mon-wed", NULL, t, utc(2026, 1, 5, 8, 0), utc(2026, 1, 6, 8, 0),
      utc(2026, 1, 7, 8, 0), utc(2026, 1, 12, 8, 0));
  SEQ("0 0 * dec SAT", NULL, utc(2026, 11, 1, 0, 0), utc(2026, 12, 5, 0, 0));
}

KT_CASE(seven_is_sunday) {
  int64_t t = utc(2026, 1, 1, 0, 0), sun = utc(2026, 1, 4, 0, 0), week = 7 * 86400;
  SEQ("0 0 * * 7", NULL, t, sun, sun + week);
  SEQ("0 0 * * 0", NULL, t, sun, sun + week);
  SEQ("0 0 * * SUN", NULL, t, sun, sun + week);
  /* 5-7: Friday, Saturday, Sunday. */
  SEQ("0 0 * * 5-7", NULL, t, utc(2026, 1, 2, 0, 0), utc(2026, 1, 3, 0, 0), sun,
      utc(2026, 1, 9, 0, 0));
}

KT_CASE(day_of_month_or_day_of_week_when_both_restricted) {
  int64_t t = utc(2026, 1, 1, 0, 0);
  /* Fridays, and the 13th whatever its day: Jan 2, 9, 13 (a Tuesday), 16. */
  SEQ("0 0 13 * FRI", NULL, t, utc(2026, 1, 2, 0, 0), utc(2026, 1, 9, 0, 0), utc(2026, 1, 13, 0, 0),
      utc(2026, 1, 16, 0, 0));
  /* A star in either day field: both must match (Fridays the 13th). */
  SEQ("0 0 13 * *", NULL, t, utc(2026, 1, 13, 0, 0), utc(2026, 2, 13, 0, 0));
  SEQ("0 0 * * FRI", NULL, t, utc(2026, 1, 2, 0, 0), utc(2026, 1, 9, 0, 0));
  /* Vixie's quirk: "*\/2" starts with a star, so it is AND: odd days that
   * are Mondays (Jan 5, 19; Feb 9). */
  SEQ("0 0 */2 * MON", NULL, t, utc(2026, 1, 5, 0, 0), utc(2026, 1, 19, 0, 0),
      utc(2026, 2, 9, 0, 0));
  /* "1-31" does not start with a star: OR, so every day. */
  SEQ("0 0 1-31 * MON", NULL, t, utc(2026, 1, 2, 0, 0), utc(2026, 1, 3, 0, 0));
}

KT_CASE(leap_years_and_impossible_dates) {
  SEQ("0 0 29 2 *", NULL, utc(2026, 1, 1, 0, 0), utc(2028, 2, 29, 0, 0), utc(2032, 2, 29, 0, 0));
  SEQ("0 0 29 2 *", NULL, utc(2096, 3, 1, 0, 0), utc(2104, 2, 29, 0, 0)); /* 2100 is not leap */
  SEQ("0 0 29 2 *", NULL, utc(2000, 1, 1, 0, 0), utc(2000, 2, 29, 0, 0)); /* 2000 is */
  SEQ("0 0 30 2 *", NULL, utc(2026, 1, 1, 0, 0), -1);
  SEQ("0 0 31 4,6,9,11 *", NULL, utc(2026, 1, 1, 0, 0), -1);
  SEQ("0 0 31 * *", NULL, utc(2026, 2, 1, 0, 0), utc(2026, 3, 31, 0, 0), utc(2026, 5, 31, 0, 0));
  /* Feb 30 OR Mondays of February: the day-of-week side still fires. */
  SEQ("0 0 30 2 MON", NULL, utc(2026, 1, 1, 0, 0), utc(2026, 2, 2, 0, 0));
}

KT_CASE(month_and_year_rollover) {
  SEQ("59 23 31 12 *", NULL, utc(2026, 12, 31, 23, 59), utc(2027, 12, 31, 23, 59));
  SEQ("0 0 1 * *", NULL, utc(2026, 12, 15, 0, 0), utc(2027, 1, 1, 0, 0), utc(2027, 2, 1, 0, 0));
  SEQ("* * * * *", NULL, utc(2026, 12, 31, 23, 59), utc(2027, 1, 1, 0, 0));
  SEQ("0 0 * 2 *", NULL, utc(2026, 2, 28, 0, 0), utc(2027, 2, 1, 0, 0));
  SEQ("0 0 28-31 2 *", NULL, utc(2027, 2, 28, 0, 0), utc(2028, 2, 28, 0, 0),
      utc(2028, 2, 29, 0, 0));
}

KT_CASE(macros) {
  int64_t t = utc(2026, 3, 15, 10, 30); /* a Sunday */
  SEQ("@yearly", NULL, t, utc(2027, 1, 1, 0, 0));
  SEQ("@annually", NULL, t, utc(2027, 1, 1, 0, 0));
  SEQ("@monthly", NULL, t, utc(2026, 4, 1, 0, 0));
  SEQ("@weekly", NULL, t, utc(2026, 3, 22, 0, 0));
  SEQ("@daily", NULL, t, utc(2026, 3, 16, 0, 0));
  SEQ("@midnight", NULL, t, utc(2026, 3, 16, 0, 0));
  SEQ("@hourly", NULL, t, utc(2026, 3, 15, 11, 0), utc(2026, 3, 15, 12, 0));
  SEQ("  @Daily ", NULL, t, utc(2026, 3, 16, 0, 0));
}

KT_CASE(errors_name_the_field) {
  expect_error("", NULL, "expected 5 fields");
  expect_error("* * * *", NULL, "got 4");
  expect_error("* * * * * *", NULL, "got 6");
  expect_error("60 * * * *", NULL, "minute: 60 is out of range 0-59");
  expect_error("* 24 * * *", NULL, "hour: 24 is out of range 0-23");
  expect_error("* * 0 * *", NULL, "day-of-month: 0 is out of range 1-31");
  expect_error("* * 32 * *", NULL, "day-of-month: 32");
  expect_error("* * * 13 *", NULL, "month: 13 is out of range 1-12");
  expect_error("* * * 0 *", NULL, "month: 0");
  expect_error("* * * * 8", NULL, "day-of-week: 8 is out of range 0-7");
  expect_error("* * * foo *", NULL, "month: unknown name \"foo\"");
  expect_error("* * * * MONDAY", NULL, "day-of-week: unknown name \"MONDAY\"");
  expect_error("* * * * jan", NULL, "day-of-week: unknown name \"jan\"");
  expect_error("MON * * * *", NULL, "minute: names are allowed only in month and day-of-week");
  expect_error("*/0 * * * *", NULL, "minute: step 0 is out of range");
  expect_error("* */25 * * *", NULL, "hour: step 25 is out of range 1-24");
  expect_error("5-1 * * * *", NULL, "minute: range 5-1 runs backwards");
  expect_error("* * * DEC-JAN *", NULL, "month: range 12-1 runs backwards");
  expect_error("1,,2 * * * *", NULL, "minute: empty list item");
  expect_error("* * 1, * *", NULL, "day-of-month: empty list item");
  expect_error("*/ * * * *", NULL, "minute: a step needs a number");
  expect_error("1-2-3 * * * *", NULL, "minute: unexpected '-'");
  expect_error("* 1- * * *", NULL, "hour: a value is missing");
  expect_error("* * * * 1#2", NULL, "day-of-week: unexpected '#'");
  expect_error("? * * * *", NULL, "minute: unexpected '?'");
  expect_error("@reboot", NULL, "@reboot is not a time schedule");
  expect_error("@fortnightly", NULL, "unknown macro \"@fortnightly\"");
  expect_error("@daily 5", NULL, "unexpected text after @daily");
  expect_error(NULL, NULL, "expression is NULL");
  /* err may be NULL; the message is cut to the buffer. */
  keel_cron *c;
  CHECK_EQ(keel_cron_parse("61 * * * *", NULL, &c, NULL, 0), KEEL_EINVAL);
  CHECK(c == NULL);
  char small[8];
  CHECK_EQ(keel_cron_parse("61 * * * *", NULL, &c, small, sizeof small), KEEL_EINVAL);
  CHECK_STR(small, "minute:");
  keel_cron_free(NULL);
  CHECK_EQ(keel_cron_next(NULL, 0), -1);
}

/* ---- time zones ------------------------------------------------------------- */

KT_CASE(utc_spellings) {
  int64_t t = utc(2026, 6, 1, 0, 0);
  SEQ("0 9 * * *", NULL, t, utc(2026, 6, 1, 9, 0));
  SEQ("0 9 * * *", "", t, utc(2026, 6, 1, 9, 0));
  SEQ("0 9 * * *", "UTC", t, utc(2026, 6, 1, 9, 0));
  SEQ("0 9 * * *", "Etc/UTC", t, utc(2026, 6, 1, 9, 0)); /* read from its file */
}

KT_CASE(unknown_and_bad_zones) {
  expect_error("* * * * *", "Mars/Olympus_Mons", "unknown time zone \"Mars/Olympus_Mons\"");
  expect_error("* * * * *", "../../etc/passwd", "not a zone name");
  expect_error("* * * * *", "/etc/localtime", "not a zone name");
  expect_error("* * * * *", "Europe/../Europe/Paris", "not a zone name");
  expect_error("* * * * *", "Europe", "unknown time zone \"Europe\""); /* a directory */
  expect_error("* * * * *", "zone.tab", "not a TZif file");
  /* The expression is checked first, and its error wins. */
  expect_error("61 * * * *", "Europe/Paris", "minute:");
}

KT_CASE(paris_spring_forward_2026) {
  /* 2026-03-29: 02:00 CET (01:00 UTC) becomes 03:00 CEST. */
  /* A fixed time in the gap runs at its end, once; then at 02:30 CEST. */
  SEQ("30 2 * * *", "Europe/Paris", utc(2026, 3, 27, 12, 0), utc(2026, 3, 28, 1, 30),
      utc(2026, 3, 29, 1, 0), utc(2026, 3, 30, 0, 30));
  /* Several skipped minutes: still one run at the gap's end. */
  SEQ("0,20,40 2 * * *", "Europe/Paris", utc(2026, 3, 29, 0, 0), utc(2026, 3, 29, 1, 0),
      utc(2026, 3, 30, 0, 0));
  /* 03:00 itself and the gap give the same instant: one run. */
  SEQ("30 2,3 * * *", "Europe/Paris", utc(2026, 3, 29, 0, 0), utc(2026, 3, 29, 1, 0),
      utc(2026, 3, 29, 1, 30), utc(2026, 3, 30, 0, 30));
  /* Wildcard jobs follow the clock: 02:xx never shows. */
  SEQ("*/30 * * * *", "Europe/Paris", utc(2026, 3, 29, 0, 15), utc(2026, 3, 29, 0, 30),
      utc(2026, 3, 29, 1, 0), utc(2026, 3, 29, 1, 30));
  SEQ("15 * * * *", "Europe/Paris", utc(2026, 3, 29, 0, 0), utc(2026, 3, 29, 0, 15),
      utc(2026, 3, 29, 1, 15));
  /* Around it, plain local times. */
  SEQ("0 9 * * *", "Europe/Paris", utc(2026, 3, 28, 0, 0), utc(2026, 3, 28, 8, 0),
      utc(2026, 3, 29, 7, 0));
  /* Asked from inside the run's own minute: the next day. */
  SEQ("30 2 * * *", "Europe/Paris", utc(2026, 3, 29, 1, 0), utc(2026, 3, 30, 0, 30));
}

KT_CASE(paris_fall_back_2026) {
  /* 2026-10-25: 03:00 CEST (01:00 UTC) becomes 02:00 CET; 02:00-02:59 twice. */
  SEQ("30 2 * * *", "Europe/Paris", utc(2026, 10, 24, 12, 0), utc(2026, 10, 25, 0, 30),
      utc(2026, 10, 26, 1, 30));
  /* Asked during the second pass: not again that day. */
  SEQ("30 2 * * *", "Europe/Paris", utc(2026, 10, 25, 1, 10), utc(2026, 10, 26, 1, 30));
  /* Wildcard: 02:15 runs in both passes. */
  SEQ("15 * * * *", "Europe/Paris", utc(2026, 10, 25, 0, 0), utc(2026, 10, 25, 0, 15),
      utc(2026, 10, 25, 1, 15), utc(2026, 10, 25, 2, 15));
  SEQ("0 9 * * *", "Europe/Paris", utc(2026, 10, 24, 12, 0), utc(2026, 10, 25, 8, 0));
}

KT_CASE(new_york_both_changes_2026) {
  /* 2026-03-08: 02:00 EST (07:00 UTC) becomes 03:00 EDT. */
  SEQ("30 2 * * *", "America/New_York", utc(2026, 3, 7, 12, 0), utc(2026, 3, 8, 7, 0),
      utc(2026, 3, 9, 6, 30));
  SEQ("*/30 * * * *", "America/New_York", utc(2026, 3, 8, 6, 45), utc(2026, 3, 8, 7, 0),
      utc(2026, 3, 8, 7, 30));
  /* 2026-11-01: 02:00 EDT (06:00 UTC) becomes 01:00 EST; 01:00-01:59 twice. */
  SEQ("30 1 * * *", "America/New_York", utc(2026, 10, 31, 12, 0), utc(2026, 11, 1, 5, 30),
      utc(2026, 11, 2, 6, 30));
  SEQ("*/30 * * * *", "America/New_York", utc(2026, 11, 1, 5, 15), utc(2026, 11, 1, 5, 30),
      utc(2026, 11, 1, 6, 0), utc(2026, 11, 1, 6, 30), utc(2026, 11, 1, 7, 0));
  /* @daily: midnight local, 05:00 UTC in winter, 04:00 in summer. */
  SEQ("@daily", "America/New_York", utc(2026, 3, 7, 12, 0), utc(2026, 3, 8, 5, 0),
      utc(2026, 3, 9, 4, 0));
}

KT_CASE(tokyo_has_no_dst) {
  /* JST is UTC+9 all year: 02:30 local is 17:30 UTC the day before, on
   * Paris's and New York's change days as on any other. */
  SEQ("30 2 * * *", "Asia/Tokyo", utc(2026, 3, 28, 12, 0), utc(2026, 3, 28, 17, 30),
      utc(2026, 3, 29, 17, 30));
  SEQ("30 2 * * *", "Asia/Tokyo", utc(2026, 10, 24, 12, 0), utc(2026, 10, 24, 17, 30),
      utc(2026, 10, 25, 17, 30));
  SEQ("0 9 1 1 *", "Asia/Tokyo", utc(2026, 6, 1, 0, 0), utc(2027, 1, 1, 0, 0));
}

KT_CASE(past_the_table_the_footer_rule_decides) {
  /* 2050: last Sundays of March (27th) and October (30th). */
  SEQ("30 2 * * *", "Europe/Paris", utc(2050, 3, 26, 12, 0), utc(2050, 3, 27, 1, 0),
      utc(2050, 3, 28, 0, 30));
  SEQ("30 2 * * *", "Europe/Paris", utc(2050, 10, 29, 12, 0), utc(2050, 10, 30, 0, 30),
      utc(2050, 10, 31, 1, 30));
}

/* ---- TZif footers no tzdata zone uses today ---------------------------------- */

/* A TZif v2 image with no transitions, one time type (off) and a footer. */
static size_t tzif_image(unsigned char *buf, int32_t off, const char *footer) {
  size_t n = 0;
  for (int part = 0; part < 2; part++) {
    memcpy(buf + n, "TZif2", 5);
    memset(buf + n + 5, 0, 39);
    buf[n + 39] = 1; /* typecnt */
    buf[n + 43] = 4; /* charcnt */
    n += 44;
    buf[n++] = (unsigned char)((uint32_t)off >> 24),
    buf[n++] = (unsigned char)((uint32_t)off >> 16);
    buf[n++] = (unsigned char)((uint32_t)off >> 8), buf[n++] = (unsigned char)off;
    buf[n++] = 0, buf[n++] = 0;
    memcpy(buf + n, "XXX", 4);
    n += 4;
  }
  n += (size_t)sprintf((char *)buf + n, "\n%s\n", footer);
  return n;
}

static void expect_period(const keel__tz *z, int64_t u, int64_t start, int64_t end, int32_t off,
                          int32_t prev) {
  keel__tz_period p;
  keel__tz_period_at(z, u, &p);
  if (p.start != start || p.end != end || p.off != off || p.prev_off != prev) {
    fprintf(stderr,
            "period at %" PRId64 ": [%" PRId64 ", %" PRId64 ") off %d prev %d, want [%" PRId64
            ", %" PRId64 ") off %d prev %d\n",
            u, p.start, p.end, (int)p.off, (int)p.prev_off, start, end, (int)off, (int)prev);
    abort();
  }
}

KT_CASE(posix_rules_julian_zero_based_and_southern) {
  unsigned char buf[256];
  keel__tz *z;
  char err[128];
  /* Jn skips Feb 29 (J60 is March 1 in 2028), n counts it (day 300 of
   * 2028 is Oct 27), times may be negative. glibc, given the same TZ
   * string, changes at 2028-03-01T04:30Z and 2028-10-27T01:00Z. */
  size_t n = tzif_image(buf, -3 * 3600, "AAA3BBB,J60/1:30,300/-1");
  CHECK_OK(keel__tz_parse(buf, n, &z, err, sizeof err));
  int64_t on = utc(2028, 3, 1, 4, 30), off = utc(2028, 10, 27, 1, 0);
  expect_period(z, utc(2028, 6, 1, 0, 0), on, off, -7200, -10800);
  expect_period(z, on, on, off, -7200, -10800);
  expect_period(z, on - 1, utc(2027, 10, 28, 1, 0), on, -10800, -7200);
  keel__tz_free(z);
  /* Southern hemisphere: daylight time across the new year. glibc:
   * 2028-04-01T16:00Z and 2028-09-30T16:00Z. */
  n = tzif_image(buf, 36000, "<+10>-10<+11>,M10.1.0,M4.1.0/3");
  CHECK_OK(keel__tz_parse(buf, n, &z, err, sizeof err));
  expect_period(z, utc(2028, 1, 1, 0, 0), utc(2027, 10, 2, 16, 0), utc(2028, 4, 1, 16, 0), 39600,
                36000);
  expect_period(z, utc(2028, 6, 1, 0, 0), utc(2028, 4, 1, 16, 0), utc(2028, 9, 30, 16, 0), 36000,
                39600);
  keel__tz_free(z);
  /* Daylight time all year (RFC 8536's example): one offset, no change. */
  n = tzif_image(buf, -4 * 3600, "EST5EDT,0/0,J365/25");
  CHECK_OK(keel__tz_parse(buf, n, &z, err, sizeof err));
  for (int64_t u = utc(2027, 12, 31, 0, 0); u < utc(2028, 1, 2, 0, 0); u += 1800) {
    keel__tz_period p;
    keel__tz_period_at(z, u, &p);
    CHECK_EQ(p.off, -4 * 3600);
    CHECK_EQ(p.prev_off, -4 * 3600);
  }
  keel__tz_free(z);
  /* No daylight time at all. */
  n = tzif_image(buf, 5 * 3600 + 1800, "<+0530>-5:30");
  CHECK_OK(keel__tz_parse(buf, n, &z, err, sizeof err));
  expect_period(z, 0, INT64_MIN, INT64_MAX, 19800, 19800);
  keel__tz_free(z);
  /* Refused: a truncated image, a bad footer. */
  n = tzif_image(buf, 0, "CET-1CEST,M3.5.0");
  CHECK_EQ(keel__tz_parse(buf, n, &z, err, sizeof err), KEEL_EINVAL);
  CHECK(strstr(err, "unsupported TZ rule") != NULL);
  CHECK_EQ(keel__tz_parse(buf, 50, &z, err, sizeof err), KEEL_EINVAL);
  CHECK(z == NULL);
}

KT_CASE(corrupt_zone_files_are_refused_not_crashed) {
  /* Seeded random damage to a real TZif image (Europe/Paris): each parse
   * either succeeds or says KEEL_EINVAL, and a zone that parses answers
   * queries; under ASan any read out of bounds fails the run. */
  FILE *f = fopen("/usr/share/zoneinfo/Europe/Paris", "rb");
  CHECK(f != NULL);
  static unsigned char orig[1 << 16], buf[1 << 16];
  size_t len = fread(orig, 1, sizeof orig, f);
  fclose(f);
  CHECK(len > 44 && len < sizeof orig);
  uint64_t seed = 0x9e3779b97f4a7c15u;
  int parsed = 0, refused = 0;
  for (int round = 0; round < 3000; round++) {
    if (round % 200 == 0) keel_yield(); /* a long loop in a process: let others run */
    memcpy(buf, orig, len);
    size_t n = len;
    for (int k = 0; k < 1 + round % 4; k++) {
      seed = seed * 6364136223846793005u + 1442695040888963407u;
      size_t at = (size_t)(seed >> 33) % len;
      buf[at] = (unsigned char)(seed >> 17);
    }
    if (round % 5 == 0) n = (size_t)(seed >> 40) % len; /* truncated */
    keel__tz *z = NULL;
    char err[160];
    int rc = keel__tz_parse(buf, n, &z, err, sizeof err);
    CHECK(rc == 0 || rc == KEEL_EINVAL);
    if (rc == 0) {
      parsed++;
      keel__tz_period p;
      for (int64_t u = -(INT64_C(1) << 40); u <= INT64_C(1) << 40; u += INT64_C(1) << 37) {
        keel__tz_period_at(z, u, &p);
        CHECK(p.start <= u && u < p.end);
      }
      keel__tz_free(z);
    } else {
      CHECK(z == NULL);
      refused++;
    }
  }
  CHECK(parsed > 0 && refused > 0);
}

KT_MAIN(KT_ENTRY(every_minute_is_strictly_after), KT_ENTRY(before_1970),
        KT_ENTRY(values_ranges_steps_and_lists), KT_ENTRY(month_and_day_names_any_case),
        KT_ENTRY(seven_is_sunday), KT_ENTRY(day_of_month_or_day_of_week_when_both_restricted),
        KT_ENTRY(leap_years_and_impossible_dates), KT_ENTRY(month_and_year_rollover),
        KT_ENTRY(macros), KT_ENTRY(errors_name_the_field), KT_ENTRY(utc_spellings),
        KT_ENTRY(unknown_and_bad_zones), KT_ENTRY(paris_spring_forward_2026),
        KT_ENTRY(paris_fall_back_2026), KT_ENTRY(new_york_both_changes_2026),
        KT_ENTRY(tokyo_has_no_dst), KT_ENTRY(past_the_table_the_footer_rule_decides),
        KT_ENTRY(posix_rules_julian_zero_based_and_southern),
        KT_ENTRY(corrupt_zone_files_are_refused_not_crashed))
