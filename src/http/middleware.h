/* middleware.h - the pieces of the HTTP middleware that do not need a
 * connection: rate limiting, request ids and W3C trace context, CORS
 * decisions, security headers, and the header list they fill (internal, not
 * installed). The server (dispatch.c) calls them per request; each is tested on
 * its own in tests/http/test_middleware.c.
 */
#ifndef KEEL_HTTP_MIDDLEWARE_H
#define KEEL_HTTP_MIDDLEWARE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- a list of response headers (names and values copied) -------------- */
/* Each pair is one allocation (value points into name's block): release
 * entries only with keel__hdrs_truncate / keel__hdrs_free, never free(). */

typedef struct keel__hdr {
  char *name, *value;
} keel__hdr;
typedef struct keel__hdrs {
  keel__hdr *v;
  size_t n, cap;
} keel__hdrs;

/* Appends a copy of name: value. KEEL_EINVAL when name is not an HTTP token
 * or value holds CR, LF, NUL or another control byte but tab (no header
 * injection can pass through the list); KEEL_ENOMEM. */
int keel__hdrs_add(keel__hdrs *h, const char *name, const char *value);
/* The value of the first header named `name` (case-insensitive) or NULL. */
const char *keel__hdrs_get(const keel__hdrs *h, const char *name);
/* Drops the headers after the first n (undoes appends since a mark). */
void keel__hdrs_truncate(keel__hdrs *h, size_t n);
/* Frees every copy and the array; the list is empty and reusable after. */
void keel__hdrs_free(keel__hdrs *h);

/* ---- rate limiting: fixed window per client key, shared by all schedulers */

typedef struct keel__ratelimit keel__ratelimit;

/* limit requests per window_ms per key; at most max_clients keys are
 * remembered (bounded memory whatever the number of addresses). NULL on
 * ENOMEM or bad arguments. */
keel__ratelimit *keel__ratelimit_new(int limit, int64_t window_ms, size_t max_clients);
void keel__ratelimit_free(keel__ratelimit *rl);

typedef struct keel__rl_result {
  bool allowed;
  int limit;
  int remaining;        /* after this request, >= 0 */
  int64_t reset_s;      /* seconds until the key's window ends (X-RateLimit-Reset), >= 1 */
  int64_t retry_after_s; /* when refused: seconds to wait (Retry-After), >= 1 (== reset_s) */
} keel__rl_result;

/* Counts one request for key at now_ms (CLOCK_MONOTONIC ms) and says whether
 * it is allowed. Any thread, concurrently. */
void keel__ratelimit_hit(keel__ratelimit *rl, const char *key, uint64_t now_ms,
                         keel__rl_result *out);
/* Keys remembered now (for tests and metrics). */
size_t keel__ratelimit_size(keel__ratelimit *rl);
/* Counters evicted while their window was still open, because the table was
 * full (a flood of distinct keys): each made the limit fail open for one
 * client. Monotonic; for a metric. */
uint64_t keel__ratelimit_evictions(keel__ratelimit *rl);
/* SipHash-2-4 of data under the 128-bit key (k0, k1): the limiter's keyed
 * hash, exposed for its test vector. */
uint64_t keel__siphash24(uint64_t k0, uint64_t k1, const void *data, size_t len);

/* ---- request ids and trace context ---------------------------------------- */

/* A client-supplied id is taken when it is 1..128 characters of
 * [A-Za-z0-9._:-] (what a UUID, a ULID or a trace id looks like), so a
 * client cannot inject anything into logs or headers. */
bool keel__reqid_valid(const char *s);
/* Writes a fresh random UUID v4 (36 chars + NUL) into out[37]. Any thread. */
void keel__reqid_make(char out[37]);

typedef struct keel__traceparent {
  char trace_id[33];  /* 32 lowercase hex */
  char parent_id[17]; /* 16 lowercase hex: the caller's span */
  uint8_t flags;
} keel__traceparent;

/* Parses a W3C traceparent header (version 00; future versions parsed per
 * the spec's rules); false when invalid (all-zero ids, bad hex, bad
 * length). */
bool keel__traceparent_parse(const char *s, keel__traceparent *out);
/* The traceparent to propagate for our span: version 00, same trace id (or
 * a new one when in is NULL), a new span id written to span_out[17], the
 * sampled flag kept (level 1 sends other flag bits as zero; 01 sampled when
 * new). out gets 55 chars + NUL. Any thread. */
void keel__traceparent_next(const keel__traceparent *in, char out[56], char span_out[17]);

/* ---- CORS ------------------------------------------------------------------- */

typedef struct keel__cors keel__cors;

/* origins: comma-separated exact origins ("https://a.example,https://b.example");
 * "*" allows any origin, but never together with credentials: with
 * credentials the request's origin is echoed only when listed, and a "*"
 * in the list is refused at creation (NULL, *err = KEEL_EINVAL). Also
 * KEEL_EINVAL: origins NULL or with no entry (CORS off: do not create one),
 * an entry no browser Origin can equal (a path or trailing '/', spaces,
 * control bytes; "null" is accepted), max_age_s < 0. max_age_s 0: no
 * Access-Control-Max-Age. *err = KEEL_ENOMEM when out of memory. */
keel__cors *keel__cors_new(const char *origins, bool credentials, int64_t max_age_s, int *err);
void keel__cors_free(keel__cors *c);

typedef enum {
  KEEL__CORS_NONE = 0,      /* no Origin header: not a CORS request */
  KEEL__CORS_ALLOWED,       /* headers added; go on */
  KEEL__CORS_REFUSED,       /* origin not allowed: no CORS headers (the browser blocks) */
  KEEL__CORS_PREFLIGHT_OK,  /* OPTIONS preflight allowed: answer 204 with the headers */
  KEEL__CORS_PREFLIGHT_REFUSED /* preflight refused: answer 403 without CORS headers */
} keel__cors_verdict;

/* Decides for one request and appends the response headers to out
 * (Access-Control-Allow-Origin, -Credentials, Vary: Origin, and for a
 * preflight -Allow-Methods, -Allow-Headers, -Max-Age). A preflight is
 * OPTIONS with Access-Control-Request-Method; one asking for a method outside
 * GET,HEAD,PUT,PATCH,POST,DELETE is refused. With an allow-list, Vary: Origin
 * is added on every verdict (NONE and REFUSED included) so shared caches
 * keep answers apart; in "*" mode Access-Control-Allow-Origin: * is added
 * even to NONE. method, acr_* may be NULL. On ENOMEM nothing is added and
 * the verdict is REFUSED / PREFLIGHT_REFUSED. Any thread (c is read-only). */
keel__cors_verdict keel__cors_decide(const keel__cors *c, const char *method, const char *origin,
                                     const char *acr_method, const char *acr_headers,
                                     keel__hdrs *out);

/* ---- security headers ------------------------------------------------------ */

/* Appends the helmet-style defaults: Content-Security-Policy (csp or a strict
 * default), Strict-Transport-Security (when hsts), X-Content-Type-Options:
 * nosniff, X-Frame-Options: DENY, Referrer-Policy: no-referrer,
 * Cross-Origin-Opener-Policy, Cross-Origin-Resource-Policy,
 * X-DNS-Prefetch-Control: off, X-Download-Options, X-Permitted-Cross-Domain-Policies,
 * Origin-Agent-Cluster, X-XSS-Protection: 0. csp "" sends no CSP. Errors:
 * KEEL_EINVAL (csp with CR/LF), KEEL_ENOMEM; nothing is added then. */
int keel__security_headers(keel__hdrs *out, bool hsts, const char *csp);

#endif
