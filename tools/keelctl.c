/* keelctl - a keel node's operator from the command line, over its admin
 * port (docs/keelctl.md, the API in docs/dashboard.md).
 *
 *   keelctl [--url http://HOST:9090] [--token T] [--json] COMMAND [ARGS]
 *
 * Exit codes: 0 ok, 1 unhealthy or refused (4xx/5xx, health not passing),
 * 2 usage, 3 node unreachable. */
#define _POSIX_C_SOURCE 200809L
#include "keelctl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEFAULT_URL "http://127.0.0.1:9090"

typedef struct command {
  const char *name;
  int (*run)(kc *c, int argc, char **argv);
  const char *usage; /* the arguments after the name */
  const char *help;
  const char *summary; /* for --help's list */
} command;

static const command *find_command(const char *name);

static int usage_error(const char *cmd, const char *fmt, const char *arg) {
  fprintf(stderr, "keelctl: ");
  fprintf(stderr, fmt, arg);
  const command *k = cmd ? find_command(cmd) : NULL;
  if (k)
    fprintf(stderr, "\nusage: keelctl %s %s\n", k->name, k->usage);
  else
    fprintf(stderr, "\nsee keelctl --help\n");
  return KC_USAGE;
}

/* `keelctl CMD --help`: the command's usage on stdout. */
static bool wants_help(int argc, char **argv) {
  for (int i = 1; i < argc; i++)
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) return true;
  return false;
}

static int command_help(const char *name) {
  const command *k = find_command(name);
  printf("usage: keelctl %s %s\n\n%s\n", k->name, k->usage, k->help);
  return KC_OK;
}

static bool parse_limit(const char *s, long *out) {
  char *end;
  long v = strtol(s, &end, 10);
  if (*s == '\0' || *end != '\0' || v < 1 || v > 10000) return false;
  *out = v;
  return true;
}

/* ---- status ---- */

/* The overview's health word: the detailed probe's "healthy", "degraded"
 * (a check warns: still passing) or "unhealthy" ("fail" in older notes). */
static bool health_fails(const char *word) {
  return !strcmp(word, "unhealthy") || !strcmp(word, "fail");
}

static int cmd_status(kc *c, int argc, char **argv) {
  if (argc > 1) return usage_error("status", "unexpected argument '%s'", argv[1]);
  json_t *o;
  int rc = kc_get_json(c, "GET", "/admin/overview", NULL, &o);
  if (rc != KC_OK || c->json) {
    int fail = o && health_fails(kc_jstr(o, "health"));
    json_decref(o);
    return rc != KC_OK ? rc : fail ? KC_REFUSED : KC_OK;
  }
  char b1[32], b2[32], d[32];
  const char *health = kc_jstr(o, "health");
  const char *B = kc_c(c, KC_BOLD), *R = kc_c(c, KC_RESET);
  printf("%sservice%s     %s %s\n", B, R, kc_jstr(o, "service"), kc_jstr(o, "version"));
  printf("%suptime%s      %s\n", B, R, kc_duration(kc_jnum(o, "uptime_ms"), d, sizeof d));
  printf("%shealth%s      %s%s%s\n", B, R, kc_status_color(c, health), health,
         kc_status_color(c, health)[0] ? R : "");
  printf("%sprocesses%s   %.0f (%.0f spawned, %.0f exited)\n", B, R, kc_jnum(o, "processes"),
         kc_jnum(o, "spawned"), kc_jnum(o, "exited"));
  printf("%smessages%s    %.1f/s (%.0f sent)\n", B, R, kc_jnum(o, "messages_per_sec"),
         kc_jnum(o, "messages_sent"));
  printf("%srestarts%s    %.0f (%.0f in the last minute)\n", B, R, kc_jnum(o, "restarts"),
         kc_jnum(o, "restarts_last_min"));
  json_t *mem = json_object_get(o, "memory");
  printf("%smemory%s      %s resident of %s (%.1f%%)\n", B, R,
         kc_bytes(kc_jnum(mem, "rss_bytes"), b1, sizeof b1),
         kc_bytes(kc_jnum(mem, "effective_limit_bytes"), b2, sizeof b2),
         100 * kc_jnum(mem, "used_fraction"));
  json_t *scheds = json_object_get(o, "schedulers"), *s;
  size_t i;
  printf("%sschedulers%s  %zu, %.0f%% busy:", B, R, json_array_size(scheds),
         100 * kc_jnum(o, "utilisation"));
  json_array_foreach(scheds, i, s) {
    bool stuck = json_is_true(json_object_get(s, "stuck"));
    printf(" [%.0f] %.0f%% q%.0f%s%s%s", kc_jnum(s, "id"), 100 * kc_jnum(s, "utilisation"),
           kc_jnum(s, "run_queue"), stuck ? kc_c(c, KC_RED) : "", stuck ? " STUCK" : "",
           stuck ? R : "");
  }
  printf("\n%ssupervisors%s %.0f\n", B, R, kc_jnum(o, "supervisors"));
  printf("%slog level%s   %s\n", B, R, kc_jstr(o, "log_level"));
  printf("%sactions%s     %s\n", B, R,
         json_is_true(json_object_get(o, "actions")) ? "on"
                                                     : "off (ADMIN_TOKEN not set on the node)");
  printf("%sstreams%s     %.0f of %.0f\n", B, R, kc_jnum(o, "streams"), kc_jnum(o, "max_streams"));
  int fail = health_fails(health);
  json_decref(o);
  return fail ? KC_REFUSED : KC_OK;
}

