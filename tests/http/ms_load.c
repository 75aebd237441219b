/* ms_load.c - a small HTTP/1.1 load and check client for the microservice's
 * integration test (tests/http/test_microservice.sh).
 *
 * It speaks just enough HTTP/1.1 over plain blocking loopback sockets to say
 * exactly what happened to every request, which curl cannot do under load:
 *
 *   ms_load freeport [N]                    print N (1) distinct free loopback TCP
 *                                           ports on one line, space-separated
 *   ms_load hold PORT SECONDS               listen on loopback PORT (no SO_REUSEPORT,
 *                                           so nobody else can) for SECONDS
 *   ms_load load PORT SECONDS CONNS [DELAY_MS]
 *       CONNS threads, each sending POST /api/process ({"delayMs":DELAY_MS})
 *       back to back on a keep-alive connection for SECONDS, reconnecting
 *       when a response says Connection: close or the connection fails.
 *       Prints one JSON summary line (counts, see print_summary).
 *   ms_load request PORT RAWFILE [IDLE_MS]
 *       sends the bytes of RAWFILE as they are and prints what comes back
 *       until the server closes or nothing arrives for IDLE_MS (2000).
 *   ms_load slowloris PORT MAX_SECONDS
 *       opens a connection that sends a request head one header line per
 *       second and never finishes it, while fresh connections keep asking
 *       GET /api/stats; prints whether and when the slow one was closed and
 *       how many of the others were served.
 *
 * What a load outcome means. A response is read in full (status line,
 * headers, Content-Length body). 200 must carry "processed":true, 503 the
 * error envelope; anything else is counted by status. Transport outcomes are
 * kept apart because they mean different things during a restart: a refused
 * connect only says no listener was there (fine while instances swap); a
 * connection closed or reset after a request was fully written and before
 * any byte of its response means the server dropped a request it may have
 * accepted (a failure). That case is split by whether the connection was
 * fresh (its first request) or reused (keep-alive), and by how it ended: a
 * reset (on a fresh connection, what the kernel does to connections still
 * queued on a listener that closes) or an orderly EOF (the server closed a
 * connection it took for idle while the request was on its way). Each thread keeps its own counters; the main thread adds them
 * up after joining, so the only shared state is the stop flag.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RBUF          (256 * 1024)
#define READ_TIMEOUT  15000 /* ms without a byte before a request counts as timed out */

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* Connects to 127.0.0.1:port. Returns the fd, or -errno. */
static int dial(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

/* Writes all of buf. Returns 0 or -errno. */
static int send_all(int fd, const char *buf, size_t len) {
  while (len) {
    ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    buf += n;
    len -= (size_t)n;
  }
  return 0;
}

/* ---- reading one response ------------------------------------------------------------------ */

enum { RS_OK = 0, RS_CLOSED, RS_RESET, RS_PARTIAL, RS_TIMEOUT, RS_BAD };

typedef struct resp {
  int status;
  bool conn_close;
  char *body; /* points into the buffer; NUL-terminated */
  size_t body_len;
} resp;

/* Reads into buf[*len..cap) waiting at most timeout_ms. Returns bytes read,
 * 0 on EOF, -1 on a reset or other error, -2 on timeout. */
static ssize_t read_some(int fd, char *buf, size_t cap, size_t *len, int timeout_ms) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  int r;
  do r = poll(&p, 1, timeout_ms);
  while (r < 0 && errno == EINTR);
  if (r == 0) return -2;
  ssize_t n;
  do n = recv(fd, buf + *len, cap - *len, 0);
  while (n < 0 && errno == EINTR);
  if (n < 0) return -1;
  *len += (size_t)n;
  return n;
}

/* Finds a header's value in the head [h, end). Writes it NUL-terminated to
 * out. */
static bool header_value(const char *h, const char *end, const char *name, char *out, size_t cap) {
  size_t nl = strlen(name);
  for (const char *p = h; p < end;) {
    const char *eol = memmem(p, (size_t)(end - p), "\r\n", 2);
    if (!eol) eol = end;
    if ((size_t)(eol - p) > nl && strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
      const char *v = p + nl + 1;
      while (v < eol && (*v == ' ' || *v == '\t')) v++;
      size_t vl = (size_t)(eol - v);
      if (vl >= cap) vl = cap - 1;
      memcpy(out, v, vl);
      out[vl] = '\0';
      return true;
    }
    p = eol + 2;
  }
  return false;
}

