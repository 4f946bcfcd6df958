/**
 * status.js: the operator's status page served at `/status`.
 *
 * Polls `GET /api/status` (Authorization: Bearer <API key>) every 2 s and shows every live node.
 * The key comes from sessionStorage, else from `<meta name="hubbub-dev-api-key">` (filled in by the
 * server in development mode only), else from a form shown on 401. When a poll fails the last
 * figures stay on screen, dimmed, under an error banner, and polling goes on.
 *
 * Hooks for the browser tests (tests/test_browser.py) — keep them stable:
 *   #api-key-form (input + submit), #error, #updated, #summary [data-metric=nodes|connections|rooms|
 *   publications|deliveries], #nodes tbody tr[data-node], #codes tbody tr[data-code], #recent li.
 */

const POLL_INTERVAL = 2000;
const FETCH_TIMEOUT = 5000;
const RECENT_LIMIT = 50;
const KEY_STORE = "hubbub.status.apiKey";

const $ = (selector) => document.querySelector(selector);
const ui = {
  main: $("#main"),
  error: $("#error"),
  form: $("#api-key-form"),
  key: $("#api-key"),
  keyError: $("#api-key-error"),
  dashboard: $("#dashboard"),
  live: $("#live"),
  liveText: $("#live-text"),
  updated: $("#updated"),
  nodes: $("#nodes tbody"),
  codesHead: $("#codes thead tr"),
  codes: $("#codes tbody"),
  recent: $("#recent"),
  recentEmpty: $("#recent-empty"),
  answeredBy: $("#answered-by"),
  forget: $("#forget-key"),
};

const session = {
  get() {
    try {
      return sessionStorage.getItem(KEY_STORE);
    } catch {
      return null;
    }
  },
  set(value) {
    try {
      if (value === null) sessionStorage.removeItem(KEY_STORE);
      else sessionStorage.setItem(KEY_STORE, value);
    } catch {
      // storage unavailable: the key lives as long as the page
    }
  },
};

let apiKey = null;
let generation = 0; // a newer poll (or a new key) makes older answers irrelevant
let pollTimer = null;
let inFlight = null;
let lastData = null;
let lastOk = null; // Date.now() of the last good answer
let failure = null; // text of the current failure, or null

// --- formatting ----------------------------------------------------------------------------------

const integer = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
const rateFormats = [
  new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 }),
  new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 }),
  new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 }),
];
const clock = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
const dated = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit" });
const full = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

const num = (value) => (Number.isFinite(value) ? value : 0);
const fmtInt = (value) => integer.format(num(value));

function fmtRate(value) {
  const v = num(value);
  return rateFormats[v < 10 ? 0 : v < 100 ? 1 : 2].format(v);
}

function fmtTime(ts) {
  const date = new Date(ts);
  return date.toDateString() === new Date().toDateString() ? clock.format(date) : dated.format(date);
}

function fmtAgo(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  return `${Math.floor(s / 3600)} h ago`;
}

function fmtUptime(seconds) {
  const s = Math.max(0, Math.floor(num(seconds)));
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (d > 0) return `${d}d ${h}h`;
  if (h > 0) return `${h}h ${m}m`;
  if (m > 0) return `${m}m ${s % 60}s`;
  return `${s}s`;
}

function make(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function cell(text, { numeric = false, sub = null, title = null } = {}) {
  const td = make("td", numeric ? "num" : "", text);
  if (sub !== null) td.append(make("span", "sub", sub));
  if (title) td.title = title;
  return td;
}

function tag(text, kind, title = null) {
  const span = make("span", `tag tag-${kind}`, text);
  if (title) span.title = title;
  return span;
}

// --- fetching ------------------------------------------------------------------------------------

function devKey() {
  const content = document.querySelector('meta[name="hubbub-dev-api-key"]')?.getAttribute("content") ?? "";
  return content.trim() || null;
}

function use(key) {
  apiKey = key;
  poll();
}

function stopPolling() {
  generation += 1;
  clearTimeout(pollTimer);
  pollTimer = null;
  inFlight?.abort();
  inFlight = null;
}

async function poll() {
  stopPolling();
  const mine = generation;
  const controller = new AbortController();
  inFlight = controller;
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    controller.abort();
  }, FETCH_TIMEOUT);
  let again = true;
  try {
    const answer = await fetch("/api/status", {
      headers: { authorization: `Bearer ${apiKey}`, accept: "application/json" },
      cache: "no-store",
      signal: controller.signal,
    });
    let body = null;
    try {
      body = await answer.json();
    } catch {
      // not JSON: said below
    }
    if (mine !== generation) return;
    if (answer.status === 401 || answer.status === 403) {
      again = false;
      askForKey(
        apiKey
          ? `The node refused this API key (${answer.status}${body?.error?.reason ? `: ${body.error.reason}` : ""}).`
          : "",
      );
      return;
    }
    if (!answer.ok || !body || !Array.isArray(body.nodes)) {
      const reason = body?.error?.reason ?? (answer.ok ? "the answer is not a status report" : answer.statusText);
      fail(`The node answered ${answer.status}${reason ? `: ${reason}` : ""}.`);
      return;
    }
    session.set(apiKey);
    lastData = body;
    lastOk = Date.now();
    failure = null;
    ui.form.hidden = true;
    ui.dashboard.hidden = false;
    render(body);
  } catch (error) {
    if (mine !== generation) return;
    fail(timedOut ? `No answer within ${FETCH_TIMEOUT / 1000} s: the node may be down or overloaded.` : `Cannot reach the node: ${error.message || error}.`);
  } finally {
    clearTimeout(timer);
    if (mine === generation) {
      inFlight = null;
      if (again) pollTimer = setTimeout(poll, POLL_INTERVAL);
      renderFreshness();
    }
  }
}

