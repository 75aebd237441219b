/* kt_otp.h - helpers shared by the behaviour tests in tests/otp/.
 *
 * Not a test file itself (the build only picks up test_*.c). On top of
 * keel_test.h and the runtime tests' helpers (clock, sanitizer scaling,
 * selective receives, KT_WAIT_UNTIL) it adds:
 *
 *   - an event log: a mutex-protected list of short strings that callbacks
 *     running in any process append to ("start:a", "stop:b:shutdown"), and
 *     that a test compares with the sequence it expects;
 *   - a quiet report handler, so that the crashes a test provokes on purpose
 *     do not flood stderr (KT_VERBOSE=1 shows them again);
 *   - the test worker: a gen_server started by a supervisor child spec, that
 *     logs its start and its terminate, answers pings, and crashes or stops
 *     on request; and a "stubborn" child that ignores its shutdown signal.
 */
#ifndef KT_OTP_H
#define KT_OTP_H

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "rt/kt_rt.h"

/* ---- event log -------------------------------------------------------------------- */

#define KT_LOG_MAX 8192

static pthread_mutex_t kt_log_mu = PTHREAD_MUTEX_INITIALIZER;
static char *kt_log_ev[KT_LOG_MAX];
static size_t kt_log_n;

static inline void kt_logf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline void kt_logf(const char *fmt, ...) {
  char buf[128];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  pthread_mutex_lock(&kt_log_mu);
  if (kt_log_n < KT_LOG_MAX) kt_log_ev[kt_log_n++] = strdup(buf);
  pthread_mutex_unlock(&kt_log_mu);
}

static inline void kt_log_reset(void) {
  pthread_mutex_lock(&kt_log_mu);
  for (size_t i = 0; i < kt_log_n; i++)
    free(kt_log_ev[i]);
  kt_log_n = 0;
  pthread_mutex_unlock(&kt_log_mu);
}

static inline size_t kt_log_len(void) {
  pthread_mutex_lock(&kt_log_mu);
  size_t n = kt_log_n;
  pthread_mutex_unlock(&kt_log_mu);
  return n;
}

/* The events from index `from` on, joined with ','. Returns a static buffer. */
static inline const char *kt_log_since(size_t from) {
  static char out[16384];
  size_t len = 0;
  out[0] = 0;
  pthread_mutex_lock(&kt_log_mu);
  for (size_t i = from; i < kt_log_n; i++) {
    int w = snprintf(out + len, sizeof out - len, "%s%s", i > from ? "," : "", kt_log_ev[i]);
    if (w < 0 || (size_t)w >= sizeof out - len) break;
    len += (size_t)w;
  }
  pthread_mutex_unlock(&kt_log_mu);
  return out;
}

/* Fails the test unless the events since `from` are exactly `want`. */
#define CHECK_LOG(from, want)                                                          \
  do {                                                                                 \
    const char *kt_got_ = kt_log_since(from);                                          \
    if (strcmp(kt_got_, (want)) != 0) {                                                \
      fprintf(stderr, "%s:%d: log mismatch\n  want: %s\n  got:  %s\n", __FILE__,      \
              __LINE__, (want), kt_got_);                                              \
      fflush(stderr);                                                                  \
      abort();                                                                         \
    }                                                                                  \
  } while (0)

/* Waits (sleeping) until the log holds at least n events. */
#define KT_WAIT_LOG(n) KT_WAIT_UNTIL(kt_log_len() >= (size_t)(n))

/* ---- reports ------------------------------------------------------------------------- */

static atomic_ulong kt_crash_reports;

static inline void kt_quiet_report(const keel_report *r, void *ud) {
  (void)ud;
  if (r->kind == KEEL_REPORT_CRASH) atomic_fetch_add(&kt_crash_reports, 1);
  if (getenv("KT_VERBOSE"))
    fprintf(stderr, "report %d %s: %s\n", (int)r->kind, r->name, r->reason ? r->reason : "");
}

/* Installs the quiet report handler (call at the start of each case). */
static inline void kt_quiet(void) { keel_rt_set_report_handler(kt_quiet_report, NULL); }

/* ---- small message helpers ----------------------------------------------------------- */

static inline keel_msg_t *kt_msg_u64(uint32_t tag, uint64_t v) {
  keel_msg_t *m = keel_msg_copy(tag, &v, sizeof v);
  CHECK(m != NULL);
  return m;
}

/* Calls `server` with a tagged u64 request and returns the u64 reply. */
static inline uint64_t kt_call_u64(keel_pid_t server, uint32_t tag, uint64_t v) {
  keel_msg_t *reply = NULL;
  keel_gs_exit why;
  int rc = keel_gs_call(server, kt_msg_u64(tag, v), &reply, KT_LONG, &why);
  if (rc != 0) {
    fprintf(stderr, "kt_call_u64: %s (%s)\n", keel_err_name(rc), rc == KEEL_EDOWN ? why.text : "");
    abort();
  }
  uint64_t out = kt_u64(reply);
  keel_msg_free(reply);
  return out;
}

