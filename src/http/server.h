/* server.h - the HTTP server's own structures (not installed): a server,
 * its listeners (one per scheduler) and their connections, shared by
 * server.c, listener.c, conn.c and dispatch.c. The functions those files
 * share are declared in http_internal.h; the structures live here because a
 * connection embeds its parser's state (parse.h, which itself includes
 * http_internal.h).
 */
#ifndef KEEL_HTTP_SERVER_H
#define KEEL_HTTP_SERVER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "http/http_internal.h"
#include "http/middleware.h"
#include "http/parse.h"
#include "keel/http.h"
#include "keel/metrics.h"
#include "keel/process.h"

#define KEEL__READ_BUF 65536 /* a listener's read buffer, shared by its connections */

/* What the acceptor processes are told (keel__listeners_control). */
enum { KEEL__CTL_DRAIN = 1, KEEL__CTL_STOP = 2, KEEL__CTL_CLOSE = 3 };
/* What a connection's timer (keel__conn.timer) is timing: keel__conn.tmode. */
enum { KEEL__T_NONE = 0, KEEL__T_HEAD, KEEL__T_BODY, KEEL__T_IDLE, KEEL__T_SEND, KEEL__T_LINGER };

/* A listener (listener.c): one per scheduler, its socket on that scheduler's
 * loop, its acceptor process, its connections. */
struct keel__listener {
  keel_http_server *srv;
  int sched;
  int fd; /* bound and listening; the loop's handle holds a dup of it */
  uv_loop_t *loop;
  uv_tcp_t tcp;
  bool tcp_open;  /* tcp is initialised and not closing */
  bool paused;    /* out of descriptors: not accepting until the back-off ends */
  bool stopping;  /* KEEL__CTL_STOP: the handles below are closing */
  int handles;    /* tcp, backoff and resume while open (the loop's thread only) */
  atomic_bool closed; /* stop asked and every handle's close callback ran */
  uv_timer_t backoff; /* the accept pause */
  uv_idle_t resume;   /* runs connections whose pipeline went over its budget */
  keel__conn *runq, *runq_tail; /* those connections, in turn */
  keel_pid_t acceptor;
  keel__conn *conns;     /* doubly linked list of open connections */
  keel_http_req *reqs;   /* requests whose handler process has not ended */
  char rbuf[KEEL__READ_BUF];
  char date[40]; /* "Date: ...\r\n", refreshed once a second */
  uint64_t date_s;
};

/* A connection (conn.c), touched only on its listener's loop. */
struct keel__conn {
  uv_tcp_t tcp; /* first: the handle's address is the connection's */
  keel__listener *l;
  keel__conn *prev, *next;
  keel__conn *rnext, *rprev; /* in l->runq while queued */
  uv_timer_t timer;  /* head, body, keep-alive, send and linger timeouts */
  uv_timer_t rtimer; /* the request timeout of the request being handled */
  int tmode;
  uint64_t born_ns; /* accepted at (CLOCK_MONOTONIC) */
  bool served;      /* it sent at least one request */
  char peer[64]; /* the client's address, read once at accept */
  keel__reqparse rp; /* the request being parsed */
  keel_http_req *rq; /* taken from the parser: being handled or answered */
  bool busy;      /* a handler process has the request */
  bool queued;    /* in l->runq */
  bool closing, lingering;
  bool done;    /* an answer said Connection: close: close once it is out */
  bool blocked; /* answers backed up: parsing waits for the client to read */
  bool reading; /* uv_read_start is in effect */
  bool eof;     /* the client half-closed: answer what came, then close */
  char *in;     /* bytes read but not parsed yet: in[in_off, in_len) */
  size_t in_off, in_len, in_cap;
};

/* A server (server.c): its options, middleware, listeners and counters. */
struct keel_http_server {
  keel_http_opts o;
  char *host, *name, *csp, *cors_origins, *rate_skip;
  keel_http_router *router;
  int nl;
  keel__listener *ls;
  int port;
  int fd_high; /* an accepted descriptor at or above this pauses accepting; 0: no limit */
  _Atomic size_t in_flight, conns;
  atomic_bool draining, stopping, drain_begun;
  keel__ratelimit *rl;
  keel__cors *cors;
  char *sec_headers; /* the security headers, preformatted "Name: value\r\n..." */
  size_t sec_len;
  keel__access acc; /* the access log line and the request metrics */
  keel_metric_family *m_in_flight, *m_paused;
  keel_gauge *in_flight_g;
  keel_counter *paused_c;       /* accept pauses for want of descriptors */
  _Atomic int64_t pause_log_ms; /* when the last pause was logged */
  _Atomic uint64_t pause_quiet; /* pauses since then, not logged */
  /* run when the server is freed (the admin port's state, admin.c) */
  void (*on_free)(void *arg);
  void *on_free_arg;
};

#endif
