/* sched.c - schedulers: one OS thread per core, each with a libuv loop.
 *
 * A scheduler runs processes from its local run queue until the queue is
 * empty, then polls its libuv loop (timers, I/O, wakeups from other threads)
 * and sleeps in epoll when there is nothing at all to do, so an idle node uses
 * no CPU.
 *
 * Run queues. Each scheduler has a fixed ring of runnable processes in the
 * manner of Go's runq: only the owner writes the tail; the owner and thieves
 * take from the head with a compare-and-swap. A process woken by another
 * process goes to the WAKER's scheduler ("wake where the message came from"),
 * into its `runnext` slot, ahead of the ring: a producer and its consumer, or a
 * chain of processes passing a token, then run back to back on one core, where
 * a hop costs a context switch instead of a cross-core wakeup and the message
 * is still in cache. A streak of runnext picks is capped so the ring is never
 * starved. Load spreads by stealing: a scheduler that runs out of work takes
 * half of another's ring, and a scheduler whose ring holds two or more
 * processes wakes a sleeping sibling to come and steal (at most one sibling is
 * woken at a time). See docs/decisions/0002-scheduling.md for the
 * measurements.
 *
 * Pinned processes (those using libuv handles of this loop) never enter the
 * ring; they wait in an owner-only FIFO and are woken through the inbox, a
 * mutex-protected list that other threads push to before waking the loop
 * with uv_async_send.
 *
 * Fairness: a process runs until it waits, yields, or has received its budget
 * of messages (keel__wait / mailbox.c); a yielding process goes to the tail
 * of the ring. The loop is polled without blocking every 16 process runs if
 * 0.5 ms have passed, so timers and I/O are served while the node is busy.
 *
 * Deterministic mode (tests): one scheduler; every runnable process goes to
 * the owner-only FIFO and the next one to run is picked by a seeded
 * xorshift generator, so an interleaving replays from its seed.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "keel/timer.h"
#include "rt/internal.h"

keel__rt keel__g;

static _Thread_local keel__sched *tl_sched;

__attribute__((noinline)) keel__sched *keel__sched_self(void) {
  keel__sched *s = tl_sched;
  __asm__ __volatile__("" ::: "memory");
  return s;
}

__attribute__((noinline)) keel__proc *keel__proc_self(void) {
  keel__sched *s = keel__sched_self();
  return s ? s->current : NULL;
}

/* Deadlines for timeouts are absolute milliseconds on CLOCK_MONOTONIC, the
 * clock libuv's loop time uses, rounded up so that a timeout never ends
 * early. A timed wait reads the clock once, here; the wait timer is then armed
 * against the loop's own time without another read (timer.c), and a wait ended
 * by its timer trusts it. (CLOCK_MONOTONIC_COARSE was tried to save that one
 * read: on this kernel it lagged the real clock by more than its stated
 * resolution, 6.5 ms against 4, so timeouts ended early. Measured, reverted.) */
uint64_t keel__deadline(int64_t timeout_ms) {
  if (timeout_ms <= 0) return 0; /* 0: do not wait; KEEL_INFINITY: no deadline */
  return (keel__now_ns() + 999999) / 1000000 + (uint64_t)timeout_ms;
}

bool keel__past(uint64_t deadline_ms) {
  return deadline_ms && keel__now_ns() >= deadline_ms * 1000000;
}

uint64_t keel__now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t keel_monotonic_ns(void) {
  return keel__now_ns();
}

int64_t keel_monotonic_ms(void) {
  return (int64_t)(keel__now_ns() / 1000000u);
}

uint64_t keel__coarse_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void keel__spin_lock(keel__spin *l) {
  for (unsigned i = 0;; i++) {
    if (atomic_load_explicit(&l->v, memory_order_relaxed) == 0 &&
        atomic_exchange_explicit(&l->v, 1, memory_order_acquire) == 0)
      return;
    if (i < 64)
      keel__cpu_relax();
    else
      sched_yield(); /* the holder was preempted: let it finish */
  }
}

/* Owner-only counter increment: a plain load and store is enough because
 * only one thread writes; readers tolerate a slightly old value. */
#define KEEL__INC(ctr)                                                                             \
  atomic_store_explicit(&(ctr), atomic_load_explicit(&(ctr), memory_order_relaxed) + 1,            \
                        memory_order_relaxed)

#define RUNNEXT_STREAK_MAX 64

/* ---- the stealable ring -------------------------------------------------- */

static uint32_t ring_len(keel__sched *s) {
  uint32_t h = atomic_load_explicit(&s->rq_head, memory_order_acquire);
  uint32_t t = atomic_load_explicit(&s->rq_tail, memory_order_acquire);
  return t - h;
}

/* For keel_rt_sched_info: the stealable ring plus runnext (the owner-only
 * pinned queue is not counted: other threads may not read it). */
uint32_t keel__sched_queued(keel__sched *s) {
  return ring_len(s) + (atomic_load_explicit(&s->runnext, memory_order_relaxed) ? 1u : 0u);
}

static void grq_push_list(keel__proc *head, keel__proc *tail, int n) {
  pthread_mutex_lock(&keel__g.grq_lock);
  tail->runq_next = NULL;
  if (keel__g.grq_tail)
    keel__g.grq_tail->runq_next = head;
  else
    keel__g.grq_head = head;
  keel__g.grq_tail = tail;
  atomic_fetch_add_explicit(&keel__g.grq_len, n, memory_order_seq_cst);
  pthread_mutex_unlock(&keel__g.grq_lock);
}

static void wake_idle_sibling(keel__sched *s);

