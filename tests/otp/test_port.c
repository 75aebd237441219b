/* test_port.c - OS processes as children (keel/port.h).
 *
 * Real programs (sh, cat, sleep, yes) run through the exec helper built next
 * to libkeel. Two cases run a whole node in a child OS process of the test
 * (this executable again, told so by KT_PORT_NODE in its environment): one
 * SIGKILLs that node and checks that its program died with it, the other
 * stops that node with ports running and checks that it exits clean (an
 * AddressSanitizer leak would make it exit non-zero) and leaves nothing.
 * Waits are bounded liveness limits, never verdicts on speed.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "otp/kt_otp.h"

extern char **environ;

/* ---- helpers ---------------------------------------------------------------- */

static keel_port_t *open_argv(const char *const *argv, keel_port_opts *o) {
  keel_port_opts def = {0};
  if (!o) o = &def;
  o->argv = argv;
  keel_port_t *p = NULL;
  CHECK_OK(keel_port_open(o, &p));
  CHECK(p != NULL);
  return p;
}

/* The next event of port p, copied out: data into buf. */
typedef struct got {
  int tag;
  unsigned flags;
  char data[256];
  size_t len;
  keel_port_status st;
} got;

static got next_event(keel_port_t *p) {
  keel_msg_t *m = NULL;
  CHECK_OK(keel_port_receive(p, &m, KT_LONG));
  keel_port_event ev;
  CHECK_OK(keel_port_event_of(m, &ev));
  CHECK_EQ(ev.port_id, keel_port_id(p));
  got g = {.tag = ev.tag, .flags = ev.flags, .len = ev.len, .st = ev.status};
  CHECK(ev.len < sizeof g.data);
  memcpy(g.data, ev.data, ev.len);
  g.data[ev.len] = '\0';
  keel_msg_free(m);
  return g;
}

static void expect_line(keel_port_t *p, int tag, const char *text, unsigned flags) {
  got g = next_event(p);
  CHECK_EQ(g.tag, tag);
  CHECK_STR(g.data, text);
  CHECK_EQ(g.flags, flags);
}

static got expect_exit(keel_port_t *p) {
  got g = next_event(p);
  CHECK_EQ(g.tag, KEEL_PORT_EXIT);
  return g;
}

/* An OS process is gone: no such pid, or a zombie nobody reaped yet (in a
 * container, pid 1 may never reap the orphans it adopts). */
static bool os_gone(pid_t pid) {
  if (kill(pid, 0) != 0) return errno == ESRCH;
  char path[64], buf[256];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "r");
  if (!f) return true;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  char *rp = strrchr(buf, ')');
  return rp && rp[1] == ' ' && rp[2] == 'Z';
}

/* Gone and reaped: for programs whose parent is this node, a zombie would
 * mean keel forgot to wait for it. */
static bool os_reaped(pid_t pid) {
  return kill(pid, 0) != 0 && errno == ESRCH;
}

/* ---- stdin, stdout, lines, chunks ------------------------------------------ */

KT_CASE(echo_through_stdin_and_stdout) {
  static const char *const argv[] = {"cat", NULL};
  keel_port_t *p = open_argv(argv, NULL);
  CHECK(keel_port_os_pid(p) > 0);
  CHECK_OK(keel_port_write(p, "hello\nwor", 9, KT_LONG));
  CHECK_OK(keel_port_write(p, "ld\n", 3, KT_LONG));
  expect_line(p, KEEL_PORT_STDOUT, "hello", 0);
  expect_line(p, KEEL_PORT_STDOUT, "world", 0);
  CHECK_OK(keel_port_close_stdin(p));
  CHECK_EQ(keel_port_write(p, "x", 1, KT_LONG), KEEL_ESTATE);
  got g = expect_exit(p);
  CHECK_STR(g.data, "normal");
  CHECK_EQ(g.st.exit_code, 0);
  CHECK_EQ(g.st.signal, 0);
  keel_port_status st;
  CHECK_OK(keel_port_close(p, 0, &st));
  CHECK_EQ(st.exit_code, 0);
}

KT_CASE(lines_cut_a_long_line_and_mark_a_last_line_without_newline) {
  static const char *const argv[] = {"sh", "-c",
                                     "printf '0123456789abcdef\\nxy\\n'; printf 'err\\n' >&2; "
                                     "printf 'tail'",
                                     NULL};
  keel_port_opts o = {.max_line = 8};
  keel_port_t *p = open_argv(argv, &o);
  /* stderr and stdout are separate streams: collect per stream */
  got out[3];
  int nout = 0, nerr = 0;
  for (;;) {
    got g = next_event(p);
    if (g.tag == KEEL_PORT_EXIT) break;
    if (g.tag == KEEL_PORT_STDERR) {
      CHECK_STR(g.data, "err");
      nerr++;
    } else {
      CHECK(nout < 3);
      out[nout++] = g;
    }
  }
  CHECK_EQ(nerr, 1);
  CHECK_EQ(nout, 3);
  CHECK_STR(out[0].data, "01234567");
  CHECK_EQ(out[0].flags, KEEL_PORT_CUT);
  CHECK_STR(out[1].data, "xy");
  CHECK_EQ(out[1].flags, 0);
  CHECK_STR(out[2].data, "tail");
  CHECK_EQ(out[2].flags, KEEL_PORT_NOEOL);
  CHECK_OK(keel_port_close(p, 0, NULL));
}

KT_CASE(chunks_deliver_the_bytes_as_they_came) {
  static const char *const argv[] = {"sh", "-c", "printf 'a\\nb\\n'; printf 'c'", NULL};
  keel_port_opts o = {.stdout_mode = KEEL_PORT_CHUNKS, .stderr_mode = KEEL_PORT_IGNORE};
  keel_port_t *p = open_argv(argv, &o);
  char all[64] = "";
  for (;;) {
    got g = next_event(p);
    if (g.tag == KEEL_PORT_EXIT) break;
    CHECK_EQ(g.tag, KEEL_PORT_STDOUT);
    CHECK(strlen(all) + g.len < sizeof all);
    strcat(all, g.data);
  }
  CHECK_STR(all, "a\nb\nc");
  CHECK_OK(keel_port_close(p, 0, NULL));
}

