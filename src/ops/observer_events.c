/* observer_events.c - the observer's live events: the observer process, its
 * subscribers, and the hooks that feed it.
 *
 * EVENTS. One observer process relays events to subscribers. Sources: the
 * runtime's lifecycle hook (keel_rt_set_proc_events; one per node, installed
 * by keel_observer_start) and a supervisor event handler (keel_sup_subscribe).
 * Both run in other processes' contexts or mid-spawn/mid-exit on scheduler
 * threads, so they do only this: check an atomic mask of what any subscriber
 * wants, reserve a slot in a bounded count of events in flight (past
 * queue_max the event is dropped and counted at the source), and keel_send a
 * filled keel_observer_event to the observer process. The observer process
 * fans each event out to the subscribers that asked for its kind, at most
 * rate_max per subscriber per second and never to a subscriber whose mailbox
 * already holds mailbox_max messages; whatever is not delivered is counted
 * and the count rides on the next event that is (and in the stats). It also
 * sends each stats subscriber a keel_observer_stats every interval (its
 * receive timeout is the next one due), and monitors every subscriber so a
 * dead one is removed. The hooks use only static state (the struct `obs`
 * below): a hook may still be running on another thread just after it was
 * uninstalled, so nothing it touches is ever freed. That state is the
 * observer's share of the node's global state: there is one lifecycle hook
 * per node, so one observer per node. The subscriber table is a fixed array
 * under a mutex (subscribe and unsubscribe come from any thread and take
 * effect at once); the observer process holds the mutex only for short
 * non-waiting work (keel_send never waits). The observer's exit (stop,
 * crash, or keel_rt_stop destroying it) runs a cleanup registered with
 * keel_on_exit_of that uninstalls both hooks and forgets the subscribers.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/message.h"
#include "keel/observer.h"
#include "ops/observer_internal.h"

const char *keel_observer_kind_name(keel_observer_kind k) {
  switch (k) {
  case KEEL_OBS_PROC_STARTED: return "process_started";
  case KEEL_OBS_PROC_EXITED: return "process_exited";
  case KEEL_OBS_CHILD_RESTARTED: return "child_restarted";
  case KEEL_OBS_INTENSITY_EXCEEDED: return "intensity_exceeded";
  case KEEL_OBS_STATS: return "stats";
  }
  return "unknown";
}

/* Messages to the observer process (never seen by subscribers). */
enum {
  T_EVENT = 0x6B6F6201u, /* a keel_observer_event to fan out */
  T_SUB = 0x6B6F6202u,   /* a pid subscribed: monitor it, recompute timers */
  T_UNSUB = 0x6B6F6203u  /* a monitor ref to drop */
};

#define RATE_DEFAULT    1000
#define QUEUE_DEFAULT   4096
#define MAILBOX_DEFAULT 10000
#define STATS_DEFAULT   1000
#define STATS_MIN       10

typedef struct sub {
  keel_pid_t pid;
  unsigned kinds;
  int64_t interval_ms;
  /* the observer process's bookkeeping */
  keel_ref_t mon;
  uint64_t next_stats_ms; /* monotonic */
  uint64_t win_start_ms;
  uint32_t win_count;
  uint64_t dropped; /* since the last event it was sent */
  uint64_t dropped_total;
  uint64_t last_idle_ns, last_ns; /* scheduler idle sum at its previous stats */
} sub;

static struct {
  pthread_mutex_t lock; /* guards everything below but the atomics */
  keel_pid_t pid;       /* the observer process, 0 when not running */
  int sup_handle;
  keel_observer_start_opts opt;
  sub subs[KEEL_OBSERVER_MAX_SUBSCRIBERS];
  size_t nsubs;
  /* Read by the hooks without the lock. relaxed everywhere: each is a hint
   * or a counter; a hook that reads a stale `relay` sends one message to a
   * dead process (dropped by the runtime) or misses one event at the very
   * moment of a subscribe on another thread, never anything worse. A
   * subscribe that happens-before a spawn is seen by that spawn's hook (the
   * coherence of a single atomic). */
  _Atomic keel_pid_t relay;
  atomic_uint want;    /* union of the subscribers' kinds */
  atomic_uint pending; /* events sent to the observer and not yet handled */
  atomic_uint queue_max;
  atomic_ullong src_dropped[4]; /* dropped at the source (queue full or no memory),
                                   by kind (bit index) */
} obs = {.lock = PTHREAD_MUTEX_INITIALIZER};

static uint64_t mono_ms(void) {
  return keel__obs_mono_ns() / 1000000u;
}

