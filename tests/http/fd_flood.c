/* fd_flood.c - opens thousands of connections to a loopback port at once and
 * holds them, for the file-descriptor exhaustion test
 * (tests/http/test_fd_exhaustion.sh).
 *
 *   fd_flood PORT CONNS THREADS MAX_HOLD_S [REQ_EVERY]
 *
 * THREADS threads each open their share of CONNS connections to
 * 127.0.0.1:PORT as fast as they can (non-blocking connects, so a connect
 * whose SYN the kernel drops because the listen queue is full never blocks a
 * thread), and send "GET /api/stats" (keep-alive) on every REQ_EVERY-th one
 * (default 2) as soon as it is established. Then they hold everything open,
 * reading what comes back, until SIGUSR1, SIGTERM or SIGINT arrives or
 * MAX_HOLD_S seconds have passed, and close it all.
 *
 * Output, one JSON object a line on stdout:
 *   {"phase":"connected",...}  once every thread has finished its connect
 *       phase (every connect established, failed, or still pending after
 *       CONNECT_MS): the counts at that moment.
 *   {"phase":"done",...}       after everything is closed: the totals.
 * Counts: attempted, connected (three-way handshake done: accepted by the
 * server or queued on its listener), pending (connects still in progress),
 * failed (connect errors), requests, answered_200, answered_other (first
 * bytes not "HTTP/1.1 200"), server_eof (closed by the server), server_reset,
 * dropped_requests (closed or reset by the server after a request was sent
 * and before any byte of an answer).
 * The soft RLIMIT_NOFILE is raised to the hard limit first; CONNS is cut to
 * what that allows (said on stderr).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CONNECT_MS 3000 /* the connect phase: at most this long */

enum { S_PENDING, S_OPEN, S_DONE };

typedef struct conn {
  int fd;
  int state;
  bool want_req, sent, answered;
} conn;

typedef struct flood {
  pthread_t th;
  int port, n, req_every;
  conn *c;
} flood;

static atomic_int g_stop; /* set by the signal handler (lock-free, so async-signal-safe) */
static int64_t g_hold_until;
static atomic_int g_phase_done; /* threads past their connect phase */
static atomic_long n_attempted, n_connected, n_pending, n_failed, n_requests, n_ok, n_other, n_eof,
  n_reset, n_dropped;

static const char REQ[] = "GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: fd_flood\r\n\r\n";

static void on_signal(int sig) {
  (void)sig;
  atomic_store(&g_stop, 1);
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void inc(atomic_long *a, long d) { atomic_fetch_add_explicit(a, d, memory_order_relaxed); }

static void established(conn *c) {
  c->state = S_OPEN;
  inc(&n_connected, 1);
  if (c->want_req) {
    /* a request this small always fits the socket buffer of a new connection */
    if (send(c->fd, REQ, sizeof REQ - 1, MSG_NOSIGNAL) == (ssize_t)(sizeof REQ - 1)) {
      c->sent = true;
      inc(&n_requests, 1);
    }
  }
}

static void finish(conn *c, atomic_long *why) {
  if (c->state == S_PENDING) inc(&n_pending, -1);
  if (why && c->sent && !c->answered) inc(&n_dropped, 1);
  c->state = S_DONE;
  close(c->fd);
  c->fd = -1;
  if (why) inc(why, 1);
}

static void *flood_main(void *arg) {
  flood *f = arg;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)f->port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int64_t t0 = now_ms();
  for (int i = 0; i < f->n && !atomic_load(&g_stop); i++) {
    conn *c = &f->c[i];
    c->want_req = f->req_every > 0 && i % f->req_every == 0;
    inc(&n_attempted, 1);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
      c->state = S_DONE;
      inc(&n_failed, 1);
      continue;
    }
    if (connect(c->fd, (struct sockaddr *)&a, sizeof a) == 0) {
      established(c);
    } else if (errno == EINPROGRESS) {
      c->state = S_PENDING;
      inc(&n_pending, 1);
    } else {
      finish(c, &n_failed);
    }
  }
  struct pollfd *p = calloc((size_t)f->n, sizeof *p);
  int *idx = calloc((size_t)f->n, sizeof *idx);
  if (!p || !idx) {
    atomic_fetch_add(&g_phase_done, 1);
    free(p);
    free(idx);
    return NULL;
  }
  bool phase = true;
  char buf[4096];
  while (!atomic_load(&g_stop) && now_ms() < g_hold_until) {
    int np = 0, pending = 0;
    for (int i = 0; i < f->n; i++) {
      conn *c = &f->c[i];
      if (c->state == S_DONE) continue;
      if (c->state == S_PENDING) pending++;
      p[np] = (struct pollfd){.fd = c->fd, .events = c->state == S_PENDING ? POLLOUT : POLLIN};
      idx[np++] = i;
    }
    if (phase && (pending == 0 || now_ms() - t0 >= CONNECT_MS)) {
      phase = false;
      atomic_fetch_add(&g_phase_done, 1);
    }
    int r = poll(p, (nfds_t)np, 100);
    if (r <= 0) continue;
    for (int k = 0; k < np; k++) {
      if (!p[k].revents) continue;
      conn *c = &f->c[idx[k]];
      if (c->state == S_PENDING) {
        int err = 0;
        socklen_t el = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0) err = errno;
        if (err == 0) {
          inc(&n_pending, -1);
          established(c);
        } else {
          finish(c, &n_failed);
        }
        continue;
      }
      ssize_t n = recv(c->fd, buf, sizeof buf, 0);
      if (n > 0) {
        if (!c->answered) {
          c->answered = true;
          inc(n >= 12 && memcmp(buf, "HTTP/1.1 200", 12) == 0 ? &n_ok : &n_other, 1);
        }
      } else if (n == 0) {
        finish(c, &n_eof);
      } else if (errno != EAGAIN && errno != EINTR) {
        finish(c, &n_reset);
      }
    }
  }
  if (phase) atomic_fetch_add(&g_phase_done, 1);
  for (int i = 0; i < f->n; i++)
    if (f->c[i].state != S_DONE) finish(&f->c[i], NULL);
  free(p);
  free(idx);
  return NULL;
}

