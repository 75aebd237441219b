/* test_metrics.c - the metrics registry: sharded sums, histograms, gauge
 * histograms, names, escaping, exact exposition text in both formats,
 * negotiation, built-ins (process, runtime, mailbox depths, schedulers, log
 * lines, supervisor restarts).
 *
 * Each case is the first process of a fresh runtime (KT_ENTRY_SCHED). With
 * the argument --exposition [openmetrics] the binary instead prints the
 * exposition of a sample registry (every metric type, labels that need
 * escaping, the built-ins, a supervisor restart) to stdout and exits:
 * tests/ops/test_promtool.sh feeds that to `promtool check metrics`.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

#include "keel_test.h"
#include "keel/log.h"
#include "keel/sysinfo.h"
#include "keel/metrics.h"

#define CHECK_HAS(text, needle)                                                                    \
  do {                                                                                             \
    if (!strstr((text), (needle))) {                                                               \
      fprintf(stderr, "%s:%d: missing [%s] in:\n%s\n", __FILE__, __LINE__, (needle), (text));      \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

static char *render(keel_metrics *r, keel_metrics_format fmt) {
  keel_metrics_buf b = {0};
  CHECK_OK(keel_metrics_render(r, fmt, &b));
  return b.data;
}

/* ---- sums across schedulers ------------------------------------------------- */

#define INCS 20000
#define OBS  5000

typedef struct work {
  keel_counter *c;
  keel_histogram *h;
  keel_pid_t parent;
} work;

static void incrementer(void *arg) {
  work *w = arg;
  for (int i = 0; i < INCS; i++) {
    keel_counter_inc(w->c);
    if (i < OBS) keel_histogram_observe(w->h, 0.5);
    if (i % 1000 == 999) keel_yield(); /* move around, mix with the others */
  }
  kt_send_u64(w->parent, 1, 0);
}

static void *thread_incrementer(void *arg) {
  work *w = arg;
  for (int i = 0; i < INCS; i++) {
    keel_counter_inc(w->c);
    if (i < OBS) keel_histogram_observe(w->h, 0.5);
  }
  return NULL;
}

/* Scrapes and creates children while the increments run (for ThreadSanitizer:
 * render, get-or-create and the hot path together). */
static atomic_int scraping;
static void *scraper(void *arg) {
  keel_metrics *r = arg;
  keel_metric_family *f;
  CHECK_OK(keel_metrics_gauge(r, "scraper_info", "Scraper.", (const char *[]){"n"}, 1, &f));
  for (int n = 0; atomic_load(&scraping); n++) {
    char v[16];
    snprintf(v, sizeof v, "%d", n % 100);
    keel_gauge *g;
    CHECK_OK(keel_gauge_get(f, (const char *[]){v}, &g));
    keel_gauge_inc(g);
    keel_metrics_buf b = {0};
    CHECK_OK(keel_metrics_render(r, n % 2 ? KEEL_METRICS_OPENMETRICS : KEEL_METRICS_TEXT, &b));
    keel_metrics_buf_free(&b);
  }
  return NULL;
}

KT_CASE(counter_sums_exactly_across_every_scheduler_and_foreign_threads) {
  int ns = keel_sched_count();
  CHECK(ns >= 2);
  keel_metrics *r;
  CHECK_OK(keel_metrics_new(&r, 0));
  keel_metric_family *fc, *fh;
  CHECK_OK(keel_metrics_counter(r, "work_done_total", "Work done.", NULL, 0, &fc));
  CHECK_OK(keel_metrics_histogram(r, "work_seconds", "Work time.", NULL, 0, (double[]){1}, 1, &fh));
  work w = {NULL, NULL, keel_self()};
  CHECK_OK(keel_counter_get(fc, NULL, &w.c));
  CHECK_OK(keel_histogram_get(fh, NULL, &w.h));
  int nproc = 4 * ns;
  for (int i = 0; i < nproc; i++) {
    keel_spawn_opts o;
    keel_spawn_opts_init(&o);
    o.scheduler = KEEL_ON_SCHEDULER(i % ns); /* start one on every scheduler */
    CHECK_OK(keel_spawn(incrementer, &w, &o, NULL));
  }
  pthread_t scr;
  atomic_store(&scraping, 1);
  CHECK_OK(pthread_create(&scr, NULL, scraper, r));
  pthread_t th[2]; /* threads outside the schedulers use the shared shard */
  for (int i = 0; i < 2; i++)
    CHECK_OK(pthread_create(&th[i], NULL, thread_incrementer, &w));
  for (int i = 0; i < nproc; i++)
    keel_msg_free(kt_recv(60000));
  for (int i = 0; i < 2; i++)
    CHECK_OK(pthread_join(th[i], NULL));
  atomic_store(&scraping, 0);
  CHECK_OK(pthread_join(scr, NULL));
  long long total = (long long)(nproc + 2) * INCS, obs = (long long)(nproc + 2) * OBS;
  CHECK_EQ(keel_counter_value(w.c), total);
  uint64_t count;
  double sum;
  keel_histogram_totals(w.h, &count, &sum);
  CHECK_EQ(count, obs);
  CHECK(sum == 0.5 * (double)obs);
  char *t = render(r, KEEL_METRICS_TEXT);
  char want[128];
  snprintf(want, sizeof want, "\nwork_done_total %lld\n", total);
  CHECK_HAS(t, want);
  snprintf(want, sizeof want, "work_seconds_bucket{le=\"1\"} %lld\n", obs);
  CHECK_HAS(t, want);
  snprintf(want, sizeof want, "work_seconds_count %lld\n", obs);
  CHECK_HAS(t, want);
  free(t);
  keel_metrics_free(r);
}

