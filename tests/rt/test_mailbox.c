/* test_mailbox.c - messages and mailboxes: FIFO order, order per sender pair
 * under many concurrent senders, 10 million messages with none lost or
 * duplicated, sends to dead processes counted, sends from foreign threads,
 * receive timeouts (0, finite, infinity), selective receive, replies matched
 * by reference with late replies dropped, a monitor ref awaited, and control
 * signals overtaking a flooded mailbox.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>

#include "rt/kt_rt.h"

enum { T_DATA = 1, T_DONE, T_ACK, T_REQ, T_ANSWER, T_GO, T_STOP, T_READY, T_OTHER, T_NEVER };

static keel_pid_t g_parent;

/* ---- basic order and timeouts ----------------------------------------------- */

KT_CASE(receive_takes_messages_oldest_first) {
  for (uint64_t i = 0; i < 1000; i++)
    kt_send_u64(keel_self(), T_DATA, i);
  CHECK_EQ(keel_mailbox_len(), 1000);
  for (uint64_t i = 0; i < 1000; i++) {
    keel_msg_t *m = kt_recv(0);
    CHECK_EQ(kt_u64(m), i);
    keel_msg_free(m);
  }
  CHECK_EQ(keel_mailbox_len(), 0);
}

KT_CASE(receive_with_zero_timeout_on_empty_mailbox_returns_etimedout_at_once) {
  keel_msg_t *m = (keel_msg_t *)&m;
  int64_t t0 = kt_now_ms();
  CHECK_EQ(keel_receive(&m, KEEL_NOWAIT), KEEL_ETIMEDOUT);
  CHECK(m == NULL);
  CHECK(kt_now_ms() - t0 < 5000); /* "at once": only a liveness bound */
  kt_send_u64(keel_self(), T_DATA, 5);
  CHECK_OK(keel_receive(&m, KEEL_NOWAIT));
  CHECK_EQ(kt_u64(m), 5);
  keel_msg_free(m);
}

KT_CASE(receive_with_finite_timeout_waits_at_least_that_long) {
  for (int i = 0; i < 3; i++) {
    keel_msg_t *m = (keel_msg_t *)&m;
    int64_t t0 = kt_now_ns();
    CHECK_EQ(keel_receive(&m, 100), KEEL_ETIMEDOUT);
    int64_t waited_ms = (kt_now_ns() - t0) / 1000000;
    CHECK(m == NULL);
    CHECK(waited_ms >= 90); /* loose lower bound: libuv's loop clock has 1 ms steps */
  }
}

static void delayed_sender_proc(void *arg) {
  (void)arg;
  CHECK_OK(keel_sleep(150));
  kt_send_u64(g_parent, T_DATA, 42);
}

KT_CASE(receive_with_infinity_waits_until_a_message_comes) {
  g_parent = keel_self();
  kt_spawn_on(delayed_sender_proc, NULL, -1);
  int64_t t0 = kt_now_ms();
  keel_msg_t *m = NULL;
  CHECK_OK(keel_receive(&m, KEEL_INFINITY));
  CHECK(kt_now_ms() - t0 >= 100);
  CHECK_EQ(kt_u64(m), 42);
  keel_msg_free(m);
}

/* One meaning of 0 across the API: the default, which for a receive is to
 * wait as long as it takes (KEEL_NOWAIT is the poll). */
KT_CASE(receive_with_timeout_0_waits_as_its_default_says) {
  g_parent = keel_self();
  kt_spawn_on(delayed_sender_proc, NULL, -1);
  int64_t t0 = kt_now_ms();
  keel_msg_t *m = NULL;
  CHECK_OK(keel_receive(&m, KEEL_TIMEOUT_DEFAULT));
  CHECK(kt_now_ms() - t0 >= 100);
  CHECK_EQ(kt_u64(m), 42);
  keel_msg_free(m);
  CHECK_EQ(keel_receive(&m, -5), KEEL_EINVAL); /* neither NOWAIT nor INFINITY */
  CHECK_EQ(keel_receive_match(NULL, NULL, &m, -5), KEEL_EINVAL);
}

