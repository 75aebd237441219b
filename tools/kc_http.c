/* kc_http.c - keelctl's requests to the admin port (libcurl's easy
 * interface): plain requests, the error messages an operator reads, and the
 * Server-Sent Events stream of `logs -f`. */
#define _POSIX_C_SOURCE 200809L
#include "keelctl.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <curl/curl.h>

/* Connecting is quick or it does not happen: an operator waits 5 s at most. */
#define CONNECT_TIMEOUT_MS 5000L

static int buf_add(kc_buf *b, const char *p, size_t n) {
  if (b->n + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->n + n + 1)
      cap *= 2;
    char *q = realloc(b->p, cap);
    if (!q) return -1;
    b->p = q;
    b->cap = cap;
  }
  memcpy(b->p + b->n, p, n);
  b->n += n;
  b->p[b->n] = '\0';
  return 0;
}

static size_t on_body(char *p, size_t size, size_t n, void *ud) {
  return buf_add(ud, p, size * n) == 0 ? size * n : 0;
}

int kc_http_init(kc *c) {
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return -1;
  c->curl = curl_easy_init();
  return c->curl ? 0 : -1;
}

void kc_http_cleanup(kc *c) {
  if (c->curl) curl_easy_cleanup(c->curl);
  c->curl = NULL;
  curl_global_cleanup();
}

void kc_reply_free(kc_reply *r) {
  free(r->body.p);
  memset(r, 0, sizeof *r);
}

char *kc_escape(kc *c, const char *s) {
  char *e = curl_easy_escape(c->curl, s, 0);
  char *out = e ? strdup(e) : NULL;
  curl_free(e);
  return out;
}

/* Why a transfer failed, in the words of the system where they are better
 * than curl's ("connection refused", not "Couldn't connect to server"). */
static void transport_error(CURL *h, CURLcode rc, const char *errbuf, long timeout_ms, char *out,
                            size_t size) {
  long os = 0;
  curl_easy_getinfo(h, CURLINFO_OS_ERRNO, &os);
  if (rc == CURLE_COULDNT_CONNECT && os != 0) {
    snprintf(out, size, "%s", strerror((int)os));
  } else if (rc == CURLE_COULDNT_RESOLVE_HOST) {
    snprintf(out, size, "cannot resolve the host name");
  } else if (rc == CURLE_OPERATION_TIMEDOUT) {
    snprintf(out, size, "no answer within %ld ms", timeout_ms ? timeout_ms : CONNECT_TIMEOUT_MS);
  } else {
    snprintf(out, size, "%s", errbuf[0] ? errbuf : curl_easy_strerror(rc));
  }
  out[0] = (char)tolower((unsigned char)out[0]);
}

/* Sets up H for one request; HDRS is the caller's to free. */
static struct curl_slist *prepare(kc *c, const char *method, const char *url, const char *body,
                                  long timeout_ms, char *errbuf) {
  CURL *h = c->curl;
  curl_easy_reset(h);
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, CONNECT_TIMEOUT_MS);
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_USERAGENT, "keelctl");
  struct curl_slist *hdrs = curl_slist_append(NULL, "Accept: application/json");
  if (c->token && c->token[0]) {
    /* the token travels only in this header (never the URL); the header
     * buffer is freed right after the request */
    size_t n = strlen(c->token) + 32;
    char *auth = malloc(n);
    if (auth) {
      snprintf(auth, n, "Authorization: Bearer %s", c->token);
      hdrs = curl_slist_append(hdrs, auth);
      memset(auth, 0, n);
      free(auth);
    }
  }
  if (body) {
    hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
  }
  if (strcmp(method, "POST") == 0) {
    curl_easy_setopt(h, CURLOPT_POST, 1L);
    if (!body) curl_easy_setopt(h, CURLOPT_POSTFIELDS, "");
  }
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
  return hdrs;
}

int kc_request(kc *c, const char *method, const char *path, const char *body, long timeout_ms,
               kc_reply *r) {
  memset(r, 0, sizeof *r);
  char url[2048], errbuf[CURL_ERROR_SIZE] = "";
  snprintf(url, sizeof url, "%s%s", c->url, path);
  struct curl_slist *hdrs = prepare(c, method, url, body, timeout_ms, errbuf);
  curl_easy_setopt(c->curl, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(c->curl, CURLOPT_WRITEDATA, &r->body);
  CURLcode rc = curl_easy_perform(c->curl);
  curl_slist_free_all(hdrs);
  if (rc != CURLE_OK) {
    transport_error(c->curl, rc, errbuf, timeout_ms, r->err, sizeof r->err);
    return -1;
  }
  curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &r->status);
  if (!r->body.p) buf_add(&r->body, "", 0);
  return 0;
}

/* The status's reason in the envelope's words when the body has none. */
static const char *status_code(long status) {
  switch (status) {
  case 400: return "BAD_REQUEST";
  case 401: return "UNAUTHORIZED";
  case 403: return "FORBIDDEN";
  case 404: return "NOT_FOUND";
  case 409: return "CONFLICT";
  case 429: return "RATE_LIMITED";
  case 503: return "SERVICE_UNAVAILABLE";
  default: return status >= 500 ? "SERVER_ERROR" : "ERROR";
  }
}

