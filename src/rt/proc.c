/* proc.c - the process table, spawn, exit and the end of a process.
 *
 * The table is a two-level array of slots (chunks of 1024 keel__proc),
 * allocated as the node grows and never freed while the runtime runs: slot
 * memory is type-stable, so any thread may look at a slot through a stale
 * pid without a use-after-free. Whether the pid is still current is decided by
 * the generation in the slot's state word (see internal.h).
 *
 * A pid is generation << 32 | slot index. Freeing a process bumps the slot's
 * generation; a slot whose generation would wrap is retired for good, so no
 * pid is ever handed out twice.
 *
 * Free slots are cached per scheduler (no lock on the spawn path) and spill to
 * a global list under a mutex.
 *
 * The end of a process happens in two halves: keel__proc_die runs on the
 * process's own stack, records the reason and switches to the scheduler for
 * good; keel__proc_finalize then runs on the scheduler's stack, closes the
 * signal queue, tells links and monitors, frees the mailbox and the stack, and
 * returns the slot.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rt/internal.h"

#define SLOT_CACHE_MAX 64

/* ---- vectors ---------------------------------------------------------------- */

/* The link and monitor sets belong to their process: only it (or, after it
 * ended, its scheduler) changes them. Other threads read them through
 * keel_rt_process_links and friends (observe.c) without stopping it, so the
 * owner's changes are published as a sequence lock (set_seq: odd while a
 * change is being written; Boehm's "Can seqlocks get along with programming
 * language memory models?"): the writer pays two plain stores and two
 * compiler-only fences on x86, no locked instruction (a spinlock taken for
 * each change measured 1.85x on a link/unlink pair, decision 0030). Element
 * and length stores are relaxed atomics, so a reader's racing copy is not a
 * data race (release stores, so a reader that acquires one also sees the
 * odd set_seq stored before it); it retries when set_seq moved. Only the array's replacement
 * (growth) is done under sig_lock, which the reader holds while it copies,
 * so an array is never freed under a reader; growth allocates and copies
 * outside the lock. The owner reads its own sets plainly: it is their only
 * writer. */

static inline void set_write_begin(keel__proc *p) {
  uint32_t s = atomic_load_explicit(&p->set_seq, memory_order_relaxed);
  /* the odd value is visible before any element store that follows: those
   * are release stores (no fence: ThreadSanitizer does not model fences),
   * so a reader that acquires one of them sees this store too */
  atomic_store_explicit(&p->set_seq, s + 1, memory_order_relaxed);
}

static inline void set_write_end(keel__proc *p) {
  uint32_t s = atomic_load_explicit(&p->set_seq, memory_order_relaxed);
  /* release: the element stores are visible before the even value */
  atomic_store_explicit(&p->set_seq, s + 1, memory_order_release);
}

/* Replace a set's array by one of twice the size, under p's sig_lock (the
 * reader holds it while copying). Outside any write section: a reader
 * waiting under the lock for an even set_seq would wait for us forever.
 * Both kinds of set share it: arr is the address of the set's array pointer
 * (keel_pid_t * or keel__mon *), n its length, *cap its capacity in elements
 * of elem bytes. The pointer is read and replaced with memcpy, not through a
 * void ** cast, which would access a keel_pid_t * as a void * (strict
 * aliasing); object pointers share one representation on every target keel
 * builds for. */
static int grow_set(keel__proc *p, void *arr, uint32_t n, uint32_t *cap, size_t elem) {
  uint32_t ncap = *cap ? *cap * 2 : 4;
  void *nv = malloc(ncap * elem);
  if (!nv) return KEEL_ENOMEM;
  void *old;
  memcpy(&old, arr, sizeof old);
  if (n) memcpy(nv, old, n * elem);
  keel__spin_lock(&p->sig_lock);
  memcpy(arr, &nv, sizeof nv);
  *cap = ncap;
  keel__spin_unlock(&p->sig_lock);
  free(old);
  return 0;
}

