/* mailbox.c - messages, the mailbox queue, receive, selective receive, and
 * replies matched by reference.
 *
 * The mailbox is Vyukov's intrusive multi-producer single-consumer queue:
 * a send is one atomic exchange plus one store, with no lock and no CAS loop,
 * so senders never block and never fail. Only the owning process pops.
 *
 * Messages carry the pid of the incarnation they were sent to. A slot's
 * mailbox outlives its processes (slots are type-stable), so a send that
 * raced the receiver's death may land in the queue after the final drain;
 * the next incarnation drops such stale messages unseen (counted as sent to
 * a dead process).
 *
 * Selective receive keeps the messages it skipped in a private "kept aside"
 * list, in arrival order, ahead of everything still in the queue, so the
 * mailbox order is the order of (kept aside ++ queue). Each call tests each
 * message at most once.
 *
 * Replies: a process arms references in a small open-addressing table. When
 * the owner pops a REPLY it looks its ref up there: armed -> parked in the
 * table for keel_await; not armed (the caller gave up) -> dropped and counted.
 * A DOWN whose monitor ref is armed is parked the same way, which is how a
 * call learns that its server died. Matching is O(1) per message; nothing is
 * ever rescanned.
 */
#include <stdlib.h>
#include <string.h>

#include "rt/internal.h"

#define KEEL__INC(ctr)                                                                             \
  atomic_store_explicit(&(ctr), atomic_load_explicit(&(ctr), memory_order_relaxed) + 1,            \
                        memory_order_relaxed)

/* ---- counters --------------------------------------------------------------- */

void keel__count_to_dead(void) {
  keel__sched *s = keel__sched_self();
  if (s)
    KEEL__INC(s->n_to_dead);
  else
    atomic_fetch_add_explicit(&keel__g.ext_to_dead, 1, memory_order_relaxed);
}

static void count_sent(void) {
  keel__sched *s = keel__sched_self();
  if (s)
    KEEL__INC(s->n_sent);
  else
    atomic_fetch_add_explicit(&keel__g.ext_sent, 1, memory_order_relaxed);
}

static void count_reply_dropped(void) {
  keel__sched *s = keel__sched_self();
  if (s)
    KEEL__INC(s->n_replies_dropped);
  else
    atomic_fetch_add_explicit(&keel__g.ext_replies_dropped, 1, memory_order_relaxed);
}

/* A message that never reached a live receiver. */
static void count_dropped(const struct keel_msg *m) {
  if (m->kind == KEEL_MSG_REPLY)
    count_reply_dropped();
  else
    keel__count_to_dead();
}

/* ---- messages ----------------------------------------------------------------- */

struct keel_msg *keel__msg_alloc(uint8_t kind, uint32_t tag, size_t size) {
  if (size > SIZE_MAX - sizeof(struct keel_msg)) return NULL;
  struct keel_msg *m = malloc(sizeof *m + size);
  if (!m) return NULL;
  atomic_store_explicit(&m->next, NULL, memory_order_relaxed);
  m->to = 0;
  m->from = 0;
  m->ref = 0;
  m->tag = tag;
  m->kind = kind;
  m->reason = 0;
  m->flags = 0;
  m->proto = 0;
  m->size = size;
  return m;
}

keel_msg_t *keel_msg_new(uint32_t tag, size_t size) {
  return keel__msg_alloc(KEEL_MSG_USER, tag, size);
}

keel_msg_t *keel_msg_copy(uint32_t tag, const void *data, size_t size) {
  keel_msg_t *m = keel__msg_alloc(KEEL_MSG_USER, tag, size);
  if (m && size) memcpy(m->data, data, size);
  return m;
}

/* The attachment pointer lives just after the payload, 8-byte aligned. */
static void **attach_slot(const keel_msg_t *m) {
  size_t off = (m->size + 7) & ~(size_t)7;
  return (void **)(void *)(m->data + off);
}

void keel_msg_free(keel_msg_t *m) {
  if (m && (m->flags & KEEL__MF_ATTACHED)) free(*attach_slot(m));
  free(m);
}

