/* trace_clock.c - span times: CLOCK_REALTIME nanoseconds (what OTLP wants),
 * read cheaply.
 *
 * A recorded span reads the time twice, and clock_gettime(CLOCK_REALTIME)
 * costs about 29 ns on the project's VM (kvm-clock through the vDSO), where
 * the rdtsc under it costs 12 ns: the two reads were 40% of a sampled
 * span's time (perf). So on x86-64 with an invariant TSC (CPUID
 * 0x80000007 EDX bit 8: constant rate, not stopped in deep C-states) a
 * thread converts rdtsc with an anchor of its own: a clock_gettime and an
 * rdtsc read together, renewed every 10 ms of TSC time (and on the first
 * read). The rate (ns per tick) is measured, not asked for: the first
 * anchor any thread takes is kept, and each later anchor at least 20 ms
 * after it updates the rate from the two (an error of 30 ns over 20 ms is
 * 1.5 ppm, and it shrinks as the process runs). Until a rate exists, and
 * without an invariant TSC, every read is a clock_gettime, as before.
 *
 * What a time can be off by: the anchor's age (at most 10 ms) times the
 * rate's error and NTP's slew (a few ppm: tens of ns; 500 ppm, NTP's most,
 * is 5 us). Each thread anchors against the wall clock itself, so TSC
 * offsets between cores cancel out, and a span that starts on one scheduler
 * and ends on another (its process moved) is as right as one that does
 * not. A wall-clock step shows at the next anchor, within 10 ms, as it
 * would in any span that spans it. The span's end is never before its start
 * (keel_span_end_at clamps).
 *
 * The thread's anchor is read and renewed only inside keel__trace_now_ns,
 * which never yields.
 */
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "ops/trace_internal.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <x86intrin.h>
#define HAVE_TSC 1
#endif

static uint64_t realtime_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

#ifdef HAVE_TSC

#define ANCHOR_NS    10000000u /* a thread's anchor lives 10 ms */
#define CALIBRATE_NS 20000000u /* the rate is measured over 20 ms at least */

typedef struct anchor {
  uint64_t tsc, ns;
  uint64_t ticks; /* the anchor's life in ticks; 0: no anchor (or no rate yet) */
  double rate;    /* ns per tick when it was taken */
} anchor;

static _Thread_local anchor tl_anchor;

/* 0: not known yet, 1: invariant TSC, 2: none (clock_gettime always). */
static atomic_int g_tsc_state;
/* The first anchor of the process. Published by g_first_state (0: none, 1:
 * being written, 2: ready; release/acquire), written once. */
static atomic_int g_first_state;
static uint64_t g_first_tsc, g_first_ns;
/* ns per tick as a double's bits; 0: not measured yet. Relaxed: any recent
 * value is as good as another. */
static _Atomic uint64_t g_rate_bits;

static bool tsc_invariant(void) {
  int st = atomic_load_explicit(&g_tsc_state, memory_order_relaxed);
  if (st == 0) {
    unsigned a, b, c, d;
    bool inv = __get_cpuid(0x80000000, &a, &b, &c, &d) && a >= 0x80000007 &&
               __get_cpuid(0x80000007, &a, &b, &c, &d) && (d & (1u << 8));
    st = inv ? 1 : 2;
    atomic_store_explicit(&g_tsc_state, st, memory_order_relaxed);
  }
  return st == 1;
}

static double rate_get(void) {
  uint64_t bits = atomic_load_explicit(&g_rate_bits, memory_order_relaxed);
  double r;
  memcpy(&r, &bits, sizeof r);
  return r;
}

/* A new anchor for this thread; returns the wall time it read. */
static uint64_t reanchor(anchor *an) {
  uint64_t ns = realtime_ns();
  uint64_t tsc = __rdtsc();
  int fs = atomic_load_explicit(&g_first_state, memory_order_acquire);
  if (fs == 0) {
    int zero = 0;
    if (atomic_compare_exchange_strong_explicit(&g_first_state, &zero, 1, memory_order_relaxed,
                                                memory_order_relaxed)) {
      g_first_tsc = tsc, g_first_ns = ns;
      atomic_store_explicit(&g_first_state, 2, memory_order_release);
    }
  } else if (fs == 2 && ns >= g_first_ns + CALIBRATE_NS && tsc > g_first_tsc) {
    double r = (double)(ns - g_first_ns) / (double)(tsc - g_first_tsc);
    uint64_t bits;
    memcpy(&bits, &r, sizeof bits);
    atomic_store_explicit(&g_rate_bits, bits, memory_order_relaxed);
  }
  double rate = rate_get();
  an->tsc = tsc, an->ns = ns, an->rate = rate;
  an->ticks = rate > 0 ? (uint64_t)((double)ANCHOR_NS / rate) : 0;
  return ns;
}

uint64_t keel__trace_now_ns(void) {
  if (!tsc_invariant()) return realtime_ns();
  anchor *an = &tl_anchor;
  uint64_t t = __rdtsc();
  if (an->ticks == 0 || t < an->tsc || t - an->tsc > an->ticks) return reanchor(an);
  return an->ns + (uint64_t)((double)(t - an->tsc) * an->rate);
}

#else

uint64_t keel__trace_now_ns(void) {
  return realtime_ns();
}

#endif
