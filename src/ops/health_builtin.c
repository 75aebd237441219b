/* health_builtin.c - the health checks keel registers itself.
 *
 * keel_health_register_builtin registers up to four checks, each an ordinary
 * check (health.c runs them like any other, in a process of their own) whose
 * ud is a copy of the options: "processes" (critical below min_processes
 * alive, health's own processes left out), "restarts" (supervisor restarts
 * in a window, from health.c's ring), "memory" (resident memory against the
 * cgroup or machine limit, keel/sysinfo.h) and "schedulers" (a scheduler
 * whose running process has held it stuck_ms without a switch, as the
 * runtime's watchdog keeps it: no sampling, no wait). Only public API is used, but for the helpers health_internal.h
 * declares.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/health.h"
#include "keel/process.h"
#include "keel/runtime.h"
#include "keel/sysinfo.h"
#include "ops/health_internal.h"

static keel_health_status bi_processes(void *ud, keel_health_result *res) {
  const keel_health_builtin_opts *o = ud;
  uint64_t alive = keel__health_alive_count();
  res->details =
      keel__health_dupf("{\"count\":%" PRIu64 ",\"min\":%" PRIu64 "}", alive, o->min_processes);
  if (alive >= o->min_processes) return KEEL_HEALTH_OK;
  keel_health_result_message(res, "%" PRIu64 " processes alive, fewer than %" PRIu64, alive,
                             o->min_processes);
  return KEEL_HEALTH_CRITICAL;
}

static keel_health_status bi_restarts(void *ud, keel_health_result *res) {
  const keel_health_builtin_opts *o = ud;
  uint64_t total, recent;
  keel_health_restarts(o->restart_window_ms, &total, &recent);
  res->details =
      keel__health_dupf("{\"total\":%" PRIu64 ",\"recent\":%" PRIu64 ",\"window_ms\":%" PRId64 "}",
                        total, recent, o->restart_window_ms);
  keel_health_status s = recent >= o->restarts_critical  ? KEEL_HEALTH_CRITICAL
                         : recent >= o->restarts_warning ? KEEL_HEALTH_WARNING
                                                         : KEEL_HEALTH_OK;
  if (s != KEEL_HEALTH_OK)
    keel_health_result_message(res, "%" PRIu64 " restarts in the last %" PRId64 " ms", recent,
                               o->restart_window_ms);
  return s;
}

static keel_health_status bi_memory(void *ud, keel_health_result *res) {
  const keel_health_builtin_opts *o = ud;
  keel_sys_memory m;
  keel_sys_memory_get(&m);
  uint64_t lim = keel_sys_memory_limit(&m);
  double frac = lim ? (double)m.rss_bytes / (double)lim : 0;
  res->details = keel__health_dupf(
      "{\"rssMB\":%" PRIu64 ",\"heapUsedMB\":%" PRIu64 ",\"limitMB\":%" PRIu64 ",\"percent\":%.2f}",
      (m.rss_bytes + (1u << 19)) >> 20, (m.heap_bytes + (1u << 19)) >> 20, (lim + (1u << 19)) >> 20,
      frac * 100.0);
  if (!lim) {
    keel_health_result_message(res, "no memory limit known");
    return KEEL_HEALTH_OK;
  }
  keel_health_status s = frac >= o->memory_critical  ? KEEL_HEALTH_CRITICAL
                         : frac >= o->memory_warning ? KEEL_HEALTH_WARNING
                                                     : KEEL_HEALTH_OK;
  if (s != KEEL_HEALTH_OK)
    keel_health_result_message(res, "resident memory at %.1f%% of the limit", frac * 100.0);
  return s;
}

/* A scheduler is stuck when the process running on it has held it for
 * stuck_ms without a switch. The runtime's watchdog already keeps that
 * (keel_sched_info.held_ms), so a probe reads it and answers at once; only
 * when the watchdog is off (stuck_ms < 0 on one scheduler) does the check
 * take two readings stuck_ms apart. */
static bool sched_stuck(const keel_sched_info *before, const keel_sched_info *now,
                        int64_t stuck_ms) {
  if (now->running == 0) return false;
  if (now->watched) return now->held_ms >= stuck_ms;
  return now->running == before->running && now->switches == before->switches;
}

/* Appends ",v" (or "v") to a JSON array's inside only when it fits whole,
 * so a long list is cut at an item, never inside one. */
static void append_item(char *buf, size_t cap, size_t *len, int64_t v) {
  char item[32];
  int k = snprintf(item, sizeof item, "%s%" PRId64, *len ? "," : "", v);
  if (k <= 0 || *len + (size_t)k >= cap) return;
  memcpy(buf + *len, item, (size_t)k + 1);
  *len += (size_t)k;
}

