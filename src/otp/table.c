/* table.c - shared tables' lifecycle: handles, owners, heirs, names, and the
 * enumeration the observer shows (include/keel/table.h; the entries are in
 * table_data.c).
 *
 * Slots. A table lives in a slot; slots come in chunks of 16 that are never
 * freed (about 13 KiB a slot), so a handle, (generation << 32 | slot + 1),
 * can always be resolved to memory that is a table slot: the caller locks
 * the stripe its key hashes to and compares the generation that stripe
 * holds, which a table's birth and deletion change one stripe lock at a
 * time. A stale handle is refused; it never touches freed memory, and no
 * reference count is paid on every call.
 *
 * Stripe locks. Reader-indicator locks (see table_internal.h): each thread
 * that reads gets a reader slot, one cache line of flags in every table, and
 * gives it back when it exits (a pthread key's destructor).
 *
 * Owners. keel_table_new registers an exit hook on its caller (keel_on_exit);
 * a give-away or an heir's take-over registers one on the new owner
 * (keel_on_exit_of). A hook that finds the table gone or owned by another
 * process does nothing, so hooks are never removed: a process that owned a
 * table keeps a few bytes of hook until it exits. When the owner exits the
 * hook hands the table to a live heir (which gets KEEL_TABLE_TAG_TRANSFER)
 * or deletes it.
 *
 * One mutex (meta) serialises what is rare: creating, deleting, changing
 * owner or heir, names, enumeration. It is taken before any stripe lock,
 * never after. The hot paths take only their stripe's lock.
 */
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "keel/error.h"
#include "keel/process.h"
#include "otp/table_internal.h"

#define CHUNK        64
#define MAX_CHUNKS   4096 /* 262,144 tables at once */
#define NAME_BUCKETS 256

static keel__tab *_Atomic chunks[MAX_CHUNKS];
static pthread_mutex_t meta = PTHREAD_MUTEX_INITIALIZER;
/* under meta */
static uint32_t nslots, free_head = UINT32_MAX;

/* Names: name -> handle, chained, written under meta and this lock. */
typedef struct name_entry {
  struct name_entry *next;
  keel_table_t table;
  char name[];
} name_entry;
static pthread_rwlock_t names_lock = PTHREAD_RWLOCK_INITIALIZER;
static name_entry *names[NAME_BUCKETS];

/* ---- slots and handles ---------------------------------------------------- */

static uint32_t slot_of_handle(keel_table_t h) {
  return (uint32_t)h - 1; /* UINT32_MAX for 0 */
}

static keel__tab *slot(uint32_t idx) {
  if (idx >= (uint32_t)MAX_CHUNKS * CHUNK) return NULL;
  /* acquire: pairs with the release that published the chunk, so its
   * stripes' locks are initialised before anyone uses them */
  keel__tab *c = atomic_load_explicit(&chunks[idx / CHUNK], memory_order_acquire);
  return c ? &c[idx % CHUNK] : NULL;
}

static keel_table_t handle_of(const keel__tab *t) {
  return (uint64_t)atomic_load_explicit(&t->gen, memory_order_relaxed) << 32 |
         ((uint64_t)t->index + 1);
}

void keel__tab_slot_init(keel__tab *t) {
  for (unsigned i = 0; i < KEEL__TAB_STRIPES; i++) {
    atomic_init(&t->s[i].writer, 0);
    for (unsigned r = 0; r < KEEL__TAB_READERS; r++)
      atomic_init(&t->rd[r].f[i], 0);
  }
  atomic_init(&t->gen, 0);
  atomic_init(&t->owner, 0);
  atomic_init(&t->nstripes, KEEL__TAB_STRIPES);
}

/* ---- the stripe lock ---------------------------------------------------------- */

/* Reader slots: each thread that reads a table gets one (its flags in every
 * table), returned when the thread exits. A thread past KEEL__TAB_READERS
 * reads the way writers write. Writers scan the slots handed out so far. */
static pthread_mutex_t readers_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t readers_once = PTHREAD_ONCE_INIT;
static pthread_key_t readers_key;
static _Atomic int readers_hw; /* slots ever handed out */
static int readers_free[KEEL__TAB_READERS], nfree;
/* The calling thread's slot: -1 none yet, -2 none left. Read afresh on every
 * call and never kept across a yield (none of these functions yields), so
 * a process that moves between threads uses the slot of the thread it runs on. */
static _Thread_local int reader_slot = -1;

static void reader_release(void *v) {
  pthread_mutex_lock(&readers_mu);
  readers_free[nfree++] = (int)(intptr_t)v - 1;
  pthread_mutex_unlock(&readers_mu);
}

