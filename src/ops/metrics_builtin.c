/* metrics_builtin.c - the metrics every keel node exports without being asked.
 *
 * keel_metrics_register_builtin registers its families on a registry and
 * keeps their children in one struct owned by the registry. The process
 * group (the standard names every Prometheus client library uses), the
 * runtime group, the mailbox, scheduler and log groups are refreshed by a
 * collector that runs at the start of each render: it reads keel/sysinfo.h
 * (/proc, served from kernel memory, so it does not block the way disk I/O
 * does and runs on the rendering thread even when that is a scheduler),
 * keel_rt_stats_get, walks every process (keel_rt_processes) for the mailbox
 * depths, asks every scheduler (keel_rt_sched_info) and the logger
 * (keel_log_stats_get), and stores the values with keel_gauge_set,
 * keel_counter_set and keel_histogram_set.
 *
 * Mailbox depths are a distribution at this instant, so keel_mailbox_depth is
 * a gauge histogram, recomputed from scratch at every render. Scheduler
 * utilisation is 1 - (idle time / wall time) over the interval since the
 * previous render of this registry (the first: since the runtime started);
 * the collector keeps the previous idle_ns and clock per scheduler. The
 * collector only runs under the registry's render lock, so this state needs
 * no synchronisation of its own. Log line counts are kept monotonic across a
 * logger shutdown and re-init (its counts restart from zero) by adding the
 * last value seen before the drop to a base.
 *
 * The supervisor group is
 * event driven: a keel_sup_subscribe handler counts every
 * KEEL_SUP_CHILD_RESTARTED event into
 * keel_supervisor_restarts_total{supervisor,child}, a child created on the
 * first restart of that pair. Only public API is used here.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "keel/log.h"
#include "keel/metrics.h"
#include "keel/process.h"
#include "keel/runtime.h"
#include "keel/supervisor.h"
#include "keel/sysinfo.h"
#include "keel/timer.h"
#include "ops/ops_internal.h"

/* Mailbox depth buckets: upper bounds, in messages. */
static const double depth_bounds[] = {0, 1, 5, 10, 50, 100, 500, 1000, 10000};
#define NDEPTH (sizeof depth_bounds / sizeof depth_bounds[0])

#define NLEVELS 6 /* keel_log_stats.lines[KEEL_LOG_TRACE + i], i < NLEVELS */

typedef struct sched_slot {
  keel_gauge *util, *run_queue, *stuck;
  keel_counter *switches;
  uint64_t last_idle_ns, last_ns, last_switches; /* at the previous render */
} sched_slot;

typedef struct builtin {
  keel_counter *cpu;
  keel_gauge *rss, *vms, *fds, *max_fds, *start, *mem_limit;
  keel_gauge *alive, *blocking_queued, *blocking_running;
  keel_counter *spawned, *exited, *sent, *to_dead;
  keel_gauge *depth_max;
  keel_histogram *depth;
  keel_metric_family *util_f, *run_queue_f, *stuck_f, *switches_f;
  sched_slot *scheds; /* one per scheduler seen, grown on demand */
  int nscheds;
  uint64_t rt_started_ms; /* the runtime the slots' baselines belong to */
  keel_counter *log_lines[NLEVELS], *log_dropped;
  uint64_t log_last[NLEVELS + 1], log_base[NLEVELS + 1]; /* lines by level, then dropped */
  keel_metric_family *restarts;
  int sup_handle;
  double start_time; /* seconds since the epoch; < 0 when unknown */
} builtin;

void keel__metrics_builtin_free(void *p) {
  builtin *b = p;
  if (b->sup_handle > 0) keel_sup_unsubscribe(b->sup_handle);
  free(b->scheds);
  free(b);
}

/* ---- mailbox depths ------------------------------------------------------ */

typedef struct depth_walk {
  uint64_t counts[NDEPTH + 1];
  uint64_t max;
  double sum;
} depth_walk;

