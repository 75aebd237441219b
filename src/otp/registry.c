/* registry.c - unique process names and keyed groups.
 *
 * Two hash tables (separate chaining, doubling), each under a reader-writer
 * lock: names -> pid, and keys -> member pids. Entries are removed when their
 * process exits by exit hooks (keel_on_exit_of for a name given to another
 * process, keel_on_exit for a key the process joined itself), so the tables
 * never hold a dead process for longer than its exit takes. A lookup also
 * checks that the pid is alive, which closes the window between a process's
 * death and its hook: a restarted server can take its name back at once.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "keel/registry.h"

typedef struct entry {
  struct entry *next;
  keel_pid_t pid;   /* names */
  keel_pid_t *pids; /* keys: members */
  size_t n, cap;
  char key[];
} entry;

typedef struct table {
  pthread_rwlock_t lock;
  entry **b;
  size_t nb, n;
} table;

static table names = {PTHREAD_RWLOCK_INITIALIZER, NULL, 0, 0};
static table groups = {PTHREAD_RWLOCK_INITIALIZER, NULL, 0, 0};

static uint64_t hash(const char *s) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  while (*s)
    h = (h ^ (unsigned char)*s++) * 1099511628211ull;
  return h;
}

static bool valid(const char *s) {
  if (!s || !*s) return false;
  return strlen(s) <= KEEL_NAME_MAX;
}

/* Under the write lock. */
static entry **slot_of(table *t, const char *key) {
  if (!t->nb) return NULL;
  entry **pp = &t->b[hash(key) & (t->nb - 1)];
  while (*pp && strcmp((*pp)->key, key) != 0)
    pp = &(*pp)->next;
  return pp;
}

static entry *find(table *t, const char *key) {
  entry **pp = slot_of(t, key);
  return pp ? *pp : NULL;
}

static int grow(table *t) {
  if (t->n + 1 <= t->nb) return 0;
  size_t nb = t->nb ? t->nb * 2 : 64;
  entry **b = calloc(nb, sizeof *b);
  if (!b) return KEEL_ENOMEM;
  for (size_t i = 0; i < t->nb; i++)
    for (entry *e = t->b[i], *next; e; e = next) {
      next = e->next;
      size_t k = hash(e->key) & (nb - 1);
      e->next = b[k];
      b[k] = e;
    }
  free(t->b);
  t->b = b;
  t->nb = nb;
  return 0;
}

static entry *insert(table *t, const char *key) {
  if (grow(t)) return NULL;
  size_t len = strlen(key);
  entry *e = calloc(1, sizeof *e + len + 1);
  if (!e) return NULL;
  memcpy(e->key, key, len + 1);
  size_t k = hash(key) & (t->nb - 1);
  e->next = t->b[k];
  t->b[k] = e;
  t->n++;
  return e;
}

static void remove_entry(table *t, entry **pp) {
  entry *e = *pp;
  *pp = e->next;
  t->n--;
  free(e->pids);
  free(e);
  if (t->n == 0) { /* let an idle node hold nothing */
    free(t->b);
    t->b = NULL;
    t->nb = 0;
  }
}

/* ---- names ------------------------------------------------------------------- */

typedef struct name_hook {
  keel_pid_t pid;
  char name[];
} name_hook;

static void drop_name_if(const char *name, keel_pid_t pid) {
  pthread_rwlock_wrlock(&names.lock);
  entry **pp = slot_of(&names, name);
  if (pp && *pp && (*pp)->pid == pid) remove_entry(&names, pp);
  pthread_rwlock_unlock(&names.lock);
}

static void name_hook_run(void *arg) {
  name_hook *h = arg;
  drop_name_if(h->name, h->pid);
  free(h);
}

