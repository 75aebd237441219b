/* client_engine.c - one HTTP attempt, run by libcurl on the calling
 * process's scheduler loop.
 *
 * Each client has one engine per scheduler: a libcurl multi handle whose
 * sockets and timer are libuv handles on that scheduler's loop
 * (CURLMOPT_SOCKETFUNCTION opens a uv_poll_t per socket libcurl asks about,
 * CURLMOPT_TIMERFUNCTION arms one uv_timer_t). The engine is made by the
 * first request on that scheduler and only ever touched by its thread, so
 * nothing here locks; its connection cache serves every later request of the
 * client there (keep-alive, TLS session reuse, DNS cache).
 *
 * An attempt pins the process (keel_io_begin), adds an easy handle whose
 * private pointer is the transfer, and waits. The loop's callbacks drive
 * libcurl; when libcurl reports the transfer done, the callback removes it
 * from the multi handle and wakes the process (keel_io_ready). libcurl
 * enforces the connect and total timeouts, so the process waits without one.
 * The transfer lives on the heap, not on the process's stack: a process
 * killed while it waits leaves it behind, and keel_io_on_abandon's callback
 * takes it out of the multi handle and frees it. Bodies are collected up to
 * the attempt's limit; one byte more stops the transfer (KEEL_ERANGE).
 *
 * Closing (keel__hc_engine_close) cancels what is in flight (their callers
 * get KEEL_ECANCELED), cleans the multi handle up and closes the libuv
 * handles, waiting for their close callbacks. After keel_rt_stop the loops
 * are gone (closed by the runtime without our callbacks): then the engine
 * frees its handles' memory itself and never calls libuv.
 */
#include <curl/curl.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <uv.h>

#include "http/client_internal.h"
#include "keel/error.h"
#include "keel/io.h"
#include "keel/runtime.h"

/* Connections kept open per scheduler (libcurl's connection cache). */
#define KEEL__HC_MAX_IDLE 256
/* Easy handles kept for reuse per scheduler (an easy handle is a few KB of
 * allocations made and freed per request otherwise). */
#define KEEL__HC_SPARE 64

typedef struct hc_sock hc_sock;
typedef struct hc_xfer hc_xfer;

struct keel__hc_engine {
  CURLM *multi;
  uv_loop_t *loop;
  uv_timer_t timer; /* data: the engine */
  int open_handles; /* the timer and the socket polls not yet closed */
  bool loop_gone;
  hc_xfer *xfers;              /* in flight */
  hc_sock *socks;              /* polls alive */
  keel_io_t *closing;          /* the closer waiting for the handles' close callbacks */
  CURL *spare[KEEL__HC_SPARE]; /* easy handles of finished transfers, reset, for the next */
  int nspare;
};

struct hc_sock {
  uv_poll_t poll; /* first: the handle's address is the struct's */
  keel__hc_engine *e;
  curl_socket_t fd;
  hc_sock *prev, *next;
};

struct hc_xfer {
  keel__hc_engine *e;
  keel_http_client *c;
  CURL *easy;
  struct curl_slist *hdrs;
  keel_io_t io;
  hc_xfer *prev, *next;
  bool in_multi, done, cancelled, too_large;
  CURLcode result;
  char *body;
  size_t len, cap, max;
  char **hname, **hval;
  size_t nh, caph;
  char errbuf[CURL_ERROR_SIZE];
};

/* ---- lists ------------------------------------------------------------------ */

#define LIST_PUSH(head, x)                                                                         \
  do {                                                                                             \
    (x)->prev = NULL;                                                                              \
    (x)->next = (head);                                                                            \
    if (head) (head)->prev = (x);                                                                  \
    (head) = (x);                                                                                  \
  } while (0)
#define LIST_UNLINK(head, x)                                                                       \
  do {                                                                                             \
    if ((x)->prev)                                                                                 \
      (x)->prev->next = (x)->next;                                                                 \
    else                                                                                           \
      (head) = (x)->next;                                                                          \
    if ((x)->next) (x)->next->prev = (x)->prev;                                                    \
    (x)->prev = (x)->next = NULL;                                                                  \
  } while (0)