KT_CASE(receive_with_timeout_returns_the_message_that_arrives_meanwhile) {
  g_parent = keel_self();
  kt_spawn_on(delayed_sender_proc, NULL, -1);
  keel_msg_t *m = NULL;
  CHECK_OK(keel_receive(&m, KT_LONG));
  CHECK_EQ(kt_u64(m), 42);
  keel_msg_free(m);
  /* the cancelled timeout does not wake us up later with anything */
  CHECK_EQ(keel_receive(&m, 50), KEEL_ETIMEDOUT);
}

/* ---- selective receive -------------------------------------------------------- */

static atomic_int g_match_calls;

static bool match_tag_counting(const keel_msg_t *m, void *arg) {
  atomic_fetch_add(&g_match_calls, 1);
  return keel_msg_tag(m) == *(uint32_t *)arg;
}

KT_CASE(selective_receive_takes_a_later_match_and_keeps_the_rest_in_order) {
  for (uint32_t tag = 1; tag <= 5; tag++)
    kt_send_u64(keel_self(), tag + 100, tag);
  CHECK_EQ(keel_mailbox_len(), 5);
  uint32_t want = 104;
  atomic_store(&g_match_calls, 0);
  keel_msg_t *m = NULL;
  CHECK_OK(keel_receive_match(match_tag_counting, &want, &m, KEEL_NOWAIT));
  CHECK_EQ(keel_msg_tag(m), 104);
  keel_msg_free(m);
  CHECK(atomic_load(&g_match_calls) <= 5); /* each message tested at most once */
  CHECK_EQ(keel_mailbox_len(), 4);

  /* nothing matches: times out, leaves everything queued */
  want = 999;
  atomic_store(&g_match_calls, 0);
  CHECK_EQ(keel_receive_match(match_tag_counting, &want, &m, 30), KEEL_ETIMEDOUT);
  CHECK(m == NULL);
  CHECK(atomic_load(&g_match_calls) <= 4);
  CHECK_EQ(keel_mailbox_len(), 4);

  /* the last one, then the rest in their original order */
  want = 105;
  CHECK_OK(keel_receive_match(match_tag_counting, &want, &m, KEEL_NOWAIT));
  CHECK_EQ(keel_msg_tag(m), 105);
  keel_msg_free(m);
  static const uint32_t rest[] = {101, 102, 103};
  for (int i = 0; i < 3; i++) {
    m = kt_recv(0);
    CHECK_EQ(keel_msg_tag(m), rest[i]);
    keel_msg_free(m);
  }
  CHECK_EQ(keel_mailbox_len(), 0);
}

static void mixed_sender_proc(void *arg) {
  (void)arg;
  for (uint64_t i = 0; i < 100; i++) {
    kt_send_u64(g_parent, T_OTHER, i);
    if (i % 10 == 0) keel_yield();
  }
  CHECK_OK(keel_sleep(20));
  kt_send_u64(g_parent, T_DATA, 1);
  for (uint64_t i = 100; i < 200; i++)
    kt_send_u64(g_parent, T_OTHER, i);
}

KT_CASE(selective_receive_waits_past_non_matching_arrivals) {
  g_parent = keel_self();
  kt_spawn_on(mixed_sender_proc, NULL, -1);
  CHECK_EQ(kt_recv_tag_u64(T_DATA, KT_LONG), 1);
  /* the others are still there, in order */
  for (uint64_t i = 0; i < 200; i++) {
    keel_msg_t *m = kt_recv(KT_LONG);
    CHECK_EQ(keel_msg_tag(m), T_OTHER);
    CHECK_EQ(kt_u64(m), i);
    keel_msg_free(m);
  }
}

/* ---- dead receivers, foreign senders ------------------------------------------------ */

static void quick_proc(void *arg) {
  (void)arg;
}

