/* keel dashboard: one page over the admin API (docs/dashboard.md).
 *
 * Everything the page shows comes from the admin port: one event stream
 * (/admin/events, read with fetch so the bearer token can travel as a
 * header: EventSource cannot send one) for stats, process and restart
 * events, alerts and log lines, plus periodic reads for what the stream does
 * not carry (the tree, processes, HTTP, alerts, health, panels). Text from
 * the node is only ever set as textContent, never as HTML. The token lives
 * in memory and sessionStorage, never in a cookie or the URL. */
"use strict";

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("keelToken") || "";
let actionsOn = true;
let authFailed = false;
let procSort = "mailbox";
let selectedPid = null;
let lastHttp = null;
const LOG_MAX = 500;
const LEVELS = ["trace", "debug", "info", "warn", "error", "fatal"];

/* ---- small DOM helpers ------------------------------------------------- */

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const kid of kids) if (kid !== null && kid !== undefined) e.append(kid);
  return e;
}

function fmtBytes(n) {
  if (n === null || n === undefined) return "-";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}

function fmtMs(ms) {
  if (ms < 1000) return ms + " ms";
  const s = Math.floor(ms / 1000);
  if (s < 120) return s + " s";
  const m = Math.floor(s / 60);
  if (m < 120) return m + " min";
  const h = Math.floor(m / 60);
  return h < 48 ? h + " h " + (m % 60) + " min" : Math.floor(h / 24) + " d " + (h % 24) + " h";
}

/* set through the CSSOM: a style attribute would be inline style, which the
 * CSP refuses */
function bar(fraction) {
  const b = el("span", {class: "bar"});
  b.style.width = Math.max(1, Math.round(fraction * 200)) + "px";
  return b;
}

function card(label, value, cls) {
  return el("div", {class: "card"}, el("b", {text: String(value), class: cls || ""}), el("span", {text: label}));
}

function show(id, text) {
  const b = $(id);
  b.textContent = text || "";
  b.hidden = !text;
}

function notice(text) {
  show("notice", text);
  clearTimeout(notice.t);
  notice.t = setTimeout(() => show("notice", ""), 6000);
}

/* ---- the API ------------------------------------------------------------ */

function headers(extra) {
  const h = Object.assign({Accept: "application/json"}, extra || {});
  if (token) h.Authorization = "Bearer " + token;
  return h;
}

function authProblem(status, msg) {
  authFailed = true;
  show("auth", (token ? "The admin token was refused (" + status + "): " : "This node needs an admin token (" + status + "): ") + msg);
}

async function api(path, method, body) {
  const opt = {method: method || "GET", headers: headers(body ? {"Content-Type": "application/json"} : null), cache: "no-store"};
  if (body) opt.body = JSON.stringify(body);
  const r = await fetch(path, opt);
  let j = null;
  try { j = await r.json(); } catch (e) { j = null; }
  if (r.status === 401) authProblem(401, (j && j.error && j.error.message) || "unauthorized");
  else if (r.ok && authFailed && method === undefined) { authFailed = false; show("auth", ""); }
  if (!r.ok) {
    const err = new Error((j && j.error && j.error.message) || r.statusText);
    err.status = r.status;
    throw err;
  }
  return j;
}

async function action(path, body, what) {
  try {
    const j = await api(path, "POST", body || {});
    notice(what + ": done");
    return j;
  } catch (e) {
    if (e.status === 403) setActions(false);
    notice(what + " failed: " + e.message);
    return null;
  }
}

function setActions(on) {
  actionsOn = on;
  document.body.classList.toggle("no-actions", !on);
  $("actionsoff").hidden = on;
}

/* ---- overview ----------------------------------------------------------- */

let health = "unknown";

function renderStats(s) {
  const ov = $("ov");
  ov.replaceChildren(
    card("uptime", fmtMs(s.uptime_ms)),
    card("processes", s.processes),
    card("messages/s", Math.round(s.messages_per_sec)),
    card("restarts (1 min)", s.restarts + " (" + s.restarts_last_min + ")", s.restarts_last_min ? "st-warning" : ""),
    card("memory", fmtBytes(s.memory.rss_bytes) + " / " + fmtBytes(s.memory.effective_limit_bytes)
      + (s.memory.limit_bytes ? "" : " (host)")),
    card("utilisation", (s.utilisation * 100).toFixed(1) + " %"),
    card("health", health, "st-" + health));
  $("scheds").replaceChildren(...s.schedulers.map((c) => el("div", {class: "sched"},
    el("span", {text: "scheduler " + c.id}),
    bar(c.utilisation),
    el("span", {text: (c.utilisation * 100).toFixed(1) + " %  queue " + c.run_queue + (c.stuck ? "  STUCK" : ""),
      class: c.stuck ? "st-fail" : "mut"}))));
}

