/**
 * demo.js: the demo chat served at `/`. Built only on the public browser client (/hubbub.js) and
 * the demo token endpoint (POST /demo/token), so it doubles as an example of using both.
 *
 * Flow: name + room → a token → `client.connect()` → `client.join()` → recent history, then live
 * publications (de-duplicated by epoch and offset) → presence from `client.presence()` kept up to
 * date by join/leave events. Reconnects are the client's job; this page only says what happened.
 *
 * Hooks for the browser tests (tests/test_browser.py) — keep them stable:
 *   #name #room #join, #message #send, #status[data-state=<client state>],
 *   #messages li.message[data-offset | data-pending][data-author] .text,
 *   #messages li.notice[data-kind=join|leave|disconnect|recovered|not-recovered|info|error],
 *   #online li[data-user], window.hubbubDemo = { client, room } once joined.
 */
import { Client, ClientClosed, CommandError, CommandTimeout, QueueFull } from "/hubbub.js";

const NAME_MAX = 32;
const ROOM_CHARS = /^[A-Za-z0-9_\-.=@:/]+$/;
const ROOM_MAX = 255;
const DEFAULT_ROOM = "lobby";
const DEFAULT_NAMESPACE = "demo";
const HISTORY_LIMIT = 50;
/** Messages of one author closer than this are grouped under one name. */
const GROUP_WINDOW = 5 * 60 * 1000;
/** A prefetched token is used for the first connect only if it has this long left. */
const TOKEN_REUSE_MARGIN = 15000;
const TOKEN_TIMEOUT = 8000;
/**
 * "X left" waits this long for X to come back. A restarted or drained node drops everyone at once,
 * and they reconnect one by one: X's `leave` (or X missing from the list after our own re-join)
 * is then followed within seconds by X's `join`, and "left"/"joined" would be noise. A peer that
 * lost only its own connection is back within its first backoff or the drain jitter (5 s).
 */
const LEAVE_GRACE = 8000;
/** After our own reconnect: those missing from the new list lost the same node and retry with
 * their own backoff (at most 10 s on this page), after a restart that may itself take seconds. */
const REJOIN_GRACE = 15000;
/** The name is remembered per tab (sessionStorage: two tabs are two users), the room per browser. */
const STORAGE = { name: "hubbub.demo.name", room: "hubbub.demo.room" };
const NAME_WORDS = [
  ["Amber", "Brave", "Calm", "Clever", "Eager", "Gentle", "Jolly", "Lucky", "Merry", "Nimble", "Quiet", "Swift"],
  ["Badger", "Falcon", "Heron", "Koala", "Lynx", "Marten", "Otter", "Panda", "Puffin", "Raven", "Tapir", "Wombat"],
];
const WS_URL = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;

const $ = (selector) => document.querySelector(selector);
const ui = {
  joinView: $("#join-view"),
  joinForm: $("#join-form"),
  name: $("#name"),
  room: $("#room"),
  roomPrefix: $("#room-prefix"),
  join: $("#join"),
  joinError: $("#join-error"),
  chatView: $("#chat-view"),
  roomName: $("#room-name"),
  me: $("#me"),
  leave: $("#leave"),
  reconnect: $("#reconnect"),
  pane: $("#messages-pane"),
  messages: $("#messages"),
  empty: $("#empty"),
  jump: $("#jump"),
  onlinePanel: $("#online-panel"),
  online: $("#online"),
  onlineCount: $("#online-count"),
  onlineNote: $("#online-note"),
  composer: $("#composer"),
  message: $("#message"),
  send: $("#send"),
  status: $("#status"),
  statusText: $("#status .status-text"),
  statusDetail: $("#status .status-detail"),
};

// --- small helpers ---------------------------------------------------------------------------------

/** `localStorage` (this browser) or `sessionStorage` (this tab), for conveniences only: failures pass. */
function storageOf(area) {
  return {
    get(key) {
      try {
        return window[area].getItem(key);
      } catch {
        return null;
      }
    },
    set(key, value) {
      try {
        window[area].setItem(key, value);
      } catch {
        // private mode or storage full: remembering is a convenience only
      }
    },
  };
}
const browserStorage = storageOf("localStorage");
const tabStorage = storageOf("sessionStorage");

