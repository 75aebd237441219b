/* bench_http_parse.c - the HTTP/1.1 request parser: keel's (llhttp in strict
 * mode + src/http/parse.c, what the server runs) against http-parser 2.9.4
 * (the parser keel used before) doing the same work.
 *
 *   get_small     a GET with 6 typical browser/curl headers
 *   post_json_1k  a POST with a 1 KiB JSON body and Content-Length
 *   post_chunked  a POST with a 1 KiB body in 4 chunks (one with an extension)
 *   pipeline_16   16 GETs in one buffer (figures are per request)
 *
 * keel side: one keel__reqparse per buffer (per connection in the server),
 * with the server's default limits (16 KiB head, 1 MiB body) and no on_head
 * hook; each complete request is taken as the server takes it
 * (keel__reqparse_take: a calloc'd keel_http_req with its start time, the
 * target, the fields lowercased and trimmed, the body) and freed with
 * keel__req_free. Anchor side: http-parser's callbacks build a structure of
 * the same shape the same way (calloc'd request, start time, the target and
 * each field grown with realloc span by span, names lowercased, trailing
 * whitespace trimmed, a field array grown by doubling from 16, the body grown
 * by doubling from 1 KiB, keep-alive), handed over and freed at
 * on_message_complete.
 *
 * Rounds alternate (keel, anchor, keel, anchor...), each about 0.3 s of one
 * side's loop (iterations calibrated per side), ROUNDS of each (default 9,
 * at least 7); a round's figure is its wall time over the requests it
 * parsed. Each round goes to stderr; stdout gets, per workload, the medians
 * and their ratio as JSON lines:
 *   {"bench": "parse_<w>_keel", "unit": "ns/req", "value": N}
 *   {"bench": "parse_<w>_http_parser", "unit": "ns/req", "value": N}
 *   {"bench": "parse_<w>_ratio", "unit": "keel/http-parser", "value": R}
 * http-parser is optional (bench/CMakeLists.txt builds the anchor half only
 * when libhttp-parser-dev is installed): without it, only the keel lines.
 *
 * The two parsers' headers cannot share a translation unit (both define
 * HTTP_GET, HPE_OK...), so this file is compiled twice: as is, keel's half
 * and main; with BENCH_ANCHOR_HALF, the http-parser half.
 *
 * Usage: bench_http_parse [--rounds N] [workload...]
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The anchor half: parses buf[0..n) with http-parser and returns the number
 * of complete requests (0 on a parse error); *sink gets a checksum. */
size_t bench_anchor_parse(const char *buf, size_t n, uint64_t *sink);

#ifdef BENCH_ANCHOR_HALF
/* ---- http-parser 2.9.4 ------------------------------------------------------ */
#include <http_parser.h>

typedef struct anchor_req {
  char method[16];
  char *target;
  char **hname, **hval;
  size_t nh, caph;
  char *body;
  size_t body_len, body_cap;
  uint64_t start_ns;
  bool keepalive;
  int http_minor;
} anchor_req;

typedef struct anchor_ctx {
  anchor_req *rq;
  char *hfield, *hvalue;
  size_t hflen, hvlen, tlen;
  bool in_value;
  size_t count;
  uint64_t sink;
  bool failed;
} anchor_ctx;

static int grow(anchor_ctx *x, char **s, size_t *len, const char *at, size_t n) {
  char *p = realloc(*s, *len + n + 1);
  if (!p) return x->failed = true, 1;
  memcpy(p + *len, at, n);
  *len += n;
  p[*len] = 0;
  *s = p;
  return 0;
}

static void req_free(anchor_req *rq) {
  for (size_t i = 0; i < rq->nh; i++) {
    free(rq->hname[i]);
    free(rq->hval[i]);
  }
  free(rq->hname);
  free(rq->hval);
  free(rq->target);
  free(rq->body);
  free(rq);
}