/* ---- how a program ends ----------------------------------------------------- */

KT_CASE(an_exit_code_and_a_signal_become_reasons) {
  static const char *const exit3[] = {"sh", "-c", "exit 3", NULL};
  keel_port_t *p = open_argv(exit3, NULL);
  got g = expect_exit(p);
  CHECK_STR(g.data, "exit 3");
  CHECK_EQ(g.st.exit_code, 3);
  CHECK_OK(keel_port_close(p, 0, NULL));

  static const char *const segv[] = {"sh", "-c", "kill -SEGV $$", NULL};
  p = open_argv(segv, NULL);
  g = expect_exit(p);
  CHECK_STR(g.data, "signal 11 (SIGSEGV)");
  CHECK_EQ(g.st.signal, SIGSEGV);
  CHECK_OK(keel_port_close(p, 0, NULL));

  static const char *const missing[] = {"/nonexistent/keel-test-program", NULL};
  p = open_argv(missing, NULL);
  got e = next_event(p);
  CHECK_EQ(e.tag, KEEL_PORT_STDERR); /* the helper says why */
  CHECK(strstr(e.data, "cannot execute") != NULL);
  g = expect_exit(p);
  CHECK_STR(g.data, "exit 127");
  CHECK_OK(keel_port_close(p, 0, NULL));
}

KT_CASE(bad_options_and_a_missing_helper_are_refused) {
  keel_port_t *p = NULL;
  keel_port_opts o = {0};
  CHECK_EQ(keel_port_open(&o, &p), KEEL_EINVAL);
  static const char *const argv[] = {"true", NULL};
  o.argv = argv;
  o.stdout_mode = (keel_port_mode)42;
  CHECK_EQ(keel_port_open(&o, &p), KEEL_EINVAL);
  o.stdout_mode = KEEL_PORT_LINES;
  keel_port_rlimit bad = {.resource = RLIMIT_NOFILE, .soft = 10, .hard = 5};
  o.rlimits = &bad;
  o.nrlimits = 1;
  CHECK_EQ(keel_port_open(&o, &p), KEEL_EINVAL);
  o.nrlimits = 0;
  o.exec_helper = "/nonexistent/keel-port-exec";
  CHECK_EQ(keel_port_open(&o, &p), KEEL_ENOENT);
  CHECK(p == NULL);
  o.exec_helper = NULL;
  o.cwd = "/nonexistent/dir"; /* the fork's chdir fails: the open says so */
  CHECK_EQ(keel_port_open(&o, &p), KEEL_ENOENT);
  CHECK(p == NULL);
}

/* ---- environment, working directory, limits ---------------------------- */

KT_CASE(env_cwd_and_rlimits_are_applied) {
  static const char *const argv[] = {
      "sh", "-c", "echo \"$KT_FOO\"; echo \"${KT_PORT_MARK-unset}\"; pwd; ulimit -n", NULL};
  static const char *const env[] = {"KT_FOO=bar", NULL};
  keel_port_rlimit lim = {.resource = RLIMIT_NOFILE, .soft = 64, .hard = 64};
  CHECK_OK(setenv("KT_PORT_MARK", "inherited", 1));
  keel_port_opts o = {.env = env, .cwd = "/", .rlimits = &lim, .nrlimits = 1, .clean_env = true};
  keel_port_t *p = open_argv(argv, &o);
  expect_line(p, KEEL_PORT_STDOUT, "bar", 0);
  expect_line(p, KEEL_PORT_STDOUT, "unset", 0); /* a clean environment */
  expect_line(p, KEEL_PORT_STDOUT, "/", 0);
  expect_line(p, KEEL_PORT_STDOUT, "64", 0);
  expect_exit(p);
  CHECK_OK(keel_port_close(p, 0, NULL));

  /* the node's environment, with an override replacing a variable */
  static const char *const env2[] = {"KT_FOO=baz", "KT_PORT_MARK=overridden", NULL};
  keel_port_opts o2 = {.env = env2};
  p = open_argv(argv, &o2);
  expect_line(p, KEEL_PORT_STDOUT, "baz", 0);
  expect_line(p, KEEL_PORT_STDOUT, "overridden", 0);
  char cwd[512];
  CHECK(getcwd(cwd, sizeof cwd) != NULL);
  expect_line(p, KEEL_PORT_STDOUT, cwd, 0);
  got g = next_event(p);
  CHECK(strcmp(g.data, "64") != 0); /* the node's limit, not the last port's */
  expect_exit(p);
  CHECK_OK(keel_port_close(p, 0, NULL));

  keel_port_opts o3 = {0};
  static const char *const argv3[] = {"sh", "-c", "echo $KT_PORT_MARK", NULL};
  p = open_argv(argv3, &o3);
  expect_line(p, KEEL_PORT_STDOUT, "inherited", 0);
  expect_exit(p);
  CHECK_OK(keel_port_close(p, 0, NULL));
  unsetenv("KT_PORT_MARK");
}

/* ---- the owner's rules ------------------------------------------------------ */

static void intruder(void *arg) {
  keel_port_t *p = arg;
  keel_port_status st;
  CHECK_EQ(keel_port_write(p, "x\n", 2, KT_LONG), KEEL_EPERM);
  CHECK_EQ(keel_port_close_stdin(p), KEEL_EPERM);
  CHECK_EQ(keel_port_kill(p, SIGTERM), KEEL_EPERM);
  CHECK_EQ(keel_port_close(p, 0, &st), KEEL_EPERM);
}

KT_CASE(only_the_owner_uses_a_port_and_a_closed_stdin_fails_writes) {
  static const char *const argv[] = {"sh", "-c", "exec 0<&-; echo closed; exec sleep 1000", NULL};
  keel_port_t *p = open_argv(argv, NULL);
  keel_ref_t ref;
  keel_pid_t other = kt_spawn_monitor(intruder, p, 0, &ref);
  CHECK_EQ(kt_wait_down(ref, other, NULL, 0), KEEL_REASON_NORMAL);
  expect_line(p, KEEL_PORT_STDOUT, "closed", 0);
  CHECK_EQ(keel_port_write(p, "x\n", 2, KT_LONG), KEEL_EIO); /* EPIPE, not SIGPIPE */
  CHECK_OK(keel_port_kill(p, SIGUSR1));
  got g = expect_exit(p);
  CHECK_STR(g.data, "signal 10 (SIGUSR1)");
  CHECK_EQ(keel_port_kill(p, SIGTERM), KEEL_ESTATE);
  CHECK_OK(keel_port_close(p, 0, NULL));
}

