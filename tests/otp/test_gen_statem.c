/* test_gen_statem.c - the state machine behaviour (include/keel/gen_statem.h).
 *
 * Three machines:
 *   - OTP's code lock (state functions, enter calls, a state timeout that
 *     relocks the door, buttons pressed while open postponed);
 *   - OTP's pushbutton (handle_event mode, calls that count), also run
 *     under a supervisor;
 *   - a scripted machine (handle_event mode with enter calls) whose casts
 *     are commands, one per rule: set a timeout, change state, postpone,
 *     insert an event, sleep, crash, stop. It logs every event it handles as
 *     "<state>:<event type>[:<detail>]", and each case compares the log
 *     with the sequence OTP's rules give.
 *
 * No timing decides a verdict. Where a case needs messages already queued
 * when a timeout is set, the machine sends them to itself first (SEQ); where
 * it needs "never", it arms a sentinel timer of its own far behind the
 * timeout under test (SENT) and checks that the sentinel came and the
 * timeout did not; where it needs a timer that fired but was cancelled
 * before it was handled, the handler sleeps past the timer (SLEEP).
 */
#include "otp/kt_otp.h"

/* ---- helpers ------------------------------------------------------------------------ */

static uint64_t msg_u64(const keel_msg_t *m) {
  return m && keel_msg_size(m) == sizeof(uint64_t) ? kt_u64(m) : 0;
}

static const char *type_name(keel_sm_event_type t) {
  switch (t) {
  case KEEL_SM_ENTER: return "enter";
  case KEEL_SM_CALL: return "call";
  case KEEL_SM_CAST: return "cast";
  case KEEL_SM_INFO: return "info";
  case KEEL_SM_INTERNAL: return "internal";
  case KEEL_SM_STATE_TIMEOUT: return "state_timeout";
  case KEEL_SM_EVENT_TIMEOUT: return "event_timeout";
  case KEEL_SM_TIMEOUT: return "timeout";
  }
  return "?";
}

/* ---- OTP's code lock ------------------------------------------------------------------- */

enum { LOCKED, OPEN };
enum { BUTTON = 1, CODE_LENGTH, GET_STATE, HOLD, LOCK_TIMEOUT };

typedef struct lock_cfg {
  const char *code;
  int64_t open_ms;
} lock_cfg;

typedef struct lock_data {
  char code[16], buttons[16];
  size_t len, n;
  int64_t open_ms;
} lock_data;

static int lock_init(keel_sm_t *sm, void *arg, int *state, void **data) {
  (void)sm;
  const lock_cfg *c = arg;
  lock_data *d = calloc(1, sizeof *d);
  if (!d) return KEEL_ENOMEM;
  d->len = strlen(c->code);
  memcpy(d->code, c->code, d->len);
  d->open_ms = c->open_ms;
  *state = LOCKED;
  *data = d;
  return 0;
}

/* Events every state handles alike (OTP's handle_common). */
static int lock_common(int state, keel_sm_event *ev, lock_data *d) {
  if (ev->type == KEEL_SM_CALL && keel_msg_tag(ev->msg) == CODE_LENGTH)
    keel_gs_reply(ev->from, kt_msg_u64(0, d->len));
  else if (ev->type == KEEL_SM_CALL && keel_msg_tag(ev->msg) == GET_STATE)
    keel_gs_reply(ev->from, kt_msg_u64(0, (uint64_t)state));
  else if (ev->type == KEEL_SM_CAST && keel_msg_tag(ev->msg) == HOLD)
    keel_sleep((int64_t)msg_u64(ev->msg)); /* lets the test queue its presses */
  else
    return KEEL_EINVAL;
  return KEEL_SM_OK;
}

static int locked(keel_sm_t *sm, int state, keel_sm_event *ev, void *data) {
  lock_data *d = data;
  if (ev->type == KEEL_SM_ENTER) {
    kt_logf("lock");
    d->n = 0;
    return KEEL_SM_OK;
  }
  if (ev->type == KEEL_SM_CAST && keel_msg_tag(ev->msg) == BUTTON) {
    char b = (char)msg_u64(ev->msg);
    kt_logf("press:%c", b);
    if (d->n == d->len) { /* keep the last len presses */
      memmove(d->buttons, d->buttons + 1, d->len - 1);
      d->n--;
    }
    d->buttons[d->n++] = b;
    if (d->n == d->len && memcmp(d->buttons, d->code, d->len) == 0) keel_sm_next_state(sm, OPEN);
    return KEEL_SM_OK;
  }
  return lock_common(state, ev, d);
}

static int open_(keel_sm_t *sm, int state, keel_sm_event *ev, void *data) {
  lock_data *d = data;
  if (ev->type == KEEL_SM_ENTER) {
    kt_logf("unlock");
    return keel_sm_state_timeout(sm, d->open_ms, kt_msg_u64(LOCK_TIMEOUT, 0));
  }
  if (ev->type == KEEL_SM_STATE_TIMEOUT) {
    CHECK_EQ(keel_msg_tag(ev->msg), LOCK_TIMEOUT);
    kt_logf("relock");
    return keel_sm_next_state(sm, LOCKED);
  }
  if (ev->type == KEEL_SM_CAST && keel_msg_tag(ev->msg) == BUTTON) {
    kt_logf("postponed:%c", (char)msg_u64(ev->msg));
    return keel_sm_postpone(sm);
  }
  return lock_common(state, ev, d);
}

