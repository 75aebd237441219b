/* log.c - structured logs: the encoder, per-thread buffers, the writer thread.
 *
 * A call formats its whole line on the calling thread into a thread-local
 * scratch buffer, with a hand-written JSON encoder: strings are escaped in
 * one pass (quote, backslash and control characters escaped, valid UTF-8
 * copied, each invalid byte replaced by U+FFFD), integers are printed
 * digit by digit, doubles in the shortest decimal that reads back to the
 * same value (a fast path for up to 15 decimals, printf %.17g beyond), and
 * the timestamp reuses the thread's cached "YYYY-MM-DDTHH:MM:SS" of the
 * current second. Bound fields (child loggers, a process's context) are
 * encoded once, when they are bound, into a JSON fragment `,"k":v,...` that
 * each line copies; redaction happens in the encoder, so a fragment never
 * holds a secret.
 *
 * The finished line is then copied into the thread's buffer (a tbuf: a byte
 * array under its own mutex, which only this thread and the writer ever
 * take), so producers never do I/O, with a mark: where the line ends and its
 * sequence number, taken from one node-wide counter under the tbuf's mutex.
 * A writer thread wakes every flush_ms, when a producer finds its buffer
 * half full (a "kick"), when keel_log_flush asks, and at shutdown. On each
 * pass it takes every tbuf's mutex at once, swaps each array (and its marks)
 * with the tbuf's second one, and releases them; outside the locks it writes
 * the lines merged by sequence number, with writev(2) over runs of
 * consecutive lines (one write(2) when one thread logged).
 *
 * So lines come out in the order they were logged whenever one happened
 * before the other, even on different threads (a line logged before a send
 * comes out before the receiver's line): the counter's order agrees with
 * happens-before, and taking every mutex at once makes a pass a consistent
 * cut (each line a pass writes has everything logged before it in the same
 * pass or an earlier one; see drain). Swapping one tbuf at a time would not:
 * a line caused by one logged just after its thread's buffer was swapped
 * could be written a pass before its cause. The cost is the counter: one
 * atomic add per line, uncontended while one thread logs.
 *
 * A line that finds no room waits for the writer (polling every 50 us) up to
 * overflow_wait_ms, then is dropped and counted. tbufs outlive their thread:
 * a thread-exit destructor marks its tbuf dead and the writer frees it after
 * its last drain; keel_log_shutdown orphans the tbufs of live threads, which
 * free them when they next log or exit. A process's context lives in its
 * KEEL_LOCAL_LOG slot as a stack of fragments (set replaces the top, push
 * and pop serve call propagation), freed by a keel_on_exit cleanup.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "keel/log.h"
#include "ops/json_write.h"
#include "keel/process.h"
#include "ops/trace_internal.h"

#define REDACT_MAX     32 /* sensitive keys, defaults included */
#define REDACT_KEY_MAX 63 /* longest sensitive key */
#define DEPTH_MAX      8  /* nested objects deeper than this are written as null */

/* ---- redaction ------------------------------------------------------------ */

typedef struct redact_set {
  int n;
  uint64_t lenmask; /* bit l set when some key has length l (l < 64) */
  uint8_t lens[REDACT_MAX];
  char keys[REDACT_MAX][REDACT_KEY_MAX + 1]; /* lower case */
} redact_set;

static const char *const default_redact[] = {"password", "token",         "secret",
                                             "apiKey",   "authorization", "cookie"};

static int redact_add(redact_set *r, const char *k) {
  size_t n = strlen(k);
  if (n == 0 || n > REDACT_KEY_MAX) return KEEL_EINVAL;
  if (r->n == REDACT_MAX) return KEEL_ERANGE;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)k[i];
    r->keys[r->n][i] = (char)((c >= 'A' && c <= 'Z') ? c + 32 : c);
  }
  r->keys[r->n][n] = 0;
  r->lens[r->n] = (uint8_t)n;
  r->lenmask |= (uint64_t)1 << n;
  r->n++;
  return 0;
}

static void redact_defaults(redact_set *r) {
  memset(r, 0, sizeof *r);
  for (size_t i = 0; i < sizeof default_redact / sizeof default_redact[0]; i++)
    redact_add(r, default_redact[i]);
}

/* Whether key (n bytes) is sensitive: a length mask rejects most keys at once. */
static bool redacted(const redact_set *r, const char *key, size_t n) {
  if (n > REDACT_KEY_MAX || !(r->lenmask & ((uint64_t)1 << n))) return false;
  for (int i = 0; i < r->n; i++) {
    if (r->lens[i] != n) continue;
    size_t j = 0;
    for (; j < n; j++) {
      unsigned char c = (unsigned char)key[j];
      if (c >= 'A' && c <= 'Z') c += 32;
      if ((char)c != r->keys[i][j]) break;
    }
    if (j == n) return true;
  }
  return false;
}

/* ---- the JSON encoder ----------------------------------------------------- */

static void put_value(keel__jw *b, const keel_log_field *f, const redact_set *r, int depth);

/* Fields as `,"k":v` each (first_comma) or `"k":v,"k":v` (inside an object). */
static void put_fields(keel__jw *b, const keel_log_field *f, const redact_set *r, int depth,
                       bool first_comma) {
  bool comma = first_comma;
  for (; f && f->type != KEEL_LOG_T_END; f++) {
    if (comma) keel__jw_ch(b, ',');
    comma = true;
    size_t kl = f->key ? strlen(f->key) : 0;
    keel__jw_ch(b, '"');
    keel__jw_escaped(b, f->key, kl);
    KEEL__JW_LIT(b, "\":");
    if (redacted(r, f->key, kl))
      KEEL__JW_LIT(b, "\"[REDACTED]\"");
    else
      put_value(b, f, r, depth);
  }
}

