/* keel-port-exec - the exec helper between a keel node and a port's program.
 *
 * posix_spawn (src/otp/port.c) offers no hook between fork and exec, and what a port
 * needs there cannot be done from the parent: the program must die with the
 * node, even when the node is killed with SIGKILL. So keel spawns this helper
 * instead of the program, and the helper, already in the program's own
 * process group (posix_spawn made it a session leader), does three things and
 * execs the program in its place (same pid, same process group):
 *
 *   1. prctl(PR_SET_PDEATHSIG, SIGKILL): the kernel kills us when the thread
 *      that spawned us ends (the node's spawner thread, which never ends);
 *      the setting survives execve;
 *   2. getppid() == --ppid: if the node died between fork and prctl we were
 *      reparented already and the death signal will never come, so we quit;
 *   3. setrlimit for every --rlimit RESOURCE:SOFT:HARD (numbers; "inf" for
 *      RLIM_INFINITY), then execvp(argv after "--").
 *
 * Before all that it closes every descriptor above 2: a fork of the node
 * inherits all of the node's descriptors, and those opened without
 * O_CLOEXEC (by the application, a library) would otherwise live on in the
 * program (a listening socket, a database file, its locks).
 *
 * Usage (keel builds it; not meant for people):
 *   keel-port-exec --ppid PID [--rlimit R:S:H]... -- PROGRAM [ARG]...
 * Exit codes: 127 when the program cannot be executed (as a shell says),
 * 126 on a bad invocation or a limit that cannot be set, 125 when the node
 * is already gone. Only async-signal-safe work happens before execvp; the
 * helper is single-threaded, so ordinary libc is safe too.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

static int parse_limit(const char *s, rlim_t *out) {
  if (strcmp(s, "inf") == 0) {
    *out = RLIM_INFINITY;
    return 0;
  }
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || end == s || (*end && *end != ':')) return -1;
  *out = (rlim_t)v;
  return 0;
}

static int apply_rlimit(const char *spec) {
  char buf[128];
  if (strlen(spec) >= sizeof buf) return -1;
  strcpy(buf, spec);
  char *res = strtok(buf, ":"), *soft = strtok(NULL, ":"), *hard = strtok(NULL, ":");
  if (!res || !soft || !hard) return -1;
  char *end;
  long r = strtol(res, &end, 10);
  if (*end || r < 0) return -1;
  struct rlimit rl;
  if (parse_limit(soft, &rl.rlim_cur) || parse_limit(hard, &rl.rlim_max)) return -1;
  return setrlimit((int)r, &rl);
}

/* Closes every descriptor from 3 up: close_range (Linux 5.9; the system
 * call, as glibc's wrapper is 2.34), else one by one up to the descriptor
 * limit. */
static void close_inherited(void) {
#ifdef SYS_close_range
  if (syscall(SYS_close_range, 3U, ~0U, 0U) == 0) return;
#endif
  struct rlimit rl;
  long max = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY ? (long)rl.rlim_cur
                                                                                : 65536;
  for (long fd = 3; fd < max; fd++)
    close((int)fd);
}

int main(int argc, char **argv) {
  long ppid = -1;
  int i = 1;
  /* the death signal first: everything after it is covered */
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) {
    perror("keel-port-exec: prctl(PR_SET_PDEATHSIG)");
    return 126;
  }
  close_inherited();
  for (; i < argc; i++) {
    if (strcmp(argv[i], "--") == 0) {
      i++;
      break;
    }
    if (strcmp(argv[i], "--ppid") == 0 && i + 1 < argc) {
      ppid = strtol(argv[++i], NULL, 10);
    } else if (strcmp(argv[i], "--rlimit") == 0 && i + 1 < argc) {
      if (apply_rlimit(argv[++i]) != 0) {
        fprintf(stderr, "keel-port-exec: cannot set limit %s: %s\n", argv[i], strerror(errno));
        return 126;
      }
    } else {
      fprintf(stderr, "keel-port-exec: bad argument %s\n", argv[i]);
      return 126;
    }
  }
  if (i >= argc || ppid <= 0) {
    fprintf(stderr, "usage: keel-port-exec --ppid PID [--rlimit R:S:H]... -- PROGRAM [ARG]...\n");
    return 126;
  }
  if ((long)getppid() != ppid) return 125; /* the node died before prctl took effect */
  /* the node ignores SIGPIPE (its sockets); the program gets the default back */
  signal(SIGPIPE, SIG_DFL);
  execvp(argv[i], &argv[i]);
  fprintf(stderr, "keel-port-exec: cannot execute %s: %s\n", argv[i], strerror(errno));
  return 127;
}
