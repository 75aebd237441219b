/* timer.c - timers on the schedulers' libuv loops.
 *
 * Two kinds share one structure (keel__timer, a uv_timer_t first):
 *
 * Wait timers end a receive, await, sleep or I/O wait at its deadline. A
 * process arms one on the loop of the scheduler it runs on, just before it
 * parks; the timer remembers the exact state word of that wait (generation,
 * wait sequence, mask, WAITING), and firing it is a compare-and-swap from that
 * word, so a timer can only ever end the wait it was armed for. A process
 * woken by a message may resume on another scheduler; it then cannot touch the
 * timer (libuv handles are single-threaded), so it posts the timer back to its
 * owner's inbox to be stopped and recycled there. Timers are cached per
 * scheduler and reused without closing.
 *
 * Send timers (keel_send_after, keel_send_interval) own a message and are
 * found by reference in a sharded hash index, so keel_cancel_timer works from
 * any thread: firing and cancelling race on one atomic state, and whoever wins
 * owns the message (an interval timer's firing copies it under the index lock
 * and stays armed).
 */
#include <stdlib.h>
#include <string.h>

#include "keel/timer.h"
#include "rt/internal.h"

#define TIMER_CACHE_MAX 256
#define SHARDS          16

typedef struct shard {
  pthread_mutex_t lock;
  keel__timer **buckets;
  uint32_t nbuckets;
  uint32_t n;
} shard;

static shard shards[SHARDS];

int keel__timers_init(void) {
  for (int i = 0; i < SHARDS; i++) {
    pthread_mutex_init(&shards[i].lock, NULL);
    shards[i].buckets = NULL;
    shards[i].nbuckets = 0;
    shards[i].n = 0;
  }
  return 0;
}

void keel__timers_global_fini(void) {
  for (int i = 0; i < SHARDS; i++) {
    free(shards[i].buckets);
    shards[i].buckets = NULL;
    shards[i].nbuckets = shards[i].n = 0;
    pthread_mutex_destroy(&shards[i].lock);
  }
}

static shard *shard_of(keel_ref_t ref) {
  return &shards[(ref * 0x9E3779B97F4A7C15ull) >> 60];
}

static uint32_t bucket_of(const shard *sh, keel_ref_t ref) {
  return (uint32_t)((ref * 0xff51afd7ed558ccdull) >> 32) & (sh->nbuckets - 1);
}

/* Under sh->lock. */
static int index_add(shard *sh, keel__timer *t) {
  if (sh->n + 1 > sh->nbuckets * 2) {
    uint32_t nb = sh->nbuckets ? sh->nbuckets * 2 : 64;
    keel__timer **b = calloc(nb, sizeof *b);
    if (!b) return KEEL_ENOMEM;
    uint32_t old = sh->nbuckets;
    keel__timer **ob = sh->buckets;
    sh->buckets = b;
    sh->nbuckets = nb;
    for (uint32_t i = 0; i < old; i++)
      for (keel__timer *x = ob[i], *nx; x; x = nx) {
        nx = x->hnext;
        uint32_t k = bucket_of(sh, x->ref);
        x->hnext = b[k];
        b[k] = x;
      }
    free(ob);
  }
  uint32_t k = bucket_of(sh, t->ref);
  t->hnext = sh->buckets[k];
  sh->buckets[k] = t;
  sh->n++;
  return 0;
}

/* Under sh->lock. Unlinks and returns the timer with ref, or NULL. */
static keel__timer *index_take(shard *sh, keel_ref_t ref) {
  if (!sh->nbuckets) return NULL;
  keel__timer **pp = &sh->buckets[bucket_of(sh, ref)];
  for (; *pp; pp = &(*pp)->hnext)
    if ((*pp)->ref == ref) {
      keel__timer *t = *pp;
      *pp = t->hnext;
      sh->n--;
      return t;
    }
  return NULL;
}

static char handle_tag_;
void *const keel__handle_tag = &handle_tag_;

void keel__handle_close_cb(uv_handle_t *h) {
  if (h->type == UV_TIMER) {
    keel__timer *t = (keel__timer *)h;
    if (t->is_send && atomic_load(&t->state) == KEEL__TM_ARMED) {
      shard *sh = shard_of(t->ref);
      pthread_mutex_lock(&sh->lock);
      index_take(sh, t->ref);
      pthread_mutex_unlock(&sh->lock);
      keel_msg_free(t->msg);
    }
  }
  free(h);
}

keel__timer *keel__timer_get(keel__sched *s) {
  keel__timer *t = s->timer_cache;
  if (t) {
    s->timer_cache = t->next;
  } else {
    t = calloc(1, sizeof *t);
    if (!t) return NULL;
    uv_timer_init(&s->loop, &t->uv);
    t->uv.data = keel__handle_tag;
    t->sched = s;
  }
  t->next = NULL;
  t->proc = NULL;
  t->msg = NULL;
  t->is_send = false;
  atomic_store_explicit(&t->state, KEEL__TM_ARMED, memory_order_relaxed);
  return t;
}

