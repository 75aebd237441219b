/* test_overflow.c - a stack overflow is reported, never a silent segfault.
 *
 * Each case forks a child that starts the runtime and spawns a named process
 * recursing without end on a small stack. The child must die by SIGABRT
 * (keel catches the fault on its alternate signal stack, reports, aborts),
 * and what it wrote to stderr (captured through a pipe) must say
 * "stack overflow" and name the process: its pid as keel_pid_format prints it
 * and its name. The parent never starts a runtime itself.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "rt/kt_rt.h"

static int g_pid_pipe = -1; /* child: where the first process writes the pid text */

static volatile int g_never_true; /* keeps the recursion from looking infinite */

static __attribute__((noinline)) uint64_t recurse_forever(uint64_t depth) {
  if (g_never_true) return depth;
  volatile char pad[512];
  pad[0] = (char)depth;
  pad[511] = (char)(depth >> 8);
  uint64_t r = recurse_forever(depth + 1); /* not a tail call: pad is used after */
  return r + (unsigned char)pad[0] + (unsigned char)pad[511];
}

static void overflow_proc(void *arg) {
  (void)arg;
  volatile uint64_t sink = recurse_forever(0);
  (void)sink;
}

typedef struct overflow_cfg {
  size_t stack_size; /* 0: the default */
  const char *name;
  int schedulers;
} overflow_cfg;

static overflow_cfg g_cfg;

static void overflow_root(void *arg) {
  (void)arg;
  keel_spawn_opts o;
  keel_spawn_opts_init(&o);
  o.stack_size = g_cfg.stack_size;
  o.name = g_cfg.name;
  keel_pid_t pid;
  CHECK_OK(keel_spawn(overflow_proc, NULL, &o, &pid));
  char buf[24];
  keel_pid_format(pid, buf, sizeof buf);
  size_t len = strlen(buf);
  CHECK_EQ(write(g_pid_pipe, buf, len), (ssize_t)len);
  close(g_pid_pipe);
  /* wait here; the node aborts when the overflow is caught */
  keel_msg_t *m = NULL;
  keel_receive(&m, 60000);
  keel_msg_free(m);
}

static void child_main(int err_fd, int pid_fd) {
  dup2(err_fd, STDERR_FILENO);
  close(err_fd);
  g_pid_pipe = pid_fd;
  keel_rt_opts o;
  keel_rt_opts_init(&o);
  o.schedulers = g_cfg.schedulers;
  keel_run(overflow_root, NULL, &o);
  _exit(3); /* only reached if the overflow was not caught */
}

/* Reads fd until EOF or the deadline into buf (NUL-terminated). */
static size_t read_all(int fd, char *buf, size_t cap, int64_t deadline) {
  size_t n = 0;
  for (;;) {
    int64_t left = deadline - kt_now_ms();
    if (left <= 0) break;
    struct pollfd p = {fd, POLLIN, 0};
    int rc = poll(&p, 1, (int)(left > 1000 ? 1000 : left));
    if (rc < 0 && errno == EINTR) continue;
    if (rc <= 0) continue;
    ssize_t r = read(fd, buf + n, cap - 1 - n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    n += (size_t)r;
    if (n == cap - 1) break;
  }
  buf[n] = '\0';
  return n;
}

static void run_overflow_case(const char *case_name, overflow_cfg cfg) {
  fprintf(stderr, "-- %s\n", case_name);
  g_cfg = cfg;
  int err_pipe[2], pid_pipe[2];
  CHECK_OK(pipe2(err_pipe, O_CLOEXEC));
  CHECK_OK(pipe2(pid_pipe, O_CLOEXEC));
  fflush(stdout);
  fflush(stderr);
  pid_t child = fork();
  CHECK(child >= 0);
  if (child == 0) {
    close(err_pipe[0]);
    close(pid_pipe[0]);
    child_main(err_pipe[1], pid_pipe[1]);
  }
  close(err_pipe[1]);
  close(pid_pipe[1]);

  int64_t deadline = kt_now_ms() + 60000;
  static char err[1 << 16];
  char pidtext[32];
  read_all(pid_pipe[0], pidtext, sizeof pidtext, deadline);
  read_all(err_pipe[0], err, sizeof err, deadline);
  close(pid_pipe[0]);
  close(err_pipe[0]);

  int status = 0;
  pid_t w;
  for (;;) {
    w = waitpid(child, &status, WNOHANG);
    if (w == child) break;
    CHECK(w == 0);
    if (kt_now_ms() > deadline) {
      kill(child, SIGKILL);
      waitpid(child, &status, 0);
      fprintf(stderr, "child did not die within 60 s; its stderr:\n%s\n", err);
      CHECK(!"the overflowing child hung");
    }
    usleep(10000);
  }
  fprintf(stderr, "   child stderr:\n%s", err);
  if (!(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT)) {
    if (WIFSIGNALED(status))
      fprintf(stderr, "child died by signal %d (%s), want SIGABRT\n", WTERMSIG(status),
              strsignal(WTERMSIG(status)));
    else
      fprintf(stderr, "child exited with status %d, want death by SIGABRT\n", WEXITSTATUS(status));
    CHECK(!"the child must die by SIGABRT");
  }
  CHECK(strlen(pidtext) > 0);
  CHECK(strstr(err, "stack overflow") != NULL);
  if (strstr(err, pidtext) == NULL) {
    fprintf(stderr, "pid %s not in the report\n", pidtext);
    CHECK(!"the report names the pid");
  }
  CHECK(strstr(err, cfg.name) != NULL);
  printf("ok - %s\n", case_name);
}

int main(int argc, char **argv) {
  static const struct {
    const char *name;
    overflow_cfg cfg;
  } cases[] = {
      {"stack_overflow_on_a_small_stack_is_reported_with_pid_and_name",
       {16 * 1024, "deep-recurser", 2}},
      {"stack_overflow_on_the_default_stack_is_reported_with_pid_and_name",
       {0, "default-stack", 1}},
  };
  size_t n = sizeof cases / sizeof cases[0], passed = 0;
  for (size_t i = 0; i < n; i++) {
    if (argc > 1 && strcmp(argv[1], cases[i].name) != 0) continue;
    run_overflow_case(cases[i].name, cases[i].cfg);
    passed++;
  }
  printf("%zu passed, 0 failed\n", passed);
  return 0;
}