static void lock_terminate(keel_reason reason, int state, void *data) {
  kt_logf("terminate:%s:%d", keel_reason_name(reason.kind), state);
  free(data);
}

static const keel_sm_state lock_states[] = {
    [LOCKED] = {"locked", locked}, [OPEN] = {"open", open_}};
static const keel_gen_statem code_lock = {.init = lock_init,
                                          KEEL_SM_STATES(lock_states),
                                          .state_enter = true,
                                          .terminate = lock_terminate};

static void press(keel_pid_t lock, const char *buttons) {
  for (const char *b = buttons; *b; b++)
    CHECK_OK(keel_gs_cast(lock, kt_msg_u64(BUTTON, (uint64_t)*b)));
}

KT_CASE(code_lock_opens_on_its_code_and_relocks_on_its_state_timeout) {
  kt_quiet();
  kt_log_reset();
  lock_cfg cfg = {"123", 200};
  keel_pid_t lock;
  CHECK_OK(keel_sm_start(&code_lock, &cfg, NULL, &lock, NULL));
  KT_WAIT_LOG(1);
  CHECK_LOG(0, "lock"); /* the initial enter call */
  CHECK_EQ(kt_call_u64(lock, CODE_LENGTH, 0), 3);

  press(lock, "124"); /* a wrong code: still locked */
  CHECK_EQ(kt_call_u64(lock, GET_STATE, 0), LOCKED);
  CHECK_LOG(0, "lock,press:1,press:2,press:4");

  /* The right code (the last three presses), and a press while open: the
   * lock holds first (50 ms), so that all of them are queued when it opens;
   * the press of 9 reaches it open unless this process stalls for 250 ms
   * between two casts. */
  CHECK_OK(keel_gs_cast(lock, kt_msg_u64(HOLD, 50)));
  press(lock, "1239");
  KT_WAIT_LOG(12);
  CHECK_LOG(0, "lock,press:1,press:2,press:4,press:1,press:2,press:3,unlock,postponed:9,"
               "relock,lock,press:9");
  CHECK_EQ(kt_call_u64(lock, GET_STATE, 0), LOCKED);
  kt_stop(lock);
  CHECK_LOG(12, "terminate:shutdown:0");
}

/* ---- OTP's pushbutton -------------------------------------------------------------- */

enum { PB_OFF, PB_ON };
enum { PUSH = 1, GET_COUNT, PB_CRASH };

static int pb_init(keel_sm_t *sm, void *arg, int *state, void **data) {
  (void)sm;
  (void)arg;
  uint64_t *count = calloc(1, sizeof *count);
  if (!count) return KEEL_ENOMEM;
  *state = PB_OFF;
  *data = count;
  kt_logf("pb:init");
  return 0;
}

static int pb_handle(keel_sm_t *sm, int state, keel_sm_event *ev, void *data) {
  uint64_t *count = data;
  uint32_t tag = ev->msg ? keel_msg_tag(ev->msg) : 0;
  if (ev->type == KEEL_SM_CALL && tag == PUSH) {
    if (state == PB_OFF) ++*count;
    keel_sm_next_state(sm, state == PB_OFF ? PB_ON : PB_OFF);
    return keel_gs_reply(ev->from, kt_msg_u64(0, state == PB_OFF ? PB_ON : PB_OFF));
  }
  if (ev->type == KEEL_SM_CALL && tag == GET_COUNT)
    return keel_gs_reply(ev->from, kt_msg_u64(0, *count));
  if (ev->type == KEEL_SM_CAST && tag == PB_CRASH) return KEEL_EIO;
  return KEEL_SM_OK; /* anything else is ignored */
}

static void pb_terminate(keel_reason reason, int state, void *data) {
  kt_logf("pb:terminate:%s:%d", keel_reason_name(reason.kind), state);
  free(data);
}

static const keel_gen_statem pushbutton = {
    .init = pb_init, .handle_event = pb_handle, .terminate = pb_terminate};

KT_CASE(pushbutton_turns_on_and_off_and_counts_its_pushes) {
  kt_quiet();
  kt_log_reset();
  keel_gs_opts o = {.name = "pushbutton"};
  keel_pid_t pb;
  CHECK_OK(keel_sm_start(&pushbutton, NULL, &o, &pb, NULL));
  CHECK_EQ(keel_whereis("pushbutton"), pb);
  CHECK_EQ(kt_call_u64(pb, PUSH, 0), PB_ON);
  CHECK_EQ(kt_call_u64(pb, PUSH, 0), PB_OFF);
  CHECK_EQ(kt_call_u64(pb, PUSH, 0), PB_ON);
  CHECK_EQ(kt_call_u64(pb, GET_COUNT, 0), 2);
  CHECK_OK(keel_gs_stop(pb, KEEL_REASON_NORMAL, NULL, 0));
  CHECK_LOG(0, "pb:init,pb:terminate:normal:1");
  CHECK_EQ(keel_whereis("pushbutton"), 0);
}