static keel_health_status bi_schedulers(void *ud, keel_health_result *res) {
  const keel_health_builtin_opts *o = ud;
  int n = keel_sched_count();
  keel_sched_info *a = calloc((size_t)(n > 0 ? n : 1), sizeof *a);
  if (!a || n <= 0) {
    free(a);
    keel_health_result_message(res, "no schedulers");
    return KEEL_HEALTH_CRITICAL;
  }
  bool watched = true;
  for (int i = 0; i < n; i++) {
    keel_rt_sched_info(i, &a[i]);
    watched = watched && a[i].watched;
  }
  if (!watched) keel_sleep(o->stuck_ms);
  char list[256] = "", held[256] = "";
  size_t len = 0, hlen = 0;
  int bad = -1, nbad = 0;
  keel_pid_t holder = 0;
  for (int i = 0; i < n; i++) {
    keel_sched_info b = a[i];
    if (!watched) keel_rt_sched_info(i, &b);
    append_item(held, sizeof held, &hlen, b.held_ms);
    if (sched_stuck(&a[i], &b, o->stuck_ms)) {
      if (bad < 0) {
        bad = i;
        holder = b.running;
      }
      nbad++;
      append_item(list, sizeof list, &len, i);
    }
  }
  free(a);
  res->details = keel__health_dupf(
      "{\"count\":%d,\"stuck\":[%s],\"held_ms\":[%s],\"stuck_ms\":%" PRId64 "}", n, list, held,
      o->stuck_ms);
  if (bad < 0) return KEEL_HEALTH_OK;
  char pid[24];
  keel_health_result_message(res, "scheduler %d held by %s for at least %" PRId64 " ms", bad,
                             keel_pid_format(holder, pid, sizeof pid), o->stuck_ms);
  return KEEL_HEALTH_CRITICAL;
}

void keel_health_builtin_opts_init(keel_health_builtin_opts *o) {
  memset(o, 0, sizeof *o);
}

static int add_builtin(const char *name, keel_health_fn fn, bool required,
                       const keel_health_builtin_opts *o, int64_t timeout_ms) {
  keel_health_builtin_opts *copy = malloc(sizeof *copy);
  if (!copy) return KEEL_ENOMEM;
  *copy = *o;
  keel_health_check c = {.name = name,
                         .fn = fn,
                         .ud = copy,
                         .ud_free = free,
                         .required = required,
                         .timeout_ms = timeout_ms};
  int rc = keel_health_register_check(&c);
  if (rc) free(copy);
  return rc;
}

int keel_health_register_builtin(const keel_health_builtin_opts *opts) {
  keel__health_init();
  keel_health_builtin_opts o;
  if (opts)
    o = *opts;
  else
    keel_health_builtin_opts_init(&o);
  if (o.timeout_ms < 0 || o.restart_window_ms < 0 || o.stuck_ms < 0 || o.memory_warning < 0 ||
      o.memory_critical < 0)
    return KEEL_EINVAL;
  if (!o.timeout_ms) o.timeout_ms = KEEL__HEALTH_TIMEOUT_DEFAULT;
  if (!o.min_processes) o.min_processes = 1;
  if (!o.restart_window_ms) o.restart_window_ms = 60000;
  if (!o.restarts_warning) o.restarts_warning = 10;
  if (!o.restarts_critical) o.restarts_critical = 50;
  if (o.memory_warning == 0) o.memory_warning = 0.80;
  if (o.memory_critical == 0) o.memory_critical = 0.95;
  if (!o.stuck_ms) o.stuck_ms = 100;
  int rc = 0;
  if (!rc && !o.no_processes)
    rc = add_builtin("processes", bi_processes, !o.processes_optional, &o, o.timeout_ms);
  if (!rc && !o.no_restarts)
    rc = add_builtin("restarts", bi_restarts, !o.restarts_optional, &o, o.timeout_ms);
  if (!rc && !o.no_memory) rc = add_builtin("memory", bi_memory, !o.memory_optional, &o, o.timeout_ms);
  if (!rc && !o.no_schedulers) {
    /* it watches for stuck_ms, so it needs longer than that */
    int64_t t =
        o.timeout_ms > o.stuck_ms ? o.timeout_ms : o.stuck_ms + KEEL__HEALTH_TIMEOUT_DEFAULT;
    rc = add_builtin("schedulers", bi_schedulers, !o.schedulers_optional, &o, t);
  }
  return rc;
}