/* Fewer shards than schedulers: the others fall back to the shared shard. */
KT_CASE(schedulers_beyond_the_shard_count_still_count_exactly) {
  keel_metrics *r;
  CHECK_OK(keel_metrics_new(&r, 1));
  keel_metric_family *fc, *fh;
  CHECK_OK(keel_metrics_counter(r, "x_total", "X.", NULL, 0, &fc));
  CHECK_OK(keel_metrics_histogram(r, "y", "Y.", NULL, 0, NULL, 0, &fh));
  work w = {NULL, NULL, keel_self()};
  CHECK_OK(keel_counter_get(fc, NULL, &w.c));
  CHECK_OK(keel_histogram_get(fh, NULL, &w.h));
  int ns = keel_sched_count();
  for (int i = 0; i < 2 * ns; i++) {
    keel_spawn_opts o;
    keel_spawn_opts_init(&o);
    o.scheduler = KEEL_ON_SCHEDULER(i % ns);
    CHECK_OK(keel_spawn(incrementer, &w, &o, NULL));
  }
  for (int i = 0; i < 2 * ns; i++)
    keel_msg_free(kt_recv(60000));
  CHECK_EQ(keel_counter_value(w.c), (long long)2 * ns * INCS);
  uint64_t count;
  keel_histogram_totals(w.h, &count, NULL);
  CHECK_EQ(count, (long long)2 * ns * OBS);
  keel_metrics_free(r);
}

/* ---- histograms --------------------------------------------------------------- */

KT_CASE(histogram_buckets_are_cumulative_with_count_and_sum) {
  keel_metrics *r;
  CHECK_OK(keel_metrics_new(&r, 0));
  keel_metric_family *f;
  CHECK_OK(keel_metrics_histogram(r, "req_seconds", "Request time.", (const char *[]){"path"}, 1,
                                  (double[]){0.1, 1, 2.5}, 3, &f));
  keel_histogram *h;
  CHECK_OK(keel_histogram_get(f, (const char *[]){"/a"}, &h));
  double obs[] = {0.05, 0.1, 0.5, 1, 2, 3, 100, NAN};
  for (size_t i = 0; i < sizeof obs / sizeof obs[0]; i++)
    keel_histogram_observe(h, obs[i]);
  char *t = render(r, KEEL_METRICS_TEXT);
  CHECK_STR(t, "# HELP req_seconds Request time.\n"
               "# TYPE req_seconds histogram\n"
               "req_seconds_bucket{path=\"/a\",le=\"0.1\"} 2\n"
               "req_seconds_bucket{path=\"/a\",le=\"1\"} 4\n"
               "req_seconds_bucket{path=\"/a\",le=\"2.5\"} 5\n"
               "req_seconds_bucket{path=\"/a\",le=\"+Inf\"} 7\n"
               "req_seconds_sum{path=\"/a\"} 106.65\n"
               "req_seconds_count{path=\"/a\"} 7\n");
  free(t);
  /* default buckets */
  keel_metric_family *d;
  keel_histogram *dh;
  CHECK_OK(keel_metrics_histogram(r, "d_seconds", "D.", NULL, 0, NULL, 0, &d));
  CHECK_OK(keel_histogram_get(d, NULL, &dh));
  keel_histogram_observe(dh, 0.3);
  t = render(r, KEEL_METRICS_TEXT);
  CHECK_HAS(t, "d_seconds_bucket{le=\"0.005\"} 0\nd_seconds_bucket{le=\"0.01\"} 0\n"
               "d_seconds_bucket{le=\"0.025\"} 0\nd_seconds_bucket{le=\"0.05\"} 0\n"
               "d_seconds_bucket{le=\"0.1\"} 0\nd_seconds_bucket{le=\"0.25\"} 0\n"
               "d_seconds_bucket{le=\"0.5\"} 1\nd_seconds_bucket{le=\"1\"} 1\n"
               "d_seconds_bucket{le=\"2.5\"} 1\nd_seconds_bucket{le=\"5\"} 1\n"
               "d_seconds_bucket{le=\"10\"} 1\nd_seconds_bucket{le=\"+Inf\"} 1\n"
               "d_seconds_sum 0.3\nd_seconds_count 1\n");
  free(t);
  keel_metrics_free(r);
}

/* ---- gauge histograms ------------------------------------------------------------ */