/* the field just read, into the request */
static int field_done(anchor_ctx *x) {
  anchor_req *rq = x->rq;
  if (rq->nh == rq->caph) {
    size_t cap = rq->caph ? rq->caph * 2 : 16;
    char **a = realloc(rq->hname, cap * sizeof *a);
    if (!a) return x->failed = true, 1;
    rq->hname = a;
    char **b = realloc(rq->hval, cap * sizeof *b);
    if (!b) return x->failed = true, 1;
    rq->hval = b;
    rq->caph = cap;
  }
  for (char *q = x->hfield; *q; q++)
    if (*q >= 'A' && *q <= 'Z') *q = (char)(*q + 32);
  if (!x->hvalue && !(x->hvalue = calloc(1, 1))) return x->failed = true, 1;
  while (x->hvlen && (x->hvalue[x->hvlen - 1] == ' ' || x->hvalue[x->hvlen - 1] == '\t'))
    x->hvalue[--x->hvlen] = 0;
  rq->hname[rq->nh] = x->hfield;
  rq->hval[rq->nh] = x->hvalue;
  rq->nh++;
  x->hfield = x->hvalue = NULL;
  x->hflen = x->hvlen = 0;
  x->in_value = false;
  return 0;
}

static int a_begin(http_parser *p) {
  anchor_ctx *x = p->data;
  anchor_req *rq = calloc(1, sizeof *rq);
  if (!rq) return x->failed = true, 1;
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  rq->start_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
  x->rq = rq;
  x->tlen = 0;
  x->in_value = false;
  return 0;
}

static int a_url(http_parser *p, const char *at, size_t n) {
  anchor_ctx *x = p->data;
  return grow(x, &x->rq->target, &x->tlen, at, n);
}

static int a_field(http_parser *p, const char *at, size_t n) {
  anchor_ctx *x = p->data;
  if (x->in_value && field_done(x)) return 1;
  return grow(x, &x->hfield, &x->hflen, at, n);
}

static int a_value(http_parser *p, const char *at, size_t n) {
  anchor_ctx *x = p->data;
  x->in_value = true;
  return grow(x, &x->hvalue, &x->hvlen, at, n);
}

static int a_headers_complete(http_parser *p) {
  anchor_ctx *x = p->data;
  if (x->in_value && field_done(x)) return -1;
  snprintf(x->rq->method, sizeof x->rq->method, "%s", http_method_str((enum http_method)p->method));
  x->rq->http_minor = p->http_minor;
  return 0;
}

static int a_body(http_parser *p, const char *at, size_t n) {
  anchor_ctx *x = p->data;
  anchor_req *rq = x->rq;
  if (rq->body_len + n + 1 > rq->body_cap) {
    size_t cap = rq->body_cap ? rq->body_cap : 1024;
    while (cap < rq->body_len + n + 1)
      cap *= 2;
    char *b = realloc(rq->body, cap);
    if (!b) return x->failed = true, 1;
    rq->body = b;
    rq->body_cap = cap;
  }
  memcpy(rq->body + rq->body_len, at, n);
  rq->body_len += n;
  rq->body[rq->body_len] = 0;
  return 0;
}

static int a_message_complete(http_parser *p) {
  anchor_ctx *x = p->data;
  if (x->in_value && field_done(x)) return 1; /* a trailer */
  x->rq->keepalive = http_should_keep_alive(p) != 0;
  x->sink += x->rq->nh + x->rq->body_len + (uint64_t)x->rq->keepalive; /* handed over... */
  req_free(x->rq);                                                    /* ...and done with */
  x->rq = NULL;
  x->count++;
  return 0;
}

size_t bench_anchor_parse(const char *buf, size_t n, uint64_t *sink) {
  static const http_parser_settings s = {
      .on_message_begin = a_begin,
      .on_url = a_url,
      .on_header_field = a_field,
      .on_header_value = a_value,
      .on_headers_complete = a_headers_complete,
      .on_body = a_body,
      .on_message_complete = a_message_complete,
  };
  http_parser p;
  anchor_ctx x = {0};
  http_parser_init(&p, HTTP_REQUEST);
  p.data = &x;
  size_t used = http_parser_execute(&p, &s, buf, n);
  bool ok = used == n && HTTP_PARSER_ERRNO(&p) == HPE_OK && !x.failed;
  if (x.rq) req_free(x.rq);
  free(x.hfield);
  free(x.hvalue);
  *sink += x.sink;
  return ok ? x.count : 0;
}

#else
/* ---- keel, and main -------------------------------------------------------- */
#include "http/parse.h"

/* ---- the requests ------------------------------------------------------------ */

typedef struct workload {
  const char *name;
  char *buf;
  size_t len, nreq;
  uint64_t check; /* fields + body bytes + keep-alive, summed over its requests */
} workload;

