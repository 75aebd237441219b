/* internal.h - the runtime's shared structures (not installed).
 *
 * Reading guide: a process (keel__proc) lives in a slot of the process table
 * (proc.c) and is run by a scheduler (keel__sched, sched.c). Its mailbox is a
 * lock-free multi-producer single-consumer queue of messages (mailbox.c); its
 * control signals (exit, link, monitor) go to a separate short queue under a
 * spinlock so that they overtake a flooded mailbox (signal.c). Timers and I/O
 * waits live on the scheduler's libuv loop (timer.c, io.c).
 *
 * The process state word. Every slot has one atomic 64-bit word `sw`:
 *   bits 63..32  generation: the upper half of the pid of the slot's current
 *                (or next) incarnation; bumped when a process is freed, so a
 *                stale pid never matches again
 *   bits 31..16  wait sequence: bumped at every wait, so a timer armed for
 *                one wait can never wake a later one
 *   bits 15..8   wait mask: what may end the current wait (KEEL__W_*)
 *   bits  7..0   status (KEEL__ST_*)
 * Only the scheduler running a process changes RUNNING/WAITING; any thread may
 * move WAITING -> RUNNABLE with a compare-and-swap, and whoever wins that CAS
 * owns the duty to enqueue the process. That single CAS is the whole wakeup
 * protocol: no lock, no lost wakeups (see keel__proc_park in sched.c).
 */
#ifndef KEEL_RT_INTERNAL_H
#define KEEL_RT_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* The runtime's own public headers only: src/rt/ sits at the bottom of the
 * layers (DESIGN.md) and never sees otp, ops or http (scripts/check-layers.sh). */
#include "keel/error.h"
#include "keel/message.h"
#include "keel/process.h"
#include "keel/runtime.h"
#include "rt/ctx.h"

#define KEEL__NAME_MAX    32
#define KEEL__RUNQ_SIZE   256 /* per-scheduler stealable ring; power of two */
#define KEEL__CHUNK_SHIFT 10  /* process table: chunks of 1024 slots */
#define KEEL__CHUNK_SIZE  (1u << KEEL__CHUNK_SHIFT)
#define KEEL__MAX_CHUNKS  65536 /* up to 64 Mi process slots */

/* ---- small helpers ------------------------------------------------------ */

static inline void keel__cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

/* A test-and-test-and-set spinlock for critical sections of a few
 * instructions (signal queues). Acquire on lock, release on unlock. */
typedef struct {
  atomic_int v;
} keel__spin;
void keel__spin_lock(keel__spin *l);
static inline void keel__spin_unlock(keel__spin *l) {
  atomic_store_explicit(&l->v, 0, memory_order_release);
}

uint64_t keel__now_ns(void); /* CLOCK_MONOTONIC */
/* CLOCK_MONOTONIC_COARSE in ms (a few ms of resolution): about 5 ns where
 * keel__now_ns costs about 24 ns here; for process ages, which spawn stamps. */
uint64_t keel__coarse_ms(void);
/* Absolute deadline (ms, CLOCK_MONOTONIC) for a timeout, never early; 0 for a
 * timeout of 0 or KEEL_INFINITY. */
uint64_t keel__deadline(int64_t timeout_ms);

/* A public timeout (keel/runtime.h: 0 the default dflt, KEEL_NOWAIT,
 * KEEL_INFINITY, > 0) in the waits' internal form: 0 checks only,
 * KEEL_INFINITY waits forever, > 0 ms; anything else comes back as
 * KEEL__BAD_TIMEOUT (callers answer KEEL_EINVAL). */
#define KEEL__BAD_TIMEOUT ((int64_t)-3)
static inline int64_t keel__timeout(int64_t t, int64_t dflt) {
  if (t == 0) t = dflt;
  if (t == KEEL_NOWAIT) return 0;
  return t >= 0 || t == KEEL_INFINITY ? t : KEEL__BAD_TIMEOUT;
}
bool keel__past(uint64_t deadline_ms); /* false for deadline 0 */

/* ---- messages ----------------------------------------------------------- */