/* ---- backpressure ------------------------------------------------------------ */

KT_CASE(a_flood_pauses_reading_instead_of_filling_the_mailbox) {
  static const char *const argv[] = {"yes", NULL};
  keel_port_opts o = {.max_pending = 16};
  keel_port_t *p = open_argv(argv, &o);
  /* `yes` writes millions of lines a second: without the pause the mailbox
   * would hold that many. With it: max_pending plus one read's lines (a read
   * is at most 64 KiB, 32768 two-byte lines). The lower bound is waited
   * for (a loaded machine may take long to start `yes`); the upper bound
   * holds however long the program has been writing, so the pause below
   * only gives an unpaused reader the time to overshoot it. */
  KT_WAIT_UNTIL(keel_mailbox_len() >= 16);
  CHECK_OK(keel_sleep(200));
  size_t queued = keel_mailbox_len();
  CHECK(queued <= 16 + 32768);
  /* drain: reading resumes, more lines come */
  for (size_t i = 0; i < queued + 100; i++)
    expect_line(p, KEEL_PORT_STDOUT, "y", 0);
  CHECK_OK(keel_sleep(200));
  CHECK(keel_mailbox_len() <= 16 + 32768);
  keel_port_status st;
  CHECK_OK(keel_port_close(p, 0, &st));
  CHECK_EQ(st.signal, SIGTERM);
  /* what was queued stays queued, and is ours to free */
  keel_msg_t *m;
  while (keel_receive(&m, KEEL_NOWAIT) == 0)
    keel_msg_free(m);
}

/* ---- closing ---------------------------------------------------------------------- */

KT_CASE(close_sends_sigterm_then_sigkill_past_the_timeout) {
  static const char *const argv[] = {"sleep", "1000", NULL};
  keel_port_t *p = open_argv(argv, NULL);
  keel_port_status st;
  CHECK_OK(keel_port_close(p, 0, &st));
  CHECK_EQ(st.signal, SIGTERM);

  static const char *const stubborn[] = {"sh", "-c", "trap '' TERM; echo ready; exec sleep 1000",
                                         NULL};
  p = open_argv(stubborn, NULL);
  expect_line(p, KEEL_PORT_STDOUT, "ready", 0);
  int pid = keel_port_os_pid(p);
  CHECK_OK(keel_port_close(p, 100, &st));
  CHECK_EQ(st.signal, SIGKILL);
  CHECK(os_reaped(pid));
}

KT_CASE(descendants_left_in_the_group_die_when_the_program_exits) {
  /* the background sleep keeps the group (and stdout) alive after sh exits:
   * the port kills it right at the exit, when the group is surely still
   * the program's, never later (the group id could name another by then) */
  static const char *const argv[] = {"sh", "-c", "sleep 1000 & echo $!", NULL};
  keel_port_t *p = open_argv(argv, NULL);
  got g = next_event(p);
  pid_t kid = (pid_t)atoi(g.data);
  CHECK(kid > 0);
  g = expect_exit(p);
  CHECK_STR(g.data, "normal");
  KT_WAIT_UNTIL(os_gone(kid));
  CHECK_OK(keel_port_close(p, 0, NULL));
}

KT_CASE(close_returns_once_the_program_exited_though_an_escaped_descendant_holds_its_output) {
  static const char *const argv[] = {"sh", "-c", "setsid sleep 1000 & echo $!; exec sleep 1000",
                                     NULL};
  keel_port_t *p = open_argv(argv, NULL);
  got g = next_event(p);
  pid_t kid = (pid_t)atoi(g.data);
  CHECK(kid > 0);
  KT_WAIT_UNTIL(getsid(kid) == kid); /* escaped: out of the group's reach */
  keel_port_status st;
  CHECK_OK(keel_port_close(p, KEEL_INFINITY, &st)); /* hung on the pipe's EOF before */
  CHECK_EQ(st.signal, SIGTERM);
  CHECK_OK(kill(kid, SIGKILL));
}

KT_CASE(a_big_write_completes_while_the_output_would_pause) {
  /* cat echoes what it reads: with reading paused on a full mailbox, cat
   * blocks writing, stops reading its stdin, and the write could never end
   * (it returned KEEL_ETIMEDOUT) */
  static const char *const argv[] = {"cat", NULL};
  keel_port_opts o = {.max_pending = 16};
  keel_port_t *p = open_argv(argv, &o);
  size_t len = (size_t)4 << 20;
  char *buf = malloc(len);
  CHECK(buf != NULL);
  for (size_t i = 0; i < len; i++)
    buf[i] = i % 64 == 63 ? '\n' : 'x';
  CHECK_OK(keel_port_write(p, buf, len, KT_LONG));
  free(buf);
  CHECK_OK(keel_port_close_stdin(p));
  size_t lines = 0;
  for (;;) {
    got g = next_event(p);
    if (g.tag == KEEL_PORT_EXIT) break;
    CHECK_EQ(g.tag, KEEL_PORT_STDOUT);
    CHECK_EQ(g.len, 63u);
    lines++;
  }
  CHECK_EQ(lines, len / 64);
  CHECK_OK(keel_port_close(p, 0, NULL));
}

KT_CASE(the_program_inherits_no_node_descriptor) {
  int fd = open("/dev/null", O_RDONLY); /* deliberately without O_CLOEXEC */
  CHECK(fd > 2);
  char script[128];
  snprintf(script, sizeof script,
           "if [ -e /proc/self/fd/%d ]; then echo open; else echo closed; fi", fd);
  const char *argv[] = {"sh", "-c", script, NULL};
  keel_port_t *p = open_argv(argv, NULL);
  expect_line(p, KEEL_PORT_STDOUT, "closed", 0);
  expect_exit(p);
  CHECK_OK(keel_port_close(p, 0, NULL));
  close(fd);
}

