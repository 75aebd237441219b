/* port.c - OS processes as children (keel/port.h).
 *
 * A port is an external program owned by one keel process. keel_port_open
 * pins the owner to its scheduler (keel_io_begin, held until close) and
 * starts the program with posix_spawn (a vfork-style clone: no copy of the
 * node's page tables, decision 0038) through the exec helper keel-port-exec
 * (src/otp/exec/), which arms PR_SET_PDEATHSIG so the program dies with the
 * node. The program's end is watched with a pidfd polled on the owner's
 * scheduler loop. Every handle of the port (the pidfd's poll, three pipes, a
 * resume timer) lives on that loop, and every callback runs on the owner's
 * scheduler thread, the only thread that touches the port: no locks.
 *
 * Output is cut into lines or chunks in the read callbacks and sent to the
 * owner as KEEL_PROTO_PORT messages. The EXIT message goes last, once the
 * program has exited and both pipes reached end of file, so an owner never
 * sees output after the end. Backpressure reads the owner's mailbox length
 * (keel_rt_process_info): at max_pending messages the pipes stop being read,
 * and a 5 ms timer looks again until the mailbox is below half of it;
 * the program blocks in write() meanwhile.
 *
 * The owner may die without closing. Each process with open ports keeps
 * them in a list in its process-local slot KEEL_LOCAL_PORTS, with one exit
 * hook (keel_on_exit) that SIGKILLs every program's group and closes its
 * handles; the last close callback frees the port. The hook runs on the
 * owner's scheduler (it was pinned), or at keel_rt_stop on the stopping
 * thread while the loops still exist (they are run once more to close).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h> /* environ (_GNU_SOURCE) */

#include "keel/error.h"
#include "keel/io.h"
#include "keel/message.h"
#include "keel/port.h"
#include "keel/process.h"
#include "keel/runtime.h"
#include "keel/timer.h"

#define DEFAULT_MAX_LINE    4096
#define DEFAULT_MAX_PENDING 64
#define DEFAULT_CLOSE_MS    5000
#define READ_BUF            65536
#define RESUME_POLL_MS      5
#define DRAIN_MS            100 /* keel_port_close: end of file after the exit */

/* Newer than the glibc keel needs (2.29): pidfd_open's wrapper and the
 * P_PIDFD name are glibc 2.36, so the system call and the kernel's value
 * (<linux/wait.h>, which clashes with <sys/wait.h>) are used directly. The
 * kernel needs 5.4 (waitid on a pidfd). */
#define PORT_P_PIDFD ((idtype_t)3)
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434 /* the same on every architecture (Linux 5.3) */
#endif

static int pidfd_open_(pid_t pid) {
  return (int)syscall(SYS_pidfd_open, pid, 0);
}

/* The payload of every port message: this header, then the bytes, then a
 * NUL. Self-contained: it never points into the port. */
typedef struct port_msg_hdr {
  uint64_t port_id;
  uint32_t flags;
  int32_t exit_code;
  int32_t signal;
  uint32_t len;
} port_msg_hdr;

typedef struct out_stream {
  uv_pipe_t pipe;
  keel_port_t *port;
  int tag; /* KEEL_PORT_STDOUT / KEEL_PORT_STDERR */
  keel_port_mode mode;
  bool piped;    /* a pipe was created (lines or chunks) */
  bool reading;  /* read started and not paused */
  bool eof;      /* end of file seen (or never piped) */
  bool dropping; /* the rest of a cut line is being dropped */
  char *line;    /* lines mode: the line so far (max_line bytes) */
  size_t n;
  char buf[READ_BUF]; /* libuv reads here */
} out_stream;

typedef struct port_set port_set;

struct keel_port {
  uv_poll_t exit_watch; /* the pidfd: readable once the program has exited */
  int pidfd;            /* -1 until spawned */
  bool watching;        /* exit_watch was initialised */
  uv_pipe_t in;
  uv_timer_t resume;
  out_stream out[2];
  keel_io_t pin; /* the owner's pin, from open to close */
  keel_pid_t owner;
  uint64_t id;
  int os_pid;
  size_t max_line, max_pending;
  bool in_open; /* stdin not closed yet */
  bool exited;
  bool exit_sent;
  bool paused;
  bool writing;  /* the owner waits in keel_port_write: reading never pauses */
  bool closing;  /* handles are being closed; no more messages */
  bool draining; /* in keel_port_close: output read and dropped, no messages */
  keel_port_status status;
  keel_io_t *waiter; /* the owner waiting in keel_port_close (exit, end of file) */
  int handles;       /* open handles; the last close callback frees the port */
  port_set *set;
  keel_port_t *next, **pprev; /* in the owner's port_set */
};

typedef struct spawn_job spawn_job;

/* The owner's open ports, and the open under way, if any: keel_rt_stop may
 * end the owner while it waits on the spawner (exits are held, but a stop
 * destroys every process), and its exit hook then hands the job over to the
 * spawner and tears the half-open port down. */
struct port_set {
  keel_port_t *head;
  spawn_job *opening;
  keel_port_t *opening_port;
};

static void job_abandon(spawn_job *j);

/* ---- messages ---------------------------------------------------------------- */

static void send_msg(keel_port_t *p, int tag, unsigned flags, const char *data, size_t len) {
  if (p->closing || p->draining) return;
  keel_msg_t *m = keel_msg_new((uint32_t)tag, sizeof(port_msg_hdr) + len + 1);
  if (!m) return; /* out of memory: the output is lost, as a dropped line */
  port_msg_hdr *h = keel_msg_data(m);
  *h = (port_msg_hdr){.port_id = p->id,
                      .flags = flags,
                      .exit_code = p->status.exit_code,
                      .signal = p->status.signal,
                      .len = (uint32_t)len};
  char *d = (char *)(h + 1);
  if (len) memcpy(d, data, len);
  d[len] = '\0';
  keel_msg_set_proto(m, KEEL_PROTO_PORT);
  keel_send(p->owner, m);
}

