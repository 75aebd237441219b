/* config.c - typed configuration: environment, .env file, per-APP_ENV defaults.
 *
 * A load runs in four passes over plain data, with no global state. First the
 * .env file, if any, is read whole and parsed line by line into an array of
 * key/value pairs (comments, blank lines, an "export " prefix, single quotes
 * taken literally, double quotes with \n \r \t \" \\ escapes, unquoted values
 * ending at a " #" comment); a malformed line becomes an error naming the file
 * and line, never its content, which might be a secret. Second, APP_ENV is
 * resolved (environment, then .env, then "development") and checked. Third,
 * each field takes its text from the first source that has one (environment,
 * .env, the default for the current APP_ENV, the plain default), the text is
 * parsed by its type, checked against bounds, allowed values and the
 * production-secret rule, and written to the caller's struct at the field's
 * offset. Fourth, if nothing failed so far, the caller's cross-field rules run
 * on the loaded struct. Every failure appends one line to a growing error
 * text instead of stopping, so the caller sees every problem at once. Values
 * are echoed in errors escaped and truncated, URL passwords masked, and secret
 * fields never: they print "(secret)". On failure everything stored in the
 * struct is freed again, so it owns nothing. Rendering (keel_config_each and
 * keel_config_describe) turns each member back into text from the same table.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "keel/config.h"
#include "keel/error.h"

#define ECHO_MAX 80 /* bytes of an offending value echoed in an error line */

static const char *const env_names[KEEL_CONFIG_ENV_COUNT_] = {"development", "staging",
                                                              "production"};

/* ---- a growing text buffer ---------------------------------------------- */

typedef struct sbuf {
  char *p;
  size_t len, cap;
  int oom;
} sbuf;