static void readers_init(void) {
  pthread_key_create(&readers_key, reader_release);
}

static int my_reader(void) {
  int r = reader_slot;
  if (r != -1) return r;
  pthread_once(&readers_once, readers_init);
  pthread_mutex_lock(&readers_mu);
  if (nfree) {
    r = readers_free[--nfree];
  } else {
    r = atomic_load(&readers_hw);
    if (r < KEEL__TAB_READERS)
      atomic_store(&readers_hw, r + 1); /* seq_cst: see wr_enter */
    else
      r = -2;
  }
  pthread_mutex_unlock(&readers_mu);
  if (r >= 0) pthread_setspecific(readers_key, (void *)(intptr_t)(r + 1));
  reader_slot = r;
  return r;
}

static void relax(unsigned *spins) {
  if (++*spins % 128 == 0) {
    sched_yield(); /* the other side may be preempted: let it run */
    return;
  }
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

/* The writer raises its flag, then waits for every reader flag of the
 * stripe to drop; a reader raises its flag, then looks at the writer's. Both
 * sides store then load with seq_cst (Dekker): in the single order of those
 * operations one of them comes first, so either the reader sees the writer
 * (and backs off) or the writer sees the reader (and waits). A slot handed
 * out after the writer read readers_hw belongs to a thread whose flag store
 * comes later still, so that reader sees the writer's flag. */
static void wr_enter(keel__tab *t, unsigned i) {
  keel__tab_stripe *s = &t->s[i];
  /* Writers take the flag itself (0 -> 1): one atomic on the stripe's line
   * where a mutex and a flag took four. seq_cst: see above. */
  unsigned spins = 0;
  uint8_t idle = 0;
  while (!atomic_compare_exchange_weak(&s->writer, &idle, 1)) {
    idle = 0;
    relax(&spins);
  }
  int hw = atomic_load(&readers_hw);
  for (int r = 0; r < hw; r++) {
    spins = 0;
    /* acquire (seq_cst): the reader's reads happen before our writes */
    while (atomic_load(&t->rd[r].f[i]))
      relax(&spins);
  }
}

static bool rd_enter(keel__tab *t, unsigned i, _Atomic uint8_t **flag) {
  int r = my_reader();
  if (r < 0) return false;
  _Atomic uint8_t *f = &t->rd[r].f[i];
  keel__tab_stripe *s = &t->s[i];
  for (;;) {
    atomic_store(f, 1);
    /* seq_cst load, so acquire: the last writer's changes are visible */
    if (!atomic_load(&s->writer)) {
      *flag = f;
      return true;
    }
    atomic_store_explicit(f, 0, memory_order_release);
    unsigned spins = 0;
    while (atomic_load_explicit(&s->writer, memory_order_relaxed))
      relax(&spins);
  }
}

void keel__tab_lock_stripe(keel__tab *t, unsigned i, bool write, keel__tab_held *held) {
  held->s = &t->s[i];
  held->flag = NULL;
  if (!write && rd_enter(t, i, &held->flag)) return;
  wr_enter(t, i);
}

void keel__tab_unlock(keel__tab_held *held) {
  if (held->flag) {
    /* release: our reads happen before the next writer's writes */
    atomic_store_explicit(held->flag, 0, memory_order_release);
    return;
  }
  /* release: our writes happen before the next reader's (and writer's) */
  atomic_store_explicit(&held->s->writer, 0, memory_order_release);
}

static unsigned stripe_index(keel__tab *t, uint64_t hash) {
  /* relaxed: a hint, checked again under the lock below */
  return atomic_load_explicit(&t->nstripes, memory_order_relaxed) == 1 ? 0 : (unsigned)(hash >> 58);
}

keel__tab *keel__tab_lock(keel_table_t h, uint64_t hash, bool write, keel__tab_held *held) {
  keel__tab *t = slot(slot_of_handle(h));
  uint32_t gen = (uint32_t)(h >> 32);
  if (!t || !gen) return NULL;
  for (;;) {
    unsigned i = stripe_index(t, hash);
    keel__tab_lock_stripe(t, i, write, held);
    if (held->s->gen != gen) { /* under the stripe's lock */
      keel__tab_unlock(held);
      return NULL;
    }
    if (stripe_index(t, hash) == i) return t;
    keel__tab_unlock(held); /* a stale hint: the slot changed type */
  }
}

bool keel__tab_ordered_hint(keel_table_t h) {
  keel__tab *t = slot(slot_of_handle(h));
  return t && atomic_load_explicit(&t->nstripes, memory_order_relaxed) == 1;
}

/* Gives every stripe the generation g (0: the table is gone), one stripe at
 * a time; with g 0 the entries are unlinked too and returned as one list.
 * One lock at a time: a call racing with a delete finds its stripe either
 * whole or gone, which is as if it ran before or after. */
static keel__tab_entry *stamp_stripes(keel__tab *t, uint32_t g) {
  keel__tab_entry *list = NULL;
  for (unsigned i = 0; i < KEEL__TAB_STRIPES; i++) {
    keel__tab_held held;
    keel__tab_lock_stripe(t, i, true, &held);
    t->s[i].gen = g;
    if (!g) {
      keel__tab_entry *l = keel__tab_detach_stripe(t, i);
      while (l) {
        keel__tab_entry *next = l->next;
        l->next = list;
        list = l;
        l = next;
      }
    }
    keel__tab_unlock(&held);
  }
  return list;
}

static bool is_owner(const keel__tab *t) {
  keel_pid_t self = keel_self();
  /* relaxed: the owner is one word; a call racing with a give-away may be
   * judged by either owner, as it would be a moment earlier or later */
  return self && atomic_load_explicit(&t->owner, memory_order_relaxed) == self;
}

bool keel__tab_may_read(const keel__tab *t) {
  return t->access != KEEL_TABLE_PRIVATE || is_owner(t);
}

bool keel__tab_may_write(const keel__tab *t) {
  return t->access == KEEL_TABLE_PUBLIC || is_owner(t);
}

/* A free slot (under meta); NULL when there are MAX_CHUNKS * CHUNK tables. */
static keel__tab *slot_alloc(void) {
  if (free_head != UINT32_MAX) {
    keel__tab *t = slot(free_head);
    free_head = t->free_next;
    return t;
  }
  if (nslots % CHUNK == 0) {
    if (nslots / CHUNK >= MAX_CHUNKS) return NULL;
    keel__tab *c = aligned_alloc(64, CHUNK * sizeof *c);
    if (!c) return NULL;
    memset(c, 0, CHUNK * sizeof *c);
    for (unsigned i = 0; i < CHUNK; i++) {
      keel__tab_slot_init(&c[i]);
      c[i].index = nslots + i;
    }
    atomic_store_explicit(&chunks[nslots / CHUNK], c, memory_order_release);
  }
  return slot(nslots++);
}

/* The slot of a live table (under meta, where gen cannot change). */
static keel__tab *live(keel_table_t h) {
  keel__tab *t = slot(slot_of_handle(h));
  uint32_t gen = (uint32_t)(h >> 32);
  if (!t || !gen || atomic_load_explicit(&t->gen, memory_order_relaxed) != gen) return NULL;
  return t;
}

/* ---- names (under meta) ------------------------------------------------------ */

static uint64_t name_hash(const char *s) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  while (*s)
    h = (h ^ (unsigned char)*s++) * 1099511628211ull;
  return h;
}

