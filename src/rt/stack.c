/* stack.c - process stacks: a pool with guard pages, and the stack overflow
 * report.
 *
 * Stacks are anonymous mappings reserved with MAP_NORESERVE: only the pages a
 * process touches become resident, so an idle process costs about one page
 * of stack. Stacks of the default size are carved 32 at a time from one
 * mapping and recycled through a per-scheduler cache (no lock) and a global
 * pool (mutex); when a stack goes back to the global pool and the page below
 * its top 8 KiB is resident (mincore), its lower pages are returned to the
 * kernel with MADV_DONTNEED, so a process that once used a deep stack does not
 * pin that memory forever, while shallow stacks skip the TLB-flushing call.
 * A probe of one page misses a process that skipped over it with a frame of
 * more than a page; such stacks keep their pages until the node stops.
 *
 * Below every stack sits a 16 KiB guard. On Linux 6.13+ it is installed with
 * MADV_GUARD_INSTALL, which needs no VMA of its own, so 100,000 stacks do not
 * run into vm.max_map_count (65,530 by default); on older kernels it falls
 * back to mprotect(PROT_NONE), which costs two mappings per stack and
 * therefore caps the node at about 30,000 processes unless the limit is
 * raised (see docs/runtime.md).
 *
 * A process that runs into its guard gets SIGSEGV. The handler runs on the
 * scheduler thread's alternate signal stack, sees that the fault address lies
 * in the guard of the process running on that thread, writes one line naming
 * the process (pid and name) with write(2), and aborts. Any other fault is
 * passed on to the handler that was installed before ours (the default one, or
 * a sanitizer's).
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "rt/internal.h"

#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif

#define GUARD_SIZE    (16u * 1024u)
#define SLAB_STACKS   32
#define CACHE_MAX     64
#define KEEP_RESIDENT (8u * 1024u)
#define ALTSTACK_SIZE (64u * 1024u)

#ifndef PIDFD_SELF
#define PIDFD_SELF -10000
#endif

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

static atomic_int guard_mode;  /* 0 unknown, 1 madvise guard, 2 mprotect */
static atomic_int batch_guard; /* 0 unknown, 1 process_madvise works, 2 it does not */
static atomic_int batch_fault; /* 0 unknown, 1 populating in one call works, 2 it does not */

/* Installs the guards of a whole slab in one system call where the kernel
 * allows process_madvise on ourselves (6.13+): each guard install flushes the
 * TLB of every core running this process, so one flush for 32 stacks instead
 * of 32 matters (measured: 1,150 -> 750 ns per stack). Returns 0 when done. */
static int install_guards_batch(struct iovec *iov, int n) {
  if (atomic_load_explicit(&batch_guard, memory_order_relaxed) == 2 ||
      atomic_load_explicit(&guard_mode, memory_order_relaxed) == 2)
    return -1;
  long r = syscall(SYS_process_madvise, PIDFD_SELF, iov, (size_t)n, MADV_GUARD_INSTALL, 0);
  if (r == (long)(iov[0].iov_len * (size_t)n)) {
    atomic_store_explicit(&batch_guard, 1, memory_order_relaxed);
    atomic_store_explicit(&guard_mode, 1, memory_order_relaxed);
    return 0;
  }
  atomic_store_explicit(&batch_guard, 2, memory_order_relaxed);
  return -1;
}

static int install_guard(void *addr, size_t len) {
  int mode = atomic_load_explicit(&guard_mode, memory_order_relaxed);
  if (mode != 2) {
    if (madvise(addr, len, MADV_GUARD_INSTALL) == 0) {
      atomic_store_explicit(&guard_mode, 1, memory_order_relaxed);
      return 0;
    }
    if (errno != EINVAL) return -1;
    atomic_store_explicit(&guard_mode, 2, memory_order_relaxed);
  }
  return mprotect(addr, len, PROT_NONE);
}

/* Faults in the top page of each stack of a new slab (where its first frame
 * goes) with one process_madvise(MADV_POPULATE_WRITE) call. A first touch
 * taken as a page fault costs about 2.3 us on this machine; populating 32
 * pages in one system call costs a fraction of that per page (the trap and
 * its return are paid once), and a supervisor starting children one after
 * the other pays a fault on its critical path for each (docs/performance.md,
 * supervisor_start).
 * Only the top page: most processes never go below it, and a deeper
 * prefault would double an idle process's memory. Where the kernel refuses
 * (before 6.13 process_madvise on ourselves takes only a few advices), the
 * pages fault in lazily as before. */