KT_CASE(a_truncated_port_message_is_refused) {
  /* a message that claims more bytes than it carries (a forged or cut copy)
   * must not make the event point past its end */
  static const char *const argv[] = {"echo", "hello", NULL};
  keel_port_t *p = open_argv(argv, NULL);
  keel_msg_t *m = NULL;
  CHECK_OK(keel_port_receive(p, &m, KT_LONG));
  keel_port_event ev;
  CHECK_OK(keel_port_event_of(m, &ev));
  CHECK_EQ(ev.len, 5u);
  size_t cut = keel_msg_size(m) - ev.len; /* the header and the NUL, no bytes */
  keel_msg_t *forged = keel_msg_copy(keel_msg_tag(m), keel_msg_data(m), cut);
  CHECK(forged != NULL);
  keel_msg_set_proto(forged, KEEL_PROTO_PORT);
  CHECK_EQ(keel_port_event_of(forged, &ev), KEEL_EINVAL);
  keel_msg_free(forged);
  keel_msg_free(m);
  expect_exit(p);
  CHECK_OK(keel_port_close(p, 0, NULL));
}

static void owner_opens_and_waits(void *arg) {
  static const char *const argv[] = {"sh", "-c", "echo $$; exec sleep 1000", NULL};
  keel_port_t *p = open_argv(argv, NULL);
  got g = next_event(p);
  kt_send_u64(*(keel_pid_t *)arg, 1, (uint64_t)atoi(g.data));
  keel_msg_t *m;
  keel_receive(&m, KEEL_INFINITY); /* killed here */
}

KT_CASE(an_owner_that_dies_takes_its_program_with_it) {
  keel_pid_t self = keel_self();
  keel_ref_t ref;
  keel_pid_t owner = kt_spawn_monitor(owner_opens_and_waits, &self, 0, &ref);
  pid_t pid = (pid_t)kt_recv_tag_u64(1, KT_LONG);
  CHECK(pid > 0 && !os_gone(pid));
  CHECK_OK(keel_exit_signal(owner, KEEL_REASON_KILL, NULL));
  kt_wait_down(ref, owner, NULL, 0);
  KT_WAIT_UNTIL(os_reaped(pid));
}

/* This OS process's children still running: every thread's children list
 * (the programs' parent is the spawner thread), zombies left out. */
static int live_children(void) {
  int n = 0;
  DIR *tasks = opendir("/proc/self/task");
  CHECK(tasks != NULL);
  for (struct dirent *t; (t = readdir(tasks));) {
    if (t->d_name[0] == '.') continue;
    char path[300];
    snprintf(path, sizeof path, "/proc/self/task/%s/children", t->d_name);
    FILE *f = fopen(path, "r");
    if (!f) continue;
    for (int pid; fscanf(f, "%d", &pid) == 1;)
      if (!os_gone(pid)) n++;
    fclose(f);
  }
  closedir(tasks);
  return n;
}

static int open_fds(void) {
  int n = 0;
  DIR *d = opendir("/proc/self/fd");
  CHECK(d != NULL);
  while (readdir(d))
    n++;
  closedir(d);
  return n;
}

/* The descriptors open, as a bitmap of their numbers below FD_MAP. */
#define FD_MAP 1024
static void fd_map(unsigned char *map) {
  memset(map, 0, FD_MAP);
  DIR *d = opendir("/proc/self/fd");
  CHECK(d != NULL);
  for (struct dirent *e; (e = readdir(d));) {
    int fd = atoi(e->d_name);
    if (e->d_name[0] != '.' && fd < FD_MAP) map[fd] = 1;
  }
  closedir(d);
}

/* What descriptor fd names ("?" once it is closed). */
static const char *fd_link(int fd, char *link, size_t cap) {
  char path[64];
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(path, link, cap - 1);
  if (n < 0) return "?";
  link[n] = 0;
  return link;
}

/* Prints the descriptors opened or closed since `before` (fd_map's), with
 * what each names: a leak's failure says what leaked. */
static void fd_print_new(const unsigned char *before) {
  unsigned char now[FD_MAP];
  fd_map(now);
  for (int fd = 0; fd < FD_MAP; fd++) {
    char link[256];
    if (now[fd] != before[fd])
      fprintf(stderr, "fd %d %s: %s\n", fd, now[fd] ? "opened" : "closed",
              fd_link(fd, link, sizeof link));
  }
}

/* The pidfds open: a port's closes only once its handles' close callbacks
 * have run on the owner's loop, after its program is reaped. */
static int open_pidfds(void) {
  unsigned char map[FD_MAP];
  fd_map(map);
  int n = 0;
  for (int fd = 0; fd < FD_MAP; fd++) {
    char link[64];
    n += map[fd] && strcmp(fd_link(fd, link, sizeof link), "anon_inode:[pidfd]") == 0;
  }
  return n;
}

/* Opens `sleep 1000` until it is killed. */
static void opens_forever(void *arg) {
  (void)arg;
  static const char *const argv[] = {"sleep", "1000", NULL};
  for (;;) {
    keel_port_opts o = {.argv = argv};
    keel_port_t *p = NULL;
    keel_port_open(&o, &p);
  }
}

/* A kill that arrives while the open waits on the spawner is held until the
 * port is in the owner's set: the exit hook then kills and reaps the
 * program and closes its descriptors. Kill times spread over 20-83 ms so
 * that some land inside an open. */
