/* test_stress.c - the whole runtime at once on all schedulers, the
 * ThreadSanitizer target: many processes sending to each other, spawning
 * children with links and monitors, replying, killing and dying with every
 * reason concurrently, for a bounded amount of work with exact totals at the
 * end; a token ring across schedulers; concurrent spawners with globally
 * unique pids; and exit signals racing with normal exits. Counts are scaled
 * down under ThreadSanitizer to keep this file at a few seconds there
 * (KEEL_TEST_HEAVY=1 restores them).
 */
#include <stdatomic.h>

#include "rt/kt_rt.h"

enum { T_HELLO = 1, T_NUM, T_GO, T_DONE, T_TOKEN, T_PID, T_STOP };

static keel_pid_t g_parent;

/* Thousands of crashes are expected here: count their reports instead of
 * letting the default handler print a line for each. */
static atomic_uint_fast64_t g_crash_reports;

static void counting_report_handler(const keel_report *r, void *ud) {
  (void)ud;
  if (r->kind == KEEL_REPORT_CRASH) atomic_fetch_add(&g_crash_reports, 1);
}

static void quiet_reports(void) {
  keel_rt_set_report_handler(counting_report_handler, NULL);
}
static void loud_reports(void) {
  keel_rt_set_report_handler(NULL, NULL);
}

/* ---- mixed workload ------------------------------------------------------------------ */

enum { MAX_WORKERS = 256 };
static keel_pid_t g_workers[MAX_WORKERS];
static int g_nworkers;
static int g_rounds;
static atomic_uint_fast64_t g_children_spawned, g_children_down, g_hellos_received;

/* A child: adds the numbers it is sent and replies the sum on the ref it was
 * given, then exits as its mode says: 0 normal, 1 error, 2 shutdown,
 * 3 waits to be killed, 4 spawns a linked grandchild then crashes. */
typedef struct child_job {
  keel_ref_t reply_ref;
  int count;
  int mode;
} child_job;

static void grandchild_proc(void *arg) {
  (void)arg;
  keel_msg_t *m = kt_recv(KEEL_INFINITY); /* dies with its linked parent */
  keel_msg_free(m);
  CHECK(!"the grandchild should have died with its parent");
}

static void child_proc(void *arg) {
  (void)arg;
  keel_msg_t *m = kt_recv_tag(T_GO, KT_LONG);
  child_job job;
  CHECK_EQ(keel_msg_size(m), sizeof job);
  memcpy(&job, keel_msg_data(m), sizeof job);
  keel_pid_t boss = keel_msg_from(m);
  keel_msg_free(m);
  uint64_t sum = 0;
  for (int i = 0; i < job.count; i++)
    sum += kt_recv_tag_u64(T_NUM, KT_LONG);
  CHECK_OK(keel_reply(boss, job.reply_ref, keel_msg_copy(T_NUM, &sum, sizeof sum)));
  switch (job.mode) {
  case 0: return;
  case 1: keel_exit(KEEL_REASON_ERROR, "child error");
  case 2: keel_exit(KEEL_REASON_SHUTDOWN, NULL);
  case 3:
    m = kt_recv(KEEL_INFINITY);
    keel_msg_free(m);
    CHECK(!"mode 3 children are killed");
    break;
  default: {
    keel_spawn_opts o;
    keel_spawn_opts_init(&o);
    o.link = true;
    o.scheduler = KEEL_ON_SCHEDULER((keel_sched_current() + 1) % keel_sched_count());
    keel_pid_t gc;
    CHECK_OK(keel_spawn(grandchild_proc, NULL, &o, &gc));
    atomic_fetch_add(&g_children_spawned, 1);
    kt_send_u64(boss, T_PID, gc);
    keel_exit(KEEL_REASON_ERROR, "child crashed with a grandchild");
  }
  }
}

static uint64_t expected_hellos(int w) {
  /* worker i sends round r's hello to (i + r + 1) % W */
  uint64_t n = 0;
  for (int i = 0; i < g_nworkers; i++)
    for (int r = 0; r < g_rounds; r++)
      if ((i + r + 1) % g_nworkers == w) n++;
  return n;
}