static unsigned kind_index(unsigned bit) {
  return bit == KEEL_OBS_PROC_STARTED      ? 0
         : bit == KEEL_OBS_PROC_EXITED     ? 1
         : bit == KEEL_OBS_CHILD_RESTARTED ? 2
                                           : 3;
}

static void src_drop(unsigned bit) {
  atomic_fetch_add_explicit(&obs.src_dropped[kind_index(bit)], 1, memory_order_relaxed);
}

/* Sends ev to the observer if its bounded queue of events has room. */
static void relay_event(keel_pid_t to, const keel_observer_event *ev) {
  unsigned n = atomic_fetch_add_explicit(&obs.pending, 1, memory_order_relaxed);
  if (n >= atomic_load_explicit(&obs.queue_max, memory_order_relaxed)) {
    atomic_fetch_sub_explicit(&obs.pending, 1, memory_order_relaxed);
    src_drop(ev->kind);
    return;
  }
  keel_msg_t *m = keel_msg_copy(T_EVENT, ev, sizeof *ev);
  if (!m) {
    atomic_fetch_sub_explicit(&obs.pending, 1, memory_order_relaxed);
    src_drop(ev->kind);
    return;
  }
  keel_send(to, m);
}

/* The runtime's lifecycle hook: mid-spawn or mid-exit on a scheduler thread. */
static void on_proc_event(const keel_proc_event *pe, void *ud) {
  (void)ud;
  unsigned bit = pe->kind == KEEL_PROC_STARTED ? KEEL_OBS_PROC_STARTED : KEEL_OBS_PROC_EXITED;
  if (!(atomic_load_explicit(&obs.want, memory_order_relaxed) & bit)) return;
  keel_pid_t to = atomic_load_explicit(&obs.relay, memory_order_relaxed);
  if (!to || pe->pid == to) return;
  keel_observer_event ev;
  memset(&ev, 0, sizeof ev);
  ev.kind = (keel_observer_kind)bit;
  ev.pid = pe->pid;
  ev.parent = pe->parent;
  snprintf(ev.name, sizeof ev.name, "%s", pe->name ? pe->name : "");
  if (pe->kind == KEEL_PROC_EXITED) {
    ev.reason = (keel_reason_kind)pe->reason;
    snprintf(ev.reason_text, sizeof ev.reason_text, "%s", pe->reason_text ? pe->reason_text : "");
  }
  relay_event(to, &ev);
}

/* The supervisor handler: runs in the supervisor's process. */
static void on_sup_event(const keel_sup_event *se, void *ud) {
  (void)ud;
  unsigned bit;
  if (se->kind == KEEL_SUP_CHILD_RESTARTED)
    bit = KEEL_OBS_CHILD_RESTARTED;
  else if (se->kind == KEEL_SUP_INTENSITY_EXCEEDED)
    bit = KEEL_OBS_INTENSITY_EXCEEDED;
  else
    return;
  if (!(atomic_load_explicit(&obs.want, memory_order_relaxed) & bit)) return;
  keel_pid_t to = atomic_load_explicit(&obs.relay, memory_order_relaxed);
  if (!to) return;
  keel_observer_event ev;
  memset(&ev, 0, sizeof ev);
  ev.kind = (keel_observer_kind)bit;
  ev.pid = se->child;
  ev.supervisor = se->sup;
  ev.attempt = se->attempt;
  ev.reason = se->reason.kind;
  snprintf(ev.sup_name, sizeof ev.sup_name, "%s", se->sup_name ? se->sup_name : "");
  snprintf(ev.child_id, sizeof ev.child_id, "%s", se->child_id ? se->child_id : "");
  snprintf(ev.reason_text, sizeof ev.reason_text, "%s", se->reason.text ? se->reason.text : "");
  relay_event(to, &ev);
}

static void recompute_want_locked(void) {
  unsigned w = 0;
  for (size_t i = 0; i < obs.nsubs; i++)
    w |= obs.subs[i].kinds;
  atomic_store_explicit(&obs.want, w, memory_order_relaxed);
}

static sub *find_locked(keel_pid_t pid) {
  for (size_t i = 0; i < obs.nsubs; i++)
    if (obs.subs[i].pid == pid) return &obs.subs[i];
  return NULL;
}

static void remove_locked(sub *s) {
  size_t i = (size_t)(s - obs.subs);
  memmove(&obs.subs[i], &obs.subs[i + 1], (obs.nsubs - i - 1) * sizeof *s);
  obs.nsubs--;
  recompute_want_locked();
}