int keel_port_event_of(const keel_msg_t *m, keel_port_event *ev) {
  if (!m || !ev || keel_msg_kind_of(m) != KEEL_MSG_USER || keel_msg_proto(m) != KEEL_PROTO_PORT ||
      keel_msg_size(m) < sizeof(port_msg_hdr) + 1)
    return KEEL_EINVAL;
  const port_msg_hdr *h = keel_msg_data(m);
  /* the length must fit the message: a forged or cut copy must not make
   * ev->data reach past its end */
  if (h->len > keel_msg_size(m) - sizeof(port_msg_hdr) - 1) return KEEL_EINVAL;
  *ev = (keel_port_event){.port_id = h->port_id,
                          .tag = (int)keel_msg_tag(m),
                          .flags = h->flags,
                          .data = (const char *)(h + 1),
                          .len = h->len,
                          .status = {.exit_code = h->exit_code, .signal = h->signal}};
  return 0;
}

static bool match_port(const keel_msg_t *m, void *arg) {
  keel_port_event ev;
  return keel_port_event_of(m, &ev) == 0 && ev.port_id == *(const uint64_t *)arg;
}

int keel_port_receive(const keel_port_t *port, keel_msg_t **out, int64_t timeout_ms) {
  if (!port || !out) return KEEL_EINVAL;
  uint64_t id = port->id;
  return keel_receive_match(match_port, &id, out, timeout_ms);
}

/* sigabbrev_np is glibc 2.32: the signals a program commonly ends with. */
static const char *sig_name(int sig) {
  switch (sig) {
  case SIGHUP: return "HUP";
  case SIGINT: return "INT";
  case SIGQUIT: return "QUIT";
  case SIGILL: return "ILL";
  case SIGTRAP: return "TRAP";
  case SIGABRT: return "ABRT";
  case SIGBUS: return "BUS";
  case SIGFPE: return "FPE";
  case SIGKILL: return "KILL";
  case SIGUSR1: return "USR1";
  case SIGSEGV: return "SEGV";
  case SIGUSR2: return "USR2";
  case SIGPIPE: return "PIPE";
  case SIGALRM: return "ALRM";
  case SIGTERM: return "TERM";
  case SIGXCPU: return "XCPU";
  case SIGXFSZ: return "XFSZ";
  case SIGSYS: return "SYS";
  default: return NULL;
  }
}

char *keel_port_status_format(const keel_port_status *st, char *buf, size_t len) {
  if (!buf || !len) return buf;
  if (!st || (st->exit_code < 0 && !st->signal)) {
    snprintf(buf, len, "unknown");
  } else if (st->signal) {
    const char *name = sig_name(st->signal);
    snprintf(buf, len, "signal %d (SIG%s)", st->signal, name ? name : "?");
  } else if (st->exit_code) {
    snprintf(buf, len, "exit %d", st->exit_code);
  } else {
    snprintf(buf, len, "normal");
  }
  return buf;
}

/* ---- end of the program ------------------------------------------------------ */

/* The EXIT message once the program exited and both streams ended; it wakes
 * an owner waiting in keel_port_close. */
static void maybe_finish(keel_port_t *p) {
  if (!p->exited) return;
  if (p->waiter) keel_io_ready(p->waiter, 0); /* keel_port_close: the exit, then end of file */
  if (!p->exited || !p->out[0].eof || !p->out[1].eof) return;
  if (!p->exit_sent) {
    p->exit_sent = true;
    char why[48];
    keel_port_status_format(&p->status, why, sizeof why);
    send_msg(p, KEEL_PORT_EXIT, 0, why, strlen(why));
  }
}

/* The pidfd is readable: the program has exited. Reaping it here (and only
 * here, or in reap_later once the port is torn down) keeps its pid, and so
 * its group id, from being reused while the port may still signal it. */
static void on_exit_ready(uv_poll_t *h, int status, int events) {
  (void)events;
  keel_port_t *p = h->data;
  siginfo_t si;
  memset(&si, 0, sizeof si);
  int rc = waitid(PORT_P_PIDFD, (id_t)p->pidfd, &si, WEXITED | WNOHANG);
  if (rc != 0 && errno == EINTR) return;
  if (rc == 0 && si.si_pid == 0) {
    if (status >= 0) return; /* not yet (a spurious wake-up) */
    /* The poll failed: nothing would tell us of the exit. The program is
     * ended now (still unreaped, so -pid is its group) and reaped; SIGKILL
     * bounds the wait. */
    kill(-p->os_pid, SIGKILL);
    while ((rc = waitid(PORT_P_PIDFD, (id_t)p->pidfd, &si, WEXITED)) != 0 && errno == EINTR) {
    }
  }
  /* Any other failure is final: the pidfd stays readable, and a
   * level-triggered poll would spin on it. ECHILD: the kernel reaped the
   * program itself (the application set SIGCHLD to SIG_IGN); its status is
   * lost, and so is the group id, which may name another group now: no
   * signal is sent to it. */
  uv_poll_stop(h);
  p->exited = true;
  if (rc != 0) {
    p->status = (keel_port_status){.exit_code = -1, .signal = 0};
    maybe_finish(p);
    return;
  }
  /* The leader is reaped. What is left of its group (a background job
   * holding the pipes open) dies now, while the group id can only be this
   * program's: no later signal to -pid is ever sent, since the id could by
   * then name an unrelated group. */
  kill(-p->os_pid, SIGKILL);
  p->status.exit_code = si.si_code == CLD_EXITED ? si.si_status : 0;
  p->status.signal = si.si_code == CLD_KILLED || si.si_code == CLD_DUMPED ? si.si_status : 0;
  maybe_finish(p);
}

