/* observe.c - the runtime seen from outside: processes and schedulers.
 *
 * The observer, the health checks, the alert manager and the metrics need to
 * look at every process without stopping any. The process table is
 * type-stable (a slot is never freed while the runtime runs), so a reader may
 * walk it from any thread: it reads a slot's state word, then the fields it
 * wants with relaxed loads, then the state word again, and keeps the reading
 * only if the slot still holds the same incarnation. Every field read here is
 * atomic (the owner bumps its counters with a relaxed load and store, see
 * KEEL__OWNER_ADD), so the walk is not a data race, only a slightly stale
 * view: each value is one the process had during the walk.
 */
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "rt/internal.h"

static const char *status_name(uint32_t st) {
  switch (st) {
  case KEEL__ST_RUNNABLE: return "runnable";
  case KEEL__ST_RUNNING: return "running";
  case KEEL__ST_WAITING: return "waiting";
  case KEEL__ST_EXITING: return "exiting";
  default: return "free";
  }
}

static const char *wait_name(uint32_t mask) {
  if (mask & KEEL__W_REPLY) return "reply";
  if (mask & KEEL__W_IO) return "io";
  if (mask & KEEL__W_MSG) return "message";
  if (mask & KEEL__W_TIMER) return "timer";
  if (mask & KEEL__W_SIG) return "signal";
  return "";
}

/* Reads slot p into *out; false when the slot holds no live process or was
 * reused while being read. */
static bool read_slot(keel__proc *p, uint64_t now_ms, keel_proc_info *out) {
  uint64_t sw = atomic_load_explicit(&p->sw, memory_order_acquire);
  uint32_t st = KEEL__SW_ST(sw);
  if (st == KEEL__ST_FREE) return false;
  out->pid = KEEL__PID(KEEL__SW_GEN(sw), p->idx);
  out->parent = atomic_load_explicit(&p->parent, memory_order_relaxed);
  for (int i = 0; i < KEEL__NAME_MAX && i < (int)sizeof out->name; i++)
    out->name[i] = __atomic_load_n(&p->name[i], __ATOMIC_RELAXED);
  out->name[sizeof out->name - 1] = 0;
  out->status = status_name(st);
  out->waiting_for = st == KEEL__ST_WAITING ? wait_name(KEEL__SW_MASK(sw)) : "";
  out->scheduler = atomic_load_explicit(&p->home, memory_order_relaxed);
  out->mailbox_len = keel__mailbox_len_of(p);
  out->messages_in = atomic_load_explicit(&p->mbox_in, memory_order_relaxed);
  out->messages_handled = atomic_load_explicit(&p->msgs_handled, memory_order_relaxed);
  out->memory = sizeof(keel__proc) + atomic_load_explicit(&p->stack_bytes, memory_order_relaxed);
  uint64_t born = atomic_load_explicit(&p->born_ms, memory_order_relaxed);
  out->age_ms = now_ms > born ? (int64_t)(now_ms - born) : 0;
  /* acquire above, then this load: if the generation is unchanged, no new
   * spawn wrote the fields between the two loads. */
  atomic_thread_fence(memory_order_acquire);
  uint64_t sw2 = atomic_load_explicit(&p->sw, memory_order_relaxed);
  return KEEL__SW_GEN(sw2) == KEEL__SW_GEN(sw) && KEEL__SW_ST(sw2) != KEEL__ST_FREE;
}

size_t keel_rt_processes(bool (*fn)(const keel_proc_info *info, void *ud), void *ud) {
  if (!fn || atomic_load_explicit(&keel__g.state, memory_order_acquire) != 1) return 0;
  uint64_t now_ms = keel__coarse_ms();
  size_t n = 0;
  keel_proc_info info;
  /* Chunks are published in order with release stores: stop at the first
   * one not yet allocated. */
  for (uint32_t c = 0; c < KEEL__MAX_CHUNKS; c++) {
    keel__proc *chunk = atomic_load_explicit(&keel__g.chunks[c], memory_order_acquire);
    if (!chunk) break;
    for (uint32_t i = 0; i < KEEL__CHUNK_SIZE; i++) {
      if (!read_slot(&chunk[i], now_ms, &info)) continue;
      n++;
      if (!fn(&info, ud)) return n;
    }
  }
  return n;
}

