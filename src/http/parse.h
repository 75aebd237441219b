/* parse.h - the HTTP/1.1 request parser (not installed).
 *
 * llhttp (Node.js's parser, compiled in strict mode from Debian's
 * node-llhttp, docs/decisions/0007) does the syntax; this layer builds a
 * keel_http_req from its callbacks and adds what RFC 9112 asks of a server
 * that llhttp leaves to its user: exactly one Host in HTTP/1.1, no obs-fold
 * (5.2), only HTTP/1.0 and 1.1, at most KEEL__MAX_BLANK_LINES empty lines
 * before a request (2.2), the head and body limits (431, 413), and trailing
 * whitespace trimmed from field values (5.1).
 *
 * It knows nothing of sockets or processes: the server feeds it bytes and
 * takes complete requests; the differential fuzz target feeds it the same
 * bytes as a second parser. One parser per connection, used by one thread.
 */
#ifndef KEEL_HTTP_PARSE_H
#define KEEL_HTTP_PARSE_H

#include <llhttp.h>
#include <stdbool.h>
#include <stddef.h>

#include "http/http_internal.h"

#define KEEL__MAX_HEADERS     100 /* fields in one head: past it, 431 */
#define KEEL__MAX_BLANK_LINES 2   /* empty lines tolerated before a request line */

typedef struct keel__reqparse {
  llhttp_t p;
  size_t max_header_bytes, max_body_bytes;
  keel_http_req *rq;     /* being parsed, or complete (take it) */
  char *hfield, *hvalue; /* the field being read */
  size_t hflen, hvlen;
  size_t head_bytes;
  int nhost;
  int blank_lines;       /* CRLFs seen before the current request line */
  const char *base;      /* the buffer being parsed */
  char tail[8];          /* the last bytes of the previous buffer, for looking back */
  size_t ntail;
  char prev_nonws;       /* the last byte of the previous buffer that is not SP or HTAB */
  bool head_done;        /* fields from now on are trailers: not kept */
  bool version_seen;     /* the version's first span was checked */
  bool te_seen;          /* a Transfer-Encoding field came, even an empty one */
  bool te_other;         /* ... saying anything but one "chunked" */
  bool conn_close, conn_keep_alive; /* Connection tokens, read from trimmed values */
  bool complete;         /* rq is a whole request; the parser is paused */
  bool upgrade;          /* it asked for an upgrade (ignored): nothing after it is parsed */
  int status;            /* on failure: 400, 413 or 431; 0 while all is well */
  const char *reason;    /* on failure: a static description for the envelope */
  /* called once the head is complete and accepted (rp->rq has the headers):
   * the server sends 100 Continue and switches to the body timeout here */
  void (*on_head)(struct keel__reqparse *rp, void *ud);
  void *ud;
} keel__reqparse;

/* Prepares rp (no allocation). on_head may be NULL. */
void keel__reqparse_init(keel__reqparse *rp, size_t max_header_bytes, size_t max_body_bytes,
                         void (*on_head)(keel__reqparse *rp, void *ud), void *ud);

/* Parses up to n bytes and returns how many it used. It stops early after a
 * complete request (rp->complete: take it with keel__reqparse_take, then feed
 * the rest) and on an error (rp->status set: the parser is dead, answer
 * rp->status and close). */
size_t keel__reqparse_feed(keel__reqparse *rp, const char *data, size_t n);

/* Hands over the request being parsed (complete or, after an error, partial;
 * NULL when none had begun) and makes the parser ready for the next one. The
 * caller owns the request (keel__req_free). */
keel_http_req *keel__reqparse_take(keel__reqparse *rp);

/* True while a request has begun (its first byte, blank lines included) and
 * is not complete: the head and body timeouts run then. */
bool keel__reqparse_busy(const keel__reqparse *rp);

/* Frees what rp holds (a partial request, the field being read). */
void keel__reqparse_free(keel__reqparse *rp);

#endif