KT_CASE(a_supervisor_restarts_a_crashed_machine) {
  kt_quiet();
  kt_log_reset();
  keel_sup_child_spec child = {.id = "pb", .gen_statem = &pushbutton};
  keel_sup_spec spec = kt_sup_spec(KEEL_SUP_ONE_FOR_ONE, &child, 1);
  keel_pid_t sup;
  CHECK_OK(keel_sup_start(&spec, NULL, &sup, NULL));
  keel_pid_t pb = kt_child_pid(sup, "pb");
  CHECK(pb != 0);
  CHECK_EQ(kt_call_u64(pb, PUSH, 0), PB_ON);
  CHECK_EQ(kt_call_u64(pb, GET_COUNT, 0), 1);

  char text[256];
  keel_ref_t ref;
  CHECK_OK(keel_monitor(pb, &ref));
  CHECK_OK(keel_gs_cast(pb, keel_msg_new(PB_CRASH, 0)));
  CHECK_EQ(kt_wait_down(ref, pb, text, sizeof text), KEEL_REASON_ERROR);
  CHECK(strstr(text, "KEEL_EIO") != NULL); /* the handler's error is the exit reason */

  keel_pid_t again = kt_wait_new_pid(sup, "pb", pb);
  CHECK_EQ(kt_call_u64(again, GET_COUNT, 0), 0); /* a fresh machine, in its initial state */
  CHECK_EQ(kt_call_u64(again, PUSH, 0), PB_ON);
  kt_stop(sup); /* the machine traps exits under a supervisor: terminate runs */
  CHECK_LOG(0, "pb:init,pb:terminate:error:1,pb:init,pb:terminate:shutdown:1");
}

/* ---- the scripted machine --------------------------------------------------------- */

/* The correlation-id stand-in, KT_CTX_SLOT and kt_ctx_hooks(), is kt_otp.h's. */

static void ctx_set(const char *v) {
  free(keel_local_get(KT_CTX_SLOT));
  keel_local_set(KT_CTX_SLOT, v ? strdup(v) : NULL);
}

enum {
  SEQ = 1,       /* payload: cmd[]; cast each to itself, in order */
  PING,          /* nothing */
  GO,            /* next_state(val) */
  ST,            /* state_timeout(val, content val) */
  ET,            /* event_timeout(val, content val) */
  ET_SLEEP,      /* event_timeout(1), then sleep val ms: its marker arrives while we sleep */
  SLEEP_GO,      /* sleep val ms, then next_state(state + 1) */
  ET0_INSERT,    /* event_timeout(0) and next_event(internal PING) */
  ST0_INSERT_GO, /* state_timeout(0) and next_event(internal GO state + 1) */
  GT,            /* timeout("g<val / 1e6>", val % 1e6, content val % 1e6) */
  GU,            /* timeout_update("g<val / 1e6>", content val % 1e6) */
  GC,            /* timeout_cancel("g<val>") */
  SENT,          /* keel_send_after(self, val, SENTINEL): a plain message */
  SENTINEL,      /* (info) */
  POSTPONE,      /* postpone in state 0 (cast or call); in other states: log, reply val * 10 */
  INSERT,        /* keel_send(self, PING) (mailbox), then next_event internal val and val + 1 */
  REPEAT,        /* repeat_state */
  ENTER_MODE,    /* how the enter call into state 9 misbehaves: 1 next_state, 2 postpone,
                    3 next_event */
  STOP_REPLY,    /* call: reply val, stop normal */
  STOP_ERROR,    /* stop with reason error "bad <val>" */
  CRASH,         /* return KEEL_EIO */
  ST_GO,         /* state_timeout(val) and next_state(state + 1) */
  GO_INSERT,     /* next_state(val) and next_event(internal PING 77) */
};

typedef struct cmd {
  uint32_t tag;
  uint64_t val;
} cmd;

typedef struct script_data {
  int enter_mode;
} script_data;

static void seq_send(keel_pid_t to, const cmd *cmds, size_t n) {
  CHECK_OK(keel_gs_cast(to, keel_msg_copy(SEQ, cmds, n * sizeof *cmds)));
}
#define SEND_SEQ(pid, ...)                                                                         \
  do {                                                                                             \
    const cmd seq_[] = {__VA_ARGS__};                                                              \
    seq_send(pid, seq_, sizeof seq_ / sizeof seq_[0]);                                             \
  } while (0)

static int script_init(keel_sm_t *sm, void *arg, int *state, void **data) {
  script_data *d = calloc(1, sizeof *d);
  if (!d) return KEEL_ENOMEM;
  keel_on_exit(free, d); /* however the machine ends */
  *state = 0;
  *data = d;
  if (arg) /* an event init inserts: handled after the first enter call */
    return keel_sm_next_event(sm, KEEL_SM_INTERNAL, kt_msg_u64(PING, *(uint64_t *)arg));
  return 0;
}

