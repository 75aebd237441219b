/* keel/port.h - OS processes as children: an external program owned by a keel
 * process, its output as messages, its end as an exit reason.
 *
 * OWNER. keel_port_open runs a program (posix_spawn on the node's spawner
 * thread; its pipes and its end are watched on the caller's scheduler loop)
 * and makes the calling process its owner: the owner is pinned to its
 * scheduler until keel_port_close, only the owner may call the other
 * functions, and the keel_port_t is the owner's until it closes it. If the
 * owner exits without closing (a crash, a kill), the program's process group
 * gets SIGKILL and the port is freed: nothing leaks, and nothing of the group
 * is left running (a descendant that left the group with setsid escapes).
 *
 * OUTPUT. What the program writes to stdout and stderr arrives in the owner's
 * mailbox as USER messages with the protocol marker KEEL_PROTO_PORT and tag
 * KEEL_PORT_STDOUT or KEEL_PORT_STDERR, as lines (the newline removed) or as
 * chunks (what one read returned); a line longer than max_line is delivered
 * cut to max_line bytes with KEEL_PORT_CUT and the rest of it dropped. After
 * both streams ended and the program exited, one last message, tag
 * KEEL_PORT_EXIT, carries how it ended. keel_port_event decodes any of them;
 * keel_port_receive waits for the next one of a given port. Messages are
 * owned by whoever holds them, as every message (keel/message.h); they do not
 * point into the port, so they may outlive it. docs/decisions/0024 says why
 * messages and not a blocking read.
 *
 * BACKPRESSURE. When the owner's mailbox holds max_pending messages or more
 * (whatever sent them), the port stops reading the program's output; the
 * program then blocks in its writes once the buffer is full (libuv's stdio
 * "pipes" are Unix socket pairs: their buffer is the socket buffer, a few
 * hundred KiB by default, not a 64 KiB pipe). Reading resumes when the
 * mailbox is below half of it. The mailbox is looked at after each read, so
 * the bound is max_pending plus up to one read's worth of messages per
 * stream (a read is at most 64 KiB: in lines mode, up to 32768 short lines).
 * While the owner waits in keel_port_write or keel_port_close, reading never
 * pauses (it cannot drain its mailbox then, and a program that echoes its
 * input would block the write forever): output of that time is queued
 * whole.
 *
 * NO ORPHANS. The program runs in its own process group (its own session,
 * POSIX_SPAWN_SETSID) through a small exec helper, keel-port-exec, that sets
 * PR_SET_PDEATHSIG(SIGKILL), checks that its parent is still the node, applies
 * the resource limits and then execs the program: when the node dies, even by
 * SIGKILL, the kernel kills the program. The death signal fires when the
 * thread that spawned it ends; ports are spawned by the node's one spawner
 * thread, which is started at the first open and never ends while the OS
 * process lives (decision 0038); keel_rt_stop SIGKILLs every program still
 * running through its owner's exit. Processes the program forks itself
 * do not inherit the death signal: keel_port_close signals the whole group,
 * but a node killed by SIGKILL only takes the program itself down. The
 * kernel also clears the death signal when the program execs a set-user-ID,
 * set-group-ID or file-capability binary (as the program itself or later):
 * such a program outlives a SIGKILLed node. The program inherits no
 * descriptor of the node but stdio (the helper closes the rest).
 * The helper is found through keel_port_opts.exec_helper, else
 * $KEEL_PORT_EXEC, else where keel installed it (LIBEXECDIR/keel/), else in
 * the build tree keel was built in; a name without a slash (given or in
 * $KEEL_PORT_EXEC) is looked up in the node's PATH.
 *
 * SUPERVISION. keel_port_child_start is a supervisor start function (a child
 * spec's .start, its .arg a keel_port_child): a process that owns the port,
 * hands the output to a callback, and exits when the program ends with the
 * program's end as its reason: normal for exit 0, "exit 3", "signal 11
 * (SIGSEGV)". A supervisor restarts it like any child. Its shutdown sends
 * SIGTERM to the program's group and waits; past the child spec's shutdown
 * time the supervisor kills the process, which SIGKILLs the group. SIGKILL
 * is asynchronous and that exit hook does not wait for the program to die,
 * so a restarted program can briefly overlap the one it replaces (mind
 * exclusive resources: a port number, a lock file).
 *
 * THREADS. Only the owner calls open, write, close_stdin, kill and close.
 * keel_port_os_pid and keel_port_id read fields fixed at open: any thread,
 * while the port is open (the owner's close frees it). keel_port_event_of
 * and keel_port_status_format touch only their arguments: any thread.
 *
 * COST. The spawner thread starts the helper with posix_spawn, a
 * vfork-style clone that copies no page tables, so the cost of an open does
 * not grow with the node's memory, and the owner's scheduler runs other
 * processes while it waits (decision 0038). The helper's exec, then the
 * program's, are the rest of an open's cost.
 *
 * PLATFORM. Linux 5.4+ (the program's end is watched with waitid on a
 * pidfd) and glibc 2.29+.
 */
