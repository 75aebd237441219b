/* parse.c - HTTP/1.1 requests from bytes: llhttp in strict mode, and the
 * checks RFC 9112 leaves to the server.
 *
 * llhttp is a state machine: llhttp_execute walks the bytes and calls back
 * with spans (the target, a field name, a field value, body bytes) that
 * point into the caller's buffer. A span may come in pieces when it crosses
 * buffers, so names and values are appended to growing strings until their
 * _complete callback. The request is built as it goes; on_message_complete
 * pauses the parser, so a feed stops right after one whole request and the
 * bytes after it stay in the caller's buffer, parsed in place on the next
 * feed: nothing after a request is copied here.
 *
 * What llhttp leaves to us, and we refuse with 400 (RFC 9112):
 *  - a request line other than HTTP/1.0 or HTTP/1.1 (llhttp takes 0.9 and
 *    2.0 with a head);
 *  - an HTTP/1.1 request without exactly one Host, an HTTP/1.0 one with two
 *    (3.2);
 *  - obs-fold, a field line continued on the next (5.2). llhttp hands the
 *    continuation to on_header_value as a span of the value (the first one
 *    when the line before it was empty): a value span whose previous byte
 *    other than SP or HTAB is LF, not the colon or a byte of the value in a
 *    previous buffer, is a fold;
 *  - a request line whose protocol is not HTTP (llhttp also speaks RTSP and
 *    ICE): the five bytes before the version span must be "HTTP/";
 *  - a Transfer-Encoding other than one field that says exactly "chunked"
 *    (keel decodes no other coding, and every variation, an empty value
 *    that llhttp ignores, "gzip, chunked", ", chunked", two fields, is a
 *    place where a proxy in front may frame the body differently);
 *  - an empty field name;
 *  - more than KEEL__MAX_BLANK_LINES empty lines before a request line (2.2
 *    asks us to ignore at least one; a client that sends them forever is
 *    holding a connection, not starting a request).
 * Keep-alive is decided from the Connection tokens of the trimmed values,
 * together with llhttp's own reading: close wins (RFC 9112 9.3), also in
 * HTTP/1.0 with keep-alive beside it, also as "close" followed by a tab.
 * Trailer fields are parsed and counted against the head limit but not
 * kept: they never join the header fields (RFC 9110 6.5.1).
 *
 * And the limits: the head (request line and fields, each field counted
 * with its ": " and CRLF) against max_header_bytes and KEEL__MAX_HEADERS
 * (431), the body against max_body_bytes (413), a declared Content-Length as
 * soon as the head is complete.
 *
 * llhttp itself refuses (in strict mode, LLHTTP_STRICT_MODE=1) whitespace
 * before a field's colon or inside its name, chunk data not followed by
 * CRLF, bare LF line ends, Content-Length with Transfer-Encoding, duplicate
 * Content-Length, a Transfer-Encoding whose last coding is not chunked,
 * invalid versions, NUL and control bytes in values.
 */
#include "http/parse.h"

#include <stddef.h>
#include <stdlib.h>
#include <strings.h>
#include <string.h>
#include <time.h>

static keel__reqparse *rp_of(llhttp_t *p) { return p->data; }

/* Fails the request: status and reason for the answer; returns the code that
 * stops llhttp. */
static int fail(keel__reqparse *rp, int status, const char *reason) {
  if (!rp->status) {
    rp->status = status;
    rp->reason = reason;
  }
  return HPE_USER;
}

static int charge(keel__reqparse *rp, size_t n) {
  rp->head_bytes += n;
  if (rp->head_bytes > rp->max_header_bytes) return fail(rp, 431, "Request headers too large");
  return 0;
}

/* Appends n bytes to a NUL-terminated growing string of length *len. */
static int grow(keel__reqparse *rp, char **s, size_t *len, const char *at, size_t n) {
  char *p = realloc(*s, *len + n + 1);
  if (!p) return fail(rp, 500, "Out of memory");
  memcpy(p + *len, at, n);
  *len += n;
  p[*len] = 0;
  *s = p;
  return 0;
}

