/* test_registry.c - unique names and keyed groups (include/keel/registry.h).
 *
 * Members of keyed groups are small processes ("members") that join the keys
 * they are given, acknowledge, and then forward every dispatched message back
 * to the test tagged with their index, until told to leave a key or to exit.
 */
#include "otp/kt_otp.h"

enum { M_JOINED = 1, M_GOT = 2, M_LEAVE = 3, M_LEFT = 4, M_QUIT = 5, M_EVENT = 50 };

typedef struct member_arg {
  keel_pid_t test;
  uint64_t index;
  const char *keys[4];
} member_arg;

static void member(void *arg) {
  member_arg *ma = arg;
  for (int i = 0; i < 4 && ma->keys[i]; i++) {
    CHECK_OK(keel_reg_join(ma->keys[i]));
    CHECK_OK(keel_reg_join(ma->keys[i])); /* idempotent */
  }
  kt_send_u64(ma->test, M_JOINED, ma->index);
  for (;;) {
    keel_msg_t *m = kt_recv(KEEL_INFINITY);
    uint32_t tag = keel_msg_tag(m);
    keel_msg_free(m);
    if (tag == M_QUIT) return;
    if (tag == M_LEAVE) {
      CHECK_OK(keel_reg_leave(ma->keys[0]));
      CHECK_EQ(keel_reg_leave(ma->keys[0]), KEEL_ENOENT);
      kt_send_u64(ma->test, M_LEFT, ma->index);
      continue;
    }
    kt_send_u64(ma->test, M_GOT, ma->index);
  }
}

static void waiter(void *arg) {
  (void)arg;
  keel_msg_t *m = kt_recv(KEEL_INFINITY);
  keel_msg_free(m);
}

static void collect(const char *name, keel_pid_t pid, void *ud) {
  keel_pid_t *want = ud;
  if (strcmp(name, "reg.alpha") == 0) CHECK_EQ(pid, want[0]);
  if (strcmp(name, "reg.beta") == 0) CHECK_EQ(pid, want[1]);
}

KT_CASE(register_lookup_unregister_and_list) {
  kt_quiet();
  keel_ref_t r1, r2;
  keel_pid_t p1 = kt_spawn_monitor(waiter, NULL, -1, &r1);
  keel_pid_t p2 = kt_spawn_monitor(waiter, NULL, -1, &r2);
  size_t before = keel_registered(NULL, NULL);
  CHECK_OK(keel_register("reg.alpha", p1));
  CHECK_OK(keel_register("reg.beta", p2));
  CHECK_OK(keel_register("reg.alpha2", p1)); /* a process may hold several names */
  CHECK_EQ(keel_whereis("reg.alpha"), p1);
  CHECK_EQ(keel_whereis("reg.beta"), p2);
  CHECK_EQ(keel_whereis("reg.alpha2"), p1);
  CHECK_EQ(keel_whereis("reg.gamma"), 0);
  keel_pid_t want[2] = {p1, p2};
  CHECK_EQ(keel_registered(collect, want), before + 3);

  CHECK_OK(keel_unregister("reg.alpha2"));
  CHECK_EQ(keel_unregister("reg.alpha2"), KEEL_ENOENT);
  CHECK_EQ(keel_whereis("reg.alpha2"), 0);
  CHECK_EQ(keel_registered(NULL, NULL), before + 2);

  /* bad arguments */
  char longname[KEEL_NAME_MAX + 2];
  memset(longname, 'x', sizeof longname - 1);
  longname[sizeof longname - 1] = 0;
  CHECK_EQ(keel_register("", p1), KEEL_EINVAL);
  CHECK_EQ(keel_register(NULL, p1), KEEL_EINVAL);
  CHECK_EQ(keel_register(longname, p1), KEEL_EINVAL);
  longname[KEEL_NAME_MAX] = 0; /* exactly the maximum is fine */
  CHECK_OK(keel_register(longname, p1));
  CHECK_EQ(keel_whereis(longname), p1);
  CHECK_OK(keel_unregister(longname));
  CHECK_EQ(keel_register("reg.zero", 0), KEEL_EINVAL);

  kt_send_tag(p1, 1);
  kt_send_tag(p2, 1);
  CHECK_EQ(kt_wait_down(r1, p1, NULL, 0), KEEL_REASON_NORMAL);
  CHECK_EQ(kt_wait_down(r2, p2, NULL, 0), KEEL_REASON_NORMAL);
  CHECK_EQ(keel_register("reg.dead", p1), KEEL_ENOPROC);
  CHECK_EQ(keel_whereis("reg.alpha"), 0);
  CHECK_EQ(keel_whereis("reg.beta"), 0);
  KT_WAIT_UNTIL(keel_registered(NULL, NULL) == before);
}