int keel_register(const char *name, keel_pid_t pid) {
  if (!valid(name) || !pid) return KEEL_EINVAL;
  if (!keel_is_alive(pid)) return KEEL_ENOPROC;
  size_t len = strlen(name);
  name_hook *h = malloc(sizeof *h + len + 1);
  if (!h) return KEEL_ENOMEM;
  h->pid = pid;
  memcpy(h->name, name, len + 1);

  pthread_rwlock_wrlock(&names.lock);
  entry *e = find(&names, name);
  if (e && e->pid != pid && keel_is_alive(e->pid)) {
    pthread_rwlock_unlock(&names.lock);
    free(h);
    return KEEL_EEXIST;
  }
  if (!e) e = insert(&names, name);
  if (!e) {
    pthread_rwlock_unlock(&names.lock);
    free(h);
    return KEEL_ENOMEM;
  }
  e->pid = pid;
  pthread_rwlock_unlock(&names.lock);

  int rc = keel_on_exit_of(pid, name_hook_run, h);
  if (rc) { /* it died meanwhile (or no memory): undo */
    drop_name_if(name, pid);
    free(h);
    return rc == KEEL_ENOPROC ? KEEL_ENOPROC : rc;
  }
  return 0;
}

int keel_unregister(const char *name) {
  if (!valid(name)) return KEEL_EINVAL;
  pthread_rwlock_wrlock(&names.lock);
  entry **pp = slot_of(&names, name);
  int rc = KEEL_ENOENT;
  if (pp && *pp) {
    remove_entry(&names, pp);
    rc = 0;
  }
  pthread_rwlock_unlock(&names.lock);
  return rc;
}

keel_pid_t keel_whereis(const char *name) {
  if (!valid(name)) return 0;
  pthread_rwlock_rdlock(&names.lock);
  entry *e = find(&names, name);
  keel_pid_t pid = e ? e->pid : 0;
  pthread_rwlock_unlock(&names.lock);
  return pid && keel_is_alive(pid) ? pid : 0;
}

size_t keel_registered(void (*fn)(const char *, keel_pid_t, void *), void *ud) {
  pthread_rwlock_rdlock(&names.lock);
  size_t n = names.n, k = 0;
  entry **snap = n ? malloc(n * sizeof *snap) : NULL;
  char **keys = n ? malloc(n * sizeof *keys) : NULL;
  keel_pid_t *pids = n ? malloc(n * sizeof *pids) : NULL;
  if (n && (!snap || !keys || !pids)) n = 0;
  for (size_t i = 0; i < names.nb && k < n; i++)
    for (entry *e = names.b[i]; e && k < n; e = e->next) {
      keys[k] = strdup(e->key);
      pids[k] = e->pid;
      if (keys[k]) k++;
    }
  pthread_rwlock_unlock(&names.lock);
  size_t live = 0;
  for (size_t i = 0; i < k; i++) {
    if (keel_is_alive(pids[i])) {
      live++;
      if (fn) fn(keys[i], pids[i], ud);
    }
    free(keys[i]);
  }
  free(snap);
  free(keys);
  free(pids);
  return live;
}

/* ---- keyed groups -------------------------------------------------------------- */

typedef struct group_hook {
  keel_pid_t pid;
  char key[];
} group_hook;

static bool leave_locked(const char *key, keel_pid_t pid) {
  entry **pp = slot_of(&groups, key);
  if (!pp || !*pp) return false;
  entry *e = *pp;
  for (size_t i = 0; i < e->n; i++)
    if (e->pids[i] == pid) {
      e->pids[i] = e->pids[--e->n];
      if (e->n == 0) remove_entry(&groups, pp);
      return true;
    }
  return false;
}

static void group_hook_run(void *arg) {
  group_hook *h = arg;
  pthread_rwlock_wrlock(&groups.lock);
  leave_locked(h->key, h->pid);
  pthread_rwlock_unlock(&groups.lock);
  free(h);
}

int keel_reg_join(const char *key) {
  keel_pid_t self = keel_self();
  if (!self) return KEEL_ENOTPROC;
  if (!valid(key)) return KEEL_EINVAL;
  pthread_rwlock_wrlock(&groups.lock);
  entry *e = find(&groups, key);
  if (e)
    for (size_t i = 0; i < e->n; i++)
      if (e->pids[i] == self) {
        pthread_rwlock_unlock(&groups.lock);
        return 0;
      }
  if (!e) e = insert(&groups, key);
  if (e && e->n == e->cap) {
    size_t cap = e->cap ? e->cap * 2 : 4;
    keel_pid_t *np = realloc(e->pids, cap * sizeof *np);
    if (np) {
      e->pids = np;
      e->cap = cap;
    }
  }
  if (!e || e->n == e->cap) {
    if (e && e->n == 0) remove_entry(&groups, slot_of(&groups, key));
    pthread_rwlock_unlock(&groups.lock);
    return KEEL_ENOMEM;
  }
  e->pids[e->n++] = self;
  pthread_rwlock_unlock(&groups.lock);

  size_t len = strlen(key);
  group_hook *h = malloc(sizeof *h + len + 1);
  int rc = h ? 0 : KEEL_ENOMEM;
  if (h) {
    h->pid = self;
    memcpy(h->key, key, len + 1);
    rc = keel_on_exit(group_hook_run, h);
  }
  if (rc) {
    free(h);
    pthread_rwlock_wrlock(&groups.lock);
    leave_locked(key, self);
    pthread_rwlock_unlock(&groups.lock);
  }
  return rc;
}