static void put_value(keel__jw *b, const keel_log_field *f, const redact_set *r, int depth) {
  switch (f->type) {
  case KEEL_LOG_T_STR:
    if (f->v.s)
      keel__jw_str(b, f->v.s);
    else
      KEEL__JW_LIT(b, "null");
    break;
  case KEEL_LOG_T_INT: keel__jw_i64(b, f->v.i); break;
  case KEEL_LOG_T_UINT: keel__jw_u64(b, f->v.u); break;
  case KEEL_LOG_T_DOUBLE: keel__jw_double(b, f->v.d); break;
  case KEEL_LOG_T_BOOL:
    if (f->v.b)
      KEEL__JW_LIT(b, "true");
    else
      KEEL__JW_LIT(b, "false");
    break;
  case KEEL_LOG_T_OBJ:
    if (depth >= DEPTH_MAX) {
      KEEL__JW_LIT(b, "null");
      break;
    }
    keel__jw_ch(b, '{');
    put_fields(b, f->v.obj, r, depth + 1, false);
    keel__jw_ch(b, '}');
    break;
  default: KEEL__JW_LIT(b, "null"); break;
  }
}

/* ---- the state ------------------------------------------------------------ */

/* Where a line ends in its tbuf's array, and its place in the node's order. */
typedef struct line_mark {
  uint64_t seq;
  size_t end;
} line_mark;

enum { MARKS_MIN = 256, IOV_BATCH = 1024 /* Linux's IOV_MAX */ };

/* A thread's buffer. buf, len, the marks and the counters are guarded by mu
 * (taken by the owning thread and the writer only); the out side (what the
 * last pass swapped out, with the merge's cursor) belongs to the writer;
 * next, dead and orphan are guarded by reg_mu. */
typedef struct tbuf {
  pthread_mutex_t mu;
  char *buf;
  size_t len;
  line_mark *marks;
  size_t nmarks, marks_cap;
  uint64_t lines[KEEL_LOG_FATAL + 1], dropped;
  char *out;                   /* writer: a spare of cap bytes, or the lines of this pass */
  line_mark *out_marks;        /* writer */
  size_t out_marks_cap, out_n; /* writer */
  size_t out_i, out_off;       /* writer: the merge's next line and where it starts */
  struct tbuf *out_next;       /* writer: the next tbuf with lines in this pass */
  struct tbuf *next;
  bool dead;   /* its thread exited: the writer frees it after a last drain */
  bool orphan; /* the module shut down: its thread frees it */
} tbuf;

/* What a thread keeps: scratch buffers and its tbuf. Freed at thread exit. */
typedef struct tstate {
  keel__jw line, frag;
  tbuf *tb;
  uint64_t gen; /* the generation tb belongs to */
  int64_t cached_sec;
  char cached_time[20]; /* "YYYY-MM-DDTHH:MM:SS" of cached_sec */
} tstate;

typedef struct log_state {
  uint64_t gen;
  int format, color;
  size_t cap;
  int64_t flush_ms, overflow_wait_ms;
  redact_set redact;
  char *service_frag; /* `,"service":"..."` */
  char *service;      /* raw, for pretty */
  char *path;         /* NULL unless a file sink */
  int fd;
  bool own_fd, sighup;
  struct sigaction old_hup;

  tbuf *list;                         /* reg_mu */
  struct iovec iov[IOV_BATCH];        /* writer only */
  uint64_t totals[KEEL_LOG_FATAL + 1], dropped; /* of freed tbufs; reg_mu */
  atomic_uint_fast64_t extra_dropped; /* lines dropped without a tbuf (no memory) */
  /* Writer-only counters read by stats: relaxed, each is a standalone count. */
  atomic_uint_fast64_t bytes, errors, reopens;

  pthread_t writer;
  pthread_mutex_t ctl_mu;
  pthread_cond_t ctl_cv, done_cv;
  bool stop;                      /* ctl_mu */
  uint64_t flush_req, flush_done; /* ctl_mu */
  /* A hint that wakes the writer; the data itself travels under tbuf mutexes,
   * so the flag needs no ordering beyond its own atomicity. */
  atomic_int kick;
  atomic_int reopen_req;
} log_state;

/* The running state. Published with release by init and read with acquire,
 * so a thread that sees the pointer sees the state it points to; init and
 * shutdown never run concurrently with logging (documented). */
static _Atomic(log_state *) g_st;
static uint64_t g_gen;
/* The node's line order. Relaxed is enough: when one add happens before
 * another they are ordered that way in the counter's modification order
 * (write-write coherence), so a line that happens before another gets the
 * smaller number; the marks themselves travel under the tbuf mutexes. On a
 * line of its own so that the adds do not evict the state producers read. */
static struct {
  _Alignas(64) atomic_uint_fast64_t next;
  char pad[64 - sizeof(atomic_uint_fast64_t)];
} g_seq;
/* Only ever stored (relaxed): the level is a standalone value, publishing nothing. */
static atomic_int g_level = KEEL_LOG_INFO;
/* Set by the SIGHUP handler, consumed by the writer; lock-free atomics are
 * async-signal-safe. */
static atomic_int g_hup;
static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t key_once = PTHREAD_ONCE_INIT;
static pthread_key_t tkey;
static _Thread_local tstate *tl;
static redact_set g_default_redact; /* used before init; built once under key_once */

static void tbuf_free(tbuf *tb) {
  pthread_mutex_destroy(&tb->mu);
  free(tb->buf);
  free(tb->marks);
  free(tb->out);
  free(tb->out_marks);
  free(tb);
}

static void tstate_destroy(void *p) {
  tstate *t = p;
  free(t->line.p);
  free(t->frag.p);
  if (t->tb) {
    pthread_mutex_lock(&reg_mu);
    if (t->tb->orphan)
      tbuf_free(t->tb);
    else
      t->tb->dead = true;
    pthread_mutex_unlock(&reg_mu);
  }
  free(t);
  tl = NULL;
}

static void make_key(void) {
  pthread_key_create(&tkey, tstate_destroy);
  redact_defaults(&g_default_redact);
}

/* The calling thread's state, created on first use (NULL on ENOMEM). The
 * pointer is thread-local: callers use it within one call that never waits. */
static tstate *get_tstate(void) {
  if (tl) return tl;
  pthread_once(&key_once, make_key);
  tstate *t = calloc(1, sizeof *t);
  if (!t) return NULL;
  t->cached_sec = -1;
  pthread_setspecific(tkey, t);
  tl = t;
  return t;
}