/* Reads one complete response on fd into buf (cap bytes). */
static int read_response(int fd, char *buf, size_t cap, resp *r) {
  size_t len = 0;
  char *hend = NULL;
  memset(r, 0, sizeof *r);
  while (!hend) {
    if (len + 1 >= cap) return RS_BAD;
    ssize_t n = read_some(fd, buf, cap - 1, &len, READ_TIMEOUT);
    if (n == -2) return RS_TIMEOUT;
    if (n <= 0) return len == 0 ? (n == 0 ? RS_CLOSED : RS_RESET) : RS_PARTIAL;
    buf[len] = '\0';
    hend = memmem(buf, len, "\r\n\r\n", 4);
  }
  if (sscanf(buf, "HTTP/1.%*d %d", &r->status) != 1) return RS_BAD;
  char v[64];
  size_t cl = 0;
  if (header_value(buf, hend + 2, "Content-Length", v, sizeof v)) cl = strtoul(v, NULL, 10);
  if (header_value(buf, hend + 2, "Connection", v, sizeof v)) r->conn_close = strcasecmp(v, "close") == 0;
  size_t head = (size_t)(hend + 4 - buf);
  if (head + cl + 1 > cap) return RS_BAD;
  while (len < head + cl) {
    ssize_t n = read_some(fd, buf, cap - 1, &len, READ_TIMEOUT);
    if (n == -2) return RS_TIMEOUT;
    if (n <= 0) return RS_PARTIAL;
  }
  buf[head + cl] = '\0';
  r->body = buf + head;
  r->body_len = cl;
  return RS_OK;
}

/* ---- load ---------------------------------------------------------------------------------- */

typedef struct counts {
  uint64_t requests, ok200, bad200, s503, bad503, other, conn_close, connects;
  uint64_t refused, connect_errors, send_failed, fresh_eof, fresh_reset, reused_eof, reused_reset;
  uint64_t partial, timeouts, bad;
  uint64_t by_status[600];
} counts;

typedef struct worker {
  pthread_t th;
  int port, delay_ms;
  int64_t until;
  counts c;
} worker;

static atomic_bool g_stop; /* relaxed: only ends the loops, carries no data */

static void *load_main(void *arg) {
  worker *w = arg;
  counts *c = &w->c;
  char *buf = malloc(RBUF);
  if (!buf) return NULL;
  char body[64], req[512];
  int bl = snprintf(body, sizeof body, "{\"delayMs\":%d}", w->delay_ms);
  int rl = snprintf(req, sizeof req,
                    "POST /api/process HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: ms_load\r\n"
                    "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
                    bl, body);
  int fd = -1;
  bool fresh = false;
  while (!atomic_load_explicit(&g_stop, memory_order_relaxed) && now_ms() < w->until) {
    if (fd < 0) {
      fd = dial(w->port);
      if (fd < 0) {
        if (fd == -ECONNREFUSED) c->refused++;
        else c->connect_errors++;
        fd = -1;
        sleep_ms(5);
        continue;
      }
      c->connects++;
      fresh = true;
    }
    c->requests++;
    bool drop = true;
    if (send_all(fd, req, (size_t)rl) != 0) {
      c->send_failed++;
    } else {
      resp r;
      int rc = read_response(fd, buf, RBUF, &r);
      switch (rc) {
      case RS_OK:
        if (r.status == 200) {
          if (strstr(r.body, "\"processed\":true")) c->ok200++;
          else c->bad200++;
        } else if (r.status == 503) {
          if (strstr(r.body, "\"success\":false") && strstr(r.body, "\"error\"")) c->s503++;
          else c->bad503++;
        } else {
          c->other++;
        }
        if (r.status >= 100 && r.status < 600) c->by_status[r.status]++;
        if (r.conn_close) c->conn_close++;
        drop = r.conn_close;
        fresh = false;
        break;
      case RS_CLOSED:
      case RS_RESET:
        if (fresh) *(rc == RS_CLOSED ? &c->fresh_eof : &c->fresh_reset) += 1;
        else *(rc == RS_CLOSED ? &c->reused_eof : &c->reused_reset) += 1;
        break;
      case RS_PARTIAL: c->partial++; break;
      case RS_TIMEOUT: c->timeouts++; break;
      default: c->bad++; break;
      }
    }
    if (drop) {
      close(fd);
      fd = -1;
    }
  }
  if (fd >= 0) close(fd);
  free(buf);
  return NULL;
}

