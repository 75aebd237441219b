/* secheaders.c - the security headers every response carries, in the
 * spirit of helmet 7's defaults.
 *
 * The values are helmet 7.x's defaults, with one deliberate difference:
 * X-Frame-Options is DENY (helmet: SAMEORIGIN), as keel's issue asks, and
 * the default Content-Security-Policy says frame-ancestors 'none' (helmet:
 * 'self') so the two headers agree (browsers that know CSP obey
 * frame-ancestors and ignore X-Frame-Options). Cross-Origin-Embedder-Policy
 * is left out as helmet 7 does by default (require-corp breaks pages that
 * embed third-party resources). X-XSS-Protection: 0 switches off the old
 * XSS auditors, which created holes of their own (helmet sends the same).
 * Strict-Transport-Security is optional because it only makes sense when the
 * service is reached over HTTPS (usually through a terminating proxy).
 */
#include "http/middleware.h"
#include "keel/error.h"

#define DEFAULT_CSP                                                                                \
  "default-src 'self';base-uri 'self';font-src 'self' https: data:;form-action 'self';"            \
  "frame-ancestors 'none';img-src 'self' data:;object-src 'none';script-src 'self';"               \
  "script-src-attr 'none';style-src 'self' https: 'unsafe-inline';upgrade-insecure-requests"

int keel__security_headers(keel__hdrs *out, bool hsts, const char *csp) {
  if (!out) return KEEL_EINVAL;
  const struct {
    const char *name, *value;
    bool on;
  } list[] = {
      {"Content-Security-Policy", csp ? csp : DEFAULT_CSP, !csp || *csp},
      {"Cross-Origin-Opener-Policy", "same-origin", true},
      {"Cross-Origin-Resource-Policy", "same-origin", true},
      {"Origin-Agent-Cluster", "?1", true},
      {"Referrer-Policy", "no-referrer", true},
      {"Strict-Transport-Security", "max-age=15552000; includeSubDomains", hsts},
      {"X-Content-Type-Options", "nosniff", true},
      {"X-DNS-Prefetch-Control", "off", true},
      {"X-Download-Options", "noopen", true},
      {"X-Frame-Options", "DENY", true},
      {"X-Permitted-Cross-Domain-Policies", "none", true},
      {"X-XSS-Protection", "0", true},
  };
  size_t mark = out->n;
  for (size_t i = 0; i < sizeof list / sizeof *list; i++) {
    if (!list[i].on) continue;
    int rc = keel__hdrs_add(out, list[i].name, list[i].value);
    if (rc != 0) { /* a csp with CR/LF (KEEL_EINVAL) or no memory: add nothing */
      keel__hdrs_truncate(out, mark);
      return rc;
    }
  }
  return 0;
}
