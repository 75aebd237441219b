/* test_middleware.c - the connection-free HTTP middleware: header lists,
 * the rate limiter (limits, windows, exact counts across schedulers and
 * threads, bounded memory under a flood of addresses), request ids, W3C
 * traceparent, CORS decisions and the security headers.
 *
 * Each case is the first process of a fresh runtime. Times given to the rate
 * limiter are made up (now_ms is an argument), so windows are exact and no
 * verdict depends on the machine's speed.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel_test.h"
#include "http/middleware.h"

#define CHECK_HDR(h, name, want) CHECK_STR(keel__hdrs_get((h), (name)), (want))

/* How many headers named `name` the list has (case-insensitive). */
static size_t count_named(const keel__hdrs *h, const char *name) {
  size_t n = 0;
  for (size_t i = 0; i < h->n; i++)
    n += strcasecmp(h->v[i].name, name) == 0;
  return n;
}

/* ---- header lists ------------------------------------------------------------ */

KT_CASE(hdrs_add_get_truncate_free) {
  keel__hdrs h = {0};
  CHECK(keel__hdrs_get(&h, "X-A") == NULL);
  CHECK_OK(keel__hdrs_add(&h, "X-A", "1"));
  CHECK_OK(keel__hdrs_add(&h, "Vary", "Origin"));
  CHECK_OK(keel__hdrs_add(&h, "x-a", "2")); /* repeated: get gives the first */
  CHECK_EQ(h.n, 3);
  CHECK_HDR(&h, "x-A", "1");
  CHECK_HDR(&h, "VARY", "Origin");
  CHECK(keel__hdrs_get(&h, "X-B") == NULL);
  CHECK(keel__hdrs_get(&h, "X-") == NULL); /* no prefix matches */
  /* copies: the caller's buffers may change afterwards */
  char name[8] = "X-C", value[8] = "v";
  CHECK_OK(keel__hdrs_add(&h, name, value));
  name[0] = 'Z', value[0] = 'w';
  CHECK_HDR(&h, "X-C", "v");
  /* nothing that could split a header or start a body */
  CHECK_EQ(keel__hdrs_add(&h, "X-D", "a\r\nSet-Cookie: x=1"), KEEL_EINVAL);
  CHECK_EQ(keel__hdrs_add(&h, "X-D", "a\nb"), KEEL_EINVAL);
  CHECK_EQ(keel__hdrs_add(&h, "X-D", "a\x7f"), KEEL_EINVAL);
  CHECK_EQ(keel__hdrs_add(&h, "X D", "a"), KEEL_EINVAL);
  CHECK_EQ(keel__hdrs_add(&h, "X-D:", "a"), KEEL_EINVAL);
  CHECK_EQ(keel__hdrs_add(&h, "", "a"), KEEL_EINVAL);
  CHECK_EQ(keel__hdrs_add(&h, NULL, "a"), KEEL_EINVAL);
  CHECK_EQ(keel__hdrs_add(&h, "X-D", NULL), KEEL_EINVAL);
  CHECK_OK(keel__hdrs_add(&h, "X-D", "tab\tand obs-text \xc3\xa9 are fine"));
  CHECK_OK(keel__hdrs_add(&h, "X-E", "")); /* an empty value is legal */
  CHECK_EQ(h.n, 6);
  /* growth past the first allocation keeps order and content */
  for (int i = 0; i < 100; i++) {
    char v[16];
    snprintf(v, sizeof v, "%d", i);
    CHECK_OK(keel__hdrs_add(&h, "X-N", v));
  }
  CHECK_EQ(h.n, 106);
  CHECK_STR(h.v[105].value, "99");
  CHECK_STR(h.v[0].name, "X-A");
  keel__hdrs_truncate(&h, 2);
  CHECK_EQ(h.n, 2);
  CHECK(keel__hdrs_get(&h, "X-N") == NULL);
  keel__hdrs_truncate(&h, 10); /* beyond the end: nothing */
  CHECK_EQ(h.n, 2);
  keel__hdrs_free(&h);
  CHECK_EQ(h.n, 0);
  CHECK(h.v == NULL);
  CHECK_OK(keel__hdrs_add(&h, "X-A", "again")); /* reusable after free */
  CHECK_HDR(&h, "X-A", "again");
  keel__hdrs_free(&h);
  keel__hdrs_free(&h); /* twice is harmless */
}

/* ---- rate limiting --------------------------------------------------------------- */

KT_CASE(siphash_matches_the_papers_vectors) {
  unsigned char m[16];
  for (int i = 0; i < 16; i++)
    m[i] = (unsigned char)i;
  uint64_t k0 = 0x0706050403020100ULL, k1 = 0x0f0e0d0c0b0a0908ULL;
  CHECK(keel__siphash24(k0, k1, m, 0) == 0x726fdb47dd0e0e31ULL);
  CHECK(keel__siphash24(k0, k1, m, 1) == 0x74f839c593dc67fdULL);
  CHECK(keel__siphash24(k0, k1, m, 8) == 0x93f5f5799a932462ULL);
  CHECK(keel__siphash24(k0, k1, m, 15) == 0xa129ca6149be45e5ULL);
}

