/* table_data.c - the entries of shared tables: insert, lookup, erase, take,
 * update_counter, iteration and scans (include/keel/table.h).
 *
 * A set is 64 stripes chosen by the key hash's top bits; each stripe is a
 * separately chained hash table under its own lock (shared or exclusive:
 * the reader-indicator lock of table.c), grown
 * (doubled) alone, so a resize holds one stripe of the table, never all of
 * it. An ordered set is a skip list under stripe 0's lock; a node's height
 * comes from its key's hash (p = 1/4), so a writer needs no shared random
 * state and the list is as balanced as the hash is random.
 *
 * Every entry is one allocation (header, skip links, key, value:
 * table_internal.h), made and filled before the stripe is locked and freed
 * after it is unlocked: the lock covers the chain walk and a few pointer
 * writes. Readers copy out under the shared hold, so what they copy is never
 * half-written. A value of 1 to 8 bytes is one aligned word (val_is_word):
 * a counter update (compare-and-swap) and an overwrite by a value of the same
 * length (an atomic store) change it under the shared hold, and readers load
 * it with one atomic load, so such writes on two schedulers exclude neither
 * each other nor readers and leave the stripe's line unwritten. A longer
 * value overwritten by one of the same length is copied in place under the
 * exclusive hold (no allocation).
 *
 * Iteration and scans copy rows out a stripe (or, for an ordered set, a run
 * of at most 256 keys) at a time and resume after the last key copied, so no
 * lock is held while the caller's function runs and a long scan lets writers
 * in between runs.
 */
#include <stdlib.h>
#include <string.h>

#include "keel/error.h"
#include "otp/table_internal.h"

#define RUN         256 /* ordered-set rows copied per lock hold */
#define RETRY       1   /* place(): the entry was made for the other type */
#define INPLACE_MAX 256 /* values up to this size are replaced in place */

/* ---- keys ---------------------------------------------------------------- */

static uint64_t hash_key(const void *key, size_t n) {
  const unsigned char *s = key;
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xff51afd7ed558ccdull);
  while (n >= 8) {
    uint64_t w;
    memcpy(&w, s, 8);
    h = (h ^ w) * 0xbf58476d1ce4e5b9ull;
    h ^= h >> 31;
    s += 8;
    n -= 8;
  }
  uint64_t w = 0;
  if (n) memcpy(&w, s, n);
  h = (h ^ w) * 0x94d049bb133111ebull;
  h ^= h >> 29;
  h *= 0xbf58476d1ce4e5b9ull;
  return h ^ (h >> 32);
}

/* Bytewise, a prefix first. */
static int key_cmp(const void *a, size_t alen, const void *b, size_t blen) {
  size_t n = alen < blen ? alen : blen;
  int c = n ? memcmp(a, b, n) : 0;
  if (c) return c;
  return (alen > blen) - (alen < blen);
}

static bool key_eq(const keel__tab_entry *e, uint64_t h, const void *key, size_t klen) {
  if (e->hash != h || e->klen != klen) return false;
  if (klen == sizeof(uint64_t)) { /* the common integer key: no call to memcmp */
    uint64_t a, b;
    memcpy(&a, keel__tab_key(e), sizeof a);
    memcpy(&b, key, sizeof b);
    return a == b;
  }
  return !klen || memcmp(keel__tab_key(e), key, klen) == 0;
}

/* A skip-list height from bits of the hash the stripe choice does not use. */
static uint8_t height_of(uint64_t h) {
  unsigned z = (unsigned)__builtin_ctzll((h >> 8) | (1ull << 50));
  unsigned ht = 1 + z / 2;
  return (uint8_t)(ht > KEEL__TAB_SL_MAX ? KEEL__TAB_SL_MAX : ht);
}

static bool args_ok(const void *key, size_t klen, const void *val, size_t vlen) {
  return (key || !klen) && (val || !vlen) && klen <= UINT32_MAX;
}

/* ---- entries ------------------------------------------------------------- */

/* What an entry costs, for the memory figure: its allocation and a
 * handed-over block. */
