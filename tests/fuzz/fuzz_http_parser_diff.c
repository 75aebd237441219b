/* fuzz_http_parser_diff.c - differential libFuzzer target: keel's request
 * parser (llhttp in strict mode + src/http/parse.c) against http-parser
 * 2.9.4, the parser keel used before.
 *
 * The input is the bytes a client sends on one connection. keel__reqparse
 * gets them in two feeds split at a point taken from the input (its first
 * and last bytes, modulo the length), so that every span, the obs-fold
 * check and the pause after a request meet buffer boundaries, and every
 * complete request is taken. http-parser (HTTP_REQUEST) runs over the whole
 * input, paused after each message so that the byte where the next one
 * starts is known.
 *
 * The invariant: every request keel accepts, http-parser reads as a request
 * too, with
 *   - the same method and the same target (bytes);
 *   - the same version (keel takes only 1.0 and 1.1);
 *   - the same header fields in the same order: names compared without
 *     case (keel lowercases them), values compared without leading and
 *     trailing OWS (RFC 9112 5: not part of the value; llhttp and
 *     http-parser both drop the leading OWS, keel trims the trailing OWS,
 *     http-parser keeps it);
 *   - the same body bytes (chunked: decoded);
 *   - the same upgrade decision and the same keep-alive decision;
 *   - the same message boundary: the request ends at the same byte, so the
 *     next one starts at the same byte.
 * A disagreement on a request keel accepted aborts with both readings. keel
 * refusing what http-parser accepts is keel being stricter: not counted.
 *
 * Also checked (keel against itself): the two-feed reading must equal the
 * reading of the same bytes in one feed, requests and final status alike.
 * Where the boundary falls must never change what is accepted.
 *
 * Differences that are legitimate, hence not reported (each is one way,
 * keel refusing or closing where http-parser goes on; or a normalisation
 * RFC 9112 prescribes; or an http-parser misreading where keel's reading is
 * the RFC's):
 *   - After a request that is not kept alive (Connection: close, HTTP/1.0
 *     without keep-alive) llhttp refuses any further byte ("Data after
 *     Connection: close"); http-parser, built without HTTP_PARSER_STRICT,
 *     reads on. Only keel's requests are compared, so http-parser's extra
 *     messages are ignored.
 *   - Upgrade (Upgrade + Connection: upgrade) and CONNECT: both parsers end
 *     the message after its head (after its body for an Upgrade with a
 *     body) and stop; keel serves it as plain HTTP/1.1 and closes, so its
 *     keep-alive is false where http_should_keep_alive, which ignores
 *     upgrades, may say true. When both saw an upgrade, keep-alive is not
 *     compared (the upgrade flags are).
 *   - Connection options: http-parser recognises "close", "keep-alive" and
 *     "upgrade" only where an element begins right after a comma and spaces
 *     (not after an empty element or a tab: ",keep-alive",
 *     "foo, \tupgrade"). Where the keep-alive or upgrade decisions differ,
 *     keel's is accepted if it is RFC 9112 9.3's ("close" wins; HTTP/1.0
 *     persists only with "keep-alive") or RFC 9110 7.8's (an Upgrade field
 *     and the "upgrade" option, or CONNECT), computed from the fields both
 *     read; otherwise it is reported. When the upgrade decisions differ,
 *     keep-alive is not compared (keel closes after an upgrade).
 *   - Trailing whitespace of a field value: see above. An empty value is ""
 *     on both sides (both parsers report it as a span of length 0).
 *   - Trailer fields (after the last chunk): both parsers report them with
 *     the header callbacks; keel parses and drops them (RFC 9110 6.5.1: not
 *     merged into the header section), so http-parser's are dropped too and
 *     only the head's fields are compared.
 *   - A field whose name begins with "transfer-encoding" and goes on
 *     ("Transfer-Encoding': chunked"): http-parser flags the message as
 *     using Transfer-Encoding on the name's first 17 bytes, then refuses
 *     the request (Transfer-Encoding not chunked, or beside a
 *     Content-Length). keel reads it as the unknown field it is (a body by
 *     Content-Length or none): http-parser's error, not compared.
 *   - A request target that is not origin-form ("/...") or "*": the server
 *     answers 400 before routing and closes (absolute-form is not served),
 *     so such a request and what follows it are not compared. llhttp
 *     accepts "e://" where http-parser refuses it, for one.
 *   - Inputs over 64 KiB are skipped: http-parser counts at most 80 KiB of
 *     head (HTTP_MAX_HEADER_SIZE) and keel's limits here are larger.
 * keel's own limits (head bytes, 100 fields, body bytes) are set far above
 * what an input can hold, except the 100 fields: past them keel refuses.
 *
 * The two parsers' headers cannot share a translation unit (both define
 * HTTP_GET, HPE_OK, F_CHUNKED... with different values), so this file is
 * compiled twice (tests/CMakeLists.txt): as is, the keel half and the
 * fuzzer's entry point; with KEEL_DIFF_HTTP_PARSER_HALF, the http-parser
 * half. The halves share only the plain structures below.
 *
 *   KEEL_DIFF_VERBOSE=1 ./fuzz_http_parser_diff FILE...   prints both readings
 *   KEEL_DIFF_KEEP_GOING=1 ./fuzz_http_parser_diff ...    a survey: reports the
 *       first two inputs of each kind of disagreement instead of aborting
 *   tests/fuzz/run.sh ./fuzz_http_parser_diff tests/fuzz/corpus_diff
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- what both halves fill in ------------------------------------------- */