static void print_summary(const counts *t, int64_t ms) {
  uint64_t failures = t->bad200 + t->bad503 + t->other + t->connect_errors + t->send_failed +
                      t->fresh_eof + t->fresh_reset + t->reused_eof + t->reused_reset + t->partial + t->timeouts + t->bad;
  printf("{\"requests\":%llu,\"status_200\":%llu,\"status_503\":%llu,\"status_other\":%llu,"
         "\"bad_200_body\":%llu,\"bad_503_body\":%llu,\"statuses\":{",
         (unsigned long long)t->requests, (unsigned long long)t->ok200,
         (unsigned long long)t->s503, (unsigned long long)t->other,
         (unsigned long long)t->bad200, (unsigned long long)t->bad503);
  const char *sep = "";
  for (int s = 100; s < 600; s++)
    if (t->by_status[s]) {
      printf("%s\"%d\":%llu", sep, s, (unsigned long long)t->by_status[s]);
      sep = ",";
    }
  printf("},\"connection_close\":%llu,\"connects\":%llu,\"refused\":%llu,\"connect_errors\":%llu,"
         "\"send_failed\":%llu,\"unanswered\":{\"fresh_eof\":%llu,\"fresh_reset\":%llu,"
         "\"reused_eof\":%llu,\"reused_reset\":%llu},\"partial\":%llu,\"timeouts\":%llu,"
         "\"unparseable\":%llu,\"failures\":%llu,\"ms\":%lld}\n",
         (unsigned long long)t->conn_close, (unsigned long long)t->connects,
         (unsigned long long)t->refused, (unsigned long long)t->connect_errors,
         (unsigned long long)t->send_failed, (unsigned long long)t->fresh_eof,
         (unsigned long long)t->fresh_reset, (unsigned long long)t->reused_eof,
         (unsigned long long)t->reused_reset, (unsigned long long)t->partial,
         (unsigned long long)t->timeouts, (unsigned long long)t->bad,
         (unsigned long long)failures, (long long)ms);
}

static int cmd_load(int port, int seconds, int conns, int delay_ms) {
  worker *ws = calloc((size_t)conns, sizeof *ws);
  if (!ws) return 1;
  int64_t t0 = now_ms();
  int started = 0;
  for (int i = 0; i < conns; i++) {
    ws[i].port = port;
    ws[i].delay_ms = delay_ms;
    ws[i].until = t0 + (int64_t)seconds * 1000;
    if (pthread_create(&ws[i].th, NULL, load_main, &ws[i]) != 0) break;
    started++;
  }
  counts t;
  memset(&t, 0, sizeof t);
  for (int i = 0; i < started; i++) {
    pthread_join(ws[i].th, NULL);
    const uint64_t *src = (const uint64_t *)&ws[i].c;
    uint64_t *dst = (uint64_t *)&t;
    for (size_t k = 0; k < sizeof t / sizeof(uint64_t); k++) dst[k] += src[k];
  }
  print_summary(&t, now_ms() - t0);
  free(ws);
  return started == conns ? 0 : 1;
}

/* ---- raw request ------------------------------------------------------------------------- */

static int cmd_request(int port, const char *path, int idle_ms) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    perror(path);
    return 2;
  }
  size_t cap = 1 << 16, len = 0;
  char *data = malloc(cap);
  for (size_t n; data && (n = fread(data + len, 1, cap - len, f)) > 0;) {
    len += n;
    if (len == cap) {
      char *bigger = realloc(data, cap *= 2);
      if (!bigger) free(data);
      data = bigger; /* NULL ends the loop */
    }
  }
  fclose(f);
  if (!data) return 2;
  int fd = dial(port);
  if (fd < 0) {
    fprintf(stderr, "connect: %s\n", strerror(-fd));
    free(data);
    return 1;
  }
  int rc = send_all(fd, data, len);
  free(data);
  if (rc != 0) fprintf(stderr, "send: %s (reading what came back anyway)\n", strerror(-rc));
  char buf[65536];
  size_t got = 0;
  for (;;) {
    size_t n = 0;
    ssize_t r = read_some(fd, buf, sizeof buf, &n, idle_ms);
    if (r <= 0) {
      if (r == -1) fprintf(stderr, "recv: %s\n", strerror(errno));
      break;
    }
    fwrite(buf, 1, n, stdout);
    got += n;
  }
  close(fd);
  return got ? 0 : 1;
}

/* ---- slowloris --------------------------------------------------------------------------- */

typedef struct slow {
  pthread_t th;
  int port, max_s;
  bool closed;
  int64_t closed_after_ms;
  size_t response_bytes;
} slow;

