/* test_gen_server.c - the gen_server behaviour (include/keel/gen_server.h).
 *
 * One test server (ts_*) with a request per behaviour under test: echo,
 * sleep, log-and-count, crash, stop during a call, stop with a reply, and a
 * deferred reply from a worker process. Its terminate writes the reason, the
 * state pointer and what was handled into a probe owned by the test, so a
 * case can check what terminate saw after the server is gone.
 */
#include "otp/kt_otp.h"

enum {
  T_ECHO = 10,
  T_SLEEP,         /* call: sleep payload ms, then reply with the payload */
  T_LOG,           /* cast or call: append payload to the state's log */
  T_GET,           /* call: reply with the log (n u64) */
  T_CRASH,         /* cast or call: return KEEL_EIO */
  T_STOP_IN_CALL,  /* call: stop with reason error "died during call", no reply */
  T_STOP_REPLY,    /* call: reply with the payload and stop normally */
  T_DEFER,         /* call: a worker process replies with payload+1 */
  T_DEFER_TWICE,   /* call: a worker replies twice */
  T_COUNTS,        /* call: infos + 100 * exits + 10000 * downs */
  T_EXIT_IN_CALL,  /* call: keel_exit(error, "exit in a callback") */
  T_PLAIN = 30,    /* a plain message for handle_info */
};

enum { INIT_OK, INIT_FAIL, INIT_STOP, INIT_SLEEP, INIT_EXIT };

typedef struct ts_probe {
  atomic_int terminated;
  keel_reason_kind kind;
  char text[256];
  void *state;
  size_t handled;
  size_t infos, downs, exits;
} ts_probe;

typedef struct ts_init_arg {
  ts_probe *probe;
  int mode;
  int64_t sleep_ms;
} ts_init_arg;

#define TS_LOG_MAX 4096
typedef struct ts_state {
  ts_probe *probe;
  size_t n;
  uint64_t log[TS_LOG_MAX];
  size_t infos, downs, exits;
} ts_state;

static int ts_init(void *arg, void **state) {
  ts_init_arg *ia = arg;
  switch (ia->mode) {
  case INIT_FAIL:
    return KEEL_EIO;
  case INIT_STOP: return keel_gs_stopping(KEEL_REASON_ERROR, "bad config %d", 42);
  case INIT_SLEEP: keel_sleep(ia->sleep_ms); break;
  case INIT_EXIT:
    keel_exitf("init crashed");
  default:
    break;
  }
  ts_state *st = calloc(1, sizeof *st);
  if (!st) return KEEL_ENOMEM;
  keel_on_exit(free, st); /* freed however the server ends, a kill included */
  st->probe = ia->probe;
  *state = st;
  return 0;
}

typedef struct defer_job {
  keel_gs_from from;
  uint64_t v;
  int times;
} defer_job;

static void defer_worker(void *arg) {
  defer_job job = *(defer_job *)arg;
  free(arg);
  keel_sleep(5);
  for (int i = 0; i < job.times; i++)
    CHECK_OK(keel_gs_reply(job.from, kt_msg_u64(T_DEFER, job.v + 1 + (uint64_t)i)));
}

static int ts_call(void *s, keel_gs_from from, keel_msg_t **req, keel_msg_t **reply) {
  ts_state *st = s;
  keel_msg_t *m = *req;
  uint64_t v = keel_msg_size(m) == sizeof v ? kt_u64(m) : 0;
  switch (keel_msg_tag(m)) {
  case T_ECHO:
    *reply = m; /* take the request and send it back as it is */
    *req = NULL;
    return KEEL_GS_REPLY;
  case T_SLEEP:
    keel_sleep((int64_t)v);
    *reply = kt_msg_u64(T_SLEEP, v);
    return KEEL_GS_REPLY;
  case T_LOG:
    if (st->n < TS_LOG_MAX) st->log[st->n++] = v;
    *reply = kt_msg_u64(T_LOG, v);
    return KEEL_GS_REPLY;
  case T_GET:
    *reply = keel_msg_copy(T_GET, st->log, st->n * sizeof st->log[0]);
    return KEEL_GS_REPLY;
  case T_COUNTS:
    *reply = kt_msg_u64(T_COUNTS, st->infos + 100 * st->exits + 10000 * st->downs);
    return KEEL_GS_REPLY;
  case T_CRASH:
    return KEEL_EIO;
  case T_EXIT_IN_CALL:
    keel_exit(KEEL_REASON_ERROR, "exit in a callback");
  case T_STOP_IN_CALL: return keel_gs_stopping(KEEL_REASON_ERROR, "died during call");
  case T_STOP_REPLY: *reply = kt_msg_u64(T_STOP_REPLY, v); return KEEL_GS_STOP;
  case T_DEFER:
  case T_DEFER_TWICE: {
    defer_job *job = malloc(sizeof *job);
    CHECK(job != NULL);
    job->from = from;
    job->v = v;
    job->times = keel_msg_tag(m) == T_DEFER ? 1 : 2;
    CHECK_OK(keel_spawn(defer_worker, job, NULL, NULL));
    return KEEL_GS_NOREPLY;
  }
  default:
    return KEEL_EINVAL;
  }
}