typedef struct dm_hdr {
  char *name, *value;
  size_t nlen, vlen;
} dm_hdr;

typedef struct dm_msg {
  char method[24];
  char *target;
  size_t tlen;
  dm_hdr *h;
  size_t nh;
  char *body;
  size_t blen;
  int major, minor;
  bool keepalive, upgrade;
  bool complete; /* the parser said the message ended */
  size_t end;    /* offset just past it in the input */
} dm_msg;

typedef struct dm_conn {
  dm_msg *m;
  size_t n;
  bool failed;   /* the parser refused the bytes at some point */
  size_t fail_at;
  int status;    /* keel: the status it would answer (400, 413, 431) */
  char why[128]; /* the parser's reason */
} dm_conn;

static void *xrealloc(void *p, size_t n) {
  void *q = realloc(p, n ? n : 1);
  if (!q) abort();
  return q;
}

static void append(char **s, size_t *len, const char *at, size_t n) {
  *s = xrealloc(*s, *len + n + 1);
  if (n) memcpy(*s + *len, at, n);
  *len += n;
  (*s)[*len] = 0;
}

static dm_msg *push_msg(dm_conn *c) {
  c->m = xrealloc(c->m, (c->n + 1) * sizeof *c->m);
  dm_msg *m = &c->m[c->n++];
  memset(m, 0, sizeof *m);
  return m;
}

static dm_hdr *push_hdr(dm_msg *m) {
  m->h = xrealloc(m->h, (m->nh + 1) * sizeof *m->h);
  dm_hdr *h = &m->h[m->nh++];
  memset(h, 0, sizeof *h);
  append(&h->name, &h->nlen, "", 0);
  append(&h->value, &h->vlen, "", 0);
  return h;
}

/* The http-parser half: reads d[0..n) into c. */
void dm_http_parser_read(const uint8_t *d, size_t n, dm_conn *c);

#ifdef KEEL_DIFF_HTTP_PARSER_HALF
/* ---- http-parser 2.9.4 ------------------------------------------------------ */
#include <http_parser.h>

typedef struct hp_ctx {
  dm_conn *c;
  int last; /* the previous header callback: 0 none, 1 field, 2 value */
  bool trailers; /* the head is complete: fields now are trailers */
} hp_ctx;

static dm_msg *cur(http_parser *p) {
  hp_ctx *x = p->data;
  return &x->c->m[x->c->n - 1];
}

static int hp_begin(http_parser *p) {
  hp_ctx *x = p->data;
  push_msg(x->c);
  append(&cur(p)->target, &cur(p)->tlen, "", 0);
  append(&cur(p)->body, &cur(p)->blen, "", 0);
  x->last = 0;
  x->trailers = false;
  return 0;
}

static int hp_url(http_parser *p, const char *at, size_t n) {
  append(&cur(p)->target, &cur(p)->tlen, at, n);
  return 0;
}

static int hp_field(http_parser *p, const char *at, size_t n) {
  hp_ctx *x = p->data;
  if (x->trailers) return 0;
  dm_msg *m = cur(p);
  if (x->last != 1) push_hdr(m);
  x->last = 1;
  append(&m->h[m->nh - 1].name, &m->h[m->nh - 1].nlen, at, n);
  return 0;
}