int keel__pidvec_add(keel__proc *p, keel__pidvec *v, keel_pid_t pid) {
  if (v->n == v->cap) {
    int rc = grow_set(p, &v->v, v->n, &v->cap, sizeof *v->v);
    if (rc) return rc;
  }
  set_write_begin(p);
  __atomic_store_n(&v->v[v->n], pid, __ATOMIC_RELEASE);
  __atomic_store_n(&v->n, v->n + 1, __ATOMIC_RELEASE);
  set_write_end(p);
  return 0;
}

bool keel__pidvec_has(const keel__pidvec *v, keel_pid_t pid) {
  for (uint32_t i = 0; i < v->n; i++)
    if (v->v[i] == pid) return true;
  return false;
}

bool keel__pidvec_del(keel__proc *p, keel__pidvec *v, keel_pid_t pid) {
  for (uint32_t i = 0; i < v->n; i++)
    if (v->v[i] == pid) {
      set_write_begin(p);
      __atomic_store_n(&v->v[i], v->v[v->n - 1], __ATOMIC_RELEASE);
      __atomic_store_n(&v->n, v->n - 1, __ATOMIC_RELEASE);
      set_write_end(p);
      return true;
    }
  return false;
}

int keel__monvec_add(keel__proc *p, keel__monvec *v, keel_ref_t ref, keel_pid_t pid) {
  if (v->n == v->cap) {
    int rc = grow_set(p, &v->v, v->n, &v->cap, sizeof *v->v);
    if (rc) return rc;
  }
  set_write_begin(p);
  __atomic_store_n(&v->v[v->n].ref, ref, __ATOMIC_RELEASE);
  __atomic_store_n(&v->v[v->n].pid, pid, __ATOMIC_RELEASE);
  __atomic_store_n(&v->n, v->n + 1, __ATOMIC_RELEASE);
  set_write_end(p);
  return 0;
}

bool keel__monvec_del(keel__proc *p, keel__monvec *v, keel_ref_t ref, keel_pid_t *pid) {
  for (uint32_t i = 0; i < v->n; i++)
    if (v->v[i].ref == ref) {
      if (pid) *pid = v->v[i].pid;
      set_write_begin(p);
      __atomic_store_n(&v->v[i].ref, v->v[v->n - 1].ref, __ATOMIC_RELEASE);
      __atomic_store_n(&v->v[i].pid, v->v[v->n - 1].pid, __ATOMIC_RELEASE);
      __atomic_store_n(&v->n, v->n - 1, __ATOMIC_RELEASE);
      set_write_end(p);
      return true;
    }
  return false;
}

/* ---- the table -------------------------------------------------------------- */

int keel__table_init(void) {
  keel__g.chunks = calloc(KEEL__MAX_CHUNKS, sizeof(keel__proc *));
  if (!keel__g.chunks) return KEEL_ENOMEM;
  pthread_mutex_init(&keel__g.table_lock, NULL);
  keel__g.nchunks = 0;
  keel__g.next_fresh = 0;
  keel__g.free_slots = NULL;
  return 0;
}

keel__proc *keel__slot(uint32_t idx) {
  uint32_t c = idx >> KEEL__CHUNK_SHIFT;
  if (c >= KEEL__MAX_CHUNKS) return NULL;
  keel__proc *chunk = atomic_load_explicit(&keel__g.chunks[c], memory_order_acquire);
  return chunk ? &chunk[idx & (KEEL__CHUNK_SIZE - 1)] : NULL;
}

keel__proc *keel__lookup_live(keel_pid_t pid) {
  if (!pid) return NULL;
  keel__proc *p = keel__slot(KEEL__PID_IDX(pid));
  if (!p) return NULL;
  uint64_t sw = atomic_load_explicit(&p->sw, memory_order_acquire);
  if (KEEL__SW_GEN(sw) != KEEL__PID_GEN(pid) || KEEL__SW_ST(sw) == KEEL__ST_FREE) return NULL;
  return p;
}

