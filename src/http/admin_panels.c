/* admin_panels.c - the dashboard's registered panels (keel_admin_panel_register).
 *
 * A later module (subscriptions, job queues) shows itself on the dashboard
 * by registering a name, a title and a provider of JSON text; the page
 * lists the panels (GET /admin/panels) and renders each one's JSON
 * generically (GET /admin/panels/:name). One table for the node, under a
 * read-write lock: a request holds it for reading while it calls the
 * provider, so unregistering (which takes it for writing) returns only once
 * no request is inside the old provider, and the caller may free ud.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "http/admin_internal.h"
#include "keel/error.h"
#include "keel/http.h"

typedef struct panel {
  char name[33];
  char title[65];
  keel_admin_panel_fn fn;
  void *ud;
} panel;

static pthread_rwlock_t g_lock = PTHREAD_RWLOCK_INITIALIZER;
static panel g_panels[KEEL_ADMIN_MAX_PANELS];
static size_t g_n;

static bool name_ok(const char *name) {
  size_t n = name ? strlen(name) : 0;
  if (n == 0 || n > 32) return false;
  for (size_t i = 0; i < n; i++) {
    char c = name[i];
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-')) return false;
  }
  return true;
}

static panel *find(const char *name) {
  for (size_t i = 0; i < g_n; i++)
    if (strcmp(g_panels[i].name, name) == 0) return &g_panels[i];
  return NULL;
}

int keel_admin_panel_register(const char *name, const char *title, keel_admin_panel_fn fn,
                              void *ud) {
  if (!name_ok(name) || !title || !*title || strlen(title) > 64 || !fn) return KEEL_EINVAL;
  pthread_rwlock_wrlock(&g_lock);
  panel *p = find(name);
  if (!p && g_n == KEEL_ADMIN_MAX_PANELS) {
    pthread_rwlock_unlock(&g_lock);
    return KEEL_ERANGE;
  }
  if (!p) p = &g_panels[g_n++];
  strcpy(p->name, name);
  strcpy(p->title, title);
  p->fn = fn;
  p->ud = ud;
  pthread_rwlock_unlock(&g_lock);
  return 0;
}

int keel_admin_panel_unregister(const char *name) {
  if (!name_ok(name)) return KEEL_EINVAL;
  pthread_rwlock_wrlock(&g_lock);
  panel *p = find(name);
  if (p) {
    *p = g_panels[--g_n];
    memset(&g_panels[g_n], 0, sizeof g_panels[g_n]);
  }
  pthread_rwlock_unlock(&g_lock);
  return p ? 0 : KEEL_ENOENT;
}

json_t *keel__admin_panels_list(void) {
  json_t *v = json_array();
  pthread_rwlock_rdlock(&g_lock);
  for (size_t i = 0; i < g_n; i++)
    json_array_append_new(
        v, json_pack("{s:s, s:s}", "name", g_panels[i].name, "title", g_panels[i].title));
  pthread_rwlock_unlock(&g_lock);
  return v;
}

json_t *keel__admin_panel_call(const char *name) {
  if (!name_ok(name)) return NULL;
  pthread_rwlock_rdlock(&g_lock);
  panel *p = find(name);
  json_t *j = NULL;
  if (p) {
    char *text = p->fn(p->ud);
    json_t *data = text ? json_loads(text, JSON_DECODE_ANY, NULL) : NULL;
    free(text);
    j = json_pack("{s:s, s:s, s:o}", "name", p->name, "title", p->title, "data",
                  data ? data : json_null());
  }
  pthread_rwlock_unlock(&g_lock);
  return j;
}