/* Stream affinity. A receiver that spends whole budget slices taking one
 * sender's messages, quickly, couples itself and the sender: each names
 * the other in `coupled` (keel__stream_check below). A thief leaves a
 * coupled pair together: from a scheduler whose ring holds exactly two
 * processes it steals only if the two do not name each other. Either one
 * waiting clears its own name, which ends the pair; a receiver that turns to
 * another sender names the new one, so the old sender's stale name matches
 * nobody (a slot reused by a new process starts with none). Three or more
 * are stolen as before (two pairs on one core should be spread over two; the
 * followers then reunite each pair where its sender went). The owner uses
 * the same test before waking a sibling, so a coupled pair does not wake
 * one for nothing. */
static keel__proc *partner(const keel__proc *p) {
  return atomic_load_explicit(&p->coupled, memory_order_relaxed);
}

/* The ring's head h and length n (read by the caller). A hint: the slots may
 * change under a thief, whose CAS on the head then fails and it looks again. */
static bool worth_stealing(keel__sched *v, uint32_t h, uint32_t n) {
  if (n != 2) return n > 2;
  keel__proc *a = atomic_load_explicit(&v->rq[h % KEEL__RUNQ_SIZE], memory_order_relaxed);
  keel__proc *b = atomic_load_explicit(&v->rq[(h + 1) % KEEL__RUNQ_SIZE], memory_order_relaxed);
  return a && !(b && partner(a) == b && partner(b) == a);
}

/* Owner only. Appends p; when the ring is full, moves half of it plus p to
 * the global queue. */
static void ring_push(keel__sched *s, keel__proc *p) {
  for (;;) {
    uint32_t h = atomic_load_explicit(&s->rq_head, memory_order_acquire);
    uint32_t t = atomic_load_explicit(&s->rq_tail, memory_order_relaxed);
    if (t - h < KEEL__RUNQ_SIZE) {
      atomic_store_explicit(&s->rq[t % KEEL__RUNQ_SIZE], p, memory_order_relaxed);
      /* release: a thief that reads the new tail also sees the slot */
      atomic_store_explicit(&s->rq_tail, t + 1, memory_order_release);
      /* nsleeping first (seq_cst, as in wake_idle_sibling): worth_stealing may
       * read the head process's line, which only matters if a sibling sleeps */
      if (t + 1 - h >= 2 && atomic_load_explicit(&keel__g.nsleeping, memory_order_seq_cst) &&
          worth_stealing(s, h, t + 1 - h))
        wake_idle_sibling(s);
      return;
    }
    /* Full: take the older half in one CAS (thieves may race us). */
    uint32_t n = (t - h) / 2;
    keel__proc *first = NULL, *last = NULL;
    for (uint32_t i = 0; i < n; i++) {
      keel__proc *q = atomic_load_explicit(&s->rq[(h + i) % KEEL__RUNQ_SIZE], memory_order_relaxed);
      q->runq_next = NULL;
      if (last)
        last->runq_next = q;
      else
        first = q;
      last = q;
    }
    if (!atomic_compare_exchange_strong_explicit(&s->rq_head, &h, h + n, memory_order_acq_rel,
                                                 memory_order_relaxed))
      continue; /* a thief took some; the ring has room now or we retry */
    last->runq_next = p;
    grq_push_list(first, p, (int)n + 1);
    wake_idle_sibling(s);
    return;
  }
}

static keel__proc *ring_pop(keel__sched *s) {
  for (;;) {
    uint32_t h = atomic_load_explicit(&s->rq_head, memory_order_acquire);
    uint32_t t = atomic_load_explicit(&s->rq_tail, memory_order_relaxed);
    if (h == t) return NULL;
    keel__proc *p = atomic_load_explicit(&s->rq[h % KEEL__RUNQ_SIZE], memory_order_relaxed);
    if (atomic_compare_exchange_weak_explicit(&s->rq_head, &h, h + 1, memory_order_release,
                                              memory_order_relaxed))
      return p;
  }
}

/* Moves half of victim's ring into thief's (which is empty) and returns one
 * of them to run at once, or NULL. `min` is the least ring length worth
 * stealing from. */
static keel__proc *ring_steal(keel__sched *thief, keel__sched *victim, uint32_t min) {
  for (;;) {
    uint32_t h = atomic_load_explicit(&victim->rq_head, memory_order_acquire);
    uint32_t t = atomic_load_explicit(&victim->rq_tail, memory_order_acquire);
    uint32_t n = t - h;
    if (n < min || n == 0) return NULL;
    if (n > KEEL__RUNQ_SIZE) continue; /* torn read of head/tail */
    if (min >= 2 && !worth_stealing(victim, h, n)) return NULL;
    n -= n / 2;
    uint32_t tt = atomic_load_explicit(&thief->rq_tail, memory_order_relaxed);
    for (uint32_t i = 0; i < n; i++) {
      keel__proc *q =
          atomic_load_explicit(&victim->rq[(h + i) % KEEL__RUNQ_SIZE], memory_order_relaxed);
      atomic_store_explicit(&thief->rq[(tt + i) % KEEL__RUNQ_SIZE], q, memory_order_relaxed);
    }
    if (!atomic_compare_exchange_strong_explicit(&victim->rq_head, &h, h + n, memory_order_acq_rel,
                                                 memory_order_relaxed))
      continue;
    keel__proc *run =
        atomic_load_explicit(&thief->rq[(tt + n - 1) % KEEL__RUNQ_SIZE], memory_order_relaxed);
    if (n > 1) atomic_store_explicit(&thief->rq_tail, tt + n - 1, memory_order_release);
    atomic_fetch_add_explicit(&thief->n_steals, n, memory_order_relaxed);
    return run;
  }
}

/* ---- owner-only FIFO (pinned processes, deterministic mode) ------------- */

static void pq_push(keel__sched *s, keel__proc *p) {
  p->runq_next = NULL;
  if (s->pq_tail)
    s->pq_tail->runq_next = p;
  else
    s->pq_head = p;
  s->pq_tail = p;
  s->pq_len++;
}