/* ---- health ---- */

static int cmd_health(kc *c, int argc, char **argv) {
  if (argc > 1) return usage_error("health", "unexpected argument '%s'", argv[1]);
  kc_reply r;
  char msg[2048];
  kc_request(c, "GET", "/health", NULL, 15000, &r);
  int rc = kc_describe(c, "/health", &r, msg, sizeof msg);
  /* 503 is the probe's answer "not passing", with its body, not a refusal */
  json_t *o = r.status == 200 || r.status == 503 ? json_loads(r.body.p, 0, NULL) : NULL;
  if (!o) {
    if (rc == KC_OK) snprintf(msg, sizeof msg, "%.900s/health answered what is not JSON", c->url);
    fprintf(stderr, "keelctl: %s\n", msg);
    kc_reply_free(&r);
    return rc == KC_OK ? KC_REFUSED : rc;
  }
  rc = r.status == 200 ? KC_OK : KC_REFUSED;
  if (c->json) {
    printf("%s\n", r.body.p);
  } else {
    const char *st = kc_jstr(o, "status");
    printf("%s%s%s (%ld)\n", kc_status_color(c, st), st, kc_c(c, KC_RESET), r.status);
    static const char *head[] = {"CHECK", "STATUS", "REQUIRED", "DURATION", "MESSAGE"};
    static const bool right[] = {false, false, false, true, false};
    kc_table *t = kc_table_new(5, head, right);
    const char *name;
    json_t *ck;
    json_object_foreach(json_object_get(o, "checks"), name, ck) {
      char dur[32];
      snprintf(dur, sizeof dur, "%.2fms", kc_jnum(ck, "duration_ms"));
      const char *cst = kc_jstr(ck, "status");
      const char *cells[] = {name, cst,
                             json_is_true(json_object_get(ck, "required")) ? "yes" : "no", dur,
                             kc_jstr(ck, "message")};
      const char *colors[] = {NULL, kc_status_color(c, cst), NULL, NULL, NULL};
      kc_table_add(t, cells, colors);
    }
    kc_table_print(c, t);
    kc_table_free(t);
  }
  json_decref(o);
  kc_reply_free(&r);
  return rc;
}

/* ---- tree ---- */

static void print_sup(kc *c, json_t *sup, const char *prefix);

static void print_child(kc *c, json_t *ch, const char *prefix, bool last) {
  const char *pid = kc_jstr(ch, "pid");
  printf("%s%s %s%s%s %s%s%s %s", prefix, last ? "└─" : "├─", kc_c(c, KC_BOLD), kc_jstr(ch, "id"),
         kc_c(c, KC_RESET), kc_c(c, KC_DIM), pid[0] ? pid : "(not running)", kc_c(c, KC_RESET),
         kc_jstr(ch, "type"));
  double restarts = kc_jnum(ch, "restarts");
  if (restarts > 0) printf("  %srestarts %.0f%s", kc_c(c, KC_YELLOW), restarts, kc_c(c, KC_RESET));
  printf("\n");
  json_t *sub = json_object_get(ch, "supervisor");
  if (json_is_object(sub)) {
    char next[256];
    snprintf(next, sizeof next, "%s%s", prefix, last ? "   " : "│  ");
    print_sup(c, sub, next);
  }
}

/* A supervisor's line then its children, indented under PREFIX. */
static void print_sup(kc *c, json_t *sup, const char *prefix) {
  const char *status = kc_jstr(sup, "status");
  printf("%s%s%s (%s", prefix, kc_c(c, KC_CYAN),
         kc_jstr(sup, "strategy")[0] ? kc_jstr(sup, "strategy") : "?", kc_jstr(sup, "pid"));
  printf(")%s  intensity %.0f/%.0fms  restarts %.0f", kc_c(c, KC_RESET), kc_jnum(sup, "intensity"),
         kc_jnum(sup, "period_ms"), kc_jnum(sup, "restarts"));
  if (strcmp(status, "ok"))
    printf("  %s%s%s", kc_status_color(c, status), status, kc_c(c, KC_RESET));
  printf("\n");
  json_t *children = json_object_get(sup, "children"), *ch;
  size_t i, n = json_array_size(children);
  json_array_foreach(children, i, ch) print_child(c, ch, prefix, i + 1 == n);
}

/* A restart's reason: the exit's text when it has one, else its kind
 * ("killed"), else the event's kind. */
static const char *restart_reason(json_t *ev) {
  const char *s = kc_jstr(ev, "reason_text");
  if (!s[0]) s = kc_jstr(ev, "reason");
  if (!s[0]) s = kc_jstr(ev, "kind");
  return s;
}

static int cmd_tree(kc *c, int argc, char **argv) {
  if (argc > 1) return usage_error("tree", "unexpected argument '%s'", argv[1]);
  json_t *o;
  int rc = kc_get_json(c, "GET", "/admin/tree", NULL, &o);
  if (rc != KC_OK || c->json) {
    json_decref(o);
    return rc;
  }
  json_t *root;
  size_t i;
  json_array_foreach(json_object_get(o, "tree"), i, root) {
    const char *name = kc_jstr(root, "name");
    printf("%s%s%s ", kc_c(c, KC_BOLD), name[0] ? name : kc_jstr(root, "pid"), kc_c(c, KC_RESET));
    print_sup(c, root, "");
  }
  json_t *recent = json_object_get(o, "recent_restarts"), *ev;
  if (json_array_size(recent))
    printf("\n%srecent restarts%s (newest first)\n", kc_c(c, KC_BOLD), kc_c(c, KC_RESET));
  double now = kc_jnum(o, "time_ms");
  json_array_foreach(recent, i, ev) {
    if (i == 10) break;
    char ago[32];
    const char *sup = kc_jstr(ev, "sup_name");
    printf("  %s ago  %s under %s -> %s  %s%s%s\n",
           kc_duration(now - kc_jnum(ev, "time_ms"), ago, sizeof ago), kc_jstr(ev, "child_id"),
           sup[0] ? sup : kc_jstr(ev, "supervisor"),
           kc_jstr(ev, "pid")[0] ? kc_jstr(ev, "pid") : "-", kc_c(c, KC_YELLOW), restart_reason(ev),
           kc_c(c, KC_RESET));
  }
  json_decref(o);
  return KC_OK;
}