#ifndef KEEL_PORT_H
#define KEEL_PORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "keel/message.h"
#include "keel/process.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct keel_port keel_port_t;

/* keel_msg_proto of every port message (reserved range, keel/message.h). */
enum { KEEL_PROTO_PORT = 9 };

/* keel_msg_tag of port messages. */
enum { KEEL_PORT_STDOUT = 1, KEEL_PORT_STDERR = 2, KEEL_PORT_EXIT = 3 };

/* keel_port_event.flags */
#define KEEL_PORT_CUT   1u /* a line longer than max_line, cut to max_line bytes */
#define KEEL_PORT_NOEOL 2u /* the stream's last line, which had no newline */

/* What becomes of one of the program's output streams. */
typedef enum keel_port_mode {
  KEEL_PORT_LINES = 0, /* one message per line, without its newline (the default) */
  KEEL_PORT_CHUNKS,    /* one message per read, as the bytes came */
  KEEL_PORT_IGNORE,    /* /dev/null */
  KEEL_PORT_INHERIT    /* the node's own stream */
} keel_port_mode;

/* A resource limit applied to the program before it starts (setrlimit). */
typedef struct keel_port_rlimit {
  int resource;  /* RLIMIT_CPU, RLIMIT_AS, RLIMIT_NOFILE, ... (<sys/resource.h>) */
  uint64_t soft; /* RLIM_INFINITY for none */
  uint64_t hard;
} keel_port_rlimit;

typedef struct keel_port_opts {
  const char *const *argv;         /* required: the program (searched in PATH when it has no '/')
                                      and its arguments, NULL-terminated; copied */
  const char *const *env;          /* NULL-terminated "NAME=value" entries added to the
                                      environment (replacing a variable of that name), or NULL;
                                      copied */
  bool clean_env;                  /* start from an empty environment instead of the node's */
  const char *cwd;                 /* working directory; NULL: the node's; copied */
  const keel_port_rlimit *rlimits; /* nrlimits entries, copied */
  size_t nrlimits;
  keel_port_mode stdout_mode; /* 0: lines */
  keel_port_mode stderr_mode; /* 0: lines */
  size_t max_line;            /* lines mode: longest line delivered whole; 0: 4096 */
  size_t max_pending;         /* pause reading at this many messages in the owner's
                                 mailbox; 0: 64 */
  const char *exec_helper;    /* path of keel-port-exec; NULL: see NO ORPHANS above */
} keel_port_opts;

/* Starts the program and makes the caller its owner (see OWNER). *out gets
 * the port, owned by the caller until keel_port_close. A program that cannot
 * be executed (not found, not executable) still starts the helper: the port
 * then ends with "exit 127" and a line on its stderr; a resource limit the
 * helper may not set (raising a hard limit without the privilege) ends it
 * with "exit 126" likewise (125: the node was already gone). Errors:
 * KEEL_ENOTPROC, KEEL_EINVAL (no argv, a bad mode, a bad rlimit), KEEL_ENOENT
 * (no exec helper found, or cwd does not exist or cannot be entered),
 * KEEL_EIO (the spawn failed otherwise), KEEL_ENOMEM. */
int keel_port_open(const keel_port_opts *opts, keel_port_t **out);

/* Writes len bytes of data (copied) to the program's stdin and waits until
 * they are written to the pipe, at most timeout_ms (0: forever, KEEL_NOWAIT
 * is refused). A program that does not read blocks the writer: that is the
 * backpressure on input. On KEEL_ETIMEDOUT the data stays queued and may
 * still be written. Owner only. Errors: KEEL_EINVAL, KEEL_EPERM (not the
 * owner), KEEL_ESTATE (stdin closed), KEEL_EIO (the program closed its stdin
 * or exited), KEEL_ETIMEDOUT. */
int keel_port_write(keel_port_t *port, const void *data, size_t len, int64_t timeout_ms);

/* Closes the program's stdin (it reads end of file). Idempotent. Owner only.
 * Errors: KEEL_EINVAL, KEEL_EPERM. */
int keel_port_close_stdin(keel_port_t *port);

/* Sends signum to the program's process group. Owner only. Errors:
 * KEEL_EINVAL, KEEL_EPERM, KEEL_ESTATE (the program has exited). */
