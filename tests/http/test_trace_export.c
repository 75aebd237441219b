/* test_trace_export.c - spans across two keel services, exported over OTLP.
 *
 * Three keel HTTP servers in one process: node A (its handler calls a
 * traced gen_server, then node B over the HTTP client), node B, and a
 * collector that keeps the bodies POSTed to /v1/traces (started without
 * request ids, so it makes no spans of its own). What the exporter sent is
 * decoded by protoc (Debian's protobuf-compiler) with
 * tests/http/otlp_trace_test.proto, a schema written here with OTLP's field
 * numbers, and the spans are checked from protoc's text output: one trace,
 * the right parents, OpenTelemetry's HTTP attributes, the resource.
 *
 * A collector that refuses connections or never answers changes no request:
 * they all succeed well inside a client timeout far above their normal time
 * (a hang would fail them, a slow machine would not), and every span is
 * accounted for as exported, failed, dropped or still queued.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

#include "keel/gen_server.h"
#include "keel/http.h"
#include "keel/http_client.h"
#include "keel/trace.h"
#include "keel/trace_export.h"
#include "keel_test.h"

/* ---- the collector ---------------------------------------------------------------------- */

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static char *g_bodies[64];
static size_t g_blen[64];
static int g_nbodies;
static atomic_int g_refuse; /* answer this many posts with 503 first */
static atomic_bool g_slow;  /* never answer (until the case ends) */
static atomic_int g_posts;

static int h_collect(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)ud;
  atomic_fetch_add(&g_posts, 1);
  while (atomic_load(&g_slow))
    keel_sleep(20);
  if (atomic_fetch_sub(&g_refuse, 1) > 0) return keel_http_reply_text(res, 503, "text/plain", "no");
  size_t n;
  const void *b = keel_http_body(req, &n);
  pthread_mutex_lock(&g_mu);
  if (g_nbodies < 64 && (g_bodies[g_nbodies] = malloc(n ? n : 1))) {
    memcpy(g_bodies[g_nbodies], b, n);
    g_blen[g_nbodies++] = n;
  }
  pthread_mutex_unlock(&g_mu);
  return keel_http_reply(res, 200, "application/x-protobuf", "", 0);
}

/* ---- nodes A and B ----------------------------------------------------------------------- */

static int g_port_b;
static keel_http_client *g_client;

static int st_init(void *arg, void **st) {
  (void)arg;
  *st = NULL;
  return 0;
}
static int st_call(void *st, keel_gs_from from, keel_msg_t **req, keel_msg_t **reply) {
  (void)st, (void)from, (void)req;
  *reply = NULL;
  return KEEL_GS_REPLY;
}
static const keel_gen_server store = {.init = st_init, .handle_call = st_call};

static int h_a(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req, (void)ud;
  keel_msg_t *r = NULL;
  int rc = keel_gs_call_name("store", keel_msg_new(0, 0), &r, 0, NULL);
  keel_msg_free(r);
  if (rc) return rc;
  char url[64];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/b", g_port_b);
  keel_http_client_req rq = {.url = url};
  keel_http_client_res cr;
  rc = keel_http_client_request(g_client, &rq, &cr);
  int status = cr.status;
  keel_http_client_res_free(&cr);
  if (rc) return rc;
  return keel_http_reply_text(res, status, "text/plain", "a");
}

static int h_b(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req, (void)ud;
  return keel_http_reply_text(res, 200, "text/plain", "b");
}

static int h_boom(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req, (void)ud;
  return keel_http_reply_text(res, 500, "text/plain", "boom");
}

static keel_http_server *serve(const char *method, const char *path, keel_http_handler fn,
                               bool collector) {
  keel_http_router *r = keel_http_router_new();
  CHECK(r != NULL);
  CHECK_OK(keel_http_route(r, method, path, fn, NULL));
  if (!collector) CHECK_OK(keel_http_route(r, "GET", "/boom", h_boom, NULL));
  keel_http_opts o;
  keel_http_opts_init(&o);
  o.host = "127.0.0.1";
  o.no_request_id = collector; /* no span for the exporter's own posts */
  o.request_timeout_ms = KEEL_INFINITY;
  keel_http_server *s;
  CHECK_OK(keel_http_start(&o, r, &s));
  return s;
}

/* ---- decoding what was sent -------------------------------------------------------------- */

