/* orders - the flagship example: an event-sourced orders service on keel.
 *
 *   POST /orders              {"customer":"ann","items":[{"sku":"A1","qty":2,"price_cents":500}]}
 *                             -> 201 the order
 *   POST /orders/:id/pay      -> 200 the order (only when placed)
 *   POST /orders/:id/ship     -> 200 the order (only when paid)
 *   POST /orders/:id/cancel   -> 200 the order (only before it shipped)
 *   GET  /orders/:id          -> the order, folded from its events (the aggregate)
 *   GET  /orders?status=&customer=  -> from the orders_view read model
 *   GET  /orders/stats        -> counts per status and revenue (a second read model)
 *   admin port (HEALTH_PORT): /health/live, /health/ready, /health, /metrics
 *
 * WRITES go through the order aggregate (keel/aggregate.h): its decide()
 * enforces the rules, a rejected command is 409 with keel's error envelope,
 * and so is a command whose If-Match version is not the order's, or one still
 * racing other writers after the aggregate's retries.
 *
 * IDEMPOTENCY. A command with an Idempotency-Key header gets an event id
 * derived from (order, command, key): retried, its decide() finds that id
 * among the order's events and the answer is rebuilt from the order as it was
 * right after that event, the first answer byte for byte (marked with the
 * header Idempotent-Replayed: true). A create's order id comes from the key
 * too. No table is needed: the events are the record. A rejected command
 * stored nothing, so its retry is decided again.
 *
 * READ MODELS are transactional projections (keel/subscription.h .project):
 * each event's rows and the subscription's checkpoint commit together, so a
 * crash never applies an event twice. They lag the writes by a moment; the
 * order's own GET is always current.
 *
 * NOTIFICATIONS: a side-effecting subscription (.handle) "mails" the
 * customer (a log line). Delivery is at least once: it skips an event id it
 * has already mailed (notifications_sent); a crash between the mail and that
 * row mails twice, which is the documented price of at-least-once.
 *
 * CORRELATION: the request id goes into each event's metadata
 * (correlation_id) and the notifier logs with it as its requestId.
 *
 * Configuration: keel_service_main's variables (PORT, HEALTH_PORT, ...) and
 * DATABASE_URL (default sqlite:./data/orders.db; postgresql://... for many
 * instances), DATABASE_SESSION_URL (behind PgBouncer in transaction mode: a
 * direct connection for LISTEN and the groups' locks) and SUB_PARTITIONS (0: each subscription runs whole in this
 * instance; N: each is a group of N partitions by order, shared out among
 * the instances on one PostgreSQL, which more than one instance needs: two
 * plain subscriptions of one name would both apply every event). See
 * docs/orders.md.
 */
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "keel.h"
#include "keel/aggregate.h"
#include "keel/eventstore.h"
#include "keel/subscription.h"

#define VERSION "0.1.0"

typedef struct config {
  char *database_url;
  char *database_session_url; /* PgBouncer in transaction mode: a direct connection ("": none) */
  int64_t partitions;
} config;

static config cfg;

static const keel_config_field fields[] = {
    {.env = "DATABASE_URL",
     .type = KEEL_CONFIG_STRING,
     .offset = offsetof(config, database_url),
     .def = "sqlite:./data/orders.db",
     .flags = KEEL_CONFIG_SECRET},
    {.env = "DATABASE_SESSION_URL",
     .type = KEEL_CONFIG_STRING,
     .offset = offsetof(config, database_session_url),
     .def = "",
     .flags = KEEL_CONFIG_SECRET},
    {.env = "SUB_PARTITIONS",
     .type = KEEL_CONFIG_INT,
     .offset = offsetof(config, partitions),
     .def = "0",
     .min = 0,
     .max = 64},
};

static keel_es *es; /* opened in orders_start, closed in orders_stop */

/* ---- ids ------------------------------------------------------------------------- */

static void format_uuid(const unsigned char b[16], char out[37]) {
  unsigned char u[16];
  memcpy(u, b, 16);
  u[6] = (unsigned char)((u[6] & 0x0f) | 0x80); /* version 8: application-defined */
  u[8] = (unsigned char)((u[8] & 0x3f) | 0x80); /* RFC 4122 variant */
  snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0],
           u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14],
           u[15]);
}

/* A UUID that is a function of text (two FNV-1a passes): the same key gives
 * the same event id, so the store and the aggregate recognise a retry. */
