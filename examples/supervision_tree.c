/* supervision_tree.c - a gen_server under a supervisor, crashing and coming back.
 *
 * A "bank" gen_server keeps a balance and refuses to go negative by
 * crashing (let it crash: the supervisor knows what to do). The supervisor
 * (one_for_one) restarts it with a fresh state; the client keeps calling it by
 * its registered name and sees the restart as one failed call. Restart
 * events are printed as they happen. Then the tree is stopped and the program
 * exits 0.
 *
 * Build and run: make run
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel.h"

enum { DEPOSIT = 1, WITHDRAW = 2, BALANCE = 3 };

static int bank_init(void *arg, void **state) {
  long *balance = calloc(1, sizeof *balance);
  if (!balance) return KEEL_ENOMEM;
  *balance = 100;
  *state = balance;
  return 0;
}

static int bank_call(void *state, keel_gs_from from, keel_msg_t **req, keel_msg_t **reply) {
  long *balance = state;
  long amount = 0;
  if (keel_msg_size(*req) == sizeof amount) memcpy(&amount, keel_msg_data(*req), sizeof amount);
  switch (keel_msg_tag(*req)) {
  case DEPOSIT: *balance += amount; break;
  case WITHDRAW:
    if (amount > *balance)
      return keel_gs_stopping(KEEL_REASON_ERROR, "overdraft: %ld > %ld", amount, *balance);
    *balance -= amount;
    break;
  }
  *reply = keel_msg_copy(0, balance, sizeof *balance);
  return KEEL_GS_REPLY;
}

static void bank_terminate(keel_reason why, void *state) {
  free(state);
}

static const keel_gen_server bank = {
    .init = bank_init, .handle_call = bank_call, .terminate = bank_terminate};

static void on_event(const keel_sup_event *ev, void *ud) {
  (void)ud;
  if (ev->kind == KEEL_SUP_CHILD_RESTARTED)
    printf("supervisor: restarted %s (restart %u, it had exited: %s: %s)\n", ev->child_id,
           ev->attempt, keel_reason_name(ev->reason.kind), ev->reason.text);
}

static void transact(int op, long amount) {
  keel_msg_t *reply;
  keel_gs_exit why;
  int rc = keel_gs_call_name("bank", keel_msg_copy((uint32_t)op, &amount, sizeof amount), &reply,
                             1000, &why);
  const char *name = op == DEPOSIT ? "deposit" : op == WITHDRAW ? "withdraw" : "balance";
  if (rc == 0) {
    printf("client: %s %ld -> balance %ld\n", name, amount, *(long *)keel_msg_data(reply));
    keel_msg_free(reply);
  } else {
    printf("client: %s %ld failed: %s (%s)\n", name, amount, keel_err_name(rc), why.text);
  }
}

static void client(void *arg) {
  (void)arg;
  int sub = keel_sup_subscribe(on_event, NULL);
  static const keel_sup_child_spec children[] = {
      {.id = "bank", .gen_server = &bank, .name = "bank"}};
  keel_sup_spec spec = {.strategy = KEEL_SUP_ONE_FOR_ONE, .children = children, .nchildren = 1};
  keel_pid_t sup;
  keel_gs_exit why;
  if (keel_sup_start(&spec, NULL, &sup, &why) != 0) {
    printf("supervisor failed to start: %s\n", why.text);
    return;
  }
  transact(DEPOSIT, 50);
  transact(WITHDRAW, 500); /* crashes the bank */
  keel_sleep(10);          /* the restart has happened by now */
  transact(BALANCE, 0);    /* a fresh bank: 100 */
  keel_gs_stop(sup, KEEL_REASON_SHUTDOWN, NULL, 5000);
  keel_sup_unsubscribe(sub);
  printf("tree stopped\n");
}

static void quiet(const keel_report *r, void *ud) {
  (void)r;
  (void)ud; /* the crash is expected here; the supervisor event says it */
}

int main(void) {
  keel_rt_set_report_handler(quiet, NULL);
  return keel_run(client, NULL, NULL) == 0 ? 0 : 1;
}