static void *slow_main(void *arg) {
  slow *s = arg;
  int fd = dial(s->port);
  if (fd < 0) return NULL;
  int64_t t0 = now_ms(), end = t0 + (int64_t)s->max_s * 1000;
  static const char head[] = "GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\n";
  if (send_all(fd, head, sizeof head - 1) == 0) {
    char buf[4096];
    for (int i = 0; now_ms() < end; i++) {
      size_t n = 0;
      ssize_t r = read_some(fd, buf, sizeof buf, &n, 1000);
      if (r == 0 || r == -1) { /* closed by the server */
        s->closed = true;
        break;
      }
      if (r > 0) {
        s->response_bytes += n;
        continue;
      }
      char line[32];
      int ll = snprintf(line, sizeof line, "X-Slow-%d: x\r\n", i);
      if (send_all(fd, line, (size_t)ll) != 0) {
        s->closed = true;
        break;
      }
    }
  }
  s->closed_after_ms = now_ms() - t0;
  atomic_store_explicit(&g_stop, true, memory_order_relaxed);
  close(fd);
  return NULL;
}

static int cmd_slowloris(int port, int max_s) {
  slow s = {.port = port, .max_s = max_s};
  if (pthread_create(&s.th, NULL, slow_main, &s) != 0) return 1;
  uint64_t served = 0, failed = 0;
  char *buf = malloc(RBUF);
  static const char get[] = "GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
  while (buf && !atomic_load_explicit(&g_stop, memory_order_relaxed)) {
    sleep_ms(200);
    int fd = dial(port);
    resp r;
    if (fd >= 0 && send_all(fd, get, sizeof get - 1) == 0 &&
        read_response(fd, buf, RBUF, &r) == RS_OK && r.status == 200)
      served++;
    else
      failed++;
    if (fd >= 0) close(fd);
  }
  pthread_join(s.th, NULL);
  free(buf);
  printf("{\"closed\":%s,\"closed_after_ms\":%lld,\"response_bytes\":%zu,\"served\":%llu,"
         "\"served_failed\":%llu}\n",
         s.closed ? "true" : "false", (long long)s.closed_after_ms, s.response_bytes,
         (unsigned long long)served, (unsigned long long)failed);
  return 0;
}

/* ---- main -------------------------------------------------------------------------------- */

static int cmd_hold(int port, int seconds) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 16) != 0) {
    perror("hold");
    return 1;
  }
  printf("holding %d\n", port);
  fflush(stdout);
  sleep((unsigned)seconds);
  close(fd);
  return 0;
}

/* N distinct free loopback TCP ports on one line. All N sockets stay bound
 * until every port is known: a port is free again once its socket closes, so
 * picking them one at a time could hand the same port out twice (the test
 * scripts used to redraw until two differed). */
enum { FREEPORT_MAX = 16 };

static int cmd_freeport(int n) {
  int fds[FREEPORT_MAX], ports[FREEPORT_MAX], got = 0, rc = 0;
  for (; got < n; got++) {
    fds[got] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof a;
    if (fds[got] < 0 || bind(fds[got], (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(fds[got], (struct sockaddr *)&a, &sl) != 0) {
      perror("freeport");
      if (fds[got] >= 0) close(fds[got]);
      rc = 1;
      break;
    }
    ports[got] = ntohs(a.sin_port);
  }
  if (rc == 0)
    for (int i = 0; i < n; i++)
      printf("%d%c", ports[i], i + 1 < n ? ' ' : '\n');
  for (int i = 0; i < got; i++)
    close(fds[i]);
  return rc;
}

static int usage(void) {
  fprintf(stderr, "usage: ms_load freeport [N]\n"
                  "       ms_load load PORT SECONDS CONNS [DELAY_MS]\n"
                  "       ms_load request PORT RAWFILE [IDLE_MS]\n"
                  "       ms_load slowloris PORT MAX_SECONDS\n");
  return 2;
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc >= 2 && strcmp(argv[1], "freeport") == 0) {
    int n = argc > 2 ? atoi(argv[2]) : 1;
    if (n < 1 || n > FREEPORT_MAX) return usage();
    return cmd_freeport(n);
  }
  if (argc >= 4 && strcmp(argv[1], "hold") == 0) return cmd_hold(atoi(argv[2]), atoi(argv[3]));
  if (argc < 4) return usage();
  int port = atoi(argv[2]);
  if (port <= 0 || port > 65535) return usage();
  if (strcmp(argv[1], "load") == 0 && argc >= 5) {
    int secs = atoi(argv[3]), conns = atoi(argv[4]), delay = argc > 5 ? atoi(argv[5]) : 0;
    if (secs <= 0 || conns <= 0 || conns > 1000 || delay < 0) return usage();
    return cmd_load(port, secs, conns, delay);
  }
  if (strcmp(argv[1], "request") == 0)
    return cmd_request(port, argv[3], argc > 4 ? atoi(argv[4]) : 2000);
  if (strcmp(argv[1], "slowloris") == 0 && atoi(argv[3]) > 0)
    return cmd_slowloris(port, atoi(argv[3]));
  return usage();
}