KT_CASE(send_to_a_dead_process_is_a_counted_noop) {
  keel_ref_t ref;
  keel_pid_t pid = kt_spawn_monitor(quick_proc, NULL, -1, &ref);
  CHECK_EQ(kt_wait_down(ref, pid, NULL, 0), KEEL_REASON_NORMAL);
  keel_rt_stats before, after;
  keel_rt_stats_get(&before);
  for (int i = 0; i < 25; i++)
    CHECK_OK(keel_send(pid, keel_msg_new(T_DATA, 64)));
  keel_rt_stats_get(&after);
  CHECK_EQ(after.msgs_to_dead - before.msgs_to_dead, 25);
  CHECK(after.msgs_sent - before.msgs_sent < 25);
  /* and a live send is counted as sent */
  keel_rt_stats_get(&before);
  kt_send_u64(keel_self(), T_DATA, 1);
  keel_rt_stats_get(&after);
  CHECK(after.msgs_sent - before.msgs_sent >= 1);
  CHECK_EQ(after.msgs_to_dead, before.msgs_to_dead);
  keel_msg_free(kt_recv(0));
}

static void *foreign_thread(void *arg) {
  keel_pid_t to = *(keel_pid_t *)arg;
  for (uint64_t i = 0; i < 1000; i++)
    kt_send_u64(to, T_DATA, i);
  return NULL;
}

KT_CASE(send_from_a_foreign_thread_keeps_order_and_has_sender_zero) {
  static keel_pid_t self;
  self = keel_self();
  pthread_t th;
  CHECK_OK(pthread_create(&th, NULL, foreign_thread, &self));
  for (uint64_t i = 0; i < 1000; i++) {
    keel_msg_t *m = kt_recv(KT_LONG);
    CHECK_EQ(kt_u64(m), i);
    CHECK_EQ(keel_msg_from(m), 0);
    keel_msg_free(m);
  }
  pthread_join(th, NULL); /* it has sent everything: joins at once */
}

/* ---- order per sender pair under many senders ------------------------------------------ */

typedef struct seq_msg {
  uint32_t sender;
  uint32_t pad;
  uint64_t seq;
} seq_msg;

static _Atomic keel_pid_t g_receiver;
static uint64_t g_per_sender;

static void seq_sender_proc(void *arg) {
  uint32_t idx = (uint32_t)(uintptr_t)arg;
  keel_pid_t to = atomic_load(&g_receiver);
  for (uint64_t i = 0; i < g_per_sender; i++) {
    seq_msg s = {idx, 0, i};
    keel_msg_t *m = keel_msg_copy(T_DATA, &s, sizeof s);
    CHECK(m != NULL);
    CHECK_OK(keel_send(to, m));
    if (i % 1024 == 1023) keel_yield();
  }
}

KT_CASE(order_is_kept_per_sender_under_many_concurrent_senders) {
  enum { SENDERS = 8 };
  g_per_sender = kt_scale(100000, 20000);
  atomic_store(&g_receiver, keel_self());
  int n = keel_sched_count();
  for (int i = 0; i < SENDERS; i++)
    kt_spawn_on(seq_sender_proc, (void *)(uintptr_t)i, i % n);
  uint64_t next[SENDERS] = {0};
  uint64_t total = g_per_sender * SENDERS;
  for (uint64_t got = 0; got < total; got++) {
    keel_msg_t *m = kt_recv(KT_LONG);
    seq_msg s;
    CHECK_EQ(keel_msg_size(m), sizeof s);
    memcpy(&s, keel_msg_data(m), sizeof s);
    keel_msg_free(m);
    CHECK(s.sender < SENDERS);
    if (s.seq != next[s.sender]) {
      fprintf(stderr, "sender %u: got seq %" PRIu64 ", want %" PRIu64 "\n", s.sender, s.seq,
              next[s.sender]);
      CHECK(!"per-sender order broken");
    }
    next[s.sender]++;
  }
  for (int i = 0; i < SENDERS; i++)
    CHECK_EQ(next[i], g_per_sender);
  keel_msg_t *m = NULL;
  CHECK_EQ(keel_receive(&m, 50), KEEL_ETIMEDOUT);
}

/* ---- 10 million messages ------------------------------------------------------------------ */

/* Each sender sends its share in batches, at most WINDOW batches ahead of the
 * receiver's acknowledgements, so the mailbox stays bounded (a few MB) instead
 * of holding millions of messages. A message's value is (sender << 40) | seq. */
enum { BATCH = 8192, WINDOW = 4, MANY_SENDERS = 8 };
static uint64_t g_many_per_sender;