keel_msg_t *keel_msg_attach(keel_msg_t *m, void *blob) {
  if (!m) return NULL;
  if (m->flags & KEEL__MF_ATTACHED) {
    free(*attach_slot(m));
    *attach_slot(m) = blob;
    return m;
  }
  size_t off = (m->size + 7) & ~(size_t)7;
  keel_msg_t *n = realloc(m, sizeof *m + off + sizeof(void *));
  if (!n) return NULL;
  n->flags |= KEEL__MF_ATTACHED;
  *attach_slot(n) = blob;
  return n;
}

void *keel_msg_attachment(const keel_msg_t *m) {
  return m && (m->flags & KEEL__MF_ATTACHED) ? *attach_slot(m) : NULL;
}

void *keel_msg_detach(keel_msg_t *m) {
  if (!m || !(m->flags & KEEL__MF_ATTACHED)) return NULL;
  void *blob = *attach_slot(m);
  *attach_slot(m) = NULL;
  m->flags &= (uint8_t)~KEEL__MF_ATTACHED;
  return blob;
}
void *keel_msg_data(const keel_msg_t *m) {
  return (void *)m->data;
}
size_t keel_msg_size(const keel_msg_t *m) {
  return m->size;
}
uint32_t keel_msg_tag(const keel_msg_t *m) {
  return m->tag;
}
keel_msg_kind keel_msg_kind_of(const keel_msg_t *m) {
  return (keel_msg_kind)m->kind;
}
keel_pid_t keel_msg_from(const keel_msg_t *m) {
  return m->from;
}
keel_ref_t keel_msg_ref(const keel_msg_t *m) {
  return m->ref;
}
void keel_msg_set_ref(keel_msg_t *m, keel_ref_t ref) {
  m->ref = ref;
}
uint8_t keel_msg_proto(const keel_msg_t *m) {
  return m->proto;
}
void keel_msg_set_proto(keel_msg_t *m, uint8_t proto) {
  m->proto = proto;
}

int keel_msg_exit_info(const keel_msg_t *m, keel_pid_t *pid, keel_reason *reason) {
  if (!m || (m->kind != KEEL_MSG_EXIT && m->kind != KEEL_MSG_DOWN)) return KEEL_EINVAL;
  if (pid) *pid = m->from;
  if (reason) {
    reason->kind = (keel_reason_kind)m->reason;
    reason->text = (const char *)m->data;
  }
  return 0;
}

/* ---- the queue ---------------------------------------------------------------- */

void keel__mbox_init(keel__mbox *q) {
  atomic_store_explicit(&q->stub.next, NULL, memory_order_relaxed);
  atomic_store_explicit(&q->head, &q->stub, memory_order_relaxed);
  atomic_store_explicit(&q->tail, &q->stub, memory_order_relaxed);
}

void keel__mbox_push(keel__mbox *q, struct keel_msg *m) {
  atomic_store_explicit(&m->next, NULL, memory_order_relaxed);
  /* seq_cst exchange: orders this push before the sender's later load of the
   * receiver's state word (the wakeup protocol, internal.h). */
  struct keel_msg *prev = atomic_exchange_explicit(&q->head, m, memory_order_seq_cst);
  /* release: the consumer that reads this link sees m's contents */
  atomic_store_explicit(&prev->next, m, memory_order_release);
}

struct keel_msg *keel__mbox_pop(keel__mbox *q) {
  struct keel_msg *tail = atomic_load_explicit(&q->tail, memory_order_relaxed);
  struct keel_msg *next = atomic_load_explicit(&tail->next, memory_order_acquire);
  if (tail == &q->stub) {
    if (!next) return NULL;
    atomic_store_explicit(&q->tail, next, memory_order_relaxed);
    tail = next;
    next = atomic_load_explicit(&next->next, memory_order_acquire);
  }
  if (next) {
    atomic_store_explicit(&q->tail, next, memory_order_relaxed);
    return tail;
  }
  if (tail != atomic_load_explicit(&q->head, memory_order_acquire))
    return NULL; /* a producer is between its exchange and its link */
  keel__mbox_push(q, &q->stub);
  next = atomic_load_explicit(&tail->next, memory_order_acquire);
  if (next) {
    atomic_store_explicit(&q->tail, next, memory_order_relaxed);
    return tail;
  }
  return NULL;
}