static int hp_value(http_parser *p, const char *at, size_t n) {
  hp_ctx *x = p->data;
  if (x->trailers) return 0;
  dm_msg *m = cur(p);
  if (x->last == 0) push_hdr(m); /* a value without a name: never seen */
  x->last = 2;
  append(&m->h[m->nh - 1].value, &m->h[m->nh - 1].vlen, at, n);
  return 0;
}

static int hp_headers_complete(http_parser *p) {
  ((hp_ctx *)p->data)->trailers = true;
  dm_msg *m = cur(p);
  snprintf(m->method, sizeof m->method, "%s", http_method_str((enum http_method)p->method));
  m->major = p->http_major;
  m->minor = p->http_minor;
  return 0;
}

static int hp_body(http_parser *p, const char *at, size_t n) {
  append(&cur(p)->body, &cur(p)->blen, at, n);
  return 0;
}

static int hp_message_complete(http_parser *p) {
  dm_msg *m = cur(p);
  m->keepalive = http_should_keep_alive(p) != 0;
  m->upgrade = p->upgrade != 0;
  m->complete = true;
  http_parser_pause(p, 1); /* execute returns just past the message */
  return 0;
}

void dm_http_parser_read(const uint8_t *d, size_t n, dm_conn *c) {
  static const http_parser_settings s = {
      .on_message_begin = hp_begin,
      .on_url = hp_url,
      .on_header_field = hp_field,
      .on_header_value = hp_value,
      .on_headers_complete = hp_headers_complete,
      .on_body = hp_body,
      .on_message_complete = hp_message_complete,
  };
  http_parser p;
  hp_ctx x = {.c = c};
  http_parser_init(&p, HTTP_REQUEST);
  p.data = &x;
  size_t off = 0;
  while (off < n) {
    size_t used = http_parser_execute(&p, &s, (const char *)d + off, n - off);
    off += used;
    enum http_errno e = HTTP_PARSER_ERRNO(&p);
    if (e == HPE_PAUSED) {
      c->m[c->n - 1].end = off;
      if (p.upgrade) return; /* the rest is another protocol */
      http_parser_pause(&p, 0);
      continue;
    }
    if (e != HPE_OK) {
      c->failed = true;
      c->fail_at = off;
      snprintf(c->why, sizeof c->why, "%s: %s", http_errno_name(e), http_errno_description(e));
    }
    return;
  }
}

#else
/* ---- keel, and the fuzzer's entry point ------------------------------------- */
#include "http/parse.h"

#define DM_MAX_INPUT  65536
#define DM_MAX_HEADER (1u << 20)
#define DM_MAX_BODY   (1u << 20)

static void conn_free(dm_conn *c) {
  for (size_t i = 0; i < c->n; i++) {
    dm_msg *m = &c->m[i];
    for (size_t j = 0; j < m->nh; j++) {
      free(m->h[j].name);
      free(m->h[j].value);
    }
    free(m->h);
    free(m->target);
    free(m->body);
  }
  free(c->m);
  memset(c, 0, sizeof *c);
}

static void from_keel(dm_msg *m, const keel_http_req *rq, bool upgrade, size_t end) {
  snprintf(m->method, sizeof m->method, "%s", rq->method);
  const char *t = rq->target ? rq->target : "";
  append(&m->target, &m->tlen, t, strlen(t));
  for (size_t i = 0; i < rq->nh; i++) {
    dm_hdr *h = push_hdr(m);
    append(&h->name, &h->nlen, rq->hname[i], strlen(rq->hname[i]));
    append(&h->value, &h->vlen, rq->hval[i], strlen(rq->hval[i]));
  }
  append(&m->body, &m->blen, rq->body ? rq->body : "", rq->body_len);
  m->major = 1; /* keel refuses any other */
  m->minor = rq->http_minor;
  m->keepalive = rq->keepalive;
  m->upgrade = upgrade;
  m->complete = true;
  m->end = end;
}

/* Feeds d[0..split) then d[split..n) to a fresh keel__reqparse, taking every
 * complete request, as the server does. */
