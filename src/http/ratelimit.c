/* ratelimit.c - per-client fixed-window rate limiting shared by every
 * scheduler, in bounded memory.
 *
 * Semantics (express-rate-limit's memory store): a key's window opens at its
 * first request and lasts window_ms; each request in the window counts one;
 * the request that makes the count exceed the limit, and every later one in
 * the window, is refused; the first request after the window ends opens a new
 * window with a count of one. The result carries what the X-RateLimit-* and
 * Retry-After headers need: remaining (never negative), seconds until the
 * window ends rounded up (never 0).
 *
 * Layout. The limiter is split into up to 64 shards chosen by the top bits of
 * a keyed hash (SipHash-2-4 under a random key drawn from getrandom at
 * creation, so a client cannot aim many addresses at one shard or one probe
 * chain). Each shard has its own mutex, so requests from different schedulers
 * contend only when their keys land in the same shard; the critical section is
 * a probe and a few stores, never a system call or a yield. A shard owns a
 * fixed array of cap = max_clients / shards entries (allocated up front with
 * calloc, so untouched pages cost nothing) and an open-addressing index of
 * 32-bit entry numbers, at least twice the size of the array (load <= 0.5),
 * probed linearly and deleted from by backward shifting (no tombstones). The
 * whole count of remembered keys is therefore at most max_clients, whatever
 * arrives.
 *
 * Eviction. Every entry is also on a doubly linked list in the order its
 * current window started: a new key or a renewed window goes to the tail. When
 * a shard is full and a new key arrives, the head goes: it has the oldest
 * window start, so it is an expired entry if the shard has one (nothing is
 * lost: its next request would open a new window anyway), and otherwise the
 * live counter closest to its reset. Under a flood of distinct addresses
 * larger than the capacity, live counters of real clients get evicted and
 * those clients start again from zero: the limiter then fails open for them
 * (they may get more than the limit in that window), never closed (nobody is
 * refused who should not be). keel__ratelimit_evictions counts those
 * evictions of live counters so operators can see it happen.
 *
 * Keys up to KEY_INLINE bytes (every IPv4 and nearly every IPv6 text form)
 * are stored and compared whole; a longer key is stored by its first
 * KEY_INLINE bytes plus its 64-bit keyed hash, so two long keys could share a
 * counter only on a 64-bit hash collision under a secret key.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "http/middleware.h"

#define MAX_SHARDS 64
#define KEY_INLINE 51
#define KEY_LONG   255 /* entry.len for keys longer than KEY_INLINE */
#define NIL        UINT32_MAX

typedef struct entry {
  uint64_t h;           /* keyed hash of the whole key */
  uint64_t start;       /* ms: when the current window opened */
  uint32_t count;       /* requests in the window, capped at limit + 1 */
  uint32_t prev, next;  /* window-start order; NIL ends */
  uint8_t len;          /* key length or KEY_LONG */
  char key[KEY_INLINE]; /* the key, or its prefix when len == KEY_LONG */
} entry;                /* 80 bytes */

typedef struct shard {
  pthread_mutex_t mu;
  entry *e;       /* cap entries */
  uint32_t *slot; /* mask + 1 slots: entry index + 1, 0 when empty */
  uint32_t mask;
  uint32_t cap, used;
  uint32_t head, tail; /* oldest and newest window start */
  uint64_t evicted_live;
} __attribute__((aligned(64))) shard;

struct keel__ratelimit {
  int limit;
  uint64_t window;
  unsigned nshards, shard_shift; /* shard = h >> shard_shift (nshards > 1) */
  uint64_t k0, k1;               /* SipHash key */
  shard *shards;
};

/* ---- SipHash-2-4 (Aumasson and Bernstein, 2012) ---------------------------- */

static inline uint64_t rotl(uint64_t x, int b) {
  return (x << b) | (x >> (64 - b));
}

#define SIPROUND                                                                                   \
  do {                                                                                             \
    v0 += v1, v1 = rotl(v1, 13), v1 ^= v0, v0 = rotl(v0, 32);                                      \
    v2 += v3, v3 = rotl(v3, 16), v3 ^= v2;                                                         \
    v0 += v3, v3 = rotl(v3, 21), v3 ^= v0;                                                         \
    v2 += v1, v1 = rotl(v1, 17), v1 ^= v2, v2 = rotl(v2, 32);                                      \
  } while (0)

static uint64_t load_le64(const unsigned char *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--)
    v = (v << 8) | p[i];
  return v;
}

