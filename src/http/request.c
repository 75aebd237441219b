/* request.c - what a handler sees: the request's accessors and the response
 * builders, with the one error envelope every keel service answers with.
 *
 * Everything here runs in the handler's process (or on the connection's loop
 * for answers that need no handler: 404, 405, 413, 429, ...); a request is
 * only ever touched by one thread, the scheduler it is pinned to, so nothing
 * here locks. JSON is built and parsed with jansson: bodies are off the hot
 * path of the runtime, and a well-kept parser beats one written again.
 */
#include <ctype.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http/http_internal.h"

/* ---- errors --------------------------------------------------------------- */

static const struct {
  int status;
  const char *code;
} kinds[] = {
    [KEEL_HTTP_VALIDATION] = {400, "VALIDATION_ERROR"},
    [KEEL_HTTP_BAD_REQUEST] = {400, "BAD_REQUEST"},
    [KEEL_HTTP_UNAUTHORIZED] = {401, "UNAUTHORIZED"},
    [KEEL_HTTP_FORBIDDEN] = {403, "FORBIDDEN"},
    [KEEL_HTTP_NOT_FOUND] = {404, "NOT_FOUND"},
    [KEEL_HTTP_METHOD_NOT_ALLOWED] = {405, "METHOD_NOT_ALLOWED"},
    [KEEL_HTTP_CONFLICT] = {409, "CONFLICT"},
    [KEEL_HTTP_TOO_LARGE] = {413, "PAYLOAD_TOO_LARGE"},
    [KEEL_HTTP_RATE_LIMITED] = {429, "RATE_LIMITED"},
    [KEEL_HTTP_HEADERS_TOO_LARGE] = {431, "HEADERS_TOO_LARGE"},
    [KEEL_HTTP_INTERNAL] = {500, "INTERNAL_ERROR"},
    [KEEL_HTTP_UNAVAILABLE] = {503, "SERVICE_UNAVAILABLE"},
    [KEEL_HTTP_REQUEST_TIMEOUT] = {408, "REQUEST_TIMEOUT"},
    [KEEL_HTTP_UNPROCESSABLE] = {422, "UNPROCESSABLE_ENTITY"},
    [KEEL_HTTP_GATEWAY_TIMEOUT] = {504, "GATEWAY_TIMEOUT"},
    [KEEL_HTTP_INSUFFICIENT_STORAGE] = {507, "INSUFFICIENT_STORAGE"},
};

static bool kind_ok(keel_http_error_kind k) {
  return k >= KEEL_HTTP_VALIDATION && k <= KEEL_HTTP_INSUFFICIENT_STORAGE;
}

int keel_http_error_status(keel_http_error_kind kind) {
  return kind_ok(kind) ? kinds[kind].status : 500;
}

const char *keel_http_error_code(keel_http_error_kind kind) {
  return kind_ok(kind) ? kinds[kind].code : "INTERNAL_ERROR";
}

const char *keel__status_reason(int status) {
  switch (status) {
  case 200: return "OK";
  case 201: return "Created";
  case 202: return "Accepted";
  case 204: return "No Content";
  case 301: return "Moved Permanently";
  case 302: return "Found";
  case 304: return "Not Modified";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 406: return "Not Acceptable";
  case 408: return "Request Timeout";
  case 409: return "Conflict";
  case 410: return "Gone";
  case 411: return "Length Required";
  case 412: return "Precondition Failed";
  case 413: return "Payload Too Large";
  case 414: return "URI Too Long";
  case 415: return "Unsupported Media Type";
  case 422: return "Unprocessable Entity";
  case 423: return "Locked";
  case 428: return "Precondition Required";
  case 429: return "Too Many Requests";
  case 431: return "Request Header Fields Too Large";
  case 451: return "Unavailable For Legal Reasons";
  case 500: return "Internal Server Error";
  case 501: return "Not Implemented";
  case 502: return "Bad Gateway";
  case 503: return "Service Unavailable";
  case 504: return "Gateway Timeout";
  case 507: return "Insufficient Storage";
  default: return status < 300 ? "OK" : status < 400 ? "Redirect" : "Error";
  }
}

static void iso_now(char out[48]) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  snprintf(out, 48, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", (tm.tm_year + 1900) % 10000, (tm.tm_mon + 1) % 100,
           tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (long)(ts.tv_nsec / 1000000) % 1000);
}

