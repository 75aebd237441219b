/* hdrs.c - the growable list of response headers the middleware fills.
 *
 * A keel__hdrs is a plain array of (name, value) pairs, grown by doubling;
 * each pair is one private allocation holding both strings (name first, the
 * value right after its NUL), so only name is ever passed to free. The
 * middleware pieces (CORS, security headers) and the server append to it; the
 * server writes the list out in order. Lookups are linear and
 * case-insensitive: a response carries a dozen or two headers, so a scan
 * beats any index. Adding refuses what could split a header in two (CR, LF,
 * NUL or another control byte in the value; a name that is not an RFC 9110
 * token), so nothing that reaches this list can inject a header or a body.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http/middleware.h"
#include "keel/error.h"

/* tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
 *         "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA  (RFC 9110 5.6.2) */
static bool is_tchar(unsigned char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static bool valid_name(const char *s) {
  if (!*s) return false;
  for (; *s; s++)
    if (!is_tchar((unsigned char)*s)) return false;
  return true;
}

/* field-value: visible characters, spaces and tabs, obs-text; never CR/LF. */
static bool valid_value(const char *s) {
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c < 0x20 && c != '\t') return false;
    if (c == 0x7f) return false;
  }
  return true;
}

int keel__hdrs_add(keel__hdrs *h, const char *name, const char *value) {
  if (!h || !name || !value || !valid_name(name) || !valid_value(value)) return KEEL_EINVAL;
  if (h->n == h->cap) {
    size_t cap = h->cap ? h->cap * 2 : 16;
    keel__hdr *v = realloc(h->v, cap * sizeof *v);
    if (!v) return KEEL_ENOMEM;
    h->v = v;
    h->cap = cap;
  }
  size_t nl = strlen(name) + 1, vl = strlen(value) + 1;
  char *block = malloc(nl + vl); /* name and value in one allocation */
  if (!block) return KEEL_ENOMEM;
  memcpy(block, name, nl);
  memcpy(block + nl, value, vl);
  h->v[h->n].name = block;
  h->v[h->n].value = block + nl;
  h->n++;
  return 0;
}

const char *keel__hdrs_get(const keel__hdrs *h, const char *name) {
  if (!h || !name) return NULL;
  for (size_t i = 0; i < h->n; i++)
    if (strcasecmp(h->v[i].name, name) == 0) return h->v[i].value;
  return NULL;
}

void keel__hdrs_truncate(keel__hdrs *h, size_t n) {
  if (!h) return;
  while (h->n > n) {
    h->n--;
    free(h->v[h->n].name); /* the value lives in the same block */
  }
}

void keel__hdrs_free(keel__hdrs *h) {
  if (!h) return;
  for (size_t i = 0; i < h->n; i++)
    free(h->v[i].name); /* value: same block */
  free(h->v);
  h->v = NULL;
  h->n = h->cap = 0;
}
