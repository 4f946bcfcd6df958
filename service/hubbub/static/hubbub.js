/**
 * hubbub.js: the browser client of hubbub's WebSocket protocol v1.
 * User guide: docs/browser-client.md. Wire contract: docs/protocol.md. API contract: hubbub.d.ts.
 *
 *     import { Client } from "/hubbub.js";
 *     const client = new Client("wss://rt.example.com/ws", { token: getToken });
 *     await client.connect(); // rejects with ConnectFailed if it cannot (connectTimeout, 30 s)
 *     const room = await client.join("chat:lobby");
 *     room.on("publication", (pub) => render(pub));
 *
 * A port of the Python client (service/hubbub_client/), reviewed and tested against the server:
 * same close-code policy, backoff, refresh margins, offline queue, pacing, re-join and de-dup rules.
 * Where this file differs it is because a browser differs (events instead of iterators, ms instead
 * of seconds, no way to drop a TCP connection without a close frame).
 *
 * Everything fed by the server runs synchronously in the socket's message handler, in wire order:
 * that is what makes "recovered publications before live ones" and de-duplication hold.
 */

const SUBPROTOCOL = "hubbub.v1.json";

/** Protocol v1 close codes (service/hubbub/codes.py). */
export const CloseCodes = Object.freeze({
  NORMAL: 1000,
  UNSUPPORTED_DATA: 1003,
  MESSAGE_TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  DRAINING: 1012,
  OVERLOADED: 1013,
  DISCONNECTED_BY_API: 4000,
  UNAUTHORIZED: 4001,
  FORBIDDEN: 4003,
  PROTOCOL_VIOLATION: 4004,
  SLOW_CONSUMER: 4008,
  TOKEN_EXPIRED: 4009,
  HEARTBEAT_TIMEOUT: 4010,
  INSUFFICIENT_STATE: 4011,
  RATE_LIMITED: 4029,
});

/** After these the server says "do not reconnect" (4001 only with a new token: see actionFor). */
const TERMINAL_CODES = new Set([1000, 1003, 1009, 4000, 4001, 4003, 4004]);
const KNOWN_CODES = new Set(Object.values(CloseCodes));

const DEFAULTS = Object.freeze({
  commandTimeout: 5000,
  backoffBase: 500,
  backoffCap: 20000,
  drainJitter: 5000,
  maxQueue: 1000,
  publishRate: 50,
  publishBurst: 100,
  heartbeatGrace: 10000,
  openTimeout: 10000,
  connectTimeout: 30000,
  maxFrameBytes: 65536,
});
const OPTION_NAMES = new Set([...Object.keys(DEFAULTS), "token", "random", "WebSocket", "logger"]);

/** Connections shorter than this that end "reconnect at once" twice in a row get a backoff delay. */
const MIN_STABLE_CONNECTION = 1000;
/** Timers may fire up to a millisecond before performance.now() reaches their target. */
const TIMER_SLACK = 1;
/** How long the closing handshake may take before the connection is considered gone anyway. */
const CLOSE_TIMEOUT = 2000;
/** A re-join answered 503 changed nothing on the server: ask again on the same connection. */
const UNAVAILABLE = 503;
/** The largest id a command may have: the server counts them with the same limit. */
const MAX_ID = Number.MAX_SAFE_INTEGER;
/** Refresh margin: 10% of the lifetime, at most 30 s, at least 1 s before expiry (ms). */
const REFRESH_FRACTION = 0.1;
const REFRESH_MAX_MARGIN = 30000;
const REFRESH_MIN_MARGIN = 1000;

const CLIENT_EVENTS = ["state", "connected", "disconnect", "connectError", "rejoin", "publication", "presence", "refresh"];
const ROOM_EVENTS = ["publication", "presence", "rejoin", "close"];

// --- errors ----------------------------------------------------------------------------------------

export class ClientError extends Error {}

/** An error reply; the connection stays open. */
export class CommandError extends ClientError {
  constructor(code, reason) {
    super(`${code} ${reason}`);
    this.code = code;
    this.reason = reason;
  }
}

/** No reply in time. For a publish the outcome is unknown: retry with `idempotencyKey`. */
export class CommandTimeout extends ClientError {
  constructor(message, idempotencyKey = null) {
    super(message);
    this.idempotencyKey = idempotencyKey;
  }
}

export class QueueFull extends ClientError {}

export class ClientClosed extends ClientError {
  constructor(disconnect = null) {
    super(disconnect ? `client closed: ${disconnect.code ?? "no close code"} ${disconnect.reason}` : "client closed");
    this.disconnect = disconnect;
  }
}

/**
 * The client never connected and has given up: `connect()` rejects with it. Either `connectTimeout`
 * passed while every attempt failed, or the server closed with a terminal code (4001 invalid token,
 * 4003, ...) before the first `connect` reply, or the WebSocket constructor refused the URL. The
 * client is closed. `message` says what happened in one line; `url`, `attempts`, `cause` (the last
 * attempt's error, null when the server closed with a code: see `disconnect.code`).
 */
export class ConnectFailed extends ClientClosed {
  constructor(message, { url, disconnect, attempts, cause = null }) {
    super(disconnect);
    this.message = message;
    this.url = url;
    this.attempts = attempts;
    this.cause = cause;
  }
}

/** Internal: the connection ended while a command was in flight (commands are retried on reconnect). */
class ConnectionLost extends ClientError {}

/** The server sent something this client cannot read; the connection is dropped and re-made. */
class ProtocolError extends ClientError {}

/** The WebSocket constructor refused the URL (or the page's policy did): retrying cannot help. */
class UnusableUrl extends ClientError {}

// On the prototypes, so that stack traces show them too; literal, so that minifiers cannot mangle them.
for (const [cls, name] of [
  [ClientError, "ClientError"],
  [CommandError, "CommandError"],
  [CommandTimeout, "CommandTimeout"],
  [QueueFull, "QueueFull"],
  [ClientClosed, "ClientClosed"],
  [ConnectFailed, "ConnectFailed"],
  [ConnectionLost, "ConnectionLost"],
  [ProtocolError, "ProtocolError"],
  [UnusableUrl, "UnusableUrl"],
]) {
  cls.prototype.name = name;
}

// --- small helpers ---------------------------------------------------------------------------------

// Monotonic: wall-clock jumps (sleep, NTP) must not fire the idle watchdog or skew the pacer.
const now = () => performance.now();

const isObject = (value) => typeof value === "object" && value !== null && !Array.isArray(value);

