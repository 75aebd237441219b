/* client_internal.h - what the HTTP client's files share (not installed).
 *
 * client.c is the public API: options, the retry loop and its budget, the
 * JSON helper. client_engine.c runs one attempt on the calling scheduler's
 * loop (libcurl multi driven by libuv). client_breaker.c keeps a breaker per
 * destination and the health check. client_obs.c the metrics and the log
 * line of an attempt.
 */
#ifndef KEEL_HTTP_CLIENT_INTERNAL_H
#define KEEL_HTTP_CLIENT_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include "keel/http_client.h"

typedef struct keel__hc_engine keel__hc_engine;
typedef struct keel__hc_breakers keel__hc_breakers;

struct keel_http_client {
  keel_http_client_opts o; /* resolved defaults; strings below */
  char *name, *ca_file;
  int nsched;
  keel__hc_engine **engines; /* [nsched]: slot i only touched on scheduler i */
  keel__hc_breakers *breakers;
  /* Requests inside keel_http_client_request. Decrements acq_rel: a caller's last
   * touch of the client happens before its decrement, and the freeing
   * process's acquire load that sees 0 happens after all of them. */
  atomic_int active;
  /* keel_http_client_free started: refuse new requests. seq_cst (the
   * default): a caller increments active and then reads closing, the freer
   * sets closing and then reads active; one of them sees the other. */
  atomic_bool closing;
  pthread_mutex_t budget_lock;
  double budget; /* retry tokens: +ratio per first attempt, -1 per retry */
  keel_metric_family *m_total, *m_duration, *m_retries, *m_breaker;
};

/* ---- one attempt (client_engine.c) ------------------------------------------ */

typedef struct keel__hc_attempt {
  const char *method, *url;
  const char *const *headers; /* the caller's */
  const char *content_type, *request_id, *traceparent, *tracestate;
  const void *body;
  size_t body_len;
  int64_t connect_timeout_ms, timeout_ms; /* resolved: > 0, or 0 for none */
  size_t max_bytes;
  int max_redirects;
} keel__hc_attempt;

/* Runs one attempt on the calling process's scheduler and fills res's
 * status, body and headers (replacing what it held). Returns 0 (an answer
 * came), KEEL_ETIMEDOUT, KEEL_EIO, KEEL_ERANGE, KEEL_EINVAL, KEEL_ENOMEM,
 * KEEL_ECANCELED (the client is being freed); res->error says more. */
int keel__hc_attempt_run(keel_http_client *c, const keel__hc_attempt *a, keel_http_client_res *res);
/* Frees res's body and headers (status, attempts and error stay). */
void keel__hc_res_clear_answer(keel_http_client_res *res);
/* Closes scheduler i's engine; on that scheduler's thread (a pinned process)
 * or after keel_rt_stop (loop_gone). Transfers still in flight are cancelled:
 * their callers get KEEL_ECANCELED, or are freed when the loop is gone. */
void keel__hc_engine_close(keel__hc_engine *e, bool loop_gone);

/* ---- breakers (client_breaker.c) -------------------------------------------- */

keel__hc_breakers *keel__hc_breakers_new(void);
void keel__hc_breakers_free(keel__hc_breakers *b);
/* May a call to origin go now? 0 yes (*probe set when it is a half-open
 * probe), KEEL_EBUSY no. */
int keel__hc_breaker_admit(keel_http_client *c, const char *origin, bool *probe);
/* The outcome of an admitted call. */
void keel__hc_breaker_record(keel_http_client *c, const char *origin, bool ok, bool probe);

/* ---- observation (client_obs.c) --------------------------------------------- */

int keel__hc_metrics_register(keel_http_client *c);
/* One attempt done: status (> 0) or rc (< 0) */
void keel__hc_observe(keel_http_client *c, const char *host, const char *method, const char *url,
                      int status, int rc, double seconds, int attempt, const char *error);
void keel__hc_breaker_gauge(keel_http_client *c, const char *host, int state);
void keel__hc_retry_count(keel_http_client *c, const char *host);

/* "scheme://host:port" of url into out (lowercased host, default port
 * written) and host alone into host (may be NULL). KEEL_EINVAL. */
int keel__hc_origin(const char *url, char *out, size_t cap, char *host, size_t hcap);

#endif
