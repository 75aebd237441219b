/* combine.c - flat combining of one kind of statement across processes.
 *
 * Completions (outcome.c) and, on PostgreSQL, enqueues (enqueue.c) are
 * each one short statement and one commit; many processes issue them at
 * once. Each caller queues its item and, if no batch is being recorded,
 * leads one at once (a lone item waits for nothing): it takes every item
 * queued, up to JOBS_COMBINE_MAX, records them with the batch function in
 * one statement, answers each caller with the batch's result, and hands
 * the leadership to the first item that queued meanwhile. Items and queue
 * entries live on their callers' stacks; each caller holds its exits until
 * it has its answer (a kill then waits for it), so no entry goes away while
 * queued, and the batch function may write into the items it was given. The
 * same pattern as the store's PostgreSQL appends (pg_group.c).
 */
#include <stdlib.h>
#include <string.h>

#include "jobs/jobs_internal.h"
#include "keel/error.h"
#include "keel/message.h"
#include "keel/process.h"

typedef struct combine_answer {
  int rc;
  bool lead; /* not an answer: lead the next batch */
} combine_answer;

void keel__jobs_combine_init(jobs_combine *c) {
  memset(c, 0, sizeof *c);
  pthread_mutex_init(&c->mu, NULL);
}

void keel__jobs_combine_destroy(jobs_combine *c) {
  pthread_mutex_destroy(&c->mu);
}

static void answer(keel_pid_t pid, keel_ref_t ref, combine_answer a) {
  keel_msg_t *m;
  while (!(m = keel_msg_copy(0, &a, sizeof a)))
    keel_sleep(1); /* the waiting process has no other way out */
  keel_reply(pid, ref, m);
}

/* Leads one batch (me among it); returns me's answer. */
static int lead(jobs_combine *c, keel_jobs *j, jobs_combine_fn fn, jobs_combine_entry *me) {
  jobs_combine_entry *v[JOBS_COMBINE_MAX];
  void *items[JOBS_COMBINE_MAX];
  size_t n = 0;
  pthread_mutex_lock(&c->mu);
  while (c->head && n < JOBS_COMBINE_MAX) {
    v[n] = c->head;
    items[n++] = c->head->item;
    c->head = c->head->next;
  }
  if (!c->head) c->tail = NULL;
  if (n > c->most) c->most = n;
  pthread_mutex_unlock(&c->mu);
  int rc = fn(j, items, n);
  for (size_t i = 0; i < n; i++)
    if (v[i] != me) answer(v[i]->pid, v[i]->ref, (combine_answer){.rc = rc});
  pthread_mutex_lock(&c->mu);
  jobs_combine_entry *next = c->head;
  c->leading = next != NULL;
  pthread_mutex_unlock(&c->mu);
  if (next) answer(next->pid, next->ref, (combine_answer){.lead = true});
  return rc;
}

int keel__jobs_combine(jobs_combine *c, keel_jobs *j, jobs_combine_fn fn, void *item) {
  jobs_combine_entry me = {.item = item, .pid = keel_self(), .ref = keel_make_ref()};
  if (!me.pid) return KEEL_ENOTPROC;
  if (keel_await_ref(me.ref) != 0) return KEEL_ENOMEM;
  keel_hold_exits(true); /* holds nest: a caller's own hold stays */
  pthread_mutex_lock(&c->mu);
  if (c->tail)
    c->tail->next = &me;
  else
    c->head = &me;
  c->tail = &me;
  bool leading = !c->leading;
  c->leading = true;
  pthread_mutex_unlock(&c->mu);
  int rc = 0;
  for (;;) {
    if (leading) {
      rc = lead(c, j, fn, &me);
      break;
    }
    keel_msg_t *m = NULL;
    rc = keel_await(me.ref, &m, KEEL_INFINITY);
    if (rc) abort(); /* not reached (no timeout): returning would leave &me queued */
    combine_answer a = {.rc = KEEL_EIO};
    if (keel_msg_size(m) == sizeof a) memcpy(&a, keel_msg_data(m), sizeof a);
    keel_msg_free(m);
    if (!a.lead) {
      rc = a.rc;
      break;
    }
    leading = true; /* me is the queue's head: the batch takes it */
  }
  keel_hold_exits(false);
  return rc;
}