static keel__proc *pq_pop(keel__sched *s) {
  keel__proc *p = s->pq_head;
  if (!p) return NULL;
  s->pq_head = p->runq_next;
  if (!s->pq_head) s->pq_tail = NULL;
  s->pq_len--;
  return p;
}

static uint64_t xorshift(uint64_t *st) {
  uint64_t x = *st;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return *st = x;
}

/* Deterministic mode: removes a seeded-random element of the FIFO. */
static keel__proc *pq_pick_seeded(keel__sched *s) {
  if (s->pq_len == 0) return NULL;
  uint32_t k = (uint32_t)(xorshift(&s->rng) % s->pq_len);
  keel__proc **pp = &s->pq_head, *prev = NULL;
  for (uint32_t i = 0; i < k; i++) {
    prev = *pp;
    pp = &(*pp)->runq_next;
  }
  keel__proc *p = *pp;
  *pp = p->runq_next;
  if (s->pq_tail == p) s->pq_tail = prev;
  s->pq_len--;
  return p;
}

/* ---- inbox ---------------------------------------------------------------- */

void keel__sched_wake(keel__sched *s) {
  /* Dekker with sched_sleep: the pusher stores in_nonempty (seq_cst) then loads
   * sleeping (seq_cst); the sleeper stores sleeping then loads in_nonempty.
   * In the single total order of seq_cst operations one of the two loads sees
   * the other's store, so either we wake it or it sees the work. */
  if (atomic_load_explicit(&s->sleeping, memory_order_seq_cst)) uv_async_send(&s->async);
}

static void inbox_push(keel__sched *s, keel__proc *p) {
  pthread_mutex_lock(&s->inbox_lock);
  p->runq_next = NULL;
  if (s->in_tail)
    s->in_tail->runq_next = p;
  else
    s->in_head = p;
  s->in_tail = p;
  atomic_store_explicit(&s->in_nonempty, 1, memory_order_seq_cst);
  pthread_mutex_unlock(&s->inbox_lock);
  keel__sched_wake(s);
}

static void push_local(keel__sched *s, keel__proc *p) {
  if (p->pinned || keel__g.opt.deterministic)
    pq_push(s, p);
  else
    ring_push(s, p);
}

/* A process woken by the process running on s: it runs next. The one it
 * displaces goes to the ring. */
static void push_runnext(keel__sched *s, keel__proc *p) {
  keel__proc *old = atomic_exchange_explicit(&s->runnext, p, memory_order_acq_rel);
  if (old) ring_push(s, old);
}

static void inbox_drain(keel__sched *s) {
  pthread_mutex_lock(&s->inbox_lock);
  keel__proc *p = s->in_head;
  s->in_head = s->in_tail = NULL;
  atomic_store_explicit(&s->in_nonempty, 0, memory_order_relaxed);
  pthread_mutex_unlock(&s->inbox_lock);
  keel__sched_cancel_requests(s);
  while (p) {
    keel__proc *next = p->runq_next;
    push_local(s, p);
    p = next;
  }
}

void keel__enqueue(keel__proc *p) {
  keel__sched *me = keel__sched_self();
  keel__sched *home = &keel__g.scheds[atomic_load_explicit(&p->home, memory_order_relaxed)];
  if (p->pinned) {
    if (me == home)
      pq_push(me, p);
    else
      inbox_push(home, p);
  } else if (me && me->current && !keel__g.opt.deterministic) {
    push_runnext(me, p); /* wake where the message came from */
  } else if (me) {
    push_local(me, p);
  } else {
    inbox_push(home, p);
  }
  /* Woken from a libuv callback (a timer, I/O, blocking work done) while our
   * loop runs: make uv_run return instead of blocking in epoll, which in
   * UV_RUN_ONCE it would do after running due timers, with the process we
   * just queued left waiting. */
  if (me && me->in_loop) uv_stop(&me->loop);
}

/* ---- waking -------------------------------------------------------------- */

bool keel__wake(keel__proc *p, uint32_t gen, uint32_t cause) {
  uint64_t sw = atomic_load_explicit(&p->sw, memory_order_seq_cst);
  for (;;) {
    if (KEEL__SW_GEN(sw) != gen || KEEL__SW_ST(sw) != KEEL__ST_WAITING ||
        !(KEEL__SW_MASK(sw) & cause))
      return false;
    uint64_t next = (sw & ~(uint64_t)0xFFFF) | KEEL__ST_RUNNABLE;
    /* acquire: we read fields the process wrote before it parked (pinned,
     * home); the winner of this CAS alone enqueues it. */
    if (atomic_compare_exchange_weak_explicit(&p->sw, &sw, next, memory_order_seq_cst,
                                              memory_order_seq_cst))
      break;
  }
  p->wake_cause = cause;
  keel__enqueue(p);
  return true;
}

bool keel__wake_exact(keel__proc *p, uint64_t expect, uint32_t cause) {
  uint64_t next = (expect & ~(uint64_t)0xFFFF) | KEEL__ST_RUNNABLE;
  if (!atomic_compare_exchange_strong_explicit(&p->sw, &expect, next, memory_order_acq_rel,
                                               memory_order_relaxed))
    return false;
  p->wake_cause = cause;
  keel__enqueue(p);
  return true;
}

/* Called by a scheduler whose ring holds 2+ processes: if a sibling sleeps
 * and none is already looking for work, wake one to steal. */