static void prefault_tops(struct iovec *iov, int n) {
  if (atomic_load_explicit(&batch_fault, memory_order_relaxed) == 2) return;
  long r = syscall(SYS_process_madvise, PIDFD_SELF, iov, (size_t)n, MADV_POPULATE_WRITE, 0);
  if (r == (long)(iov[0].iov_len * (size_t)n)) {
    atomic_store_explicit(&batch_fault, 1, memory_order_relaxed);
    return;
  }
  /* ENOMEM means memory is short right now, not that the call is unknown:
   * keep trying on later slabs. */
  if (r < 0 && errno != ENOMEM) atomic_store_explicit(&batch_fault, 2, memory_order_relaxed);
}

int keel__stacks_init(void) {
  keel__g.page = (size_t)sysconf(_SC_PAGESIZE);
  pthread_mutex_init(&keel__g.stack_lock, NULL);
  keel__g.stack_pool = NULL;
  keel__g.stack_pool_n = 0;
  return 0;
}

static size_t round_page(size_t n) {
  size_t pg = keel__g.page;
  return (n + pg - 1) / pg * pg;
}

/* Maps `count` stacks of `size` bytes (each behind its guard) and returns them
 * as a list. */
static keel__stack *map_stacks(size_t size, int count) {
  size_t each = GUARD_SIZE + size;
  size_t total = each * (size_t)count;
  char *base =
      mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) return NULL;
  struct iovec iov[SLAB_STACKS];
  bool batched = false;
  if (count <= SLAB_STACKS) {
    for (int i = 0; i < count; i++) {
      iov[i].iov_base = base + each * (size_t)i;
      iov[i].iov_len = GUARD_SIZE;
    }
    batched = install_guards_batch(iov, count) == 0;
    if (batched) { /* the guards are in: the same vector, now naming each top page */
      size_t pg = keel__g.page;
      for (int i = 0; i < count; i++) {
        iov[i].iov_base = base + each * (size_t)i + GUARD_SIZE + size - pg;
        iov[i].iov_len = pg;
      }
      prefault_tops(iov, count);
    }
  }
  keel__stack *list = NULL;
  for (int i = count - 1; i >= 0; i--) {
    char *map = base + each * (size_t)i;
    keel__stack *st = malloc(sizeof *st);
    if (!st || (!batched && install_guard(map, GUARD_SIZE) != 0)) {
      free(st);
      munmap(map, each * (size_t)(i + 1)); /* this and the ones below, unused */
      return list;
    }
    st->map = map;
    st->map_size = each;
    st->lo = map + GUARD_SIZE;
    st->size = size;
    st->guard = GUARD_SIZE;
    st->next = list;
    list = st;
  }
  return list;
}

keel__stack *keel__stack_get(keel__sched *s, size_t size) {
  size = round_page(size < 16384 ? 16384 : size);
  if (size != keel__g.opt.stack_size) return map_stacks(size, 1);
  if (s && s->stack_cache) {
    keel__stack *st = s->stack_cache;
    s->stack_cache = st->next;
    s->stack_cache_n--;
    return st;
  }
  pthread_mutex_lock(&keel__g.stack_lock);
  keel__stack *st = keel__g.stack_pool;
  if (st) {
    keel__g.stack_pool = st->next;
    keel__g.stack_pool_n--;
  }
  pthread_mutex_unlock(&keel__g.stack_lock);
  if (st) return st;
  keel__stack *list = map_stacks(size, SLAB_STACKS);
  if (!list) return NULL;
  st = list;
  list = list->next;
  /* keep the rest near: in our cache if we have one, else the pool */
  while (list) {
    keel__stack *next = list->next;
    if (s && s->stack_cache_n < CACHE_MAX) {
      list->next = s->stack_cache;
      s->stack_cache = list;
      s->stack_cache_n++;
    } else {
      pthread_mutex_lock(&keel__g.stack_lock);
      list->next = keel__g.stack_pool;
      keel__g.stack_pool = list;
      keel__g.stack_pool_n++;
      pthread_mutex_unlock(&keel__g.stack_lock);
    }
    list = next;
  }
  return st;
}

static void pool_put(keel__stack *st) {
  /* Give back what a deep process left resident, keep the top warm. Most
   * processes never go below their top page or two, and MADV_DONTNEED flushes
   * the TLB of every core, so first ask (mincore, no flush) whether the page
   * just below the warm part is resident at all. */
  if (st->size > KEEP_RESIDENT) {
    size_t pg = keel__g.page;
    char *probe = (char *)st->lo + st->size - KEEP_RESIDENT - pg;
    unsigned char vec = 1;
    if (mincore(probe, pg, &vec) != 0 || (vec & 1))
      madvise(st->lo, st->size - KEEP_RESIDENT, MADV_DONTNEED);
  }
  pthread_mutex_lock(&keel__g.stack_lock);
  st->next = keel__g.stack_pool;
  keel__g.stack_pool = st;
  keel__g.stack_pool_n++;
  pthread_mutex_unlock(&keel__g.stack_lock);
}

