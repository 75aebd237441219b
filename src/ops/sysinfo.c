/* sysinfo.c - CPU, memory, descriptors and the container's memory limit,
 * read from /proc and the cgroup filesystem.
 *
 * Memory comes from one read of /proc/self/status (VmSize, VmRSS, RssAnon),
 * so the figures are one snapshot, and from malloc's own books (mallinfo2),
 * which keel_sys_memory_get caps at the resident anonymous memory: see there.
 *
 * The cgroup of this process is found in /proc/self/cgroup: a "0::/path" line
 * means cgroup v2 (memory.max and memory.current under /sys/fs/cgroup/path),
 * a line naming the memory controller means v1 (memory.limit_in_bytes and
 * memory.usage_in_bytes under /sys/fs/cgroup/memory/path). Inside a
 * container the path is usually "/" and the files sit at the mount's root, so
 * the root is tried when the path's files are missing. A v1 limit near 2^63
 * (page-rounded LONG_MAX) means no limit, as does v2's "max".
 */
#include <dirent.h>
#include <malloc.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "keel/error.h"
#include "keel/sysinfo.h"

/* The first number in a file; false when it cannot be read or is not a
 * number ("max"). */
static bool read_u64(const char *path, uint64_t *out) {
  FILE *f = fopen(path, "r");
  if (!f) return false;
  char buf[64];
  bool ok = fgets(buf, sizeof buf, f) && buf[0] >= '0' && buf[0] <= '9';
  fclose(f);
  if (ok) *out = strtoull(buf, NULL, 10);
  return ok;
}

/* Reads <dir><path>/<name>, falling back to <dir>/<name>. 1 read, 0 "max" or
 * absent. */
static bool cgroup_file(const char *dir, const char *path, const char *name, uint64_t *out) {
  char f[600];
  snprintf(f, sizeof f, "%s%s/%s", dir, strcmp(path, "/") == 0 ? "" : path, name);
  if (read_u64(f, out)) return true;
  snprintf(f, sizeof f, "%s/%s", dir, name);
  return read_u64(f, out);
}

static void cgroup_memory(uint64_t *limit, uint64_t *usage) {
  *limit = *usage = 0;
  FILE *f = fopen("/proc/self/cgroup", "r");
  if (!f) return;
  char line[512], v2[512] = "", v1[512] = "";
  while (fgets(line, sizeof line, f)) {
    line[strcspn(line, "\n")] = 0;
    char *c1 = strchr(line, ':');
    char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
    if (!c2) continue;
    *c1 = *c2 = 0;
    const char *ctrls = c1 + 1, *path = c2 + 1;
    if (strcmp(line, "0") == 0 && !*ctrls) snprintf(v2, sizeof v2, "%s", path);
    else if (strstr(ctrls, "memory")) snprintf(v1, sizeof v1, "%s", path);
  }
  fclose(f);
  uint64_t v;
  if (v1[0]) {
    if (cgroup_file("/sys/fs/cgroup/memory", v1, "memory.limit_in_bytes", &v) &&
        v < (1ull << 62))
      *limit = v;
    if (cgroup_file("/sys/fs/cgroup/memory", v1, "memory.usage_in_bytes", &v)) *usage = v;
  } else if (v2[0]) {
    if (cgroup_file("/sys/fs/cgroup", v2, "memory.max", &v)) *limit = v;
    if (cgroup_file("/sys/fs/cgroup", v2, "memory.current", &v)) *usage = v;
  }
}

static uint64_t mem_total(void) {
  FILE *f = fopen("/proc/meminfo", "r");
  if (!f) return 0;
  char line[256];
  uint64_t kib = 0;
  while (fgets(line, sizeof line, f))
    if (strncmp(line, "MemTotal:", 9) == 0) {
      kib = strtoull(line + 9, NULL, 10);
      break;
    }
  fclose(f);
  return kib * 1024;
}

/* VmSize, VmRSS and RssAnon (kB lines) from one read of /proc/self/status,
 * so that the three are one snapshot. anon stays 0 on kernels before 4.5,
 * which do not print it. */
