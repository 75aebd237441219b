/* bench_port.c - ports (keel/port.h) against Erlang's open_port
 * (bench/erlang/port_bench.erl, the same three workloads; bench/port-compare.sh
 * runs both sides in alternating rounds):
 *
 *   port_start     open /bin/true, wait for its EXIT, close: ports per second
 *   port_echo_rtt  one line to cat and back, one at a time: round trips per second
 *   port_lines_in  seq 1 1000000 read as lines: lines per second
 */
#include "bench_driver.h"

#define START_N 300
#define ECHO_N  20000
#define LINES_N 1000000

static void wait_exit(keel_port_t *p) {
  for (;;) {
    keel_msg_t *m;
    if (keel_port_receive(p, &m, KEEL_INFINITY) != 0) bench_fail("receive", -1);
    keel_port_event ev;
    keel_port_event_of(m, &ev);
    int tag = ev.tag;
    keel_msg_free(m);
    if (tag == KEEL_PORT_EXIT) return;
  }
}

static keel_port_t *open_or_die(const char *const *argv) {
  keel_port_t *p;
  int rc = keel_port_open(&(keel_port_opts){.argv = argv}, &p);
  if (rc) bench_fail("keel_port_open", rc);
  return p;
}

static void port_start(void *arg) {
  static const char *const argv[] = {"/bin/true", NULL};
  double t0 = bench_now_s();
  for (int i = 0; i < START_N; i++) {
    keel_port_t *p = open_or_die(argv);
    wait_exit(p);
    keel_port_close(p, 0, NULL);
  }
  bench_result = START_N / (bench_now_s() - t0);
}

static void port_echo_rtt(void *arg) {
  static const char *const argv[] = {"/bin/cat", NULL};
  keel_port_t *p = open_or_die(argv);
  double t0 = bench_now_s();
  for (int i = 0; i < ECHO_N; i++) {
    int rc = keel_port_write(p, "hello\n", 6, 0);
    if (rc) bench_fail("keel_port_write", rc);
    keel_msg_t *m;
    if (keel_port_receive(p, &m, KEEL_INFINITY) != 0) bench_fail("receive", -1);
    keel_msg_free(m);
  }
  bench_result = ECHO_N / (bench_now_s() - t0);
  keel_port_close(p, 0, NULL);
}

static void port_lines_in(void *arg) {
  static const char *const argv[] = {"/usr/bin/seq", "1", "1000000", NULL};
  double t0 = bench_now_s();
  keel_port_t *p = open_or_die(argv);
  long lines = 0;
  for (;;) {
    keel_msg_t *m;
    if (keel_port_receive(p, &m, KEEL_INFINITY) != 0) bench_fail("receive", -1);
    int tag = (int)keel_msg_tag(m);
    keel_msg_free(m);
    if (tag == KEEL_PORT_EXIT) break;
    lines++;
  }
  if (lines != LINES_N) bench_fail("line count", -1);
  bench_result = LINES_N / (bench_now_s() - t0);
  keel_port_close(p, 0, NULL);
}

int main(int argc, char **argv) {
  static const bench_workload ws[] = {
      {"port_start", "ports/s", port_start, 3},
      {"port_echo_rtt", "roundtrips/s", port_echo_rtt, 3},
      {"port_lines_in", "lines/s", port_lines_in, 3},
  };
  return bench_main("bench_port", ws, sizeof ws / sizeof ws[0], argc, argv, NULL);
}
