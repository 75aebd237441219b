/* hello_processes.c - keel's processes at work, in one page.
 *
 * A "counter" process keeps a total and answers queries; five "worker"
 * processes, each linked to nothing and monitored by main, add to it and then
 * exit. One worker crashes on purpose: main sees its DOWN message with the
 * reason, and the counter is not disturbed. Then main asks the counter for the
 * total with a call matched by reference, stops it, and the program exits 0.
 *
 * Build and run: make run
 */
#include <stdio.h>
#include <string.h>

#include "keel.h"

enum { TAG_ADD = 1, TAG_GET = 2, TAG_STOP = 3 };

typedef struct {
  keel_ref_t ref;
} get_req;

static void counter(void *arg) {
  (void)arg;
  long total = 0;
  for (;;) {
    keel_msg_t *m;
    keel_receive(&m, KEEL_INFINITY);
    switch (keel_msg_tag(m)) {
    case TAG_ADD: {
      long n;
      memcpy(&n, keel_msg_data(m), sizeof n);
      total += n;
      break;
    }
    case TAG_GET: {
      get_req req;
      memcpy(&req, keel_msg_data(m), sizeof req);
      keel_reply(keel_msg_from(m), req.ref, keel_msg_copy(0, &total, sizeof total));
      break;
    }
    case TAG_STOP: keel_msg_free(m); return; /* exit normal */
    }
    keel_msg_free(m);
  }
}

typedef struct {
  keel_pid_t counter;
  long amount;
} worker_arg;

static void worker(void *arg) {
  worker_arg *w = arg;
  if (w->amount == 3) keel_exitf("worker refused to add %ld", w->amount);
  keel_send(w->counter, keel_msg_copy(TAG_ADD, &w->amount, sizeof w->amount));
}

static void main_proc(void *arg) {
  (void)arg;
  keel_pid_t ctr;
  keel_spawn_opts o;
  keel_spawn_opts_init(&o);
  o.name = "counter";
  keel_spawn(counter, NULL, &o, &ctr);

  worker_arg args[5];
  for (int i = 0; i < 5; i++) {
    args[i] = (worker_arg){ctr, i + 1};
    keel_spawn_opts_init(&o);
    o.name = "worker";
    o.monitor = true;
    keel_ref_t ref;
    o.monitor_ref = &ref;
    keel_spawn(worker, &args[i], &o, NULL);
  }
  for (int i = 0; i < 5; i++) {
    keel_msg_t *m;
    keel_receive(&m, KEEL_INFINITY);
    keel_pid_t who;
    keel_reason why;
    keel_msg_exit_info(m, &who, &why);
    char buf[32];
    printf("main: worker %s exited: %s%s%s\n", keel_pid_format(who, buf, sizeof buf),
           keel_reason_name(why.kind), why.text[0] ? ": " : "", why.text);
    keel_msg_free(m);
  }

  get_req req = {keel_make_ref()};
  keel_await_ref(req.ref);
  keel_send(ctr, keel_msg_copy(TAG_GET, &req, sizeof req));
  keel_msg_t *reply;
  if (keel_await(req.ref, &reply, 1000) == 0) {
    long total;
    memcpy(&total, keel_msg_data(reply), sizeof total);
    printf("main: counter total is %ld (1+2+4+5: the crashed worker added nothing)\n", total);
    keel_msg_free(reply);
  }
  keel_send(ctr, keel_msg_new(TAG_STOP, 0));
}

int main(void) {
  int rc = keel_run(main_proc, NULL, NULL);
  printf("node stopped (status %d)\n", rc);
  return rc == 0 ? 0 : 1;
}