bool keel__mbox_empty(keel__mbox *q) {
  /* Also called by the scheduler parking the owner, which may already be
   * running elsewhere: hence the relaxed atomic read of tail. A stale answer
   * only causes a wake attempt that fails or a wake left to the producer. */
  return atomic_load_explicit(&q->tail, memory_order_relaxed) == &q->stub &&
         atomic_load_explicit(&q->head, memory_order_seq_cst) == &q->stub;
}

/* ---- armed references ---------------------------------------------------------- */

#define REF_TOMB UINT64_MAX

static uint32_t ref_hash(keel_ref_t r) {
  r ^= r >> 33;
  r *= 0xff51afd7ed558ccdull;
  r ^= r >> 33;
  return (uint32_t)r;
}

static keel__refslot *ref_find(keel__reftab *t, keel_ref_t ref) {
  if (!t->cap) return NULL;
  uint32_t mask = t->cap - 1;
  for (uint32_t i = ref_hash(ref) & mask;; i = (i + 1) & mask) {
    if (t->v[i].ref == ref) return &t->v[i];
    if (t->v[i].ref == 0) return NULL;
  }
}

static int ref_grow(keel__reftab *t) {
  uint32_t cap = t->cap ? t->cap * 2 : 8;
  if (t->cap && (t->n + 1) * 2 < t->cap) cap = t->cap; /* only tombstones: rehash in place */
  keel__refslot *nv = calloc(cap, sizeof *nv);
  if (!nv) return KEEL_ENOMEM;
  for (uint32_t i = 0; i < t->cap; i++) {
    keel__refslot *s = &t->v[i];
    if (s->ref == 0 || s->ref == REF_TOMB) continue;
    uint32_t j = ref_hash(s->ref) & (cap - 1);
    while (nv[j].ref)
      j = (j + 1) & (cap - 1);
    nv[j] = *s;
  }
  free(t->v);
  t->v = nv;
  t->cap = cap;
  t->tomb = 0;
  return 0;
}

static int ref_insert(keel__reftab *t, keel_ref_t ref) {
  if (ref_find(t, ref)) return 0;
  if ((t->n + t->tomb + 1) * 4 > t->cap * 3) {
    int rc = ref_grow(t);
    if (rc) return rc;
  }
  uint32_t mask = t->cap - 1;
  uint32_t i = ref_hash(ref) & mask;
  while (t->v[i].ref != 0 && t->v[i].ref != REF_TOMB)
    i = (i + 1) & mask;
  if (t->v[i].ref == REF_TOMB) t->tomb--;
  t->v[i].ref = ref;
  t->v[i].msg = t->v[i].last = NULL;
  t->n++;
  return 0;
}

static void ref_remove(keel__reftab *t, keel__refslot *s) {
  s->ref = REF_TOMB;
  s->msg = s->last = NULL;
  t->n--;
  t->tomb++;
}

static struct keel_msg *msg_next(struct keel_msg *m) {
  return atomic_load_explicit(&m->next, memory_order_relaxed);
}

/* Parks m under its armed ref (a reply, or the DOWN of the monitor). */
static void ref_park(keel__refslot *s, struct keel_msg *m) {
  atomic_store_explicit(&m->next, NULL, memory_order_relaxed);
  if (s->last)
    atomic_store_explicit(&s->last->next, m, memory_order_relaxed);
  else
    s->msg = m;
  s->last = m;
}

static struct keel_msg *ref_take(keel__refslot *s) {
  struct keel_msg *m = s->msg;
  if (!m) return NULL;
  s->msg = msg_next(m);
  if (!s->msg) s->last = NULL;
  atomic_store_explicit(&m->next, NULL, memory_order_relaxed);
  return m;
}

void keel__reftab_free(keel__reftab *t) {
  for (uint32_t i = 0; i < t->cap; i++)
    if (t->v[i].ref && t->v[i].ref != REF_TOMB)
      for (struct keel_msg *m = t->v[i].msg, *n; m; m = n) {
        n = msg_next(m);
        keel_msg_free(m);
      }
  free(t->v);
  memset(t, 0, sizeof *t);
}

/* ---- the owner's side ----------------------------------------------------------- */

/* Pops the next message that receive may see, consuming replies and DOWNs for
 * armed refs, stale deliveries and DOWNs of removed monitors on the way.
 * NULL when the queue is (momentarily) empty. */