static bool match_hello(const keel_msg_t *m, void *arg) {
  (void)arg;
  return keel_msg_kind_of(m) == KEEL_MSG_USER && keel_msg_tag(m) == T_HELLO;
}

static void worker_proc(void *arg) {
  int w = (int)(intptr_t)arg;
  keel_msg_free(kt_recv_tag(T_GO, KT_LONG)); /* g_workers is complete now */
  int n = keel_sched_count();
  uint64_t hellos = 0;
  for (int r = 0; r < g_rounds; r++) {
    /* 1. a hello to a peer */
    kt_send_u64(g_workers[(w + r + 1) % g_nworkers], T_HELLO, ((uint64_t)w << 32) | (uint64_t)r);

    /* 2. a child with a monitor (and a link when trapping), a call to it */
    int mode = (w + r) % 5;
    keel_spawn_opts o;
    keel_spawn_opts_init(&o);
    keel_ref_t mref = 0;
    o.monitor = true;
    o.monitor_ref = &mref;
    o.link = (mode == 1);
    o.scheduler = KEEL_ON_SCHEDULER((w + r) % n);
    if (o.link) keel_trap_exit(true);
    keel_pid_t child;
    CHECK_OK(keel_spawn(child_proc, NULL, &o, &child));
    atomic_fetch_add(&g_children_spawned, 1);
    child_job job = {keel_make_ref(), 1 + r % 7, mode};
    CHECK_OK(keel_await_ref(job.reply_ref));
    CHECK_OK(keel_send(child, keel_msg_copy(T_GO, &job, sizeof job)));
    uint64_t want = 0;
    for (int i = 0; i < job.count; i++) {
      kt_send_u64(child, T_NUM, (uint64_t)(i + r));
      want += (uint64_t)(i + r);
    }
    keel_msg_t *m = NULL;
    CHECK_OK(keel_await(job.reply_ref, &m, KT_LONG));
    CHECK_EQ(keel_msg_kind_of(m), KEEL_MSG_REPLY);
    CHECK_EQ(kt_u64(m), want);
    keel_msg_free(m);
    if (mode == 3) CHECK_OK(keel_exit_signal(child, KEEL_REASON_KILL, NULL));
    keel_pid_t gc = 0;
    keel_ref_t gref = 0;
    if (mode == 4) {
      gc = kt_recv_tag_u64(T_PID, KT_LONG);
      CHECK_OK(keel_monitor(gc, &gref)); /* may be dead already: noproc */
    }
    static const keel_reason_kind want_reason[5] = {KEEL_REASON_NORMAL, KEEL_REASON_ERROR,
                                                    KEEL_REASON_SHUTDOWN, KEEL_REASON_KILLED,
                                                    KEEL_REASON_ERROR};
    CHECK_EQ(kt_wait_down(mref, child, NULL, 0), want_reason[mode]);
    atomic_fetch_add(&g_children_down, 1);
    if (mode == 4) {
      keel_reason_kind k = kt_wait_down(gref, gc, NULL, 0);
      CHECK(k == KEEL_REASON_ERROR || k == KEEL_REASON_NOPROC);
      atomic_fetch_add(&g_children_down, 1);
    }
    if (mode == 1) {
      m = kt_recv_kind(KEEL_MSG_EXIT, KT_LONG);
      keel_pid_t who;
      keel_reason reason;
      CHECK_OK(keel_msg_exit_info(m, &who, &reason));
      CHECK_EQ(who, child);
      CHECK_EQ(reason.kind, KEEL_REASON_ERROR);
      keel_msg_free(m);
      keel_trap_exit(false);
    }

    /* 3. take the hellos that have arrived so far */
    while (keel_receive_match(match_hello, NULL, &m, KEEL_NOWAIT) == 0) {
      keel_msg_free(m);
      hellos++;
    }
  }
  /* stay alive until every hello meant for us has come */
  uint64_t want_hellos = expected_hellos(w);
  while (hellos < want_hellos) {
    keel_msg_t *m = NULL;
    CHECK_OK(keel_receive_match(match_hello, NULL, &m, KT_LONG));
    keel_msg_free(m);
    hellos++;
  }
  atomic_fetch_add(&g_hellos_received, hellos);
  CHECK_EQ(keel_mailbox_len(), 0);
}

