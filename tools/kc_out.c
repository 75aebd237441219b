/* kc_out.c - keelctl's output: colour (on a terminal only, NO_COLOR
 * honoured, decided in main), human units and aligned tables. */
#define _POSIX_C_SOURCE 200809L
#include "keelctl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *kc_c(const kc *c, const char *code) {
  return c->color ? code : "";
}

const char *kc_status_color(const kc *c, const char *s) {
  if (!strcmp(s, "pass") || !strcmp(s, "ok") || !strcmp(s, "healthy") || !strcmp(s, "ready") ||
      !strcmp(s, "running") || !strcmp(s, "resolved"))
    return kc_c(c, KC_GREEN);
  if (!strcmp(s, "warn") || !strcmp(s, "warning") || !strcmp(s, "degraded") ||
      !strcmp(s, "unresponsive") || !strcmp(s, "triggered"))
    return kc_c(c, KC_YELLOW);
  if (!strcmp(s, "fail") || !strcmp(s, "error") || !strcmp(s, "unhealthy") || !strcmp(s, "gone") ||
      !strcmp(s, "critical"))
    return kc_c(c, KC_RED);
  return "";
}

const char *kc_level_color(const kc *c, const char *level) {
  if (!strcmp(level, "warn")) return kc_c(c, KC_YELLOW);
  if (!strcmp(level, "error") || !strcmp(level, "fatal")) return kc_c(c, KC_RED);
  if (!strcmp(level, "debug") || !strcmp(level, "trace")) return kc_c(c, KC_DIM);
  return "";
}

const char *kc_bytes(double b, char *buf, size_t size) {
  static const char *unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    u++;
  }
  if (u == 0)
    snprintf(buf, size, "%.0f B", b);
  else
    snprintf(buf, size, "%.1f %s", b, unit[u]);
  return buf;
}

const char *kc_duration(double ms, char *buf, size_t size) {
  long long s = (long long)(ms / 1000);
  if (ms < 1000)
    snprintf(buf, size, "%.0fms", ms);
  else if (s < 60)
    snprintf(buf, size, "%.1fs", ms / 1000);
  else if (s < 3600)
    snprintf(buf, size, "%lldm%02llds", s / 60, s % 60);
  else if (s < 86400)
    snprintf(buf, size, "%lldh%02lldm", s / 3600, s % 3600 / 60);
  else
    snprintf(buf, size, "%lldd%02lldh", s / 86400, s % 86400 / 3600);
  return buf;
}

const char *kc_jstr(const json_t *o, const char *key) {
  const char *s = json_string_value(json_object_get(o, key));
  return s ? s : "";
}

double kc_jnum(const json_t *o, const char *key) {
  return json_number_value(json_object_get(o, key));
}

/* ---- tables ---- */

typedef struct kc_row {
  char *cell[KC_MAXCOL];
  const char *color[KC_MAXCOL];
} kc_row;

struct kc_table {
  int ncol;
  const char *const *head;
  bool right[KC_MAXCOL];
  kc_row *rows;
  int n, cap;
};

kc_table *kc_table_new(int ncol, const char *const *head, const bool *right) {
  kc_table *t = calloc(1, sizeof *t);
  if (!t) return NULL;
  t->ncol = ncol > KC_MAXCOL ? KC_MAXCOL : ncol;
  t->head = head;
  for (int i = 0; right && i < t->ncol; i++)
    t->right[i] = right[i];
  return t;
}

void kc_table_add(kc_table *t, const char *const *cells, const char *const *colors) {
  if (!t) return;
  if (t->n == t->cap) {
    int cap = t->cap ? t->cap * 2 : 16;
    kc_row *r = realloc(t->rows, (size_t)cap * sizeof *r);
    if (!r) return;
    t->rows = r;
    t->cap = cap;
  }
  kc_row *row = &t->rows[t->n++];
  for (int i = 0; i < t->ncol; i++) {
    row->cell[i] = strdup(cells[i] ? cells[i] : "");
    row->color[i] = colors && colors[i] ? colors[i] : "";
  }
}

static void print_cell(const kc *c, const char *text, const char *color, int width, bool right,
                       bool last) {
  int pad = width - (int)strlen(text);
  if (right) printf("%*s", pad > 0 ? pad : 0, "");
  printf("%s%s%s", color, text, color[0] ? kc_c(c, KC_RESET) : "");
  if (!right && !last) printf("%*s", pad > 0 ? pad : 0, "");
  if (!last) printf("  ");
}

void kc_table_print(const kc *c, kc_table *t) {
  if (!t) return;
  int w[KC_MAXCOL] = {0};
  for (int i = 0; i < t->ncol; i++)
    w[i] = (int)strlen(t->head[i]);
  for (int r = 0; r < t->n; r++)
    for (int i = 0; i < t->ncol; i++) {
      int n = (int)strlen(t->rows[r].cell[i]);
      if (n > w[i]) w[i] = n;
    }
  for (int i = 0; i < t->ncol; i++)
    print_cell(c, t->head[i], kc_c(c, KC_BOLD), w[i], t->right[i], i == t->ncol - 1);
  printf("\n");
  for (int r = 0; r < t->n; r++) {
    for (int i = 0; i < t->ncol; i++)
      print_cell(c, t->rows[r].cell[i], t->rows[r].color[i], w[i], t->right[i], i == t->ncol - 1);
    printf("\n");
  }
}

void kc_table_free(kc_table *t) {
  if (!t) return;
  for (int r = 0; r < t->n; r++)
    for (int i = 0; i < t->ncol; i++)
      free(t->rows[r].cell[i]);
  free(t->rows);
  free(t);
}