static struct keel_msg *pull(keel__proc *p) {
  for (;;) {
    struct keel_msg *m = keel__mbox_pop(&p->mbox);
    if (!m) return NULL;
    KEEL__OWNER_ADD(p->mbox_out, 1);
    if (m->to != p->pid) { /* sent to an earlier incarnation that raced its end */
      count_dropped(m);
      keel_msg_free(m);
      continue;
    }
    if (m->kind == KEEL_MSG_REPLY) {
      keel__refslot *s = ref_find(&p->refs, m->ref);
      if (s) {
        ref_park(s, m);
      } else {
        count_reply_dropped();
        keel_msg_free(m);
      }
      continue;
    }
    if (m->kind == KEEL_MSG_DOWN) {
      if (!keel__monvec_del(p, &p->monitors, m->ref, NULL)) {
        keel_msg_free(m); /* demonitored: never seen */
        continue;
      }
      keel__refslot *s = ref_find(&p->refs, m->ref);
      if (s) {
        ref_park(s, m);
        continue;
      }
    }
    return m;
  }
}

static void save_append(keel__proc *p, struct keel_msg *m) {
  atomic_store_explicit(&m->next, NULL, memory_order_relaxed);
  if (p->save_tail)
    atomic_store_explicit(&p->save_tail->next, m, memory_order_relaxed);
  else
    p->save_head = m;
  p->save_tail = m;
  KEEL__OWNER_ADD(p->save_len, 1);
}

static struct keel_msg *save_next(struct keel_msg *m) {
  return atomic_load_explicit(&m->next, memory_order_relaxed);
}

/* Removes m (whose predecessor is prev, NULL for the head) from the list. */
static void save_unlink(keel__proc *p, struct keel_msg *prev, struct keel_msg *m) {
  struct keel_msg *next = save_next(m);
  if (prev)
    atomic_store_explicit(&prev->next, next, memory_order_relaxed);
  else
    p->save_head = next;
  if (p->save_tail == m) p->save_tail = prev;
  KEEL__OWNER_ADD(p->save_len, (size_t)-1);
}

void keel__mailbox_drop_link_exits(keel__proc *p, keel_pid_t from) {
  struct keel_msg *prev = NULL, *m = p->save_head;
  while (m) {
    struct keel_msg *next = save_next(m);
    if (m->kind == KEEL_MSG_EXIT && m->from == from && (m->flags & KEEL__MF_FROM_LINK)) {
      save_unlink(p, prev, m);
      keel_msg_free(m);
    } else {
      prev = m;
    }
    m = next;
  }
}

bool keel__mailbox_drop_down(keel__proc *p, keel_ref_t ref) {
  bool found = false;
  struct keel_msg *prev = NULL, *m = p->save_head;
  while (m) {
    struct keel_msg *next = save_next(m);
    if (m->kind == KEEL_MSG_DOWN && m->ref == ref) {
      save_unlink(p, prev, m);
      keel_msg_free(m);
      found = true;
    } else {
      prev = m;
    }
    m = next;
  }
  return found;
}

void keel__mailbox_move_all(keel__proc *p) {
  for (;;) {
    struct keel_msg *m = pull(p);
    if (m) {
      save_append(p, m);
      continue;
    }
    if (keel__mbox_empty(&p->mbox)) return;
    keel__cpu_relax(); /* a producer is mid-push: it finishes in a few instructions */
  }
}

void keel__mailbox_drop_all(keel__proc *p) {
  for (;;) {
    struct keel_msg *m = keel__mbox_pop(&p->mbox);
    if (m) {
      KEEL__OWNER_ADD(p->mbox_out, 1);
      if (m->to != p->pid ||
          KEEL__SW_ST(atomic_load_explicit(&p->sw, memory_order_relaxed)) == KEEL__ST_FREE)
        count_dropped(m);
      keel_msg_free(m);
      continue;
    }
    if (keel__mbox_empty(&p->mbox)) break;
    keel__cpu_relax();
  }
  while (p->save_head) {
    struct keel_msg *m = p->save_head;
    p->save_head = save_next(m);
    keel_msg_free(m);
  }
  p->save_tail = NULL;
  atomic_store_explicit(&p->save_len, 0, memory_order_relaxed);
}

