/* prom_target.c - a keel program for a real Prometheus server to scrape
 * (fixture of tests/ops/test_prometheus.sh; not a test case itself).
 *
 *   prom_target PORT [PORT_FILE]
 *
 * Serves GET /metrics over plain HTTP/1.1 on 127.0.0.1:PORT (0: any free
 * port) with the exposition of a registry holding the built-in metrics and
 * one counter of its own, prom_target_scrapes_total, incremented per scrape.
 * When listening it writes the port to PORT_FILE (stdout when absent), so a
 * script can wait for that. One keel process accepts (waiting on the listening
 * socket with keel_wait_fd) and spawns one process per connection, which
 * reads the request, negotiates the format from the Accept header, answers
 * with Content-Length and closes. A third process keeps a few unread
 * messages queued, so the mailbox-depth metrics have something to show, and
 * every scrape is logged (to stderr), so keel_log_lines_total moves. It runs
 * until killed.
 */
#define _GNU_SOURCE /* accept4 */
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "keel/io.h"
#include "keel/log.h"
#include "keel/message.h"
#include "keel/metrics.h"
#include "keel/process.h"
#include "keel/runtime.h"

#define QUEUED_MESSAGES 7
#define IO_TIMEOUT_MS   10000

static keel_metrics *reg;
static keel_metric_family *scrapes_f;
static int listen_port;
static const char *port_file;

static void fail(const char *what, int err) {
  fprintf(stderr, "prom_target: %s: %s\n", what, err ? strerror(err) : "failed");
  exit(1);
}

/* Writes all of data, waiting while the socket is full. 0 or -1. */
static int write_all(int fd, const char *data, size_t len) {
  while (len) {
    ssize_t n = write(fd, data, len);
    if (n > 0) {
      data += n;
      len -= (size_t)n;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (keel_wait_fd(fd, KEEL_WRITABLE, IO_TIMEOUT_MS, NULL) != 0) return -1;
    } else if (!(n < 0 && errno == EINTR)) {
      return -1;
    }
  }
  return 0;
}

/* The value of header `name` in the request head (NUL-terminated), copied to
 * out; "" when absent. */
static void header(const char *head, const char *name, char *out, size_t cap) {
  size_t nl = strlen(name);
  out[0] = 0;
  for (const char *p = strstr(head, "\r\n"); p; p = strstr(p, "\r\n")) {
    p += 2;
    if (strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
      const char *v = p + nl + 1, *e = strstr(v, "\r\n");
      while (*v == ' ' || *v == '\t')
        v++;
      size_t n = e ? (size_t)(e - v) : strlen(v);
      if (n >= cap) n = cap - 1;
      memcpy(out, v, n);
      out[n] = 0;
      return;
    }
  }
}

static void respond(int fd, const char *status, const char *ctype, const char *body, size_t len) {
  char head[256];
  int n = snprintf(head, sizeof head,
                   "HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                   "Connection: close\r\n\r\n",
                   status, ctype, len);
  if (write_all(fd, head, (size_t)n) == 0) write_all(fd, body, len);
}