static int ts_cast(void *s, keel_msg_t **msg) {
  ts_state *st = s;
  uint64_t v = keel_msg_size(*msg) == sizeof v ? kt_u64(*msg) : 0;
  switch (keel_msg_tag(*msg)) {
  case T_LOG:
    if (st->n < TS_LOG_MAX) st->log[st->n++] = v;
    if (v % 7 == 0) keel_yield(); /* let the stop request arrive meanwhile */
    return KEEL_GS_OK;
  case T_CRASH:
    return KEEL_EIO;
  default:
    return KEEL_EINVAL;
  }
}

static int ts_info(void *s, keel_msg_t **msg) {
  ts_state *st = s;
  switch (keel_msg_kind_of(*msg)) {
  case KEEL_MSG_DOWN:
    st->downs++;
    break;
  case KEEL_MSG_EXIT:
    st->exits++;
    break;
  default:
    st->infos++;
    if (st->n < TS_LOG_MAX) st->log[st->n++] = 1000 + keel_msg_tag(*msg);
    break;
  }
  return KEEL_GS_OK;
}

static void ts_terminate(keel_reason reason, void *s) {
  ts_state *st = s;
  ts_probe *p = st->probe;
  if (!p) return;
  p->kind = reason.kind;
  snprintf(p->text, sizeof p->text, "%s", reason.text);
  p->state = st;
  p->handled = st->n;
  p->infos = st->infos;
  p->downs = st->downs;
  p->exits = st->exits;
  atomic_fetch_add(&p->terminated, 1);
}

static const keel_gen_server ts_beh = {
    .init = ts_init,
    .handle_call = ts_call,
    .handle_cast = ts_cast,
    .handle_info = ts_info,
    .terminate = ts_terminate,
};

static keel_pid_t ts_start(ts_probe *probe, const char *name) {
  ts_init_arg ia = {probe, INIT_OK, 0};
  keel_gs_opts o;
  keel_gs_opts_init(&o);
  o.name = name;
  keel_pid_t pid = 0;
  CHECK_OK(keel_gs_start(&ts_beh, &ia, &o, &pid, NULL));
  CHECK(pid != 0);
  return pid;
}

static void ts_stop(keel_pid_t pid) {
  CHECK_OK(keel_gs_stop(pid, KEEL_REASON_NORMAL, NULL, KT_LONG));
  CHECK(!keel_is_alive(pid));
}

static uint64_t alive_now(void) {
  keel_rt_stats s;
  keel_rt_stats_get(&s);
  return s.procs_alive;
}

/* ---- start ------------------------------------------------------------------------------ */

KT_CASE(init_timeout_returns_etimedout_and_leaves_nothing) {
  kt_quiet();
  uint64_t before = alive_now();
  ts_init_arg ia = {NULL, INIT_SLEEP, 10000};
  keel_gs_opts o;
  keel_gs_opts_init(&o);
  o.name = "slow_init";
  o.init_timeout = 50;
  keel_pid_t pid = 1;
  keel_gs_exit why;
  CHECK_EQ(keel_gs_start(&ts_beh, &ia, &o, &pid, &why), KEEL_ETIMEDOUT);
  CHECK_EQ(pid, 0);
  CHECK_EQ(keel_whereis("slow_init"), 0);
  CHECK_EQ(alive_now(), before); /* the server was killed before start returned */

  /* The same with link: the starter is not taken down by the kill. */
  o.link = true;
  CHECK_EQ(keel_gs_start(&ts_beh, &ia, &o, &pid, NULL), KEEL_ETIMEDOUT);
  CHECK_EQ(keel_whereis("slow_init"), 0);
  CHECK_EQ(alive_now(), before);

  /* The name is free for a server whose init is fast enough. */
  ia.sleep_ms = 1;
  o.link = false;
  o.init_timeout = KT_LONG;
  CHECK_OK(keel_gs_start(&ts_beh, &ia, &o, &pid, NULL));
  CHECK_EQ(keel_whereis("slow_init"), pid);
  ts_stop(pid);
  CHECK_EQ(keel_mailbox_len(), 0);
}