async function loadOverview() {
  try {
    const o = await api("/admin/overview");
    $("svc").textContent = o.service;
    $("ver").textContent = o.version;
    document.title = o.service + " - keel dashboard";
    health = o.health;
    setActions(o.actions);
    $("nodelevel").value = o.log_level;
    renderStats(o);
  } catch (e) { /* shown by api() */ }
}

/* ---- the supervision tree ----------------------------------------------- */

const flashes = new Map(); /* "supPid|childId" -> reason, shown on the next render */

function childRow(sup, c) {
  const key = sup.pid + "|" + c.id;
  const kids = [el("span", {text: c.id, class: "child-id"}), el("span", {class: "mut", text: c.pid || "stopped"}),
    el("span", {class: "mut", text: c.type + ", " + c.restart + (c.restarts ? ", " + c.restarts + " restarts" : "")})];
  if (c.type === "worker" && c.pid) {
    kids.push(el("button", {class: "small danger action", type: "button", "data-kill": c.pid, text: "kill",
      onclick: () => killPid(c.pid, "killed from the dashboard")}));
  }
  if (c.pid) {
    kids.push(el("button", {class: "small action", type: "button", text: "stop",
      onclick: () => action("/admin/supervisors/" + encodeURIComponent(sup.pid) + "/children/" + encodeURIComponent(c.id) + "/terminate", null, "stop " + c.id).then(loadTree)}));
  }
  kids.push(el("button", {class: "small action", type: "button", text: c.pid ? "restart" : "start",
    onclick: () => action("/admin/supervisors/" + encodeURIComponent(sup.pid) + "/children/" + encodeURIComponent(c.id) + "/restart", null, "restart " + c.id).then(loadTree)}));
  const li = el("li", {"data-sup": sup.pid, "data-child": c.id}, el("span", {class: "child"}, ...kids));
  if (flashes.has(key)) {
    li.classList.add("flash");
    li.append(el("span", {class: "reason", text: " restarted: " + flashes.get(key)}));
  }
  if (c.supervisor) li.append(supTree(c.supervisor));
  return li;
}

function supTree(sup) {
  const title = el("summary", {},
    el("span", {class: "sup-name", text: sup.name || sup.pid}), " ",
    el("span", {class: "mut", text: sup.pid + "  " + (sup.strategy || "?") + "  " + sup.restarts + " restarts"}),
    sup.status !== "ok" ? el("span", {class: "unresponsive st-" + sup.status, text: "  " + sup.status}) : null);
  const d = el("details", {open: "", "data-pid": sup.pid}, title,
    el("ul", {class: "tree"}, ...(sup.children || []).map((c) => childRow(sup, c))));
  return el("ul", {class: "tree"}, el("li", {}, d));
}

async function loadTree() {
  try {
    const t = await api("/admin/tree");
    const closed = new Set([...document.querySelectorAll("#treeview details:not([open])")].map((d) => d.dataset.pid));
    $("treeview").replaceChildren(...t.tree.map(supTree));
    for (const d of document.querySelectorAll("#treeview details")) if (closed.has(d.dataset.pid)) d.open = false;
    if (!t.tree.length) $("treeview").append(el("p", {class: "mut", text: "no supervisors"}));
  } catch (e) { /* shown */ }
}

let treeTimer = null;
function onRestart(ev) {
  const reason = ev.reason_text || ev.reason;
  flashes.set(ev.supervisor + "|" + ev.child_id, reason + (ev.kind === "intensity_exceeded" ? " (gave up)" : ""));
  setTimeout(() => flashes.delete(ev.supervisor + "|" + ev.child_id), 5000);
  clearTimeout(treeTimer);
  treeTimer = setTimeout(loadTree, 100);
  notice("restart: " + (ev.sup_name || ev.supervisor) + " / " + ev.child_id + " (" + reason + ")");
}

