/* ops_internal.h - what the operations layer's files share (not installed).
 *
 * src/ops/ sits above otp and rt and below http (DESIGN.md). Non-static names
 * that one ops file defines and another calls are declared here, once, and
 * never ad hoc in a .c file. The JSON writer the log encoder and the observer
 * share has its own header, ops/json_write.h (all static inline).
 */
#ifndef KEEL_OPS_INTERNAL_H
#define KEEL_OPS_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "keel/metrics.h"

/* ---- built-in metrics (metrics_builtin.c <-> metrics.c) -------------------- */

/* metrics.c: attaches the built-in collectors' state b to registry r, so that
 * keel_metrics_free releases it (through keel__metrics_builtin_free). 0, or
 * KEEL_EEXIST when r already has built-in metrics (b stays the caller's). */
int keel__metrics_set_builtin(keel_metrics *r, void *b);

/* metrics_builtin.c: unsubscribes from supervisor events and frees state
 * attached with keel__metrics_set_builtin; called by keel_metrics_free. */
void keel__metrics_builtin_free(void *b);

/* ---- the recent log lines (log.c -> log_recent.c) ------------------------- */

/* The log writer hands each line of a pass to the ring (its number in the
 * node's order, its level, its text with or without the newline). Writer
 * thread only. */
void keel__log_recent_add(uint64_t seq, int level, const char *line, size_t len);

#endif