/* ---- ps, proc ---- */

static const char *proc_name(json_t *p) {
  const char *s = kc_jstr(p, "registered");
  if (!s[0]) s = kc_jstr(p, "name");
  if (!s[0]) s = kc_jstr(p, "child_id");
  return s;
}

static bool valid_sort(const char *s) {
  return !strcmp(s, "mailbox") || !strcmp(s, "memory") || !strcmp(s, "messages") ||
         !strcmp(s, "age");
}

static int cmd_ps(kc *c, int argc, char **argv) {
  const char *sort = "mailbox", *name = NULL;
  long limit = 100;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--sort") && i + 1 < argc) {
      sort = argv[++i];
      if (!valid_sort(sort))
        return usage_error("ps", "unknown sort '%s' (mailbox, memory, messages, age)", sort);
    } else if (!strcmp(argv[i], "--limit") && i + 1 < argc) {
      if (!parse_limit(argv[++i], &limit))
        return usage_error("ps", "bad limit '%s' (1-10000)", argv[i]);
    } else if (!strcmp(argv[i], "--name") && i + 1 < argc) {
      name = argv[++i];
    } else {
      return usage_error("ps", "unexpected argument '%s'", argv[i]);
    }
  }
  char path[1024];
  char *ename = name ? kc_escape(c, name) : NULL;
  snprintf(path, sizeof path, "/admin/processes?sort=%s&limit=%ld%s%s", sort, limit,
           ename ? "&name=" : "", ename ? ename : "");
  free(ename);
  json_t *o;
  int rc = kc_get_json(c, "GET", path, NULL, &o);
  if (rc != KC_OK || c->json) {
    json_decref(o);
    return rc;
  }
  static const char *head[] = {"PID",      "NAME",   "STATUS", "MAILBOX",
                               "MESSAGES", "MEMORY", "AGE",    "SUPERVISOR"};
  static const bool right[] = {false, false, false, true, true, true, true, false};
  kc_table *t = kc_table_new(8, head, right);
  json_t *p;
  size_t i;
  json_array_foreach(json_object_get(o, "processes"), i, p) {
    char mbox[32], msgs[32], mem[32], age[32], sup[96];
    double mb = kc_jnum(p, "mailbox_len");
    snprintf(mbox, sizeof mbox, "%.0f", mb);
    snprintf(msgs, sizeof msgs, "%.0f", kc_jnum(p, "messages_handled"));
    kc_bytes(kc_jnum(p, "memory"), mem, sizeof mem);
    kc_duration(kc_jnum(p, "age_ms"), age, sizeof age);
    snprintf(sup, sizeof sup, "%s%s%s", kc_jstr(p, "supervisor"),
             kc_jstr(p, "child_id")[0] ? " " : "", kc_jstr(p, "child_id"));
    const char *status = kc_jstr(p, "status");
    const char *cells[] = {kc_jstr(p, "pid"), proc_name(p), status, mbox, msgs, mem, age, sup};
    const char *colors[] = {NULL,
                            json_is_true(json_object_get(p, "is_supervisor")) ? kc_c(c, KC_CYAN)
                                                                              : NULL,
                            !strcmp(status, "running") ? kc_c(c, KC_GREEN) : NULL,
                            mb >= 100 ? kc_c(c, KC_RED)
                            : mb > 0  ? kc_c(c, KC_YELLOW)
                                      : NULL,
                            NULL,
                            NULL,
                            NULL,
                            kc_c(c, KC_DIM)};
    kc_table_add(t, cells, colors);
  }
  kc_table_print(c, t);
  kc_table_free(t);
  printf("%s%.0f of %.0f processes matched, sorted by %s%s\n", kc_c(c, KC_DIM),
         kc_jnum(o, "matched"), kc_jnum(o, "total"), kc_jstr(o, "sort"), kc_c(c, KC_RESET));
  json_decref(o);
  return KC_OK;
}

static void kv_line(kc *c, const char *key, const char *value) {
  printf("%s%-13s%s %s\n", kc_c(c, KC_BOLD), key, kc_c(c, KC_RESET), value[0] ? value : "-");
}

/* One of a process's sets (links, monitors, monitored_by): one pid a line,
 * with its registered name or label; "unknown" when the node could not read
 * it (the process ended meanwhile). */