static void proc_status_memory(uint64_t *virt, uint64_t *rss, uint64_t *anon) {
  *virt = *rss = *anon = 0;
  FILE *f = fopen("/proc/self/status", "r");
  if (!f) return;
  char line[256];
  while (fgets(line, sizeof line, f)) {
    uint64_t *to = strncmp(line, "VmSize:", 7) == 0    ? virt
                   : strncmp(line, "VmRSS:", 6) == 0   ? rss
                   : strncmp(line, "RssAnon:", 8) == 0 ? anon
                                                       : NULL;
    if (to) *to = strtoull(strchr(line, ':') + 1, NULL, 10) * 1024;
  }
  fclose(f);
}

int keel_sys_memory_get(keel_sys_memory *out) {
  if (!out) return KEEL_EINVAL;
  memset(out, 0, sizeof *out);
  uint64_t anon;
  proc_status_memory(&out->virtual_bytes, &out->rss_bytes, &anon);
  /* malloc's books count a block whole from the moment it is handed out
   * (uordblks: in-use chunks of the arenas; hblkhd: blocks it mmapped on
   * their own, such as a log buffer), but the kernel gives memory to a page
   * only when it is first written, so an untouched 256 MiB block is 256 MiB
   * in the books and nothing in memory. Which of the books' pages are
   * resident cannot be asked of malloc, so the figure is capped at what
   * could be: anonymous resident memory (RssAnon; malloc's memory is all
   * anonymous), itself part of the resident set read in the same snapshot.
   * So heap_bytes <= rss_bytes always. */
  struct mallinfo2 mi = mallinfo2();
  uint64_t books = (uint64_t)mi.uordblks + (uint64_t)mi.hblkhd;
  uint64_t cap = anon && anon <= out->rss_bytes ? anon : out->rss_bytes;
  out->heap_bytes = books < cap ? books : cap;
  cgroup_memory(&out->limit_bytes, &out->cgroup_usage_bytes);
  out->system_bytes = mem_total();
  return 0;
}

uint64_t keel_sys_memory_limit(const keel_sys_memory *m) {
  if (m->limit_bytes && (!m->system_bytes || m->limit_bytes < m->system_bytes))
    return m->limit_bytes;
  return m->system_bytes;
}

/* Boot time from /proc/stat's "btime" line, or -1. */
static double boot_time(void) {
  FILE *f = fopen("/proc/stat", "r");
  if (!f) return -1;
  char line[256];
  double bt = -1;
  while (fgets(line, sizeof line, f))
    if (strncmp(line, "btime ", 6) == 0) {
      bt = strtod(line + 6, NULL);
      break;
    }
  fclose(f);
  return bt;
}

/* utime + stime (ticks) and starttime (ticks after boot) from /proc/self/stat;
 * returns 0 or -1. The fields after the command name (which may hold spaces
 * and parentheses, hence the last ')') start at field 3. */
static int read_stat(double *cpu_ticks, double *start_ticks) {
  FILE *f = fopen("/proc/self/stat", "r");
  if (!f) return -1;
  char buf[1024];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  char *p = strrchr(buf, ')');
  if (!p) return -1;
  p++;
  double ut = 0, st = 0, start = 0;
  for (int field = 3; field <= 22; field++) {
    char *end;
    while (*p == ' ')
      p++;
    if (!*p) return -1;
    double v = strtod(p, &end);
    if (field == 14) ut = v;
    if (field == 15) st = v;
    if (field == 22) start = v;
    p = end;
    while (*p && *p != ' ')
      p++;
  }
  *cpu_ticks = ut + st;
  *start_ticks = start;
  return 0;
}

static long count_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  if (!d) return -1;
  long n = 0;
  struct dirent *e;
  while ((e = readdir(d)))
    if (e->d_name[0] != '.') n++;
  closedir(d);
  return n - 1; /* the directory's own descriptor */
}

int keel_sys_process_get(keel_sys_process *out) {
  if (!out) return KEEL_EINVAL;
  long tck = sysconf(_SC_CLK_TCK);
  double cpu, start;
  out->cpu_seconds = 0;
  out->start_time = -1;
  if (read_stat(&cpu, &start) == 0 && tck > 0) {
    out->cpu_seconds = cpu / (double)tck;
    double bt = boot_time();
    if (bt >= 0) out->start_time = bt + start / (double)tck;
  }
  out->open_fds = count_fds();
  struct rlimit rl;
  out->max_fds = -1;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
    out->max_fds = (long)rl.rlim_cur;
  return 0;
}