/* Uninstalls the hooks and forgets the subscribers. */
static void teardown_locked(void) {
  atomic_store_explicit(&obs.relay, 0, memory_order_relaxed);
  atomic_store_explicit(&obs.want, 0, memory_order_relaxed);
  keel_rt_set_proc_events(NULL, NULL);
  if (obs.sup_handle > 0) keel_sup_unsubscribe(obs.sup_handle);
  obs.sup_handle = 0;
  obs.nsubs = 0;
  obs.pid = 0;
}

/* Runs when the observer process is gone, whatever ended it. */
static void on_observer_exit(void *arg) {
  keel_pid_t pid = (keel_pid_t)(uintptr_t)arg;
  pthread_mutex_lock(&obs.lock);
  if (obs.pid == pid) teardown_locked();
  pthread_mutex_unlock(&obs.lock);
}

static uint64_t idle_sum(int n) {
  uint64_t t = 0;
  for (int i = 0; i < n; i++) {
    keel_sched_info si;
    if (keel_rt_sched_info(i, &si) == 0) t += si.idle_ns;
  }
  return t;
}

/* Sends the stats that are due; returns the time to the next one (ms) or
 * KEEL_INFINITY. */
/* Messages to subscribers, sent once obs.lock is released: keel_send may
 * yield (the sender's fairness budget), and a process that yields holding a
 * pthread mutex deadlocks its scheduler's next taker of it (found with 100
 * event streams subscribed, test_admin). */
typedef struct outbox {
  size_t n;
  keel_pid_t to[KEEL_OBSERVER_MAX_SUBSCRIBERS];
  keel_msg_t *m[KEEL_OBSERVER_MAX_SUBSCRIBERS];
} outbox;

static void outbox_add(outbox *o, keel_pid_t to, keel_msg_t *m) {
  o->to[o->n] = to;
  o->m[o->n++] = m;
}

static void outbox_send(outbox *o) {
  for (size_t i = 0; i < o->n; i++)
    keel_send(o->to[i], o->m[i]);
  o->n = 0;
}

static int64_t stats_tick(void) {
  uint64_t now = mono_ms();
  int64_t wait = KEEL_INFINITY;
  keel_observer_stats st;
  bool have = false;
  uint64_t idle = 0, now_ns = 0;
  outbox out = {0};
  pthread_mutex_lock(&obs.lock);
  for (size_t i = 0; i < obs.nsubs; i++) {
    sub *s = &obs.subs[i];
    if (!(s->kinds & KEEL_OBS_STATS)) continue;
    if (!s->next_stats_ms) s->next_stats_ms = now + (uint64_t)s->interval_ms;
    if (now >= s->next_stats_ms) {
      if (!have) {
        memset(&st, 0, sizeof st);
        st.time_ms = keel__obs_wall_ms();
        uint64_t started = keel_rt_started_ms();
        st.uptime_ms = now > started ? now - started : 0;
        keel_rt_stats_get(&st.rt);
        keel_sys_memory_get(&st.memory);
        st.schedulers = keel_sched_count();
        st.supervisors = keel_sup_list(NULL, 0);
        idle = idle_sum(st.schedulers);
        now_ns = keel__obs_mono_ns();
        have = true;
      }
      uint64_t from_ns = s->last_ns ? s->last_ns : keel_rt_started_ms() * 1000000u;
      uint64_t from_idle = s->last_ns ? s->last_idle_ns : 0;
      double wall = (double)(now_ns > from_ns ? now_ns - from_ns : 1) * st.schedulers;
      double u = 1.0 - (double)(idle > from_idle ? idle - from_idle : 0) / (wall > 0 ? wall : 1);
      st.utilisation = u < 0 ? 0 : u > 1 ? 1 : u;
      st.events_dropped = s->dropped_total;
      s->last_ns = now_ns;
      s->last_idle_ns = idle;
      keel_msg_t *m = keel_msg_copy(KEEL_OBSERVER_TAG_STATS, &st, sizeof st);
      if (m) outbox_add(&out, s->pid, m);
      s->next_stats_ms = now + (uint64_t)s->interval_ms;
    }
    int64_t d = (int64_t)(s->next_stats_ms - now);
    if (d < 1) d = 1; /* a receive timeout of 0 would mean "forever" */
    if (wait == KEEL_INFINITY || d < wait) wait = d;
  }
  pthread_mutex_unlock(&obs.lock);
  outbox_send(&out);
  return wait;
}

