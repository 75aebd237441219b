/* stream.c - streamed answers: a handler that writes its body as it goes
 * (Server-Sent Events, the admin port's /admin/events).
 *
 * An ordinary answer is sent once its handler returns (dispatch.c). A
 * streamed one is sent by the handler itself: keel_http_stream_begin writes
 * the head at once (no Content-Length, Connection: close: the body ends when
 * the connection does), stops the request timeout and marks the request
 * answered, so the handler's exit sends nothing more; each
 * keel_http_stream_write then hands bytes to the connection.
 *
 * Why this works without locks: a handler process is pinned to the
 * scheduler whose loop owns its connection (dispatch.c), so while it runs
 * nothing else touches the connection; it reads rq->conn, and writes on the
 * libuv stream, from the loop's own thread.
 *
 * Bounded, always. A client that does not read must not make the server
 * buffer without limit: the kernel's send buffer of a streamed connection is
 * set to the stream's bound, and a write that finds more than that many
 * bytes still queued in user space closes the connection at once and says
 * KEEL_EBUSY (the caller forgets the client). A client that went away (reset,
 * or it closed its side: an event-stream client never half-closes to say
 * it is done sending) gives KEEL_EIO, and a server that drains or stops
 * gives KEEL_ECANCELED, so the handler returns and the connection closes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/http_internal.h"
#include "http/server.h"
#include "keel/error.h"
#include "keel/http.h"
#include "keel/process.h"
#include "ops/json_write.h"

#define STREAM_QUEUE_DEFAULT (256 * 1024)
#define STREAM_QUEUE_MIN     4096

/* The connection of a streaming request if the client can still be written
 * to, else NULL with *rc set. */
static keel__conn *stream_conn(keel_http_req *rq, int *rc) {
  keel__conn *c = rq->conn;
  if (atomic_load_explicit(&rq->srv->draining, memory_order_relaxed)) {
    *rc = KEEL_ECANCELED;
    return NULL;
  }
  if (!c || c->closing || c->lingering || c->eof) {
    *rc = KEEL_EIO;
    return NULL;
  }
  return c;
}

int keel_http_stream_begin(keel_http_req *req, int status, const char *content_type,
                           size_t max_queued) {
  if (!req || status < 200 || status > 599 || !content_type || strpbrk(content_type, "\r\n"))
    return KEEL_EINVAL;
  if (!req->pid || keel_self() != req->pid) return KEEL_ENOTPROC;
  if (req->responded || req->stream_max) return KEEL_ESTATE;
  int rc = 0;
  keel__conn *c = stream_conn(req, &rc);
  if (!c) return rc;
  keel_http_server *s = req->srv;
  if (!max_queued) max_queued = STREAM_QUEUE_DEFAULT;
  if (max_queued < STREAM_QUEUE_MIN) max_queued = STREAM_QUEUE_MIN;

  keel__jw b = {0};
  char line[64];
  snprintf(line, sizeof line, "HTTP/1.1 %d %s\r\n", status, keel__status_reason(status));
  keel__jw_put(&b, line, strlen(line));
  const char *date = keel__http_date(c->l);
  keel__jw_put(&b, date, strlen(date));
  keel__http_header_line(&b, "Content-Type", content_type);
  keel__http_header_line(&b, "Cache-Control", "no-store");
  keel__http_header_line(&b, "Connection", "close");
  if (req->reqid[0]) keel__http_header_line(&b, "X-Request-Id", req->reqid);
  if (s->sec_headers) keel__jw_put(&b, s->sec_headers, s->sec_len);
  for (size_t i = 0; i < req->mw.n; i++)
    keel__http_header_line(&b, req->mw.v[i].name, req->mw.v[i].value);
  for (size_t i = 0; i < req->res.headers.n; i++)
    keel__http_header_line(&b, req->res.headers.v[i].name, req->res.headers.v[i].value);
  keel__jw_put(&b, "\r\n", 2);
  if (b.oom) {
    free(b.p);
    return KEEL_ENOMEM;
  }

  /* answered from here on: the handler's exit sends nothing, and the
   * request timeout no longer applies (a stream lives as long as it is read) */
  uv_timer_stop(&c->rtimer);
  req->responded = true;
  req->keepalive = false;
  c->done = true;
  free(req->res.body);
  req->res.body = NULL;
  req->res.status = status;
  req->stream_max = max_queued;
  int sndbuf = (int)(max_queued > (1 << 20) ? (1 << 20) : max_queued);
  uv_send_buffer_size((uv_handle_t *)&c->tcp, &sndbuf); /* best effort */
  size_t head = b.len;
  bool ok = keel__conn_write(c, b.p, b.len);
  keel__access_record(&s->acc, req, head);
  return ok ? 0 : KEEL_EIO;
}

int keel_http_stream_write(keel_http_req *req, const void *data, size_t len) {
  if (!req || (!data && len)) return KEEL_EINVAL;
  if (!req->pid || keel_self() != req->pid) return KEEL_ENOTPROC;
  if (!req->stream_max) return KEEL_ESTATE;
  int rc = 0;
  keel__conn *c = stream_conn(req, &rc);
  if (!c) return rc;
  if (!len) return 0;
  size_t queued = uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
  if (queued + len > req->stream_max) { /* a client that does not keep up is dropped */
    keel__conn_close(c);
    return KEEL_EBUSY;
  }
  char *copy = malloc(len);
  if (!copy) return KEEL_ENOMEM;
  memcpy(copy, data, len);
  return keel__conn_write(c, copy, len) ? 0 : KEEL_EIO;
}

bool keel_http_stream_open(keel_http_req *req) {
  int rc;
  return req && req->stream_max && stream_conn(req, &rc) != NULL;
}
