/* task.c - one function in its own process, and awaiting its result.
 *
 * Protocol. The caller arms a reference that is also its monitor on the task
 * (keel_await_ref), so the task's result (a keel_reply carrying that
 * reference) and the task's DOWN both end the caller's keel_await in O(1);
 * whichever comes first decides. Once keel_await has returned the reference
 * is disarmed, so a result that comes after a timeout is dropped by the
 * runtime. The work itself (function, argument, who to reply to, reference)
 * travels to the task as its first message, a "job": nothing the task needs
 * lives on the caller's stack, and a task killed before it ran leaks nothing
 * (the runtime frees its mailbox).
 *
 * keel_task_async spawns the task linked to the caller with the monitor made
 * atomically at spawn (the reference is chosen before, so the job can carry
 * it). A supervised task is started by the task supervisor (a
 * simple_one_for_one supervisor with temporary children), so the caller can
 * only monitor it after the supervisor returns its pid; the supervisor's
 * start function therefore sends the task a "hello" naming its caller, the
 * task monitors the caller and waits for the job or the caller's DOWN, and
 * a task whose caller died before sending the job exits without running.
 *
 * After a result, the DOWN of the task's normal exit may already have been
 * pulled into the mailbox (it raced the result); keel_demonitor then finds
 * no monitor, and we remove that DOWN ourselves so the caller never sees it.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "keel/error.h"
#include "keel/message.h"
#include "keel/process.h"
#include "keel/supervisor.h"
#include "keel/task.h"
#include "otp/gs_internal.h"

enum { TAG_JOB = 0x6b4a6f62u /* "kJob" */, TAG_HELLO = 0x6b48656cu /* "kHel" */ };

typedef struct task_job {
  keel_task_fn fn;
  void *arg;
  keel_pid_t reply_to; /* 0: nobody awaits (fire and forget) */
  keel_ref_t ref;
} task_job;

static bool is_tag(const keel_msg_t *m, void *arg) {
  return keel_msg_kind_of(m) == KEEL_MSG_USER && keel_msg_proto(m) == KEEL_PROTO_SYSTEM &&
         keel_msg_tag(m) == *(uint32_t *)arg;
}

typedef struct job_or_down {
  keel_ref_t down_ref;
} job_or_down;

static bool is_job_or_down(const keel_msg_t *m, void *arg) {
  job_or_down *jd = arg;
  if (keel_msg_kind_of(m) == KEEL_MSG_DOWN) return keel_msg_ref(m) == jd->down_ref;
  uint32_t tag = TAG_JOB;
  return is_tag(m, &tag);
}

static bool is_down_for(const keel_msg_t *m, void *arg) {
  return keel_msg_kind_of(m) == KEEL_MSG_DOWN && keel_msg_ref(m) == *(keel_ref_t *)arg;
}

/* Runs the job in m (which it frees), then exits normally or crashes. */
static void run_job(keel_msg_t *m) {
  task_job job;
  memcpy(&job, keel_msg_data(m), sizeof job);
  /* the caller's log context and current span, as a gen_server call has them */
  const keel_gs_context_hooks *used;
  void *prev = keel__gs_context_enter(m, &used);
  keel_msg_free(m);
  keel_msg_t *result = NULL;
  int rc = job.fn(job.arg, &result);
  keel__gs_context_leave(used, prev);
  if (rc < 0) {
    keel_msg_free(result);
    keel_exitf("task returned %s (%s)", keel_err_name(rc), keel_strerror(rc));
  }
  if (!job.reply_to) {
    keel_msg_free(result);
    return;
  }
  if (!result) result = keel_msg_new(0, 0);
  if (!result) keel_exitf("task result: out of memory");
  keel_reply(job.reply_to, job.ref, result);
}

static void task_linked_main(void *unused) {
  (void)unused;
  keel_msg_t *m = NULL;
  uint32_t tag = TAG_JOB;
  keel_receive_match(is_tag, &tag, &m, KEEL_INFINITY);
  run_job(m);
}

static void task_supervised_main(void *unused) {
  (void)unused;
  keel_msg_t *m = NULL;
  uint32_t tag = TAG_HELLO;
  keel_receive_match(is_tag, &tag, &m, KEEL_INFINITY);
  keel_pid_t caller;
  memcpy(&caller, keel_msg_data(m), sizeof caller);
  keel_msg_free(m);
  job_or_down jd = {0};
  if (keel_monitor(caller, &jd.down_ref) != 0) return;
  keel_receive_match(is_job_or_down, &jd, &m, KEEL_INFINITY);
  if (keel_msg_kind_of(m) == KEEL_MSG_DOWN) { /* the caller is gone: nobody wants this */
    keel_msg_free(m);
    return;
  }
  keel_demonitor(jd.down_ref);
  run_job(m);
}