/* ---- closing ------------------------------------------------------------------ */

static void handle_closed(keel__hc_engine *e) {
  if (--e->open_handles == 0 && e->closing) keel_io_ready(e->closing, 0);
}

static void on_sock_closed(uv_handle_t *h) {
  hc_sock *s = (hc_sock *)h;
  keel__hc_engine *e = s->e;
  LIST_UNLINK(e->socks, s);
  free(s);
  handle_closed(e);
}

static void on_timer_closed(uv_handle_t *h) {
  handle_closed(h->data);
}

static void sock_close(hc_sock *s) {
  if (s->e->loop_gone) { /* the runtime closed the handle with its loop */
    LIST_UNLINK(s->e->socks, s);
    free(s);
    return;
  }
  uv_poll_stop(&s->poll);
  uv_close((uv_handle_t *)&s->poll, on_sock_closed);
}

/* ---- the transfer's end ---------------------------------------------------- */

/* Takes x out of the multi handle (no callback of it comes after this). */
static void xfer_detach(hc_xfer *x) {
  if (!x->in_multi) return;
  x->in_multi = false;
  LIST_UNLINK(x->e->xfers, x);
  curl_multi_remove_handle(x->e->multi, x->easy);
}

/* The easy handle back to its engine's spares (on the engine's thread,
 * out of the multi handle) or freed. */
static void easy_release(keel__hc_engine *e, CURL *h) {
  if (!h) return;
  if (e && !e->loop_gone && e->nspare < KEEL__HC_SPARE) {
    curl_easy_reset(h);
    e->spare[e->nspare++] = h;
  } else {
    curl_easy_cleanup(h);
  }
}

static void xfer_free(hc_xfer *x) {
  if (!x) return;
  if (x->easy) curl_easy_cleanup(x->easy);
  curl_slist_free_all(x->hdrs);
  free(x->body);
  for (size_t i = 0; i < x->nh; i++) {
    free(x->hname[i]);
    free(x->hval[i]);
  }
  free(x->hname);
  free(x->hval);
  free(x);
}

/* The caller died while waiting (keel_io_on_abandon), on its scheduler: it
 * will not leave keel_http_client_request, so it leaves the count here. */
static void xfer_abandon(void *arg) {
  hc_xfer *x = arg;
  keel_http_client *c = x->c;
  xfer_detach(x);
  xfer_free(x);
  atomic_fetch_sub_explicit(&c->active, 1, memory_order_acq_rel);
}

static void check_done(keel__hc_engine *e) {
  CURLMsg *m;
  int left;
  while ((m = curl_multi_info_read(e->multi, &left))) {
    if (m->msg != CURLMSG_DONE) continue;
    hc_xfer *x = NULL;
    curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
    CURLcode res = m->data.result; /* m is invalid after the removal */
    xfer_detach(x);
    x->result = res;
    x->done = true;
    keel_io_ready(&x->io, 0);
  }
}

/* ---- libuv drives libcurl ----------------------------------------------------- */

static void on_poll(uv_poll_t *h, int status, int events) {
  hc_sock *s = (hc_sock *)h;
  int flags = 0;
  if (status < 0) flags = CURL_CSELECT_ERR;
  if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
  if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
  int running;
  keel__hc_engine *e = s->e;
  curl_multi_socket_action(e->multi, s->fd, flags, &running);
  check_done(e);
}

static void on_timeout(uv_timer_t *t) {
  keel__hc_engine *e = t->data;
  int running;
  curl_multi_socket_action(e->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  check_done(e);
}

static int socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp) {
  (void)easy;
  keel__hc_engine *e = userp;
  hc_sock *s = socketp;
  if (what == CURL_POLL_REMOVE) {
    if (s) {
      curl_multi_assign(e->multi, fd, NULL);
      sock_close(s);
    }
    return 0;
  }
  if (e->loop_gone) return -1;
  if (!s) {
    s = calloc(1, sizeof *s);
    if (!s) return -1;
    if (uv_poll_init_socket(e->loop, &s->poll, fd) != 0) {
      free(s);
      return -1;
    }
    s->e = e;
    s->fd = fd;
    LIST_PUSH(e->socks, s);
    e->open_handles++;
    curl_multi_assign(e->multi, fd, s);
  }
  int ev = 0;
  if (what == CURL_POLL_IN || what == CURL_POLL_INOUT) ev |= UV_READABLE;
  if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT) ev |= UV_WRITABLE;
  uv_poll_start(&s->poll, ev, on_poll);
  return 0;
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp) {
  (void)multi;
  keel__hc_engine *e = userp;
  if (e->loop_gone) return 0;
  if (timeout_ms < 0)
    uv_timer_stop(&e->timer);
  else
    uv_timer_start(&e->timer, on_timeout, (uint64_t)timeout_ms, 0);
  return 0;
}