KT_CASE(ratelimit_rejects_bad_arguments) {
  CHECK(keel__ratelimit_new(0, 60000, 100) == NULL);
  CHECK(keel__ratelimit_new(-1, 60000, 100) == NULL);
  CHECK(keel__ratelimit_new(100, 0, 100) == NULL);
  CHECK(keel__ratelimit_new(100, -5, 100) == NULL);
  CHECK(keel__ratelimit_new(100, 60000, 0) == NULL);
  keel__ratelimit_free(NULL);
  /* one client is enough to work with */
  keel__ratelimit *rl = keel__ratelimit_new(1, 1000, 1);
  CHECK(rl != NULL);
  keel__rl_result r;
  keel__ratelimit_hit(rl, "a", 0, &r);
  CHECK(r.allowed);
  keel__ratelimit_hit(rl, "a", 1, &r);
  CHECK(!r.allowed);
  keel__ratelimit_hit(rl, NULL, 2, &r); /* no key: one shared "" key, no crash */
  CHECK(r.allowed);
  CHECK_EQ(keel__ratelimit_size(rl), 1);
  keel__ratelimit_free(rl);
}

KT_CASE(ratelimit_allows_the_limit_then_refuses_with_retry_after) {
  keel__ratelimit *rl = keel__ratelimit_new(100, 60000, 100000);
  CHECK(rl != NULL);
  const uint64_t t0 = 5000000;
  keel__rl_result r;
  for (int i = 1; i <= 100; i++) {
    keel__ratelimit_hit(rl, "203.0.113.7", t0 + (uint64_t)i, &r);
    CHECK(r.allowed);
    CHECK_EQ(r.limit, 100);
    CHECK_EQ(r.remaining, 100 - i);
    /* window opened at t0 + 1: 60000 - (i - 1) ms left, rounded up */
    CHECK_EQ(r.reset_s, (60000 - (i - 1) + 999) / 1000);
    CHECK(r.reset_s >= 1);
  }
  keel__ratelimit_hit(rl, "203.0.113.7", t0 + 101, &r); /* the 101st */
  CHECK(!r.allowed);
  CHECK_EQ(r.remaining, 0);
  CHECK_EQ(r.retry_after_s, 60); /* 59900 ms left, rounded up */
  CHECK_EQ(r.reset_s, 60);
  /* a refused client hammering on: still refused, never negative */
  for (int i = 0; i < 1000; i++) {
    keel__ratelimit_hit(rl, "203.0.113.7", t0 + 30001, &r);
    CHECK(!r.allowed);
    CHECK_EQ(r.remaining, 0);
  }
  CHECK_EQ(r.retry_after_s, 30); /* the window ends at t0 + 60001: 30000 ms left */
  keel__ratelimit_hit(rl, "203.0.113.7", t0 + 60000, &r); /* 1 ms before the end */
  CHECK(!r.allowed);
  CHECK_EQ(r.retry_after_s, 1); /* rounds up, never 0 */
  CHECK_EQ(r.reset_s, 1);
  /* another client is untouched */
  keel__ratelimit_hit(rl, "203.0.113.8", t0 + 60000, &r);
  CHECK(r.allowed);
  CHECK_EQ(r.remaining, 99);
  CHECK_EQ(keel__ratelimit_size(rl), 2);
  keel__ratelimit_free(rl);
}

KT_CASE(ratelimit_new_window_resets_the_count) {
  keel__ratelimit *rl = keel__ratelimit_new(3, 1000, 1000);
  CHECK(rl != NULL);
  keel__rl_result r;
  for (int i = 0; i < 5; i++)
    keel__ratelimit_hit(rl, "k", 100, &r);
  CHECK(!r.allowed);
  keel__ratelimit_hit(rl, "k", 1099, &r); /* last ms of the window */
  CHECK(!r.allowed);
  keel__ratelimit_hit(rl, "k", 1100, &r); /* the window [100, 1100) is over */
  CHECK(r.allowed);
  CHECK_EQ(r.remaining, 2);
  CHECK_EQ(r.reset_s, 1);
  keel__ratelimit_hit(rl, "k", 1500, &r);
  keel__ratelimit_hit(rl, "k", 2099, &r);
  CHECK(r.allowed);
  CHECK_EQ(r.remaining, 0);
  keel__ratelimit_hit(rl, "k", 2099, &r);
  CHECK(!r.allowed);
  /* a clock read a little before the window opened (another thread's now)
   * counts in the current window and never reports more than a window */
  keel__ratelimit_hit(rl, "k", 1050, &r);
  CHECK(!r.allowed);
  CHECK_EQ(r.reset_s, 1);
  /* long after: a fresh window, not a negative one */
  keel__ratelimit_hit(rl, "k", 1000000, &r);
  CHECK(r.allowed);
  CHECK_EQ(r.remaining, 2);
  keel__ratelimit_free(rl);
}

KT_CASE(ratelimit_long_keys_are_told_apart) {
  keel__ratelimit *rl = keel__ratelimit_new(1, 60000, 1000);
  CHECK(rl != NULL);
  char a[200], b[200];
  memset(a, 'x', sizeof a - 1);
  a[sizeof a - 1] = '\0';
  memcpy(b, a, sizeof a);
  b[150] = 'y'; /* same first 150 bytes */
  keel__rl_result r;
  keel__ratelimit_hit(rl, a, 1, &r);
  CHECK(r.allowed);
  keel__ratelimit_hit(rl, b, 1, &r);
  CHECK(r.allowed);
  keel__ratelimit_hit(rl, a, 2, &r);
  CHECK(!r.allowed);
  keel__ratelimit_hit(rl, b, 2, &r);
  CHECK(!r.allowed);
  /* a key that is a prefix of another is another key */
  keel__ratelimit_hit(rl, "10.0.0.1", 1, &r);
  CHECK(r.allowed);
  keel__ratelimit_hit(rl, "10.0.0.10", 1, &r);
  CHECK(r.allowed);
  CHECK_EQ(keel__ratelimit_size(rl), 4);
  keel__ratelimit_free(rl);
}