KT_CASE(gauge_histogram_set_replaces_the_contents_and_renders_per_format) {
  keel_metrics *r;
  CHECK_OK(keel_metrics_new(&r, 0));
  keel_metric_family *f, *bad;
  CHECK_OK(keel_metrics_gauge_histogram(r, "queue_depth", "Depth.", (const char *[]){"q"}, 1,
                                        (double[]){0, 10}, 2, &f));
  CHECK_EQ(keel_metrics_gauge_histogram(r, "x_gcount", "h", NULL, 0, NULL, 0, &bad), KEEL_EINVAL);
  CHECK_EQ(keel_metrics_histogram(r, "x_gsum", "h", NULL, 0, NULL, 0, &bad), KEEL_EINVAL);
  CHECK_EQ(keel_metrics_gauge_histogram(r, "y", "h", (const char *[]){"le"}, 1, NULL, 0, &bad),
           KEEL_EINVAL);
  keel_histogram *h;
  keel_gauge *g;
  CHECK_EQ(keel_gauge_get(f, (const char *[]){"a"}, &g), KEEL_EINVAL);
  CHECK_OK(keel_histogram_get(f, (const char *[]){"a"}, &h));
  /* observations (some on this scheduler's shard) are replaced by a set */
  keel_histogram_observe(h, 3);
  keel_histogram_observe(h, 30);
  CHECK_OK(keel_histogram_set(h, (uint64_t[]){4, 2, 1}, 3, 57));
  uint64_t count;
  double sum;
  keel_histogram_totals(h, &count, &sum);
  CHECK_EQ(count, 7);
  CHECK(sum == 57);
  CHECK_EQ(keel_histogram_set(h, (uint64_t[]){1, 2}, 2, 0), KEEL_EINVAL);
  CHECK_EQ(keel_histogram_set(h, (uint64_t[]){1, 2, 3}, 3, NAN), KEEL_EINVAL);
  CHECK_EQ(keel_histogram_set(h, NULL, 3, 0), KEEL_EINVAL);
  char *t = render(r, KEEL_METRICS_TEXT);
  CHECK_STR(t, "# HELP queue_depth Depth.\n"
               "# TYPE queue_depth histogram\n"
               "queue_depth_bucket{q=\"a\",le=\"0\"} 4\n"
               "queue_depth_bucket{q=\"a\",le=\"10\"} 6\n"
               "queue_depth_bucket{q=\"a\",le=\"+Inf\"} 7\n"
               "queue_depth_sum{q=\"a\"} 57\n"
               "queue_depth_count{q=\"a\"} 7\n");
  free(t);
  t = render(r, KEEL_METRICS_OPENMETRICS);
  CHECK_STR(t, "# HELP queue_depth Depth.\n"
               "# TYPE queue_depth gaugehistogram\n"
               "queue_depth_bucket{q=\"a\",le=\"0.0\"} 4\n"
               "queue_depth_bucket{q=\"a\",le=\"10.0\"} 6\n"
               "queue_depth_bucket{q=\"a\",le=\"+Inf\"} 7\n"
               "queue_depth_gsum{q=\"a\"} 57\n"
               "queue_depth_gcount{q=\"a\"} 7\n"
               "# EOF\n");
  free(t);
  /* going down is what a gauge histogram may do */
  CHECK_OK(keel_histogram_set(h, (uint64_t[]){0, 0, 1}, 3, 11));
  t = render(r, KEEL_METRICS_OPENMETRICS);
  CHECK_HAS(t, "queue_depth_bucket{q=\"a\",le=\"10.0\"} 0\n");
  CHECK_HAS(t, "queue_depth_gcount{q=\"a\"} 1\n");
  free(t);
  keel_metrics_free(r);
}

/* set on a plain histogram from every scheduler's and foreign threads'
 * shards: nothing of the earlier observations survives */
static void observer_proc(void *arg) {
  work *w = arg;
  for (int i = 0; i < 100; i++)
    keel_histogram_observe(w->h, 0.5);
  kt_send_u64(w->parent, 1, 0);
}

static void *thread_observer(void *arg) {
  keel_histogram *h = arg;
  for (int i = 0; i < OBS; i++)
    keel_histogram_observe(h, 0.5);
  return NULL;
}

KT_CASE(histogram_set_clears_every_shard) {
  keel_metrics *r;
  CHECK_OK(keel_metrics_new(&r, 0));
  keel_metric_family *f;
  CHECK_OK(keel_metrics_histogram(r, "h_seconds", "H.", NULL, 0, (double[]){1}, 1, &f));
  work w = {NULL, NULL, keel_self()};
  CHECK_OK(keel_histogram_get(f, NULL, &w.h));
  int ns = keel_sched_count();
  for (int i = 0; i < ns; i++) {
    keel_spawn_opts o;
    keel_spawn_opts_init(&o);
    o.scheduler = KEEL_ON_SCHEDULER(i);
    CHECK_OK(keel_spawn(observer_proc, &w, &o, NULL));
  }
  for (int i = 0; i < ns; i++)
    keel_msg_free(kt_recv(60000));
  pthread_t th;
  CHECK_OK(pthread_create(&th, NULL, thread_observer, w.h));
  CHECK_OK(pthread_join(th, NULL));
  uint64_t count;
  keel_histogram_totals(w.h, &count, NULL);
  CHECK_EQ(count, (uint64_t)ns * 100 + OBS);
  CHECK_OK(keel_histogram_set(w.h, (uint64_t[]){2, 3}, 2, 9.5));
  double sum;
  keel_histogram_totals(w.h, &count, &sum);
  CHECK_EQ(count, 5);
  CHECK(sum == 9.5);
  char *t = render(r, KEEL_METRICS_TEXT);
  CHECK_HAS(t, "h_seconds_bucket{le=\"1\"} 2\nh_seconds_bucket{le=\"+Inf\"} 5\n"
               "h_seconds_sum 9.5\nh_seconds_count 5\n");
  free(t);
  keel_metrics_free(r);
}

/* ---- names and escaping ------------------------------------------------------- */