/* Under table_lock. Carves the next never-used slot, growing the table. */
static keel__proc *slot_fresh(void) {
  uint32_t idx = keel__g.next_fresh;
  uint32_t c = idx >> KEEL__CHUNK_SHIFT;
  if (c >= KEEL__MAX_CHUNKS) return NULL;
  if (c >= keel__g.nchunks) {
    keel__proc *chunk = calloc(KEEL__CHUNK_SIZE, sizeof(keel__proc));
    if (!chunk) return NULL;
    for (uint32_t i = 0; i < KEEL__CHUNK_SIZE; i++) {
      keel__proc *p = &chunk[i];
      atomic_init(&p->sw, KEEL__SW(1, 0, 0, KEEL__ST_FREE));
      p->idx = (c << KEEL__CHUNK_SHIFT) | i;
      keel__mbox_init(&p->mbox);
    }
    atomic_store_explicit(&keel__g.chunks[c], chunk, memory_order_release);
    keel__g.nchunks = c + 1;
  }
  keel__g.next_fresh++;
  return keel__slot(idx);
}

static keel__proc *slot_alloc(keel__sched *s) {
  if (s && s->slot_cache) {
    keel__proc *p = s->slot_cache;
    s->slot_cache = p->free_next;
    s->slot_cache_n--;
    return p;
  }
  pthread_mutex_lock(&keel__g.table_lock);
  keel__proc *p = keel__g.free_slots;
  if (p) {
    keel__g.free_slots = p->free_next;
    /* refill the cache while we hold the lock */
    while (s && keel__g.free_slots && s->slot_cache_n < SLOT_CACHE_MAX / 2) {
      keel__proc *q = keel__g.free_slots;
      keel__g.free_slots = q->free_next;
      q->free_next = s->slot_cache;
      s->slot_cache = q;
      s->slot_cache_n++;
    }
  } else {
    p = slot_fresh();
  }
  pthread_mutex_unlock(&keel__g.table_lock);
  return p;
}

void keel__slot_release(keel__sched *s, keel__proc *p) {
  uint64_t sw = atomic_load_explicit(&p->sw, memory_order_relaxed);
  uint32_t gen = KEEL__SW_GEN(sw);
  /* release: everything we did to the slot happens-before its next spawn */
  if (gen == UINT32_MAX) {
    atomic_store_explicit(&p->sw, KEEL__SW(gen, 0, 0, KEEL__ST_FREE), memory_order_release);
    return; /* retired: its pids must never come back */
  }
  atomic_store_explicit(&p->sw, KEEL__SW(gen + 1, 0, 0, KEEL__ST_FREE), memory_order_release);
  if (s && s->slot_cache_n < SLOT_CACHE_MAX) {
    p->free_next = s->slot_cache;
    s->slot_cache = p;
    s->slot_cache_n++;
    return;
  }
  pthread_mutex_lock(&keel__g.table_lock);
  p->free_next = keel__g.free_slots;
  keel__g.free_slots = p;
  pthread_mutex_unlock(&keel__g.table_lock);
}

/* ---- spawn ---------------------------------------------------------------------- */

void keel_spawn_opts_init(keel_spawn_opts *o) {
  memset(o, 0, sizeof *o);
}

static void copy_name(keel__proc *p, const char *name) {
  for (int i = 0; i < KEEL__NAME_MAX; i++) {
    char c = (name && i < KEEL__NAME_MAX - 1) ? name[i] : 0;
    __atomic_store_n(&p->name[i], c, __ATOMIC_RELAXED);
    if (!c) name = NULL;
  }
}

void keel__proc_entry(void *arg) {
  keel__proc *p = arg;
  keel__ctx_entered(&p->ctx);
  keel__signals_handle(p); /* it may have been killed before it first ran */
  p->fn(p->arg);
  keel__proc_die(p, KEEL_REASON_NORMAL, NULL);
}

