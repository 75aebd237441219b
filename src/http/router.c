/* router.c - method + path to a route, with path parameters.
 *
 * Routes are few (tens) and matched in one pass: the path is split into
 * segments once, each route compares its segments (a literal must be equal,
 * ":name" takes any non-empty segment, a last "*" takes the rest), and among
 * the routes that match the path the one with the most literal segments wins
 * ("/api/orders/stats" before "/api/orders/:id"). A path that some route
 * matches with another method gives 405 with an Allow list; HEAD is served by
 * a GET route when there is no HEAD route.
 *
 * The path given is the raw one (percent-encoded, as sent): it is split at
 * '/' first and each segment decoded after, so "/kv/a%2Fb" is two segments,
 * "kv" and "a/b", as Fastify and Express read it; literal segments compare
 * with the decoded segment, parameters are the decoded segment.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "http/http_internal.h"

keel_http_router *keel_http_router_new(void) {
  return calloc(1, sizeof(keel_http_router));
}

static void route_free(keel__route *rt) {
  if (!rt) return;
  for (size_t i = 0; i < rt->nseg; i++)
    free(rt->seg[i]);
  free(rt->seg);
  free(rt->pattern);
  free(rt);
}

void keel_http_router_free(keel_http_router *r) {
  if (!r) return;
  for (size_t i = 0; i < r->n; i++)
    route_free(r->v[i]);
  free(r->v);
  free(r);
}

/* Splits the len bytes of "/a/b/c" into {"a","b","c"}, each segment
 * percent-decoded when decode is set (KEEL_EINVAL on a bad escape); "/"
 * gives no segment. */
static int split(const char *path, size_t len, bool decode, char ***out, size_t *n) {
  *out = NULL;
  *n = 0;
  size_t cap = 0;
  const char *p = path, *end = path + len;
  while (p < end && *p == '/')
    p++;
  while (p < end) {
    const char *e = memchr(p, '/', (size_t)(end - p));
    size_t sl = e ? (size_t)(e - p) : (size_t)(end - p);
    if (*n == cap) {
      cap = cap ? cap * 2 : 8;
      char **v = realloc(*out, cap * sizeof *v);
      if (!v) return KEEL_ENOMEM;
      *out = v;
    }
    char *seg = decode ? keel__pct_decode(p, sl, false) : strndup(p, sl);
    if (!seg) return decode ? KEEL_EINVAL : KEEL_ENOMEM;
    (*out)[(*n)++] = seg;
    p += sl;
    while (p < end && *p == '/')
      p++;
  }
  return 0;
}

static bool method_ok(const char *m) {
  size_t n = strlen(m);
  if (!n || n >= 12) return false;
  for (size_t i = 0; i < n; i++)
    if (!isupper((unsigned char)m[i])) return false;
  return true;
}

int keel_http_route(keel_http_router *r, const char *method, const char *pattern,
                    keel_http_handler fn, void *ud) {
  if (!r || !method || !pattern || !fn || pattern[0] != '/' || !method_ok(method))
    return KEEL_EINVAL;
  for (size_t i = 0; i < r->n; i++)
    if (strcmp(r->v[i]->method, method) == 0 && strcmp(r->v[i]->pattern, pattern) == 0)
      return KEEL_EEXIST;
  keel__route *rt = calloc(1, sizeof *rt);
  if (!rt) return KEEL_ENOMEM;
  snprintf(rt->method, sizeof rt->method, "%s", method);
  rt->fn = fn;
  rt->ud = ud;
  int rc = (rt->pattern = strdup(pattern)) ? split(pattern, strlen(pattern), false, &rt->seg, &rt->nseg) : KEEL_ENOMEM;
  size_t nparams = 0;
  for (size_t i = 0; !rc && i < rt->nseg; i++) {
    const char *s = rt->seg[i];
    if (s[0] == ':') {
      if (!s[1] || ++nparams > KEEL__HTTP_MAX_PARAMS) rc = KEEL_EINVAL;
    } else if (strcmp(s, "*") == 0) {
      if (i + 1 != rt->nseg) rc = KEEL_EINVAL;
    } else {
      rt->nstatic++;
    }
  }
  if (!rc && r->n == r->cap) {
    size_t cap = r->cap ? r->cap * 2 : 16;
    keel__route **v = realloc(r->v, cap * sizeof *v);
    if (!v) rc = KEEL_ENOMEM;
    else {
      r->v = v;
      r->cap = cap;
    }
  }
  if (rc) {
    route_free(rt);
    return rc;
  }
  r->v[r->n++] = rt;
  return 0;
}

