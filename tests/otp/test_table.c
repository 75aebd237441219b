/* test_table.c - shared tables (include/keel/table.h).
 *
 * Every operation on both types, the access rules seen from another
 * process, ownership (freed on the owner's exit: AddressSanitizer's leak
 * check at the end of the run proves nothing is kept), heirs and
 * give-away, stale handles, and the concurrency promises: update_counter
 * from processes on two schedulers gives the exact total, and an iteration
 * racing with writers sees every stable entry exactly once.
 */
#include "otp/kt_otp.h"

#include "keel/table.h"

enum { T_HANDLE = 1, T_RESULT = 2, T_GO = 3, T_DONE = 4, T_TRANSFER_SEEN = 5 };

/* ---- helpers ------------------------------------------------------------------ */

static int put_s(keel_table_t t, const char *k, const char *v) {
  return keel_table_insert(t, k, strlen(k), v, strlen(v) + 1);
}

/* The value under k as a string ("" when absent; the test's buffer). */
static const char *get_s(keel_table_t t, const char *k) {
  static char buf[256];
  size_t n = 0;
  int rc = keel_table_lookup(t, k, strlen(k), buf, sizeof buf, &n);
  if (rc) return "";
  return buf;
}

static int64_t counter_of(keel_table_t t, const char *k) {
  int64_t v = 0;
  size_t n = 0;
  CHECK_OK(keel_table_lookup(t, k, strlen(k), &v, sizeof v, &n));
  CHECK_EQ(n, sizeof v);
  return v;
}

static keel_table_t new_table(keel_table_type type, keel_table_access access) {
  keel_table_opts o = {.type = type, .access = access};
  keel_table_t t = 0;
  CHECK_OK(keel_table_new(&o, &t));
  CHECK(t != 0);
  return t;
}

/* ---- single operations ---------------------------------------------------------- */

static void basic_ops(keel_table_type type) {
  keel_table_t t = new_table(type, KEEL_TABLE_PROTECTED);
  char key[8] = "alpha", val[8] = "one";
  CHECK_OK(keel_table_insert(t, key, strlen(key), val, strlen(val) + 1));
  strcpy(val, "XXX"); /* copied in: the caller's buffer is its own */
  CHECK_STR(get_s(t, "alpha"), "one");
  CHECK_OK(put_s(t, "alpha", "uno")); /* replaces */
  CHECK_STR(get_s(t, "alpha"), "uno");
  CHECK_EQ(keel_table_size(t), 1);

  CHECK_EQ(keel_table_insert_new(t, "alpha", 5, "x", 2), KEEL_EEXIST);
  CHECK_STR(get_s(t, "alpha"), "uno");
  CHECK_OK(keel_table_insert_new(t, "beta", 4, "two", 4));

  /* lookup: presence only, too small a buffer, absent */
  size_t n = 0;
  CHECK_OK(keel_table_lookup(t, "beta", 4, NULL, 0, &n));
  CHECK_EQ(n, 4);
  char small[2];
  CHECK_EQ(keel_table_lookup(t, "beta", 4, small, sizeof small, &n), KEEL_ERANGE);
  CHECK_EQ(n, 4);
  CHECK_EQ(keel_table_lookup(t, "gamma", 5, NULL, 0, NULL), KEEL_ENOENT);

  /* get: a copy the caller owns */
  void *v = NULL;
  CHECK_OK(keel_table_get(t, "beta", 4, &v, &n));
  CHECK_EQ(n, 4);
  CHECK_STR((char *)v, "two");
  free(v);
  CHECK_EQ(keel_table_get(t, "nope", 4, &v, &n), KEEL_ENOENT);
  CHECK(v == NULL);

  /* empty key and empty value are values like any other */
  CHECK_OK(keel_table_insert(t, NULL, 0, NULL, 0));
  CHECK_OK(keel_table_lookup(t, NULL, 0, NULL, 0, &n));
  CHECK_EQ(n, 0);
  CHECK_OK(keel_table_erase(t, NULL, 0));

  /* take: removes and hands over a copy */
  CHECK_OK(keel_table_take(t, "alpha", 5, &v, &n));
  CHECK_EQ(n, 4);
  CHECK_STR((char *)v, "uno");
  free(v);
  CHECK_EQ(keel_table_take(t, "alpha", 5, &v, &n), KEEL_ENOENT);
  CHECK_EQ(keel_table_lookup(t, "alpha", 5, NULL, 0, NULL), KEEL_ENOENT);

  CHECK_OK(keel_table_erase(t, "beta", 4));
  CHECK_EQ(keel_table_erase(t, "beta", 4), KEEL_ENOENT);
  CHECK_EQ(keel_table_size(t), 0);

  /* bad arguments */
  CHECK_EQ(keel_table_insert(t, NULL, 3, "x", 1), KEEL_EINVAL);
  CHECK_EQ(keel_table_insert(t, "k", 1, NULL, 3), KEEL_EINVAL);
  CHECK_EQ(keel_table_put(t, "k", 1, NULL, 0, 1u << 7), KEEL_EINVAL);
  CHECK_EQ(keel_table_lookup(0, "k", 1, NULL, 0, NULL), KEEL_EINVAL);

  /* many keys: stripes and buckets grow, every key stays findable */
  for (int i = 0; i < 5000; i++) {
    char k[16];
    int64_t x = i;
    snprintf(k, sizeof k, "k%d", i);
    CHECK_OK(keel_table_insert(t, k, strlen(k), &x, sizeof x));
  }
  CHECK_EQ(keel_table_size(t), 5000);
  for (int i = 0; i < 5000; i += 7) {
    char k[16];
    snprintf(k, sizeof k, "k%d", i);
    CHECK_EQ(counter_of(t, k), i);
  }
  for (int i = 0; i < 5000; i += 2) {
    char k[16];
    snprintf(k, sizeof k, "k%d", i);
    CHECK_OK(keel_table_erase(t, k, strlen(k)));
  }
  CHECK_EQ(keel_table_size(t), 2500);
  CHECK_EQ(keel_table_lookup(t, "k2", 2, NULL, 0, NULL), KEEL_ENOENT);
  CHECK_EQ(counter_of(t, "k4999"), 4999);
  CHECK_OK(keel_table_delete(t));
  CHECK_EQ(keel_table_delete(t), KEEL_EINVAL);
}

KT_CASE(set_insert_lookup_erase_take_and_insert_new) {
  basic_ops(KEEL_TABLE_SET);
}

KT_CASE(ordered_set_insert_lookup_erase_take_and_insert_new) {
  basic_ops(KEEL_TABLE_ORDERED_SET);
}

