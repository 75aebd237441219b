/* health_internal.h - what health.c (the registry of checks and the probes)
 * shares with health_builtin.c (the checks keel registers itself); internal,
 * not installed. Defined in health.c.
 */
#ifndef KEEL_OPS_HEALTH_INTERNAL_H
#define KEEL_OPS_HEALTH_INTERNAL_H

#include <stdint.h>

/* A check's timeout when it gives none (ms). */
#define KEEL__HEALTH_TIMEOUT_DEFAULT 1000

/* Installs the restart counter (a supervisor-event subscriber) once; every
 * keel_health_ entry point calls it first. Any thread. */
void keel__health_init(void);

/* The live processes, health's own (checks running, scheduler pings) left
 * out. */
uint64_t keel__health_alive_count(void);

/* A malloc'd string formatted as printf does; NULL when out of memory. */
char *keel__health_dupf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