/* The thread's tbuf for the running generation, registered on first use. */
static tbuf *get_tbuf(log_state *st, tstate *t) {
  if (t->tb && t->gen == st->gen) return t->tb;
  pthread_mutex_lock(&reg_mu);
  if (t->tb) tbuf_free(t->tb); /* of an earlier generation: orphaned by its shutdown */
  t->tb = NULL;
  tbuf *tb = calloc(1, sizeof *tb);
  if (tb) {
    tb->buf = malloc(st->cap);
    tb->out = malloc(st->cap);
    tb->marks = malloc(MARKS_MIN * sizeof *tb->marks);
    tb->marks_cap = MARKS_MIN;
  }
  if (tb && tb->buf && tb->out && tb->marks) {
    pthread_mutex_init(&tb->mu, NULL);
    tb->next = st->list;
    st->list = tb;
    t->tb = tb;
    t->gen = st->gen;
  } else if (tb) {
    free(tb->buf);
    free(tb->out);
    free(tb->marks);
    free(tb);
  }
  pthread_mutex_unlock(&reg_mu);
  return t->tb;
}

/* ---- time ----------------------------------------------------------------- */

/* Writes "2026-11-22T01:02:03.456" (23 bytes) for now into out. */
static void fmt_time(tstate *t, char *out) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  if (ts.tv_sec != t->cached_sec) {
    struct tm tm;
    time_t s = ts.tv_sec;
    gmtime_r(&s, &tm);
    char tmp[80];
    snprintf(tmp, sizeof tmp, "%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    memcpy(t->cached_time, tmp, 19);
    t->cached_sec = ts.tv_sec;
  }
  memcpy(out, t->cached_time, 19);
  int ms = (int)(ts.tv_nsec / 1000000);
  out[19] = '.';
  out[20] = (char)('0' + ms / 100);
  out[21] = (char)('0' + ms / 10 % 10);
  out[22] = (char)('0' + ms % 10);
}

/* ---- levels --------------------------------------------------------------- */

static const char *const level_names[] = {
    [KEEL_LOG_TRACE] = "trace", [KEEL_LOG_DEBUG] = "debug", [KEEL_LOG_INFO] = "info",
    [KEEL_LOG_WARN] = "warn",   [KEEL_LOG_ERROR] = "error", [KEEL_LOG_FATAL] = "fatal",
    [KEEL_LOG_OFF] = "off"};

const char *const keel_log_level_names[] = {"trace", "debug", "info", "warn",
                                            "error", "fatal", "off",   NULL};
const char *const keel_log_format_names[] = {"json", "pretty", NULL};

static bool level_ok(int level) {
  return level >= KEEL_LOG_TRACE && level <= KEEL_LOG_OFF;
}

const char *keel_log_level_name(keel_log_level level) {
  return level_ok((int)level) ? level_names[level] : NULL;
}

int keel_log_level_parse(const char *text, keel_log_level *out) {
  if (!text || !out) return KEEL_EINVAL;
  for (int i = KEEL_LOG_TRACE; i <= KEEL_LOG_OFF; i++) {
    if (strcasecmp(text, level_names[i]) == 0) {
      *out = (keel_log_level)i;
      return 0;
    }
  }
  return KEEL_EINVAL;
}

int keel_log_set_level(keel_log_level level) {
  if (!level_ok((int)level)) return KEEL_EINVAL;
  atomic_store_explicit(&g_level, (int)level, memory_order_relaxed);
  return 0;
}

keel_log_level keel_log_get_level(void) {
  return (keel_log_level)atomic_load_explicit(&g_level, memory_order_relaxed);
}

bool keel_log_enabled(keel_log_level level) {
  return (int)level >= atomic_load_explicit(&g_level, memory_order_relaxed) &&
         level >= KEEL_LOG_TRACE && level < KEEL_LOG_OFF;
}

/* ---- the writer ----------------------------------------------------------- */

static void write_all(log_state *st, const char *p, size_t n) {
  while (n) {
    ssize_t w = write(st->fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      atomic_fetch_add_explicit(&st->errors, 1, memory_order_relaxed);
      return;
    }
    atomic_fetch_add_explicit(&st->bytes, (uint64_t)w, memory_order_relaxed);
    p += w;
    n -= (size_t)w;
  }
}

static void reopen_file(log_state *st) {
  if (!st->path) return;
  int fd = open(st->path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) {
    atomic_fetch_add_explicit(&st->errors, 1, memory_order_relaxed);
    return;
  }
  close(st->fd);
  st->fd = fd;
  atomic_fetch_add_explicit(&st->reopens, 1, memory_order_relaxed);
}

/* writev of all n entries, resumed after a partial write. */
static void write_iov(log_state *st, struct iovec *iov, int n) {
  while (n > 0) {
    ssize_t w = writev(st->fd, iov, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      atomic_fetch_add_explicit(&st->errors, 1, memory_order_relaxed);
      return;
    }
    atomic_fetch_add_explicit(&st->bytes, (uint64_t)w, memory_order_relaxed);
    size_t left = (size_t)w;
    while (n > 0 && left >= iov->iov_len) {
      left -= iov->iov_len;
      iov++;
      n--;
    }
    if (n > 0) {
      iov->iov_base = (char *)iov->iov_base + left;
      iov->iov_len -= left;
    }
  }
}

/* Writes the lines of the tbufs on the out_next list in sequence order: take
 * the tbuf whose next line has the smallest number, and with it every
 * following line of that tbuf numbered below the other tbufs' next lines (a
 * run, contiguous in its array: one iovec). */
static void write_merged(log_state *st, tbuf *active) {
  int niov = 0;
  while (active) {
    tbuf *best = NULL, **bestp = NULL;
    uint64_t lo = UINT64_MAX, second = UINT64_MAX;
    for (tbuf **pp = &active; *pp; pp = &(*pp)->out_next) {
      uint64_t q = (*pp)->out_marks[(*pp)->out_i].seq;
      if (q < lo) {
        second = lo;
        lo = q;
        best = *pp;
        bestp = pp;
      } else if (q < second) {
        second = q;
      }
    }
    size_t i = best->out_i;
    while (i < best->out_n && best->out_marks[i].seq < second)
      i++;
    size_t end = best->out_marks[i - 1].end;
    st->iov[niov].iov_base = best->out + best->out_off;
    st->iov[niov].iov_len = end - best->out_off;
    niov++;
    best->out_off = end;
    best->out_i = i;
    if (i == best->out_n) *bestp = best->out_next;
    if (niov == IOV_BATCH) {
      write_iov(st, st->iov, niov);
      niov = 0;
    }
  }
  if (niov) write_iov(st, st->iov, niov);
}