function fail(text) {
  failure = text;
}

function askForKey(message) {
  stopPolling();
  session.set(null);
  apiKey = null;
  failure = null;
  ui.dashboard.hidden = true;
  ui.form.hidden = false;
  ui.keyError.textContent = message;
  ui.keyError.hidden = !message;
  ui.key.setAttribute("aria-invalid", message ? "true" : "false");
  ui.key.focus();
  // A refused key stays, selected: a typo is fixed in place, or typing replaces it. Asked afresh
  // ("Use another API key"), the field starts empty.
  if (message) ui.key.select();
  else ui.key.value = "";
  renderFreshness();
}

// --- rendering -----------------------------------------------------------------------------------

/** "Updated …", the live dot and the error banner: redrawn every second so ages stay true. */
function renderFreshness() {
  const asking = !ui.form.hidden;
  if (asking) {
    ui.live.dataset.live = "idle";
    ui.liveText.textContent = "Waiting for the API key";
  } else if (failure) {
    ui.live.dataset.live = "error";
    ui.liveText.textContent = "Unreachable";
  } else if (lastOk !== null) {
    ui.live.dataset.live = "ok";
    ui.liveText.textContent = "Live";
  } else {
    ui.live.dataset.live = "idle";
    ui.liveText.textContent = "Loading…";
  }
  if (lastOk !== null) {
    const age = Date.now() - lastOk;
    ui.updated.replaceChildren(
      `${failure ? "Last updated" : "Updated"} ${fmtTime(lastOk)}`,
      make("span", "ago", ` · ${fmtAgo(age)}`),
    );
    ui.updated.title = full.format(new Date(lastOk));
  } else {
    ui.updated.textContent = "";
  }
  if (failure && !asking) {
    const banner = [make("strong", "", "Status unavailable.")];
    banner.push(document.createTextNode(` ${failure} `));
    banner.push(
      document.createTextNode(
        lastOk !== null
          ? `Showing the figures from ${fmtTime(lastOk)} (${fmtAgo(Date.now() - lastOk)}); retrying every ${POLL_INTERVAL / 1000} s.`
          : `Retrying every ${POLL_INTERVAL / 1000} s.`,
      ),
    );
    const body = make("div");
    body.append(...banner);
    ui.error.replaceChildren(body);
    ui.error.hidden = false;
  } else {
    ui.error.hidden = true;
    ui.error.replaceChildren();
  }
  ui.main.classList.toggle("stale", Boolean(failure) && lastOk !== null);
}

function render(data) {
  const nodes = [...data.nodes].filter((n) => n && typeof n === "object");
  nodes.sort((a, b) => String(a.name).localeCompare(String(b.name)));
  const meanings = data.close_codes && typeof data.close_codes === "object" ? data.close_codes : {};
  renderSummary(nodes, data.rooms);
  renderNodes(nodes, data.node);
  renderCodes(nodes, meanings);
  renderRecent(nodes, meanings);
  const when = Number.isFinite(data.generated_at) ? ` at ${fmtTime(data.generated_at)}` : "";
  ui.answeredBy.textContent = `Answered by ${data.node ?? "?"}${when}; a node's figures reach the others every few seconds.`;
}

function setMetric(name, text) {
  const node = document.querySelector(`#summary [data-metric="${name}"]`);
  if (node) node.textContent = text;
}

function renderSummary(nodes, rooms) {
  const sum = (pick) => nodes.reduce((total, n) => total + num(pick(n)), 0);
  setMetric("nodes", fmtInt(nodes.length));
  setMetric("connections", fmtInt(sum((n) => n.connections)));
  // Cluster-wide distinct rooms: a room with members on two nodes is one room, not two.
  setMetric("rooms", fmtInt(typeof rooms === "number" ? rooms : sum((n) => n.rooms)));
  setMetric("publications", fmtRate(sum((n) => n.rates?.publications)));
  setMetric("deliveries", fmtRate(sum((n) => n.rates?.deliveries)));
}

