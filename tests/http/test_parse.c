/* test_parse.c - the request parser alone (src/http/parse.c): llhttp in
 * strict mode plus keel's checks, fed bytes directly, no sockets.
 *
 * The first case feeds the same pipeline whole and cut into every chunk
 * size from 1 byte up, and wants the same requests every time (a check that
 * looks back across a buffer's end, such as the "HTTP/" before the version
 * or the byte before a field value, must not depend on where TCP cut).
 * The others are the disagreements the differential fuzz target
 * (tests/fuzz/fuzz_http_parser_diff.c) found, each refused or read as the
 * RFC says.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel_test.h"
#include "http/parse.h"

typedef struct parsed {
  int status;          /* the parser's refusal, 0 if none */
  const char *reason;
  int n;               /* whole requests */
  keel_http_req *rq[8]; /* the first 8 */
} parsed;

/* Parses in chunks of `chunk` bytes (0: all at once). */
static void parse(const char *in, size_t len, size_t chunk, parsed *out) {
  memset(out, 0, sizeof *out);
  keel__reqparse rp;
  keel__reqparse_init(&rp, 16384, 1 << 20, NULL, NULL);
  for (size_t pos = 0; pos < len && !rp.status;) {
    size_t n = chunk && len - pos > chunk ? chunk : len - pos;
    size_t off = 0;
    while (off < n && !rp.status) {
      size_t u = keel__reqparse_feed(&rp, in + pos + off, n - off);
      off += u;
      if (rp.complete) {
        keel_http_req *rq = keel__reqparse_take(&rp);
        if (out->n < 8) out->rq[out->n] = rq;
        else keel__req_free(rq);
        out->n++;
      } else if (!u) {
        break;
      }
    }
    pos += n;
  }
  out->status = rp.status;
  out->reason = rp.reason;
  keel__reqparse_free(&rp);
}

static void parsed_free(parsed *p) {
  for (int i = 0; i < p->n && i < 8; i++)
    keel__req_free(p->rq[i]);
}

static const char *hdr(const keel_http_req *rq, const char *name) {
  for (size_t i = 0; i < rq->nh; i++)
    if (strcmp(rq->hname[i], name) == 0) return rq->hval[i];
  return NULL;
}

#define S(lit) lit, sizeof lit - 1

KT_CASE(a_pipeline_parses_the_same_in_chunks_of_every_size) {
  static char buf[8192];
  size_t n = 0;
  for (int i = 0; i < 6; i++)
    n += (size_t)snprintf(buf + n, sizeof buf - n,
                          "%s /p/%d HTTP/1.1\r\nHost: t\r\nX-Id: r %d \r\n%s\r\n%s", i % 2 ? "POST" : "GET",
                          i, i,
                          i % 2 ? "Transfer-Encoding: chunked\r\n" : "Content-Length: 3\r\n",
                          i % 2 ? "3;x=y\r\nabc\r\n0\r\nT: v\r\n\r\n" : "xyz");
  n += (size_t)snprintf(buf + n, sizeof buf - n, "\r\nGET /last HTTP/1.0\r\n\r\n");
  for (size_t chunk = 0; chunk <= n; chunk = chunk < 64 ? chunk + 1 : chunk * 2) {
    parsed p;
    parse(buf, n, chunk, &p);
    if (p.status) fprintf(stderr, "chunk %zu: %d %s\n", chunk, p.status, p.reason);
    CHECK_EQ(p.status, 0);
    CHECK_EQ(p.n, 7);
    for (int i = 0; i < 6; i++) {
      char path[16], id[16];
      snprintf(path, sizeof path, "/p/%d", i);
      snprintf(id, sizeof id, "r %d", i); /* trailing whitespace is not the value's */
      CHECK_STR(p.rq[i]->target, path);
      CHECK_STR(hdr(p.rq[i], "x-id"), id);
      CHECK_EQ(p.rq[i]->body_len, 3);
      CHECK(hdr(p.rq[i], "t") == NULL); /* a trailer is not a header field */
      CHECK(p.rq[i]->keepalive);
    }
    CHECK_STR(p.rq[6]->target, "/last");
    CHECK(!p.rq[6]->keepalive);
    parsed_free(&p);
  }
}