static void uuid_of(const char *text, char out[37]) {
  uint64_t h[2] = {0xcbf29ce484222325ull, 0x84222325cbf29ce4ull};
  for (const unsigned char *p = (const unsigned char *)text; *p; p++)
    for (int i = 0; i < 2; i++)
      h[i] = (h[i] ^ *p) * 0x100000001b3ull;
  unsigned char b[16];
  memcpy(b, h, 16);
  format_uuid(b, out);
}

static int random_uuid(char out[37]) {
  unsigned char b[16];
  if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b) return KEEL_EIO;
  format_uuid(b, out);
  return 0;
}

/* ---- the order aggregate -------------------------------------------------------- */

enum { MAX_EVENTS = 8 }; /* an order has at most 3 events: placed, paid, shipped/cancelled */

typedef struct order {
  char customer[128];
  char status[16]; /* "" (none), placed, paid, shipped, cancelled */
  json_t *items;
  int64_t total_cents, version;
  struct {
    char id[37];
    int64_t version;
  } events[MAX_EVENTS]; /* for idempotent replays */
} order;

static void *order_init(void *ud) {
  (void)ud;
  return calloc(1, sizeof(order));
}

static void order_destroy(void *s, void *ud) {
  (void)ud;
  order *o = s;
  json_decref(o->items);
  free(o);
}

static const char *str_of(json_t *obj, const char *key) {
  const char *s = json_string_value(json_object_get(obj, key));
  return s ? s : "";
}

static int order_apply(void *s, const keel_es_event *ev, void *ud) {
  (void)ud;
  order *o = s;
  json_t *p = keel_es_event_payload(ev);
  if (!p) return KEEL_EIO;
  if (strcmp(ev->type, "OrderPlaced") == 0) {
    snprintf(o->customer, sizeof o->customer, "%s", str_of(p, "customer"));
    json_decref(o->items);
    o->items = json_incref(json_object_get(p, "items"));
    o->total_cents = json_integer_value(json_object_get(p, "total_cents"));
    snprintf(o->status, sizeof o->status, "placed");
  } else if (strcmp(ev->type, "OrderPaid") == 0) {
    snprintf(o->status, sizeof o->status, "paid");
  } else if (strcmp(ev->type, "OrderShipped") == 0) {
    snprintf(o->status, sizeof o->status, "shipped");
  } else if (strcmp(ev->type, "OrderCancelled") == 0) {
    snprintf(o->status, sizeof o->status, "cancelled");
  }
  if (ev->version >= 1 && ev->version <= MAX_EVENTS) {
    memcpy(o->events[ev->version - 1].id, ev->id, sizeof ev->id);
    o->events[ev->version - 1].version = ev->version;
  }
  o->version = ev->version;
  return 0;
}

static const keel_agg_def orders = {
    .category = "order", .init = order_init, .apply = order_apply, .destroy = order_destroy};

/* decide()'s answers besides 0 (positive: keel's own codes are negative) */
enum { ORD_REPLAY = 1, ORD_NOT_FOUND, ORD_REJECTED };

typedef struct command {
  const char *kind;     /* create, pay, ship, cancel */
  const char *event_id; /* from the Idempotency-Key; NULL: a new one */
  int64_t if_match;     /* 0: any version */
  json_t *placed;       /* create: the OrderPlaced payload */
  json_t *metadata;     /* correlation_id, idempotency_key */
} command;

static int64_t replayed_version(const order *o, const char *event_id) {
  for (int i = 0; event_id && i < MAX_EVENTS; i++)
    if (o->events[i].version && strcmp(o->events[i].id, event_id) == 0) return o->events[i].version;
  return 0;
}

static int emit(keel_agg_decision *d, const command *c, const char *type, json_t *payload) {
  keel_es_event_in ev = {
      .id = c->event_id, .type = type, .payload = payload, .metadata = c->metadata};
  int rc = keel_agg_emit_event(d, &ev);
  json_decref(payload);
  return rc;
}

