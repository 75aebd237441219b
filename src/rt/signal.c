/* signal.c - control signals: exit, link, unlink, monitor, demonitor.
 *
 * Signals are not messages. Each process has a short queue of them under a
 * spinlock, separate from its mailbox, and handles all pending signals before
 * it looks at a message and whenever it resumes from a wait, so an exit signal
 * is never stuck behind a flooded mailbox.
 *
 * The queue is closed (sig_pid = 0) under the same lock when the process
 * ends. A sender that finds it closed, or owned by a newer incarnation,
 * knows the target is dead and answers itself: keel_link returns
 * KEEL_ENOPROC, keel_monitor sends the caller a DOWN with reason noproc.
 * Signals that were queued but not handled when the process ended count as
 * received (the target was alive when they came): keel__proc_finalize applies
 * them and then tells every link and monitor the real exit reason. Together these give Erlang's
 * rule: linking to or monitoring a dead process yields noproc, at once.
 *
 * Links are symmetric: each side keeps the other's pid in its own link set,
 * which only its own process changes (publishing each change so that an
 * observer may copy the set: keel_rt_process_links, proc.c's vectors). An exit signal that arrives
 * from a pid no longer in the set (unlinked meanwhile) is dropped.
 *
 * Order between a sender's messages and its later exit signal is kept: before
 * a trapped exit signal becomes a message, everything already in the mailbox
 * is moved ahead of it.
 */
#include <stdlib.h>
#include <string.h>

#include "rt/internal.h"

int keel__signal_send(keel_pid_t to, keel__sig_type type, keel_pid_t from, keel_ref_t ref,
                      keel_reason_kind reason, const char *text) {
  if (!to) return KEEL_ENOPROC;
  keel__proc *p = keel__slot(KEEL__PID_IDX(to));
  if (!p) return KEEL_ENOPROC;
  size_t len = text ? strlen(text) : 0;
  keel__sig *sig = malloc(sizeof *sig + len + 1);
  if (!sig) return KEEL_ENOMEM;
  sig->next = NULL;
  sig->type = (uint8_t)type;
  sig->reason = (uint8_t)reason;
  sig->from = from;
  sig->ref = ref;
  sig->hook_fn = NULL;
  sig->hook_arg = NULL;
  memcpy(sig->text, text ? text : "", len + 1);

  return keel__signal_post(p, to, sig);
}

/* Queues a prepared signal on p (the slot of `to`), consuming sig. */
int keel__signal_post(keel__proc *p, keel_pid_t to, keel__sig *sig) {
  keel__sig_type type = (keel__sig_type)sig->type;
  keel__spin_lock(&p->sig_lock);
  if (p->sig_pid != to) {
    keel__spin_unlock(&p->sig_lock);
    free(sig);
    return KEEL_ENOPROC;
  }
  if (p->sig_tail)
    p->sig_tail->next = sig;
  else
    p->sig_head = sig;
  p->sig_tail = sig;
  atomic_store_explicit(&p->sig_pending, 1, memory_order_seq_cst);
  keel__spin_unlock(&p->sig_lock);
  if (type != KEEL__SIG_LINK && type != KEEL__SIG_UNLINK && type != KEEL__SIG_MONITOR &&
      type != KEEL__SIG_DEMONITOR && type != KEEL__SIG_HOOK)
    keel__wake(p, KEEL__PID_GEN(to), KEEL__W_SIG);
  /* Bookkeeping signals need not wake a sleeper: they are handled at its next
   * turn, and nothing it waits for depends on them. */
  return 0;
}

/* Turns an exit signal into a KEEL_MSG_EXIT message at the end of the
 * mailbox, after everything that arrived before it. */
static void deliver_exit_msg(keel__proc *p, keel_pid_t from, keel_reason_kind kind,
                             const char *text, bool from_link) {
  size_t len = strlen(text);
  struct keel_msg *m = keel__msg_alloc(KEEL_MSG_EXIT, 0, len + 1);
  if (!m) return;
  m->to = p->pid;
  m->from = from;
  m->reason = (uint8_t)kind;
  m->flags = from_link ? KEEL__MF_FROM_LINK : 0;
  memcpy(m->data, text, len + 1);
  m->size = len;
  keel__mailbox_move_all(p);
  m->next = NULL;
  if (p->save_tail)
    p->save_tail->next = m;
  else
    p->save_head = m;
  p->save_tail = m;
  KEEL__OWNER_ADD(p->save_len, 1);
}

