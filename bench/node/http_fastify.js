// http_fastify.js - the HTTP stack a Node.js user would pick instead of keel,
// for bench/http/run.sh: Fastify 5 serving GET /api/hello -> {"hello":"world"}
// through the same middleware keel's default chain runs:
//
//   request ids   X-Request-Id taken when well-formed (1..128 chars of
//                 [A-Za-z0-9._:-]), else a random UUID; returned in X-Request-Id
//                 and bound to the request's child logger (req.log)
//   access log    one pino line per request (method, url, status, duration,
//                 request id), written asynchronously to the file LOG_FILE
//                 (Fastify's own two lines per request are turned off so both
//                 sides write one line per request)
//   metrics       prom-client: http_requests_total (counter) and
//                 http_request_duration_seconds (histogram) by method, route
//                 and status, plus the default process metrics; GET /metrics
//   rate limit    @fastify/rate-limit, per client IP, max too high to trigger
//   security      @fastify/helmet with its defaults
//   CORS          @fastify/cors with an origin allow-list
//
// Environment: PORT (default 3000), HOST (default 127.0.0.1), LOG_FILE
// (default /dev/null). Prints "listening <port>" on stdout once it listens.
// Modules are found through NODE_PATH (bench/http/run.sh installs them into
// the build directory from bench/node/package-lock.json).
'use strict';

const crypto = require('node:crypto');
const fastify = require('fastify');
const pino = require('pino');
const client = require('prom-client');

const port = Number(process.env.PORT || 3000);
const host = process.env.HOST || '127.0.0.1';
const logFile = process.env.LOG_FILE || '/dev/null';

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

const logger = pino(
  { level: 'info', base: { service: 'bench-fastify' } },
  pino.destination({ dest: logFile, sync: false, mkdir: true }),
);

// Fastify's own "incoming request" / "request completed" lines are turned
// off (LogController from 5.12 on; the older top-level option before).
const quiet = fastify.LogController
  ? { logController: new fastify.LogController({ disableRequestLogging: true }) }
  : { disableRequestLogging: true };

const app = fastify({
  loggerInstance: logger,
  ...quiet,
  requestIdHeader: false,
  genReqId(req) {
    const given = req.headers['x-request-id'];
    return typeof given === 'string' && REQUEST_ID.test(given) ? given : crypto.randomUUID();
  },
});

// ---- metrics ---------------------------------------------------------------
const registry = new client.Registry();
client.collectDefaultMetrics({ register: registry });
const requests = new client.Counter({
  name: 'http_requests_total',
  help: 'HTTP requests served.',
  labelNames: ['method', 'route', 'status_code'],
  registers: [registry],
});
const duration = new client.Histogram({
  name: 'http_request_duration_seconds',
  help: 'HTTP request duration in seconds.',
  labelNames: ['method', 'route', 'status_code'],
  buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
  registers: [registry],
});

app.addHook('onRequest', async (req, reply) => {
  reply.header('X-Request-Id', req.id);
});

app.addHook('onResponse', async (req, reply) => {
  const route = req.routeOptions.url || 'unmatched';
  const labels = { method: req.method, route, status_code: String(reply.statusCode) };
  const seconds = reply.elapsedTime / 1000;
  requests.inc(labels);
  duration.observe(labels, seconds);
  req.log.info(
    {
      method: req.method,
      url: req.url,
      status: reply.statusCode,
      durationMs: reply.elapsedTime,
      ip: req.ip,
    },
    'request completed',
  );
});

async function main() {
  await app.register(require('@fastify/helmet'));
  await app.register(require('@fastify/cors'), {
    origin: ['https://app.example.com', 'http://localhost:3000'],
    credentials: true,
    maxAge: 600,
  });
  await app.register(require('@fastify/rate-limit'), {
    max: 1_000_000_000,
    timeWindow: 60_000,
    allowList: (req) => req.url.startsWith('/health') || req.url.startsWith('/metrics'),
  });

  app.get('/api/hello', async () => ({ hello: 'world' }));
  app.get('/metrics', async (req, reply) => {
    reply.type(registry.contentType);
    return registry.metrics();
  });

  await app.listen({ port, host });
  process.stdout.write(`listening ${app.server.address().port}\n`);
}

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.once(sig, () => {
    app.close().finally(() => {
      logger.flush();
      process.exit(0);
    });
  });
}

main().catch((err) => {
  process.stderr.write(`http_fastify: ${err.stack || err}\n`);
  process.exit(1);
});