static void many_sender_proc(void *arg) {
  uint64_t idx = (uint64_t)(uintptr_t)arg;
  keel_pid_t to = atomic_load(&g_receiver);
  uint64_t batches = g_many_per_sender / BATCH;
  for (uint64_t b = 0; b < batches; b++) {
    if (b >= WINDOW) {
      /* wait for the ack of batch b - WINDOW */
      uint64_t acked = kt_recv_tag_u64(T_ACK, KT_LONG);
      CHECK_EQ(acked, b - WINDOW);
    }
    for (uint64_t i = 0; i < BATCH; i++) {
      uint64_t v = (idx << 40) | (b * BATCH + i);
      keel_msg_t *m = keel_msg_copy(T_DATA, &v, sizeof v);
      CHECK(m != NULL);
      CHECK_OK(keel_send(to, m));
    }
  }
  for (uint64_t b = batches > WINDOW ? batches - WINDOW : 0; b < batches; b++)
    CHECK_EQ(kt_recv_tag_u64(T_ACK, KT_LONG), b);
}

KT_CASE(ten_million_messages_arrive_none_lost_or_duplicated) {
  /* 10M in a normal build; 1M under ASan/TSan, where each message costs
   * 10-20x more (KEEL_TEST_HEAVY=1 forces the full count). */
  uint64_t total = kt_scale(10000000, 1000000);
  g_many_per_sender = (total / MANY_SENDERS / BATCH + 1) * BATCH;
  total = g_many_per_sender * MANY_SENDERS;
  atomic_store(&g_receiver, keel_self());
  int n = keel_sched_count();
  keel_pid_t senders[MANY_SENDERS];
  uint64_t expect_sum = 0;
  for (int i = 0; i < MANY_SENDERS; i++) {
    senders[i] = kt_spawn_on(many_sender_proc, (void *)(uintptr_t)i, i % n);
    for (uint64_t s = 0; s < g_many_per_sender; s++)
      expect_sum += ((uint64_t)i << 40) | s;
  }
  uint64_t next[MANY_SENDERS] = {0};
  uint64_t sum = 0, x = 0, expect_x = 0;
  for (uint64_t got = 0; got < total; got++) {
    keel_msg_t *m = kt_recv(KT_LONG);
    CHECK_EQ(keel_msg_tag(m), T_DATA);
    uint64_t v = kt_u64(m);
    keel_msg_free(m);
    uint64_t idx = v >> 40, seq = v & ((1ull << 40) - 1);
    CHECK(idx < MANY_SENDERS);
    CHECK_EQ(seq, next[idx]); /* no loss, no duplicate, no reorder */
    next[idx]++;
    sum += v;
    x ^= v * 0x9e3779b97f4a7c15ull;
    expect_x ^= (((uint64_t)idx << 40) | seq) * 0x9e3779b97f4a7c15ull;
    if (seq % BATCH == BATCH - 1) kt_send_u64(senders[idx], T_ACK, seq / BATCH);
  }
  CHECK_EQ(sum, expect_sum);
  CHECK_EQ(x, expect_x);
  for (int i = 0; i < MANY_SENDERS; i++)
    CHECK_EQ(next[i], g_many_per_sender);
  keel_msg_t *m = NULL;
  CHECK_EQ(keel_receive(&m, 50), KEEL_ETIMEDOUT);
}

/* ---- replies ------------------------------------------------------------------------------- */

typedef struct request {
  keel_ref_t ref;
  int64_t delay_ms;
  uint64_t value;
} request;

/* Answers requests: replies value + 1 to the sender after delay_ms, then
 * tells the sender T_DONE. Stops on T_STOP; T_OTHER makes it crash. */