function make(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function randomId() {
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** A fresh display name such as "Calm Otter 42", so a new tab is a new user unless told otherwise. */
function randomName() {
  const [a, b, n] = crypto.getRandomValues(new Uint32Array(3));
  const [adjectives, animals] = NAME_WORDS;
  return `${adjectives[a % adjectives.length]} ${animals[b % animals.length]} ${10 + (n % 90)}`;
}

function hue(text) {
  let h = 0;
  for (const ch of String(text)) h = (h * 31 + ch.codePointAt(0)) >>> 0;
  return `hue-${h % 8}`;
}

function avatar(name, server = false) {
  const node = make("span", `avatar ${server ? "server" : hue(name)}`, server ? "⚙" : [...name][0] ?? "?");
  node.setAttribute("aria-hidden", "true");
  return node;
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dayFormat = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });
const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

function timeElement(ts) {
  const date = new Date(ts);
  const today = date.toDateString() === new Date().toDateString();
  const node = make("time", "", today ? timeFormat.format(date) : `${dayFormat.format(date)}, ${timeFormat.format(date)}`);
  node.dateTime = date.toISOString();
  node.title = fullFormat.format(date);
  return node;
}

/** The display name in a token's `info` claim, else the user id. */
function displayName(info, user) {
  const name = info && typeof info.name === "string" ? info.name.trim() : "";
  return name || user;
}

function messageText(data) {
  if (typeof data === "string") return { text: data, json: false };
  if (data && typeof data === "object" && !Array.isArray(data) && typeof data.text === "string") {
    return { text: data.text, json: false };
  }
  return { text: JSON.stringify(data), json: true };
}

function reasonOf(error) {
  if (error instanceof CommandError) return `${error.reason || error.message} (${error.code})`;
  if (error instanceof QueueFull) return "too many messages are waiting to be sent";
  if (error instanceof CommandTimeout) return "the server did not answer in time";
  if (error instanceof ClientClosed) return error.disconnect?.reason || "the connection is closed";
  return error?.message || String(error);
}

function describeClose(code, reason) {
  if (code === 1012) return "the server is restarting";
  if (code === null || code === undefined) return reason || "the connection was lost";
  return reason ? `${reason} (${code})` : `close code ${code}`;
}

// --- input checks: the server's rules, said before asking it ---------------------------------------

function checkName(raw) {
  const name = raw.trim();
  if (!name) return { error: "Pick a display name." };
  if ([...name].length > NAME_MAX) return { error: `A display name is at most ${NAME_MAX} characters.` };
  if (/\p{C}/u.test(name)) return { error: "A display name cannot contain control or invisible characters." };
  return { name };
}

function checkRoom(raw, namespace) {
  let room = raw.trim();
  if (room.startsWith(`${namespace}:`)) room = room.slice(namespace.length + 1);
  if (!room) return { error: "Pick a room, for example “lobby”." };
  if (!ROOM_CHARS.test(room)) {
    return { error: "Room names may use only letters A–Z a–z, digits and _ - . = @ : / (no spaces)." };
  }
  const full = `${namespace}:${room}`;
  if (full.length > ROOM_MAX) return { error: `That room name is too long: at most ${ROOM_MAX - namespace.length - 1} characters.` };
  return { room, full };
}

// --- the token endpoint ----------------------------------------------------------------------------

class TokenError extends Error {
  constructor(message, status) {
    super(message);
    this.name = "TokenError";
    this.status = status;
  }
}

async function fetchToken(name) {
  // A request that hangs (a node half up) must not stall the client's reconnect loop.
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), TOKEN_TIMEOUT);
  let answer;
  let body = null;
  try {
    try {
      answer = await fetch("/demo/token", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ name }),
        cache: "no-store",
        signal: controller.signal,
      });
    } catch {
      const why = controller.signal.aborted ? `no answer within ${TOKEN_TIMEOUT / 1000} s` : "cannot reach the server";
      throw new TokenError(`${why} for a token`, 0);
    }
    try {
      body = await answer.json();
    } catch {
      // not JSON (or cut short): reported below
    }
  } finally {
    clearTimeout(timer);
  }
  if (!answer.ok) {
    throw new TokenError(body?.error?.reason || `the token endpoint answered ${answer.status}`, answer.status);
  }
  if (typeof body?.token !== "string") throw new TokenError("the token endpoint answered without a token", answer.status);
  return body;
}

// --- one joined room, from join to leave -----------------------------------------------------------

