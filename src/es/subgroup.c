/* subgroup.c - a subscription group's coordinator: which partitions this
 * instance runs.
 *
 * Every instance that starts the group runs one coordinator (a gen_server
 * registered as "sub.<name>"). Every rebalance_ms it:
 *   1. checks its lock session (PostgreSQL): a connection of its own, not
 *      the pool's, on which it holds one session advisory lock per
 *      partition it owns. If the session fails, the locks are gone (the
 *      server released them when the session ended): it stops every
 *      partition at once and opens a new session.
 *   2. beats its heart in keel_sub_members (group, member, last_seen) and
 *      counts the members seen within member_timeout_ms;
 *   3. wants ceil(partitions / members) partitions: releases the ones above
 *      that (stops them, which stores their checkpoints, then unlocks), and
 *      tries to lock free ones (pg_try_advisory_lock: never waits) up to it,
 *      starting a partition subscription for each lock it gets.
 * A partition subscription first writes this instance's fencing token into
 * its checkpoint row; every checkpoint move checks it (sub.c), so an
 * instance cut off from the database that has not noticed yet cannot
 * commit anything for a partition another instance has taken.
 *
 * An instance that dies (SIGKILL, a lost host) loses its session, so its
 * locks are free at once; the survivors take its partitions when their
 * share grows: at the latest member_timeout_ms + rebalance_ms after its
 * last heartbeat (free partitions are also taken beyond the share once
 * they have been free for two rounds, so it is usually one round).
 *
 * On SQLite (one instance per database file) the coordinator owns every
 * partition without locks.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "es/es_internal.h"
#include "keel/error.h"
#include "keel/gen_server.h"
#include "keel/log.h"
#include "keel/process.h"
#include "keel/registry.h"
#include "keel/subscription.h"
#include "keel/timer.h"

enum { TAG_REBALANCE = 0x73756781 };

typedef struct part {
  char name[64];
  keel_pid_t pid;  /* running here (0: not) */
  int free_rounds; /* rounds seen free (not locked by anyone) */
} part;

typedef struct group {
  keel_sub_opts o;
  char name[52], regname[64];
  char member[128];
  int n;
  part *parts;
  es_pgconn *lock; /* PostgreSQL: the lock session */
  keel_ref_t timer;
  bool retired; /* a blue/green switch replaced the group: it runs nothing (sub_switch.c) */
  char marker[72]; /* the switch's marker row ("<name>#switch") */
} group;

/* ---- the lock session ------------------------------------------------------------------ */

/* The sessions of this process's coordinators, by group: a coordinator
 * that was killed (no terminate) leaves its session, and with it its
 * locks, behind; its successor closes it first, which frees them. */
typedef struct session {
  struct session *next;
  char group[52];
  es_pgconn *c;
} session;
static pthread_mutex_t sessions_mu = PTHREAD_MUTEX_INITIALIZER;
static session *sessions;

/* Takes the session of `group` off the list (c NULL: whichever it is). */
static es_pgconn *session_take(const char *grp, es_pgconn *c) {
  es_pgconn *found = NULL;
  pthread_mutex_lock(&sessions_mu);
  for (session **p = &sessions; *p; p = &(*p)->next)
    if (strcmp((*p)->group, grp) == 0 && (!c || (*p)->c == c)) {
      session *e = *p;
      *p = e->next;
      found = e->c;
      free(e);
      break;
    }
  pthread_mutex_unlock(&sessions_mu);
  return found;
}

static void close_session(group *g) {
  if (!g->lock) return;
  keel__es_pg_conn_close(session_take(g->name, g->lock));
  g->lock = NULL;
}

static int open_session(group *g) {
  es_pgconn *c;
  int rc = keel__es_pg_session_open(g->o.es->pg, &c);
  if (rc) return rc;
  session *e = calloc(1, sizeof *e);
  if (!e) {
    keel__es_pg_conn_close(c);
    return KEEL_ENOMEM;
  }
  snprintf(e->group, sizeof e->group, "%s", g->name);
  e->c = c;
  pthread_mutex_lock(&sessions_mu);
  e->next = sessions;
  sessions = e;
  pthread_mutex_unlock(&sessions_mu);
  g->lock = c;
  return 0;
}

static bool pg(const group *g) {
  return keel_es_backend(g->o.es) == KEEL_ES_POSTGRESQL;
}

/* One advisory-lock statement on the session for partition i: 1 true, 0
 * false, or an error (the session is then closed). */