/* Does rt match the segments? Fills params (borrowed pointers into seg). */
static bool route_matches(const keel__route *rt, char **seg, size_t nseg, size_t *np,
                          const char **pname, const char **pval) {
  size_t k = 0;
  for (size_t i = 0; i < rt->nseg; i++) {
    const char *s = rt->seg[i];
    if (strcmp(s, "*") == 0) {
      *np = k;
      return true; /* the rest, possibly empty */
    }
    if (i >= nseg) return false;
    if (s[0] == ':') {
      if (!seg[i][0]) return false;
      pname[k] = s + 1;
      pval[k++] = seg[i];
    } else if (strcmp(s, seg[i]) != 0) {
      return false;
    }
  }
  *np = k;
  return rt->nseg == nseg;
}

int keel__router_match(const keel_http_router *r, const char *method, const char *path,
                       size_t path_len, keel__match *m) {
  memset(m, 0, sizeof *m);
  char **seg;
  size_t nseg;
  int err = split(path, path_len, true, &seg, &nseg); /* each segment decoded alone: %2F stays inside */
  if (err) {
    for (size_t i = 0; i < nseg; i++)
      free(seg[i]);
    free(seg);
    return err;
  }
  const keel__route *best = NULL, *best_get = NULL, *other = NULL;
  const char *bname[KEEL__HTTP_MAX_PARAMS], *bval[KEEL__HTTP_MAX_PARAMS];
  size_t bn = 0;
  bool known = false;
  bool head = strcmp(method, "HEAD") == 0;
  for (size_t i = 0; r && i < r->n; i++) {
    const keel__route *rt = r->v[i];
    const char *pname[KEEL__HTTP_MAX_PARAMS], *pval[KEEL__HTTP_MAX_PARAMS];
    size_t np = 0;
    if (!route_matches(rt, seg, nseg, &np, pname, pval)) continue;
    known = true;
    bool same = strcmp(rt->method, method) == 0;
    bool via_get = head && strcmp(rt->method, "GET") == 0;
    if (!same && !via_get) {
      if (!other || rt->nstatic > other->nstatic) other = rt;
      if (!strstr(m->allow, rt->method)) {
        size_t l = strlen(m->allow);
        snprintf(m->allow + l, sizeof m->allow - l, "%s%s", l ? ", " : "", rt->method);
      }
      continue;
    }
    const keel__route **slot = same ? &best : &best_get;
    if (!*slot || rt->nstatic > (*slot)->nstatic) {
      *slot = rt;
      if (same || !best) {
        bn = np;
        memcpy(bname, pname, np * sizeof *pname);
        memcpy(bval, pval, np * sizeof *pval);
      }
    }
  }
  if (!best) best = best_get;
  int rc = 0;
  if (best) {
    m->route = best;
    m->nparams = bn;
    for (size_t i = 0; i < bn; i++) {
      m->pname[i] = bname[i];
      if (!(m->pval[i] = strdup(bval[i]))) rc = KEEL_ENOMEM;
    }
    m->pattern = best->pattern;
    m->allow[0] = 0;
  } else {
    rc = known ? 1 : KEEL_ENOENT;
    if (other) m->pattern = other->pattern;
    if (known && strstr(m->allow, "GET") && !strstr(m->allow, "HEAD")) {
      size_t l = strlen(m->allow);
      snprintf(m->allow + l, sizeof m->allow - l, ", HEAD");
    }
  }
  for (size_t i = 0; i < nseg; i++)
    free(seg[i]);
  free(seg);
  return rc;
}

void keel__match_free(keel__match *m) {
  for (size_t i = 0; i < m->nparams; i++)
    free(m->pval[i]);
  m->nparams = 0;
}
