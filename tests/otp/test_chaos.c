/* test_chaos.c - a supervision tree under load while a killer shoots workers.
 *
 * The tree: top (one_for_one) over two pools, pool_a (one_for_one) and
 * pool_b (rest_for_one), each with three named gen_server workers (the test
 * worker of kt_otp.h, whose PING answers its index). Client processes call
 * random workers by name in a loop; a killer process kills random workers
 * (kill, error exit signal, or a crash cast) and now and then a whole pool.
 * After a few seconds everything stops and the test checks that:
 *   - every call ended in a reply or an error: sent == ok + errors, and each
 *     reply came from the worker that was called;
 *   - the tree is whole again: every child of every supervisor runs, and
 *     count_children agrees with which_children;
 *   - stopping the top stops everything.
 * Timing never decides the verdict: the duration only sets how much chaos.
 */
#include "otp/kt_otp.h"

enum { NPOOLS = 2, PER_POOL = 3, NWORKERS = NPOOLS * PER_POOL, NCLIENTS = 8 };
enum { T_CLIENT_DONE = 1, T_KILLER_DONE = 2 };

static atomic_int stop_flag;

typedef struct client_stats {
  uint64_t sent, ok, enoproc, edown, etimedout, other;
} client_stats;

typedef struct client_arg {
  keel_pid_t test;
  uint64_t seed;
  client_stats st;
} client_arg;

static uint64_t rnd(uint64_t *s) { /* xorshift64 */
  uint64_t x = *s;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return *s = x;
}

static char names[NWORKERS][32];
static char ids[NWORKERS][16];

static void client(void *arg) {
  client_arg *ca = arg;
  uint64_t seed = ca->seed;
  while (!atomic_load_explicit(&stop_flag, memory_order_relaxed)) {
    int w = (int)(rnd(&seed) % NWORKERS);
    keel_msg_t *reply = NULL;
    keel_gs_exit why;
    ca->st.sent++;
    int rc = keel_gs_call_name(names[w], kt_msg_u64(KW_PING, 0), &reply, 5000, &why);
    switch (rc) {
    case 0:
      ca->st.ok++;
      CHECK_EQ(kt_u64(reply), (uint64_t)w); /* the reply is from the worker called */
      keel_msg_free(reply);
      break;
    case KEEL_ENOPROC: ca->st.enoproc++; break;
    case KEEL_EDOWN: ca->st.edown++; break;
    case KEEL_ETIMEDOUT: ca->st.etimedout++; break;
    default:
      fprintf(stderr, "client: unexpected %s\n", keel_err_name(rc));
      ca->st.other++;
      break;
    }
    CHECK(rc == 0 || reply == NULL);
    /* A call by a name nobody holds fails at once, without entering the
     * runtime: yield, or the clients spin on both schedulers and the
     * supervisors that would restart the workers never run. */
    if (rc != 0) keel_yield();
  }
  kt_send_u64(ca->test, T_CLIENT_DONE, 0);
}

typedef struct killer_arg {
  keel_pid_t test, top;
  uint64_t kills, pool_kills;
} killer_arg;

static void killer(void *arg) {
  killer_arg *ka = arg;
  uint64_t seed = 0x9e3779b97f4a7c15ull;
  while (!atomic_load_explicit(&stop_flag, memory_order_relaxed)) {
    uint64_t r = rnd(&seed);
    if (r % 25 == 0) { /* now and then a whole pool */
      keel_pid_t pool = kt_child_pid(ka->top, (r / 25) % 2 ? "pool_b" : "pool_a");
      if (pool && keel_exit_signal(pool, KEEL_REASON_KILL, NULL) == 0) ka->pool_kills++;
    } else {
      int w = (int)((r >> 8) % NWORKERS);
      keel_pid_t pid = keel_whereis(names[w]);
      if (pid) {
        switch ((r >> 16) % 3) {
        case 0: keel_exit_signal(pid, KEEL_REASON_KILL, NULL); break;
        case 1: keel_exit_signal(pid, KEEL_REASON_ERROR, "chaos"); break;
        default: keel_gs_cast(pid, kt_msg_u64(KW_CRASH, r)); break;
        }
        ka->kills++;
      }
    }
    keel_sleep(1 + (int64_t)((r >> 24) % 3));
  }
  kt_send_u64(ka->test, T_KILLER_DONE, 0);
}

/* Every child of sup runs, and count_children agrees. */
static void check_whole(keel_pid_t sup, size_t nchildren, size_t nsups) {
  keel_sup_child_info info[8];
  size_t n = 0;
  KT_WAIT_UNTIL(({
    CHECK_OK(keel_sup_which_children(sup, info, 8, &n));
    bool all = n == nchildren;
    for (size_t i = 0; i < n && i < 8; i++)
      all = all && info[i].pid != 0;
    all;
  }));
  for (size_t i = 0; i < n; i++)
    CHECK(keel_is_alive(info[i].pid));
  keel_sup_child_counts cc;
  CHECK_OK(keel_sup_count_children(sup, &cc));
  CHECK_EQ(cc.specs, nchildren);
  CHECK_EQ(cc.active, nchildren);
  CHECK_EQ(cc.supervisors, nsups);
  CHECK_EQ(cc.workers, nchildren - nsups);
}