KT_CASE(duplicate_name_refused_while_alive_and_reusable_after_death) {
  kt_quiet();
  keel_ref_t r1, r2;
  keel_pid_t p1 = kt_spawn_monitor(waiter, NULL, -1, &r1);
  keel_pid_t p2 = kt_spawn_monitor(waiter, NULL, -1, &r2);
  CHECK_OK(keel_register("dup", p1));
  CHECK_OK(keel_register("dup", p1)); /* the holder again: fine */
  CHECK_EQ(keel_register("dup", p2), KEEL_EEXIST);
  CHECK_EQ(keel_whereis("dup"), p1);
  CHECK_OK(keel_exit_signal(p1, KEEL_REASON_KILL, NULL));
  CHECK_EQ(kt_wait_down(r1, p1, NULL, 0), KEEL_REASON_KILLED);
  /* right after the holder's death, before any clean-up could be relied on */
  CHECK_EQ(keel_whereis("dup"), 0);
  CHECK_OK(keel_register("dup", p2));
  CHECK_EQ(keel_whereis("dup"), p2);
  /* the old holder's exit hook must not remove the new holder's name */
  keel_sleep(5);
  CHECK_EQ(keel_whereis("dup"), p2);
  kt_send_tag(p2, 1);
  CHECK_EQ(kt_wait_down(r2, p2, NULL, 0), KEEL_REASON_NORMAL);
  CHECK_EQ(keel_whereis("dup"), 0);
}

KT_CASE(unregistered_name_can_be_taken_by_another) {
  kt_quiet();
  keel_ref_t r1, r2;
  keel_pid_t p1 = kt_spawn_monitor(waiter, NULL, -1, &r1);
  keel_pid_t p2 = kt_spawn_monitor(waiter, NULL, -1, &r2);
  CHECK_OK(keel_register("moved", p1));
  CHECK_OK(keel_unregister("moved"));
  CHECK_OK(keel_register("moved", p2));
  /* p1's exit must not take p2's name with it */
  kt_send_tag(p1, 1);
  CHECK_EQ(kt_wait_down(r1, p1, NULL, 0), KEEL_REASON_NORMAL);
  keel_sleep(5);
  CHECK_EQ(keel_whereis("moved"), p2);
  kt_send_tag(p2, 1);
  CHECK_EQ(kt_wait_down(r2, p2, NULL, 0), KEEL_REASON_NORMAL);
  CHECK_EQ(keel_whereis("moved"), 0);
}

KT_CASE(glob_patterns_match_segments) {
  CHECK(keel_glob_match("orders.created", "orders.created"));
  CHECK(!keel_glob_match("orders.created", "orders.cancelled"));
  CHECK(keel_glob_match("orders.*", "orders.created"));
  CHECK(!keel_glob_match("orders.*", "orders.eu.created"));
  CHECK(keel_glob_match("orders.**", "orders.created"));
  CHECK(keel_glob_match("orders.**", "orders.eu.created"));
  CHECK(keel_glob_match("*.created", "orders.created"));
  CHECK(!keel_glob_match("*.created", "orders.eu.created"));
  CHECK(keel_glob_match("**.created", "orders.eu.created"));
  CHECK(keel_glob_match("orders.?u.*", "orders.eu.created"));
  CHECK(!keel_glob_match("orders.?", "orders.eu"));
  CHECK(!keel_glob_match("orders?eu", "orders.eu")); /* ? never matches a dot */
  CHECK(keel_glob_match("ord*", "orders"));
  CHECK(!keel_glob_match("ord*", "orders.created"));
  CHECK(keel_glob_match("*", "orders"));
  CHECK(!keel_glob_match("*", "orders.created"));
  CHECK(keel_glob_match("**", "a.b.c"));
  CHECK(keel_glob_match("a.*.c", "a.b.c"));
  CHECK(keel_glob_match("a.*.c", "a..c")); /* * matches an empty run */
  CHECK(!keel_glob_match("a.*.c", "a.b.b.c"));
  CHECK(keel_glob_match("a.**.c", "a.b.b.c"));
  CHECK(keel_glob_match("*.*", "x.y"));
}