KT_CASE(init_failure_leaves_no_name_behind) {
  kt_quiet();
  uint64_t before = alive_now();
  keel_gs_opts o;
  keel_gs_opts_init(&o);
  o.name = "picky";
  keel_gs_exit why;
  keel_pid_t pid = 0;

  ts_init_arg fail = {NULL, INIT_FAIL, 0};
  CHECK_EQ(keel_gs_start(&ts_beh, &fail, &o, &pid, &why), KEEL_EIO);
  CHECK_EQ(keel_whereis("picky"), 0);
  CHECK_EQ(alive_now(), before);

  ts_init_arg stop = {NULL, INIT_STOP, 0};
  memset(&why, 0, sizeof why);
  CHECK_EQ(keel_gs_start(&ts_beh, &stop, &o, &pid, &why), KEEL_EDOWN);
  CHECK_EQ(why.kind, KEEL_REASON_ERROR);
  CHECK(strcmp(why.text, "bad config 42") == 0);
  CHECK_EQ(keel_whereis("picky"), 0);
  CHECK_EQ(alive_now(), before);

  ts_init_arg crash = {NULL, INIT_EXIT, 0};
  memset(&why, 0, sizeof why);
  o.link = true; /* a linked starter learns it from the result, it is not killed */
  CHECK_EQ(keel_gs_start(&ts_beh, &crash, &o, &pid, &why), KEEL_EDOWN);
  CHECK_EQ(why.kind, KEEL_REASON_ERROR);
  CHECK(strstr(why.text, "init crashed") != NULL);
  CHECK_EQ(keel_whereis("picky"), 0);
  CHECK_EQ(alive_now(), before);

  /* and the name can be taken at once */
  o.link = false;
  ts_probe probe = {0};
  ts_init_arg ok = {&probe, INIT_OK, 0};
  CHECK_OK(keel_gs_start(&ts_beh, &ok, &o, &pid, NULL));
  CHECK_EQ(keel_whereis("picky"), pid);
  ts_stop(pid);
  CHECK_EQ(keel_whereis("picky"), 0);
}

KT_CASE(start_with_a_taken_name_is_eexist) {
  kt_quiet();
  ts_probe probe = {0};
  keel_pid_t a = ts_start(&probe, "taken");
  uint64_t before = alive_now();
  ts_init_arg ia = {NULL, INIT_OK, 0};
  keel_gs_opts o;
  keel_gs_opts_init(&o);
  o.name = "taken";
  keel_pid_t b = 0;
  CHECK_EQ(keel_gs_start(&ts_beh, &ia, &o, &b, NULL), KEEL_EEXIST);
  CHECK_EQ(b, 0);
  CHECK_EQ(keel_whereis("taken"), a);
  CHECK_EQ(alive_now(), before);
  ts_stop(a);
}

/* ---- calls ------------------------------------------------------------------------------ */

KT_CASE(call_timeout_drops_the_late_reply) {
  kt_quiet();
  ts_probe probe = {0};
  keel_pid_t s = ts_start(&probe, NULL);
  keel_rt_stats st0;
  keel_rt_stats_get(&st0);

  keel_msg_t *reply = (keel_msg_t *)1;
  CHECK_EQ(keel_gs_call(s, kt_msg_u64(T_SLEEP, 200), &reply, 20, NULL), KEEL_ETIMEDOUT);
  CHECK(reply == NULL);
  /* The server answers this one after the late reply (same sender, same
   * receiver: in order), so when it returns the late reply has come and gone. */
  CHECK_EQ(kt_call_u64(s, T_LOG, 5), 5);
  KT_WAIT_UNTIL(({
    keel_rt_stats st1;
    keel_rt_stats_get(&st1);
    st1.replies_dropped > st0.replies_dropped;
  }));
  keel_msg_t *m = NULL;
  CHECK_EQ(keel_receive(&m, 50), KEEL_ETIMEDOUT); /* no receive ever sees it */
  CHECK_EQ(keel_mailbox_len(), 0);
  ts_stop(s);
}

KT_CASE(call_to_a_dead_server_is_enoproc) {
  kt_quiet();
  ts_probe probe = {0};
  keel_pid_t s = ts_start(&probe, "soon_dead");
  ts_stop(s);
  keel_msg_t *reply = NULL;
  keel_gs_exit why;
  CHECK_EQ(keel_gs_call(s, kt_msg_u64(T_ECHO, 1), &reply, KT_LONG, &why), KEEL_ENOPROC);
  CHECK(reply == NULL);
  CHECK_EQ(keel_gs_call_name("soon_dead", kt_msg_u64(T_ECHO, 1), &reply, KT_LONG, &why),
           KEEL_ENOPROC);
  CHECK_EQ(keel_gs_call_name("never_was", kt_msg_u64(T_ECHO, 1), &reply, KT_LONG, &why),
           KEEL_ENOPROC);
  CHECK_EQ(keel_gs_cast_name("never_was", kt_msg_u64(T_LOG, 1)), KEEL_ENOPROC);
  CHECK_OK(keel_gs_cast(s, kt_msg_u64(T_LOG, 1))); /* dropped, as any message */
  CHECK_EQ(keel_gs_call(0, kt_msg_u64(T_ECHO, 1), &reply, KT_LONG, &why), KEEL_EINVAL);
  CHECK_EQ(keel_mailbox_len(), 0);
}

static keel_pid_t sleeping_server;
static void killer_after(void *arg) {
  (void)arg;
  keel_sleep(20);
  CHECK_OK(keel_exit_signal(sleeping_server, KEEL_REASON_ERROR, "shot by the test"));
}

