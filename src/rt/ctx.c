/* ctx.c - building and switching execution contexts.
 *
 * On x86-64 and AArch64 the switch is keel__ctx_swap from ctx_<arch>.S: it
 * saves only what the ABI makes callee-saved, plus the floating-point control
 * words, and never enters the kernel. Elsewhere (KEEL_CTX_PORTABLE) a context
 * is born once with makecontext/swapcontext and afterwards switched with
 * _setjmp/_longjmp, which do not touch the signal mask either, plus
 * fegetenv/fesetenv for the floating-point control words; that fallback is
 * tested in CI by building with -DKEEL_CONTEXT=portable.
 *
 * Sanitizers: before every switch we call __sanitizer_start_switch_fiber with
 * the target stack and after it __sanitizer_finish_switch_fiber (ASan), and
 * __tsan_switch_to_fiber (TSan).
 */
#include "rt/ctx.h"

#include <stdlib.h>
#include <string.h>
#if KEEL_CTX_PORTABLE
#include <ucontext.h>
#endif

#if KEEL_ASAN
void __asan_unpoison_memory_region(void const volatile *addr, size_t size);
void __sanitizer_start_switch_fiber(void **fake_stack_save, const void *bottom, size_t size);
void __sanitizer_finish_switch_fiber(void *fake_stack_save, const void **bottom_old,
                                     size_t *size_old);
#endif
#if KEEL_TSAN
void *__tsan_get_current_fiber(void);
void *__tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void *fiber);
void __tsan_switch_to_fiber(void *fiber, unsigned flags);
#endif

#if KEEL_ASAN
/* Bounds of this thread's own (scheduler) stack, learnt from the first
 * __sanitizer_finish_switch_fiber in a process; a scheduler context has no
 * stack_lo of its own. */
static _Thread_local const void *tl_sched_lo;
static _Thread_local size_t tl_sched_size;

/* Thread-locals are read and written only in these non-inlined functions, so
 * no TLS address computed before a switch survives it (a process may resume
 * on another thread). */
__attribute__((noinline)) static void sched_bounds_set(const void *lo, size_t size) {
  tl_sched_lo = lo;
  tl_sched_size = size;
}
__attribute__((noinline)) static void sched_bounds_get(const void **lo, size_t *size) {
  *lo = tl_sched_lo;
  *size = tl_sched_size;
}
#endif

#if KEEL_CTX_PORTABLE
/* Hand-over from keel__ctx_make to the new context's first run. Only used
 * during make, on one thread, before make returns. */
static _Thread_local struct {
  keel__ctx *ctx;
  void (*entry)(void *);
  void *arg;
  ucontext_t back;
} boot;

static void portable_boot(void) {
  keel__ctx *c = boot.ctx;
  void (*entry)(void *) = boot.entry;
  void *arg = boot.arg;
  if (_setjmp(c->jb) == 0) setcontext(&boot.back); /* back into make */
  /* the first real switch lands here: start with the default FP environment */
  fesetenv(FE_DFL_ENV);
  entry(arg);
  abort();
}
#endif

