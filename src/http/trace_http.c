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
    char addr[256];
    if (n >= sizeof addr) n = sizeof addr - 1;
    memcpy(addr, h, n);
    addr[n] = '\0';
    keel_span_set_str(&rq->span, "server.address", addr);
    if (colon) port = atoi(colon + 1);
  }
  if (port > 0) keel_span_set_int(&rq->span, "server.port", port);
}

void keel__http_span_end(keel_http_req *rq) {
  if (!rq->traced || rq->span.ended) return;
  keel_span *sp = &rq->span;
  if (keel_span_recording(sp)) {
    int st = rq->res.status;
    const char *route = rq->match.pattern;
    if (route) {
      char name[160];
      snprintf(name, sizeof name, "%s %s", rq->method, route);
      keel_span_set_name(sp, name);
    }
    keel_span_set(sp, KEEL_STR("http.request.method", rq->method),
                  KEEL_STR("url.path", rq->path     ? rq->path
                                       : rq->target ? rq->target
                                                    : "/"),
                  KEEL_STR("url.scheme", "http"), KEEL_INT("http.response.status_code", st),
                  KEEL_STR("client.address", rq->client_ip));
    if (route) keel_span_set_str(sp, "http.route", route);
    if (rq->query && rq->query[0]) keel_span_set_str(sp, "url.query", rq->query);
    host_attrs(rq);
    const char *ua = keel_http_header(rq, "user-agent");
    if (ua) keel_span_set_str(sp, "user_agent.original", ua);
    if (st >= 500) {
      char code[12];
      snprintf(code, sizeof code, "%d", st);
      keel_span_set_str(sp, "error.type", code);
      keel_span_set_status(sp, KEEL_SPAN_ERROR, NULL);
    }
  }
  sp->current = false; /* the handler's slot points at it; never popped from here */
  keel_span_end(sp);
}