int keel_rt_process_info(keel_pid_t pid, keel_proc_info *out) {
  if (atomic_load_explicit(&keel__g.state, memory_order_acquire) != 1) return KEEL_ESTATE;
  keel__proc *p = keel__lookup_live(pid);
  if (!p || !out) return p ? KEEL_EINVAL : KEEL_ENOPROC;
  if (!read_slot(p, keel__coarse_ms(), out) || out->pid != pid) return KEEL_ENOPROC;
  return 0;
}

/* The link and monitor sets are the owner's. It publishes each change
 * through set_seq (a sequence lock: odd while it writes) and replaces a
 * set's array only under its sig_lock (proc.c's vectors); sig_pid, under the
 * same lock, names the incarnation that accepts signals: 0 once it ended,
 * before its sets are freed. So a reader holding sig_lock has an array that
 * stays allocated and the proof that it is pid's set, not a later
 * incarnation's of the same slot; it copies with relaxed loads and keeps the
 * copy only if set_seq was even and unchanged around it.
 *
 * Another process's link, unlink or monitor reaches the owner as a signal
 * that does not wake it (signal.c): a sleeping process would show a stale set
 * for as long as it sleeps. Its pending signals sit in the queue under
 * sig_lock, so the reader applies them to its copy, in order, as the owner
 * will: the copy is the set as the rest of the node already sees it. The
 * working copy is allocated before the lock is taken (never under a
 * spinlock), and again larger if the set grew meanwhile. */
enum { SET_LINKS, SET_MONITORS, SET_MONITORED_BY };

static void set_del_pid(keel__mon *w, size_t *n, keel_pid_t pid) {
  for (size_t i = 0; i < *n; i++)
    if (w[i].pid == pid) {
      w[i] = w[--*n];
      return;
    }
}

static void set_del_ref(keel__mon *w, size_t *n, keel_ref_t ref) {
  for (size_t i = 0; i < *n; i++)
    if (w[i].ref == ref) {
      w[i] = w[--*n];
      return;
    }
}

static bool set_has_pid(const keel__mon *w, size_t n, keel_pid_t pid) {
  for (size_t i = 0; i < n; i++)
    if (w[i].pid == pid) return true;
  return false;
}

/* Under p's sig_lock: the owner's set as one consistent copy into w (room
 * entries), retried while the owner writes. SIZE_MAX when it does not fit. */
static size_t set_snapshot(keel__proc *p, int which, keel__mon *w, size_t room) {
  for (unsigned spins = 0;; spins++) {
    uint32_t s1 = atomic_load_explicit(&p->set_seq, memory_order_acquire);
    if (!(s1 & 1)) {
      size_t n;
      if (which == SET_LINKS) {
        const keel__pidvec *v = &p->links;
        n = __atomic_load_n(&v->n, __ATOMIC_ACQUIRE);
        for (size_t i = 0; i < n && i < room; i++)
          w[i] = (keel__mon){.ref = 0, .pid = __atomic_load_n(&v->v[i], __ATOMIC_ACQUIRE)};
      } else {
        const keel__monvec *v = which == SET_MONITORS ? &p->monitors : &p->monitored_by;
        n = __atomic_load_n(&v->n, __ATOMIC_ACQUIRE);
        for (size_t i = 0; i < n && i < room; i++)
          w[i] = (keel__mon){.ref = __atomic_load_n(&v->v[i].ref, __ATOMIC_ACQUIRE),
                             .pid = __atomic_load_n(&v->v[i].pid, __ATOMIC_ACQUIRE)};
      }
      /* the acquire loads above happen before this second look at set_seq
       * (no fence: ThreadSanitizer does not model fences); one that read a
       * store of a write section makes this load see that section's odd
       * set_seq or later */
      if (atomic_load_explicit(&p->set_seq, memory_order_relaxed) == s1)
        return n <= room ? n : SIZE_MAX;
    }
    /* the owner is inside a change of a few stores; if it was preempted
     * there, let it run */
    if (spins < 64)
      keel__cpu_relax();
    else
      sched_yield();
  }
}

/* Under p's sig_lock: the copy in w (n entries, room in all) with p's
 * pending link and monitor signals applied in order; SIZE_MAX when they do
 * not fit. */
