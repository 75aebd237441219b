/* keel/cron.h - crontab expressions: when does a schedule fire next.
 *
 * A pure module: parse an expression once, then ask for the next slot after
 * any instant. No timers, no processes, no global state: the caller (the
 * jobs layer's cron, a service's own loop) decides what to do at a slot.
 *
 * Syntax (docs/cron.md): five fields, minute hour day-of-month month
 * day-of-week, each '*', a value, a range a-b, a step a-b/n, a star with a
 * step (every n-th) or a/n (a-max/n), or a comma list of those. Months
 * JAN-DEC and days SUN-SAT by name, any case; day-of-week 0 and 7 are both
 * Sunday. Vixie cron's day
 * rule: when neither day field starts with '*', a day matches if EITHER
 * matches; otherwise both must. Macros @yearly @annually @monthly @weekly
 * @daily @midnight @hourly.
 *
 * Time zones are read from the system's TZif files (tzdata) by this module's
 * own parser: no setenv("TZ"), no tzset, no localtime, so any thread may use
 * any zone at any time. Daylight-saving changes follow cronie's documented
 * rule (docs/decisions/0025-cron-dst-like-cronie.md): a job with a fixed
 * minute and hour (neither field starts with '*') whose local time is skipped
 * by a spring-forward runs at the first instant after the gap, and whose
 * local time occurs twice runs once, at the first; a job with '*' in its
 * minute or hour field follows the clock (skipped minutes do not run,
 * repeated ones run again), so "every 15 minutes" stays every 15 minutes of
 * elapsed time.
 *
 * Ownership: keel_cron_parse allocates *out; the caller frees it with
 * keel_cron_free. A parsed keel_cron is immutable: keel_cron_next may be
 * called on it from any number of threads at once.
 */
#ifndef KEEL_CRON_H
#define KEEL_CRON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct keel_cron keel_cron;

/* Parses a crontab expression. tz NULL, "" or "UTC" = UTC, else an IANA zone
 * name ("Europe/Paris") read from the system's zoneinfo (TZif files under
 * $TZDIR, else /usr/share/zoneinfo). On success *out is a new schedule the
 * caller frees with keel_cron_free. Errors: KEEL_EINVAL for a bad expression
 * or an unknown or unreadable zone, with a message in err naming the field
 * and what is wrong ("day-of-week: 8 is out of range 0-7"); KEEL_ENOMEM.
 * err may be NULL (errlen then ignored); the message is cut to errlen - 1
 * bytes. *out is NULL on failure.
 *
 * With a zone it reads a small file: from a keel process, call it at start
 * or through keel_blocking, like any file read. Any thread. */
int keel_cron_parse(const char *expr, const char *tz, keel_cron **out, char *err, size_t errlen);

/* The first slot strictly after after_unix_s (Unix seconds; a slot is the
 * start of a matching local minute, or the end of a daylight-saving gap as
 * described above), or -1 if there is none within a bounded search of 10
 * years (e.g. "0 0 30 2 *", Feb 30) or after_unix_s is outside +-30000 years
 * of 1970. Any thread; c is only read. */
int64_t keel_cron_next(const keel_cron *c, int64_t after_unix_s);

/* Frees a schedule from keel_cron_parse. NULL is a no-op. */
void keel_cron_free(keel_cron *c);

#ifdef __cplusplus
}
#endif
#endif