static size_t entry_bytes(const keel__tab_entry *e) {
  size_t v = e->flags & KEEL__TAB_HANDOVER ? sizeof(void *) + e->vlen : keel__tab_pad8(e->vlen);
  return sizeof *e + e->height * sizeof(keel__tab_entry *) + keel__tab_pad8(e->klen) + v;
}

/* A new entry; val is copied, or taken as is when handover. NULL on ENOMEM. */
static keel__tab_entry *entry_new(uint64_t h, const void *key, size_t klen, const void *val,
                                  size_t vlen, bool handover, bool ordered) {
  unsigned height = ordered ? height_of(h) : 0;
  size_t head = sizeof(keel__tab_entry) + height * sizeof(keel__tab_entry *);
  size_t kbytes = keel__tab_pad8(klen); /* klen <= UINT32_MAX: no overflow */
  size_t vbytes = handover ? sizeof(void *) : keel__tab_pad8(vlen); /* counters stay aligned */
  if (!handover && vbytes < vlen) return NULL;                      /* vlen near SIZE_MAX */
  size_t size = head + kbytes + vbytes;
  if (size < vbytes) return NULL;
  keel__tab_entry *e = malloc(size);
  if (!e) return NULL;
  e->next = NULL;
  e->hash = h;
  e->klen = (uint32_t)klen;
  e->height = (uint8_t)height;
  e->flags = handover ? KEEL__TAB_HANDOVER : 0;
  e->vlen = vlen;
  if (klen) memcpy(keel__tab_key(e), key, klen);
  unsigned char *v = keel__tab_vslot(e);
  if (handover) {
    memcpy(v, &val, sizeof val);
  } else {
    if (vbytes > vlen) memset(v + vbytes - 8, 0, 8); /* a word's padding is zero */
    if (vlen) memcpy(v, val, vlen);
  }
  return e;
}

static void entry_free(keel__tab_entry *e) {
  if (!e) return;
  if (e->flags & KEEL__TAB_HANDOVER) free(keel__tab_val(e));
  free(e);
}

void keel__tab_free_list(keel__tab_entry *e) {
  while (e) {
    keel__tab_entry *next = e->next;
    entry_free(e);
    e = next;
  }
}

/* Whether e's value is one aligned word that writers may change under a
 * shared hold (update_counter, and an overwrite of the same length): a value
 * of 1 to 8 bytes stored in the entry, whose padding entry_new zeroed. An
 * 8-byte handed-over block is a word too (malloc aligns it), but only a
 * counter update writes it in place. */
static bool val_is_word(const keel__tab_entry *e) {
  return e->vlen == sizeof(uint64_t) ||
         (e->vlen && e->vlen < sizeof(uint64_t) && !(e->flags & KEEL__TAB_HANDOVER));
}

/* Copies e's value out (under a hold of its stripe). A word (val_is_word)
 * may change under a shared hold: read it with one atomic load so it is
 * never torn. */
static void copy_val(void *dst, const keel__tab_entry *e) {
  if (val_is_word(e)) {
    uint64_t v =
        __atomic_load_n((const uint64_t *)(const void *)keel__tab_val(e), __ATOMIC_RELAXED);
    memcpy(dst, &v, e->vlen);
  } else if (e->vlen) {
    memcpy(dst, keel__tab_val(e), e->vlen);
  }
}

/* ---- a set's stripe (under its lock) -------------------------------------- */

static keel__tab_entry **chain_find(keel__tab_stripe *s, uint64_t h, const void *key, size_t klen) {
  if (!s->nb) return NULL;
  keel__tab_entry **pp = &s->b[h & (s->nb - 1)];
  while (*pp && !key_eq(*pp, h, key, klen))
    pp = &(*pp)->next;
  return *pp ? pp : NULL;
}

/* Doubles the buckets when the load reaches 1 (under the exclusive lock: a
 * stripe holds 1/64 of the table, so this is short). */
static int chain_grow(keel__tab_stripe *s) {
  if (s->n < s->nb) return 0;
  size_t nb = s->nb ? s->nb * 2 : 8;
  keel__tab_entry **b = calloc(nb, sizeof *b);
  if (!b) return KEEL_ENOMEM;
  for (size_t i = 0; i < s->nb; i++)
    for (keel__tab_entry *e = s->b[i], *next; e; e = next) {
      next = e->next;
      size_t k = e->hash & (nb - 1);
      e->next = b[k];
      b[k] = e;
    }
  free(s->b);
  s->bytes += (nb - s->nb) * sizeof *b;
  s->b = b;
  s->nb = nb;
  return 0;
}