int keel_port_kill(keel_port_t *port, int signum);

/* The program's OS pid (also its process group id); 0 for NULL. It stays
 * the same after the program exited, when the pid may name another process:
 * signal it through keel_port_kill, which knows. Any thread (see THREADS). */
int keel_port_os_pid(const keel_port_t *port);

/* A port's identity, as carried by its messages (keel_port_event.port_id);
 * 0 for NULL. Any thread (see THREADS). */
uint64_t keel_port_id(const keel_port_t *port);

/* How a program ended. */
typedef struct keel_port_status {
  int exit_code; /* when not signalled; -1: unknown (see below) */
  int signal;    /* the signal that ended it, 0 when it exited */
} keel_port_status;

/* The status is unknown (exit_code -1, signal 0) when the kernel reaped the
 * program before keel could: the application set SIGCHLD to SIG_IGN. The
 * port still ends (EXIT, keel_port_close); a keel_port_child's reason is
 * then "unknown", not normal. */

/* Formats an end as a reason: "normal" (exit 0), "exit 3", "signal 11
 * (SIGSEGV)", "unknown". Returns buf (always NUL-terminated; 48 bytes are enough). Any
 * thread. */
char *keel_port_status_format(const keel_port_status *st, char *buf, size_t len);

/* Stops the program if it still runs (SIGTERM to its group, then SIGKILL when
 * it has not exited within timeout_ms: 0 = 5000, KEEL_INFINITY = no SIGKILL,
 * KEEL_NOWAIT = SIGKILL at once), frees the port and unpins the caller. It
 * returns once the program has exited (after a SIGKILL that is prompt, unless
 * the program is stuck in an uninterruptible sleep), not when its output
 * ends: a descendant that left the group (setsid) and still holds the pipes
 * is given at most 100 ms, then the pipes are closed under it. *st (may be
 * NULL) gets how it ended. Messages already in the mailbox stay there (the
 * caller's to receive or leave); what the program writes while it is being
 * closed is read and dropped, and no EXIT message is sent for a port closed
 * this way: *st says how it ended. Owner only. Errors: KEEL_EINVAL, KEEL_EPERM
 * (the port is left as it was). */
int keel_port_close(keel_port_t *port, int64_t timeout_ms, keel_port_status *st);

/* A decoded port message. Everything points into the message: valid while the
 * message lives. */
typedef struct keel_port_event {
  uint64_t port_id; /* compare with keel_port_id */
  int tag;          /* KEEL_PORT_STDOUT, KEEL_PORT_STDERR or KEEL_PORT_EXIT */
  unsigned flags;   /* KEEL_PORT_CUT, KEEL_PORT_NOEOL */
  const char *data; /* output bytes (NUL-terminated for convenience); EXIT: the
                       reason text ("exit 3", "signal 9 (SIGKILL)", "normal") */
  size_t len;
  keel_port_status status; /* EXIT only */
} keel_port_event;

/* Decodes m. Any thread may call it (it reads only the message). Errors:
 * KEEL_EINVAL (NULL, not a port message, or one whose length field does not
 * fit its size). */
int keel_port_event_of(const keel_msg_t *m, keel_port_event *ev);

/* Takes the oldest message of `port` from the caller's mailbox (other
 * messages stay queued), waiting up to timeout_ms (keel_receive's rules).
 * The caller owns *out. Errors: as keel_receive, KEEL_EINVAL. */
int keel_port_receive(const keel_port_t *port, keel_msg_t **out, int64_t timeout_ms);

/* ---- a port as a supervised child ------------------------------------------ */

/* The arg of keel_port_child_start (borrowed for the child's life). */
typedef struct keel_port_child {
  keel_port_opts port;
  /* Called in the child process for every output line or chunk (never for
   * EXIT); NULL drops the output. It may block (it holds back reading, as
   * backpressure does). */
  void (*on_output)(const keel_port_event *ev, void *ud);
  void *ud;
} keel_port_child;

/* A keel_sup_start_fn: {.id = "conv", .start = keel_port_child_start,
 * .arg = &child, .shutdown = 2000}. Starts a process linked to the caller that
 * opens the port and returns once the program has started (or the open
 * failed: its error is returned). The process exits with the program's end
 * (normal, "exit N", "signal N (NAME)"); a shutdown or other exit signal
 * stops the program (SIGTERM to the group, waiting as long as the
 * supervisor's shutdown time allows), then exits with that signal's reason. */
int keel_port_child_start(void *arg, const void *args, size_t args_len, keel_pid_t *pid);

#ifdef __cplusplus
}
#endif
#endif