/* Same key from processes on both schedulers and from plain threads: the
 * number allowed is exactly the limit. */
#define HAMMER_LIMIT 3000
#define HAMMER_HITS  4000

typedef struct hammer {
  keel__ratelimit *rl;
  atomic_int allowed, refused;
  keel_pid_t parent;
} hammer;

static void hammer_hits(hammer *h) {
  keel__rl_result r;
  for (int i = 0; i < HAMMER_HITS; i++) {
    keel__ratelimit_hit(h->rl, "198.51.100.1", 1000, &r);
    /* relaxed: the totals are read after the join / the done messages */
    atomic_fetch_add_explicit(r.allowed ? &h->allowed : &h->refused, 1, memory_order_relaxed);
    CHECK(r.remaining >= 0 && r.remaining <= HAMMER_LIMIT);
  }
}

static void hammer_proc(void *arg) {
  hammer *h = arg;
  for (int part = 0; part < 4; part++) {
    keel__rl_result r;
    for (int i = 0; i < HAMMER_HITS / 4; i++) {
      keel__ratelimit_hit(h->rl, "198.51.100.1", 1000, &r);
      atomic_fetch_add_explicit(r.allowed ? &h->allowed : &h->refused, 1, memory_order_relaxed);
    }
    keel_yield(); /* move around and interleave with the other process */
  }
  kt_send_u64(h->parent, 1, 0);
}

static void *hammer_thread(void *arg) {
  hammer_hits(arg);
  return NULL;
}

KT_CASE(ratelimit_same_key_from_two_schedulers_counts_exactly) {
  hammer h = {.rl = keel__ratelimit_new(HAMMER_LIMIT, 60000, 1000), .parent = keel_self()};
  CHECK(h.rl != NULL);
  for (int s = 0; s < 2; s++) {
    keel_spawn_opts o;
    keel_spawn_opts_init(&o);
    o.scheduler = KEEL_ON_SCHEDULER(s);
    CHECK_OK(keel_spawn(hammer_proc, &h, &o, NULL));
  }
  for (int i = 0; i < 2; i++)
    keel_msg_free(kt_recv(60000));
  CHECK_EQ(atomic_load(&h.allowed), HAMMER_LIMIT);
  CHECK_EQ(atomic_load(&h.refused), 2 * HAMMER_HITS - HAMMER_LIMIT);
  keel__ratelimit_free(h.rl);

  /* the same with four OS threads (the blocking pool, foreign threads) */
  hammer t = {.rl = keel__ratelimit_new(HAMMER_LIMIT, 60000, 1000)};
  CHECK(t.rl != NULL);
  pthread_t th[4];
  for (int i = 0; i < 4; i++)
    CHECK_OK(pthread_create(&th[i], NULL, hammer_thread, &t));
  for (int i = 0; i < 4; i++)
    CHECK_OK(pthread_join(th[i], NULL));
  CHECK_EQ(atomic_load(&t.allowed), HAMMER_LIMIT);
  CHECK_EQ(atomic_load(&t.refused), 4 * HAMMER_HITS - HAMMER_LIMIT);
  CHECK_EQ(keel__ratelimit_size(t.rl), 1);
  keel__ratelimit_free(t.rl);
}

/* Many distinct keys from several threads at once: every key's own count is
 * exact and the table never holds more than its capacity. */
typedef struct spread {
  keel__ratelimit *rl;
  int base;
  atomic_int bad;
} spread;

static void *spread_thread(void *arg) {
  spread *s = arg;
  keel__rl_result r;
  char key[32];
  for (int round = 0; round < 3; round++)
    for (int i = 0; i < 2000; i++) {
      snprintf(key, sizeof key, "10.%d.%d.%d", s->base, i / 256, i % 256);
      keel__ratelimit_hit(s->rl, key, 10, &r);
      /* limit 2: rounds 0 and 1 allowed, round 2 refused */
      if (r.allowed != (round < 2) || r.remaining != (round == 0 ? 1 : 0))
        atomic_fetch_add_explicit(&s->bad, 1, memory_order_relaxed);
    }
  return NULL;
}

KT_CASE(ratelimit_distinct_keys_from_threads_stay_exact) {
  keel__ratelimit *rl = keel__ratelimit_new(2, 60000, 64 * 1024);
  CHECK(rl != NULL);
  spread s[4];
  pthread_t th[4];
  for (int i = 0; i < 4; i++) {
    s[i].rl = rl;
    s[i].base = i;
    atomic_init(&s[i].bad, 0);
    CHECK_OK(pthread_create(&th[i], NULL, spread_thread, &s[i]));
  }
  for (int i = 0; i < 4; i++)
    CHECK_OK(pthread_join(th[i], NULL));
  for (int i = 0; i < 4; i++)
    CHECK_EQ(atomic_load(&s[i].bad), 0);
  CHECK_EQ(keel__ratelimit_size(rl), 8000);
  CHECK_EQ(keel__ratelimit_evictions(rl), 0);
  keel__ratelimit_free(rl);
}

