/* keel/timer.h - timers on the schedulers' libuv loops.
 *
 * A timer delivers a message to a process after a delay. It lives on the
 * libuv loop of the scheduler that armed it and may be cancelled from any
 * thread. Receive timeouts and keel_sleep use the same loops.
 */
#ifndef KEEL_TIMER_H
#define KEEL_TIMER_H

#include <stdint.h>

#include "keel/message.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Sends m to `to` after ms milliseconds (0: at the next turn of the loop),
 * taking ownership of m. *tref (may be NULL) receives a reference for
 * keel_cancel_timer. Must be called from a process or a scheduler thread.
 * Errors: KEEL_EINVAL (m NULL, ms < 0), KEEL_ENOTPROC, KEEL_ENOMEM (m freed). */
int keel_send_after(keel_pid_t to, int64_t ms, keel_msg_t *m, keel_ref_t *tref);

/* Sends a copy of m to `to` every ms milliseconds (ms > 0), first after ms,
 * until keel_cancel_timer(*tref) or until `to` has exited (the timer then
 * ends by itself). Ticks are at least ms apart, measured on the arming
 * scheduler's loop; a tick that comes while the previous message is still
 * queued is sent anyway (the mailbox holds both). Takes ownership of m, which
 * must carry no attachment. Like OTP's timer:send_interval/3 and a periodic
 * tick for a gen_server (it arrives in handle_info):
 *
 *   keel_send_interval(keel_self(), 1000, keel_msg_new(TICK, 0), &s->tick);
 *
 * Errors as keel_send_after, and KEEL_EINVAL for ms 0 or an attachment. */
int keel_send_interval(keel_pid_t to, int64_t ms, keel_msg_t *m, keel_ref_t *tref);

/* Cancels a timer. Returns 0 if it was cancelled before it fired (its message
 * is freed and will never be delivered; for an interval timer: no tick after
 * this returns, though one already delivered stays in the mailbox),
 * KEEL_ENOENT if it already fired (an interval timer whose process exited),
 * was already cancelled, or never existed. Any thread. */
int keel_cancel_timer(keel_ref_t tref);

/* The runtime's clock: CLOCK_MONOTONIC, the one its timers, timeouts and
 * keel_rt_started_ms use, in nanoseconds and in milliseconds. For durations
 * and deadlines; never for wall-clock times. Any thread, no runtime needed. */
uint64_t keel_monotonic_ns(void);
int64_t keel_monotonic_ms(void);

#ifdef __cplusplus
}
#endif
#endif
