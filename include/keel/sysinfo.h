/* keel/sysinfo.h - what the operating system says about this node.
 *
 * The observer, the health checks and the built-in metrics all need the same
 * few numbers about the OS process: CPU time, resident memory, the heap, open
 * descriptors, and the memory limit of the container it runs in. They are
 * read from /proc and the cgroup filesystem (served from kernel memory, so a
 * read does not block like disk I/O) each time they are asked for.
 */
#ifndef KEEL_SYSINFO_H
#define KEEL_SYSINFO_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct keel_sys_memory {
  uint64_t rss_bytes;     /* resident set size (VmRSS) */
  uint64_t virtual_bytes; /* virtual memory size (VmSize) */
  /* Bytes malloc has handed out and not taken back (mallinfo2: in-use arena
   * chunks plus blocks it mmapped on their own), capped at the anonymous
   * resident memory (RssAnon) of the same reading: malloc counts a block
   * whole as soon as it is returned, the kernel gives it memory only as its
   * pages are written, so the books alone can exceed the resident set. An
   * upper bound of malloc's resident memory; never more than rss_bytes. */
  uint64_t heap_bytes;
  uint64_t limit_bytes;   /* the cgroup's memory limit (v2 memory.max, v1
                             memory.limit_in_bytes); 0 when there is none */
  uint64_t cgroup_usage_bytes; /* the cgroup's current usage; 0 when unknown */
  uint64_t system_bytes;  /* the machine's memory (MemTotal) */
} keel_sys_memory;

/* Fills *out. Fields that cannot be read are 0. Returns 0, or KEEL_EINVAL
 * when out is NULL. Any thread. */
int keel_sys_memory_get(keel_sys_memory *out);

/* The memory a threshold should be measured against: the cgroup limit when
 * there is one, else the machine's memory. */
uint64_t keel_sys_memory_limit(const keel_sys_memory *m);

typedef struct keel_sys_process {
  double cpu_seconds;  /* user + system CPU time */
  double start_time;   /* seconds since the epoch when the OS process started; -1 unknown */
  long open_fds;       /* -1 unknown */
  long max_fds;        /* the soft RLIMIT_NOFILE; -1 unlimited or unknown */
} keel_sys_process;

/* Fills *out. Returns 0, or KEEL_EINVAL. Any thread. */
int keel_sys_process_get(keel_sys_process *out);

#ifdef __cplusplus
}
#endif
#endif
