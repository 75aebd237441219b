/* listener.c - accepting: a server's listeners, one per scheduler, their
 * acceptor processes and their sockets.
 *
 * keel_http_start (server.c) binds the sockets here (SO_REUSEPORT, so a
 * second instance can bind the same port during a rolling restart) or takes
 * those systemd passed (socket activation: LISTEN_PID, LISTEN_FDS), and
 * spawns one acceptor process per scheduler, pinned there: it puts a dup of
 * its socket on its scheduler's libuv loop and then only waits for control
 * messages (close, drain, stop; keel__listeners_control). Each connection
 * accepted is handed to conn.c on the same loop.
 *
 * Descriptors. A listener stops accepting for a back-off when an accepted
 * descriptor lands in the last fd_reserve under the soft limit, or on
 * EMFILE: see accept_pause. It sheds idle connections meanwhile
 * (keel__conn_shed_idle) and accepts again once descriptors are free.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http/http_internal.h"
#include "http/server.h"
#include "keel/error.h"
#include "keel/io.h"
#include "keel/log.h"
#include "keel/message.h"
#include "keel/metrics.h"
#include "keel/process.h"

#define TAG_CTL 0x4b485431u /* acceptor control messages */

/* Out of descriptors: stop accepting for ACCEPT_BACKOFF_MS, close up to
 * IDLE_SHED (conn.c) idle keep-alive connections, log once per ACCEPT_LOG_MS. */
#define ACCEPT_BACKOFF_MS 100
#define ACCEPT_LOG_MS     10000
#define RESUME_ROOM       8 /* free descriptors under the reserve before accepting again */

/* ---- accepting ----------------------------------------------------------------------------- */

static void on_connection(uv_stream_t *server, int status);

/* The listener's handles close one by one; the last one tells stop. */
static void listener_handle_closed(uv_handle_t *h) {
  keel__listener *l = h->data;
  if (h == (uv_handle_t *)&l->tcp) l->tcp_open = false;
  if (--l->handles == 0 && l->stopping) atomic_store_explicit(&l->closed, true, memory_order_release);
}

/* A new descriptor for the listening socket, close-on-exec. dup, not
 * fcntl(F_DUPFD_CLOEXEC): ThreadSanitizer follows descriptors through dup
 * but not through fcntl. (It still cannot see libuv's raw close syscall, so
 * a number libuv accepted and closed on another scheduler looks reused:
 * tests/tsan.supp.) */
static int listener_dup(const keel__listener *l) {
  int fd = dup(l->fd);
  if (fd >= 0) fcntl(fd, F_SETFD, FD_CLOEXEC);
  return fd;
}

/* Puts a dup of the listening socket on the loop (the socket itself stays
 * ours, so closing the handle for a pause keeps the kernel's queue). Linux
 * hands out the lowest free descriptor, so the dup's number also says
 * whether the reserve is free again. */
static int listener_open(keel__listener *l) {
  if (l->paused && l->srv->fd_high) {
    /* after a pause: RESUME_ROOM free descriptors under the reserve, or
     * wait (one hole would let a connection in, the next would cross) */
    int probe[RESUME_ROOM], n = 0;
    bool room = true;
    while (room && n < RESUME_ROOM) {
      probe[n] = listener_dup(l);
      room = probe[n] >= 0 && probe[n] < l->srv->fd_high;
      if (probe[n] >= 0) n++;
    }
    while (n)
      close(probe[--n]);
    if (!room) return KEEL_EBUSY; /* still in the reserve */
  }
  int fd = listener_dup(l);
  if (fd < 0) return KEEL_EIO;
  int rc = uv_tcp_init(l->loop, &l->tcp);
  if (rc != 0) {
    close(fd);
    return KEEL_EIO;
  }
  l->tcp.data = l;
  l->tcp_open = true;
  l->handles++;
  rc = uv_tcp_open(&l->tcp, fd);
  if (rc != 0) close(fd);
  if (rc == 0) rc = uv_listen((uv_stream_t *)&l->tcp, 1024, on_connection);
  if (rc != 0) {
    uv_close((uv_handle_t *)&l->tcp, listener_handle_closed);
    return KEEL_EIO;
  }
  return 0;
}

static void on_backoff(uv_timer_t *t) {
  keel__listener *l = t->data;
  if (l->stopping || l->fd < 0 || !l->paused) return;
  if (l->tcp_open || listener_open(l) != 0) { /* still closing, or still no descriptor */
    keel__conn_shed_idle(l);
    uv_timer_start(&l->backoff, on_backoff, ACCEPT_BACKOFF_MS, 0);
    return;
  }
  l->paused = false;
}