KT_CASE(an_owner_killed_during_an_open_leaks_no_program_and_no_descriptor) {
  KT_WAIT_UNTIL(live_children() == 0); /* what earlier cases left is reaped */
  /* a first owner killed after its open: what the runtime opens lazily on
   * that path (the blocking pool's reaper) is open before the count */
  keel_ref_t ref;
  keel_pid_t first = kt_spawn_monitor(opens_forever, NULL, 0, &ref);
  keel_sleep(200);
  CHECK_OK(keel_exit_signal(first, KEEL_REASON_KILL, NULL));
  kt_wait_down(ref, first, NULL, 0);
  KT_WAIT_UNTIL(live_children() == 0);
  KT_WAIT_UNTIL(open_pidfds() == 0); /* its ports are freed: the count holds none of theirs */
  int fds = open_fds();
  unsigned char before[FD_MAP];
  fd_map(before);
  for (int round = 0; round < 10; round++) {
    keel_pid_t owner = kt_spawn_monitor(opens_forever, NULL, 0, &ref);
    keel_sleep(20 + round * 7);
    CHECK_OK(keel_exit_signal(owner, KEEL_REASON_KILL, NULL));
    kt_wait_down(ref, owner, NULL, 0);
  }
  KT_WAIT_UNTIL(live_children() == 0);
  for (int64_t end = kt_now_ms() + KT_LONG; open_fds() != fds && kt_now_ms() < end;)
    CHECK_OK(keel_sleep(1));
  if (open_fds() != fds) fd_print_new(before);
  CHECK(open_fds() == fds);
}

/* Every open goes through the node's one spawner thread (decision 0038):
 * owners on both schedulers opening at once each get their own program, with
 * their own pipes (a job's descriptors handed to another owner would show
 * here as a wrong line), and the programs' parent is the node. */
#define OPENERS         8
#define OPENS_PER_OWNER 4

typedef struct opener_arg {
  keel_pid_t parent;
  int n;
} opener_arg;

static void opener(void *arg) {
  opener_arg *a = arg;
  for (int k = 0; k < OPENS_PER_OWNER; k++) {
    char word[32];
    snprintf(word, sizeof word, "owner%d-open%d", a->n, k);
    const char *const argv[] = {"echo", word, NULL};
    keel_port_t *p = open_argv(argv, NULL);
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", keel_port_os_pid(p));
    FILE *f = fopen(path, "r"); /* the helper or echo; gone already is fine */
    while (f && fgets(line, sizeof line, f))
      if (strncmp(line, "PPid:", 5) == 0) CHECK_EQ(atoi(line + 5), (int)getpid());
    if (f) fclose(f);
    expect_line(p, KEEL_PORT_STDOUT, word, 0);
    got g = expect_exit(p);
    CHECK_EQ(g.st.exit_code, 0);
    CHECK_OK(keel_port_close(p, 0, NULL));
  }
  kt_send_u64(a->parent, 2, (uint64_t)a->n);
}

KT_CASE(owners_on_both_schedulers_opening_at_once_each_get_their_own_program) {
  static opener_arg args[OPENERS];
  for (int i = 0; i < OPENERS; i++) {
    args[i] = (opener_arg){.parent = keel_self(), .n = i};
    keel_spawn_opts o;
    keel_spawn_opts_init(&o);
    o.scheduler = KEEL_ON_SCHEDULER(i % keel_sched_count());
    CHECK_OK(keel_spawn(opener, &args[i], &o, NULL));
  }
  unsigned seen = 0;
  for (int i = 0; i < OPENERS; i++) {
    keel_msg_t *m = kt_recv(KT_LONG);
    CHECK(m != NULL);
    seen |= 1u << kt_u64(m);
    keel_msg_free(m);
  }
  CHECK_EQ(seen, (1u << OPENERS) - 1);
}

/* ---- supervised ------------------------------------------------------------------ */

static void log_sup_event(const keel_sup_event *ev, void *ud) {
  (void)ud;
  if (strcmp(ev->child_id, "prog") != 0) return;
  if (ev->kind == KEEL_SUP_CHILD_EXITED)
    kt_logf("exited:%s:%s", keel_reason_name(ev->reason.kind), ev->reason.text);
  else if (ev->kind == KEEL_SUP_CHILD_RESTARTED)
    kt_logf("restarted");
  else if (ev->kind == KEEL_SUP_CHILD_SHUTDOWN_TIMEOUT)
    kt_logf("shutdown_timeout");
}

static bool log_has(const char *s) {
  pthread_mutex_lock(&kt_log_mu);
  bool found = false;
  for (size_t i = 0; i < kt_log_n && !found; i++)
    found = strcmp(kt_log_ev[i], s) == 0;
  pthread_mutex_unlock(&kt_log_mu);
  return found;
}

static void on_output_log(const keel_port_event *ev, void *ud) {
  (void)ud;
  kt_logf("out:%s", ev->data);
}

static void stop_sup(keel_pid_t sup) {
  CHECK_OK(keel_gs_stop(sup, KEEL_REASON_SHUTDOWN, NULL, KT_LONG));
}

KT_CASE(a_segfaulting_program_is_restarted_with_that_reason) {
  kt_quiet();
  kt_log_reset();
  int h = keel_sup_subscribe(log_sup_event, NULL);
  CHECK(h > 0);
  char flag[] = "/tmp/kt-port-segv-XXXXXX";
  int fd = mkstemp(flag);
  CHECK(fd >= 0);
  close(fd);
  unlink(flag);
  char script[256];
  /* the first run crashes; the restarted one stays up */
  snprintf(script, sizeof script,
           "if [ -e %s ]; then echo second; exec sleep 1000; else : > %s; kill -SEGV $$; fi", flag,
           flag);
  const char *argv[] = {"sh", "-c", script, NULL};
  keel_port_child child = {.port = {.argv = argv}, .on_output = on_output_log};
  keel_sup_child_spec spec[] = {
      {.id = "prog", .start = keel_port_child_start, .arg = &child, .shutdown = 2000}};
  keel_sup_spec sup_spec = {.strategy = KEEL_SUP_ONE_FOR_ONE, .children = spec, .nchildren = 1};
  keel_pid_t sup;
  CHECK_OK(keel_sup_start(&sup_spec, NULL, &sup, NULL));
  KT_WAIT_UNTIL(log_has("out:second"));
  CHECK(log_has("exited:error:signal 11 (SIGSEGV)"));
  CHECK(log_has("restarted"));
  keel_pid_t pid;
  CHECK_OK(keel_sup_which_pid(sup, "prog", &pid));
  CHECK(keel_is_alive(pid));
  stop_sup(sup);
  unlink(flag);
  CHECK_OK(keel_sup_unsubscribe(h));
}