/* ---- output ------------------------------------------------------------------ */

static out_stream *stream_of(uv_handle_t *h) {
  keel_port_t *p = h->data;
  return h == (uv_handle_t *)&p->out[0].pipe ? &p->out[0] : &p->out[1];
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  out_stream *s = stream_of(h);
  *buf = uv_buf_init(s->buf, sizeof s->buf);
}

static void deliver_lines(out_stream *s, const char *data, size_t len) {
  keel_port_t *p = s->port;
  while (len) {
    const char *nl = memchr(data, '\n', len);
    size_t take = nl ? (size_t)(nl - data) : len;
    if (!s->dropping) {
      size_t room = p->max_line - s->n;
      size_t copy = take < room ? take : room;
      memcpy(s->line + s->n, data, copy);
      s->n += copy;
      if (take > room) { /* longer than max_line: deliver it cut, drop the rest */
        send_msg(p, s->tag, KEEL_PORT_CUT, s->line, s->n);
        s->n = 0;
        s->dropping = true;
      }
    }
    if (!nl) return;
    if (!s->dropping) send_msg(p, s->tag, 0, s->line, s->n);
    s->n = 0;
    s->dropping = false;
    data = nl + 1;
    len -= take + 1;
  }
}

static void set_reading(keel_port_t *p, bool on);

static size_t owner_mailbox(keel_port_t *p) {
  keel_proc_info info;
  return keel_rt_process_info(p->owner, &info) == 0 ? (size_t)info.mailbox_len : 0;
}

static void resume(keel_port_t *p) {
  if (!p->paused) return;
  uv_timer_stop(&p->resume);
  p->paused = false;
  set_reading(p, true);
}

static void on_resume_tick(uv_timer_t *t) {
  keel_port_t *p = t->data;
  if (p->writing || owner_mailbox(p) < (p->max_pending + 1) / 2) resume(p);
}

/* No pause while the owner is blocked in keel_port_write (or close): it
 * cannot drain its mailbox then, and a program that echoes (cat) would
 * block writing its output, stop reading its input, and the write would
 * never end. The mailbox grows past max_pending for that write's echo. */
static void check_backpressure(keel_port_t *p) {
  if (p->paused || p->writing || p->closing || p->draining || owner_mailbox(p) < p->max_pending)
    return;
  p->paused = true;
  set_reading(p, false);
  uv_timer_start(&p->resume, on_resume_tick, RESUME_POLL_MS, RESUME_POLL_MS);
}

static void on_read(uv_stream_t *h, ssize_t nread, const uv_buf_t *buf) {
  (void)buf;
  out_stream *s = stream_of((uv_handle_t *)h);
  keel_port_t *p = s->port;
  if (nread > 0) {
    if (s->mode == KEEL_PORT_CHUNKS)
      send_msg(p, s->tag, 0, s->buf, (size_t)nread);
    else
      deliver_lines(s, s->buf, (size_t)nread);
    check_backpressure(p);
    return;
  }
  if (nread == 0) return; /* EAGAIN */
  /* end of file or a read error: the stream is over */
  if (s->mode == KEEL_PORT_LINES && s->n && !s->dropping)
    send_msg(p, s->tag, KEEL_PORT_NOEOL, s->line, s->n);
  s->n = 0;
  uv_read_stop(h);
  s->reading = false;
  s->eof = true;
  maybe_finish(p);
}

static void set_reading(keel_port_t *p, bool on) {
  for (int i = 0; i < 2; i++) {
    out_stream *s = &p->out[i];
    if (!s->piped || s->eof || s->reading == on) continue;
    if (on)
      s->reading = uv_read_start((uv_stream_t *)&s->pipe, on_alloc, on_read) == 0;
    else {
      uv_read_stop((uv_stream_t *)&s->pipe);
      s->reading = false;
    }
  }
}

/* ---- closing and freeing --------------------------------------------------- */

static void port_free(keel_port_t *p) {
  if (p->pidfd >= 0) close(p->pidfd); /* its poll handle is closed by now */
  free(p->out[0].line);
  free(p->out[1].line);
  free(p);
}

/* Every handle's data is the port. A handle closed early (stdin) only
 * counts down; the port is freed by the last close once it is closing. */
static void on_closed(uv_handle_t *h) {
  keel_port_t *p = h->data;
  if (--p->handles == 0 && p->closing) port_free(p);
}

static void close_handle(keel_port_t *p, uv_handle_t *h) {
  if (!uv_is_closing(h)) {
    p->handles++;
    uv_close(h, on_closed);
  }
}

static void set_remove(keel_port_t *p) {
  if (!p->pprev) return;
  *p->pprev = p->next;
  if (p->next) p->next->pprev = p->pprev;
  p->next = NULL;
  p->pprev = NULL;
}

/* A program torn down while it runs was sent SIGKILL, but its exit watch
 * is closing: a worker of the blocking pool waits for it instead, or it
 * would stay a zombie for the node's life. At keel_rt_stop the loops run once more, which waits for
 * it too (the death signal has killed it by then). A program stuck in an
 * uninterruptible sleep holds a pool thread until it dies. */
typedef struct reaper {
  uv_work_t req;
  pid_t pid;
} reaper;

static void reap_work(uv_work_t *req) {
  pid_t pid = ((reaper *)req)->pid;
  while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
  }
}

static void reap_done(uv_work_t *req, int status) {
  (void)status;
  free(req);
}

static void reap_later(keel_port_t *p) {
  reaper *r = malloc(sizeof *r);
  if (!r) return; /* out of memory: a zombie until the node exits */
  r->pid = p->os_pid;
  if (uv_queue_work(p->exit_watch.loop, &r->req, reap_work, reap_done) != 0) free(r);
}

