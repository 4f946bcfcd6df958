// The first connect: it gives up after connectTimeout or at a terminal close code with a ConnectFailed
// that says what went wrong, reports every failed attempt, and stops for good when closed or aborted.
import assert from "node:assert/strict";

import { Client, ClientClosed, ConnectFailed } from "../../service/hubbub/static/hubbub.js";
import { FakeServer, assertNoTimers, connected, fakeClient, test, tick, track, until, withConsole } from "./fake-server.mjs";

const URL = "ws://hubbub.test/ws";

/** A logger that keeps its lines, so that a test can read them without touching the console. */
function recorder() {
  const lines = [];
  return { lines, warn: (message) => lines.push(message), error: (message) => lines.push(`error: ${message}`) };
}

/** What `promise` settles with, failing the test if it takes longer than `ms` (and leaving no timer). */
async function within(promise, ms, what) {
  let timer;
  const late = new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`no ${what} within ${ms} ms`)), ms)));
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** Whether the client makes no attempt at all over `ms` (several backoff delays of these tests). */
async function assertNoMoreAttempts(server, ms = 150) {
  const before = server.sockets.length;
  await tick(ms);
  assert.equal(server.sockets.length, before, "an attempt after the client stopped");
}

test("nothing within connectTimeout: connect() rejects with ConnectFailed, attempts and last cause, the client closed", async () => {
  const server = new FakeServer({ refuse: true });
  const logger = recorder();
  const client = fakeClient(server, { connectTimeout: 200, logger });
  const started = performance.now();
  const error = await client.connect().then(
    () => assert.fail("connected to a server that refuses every connection"),
    (e) => e,
  );
  const took = performance.now() - started;
  assert.ok(error instanceof ConnectFailed && error instanceof ClientClosed, String(error));
  assert.equal(error.name, "ConnectFailed");
  // Not before the deadline; the upper bound leaves a busy machine room and still fails the 30 s default.
  assert.ok(took >= 195 && took < 2000, `gave up after ${took} ms`);
  assert.ok(error.attempts >= 3, `${error.attempts} attempts`);
  assert.equal(error.attempts, server.sockets.length);
  assert.equal(error.attempts, client.attempts);
  assert.equal(error.url, URL);
  assert.match(error.cause.message, /could not open the WebSocket \(the server may be down, the path wrong/);
  assert.equal(
    error.message,
    `could not connect to ${URL} within 200 ms (${error.attempts} attempts); last error: ${error.cause.message}`,
  );
  assert.deepEqual(error.disconnect, { code: null, reason: error.message, reconnect: false, delay: null });
  assert.equal(client.state, "closed");
  assert.equal(client.failure, error);
  assert.equal(client.final, error.disconnect);
  await assert.rejects(client.connect(), (e) => e === error);
  await assertNoMoreAttempts(server);
  await assertNoTimers();
});

test("an attempt still in progress at the deadline is abandoned: an open that hangs, a connect reply that never comes", async () => {
  const hanging = new FakeServer({ autoOpen: false });
  const client = fakeClient(hanging, { connectTimeout: 100, openTimeout: 10000 });
  const started = performance.now();
  const error = await client.connect().catch((e) => e);
  assert.ok(error instanceof ConnectFailed, String(error));
  assert.ok(performance.now() - started < 5000, "waited for openTimeout (10 s) instead of the deadline");
  assert.equal(error.attempts, 1);
  assert.match(error.message, /within 100 ms \(1 attempt\); last error: no WebSocket connection within \d+ ms$/);
  assert.ok(hanging.socket.closedByClient, "the opening socket was left open");

  const silent = new FakeServer({ autoConnect: false });
  const logger = recorder();
  const second = fakeClient(silent, { connectTimeout: 100, commandTimeout: 10000, logger });
  const failed = await second.connect().catch((e) => e);
  assert.ok(failed instanceof ConnectFailed, String(failed));
  assert.equal(failed.attempts, 1);
  assert.match(failed.message, /within 100 ms \(1 attempt\); last error: no reply to connect within \d+ ms$/);
  assert.equal(failed.cause, null);
  assert.equal(logger.lines.length, 2, logger.lines.join("\n"));
  assert.match(logger.lines[0], /^hubbub: connect attempt 1 to .* failed: no reply to connect within \d+ ms; giving up in 0 ms \(connectTimeout 100 ms\)$/);
  assert.equal(logger.lines[1], `hubbub: giving up: ${failed.message}`);
  await assertNoMoreAttempts(silent);
  await assertNoTimers();
});

test("a server that closes before the connect reply (1013) is retried until the deadline; the message has its code", async () => {
  const server = new FakeServer({ autoConnect: false });
  const client = fakeClient(server, { connectTimeout: 500 }); // room for two attempts on a busy machine
  const connecting = client.connect().catch((e) => e);
  let answered = 0;
  const closing = (async () => {
    while (client.state !== "closed") {
      const socket = await until(() => server.sockets[answered] ?? (client.state === "closed" && "done"));
      if (socket === "done") return;
      await socket.take("connect");
      socket.serverClose(1013, "overloaded");
      answered += 1;
    }
  })();
  const error = await connecting;
  await closing;
  assert.ok(error instanceof ConnectFailed, String(error));
  assert.ok(error.attempts >= 2, `${error.attempts} attempts`);
  assert.match(error.message, /last error: 1013 overloaded$/);
  assert.equal(error.cause, null);
});

for (const code of [4001, 4003, 4000, 4004]) {
  test(`close ${code} before the first connect reply rejects at once with ConnectFailed`, async () => {
    const server = new FakeServer({ autoConnect: false });
    const client = fakeClient(server, { token: "fixed" }); // 4001 with a fixed token cannot go away either
    const connecting = client.connect();
    const socket = await server.nth(0);
    await socket.take("connect");
    const closedAt = performance.now();
    socket.serverClose(code, "not you");
    const error = await connecting.catch((e) => e);
    // At once: the upper bound leaves a busy machine room; retrying would run into the 30 s connectTimeout.
    assert.ok(performance.now() - closedAt < 2000, "did not reject at once");
    assert.ok(error instanceof ConnectFailed, String(error));
    assert.equal(error.message, `close code ${code} from ${URL}: not you`);
    assert.deepEqual(error.disconnect, { code, reason: "not you", reconnect: false, delay: null });
    assert.equal(error.attempts, 1);
    assert.equal(error.cause, null);
    await assertNoMoreAttempts(server);
    await assertNoTimers();
  });
}

test("4001 with a token callback: one more try with a fresh token, then ConnectFailed", async () => {
  const server = new FakeServer({ autoConnect: false });
  let calls = 0;
  const client = fakeClient(server, { token: async () => `t${++calls}`, connectTimeout: 60000 });
  const connecting = client.connect().catch((e) => e);
  for (const n of [0, 1]) {
    const socket = await server.nth(n);
    await socket.take("connect");
    socket.serverClose(4001, "invalid token");
  }
  const error = await connecting;
  assert.ok(error instanceof ConnectFailed, String(error));
  assert.equal(error.attempts, 2);
  assert.deepEqual(server.tokens, ["t1", "t2"]);
  assert.equal(error.message, `close code 4001 from ${URL}: invalid token`);
});

test("a WebSocket constructor that refuses the URL fails the first connect at once", async () => {
  class Refusing {
    constructor() {
      throw new SyntaxError("The URL's scheme must be either 'ws' or 'wss'");
    }
  }
  const client = track(new Client(URL, { token: "t", WebSocket: Refusing }));
  const error = await client.connect().catch((e) => e);
  assert.ok(error instanceof ConnectFailed, String(error));
  assert.equal(error.attempts, 1);
  assert.match(error.message, /cannot open a WebSocket to ws:\/\/hubbub\.test\/ws: The URL's scheme/);
  await assertNoTimers();
});

test("commands and publishes waiting for the first connect fail with the ConnectFailed", async () => {
  const server = new FakeServer({ refuse: true });
  const client = fakeClient(server, { connectTimeout: 100, commandTimeout: 10000 });
  const connecting = client.connect().catch((e) => e);
  const joining = client.join("chat:lobby").catch((e) => e);
  const publishing = client.publish("chat:lobby", { text: "hi" }).catch((e) => e);
  const error = await connecting;
  assert.ok(error instanceof ConnectFailed);
  assert.equal(await joining, error);
  assert.equal(await publishing, error);
  await assert.rejects(client.publish("chat:lobby", 1), (e) => e === error);
});

test("close() during the first connect stops every further attempt", async () => {
  const server = new FakeServer({ refuse: true });
  const client = fakeClient(server);
  const connecting = client.connect().catch((e) => e);
  await server.nth(2);
  await client.close();
  const error = await connecting;
  assert.ok(error instanceof ClientClosed && !(error instanceof ConnectFailed), String(error));
  assert.equal(client.failure, null);
  await assertNoMoreAttempts(server);
  await assertNoTimers();
});

test("aborting connect()'s signal closes the client: it rejects with the signal's reason, no attempt follows", async () => {
  const server = new FakeServer({ refuse: true });
  const client = fakeClient(server);
  const controller = new AbortController();
  const connecting = client.connect({ signal: controller.signal }).catch((e) => e);
  await server.nth(2);
  controller.abort();
  const error = await within(connecting, 10000, "connect() settling after the abort");
  assert.equal(error.name, "AbortError");
  assert.equal(client.state, "closed");
  assert.deepEqual(client.final, { code: 1000, reason: "connect() was aborted", reconnect: false, delay: null });
  await assertNoMoreAttempts(server);
  await assertNoTimers();

  // A socket being opened when the signal aborts is closed, and nothing is opened after it.
  const hanging = new FakeServer({ autoOpen: false });
  const second = fakeClient(hanging);
  const timeout = second.connect({ signal: AbortSignal.timeout(50) }).catch((e) => e);
  assert.equal((await timeout).name, "TimeoutError");
  assert.equal(hanging.sockets.length, 1);
  assert.ok(hanging.socket.closedByClient);
  await assertNoMoreAttempts(hanging);
  await assertNoTimers();
});

test("an aborted signal stops connect() before any attempt; an abort after connect() resolved does nothing", async () => {
  const server = new FakeServer();
  const client = fakeClient(server);
  await assert.rejects(client.connect({ signal: AbortSignal.abort() }), (e) => e.name === "AbortError");
  assert.equal(server.sockets.length, 0);
  assert.equal(client.state, "closed");

  const other = fakeClient(server);
  const controller = new AbortController();
  await other.connect({ signal: controller.signal });
  controller.abort();
  await tick(10);
  assert.equal(other.state, "connected");
  await assert.rejects(other.connect({ signal: "soon" }), TypeError);
});

test("a warning per failed attempt, with the cause and the next delay, and one when giving up", async () => {
  const server = new FakeServer({ refuse: true });
  const logged = await withConsole(async () => {
    // Long enough for four attempts even when a busy machine fires the timers late (about 15 when idle).
    const client = fakeClient(server, { backoffBase: 20, backoffCap: 80, random: () => 0.5, connectTimeout: 600 });
    await assert.rejects(client.connect(), ConnectFailed);
  });
  const attempts = server.sockets.length;
  const cause = "could not open the WebSocket (the server may be down, the path wrong, or this page's origin not allowed)";
  assert.ok(logged.every(([level]) => level === "warn"));
  const lines = logged.map(([, line]) => line);
  const giving = lines.pop();
  assert.match(giving, /^hubbub: giving up: could not connect to ws:\/\/hubbub\.test\/ws within 600 ms/);
  // One line per failed attempt (an attempt the deadline cut short has none: the message says the deadline).
  assert.ok(lines.length >= 4 && lines.length >= attempts - 1 && lines.length <= attempts, lines.join("\n"));
  const delay = (i) => Math.min(40, 10 * 2 ** i); // half of each ceiling: 20, 40, then the 80 ms cap
  const last = lines.pop();
  lines.forEach((line, i) =>
    assert.equal(line, `hubbub: connect attempt ${i + 1} to ${URL} failed: ${cause}; retrying in ${delay(i)} ms`),
  );
  // The last attempt says it gives up at the deadline, or, when a timer firing late overshot the
  // deadline, the retry that did not happen.
  const final = `hubbub: connect attempt ${lines.length + 1} to ${URL} failed: ${cause}; `;
  assert.ok(last.startsWith(final), last);
  assert.match(last.slice(final.length), /^giving up in \d+ ms \(connectTimeout 600 ms\)$|^retrying in 40 ms$/);
});

test("without a connectTimeout option the attempts are reported too, one line each", async () => {
  const server = new FakeServer({ refuse: true });
  let failures = 0;
  const logged = await withConsole(async () => {
    const client = fakeClient(server, { backoffBase: 20, backoffCap: 20 });
    client.on("connectError", () => (failures += 1));
    client.connect().catch(() => {});
    await server.nth(3);
    await client.close();
  });
  const warnings = logged.filter(([level, line]) => level === "warn" && / failed: could not open the WebSocket/.test(line));
  assert.ok(failures >= 3);
  assert.equal(warnings.length, failures, logged.join("\n"));
});

test("the logger option receives the reports; null keeps the console quiet", async () => {
  const server = new FakeServer({ refuse: true });
  const logger = recorder();
  const logged = await withConsole(async () => {
    await assert.rejects(fakeClient(server, { connectTimeout: 60, logger }).connect(), ConnectFailed);
    await assert.rejects(fakeClient(server, { connectTimeout: 60, logger: null }).connect(), ConnectFailed);
  });
  assert.deepEqual(logged, []);
  assert.ok(logger.lines.length >= 2 && logger.lines.at(-1).startsWith("hubbub: giving up: "), logger.lines.join("\n"));
  const WebSocket = server.WebSocket;
  assert.throws(() => new Client(URL, { token: null, WebSocket, logger: { warn() {} } }), /logger must have warn\(\) and error\(\)/);
});

test("only the first connect is bounded: once connected, the client reconnects past connectTimeout", async () => {
  const server = new FakeServer();
  const client = fakeClient(server, { connectTimeout: 50, logger: null });
  await client.connect();
  server.options.refuse = true;
  server.socket.drop();
  await server.nth(4); // several refused attempts, past 50 ms
  await tick(60);
  assert.notEqual(client.state, "closed");
  server.options.refuse = false;
  await connected(client);
  assert.equal(client.failure, null);
});

test("connectTimeout: null (or Infinity) retries until closed; other values are refused", async () => {
  const server = new FakeServer({ refuse: true });
  const client = fakeClient(server, { connectTimeout: null, logger: null, backoffBase: 5, backoffCap: 5 });
  client.connect().catch(() => {});
  await tick(100);
  assert.notEqual(client.state, "closed");
  await client.close();
  fakeClient(server, { connectTimeout: Infinity });
  for (const bad of [0, -1, "30s", Number.NaN]) {
    assert.throws(() => new Client(URL, { token: null, connectTimeout: bad }), RangeError);
  }
});