/* Receives `n` M_GOT messages and returns the set of member indexes as a
 * bitmask; *copies counts them (a member of two matching keys gets one copy
 * per key: "a copy to every member of every key matching"). */
static uint64_t got_from(size_t n) {
  uint64_t mask = 0;
  for (size_t i = 0; i < n; i++) {
    uint64_t idx = kt_recv_tag_u64(M_GOT, KT_LONG);
    mask |= 1ull << idx;
  }
  keel_msg_t *m = NULL;
  CHECK_EQ(keel_receive_match(kt_match_tag_fn, &(uint32_t){M_GOT}, &m, 20), KEEL_ETIMEDOUT);
  return mask;
}

static size_t last_delivered;

static uint64_t dispatch(const char *pattern) {
  keel_msg_t *ev = keel_msg_copy(M_EVENT, "x", 1);
  size_t delivered = 999;
  CHECK_OK(keel_reg_dispatch(pattern, ev, &delivered));
  keel_msg_free(ev); /* borrowed by dispatch */
  last_delivered = delivered;
  return got_from(delivered);
}

KT_CASE(keyed_groups_join_leave_and_dispatch_with_globs) {
  kt_quiet();
  member_arg args[5] = {
      {keel_self(), 0, {"orders.created", "users.created"}},
      {keel_self(), 1, {"orders.eu.created"}},
      {keel_self(), 2, {"orders.cancelled"}},
      {keel_self(), 3, {"users.created"}},
      {keel_self(), 4, {"orders.created"}},
  };
  keel_pid_t pids[5];
  keel_ref_t refs[5];
  for (int i = 0; i < 5; i++)
    pids[i] = kt_spawn_monitor(member, &args[i], i % 2, &refs[i]);
  for (int i = 0; i < 5; i++)
    (void)kt_recv_tag_u64(M_JOINED, KT_LONG);

  keel_pid_t out[8];
  CHECK_EQ(keel_reg_members("orders.created", out, 8), 2);
  CHECK((out[0] == pids[0] && out[1] == pids[4]) || (out[0] == pids[4] && out[1] == pids[0]));
  CHECK_EQ(keel_reg_members("orders.created", out, 1), 2); /* count, even past max */
  CHECK_EQ(keel_reg_members("nobody.here", out, 8), 0);

  CHECK_EQ(dispatch("orders.created"), 0x11);
  CHECK_EQ(last_delivered, 2);
  CHECK_EQ(dispatch("orders.*"), 0x15);
  CHECK_EQ(last_delivered, 3);
  CHECK_EQ(dispatch("orders.**"), 0x17);
  CHECK_EQ(dispatch("*.created"), 0x19);
  CHECK_EQ(dispatch("**.created"), 0x1b);
  CHECK_EQ(dispatch("orders.??.created"), 0x02);
  CHECK_EQ(dispatch("nothing.*"), 0);
  CHECK_EQ(dispatch("**"), 0x1f);
  CHECK_EQ(last_delivered, 6); /* member 0 is in two matching keys: a copy for each */

  /* member 4 leaves orders.created */
  kt_send_tag(pids[4], M_LEAVE);
  CHECK_EQ(kt_recv_tag_u64(M_LEFT, KT_LONG), 4);
  CHECK_EQ(keel_reg_members("orders.created", out, 8), 1);
  CHECK_EQ(dispatch("orders.*"), 0x05);

  /* membership is removed on exit */
  kt_send_tag(pids[0], M_QUIT);
  CHECK_EQ(kt_wait_down(refs[0], pids[0], NULL, 0), KEEL_REASON_NORMAL);
  KT_WAIT_UNTIL(keel_reg_members("orders.created", out, 8) == 0);
  KT_WAIT_UNTIL(keel_reg_members("users.created", out, 8) == 1);
  CHECK_EQ(dispatch("users.*"), 0x08);
  CHECK_OK(keel_exit_signal(pids[1], KEEL_REASON_KILL, NULL)); /* a kill too */
  CHECK_EQ(kt_wait_down(refs[1], pids[1], NULL, 0), KEEL_REASON_KILLED);
  KT_WAIT_UNTIL(keel_reg_members("orders.eu.created", out, 8) == 0);
  CHECK_EQ(dispatch("orders.**"), 0x04);

  CHECK_EQ(keel_reg_leave("never.joined"), KEEL_ENOENT);
  CHECK_EQ(keel_reg_join(""), KEEL_EINVAL);
  for (int i = 2; i < 5; i++) {
    kt_send_tag(pids[i], M_QUIT);
    CHECK_EQ(kt_wait_down(refs[i], pids[i], NULL, 0), KEEL_REASON_NORMAL);
  }
  KT_WAIT_UNTIL(keel_reg_members("users.created", out, 8) == 0);
  CHECK_EQ(keel_mailbox_len(), 0);
}

