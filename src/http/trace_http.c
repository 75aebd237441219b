/* trace_http.c - the server span of each HTTP request.
 *
 * Every request the server dispatches gets a span of kind server: a child of
 * the caller's span when it sent a valid traceparent (tracestate kept), else
 * the root of a new trace; its ids are what the response's traceparent
 * header and the handler's log context carry. It ends when the response is
 * recorded (keel__access_record), with OpenTelemetry's HTTP semantic
 * conventions (v1.23+): http.request.method, url.path, url.scheme,
 * http.route, http.response.status_code, server.address, server.port,
 * client.address, user_agent.original, and error.type with status ERROR on a
 * 5xx. The span is named "METHOD route" once the route is known, else
 * "METHOD", as the conventions say (a raw path would explode the names).
 *
 * The span is a field of the request, not a heap object, and records only
 * when sampled while tracing runs, so a request that is not sampled costs
 * two random draws and a traceparent formatted (which it had before).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/http_internal.h"
#include "http/server.h"
#include "ops/trace_internal.h"

void keel__http_span_begin(keel_http_req *rq) {
  keel_span_ctx in;
  const char *tph = keel_http_header(rq, "traceparent");
  bool has = tph && keel_trace_parse(tph, keel_http_header(rq, "tracestate"), &in);
  keel_span_opts so = {.parent = has ? &in : NULL,
                       .root = !has,
                       .no_current = true,
                       .propagate_only = rq->srv && rq->srv->o.no_trace};
  keel_span_start(&rq->span, rq->method, KEEL_SPAN_SERVER, &so);
  rq->traced = true;
  keel_trace_format(&rq->span.ctx, rq->traceparent);
}

/* server.address and server.port from the Host header (what the client
 * asked for), else the listener's port. */
static void host_attrs(keel_http_req *rq) {
  const char *h = keel_http_header(rq, "host");
  int port = rq->srv ? keel_http_port(rq->srv) : 0;
  if (h && *h) {
    const char *colon = h[0] == '[' ? strstr(h, "]:") : strrchr(h, ':');
    if (colon && h[0] == '[') colon++;
    size_t n = colon ? (size_t)(colon - h) : strlen(h);
    if (n > 255) n = 255; /* what the old copy through a 256-byte buffer kept */
    KEEL__SPAN_STR(&rq->span, "server.address", h, n);
    if (colon) port = atoi(colon + 1);
  }
  if (port > 0) KEEL__SPAN_INT(&rq->span, "server.port", port);
}

/* The attributes go straight into the span's record (literal keys, values
 * copied into its arena: no malloc, no formatting; decision 0035). */
void keel__http_span_end(keel_http_req *rq) {
  if (!rq->traced || rq->span.ended) return;
  keel_span *sp = &rq->span;
  if (keel_span_recording(sp)) {
    int st = rq->res.status;
    const char *route = rq->match.pattern;
    size_t ml = strlen(rq->method), rl = route ? strlen(route) : 0;
    if (route) keel__span_name2(sp, rq->method, ml, route, rl);
    const char *path = rq->path ? rq->path : rq->target ? rq->target : "/";
    KEEL__SPAN_STR(sp, "http.request.method", rq->method, ml);
    KEEL__SPAN_STR(sp, "url.path", path, strlen(path));
    KEEL__SPAN_STR(sp, "url.scheme", "http", 4);
    KEEL__SPAN_INT(sp, "http.response.status_code", st);
    KEEL__SPAN_STR(sp, "client.address", rq->client_ip, strlen(rq->client_ip));
    if (route) KEEL__SPAN_STR(sp, "http.route", route, rl);
    if (rq->query && rq->query[0]) KEEL__SPAN_STR(sp, "url.query", rq->query, strlen(rq->query));
    host_attrs(rq);
    const char *ua = keel_http_header(rq, "user-agent");
    if (ua) KEEL__SPAN_STR(sp, "user_agent.original", ua, strlen(ua));
    if (st >= 500) {
      char code[12];
      int n = snprintf(code, sizeof code, "%d", st);
      KEEL__SPAN_STR(sp, "error.type", code, (size_t)n);
      keel_span_set_status(sp, KEEL_SPAN_ERROR, NULL);
    }
  }
  sp->current = false; /* the handler's slot points at it; never popped from here */
  keel_span_end(sp);
}
