/* cors.c - the CORS decision for one request, from an allow-list of origins.
 *
 * The allow-list is parsed once (comma-separated, spaces around entries
 * ignored) into an array of exact origins. Matching is an exact,
 * case-sensitive string comparison with the request's Origin header, as the
 * `cors` package does for string and array origins: browsers send the
 * serialized origin (lowercase scheme and host, no path, no trailing slash),
 * so an entry that could never match one (with a path, a trailing slash,
 * spaces or control characters inside) is refused at creation instead of
 * silently never matching. "*" in the list means any origin, which is only
 * accepted without credentials: the Fetch standard forbids
 * "Access-Control-Allow-Origin: *" with credentials, and echoing every origin
 * with credentials would hand any site the user's cookies.
 *
 * Headers per request (appended to the caller's list):
 * - allowed origin: Access-Control-Allow-Origin: <the origin> (or "*" in
 *   wildcard mode without credentials), Access-Control-Allow-Credentials:
 *   true when configured, Vary: Origin (the answer depends on Origin);
 * - refused origin or no Origin header, list mode: only Vary: Origin, so a
 *   shared cache never serves one origin's answer to another;
 * - wildcard mode: Access-Control-Allow-Origin: * on every response, Origin
 *   or not (the answer does not vary, so caches may share it);
 * - preflight (OPTIONS with Access-Control-Request-Method) from an allowed
 *   origin asking for a method we allow: in addition Access-Control-Allow-
 *   Methods (GET,HEAD,PUT,PATCH,POST,DELETE), Access-Control-Allow-Headers
 *   (the requested list when it is a well-formed list of header names, with
 *   Vary: Access-Control-Request-Headers; otherwise a default list) and
 *   Access-Control-Max-Age when max_age_s > 0. Anything else is refused and
 *   the server answers 403 without CORS headers.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/middleware.h"
#include "keel/error.h"

#define ALLOW_METHODS   "GET,HEAD,PUT,PATCH,POST,DELETE"
#define DEFAULT_HEADERS "Content-Type,Authorization,X-Request-Id,X-Correlation-Id,traceparent"
#define MAX_ACRH        1024 /* longer requested header lists get the default list */

struct keel__cors {
  char **origins;
  size_t n;
  bool any; /* "*" listed (only without credentials) */
  bool credentials;
  int64_t max_age_s;
  char max_age[24];
};

void keel__cors_free(keel__cors *c) {
  if (!c) return;
  for (size_t i = 0; i < c->n; i++)
    free(c->origins[i]);
  free(c->origins);
  free(c);
}

/* An entry that a browser's Origin header can equal: "null" or
 * scheme "://" host [":" port], no path, no whitespace or control bytes. */
static bool origin_entry_ok(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (ch <= 0x20 || ch == 0x7f || ch == ',') return false;
  }
  if (n == 4 && memcmp(s, "null", 4) == 0) return true;
  const char *sep = memmem(s, n, "://", 3);
  if (!sep || sep == s) return false;
  const char *host = sep + 3;
  size_t hostlen = n - (size_t)(host - s);
  return hostlen > 0 && memchr(host, '/', hostlen) == NULL;
}

keel__cors *keel__cors_new(const char *origins, bool credentials, int64_t max_age_s, int *err) {
  int e = KEEL_EINVAL;
  keel__cors *c = NULL;
  if (!origins || max_age_s < 0) goto fail;
  e = KEEL_ENOMEM;
  c = calloc(1, sizeof *c);
  if (!c) goto fail;
  c->credentials = credentials;
  c->max_age_s = max_age_s;
  snprintf(c->max_age, sizeof c->max_age, "%lld", (long long)max_age_s);
  size_t cap = 1;
  for (const char *p = origins; *p; p++)
    cap += *p == ',';
  c->origins = calloc(cap, sizeof *c->origins);
  if (!c->origins) goto fail;
  for (const char *p = origins; *p;) {
    const char *end = strchr(p, ',');
    if (!end) end = p + strlen(p);
    const char *a = p, *b = end;
    while (a < b && (*a == ' ' || *a == '\t'))
      a++;
    while (b > a && (b[-1] == ' ' || b[-1] == '\t'))
      b--;
    size_t n = (size_t)(b - a);
    p = *end ? end + 1 : end;
    if (n == 0) continue; /* "a,,b" or a trailing comma */
    e = KEEL_EINVAL;
    if (n == 1 && *a == '*') {
      if (credentials) goto fail; /* never a wildcard with credentials */
      c->any = true;
      continue;
    }
    if (!origin_entry_ok(a, n)) goto fail;
    e = KEEL_ENOMEM;
    char *o = strndup(a, n);
    if (!o) goto fail;
    c->origins[c->n++] = o;
  }
  e = KEEL_EINVAL;
  if (c->n == 0 && !c->any) goto fail; /* an empty list: CORS is off, do not create */
  if (err) *err = 0;
  return c;
fail:
  keel__cors_free(c);
  if (err) *err = e;
  return NULL;
}