KT_CASE(a_program_exiting_3_is_a_crash_and_exit_0_is_normal) {
  kt_quiet();
  kt_log_reset();
  int h = keel_sup_subscribe(log_sup_event, NULL);
  static const char *const argv[] = {"sh", "-c", "exit 3", NULL};
  keel_port_child child = {.port = {.argv = argv}};
  keel_sup_child_spec spec[] = {
      {.id = "prog", .start = keel_port_child_start, .arg = &child, .restart = KEEL_SUP_TEMPORARY}};
  keel_sup_spec sup_spec = {.children = spec, .nchildren = 1};
  keel_pid_t sup;
  CHECK_OK(keel_sup_start(&sup_spec, NULL, &sup, NULL));
  KT_WAIT_UNTIL(log_has("exited:error:exit 3"));

  /* a program the test ends: the monitor below is armed before it exits
   * (`true` could be gone, and its child with it, before keel_monitor) */
  char flag[] = "/tmp/kt-port-end-XXXXXX";
  int fd = mkstemp(flag);
  CHECK(fd >= 0);
  close(fd);
  unlink(flag);
  char script[128];
  snprintf(script, sizeof script, "while [ ! -e %s ]; do sleep 0.01; done", flag);
  const char *ok[] = {"sh", "-c", script, NULL};
  keel_port_child child2 = {.port = {.argv = ok}};
  keel_sup_child_spec spec2 = {
      .id = "prog", .start = keel_port_child_start, .arg = &child2, .restart = KEEL_SUP_TEMPORARY};
  kt_log_reset();
  keel_pid_t pid;
  keel_ref_t ref;
  keel_sup_delete_child(sup, "prog"); /* a temporary child's spec may be gone already */
  CHECK_OK(keel_sup_start_child(sup, &spec2, &pid));
  CHECK_OK(keel_monitor(pid, &ref));
  fd = open(flag, O_CREAT | O_WRONLY, 0600);
  CHECK(fd >= 0);
  close(fd);
  CHECK_EQ(kt_wait_down(ref, pid, NULL, 0), KEEL_REASON_NORMAL);
  unlink(flag);
  stop_sup(sup);
  CHECK_OK(keel_sup_unsubscribe(h));
}

KT_CASE(a_program_ignoring_sigterm_is_killed_past_the_shutdown_time) {
  kt_quiet();
  kt_log_reset();
  int h = keel_sup_subscribe(log_sup_event, NULL);
  static const char *const argv[] = {"sh", "-c", "trap '' TERM; echo $$; exec sleep 1000", NULL};
  keel_port_child child = {.port = {.argv = argv}, .on_output = on_output_log};
  keel_sup_child_spec spec[] = {
      {.id = "prog", .start = keel_port_child_start, .arg = &child, .shutdown = 200}};
  keel_sup_spec sup_spec = {.children = spec, .nchildren = 1};
  keel_pid_t sup;
  CHECK_OK(keel_sup_start(&sup_spec, NULL, &sup, NULL));
  KT_WAIT_UNTIL(kt_log_len() > 0);
  pid_t pid = 0;
  pthread_mutex_lock(&kt_log_mu);
  CHECK(sscanf(kt_log_ev[0], "out:%d", &pid) == 1);
  pthread_mutex_unlock(&kt_log_mu);
  CHECK_OK(keel_sup_terminate_child(sup, "prog", 0));
  CHECK(log_has("shutdown_timeout"));
  KT_WAIT_UNTIL(os_reaped(pid));
  stop_sup(sup);
  CHECK_OK(keel_sup_unsubscribe(h));
}

/* ---- the node's own end -------------------------------------------------------- */

/* Runs this executable as a node (see node_main below) and returns its pid. */
static pid_t spawn_node(const char *mode, const char *pidfile) {
  char m[64], f[256];
  snprintf(m, sizeof m, "KT_PORT_NODE=%s", mode);
  snprintf(f, sizeof f, "KT_PORT_PIDFILE=%s", pidfile);
  size_t n = 0;
  while (environ[n])
    n++;
  char **env = calloc(n + 3, sizeof *env);
  CHECK(env != NULL);
  size_t k = 0;
  for (size_t i = 0; i < n; i++)
    if (strncmp(environ[i], "KT_PORT_", 8) != 0) env[k++] = environ[i];
  env[k++] = m;
  env[k++] = f;
  char *argv[] = {"test_port", NULL};
  pid_t pid;
  CHECK_OK(posix_spawn(&pid, "/proc/self/exe", NULL, NULL, argv, env));
  free(env);
  return pid;
}

static pid_t read_pidfile(const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  int pid = 0;
  if (fscanf(f, "%d", &pid) != 1) pid = 0;
  fclose(f);
  return pid;
}

/* waitpid without blocking the scheduler: polls with keel_sleep */
static int reap(pid_t pid) {
  int status = 0;
  KT_WAIT_UNTIL(waitpid(pid, &status, WNOHANG) == pid);
  return status;
}

/* Runs the node mode `mode`, which checks itself, in a child: it must exit
 * 0 (non-zero, a crash, or an ASan report when it failed). */
static void node_passes(const char *mode) {
  char pidfile[] = "/tmp/kt-port-pid-XXXXXX";
  int fd = mkstemp(pidfile);
  CHECK(fd >= 0);
  close(fd);
  int status = reap(spawn_node(mode, pidfile));
  CHECK(WIFEXITED(status));
  CHECK_EQ(WEXITSTATUS(status), 0);
  unlink(pidfile);
}

KT_CASE(no_orphan_remains_when_the_node_is_sigkilled) {
  char pidfile[] = "/tmp/kt-port-pid-XXXXXX";
  int fd = mkstemp(pidfile);
  CHECK(fd >= 0);
  close(fd);
  pid_t node = spawn_node("sigkill", pidfile);
  pid_t prog = 0;
  KT_WAIT_UNTIL((prog = read_pidfile(pidfile)) > 0);
  CHECK(!os_gone(prog));
  CHECK_OK(kill(node, SIGKILL));
  int status = reap(node);
  CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  KT_WAIT_UNTIL(os_gone(prog));
  unlink(pidfile);
}

