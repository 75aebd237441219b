/* cron.c - cron entries: a job enqueued at every slot of a crontab
 * expression, once across the instances sharing the database.
 *
 * keel/cron.h (src/ops) says when a slot comes; this file enqueues it. Each
 * entry remembers the last slot it looked at (from the instance's start:
 * nothing before it is caught up). The janitor's round enqueues every slot
 * up to now with the unique key "cron:<name>:<slot>" held for a day
 * (unique_period_ms), so every instance that sees the slot enqueues it and
 * all but the first get the existing job back (enqueue.c's key lock makes
 * that exact under concurrency); the janitor then sleeps until the next
 * slot. A round that fails to enqueue keeps the slot for the next round.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobs/jobs_internal.h"
#include "keel/cron.h"
#include "keel/error.h"
#include "keel/log.h"
#include "keel/process.h"

enum { SLOTS_PER_ROUND = 100 }; /* a clock jump cannot keep a round busy for long */
#define UNIQUE_HOLD_MS (24LL * 3600 * 1000)

int keel__jobs_cron_init(keel_jobs *j) {
  size_t n = j->o.ncrons;
  if (n == 0) return 0;
  if (!j->o.crons) return KEEL_EINVAL;
  j->cron = calloc(n, sizeof *j->cron);
  j->cron_last_s = calloc(n, sizeof *j->cron_last_s);
  if (!j->cron || !j->cron_last_s) return KEEL_ENOMEM;
  int64_t now_s = keel__jobs_now(j) / 1000;
  for (size_t i = 0; i < n; i++) {
    const keel_job_cron *c = &j->o.crons[i];
    if (!c->name || !*c->name || strlen(c->name) > 40 || !keel__jobs_name_ok(c->name) || !c->expr ||
        !c->job)
      return KEEL_EINVAL;
    for (size_t k = 0; k < i; k++)
      if (strcmp(c->name, j->o.crons[k].name) == 0) return KEEL_EINVAL;
    char err[160] = "";
    int rc = keel_cron_parse(c->expr, c->tz, &j->cron[i], err, sizeof err);
    if (rc) {
      keel_log_error(NULL, "jobs: a cron entry does not parse", KEEL_STR("cron", c->name),
                     KEEL_STR("expr", c->expr), KEEL_STR("error", err));
      return rc;
    }
    j->cron_last_s[i] = now_s;
  }
  return 0;
}

void keel__jobs_cron_free(keel_jobs *j) {
  for (size_t i = 0; j->cron && i < j->o.ncrons; i++)
    keel_cron_free(j->cron[i]);
  free(j->cron);
  free(j->cron_last_s);
  j->cron = NULL;
  j->cron_last_s = NULL;
}

static int enqueue_slot(keel_jobs *j, const keel_job_cron *c, int64_t slot) {
  char key[96];
  snprintf(key, sizeof key, "cron:%s:%lld", c->name, (long long)slot);
  keel_job_new n = *c->job;
  n.run_at_ms = slot * 1000;
  n.run_in_ms = 0;
  n.unique_key = key;
  n.unique_args = false;
  n.unique_period_ms = UNIQUE_HOLD_MS;
  return keel_jobs_enqueue(j, &n, NULL, NULL);
}

int keel__jobs_cron_round(keel_jobs *j, int64_t now_ms) {
  if (!j->cron) return 0;
  /* the janitor and keel_jobs_maintain's caller take turns: a caller
   * returns once the slots up to now are enqueued, whoever did it */
  while (atomic_exchange(&j->cron_busy, true))
    keel_sleep(1);
  int rc = 0;
  for (size_t i = 0; i < j->o.ncrons && rc == 0; i++) {
    for (int k = 0; k < SLOTS_PER_ROUND; k++) {
      int64_t slot = keel_cron_next(j->cron[i], j->cron_last_s[i]);
      if (slot < 0 || slot * 1000 > now_ms) break;
      rc = enqueue_slot(j, &j->o.crons[i], slot);
      if (rc) break; /* the slot again next round */
      j->cron_last_s[i] = slot;
    }
  }
  atomic_store(&j->cron_busy, false);
  return rc;
}

int64_t keel__jobs_cron_wait(keel_jobs *j, int64_t now_ms) {
  int64_t best = INT64_MAX;
  for (size_t i = 0; j->cron && i < j->o.ncrons; i++) {
    int64_t slot = keel_cron_next(j->cron[i], j->cron_last_s[i]);
    if (slot < 0) continue;
    int64_t ms = slot * 1000 - now_ms;
    if (ms < best) best = ms < 0 ? 0 : ms;
  }
  return best;
}