KT_CASE(ratelimit_million_addresses_stay_bounded) {
  const size_t max = 10000;
  keel__ratelimit *rl = keel__ratelimit_new(5, 60000, max);
  CHECK(rl != NULL);
  keel__rl_result r;
  char key[48];
  for (uint32_t i = 0; i < 1000000; i++) {
    snprintf(key, sizeof key, "2001:db8:%x:%x::1", i >> 16, i & 0xffff);
    keel__ratelimit_hit(rl, key, 1000 + i / 1000, &r);
    CHECK(r.allowed); /* each address is new: allowed, whatever was evicted */
    CHECK_EQ(r.remaining, 4);
    if (i % 100000 == 99999) CHECK(keel__ratelimit_size(rl) <= max);
    if (i % 10000 == 0) keel_yield(); /* a long loop: let the scheduler breathe */
  }
  size_t n = keel__ratelimit_size(rl);
  CHECK(n <= max);
  CHECK(n >= max / 2); /* it is a cache of recent clients, not an empty one */
  /* all within one window: every eviction lost a live counter */
  CHECK_EQ(keel__ratelimit_evictions(rl), 1000000 - n);
  keel__ratelimit_free(rl);
}

KT_CASE(ratelimit_flood_fails_open_never_closed) {
  keel__ratelimit *rl = keel__ratelimit_new(3, 60000, 1024);
  CHECK(rl != NULL);
  keel__rl_result r;
  for (int i = 0; i < 4; i++)
    keel__ratelimit_hit(rl, "192.0.2.1", 1000, &r);
  CHECK(!r.allowed); /* the real client is over its limit */
  /* a flood of distinct addresses in the same window, larger than memory */
  char key[32];
  for (int i = 0; i < 100000; i++) {
    snprintf(key, sizeof key, "172.16.%d.%d", i / 256, i % 256);
    keel__ratelimit_hit(rl, key, 1001, &r);
    CHECK(r.allowed); /* nobody new is refused */
  }
  CHECK(keel__ratelimit_size(rl) <= 1024);
  CHECK(keel__ratelimit_evictions(rl) > 0);
  /* the real client's counter (the oldest window in its shard) was evicted:
   * its next request opens a new window: fail open, documented */
  keel__ratelimit_hit(rl, "192.0.2.1", 1002, &r);
  CHECK(r.allowed);
  CHECK_EQ(r.remaining, 2);
  keel__ratelimit_free(rl);
}

KT_CASE(ratelimit_evicts_expired_counters_before_live_ones) {
  keel__ratelimit *rl = keel__ratelimit_new(3, 1000, 4096);
  CHECK(rl != NULL);
  keel__rl_result r;
  char key[32];
  /* fill well past capacity at t = 0 .. 19 (one window) */
  for (int i = 0; i < 20000; i++) {
    snprintf(key, sizeof key, "a-%d", i);
    keel__ratelimit_hit(rl, key, (uint64_t)(i / 1000), &r);
  }
  uint64_t ev = keel__ratelimit_evictions(rl);
  CHECK(ev > 0);
  /* one window later everything remembered has expired: a second flood of
   * as many keys as fit evicts only expired counters */
  size_t n = keel__ratelimit_size(rl);
  CHECK(n > 4000); /* every shard full (64 of 64 entries) */
  for (size_t i = 0; i < n / 8; i++) {
    snprintf(key, sizeof key, "b-%zu", i);
    keel__ratelimit_hit(rl, key, 5000, &r);
  }
  CHECK_EQ(keel__ratelimit_evictions(rl), ev);
  /* a live counter is not evicted while its shard still has expired ones:
   * "live" reaches its limit, more new keys arrive (each shard gets ~8 of
   * its 64 slots' worth), and "live" is still remembered and refused */
  for (int i = 0; i < 3; i++)
    keel__ratelimit_hit(rl, "live", 5000, &r);
  CHECK_EQ(r.remaining, 0);
  for (size_t i = 0; i < n / 8; i++) {
    snprintf(key, sizeof key, "c-%zu", i);
    keel__ratelimit_hit(rl, key, 5001, &r);
  }
  CHECK_EQ(keel__ratelimit_evictions(rl), ev);
  keel__ratelimit_hit(rl, "live", 5002, &r);
  CHECK(!r.allowed);
  keel__ratelimit_free(rl);
}

/* ---- request ids ------------------------------------------------------------------------ */

KT_CASE(reqid_accepts_only_well_formed_ids) {
  CHECK(keel__reqid_valid("a"));
  CHECK(keel__reqid_valid("0f8fad5b-d9cb-469f-a165-70867728950e"));
  CHECK(keel__reqid_valid("01ARZ3NDEKTSV4RRFFQ69G5FAV")); /* ULID */
  CHECK(keel__reqid_valid("4bf92f3577b34da6a3ce929d0e0e4736"));
  CHECK(keel__reqid_valid("Root=1-67891233-abcdef012345678912345678") ==
        false); /* '=' is not in the set */
  CHECK(keel__reqid_valid("svc.api_v2:req-42"));
  char s[130];
  memset(s, 'a', 128);
  s[128] = '\0';
  CHECK(keel__reqid_valid(s)); /* 128: the most */
  s[128] = 'a', s[129] = '\0';
  CHECK(!keel__reqid_valid(s)); /* 129 */
  CHECK(!keel__reqid_valid(NULL));
  CHECK(!keel__reqid_valid(""));
  CHECK(!keel__reqid_valid("has space"));
  CHECK(!keel__reqid_valid(" lead"));
  CHECK(!keel__reqid_valid("abc\r\nX-Evil: 1"));
  CHECK(!keel__reqid_valid("abc\n"));
  CHECK(!keel__reqid_valid("tab\there"));
  CHECK(!keel__reqid_valid("quote\"d"));
  CHECK(!keel__reqid_valid("it's"));
  CHECK(!keel__reqid_valid("back\\slash"));
  CHECK(!keel__reqid_valid("caf\xc3\xa9"));  /* unicode */
  CHECK(!keel__reqid_valid("\xe2\x80\x8b")); /* zero-width space */
  CHECK(!keel__reqid_valid("{\"json\":1}"));
  CHECK(!keel__reqid_valid("a/b"));
  CHECK(!keel__reqid_valid("<script>"));
}

