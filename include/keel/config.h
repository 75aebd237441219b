/* keel/config.h - typed configuration from the environment and a .env file.
 *
 * A service declares its configuration as a table of fields, each naming an
 * environment variable, a type, a default, bounds and flags, and the member of
 * the service's own struct (offsetof) that receives the value. keel_config_load
 * reads the environment and an optional .env file, applies per-environment
 * defaults for APP_ENV (development, staging, production), validates every
 * field and every cross-field rule, and reports every problem at once, one line
 * each: "Invalid configuration: PORT: must be between 1 and 65535, got 70000".
 *
 * Where a value comes from, first match wins:
 *   1. the process environment (getenv),
 *   2. the .env file (its last line for the key),
 *   3. the field's default for the current APP_ENV (by_env[env]),
 *   4. the field's default (def),
 *   5. nothing: the member is zeroed (NULL, 0, false), or an error if required.
 *
 * This module runs before the runtime starts and needs no keel process. It has
 * no global state. Loading calls getenv, so it must not run concurrently with
 * setenv/putenv in another thread; describing and freeing a loaded struct touch
 * only that struct and may run on any thread.
 */
#ifndef KEEL_CONFIG_H
#define KEEL_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The exit status of keel_config_load_or_exit on invalid configuration
 * (EX_CONFIG from sysexits.h). */
#define KEEL_CONFIG_EXIT 78

/* Field types and the C type of the struct member each one writes. */
typedef enum keel_config_type {
  KEEL_CONFIG_STRING,   /* char *: owned by the struct, freed by keel_config_free */
  KEEL_CONFIG_INT,      /* int64_t: decimal, optional sign, overflow checked */
  KEEL_CONFIG_BOOL,     /* bool: true/false, 1/0, yes/no, on/off, any case */
  KEEL_CONFIG_DURATION, /* int64_t milliseconds: "500ms", "30s", "5m", "1h", "250" (ms) */
  KEEL_CONFIG_ENUM,     /* int: index into the field's values; -1 when unset */
  KEEL_CONFIG_URL,      /* keel_config_url */
  KEEL_CONFIG_LIST      /* keel_config_list: comma-separated, items trimmed, empties dropped */
} keel_config_type;

/* The deployment environment, from APP_ENV (default development). */
typedef enum keel_config_env {
  KEEL_CONFIG_DEVELOPMENT = 0,
  KEEL_CONFIG_STAGING = 1,
  KEEL_CONFIG_PRODUCTION = 2,
  KEEL_CONFIG_ENV_COUNT_ = 3
} keel_config_env;

/* Field flags. */
#define KEEL_CONFIG_REQUIRED 0x1u /* some source must give a non-empty value */
#define KEEL_CONFIG_SECRET   0x2u /* never printed: "(secret)" in errors, "****" in describe */

/* A URL field's value: scheme://[user[:password]@]host[:port][/path][?query]
 * (a #fragment is accepted and dropped). Every string is owned by the struct
 * (keel_config_free). In a loaded URL absent parts are empty strings, never
 * NULL, and port is 0 when the URL names none; a URL field that no source set
 * is all NULL and 0. */
typedef struct keel_config_url {
  char *raw;      /* the value as given */
  char *scheme;   /* lower-cased: "postgresql" */
  char *user;     /* "" when absent */
  char *password; /* "" when absent; masked as **** by keel_config_describe */
  char *host;     /* "db.internal", "[::1]" */
  int port;       /* 1..65535, or 0 when absent */
  char *path;     /* "/app" or "" */
  char *query;    /* after '?', without it, or "" */
} keel_config_url;

/* A list field's value. items and each item are owned by the struct. */
typedef struct keel_config_list {
  size_t count;
  char **items;
} keel_config_list;

/* One field of a configuration table. Write tables with designated
 * initializers; unset members are zero:
 *
 *   {.env = "PORT", .type = KEEL_CONFIG_INT, .offset = offsetof(struct cfg, port),
 *    .def = "3000", .min = 1, .max = 65535}
 *
 * The table only borrows strings: they must outlive every call that takes the
 * table (in practice they are literals). */
typedef struct keel_config_field {
  const char *env;  /* environment variable and the name in messages: "PORT" */
  const char *name; /* optional key for structured output ("port"); NULL: env */
  keel_config_type type;
  size_t offset;   /* offsetof(your_struct, member) */
  const char *def; /* default as text, parsed like any value; NULL: none */
  /* Defaults per APP_ENV, indexed by keel_config_env; they win over def:
   * .by_env = {[KEEL_CONFIG_PRODUCTION] = "50"}. NULL entries fall to def. */
  const char *by_env[KEEL_CONFIG_ENV_COUNT_];
  /* Bounds, inclusive, unless both are 0. INT: the value; DURATION:
   * milliseconds; STRING: length in bytes. Use INT64_MIN / INT64_MAX for a
   * one-sided bound. */
  int64_t min, max;
  /* ENUM: the allowed values (required; matched without regard to case).
   * URL: the allowed schemes (optional). LIST: allowed items (optional).
   * NULL-terminated. */
  const char *const *values;
  unsigned flags; /* KEEL_CONFIG_REQUIRED | KEEL_CONFIG_SECRET */
} keel_config_field;