static void wake_idle_sibling(keel__sched *s) {
  if (keel__g.nsched < 2) return;
  /* seq_cst: pairs with the sleeper's seq_cst increment and its later check
   * of grq_len / its own queues; a sibling that is about to sleep either is
   * counted here or sees the work itself. */
  if (atomic_load_explicit(&keel__g.nsleeping, memory_order_seq_cst) == 0) return;
  int zero = 0;
  if (!atomic_compare_exchange_strong_explicit(&keel__g.nspinning, &zero, 1, memory_order_acq_rel,
                                               memory_order_relaxed))
    return;
  for (int i = 1; i < keel__g.nsched; i++) {
    keel__sched *o = &keel__g.scheds[(s->id + i) % keel__g.nsched];
    if (atomic_load_explicit(&o->sleeping, memory_order_seq_cst)) {
      uv_async_send(&o->async); /* o clears nspinning when it has looked */
      return;
    }
  }
  atomic_store_explicit(&keel__g.nspinning, 0, memory_order_release);
}

/* ---- the process side ------------------------------------------------------ */

void keel__proc_switch(keel__proc *p, keel__req req, uint32_t wait_mask) {
  p->req = req;
  p->wait_mask = wait_mask;
  keel__sched *s = keel__sched_self();
  keel__ctx_switch(&p->ctx, &s->ctx, req == KEEL__REQ_EXIT);
  /* resumed, possibly by another scheduler thread: `s` is stale now */
}

uint32_t keel__wait(keel__proc *p, uint32_t mask, uint64_t deadline_ms) {
  if (!p->hold_exits) mask |= KEEL__W_SIG;
  uint64_t sw = atomic_load_explicit(&p->sw, memory_order_relaxed);
  uint32_t seq = (KEEL__SW_SEQ(sw) + 1) & 0xFFFF;
  atomic_store_explicit(&p->sw, KEEL__SW(KEEL__SW_GEN(sw), seq, 0, KEEL__ST_RUNNING),
                        memory_order_relaxed);
  p->wake_cause = 0;
  /* A process that waits has drained its mailbox: whatever stream it
   * followed (or fed) is not keeping it busy now. */
  p->stream_ns = 0;
  if (partner(p)) atomic_store_explicit(&p->coupled, NULL, memory_order_relaxed);
  if (deadline_ms) {
    mask |= KEEL__W_TIMER;
    keel__wait_timer_arm(p, keel__sched_self(), deadline_ms,
                         KEEL__SW(KEEL__SW_GEN(sw), seq, mask, KEEL__ST_WAITING));
  }
  keel__proc_switch(p, KEEL__REQ_WAIT, mask);
  uint32_t cause = p->wake_cause;
  if (p->wait_timer) keel__wait_timer_disarm(p);
  return cause;
}

int keel_yield(void) {
  keel__proc *p = keel__proc_self();
  if (!p) return KEEL_ENOTPROC;
  keel__proc_switch(p, KEEL__REQ_YIELD, 0);
  keel__signals_handle(p);
  return 0;
}

/* keel_consume: the clock is read once per CONSUME_CHECK units, and the
 * caller yields once it has run CONSUME_SLICE_NS since its first look after
 * the switch-in (a switch-in only zeroes slice_ns: no clock read on the
 * switch path). */
#define CONSUME_CHECK    1000
#define CONSUME_SLICE_NS 1000000u

static int consume_slow(keel__proc *p) {
  p->reds = CONSUME_CHECK;
  keel__signals_handle(p); /* a kill (the watchdog's, for the hog limit) ends it here */
  uint64_t now = keel__now_ns();
  if (!p->busy_ns) p->busy_ns = now;
  int64_t limit = atomic_load_explicit(&p->hog_limit_ms, memory_order_relaxed);
  if (limit > 0 && now - p->busy_ns >= (uint64_t)limit * 1000000u) {
    char why[96];
    snprintf(why, sizeof why, "hog: ran %llu ms without waiting (limit %lld ms)",
             (unsigned long long)((now - p->busy_ns) / 1000000u), (long long)limit);
    atomic_fetch_add(&keel__g.hog_kills, 1);
    keel__proc_die(p, KEEL_REASON_KILLED, why); /* as a kill, with the reason's text */
  }
  if (!p->slice_ns) {
    p->slice_ns = now;
    return 0;
  }
  if (now - p->slice_ns < CONSUME_SLICE_NS) return 0;
  keel__proc_switch(p, KEEL__REQ_YIELD, 0);
  keel__signals_handle(p);
  return 1;
}

int keel_consume(unsigned units) {
  keel__proc *p = keel__proc_self();
  if (!p) return KEEL_ENOTPROC;
  if (units > CONSUME_CHECK) units = CONSUME_CHECK;
  p->reds -= (int32_t)units;
  return p->reds > 0 ? 0 : consume_slow(p);
}

/* ---- stream affinity ----------------------------------------------------------- */

/* A producer and a consumer that never wait (each always has work: the
 * producer its loop, the consumer a full mailbox) are never reunited by
 * "wake where the message came from": nobody is woken. Once the idle
 * scheduler steals one of them, every message is allocated on one core and
 * read and freed on the other, and with cheap messages that costs more than
 * the second core gains (cast_throughput: decision 0033). So a receiver
 * looks at the end of each budget slice spent receiving: when at least half
 * the slice's budget went to receives in a row from one sender that is busy
 * too (not waiting), and the slice took at most a set time a message
 * since its previous look (keel_rt_opts.stream_follow_ns, 150 ns by
 * default), it couples itself and the sender (thieves leave
 * the pair together, worth_stealing) and, if the sender runs elsewhere,
 * moves to the sender's scheduler at this yield. A slice slower than three
 * times that a message uncouples them: with that much work per message
 * two cores beat one. Between the two, nothing changes (hysteresis, so a
 * pair near the line does not go back and forth). Costs the clock read of
 * one check per slice, only for processes that use their whole budget. */

static void uncouple(keel__proc *p) {
  if (partner(p)) atomic_store_explicit(&p->coupled, NULL, memory_order_relaxed);
}

static void couple(keel__proc *p, keel__proc *with) {
  if (partner(p) != with) atomic_store_explicit(&p->coupled, with, memory_order_relaxed);
}