static void log_event(int state, const keel_sm_event *ev) {
  char detail[64] = "";
  if (ev->type == KEEL_SM_ENTER)
    snprintf(detail, sizeof detail, ":%d", ev->old_state);
  else if (ev->type == KEEL_SM_TIMEOUT)
    snprintf(detail, sizeof detail, ":%s:%llu", ev->timeout, (unsigned long long)msg_u64(ev->msg));
  else if (ev->msg)
    snprintf(detail, sizeof detail, ":%u:%llu", keel_msg_tag(ev->msg),
             (unsigned long long)msg_u64(ev->msg));
  kt_logf("%d:%s%s", state, type_name(ev->type), detail);
}

static int script_enter(keel_sm_t *sm, int state, script_data *d) {
  if (state != 9) return KEEL_SM_OK;
  switch (d->enter_mode) {
  case 1: CHECK_EQ(keel_sm_next_state(sm, 0), KEEL_EINVAL); break;
  case 2: CHECK_EQ(keel_sm_postpone(sm), KEEL_EINVAL); break;
  case 3: CHECK_EQ(keel_sm_next_event(sm, KEEL_SM_INTERNAL, NULL), KEEL_EINVAL); break;
  }
  return KEEL_SM_OK;
}

static void gname(char *buf, size_t len, uint64_t idx) {
  snprintf(buf, len, "g%llu", (unsigned long long)idx);
}

static int script_command(keel_sm_t *sm, int state, keel_sm_event *ev, script_data *d) {
  uint64_t v = msg_u64(ev->msg);
  char name[16];
  switch (keel_msg_tag(ev->msg)) {
  case SEQ: {
    const cmd *c = keel_msg_data(ev->msg);
    for (size_t i = 0; i < keel_msg_size(ev->msg) / sizeof *c; i++)
      CHECK_OK(keel_gs_cast(keel_self(), kt_msg_u64(c[i].tag, c[i].val)));
    return KEEL_SM_OK;
  }
  case PING: return KEEL_SM_OK;
  case GO: return keel_sm_next_state(sm, (int)v);
  case ST: return keel_sm_state_timeout(sm, (int64_t)v, kt_msg_u64(0, v));
  case ET: return keel_sm_event_timeout(sm, (int64_t)v, kt_msg_u64(0, v));
  case ET_SLEEP: CHECK_OK(keel_sm_event_timeout(sm, 1, NULL)); return keel_sleep((int64_t)v);
  case SLEEP_GO: CHECK_OK(keel_sleep((int64_t)v)); return keel_sm_next_state(sm, state + 1);
  case ET0_INSERT:
    CHECK_OK(keel_sm_event_timeout(sm, 0, NULL));
    return keel_sm_next_event(sm, KEEL_SM_INTERNAL, kt_msg_u64(PING, 0));
  case ST0_INSERT_GO:
    CHECK_OK(keel_sm_state_timeout(sm, 0, NULL));
    return keel_sm_next_event(sm, KEEL_SM_INTERNAL, kt_msg_u64(GO, (uint64_t)state + 1));
  case GT:
    gname(name, sizeof name, v / 1000000);
    return keel_sm_timeout(sm, name, (int64_t)(v % 1000000), kt_msg_u64(0, v % 1000000));
  case GU:
    gname(name, sizeof name, v / 1000000);
    return keel_sm_timeout_update(sm, name, kt_msg_u64(0, v % 1000000));
  case GC: gname(name, sizeof name, v); return keel_sm_timeout_cancel(sm, name);
  case SENT: return keel_send_after(keel_self(), (int64_t)v, keel_msg_new(SENTINEL, 0), NULL);
  case POSTPONE:
    if (state == 0) return keel_sm_postpone(sm);
    if (keel_local_get(KT_CTX_SLOT)) kt_logf("ctx:%s", (const char *)keel_local_get(KT_CTX_SLOT));
    if (ev->type == KEEL_SM_CALL) return keel_gs_reply(ev->from, kt_msg_u64(0, v * 10));
    return KEEL_SM_OK;
  case INSERT:
    CHECK_OK(keel_send(keel_self(), kt_msg_u64(PING, 99)));
    CHECK_OK(keel_sm_next_event(sm, KEEL_SM_INTERNAL, kt_msg_u64(PING, v)));
    return keel_sm_next_event(sm, KEEL_SM_INTERNAL, kt_msg_u64(PING, v + 1));
  case REPEAT: return keel_sm_repeat_state(sm);
  case ENTER_MODE: d->enter_mode = (int)v; return KEEL_SM_OK;
  case STOP_REPLY:
    CHECK_OK(keel_gs_reply(ev->from, kt_msg_u64(0, v)));
    return keel_gs_stopping(KEEL_REASON_NORMAL, NULL);
  case STOP_ERROR: return keel_gs_stopping(KEEL_REASON_ERROR, "bad %llu", (unsigned long long)v);
  case CRASH: return KEEL_EIO;
  case ST_GO:
    CHECK_OK(keel_sm_state_timeout(sm, (int64_t)v, kt_msg_u64(0, v)));
    return keel_sm_next_state(sm, state + 1);
  case GO_INSERT:
    CHECK_OK(keel_sm_next_state(sm, (int)v));
    return keel_sm_next_event(sm, KEEL_SM_INTERNAL, kt_msg_u64(PING, 77));
  }
  return KEEL_SM_OK;
}

