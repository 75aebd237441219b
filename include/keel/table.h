/* keel/table.h - shared tables: Erlang's ETS for C.
 *
 * A table maps byte-string keys to byte-string values and is shared by every
 * process (and thread) of the node. It is OWNED by the process that created
 * it: when the owner exits, for whatever reason, the table is freed, unless
 * it has an heir, which then becomes the owner and receives a
 * KEEL_TABLE_TAG_TRANSFER message (Erlang's 'ETS-TRANSFER'). The owner may
 * also give the table away while it runs.
 *
 * TYPES. A set hashes its keys (no order); an ordered set keeps them sorted
 * bytewise (memcmp, a shorter key before a longer one it is a prefix of:
 * store integers big-endian to sort them numerically) and adds range and
 * prefix scans. Keys are unique in both.
 *
 * ACCESS (enforced on every call). protected (the default): the owner reads
 * and writes, others only read; public: everyone reads and writes; private:
 * only the owner. A refused call returns KEEL_EPERM. Calls from outside any
 * keel process count as "not the owner".
 *
 * OWNERSHIP OF BYTES. Keys and values are copied in: the caller keeps what
 * it passed. Values are copied out: into the caller's buffer
 * (keel_table_lookup) or a malloc'd block the caller frees (keel_table_get,
 * keel_table_take, the rows of a scan). Where the caller asks
 * (KEEL_TABLE_HANDOVER) a value is handed over instead of copied: the table
 * takes the malloc'd block itself and keel_table_take hands it back as is.
 *
 * CONCURRENCY. A set is split into 64 stripes by key hash, each under its own
 * lock; an ordered set has one. The locks are reader-indicator locks (as
 * ETS's read_concurrency): a reader raises a flag that only its own thread
 * writes, so readers on different schedulers share no written memory, and a
 * writer waits only for the readers of its stripe. Writers prepare
 * (allocate, copy) before they lock and free after they unlock, so a lock is
 * held for a hash-chain walk and a few pointer writes: readers never wait for
 * a writer that holds it long (docs/decisions/0016 has the measurements).
 * update_counter, and an insert replacing a value of 1 to 8 bytes by one of
 * the same length, change one word atomically under the reader's side of
 * the lock, so they do not exclude readers or each other (docs/decisions/0039).
 * Every single call is atomic: update_counter from many processes loses no
 * increment. Iteration and scans copy a stripe (ordered set: a run of up to
 * 256 keys) at a time, and values of 1 to 8 bytes may change during that
 * copy, so two entries of one run need not come from one instant; each
 * entry's value is one it held (see keel_table_foreach).
 *
 * HANDLES. A keel_table_t is a number, not a pointer: a handle of a table
 * that is gone (deleted, owner exited) is refused with KEEL_EINVAL, never a
 * crash, even if its slot holds a new table by then.
 *
 * All functions may be called from any thread, in or out of a process,
 * except keel_table_new (a process: it becomes the owner). No function
 * waits for anything but a table's lock, and none yields.
 */
#ifndef KEEL_TABLE_H
#define KEEL_TABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "keel/message.h"
#include "keel/registry.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef uint64_t keel_table_t; /* 0 is never a table */

typedef enum keel_table_type {
  KEEL_TABLE_SET = 0,         /* hashed, unordered (the default) */
  KEEL_TABLE_ORDERED_SET = 1, /* sorted by key bytes; range and prefix scans */
} keel_table_type;

typedef enum keel_table_access {
  KEEL_TABLE_PROTECTED = 0, /* the owner writes, everyone reads (the default) */
  KEEL_TABLE_PUBLIC = 1,    /* everyone reads and writes */
  KEEL_TABLE_PRIVATE = 2,   /* only the owner reads and writes */
} keel_table_access;

typedef struct keel_table_opts {
  keel_table_type type;
  keel_table_access access;
  const char *name;   /* NULL: unnamed; else unique among live tables, found with
                         keel_table_whereis (copied, up to KEEL_NAME_MAX bytes) */
  keel_pid_t heir;    /* 0: none; else who inherits the table when the owner exits */
  uint64_t heir_data; /* carried in the transfer message to the heir */
} keel_table_opts;

/* Tag of the KEEL_MSG_USER message an heir (or the receiver of
 * keel_table_give_away) gets when it becomes the owner; payload:
 * keel_table_transfer. Sent from outside a process when the owner exited
 * (keel_msg_from is 0), from the giver otherwise. */
