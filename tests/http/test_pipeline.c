/* test_pipeline.c - pipelining under load: long bursts of pipelined
 * requests that the server answers on its loop (404, 405, 429, 400, CORS
 * preflights) mixed with requests answered by handler processes, on one
 * connection, on fifty at once, and from a client that does not read.
 *
 * What it proves. Every response comes back, in order, with the right status
 * (each request carries X-Request-Id: <prefix><N>, which the server echoes),
 * and the memory the whole process uses (VmRSS: the server runs in this
 * process) stays bounded while it happens, however long the burst. A server
 * that re-parses or copies the unparsed rest of the burst for each request
 * answered on its loop costs memory quadratic in the burst (8,000 pipelined
 * 404s once took RSS from 5 MB to 960 MB) and holds its scheduler's loop for
 * the whole burst; one that keeps reading while its answers cannot be sent
 * buffers without limit. Both fail here.
 *
 * The cases. One connection with 100,000 requests of every kind (a handler's
 * answer every 10th, which must keep its place among the loop's answers
 * around it); fifty connections at once, half of them only 404s, with a probe
 * beside them; a client that sends 48 MiB of requests without reading; 404s
 * piled up behind a slow handler, the shape that made the copies quadratic
 * (a handler every 10th, as in case one, cuts each run of loop answers
 * short, so that case alone would not show it); and a run past the rate
 * limit (429s) that a malformed request ends (400, closed).
 *
 * Memory bound. A sampler thread reads VmRSS every 10 ms; the growth from
 * just before the clients start to the peak must stay under RSS_BOUND
 * (64 MiB). What the server may legitimately hold is per connection: its
 * bounded pipeline buffer, the answers of one batch of requests and a handler
 * process or a few; that is well under 1 MiB a connection, so 64 MiB leaves
 * room for the allocator's arenas (trimmed before each measure) and still
 * sits far below what an unbounded server needs for these bursts: the
 * answers to the silent client's requests alone are some 150 MB, and the
 * quadratic copies behind a slow handler came to some 800 MiB. The bound is
 * asserted only when the environment variable KEEL_TEST_SANITIZER is unset
 * (and the build is not sanitized): ASan's quarantine and TSan's shadow
 * memory inflate RSS. The figure is printed either way. To spare the
 * machine, the sampler fails the case as soon as the bound is passed (or,
 * under sanitizers, past 2 GiB). Under ThreadSanitizer the counts are scaled
 * down (kt_scale_tsan; KEEL_TEST_HEAVY=1 keeps them).
 *
 * Timing decides nothing (tests/keel_test.h): the probe latencies of the
 * fifty-connection case are printed, and only a liveness bound (every probe
 * answered within 10 s) is checked.
 *
 * The clients are plain pthreads and non-blocking sockets with poll, started
 * from keel_blocking so that the case's process waits on libuv's thread pool
 * while the server's schedulers serve; every wait has a timeout, so a server
 * that stops answering fails the case instead of hanging it.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <malloc.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>

#include "http/kt_http.h"

#define MIB          (1024.0 * 1024.0)
#define RSS_BOUND    ((size_t)64 << 20) /* growth allowed, see above */
#define RSS_CEILING  ((size_t)2 << 30)  /* under sanitizers: only a safety stop */
#define STALL_MS     30000              /* no byte moved for this long: the server is stuck */
#define PROBE_MAX_MS 10000              /* liveness bound for one probe request */
#define HELLO        "{\"hello\":\"world\"}"
#define NAP_MS       100 /* /api/nap's handler sleeps this long */
#define ORIGIN       "https://app.example"

/* ---- the server ----------------------------------------------------------------------- */

static int h_hello(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req, (void)ud;
  return keel_http_reply_text(res, 200, "application/json", HELLO);
}

/* A slow handler: the requests pipelined behind it pile up meanwhile. */
static int h_nap(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req, (void)ud;
  keel_sleep(NAP_MS);
  return keel_http_reply_text(res, 200, "text/plain", "rested");
}

static keel_http_server *start(keel_http_opts *o) {
  keel_http_router *r = keel_http_router_new();
  CHECK(r != NULL);
  CHECK_OK(keel_http_route(r, "GET", "/api/hello", h_hello, NULL));
  CHECK_OK(keel_http_route(r, "GET", "/api/nap", h_nap, NULL));
  keel_http_server *s;
  o->host = "127.0.0.1";
  o->port = 0;
  o->no_access_log = true; /* a line per request would be most of what is measured */
  CHECK_OK(keel_http_start(o, r, &s));
  CHECK(keel_http_port(s) > 0);
  return s;
}

/* Options for the load cases: no rate limit (every client is 127.0.0.1),
 * CORS on so that preflights are answered on the loop. */
static void load_options(keel_http_opts *o) {
  keel_http_opts_init(o);
  o->rate_limit = 0;
  o->cors_origins = ORIGIN;
}

/* ---- memory ---------------------------------------------------------------------------- */