/* The byte k (1-based) before at, in this buffer or the end of the
 * previous one; -1 when it is not known. */
static int byte_before(const keel__reqparse *rp, const char *at, size_t k) {
  size_t here = (size_t)(at - rp->base);
  if (k <= here) return (unsigned char)at[-(ptrdiff_t)k];
  k -= here;
  return k <= rp->ntail ? (unsigned char)rp->tail[rp->ntail - k] : -1;
}

static int on_version(llhttp_t *p, const char *at, size_t n) {
  (void)n;
  keel__reqparse *rp = rp_of(p);
  static const char proto[] = "HTTP/";
  if (rp->version_seen) return 0; /* the rest of a version cut by a buffer's end */
  rp->version_seen = true;
  for (size_t k = 1; k <= 5; k++)
    if (byte_before(rp, at, k) != proto[5 - k]) return fail(rp, 400, "Not an HTTP request line");
  return 0;
}

/* A field line's continuation: the byte before the span, whitespace
 * skipped, is the LF of the line before. */
static bool folded(const keel__reqparse *rp, const char *at) {
  const char *q = at;
  while (q > rp->base && (q[-1] == ' ' || q[-1] == '\t'))
    q--;
  char prev = q > rp->base ? q[-1] : rp->prev_nonws;
  return prev == '\n';
}

/* Connection: comma-separated tokens, case-insensitive, OWS around them. */
static void connection_tokens(keel__reqparse *rp, const char *v) {
  while (*v) {
    while (*v == ' ' || *v == '\t' || *v == ',')
      v++;
    size_t n = strcspn(v, ",");
    size_t m = n;
    while (m && (v[m - 1] == ' ' || v[m - 1] == '\t'))
      m--;
    if (m == 5 && strncasecmp(v, "close", 5) == 0) rp->conn_close = true;
    if (m == 10 && strncasecmp(v, "keep-alive", 10) == 0) rp->conn_keep_alive = true;
    v += n;
  }
}

static int on_message_begin(llhttp_t *p) {
  keel__reqparse *rp = rp_of(p);
  keel_http_req *rq = calloc(1, sizeof *rq);
  if (!rq) return fail(rp, 500, "Out of memory");
  rq->start_ns = keel__http_now_ns();
  rq->refs = 1;
  rp->rq = rq;
  rp->head_bytes = 0;
  rp->nhost = 0;
  rp->head_done = rp->te_seen = rp->te_other = rp->conn_close = rp->conn_keep_alive = false;
  rp->version_seen = false;
  return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n) {
  keel__reqparse *rp = rp_of(p);
  size_t len = rp->rq->target ? strlen(rp->rq->target) : 0;
  return charge(rp, n) ? HPE_USER : grow(rp, &rp->rq->target, &len, at, n);
}

static int on_header_field(llhttp_t *p, const char *at, size_t n) {
  keel__reqparse *rp = rp_of(p);
  if (!rp->hfield && charge(rp, 4)) return HPE_USER; /* ": " and CRLF */
  return charge(rp, n) ? HPE_USER : grow(rp, &rp->hfield, &rp->hflen, at, n);
}

static int on_header_value(llhttp_t *p, const char *at, size_t n) {
  keel__reqparse *rp = rp_of(p);
  if (folded(rp, at)) return fail(rp, 400, "Folded header line (obs-fold)");
  return charge(rp, n) ? HPE_USER : grow(rp, &rp->hvalue, &rp->hvlen, at, n);
}

