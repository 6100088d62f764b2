// The nodecloud dashboard: the cluster as a graph drawn as its topology, a table of nodes with
// sparklines, and a live log, all fed by the node's HTTP API (/api/v1/cluster once, then the
// Server-Sent Events of /api/v1/stream: cluster, membership, stats, event), and, when this node
// serves the HTTP proxy, its per-backend counters (/api/v1/proxy every PROXY_POLL_MS) for each
// node's HTTP request rate. Plain JS, no build step, no network beyond the node.
"use strict";

const HISTORY = 60;          // points per sparkline
const LOG_LINES = 200;       // entries kept in the live log
const TOKEN_KEY = "nodecloud.token";
const PROXY_POLL_MS = 2000;  // how often the proxy's counters are read

const state = {
  token: null,
  name: "",
  topology: "",
  members: new Map(),        // name -> member (as /api/v1/cluster gives it)
  history: new Map(),        // name -> {load: [], rss: [], rate: [], lastCount, lastAt}
  stream: null,              // AbortController of the running stream
  proxy: null,               // {listen, at, requests: Map(node -> count)}: the last proxy reading
  proxyRate: new Map(),      // node -> [requests/s] through this node's proxy
  proxyTimer: null,
  proxyGen: 0,               // which polling loop is current (start() runs again on reconnect)
  retry: 500,
};

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

// ---- token -------------------------------------------------------------------------------