static int send_job(keel_pid_t to, keel_task_fn fn, void *arg, keel_pid_t reply_to,
                    keel_ref_t ref) {
  task_job job = {.fn = fn, .arg = arg, .reply_to = reply_to, .ref = ref};
  keel_msg_t *m = keel_msg_copy(TAG_JOB, &job, sizeof job);
  if (!m) return KEEL_ENOMEM;
  keel_msg_set_proto(m, KEEL_PROTO_SYSTEM);
  return keel_send(to, keel__gs_with_context(m));
}

int keel_task_async(keel_task_fn fn, void *arg, keel_task_t *out) {
  if (!fn || !out) return KEEL_EINVAL;
  memset(out, 0, sizeof *out);
  if (!keel_self()) return KEEL_ENOTPROC;
  keel_ref_t ref;
  keel_spawn_opts so;
  keel_spawn_opts_init(&so);
  so.link = true;
  so.monitor = true;
  so.await_monitor = true;
  so.monitor_ref = &ref;
  so.name = "task";
  keel_pid_t pid;
  int rc = keel_spawn(task_linked_main, NULL, &so, &pid);
  if (rc) return rc;
  rc = send_job(pid, fn, arg, keel_self(), ref);
  if (rc) { /* no memory for the job: take the task down again */
    keel_unlink(pid);
    keel_exit_signal(pid, KEEL_REASON_KILL, NULL);
    keel_await_cancel(ref);
    keel_demonitor(ref);
    return rc;
  }
  out->pid = pid;
  out->ref = ref;
  out->linked = true;
  return 0;
}

/* The task has finished: forget the monitor (and a DOWN that raced the
 * result into the mailbox) and the link (and an EXIT already queued). */
static void forget(keel_task_t *t, bool down_seen) {
  if (!down_seen && keel_demonitor(t->ref) == KEEL_ENOENT) {
    keel_msg_t *m = NULL;
    if (keel_receive_match(is_down_for, &t->ref, &m, KEEL_NOWAIT) == 0) keel_msg_free(m);
  }
  if (t->linked) keel_unlink(t->pid);
  t->ref = 0;
}

int keel_task_await(keel_task_t *t, keel_msg_t **result, int64_t timeout_ms, keel_gs_exit *why) {
  if (result) *result = NULL;
  if (!t || !result) return KEEL_EINVAL;
  if (!keel_self()) return KEEL_ENOTPROC;
  if (!t->ref) return KEEL_ENOENT;
  keel_msg_t *m = NULL;
  int rc = keel_await(t->ref, &m, keel_timeout_or(timeout_ms, KEEL_TASK_DEFAULT_TIMEOUT));
  if (rc == KEEL_ETIMEDOUT) {
    keel_demonitor(t->ref); /* the task runs on; its result will be dropped */
    t->ref = 0;
    return rc;
  }
  if (rc) return rc;
  if (keel_msg_kind_of(m) == KEEL_MSG_REPLY) {
    forget(t, false);
    *result = m;
    return 0;
  }
  keel_pid_t who;
  keel_reason r;
  keel_msg_exit_info(m, &who, &r);
  if (why) {
    why->kind = r.kind;
    snprintf(why->text, sizeof why->text, "%s", r.text);
  }
  keel_msg_free(m);
  forget(t, true);
  return KEEL_EDOWN;
}

int keel_task_await_many(keel_task_t *tasks, size_t n, keel_msg_t **results, int *codes,
                         int64_t timeout_ms) {
  if (n && (!tasks || !results)) return KEEL_EINVAL;
  if (!keel_self()) return KEEL_ENOTPROC;
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  int64_t start = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
  int first = 0;
  timeout_ms = keel_timeout_or(timeout_ms, KEEL_TASK_DEFAULT_TIMEOUT);
  for (size_t i = 0; i < n; i++) {
    int64_t left = timeout_ms == KEEL_NOWAIT ? KEEL_NOWAIT : KEEL_INFINITY;
    if (timeout_ms > 0) {
      clock_gettime(CLOCK_MONOTONIC, &ts);
      int64_t now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
      left = timeout_ms - (now - start);
      if (left <= 0) left = KEEL_NOWAIT; /* past the deadline: take only what is there */
    }
    int rc = keel_task_await(&tasks[i], &results[i], left, NULL);
    if (codes) codes[i] = rc;
    if (rc && !first) first = rc;
  }
  return first;
}