static int script_handle(keel_sm_t *sm, int state, keel_sm_event *ev, void *data) {
  log_event(state, ev);
  if (ev->type == KEEL_SM_ENTER) return script_enter(sm, state, data);
  if (!ev->msg ||
      (ev->type != KEEL_SM_CAST && ev->type != KEEL_SM_CALL && ev->type != KEEL_SM_INTERNAL))
    return KEEL_SM_OK;
  return script_command(sm, state, ev, data);
}

static void script_terminate(keel_reason reason, int state, void *data) {
  (void)data;
  kt_logf("terminate:%s:%s:%d", keel_reason_name(reason.kind), reason.text, state);
}

static const keel_gen_statem script = {.init = script_init,
                                       .handle_event = script_handle,
                                       .state_enter = true,
                                       .terminate = script_terminate};

/* Starts the scripted machine and waits for its first enter call. */
static keel_pid_t script_start(uint64_t *insert) {
  kt_quiet();
  kt_log_reset();
  keel_pid_t pid;
  CHECK_OK(keel_sm_start(&script, insert, NULL, &pid, NULL));
  KT_WAIT_LOG(1);
  return pid;
}

/* How many events a want string lists. */
static size_t count_events(const char *want) {
  size_t n = 1;
  for (const char *c = want; *c; c++)
    n += *c == ',';
  return n;
}

/* Waits until the log (from index 1 on: after the initial enter call) holds
 * as many events as want lists, then compares. */
#define CHECK_SCRIPT(want)                                                                         \
  do {                                                                                             \
    KT_WAIT_LOG(count_events(want) + 1);                                                           \
    CHECK_LOG(1, want);                                                                            \
  } while (0)

KT_CASE(init_runs_the_first_enter_call_then_its_inserted_events_before_any_message) {
  uint64_t v = 7;
  keel_pid_t pid = script_start(&v);
  CHECK_OK(keel_gs_cast(pid, kt_msg_u64(PING, 1)));
  KT_WAIT_LOG(3);
  CHECK_LOG(0, "0:enter:0,0:internal:2:7,0:cast:2:1");
  kt_stop(pid);
}

KT_CASE(start_refuses_a_bad_behaviour_and_a_failing_init) {
  kt_quiet();
  keel_pid_t pid = 1;
  CHECK_EQ(keel_sm_start(NULL, NULL, NULL, &pid, NULL), KEEL_EINVAL);
  CHECK_EQ(pid, 0);
  keel_gen_statem none = {.init = script_init};
  CHECK_EQ(keel_sm_start(&none, NULL, NULL, &pid, NULL), KEEL_EINVAL);
  keel_gen_statem both = {
      .init = script_init, .handle_event = script_handle, KEEL_SM_STATES(lock_states)};
  CHECK_EQ(keel_sm_start(&both, NULL, NULL, &pid, NULL), KEEL_EINVAL);
  keel_gen_statem no_init = {.handle_event = script_handle};
  CHECK_EQ(keel_sm_start(&no_init, NULL, NULL, &pid, NULL), KEEL_EINVAL);
  /* an initial state with no handler */
  static const keel_sm_state one[] = {[1] = {"one", locked}};
  keel_gen_statem hole = {.init = script_init, KEEL_SM_STATES(one)};
  keel_gs_exit why;
  CHECK_EQ(keel_sm_start(&hole, NULL, NULL, &pid, &why), KEEL_EDOWN);
  CHECK(strstr(why.text, "initial state 0 has no handler") != NULL);
  /* a name in use */
  keel_gs_opts o = {.name = "taken"};
  keel_pid_t first;
  CHECK_OK(keel_sm_start(&pushbutton, NULL, &o, &first, NULL));
  CHECK_EQ(keel_sm_start(&pushbutton, NULL, &o, &pid, NULL), KEEL_EEXIST);
  kt_stop(first);
}

KT_CASE(postponed_events_wait_for_a_state_change_and_keep_their_order) {
  keel_pid_t pid = script_start(NULL);
  /* Postponed in state 0; a same-state transition does not retry them. */
  SEND_SEQ(pid, {POSTPONE, 1}, {POSTPONE, 2}, {GO, 0}, {POSTPONE, 3});
  CHECK_SCRIPT("0:cast:1:0,0:cast:15:1,0:cast:15:2,0:cast:3:0,0:cast:15:3");
  /* A state change: the enter call, then the postponed events oldest first,
   * then what came after. */
  SEND_SEQ(pid, {GO, 1}, {POSTPONE, 4});
  CHECK_SCRIPT("0:cast:1:0,0:cast:15:1,0:cast:15:2,0:cast:3:0,0:cast:15:3,"
               "0:cast:1:0,0:cast:3:1,1:enter:0,1:cast:15:1,1:cast:15:2,1:cast:15:3,"
               "1:cast:15:4");
  kt_stop(pid);
}