static int on_header_value_complete(llhttp_t *p) {
  keel__reqparse *rp = rp_of(p);
  keel_http_req *rq = rp->rq;
  if (!rp->hfield || !rp->hflen) return fail(rp, 400, "Empty header name");
  if (rp->head_done) { /* a trailer: parsed, counted, dropped */
    free(rp->hfield);
    free(rp->hvalue);
    rp->hfield = rp->hvalue = NULL;
    rp->hflen = rp->hvlen = 0;
    return 0;
  }
  if (rq->nh == KEEL__MAX_HEADERS) return fail(rp, 431, "Too many header fields");
  if (rq->nh == rq->caph) {
    size_t cap = rq->caph ? rq->caph * 2 : 16;
    char **a = realloc(rq->hname, cap * sizeof *a);
    if (!a) return fail(rp, 500, "Out of memory");
    rq->hname = a;
    char **b = realloc(rq->hval, cap * sizeof *b);
    if (!b) return fail(rp, 500, "Out of memory");
    rq->hval = b;
    rq->caph = cap;
  }
  for (char *q = rp->hfield; *q; q++)
    if (*q >= 'A' && *q <= 'Z') *q = (char)(*q + 32);
  if (!rp->hvalue && !(rp->hvalue = calloc(1, 1))) return fail(rp, 500, "Out of memory");
  while (rp->hvlen && (rp->hvalue[rp->hvlen - 1] == ' ' || rp->hvalue[rp->hvlen - 1] == '\t'))
    rp->hvalue[--rp->hvlen] = 0; /* trailing OWS is not part of the value (5.1) */
  if (strcmp(rp->hfield, "host") == 0) rp->nhost++;
  else if (strcmp(rp->hfield, "transfer-encoding") == 0) {
    /* keel decodes chunked and nothing else: one field, exactly that */
    if (rp->te_seen || strcasecmp(rp->hvalue, "chunked") != 0) rp->te_other = true;
    rp->te_seen = true;
  }
  else if (strcmp(rp->hfield, "connection") == 0) connection_tokens(rp, rp->hvalue);
  rq->hname[rq->nh] = rp->hfield;
  rq->hval[rq->nh] = rp->hvalue;
  rq->nh++;
  rp->hfield = rp->hvalue = NULL;
  rp->hflen = rp->hvlen = 0;
  return 0;
}

static int on_headers_complete(llhttp_t *p) {
  keel__reqparse *rp = rp_of(p);
  keel_http_req *rq = rp->rq;
  snprintf(rq->method, sizeof rq->method, "%s", llhttp_method_name(p->method));
  rq->http_minor = p->http_minor;
  if (p->http_major != 1 || p->http_minor > 1) return fail(rp, 400, "Unsupported HTTP version");
  if (p->http_minor == 1 && rp->nhost == 0) return fail(rp, 400, "Missing Host header");
  if (rp->nhost > 1) return fail(rp, 400, "More than one Host header");
  if (rp->te_other || (rp->te_seen && !(p->flags & F_CHUNKED)))
    return fail(rp, 400, "Transfer-Encoding other than a single chunked is not served");
  if (rp->te_seen && (p->flags & F_CONTENT_LENGTH))
    return fail(rp, 400, "Content-Length together with Transfer-Encoding");
  rp->head_done = true;
  if ((p->flags & F_CONTENT_LENGTH) && p->content_length > rp->max_body_bytes)
    return fail(rp, 413, "Request body too large");
  if (rp->on_head) rp->on_head(rp, rp->ud);
  return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n) {
  keel__reqparse *rp = rp_of(p);
  keel_http_req *rq = rp->rq;
  if (rq->body_len + n > rp->max_body_bytes) return fail(rp, 413, "Request body too large");
  if (rq->body_len + n + 1 > rq->body_cap) {
    size_t cap = rq->body_cap ? rq->body_cap : 1024;
    while (cap < rq->body_len + n + 1)
      cap *= 2;
    char *b = realloc(rq->body, cap);
    if (!b) return fail(rp, 500, "Out of memory");
    rq->body = b;
    rq->body_cap = cap;
  }
  memcpy(rq->body + rq->body_len, at, n);
  rq->body_len += n;
  rq->body[rq->body_len] = 0;
  return 0;
}