class ChatSession {
  constructor({ name, user, namespace, room, full, token, expiresIn }) {
    this.name = name;
    this.user = user;
    this.namespace = namespace;
    this.roomShort = room;
    this.roomFull = full;
    this.ended = false;
    this.room = null;
    this.byKey = new Map(); // "epoch:offset" → li
    this.pendingByCid = new Map(); // cid → li of an own message not yet confirmed
    this.presence = new Map(); // client id → { user, name }
    this.presenceReady = false;
    this.presenceBuffer = [];
    this.ghosts = new Set(); // our own client ids of earlier connections
    this.away = new Map(); // user → { name, timer } of a "left" notice held back (LEAVE_GRACE)
    this.retryAt = null;
    this.lastError = "";
    this.attempt = 0;
    this.historySeq = 0;
    this.unsubscribe = [];
    this.ticker = null;

    let first = { token, until: Date.now() + expiresIn * 1000 - TOKEN_REUSE_MARGIN };
    // Called by the client for every connect and every refresh.
    const tokenCallback = async () => {
      const reuse = first && Date.now() < first.until ? first.token : null;
      first = null;
      return reuse ?? (await fetchToken(this.name)).token;
    };
    this.client = new Client(WS_URL, { token: tokenCallback, backoffCap: 10000 });
  }

  async start() {
    const c = this.client;
    this.unsubscribe.push(
      c.on("state", () => this.onState()),
      c.on("connected", (info) => this.onConnected(info)),
      c.on("disconnect", (d) => this.onDisconnect(d)),
      c.on("connectError", (e) => this.onConnectError(e)),
    );
    this.renderStatus();
    try {
      await c.connect();
    } catch {
      return; // a terminal close: the disconnect handler has said why
    }
    if (this.ended) return;
    for (;;) {
      try {
        this.room = await c.join(this.roomFull);
        break;
      } catch (error) {
        if (this.ended) return;
        if (error instanceof CommandTimeout && c.state !== "closed") continue; // offline meanwhile: try again
        this.notice("error", `Could not join ${this.roomFull}: ${reasonOf(error)}`);
        return;
      }
    }
    if (this.ended) return;
    const room = this.room;
    room.on("publication", (pub) => this.addPublication(pub));
    room.on("presence", (event) => this.onPresence(event));
    room.on("rejoin", (event) => this.onRejoin(event));
    room.on("close", (error) => this.onRoomClose(error));
    const joinedAt = { epoch: room.epoch, offset: room.offset };
    await Promise.all([this.loadHistory(), this.loadPresence(false)]);
    if (this.ended) return;
    this.joinNotice(joinedAt);
    this.scrollToBottom();
    window.hubbubDemo = { client: c, room };
  }

  async end() {
    if (this.ended) return;
    this.ended = true;
    clearInterval(this.ticker);
    this.forgetAway();
    for (const off of this.unsubscribe) off();
    if (window.hubbubDemo?.client === this.client) window.hubbubDemo = null;
    const closing = this.client.close().catch(() => {});
    await Promise.race([closing, new Promise((resolve) => setTimeout(resolve, 2000))]);
  }

  // --- connection state

  onState() {
    if (this.ended) return;
    const state = this.client.state;
    if (state === "connected") this.retryAt = null;
    this.renderStatus();
    for (const li of this.pendingByCid.values()) this.pendingLabel(li);
    clearInterval(this.ticker);
    this.ticker = state === "reconnecting" ? setInterval(() => this.renderStatus(), 500) : null;
    const closed = state === "closed";
    ui.reconnect.hidden = !closed;
    ui.message.disabled = closed;
    ui.send.disabled = closed;
    ui.message.placeholder = closed ? "Disconnected" : "Write a message…";
    if (closed) {
      // Nobody's presence is known any more.
      this.presence.clear();
      this.forgetAway();
      this.renderOnline();
      ui.onlineNote.textContent = "Not connected.";
      ui.onlineNote.hidden = false;
    }
  }

  onConnected(info) {
    if (this.ended) return;
    if (this.clientId && this.clientId !== info.client) this.ghosts.add(this.clientId);
    this.clientId = info.client;
    this.attempt = 0;
    this.lastError = "";
    this.renderOnline();
  }