static void server_proc(void *arg) {
  (void)arg;
  for (;;) {
    keel_msg_t *m = kt_recv(KEEL_INFINITY);
    uint32_t tag = keel_msg_tag(m);
    keel_pid_t from = keel_msg_from(m);
    if (tag == T_STOP) {
      keel_msg_free(m);
      return;
    }
    if (tag == T_OTHER) {
      keel_msg_free(m);
      keel_exit(KEEL_REASON_ERROR, "server crashed");
    }
    CHECK_EQ(tag, T_REQ);
    request rq;
    CHECK_EQ(keel_msg_size(m), sizeof rq);
    memcpy(&rq, keel_msg_data(m), sizeof rq);
    keel_msg_free(m);
    if (rq.delay_ms) CHECK_OK(keel_sleep(rq.delay_ms));
    uint64_t answer = rq.value + 1;
    CHECK_OK(keel_reply(from, rq.ref, keel_msg_copy(T_ANSWER, &answer, sizeof answer)));
    kt_send_tag(from, T_DONE);
  }
}

static void send_request(keel_pid_t server, keel_ref_t ref, int64_t delay, uint64_t value) {
  request rq = {ref, delay, value};
  keel_msg_t *m = keel_msg_copy(T_REQ, &rq, sizeof rq);
  CHECK(m != NULL);
  CHECK_OK(keel_send(server, m));
}

KT_CASE(await_gets_the_reply_matched_by_its_ref_and_receive_never_sees_it) {
  keel_ref_t mref;
  keel_pid_t server = kt_spawn_monitor(server_proc, NULL, -1, &mref);
  for (uint64_t i = 0; i < 100; i++) {
    keel_ref_t ref = keel_make_ref();
    CHECK_OK(keel_await_ref(ref));
    CHECK_OK(keel_await_ref(ref)); /* arming twice is a no-op */
    send_request(server, ref, 0, i);
    keel_msg_t *m = NULL;
    CHECK_OK(keel_await(ref, &m, KT_LONG));
    CHECK_EQ(keel_msg_kind_of(m), KEEL_MSG_REPLY);
    CHECK_EQ(keel_msg_ref(m), ref);
    CHECK_EQ(keel_msg_from(m), server);
    CHECK_EQ(kt_u64(m), i + 1);
    keel_msg_free(m);
    keel_msg_free(kt_recv_tag(T_DONE, KT_LONG));
    /* disarmed by await */
    CHECK_EQ(keel_await(ref, &m, KEEL_NOWAIT), KEEL_ENOENT);
  }
  /* a reply that arrives before await is kept for it, not put in the mailbox */
  keel_ref_t ref = keel_make_ref();
  CHECK_OK(keel_await_ref(ref));
  send_request(server, ref, 0, 41);
  keel_msg_free(kt_recv_tag(T_DONE, KT_LONG)); /* the reply was sent before this */
  keel_msg_t *m = NULL;
  CHECK_EQ(keel_receive(&m, 20), KEEL_ETIMEDOUT);
  CHECK_OK(keel_await(ref, &m, KEEL_NOWAIT));
  CHECK_EQ(kt_u64(m), 42);
  keel_msg_free(m);
  kt_send_tag(server, T_STOP);
  CHECK_EQ(kt_wait_down(mref, server, NULL, 0), KEEL_REASON_NORMAL);
}

KT_CASE(a_late_reply_is_dropped_never_seen_and_counted) {
  keel_ref_t mref;
  keel_pid_t server = kt_spawn_monitor(server_proc, NULL, -1, &mref);
  keel_rt_stats before, after;
  keel_rt_stats_get(&before);
  keel_ref_t ref = keel_make_ref();
  CHECK_OK(keel_await_ref(ref));
  send_request(server, ref, 200, 1);
  keel_msg_t *m = NULL;
  CHECK_EQ(keel_await(ref, &m, 20), KEEL_ETIMEDOUT);
  CHECK(m == NULL);
  /* T_DONE is sent after the reply, from the same sender */
  keel_msg_free(kt_recv_tag(T_DONE, KT_LONG));
  CHECK_EQ(keel_receive(&m, 50), KEEL_ETIMEDOUT);
  CHECK_EQ(keel_mailbox_len(), 0);
  CHECK_EQ(keel_await(ref, &m, KEEL_NOWAIT), KEEL_ENOENT);
  /* re-arming the same ref later does not resurrect the dropped reply */
  CHECK_OK(keel_await_ref(ref));
  CHECK_EQ(keel_await(ref, &m, 20), KEEL_ETIMEDOUT);
  keel_rt_stats_get(&after);
  CHECK_EQ(after.replies_dropped - before.replies_dropped, 1);

  /* a reply to a ref that was cancelled is dropped too */
  ref = keel_make_ref();
  CHECK_OK(keel_await_ref(ref));
  CHECK_OK(keel_await_cancel(ref));
  CHECK_EQ(keel_await_cancel(ref), KEEL_ENOENT);
  send_request(server, ref, 0, 1);
  keel_msg_free(kt_recv_tag(T_DONE, KT_LONG));
  CHECK_EQ(keel_receive(&m, 20), KEEL_ETIMEDOUT);
  CHECK_EQ(keel_await(ref, &m, KEEL_NOWAIT), KEEL_ENOENT);

  /* a reply never armed at all is dropped */
  send_request(server, keel_make_ref(), 0, 1);
  keel_msg_free(kt_recv_tag(T_DONE, KT_LONG));
  CHECK_EQ(keel_receive(&m, 20), KEEL_ETIMEDOUT);
  keel_rt_stats_get(&after);
  CHECK_EQ(after.replies_dropped - before.replies_dropped, 3);

  kt_send_tag(server, T_STOP);
  CHECK_EQ(kt_wait_down(mref, server, NULL, 0), KEEL_REASON_NORMAL);
}