static name_entry **name_slot(const char *name) {
  name_entry **pp = &names[name_hash(name) % NAME_BUCKETS];
  while (*pp && strcmp((*pp)->name, name) != 0)
    pp = &(*pp)->next;
  return pp;
}

static void name_remove(const char *name) {
  pthread_rwlock_wrlock(&names_lock);
  name_entry **pp = name_slot(name);
  name_entry *e = *pp;
  if (e) *pp = e->next;
  pthread_rwlock_unlock(&names_lock);
  free(e);
}

keel_table_t keel_table_whereis(const char *name) {
  if (!name || !*name) return 0;
  pthread_rwlock_rdlock(&names_lock);
  name_entry *e = *name_slot(name);
  keel_table_t h = e ? e->table : 0;
  pthread_rwlock_unlock(&names_lock);
  return h;
}

/* ---- create, delete, owners --------------------------------------------------- */

typedef struct owner_hook {
  keel_table_t table;
  keel_pid_t pid;
} owner_hook;

static void owner_exited(void *arg);

/* Deletes a live table (under meta); returns its entries to free after
 * meta is released. */
static keel__tab_entry *delete_locked(keel__tab *t) {
  keel__tab_entry *list = stamp_stripes(t, 0);
  atomic_store_explicit(&t->gen, 0, memory_order_relaxed);
  atomic_store_explicit(&t->owner, 0, memory_order_relaxed);
  if (t->name[0]) name_remove(t->name);
  t->name[0] = 0;
  t->heir = 0;
  t->free_next = free_head;
  free_head = t->index;
  return list;
}