KT_CASE(handover_values_are_taken_and_given_back_without_a_copy) {
  keel_table_t t = new_table(KEEL_TABLE_SET, KEEL_TABLE_PROTECTED);
  char *block = strdup("handed over");
  CHECK_OK(keel_table_put(t, "h", 1, block, strlen(block) + 1, KEEL_TABLE_HANDOVER));
  CHECK_STR(get_s(t, "h"), "handed over"); /* lookups still copy */
  void *v = NULL;
  size_t n = 0;
  CHECK_OK(keel_table_take(t, "h", 1, &v, &n));
  CHECK(v == block); /* the very block, no copy */
  CHECK_EQ(n, 12);
  free(v);

  /* taken even when the call fails */
  CHECK_OK(put_s(t, "x", "1"));
  CHECK_EQ(keel_table_put(t, "x", 1, strdup("2"), 2, KEEL_TABLE_HANDOVER | KEEL_TABLE_NEW),
           KEEL_EEXIST);
  CHECK_EQ(keel_table_put(t, NULL, 5, strdup("3"), 2, KEEL_TABLE_HANDOVER), KEEL_EINVAL);
  /* replaced and left in the table: freed with the entry / the table */
  CHECK_OK(keel_table_put(t, "y", 1, strdup("a"), 2, KEEL_TABLE_HANDOVER));
  CHECK_OK(keel_table_put(t, "y", 1, strdup("b"), 2, KEEL_TABLE_HANDOVER));
  CHECK_OK(keel_table_put(t, "z", 1, strdup("c"), 2, KEEL_TABLE_HANDOVER));
  CHECK_OK(keel_table_erase(t, "z", 1));
  CHECK_OK(keel_table_put(t, "w", 1, strdup("d"), 2, KEEL_TABLE_HANDOVER));
  CHECK_STR(get_s(t, "y"), "b");
  CHECK_OK(keel_table_delete(t)); /* frees "b" and "d": ASan would say otherwise */
}

KT_CASE(update_counter_adds_creates_and_refuses) {
  keel_table_t t = new_table(KEEL_TABLE_SET, KEEL_TABLE_PROTECTED);
  int64_t r = 0, init = 10;
  CHECK_EQ(keel_table_update_counter(t, "c", 1, 1, NULL, &r), KEEL_ENOENT);
  CHECK_OK(keel_table_update_counter(t, "c", 1, 5, &init, &r));
  CHECK_EQ(r, 15);
  CHECK_OK(keel_table_update_counter(t, "c", 1, -20, &init, &r)); /* init ignored now */
  CHECK_EQ(r, -5);
  CHECK_EQ(counter_of(t, "c"), -5);
  CHECK_OK(put_s(t, "s", "not a counter"));
  CHECK_EQ(keel_table_update_counter(t, "s", 1, 1, NULL, &r), KEEL_EINVAL);
  int64_t big = INT64_MAX - 1;
  CHECK_OK(keel_table_insert(t, "big", 3, &big, sizeof big));
  CHECK_OK(keel_table_update_counter(t, "big", 3, 1, NULL, &r));
  CHECK_EQ(r, INT64_MAX);
  CHECK_EQ(keel_table_update_counter(t, "big", 3, 1, NULL, &r), KEEL_ERANGE);
  CHECK_EQ(counter_of(t, "big"), INT64_MAX); /* unchanged */
  CHECK_OK(keel_table_delete(t));
}

/* Values of 1 to 8 bytes are one word, overwritten in place under a shared
 * hold: each length reads back whole and no longer, an overwrite changes
 * neither the size nor the memory figure, and a change of length or a
 * handed-over value still takes the ordinary way. */
static void small_values(keel_table_type type) {
  keel_table_t t = new_table(type, KEEL_TABLE_PROTECTED);
  for (size_t n = 1; n <= 8; n++) {
    char key[8];
    snprintf(key, sizeof key, "w%zu", n);
    unsigned char a[8], b[8];
    memset(a, 'a', sizeof a);
    memset(b, (int)('0' + n), sizeof b);
    CHECK_OK(keel_table_insert(t, key, strlen(key), a, n));
    keel_table_info before, after;
    CHECK_OK(keel_table_info_of(t, &before));
    CHECK_OK(keel_table_insert(t, key, strlen(key), b, n));
    CHECK_OK(keel_table_info_of(t, &after));
    CHECK_EQ(after.size, before.size);
    CHECK_EQ(after.memory, before.memory);
    /* a buffer of exactly n bytes: AddressSanitizer sees a longer copy */
    unsigned char *buf = malloc(n);
    size_t got = 0;
    CHECK_OK(keel_table_lookup(t, key, strlen(key), buf, n, &got));
    CHECK_EQ(got, n);
    CHECK(memcmp(buf, b, n) == 0);
    CHECK_EQ(keel_table_lookup(t, key, strlen(key), buf, n - 1, &got), KEEL_ERANGE);
    free(buf);
    if (n < 8) CHECK_EQ(keel_table_update_counter(t, key, strlen(key), 1, NULL, NULL), KEEL_EINVAL);
  }
  /* another length: a new entry, read back at its own length */
  CHECK_OK(keel_table_insert(t, "w3", 2, "xyzz", 5));
  CHECK_STR(get_s(t, "w3"), "xyzz");
  CHECK_OK(keel_table_insert(t, "w3", 2, "q", 2));
  CHECK_STR(get_s(t, "w3"), "q");
  /* an 8-byte counter overwritten by insert counts on from the new value */
  int64_t c = 5, r = 0;
  CHECK_OK(keel_table_insert(t, "c", 1, &c, sizeof c));
  CHECK_OK(keel_table_update_counter(t, "c", 1, 1, NULL, &r));
  c = 100;
  CHECK_OK(keel_table_insert(t, "c", 1, &c, sizeof c));
  CHECK_OK(keel_table_update_counter(t, "c", 1, 1, NULL, &r));
  CHECK_EQ(r, 101);
  /* a handed-over 8-byte block is replaced by a copy, never written into */
  int64_t *block = malloc(sizeof *block);
  *block = 7;
  CHECK_OK(keel_table_put(t, "h", 1, block, sizeof *block, KEEL_TABLE_HANDOVER));
  CHECK_OK(keel_table_insert(t, "h", 1, &c, sizeof c));
  CHECK_EQ(counter_of(t, "h"), 100);
  void *v = NULL;
  size_t n = 0;
  CHECK_OK(keel_table_take(t, "h", 1, &v, &n)); /* the block was freed: ASan sees a leak or */
  CHECK_EQ(n, sizeof c);                        /* a double free otherwise */
  CHECK_EQ(*(int64_t *)v, 100);
  free(v);
  CHECK_OK(keel_table_delete(t));
}