static void timer_recycle(keel__sched *s, keel__timer *t) {
  uv_timer_stop(&t->uv);
  if (t->is_send) {
    uv_close((uv_handle_t *)&t->uv, keel__handle_close_cb);
    return;
  }
  t->proc = NULL;
  t->next = s->timer_cache;
  s->timer_cache = t;
}

/* Milliseconds from the loop's notion of now to an absolute deadline. libuv
 * fires a timer once its loop time (CLOCK_MONOTONIC, ms) reaches the due
 * time, which is then exactly the deadline: never early, even if the loop's
 * time is a little stale. */
static uint64_t ms_until(uv_loop_t *loop, uint64_t deadline_ms) {
  uint64_t now = uv_now(loop);
  return deadline_ms > now ? deadline_ms - now : 0;
}

/* ---- wait timers ---------------------------------------------------------------- */

static void on_wait_timer(uv_timer_t *h) {
  keel__timer *t = (keel__timer *)h;
  if (t->proc) keel__wake_exact(t->proc, t->sw_expect, KEEL__W_TIMER);
}

void keel__wait_timer_arm(keel__proc *p, keel__sched *s, uint64_t deadline_ms, uint64_t expect) {
  keel__timer *t = keel__timer_get(s);
  if (!t) return; /* out of memory: the wait ends at the next message or signal */
  t->proc = p;
  t->sw_expect = expect;
  p->wait_timer = t;
  uv_timer_start(&t->uv, on_wait_timer, ms_until(&s->loop, deadline_ms), 0);
}

void keel__wait_timer_disarm(keel__proc *p) {
  keel__timer *t = p->wait_timer;
  p->wait_timer = NULL;
  keel__sched *s = keel__sched_self();
  if (t->sched == s) {
    timer_recycle(s, t);
    return;
  }
  /* The owner stops it. No wakeup needed: until then a fire finds a stale
   * state word and does nothing. */
  keel__sched *o = t->sched;
  pthread_mutex_lock(&o->inbox_lock);
  t->next = o->in_cancel;
  o->in_cancel = t;
  atomic_store_explicit(&o->in_nonempty, 1, memory_order_relaxed);
  pthread_mutex_unlock(&o->inbox_lock);
}

void keel__sched_cancel_requests(keel__sched *s) {
  pthread_mutex_lock(&s->inbox_lock);
  keel__timer *t = s->in_cancel;
  s->in_cancel = NULL;
  pthread_mutex_unlock(&s->inbox_lock);
  while (t) {
    keel__timer *next = t->next;
    timer_recycle(s, t);
    t = next;
  }
}

void keel__timers_fini(keel__sched *s) {
  keel__timer *t = s->timer_cache;
  s->timer_cache = NULL;
  while (t) {
    keel__timer *next = t->next;
    uv_close((uv_handle_t *)&t->uv, keel__handle_close_cb);
    t = next;
  }
}

/* ---- send timers ------------------------------------------------------------------ */

static void on_send_timer(uv_timer_t *h) {
  keel__timer *t = (keel__timer *)h;
  shard *sh = shard_of(t->ref);
  pthread_mutex_lock(&sh->lock);
  int armed = KEEL__TM_ARMED;
  bool won = atomic_compare_exchange_strong(&t->state, &armed, KEEL__TM_FIRED);
  if (won) index_take(sh, t->ref);
  pthread_mutex_unlock(&sh->lock);
  if (!won) return; /* cancelled: the canceller closes the handle (here or via our inbox) */
  struct keel_msg *m = t->msg;
  t->msg = NULL;
  keel__deliver(t->to, m);
  uv_close((uv_handle_t *)&t->uv, keel__handle_close_cb);
}

/* An interval timer keeps its message as a template and delivers a copy each
 * time, under the shard lock so that a cancel (which takes the template under
 * the same lock) cannot free it mid-copy. It ends itself once `to` is gone. */
static struct keel_msg *msg_clone(const struct keel_msg *m) {
  struct keel_msg *c = keel__msg_alloc(KEEL_MSG_USER, m->tag, m->size);
  if (!c) return NULL;
  if (m->size) memcpy(c->data, m->data, m->size);
  c->from = m->from;
  return c;
}

