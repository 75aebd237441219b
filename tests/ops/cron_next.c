/* cron_next.c - keel_cron_next as a filter, for tests/ops/test_cron_oracle.py
 * (not a test case, hence not test_*.c).
 *
 * Reads lines "ZONE<TAB>AFTER<TAB>EXPRESSION" (ZONE "UTC" or an IANA name,
 * AFTER Unix seconds) and prints one line each: the next slot in Unix
 * seconds (-1 for none), or "error: MESSAGE" when the expression or the zone
 * does not parse. No runtime is started: the module is pure.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/cron.h"

int main(void) {
  char line[1024];
  while (fgets(line, sizeof line, stdin)) {
    line[strcspn(line, "\n")] = 0;
    char *t1 = strchr(line, '\t'), *t2 = t1 ? strchr(t1 + 1, '\t') : NULL;
    if (!t2) {
      fprintf(stderr, "cron_next: bad line: %s\n", line);
      return 2;
    }
    *t1 = *t2 = 0;
    int64_t after = strtoll(t1 + 1, NULL, 10);
    keel_cron *c;
    char err[256];
    if (keel_cron_parse(t2 + 1, line, &c, err, sizeof err) != 0) {
      printf("error: %s\n", err);
    } else {
      printf("%" PRId64 "\n", keel_cron_next(c, after));
      keel_cron_free(c);
    }
    fflush(stdout);
  }
  return 0;
}