static void fan_out(keel_observer_event *ev) {
  uint64_t now = mono_ms();
  ev->time_ms = keel__obs_wall_ms();
  outbox out = {0};
  pthread_mutex_lock(&obs.lock);
  uint64_t lost[4];
  for (unsigned k = 0; k < 4; k++)
    lost[k] = atomic_exchange_explicit(&obs.src_dropped[k], 0, memory_order_relaxed);
  for (size_t i = 0; i < obs.nsubs; i++) {
    sub *s = &obs.subs[i];
    for (unsigned k = 0; k < 4; k++)
      if (lost[k] && (s->kinds & (1u << k))) {
        s->dropped += lost[k];
        s->dropped_total += lost[k];
      }
    if (!(s->kinds & ev->kind)) continue;
    if (now - s->win_start_ms >= 1000) {
      s->win_start_ms = now;
      s->win_count = 0;
    }
    keel_proc_info pi;
    bool full = keel_rt_process_info(s->pid, &pi) == 0 && pi.mailbox_len >= obs.opt.mailbox_max;
    if (s->win_count >= obs.opt.rate_max || full) {
      s->dropped++;
      s->dropped_total++;
      continue;
    }
    ev->dropped = s->dropped;
    keel_msg_t *m = keel_msg_copy(KEEL_OBSERVER_TAG_EVENT, ev, sizeof *ev);
    if (!m) {
      s->dropped++;
      s->dropped_total++;
      continue;
    }
    s->dropped = 0;
    s->win_count++;
    outbox_add(&out, s->pid, m);
  }
  pthread_mutex_unlock(&obs.lock);
  outbox_send(&out);
}

static void monitor_sub(keel_pid_t pid) {
  pthread_mutex_lock(&obs.lock);
  sub *s = find_locked(pid);
  if (s && !s->mon) {
    keel_ref_t ref;
    if (keel_monitor(pid, &ref) == 0) s->mon = ref;
  }
  pthread_mutex_unlock(&obs.lock);
}

static void sub_down(keel_ref_t ref) {
  pthread_mutex_lock(&obs.lock);
  for (size_t i = 0; i < obs.nsubs; i++)
    if (obs.subs[i].mon == ref) {
      remove_locked(&obs.subs[i]);
      break;
    }
  pthread_mutex_unlock(&obs.lock);
}

static void observer_main(void *arg) {
  (void)arg;
  int64_t wait = KEEL_INFINITY;
  for (;;) {
    keel_msg_t *m = NULL;
    int rc = keel_receive(&m, wait);
    if (rc == 0 && keel_msg_kind_of(m) == KEEL_MSG_DOWN) {
      sub_down(keel_msg_ref(m));
    } else if (rc == 0 && keel_msg_kind_of(m) == KEEL_MSG_USER) {
      uint32_t tag = keel_msg_tag(m);
      if (tag == T_EVENT && keel_msg_size(m) == sizeof(keel_observer_event)) {
        atomic_fetch_sub_explicit(&obs.pending, 1, memory_order_relaxed);
        fan_out(keel_msg_data(m));
      } else if (tag == T_SUB && keel_msg_size(m) == sizeof(keel_pid_t)) {
        keel_pid_t pid;
        memcpy(&pid, keel_msg_data(m), sizeof pid);
        monitor_sub(pid);
      } else if (tag == T_UNSUB && keel_msg_size(m) == sizeof(keel_ref_t)) {
        keel_ref_t ref;
        memcpy(&ref, keel_msg_data(m), sizeof ref);
        keel_demonitor(ref);
      }
    }
    keel_msg_free(m);
    wait = stats_tick();
  }
}

int keel_observer_start(const keel_observer_start_opts *o) {
  if (keel_sched_count() <= 0) return KEEL_ESTATE;
  pthread_mutex_lock(&obs.lock);
  if (obs.pid) { /* as every start of something running: left as it is */
    pthread_mutex_unlock(&obs.lock);
    return KEEL_ESTATE;
  }
  keel_observer_start_opts opt = o ? *o : (keel_observer_start_opts){0};
  if (!opt.rate_max) opt.rate_max = RATE_DEFAULT;
  if (!opt.queue_max) opt.queue_max = QUEUE_DEFAULT;
  if (!opt.mailbox_max) opt.mailbox_max = MAILBOX_DEFAULT;
  keel_spawn_opts so;
  keel_spawn_opts_init(&so);
  so.name = "keel_observer";
  keel_pid_t pid = 0;
  int rc = keel_spawn(observer_main, NULL, &so, &pid);
  if (rc) {
    pthread_mutex_unlock(&obs.lock);
    return rc;
  }
  obs.opt = opt;
  obs.pid = pid;
  obs.nsubs = 0;
  atomic_store_explicit(&obs.pending, 0, memory_order_relaxed);
  for (unsigned k = 0; k < 4; k++)
    atomic_store_explicit(&obs.src_dropped[k], 0, memory_order_relaxed);
  atomic_store_explicit(&obs.queue_max, opt.queue_max, memory_order_relaxed);
  atomic_store_explicit(&obs.want, 0, memory_order_relaxed);
  atomic_store_explicit(&obs.relay, pid, memory_order_relaxed);
  keel_rt_set_proc_events(on_proc_event, NULL);
  int h = keel_sup_subscribe(on_sup_event, NULL);
  obs.sup_handle = h > 0 ? h : 0;
  if (h <= 0) {
    teardown_locked();
    pthread_mutex_unlock(&obs.lock);
    keel_exit_signal(pid, KEEL_REASON_KILL, NULL);
    return h < 0 ? h : KEEL_ENOMEM;
  }
  pthread_mutex_unlock(&obs.lock);
  /* outside the lock: if it is already gone, the hook may not run: do its work */
  if (keel_on_exit_of(pid, on_observer_exit, (void *)(uintptr_t)pid) != 0)
    on_observer_exit((void *)(uintptr_t)pid);
  return 0;
}