static size_t rss_now(void) {
  FILE *f = fopen("/proc/self/status", "r");
  if (!f) return 0;
  char line[256];
  size_t kb = 0;
  while (fgets(line, sizeof line, f))
    if (strncmp(line, "VmRSS:", 6) == 0) {
      kb = strtoul(line + 6, NULL, 10);
      break;
    }
  fclose(f);
  return kb * 1024;
}

/* True when the RSS bound is asserted: no sanitizer (their quarantine and
 * shadow memory inflate RSS). */
static bool rss_asserted(void) {
  const char *san = getenv("KEEL_TEST_SANITIZER");
  return !(san && *san) && !KT_SANITIZED;
}

typedef struct sampler {
  pthread_t t;
  atomic_bool stop;
  const char *label;
  size_t base;         /* before the clients started */
  _Atomic size_t peak; /* highest sample since */
} sampler;

static void *sampler_main(void *arg) {
  sampler *s = arg;
  size_t limit = rss_asserted() ? RSS_BOUND : RSS_CEILING;
  while (!atomic_load(&s->stop)) {
    size_t r = rss_now();
    if (r > atomic_load(&s->peak)) atomic_store(&s->peak, r);
    if (r > s->base && r - s->base > limit) {
      fprintf(stderr, "%s: RSS grew by %.1f MiB (from %.1f to %.1f MiB), past the %s of %.0f MiB\n",
              s->label, (double)(r - s->base) / MIB, (double)s->base / MIB, (double)r / MIB,
              rss_asserted() ? "bound" : "safety ceiling", (double)limit / MIB);
      fflush(stderr);
      abort();
    }
    struct timespec ts = {0, 10 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  return NULL;
}

static void sampler_start(sampler *s, const char *label) {
  s->label = label;
  atomic_store(&s->stop, false);
  /* what earlier cases freed goes back to the kernel first: kept in the
   * allocator, it would absorb this case's growth without showing in RSS */
  malloc_trim(0);
  s->base = rss_now();
  atomic_store(&s->peak, s->base);
  CHECK_OK(pthread_create(&s->t, NULL, sampler_main, s));
}

/* Stops the sampler and returns the growth (peak - base). */
static size_t sampler_stop(sampler *s) {
  atomic_store(&s->stop, true);
  pthread_join(s->t, NULL);
  size_t r = rss_now(), peak = atomic_load(&s->peak);
  if (r > peak) peak = r;
  return peak > s->base ? peak - s->base : 0;
}

/* Prints the figures and checks the bound (when asserted). */
static void check_growth(const sampler *s, size_t growth) {
  fprintf(stderr, "   %s: RSS %.1f MiB before, peak %.1f MiB, growth %.1f MiB (bound %.0f MiB, %s)\n",
          s->label, (double)s->base / MIB, (double)atomic_load(&s->peak) / MIB,
          (double)growth / MIB, (double)RSS_BOUND / MIB,
          rss_asserted() ? "asserted" : "not asserted: sanitizer");
  if (rss_asserted()) CHECK(growth < RSS_BOUND);
}

/* ---- what is sent and what must come back ------------------------------------------------- */

enum kind { K_ROUTED, K_SLOW, K_NOT_FOUND, K_WRONG_METHOD, K_PREFLIGHT, K_MALFORMED };

typedef enum mix {
  MIX_ALL,                /* every 10th routed (200), 405s, preflights (204), the rest 404 */
  MIX_NOT_FOUND,          /* only 404s */
  MIX_LIMITED_THEN_BAD,   /* a slow handler (200) and 404s up to the rate limit, then 429s,
                           * the last one malformed (400) */
  MIX_BEHIND_SLOW,        /* a slow handler (200), then `every - 1` 404s, and again */
} mix;

typedef struct plan {
  unsigned long n;  /* requests */
  char prefix[16];  /* request ids are prefix + index */
  mix mix;
  size_t pad;       /* bytes of an X-Pad header in each request (0: none) */
  unsigned long limit; /* MIX_LIMITED_THEN_BAD: the server's rate limit */
  unsigned long every; /* MIX_BEHIND_SLOW: one slow request every this many */
} plan;

static enum kind kind_of(const plan *p, unsigned long i) {
  switch (p->mix) {
  case MIX_ALL:
    switch (i % 10) {
    case 0: return K_ROUTED;
    case 3: return K_WRONG_METHOD;
    case 7: return K_PREFLIGHT;
    default: return K_NOT_FOUND;
    }
  case MIX_NOT_FOUND: return K_NOT_FOUND;
  case MIX_LIMITED_THEN_BAD: return i == 0 ? K_SLOW : i + 1 == p->n ? K_MALFORMED : K_NOT_FOUND;
  case MIX_BEHIND_SLOW: return i % p->every == 0 ? K_SLOW : K_NOT_FOUND;
  }
  return K_NOT_FOUND;
}

typedef struct expect {
  int status;
  const char *code; /* the error envelope's code, or NULL */
  const char *body; /* a 200's body */
  bool echoed;      /* the response carries the request's own id */
} expect;

static expect expect_of(const plan *p, unsigned long i) {
  switch (kind_of(p, i)) {
  case K_ROUTED: return (expect){200, NULL, HELLO, true};
  case K_SLOW: return (expect){200, NULL, "rested", true};
  case K_WRONG_METHOD: return (expect){405, "METHOD_NOT_ALLOWED", NULL, true};
  case K_PREFLIGHT: return (expect){204, NULL, NULL, true};
  case K_MALFORMED: return (expect){400, "BAD_REQUEST", NULL, false}; /* no id could be read */
  case K_NOT_FOUND: break;
  }
  if (p->mix == MIX_LIMITED_THEN_BAD && i >= p->limit)
    return (expect){429, "RATE_LIMITED", NULL, true};
  return (expect){404, "NOT_FOUND", NULL, true};
}

#define MAX_REQ 2048 /* one request's bytes at most (with its padding) */

static size_t make_req(const plan *p, unsigned long i, char *out) {
  static const char pad[MAX_REQ] = {[0 ... MAX_REQ - 2] = 'p'};
  int padn = (int)(p->pad < MAX_REQ - 512 ? p->pad : MAX_REQ - 512);
  const char *line = "GET /no/such/path HTTP/1.1\r\n", *extra = "";
  switch (kind_of(p, i)) {
  case K_ROUTED: line = "GET /api/hello HTTP/1.1\r\n"; break;
  case K_SLOW: line = "GET /api/nap HTTP/1.1\r\n"; break;
  case K_WRONG_METHOD: line = "DELETE /api/hello HTTP/1.1\r\n"; break;
  case K_PREFLIGHT:
    line = "OPTIONS /api/hello HTTP/1.1\r\n";
    extra = "Origin: " ORIGIN "\r\nAccess-Control-Request-Method: GET\r\n";
    break;
  case K_MALFORMED: memcpy(out, "NOT HTTP AT ALL\r\n\r\n", 19); return 19;
  case K_NOT_FOUND: break;
  }
  int n;
  if (padn)
    n = snprintf(out, MAX_REQ, "%sHost: t\r\nX-Request-Id: %s%lu\r\n%sX-Pad: %.*s\r\n\r\n", line,
                 p->prefix, i, extra, padn, pad);
  else
    n = snprintf(out, MAX_REQ, "%sHost: t\r\nX-Request-Id: %s%lu\r\n%s\r\n", line, p->prefix, i,
                 extra);
  CHECK(n > 0 && n < MAX_REQ);
  return (size_t)n;
}

/* The requests of a plan, made a chunk at a time (nothing is prepared in
 * advance: the client's memory must not blur the server's). */
typedef struct sender {
  const plan *p;
  unsigned long next; /* the next request to put in the chunk */
  char chunk[64 * 1024];
  size_t off, len;
  uint64_t bytes; /* sent so far */
} sender;

/* Makes sure there are bytes to send; false when everything was sent. */
static bool sender_fill(sender *w) {
  if (w->off < w->len) return true;
  w->off = w->len = 0;
  while (w->next < w->p->n && w->len + MAX_REQ <= sizeof w->chunk)
    w->len += make_req(w->p, w->next++, w->chunk + w->len);
  return w->len > 0;
}

static bool sender_done(const sender *w) { return w->next == w->p->n && w->off == w->len; }

/* Sends what it can without blocking (or, on a blocking socket, one chunk);
 * -1 on a failure (errno), else the bytes sent (0: the socket is full). */
static ssize_t sender_push(sender *w, int fd) {
  if (!sender_fill(w)) return 0;
  ssize_t n = send(fd, w->chunk + w->off, w->len - w->off, MSG_NOSIGNAL);
  if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : -1;
  w->off += (size_t)n;
  w->bytes += (uint64_t)n;
  return n;
}

/* The responses of a plan as they come: each checked against its request. */
typedef struct stream {
  const plan *p;
  char *buf;
  size_t cap, len;
  unsigned long got; /* responses checked */
  bool closed;       /* the server closed the connection (EOF) */
  char why[512];     /* the first mismatch */
} stream;

static void stream_init(stream *s, const plan *p, size_t cap) {
  memset(s, 0, sizeof *s);
  s->p = p;
  s->cap = cap;
  s->buf = malloc(cap);
  CHECK(s->buf != NULL);
  memset(s->buf, 0, cap); /* in the RSS before the measure starts */
}

static void stream_free(stream *s) {
  free(s->buf);
  s->buf = NULL;
}

/* The value of header `name` in head[0..n) (n covers the final CRLFCRLF). */
static bool head_value(const char *head, size_t n, const char *name, char *out, size_t cap) {
  size_t nl = strlen(name);
  const char *end = head + n;
  for (const char *p = memchr(head, '\n', n); p && p + 1 < end;
       p = memchr(p + 1, '\n', (size_t)(end - p - 1))) {
    const char *line = p + 1;
    if ((size_t)(end - line) > nl && strncasecmp(line, name, nl) == 0 && line[nl] == ':') {
      const char *v = line + nl + 1;
      while (v < end && *v == ' ')
        v++;
      const char *e = memchr(v, '\r', (size_t)(end - v));
      size_t len = e ? (size_t)(e - v) : 0;
      if (len >= cap) len = cap - 1;
      memcpy(out, v, len);
      out[len] = 0;
      return true;
    }
  }
  return false;
}

/* Checks every complete response in the buffer; false (with s->why) at the
 * first one that is not what its request asked for. */
static bool stream_consume(stream *s) {
  size_t off = 0;
  while (!s->why[0]) {
    const char *p = s->buf + off;
    size_t avail = s->len - off;
    const char *eoh = memmem(p, avail, "\r\n\r\n", 4);
    if (!eoh) break;
    size_t hl = (size_t)(eoh - p) + 4;
    /* the buffer is not NUL-terminated: no string functions on it */
    int status = 0;
    if (hl < 16 || memcmp(p, "HTTP/1.1 ", 9) != 0 || p[9] < '1' || p[9] > '5' ||
        p[10] < '0' || p[10] > '9' || p[11] < '0' || p[11] > '9') {
      snprintf(s->why, sizeof s->why, "response %lu: not a status line: [%.*s]", s->got,
               (int)(hl < 40 ? hl : 40), p);
      break;
    }
    status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    char cl[32] = "0", rid[160] = "", conn[32] = "";
    head_value(p, hl, "Content-Length", cl, sizeof cl);
    head_value(p, hl, "X-Request-Id", rid, sizeof rid);
    head_value(p, hl, "Connection", conn, sizeof conn);
    size_t blen = strtoul(cl, NULL, 10);
    if (avail < hl + blen) break; /* the body is still coming */
    const char *body = p + hl;
    if (s->got >= s->p->n) {
      snprintf(s->why, sizeof s->why, "a response past the %lu requests: status %d id %s",
               s->p->n, status, rid);
      break;
    }
    expect e = expect_of(s->p, s->got);
    char want[48];
    snprintf(want, sizeof want, "%s%lu", s->p->prefix, s->got);
    if (status != e.status || (e.echoed && strcmp(rid, want) != 0)) {
      snprintf(s->why, sizeof s->why,
               "response %lu: status %d with X-Request-Id %s, want %d with %s", s->got, status,
               rid, e.status, e.echoed ? want : "(a generated one)");
      break;
    }
    bool body_ok = true;
    if (status == 200) body_ok = blen == strlen(e.body) && memcmp(body, e.body, blen) == 0;
    else if (status == 204) body_ok = blen == 0;
    else if (e.code) {
      char code[64];
      snprintf(code, sizeof code, "\"code\":\"%s\"", e.code);
      body_ok = memmem(body, blen, code, strlen(code)) != NULL;
    }
    if (!body_ok) {
      snprintf(s->why, sizeof s->why, "response %lu (%s, %d): unexpected body [%.*s]", s->got,
               want, status, (int)(blen < 200 ? blen : 200), body);
      break;
    }
    bool last = s->got + 1 == s->p->n;
    if (strcasecmp(conn, last && e.status == 400 ? "close" : "keep-alive") != 0) {
      snprintf(s->why, sizeof s->why, "response %lu (%s, %d): Connection: %s", s->got, want,
               status, conn);
      break;
    }
    s->got++;
    off += hl + blen;
  }
  memmove(s->buf, s->buf + off, s->len - off);
  s->len -= off;
  if (!s->why[0] && s->len == s->cap)
    snprintf(s->why, sizeof s->why, "response %lu: larger than the buffer", s->got);
  return !s->why[0];
}

/* Reads what is there (one recv) and checks it; false on a mismatch, a
 * failure or an EOF before every response came (s->why says which). With
 * eof_ok, an EOF after the last response sets s->closed. */
static bool stream_recv(stream *s, int fd, bool eof_ok) {
  ssize_t n = recv(fd, s->buf + s->len, s->cap - s->len, MSG_DONTWAIT);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return true;
    snprintf(s->why, sizeof s->why, "recv after %lu responses: %s", s->got, strerror(errno));
    return false;
  }
  if (n == 0) {
    s->closed = true;
    if (eof_ok && s->got == s->p->n && s->len == 0) return true;
    snprintf(s->why, sizeof s->why, "the server closed the connection after %lu of %lu responses",
             s->got, s->p->n);
    return false;
  }
  s->len += (size_t)n;
  return stream_consume(s);
}

/* ---- sockets ------------------------------------------------------------------------------ */

static int connect_to(int port, bool nonblocking) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  CHECK(fd >= 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK_OK(connect(fd, (struct sockaddr *)&a, sizeof a));
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (nonblocking) CHECK_OK(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK));
  return fd;
}

