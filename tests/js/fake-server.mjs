// A scripted hubbub server behind a fake WebSocket class, for the hubbub.js unit tests.
//
// `new FakeServer(options).WebSocket` is passed to the client as its `WebSocket` option. Each socket
// the client opens is a FakeSocket: it records what the client sends (`commands`, `frames`) and lets
// the test play the server (`deliver`, `serverClose`, `drop`). By default sockets open on the next
// task and `connect` is answered at once; both can be turned off or scripted.
import assert from "node:assert/strict";
import { afterEach, test as nodeTest } from "node:test";

import { Client } from "../../service/hubbub/static/hubbub.js";

/** node:test's `test` with a timeout: a client that never does what a test waits for fails it, never hangs the run. */
export const test = (name, fn) => nodeTest(name, { timeout: 5000 }, fn);

// Clients a test made: closed after each test, so that a failing test cannot leave one running.
const clients = new Set();
/** A tracked client of `server` with test-sized backoff; `options` override the defaults. */
export function fakeClient(server, options = {}) {
  return track(
    new Client("ws://hubbub.test/ws", { token: "t", WebSocket: server.WebSocket, backoffBase: 10, backoffCap: 20, ...options }),
  );
}

export function track(client) {
  clients.add(client);
  return client;
}
afterEach(async () => {
  await Promise.all([...clients].map((client) => client.close()));
  clients.clear();
});

const TERMINAL = [1000, 1003, 1009, 4000, 4001, 4003, 4004];

export const tick = (ms = 0) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `predicate` until it returns something truthy (returned), failing after `timeout` ms (a bound for
 * a failure only: a busy machine may take a while). */