int keel_spawn(keel_proc_fn fn, void *arg, const keel_spawn_opts *opts, keel_pid_t *out) {
  if (!fn) return KEEL_EINVAL;
  if (atomic_load_explicit(&keel__g.state, memory_order_acquire) != 1) return KEEL_ESTATE;
  keel_spawn_opts defaults;
  if (!opts) {
    keel_spawn_opts_init(&defaults);
    opts = &defaults;
  }
  keel__proc *parent = keel__proc_self();
  if ((opts->link || opts->monitor) && !parent) return KEEL_ENOTPROC;
  if (opts->await_monitor && !opts->monitor) return KEEL_EINVAL;
  if (opts->scheduler < 0 || opts->scheduler > keel__g.nsched || opts->hog_limit_ms < 0)
    return KEEL_EINVAL;
  keel__sched *s = keel__sched_self();

  keel__proc *p = slot_alloc(s);
  if (!p) return KEEL_ENOMEM;
  size_t size = opts->stack_size ? opts->stack_size : keel__g.opt.stack_size;
  keel__stack *st = keel__stack_get(s, size);
  if (!st) {
    keel__slot_release(s, p); /* bumps the generation: harmless */
    return KEEL_ENOMEM;
  }
  uint64_t sw = atomic_load_explicit(&p->sw, memory_order_acquire);
  uint32_t gen = KEEL__SW_GEN(sw);
  keel_pid_t pid = KEEL__PID(gen, p->idx);

  /* Stale messages from an earlier incarnation that raced its end. */
  keel__mailbox_drop_all(p);
  p->pid = pid;
  p->stack = st;
  p->fn = fn;
  p->arg = arg;
  p->save_head = p->save_tail = NULL;
  atomic_store_explicit(&p->save_len, 0, memory_order_relaxed);
  p->links.n = 0;
  p->monitors.n = 0;
  p->monitored_by.n = 0;
  p->exit_hooks = NULL;
  p->before_exit = NULL;
  p->before_exit_arg = NULL;
  memset(p->local, 0, sizeof p->local);
  p->trap_exit = opts->trap_exit;
  atomic_store_explicit(&p->hog_limit_ms, opts->hog_limit_ms, memory_order_relaxed);
  p->hold_exits = 0;
  p->pinned = opts->pin ? 1 : 0;
  p->wait_timer = NULL;
  p->io_cleanup = NULL;
  atomic_store_explicit(&p->msgs_handled, 0, memory_order_relaxed);
  atomic_store_explicit(&p->parent, parent ? parent->pid : 0, memory_order_relaxed);
  atomic_store_explicit(&p->stack_bytes, st->size, memory_order_relaxed);
  atomic_store_explicit(&p->born_ms, keel__coarse_ms(), memory_order_relaxed);
  p->exit_kind = KEEL_REASON_NORMAL;
  p->exit_text = NULL;
  copy_name(p, opts->name);
  p->fresh = true; /* its first frame is written by the scheduler that first runs it */
  atomic_store_explicit(&p->coupled, NULL, memory_order_relaxed);
  p->migrate_to = 0;
  p->stream_n = 0;
  p->stream_from = 0;
  p->stream_ns = 0;

  int err = 0;
  if (opts->link) {
    err = keel__pidvec_add(p, &p->links, parent->pid);
    if (!err && (err = keel__pidvec_add(parent, &parent->links, pid)) != 0) p->links.n = 0;
  }
  keel_ref_t armed = 0; /* await_monitor's reference, disarmed if the spawn fails */
  if (!err && opts->monitor) {
    keel_ref_t ref = opts->monitor_with ? opts->monitor_with : keel_make_ref();
    if (opts->await_monitor && (err = keel_await_ref(ref)) == 0) armed = ref;
    if (!err) err = keel__monvec_add(p, &p->monitored_by, ref, parent->pid);
    if (!err && (err = keel__monvec_add(parent, &parent->monitors, ref, pid)) != 0)
      p->monitored_by.n = 0;
    if (!err && opts->monitor_ref) *opts->monitor_ref = ref;
  }
  if (!err && opts->on_exit) err = keel__exit_hook_add(p, opts->on_exit, opts->on_exit_arg);
  if (err) {
    if (armed) keel_await_cancel(armed);
    if (opts->link) keel__pidvec_del(parent, &parent->links, pid);
    keel__stack_put(s, st);
    keel__slot_release(s, p);
    return err;
  }

  keel__spin_lock(&p->sig_lock);
  p->sig_pid = pid; /* open for signals */
  p->sig_head = p->sig_tail = NULL;
  atomic_store_explicit(&p->sig_pending, 0, memory_order_relaxed);
  keel__spin_unlock(&p->sig_lock);

  atomic_fetch_add_explicit(&keel__g.alive, 1, memory_order_relaxed);
  if (s)
    atomic_store_explicit(&s->n_spawned,
                          atomic_load_explicit(&s->n_spawned, memory_order_relaxed) + 1,
                          memory_order_relaxed);
  else
    atomic_fetch_add_explicit(&keel__g.ext_spawned, 1, memory_order_relaxed);

  int target = opts->scheduler > 0 ? opts->scheduler - 1 : s ? s->id : keel__sched_pick_external();
  atomic_store_explicit(&p->home, target, memory_order_relaxed);
  /* release: the slot's fields are visible to whoever runs or signals it */
  atomic_store_explicit(&p->sw, KEEL__SW(gen, 0, 0, KEEL__ST_RUNNABLE), memory_order_release);
  if (out) *out = pid;
  keel_proc_event_fn evfn = atomic_load_explicit(&keel__g.proc_event_fn, memory_order_acquire);
  if (evfn) {
    keel_proc_event ev = {.kind = KEEL_PROC_STARTED,
                          .pid = pid,
                          .parent = parent ? parent->pid : 0,
                          .name = opts->name ? opts->name : ""};
    evfn(&ev, atomic_load_explicit(&keel__g.proc_event_ud, memory_order_relaxed));
  }
  keel__enqueue_on(&keel__g.scheds[target], p);
  return 0;
}