KT_CASE(server_dying_during_a_call_is_edown_with_the_reason) {
  kt_quiet();
  ts_probe probe = {0};
  keel_pid_t s = ts_start(&probe, NULL);
  keel_msg_t *reply = NULL;
  keel_gs_exit why;
  memset(&why, 0, sizeof why);
  CHECK_EQ(keel_gs_call(s, kt_msg_u64(T_STOP_IN_CALL, 0), &reply, KT_LONG, &why), KEEL_EDOWN);
  CHECK(reply == NULL);
  CHECK_EQ(why.kind, KEEL_REASON_ERROR);
  CHECK(strcmp(why.text, "died during call") == 0);
  CHECK_EQ(atomic_load(&probe.terminated), 1);
  CHECK(!keel_is_alive(s));

  /* killed by someone else while it handles our call */
  memset(&probe, 0, sizeof probe);
  s = ts_start(&probe, NULL);
  sleeping_server = s;
  CHECK_OK(keel_spawn(killer_after, NULL, NULL, NULL));
  memset(&why, 0, sizeof why);
  CHECK_EQ(keel_gs_call(s, kt_msg_u64(T_SLEEP, 10000), &reply, KT_LONG, &why), KEEL_EDOWN);
  CHECK_EQ(why.kind, KEEL_REASON_ERROR);
  CHECK(strcmp(why.text, "shot by the test") == 0);

  /* a handler that returns an error: the caller gets EDOWN with its text */
  memset(&probe, 0, sizeof probe);
  s = ts_start(&probe, NULL);
  memset(&why, 0, sizeof why);
  CHECK_EQ(keel_gs_call(s, kt_msg_u64(T_CRASH, 0), &reply, KT_LONG, &why), KEEL_EDOWN);
  CHECK_EQ(why.kind, KEEL_REASON_ERROR);
  CHECK(strstr(why.text, "KEEL_EIO") != NULL);
  CHECK_EQ(keel_mailbox_len(), 0);
}

KT_CASE(casts_and_calls_are_handled_in_queue_order) {
  kt_quiet();
  ts_probe probe = {0};
  keel_pid_t s = ts_start(&probe, NULL);
  uint64_t next = 0;
  for (int round = 0; round < 50; round++) {
    for (int i = 0; i < 5; i++)
      CHECK_OK(keel_gs_cast(s, kt_msg_u64(T_LOG, next++)));
    CHECK_EQ(kt_call_u64(s, T_LOG, next), next);
    next++;
    kt_send_u64(s, T_PLAIN, 0); /* a plain message, logged as 1000 + tag */
  }
  keel_msg_t *reply = NULL;
  CHECK_OK(keel_gs_call(s, keel_msg_new(T_GET, 0), &reply, KT_LONG, NULL));
  size_t n = keel_msg_size(reply) / sizeof(uint64_t);
  CHECK_EQ(n, 50 * 7);
  const uint64_t *log = keel_msg_data(reply);
  uint64_t want = 0;
  for (size_t i = 0; i < n; i++) {
    if (i % 7 == 6)
      CHECK_EQ(log[i], 1000 + T_PLAIN);
    else
      CHECK_EQ(log[i], want++);
  }
  keel_msg_free(reply);
  ts_stop(s);
}

KT_CASE(queued_messages_are_handled_before_stop) {
  kt_quiet();
  ts_probe probe = {0};
  keel_pid_t s = ts_start(&probe, NULL);
  const uint64_t n = 1000;
  for (uint64_t i = 0; i < n; i++)
    CHECK_OK(keel_gs_cast(s, kt_msg_u64(T_LOG, i)));
  CHECK_OK(keel_gs_stop(s, KEEL_REASON_SHUTDOWN, "drained", KT_LONG));
  CHECK(!keel_is_alive(s));
  CHECK_EQ(atomic_load(&probe.terminated), 1);
  CHECK_EQ(probe.handled, n);
  CHECK_EQ(probe.kind, KEEL_REASON_SHUTDOWN);
  CHECK(strcmp(probe.text, "drained") == 0);
}

