/* bench_log.c - structured log throughput, the figure compared with pino.
 *
 * log_static: a short message and no fields; log_5_fields: a message and
 * five fields of mixed types (string, int, double, bool, string), the same
 * two workloads as bench/node/bench_pino.js. One process logs N lines to a
 * file in $TMPDIR (or /tmp) through keel_log; the clock stops when
 * keel_log_flush returns, that is when the last byte has been written to
 * the file. Lines never drop here (overflow_wait_ms = KEEL_INFINITY: the
 * producer waits for the writer instead), and the run fails if the file does
 * not hold every line's bytes. Unit: lines/s.
 */
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bench_driver.h"
#include "keel/log.h"

enum { N_LINES = 2000000 };

static char path[512];

static void start(void) {
  const char *dir = getenv("TMPDIR");
  snprintf(path, sizeof path, "%s/keel_bench_log_%d.log", dir && *dir ? dir : "/tmp",
           (int)getpid());
  unlink(path);
  keel_log_opts o;
  keel_log_opts_init(&o);
  o.file = path;
  o.level = KEEL_LOG_INFO;
  o.format = KEEL_LOG_JSON;
  o.service = "bench";
  o.overflow_wait_ms = KEEL_INFINITY;
  int rc = keel_log_init(&o);
  if (rc) bench_fail("keel_log_init", rc);
}

static void finish(double t0) {
  int rc = keel_log_flush();
  if (rc) bench_fail("keel_log_flush", rc);
  double t1 = bench_now_s();
  keel_log_stats st;
  keel_log_stats_get(&st);
  struct stat sb;
  if (st.dropped || st.lines[KEEL_LOG_INFO] != N_LINES || stat(path, &sb) != 0 ||
      (uint64_t)sb.st_size != st.bytes_written) {
    fprintf(stderr, "bench_log: lines missing (dropped %llu)\n", (unsigned long long)st.dropped);
    exit(2);
  }
  keel_log_shutdown();
  unlink(path);
  bench_result = N_LINES / (t1 - t0);
}

static void log_static(void *arg) {
  start();
  double t0 = bench_now_s();
  for (int i = 0; i < N_LINES; i++) {
    keel_log_info(NULL, "hello world");
    if ((i & 1023) == 0) keel_yield(); /* a well-behaved process */
  }
  finish(t0);
}

static void log_5_fields(void *arg) {
  start();
  double t0 = bench_now_s();
  for (int i = 0; i < N_LINES; i++) {
    keel_log_info(NULL, "order placed", KEEL_STR("user", "alice"), KEEL_INT("orderId", i),
                  KEEL_DOUBLE("amount", 12.5), KEEL_BOOL("paid", true),
                  KEEL_STR("region", "eu-west-1"));
    if ((i & 1023) == 0) keel_yield();
  }
  finish(t0);
}

int main(int argc, char **argv) {
  static const bench_workload ws[] = {
      {"log_static", "lines/s", log_static, 5},
      {"log_5_fields", "lines/s", log_5_fields, 5},
  };
  return bench_main("bench_log", ws, sizeof ws / sizeof ws[0], argc, argv, NULL);
}
