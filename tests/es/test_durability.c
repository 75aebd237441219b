/* test_durability.c - acknowledged appends survive a SIGKILL; no batch is
 * ever partly visible; positions have no gap.
 *
 * The test binary re-executes itself as a child ("child DIR"): a keel node
 * whose 8 processes append batches of 1-5 events (synchronous=FULL) to their
 * own streams with exact expected versions and print each acknowledged
 * append to stdout, a pipe: "stream version first last n batch". The parent
 * reads the pipe, SIGKILLs the child at a random moment (50-400 ms after its
 * first acknowledged append), reads
 * what the pipe still holds, then opens the store itself and checks: every
 * acknowledged append is there at its versions and positions; every batch
 * in the feed is whole (each event carries its batch id and size); the
 * positions run 1..head without a gap. Several rounds on the same file, the
 * child continuing each stream where the store says it is.
 *
 * On PostgreSQL (kt_es.h) the same rounds run against the suite's server
 * (the child's connections die with it; the server rolls their transactions
 * back). Positions there may have holes (a transaction killed after taking
 * its positions), so the feed is checked for strictly increasing positions,
 * each batch on consecutive ones, instead of 1..head.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>

#include "es/kt_es.h"
#include "keel/io.h"

enum { WRITERS = 8, ROUNDS = 12 };

/* ---- the child --------------------------------------------------------------- */

static const char *child_dir;
static int child_round;

typedef struct cw {
  keel_es *es;
  int index;
} cw;

static void child_writer(void *arg) {
  cw *w = arg;
  char stream[32];
  snprintf(stream, sizeof stream, "dur-%d", w->index);
  keel_es_stream_info info;
  int64_t version = 0;
  if (keel_es_stream_info_get(w->es, stream, &info) == 0) version = info.version;
  keel_es_stream_info_free(&info);
  unsigned seed = (unsigned)(getpid() * 31 + w->index);
  for (int64_t i = 0;; i++) {
    seed = seed * 1103515245u + 12345u;
    int n = 1 + (int)((seed >> 16) % 5);
    int64_t batch = (int64_t)child_round * 100000000 + (int64_t)w->index * 1000000 + i;
    keel_es_event_in ev[5];
    for (int k = 0; k < n; k++)
      ev[k] = (keel_es_event_in){
          .type = "Durable",
          .payload = json_pack("{s:I,s:i,s:i}", "batch", (json_int_t)batch, "k", k, "n", n)};
    keel_es_append_result r;
    int rc = keel_es_append(w->es, stream, version, ev, (size_t)n, &r);
    for (int k = 0; k < n; k++)
      json_decref(ev[k].payload);
    if (rc) {
      fprintf(stderr, "child: append: %s\n", keel_strerror(rc));
      _exit(3);
    }
    version = r.version;
    char line[160];
    int len =
        snprintf(line, sizeof line, "%s %lld %lld %lld %d %lld\n", stream, (long long)r.version,
                 (long long)r.first_position, (long long)r.last_position, n, (long long)batch);
    if (write(1, line, (size_t)len) != len) _exit(4); /* < PIPE_BUF: atomic */
  }
}

/* The store's URL: the PostgreSQL one passed as is, else the folder's file. */
static void store_url(const char *dir_or_url, char *url, size_t len) {
  if (strncmp(dir_or_url, "postgres", 8) == 0)
    snprintf(url, len, "%s", dir_or_url);
  else
    snprintf(url, len, "sqlite:%s/es.db", dir_or_url);
}

static void child_main(void *arg) {
  char url[1400];
  store_url(child_dir, url, sizeof url);
  keel_es *es;
  if (keel_es_open(&(keel_es_opts){.url = url, .sync = KEEL_ES_SYNC_FULL}, &es) != 0) _exit(2);
  static cw w[WRITERS];
  for (int i = 0; i < WRITERS; i++) {
    w[i] = (cw){.es = es, .index = i};
    keel_spawn(child_writer, &w[i], NULL, NULL);
  }
  keel_sleep(60000); /* killed long before */
  _exit(5);
}

/* ---- the parent ----------------------------------------------------------------- */

typedef struct ack {
  char stream[32];
  long long version, first, last, batch;
  int n;
} ack;

static ack *acks;
static size_t nacks, capacks;

static void parse_lines(char *buf, size_t *len) {
  char *start = buf, *nl;
  while ((nl = memchr(start, '\n', (size_t)(buf + *len - start)))) {
    *nl = 0;
    if (nacks == capacks) {
      capacks = capacks ? capacks * 2 : 1024;
      acks = realloc(acks, capacks * sizeof *acks);
      CHECK(acks != NULL);
    }
    ack *a = &acks[nacks];
    CHECK_EQ(sscanf(start, "%31s %lld %lld %lld %d %lld", a->stream, &a->version, &a->first,
                    &a->last, &a->n, &a->batch),
             6);
    nacks++;
    start = nl + 1;
  }
  *len = (size_t)(buf + *len - start);
  memmove(buf, start, *len);
}