KT_CASE(terminate_gets_the_reason_and_the_state) {
  kt_quiet();
  /* stopped from outside */
  ts_probe probe = {0};
  keel_pid_t s = ts_start(&probe, NULL);
  CHECK_EQ(kt_call_u64(s, T_LOG, 7), 7);
  CHECK_OK(keel_gs_stop(s, KEEL_REASON_SHUTDOWN, "bye", KT_LONG));
  CHECK_EQ(atomic_load(&probe.terminated), 1);
  CHECK_EQ(probe.kind, KEEL_REASON_SHUTDOWN);
  CHECK(strcmp(probe.text, "bye") == 0);
  CHECK(probe.state != NULL);
  CHECK_EQ(probe.handled, 1); /* the state it was given is the one the handlers used */

  /* stopping itself from a call, with a reply */
  memset(&probe, 0, sizeof probe);
  s = ts_start(&probe, NULL);
  keel_ref_t ref;
  CHECK_OK(keel_monitor(s, &ref));
  CHECK_EQ(kt_call_u64(s, T_STOP_REPLY, 9), 9);
  CHECK_EQ(kt_wait_down(ref, s, NULL, 0), KEEL_REASON_NORMAL);
  CHECK_EQ(atomic_load(&probe.terminated), 1);
  CHECK_EQ(probe.kind, KEEL_REASON_NORMAL);

  /* crashing in a cast */
  memset(&probe, 0, sizeof probe);
  s = ts_start(&probe, NULL);
  CHECK_OK(keel_monitor(s, &ref));
  CHECK_OK(keel_gs_cast(s, kt_msg_u64(T_CRASH, 0)));
  char text[256];
  CHECK_EQ(kt_wait_down(ref, s, text, sizeof text), KEEL_REASON_ERROR);
  CHECK_EQ(atomic_load(&probe.terminated), 1);
  CHECK_EQ(probe.kind, KEEL_REASON_ERROR);
  CHECK(strcmp(probe.text, text) == 0);
  CHECK(strstr(text, "KEEL_EIO") != NULL);

  /* keel_exit inside a callback: terminate runs, with that reason (OTP) */
  memset(&probe, 0, sizeof probe);
  s = ts_start(&probe, NULL);
  CHECK_OK(keel_monitor(s, &ref));
  keel_msg_t *reply = NULL;
  CHECK_EQ(keel_gs_call(s, kt_msg_u64(T_EXIT_IN_CALL, 0), &reply, KT_LONG, NULL), KEEL_EDOWN);
  CHECK_EQ(kt_wait_down(ref, s, text, sizeof text), KEEL_REASON_ERROR);
  CHECK(strcmp(text, "exit in a callback") == 0);
  CHECK_EQ(atomic_load(&probe.terminated), 1);
  CHECK_EQ(probe.kind, KEEL_REASON_ERROR);
  CHECK(strcmp(probe.text, "exit in a callback") == 0);

  /* killed: terminate does not run */
  memset(&probe, 0, sizeof probe);
  s = ts_start(&probe, NULL);
  CHECK_OK(keel_monitor(s, &ref));
  CHECK_OK(keel_exit_signal(s, KEEL_REASON_KILL, NULL));
  CHECK_EQ(kt_wait_down(ref, s, NULL, 0), KEEL_REASON_KILLED);
  CHECK_EQ(atomic_load(&probe.terminated), 0);
}

static void stopper(void *arg) {
  keel_pid_t s = *(keel_pid_t *)arg;
  CHECK_OK(keel_gs_stop(s, KEEL_REASON_NORMAL, NULL, KT_LONG));
}

KT_CASE(stop_is_idempotent) {
  kt_quiet();
  ts_probe probe = {0};
  keel_pid_t s = ts_start(&probe, NULL);
  CHECK_OK(keel_gs_stop(s, KEEL_REASON_NORMAL, NULL, KT_LONG));
  CHECK_OK(keel_gs_stop(s, KEEL_REASON_NORMAL, NULL, KT_LONG));
  CHECK_OK(keel_gs_stop(s, KEEL_REASON_SHUTDOWN, "again", 10));
  CHECK_EQ(atomic_load(&probe.terminated), 1);

  /* several stoppers at once: all return 0, terminate runs once */
  memset(&probe, 0, sizeof probe);
  s = ts_start(&probe, NULL);
  keel_ref_t refs[4];
  keel_pid_t pids[4];
  for (int i = 0; i < 4; i++)
    pids[i] = kt_spawn_monitor(stopper, &s, i % 2, &refs[i]);
  CHECK_OK(keel_gs_stop(s, KEEL_REASON_NORMAL, NULL, KT_LONG));
  for (int i = 0; i < 4; i++)
    CHECK_EQ(kt_wait_down(refs[i], pids[i], NULL, 0), KEEL_REASON_NORMAL);
  CHECK_EQ(atomic_load(&probe.terminated), 1);
  CHECK_EQ(keel_gs_stop(keel_self(), KEEL_REASON_NORMAL, NULL, 10), KEEL_EINVAL);
}

KT_CASE(stop_kills_a_server_that_does_not_stop_in_time) {
  kt_quiet();
  ts_probe probe = {0};
  keel_pid_t s = ts_start(&probe, NULL);
  CHECK_OK(keel_gs_cast(s, kt_msg_u64(T_LOG, 1)));
  /* busy in a long call: the stop request waits behind it */
  keel_msg_t *reply = NULL;
  keel_gs_exit why;
  CHECK_EQ(keel_gs_call(s, kt_msg_u64(T_SLEEP, 10000), &reply, 1, &why), KEEL_ETIMEDOUT);
  CHECK_EQ(keel_gs_stop(s, KEEL_REASON_NORMAL, NULL, 30), KEEL_ETIMEDOUT);
  CHECK(!keel_is_alive(s));
  CHECK_EQ(atomic_load(&probe.terminated), 0);
}