static int lock_query(group *g, const char *fn, int i) {
  char sql[200], idx[16];
  snprintf(sql, sizeof sql, "SELECT %s(hashtext(current_schema() || ':keel_sub:' || $1), $2::int)",
           fn);
  snprintf(idx, sizeof idx, "%d", i);
  PGresult *res = NULL;
  int rc = keel__es_pg_query(g->o.es->pg, g->lock, "a subscription group's lock", sql, 2,
                             (const char *[]){g->name, idx}, &res);
  if (rc) {
    close_session(g);
    return rc;
  }
  int got = PQgetvalue(res, 0, 0)[0] == 't';
  PQclear(res);
  return got;
}

/* ---- partitions ---------------------------------------------------------------------------- */

static void stop_part(group *g, int i, bool unlock) {
  part *p = &g->parts[i];
  if (p->pid) {
    keel_gs_stop(p->pid, KEEL_REASON_SHUTDOWN, NULL, 0);
    p->pid = 0;
    keel_log_info(NULL, "subscription group: partition released", KEEL_STR("group", g->name),
                  KEEL_INT("partition", i), KEEL_STR("member", g->member));
  }
  if (unlock && g->lock) lock_query(g, "pg_advisory_unlock", i);
}

static void stop_all(group *g, bool unlock) {
  for (int i = 0; i < g->n; i++)
    stop_part(g, i, unlock);
}

static int start_part(group *g, int i) {
  part *p = &g->parts[i];
  int rc = keel__sub_start_partition(&g->o, p->name, i, g->n, g->member, &p->pid);
  if (rc) {
    p->pid = 0;
    keel_log_error(NULL, "subscription group: a partition did not start",
                   KEEL_STR("group", g->name), KEEL_INT("partition", i),
                   KEEL_STR("error", keel_strerror(rc)));
    return rc;
  }
  keel_log_info(NULL, "subscription group: partition taken", KEEL_STR("group", g->name),
                KEEL_INT("partition", i), KEEL_STR("member", g->member));
  return 0;
}

/* ---- membership ------------------------------------------------------------------------ */

typedef struct beat_arg {
  group *g;
  int64_t alive;
  bool retired;
} beat_arg;

/* The switch's marker row exists: retired (sub_switch.c). */
static const char *const retired_sql = "SELECT count(*) FROM keel_sub_checkpoints WHERE name = $1";

static int beat_fn(keel_es_tx *tx, void *arg) {
  beat_arg *a = arg;
  char now[24], since[24];
  int64_t t = keel__es_unix_ms();
  snprintf(now, sizeof now, "%lld", (long long)t);
  snprintf(since, sizeof since, "%lld", (long long)(t - a->g->o.member_timeout_ms));
  int rc = keel_es_tx_exec(tx,
                           "INSERT INTO keel_sub_members (grp, member, last_seen) VALUES ($1, $2, "
                           "CAST($3 AS BIGINT)) ON CONFLICT (grp, member) DO UPDATE SET "
                           "last_seen = excluded.last_seen",
                           (const char *[]){a->g->name, a->g->member, now}, 3, NULL);
  if (rc) return rc;
  keel_es_rows rows;
  rc = keel_es_tx_exec(tx,
                       "SELECT count(*) FROM keel_sub_members WHERE grp = $1 AND "
                       "last_seen >= CAST($2 AS BIGINT)",
                       (const char *[]){a->g->name, since}, 2, &rows);
  if (rc) return rc;
  a->alive = strtoll(keel_es_rows_get(&rows, 0, 0), NULL, 10);
  keel_es_rows_free(&rows);
  if ((rc = keel_es_tx_exec(tx, retired_sql, (const char *[]){a->g->marker}, 1, &rows)) != 0)
    return rc;
  a->retired = strtoll(keel_es_rows_get(&rows, 0, 0), NULL, 10) > 0;
  keel_es_rows_free(&rows);
  return 0;
}

static int leave_fn(keel_es_tx *tx, void *arg) {
  group *g = arg;
  return keel_es_tx_exec(tx, "DELETE FROM keel_sub_members WHERE grp = $1 AND member = $2",
                         (const char *[]){g->name, g->member}, 2, NULL);
}

/* ---- one round ------------------------------------------------------------------------------- */

static int owned(const group *g) {
  int k = 0;
  for (int i = 0; i < g->n; i++)
    k += g->parts[i].pid != 0;
  return k;
}

