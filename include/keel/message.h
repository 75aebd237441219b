/* keel/message.h - messages, mailboxes, receive, replies.
 *
 * OWNERSHIP. A message is an owned heap buffer (keel_msg_t) with a small
 * header (kind, tag, sender, reference) and a payload of any size. Whoever
 * holds a keel_msg_t owns it:
 *   - keel_msg_new / keel_msg_copy give the caller a message it owns;
 *   - keel_send, keel_reply and keel_send_after TAKE ownership, always, even
 *     when they fail or the receiver is dead: the caller must not touch the
 *     message afterwards;
 *   - receive and await hand ownership to the receiver, which must
 *     eventually keel_msg_free it (or send it on).
 * Payloads are copied once, at creation; sending never copies.
 *
 * ORDER. Messages from one sender to one receiver arrive in the order sent.
 * Sending never blocks and never fails for a live process. A message to a dead
 * process is dropped and counted (keel_rt_stats.msgs_to_dead).
 *
 * MAILBOX. receive takes the oldest message; receive_match takes the oldest
 * message a predicate accepts, leaving the others queued in order. Exit
 * signals are not messages: they overtake a flooded mailbox.
 *
 * REPLIES. A process that expects a reply arms a reference with keel_await_ref
 * (a fresh one from keel_make_ref, or a monitor's reference), sends it along,
 * and waits in keel_await. Replies and DOWN messages carrying an armed
 * reference are matched in O(1), never by scanning the mailbox, and never seen
 * by receive. Once keel_await returns, the reference is disarmed and a reply
 * that arrives later is dropped (counted in keel_rt_stats.replies_dropped).
 */
#ifndef KEEL_MESSAGE_H
#define KEEL_MESSAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "keel/process.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct keel_msg keel_msg_t;

typedef enum keel_msg_kind {
  KEEL_MSG_USER = 0,  /* sent with keel_send or keel_send_after */
  KEEL_MSG_EXIT = 1,  /* an exit signal turned into a message (trap_exit) */
  KEEL_MSG_DOWN = 2,  /* a monitored process exited */
  KEEL_MSG_REPLY = 3, /* a reply (only returned by keel_await) */
} keel_msg_kind;

/* A new message with `size` bytes of uninitialised payload and a user tag.
 * Returns NULL when out of memory (KEEL_ENOMEM). The caller owns it. */
keel_msg_t *keel_msg_new(uint32_t tag, size_t size);

/* A new message whose payload is a copy of data[0..size). NULL on ENOMEM. */
keel_msg_t *keel_msg_copy(uint32_t tag, const void *data, size_t size);

/* Frees a message. NULL is ignored. */
void keel_msg_free(keel_msg_t *m);

void *keel_msg_data(const keel_msg_t *m);   /* payload, valid while m lives */
size_t keel_msg_size(const keel_msg_t *m);  /* payload size in bytes */
uint32_t keel_msg_tag(const keel_msg_t *m); /* the user tag (0 for EXIT/DOWN) */
keel_msg_kind keel_msg_kind_of(const keel_msg_t *m);
keel_pid_t keel_msg_from(const keel_msg_t *m); /* sender; 0 when sent from outside a process */
keel_ref_t keel_msg_ref(const keel_msg_t *m);  /* reference of a REPLY, a DOWN, or set below */

/* Sets the reference a USER message carries (a call's reference, so that the
 * receiver can reply to it). keel_send keeps it. */
void keel_msg_set_ref(keel_msg_t *m, keel_ref_t ref);

/* A protocol marker for behaviours built on messages: gen_server marks its
 * calls and casts with it, so plain messages (marker 0) go to handle_info.
 * 1..127 are reserved for keel (KEEL_PROTO_*), 128..255 are the
 * application's. keel_send keeps it. */
/* An attachment: one malloc'd blob that travels with the message and is
 * freed (free()) with it, for context that is not part of the payload, such
 * as the logging context a gen_server call carries to the server. Attaching
 * may move the message: use the returned pointer (NULL: out of memory, m is
 * unchanged). A message without attachment costs nothing extra. Owner only. */