KT_CASE(await_cancel_frees_a_reply_already_arrived) {
  keel_ref_t mref;
  keel_pid_t server = kt_spawn_monitor(server_proc, NULL, -1, &mref);
  keel_ref_t ref = keel_make_ref();
  CHECK_OK(keel_await_ref(ref));
  send_request(server, ref, 0, 1);
  keel_msg_free(kt_recv_tag(T_DONE, KT_LONG));
  CHECK_OK(keel_await_cancel(ref)); /* LeakSanitizer checks the reply is freed */
  keel_msg_t *m = NULL;
  CHECK_EQ(keel_await(ref, &m, KEEL_NOWAIT), KEEL_ENOENT);
  CHECK_EQ(keel_receive(&m, 20), KEEL_ETIMEDOUT);
  kt_send_tag(server, T_STOP);
  CHECK_EQ(kt_wait_down(mref, server, NULL, 0), KEEL_REASON_NORMAL);
}

KT_CASE(await_on_a_monitor_ref_gets_down_when_the_server_dies) {
  keel_pid_t server;
  CHECK_OK(keel_spawn(server_proc, NULL, NULL, &server));
  keel_ref_t mref;
  CHECK_OK(keel_monitor(server, &mref));
  CHECK_OK(keel_await_ref(mref));
  kt_send_tag(server, T_OTHER); /* makes it crash */
  keel_msg_t *m = NULL;
  CHECK_OK(keel_await(mref, &m, KT_LONG));
  CHECK_EQ(keel_msg_kind_of(m), KEEL_MSG_DOWN);
  CHECK_EQ(keel_msg_ref(m), mref);
  keel_pid_t who;
  keel_reason r;
  CHECK_OK(keel_msg_exit_info(m, &who, &r));
  CHECK_EQ(who, server);
  CHECK_EQ(r.kind, KEEL_REASON_ERROR);
  CHECK(strcmp(r.text, "server crashed") == 0);
  keel_msg_free(m);
  /* the DOWN went to await, not to the mailbox */
  CHECK_EQ(keel_receive(&m, 20), KEEL_ETIMEDOUT);

  /* a call-style wait: both the reply ref and the monitor ref, server dies first */
  CHECK_OK(keel_spawn(server_proc, NULL, NULL, &server));
  CHECK_OK(keel_monitor(server, &mref));
  CHECK_OK(keel_await_ref(mref));
  kt_send_tag(server, T_OTHER);
  CHECK_OK(keel_await(mref, &m, KT_LONG));
  CHECK_EQ(keel_msg_kind_of(m), KEEL_MSG_DOWN);
  keel_msg_free(m);

  /* monitor of an already dead process: the noproc DOWN can be awaited too */
  keel_ref_t r2;
  CHECK_OK(keel_monitor(server, &r2));
  CHECK_OK(keel_await_ref(r2));
  m = NULL;
  int rc = keel_await(r2, &m, 200);
  if (rc == KEEL_ETIMEDOUT) {
    /* the noproc DOWN was sent at monitor time, before the ref was armed */
    m = kt_recv_kind(KEEL_MSG_DOWN, KT_LONG);
  } else {
    CHECK_OK(rc);
  }
  CHECK_EQ(keel_msg_ref(m), r2);
  CHECK_OK(keel_msg_exit_info(m, &who, &r));
  CHECK_EQ(r.kind, KEEL_REASON_NOPROC);
  keel_msg_free(m);
}

