/* rand.c - fast per-thread random bits for ids (trace ids, span ids, request ids).
 *
 * A per-thread xoshiro256** generator (Blackman and Vigna) seeded from
 * getrandom(2): ids need uniqueness, not secrecy, and a thread-local
 * generator costs a few nanoseconds with no lock and no system call. The
 * state is touched only inside keel__rand64, which never yields, so a
 * process that moves between schedulers never carries it across threads.
 * A child process after fork() would continue its parent's streams and
 * repeat its ids, so a pthread_atfork child handler bumps a generation that
 * makes every thread reseed on its next draw. (It lived in src/http/reqid.c
 * until tracing, in ops, needed it too.)
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "ops/trace_internal.h"

/* ---- the per-thread generator -------------------------------------------------- */

typedef struct rng {
  uint64_t s[4];
  unsigned gen; /* fork generation the state was seeded in */
  bool seeded;
} rng;

static _Thread_local rng tl_rng;
/* Bumped in the child after fork(). Relaxed: a thread only compares it with
 * the value it saw when seeding; the fork handler runs in the only thread of
 * the child, before any other thread exists there. */
static atomic_uint fork_gen = 1;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void on_fork_child(void) {
  atomic_fetch_add_explicit(&fork_gen, 1, memory_order_relaxed);
}
static void register_atfork(void) {
  pthread_atfork(NULL, NULL, on_fork_child);
}

static inline uint64_t rotl(uint64_t x, int k) {
  return (x << k) | (x >> (64 - k));
}

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static void seed(rng *r, unsigned gen) {
  unsigned char *p = (unsigned char *)r->s;
  size_t got = 0;
  while (got < sizeof r->s) {
    ssize_t n = getrandom(p + got, sizeof r->s - got, 0);
    if (n <= 0) break;
    got += (size_t)n;
  }
  if (got < sizeof r->s) { /* no getrandom: clocks, thread and pid through splitmix */
    struct timespec a, b;
    clock_gettime(CLOCK_REALTIME, &a);
    clock_gettime(CLOCK_MONOTONIC, &b);
    uint64_t x = (uint64_t)a.tv_nsec ^ ((uint64_t)a.tv_sec << 30) ^ (uint64_t)b.tv_nsec ^
                 ((uint64_t)getpid() << 40) ^ (uint64_t)(uintptr_t)r;
    for (int i = 0; i < 4; i++)
      r->s[i] ^= splitmix64(&x);
  }
  if ((r->s[0] | r->s[1] | r->s[2] | r->s[3]) == 0) r->s[0] = 1; /* the one bad state */
  r->gen = gen;
  r->seeded = true;
}

/* xoshiro256**: next 64 random bits of this thread's stream. */
uint64_t keel__rand64(void) {
  rng *r = &tl_rng;
  unsigned gen = atomic_load_explicit(&fork_gen, memory_order_relaxed);
  if (!r->seeded || r->gen != gen) {
    pthread_once(&atfork_once, register_atfork);
    seed(r, gen);
  }
  uint64_t *s = r->s;
  uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return result;
}
