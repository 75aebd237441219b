/* table_internal.h - what table.c (handles, owners, names) and table_data.c
 * (entries, stripes, the ordered set's skip list) share. */
#ifndef KEEL_OTP_TABLE_INTERNAL_H
#define KEEL_OTP_TABLE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "keel/table.h"

#define KEEL__TAB_STRIPES  64 /* a set's stripes (a power of two) */
#define KEEL__TAB_SL_MAX   24 /* the ordered set's skip list height limit */
#define KEEL__TAB_HANDOVER 1u /* entry flag: val is a block of its own */

/* One key and its value, in one allocation: this header, the skip-list
 * links (ordered sets: `height` pointers), the key (padded to 8 bytes), the
 * value (padded to 8 bytes; a handed-over value: the pointer to the caller's
 * block). Nothing is reached through a stored pointer but the chain: a set's
 * lookup of an 8-byte key finds hash, key and value in 48 bytes, mostly one
 * cache line, where pointers to them made it two (docs/decisions/0039). */
typedef struct keel__tab_entry {
  struct keel__tab_entry *next; /* set: the hash chain */
  uint64_t hash;
  uint32_t klen; /* keys are at most UINT32_MAX bytes */
  uint8_t height, flags;
  size_t vlen;
} keel__tab_entry;

/* A value's slot is 8-byte aligned (its 8-byte atomics need it) because the
 * header and each link are multiples of 8 bytes: true on the 64-bit targets
 * keel's context switch supports. */
_Static_assert(sizeof(void *) == 8 && sizeof(keel__tab_entry) % 8 == 0,
               "table entries assume a 64-bit layout");

static inline size_t keel__tab_pad8(size_t n) {
  return (n + 7) & ~(size_t)7;
}

/* The ordered set's next entry at each level (height of them). */
static inline keel__tab_entry **keel__tab_links(const keel__tab_entry *e) {
  return (keel__tab_entry **)(void *)(e + 1);
}

static inline unsigned char *keel__tab_key(const keel__tab_entry *e) {
  return (unsigned char *)(e + 1) + (size_t)e->height * sizeof(keel__tab_entry *);
}

/* Where the value is stored: the bytes, or the handed-over block's pointer. */
static inline unsigned char *keel__tab_vslot(const keel__tab_entry *e) {
  return keel__tab_key(e) + keel__tab_pad8(e->klen);
}

static inline unsigned char *keel__tab_val(const keel__tab_entry *e) {
  unsigned char *v = keel__tab_vslot(e);
  return e->flags & KEEL__TAB_HANDOVER ? *(unsigned char **)(void *)v : v;
}

/* A stripe: a lock and what it guards. Padded so that two stripes never
 * share a cache line (two schedulers on two stripes do not slow each other).
 *
 * The lock is a reader-indicator lock (a "big reader" lock, as ETS's
 * read_concurrency): a reader raises its own flag, in a cache line that only
 * its thread writes (keel__tab.rd), and checks the stripe's writer flag; a
 * writer takes the writer flag (a compare-and-swap; another writer spins)
 * and waits until no reader flag of the stripe is up. Readers of one stripe on two schedulers
 * thus write no shared memory at all. docs/decisions/0016 has the figures
 * against a pthread rwlock per stripe. */
typedef struct keel__tab_stripe {
  _Alignas(64) _Atomic uint8_t writer; /* a writer holds the stripe (or waits for
                                          its readers); writers take it by CAS */
  keel__tab_entry **b;                 /* set: buckets (nb a power of two, or 0) */
  size_t nb, n, bytes;
  uint32_t gen; /* the table's generation while it lives, 0 when free */
} keel__tab_stripe;

#define KEEL__TAB_READERS 64 /* threads with a reader flag; more read as writers do */

/* One thread's reader flags, one per stripe, in a cache line of its own. */
typedef struct keel__tab_rd {
  _Alignas(64) _Atomic uint8_t f[KEEL__TAB_STRIPES];
} keel__tab_rd;

/* A table slot. Slots live in chunks that are never freed, so a stale
 * handle can always lock a stripe and read the generation: a slot is reused
 * by a new table with a new generation, which the stale handle's does not
 * match. Each stripe holds a copy of the generation under its own lock; a
 * table is born and deleted one stripe at a time, and type and access are
 * written before its stripes get their generation, so a caller that finds
 * its generation in its stripe sees them set. owner is atomic (read without
 * a lock by the access check); gen is the slot's own copy, for meta. */
typedef struct keel__tab {
  keel__tab_stripe s[KEEL__TAB_STRIPES];
  keel__tab_rd rd[KEEL__TAB_READERS]; /* rd[r].f[i]: thread r reads stripe i */
  _Atomic uint32_t gen;               /* 0: free */
  keel_table_type type;
  keel_table_access access;
  _Atomic unsigned nstripes; /* 64 for a set, 1 for an ordered set */
  _Atomic keel_pid_t owner;
  /* under the meta mutex (table.c) */
  keel_pid_t heir;
  uint64_t heir_data;
  char name[KEEL_NAME_MAX + 1];
  /* ordered set: under s[0] */
  keel__tab_entry *head[KEEL__TAB_SL_MAX];
  int level;
  uint32_t last_gen;  /* the slot's latest generation (under meta) */
  uint32_t index;     /* the slot's number */
  uint32_t free_next; /* free list (table.c) */
} keel__tab;

/* A held stripe lock: the stripe, and the reader flag raised (NULL: the
 * stripe is held exclusively, through its writer flag). */
typedef struct keel__tab_held {
  keel__tab_stripe *s;
  _Atomic uint8_t *flag;
} keel__tab_held;

/* The table a handle names, with the stripe for hash h locked (shared or
 * exclusive), after the generation check; NULL (nothing locked) when the
 * handle names no live table. *held says what to unlock. */
keel__tab *keel__tab_lock(keel_table_t h, uint64_t hash, bool write, keel__tab_held *held);
void keel__tab_unlock(keel__tab_held *held);

/* Stripe i of t, shared or exclusive (no generation check). */
void keel__tab_lock_stripe(keel__tab *t, unsigned i, bool write, keel__tab_held *held);

/* Whether h's slot held an ordered set a moment ago (no lock: a hint). */
bool keel__tab_ordered_hint(keel_table_t h);

/* Whether the caller may read / write t (under a stripe lock). */
bool keel__tab_may_read(const keel__tab *t);
bool keel__tab_may_write(const keel__tab *t);

/* Unlinks every entry of stripe i (write-locked) into a list (through next)
 * and empties it (stripe 0 of an ordered set: the skip list); the caller
 * frees the list with keel__tab_free_list after unlocking. */
keel__tab_entry *keel__tab_detach_stripe(keel__tab *t, unsigned i);
void keel__tab_free_list(keel__tab_entry *e);

/* Initialises a slot's stripes (once, when its chunk is made). */
void keel__tab_slot_init(keel__tab *t);

#endif