char *keel__envelope(const char *code, const char *message, json_t *details,
                     const char *trace_id) {
  char ts[48];
  iso_now(ts);
  json_t *err = json_pack("{s:s, s:s, s:O?, s:s, s:s}", "code", code,
                          "message", message ? message : "", "details", details, "traceId",
                          trace_id ? trace_id : "", "timestamp", ts);
  json_t *env = err ? json_pack("{s:b, s:o}", "success", 0, "error", err) : NULL;
  char *s = env ? json_dumps(env, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
  json_decref(env);
  return s;
}

/* ---- percent-decoding -------------------------------------------------------- */

static int hexval(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

char *keel__pct_decode(const char *s, size_t n, bool plus_space) {
  char *out = malloc(n + 1), *o = out;
  if (!out) return NULL;
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '%') {
      int h, l;
      if (i + 2 >= n) goto bad; /* needs two hex digits after '%' */
      if ((h = hexval((unsigned char)s[i + 1])) < 0 || (l = hexval((unsigned char)s[i + 2])) < 0)
        goto bad;
      int c = h * 16 + l;
      if (c == 0) goto bad; /* no NUL inside a C string */
      *o++ = (char)c;
      i += 2;
    } else if (s[i] == '+' && plus_space) {
      *o++ = ' ';
    } else {
      *o++ = s[i];
    }
  }
  *o = 0;
  return out;
bad:
  free(out);
  return NULL;
}

/* ---- the request -------------------------------------------------------------- */

const char *keel_http_method(const keel_http_req *req) { return req->method; }
const char *keel_http_path(const keel_http_req *req) { return req->path; }
const char *keel_http_query(const keel_http_req *req) { return req->query ? req->query : ""; }
const char *keel_http_request_id(const keel_http_req *req) { return req->reqid; }
const char *keel_http_client_ip(const keel_http_req *req) { return req->client_ip; }

const char *keel_http_route_pattern(const keel_http_req *req) {
  return req->match.route ? req->match.route->pattern : NULL;
}

const char *keel_http_param(const keel_http_req *req, const char *name) {
  for (size_t i = 0; i < req->match.nparams; i++)
    if (strcmp(req->match.pname[i], name) == 0) return req->match.pval[i];
  return NULL;
}

const char *keel_http_header(const keel_http_req *req, const char *name) {
  for (size_t i = 0; i < req->nh; i++)
    if (strcasecmp(req->hname[i], name) == 0) return req->hval[i];
  return NULL;
}

const void *keel_http_body(const keel_http_req *req, size_t *len) {
  if (len) *len = req->body_len;
  return req->body ? req->body : "";
}