void keel__stream_check(keel__proc *p) {
  int64_t quick = keel__g.opt.stream_follow_ns;
  if (keel__g.nsched < 2 || keel__g.opt.deterministic || p->pinned || quick < 0) return;
  uint32_t budget = (uint32_t)keel__g.opt.budget;
  uint64_t now = keel__now_ns();
  uint64_t last = p->stream_ns;
  p->stream_ns = now;
  /* The sender's slot: a stale pid (it exited) gives NULL. Its fields are
   * read as hints; a wrong guess costs one misplaced process, not safety. */
  keel__proc *from = p->stream_from ? keel__lookup_live(p->stream_from) : NULL;
  if (!from || from == p || p->stream_n * 2 < budget) {
    uncouple(p);
    return;
  }
  if (!last) return; /* the first full slice since a wait: nothing to time yet */
  uint64_t per_msg = (now - last) / budget;
  if (per_msg > 3 * (uint64_t)quick) {
    uncouple(p);
    uncouple(from);
    return;
  }
  if (per_msg > (uint64_t)quick) return;
  uint32_t st = KEEL__SW_ST(atomic_load_explicit(&from->sw, memory_order_relaxed));
  if (st != KEEL__ST_RUNNING && st != KEEL__ST_RUNNABLE) return;
  couple(p, from);
  couple(from, p);
  int home = atomic_load_explicit(&from->home, memory_order_relaxed);
  keel__sched *s = keel__sched_self();
  if (home != s->id && home >= 0 && home < keel__g.nsched) p->migrate_to = home + 1;
}

/* ---- the scheduler side ----------------------------------------------------- */

static void sched_park(keel__sched *s, keel__proc *p) {
  uint64_t sw = atomic_load_explicit(&p->sw, memory_order_relaxed);
  uint32_t mask = p->wait_mask;
  uint64_t waiting = (sw & ~(uint64_t)0xFFFF) | ((uint64_t)mask << 8) | KEEL__ST_WAITING;
  /* seq_cst store, then seq_cst loads of the queues: pairs with producers'
   * seq_cst push followed by a seq_cst load of sw (Dekker), so a message or
   * signal that arrived while we were switching is never missed. */
  atomic_store_explicit(&p->sw, waiting, memory_order_seq_cst);
  uint32_t ready = 0;
  if ((mask & KEEL__W_MSG) && !keel__mbox_empty(&p->mbox)) ready = KEEL__W_MSG;
  if ((mask & KEEL__W_SIG) && atomic_load_explicit(&p->sig_pending, memory_order_seq_cst))
    ready = KEEL__W_SIG;
  if (ready) keel__wake_exact(p, waiting, ready);
  (void)s;
}

static void sched_run(keel__sched *s, keel__proc *p) {
  if (p->fresh) {
    /* Built here rather than in keel_spawn, off the spawner's path. A new
     * slab's top pages are already faulted in by the spawning thread
     * (stack.c, MADV_POPULATE_WRITE where the kernel has it), so on such
     * kernels the page is local to the spawner's core, not this one. */
    p->fresh = false;
    keel__ctx_make(&p->ctx, p->stack->lo, p->stack->size, keel__proc_entry, p);
  }
  s->current = p;
  atomic_store_explicit(&s->running_pid, p->pid, memory_order_relaxed);
  atomic_store_explicit(&p->home, s->id, memory_order_relaxed);
  uint64_t sw = atomic_load_explicit(&p->sw, memory_order_acquire);
  atomic_store_explicit(&p->sw, (sw & ~(uint64_t)0xFF) | KEEL__ST_RUNNING, memory_order_relaxed);
  p->budget = keel__g.opt.budget;
  p->stream_n = 0; /* receives in a row are counted within a slice */
  p->reds = CONSUME_CHECK;
  p->slice_ns = 0;
  if (p->req != KEEL__REQ_YIELD) p->busy_ns = 0; /* it waited (or is new): not busy since */
  KEEL__INC(s->n_switches);
  keel__ctx_switch(&s->ctx, &p->ctx, 0);
  s->current = NULL;
  atomic_store_explicit(&s->running_pid, 0, memory_order_relaxed);
  switch (p->req) {
  case KEEL__REQ_YIELD:
    sw = atomic_load_explicit(&p->sw, memory_order_relaxed);
    atomic_store_explicit(&p->sw, (sw & ~(uint64_t)0xFF) | KEEL__ST_RUNNABLE, memory_order_relaxed);
    if (p->migrate_to) {
      keel__sched *to = &keel__g.scheds[p->migrate_to - 1];
      p->migrate_to = 0;
      if (to != s) {
        KEEL__INC(s->n_migrations);
        inbox_push(to, p); /* it follows its sender (keel__stream_check) */
        break;
      }
    }
    push_local(s, p);
    break;
  case KEEL__REQ_WAIT: sched_park(s, p); break;
  case KEEL__REQ_EXIT: keel__proc_finalize(s, p); break;
  }
}

static void grq_take(keel__sched *s) {
  if (atomic_load_explicit(&keel__g.grq_len, memory_order_relaxed) == 0) return;
  pthread_mutex_lock(&keel__g.grq_lock);
  int n = 0;
  while (keel__g.grq_head && n < KEEL__RUNQ_SIZE / 2) {
    keel__proc *p = keel__g.grq_head;
    keel__g.grq_head = p->runq_next;
    if (!keel__g.grq_head) keel__g.grq_tail = NULL;
    atomic_store_explicit(
        &s->rq[(atomic_load_explicit(&s->rq_tail, memory_order_relaxed) + n) % KEEL__RUNQ_SIZE], p,
        memory_order_relaxed);
    n++;
  }
  atomic_fetch_sub_explicit(&keel__g.grq_len, n, memory_order_relaxed);
  pthread_mutex_unlock(&keel__g.grq_lock);
  if (n)
    atomic_store_explicit(&s->rq_tail, atomic_load_explicit(&s->rq_tail, memory_order_relaxed) + n,
                          memory_order_release);
}