typedef struct span_rec {
  char name[64];
  uint8_t trace[16], span[8], parent[8];
  bool has_parent;
  int kind, status;
  unsigned flags;
  uint64_t start, end;
  char attrs[24][260]; /* "key=value" */
  int nattrs;
} span_rec;

static span_rec g_spans[256];
static int g_nspans;
static char g_resource[16][260];
static int g_nres;

/* protoc's text format string (C escapes, octal for other bytes) into out. */
static size_t unescape(const char *s, uint8_t *out, size_t cap) {
  size_t n = 0;
  if (*s == '"') s++;
  while (*s && *s != '"' && n < cap) {
    if (*s != '\\') {
      out[n++] = (uint8_t)*s++;
      continue;
    }
    s++;
    if (*s >= '0' && *s <= '7') {
      int v = 0;
      for (int i = 0; i < 3 && *s >= '0' && *s <= '7'; i++)
        v = v * 8 + (*s++ - '0');
      out[n++] = (uint8_t)v;
      continue;
    }
    char c = *s++;
    out[n++] = (uint8_t)(c == 'n' ? '\n' : c == 't' ? '\t' : c == 'r' ? '\r' : c);
  }
  return n;
}

/* Decodes every body kept so far into g_spans (and the resource). */
static void decode_all(void) {
  const char *src = getenv("KEEL_TEST_SRCDIR");
  CHECK(src != NULL);
  g_nspans = g_nres = 0;
  pthread_mutex_lock(&g_mu);
  for (int b = 0; b < g_nbodies; b++) {
    char bin[96], txt[96], cmd[1024];
    snprintf(bin, sizeof bin, "/tmp/keel_otlp_%d_%d.bin", (int)getpid(), b);
    snprintf(txt, sizeof txt, "/tmp/keel_otlp_%d_%d.txt", (int)getpid(), b);
    FILE *f = fopen(bin, "wb");
    CHECK(f && fwrite(g_bodies[b], 1, g_blen[b], f) == g_blen[b]);
    fclose(f);
    snprintf(cmd, sizeof cmd,
             "protoc --proto_path=%s/tests/http --decode=keeltest.ExportTraceServiceRequest "
             "otlp_trace_test.proto < %s > %s",
             src, bin, txt);
    CHECK_EQ(system(cmd), 0); /* protoc refuses anything that is not this message */
    f = fopen(txt, "r");
    CHECK(f != NULL);
    char line[2048], stack[8][32], key[128] = "";
    int depth = 0;
    span_rec *cur = NULL;
    while (fgets(line, sizeof line, f)) {
      char *l = line;
      while (*l == ' ')
        l++;
      l[strcspn(l, "\n")] = '\0';
      size_t len = strlen(l);
      if (len > 2 && strcmp(l + len - 2, " {") == 0) {
        CHECK(depth < 8);
        snprintf(stack[depth], sizeof stack[depth], "%.*s", (int)(len - 2), l);
        if (strcmp(stack[depth], "spans") == 0) {
          CHECK(g_nspans < 256);
          cur = &g_spans[g_nspans++];
          memset(cur, 0, sizeof *cur);
        }
        depth++;
        continue;
      }
      if (strcmp(l, "}") == 0) {
        depth--;
        if (strcmp(stack[depth], "spans") == 0) cur = NULL;
        continue;
      }
      char *colon = strstr(l, ": ");
      if (!colon || depth == 0) continue;
      *colon = '\0';
      const char *field = l, *val = colon + 2, *in = stack[depth - 1];
      if (strcmp(field, "key") == 0) {
        key[unescape(val, (uint8_t *)key, sizeof key - 1)] = '\0';
      } else if (strstr(field, "_value") && strcmp(in, "value") == 0) {
        char v[128] = "";
        if (val[0] == '"')
          v[unescape(val, (uint8_t *)v, sizeof v - 1)] = '\0';
        else
          snprintf(v, sizeof v, "%s", val);
        bool span_attr = depth >= 2 && strcmp(stack[depth - 2], "attributes") == 0 && cur &&
                         depth >= 3 && strcmp(stack[depth - 3], "spans") == 0;
        if (span_attr && cur->nattrs < 24)
          snprintf(cur->attrs[cur->nattrs++], 260, "%s=%s", key, v);
        else if (depth >= 3 && strcmp(stack[depth - 3], "resource") == 0 && g_nres < 16)
          snprintf(g_resource[g_nres++], 260, "%s=%s", key, v);
      } else if (cur && strcmp(in, "spans") == 0) {
        if (strcmp(field, "name") == 0)
          cur->name[unescape(val, (uint8_t *)cur->name, sizeof cur->name - 1)] = '\0';
        else if (strcmp(field, "trace_id") == 0)
          CHECK_EQ(unescape(val, cur->trace, 16), 16);
        else if (strcmp(field, "span_id") == 0)
          CHECK_EQ(unescape(val, cur->span, 8), 8);
        else if (strcmp(field, "parent_span_id") == 0) {
          CHECK_EQ(unescape(val, cur->parent, 8), 8);
          cur->has_parent = true;
        } else if (strcmp(field, "kind") == 0)
          cur->kind = atoi(val);
        else if (strcmp(field, "flags") == 0)
          cur->flags = (unsigned)strtoul(val, NULL, 0);
        else if (strcmp(field, "start_time_unix_nano") == 0)
          cur->start = strtoull(val, NULL, 0);
        else if (strcmp(field, "end_time_unix_nano") == 0)
          cur->end = strtoull(val, NULL, 0);
      } else if (cur && strcmp(in, "status") == 0 && strcmp(field, "code") == 0) {
        cur->status = atoi(val);
      }
    }
    fclose(f);
    unlink(bin);
    unlink(txt);
  }
  pthread_mutex_unlock(&g_mu);
}