  onDisconnect(d) {
    if (this.ended) return;
    if (d.reconnect) {
      this.retryAt = d.delay ? Date.now() + d.delay : null;
      this.lastError = describeClose(d.code, d.reason);
      this.notice("disconnect", `Disconnected: ${this.lastError} — reconnecting…`);
    } else {
      this.retryAt = null;
      this.lastError = describeClose(d.code, d.reason);
      this.notice("disconnect", `Disconnected: ${this.lastError}. Not reconnecting.`);
    }
    this.renderStatus();
  }

  onConnectError(e) {
    if (this.ended) return;
    this.attempt = e.attempt;
    this.retryAt = Date.now() + e.delay;
    this.lastError = reasonOf(e.error);
    this.renderStatus();
  }

  renderStatus() {
    const c = this.client;
    const state = c.state;
    let text;
    let detail = "";
    if (state === "connecting") {
      text = c.connects > 0 || this.attempt > 0 ? "Reconnecting…" : "Connecting…";
    } else if (state === "reconnecting") {
      const left = this.retryAt === null ? 0 : Math.ceil((this.retryAt - Date.now()) / 1000);
      text = "Reconnecting";
      detail = left > 0 ? ` in ${left}s` : "…";
      if (this.attempt > 1) detail += ` (attempt ${this.attempt})`;
    } else if (state === "connected") {
      text = "Connected";
    } else if (state === "closed") {
      const final = c.final;
      text = `Closed — ${describeClose(final?.code ?? null, final?.reason ?? "")}`;
    } else {
      text = "Not connected";
    }
    setStatus(state, text, detail, this.lastError && state !== "connected" ? this.lastError : "");
  }

  // --- messages

  /** A publication from history or live; each (epoch, offset) is shown once. */
  addPublication(pub, { fromHistory = false } = {}) {
    if (this.ended) return;
    const key = `${pub.epoch}:${pub.offset}`;
    if (this.byKey.has(key)) return;
    if (fromHistory && this.room && pub.epoch !== this.room.epoch) return; // a history of a former epoch
    const stick = this.nearBottom();
    const cid = pub.data && typeof pub.data === "object" ? pub.data.cid : undefined;
    let li = typeof cid === "string" ? this.pendingByCid.get(cid) : undefined;
    if (li) {
      // Our own message came back before the publish reply: confirm it where it is.
      this.pendingByCid.delete(cid);
      this.confirm(li, pub.epoch, pub.offset);
      li.querySelector("time")?.replaceWith(timeElement(pub.ts));
      li.dataset.ts = String(pub.ts);
    } else {
      const author = pub.info ? displayName(pub.info.info, pub.info.user) : "server";
      const { text, json } = messageText(pub.data);
      li = this.messageElement({
        author,
        user: pub.info?.user ?? null,
        own: Boolean(pub.info) && pub.info.user === this.user,
        text,
        json,
        ts: pub.ts,
      });
      li.dataset.offset = String(pub.offset);
      li.dataset.epoch = pub.epoch;
      this.byKey.set(key, li);
      this.place(li);
    }
    this.afterInsert(stick, false);
  }

  messageElement({ author, user, own, text, json, ts }) {
    const server = user === null;
    const li = make("li", `message${own ? " own" : ""}${server ? " server" : ""}`);
    li.dataset.author = author;
    if (user !== null) li.dataset.user = user;
    li.dataset.ts = String(ts);
    const bubble = make("div", "bubble");
    const meta = make("div", "meta");
    meta.append(make("span", "author", own ? `${author} (you)` : author));
    if (server) meta.append(make("span", "badge", "HTTP API"));
    meta.append(timeElement(ts), make("span", "delivery"));
    bubble.append(meta, make("div", json ? "text json" : "text", text));
    li.append(avatar(author, server), bubble);
    return li;
  }

  /** Puts a message with an offset in offset order among those of its epoch; newer epochs go last. */
  place(li) {
    const epoch = li.dataset.epoch;
    const offset = Number(li.dataset.offset);
    if (li.parentNode === ui.messages && inOrder(li, epoch, offset)) {
      for (const node of [li, li.nextElementSibling]) if (node) regroup(node);
      return;
    }
    const oldNext = li.parentNode ? li.nextElementSibling : null;
    let before = null;
    for (let node = ui.messages.lastElementChild; node; node = node.previousElementSibling) {
      if (node === li || !node.classList.contains("message") || node.dataset.offset === undefined) continue;
      if (node.dataset.epoch !== epoch || Number(node.dataset.offset) < offset) break;
      before = node;
    }
    if (before) ui.messages.insertBefore(li, before);
    else if (li.parentNode !== ui.messages || li !== ui.messages.lastElementChild) ui.messages.append(li);
    for (const node of [li, li.nextElementSibling, oldNext]) if (node) regroup(node);
  }

