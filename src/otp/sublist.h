/* sublist.h - a list of event subscribers (not installed): the one the
 * supervisor's and the application's events share.
 *
 * No limit on subscribers. Events are dispatched synchronously under the
 * list's mutex, so an unsubscribe that returns guarantees no later call:
 * the subscriber may free what its ud points to at once. A callback must
 * not block, wait or yield, and may not (un)subscribe on the list that is
 * calling it (KEEL_EBUSY: it would deadlock).
 */
#ifndef KEEL_OTP_SUBLIST_H
#define KEEL_OTP_SUBLIST_H

#include <pthread.h>

typedef struct keel__sub keel__sub;

typedef struct keel__sublist {
  pthread_mutex_t lock;
  keel__sub *head;
  int next_handle;
} keel__sublist;

#define KEEL__SUBLIST_INIT {PTHREAD_MUTEX_INITIALIZER, NULL, 0}

/* The callback type is the caller's: it is stored as a generic function
 * pointer and handed back to `call`, which casts it to its own type. */
typedef void (*keel__sub_fn)(void);
typedef void (*keel__sub_call)(keel__sub_fn fn, void *ud, const void *ev);

/* Appends (fn, ud); returns a handle > 0, or KEEL_EINVAL (fn NULL),
 * KEEL_ENOMEM, KEEL_EBUSY (called from one of this list's callbacks). */
int keel__sublist_add(keel__sublist *l, keel__sub_fn fn, void *ud);

/* Removes the subscriber; when it returns, no call to it runs or will run.
 * 0, KEEL_ENOENT (unknown handle) or KEEL_EBUSY (from a callback). */
int keel__sublist_remove(keel__sublist *l, int handle);

/* Calls every subscriber, in the order they subscribed, through `call`. */
void keel__sublist_emit(keel__sublist *l, keel__sub_call call, const void *ev);

#endif