static void forget_bodies(void) {
  pthread_mutex_lock(&g_mu);
  for (int i = 0; i < g_nbodies; i++)
    free(g_bodies[i]);
  g_nbodies = 0;
  pthread_mutex_unlock(&g_mu);
}

static const span_rec *span_named(const char *name, int kind) {
  const span_rec *found = NULL;
  for (int i = 0; i < g_nspans; i++)
    if (strcmp(g_spans[i].name, name) == 0 && g_spans[i].kind == kind) {
      CHECK(found == NULL); /* exactly one */
      found = &g_spans[i];
    }
  CHECK(found != NULL);
  return found;
}

static bool has_attr(const span_rec *s, const char *kv) {
  for (int i = 0; i < s->nattrs; i++)
    if (strcmp(s->attrs[i], kv) == 0) return true;
  return false;
}

static bool child_of(const span_rec *c, const span_rec *p) {
  return c->has_parent && memcmp(c->parent, p->span, 8) == 0 && memcmp(c->trace, p->trace, 16) == 0;
}

/* ---- the cases ------------------------------------------------------------------------------- */

typedef struct nodes {
  keel_http_server *a, *b, *col;
  keel_pid_t store;
} nodes;

static void nodes_start(nodes *n, const keel_trace_export_opts *eo_in, int max_queue) {
  keel_trace_opts to = {.sampler = KEEL_SAMPLER_ALWAYS_ON, .max_queue = max_queue};
  CHECK_OK(keel_trace_start(&to));
  n->col = serve("POST", "/v1/traces", h_collect, true);
  n->b = serve("GET", "/b", h_b, false);
  g_port_b = keel_http_port(n->b);
  n->a = serve("GET", "/a", h_a, false);
  keel_http_client_opts co = {.no_breaker = true, .max_retries = -1};
  CHECK_OK(keel_http_client_new(&co, &g_client));
  keel_gs_opts go;
  keel_gs_opts_init(&go);
  go.name = "store";
  go.trace = true;
  CHECK_OK(keel_gs_start(&store, NULL, &go, &n->store, NULL));
  keel_trace_export_opts eo = *eo_in;
  char url[64];
  if (!eo.endpoint) {
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1/traces", keel_http_port(n->col));
    eo.endpoint = url;
  }
  CHECK_OK(keel_trace_export_start(&eo));
  atomic_store(&g_posts, 0);
}

static void nodes_stop(nodes *n) {
  atomic_store(&g_slow, false);
  CHECK_OK(keel_gs_stop(n->store, KEEL_REASON_NORMAL, NULL, 0));
  keel_http_client_free(g_client);
  CHECK_OK(keel_http_stop(n->a));
  CHECK_OK(keel_http_stop(n->b));
  CHECK_OK(keel_http_stop(n->col));
  keel_trace_stop();
  forget_bodies();
}