/* ---- the engine ---------------------------------------------------------------- */

static keel__hc_engine *engine_new(uv_loop_t *loop) {
  keel__hc_engine *e = calloc(1, sizeof *e);
  if (!e) return NULL;
  e->multi = curl_multi_init();
  if (!e->multi || uv_timer_init(loop, &e->timer) != 0) {
    if (e->multi) curl_multi_cleanup(e->multi);
    free(e);
    return NULL;
  }
  e->loop = loop;
  e->timer.data = e;
  e->open_handles = 1;
  curl_multi_setopt(e->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
  curl_multi_setopt(e->multi, CURLMOPT_SOCKETDATA, e);
  curl_multi_setopt(e->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
  curl_multi_setopt(e->multi, CURLMOPT_TIMERDATA, e);
  /* libcurl's default cache holds 4 connections per easy handle in the
   * multi at the moment: with handles coming and going per request it
   * shrinks whenever few are in flight and closes keep-alive connections
   * that the next burst reconnects (connect, close and TLS handshakes in a
   * profile). A fixed cache keeps them. */
  curl_multi_setopt(e->multi, CURLMOPT_MAXCONNECTS, (long)KEEL__HC_MAX_IDLE);
  return e;
}

void keel__hc_engine_close(keel__hc_engine *e, bool loop_gone) {
  if (!e) return;
  e->loop_gone = loop_gone;
  while (e->xfers) {
    hc_xfer *x = e->xfers;
    xfer_detach(x);
    if (loop_gone) { /* its process was destroyed with the runtime */
      xfer_free(x);
    } else {
      x->cancelled = true;
      x->done = true;
      keel_io_ready(&x->io, 0);
    }
  }
  while (e->nspare > 0)
    curl_easy_cleanup(e->spare[--e->nspare]);
  curl_multi_cleanup(e->multi); /* may still report sockets removed */
  if (loop_gone) {
    while (e->socks)
      sock_close(e->socks);
    free(e);
    return;
  }
  keel_io_t io;
  keel_io_begin(&io);
  e->closing = &io;
  uv_timer_stop(&e->timer);
  uv_close((uv_handle_t *)&e->timer, on_timer_closed);
  for (hc_sock *s = e->socks, *n; s; s = n) {
    n = s->next;
    if (!uv_is_closing((uv_handle_t *)&s->poll)) sock_close(s);
  }
  keel_io_wait(&io, KEEL_INFINITY);
  keel_io_end(&io);
  free(e);
}

/* ---- building a transfer ---------------------------------------------------------- */

static size_t on_body(char *p, size_t size, size_t n, void *ud) {
  hc_xfer *x = ud;
  size_t len = size * n;
  if (x->len + len > x->max) {
    x->too_large = true;
    return 0; /* stops the transfer: CURLE_WRITE_ERROR */
  }
  if (x->len + len + 1 > x->cap) {
    size_t cap = x->cap ? x->cap : 4096;
    while (cap < x->len + len + 1)
      cap *= 2;
    char *b = realloc(x->body, cap);
    if (!b) return 0;
    x->body = b;
    x->cap = cap;
  }
  memcpy(x->body + x->len, p, len);
  x->len += len;
  x->body[x->len] = '\0';
  return len;
}

/* Header lines of every answer (redirects and 100 included): a status line
 * starts a new set. */
static size_t on_header(char *p, size_t size, size_t n, void *ud) {
  hc_xfer *x = ud;
  size_t len = size * n;
  if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) {
    for (size_t i = 0; i < x->nh; i++) {
      free(x->hname[i]);
      free(x->hval[i]);
    }
    x->nh = 0;
    return len;
  }
  const char *colon = memchr(p, ':', len);
  if (!colon) return len;
  size_t nl = (size_t)(colon - p);
  const char *v = colon + 1, *end = p + len;
  while (v < end && (*v == ' ' || *v == '\t'))
    v++;
  while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ' || end[-1] == '\t'))
    end--;
  if (x->nh == x->caph) {
    size_t cap = x->caph ? x->caph * 2 : 16;
    char **a = realloc(x->hname, cap * sizeof *a);
    if (!a) return 0;
    x->hname = a;
    char **b = realloc(x->hval, cap * sizeof *b);
    if (!b) return 0;
    x->hval = b;
    x->caph = cap;
  }
  char *name = strndup(p, nl), *val = strndup(v, (size_t)(end - v));
  if (!name || !val) {
    free(name);
    free(val);
    return 0;
  }
  for (char *q = name; *q; q++)
    *q = (char)tolower((unsigned char)*q);
  x->hname[x->nh] = name;
  x->hval[x->nh] = val;
  x->nh++;
  return len;
}

static int add_header(hc_xfer *x, const char *line) {
  struct curl_slist *l = curl_slist_append(x->hdrs, line);
  if (!l) return KEEL_ENOMEM;
  x->hdrs = l;
  return 0;
}

static int add_header2(hc_xfer *x, const char *name, const char *value) {
  char line[512];
  int n = snprintf(line, sizeof line, "%s: %s", name, value);
  if (n < 0 || (size_t)n >= sizeof line) return KEEL_EINVAL;
  return add_header(x, line);
}

/* Whether the caller's headers have one named name (its length n). */
static bool has_header(const char *const *hs, const char *name, size_t n) {
  for (; hs && *hs; hs++)
    if (strncasecmp(*hs, name, n) == 0 && (*hs)[n] == ':') return true;
  return false;
}

static int xfer_setup(keel_http_client *c, hc_xfer *x, const keel__hc_attempt *a) {
  CURL *h = x->easy;
  int rc = 0;
  for (const char *const *hp = a->headers; hp && *hp && !rc; hp++)
    rc = add_header(x, *hp);
  if (!rc && a->content_type) rc = add_header2(x, "Content-Type", a->content_type);
  /* the caller's own X-Request-Id or traceparent header wins */
  if (!rc && a->request_id && !has_header(a->headers, "x-request-id", 12))
    rc = add_header2(x, "X-Request-Id", a->request_id);
  if (!rc && a->traceparent && !has_header(a->headers, "traceparent", 11))
    rc = add_header2(x, "traceparent", a->traceparent);
  if (!rc && a->tracestate && a->traceparent && !has_header(a->headers, "tracestate", 10))
    rc = add_header2(x, "tracestate", a->tracestate);
  if (!rc && a->body) rc = add_header(x, "Expect:"); /* no 100-continue round trip */
  if (rc) return rc;
  curl_easy_setopt(h, CURLOPT_PRIVATE, x);
  curl_easy_setopt(h, CURLOPT_URL, a->url);
  curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, x->hdrs);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, x);
  curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(h, CURLOPT_HEADERDATA, x);
  curl_easy_setopt(h, CURLOPT_ERRORBUFFER, x->errbuf);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_ACCEPT_ENCODING, ""); /* what this libcurl can decode */
  if (a->connect_timeout_ms > 0)
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)a->connect_timeout_ms);
  if (a->timeout_ms > 0) curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)a->timeout_ms);
  curl_easy_setopt(h, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)a->max_bytes);
  if (a->max_redirects > 0) {
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(h, CURLOPT_MAXREDIRS, (long)a->max_redirects);
  }
  if (c->ca_file) curl_easy_setopt(h, CURLOPT_CAINFO, c->ca_file);
  if (c->o.insecure) {
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 0L);
  }
  const char *m = a->method;
  if (strcmp(m, "HEAD") == 0) {
    curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
  } else if (a->body) {
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, a->body);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)a->body_len);
    if (strcmp(m, "POST") != 0) curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, m);
  } else if (strcmp(m, "GET") != 0) {
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, m);
  }
  return 0;
}