static bool on_proc(const keel_proc_info *pi, void *ud) {
  depth_walk *w = ud;
  uint64_t n = pi->mailbox_len;
  size_t k = 0;
  while (k < NDEPTH && (double)n > depth_bounds[k])
    k++;
  w->counts[k]++;
  w->sum += (double)n;
  if (n > w->max) w->max = n;
  return true;
}

static void collect_mailboxes(builtin *b) {
  depth_walk w;
  memset(&w, 0, sizeof w);
  keel_rt_processes(on_proc, &w); /* 0 processes when the runtime is not running */
  keel_gauge_set(b->depth_max, (double)w.max);
  keel_histogram_set(b->depth, w.counts, NDEPTH + 1, w.sum);
}

/* ---- schedulers ------------------------------------------------------------ */

static int sched_slot_init(builtin *b, sched_slot *s, int i) {
  char id[16];
  snprintf(id, sizeof id, "%d", i);
  const char *v[1] = {id};
  int rc;
  if ((rc = keel_gauge_get(b->util_f, v, &s->util)) ||
      (rc = keel_gauge_get(b->run_queue_f, v, &s->run_queue)) ||
      (rc = keel_gauge_get(b->stuck_f, v, &s->stuck)) ||
      (rc = keel_counter_get(b->switches_f, v, &s->switches)))
    return rc;
  return 0;
}

static void collect_schedulers(builtin *b) {
  int n = keel_sched_count();
  uint64_t started = keel_rt_started_ms();
  if (n <= 0 || started == 0) return; /* no runtime: keep the last values */
  if (n > b->nscheds) {
    sched_slot *ns = realloc(b->scheds, (size_t)n * sizeof *ns);
    if (!ns) return;
    b->scheds = ns;
    for (int i = b->nscheds; i < n; i++) {
      memset(&ns[i], 0, sizeof ns[i]);
      if (sched_slot_init(b, &ns[i], i)) {
        n = i; /* out of memory: serve the ones we have */
        break;
      }
    }
    b->nscheds = n;
  }
  if (started != b->rt_started_ms) { /* a new runtime: measure from its start */
    b->rt_started_ms = started;
    for (int i = 0; i < b->nscheds; i++) {
      b->scheds[i].last_idle_ns = 0;
      b->scheds[i].last_switches = 0;
      b->scheds[i].last_ns = started * 1000000u;
    }
  }
  uint64_t now = keel_monotonic_ns();
  for (int i = 0; i < n && i < b->nscheds; i++) {
    sched_slot *s = &b->scheds[i];
    keel_sched_info si;
    if (keel_rt_sched_info(i, &si) != 0) continue;
    keel_gauge_set(s->run_queue, (double)si.run_queue);
    keel_gauge_set(s->stuck, si.stuck ? 1 : 0);
    keel_counter_set(s->switches, (double)si.switches);
    if (now <= s->last_ns) continue; /* no time passed: keep the last value */
    double wall = (double)(now - s->last_ns);
    double idle = si.idle_ns >= s->last_idle_ns ? (double)(si.idle_ns - s->last_idle_ns) : 0;
    double u = 1 - idle / wall;
    /* A scheduler that switched to no process, gained no idle time and
     * runs nothing now was idle the whole interval, not busy. Rounding
     * between the two clock reads can take u past 0 or 1: clamp. */
    if (si.idle_ns == s->last_idle_ns && si.switches == s->last_switches && si.running == 0) u = 0;
    keel_gauge_set(s->util, u < 0 ? 0 : u > 1 ? 1 : u);
    s->last_idle_ns = si.idle_ns;
    s->last_switches = si.switches;
    s->last_ns = now;
  }
}

/* ---- log lines ------------------------------------------------------------- */

