// http_client_fetch.js - the anchor of bench/http/client_run.sh: Node's
// built-in fetch (undici) doing what bench-http-client does: CONNECTIONS
// (default 50) concurrent loops of GET URL over keep-alive for DURATION_MS
// (default 10000) after a 1 s warm-up, each body read whole and its status
// checked. No packages needed. With CLIENT=http it uses node:http's get with
// a keep-alive Agent instead (the faster, older Node client: a second anchor).
// Usage: node http_client_fetch.js URL
// Output: {"bench":"http_client_fetch_rps","unit":"req/s","value":N}
//   (CLIENT=http: "http_client_node_http_rps")
'use strict';

const http = require('node:http');

const url = process.argv[2];
const conns = Number(process.env.CONNECTIONS || 50);
const durationMs = Number(process.env.DURATION_MS || 10000);
let done = 0;
let bad = 0;
let stop = false;
const useHttp = process.env.CLIENT === 'http';
const agent = new http.Agent({ keepAlive: true, maxSockets: conns });

function httpGet() {
  return new Promise((resolve, reject) => {
    http
      .get(url, { agent }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode, body }));
        res.on('error', reject);
      })
      .on('error', reject);
  });
}

async function worker() {
  while (!stop) {
    try {
      let status, body;
      if (useHttp) {
        ({ status, body } = await httpGet());
      } else {
        const res = await fetch(url);
        status = res.status;
        body = await res.text();
      }
      if (status === 200 && body.length > 0) done++;
      else bad++;
    } catch (e) {
      bad++;
    }
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

(async () => {
  const workers = [];
  for (let i = 0; i < conns; i++) workers.push(worker());
  await sleep(1000);
  const d0 = done;
  const t0 = process.hrtime.bigint();
  await sleep(durationMs);
  const d1 = done;
  const t1 = process.hrtime.bigint();
  stop = true;
  await Promise.all(workers);
  if (bad) console.error(`http_client_fetch: ${bad} failed requests`);
  agent.destroy();
  const secs = Number(t1 - t0) / 1e9;
  const name = useHttp ? 'http_client_node_http_rps' : 'http_client_fetch_rps';
  console.log(JSON.stringify({ bench: name, unit: 'req/s', value: Math.round((d1 - d0) / secs) }));
})();
