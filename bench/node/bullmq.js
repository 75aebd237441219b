// bullmq.js - the anchor of bench/jobs/run.sh: bench_jobs' workloads on
// BullMQ against a Redis the caller started (loopback, port given).
//
// Throughput: a Worker of concurrency CONC (keel's queue concurrency) runs a
// no-op processor while 8 async enqueuers add 500 jobs each (4000), every
// add awaited in turn, as bench_jobs' 8 keel processes do; timed from the
// first add to the 4000th 'completed' event. Pickup (the steady mode): 500
// jobs added one at a time 2 ms apart; the processor records now minus the
// time taken just before the add call (carried in the job's data), as
// bench_jobs does. Jobs are BullMQ's defaults (kept after completion, as
// keel keeps its completed rows until retention).
//
// Output, one JSON line per figure, prefixed with PREFIX (default bullmq):
//   {"bench":"PREFIX_throughput","unit":"jobs/s","value":N}
//   {"bench":"PREFIX_steady","unit":"jobs/s","value":N}
//   {"bench":"PREFIX_pickup_p50","unit":"ms","value":N}   (and _p99)
//
// Usage: node bullmq.js PORT [PREFIX] [CONC]   (NODE_PATH: bullmq's node_modules)
'use strict';
const {Queue, Worker} = require('bullmq');

const port = Number(process.argv[2]);
const prefix = process.argv[3] || 'bullmq';
const conc = Number(process.argv[4] || 20);
const ENQUEUERS = 8, PER = 500, PICKUP_N = 500;
const connection = {
  host: '127.0.0.1',
  port,
  maxRetriesPerRequest: null
};

const nowNs = () => process.hrtime.bigint();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const emit = (bench, unit, v) =>
    console.log(JSON.stringify({bench: `${prefix}_${bench}`, unit, value: Number(v.toFixed(3))}));

// Resolves when `n` jobs have completed on a fresh queue `name`.
function startWorker(name, n, onStart) {
  let done = 0, resolve;
  const finished = new Promise((r) => (resolve = r));
  const worker = new Worker(name, async (job) => {
    if (onStart) onStart(job);
  }, {connection, concurrency: conc});
  worker.on('completed', () => {
    if (++done === n) resolve();
  });
  worker.on('error', (e) => { console.error('bullmq: worker:', e.message); });
  return {worker, finished};
}

async function throughput() {
  const name = `tp-${process.pid}`;
  const queue = new Queue(name, {connection});
  const {worker, finished} = startWorker(name, ENQUEUERS * PER);
  await worker.waitUntilReady();
  await queue.waitUntilReady();
  const t0 = nowNs();
  const enq = async () => {
    for (let i = 0; i < PER; i++)
      await queue.add('noop', {});
  };
  await Promise.all(Array.from({length: ENQUEUERS}, enq));
  await finished;
  const s = Number(nowNs() - t0) / 1e9;
  await worker.close();
  await queue.obliterate({force: true});
  await queue.close();
  return (ENQUEUERS * PER) / s;
}

async function pickup() {
  const name = `pk-${process.pid}`;
  const queue = new Queue(name, {connection});
  const lat = [];
  const {worker, finished} = startWorker(
      name, PICKUP_N, (job) => { lat.push(Number(nowNs() - BigInt(job.data.t)) / 1e6); });
  await worker.waitUntilReady();
  await queue.waitUntilReady();
  const t0 = nowNs();
  for (let i = 0; i < PICKUP_N; i++) {
    await queue.add('noop', {t: nowNs().toString()});
    await sleep(2);
  }
  await finished;
  const s = Number(nowNs() - t0) / 1e9;
  await worker.close();
  await queue.obliterate({force: true});
  await queue.close();
  lat.sort((a, b) => a - b);
  return {
    steady: PICKUP_N / s,
    p50 : lat[Math.floor(PICKUP_N / 2)],
    p99 : lat[Math.floor((PICKUP_N * 99) / 100)]
  };
}

(async () => {
  const tp = await throughput();
  const p = await pickup();
  emit('throughput', 'jobs/s', tp);
  emit('steady', 'jobs/s', p.steady);
  emit('pickup_p50', 'ms', p.p50);
  emit('pickup_p99', 'ms', p.p99);
  process.exit(0);
})().catch((e) => {
  console.error('bullmq:', e);
  process.exit(1);
});