static void collect_log(builtin *b) {
  keel_log_stats ls;
  keel_log_stats_get(&ls); /* zeros when the logger is not initialised */
  uint64_t now[NLEVELS + 1];
  for (int i = 0; i < NLEVELS; i++)
    now[i] = ls.lines[KEEL_LOG_TRACE + i];
  now[NLEVELS] = ls.dropped;
  for (int i = 0; i <= NLEVELS; i++) {
    /* The logger's counts restart at zero after keel_log_shutdown (and a new
     * keel_log_init): keep the exported counter going up. */
    if (now[i] < b->log_last[i]) b->log_base[i] += b->log_last[i];
    b->log_last[i] = now[i];
    keel_counter *c = i < NLEVELS ? b->log_lines[i] : b->log_dropped;
    keel_counter_set(c, (double)(b->log_base[i] + now[i]));
  }
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
  keel_gauge_set(b->mem_limit, (double)sm.limit_bytes);
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

  collect_mailboxes(b);
  collect_schedulers(b);
  collect_log(b);
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
  static const char *const sched_label[] = {"scheduler"};
  static const char *const level_label[] = {"level"};
  keel_metric_family *depth_f, *log_f;
  if ((rc = counter(r, "process_cpu_seconds_total",
                    "Total user and system CPU time spent in seconds.", &b->cpu)) ||
      (rc = gauge(r, "process_resident_memory_bytes", "Resident memory size in bytes.", &b->rss)) ||
      (rc = gauge(r, "process_virtual_memory_bytes", "Virtual memory size in bytes.", &b->vms)) ||
      (rc = gauge(r, "keel_memory_limit_bytes",
                  "The container's memory limit (cgroup memory.max), 0 when there is none.",
                  &b->mem_limit)) ||
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
      (rc = gauge(r, "keel_mailbox_depth_max", "Messages queued in the fullest mailbox now.",
                  &b->depth_max)) ||
      (rc = keel_metrics_gauge_histogram(
           r, "keel_mailbox_depth",
           "Messages queued per process mailbox, over every process at scrape time.", NULL, 0,
           depth_bounds, NDEPTH, &depth_f)) ||
      (rc = keel_histogram_get(depth_f, NULL, &b->depth)) ||
      (rc = keel_metrics_gauge(r, "keel_scheduler_utilization",
                               "Fraction of time each scheduler was busy since the previous "
                               "scrape (since the runtime started for the first).",
                               sched_label, 1, &b->util_f)) ||
      (rc = keel_metrics_gauge(r, "keel_scheduler_run_queue",
                               "Processes queued to run on each scheduler.", sched_label, 1,
                               &b->run_queue_f)) ||
      (rc = keel_metrics_gauge(r, "keel_scheduler_stuck",
                               "1 when one process has held the scheduler for a whole watchdog "
                               "tick, else 0.",
                               sched_label, 1, &b->stuck_f)) ||
      (rc = keel_metrics_counter(r, "keel_scheduler_context_switches_total",
                                 "Context switches on each scheduler.", sched_label, 1,
                                 &b->switches_f)) ||
      (rc = keel_metrics_counter(r, "keel_log_lines_total",
                                 "Log lines accepted for writing, by level.", level_label, 1,
                                 &log_f)) ||
      (rc = counter(r, "keel_log_dropped_lines_total",
                    "Log lines dropped (no buffer room in time, or too long).", &b->log_dropped)) ||
      (rc = keel_metrics_counter(r, "keel_supervisor_restarts_total",
                                 "Child restarts, by supervisor and child id.", sup_labels, 2,
                                 &b->restarts)))
    return rc;
  for (int i = 0; i < NLEVELS; i++) {
    const char *v[1] = {keel_log_level_name((keel_log_level)(KEEL_LOG_TRACE + i))};
    if ((rc = keel_counter_get(log_f, v, &b->log_lines[i]))) return rc;
  }
  keel_sys_process sp;
  keel_sys_process_get(&sp);
  b->start_time = sp.start_time;
  if ((rc = keel_metrics_add_collector(r, collect, b))) return rc;
  rc = keel_sup_subscribe(on_sup_event, b);
  if (rc < 0) return rc;
  b->sup_handle = rc;
  return 0;
}