static int get(const char *path, int port) {
  char url[96];
  snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
  static const char *const hdrs[] = {"User-Agent: trace-test/1", NULL};
  /* far above a request's normal time: only a request stuck behind the
   * exporter would reach it */
  keel_http_client_req rq = {.url = url, .headers = hdrs, .timeout_ms = 20000};
  keel_http_client_res res;
  int rc = keel_http_client_request(g_client, &rq, &res);
  int st = res.status;
  keel_http_client_res_free(&res);
  CHECK_OK(rc);
  return st;
}

KT_CASE(one_trace_across_two_services_a_gen_server_and_the_client) {
  nodes n;
  keel_trace_export_opts eo = {.service_name = "trace-test",
                               .resource_attrs = "deployment.environment=test,team=a%20b",
                               .schedule_delay_ms = 60000};
  nodes_start(&n, &eo, 0);
  CHECK_EQ(get("/a", keel_http_port(n.a)), 200);
  CHECK_EQ(get("/boom", keel_http_port(n.b)), 500);
  CHECK_OK(keel_trace_export_flush(10000));
  decode_all();

  const span_rec *root = NULL; /* the test's own client span of /a: kind client, no parent */
  char want[96];
  snprintf(want, sizeof want, "url.full=http://127.0.0.1:%d/a", keel_http_port(n.a));
  for (int i = 0; i < g_nspans; i++)
    if (g_spans[i].kind == KEEL_SPAN_CLIENT && !g_spans[i].has_parent &&
        has_attr(&g_spans[i], want))
      root = &g_spans[i];
  CHECK(root != NULL);
  const span_rec *sa = span_named("GET /a", KEEL_SPAN_SERVER);
  const span_rec *call = span_named("store call", KEEL_SPAN_INTERNAL);
  const span_rec *sb = span_named("GET /b", KEEL_SPAN_SERVER);
  const span_rec *boom = span_named("GET /boom", KEEL_SPAN_SERVER);
  const span_rec *ca = NULL; /* A's client span to B */
  for (int i = 0; i < g_nspans; i++)
    if (g_spans[i].kind == KEEL_SPAN_CLIENT && child_of(&g_spans[i], sa)) ca = &g_spans[i];
  CHECK(ca != NULL);
  CHECK(child_of(sa, root));
  CHECK(child_of(call, sa));
  CHECK(child_of(sb, ca));
  CHECK(sa->start <= call->start && call->end <= sa->end);
  CHECK(ca->start >= call->end);
  /* remote parents: A and B's server spans; the call's parent is in-process */
  CHECK_EQ(sa->flags, 0x301);
  CHECK_EQ(sb->flags, 0x301);
  CHECK_EQ(call->flags, 0x101);
  CHECK_EQ(root->flags, 0x101);

  char kv[96];
  CHECK(has_attr(sa, "http.request.method=GET"));
  CHECK(has_attr(sa, "url.path=/a"));
  CHECK(has_attr(sa, "http.route=/a"));
  CHECK(has_attr(sa, "http.response.status_code=200"));
  CHECK(has_attr(sa, "server.address=127.0.0.1"));
  snprintf(kv, sizeof kv, "server.port=%d", keel_http_port(n.a));
  CHECK(has_attr(sa, kv));
  CHECK(has_attr(sa, "user_agent.original=trace-test/1"));
  CHECK_EQ(sa->status, 0);
  CHECK(has_attr(ca, "http.request.method=GET"));
  CHECK(has_attr(ca, "http.response.status_code=200"));
  snprintf(kv, sizeof kv, "server.port=%d", g_port_b);
  CHECK(has_attr(ca, kv));
  CHECK(has_attr(call, "keel.gen_server=store"));
  CHECK_EQ(boom->status, KEEL_SPAN_ERROR);
  CHECK(has_attr(boom, "error.type=500"));
  CHECK(has_attr(boom, "http.response.status_code=500"));
  /* nothing of the exporter's own posts */
  for (int i = 0; i < g_nspans; i++)
    CHECK(strcmp(g_spans[i].name, "POST") != 0 && strcmp(g_spans[i].name, "POST /v1/traces"));
  /* the resource */
  bool svc = false, team = false, sdk = false;
  for (int i = 0; i < g_nres; i++) {
    svc |= strcmp(g_resource[i], "service.name=trace-test") == 0;
    team |= strcmp(g_resource[i], "team=a b") == 0;
    sdk |= strcmp(g_resource[i], "telemetry.sdk.name=keel") == 0;
  }
  CHECK(svc && team && sdk);
  keel_trace_stats st;
  keel_trace_stats_get(&st);
  CHECK_EQ(st.exported, (uint64_t)g_nspans);
  CHECK_EQ(st.failed, 0);
  CHECK_OK(keel_trace_export_stop(0));
  nodes_stop(&n);
}