static void verify(const char *dir, size_t from, size_t *batches_seen) {
  char url[1400];
  store_url(dir, url, sizeof url);
  bool pg = strncmp(dir, "postgres", 8) == 0;
  keel_es *es;
  CHECK_OK(keel_es_open(&(keel_es_opts){.url = url}, &es));
  /* every append acknowledged this round, whole, where it was acknowledged
   * (those of earlier rounds were checked then, and nothing can delete) */
  for (size_t i = from; i < nacks; i++) {
    ack *a = &acks[i];
    keel_es_events evs;
    CHECK_OK(keel_es_read_stream(
        es, a->stream, &(keel_es_read_opts){.from = a->version - a->n + 1, .to = a->version},
        &evs));
    CHECK_EQ(evs.n, a->n);
    for (size_t k = 0; k < evs.n; k++) {
      CHECK_EQ(evs.v[k].position, a->first + (long long)k);
      CHECK_EQ(json_integer_value(json_object_get(keel_es_event_payload(&evs.v[k]), "batch")),
               a->batch);
    }
    CHECK_EQ(evs.v[evs.n - 1].position, a->last);
    keel_es_events_free(&evs);
  }
  /* the whole feed: no gap, every batch whole */
  int64_t after = 0, head;
  CHECK_OK(keel_es_head(es, &head));
  if (pg) { /* the killed child's transactions end when the server notices:
               until then they hold read_all's horizon (liveness bound only) */
    for (int i = 0; i < 1000; i++) {
      keel_es_events tail;
      CHECK_OK(keel_es_read_all(es, head - 1 > 0 ? head - 1 : 0, 1, NULL, &tail));
      size_t n = tail.n;
      keel_es_events_free(&tail);
      if (n > 0 || head == 0) break;
      keel_sleep(10);
    }
  }
  long long cur_batch = -1;
  int cur_seen = 0, cur_n = 0;
  size_t batches = 0;
  for (;;) {
    keel_es_events evs;
    CHECK_OK(keel_es_read_all(es, after, 5000, NULL, &evs));
    if (evs.n == 0) {
      keel_es_events_free(&evs);
      break;
    }
    for (size_t i = 0; i < evs.n; i++) {
      long long b = json_integer_value(json_object_get(keel_es_event_payload(&evs.v[i]), "batch"));
      int k = (int)json_integer_value(json_object_get(keel_es_event_payload(&evs.v[i]), "k"));
      int n = (int)json_integer_value(json_object_get(keel_es_event_payload(&evs.v[i]), "n"));
      if (!pg || k > 0)
        CHECK_EQ(evs.v[i].position, after + 1);
      else
        CHECK(evs.v[i].position > after);
      after = evs.v[i].position;
      if (b != cur_batch) { /* a batch's events are consecutive positions */
        CHECK_EQ(cur_seen, cur_n);
        CHECK_EQ(k, 0);
        cur_batch = b;
        cur_seen = 0;
        cur_n = n;
        batches++;
      }
      CHECK_EQ(k, cur_seen);
      cur_seen++;
    }
    keel_es_events_free(&evs);
  }
  CHECK_EQ(cur_seen, cur_n);
  CHECK_EQ(after, head);
  *batches_seen = batches;
  keel_es_close(es);
}

KT_CASE(acknowledged_appends_survive_sigkill_and_no_batch_is_partial) {
  kt_store s;
  kt_store_mkdir(&s);
  unsigned seed = (unsigned)time(NULL);
  fprintf(stderr, "seed %u\n", seed);
  for (int round = 0; round < ROUNDS; round++) {
    int rfd;
    pid_t child = kt_child_start("test_durability", s.schema[0] ? s.url : s.dir, round, &rfd);
    fcntl(rfd, F_SETFL, O_NONBLOCK);
    seed = seed * 1103515245u + 12345u;
    int64_t run_ms = 50 + (seed >> 16) % 350;
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    static char buf[1 << 16];
    size_t len = 0;
    size_t before = nacks;
    bool killed = false, eof = false, started = false;
    while (!eof) {
      clock_gettime(CLOCK_MONOTONIC, &t);
      int64_t el = (t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000;
      /* the clock runs from the child's first acknowledgement: a loaded
       * machine can take longer than run_ms to start a sanitized child */
      if (!started && nacks > before) {
        started = true;
        t0 = t;
        el = 0;
      }
      CHECK(started || el < 60000);
      if (started && !killed && el >= run_ms) {
        kill(child, SIGKILL);
        killed = true;
      }
      int rc = keel_wait_fd(rfd, KEEL_READABLE, killed ? 5000 : 10, NULL);
      if (rc == KEEL_ETIMEDOUT) continue;
      ssize_t n = read(rfd, buf + len, sizeof buf - len);
      if (n > 0) {
        len += (size_t)n;
        parse_lines(buf, &len);
      } else if (n == 0) {
        eof = true;
      } else {
        CHECK(errno == EAGAIN || errno == EINTR);
      }
    }
    close(rfd);
    int status;
    CHECK_EQ(waitpid(child, &status, 0), child);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    size_t batches;
    verify(s.schema[0] ? s.url : s.dir, before, &batches);
    fprintf(stderr,
            "round %d: killed after %lld ms, %zu appends acknowledged (%zu in all), %zu "
            "batches stored\n",
            round, (long long)run_ms, nacks - before, nacks, batches);
    CHECK(batches >= nacks);
  }
  CHECK(nacks > 0);
  free(acks);
  kt_store_rmdir(&s);
}

int main(int argc, char **argv) {
  if (argc == 4 && strcmp(argv[1], "child") == 0) {
    child_dir = argv[2];
    child_round = atoi(argv[3]);
    return keel_run(child_main, NULL, NULL);
  }
  static const kt_case cases[] = {
      KT_ENTRY(acknowledged_appends_survive_sigkill_and_no_batch_is_partial)};
  return kt_run_cases(cases, 1, argc, argv);
}