static void apply_exit(keel__proc *p, keel_pid_t from, keel_reason_kind kind, const char *text,
                       bool from_link) {
  /* an untrappable kill keeps its text (an operator's reason, admin port) */
  if (kind == KEEL_REASON_KILL) keel__proc_die(p, KEEL_REASON_KILLED, text);
  if (p->trap_exit) {
    deliver_exit_msg(p, from, kind, text, from_link);
    return;
  }
  if (kind == KEEL_REASON_NORMAL) {
    if (from == p->pid) keel__proc_die(p, KEEL_REASON_NORMAL, NULL);
    return;
  }
  keel__proc_die(p, kind, text);
}

bool keel__signal_bookkeep(keel__proc *p, const keel__sig *sig) {
  switch (sig->type) {
  case KEEL__SIG_LINK:
    if (!keel__pidvec_has(&p->links, sig->from)) keel__pidvec_add(p, &p->links, sig->from);
    return true;
  case KEEL__SIG_UNLINK: keel__pidvec_del(p, &p->links, sig->from); return true;
  case KEEL__SIG_MONITOR: keel__monvec_add(p, &p->monitored_by, sig->ref, sig->from); return true;
  case KEEL__SIG_DEMONITOR: keel__monvec_del(p, &p->monitored_by, sig->ref, NULL); return true;
  case KEEL__SIG_HOOK: keel__exit_hook_add(p, sig->hook_fn, sig->hook_arg); return true;
  default: return false;
  }
}

keel__sig *keel__signals_take(keel__proc *p, bool close) {
  keel__spin_lock(&p->sig_lock);
  if (close) p->sig_pid = 0; /* from now on senders see noproc themselves */
  keel__sig *sig = p->sig_head;
  p->sig_head = p->sig_tail = NULL;
  atomic_store_explicit(&p->sig_pending, 0, memory_order_relaxed);
  keel__spin_unlock(&p->sig_lock);
  return sig;
}

void keel__signals_handle(keel__proc *p) {
  if (p->hold_exits) return;
  if (!atomic_load_explicit(&p->sig_pending, memory_order_acquire)) return;
  keel__sig *sig = keel__signals_take(p, false);
  while (sig) {
    keel__sig *next = sig->next;
    if (keel__signal_bookkeep(p, sig)) {
      free(sig);
      sig = next;
      continue;
    }
    switch (sig->type) {
    case KEEL__SIG_LINK_EXIT:
      if (!keel__pidvec_del(p, &p->links, sig->from)) break; /* unlinked meanwhile */
      /* fall through */
    case KEEL__SIG_EXIT: {
      if (sig->reason == KEEL_REASON_KILL || !p->trap_exit) {
        /* We may not come back: put the rest back first so finalize answers
         * pending link/monitor requests. */
        keel__spin_lock(&p->sig_lock);
        if (next) {
          keel__sig *last = next;
          while (last->next)
            last = last->next;
          last->next = p->sig_head;
          if (!p->sig_head) p->sig_tail = last;
          p->sig_head = next;
          atomic_store_explicit(&p->sig_pending, 1, memory_order_relaxed);
        }
        keel__spin_unlock(&p->sig_lock);
        next = NULL;
      }
      keel_pid_t from = sig->from;
      keel_reason_kind kind = (keel_reason_kind)sig->reason;
      bool from_link = sig->type == KEEL__SIG_LINK_EXIT;
      char textbuf[1024];
      strncpy(textbuf, sig->text, sizeof textbuf - 1);
      textbuf[sizeof textbuf - 1] = 0;
      free(sig);
      sig = NULL;
      apply_exit(p, from, kind, textbuf, from_link);
      break;
    }
    }
    free(sig);
    sig = next;
  }
}

int keel_exit_signal(keel_pid_t to, keel_reason_kind kind, const char *text) {
  if (!to || kind > KEEL_REASON_ERROR) return KEEL_EINVAL;
  keel__proc *self = keel__proc_self();
  keel_pid_t from = self ? self->pid : 0;
  if (self && to == self->pid) {
    /* exit(self(), Reason): handled now, as Erlang does */
    apply_exit(self, from, kind, text ? text : "", false);
    return 0;
  }
  return keel__signal_send(to, KEEL__SIG_EXIT, from, 0, kind, text);
}