function takeToken() {
  const url = new URL(window.location.href);
  const fromUrl = url.searchParams.get("token");
  if (fromUrl) {
    sessionStorage.setItem(TOKEN_KEY, fromUrl);
    url.searchParams.delete("token");
    history.replaceState(null, "", url.pathname + url.search + url.hash);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

function askToken(message) {
  stopStream();
  $("board").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("summary").textContent = "not connected";
  $("token").focus();
}

$("login").addEventListener("submit", (e) => {
  e.preventDefault();
  state.token = $("token").value;
  sessionStorage.setItem(TOKEN_KEY, state.token);
  start();
});

function headers() {
  return state.token ? { Authorization: "Bearer " + state.token } : {};
}

// ---- data --------------------------------------------------------------------------------

async function loadCluster() {
  const res = await fetch("/api/v1/cluster", { headers: headers() });
  if (res.status === 401) {
    const err = new Error("the token was refused");
    err.unauthorized = true;
    throw err;
  }
  if (!res.ok) throw new Error("GET /api/v1/cluster: HTTP " + res.status);
  takeCluster(await res.json());
}

// The whole picture (`GET /api/v1/cluster`, or `event: cluster` of the stream).
function takeCluster(cluster) {
  state.name = cluster.name || state.name;
  state.topology = cluster.topology || state.topology;
  state.members = new Map();
  for (const m of cluster.members || []) state.members.set(m.name, m);
  for (const m of state.members.values()) sample(m);
}

function memberName(m) {
  return m.name || m.node;
}

// Merge what a `stats` event carries: every member, as a list or under `members`, or one.
function mergeStats(data) {
  const list = Array.isArray(data) ? data : data.members || [data];
  for (const m of list) {
    const name = memberName(m);
    if (!name) continue;
    const merged = Object.assign({}, state.members.get(name) || { name }, m, { name });
    state.members.set(name, merged);
    sample(merged);
  }
}

function eventCount(m) {
  let n = 0;
  for (const [k, v] of Object.entries(m.stats || {})) {
    if (/event/.test(k) && typeof v === "number") n += v;
  }
  for (const k of ["events_published", "events_delivered", "events_relayed"]) {
    if (typeof m[k] === "number") n += m[k];
  }
  return n;
}

function sample(m) {
  const h = state.history.get(m.name) || { load: [], rss: [], rate: [], lastCount: null, lastAt: 0 };
  const now = performance.now();
  const push = (arr, v) => { arr.push(v); if (arr.length > HISTORY) arr.shift(); };
  push(h.load, Number(m.load_1m) || 0);
  push(h.rss, Number(m.rss_bytes) || 0);
  const count = eventCount(m);
  if (h.lastCount !== null && now > h.lastAt) {
    push(h.rate, Math.max(0, (count - h.lastCount) * 1000 / (now - h.lastAt)));
  }
  h.lastCount = count;
  h.lastAt = now;
  state.history.set(m.name, h);
}

// ---- the proxy ---------------------------------------------------------------------------

// Read this node's proxy counters; each node's request rate is the difference of two
// readings. A node without a proxy answers `listen: null`, and polling stops.
async function pollProxy(gen) {
  if (gen !== state.proxyGen) return;
  state.proxyTimer = null;
  const again = () => { if (gen === state.proxyGen) state.proxyTimer = setTimeout(() => pollProxy(gen), PROXY_POLL_MS); };
  let doc;
  try {
    const res = await fetch("/api/v1/proxy", { headers: headers() });
    if (!res.ok) throw new Error("HTTP " + res.status);
    doc = await res.json();
  } catch (e) {
    again();
    return;
  }
  if (gen !== state.proxyGen) return;
  const note = $("proxy-note");
  if (!doc.listen) {
    note.hidden = true;
    return;
  }
  note.hidden = false;
  note.textContent = "HTTP proxy on " + doc.listen + ": request rates are what it sends to each node.";
  const now = performance.now();
  const requests = new Map();
  for (const b of doc.backends || []) requests.set(b.node, (requests.get(b.node) || 0) + (Number(b.requests) || 0));
  const last = state.proxy;
  if (last && now > last.at) {
    for (const [node, count] of requests) {
      const rates = state.proxyRate.get(node) || [];
      rates.push(Math.max(0, (count - (last.requests.get(node) || 0)) * 1000 / (now - last.at)));
      if (rates.length > HISTORY) rates.shift();
      state.proxyRate.set(node, rates);
    }
  }
  state.proxy = { listen: doc.listen, at: now, requests };
  render();
  again();
}

function startProxyPolling() {
  if (state.proxyTimer) clearTimeout(state.proxyTimer);
  state.proxyTimer = null;
  state.proxyGen += 1;
  pollProxy(state.proxyGen);
}

// ---- the stream --------------------------------------------------------------------------

function stopStream() {
  if (state.stream) state.stream.abort();
  state.stream = null;
}

function topics() {
  return $("topics").value.split(",").map((t) => t.trim()).filter(Boolean);
}

// Server-Sent Events read with fetch, so the token goes in a header, not in the URL.
async function runStream() {
  stopStream();
  const abort = new AbortController();
  state.stream = abort;
  const t = topics();
  const url = "/api/v1/stream" + (t.length ? "?topics=" + encodeURIComponent(t.join(",")) : "");
  try {
    const res = await fetch(url, { headers: headers(), signal: abort.signal });
    if (res.status === 401) return askToken("the token was refused");
    if (!res.ok || !res.body) throw new Error("HTTP " + res.status);
    state.retry = 500;
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        dispatch(block);
      }
    }
  } catch (e) {
    if (abort.signal.aborted) return;
  }
  if (state.stream !== abort) return;
  // The node went away or restarted: connect again, and reload the whole picture.
  $("summary").textContent = "reconnecting…";
  setTimeout(() => start(), state.retry);
  state.retry = Math.min(state.retry * 2, 5000);
}

function dispatch(block) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return;
  let payload;
  try { payload = JSON.parse(data.join("\n")); } catch (e) { return; }
  if (event === "cluster") { takeCluster(payload); render(); }
  else if (event === "membership") onMembership(payload);
  else if (event === "stats") { mergeStats(payload); render(); }
  else if (event === "event") onEvent(payload);
}