static keel__proc *sched_next(keel__sched *s) {
  if (atomic_load_explicit(&s->in_nonempty, memory_order_relaxed)) inbox_drain(s);
  if (keel__g.opt.deterministic) return pq_pick_seeded(s);
  /* runnext first, but not forever; pinned processes and ring processes
   * alternate so neither starves. */
  keel__proc *p = NULL;
  if (atomic_load_explicit(&s->runnext, memory_order_relaxed)) {
    p = atomic_exchange_explicit(&s->runnext, NULL, memory_order_acq_rel);
    if (p && ++s->runnext_streak > RUNNEXT_STREAK_MAX) {
      ring_push(s, p);
      p = NULL;
    }
    if (p) return p;
  }
  s->runnext_streak = 0;
  if (s->pq_len && (s->n_switches & 1)) p = pq_pop(s);
  if (!p) p = ring_pop(s);
  if (!p) p = pq_pop(s);
  if (!p) {
    grq_take(s);
    p = ring_pop(s);
  }
  return p;
}

/* From a scheduler the watchdog saw stuck: the processes woken into its
 * inbox (by another thread: a blocking job done, a send from outside, a
 * spawn aimed at it), which its owner would drain only once the hog lets
 * go. Pinned ones stay: they use that scheduler's libuv handles. The first
 * is returned, the rest queued here. */
static keel__proc *inbox_steal(keel__sched *thief, keel__sched *v) {
  if (!atomic_load_explicit(&v->in_nonempty, memory_order_relaxed)) return NULL;
  keel__proc *taken = NULL, **tail = &taken;
  pthread_mutex_lock(&v->inbox_lock);
  keel__proc **pp = &v->in_head, *last = NULL;
  while (*pp) {
    keel__proc *p = *pp;
    if (p->pinned) {
      last = p;
      pp = &p->runq_next;
      continue;
    }
    *pp = p->runq_next;
    p->runq_next = NULL;
    *tail = p;
    tail = &p->runq_next;
  }
  v->in_tail = last;
  if (!v->in_head) atomic_store_explicit(&v->in_nonempty, 0, memory_order_relaxed);
  pthread_mutex_unlock(&v->inbox_lock);
  keel__proc *first = taken;
  if (!first) return NULL;
  for (keel__proc *p = first->runq_next; p;) {
    keel__proc *next = p->runq_next;
    push_local(thief, p);
    atomic_fetch_add_explicit(&thief->n_steals, 1, memory_order_relaxed);
    p = next;
  }
  atomic_fetch_add_explicit(&thief->n_steals, 1, memory_order_relaxed);
  return first;
}

/* Whether the watchdog saw v stuck and v has not switched since: the flag
 * itself stays set until the watchdog's next look (up to a tick), and a
 * thief that trusted it after the hold ended would split pairs the hold
 * never concerned (a scheduler thread the OS preempted for a tick on a
 * loaded machine looks stuck too, and then runs on). */
static bool stuck_now(keel__sched *v) {
  return atomic_load_explicit(&v->stuck, memory_order_acquire) &&
         atomic_load_explicit(&v->n_switches, memory_order_relaxed) ==
             atomic_load_explicit(&v->held_switches, memory_order_relaxed);
}

static keel__proc *sched_steal(keel__sched *s) {
  int n = keel__g.nsched;
  if (n < 2 || keel__g.opt.deterministic) return NULL;
  uint32_t start = (uint32_t)(xorshift(&s->rng) % (uint64_t)n);
  for (int round = 0; round < 2; round++) {
    for (int i = 0; i < n; i++) {
      keel__sched *v = &keel__g.scheds[(start + (uint32_t)i) % (uint32_t)n];
      if (v == s) continue;
      /* Two or more waiting: take half. A single waiting process (or the
       * runnext one) only from a scheduler the watchdog saw stuck in one
       * process for a whole tick: stealing it from a scheduler that is merely
       * busy for a few microseconds would split producer from consumer. */
      bool stuck = stuck_now(v);
      keel__proc *p = ring_steal(s, v, stuck ? 1 : 2);
      if (p) return p;
      if (stuck && atomic_load_explicit(&v->runnext, memory_order_relaxed)) {
        p = atomic_exchange_explicit(&v->runnext, NULL, memory_order_acq_rel);
        if (p) {
          atomic_fetch_add_explicit(&s->n_steals, 1, memory_order_relaxed);
          return p;
        }
      }
      if (stuck && (p = inbox_steal(s, v))) return p;
    }
    for (int k = 0; k < 50; k++)
      keel__cpu_relax();
  }
  return NULL;
}

/* Every uv_run of a scheduler goes through here, so keel__enqueue knows when
 * it is called from inside the loop. */
static void loop_run(keel__sched *s, uv_run_mode mode) {
  s->in_loop = true;
  uv_run(&s->loop, mode);
  s->in_loop = false;
}

static void sched_poll(keel__sched *s) {
  if (++s->runs_since_poll < 16) return;
  s->runs_since_poll = 0;
  uint64_t now = keel__now_ns();
  if (now - s->last_poll_ns < 500000) return;
  s->last_poll_ns = now;
  loop_run(s, UV_RUN_NOWAIT);
}

static void release_spinner(void) {
  /* A woken sibling (or anyone) that finished looking lets the next one be woken. */
  atomic_store_explicit(&keel__g.nspinning, 0, memory_order_release);
}