/* ---- the ordered set's skip list (under s[0]'s lock) ----------------------- */

/* The first entry >= key; upd[i] gets the links array whose [i] points at it
 * (the predecessor's at each level, or the head's). */
static keel__tab_entry *sl_seek(keel__tab *t, const void *key, size_t klen,
                                keel__tab_entry ***upd) {
  keel__tab_entry **links = t->head;
  for (int i = KEEL__TAB_SL_MAX - 1; i >= 0; i--) {
    if (i < t->level)
      while (links[i] && key_cmp(keel__tab_key(links[i]), links[i]->klen, key, klen) < 0)
        links = keel__tab_links(links[i]);
    if (upd) upd[i] = links;
  }
  return links[0];
}

/* The first entry > key. */
static keel__tab_entry *sl_after(keel__tab *t, const void *key, size_t klen) {
  keel__tab_entry *e = sl_seek(t, key, klen, NULL);
  if (e && key_cmp(keel__tab_key(e), e->klen, key, klen) == 0) e = keel__tab_links(e)[0];
  return e;
}

static void sl_unlink(keel__tab *t, keel__tab_entry *e, keel__tab_entry ***upd) {
  for (int i = 0; i < e->height; i++)
    upd[i][i] = keel__tab_links(e)[i];
  while (t->level > 0 && !t->head[t->level - 1])
    t->level--;
}

static void sl_link(keel__tab *t, keel__tab_entry *e, keel__tab_entry ***upd) {
  for (int i = 0; i < e->height; i++) {
    keel__tab_links(e)[i] = upd[i][i];
    upd[i][i] = e;
  }
  if (e->height > t->level) t->level = e->height;
}

/* ---- one entry, either type (under the stripe's lock) --------------------- */

static bool ordered(const keel__tab *t) {
  return t->type == KEEL_TABLE_ORDERED_SET;
}

static keel__tab_entry *find(keel__tab *t, keel__tab_stripe *s, uint64_t h, const void *key,
                             size_t klen) {
  if (ordered(t)) {
    keel__tab_entry *e = sl_seek(t, key, klen, NULL);
    return e && key_cmp(keel__tab_key(e), e->klen, key, klen) == 0 ? e : NULL;
  }
  keel__tab_entry **pp = chain_find(s, h, key, klen);
  return pp ? *pp : NULL;
}

/* Puts e in place of the entry with its key, or adds it. *old gets the
 * replaced entry (the caller frees it after unlocking). With only_new an
 * existing key is KEEL_EEXIST and nothing changes. */
static int place(keel__tab *t, keel__tab_stripe *s, keel__tab_entry *e, bool only_new,
                 keel__tab_entry **old) {
  *old = NULL;
  if (ordered(t) && !e->height) return RETRY;
  if (ordered(t)) {
    keel__tab_entry **upd[KEEL__TAB_SL_MAX];
    keel__tab_entry *at = sl_seek(t, keel__tab_key(e), e->klen, upd);
    if (at && key_cmp(keel__tab_key(at), at->klen, keel__tab_key(e), e->klen) == 0) {
      if (only_new) return KEEL_EEXIST;
      sl_unlink(t, at, upd);
      *old = at;
      sl_seek(t, keel__tab_key(e), e->klen, upd); /* the level may have dropped */
    }
    sl_link(t, e, upd);
  } else {
    keel__tab_entry **pp = chain_find(s, e->hash, keel__tab_key(e), e->klen);
    if (pp) {
      if (only_new) return KEEL_EEXIST;
      *old = *pp;
      e->next = (*pp)->next;
      *pp = e;
    } else {
      int rc = chain_grow(s);
      if (rc) return rc;
      keel__tab_entry **b = &s->b[e->hash & (s->nb - 1)];
      e->next = *b;
      *b = e;
    }
  }
  s->n += !*old;
  s->bytes += entry_bytes(e) - (*old ? entry_bytes(*old) : 0);
  return 0;
}