typedef struct caller_arg {
  keel_pid_t machine;
  uint64_t v;
  int64_t timeout;
} caller_arg;

static void postponed_caller(void *p) {
  caller_arg *a = p;
  keel_msg_t *reply = NULL;
  int rc = keel_gs_call(a->machine, kt_msg_u64(POSTPONE, a->v), &reply, a->timeout, NULL);
  if (rc == 0)
    kt_logf("reply:%llu", (unsigned long long)kt_u64(reply));
  else
    kt_logf("call:%s", keel_err_name(rc));
  keel_msg_free(reply);
}

KT_CASE(a_postponed_call_is_answered_from_a_later_state) {
  keel_pid_t pid = script_start(NULL);
  caller_arg a = {pid, 5, KT_LONG};
  CHECK(kt_spawn_on(postponed_caller, &a, 0) != 0);
  CHECK_SCRIPT("0:call:15:5");
  CHECK_OK(keel_gs_cast(pid, kt_msg_u64(GO, 1)));
  CHECK_SCRIPT("0:call:15:5,0:cast:3:1,1:enter:0,1:call:15:5,reply:50");
  kt_stop(pid);
}

KT_CASE(a_call_times_out_while_its_event_is_postponed) {
  keel_pid_t pid = script_start(NULL);
  keel_msg_t *reply = NULL;
  CHECK_EQ(keel_gs_call(pid, kt_msg_u64(POSTPONE, 1), &reply, 20, NULL), KEEL_ETIMEDOUT);
  CHECK(reply == NULL);
  CHECK_SCRIPT("0:call:15:1");
  CHECK(keel_is_alive(pid));
  kt_stop(pid);
}

KT_CASE(inserted_events_come_before_queued_ones_and_postponed_ones) {
  keel_pid_t pid = script_start(NULL);
  /* INSERT sends PING 99 to the mailbox, then inserts 5 and 6. */
  CHECK_OK(keel_gs_cast(pid, kt_msg_u64(INSERT, 5)));
  CHECK_SCRIPT("0:cast:16:5,0:internal:2:5,0:internal:2:6,0:info:2:99");
  /* With a state change: the inserted events, then the postponed ones. */
  SEND_SEQ(pid, {POSTPONE, 1}, {GO, 1});
  /* GO 1 cannot insert; INSERT in state 1 after the postponed one arrives. */
  CHECK_SCRIPT("0:cast:16:5,0:internal:2:5,0:internal:2:6,0:info:2:99,"
               "0:cast:1:0,0:cast:15:1,0:cast:3:1,1:enter:0,1:cast:15:1");
  kt_stop(pid);
}

KT_CASE(events_inserted_with_a_state_change_come_before_the_postponed_ones) {
  keel_pid_t pid = script_start(NULL);
  /* GO_INSERT changes state and inserts PING 77: the enter call (part of the
   * transition), then the inserted event, then the postponed one. */
  SEND_SEQ(pid, {POSTPONE, 1}, {GO_INSERT, 1});
  CHECK_SCRIPT("0:cast:1:0,0:cast:15:1,0:cast:23:1,1:enter:0,1:internal:2:77,1:cast:15:1");
  /* ST0_INSERT_GO sets a zero state timeout and inserts GO: the inserted
   * event comes first and its state change cancels the zero timeout before
   * it fires; a sentinel well behind shows it never does. */
  SEND_SEQ(pid, {ST0_INSERT_GO, 0}, {SENT, 30});
  CHECK_SCRIPT("0:cast:1:0,0:cast:15:1,0:cast:23:1,1:enter:0,1:internal:2:77,1:cast:15:1,"
               "1:cast:1:0,1:cast:9:0,1:internal:3:2,2:enter:1,2:cast:13:30,2:info:14:0");
  kt_stop(pid);
}

KT_CASE(a_state_timeout_survives_other_events_and_same_state_transitions) {
  keel_pid_t pid = script_start(NULL);
  SEND_SEQ(pid, {ST, 20}, {PING, 0}, {GO, 0}, {PING, 1});
  CHECK_SCRIPT("0:cast:1:0,0:cast:4:20,0:cast:2:0,0:cast:3:0,0:cast:2:1,0:state_timeout:0:20");
  /* restarted by setting it again: one timeout, with the last content */
  SEND_SEQ(pid, {ST, 1000}, {ST, 10});
  CHECK_SCRIPT("0:cast:1:0,0:cast:4:20,0:cast:2:0,0:cast:3:0,0:cast:2:1,0:state_timeout:0:20,"
               "0:cast:1:0,0:cast:4:1000,0:cast:4:10,0:state_timeout:0:10");
  kt_stop(pid);
}