static void sched_sleep(keel__sched *s) {
  atomic_store_explicit(&s->sleeping, 1, memory_order_seq_cst); /* see keel__sched_wake */
  atomic_fetch_add_explicit(&keel__g.nsleeping, 1, memory_order_seq_cst);
  bool work = atomic_load_explicit(&s->in_nonempty, memory_order_seq_cst) ||
              atomic_load_explicit(&keel__g.grq_len, memory_order_seq_cst) > 0 || ring_len(s) > 0 ||
              s->pq_len > 0 || atomic_load_explicit(&s->runnext, memory_order_relaxed) ||
              atomic_load_explicit(&keel__g.state, memory_order_relaxed) != 1;
  if (!work) {
    uint64_t t0 = keel__now_ns();
    s->last_poll_ns = t0;
    atomic_store_explicit(&s->sleep_start_ns, t0, memory_order_relaxed);
    loop_run(s, UV_RUN_ONCE); /* blocks in epoll: timers, I/O, uv_async_send */
    KEEL__OWNER_ADD(s->idle_ns, keel__now_ns() - t0);
    atomic_store_explicit(&s->sleep_start_ns, 0, memory_order_relaxed);
  }
  atomic_fetch_sub_explicit(&keel__g.nsleeping, 1, memory_order_relaxed);
  atomic_store_explicit(&s->sleeping, 0, memory_order_relaxed);
}

static void on_async(uv_async_t *a) {
  (void)a;
}

static void *sched_main(void *arg) {
  keel__sched *s = arg;
  tl_sched = s;
  char tname[16];
  snprintf(tname, sizeof tname, "keel-sched-%d", s->id);
  pthread_setname_np(pthread_self(), tname);
  keel__ctx_init_thread(&s->ctx);
  keel__altstack_install(s);
  s->last_poll_ns = keel__now_ns();
  while (atomic_load_explicit(&keel__g.state, memory_order_acquire) == 1) {
    keel__proc *p = sched_next(s);
    if (!p) {
      loop_run(s, UV_RUN_NOWAIT); /* timers and I/O may make work */
      p = sched_next(s);
    }
    if (!p) p = sched_steal(s);
    if (p) {
      if (atomic_load_explicit(&keel__g.nspinning, memory_order_relaxed)) release_spinner();
      sched_run(s, p);
      sched_poll(s);
      continue;
    }
    release_spinner();
    sched_sleep(s);
  }
  keel__altstack_remove(s);
  return NULL;
}

/* ---- start and stop ------------------------------------------------------- */

/* At shutdown: close every handle still on a loop. keel's own are freed;
 * the async handle is part of the scheduler; anything else is the user's. */
static void close_walk(uv_handle_t *h, void *arg) {
  (void)arg;
  if (uv_is_closing(h)) return;
  uv_close(h, h->data == keel__handle_tag ? keel__handle_close_cb : NULL);
}

int keel__sched_start_all(void) {
  int n = keel__g.nsched;
  keel__g.scheds = calloc((size_t)n, sizeof(keel__sched));
  if (!keel__g.scheds) return KEEL_ENOMEM;
  uint64_t seed = keel__g.opt.seed ? keel__g.opt.seed : 0x9E3779B97F4A7C15ull;
  for (int i = 0; i < n; i++) {
    keel__sched *s = &keel__g.scheds[i];
    s->id = i;
    s->rng = seed + (uint64_t)i * 0x9E3779B97F4A7C15ull;
    if (!s->rng) s->rng = 1;
    pthread_mutex_init(&s->inbox_lock, NULL);
    if (uv_loop_init(&s->loop) != 0) return KEEL_ENOMEM;
    uv_async_init(&s->loop, &s->async, on_async);
  }
  for (int i = 0; i < n; i++) {
    keel__sched *s = &keel__g.scheds[i];
    if (pthread_create(&s->thread, NULL, sched_main, s) != 0) {
      atomic_store(&keel__g.state, 2);
      for (int j = 0; j < i; j++) {
        uv_async_send(&keel__g.scheds[j].async);
        pthread_join(keel__g.scheds[j].thread, NULL);
      }
      return KEEL_ENOMEM;
    }
  }
  return 0;
}

void keel__sched_stop_all(void) {
  for (int i = 0; i < keel__g.nsched; i++)
    uv_async_send(&keel__g.scheds[i].async);
  for (int i = 0; i < keel__g.nsched; i++)
    pthread_join(keel__g.scheds[i].thread, NULL);
}

/* After every scheduler thread has exited: close the loops. */
void keel__sched_free_all(void) {
  for (int i = 0; i < keel__g.nsched; i++) {
    keel__sched *s = &keel__g.scheds[i];
    keel__sched_cancel_requests(s);
    keel__timers_fini(s);
    uv_walk(&s->loop, close_walk, NULL);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    uv_loop_close(&s->loop);
    pthread_mutex_destroy(&s->inbox_lock);
  }
}

/* The scheduler a process spawned from outside any scheduler starts on. */
int keel__sched_pick_external(void) {
  return (int)(atomic_fetch_add_explicit(&keel__g.rr, 1, memory_order_relaxed) %
               (unsigned)keel__g.nsched);
}

/* Used by spawn with a scheduler hint and from outside: queue p on s. */
void keel__enqueue_on(keel__sched *s, keel__proc *p) {
  if (keel__sched_self() == s) {
    push_local(s, p);
    if (s->in_loop) uv_stop(&s->loop); /* see keel__enqueue */
  } else {
    inbox_push(s, p);
  }
}

/* ---- watchdog: stuck processes --------------------------------------------- */

/* A process past its hog limit (keel_set_hog_limit) gets an untrappable
 * kill, once; it takes effect at its next consume, yield or wait. Called
 * with wd_lock held; sends without it (a signal takes the target's lock). */
