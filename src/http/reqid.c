/* reqid.c - request ids and W3C trace context for the HTTP middleware.
 *
 * A request id from the client (X-Request-Id, X-Correlation-Id) is taken only
 * when it is 1..128 characters of [A-Za-z0-9._:-]: enough for a UUID, a ULID,
 * a W3C trace id or a cloud load balancer's id, and nothing that could break a
 * log line, a header or a JSON string. Otherwise the server makes a UUID v4.
 *
 * Randomness comes from a per-thread xoshiro256** generator (Blackman and
 * Vigna) seeded from getrandom(2): ids need uniqueness, not secrecy, and a
 * thread-local generator costs a few nanoseconds with no lock and no system
 * call. The state is touched only inside these functions, which never yield,
 * so a process that moves between schedulers never carries it across threads.
 * A child process after fork() would continue its parent's streams and
 * repeat its ids, so a pthread_atfork child handler bumps a generation that
 * makes every thread reseed on its next draw.
 *
 * traceparent parsing follows W3C Trace Context Level 1, section 3.2 and its
 * rules for versions it does not know: "version-traceid-parentid-flags",
 * lowercase hex only; version ff is invalid; an all-zero trace id or parent
 * id is invalid; version 00 is exactly 55 characters; a higher version must be
 * at least 55 and, if longer, have '-' right after the flags (the rest is
 * that version's business and is ignored). What we propagate is always
 * version 00 with the caller's trace id, a new parent id (our span) and only
 * the sampled flag (level 1: other flag bits must be sent as zero).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "http/middleware.h"

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
static uint64_t rnd64(void) {
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

static const char HEX[] = "0123456789abcdef";

static void hex_bytes(char *out, const unsigned char *b, size_t n) {
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = HEX[b[i] >> 4];
    out[2 * i + 1] = HEX[b[i] & 15];
  }
}

/* n random bytes, not all zero (W3C: all-zero ids are invalid). */
static void random_nonzero(unsigned char *b, size_t n) {
  for (;;) {
    for (size_t i = 0; i < n; i += 8) {
      uint64_t v = rnd64();
      for (size_t j = 0; j < 8 && i + j < n; j++)
        b[i + j] = (unsigned char)(v >> (8 * j));
    }
    for (size_t i = 0; i < n; i++)
      if (b[i]) return;
  }
}

/* ---- request ids ----------------------------------------------------------------- */

bool keel__reqid_valid(const char *s) {
  if (!s) return false;
  size_t n = 0;
  for (; s[n]; n++) {
    unsigned char c = (unsigned char)s[n];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == ':' || c == '-';
    if (!ok || n >= 128) return false;
  }
  return n >= 1;
}

void keel__reqid_make(char out[37]) {
  unsigned char b[16];
  uint64_t a = rnd64(), c = rnd64();
  for (int i = 0; i < 8; i++) {
    b[i] = (unsigned char)(a >> (8 * i));
    b[8 + i] = (unsigned char)(c >> (8 * i));
  }
  b[6] = (unsigned char)((b[6] & 0x0f) | 0x40); /* version 4 */
  b[8] = (unsigned char)((b[8] & 0x3f) | 0x80); /* variant 10xx (RFC 9562) */
  char *o = out;
  for (int i = 0; i < 16; i++) {
    if (i == 4 || i == 6 || i == 8 || i == 10) *o++ = '-';
    *o++ = HEX[b[i] >> 4];
    *o++ = HEX[b[i] & 15];
  }
  *o = '\0';
}

/* ---- traceparent ------------------------------------------------------------------- */

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1; /* uppercase is invalid in traceparent */
}

/* n lowercase hex digits, not all zero when nonzero is set. */
static bool hex_field(const char *s, size_t n, bool nonzero) {
  bool any = false;
  for (size_t i = 0; i < n; i++) {
    if (hexval(s[i]) < 0) return false;
    if (s[i] != '0') any = true;
  }
  return any || !nonzero;
}

bool keel__traceparent_parse(const char *s, keel__traceparent *out) {
  if (!s) return false;
  size_t len = strlen(s);
  /* version(2) - trace-id(32) - parent-id(16) - flags(2) = 55 */
  if (len < 55) return false;
  if (!hex_field(s, 2, false) || s[2] != '-') return false;
  int version = hexval(s[0]) * 16 + hexval(s[1]);
  if (version == 0xff) return false;
  if (version == 0 && len != 55) return false;
  if (len > 55 && s[55] != '-') return false;
  if (!hex_field(s + 3, 32, true) || s[35] != '-') return false;
  if (!hex_field(s + 36, 16, true) || s[52] != '-') return false;
  if (!hex_field(s + 53, 2, false)) return false;
  if (out) {
    memcpy(out->trace_id, s + 3, 32);
    out->trace_id[32] = '\0';
    memcpy(out->parent_id, s + 36, 16);
    out->parent_id[16] = '\0';
    out->flags = (uint8_t)(hexval(s[53]) * 16 + hexval(s[54]));
  }
  return true;
}

void keel__traceparent_next(const keel__traceparent *in, char out[56], char span_out[17]) {
  unsigned char b[16] = {0};
  char trace[33];
  uint8_t flags;
  if (in) {
    memcpy(trace, in->trace_id, 33);
    flags = in->flags & 0x01; /* sampled; level 1 sends the other bits as zero */
  } else {
    random_nonzero(b, 16);
    hex_bytes(trace, b, 16);
    trace[32] = '\0';
    flags = 0x01;
  }
  random_nonzero(b, 8);
  hex_bytes(span_out, b, 8);
  span_out[16] = '\0';
  memcpy(out, "00-", 3);
  memcpy(out + 3, trace, 32);
  out[35] = '-';
  memcpy(out + 36, span_out, 16);
  out[52] = '-';
  out[53] = HEX[flags >> 4];
  out[54] = HEX[flags & 15];
  out[55] = '\0';
}