async function killPid(pid, reason) {
  const j = await action("/admin/processes/" + encodeURIComponent(pid) + "/kill", {reason: reason}, "kill " + pid);
  if (j) { loadProcs(); }
}

/* ---- processes ----------------------------------------------------------- */

async function loadProcs() {
  const q = new URLSearchParams({sort: procSort, limit: $("plimit").value});
  if ($("pfilter").value) q.set("name", $("pfilter").value);
  try {
    const j = await api("/admin/processes?" + q);
    $("ptable").tBodies[0].replaceChildren(...j.processes.map((p) => el("tr", {"data-pid": p.pid, onclick: () => loadProc(p.pid)},
      el("td", {text: p.pid}), el("td", {text: p.registered || p.name || ""}), el("td", {text: p.status + (p.waiting_for ? " (" + p.waiting_for + ")" : "")}),
      el("td", {text: p.mailbox_len}), el("td", {text: fmtBytes(p.memory)}), el("td", {text: p.messages_handled}), el("td", {text: fmtMs(p.age_ms)}))));
    for (const th of document.querySelectorAll("#ptable th[data-sort]")) th.classList.toggle("sorted", th.dataset.sort === procSort);
  } catch (e) { /* shown */ }
  if (selectedPid) loadProc(selectedPid, true);
}

/* A process's links or monitors: each pid a link to its own page, with its
 * registered name or label; null when the node could not read the set. */
function pidList(list, total) {
  if (list === null || list === undefined) return [document.createTextNode("unknown")];
  if (!list.length) return [document.createTextNode("-")];
  const out = [];
  for (const q of list) {
    const who = q.registered || q.name;
    out.push(el("a", {href: "#", class: "pidlink", "data-pid": q.pid, text: q.pid + (who ? " " + who : ""),
      onclick: (e) => { e.preventDefault(); loadProc(q.pid); }}), " ");
  }
  if (total > list.length) out.push(el("span", {class: "mut", text: "(" + list.length + " of " + total + ")"}));
  return out;
}

async function loadProc(pid, quiet) {
  selectedPid = pid;
  const box = $("pdetail");
  try {
    const p = await api("/admin/processes/" + encodeURIComponent(pid));
    const dl = el("dl");
    const fields = [["pid", p.pid], ["name", p.name], ["registered", p.registered], ["status", p.status],
      ["waiting for", p.waiting_for], ["scheduler", p.scheduler], ["mailbox", p.mailbox_len],
      ["messages in / handled", p.messages_in + " / " + p.messages_handled], ["memory", fmtBytes(p.memory)],
      ["age", fmtMs(p.age_ms)], ["parent", p.parent], ["supervisor", p.supervisor], ["child id", p.child_id]];
    if (p.strategy) fields.push(["strategy", p.strategy], ["children", (p.children || []).map((c) => c.id + " " + (c.pid || "-")).join(", ")]);
    for (const [k, v] of fields) dl.append(el("dt", {text: k}), el("dd", {text: v === null || v === undefined || v === "" ? "-" : String(v)}));
    for (const [k, key] of [["links", "links"], ["monitors", "monitors"], ["monitored by", "monitored_by"]])
      dl.append(el("dt", {text: k}), el("dd", {"data-set": key}, ...pidList(p[key], p[key + "_total"])));
    const reason = el("input", {placeholder: "reason (kill, shutdown or a text)", value: "killed from the dashboard"});
    box.replaceChildren(el("h3", {text: "Process " + p.pid}), dl,
      el("div", {class: "action"}, reason, " ", el("button", {class: "danger", type: "button", text: "kill",
        onclick: () => killPid(p.pid, reason.value || "kill")})),
      el("button", {type: "button", class: "small", text: "close", onclick: () => { selectedPid = null; box.hidden = true; }}));
    box.hidden = false;
  } catch (e) {
    if (e.status === 404) {
      box.replaceChildren(el("p", {class: "mut", text: "process " + pid + " is gone"}));
      selectedPid = null;
    } else if (!quiet) box.replaceChildren(el("p", {text: e.message}));
  }
}

/* ---- HTTP ------------------------------------------------------------------ */

