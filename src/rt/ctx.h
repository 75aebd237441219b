/* ctx.h - execution contexts: a stack pointer plus what the sanitizers need.
 *
 * keel__ctx_switch(from, to) suspends the running context into `from` and
 * resumes `to`. The scheduler's own context (the thread's original stack) and
 * every process's context go through it, so this is the only place that has
 * to tell AddressSanitizer and ThreadSanitizer about stack switches (their
 * fiber interfaces), without which they report false errors and miss real
 * ones.
 */
#ifndef KEEL_RT_CTX_H
#define KEEL_RT_CTX_H

#include <stddef.h>
#include <stdint.h>
#if KEEL_CTX_PORTABLE
#include <fenv.h>
#include <setjmp.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#define KEEL_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KEEL_ASAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define KEEL_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define KEEL_TSAN 1
#endif
#endif

typedef struct keel__ctx {
  void *sp; /* saved stack pointer (asm switch) */
#if KEEL_CTX_PORTABLE
  jmp_buf jb;
  fenv_t fenv; /* the floating-point environment, saved by hand: _setjmp does not */
#endif
  const void *stack_lo; /* the stack's usable range, for ASan */
  size_t stack_size;
#if KEEL_ASAN
  void *fake_stack; /* ASan's fake stack of this context while suspended */
#endif
#if KEEL_TSAN
  void *tsan_fiber;
#endif
} keel__ctx;

/* Builds a context that, when first switched to, calls entry(arg) on the
 * given stack [lo, lo+size). entry must never return. */
void keel__ctx_make(keel__ctx *c, void *lo, size_t size, void (*entry)(void *), void *arg);

/* Prepares the context of the calling thread's own stack (a scheduler). */
void keel__ctx_init_thread(keel__ctx *c);

/* Releases sanitizer state of a context made by keel__ctx_make. */
void keel__ctx_destroy(keel__ctx *c);

#if KEEL_CTX_ASM
/* The assembly half (ctx_<arch>.S), for ctx.c only: keel__ctx_swap saves the
 * callee-saved registers on the current stack, stores its pointer in
 * *save_sp, loads load_sp and returns on that stack; keel__ctx_boot is the
 * return address of a fresh context's first frame. */
void keel__ctx_swap(void **save_sp, void *load_sp);
void keel__ctx_boot(void);
#endif

/* Switches from the running context (saved into *from) to *to. When
 * `from_dies` is set, `from` will never be resumed (ASan frees its fake
 * stack). Returns when somebody switches back to `from`. */
void keel__ctx_switch(keel__ctx *from, keel__ctx *to, int from_dies);

/* Must be the first call of a fresh context's entry function. */
void keel__ctx_entered(keel__ctx *self);

#endif
