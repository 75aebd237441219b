/* port_child.c - a port as a supervised child (keel_port_child_start).
 *
 * The child is a process linked to its supervisor that traps exits and owns
 * one port. It hands every output line or chunk to the spec's callback and
 * exits when the program ends, with the program's end as its reason: normal
 * for exit 0, else an error whose text is "exit 3" or "signal 11 (SIGSEGV)",
 * so the supervisor's restart rules apply to the native program as to any
 * child. An exit signal (the supervisor's shutdown, a linked process's crash)
 * closes the port with SIGTERM and no deadline of its own: the supervisor's
 * shutdown time is the deadline, and when it kills the process, the port's
 * owner-exit hook SIGKILLs the program's group.
 *
 * The start is synchronous like gen_server's: the starter arms a reference,
 * spawns the child linked and monitored under that reference, and waits for
 * the child's reply (the open's result) or its DOWN.
 */
#include <stdio.h>
#include <string.h>

#include "keel/error.h"
#include "keel/message.h"
#include "keel/port.h"
#include "keel/process.h"

typedef struct child_start {
  const keel_port_child *spec;
  keel_pid_t starter;
  keel_ref_t ref;
} child_start;

_Noreturn static void end_with(const keel_port_status *st) {
  char why[48];
  if (!st->signal && !st->exit_code) keel_exit(KEEL_REASON_NORMAL, NULL);
  keel_exit(KEEL_REASON_ERROR, keel_port_status_format(st, why, sizeof why));
}

static void child_main(void *arg) {
  child_start *cs = arg; /* the starter's stack: valid until we reply */
  const keel_port_child *spec = cs->spec;
  keel_pid_t parent = cs->starter;
  keel_port_t *port;
  int rc = keel_port_open(&spec->port, &port);
  keel_reply(parent, cs->ref, keel_msg_copy(0, &rc, sizeof rc));
  if (rc) {
    keel_unlink(parent); /* the start failed: not a child, no exit to report */
    keel_exit(KEEL_REASON_NORMAL, NULL);
  }
  for (;;) {
    keel_msg_t *m;
    if (keel_receive(&m, KEEL_INFINITY) != 0) continue;
    keel_port_event ev;
    if (keel_port_event_of(m, &ev) == 0) {
      if (ev.tag == KEEL_PORT_EXIT) {
        keel_port_status st = ev.status;
        keel_msg_free(m);
        keel_port_close(port, KEEL_NOWAIT, NULL); /* it has ended: this only frees */
        end_with(&st);
      }
      if (spec->on_output) spec->on_output(&ev, spec->ud);
    } else if (keel_msg_kind_of(m) == KEEL_MSG_EXIT) {
      keel_pid_t from;
      keel_reason why;
      keel_msg_exit_info(m, &from, &why);
      if (why.kind != KEEL_REASON_NORMAL || from == parent) {
        /* as a process that does not trap exits would, after stopping the program */
        char text[128];
        snprintf(text, sizeof text, "%s", why.text);
        keel_reason_kind kind = why.kind;
        keel_msg_free(m);
        keel_port_close(port, KEEL_INFINITY, NULL);
        keel_exit(kind, text[0] ? text : NULL);
      }
    }
    keel_msg_free(m);
  }
}

int keel_port_child_start(void *arg, const void *args, size_t args_len, keel_pid_t *pid) {
  (void)args;
  (void)args_len;
  if (!arg) return KEEL_EINVAL;
  if (!keel_self()) return KEEL_ENOTPROC;
  child_start cs = {.spec = arg, .starter = keel_self()};
  keel_spawn_opts o = {.link = true,
                       .monitor = true,
                       .await_monitor = true,
                       .monitor_ref = &cs.ref, /* written before the child runs */
                       .trap_exit = true,
                       .name = "port"};
  keel_pid_t child;
  int rc = keel_spawn(child_main, &cs, &o, &child);
  if (rc) return rc;
  keel_ref_t ref = cs.ref;
  keel_msg_t *m;
  rc = keel_await(ref, &m, KEEL_INFINITY);
  if (rc == 0 && keel_msg_kind_of(m) == KEEL_MSG_REPLY && keel_msg_size(m) == sizeof(int))
    memcpy(&rc, keel_msg_data(m), sizeof rc);
  else if (rc == 0)
    rc = KEEL_EDOWN; /* it died before it could answer */
  keel_msg_free(m);
  keel_demonitor(ref);
  if (rc == 0 && pid) *pid = child;
  return rc;
}