async function loadHttp() {
  let h;
  try { h = await api("/admin/http"); } catch (e) { $("httpsum").replaceChildren(el("span", {class: "mut", text: e.message})); return; }
  const prev = lastHttp;
  const dt = prev ? (h.time_ms - prev.time_ms) / 1000 : 0;
  const rate = (now, before) => (dt > 0 && before !== undefined ? ((now - before) / dt).toFixed(1) : "-");
  const before = new Map(prev ? prev.routes.map((r) => [r.method + " " + r.route, r.requests]) : []);
  $("httpsum").replaceChildren(card("req/s", rate(h.requests, prev && prev.requests)), card("in flight", h.in_flight),
    card("rate limited", h.rate_limited, h.rate_limited ? "st-warning" : ""), card("requests", h.requests));
  $("htable").tBodies[0].replaceChildren(...h.routes.map((r) => el("tr", {},
    el("td", {text: r.method + " " + r.route}), el("td", {text: rate(r.requests, before.get(r.method + " " + r.route))}),
    el("td", {text: r.requests}), el("td", {text: r.p50_ms === null ? "-" : r.p50_ms.toFixed(2)}),
    el("td", {text: r.p99_ms === null ? "-" : r.p99_ms.toFixed(2)}),
    el("td", {text: Object.entries(r.status).map(([k, v]) => k + ":" + v).join(" ")}))));
  lastHttp = h;
}

/* ---- alerts and health ------------------------------------------------------ */

async function loadAlerts() {
  try {
    const a = await api("/admin/alerts");
    const list = [];
    list.push(el("h3", {text: a.active.length ? a.active.length + " active" : "no active alert", class: a.active.length ? "st-fail" : "st-ok"}));
    for (const x of a.active) list.push(el("div", {class: "st-fail", text: x.type + ": " + x.message}));
    if (a.recent.length) list.push(el("h3", {text: "recent"}));
    for (const x of a.recent.slice(0, 20))
      list.push(el("div", {class: x.event === "resolved" ? "st-ok" : "st-warning",
        text: new Date(x.time_ms).toLocaleTimeString() + " " + x.event + " " + x.type + ": " + x.message}));
    $("alertlist").replaceChildren(...list);
  } catch (e) { /* shown */ }
}

async function loadHealth() {
  try {
    const r = await fetch("/health", {cache: "no-store"});
    const h = await r.json();
    health = h.status || health;
    $("hctable").tBodies[0].replaceChildren(...Object.entries(h.checks || {}).map(([name, c]) => el("tr", {},
      el("td", {text: name}), el("td", {text: c.status, class: "st-" + c.status}),
      el("td", {text: c.duration_ms === undefined ? "-" : Number(c.duration_ms).toFixed(1)}), el("td", {text: c.message || ""}))));
  } catch (e) { /* the node may be restarting */ }
}

/* ---- the log tail ------------------------------------------------------------- */

function logLine(l) {
  const min = LEVELS.indexOf($("lfilter").value);
  const li = el("li", {class: "lv-" + l.level, "data-level": l.level, text: l.line});
  li.hidden = LEVELS.indexOf(l.level) < min;
  const ol = $("logtail");
  const atEnd = ol.scrollTop + ol.clientHeight >= ol.scrollHeight - 20;
  ol.append(li);
  while (ol.children.length > LOG_MAX) ol.firstChild.remove();
  if (atEnd) ol.scrollTop = ol.scrollHeight;
}

function refilterLogs() {
  const min = LEVELS.indexOf($("lfilter").value);
  for (const li of $("logtail").children) li.hidden = LEVELS.indexOf(li.dataset.level) < min;
}

async function loadLogs() {
  try {
    const j = await api("/admin/logs?limit=200");
    $("logtail").replaceChildren();
    j.lines.forEach(logLine);
  } catch (e) { /* shown */ }
}

/* ---- registered panels --------------------------------------------------------- */

function renderData(d) {
  if (Array.isArray(d) && d.length && typeof d[0] === "object" && d[0] !== null) {
    const cols = [...new Set(d.flatMap((o) => Object.keys(o)))];
    return el("table", {}, el("thead", {}, el("tr", {}, ...cols.map((c) => el("th", {text: c})))),
      el("tbody", {}, ...d.map((o) => el("tr", {}, ...cols.map((c) => el("td", {text: typeof o[c] === "object" ? JSON.stringify(o[c]) : String(o[c] ?? "")}))))));
  }
  if (d && typeof d === "object" && !Array.isArray(d)) {
    return el("table", {}, el("tbody", {}, ...Object.entries(d).map(([k, v]) => el("tr", {}, el("td", {text: k}),
      el("td", {}, typeof v === "object" && v !== null ? renderData(v) : document.createTextNode(String(v)))))));
  }
  return el("pre", {text: JSON.stringify(d, null, 2)});
}

