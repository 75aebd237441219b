/* metrics_builtin.c - the metrics every keel node exports without being asked.
 *
 * keel_metrics_register_builtin registers three groups of families on a
 * registry and keeps their children in one struct owned by the registry.
 * The process group (the standard names every Prometheus client library uses)
 * and the runtime group are refreshed by a collector that runs at the start
 * of each render: it reads keel/sysinfo.h (/proc, served from kernel memory,
 * so it does not block the way disk I/O does and runs on the rendering thread
 * even when that is a scheduler) and keel_rt_stats_get, and stores the values
 * with keel_gauge_set and keel_counter_set. The supervisor group is
 * event driven: a keel_sup_subscribe handler counts every
 * KEEL_SUP_CHILD_RESTARTED event into
 * keel_supervisor_restarts_total{supervisor,child}, a child created on the
 * first restart of that pair. Only public API is used here.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/metrics.h"
#include "keel/process.h"
#include "keel/runtime.h"
#include "keel/supervisor.h"
#include "keel/sysinfo.h"

int keel__metrics_set_builtin(keel_metrics *r, void *b); /* metrics.c */
void keel__metrics_builtin_free(void *b);

typedef struct builtin {
  keel_counter *cpu;
  keel_gauge *rss, *vms, *fds, *max_fds, *start;
  keel_gauge *alive, *blocking_queued, *blocking_running;
  keel_counter *spawned, *exited, *sent, *to_dead;
  keel_metric_family *restarts;
  int sup_handle;
  double start_time; /* seconds since the epoch; < 0 when unknown */
} builtin;

void keel__metrics_builtin_free(void *p) {
  builtin *b = p;
  if (b->sup_handle > 0) keel_sup_unsubscribe(b->sup_handle);
  free(b);
}

static void collect(keel_metrics *r, void *ud) {
  (void)r;
  builtin *b = ud;
  keel_sys_process sp;
  keel_sys_memory sm;
  keel_sys_process_get(&sp);
  keel_sys_memory_get(&sm);
  keel_counter_set(b->cpu, sp.cpu_seconds);
  keel_gauge_set(b->vms, (double)sm.virtual_bytes);
  keel_gauge_set(b->rss, (double)sm.rss_bytes);
  if (sp.open_fds >= 0) keel_gauge_set(b->fds, (double)sp.open_fds);
  keel_gauge_set(b->max_fds, (double)sp.max_fds);
  if (b->start_time >= 0) keel_gauge_set(b->start, b->start_time);

  keel_rt_stats st;
  keel_rt_stats_get(&st);
  keel_gauge_set(b->alive, (double)st.procs_alive);
  keel_counter_set(b->spawned, (double)st.procs_spawned);
  keel_counter_set(b->exited, (double)st.procs_exited);
  keel_counter_set(b->sent, (double)st.msgs_sent);
  keel_counter_set(b->to_dead, (double)st.msgs_to_dead);
  keel_gauge_set(b->blocking_queued, (double)st.blocking_queued);
  keel_gauge_set(b->blocking_running, (double)st.blocking_running);
}

static void on_sup_event(const keel_sup_event *ev, void *ud) {
  builtin *b = ud;
  if (ev->kind != KEEL_SUP_CHILD_RESTARTED) return;
  char pid[32];
  const char *sup =
      ev->sup_name && *ev->sup_name ? ev->sup_name : keel_pid_format(ev->sup, pid, sizeof pid);
  const char *values[2] = {sup, ev->child_id ? ev->child_id : ""};
  keel_counter *c;
  if (keel_counter_get(b->restarts, values, &c) == 0) keel_counter_inc(c);
}

static int counter(keel_metrics *r, const char *name, const char *help, keel_counter **c) {
  keel_metric_family *f;
  int rc = keel_metrics_counter(r, name, help, NULL, 0, &f);
  return rc ? rc : keel_counter_get(f, NULL, c);
}

static int gauge(keel_metrics *r, const char *name, const char *help, keel_gauge **g) {
  keel_metric_family *f;
  int rc = keel_metrics_gauge(r, name, help, NULL, 0, &f);
  return rc ? rc : keel_gauge_get(f, NULL, g);
}

int keel_metrics_register_builtin(keel_metrics *r) {
  if (!r) return KEEL_EINVAL;
  builtin *b = calloc(1, sizeof *b);
  if (!b) return KEEL_ENOMEM;
  int rc = keel__metrics_set_builtin(r, b);
  if (rc) {
    free(b);
    return rc;
  }
  /* From here b belongs to the registry: on an error below it is freed (and
   * unsubscribed) by keel_metrics_free; families registered so far stay. */
  static const char *const sup_labels[] = {"supervisor", "child"};
  if ((rc = counter(r, "process_cpu_seconds_total",
                    "Total user and system CPU time spent in seconds.", &b->cpu)) ||
      (rc = gauge(r, "process_resident_memory_bytes", "Resident memory size in bytes.", &b->rss)) ||
      (rc = gauge(r, "process_virtual_memory_bytes", "Virtual memory size in bytes.", &b->vms)) ||
      (rc = gauge(r, "process_open_fds", "Number of open file descriptors.", &b->fds)) ||
      (rc = gauge(r, "process_max_fds", "Maximum number of open file descriptors.", &b->max_fds)) ||
      (rc = gauge(r, "process_start_time_seconds",
                  "Start time of the process since unix epoch in seconds.", &b->start)) ||
      (rc = gauge(r, "keel_processes_alive", "keel processes alive now.", &b->alive)) ||
      (rc = counter(r, "keel_processes_spawned_total", "keel processes spawned.", &b->spawned)) ||
      (rc = counter(r, "keel_processes_exited_total", "keel processes exited.", &b->exited)) ||
      (rc = counter(r, "keel_messages_sent_total",
                    "Messages delivered to a live process's mailbox.", &b->sent)) ||
      (rc = counter(r, "keel_messages_to_dead_total",
                    "Messages sent to a dead process and dropped.", &b->to_dead)) ||
      (rc = gauge(r, "keel_blocking_queue", "Blocking-pool jobs submitted and not yet started.",
                  &b->blocking_queued)) ||
      (rc = gauge(r, "keel_blocking_running", "Blocking-pool jobs running now.",
                  &b->blocking_running)) ||
      (rc = keel_metrics_counter(r, "keel_supervisor_restarts_total",
                                 "Child restarts, by supervisor and child id.", sup_labels, 2,
                                 &b->restarts)))
    return rc;
  keel_sys_process sp;
  keel_sys_process_get(&sp);
  b->start_time = sp.start_time;
  if ((rc = keel_metrics_add_collector(r, collect, b))) return rc;
  rc = keel_sup_subscribe(on_sup_event, b);
  if (rc < 0) return rc;
  b->sup_handle = rc;
  return 0;
}
