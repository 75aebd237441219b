/* observer_internal.h - what the observer's three files share (internal, not
 * installed): observer.c takes snapshots, observer_json.c renders them,
 * observer_events.c relays live events. Defined in observer.c.
 */
#ifndef KEEL_OPS_OBSERVER_INTERNAL_H
#define KEEL_OPS_OBSERVER_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "keel/observer.h"

/* CLOCK_MONOTONIC in ns; CLOCK_REALTIME in ms. */
uint64_t keel__obs_mono_ns(void);
uint64_t keel__obs_wall_ms(void);

/* ---- pid -> index hash map (open addressing; pid 0 marks an empty slot) --- */

typedef struct keel__pidmap {
  keel_pid_t *k;
  size_t *v;
  size_t mask; /* capacity - 1; capacity a power of two, at least twice the entries */
} keel__pidmap;

/* Sizes the map for n entries (it never grows); KEEL_ENOMEM leaves it zeroed. */
int keel__pidmap_init(keel__pidmap *m, size_t n);
void keel__pidmap_free(keel__pidmap *m);
/* Inserts pid -> v unless pid is there; returns the slot. */
size_t keel__pidmap_put(keel__pidmap *m, keel_pid_t pid, size_t v);
/* false when pid is 0, absent, or the map was never initialised. */
bool keel__pidmap_get(const keel__pidmap *m, keel_pid_t pid, size_t *v);

#endif