/* Out of descriptors, or into the reserve. On EMFILE/ENFILE libuv's accept
 * loop would call us again at once, forever, when its spare descriptor was
 * taken by another loop; and when its spare works, it accepts and closes
 * every queued connection. So the server pauses before: when an accepted
 * descriptor lands in the last fd_reserve under the limit. Either way:
 * close the handle (that ends libuv's loop), shed idle keep-alive
 * connections, and listen again after a back-off. Connections wait in the
 * kernel's queue meanwhile; probes on other ports (a smaller reserve),
 * timers and signals go on. status: a libuv error, or 0 for the reserve. */
static void accept_pause(keel__listener *l, int status) {
  keel_http_server *s = l->srv;
  if (l->paused) return;
  l->paused = true;
  if (l->tcp_open && !uv_is_closing((uv_handle_t *)&l->tcp))
    uv_close((uv_handle_t *)&l->tcp, listener_handle_closed);
  int shed = keel__conn_shed_idle(l);
  uv_timer_start(&l->backoff, on_backoff, ACCEPT_BACKOFF_MS, 0);
  if (s->paused_c) keel_counter_inc(s->paused_c);
  int64_t now = (int64_t)(keel__http_now_ns() / 1000000u), last = atomic_load_explicit(&s->pause_log_ms, memory_order_relaxed);
  if (last && now - last < ACCEPT_LOG_MS) {
    atomic_fetch_add_explicit(&s->pause_quiet, 1, memory_order_relaxed);
    return;
  }
  if (!atomic_compare_exchange_strong(&s->pause_log_ms, &last, now)) return; /* another loop logs */
  uint64_t quiet = atomic_exchange_explicit(&s->pause_quiet, 0, memory_order_relaxed);
  if (keel_log_enabled(KEEL_LOG_WARN)) {
    keel_log_field f[] = {KEEL_STR("server", s->name),
                          KEEL_INT("port", s->port),
                          KEEL_STR("error", status ? uv_err_name(status) : "reserve reached"),
                          KEEL_INT("fd_limit_reserve_at", s->fd_high),
                          KEEL_INT("scheduler", l->sched),
                          KEEL_INT("open_connections", (int64_t)keel_http_connections(s)),
                          KEEL_INT("idle_closed", shed),
                          KEEL_INT("backoff_ms", ACCEPT_BACKOFF_MS),
                          KEEL_UINT("pauses_not_logged", quiet),
                          KEEL_LOG__END};
    keel_log_write(NULL, KEEL_LOG_WARN, "accept paused: out of file descriptors", f);
  }
}

static void on_connection(uv_stream_t *server, int status) {
  keel__listener *l = server->data;
  if (status == UV_EMFILE || status == UV_ENFILE) {
    accept_pause(l, status);
    return;
  }
  if (status < 0) return;
  keel__conn *c = calloc(1, sizeof *c);
  if (!c) return;
  c->l = l;
  if (uv_tcp_init(l->loop, &c->tcp) != 0) { /* AF_UNSPEC: it does not fail on Linux */
    free(c);
    return;
  }
  if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
    uv_close((uv_handle_t *)&c->tcp, (uv_close_cb)free);
    return;
  }
  uv_os_fd_t fd;
  if (l->srv->fd_high && uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0 && fd >= l->srv->fd_high)
    accept_pause(l, 0); /* this one is served; the next wait in the queue */
  keel__conn_start(c);
}

/* ---- the acceptor process ----------------------------------------------------------- */

/* Stops accepting for good: the handle and the socket itself (so the kernel
 * sends new connections to other instances on the port). */
static void listener_close(keel__listener *l) {
  if (l->tcp_open && !uv_is_closing((uv_handle_t *)&l->tcp))
    uv_close((uv_handle_t *)&l->tcp, listener_handle_closed);
  uv_timer_stop(&l->backoff);
  l->paused = false;
  if (l->fd >= 0) close(l->fd);
  l->fd = -1;
}

/* The acceptor: puts the socket on its scheduler's loop, then obeys control
 * messages. It is pinned, so it runs on the thread of that loop. */