KT_CASE(invalid_metric_and_label_names_are_rejected) {
  keel_metrics *r;
  CHECK_OK(keel_metrics_new(&r, 0));
  keel_metric_family *f;
  const char *bad_names[] = {"", "1abc", "a-b", "a b", "é", "a.b", NULL};
  for (size_t i = 0; i < sizeof bad_names / sizeof bad_names[0]; i++)
    CHECK_EQ(keel_metrics_counter(r, bad_names[i], "h", NULL, 0, &f), KEEL_EINVAL);
  CHECK_EQ(keel_metrics_counter(r, "_total", "h", NULL, 0, &f), KEEL_EINVAL);
  CHECK_EQ(keel_metrics_gauge(r, "g_total", "h", NULL, 0, &f), KEEL_EINVAL);
  CHECK_EQ(keel_metrics_histogram(r, "h_count", "h", NULL, 0, NULL, 0, &f), KEEL_EINVAL);
  CHECK_EQ(keel_metrics_histogram(r, "h_bucket", "h", NULL, 0, NULL, 0, &f), KEEL_EINVAL);
  const char *bad_labels[] = {"", "__name", "1x", "a:b", "a-b"};
  for (size_t i = 0; i < sizeof bad_labels / sizeof bad_labels[0]; i++)
    CHECK_EQ(keel_metrics_gauge(r, "g", "h", &bad_labels[i], 1, &f), KEEL_EINVAL);
  CHECK_EQ(keel_metrics_gauge(r, "g", "h", (const char *[]){"a", "a"}, 2, &f), KEEL_EINVAL);
  CHECK_EQ(keel_metrics_histogram(r, "h", "h", (const char *[]){"le"}, 1, NULL, 0, &f),
           KEEL_EINVAL);
  CHECK_EQ(keel_metrics_histogram(r, "h", "h", NULL, 0, (double[]){1, 1}, 2, &f), KEEL_EINVAL);
  CHECK_EQ(keel_metrics_histogram(r, "h", "h", NULL, 0, (double[]){2, 1}, 2, &f), KEEL_EINVAL);
  CHECK_EQ(keel_metrics_histogram(r, "h", "h", NULL, 0, (double[]){1, INFINITY}, 2, &f),
           KEEL_EINVAL);
  /* valid ones, including a colon in a metric name and "le" on a gauge */
  CHECK_OK(keel_metrics_counter(r, "ns:req_total", "h", (const char *[]){"_x", "A9"}, 2, &f));
  CHECK_OK(keel_metrics_gauge(r, "g", "h", (const char *[]){"le"}, 1, &f));
  CHECK_EQ(keel_metrics_gauge(r, "g", "h", NULL, 0, &f), KEEL_EEXIST);
  /* a counter registered as x and one as x_total are the same family */
  CHECK_OK(keel_metrics_counter(r, "x", "h", NULL, 0, &f));
  CHECK_EQ(keel_metrics_counter(r, "x_total", "h", NULL, 0, &f), KEEL_EEXIST);
  /* children: wrong type, NULL values */
  keel_gauge *g;
  keel_counter *c;
  CHECK_EQ(keel_gauge_get(f, NULL, &g), KEEL_EINVAL);
  CHECK_OK(keel_counter_get(f, NULL, &c));
  CHECK_OK(keel_metrics_gauge(r, "lg", "h", (const char *[]){"a"}, 1, &f));
  CHECK_EQ(keel_gauge_get(f, NULL, &g), KEEL_EINVAL);
  CHECK_EQ(keel_gauge_get(f, (const char *[]){NULL}, &g), KEEL_EINVAL);
  CHECK_EQ(keel_metrics_new(&r, -1), KEEL_EINVAL);
  keel_metrics_free(r);
}

KT_CASE(label_values_and_help_text_are_escaped) {
  keel_metrics *r;
  CHECK_OK(keel_metrics_new(&r, 0));
  keel_metric_family *f;
  CHECK_OK(keel_metrics_gauge(r, "esc", "Back\\slash, \"quotes\"\nand a newline.",
                              (const char *[]){"v"}, 1, &f));
  keel_gauge *g;
  CHECK_OK(keel_gauge_get(f, (const char *[]){"a\"b\\c\nd é"}, &g));
  keel_gauge_set(g, -1.5);
  char *t = render(r, KEEL_METRICS_TEXT);
  CHECK_STR(t, "# HELP esc Back\\\\slash, \"quotes\"\\nand a newline.\n"
               "# TYPE esc gauge\n"
               "esc{v=\"a\\\"b\\\\c\\nd é\"} -1.5\n");
  free(t);
  t = render(r, KEEL_METRICS_OPENMETRICS);
  CHECK_STR(t, "# HELP esc Back\\\\slash, \\\"quotes\\\"\\nand a newline.\n"
               "# TYPE esc gauge\n"
               "esc{v=\"a\\\"b\\\\c\\nd é\"} -1.5\n"
               "# EOF\n");
  free(t);
  keel_metrics_free(r);
}

KT_CASE(counter_add_mixes_whole_and_fractional_amounts_and_set_mirrors_a_total) {
  keel_metrics *r;
  CHECK_OK(keel_metrics_new(&r, 0));
  keel_metric_family *f;
  keel_counter *c, *m;
  CHECK_OK(keel_metrics_counter(r, "mixed_total", "Mixed.", NULL, 0, &f));
  CHECK_OK(keel_counter_get(f, NULL, &c));
  keel_counter_add(c, 3);
  keel_counter_add(c, 0.25);
  keel_counter_inc(c);
  keel_counter_add(c, NAN);
  keel_counter_add(c, -1);
  keel_counter_add(c, 1e300); /* too big for the integer part: goes to the double */
  CHECK(keel_counter_value(c) == 1e300);
  CHECK_OK(keel_metrics_counter(r, "mirror_total", "Mirror.", NULL, 0, &f));
  CHECK_OK(keel_counter_get(f, NULL, &m));
  keel_counter_set(m, 10.5);
  keel_counter_set(m, 12);
  CHECK(keel_counter_value(m) == 12);
  keel_counter_set(m, 12);
  char *t = render(r, KEEL_METRICS_TEXT);
  CHECK_HAS(t, "\nmirror_total 12\n");
  CHECK_HAS(t, "\nmixed_total 1e+300\n");
  free(t);
  keel_metrics_free(r);
}

/* ---- golden exposition ------------------------------------------------------- */