int keel_table_new(const keel_table_opts *o, keel_table_t *out) {
  static const keel_table_opts defaults = {0};
  if (!o) o = &defaults;
  keel_pid_t self = keel_self();
  if (!self) return KEEL_ENOTPROC;
  if (!out || (unsigned)o->type > KEEL_TABLE_ORDERED_SET ||
      (unsigned)o->access > KEEL_TABLE_PRIVATE || o->heir == self)
    return KEEL_EINVAL;
  size_t nlen = o->name ? strlen(o->name) : 0;
  if (o->name && (!nlen || nlen > KEEL_NAME_MAX)) return KEEL_EINVAL;
  if (o->heir && !keel_is_alive(o->heir)) return KEEL_ENOPROC;
  owner_hook *hook = malloc(sizeof *hook);
  name_entry *ne = nlen ? malloc(sizeof *ne + nlen + 1) : NULL;
  if (!hook || (nlen && !ne)) {
    free(hook);
    free(ne);
    return KEEL_ENOMEM;
  }

  pthread_mutex_lock(&meta);
  if (nlen && *name_slot(o->name)) {
    pthread_mutex_unlock(&meta);
    free(hook);
    free(ne);
    return KEEL_EEXIST;
  }
  keel__tab *t = slot_alloc();
  if (!t) {
    pthread_mutex_unlock(&meta);
    free(hook);
    free(ne);
    return KEEL_ENOMEM;
  }
  /* a new generation, never 0, below 2^31 so that a handle fits an int64
   * (JSON readers take the observer's ids as signed integers) */
  t->last_gen = t->last_gen % 0x7fffffffu + 1;
  /* Written before any stripe carries the new generation (a stale handle
   * reads them only after finding its own, older one: never these). */
  t->type = o->type;
  t->access = o->access;
  atomic_store_explicit(&t->nstripes, o->type == KEEL_TABLE_ORDERED_SET ? 1u : KEEL__TAB_STRIPES,
                        memory_order_relaxed);
  atomic_store_explicit(&t->owner, self, memory_order_relaxed);
  atomic_store_explicit(&t->gen, t->last_gen, memory_order_relaxed);
  stamp_stripes(t, t->last_gen);
  t->heir = o->heir;
  t->heir_data = o->heir_data;
  keel_table_t h = handle_of(t);
  if (nlen) {
    memcpy(t->name, o->name, nlen + 1);
    memcpy(ne->name, o->name, nlen + 1);
    ne->table = h;
    pthread_rwlock_wrlock(&names_lock);
    name_entry **pp = name_slot(o->name);
    ne->next = NULL;
    *pp = ne;
    pthread_rwlock_unlock(&names_lock);
  } else {
    t->name[0] = 0;
  }
  pthread_mutex_unlock(&meta);

  *hook = (owner_hook){h, self};
  int rc = keel_on_exit(owner_exited, hook);
  if (rc) {
    free(hook);
    pthread_mutex_lock(&meta);
    keel__tab_entry *list = delete_locked(t);
    pthread_mutex_unlock(&meta);
    keel__tab_free_list(list);
    return rc;
  }
  *out = h;
  return 0;
}

int keel_table_delete(keel_table_t h) {
  pthread_mutex_lock(&meta);
  keel__tab *t = live(h);
  int rc = !t ? KEEL_EINVAL : !is_owner(t) ? KEEL_EPERM : 0;
  keel__tab_entry *list = rc ? NULL : delete_locked(t);
  pthread_mutex_unlock(&meta);
  keel__tab_free_list(list);
  return rc;
}

static void send_transfer(keel_table_t h, keel_pid_t from, keel_pid_t to, uint64_t data) {
  keel_table_transfer tr = {h, from, data};
  keel_msg_t *m = keel_msg_copy(KEEL_TABLE_TAG_TRANSFER, &tr, sizeof tr);
  if (m) keel_send(to, m);
}

/* Makes `to` the owner (under meta): its exit hook first, so a table never
 * has an owner whose exit would go unnoticed. KEEL_ENOPROC if it is dead. */
static int set_owner(keel__tab *t, keel_table_t h, keel_pid_t to, owner_hook *hook) {
  *hook = (owner_hook){h, to};
  int rc = keel_on_exit_of(to, owner_exited, hook);
  if (rc) return rc;
  /* relaxed: see is_owner */
  atomic_store_explicit(&t->owner, to, memory_order_relaxed);
  return 0;
}