function brief(value) {
  let text;
  try {
    text = JSON.stringify(value);
  } catch {
    text = undefined;
  }
  text = text === undefined ? String(value) : text;
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

/** UTF-8 length without allocating: the server's frame limit is in bytes, JS strings are UTF-16. */
function utf8Length(text) {
  let bytes = 0;
  for (let i = 0; i < text.length; i++) {
    const unit = text.charCodeAt(i);
    if (unit < 0x80) bytes += 1;
    else if (unit < 0x800) bytes += 2;
    else if (unit >= 0xd800 && unit <= 0xdbff && (text.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      bytes += 4;
      i++;
    } else bytes += 3;
  }
  return bytes;
}

/** A close reason may be at most 123 bytes; browsers throw beyond. */
function closeReason(text) {
  let reason = String(text);
  while (utf8Length(reason) > 123) reason = reason.slice(0, -1);
  return reason;
}

/** crypto.randomUUID exists only in secure contexts (https, localhost); getRandomValues everywhere. */
function randomKey() {
  const crypto = globalThis.crypto;
  if (typeof crypto?.randomUUID === "function") return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/**
 * Where one client's reports go (options.logger, default console; null: nowhere): `warn` for
 * connection trouble (each failed attempt, giving up, a terminal close), `error` for bugs (a listener
 * that threw, a frame the client cannot read). A logger that throws must not break the client.
 */
class Log {
  constructor(logger) {
    this.logger = logger;
  }

  warn(message) {
    try {
      this.logger?.warn(`hubbub: ${message}`);
    } catch {
      // the application's logger failed: nothing better to report it to
    }
  }

  error(what, error) {
    try {
      this.logger?.error(`hubbub: ${what}`, error);
    } catch {
      // as above
    }
  }
}

/** Calls `fn(value)`; a throw is reported, never propagated (a callback bug must not break the client). */
function safely(log, what, fn, value) {
  try {
    fn(value);
  } catch (error) {
    log.error(what, error);
  }
}

/** Every timer of one owner, so that closing the owner leaves nothing scheduled. */
class Timers {
  #handles = new Map(); // handle -> what to call when cleared (a sleep's resolve), or null

  after(ms, callback, onClear = null) {
    const handle = setTimeout(() => {
      this.#handles.delete(handle);
      callback();
    }, Math.max(0, ms));
    this.#handles.set(handle, onClear);
    return handle;
  }

  cancel(handle) {
    if (handle != null && this.#handles.delete(handle)) clearTimeout(handle);
  }

  /** Resolves true after `ms`, or false as soon as `clear()` is called. */
  sleep(ms) {
    return new Promise((resolve) => this.after(ms, () => resolve(true), resolve));
  }

  clear() {
    const handles = [...this.#handles];
    this.#handles.clear();
    for (const [handle, onClear] of handles) {
      clearTimeout(handle);
      onClear?.(false);
    }
  }
}

// --- events ----------------------------------------------------------------------------------------

class Emitter {
  #names;
  #log;
  #listeners = new Map();
  #waiters = new Set();

  constructor(names, log) {
    this.#names = new Set(names);
    this.#log = log;
  }

  #check(event) {
    if (!this.#names.has(event)) {
      throw new TypeError(`unknown event ${brief(event)} (one of ${[...this.#names].join(", ")})`);
    }
  }

  on(event, listener) {
    this.#check(event);
    if (typeof listener !== "function") throw new TypeError("the listener must be a function");
    const list = this.#listeners.get(event) ?? [];
    list.push(listener);
    this.#listeners.set(event, list);
    return () => this.off(event, listener);
  }

  off(event, listener) {
    const list = this.#listeners.get(event);
    const index = list ? list.indexOf(listener) : -1;
    if (index >= 0) list.splice(index, 1);
  }

  once(event, options = {}) {
    this.#check(event);
    const { filter, timeout } = options ?? {};
    return new Promise((resolve, reject) => {
      const waiter = { event, filter, resolve, reject, timer: null };
      if (timeout != null) {
        waiter.timer = setTimeout(() => {
          this.#waiters.delete(waiter);
          reject(new CommandTimeout(`no "${event}" event within ${timeout} ms`));
        }, Math.max(0, timeout));
      }
      this.#waiters.add(waiter);
    });
  }

  emit(event, value) {
    for (const listener of [...(this.#listeners.get(event) ?? [])]) {
      try {
        const result = listener(value);
        // An async listener that fails must be as visible as a sync one, and never unhandled.
        if (result && typeof result.then === "function") result.then(undefined, (e) => this.#log.error(`a "${event}" listener failed`, e));
      } catch (error) {
        this.#log.error(`a "${event}" listener threw`, error);
      }
    }
    for (const waiter of [...this.#waiters]) {
      if (waiter.event !== event) continue;
      let matched;
      try {
        matched = !waiter.filter || waiter.filter(value);
      } catch (error) {
        this.#settle(waiter, false, error);
        continue;
      }
      if (matched) this.#settle(waiter, true, value);
    }
  }

  /** The owner is gone: nothing will ever match, so pending `once()` calls must not hang. */
  rejectWaiters(error) {
    for (const waiter of [...this.#waiters]) this.#settle(waiter, false, error);
  }

  #settle(waiter, ok, value) {
    this.#waiters.delete(waiter);
    clearTimeout(waiter.timer);
    if (ok) waiter.resolve(value);
    else waiter.reject(value);
  }
}

// --- reconnect policy ------------------------------------------------------------------------------

/** Full jitter: random(0, min(cap, base * 2^n)), n = failures since the last successful connect. */
class Backoff {
  #attempt = 0;

  constructor(base, cap, random) {
    this.base = base;
    this.cap = cap;
    this.random = random;
  }

  ceiling(attempt) {
    return Math.min(this.cap, this.base * 2 ** Math.min(Math.max(attempt, 0), 64));
  }

  next() {
    return this.random() * this.ceiling(this.#attempt++);
  }

  /** A random delay in [0, upper] that does not advance the schedule (after 1012). */
  jitter(upper) {
    return upper > 0 ? this.random() * upper : 0;
  }

  reset() {
    this.#attempt = 0;
  }
}

const Action = Object.freeze({
  STOP: "stop",
  BACKOFF: "backoff",
  AT_ONCE: "at_once", // 4011: recover at once
  DRAIN_DELAY: "drain_delay", // 1012: spread the node's clients over the other nodes
  FRESH_TOKEN: "fresh_token", // 4009: a new token from the callback, then at once
  RETRY_AUTH: "retry_auth", // 4001: once more, only with a different token
});

/** `serverReconnect` (the disconnect push's flag) decides only for codes outside the table. */
function actionFor(code, serverReconnect, hasTokenCallback) {
  if (code === CloseCodes.UNAUTHORIZED) return hasTokenCallback ? Action.RETRY_AUTH : Action.STOP;
  // The same fixed token would only fail again with 4001.
  if (code === CloseCodes.TOKEN_EXPIRED) return hasTokenCallback ? Action.FRESH_TOKEN : Action.STOP;
  if (TERMINAL_CODES.has(code)) return Action.STOP;
  if (code === CloseCodes.INSUFFICIENT_STATE) return Action.AT_ONCE;
  if (code === CloseCodes.DRAINING) return Action.DRAIN_DELAY;
  if (code != null && !KNOWN_CODES.has(code) && code >= 4000 && serverReconnect === false) return Action.STOP;
  return Action.BACKOFF;
}

/**
 * A token bucket that keeps publishes under the server's command rate: a reconnect can release a
 * whole offline backlog at once, and the server answers 429 and then closes 4029 past its burst.
 */
class Pacer {
  #tokens;
  #last = null;

  constructor(rate, burst) {
    this.rate = rate;
    this.burst = burst;
    this.#tokens = burst;
  }

  /** A new connection starts with a full bucket on the server, so here too. */
  reset(time) {
    this.#tokens = this.burst;
    this.#last = time;
  }

  /** Takes a token and returns 0, or returns the ms until one is available (taking nothing). */
  take(time) {
    if (this.#last !== null && time > this.#last) {
      this.#tokens = Math.min(this.burst, this.#tokens + ((time - this.#last) * this.rate) / 1000);
    }
    this.#last = time;
    if (this.#tokens >= 1 - 1e-9) {
      this.#tokens = Math.max(0, this.#tokens - 1);
      return 0;
    }
    return ((1 - this.#tokens) * 1000) / this.rate;
  }
}

// --- tokens ----------------------------------------------------------------------------------------

/** ms from now until a token that expires in `expiresIn` seconds should be refreshed. */
function refreshDelay(expiresIn) {
  const lifetime = expiresIn * 1000;
  const margin = Math.max(REFRESH_MIN_MARGIN, Math.min(REFRESH_FRACTION * lifetime, REFRESH_MAX_MARGIN));
  return Math.max(0, lifetime - margin);
}

class TokenSource {
  #token;
  #timeout;

  /** A callback that never settles must not stall reconnecting: it gets `timeout` ms (openTimeout). */
  constructor(token, timeout) {
    if (token !== null && typeof token !== "string" && typeof token !== "function") {
      throw new TypeError("options.token must be a JWT string, a function returning one, or null");
    }
    this.#token = token;
    this.#timeout = timeout;
  }

  get refreshable() { return typeof this.#token === "function"; }

  /** `timeout` is shorter than openTimeout when the first connect's deadline is nearer. */
  async get(timeout = this.#timeout) {
    if (typeof this.#token !== "function") return this.#token;
    let timer;
    const expired = new Promise((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`the token callback did not answer within ${Math.round(timeout)} ms`)),
        Math.max(0, timeout),
      );
    });
    let token;
    try {
      token = await Promise.race([Promise.resolve().then(() => this.#token()), expired]);
    } finally {
      clearTimeout(timer);
    }
    if (typeof token !== "string" || !token) {
      throw new TypeError(`the token callback must return a non-empty string, got ${brief(token)}`);
    }
    return token;
  }
}

/**
 * Sends `refresh` a margin before each expiry, for one connection. A failed refresh is reported and
 * retried while there is time; if none succeeds the server closes 4009 and the reconnect asks the
 * callback again, so a failure here never needs more than a report.
 */
class TokenRefresher {
  #stopped = false;
  #timers = new Timers();

  constructor(tokens, refresh, onRefresh, log) {
    this.tokens = tokens;
    this.refresh = refresh;
    this.onRefresh = onRefresh;
    this.log = log;
  }

  start(expiresIn) {
    this.#run(expiresIn).catch((error) => this.log.error("token refresh failed", error));
  }

  stop() {
    this.#stopped = true;
    this.#timers.clear();
  }

  async #run(expiresIn) {
    let expiry = now() + expiresIn * 1000;
    let delay = refreshDelay(expiresIn);
    for (;;) {
      if (!(await this.#timers.sleep(delay)) || this.#stopped) return;
      let ok;
      try {
        const token = await this.tokens.get();
        if (this.#stopped || token === null) return;
        ok = await this.refresh(token);
      } catch (error) {
        if (this.#stopped || error instanceof ConnectionLost) return;
        this.onRefresh({ expiresIn: null, error });
        const remaining = expiry - now();
        if (remaining <= 2 * REFRESH_MIN_MARGIN) return;
        delay = Math.min(5000, remaining / 2);
        continue;
      }
      const next = ok.expires_in;
      if (typeof next !== "number" || !Number.isFinite(next)) {
        this.onRefresh({ expiresIn: null, error: null }); // the new token does not expire
        return;
      }
      this.onRefresh({ expiresIn: next, error: null });
      expiry = now() + next * 1000;
      delay = refreshDelay(next);
    }
  }
}

// --- replies and pushes ----------------------------------------------------------------------------
// Strict about the fields the client relies on: anything else is a server bug, reported as such.

function int(obj, name) {
  const value = obj[name];
  if (!Number.isSafeInteger(value)) throw new ProtocolError(`\`${name}\` must be an integer, got ${brief(value)}`);
  return value;
}

function str(obj, name) {
  const value = obj[name];
  if (typeof value !== "string") throw new ProtocolError(`\`${name}\` must be a string, got ${brief(value)}`);
  return value;
}

function object(value, what) {
  if (!isObject(value)) throw new ProtocolError(`${what} must be an object, got ${brief(value)}`);
  return value;
}

const parsePosition = (obj) => ({ epoch: str(obj, "epoch"), offset: int(obj, "offset") });

function parseClientInfo(value) {
  const obj = object(value, "`info`");
  const info = { user: str(obj, "user"), client: str(obj, "client") };
  if (isObject(obj.info)) info.info = obj.info;
  return info;
}

function parsePublication(room, epoch, value) {
  const obj = object(value, "a publication");
  const pub = { room, epoch, offset: int(obj, "offset"), data: obj.data ?? null, ts: int(obj, "ts") };
  if (obj.info != null) pub.info = parseClientInfo(obj.info);
  return pub;
}

function parsePublications(room, epoch, value = []) {
  if (!Array.isArray(value)) throw new ProtocolError("`publications` must be a list");
  return value.map((item) => parsePublication(room, epoch, item));
}

function parseJoin(room, obj) {
  const epoch = str(obj, "epoch");
  if (typeof obj.recovered !== "boolean") throw new ProtocolError("`recovered` must be a boolean");
  return { epoch, offset: int(obj, "offset"), recovered: obj.recovered, publications: parsePublications(room, epoch, obj.publications) };
}

function parseHistory(room, obj) {
  const epoch = str(obj, "epoch");
  return { epoch, offset: int(obj, "offset"), publications: parsePublications(room, epoch, obj.publications) };
}

function parsePresence(obj) {
  const clients = {};
  for (const [id, raw] of Object.entries(object(obj.clients, "`clients`"))) {
    const entry = object(raw, "a presence entry");
    clients[id] = { user: str(entry, "user") };
    if (isObject(entry.info)) clients[id].info = entry.info;
  }
  return { clients };
}

function parsePresenceEvent(obj) {
  return { kind: obj.push, room: str(obj, "room"), info: parseClientInfo(obj.info) };
}

function parseConnected(obj) {
  const expiresIn = obj.expires_in ?? null;
  if (expiresIn !== null && !Number.isFinite(expiresIn)) throw new ProtocolError("`expires_in` must be a number or null");
  const pingInterval = obj.ping_interval;
  if (!Number.isFinite(pingInterval) || pingInterval <= 0) throw new ProtocolError("`ping_interval` must be a positive number");
  return { client: str(obj, "client"), user: str(obj, "user"), expiresIn, pingInterval };
}

function commandError(value) {
  const obj = isObject(value) ? value : {};
  return new CommandError(Number.isInteger(obj.code) ? obj.code : 500, typeof obj.reason === "string" ? obj.reason : "");
}

/** A position the application passes in (`since`). */
function positionParam(since) {
  if (!isObject(since) || typeof since.epoch !== "string" || !Number.isSafeInteger(since.offset) || since.offset < 0) {
    throw new TypeError(`since must be { epoch: string, offset: integer >= 0 }, got ${brief(since)}`);
  }
  return { epoch: since.epoch, offset: since.offset };
}

function checkRoom(room) {
  if (typeof room !== "string" || !room) throw new TypeError(`a room name must be a non-empty string, got ${brief(room)}`);
}

/** The JSON objects of one text frame: newline-delimited, blank lines ignored. Throws on bad JSON. */
function splitFrame(text) {
  const objects = [];
  for (const line of text.split("\n")) {
    if (!line.trim()) continue;
    let value;
    try {
      value = JSON.parse(line);
    } catch (error) {
      throw new ProtocolError(`not JSON: ${brief(line)} (${error.message})`);
    }
    if (!isObject(value)) throw new ProtocolError(`expected a JSON object, got ${brief(line)}`);
    objects.push(value);
  }
  return objects;
}

/**
 * Why a WebSocket did not open. A browser gives scripts no HTTP status for a refused upgrade, only an
 * error event and close code 1006, so a server that is down, a wrong path and a refused origin look
 * the same here (the browser's own console line may name the status); Node's `ws` says more.
 */
function notOpened(event) {
  const detail = typeof event?.message === "string" ? event.message.trim() : "";
  if (detail) return `could not open the WebSocket: ${detail}`;
  return "could not open the WebSocket (the server may be down, the path wrong, or this page's origin not allowed)";
}

// --- one connection --------------------------------------------------------------------------------

/**
 * One WebSocket: batches commands into newline-delimited frames below the server's frame limit,
 * routes replies by id, answers pings, records the `disconnect` push, and declares the connection
 * dead when nothing arrives for the idle timeout. Knows nothing of rooms or reconnects.
 * `closed` resolves with the closure {code, reason, serverReconnect, terminal} however it ends.
 */
class Connection {
  #ws = null;
  #opened = false;
  #done = false;
  #closeRequested = false;
  #nextId = 0;
  #pending = new Map();
  #outgoing = [];
  #flushScheduled = false;
  #timers = new Timers();
  #idleTimer = null;
  #idleTimeout = null;
  #lastReceived = 0;
  #disconnectPush = null;
  #resolveClosed;

  constructor({ WebSocket, url, maxFrameBytes, onPush, onClose, onPing, log }) {
    this.WebSocket = WebSocket;
    this.url = url;
    this.maxFrameBytes = maxFrameBytes;
    this.onPush = onPush;
    this.onClose = onClose;
    this.onPing = onPing;
    this.log = log;
    this.closed = new Promise((resolve) => (this.#resolveClosed = resolve));
  }

  get done() { return this.#done; }

  open(timeout) {
    return new Promise((resolve, reject) => {
      const fail = (error) => {
        if (this.#done) return;
        this.#drop(error.message);
        this.#finish({ code: null, reason: error.message });
        reject(error);
      };
      try {
        this.#ws = new this.WebSocket(this.url, [SUBPROTOCOL]);
      } catch (error) {
        fail(new UnusableUrl(`cannot open a WebSocket to ${this.url}: ${error?.message ?? error}`));
        return;
      }
      const ws = this.#ws;
      const timer = this.#timers.after(timeout, () =>
        fail(new ClientError(`no WebSocket connection within ${Math.round(timeout)} ms`)),
      );
      ws.addEventListener("open", () => {
        if (this.#done) return;
        this.#timers.cancel(timer);
        this.#opened = true;
        this.#lastReceived = now();
        resolve();
      });
      ws.addEventListener("error", (event) => {
        if (!this.#opened) fail(new ClientError(notOpened(event)));
      });
      ws.addEventListener("close", (event) => {
        if (!this.#opened) fail(new ClientError(notOpened(event)));
        else this.#onSocketClose(event);
      });
      ws.addEventListener("message", (event) => this.#onMessage(event));
    });
  }

  // --- sending

  /** Sends a command; `callback` gets the ok payload or an Error exactly once. Throws CommandError(413). */
  submit(op, params, callback) {
    if (this.#done || !this.#opened) {
      callback(new ConnectionLost("the connection is closed"));
      return;
    }
    const id = this.#nextId + 1;
    if (id > MAX_ID) throw new ClientError("command ids exhausted on this connection");
    const encoded = this.#encode({ id, op, ...params });
    this.#nextId = id;
    this.#pending.set(id, callback);
    this.#enqueue(encoded);
  }

  /** Sends a message that expects no reply (pong). */
  send(obj) {
    if (!this.#done && this.#opened) this.#enqueue(this.#encode(obj));
  }

  #encode(obj) {
    const text = JSON.stringify(obj);
    const size = utf8Length(text);
    // Over the limit the server closes 1009 without a word; failing the one command is kinder.
    if (size > this.maxFrameBytes) {
      throw new CommandError(413, `command of ${size} bytes is above the frame limit of ${this.maxFrameBytes}`);
    }
    return [text, size];
  }

  #enqueue(encoded) {
    this.#outgoing.push(encoded);
    if (!this.#flushScheduled) {
      // Everything submitted in the same turn of the event loop goes out in as few frames as fit.
      this.#flushScheduled = true;
      queueMicrotask(() => this.#flush());
    }
  }

  #flush() {
    this.#flushScheduled = false;
    const outgoing = this.#outgoing;
    this.#outgoing = [];
    let i = 0;
    while (i < outgoing.length && !this.#done) {
      const batch = [];
      let total = 0;
      while (i < outgoing.length && (!batch.length || total + outgoing[i][1] + 1 <= this.maxFrameBytes)) {
        batch.push(outgoing[i][0]);
        total += outgoing[i][1] + 1;
        i++;
      }
      try {
        this.#ws.send(batch.join("\n"));
      } catch (error) {
        this.abort(`could not send: ${error?.message ?? error}`);
      }
    }
  }

  // --- receiving

  setIdleTimeout(ms) {
    this.#idleTimeout = ms;
    if (this.#idleTimer === null && !this.#done) this.#watch();
  }

  #watch() {
    const remaining = this.#lastReceived + this.#idleTimeout - now();
    if (remaining <= 0) {
      this.abort(`nothing received from the server for ${Math.round(this.#idleTimeout)} ms`);
      return;
    }
    this.#idleTimer = this.#timers.after(Math.ceil(remaining), () => {
      this.#idleTimer = null;
      this.#watch();
    });
  }

  #onMessage(event) {
    if (this.#done) return;
    this.#lastReceived = now();
    if (typeof event.data !== "string") {
      this.abort("the server sent a binary frame");
      return;
    }
    let objects;
    try {
      objects = splitFrame(event.data);
    } catch (error) {
      this.log.error("invalid frame from the server", error);
      this.abort(`invalid frame from the server: ${error.message}`);
      return;
    }
    for (const obj of objects) {
      if (this.#done) return;
      try {
        this.#dispatch(obj);
      } catch (error) {
        // A bad push, or a bug in the client: never leave a half-dead connection behind.
        const what = error instanceof ProtocolError ? "invalid message from the server" : "client error";
        this.log.error(what, error);
        this.abort(`${what}: ${error?.message ?? error}`);
        return;
      }
    }
  }

  #dispatch(obj) {
    if (obj.id != null) {
      const callback = Number.isInteger(obj.id) ? this.#pending.get(obj.id) : undefined;
      if (!callback) return; // a reply to a command given up on
      this.#pending.delete(obj.id);
      if (isObject(obj.error)) callback(commandError(obj.error));
      else if (isObject(obj.ok)) callback(obj.ok);
      else callback(new ProtocolError(`malformed reply: ${brief(obj)}`));
      return;
    }
    if (obj.push === "ping") {
      this.send({ op: "pong" });
      this.onPing();
    } else if (obj.push === "disconnect") {
      this.#disconnectPush = obj;
    } else {
      this.onPush(this, obj);
    }
  }

  // --- closing

  /** Drops the connection now, without waiting for the closing handshake; the closure has no code. */
  abort(reason) {
    if (this.#done) return;
    this.#drop(reason);
    this.#finish({ code: null, reason });
  }

  close(code = 1000, reason = "") {
    if (!this.#ws) this.#finish({ code: null, reason: "never opened" });
    if (!this.#done && !this.#closeRequested) {
      this.#closeRequested = true;
      try {
        this.#ws.close(code, closeReason(reason));
      } catch {
        this.#drop(reason);
      }
      this.#timers.after(CLOSE_TIMEOUT, () => this.#finish({ code: null, reason: "the closing handshake timed out" }));
    }
    return this.closed;
  }

  /** A browser cannot drop TCP without a close frame; a normal close tells the server the truth. */
  #drop(reason) {
    safely(this.log, "closing the WebSocket failed", (ws) => ws?.close(1000, closeReason(reason)), this.#ws);
  }

  #onSocketClose(event) {
    if (this.#done) return;
    const push = this.#disconnectPush;
    if (push && Number.isInteger(push.code)) {
      this.#finish({
        code: push.code,
        reason: typeof push.reason === "string" ? push.reason : "",
        serverReconnect: typeof push.reconnect === "boolean" ? push.reconnect : null,
      });
    } else if (!event.code || event.code === 1006) {
      this.#finish({ code: null, reason: "connection lost" });
    } else {
      this.#finish({ code: event.code, reason: event.reason || "" });
    }
  }

  #finish(closure) {
    if (this.#done) return;
    this.#done = true;
    this.#timers.clear();
    this.#outgoing = [];
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    const lost = new ConnectionLost(`connection closed: ${closure.reason}`);
    for (const callback of pending) safely(this.log, "a reply callback threw", callback, lost);
    if (this.#opened) safely(this.log, "the close callback threw", this.onClose, this);
    this.#resolveClosed(closure);
  }
}

// --- rooms -----------------------------------------------------------------------------------------

/**
 * One joined room: its position and de-duplication. Fed synchronously in wire order, so its events
 * are a re-join's `rejoin`, then the recovered publications, then live ones.
 *
 * A join reply and the pushes after it can arrive before `await client.join()` returns to the
 * application, and a join with `since` delivers its recovered publications inside the reply. So
 * the room holds its own events until the next task: listeners attached right after the join
 * resolves see everything. (Client-level events are never held.)
 */
class RoomCore {
  #clientEvents;
  #held = [];
  #releaseTimer = null;

  constructor(name, clientEvents, leave, log) {
    this.name = name;
    this.epoch = null;
    this.offset = 0;
    this.recovered = false;
    this.active = true;
    this.log = log;
    this.events = new Emitter(ROOM_EVENTS, log);
    this.leave = leave;
    this.#clientEvents = clientEvents;
    this.handle = new Room(this);
  }

  get position() { return this.epoch === null ? null : { epoch: this.epoch, offset: this.offset }; }

  /** A `join` reply; with `since` it is a resume and returns the Rejoin. */
  joined(result, since) {
    if (since === null) {
      this.epoch = result.epoch;
      this.offset = result.offset;
      this.recovered = false;
      return null;
    }
    this.epoch = since.epoch;
    this.offset = since.offset;
    return this.rejoined(result);
  }

  /** A re-join result (from `connect.rooms`, or a `join` with `since`). */
  rejoined(result) {
    const previous = this.position;
    if (!result.recovered || this.epoch !== result.epoch) {
      // A gap: start over at the room's newest position; offsets of a new epoch are a new sequence.
      this.epoch = result.epoch;
      this.offset = result.offset;
      this.recovered = false;
      const epochChanged = previous !== null && previous.epoch !== result.epoch;
      return this.#rejoin({ room: this.name, recovered: false, epochChanged, previous, position: this.position, error: null });
    }
    this.recovered = true;
    const position = { epoch: result.epoch, offset: Math.max(this.offset, result.offset) };
    const event = this.#rejoin({ room: this.name, recovered: true, epochChanged: false, previous, position, error: null });
    for (const pub of result.publications) {
      if (pub.offset > this.offset) this.#deliver(pub);
    }
    if (result.offset > this.offset) {
      this.log.warn(`room ${this.name}: recovery stopped at ${this.offset}, room offset ${result.offset}`);
      this.offset = result.offset;
    }
    return event;
  }

  /** A `pub` push. Duplicates are dropped; false on a gap (nothing delivered: reconnect to recover). */
  publication(obj) {
    const pub = parsePublication(this.name, this.epoch, obj);
    if (pub.offset <= this.offset) return true;
    if (pub.offset !== this.offset + 1) {
      this.log.warn(`room ${this.name}: gap, expected offset ${this.offset + 1}, got ${pub.offset}`);
      return false;
    }
    this.#deliver(pub);
    return true;
  }

  presence(event) {
    this.#clientEvents.emit("presence", event);
    this.#emit("presence", event);
  }

  /** The re-join failed: report it on both emitters, then close with the error. */
  failed(error) {
    this.#rejoin({ room: this.name, recovered: false, epochChanged: false, previous: this.position, position: null, error });
    this.close(error);
  }

  release() {
    if (this.#held && this.#releaseTimer === null) {
      this.#releaseTimer = setTimeout(() => this.#flush(), 0);
    }
  }

  close(error = null) {
    if (!this.active) return;
    this.#flush();
    this.active = false;
    this.events.emit("close", error);
    this.events.rejectWaiters(error ?? new ClientError(`room ${this.name} is closed`));
  }

  #rejoin(event) {
    this.#clientEvents.emit("rejoin", event);
    this.#emit("rejoin", event);
    return event;
  }

  #deliver(pub) {
    this.offset = pub.offset;
    this.#clientEvents.emit("publication", pub);
    this.#emit("publication", pub);
  }

  #emit(event, value) {
    if (this.#held) this.#held.push([event, value]);
    else if (this.active) this.events.emit(event, value);
  }

  #flush() {
    clearTimeout(this.#releaseTimer);
    this.#releaseTimer = null;
    const held = this.#held ?? [];
    this.#held = null;
    for (const [event, value] of held) {
      if (!this.active) break; // a listener left the room
      this.events.emit(event, value);
    }
  }
}

/** A room joined through `client.join()`. */
export class Room {
  #core;

  constructor(core) {
    if (!(core instanceof RoomCore)) throw new TypeError("rooms come from client.join()");
    this.#core = core;
  }

  get name() { return this.#core.name; }
  get epoch() { return this.#core.epoch; }
  get offset() { return this.#core.offset; }
  get position() { return this.#core.position; }
  get recovered() { return this.#core.recovered; }
  get active() { return this.#core.active; }

  async leave() {
    if (this.#core.active) await this.#core.leave(this.#core.name);
  }

  on(event, listener) { return this.#core.events.on(event, listener); }
  off(event, listener) { this.#core.events.off(event, listener); }
  once(event, options) { return this.#core.events.once(event, options); }
}

/**
 * The rooms of a client across connections: builds the `rooms` map of each `connect`, applies the
 * re-join results, retries a re-join answered 503, and routes pushes to their room.
 */
class Membership {
  #rooms = new Map();
  #timers = new Timers();

  constructor({ request, backoff, log }) {
    this.request = request;
    this.backoff = backoff;
    this.log = log;
  }

  has(name) {
    return this.#rooms.has(name);
  }

  handles() {
    return new Map([...this.#rooms].map(([name, core]) => [name, core.handle]));
  }

  add(core, result, since) {
    this.#rooms.set(core.name, core);
    core.joined(result, since);
    core.release();
  }

  remove(name) {
    const core = this.#rooms.get(name);
    this.#rooms.delete(name);
    return core;
  }

  /** Every room with the position a re-join resumes from. */
  positions() {
    return new Map([...this.#rooms].map(([name, core]) => [name, core.position]));
  }

  static connectRooms(positions) {
    const rooms = Object.create(null); // "__proto__" is a valid room name
    for (const [name, position] of positions) rooms[name] = position ? { since: position } : {};
    return rooms;
  }

  /** The `rooms` of a `connect` reply, applied before anything else of the connection. */
  rejoined(conn, results, sent) {
    const found = isObject(results) ? results : {};
    for (const name of sent.keys()) {
      const core = this.#rooms.get(name);
      const raw = Object.hasOwn(found, name) ? found[name] : undefined;
      if (!core) {
        // Left while the connect was in flight: do not stay joined on the server.
        if (isObject(raw) && !("error" in raw)) conn.submit("leave", { room: name }, () => {});
        continue;
      }
      this.#apply(conn, core, raw);
    }
  }

  #apply(conn, core, raw) {
    if (!isObject(raw)) raw = { error: { code: 500, reason: "the server did not re-join the room" } };
    if (raw.error == null) {
      core.rejoined(parseJoin(core.name, raw));
      return;
    }
    const error = commandError(raw.error);
    if (error.code === UNAVAILABLE) {
      this.#retryRejoin(conn, core).catch((e) => this.log.error("re-join retry failed", e));
      return;
    }
    this.#rooms.delete(core.name);
    core.failed(error);
  }

  async #retryRejoin(conn, core) {
    const retry = new Backoff(this.backoff.base, this.backoff.cap, this.backoff.random);
    const current = () => !conn.done && this.#rooms.get(core.name) === core;
    const onOk = (ok) => {
      if (this.#rooms.get(core.name) === core) this.#apply(conn, core, ok);
      else conn.submit("leave", { room: core.name }, () => {}); // left meanwhile
    };
    while (current()) {
      if (!(await this.#timers.sleep(retry.next())) || !current()) return;
      const params = { room: core.name };
      if (core.position) params.since = core.position;
      try {
        await this.request(conn, "join", params, onOk);
      } catch (error) {
        if (error instanceof CommandError) {
          if (error.code === UNAVAILABLE) continue;
          if (this.#rooms.get(core.name) === core) this.#apply(conn, core, { error: { code: error.code, reason: error.reason } });
        } else if (error instanceof CommandTimeout) {
          conn.abort("a re-join got no reply"); // the next connect re-joins the room
        }
      }
      return;
    }
  }

  /** A `pub`, `join` or `leave` push. */
  push(conn, obj) {
    const core = this.#rooms.get(String(obj.room));
    if (!core || !core.active) return;
    if (obj.push === "pub") {
      if (!core.publication(obj)) conn.abort(`gap in room ${core.name} after offset ${core.offset}`);
    } else if (obj.push === "join" || obj.push === "leave") {
      core.presence(parsePresenceEvent(obj));
    }
  }

  disconnected() {
    this.#timers.clear();
  }

  closeAll(error) {
    this.disconnected();
    const rooms = [...this.#rooms.values()];
    this.#rooms.clear();
    for (const core of rooms) core.close(error);
  }
}

// --- publishing ------------------------------------------------------------------------------------

/**
 * Publishes: queued while offline (bounded), paced while online, sent again with the same
 * idempotency key when a disconnect swallowed the reply, timed out when a sent one gets no reply.
 */
class Publisher {
  #queue = []; // not sent yet, in call order
  #inFlight = new Set(); // sent on the current connection, in send order
  #conn = null;
  #pumpTimer = null;
  #timers = new Timers();
  #pacer;

  constructor({ maxQueue, rate, burst, commandTimeout }) {
    this.maxQueue = maxQueue;
    this.commandTimeout = commandTimeout;
    this.#pacer = new Pacer(rate, burst);
  }

  get queued() { return this.#queue.length; }

  publish(room, data, key) {
    return new Promise((resolve, reject) => {
      const item = { room, data, key, resolve, reject, done: false, timer: null };
      const conn = this.#conn;
      if (conn && !this.#queue.length && this.#pacer.take(now()) === 0) {
        this.#send(conn, item); // the common case: nothing waiting, send at once
        return;
      }
      if (this.#queue.length >= this.maxQueue) {
        throw new QueueFull(`the publish queue is full (${this.maxQueue} publishes waiting)`);
      }
      this.#queue.push(item);
      this.#pump();
    });
  }

  /** A new connection is ready: send the backlog, oldest first. */
  attach(conn) {
    this.#conn = conn;
    this.#pacer.reset(now());
    this.#pump();
  }

  /** The connection ended: publishes without a reply go back to the front of the queue, in order. */
  detach(conn) {
    if (this.#conn !== conn) return;
    this.#conn = null;
    this.#timers.cancel(this.#pumpTimer);
    this.#pumpTimer = null;
    const items = [...this.#inFlight];
    this.#inFlight.clear();
    for (const item of items.reverse()) {
      this.#timers.cancel(item.timer);
      item.timer = null;
      if (!item.done) this.#queue.unshift(item);
    }
  }

  failAll(error) {
    this.#conn = null;
    this.#pumpTimer = null;
    this.#timers.clear();
    const items = [...this.#inFlight, ...this.#queue];
    this.#inFlight.clear();
    this.#queue = [];
    for (const item of items) this.#settle(item, error);
  }

  #settle(item, error, value) {
    if (item.done) return;
    item.done = true;
    this.#timers.cancel(item.timer);
    if (error) item.reject(error);
    else item.resolve(value);
  }

  #send(conn, item) {
    this.#inFlight.add(item);
    item.timer = this.#timers.after(this.commandTimeout, () => {
      item.timer = null;
      if (this.#inFlight.delete(item)) {
        this.#settle(item, new CommandTimeout(`publish: no reply within ${this.commandTimeout} ms`, item.key));
      }
    });
    const params = { room: item.room, data: item.data, idempotency_key: item.key };
    try {
      conn.submit("publish", params, (result) => {
        if (result instanceof ConnectionLost) return; // detach() puts it back in the queue
        if (!this.#inFlight.delete(item)) return; // timed out already
        if (result instanceof Error) {
          this.#settle(item, result);
          return;
        }
        try {
          this.#settle(item, null, parsePosition(result));
        } catch (error) {
          this.#settle(item, error);
        }
      });
    } catch (error) {
      this.#inFlight.delete(item);
      this.#settle(item, error);
    }
  }

  #pump() {
    const conn = this.#conn;
    if (!conn || this.#pumpTimer !== null) return;
    while (this.#queue.length) {
      const wait = this.#pacer.take(now());
      if (wait > 0) {
        this.#pumpTimer = this.#timers.after(Math.ceil(wait), () => {
          this.#pumpTimer = null;
          this.#pump();
        });
        return;
      }
      const item = this.#queue.shift();
      if (!item.done) this.#send(conn, item);
    }
  }
}

// --- the client ------------------------------------------------------------------------------------

function readOptions(options) {
  if (!isObject(options)) throw new TypeError("new Client(url, options): options must be an object with a `token`");
  for (const key of Object.keys(options)) {
    if (!OPTION_NAMES.has(key)) throw new TypeError(`unknown option "${key}" (see hubbub.d.ts)`);
  }
  if (options.token === undefined) throw new TypeError("options.token is required: a JWT, a callback returning one, or null");
  const o = { ...DEFAULTS };
  for (const [key, value] of Object.entries(options)) if (value !== undefined) o[key] = value;
  const check = (name, ok, what) => {
    if (!ok(o[name])) throw new RangeError(`options.${name} must be ${what}, got ${brief(o[name])}`);
  };
  const positive = (v) => Number.isFinite(v) && v > 0;
  const nonNegative = (v) => Number.isFinite(v) && v >= 0;
  check("commandTimeout", positive, "a positive number of ms");
  check("backoffBase", positive, "a positive number of ms");
  check("backoffCap", (v) => positive(v) && v >= o.backoffBase, "a number of ms at least backoffBase");
  check("drainJitter", nonNegative, "a number of ms >= 0");
  check("maxQueue", (v) => Number.isSafeInteger(v) && v >= 0, "an integer >= 0");
  check("publishRate", positive, "a positive number per second");
  check("publishBurst", (v) => Number.isSafeInteger(v) && v >= 1, "an integer >= 1");
  check("heartbeatGrace", nonNegative, "a number of ms >= 0");
  check("openTimeout", positive, "a positive number of ms");
  // null or Infinity: the first connect retries until close() (or the connect() signal aborts).
  check("connectTimeout", (v) => v === null || v === Infinity || positive(v), "a positive number of ms, Infinity or null");
  if (o.connectTimeout === null) o.connectTimeout = Infinity;
  check("maxFrameBytes", (v) => Number.isSafeInteger(v) && v >= 256, "an integer >= 256");
  if (o.random === undefined) o.random = Math.random;
  if (typeof o.random !== "function") throw new TypeError("options.random must be a function returning [0, 1)");
  if (o.WebSocket === undefined) o.WebSocket = globalThis.WebSocket;
  if (typeof o.WebSocket !== "function") {
    throw new TypeError("no WebSocket here: pass options.WebSocket (Node 20 needs --experimental-websocket, or the ws package)");
  }
  if (o.logger === undefined) o.logger = console;
  if (o.logger !== null && (typeof o.logger?.warn !== "function" || typeof o.logger?.error !== "function")) {
    throw new TypeError("options.logger must have warn() and error() methods (console does), or be null");
  }
  return o;
}

/** Absolute ws(s):// URL; http(s):// and, in a page, relative URLs ("/ws") are accepted too. */
function resolveUrl(url) {
  let parsed;
  try {
    parsed = new URL(String(url), globalThis.location?.href);
  } catch {
    throw new TypeError(`not a URL: ${brief(url)}`);
  }
  if (parsed.protocol === "http:") parsed.protocol = "ws:";
  else if (parsed.protocol === "https:") parsed.protocol = "wss:";
  if (parsed.protocol !== "ws:" && parsed.protocol !== "wss:") {
    throw new TypeError(`a hubbub URL must be ws://, wss://, http:// or https://, got ${brief(url)}`);
  }
  parsed.hash = ""; // WebSocket URLs cannot carry a fragment
  return parsed.href;
}

const disconnect = (code, reason, reconnect, delay) => ({ code, reason, reconnect, delay });

/** A closure in a few words: "4029 too many connections", or the reason when there is no code. */
const closureText = (closure) => (closure.code == null ? closure.reason : `${closure.code} ${closure.reason}`.trimEnd());

/** A failed attempt in a few words; a token callback's own error says nothing of where it came from. */
function describe(error, stage) {
  const text = error?.message || String(error);
  return stage === "token" && !text.startsWith("the token callback") ? `the token callback failed: ${text}` : text;
}

const isAbortSignal = (value) => typeof value?.aborted === "boolean" && typeof value?.addEventListener === "function";

export class Client {
  #url;
  #options;
  #log;
  #events;
  #timers = new Timers(); // the runner's sleeps
  #tokens;
  #backoff;
  #membership;
  #publisher;
  #state = "idle";
  #stateWaiters = new Set();
  #conn = null; // set while connected
  #current = null; // the connection being opened or served
  #refresher = null;
  #runner = null;
  #closing = false;
  #closingDone = null;
  #connectedAt = -Infinity;
  #info = null;
  #final = null;
  #failure = null; // the ConnectFailed, when the first connect failed
  #closed;
  #resolveClosed;
  #clientId = null;
  #user = null;
  #attempts = 0;
  #connects = 0;
  #pings = 0;

  constructor(url, options) {
    this.#url = resolveUrl(url);
    const o = (this.#options = readOptions(options));
    this.#log = new Log(o.logger);
    this.#events = new Emitter(CLIENT_EVENTS, this.#log);
    this.#tokens = new TokenSource(o.token, o.openTimeout);
    this.#backoff = new Backoff(o.backoffBase, o.backoffCap, o.random);
    this.#membership = new Membership({ request: (...args) => this.#request(...args), backoff: this.#backoff, log: this.#log });
    this.#publisher = new Publisher({ maxQueue: o.maxQueue, rate: o.publishRate, burst: o.publishBurst, commandTimeout: o.commandTimeout });
    this.#closed = new Promise((resolve) => (this.#resolveClosed = resolve));
  }

  get url() { return this.#url; }
  get state() { return this.#state; }
  get clientId() { return this.#clientId; }
  get user() { return this.#user; }
  get rooms() { return this.#membership.handles(); }
  get queued() { return this.#publisher.queued; }
  get final() { return this.#final; }
  get failure() { return this.#failure; }
  get attempts() { return this.#attempts; }
  get connects() { return this.#connects; }
  get pings() { return this.#pings; }

  on(event, listener) { return this.#events.on(event, listener); }
  off(event, listener) { this.#events.off(event, listener); }
  once(event, options) { return this.#events.once(event, options); }

  // --- lifecycle

  /**
   * Starts the client (once) and resolves with the first `connect` reply. Rejects with ConnectFailed
   * when the first connect fails for good (connectTimeout, a terminal close code), with ClientClosed
   * after close(), and with `signal.reason` when `signal` aborts first, which closes the client: a
   * caller that stops waiting must not leave a client retrying in the background.
   */
  async connect(options = {}) {
    const signal = options?.signal ?? null;
    if (signal !== null && !isAbortSignal(signal)) throw new TypeError("connect({ signal }): signal must be an AbortSignal");
    if (this.#state === "closed") throw this.#closedError();
    const abortReason = () => signal.reason ?? new DOMException("connect() was aborted", "AbortError");
    if (signal?.aborted) {
      await this.#stop("connect() was aborted");
      throw abortReason();
    }
    this.#runner ??= this.#run();
    if (this.#state !== "connected") {
      const settled = this.#waitFor((s) => s === "connected" || s === "closed");
      if (signal === null) await settled;
      else {
        let onAbort;
        const aborted = new Promise((resolve) => {
          onAbort = () => resolve("aborted");
          signal.addEventListener("abort", onAbort, { once: true });
        });
        try {
          if ((await Promise.race([settled, aborted])) === "aborted") {
            await this.#stop("connect() was aborted");
            throw abortReason();
          }
        } finally {
          signal.removeEventListener("abort", onAbort);
        }
      }
    }
    if (this.#state === "closed") throw this.#closedError();
    return this.#info;
  }

  close() {
    return this.#stop("closed by the client");
  }

  #stop(reason) {
    if (this.#state === "closed") return Promise.resolve();
    this.#closingDone ??= (async () => {
      this.#closing = true;
      this.#timers.clear(); // wakes a runner waiting to reconnect
      const current = this.#current;
      if (current) await current.close(1000, reason);
      this.#finish(disconnect(1000, reason, false, null));
    })();
    return this.#closingDone;
  }

  /** What a closed client throws: the first connect's failure if that is how it ended. */
  #closedError() {
    return this.#failure ?? new ClientClosed(this.#final);
  }

  closed() { return this.#closed; }

  // --- commands

  async join(room, options = {}) {
    checkRoom(room);
    const since = options?.since == null ? null : positionParam(options.since);
    if (this.#membership.has(room)) throw new CommandError(409, "already joined");
    const core = new RoomCore(room, this.#events, (name) => this.leave(name), this.#log);
    const params = { room };
    if (since) params.since = since;
    let abandoned = false;
    const sentOn = [];
    const onOk = (ok) => {
      const result = parseJoin(room, ok);
      if (this.#membership.has(room)) return; // a concurrent join won
      if (abandoned || this.#state === "closed") {
        const last = sentOn.at(-1); // joined after all: do not stay joined on the server
        if (last && !last.done) last.submit("leave", { room }, () => {});
        return;
      }
      this.#membership.add(core, result, since);
    };
    try {
      await this.#command("join", params, onOk, sentOn);
    } catch (error) {
      abandoned = true;
      throw error;
    }
    return core.handle;
  }

  async leave(room) {
    checkRoom(room);
    if (this.#state === "closed") throw this.#closedError();
    const core = this.#membership.remove(room);
    core?.close(null);
    const conn = this.#conn;
    if (!conn) {
      if (!core) throw new CommandError(409, "not joined");
      return; // the next connect does not re-join it: that is the leave
    }
    try {
      await this.#request(conn, "leave", { room });
    } catch (error) {
      if (!(error instanceof ConnectionLost)) throw error;
    }
  }

  async publish(room, data, options = {}) {
    checkRoom(room);
    if (this.#state === "closed") throw this.#closedError();
    const key = options?.idempotencyKey ?? randomKey();
    if (typeof key !== "string" || !key) throw new TypeError("idempotencyKey must be a non-empty string");
    let encoded;
    try {
      encoded = JSON.stringify(data);
    } catch (error) {
      throw new TypeError(`publish: data must be a JSON value (${error.message})`);
    }
    if (encoded === undefined) throw new TypeError(`publish: data must be a JSON value, got ${typeof data}`);
    const envelope = JSON.stringify({ id: MAX_ID, op: "publish", room, data: 0, idempotency_key: key });
    const size = utf8Length(envelope) - 1 + utf8Length(encoded);
    // Refuse now rather than after a wait in the queue: a larger frame would close the connection.
    if (size > this.#options.maxFrameBytes) {
      throw new CommandError(413, `publish of ${size} bytes is above the frame limit of ${this.#options.maxFrameBytes}`);
    }
    return this.#publisher.publish(room, data, key);
  }

  async history(room, options = {}) {
    checkRoom(room);
    const params = { room };
    if (options?.since != null) params.since = positionParam(options.since);
    if (options?.limit != null) params.limit = options.limit;
    return parseHistory(room, await this.#command("history", params));
  }

  async presence(room) {
    checkRoom(room);
    return parsePresence(await this.#command("presence", { room }));
  }

  async presenceStats(room) {
    checkRoom(room);
    const ok = await this.#command("presence_stats", { room });
    return { clients: int(ok, "clients"), users: int(ok, "users") };
  }

  /** Waiting for a connection counts against commandTimeout; a command whose connection was lost
   * before its reply is sent again on the next one. */
  async #command(op, params, onOk = null, sentOn = null) {
    const deadline = now() + this.#options.commandTimeout;
    for (;;) {
      const conn = await this.#connection(op, deadline);
      sentOn?.push(conn);
      try {
        return await this.#request(conn, op, params, onOk, deadline - now());
      } catch (error) {
        if (!(error instanceof ConnectionLost)) throw error;
      }
    }
  }

  async #connection(op, deadline) {
    for (;;) {
      if (this.#state === "closed") throw this.#closedError();
      if (this.#conn) return this.#conn;
      const remaining = deadline - now();
      if (remaining <= 0) throw new CommandTimeout(`${op}: no connection within ${this.#options.commandTimeout} ms`);
      await this.#waitFor((s) => s === "connected" || s === "closed", remaining);
    }
  }

  /** `onOk` runs synchronously when the ok reply arrives, even after a timeout, before any later
   * message: the join bookkeeping depends on it. */
  #request(conn, op, params, onOk = null, timeout = this.#options.commandTimeout) {
    return new Promise((resolve, reject) => {
      let settled = false;
      const timer = setTimeout(() => {
        settled = true;
        reject(new CommandTimeout(`${op}: no reply within ${this.#options.commandTimeout} ms`));
      }, Math.max(0, timeout));
      const outcome = (result) => {
        if (!(result instanceof Error) && onOk) {
          try {
            onOk(result);
          } catch (error) {
            result = error;
          }
        }
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (result instanceof Error) reject(result);
        else resolve(result);
      };
      try {
        conn.submit(op, params, outcome);
      } catch (error) {
        settled = true;
        clearTimeout(timer);
        reject(error);
      }
    });
  }

  #waitFor(predicate, timeout = Infinity) {
    return new Promise((resolve) => {
      const waiter = { predicate, timer: null, done: null };
      waiter.done = (value) => {
        this.#stateWaiters.delete(waiter);
        clearTimeout(waiter.timer);
        resolve(value);
      };
      if (Number.isFinite(timeout)) waiter.timer = setTimeout(() => waiter.done(false), Math.max(0, timeout));
      this.#stateWaiters.add(waiter);
    });
  }

  // --- the runner: connect, serve, decide by close code, repeat

  async #run() {
    let final;
    try {
      final = await this.#loop();
    } catch (error) {
      this.#log.error("the client runner failed", error); // a bug: never leave the application waiting
      final = disconnect(null, `client error: ${error?.message ?? error}`, false, null);
    } finally {
      this.#current?.abort("client closed");
    }
    if (final) this.#finish(final);
  }

  /**
   * Connect, serve, and reconnect until a terminal close (returned) or close() (null).
   *
   * Until the first `connect` reply every step runs against the connectTimeout deadline, and a
   * terminal close code ends the client at once with a ConnectFailed (which connect() rejects with).
   * Once connected, the client reconnects whatever happens short of a terminal code: a rollout behind
   * an ingress may fail for a while, and a client that was working should come back on its own.
   */
  async #loop() {
    const deadline = now() + this.#options.connectTimeout; // Infinity: no deadline
    let everConnected = false;
    let lastError = null; // the last failed attempt, for ConnectFailed
    let lastCause = "no attempt finished";
    let override = null; // the new token of a 4001 retry
    let authRetried = false;
    let quick = 0; // "at once" reconnects in a row after connections shorter than MIN_STABLE_CONNECTION
    let failures = 0; // failed attempts in a row
    while (!this.#closing) {
      const limit = everConnected ? Infinity : deadline;
      if (limit - now() < TIMER_SLACK) return this.#timedOut(lastError, lastCause);
      this.#setState("connecting");
      let token = null;
      let conn;
      let stage = "token";
      try {
        token = override ?? (await this.#tokens.get(this.#bounded(this.#options.openTimeout, limit)));
        override = null;
        if (this.#closing) break;
        stage = "open";
        conn = await this.#open(this.#bounded(this.#options.openTimeout, limit));
      } catch (error) {
        if (this.#closing) break;
        if (error instanceof UnusableUrl) return this.#giveUp(error.message, error);
        const cut = limit - now() < TIMER_SLACK;
        // An attempt cut short by the deadline says less than the failure before it.
        if (cut && failures > 0) return this.#timedOut(lastError, lastCause);
        failures += 1;
        lastError = error;
        lastCause = describe(error, stage);
        if (cut) return this.#timedOut(lastError, lastCause);
        const delay = this.#backoff.next();
        this.#setState("reconnecting");
        if (!this.#closing) this.#events.emit("connectError", { attempt: failures, error, delay });
        await this.#retryAfter(failures, lastCause, delay, limit);
        continue;
      }
      const { closure, connected } = await this.#serve(conn, token, limit);
      if (this.#closing) break;
      if (connected) {
        everConnected = true;
        failures = 0;
        authRetried = false;
      }
      let action = closure.terminal
        ? Action.STOP
        : actionFor(closure.code, closure.serverReconnect ?? null, this.#tokens.refreshable);
      let delay = null;
      if (action === Action.RETRY_AUTH) {
        const fresh = authRetried ? null : await this.#freshToken();
        if (this.#closing) break;
        if (fresh === null || fresh === token) action = Action.STOP;
        else [authRetried, override, delay] = [true, fresh, 0];
      } else if (action === Action.AT_ONCE || action === Action.FRESH_TOKEN) {
        // At once; but when short-lived connections keep ending this way, back off (growing with
        // each one in a row) so that a server repeating the close cannot cause a tight loop.
        const lived = connected ? now() - this.#connectedAt : 0; // closed before the reply: no time at all
        quick = lived < MIN_STABLE_CONNECTION ? quick + 1 : 0;
        delay = quick <= 1 ? 0 : this.#backoff.jitter(this.#backoff.ceiling(quick - 2));
      } else if (action === Action.DRAIN_DELAY) {
        delay = this.#backoff.jitter(this.#options.drainJitter);
      } else if (action === Action.BACKOFF) {
        delay = this.#backoff.next();
      }
      const event = disconnect(closure.code, closure.reason, action !== Action.STOP, delay);
      if (action === Action.STOP) {
        if (!everConnected) return this.#giveUp(this.#closureMessage(closure), null, event);
        this.#log.warn(`connection to ${this.#url} ended for good: ${closureText(closure)}`);
        return event;
      }
      if (!connected && failures > 0 && limit - now() < TIMER_SLACK) return this.#timedOut(lastError, lastCause); // as above
      this.#setState("reconnecting");
      if (!this.#closing) this.#events.emit("disconnect", event);
      if (connected) {
        await this.#pause(delay);
      } else {
        // The server closed before answering `connect` (1013 overloaded, 4029, ...): a failed attempt.
        failures += 1;
        lastError = null;
        lastCause = closureText(closure);
        await this.#retryAfter(failures, lastCause, delay, limit);
      }
    }
    return null;
  }

  /** `ms`, or less when the deadline `limit` is nearer: an attempt must not outlive connectTimeout. */
  #bounded(ms, limit) {
    return Math.max(TIMER_SLACK, Math.min(ms, limit - now()));
  }

  /**
   * Reports a failed attempt and waits before the next one, or only until the first connect's
   * deadline. One line per attempt: the backoff bounds the rate during a long outage (on average
   * one per backoffCap / 2 once the backoff reaches its cap).
   */
  async #retryAfter(attempt, cause, delay, limit) {
    const what = `connect attempt ${attempt} to ${this.#url} failed: ${cause}`;
    if (now() + delay >= limit) {
      delay = Math.max(0, limit - now());
      this.#log.warn(`${what}; giving up in ${Math.round(delay)} ms (connectTimeout ${this.#options.connectTimeout} ms)`);
    } else {
      this.#log.warn(`${what}; retrying in ${Math.round(delay)} ms`);
    }
    await this.#pause(delay);
  }

  /** Ends the first connect for good: records the ConnectFailed for connect() and returns the final Disconnect. */
  #giveUp(message, cause, final = null) {
    final ??= disconnect(null, message, false, null);
    this.#failure = new ConnectFailed(message, { url: this.#url, disconnect: final, attempts: this.#attempts, cause });
    this.#log.warn(`giving up: ${message}`);
    return final;
  }

  #timedOut(error, cause) {
    const attempts = `${this.#attempts} attempt${this.#attempts === 1 ? "" : "s"}`;
    const within = `within ${this.#options.connectTimeout} ms (${attempts})`;
    return this.#giveUp(`could not connect to ${this.#url} ${within}; last error: ${cause}`, error);
  }

  #closureMessage(closure) {
    if (closure.code == null) return `connecting to ${this.#url} failed: ${closure.reason}`;
    return `close code ${closure.code} from ${this.#url}: ${closure.reason}`;
  }

  /** A listener may have called close(): a closed client must not leave a timer behind. */
  async #pause(delay) {
    if (!this.#closing && delay > 0) await this.#timers.sleep(delay);
  }

  async #freshToken() {
    try {
      return await this.#tokens.get();
    } catch (error) {
      this.#log.error("the token callback failed", error);
      return null;
    }
  }

  async #open(timeout) {
    const o = this.#options;
    const conn = new Connection({
      WebSocket: o.WebSocket,
      url: this.#url,
      maxFrameBytes: o.maxFrameBytes,
      onPush: (c, obj) => this.#membership.push(c, obj),
      onClose: (c) => this.#onClose(c),
      onPing: () => (this.#pings += 1),
      log: this.#log,
    });
    this.#attempts += 1;
    this.#current = conn; // so that close() can stop an open in progress
    try {
      await conn.open(timeout);
    } catch (error) {
      if (this.#current === conn) this.#current = null;
      throw error;
    }
    return conn;
  }

  /** Sends `connect` (re-joining every room with its position), then waits for the end. The reply is
   * awaited for commandTimeout, or until `limit` (the first connect's deadline) if sooner. */
  async #serve(conn, token, limit) {
    const sent = this.#membership.positions();
    const params = {};
    if (token !== null) params.token = token;
    if (sent.size) params.rooms = Membership.connectRooms(sent);
    let connected = false;
    const timeout = this.#bounded(this.#options.commandTimeout, limit);
    try {
      await this.#request(conn, "connect", params, (ok) => {
        this.#connected(conn, parseConnected(ok), ok.rooms, sent);
        connected = true;
      }, timeout);
    } catch (error) {
      if (error instanceof CommandError) {
        // Never expected: this client sends well-formed connects. Retrying would repeat it.
        await conn.close(1000, "connect refused");
        if (this.#current === conn) this.#current = null;
        return { closure: { code: null, reason: `connect refused: ${error.message}`, terminal: true }, connected };
      }
      if (error instanceof CommandTimeout) conn.abort(`no reply to connect within ${Math.round(timeout)} ms`);
      else if (!(error instanceof ConnectionLost)) conn.abort(`connect failed: ${error.message}`);
    }
    const closure = await conn.closed;
    if (this.#current === conn) this.#current = null;
    return { closure, connected };
  }

  /** The `connect` reply arrived (in the message handler, before any later message). */
  #connected(conn, info, rooms, sent) {
    this.#clientId = info.client;
    this.#user = info.user;
    this.#info = info;
    this.#connects += 1;
    this.#connectedAt = now();
    conn.setIdleTimeout(info.pingInterval * 1000 + this.#options.heartbeatGrace);
    this.#backoff.reset();
    this.#conn = conn;
    this.#membership.rejoined(conn, rooms, sent);
    this.#publisher.attach(conn);
    if (info.expiresIn !== null && this.#tokens.refreshable) {
      this.#refresher = new TokenRefresher(
        this.#tokens,
        (token) => this.#request(conn, "refresh", { token }),
        (event) => this.#events.emit("refresh", event),
        this.#log,
      );
      this.#refresher.start(info.expiresIn);
    }
    this.#setState("connected");
    this.#events.emit("connected", info);
  }

  /** A connection ended (in its handler): unanswered publishes go back to the queue. */
  #onClose(conn) {
    if (this.#conn === conn) this.#conn = null;
    this.#refresher?.stop();
    this.#refresher = null;
    this.#membership.disconnected();
    this.#publisher.detach(conn);
  }

  #setState(state) {
    if (state === this.#state || this.#state === "closed") return;
    this.#state = state;
    for (const waiter of [...this.#stateWaiters]) if (waiter.predicate(state)) waiter.done(true);
    this.#events.emit("state", state);
  }

  #finish(final) {
    if (this.#state === "closed") return;
    this.#final = final;
    this.#conn = null;
    this.#refresher?.stop();
    this.#refresher = null;
    this.#timers.clear();
    const error = this.#failure ?? new ClientClosed(final);
    this.#publisher.failAll(error);
    this.#membership.closeAll(this.#closing ? null : error);
    this.#setState("closed");
    this.#events.emit("disconnect", final);
    this.#resolveClosed(final);
    this.#events.rejectWaiters(error);
  }
}

/** Pure pieces, exported for the unit tests only (not part of the API, may change). */
export const _internals = Object.freeze({ Backoff, Pacer, actionFor, refreshDelay, splitFrame, utf8Length });