/* ---- control signals overtake a flooded mailbox -------------------------------------------------
 */

static uint64_t g_flood;
static atomic_uint_fast64_t g_flood_sent;
static atomic_uint_fast64_t g_victim_consumed;

static void flooder_proc(void *arg) {
  keel_pid_t victim = (keel_pid_t)(uintptr_t)arg;
  for (uint64_t i = 0; i < g_flood; i++) {
    CHECK_OK(keel_send(victim, keel_msg_new(T_DATA, 8)));
    atomic_fetch_add_explicit(&g_flood_sent, 1, memory_order_relaxed);
    if (i % 4096 == 4095) keel_yield();
  }
  kt_send_tag(g_parent, T_DONE);
}

/* mode 0: sleeps; 1: waits in receive_match for a tag never sent; 2: drains
 * the flood slowly (1 ms pause every 20 messages). */
static void flooded_victim_proc(void *arg) {
  int mode = (int)(uintptr_t)arg;
  kt_send_tag(g_parent, T_READY);
  if (mode == 0) {
    keel_sleep(600000);
  } else if (mode == 1) {
    keel_msg_t *m = NULL;
    uint32_t never = T_NEVER;
    keel_receive_match(kt_match_tag_fn, &never, &m, KEEL_INFINITY);
    keel_msg_free(m);
  } else {
    for (;;) {
      keel_msg_t *m = kt_recv(KEEL_INFINITY);
      keel_msg_free(m);
      uint64_t c = atomic_fetch_add(&g_victim_consumed, 1) + 1;
      if (c % 20 == 0) keel_sleep(1);
    }
  }
  CHECK(!"the flooded victim should have been killed");
}

static void flood_then_kill(int mode, keel_reason_kind sig) {
  g_parent = keel_self();
  g_flood = kt_scale(1000000, 200000);
  atomic_store(&g_flood_sent, 0);
  atomic_store(&g_victim_consumed, 0);
  int n = keel_sched_count();
  keel_ref_t ref;
  keel_pid_t victim = kt_spawn_monitor(flooded_victim_proc, (void *)(uintptr_t)mode, 0, &ref);
  keel_msg_free(kt_recv_tag(T_READY, KT_LONG));
  kt_spawn_on(flooder_proc, (void *)(uintptr_t)victim, n > 1 ? 1 : 0);
  keel_msg_free(kt_recv_tag(T_DONE, KT_LONG));
  CHECK_EQ(atomic_load(&g_flood_sent), g_flood);
  uint64_t at_signal = atomic_load(&g_victim_consumed);
  CHECK_OK(keel_exit_signal(victim, sig, "stop now"));
  keel_reason_kind k = kt_wait_down(ref, victim, NULL, 0);
  CHECK_EQ(k, sig == KEEL_REASON_KILL ? KEEL_REASON_KILLED : sig);
  uint64_t consumed = atomic_load(&g_victim_consumed);
  uint64_t backlog = g_flood - at_signal;
  fprintf(stderr,
          "   victim had consumed %" PRIu64 " of %" PRIu64 " at the signal, %" PRIu64
          " when it died\n",
          at_signal, g_flood, consumed);
  CHECK(backlog >= g_flood / 4); /* the mailbox was really flooded when signalled */
  /* the signal overtook the backlog: the victim died long before draining it */
  CHECK(consumed - at_signal < backlog / 2);
}

KT_CASE(kill_overtakes_a_flood_to_a_sleeping_process) {
  flood_then_kill(0, KEEL_REASON_KILL);
}

KT_CASE(kill_overtakes_a_flood_to_a_process_in_selective_receive) {
  flood_then_kill(1, KEEL_REASON_KILL);
}