static const char GET_SMALL[] =
    "GET /api/v1/items?page=2&sort=name HTTP/1.1\r\n"
    "Host: api.example.com\r\n"
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:109.0) Gecko/20100101 Firefox/115.0\r\n"
    "Accept: application/json, text/plain, */*\r\n"
    "Accept-Language: en-US,en;q=0.5\r\n"
    "Accept-Encoding: gzip, deflate, br\r\n"
    "Connection: keep-alive\r\n"
    "\r\n";

static char *xmalloc(size_t n) {
  char *p = malloc(n);
  if (!p) {
    fputs("bench_http_parse: out of memory\n", stderr);
    exit(2);
  }
  return p;
}

/* A JSON array of objects, exactly n bytes. */
static char *json_body(size_t n) {
  char *b = xmalloc(n + 1);
  size_t len = 0;
  b[len++] = '[';
  for (int i = 0;; i++) {
    char item[96];
    int k = snprintf(item, sizeof item, "%s{\"id\":%d,\"name\":\"item-%04d\",\"qty\":%d,\"ok\":true}",
                     i ? "," : "", i, i, i % 7);
    if (len + (size_t)k + 1 > n) break;
    memcpy(b + len, item, (size_t)k);
    len += (size_t)k;
  }
  while (len < n - 1)
    b[len++] = ' ';
  b[len++] = ']';
  b[len] = 0;
  return b;
}

static void build(workload *w) {
  char *body = json_body(1024);
  char *b = xmalloc(8192);
  int n = 0;
  if (strcmp(w->name, "get_small") == 0) {
    n = snprintf(b, 8192, "%s", GET_SMALL);
    w->nreq = 1;
    w->check = 6 + 0 + 1;
  } else if (strcmp(w->name, "post_json_1k") == 0) {
    n = snprintf(b, 8192,
                 "POST /api/v1/items HTTP/1.1\r\n"
                 "Host: api.example.com\r\n"
                 "User-Agent: curl/7.88.1\r\n"
                 "Accept: application/json\r\n"
                 "Content-Type: application/json\r\n"
                 "Content-Length: 1024\r\n"
                 "\r\n%s",
                 body);
    w->nreq = 1;
    w->check = 5 + 1024 + 1;
  } else if (strcmp(w->name, "post_chunked") == 0) {
    n = snprintf(b, 8192,
                 "POST /api/v1/upload HTTP/1.1\r\n"
                 "Host: api.example.com\r\n"
                 "User-Agent: curl/7.88.1\r\n"
                 "Content-Type: application/json\r\n"
                 "Transfer-Encoding: chunked\r\n"
                 "\r\n"
                 "100\r\n%.256s\r\n"
                 "100;part=2\r\n%.256s\r\n"
                 "100\r\n%.256s\r\n"
                 "100\r\n%.256s\r\n"
                 "0\r\n\r\n",
                 body, body + 256, body + 512, body + 768);
    w->nreq = 1;
    w->check = 4 + 1024 + 1;
  } else { /* pipeline_16 */
    for (int i = 0; i < 16; i++)
      n += snprintf(b + n, 8192 - (size_t)n,
                    "GET /api/v1/items/%d HTTP/1.1\r\n"
                    "Host: api.example.com\r\n"
                    "User-Agent: curl/7.88.1\r\n"
                    "Accept: */*\r\n"
                    "\r\n",
                    i);
    w->nreq = 16;
    w->check = 16 * (3 + 0 + 1);
  }
  free(body);
  w->buf = b;
  w->len = (size_t)n;
}

/* ---- keel --------------------------------------------------------------------- */

static size_t keel_parse(const char *buf, size_t n, uint64_t *sink) {
  keel__reqparse rp;
  keel__reqparse_init(&rp, 16 * 1024, 1024 * 1024, NULL, NULL); /* the server's defaults */
  size_t off = 0, count = 0;
  while (off < n) {
    off += keel__reqparse_feed(&rp, buf + off, n - off);
    if (!rp.complete) break;
    keel_http_req *rq = keel__reqparse_take(&rp);
    *sink += rq->nh + rq->body_len + (uint64_t)rq->keepalive;
    keel__req_free(rq);
    count++;
  }
  bool ok = off == n && !rp.status;
  keel__reqparse_free(&rp);
  return ok ? count : 0;
}

