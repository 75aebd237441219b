/* keel/error.h - error codes shared by every keel module.
 *
 * Every keel function that can fail returns an int: 0 on success or one of the
 * negative KEEL_E* codes below. errno is never part of the interface. Functions
 * that return a pointer return NULL on failure and document which code applies.
 */
#ifndef KEEL_ERROR_H
#define KEEL_ERROR_H

#ifdef __cplusplus
extern "C" {
#endif

#define KEEL_OK 0

typedef enum keel_error {
  KEEL_ENOMEM = -1,     /* out of memory (or out of stacks / process slots) */
  KEEL_EINVAL = -2,     /* invalid argument */
  KEEL_ENOPROC = -3,    /* no such process (never existed or already dead) */
  KEEL_ETIMEDOUT = -4,  /* the timeout expired */
  KEEL_ENOTPROC = -5,   /* called outside a keel process where one is required */
  KEEL_ENOENT = -6,     /* no such entry (timer already fired, unknown ref, ...) */
  KEEL_ESTATE = -7,     /* wrong state (runtime not started, already started, ...) */
  KEEL_EIO = -8,        /* an I/O error reported by the operating system or libuv */
  KEEL_ECANCELED = -9,  /* the operation was cancelled */
  KEEL_EEXIST = -10,    /* already exists */
  KEEL_EBUSY = -11,     /* resource busy */
  KEEL_EDOWN = -12,     /* the peer process died while we waited on it */
  KEEL_ERANGE = -13,    /* a value is out of its allowed range */
  KEEL_EADDRINUSE = -14, /* the address (host and port) is already in use */
  KEEL_ECONFLICT = -15,  /* a concurrent change won (an expected version did not match) */
  KEEL_EPERM = -16,      /* not allowed to the caller (a non-owner writing a protected table) */
  KEEL_ERROR_MIN_ = -16  /* lowest code; for table sizes */
} keel_error;

/* A human-readable description of a keel error code ("no such process").
 * Returns a static string; unknown codes give "unknown error". Any thread. */
const char *keel_strerror(int code);

/* The symbolic name of a keel error code ("KEEL_ENOPROC"). Static string;
 * unknown codes give "KEEL_E?". Any thread. */
const char *keel_err_name(int code);

#ifdef __cplusplus
}
#endif
#endif