/* libcurl's verdict as a keel code. */
static int result_code(const hc_xfer *x) {
  if (x->cancelled) return KEEL_ECANCELED;
  if (x->too_large) return KEEL_ERANGE;
  switch (x->result) {
  case CURLE_OK: return 0;
  case CURLE_OPERATION_TIMEDOUT: return KEEL_ETIMEDOUT;
  case CURLE_FILESIZE_EXCEEDED: return KEEL_ERANGE;
  case CURLE_URL_MALFORMAT:
  case CURLE_UNSUPPORTED_PROTOCOL: return KEEL_EINVAL;
  case CURLE_OUT_OF_MEMORY: return KEEL_ENOMEM;
  default: return KEEL_EIO;
  }
}

static void answer_take(hc_xfer *x, keel_http_client_res *res) {
  long status = 0;
  curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
  keel__hc_res_clear_answer(res);
  res->status = (int)status;
  res->body = x->body;
  res->len = x->len;
  res->hname = x->hname;
  res->hval = x->hval;
  res->nh = x->nh;
  x->body = NULL;
  x->hname = x->hval = NULL;
  x->nh = x->caph = 0;
}

int keel__hc_attempt_run(keel_http_client *c, const keel__hc_attempt *a,
                         keel_http_client_res *res) {
  hc_xfer *x = calloc(1, sizeof *x);
  if (!x) return KEEL_ENOMEM;
  x->max = a->max_bytes;
  x->c = c;
  int rc = keel_io_begin(&x->io);
  if (rc) {
    xfer_free(x);
    return rc;
  }
  /* pinned from here: the scheduler index and its loop stay ours. A free
   * that started closes this scheduler's engine after us (same thread), or
   * already did: then no new engine may be made. */
  if (atomic_load(&c->closing)) {
    keel_io_end(&x->io);
    xfer_free(x);
    snprintf(res->error, sizeof res->error, "cancelled: the client is closing");
    return KEEL_ECANCELED;
  }
  int si = keel_sched_current();
  keel__hc_engine *e = c->engines[si];
  if (!e) e = c->engines[si] = engine_new(keel_io_loop(&x->io));
  if (!e) {
    keel_io_end(&x->io);
    xfer_free(x);
    return KEEL_ENOMEM;
  }
  x->e = e;
  x->easy = e->nspare ? e->spare[--e->nspare] : curl_easy_init();
  rc = x->easy ? xfer_setup(c, x, a) : KEEL_ENOMEM;
  if (!rc && curl_multi_add_handle(e->multi, x->easy) != CURLM_OK) rc = KEEL_ENOMEM;
  if (rc) {
    keel_io_end(&x->io);
    xfer_free(x);
    return rc;
  }
  x->in_multi = true;
  LIST_PUSH(e->xfers, x);
  keel_io_on_abandon(&x->io, xfer_abandon, x);
  while (!x->done)
    keel_io_wait(&x->io, KEEL_INFINITY);
  rc = result_code(x);
  if (rc == 0) {
    answer_take(x, res);
  } else if (rc == KEEL_ERANGE) {
    long status = 0;
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
    res->status = (int)status;
  }
  if (rc)
    snprintf(res->error, sizeof res->error, "%s",
             x->cancelled   ? "cancelled: the client is closing"
             : x->too_large ? "the answer is longer than max_response_bytes"
             : x->errbuf[0] ? x->errbuf
                            : curl_easy_strerror(x->result));
  /* Still pinned to e's thread, and nothing yielded since the check below:
   * a closer of e runs on this thread too, and only after closing was set,
   * so while it is unset e lives. Once set, e may be gone: no spare. */
  if (!x->cancelled && !atomic_load(&c->closing)) {
    easy_release(e, x->easy);
    x->easy = NULL;
  }
  keel_io_end(&x->io);
  xfer_free(x);
  return rc;
}