function renderNodes(nodes, answering) {
  const rows = nodes.map((n) => {
    const tr = make("tr");
    tr.dataset.node = String(n.name);
    const name = make("th", "", String(n.name));
    name.scope = "row";
    if (n.name === answering) name.append(tag("this node", "self", "This node answered the request"));
    let state;
    if (n.draining) state = tag("Draining", "warn", "Closing its connections (1012) so clients move to other nodes");
    else if (n.ready === false) state = tag("Not ready", "err", "/readyz answers 503");
    else state = tag("Ready", "ok");
    const stateCell = make("td");
    stateCell.append(state);
    const rates = n.rates ?? {};
    const totals = n.totals ?? {};
    tr.append(
      name,
      stateCell,
      cell(fmtInt(n.connections), { numeric: true }),
      cell(fmtInt(n.rooms), { numeric: true }),
      cell(fmtRate(rates.publications), { numeric: true, sub: `${fmtInt(totals.publications)} total` }),
      cell(fmtRate(rates.deliveries), { numeric: true, sub: `${fmtInt(totals.deliveries)} total` }),
      cell(fmtRate(rates.connects), { numeric: true, sub: `${fmtInt(totals.connects)} total` }),
      cell(fmtRate(rates.disconnects), { numeric: true, sub: `${fmtInt(totals.disconnects)} total` }),
      cell(fmtUptime(n.uptime), { numeric: true, title: `${fmtInt(n.uptime)} s` }),
      cell(String(n.backend ?? "–")),
    );
    return tr;
  });
  if (!rows.length) rows.push(emptyRow(10, "No live nodes reported."));
  ui.nodes.replaceChildren(...rows);
}

function emptyRow(columns, text) {
  const tr = make("tr", "empty-row");
  const td = make("td", "", text);
  td.colSpan = columns;
  tr.append(td);
  return tr;
}

function renderCodes(nodes, meanings) {
  const perNode = nodes.length > 1;
  const head = [make("th", "", "Code"), make("th", "", "Meaning")];
  if (perNode) for (const n of nodes) head.push(make("th", "num", String(n.name)));
  head.push(make("th", "num", "Total"));
  for (const th of head) th.scope = "col";
  ui.codesHead.replaceChildren(...head);

  const codes = new Set();
  for (const n of nodes) for (const code of Object.keys(n.disconnects?.by_code ?? {})) codes.add(code);
  const rows = [...codes]
    .sort((a, b) => Number(a) - Number(b))
    .map((code) => {
      const tr = make("tr");
      tr.dataset.code = code;
      const counts = nodes.map((n) => num(n.disconnects?.by_code?.[code]));
      tr.append(make("td", "mono", code), make("td", "wrap", meanings[code] ?? "unknown code"));
      if (perNode) for (const count of counts) tr.append(cell(count ? fmtInt(count) : "–", { numeric: true }));
      tr.append(cell(fmtInt(counts.reduce((a, b) => a + b, 0)), { numeric: true }));
      return tr;
    });
  if (!rows.length) rows.push(emptyRow(head.length, "No disconnects yet."));
  ui.codes.replaceChildren(...rows);
}

function renderRecent(nodes, meanings) {
  const all = [];
  for (const n of nodes) {
    for (const r of n.disconnects?.recent ?? []) if (r && typeof r === "object") all.push({ ...r, node: n.name });
  }
  all.sort((a, b) => num(b.ts) - num(a.ts));
  const items = all.slice(0, RECENT_LIMIT).map((r) => {
    const li = make("li");
    li.dataset.node = String(r.node);
    li.dataset.code = String(r.code);
    const time = make("time", "", fmtTime(r.ts));
    time.dateTime = new Date(num(r.ts)).toISOString();
    time.title = full.format(new Date(num(r.ts)));
    const what = make("div", "what");
    what.append(make("span", "code", String(r.code)), make("span", "", meanings[String(r.code)] ?? "unknown code"));
    what.append(tag(String(r.node), "node", "The node the connection was on"));
    const detail = make("div", "detail");
    const parts = [];
    if (r.user) parts.push(`user ${r.user}`);
    if (r.reason) parts.push(`“${r.reason}”`);
    detail.textContent = parts.join(" · ") || "no reason given";
    li.append(time, what, detail);
    return li;
  });
  ui.recent.replaceChildren(...items);
  ui.recentEmpty.hidden = items.length > 0;
}

// --- start ---------------------------------------------------------------------------------------

ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  const key = ui.key.value.trim();
  if (!key) {
    ui.keyError.textContent = "Enter the API key.";
    ui.keyError.hidden = false;
    ui.key.setAttribute("aria-invalid", "true");
    ui.key.focus();
    return;
  }
  ui.keyError.hidden = true;
  ui.key.setAttribute("aria-invalid", "false");
  use(key);
});

ui.forget.addEventListener("click", () => {
  lastData = null;
  lastOk = null;
  askForKey("");
});

setInterval(renderFreshness, 1000);

const initial = session.get() ?? devKey();
if (initial) use(initial);
else askForKey("");