static keel_metrics *small_registry(void) {
  keel_metrics *r;
  CHECK_OK(keel_metrics_new(&r, 0));
  keel_metric_family *req, *temp, *lat, *up;
  CHECK_OK(keel_metrics_counter(r, "http_requests_total", "HTTP requests.",
                                (const char *[]){"method", "code"}, 2, &req));
  CHECK_OK(keel_metrics_gauge(r, "temperature_celsius", "Temperature.", NULL, 0, &temp));
  CHECK_OK(keel_metrics_histogram(r, "latency_seconds", "Latency.", NULL, 0, (double[]){0.25, 1}, 2,
                                  &lat));
  CHECK_OK(keel_metrics_counter(r, "started", "Starts.", NULL, 0, &up));
  keel_counter *get200, *post500, *st;
  keel_gauge *g;
  keel_histogram *h;
  CHECK_OK(keel_counter_get(req, (const char *[]){"GET", "200"}, &get200));
  CHECK_OK(keel_counter_get(req, (const char *[]){"POST", "500"}, &post500));
  keel_counter *again;
  CHECK_OK(keel_counter_get(req, (const char *[]){"GET", "200"}, &again));
  CHECK(again == get200); /* get-or-create returns the same child */
  keel_counter_add(get200, 41);
  keel_counter_inc(again);
  keel_counter_inc(post500);
  keel_counter_add(post500, -5); /* ignored: counters only go up */
  CHECK_OK(keel_gauge_get(temp, NULL, &g));
  keel_gauge_set(g, 20);
  keel_gauge_inc(g);
  keel_gauge_dec(g);
  keel_gauge_add(g, 1.25);
  CHECK_OK(keel_histogram_get(lat, NULL, &h));
  keel_histogram_observe(h, 0.125);
  keel_histogram_observe(h, 0.5);
  keel_histogram_observe(h, 2);
  CHECK_OK(keel_counter_get(up, NULL, &st));
  keel_counter_add(st, 0.5);
  return r;
}

KT_CASE(exposition_of_a_small_registry_is_exact) {
  keel_metrics *r = small_registry();
  char *t = render(r, KEEL_METRICS_TEXT);
  CHECK_STR(t, "# HELP http_requests_total HTTP requests.\n"
               "# TYPE http_requests_total counter\n"
               "http_requests_total{method=\"GET\",code=\"200\"} 42\n"
               "http_requests_total{method=\"POST\",code=\"500\"} 1\n"
               "# HELP temperature_celsius Temperature.\n"
               "# TYPE temperature_celsius gauge\n"
               "temperature_celsius 21.25\n"
               "# HELP latency_seconds Latency.\n"
               "# TYPE latency_seconds histogram\n"
               "latency_seconds_bucket{le=\"0.25\"} 1\n"
               "latency_seconds_bucket{le=\"1\"} 2\n"
               "latency_seconds_bucket{le=\"+Inf\"} 3\n"
               "latency_seconds_sum 2.625\n"
               "latency_seconds_count 3\n"
               "# HELP started_total Starts.\n"
               "# TYPE started_total counter\n"
               "started_total 0.5\n");
  free(t);
  t = render(r, KEEL_METRICS_OPENMETRICS);
  CHECK_STR(t, "# HELP http_requests HTTP requests.\n"
               "# TYPE http_requests counter\n"
               "http_requests_total{method=\"GET\",code=\"200\"} 42\n"
               "http_requests_total{method=\"POST\",code=\"500\"} 1\n"
               "# HELP temperature_celsius Temperature.\n"
               "# TYPE temperature_celsius gauge\n"
               "temperature_celsius 21.25\n"
               "# HELP latency_seconds Latency.\n"
               "# TYPE latency_seconds histogram\n"
               "latency_seconds_bucket{le=\"0.25\"} 1\n"
               "latency_seconds_bucket{le=\"1.0\"} 2\n"
               "latency_seconds_bucket{le=\"+Inf\"} 3\n"
               "latency_seconds_sum 2.625\n"
               "latency_seconds_count 3\n"
               "# HELP started Starts.\n"
               "# TYPE started counter\n"
               "started_total 0.5\n"
               "# EOF\n");
  /* render appends to a buffer the caller keeps */
  keel_metrics_buf b = {0};
  CHECK_OK(keel_metrics_render(r, KEEL_METRICS_OPENMETRICS, &b));
  size_t one = b.len;
  CHECK_OK(keel_metrics_render(r, KEEL_METRICS_OPENMETRICS, &b));
  CHECK_EQ(b.len, 2 * one);
  CHECK(memcmp(b.data, b.data + one, one) == 0);
  CHECK_EQ(strlen(b.data), b.len);
  keel_metrics_buf_free(&b);
  CHECK_EQ(keel_metrics_render(r, (keel_metrics_format)7, &b), KEEL_EINVAL);
  free(t);
  keel_metrics_free(r);
}