/* Closes every handle; the last close callback frees the port. The caller
 * has dealt with the program (it exited, or was sent SIGKILL). */
static void port_teardown(keel_port_t *p) {
  p->closing = true;
  p->waiter = NULL;
  set_remove(p);
  p->handles++; /* held while closing, so a synchronous callback cannot free early */
  if (p->watching) {
    if (!p->exited) reap_later(p);
    close_handle(p, (uv_handle_t *)&p->exit_watch);
  }
  close_handle(p, (uv_handle_t *)&p->in);
  close_handle(p, (uv_handle_t *)&p->out[0].pipe);
  close_handle(p, (uv_handle_t *)&p->out[1].pipe);
  close_handle(p, (uv_handle_t *)&p->resume);
  if (--p->handles == 0) port_free(p);
}

/* The owner's exit hook: it died with ports open. */
static void owner_gone(void *arg) {
  port_set *set = arg;
  if (set->opening) {
    job_abandon(set->opening);
    set->opening_port->exited = true; /* no program of its own: the job has it */
    port_teardown(set->opening_port);
  }
  while (set->head) {
    keel_port_t *p = set->head;
    if (!p->exited) kill(-p->os_pid, SIGKILL); /* the group: descendants too */
    port_teardown(p);
  }
  free(set);
}

static port_set *owner_set(void) {
  port_set *set = keel_local_get(KEEL_LOCAL_PORTS);
  if (set) return set;
  set = calloc(1, sizeof *set);
  if (!set) return NULL;
  if (keel_on_exit(owner_gone, set) != 0) {
    free(set);
    return NULL;
  }
  keel_local_set(KEEL_LOCAL_PORTS, set);
  return set;
}

/* ---- spawning ------------------------------------------------------------------ */

static const char *find_helper(const char *given) {
  if (given) return given;
  const char *env = getenv("KEEL_PORT_EXEC");
  if (env && *env) return env;
#ifdef KEEL_PORT_EXEC_INSTALLED
  if (access(KEEL_PORT_EXEC_INSTALLED, X_OK) == 0) return KEEL_PORT_EXEC_INSTALLED;
#endif
#ifdef KEEL_PORT_EXEC_BUILD
  if (access(KEEL_PORT_EXEC_BUILD, X_OK) == 0) return KEEL_PORT_EXEC_BUILD;
#endif
  return NULL;
}

/* The helper's argv: helper --ppid N [--rlimit R:S:H]... -- argv...; the
 * strings, copies (the spawner may use them after the owner is gone), live
 * in one block after the pointers. NULL on ENOMEM. */
static char **helper_argv(const char *helper, const keel_port_opts *o) {
  size_t nargs = 0;
  while (o->argv[nargs])
    nargs++;
  size_t nptr = 4 + 2 * o->nrlimits + nargs + 1;
  size_t strbytes = 24 + 72 * o->nrlimits + strlen(helper) + 1;
  for (size_t i = 0; i < nargs; i++)
    strbytes += strlen(o->argv[i]) + 1;
  char **v = malloc(nptr * sizeof *v + strbytes);
  if (!v) return NULL;
  char *s = (char *)(v + nptr);
  size_t k = 0;
  v[k++] = s;
  s = stpcpy(s, helper) + 1;
  v[k++] = "--ppid";
  v[k++] = s;
  s += snprintf(s, 24, "%ld", (long)getpid()) + 1;
  for (size_t i = 0; i < o->nrlimits; i++) {
    const keel_port_rlimit *r = &o->rlimits[i];
    char soft[24], hard[24];
    if (r->soft == (uint64_t)RLIM_INFINITY)
      strcpy(soft, "inf");
    else
      snprintf(soft, sizeof soft, "%llu", (unsigned long long)r->soft);
    if (r->hard == (uint64_t)RLIM_INFINITY)
      strcpy(hard, "inf");
    else
      snprintf(hard, sizeof hard, "%llu", (unsigned long long)r->hard);
    v[k++] = "--rlimit";
    v[k++] = s;
    s += snprintf(s, 72, "%d:%s:%s", r->resource, soft, hard) + 1;
  }
  v[k++] = "--";
  for (size_t i = 0; i < nargs; i++) {
    v[k++] = s;
    s = stpcpy(s, o->argv[i]) + 1;
  }
  v[k] = NULL;
  return v;
}

static bool same_name(const char *a, const char *b) {
  while (*a && *a != '=' && *a == *b) {
    a++;
    b++;
  }
  return (*a == '=' || !*a) && (*b == '=' || !*b);
}

/* The program's environment: the node's (unless clean_env) with the
 * overrides replacing variables of the same name. One block, the strings
 * copied after the pointers (as helper_argv); the caller's to free. NULL on
 * ENOMEM. */
static char **build_env(const keel_port_opts *o) {
  size_t nbase = 0, nover = 0;
  if (!o->clean_env)
    while (environ[nbase])
      nbase++;
  if (o->env)
    while (o->env[nover])
      nover++;
  char **v = malloc((nbase + nover + 1) * sizeof *v);
  if (!v) return NULL;
  size_t k = 0;
  for (size_t i = 0; i < nbase; i++) {
    bool overridden = false;
    for (size_t j = 0; j < nover && !overridden; j++)
      overridden = same_name(environ[i], o->env[j]);
    if (!overridden) v[k++] = environ[i];
  }
  for (size_t j = 0; j < nover; j++)
    v[k++] = (char *)o->env[j];
  size_t bytes = 0;
  for (size_t i = 0; i < k; i++)
    bytes += strlen(v[i]) + 1;
  char **c = malloc((k + 1) * sizeof *c + bytes);
  if (c) {
    char *s = (char *)(c + k + 1);
    for (size_t i = 0; i < k; i++) {
      c[i] = s;
      s = stpcpy(s, v[i]) + 1;
    }
    c[k] = NULL;
  }
  free(v);
  return c;
}

