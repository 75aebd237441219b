/* gs_internal.h - what gen_server.c lends the behaviours built on it (not
 * installed). gen_statem.c runs its state machine as a gen_server's
 * callbacks, and needs two things a plain gen_server does not:
 *
 *   - a step that runs right after the start has been acknowledged and
 *     before the first message is received (OTP's gen_statem makes its
 *     first state enter call there, and handles the actions init asked for);
 *   - the callers' context hooks around events it handles later than the
 *     message that brought them (a postponed call is retried in another
 *     gen_server callback).
 */
#ifndef KEEL_OTP_GS_INTERNAL_H
#define KEEL_OTP_GS_INTERNAL_H

#include "keel/gen_server.h"

/* Called from a gen_server's init: once init has returned 0 and the starter
 * has been told, fn(state) runs in the server before it receives anything;
 * its result is read as a callback's (KEEL_GS_OK, KEEL_GS_STOP or a negative
 * code that crashes the server). Errors: KEEL_ESTATE (not in a gen_server's
 * init). */
int keel__gs_continue(int (*fn)(void *state));

/* Called from a gen_server's init: the name an unregistered server's spans
 * take (opts.trace; default "gen_server"), so that a gen_statem's say
 * "gen_statem call". A registered server's spans keep its name.
 * Errors: KEEL_ESTATE (not in a gen_server's init). */
int keel__gs_trace_kind(const char *kind);

/* Attaches the calling process's context (the hooks' capture) to m, which
 * may move: use the returned message. Tasks carry their caller's this way. */
keel_msg_t *keel__gs_with_context(keel_msg_t *m);
/* Installs the context that message m carries (keel_gs_set_context_hooks);
 * returns what keel__gs_context_leave needs. m may be NULL. */
void *keel__gs_context_enter(const keel_msg_t *m, const keel_gs_context_hooks **used);
void keel__gs_context_leave(const keel_gs_context_hooks *used, void *prev);

#endif