static void publish(group *g) {
  keel_sub_status sum = {.state = KEEL_SUB_LIVE, .caught_up = true};
  bool any = false;
  for (int i = 0; i < g->n; i++) {
    keel_sub_status st;
    if (!g->parts[i].pid || keel_sub_status_get(g->parts[i].name, &st) != 0) continue;
    if (!any || st.checkpoint < sum.checkpoint) sum.checkpoint = st.checkpoint;
    if (!any || st.stored < sum.stored) sum.stored = st.stored;
    if (st.head > sum.head) sum.head = st.head;
    if (st.lag > sum.lag) sum.lag = st.lag;
    if (st.lag_seconds > sum.lag_seconds) sum.lag_seconds = st.lag_seconds;
    sum.handled += st.handled;
    sum.failures += st.failures;
    sum.failures_last_minute += st.failures_last_minute;
    sum.parked += st.parked;
    if (st.state != KEEL_SUB_LIVE) sum.state = st.state;
    sum.caught_up = sum.caught_up && st.caught_up;
    any = true;
  }
  if (!any) sum.state = KEEL_SUB_CATCHING_UP, sum.caught_up = false;
  keel__sub_publish(g->name, &sum);
}

/* A switch retired the group: its partitions stop (their checkpoints were
 * fenced by the switch, so nothing more commits) and give their locks back,
 * and the coordinator stays, idle, so that a supervisor does not restart it
 * in a loop and an instance still running the old code does no harm (it
 * looks again every round: a switch that fails after the retirement takes
 * it back). */
static void retire(group *g) {
  if (g->retired) return;
  keel_log_warn(NULL, "subscription group: retired by a blue/green switch; running nothing",
                KEEL_STR("group", g->name), KEEL_STR("member", g->member));
  stop_all(g, true);
  close_session(g);
  g->retired = true;
  keel__sub_publish(g->name, &(keel_sub_status){.state = KEEL_SUB_RETIRED});
}

/* 1 retired, 0 not, < 0 an error (logged by the store). */
static int read_retired(group *g) {
  keel_es_rows rows;
  int rc = keel_es_query(g->o.es, retired_sql, (const char *[]){g->marker}, 1, &rows);
  if (rc) return rc;
  bool retired = strtoll(keel_es_rows_get(&rows, 0, 0), NULL, 10) > 0;
  keel_es_rows_free(&rows);
  return retired;
}

static void round_(group *g) {
  if (g->retired) { /* a switch that failed after retiring it takes it back */
    if (read_retired(g) != 0) return;
    keel_log_info(NULL, "subscription group: no longer retired (the switch was undone)",
                  KEEL_STR("group", g->name), KEEL_STR("member", g->member));
    g->retired = false;
  }
  if (!pg(g)) { /* SQLite: one instance owns them all */
    if (read_retired(g) == 1) {
      retire(g);
      return;
    }
    for (int i = 0; i < g->n; i++)
      if (!g->parts[i].pid) start_part(g, i);
    publish(g);
    return;
  }
  /* 1. the lock session */
  if (g->lock && keel__es_pg_query(g->o.es->pg, g->lock, "a subscription group's session",
                                   "SELECT 1", 0, NULL, NULL) != 0)
    close_session(g);
  if (!g->lock) {
    if (owned(g)) {
      keel_log_warn(NULL, "subscription group: lock session lost; stopping its partitions",
                    KEEL_STR("group", g->name), KEEL_STR("member", g->member));
      stop_all(g, false);
    }
    if (open_session(g) != 0) return; /* logged; next round */
  }
  /* 2. members */
  beat_arg b = {.g = g};
  if (keel__es_transact_internal(g->o.es, beat_fn, &b) != 0) return;
  if (b.retired) {
    retire(g);
    return;
  }
  int64_t members = b.alive > 0 ? b.alive : 1;
  int want = (int)((g->n + members - 1) / members);
  /* 3. release above the share */
  int have = owned(g);
  for (int i = g->n - 1; i >= 0 && have > want && g->lock; i--)
    if (g->parts[i].pid) {
      stop_part(g, i, true);
      have--;
    }
  /* take free ones up to the share, or any free for two rounds */
  for (int i = 0; i < g->n && g->lock; i++) {
    part *p = &g->parts[i];
    if (p->pid) continue;
    bool stale = p->free_rounds >= 2;
    if (have >= want && !stale) {
      /* only look: is it held by anyone? (try and give back at once) */
      int got = lock_query(g, "pg_try_advisory_lock", i);
      if (got == 1) {
        lock_query(g, "pg_advisory_unlock", i);
        p->free_rounds++;
      } else {
        p->free_rounds = 0;
      }
      continue;
    }
    int got = lock_query(g, "pg_try_advisory_lock", i);
    if (got != 1) {
      p->free_rounds = 0;
      continue;
    }
    p->free_rounds = 0;
    if (start_part(g, i) == 0)
      have++;
    else
      lock_query(g, "pg_advisory_unlock", i);
  }
  publish(g);
}

/* ---- the gen_server ------------------------------------------------------------------------ */

static void group_free(group *g) {
  free(g->parts);
  free(g);
}