static void set_lines(kc *c, json_t *p, const char *key, const char *label) {
  json_t *list = json_object_get(p, key);
  if (!json_is_array(list)) {
    kv_line(c, label, "unknown");
    return;
  }
  if (json_array_size(list) == 0) {
    kv_line(c, label, "");
    return;
  }
  json_t *q;
  size_t i;
  json_array_foreach(list, i, q) {
    char line[256];
    const char *who = kc_jstr(q, "registered");
    if (!who[0]) who = kc_jstr(q, "name");
    snprintf(line, sizeof line, "%s%s%s", kc_jstr(q, "pid"), who[0] ? " " : "", who);
    kv_line(c, i == 0 ? label : "", line);
  }
  char total_key[64];
  snprintf(total_key, sizeof total_key, "%s_total", key);
  double total = kc_jnum(p, total_key);
  if (total > (double)json_array_size(list)) {
    char more[96];
    snprintf(more, sizeof more, "(%zu of %.0f shown)", json_array_size(list), total);
    kv_line(c, "", more);
  }
}

static int cmd_proc(kc *c, int argc, char **argv) {
  if (argc != 2)
    return usage_error("proc", argc < 2 ? "a PID is needed%s" : "unexpected argument '%s'",
                       argc < 2 ? "" : argv[2]);
  char *e = kc_escape(c, argv[1]);
  char path[512];
  snprintf(path, sizeof path, "/admin/processes/%s", e ? e : "");
  free(e);
  json_t *p;
  int rc = kc_get_json(c, "GET", path, NULL, &p);
  if (rc != KC_OK || c->json) {
    json_decref(p);
    return rc;
  }
  char buf[64], buf2[64];
  kv_line(c, "pid", kc_jstr(p, "pid"));
  kv_line(c, "name", kc_jstr(p, "name"));
  kv_line(c, "registered", kc_jstr(p, "registered"));
  kv_line(c, "status", kc_jstr(p, "status"));
  kv_line(c, "waiting for", kc_jstr(p, "waiting_for"));
  snprintf(buf, sizeof buf, "%.0f", kc_jnum(p, "scheduler"));
  kv_line(c, "scheduler", buf);
  snprintf(buf, sizeof buf, "%.0f", kc_jnum(p, "mailbox_len"));
  kv_line(c, "mailbox", buf);
  snprintf(buf, sizeof buf, "%.0f in, %.0f handled", kc_jnum(p, "messages_in"),
           kc_jnum(p, "messages_handled"));
  kv_line(c, "messages", buf);
  kv_line(c, "memory", kc_bytes(kc_jnum(p, "memory"), buf, sizeof buf));
  kv_line(c, "age", kc_duration(kc_jnum(p, "age_ms"), buf2, sizeof buf2));
  kv_line(c, "parent", kc_jstr(p, "parent"));
  kv_line(c, "supervisor", kc_jstr(p, "supervisor"));
  kv_line(c, "child id", kc_jstr(p, "child_id"));
  if (json_is_true(json_object_get(p, "is_supervisor"))) {
    kv_line(c, "strategy", kc_jstr(p, "strategy"));
    json_t *ch;
    size_t i;
    json_array_foreach(json_object_get(p, "children"), i, ch) {
      char line[256];
      snprintf(line, sizeof line, "%s %s restarts %.0f", kc_jstr(ch, "id"),
               kc_jstr(ch, "pid")[0] ? kc_jstr(ch, "pid") : "(not running)",
               kc_jnum(ch, "restarts"));
      kv_line(c, i == 0 ? "children" : "", line);
    }
  }
  set_lines(c, p, "links", "links");
  set_lines(c, p, "monitors", "monitors");
  set_lines(c, p, "monitored_by", "monitored by");
  json_decref(p);
  return KC_OK;
}

/* ---- panel ---- */

/* A panel's value as one cell: a string as it is, anything else as compact
 * JSON. malloc'd. */
static char *cell_text(json_t *v) {
  if (json_is_string(v)) return strdup(json_string_value(v));
  if (!v || json_is_null(v)) return strdup("-");
  char *t = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
  return t ? t : strdup("?");
}

/* As the dashboard renders a panel (docs/dashboard.md): an array of objects
 * as a table with a column per member, an object as key/value lines,
 * anything else as JSON. */
static void print_panel_data(kc *c, json_t *d) {
  if (json_is_array(d) && json_array_size(d) && json_is_object(json_array_get(d, 0))) {
    const char *cols[KC_MAXCOL];
    int ncol = 0;
    json_t *row, *v;
    size_t i;
    const char *key;
    json_array_foreach(d, i, row) {
      json_object_foreach(row, key, v) {
        bool seen = false;
        for (int k = 0; k < ncol; k++)
          seen = seen || !strcmp(cols[k], key);
        if (!seen && ncol < KC_MAXCOL) cols[ncol++] = key;
      }
    }
    kc_table *t = kc_table_new(ncol, cols, NULL);
    json_array_foreach(d, i, row) {
      char *cells[KC_MAXCOL];
      for (int k = 0; k < ncol; k++)
        cells[k] =
            json_object_get(row, cols[k]) ? cell_text(json_object_get(row, cols[k])) : strdup("");
      kc_table_add(t, (const char *const *)cells, NULL);
      for (int k = 0; k < ncol; k++)
        free(cells[k]);
    }
    kc_table_print(c, t);
    kc_table_free(t);
  } else if (json_is_object(d)) {
    const char *key;
    json_t *v;
    json_object_foreach(d, key, v) {
      char *text = cell_text(v);
      printf("%s%-20s%s %s\n", kc_c(c, KC_BOLD), key, kc_c(c, KC_RESET), text ? text : "");
      free(text);
    }
  } else {
    char *text = json_dumps(d, JSON_ENCODE_ANY | JSON_INDENT(2));
    printf("%s\n", text ? text : "null");
    free(text);
  }
}