  send(text) {
    const cid = randomId();
    const li = this.messageElement({ author: this.name, user: this.user, own: true, text, json: false, ts: Date.now() });
    li.dataset.cid = cid;
    ui.messages.append(li);
    this.publishOwn(li, text, cid);
    this.afterInsert(true, true);
  }

  /** Publishes an own message; `cid` is also its idempotency key, so a retry is stored at most once. */
  async publishOwn(li, text, cid) {
    li.dataset.pending = "";
    delete li.dataset.failed;
    li.classList.remove("failed");
    this.pendingByCid.set(cid, li);
    this.pendingLabel(li);
    regroup(li);
    try {
      const position = await this.client.publish(this.roomFull, { text, cid }, { idempotencyKey: cid });
      if (this.ended || li.dataset.offset !== undefined) return; // already confirmed by its publication
      this.confirm(li, position.epoch, position.offset);
    } catch (error) {
      if (this.ended || li.dataset.offset !== undefined) return;
      this.failed(li, text, cid, error);
    }
  }

  /** An own message has its offset: it is sent (or it was already shown, then this one goes). */
  confirm(li, epoch, offset) {
    this.pendingByCid.delete(li.dataset.cid);
    const key = `${epoch}:${offset}`;
    const existing = this.byKey.get(key);
    if (existing && existing !== li) {
      const next = li.nextElementSibling;
      li.remove();
      if (next) regroup(next);
      return;
    }
    delete li.dataset.pending;
    delete li.dataset.failed;
    li.classList.remove("failed");
    li.dataset.offset = String(offset);
    li.dataset.epoch = epoch;
    this.byKey.set(key, li);
    const delivery = li.querySelector(".delivery");
    delivery.textContent = "✓";
    delivery.title = "sent";
    this.place(li);
  }

  pendingLabel(li) {
    if (li.dataset.pending === undefined) return;
    const delivery = li.querySelector(".delivery");
    const online = this.client.state === "connected";
    delivery.textContent = online ? "sending…" : "pending — sends after the reconnect";
  }

  /** Not sent (as far as we know: a publication with its cid still confirms it). */
  failed(li, text, cid, error) {
    delete li.dataset.pending;
    li.dataset.failed = "";
    li.classList.add("failed");
    for (const node of [li, li.nextElementSibling]) if (node) regroup(node);
    const delivery = li.querySelector(".delivery");
    delivery.textContent = `Not sent: ${reasonOf(error)}`;
    delivery.title = "";
    if (this.client.state !== "closed") {
      const retry = make("button", "link-button retry", "Retry");
      retry.type = "button";
      retry.addEventListener("click", () => this.publishOwn(li, text, cid));
      delivery.append(" ", retry);
    }
  }

  async loadHistory() {
    const seq = ++this.historySeq;
    try {
      const result = await this.client.history(this.roomFull, { limit: HISTORY_LIMIT });
      if (this.ended || seq !== this.historySeq) return;
      const stick = this.nearBottom();
      for (const pub of result.publications) this.addPublication(pub, { fromHistory: true });
      if (stick) this.scrollToBottom();
    } catch (error) {
      if (this.ended) return;
      this.notice("error", `Could not load the recent messages: ${reasonOf(error)}`);
    }
  }

  joinNotice(joinedAt) {
    const li = this.noticeElement("info", `You joined #${this.roomShort} as ${this.name}`);
    // After what was there before the join, before what came after it.
    let before = null;
    for (const node of ui.messages.querySelectorAll("li.message[data-offset]")) {
      if (node.dataset.epoch === joinedAt.epoch && Number(node.dataset.offset) > joinedAt.offset) {
        before = node;
        break;
      }
    }
    ui.messages.insertBefore(li, before);
    if (before) regroup(before);
  }