/* ---- timing -------------------------------------------------------------------- */

typedef size_t (*parse_fn)(const char *buf, size_t n, uint64_t *sink);

static uint64_t g_sink;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* iters parses of w; ns per request */
static double round_ns(parse_fn f, const workload *w, long iters) {
  double t0 = now_s();
  for (long i = 0; i < iters; i++)
    if (f(w->buf, w->len, &g_sink) != w->nreq) {
      fprintf(stderr, "bench_http_parse: %s: a parser did not read the %zu request(s)\n", w->name,
              w->nreq);
      exit(2);
    }
  return (now_s() - t0) * 1e9 / ((double)iters * (double)w->nreq);
}

/* iterations that take about 0.3 s */
static long calibrate(parse_fn f, const workload *w) {
  long iters = 64;
  for (;;) {
    double t0 = now_s();
    round_ns(f, w, iters);
    double dt = now_s() - t0;
    if (dt > 0.05) return (long)((double)iters * 0.3 / dt) + 1;
    iters *= 4;
  }
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

#ifdef BENCH_HAVE_ANCHOR
static const parse_fn anchor = bench_anchor_parse;
#else
static const parse_fn anchor = NULL;
#endif

int main(int argc, char **argv) {
  int rounds = 9, first = 1;
  if (argc > 2 && strcmp(argv[1], "--rounds") == 0) {
    rounds = atoi(argv[2]);
    first = 3;
  }
  if (rounds < 7) rounds = 7;
  if (rounds > 64) rounds = 64;
  workload ws[] = {{.name = "get_small"}, {.name = "post_json_1k"}, {.name = "post_chunked"},
                   {.name = "pipeline_16"}};
  const size_t nw = sizeof ws / sizeof ws[0];
  for (int a = first; a < argc; a++) {
    bool known = false;
    for (size_t i = 0; i < nw; i++)
      known |= strcmp(argv[a], ws[i].name) == 0;
    if (!known) {
      fprintf(stderr, "bench_http_parse: unknown workload %s\n", argv[a]);
      return 2;
    }
  }
  if (!anchor) fputs("bench_http_parse: built without http-parser: keel's figures only\n", stderr);
  for (size_t i = 0; i < nw; i++) {
    workload *w = &ws[i];
    if (argc > first) {
      bool wanted = false;
      for (int a = first; a < argc; a++)
        wanted |= strcmp(argv[a], w->name) == 0;
      if (!wanted) continue;
    }
    build(w);
    uint64_t ck = 0, ca = 0;
    keel_parse(w->buf, w->len, &ck);
    if (anchor) anchor(w->buf, w->len, &ca);
    if (ck != w->check || (anchor && ca != w->check)) {
      fprintf(stderr, "bench_http_parse: %s read wrongly (keel %llu, http-parser %llu, want %llu)\n",
              w->name, (unsigned long long)ck, (unsigned long long)ca,
              (unsigned long long)w->check);
      return 2;
    }
    long ik = calibrate(keel_parse, w), ia = anchor ? calibrate(anchor, w) : 0;
    double vk[64], va[64];
    for (int r = 0; r < rounds; r++) {
      vk[r] = round_ns(keel_parse, w, ik);
      if (anchor) {
        va[r] = round_ns(anchor, w, ia);
        fprintf(stderr, "  %s round %d: keel %.1f ns/req, http-parser %.1f ns/req\n", w->name,
                r + 1, vk[r], va[r]);
      } else {
        fprintf(stderr, "  %s round %d: keel %.1f ns/req\n", w->name, r + 1, vk[r]);
      }
    }
    double mk = median(vk, rounds);
    printf("{\"bench\": \"parse_%s_keel\", \"unit\": \"ns/req\", \"value\": %.1f}\n", w->name, mk);
    if (anchor) {
      double ma = median(va, rounds);
      printf("{\"bench\": \"parse_%s_http_parser\", \"unit\": \"ns/req\", \"value\": %.1f}\n",
             w->name, ma);
      printf("{\"bench\": \"parse_%s_ratio\", \"unit\": \"keel/http-parser\", \"value\": %.2f}\n",
             w->name, mk / ma);
    }
    fflush(stdout);
    free(w->buf);
  }
  if (g_sink == 42) fputc('\n', stderr); /* keeps the work observable */
  return 0;
}
#endif