static bool valid_mode(keel_port_mode m) {
  return m == KEEL_PORT_LINES || m == KEEL_PORT_CHUNKS || m == KEEL_PORT_IGNORE ||
         m == KEEL_PORT_INHERIT;
}

/* The program's three standard descriptors: a new pipe for stdin and for
 * each stream read as lines or chunks (child[fd] is the program's end,
 * parent[fd] ours), /dev/null for an ignored stream, the node's own for an
 * inherited one. Every pipe end is close-on-exec: the dup2 into 0-2 in the
 * child clears the flag on the copy only, so no other port's spawn, on
 * another thread, inherits them. */
typedef struct spawn_fds {
  int parent[3], child[3];
} spawn_fds;

static void fds_close(int fds[3]) {
  for (int i = 0; i < 3; i++)
    if (fds[i] >= 0) close(fds[i]);
}

/* Moves a pipe end found in 0-2 (the node runs with its stdio closed) to
 * 3 or above: the dup2s into the program's 0-2 would clobber it there, and
 * libuv refuses to close a descriptor below 3. 0 or -1 (errno). */
static int lift(int *fd) {
  if (*fd > 2) return 0;
  int up = fcntl(*fd, F_DUPFD_CLOEXEC, 3);
  if (up < 0) return -1;
  close(*fd);
  *fd = up;
  return 0;
}

static int fds_make(const keel_port_mode modes[2], spawn_fds *f, posix_spawn_file_actions_t *fa) {
  for (int i = 0; i < 3; i++)
    f->parent[i] = f->child[i] = -1;
  for (int fd = 0; fd < 3; fd++) {
    keel_port_mode mode = fd ? modes[fd - 1] : KEEL_PORT_LINES; /* stdin: always a pipe */
    if (mode == KEEL_PORT_INHERIT) continue;
    if (mode == KEEL_PORT_IGNORE) {
      if (posix_spawn_file_actions_addopen(fa, fd, "/dev/null", O_WRONLY, 0) != 0) return ENOMEM;
      continue;
    }
    int ends[2]; /* [0] reads, [1] writes */
    if (pipe2(ends, O_CLOEXEC) != 0) return errno;
    if (lift(&ends[0]) != 0 || lift(&ends[1]) != 0) {
      int err = errno;
      close(ends[0]);
      close(ends[1]);
      return err;
    }
    f->child[fd] = fd ? ends[1] : ends[0];
    f->parent[fd] = fd ? ends[0] : ends[1];
    if (posix_spawn_file_actions_adddup2(fa, f->child[fd], fd) != 0) return ENOMEM;
  }
  return 0;
}

/* Starts the helper with posix_spawn: glibc clones with CLONE_VM|CLONE_VFORK,
 * so the node's page tables are not copied (a fork's cost grows with the
 * node) and this thread waits only until the helper's exec has begun. The
 * child gets its own session (setsid: its own group, as uv_spawn's
 * UV_PROCESS_DETACHED), default signal handlers and an empty signal mask.
 * Returns 0 or an errno value; on success *pid and f->parent are set. */
static int spawn_helper(const keel_port_mode modes[2], char **args, char **env, const char *cwd,
                        spawn_fds *f, pid_t *pid) {
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t at;
  if (posix_spawn_file_actions_init(&fa) != 0) return ENOMEM;
  if (posix_spawnattr_init(&at) != 0) {
    posix_spawn_file_actions_destroy(&fa);
    return ENOMEM;
  }
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  int err = fds_make(modes, f, &fa);
  if (!err && cwd) err = posix_spawn_file_actions_addchdir_np(&fa, cwd);
  if (!err)
    err = posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK |
                                            POSIX_SPAWN_SETSIGDEF);
  if (!err) err = posix_spawnattr_setsigmask(&at, &none);
  if (!err) err = posix_spawnattr_setsigdefault(&at, &all);
  /* posix_spawnp: a helper named without a slash is looked up in the
   * node's PATH (as uv_spawn's execvp did); a path is used as it is */
  if (!err) err = posix_spawnp(pid, args[0], &fa, &at, args, env);
  posix_spawnattr_destroy(&at);
  posix_spawn_file_actions_destroy(&fa);
  fds_close(f->child); /* the program has its copies */
  if (err) fds_close(f->parent);
  return err;
}

/* ---- the spawner thread ---------------------------------------------------------- */

/* posix_spawn holds its calling thread until the helper's exec has begun
 * (about a millisecond here, more under load): one thread of the node's own
 * does it, so no scheduler stops for a spawn. That thread is also the
 * programs' parent thread, which PR_SET_PDEATHSIG watches (the signal comes
 * when the thread that created the child ends, not the process): it is
 * started once per OS process and never ends, so the death signal means the
 * node's death, not a thread's (decision 0038). A forked copy of the node
 * has no such thread and starts its own. */
static struct {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  spawn_job *head, *tail;
  pid_t pid; /* the OS process the thread runs in; 0: none yet */
} spawner = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, NULL, 0};

struct spawn_job {
  struct spawn_job *next;
  keel_port_mode modes[2]; /* stdout's, stderr's */
  char **args, **env;      /* helper_argv's, build_env's: owned, strings too */
  char *cwd;               /* owned; NULL: the node's */
  spawn_fds fds;
  pid_t pid;
  int err;
  bool done;      /* under spawner.lock: the owner owns the job after it */
  bool abandoned; /* under spawner.lock: the owner is gone; the spawner ends the job */
  int done_fd;    /* an eventfd the spawner writes once done; -1: none */
};