KT_CASE(small_values_are_overwritten_in_place_and_read_back_at_their_length) {
  small_values(KEEL_TABLE_SET);
  small_values(KEEL_TABLE_ORDERED_SET);
}

/* ---- access ------------------------------------------------------------------------ */

typedef struct probe_arg {
  keel_pid_t test;
  keel_table_t table;
} probe_arg;

/* Reports, as one number, what a non-owner may do: bit 0 read ok, bit 1
 * write ok; and 4 when every refusal was KEEL_EPERM. */
static void prober(void *arg) {
  probe_arg *pa = arg;
  int rc_r = keel_table_lookup(pa->table, "k", 1, NULL, 0, NULL);
  int rc_w = keel_table_insert(pa->table, "n", 1, "v", 2);
  int rc_e = keel_table_erase(pa->table, "k", 1);
  int rc_c = keel_table_update_counter(pa->table, "c", 1, 1, NULL, NULL);
  int rc_d = keel_table_delete(pa->table);
  uint64_t bits = (rc_r == 0) | (uint64_t)(rc_w == 0) << 1;
  bool perm = (rc_r == 0 || rc_r == KEEL_EPERM) && (rc_w == 0 || rc_w == KEEL_EPERM) &&
              (rc_e == 0 || rc_e == KEEL_EPERM) && (rc_c == 0 || rc_c == KEEL_EPERM) &&
              rc_d == KEEL_EPERM; /* only the owner deletes, whatever the access */
  kt_send_u64(pa->test, T_RESULT, bits | (perm ? 4u : 0u));
}

static uint64_t probe(keel_table_t t) {
  probe_arg pa = {keel_self(), t};
  keel_ref_t ref;
  keel_pid_t p = kt_spawn_monitor(prober, &pa, 1, &ref);
  uint64_t r = kt_recv_tag_u64(T_RESULT, KT_LONG);
  kt_wait_down(ref, p, NULL, 0);
  return r;
}

KT_CASE(access_is_enforced_for_other_processes) {
  int64_t one = 1;
  keel_table_t prot = new_table(KEEL_TABLE_SET, KEEL_TABLE_PROTECTED);
  keel_table_t pub = new_table(KEEL_TABLE_ORDERED_SET, KEEL_TABLE_PUBLIC);
  keel_table_t priv = new_table(KEEL_TABLE_SET, KEEL_TABLE_PRIVATE);
  keel_table_t tabs[3] = {prot, pub, priv};
  for (int i = 0; i < 3; i++) {
    CHECK_OK(put_s(tabs[i], "k", "v"));
    CHECK_OK(keel_table_insert(tabs[i], "c", 1, &one, sizeof one));
  }
  CHECK_EQ(probe(prot), 1u | 4u); /* reads, cannot write */
  CHECK_EQ(probe(pub), 3u | 4u);  /* reads and writes */
  CHECK_EQ(probe(priv), 0u | 4u); /* neither */
  /* nothing the refused calls tried happened */
  CHECK_STR(get_s(prot, "k"), "v");
  CHECK_STR(get_s(priv, "k"), "v");
  CHECK_EQ(counter_of(prot, "c"), 1);
  CHECK_EQ(counter_of(pub, "c"), 2); /* public: the prober's increment */
  CHECK_STR(get_s(pub, "n"), "v");
  CHECK_EQ(keel_table_lookup(pub, "k", 1, NULL, 0, NULL), KEEL_ENOENT); /* it erased it */
  /* scans follow the same rule */
  keel_table_rows rows;
  CHECK_OK(keel_table_select(priv, NULL, NULL, 0, &rows));
  CHECK_EQ(rows.n, 2);
  keel_table_rows_free(&rows);
  for (int i = 0; i < 3; i++)
    CHECK_OK(keel_table_delete(tabs[i]));
}

/* ---- ownership ------------------------------------------------------------------------ */

typedef struct owner_arg {
  keel_pid_t test;
  keel_table_opts opts;
  int entries;
} owner_arg;

/* Creates a table, fills it (copies and handed-over blocks), reports the
 * handle, then waits for T_GO and exits (or is killed first). */
static void owner(void *arg) {
  owner_arg *oa = arg;
  keel_table_t t = 0;
  CHECK_OK(keel_table_new(&oa->opts, &t));
  for (int i = 0; i < oa->entries; i++) {
    char k[16];
    snprintf(k, sizeof k, "e%d", i);
    if (i % 2)
      CHECK_OK(keel_table_put(t, k, strlen(k), strdup(k), strlen(k) + 1, KEEL_TABLE_HANDOVER));
    else
      CHECK_OK(keel_table_insert(t, k, strlen(k), k, strlen(k) + 1));
  }
  kt_send_u64(oa->test, T_HANDLE, t);
  keel_msg_free(kt_recv_tag(T_GO, KEEL_INFINITY));
}

static bool table_gone(keel_table_t t) {
  keel_table_info info;
  return keel_table_info_of(t, &info) == KEEL_EINVAL;
}

KT_CASE(table_is_freed_when_its_owner_exits_or_is_killed) {
  kt_quiet();
  for (int round = 0; round < 2; round++) {
    owner_arg oa = {
        keel_self(),
        {.type = round ? KEEL_TABLE_ORDERED_SET : KEEL_TABLE_SET, .name = "owned.table"},
        1000};
    keel_ref_t ref;
    keel_pid_t p = kt_spawn_monitor(owner, &oa, 1, &ref);
    keel_table_t t = kt_recv_tag_u64(T_HANDLE, KT_LONG);
    CHECK_EQ(keel_table_whereis("owned.table"), t);
    CHECK_EQ(keel_table_size(t), 1000);
    keel_table_info info;
    CHECK_OK(keel_table_info_of(t, &info));
    CHECK_EQ(info.owner, p);
    CHECK(info.memory > 1000 * 16);
    if (round == 0)
      kt_send_tag(p, T_GO);
    else
      CHECK_OK(keel_exit_signal(p, KEEL_REASON_KILL, NULL));
    kt_wait_down(ref, p, NULL, 0);
    KT_WAIT_UNTIL(table_gone(t));
    CHECK_EQ(keel_table_lookup(t, "e0", 2, NULL, 0, NULL), KEEL_EINVAL);
    CHECK_EQ(keel_table_insert(t, "e0", 2, "x", 1), KEEL_EINVAL);
    CHECK_EQ(keel_table_whereis("owned.table"), 0); /* the name is free again */
  }
}