KT_CASE(all_schedulers_send_spawn_link_monitor_and_die_concurrently) {
  quiet_reports();
  int n = keel_sched_count();
  g_nworkers = n * 8 < MAX_WORKERS ? n * 8 : MAX_WORKERS;
  g_rounds = (int)kt_scale_tsan(2000, 100);
  atomic_store(&g_children_spawned, 0);
  atomic_store(&g_children_down, 0);
  atomic_store(&g_hellos_received, 0);
  keel_rt_stats before;
  keel_rt_stats_get(&before);
  static keel_ref_t refs[MAX_WORKERS];
  for (int i = 0; i < g_nworkers; i++)
    g_workers[i] = kt_spawn_monitor(worker_proc, (void *)(intptr_t)i, i % n, &refs[i]);
  for (int i = 0; i < g_nworkers; i++)
    kt_send_tag(g_workers[i], T_GO);
  for (int i = 0; i < g_nworkers; i++)
    CHECK_EQ(kt_wait_down(refs[i], g_workers[i], NULL, 0), KEEL_REASON_NORMAL);
  uint64_t total = (uint64_t)g_nworkers * (uint64_t)g_rounds;
  CHECK_EQ(atomic_load(&g_hellos_received), total);
  CHECK_EQ(atomic_load(&g_children_spawned), atomic_load(&g_children_down));
  /* workers + children + grandchildren have all gone */
  keel_rt_stats after;
  int64_t deadline = kt_now_ms() + KT_LONG;
  for (;;) {
    keel_rt_stats_get(&after);
    if (after.procs_alive == before.procs_alive) break;
    CHECK(kt_now_ms() < deadline);
    CHECK_OK(keel_sleep(1));
  }
  uint64_t procs = (uint64_t)g_nworkers + atomic_load(&g_children_spawned);
  CHECK_EQ(after.procs_spawned - before.procs_spawned, procs);
  CHECK_EQ(after.procs_exited - before.procs_exited, procs);
  fprintf(stderr, "   %d workers x %d rounds, %" PRIu64 " processes, %" PRIu64 " steals\n",
          g_nworkers, g_rounds, procs, after.steals - before.steals);
  loud_reports();
}

/* ---- ring ------------------------------------------------------------------------------ */

static uint64_t g_hops;

static void ring_proc(void *arg) {
  keel_pid_t *next = arg;
  for (;;) {
    keel_msg_t *m = kt_recv(KT_LONG);
    uint32_t tag = keel_msg_tag(m);
    if (tag == T_STOP) {
      CHECK_OK(keel_send(*next, m)); /* pass the stop on, then leave */
      return;
    }
    CHECK_EQ(tag, T_TOKEN);
    uint64_t v = kt_u64(m);
    if (v == g_hops) {
      keel_msg_free(m);
      kt_send_tag(g_parent, T_DONE);
      continue;
    }
    v++;
    memcpy(keel_msg_data(m), &v, sizeof v);
    CHECK_OK(keel_send(*next, m)); /* forwarding keeps ownership moving */
  }
}

KT_CASE(a_token_ring_across_schedulers_counts_every_hop) {
  quiet_reports();
  enum { RING = 500 };
  g_parent = keel_self();
  g_hops = kt_scale_tsan(1000000, 20000);
  static keel_pid_t pids[RING], next[RING];
  static keel_ref_t refs[RING];
  int n = keel_sched_count();
  for (int i = 0; i < RING; i++)
    pids[i] = kt_spawn_monitor(ring_proc, &next[i], i % n, &refs[i]);
  /* next[] is filled after the spawns; the ring only reads it after a token
   * arrives, and the send below orders these writes before that */
  for (int i = 0; i < RING; i++)
    next[i] = pids[(i + 1) % RING];
  kt_send_u64(pids[0], T_TOKEN, 0);
  keel_msg_free(kt_recv_tag(T_DONE, KT_LONG));
  /* stop: the message goes round once; each process forwards it and exits,
   * the last forward goes to a dead process */
  kt_send_tag(pids[0], T_STOP);
  for (int i = 0; i < RING; i++)
    CHECK_EQ(kt_wait_down(refs[i], pids[i], NULL, 0), KEEL_REASON_NORMAL);
  loud_reports();
}