/* A job is on the heap, not on its owner's stack: keel_rt_stop destroys an
 * owner waiting on it (its stack is unmapped), and the spawner may still be
 * running or about to run the job. Whoever holds it last frees it: the
 * owner once done, the spawner once abandoned. */
static spawn_job *job_new(const keel_port_opts *o, const char *helper) {
  spawn_job *j = calloc(1, sizeof *j);
  if (!j) return NULL;
  j->done_fd = -1;
  j->modes[0] = o->stdout_mode;
  j->modes[1] = o->stderr_mode;
  j->args = helper_argv(helper, o);
  j->env = j->args ? build_env(o) : NULL;
  j->cwd = o->cwd && j->env ? strdup(o->cwd) : NULL;
  if (!j->env || (o->cwd && !j->cwd)) {
    free(j->args);
    free(j->env);
    free(j);
    return NULL;
  }
  return j;
}

static void job_free(spawn_job *j) {
  if (j->done_fd >= 0) close(j->done_fd);
  free(j->args);
  free(j->env);
  free(j->cwd);
  free(j);
}

/* A job whose owner is gone: its program is killed and reaped (SIGKILL
 * ends it at once: it is the exec helper or the program, never in an
 * uninterruptible wait of ours), and its pipe ends closed. */
static void job_discard(spawn_job *j) {
  if (j->err == 0) {
    kill(-j->pid, SIGKILL);
    while (waitpid(j->pid, NULL, 0) < 0 && errno == EINTR) {
    }
    fds_close(j->fds.parent);
  }
  job_free(j);
}

/* The owner's exit hook, when it ends during the open: a finished job is
 * discarded here, a queued or running one marked for the spawner to. */
static void job_abandon(spawn_job *j) {
  pthread_mutex_lock(&spawner.lock);
  bool done = j->done;
  j->abandoned = !done;
  pthread_mutex_unlock(&spawner.lock);
  if (done) job_discard(j);
}

static void *spawner_main(void *arg) {
  (void)arg;
  for (;;) {
    pthread_mutex_lock(&spawner.lock);
    while (!spawner.head)
      pthread_cond_wait(&spawner.cond, &spawner.lock);
    spawn_job *j = spawner.head;
    spawner.head = j->next;
    if (!spawner.head) spawner.tail = NULL;
    pthread_mutex_unlock(&spawner.lock);
    int err = spawn_helper(j->modes, j->args, j->env, j->cwd, &j->fds, &j->pid);
    /* The wake-up is written under the lock: once the owner sees done, it
     * frees the job, so nothing of it may be touched after the unlock
     * unless the owner had abandoned it. */
    pthread_mutex_lock(&spawner.lock);
    j->err = err;
    bool abandoned = j->abandoned;
    if (!abandoned) {
      j->done = true;
      uint64_t one = 1;
      while (write(j->done_fd, &one, sizeof one) < 0 && errno == EINTR) {
      }
    }
    pthread_mutex_unlock(&spawner.lock);
    if (abandoned) job_discard(j);
  }
  return NULL;
}

/* Queues j, starting the thread first if this OS process has none. Called
 * with spawner.lock held. Returns 0 or an errno value. */
static int spawner_queue(spawn_job *j) {
  if (spawner.pid != getpid()) {
    /* signals go to the schedulers, never here; the spawned child gets its
     * own mask from posix_spawn's attributes */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    pthread_t t;
    int err = pthread_create(&t, &at, spawner_main, NULL);
    pthread_attr_destroy(&at);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err) return err;
    pthread_setname_np(t, "keel-spawner");
    spawner.pid = getpid();
    spawner.head = spawner.tail = NULL; /* a forked copy's queue was its parent's */
  }
  j->next = NULL;
  if (spawner.tail)
    spawner.tail->next = j;
  else
    spawner.head = j;
  spawner.tail = j;
  pthread_cond_signal(&spawner.cond);
  return 0;
}

/* A child forked while a thread of the node held spawner.lock would inherit
 * it locked, and its first open would wait forever: the child's copy starts
 * afresh (lock, condition, queue) with no spawner thread, which its first
 * open starts. Registered once, at the first open. */
static void spawner_atfork_child(void) {
  pthread_mutex_init(&spawner.lock, NULL);
  pthread_cond_init(&spawner.cond, NULL);
  spawner.head = spawner.tail = NULL;
  spawner.pid = 0;
}

static pthread_once_t spawner_atfork_once = PTHREAD_ONCE_INIT;

static void spawner_atfork_register(void) {
  pthread_atfork(NULL, NULL, spawner_atfork_child);
}

/* Runs spawn_helper on the spawner thread while the caller's scheduler runs
 * other processes. The caller holds exits (keel_port_open) and owns the job
 * again once this returns; the wait is short and bounded (the helper's exec
 * beginning). */
static int spawn_on_thread(spawn_job *j) {
  j->done = false;
  j->done_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (j->done_fd < 0) return errno;
  pthread_once(&spawner_atfork_once, spawner_atfork_register);
  pthread_mutex_lock(&spawner.lock);
  int err = spawner_queue(j);
  pthread_mutex_unlock(&spawner.lock);
  for (bool done = err != 0; !done;) {
    keel_wait_fd(j->done_fd, KEEL_READABLE, KEEL_INFINITY, NULL);
    pthread_mutex_lock(&spawner.lock);
    done = j->done;
    pthread_mutex_unlock(&spawner.lock);
  }
  return err ? err : j->err;
}

static int errno_to_keel(int err) {
  switch (err) {
  case ENOMEM:
  case EAGAIN: return KEEL_ENOMEM;
  case ENOENT:
  case ENOTDIR:
  case EACCES: return KEEL_ENOENT;
  default: return KEEL_EIO;
  }
}