  onRejoin(event) {
    if (this.ended) return;
    if (event.error) {
      this.notice("error", `Could not join ${this.roomFull} again: ${reasonOf(event.error)}`);
      return;
    }
    if (event.recovered) {
      const missed = event.previous && event.position ? event.position.offset - event.previous.offset : 0;
      this.notice(
        "recovered",
        missed > 0
          ? `Reconnected — recovered ${missed} missed message${missed === 1 ? "" : "s"}`
          : "Reconnected — no messages were missed",
      );
    } else {
      const why = event.epochChanged ? " (the server lost its history)" : "";
      this.notice("not-recovered", `Reconnected — some messages could not be recovered${why}; reloading the latest`);
      this.loadHistory();
    }
    this.loadPresence(true);
  }

  onRoomClose(error) {
    if (this.ended || !error) return;
    if (error instanceof CommandError) {
      this.notice("error", `You are no longer in ${this.roomFull}: ${reasonOf(error)}. Leave and join again.`);
    }
  }

  noticeElement(kind, text) {
    const li = make("li", "notice");
    li.dataset.kind = kind;
    li.append(make("span", "", text));
    return li;
  }

  notice(kind, text) {
    const stick = this.nearBottom();
    ui.messages.append(this.noticeElement(kind, text));
    this.afterInsert(stick, false);
  }

  // --- scrolling

  nearBottom() {
    const pane = ui.pane;
    return pane.scrollHeight - pane.scrollTop - pane.clientHeight < 80;
  }

  scrollToBottom() {
    ui.pane.scrollTop = ui.pane.scrollHeight;
    ui.jump.hidden = true;
  }

  afterInsert(stick, force) {
    ui.empty.hidden = ui.messages.querySelector("li.message") !== null;
    if (stick || force) this.scrollToBottom();
    else ui.jump.hidden = false;
  }

  // --- presence: per client (tab), shown per user

  onPresence(event) {
    if (this.ended) return;
    if (!this.presenceReady) this.presenceBuffer.push(event);
    else this.applyPresence(event);
  }

  applyPresence(event) {
    const { user, client, info } = event.info;
    const before = this.tabsOf(user);
    if (event.kind === "join") this.presence.set(client, { user, name: displayName(info, user) });
    else this.presence.delete(client);
    const after = this.tabsOf(user);
    if (user !== this.user) {
      const name = displayName(info, user);
      if (before === 0 && after > 0) this.arrived(user, name);
      else if (before > 0 && after === 0) this.holdLeave(user, name, LEAVE_GRACE);
    }
    this.renderOnline();
  }

  /** `user` is gone from the list: "left" is said only if they are not back within `grace`. */
  holdLeave(user, name, grace) {
    clearTimeout(this.away.get(user)?.timer);
    this.away.set(user, { name, timer: setTimeout(() => this.leaveDue(user), grace) });
  }

  leaveDue(user) {
    const held = this.away.get(user);
    if (this.ended || !held) return;
    // Offline ourselves (or reloading the list), we cannot tell: the list after our re-join decides.
    if (this.client.state !== "connected" || !this.presenceReady) return;
    this.away.delete(user);
    if (this.tabsOf(user) === 0) this.notice("leave", `${held.name} left`);
  }

  /** `user` is in the list (again): back within the grace is no news; otherwise they joined. */
  arrived(user, name) {
    const held = this.away.get(user);
    if (held) {
      clearTimeout(held.timer);
      this.away.delete(user);
      return;
    }
    this.notice("join", `${name} joined`);
  }

  forgetAway() {
    for (const { timer } of this.away.values()) clearTimeout(timer);
    this.away.clear();
  }

  tabsOf(user) {
    let tabs = 0;
    for (const [id, entry] of this.presence) if (entry.user === user && !this.ghosts.has(id)) tabs += 1;
    return tabs;
  }

  /** The list from the server; `announce`: say who came and went meanwhile (after a reconnect). */
  async loadPresence(announce) {
    this.presenceReady = false;
    this.presenceBuffer = [];
    try {
      const snapshot = await this.client.presence(this.roomFull);
      if (this.ended) return;
      const previous = this.users();
      this.presence = new Map(
        Object.entries(snapshot.clients).map(([id, entry]) => [id, { user: entry.user, name: displayName(entry.info, entry.user) }]),
      );
      if (announce) {
        // After our reconnect: who is new joined; who is missing may be reconnecting too (REJOIN_GRACE),
        // and so may those whose "left" was already held back.
        const now = this.users();
        for (const [user, name] of now) if (!previous.has(user) && user !== this.user) this.arrived(user, name);
        for (const [user, name] of previous) if (!now.has(user) && user !== this.user) this.holdLeave(user, name, REJOIN_GRACE);
        for (const [user, { name }] of this.away) if (!now.has(user)) this.holdLeave(user, name, REJOIN_GRACE);
      }
      ui.onlineNote.hidden = true;
    } catch (error) {
      if (this.ended) return;
      ui.onlineNote.textContent = `Who is online is unavailable: ${reasonOf(error)}`;
      ui.onlineNote.hidden = false;
    } finally {
      if (!this.ended) {
        this.presenceReady = true;
        for (const event of this.presenceBuffer.splice(0)) this.applyPresence(event);
        this.renderOnline();
      }
    }
  }

