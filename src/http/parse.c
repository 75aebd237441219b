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
 *    continuation to on_header_value as a second span of the same value: a
 *    second span that does not start its buffer, or that starts it right
 *    after a buffer that ended in LF, is a fold;
 *  - more than KEEL__MAX_BLANK_LINES empty lines before a request line (2.2
 *    asks us to ignore at least one; a client that sends them forever is
 *    holding a connection, not starting a request).
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

#include <stdlib.h>
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

static int on_message_begin(llhttp_t *p) {
  keel__reqparse *rp = rp_of(p);
  keel_http_req *rq = calloc(1, sizeof *rq);
  if (!rq) return fail(rp, 500, "Out of memory");
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  rq->start_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
  rq->refs = 1;
  rp->rq = rq;
  rp->head_bytes = 0;
  rp->nhost = 0;
  rp->in_value = false;
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
  if (rp->in_value && (at != rp->base || rp->prev_ended_lf))
    return fail(rp, 400, "Folded header line (obs-fold)");
  rp->in_value = true;
  return charge(rp, n) ? HPE_USER : grow(rp, &rp->hvalue, &rp->hvlen, at, n);
}

static int on_header_value_complete(llhttp_t *p) {
  keel__reqparse *rp = rp_of(p);
  keel_http_req *rq = rp->rq;
  if (!rp->hfield) return fail(rp, 400, "Empty header name");
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
  rq->hname[rq->nh] = rp->hfield;
  rq->hval[rq->nh] = rp->hvalue;
  rq->nh++;
  rp->hfield = rp->hvalue = NULL;
  rp->hflen = rp->hvlen = 0;
  rp->in_value = false;
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
  rp->rq->keepalive = llhttp_should_keep_alive(p) != 0;
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
  rp->prev_ended_lf = used > off && data[used - 1] == '\n';
  return used;
}

keel_http_req *keel__reqparse_take(keel__reqparse *rp) {
  keel_http_req *rq = rp->rq;
  rp->rq = NULL;
  free(rp->hfield);
  free(rp->hvalue);
  rp->hfield = rp->hvalue = NULL;
  rp->hflen = rp->hvlen = 0;
  rp->in_value = false;
  rp->blank_lines = 0;
  rp->prev_ended_lf = false;
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