static int cmd_panel(kc *c, int argc, char **argv) {
  if (argc > 2) return usage_error("panel", "unexpected argument '%s'", argv[2]);
  json_t *o;
  if (argc == 1) {
    int rc = kc_get_json(c, "GET", "/admin/panels", NULL, &o);
    if (rc != KC_OK || c->json) {
      json_decref(o);
      return rc;
    }
    static const char *head[] = {"NAME", "TITLE"};
    kc_table *t = kc_table_new(2, head, NULL);
    json_t *p;
    size_t i;
    json_array_foreach(json_object_get(o, "panels"), i, p) {
      const char *cells[] = {kc_jstr(p, "name"), kc_jstr(p, "title")};
      kc_table_add(t, cells, NULL);
    }
    if (json_array_size(json_object_get(o, "panels")))
      kc_table_print(c, t);
    else
      printf("%sno panel registered%s\n", kc_c(c, KC_DIM), kc_c(c, KC_RESET));
    kc_table_free(t);
    json_decref(o);
    return KC_OK;
  }
  char *e = kc_escape(c, argv[1]);
  char path[512];
  snprintf(path, sizeof path, "/admin/panels/%s", e ? e : "");
  free(e);
  int rc = kc_get_json(c, "GET", path, NULL, &o);
  if (rc != KC_OK || c->json) {
    json_decref(o);
    return rc;
  }
  printf("%s%s%s\n", kc_c(c, KC_BOLD), kc_jstr(o, "title"), kc_c(c, KC_RESET));
  print_panel_data(c, json_object_get(o, "data"));
  json_decref(o);
  return KC_OK;
}

/* ---- actions ---- */

static int cmd_kill(kc *c, int argc, char **argv) {
  if (argc < 2 || argc > 3)
    return usage_error("kill", argc < 2 ? "a PID is needed%s" : "unexpected argument '%s'",
                       argc < 2 ? "" : argv[3]);
  char *e = kc_escape(c, argv[1]);
  char path[512];
  snprintf(path, sizeof path, "/admin/processes/%s/kill", e ? e : "");
  free(e);
  json_t *body = json_pack("{s:s}", "reason", argc == 3 ? argv[2] : "kill");
  char *text = json_dumps(body, JSON_COMPACT);
  json_decref(body);
  json_t *o;
  int rc = kc_get_json(c, "POST", path, text, &o);
  free(text);
  if (rc == KC_OK && !c->json)
    printf("killed %s (reason: %s, signal: %s)\n", kc_jstr(o, "pid"), kc_jstr(o, "reason"),
           kc_jstr(o, "signal"));
  json_decref(o);
  return rc;
}

static int child_action(kc *c, int argc, char **argv, const char *action) {
  if (argc != 3) return usage_error(action, "SUPERVISOR and CHILD are needed%s", "");
  char *sup = kc_escape(c, argv[1]), *id = kc_escape(c, argv[2]);
  char path[1024];
  snprintf(path, sizeof path, "/admin/supervisors/%s/children/%s/%s", sup ? sup : "", id ? id : "",
           action);
  free(sup);
  free(id);
  json_t *o;
  int rc = kc_get_json(c, "POST", path, NULL, &o);
  if (rc == KC_OK && !c->json) {
    const char *pid = kc_jstr(o, "pid");
    printf("%s %s under %s%s%s\n", kc_jstr(o, "action"), kc_jstr(o, "id"), kc_jstr(o, "supervisor"),
           pid[0] ? ", new pid " : "", pid);
  }
  json_decref(o);
  return rc;
}

static int cmd_restart(kc *c, int argc, char **argv) {
  return child_action(c, argc, argv, "restart");
}
static int cmd_terminate(kc *c, int argc, char **argv) {
  return child_action(c, argc, argv, "terminate");
}

static const char *const levels[] = {"trace", "debug", "info", "warn",
                                     "error", "fatal", "off",  NULL};

static bool valid_level(const char *s) {
  for (int i = 0; levels[i]; i++)
    if (!strcmp(s, levels[i])) return true;
  return false;
}

static int cmd_loglevel(kc *c, int argc, char **argv) {
  if (argc != 2) return usage_error("loglevel", "one LEVEL is needed%s", "");
  if (!valid_level(argv[1]))
    return usage_error("loglevel",
                       "unknown level '%s' (trace, debug, info, warn, error, fatal, off)", argv[1]);
  json_t *body = json_pack("{s:s}", "level", argv[1]);
  char *text = json_dumps(body, JSON_COMPACT);
  json_decref(body);
  json_t *o;
  int rc = kc_get_json(c, "POST", "/admin/log-level", text, &o);
  free(text);
  if (rc == KC_OK && !c->json)
    printf("log level %s (was %s)\n", kc_jstr(o, "level"), kc_jstr(o, "previous"));
  json_decref(o);
  return rc;
}

static int cmd_alert_test(kc *c, int argc, char **argv) {
  if (argc > 1) return usage_error("alert-test", "unexpected argument '%s'", argv[1]);
  json_t *o;
  int rc = kc_get_json(c, "POST", "/admin/alerts/test", NULL, &o);
  if (rc == KC_OK && !c->json) {
    double sinks = kc_jnum(o, "sinks");
    char *q = json_dumps(json_object_get(o, "queued"), JSON_COMPACT | JSON_ENCODE_ANY);
    if (sinks == 0)
      printf("test alert: no alert sink is configured on the node (docs/alerts.md)\n");
    else
      printf("test alert sent to %.0f sink%s (queued: %s)\n", sinks, sinks == 1 ? "" : "s",
             q ? q : "-");
    free(q);
  }
  json_decref(o);
  return rc;
}

