/* keelctl.h - what keelctl's files share: the client state, the admin port
 * requests (kc_http.c), the output helpers (kc_out.c) and `top` (kc_top.c).
 *
 * keelctl is built on the admin port only (docs/dashboard.md): libcurl's easy
 * interface for HTTP and jansson for JSON, no keel runtime. A CLI that asks
 * one question and exits needs no scheduler, and a node of any keel version
 * can be asked from any machine. */
#ifndef KEELCTL_H
#define KEELCTL_H

#include <stdbool.h>
#include <stddef.h>
#include <jansson.h>

/* Exit codes (docs/keelctl.md). */
enum { KC_OK = 0, KC_REFUSED = 1, KC_USAGE = 2, KC_UNREACHABLE = 3 };

typedef struct kc_buf {
  char *p; /* NUL-terminated */
  size_t n, cap;
} kc_buf;

typedef struct kc {
  char url[1024];    /* the admin port's base URL, no trailing slash */
  const char *token; /* sent as a bearer header only; never printed */
  bool json;         /* print the API's JSON */
  bool color;        /* ANSI colour on stdout */
  void *curl;        /* one easy handle, reused (keep-alive) */
} kc;

/* One answer: the HTTP status (0 when the node was not reached), the body,
 * and on a transport failure why. */
typedef struct kc_reply {
  long status;
  kc_buf body;
  char err[256];
} kc_reply;

/* ---- kc_http.c ---- */
int kc_http_init(kc *c);
void kc_http_cleanup(kc *c);
/* Sends METHOD URL+PATH (BODY: JSON text or NULL) within TIMEOUT_MS (0: no
 * limit after connecting). Returns 0 when an answer came (any status), -1
 * when the node was not reached (r->err says why). r->body is the caller's
 * to free (kc_reply_free). */
int kc_request(kc *c, const char *method, const char *path, const char *body, long timeout_ms,
               kc_reply *r);
void kc_reply_free(kc_reply *r);
/* What went wrong with R (asked at PATH) in one line into MSG, and the exit
 * code: KC_UNREACHABLE for a transport failure, KC_REFUSED for 4xx/5xx, KC_OK
 * for a 2xx/3xx (MSG then empty). */
int kc_describe(const kc *c, const char *path, const kc_reply *r, char *msg, size_t size);
/* kc_request + kc_describe + JSON parse; prints the error to stderr. On
 * KC_OK *out is the parsed body (the caller's), and with --json the raw body
 * has been printed. */
int kc_get_json(kc *c, const char *method, const char *path, const char *body, json_t **out);
/* URL-escapes S into a malloc'd string (a pid "<0.4.1>", a name). */
char *kc_escape(kc *c, const char *s);
/* Reads Server-Sent Events from PATH until the stream ends; calls ON_EVENT
 * with each event's name and data. ON_EVENT returning non-zero stops. Returns
 * as kc_describe (the stream ending is KC_UNREACHABLE, with MSG saying so). */
typedef int (*kc_event_fn)(const char *event, const char *data, void *ud);
int kc_stream(kc *c, const char *path, kc_event_fn on_event, void *ud, char *msg, size_t size);

/* ---- kc_out.c ---- */
/* Colour codes, empty when colour is off. */
const char *kc_c(const kc *c, const char *code);
#define KC_BOLD   "\033[1m"
#define KC_DIM    "\033[2m"
#define KC_RED    "\033[31m"
#define KC_GREEN  "\033[32m"
#define KC_YELLOW "\033[33m"
#define KC_CYAN   "\033[36m"
#define KC_RESET  "\033[0m"
/* The colour of a status word: pass/ok/healthy green, warn yellow, fail red. */
const char *kc_status_color(const kc *c, const char *status);
const char *kc_level_color(const kc *c, const char *level);

/* Human units into BUF: 1.5 MiB; 3m12s. */
const char *kc_bytes(double bytes, char *buf, size_t size);
const char *kc_duration(double ms, char *buf, size_t size);

/* An aligned table: cells are copied; a column may be right-aligned
 * (numbers) and a cell may carry a colour. */
#define KC_MAXCOL 10
typedef struct kc_table kc_table;
kc_table *kc_table_new(int ncol, const char *const *head, const bool *right);
void kc_table_add(kc_table *t, const char *const *cells, const char *const *colors);
void kc_table_print(const kc *c, kc_table *t);
void kc_table_free(kc_table *t);

/* JSON accessors that tolerate absent members: "" and 0. */
const char *kc_jstr(const json_t *o, const char *key);
double kc_jnum(const json_t *o, const char *key);

/* ---- kc_top.c ---- */
int kc_top(kc *c, int argc, char **argv);

#endif
