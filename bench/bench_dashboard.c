#define _GNU_SOURCE
/* bench_dashboard.c - what the dashboard costs a node (issue 14).
 *
 *   dashboard_stream_cpu  % of a core  the CPU one open event stream
 *                         (/admin/events: stats every second, log and process
 *                         events) adds to a node of 100,000 idle processes:
 *                         the node's CPU time (getrusage) over 3 s windows,
 *                         alternately with no stream (the anchor: the same
 *                         node, same run) and with one stream read by a
 *                         client thread; 4 rounds each, the difference of the
 *                         medians. The goal is under 2 % of a core.
 *   dashboard_page_bytes  bytes  the page, its script and its style as
 *                         served (bodies), what a browser downloads on the
 *                         first visit (the goal is under 200 KB)
 *
 * Usage: bench_dashboard [--runs N] [workload...]
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bench_driver.h"
#include "keel/http.h"
#include "keel/observer.h"

#define NPROCS   100000
#define WINDOW_S 3
#define ROUNDS   4

static double cpu_s(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
         ru.ru_stime.tv_usec / 1e6;
}

static int connect_to(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) bench_fail("connect", KEEL_EIO);
  return fd;
}

/* The client: reads the stream until told to stop. A plain thread, as a
 * browser would be another process. */
typedef struct reader {
  int port;
  atomic_bool stop;
  atomic_size_t bytes;
  int fd;
} reader;

static void *reader_main(void *arg) {
  reader *r = arg;
  const char req[] = "GET /admin/events HTTP/1.1\r\nHost: x\r\n\r\n";
  if (send(r->fd, req, sizeof req - 1, MSG_NOSIGNAL) < 0) return NULL;
  char buf[16384];
  while (!atomic_load(&r->stop)) {
    ssize_t n = recv(r->fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    atomic_fetch_add(&r->bytes, (size_t)n);
  }
  return NULL;
}

static double window(void) {
  double c0 = cpu_s(), t0 = bench_now_s();
  keel_sleep(WINDOW_S * 1000);
  return (cpu_s() - c0) / (bench_now_s() - t0) * 100.0;
}

static keel_http_server *admin(void) {
  keel_admin_opts o;
  keel_admin_opts_init(&o);
  o.host = "127.0.0.1";
  keel_http_server *s;
  int rc = keel_admin_start(&o, &s);
  if (rc) bench_fail("admin", rc);
  return s;
}

static void stream_main(void *arg) {
  (void)arg;
  keel_pid_t *pids = bench_idle_spawn(NPROCS, 200);
  keel_observer_start(NULL);
  keel_http_server *s = admin();
  double idle_v[ROUNDS], stream_v[ROUNDS];
  size_t bytes = 0;
  for (int r = 0; r < ROUNDS; r++) {
    idle_v[r] = window();
    reader rd = {.port = keel_http_port(s)};
    rd.fd = connect_to(rd.port);
    pthread_t t;
    pthread_create(&t, NULL, reader_main, &rd);
    keel_sleep(500); /* connected and past its first events */
    stream_v[r] = window();
    atomic_store(&rd.stop, true);
    shutdown(rd.fd, SHUT_RDWR);
    pthread_join(t, NULL);
    close(rd.fd);
    bytes += atomic_load(&rd.bytes);
    keel_sleep(1500); /* the stream notices and ends */
  }
  qsort(idle_v, ROUNDS, sizeof(double), bench_cmp_double);
  qsort(stream_v, ROUNDS, sizeof(double), bench_cmp_double);
  double mi = (idle_v[ROUNDS / 2 - 1] + idle_v[ROUNDS / 2]) / 2;
  double ms = (stream_v[ROUNDS / 2 - 1] + stream_v[ROUNDS / 2]) / 2;
  fprintf(stderr,
          "  (100,000 processes: idle node %.2f %% of a core, with one stream %.2f %%; %zu bytes "
          "streamed)\n",
          mi, ms, bytes);
  bench_result = ms - mi;
  keel_http_stop(s);
  keel_observer_stop();
  bench_idle_stop(pids, NPROCS);
}

static size_t body_bytes(int port, const char *path) {
  int fd = connect_to(port);
  char req[256];
  snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", path);
  send(fd, req, strlen(req), MSG_NOSIGNAL);
  static char buf[1 << 20];
  size_t len = 0;
  ssize_t n;
  while (len < sizeof buf && (n = recv(fd, buf + len, sizeof buf - len, 0)) > 0)
    len += (size_t)n;
  close(fd);
  char *end = memmem(buf, len, "\r\n\r\n", 4);
  return end ? len - (size_t)(end + 4 - buf) : 0;
}

typedef struct page_job {
  int port;
  size_t bytes;
} page_job;

static void page_fetch(void *arg) {
  page_job *j = arg;
  j->bytes = body_bytes(j->port, "/dashboard") + body_bytes(j->port, "/dashboard/app.js") +
             body_bytes(j->port, "/dashboard/app.css");
}

static void page_main(void *arg) {
  (void)arg;
  keel_http_server *s = admin();
  page_job j = {.port = keel_http_port(s)};
  int rc = keel_blocking(page_fetch, &j);
  if (rc) bench_fail("fetch", rc);
  bench_result = (double)j.bytes;
  keel_http_stop(s);
}

int main(int argc, char **argv) {
  static const bench_workload ws[] = {
      {"dashboard_stream_cpu", "percent_of_core", stream_main, 1},
      {"dashboard_page_bytes", "bytes", page_main, 1},
  };
  return bench_main("bench_dashboard", ws, sizeof ws / sizeof ws[0], argc, argv, NULL);
}