typedef struct heir_arg {
  keel_pid_t test;
} heir_arg;

/* Waits for the transfer, reports its data, writes (now the owner), waits
 * for T_GO and exits. */
static void heir(void *arg) {
  heir_arg *ha = arg;
  keel_msg_t *m = kt_recv_tag(KEEL_TABLE_TAG_TRANSFER, KT_LONG);
  keel_table_transfer tr;
  CHECK_EQ(keel_msg_size(m), sizeof tr);
  memcpy(&tr, keel_msg_data(m), sizeof tr);
  keel_msg_free(m);
  CHECK_OK(put_s(tr.table, "heir", "wrote"));
  keel_table_info info;
  CHECK_OK(keel_table_info_of(tr.table, &info));
  CHECK_EQ(info.owner, keel_self());
  CHECK_EQ(info.heir, 0);
  kt_send_u64(ha->test, T_TRANSFER_SEEN, tr.data);
  keel_msg_free(kt_recv_tag(T_GO, KEEL_INFINITY));
}

KT_CASE(heir_inherits_the_table_with_a_message_and_frees_it_on_its_own_exit) {
  kt_quiet();
  heir_arg ha = {keel_self()};
  keel_ref_t href, oref;
  keel_pid_t h = kt_spawn_monitor(heir, &ha, 0, &href);
  owner_arg oa = {keel_self(), {.heir = h, .heir_data = 4242, .name = "inherited"}, 10};
  keel_pid_t o = kt_spawn_monitor(owner, &oa, 1, &oref);
  keel_table_t t = kt_recv_tag_u64(T_HANDLE, KT_LONG);
  kt_send_tag(o, T_GO);
  kt_wait_down(oref, o, NULL, 0);
  CHECK_EQ(kt_recv_tag_u64(T_TRANSFER_SEEN, KT_LONG), 4242);
  CHECK_EQ(keel_table_size(t), 11); /* the entries survived, plus the heir's */
  CHECK_STR(get_s(t, "heir"), "wrote");
  CHECK_EQ(keel_table_whereis("inherited"), t);
  kt_send_tag(h, T_GO);
  kt_wait_down(href, h, NULL, 0);
  KT_WAIT_UNTIL(table_gone(t)); /* no heir of its own: freed */

  /* a dead heir is skipped: the table is freed */
  keel_ref_t dref;
  keel_pid_t dead = kt_spawn_monitor(heir, &ha, 0, &dref);
  oa.opts.heir = dead;
  o = kt_spawn_monitor(owner, &oa, 1, &oref);
  t = kt_recv_tag_u64(T_HANDLE, KT_LONG);
  CHECK_OK(keel_exit_signal(dead, KEEL_REASON_KILL, NULL));
  kt_wait_down(dref, dead, NULL, 0);
  kt_send_tag(o, T_GO);
  kt_wait_down(oref, o, NULL, 0);
  KT_WAIT_UNTIL(table_gone(t));
}

KT_CASE(give_away_makes_another_process_the_owner) {
  kt_quiet();
  heir_arg ha = {keel_self()};
  keel_ref_t href;
  keel_pid_t h = kt_spawn_monitor(heir, &ha, 1, &href);
  keel_table_t t = new_table(KEEL_TABLE_SET, KEEL_TABLE_PROTECTED);
  CHECK_EQ(keel_table_give_away(t, keel_self(), 0), KEEL_EINVAL);
  CHECK_OK(keel_table_give_away(t, h, 7));
  CHECK_EQ(kt_recv_tag_u64(T_TRANSFER_SEEN, KT_LONG), 7);
  /* the giver is an ordinary process now */
  CHECK_EQ(put_s(t, "k", "v"), KEEL_EPERM);
  CHECK_EQ(keel_table_delete(t), KEEL_EPERM);
  CHECK_EQ(keel_table_give_away(t, h, 0), KEEL_EPERM);
  CHECK_EQ(keel_table_set_heir(t, keel_self(), 0), KEEL_EPERM);
  CHECK_STR(get_s(t, "heir"), "wrote");
  kt_send_tag(h, T_GO);
  kt_wait_down(href, h, NULL, 0);
  KT_WAIT_UNTIL(table_gone(t));
  /* to a dead process: refused, nothing changes */
  t = new_table(KEEL_TABLE_SET, KEEL_TABLE_PROTECTED);
  CHECK_EQ(keel_table_give_away(t, h, 0), KEEL_ENOPROC);
  CHECK_OK(put_s(t, "still", "mine"));
  CHECK_OK(keel_table_delete(t));
}

KT_CASE(names_are_unique_and_a_stale_handle_is_refused) {
  keel_table_opts o = {.name = "named"};
  keel_table_t a = 0, b = 0;
  CHECK_OK(keel_table_new(&o, &a));
  CHECK_EQ(keel_table_whereis("named"), a);
  CHECK_EQ(keel_table_new(&o, &b), KEEL_EEXIST);
  CHECK_EQ(keel_table_whereis("other"), 0);
  keel_table_info info;
  CHECK_OK(keel_table_info_of(a, &info));
  CHECK_STR(info.name, "named");
  CHECK_EQ(info.type, KEEL_TABLE_SET);
  CHECK_EQ(info.access, KEEL_TABLE_PROTECTED);
  CHECK_OK(put_s(a, "k", "old"));
  CHECK_OK(keel_table_delete(a));
  CHECK_EQ(keel_table_whereis("named"), 0);
  /* the slot is reused with a new generation: the old handle stays dead */
  CHECK_OK(keel_table_new(&o, &b));
  CHECK((uint32_t)b == (uint32_t)a);
  CHECK(b != a);
  CHECK_OK(put_s(b, "k", "new"));
  CHECK_EQ(keel_table_lookup(a, "k", 1, NULL, 0, NULL), KEEL_EINVAL);
  CHECK_EQ(put_s(a, "k", "stale"), KEEL_EINVAL);
  CHECK_STR(get_s(b, "k"), "new");
  CHECK_OK(keel_table_delete(b));
  /* bad options */
  keel_table_opts bad = {.type = 9};
  CHECK_EQ(keel_table_new(&bad, &a), KEEL_EINVAL);
  bad = (keel_table_opts){.name = ""};
  CHECK_EQ(keel_table_new(&bad, &a), KEEL_EINVAL);
  bad = (keel_table_opts){.heir = keel_self()};
  CHECK_EQ(keel_table_new(&bad, &a), KEEL_EINVAL);
}