int keel_reg_leave(const char *key) {
  keel_pid_t self = keel_self();
  if (!self) return KEEL_ENOTPROC;
  if (!valid(key)) return KEEL_EINVAL;
  pthread_rwlock_wrlock(&groups.lock);
  bool found = leave_locked(key, self);
  pthread_rwlock_unlock(&groups.lock);
  /* The exit hook stays registered and finds nothing to do. */
  return found ? 0 : KEEL_ENOENT;
}

size_t keel_reg_members(const char *key, keel_pid_t *out, size_t max) {
  if (!valid(key)) return 0;
  pthread_rwlock_rdlock(&groups.lock);
  entry *e = find(&groups, key);
  size_t n = e ? e->n : 0;
  for (size_t i = 0; i < n && i < max; i++)
    out[i] = e->pids[i];
  pthread_rwlock_unlock(&groups.lock);
  return n;
}

int keel_glob_match(const char *p, const char *k) {
  while (*p) {
    if (p[0] == '*' && p[1] == '*') {
      p += 2;
      for (;; k++) {
        if (keel_glob_match(p, k)) return 1;
        if (!*k) return 0;
      }
    }
    if (*p == '*') {
      p++;
      for (;; k++) {
        if (keel_glob_match(p, k)) return 1;
        if (!*k || *k == '.') return 0;
      }
    }
    if (*p == '?') {
      if (!*k || *k == '.') return 0;
    } else if (*p != *k) {
      return 0;
    }
    p++;
    k++;
  }
  return *k == 0;
}

static void push_pid(keel_pid_t **v, size_t *n, size_t *cap, keel_pid_t pid, bool *oom) {
  if (*n == *cap) {
    size_t c = *cap ? *cap * 2 : 16;
    keel_pid_t *nv = realloc(*v, c * sizeof *nv);
    if (!nv) {
      *oom = true;
      return;
    }
    *v = nv;
    *cap = c;
  }
  (*v)[(*n)++] = pid;
}

int keel_reg_dispatch(const char *pattern, const keel_msg_t *msg, size_t *delivered) {
  if (delivered) *delivered = 0;
  if (!valid(pattern) || !msg) return KEEL_EINVAL;
  keel_pid_t *to = NULL;
  size_t n = 0, cap = 0;
  bool oom = false;
  bool glob = strpbrk(pattern, "*?") != NULL;
  pthread_rwlock_rdlock(&groups.lock);
  if (!glob) {
    entry *e = find(&groups, pattern);
    for (size_t i = 0; e && i < e->n; i++)
      push_pid(&to, &n, &cap, e->pids[i], &oom);
  } else {
    for (size_t b = 0; b < groups.nb; b++)
      for (entry *e = groups.b[b]; e; e = e->next)
        if (keel_glob_match(pattern, e->key))
          for (size_t i = 0; i < e->n; i++)
            push_pid(&to, &n, &cap, e->pids[i], &oom);
  }
  pthread_rwlock_unlock(&groups.lock);
  size_t sent = 0;
  for (size_t i = 0; i < n; i++) {
    keel_msg_t *copy = keel_msg_copy(keel_msg_tag(msg), keel_msg_data(msg), keel_msg_size(msg));
    if (!copy) {
      oom = true;
      break;
    }
    keel_msg_set_proto(copy, keel_msg_proto(msg));
    keel_send(to[i], copy);
    sent++;
  }
  free(to);
  if (delivered) *delivered = sent;
  return oom ? KEEL_ENOMEM : 0;
}