KT_CASE(a_state_change_cancels_the_state_timeout_even_one_that_already_fired) {
  keel_pid_t pid = script_start(NULL);
  /* cancelled while running */
  SEND_SEQ(pid, {ST, 20}, {GO, 1}, {SENT, 200});
  CHECK_SCRIPT("0:cast:1:0,0:cast:4:20,0:cast:3:1,1:enter:0,1:cast:13:200,1:info:14:0");
  /* fired while a later handler slept, cancelled by that handler's state
   * change before its marker was handled */
  SEND_SEQ(pid, {ST, 1}, {SLEEP_GO, 30}, {SENT, 50});
  CHECK_SCRIPT("0:cast:1:0,0:cast:4:20,0:cast:3:1,1:enter:0,1:cast:13:200,1:info:14:0,"
               "1:cast:1:0,1:cast:4:1,1:cast:7:30,2:enter:1,2:cast:13:50,2:info:14:0");
  /* a state timeout set with a state change belongs to the new state */
  SEND_SEQ(pid, {ST_GO, 10});
  CHECK_SCRIPT("0:cast:1:0,0:cast:4:20,0:cast:3:1,1:enter:0,1:cast:13:200,1:info:14:0,"
               "1:cast:1:0,1:cast:4:1,1:cast:7:30,2:enter:1,2:cast:13:50,2:info:14:0,"
               "2:cast:1:0,2:cast:22:10,3:enter:2,3:state_timeout:0:10");
  kt_stop(pid);
}

KT_CASE(an_event_timeout_fires_only_when_no_event_comes_first) {
  keel_pid_t pid = script_start(NULL);
  SEND_SEQ(pid, {ET, 10});
  CHECK_SCRIPT("0:cast:1:0,0:cast:5:10,0:event_timeout:0:10");
  /* cancelled by the next event, although its timer already fired */
  SEND_SEQ(pid, {ET_SLEEP, 30}, {PING, 0}, {SENT, 60});
  CHECK_SCRIPT("0:cast:1:0,0:cast:5:10,0:event_timeout:0:10,"
               "0:cast:1:0,0:cast:6:30,0:cast:2:0,0:cast:13:60,0:info:14:0");
  /* a zero event timeout fires before the mailbox... */
  SEND_SEQ(pid, {ET, 0}, {PING, 2});
  CHECK_SCRIPT("0:cast:1:0,0:cast:5:10,0:event_timeout:0:10,"
               "0:cast:1:0,0:cast:6:30,0:cast:2:0,0:cast:13:60,0:info:14:0,"
               "0:cast:1:0,0:cast:5:0,0:event_timeout:0:0,0:cast:2:2");
  /* ...but not before an inserted event, which cancels it */
  SEND_SEQ(pid, {ET0_INSERT, 0}, {SENT, 30});
  CHECK_SCRIPT("0:cast:1:0,0:cast:5:10,0:event_timeout:0:10,"
               "0:cast:1:0,0:cast:6:30,0:cast:2:0,0:cast:13:60,0:info:14:0,"
               "0:cast:1:0,0:cast:5:0,0:event_timeout:0:0,0:cast:2:2,"
               "0:cast:1:0,0:cast:8:0,0:internal:2:0,0:cast:13:30,0:info:14:0");
  kt_stop(pid);
}

KT_CASE(generic_timeouts_survive_state_changes_and_can_be_updated_or_cancelled) {
  keel_pid_t pid = script_start(NULL);
  /* g1 and g2 across two state changes; g2's content updated, g1 cancelled */
  SEND_SEQ(pid, {GT, 1000000 + 20}, {GT, 2000000 + 20}, {GO, 1}, {GO, 0}, {GU, 2000000 + 7},
           {GC, 1}, {SENT, 500});
  CHECK_SCRIPT("0:cast:1:0,0:cast:10:1000020,0:cast:10:2000020,0:cast:3:1,1:enter:0,"
               "1:cast:3:0,0:enter:1,0:cast:11:2000007,0:cast:12:1,0:cast:13:500,"
               "0:timeout:g2:7,0:info:14:0");
  /* an update of a timeout that is not running fires it at once */
  SEND_SEQ(pid, {GU, 3000000 + 9}, {PING, 0});
  CHECK_SCRIPT("0:cast:1:0,0:cast:10:1000020,0:cast:10:2000020,0:cast:3:1,1:enter:0,"
               "1:cast:3:0,0:enter:1,0:cast:11:2000007,0:cast:12:1,0:cast:13:500,"
               "0:timeout:g2:7,0:info:14:0,"
               "0:cast:1:0,0:cast:11:3000009,0:timeout:g3:9,0:cast:2:0");
  kt_stop(pid);
}

KT_CASE(repeat_state_runs_the_enter_call_again_without_retrying_postponed_events) {
  keel_pid_t pid = script_start(NULL);
  SEND_SEQ(pid, {POSTPONE, 1}, {REPEAT, 0}, {GO, 1});
  CHECK_SCRIPT("0:cast:1:0,0:cast:15:1,0:cast:17:0,0:enter:0,0:cast:3:1,1:enter:0,1:cast:15:1");
  kt_stop(pid);
}