static int order_decide(const void *s, const void *cmd, keel_agg_decision *d) {
  const order *o = s;
  const command *c = cmd;
  if (replayed_version(o, c->event_id)) return ORD_REPLAY;
  if (strcmp(c->kind, "create") == 0) {
    if (o->version) return keel_agg_reject(d, ORD_REJECTED, "order already exists");
    return emit(d, c, "OrderPlaced", json_incref(c->placed));
  }
  if (!o->version) return keel_agg_reject(d, ORD_NOT_FOUND, "no such order");
  if (c->if_match && c->if_match != o->version)
    return keel_agg_reject(d, ORD_REJECTED, "order is at version %" PRId64 ", not %" PRId64,
                           o->version, c->if_match);
  bool placed = strcmp(o->status, "placed") == 0, paid = strcmp(o->status, "paid") == 0;
  if (strcmp(c->kind, "pay") == 0 && placed)
    return emit(d, c, "OrderPaid", json_pack("{s:I}", "amount_cents", (json_int_t)o->total_cents));
  if (strcmp(c->kind, "ship") == 0 && paid) return emit(d, c, "OrderShipped", json_object());
  if (strcmp(c->kind, "cancel") == 0 && (placed || paid))
    return emit(d, c, "OrderCancelled",
                json_pack("{s:s, s:I}", "from", o->status, "refund_cents",
                          (json_int_t)(paid ? o->total_cents : 0)));
  return keel_agg_reject(d, ORD_REJECTED, "cannot %s an order that is %s", c->kind, o->status);
}

static json_t *order_json(const char *id, const order *o) {
  return json_pack("{s:s, s:s, s:s, s:O, s:I, s:I}", "id", id, "customer", o->customer, "status",
                   o->status, "items", o->items ? o->items : json_null(), "total_cents",
                   (json_int_t)o->total_cents, "version", (json_int_t)o->version);
}

/* The order as it was right after `version`: what a command that stopped
 * there answered (an idempotent replay answers it again). */
static int order_at(const char *id, int64_t version, json_t **out) {
  char stream[300]; /* the store's stream ids are at most 255 bytes */
  snprintf(stream, sizeof stream, "order-%s", id);
  keel_es_events evs = {0};
  int rc = keel_es_read_stream(es, stream, &(keel_es_read_opts){.to = version}, &evs);
  if (rc) return rc;
  order *o = order_init(NULL);
  if (!o) rc = KEEL_ENOMEM;
  for (size_t i = 0; !rc && i < evs.n; i++)
    rc = order_apply(o, &evs.v[i], NULL);
  if (!rc) *out = order_json(id, o);
  if (o) order_destroy(o, NULL);
  keel_es_events_free(&evs);
  return rc;
}

/* ---- commands over HTTP ----------------------------------------------------------- */

static int answer(keel_http_res *res, const char *id, int64_t version, int status, bool replay) {
  json_t *body = NULL;
  int rc = order_at(id, version, &body);
  if (rc) return keel_http_fail(res, KEEL_HTTP_INTERNAL, keel_strerror(rc), NULL);
  if (replay) keel_http_set_header(res, "Idempotent-Replayed", "true");
  return keel_http_reply_json(res, status, body);
}

/* Runs a command on order `id` and turns the aggregate's answer into HTTP. */
static int run(keel_http_req *req, keel_http_res *res, const char *id, command *c) {
  const char *key = keel_http_header(req, "Idempotency-Key");
  char event_id[37];
  if (key && strlen(key) > 200)
    return keel_http_fail(res, KEEL_HTTP_VALIDATION, "Idempotency-Key is longer than 200 bytes",
                          NULL);
  if (key && *key) {
    char text[512];
    snprintf(text, sizeof text, "%s/%s/%s", id, c->kind, key);
    uuid_of(text, event_id);
    c->event_id = event_id;
  }
  const char *if_match = keel_http_header(req, "If-Match");
  if (if_match) c->if_match = strtoll(if_match + (*if_match == '"'), NULL, 10);
  c->metadata = json_pack("{s:s, s:s?}", "correlation_id", keel_http_request_id(req),
                          "idempotency_key", key && *key ? key : NULL);
  keel_agg_result r;
  int rc = keel_agg_execute(es, &orders, id, order_decide, c, &r);
  json_decref(c->metadata);
  int created = strcmp(c->kind, "create") == 0 ? 201 : 200;
  if (rc == 0) return answer(res, id, r.version, created, false);
  if (rc == ORD_REPLAY) {
    /* the command's event is stored: answer as it did the first time */
    void *s = NULL;
    rc = keel_agg_load(es, &orders, id, &s, NULL);
    int64_t v = rc ? 0 : replayed_version(s, c->event_id);
    if (s) order_destroy(s, NULL);
    if (v) return answer(res, id, v, created, true);
    if (!rc) rc = KEEL_ESTATE; /* its event vanished (a hard delete): nothing to replay */
  }
  if (rc == ORD_NOT_FOUND || rc == KEEL_EINVAL) /* EINVAL: the id cannot name a stream */
    return keel_http_fail(res, KEEL_HTTP_NOT_FOUND, "no such order", NULL);
  if (rc == ORD_REJECTED) return keel_http_fail(res, KEEL_HTTP_CONFLICT, r.reason, NULL);
  if (rc == KEEL_ECONFLICT)
    return keel_http_fail(res, KEEL_HTTP_CONFLICT, "the order kept changing; retry", NULL);
  return keel_http_fail(res, KEEL_HTTP_INTERNAL, keel_strerror(rc), NULL);
}