int keel__deliver(keel_pid_t to, struct keel_msg *m) {
  keel__proc *p = keel__slot(KEEL__PID_IDX(to));
  uint32_t gen = KEEL__PID_GEN(to);
  if (!p) goto dead;
  uint64_t sw = atomic_load_explicit(&p->sw, memory_order_acquire);
  /* EXITING counts as dead: whoever saw its DOWN or EXIT and sends now must
   * see the message dropped and counted, not freed unseen with the mailbox. */
  if (KEEL__SW_GEN(sw) != gen || KEEL__SW_ST(sw) == KEEL__ST_FREE ||
      KEEL__SW_ST(sw) == KEEL__ST_EXITING)
    goto dead;
  m->to = to;
  atomic_fetch_add_explicit(&p->mbox_in, 1, memory_order_relaxed);
  keel__mbox_push(&p->mbox, m);
  count_sent();
  keel__wake(p, gen, KEEL__W_MSG);
  return 0;
dead:
  count_dropped(m);
  keel_msg_free(m);
  return 0;
}

/* ---- public API ------------------------------------------------------------------ */

/* A send costs the sender one unit of its budget, as a receive does, so a
 * process that floods another yields regularly and the receiver gets to run
 * (and the flood does not pile up in memory). */
static void charge_send(keel__proc *self) {
  if (self && --self->budget <= 0) keel_yield();
}

int keel_send(keel_pid_t to, keel_msg_t *m) {
  if (!m) return KEEL_EINVAL;
  if (!to) {
    keel_msg_free(m);
    return KEEL_EINVAL;
  }
  keel__proc *self = keel__proc_self();
  m->kind = KEEL_MSG_USER; /* ref and proto are the sender's to set */
  m->from = self ? self->pid : 0;
  int rc = keel__deliver(to, m);
  charge_send(self);
  return rc;
}

int keel_reply(keel_pid_t to, keel_ref_t ref, keel_msg_t *m) {
  if (!m) return KEEL_EINVAL;
  if (!to || !ref) {
    keel_msg_free(m);
    return KEEL_EINVAL;
  }
  keel__proc *self = keel__proc_self();
  m->kind = KEEL_MSG_REPLY;
  m->ref = ref;
  m->from = self ? self->pid : 0;
  int rc = keel__deliver(to, m);
  charge_send(self);
  return rc;
}

/* Common tail of every receive loop: whether the caller should give up. */
static bool expired(int64_t timeout_ms, uint64_t deadline, uint32_t cause) {
  if (timeout_ms == 0) return true;
  if (!deadline) return false;
  return cause == KEEL__W_TIMER || keel__past(deadline);
}

/* Also counts receives in a row from one sender: a process that spends
 * whole slices receiving one sender's stream may follow it to its scheduler
 * (keel__stream_check, sched.c). */
static void charge(keel__proc *p, const struct keel_msg *m) {
  KEEL__OWNER_ADD(p->msgs_handled, 1);
  if (m->from == p->stream_from) {
    p->stream_n++;
  } else {
    p->stream_from = m->from;
    p->stream_n = 1;
  }
  if (--p->budget <= 0) { /* fairness: let the others run */
    keel__stream_check(p);
    keel_yield();
  }
}

int keel_receive(keel_msg_t **out, int64_t timeout_ms) {
  timeout_ms = keel__timeout(timeout_ms, KEEL_INFINITY);
  keel__proc *p = keel__proc_self();
  if (!out) return KEEL_EINVAL;
  *out = NULL;
  if (!p) return KEEL_ENOTPROC;
  if (timeout_ms < 0 && timeout_ms != KEEL_INFINITY) return KEEL_EINVAL;
  uint64_t deadline = keel__deadline(timeout_ms);
  uint32_t cause = 0;
  for (;;) {
    keel__signals_handle(p);
    struct keel_msg *m = p->save_head;
    if (m) {
      save_unlink(p, NULL, m);
    } else {
      m = pull(p);
    }
    if (m) {
      atomic_store_explicit(&m->next, NULL, memory_order_relaxed);
      *out = m;
      charge(p, m);
      return 0;
    }
    if (expired(timeout_ms, deadline, cause)) return KEEL_ETIMEDOUT;
    cause = keel__wait(p, KEEL__W_MSG, deadline);
  }
}