/* ---- metrics ---- */

/* One exposition line "name{k="v",...} value" into {"name","labels","value"}. */
static json_t *metric_json(const char *line) {
  size_t n = strcspn(line, "{ ");
  json_t *m = json_object(), *labels = json_object();
  json_object_set_new(m, "name", json_stringn(line, n));
  const char *p = line + n;
  if (*p == '{') {
    p++;
    while (*p && *p != '}') {
      size_t k = strcspn(p, "=");
      if (p[k] != '=' || p[k + 1] != '"') break;
      char key[128];
      snprintf(key, sizeof key, "%.*s", (int)k, p);
      p += k + 2;
      char val[512];
      size_t v = 0;
      while (*p && *p != '"') {
        char ch = *p++;
        if (ch == '\\' && *p) ch = *p == 'n' ? '\n' : *p, p++;
        if (v + 1 < sizeof val) val[v++] = ch;
      }
      val[v] = '\0';
      json_object_set_new(labels, key, json_string(val));
      if (*p == '"') p++;
      if (*p == ',') p++;
    }
    if (*p == '}') p++;
  }
  json_object_set_new(m, "labels", labels);
  json_object_set_new(m, "value", json_real(strtod(p, NULL)));
  return m;
}

static int cmd_metrics(kc *c, int argc, char **argv) {
  if (argc > 2) return usage_error("metrics", "unexpected argument '%s'", argv[2]);
  const char *pattern = argc == 2 ? argv[1] : NULL;
  kc_reply r;
  char msg[2048];
  kc_request(c, "GET", "/metrics", NULL, 15000, &r);
  int rc = kc_describe(c, "/metrics", &r, msg, sizeof msg);
  if (rc != KC_OK) {
    fprintf(stderr, "keelctl: %s\n", msg);
    kc_reply_free(&r);
    return rc;
  }
  json_t *arr = c->json ? json_array() : NULL;
  for (char *save, *line = strtok_r(r.body.p, "\n", &save); line;
       line = strtok_r(NULL, "\n", &save)) {
    if (pattern && !strstr(line, pattern)) continue;
    if (arr) {
      if (line[0] != '#') json_array_append_new(arr, metric_json(line));
    } else if (line[0] == '#') {
      printf("%s%s%s\n", kc_c(c, KC_DIM), line, kc_c(c, KC_RESET));
    } else {
      char *sp = strrchr(line, ' ');
      if (sp) *sp = '\0';
      printf("%s%s%s %s\n", kc_c(c, KC_CYAN), line, kc_c(c, KC_RESET), sp ? sp + 1 : "");
    }
  }
  if (arr) {
    char *s = json_dumps(arr, JSON_COMPACT);
    printf("%s\n", s ? s : "[]");
    free(s);
    json_decref(arr);
  }
  kc_reply_free(&r);
  return KC_OK;
}

/* ---- alerts ---- */

/* The process an alert is about: an active alert has it as
 * "process":{"pid","name"}, a recent event as "name" (docs/dashboard.md). */
static const char *alert_name(const json_t *a) {
  const char *s = kc_jstr(a, "name");
  if (!s[0]) s = kc_jstr(json_object_get(a, "process"), "name");
  if (!s[0]) s = kc_jstr(json_object_get(a, "process"), "pid");
  return s;
}

static int cmd_alerts(kc *c, int argc, char **argv) {
  if (argc > 1) return usage_error("alerts", "unexpected argument '%s'", argv[1]);
  json_t *o;
  int rc = kc_get_json(c, "GET", "/admin/alerts", NULL, &o);
  if (rc != KC_OK || c->json) {
    json_decref(o);
    return rc;
  }
  json_t *st = json_object_get(o, "stats");
  printf("%salerts%s %s: %.0f active, %.0f fired, %.0f resolved, %.0f suppressed\n",
         kc_c(c, KC_BOLD), kc_c(c, KC_RESET),
         json_is_true(json_object_get(st, "running")) ? "running" : "not running",
         kc_jnum(st, "active"), kc_jnum(st, "fired"), kc_jnum(st, "resolved"),
         kc_jnum(st, "suppressed"));
  static const char *head[] = {"ID", "TYPE", "NAME", "VALUE", "THRESHOLD", "MESSAGE"};
  static const bool right[] = {false, false, false, true, true, false};
  json_t *a;
  size_t i;
  json_t *active = json_object_get(o, "active");
  if (json_array_size(active)) {
    printf("\n%sactive%s\n", kc_c(c, KC_BOLD), kc_c(c, KC_RESET));
    kc_table *t = kc_table_new(6, head, right);
    json_array_foreach(active, i, a) {
      char v[32], th[32];
      snprintf(v, sizeof v, "%g", kc_jnum(a, "value"));
      snprintf(th, sizeof th, "%g", kc_jnum(a, "threshold"));
      const char *cells[] = {kc_jstr(a, "id"),     kc_jstr(a, "type"), alert_name(a), v, th,
                             kc_jstr(a, "message")};
      const char *colors[] = {NULL, kc_c(c, KC_YELLOW), NULL, NULL, NULL, NULL};
      kc_table_add(t, cells, colors);
    }
    kc_table_print(c, t);
    kc_table_free(t);
  }
  json_t *recent = json_object_get(o, "recent");
  if (json_array_size(recent)) {
    static const char *rhead[] = {"EVENT", "ID", "TYPE", "NAME", "VALUE", "MESSAGE"};
    static const bool rright[] = {false, false, false, false, true, false};
    printf("\n%srecent%s (newest first)\n", kc_c(c, KC_BOLD), kc_c(c, KC_RESET));
    kc_table *t = kc_table_new(6, rhead, rright);
    json_array_foreach(recent, i, a) {
      char v[32];
      snprintf(v, sizeof v, "%g", kc_jnum(a, "value"));
      const char *ev = kc_jstr(a, "event");
      const char *cells[] = {ev, kc_jstr(a, "id"),     kc_jstr(a, "type"), alert_name(a),
                             v,  kc_jstr(a, "message")};
      const char *colors[] = {kc_status_color(c, ev), NULL, NULL, NULL, NULL, NULL};
      kc_table_add(t, cells, colors);
    }
    kc_table_print(c, t);
    kc_table_free(t);
  }
  json_decref(o);
  return KC_OK;
}