static json_t *validation(const char *field, const char *reason) {
  return json_pack("[{s:s, s:s}]", "field", field, "reason", reason);
}

/* The OrderPlaced payload from the body, or NULL with the reason in *why. */
static json_t *placed_payload(json_t *body, const char **field, const char **why) {
  const char *customer = json_string_value(json_object_get(body, "customer"));
  json_t *items = json_object_get(body, "items");
  *field = "customer", *why = "must be a string of 1 to 100 bytes";
  if (!customer || !*customer || strlen(customer) > 100) return NULL;
  *field = "items", *why = "must be an array of 1 to 100 items";
  if (!json_is_array(items) || json_array_size(items) < 1 || json_array_size(items) > 100)
    return NULL;
  *why = "each item needs sku (1 to 64 bytes), qty (1..1000) and price_cents (0..10000000)";
  json_t *clean = json_array(); /* the items as stored: only the fields the service knows */
  json_int_t total = 0;
  size_t i;
  json_t *it;
  json_array_foreach(items, i, it) {
    const char *sku = json_string_value(json_object_get(it, "sku"));
    json_t *qty = json_object_get(it, "qty"), *price = json_object_get(it, "price_cents");
    json_int_t q = json_integer_value(qty), p = json_integer_value(price);
    if (!sku || !*sku || strlen(sku) > 64 || !json_is_integer(qty) || !json_is_integer(price) ||
        q < 1 || q > 1000 || p < 0 || p > 10000000) {
      json_decref(clean);
      return NULL;
    }
    json_array_append_new(clean,
                          json_pack("{s:s, s:I, s:I}", "sku", sku, "qty", q, "price_cents", p));
    total += q * p;
  }
  return json_pack("{s:s, s:o, s:I}", "customer", customer, "items", clean, "total_cents", total);
}

static int h_create(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)ud;
  int err;
  json_t *body = keel_http_json(req, &err);
  if (!body) return keel_http_fail(res, KEEL_HTTP_BAD_REQUEST, "Body must be valid JSON", NULL);
  const char *field, *why;
  json_t *placed = json_is_object(body) ? placed_payload(body, &field, &why) : NULL;
  if (!placed)
    return keel_http_fail(res, KEEL_HTTP_VALIDATION, "Invalid order",
                          json_is_object(body) ? validation(field, why) : NULL);
  /* with a key, a retried create names the same order */
  char id[37];
  const char *key = keel_http_header(req, "Idempotency-Key");
  int rc = 0;
  if (key && *key && strlen(key) <= 200) {
    char text[256];
    snprintf(text, sizeof text, "order/%s", key);
    uuid_of(text, id);
  } else {
    rc = random_uuid(id); /* a key too long is refused by run() */
  }
  if (rc) {
    json_decref(placed);
    return keel_http_fail(res, KEEL_HTTP_INTERNAL, keel_strerror(rc), NULL);
  }
  command c = {.kind = "create", .placed = placed};
  rc = run(req, res, id, &c);
  json_decref(placed);
  return rc;
}

static int h_command(keel_http_req *req, keel_http_res *res, const char *kind) {
  command c = {.kind = kind};
  return run(req, res, keel_http_param(req, "id"), &c);
}
static int h_pay(keel_http_req *q, keel_http_res *r, void *ud) {
  (void)ud;
  return h_command(q, r, "pay");
}
static int h_ship(keel_http_req *q, keel_http_res *r, void *ud) {
  (void)ud;
  return h_command(q, r, "ship");
}
static int h_cancel(keel_http_req *q, keel_http_res *r, void *ud) {
  (void)ud;
  return h_command(q, r, "cancel");
}

/* ---- queries ------------------------------------------------------------------------ */