void keel__acceptor_main(void *arg) {
  keel__listener *l = arg;
  keel_io_t io;
  keel_io_begin(&io);
  l->loop = keel_io_loop(&io);
  uv_timer_init(l->loop, &l->backoff);
  l->backoff.data = l;
  uv_idle_init(l->loop, &l->resume);
  l->resume.data = l;
  l->handles = 2;
  if (listener_open(l) != 0) listener_close(l);
  for (;;) {
    keel_msg_t *m;
    if (keel_receive(&m, KEEL_INFINITY) != 0) continue;
    if (keel_msg_tag(m) != TAG_CTL || keel_msg_size(m) != sizeof(int)) {
      keel_msg_free(m);
      continue;
    }
    int op;
    memcpy(&op, keel_msg_data(m), sizeof op);
    keel_pid_t from = keel_msg_from(m);
    keel_ref_t ref = keel_msg_ref(m);
    keel_msg_free(m);
    listener_close(l);
    /* KEEL__CTL_CLOSE only closes the listener: every listener of the
     * server is closed before any connection is told to go, so a client
     * that reconnects after a Connection: close never finds one still open
     * on another scheduler and then gets reset. On KEEL__CTL_DRAIN every
     * answer from now on says Connection: close (s->draining); an idle
     * connection gets a short grace for a request already on its way. */
    for (keel__conn *c = op == KEEL__CTL_CLOSE ? NULL : l->conns, *next; c; c = next) {
      next = c->next;
      if (op == KEEL__CTL_STOP) keel__conn_close(c);
      else keel__conn_drain(c);
    }
    if (op == KEEL__CTL_STOP) { /* handlers still running are cut: their answers would go nowhere */
      for (keel_http_req *rq = l->reqs; rq; rq = rq->lnext)
        if (rq->pid) keel_exit_signal(rq->pid, KEEL_REASON_KILL, NULL);
      l->stopping = true;
      uv_close((uv_handle_t *)&l->backoff, listener_handle_closed);
      uv_close((uv_handle_t *)&l->resume, listener_handle_closed);
    }
    keel_msg_t *ack = keel_msg_new(TAG_CTL, 0);
    if (ack) keel_reply(from, ref, ack);
    if (op == KEEL__CTL_STOP) break;
  }
  keel_io_end(&io);
}

/* Sends op to every acceptor and waits for their acknowledgements, each
 * matched by a monitor's reference: an acceptor that is gone answers at once
 * with its DOWN, and an acknowledgement that comes after the 10 s wait is
 * dropped by the runtime instead of being taken for the next control's. */
void keel__listeners_control(keel_http_server *s, int op) {
  keel_ref_t refs[s->nl > 0 ? s->nl : 1];
  int n = 0;
  for (int i = 0; i < s->nl; i++) {
    keel_pid_t a = s->ls[i].acceptor;
    keel_ref_t ref;
    if (!a || keel_monitor(a, &ref) != 0) continue;
    keel_msg_t *m = keel_msg_copy(TAG_CTL, &op, sizeof op);
    if (!m || keel_await_ref(ref) != 0) {
      keel_msg_free(m);
      keel_demonitor(ref);
      continue;
    }
    keel_msg_set_ref(m, ref);
    keel_send(a, m);
    refs[n++] = ref;
  }
  for (int i = 0; i < n; i++) {
    keel_msg_t *m = NULL;
    if (keel_await(refs[i], &m, 10000) == 0) keel_msg_free(m);
    keel_demonitor(refs[i]); /* and a DOWN that raced the ack */
  }
}

/* ---- sockets ----------------------------------------------------------------------------------- */

int keel__bind_socket(const char *host, int port, int *fd_out, int *port_out) {
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                           .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
  struct addrinfo *res;
  char ps[16];
  snprintf(ps, sizeof ps, "%d", port);
  if (getaddrinfo(host, ps, &hints, &res) != 0) return KEEL_EINVAL;
  int rc = KEEL_EIO;
  for (struct addrinfo *a = res; a; a = a->ai_next) {
    int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) continue;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, 1024) == 0) {
      struct sockaddr_storage ss;
      socklen_t sl = sizeof ss;
      getsockname(fd, (struct sockaddr *)&ss, &sl);
      *port_out = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                 : ((struct sockaddr_in *)&ss)->sin_port);
      *fd_out = fd;
      rc = 0;
      break;
    }
    rc = errno == EADDRINUSE ? KEEL_EADDRINUSE : KEEL_EIO;
    close(fd);
  }
  freeaddrinfo(res);
  return rc;
}

/* systemd socket activation: LISTEN_PID is us and LISTEN_FDS >= 1; the
 * sockets start at fd 3. Returns the first one or -1. */
int keel__listen_fd_from_env(void) {
  const char *pid = getenv("LISTEN_PID"), *n = getenv("LISTEN_FDS");
  if (!pid || !n || atol(pid) != (long)getpid() || atoi(n) < 1) return -1;
  return 3;
}