KT_CASE(a_503_from_the_collector_is_retried) {
  nodes n;
  keel_trace_export_opts eo = {.schedule_delay_ms = 60000, .export_timeout_ms = 20000};
  nodes_start(&n, &eo, 0);
  atomic_store(&g_refuse, 2);
  CHECK_EQ(get("/b", keel_http_port(n.b)), 200);
  CHECK_OK(keel_trace_export_flush(30000));
  CHECK_EQ(atomic_load(&g_posts), 3);
  keel_trace_stats st;
  keel_trace_stats_get(&st);
  CHECK_EQ(st.exported, 2); /* the client span and B's server span */
  CHECK_EQ(st.failed, 0);
  CHECK_OK(keel_trace_export_stop(0));
  atomic_store(&g_refuse, 0);
  nodes_stop(&n);
}

/* Requests go on while the exporter fails; every span is counted somewhere. */
static void requests_unaffected(nodes *n) {
  enum { N = 40 };
  for (int i = 0; i < N; i++)
    CHECK_EQ(get("/b", keel_http_port(n->b)), 200);
  CHECK_OK(keel_trace_export_stop(10000)); /* within the budget: the last batch is counted */
  keel_trace_stats st;
  keel_trace_stats_get(&st);
  CHECK_EQ(st.exported, 0);
  CHECK(st.failed > 0);
  CHECK_EQ(st.failed + st.dropped + st.queued, 2 * N); /* client span + B's server span */
}

KT_CASE(a_collector_that_refuses_connections_changes_no_request) {
  nodes n;
  keel_trace_export_opts eo = {.endpoint = "http://127.0.0.1:1/v1/traces",
                               .schedule_delay_ms = 20,
                               .export_timeout_ms = 300};
  nodes_start(&n, &eo, 16);
  requests_unaffected(&n);
  nodes_stop(&n);
}

KT_CASE(a_collector_that_never_answers_changes_no_request) {
  nodes n;
  keel_trace_export_opts eo = {.schedule_delay_ms = 20, .export_timeout_ms = 300};
  atomic_store(&g_slow, true);
  nodes_start(&n, &eo, 16);
  requests_unaffected(&n);
  CHECK(atomic_load(&g_posts) > 0); /* it did try */
  nodes_stop(&n);
}

/* The exporter's thread is cut at the stop's deadline, not at the export
 * timeout: the batch in flight counts as failed and nothing stays queued. */
KT_CASE(a_stop_cuts_an_export_the_collector_never_answers_at_its_deadline) {
  nodes n;
  keel_trace_export_opts eo = {.schedule_delay_ms = 60000, .export_timeout_ms = 60000};
  nodes_start(&n, &eo, 0);
  CHECK_EQ(get("/b", keel_http_port(n.b)), 200);
  atomic_store(&g_slow, true);
  CHECK_EQ(keel_trace_export_stop(300), KEEL_ETIMEDOUT);
  CHECK_EQ(atomic_load(&g_posts), 1);
  keel_trace_stats st;
  keel_trace_stats_get(&st);
  CHECK_EQ(st.exported, 0);
  CHECK_EQ(st.failed, 2); /* the client span and B's server span */
  CHECK_EQ(st.queued, 0);
  CHECK_EQ(keel_trace_export_flush(100), KEEL_ESTATE); /* stopped */
  nodes_stop(&n);
}

KT_MAIN(KT_ENTRY_SCHED(one_trace_across_two_services_a_gen_server_and_the_client, 2),
        KT_ENTRY_SCHED(a_503_from_the_collector_is_retried, 2),
        KT_ENTRY_SCHED(a_collector_that_refuses_connections_changes_no_request, 2),
        KT_ENTRY_SCHED(a_collector_that_never_answers_changes_no_request, 2),
        KT_ENTRY_SCHED(a_stop_cuts_an_export_the_collector_never_answers_at_its_deadline, 2))