/* Unlinks the entry with key; NULL when absent. */
static keel__tab_entry *unplace(keel__tab *t, keel__tab_stripe *s, uint64_t h, const void *key,
                                size_t klen) {
  keel__tab_entry *e = NULL;
  if (ordered(t)) {
    keel__tab_entry **upd[KEEL__TAB_SL_MAX];
    e = sl_seek(t, key, klen, upd);
    if (!e || key_cmp(keel__tab_key(e), e->klen, key, klen) != 0) return NULL;
    sl_unlink(t, e, upd);
  } else {
    keel__tab_entry **pp = chain_find(s, h, key, klen);
    if (!pp) return NULL;
    e = *pp;
    *pp = e->next;
  }
  s->n--;
  s->bytes -= entry_bytes(e);
  return e;
}

static uint64_t key_hash(keel_table_t h, const void *key, size_t klen) {
  (void)h;
  return hash_key(key, klen);
}

/* Locks the table for key (hash kh), the stripe exclusively or shared, and
 * checks the caller may write (write) or read it. */
static keel__tab *lock_for(keel_table_t h, uint64_t kh, bool exclusive, bool write,
                           keel__tab_held *s, int *rc) {
  keel__tab *t = keel__tab_lock(h, kh, exclusive, s);
  if (!t) {
    *rc = KEEL_EINVAL;
    return NULL;
  }
  if (!(write ? keel__tab_may_write(t) : keel__tab_may_read(t))) {
    keel__tab_unlock(s);
    *rc = KEEL_EPERM;
    return NULL;
  }
  return t;
}

static keel__tab *lock_write(keel_table_t h, uint64_t kh, keel__tab_held *s, int *rc) {
  return lock_for(h, kh, true, true, s, rc);
}

static keel__tab *lock_read(keel_table_t h, uint64_t kh, keel__tab_held *s, int *rc) {
  return lock_for(h, kh, false, false, s, rc);
}

/* A shared hold for a write that changes one word in place (an overwrite of
 * a small value, a counter update): checked as a write, held as a read, so
 * that such writes on two schedulers neither exclude each other nor write
 * the stripe's line. */
static keel__tab *lock_word_write(keel_table_t h, uint64_t kh, keel__tab_held *s, int *rc) {
  return lock_for(h, kh, false, true, s, rc);
}

/* ---- writes ----------------------------------------------------------------- */

/* Replaces the value of an existing entry by one of the same length in
 * place, no allocation and no free. A value of 1 to 8 bytes (a word:
 * val_is_word) takes one atomic store under a shared hold, so that
 * overwrites on two schedulers do not pass the stripe's line between them:
 * entries cannot go while the hold lasts, readers load the word whole
 * (copy_val), and a racing update_counter's compare-and-swap sees the old or
 * the new value, so the overwrite is as atomic as under the exclusive hold.
 * A longer one (at most INPLACE_MAX bytes) is copied under the exclusive
 * hold. KEEL_ENOENT when it cannot (absent, other length, a handed-over
 * block): the caller makes a new entry. */
static int put_in_place(keel_table_t h, uint64_t kh, const void *key, size_t klen, const void *val,
                        size_t vlen) {
  bool word = vlen && vlen <= sizeof(uint64_t);
  keel__tab_held s;
  int rc;
  keel__tab *t = word ? lock_word_write(h, kh, &s, &rc) : lock_write(h, kh, &s, &rc);
  if (!t) return rc;
  keel__tab_entry *e = find(t, s.s, kh, key, klen);
  rc = KEEL_ENOENT;
  if (e && e->vlen == vlen && !(e->flags & KEEL__TAB_HANDOVER)) {
    if (word) {
      uint64_t w = 0; /* the padding stays zero */
      memcpy(&w, val, vlen);
      __atomic_store_n((uint64_t *)(void *)keel__tab_val(e), w, __ATOMIC_RELAXED);
    } else if (vlen) {
      memcpy(keel__tab_val(e), val, vlen); /* exclusive: no reader, no counter update */
    }
    rc = 0;
  }
  keel__tab_unlock(&s);
  return rc;
}