static void connection(void *arg) {
  int fd = (int)(intptr_t)arg;
  char req[16384];
  size_t len = 0;
  req[0] = 0;
  while (!strstr(req, "\r\n\r\n")) { /* read the request head */
    if (len + 1 >= sizeof req) goto done;
    ssize_t n = read(fd, req + len, sizeof req - 1 - len);
    if (n > 0) {
      len += (size_t)n;
      req[len] = 0;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
      if (keel_wait_fd(fd, KEEL_READABLE, IO_TIMEOUT_MS, NULL) != 0) goto done;
    } else {
      goto done; /* closed before a whole request */
    }
  }
  if (strncmp(req, "GET /metrics ", 13) != 0 && strncmp(req, "GET /metrics?", 13) != 0) {
    static const char nf[] = "not found\n";
    respond(fd, "404 Not Found", "text/plain", nf, sizeof nf - 1);
    goto done;
  }
  char accept[1024];
  header(req, "Accept", accept, sizeof accept);
  keel_metrics_format fmt;
  const char *ctype;
  keel_metrics_negotiate(accept, &fmt, &ctype);
  keel_counter *scrapes;
  const char *v[1] = {fmt == KEEL_METRICS_OPENMETRICS ? "openmetrics" : "text"};
  if (keel_counter_get(scrapes_f, v, &scrapes) == 0) keel_counter_inc(scrapes);
  keel_metrics_buf b = {0};
  if (keel_metrics_render(reg, fmt, &b) == 0) {
    respond(fd, "200 OK", ctype, b.data, b.len);
    keel_log_info(NULL, "scrape served", KEEL_STR("format", v[0]), KEEL_UINT("bytes", b.len));
  } else {
    static const char err[] = "render failed\n";
    respond(fd, "500 Internal Server Error", "text/plain", err, sizeof err - 1);
  }
  keel_metrics_buf_free(&b);
done:
  close(fd);
}

static void backlog(void *arg) {
  (void)arg;
  for (;;)
    keel_sleep(3600 * 1000); /* never reads its mailbox */
}

static void acceptor(void *arg) {
  (void)arg;
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (lfd < 0) fail("socket", errno);
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)listen_port)};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) != 0) fail("bind", errno);
  if (listen(lfd, 64) != 0) fail("listen", errno);
  socklen_t sl = sizeof sa;
  if (getsockname(lfd, (struct sockaddr *)&sa, &sl) != 0) fail("getsockname", errno);

  keel_pid_t bl;
  if (keel_spawn(backlog, NULL, NULL, &bl) != 0) fail("spawn", 0);
  for (int i = 0; i < QUEUED_MESSAGES; i++)
    keel_send(bl, keel_msg_copy(1, &i, sizeof i));

  FILE *pf = port_file ? fopen(port_file, "w") : stdout;
  if (!pf) fail(port_file, errno);
  fprintf(pf, "%d\n", ntohs(sa.sin_port));
  if (port_file) {
    fclose(pf);
  } else {
    fflush(stdout);
  }
  keel_log_info(NULL, "listening", KEEL_INT("port", ntohs(sa.sin_port)));

  for (;;) {
    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED) {
        keel_wait_fd(lfd, KEEL_READABLE, KEEL_INFINITY, NULL);
        continue;
      }
      fail("accept", errno);
    }
    keel_spawn_opts o;
    keel_spawn_opts_init(&o);
    o.name = "scrape";
    if (keel_spawn(connection, (void *)(intptr_t)fd, &o, NULL) != 0) close(fd);
  }
}

int main(int argc, char **argv) {
  if (argc < 2 || argc > 3) {
    fprintf(stderr, "usage: prom_target PORT [PORT_FILE]\n");
    return 2;
  }
  char *end;
  long port = strtol(argv[1], &end, 10);
  if (*end || port < 0 || port > 65535) {
    fprintf(stderr, "prom_target: bad port %s\n", argv[1]);
    return 2;
  }
  listen_port = (int)port;
  port_file = argc > 2 ? argv[2] : NULL;

  keel_log_opts lo;
  keel_log_opts_init(&lo);
  lo.fd = 2;
  lo.service = "prom_target";
  if (keel_log_init(&lo) != 0) fail("keel_log_init", 0);
  if (keel_rt_start(NULL) != 0) fail("keel_rt_start", 0);
  if (keel_metrics_new(&reg, 0) != 0 || keel_metrics_register_builtin(reg) != 0 ||
      keel_metrics_counter(reg, "prom_target_scrapes_total", "Scrapes served, by format.",
                           (const char *[]){"format"}, 1, &scrapes_f) != 0)
    fail("metrics", 0);
  if (keel_spawn(acceptor, NULL, NULL, NULL) != 0) fail("spawn", 0);
  int rc = keel_rt_wait(); /* runs until killed */
  keel_rt_stop();
  keel_metrics_free(reg);
  keel_log_shutdown();
  return rc == 0 ? 0 : 1;
}