KT_CASE(an_enter_call_may_not_change_state_postpone_or_insert) {
  static const char *why[] = {NULL, "a state enter call may not change state",
                              "a state enter call may not postpone",
                              "a state enter call may not insert events"};
  for (int mode = 1; mode <= 3; mode++) {
    keel_pid_t pid = script_start(NULL);
    keel_ref_t ref;
    CHECK_OK(keel_monitor(pid, &ref));
    SEND_SEQ(pid, {ENTER_MODE, (uint64_t)mode}, {GO, 9});
    char text[256];
    CHECK_EQ(kt_wait_down(ref, pid, text, sizeof text), KEEL_REASON_ERROR);
    CHECK(strstr(text, why[mode]) != NULL);
    CHECK(strstr(text, "(state 9)") != NULL);
    /* terminate ran with that reason, in the state entered */
    char want[300];
    snprintf(want, sizeof want, "terminate:error:%s:9", text);
    CHECK_STR(kt_log_since(kt_log_len() - 1), want);
  }
}

KT_CASE(stop_and_reply_answers_the_caller_then_stops) {
  keel_pid_t pid = script_start(NULL);
  keel_ref_t ref;
  CHECK_OK(keel_monitor(pid, &ref));
  CHECK_EQ(kt_call_u64(pid, STOP_REPLY, 42), 42);
  char text[256];
  CHECK_EQ(kt_wait_down(ref, pid, text, sizeof text), KEEL_REASON_NORMAL);
  CHECK_LOG(1, "0:call:19:42,terminate:normal::0");
}

KT_CASE(stop_and_crash_reasons_are_the_exit_reason) {
  keel_pid_t pid = script_start(NULL);
  keel_ref_t ref;
  char text[256];
  CHECK_OK(keel_monitor(pid, &ref));
  SEND_SEQ(pid, {GO, 3}, {STOP_ERROR, 7});
  CHECK_EQ(kt_wait_down(ref, pid, text, sizeof text), KEEL_REASON_ERROR);
  CHECK_STR(text, "bad 7");
  CHECK_SCRIPT("0:cast:1:0,0:cast:3:3,3:enter:0,3:cast:20:7,terminate:error:bad 7:3");

  pid = script_start(NULL);
  CHECK_OK(keel_monitor(pid, &ref));
  keel_msg_t *reply = NULL;
  keel_gs_exit why;
  CHECK_EQ(keel_gs_call(pid, kt_msg_u64(CRASH, 0), &reply, KT_LONG, &why), KEEL_EDOWN);
  CHECK(strstr(why.text, "KEEL_EIO") != NULL);
  CHECK_EQ(kt_wait_down(ref, pid, text, sizeof text), KEEL_REASON_ERROR);
  CHECK_STR(text, why.text);
}

KT_CASE(a_postponed_event_is_retried_with_its_senders_context) {
  keel_gs_set_context_hooks(kt_ctx_hooks());
  keel_pid_t pid = script_start(NULL);
  ctx_set("req-1");
  CHECK_OK(keel_gs_cast(pid, kt_msg_u64(POSTPONE, 1)));
  ctx_set("req-2");
  CHECK_OK(keel_gs_cast(pid, kt_msg_u64(GO, 1))); /* retries it while handling this */
  ctx_set(NULL);
  CHECK_SCRIPT("0:cast:15:1,0:cast:3:1,1:enter:0,1:cast:15:1,ctx:req-1");
  keel_gs_set_context_hooks(NULL);
  kt_stop(pid);
}

KT_CASE(plain_messages_are_info_events) {
  keel_pid_t pid = script_start(NULL);
  CHECK_OK(keel_send(pid, kt_msg_u64(PING, 3)));
  CHECK_SCRIPT("0:info:2:3");
  kt_stop(pid);
}

KT_MAIN(KT_ENTRY(code_lock_opens_on_its_code_and_relocks_on_its_state_timeout),
        KT_ENTRY(pushbutton_turns_on_and_off_and_counts_its_pushes),
        KT_ENTRY(a_supervisor_restarts_a_crashed_machine),
        KT_ENTRY(init_runs_the_first_enter_call_then_its_inserted_events_before_any_message),
        KT_ENTRY(start_refuses_a_bad_behaviour_and_a_failing_init),
        KT_ENTRY(postponed_events_wait_for_a_state_change_and_keep_their_order),
        KT_ENTRY(a_postponed_call_is_answered_from_a_later_state),
        KT_ENTRY(a_call_times_out_while_its_event_is_postponed),
        KT_ENTRY(inserted_events_come_before_queued_ones_and_postponed_ones),
        KT_ENTRY(events_inserted_with_a_state_change_come_before_the_postponed_ones),
        KT_ENTRY(a_state_timeout_survives_other_events_and_same_state_transitions),
        KT_ENTRY(a_state_change_cancels_the_state_timeout_even_one_that_already_fired),
        KT_ENTRY(an_event_timeout_fires_only_when_no_event_comes_first),
        KT_ENTRY(generic_timeouts_survive_state_changes_and_can_be_updated_or_cancelled),
        KT_ENTRY(repeat_state_runs_the_enter_call_again_without_retrying_postponed_events),
        KT_ENTRY(an_enter_call_may_not_change_state_postpone_or_insert),
        KT_ENTRY(stop_and_reply_answers_the_caller_then_stops),
        KT_ENTRY(stop_and_crash_reasons_are_the_exit_reason),
        KT_ENTRY(a_postponed_event_is_retried_with_its_senders_context),
        KT_ENTRY(plain_messages_are_info_events))
