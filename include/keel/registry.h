/* keel/registry.h - names for processes, and keyed groups for publish/subscribe.
 *
 * Unique names: a name maps to one live process. The name is freed when the
 * process exits (whatever the reason), so a restarted server can register the
 * same name again at once. gen_server and supervisor take a name at start.
 *
 * Keyed groups: any number of processes join a key; keel_reg_dispatch sends a
 * copy of a message to every member of every key that matches a pattern. A
 * process leaves its keys when it exits. Patterns are globs over keys made of
 * dot-separated segments: `?` matches one character other than '.', `*`
 * matches any run of characters within one segment, `**` matches any run of
 * characters including dots ("orders.*" matches "orders.created" but not
 * "orders.eu.created"; "orders.**" matches both).
 *
 * All functions may be called from any thread; names and keys are copied.
 * Lookups take a shared lock; registration an exclusive one.
 */
#ifndef KEEL_REGISTRY_H
#define KEEL_REGISTRY_H

#include <stddef.h>

#include "keel/message.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KEEL_NAME_MAX 255 /* longest name or key, in bytes */

/* Registers pid under name. Errors: KEEL_EEXIST (the name belongs to a live
 * process), KEEL_ENOPROC (pid is dead), KEEL_EINVAL (empty or too long name,
 * pid 0), KEEL_ENOMEM. A process may hold several names. */
int keel_register(const char *name, keel_pid_t pid);

/* Removes a name. Errors: KEEL_ENOENT. */
int keel_unregister(const char *name);

/* The pid registered under name, or 0. */
keel_pid_t keel_whereis(const char *name);

/* Calls fn(name, pid, ud) for every registered name (a snapshot taken under
 * the lock; fn runs after it is released). Returns the number of names. */
size_t keel_registered(void (*fn)(const char *name, keel_pid_t pid, void *ud), void *ud);

/* The calling process joins key (idempotent). Errors: KEEL_ENOTPROC,
 * KEEL_EINVAL, KEEL_ENOMEM. */
int keel_reg_join(const char *key);

/* The calling process leaves key. Errors: KEEL_ENOTPROC, KEEL_ENOENT. */
int keel_reg_leave(const char *key);

/* Sends a copy of msg (borrowed: the caller still owns it) to every member
 * of every key matching pattern. *delivered (may be NULL) gets the number of
 * copies sent. Returns 0, KEEL_EINVAL or KEEL_ENOMEM. Any thread. */
int keel_reg_dispatch(const char *pattern, const keel_msg_t *msg, size_t *delivered);

/* Copies up to max members of key into out; returns how many there are. */
size_t keel_reg_members(const char *key, keel_pid_t *out, size_t max);

/* Whether key (dot-separated segments) matches pattern (see above). */
int keel_glob_match(const char *pattern, const char *key);

#ifdef __cplusplus
}
#endif
#endif