/* One pass: every tbuf's lines to the sink, in the order they were logged;
 * dead tbufs freed.
 *
 * The swap is a consistent cut: every tbuf mutex is held at one moment.
 * Suppose line b is in this pass (appended before the writer locked b's
 * tbuf) and line a happened before b. If a were appended after the writer
 * unlocked a's tbuf, then: writer locks b's tbuf, then unlocks a's (all are
 * locked before any is unlocked), before a, before b, before the writer
 * locks b's tbuf - a cycle. So a is in this pass or an earlier one, and
 * within the pass the sequence order puts it first. By the same argument
 * every line of a later pass has a larger number than every line of this
 * one, so the file is sorted by number across passes too. */
static void drain(log_state *st) {
  pthread_mutex_lock(&reg_mu);
  for (tbuf *tb = st->list; tb; tb = tb->next)
    pthread_mutex_lock(&tb->mu);
  tbuf *active = NULL;
  int nactive = 0;
  for (tbuf *tb = st->list; tb; tb = tb->next) {
    if (!tb->len) continue;
    char *full = tb->buf;
    tb->buf = tb->out;
    tb->out = full;
    line_mark *marks = tb->marks;
    size_t marks_cap = tb->marks_cap;
    tb->marks = tb->out_marks;
    tb->marks_cap = tb->out_marks_cap;
    tb->out_marks = marks;
    tb->out_marks_cap = marks_cap;
    tb->out_n = tb->nmarks;
    tb->out_i = tb->out_off = 0;
    tb->len = tb->nmarks = 0;
    tb->out_next = active;
    active = tb;
    nactive++;
  }
  for (tbuf *tb = st->list; tb; tb = tb->next)
    pthread_mutex_unlock(&tb->mu);
  if (nactive == 1)
    write_all(st, active->out, active->out_marks[active->out_n - 1].end);
  else if (nactive > 1)
    write_merged(st, active);
  for (tbuf **pp = &st->list; *pp;) {
    tbuf *tb = *pp;
    if (tb->dead) { /* its thread is gone: nothing more can arrive */
      for (int i = KEEL_LOG_TRACE; i <= KEEL_LOG_FATAL; i++)
        st->totals[i] += tb->lines[i];
      st->dropped += tb->dropped;
      *pp = tb->next;
      tbuf_free(tb);
      continue;
    }
    pp = &tb->next;
  }
  pthread_mutex_unlock(&reg_mu);
}

static void *writer_main(void *arg) {
  log_state *st = arg;
  for (;;) {
    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += st->flush_ms / 1000;
    dl.tv_nsec += (long)(st->flush_ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
      dl.tv_sec++;
      dl.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&st->ctl_mu);
    while (!st->stop && !atomic_load(&st->kick) && st->flush_req == st->flush_done &&
           !atomic_load(&st->reopen_req)) {
      if (pthread_cond_timedwait(&st->ctl_cv, &st->ctl_mu, &dl) == ETIMEDOUT) break;
    }
    atomic_store(&st->kick, 0);
    uint64_t seen = st->flush_req;
    bool stop = st->stop;
    pthread_mutex_unlock(&st->ctl_mu);

    if (atomic_exchange(&g_hup, 0) | atomic_exchange(&st->reopen_req, 0)) reopen_file(st);
    drain(st);

    pthread_mutex_lock(&st->ctl_mu);
    st->flush_done = seen;
    pthread_cond_broadcast(&st->done_cv);
    pthread_mutex_unlock(&st->ctl_mu);
    if (stop) break;
  }
  return NULL;
}

