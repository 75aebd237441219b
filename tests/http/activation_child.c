/* activation_child.c - a server started the way systemd socket activation
 * starts one (not a test case itself; test_server.c runs it).
 *
 * The parent binds and listens on a loopback port, puts the socket at fd 3,
 * sets LISTEN_FDS=1 and LISTEN_PID to this process's pid, and executes this
 * program. It serves GET /whoami with the port it found itself listening on,
 * without binding anything, until it is killed.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "keel.h"

static int whoami(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req;
  keel_http_server *_Atomic *srv = ud;
  /* the listener serves as soon as it is up, which may be before
   * keel_http_start has returned the server to main_proc */
  for (int i = 0; i < 1000 && !*srv; i++)
    keel_sleep(1);
  char body[64];
  snprintf(body, sizeof body, "activated on %d", keel_http_port(*srv));
  return keel_http_reply_text(res, 200, "text/plain", body);
}

static keel_http_server *_Atomic g_srv;

static void main_proc(void *arg) {
  (void)arg;
  keel_http_router *r = keel_http_router_new();
  keel_http_route(r, "GET", "/whoami", whoami, &g_srv);
  keel_http_opts o;
  keel_http_opts_init(&o);
  o.host = "127.0.0.1";
  o.port = 1; /* would fail to bind (not root, or taken): must not be used */
  o.no_access_log = true;
  keel_http_server *srv;
  int rc = keel_http_start(&o, r, &srv);
  g_srv = srv;
  if (rc) {
    fprintf(stderr, "activation_child: %s\n", keel_strerror(rc));
    exit(3);
  }
  keel_sleep(KEEL_INFINITY);
}

int main(void) {
  return keel_run(main_proc, NULL, NULL);
}