KT_CASE(a_node_stopped_with_ports_running_leaks_nothing_and_leaves_nothing) {
  char pidfile[] = "/tmp/kt-port-pid-XXXXXX";
  int fd = mkstemp(pidfile);
  CHECK(fd >= 0);
  close(fd);
  pid_t node = spawn_node("stop", pidfile);
  int status = reap(node);
  CHECK(WIFEXITED(status));
  CHECK_EQ(WEXITSTATUS(status), 0); /* a leak report (ASan builds) exits non-zero */
  pid_t prog = read_pidfile(pidfile);
  CHECK(prog > 0);
  KT_WAIT_UNTIL(os_gone(prog));
  unlink(pidfile);
}

/* keel_rt_stop while owners wait on the spawner: their stacks go, and the
 * spawner must neither write into a job that lived there nor leave the
 * program it started running. The node stops its runtime mid-open again
 * and again, and exits 0 only if no program and no descriptor is left
 * (non-zero, or a crash or an ASan report, otherwise). */
KT_CASE(a_runtime_stopped_during_opens_crashes_not_and_leaves_nothing) {
  node_passes("stop_opens");
}

/* With SIGCHLD ignored the kernel reaps programs itself and waitid fails
 * (ECHILD): the port still ends, with the status unknown, instead of its
 * exit watch spinning on a pidfd that stays readable. */
KT_CASE(a_program_reaped_by_the_kernel_still_ends_its_port) {
  node_passes("sigchld_ignored");
}

/* A node whose descriptors 0-2 are closed gets its pipes there: they must
 * not be clobbered by the program's own 0-2 (nor handed to libuv, which
 * refuses to close a descriptor below 3). */
KT_CASE(a_node_without_stdio_still_gives_its_program_three_pipes) {
  node_passes("no_stdio");
}

/* A helper named without a slash is looked up in PATH (as uv_spawn's
 * execvp did before decision 0038). */
KT_CASE(a_helper_named_without_a_path_is_found_in_path) {
  node_passes("helper_in_path");
}

/* ---- the node mode ------------------------------------------------------------- */

static void node_owner(void *arg) {
  (void)arg;
  static const char *const argv[] = {"sh", "-c", "echo $$; exec sleep 1000", NULL};
  keel_port_t *p = open_argv(argv, NULL);
  got g = next_event(p);
  /* a second port, still running when the node stops */
  static const char *const argv2[] = {"sleep", "1000", NULL};
  open_argv(argv2, NULL);
  const char *path = getenv("KT_PORT_PIDFILE");
  char tmp[300];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *f = fopen(tmp, "w");
  CHECK(f != NULL);
  fprintf(f, "%s\n", g.data);
  fclose(f);
  CHECK_OK(rename(tmp, path)); /* the reader never sees half a file */
  if (strcmp(getenv("KT_PORT_NODE"), "stop") == 0) keel_rt_halt(0);
  keel_msg_t *m;
  keel_receive(&m, KEEL_INFINITY);
}

/* Opens `sleep 1000` from 8 processes and stops the runtime a few ms in,
 * 30 times; 0 if nothing is left after, 3 if a program runs, 4 if a
 * descriptor stayed open. */
static int node_stop_opens(void) {
  CHECK_OK(keel_rt_start(NULL)); /* what a started runtime keeps open */
  CHECK_OK(keel_rt_stop());
  int fds = open_fds();
  for (int round = 0; round < 30; round++) {
    CHECK_OK(keel_rt_start(NULL));
    for (int i = 0; i < 8; i++)
      CHECK_OK(keel_spawn(opens_forever, NULL, NULL, NULL));
    usleep((useconds_t)(1000 + (round % 6) * 1000));
    CHECK_OK(keel_rt_stop());
  }
  /* the spawner finishes the opens it had under way (bounded: 10 s) */
  for (int i = 0; i < 1000 && (live_children() || open_fds() != fds); i++)
    usleep(10000);
  if (live_children()) return 3;
  if (open_fds() != fds) return 4;
  return 0;
}

/* 200 programs that end at once: some are reaped by the kernel before the
 * open has watched them (pidfd_open fails, ESRCH), some after; each open
 * succeeds and each port ends "unknown". Halts 0, or 5 on the first that
 * does not. */
static void sigchld_owner(void *arg) {
  (void)arg;
  static const char *const argv[] = {"true", NULL};
  bool ok = true;
  for (int i = 0; i < 200 && ok; i++) {
    keel_port_t *p = NULL;
    if (keel_port_open(&(keel_port_opts){.argv = argv}, &p) != 0) {
      ok = false;
      break;
    }
    keel_msg_t *m = NULL;
    keel_port_event ev;
    int rc = keel_port_receive(p, &m, 10000); /* a liveness limit: it spun forever */
    ok = rc == 0 && keel_port_event_of(m, &ev) == 0 && ev.tag == KEEL_PORT_EXIT &&
         ev.status.exit_code == -1 && ev.status.signal == 0 && strcmp(ev.data, "unknown") == 0;
    if (m) keel_msg_free(m);
    if (keel_port_close(p, KEEL_INFINITY, NULL) != 0) ok = false;
  }
  keel_rt_halt(ok ? 0 : 5);
}

/* Echoes a line through stdin and stdout and writes one to stderr; halts
 * 0 if both came back on their streams and the close left nothing open in
 * 0-2, 6 otherwise (CHECK's report would go to a closed stderr). */