#define KEEL_TABLE_TAG_TRANSFER 0x6B746274u
typedef struct keel_table_transfer {
  keel_table_t table;
  keel_pid_t from; /* the previous owner */
  uint64_t data;   /* heir_data, or give_away's data */
} keel_table_transfer;

/* Flags of keel_table_put. */
enum {
  KEEL_TABLE_NEW = 1u << 0,      /* insert only if the key is absent, else KEEL_EEXIST */
  KEEL_TABLE_HANDOVER = 1u << 1, /* val is a malloc'd block the table takes as is (no
                                    copy) and frees with free(); it does so even when
                                    the call fails: the caller never touches it again */
};

/* Creates a table owned by the calling process; *out gets its handle. o may
 * be NULL (a protected set). Errors: KEEL_ENOTPROC (not in a process),
 * KEEL_EEXIST (name taken), KEEL_EINVAL (bad type, access or name; heir is
 * the caller), KEEL_ENOPROC (heir is dead), KEEL_ENOMEM. */
int keel_table_new(const keel_table_opts *o, keel_table_t *out);

/* Deletes the table and every entry at once; only its owner may (else
 * KEEL_EPERM). Calls racing with it either complete before or get
 * KEEL_EINVAL. Errors: KEEL_EINVAL (no such table), KEEL_EPERM. */
int keel_table_delete(keel_table_t t);

/* The named table, or 0. Any thread. */
keel_table_t keel_table_whereis(const char *name);

/* Makes `to` the owner and sends it a KEEL_TABLE_TAG_TRANSFER message with
 * data. Only the owner may. Errors: KEEL_EINVAL (no such table, to is the
 * caller), KEEL_EPERM, KEEL_ENOPROC (to is dead: nothing changes),
 * KEEL_ENOMEM. */
int keel_table_give_away(keel_table_t t, keel_pid_t to, uint64_t data);

/* Sets (heir != 0) or clears the heir. Only the owner may. Errors:
 * KEEL_EINVAL, KEEL_EPERM. An heir that is dead when the owner exits is
 * skipped: the table is freed. */
int keel_table_set_heir(keel_table_t t, keel_pid_t heir, uint64_t data);

/* ---- writes (owner only unless public) -------------------------------------- */

/* Stores val[0..vlen) under key[0..klen), replacing any value there. Both
 * copied. val may be NULL when vlen is 0; key may be NULL when klen is 0.
 * Errors: KEEL_EINVAL (no such table, bad arguments), KEEL_EPERM,
 * KEEL_ENOMEM. */
int keel_table_insert(keel_table_t t, const void *key, size_t klen, const void *val, size_t vlen);

/* As keel_table_insert, only when key is absent. Errors as insert, and
 * KEEL_EEXIST (the table is unchanged). */
int keel_table_insert_new(keel_table_t t, const void *key, size_t klen, const void *val,
                          size_t vlen);

/* insert with flags (KEEL_TABLE_NEW, KEEL_TABLE_HANDOVER). With HANDOVER,
 * val is taken in every case, failures included. */
int keel_table_put(keel_table_t t, const void *key, size_t klen, void *val, size_t vlen,
                   unsigned flags);

/* Removes key. Errors: KEEL_ENOENT (absent), KEEL_EINVAL, KEEL_EPERM. */
int keel_table_erase(keel_table_t t, const void *key, size_t klen);

/* Removes key and hands its value to the caller: *val a malloc'd block the
 * caller frees (the handed-over block itself if it was put with
 * KEEL_TABLE_HANDOVER, else a copy; NULL when vlen is 0), *vlen its length
 * (may be NULL). Errors: KEEL_ENOENT, KEEL_EINVAL, KEEL_EPERM, KEEL_ENOMEM
 * (the entry stays). */
int keel_table_take(keel_table_t t, const void *key, size_t klen, void **val, size_t *vlen);

/* Adds incr to the counter stored under key (a value of exactly 8 bytes, an
 * int64_t in host order) atomically, and stores the new value in *result
 * (may be NULL). A missing key is created as *init + incr when init is not
 * NULL, else KEEL_ENOENT. Errors: KEEL_EINVAL (the value is not 8 bytes, no
 * such table), KEEL_ERANGE (the sum overflows: the counter is unchanged),
 * KEEL_EPERM, KEEL_ENOMEM. */
int keel_table_update_counter(keel_table_t t, const void *key, size_t klen, int64_t incr,
                              const int64_t *init, int64_t *result);

/* ---- reads (everyone unless private) ---------------------------------------- */

