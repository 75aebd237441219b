/* panel.c - the job queues' panel on the dashboard (keel_admin_panel_register,
 * keel/http.h): one row per queue this instance runs with its depth (jobs
 * due and waiting), the oldest due job's wait, the jobs running (on every
 * instance sharing the database), the jobs discarded in the last hour, and
 * whether the queue is paused.
 *
 * A panel provider must not wait, and these figures are database queries:
 * the janitor computes them in its round (keel__jobs_panel_round, every
 * heartbeat_ms, the same round that sets the depth gauges) and the provider
 * only copies the last figures under jobs->mu. The queries use the partial
 * indexes the table already has (keel_jobs_running, keel_jobs_finished), so
 * a table of millions of finished jobs costs no scan. The panel is
 * registered by keel_jobs_admin_routes (where the jobs attach to the admin
 * port) and unregistered before the jobs are freed; with several keel_jobs
 * in one node the last one attached shows.
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "jobs/jobs_internal.h"
#include "keel/error.h"
#include "keel/http.h"

#define PANEL_NAME       "jobs"
#define FAILED_WINDOW_MS 3600000 /* "failed": discarded within the last hour */

/* Counts per queue from a "SELECT queue, COUNT(*)" into the field at `off`
 * of each jobs_queue (zeroed first). Under jobs->mu. */
static void take_counts(keel_jobs *j, const keel_es_rows *rows, size_t off) {
  for (size_t i = 0; i < j->o.nqueues; i++)
    *(int64_t *)((char *)&j->queues[i] + off) = 0;
  for (size_t r = 0; r < rows->nrows; r++) {
    jobs_queue *q = keel__jobs_queue_named(j, keel_es_rows_get(rows, r, 0));
    if (q) *(int64_t *)((char *)q + off) = keel__jobs_atoi(keel_es_rows_get(rows, r, 1));
  }
}

int keel__jobs_panel_round(keel_jobs *j, int64_t now) {
  if (!atomic_load_explicit(&j->panel_on, memory_order_relaxed) || j->o.nqueues == 0) return 0;
  uint64_t ticket = keel__jobs_look(j);
  keel_es_rows running = {0}, failed = {0}, paused = {0};
  char since[24];
  keel__jobs_i64(since, now - FAILED_WINDOW_MS);
  int rc = keel_es_query(j->es,
                         "SELECT queue, COUNT(*) FROM keel_jobs WHERE state = 'running' "
                         "GROUP BY queue",
                         NULL, 0, &running);
  if (!rc)
    rc = keel_es_query(j->es,
                       "SELECT queue, COUNT(*) FROM keel_jobs WHERE finished_at >= "
                       "CAST($1 AS BIGINT) AND state = 'discarded' GROUP BY queue",
                       (const char *[]){since}, 1, &failed);
  if (!rc)
    rc = keel_es_query(j->es, "SELECT queue, paused FROM keel_jobs_queues", NULL, 0, &paused);
  if (!rc) {
    pthread_mutex_lock(&j->mu);
    if (keel__jobs_fresher(j, JOBS_STEP_PANEL, ticket)) {
      take_counts(j, &running, offsetof(jobs_queue, running));
      take_counts(j, &failed, offsetof(jobs_queue, failed));
      take_counts(j, &paused, offsetof(jobs_queue, paused));
      j->panel_looked = true;
    }
    pthread_mutex_unlock(&j->mu);
  }
  keel_es_rows_free(&running);
  keel_es_rows_free(&failed);
  keel_es_rows_free(&paused);
  return rc;
}

static char *jobs_panel(void *ud) {
  keel_jobs *j = ud;
  json_t *rows = json_array();
  pthread_mutex_lock(&j->mu);
  for (size_t i = 0; i < j->o.nqueues; i++) {
    const jobs_queue *q = &j->queues[i];
    json_t *row = json_pack("{s:s, s:I, s:f, s:I, s:i, s:I, s:b}", "queue", q->q.name, "depth",
                            (json_int_t)q->depth, "oldest_s", (double)q->oldest_ms / 1000.0,
                            "running", (json_int_t)q->running, "concurrency", q->q.concurrency,
                            "failed_last_hour", (json_int_t)q->failed, "paused", q->paused != 0);
    /* before the janitor's first look the counts are unknown, not zero */
    if (row && !j->panel_looked) {
      json_object_set_new(row, "running", json_null());
      json_object_set_new(row, "failed_last_hour", json_null());
    }
    if (row) json_array_append_new(rows, row);
  }
  pthread_mutex_unlock(&j->mu);
  char *text = json_dumps(rows, JSON_COMPACT);
  json_decref(rows);
  return text;
}

int keel__jobs_panel_register(keel_jobs *j) {
  int rc = keel_admin_panel_register(PANEL_NAME, "Job queues", jobs_panel, j);
  /* the counts come with the janitor's next round (or keel_jobs_maintain);
   * until then they show null */
  if (rc == 0) atomic_store_explicit(&j->panel_on, true, memory_order_relaxed);
  return rc;
}

void keel__jobs_panel_drop(keel_jobs *j) {
  /* returns once no request is inside jobs_panel: j may be freed after */
  if (atomic_load_explicit(&j->panel_on, memory_order_relaxed))
    keel_admin_panel_unregister(PANEL_NAME);
  atomic_store_explicit(&j->panel_on, false, memory_order_relaxed);
}