static void sb_putn(sbuf *b, const char *s, size_t n) {
  if (b->oom) return;
  if (n > SIZE_MAX / 4) { /* cannot happen; tells GCC's -O3 range analysis so */
    b->oom = 1;
    return;
  }
  if (b->len + n + 1 > b->cap) {
    size_t c = b->cap ? b->cap : 256;
    while (c < b->len + n + 1)
      c *= 2;
    char *q = realloc(b->p, c);
    if (!q) {
      b->oom = 1;
      return;
    }
    b->p = q;
    b->cap = c;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

static void sb_puts(sbuf *b, const char *s) {
  sb_putn(b, s, strlen(s));
}

__attribute__((format(printf, 2, 3))) static void sb_printf(sbuf *b, const char *fmt, ...) {
  char small[256];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(small, sizeof small, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n < sizeof small) {
    sb_putn(b, small, (size_t)n);
    return;
  }
  char *big = malloc((size_t)n + 1);
  if (!big) {
    b->oom = 1;
    return;
  }
  va_start(ap, fmt);
  vsnprintf(big, (size_t)n + 1, fmt, ap);
  va_end(ap);
  sb_putn(b, big, (size_t)n);
  free(big);
}

/* ---- small text helpers ------------------------------------------------- */

static char *dup_n(const char *s, size_t n) {
  char *d = malloc(n + 1);
  if (d) {
    memcpy(d, s, n);
    d[n] = '\0';
  }
  return d;
}

static int is_ws(char c) {
  return c == ' ' || c == '\t';
}

/* s without leading and trailing spaces, tabs, CR and LF, as start + length. */
static const char *trim(const char *s, size_t *n) {
  size_t len = strlen(s);
  while (len && isspace((unsigned char)*s))
    s++, len--;
  while (len && isspace((unsigned char)s[len - 1]))
    len--;
  *n = len;
  return s;
}

static void fmt_duration(char *out, size_t len, int64_t ms) {
  if (ms != 0 && ms % 3600000 == 0)
    snprintf(out, len, "%" PRId64 "h", ms / 3600000);
  else if (ms != 0 && ms % 60000 == 0)
    snprintf(out, len, "%" PRId64 "m", ms / 60000);
  else if (ms != 0 && ms % 1000 == 0)
    snprintf(out, len, "%" PRId64 "s", ms / 1000);
  else
    snprintf(out, len, "%" PRId64 "ms", ms);
}

/* The URL with the password of its userinfo replaced by "****", malloc'd; or
 * NULL when it has no password (or memory ran out: the caller then shows
 * nothing of the value, see echo_value). */
static char *url_mask(const char *v, int *had_password) {
  *had_password = 0;
  const char *auth = strstr(v, "://");
  if (!auth) return NULL;
  auth += 3;
  size_t alen = strcspn(auth, "/?#");
  const char *at = NULL;
  for (size_t i = 0; i < alen; i++)
    if (auth[i] == '@') at = auth + i;
  if (!at) return NULL;
  const char *colon = memchr(auth, ':', (size_t)(at - auth));
  if (!colon) return NULL;
  *had_password = 1;
  sbuf b = {0};
  sb_putn(&b, v, (size_t)(colon + 1 - v));
  sb_puts(&b, "****");
  sb_puts(&b, at);
  if (b.oom) {
    free(b.p);
    return NULL;
  }
  return b.p;
}

/* ---- the loader --------------------------------------------------------- */

typedef struct kv {
  char *key, *val;
} kv;

typedef struct loader {
  sbuf err;
  int nerr;
  int oom;
  int zeroed; /* the struct's members were zeroed: freeing it is safe */
  kv *dot;
  size_t ndot, capdot;
} loader;

/* Starts an error line: "Invalid configuration: NAME: ". The caller appends
 * the reason (and value) and ends it with err_end. */
static void err_begin(loader *L, const char *name) {
  L->nerr++;
  sb_puts(&L->err, "Invalid configuration: ");
  sb_puts(&L->err, name);
  sb_puts(&L->err, ": ");
}

static void err_end(loader *L) {
  sb_puts(&L->err, "\n");
}

/* Appends ", got VALUE": escaped (control bytes as \n, \t, \xNN), truncated
 * with "...", "" for an empty value, "(secret)" for a secret field, a URL's
 * password masked. */
static void echo_value(loader *L, const keel_config_field *f, const char *v) {
  sbuf *b = &L->err;
  sb_puts(b, ", got ");
  if (f && (f->flags & KEEL_CONFIG_SECRET)) {
    sb_puts(b, "(secret)");
    return;
  }
  char *masked = NULL;
  if (f && f->type == KEEL_CONFIG_URL) {
    int had = 0;
    masked = url_mask(v, &had);
    if (had && !masked) { /* out of memory: show nothing rather than a password */
      sb_puts(b, "(a URL with a password)");
      return;
    }
  }
  const char *s = masked ? masked : v;
  if (!*s) sb_puts(b, "\"\"");
  size_t n = strlen(s);
  for (size_t i = 0; i < n && i < ECHO_MAX; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '\n')
      sb_puts(b, "\\n");
    else if (c == '\t')
      sb_puts(b, "\\t");
    else if (c < 0x20 || c == 0x7f)
      sb_printf(b, "\\x%02x", c);
    else
      sb_putn(b, (const char *)&c, 1);
  }
  if (n > ECHO_MAX) sb_puts(b, "...");
  free(masked);
}

/* One line for a value error: "Invalid configuration: ENV: REASON, got VALUE". */
__attribute__((format(printf, 4, 5))) static void err_value(loader *L, const keel_config_field *f,
                                                            const char *v, const char *fmt, ...) {
  err_begin(L, f->env);
  char why[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, sizeof why, fmt, ap);
  va_end(ap);
  sb_puts(&L->err, why);
  echo_value(L, f, v);
  err_end(L);
}

/* "a, b, c" */
static void join_values(sbuf *b, const char *const *vals) {
  for (size_t i = 0; vals && vals[i]; i++) {
    if (i) sb_puts(b, ", ");
    sb_puts(b, vals[i]);
  }
}

static void err_one_of(loader *L, const keel_config_field *f, const char *v, const char *what) {
  err_begin(L, f->env);
  sb_puts(&L->err, what);
  join_values(&L->err, f->values);
  echo_value(L, f, v);
  err_end(L);
}

/* ---- the .env file ------------------------------------------------------ */

static int dot_add(loader *L, const char *k, size_t kn, char *val) {
  if (L->ndot == L->capdot) {
    size_t c = L->capdot ? L->capdot * 2 : 16;
    kv *d = realloc(L->dot, c * sizeof *d);
    if (!d) return KEEL_ENOMEM;
    L->dot = d;
    L->capdot = c;
  }
  char *key = dup_n(k, kn);
  if (!key) return KEEL_ENOMEM;
  L->dot[L->ndot].key = key;
  L->dot[L->ndot].val = val;
  L->ndot++;
  return 0;
}

static const char *dot_get(const loader *L, const char *key) {
  for (size_t i = L->ndot; i-- > 0;) /* the last line for a key wins */
    if (strcmp(L->dot[i].key, key) == 0) return L->dot[i].val;
  return NULL;
}

static void dot_error(loader *L, const char *path, unsigned line, const char *why) {
  L->nerr++;
  sb_printf(&L->err, "Invalid configuration: %s:%u: %s\n", path, line, why);
}

/* Parses one line (NUL-terminated, no newline). Returns 0 (added, skipped or
 * reported as malformed) or KEEL_ENOMEM. */
static int dot_line(loader *L, const char *path, unsigned lineno, char *p) {
  while (is_ws(*p))
    p++;
  if (!*p || *p == '#') return 0;
  if (strncmp(p, "export", 6) == 0 && is_ws(p[6])) {
    p += 6;
    while (is_ws(*p))
      p++;
  }
  const char *key = p;
  if (!(isalpha((unsigned char)*p) || *p == '_')) {
    dot_error(L, path, lineno, "expected KEY=VALUE");
    return 0;
  }
  while (isalnum((unsigned char)*p) || *p == '_')
    p++;
  size_t kn = (size_t)(p - key);
  while (is_ws(*p))
    p++;
  if (*p != '=') {
    dot_error(L, path, lineno, "expected KEY=VALUE");
    return 0;
  }
  p++;
  while (is_ws(*p))
    p++;
  char *val;
  if (*p == '"' || *p == '\'') {
    char q = *p++;
    sbuf v = {0};
    sb_puts(&v, ""); /* an empty value is still a value */
    for (;;) {
      if (!*p) {
        free(v.p);
        dot_error(L, path, lineno,
                  q == '"' ? "unterminated double quote" : "unterminated single quote");
        return 0;
      }
      if (*p == q) {
        p++;
        break;
      }
      if (q == '"' && *p == '\\' && p[1]) {
        char c = p[1];
        const char *e = c == 'n' ? "\n" : c == 'r' ? "\r" : c == 't' ? "\t" : NULL;
        if (e)
          sb_puts(&v, e);
        else if (c == '"' || c == '\\')
          sb_putn(&v, &c, 1);
        else
          sb_putn(&v, p, 2);
        p += 2;
        continue;
      }
      sb_putn(&v, p, 1);
      p++;
    }
    while (is_ws(*p))
      p++;
    if (*p && *p != '#') {
      free(v.p);
      dot_error(L, path, lineno, "unexpected text after the closing quote");
      return 0;
    }
    if (v.oom) {
      free(v.p);
      return KEEL_ENOMEM;
    }
    val = v.p;
  } else {
    size_t n = 0;
    while (p[n] && !(p[n] == '#' && n > 0 && is_ws(p[n - 1])))
      n++;
    while (n && is_ws(p[n - 1]))
      n--;
    val = dup_n(p, n);
    if (!val) return KEEL_ENOMEM;
  }
  int rc = dot_add(L, key, kn, val);
  if (rc) free(val);
  return rc;
}

static int dot_read(loader *L, const char *path) {
  FILE *fp = fopen(path, "rb");
  if (!fp) {
    if (errno == ENOENT) return 0; /* the file is optional */
    L->nerr++;
    sb_printf(&L->err, "Invalid configuration: %s: cannot read: %s\n", path, strerror(errno));
    return 0;
  }
  sbuf text = {0};
  char chunk[4096];
  size_t got;
  while ((got = fread(chunk, 1, sizeof chunk, fp)) > 0)
    sb_putn(&text, chunk, got);
  int failed = ferror(fp);
  fclose(fp);
  if (text.oom) {
    free(text.p);
    return KEEL_ENOMEM;
  }
  if (failed) {
    free(text.p);
    L->nerr++;
    sb_printf(&L->err, "Invalid configuration: %s: cannot read: I/O error\n", path);
    return 0;
  }
  int rc = 0;
  unsigned lineno = 0;
  char *p = text.p;
  while (p && *p && rc == 0) {
    lineno++;
    char *nl = strchr(p, '\n');
    char *next = nl ? nl + 1 : NULL;
    if (nl) *nl = '\0';
    size_t n = strlen(p); /* a NUL byte inside a line ends it early */
    if (n && p[n - 1] == '\r') p[n - 1] = '\0';
    rc = dot_line(L, path, lineno, p);
    p = next;
  }
  free(text.p);
  return rc;
}

/* ---- parsing values ----------------------------------------------------- */

/* Decimal integer with optional sign. 0, -1 (syntax) or -2 (overflow). */
static int parse_i64(const char *s, size_t n, int64_t *out) {
  size_t i = 0;
  int neg = 0;
  if (i < n && (s[i] == '+' || s[i] == '-')) neg = s[i++] == '-';
  if (i == n) return -1;
  uint64_t lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX, v = 0;
  int over = 0;
  for (; i < n; i++) {
    if (!isdigit((unsigned char)s[i])) return -1;
    unsigned d = (unsigned)(s[i] - '0');
    if (v > (lim - d) / 10)
      over = 1;
    else
      v = v * 10 + d;
  }
  if (over) return -2;
  *out = neg ? (v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v) : (int64_t)v;
  return 0;
}

/* "500ms", "30s", "5m", "1h", or a bare number of ms. 0, -1 or -2 (overflow). */
static int parse_duration(const char *s, size_t n, int64_t *out) {
  size_t i = 0;
  uint64_t v = 0;
  int over = 0;
  while (i < n && isdigit((unsigned char)s[i])) {
    unsigned d = (unsigned)(s[i] - '0');
    if (v > ((uint64_t)INT64_MAX - d) / 10)
      over = 1;
    else
      v = v * 10 + d;
    i++;
  }
  if (i == 0) return -1;
  const char *u = s + i;
  size_t un = n - i;
  uint64_t mul;
  if (un == 0 || (un == 2 && strncasecmp(u, "ms", 2) == 0))
    mul = 1;
  else if (un == 1 && (*u == 's' || *u == 'S'))
    mul = 1000;
  else if (un == 1 && (*u == 'm' || *u == 'M'))
    mul = 60000;
  else if (un == 1 && (*u == 'h' || *u == 'H'))
    mul = 3600000;
  else
    return -1;
  if (over || v > (uint64_t)INT64_MAX / mul) return -2;
  *out = (int64_t)(v * mul);
  return 0;
}

static int parse_bool(const char *s, size_t n, bool *out) {
  static const char *const yes[] = {"true", "1", "yes", "on"};
  static const char *const no[] = {"false", "0", "no", "off"};
  for (size_t i = 0; i < 4; i++) {
    if (strlen(yes[i]) == n && strncasecmp(s, yes[i], n) == 0) return *out = true, 0;
    if (strlen(no[i]) == n && strncasecmp(s, no[i], n) == 0) return *out = false, 0;
  }
  return -1;
}

static int find_value(const char *const *vals, const char *s, size_t n) {
  for (int i = 0; vals && vals[i]; i++)
    if (strlen(vals[i]) == n && strncasecmp(vals[i], s, n) == 0) return i;
  return -1;
}

static void url_free(keel_config_url *u) {
  free(u->raw);
  free(u->scheme);
  free(u->user);
  free(u->password);
  free(u->host);
  free(u->path);
  free(u->query);
  memset(u, 0, sizeof *u);
}

static int url_char_ok(unsigned char c) {
  return c > 0x20 && c != 0x7f;
}

/* Parses s (n bytes) into u (all parts malloc'd). 0, 1 (not a URL), or
 * KEEL_ENOMEM. */
static int parse_url(const char *s, size_t n, keel_config_url *u) {
  memset(u, 0, sizeof *u);
  for (size_t i = 0; i < n; i++)
    if (!url_char_ok((unsigned char)s[i])) return 1;
  size_t i = 0;
  if (i == n || !isalpha((unsigned char)s[0])) return 1;
  while (i < n && (isalnum((unsigned char)s[i]) || s[i] == '+' || s[i] == '-' || s[i] == '.'))
    i++;
  size_t scheme_n = i;
  if (n - i < 3 || memcmp(s + i, "://", 3) != 0) return 1;
  i += 3;
  size_t a = i; /* authority: [userinfo@]host[:port] */
  while (i < n && s[i] != '/' && s[i] != '?' && s[i] != '#')
    i++;
  size_t aend = i, at = SIZE_MAX;
  for (size_t k = a; k < aend; k++)
    if (s[k] == '@') at = k;
  size_t h = a, user_n = 0, pass_at = SIZE_MAX;
  if (at != SIZE_MAX) {
    const char *c = memchr(s + a, ':', at - a);
    user_n = c ? (size_t)(c - (s + a)) : at - a;
    if (c) pass_at = (size_t)(c - s) + 1;
    h = at + 1;
  }
  size_t hend, pstart = SIZE_MAX;
  if (h < aend && s[h] == '[') { /* IPv6 literal */
    const char *rb = memchr(s + h, ']', aend - h);
    if (!rb) return 1;
    for (const char *c = s + h + 1; c < rb; c++)
      if (!(isxdigit((unsigned char)*c) || *c == ':' || *c == '.')) return 1;
    if (rb == s + h + 1) return 1;
    hend = (size_t)(rb - s) + 1;
    if (hend < aend) {
      if (s[hend] != ':') return 1;
      pstart = hend + 1;
    }
  } else {
    hend = h;
    while (hend < aend && s[hend] != ':') {
      unsigned char c = (unsigned char)s[hend];
      if (!(isalnum(c) || c == '-' || c == '.' || c == '_' || c == '%')) return 1;
      hend++;
    }
    if (hend == h) return 1;
    if (hend < aend) pstart = hend + 1;
  }
  int port = 0;
  if (pstart != SIZE_MAX) {
    int64_t pv;
    if (pstart == aend || parse_i64(s + pstart, aend - pstart, &pv) != 0 || pv < 1 || pv > 65535 ||
        !isdigit((unsigned char)s[pstart]))
      return 1;
    port = (int)pv;
  }
  size_t path = aend;
  while (i < n && s[i] != '?' && s[i] != '#')
    i++;
  size_t path_end = i, q = i, q_end = i;
  if (i < n && s[i] == '?') {
    q = i + 1;
    while (i < n && s[i] != '#')
      i++;
    q_end = i;
  }
  u->raw = dup_n(s, n);
  u->scheme = dup_n(s, scheme_n);
  u->user = dup_n(s + a, at != SIZE_MAX ? user_n : 0);
  u->password = pass_at != SIZE_MAX ? dup_n(s + pass_at, at - pass_at) : dup_n("", 0);
  u->host = dup_n(s + h, hend - h);
  u->path = dup_n(s + path, path_end - path);
  u->query = dup_n(s + q, q_end - q);
  u->port = port;
  if (!u->raw || !u->scheme || !u->user || !u->password || !u->host || !u->path || !u->query) {
    url_free(u);
    return KEEL_ENOMEM;
  }
  for (char *c = u->scheme; *c; c++)
    *c = (char)tolower((unsigned char)*c);
  return 0;
}

static void list_free(keel_config_list *l) {
  for (size_t i = 0; i < l->count; i++)
    free(l->items[i]);
  free(l->items);
  l->items = NULL;
  l->count = 0;
}

/* Splits on ',' with items trimmed and empty items dropped. 0, 1 (an item
 * is not among f->values) or KEEL_ENOMEM. */
static int parse_list(const keel_config_field *f, const char *s, keel_config_list *l) {
  l->count = 0;
  l->items = NULL;
  size_t cap = 0;
  for (const char *p = s;;) {
    const char *comma = strchr(p, ',');
    size_t len = comma ? (size_t)(comma - p) : strlen(p);
    while (len && isspace((unsigned char)*p))
      p++, len--;
    while (len && isspace((unsigned char)p[len - 1]))
      len--;
    if (len) {
      if (f->values && find_value(f->values, p, len) < 0) {
        list_free(l);
        return 1;
      }
      if (l->count == cap) {
        cap = cap ? cap * 2 : 4;
        char **it = realloc(l->items, cap * sizeof *it);
        if (!it) {
          list_free(l);
          return KEEL_ENOMEM;
        }
        l->items = it;
      }
      if (!(l->items[l->count] = dup_n(p, len))) {
        list_free(l);
        return KEEL_ENOMEM;
      }
      l->count++;
    }
    if (!comma) break;
    p = comma + 1;
  }
  return 0;
}

/* ---- fields ------------------------------------------------------------- */

static void *member(void *base, const keel_config_field *f) {
  return (char *)base + f->offset;
}
static const void *cmember(const void *base, const keel_config_field *f) {
  return (const char *)base + f->offset;
}

static int has_bounds(const keel_config_field *f) {
  return f->min != 0 || f->max != 0;
}

/* The bounds reason: "must be between 1 and 65535" (or at least / at most),
 * durations in their units, string lengths in characters. */
static void bounds_reason(const keel_config_field *f, char *out, size_t len) {
  char lo[32], hi[32];
  if (f->type == KEEL_CONFIG_DURATION) {
    fmt_duration(lo, sizeof lo, f->min);
    fmt_duration(hi, sizeof hi, f->max);
  } else {
    snprintf(lo, sizeof lo, "%" PRId64, f->min);
    snprintf(hi, sizeof hi, "%" PRId64, f->max);
  }
  const char *unit = f->type == KEEL_CONFIG_STRING ? " characters long" : "";
  if (f->min == INT64_MIN)
    snprintf(out, len, "must be at most %s%s", hi, unit);
  else if (f->max == INT64_MAX)
    snprintf(out, len, "must be at least %s%s", lo, unit);
  else
    snprintf(out, len, "must be between %s and %s%s", lo, hi, unit);
}

static int in_bounds(const keel_config_field *f, int64_t v) {
  return !has_bounds(f) || (v >= f->min && v <= f->max);
}

static void zero_member(void *out, const keel_config_field *f) {
  void *m = member(out, f);
  switch (f->type) {
  case KEEL_CONFIG_STRING: *(char **)m = NULL; break;
  case KEEL_CONFIG_INT:
  case KEEL_CONFIG_DURATION: *(int64_t *)m = 0; break;
  case KEEL_CONFIG_BOOL: *(bool *)m = false; break;
  case KEEL_CONFIG_ENUM: *(int *)m = -1; break;
  case KEEL_CONFIG_URL: memset(m, 0, sizeof(keel_config_url)); break;
  case KEEL_CONFIG_LIST: memset(m, 0, sizeof(keel_config_list)); break;
  }
}

/* Parses v for field f and stores it. Appends an error line when v is
 * invalid. Returns 0 or KEEL_ENOMEM. */
static int load_value(loader *L, const keel_config_field *f, const char *v, void *out) {
  void *m = member(out, f);
  size_t n;
  const char *t = f->type == KEEL_CONFIG_STRING ? v : trim(v, &n);
  char why[160];
  switch (f->type) {
  case KEEL_CONFIG_STRING: {
    n = strlen(v);
    if (n > (size_t)INT64_MAX || !in_bounds(f, (int64_t)n)) {
      bounds_reason(f, why, sizeof why);
      err_value(L, f, v, "%s", why);
      return 0;
    }
    if (!(*(char **)m = dup_n(v, n))) return KEEL_ENOMEM;
    return 0;
  }
  case KEEL_CONFIG_INT:
  case KEEL_CONFIG_DURATION: {
    int64_t x = 0;
    int rc = f->type == KEEL_CONFIG_INT ? parse_i64(t, n, &x) : parse_duration(t, n, &x);
    if (rc == -1) {
      err_value(L, f, v, "%s",
                f->type == KEEL_CONFIG_INT ? "must be an integer"
                                           : "must be a duration such as 500ms, 30s, 5m or 1h");
    } else if (rc == -2 || !in_bounds(f, x)) {
      if (has_bounds(f))
        bounds_reason(f, why, sizeof why);
      else
        snprintf(why, sizeof why, "is too large");
      err_value(L, f, v, "%s", why);
    } else {
      *(int64_t *)m = x;
    }
    return 0;
  }
  case KEEL_CONFIG_BOOL:
    if (parse_bool(t, n, (bool *)m) != 0)
      err_value(L, f, v, "must be a boolean (true/false, 1/0, yes/no, on/off)");
    return 0;
  case KEEL_CONFIG_ENUM: {
    int i = find_value(f->values, t, n);
    if (i < 0)
      err_one_of(L, f, v, "must be one of ");
    else
      *(int *)m = i;
    return 0;
  }
  case KEEL_CONFIG_URL: {
    keel_config_url u;
    int rc = parse_url(t, n, &u);
    if (rc == KEEL_ENOMEM) return rc;
    if (rc != 0) {
      err_value(L, f, v, "must be a URL such as scheme://host[:port][/path]");
      return 0;
    }
    if (f->values && find_value(f->values, u.scheme, strlen(u.scheme)) < 0) {
      url_free(&u);
      err_one_of(L, f, v, "must be a URL with one of the schemes ");
      return 0;
    }
    *(keel_config_url *)m = u;
    return 0;
  }
  case KEEL_CONFIG_LIST: {
    keel_config_list l;
    int rc = parse_list(f, v, &l);
    if (rc == KEEL_ENOMEM) return rc;
    if (rc != 0)
      err_one_of(L, f, v, "must be a comma-separated list of ");
    else
      *(keel_config_list *)m = l;
    return 0;
  }
  }
  return 0;
}

/* A malformed table is the programmer's error, reported like the others. */
static void check_table(loader *L, const keel_config_field *table, size_t n) {
  for (size_t i = 0; i < n; i++) {
    const keel_config_field *f = &table[i];
    char name[48];
    snprintf(name, sizeof name, "table entry %zu", i);
    const char *id = f->env && *f->env ? f->env : name;
    const char *why = NULL;
    if (!f->env || !*f->env)
      why = "has no environment variable";
    else if ((unsigned)f->type > KEEL_CONFIG_LIST)
      why = "has an unknown type";
    else if (f->type == KEEL_CONFIG_ENUM && (!f->values || !f->values[0]))
      why = "is an enum without values";
    else if (has_bounds(f) && f->min > f->max)
      why = "has min greater than max";
    for (size_t j = 0; !why && j < i; j++)
      if (table[j].env && strcmp(table[j].env, f->env) == 0) why = "is declared twice";
    if (why) {
      err_begin(L, id);
      sb_printf(&L->err, "invalid table: field %s\n", why);
    }
  }
}

/* ---- public ------------------------------------------------------------- */

void keel_config_opts_init(keel_config_opts *opts) {
  memset(opts, 0, sizeof *opts);
  opts->app_env = KEEL_CONFIG_DEVELOPMENT;
}

const char *keel_config_env_name(keel_config_env env) {
  return (unsigned)env < KEEL_CONFIG_ENV_COUNT_ ? env_names[env] : NULL;
}

void keel_config_free(const keel_config_field *table, size_t n, void *cfg) {
  if (!table || !cfg) return;
  for (size_t i = 0; i < n; i++) {
    const keel_config_field *f = &table[i];
    void *m = member(cfg, f);
    switch (f->type) {
    case KEEL_CONFIG_STRING:
      free(*(char **)m);
      *(char **)m = NULL;
      break;
    case KEEL_CONFIG_URL: url_free(m); break;
    case KEEL_CONFIG_LIST: list_free(m); break;
    default: break;
    }
  }
}

static int load(const keel_config_field *table, size_t n, void *out, keel_config_opts *opts,
                loader *L) {
  if ((!table && n) || !out) {
    err_begin(L, "keel_config_load");
    sb_puts(&L->err, "invalid table: no table or no struct\n");
    return 0;
  }
  check_table(L, table, n);
  if (L->nerr) return 0;
  for (size_t i = 0; i < n; i++)
    zero_member(out, &table[i]);
  L->zeroed = 1;

  const char *path = opts ? opts->dotenv_path : NULL;
  int rc = path ? dot_read(L, path) : 0;
  if (rc) return rc;

  /* APP_ENV: environment, .env, "development". */
  const char *var = opts && opts->app_env_var ? opts->app_env_var : "APP_ENV";
  const char *ev = getenv(var);
  if (!ev) ev = dot_get(L, var);
  int app = KEEL_CONFIG_DEVELOPMENT;
  if (ev) {
    app = -1;
    for (int i = 0; i < KEEL_CONFIG_ENV_COUNT_; i++)
      if (strcmp(ev, env_names[i]) == 0) app = i;
    if (app < 0) {
      err_begin(L, var);
      sb_puts(&L->err, "must be one of development, staging, production");
      echo_value(L, NULL, ev);
      err_end(L);
    }
  }
  if (opts) opts->app_env = app < 0 ? KEEL_CONFIG_DEVELOPMENT : (keel_config_env)app;

  for (size_t i = 0; i < n; i++) {
    const keel_config_field *f = &table[i];
    const char *v = getenv(f->env);
    if (!v) v = dot_get(L, f->env);
    if (!v && app >= 0) v = f->by_env[app];
    if (!v) v = f->def;
    if (!v || (!*v && (f->flags & KEEL_CONFIG_REQUIRED))) {
      if (f->flags & KEEL_CONFIG_REQUIRED) {
        err_begin(L, f->env);
        sb_puts(&L->err, v ? "is required but empty" : "is required but not set");
        err_end(L);
      }
      continue;
    }
    int before = L->nerr;
    if ((rc = load_value(L, f, v, out))) return rc;
    const char *dev =
        f->by_env[KEEL_CONFIG_DEVELOPMENT] ? f->by_env[KEEL_CONFIG_DEVELOPMENT] : f->def;
    if (L->nerr == before && app == KEEL_CONFIG_PRODUCTION && (f->flags & KEEL_CONFIG_SECRET) &&
        dev && strcmp(v, dev) == 0)
      err_value(L, f, v, "must not keep its development default in production");
  }

  if (L->nerr == 0 && opts) {
    for (size_t i = 0; i < opts->nrules; i++) {
      const keel_config_rule *r = &opts->rules[i];
      char why[512] = "";
      if (r->check && r->check(out, r->arg, why, sizeof why) != 0) {
        err_begin(L, r->env ? r->env : "rule");
        sb_puts(&L->err, why[0] ? why : "is invalid");
        err_end(L);
      }
    }
  }
  return 0;
}

int keel_config_load(const keel_config_field *table, size_t n, void *out, keel_config_opts *opts,
                     char **errors) {
  if (errors) *errors = NULL;
  loader L = {0};
  int rc = load(table, n, out, opts, &L);
  for (size_t i = 0; i < L.ndot; i++) {
    free(L.dot[i].key);
    free(L.dot[i].val);
  }
  free(L.dot);
  if (rc == 0 && L.err.oom) rc = KEEL_ENOMEM;
  if (rc == 0 && L.nerr) rc = KEEL_EINVAL;
  if (rc != 0 && L.zeroed) keel_config_free(table, n, out);
  if (rc == KEEL_EINVAL && errors) {
    *errors = L.err.p;
    L.err.p = NULL;
  }
  free(L.err.p);
  return rc;
}

void keel_config_load_or_exit(const keel_config_field *table, size_t n, void *out,
                              keel_config_opts *opts) {
  char *errors = NULL;
  int rc = keel_config_load(table, n, out, opts, &errors);
  if (rc == 0) return;
  if (rc == KEEL_EINVAL) {
    fputs(errors ? errors : "Invalid configuration\n", stderr);
    free(errors);
    fflush(stderr);
    exit(KEEL_CONFIG_EXIT);
  }
  fprintf(stderr, "keel: loading the configuration failed: %s\n", keel_strerror(rc));
  fflush(stderr);
  exit(71);
}

/* Renders one field's value into b (see keel_config_visit_fn). */
static void render(const keel_config_field *f, const void *cfg, sbuf *b) {
  const void *m = cmember(cfg, f);
  char tmp[48];
  int set = 1;
  switch (f->type) {
  case KEEL_CONFIG_STRING: set = *(char *const *)m != NULL; break;
  case KEEL_CONFIG_URL: set = ((const keel_config_url *)m)->raw != NULL; break;
  case KEEL_CONFIG_ENUM: set = *(const int *)m >= 0; break;
  default: break;
  }
  if (!set) return;
  if (f->flags & KEEL_CONFIG_SECRET) {
    sb_puts(b, "****");
    return;
  }
  switch (f->type) {
  case KEEL_CONFIG_STRING: sb_puts(b, *(char *const *)m); break;
  case KEEL_CONFIG_INT: sb_printf(b, "%" PRId64, *(const int64_t *)m); break;
  case KEEL_CONFIG_DURATION:
    fmt_duration(tmp, sizeof tmp, *(const int64_t *)m);
    sb_puts(b, tmp);
    break;
  case KEEL_CONFIG_BOOL: sb_puts(b, *(const bool *)m ? "true" : "false"); break;
  case KEEL_CONFIG_ENUM: {
    int i = *(const int *)m, k = 0;
    while (f->values && f->values[k] && k < i)
      k++;
    sb_puts(b, f->values && f->values[k] ? f->values[k] : "?");
    break;
  }
  case KEEL_CONFIG_URL: {
    const char *raw = ((const keel_config_url *)m)->raw;
    int had = 0;
    char *masked = url_mask(raw, &had);
    if (had && !masked)
      b->oom = 1;
    else
      sb_puts(b, masked ? masked : raw);
    free(masked);
    break;
  }
  case KEEL_CONFIG_LIST: {
    const keel_config_list *l = m;
    for (size_t i = 0; i < l->count; i++) {
      if (i) sb_puts(b, ",");
      sb_puts(b, l->items[i]);
    }
    break;
  }
  }
}

int keel_config_each(const keel_config_field *table, size_t n, const void *cfg,
                     keel_config_visit_fn visit, void *arg) {
  if ((!table && n) || !cfg || !visit) return KEEL_EINVAL;
  sbuf b = {0};
  int rc = 0;
  for (size_t i = 0; i < n && rc == 0; i++) {
    b.len = 0;
    sb_puts(&b, "");
    render(&table[i], cfg, &b);
    if (b.oom)
      rc = KEEL_ENOMEM;
    else
      rc = visit(&table[i], b.p, arg);
  }
  free(b.p);
  return rc;
}

static int needs_quotes(const char *s) {
  if (!*s) return 1;
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c <= 0x20 || c == 0x7f || c == '#' || c == '"' || c == '\'' || c == '\\') return 1;
  }
  return 0;
}