static void hog_limit(int sched, keel_pid_t pid, int64_t held, keel_pid_t *killed) {
  if (*killed == pid) return;
  keel__proc *p = keel__slot(KEEL__PID_IDX(pid));
  int64_t limit = p ? atomic_load_explicit(&p->hog_limit_ms, memory_order_relaxed) : 0;
  if (limit <= 0 || held < limit) return;
  *killed = pid;
  char why[96];
  snprintf(why, sizeof why, "hog: held scheduler %d for %lld ms (limit %lld ms)", sched,
           (long long)held, (long long)limit);
  pthread_mutex_unlock(&keel__g.wd_lock);
  keel_exit_signal(pid, KEEL_REASON_KILL, why);
  atomic_fetch_add(&keel__g.hog_kills, 1);
  pthread_mutex_lock(&keel__g.wd_lock);
}

static void *watchdog_main(void *arg) {
  (void)arg;
  pthread_setname_np(pthread_self(), "keel-watchdog");
  int n = keel__g.nsched;
  uint64_t *last = calloc((size_t)n, sizeof *last);
  uint64_t *since = calloc((size_t)n, sizeof *since);
  keel_pid_t *reported = calloc((size_t)n, sizeof *reported);
  keel_pid_t *killed = calloc((size_t)n, sizeof *killed); /* sent its hog limit's kill */
  int64_t stuck_ms = keel__g.opt.stuck_ms;
  int64_t tick_ms = stuck_ms / 4;
  if (tick_ms < 5) tick_ms = 5;
  if (tick_ms > 50) tick_ms = 50;
  pthread_mutex_lock(&keel__g.wd_lock);
  atomic_store(&keel__g.watchdog_running, 1);
  while (!atomic_load(&keel__g.watchdog_stop)) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += tick_ms * 1000000;
    ts.tv_sec += ts.tv_nsec / 1000000000;
    ts.tv_nsec %= 1000000000;
    pthread_cond_timedwait(&keel__g.wd_cond, &keel__g.wd_lock, &ts);
    if (atomic_load(&keel__g.watchdog_stop)) break;
    uint64_t now = keel__now_ns();
    for (int i = 0; i < n; i++) {
      keel__sched *s = &keel__g.scheds[i];
      uint64_t sw = atomic_load_explicit(&s->n_switches, memory_order_relaxed);
      keel_pid_t pid = atomic_load_explicit(&s->running_pid, memory_order_relaxed);
      if (sw != last[i] || pid == 0) {
        last[i] = sw;
        since[i] = now;
        reported[i] = 0;
        if (atomic_load_explicit(&s->stuck, memory_order_relaxed)) {
          atomic_store_explicit(&s->stuck, 0, memory_order_relaxed);
          atomic_store_explicit(&s->held_since_ns, 0, memory_order_relaxed);
        }
        continue;
      }
      atomic_store_explicit(&s->held_switches, sw, memory_order_relaxed);
      atomic_store_explicit(&s->held_since_ns, since[i], memory_order_relaxed);
      /* release: a thief that sees stuck also sees this hold's held_switches */
      atomic_store_explicit(&s->stuck, 1, memory_order_release);
      /* Same process, no switch since `since`. Let a sleeping sibling steal
       * what waits behind it, and report it once past the threshold. */
      if ((ring_len(s) > 0 || atomic_load_explicit(&s->runnext, memory_order_relaxed) ||
           atomic_load_explicit(&s->in_nonempty, memory_order_relaxed)) &&
          atomic_load(&keel__g.nsleeping) > 0) {
        for (int j = 0; j < n; j++)
          if (j != i && atomic_load(&keel__g.scheds[j].sleeping)) {
            uv_async_send(&keel__g.scheds[j].async);
            break;
          }
      }
      int64_t held = (int64_t)((now - since[i]) / 1000000);
      if (stuck_ms > 0 && held >= stuck_ms && reported[i] != pid) {
        reported[i] = pid;
        atomic_fetch_add(&keel__g.stuck_reports, 1);
        keel__proc *p = keel__slot(KEEL__PID_IDX(pid));
        char name[KEEL__NAME_MAX] = {0};
        if (p)
          for (int k = 0; k < KEEL__NAME_MAX - 1; k++)
            name[k] = __atomic_load_n(&p->name[k], __ATOMIC_RELAXED);
        keel_report r = {.kind = KEEL_REPORT_STUCK,
                         .pid = pid,
                         .name = name,
                         .scheduler = i,
                         .held_ms = held,
                         .reason = ""};
        pthread_mutex_unlock(&keel__g.wd_lock);
        keel__report(&r);
        pthread_mutex_lock(&keel__g.wd_lock);
      }
      hog_limit(i, pid, held, &killed[i]);
    }
  }
  atomic_store(&keel__g.watchdog_running, 0);
  for (int i = 0; i < n; i++)
    atomic_store_explicit(&keel__g.scheds[i].held_since_ns, 0, memory_order_relaxed);
  pthread_mutex_unlock(&keel__g.wd_lock);
  free(last);
  free(since);
  free(reported);
  free(killed);
  return NULL;
}

int keel__watchdog_start(void) {
  atomic_store(&keel__g.watchdog_stop, 0);
  pthread_mutex_init(&keel__g.wd_lock, NULL);
  pthread_cond_init(&keel__g.wd_cond, NULL);
  if (pthread_create(&keel__g.watchdog, NULL, watchdog_main, NULL) != 0) return KEEL_ENOMEM;
  keel__g.watchdog_started = 1;
  return 0;
}

void keel__watchdog_stop(void) {
  if (!keel__g.watchdog_started) return;
  pthread_mutex_lock(&keel__g.wd_lock);
  atomic_store(&keel__g.watchdog_stop, 1);
  pthread_cond_signal(&keel__g.wd_cond);
  pthread_mutex_unlock(&keel__g.wd_lock);
  pthread_join(keel__g.watchdog, NULL);
  keel__g.watchdog_started = 0;
  pthread_cond_destroy(&keel__g.wd_cond);
  pthread_mutex_destroy(&keel__g.wd_lock);
}