static int cmp_ids(const void *a, const void *b) {
  return memcmp(a, b, 37);
}

static bool uuid_v4_form(const char *s) {
  if (strlen(s) != 36) return false;
  for (int i = 0; i < 36; i++) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (s[i] != '-') return false;
    } else if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) {
      return false;
    }
  }
  return s[14] == '4' && strchr("89ab", s[19]) != NULL;
}

#define NIDS 100000

KT_CASE(reqid_makes_unique_uuid_v4) {
  char(*ids)[37] = malloc(sizeof(*ids) * NIDS);
  CHECK(ids != NULL);
  unsigned nibble_seen[36][16] = {{0}};
  for (int i = 0; i < NIDS; i++) {
    keel__reqid_make(ids[i]);
    CHECK(uuid_v4_form(ids[i]));
    CHECK(keel__reqid_valid(ids[i])); /* what we make we would accept */
    if (i % 10000 == 0) keel_yield();
    for (int j = 0; j < 36; j++)
      if (ids[i][j] != '-')
        nibble_seen[j][ids[i][j] <= '9' ? ids[i][j] - '0' : ids[i][j] - 'a' + 10]++;
  }
  qsort(ids, NIDS, sizeof *ids, cmp_ids);
  for (int i = 1; i < NIDS; i++)
    CHECK(memcmp(ids[i - 1], ids[i], 37) != 0);
  /* every random nibble position takes every value (a stuck bit would show) */
  for (int j = 0; j < 36; j++) {
    if (j == 8 || j == 13 || j == 18 || j == 23 || j == 14 || j == 19) continue;
    for (int v = 0; v < 16; v++)
      CHECK(nibble_seen[j][v] > 0);
  }
  free(ids);
}

/* Ids made on several threads at once never collide (per-thread streams). */
typedef struct idbatch {
  char (*ids)[37];
  int n;
} idbatch;

static void *make_ids(void *arg) {
  idbatch *b = arg;
  for (int i = 0; i < b->n; i++)
    keel__reqid_make(b->ids[i]);
  return NULL;
}

KT_CASE(reqid_threads_make_distinct_ids) {
  enum { T = 4, PER = 20000 };
  char(*ids)[37] = malloc(sizeof(*ids) * T * PER);
  CHECK(ids != NULL);
  pthread_t th[T];
  idbatch b[T];
  for (int i = 0; i < T; i++) {
    b[i] = (idbatch){ids + i * PER, PER};
    CHECK_OK(pthread_create(&th[i], NULL, make_ids, &b[i]));
  }
  for (int i = 0; i < T; i++)
    CHECK_OK(pthread_join(th[i], NULL));
  qsort(ids, T * PER, sizeof *ids, cmp_ids);
  for (int i = 1; i < T * PER; i++)
    CHECK(memcmp(ids[i - 1], ids[i], 37) != 0);
  free(ids);
}

/* ---- traceparent ------------------------------------------------------------------------- */