KT_CASE(kill_overtakes_a_flood_the_process_is_draining) {
  flood_then_kill(2, KEEL_REASON_KILL);
}

KT_CASE(error_exit_signal_overtakes_a_flood_the_process_is_draining) {
  flood_then_kill(2, KEEL_REASON_ERROR);
}

/* ---- attachments ---------------------------------------------------------------- */

static void attachment_echo_proc(void *arg) {
  (void)arg;
  keel_msg_t *m = kt_recv(KT_LONG);
  /* the attachment travelled with the message; send it back detached */
  char *blob = keel_msg_detach(m);
  CHECK(blob != NULL);
  CHECK(keel_msg_attachment(m) == NULL);
  CHECK(strcmp(keel_msg_data(m), "payload") == 0);
  keel_pid_t from = keel_msg_from(m);
  keel_msg_free(m);
  keel_msg_t *back = keel_msg_copy(1, blob, strlen(blob) + 1);
  free(blob); /* detach gave us ownership */
  CHECK_OK(keel_send(from, back));
}

KT_CASE(an_attachment_travels_with_its_message_and_is_freed_with_it) {
  keel_pid_t pid;
  CHECK_OK(keel_spawn(attachment_echo_proc, NULL, NULL, &pid));
  keel_msg_t *m = keel_msg_copy(0, "payload", 8);
  CHECK(keel_msg_attachment(m) == NULL);
  m = keel_msg_attach(m, strdup("first"));
  CHECK(m != NULL);
  m = keel_msg_attach(m, strdup("ctx=42")); /* replaces (and frees) the first */
  CHECK(m != NULL);
  CHECK(strcmp(keel_msg_attachment(m), "ctx=42") == 0);
  CHECK(strcmp(keel_msg_data(m), "payload") == 0); /* the payload is untouched */
  CHECK_OK(keel_send(pid, m));
  keel_msg_t *r = kt_recv(KT_LONG);
  CHECK(strcmp(keel_msg_data(r), "ctx=42") == 0);
  keel_msg_free(r);
  /* freed with its message: LeakSanitizer checks this one */
  keel_msg_t *lost = keel_msg_attach(keel_msg_new(0, 3), strdup("dropped"));
  CHECK(lost != NULL);
  keel_msg_free(lost);
}

KT_MAIN(KT_ENTRY(receive_takes_messages_oldest_first),
        KT_ENTRY(receive_with_zero_timeout_on_empty_mailbox_returns_etimedout_at_once),
        KT_ENTRY(receive_with_finite_timeout_waits_at_least_that_long),
        KT_ENTRY(receive_with_infinity_waits_until_a_message_comes),
        KT_ENTRY(receive_with_timeout_0_waits_as_its_default_says),
        KT_ENTRY(receive_with_timeout_returns_the_message_that_arrives_meanwhile),
        KT_ENTRY(selective_receive_takes_a_later_match_and_keeps_the_rest_in_order),
        KT_ENTRY(selective_receive_waits_past_non_matching_arrivals),
        KT_ENTRY(send_to_a_dead_process_is_a_counted_noop),
        KT_ENTRY(send_from_a_foreign_thread_keeps_order_and_has_sender_zero),
        KT_ENTRY(order_is_kept_per_sender_under_many_concurrent_senders),
        KT_ENTRY(ten_million_messages_arrive_none_lost_or_duplicated),
        KT_ENTRY(await_gets_the_reply_matched_by_its_ref_and_receive_never_sees_it),
        KT_ENTRY(a_late_reply_is_dropped_never_seen_and_counted),
        KT_ENTRY(await_cancel_frees_a_reply_already_arrived),
        KT_ENTRY(await_on_a_monitor_ref_gets_down_when_the_server_dies),
        KT_ENTRY(kill_overtakes_a_flood_to_a_sleeping_process),
        KT_ENTRY(kill_overtakes_a_flood_to_a_process_in_selective_receive),
        KT_ENTRY(kill_overtakes_a_flood_the_process_is_draining),
        KT_ENTRY(error_exit_signal_overtakes_a_flood_the_process_is_draining),
        KT_ENTRY(an_attachment_travels_with_its_message_and_is_freed_with_it))
