/* bench_http_client.c - requests per second of keel's HTTP client over
 * keep-alive: CONNECTIONS processes (default 50) each send GET URL in a loop
 * for DURATION_MS (default 10000) through one client, on KEEL_SCHEDULERS
 * schedulers (client_run.sh sets 1, the one thread Node's fetch has). Every
 * answer's body is read whole and its status checked; an error or a
 * non-200 is counted and reported on stderr.
 *
 * Usage: bench-http-client URL
 * Output: {"bench":"http_client_keel_rps","unit":"req/s","value":N}
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "keel.h"

static const char *g_url;
static keel_http_client *g_client;
static atomic_llong g_done, g_bad;
static atomic_bool g_stop;
static atomic_int g_running;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void worker(void *arg) {
  (void)arg;
  keel_http_client_req rq = {.url = g_url};
  while (!atomic_load_explicit(&g_stop, memory_order_relaxed)) {
    keel_http_client_res r;
    int rc = keel_http_client_request(g_client, &rq, &r);
    if (rc == 0 && r.status == 200 && r.len > 0)
      atomic_fetch_add_explicit(&g_done, 1, memory_order_relaxed);
    else
      atomic_fetch_add_explicit(&g_bad, 1, memory_order_relaxed);
    keel_http_client_res_free(&r);
  }
  atomic_fetch_sub(&g_running, 1);
}

static void bench_main(void *arg) {
  (void)arg;
  int conns = getenv("CONNECTIONS") ? atoi(getenv("CONNECTIONS")) : 50;
  int64_t ms = getenv("DURATION_MS") ? atoll(getenv("DURATION_MS")) : 10000;
  keel_http_client_opts o = {.max_retries = -1, .no_breaker = true};
  if (keel_http_client_new(&o, &g_client) != 0) {
    fprintf(stderr, "bench-http-client: client_new failed\n");
    keel_rt_halt(1);
    return;
  }
  atomic_store(&g_running, conns);
  for (int i = 0; i < conns; i++)
    keel_spawn(worker, NULL, NULL, NULL);
  keel_sleep(1000); /* warm-up: connections made */
  long long d0 = atomic_load(&g_done);
  double t0 = now_s();
  keel_sleep(ms);
  long long d1 = atomic_load(&g_done);
  double t1 = now_s();
  atomic_store(&g_stop, true);
  while (atomic_load(&g_running) > 0)
    keel_sleep(10);
  keel_http_client_free(g_client);
  if (atomic_load(&g_bad))
    fprintf(stderr, "bench-http-client: %lld failed requests\n", (long long)atomic_load(&g_bad));
  printf("{\"bench\":\"http_client_keel_rps\",\"unit\":\"req/s\",\"value\":%.0f}\n",
         (double)(d1 - d0) / (t1 - t0));
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: bench-http-client URL\n");
    return 2;
  }
  g_url = argv[1];
  keel_log_opts lo;
  keel_log_opts_init(&lo);
  lo.level = KEEL_LOG_WARN;
  keel_log_init(&lo);
  int rc = keel_run(bench_main, NULL, NULL);
  keel_log_shutdown();
  return rc;
}