static void on_interval_timer(uv_timer_t *h) {
  keel__timer *t = (keel__timer *)h;
  shard *sh = shard_of(t->ref);
  pthread_mutex_lock(&sh->lock);
  bool armed = atomic_load(&t->state) == KEEL__TM_ARMED;
  bool alive = armed && keel_is_alive(t->to);
  if (armed && !alive) {
    atomic_store(&t->state, KEEL__TM_FIRED);
    index_take(sh, t->ref);
  } else if (armed) {
    /* delivered under the lock: once a cancel has returned, no tick follows */
    struct keel_msg *copy = msg_clone(t->msg);
    if (copy) keel__deliver(t->to, copy); /* out of memory: this tick is skipped */
  }
  pthread_mutex_unlock(&sh->lock);
  if (!armed || alive) return; /* cancelled: the canceller closes the handle */
  keel_msg_free(t->msg);
  t->msg = NULL;
  uv_timer_stop(&t->uv);
  uv_close((uv_handle_t *)&t->uv, keel__handle_close_cb);
}

static int arm_send(keel_pid_t to, int64_t ms, keel_msg_t *m, keel_ref_t *tref, bool repeat) {
  if (!m) return KEEL_EINVAL;
  if (ms < 0 || !to || (repeat && (ms == 0 || keel_msg_attachment(m)))) {
    keel_msg_free(m);
    return KEEL_EINVAL;
  }
  keel__sched *s = keel__sched_self();
  if (!s) {
    keel_msg_free(m);
    return KEEL_ENOTPROC;
  }
  keel__timer *t = calloc(1, sizeof *t);
  if (!t) {
    keel_msg_free(m);
    return KEEL_ENOMEM;
  }
  uv_timer_init(&s->loop, &t->uv);
  t->uv.data = keel__handle_tag;
  t->sched = s;
  t->is_send = true;
  t->ref = keel_make_ref();
  t->to = to;
  m->kind = KEEL_MSG_USER;
  m->from = keel_self();
  t->msg = m;
  atomic_init(&t->state, KEEL__TM_ARMED);
  shard *sh = shard_of(t->ref);
  pthread_mutex_lock(&sh->lock);
  int rc = index_add(sh, t);
  pthread_mutex_unlock(&sh->lock);
  if (rc) {
    t->msg = NULL;
    keel_msg_free(m);
    uv_close((uv_handle_t *)&t->uv, keel__handle_close_cb);
    return rc;
  }
  if (tref) *tref = t->ref;
  uv_update_time(&s->loop);
  if (repeat)
    uv_timer_start(&t->uv, on_interval_timer, (uint64_t)ms, (uint64_t)ms);
  else
    uv_timer_start(&t->uv, on_send_timer, (uint64_t)ms, 0);
  return 0;
}

int keel_send_after(keel_pid_t to, int64_t ms, keel_msg_t *m, keel_ref_t *tref) {
  return arm_send(to, ms, m, tref, false);
}

int keel_send_interval(keel_pid_t to, int64_t ms, keel_msg_t *m, keel_ref_t *tref) {
  return arm_send(to, ms, m, tref, true);
}

int keel_cancel_timer(keel_ref_t tref) {
  if (!tref) return KEEL_ENOENT;
  shard *sh = shard_of(tref);
  pthread_mutex_lock(&sh->lock);
  keel__timer *t = index_take(sh, tref);
  bool won = false;
  if (t) {
    int armed = KEEL__TM_ARMED;
    won = atomic_compare_exchange_strong(&t->state, &armed, KEEL__TM_CANCELLED);
  }
  struct keel_msg *m = NULL;
  if (won) {
    m = t->msg;
    t->msg = NULL;
  }
  pthread_mutex_unlock(&sh->lock);
  if (!won) return KEEL_ENOENT;
  keel_msg_free(m);
  /* Close the handle on its own loop: here if we run there, else via its inbox. */
  keel__sched *s = keel__sched_self();
  keel__sched *o = t->sched;
  if (s == o) {
    uv_timer_stop(&t->uv);
    uv_close((uv_handle_t *)&t->uv, keel__handle_close_cb);
  } else {
    pthread_mutex_lock(&o->inbox_lock);
    t->next = o->in_cancel;
    o->in_cancel = t;
    atomic_store_explicit(&o->in_nonempty, 1, memory_order_seq_cst);
    pthread_mutex_unlock(&o->inbox_lock);
    keel__sched_wake(o);
  }
  return 0;
}

/* ---- sleep ---------------------------------------------------------------------- */

int keel_sleep(int64_t ms) {
  keel__proc *p = keel__proc_self();
  if (!p) return KEEL_ENOTPROC;
  if (ms < 0) return KEEL_EINVAL;
  if (ms == 0) return keel_yield();
  uint64_t deadline = keel__deadline(ms);
  for (;;) {
    keel__signals_handle(p);
    if (keel__past(deadline)) return 0;
    uint32_t cause = keel__wait(p, 0, deadline);
    if (cause == KEEL__W_TIMER) {
      keel__signals_handle(p);
      return 0;
    }
  }
}
