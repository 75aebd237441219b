/* kt_rt.h - small helpers shared by the runtime tests in tests/rt/.
 *
 * Not a test file itself (the build only picks up test_*.c). It adds what
 * several runtime tests need on top of keel_test.h: a monotonic clock, a
 * sanitizer switch to scale heavy tests down, and receive helpers that fail
 * the test instead of returning an error.
 */
#ifndef KT_RT_H
#define KT_RT_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "keel_test.h"

/* KT_SANITIZED is 1 when built with ASan or TSan: heavy tests scale their
 * counts down there (the sanitizers slow message passing 5-20x), and the
 * environment variable KEEL_TEST_HEAVY=1 forces the full counts anyway. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define KT_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define KT_SANITIZED 1
#endif
#endif
#ifndef KT_SANITIZED
#define KT_SANITIZED 0
#endif

#if defined(__SANITIZE_THREAD__)
#define KT_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define KT_TSAN 1
#endif
#endif
#ifndef KT_TSAN
#define KT_TSAN 0
#endif

/* full when not sanitized (or KEEL_TEST_HEAVY=1), else reduced. */
static inline uint64_t kt_scale(uint64_t full, uint64_t reduced) {
  const char *heavy = getenv("KEEL_TEST_HEAVY");
  if (heavy && heavy[0] == '1') return full;
  return KT_SANITIZED ? reduced : full;
}

/* full except under ThreadSanitizer (which slows everything 5-20x), where
 * reduced; ASan builds (2-3x slower) keep the full count. */
static inline uint64_t kt_scale_tsan(uint64_t full, uint64_t reduced) {
  const char *heavy = getenv("KEEL_TEST_HEAVY");
  if (heavy && heavy[0] == '1') return full;
  return KT_TSAN ? reduced : full;
}

/* Milliseconds on the monotonic clock. */
static inline int64_t kt_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Nanoseconds on the monotonic clock. */
static inline int64_t kt_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* A generous liveness bound for waits that must complete. */
#define KT_LONG 30000

static inline bool kt_match_tag_fn(const keel_msg_t *m, void *arg) {
  return keel_msg_kind_of(m) == KEEL_MSG_USER && keel_msg_tag(m) == *(const uint32_t *)arg;
}

static inline bool kt_match_kind_fn(const keel_msg_t *m, void *arg) {
  return keel_msg_kind_of(m) == *(const keel_msg_kind *)arg;
}

/* Receives the oldest user message with this tag (others stay queued), or
 * fails the test after timeout_ms. */
static inline keel_msg_t *kt_recv_tag(uint32_t tag, int64_t timeout_ms) {
  keel_msg_t *m = NULL;
  int rc = keel_receive_match(kt_match_tag_fn, &tag, &m, timeout_ms);
  if (rc != 0) {
    fprintf(stderr, "kt_recv_tag(%u): %s\n", tag, keel_strerror(rc));
    abort();
  }
  return m;
}

/* Receives the oldest message of this kind (others stay queued). */
static inline keel_msg_t *kt_recv_kind(keel_msg_kind kind, int64_t timeout_ms) {
  keel_msg_t *m = NULL;
  int rc = keel_receive_match(kt_match_kind_fn, &kind, &m, timeout_ms);
  if (rc != 0) {
    fprintf(stderr, "kt_recv_kind(%d): %s\n", (int)kind, keel_strerror(rc));
    abort();
  }
  return m;
}

/* What a trapping process saw in an EXIT message, reported to another
 * process (the test's parent) so that the test can check it. */
typedef struct kt_exit_seen {
  keel_pid_t self; /* who saw it */
  keel_pid_t from; /* who exited */
  keel_reason_kind kind;
  char text[48];
} kt_exit_seen;

/* Frees m, an EXIT message, and sends what it says to `to` with tag `tag`. */
static inline void kt_report_exit(keel_msg_t *m, keel_pid_t to, uint32_t tag) {
  kt_exit_seen e;
  memset(&e, 0, sizeof e);
  keel_reason r;
  CHECK_OK(keel_msg_exit_info(m, &e.from, &r));
  e.self = keel_self();
  e.kind = r.kind;
  snprintf(e.text, sizeof e.text, "%s", r.text);
  keel_msg_free(m);
  keel_msg_t *out = keel_msg_copy(tag, &e, sizeof e);
  CHECK(out != NULL);
  CHECK_OK(keel_send(to, out));
}

/* Receives a report sent by kt_report_exit with this tag. */
static inline kt_exit_seen kt_recv_exit_seen(uint32_t tag) {
  keel_msg_t *m = kt_recv_tag(tag, KT_LONG);
  kt_exit_seen e;
  CHECK_EQ(keel_msg_size(m), sizeof e);
  memcpy(&e, keel_msg_data(m), sizeof e);
  keel_msg_free(m);
  return e;
}