/* Watches the program's end (a pidfd polled on the owner's loop) and opens
 * our ends of its pipes as the port's handles. Returns 0 or a keel error;
 * on error the caller kills the program and tears the port down. */
static int adopt(keel_port_t *p, uv_loop_t *loop, pid_t pid, spawn_fds *f) {
  p->os_pid = (int)pid;
  p->pidfd = pidfd_open_(pid);
  if (p->pidfd < 0 && errno == ESRCH) {
    /* Gone already, zombie included: the kernel reaped it itself (SIGCHLD
     * ignored by the application), so its status is lost, and its pid may
     * name another process now: no signal is ever sent to it. Its output
     * is still read to the end, and the port ends with "unknown". */
    p->exited = true;
    p->status = (keel_port_status){.exit_code = -1, .signal = 0};
  } else if (p->pidfd < 0 || uv_poll_init(loop, &p->exit_watch, p->pidfd) != 0) {
    /* no watch: nothing would reap it; kill and reap it now (quick: the
     * helper is not ours to wait for long) */
    kill(-pid, SIGKILL);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
    }
    p->exited = true;
    fds_close(f->parent);
    return KEEL_EIO;
  }
  int rc = 0;
  if (!p->exited) {
    p->exit_watch.data = p;
    p->watching = true;
    rc = uv_poll_start(&p->exit_watch, UV_READABLE, on_exit_ready) != 0 ? KEEL_EIO : 0;
  }
  uv_pipe_t *pipes[3] = {&p->in, &p->out[0].pipe, &p->out[1].pipe};
  for (int fd = 0; fd < 3; fd++) {
    if (f->parent[fd] < 0) continue;
    if (rc == 0 && uv_pipe_open(pipes[fd], f->parent[fd]) == 0) continue;
    close(f->parent[fd]);
    rc = KEEL_EIO;
  }
  return rc;
}

static int validate(const keel_port_opts *o) {
  if (!o || !o->argv || !o->argv[0] || !valid_mode(o->stdout_mode) || !valid_mode(o->stderr_mode) ||
      (o->nrlimits && !o->rlimits) || o->max_line > UINT32_MAX / 2) /* 32-bit lengths */
    return KEEL_EINVAL;
  for (size_t i = 0; i < o->nrlimits; i++)
    if (o->rlimits[i].resource < 0 || o->rlimits[i].resource >= RLIM_NLIMITS ||
        o->rlimits[i].soft > o->rlimits[i].hard)
      return KEEL_EINVAL;
  return 0;
}

static keel_port_t *port_new(const keel_port_opts *o) {
  keel_port_t *p = calloc(1, sizeof *p);
  if (!p) return NULL;
  p->pidfd = -1;
  p->max_line = o->max_line ? o->max_line : DEFAULT_MAX_LINE;
  p->max_pending = o->max_pending ? o->max_pending : DEFAULT_MAX_PENDING;
  p->out[0].mode = o->stdout_mode;
  p->out[1].mode = o->stderr_mode;
  for (int i = 0; i < 2; i++) {
    out_stream *s = &p->out[i];
    s->port = p;
    s->tag = i == 0 ? KEEL_PORT_STDOUT : KEEL_PORT_STDERR;
    if (s->mode == KEEL_PORT_LINES && !(s->line = malloc(p->max_line))) {
      port_free(p);
      return NULL;
    }
  }
  return p;
}

int keel_port_open(const keel_port_opts *o, keel_port_t **out) {
  if (!keel_self()) return KEEL_ENOTPROC;
  if (!out) return KEEL_EINVAL;
  *out = NULL;
  int rc = validate(o);
  if (rc) return rc;
  const char *helper = find_helper(o->exec_helper);
  if (!helper) return KEEL_ENOENT;
  port_set *set = owner_set();
  keel_port_t *p = set ? port_new(o) : NULL;
  spawn_job *job = p ? job_new(o, helper) : NULL;
  if (!job) {
    if (p) port_free(p);
    return KEEL_ENOMEM;
  }
  keel_io_begin(&p->pin); /* pinned: the handles belong to this loop */
  uv_loop_t *loop = keel_io_loop(&p->pin);
  p->owner = keel_self();
  p->id = keel_make_ref();
  uv_pipe_init(loop, &p->in, 0);
  p->in.data = p;
  for (int i = 0; i < 2; i++) {
    uv_pipe_init(loop, &p->out[i].pipe, 0);
    p->out[i].pipe.data = p;
  }
  uv_timer_init(loop, &p->resume);
  p->resume.data = p;

  /* Exits are held from here until the port is in the owner's set, or torn
   * down: a kill arriving meanwhile takes effect at the release, when the
   * exit hook finds the program; applied earlier, it would leave the
   * program running and its descriptors open. */
  keel_hold_exits(true);
  set->opening = job;
  set->opening_port = p;
  int err = spawn_on_thread(job);
  set->opening = NULL;
  set->opening_port = NULL;
  if (err != 0) {
    job_free(job);
    p->exited = true;
    p->closing = true;
    keel_io_end(&p->pin);
    port_teardown(p);
    keel_hold_exits(false);
    return errno_to_keel(err);
  }
  for (int i = 0; i < 2; i++) {
    p->out[i].piped = job->fds.parent[i + 1] >= 0;
    p->out[i].eof = !p->out[i].piped;
  }
  rc = adopt(p, loop, job->pid, &job->fds);
  job_free(job);
  if (rc != 0) {
    if (!p->exited) kill(-p->os_pid, SIGKILL);
    keel_io_end(&p->pin);
    port_teardown(p);
    keel_hold_exits(false);
    return rc;
  }
  p->in_open = true;
  /* the set keeps it: the owner's exit hook finds it */
  p->next = set->head;
  if (set->head) set->head->pprev = &p->next;
  set->head = p;
  p->pprev = &set->head;
  p->set = set;
  set_reading(p, true);
  *out = p;
  keel_hold_exits(false); /* a held kill ends the owner here; its hook closes p */
  return 0;
}

