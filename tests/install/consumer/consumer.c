/* A program outside the keel tree, built against an installed keel: one
 * process calls another and prints the reply. */
#include <keel.h>
#include <stdio.h>
#include <string.h>

static void pong(void *arg) {
  (void)arg;
  keel_msg_t *m;
  keel_receive(&m, KEEL_INFINITY);
  keel_ref_t ref;
  memcpy(&ref, keel_msg_data(m), sizeof ref);
  keel_reply(keel_msg_from(m), ref, keel_msg_copy(0, "pong", 5));
  keel_msg_free(m);
}

static void ping(void *arg) {
  (void)arg;
  keel_pid_t p;
  keel_spawn(pong, NULL, NULL, &p);
  keel_ref_t ref = keel_make_ref();
  keel_await_ref(ref);
  keel_send(p, keel_msg_copy(0, &ref, sizeof ref));
  keel_msg_t *r;
  if (keel_await(ref, &r, 5000) == 0) {
    printf("%s from a keel process\n", (char *)keel_msg_data(r));
    keel_msg_free(r);
  }
}

int main(void) {
  return keel_run(ping, NULL, NULL);
}
