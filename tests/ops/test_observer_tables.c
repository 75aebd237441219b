/* test_observer_tables.c - shared tables (keel/table.h) in the observer's
 * snapshot and its JSON: name, owner, heir, type, access, size, memory, and
 * the totals. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/observer.h"
#include "keel/table.h"
#include "rt/kt_rt.h"

static const keel_table_info *find_table(const keel_observer_snapshot *s, keel_table_t t) {
  for (size_t i = 0; i < s->ntables; i++)
    if (s->tables[i].table == t) return &s->tables[i];
  return NULL;
}

KT_CASE(snapshot_lists_tables_with_owner_size_and_memory) {
  keel_table_opts o = {
      .type = KEEL_TABLE_ORDERED_SET, .access = KEEL_TABLE_PUBLIC, .name = "obs.sessions"};
  keel_table_t t, u;
  CHECK_OK(keel_table_new(&o, &t));
  CHECK_OK(keel_table_new(NULL, &u));
  for (int i = 0; i < 100; i++) {
    char k[16];
    snprintf(k, sizeof k, "s%03d", i);
    CHECK_OK(keel_table_insert(t, k, strlen(k), "0123456789", 10));
  }
  keel_observer_snapshot s;
  CHECK_OK(keel_observer_snapshot_take(NULL, &s));
  CHECK_EQ(s.totals.tables, s.ntables);
  CHECK(s.ntables >= 2);
  const keel_table_info *ti = find_table(&s, t);
  CHECK(ti != NULL);
  CHECK_STR(ti->name, "obs.sessions");
  CHECK_EQ(ti->owner, keel_self());
  CHECK_EQ(ti->type, KEEL_TABLE_ORDERED_SET);
  CHECK_EQ(ti->access, KEEL_TABLE_PUBLIC);
  CHECK_EQ(ti->size, 100);
  CHECK(ti->memory > 100 * 14); /* at least the keys and values */
  const keel_table_info *ui = find_table(&s, u);
  CHECK(ui != NULL);
  CHECK_EQ(ui->size, 0);
  CHECK(ti->memory > ui->memory);
  CHECK(s.totals.table_memory >= ti->memory + ui->memory);
  keel_observer_snapshot_free(&s);

  char *text = NULL;
  size_t len = 0;
  CHECK_OK(keel_observer_snapshot_json(&text, &len));
  json_error_t err;
  json_t *root = json_loadb(text, len, 0, &err);
  CHECK(root != NULL);
  json_t *tabs = json_object_get(root, "tables");
  CHECK(json_is_array(tabs));
  CHECK_EQ(json_integer_value(json_object_get(json_object_get(root, "totals"), "tables")),
           (json_int_t)json_array_size(tabs));
  bool found = false;
  char self[32];
  keel_pid_format(keel_self(), self, sizeof self);
  for (size_t i = 0; i < json_array_size(tabs); i++) {
    json_t *e = json_array_get(tabs, i);
    if (strcmp(json_string_value(json_object_get(e, "name")), "obs.sessions") != 0) continue;
    found = true;
    CHECK_EQ((keel_table_t)json_integer_value(json_object_get(e, "id")), t);
    CHECK_STR(json_string_value(json_object_get(e, "owner")), self);
    CHECK(json_is_null(json_object_get(e, "heir")));
    CHECK_STR(json_string_value(json_object_get(e, "type")), "ordered_set");
    CHECK_STR(json_string_value(json_object_get(e, "access")), "public");
    CHECK_EQ(json_integer_value(json_object_get(e, "size")), 100);
    CHECK(json_integer_value(json_object_get(e, "memory")) > 1400);
  }
  CHECK(found);
  json_decref(root);
  free(text);

  CHECK_OK(keel_table_delete(t));
  CHECK_OK(keel_table_delete(u));
  CHECK_OK(keel_observer_snapshot_take(NULL, &s));
  CHECK(find_table(&s, t) == NULL);
  keel_observer_snapshot_free(&s);
}

KT_MAIN(KT_ENTRY_SCHED(snapshot_lists_tables_with_owner_size_and_memory, 2))
