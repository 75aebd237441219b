/* kc_top.c - `keelctl top`: full screen (ncurses), like observer_cli or
 * htop. Every second it reads /admin/overview and /admin/processes (as many
 * rows as the screen holds, sorted by the chosen column) and redraws.
 * Keys: m mailbox, e memory, s messages, a age, r refresh now, q quit. A
 * failed read is shown on the screen and retried: a node that restarts
 * comes back on its own. */
#define _POSIX_C_SOURCE 200809L
#include "keelctl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <curses.h>

#define REFRESH_MS  1000
#define HEADER_ROWS 5 /* title, totals, schedulers, blank, column heads */

enum { PAIR_TITLE = 1, PAIR_HEAD, PAIR_SORTED, PAIR_WARN, PAIR_BAD, PAIR_OK };

typedef struct top {
  kc *c;
  const char *sort;
  json_t *overview, *procs;
  char error[2048];
  bool color;
} top;

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A GET whose failure goes on the screen, not to stderr. */
static json_t *fetch(top *t, const char *path) {
  kc_reply r;
  kc_request(t->c, "GET", path, NULL, 3000, &r);
  json_t *o = NULL;
  if (kc_describe(t->c, path, &r, t->error, sizeof t->error) == KC_OK) {
    o = json_loads(r.body.p, 0, NULL);
    if (!o)
      snprintf(t->error, sizeof t->error, "%.800s%.100s answered what is not JSON", t->c->url,
               path);
  }
  kc_reply_free(&r);
  return o;
}

static void reload(top *t) {
  t->error[0] = '\0';
  json_t *o = fetch(t, "/admin/overview");
  json_t *p = NULL;
  if (o) {
    char path[128];
    int rows = LINES - HEADER_ROWS - 1;
    snprintf(path, sizeof path, "/admin/processes?sort=%s&limit=%d", t->sort, rows < 1 ? 1 : rows);
    p = fetch(t, path);
  }
  /* a failed read keeps the last picture, with the error over it */
  if (o && p) {
    json_decref(t->overview);
    json_decref(t->procs);
    t->overview = o;
    t->procs = p;
  } else {
    json_decref(o);
    json_decref(p);
  }
}

static void attr(top *t, int pair, bool on) {
  if (!t->color) {
    if (pair == PAIR_TITLE || pair == PAIR_HEAD || pair == PAIR_SORTED)
      on ? attron(A_REVERSE) : attroff(A_REVERSE);
    return;
  }
  on ? attron(COLOR_PAIR(pair)) : attroff(COLOR_PAIR(pair));
}

static void draw_header(top *t) {
  json_t *o = t->overview;
  char up[32], rss[32], lim[32];
  attr(t, PAIR_TITLE, true);
  mvhline(0, 0, ' ', COLS);
  mvprintw(0, 0, " keelctl top  %s %s  %s  up %s", kc_jstr(o, "service"), kc_jstr(o, "version"),
           t->c->url, kc_duration(kc_jnum(o, "uptime_ms"), up, sizeof up));
  attr(t, PAIR_TITLE, false);
  json_t *mem = json_object_get(o, "memory");
  const char *health = kc_jstr(o, "health");
  mvprintw(1, 0, " processes %.0f  msgs/s %.1f  restarts %.0f (%.0f/min)  memory %s of %s  health ",
           kc_jnum(o, "processes"), kc_jnum(o, "messages_per_sec"), kc_jnum(o, "restarts"),
           kc_jnum(o, "restarts_last_min"), kc_bytes(kc_jnum(mem, "rss_bytes"), rss, sizeof rss),
           kc_bytes(kc_jnum(mem, "effective_limit_bytes"), lim, sizeof lim));
  int pair = !strcmp(health, "healthy") || !strcmp(health, "pass")    ? PAIR_OK
             : !strcmp(health, "degraded") || !strcmp(health, "warn") ? PAIR_WARN
                                                                      : PAIR_BAD;
  attr(t, pair, true);
  printw("%s", health);
  attr(t, pair, false);
  move(2, 0);
  printw(" schedulers");
  json_t *s;
  size_t i;
  json_array_foreach(json_object_get(o, "schedulers"), i, s) {
    double u = kc_jnum(s, "utilisation");
    printw("  [%.0f] ", kc_jnum(s, "id"));
    int bars = (int)(u * 10 + 0.5);
    attr(t, u > 0.8 ? PAIR_BAD : u > 0.5 ? PAIR_WARN : PAIR_OK, true);
    for (int b = 0; b < 10; b++)
      addch(b < bars ? '|' : ' ');
    attr(t, u > 0.8 ? PAIR_BAD : u > 0.5 ? PAIR_WARN : PAIR_OK, false);
    printw(" %3.0f%%", u * 100);
    if (json_is_true(json_object_get(s, "stuck"))) printw(" STUCK");
  }
}

/* The column heads, the sorted one marked. */
static void draw_heads(top *t) {
  static const struct {
    const char *title, *sort;
    int width;
  } cols[] = {{"PID", NULL, -14},        {"NAME", NULL, -24},          {"STATUS", NULL, -9},
              {"MAILBOX", "mailbox", 8}, {"MESSAGES", "messages", 10}, {"MEMORY", "memory", 11},
              {"AGE", "age", 9}};
  attr(t, PAIR_HEAD, true);
  mvhline(4, 0, ' ', COLS);
  move(4, 0);
  for (size_t i = 0; i < sizeof cols / sizeof cols[0]; i++) {
    bool sorted = cols[i].sort && !strcmp(cols[i].sort, t->sort);
    if (sorted) attr(t, PAIR_SORTED, true);
    printw("%*s ", cols[i].width, cols[i].title);
    if (sorted) attr(t, PAIR_SORTED, false), attr(t, PAIR_HEAD, true);
  }
  printw(" SUPERVISOR");
  attr(t, PAIR_HEAD, false);
}