/* ---- concurrency (also run under ThreadSanitizer) ------------------------------------ */

typedef struct churn_arg {
  keel_pid_t test;
  int index;
  uint64_t rounds;
} churn_arg;

static void churner(void *arg) {
  churn_arg *ca = arg;
  char name[32], key[32];
  snprintf(key, sizeof key, "churn.%d", ca->index % 3);
  for (uint64_t i = 0; i < ca->rounds; i++) {
    snprintf(name, sizeof name, "churn.%d.%llu", ca->index, (unsigned long long)(i % 8));
    int rc = keel_register(name, keel_self());
    CHECK(rc == 0);
    CHECK_EQ(keel_whereis(name), keel_self());
    /* a shared name everybody competes for: exactly one holds it */
    rc = keel_register("churn.shared", keel_self());
    CHECK(rc == 0 || rc == KEEL_EEXIST);
    if (rc == 0) CHECK_OK(keel_unregister("churn.shared"));
    CHECK_OK(keel_reg_join(key));
    keel_msg_t *ev = keel_msg_new(M_EVENT, 0);
    CHECK_OK(keel_reg_dispatch("churn.*", ev, NULL));
    keel_msg_free(ev);
    CHECK_OK(keel_reg_leave(key));
    if (i % 2) CHECK_OK(keel_unregister(name));
    keel_msg_t *m = NULL;
    while (keel_receive(&m, KEEL_NOWAIT) == 0)
      keel_msg_free(m);
    if (i % 16 == 0) keel_yield();
  }
  kt_send_u64(ca->test, 1, (uint64_t)ca->index);
  /* leave the even names behind: exit frees them */
}

KT_CASE(concurrent_registration_and_dispatch) {
  kt_quiet();
  enum { N = 8 };
  /* ThreadSanitizer slows the locks and sends ~20x: fewer rounds there */
  uint64_t rounds = kt_scale_tsan(2000, 200);
  churn_arg args[N];
  keel_pid_t pids[N];
  keel_ref_t refs[N];
  size_t before = keel_registered(NULL, NULL);
  for (int i = 0; i < N; i++) {
    args[i] = (churn_arg){keel_self(), i, rounds};
    pids[i] = kt_spawn_monitor(churner, &args[i], i % 2, &refs[i]);
  }
  for (int i = 0; i < N; i++) {
    (void)kt_recv_tag_u64(1, KT_LONG);
    CHECK_EQ(kt_wait_down(refs[i], pids[i], NULL, 0), KEEL_REASON_NORMAL);
  }
  KT_WAIT_UNTIL(keel_registered(NULL, NULL) == before);
  keel_pid_t out[4];
  for (int k = 0; k < 3; k++) {
    char key[32];
    snprintf(key, sizeof key, "churn.%d", k);
    CHECK_EQ(keel_reg_members(key, out, 4), 0);
  }
}

KT_MAIN(KT_ENTRY(register_lookup_unregister_and_list),
        KT_ENTRY(duplicate_name_refused_while_alive_and_reusable_after_death),
        KT_ENTRY(unregistered_name_can_be_taken_by_another),
        KT_ENTRY(glob_patterns_match_segments),
        KT_ENTRY(keyed_groups_join_leave_and_dispatch_with_globs),
        KT_ENTRY(concurrent_registration_and_dispatch))