enum {
  KEEL__MF_FROM_LINK = 1, /* an EXIT message caused by a link (keel_unlink removes it) */
  KEEL__MF_ATTACHED = 2,  /* a blob pointer follows the payload (keel_msg_attach) */
};

struct keel_msg {
  struct keel_msg *_Atomic next; /* mailbox link (MPSC) and kept-aside list link */
  keel_pid_t to;                 /* the receiving incarnation; stale deliveries are dropped */
  keel_pid_t from;
  keel_ref_t ref;
  uint32_t tag;
  uint8_t kind;   /* keel_msg_kind */
  uint8_t reason; /* EXIT/DOWN: keel_reason_kind; payload holds the text */
  uint8_t flags;  /* KEEL__MF_* */
  uint8_t proto;  /* keel_msg_proto */
  size_t size;
  _Alignas(16) unsigned char data[];
};

/* Vyukov's intrusive MPSC queue. Producers: one atomic exchange. The single
 * consumer never takes a lock; it may see a producer half-way (between its
 * exchange and its link store) and then treats the queue as momentarily
 * empty, or spins when it must see everything (keel__mbox_pop_all). */
typedef struct keel__mbox {
  struct keel_msg *_Atomic head; /* producers exchange here (newest) */
  struct keel_msg *_Atomic tail; /* consumer pops here (oldest); atomic only for keel__mbox_empty */
  struct keel_msg stub;
} keel__mbox;

/* ---- control signals ---------------------------------------------------- */

typedef enum {
  KEEL__SIG_EXIT = 1,  /* exit signal from keel_exit_signal */
  KEEL__SIG_LINK_EXIT, /* a linked process exited */
  KEEL__SIG_LINK,
  KEEL__SIG_UNLINK,
  KEEL__SIG_MONITOR,
  KEEL__SIG_DEMONITOR,
  KEEL__SIG_HOOK, /* keel_on_exit_of: add an exit hook */
} keel__sig_type;

typedef struct keel__sig {
  struct keel__sig *next;
  uint8_t type;
  uint8_t reason;
  keel_pid_t from;
  keel_ref_t ref;
  void (*hook_fn)(void *); /* HOOK */
  void *hook_arg;
  char text[]; /* EXIT reasons */
} keel__sig;

/* ---- processes ---------------------------------------------------------- */

enum {
  KEEL__ST_FREE = 0,
  KEEL__ST_RUNNABLE = 1,
  KEEL__ST_RUNNING = 2,
  KEEL__ST_WAITING = 3,
  KEEL__ST_EXITING = 4,
};
enum {
  KEEL__W_MSG = 1,   /* a message arrives */
  KEEL__W_SIG = 2,   /* a control signal arrives */
  KEEL__W_TIMER = 4, /* the wait's timer fires */
  KEEL__W_IO = 8,    /* an I/O or blocking-work completion */
  KEEL__W_REPLY = 16 /* a reply or DOWN for an armed reference (treated as MSG) */
};

#define KEEL__SW(gen, seq, mask, st)                                                               \
  (((uint64_t)(gen) << 32) | ((uint64_t)(seq) << 16) | ((uint64_t)(mask) << 8) | (uint64_t)(st))
#define KEEL__SW_GEN(sw)  ((uint32_t)((sw) >> 32))
#define KEEL__SW_SEQ(sw)  ((uint32_t)(((sw) >> 16) & 0xFFFF))
#define KEEL__SW_MASK(sw) ((uint32_t)(((sw) >> 8) & 0xFF))
#define KEEL__SW_ST(sw)   ((uint32_t)((sw)&0xFF))

#define KEEL__PID(gen, idx) (((uint64_t)(gen) << 32) | (uint64_t)(idx))
#define KEEL__PID_GEN(pid)  ((uint32_t)((pid) >> 32))
#define KEEL__PID_IDX(pid)  ((uint32_t)(pid))

/* What a process asks of its scheduler when it switches back to it. */
typedef enum { KEEL__REQ_YIELD = 1, KEEL__REQ_WAIT, KEEL__REQ_EXIT } keel__req;