/* The owner's exit hook: pass the table to a live heir, or delete it. */
static void owner_exited(void *arg) {
  owner_hook *hook = arg;
  pthread_mutex_lock(&meta);
  keel__tab *t = live(hook->table);
  if (!t || atomic_load_explicit(&t->owner, memory_order_relaxed) != hook->pid) {
    pthread_mutex_unlock(&meta); /* deleted, or given away meanwhile */
    free(hook);
    return;
  }
  keel_pid_t from = hook->pid, heir = t->heir;
  if (heir && heir != from && set_owner(t, hook->table, heir, hook) == 0) {
    uint64_t data = t->heir_data;
    t->heir = 0;
    keel_table_t h = hook->table;
    pthread_mutex_unlock(&meta);
    send_transfer(h, from, heir, data);
    return; /* the hook now watches the heir */
  }
  keel__tab_entry *list = delete_locked(t);
  pthread_mutex_unlock(&meta);
  keel__tab_free_list(list);
  free(hook);
}

int keel_table_give_away(keel_table_t h, keel_pid_t to, uint64_t data) {
  keel_pid_t self = keel_self();
  if (!to || to == self) return KEEL_EINVAL;
  owner_hook *hook = malloc(sizeof *hook);
  if (!hook) return KEEL_ENOMEM;
  pthread_mutex_lock(&meta);
  keel__tab *t = live(h);
  int rc = !t ? KEEL_EINVAL : !is_owner(t) ? KEEL_EPERM : set_owner(t, h, to, hook);
  pthread_mutex_unlock(&meta);
  if (rc) {
    free(hook);
    return rc;
  }
  send_transfer(h, self, to, data);
  return 0;
}

int keel_table_set_heir(keel_table_t h, keel_pid_t heir, uint64_t data) {
  pthread_mutex_lock(&meta);
  keel__tab *t = live(h);
  int rc = !t ? KEEL_EINVAL : !is_owner(t) ? KEEL_EPERM : 0;
  if (!rc && heir == keel_self()) rc = KEEL_EINVAL;
  if (!rc) {
    t->heir = heir;
    t->heir_data = data;
  }
  pthread_mutex_unlock(&meta);
  return rc;
}

/* ---- introspection -------------------------------------------------------------- */

/* Fills *out for a live table (under meta). */
static void info_locked(keel__tab *t, keel_table_info *out) {
  out->table = handle_of(t);
  memcpy(out->name, t->name, strlen(t->name) + 1);
  out->owner = atomic_load_explicit(&t->owner, memory_order_relaxed);
  out->heir = t->heir;
  out->type = t->type;
  out->access = t->access;
  out->size = 0;
  out->memory = sizeof *t;
  for (unsigned i = 0; i < KEEL__TAB_STRIPES; i++) {
    keel__tab_held held;
    keel__tab_lock_stripe(t, i, false, &held);
    out->size += t->s[i].n;
    out->memory += t->s[i].bytes;
    keel__tab_unlock(&held);
  }
}

int keel_table_info_of(keel_table_t h, keel_table_info *out) {
  if (!out) return KEEL_EINVAL;
  pthread_mutex_lock(&meta);
  keel__tab *t = live(h);
  if (t) info_locked(t, out);
  pthread_mutex_unlock(&meta);
  return t ? 0 : KEEL_EINVAL;
}

size_t keel_table_size(keel_table_t h) {
  keel_table_info info;
  return keel_table_info_of(h, &info) ? 0 : info.size;
}

size_t keel_tables(void (*fn)(const keel_table_info *info, void *ud), void *ud) {
  pthread_mutex_lock(&meta);
  size_t n = 0, cap = 0;
  keel_table_info *all = NULL;
  for (uint32_t i = 0; i < nslots; i++) {
    keel__tab *t = slot(i);
    if (!atomic_load_explicit(&t->gen, memory_order_relaxed)) continue;
    if (n == cap) {
      size_t c = cap ? cap * 2 : 8;
      keel_table_info *a = realloc(all, c * sizeof *a);
      if (!a) break;
      all = a;
      cap = c;
    }
    info_locked(t, &all[n++]);
  }
  pthread_mutex_unlock(&meta);
  for (size_t i = 0; i < n && fn; i++)
    fn(&all[i], ud);
  free(all);
  return n;
}

const char *keel_table_type_name(keel_table_type type) {
  return type == KEEL_TABLE_ORDERED_SET ? "ordered_set"
         : type == KEEL_TABLE_SET       ? "set"
                                        : "unknown";
}

const char *keel_table_access_name(keel_table_access access) {
  switch (access) {
  case KEEL_TABLE_PROTECTED: return "protected";
  case KEEL_TABLE_PUBLIC: return "public";
  case KEEL_TABLE_PRIVATE: return "private";
  }
  return "unknown";
}