keel_pid_t keel_self(void) {
  keel__proc *p = keel__proc_self();
  return p ? p->pid : 0;
}

bool keel_is_alive(keel_pid_t pid) {
  keel__proc *p = keel__lookup_live(pid);
  if (!p) return false;
  uint64_t sw = atomic_load_explicit(&p->sw, memory_order_acquire);
  return KEEL__SW_ST(sw) != KEEL__ST_EXITING && KEEL__SW_ST(sw) != KEEL__ST_FREE;
}

char *keel_pid_format(keel_pid_t pid, char *buf, size_t len) {
  if (len) snprintf(buf, len, "<0.%u.%u>", KEEL__PID_IDX(pid), KEEL__PID_GEN(pid));
  return buf;
}

int keel_set_hog_limit(int64_t ms) {
  keel__proc *p = keel__proc_self();
  if (!p) return KEEL_ENOTPROC;
  if (ms < 0) return KEEL_EINVAL;
  atomic_store_explicit(&p->hog_limit_ms, ms, memory_order_relaxed);
  return 0;
}

int keel_set_name(const char *name) {
  keel__proc *p = keel__proc_self();
  if (!p) return KEEL_ENOTPROC;
  copy_name(p, name);
  return 0;
}

const char *keel_self_name(void) {
  keel__proc *p = keel__proc_self();
  return p ? p->name : "";
}

keel_ref_t keel_make_ref(void) {
  return atomic_fetch_add_explicit(&keel__g.next_ref, 1, memory_order_relaxed) + 1;
}

int keel_trap_exit(bool on) {
  keel__proc *p = keel__proc_self();
  if (!p) return KEEL_ENOTPROC;
  int old = p->trap_exit;
  p->trap_exit = on;
  return old;
}

int keel_on_exit(void (*fn)(void *), void *arg) {
  keel__proc *p = keel__proc_self();
  if (!p) return KEEL_ENOTPROC;
  if (!fn) return KEEL_EINVAL;
  return keel__exit_hook_add(p, fn, arg);
}

void *keel_local_get(int slot) {
  keel__proc *p = keel__proc_self();
  if (!p || slot < 0 || slot >= KEEL_LOCAL_SLOTS) return NULL;
  return p->local[slot];
}

int keel_local_set(int slot, void *value) {
  keel__proc *p = keel__proc_self();
  if (!p) return KEEL_ENOTPROC;
  if (slot < 0 || slot >= KEEL_LOCAL_SLOTS) return KEEL_EINVAL;
  p->local[slot] = value;
  return 0;
}