KT_CASE(traceparent_parses_the_specs_examples) {
  keel__traceparent tp;
  /* W3C Trace Context, 3.2.5 examples */
  CHECK(keel__traceparent_parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", &tp));
  CHECK_STR(tp.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
  CHECK_STR(tp.parent_id, "00f067aa0ba902b7");
  CHECK_EQ(tp.flags, 1);
  CHECK(keel__traceparent_parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", &tp));
  CHECK_EQ(tp.flags, 0);
  /* unknown flag bits are accepted */
  CHECK(keel__traceparent_parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09", &tp));
  CHECK_EQ(tp.flags, 9);
  /* a future version: longer allowed with '-' after the flags */
  CHECK(keel__traceparent_parse(
      "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-will-be-like", &tp));
  CHECK_STR(tp.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
  CHECK_EQ(tp.flags, 1);
  CHECK(keel__traceparent_parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", &tp));
  CHECK(!keel__traceparent_parse(
      "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01.what-the-future-will-be-like", &tp));
  /* invalid */
  const char *bad[] = {
      "",
      "00",
      "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", /* version ff */
      "00-00000000000000000000000000000000-00f067aa0ba902b7-01", /* zero trace id */
      "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", /* zero parent id */
      "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", /* uppercase */
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
      "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  /* uppercase version */
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-", /* 00 must be 55 */
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
      "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  /* short trace id */
      "00-4bf92f3577b34da6a3ce929d0e0e47366-0f067aa0ba902b7-01", /* dash moved */
      "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
      "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01",
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902g7-01", /* not hex */
      "0-04bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
      " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
      "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", /* future, too short */
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    if (keel__traceparent_parse(bad[i], &tp)) {
      fprintf(stderr, "accepted: [%s]\n", bad[i]);
      CHECK(false);
    }
  }
  CHECK(!keel__traceparent_parse(NULL, &tp));
}

static bool lower_hex(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return false;
  return true;
}

KT_CASE(traceparent_next_keeps_the_trace_and_makes_a_span) {
  keel__traceparent in, back;
  CHECK(keel__traceparent_parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", &in));
  char out[56], span[17];
  keel__traceparent_next(&in, out, span);
  CHECK_EQ(strlen(out), 55);
  CHECK_EQ(strlen(span), 16);
  CHECK(lower_hex(span, 16));
  CHECK(keel__traceparent_parse(out, &back)); /* what we send is valid */
  CHECK_STR(back.trace_id, in.trace_id);
  CHECK_STR(back.parent_id, span); /* our span is the next hop's parent */
  CHECK(strcmp(span, in.parent_id) != 0);
  CHECK_EQ(back.flags, 1);
  CHECK(strncmp(out, "00-", 3) == 0);
  /* not sampled stays not sampled; unknown bits are not passed on */
  CHECK(keel__traceparent_parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", &in));
  keel__traceparent_next(&in, out, span);
  CHECK(keel__traceparent_parse(out, &back));
  CHECK_EQ(back.flags, 0);
  CHECK(keel__traceparent_parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff", &in));
  keel__traceparent_next(&in, out, span);
  CHECK(strcmp(out + 53, "01") == 0);
  /* a future version comes back as version 00 */
  CHECK(keel__traceparent_parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                                &in));
  keel__traceparent_next(&in, out, span);
  CHECK(strncmp(out, "00-4bf92f3577b34da6a3ce929d0e0e4736-", 36) == 0);
  /* a new trace: random ids, sampled */
  char out2[56], span2[17];
  keel__traceparent_next(NULL, out, span);
  keel__traceparent_next(NULL, out2, span2);
  CHECK(keel__traceparent_parse(out, &back));
  CHECK_EQ(back.flags, 1);
  CHECK(lower_hex(back.trace_id, 32));
  CHECK_STR(back.parent_id, span);
  CHECK(strcmp(out, out2) != 0);
  CHECK(strncmp(out + 3, out2 + 3, 32) != 0); /* different trace ids */
  CHECK(strcmp(span, span2) != 0);
}

/* ---- CORS --------------------------------------------------------------------------------- */

KT_CASE(cors_creation_checks_the_list) {
  int err = 1;
  keel__cors *c =
      keel__cors_new("https://a.example, https://b.example:8443 ,null", true, 600, &err);
  CHECK(c != NULL);
  CHECK_EQ(err, 0);
  keel__cors_free(c);
  /* never a wildcard with credentials */
  CHECK(keel__cors_new("*", true, 600, &err) == NULL);
  CHECK_EQ(err, KEEL_EINVAL);
  CHECK(keel__cors_new("https://a.example,*", true, 600, &err) == NULL);
  CHECK_EQ(err, KEEL_EINVAL);
  c = keel__cors_new("*", false, 600, &err);
  CHECK(c != NULL);
  keel__cors_free(c);
  /* entries no browser Origin can equal */
  const char *bad[] = {"",
                       " , ",
                       "https://a.example/",
                       "https://a.example/path",
                       "a.example",
                       "://a.example",
                       "https://",
                       "https://a .example",
                       "https://a.example\r\nX-Evil: 1"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    err = 0;
    CHECK(keel__cors_new(bad[i], false, 600, &err) == NULL);
    CHECK_EQ(err, KEEL_EINVAL);
  }
  CHECK(keel__cors_new(NULL, false, 600, &err) == NULL);
  CHECK(keel__cors_new("https://a.example", false, -1, &err) == NULL);
  CHECK_EQ(err, KEEL_EINVAL);
  c = keel__cors_new("https://a.example", false, 0, NULL); /* err may be NULL */
  CHECK(c != NULL);
  keel__cors_free(c);
  keel__cors_free(NULL);
}

KT_CASE(cors_allowed_origin_is_echoed_with_credentials) {
  keel__cors *c = keel__cors_new("https://a.example,https://b.example", true, 600, NULL);
  CHECK(c != NULL);
  keel__hdrs h = {0};
  CHECK_EQ(keel__cors_decide(c, "GET", "https://b.example", NULL, NULL, &h), KEEL__CORS_ALLOWED);
  CHECK_HDR(&h, "Access-Control-Allow-Origin", "https://b.example");
  CHECK_HDR(&h, "Access-Control-Allow-Credentials", "true");
  CHECK_HDR(&h, "Vary", "Origin");
  CHECK(keel__hdrs_get(&h, "Access-Control-Allow-Methods") == NULL); /* not a preflight */
  CHECK(keel__hdrs_get(&h, "Access-Control-Max-Age") == NULL);
  for (size_t i = 0; i < h.n; i++)
    CHECK(strcmp(h.v[i].value, "*") != 0);
  keel__hdrs_free(&h);
  /* an OPTIONS without Access-Control-Request-Method is a plain request */
  CHECK_EQ(keel__cors_decide(c, "OPTIONS", "https://a.example", NULL, NULL, &h),
           KEEL__CORS_ALLOWED);
  keel__hdrs_free(&h);
  keel__cors_free(c);
  /* without credentials: echoed, no Allow-Credentials */
  c = keel__cors_new("https://a.example", false, 600, NULL);
  CHECK(c != NULL);
  CHECK_EQ(keel__cors_decide(c, "POST", "https://a.example", NULL, NULL, &h), KEEL__CORS_ALLOWED);
  CHECK_HDR(&h, "Access-Control-Allow-Origin", "https://a.example");
  CHECK(keel__hdrs_get(&h, "Access-Control-Allow-Credentials") == NULL);
  CHECK_HDR(&h, "Vary", "Origin");
  keel__hdrs_free(&h);
  keel__cors_free(c);
}

KT_CASE(cors_refuses_unlisted_and_near_miss_origins) {
  keel__cors *c = keel__cors_new("https://a.example", true, 600, NULL);
  CHECK(c != NULL);
  const char *near[] = {"https://evil.example",
                        "http://a.example",
                        "https://A.EXAMPLE",
                        "HTTPS://a.example",
                        "https://a.example:443",
                        "https://a.example/",
                        "https://a.example.evil.example",
                        "https://xa.example",
                        "null",
                        ""};
  for (size_t i = 0; i < sizeof near / sizeof *near; i++) {
    keel__hdrs h = {0};
    CHECK_EQ(keel__cors_decide(c, "GET", near[i], NULL, NULL, &h), KEEL__CORS_REFUSED);
    CHECK(keel__hdrs_get(&h, "Access-Control-Allow-Origin") == NULL);
    CHECK(keel__hdrs_get(&h, "Access-Control-Allow-Credentials") == NULL);
    CHECK_HDR(&h, "Vary", "Origin"); /* caches must not mix answers */
    CHECK_EQ(h.n, 1);
    keel__hdrs_free(&h);
  }
  /* no Origin: not CORS; Vary still tells caches the answer depends on it */
  keel__hdrs h = {0};
  CHECK_EQ(keel__cors_decide(c, "GET", NULL, NULL, NULL, &h), KEEL__CORS_NONE);
  CHECK_HDR(&h, "Vary", "Origin");
  CHECK_EQ(h.n, 1);
  keel__hdrs_free(&h);
  keel__cors_free(c);
}

KT_CASE(cors_preflight_allowed_and_refused) {
  keel__cors *c = keel__cors_new("https://a.example", true, 600, NULL);
  CHECK(c != NULL);
  keel__hdrs h = {0};
  /* requested headers echoed */
  CHECK_EQ(
      keel__cors_decide(c, "OPTIONS", "https://a.example", "PUT", "content-type, x-request-id", &h),
      KEEL__CORS_PREFLIGHT_OK);
  CHECK_HDR(&h, "Access-Control-Allow-Origin", "https://a.example");
  CHECK_HDR(&h, "Access-Control-Allow-Credentials", "true");
  CHECK_HDR(&h, "Access-Control-Allow-Methods", "GET,HEAD,PUT,PATCH,POST,DELETE");
  CHECK_HDR(&h, "Access-Control-Allow-Headers", "content-type, x-request-id");
  CHECK_HDR(&h, "Access-Control-Max-Age", "600");
  CHECK_EQ(count_named(&h, "Vary"), 2);
  bool vary_acrh = false;
  for (size_t i = 0; i < h.n; i++)
    vary_acrh |= strcmp(h.v[i].name, "Vary") == 0 &&
                 strcmp(h.v[i].value, "Access-Control-Request-Headers") == 0;
  CHECK(vary_acrh);
  keel__hdrs_free(&h);
  /* none requested, or a malformed list: the default list */
  const char *acrh[] = {NULL, "", "x-a\r\nx-b: 1", "x-a;x-b", "\xc3\xa9"};
  for (size_t i = 0; i < sizeof acrh / sizeof *acrh; i++) {
    CHECK_EQ(keel__cors_decide(c, "OPTIONS", "https://a.example", "DELETE", acrh[i], &h),
             KEEL__CORS_PREFLIGHT_OK);
    const char *ah = keel__hdrs_get(&h, "Access-Control-Allow-Headers");
    CHECK(ah && strstr(ah, "Content-Type") && strstr(ah, "Authorization") &&
          strstr(ah, "X-Request-Id"));
    CHECK_EQ(count_named(&h, "Vary"), 1);
    keel__hdrs_free(&h);
  }
  /* refused: unlisted origin, or a method we do not allow */
  CHECK_EQ(keel__cors_decide(c, "OPTIONS", "https://evil.example", "GET", NULL, &h),
           KEEL__CORS_PREFLIGHT_REFUSED);
  CHECK(keel__hdrs_get(&h, "Access-Control-Allow-Origin") == NULL);
  CHECK(keel__hdrs_get(&h, "Access-Control-Allow-Methods") == NULL);
  keel__hdrs_free(&h);
  CHECK_EQ(keel__cors_decide(c, "OPTIONS", "https://a.example", "PROPFIND", NULL, &h),
           KEEL__CORS_PREFLIGHT_REFUSED);
  CHECK(keel__hdrs_get(&h, "Access-Control-Allow-Origin") == NULL);
  keel__hdrs_free(&h);
  CHECK_EQ(keel__cors_decide(c, "OPTIONS", "https://a.example", "get", NULL, &h),
           KEEL__CORS_PREFLIGHT_REFUSED); /* methods are case-sensitive */
  keel__hdrs_free(&h);
  /* a preflight without Origin is not CORS */
  CHECK_EQ(keel__cors_decide(c, "OPTIONS", NULL, "GET", NULL, &h), KEEL__CORS_NONE);
  keel__hdrs_free(&h);
  keel__cors_free(c);
  /* max age 0: no Access-Control-Max-Age */
  c = keel__cors_new("https://a.example", false, 0, NULL);
  CHECK(c != NULL);
  CHECK_EQ(keel__cors_decide(c, "OPTIONS", "https://a.example", "GET", NULL, &h),
           KEEL__CORS_PREFLIGHT_OK);
  CHECK(keel__hdrs_get(&h, "Access-Control-Max-Age") == NULL);
  CHECK(keel__hdrs_get(&h, "Access-Control-Allow-Credentials") == NULL);
  keel__hdrs_free(&h);
  keel__cors_free(c);
}

KT_CASE(cors_wildcard_without_credentials) {
  keel__cors *c = keel__cors_new("*", false, 600, NULL);
  CHECK(c != NULL);
  keel__hdrs h = {0};
  CHECK_EQ(keel__cors_decide(c, "GET", "https://anything.example", NULL, NULL, &h),
           KEEL__CORS_ALLOWED);
  CHECK_HDR(&h, "Access-Control-Allow-Origin", "*");
  CHECK(keel__hdrs_get(&h, "Access-Control-Allow-Credentials") == NULL);
  CHECK(keel__hdrs_get(&h, "Vary") == NULL); /* the answer does not vary */
  keel__hdrs_free(&h);
  CHECK_EQ(keel__cors_decide(c, "GET", NULL, NULL, NULL, &h), KEEL__CORS_NONE);
  CHECK_HDR(&h, "Access-Control-Allow-Origin", "*");
  keel__hdrs_free(&h);
  CHECK_EQ(keel__cors_decide(c, "OPTIONS", "https://x.example", "PATCH", "X-Custom", &h),
           KEEL__CORS_PREFLIGHT_OK);
  CHECK_HDR(&h, "Access-Control-Allow-Origin", "*");
  CHECK_HDR(&h, "Access-Control-Allow-Headers", "X-Custom");
  CHECK_HDR(&h, "Access-Control-Max-Age", "600");
  keel__hdrs_free(&h);
  keel__cors_free(c);
}

/* ---- security headers ----------------------------------------------------------------------- */

KT_CASE(security_headers_are_helmets_defaults) {
  keel__hdrs h = {0};
  CHECK_OK(keel__security_headers(&h, true, NULL));
  CHECK_HDR(&h, "Content-Security-Policy",
            "default-src 'self';base-uri 'self';font-src 'self' https: data:;"
            "form-action 'self';frame-ancestors 'none';img-src 'self' data:;object-src 'none';"
            "script-src 'self';script-src-attr 'none';style-src 'self' https: 'unsafe-inline';"
            "upgrade-insecure-requests");
  CHECK_HDR(&h, "Cross-Origin-Opener-Policy", "same-origin");
  CHECK_HDR(&h, "Cross-Origin-Resource-Policy", "same-origin");
  CHECK_HDR(&h, "Origin-Agent-Cluster", "?1");
  CHECK_HDR(&h, "Referrer-Policy", "no-referrer");
  CHECK_HDR(&h, "Strict-Transport-Security", "max-age=15552000; includeSubDomains");
  CHECK_HDR(&h, "X-Content-Type-Options", "nosniff");
  CHECK_HDR(&h, "X-DNS-Prefetch-Control", "off");
  CHECK_HDR(&h, "X-Download-Options", "noopen");
  CHECK_HDR(&h, "X-Frame-Options", "DENY");
  CHECK_HDR(&h, "X-Permitted-Cross-Domain-Policies", "none");
  CHECK_HDR(&h, "X-XSS-Protection", "0");
  CHECK(keel__hdrs_get(&h, "Cross-Origin-Embedder-Policy") == NULL); /* off in helmet 7 */
  CHECK_EQ(h.n, 12);
  keel__hdrs_free(&h);
  /* no HSTS, a custom CSP */
  CHECK_OK(keel__hdrs_add(&h, "X-Before", "kept"));
  CHECK_OK(keel__security_headers(&h, false, "default-src 'none'"));
  CHECK(keel__hdrs_get(&h, "Strict-Transport-Security") == NULL);
  CHECK_HDR(&h, "Content-Security-Policy", "default-src 'none'");
  CHECK_HDR(&h, "X-Before", "kept");
  CHECK_EQ(h.n, 12); /* X-Before and 11 */
  keel__hdrs_free(&h);
  /* "" sends no CSP; a CSP with CR/LF adds nothing at all */
  CHECK_OK(keel__security_headers(&h, true, ""));
  CHECK(keel__hdrs_get(&h, "Content-Security-Policy") == NULL);
  CHECK_EQ(h.n, 11);
  keel__hdrs_free(&h);
  CHECK_OK(keel__hdrs_add(&h, "X-Before", "kept"));
  CHECK_EQ(keel__security_headers(&h, true, "default-src 'self'\r\nSet-Cookie: a=b"), KEEL_EINVAL);
  CHECK_EQ(h.n, 1);
  keel__hdrs_free(&h);
  CHECK_EQ(keel__security_headers(NULL, true, NULL), KEEL_EINVAL);
}

KT_MAIN(KT_ENTRY(hdrs_add_get_truncate_free), KT_ENTRY(siphash_matches_the_papers_vectors),
        KT_ENTRY(ratelimit_rejects_bad_arguments),
        KT_ENTRY(ratelimit_allows_the_limit_then_refuses_with_retry_after),
        KT_ENTRY(ratelimit_new_window_resets_the_count),
        KT_ENTRY(ratelimit_long_keys_are_told_apart),
        KT_ENTRY_SCHED(ratelimit_same_key_from_two_schedulers_counts_exactly, 2),
        KT_ENTRY(ratelimit_distinct_keys_from_threads_stay_exact),
        KT_ENTRY(ratelimit_million_addresses_stay_bounded),
        KT_ENTRY(ratelimit_flood_fails_open_never_closed),
        KT_ENTRY(ratelimit_evicts_expired_counters_before_live_ones),
        KT_ENTRY(reqid_accepts_only_well_formed_ids), KT_ENTRY(reqid_makes_unique_uuid_v4),
        KT_ENTRY(reqid_threads_make_distinct_ids), KT_ENTRY(traceparent_parses_the_specs_examples),
        KT_ENTRY(traceparent_next_keeps_the_trace_and_makes_a_span),
        KT_ENTRY(cors_creation_checks_the_list),
        KT_ENTRY(cors_allowed_origin_is_echoed_with_credentials),
        KT_ENTRY(cors_refuses_unlisted_and_near_miss_origins),
        KT_ENTRY(cors_preflight_allowed_and_refused), KT_ENTRY(cors_wildcard_without_credentials),
        KT_ENTRY(security_headers_are_helmets_defaults))