int kc_describe(const kc *c, const char *path, const kc_reply *r, char *msg, size_t size) {
  msg[0] = '\0';
  if (r->status == 0) {
    snprintf(msg, size, "cannot reach %.900s: %.200s", c->url, r->err);
    return KC_UNREACHABLE;
  }
  if (r->status < 400) return KC_OK;
  /* the envelope: {"success":false,"error":{"code","message",...}} */
  json_t *root = json_loads(r->body.p ? r->body.p : "", 0, NULL);
  json_t *err = json_object_get(root, "error");
  const char *code = kc_jstr(err, "code");
  const char *text = kc_jstr(err, "message");
  if (!code[0]) code = status_code(r->status);
  char why[512];
  if (r->status == 401)
    snprintf(why, sizeof why, "a valid ADMIN_TOKEN is required (--token or ADMIN_TOKEN)%s",
             c->token && c->token[0] ? ": the one given was refused" : "");
  else
    snprintf(why, sizeof why, "%s", text[0] ? text : "refused");
  snprintf(msg, size, "%ld %.40s from %.900s%.400s: %.500s", r->status, code, c->url, path, why);
  json_decref(root);
  return KC_REFUSED;
}

int kc_get_json(kc *c, const char *method, const char *path, const char *body, json_t **out) {
  kc_reply r;
  char msg[2048];
  *out = NULL;
  kc_request(c, method, path, body, 15000, &r);
  int rc = kc_describe(c, path, &r, msg, sizeof msg);
  if (rc != KC_OK) {
    /* scripts get the envelope on stdout as well, the message stays on stderr */
    if (c->json && r.status >= 400 && r.body.n) printf("%s\n", r.body.p);
    fprintf(stderr, "keelctl: %s\n", msg);
    kc_reply_free(&r);
    return rc;
  }
  json_error_t jerr;
  *out = json_loads(r.body.p, 0, &jerr);
  if (!*out) {
    fprintf(stderr, "keelctl: %s%s answered what is not JSON: %s\n", c->url, path, jerr.text);
    kc_reply_free(&r);
    return KC_REFUSED;
  }
  if (c->json) printf("%s\n", r.body.p);
  kc_reply_free(&r);
  return KC_OK;
}

/* ---- Server-Sent Events ---- */

typedef struct sse {
  kc_buf line; /* the line being read */
  kc_buf data; /* the event's data lines */
  char event[64];
  kc_event_fn fn;
  void *ud;
  int stopped;
  long status;
  kc_buf errbody; /* a refused stream's envelope */
  CURL *h;
} sse;

static void sse_line(sse *s, char *line) {
  if (line[0] == '\0') { /* a blank line ends the event */
    if (s->data.n && !s->stopped)
      s->stopped = s->fn(s->event[0] ? s->event : "message", s->data.p, s->ud);
    s->data.n = 0;
    if (s->data.p) s->data.p[0] = '\0';
    s->event[0] = '\0';
    return;
  }
  char *colon = strchr(line, ':');
  if (colon == line) return; /* a comment (keep-alive) */
  const char *value = "";
  if (colon) {
    *colon = '\0';
    value = colon[1] == ' ' ? colon + 2 : colon + 1;
  }
  if (strcmp(line, "event") == 0) {
    snprintf(s->event, sizeof s->event, "%s", value);
  } else if (strcmp(line, "data") == 0) {
    if (s->data.n) buf_add(&s->data, "\n", 1);
    buf_add(&s->data, value, strlen(value));
  }
}

static size_t on_stream(char *p, size_t size, size_t n, void *ud) {
  sse *s = ud;
  size_t len = size * n;
  if (s->status == 0) curl_easy_getinfo(s->h, CURLINFO_RESPONSE_CODE, &s->status);
  if (s->status >= 400) return buf_add(&s->errbody, p, len) == 0 ? len : 0;
  for (size_t i = 0; i < len; i++) {
    if (p[i] == '\n') {
      if (s->line.n && s->line.p[s->line.n - 1] == '\r') s->line.p[--s->line.n] = '\0';
      sse_line(s, s->line.p ? s->line.p : (char[]){""});
      s->line.n = 0;
      if (s->line.p) s->line.p[0] = '\0';
    } else if (buf_add(&s->line, p + i, 1) != 0) {
      return 0;
    }
  }
  return s->stopped ? 0 : len; /* 0 ends the transfer */
}

int kc_stream(kc *c, const char *path, kc_event_fn on_event, void *ud, char *msg, size_t size) {
  char url[2048], errbuf[CURL_ERROR_SIZE] = "";
  snprintf(url, sizeof url, "%s%s", c->url, path);
  sse s = {.fn = on_event, .ud = ud, .h = c->curl};
  struct curl_slist *hdrs = prepare(c, "GET", url, NULL, 0, errbuf);
  curl_easy_setopt(c->curl, CURLOPT_WRITEFUNCTION, on_stream);
  curl_easy_setopt(c->curl, CURLOPT_WRITEDATA, &s);
  CURLcode rc = curl_easy_perform(c->curl);
  curl_slist_free_all(hdrs);
  int out;
  if (s.status >= 400) {
    kc_reply r = {.status = s.status, .body = s.errbody};
    out = kc_describe(c, path, &r, msg, size);
  } else if (s.stopped) {
    msg[0] = '\0';
    out = KC_OK;
  } else if (rc != CURLE_OK && s.status == 0) {
    kc_reply r = {0};
    transport_error(c->curl, rc, errbuf, 0, r.err, sizeof r.err);
    out = kc_describe(c, path, &r, msg, size);
  } else {
    snprintf(msg, size, "the event stream from %.900s%.100s ended (the node stopped?)", c->url,
             path);
    out = KC_UNREACHABLE;
  }
  free(s.line.p);
  free(s.data.p);
  free(s.errbody.p);
  return out;
}