typedef struct keel__pidvec {
  keel_pid_t *v;
  uint32_t n, cap;
} keel__pidvec;
typedef struct keel__mon {
  keel_ref_t ref;
  keel_pid_t pid;
} keel__mon;
typedef struct keel__monvec {
  keel__mon *v;
  uint32_t n, cap;
} keel__monvec;

/* Armed references (keel_await_ref): open addressing, linear probing. */
typedef struct keel__refslot {
  keel_ref_t ref;
  struct keel_msg *msg, *last; /* parked REPLY/DOWN messages for this ref, in arrival order */
} keel__refslot;
typedef struct keel__reftab {
  keel__refslot *v;
  uint32_t n, cap, tomb;
} keel__reftab;

typedef struct keel__exit_hook {
  struct keel__exit_hook *next;
  void (*fn)(void *);
  void *arg;
} keel__exit_hook;

typedef struct keel__stack {
  struct keel__stack *next; /* pool link */
  void *map;                /* start of the mapping: guard, then usable stack */
  size_t map_size;
  void *lo; /* usable range [lo, lo + size) */
  size_t size;
  size_t guard;
} keel__stack;

struct keel__timer;
struct keel__sched;

/* Field order is chosen for the cache: what a send and a context switch touch
 * comes first and fits in about three lines (measured: a ring hop touched six
 * lines of its target before). */
typedef struct keel__proc {
  /* --- hot: touched by senders and by every switch --- */
  _Atomic uint64_t sw;
  _Atomic uint64_t mbox_in;       /* messages pushed (producers, relaxed) */
  keel_pid_t pid;                 /* owner */
  atomic_int home;                /* scheduler it runs or last ran on */
  atomic_int sig_pending;         /* a hint for the owner; the truth is under sig_lock */
  int pinned;                     /* >0: must run only on `home` (libuv handles in use) */
  uint32_t wake_cause;            /* KEEL__W_* that ended the last wait (set by the waker) */
  struct keel__proc *runq_next;   /* link in scheduler lists (owned by the list) */
  keel__ctx ctx;                  /* owner: the saved stack pointer */
  int budget;                     /* messages left before a forced yield */
  int32_t reds;                   /* keel_consume's units left before it looks at the clock */
  uint64_t slice_ns;              /* keel_consume: when it first looked since the switch-in */
  uint64_t busy_ns;               /* keel_consume: when it first looked since it last waited */
  _Atomic int64_t hog_limit_ms;   /* keel_set_hog_limit; read by the watchdog */
  keel__req req;                  /* what it asked the scheduler for */
  uint32_t wait_mask;             /* for KEEL__REQ_WAIT */
  int hold_exits;                 /* >0: exit signals wait (keel_hold_exits, keel_blocking) */
  struct keel__timer *wait_timer; /* the timer of the current timed wait */
  struct keel_msg *save_head, *save_tail; /* kept aside by selective receive, in order */
  _Atomic uint64_t mbox_out;     /* messages popped from mbox (owner writes, observer reads) */
  _Atomic uint64_t msgs_handled; /* messages given to the process (owner writes) */
  bool trap_exit;
  bool fresh; /* never run: its context is built at its first run */
  /* Stream affinity (sched.c, keel__stream_check): a process that receives
   * whole budget slices from one sender follows it to its scheduler, and the
   * two are `coupled`, each naming the other, which keeps thieves from
   * splitting them again while both still name each other. */
  /* the partner's slot, set by the receiver for both; NULL none; each
   * clears its own at its wait, and at spawn */
  struct keel__proc *_Atomic coupled;
  int32_t migrate_to;     /* owner: scheduler id + 1 to move to at this yield; 0 none */
  uint32_t stream_n;      /* owner: receives in a row from stream_from */
  keel_pid_t stream_from; /* owner: sender of the last message received */
  keel__mbox mbox;

  /* --- shared, cold --- */
  keel__spin sig_lock;
  keel_pid_t sig_pid;             /* pid accepting signals; 0: closed (under sig_lock) */
  keel__sig *sig_head, *sig_tail; /* under sig_lock */
  struct keel__proc *free_next;   /* link in free-slot lists */
  char name[KEEL__NAME_MAX];      /* written by the owner, read racily by reports via atomics */

  /* --- owned by the process (or its scheduler while it is switched out), cold --- */
  uint32_t idx; /* slot index, fixed for the slot's life */
  keel__stack *stack;
  keel_proc_fn fn;
  void *arg;
  _Atomic size_t save_len; /* owner writes; the observer reads it for the mailbox length */
  /* the owner changes these, publishing through set_seq (odd: a change in
   * progress) and growing them under sig_lock; others copy them (proc.c) */
  _Atomic uint32_t set_seq;
  keel__pidvec links;
  keel__monvec monitors;     /* monitors this process holds (ref -> target) */
  keel__monvec monitored_by; /* monitors held on this process (ref -> watcher) */
  keel__reftab refs;         /* armed references */
  keel__exit_hook *exit_hooks;
  /* keel_before_exit: runs in the process when it calls keel_exit */
  void (*before_exit)(keel_reason_kind kind, const char *text, void *arg);
  void *before_exit_arg;
  void *local[KEEL_LOCAL_SLOTS]; /* keel_local_get/set */
  void (*io_cleanup)(void *); /* closes the libuv handle of an I/O wait if the process dies in it */
  void *io_cleanup_arg;
  keel_reason_kind exit_kind;
  char *exit_text;    /* malloc'd or NULL */
  uint64_t stream_ns; /* owner: keel__stream_check's last look (0: none since the last wait) */

  /* --- for the observer: written at spawn, read racily (relaxed) --- */
  _Atomic keel_pid_t parent;  /* the spawning process, 0 when spawned from outside */
  _Atomic size_t stack_bytes; /* the stack's usable size */
  _Atomic uint64_t born_ms;   /* keel__coarse_ms() at spawn */
} keel__proc;