int keel_receive_match(keel_match_fn match, void *arg, keel_msg_t **out, int64_t timeout_ms) {
  timeout_ms = keel__timeout(timeout_ms, KEEL_INFINITY);
  keel__proc *p = keel__proc_self();
  if (!out || !match) return KEEL_EINVAL;
  *out = NULL;
  if (!p) return KEEL_ENOTPROC;
  if (timeout_ms < 0 && timeout_ms != KEEL_INFINITY) return KEEL_EINVAL;
  uint64_t deadline = keel__deadline(timeout_ms);
  uint32_t cause = 0;
  struct keel_msg *prev = NULL; /* last message tested in this call */
  for (;;) {
    keel__signals_handle(p); /* may append trapped EXIT messages */
    struct keel_msg *cur = prev ? save_next(prev) : p->save_head;
    while (cur) {
      if (match(cur, arg)) {
        save_unlink(p, prev, cur);
        atomic_store_explicit(&cur->next, NULL, memory_order_relaxed);
        *out = cur;
        charge(p, cur);
        return 0;
      }
      prev = cur;
      cur = save_next(cur);
    }
    struct keel_msg *m;
    while ((m = pull(p)) != NULL) {
      if (match(m, arg)) {
        atomic_store_explicit(&m->next, NULL, memory_order_relaxed);
        *out = m;
        charge(p, m);
        return 0;
      }
      save_append(p, m);
      prev = m;
    }
    if (expired(timeout_ms, deadline, cause)) return KEEL_ETIMEDOUT;
    cause = keel__wait(p, KEEL__W_MSG, deadline);
  }
}

size_t keel_mailbox_len(void) {
  keel__proc *p = keel__proc_self();
  if (!p) return 0;
  return keel__mailbox_len_of(p);
}

int keel_await_ref(keel_ref_t ref) {
  keel__proc *p = keel__proc_self();
  if (!p) return KEEL_ENOTPROC;
  if (!ref || ref == REF_TOMB) return KEEL_EINVAL;
  return ref_insert(&p->refs, ref);
}

/* Disarms s. What is still parked there: replies are dropped (and counted);
 * a DOWN goes to the mailbox, where receive or keel_demonitor finds it. */
static void ref_disarm(keel__proc *p, keel__refslot *s) {
  struct keel_msg *m;
  while ((m = ref_take(s)) != NULL) {
    if (m->kind == KEEL_MSG_DOWN) {
      save_append(p, m);
    } else {
      count_reply_dropped();
      keel_msg_free(m);
    }
  }
  ref_remove(&p->refs, s);
}

int keel_await_cancel(keel_ref_t ref) {
  keel__proc *p = keel__proc_self();
  if (!p) return KEEL_ENOTPROC;
  keel__refslot *s = ref ? ref_find(&p->refs, ref) : NULL;
  if (!s) return KEEL_ENOENT;
  ref_disarm(p, s);
  return 0;
}

int keel_await(keel_ref_t ref, keel_msg_t **out, int64_t timeout_ms) {
  timeout_ms = keel__timeout(timeout_ms, KEEL_INFINITY);
  keel__proc *p = keel__proc_self();
  if (!out) return KEEL_EINVAL;
  *out = NULL;
  if (!p) return KEEL_ENOTPROC;
  if (timeout_ms < 0 && timeout_ms != KEEL_INFINITY) return KEEL_EINVAL;
  if (!ref || !ref_find(&p->refs, ref)) return KEEL_ENOENT;
  uint64_t deadline = keel__deadline(timeout_ms);
  uint32_t cause = 0;
  for (;;) {
    keel__signals_handle(p);
    struct keel_msg *m;
    while ((m = pull(p)) != NULL)
      save_append(p, m); /* ordinary messages wait their turn */
    keel__refslot *s = ref_find(&p->refs, ref);
    if (s->msg) {
      *out = ref_take(s);
      ref_disarm(p, s);
      return 0;
    }
    if (expired(timeout_ms, deadline, cause)) {
      ref_disarm(p, s); /* a reply that comes later is dropped */
      return KEEL_ETIMEDOUT;
    }
    cause = keel__wait(p, KEEL__W_MSG, deadline);
  }
}