static int h_get(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)ud;
  const char *id = keel_http_param(req, "id");
  void *s = NULL;
  int64_t version = 0;
  int rc = keel_agg_load(es, &orders, id, &s, &version);
  if (rc == KEEL_EINVAL) return keel_http_fail(res, KEEL_HTTP_NOT_FOUND, "no such order", NULL);
  if (rc) return keel_http_fail(res, KEEL_HTTP_INTERNAL, keel_strerror(rc), NULL);
  json_t *body = version ? order_json(id, s) : NULL;
  order_destroy(s, NULL);
  if (!body) return keel_http_fail(res, KEEL_HTTP_NOT_FOUND, "no such order", NULL);
  char etag[32];
  snprintf(etag, sizeof etag, "\"%" PRId64 "\"", version);
  keel_http_set_header(res, "ETag", etag); /* send it back as If-Match */
  return keel_http_reply_json(res, 200, body);
}

static int h_list(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)ud;
  const char *params[] = {keel_http_query_param(req, "status"),
                          keel_http_query_param(req, "customer")};
  keel_es_rows rows = {0};
  int rc = keel_es_query(es,
                         "SELECT id, customer, status, total_cents, version FROM orders_view "
                         "WHERE (CAST($1 AS TEXT) IS NULL OR status = $1) "
                         "AND (CAST($2 AS TEXT) IS NULL OR customer = $2) "
                         "ORDER BY position DESC LIMIT 100",
                         params, 2, &rows);
  if (rc) return keel_http_fail(res, KEEL_HTTP_INTERNAL, keel_strerror(rc), NULL);
  json_t *list = json_array();
  for (size_t i = 0; i < rows.nrows; i++)
    json_array_append_new(
        list,
        json_pack("{s:s, s:s, s:s, s:I, s:I}", "id", keel_es_rows_get(&rows, i, 0), "customer",
                  keel_es_rows_get(&rows, i, 1), "status", keel_es_rows_get(&rows, i, 2),
                  "total_cents", (json_int_t)strtoll(keel_es_rows_get(&rows, i, 3), NULL, 10),
                  "version", (json_int_t)strtoll(keel_es_rows_get(&rows, i, 4), NULL, 10)));
  keel_es_rows_free(&rows);
  return keel_http_reply_json(res, 200, json_pack("{s:o}", "orders", list));
}

static int h_stats(keel_http_req *req, keel_http_res *res, void *ud) {
  (void)req, (void)ud;
  keel_es_rows rows = {0};
  int rc = keel_es_query(es, "SELECT name, value FROM order_stats", NULL, 0, &rows);
  if (rc) return keel_http_fail(res, KEEL_HTTP_INTERNAL, keel_strerror(rc), NULL);
  json_t *by =
      json_pack("{s:i, s:i, s:i, s:i}", "placed", 0, "paid", 0, "shipped", 0, "cancelled", 0);
  json_int_t revenue = 0;
  for (size_t i = 0; i < rows.nrows; i++) {
    const char *name = keel_es_rows_get(&rows, i, 0);
    json_int_t v = strtoll(keel_es_rows_get(&rows, i, 1), NULL, 10);
    if (strcmp(name, "revenue_cents") == 0)
      revenue = v;
    else
      json_object_set_new(by, name, json_integer(v));
  }
  keel_es_rows_free(&rows);
  return keel_http_reply_json(res, 200,
                              json_pack("{s:o, s:I}", "by_status", by, "revenue_cents", revenue));
}

/* ---- the read models: transactional projections --------------------------------- */

static const char *schema[] = {
    "CREATE TABLE IF NOT EXISTS orders_view (id TEXT PRIMARY KEY, customer TEXT NOT NULL, "
    "status TEXT NOT NULL, total_cents BIGINT NOT NULL, version BIGINT NOT NULL, "
    "position BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS orders_view_status ON orders_view (status, position)",
    "CREATE INDEX IF NOT EXISTS orders_view_customer ON orders_view (customer, position)",
    "CREATE TABLE IF NOT EXISTS order_stats (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS notifications_sent (event_id TEXT PRIMARY KEY, "
    "sent_at BIGINT NOT NULL)",
};

static int create_schema(keel_es_tx *tx, void *arg) {
  (void)arg;
  /* instances starting at once take turns (CREATE ... IF NOT EXISTS races on PostgreSQL) */
  int rc = keel_es_tx_lock(tx, "orders schema");
  for (size_t i = 0; !rc && i < sizeof schema / sizeof *schema; i++)
    rc = keel_es_tx_exec(tx, schema[i], NULL, 0, NULL);
  return rc;
}