/* Runs the plans of `n` connections to the end in one poll loop: sends each
 * one's requests as its socket takes them and checks its responses as they
 * come. False (with the failing stream's why) at the first failure or after
 * STALL_MS without any byte moving. */
static bool run_conns(int *fds, sender *w, stream *r, int n, bool eof_ok) {
  struct pollfd *pf = calloc((size_t)n, sizeof *pf);
  int *idx = calloc((size_t)n, sizeof *idx);
  CHECK(pf && idx);
  int64_t last = kt_now_ms();
  bool ok = true;
  for (;;) {
    int k = 0;
    for (int i = 0; i < n; i++) {
      bool more_in = r[i].got < r[i].p->n || (eof_ok && !r[i].closed);
      if (!more_in) continue;
      pf[k] = (struct pollfd){.fd = fds[i], .events = POLLIN | (sender_done(&w[i]) ? 0 : POLLOUT)};
      idx[k++] = i;
    }
    if (k == 0) break;
    int rc = poll(pf, (nfds_t)k, 200);
    if (rc < 0 && errno != EINTR) {
      snprintf(r[0].why, sizeof r[0].why, "poll: %s", strerror(errno));
      ok = false;
      break;
    }
    bool moved = false;
    for (int j = 0; j < k && ok; j++) {
      int i = idx[j];
      if (pf[j].revents & POLLOUT) {
        ssize_t m = sender_push(&w[i], fds[i]);
        if (m < 0) {
          snprintf(r[i].why, sizeof r[i].why, "send after %llu bytes: %s",
                   (unsigned long long)w[i].bytes, strerror(errno));
          ok = false;
        }
        moved |= m > 0;
      }
      if (ok && (pf[j].revents & (POLLIN | POLLERR | POLLHUP))) {
        size_t before = r[i].len;
        unsigned long got = r[i].got;
        ok = stream_recv(&r[i], fds[i], eof_ok);
        moved |= r[i].len != before || r[i].got != got || r[i].closed;
      }
    }
    if (!ok) break;
    if (moved) last = kt_now_ms();
    else if (kt_now_ms() - last > STALL_MS) {
      for (int j = 0; j < k; j++)
        snprintf(r[idx[j]].why, sizeof r[idx[j]].why,
                 "nothing moved for %d ms: %lu of %lu responses, %llu bytes sent", STALL_MS,
                 r[idx[j]].got, r[idx[j]].p->n, (unsigned long long)w[idx[j]].bytes);
      ok = false;
      break;
    }
  }
  free(pf);
  free(idx);
  return ok;
}