static void keel_read(const uint8_t *d, size_t n, size_t split, dm_conn *c) {
  keel__reqparse rp;
  keel__reqparse_init(&rp, DM_MAX_HEADER, DM_MAX_BODY, NULL, NULL);
  const size_t cut[3] = {0, split, n};
  bool stop = false;
  for (int k = 0; k < 2 && !stop; k++) {
    size_t off = cut[k];
    while (off < cut[k + 1]) {
      size_t used = keel__reqparse_feed(&rp, (const char *)d + off, cut[k + 1] - off);
      off += used;
      if (rp.complete) {
        keel_http_req *rq = keel__reqparse_take(&rp);
        from_keel(push_msg(c), rq, rp.upgrade, off);
        keel__req_free(rq);
        continue;
      }
      if (rp.status) {
        c->failed = true;
        c->fail_at = off;
        c->status = rp.status;
        snprintf(c->why, sizeof c->why, "%d %s", rp.status, rp.reason ? rp.reason : "");
      }
      if (rp.status || rp.upgrade || used == 0) {
        stop = true;
        break;
      }
    }
  }
  keel__reqparse_free(&rp);
}

/* ---- reporting ------------------------------------------------------------ */

static void put_bytes(const char *s, size_t n) {
  fputc('"', stderr);
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (ch == '\r') fputs("\\r", stderr);
    else if (ch == '\n') fputs("\\n", stderr);
    else if (ch == '\t') fputs("\\t", stderr);
    else if (ch == '"' || ch == '\\') fprintf(stderr, "\\%c", ch);
    else if (ch < 0x20 || ch >= 0x7f) fprintf(stderr, "\\x%02x", ch);
    else fputc(ch, stderr);
  }
  fputc('"', stderr);
}

static void dump(const char *who, const dm_conn *c) {
  fprintf(stderr, "%s: %zu request(s)", who, c->n);
  if (c->failed) {
    fprintf(stderr, ", then refused at byte %zu (", c->fail_at);
    fputs(c->why, stderr);
    fputc(')', stderr);
  }
  fputc('\n', stderr);
  for (size_t i = 0; i < c->n; i++) {
    const dm_msg *m = &c->m[i];
    fprintf(stderr, "  [%zu] %s ", i, m->method);
    put_bytes(m->target, m->tlen);
    fprintf(stderr, " HTTP/%d.%d%s keepalive=%d upgrade=%d ends at %zu\n", m->major, m->minor,
            m->complete ? "" : " (incomplete)", m->keepalive, m->upgrade, m->end);
    for (size_t j = 0; j < m->nh; j++) {
      fputs("      ", stderr);
      put_bytes(m->h[j].name, m->h[j].nlen);
      fputs(": ", stderr);
      put_bytes(m->h[j].value, m->h[j].vlen);
      fputc('\n', stderr);
    }
    fprintf(stderr, "      body (%zu): ", m->blen);
    put_bytes(m->body, m->blen < 512 ? m->blen : 512);
    fputc('\n', stderr);
  }
}

static const uint8_t *g_in;
static size_t g_n, g_split;
static int g_keep_going = -1; /* KEEL_DIFF_KEEP_GOING set: a survey, see the opening comment */

/* Reports a disagreement with both readings and aborts; in a survey, prints
 * the first two inputs of each kind (what, and the second parser's error)
 * and a count at every power of two, and goes on. */
static void report(const char *what, size_t i, const dm_conn *a, const char *an, const dm_conn *b,
                   const char *bn) {
  enum { KINDS = 64 };
  static char kind[KINDS][160];
  static unsigned long seen[KINDS];
  unsigned long count = 1;
  if (g_keep_going) {
    char key[160];
    snprintf(key, sizeof key, "%s / %s", what, b->failed ? b->why : "-");
    char *colon = strchr(key + strlen(what), ':'); /* the error's name, not its text */
    if (colon) *colon = 0;
    size_t k = 0;
    while (k < KINDS && kind[k][0] && strcmp(kind[k], key) != 0)
      k++;
    if (k == KINDS) return;
    if (!kind[k][0]) snprintf(kind[k], sizeof kind[k], "%s", key);
    count = ++seen[k];
    if (count > 2) {
      if ((count & (count - 1)) == 0)
        fprintf(stderr, "==== fuzz_http_parser_diff: [%s] seen %lu times\n", key, count);
      return;
    }
  }
  fprintf(stderr, "\n==== fuzz_http_parser_diff: %s (request %zu) ====\ninput (%zu bytes, split at %zu): ",
          what, i, g_n, g_split);
  put_bytes((const char *)g_in, g_n);
  fputc('\n', stderr);
  dump(an, a);
  dump(bn, b);
  if (!g_keep_going) abort();
}