static int project_view(keel_es_tx *tx, const keel_es_event *ev, void *ud) {
  (void)ud;
  json_t *p = keel_es_event_payload(ev);
  if (!p) return KEEL_EIO;
  const char *id = ev->stream + strlen("order-");
  char version[24], position[24], total[24];
  snprintf(version, sizeof version, "%" PRId64, ev->version);
  snprintf(position, sizeof position, "%" PRId64, ev->position);
  if (strcmp(ev->type, "OrderPlaced") == 0) {
    snprintf(total, sizeof total, "%" JSON_INTEGER_FORMAT,
             json_integer_value(json_object_get(p, "total_cents")));
    return keel_es_tx_exec(tx,
                           "INSERT INTO orders_view (id, customer, status, total_cents, version, "
                           "position) VALUES ($1, $2, 'placed', CAST($3 AS BIGINT), "
                           "CAST($4 AS BIGINT), CAST($5 AS BIGINT)) ON CONFLICT (id) DO NOTHING",
                           (const char *[]){id, str_of(p, "customer"), total, version, position}, 5,
                           NULL);
  }
  const char *status = strcmp(ev->type, "OrderPaid") == 0      ? "paid"
                       : strcmp(ev->type, "OrderShipped") == 0 ? "shipped"
                                                               : "cancelled";
  return keel_es_tx_exec(tx,
                         "UPDATE orders_view SET status = $2, version = CAST($3 AS BIGINT), "
                         "position = CAST($4 AS BIGINT) WHERE id = $1",
                         (const char *[]){id, status, version, position}, 4, NULL);
}

static int bump(keel_es_tx *tx, const char *name, json_int_t delta) {
  char d[24];
  snprintf(d, sizeof d, "%" JSON_INTEGER_FORMAT, delta);
  return keel_es_tx_exec(tx,
                         "INSERT INTO order_stats (name, value) VALUES ($1, CAST($2 AS BIGINT)) "
                         "ON CONFLICT (name) DO UPDATE SET value = order_stats.value + "
                         "excluded.value",
                         (const char *[]){name, d}, 2, NULL);
}

/* counts per status (an order moves from one to the next) and revenue */
static int project_stats(keel_es_tx *tx, const keel_es_event *ev, void *ud) {
  (void)ud;
  json_t *p = keel_es_event_payload(ev);
  if (!p) return KEEL_EIO;
  if (strcmp(ev->type, "OrderPlaced") == 0) return bump(tx, "placed", 1);
  if (strcmp(ev->type, "OrderPaid") == 0) {
    int rc = bump(tx, "placed", -1);
    if (!rc) rc = bump(tx, "paid", 1);
    if (!rc) rc = bump(tx, "revenue_cents", json_integer_value(json_object_get(p, "amount_cents")));
    return rc;
  }
  if (strcmp(ev->type, "OrderShipped") == 0) {
    int rc = bump(tx, "paid", -1);
    return rc ? rc : bump(tx, "shipped", 1);
  }
  int rc = bump(tx, str_of(p, "from"), -1); /* OrderCancelled */
  if (!rc) rc = bump(tx, "cancelled", 1);
  if (!rc) rc = bump(tx, "revenue_cents", -json_integer_value(json_object_get(p, "refund_cents")));
  return rc;
}

/* ---- the notifier: a side effect, at least once ---------------------------------- */

static int mark_sent(keel_es_tx *tx, void *arg) {
  char now[24];
  snprintf(now, sizeof now, "%" PRId64, (int64_t)time(NULL) * 1000);
  return keel_es_tx_exec(tx,
                         "INSERT INTO notifications_sent (event_id, sent_at) VALUES ($1, "
                         "CAST($2 AS BIGINT)) ON CONFLICT (event_id) DO NOTHING",
                         (const char *[]){arg, now}, 2, NULL);
}