json_t *keel_http_json(keel_http_req *req, int *err) {
  if (!req->json_done) {
    req->json_done = true;
    if (!req->body_len) {
      req->json_err = KEEL_ENOENT;
    } else {
      json_error_t je;
      /* any JSON text (RFC 8259): a bare scalar too, and strings holding \u0000 */
      req->json = json_loadb(req->body, req->body_len,
                             JSON_REJECT_DUPLICATES | JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
      req->json_err = req->json ? 0 : KEEL_EINVAL;
    }
  }
  if (err) *err = req->json_err;
  return req->json;
}

static void parse_query(keel_http_req *req) {
  req->q_done = true;
  const char *q = req->query;
  if (!q || !*q) return;
  size_t cap = 0;
  while (*q) {
    const char *amp = strchr(q, '&');
    size_t len = amp ? (size_t)(amp - q) : strlen(q);
    const char *eq = memchr(q, '=', len);
    size_t kl = eq ? (size_t)(eq - q) : len;
    if (len) {
      if (req->nq == cap) {
        cap = cap ? cap * 2 : 8;
        char **a = realloc(req->qname, cap * sizeof *a), **b = NULL;
        if (a) req->qname = a;
        if (a) b = realloc(req->qval, cap * sizeof *b);
        if (!a || !b) return;
        req->qval = b;
      }
      char *k = keel__pct_decode(q, kl, true);
      char *v = eq ? keel__pct_decode(eq + 1, len - kl - 1, true) : strdup("");
      if (k && v) {
        req->qname[req->nq] = k;
        req->qval[req->nq++] = v;
      } else {
        free(k);
        free(v);
      }
    }
    q += len + (amp ? 1 : 0);
    if (!amp) break;
  }
}

const char *keel_http_query_param(keel_http_req *req, const char *name) {
  if (!req->q_done) parse_query(req);
  for (size_t i = 0; i < req->nq; i++)
    if (strcmp(req->qname[i], name) == 0) return req->qval[i];
  return NULL;
}

/* ---- the response -------------------------------------------------------------- */

void keel__res_clear(keel_http_res *res) {
  keel__hdrs_free(&res->headers);
  free(res->body);
  free(res->err_log);
  memset(res, 0, sizeof *res);
}

static bool token_ok(const char *s) {
  if (!s || !*s) return false;
  for (; *s; s++)
    if (*s <= 32 || *s >= 127 || strchr("()<>@,;:\\\"/[]?={}", *s)) return false;
  return true;
}

int keel_http_set_header(keel_http_res *res, const char *name, const char *value) {
  if (!res || !token_ok(name) || !value || strpbrk(value, "\r\n")) return KEEL_EINVAL;
  return keel__hdrs_add(&res->headers, name, value);
}

int keel_http_reply(keel_http_res *res, int status, const char *content_type, const void *body,
                    size_t len) {
  if (!res || status < 100 || status > 999) return KEEL_EINVAL;
  if (content_type && strpbrk(content_type, "\r\n")) return KEEL_EINVAL;
  char *copy = NULL;
  if (len) {
    if (!(copy = malloc(len))) return KEEL_ENOMEM;
    memcpy(copy, body, len);
  }
  free(res->body);
  res->body = copy;
  res->len = len;
  res->status = status;
  res->content_type = content_type;
  return 0;
}

int keel_http_reply_text(keel_http_res *res, int status, const char *content_type,
                         const char *body) {
  return keel_http_reply(res, status, content_type, body, body ? strlen(body) : 0);
}

int keel_http_reply_json(keel_http_res *res, int status, json_t *body) {
  if (!body) return KEEL_EINVAL;
  char *s = json_dumps(body, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENCODE_ANY);
  json_decref(body);
  if (!s) return KEEL_ENOMEM;
  if (!res || status < 100 || status > 999) {
    free(s);
    return KEEL_EINVAL;
  }
  free(res->body);
  res->body = s;
  res->len = strlen(s);
  res->status = status;
  res->content_type = "application/json; charset=utf-8";
  return 0;
}

/* The envelope for status and code; 500 keeps its message for the log. */
static int fail(keel_http_res *res, keel_http_error_kind kind, int status, const char *code,
                const char *message, json_t *details) {
  /* every keel_http_res lives inside its request */
  keel_http_req *req = (keel_http_req *)((char *)res - offsetof(keel_http_req, res));
  const char *sent = message;
  if (status == 500) {
    /* the details stay in the log: the client learns only that it failed */
    free(res->err_log);
    res->err_log = message ? strdup(message) : NULL;
    sent = "Internal server error";
    json_decref(details);
    details = NULL;
  }
  char *body = keel__envelope(code, sent, details, req->reqid);
  json_decref(details);
  if (!body) return KEEL_ENOMEM;
  free(res->body);
  res->body = body;
  res->len = strlen(body);
  res->status = status;
  res->content_type = "application/json; charset=utf-8";
  res->err_kind = kind;
  return -status;
}

int keel_http_fail(keel_http_res *res, keel_http_error_kind kind, const char *message,
                   json_t *details) {
  if (!res) {
    json_decref(details);
    return KEEL_EINVAL;
  }
  if (!kind_ok(kind)) kind = KEEL_HTTP_INTERNAL;
  return fail(res, kind, kinds[kind].status, kinds[kind].code, message, details);
}

/* An envelope code: 1 to 64 of A-Z, 0-9 and '_'. */
static bool code_ok(const char *c) {
  size_t n = 0;
  for (; c[n]; n++)
    if (!((c[n] >= 'A' && c[n] <= 'Z') || (c[n] >= '0' && c[n] <= '9') || c[n] == '_'))
      return false;
  return n > 0 && n <= 64;
}

int keel_http_fail_status(keel_http_res *res, int status, const char *code, const char *message,
                          json_t *details) {
  if (!res || status < 400 || status > 599 || !code || !code_ok(code)) {
    json_decref(details);
    return KEEL_EINVAL;
  }
  return fail(res, status == 500 ? KEEL_HTTP_INTERNAL : 0, status, code, message, details);
}

void keel__req_free(keel_http_req *rq) {
  keel__http_span_end(rq); /* never answered: the span ends all the same */
  keel__res_clear(&rq->res);
  keel__hdrs_free(&rq->mw);
  keel__match_free(&rq->match);
  for (size_t i = 0; i < rq->nh; i++) {
    free(rq->hname[i]);
    free(rq->hval[i]);
  }
  free(rq->hname);
  free(rq->hval);
  for (size_t i = 0; i < rq->nq; i++) {
    free(rq->qname[i]);
    free(rq->qval[i]);
  }
  free(rq->qname);
  free(rq->qval);
  free(rq->target);
  free(rq->path);
  free(rq->query);
  free(rq->body);
  json_decref(rq->json);
  free(rq);
}