KT_CASE(killing_random_workers_under_load_loses_no_call_and_leaves_the_tree_whole) {
  kt_quiet();
  kt_log_reset();
  /* 3 s normally; sanitizers slow everything down, and the TSan run must stay
   * within a few seconds: 1 s there */
  int64_t duration_ms = (int64_t)kt_scale(3000, 1000);

  kt_worker_cfg cfg[NWORKERS];
  keel_sup_child_spec wspec[NWORKERS];
  for (int i = 0; i < NWORKERS; i++) {
    snprintf(names[i], sizeof names[i], "chaos.w%d", i);
    snprintf(ids[i], sizeof ids[i], "w%d", i);
    cfg[i] = (kt_worker_cfg){.id = ids[i], .name = names[i], .value = (uint64_t)i};
    wspec[i] = kt_worker_spec(&cfg[i]);
  }
  keel_sup_spec pool_a = kt_sup_spec(KEEL_SUP_ONE_FOR_ONE, &wspec[0], PER_POOL);
  keel_sup_spec pool_b = kt_sup_spec(KEEL_SUP_REST_FOR_ONE, &wspec[PER_POOL], PER_POOL);
  pool_a.intensity = pool_b.intensity = 1000000;
  pool_a.period_ms = pool_b.period_ms = 1000;
  keel_sup_child_spec pools[NPOOLS] = {kt_sup_child_spec("pool_a", &pool_a),
                                       kt_sup_child_spec("pool_b", &pool_b)};
  keel_sup_spec top_spec = kt_sup_spec(KEEL_SUP_ONE_FOR_ONE, pools, NPOOLS);
  top_spec.intensity = 1000000;
  top_spec.period_ms = 1000;
  keel_sup_opts so = {"chaos.top", false};
  keel_pid_t top = 0;
  CHECK_OK(keel_sup_start(&top_spec, &so, &top, NULL));
  keel_ref_t top_ref;
  CHECK_OK(keel_monitor(top, &top_ref));

  atomic_store(&stop_flag, 0);
  client_arg ca[NCLIENTS];
  for (int i = 0; i < NCLIENTS; i++) {
    ca[i] = (client_arg){.test = keel_self(), .seed = 0x1234567ull * (uint64_t)(i + 1)};
    kt_spawn_on(client, &ca[i], i % 2);
  }
  killer_arg ka = {.test = keel_self(), .top = top};
  kt_spawn_on(killer, &ka, -1);

  keel_sleep(duration_ms);
  atomic_store(&stop_flag, 1);
  for (int i = 0; i < NCLIENTS; i++)
    (void)kt_recv_tag_u64(T_CLIENT_DONE, KT_LONG);
  (void)kt_recv_tag_u64(T_KILLER_DONE, KT_LONG);

  client_stats sum = {0};
  for (int i = 0; i < NCLIENTS; i++) {
    sum.sent += ca[i].st.sent;
    sum.ok += ca[i].st.ok;
    sum.enoproc += ca[i].st.enoproc;
    sum.edown += ca[i].st.edown;
    sum.etimedout += ca[i].st.etimedout;
    sum.other += ca[i].st.other;
  }
  uint64_t errors = sum.enoproc + sum.edown + sum.etimedout + sum.other;
  fprintf(stderr,
          "chaos: %lld ms, %llu calls: %llu ok, %llu enoproc, %llu edown, %llu etimedout, "
          "%llu other; %llu worker kills, %llu pool kills\n",
          (long long)duration_ms, (unsigned long long)sum.sent, (unsigned long long)sum.ok,
          (unsigned long long)sum.enoproc, (unsigned long long)sum.edown,
          (unsigned long long)sum.etimedout, (unsigned long long)sum.other,
          (unsigned long long)ka.kills, (unsigned long long)ka.pool_kills);
  CHECK_EQ(sum.sent, sum.ok + errors);
  CHECK_EQ(sum.other, 0);
  CHECK(sum.ok > 0);
  CHECK(ka.kills > 0);
  CHECK(keel_is_alive(top)); /* the intensity was never reached */

  /* the tree is whole */
  check_whole(top, NPOOLS, NPOOLS);
  unsigned restarts = 0;
  for (int p = 0; p < NPOOLS; p++) {
    keel_pid_t pool = kt_child_pid(top, p ? "pool_b" : "pool_a");
    CHECK(pool != 0);
    check_whole(pool, PER_POOL, 0);
    keel_sup_child_info info[PER_POOL];
    size_t n = 0;
    CHECK_OK(keel_sup_which_children(pool, info, PER_POOL, &n));
    for (size_t i = 0; i < n; i++) {
      restarts += info[i].restarts;
      int w = p * PER_POOL + (int)i;
      CHECK(strcmp(info[i].id, ids[w]) == 0);
      CHECK_EQ(keel_whereis(names[w]), info[i].pid);
      CHECK_EQ(kt_call_u64(info[i].pid, KW_PING, 0), (uint64_t)w);
    }
  }
  fprintf(stderr, "chaos: %u worker restarts in the current pools\n", restarts);

  /* stopping the top stops everything */
  keel_pid_t wpids[NWORKERS];
  for (int w = 0; w < NWORKERS; w++)
    wpids[w] = keel_whereis(names[w]);
  CHECK_OK(keel_demonitor(top_ref));
  kt_stop(top);
  for (int w = 0; w < NWORKERS; w++) {
    CHECK(!keel_is_alive(wpids[w]));
    CHECK_EQ(keel_whereis(names[w]), 0);
  }
  CHECK_EQ(keel_whereis("chaos.top"), 0);
  kt_log_reset();
}

KT_MAIN(KT_ENTRY(killing_random_workers_under_load_loses_no_call_and_leaves_the_tree_whole))