int keel_config_describe(const keel_config_field *table, size_t n, const void *cfg, char *buf,
                         size_t len, size_t *needed) {
  if ((!table && n) || !cfg || (!buf && len)) return KEEL_EINVAL;
  sbuf out = {0}, v = {0};
  sb_puts(&out, "");
  for (size_t i = 0; i < n; i++) {
    v.len = 0;
    sb_puts(&v, "");
    render(&table[i], cfg, &v);
    sb_puts(&out, table[i].env);
    sb_puts(&out, "=");
    if (v.oom || !needs_quotes(v.p)) {
      sb_puts(&out, v.oom ? "" : v.p);
    } else {
      sb_puts(&out, "\"");
      for (const char *c = v.p; *c; c++) {
        switch (*c) {
        case '"': sb_puts(&out, "\\\""); break;
        case '\\': sb_puts(&out, "\\\\"); break;
        case '\n': sb_puts(&out, "\\n"); break;
        case '\r': sb_puts(&out, "\\r"); break;
        case '\t': sb_puts(&out, "\\t"); break;
        default: sb_putn(&out, c, 1);
        }
      }
      sb_puts(&out, "\"");
    }
    sb_puts(&out, "\n");
  }
  int rc = out.oom || v.oom ? KEEL_ENOMEM : 0;
  free(v.p);
  if (rc) {
    free(out.p);
    if (len) buf[0] = '\0';
    return rc;
  }
  if (needed) *needed = out.len;
  if (len) {
    size_t k = out.len < len ? out.len : len - 1;
    memcpy(buf, out.p, k);
    buf[k] = '\0';
  }
  if (out.len >= len) rc = KEEL_ERANGE;
  free(out.p);
  return rc;
}