/* Monitors pid and waits for it to be gone; returns the reason kind. */
static inline keel_reason_kind kt_await_exit(keel_pid_t pid, char *text, size_t len) {
  keel_ref_t ref;
  CHECK_OK(keel_monitor(pid, &ref));
  return kt_wait_down(ref, pid, text, len);
}

/* ---- the test worker (a gen_server for supervisor tests) ---------------------------- */

/* Worker requests (calls and casts). */
enum {
  KW_PING = 1,        /* call: replies with the worker's value (u64) */
  KW_CRASH = 2,       /* cast or call: stops with reason error "boom N" (N from payload) */
  KW_EXIT_NORMAL = 3, /* cast: stops with reason normal */
  KW_EXIT_SHUTDOWN = 4, /* cast: stops with reason shutdown */
  KW_SLEEP = 5,       /* call: sleeps payload ms, then replies with the value */
};

/* What a child spec's arg points to. */
typedef struct kt_worker_cfg {
  const char *id;        /* in the log lines */
  int fail_start;        /* non-zero: the start function returns this code */
  bool ignore;           /* the start function returns KEEL_SUP_IGNORE */
  bool stubborn;         /* spawn a process that ignores its shutdown signal */
  const char *name;      /* register the worker under this name */
  uint64_t value;        /* what PING answers (simple_one_for_one: the args) */
} kt_worker_cfg;

typedef struct kt_worker {
  const kt_worker_cfg *cfg;
  uint64_t value;
} kt_worker;

typedef struct kt_worker_init {
  const kt_worker_cfg *cfg;
  const void *args;
  size_t args_len;
} kt_worker_init;

static inline int kt_worker_init_cb(void *arg, void **state) {
  kt_worker_init *wi = arg;
  kt_worker *w = calloc(1, sizeof *w);
  if (!w) return KEEL_ENOMEM;
  /* freed on any exit, also a kill (terminate does not run then) */
  if (keel_on_exit(free, w) != 0) {
    free(w);
    return KEEL_ENOMEM;
  }
  w->cfg = wi->cfg;
  w->value = wi->cfg->value;
  if (wi->args && wi->args_len == sizeof(uint64_t)) memcpy(&w->value, wi->args, sizeof w->value);
  if (wi->args)
    kt_logf("start:%s:%llu", wi->cfg->id, (unsigned long long)w->value);
  else
    kt_logf("start:%s", wi->cfg->id);
  *state = w;
  return 0;
}

static inline int kt_worker_request(kt_worker *w, keel_msg_t *m, keel_msg_t **reply) {
  uint64_t arg = keel_msg_size(m) == sizeof(uint64_t) ? kt_u64(m) : 0;
  switch (keel_msg_tag(m)) {
  case KW_PING:
    if (reply) *reply = kt_msg_u64(KW_PING, w->value);
    return KEEL_GS_REPLY;
  case KW_SLEEP:
    keel_sleep((int64_t)arg);
    if (reply) *reply = kt_msg_u64(KW_SLEEP, w->value);
    return KEEL_GS_REPLY;
  case KW_CRASH: return keel_gs_stopping(KEEL_REASON_ERROR, "boom %llu", (unsigned long long)arg);
  case KW_EXIT_NORMAL: return keel_gs_stopping(KEEL_REASON_NORMAL, NULL);
  case KW_EXIT_SHUTDOWN: return keel_gs_stopping(KEEL_REASON_SHUTDOWN, NULL);
  default: return KEEL_EINVAL;
  }
}

static inline int kt_worker_call(void *st, keel_gs_from from, keel_msg_t **req,
                                 keel_msg_t **reply) {
  (void)from;
  return kt_worker_request(st, *req, reply);
}

static inline int kt_worker_cast(void *st, keel_msg_t **msg) {
  return kt_worker_request(st, *msg, NULL);
}

static inline void kt_worker_terminate(keel_reason reason, void *st) {
  kt_worker *w = st;
  kt_logf("stop:%s:%s", w->cfg->id, keel_reason_name(reason.kind));
}

__attribute__((unused)) static const keel_gen_server kt_worker_beh = {
    .init = kt_worker_init_cb,
    .handle_call = kt_worker_call,
    .handle_cast = kt_worker_cast,
    .handle_info = NULL,
    .terminate = kt_worker_terminate,
};

/* A child that traps exits and ignores everything, its shutdown included:
 * only a kill ends it. */