int keel_table_put(keel_table_t h, const void *key, size_t klen, void *val, size_t vlen,
                   unsigned flags) {
  bool handover = flags & KEEL_TABLE_HANDOVER;
  if (!args_ok(key, klen, val, vlen) ||
      (flags & ~(unsigned)(KEEL_TABLE_NEW | KEEL_TABLE_HANDOVER))) {
    if (handover) free(val);
    return KEEL_EINVAL;
  }
  uint64_t kh = key_hash(h, key, klen);
  if (!handover && !(flags & KEEL_TABLE_NEW) && vlen <= INPLACE_MAX) {
    int rc = put_in_place(h, kh, key, klen, val, vlen);
    if (rc != KEEL_ENOENT) return rc;
  }
  /* The type is certain only under the lock, and the entry is made before
   * it: make it for the type the slot had a moment ago (a set's entry has no
   * skip links) and make it again if that was a stale handle's old table. */
  for (;;) {
    keel__tab_entry *e = entry_new(kh, key, klen, val, vlen, handover, keel__tab_ordered_hint(h));
    if (!e) {
      if (handover) free(val);
      return KEEL_ENOMEM;
    }
    keel__tab_held s;
    int rc;
    keel__tab *t = lock_write(h, kh, &s, &rc);
    if (!t) {
      entry_free(e);
      return rc;
    }
    keel__tab_entry *old = NULL;
    rc = place(t, s.s, e, flags & KEEL_TABLE_NEW, &old);
    keel__tab_unlock(&s);
    if (rc == RETRY) {
      free(e); /* not entry_free: a handed-over val is still ours to use */
      continue;
    }
    if (rc) entry_free(e);
    entry_free(old);
    return rc;
  }
}

int keel_table_insert(keel_table_t t, const void *key, size_t klen, const void *val, size_t vlen) {
  return keel_table_put(t, key, klen, (void *)val, vlen, 0);
}

int keel_table_insert_new(keel_table_t t, const void *key, size_t klen, const void *val,
                          size_t vlen) {
  return keel_table_put(t, key, klen, (void *)val, vlen, KEEL_TABLE_NEW);
}

int keel_table_erase(keel_table_t h, const void *key, size_t klen) {
  if (!args_ok(key, klen, NULL, 0)) return KEEL_EINVAL;
  uint64_t kh = key_hash(h, key, klen);
  keel__tab_held s;
  int rc;
  keel__tab *t = lock_write(h, kh, &s, &rc);
  if (!t) return rc;
  keel__tab_entry *e = unplace(t, s.s, kh, key, klen);
  keel__tab_unlock(&s);
  entry_free(e);
  return e ? 0 : KEEL_ENOENT;
}

int keel_table_take(keel_table_t h, const void *key, size_t klen, void **val, size_t *vlen) {
  if (!args_ok(key, klen, NULL, 0) || !val) return KEEL_EINVAL;
  *val = NULL;
  uint64_t kh = key_hash(h, key, klen);
  keel__tab_held s;
  int rc;
  keel__tab *t = lock_write(h, kh, &s, &rc);
  if (!t) return rc;
  keel__tab_entry *e = find(t, s.s, kh, key, klen);
  if (!e) {
    keel__tab_unlock(&s);
    return KEEL_ENOENT;
  }
  /* Allocate the copy while the entry is still in: on ENOMEM it stays. */
  void *out = NULL;
  if (!(e->flags & KEEL__TAB_HANDOVER) && e->vlen) {
    out = malloc(e->vlen);
    if (!out) {
      keel__tab_unlock(&s);
      return KEEL_ENOMEM;
    }
  }
  e = unplace(t, s.s, kh, key, klen);
  keel__tab_unlock(&s);
  if (vlen) *vlen = e->vlen;
  if (e->flags & KEEL__TAB_HANDOVER) {
    out = e->vlen ? keel__tab_val(e) : (free(keel__tab_val(e)), NULL);
    e->flags = 0;
  } else if (e->vlen) {
    memcpy(out, keel__tab_val(e), e->vlen);
  }
  free(e);
  *val = out;
  return 0;
}

/* Adds incr to the 8-byte value of e. Atomic (a compare-and-swap loop), so
 * that it may run under a shared hold of the stripe: two schedulers adding
 * to counters of one stripe do not exclude each other, and a reader copying
 * the value meanwhile reads it whole (copy_val). */