static int on_message_complete(llhttp_t *p) {
  keel__reqparse *rp = rp_of(p);
  bool ka = p->http_minor >= 1 ? !rp->conn_close : rp->conn_keep_alive && !rp->conn_close;
  rp->rq->keepalive = ka && llhttp_should_keep_alive(p) != 0;
  if (p->upgrade) { /* we speak only HTTP/1.1: serve it, then nothing more */
    rp->upgrade = true;
    rp->rq->keepalive = false;
  }
  rp->complete = true;
  return HPE_PAUSED;
}

static const llhttp_settings_t settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_version = on_version,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

void keel__reqparse_init(keel__reqparse *rp, size_t max_header_bytes, size_t max_body_bytes,
                         void (*on_head)(keel__reqparse *rp, void *ud), void *ud) {
  memset(rp, 0, sizeof *rp);
  llhttp_init(&rp->p, HTTP_REQUEST, &settings);
  rp->p.data = rp;
  rp->max_header_bytes = max_header_bytes;
  rp->max_body_bytes = max_body_bytes;
  rp->on_head = on_head;
  rp->ud = ud;
}

size_t keel__reqparse_feed(keel__reqparse *rp, const char *data, size_t n) {
  if (rp->status || rp->complete || rp->upgrade || !n) return 0;
  size_t off = 0;
  if (!rp->rq) { /* empty lines before a request line */
    while (off < n && (data[off] == '\r' || data[off] == '\n')) {
      if (data[off] == '\n' && ++rp->blank_lines > KEEL__MAX_BLANK_LINES) {
        fail(rp, 400, "Too many empty lines before the request");
        return off;
      }
      off++;
    }
    if (off == n) return n;
  }
  rp->base = data + off;
  llhttp_errno_t e = llhttp_execute(&rp->p, data + off, n - off);
  size_t used = n;
  if (e != HPE_OK) {
    const char *pos = llhttp_get_error_pos(&rp->p);
    used = pos && pos >= data && pos <= data + n ? (size_t)(pos - data) : n;
    if (e != HPE_PAUSED) {
      if (!rp->status) {
        rp->status = 400;
        rp->reason = e == HPE_PAUSED_H2_UPGRADE ? "HTTP/2 is not served on this port"
                                                : llhttp_get_error_reason(&rp->p);
        if (!rp->reason || !*rp->reason) rp->reason = llhttp_errno_name(e);
      }
    }
  }
  if (rp->rq) rp->rq->bytes_in += used; /* a feed stops at the end of a request */
  /* what the next buffer may need to look back at */
  size_t t = used - off < sizeof rp->tail ? used - off : sizeof rp->tail;
  size_t keep = rp->ntail + t > sizeof rp->tail ? sizeof rp->tail - t : rp->ntail;
  memmove(rp->tail, rp->tail + rp->ntail - keep, keep); /* a byte at a time works too */
  memcpy(rp->tail + keep, data + used - t, t);
  rp->ntail = keep + t;
  for (size_t i = used; i > off; i--)
    if (data[i - 1] != ' ' && data[i - 1] != '\t') {
      rp->prev_nonws = data[i - 1];
      break;
    }
  return used;
}

keel_http_req *keel__reqparse_take(keel__reqparse *rp) {
  keel_http_req *rq = rp->rq;
  rp->rq = NULL;
  free(rp->hfield);
  free(rp->hvalue);
  rp->hfield = rp->hvalue = NULL;
  rp->hflen = rp->hvlen = 0;
  rp->blank_lines = 0;
  rp->ntail = 0;
  rp->prev_nonws = 0;
  if (rp->complete) {
    rp->complete = false;
    llhttp_resume(&rp->p);
  }
  return rq;
}

bool keel__reqparse_busy(const keel__reqparse *rp) {
  return (rp->rq || rp->blank_lines) && !rp->complete;
}

void keel__reqparse_free(keel__reqparse *rp) {
  keel_http_req *rq = keel__reqparse_take(rp);
  if (rq) keel__req_free(rq);
}