  /** user → display name, of everyone online. */
  users() {
    const users = new Map();
    for (const [id, entry] of this.presence) if (!this.ghosts.has(id)) users.set(entry.user, entry.name);
    return users;
  }

  renderOnline() {
    if (this.ended) return;
    const groups = new Map();
    for (const [id, { user, name }] of this.presence) {
      if (this.ghosts.has(id)) continue;
      const group = groups.get(user) ?? { user, name, tabs: 0 };
      group.tabs += 1;
      groups.set(user, group);
    }
    const sorted = [...groups.values()].sort((a, b) =>
      a.user === this.user ? -1 : b.user === this.user ? 1 : a.name.localeCompare(b.name),
    );
    const items = sorted.map(({ user, name, tabs }) => {
      const li = make("li");
      li.dataset.user = user;
      li.append(avatar(name), make("span", "who", name));
      if (user === this.user) li.append(make("span", "badge", "you"));
      if (tabs > 1) {
        const badge = make("span", "badge", `${tabs} tabs`);
        badge.title = `${name} has this room open in ${tabs} tabs or windows`;
        li.append(badge);
      }
      return li;
    });
    ui.online.replaceChildren(...items);
    ui.onlineCount.textContent = String(items.length);
    ui.onlineCount.setAttribute("aria-label", `${items.length} ${items.length === 1 ? "person" : "people"} online`);
  }
}

/** Whether a message already in the list is between its neighbours of the same epoch by offset. */
function inOrder(li, epoch, offset) {
  const offsetOf = (node) =>
    node.classList.contains("message") && node.dataset.offset !== undefined && node.dataset.epoch === epoch
      ? Number(node.dataset.offset)
      : null;
  for (let node = li.nextElementSibling; node; node = node.nextElementSibling) {
    const other = offsetOf(node);
    if (other !== null) {
      if (other < offset) return false;
      break;
    }
  }
  for (let node = li.previousElementSibling; node; node = node.previousElementSibling) {
    const other = offsetOf(node);
    if (other !== null) {
      if (other > offset) return false;
      break;
    }
  }
  return true;
}

/** Hides the author line of a message that follows one of the same author shortly before. */
function regroup(li) {
  if (!li.classList?.contains("message")) return;
  const prev = li.previousElementSibling;
  const same =
    li.dataset.pending === undefined &&
    li.dataset.failed === undefined &&
    prev?.classList.contains("message") &&
    prev.dataset.failed === undefined &&
    prev.dataset.author === li.dataset.author &&
    prev.dataset.user === li.dataset.user &&
    prev.classList.contains("own") === li.classList.contains("own") &&
    Math.abs(Number(li.dataset.ts) - Number(prev.dataset.ts)) < GROUP_WINDOW;
  li.classList.toggle("cont", Boolean(same));
}

function setStatus(state, text, detail = "", title = "") {
  ui.status.dataset.state = state;
  ui.statusText.textContent = text;
  ui.statusDetail.textContent = detail;
  ui.status.title = title;
}

// --- the page ----------------------------------------------------------------------------------------

let session = null;
let namespace = DEFAULT_NAMESPACE;
let joining = false;

function showJoinError(message, field = null) {
  ui.joinError.textContent = message;
  ui.joinError.hidden = !message;
  for (const input of [ui.name, ui.room]) input.removeAttribute("aria-invalid");
  if (field) {
    field.setAttribute("aria-invalid", "true");
    field.focus();
  }
}