static inline void kt_stubborn_main(void *arg) {
  const kt_worker_cfg *cfg = arg;
  kt_logf("start:%s", cfg->id);
  for (;;) {
    keel_msg_t *m = NULL;
    if (keel_receive(&m, KEEL_INFINITY) != 0) continue;
    if (keel_msg_kind_of(m) == KEEL_MSG_EXIT) kt_logf("ignored:%s", cfg->id);
    keel_msg_free(m);
  }
}

/* keel_sup_start_fn for the test worker; arg is a kt_worker_cfg. */
static inline int kt_worker_start(void *arg, const void *args, size_t args_len, keel_pid_t *pid) {
  const kt_worker_cfg *cfg = arg;
  if (cfg->fail_start) {
    kt_logf("fail:%s", cfg->id);
    return cfg->fail_start;
  }
  if (cfg->ignore) {
    kt_logf("ignore:%s", cfg->id);
    return KEEL_SUP_IGNORE;
  }
  if (cfg->stubborn) {
    keel_spawn_opts so;
    keel_spawn_opts_init(&so);
    so.link = true;
    so.trap_exit = true;
    return keel_spawn(kt_stubborn_main, (void *)cfg, &so, pid);
  }
  kt_worker_init wi = {cfg, args, args_len};
  keel_gs_opts o;
  keel_gs_opts_init(&o);
  o.link = true;
  o.trap_exit = true; /* so terminate runs (and logs) on the supervisor's shutdown */
  o.name = cfg->name;
  return keel_gs_start(&kt_worker_beh, &wi, &o, pid, NULL);
}

/* A worker child spec with the defaults (permanent, default shutdown). */
static inline keel_sup_child_spec kt_worker_spec(const kt_worker_cfg *cfg) {
  keel_sup_child_spec c;
  memset(&c, 0, sizeof c);
  c.id = cfg->id;
  c.start = kt_worker_start;
  c.arg = (void *)cfg;
  c.restart = KEEL_SUP_PERMANENT;
  c.shutdown = KEEL_SUP_SHUTDOWN_DEFAULT;
  c.type = KEEL_SUP_WORKER;
  return c;
}

/* A child spec for a nested supervisor. */
static inline keel_sup_child_spec kt_sup_child_spec(const char *id, const keel_sup_spec *spec) {
  keel_sup_child_spec c;
  memset(&c, 0, sizeof c);
  c.id = id;
  c.supervisor = spec;
  c.restart = KEEL_SUP_PERMANENT;
  c.shutdown = KEEL_SUP_SHUTDOWN_INFINITY;
  return c;
}

/* The current pid of child id (0 when not running or unknown). */
static inline keel_pid_t kt_child_pid(keel_pid_t sup, const char *id) {
  keel_pid_t pid = 0;
  int rc = keel_sup_which_pid(sup, id, &pid);
  return rc == 0 ? pid : 0;
}

/* Waits until child id runs under a pid other than `old` (and not 0). */
static inline keel_pid_t kt_wait_new_pid(keel_pid_t sup, const char *id, keel_pid_t old) {
  keel_pid_t now = 0;
  KT_WAIT_UNTIL((now = kt_child_pid(sup, id)) != 0 && now != old);
  return now;
}

/* Stops a supervisor (or any gen_server) and waits until it is gone. */
static inline void kt_stop(keel_pid_t server) {
  CHECK_OK(keel_gs_stop(server, KEEL_REASON_SHUTDOWN, NULL, KEEL_INFINITY));
  CHECK(!keel_is_alive(server));
}

/* Default supervisor spec. */
static inline keel_sup_spec kt_sup_spec(keel_sup_strategy strategy,
                                        const keel_sup_child_spec *children, size_t n) {
  keel_sup_spec s;
  memset(&s, 0, sizeof s);
  s.strategy = strategy;
  s.children = children;
  s.nchildren = n;
  return s;
}

/* ---- a context carried by calls and casts -------------------------------------------- */

/* A stand-in for the logger's correlation id: a string in a process-local
 * slot, which the hooks of kt_ctx_hooks() (for keel_gs_set_context_hooks)
 * carry from a caller to the server running its call or cast. */
#define KT_CTX_SLOT (KEEL_LOCAL_USER + 1)

static inline void *kt_ctx_capture(void) {
  const char *cur = keel_local_get(KT_CTX_SLOT);
  return cur ? strdup(cur) : NULL;
}

static inline void *kt_ctx_install(const void *blob) {
  void *prev = keel_local_get(KT_CTX_SLOT);
  keel_local_set(KT_CTX_SLOT, strdup(blob));
  return prev;
}

static inline void kt_ctx_restore(void *prev) {
  free(keel_local_get(KT_CTX_SLOT));
  keel_local_set(KT_CTX_SLOT, prev);
}

static inline const keel_gs_context_hooks *kt_ctx_hooks(void) {
  static const keel_gs_context_hooks hooks = {kt_ctx_capture, kt_ctx_install, kt_ctx_restore};
  return &hooks;
}

#endif