int keel_task_shutdown(keel_task_t *t, int64_t timeout_ms, keel_msg_t **result) {
  if (result) *result = NULL;
  if (!t) return KEEL_EINVAL;
  if (!keel_self()) return KEEL_ENOTPROC;
  if (!t->pid) return 0;
  timeout_ms = keel_timeout_or(timeout_ms, KEEL_TASK_DEFAULT_TIMEOUT);
  keel_pid_t pid = t->pid;
  keel_ref_t ref = t->ref;
  bool gone = false;
  if (t->linked) keel_unlink(pid);
  if (ref) {
    /* Take what has already come (this disarms ref: from here on the DOWN
     * comes to the mailbox, and a result that comes later is dropped). */
    keel_msg_t *m = NULL;
    if (keel_await(ref, &m, KEEL_NOWAIT) == 0) {
      if (keel_msg_kind_of(m) == KEEL_MSG_REPLY && result) {
        *result = m;
      } else {
        gone = keel_msg_kind_of(m) == KEEL_MSG_DOWN;
        keel_msg_free(m);
      }
    }
  } else if (keel_monitor(pid, &ref) != 0) {
    ref = 0;
    gone = true;
  }
  if (!gone) {
    keel_exit_signal(pid, KEEL_REASON_SHUTDOWN, NULL);
    keel_msg_t *d = NULL;
    if (keel_receive_match(is_down_for, &ref, &d, timeout_ms) == KEEL_ETIMEDOUT) {
      keel_exit_signal(pid, KEEL_REASON_KILL, NULL);
      keel_receive_match(is_down_for, &ref, &d, KEEL_INFINITY);
    }
    keel_msg_free(d);
  }
  t->ref = 0;
  t->pid = 0;
  return 0;
}

/* ---- task supervisor --------------------------------------------------- */

/* Runs in the supervisor: spawns the task linked to it and tells the task
 * who its caller is (args: the caller's pid). */
static int task_child_start(void *arg, const void *args, size_t args_len, keel_pid_t *pid) {
  (void)arg;
  if (args_len != sizeof(keel_pid_t)) return KEEL_EINVAL;
  keel_spawn_opts so;
  keel_spawn_opts_init(&so);
  so.link = true;
  so.name = "task";
  int rc = keel_spawn(task_supervised_main, NULL, &so, pid);
  if (rc) return rc;
  keel_msg_t *m = keel_msg_copy(TAG_HELLO, args, args_len);
  if (!m) {
    keel_unlink(*pid);
    keel_exit_signal(*pid, KEEL_REASON_KILL, NULL);
    return KEEL_ENOMEM;
  }
  keel_msg_set_proto(m, KEEL_PROTO_SYSTEM);
  keel_send(*pid, m);
  return 0;
}

static const keel_sup_child_spec task_template = {
    .id = "task",
    .start = task_child_start,
    .restart = KEEL_SUP_TEMPORARY,
    .shutdown = 5000,
    .type = KEEL_SUP_WORKER,
};

static const keel_sup_spec task_sup_spec = {
    .strategy = KEEL_SUP_SIMPLE_ONE_FOR_ONE,
    .intensity = 0,
    .children = &task_template,
    .nchildren = 1,
};

int keel_task_sup_start(const keel_sup_opts *opts, keel_pid_t *sup) {
  return keel_sup_start(&task_sup_spec, opts, sup, NULL);
}

int keel_task_sup_child_start(void *arg, const void *args, size_t args_len, keel_pid_t *pid) {
  (void)arg;
  (void)args;
  (void)args_len;
  keel_sup_opts o = {.name = NULL, .link = true};
  return keel_sup_start(&task_sup_spec, &o, pid, NULL);
}

static int start_supervised(keel_pid_t sup, keel_task_fn fn, void *arg, bool await,
                            keel_task_t *out) {
  keel_pid_t self = keel_self();
  if (!self) return KEEL_ENOTPROC;
  if (!sup || !fn) return KEEL_EINVAL;
  keel_pid_t pid = 0;
  int rc = keel_sup_start_child_args(sup, &self, sizeof self, &pid);
  if (rc) return rc;
  keel_ref_t ref = 0;
  if (await) {
    rc = keel_monitor(pid, &ref);
    if (rc == 0) rc = keel_await_ref(ref);
    if (rc) {
      if (ref) keel_demonitor(ref);
      keel_sup_terminate_child(sup, NULL, pid);
      return rc;
    }
  }
  rc = send_job(pid, fn, arg, await ? self : 0, ref);
  if (rc) {
    keel_sup_terminate_child(sup, NULL, pid);
    if (ref) {
      keel_await_cancel(ref);
      keel_demonitor(ref);
    }
    return rc;
  }
  if (out) {
    out->pid = pid;
    out->ref = ref;
    out->linked = false;
  }
  return 0;
}

int keel_task_sup_async(keel_pid_t sup, keel_task_fn fn, void *arg, keel_task_t *out) {
  if (!out) return KEEL_EINVAL;
  memset(out, 0, sizeof *out);
  return start_supervised(sup, fn, arg, true, out);
}

int keel_task_sup_start_child(keel_pid_t sup, keel_task_fn fn, void *arg, keel_pid_t *pid) {
  keel_task_t t;
  memset(&t, 0, sizeof t);
  int rc = start_supervised(sup, fn, arg, false, &t);
  if (pid) *pid = rc ? 0 : t.pid;
  return rc;
}
