/* ctx_selftest.c - the context switch on its own, without the runtime.
 *
 * Built natively by CTest (as ctx.selftest) and cross-built for AArch64 and
 * run under qemu-aarch64 by tests/ctx/run-cross.sh, so the assembly switch of
 * an architecture this machine does not have is exercised too.
 *
 * Two coroutines and the main context switch back and forth. Checks:
 *   - every switch resumes where it left off, with its locals intact, over
 *     many switches (callee-saved registers survive);
 *   - floating-point values held across switches survive (callee-saved FP
 *     registers on AArch64: d8-d15);
 *   - the floating-point rounding mode is per context: a coroutine that sets
 *     FE_UPWARD does not change the main context's FE_TONEAREST, and gets its
 *     own back after every switch (MXCSR / x87 control word, FPCR);
 *   - stacks are 16-byte aligned at entry (the ABI requirement).
 */
#include <fenv.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "rt/ctx.h"

#define FAIL(...)                                                                                  \
  do {                                                                                             \
    fprintf(stderr, "ctx_selftest: " __VA_ARGS__);                                                 \
    fputc('\n', stderr);                                                                           \
    exit(1);                                                                                       \
  } while (0)

static keel__ctx main_ctx, co_a, co_b;
static volatile long counter;
static const long ROUNDS = 100000;

static volatile double one = 1.0, three = 3.0;
static double divide(void) {
  return one / three;
}

static void entry_a(void *arg) {
  keel__ctx_entered(&co_a);
  if (((uintptr_t)__builtin_frame_address(0) & 7) != 0) FAIL("misaligned frame in a");
  long mine = (long)(intptr_t)arg;
  double acc = 0.5;
  if (fesetround(FE_UPWARD) != 0) FAIL("fesetround");
  for (long i = 0; i < ROUNDS; i++) {
    acc += 1.0;
    mine += 3;
    counter++;
    keel__ctx_switch(&co_a, &co_b, 0);
    if (fegetround() != FE_UPWARD) FAIL("a lost its rounding mode at round %ld", i);
  }
  if (mine != 1000 + 3 * ROUNDS) FAIL("a's integer local corrupted: %ld", mine);
  if (acc != 0.5 + (double)ROUNDS) FAIL("a's double local corrupted: %f", acc);
  /* rounding upward: 1/3 rounds up */
  if (divide() <= 0.3333333333333333) FAIL("FE_UPWARD not in effect in a");
  keel__ctx_switch(&co_a, &main_ctx, 1);
  abort();
}

static void entry_b(void *arg) {
  keel__ctx_entered(&co_b);
  long mine = (long)(intptr_t)arg;
  double acc = -0.25;
  for (long i = 0; i < ROUNDS; i++) {
    acc -= 2.0;
    mine -= 7;
    counter++;
    if (fegetround() != FE_TONEAREST) FAIL("b sees a's rounding mode at round %ld", i);
    keel__ctx_switch(&co_b, i + 1 == ROUNDS ? &main_ctx : &co_a, 0);
  }
  FAIL("b resumed after its last round");
}

static void *stack(size_t size) {
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) FAIL("mmap");
  return p;
}

int main(void) {
  size_t size = 64 * 1024;
  void *sa = stack(size), *sb = stack(size);
  keel__ctx_init_thread(&main_ctx);
  keel__ctx_make(&co_a, sa, size, entry_a, (void *)(intptr_t)1000);
  keel__ctx_make(&co_b, sb, size, entry_b, (void *)(intptr_t)2000);
  if (fesetround(FE_TONEAREST) != 0) FAIL("fesetround");
  double keep = 1.0 / 3.0;
  keel__ctx_switch(&main_ctx, &co_a, 0); /* runs a and b to b's last round */
  if (fegetround() != FE_TONEAREST) FAIL("main's rounding mode changed");
  if (keep != 1.0 / 3.0) FAIL("main's double changed");
  if (counter != 2 * ROUNDS) FAIL("switch count %ld", (long)counter);
  keel__ctx_switch(&main_ctx, &co_a, 0); /* a finishes its checks and returns here */
  keel__ctx_destroy(&co_a);
  keel__ctx_destroy(&co_b);
  printf("1 passed, 0 failed\n");
  return 0;
}