static void *outside_thread_new(void *arg) {
  keel_table_t t;
  *(int *)arg = keel_table_new(NULL, &t);
  return NULL;
}

KT_CASE(a_table_needs_a_process_to_own_it) {
  int rc = 0;
  pthread_t th;
  CHECK_OK(pthread_create(&th, NULL, outside_thread_new, &rc));
  pthread_join(th, NULL);
  CHECK_EQ(rc, KEEL_ENOTPROC);
}

/* ---- scans ----------------------------------------------------------------------------- */

static void be_key(unsigned char out[4], uint32_t v) {
  out[0] = (unsigned char)(v >> 24);
  out[1] = (unsigned char)(v >> 16);
  out[2] = (unsigned char)(v >> 8);
  out[3] = (unsigned char)v;
}

static uint32_t from_be(const void *p) {
  const unsigned char *b = p;
  return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

typedef struct order_check {
  long last;
  size_t n;
} order_check;

static int check_order(const void *key, size_t klen, const void *val, size_t vlen, void *ud) {
  order_check *oc = ud;
  CHECK_EQ(klen, 4);
  CHECK_EQ(vlen, 4);
  CHECK(memcmp(key, val, 4) == 0);
  long k = (long)from_be(key);
  CHECK(k > oc->last);
  oc->last = k;
  oc->n++;
  return 0;
}

KT_CASE(ordered_set_iterates_ranges_and_prefixes_in_key_order) {
  keel_table_t t = new_table(KEEL_TABLE_ORDERED_SET, KEEL_TABLE_PROTECTED);
  /* 3000 keys inserted in a scrambled order (3001 is prime to 7919) */
  for (uint32_t i = 0; i < 3000; i++) {
    unsigned char k[4];
    be_key(k, (i * 7919u) % 3001u);
    CHECK_OK(keel_table_insert(t, k, 4, k, 4));
  }
  CHECK_EQ(keel_table_size(t), 3000);
  order_check oc = {-1, 0};
  CHECK_OK(keel_table_foreach(t, check_order, &oc));
  CHECK_EQ(oc.n, 3000); /* crosses many 256-key runs */

  unsigned char lo[4], hi[4];
  be_key(lo, 100);
  be_key(hi, 700);
  keel_table_rows rows;
  CHECK_OK(keel_table_range(t, lo, 4, hi, 4, 0, &rows));
  /* 0..3000 minus the one value (i * 7919) % 3001 never takes: 3000 */
  size_t want = 0;
  for (uint32_t v = 100; v < 700; v++)
    want += v != (3000u * 7919u) % 3001u;
  CHECK_EQ(rows.n, want);
  for (size_t i = 1; i < rows.n; i++)
    CHECK(from_be(rows.rows[i - 1].key) < from_be(rows.rows[i].key));
  CHECK(from_be(rows.rows[0].key) >= 100);
  keel_table_rows_free(&rows);
  CHECK_OK(keel_table_range(t, lo, 4, hi, 4, 10, &rows)); /* a limit */
  CHECK_EQ(rows.n, 10);
  keel_table_rows_free(&rows);
  CHECK_OK(keel_table_range(t, NULL, 0, lo, 4, 0, &rows)); /* open start */
  CHECK(rows.n >= 99 && rows.n <= 100);
  CHECK_EQ(from_be(rows.rows[0].key), 0);
  keel_table_rows_free(&rows);
  CHECK_OK(keel_table_range(t, hi, 4, NULL, 0, 0, &rows)); /* open end */
  CHECK_EQ(from_be(rows.rows[rows.n - 1].key), 3000);
  keel_table_rows_free(&rows);

  /* prefixes, with string keys that share and extend each other */
  keel_table_t s = new_table(KEEL_TABLE_ORDERED_SET, KEEL_TABLE_PROTECTED);
  const char *keys[] = {"user.10", "user.2", "user", "user.1", "users", "order.1", "user.1.x", "v"};
  for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
    CHECK_OK(put_s(s, keys[i], keys[i]));
  CHECK_OK(keel_table_prefix(s, "user.", 5, 0, &rows));
  CHECK_EQ(rows.n, 4);
  const char *want_keys[] = {"user.1", "user.1.x", "user.10", "user.2"};
  for (size_t i = 0; i < rows.n; i++) {
    CHECK_EQ(rows.rows[i].klen, strlen(want_keys[i]));
    CHECK(memcmp(rows.rows[i].key, want_keys[i], rows.rows[i].klen) == 0);
    CHECK_STR((const char *)rows.rows[i].val, want_keys[i]);
  }
  keel_table_rows_free(&rows);
  CHECK_OK(keel_table_prefix(s, "user", 4, 0, &rows)); /* "user" itself, "users" too */
  CHECK_EQ(rows.n, 6);
  keel_table_rows_free(&rows);
  CHECK_OK(keel_table_prefix(s, "zzz", 3, 0, &rows));
  CHECK_EQ(rows.n, 0);
  keel_table_rows_free(&rows);
  CHECK_OK(keel_table_prefix(s, NULL, 0, 0, &rows)); /* everything */
  CHECK_EQ(rows.n, 8);
  CHECK_EQ(rows.rows[0].klen, 7); /* "order.1" first */
  keel_table_rows_free(&rows);

  /* range and prefix are for ordered sets */
  keel_table_t set = new_table(KEEL_TABLE_SET, KEEL_TABLE_PROTECTED);
  CHECK_EQ(keel_table_prefix(set, "a", 1, 0, &rows), KEEL_EINVAL);
  CHECK_EQ(keel_table_range(set, NULL, 0, NULL, 0, 0, &rows), KEEL_EINVAL);
  CHECK_OK(keel_table_delete(set));
  CHECK_OK(keel_table_delete(s));
  CHECK_OK(keel_table_delete(t));
}

static bool even_value(const void *key, size_t klen, const void *val, size_t vlen, void *ud) {
  (void)key;
  (void)klen;
  int64_t v;
  CHECK_EQ(vlen, sizeof v);
  memcpy(&v, val, sizeof v);
  *(int *)ud += 1;
  return v % 2 == 0;
}

static int stop_at_three(const void *key, size_t klen, const void *val, size_t vlen, void *ud) {
  (void)key;
  (void)klen;
  (void)val;
  (void)vlen;
  return ++*(int *)ud == 3 ? 99 : 0;
}

KT_CASE(select_returns_what_the_predicate_accepts_and_foreach_stops_when_told) {
  for (int type = 0; type < 2; type++) {
    keel_table_t t = new_table((keel_table_type)type, KEEL_TABLE_PROTECTED);
    for (int64_t i = 0; i < 1000; i++) {
      char k[16];
      snprintf(k, sizeof k, "n%03d", (int)i);
      CHECK_OK(keel_table_insert(t, k, strlen(k), &i, sizeof i));
    }
    int calls = 0;
    keel_table_rows rows;
    CHECK_OK(keel_table_select(t, even_value, &calls, 0, &rows));
    CHECK_EQ(calls, 1000);
    CHECK_EQ(rows.n, 500);
    int64_t sum = 0;
    for (size_t i = 0; i < rows.n; i++) {
      int64_t v;
      memcpy(&v, rows.rows[i].val, sizeof v);
      CHECK(v % 2 == 0);
      sum += v;
    }
    CHECK_EQ(sum, 249500); /* 0 + 2 + ... + 998 */
    keel_table_rows_free(&rows);
    calls = 0;
    CHECK_OK(keel_table_select(t, even_value, &calls, 7, &rows));
    CHECK_EQ(rows.n, 7);
    keel_table_rows_free(&rows);
    int seen = 0;
    CHECK_EQ(keel_table_foreach(t, stop_at_three, &seen), 99);
    CHECK_EQ(seen, 3);
    CHECK_OK(keel_table_delete(t));
  }
}

/* ---- concurrency -------------------------------------------------------------------------- */

typedef struct counter_arg {
  keel_pid_t test;
  keel_table_t table;
  uint64_t rounds;
} counter_arg;

enum { KEYS = 16 };

static void incrementer(void *arg) {
  counter_arg *ca = arg;
  int64_t zero = 0;
  for (uint64_t i = 0; i < ca->rounds; i++) {
    char k[8];
    snprintf(k, sizeof k, "c%d", (int)(i % KEYS));
    CHECK_OK(keel_table_update_counter(ca->table, k, strlen(k), 1, &zero, NULL));
    if (i % 64 == 0) keel_yield(); /* interleave the processes of one scheduler too */
  }
  kt_send_u64(ca->test, T_DONE, 0);
}

KT_CASE(update_counter_from_processes_on_two_schedulers_loses_nothing) {
  enum { N = 8 };
  uint64_t rounds = kt_scale_tsan(20000, 2000);
  for (int type = 0; type < 2; type++) {
    keel_table_t t = new_table((keel_table_type)type, KEEL_TABLE_PUBLIC);
    counter_arg args[N];
    keel_ref_t refs[N];
    keel_pid_t pids[N];
    for (int i = 0; i < N; i++) {
      args[i] = (counter_arg){keel_self(), t, rounds};
      pids[i] = kt_spawn_monitor(incrementer, &args[i], i % 2, &refs[i]);
    }
    for (int i = 0; i < N; i++) {
      (void)kt_recv_tag_u64(T_DONE, KT_LONG);
      CHECK_EQ(kt_wait_down(refs[i], pids[i], NULL, 0), KEEL_REASON_NORMAL);
    }
    int64_t total = 0;
    for (int k = 0; k < KEYS; k++) {
      char key[8];
      snprintf(key, sizeof key, "c%d", k);
      total += counter_of(t, key);
    }
    CHECK_EQ(total, (int64_t)(N * rounds));
    CHECK_OK(keel_table_delete(t));
  }
}

/* True for "p" and "q" when every byte of the value is the same: a torn
 * read shows as mixed bytes; false for the others. */
static bool all_bytes_equal(const void *key, size_t klen, const void *val, size_t vlen, void *ud) {
  (void)ud;
  if (klen != 1 || (*(const char *)key != 'p' && *(const char *)key != 'q')) return false;
  const unsigned char *b = val;
  for (size_t i = 1; i < vlen; i++)
    if (b[i] != b[0]) return false;
  return true;
}

/* Overwrites racing with counter updates and reads of the same keys, on two
 * schedulers. "p" (8 bytes) and "q" (4 bytes): values whose bytes are all
 * equal, so a torn write or read shows as mixed bytes, in a lookup and in a
 * select's predicate. On x86-64 and aarch64 an aligned word copy does not
 * tear, so a plain copy in place of the atomic one fails here only under
 * ThreadSanitizer (make test runs this suite under it). "c": the setter
 * stores k << 32 for k = 1, 2, ... while the adder adds 1; every update is
 * atomic with every overwrite, so the adder's results never go back to an
 * older k, each result is the one before plus 1 or a newer k plus at least
 * 1, and the end value has the last k. */
typedef struct race_arg {
  keel_pid_t test;
  keel_table_t table;
  uint64_t rounds;
  int role; /* 0 setter, 1 adder, 2 reader */
} race_arg;

static void racer(void *arg) {
  race_arg *ra = arg;
  keel_table_t t = ra->table;
  int64_t prev = 0;
  for (uint64_t i = 1; i <= ra->rounds; i++) {
    if (ra->role == 0) {
      uint64_t p = 0x0101010101010101ull * (i % 255 + 1);
      int64_t c = (int64_t)(i << 32);
      uint32_t q = 0x01010101u * (uint32_t)(i % 255 + 1);
      CHECK_OK(keel_table_insert(t, "p", 1, &p, sizeof p));
      CHECK_OK(keel_table_insert(t, "q", 1, &q, sizeof q));
      CHECK_OK(keel_table_insert(t, "c", 1, &c, sizeof c));
    } else if (ra->role == 1) {
      int64_t r = 0;
      CHECK_OK(keel_table_update_counter(t, "c", 1, 1, NULL, &r));
      CHECK(r == prev + 1 || (r >> 32 > prev >> 32 && (r & 0xffffffff) >= 1));
      prev = r;
    } else {
      uint64_t p = 0;
      uint32_t q = 0;
      CHECK_OK(keel_table_lookup(t, "p", 1, &p, sizeof p, NULL));
      CHECK_EQ(p, 0x0101010101010101ull * (p & 0xff));
      CHECK_OK(keel_table_lookup(t, "q", 1, &q, sizeof q, NULL));
      CHECK_EQ(q, 0x01010101u * (q & 0xff));
      if (i % 16 == 0) { /* a predicate sees whole words too */
        keel_table_rows rows = {0};
        CHECK_OK(keel_table_select(t, all_bytes_equal, NULL, 0, &rows));
        CHECK_EQ(rows.n, (size_t)2); /* "p" and "q", whole */
        keel_table_rows_free(&rows);
      }
    }
    if (i % 64 == 0) keel_yield();
  }
  kt_send_u64(ra->test, T_DONE, 0);
}

KT_CASE(overwrites_race_with_counter_updates_and_reads_atomically) {
  uint64_t rounds = kt_scale_tsan(50000, 5000);
  for (int type = 0; type < 2; type++) {
    keel_table_t t = new_table((keel_table_type)type, KEEL_TABLE_PUBLIC);
    uint64_t p0 = 0x0101010101010101ull;
    uint32_t q0 = 0x01010101u;
    int64_t c0 = 0;
    CHECK_OK(keel_table_insert(t, "p", 1, &p0, sizeof p0));
    CHECK_OK(keel_table_insert(t, "q", 1, &q0, sizeof q0));
    CHECK_OK(keel_table_insert(t, "c", 1, &c0, sizeof c0));
    race_arg args[3];
    keel_ref_t refs[3];
    keel_pid_t pids[3];
    for (int i = 0; i < 3; i++) {
      args[i] = (race_arg){keel_self(), t, rounds, i};
      pids[i] =
          kt_spawn_monitor(racer, &args[i], i == 0 ? 0 : 1, &refs[i]); /* the setter alone on 0 */
    }
    for (int i = 0; i < 3; i++) {
      (void)kt_recv_tag_u64(T_DONE, KT_LONG);
      CHECK_EQ(kt_wait_down(refs[i], pids[i], NULL, 0), KEEL_REASON_NORMAL);
    }
    int64_t end = counter_of(t, "c");
    CHECK_EQ(end >> 32, (int64_t)rounds);
    CHECK((end & 0xffffffff) <= (int64_t)rounds);
    CHECK_OK(keel_table_delete(t));
  }
}

typedef struct churn_arg {
  keel_pid_t test;
  keel_table_t table;
  _Atomic bool *stop;
} churn_arg;

/* Inserts, replaces and erases "v.*" keys (and rewrites the stable keys'
 * values) until told to stop. */
static void churner(void *arg) {
  churn_arg *ca = arg;
  uint64_t i = 0;
  while (!atomic_load(ca->stop)) {
    char k[16];
    snprintf(k, sizeof k, "v.%u", (unsigned)(i % 500));
    int64_t x = (int64_t)i;
    if (i % 3 == 2)
      (void)keel_table_erase(ca->table, k, strlen(k));
    else
      CHECK_OK(keel_table_insert(ca->table, k, strlen(k), &x, sizeof x));
    snprintf(k, sizeof k, "s.%04u", (unsigned)(i % 1000));
    CHECK_OK(keel_table_insert(ca->table, k, strlen(k), &x, sizeof x));
    if (++i % 32 == 0) keel_yield();
  }
  kt_send_u64(ca->test, T_DONE, i);
}

typedef struct seen {
  uint8_t stable[1000];
  size_t others;
} seen;

static int note(const void *key, size_t klen, const void *val, size_t vlen, void *ud) {
  seen *s = ud;
  CHECK_EQ(vlen, sizeof(int64_t));
  (void)val;
  if (klen == 6 && memcmp(key, "s.", 2) == 0) {
    char digits[5] = {0}; /* keys are not NUL-terminated */
    memcpy(digits, (const char *)key + 2, 4);
    unsigned i = (unsigned)atoi(digits);
    CHECK(i < 1000);
    s->stable[i]++;
  } else {
    CHECK(klen >= 3 && memcmp(key, "v.", 2) == 0);
    s->others++;
  }
  return 0;
}

KT_CASE(iteration_during_writes_sees_every_stable_entry_exactly_once) {
  for (int type = 0; type < 2; type++) {
    keel_table_t t = new_table((keel_table_type)type, KEEL_TABLE_PUBLIC);
    for (int64_t i = 0; i < 1000; i++) {
      char k[16];
      snprintf(k, sizeof k, "s.%04u", (unsigned)i);
      CHECK_OK(keel_table_insert(t, k, strlen(k), &i, sizeof i));
    }
    _Atomic bool stop = false;
    churn_arg ca[2] = {{keel_self(), t, &stop}, {keel_self(), t, &stop}};
    keel_ref_t refs[2];
    keel_pid_t pids[2];
    for (int i = 0; i < 2; i++)
      pids[i] = kt_spawn_monitor(churner, &ca[i], i, &refs[i]);
    int rounds = (int)kt_scale_tsan(50, 10);
    for (int r = 0; r < rounds; r++) {
      seen *s = calloc(1, sizeof *s);
      CHECK_OK(keel_table_foreach(t, note, s));
      for (int i = 0; i < 1000; i++)
        CHECK_EQ(s->stable[i], 1);
      CHECK(s->others <= 500);
      free(s);
      keel_yield();
    }
    atomic_store(&stop, true);
    uint64_t writes = 0;
    for (int i = 0; i < 2; i++) {
      writes += kt_recv_tag_u64(T_DONE, KT_LONG);
      CHECK_EQ(kt_wait_down(refs[i], pids[i], NULL, 0), KEEL_REASON_NORMAL);
    }
    CHECK(writes > 0);
    CHECK_OK(keel_table_delete(t));
  }
}

/* Many tables made and dropped by processes on both schedulers while others
 * use them: handles of dropped tables must fail cleanly, never crash. */
typedef struct life_arg {
  keel_pid_t test;
  _Atomic keel_table_t *shared;
  uint64_t rounds;
} life_arg;

static void creator(void *arg) {
  life_arg *la = arg;
  for (uint64_t i = 0; i < la->rounds; i++) {
    keel_table_opts o = {.type = (keel_table_type)(i % 2), .access = KEEL_TABLE_PUBLIC};
    keel_table_t t;
    CHECK_OK(keel_table_new(&o, &t));
    CHECK_OK(put_s(t, "k", "v"));
    atomic_store(la->shared, t);
    keel_yield();
    CHECK_OK(keel_table_delete(t));
  }
  kt_send_u64(la->test, T_DONE, 0);
}

static void user(void *arg) {
  life_arg *la = arg;
  uint64_t ok = 0;
  for (uint64_t i = 0; i < la->rounds * 4; i++) {
    keel_table_t t = atomic_load(la->shared);
    int rc = put_s(t, "u", "w");
    CHECK(rc == 0 || rc == KEEL_EINVAL);
    rc = keel_table_lookup(t, "k", 1, NULL, 0, NULL);
    CHECK(rc == 0 || rc == KEEL_EINVAL || rc == KEEL_ENOENT);
    ok += rc == 0;
    if (i % 8 == 0) keel_yield();
  }
  kt_send_u64(la->test, T_DONE, ok);
}

KT_CASE(tables_created_and_deleted_while_used_from_another_scheduler) {
  _Atomic keel_table_t shared = 0;
  life_arg la = {keel_self(), &shared, kt_scale_tsan(3000, 300)};
  keel_ref_t r1, r2;
  keel_pid_t p1 = kt_spawn_monitor(creator, &la, 0, &r1);
  keel_pid_t p2 = kt_spawn_monitor(user, &la, 1, &r2);
  (void)kt_recv_tag_u64(T_DONE, KT_LONG);
  (void)kt_recv_tag_u64(T_DONE, KT_LONG);
  CHECK_EQ(kt_wait_down(r1, p1, NULL, 0), KEEL_REASON_NORMAL);
  CHECK_EQ(kt_wait_down(r2, p2, NULL, 0), KEEL_REASON_NORMAL);
}

/* Threads outside the runtime may use a public table; past the 64 threads
 * that get a reader flag of their own, readers take the writers' path. All
 * threads are held at a barrier while they hold their slots, so some of
 * them run out. */
enum { THREADS = 72 };
typedef struct thread_arg {
  keel_table_t table;
  pthread_barrier_t *barrier;
  int index;
  int ok;
} thread_arg;

static void *thread_user(void *arg) {
  thread_arg *ta = arg;
  int64_t zero = 0;
  /* a first read takes this thread's reader slot (or finds none left) */
  ta->ok = keel_table_lookup(ta->table, "k", 1, NULL, 0, NULL) == 0;
  pthread_barrier_wait(ta->barrier);
  for (int i = 0; i < 200; i++) {
    char k[16];
    snprintf(k, sizeof k, "t%d", ta->index);
    ta->ok &= keel_table_update_counter(ta->table, k, strlen(k), 1, &zero, NULL) == 0;
    ta->ok &= keel_table_update_counter(ta->table, "all", 3, 1, &zero, NULL) == 0;
    ta->ok &= keel_table_lookup(ta->table, "k", 1, NULL, 0, NULL) == 0;
  }
  ta->ok &= keel_table_new(NULL, &(keel_table_t){0}) == KEEL_ENOTPROC;
  return NULL;
}

KT_CASE(threads_outside_the_runtime_read_and_write_a_public_table) {
  keel_table_t t = new_table(KEEL_TABLE_SET, KEEL_TABLE_PUBLIC);
  CHECK_OK(put_s(t, "k", "v"));
  pthread_barrier_t barrier;
  CHECK_OK(pthread_barrier_init(&barrier, NULL, THREADS));
  static thread_arg args[THREADS];
  pthread_t th[THREADS];
  for (int i = 0; i < THREADS; i++) {
    args[i] = (thread_arg){t, &barrier, i, 0};
    CHECK_OK(pthread_create(&th[i], NULL, thread_user, &args[i]));
  }
  for (int i = 0; i < THREADS; i++) {
    pthread_join(th[i], NULL);
    CHECK(args[i].ok);
  }
  pthread_barrier_destroy(&barrier);
  CHECK_EQ(counter_of(t, "all"), THREADS * 200);
  CHECK_EQ(counter_of(t, "t0"), 200);
  CHECK_EQ(counter_of(t, "t71"), 200);
  CHECK_OK(keel_table_delete(t));
}

typedef struct count_tables {
  size_t n, named;
} count_tables;

static void count_fn(const keel_table_info *info, void *ud) {
  count_tables *c = ud;
  c->n++;
  if (strcmp(info->name, "listed") == 0) {
    c->named++;
    CHECK_EQ(info->size, 2);
    CHECK_EQ(info->owner, keel_self());
    CHECK_EQ(info->type, KEEL_TABLE_ORDERED_SET);
  }
}

KT_CASE(every_live_table_is_listed_with_its_figures) {
  size_t before = keel_tables(NULL, NULL);
  keel_table_opts o = {.type = KEEL_TABLE_ORDERED_SET, .name = "listed"};
  keel_table_t t;
  CHECK_OK(keel_table_new(&o, &t));
  CHECK_OK(put_s(t, "a", "1"));
  CHECK_OK(put_s(t, "b", "2"));
  count_tables c = {0, 0};
  CHECK_EQ(keel_tables(count_fn, &c), before + 1);
  CHECK_EQ(c.n, before + 1);
  CHECK_EQ(c.named, 1);
  CHECK_STR(keel_table_type_name(KEEL_TABLE_ORDERED_SET), "ordered_set");
  CHECK_STR(keel_table_access_name(KEEL_TABLE_PRIVATE), "private");
  CHECK_OK(keel_table_delete(t));
  CHECK_EQ(keel_tables(NULL, NULL), before);
}

KT_MAIN(KT_ENTRY(set_insert_lookup_erase_take_and_insert_new),
        KT_ENTRY(ordered_set_insert_lookup_erase_take_and_insert_new),
        KT_ENTRY(handover_values_are_taken_and_given_back_without_a_copy),
        KT_ENTRY(update_counter_adds_creates_and_refuses),
        KT_ENTRY(small_values_are_overwritten_in_place_and_read_back_at_their_length),
        KT_ENTRY_SCHED(access_is_enforced_for_other_processes, 2),
        KT_ENTRY_SCHED(table_is_freed_when_its_owner_exits_or_is_killed, 2),
        KT_ENTRY_SCHED(heir_inherits_the_table_with_a_message_and_frees_it_on_its_own_exit, 2),
        KT_ENTRY_SCHED(give_away_makes_another_process_the_owner, 2),
        KT_ENTRY(names_are_unique_and_a_stale_handle_is_refused),
        KT_ENTRY(a_table_needs_a_process_to_own_it),
        KT_ENTRY(ordered_set_iterates_ranges_and_prefixes_in_key_order),
        KT_ENTRY(select_returns_what_the_predicate_accepts_and_foreach_stops_when_told),
        KT_ENTRY_SCHED(update_counter_from_processes_on_two_schedulers_loses_nothing, 2),
        KT_ENTRY_SCHED(overwrites_race_with_counter_updates_and_reads_atomically, 2),
        KT_ENTRY_SCHED(iteration_during_writes_sees_every_stable_entry_exactly_once, 2),
        KT_ENTRY_SCHED(tables_created_and_deleted_while_used_from_another_scheduler, 2),
        KT_ENTRY(every_live_table_is_listed_with_its_figures),
        KT_ENTRY(threads_outside_the_runtime_read_and_write_a_public_table))
