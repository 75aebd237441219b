// The dashboard's first paint in headless Chromium (Debian's), against an
// anchor measured in the same run: the same browser opening a trivial
// document from the same admin port (/health/live, JSON shown as text).
// Alternating rounds, a fresh page each; medians. One JSON line per figure.
//   node first_paint.mjs ADMIN_URL TOKEN [ROUNDS]
import { createRequire } from "node:module";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const require = createRequire(new URL("../../tests/browser/package.json", import.meta.url));
const { chromium } = require("playwright-core");
const [url, token, roundsArg] = process.argv.slice(2);
const rounds = Number(roundsArg || 7);
const profile = mkdtempSync(join(tmpdir(), "keel-paint-"));
const ctx = await chromium.launchPersistentContext(profile, {
  executablePath: "/usr/bin/chromium", headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});

async function paint(path, withToken) {
  const page = await ctx.newPage();
  if (withToken) await page.addInitScript((t) => sessionStorage.setItem("keelToken", t), token);
  await page.goto(url + path, { waitUntil: "load" });
  const fcp = await page.evaluate(() => new Promise((resolve) => {
    const got = performance.getEntriesByName("first-contentful-paint")[0];
    if (got) return resolve(got.startTime);
    new PerformanceObserver((l) => resolve(l.getEntries()[0].startTime)).observe({ type: "paint", buffered: true });
  }));
  await page.close();
  return fcp;
}

const med = (v) => { const s = [...v].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]; };
const dash = [], anchor = [];
await paint("/dashboard", true); // warm the browser once
for (let i = 0; i < rounds; i++) {
  anchor.push(await paint("/health/live", false));
  dash.push(await paint("/dashboard", true));
}
await ctx.close();
rmSync(profile, { recursive: true, force: true });
const d = med(dash), a = med(anchor);
console.log(JSON.stringify({ bench: "dashboard_first_paint", unit: "ms", value: Number(d.toFixed(1)) }));
console.log(JSON.stringify({ bench: "dashboard_first_paint_anchor_plain_document", unit: "ms", value: Number(a.toFixed(1)) }));
console.log(JSON.stringify({ bench: "dashboard_first_paint_ratio", unit: "x", value: Number((d / a).toFixed(2)) }));