static void print_counts(const char *phase, int64_t ms) {
  printf("{\"phase\":\"%s\",\"attempted\":%ld,\"connected\":%ld,\"pending\":%ld,\"failed\":%ld,"
         "\"requests\":%ld,\"answered_200\":%ld,\"answered_other\":%ld,\"server_eof\":%ld,"
         "\"server_reset\":%ld,\"dropped_requests\":%ld,\"ms\":%lld}\n",
         phase, atomic_load(&n_attempted), atomic_load(&n_connected), atomic_load(&n_pending),
         atomic_load(&n_failed), atomic_load(&n_requests), atomic_load(&n_ok), atomic_load(&n_other),
         atomic_load(&n_eof), atomic_load(&n_reset), atomic_load(&n_dropped), (long long)ms);
}

int main(int argc, char **argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: fd_flood PORT CONNS THREADS MAX_HOLD_S [REQ_EVERY]\n");
    return 2;
  }
  int port = atoi(argv[1]), conns = atoi(argv[2]), threads = atoi(argv[3]), hold = atoi(argv[4]);
  int req_every = argc > 5 ? atoi(argv[5]) : 2;
  if (port <= 0 || port > 65535 || conns <= 0 || threads <= 0 || threads > 64 || hold <= 0 || req_every < 0) {
    fprintf(stderr, "fd_flood: bad arguments\n");
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  signal(SIGPIPE, SIG_IGN);
  struct sigaction sa = {.sa_handler = on_signal};
  sigemptyset(&sa.sa_mask);
  sigaction(SIGUSR1, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);

  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    if (rl.rlim_cur < rl.rlim_max) {
      rl.rlim_cur = rl.rlim_max;
      setrlimit(RLIMIT_NOFILE, &rl);
      getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur != RLIM_INFINITY && (rlim_t)conns + 32 > rl.rlim_cur) {
      int cut = rl.rlim_cur > 64 ? (int)rl.rlim_cur - 32 : 1;
      fprintf(stderr, "fd_flood: open-file limit %llu: %d connections instead of %d\n",
              (unsigned long long)rl.rlim_cur, cut, conns);
      conns = cut;
    }
  }
  if (threads > conns) threads = conns;

  int64_t t0 = now_ms();
  g_hold_until = t0 + (int64_t)hold * 1000;
  flood *fs = calloc((size_t)threads, sizeof *fs);
  if (!fs) return 1;
  int started = 0;
  for (int t = 0; t < threads; t++) {
    fs[t].port = port;
    fs[t].req_every = req_every;
    fs[t].n = conns / threads + (t < conns % threads);
    fs[t].c = calloc((size_t)fs[t].n, sizeof(conn));
    if (!fs[t].c || pthread_create(&fs[t].th, NULL, flood_main, &fs[t]) != 0) break;
    started++;
  }
  while (atomic_load(&g_phase_done) < started && !atomic_load(&g_stop) && now_ms() < g_hold_until) {
    struct timespec ts = {0, 10 * 1000000L};
    nanosleep(&ts, NULL);
  }
  print_counts("connected", now_ms() - t0);
  for (int t = 0; t < started; t++) pthread_join(fs[t].th, NULL);
  print_counts("done", now_ms() - t0);
  for (int t = 0; t < threads; t++) free(fs[t].c);
  free(fs);
  return started == threads ? 0 : 1;
}