static void no_stdio_owner(void *arg) {
  (void)arg;
  static const char *const argv[] = {"sh", "-c", "read x; echo \"out $x\"; echo err >&2", NULL};
  /* Closed once the loop exists and has opened its spare descriptor (the
   * first stream on it does, a warm-up port here): libuv itself refuses
   * to close one below 3. One scheduler: the warm-up's loop is this one. */
  static const char *const warm[] = {"true", NULL};
  keel_port_t *w = NULL;
  if (keel_port_open(&(keel_port_opts){.argv = warm}, &w) != 0 ||
      keel_port_close(w, KEEL_INFINITY, NULL) != 0)
    keel_rt_halt(7);
  close(0);
  close(1);
  close(2);
  keel_port_opts o = {.argv = argv};
  keel_port_t *p = NULL;
  bool ok = keel_port_open(&o, &p) == 0 && keel_port_write(p, "hi\n", 3, 10000) == 0;
  bool out = false, err = false, exited = false;
  while (ok && !exited) {
    keel_msg_t *m = NULL;
    keel_port_event ev;
    if (keel_port_receive(p, &m, 10000) != 0 || keel_port_event_of(m, &ev) != 0) {
      ok = false;
      break;
    }
    if (ev.tag == KEEL_PORT_STDOUT) out = out || strcmp(ev.data, "out hi") == 0;
    if (ev.tag == KEEL_PORT_STDERR) err = err || strcmp(ev.data, "err") == 0;
    exited = ev.tag == KEEL_PORT_EXIT;
    keel_msg_free(m);
  }
  ok = ok && keel_port_close(p, KEEL_INFINITY, NULL) == 0;
  /* Every descriptor of the port is closed once its handles are: none is
   * left in 0-2 (libuv silently never closes a stream there). */
  bool low_open = true;
  for (int i = 0; i < 1000 && low_open; i++) {
    low_open = fcntl(0, F_GETFD) >= 0 || fcntl(1, F_GETFD) >= 0 || fcntl(2, F_GETFD) >= 0;
    if (low_open) keel_sleep(10);
  }
  keel_rt_halt(ok && out && err && !low_open ? 0 : 6);
}

static void helper_in_path_owner(void *arg) {
  (void)arg;
  static const char *const argv[] = {"echo", "found", NULL};
  keel_port_opts o = {.argv = argv, .exec_helper = "keel-port-exec"};
  keel_port_t *p = NULL;
  keel_msg_t *m = NULL;
  keel_port_event ev;
  bool ok = keel_port_open(&o, &p) == 0 && keel_port_receive(p, &m, 10000) == 0 &&
            keel_port_event_of(m, &ev) == 0 && ev.tag == KEEL_PORT_STDOUT &&
            strcmp(ev.data, "found") == 0;
  if (m) keel_msg_free(m);
  keel_rt_halt(ok ? 0 : 8);
}

/* PATH gets the build tree's libexec/ (this executable is in tests/),
 * before the runtime's threads exist. */
static int node_helper_in_path(void) {
  char exe[4096];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) return 9;
  exe[n] = '\0';
  for (int up = 0; up < 2; up++) {
    char *slash = strrchr(exe, '/');
    if (!slash) return 9;
    *slash = '\0';
  }
  const char *old = getenv("PATH");
  char path[8192];
  snprintf(path, sizeof path, "%s/libexec:%s", exe, old ? old : "/usr/bin:/bin");
  setenv("PATH", path, 1);
  return keel_run(helper_in_path_owner, NULL, NULL);
}

static int node_main(void) {
  const char *mode = getenv("KT_PORT_NODE");
  if (strcmp(mode, "helper_in_path") == 0) return node_helper_in_path();
  if (strcmp(mode, "no_stdio") == 0)
    return keel_run(no_stdio_owner, NULL, &(keel_rt_opts){.schedulers = 1});
  if (strcmp(mode, "stop_opens") == 0) return node_stop_opens();
  if (strcmp(mode, "sigchld_ignored") == 0) {
    signal(SIGCHLD, SIG_IGN);
    return keel_run(sigchld_owner, NULL, NULL);
  }
  return keel_run(node_owner, NULL, NULL);
}

static const kt_case cases[] = {
    KT_ENTRY(echo_through_stdin_and_stdout),
    KT_ENTRY(lines_cut_a_long_line_and_mark_a_last_line_without_newline),
    KT_ENTRY(chunks_deliver_the_bytes_as_they_came),
    KT_ENTRY(an_exit_code_and_a_signal_become_reasons),
    KT_ENTRY(bad_options_and_a_missing_helper_are_refused),
    KT_ENTRY(env_cwd_and_rlimits_are_applied),
    KT_ENTRY(only_the_owner_uses_a_port_and_a_closed_stdin_fails_writes),
    KT_ENTRY(a_flood_pauses_reading_instead_of_filling_the_mailbox),
    KT_ENTRY(close_sends_sigterm_then_sigkill_past_the_timeout),
    KT_ENTRY(descendants_left_in_the_group_die_when_the_program_exits),
    KT_ENTRY(close_returns_once_the_program_exited_though_an_escaped_descendant_holds_its_output),
    KT_ENTRY(a_big_write_completes_while_the_output_would_pause),
    KT_ENTRY(the_program_inherits_no_node_descriptor),
    KT_ENTRY(a_truncated_port_message_is_refused),
    KT_ENTRY(an_owner_that_dies_takes_its_program_with_it),
    KT_ENTRY_SCHED(an_owner_killed_during_an_open_leaks_no_program_and_no_descriptor, 2),
    KT_ENTRY_SCHED(owners_on_both_schedulers_opening_at_once_each_get_their_own_program, 2),
    KT_ENTRY_SCHED(a_segfaulting_program_is_restarted_with_that_reason, 2),
    KT_ENTRY(a_program_exiting_3_is_a_crash_and_exit_0_is_normal),
    KT_ENTRY_SCHED(a_program_ignoring_sigterm_is_killed_past_the_shutdown_time, 2),
    KT_ENTRY(no_orphan_remains_when_the_node_is_sigkilled),
    KT_ENTRY(a_node_stopped_with_ports_running_leaks_nothing_and_leaves_nothing),
    KT_ENTRY(a_runtime_stopped_during_opens_crashes_not_and_leaves_nothing),
    KT_ENTRY(a_program_reaped_by_the_kernel_still_ends_its_port),
    KT_ENTRY(a_node_without_stdio_still_gives_its_program_three_pipes),
    KT_ENTRY(a_helper_named_without_a_path_is_found_in_path),
};

int main(int argc, char **argv) {
  if (getenv("KT_PORT_NODE")) return node_main();
  return kt_run_cases(cases, sizeof cases / sizeof cases[0], argc, argv);
}