/* Counters with one writer (the owner) that other threads read: a relaxed
 * load and store compile to a plain increment, with no locked instruction,
 * and are not a data race for readers. */
#define KEEL__OWNER_ADD(field, n)                                                                  \
  atomic_store_explicit(&(field), atomic_load_explicit(&(field), memory_order_relaxed) + (n),      \
                        memory_order_relaxed)

/* Messages queued for p, kept-aside ones included. Any thread (racy but
 * never negative: mbox_out is read before mbox_in, and mbox_in is bumped
 * before the push that mbox_out counts). */
static inline size_t keel__mailbox_len_of(keel__proc *p) {
  uint64_t out = atomic_load_explicit(&p->mbox_out, memory_order_relaxed);
  size_t saved = atomic_load_explicit(&p->save_len, memory_order_relaxed);
  uint64_t in = atomic_load_explicit(&p->mbox_in, memory_order_relaxed);
  return saved + (size_t)(in - out);
}

/* ---- timers ------------------------------------------------------------- */

typedef struct keel__timer {
  uv_timer_t uv;             /* first member: the handle's address is the timer's */
  struct keel__timer *next;  /* cache / cancel-request / hash-chain link */
  struct keel__timer *hnext; /* send timers: chain in the timer index */
  struct keel__sched *sched; /* owner: the loop the handle belongs to */
  /* wait timers (receive timeouts, sleep): */
  keel__proc *proc;   /* the waiting process */
  uint64_t sw_expect; /* the exact state word that this timer may wake */
  /* send timers (keel_send_after): */
  keel_ref_t ref;
  keel_pid_t to;
  struct keel_msg *msg; /* owned while armed */
  atomic_int state;     /* KEEL__TM_* */
  bool is_send;
} keel__timer;

enum { KEEL__TM_ARMED = 0, KEEL__TM_FIRED = 1, KEEL__TM_CANCELLED = 2 };

/* ---- schedulers --------------------------------------------------------- */