KT_CASE(openmetrics_is_chosen_only_when_the_scraper_asks_for_it) {
  keel_metrics_format f;
  const char *ct;
  struct {
    const char *accept;
    keel_metrics_format want;
  } cases[] = {
      {NULL, KEEL_METRICS_TEXT},
      {"", KEEL_METRICS_TEXT},
      {"*/*", KEEL_METRICS_TEXT},
      {"text/plain;version=0.0.4", KEEL_METRICS_TEXT},
      /* what Prometheus 2.x sends */
      {"application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
       "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
       KEEL_METRICS_OPENMETRICS},
      {"application/openmetrics-text", KEEL_METRICS_OPENMETRICS},
      {"Application/OpenMetrics-Text; version=1.0.0; charset=utf-8", KEEL_METRICS_OPENMETRICS},
      {"application/openmetrics-text; version=0.0.1", KEEL_METRICS_TEXT},
      {"application/openmetrics-text;q=0.5, text/plain", KEEL_METRICS_TEXT},
      {"text/plain;q=0.2, application/openmetrics-text;q=0.3", KEEL_METRICS_OPENMETRICS},
      {"application/openmetrics-text;q=0", KEEL_METRICS_TEXT},
      {"application/json", KEEL_METRICS_TEXT},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    CHECK_OK(keel_metrics_negotiate(cases[i].accept, &f, &ct));
    if (f != cases[i].want) fprintf(stderr, "accept: %s\n", cases[i].accept);
    CHECK_EQ(f, cases[i].want);
    CHECK_STR(ct, f == KEEL_METRICS_OPENMETRICS ? KEEL_METRICS_OPENMETRICS_CONTENT_TYPE
                                                : KEEL_METRICS_TEXT_CONTENT_TYPE);
  }
  CHECK_STR(KEEL_METRICS_TEXT_CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8");
  CHECK_OK(keel_metrics_negotiate("application/openmetrics-text", NULL, NULL));
}

/* ---- built-ins -------------------------------------------------------------- */

static atomic_int worker_starts;

static void worker(void *arg) {
  (void)arg;
  if (atomic_fetch_add(&worker_starts, 1) == 0) keel_exit(KEEL_REASON_ERROR, "first start fails");
  keel_msg_t *m;
  keel_receive(&m, KEEL_INFINITY); /* then waits until the supervisor goes */
  keel_msg_free(m);
}

static int worker_start(void *arg, const void *args, size_t args_len, keel_pid_t *pid) {
  keel_spawn_opts o;
  keel_spawn_opts_init(&o);
  o.link = true;
  return keel_spawn(worker, NULL, &o, pid);
}

/* Starts "metsup" with one worker that crashes once, and waits until the
 * restart is counted. Returns the supervisor's pid. */
static keel_pid_t restart_once(keel_metrics *r) {
  atomic_store(&worker_starts, 0);
  keel_sup_child_spec child = {
      .id = "worker", .start = worker_start, .restart = KEEL_SUP_PERMANENT};
  keel_sup_spec spec = {.strategy = KEEL_SUP_ONE_FOR_ONE, .children = &child, .nchildren = 1};
  keel_sup_opts so = {.name = "metsup"};
  keel_pid_t sup;
  CHECK_OK(keel_sup_start(&spec, &so, &sup, NULL));
  for (int i = 0; i < 10000; i++) { /* liveness bound only */
    char *t = render(r, KEEL_METRICS_TEXT);
    int seen =
        strstr(t, "keel_supervisor_restarts_total{supervisor=\"metsup\",child=\"worker\"} 1\n") !=
        NULL;
    free(t);
    if (seen) return sup;
    keel_sleep(1);
  }
  CHECK(!"restart never counted");
  return 0;
}

static void stop_sup(keel_pid_t sup) {
  keel_ref_t ref;
  CHECK_OK(keel_monitor(sup, &ref));
  CHECK_OK(keel_exit_signal(sup, KEEL_REASON_KILL, NULL));
  keel_msg_t *m = kt_recv(60000);
  CHECK_EQ(keel_msg_kind_of(m), KEEL_MSG_DOWN);
  keel_msg_free(m);
}

static double sample(const char *t, const char *name) {
  char pat[128];
  snprintf(pat, sizeof pat, "\n%s ", name);
  const char *p = strstr(t, pat);
  if (!p) {
    fprintf(stderr, "no sample %s in:\n%s\n", name, t);
    abort();
  }
  return strtod(p + strlen(pat), NULL);
}

static void quiet(const keel_report *rep, void *ud) {
  (void)rep;
  (void)ud;
}

KT_CASE(builtin_metrics_are_present_and_plausible) {
  keel_rt_set_report_handler(quiet, NULL);
  keel_metrics *r;
  CHECK_OK(keel_metrics_new(&r, 0));
  CHECK_OK(keel_metrics_register_builtin(r));
  CHECK_EQ(keel_metrics_register_builtin(r), KEEL_EEXIST);
  keel_pid_t sup = restart_once(r);
  for (int i = 0; i < 3; i++)
    kt_send_u64(keel_self(), 9, 0);
  for (int i = 0; i < 3; i++)
    keel_msg_free(kt_recv(1000));
  char *t = render(r, KEEL_METRICS_TEXT);
  CHECK_HAS(t, "# TYPE process_cpu_seconds_total counter\n");
  CHECK_HAS(t, "# TYPE process_resident_memory_bytes gauge\n");
  CHECK_HAS(t, "# TYPE keel_supervisor_restarts_total counter\n");
  CHECK_HAS(t, "# TYPE keel_blocking_queue gauge\n");
  CHECK(sample(t, "process_cpu_seconds_total") >= 0);
  CHECK(sample(t, "process_resident_memory_bytes") > 1e5);
  CHECK(sample(t, "process_virtual_memory_bytes") >= sample(t, "process_resident_memory_bytes"));
  CHECK(sample(t, "process_open_fds") >= 3);
  { /* the same limit sysinfo reads (0 on a machine without a cgroup limit) */
    keel_sys_memory sm;
    keel_sys_memory_get(&sm);
    CHECK(sample(t, "keel_memory_limit_bytes") == (double)sm.limit_bytes);
  }
  double max_fds = sample(t, "process_max_fds");
  CHECK(max_fds == -1 || max_fds >= sample(t, "process_open_fds"));
  double start = sample(t, "process_start_time_seconds");
  double now = (double)time(NULL);
  CHECK(start > 1.5e9 && start <= now + 1 && start > now - 3600);
  CHECK(sample(t, "keel_processes_alive") >= 3); /* this case, the supervisor, the worker */
  CHECK(sample(t, "keel_processes_spawned_total") >= 4);
  CHECK(sample(t, "keel_processes_exited_total") >= 1); /* the crashed worker */
  CHECK(sample(t, "keel_messages_sent_total") >= 3);
  CHECK(sample(t, "keel_messages_to_dead_total") >= 0);
  CHECK(sample(t, "keel_blocking_queue") >= 0);
  CHECK(sample(t, "keel_blocking_running") >= 0);
  free(t);
  stop_sup(sup);
  keel_metrics_free(r);
  keel_rt_set_report_handler(NULL, NULL);
}

static void sleeper(void *arg) {
  (void)arg;
  for (;;)
    keel_sleep(3600 * 1000); /* never reads its mailbox */
}

static void kill_and_wait(keel_pid_t pid) {
  keel_ref_t ref;
  CHECK_OK(keel_monitor(pid, &ref));
  CHECK_OK(keel_exit_signal(pid, KEEL_REASON_KILL, NULL));
  keel_msg_t *m = kt_recv(60000);
  CHECK_EQ(keel_msg_kind_of(m), KEEL_MSG_DOWN);
  keel_msg_free(m);
}

KT_CASE(mailbox_depth_max_and_histogram_cover_every_process) {
  keel_metrics *r;
  CHECK_OK(keel_metrics_new(&r, 0));
  CHECK_OK(keel_metrics_register_builtin(r));
  keel_pid_t a, b;
  CHECK_OK(keel_spawn(sleeper, NULL, NULL, &a));
  CHECK_OK(keel_spawn(sleeper, NULL, NULL, &b));
  for (int i = 0; i < 12; i++)
    kt_send_u64(a, 5, (uint64_t)i);
  for (int i = 0; i < 3; i++)
    kt_send_u64(b, 5, (uint64_t)i);
  keel_proc_info pa, pb;
  for (int i = 0;; i++) { /* liveness bound only */
    CHECK_OK(keel_rt_process_info(a, &pa));
    CHECK_OK(keel_rt_process_info(b, &pb));
    if (pa.mailbox_len == 12 && pb.mailbox_len == 3) break;
    CHECK(i < 10000);
    keel_sleep(1);
  }
  char *t = render(r, KEEL_METRICS_TEXT);
  CHECK(sample(t, "keel_mailbox_depth_max") == 12);
  double n = sample(t, "keel_mailbox_depth_count");
  CHECK(n >= 3); /* this case and the two sleepers, whose mailboxes only hold ours */
  CHECK(n == sample(t, "keel_processes_alive"));
  CHECK(sample(t, "keel_mailbox_depth_sum") == 15);
  CHECK(sample(t, "keel_mailbox_depth_bucket{le=\"0\"}") == n - 2);
  CHECK(sample(t, "keel_mailbox_depth_bucket{le=\"1\"}") == n - 2);
  CHECK(sample(t, "keel_mailbox_depth_bucket{le=\"5\"}") == n - 1); /* b's 3 */
  CHECK(sample(t, "keel_mailbox_depth_bucket{le=\"10\"}") == n - 1);
  CHECK(sample(t, "keel_mailbox_depth_bucket{le=\"50\"}") == n); /* a's 12 */
  CHECK(sample(t, "keel_mailbox_depth_bucket{le=\"+Inf\"}") == n);
  free(t);
  t = render(r, KEEL_METRICS_OPENMETRICS);
  CHECK_HAS(t, "# TYPE keel_mailbox_depth gaugehistogram\n");
  CHECK(sample(t, "keel_mailbox_depth_gsum") == 15);
  CHECK(sample(t, "keel_mailbox_depth_gcount") == n);
  free(t);
  /* the queues go away with their processes: the histogram goes down */
  kill_and_wait(a);
  kill_and_wait(b);
  t = render(r, KEEL_METRICS_TEXT);
  CHECK(sample(t, "keel_mailbox_depth_max") == 0);
  CHECK(sample(t, "keel_mailbox_depth_sum") == 0);
  CHECK(sample(t, "keel_mailbox_depth_count") == n - 2);
  free(t);
  keel_metrics_free(r);
}

static atomic_int spin_stop;

static void spinner(void *arg) {
  keel_pid_t parent = (keel_pid_t)(uintptr_t)arg;
  kt_send_u64(parent, 2, (uint64_t)keel_sched_current());
  /* never yields: holds its scheduler (and cannot move) until told to stop */
  while (!atomic_load_explicit(&spin_stop, memory_order_relaxed)) {
  }
  kt_send_u64(parent, 3, 0);
}

KT_CASE(scheduler_utilization_is_one_while_a_process_holds_it_and_stuck_is_seen) {
  keel_rt_set_report_handler(quiet, NULL);
  keel_metrics *r;
  CHECK_OK(keel_metrics_new(&r, 0));
  CHECK_OK(keel_metrics_register_builtin(r));
  int ns = keel_sched_count();
  char *t = render(r, KEEL_METRICS_TEXT); /* the first interval: since the runtime started */
  char name[96];
  for (int i = 0; i < ns; i++) {
    snprintf(name, sizeof name, "keel_scheduler_utilization{scheduler=\"%d\"}", i);
    double u = sample(t, name);
    CHECK(u >= 0 && u <= 1);
    snprintf(name, sizeof name, "keel_scheduler_run_queue{scheduler=\"%d\"}", i);
    CHECK(sample(t, name) >= 0);
  }
  free(t);
  atomic_store(&spin_stop, 0);
  keel_spawn_opts o;
  keel_spawn_opts_init(&o);
  o.scheduler = KEEL_ON_SCHEDULER(1);
  CHECK_OK(keel_spawn(spinner, (void *)(uintptr_t)keel_self(), &o, NULL));
  keel_msg_t *m = kt_recv(60000);
  int s = (int)kt_u64(m);
  keel_msg_free(m);
  CHECK(s >= 0 && s < ns);
  /* the watchdog marks the held scheduler stuck (liveness bound only) */
  snprintf(name, sizeof name, "keel_scheduler_stuck{scheduler=\"%d\"}", s);
  for (int i = 0;; i++) {
    t = render(r, KEEL_METRICS_TEXT);
    double stuck = sample(t, name);
    free(t);
    if (stuck == 1) break;
    CHECK(stuck == 0);
    CHECK(i < 10000);
    keel_sleep(2);
  }
  /* since the previous render the spinner has held scheduler s throughout:
   * it never slept, so its utilisation is exactly 1 */
  keel_sleep(5);
  t = render(r, KEEL_METRICS_TEXT);
  snprintf(name, sizeof name, "keel_scheduler_utilization{scheduler=\"%d\"}", s);
  CHECK(sample(t, name) == 1);
  double switches = 0;
  for (int i = 0; i < ns; i++) {
    snprintf(name, sizeof name, "keel_scheduler_context_switches_total{scheduler=\"%d\"}", i);
    switches += sample(t, name);
  }
  CHECK(switches >= 2); /* at least this case and the spinner were switched to */
  free(t);
  atomic_store(&spin_stop, 1);
  m = kt_recv(60000);
  CHECK_EQ(keel_msg_tag(m), 3);
  keel_msg_free(m);
  t = render(r, KEEL_METRICS_TEXT);
  for (int i = 0; i < ns; i++) {
    snprintf(name, sizeof name, "keel_scheduler_utilization{scheduler=\"%d\"}", i);
    double u = sample(t, name);
    CHECK(u >= 0 && u <= 1);
  }
  free(t);
  keel_metrics_free(r);
  keel_rt_set_report_handler(NULL, NULL);
}

static double log_lines(keel_metrics *r, const char *level) {
  char *t = render(r, KEEL_METRICS_TEXT);
  char name[64];
  snprintf(name, sizeof name, "keel_log_lines_total{level=\"%s\"}", level);
  double v = sample(t, name);
  CHECK(sample(t, "keel_log_dropped_lines_total") == 0);
  free(t);
  return v;
}

KT_CASE(log_lines_by_level_follow_the_logger_and_never_go_down) {
  keel_metrics *r;
  CHECK_OK(keel_metrics_new(&r, 0));
  CHECK_OK(keel_metrics_register_builtin(r));
  CHECK(log_lines(r, "warn") == 0); /* no logger: nothing counted */
  int fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
  CHECK(fd >= 0);
  keel_log_opts o;
  keel_log_opts_init(&o);
  o.fd = fd;
  o.level = KEEL_LOG_TRACE;
  CHECK_OK(keel_log_init(&o));
  for (int i = 0; i < 3; i++)
    keel_log_warn(NULL, "w", KEEL_INT("i", i));
  keel_log_error(NULL, "e");
  keel_log_error(NULL, "e");
  keel_log_debug(NULL, "d");
  CHECK(log_lines(r, "warn") == 3);
  CHECK(log_lines(r, "error") == 2);
  CHECK(log_lines(r, "debug") == 1);
  CHECK(log_lines(r, "fatal") == 0);
  keel_log_stats st;
  keel_log_stats_get(&st);
  CHECK(log_lines(r, "info") >= (double)st.lines[KEEL_LOG_INFO]);
  /* the logger's counts restart from zero with a new init: ours do not */
  CHECK_OK(keel_log_shutdown());
  CHECK(log_lines(r, "warn") == 3);
  CHECK_OK(keel_log_init(&o));
  keel_log_warn(NULL, "w again");
  CHECK(log_lines(r, "warn") == 4);
  CHECK(log_lines(r, "error") == 2);
  CHECK_OK(keel_log_shutdown());
  close(fd);
  keel_metrics_free(r);
}

/* ---- the exposition for promtool ---------------------------------------------- */

static int expo_om;

static void exposition_main(void *arg) {
  (void)arg;
  keel_rt_set_report_handler(quiet, NULL);
  keel_metrics *r = small_registry();
  CHECK_OK(keel_metrics_register_builtin(r));
  keel_metric_family *f;
  keel_gauge *g;
  CHECK_OK(keel_metrics_gauge(r, "escaped_info", "Help with \\ and\nnewline.",
                              (const char *[]){"v"}, 1, &f));
  CHECK_OK(keel_gauge_get(f, (const char *[]){"q\"b\\s\nn é"}, &g));
  keel_gauge_set(g, 1);
  keel_pid_t sup = restart_once(r);
  char *t = render(r, expo_om ? KEEL_METRICS_OPENMETRICS : KEEL_METRICS_TEXT);
  fputs(t, stdout);
  fflush(stdout);
  free(t);
  stop_sup(sup);
  keel_metrics_free(r);
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "--exposition") == 0) {
    expo_om = argc > 2 && strcmp(argv[2], "openmetrics") == 0;
    return keel_run(exposition_main, NULL, NULL) == 0 ? 0 : 1;
  }
  static const kt_case cases[] = {
      KT_ENTRY_SCHED(counter_sums_exactly_across_every_scheduler_and_foreign_threads, 4),
      KT_ENTRY_SCHED(schedulers_beyond_the_shard_count_still_count_exactly, 3),
      KT_ENTRY_SCHED(histogram_buckets_are_cumulative_with_count_and_sum, 2),
      KT_ENTRY_SCHED(invalid_metric_and_label_names_are_rejected, 1),
      KT_ENTRY_SCHED(counter_add_mixes_whole_and_fractional_amounts_and_set_mirrors_a_total, 1),
      KT_ENTRY_SCHED(label_values_and_help_text_are_escaped, 1),
      KT_ENTRY_SCHED(exposition_of_a_small_registry_is_exact, 2),
      KT_ENTRY_SCHED(openmetrics_is_chosen_only_when_the_scraper_asks_for_it, 1),
      KT_ENTRY_SCHED(builtin_metrics_are_present_and_plausible, 2),
      KT_ENTRY_SCHED(gauge_histogram_set_replaces_the_contents_and_renders_per_format, 1),
      KT_ENTRY_SCHED(histogram_set_clears_every_shard, 3),
      KT_ENTRY_SCHED(mailbox_depth_max_and_histogram_cover_every_process, 2),
      KT_ENTRY_SCHED(scheduler_utilization_is_one_while_a_process_holds_it_and_stuck_is_seen, 2),
      KT_ENTRY_SCHED(log_lines_by_level_follow_the_logger_and_never_go_down, 1),
  };
  return kt_run_cases(cases, sizeof cases / sizeof cases[0], argc, argv);
}