/* ---- concurrent spawners ------------------------------------------------------------------- */

enum { SPAWNERS = 16 };
static uint64_t *g_all_pids;
static int g_per_spawner;

static void leaf_proc(void *arg) {
  (void)arg;
}

static void spawner_proc(void *arg) {
  int s = (int)(intptr_t)arg;
  int n = keel_sched_count();
  for (int i = 0; i < g_per_spawner; i++) {
    keel_ref_t ref;
    keel_pid_t pid = kt_spawn_monitor(leaf_proc, NULL, (s + i) % n, &ref);
    g_all_pids[s * g_per_spawner + i] = pid;
    if (i % 16 == 15 || i == g_per_spawner - 1) {
      /* collect the DOWNs of the last batch */
      for (int k = i - (i % 16); k <= i; k++)
        keel_msg_free(kt_recv_kind(KEEL_MSG_DOWN, KT_LONG));
    }
  }
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

KT_CASE(concurrent_spawners_get_globally_unique_pids) {
  quiet_reports();
  g_per_spawner = (int)kt_scale_tsan(20000, 300);
  size_t total = (size_t)SPAWNERS * (size_t)g_per_spawner;
  g_all_pids = calloc(total, sizeof(uint64_t));
  CHECK(g_all_pids != NULL);
  int n = keel_sched_count();
  keel_ref_t refs[SPAWNERS];
  keel_pid_t pids[SPAWNERS];
  for (int i = 0; i < SPAWNERS; i++)
    pids[i] = kt_spawn_monitor(spawner_proc, (void *)(intptr_t)i, i % n, &refs[i]);
  for (int i = 0; i < SPAWNERS; i++)
    CHECK_EQ(kt_wait_down(refs[i], pids[i], NULL, 0), KEEL_REASON_NORMAL);
  qsort(g_all_pids, total, sizeof(uint64_t), cmp_u64);
  CHECK(g_all_pids[0] != 0);
  for (size_t i = 1; i < total; i++)
    CHECK(g_all_pids[i] != g_all_pids[i - 1]);
  free(g_all_pids);
  g_all_pids = NULL;
  loud_reports();
}

/* ---- exit signals racing with exits -----------------------------------------------------------
 */

static void short_lived_proc(void *arg) {
  int spins = (int)(intptr_t)arg;
  for (int i = 0; i < spins; i++)
    keel_yield();
}

KT_CASE(kills_racing_with_normal_exits_give_one_down_each) {
  quiet_reports();
  int n = keel_sched_count();
  int rounds = (int)kt_scale_tsan(10000, 500);
  int killed = 0, normal = 0;
  for (int i = 0; i < rounds; i++) {
    keel_ref_t ref;
    keel_pid_t pid = kt_spawn_monitor(short_lived_proc, (void *)(intptr_t)(i % 4), i % n, &ref);
    int rc = keel_exit_signal(pid, (i & 1) ? KEEL_REASON_KILL : KEEL_REASON_ERROR, "race");
    CHECK(rc == 0 || rc == KEEL_ENOPROC);
    keel_reason_kind k = kt_wait_down(ref, pid, NULL, 0);
    if (k == KEEL_REASON_NORMAL) {
      normal++;
    } else {
      CHECK_EQ(rc, 0);
      CHECK_EQ(k, (i & 1) ? KEEL_REASON_KILLED : KEEL_REASON_ERROR);
      killed++;
    }
  }
  fprintf(stderr, "   %d killed, %d exited first\n", killed, normal);
  keel_msg_t *m = NULL;
  CHECK_EQ(keel_receive(&m, 20), KEEL_ETIMEDOUT); /* exactly one DOWN each */
  loud_reports();
}

KT_MAIN(KT_ENTRY(all_schedulers_send_spawn_link_monitor_and_die_concurrently),
        KT_ENTRY(a_token_ring_across_schedulers_counts_every_hop),
        KT_ENTRY(concurrent_spawners_get_globally_unique_pids),
        KT_ENTRY(kills_racing_with_normal_exits_give_one_down_each))
