/* sublist.c - a list of event subscribers: see sublist.h.
 *
 * A singly linked list under a mutex. Emitting holds the mutex for the
 * whole dispatch, which is what makes unsubscribe final; a thread-local
 * pointer to the list being dispatched turns a callback's own (un)subscribe
 * on that list into KEEL_EBUSY instead of a self-deadlock. It is read only
 * while this thread holds or is about to take the mutex, with no wait in
 * between, so a keel process cannot have moved to another thread
 * meanwhile.
 */
#include "otp/sublist.h"

#include <stdlib.h>

#include "keel/error.h"

struct keel__sub {
  int handle;
  keel__sub_fn fn;
  void *ud;
  keel__sub *next;
};

static _Thread_local keel__sublist *dispatching;

int keel__sublist_add(keel__sublist *l, keel__sub_fn fn, void *ud) {
  if (!fn) return KEEL_EINVAL;
  if (dispatching == l) return KEEL_EBUSY;
  keel__sub *s = malloc(sizeof *s);
  if (!s) return KEEL_ENOMEM;
  s->fn = fn;
  s->ud = ud;
  s->next = NULL;
  pthread_mutex_lock(&l->lock);
  if (l->next_handle == 0x7fffffff) l->next_handle = 0;
  s->handle = ++l->next_handle;
  keel__sub **pp = &l->head;
  while (*pp)
    pp = &(*pp)->next;
  *pp = s;
  pthread_mutex_unlock(&l->lock);
  return s->handle;
}

int keel__sublist_remove(keel__sublist *l, int handle) {
  if (dispatching == l) return KEEL_EBUSY;
  pthread_mutex_lock(&l->lock);
  for (keel__sub **pp = &l->head; *pp; pp = &(*pp)->next) {
    if ((*pp)->handle == handle) {
      keel__sub *s = *pp;
      *pp = s->next;
      pthread_mutex_unlock(&l->lock);
      free(s);
      return 0;
    }
  }
  pthread_mutex_unlock(&l->lock);
  return KEEL_ENOENT;
}

void keel__sublist_emit(keel__sublist *l, keel__sub_call call, const void *ev) {
  pthread_mutex_lock(&l->lock);
  keel__sublist *outer = dispatching; /* a callback may emit on another list */
  dispatching = l;
  for (keel__sub *s = l->head; s; s = s->next)
    call(s->fn, s->ud, ev);
  dispatching = outer;
  pthread_mutex_unlock(&l->lock);
}