function onMembership(change) {
  const name = memberName(change);
  if (!name) return;
  const m = Object.assign({}, state.members.get(name) || { name }, { state: change.state });
  if (change.incarnation) m.incarnation = change.incarnation;
  const was = (state.members.get(name) || {}).state;
  state.members.set(name, m);
  if (was !== change.state) log("membership-" + change.state, name + " " + change.state);
  render();
}

function onEvent(ev) {
  let payload = JSON.stringify(ev.payload);
  if (payload && payload.length > 200) payload = payload.slice(0, 200) + "…";
  const from = typeof ev.from === "object" && ev.from ? ev.from.name || JSON.stringify(ev.from) : ev.from;
  log("event", ev.topic + " from " + from + ": " + payload);
}

function log(kind, text) {
  const li = document.createElement("li");
  li.className = kind;
  li.textContent = new Date().toLocaleTimeString() + "  " + text;
  const ol = $("log");
  ol.prepend(li);
  while (ol.children.length > LOG_LINES) ol.lastChild.remove();
}

// ---- drawing -----------------------------------------------------------------------------

// Where each node goes, by topology: the master in the middle of a star, a ring or a mesh
// on a circle, a tree by levels from its root (the master, else the first node).
function layout(names) {
  const W = 640, H = 420, cx = W / 2, cy = H / 2, r = Math.min(W, H) / 2 - 50;
  const pos = new Map();
  const members = names.map((n) => state.members.get(n));
  const master = members.find((m) => m && m.role === "master");
  const onCircle = (list, offset) => list.forEach((n, i) => {
    const a = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(list.length, 1) + (offset || 0);
    pos.set(n, [cx + r * Math.cos(a), cy + r * Math.sin(a)]);
  });
  if (state.topology === "tree") {
    const root = master ? master.name : names[0];
    const levels = [[root]];
    const seen = new Set([root]);
    for (;;) {
      const next = [];
      for (const n of levels[levels.length - 1]) {
        for (const l of (state.members.get(n) || {}).links || []) {
          if (!seen.has(l) && names.includes(l)) { seen.add(l); next.push(l); }
        }
      }
      if (!next.length) break;
      levels.push(next);
    }
    const rest = names.filter((n) => !seen.has(n));
    if (rest.length) levels.push(rest);
    levels.forEach((row, y) => row.forEach((n, x) => {
      pos.set(n, [(W * (x + 1)) / (row.length + 1), 50 + ((H - 100) * y) / Math.max(levels.length - 1, 1)]);
    }));
  } else if (master && (state.topology === "star" || state.topology === "master-ring-slave")) {
    pos.set(master.name, [cx, cy]);
    onCircle(names.filter((n) => n !== master.name));
  } else {
    onCircle(names);
  }
  return pos;
}

function render() {
  $("cluster-name").textContent = state.name;
  $("topology").textContent = state.topology ? "(" + state.topology + ")" : "";
  const names = [...state.members.keys()].sort();
  const up = names.filter((n) => state.members.get(n).state === "up").length;
  $("summary").textContent = up + " of " + names.length + " nodes up";
  drawGraph(names);
  drawTable(names);
}

function drawGraph(names) {
  const g = $("graph");
  g.replaceChildren();
  const pos = layout(names);
  const drawn = new Set();
  for (const n of names) {
    for (const l of state.members.get(n).links || []) {
      const key = [n, l].sort().join("\u0000");
      if (drawn.has(key) || !pos.has(l)) continue;
      drawn.add(key);
      const [x1, y1] = pos.get(n), [x2, y2] = pos.get(l);
      const live = state.members.get(n).state === "up" && state.members.get(l).state === "up";
      g.append(svg("line", { x1, y1, x2, y2, class: live ? "live" : "" }));
    }
  }
  for (const n of names) {
    const m = state.members.get(n);
    const [x, y] = pos.get(n);
    const group = svg("g", {
      class: "node " + m.state + (m.role === "master" ? " master" : "") + ((m.http || []).length ? " http" : ""),
      "data-node": n,
      "data-state": m.state,
    });
    const serves = (m.http || []).length ? ", serves HTTP on " + m.http.join(", ") : "";
    group.append(svg("title", {}, n + ": " + m.state + (m.role ? " (" + m.role + ")" : "") + serves));
    group.append(svg("circle", { cx: x, cy: y, r: 18 }));
    group.append(svg("text", { x, y: y + 34, class: "name" }, n));
    group.append(svg("text", { x, y: y + 48, class: "state" }, m.state + (m.role === "master" ? " · master" : "") + (serves ? " · http" : "")));
    g.append(group);
  }
}