static void kick_writer(log_state *st) {
  if (atomic_load_explicit(&st->kick, memory_order_relaxed)) return;
  if (atomic_exchange(&st->kick, 1)) return;
  /* Signalled under ctl_mu: the writer tests kick under it before waiting,
   * so the wake-up cannot fall between its test and its wait. */
  pthread_mutex_lock(&st->ctl_mu);
  pthread_cond_signal(&st->ctl_cv);
  pthread_mutex_unlock(&st->ctl_mu);
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Copies a finished line into the thread's buffer (or drops and counts it). */
static void append(log_state *st, tstate *t, const char *line, size_t n, int level) {
  tbuf *tb = get_tbuf(st, t);
  if (!tb) {
    atomic_fetch_add_explicit(&st->extra_dropped, 1, memory_order_relaxed);
    return;
  }
  int64_t deadline = -1;
  for (;;) {
    pthread_mutex_lock(&tb->mu);
    if (n <= st->cap && tb->len + n <= st->cap) {
      if (tb->nmarks == tb->marks_cap) {
        size_t cap = tb->marks_cap ? tb->marks_cap * 2 : MARKS_MIN;
        line_mark *m = realloc(tb->marks, cap * sizeof *m);
        if (!m) {
          tb->dropped++;
          pthread_mutex_unlock(&tb->mu);
          return;
        }
        tb->marks = m;
        tb->marks_cap = cap;
      }
      memcpy(tb->buf + tb->len, line, n);
      tb->len += n;
      /* Under the mutex, with the append: a pass that holds this line holds
       * its number, and no line is numbered but not yet in a buffer. */
      uint64_t seq = atomic_fetch_add_explicit(&g_seq.next, 1, memory_order_relaxed);
      tb->marks[tb->nmarks++] = (line_mark){seq, tb->len};
      tb->lines[level]++;
      bool half = tb->len > st->cap / 2;
      pthread_mutex_unlock(&tb->mu);
      if (half) kick_writer(st);
      return;
    }
    bool give_up =
        n > st->cap || (st->overflow_wait_ms < 0 && st->overflow_wait_ms != KEEL_INFINITY);
    if (!give_up && st->overflow_wait_ms != KEEL_INFINITY) {
      int64_t now = now_ms();
      if (deadline < 0) deadline = now + st->overflow_wait_ms;
      give_up = now >= deadline;
    }
    if (give_up) {
      tb->dropped++;
      pthread_mutex_unlock(&tb->mu);
      return;
    }
    pthread_mutex_unlock(&tb->mu);
    kick_writer(st);
    struct timespec ts = {0, 50000};
    nanosleep(&ts, NULL);
  }
}

/* ---- formatting a line ---------------------------------------------------- */

typedef struct ctxnode {
  struct ctxnode *prev;
  size_t len;
  char frag[];
} ctxnode;

typedef struct ctxslot {
  ctxnode *top;
  int pushes;
} ctxslot;

struct keel_logger {
  size_t len;
  char frag[];
};

static const char *const pretty_colors[] = {
    [KEEL_LOG_TRACE] = "\x1b[90m", [KEEL_LOG_DEBUG] = "\x1b[34m", [KEEL_LOG_INFO] = "\x1b[32m",
    [KEEL_LOG_WARN] = "\x1b[33m",  [KEEL_LOG_ERROR] = "\x1b[31m", [KEEL_LOG_FATAL] = "\x1b[35;1m"};
static const char *const pretty_names[] = {
    [KEEL_LOG_TRACE] = "TRACE", [KEEL_LOG_DEBUG] = "DEBUG", [KEEL_LOG_INFO] = "INFO ",
    [KEEL_LOG_WARN] = "WARN ",  [KEEL_LOG_ERROR] = "ERROR", [KEEL_LOG_FATAL] = "FATAL"};

/* Turns a fragment `,"k":v,"k2":{...}` into ` k=v k2={...}`. */
static void prettify(keel__jw *out, const char *f, size_t n, bool color) {
  int depth = 0;
  bool in_str = false, at_key = false;
  for (size_t i = 0; i < n; i++) {
    char c = f[i];
    if (in_str) {
      if (c == '\\' && i + 1 < n) {
        keel__jw_ch(out, c);
        keel__jw_ch(out, f[++i]);
        continue;
      }
      if (c == '"') {
        in_str = false;
        if (at_key) {
          at_key = false;
          if (color) KEEL__JW_LIT(out, "\x1b[0m");
          i++; /* the ':' */
          keel__jw_ch(out, '=');
          continue;
        }
      }
      keel__jw_ch(out, c);
      continue;
    }
    if (depth == 0 && c == ',') {
      keel__jw_ch(out, ' ');
      if (i + 1 < n && f[i + 1] == '"') {
        at_key = in_str = true;
        i++;
        if (color) KEEL__JW_LIT(out, "\x1b[36m");
      }
      continue;
    }
    if (c == '"') in_str = true;
    if (c == '{') depth++;
    if (c == '}') depth--;
    keel__jw_ch(out, c);
  }
}

/* ---- the newest error line (keel_log_last_error) ---------------------------- */

static struct {
  pthread_mutex_t mu;
  uint64_t count;
  char msg[160];
  char request_id[80];
} g_last_err = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* The string value of "requestId" in an encoded fragment (',"k":v...'), or
 * in the line's own fields; "" when none. */
static void find_request_id(const char *frag, size_t len, const keel_log_field *fields, char *out,
                            size_t cap) {
  static const char key[] = "\"requestId\":\"";
  out[0] = 0;
  for (const keel_log_field *f = fields; f && f->type != KEEL_LOG_T_END; f++)
    if (strcmp(f->key, "requestId") == 0 && f->type == KEEL_LOG_T_STR && f->v.s) {
      snprintf(out, cap, "%s", f->v.s);
      return;
    }
  if (!frag || len < sizeof key) return;
  const char *p = memmem(frag, len, key, sizeof key - 1);
  if (!p) return;
  p += sizeof key - 1;
  size_t n = 0;
  while (p + n < frag + len && p[n] != '"' && p[n] != '\\' && n + 1 < cap)
    n++;
  memcpy(out, p, n);
  out[n] = 0;
}

static void note_error(const char *msg, const ctxnode *ctx, const keel_log_field *fields) {
  char rid[80];
  find_request_id(ctx ? ctx->frag : NULL, ctx ? ctx->len : 0, fields, rid, sizeof rid);
  pthread_mutex_lock(&g_last_err.mu);
  g_last_err.count++;
  snprintf(g_last_err.msg, sizeof g_last_err.msg, "%s", msg);
  snprintf(g_last_err.request_id, sizeof g_last_err.request_id, "%s", rid);
  pthread_mutex_unlock(&g_last_err.mu);
}

uint64_t keel_log_last_error(char *msg, size_t msg_cap, char *request_id, size_t rid_cap) {
  pthread_mutex_lock(&g_last_err.mu);
  uint64_t n = g_last_err.count;
  if (msg && msg_cap) snprintf(msg, msg_cap, "%s", g_last_err.msg);
  if (request_id && rid_cap) snprintf(request_id, rid_cap, "%s", g_last_err.request_id);
  pthread_mutex_unlock(&g_last_err.mu);
  return n;
}

/* The current span's ids (keel/trace.h): every line inside a span carries them. */
static void put_trace_ids(keel__jw *b) {
  char tid[33], sid[17];
  if (!keel__trace_log_ids(tid, sid)) return;
  KEEL__JW_LIT(b, ",\"trace_id\":\"");
  keel__jw_put(b, tid, 32);
  KEEL__JW_LIT(b, "\",\"span_id\":\"");
  keel__jw_put(b, sid, 16);
  keel__jw_ch(b, '"');
}

static void emit(const keel_logger *lg, keel_log_level level, const char *event, const char *msg,
                 const keel_log_field *fields) {
  if (!keel_log_enabled(level)) return;
  tstate *t = get_tstate();
  if (!t) return;
  log_state *st = atomic_load_explicit(&g_st, memory_order_acquire);
  const redact_set *r = st ? &st->redact : &g_default_redact;
  ctxslot *cs = keel_local_get(KEEL_LOCAL_LOG);
  const ctxnode *ctx = cs ? cs->top : NULL;
  if (!msg) msg = "";
  if (level >= KEEL_LOG_ERROR) note_error(msg, ctx, fields);
  char ts[23];
  fmt_time(t, ts);
  keel__jw *b = &t->line;
  b->len = 0;
  b->oom = false;
  if (!st || st->format == KEEL_LOG_JSON) {
    KEEL__JW_LIT(b, "{\"time\":\"");
    keel__jw_put(b, ts, 23);
    KEEL__JW_LIT(b, "Z\",\"level\":\"");
    keel__jw_put(b, level_names[level], strlen(level_names[level]));
    KEEL__JW_LIT(b, "\",\"msg\":");
    keel__jw_str(b, msg);
    if (st)
      keel__jw_put(b, st->service_frag, strlen(st->service_frag));
    else
      KEEL__JW_LIT(b, ",\"service\":\"keel\"");
    if (event) {
      KEEL__JW_LIT(b, ",\"event\":");
      keel__jw_str(b, event);
    }
    if (lg) keel__jw_put(b, lg->frag, lg->len);
    if (ctx) keel__jw_put(b, ctx->frag, ctx->len);
    put_trace_ids(b);
    put_fields(b, fields, r, 0, true);
    KEEL__JW_LIT(b, "}\n");
  } else {
    bool color = st->color;
    keel__jw *f = &t->frag;
    f->len = 0;
    f->oom = false;
    if (event) {
      KEEL__JW_LIT(f, ",\"event\":");
      keel__jw_str(f, event);
    }
    if (lg) keel__jw_put(f, lg->frag, lg->len);
    if (ctx) keel__jw_put(f, ctx->frag, ctx->len);
    put_trace_ids(f);
    put_fields(f, fields, r, 0, true);
    ts[10] = ' ';
    keel__jw_put(b, ts, 23);
    keel__jw_ch(b, ' ');
    if (color) keel__jw_put(b, pretty_colors[level], strlen(pretty_colors[level]));
    keel__jw_put(b, pretty_names[level], 5);
    if (color) KEEL__JW_LIT(b, "\x1b[0m");
    keel__jw_ch(b, ' ');
    keel__jw_escaped(b, msg, strlen(msg));
    KEEL__JW_LIT(b, " (");
    keel__jw_escaped(b, st->service, strlen(st->service));
    keel__jw_ch(b, ')');
    if (!f->oom) prettify(b, f->p, f->len, color);
    keel__jw_ch(b, '\n');
    if (f->oom) b->oom = true;
  }
  if (b->oom) {
    if (st) atomic_fetch_add_explicit(&st->extra_dropped, 1, memory_order_relaxed);
    return;
  }
  if (!st) { /* not started: synchronous, unbuffered */
    const char *p = b->p;
    size_t n = b->len;
    while (n) {
      ssize_t w = write(2, p, n);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) break;
      p += w;
      n -= (size_t)w;
    }
    return;
  }
  append(st, t, b->p, b->len, (int)level);
  if (level == KEEL_LOG_FATAL) keel_log_flush();
}