int keel__exit_hook_add(keel__proc *p, void (*fn)(void *), void *arg) {
  keel__exit_hook *h = malloc(sizeof *h);
  if (!h) return KEEL_ENOMEM;
  h->fn = fn;
  h->arg = arg;
  h->next = p->exit_hooks;
  p->exit_hooks = h;
  return 0;
}

/* ---- exit ----------------------------------------------------------------------- */

const char *keel_reason_name(keel_reason_kind kind) {
  switch (kind) {
  case KEEL_REASON_NORMAL: return "normal";
  case KEEL_REASON_SHUTDOWN: return "shutdown";
  case KEEL_REASON_KILL: return "kill";
  case KEEL_REASON_KILLED: return "killed";
  case KEEL_REASON_NOPROC: return "noproc";
  case KEEL_REASON_ERROR: return "error";
  }
  return "unknown";
}

_Noreturn void keel__proc_die(keel__proc *p, keel_reason_kind kind, const char *text) {
  p->exit_kind = kind;
  p->exit_text = (text && *text) ? strdup(text) : NULL;
  uint64_t sw = atomic_load_explicit(&p->sw, memory_order_relaxed);
  atomic_store_explicit(&p->sw, (sw & ~(uint64_t)0xFFFF) | KEEL__ST_EXITING, memory_order_release);
  keel__proc_switch(p, KEEL__REQ_EXIT, 0);
  abort(); /* never resumed */
}

_Noreturn void keel_exit(keel_reason_kind kind, const char *text) {
  keel__proc *p = keel__proc_self();
  if (!p) {
    fprintf(stderr, "keel: keel_exit called outside a process\n");
    abort();
  }
  if (p->before_exit) { /* once: a keel_exit inside it ends the process at once */
    void (*fn)(keel_reason_kind, const char *, void *) = p->before_exit;
    p->before_exit = NULL;
    fn(kind, text, p->before_exit_arg); /* the reason as the caller gave it */
  }
  if (kind == KEEL_REASON_KILL) kind = KEEL_REASON_KILLED;
  keel__proc_die(p, kind, text);
}

int keel_before_exit(void (*fn)(keel_reason_kind kind, const char *text, void *arg), void *arg) {
  keel__proc *p = keel__proc_self();
  if (!p) return KEEL_ENOTPROC;
  p->before_exit = fn;
  p->before_exit_arg = arg;
  return 0;
}

_Noreturn void keel_exitf(const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  keel_exit(KEEL_REASON_ERROR, buf);
}

/* A DOWN message for watcher `to` about `pid`. */
static void send_down(keel_pid_t to, keel_ref_t ref, keel_pid_t pid, keel_reason_kind kind,
                      const char *text) {
  size_t len = text ? strlen(text) : 0;
  struct keel_msg *m = keel__msg_alloc(KEEL_MSG_DOWN, 0, len + 1);
  if (!m) return; /* out of memory: the watcher loses a DOWN; nothing else to do */
  m->from = pid;
  m->ref = ref;
  m->reason = (uint8_t)kind;
  memcpy(m->data, text ? text : "", len + 1);
  m->size = len;
  keel__deliver(to, m);
}

void keel__send_down(keel_pid_t to, keel_ref_t ref, keel_pid_t pid, keel_reason_kind kind,
                     const char *text) {
  send_down(to, ref, pid, kind, text);
}

/* The last part of any end: exit hooks, then everything the runtime holds for
 * the process (mailbox, armed refs, link and monitor sets, its stack). */
static void release_owned(keel__sched *s, keel__proc *p) {
  while (p->exit_hooks) {
    keel__exit_hook *h = p->exit_hooks;
    p->exit_hooks = h->next;
    h->fn(h->arg);
    free(h);
  }
  keel__mailbox_drop_all(p);
  keel__reftab_free(&p->refs);
  free(p->links.v);
  free(p->monitors.v);
  free(p->monitored_by.v);
  memset(&p->links, 0, sizeof p->links);
  memset(&p->monitors, 0, sizeof p->monitors);
  memset(&p->monitored_by, 0, sizeof p->monitored_by);
  free(p->exit_text);
  p->exit_text = NULL;
  if (p->stack) {
    if (!p->fresh) keel__ctx_destroy(&p->ctx);
    keel__stack_put(s, p->stack);
    p->stack = NULL;
  }
}