/* ---- one connection, a writer and a reader ------------------------------------------------ */

typedef struct duplex {
  const char *label;
  int port;
  plan p;
  bool eof_ok; /* the plan ends with the server closing (a 400) */
  sender *w;
  stream r;
  int fd;
  char werr[128];
  double secs;
} duplex;

static void *writer_main(void *arg) {
  duplex *d = arg;
  while (!sender_done(d->w)) {
    if (sender_push(d->w, d->fd) < 0) { /* blocking, with a send timeout */
      snprintf(d->werr, sizeof d->werr, "send after %llu bytes: %s",
               (unsigned long long)d->w->bytes, strerror(errno));
      break;
    }
  }
  return NULL;
}

static void *reader_main(void *arg) {
  duplex *d = arg;
  while (d->r.got < d->p.n || (d->eof_ok && !d->r.closed)) {
    struct pollfd pf = {.fd = d->fd, .events = POLLIN};
    int rc = poll(&pf, 1, STALL_MS);
    if (rc == 0) {
      snprintf(d->r.why, sizeof d->r.why, "no byte for %d ms after %lu of %lu responses",
               STALL_MS, d->r.got, d->p.n);
      break;
    }
    if (rc < 0 && errno != EINTR) break;
    if (rc > 0 && !stream_recv(&d->r, d->fd, d->eof_ok)) break;
  }
  return NULL;
}

