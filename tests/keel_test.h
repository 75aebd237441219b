/* keel_test.h - the tiny test harness used by every keel test.
 *
 * A test file defines cases with KT_CASE(name) and lists them in KT_MAIN(...).
 * Each case runs in a fresh runtime (the case function itself is the first
 * process). CHECK fails the case with file, line and expression, and aborts
 * the whole executable at once: a failing assertion inside a process must
 * not let the node continue with corrupted expectations, and CTest reports the
 * abort. The executable prints "N passed, 0 failed" when every case passed.
 *
 * Timing never decides a verdict here: timeouts in tests are upper bounds for
 * liveness (generous), never performance thresholds.
 */
#ifndef KEEL_TEST_H
#define KEEL_TEST_H

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel.h"

#define CHECK(cond)                                                                  \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);       \
      fflush(stderr);                                                                \
      abort();                                                                       \
    }                                                                                \
  } while (0)

#define CHECK_EQ(a, b)                                                               \
  do {                                                                               \
    long long kt_a_ = (long long)(a), kt_b_ = (long long)(b);                        \
    if (kt_a_ != kt_b_) {                                                            \
      fprintf(stderr, "%s:%d: CHECK_EQ failed: %s == %s (%lld != %lld)\n", __FILE__, \
              __LINE__, #a, #b, kt_a_, kt_b_);                                       \
      fflush(stderr);                                                                \
      abort();                                                                       \
    }                                                                                \
  } while (0)

#define CHECK_OK(expr) CHECK_EQ((expr), 0)

/* Two C strings are equal (neither NULL); prints both on failure. */
#define CHECK_STR(a, b)                                                                            \
  do {                                                                                             \
    const char *kt_sa_ = (a), *kt_sb_ = (b);                                                       \
    if (!kt_sa_ || !kt_sb_ || strcmp(kt_sa_, kt_sb_) != 0) {                                       \
      fprintf(stderr, "%s:%d: CHECK_STR failed: %s == %s\n  got:  [%s]\n  want: [%s]\n", __FILE__, \
              __LINE__, #a, #b, kt_sa_ ? kt_sa_ : "(null)", kt_sb_ ? kt_sb_ : "(null)");           \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

typedef struct kt_case {
  const char *name;
  void (*fn)(void *);
  int schedulers; /* 0: default */
} kt_case;

#define KT_CASE(name) static void name(void *kt_arg_unused_)
#define KT_ENTRY(name) {#name, name, 0}
#define KT_ENTRY_SCHED(name, n) {#name, name, n}

static inline int kt_run_cases(const kt_case *cases, size_t n, int argc, char **argv) {
  size_t passed = 0;
  for (size_t i = 0; i < n; i++) {
    if (argc > 1 && strcmp(argv[1], cases[i].name) != 0) continue;
    keel_rt_opts o;
    keel_rt_opts_init(&o);
    o.schedulers = cases[i].schedulers;
    fprintf(stderr, "-- %s\n", cases[i].name);
    int rc = keel_run(cases[i].fn, NULL, &o);
    if (rc != 0) {
      fprintf(stderr, "not ok - %s (keel_run returned %d)\n", cases[i].name, rc);
      printf("%zu passed, 1 failed\n", passed);
      return 1;
    }
    printf("ok - %s\n", cases[i].name);
    passed++;
  }
  printf("%zu passed, 0 failed\n", passed);
  return 0;
}

#define KT_MAIN(...)                                                                 \
  int main(int argc, char **argv) {                                                  \
    static const kt_case kt_cases_[] = {__VA_ARGS__};                                \
    return kt_run_cases(kt_cases_, sizeof kt_cases_ / sizeof kt_cases_[0], argc, argv); \
  }

/* Receives one message or fails the test after timeout_ms. */
static inline keel_msg_t *kt_recv(int64_t timeout_ms) {
  keel_msg_t *m = NULL;
  int rc = keel_receive(&m, timeout_ms);
  if (rc != 0) {
    fprintf(stderr, "kt_recv: %s\n", keel_strerror(rc));
    abort();
  }
  return m;
}

/* Sends a message with a tag and an integer payload. */
static inline void kt_send_u64(keel_pid_t to, uint32_t tag, uint64_t v) {
  keel_msg_t *m = keel_msg_copy(tag, &v, sizeof v);
  CHECK(m != NULL);
  CHECK_OK(keel_send(to, m));
}

static inline uint64_t kt_u64(const keel_msg_t *m) {
  uint64_t v;
  CHECK(keel_msg_size(m) == sizeof v);
  memcpy(&v, keel_msg_data(m), sizeof v);
  return v;
}

#endif