/* ---- comparing ------------------------------------------------------------ */

static bool ows(char ch) { return ch == ' ' || ch == '\t'; }

/* value without leading and trailing OWS */
static bool same_value(const char *a, size_t an, const char *b, size_t bn) {
  while (an && ows(*a)) a++, an--;
  while (an && ows(a[an - 1])) an--;
  while (bn && ows(*b)) b++, bn--;
  while (bn && ows(b[bn - 1])) bn--;
  return an == bn && memcmp(a, b, an) == 0;
}

static bool same_name(const char *a, size_t an, const char *b, size_t bn) {
  if (an != bn) return false;
  for (size_t i = 0; i < an; i++) {
    unsigned char x = (unsigned char)a[i], y = (unsigned char)b[i];
    if (x >= 'A' && x <= 'Z') x = (unsigned char)(x + 32);
    if (y >= 'A' && y <= 'Z') y = (unsigned char)(y + 32);
    if (x != y) return false;
  }
  return true;
}

/* True when the Connection options of m (every Connection and
 * Proxy-Connection field, which both parsers read alike, split at commas,
 * OWS trimmed, empty elements ignored as RFC 9110 5.6.1 asks, compared
 * without case) include opt. */
static bool has_option(const dm_msg *m, const char *opt) {
  size_t on = strlen(opt);
  for (size_t j = 0; j < m->nh; j++) {
    const dm_hdr *h = &m->h[j];
    if (!same_name(h->name, h->nlen, "connection", 10) &&
        !same_name(h->name, h->nlen, "proxy-connection", 16))
      continue;
    const char *v = h->value, *end = h->value + h->vlen;
    for (;;) {
      const char *comma = memchr(v, ',', (size_t)(end - v));
      const char *a = v, *b = comma ? comma : end;
      while (a < b && ows(*a)) a++;
      while (b > a && ows(b[-1])) b--;
      if (same_name(a, (size_t)(b - a), opt, on)) return true;
      if (!comma) break;
      v = comma + 1;
    }
  }
  return false;
}

/* RFC 9112 9.3: the connection persists unless "close" is an option; an
 * HTTP/1.0 one only if "keep-alive" is. */
static bool rfc_keepalive(const dm_msg *m) {
  if (has_option(m, "close")) return false;
  return m->minor >= 1 || has_option(m, "keep-alive");
}

/* CONNECT, or an Upgrade field (not empty: neither parser counts an empty
 * one) with the "upgrade" option (RFC 9110 7.8). */
static bool rfc_upgrade(const dm_msg *m) {
  if (strcmp(m->method, "CONNECT") == 0) return true;
  for (size_t j = 0; j < m->nh; j++)
    if (same_name(m->h[j].name, m->h[j].nlen, "upgrade", 7) &&
        !same_value(m->h[j].value, m->h[j].vlen, "", 0))
      return has_option(m, "upgrade");
  return false;
}

/* NULL when m (keel's) and o agree, else what differs. exact: keel against
 * keel (keep-alive compared even on an upgrade, no RFC tolerance). Against
 * http-parser, a keep-alive or upgrade decision that differs is let go when
 * keel's is the one RFC 9112 9.3 / RFC 9110 7.8 give for the fields both
 * read: http-parser matches "close", "keep-alive" and "upgrade" only where
 * an element starts right after the comma and its spaces, so it misses
 * ",keep-alive" or "foo, \tupgrade". */
static const char *differ(const dm_msg *m, const dm_msg *o, bool exact) {
  if (!o->complete) return "the other parser did not finish this request";
  if (strcmp(m->method, o->method) != 0) return "method differs";
  if (m->tlen != o->tlen || memcmp(m->target, o->target, m->tlen) != 0) return "target differs";
  if (m->major != o->major || m->minor != o->minor) return "version differs";
  if (m->nh != o->nh) return "number of header fields differs";
  for (size_t j = 0; j < m->nh; j++) {
    if (!same_name(m->h[j].name, m->h[j].nlen, o->h[j].name, o->h[j].nlen))
      return "a header name differs";
    if (!same_value(m->h[j].value, m->h[j].vlen, o->h[j].value, o->h[j].vlen))
      return "a header value differs";
  }
  if (m->blen != o->blen || memcmp(m->body, o->body, m->blen) != 0) return "body differs";
  if (m->upgrade != o->upgrade) {
    if (exact || m->upgrade != rfc_upgrade(m)) return "upgrade decision differs";
  } else if ((exact || !m->upgrade) && m->keepalive != o->keepalive) {
    if (exact || m->keepalive != rfc_keepalive(m)) return "keep-alive decision differs";
  }
  if (m->end != o->end) return "message boundary differs (the next request starts elsewhere)";
  return NULL;
}