static bool listed(const keel__cors *c, const char *origin) {
  for (size_t i = 0; i < c->n; i++)
    if (strcmp(c->origins[i], origin) == 0) return true;
  return false;
}

/* A preflight's requested method is one we list. Methods are case-sensitive
 * (RFC 9110 9.1); browsers upper-case the standard ones. */
static bool method_allowed(const char *m) {
  static const char *const methods[] = {"GET", "HEAD", "PUT", "PATCH", "POST", "DELETE"};
  for (size_t i = 0; i < sizeof methods / sizeof *methods; i++)
    if (strcmp(m, methods[i]) == 0) return true;
  return false;
}

/* Access-Control-Request-Headers: a comma-separated list of header names
 * (tokens), optional whitespace around commas. Echoed only when it is that. */
static bool header_list_ok(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > MAX_ACRH) return false;
  bool any = false;
  for (const char *p = s; *p; p++) {
    unsigned char ch = (unsigned char)*p;
    bool tchar = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                 (ch && strchr("!#$%&'*+-.^_`|~", ch));
    if (tchar)
      any = true;
    else if (ch != ',' && ch != ' ' && ch != '\t')
      return false;
  }
  return any;
}

#define ADD(name, value)                                                                           \
  do {                                                                                             \
    if (keel__hdrs_add(out, (name), (value)) != 0) goto nomem;                                     \
  } while (0)

keel__cors_verdict keel__cors_decide(const keel__cors *c, const char *method, const char *origin,
                                     const char *acr_method, const char *acr_headers,
                                     keel__hdrs *out) {
  size_t mark = out->n;
  bool preflight = method && strcmp(method, "OPTIONS") == 0 && acr_method && *acr_method;
  bool list_mode = !c->any;

  if (!origin) { /* not a CORS request; still say how the answer varies */
    if (list_mode)
      ADD("Vary", "Origin");
    else
      ADD("Access-Control-Allow-Origin", "*");
    return KEEL__CORS_NONE;
  }
  bool ok = c->any || listed(c, origin);
  if (ok && preflight && !method_allowed(acr_method)) ok = false;
  if (!ok) {
    if (list_mode) ADD("Vary", "Origin");
    return preflight ? KEEL__CORS_PREFLIGHT_REFUSED : KEEL__CORS_REFUSED;
  }
  if (list_mode) {
    ADD("Access-Control-Allow-Origin", origin);
    if (c->credentials) ADD("Access-Control-Allow-Credentials", "true");
    ADD("Vary", "Origin");
  } else {
    ADD("Access-Control-Allow-Origin", "*");
  }
  if (!preflight) return KEEL__CORS_ALLOWED;

  ADD("Access-Control-Allow-Methods", ALLOW_METHODS);
  if (acr_headers && header_list_ok(acr_headers)) {
    ADD("Access-Control-Allow-Headers", acr_headers);
    ADD("Vary", "Access-Control-Request-Headers");
  } else {
    ADD("Access-Control-Allow-Headers", DEFAULT_HEADERS);
  }
  if (c->max_age_s > 0) ADD("Access-Control-Max-Age", c->max_age);
  return KEEL__CORS_PREFLIGHT_OK;

nomem:
  /* Out of memory: take back what this call added and refuse, so the
   * response never carries half a CORS answer. */
  keel__hdrs_truncate(out, mark);
  return preflight ? KEEL__CORS_PREFLIGHT_REFUSED : KEEL__CORS_REFUSED;
}