/* A rule across fields, run only when everything else loaded without error
 * (a rule would otherwise compare values that do not exist; when a field, the
 * .env file or APP_ENV is invalid, the rules are skipped and those errors are
 * reported). The rule reads the
 * loaded struct `cfg`; to refuse it writes the reason and the offending value
 * to why (NUL-terminated, truncated to whylen) and returns non-zero:
 *   snprintf(why, whylen, "must differ from PORT, got %" PRId64, c->health_port);
 * The line then reads "Invalid configuration: <env>: <why>". A rule must not
 * print a secret. */
typedef int (*keel_config_rule_fn)(const void *cfg, void *arg, char *why, size_t whylen);

typedef struct keel_config_rule {
  const char *env; /* the variable the error line names: "HEALTH_PORT" */
  keel_config_rule_fn check;
  void *arg; /* passed to check, borrowed */
} keel_config_rule;

typedef struct keel_config_opts {
  const char *dotenv_path;       /* .env file to read; NULL: none. A missing file is
                                    not an error; an unreadable one is. */
  const char *app_env_var;       /* NULL: "APP_ENV" */
  const keel_config_rule *rules; /* borrowed for the call */
  size_t nrules;
  keel_config_env app_env; /* out: the environment in effect after the load */
} keel_config_opts;

/* Sets *opts to the defaults: no .env file, APP_ENV, no rules. */
void keel_config_opts_init(keel_config_opts *opts);

/* "development", "staging", "production"; NULL for anything else. Static. */
const char *keel_config_env_name(keel_config_env env);

/* Loads the n fields of table into the struct at out (the caller's; its
 * members are overwritten without being freed first). opts may be NULL
 * (defaults); its app_env receives the environment in effect.
 *
 * On success returns 0; the struct owns the strings, lists and URLs it now
 * holds: release them with keel_config_free. If errors is not NULL it is set
 * to NULL.
 *
 * On invalid configuration returns KEEL_EINVAL. If errors is not NULL,
 * *errors receives a malloc'd, NUL-terminated text the caller frees with
 * free(): one line per problem, each ending in '\n', each starting with
 * "Invalid configuration: ", in this order: the .env file, APP_ENV, the fields
 * in table order, the rules in their order. The struct then owns nothing (its
 * pointer members are NULL); its other members are unspecified. (If the
 * table itself is malformed the struct is not touched at all.)
 *
 * A malformed table (NULL table with n > 0, a field without env, an ENUM
 * without values, a duplicate env) is also KEEL_EINVAL, with a line naming the
 * field. KEEL_ENOMEM if memory ran out (*errors is then NULL).
 * Thread safety: see the top of this header (getenv). */
int keel_config_load(const keel_config_field *table, size_t n, void *out, keel_config_opts *opts,
                     char **errors);

/* keel_config_load for main(): on invalid configuration prints every line to
 * stderr and exits with KEEL_CONFIG_EXIT (78); out of memory prints one line
 * and exits with 71 (EX_OSERR). Returns only on success. */
void keel_config_load_or_exit(const keel_config_field *table, size_t n, void *out,
                              keel_config_opts *opts);

/* Frees what keel_config_load stored in the struct at cfg and sets those
 * pointer members to NULL; scalars are left alone. Safe on a struct that
 * keel_config_load failed on, and twice in a row. Any thread that owns cfg. */
void keel_config_free(const keel_config_field *table, size_t n, void *cfg);

/* Called once per field by keel_config_each with the field and its value
 * rendered as text: secrets "****" (or "" when unset), INT decimal, DURATION
 * in its largest exact unit ("30s", "1500ms"), BOOL "true"/"false", ENUM the
 * allowed value's spelling, URL the raw text with any password replaced by
 * "****", LIST the items joined by ",", an unset STRING "". value is borrowed
 * for the call. A non-zero return stops the iteration and is returned. */
typedef int (*keel_config_visit_fn)(const keel_config_field *f, const char *value, void *arg);

/* Visits every field of a loaded struct in table order (for a structured
 * log line: the logger builds its JSON from these). Returns 0, KEEL_ENOMEM,
 * or the visitor's non-zero return. Any thread; cfg is only read. */
int keel_config_each(const keel_config_field *table, size_t n, const void *cfg,
                     keel_config_visit_fn visit, void *arg);

/* Renders the effective configuration into buf, one "ENV=value\n" per field
 * in table order, with the values of keel_config_each (secrets "****"). A
 * value containing a space, '#', a quote, a backslash or a control character,
 * or an empty one, is written in double quotes with \" \\ \n \r \t escapes,
 * so the text is itself a valid .env file. buf (len bytes, borrowed) is always
 * NUL-terminated when len > 0. *needed (may be NULL) receives the full length
 * without the NUL. Returns 0, KEEL_ERANGE if the text was truncated to fit,
 * KEEL_ENOMEM. Any thread; cfg is only read. */
int keel_config_describe(const keel_config_field *table, size_t n, const void *cfg, char *buf,
                         size_t len, size_t *needed);

#ifdef __cplusplus
}
#endif
#endif