/* ---- the owner's calls ----------------------------------------------------- */

static int owner_check(const keel_port_t *p) {
  if (!p) return KEEL_EINVAL;
  return keel_self() == p->owner ? 0 : KEEL_EPERM;
}

typedef struct write_req {
  uv_write_t req;
  keel_io_t *io; /* the waiting writer; NULL once it stopped waiting */
  char data[];
} write_req;

static void on_written(uv_write_t *req, int status) {
  write_req *w = (write_req *)req;
  if (w->io) keel_io_ready(w->io, status < 0 ? KEEL_EIO : 0);
  free(w);
}

static void write_abandoned(void *arg) {
  ((write_req *)arg)->io = NULL;
}

int keel_port_write(keel_port_t *p, const void *data, size_t len, int64_t timeout_ms) {
  int rc = owner_check(p);
  if (rc) return rc;
  if ((!data && len) || len > UINT32_MAX || timeout_ms == KEEL_NOWAIT) return KEEL_EINVAL;
  if (!p->in_open) return KEEL_ESTATE;
  if (len == 0) return 0;
  write_req *w = malloc(sizeof *w + len);
  if (!w) return KEEL_ENOMEM;
  memcpy(w->data, data, len);
  keel_io_t io;
  keel_io_begin(&io);
  w->io = &io;
  uv_buf_t b = uv_buf_init(w->data, (unsigned)len);
  if (uv_write(&w->req, (uv_stream_t *)&p->in, &b, 1, on_written) != 0) {
    free(w);
    keel_io_end(&io);
    return KEEL_EIO;
  }
  keel_io_on_abandon(&io, write_abandoned, w);
  p->writing = true;
  resume(p);
  rc = keel_io_wait(&io, timeout_ms);
  p->writing = false;                     /* the next read looks at the mailbox again */
  if (rc == KEEL_ETIMEDOUT) w->io = NULL; /* it stays queued; on_written frees it */
  keel_io_end(&io);
  return rc;
}

int keel_port_close_stdin(keel_port_t *p) {
  int rc = owner_check(p);
  if (rc) return rc;
  if (p->in_open) {
    p->in_open = false;
    close_handle(p, (uv_handle_t *)&p->in);
  }
  return 0;
}

int keel_port_kill(keel_port_t *p, int signum) {
  int rc = owner_check(p);
  if (rc) return rc;
  if (signum <= 0 || signum >= NSIG) return KEEL_EINVAL;
  if (p->exited) return KEEL_ESTATE;
  return kill(-p->os_pid, signum) == 0 ? 0 : KEEL_ESTATE;
}

int keel_port_os_pid(const keel_port_t *p) {
  return p ? p->os_pid : 0;
}

uint64_t keel_port_id(const keel_port_t *p) {
  return p ? p->id : 0;
}

static void close_abandoned(void *arg) {
  ((keel_port_t *)arg)->waiter = NULL;
}

static bool has_exited(const keel_port_t *p) {
  return p->exited;
}

static bool pipes_ended(const keel_port_t *p) {
  return p->out[0].eof && p->out[1].eof;
}

/* Waits until done(p), or until the monotonic clock reaches deadline_ms
 * (KEEL_INFINITY: no deadline). The deadline is absolute so that wake-ups
 * (each end of file, the exit) do not restart the time. */
static bool wait_for(keel_port_t *p, bool (*done)(const keel_port_t *), int64_t deadline_ms) {
  if (done(p)) return true;
  keel_io_t io;
  keel_io_begin(&io);
  p->waiter = &io;
  keel_io_on_abandon(&io, close_abandoned, p);
  while (!done(p)) {
    int64_t left = KEEL_INFINITY;
    if (deadline_ms != KEEL_INFINITY && (left = deadline_ms - keel_monotonic_ms()) <= 0) break;
    int rc = keel_io_wait(&io, left);
    if (rc != 0 && rc != KEEL_ETIMEDOUT) break;
  }
  p->waiter = NULL;
  keel_io_end(&io);
  return done(p);
}

int keel_port_close(keel_port_t *p, int64_t timeout_ms, keel_port_status *st) {
  int rc = owner_check(p);
  if (rc) return rc;
  if (timeout_ms == 0) timeout_ms = DEFAULT_CLOSE_MS;
  /* The owner stops listening: what the program still writes is read and
   * dropped (a program blocked writing to a full pipe could not end), and
   * no EXIT message comes: the status is returned here. */
  p->draining = true;
  resume(p);
  if (!p->exited) kill(-p->os_pid, timeout_ms == KEEL_NOWAIT ? SIGKILL : SIGTERM);
  if (timeout_ms != KEEL_NOWAIT) {
    int64_t deadline =
        timeout_ms == KEEL_INFINITY ? KEEL_INFINITY : keel_monotonic_ms() + timeout_ms;
    if (!wait_for(p, has_exited, deadline)) kill(-p->os_pid, SIGKILL); /* still the leader's */
  }
  /* SIGKILL ends it (a program in an uninterruptible sleep holds us until it
   * leaves it). The wait is for the exit, not for end of file: a descendant
   * that left the group (setsid) may hold the pipes open forever. */
  wait_for(p, has_exited, KEEL_INFINITY);
  /* The exit callback killed what was left of the group: its pipes end at
   * once. What is read meanwhile is dropped; an escaped holder costs at
   * most DRAIN_MS, then the pipes are closed under it. */
  wait_for(p, pipes_ended, keel_monotonic_ms() + DRAIN_MS);
  if (st) *st = p->status;
  keel_io_end(&p->pin);
  port_teardown(p);
  return 0;
}