KT_CASE(deferred_reply_from_another_process) {
  kt_quiet();
  ts_probe probe = {0};
  keel_pid_t s = ts_start(&probe, NULL);
  keel_msg_t *reply = NULL;
  CHECK_OK(keel_gs_call(s, kt_msg_u64(T_DEFER, 41), &reply, KT_LONG, NULL));
  CHECK_EQ(keel_msg_tag(reply), T_DEFER);
  CHECK(keel_msg_from(reply) != s); /* the worker answered, not the server */
  CHECK_EQ(kt_u64(reply), 42);
  keel_msg_free(reply);

  /* replying twice is harmless: the second reply is dropped */
  keel_rt_stats st0;
  keel_rt_stats_get(&st0);
  CHECK_OK(keel_gs_call(s, kt_msg_u64(T_DEFER_TWICE, 1), &reply, KT_LONG, NULL));
  CHECK_EQ(kt_u64(reply), 2);
  keel_msg_free(reply);
  KT_WAIT_UNTIL(({
    keel_rt_stats st1;
    keel_rt_stats_get(&st1);
    st1.replies_dropped > st0.replies_dropped;
  }));
  keel_msg_t *m = NULL;
  CHECK_EQ(keel_receive(&m, 20), KEEL_ETIMEDOUT);

  /* while a deferred call is pending the server serves others */
  CHECK_EQ(kt_call_u64(s, T_LOG, 3), 3);
  ts_stop(s);
}

KT_CASE(name_is_freed_on_exit) {
  kt_quiet();
  ts_probe probe = {0};
  keel_pid_t s = ts_start(&probe, "named");
  CHECK_EQ(keel_whereis("named"), s);
  CHECK_EQ(kt_call_u64(s, T_LOG, 1), 1);
  keel_ref_t ref;
  CHECK_OK(keel_monitor(s, &ref));
  CHECK_OK(keel_exit_signal(s, KEEL_REASON_KILL, NULL));
  CHECK_EQ(kt_wait_down(ref, s, NULL, 0), KEEL_REASON_KILLED);
  CHECK_EQ(keel_whereis("named"), 0);
  /* taken again at once by a new server */
  keel_pid_t s2 = ts_start(&probe, "named");
  CHECK_EQ(keel_whereis("named"), s2);
  keel_msg_t *reply = NULL;
  CHECK_OK(keel_gs_call_name("named", kt_msg_u64(T_LOG, 2), &reply, KT_LONG, NULL));
  CHECK_EQ(kt_u64(reply), 2);
  keel_msg_free(reply);
  CHECK_OK(keel_gs_cast_name("named", kt_msg_u64(T_LOG, 3)));
  ts_stop(s2);
  CHECK_EQ(keel_whereis("named"), 0);
}

static bool is_exit_msg(const keel_msg_t *m, void *arg) {
  (void)arg;
  return keel_msg_kind_of(m) == KEEL_MSG_EXIT;
}

KT_CASE(handler_error_crashes_the_server_and_tells_links_and_monitors) {
  kt_quiet();
  CHECK_EQ(keel_trap_exit(true), 0);
  ts_probe probe = {0};
  ts_init_arg ia = {&probe, INIT_OK, 0};
  keel_gs_opts o;
  keel_gs_opts_init(&o);
  o.link = true;
  keel_pid_t s = 0;
  CHECK_OK(keel_gs_start(&ts_beh, &ia, &o, &s, NULL));
  keel_ref_t ref;
  CHECK_OK(keel_monitor(s, &ref));
  CHECK_OK(keel_gs_cast(s, kt_msg_u64(T_CRASH, 0)));
  char text[256];
  CHECK_EQ(kt_wait_down(ref, s, text, sizeof text), KEEL_REASON_ERROR);
  CHECK(strstr(text, "KEEL_EIO") != NULL);
  keel_msg_t *m = NULL;
  CHECK_OK(keel_receive_match(is_exit_msg, NULL, &m, KT_LONG));
  keel_pid_t who = 0;
  keel_reason r;
  CHECK_OK(keel_msg_exit_info(m, &who, &r));
  CHECK_EQ(who, s);
  CHECK_EQ(r.kind, KEEL_REASON_ERROR);
  CHECK(strcmp(r.text, text) == 0);
  keel_msg_free(m);
  CHECK_EQ(atomic_load(&probe.terminated), 1);
  CHECK_EQ(keel_trap_exit(false), 1);
}

/* The parent starts a trapping, linked server, reports its pid, then dies. */
typedef struct parent_arg {
  keel_pid_t test;
  ts_probe *probe;
} parent_arg;

static void dying_parent(void *arg) {
  parent_arg *pa = arg;
  ts_init_arg ia = {pa->probe, INIT_OK, 0};
  keel_gs_opts o;
  keel_gs_opts_init(&o);
  o.link = true;
  o.trap_exit = true;
  keel_pid_t s = 0;
  CHECK_OK(keel_gs_start(&ts_beh, &ia, &o, &s, NULL));
  kt_send_u64(pa->test, 1, s);
  keel_msg_t *m = kt_recv(KT_LONG); /* go */
  keel_msg_free(m);
  keel_exitf("parent gone");
}