void keel__proc_finalize(keel__sched *s, keel__proc *p) {
  keel_pid_t pid = p->pid;
  keel_reason_kind kind = p->exit_kind;
  const char *text = p->exit_text ? p->exit_text : "";

  keel__sig *sig = keel__signals_take(p, true); /* and close the queue */
  /* Signals that arrived while it was alive but were not handled yet: their
   * link and monitor changes count (the process was alive when they came). */
  while (sig) {
    keel__sig *next = sig->next;
    if (!keel__signal_bookkeep(p, sig) && sig->type == KEEL__SIG_LINK_EXIT)
      keel__pidvec_del(p, &p->links, sig->from); /* that partner is gone too */
    free(sig);
    sig = next;
  }

  /* before links and monitors hear of it: whoever learns of the exit
   * through them finds the observer already told */
  keel_proc_event_fn evfn = atomic_load_explicit(&keel__g.proc_event_fn, memory_order_acquire);
  if (evfn) {
    keel_proc_event ev = {
        .kind = KEEL_PROC_EXITED, .pid = pid, .name = p->name, .reason = kind, .reason_text = text};
    evfn(&ev, atomic_load_explicit(&keel__g.proc_event_ud, memory_order_relaxed));
  }

  for (uint32_t i = 0; i < p->links.n; i++)
    keel__signal_send(p->links.v[i], KEEL__SIG_LINK_EXIT, pid, 0, kind, text);
  for (uint32_t i = 0; i < p->monitored_by.n; i++)
    send_down(p->monitored_by.v[i].pid, p->monitored_by.v[i].ref, pid, kind, text);
  for (uint32_t i = 0; i < p->monitors.n; i++)
    keel__signal_send(p->monitors.v[i].pid, KEEL__SIG_DEMONITOR, pid, p->monitors.v[i].ref,
                      KEEL_REASON_NORMAL, NULL);

  if (kind == KEEL_REASON_ERROR) {
    keel_report r = {.kind = KEEL_REPORT_CRASH,
                     .pid = pid,
                     .name = p->name,
                     .scheduler = s ? s->id : -1,
                     .reason = text};
    keel__report(&r);
  }

  if (p->io_cleanup) {
    p->io_cleanup(p->io_cleanup_arg);
    p->io_cleanup = NULL;
  }
  release_owned(s, p);
  if (s)
    atomic_store_explicit(&s->n_exited,
                          atomic_load_explicit(&s->n_exited, memory_order_relaxed) + 1,
                          memory_order_relaxed);
  keel__slot_release(s, p);
  keel__alive_dec();
}

/* At keel_rt_stop, for processes that never finished: free what the runtime
 * owns, send nothing. */
static void proc_destroy(keel__proc *p) {
  while (p->sig_head) {
    keel__sig *n = p->sig_head->next;
    if (p->sig_head->type == KEEL__SIG_HOOK) p->sig_head->hook_fn(p->sig_head->hook_arg);
    free(p->sig_head);
    p->sig_head = n;
  }
  p->sig_tail = NULL;
  p->sig_pid = 0;
  release_owned(NULL, p);
  atomic_store_explicit(&p->sw, KEEL__SW(KEEL__SW_GEN(atomic_load(&p->sw)), 0, 0, KEEL__ST_FREE),
                        memory_order_relaxed);
}

void keel__table_fini(void) {
  for (uint32_t c = 0; c < keel__g.nchunks; c++) {
    keel__proc *chunk = atomic_load(&keel__g.chunks[c]);
    for (uint32_t i = 0; i < KEEL__CHUNK_SIZE; i++) {
      keel__proc *p = &chunk[i];
      if (KEEL__SW_ST(atomic_load(&p->sw)) != KEEL__ST_FREE) proc_destroy(p);
      keel__mailbox_drop_all(p);
    }
    free(chunk);
    atomic_store(&keel__g.chunks[c], NULL);
  }
  free(keel__g.chunks);
  keel__g.chunks = NULL;
  keel__g.nchunks = 0;
  pthread_mutex_destroy(&keel__g.table_lock);
}