function spark(values) {
  const w = 80, h = 18;
  const s = svg("svg", { width: w, height: h, "aria-hidden": "true" });
  if (values.length > 1) {
    const max = Math.max(...values) || 1;
    const pts = values.map((v, i) => ((i * w) / (HISTORY - 1)).toFixed(1) + "," + (h - 1 - (v / max) * (h - 2)).toFixed(1));
    s.append(svg("polyline", { points: pts.join(" ") }));
  }
  return s;
}

function human(bytes) {
  const n = Number(bytes) || 0;
  if (n >= 1 << 30) return (n / (1 << 30)).toFixed(1) + " GiB";
  if (n >= 1 << 20) return (n / (1 << 20)).toFixed(1) + " MiB";
  if (n >= 1 << 10) return (n / (1 << 10)).toFixed(0) + " KiB";
  return n + " B";
}

function duration(s) {
  const n = Math.floor(Number(s) || 0);
  if (n >= 86400) return Math.floor(n / 86400) + "d" + Math.floor((n % 86400) / 3600) + "h";
  if (n >= 3600) return Math.floor(n / 3600) + "h" + Math.floor((n % 3600) / 60) + "m";
  if (n >= 60) return Math.floor(n / 60) + "m" + (n % 60) + "s";
  return n + "s";
}

function drawTable(names) {
  const body = $("nodes").tBodies[0];
  body.replaceChildren();
  for (const n of names) {
    const m = state.members.get(n);
    const h = state.history.get(n) || { load: [], rss: [], rate: [] };
    const tr = document.createElement("tr");
    tr.dataset.node = n;
    tr.dataset.state = m.state;
    const cell = (text, cls) => {
      const td = document.createElement("td");
      td.textContent = text;
      if (cls) td.className = cls;
      tr.append(td);
      return td;
    };
    cell(n);
    cell(m.role || "");
    cell(m.state, "state-" + m.state);
    cell(m.state === "up" ? duration(m.uptime_s) : "–");
    cell(m.load_1m !== undefined ? Number(m.load_1m).toFixed(2) : "–").append(spark(h.load));
    cell(m.rss_bytes !== undefined ? human(m.rss_bytes) : "–").append(spark(h.rss));
    cell(h.rate.length ? h.rate[h.rate.length - 1].toFixed(0) : "–").append(spark(h.rate));
    cell((m.links || []).join(", "));
    cell(String((m.methods || []).length));
    const http = m.http || [];
    cell(http.length ? http.join(", ") : "–", http.length ? "http" : "");
    const rates = state.proxyRate.get(n) || [];
    const served = state.proxy && state.proxy.requests.has(n);
    cell(served && rates.length ? rates[rates.length - 1].toFixed(1) : "–", "http-rate").append(spark(rates));
    body.append(tr);
  }
}

// ---- start -------------------------------------------------------------------------------

$("topics").addEventListener("change", () => runStream());

async function start() {
  state.token = state.token || takeToken();
  try {
    await loadCluster();
  } catch (e) {
    if (e.unauthorized) return askToken(state.token ? "the token was refused" : "");
    $("summary").textContent = "cannot reach the node: " + e.message;
    setTimeout(() => start(), state.retry);
    state.retry = Math.min(state.retry * 2, 5000);
    return;
  }
  $("login").hidden = true;
  $("board").hidden = false;
  render();
  runStream();
  startProxyPolling();
}

start();