KT_CASE(trapping_server_exits_with_its_linked_parent) {
  kt_quiet();
  ts_probe probe = {0};
  parent_arg pa = {keel_self(), &probe};
  keel_ref_t pref;
  keel_pid_t parent = kt_spawn_monitor(dying_parent, &pa, -1, &pref);
  keel_pid_t s = (keel_pid_t)kt_recv_tag_u64(1, KT_LONG);
  keel_ref_t sref;
  CHECK_OK(keel_monitor(s, &sref));
  kt_send_tag(parent, 2);
  CHECK_EQ(kt_wait_down(pref, parent, NULL, 0), KEEL_REASON_ERROR);
  char text[256];
  CHECK_EQ(kt_wait_down(sref, s, text, sizeof text), KEEL_REASON_ERROR);
  CHECK(strcmp(text, "parent gone") == 0);
  CHECK_EQ(atomic_load(&probe.terminated), 1);
  CHECK_EQ(probe.kind, KEEL_REASON_ERROR);
  CHECK(strcmp(probe.text, "parent gone") == 0);
  CHECK_EQ(probe.exits, 0);
}

static void linker(void *arg) {
  keel_pid_t s = *(keel_pid_t *)arg;
  CHECK_OK(keel_link(s));
  keel_exitf("linked peer gone");
}

KT_CASE(handle_info_gets_plain_messages_timers_and_exits) {
  kt_quiet();
  ts_probe probe = {0};
  ts_init_arg ia = {&probe, INIT_OK, 0};
  keel_gs_opts o;
  keel_gs_opts_init(&o);
  o.trap_exit = true;
  keel_pid_t s = 0;
  CHECK_OK(keel_gs_start(&ts_beh, &ia, &o, &s, NULL));
  kt_send_tag(s, T_PLAIN);
  CHECK_OK(keel_send_after(s, 5, keel_msg_new(T_PLAIN + 1, 0), NULL));
  /* a linked process that crashes: the trapping server gets an EXIT */
  keel_ref_t lref;
  keel_pid_t l = kt_spawn_monitor(linker, &s, -1, &lref);
  CHECK_EQ(kt_wait_down(lref, l, NULL, 0), KEEL_REASON_ERROR);
  KT_WAIT_UNTIL(kt_call_u64(s, T_COUNTS, 0) == 2 + 100);
  ts_stop(s);
  CHECK_EQ(probe.infos, 2);
  CHECK_EQ(probe.exits, 1);
  CHECK_EQ(probe.downs, 0);
}


/* ---- a starter that dies while its server is being started ------------------------- */

static void busy_spin(void *arg) {
  (void)arg;
  int64_t until = kt_now_ms() + 100;
  while (kt_now_ms() < until) { /* holds scheduler 1 without yielding */
  }
}

static void doomed_starter(void *arg) {
  ts_probe *probe = arg;
  ts_init_arg ia = {probe, INIT_OK, 0}; /* on this stack: borrowed until init returns */
  keel_gs_opts o;
  keel_gs_opts_init(&o);
  o.name = "orphan";
  o.link = true;
  o.scheduler = KEEL_ON_SCHEDULER(1); /* queued behind busy_spin */
  keel_pid_t pid;
  (void)keel_gs_start(&ts_beh, &ia, &o, &pid, NULL);
  keel_exitf("start returned");
}

static void scribbler(void *arg) {
  (void)arg;
  volatile char junk[16384];
  memset((char *)junk, 0xA5, sizeof junk); /* reuses and dirties a freed stack */
  keel_yield();
}

/* The starter is killed after spawning the server and before the server first
 * runs; the server must not use the starter's (freed) stack, and, linked to a
 * dead starter, must not stay behind. */
KT_CASE(starter_killed_before_the_server_runs_leaves_nothing) {
  kt_quiet();
  uint64_t before = alive_now();
  ts_probe probe = {0};
  keel_ref_t bref, sref;
  keel_pid_t busy = kt_spawn_monitor(busy_spin, NULL, 1, &bref);
  keel_sleep(5);
  keel_pid_t st = kt_spawn_monitor(doomed_starter, &probe, 0, &sref);
  keel_sleep(5);
  CHECK_OK(keel_exit_signal(st, KEEL_REASON_KILL, NULL));
  CHECK_EQ(kt_wait_down(sref, st, NULL, 0), KEEL_REASON_KILLED);
  for (int i = 0; i < 8; i++)
    kt_spawn_on(scribbler, NULL, 0);
  CHECK_EQ(kt_wait_down(bref, busy, NULL, 0), KEEL_REASON_NORMAL);
  KT_WAIT_UNTIL(alive_now() == before && keel_whereis("orphan") == 0);
}

/* ---- many callers (also run under ThreadSanitizer) ---------------------------------- */

typedef struct caller_arg {
  keel_pid_t server, test;
  uint64_t id, calls;
} caller_arg;