void keel_log_write(const keel_logger *lg, keel_log_level level, const char *msg,
                    const keel_log_field *fields) {
  if ((int)level < KEEL_LOG_TRACE || level >= KEEL_LOG_OFF) return;
  emit(lg, level, NULL, msg, fields);
}

void keel_log_event_list(keel_log_level level, const char *event, const keel_log_field *fields) {
  if ((int)level < KEEL_LOG_TRACE || level >= KEEL_LOG_OFF) return;
  emit(NULL, level, event ? event : "", event, fields);
}

void keel_log_report_handler(const keel_report *r, void *ud) {
  char pid[24];
  keel_pid_format(r->pid, pid, sizeof pid);
  if (r->kind == KEEL_REPORT_CRASH) {
    keel_log_event(KEEL_LOG_ERROR, "process_crashed", KEEL_STR("pid", pid),
                   KEEL_STR("name", r->name), KEEL_STR("reason", r->reason),
                   KEEL_INT("scheduler", r->scheduler));
  } else if (r->kind == KEEL_REPORT_STUCK) {
    keel_log_event(KEEL_LOG_WARN, "process_stuck", KEEL_STR("pid", pid), KEEL_STR("name", r->name),
                   KEEL_INT("scheduler", r->scheduler), KEEL_INT("held_ms", r->held_ms));
  }
}

/* ---- bound fields: child loggers and process contexts --------------------- */

/* Encodes prefix + fields into a fresh fragment (redacted). NULL on ENOMEM. */
static int encode_fragment(const char *prefix, size_t plen, const keel_log_field *fields,
                           keel__jw *out) {
  log_state *st = atomic_load_explicit(&g_st, memory_order_acquire);
  pthread_once(&key_once, make_key);
  const redact_set *r = st ? &st->redact : &g_default_redact;
  memset(out, 0, sizeof *out);
  keel__jw_put(out, prefix, plen);
  put_fields(out, fields, r, 0, true);
  if (out->oom) {
    free(out->p);
    return KEEL_ENOMEM;
  }
  return 0;
}

keel_logger *keel_log_child_list(const keel_logger *parent, const keel_log_field *fields) {
  keel__jw f;
  if (encode_fragment(parent ? parent->frag : "", parent ? parent->len : 0, fields, &f))
    return NULL;
  keel_logger *lg = malloc(sizeof *lg + f.len + 1);
  if (lg) {
    lg->len = f.len;
    if (f.len) memcpy(lg->frag, f.p, f.len);
    lg->frag[f.len] = 0;
  }
  free(f.p);
  return lg;
}

void keel_log_free(keel_logger *lg) {
  free(lg);
}

static ctxnode *node_new(const char *frag, size_t len, ctxnode *prev) {
  ctxnode *n = malloc(sizeof *n + len + 1);
  if (!n) return NULL;
  n->prev = prev;
  n->len = len;
  if (len) memcpy(n->frag, frag, len);
  n->frag[len] = 0;
  return n;
}

static void slot_free(void *arg) {
  ctxslot *cs = arg;
  while (cs->top) {
    ctxnode *p = cs->top->prev;
    free(cs->top);
    cs->top = p;
  }
  free(cs);
}

