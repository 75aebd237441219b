// bench_pino.js - pino on the same workloads as bench/bench_log.c.
//
// log_static: a short message; log_5_fields: a message and five fields of
// mixed types (string, int, double, bool, string). Each run logs N lines to a
// file through pino.destination (sonic-boom, buffered: minLength 4096), by
// default in pino's own line shape (epoch ms, numeric level), or like
// keel's lines when PINO_ISO=1; the clock stops when the destination has
// closed, that is when the last byte has been written. Each workload runs
// RUNS times (in one node process, after a warm-up run) and prints the
// median as one JSON line:
// {"bench": "pino_log_static", "unit": "lines/s", "value": N}.
// Usage: node bench_pino.js [N] [RUNS]   (NODE_PATH must find pino)
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const pino = require('pino');

const N = Number(process.argv[2] || 2000000);
const RUNS = Number(process.argv[3] || 5);
// PINO_SYNC=0: sonic-boom's asynchronous mode; the default, buffered
// writeSync (minLength 4096), was the faster of the two here.
const SYNC = process.env.PINO_SYNC !== '0';
const ISO = process.env.PINO_ISO === '1';

function once(name, body, n) {
  return new Promise((resolve) => {
    const file = path.join(os.tmpdir(), `pino_bench_${process.pid}_${name}.log`);
    try { fs.unlinkSync(file); } catch (e) { /* absent */ }
    const dest = pino.destination({ dest: file, sync: SYNC, minLength: 4096 });
    // ISO=1: the same line shape as keel's (ISO time, level label). The
    // default is pino's fastest setting (epoch time, numeric level), the
    // conservative baseline.
    const opts = ISO ? {
      base: { service: 'bench' },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    } : { base: { service: 'bench' } };
    const logger = pino(opts, dest);
    const t0 = process.hrtime.bigint();
    body(logger, n);
    dest.on('close', () => {
      const t1 = process.hrtime.bigint();
      const lines = fs.readFileSync(file, 'utf8').split('\n').length - 1;
      fs.unlinkSync(file);
      if (lines !== n) throw new Error(`${name}: ${lines} lines written, ${n} logged`);
      resolve(n / (Number(t1 - t0) / 1e9));
    });
    dest.end();
  });
}

const workloads = {
  log_static(logger, n) {
    for (let i = 0; i < n; i++) logger.info('hello world');
  },
  log_5_fields(logger, n) {
    for (let i = 0; i < n; i++) {
      logger.info({ user: 'alice', orderId: i, amount: 12.5, paid: true, region: 'eu-west-1' },
        'order placed');
    }
  },
};

(async () => {
  for (const [name, body] of Object.entries(workloads)) {
    await once(name, body, Math.min(N, 200000)); // warm-up
    const v = [];
    for (let r = 0; r < RUNS; r++) {
      v.push(await once(name, body, N));
      process.stderr.write(`  pino_${name} run ${r + 1}: ${v[r].toFixed(1)} lines/s\n`);
    }
    v.sort((a, b) => a - b);
    console.log(JSON.stringify({ bench: `pino_${name}`, unit: 'lines/s', value: Math.round(v[RUNS >> 1] * 10) / 10 }));
  }
})();