static void caller(void *arg) {
  caller_arg *ca = arg;
  for (uint64_t i = 0; i < ca->calls; i++) {
    uint64_t v = (ca->id << 32) | i;
    keel_msg_t *reply = NULL;
    CHECK_OK(keel_gs_call(ca->server, kt_msg_u64(T_ECHO, v), &reply, KT_LONG, NULL));
    CHECK_EQ(kt_u64(reply), v); /* every caller gets its own reply */
    keel_msg_free(reply);
    if (i % 16 == 0) CHECK_OK(keel_gs_cast(ca->server, kt_msg_u64(T_LOG, v)));
  }
  kt_send_u64(ca->test, 1, ca->id);
}

KT_CASE(many_callers_each_get_their_own_replies) {
  kt_quiet();
  ts_probe probe = {0};
  keel_pid_t s = ts_start(&probe, NULL);
  enum { NCALLERS = 8 };
  /* 2,000 calls each normally; ThreadSanitizer makes each call ~20x slower */
  uint64_t calls = kt_scale_tsan(2000, 200);
  caller_arg args[NCALLERS];
  for (int i = 0; i < NCALLERS; i++) {
    args[i] = (caller_arg){s, keel_self(), (uint64_t)i, calls};
    kt_spawn_on(caller, &args[i], i % 2);
  }
  for (int i = 0; i < NCALLERS; i++)
    (void)kt_recv_tag_u64(1, KT_LONG);
  ts_stop(s);
  CHECK_EQ(probe.handled, NCALLERS * ((calls + 15) / 16));
}

/* ---- context propagation ------------------------------------------------------------ */

/* The correlation-id stand-in: KT_CTX_SLOT and kt_ctx_hooks() (kt_otp.h). */

static int ctx_init(void *arg, void **state) {
  *state = arg;
  return 0;
}

static int ctx_call(void *st, keel_gs_from from, keel_msg_t **req, keel_msg_t **reply) {
  (void)st;
  (void)from;
  (void)req;
  const char *cur = keel_local_get(KT_CTX_SLOT);
  *reply = keel_msg_copy(0, cur ? cur : "", cur ? strlen(cur) + 1 : 1);
  return KEEL_GS_REPLY;
}

static const keel_gen_server ctx_server = {.init = ctx_init, .handle_call = ctx_call};

KT_CASE(a_call_carries_the_callers_context_to_the_server_and_no_further) {
  keel_gs_set_context_hooks(kt_ctx_hooks());
  keel_pid_t pid;
  CHECK_OK(keel_gs_start(&ctx_server, NULL, NULL, &pid, NULL));
  keel_msg_t *r;
  /* no context: the server sees none */
  CHECK_OK(keel_gs_call(pid, keel_msg_new(0, 0), &r, 0, NULL));
  CHECK(strcmp(keel_msg_data(r), "") == 0);
  keel_msg_free(r);
  /* with one: the server runs the call with it */
  keel_local_set(KT_CTX_SLOT, strdup("req-42"));
  CHECK_OK(keel_gs_call(pid, keel_msg_new(0, 0), &r, 0, NULL));
  CHECK(strcmp(keel_msg_data(r), "req-42") == 0);
  keel_msg_free(r);
  free(keel_local_get(KT_CTX_SLOT));
  keel_local_set(KT_CTX_SLOT, NULL);
  /* and only for that call: restored afterwards */
  CHECK_OK(keel_gs_call(pid, keel_msg_new(0, 0), &r, 0, NULL));
  CHECK(strcmp(keel_msg_data(r), "") == 0);
  keel_msg_free(r);
  keel_gs_set_context_hooks(NULL);
  CHECK_OK(keel_gs_stop(pid, KEEL_REASON_NORMAL, NULL, 0));
}

KT_MAIN(KT_ENTRY(init_timeout_returns_etimedout_and_leaves_nothing),
        KT_ENTRY(init_failure_leaves_no_name_behind),
        KT_ENTRY(start_with_a_taken_name_is_eexist),
        KT_ENTRY(call_timeout_drops_the_late_reply),
        KT_ENTRY(call_to_a_dead_server_is_enoproc),
        KT_ENTRY(server_dying_during_a_call_is_edown_with_the_reason),
        KT_ENTRY(casts_and_calls_are_handled_in_queue_order),
        KT_ENTRY(queued_messages_are_handled_before_stop),
        KT_ENTRY(terminate_gets_the_reason_and_the_state),
        KT_ENTRY(stop_is_idempotent),
        KT_ENTRY(stop_kills_a_server_that_does_not_stop_in_time),
        KT_ENTRY(deferred_reply_from_another_process),
        KT_ENTRY(name_is_freed_on_exit),
        KT_ENTRY(handler_error_crashes_the_server_and_tells_links_and_monitors),
        KT_ENTRY(trapping_server_exits_with_its_linked_parent),
        KT_ENTRY(handle_info_gets_plain_messages_timers_and_exits),
        KT_ENTRY_SCHED(starter_killed_before_the_server_runs_leaves_nothing, 2),
        KT_ENTRY(many_callers_each_get_their_own_replies),
        KT_ENTRY(a_call_carries_the_callers_context_to_the_server_and_no_further))