async function loadPanels() {
  try {
    const list = await api("/admin/panels");
    const boxes = [];
    for (const p of list.panels) {
      const one = await api("/admin/panels/" + encodeURIComponent(p.name));
      boxes.push(el("section", {class: "panel", "data-panel": p.name}, el("h2", {text: one.title}), renderData(one.data)));
    }
    $("extra").replaceChildren(...boxes);
  } catch (e) { /* shown */ }
}

/* ---- the event stream ------------------------------------------------------------ */

let streamAbort = null;

function onEvent(name, data) {
  let d;
  try { d = JSON.parse(data); } catch (e) { return; }
  if (name === "hello") {
    $("svc").textContent = d.service;
    $("ver").textContent = d.version;
    setActions(d.actions);
  } else if (name === "stats") renderStats(d);
  else if (name === "restart") onRestart(d);
  else if (name === "log") logLine(d);
  else if (name === "alert") loadAlerts();
  else if (name === "process" && d.kind === "process_exited" && d.pid === selectedPid) loadProc(d.pid, true);
}

async function stream() {
  if (streamAbort) streamAbort.abort();
  const ctl = new AbortController();
  streamAbort = ctl;
  const live = $("live");
  try {
    const r = await fetch("/admin/events", {headers: headers({Accept: "text/event-stream"}), signal: ctl.signal, cache: "no-store"});
    if (r.status === 401) {
      const j = await r.json().catch(() => null);
      authProblem(401, (j && j.error && j.error.message) || "unauthorized");
      live.textContent = "no access";
      live.className = "pill off";
      return; /* a new token starts it again */
    }
    if (!r.ok) throw new Error("event stream: " + r.status);
    live.textContent = "live";
    live.className = "pill on";
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buf += dec.decode(value, {stream: true});
      let at;
      while ((at = buf.indexOf("\n\n")) >= 0) {
        const frame = buf.slice(0, at);
        buf = buf.slice(at + 2);
        let name = "message", data = "";
        for (const line of frame.split("\n")) {
          if (line.startsWith("event: ")) name = line.slice(7);
          else if (line.startsWith("data: ")) data += line.slice(6);
        }
        if (data) onEvent(name, data);
      }
    }
  } catch (e) {
    if (ctl.signal.aborted) return;
  }
  if (streamAbort !== ctl) return;
  live.textContent = "reconnecting";
  live.className = "pill off";
  setTimeout(stream, 2000);
}

/* ---- wiring ---------------------------------------------------------------------- */

function loadAll() {
  loadOverview();
  loadTree();
  loadProcs();
  loadHttp();
  loadAlerts();
  loadHealth();
  loadLogs();
  loadPanels();
}

$("token").value = token;
$("tokenform").addEventListener("submit", (e) => {
  e.preventDefault();
  token = $("token").value.trim();
  if (token) sessionStorage.setItem("keelToken", token);
  else sessionStorage.removeItem("keelToken");
  authFailed = false;
  show("auth", "");
  loadAll();
  stream();
});
$("forget").addEventListener("click", () => {
  token = "";
  $("token").value = "";
  sessionStorage.removeItem("keelToken");
});
for (const th of document.querySelectorAll("#ptable th[data-sort]"))
  th.addEventListener("click", () => { procSort = th.dataset.sort; loadProcs(); });
$("pfilter").addEventListener("input", () => { clearTimeout(loadProcs.t); loadProcs.t = setTimeout(loadProcs, 200); });
$("plimit").addEventListener("change", loadProcs);
$("lfilter").addEventListener("change", refilterLogs);
$("nodelevel").addEventListener("change", () => action("/admin/log-level", {level: $("nodelevel").value}, "log level " + $("nodelevel").value));
$("testalert").addEventListener("click", () => action("/admin/alerts/test", null, "test alert").then(loadAlerts));
$("tree-refresh").addEventListener("click", loadTree);

loadAll();
stream();
setInterval(loadOverview, 5000);
setInterval(loadProcs, 3000);
setInterval(loadHttp, 5000);
setInterval(loadAlerts, 10000);
setInterval(loadHealth, 5000);
setInterval(loadTree, 10000);
setInterval(loadPanels, 5000);