export async function until(predicate, timeout = 10000, what = String(predicate)) {
  const deadline = performance.now() + timeout;
  for (;;) {
    const value = predicate();
    if (value) return value;
    if (performance.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await tick(2);
  }
}

/** A closed client must leave nothing scheduled (a browser tab would keep waking; Node would not exit). */
export async function assertNoTimers() {
  await tick(0); // let sockets deliver their close events
  const timers = process.getActiveResourcesInfo().filter((name) => name === "Timeout");
  assert.deepEqual(timers, [], "timers left behind");
}

/** The next time `client` is connected. */
export const connected = (client, timeout = 2000) =>
  client.once("state", { filter: (state) => state === "connected", timeout });

/** Captures console.error/console.warn for the duration of `fn`. */
export async function withConsole(fn) {
  const logged = [];
  const saved = { error: console.error, warn: console.warn };
  console.error = (...args) => logged.push(["error", args.map(String).join(" ")]);
  console.warn = (...args) => logged.push(["warn", args.map(String).join(" ")]);
  try {
    await fn(logged);
  } finally {
    Object.assign(console, saved);
  }
  return logged;
}

export class FakeServer {
  constructor(options = {}) {
    this.options = {
      autoOpen: true, // sockets open on the next task
      autoConnect: true, // `connect` is answered at once (see connectReply)
      refuse: false, // sockets fail to open (error + close 1006)
      pingInterval: 25,
      expiresIn: null,
      user: "alice",
      ...options,
    };
    this.sockets = [];
    this.tokens = []; // the token of every connect, in order
    /** Per-room result of a re-join: (name, since) => join result or {error}. */
    this.rejoin = (name, since) => ({ epoch: "e1", offset: since ? since.offset : 0, recovered: !!since, publications: [] });
    const server = this;
    this.WebSocket = class extends FakeSocket {
      constructor(url, protocols) {
        super(server, url, protocols);
      }
    };
  }

  get socket() {
    return this.sockets.at(-1);
  }

  /** The n-th socket the client opened (0-based), once it exists. */
  async nth(n, timeout = 2000) {
    return until(() => this.sockets[n], timeout, `socket #${n}`);
  }

  connectReply(command, socket) {
    const rooms = Object.create(null); // room names may be "__proto__"
    for (const [name, entry] of Object.entries(command.rooms ?? {})) rooms[name] = this.rejoin(name, entry.since ?? null);
    return {
      client: `c${this.sockets.indexOf(socket) + 1}`,
      user: this.options.user,
      expires_in: this.options.expiresIn,
      ping_interval: this.options.pingInterval,
      rooms,
    };
  }
}

class FakeSocket {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSING = 2;
  static CLOSED = 3;

  constructor(server, url, protocols) {
    this.server = server;
    this.url = url;
    this.protocols = protocols;
    this.readyState = 0;
    this.binaryType = "blob";
    this.frames = []; // raw text frames from the client
    this.frameTimes = []; // performance.now() of each frame
    this.commands = []; // parsed messages from the client, in order
    this.closedByClient = null; // {code, reason} when the client called close()
    this.listeners = {};
    this.taken = new Set();
    server.sockets.push(this);
    if (server.options.refuse) setTimeout(() => this.fail(), 0);
    else if (server.options.autoOpen) setTimeout(() => this.open(), 0);
  }

  addEventListener(type, listener) {
    (this.listeners[type] ??= []).push(listener);
  }

  removeEventListener(type, listener) {
    this.listeners[type] = (this.listeners[type] ?? []).filter((l) => l !== listener);
  }

  fire(type, fields = {}) {
    for (const listener of this.listeners[type] ?? []) listener({ type, ...fields });
  }

  // --- the client's side

  send(data) {
    if (this.readyState === 0) throw new Error("InvalidStateError: still in CONNECTING state");
    if (this.readyState !== 1) return; // browsers drop sends on a closing socket silently
    this.frames.push(data);
    this.frameTimes.push(performance.now());
    for (const line of data.split("\n")) {
      const command = JSON.parse(line);
      this.commands.push(command);
      if (command.op === "connect") {
        this.server.tokens.push(command.token);
        if (this.server.options.autoConnect) this.reply(command, this.server.connectReply(command, this));
      }
    }
  }

  close(code, reason) {
    this.closedByClient = { code, reason };
    if (this.readyState === 0) {
      setTimeout(() => this.fail(), 0);
      return;
    }
    if (this.readyState !== 1) return;
    this.readyState = 2;
    setTimeout(() => {
      this.readyState = 3;
      this.fire("close", { code: code ?? 1005, reason: reason ?? "", wasClean: true });
    }, 0);
  }

  // --- the server's side

  open() {
    if (this.readyState !== 0) return;
    this.readyState = 1;
    this.fire("open");
  }

  /** The upgrade failed: what a browser reports for a refused or broken connection. */
  fail() {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.fire("error");
    this.fire("close", { code: 1006, reason: "", wasClean: false });
  }

  /** One text frame holding `messages`, newline-delimited (objects are JSON-encoded). */
  deliver(...messages) {
    assert.equal(this.readyState, 1, "deliver on a socket that is not open");
    const data = messages.map((m) => (typeof m === "string" ? m : JSON.stringify(m))).join("\n");
    this.fire("message", { data });
  }

  deliverBinary() {
    this.fire("message", { data: new ArrayBuffer(4) });
  }

  reply(command, ok) {
    this.deliver({ id: command.id, ok });
  }

  replyError(command, code, reason = "no") {
    this.deliver({ id: command.id, error: { code, reason } });
  }

  /** Closes like hubbub does: a disconnect push (unless push is false), then the close frame. */
  serverClose(code, reason = "bye", { push = true, reconnect = null, frameCode = code } = {}) {
    if (this.readyState !== 1) return;
    if (push) this.deliver({ push: "disconnect", code, reason, reconnect: reconnect ?? !TERMINAL.includes(code) });
    this.readyState = 3;
    this.fire("close", { code: frameCode, reason, wasClean: true });
  }

  /** The network went away: no push, no close frame. */
  drop() {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.fire("close", { code: 1006, reason: "", wasClean: false });
  }

  /** The first command not taken yet that matches (an op name or a predicate); waits for it. */
  async take(match, timeout = 2000) {
    const test = typeof match === "string" ? (c) => c.op === match : match;
    const found = await until(
      () => this.commands.find((c) => !this.taken.has(c) && test(c)),
      timeout,
      `a command ${typeof match === "string" ? match : "matching"}`,
    );
    this.taken.add(found);
    return found;
  }

  ops() {
    return this.commands.map((c) => c.op);
  }
}