/* Receives a user message with this tag and returns its u64 payload. */
static inline uint64_t kt_recv_tag_u64(uint32_t tag, int64_t timeout_ms) {
  keel_msg_t *m = kt_recv_tag(tag, timeout_ms);
  uint64_t v = kt_u64(m);
  keel_msg_free(m);
  return v;
}

/* Waits for the DOWN message of `ref` (other messages stay queued), checks it
 * names `pid`, and returns its reason kind; the text is copied to text_out
 * (may be NULL, size len). */
typedef struct kt_ref_match {
  keel_ref_t ref;
} kt_ref_match;

static inline bool kt_match_down_ref_fn(const keel_msg_t *m, void *arg) {
  return keel_msg_kind_of(m) == KEEL_MSG_DOWN && keel_msg_ref(m) == ((kt_ref_match *)arg)->ref;
}

static inline keel_reason_kind kt_wait_down(keel_ref_t ref, keel_pid_t pid, char *text_out,
                                            size_t len) {
  kt_ref_match rm = {ref};
  keel_msg_t *m = NULL;
  int rc = keel_receive_match(kt_match_down_ref_fn, &rm, &m, KT_LONG);
  if (rc != 0) {
    fprintf(stderr, "kt_wait_down: %s\n", keel_strerror(rc));
    abort();
  }
  keel_pid_t who = 0;
  keel_reason r;
  CHECK_OK(keel_msg_exit_info(m, &who, &r));
  CHECK_EQ(who, pid);
  CHECK(r.text != NULL);
  if (text_out && len) snprintf(text_out, len, "%s", r.text);
  keel_reason_kind k = r.kind;
  keel_msg_free(m);
  return k;
}

/* Receives the next EXIT message, checks that it comes from pid (and carries
 * no user tag), copies its reason text to text_out and returns its kind. */
static inline keel_reason_kind kt_recv_exit(keel_pid_t pid, char *text_out, size_t len) {
  keel_msg_t *m = kt_recv_kind(KEEL_MSG_EXIT, KT_LONG);
  keel_pid_t who = 0;
  keel_reason r;
  CHECK_OK(keel_msg_exit_info(m, &who, &r));
  CHECK_EQ(who, pid);
  CHECK_EQ(keel_msg_tag(m), 0);
  if (text_out && len) snprintf(text_out, len, "%s", r.text);
  keel_reason_kind k = r.kind;
  keel_msg_free(m);
  return k;
}

/* Sends a message with a tag and no payload. */
static inline void kt_send_tag(keel_pid_t to, uint32_t tag) {
  keel_msg_t *m = keel_msg_new(tag, 0);
  CHECK(m != NULL);
  CHECK_OK(keel_send(to, m));
}

/* Spawns fn(arg) with a monitor (and an optional scheduler hint, -1 for
 * none); returns the pid, the monitor reference in *ref. */
static inline keel_pid_t kt_spawn_monitor(keel_proc_fn fn, void *arg, int sched, keel_ref_t *ref) {
  keel_spawn_opts o;
  keel_spawn_opts_init(&o);
  o.monitor = true;
  *ref = 0; /* an output; cleared so a stale value can never be taken as input
             * (test_process checks that case on its own) */
  o.monitor_ref = ref;
  o.scheduler = KEEL_ON_SCHEDULER(sched);
  keel_pid_t pid = 0;
  CHECK_OK(keel_spawn(fn, arg, &o, &pid));
  CHECK(pid != 0);
  CHECK(*ref != 0);
  return pid;
}

/* Spawns fn(arg) on scheduler hint sched (-1: anywhere), no link/monitor. */
static inline keel_pid_t kt_spawn_on(keel_proc_fn fn, void *arg, int sched) {
  keel_spawn_opts o;
  keel_spawn_opts_init(&o);
  o.scheduler = KEEL_ON_SCHEDULER(sched);
  keel_pid_t pid = 0;
  CHECK_OK(keel_spawn(fn, arg, &o, &pid));
  CHECK(pid != 0);
  return pid;
}

/* Blocks the calling process (without busy-waiting) until cond() holds,
 * polling every ms, failing the test after KT_LONG. */
#define KT_WAIT_UNTIL(cond)                                                                        \
  do {                                                                                             \
    int64_t kt_deadline_ = kt_now_ms() + KT_LONG;                                                  \
    while (!(cond)) {                                                                              \
      if (kt_now_ms() > kt_deadline_) {                                                            \
        fprintf(stderr, "%s:%d: timed out waiting for %s\n", __FILE__, __LINE__, #cond);           \
        abort();                                                                                   \
      }                                                                                            \
      CHECK_OK(keel_sleep(1));                                                                     \
    }                                                                                              \
  } while (0)

#endif