static size_t set_apply_pending(const keel__proc *p, int which, keel__mon *w, size_t n,
                                size_t room) {
  for (const keel__sig *g = p->sig_head; g; g = g->next) {
    if (which == SET_LINKS) {
      if (g->type == KEEL__SIG_LINK && !set_has_pid(w, n, g->from)) {
        if (n == room) return SIZE_MAX;
        w[n++] = (keel__mon){.ref = 0, .pid = g->from};
      } else if (g->type == KEEL__SIG_UNLINK || g->type == KEEL__SIG_LINK_EXIT) {
        set_del_pid(w, &n, g->from);
      }
    } else if (which == SET_MONITORED_BY) {
      if (g->type == KEEL__SIG_MONITOR) {
        if (n == room) return SIZE_MAX;
        w[n++] = (keel__mon){.ref = g->ref, .pid = g->from};
      } else if (g->type == KEEL__SIG_DEMONITOR) {
        set_del_ref(w, &n, g->ref);
      }
    }
  }
  return n;
}

static int copy_set(keel_pid_t pid, int which, keel_pid_t *out, size_t cap, size_t *n) {
  if (atomic_load_explicit(&keel__g.state, memory_order_acquire) != 1) return KEEL_ESTATE;
  if (!n || (cap && !out)) return KEEL_EINVAL;
  keel__proc *p = pid ? keel__slot(KEEL__PID_IDX(pid)) : NULL;
  if (!p) return KEEL_ENOPROC;
  size_t room = 16, got = 0;
  keel__mon *w;
  for (;;) {
    w = malloc(room * sizeof *w);
    if (!w) return KEEL_ENOMEM;
    keel__spin_lock(&p->sig_lock);
    if (p->sig_pid != pid) {
      keel__spin_unlock(&p->sig_lock);
      free(w);
      return KEEL_ENOPROC;
    }
    got = set_snapshot(p, which, w, room);
    if (got != SIZE_MAX) got = set_apply_pending(p, which, w, got, room);
    keel__spin_unlock(&p->sig_lock);
    if (got != SIZE_MAX) break;
    free(w);
    room *= 4;
  }
  for (size_t i = 0; i < got && i < cap; i++)
    out[i] = w[i].pid;
  free(w);
  *n = got;
  return 0;
}

int keel_rt_process_links(keel_pid_t pid, keel_pid_t *out, size_t cap, size_t *n) {
  return copy_set(pid, SET_LINKS, out, cap, n);
}

int keel_rt_process_monitors(keel_pid_t pid, keel_pid_t *out, size_t cap, size_t *n) {
  return copy_set(pid, SET_MONITORS, out, cap, n);
}

int keel_rt_process_monitored_by(keel_pid_t pid, keel_pid_t *out, size_t cap, size_t *n) {
  return copy_set(pid, SET_MONITORED_BY, out, cap, n);
}

int keel_rt_sched_info(int i, keel_sched_info *out) {
  if (atomic_load_explicit(&keel__g.state, memory_order_acquire) != 1) return KEEL_ESTATE;
  if (i < 0 || i >= keel__g.nsched || !out) return KEEL_EINVAL;
  keel__sched *s = &keel__g.scheds[i];
  out->id = i;
  out->stuck = atomic_load_explicit(&s->stuck, memory_order_relaxed);
  out->running = atomic_load_explicit(&s->running_pid, memory_order_relaxed);
  out->run_queue = keel__sched_queued(s);
  /* the sleep in progress counts too, or a scheduler asleep at the reading
   * would look busy; a reading just as a sleep ends may count a little less
   * (the readers treat a decrease as no idle time) */
  uint64_t since = atomic_load_explicit(&s->sleep_start_ns, memory_order_relaxed);
  uint64_t idle = atomic_load_explicit(&s->idle_ns, memory_order_relaxed);
  uint64_t now = keel__now_ns();
  out->idle_ns = idle + (since && now > since ? now - since : 0);
  out->watched = atomic_load(&keel__g.watchdog_running);
  out->switches = atomic_load_explicit(&s->n_switches, memory_order_relaxed);
  /* the hold the watchdog saw is over as soon as the scheduler switched,
   * even before the watchdog's next look clears it */
  uint64_t held = atomic_load_explicit(&s->held_since_ns, memory_order_relaxed);
  bool same = atomic_load_explicit(&s->held_switches, memory_order_relaxed) == out->switches;
  out->held_ms = held && same && now > held ? (int64_t)((now - held) / 1000000) : 0;
  return 0;
}

uint64_t keel_rt_started_ms(void) {
  return atomic_load_explicit(&keel__g.started_ms, memory_order_relaxed);
}

void keel_rt_set_proc_events(keel_proc_event_fn fn, void *ud) {
  /* ud first, then fn with release: whoever loads fn (acquire) sees its ud */
  atomic_store_explicit(&keel__g.proc_event_ud, ud, memory_order_relaxed);
  atomic_store_explicit(&keel__g.proc_event_fn, fn, memory_order_release);
}