typedef struct keel__sched {
  int id;
  pthread_t thread;
  uv_loop_t loop;
  uv_async_t async;
  keel__ctx ctx;
  keel__proc *current;

  /* stealable FIFO ring (Go's runq): owner writes tail, owner and thieves CAS head */
  _Atomic uint32_t rq_head;
  _Atomic uint32_t rq_tail;
  keel__proc *_Atomic rq[KEEL__RUNQ_SIZE];
  /* the process most recently woken by a process running here: it runs next,
   * ahead of the ring, and thieves leave it alone unless this scheduler is
   * stuck in one process (Go's runnext) */
  keel__proc *_Atomic runnext;
  uint32_t runnext_streak;
  /* owner-only FIFO for pinned processes and deterministic mode */
  keel__proc *pq_head, *pq_tail;
  uint32_t pq_len;

  /* inbox: processes and timer-cancel requests from other threads */
  pthread_mutex_t inbox_lock;
  keel__proc *in_head, *in_tail;
  keel__timer *in_cancel; /* timers to stop and recycle (wait timers) or close (send timers) */
  atomic_int in_nonempty;
  atomic_int sleeping;

  /* caches, owner-only */
  keel__stack *stack_cache;
  uint32_t stack_cache_n;
  keel__proc *slot_cache;
  uint32_t slot_cache_n;
  keel__timer *timer_cache;

  bool in_loop; /* inside uv_run: a wakeup from a callback must stop the loop */
  uint64_t rng;
  uint64_t last_poll_ns;
  uint32_t runs_since_poll;

  /* statistics and watchdog (written by the owner, read by others) */
  _Atomic uint64_t n_switches;
  _Atomic uint64_t n_sent;
  _Atomic uint64_t n_to_dead;
  _Atomic uint64_t n_replies_dropped;
  _Atomic uint64_t n_steals;
  _Atomic uint64_t n_migrations; /* processes that moved here to follow their sender */
  _Atomic uint64_t n_spawned;
  _Atomic uint64_t n_exited;
  _Atomic keel_pid_t running_pid;  /* 0 when not running a process */
  atomic_bool stuck;               /* the watchdog saw one process hold it for a tick */
  _Atomic uint64_t held_since_ns;  /* the watchdog: since when the running process has held it
                                      without a switch (as first seen); 0 when not stuck */
  _Atomic uint64_t held_switches;  /* n_switches when held_since_ns was set: a reader seeing
                                      another count knows the hold is over */
  _Atomic uint64_t idle_ns;        /* time spent asleep in epoll with nothing to run */
  _Atomic uint64_t sleep_start_ns; /* start of the sleep in progress, 0 when awake */
  void *altstack;
} keel__sched;

/* ---- the node ------------------------------------------------------------ */

typedef struct keel__rt {
  atomic_int state; /* 0 stopped, 1 running, 2 halting */
  int nsched;
  keel__sched *scheds;
  keel_rt_opts opt;
  size_t page;

  /* process table */
  keel__proc *_Atomic *chunks; /* KEEL__MAX_CHUNKS chunk pointers */
  pthread_mutex_t table_lock;
  uint32_t nchunks;
  uint32_t next_fresh;    /* first never-used slot index */
  keel__proc *free_slots; /* under table_lock */

  /* global stack pool */
  pthread_mutex_t stack_lock;
  keel__stack *stack_pool;
  uint32_t stack_pool_n;

  /* global run queue (ring overflow), under grq_lock */
  pthread_mutex_t grq_lock;
  keel__proc *grq_head, *grq_tail;
  atomic_int grq_len;

  atomic_int nsleeping;
  atomic_int nspinning;
  _Atomic int64_t alive;
  _Atomic uint64_t next_ref;
  _Atomic uint64_t ext_sent; /* sends from outside any scheduler */
  _Atomic uint64_t ext_to_dead;
  _Atomic uint64_t ext_spawned; /* spawns from outside any scheduler */
  _Atomic uint64_t ext_replies_dropped;
  atomic_uint rr; /* round robin for spawns from outside */
  _Atomic uint64_t blocking_queued;
  _Atomic uint64_t blocking_running;
  _Atomic uint64_t stuck_reports;
  _Atomic uint64_t hog_kills;  /* kills sent for keel_set_hog_limit */
  _Atomic uint64_t started_ms; /* CLOCK_MONOTONIC ms of keel_rt_start, 0 when stopped */

  pthread_mutex_t wait_lock;
  pthread_cond_t wait_cond;
  int halted;
  int halt_status;

  pthread_t watchdog;
  int watchdog_started;
  atomic_int watchdog_stop;
  atomic_bool watchdog_running; /* its loop runs: keel_sched_info.held_ms is kept */
  pthread_mutex_t wd_lock;
  pthread_cond_t wd_cond;

  _Atomic(keel_proc_event_fn) proc_event_fn;
  void *_Atomic proc_event_ud;
  _Atomic(keel_report_fn) report_fn;
  void *_Atomic report_ud;
} keel__rt;