/* The calling process's slot, created (with its exit cleanup) on first use. */
static int get_slot(ctxslot **out) {
  if (!keel_self()) return KEEL_ENOTPROC;
  ctxslot *cs = keel_local_get(KEEL_LOCAL_LOG);
  if (!cs) {
    cs = calloc(1, sizeof *cs);
    if (!cs) return KEEL_ENOMEM;
    int rc = keel_on_exit(slot_free, cs);
    if (rc) {
      free(cs);
      return rc;
    }
    keel_local_set(KEEL_LOCAL_LOG, cs);
  }
  *out = cs;
  return 0;
}

/* Replaces the top node with one holding frag (a base node when none). */
static int replace_top(ctxslot *cs, const char *frag, size_t len) {
  ctxnode *prev = cs->top ? cs->top->prev : NULL;
  ctxnode *n = node_new(frag, len, prev);
  if (!n) return KEEL_ENOMEM;
  free(cs->top);
  cs->top = n;
  return 0;
}

int keel_log_context_set_list(const keel_log_field *fields) {
  ctxslot *cs;
  int rc = get_slot(&cs);
  if (rc) return rc;
  keel__jw f;
  if ((rc = encode_fragment("", 0, fields, &f))) return rc;
  rc = replace_top(cs, f.p ? f.p : "", f.len);
  free(f.p);
  return rc;
}

int keel_log_context_add_list(const keel_log_field *fields) {
  ctxslot *cs;
  int rc = get_slot(&cs);
  if (rc) return rc;
  keel__jw f;
  if ((rc = encode_fragment(cs->top ? cs->top->frag : "", cs->top ? cs->top->len : 0, fields, &f)))
    return rc;
  rc = replace_top(cs, f.p ? f.p : "", f.len);
  free(f.p);
  return rc;
}

int keel_log_context_clear(void) {
  if (!keel_self()) return KEEL_ENOTPROC;
  ctxslot *cs = keel_local_get(KEEL_LOCAL_LOG);
  if (!cs || !cs->top) return 0;
  return replace_top(cs, "", 0);
}

char *keel_log_context_get(void) {
  if (!keel_self()) return NULL;
  ctxslot *cs = keel_local_get(KEEL_LOCAL_LOG);
  size_t len = cs && cs->top ? cs->top->len : 0;
  char *s = malloc(len + 3); /* "{" + fields without their leading comma + "}" + NUL */
  if (!s) return NULL;
  s[0] = '{';
  if (len) memcpy(s + 1, cs->top->frag + 1, len - 1); /* skip the leading comma */
  s[len ? len : 1] = '}';
  s[(len ? len : 1) + 1] = 0;
  return s;
}

int keel_log_context_export(char **blob, size_t *len) {
  if (!blob || !len) return KEEL_EINVAL;
  *blob = NULL;
  *len = 0;
  if (!keel_self()) return KEEL_ENOTPROC;
  ctxslot *cs = keel_local_get(KEEL_LOCAL_LOG);
  if (!cs || !cs->top || !cs->top->len) return 0;
  char *b = malloc(cs->top->len);
  if (!b) return KEEL_ENOMEM;
  memcpy(b, cs->top->frag, cs->top->len);
  *blob = b;
  *len = cs->top->len;
  return 0;
}

int keel_log_context_push(const char *blob, size_t len) {
  if (len && (!blob || len < 4 || blob[0] != ',' || blob[1] != '"' || memchr(blob, 0, len)))
    return KEEL_EINVAL;
  ctxslot *cs;
  int rc = get_slot(&cs);
  if (rc) return rc;
  ctxnode *n = node_new(len ? blob : "", len, cs->top);
  if (!n) return KEEL_ENOMEM;
  cs->top = n;
  cs->pushes++;
  return 0;
}

int keel_log_context_pop(void) {
  if (!keel_self()) return KEEL_ENOTPROC;
  ctxslot *cs = keel_local_get(KEEL_LOCAL_LOG);
  if (!cs || cs->pushes == 0) return KEEL_ESTATE;
  ctxnode *top = cs->top;
  cs->top = top->prev;
  free(top);
  cs->pushes--;
  return 0;
}

/* ---- init, flush, shutdown, stats ----------------------------------------- */

void keel_log_opts_init(keel_log_opts *o) {
  memset(o, 0, sizeof *o);
}

static void on_sighup(int sig) {
  (void)sig;
  atomic_store(&g_hup, 1);
}

static void flush_at_exit(void) {
  keel_log_flush();
}

static void state_free(log_state *st) {
  free(st->service_frag);
  free(st->service);
  free(st->path);
  free(st);
}

