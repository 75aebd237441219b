/* error.c - names and descriptions of keel's error codes. */
#include "keel/error.h"

typedef struct {
  int code;
  const char *name;
  const char *text;
} entry;

static const entry table[] = {
    {KEEL_OK, "KEEL_OK", "success"},
    {KEEL_ENOMEM, "KEEL_ENOMEM", "out of memory"},
    {KEEL_EINVAL, "KEEL_EINVAL", "invalid argument"},
    {KEEL_ENOPROC, "KEEL_ENOPROC", "no such process"},
    {KEEL_ETIMEDOUT, "KEEL_ETIMEDOUT", "timed out"},
    {KEEL_ENOTPROC, "KEEL_ENOTPROC", "not called from a keel process"},
    {KEEL_ENOENT, "KEEL_ENOENT", "no such entry"},
    {KEEL_ESTATE, "KEEL_ESTATE", "invalid state for this operation"},
    {KEEL_EIO, "KEEL_EIO", "input/output error"},
    {KEEL_ECANCELED, "KEEL_ECANCELED", "operation cancelled"},
    {KEEL_EEXIST, "KEEL_EEXIST", "already exists"},
    {KEEL_EBUSY, "KEEL_EBUSY", "resource busy"},
    {KEEL_EDOWN, "KEEL_EDOWN", "the peer process exited"},
    {KEEL_ERANGE, "KEEL_ERANGE", "value out of range"},
    {KEEL_EADDRINUSE, "KEEL_EADDRINUSE", "address already in use"},
    {KEEL_ECONFLICT, "KEEL_ECONFLICT", "conflict: the expected version did not match"},
    {KEEL_EPERM, "KEEL_EPERM", "operation not permitted"},
};

static const entry *find(int code) {
  for (unsigned i = 0; i < sizeof table / sizeof table[0]; i++)
    if (table[i].code == code) return &table[i];
  return 0;
}

const char *keel_strerror(int code) {
  const entry *e = find(code);
  return e ? e->text : "unknown error";
}

const char *keel_err_name(int code) {
  const entry *e = find(code);
  return e ? e->name : "KEEL_E?";
}
