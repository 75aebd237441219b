/* bench_otp.c - the behaviours' benchmarks, the same workloads as
 * bench/erlang/keel_bench.erl (call_rtt, statem_call_rtt, restart_latency,
 * supervisor_start)
 * so that `make bench-compare` can put keel and BEAM side by side.
 *
 *   call_rtt          ns        500,000 sequential gen_server calls to a server
 *                               that replies at once
 *   statem_call_rtt   ns        500,000 sequential calls to a gen_statem pushbutton:
 *                               each push changes state (off <-> on) and replies
 *   restart_latency   ns        from a worker's crash to its replacement answering
 *                               a call, one_for_one; 1,000 crashes in batches of 50,
 *                               each batch under a fresh supervisor; the median
 *   supervisor_start  ns/child  start a supervisor with 1,000 gen_server workers;
 *                               7 starts in one runtime (as on the BEAM), the median
 *
 * restart_latency follows keel_bench.erl exactly: the worker is registered
 * under a name; a sample starts just before the crash cast and ends when the
 * name is held by a new process that answers a call (polling the name, and
 * yielding between polls). The supervisor allows 1,000,000 restarts per
 * second, so it never gives up; batches keep its restart history short, as
 * on the Erlang side. Crash reports are switched off meanwhile (the BEAM side
 * turns its logger off for the same reason).
 *
 * Each workload runs several times, each time in a fresh runtime inside a
 * fresh child process, and prints the median as
 * {"bench": NAME, "unit": UNIT, "value": N}.
 * Usage: bench_otp [--runs N] [workload...]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench_driver.h"

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static void no_reports(const keel_report *r, void *ud) {
  (void)r;
  (void)ud;
}

/* ---- the worker: replies at once, crashes on request ------------------------------ */

enum { PING = 1, CRASH = 2 };

static int w_init(void *arg, void **state) {
  (void)arg;
  *state = NULL;
  return 0;
}

static int w_call(void *st, keel_gs_from from, keel_msg_t **req, keel_msg_t **reply) {
  (void)st;
  (void)from;
  (void)req;
  *reply = NULL; /* an empty reply */
  return KEEL_GS_REPLY;
}

static int w_cast(void *st, keel_msg_t **msg) {
  (void)st;
  if (keel_msg_tag(*msg) == CRASH) return keel_gs_stopping(KEEL_REASON_ERROR, "crashed");
  return KEEL_GS_OK;
}

static const keel_gen_server worker = {
    .init = w_init, .handle_call = w_call, .handle_cast = w_cast};

/* Child start functions: a linked worker, optionally registered. */
static int start_worker(void *arg, const void *args, size_t args_len, keel_pid_t *pid) {
  (void)args;
  (void)args_len;
  keel_gs_opts o;
  keel_gs_opts_init(&o);
  o.link = true;
  o.name = arg; /* NULL: unnamed */
  return keel_gs_start(&worker, NULL, &o, pid, NULL);
}

static int ping(keel_pid_t server) {
  keel_msg_t *reply = NULL;
  int rc = keel_gs_call(server, keel_msg_new(PING, 0), &reply, KEEL_GS_DEFAULT_TIMEOUT, NULL);
  keel_msg_free(reply);
  return rc;
}

/* ---- call_rtt --------------------------------------------------------------------- */

#define CALL_N 500000L

static void call_rtt_main(void *arg) {
  (void)arg;
  keel_gs_opts o;
  keel_gs_opts_init(&o);
  o.link = true;
  keel_pid_t server;
  int rc = keel_gs_start(&worker, NULL, &o, &server, NULL);
  if (rc) bench_fail("call_rtt start", rc);
  double t0 = now_ns();
  for (long i = 0; i < CALL_N; i++) {
    rc = ping(server);
    if (rc) bench_fail("call_rtt call", rc);
  }
  double t1 = now_ns();
  keel_gs_stop(server, KEEL_REASON_NORMAL, NULL, KEEL_INFINITY);
  bench_result = (t1 - t0) / CALL_N;
}

/* ---- statem_call_rtt ---------------------------------------------------------------- */

enum { PB_OFF, PB_ON };

static int pb_init(keel_sm_t *sm, void *arg, int *state, void **data) {
  (void)sm;
  (void)arg;
  *state = PB_OFF;
  *data = NULL;
  return 0;
}

static int pb_push(keel_sm_t *sm, int state, keel_sm_event *ev, void *data) {
  (void)data;
  if (ev->type != KEEL_SM_CALL) return KEEL_SM_OK;
  keel_sm_next_state(sm, state == PB_OFF ? PB_ON : PB_OFF);
  return keel_gs_reply(ev->from, NULL); /* an empty reply */
}

static const keel_sm_state pb_states[] = {[PB_OFF] = {"off", pb_push}, [PB_ON] = {"on", pb_push}};
static const keel_gen_statem pushbutton = {.init = pb_init, KEEL_SM_STATES(pb_states)};

static void statem_call_rtt_main(void *arg) {
  (void)arg;
  keel_gs_opts o = {.link = true};
  keel_pid_t machine;
  int rc = keel_sm_start(&pushbutton, NULL, &o, &machine, NULL);
  if (rc) bench_fail("statem_call_rtt start", rc);
  double t0 = now_ns();
  for (long i = 0; i < CALL_N; i++) {
    rc = ping(machine);
    if (rc) bench_fail("statem_call_rtt call", rc);
  }
  double t1 = now_ns();
  keel_gs_stop(machine, KEEL_REASON_NORMAL, NULL, KEEL_INFINITY);
  bench_result = (t1 - t0) / CALL_N;
}

