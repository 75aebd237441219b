/* test_log_recent.c - the logger's ring of recent lines (keel_log_recent):
 * what the admin port's log tail reads. */
#include <stdio.h>
#include <string.h>

#include "keel.h"
#include "keel_test.h"

static void init(void) {
  keel_log_opts o;
  keel_log_opts_init(&o);
  o.file = "/dev/null";
  o.level = KEEL_LOG_TRACE;
  CHECK_OK(keel_log_init(&o));
}

static bool has(const keel_log_recent_line *v, size_t n, const char *needle) {
  for (size_t i = 0; i < n; i++)
    if (strstr(v[i].text, needle)) return true;
  return false;
}

KT_CASE(keeps_the_newest_lines_in_order_with_a_level_filter_and_a_cursor) {
  init();
  uint64_t since = keel_log_recent_last();
  keel_log_info(NULL, "lr one");
  keel_log_warn(NULL, "lr two");
  keel_log_debug(NULL, "lr three");
  keel_log_flush();
  keel_log_recent_line *v;
  size_t n;
  CHECK_OK(keel_log_recent(since, KEEL_LOG_TRACE, 0, &v, &n));
  CHECK_EQ(n, 3);
  CHECK(strstr(v[0].text, "lr one") && strstr(v[1].text, "lr two") &&
        strstr(v[2].text, "lr three"));
  CHECK(v[0].seq < v[1].seq && v[1].seq < v[2].seq);
  CHECK_EQ(v[1].level, KEEL_LOG_WARN);
  CHECK(v[0].text[v[0].len - 1] == '}'); /* the newline is not kept */
  uint64_t next = v[2].seq + 1;
  keel_log_recent_free(v, n);
  CHECK_OK(keel_log_recent(since, KEEL_LOG_WARN, 0, &v, &n)); /* warn and above */
  CHECK_EQ(n, 1);
  CHECK(has(v, n, "lr two"));
  keel_log_recent_free(v, n);
  CHECK_OK(keel_log_recent(since, KEEL_LOG_TRACE, 2, &v, &n)); /* the newest 2 */
  CHECK_EQ(n, 2);
  CHECK(has(v, n, "lr two") && has(v, n, "lr three") && !has(v, n, "lr one"));
  keel_log_recent_free(v, n);
  keel_log_error(NULL, "lr four");
  keel_log_flush();
  CHECK_OK(keel_log_recent(next, KEEL_LOG_TRACE, 0, &v, &n)); /* only what came after */
  CHECK_EQ(n, 1);
  CHECK(has(v, n, "lr four"));
  keel_log_recent_free(v, n);
  CHECK_EQ(keel_log_recent(0, (keel_log_level)99, 0, &v, &n), KEEL_EINVAL);
  CHECK_EQ(keel_log_recent(0, KEEL_LOG_TRACE, 0, NULL, &n), KEEL_EINVAL);
  keel_log_shutdown();
}

KT_CASE(the_ring_is_bounded_and_long_lines_are_cut) {
  init();
  uint64_t since = keel_log_recent_last();
  for (int i = 0; i < KEEL_LOG_RECENT_MAX + 500; i++) {
    keel_log_info(NULL, "lr many", KEEL_INT("i", i));
    if (i % 200 == 199) keel_log_flush();
  }
  keel_log_flush();
  keel_log_recent_line *v;
  size_t n;
  CHECK_OK(keel_log_recent(since, KEEL_LOG_TRACE, 0, &v, &n));
  CHECK_EQ(n, KEEL_LOG_RECENT_MAX); /* the oldest 500 scrolled out */
  char want[32];
  snprintf(want, sizeof want, "\"i\":%d}", KEEL_LOG_RECENT_MAX + 499);
  CHECK(strstr(v[n - 1].text, want) != NULL);
  CHECK(strstr(v[0].text, "\"i\":500}") != NULL);
  keel_log_recent_free(v, n);
  static char big[KEEL_LOG_RECENT_LINE_MAX * 2];
  memset(big, 'b', sizeof big - 1);
  since = keel_log_recent_last();
  keel_log_info(NULL, "lr big", KEEL_STR("big", big));
  keel_log_flush();
  CHECK_OK(keel_log_recent(since, KEEL_LOG_TRACE, 0, &v, &n));
  CHECK_EQ(n, 1);
  CHECK(v[0].truncated);
  CHECK_EQ(v[0].len, KEEL_LOG_RECENT_LINE_MAX);
  CHECK_EQ(strlen(v[0].text), KEEL_LOG_RECENT_LINE_MAX);
  keel_log_recent_free(v, n);
  keel_log_shutdown();
}

KT_MAIN(KT_ENTRY(keeps_the_newest_lines_in_order_with_a_level_filter_and_a_cursor),
        KT_ENTRY(the_ring_is_bounded_and_long_lines_are_cut))