extern keel__rt keel__g;

/* ---- cross-module internal API -------------------------------------------- */

/* The scheduler of the calling thread, or NULL. Never inlined: a process may
 * resume on another thread, so its value must be re-read after any wait. */
keel__sched *keel__sched_self(void);
/* The process running on the calling thread, or NULL. Same caveat. */
keel__proc *keel__proc_self(void);

keel__proc *keel__slot(uint32_t idx);          /* NULL if idx was never allocated */
keel__proc *keel__lookup_live(keel_pid_t pid); /* slot if pid's generation is current, else NULL */

/* Wakes p if its state word still says `gen` and WAITING with a mask that
 * includes `cause`; returns whether this call woke it. Any thread. */
bool keel__wake(keel__proc *p, uint32_t gen, uint32_t cause);
/* Wakes p only if its state word equals `expect` exactly (timer wakeups). */
bool keel__wake_exact(keel__proc *p, uint64_t expect, uint32_t cause);

/* Process side of the scheduler: switch to the scheduler with a request.
 * Returns when the process runs again (maybe on another thread). */
void keel__proc_switch(keel__proc *p, keel__req req, uint32_t wait_mask);
/* Waits until one of `mask` happens or the deadline (absolute ms from
 * keel__deadline, 0 = none)
 * passes. Returns the cause (KEEL__W_*), KEEL__W_TIMER on timeout. Handles
 * signals as they arrive (may not return: exit). */
uint32_t keel__wait(keel__proc *p, uint32_t mask, uint64_t deadline_ms);
/* Owner, at the end of a budget slice spent receiving (mailbox.c, before
 * its yield): stream affinity, see sched.c. */
void keel__stream_check(keel__proc *p);

/* Signals (signal.c) */
int keel__signal_send(keel_pid_t to, keel__sig_type type, keel_pid_t from, keel_ref_t ref,
                      keel_reason_kind reason, const char *text);
int keel__signal_post(keel__proc *p, keel_pid_t to, keel__sig *sig); /* consumes sig */
void keel__signals_handle(keel__proc *p);                            /* owner; may exit */
/* Takes every queued signal (oldest first); close also stops the queue from
 * accepting more (the process is ending). */
keel__sig *keel__signals_take(keel__proc *p, bool close);
/* Applies a link/unlink/monitor/demonitor/hook signal to p's own sets;
 * false for exit signals, which the caller handles. */
bool keel__signal_bookkeep(keel__proc *p, const keel__sig *sig);
int keel__exit_hook_add(keel__proc *p, void (*fn)(void *), void *arg);
/* Sends `to` the DOWN message for monitor `ref` of `pid` (proc.c; signal.c
 * uses it for a monitor of a process that is already gone). */
void keel__send_down(keel_pid_t to, keel_ref_t ref, keel_pid_t pid, keel_reason_kind kind,
                     const char *text);
_Noreturn void keel__proc_die(keel__proc *p, keel_reason_kind kind, const char *text);
void keel__proc_finalize(keel__sched *s, keel__proc *p); /* scheduler, after the process died */

/* Mailbox (mailbox.c) */
void keel__mbox_init(keel__mbox *q);
void keel__mbox_push(keel__mbox *q, struct keel_msg *m);
struct keel_msg *keel__mbox_pop(keel__mbox *q);
bool keel__mbox_empty(keel__mbox *q);
void keel__mailbox_move_all(
    keel__proc *p); /* owner: move everything arrived to the kept-aside list */