static bool match_down(const keel_msg_t *m, void *arg) {
  return keel_msg_kind_of(m) == KEEL_MSG_DOWN && keel_msg_ref(m) == *(const keel_ref_t *)arg;
}

int keel_observer_stop(void) {
  pthread_mutex_lock(&obs.lock);
  keel_pid_t pid = obs.pid;
  if (pid) teardown_locked();
  pthread_mutex_unlock(&obs.lock);
  if (!pid) return 0;
  keel_pid_t self = keel_self();
  keel_ref_t ref = 0;
  bool wait = self && self != pid && keel_monitor(pid, &ref) == 0;
  keel_exit_signal(pid, KEEL_REASON_SHUTDOWN, NULL); /* not a crash: no report */
  if (wait) {
    keel_msg_t *m = NULL;
    if (keel_receive_match(match_down, &ref, &m, 5000) == 0)
      keel_msg_free(m);
    else
      keel_demonitor(ref); /* removes the DOWN should it come later */
  }
  return 0;
}

bool keel_observer_running(void) {
  pthread_mutex_lock(&obs.lock);
  bool r = obs.pid != 0;
  pthread_mutex_unlock(&obs.lock);
  return r;
}

int keel_observer_subscribe(keel_pid_t pid, unsigned kinds, int64_t stats_interval_ms) {
  if (!pid || !(kinds & KEEL_OBS_ALL) || stats_interval_ms < 0) return KEEL_EINVAL;
  if (!stats_interval_ms) stats_interval_ms = STATS_DEFAULT;
  if (stats_interval_ms < STATS_MIN) stats_interval_ms = STATS_MIN;
  if (!keel_is_alive(pid)) return KEEL_ENOPROC;
  pthread_mutex_lock(&obs.lock);
  keel_pid_t observer = obs.pid;
  if (!observer) {
    pthread_mutex_unlock(&obs.lock);
    return KEEL_ESTATE;
  }
  sub *s = find_locked(pid);
  if (!s) {
    if (obs.nsubs == KEEL_OBSERVER_MAX_SUBSCRIBERS) {
      pthread_mutex_unlock(&obs.lock);
      return KEEL_EBUSY;
    }
    s = &obs.subs[obs.nsubs++];
    memset(s, 0, sizeof *s);
    s->pid = pid;
  }
  s->kinds = kinds & KEEL_OBS_ALL;
  if (s->interval_ms != stats_interval_ms) s->next_stats_ms = 0; /* rescheduled by the observer */
  s->interval_ms = stats_interval_ms;
  recompute_want_locked();
  pthread_mutex_unlock(&obs.lock);
  /* the observer monitors it and recomputes its timer */
  keel_msg_t *m = keel_msg_copy(T_SUB, &pid, sizeof pid);
  if (m) keel_send(observer, m);
  return 0;
}

int keel_observer_unsubscribe(keel_pid_t pid) {
  pthread_mutex_lock(&obs.lock);
  sub *s = find_locked(pid);
  if (!s) {
    pthread_mutex_unlock(&obs.lock);
    return KEEL_ENOENT;
  }
  keel_ref_t mon = s->mon;
  keel_pid_t observer = obs.pid;
  remove_locked(s);
  pthread_mutex_unlock(&obs.lock);
  if (mon && observer) {
    keel_msg_t *m = keel_msg_copy(T_UNSUB, &mon, sizeof mon);
    if (m) keel_send(observer, m);
  }
  return 0;
}

size_t keel_observer_subscribers(void) {
  pthread_mutex_lock(&obs.lock);
  size_t n = obs.nsubs;
  pthread_mutex_unlock(&obs.lock);
  return n;
}