/* http-parser marks a message as using Transfer-Encoding as soon as a field
 * name begins with "transfer-encoding", before it sees the name go on
 * ("Transfer-Encoding': chunked", "Transfer-Encodingx: y"), then refuses the
 * request: a Transfer-Encoding that is not chunked
 * (HPE_INVALID_TRANSFER_ENCODING) or one beside a Content-Length
 * (HPE_UNEXPECTED_CONTENT_LENGTH). keel reads such a field as the unknown
 * field it is. True when http-parser stopped at request i for that. */
static bool hp_te_prefix(const dm_msg *m, const dm_conn *hp, size_t i) {
  static const char te[] = "transfer-encoding";
  if (!hp->failed || i + 1 != hp->n || hp->m[i].complete) return false;
  if (strncmp(hp->why, "HPE_INVALID_TRANSFER_ENCODING:", 30) != 0 &&
      strncmp(hp->why, "HPE_UNEXPECTED_CONTENT_LENGTH:", 30) != 0)
    return false;
  for (size_t j = 0; j < m->nh; j++)
    if (m->h[j].nlen > sizeof te - 1 && same_name(m->h[j].name, sizeof te - 1, te, sizeof te - 1))
      return true;
  return false;
}

/* 0 when every request keel took is read alike by the others, else 1
 * (reported). */
static int compare(const dm_conn *k2, const dm_conn *k1, const dm_conn *hp) {
  /* keel against itself: where the boundary falls changes nothing */
  size_t nk = k2->n < k1->n ? k2->n : k1->n;
  for (size_t i = 0; i < nk; i++) {
    const char *why = differ(&k2->m[i], &k1->m[i], true);
    if (why) return report(why, i, k2, "keel, two feeds", k1, "keel, one feed"), 1;
  }
  if (k2->n != k1->n)
    return report("keel takes a different number of requests in one feed", nk, k2,
                  "keel, two feeds", k1, "keel, one feed"),
           1;
  if (k2->status != k1->status)
    return report("keel refuses differently in one feed", k2->n, k2, "keel, two feeds", k1,
                  "keel, one feed"),
           1;
  /* keel against http-parser: every request keel took */
  for (size_t i = 0; i < k2->n; i++) {
    if (i < hp->n && hp_te_prefix(&k2->m[i], hp, i)) return 0;
    /* a target that is not origin-form ("/...") or "*" gets 400 from the
     * server before any routing, and the connection closes: what follows
     * is never served */
    const dm_msg *m = &k2->m[i];
    if (!(m->tlen && m->target[0] == '/') && !(m->tlen == 1 && m->target[0] == '*')) return 0;
    const char *why = i < hp->n ? differ(&k2->m[i], &hp->m[i], false)
                                : "http-parser does not read this request";
    if (why) return report(why, i, k2, "keel", hp, "http-parser"), 1;
  }
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (g_keep_going < 0) g_keep_going = getenv("KEEL_DIFF_KEEP_GOING") != NULL;
  if (size == 0 || size > DM_MAX_INPUT) return 0;
  size_t split = ((size_t)data[0] | (size_t)data[size - 1] << 8) % (size + 1);
  g_in = data, g_n = size, g_split = split;

  dm_conn k2 = {0}, k1 = {0}, hp = {0};
  keel_read(data, size, split, &k2);
  keel_read(data, size, size, &k1);
  dm_http_parser_read(data, size, &hp);
  if (getenv("KEEL_DIFF_VERBOSE")) {
    fputs("input: ", stderr);
    put_bytes((const char *)data, size);
    fprintf(stderr, " (split at %zu)\n", split);
    dump("keel (two feeds)", &k2);
    dump("http-parser", &hp);
  }
  compare(&k2, &k1, &hp);
  conn_free(&k2);
  conn_free(&k1);
  conn_free(&hp);
  return 0;
}
#endif