/* ---- logs ---- */

typedef struct follow {
  kc *c;
  double next; /* the first seq not printed yet */
} follow;

static void print_log(kc *c, json_t *l) {
  if (c->json) {
    char *s = json_dumps(l, JSON_COMPACT);
    printf("%s\n", s ? s : "");
    free(s);
  } else {
    const char *col = kc_level_color(c, kc_jstr(l, "level"));
    printf("%s%s%s%s\n", col, kc_jstr(l, "line"), col[0] ? kc_c(c, KC_RESET) : "",
           json_is_true(json_object_get(l, "truncated")) ? " [truncated]" : "");
  }
  fflush(stdout);
}

static int on_log_event(const char *event, const char *data, void *ud) {
  follow *f = ud;
  if (strcmp(event, "log") != 0) return 0;
  json_t *l = json_loads(data, 0, NULL);
  /* the stream may repeat lines the tail already printed */
  if (l && kc_jnum(l, "seq") >= f->next) {
    print_log(f->c, l);
    f->next = kc_jnum(l, "seq") + 1;
  }
  json_decref(l);
  return 0;
}

static int cmd_logs(kc *c, int argc, char **argv) {
  bool follow_on = false;
  const char *level = NULL;
  long limit = 200;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "-f") || !strcmp(argv[i], "--follow")) {
      follow_on = true;
    } else if (!strcmp(argv[i], "--level") && i + 1 < argc) {
      level = argv[++i];
      if (!valid_level(level)) return usage_error("logs", "unknown level '%s'", level);
    } else if ((!strcmp(argv[i], "--limit") || !strcmp(argv[i], "-n")) && i + 1 < argc) {
      if (!parse_limit(argv[++i], &limit) || limit > 1000)
        return usage_error("logs", "bad limit '%s' (1-1000)", argv[i]);
    } else {
      return usage_error("logs", "unexpected argument '%s'", argv[i]);
    }
  }
  char path[256];
  snprintf(path, sizeof path, "/admin/logs?limit=%ld%s%s", limit, level ? "&level=" : "",
           level ? level : "");
  /* with --json and -f, lines go out one JSON object a line, not the tail's body */
  bool json = c->json;
  c->json = json && !follow_on;
  json_t *o;
  int rc = kc_get_json(c, "GET", path, NULL, &o);
  c->json = json;
  if (rc != KC_OK) return rc;
  json_t *l;
  size_t i;
  if (!json || follow_on) json_array_foreach(json_object_get(o, "lines"), i, l) print_log(c, l);
  follow f = {.c = c, .next = kc_jnum(o, "next")};
  json_decref(o);
  if (!follow_on) return KC_OK;
  snprintf(path, sizeof path, "/admin/events%s%s", level ? "?level=" : "", level ? level : "");
  char msg[2048];
  rc = kc_stream(c, path, on_log_event, &f, msg, sizeof msg);
  if (rc != KC_OK) fprintf(stderr, "keelctl: %s\n", msg);
  return rc;
}

/* ---- the command table, help, main ---- */

static int cmd_top_entry(kc *c, int argc, char **argv) {
  return kc_top(c, argc, argv);
}

static const command commands[] = {
    {"status", cmd_status, "",
     "The node at a glance: service, uptime, health, processes, messages/s,\n"
     "restarts, memory, schedulers, log level. Exit 1 when health is unhealthy.",
     "the node at a glance"},
    {"health", cmd_health, "",
     "The detailed health probe (/health): every check. Exit 1 unless it passes.",
     "the health checks (exit 1 unless passing)"},
    {"tree", cmd_tree, "",
     "The supervision tree: supervisors, strategies, children, restarts, and the\n"
     "recent restarts with their reasons.",
     "the supervision tree and recent restarts"},
    {"ps", cmd_ps, "[--sort mailbox|memory|messages|age] [--limit N] [--name S]",
     "The processes, sorted (descending; default mailbox), at most N (default 100),\n"
     "filtered by a substring of the name, registered name, child id or pid.",
     "the processes, sorted and filtered"},
    {"proc", cmd_proc, "PID",
     "One process: status, what it waits for, mailbox, supervisor, children,\n"
     "links, monitors (the processes it monitors) and monitored by.\n"
     "PID: <0.4.1>, 0.4.1 or a registered name.",
     "one process"},
    {"panel", cmd_panel, "[NAME]",
     "The panels modules registered on the dashboard (subscriptions, job queues):\n"
     "without NAME the list, with NAME that panel's data (a table or key/value lines).",
     "registered panels (subscriptions, job queues)"},
    {"top", cmd_top_entry, "[--sort mailbox|memory|messages|age]",
     "Full screen, refreshed every second. Keys: m mailbox, e memory, s messages,\n"
     "a age (sort), r refresh now, q quit.",
     "full screen, refreshed every second"},
    {"kill", cmd_kill, "PID [REASON]",
     "Kills a process. REASON: kill (default) or a text: an untrappable kill, the\n"
     "text kept as the exit text (its supervisor restarts it with that reason);\n"
     "shutdown: the polite request a process that traps exits may ignore. Needs the token.",
     "kill a process"},
    {"restart", cmd_restart, "SUPERVISOR CHILD",
     "Restarts a supervisor's child (a fresh pid). Needs the token.",
     "restart a supervisor's child"},
    {"terminate", cmd_terminate, "SUPERVISOR CHILD",
     "Terminates a supervisor's child. Needs the token.", "terminate a supervisor's child"},
    {"loglevel", cmd_loglevel, "LEVEL",
     "Sets the node's log level: trace, debug, info, warn, error, fatal, off.\n"
     "Needs the token.",
     "set the node's log level"},
    {"metrics", cmd_metrics, "[PATTERN]",
     "The /metrics lines containing PATTERN (all without one).",
     "the /metrics lines matching PATTERN"},
    {"alerts", cmd_alerts, "", "Active and recent alerts, and the alert manager's counters.",
     "active and recent alerts"},
    {"logs", cmd_logs, "[-f] [--level L] [--limit N]",
     "The node's last log lines (at most N, default 200) at level L or above;\n"
     "-f keeps following the event stream (Ctrl-C stops).",
     "the last log lines; -f follows"},
    {"alert-test", cmd_alert_test, "",
     "Fires a test alert through every configured alert path. Needs the token.",
     "fire a test alert through every alert path"},
};