/* ---- restart_latency ---------------------------------------------------------------- */

#define RESTART_N     1000
#define RESTART_BATCH 50
#define WORKER_NAME   "keel_bench_worker"

static double restart_once(void) {
  keel_pid_t old = keel_whereis(WORKER_NAME);
  if (!old) bench_fail("restart_latency: no worker", KEEL_ENOPROC);
  double t0 = now_ns();
  keel_gs_cast(old, keel_msg_new(CRASH, 0));
  for (;;) {
    keel_pid_t now = keel_whereis(WORKER_NAME);
    if (now && now != old && ping(now) == 0) break;
    keel_yield();
  }
  return now_ns() - t0;
}

static void restart_main(void *arg) {
  (void)arg;
  keel_rt_set_report_handler(no_reports, NULL);
  static double samples[RESTART_N];
  int k = 0;
  keel_sup_child_spec child = {.id = "worker",
                               .start = start_worker,
                               .arg = WORKER_NAME,
                               .restart = KEEL_SUP_PERMANENT,
                               .shutdown = 5000,
                               .type = KEEL_SUP_WORKER};
  keel_sup_spec spec = {.strategy = KEEL_SUP_ONE_FOR_ONE,
                        .intensity = 1000000,
                        .period_ms = 1000,
                        .children = &child,
                        .nchildren = 1};
  for (int b = 0; b < RESTART_N / RESTART_BATCH; b++) {
    keel_pid_t sup;
    int rc = keel_sup_start(&spec, NULL, &sup, NULL);
    if (rc) bench_fail("restart_latency: supervisor start", rc);
    for (int i = 0; i < RESTART_BATCH; i++)
      samples[k++] = restart_once();
    keel_gs_stop(sup, KEEL_REASON_SHUTDOWN, NULL, KEEL_INFINITY);
  }
  qsort(samples, (size_t)k, sizeof samples[0], bench_cmp_double);
  if (getenv("KEEL_BENCH_STATS"))
    fprintf(stderr, "  restart_latency: %d samples, min %.0f p50 %.0f p90 %.0f p99 %.0f max %.0f\n",
            k, samples[0], samples[k / 2], samples[k * 9 / 10], samples[k * 99 / 100],
            samples[k - 1]);
  bench_result = (samples[k / 2 - 1] + samples[k / 2]) / 2; /* k is even */
}

/* ---- supervisor_start ------------------------------------------------------------------ */

#define SUP_CHILDREN 1000
#define SUP_REPS     7 /* keel_bench.erl's repetitions */

static void sup_start_main(void *arg) {
  (void)arg;
  static keel_sup_child_spec children[SUP_CHILDREN];
  static char ids[SUP_CHILDREN][16];
  for (int i = 0; i < SUP_CHILDREN; i++) {
    snprintf(ids[i], sizeof ids[i], "%d", i + 1);
    children[i] = (keel_sup_child_spec){.id = ids[i],
                                        .start = start_worker,
                                        .arg = NULL,
                                        .restart = KEEL_SUP_PERMANENT,
                                        .shutdown = 5000,
                                        .type = KEEL_SUP_WORKER};
  }
  keel_sup_spec spec = {.strategy = KEEL_SUP_ONE_FOR_ONE,
                        .intensity = 1,
                        .period_ms = 5000,
                        .children = children,
                        .nchildren = SUP_CHILDREN};
  /* SUP_REPS starts in this runtime, as keel_bench.erl's 7 repetitions in
   * one VM: the first takes fresh memory (cold), the later ones reuse what
   * the stopped children left (warm). The figure is the median of all, the
   * BEAM's rule; the cold one also goes to stderr. */
  double samples[SUP_REPS];
  for (int r = 0; r < SUP_REPS; r++) {
    keel_pid_t sup;
    double t0 = now_ns();
    int rc = keel_sup_start(&spec, NULL, &sup, NULL);
    double t1 = now_ns();
    if (rc) bench_fail("supervisor_start", rc);
    keel_sup_child_counts cc;
    rc = keel_sup_count_children(sup, &cc);
    if (rc || cc.workers != SUP_CHILDREN)
      bench_fail("supervisor_start: count_children", rc ? rc : KEEL_ERANGE);
    keel_gs_stop(sup, KEEL_REASON_SHUTDOWN, NULL, KEEL_INFINITY);
    samples[r] = (t1 - t0) / SUP_CHILDREN;
  }
  bench_result = bench_warm_median("supervisor_start", "ns/child", samples, SUP_REPS);
}

/* ---- driver ----------------------------------------------------------------------------- */

static const bench_workload workloads[] = {
    {"call_rtt", "ns", call_rtt_main, 9},
    {"statem_call_rtt", "ns", statem_call_rtt_main, 9},
    {"restart_latency", "ns", restart_main, 1},
    {"supervisor_start", "ns/child", sup_start_main, 3},
};

int main(int argc, char **argv) {
  return bench_main("bench_otp", workloads, sizeof workloads / sizeof workloads[0], argc, argv,
                    NULL);
}