void keel__mailbox_drop_all(keel__proc *p);                         /* free everything queued */
void keel__mailbox_drop_link_exits(keel__proc *p, keel_pid_t from); /* keel_unlink */
bool keel__mailbox_drop_down(keel__proc *p, keel_ref_t ref);        /* keel_demonitor */
int keel__deliver(keel_pid_t to, struct keel_msg *m);               /* push + wake; consumes m */
struct keel_msg *keel__msg_alloc(uint8_t kind, uint32_t tag, size_t size);
void keel__count_to_dead(void);

/* Refs table (mailbox.c) */
void keel__reftab_free(keel__reftab *t);

/* Vectors (proc.c). The link and monitor sets of process p: changed by their
 * owner only, each change published through p->set_seq and each growth made
 * under p->sig_lock, so that other threads may copy them
 * (keel_rt_process_links); has is the owner's plain read. */
int keel__pidvec_add(keel__proc *p, keel__pidvec *v, keel_pid_t pid);
bool keel__pidvec_del(keel__proc *p, keel__pidvec *v, keel_pid_t pid);
bool keel__pidvec_has(const keel__pidvec *v, keel_pid_t pid);
int keel__monvec_add(keel__proc *p, keel__monvec *v, keel_ref_t ref, keel_pid_t pid);
bool keel__monvec_del(keel__proc *p, keel__monvec *v, keel_ref_t ref, keel_pid_t *pid);

/* Scheduler (sched.c) */
void keel__enqueue(keel__proc *p);     /* p is RUNNABLE and owned by the caller */
void keel__sched_wake(keel__sched *s); /* if sleeping */
int keel__sched_start_all(void);
void keel__sched_stop_all(void);
void keel__alive_dec(void);
/* Queues p on s (spawn with a scheduler hint, and spawn from outside). */
void keel__enqueue_on(keel__sched *s, keel__proc *p);
/* The scheduler a process spawned from outside any scheduler starts on. */
int keel__sched_pick_external(void);
/* For keel_rt_sched_info: the stealable ring plus runnext (the owner-only
 * pinned queue is not counted: other threads may not read it). */
uint32_t keel__sched_queued(keel__sched *s);
/* After every scheduler thread has exited: close the loops (keel_rt_stop). */
void keel__sched_free_all(void);
/* The thread that reports a process holding its scheduler too long. */
int keel__watchdog_start(void);
void keel__watchdog_stop(void);

/* Stacks (stack.c) */
int keel__stacks_init(void);
void keel__stacks_fini(void);
keel__stack *keel__stack_get(keel__sched *s, size_t size);
void keel__stack_put(keel__sched *s, keel__stack *st);
void keel__stack_cache_flush(keel__sched *s);
int keel__altstack_install(keel__sched *s);
void keel__altstack_remove(keel__sched *s);
void keel__overflow_handler_install(void);
void keel__overflow_handler_remove(void);

/* Process table (proc.c) */
int keel__table_init(void);
void keel__table_fini(void);
void keel__slot_release(keel__sched *s, keel__proc *p);
/* Every process's first frame (sched.c makes the context with it): handles
 * signals that came before the first run, runs the function, dies normal. */
void keel__proc_entry(void *arg);

/* Timers (timer.c) */
keel__timer *keel__timer_get(keel__sched *s);
/* Arms a timer that wakes p if its state word still equals `expect` (the
 * WAITING word of the wait being entered) at the deadline. */
void keel__wait_timer_arm(keel__proc *p, keel__sched *s, uint64_t deadline_ms, uint64_t expect);
void keel__wait_timer_disarm(keel__proc *p);      /* after the wait, on any scheduler */
void keel__sched_cancel_requests(keel__sched *s); /* owner: handle cross-thread timer cancels */
void keel__timers_fini(keel__sched *s);
int keel__timers_init(void);
void keel__timers_global_fini(void);

/* Reports (rt.c) */
void keel__report(const keel_report *r);
/* keel's own libuv handles are malloc'd, start with the uv handle, and carry
 * keel__handle_tag in `data`; keel__handle_close_cb frees them. Handles
 * without the tag belong to the user and are only closed at shutdown. */
extern void *const keel__handle_tag;
void keel__handle_close_cb(uv_handle_t *h);

#endif