static const command *find_command(const char *name) {
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    if (!strcmp(commands[i].name, name)) return &commands[i];
  return NULL;
}

static void print_help(FILE *out) {
  fprintf(out, "usage: keelctl [--url URL] [--token T] [--json] COMMAND [ARGS]\n\n"
               "A keel node's operator, over its admin port.\n\n"
               "options:\n"
               "  --url URL    the admin port (default $KEEL_URL, else " DEFAULT_URL ")\n"
               "  --token T    the bearer token (default $ADMIN_TOKEN; prefer the variable:\n"
               "               a command line is visible to other users)\n"
               "  --json       print the API's JSON, for scripts\n"
               "  -h, --help   this help; keelctl COMMAND --help for a command's\n\n"
               "commands:\n");
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    fprintf(out, "  %-11s %s\n", commands[i].name, commands[i].summary);
  fprintf(out, "\nkeelctl COMMAND --help gives a command's arguments.\n");
  fprintf(out, "\nexit codes: 0 ok, 1 unhealthy or refused, 2 usage, 3 node unreachable\n"
               "colour on a terminal unless NO_COLOR is set\n");
}

/* Takes the global options out of ARGV wherever they are (so `keelctl ps
 * --json` works too); returns the new argc, or -1 after a usage error. */
static int global_options(kc *c, int argc, char **argv) {
  int out = 0;
  for (int i = 0; i < argc; i++) {
    const char *a = argv[i], *value = NULL;
    if ((!strcmp(a, "--url") || !strcmp(a, "--token"))) {
      if (i + 1 >= argc) {
        fprintf(stderr, "keelctl: %s needs a value\nsee keelctl --help\n", a);
        return -1;
      }
      value = argv[++i];
    } else if (!strncmp(a, "--url=", 6) || !strncmp(a, "--token=", 8)) {
      value = strchr(a, '=') + 1;
    }
    if (value) {
      if (!strncmp(a, "--url", 5)) {
        snprintf(c->url, sizeof c->url, "%s", value);
      } else {
        c->token = value;
      }
    } else if (!strcmp(a, "--json")) {
      c->json = true;
    } else {
      argv[out++] = argv[i];
    }
  }
  return out;
}

int main(int argc, char **argv) {
  kc c = {0};
  const char *env_url = getenv("KEEL_URL");
  snprintf(c.url, sizeof c.url, "%s", env_url && env_url[0] ? env_url : DEFAULT_URL);
  c.token = getenv("ADMIN_TOKEN");
  argc = global_options(&c, argc - 1, argv + 1);
  argv++;
  if (argc < 0) return KC_USAGE;
  if (argc == 0) {
    print_help(stderr);
    return KC_USAGE;
  }
  if (!strcmp(argv[0], "--help") || !strcmp(argv[0], "-h") || !strcmp(argv[0], "help")) {
    print_help(stdout);
    return KC_OK;
  }
  const command *k = find_command(argv[0]);
  if (!k) {
    fprintf(stderr, "keelctl: unknown command '%s'\nsee keelctl --help\n", argv[0]);
    return KC_USAGE;
  }
  if (wants_help(argc, argv)) return command_help(k->name);
  size_t n = strlen(c.url);
  while (n > 0 && c.url[n - 1] == '/')
    c.url[--n] = '\0';
  if (strncmp(c.url, "http://", 7) && strncmp(c.url, "https://", 8)) {
    fprintf(stderr, "keelctl: the URL must start with http:// or https:// (got %s)\n", c.url);
    return KC_USAGE;
  }
  const char *no_color = getenv("NO_COLOR");
  c.color = isatty(STDOUT_FILENO) && !(no_color && no_color[0]) && !c.json;
  if (kc_http_init(&c) != 0) {
    fprintf(stderr, "keelctl: cannot initialise libcurl\n");
    return KC_UNREACHABLE;
  }
  int rc = k->run(&c, argc, argv);
  kc_http_cleanup(&c);
  return rc;
}