static int counter_add(keel__tab_entry *e, int64_t incr, int64_t *result) {
  if (e->vlen != sizeof(int64_t)) return KEEL_EINVAL;
  int64_t *p = (int64_t *)(void *)keel__tab_val(e); /* 8-aligned: see entry_new */
  /* relaxed: the value is the only data; the stripe's hold orders the rest */
  int64_t v = __atomic_load_n(p, __ATOMIC_RELAXED), sum;
  do {
    if (__builtin_add_overflow(v, incr, &sum)) return KEEL_ERANGE;
  } while (!__atomic_compare_exchange_n(p, &v, sum, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
  if (result) *result = sum;
  return 0;
}

/* Adds to an existing counter under a shared hold; KEEL_ENOENT if absent. */
static int counter_shared(keel_table_t h, uint64_t kh, const void *key, size_t klen, int64_t incr,
                          int64_t *result) {
  keel__tab_held s;
  int rc;
  keel__tab *t = lock_word_write(h, kh, &s, &rc);
  if (!t) return rc;
  keel__tab_entry *e = find(t, s.s, kh, key, klen);
  rc = e ? counter_add(e, incr, result) : KEEL_ENOENT;
  keel__tab_unlock(&s);
  return rc;
}

int keel_table_update_counter(keel_table_t h, const void *key, size_t klen, int64_t incr,
                              const int64_t *init, int64_t *result) {
  if (!args_ok(key, klen, NULL, 0)) return KEEL_EINVAL;
  uint64_t kh = key_hash(h, key, klen);
  int rc = counter_shared(h, kh, key, klen, incr, result);
  if (rc != KEEL_ENOENT || !init) return rc;
  /* Absent: create it, exclusively, with an entry made outside the lock. */
  keel__tab_entry *fresh = NULL;
  for (;;) {
    keel__tab_held s;
    keel__tab *t = lock_write(h, kh, &s, &rc);
    if (!t) {
      entry_free(fresh);
      return rc;
    }
    keel__tab_entry *e = find(t, s.s, kh, key, klen);
    if (e) {
      rc = counter_add(e, incr, result);
    } else if (fresh) {
      keel__tab_entry *old;
      rc = place(t, s.s, fresh, true, &old);
      if (rc == RETRY) {
        keel__tab_unlock(&s);
        entry_free(fresh);
        fresh = NULL;
        continue;
      }
      if (!rc && result) memcpy(result, keel__tab_val(fresh), sizeof *result);
      if (!rc) fresh = NULL;
    } else {
      keel__tab_unlock(&s);
      int64_t v;
      if (__builtin_add_overflow(*init, incr, &v)) return KEEL_ERANGE;
      fresh = entry_new(kh, key, klen, &v, sizeof v, false, keel__tab_ordered_hint(h));
      if (!fresh) return KEEL_ENOMEM;
      continue;
    }
    keel__tab_unlock(&s);
    entry_free(fresh); /* someone created it meanwhile, or an error */
    return rc;
  }
}

/* ---- reads ------------------------------------------------------------------ */

int keel_table_lookup(keel_table_t h, const void *key, size_t klen, void *buf, size_t cap,
                      size_t *vlen) {
  if (!args_ok(key, klen, NULL, 0)) return KEEL_EINVAL;
  uint64_t kh = key_hash(h, key, klen);
  keel__tab_held s;
  int rc;
  keel__tab *t = lock_read(h, kh, &s, &rc);
  if (!t) return rc;
  keel__tab_entry *e = find(t, s.s, kh, key, klen);
  rc = KEEL_ENOENT;
  if (e) {
    if (vlen) *vlen = e->vlen;
    rc = 0;
    if (buf) {
      if (cap < e->vlen)
        rc = KEEL_ERANGE;
      else
        copy_val(buf, e);
    }
  }
  keel__tab_unlock(&s);
  return rc;
}

int keel_table_get(keel_table_t h, const void *key, size_t klen, void **val, size_t *vlen) {
  if (!val) return KEEL_EINVAL;
  *val = NULL;
  /* Size first, then copy; retry if it grew in between. */
  size_t n = 0;
  int rc = keel_table_lookup(h, key, klen, NULL, 0, &n);
  for (int tries = 0; rc == 0 && n; tries++) {
    void *buf = malloc(n);
    if (!buf) return KEEL_ENOMEM;
    size_t got = 0;
    rc = keel_table_lookup(h, key, klen, buf, n, &got);
    if (rc == 0) {
      *val = buf;
      n = got;
      break;
    }
    free(buf);
    if (rc != KEEL_ERANGE) return rc;
    n = got;
    rc = 0;
  }
  if (rc == 0 && vlen) *vlen = n;
  return rc;
}

/* ---- rows ------------------------------------------------------------------- */

static int rows_add(keel_table_rows *r, size_t *cap, const keel__tab_entry *e) {
  if (r->n == *cap) {
    size_t c = *cap ? *cap * 2 : 16;
    keel_table_row *rows = realloc(r->rows, c * sizeof *rows);
    if (!rows) return KEEL_ENOMEM;
    r->rows = rows;
    *cap = c;
  }
  unsigned char *p = malloc(e->klen + e->vlen + 1); /* +1: never malloc(0) */
  if (!p) return KEEL_ENOMEM;
  if (e->klen) memcpy(p, keel__tab_key(e), e->klen);
  copy_val(p + e->klen, e);
  r->rows[r->n++] = (keel_table_row){p, e->klen, p + e->klen, e->vlen};
  return 0;
}

void keel_table_rows_free(keel_table_rows *r) {
  if (!r) return;
  for (size_t i = 0; i < r->n; i++)
    free((void *)r->rows[i].key);
  free(r->rows);
  r->n = 0;
  r->rows = NULL;
}

/* What a scan wants: a predicate, bounds (ordered sets), a limit. */
typedef struct scan {
  keel_table_pred pred;
  void *ud;
  const void *lo, *hi, *prefix;
  size_t lolen, hilen, plen;
  size_t max; /* rows in all; 0 no limit */
  bool ordered_only;
} scan;

/* A word value (val_is_word) may change under the shared hold the scan
 * has: the predicate gets a copy taken with one atomic load, never the
 * entry's bytes, which a plain read would race with. */
static bool wanted(const scan *q, const keel__tab_entry *e) {
  if (!q->pred) return true;
  if (!val_is_word(e)) return q->pred(keel__tab_key(e), e->klen, keel__tab_val(e), e->vlen, q->ud);
  uint64_t word;
  copy_val(&word, e);
  return q->pred(keel__tab_key(e), e->klen, &word, e->vlen, q->ud);
}

/* Past the ordered scan's end? */
static bool beyond(const scan *q, const keel__tab_entry *e) {
  if (q->hi && key_cmp(keel__tab_key(e), e->klen, q->hi, q->hilen) >= 0) return true;
  if (q->prefix && (e->klen < q->plen || memcmp(keel__tab_key(e), q->prefix, q->plen) != 0))
    return true;
  return false;
}

/* Copies one run of rows into out. A set: stripe *pos (then *pos+1).
 * An ordered set: up to RUN keys after *last (or from lo), *last updated.
 * *done when nothing is left. */
static int scan_run(keel_table_t h, const scan *q, unsigned *pos, keel_table_rows *last,
                    size_t *cap, keel_table_rows *out, bool *done) {
  keel__tab_held s;
  int rc;
  keel__tab *t = lock_read(h, (uint64_t)*pos << 58, &s, &rc);
  if (!t) return rc;
  if (q->ordered_only && !ordered(t)) {
    keel__tab_unlock(&s);
    return KEEL_EINVAL;
  }
  rc = 0;
  bool full = false;
  if (ordered(t)) {
    keel__tab_entry *e;
    if (last->n)
      e = sl_after(t, last->rows[0].key, last->rows[0].klen);
    else if (q->lo || q->prefix)
      e = q->lo ? sl_seek(t, q->lo, q->lolen, NULL) : sl_seek(t, q->prefix, q->plen, NULL);
    else
      e = t->head[0];
    keel__tab_entry *prev = NULL;
    for (int k = 0; e && k < RUN && !rc && !full; k++, prev = e, e = keel__tab_links(e)[0]) {
      if (beyond(q, e)) {
        e = NULL;
        break;
      }
      if (wanted(q, e)) rc = rows_add(out, cap, e);
      full = q->max && out->n >= q->max;
    }
    *done = !e || full;
    if (!*done && !rc) { /* remember where to resume */
      size_t one = 0;
      keel_table_rows_free(last);
      rc = rows_add(last, &one, prev);
    }
  } else {
    for (size_t i = 0; i < s.s->nb && !rc && !full; i++)
      for (keel__tab_entry *e = s.s->b[i]; e && !rc && !full; e = e->next) {
        if (wanted(q, e)) rc = rows_add(out, cap, e);
        full = q->max && out->n >= q->max;
      }
    (*pos)++;
    *done = full || *pos >= KEEL__TAB_STRIPES;
  }
  keel__tab_unlock(&s);
  return rc;
}

/* Runs scan q; with fn, calls it per run and keeps nothing, else fills out. */
static int scan_all(keel_table_t h, const scan *q, keel_table_fn fn, void *ud,
                    keel_table_rows *out) {
  keel_table_rows local = {0, NULL}, last = {0, NULL};
  keel_table_rows *into = fn ? &local : out;
  size_t cap = 0;
  unsigned pos = 0;
  bool done = false;
  int rc = 0;
  while (!done && !rc) {
    rc = scan_run(h, q, &pos, &last, &cap, into, &done);
    if (fn) {
      for (size_t i = 0; i < local.n && !rc; i++)
        rc = fn(local.rows[i].key, local.rows[i].klen, local.rows[i].val, local.rows[i].vlen, ud);
      keel_table_rows_free(&local);
      cap = 0;
    }
  }
  keel_table_rows_free(&last);
  if (rc < 0 && !fn) keel_table_rows_free(out);
  return rc;
}

int keel_table_foreach(keel_table_t h, keel_table_fn fn, void *ud) {
  if (!fn) return KEEL_EINVAL;
  scan q = {0};
  return scan_all(h, &q, fn, ud, NULL);
}

int keel_table_select(keel_table_t h, keel_table_pred pred, void *ud, size_t max,
                      keel_table_rows *out) {
  if (!out) return KEEL_EINVAL;
  *out = (keel_table_rows){0, NULL};
  scan q = {.pred = pred, .ud = ud, .max = max};
  return scan_all(h, &q, NULL, NULL, out);
}

int keel_table_range(keel_table_t h, const void *lo, size_t lolen, const void *hi, size_t hilen,
                     size_t max, keel_table_rows *out) {
  if (!out || (!lo && lolen) || (!hi && hilen)) return KEEL_EINVAL;
  *out = (keel_table_rows){0, NULL};
  scan q = {.lo = lo, .lolen = lolen, .hi = hi, .hilen = hilen, .max = max, .ordered_only = true};
  return scan_all(h, &q, NULL, NULL, out);
}

int keel_table_prefix(keel_table_t h, const void *prefix, size_t plen, size_t max,
                      keel_table_rows *out) {
  if (!out || (!prefix && plen)) return KEEL_EINVAL;
  *out = (keel_table_rows){0, NULL};
  static const char empty = 0;
  scan q = {.prefix = prefix ? prefix : &empty, .plen = plen, .max = max, .ordered_only = true};
  return scan_all(h, &q, NULL, NULL, out);
}

/* ---- whole table -------------------------------------------------------------- */

keel__tab_entry *keel__tab_detach_stripe(keel__tab *t, unsigned i) {
  keel__tab_entry *list = NULL;
  if (i == 0 && ordered(t)) {
    for (keel__tab_entry *e = t->head[0], *next; e; e = next) {
      next = keel__tab_links(e)[0];
      e->next = list;
      list = e;
    }
    memset(t->head, 0, sizeof t->head);
    t->level = 0;
  }
  keel__tab_stripe *s = &t->s[i];
  for (size_t k = 0; k < s->nb; k++)
    for (keel__tab_entry *e = s->b[k], *next; e; e = next) {
      next = e->next;
      e->next = list;
      list = e;
    }
  free(s->b);
  s->b = NULL;
  s->nb = s->n = s->bytes = 0;
  return list;
}