static int group_init(void *arg, void **state) {
  const keel_sub_opts *o = arg;
  int rc = keel__sub_opts_ok(o);
  if (rc) return rc;
  if (!o->partitions) return KEEL_EINVAL;
  group *g = calloc(1, sizeof *g);
  if (!g || !(g->parts = calloc((size_t)o->partitions, sizeof *g->parts))) {
    free(g);
    return KEEL_ENOMEM;
  }
  g->o = *o;
  g->o.partitions = 0; /* the partitions' own options */
  g->n = o->partitions;
  if (!g->o.rebalance_ms) g->o.rebalance_ms = 1000;
  if (!g->o.member_timeout_ms) g->o.member_timeout_ms = 5000;
  snprintf(g->name, sizeof g->name, "%s", o->name);
  snprintf(g->regname, sizeof g->regname, "sub.%s", o->name);
  keel__sub_marker_name(g->name, g->marker, sizeof g->marker);
  if (o->member && o->member[0] == '#') { /* '#' is the switch's (a fence is "#retired") */
    group_free(g);
    return KEEL_EINVAL;
  }
  if (o->member) {
    snprintf(g->member, sizeof g->member, "%s", o->member);
  } else {
    char host[64] = "host";
    gethostname(host, sizeof host - 1);
    snprintf(g->member, sizeof g->member, "%s-%d", host, (int)getpid());
  }
  for (int i = 0; i < g->n; i++)
    snprintf(g->parts[i].name, sizeof g->parts[i].name, "%s.p%d", g->name, i % 10000);
  if ((rc = keel_register(g->regname, keel_self())) != 0) {
    group_free(g);
    return rc;
  }
  /* a predecessor killed without its terminate: its locks go with its session */
  es_pgconn *left;
  while ((left = session_take(g->name, NULL)) != NULL) {
    keel_log_warn(NULL, "subscription group: closing a session left by a killed coordinator",
                  KEEL_STR("group", g->name));
    keel__es_pg_conn_close(left);
  }
  if ((rc = keel__sub_tables(g->o.es)) != 0 || (pg(g) && (rc = open_session(g)) != 0)) {
    keel_unregister(g->regname);
    group_free(g);
    return rc;
  }
  keel_log_info(NULL, "subscription group started", KEEL_STR("group", g->name),
                KEEL_STR("member", g->member), KEEL_INT("partitions", g->n));
  keel_send(keel_self(), keel_msg_new(TAG_REBALANCE, 0));
  keel_send_interval(keel_self(), g->o.rebalance_ms, keel_msg_new(TAG_REBALANCE, 0), &g->timer);
  *state = g;
  return 0;
}

static int group_info(void *state, keel_msg_t **msg) {
  group *g = state;
  keel_msg_kind k = keel_msg_kind_of(*msg);
  if (k == KEEL_MSG_EXIT) { /* a partition ended: free it (a new round may take it again) */
    keel_pid_t from = 0;
    keel_reason why;
    keel_msg_exit_info(*msg, &from, &why);
    for (int i = 0; i < g->n; i++)
      if (g->parts[i].pid == from) {
        g->parts[i].pid = 0;
        keel_log_warn(NULL, "subscription group: partition ended", KEEL_STR("group", g->name),
                      KEEL_INT("partition", i));
        if (g->lock) lock_query(g, "pg_advisory_unlock", i);
      }
    return KEEL_GS_OK;
  }
  if (k == KEEL_MSG_USER && keel_msg_tag(*msg) == TAG_REBALANCE) round_(g);
  return KEEL_GS_OK;
}

static int group_call(void *state, keel_gs_from from, keel_msg_t **req, keel_msg_t **reply) {
  (void)state;
  (void)from;
  (void)req;
  *reply = NULL;
  return KEEL_GS_REPLY;
}

static int group_cast(void *state, keel_msg_t **msg) {
  (void)state;
  (void)msg;
  return KEEL_GS_OK;
}

static void group_terminate(keel_reason reason, void *state) {
  (void)reason;
  group *g = state;
  if (g->timer) keel_cancel_timer(g->timer);
  stop_all(g, true);
  keel__es_transact_internal(g->o.es, leave_fn, g);
  close_session(g);
  keel_log_info(NULL, "subscription group stopped", KEEL_STR("group", g->name),
                KEEL_STR("member", g->member));
  keel__sub_unpublish(g->name);
  keel_unregister(g->regname);
  group_free(g);
}

const keel_gen_server keel__subgroup_behaviour = {
    .init = group_init,
    .handle_call = group_call,
    .handle_cast = group_cast,
    .handle_info = group_info,
    .terminate = group_terminate,
};