/* Copies the value under key into buf (cap bytes) and its length into *vlen
 * (may be NULL). buf NULL: only tells whether key is present (and *vlen).
 * Errors: KEEL_ENOENT, KEEL_ERANGE (cap < the length: nothing copied, *vlen
 * says how much is needed), KEEL_EINVAL, KEEL_EPERM. */
int keel_table_lookup(keel_table_t t, const void *key, size_t klen, void *buf, size_t cap,
                      size_t *vlen);

/* As lookup, into a malloc'd copy the caller frees (*val NULL when the value
 * is empty). Errors: as lookup, KEEL_ENOMEM. */
int keel_table_get(keel_table_t t, const void *key, size_t klen, void **val, size_t *vlen);

/* Calls fn(key, klen, val, vlen, ud) for every entry until fn returns
 * nonzero (then returns that value; else 0). The entries are copied out one
 * stripe (ordered set: one run of up to 256 keys, in key order) at a time
 * and fn runs with no lock held, so fn may read and write this table. What
 * it sees: every entry present for the whole iteration exactly once, with a
 * value it held at some instant during the iteration; an entry inserted or
 * erased meanwhile is seen at most once. The pointers are valid during the
 * call only. Errors: KEEL_EINVAL, KEEL_EPERM, KEEL_ENOMEM. */
typedef int (*keel_table_fn)(const void *key, size_t klen, const void *val, size_t vlen, void *ud);
int keel_table_foreach(keel_table_t t, keel_table_fn fn, void *ud);

/* The entries a scan returns; owned by the caller, freed with
 * keel_table_rows_free. Rows of an ordered set are in key order. */
typedef struct keel_table_row {
  const void *key;
  size_t klen;
  const void *val;
  size_t vlen;
} keel_table_row;
typedef struct keel_table_rows {
  size_t n;
  keel_table_row *rows;
} keel_table_rows;

/* Frees what rows holds and zeroes it. NULL and a zeroed rows are fine. */
void keel_table_rows_free(keel_table_rows *rows);

/* Rows whose pred(key, klen, val, vlen, ud) is true, at most max (0: no
 * limit), seen as keel_table_foreach sees them. pred runs with a stripe's
 * read lock held: it must only look at its arguments (calling a keel_table
 * function or waiting in it may deadlock). Errors: KEEL_EINVAL, KEEL_EPERM,
 * KEEL_ENOMEM (*out is then empty). */
typedef bool (*keel_table_pred)(const void *key, size_t klen, const void *val, size_t vlen,
                                void *ud);
int keel_table_select(keel_table_t t, keel_table_pred pred, void *ud, size_t max,
                      keel_table_rows *out);

/* Ordered sets: rows with lo <= key < hi in key order, at most max (0: no
 * limit). lo NULL: from the first key; hi NULL: to the last. Errors:
 * KEEL_EINVAL (a set, no such table), KEEL_EPERM, KEEL_ENOMEM. */
int keel_table_range(keel_table_t t, const void *lo, size_t lolen, const void *hi, size_t hilen,
                     size_t max, keel_table_rows *out);

/* Ordered sets: rows whose key starts with prefix, in key order, at most max
 * (0: no limit). Errors as keel_table_range. */
int keel_table_prefix(keel_table_t t, const void *prefix, size_t plen, size_t max,
                      keel_table_rows *out);

/* ---- introspection ---------------------------------------------------------- */

typedef struct keel_table_info {
  keel_table_t table;
  char name[KEEL_NAME_MAX + 1]; /* "" when unnamed */
  keel_pid_t owner;
  keel_pid_t heir; /* 0: none */
  keel_table_type type;
  keel_table_access access;
  size_t size;   /* entries */
  size_t memory; /* bytes the table holds: entries, buckets, header */
} keel_table_info;

/* Fills *out for t. Errors: KEEL_EINVAL (no such table). Any access. */
int keel_table_info_of(keel_table_t t, keel_table_info *out);

/* Number of entries, or 0 for no such table. */
size_t keel_table_size(keel_table_t t);

/* Calls fn(info, ud) for every live table (each read at one instant; fn runs
 * with no lock held). Returns the number of tables. For the observer. */
size_t keel_tables(void (*fn)(const keel_table_info *info, void *ud), void *ud);

/* "set", "ordered_set"; "protected", "public", "private". Static strings. */
const char *keel_table_type_name(keel_table_type type);
const char *keel_table_access_name(keel_table_access access);

#ifdef __cplusplus
}
#endif
#endif