/* A writer thread sends the plan on one connection while a reader thread
 * checks the responses as they come; the sampler watches RSS meanwhile. */
static void duplex_run(void *arg) {
  duplex *d = arg;
  static sampler sm;
  stream_init(&d->r, &d->p, 1 << 20); /* the client's buffers before the measure starts */
  d->fd = connect_to(d->port, false);
  struct timeval tv = {.tv_sec = STALL_MS / 1000};
  setsockopt(d->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  sampler_start(&sm, d->label);
  int64_t t0 = kt_now_ns();
  pthread_t wt, rt;
  CHECK_OK(pthread_create(&rt, NULL, reader_main, d));
  CHECK_OK(pthread_create(&wt, NULL, writer_main, d));
  pthread_join(rt, NULL);
  if (d->r.why[0] || (d->eof_ok && d->r.closed)) shutdown(d->fd, SHUT_RDWR); /* unblocks the writer */
  pthread_join(wt, NULL);
  d->secs = (double)(kt_now_ns() - t0) / 1e9;
  size_t growth = sampler_stop(&sm);
  close(d->fd);
  fprintf(stderr, "   %lu pipelined requests on one connection in %.2f s (%.0f/s), %llu bytes sent\n",
          d->r.got, d->secs, (double)d->r.got / d->secs, (unsigned long long)d->w->bytes);
  if (d->werr[0]) fprintf(stderr, "   writer: %s\n", d->werr);
  if (d->r.why[0]) fprintf(stderr, "   reader: %s\n", d->r.why);
  check_growth(&sm, growth);
}

/* ---- cases --------------------------------------------------------------------------------- */

KT_CASE(one_connection_with_100000_pipelined_requests_gets_every_answer_in_order_in_bounded_memory) {
  keel_http_opts o;
  load_options(&o);
  keel_http_server *s = start(&o);
  static duplex d;
  memset(&d, 0, sizeof d);
  d.port = keel_http_port(s);
  d.label = "one connection";
  /* 10% routed to a handler (200), 10% wrong method (405), 10% CORS
   * preflights (204), 70% no route (404): a handler's answer must wait for
   * its process while the loop-answered ones around it keep their place */
  d.p = (plan){.n = kt_scale_tsan(100000, 20000), .prefix = "r", .mix = MIX_ALL};
  d.w = calloc(1, sizeof *d.w);
  CHECK(d.w != NULL);
  d.w->p = &d.p;
  CHECK_OK(keel_blocking(duplex_run, &d));
  CHECK_STR(d.werr[0] ? d.werr : "", "");
  CHECK_STR(d.r.why[0] ? d.r.why : "", "");
  CHECK_EQ(d.r.got, d.p.n);
  stream_free(&d.r);
  free(d.w);
  CHECK_OK(keel_http_stop(s));
}

/* Fifty connections at once, and a probe beside them. */
#define NCONN 50

typedef struct fifty {
  int port;
  plan p[NCONN];
  sender *w; /* NCONN */
  stream r[NCONN];
  int fds[NCONN];
  bool ok;
  double secs;
  atomic_bool load_done;
  /* the probe: one request at a time on its own connection */
  plan probe_p;
  stream probe_r;
  int64_t *lat_ns;
  size_t nlat, cap;
  char probe_err[640];
} fifty;

static void *probe_main(void *arg) {
  fifty *f = arg;
  int fd = connect_to(f->port, false);
  struct timeval tv = {.tv_sec = PROBE_MAX_MS / 1000};
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  const plan *pp = &f->probe_p;
  stream *r = &f->probe_r;
  char req[MAX_REQ];
  unsigned long i = 0;
  while (!atomic_load(&f->load_done) && f->nlat < f->cap) {
    /* ids probe0, probe10, ...: the plan's routed requests */
    unsigned long idx = i * 10;
    r->got = idx; /* the stream checks the response against request idx */
    size_t n = make_req(pp, idx, req);
    int64_t t0 = kt_now_ns();
    if (send(fd, req, n, MSG_NOSIGNAL) != (ssize_t)n) {
      snprintf(f->probe_err, sizeof f->probe_err, "probe %lu: send: %s", i, strerror(errno));
      break;
    }
    while (r->got == idx) {
      struct pollfd pf = {.fd = fd, .events = POLLIN};
      int64_t left = PROBE_MAX_MS - (kt_now_ns() - t0) / 1000000;
      if (left <= 0 || poll(&pf, 1, (int)left) == 0) {
        snprintf(f->probe_err, sizeof f->probe_err, "probe %lu: no answer within %d ms", i,
                 PROBE_MAX_MS);
        break;
      }
      if (!stream_recv(r, fd, false)) {
        snprintf(f->probe_err, sizeof f->probe_err, "probe %lu: %s", i, r->why);
        break;
      }
    }
    if (f->probe_err[0]) break;
    f->lat_ns[f->nlat++] = kt_now_ns() - t0;
    i++;
  }
  close(fd);
  return NULL;
}

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

static void fifty_run(void *arg) {
  fifty *f = arg;
  static sampler sm;
  /* the client's buffers before the measure starts */
  for (int i = 0; i < NCONN; i++)
    stream_init(&f->r[i], &f->p[i], 256 * 1024);
  /* ids probe0, probe10, ...: the routed requests of the mixed plan */
  f->probe_p = (plan){.n = 1u << 30, .prefix = "probe", .mix = MIX_ALL};
  stream_init(&f->probe_r, &f->probe_p, 64 * 1024);
  f->cap = 1u << 18;
  f->lat_ns = calloc(f->cap, sizeof *f->lat_ns);
  CHECK(f->lat_ns != NULL);
  memset(f->lat_ns, 0, f->cap * sizeof *f->lat_ns);
  for (int i = 0; i < NCONN; i++)
    f->fds[i] = connect_to(f->port, true);
  sampler_start(&sm, "fifty connections");
  pthread_t pt;
  CHECK_OK(pthread_create(&pt, NULL, probe_main, f));
  int64_t t0 = kt_now_ns();
  f->ok = run_conns(f->fds, f->w, f->r, NCONN, false);
  f->secs = (double)(kt_now_ns() - t0) / 1e9;
  atomic_store(&f->load_done, true);
  pthread_join(pt, NULL);
  size_t growth = sampler_stop(&sm);
  unsigned long total = 0;
  for (int i = 0; i < NCONN; i++) {
    close(f->fds[i]);
    total += f->r[i].got;
    if (f->r[i].why[0]) fprintf(stderr, "   connection %d: %s\n", i, f->r[i].why);
  }
  fprintf(stderr, "   %d connections x %lu pipelined requests: %lu answers in %.2f s (%.0f/s)\n",
          NCONN, f->p[0].n, total, f->secs, (double)total / f->secs);
  if (f->nlat) {
    qsort(f->lat_ns, f->nlat, sizeof *f->lat_ns, cmp_i64);
    fprintf(stderr,
            "   probe (one request at a time beside them): %zu requests, p50 %.2f ms, p99 %.2f ms, "
            "max %.2f ms\n",
            f->nlat, (double)f->lat_ns[f->nlat / 2] / 1e6,
            (double)f->lat_ns[(f->nlat * 99) / 100] / 1e6, (double)f->lat_ns[f->nlat - 1] / 1e6);
  }
  if (f->probe_err[0]) fprintf(stderr, "   probe: %s\n", f->probe_err);
  check_growth(&sm, growth);
}

KT_CASE(fifty_connections_at_once_with_2000_pipelined_requests_each_are_answered_in_order_while_a_probe_is_served) {
  keel_http_opts o;
  load_options(&o);
  keel_http_server *s = start(&o);
  static fifty f;
  memset(&f, 0, sizeof f);
  f.port = keel_http_port(s);
  f.w = calloc(NCONN, sizeof *f.w);
  CHECK(f.w != NULL);
  unsigned long per = kt_scale_tsan(2000, 400);
  for (int i = 0; i < NCONN; i++) {
    /* half of them the mixed plan of case one, half only 404s: bursts the
     * loop answers with no handler in between to pause it */
    f.p[i] = (plan){.n = per, .mix = i % 2 ? MIX_NOT_FOUND : MIX_ALL};
    snprintf(f.p[i].prefix, sizeof f.p[i].prefix, "c%d-", i);
    f.w[i].p = &f.p[i];
  }
  CHECK_OK(keel_blocking(fifty_run, &f));
  CHECK(f.ok);
  for (int i = 0; i < NCONN; i++) {
    CHECK_EQ(f.r[i].got, per);
    stream_free(&f.r[i]);
  }
  CHECK_STR(f.probe_err[0] ? f.probe_err : "", "");
  CHECK(f.nlat >= 1);
  for (size_t i = 0; i < f.nlat; i++) /* liveness only: each probe within 10 s */
    CHECK(f.lat_ns[i] < (int64_t)PROBE_MAX_MS * 1000000);
  stream_free(&f.probe_r);
  free(f.lat_ns);
  free(f.w);
  CHECK_OK(keel_http_stop(s));
}

/* A client that pipelines without reading. The kernel buffers between the
 * two ends hold at most: the client's send buffer (tcp_wmem max, 4 MiB
 * here), the server's receive buffer (tcp_rmem max, up to 32 MiB when
 * autotuned), and on the way back the server's send buffer and the client's
 * receive buffer, which fill with answers (some 750 bytes for each ~250-byte
 * request) long before. So a server that stops reading while its answers
 * cannot be sent takes in a few MiB and no more, and a client with 48 MiB
 * of requests must find its socket full before it sent them all. */
typedef struct silent {
  int port;
  plan p;
  sender *w;
  stream r;
  uint64_t total_bytes, stalled_at_bytes;
  unsigned long stalled_at_req;
  bool stalled, ok;
  size_t growth_stall;
  double secs;
} silent;

static void silent_run(void *arg) {
  silent *c = arg;
  static sampler sm;
  /* the plan's size, counted without keeping it */
  char tmp[MAX_REQ];
  for (unsigned long i = 0; i < c->p.n; i++)
    c->total_bytes += make_req(&c->p, i, tmp);
  stream_init(&c->r, &c->p, 1 << 20); /* the client's buffers before the measure starts */
  int fd = connect_to(c->port, true);
  sampler_start(&sm, "a client that never reads");
  int64_t t0 = kt_now_ns();
  /* phase 1: send without reading until the socket stays full for a second */
  int64_t deadline = kt_now_ms() + STALL_MS;
  while (!sender_done(c->w) && kt_now_ms() < deadline) {
    ssize_t n = sender_push(c->w, fd);
    CHECK(n >= 0);
    if (n > 0) continue;
    struct pollfd pf = {.fd = fd, .events = POLLOUT};
    if (poll(&pf, 1, 1000) == 0) {
      c->stalled = true;
      break;
    }
  }
  c->stalled_at_bytes = c->w->bytes;
  c->stalled_at_req = c->w->next;
  /* the server holds still while the client does not read: watch a while */
  if (c->stalled) {
    struct timespec ts = {0, 500 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  c->growth_stall = atomic_load(&sm.peak) - sm.base;
  fprintf(stderr,
          "   not reading: the socket stayed full after %.1f of %.1f MiB (%lu of %lu requests "
          "made), RSS growth so far %.1f MiB\n",
          (double)c->stalled_at_bytes / MIB, (double)c->total_bytes / MIB, c->stalled_at_req,
          c->p.n, (double)c->growth_stall / MIB);
  /* phase 2: read every answer, sending the rest meanwhile */
  c->ok = run_conns(&fd, c->w, &c->r, 1, false);
  c->secs = (double)(kt_now_ns() - t0) / 1e9;
  size_t growth = sampler_stop(&sm);
  close(fd);
  fprintf(stderr, "   then reading: %lu answers, %.2f s in all\n", c->r.got, c->secs);
  if (c->r.why[0]) fprintf(stderr, "   %s\n", c->r.why);
  check_growth(&sm, growth);
}

KT_CASE(a_client_that_never_reads_is_pushed_back_in_bounded_memory_and_then_gets_every_answer_in_order) {
  keel_http_opts o;
  load_options(&o);
  /* while it is pushed back the connection is neither idle nor slow on
   * purpose: long timeouts keep this case about back-pressure (what a server
   * does with a client that never reads at all is its timeouts' business) */
  o.header_timeout_ms = 60000;
  o.keepalive_timeout_ms = 60000;
  keel_http_server *s = start(&o);
  static silent c;
  memset(&c, 0, sizeof c);
  c.port = keel_http_port(s);
  unsigned long n = kt_scale_tsan(200000, 50000);
  /* 48 MiB of small GETs to a path with no route, padded to fill it */
  c.p = (plan){.n = n, .prefix = "q", .mix = MIX_NOT_FOUND};
  size_t bare = make_req(&c.p, n - 1, (char[MAX_REQ]){0}) + 10; /* with "X-Pad: \r\n" */
  size_t each = (48u << 20) / n;
  c.p.pad = each > bare ? each - bare : 0;
  c.w = calloc(1, sizeof *c.w);
  CHECK(c.w != NULL);
  c.w->p = &c.p;
  CHECK_OK(keel_blocking(silent_run, &c));
  /* back-pressure reached the client: it could not send everything */
  CHECK(c.stalled);
  CHECK(c.stalled_at_bytes < c.total_bytes);
  if (rss_asserted()) CHECK(c.growth_stall < RSS_BOUND);
  CHECK_STR(c.r.why[0] ? c.r.why : "", "");
  CHECK(c.ok);
  CHECK_EQ(c.r.got, c.p.n);
  stream_free(&c.r);
  free(c.w);
  CHECK_OK(keel_http_stop(s));
}

/* A slow handler first (requests pile up behind it), then 404s until the
 * rate limit (100, the handler's request counted) and 429s past it, all
 * answered on the loop; the last request is garbage: 400, and the server
 * closes the connection after it. */
KT_CASE(a_pipeline_past_the_rate_limit_gets_429s_in_order_and_a_malformed_request_ends_it_with_400) {
  keel_http_opts o;
  load_options(&o);
  o.rate_limit = 100;
  keel_http_server *s = start(&o);
  static duplex d;
  memset(&d, 0, sizeof d);
  d.port = keel_http_port(s);
  d.label = "past the rate limit";
  d.p = (plan){.n = kt_scale_tsan(30000, 5000), .prefix = "l", .mix = MIX_LIMITED_THEN_BAD,
               .limit = 100};
  d.eof_ok = true;
  d.w = calloc(1, sizeof *d.w);
  CHECK(d.w != NULL);
  d.w->p = &d.p;
  CHECK_OK(keel_blocking(duplex_run, &d));
  CHECK_STR(d.werr[0] ? d.werr : "", "");
  CHECK_STR(d.r.why[0] ? d.r.why : "", "");
  CHECK_EQ(d.r.got, d.p.n);
  CHECK(d.r.closed); /* the 400 closed the connection */
  stream_free(&d.r);
  free(d.w);
  CHECK_OK(keel_http_stop(s));
}

/* The shape that cost quadratic memory: while a handler runs, the requests
 * pipelined behind it pile up (the server stops reading at its bound), and
 * when it is done the loop answers thousands of them in one go. */
KT_CASE(thousands_of_404s_piled_up_behind_a_slow_handler_are_answered_in_order_in_bounded_memory) {
  keel_http_opts o;
  load_options(&o);
  keel_http_server *s = start(&o);
  static duplex d;
  memset(&d, 0, sizeof d);
  d.port = keel_http_port(s);
  d.label = "behind a slow handler";
  d.p = (plan){.n = kt_scale_tsan(60000, 10000), .prefix = "b", .mix = MIX_BEHIND_SLOW,
               .every = kt_scale_tsan(20000, 5000)};
  d.w = calloc(1, sizeof *d.w);
  CHECK(d.w != NULL);
  d.w->p = &d.p;
  CHECK_OK(keel_blocking(duplex_run, &d));
  CHECK_STR(d.werr[0] ? d.werr : "", "");
  CHECK_STR(d.r.why[0] ? d.r.why : "", "");
  CHECK_EQ(d.r.got, d.p.n);
  stream_free(&d.r);
  free(d.w);
  CHECK_OK(keel_http_stop(s));
}

KT_MAIN(
    KT_ENTRY(one_connection_with_100000_pipelined_requests_gets_every_answer_in_order_in_bounded_memory),
    KT_ENTRY(fifty_connections_at_once_with_2000_pipelined_requests_each_are_answered_in_order_while_a_probe_is_served),
    KT_ENTRY(a_client_that_never_reads_is_pushed_back_in_bounded_memory_and_then_gets_every_answer_in_order),
    KT_ENTRY(thousands_of_404s_piled_up_behind_a_slow_handler_are_answered_in_order_in_bounded_memory),
    KT_ENTRY(a_pipeline_past_the_rate_limit_gets_429s_in_order_and_a_malformed_request_ends_it_with_400))