keel_msg_t *keel_msg_attach(keel_msg_t *m, void *blob);
void *keel_msg_attachment(const keel_msg_t *m); /* borrowed; NULL if none */
void *keel_msg_detach(keel_msg_t *m);           /* the caller now owns it; NULL if none */

enum { KEEL_PROTO_NONE = 0, KEEL_PROTO_CALL = 1, KEEL_PROTO_CAST = 2, KEEL_PROTO_SYSTEM = 3 };
/* gen_statem's own timeout markers (never handed to a handler). */
enum { KEEL_PROTO_STATEM_TIMER = 8 };
uint8_t keel_msg_proto(const keel_msg_t *m);
void keel_msg_set_proto(keel_msg_t *m, uint8_t proto);

/* For KEEL_MSG_EXIT: the process whose exit signal this is, and the reason.
 * For KEEL_MSG_DOWN: the monitored process and its exit reason.
 * The reason's text is borrowed from m. Returns KEEL_EINVAL for other kinds. */
int keel_msg_exit_info(const keel_msg_t *m, keel_pid_t *pid, keel_reason *reason);

/* Sends m to `to`, taking ownership of m (see OWNERSHIP). Returns 0 (also when
 * `to` is dead: the message is dropped and counted), or KEEL_EINVAL for a NULL
 * message or pid 0. Never blocks. Any thread. */
int keel_send(keel_pid_t to, keel_msg_t *m);

/* Takes the oldest message from the caller's mailbox into *out, waiting up to
 * timeout_ms (0 or KEEL_INFINITY: forever; KEEL_NOWAIT: do not wait). The
 * caller owns *out. Errors: KEEL_ETIMEDOUT (*out = NULL), KEEL_ENOTPROC. */
int keel_receive(keel_msg_t **out, int64_t timeout_ms);

/* A predicate for selective receive: return true to take m. Must not keep m
 * and must not call functions that wait. */
typedef bool (*keel_match_fn)(const keel_msg_t *m, void *arg);

/* Takes the oldest message for which match(m, arg) is true; messages that do
 * not match stay queued in their order. Each queued message is tested at most
 * once per call. Errors as keel_receive. */
int keel_receive_match(keel_match_fn match, void *arg, keel_msg_t **out, int64_t timeout_ms);

/* Number of messages queued for the caller (mailbox plus kept-aside), a
 * snapshot. 0 outside a process. */
size_t keel_mailbox_len(void);

/* Arms `ref` in the caller: replies (keel_reply) and DOWN messages carrying it
 * are kept for keel_await instead of going to the mailbox. Arming an armed ref
 * is a no-op. Errors: KEEL_ENOTPROC, KEEL_EINVAL (ref 0), KEEL_ENOMEM. */
int keel_await_ref(keel_ref_t ref);

/* Waits for the reply or DOWN message carrying the armed `ref`; on return the
 * ref is disarmed whatever the result, so anything carrying it later is
 * dropped. *out receives the message (kind REPLY or DOWN) and is owned by the
 * caller. Errors: KEEL_ETIMEDOUT, KEEL_ENOENT (ref not armed), KEEL_ENOTPROC. */
int keel_await(keel_ref_t ref, keel_msg_t **out, int64_t timeout_ms);

/* Disarms ref without waiting; a reply already arrived for it is freed.
 * Returns 0 or KEEL_ENOENT. */
int keel_await_cancel(keel_ref_t ref);

/* Sends m as the reply carrying `ref` to `to`, taking ownership of m. If `to`
 * is dead or no longer awaits ref, the reply is dropped and counted. Returns 0
 * or KEEL_EINVAL. Any thread. */
int keel_reply(keel_pid_t to, keel_ref_t ref, keel_msg_t *m);

#ifdef __cplusplus
}
#endif
#endif