async function join(event) {
  event.preventDefault();
  if (joining) return;
  const name = checkName(ui.name.value);
  if (name.error) return showJoinError(name.error, ui.name);
  let room = checkRoom(ui.room.value, namespace);
  if (room.error) return showJoinError(room.error, ui.room);
  showJoinError("");
  joining = true;
  ui.join.disabled = true;
  ui.join.textContent = "Joining…";
  try {
    let grant;
    try {
      grant = await fetchToken(name.name);
    } catch (error) {
      return showJoinError(`Could not get a token: ${error.message}`, error.status === 400 ? ui.name : null);
    }
    if (typeof grant.namespace === "string" && grant.namespace && grant.namespace !== namespace) {
      namespace = grant.namespace;
      ui.roomPrefix.textContent = `${namespace}:`;
      room = checkRoom(ui.room.value, namespace);
      if (room.error) return showJoinError(room.error, ui.room);
    }
    tabStorage.set(STORAGE.name, name.name);
    browserStorage.set(STORAGE.room, room.room);
    ui.room.value = room.room;
    await enterRoom({
      name: name.name,
      user: typeof grant.user === "string" ? grant.user : name.name,
      namespace,
      room: room.room,
      full: room.full,
      token: grant.token,
      expiresIn: Number(grant.expires_in) || 0,
    });
  } finally {
    joining = false;
    ui.join.disabled = false;
    ui.join.textContent = "Join room";
  }
}

async function enterRoom(params) {
  if (session) await session.end();
  ui.messages.replaceChildren();
  ui.online.replaceChildren();
  ui.onlineCount.textContent = "0";
  ui.onlineNote.hidden = true;
  ui.empty.hidden = false;
  ui.jump.hidden = true;
  ui.reconnect.hidden = true;
  ui.message.disabled = false;
  ui.send.disabled = false;
  ui.roomName.textContent = `#${params.room}`;
  ui.me.textContent = params.name;
  ui.roomName.title = params.full;
  ui.joinView.hidden = true;
  ui.chatView.hidden = false;
  document.title = `#${params.room} — hubbub demo chat`;
  ui.message.focus();
  session = new ChatSession(params);
  session.lastParams = params;
  // Not awaited: connecting may take a while (the client retries with backoff); the page is live meanwhile.
  session.start().catch((error) => console.error("demo: the session failed", error));
}

async function leave() {
  const current = session;
  session = null;
  const ending = current?.end(); // stops its handlers at once; the close itself may take a moment
  setStatus("idle", "Not connected");
  ui.chatView.hidden = true;
  ui.joinView.hidden = false;
  document.title = "hubbub demo chat";
  ui.room.focus();
  ui.room.select();
  await ending;
}

async function joinAgain() {
  const current = session;
  if (!current) return;
  ui.reconnect.disabled = true;
  try {
    const grant = await fetchToken(current.name);
    await enterRoom({ ...current.lastParams, token: grant.token, expiresIn: Number(grant.expires_in) || 0 });
  } catch (error) {
    current.notice("error", `Could not join again: ${reasonOf(error)}`);
  } finally {
    ui.reconnect.disabled = false;
  }
}

function sendMessage(event) {
  event.preventDefault();
  const text = ui.message.value.trim();
  if (!text || !session || session.client.state === "closed") return;
  ui.message.value = "";
  session.send(text);
  ui.message.focus();
}

function init() {
  const wanted = new URLSearchParams(location.search).get("room");
  const remembered = tabStorage.get(STORAGE.name);
  ui.name.value = remembered ?? randomName();
  ui.room.value = wanted ?? browserStorage.get(STORAGE.room) ?? DEFAULT_ROOM;
  ui.joinForm.addEventListener("submit", join);
  ui.composer.addEventListener("submit", sendMessage);
  ui.leave.addEventListener("click", leave);
  ui.reconnect.addEventListener("click", joinAgain);
  ui.jump.addEventListener("click", () => session?.scrollToBottom());
  ui.pane.addEventListener("scroll", () => {
    if (session?.nearBottom()) ui.jump.hidden = true;
  });
  for (const input of [ui.name, ui.room]) input.addEventListener("input", () => input.removeAttribute("aria-invalid"));
  // Who is online: beside the messages on wide screens, folded under them on phones.
  const wide = matchMedia("(min-width: 720px)");
  const fold = () => (ui.onlinePanel.open = wide.matches);
  fold();
  wide.addEventListener("change", fold);
  if (remembered) {
    ui.join.focus();
  } else {
    ui.name.focus();
    ui.name.select(); // only a suggestion: typing replaces it
  }
}

init();