int keel_log_init(const keel_log_opts *opts) {
  if (atomic_load(&g_st)) return KEEL_ESTATE;
  pthread_once(&key_once, make_key);
  keel_log_opts o;
  if (opts)
    o = *opts;
  else
    keel_log_opts_init(&o);

  keel_log_level level = KEEL_LOG_INFO;
  if (o.level != 0) {
    if (!level_ok(o.level)) return KEEL_EINVAL;
    level = (keel_log_level)o.level;
  } else {
    const char *e = getenv("LOG_LEVEL");
    if (e && *e && keel_log_level_parse(e, &level)) {
      fprintf(stderr,
              "keel_log_init: LOG_LEVEL: expected one of trace, debug, info, warn, "
              "error, fatal, off; got \"%.40s\"\n",
              e);
      return KEEL_EINVAL;
    }
  }
  int format = o.format;
  if (format == 0) {
    const char *e = getenv("LOG_FORMAT");
    format = KEEL_LOG_JSON;
    if (e && *e) {
      if (strcasecmp(e, "pretty") == 0)
        format = KEEL_LOG_PRETTY;
      else if (strcasecmp(e, "json") != 0) {
        fprintf(stderr, "keel_log_init: LOG_FORMAT: expected json or pretty; got \"%.40s\"\n", e);
        return KEEL_EINVAL;
      }
    }
  } else if (format != KEEL_LOG_JSON && format != KEEL_LOG_PRETTY) {
    return KEEL_EINVAL;
  }

  log_state *st = calloc(1, sizeof *st);
  if (!st) return KEEL_ENOMEM;
  st->format = format;
  st->cap = o.buffer_size ? o.buffer_size : (size_t)1 << 20;
  st->flush_ms = o.flush_ms > 0 ? o.flush_ms : 100;
  st->overflow_wait_ms = o.overflow_wait_ms == 0 ? 10 : o.overflow_wait_ms;
  if (st->overflow_wait_ms < 0 && st->overflow_wait_ms != KEEL_INFINITY &&
      st->overflow_wait_ms != KEEL_NOWAIT) {
    state_free(st);
    return KEEL_EINVAL;
  }
  st->fd = -1;
  redact_defaults(&st->redact);
  for (const char *const *k = o.redact; k && *k; k++) {
    if (redact_add(&st->redact, *k)) {
      state_free(st);
      return KEEL_EINVAL;
    }
  }
  const char *service = o.service ? o.service : getenv("SERVICE_NAME");
  if (!service || !*service) service = "keel";
  keel__jw sf = {0};
  KEEL__JW_LIT(&sf, ",\"service\":");
  keel__jw_str(&sf, service);
  keel__jw_ch(&sf, 0);
  st->service_frag = sf.p;
  st->service = strdup(service);
  if (sf.oom || !st->service) {
    state_free(st);
    return KEEL_ENOMEM;
  }
  if (o.fd < 0) {
    state_free(st);
    return KEEL_EINVAL;
  }
  if (o.fd > 0) {
    st->fd = o.fd;
  } else {
    const char *path = o.file ? o.file : getenv("LOG_FILE");
    if (path && *path) {
      st->path = strdup(path);
      if (!st->path) {
        state_free(st);
        return KEEL_ENOMEM;
      }
      st->fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
      if (st->fd < 0) {
        state_free(st);
        return KEEL_EIO;
      }
      st->own_fd = true;
    } else {
      st->fd = 1;
    }
  }
  st->color = o.color ? o.color > 0 : isatty(st->fd) == 1;
  st->gen = ++g_gen;
  pthread_mutex_init(&st->ctl_mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&st->ctl_cv, &ca);
  pthread_condattr_destroy(&ca);
  pthread_cond_init(&st->done_cv, NULL);
  if (pthread_create(&st->writer, NULL, writer_main, st) != 0) {
    if (st->own_fd) close(st->fd);
    pthread_mutex_destroy(&st->ctl_mu);
    pthread_cond_destroy(&st->ctl_cv);
    pthread_cond_destroy(&st->done_cv);
    state_free(st);
    return KEEL_ENOMEM;
  }
  if (st->path && !o.no_sighup_reopen) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sighup;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    st->sighup = sigaction(SIGHUP, &sa, &st->old_hup) == 0;
  }
  static bool atexit_done;
  if (!atexit_done) atexit_done = atexit(flush_at_exit) == 0;
  keel_log_set_level(level);
  atomic_store_explicit(&g_st, st, memory_order_release);
  keel_log_follow_calls(true); /* correlation ids follow gen_server calls */
  return 0;
}

int keel_log_flush(void) {
  log_state *st = atomic_load_explicit(&g_st, memory_order_acquire);
  if (!st) return KEEL_ESTATE;
  pthread_mutex_lock(&st->ctl_mu);
  uint64_t mine = ++st->flush_req;
  pthread_cond_signal(&st->ctl_cv);
  while (st->flush_done < mine)
    pthread_cond_wait(&st->done_cv, &st->ctl_mu);
  pthread_mutex_unlock(&st->ctl_mu);
  return 0;
}

int keel_log_reopen(void) {
  log_state *st = atomic_load_explicit(&g_st, memory_order_acquire);
  if (!st) return KEEL_ESTATE;
  atomic_store(&st->reopen_req, 1);
  pthread_mutex_lock(&st->ctl_mu);
  pthread_cond_signal(&st->ctl_cv);
  pthread_mutex_unlock(&st->ctl_mu);
  return 0;
}

int keel_log_shutdown(void) {
  log_state *st = atomic_load_explicit(&g_st, memory_order_acquire);
  if (st) keel_log_follow_calls(false);
  if (!st) return KEEL_ESTATE;
  pthread_mutex_lock(&st->ctl_mu);
  st->stop = true;
  pthread_cond_signal(&st->ctl_cv);
  pthread_mutex_unlock(&st->ctl_mu);
  pthread_join(st->writer, NULL); /* its last pass drained every buffer */
  atomic_store_explicit(&g_st, NULL, memory_order_release);
  if (st->sighup) sigaction(SIGHUP, &st->old_hup, NULL);
  atomic_store(&g_hup, 0);
  pthread_mutex_lock(&reg_mu);
  for (tbuf *tb = st->list, *next; tb; tb = next) {
    next = tb->next;
    if (tb->dead)
      tbuf_free(tb);
    else
      tb->orphan = true; /* its thread frees it */
  }
  pthread_mutex_unlock(&reg_mu);
  if (st->own_fd) close(st->fd);
  pthread_mutex_destroy(&st->ctl_mu);
  pthread_cond_destroy(&st->ctl_cv);
  pthread_cond_destroy(&st->done_cv);
  state_free(st);
  return 0;
}

void keel_log_stats_get(keel_log_stats *out) {
  memset(out, 0, sizeof *out);
  log_state *st = atomic_load_explicit(&g_st, memory_order_acquire);
  if (!st) return;
  pthread_mutex_lock(&reg_mu);
  for (int i = KEEL_LOG_TRACE; i <= KEEL_LOG_FATAL; i++)
    out->lines[i] = st->totals[i];
  out->dropped = st->dropped;
  for (tbuf *tb = st->list; tb; tb = tb->next) {
    pthread_mutex_lock(&tb->mu);
    for (int i = KEEL_LOG_TRACE; i <= KEEL_LOG_FATAL; i++)
      out->lines[i] += tb->lines[i];
    out->dropped += tb->dropped;
    pthread_mutex_unlock(&tb->mu);
  }
  pthread_mutex_unlock(&reg_mu);
  out->dropped += atomic_load_explicit(&st->extra_dropped, memory_order_relaxed);
  out->bytes_written = atomic_load_explicit(&st->bytes, memory_order_relaxed);
  out->write_errors = atomic_load_explicit(&st->errors, memory_order_relaxed);
  out->reopens = atomic_load_explicit(&st->reopens, memory_order_relaxed);
}