uint64_t keel__siphash24(uint64_t k0, uint64_t k1, const void *data, size_t len) {
  const unsigned char *p = data;
  uint64_t v0 = k0 ^ 0x736f6d6570736575ULL, v1 = k1 ^ 0x646f72616e646f6dULL;
  uint64_t v2 = k0 ^ 0x6c7967656e657261ULL, v3 = k1 ^ 0x7465646279746573ULL;
  size_t words = len / 8;
  for (size_t i = 0; i < words; i++, p += 8) {
    uint64_t m = load_le64(p);
    v3 ^= m;
    SIPROUND;
    SIPROUND;
    v0 ^= m;
  }
  uint64_t b = (uint64_t)len << 56;
  for (size_t i = 0; i < len % 8; i++)
    b |= (uint64_t)p[i] << (8 * i);
  v3 ^= b;
  SIPROUND;
  SIPROUND;
  v0 ^= b;
  v2 ^= 0xff;
  SIPROUND;
  SIPROUND;
  SIPROUND;
  SIPROUND;
  return v0 ^ v1 ^ v2 ^ v3;
}

/* ---- creation ---------------------------------------------------------------- */

static void random_key(uint64_t k[2]) {
  unsigned char *p = (unsigned char *)k;
  size_t got = 0;
  while (got < 16) {
    ssize_t r = getrandom(p + got, 16 - got, 0);
    if (r <= 0) break;
    got += (size_t)r;
  }
  if (got < 16) { /* no getrandom (old kernel, seccomp): still unpredictable enough */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    k[0] ^= (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ULL ^ (uint64_t)(uintptr_t)k;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    k[1] ^= (uint64_t)ts.tv_nsec * 0xbf58476d1ce4e5b9ULL ^ (uint64_t)ts.tv_sec;
  }
}

void keel__ratelimit_free(keel__ratelimit *rl) {
  if (!rl) return;
  if (rl->shards) {
    for (unsigned i = 0; i < rl->nshards; i++) {
      pthread_mutex_destroy(&rl->shards[i].mu);
      free(rl->shards[i].e);
      free(rl->shards[i].slot);
    }
    free(rl->shards);
  }
  free(rl);
}

keel__ratelimit *keel__ratelimit_new(int limit, int64_t window_ms, size_t max_clients) {
  if (limit <= 0 || window_ms <= 0 || max_clients == 0 || max_clients > ((size_t)1 << 30))
    return NULL;
  keel__ratelimit *rl = calloc(1, sizeof *rl);
  if (!rl) return NULL;
  rl->limit = limit;
  rl->window = (uint64_t)window_ms;
  unsigned n = 1, bits = 0;
  while (n * 2 <= MAX_SHARDS && n * 2 <= max_clients)
    n *= 2, bits++;
  rl->nshards = n;
  rl->shard_shift = 64 - bits;
  uint64_t k[2] = {0, 0};
  random_key(k);
  rl->k0 = k[0];
  rl->k1 = k[1];
  rl->shards = aligned_alloc(64, n * sizeof(shard));
  if (!rl->shards) {
    free(rl);
    return NULL;
  }
  memset(rl->shards, 0, n * sizeof(shard));
  uint32_t cap = (uint32_t)(max_clients / n);
  uint32_t slots = 4;
  while (slots < 2 * cap)
    slots *= 2;
  for (unsigned i = 0; i < n; i++) {
    shard *s = &rl->shards[i];
    pthread_mutex_init(&s->mu, NULL);
    s->cap = cap;
    s->mask = slots - 1;
    s->head = s->tail = NIL;
    s->e = calloc(cap, sizeof *s->e);
    s->slot = calloc(slots, sizeof *s->slot);
    if (!s->e || !s->slot) {
      rl->nshards = i + 1; /* free what was set up */
      keel__ratelimit_free(rl);
      return NULL;
    }
  }
  return rl;
}

/* ---- one shard (called with its mutex held) ----------------------------------- */

static void list_unlink(shard *s, uint32_t i) {
  entry *e = &s->e[i];
  if (e->prev != NIL)
    s->e[e->prev].next = e->next;
  else
    s->head = e->next;
  if (e->next != NIL)
    s->e[e->next].prev = e->prev;
  else
    s->tail = e->prev;
  e->prev = e->next = NIL;
}

static void list_push_tail(shard *s, uint32_t i) {
  entry *e = &s->e[i];
  e->prev = s->tail;
  e->next = NIL;
  if (s->tail != NIL)
    s->e[s->tail].next = i;
  else
    s->head = i;
  s->tail = i;
}

static bool key_matches(const entry *e, uint64_t h, const char *key, size_t len) {
  if (e->h != h) return false;
  if (len > KEY_INLINE) return e->len == KEY_LONG && memcmp(e->key, key, KEY_INLINE) == 0;
  return e->len == len && memcmp(e->key, key, len) == 0;
}

/* Removes entry i from the index, shifting later members of its probe run
 * back so that lookups never need tombstones. */
static void index_remove(shard *s, uint32_t i) {
  uint32_t pos = (uint32_t)s->e[i].h & s->mask;
  while (s->slot[pos] != i + 1)
    pos = (pos + 1) & s->mask;
  uint32_t hole = pos, j = pos;
  for (;;) {
    j = (j + 1) & s->mask;
    uint32_t v = s->slot[j];
    if (v == 0) break;
    uint32_t home = (uint32_t)s->e[v - 1].h & s->mask;
    /* the member at j may stay when its home lies cyclically in (hole, j] */
    bool stays = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
    if (stays) continue;
    s->slot[hole] = v;
    hole = j;
  }
  s->slot[hole] = 0;
}

static entry *find_or_add(keel__ratelimit *rl, shard *s, uint64_t h, const char *key, size_t len,
                          uint64_t now, bool *fresh) {
  uint32_t pos = (uint32_t)h & s->mask;
  for (uint32_t v; (v = s->slot[pos]) != 0; pos = (pos + 1) & s->mask)
    if (key_matches(&s->e[v - 1], h, key, len)) {
      *fresh = false;
      return &s->e[v - 1];
    }
  uint32_t i;
  if (s->used < s->cap) {
    i = s->used++;
  } else {
    i = s->head; /* the oldest window start: expired if anything is */
    entry *old = &s->e[i];
    if (now < old->start + rl->window) s->evicted_live++;
    index_remove(s, i);
    list_unlink(s, i);
    pos = (uint32_t)h & s->mask; /* the shift may have moved the free slot */
    while (s->slot[pos] != 0)
      pos = (pos + 1) & s->mask;
  }
  entry *e = &s->e[i];
  e->h = h;
  if (len > KEY_INLINE) {
    e->len = KEY_LONG;
    memcpy(e->key, key, KEY_INLINE);
  } else {
    e->len = (uint8_t)len;
    memcpy(e->key, key, len);
  }
  e->start = now;
  e->count = 0;
  s->slot[pos] = i + 1;
  list_push_tail(s, i);
  *fresh = true;
  return e;
}

/* ---- the hot path ----------------------------------------------------------------- */

void keel__ratelimit_hit(keel__ratelimit *rl, const char *key, uint64_t now_ms,
                         keel__rl_result *out) {
  if (!key) key = "";
  size_t len = strlen(key);
  uint64_t h = keel__siphash24(rl->k0, rl->k1, key, len);
  shard *s = &rl->shards[rl->nshards > 1 ? h >> rl->shard_shift : 0];

  pthread_mutex_lock(&s->mu);
  bool fresh;
  entry *e = find_or_add(rl, s, h, key, len, now_ms, &fresh);
  if (!fresh && now_ms >= e->start + rl->window) { /* its window ended: a new one opens */
    e->start = now_ms;
    e->count = 0;
    uint32_t i = (uint32_t)(e - s->e);
    list_unlink(s, i);
    list_push_tail(s, i);
  }
  if (e->count <= (uint32_t)rl->limit) e->count++; /* capped: never wraps */
  uint32_t count = e->count;
  uint64_t end = e->start + rl->window;
  pthread_mutex_unlock(&s->mu);

  /* now_ms may be a little behind the start another thread just set (each
   * caller reads its own clock): then the window ends at most window ms away. */
  uint64_t left = end > now_ms ? end - now_ms : 1;
  if (left > rl->window) left = rl->window;
  int64_t secs = (int64_t)((left + 999) / 1000);
  if (secs < 1) secs = 1;
  out->limit = rl->limit;
  out->allowed = count <= (uint32_t)rl->limit;
  out->remaining = out->allowed ? rl->limit - (int)count : 0;
  out->reset_s = secs;
  out->retry_after_s = secs;
}

size_t keel__ratelimit_size(keel__ratelimit *rl) {
  size_t n = 0;
  for (unsigned i = 0; i < rl->nshards; i++) {
    pthread_mutex_lock(&rl->shards[i].mu);
    n += rl->shards[i].used;
    pthread_mutex_unlock(&rl->shards[i].mu);
  }
  return n;
}

uint64_t keel__ratelimit_evictions(keel__ratelimit *rl) {
  uint64_t n = 0;
  for (unsigned i = 0; i < rl->nshards; i++) {
    pthread_mutex_lock(&rl->shards[i].mu);
    n += rl->shards[i].evicted_live;
    pthread_mutex_unlock(&rl->shards[i].mu);
  }
  return n;
}