KT_CASE(a_request_line_that_is_not_http_is_refused) {
  parsed p;
  parse(S("GET / RTSP/1.1\r\nHost: a\r\n\r\n"), 0, &p);
  CHECK_EQ(p.status, 400);
  CHECK_EQ(p.n, 0);
  parse(S("DESCRIBE / RTSP/1.0\r\n\r\n"), 3, &p);
  CHECK_EQ(p.status, 400);
  parsed_free(&p);
}

KT_CASE(an_empty_field_name_is_refused) {
  parsed p;
  parse(S("GET / HTTP/1.1\r\nHost: a\r\n: x\r\n\r\n"), 0, &p);
  CHECK_EQ(p.status, 400);
  CHECK_EQ(p.n, 0);
}

KT_CASE(an_empty_transfer_encoding_is_refused_with_or_without_a_length) {
  parsed p;
  parse(S("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n"),
        0, &p);
  CHECK_EQ(p.status, 400);
  CHECK_EQ(p.n, 0); /* the smuggled GET is never a request */
  parse(S("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\nContent-Length: 5\r\n\r\nhello"), 0, &p);
  CHECK_EQ(p.status, 400);
  CHECK_EQ(p.n, 0);
}

KT_CASE(only_a_single_chunked_transfer_encoding_is_served) {
  static const char *const bad[] = {
      "Transfer-Encoding: , chunked\r\n", "Transfer-Encoding: gzip, chunked\r\n",
      "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
      "Transfer-Encoding: chunked\r\nTransfer-Encoding:\r\n", "Transfer-Encoding: chunked,\r\n"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    char req[256];
    int n = snprintf(req, sizeof req, "POST / HTTP/1.1\r\nHost: a\r\n%s\r\n0\r\n\r\n", bad[i]);
    parsed p;
    parse(req, (size_t)n, 0, &p);
    CHECK_EQ(p.status, 400);
    CHECK_EQ(p.n, 0);
  }
  parsed p;
  parse(S("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked \r\n\r\n2\r\nok\r\n0\r\n\r\n"), 0,
        &p);
  CHECK_EQ(p.status, 0);
  CHECK_EQ(p.n, 1);
  CHECK_EQ(p.rq[0]->body_len, 2);
  parsed_free(&p);
}

KT_CASE(close_wins_over_keep_alive_and_trailing_whitespace) {
  parsed p;
  parse(S("GET /o HTTP/1.0\r\nConnection: close\r\nConnection: , keep-alive\r\n\r\n"), 0, &p);
  CHECK_EQ(p.status, 0);
  CHECK_EQ(p.n, 1);
  CHECK(!p.rq[0]->keepalive);
  parsed_free(&p);
  parse(S("GET /o HTTP/1.1\r\nHost: a\r\nConnection: close\t\r\n\r\n"), 0, &p);
  CHECK_EQ(p.n, 1);
  CHECK(!p.rq[0]->keepalive);
  parsed_free(&p);
  parse(S("GET /o HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"), 0, &p);
  CHECK_EQ(p.n, 1);
  CHECK(p.rq[0]->keepalive);
  parsed_free(&p);
}

KT_CASE(a_fold_after_an_empty_first_line_is_refused) {
  parsed p;
  parse(S("GET / HTTP/1.1\r\nHost:\r\n a\r\n\r\n"), 0, &p);
  CHECK_EQ(p.status, 400);
  for (size_t chunk = 1; chunk < 30; chunk++) {
    parse(S("GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n\tc\r\n\r\n"), chunk, &p);
    CHECK_EQ(p.status, 400);
  }
}

KT_MAIN(KT_ENTRY(a_pipeline_parses_the_same_in_chunks_of_every_size),
        KT_ENTRY(a_request_line_that_is_not_http_is_refused), KT_ENTRY(an_empty_field_name_is_refused),
        KT_ENTRY(an_empty_transfer_encoding_is_refused_with_or_without_a_length),
        KT_ENTRY(only_a_single_chunked_transfer_encoding_is_served),
        KT_ENTRY(close_wins_over_keep_alive_and_trailing_whitespace),
        KT_ENTRY(a_fold_after_an_empty_first_line_is_refused))