static void draw_rows(top *t) {
  json_t *p;
  size_t i;
  int y = HEADER_ROWS;
  json_array_foreach(json_object_get(t->procs, "processes"), i, p) {
    if (y >= LINES - 1) break;
    char mem[32], age[32];
    const char *name = kc_jstr(p, "registered");
    if (!name[0]) name = kc_jstr(p, "name");
    double mb = kc_jnum(p, "mailbox_len");
    mvprintw(y, 0, "%-14.14s %-24.24s %-9.9s ", kc_jstr(p, "pid"), name, kc_jstr(p, "status"));
    if (mb > 0) attr(t, mb >= 100 ? PAIR_BAD : PAIR_WARN, true);
    printw("%8.0f", mb);
    if (mb > 0) attr(t, mb >= 100 ? PAIR_BAD : PAIR_WARN, false);
    printw(" %10.0f %11s %9s  %s %s", kc_jnum(p, "messages_handled"),
           kc_bytes(kc_jnum(p, "memory"), mem, sizeof mem),
           kc_duration(kc_jnum(p, "age_ms"), age, sizeof age), kc_jstr(p, "supervisor"),
           kc_jstr(p, "child_id"));
    y++;
  }
}

static void draw(top *t) {
  erase();
  if (t->overview) {
    draw_header(t);
    draw_heads(t);
    draw_rows(t);
  }
  if (t->error[0]) {
    attr(t, PAIR_BAD, true);
    mvprintw(t->overview ? 3 : 0, 0, " %.*s", COLS > 2 ? COLS - 2 : 0, t->error);
    attr(t, PAIR_BAD, false);
  }
  attr(t, PAIR_HEAD, true);
  mvhline(LINES - 1, 0, ' ', COLS);
  mvprintw(LINES - 1, 0, " sort: m mailbox  e memory  s messages  a age   r refresh  q quit");
  attr(t, PAIR_HEAD, false);
  refresh();
}

static void init_colors(top *t) {
  const char *no_color = getenv("NO_COLOR");
  t->color = has_colors() && !(no_color && no_color[0]);
  if (!t->color) return;
  start_color();
  use_default_colors();
  init_pair(PAIR_TITLE, COLOR_BLACK, COLOR_CYAN);
  init_pair(PAIR_HEAD, COLOR_BLACK, COLOR_GREEN);
  init_pair(PAIR_SORTED, COLOR_BLACK, COLOR_CYAN);
  init_pair(PAIR_WARN, COLOR_YELLOW, -1);
  init_pair(PAIR_BAD, COLOR_RED, -1);
  init_pair(PAIR_OK, COLOR_GREEN, -1);
}

int kc_top(kc *c, int argc, char **argv) {
  top t = {.c = c, .sort = "mailbox"};
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--sort") && i + 1 < argc &&
        (!strcmp(argv[i + 1], "mailbox") || !strcmp(argv[i + 1], "memory") ||
         !strcmp(argv[i + 1], "messages") || !strcmp(argv[i + 1], "age"))) {
      t.sort = argv[++i];
    } else {
      fprintf(stderr,
              "keelctl: unexpected argument '%s'\nusage: keelctl top [--sort "
              "mailbox|memory|messages|age]\n",
              argv[i]);
      return KC_USAGE;
    }
  }
  if (c->json) {
    fprintf(stderr, "keelctl: top is interactive; for scripts use ps --json\n");
    return KC_USAGE;
  }
  /* a first read before the screen is taken: an unreachable node or a wrong
   * token is said on stderr with its exit code, as the other commands do */
  kc_reply r;
  char msg[2048];
  kc_request(c, "GET", "/admin/overview", NULL, 3000, &r);
  int rc = kc_describe(c, "/admin/overview", &r, msg, sizeof msg);
  kc_reply_free(&r);
  if (rc != KC_OK) {
    fprintf(stderr, "keelctl: %s\n", msg);
    return rc;
  }
  if (!initscr()) {
    fprintf(stderr, "keelctl: top needs a terminal (TERM=%s)\n",
            getenv("TERM") ? getenv("TERM") : "");
    return KC_USAGE;
  }
  cbreak();
  noecho();
  keypad(stdscr, TRUE);
  curs_set(0);
  init_colors(&t);
  timeout(100); /* getch waits at most 100 ms: keys answer quickly */
  long long next = 0;
  for (;;) {
    if (now_ms() >= next) {
      reload(&t);
      draw(&t);
      next = now_ms() + REFRESH_MS;
    }
    int ch = getch();
    if (ch == ERR) continue;
    const char *sort = NULL;
    switch (ch) {
    case 'q':
    case 'Q': goto done;
    case 'm': sort = "mailbox"; break;
    case 'e': sort = "memory"; break;
    case 's': sort = "messages"; break;
    case 'a': sort = "age"; break;
    case 'r': next = 0; break;
    case KEY_RESIZE: next = 0; break; /* more or fewer rows: read again */
    default: break;
    }
    if (sort) {
      t.sort = sort;
      next = 0;
    }
  }
done:
  endwin();
  json_decref(t.overview);
  json_decref(t.procs);
  return KC_OK;
}