int keel_link(keel_pid_t pid) {
  keel__proc *p = keel__proc_self();
  if (!p) return KEEL_ENOTPROC;
  if (!pid) return KEEL_EINVAL;
  if (pid == p->pid || keel__pidvec_has(&p->links, pid)) return 0;
  int rc = keel__pidvec_add(p, &p->links, pid);
  if (rc) return rc;
  rc = keel__signal_send(pid, KEEL__SIG_LINK, p->pid, 0, KEEL_REASON_NORMAL, NULL);
  if (rc) keel__pidvec_del(p, &p->links, pid);
  return rc;
}

int keel_unlink(keel_pid_t pid) {
  keel__proc *p = keel__proc_self();
  if (!p) return KEEL_ENOTPROC;
  if (keel__pidvec_del(p, &p->links, pid))
    keel__signal_send(pid, KEEL__SIG_UNLINK, p->pid, 0, KEEL_REASON_NORMAL, NULL);
  /* A LINK_EXIT from pid still queued as a signal is dropped by
   * keel__signals_handle because pid is no longer in our set; one that was
   * already turned into an EXIT message is removed here. Erlang leaves the
   * latter in the mailbox and tells callers to flush it by hand; keel makes
   * unlink a clean cut instead. */
  keel__mailbox_drop_link_exits(p, pid);
  return 0;
}

int keel_monitor(keel_pid_t pid, keel_ref_t *ref) {
  keel__proc *p = keel__proc_self();
  if (!p) return KEEL_ENOTPROC;
  if (!pid || !ref) return KEEL_EINVAL;
  keel_ref_t r = keel_make_ref();
  int rc = keel__monvec_add(p, &p->monitors, r, pid);
  if (rc) return rc;
  *ref = r;
  rc = keel__signal_send(pid, KEEL__SIG_MONITOR, p->pid, r, KEEL_REASON_NORMAL, NULL);
  if (rc == KEEL_ENOPROC) {
    keel__send_down(p->pid, r, pid, KEEL_REASON_NOPROC, NULL);
    return 0;
  }
  if (rc) keel__monvec_del(p, &p->monitors, r, NULL);
  return rc;
}

int keel_demonitor(keel_ref_t ref) {
  keel__proc *p = keel__proc_self();
  if (!p) return KEEL_ENOTPROC;
  keel_pid_t target;
  bool active = keel__monvec_del(p, &p->monitors, ref, &target);
  if (active) keel__signal_send(target, KEEL__SIG_DEMONITOR, p->pid, ref, KEEL_REASON_NORMAL, NULL);
  /* A DOWN still in the queue is dropped when it is reached, because ref is
   * no longer among our monitors (mailbox.c); one already pulled into the
   * kept-aside list is removed here. */
  bool flushed = keel__mailbox_drop_down(p, ref);
  return active || flushed ? 0 : KEEL_ENOENT;
}

int keel_on_exit_of(keel_pid_t pid, void (*fn)(void *), void *arg) {
  if (!pid || !fn) return KEEL_EINVAL;
  keel__proc *self = keel__proc_self();
  if (self && self->pid == pid) return keel_on_exit(fn, arg);
  keel__proc *p = keel__slot(KEEL__PID_IDX(pid));
  if (!p) return KEEL_ENOPROC;
  keel__sig *sig = malloc(sizeof *sig + 1);
  if (!sig) return KEEL_ENOMEM;
  memset(sig, 0, sizeof *sig + 1);
  sig->type = KEEL__SIG_HOOK;
  sig->from = self ? self->pid : 0;
  sig->hook_fn = fn;
  sig->hook_arg = arg;
  return keel__signal_post(p, pid, sig);
}

int keel_hold_exits(bool hold) {
  keel__proc *p = keel__proc_self();
  if (!p) return KEEL_ENOTPROC;
  if (hold) {
    p->hold_exits++;
    return 0;
  }
  if (p->hold_exits == 0) return KEEL_ESTATE;
  if (--p->hold_exits == 0) keel__signals_handle(p); /* what was held takes effect now */
  return 0;
}