static int notify(const keel_es_event *ev, void *ud) {
  (void)ud;
  json_t *meta = keel_es_event_metadata(ev);
  /* the request that caused the event: its id on every line logged here */
  keel_log_context_set(KEEL_STR("requestId", meta ? str_of(meta, "correlation_id") : ""),
                       KEEL_STR("eventId", ev->id));
  keel_es_rows rows = {0};
  int rc = keel_es_query(es, "SELECT 1 FROM notifications_sent WHERE event_id = $1",
                         (const char *[]){ev->id}, 1, &rows);
  size_t seen = rows.nrows;
  keel_es_rows_free(&rows);
  if (rc) return rc; /* retried with backoff */
  if (seen) {
    keel_log_info(NULL, "notification already sent, skipped", KEEL_STR("orderId", ev->stream + 6));
    return 0;
  }
  keel_log_info(NULL, "email sent", KEEL_STR("orderId", ev->stream + 6),
                KEEL_STR("event", ev->type));
  return keel_es_transact(es, NULL, 0, NULL, NULL, mark_sent, (void *)ev->id);
}

/* ---- the service ------------------------------------------------------------------ */

static const char *const mailed[] = {"OrderPlaced", "OrderShipped", "OrderCancelled", NULL};

static keel_sub_opts subs[] = {
    {.name = "orders_view", .project = project_view, .filter = {.category = "order"}},
    {.name = "order_stats", .project = project_stats, .filter = {.category = "order"}},
    {.name = "notifier", .handle = notify, .filter = {.category = "order", .types = mailed}},
};

static const char *const checks[] = {"eventstore", "sub.orders_view", "sub.order_stats",
                                     "sub.notifier"};

/* Opens the store, makes the read models' tables, starts the subscriptions
 * as children of the root (so they stop within the drain, before the store
 * closes) and registers their health checks. */
static int orders_start(void *c, keel_pid_t root) {
  const config *conf = c;
  int rc = keel_es_open(
      &(keel_es_opts){.url = conf->database_url,
                       .session_url = conf->database_session_url,
                       .metrics = keel_service_metrics()},
      &es);
  if (!rc) rc = keel_es_transact(es, NULL, 0, NULL, NULL, create_schema, NULL);
  for (size_t i = 0; !rc && i < sizeof subs / sizeof *subs; i++) {
    subs[i].es = es;
    subs[i].partitions = (int)conf->partitions;
    subs[i].metrics = keel_service_metrics();
    keel_sup_child_spec spec = keel_sub_child(&subs[i]);
    rc = keel_sup_start_child(root, &spec, NULL);
  }
  if (!rc) rc = keel_es_health_register(es, NULL);
  /* not ready while the read model replays: lists would be stale */
  if (!rc)
    rc = keel_sub_health_register("orders_view", &(keel_sub_health_opts){.hold_readiness = true});
  if (!rc) rc = keel_sub_health_register("order_stats", NULL);
  if (!rc) rc = keel_sub_health_register("notifier", NULL);
  if (rc) keel_log_error(NULL, "orders failed to start", KEEL_STR("error", keel_strerror(rc)));
  return rc;
}

static void orders_stop(void *c) {
  (void)c;
  for (size_t i = 0; i < sizeof checks / sizeof *checks; i++)
    keel_health_unregister(checks[i]);
  keel_es_close(es);
  es = NULL;
}

/* The subscriptions' admin endpoint on the admin port: the status board,
 * the dead letters, retry and resolve (keel_sub_admin_routes). */
static int orders_admin(void *c, keel_http_router *admin) {
  (void)c;
  /* ADMIN_TOKEN is keel's own setting (keel_service_main guards every admin
   * route with it too); the subscriptions' routes check it as well */
  const char *token = keel_service_settings()->admin_token;
  static keel_sub_admin_opts ao;
  ao = (keel_sub_admin_opts){.es = es, .token = token && token[0] ? token : NULL};
  return keel_sub_admin_routes(admin, &ao);
}

static const keel_service_route routes[] = {{"POST", "/orders", h_create},
                                            {"GET", "/orders", h_list},
                                            {"GET", "/orders/stats", h_stats},
                                            {"GET", "/orders/:id", h_get},
                                            {"POST", "/orders/:id/pay", h_pay},
                                            {"POST", "/orders/:id/ship", h_ship},
                                            {"POST", "/orders/:id/cancel", h_cancel},
                                            {0}};

int main(void) {
  return keel_service_main(&(keel_service){.name = "orders",
                                           .version = VERSION,
                                           KEEL_SERVICE_CONFIG(fields, cfg),
                                           .tree = {.intensity = 10, .period_ms = 10000},
                                           .routes = routes,
                                           .start = orders_start,
                                           .stop = orders_stop,
                                           .admin_routes = orders_admin});
}