void keel__ctx_make(keel__ctx *c, void *lo, size_t size, void (*entry)(void *), void *arg) {
  memset(c, 0, sizeof *c);
  c->stack_lo = lo;
  c->stack_size = size;
#if KEEL_ASAN
  /* A pooled stack may still carry the poisoned redzones of frames whose
   * process died inside them (it never returned to clear them). */
  __asan_unpoison_memory_region(lo, size);
#endif
#if KEEL_CTX_ASM
  uintptr_t top = ((uintptr_t)lo + size) & ~(uintptr_t)15;
#if defined(__x86_64__)
  /* Frame popped by keel__ctx_swap: [mxcsr|fpucw][r15][r14][r13][r12][rbx][rbp][ret]
   * plus a zero slot above the return address for debuggers' backtraces. */
  uint64_t *sp = (uint64_t *)(top - 80);
  memset(sp, 0, 80);
  sp[0] = 0x1F80u | ((uint64_t)0x037Fu << 32); /* default MXCSR, x87 control word */
  sp[3] = (uint64_t)(uintptr_t)arg;            /* r13 */
  sp[4] = (uint64_t)(uintptr_t)entry;          /* r12 */
  sp[7] = (uint64_t)(uintptr_t)keel__ctx_boot; /* return address; sp[8] = 0 ends backtraces */
  c->sp = sp;
#elif defined(__aarch64__)
  uint64_t *sp = (uint64_t *)(top - 176 - 16);
  memset(sp, 0, 176 + 16);
  sp[0] = (uint64_t)(uintptr_t)entry;           /* x19 */
  sp[1] = (uint64_t)(uintptr_t)arg;             /* x20 */
  sp[11] = (uint64_t)(uintptr_t)keel__ctx_boot; /* x30 */
  sp[20] = 0;                                   /* fpcr: round to nearest, no traps */
  c->sp = sp;
#else
#error "KEEL_CTX_ASM on an unsupported architecture: build with -DKEEL_CONTEXT=portable"
#endif
#else
  ucontext_t uc;
  if (getcontext(&uc) != 0) abort();
  uc.uc_stack.ss_sp = lo;
  uc.uc_stack.ss_size = size;
  uc.uc_link = NULL;
  makecontext(&uc, portable_boot, 0);
  boot.ctx = c;
  boot.entry = entry;
  boot.arg = arg;
#if KEEL_ASAN
  void *fake = NULL;
  __sanitizer_start_switch_fiber(&fake, lo, size);
#endif
  if (swapcontext(&boot.back, &uc) != 0) abort();
#if KEEL_ASAN
  __sanitizer_finish_switch_fiber(fake, NULL, NULL);
#endif
#endif
#if KEEL_TSAN
  c->tsan_fiber = __tsan_create_fiber(0);
#endif
}

void keel__ctx_init_thread(keel__ctx *c) {
  memset(c, 0, sizeof *c);
#if KEEL_TSAN
  c->tsan_fiber = __tsan_get_current_fiber();
#endif
}

void keel__ctx_destroy(keel__ctx *c) {
#if KEEL_TSAN
  if (c->tsan_fiber) __tsan_destroy_fiber(c->tsan_fiber);
  c->tsan_fiber = NULL;
#else
  (void)c;
#endif
}

void keel__ctx_entered(keel__ctx *self) {
#if KEEL_ASAN
  const void *lo = NULL;
  size_t size = 0;
  __sanitizer_finish_switch_fiber(NULL, &lo, &size);
  sched_bounds_set(lo, size);
#endif
  (void)self;
}

void keel__ctx_switch(keel__ctx *from, keel__ctx *to, int from_dies) {
#if KEEL_ASAN
  const void *to_lo = to->stack_lo;
  size_t to_size = to->stack_size;
  if (!to_lo) sched_bounds_get(&to_lo, &to_size);
  __sanitizer_start_switch_fiber(from_dies ? NULL : &from->fake_stack, to_lo, to_size);
#endif
#if KEEL_TSAN
  __tsan_switch_to_fiber(to->tsan_fiber, 0);
#endif
#if KEEL_CTX_ASM
  keel__ctx_swap(&from->sp, to->sp);
#else
  fegetenv(&from->fenv);
  if (_setjmp(from->jb) == 0) _longjmp(to->jb, 1);
  fesetenv(&from->fenv);
#endif
#if KEEL_ASAN
  /* Back in `from`. A process learns its scheduler's stack bounds here (it
   * may have been resumed by a different scheduler thread). */
  const void *old_lo = NULL;
  size_t old_size = 0;
  __sanitizer_finish_switch_fiber(from->fake_stack, &old_lo, &old_size);
  if (from->stack_lo) sched_bounds_set(old_lo, old_size);
#endif
  (void)from_dies;
}