void keel__stack_put(keel__sched *s, keel__stack *st) {
  if (!st) return;
  if (st->size != keel__g.opt.stack_size) {
    munmap(st->map, st->map_size);
    free(st);
    return;
  }
  if (s && s->stack_cache_n < CACHE_MAX) {
    st->next = s->stack_cache;
    s->stack_cache = st;
    s->stack_cache_n++;
    return;
  }
  pool_put(st);
}

void keel__stack_cache_flush(keel__sched *s) {
  while (s->stack_cache) {
    keel__stack *st = s->stack_cache;
    s->stack_cache = st->next;
    pool_put(st);
  }
  s->stack_cache_n = 0;
}

void keel__stacks_fini(void) {
  pthread_mutex_lock(&keel__g.stack_lock);
  keel__stack *st = keel__g.stack_pool;
  keel__g.stack_pool = NULL;
  keel__g.stack_pool_n = 0;
  pthread_mutex_unlock(&keel__g.stack_lock);
  while (st) {
    keel__stack *next = st->next;
    munmap(st->map, st->map_size);
    free(st);
    st = next;
  }
  pthread_mutex_destroy(&keel__g.stack_lock);
}

/* ---- overflow ---------------------------------------------------------------------- */

static struct sigaction old_segv;
static atomic_int handler_installed;

static void write_str(const char *s) {
  size_t n = strlen(s);
  while (n) {
    ssize_t w = write(2, s, n);
    if (w <= 0) return;
    s += w;
    n -= (size_t)w;
  }
}

static void on_segv(int sig, siginfo_t *si, void *uc) {
  keel__sched *s = keel__sched_self();
  keel__proc *p = s ? s->current : NULL;
  if (p && p->stack) {
    char *addr = si->si_addr;
    char *glo = (char *)p->stack->map;
    char *ghi = (char *)p->stack->lo;
    if (addr >= glo && addr < ghi) {
      char line[256], pidbuf[32];
      keel_pid_format(p->pid, pidbuf, sizeof pidbuf);
      snprintf(line, sizeof line,
               "keel: stack overflow in process %s (%s) on scheduler %d: its %zu-byte stack "
               "is exhausted; aborting\n",
               pidbuf, p->name[0] ? p->name : "unnamed", s->id, p->stack->size);
      write_str(line);
      abort();
    }
  }
  /* Not ours: hand the fault to whoever handled SIGSEGV before us. */
  if ((old_segv.sa_flags & SA_SIGINFO) && old_segv.sa_sigaction) {
    old_segv.sa_sigaction(sig, si, uc);
    return;
  }
  if (old_segv.sa_handler != SIG_DFL && old_segv.sa_handler != SIG_IGN) {
    old_segv.sa_handler(sig);
    return;
  }
  signal(SIGSEGV, SIG_DFL); /* the faulting instruction runs again and kills us */
}

void keel__overflow_handler_install(void) {
  int zero = 0;
  if (!atomic_compare_exchange_strong(&handler_installed, &zero, 1)) return;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_segv;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGSEGV, &sa, &old_segv);
}

void keel__overflow_handler_remove(void) {
  int one = 1;
  if (!atomic_compare_exchange_strong(&handler_installed, &one, 0)) return;
  sigaction(SIGSEGV, &old_segv, NULL);
}

int keel__altstack_install(keel__sched *s) {
  stack_t ss;
  s->altstack = malloc(ALTSTACK_SIZE);
  if (!s->altstack) return KEEL_ENOMEM;
  ss.ss_sp = s->altstack;
  ss.ss_size = ALTSTACK_SIZE;
  ss.ss_flags = 0;
  if (sigaltstack(&ss, NULL) != 0) {
    free(s->altstack);
    s->altstack = NULL;
    return KEEL_EIO;
  }
  return 0;
}

void keel__altstack_remove(keel__sched *s) {
  if (!s->altstack) return;
  stack_t ss;
  memset(&ss, 0, sizeof ss);
  ss.ss_flags = SS_DISABLE;
  sigaltstack(&ss, NULL);
  free(s->altstack);
  s->altstack = NULL;
}
