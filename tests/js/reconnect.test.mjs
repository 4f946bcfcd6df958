// What hubbub.js does after a connection ends: the close-code policy, backoff, tokens on reconnect.
import assert from "node:assert/strict";

import { ClientClosed } from "../../service/hubbub/static/hubbub.js";
import { FakeServer, assertNoTimers, connected, fakeClient, test, tick } from "./fake-server.mjs";

/** Tokens "t1", "t2", ... from a callback, counting the calls. */
function tokenSequence() {
  const source = async () => `t${++source.calls}`;
  source.calls = 0;
  return source;
}

function setup(serverOptions = {}, clientOptions = {}) {
  const server = new FakeServer(serverOptions);
  const client = fakeClient(server, { token: "fixed", backoffBase: 20, backoffCap: 80, random: () => 0.5, ...clientOptions });
  const disconnects = [];
  client.on("disconnect", (d) => disconnects.push(d));
  return { server, client, disconnects };
}

for (const code of [1000, 1003, 1009, 4000, 4003, 4004]) {
  test(`close ${code} is terminal: the client stops, whatever the token`, async () => {
    const { server, client, disconnects } = setup({}, { token: tokenSequence() });
    await client.connect();
    server.socket.serverClose(code, "go away");
    const final = await client.closed();
    assert.deepEqual(final, { code, reason: "go away", reconnect: false, delay: null });
    assert.deepEqual(disconnects, [final]);
    assert.equal(client.state, "closed");
    await assert.rejects(client.connect(), (e) => e instanceof ClientClosed && e.disconnect === final);
    await tick(50);
    assert.equal(server.sockets.length, 1);
    await assertNoTimers();
  });
}

test("4001 with a fixed token stops at once", async () => {
  const { server, client } = setup({ autoConnect: false });
  const connecting = client.connect();
  const socket = await server.nth(0);
  await socket.take("connect");
  socket.serverClose(4001, "invalid token");
  await assert.rejects(connecting, (e) => e instanceof ClientClosed && e.disconnect.code === 4001);
  assert.equal(client.attempts, 1);
  assert.deepEqual(client.final, { code: 4001, reason: "invalid token", reconnect: false, delay: null });
});

test("4001: the callback is asked once more; the same token again stops the client", async () => {
  const token = async () => {
    token.calls += 1;
    return "same";
  };
  token.calls = 0;
  const { server, client } = setup({ autoConnect: false }, { token });
  const connecting = client.connect();
  const socket = await server.nth(0);
  await socket.take("connect"); // a server can only close 4001 an open connection that sent its token
  socket.serverClose(4001, "invalid token");
  await assert.rejects(connecting, ClientClosed);
  assert.equal(token.calls, 2);
  assert.equal(server.sockets.length, 1);
});

test("4001: a different token from the callback is tried at once, and only once", async () => {
  const token = tokenSequence();
  const { server, client, disconnects } = setup({}, { token });
  await client.connect();
  server.sockets[0].serverClose(4001, "token revoked");
  await connected(client);
  assert.deepEqual(server.tokens, ["t1", "t2"]);
  assert.deepEqual(disconnects[0], { code: 4001, reason: "token revoked", reconnect: true, delay: 0 });
  // A successful connect in between: the next 4001 gets its own retry...
  server.sockets[1].serverClose(4001, "token revoked");
  await connected(client);
  assert.deepEqual(server.tokens, ["t1", "t2", "t3"]);
  // ...but a retry that fails 4001 again before connecting stops the client.
  server.options.autoConnect = false;
  server.sockets[2].serverClose(4001, "token revoked");
  const socket = await server.nth(3);
  await socket.take("connect");
  socket.serverClose(4001, "still revoked");
  const final = await client.closed();
  assert.equal(final.code, 4001);
  assert.equal(final.reason, "still revoked");
  assert.equal(token.calls, 4);
});

test("4009 reconnects at once with a fresh token from the callback; with a fixed token it stops", async () => {
  const token = tokenSequence();
  const { server, client, disconnects } = setup({}, { token });
  await client.connect();
  server.socket.serverClose(4009, "token expired");
  await connected(client);
  assert.deepEqual(disconnects, [{ code: 4009, reason: "token expired", reconnect: true, delay: 0 }]);
  assert.deepEqual(server.tokens, ["t1", "t2"]);
  await client.close();

  const fixed = setup();
  await fixed.client.connect();
  fixed.server.socket.serverClose(4009, "token expired");
  assert.deepEqual(await fixed.client.closed(), { code: 4009, reason: "token expired", reconnect: false, delay: null });
  await assertNoTimers();
});

test("4011 reconnects at once; repeated quickly it backs off, growing; a stable connection resets that", async () => {
  const { server, client, disconnects } = setup();
  await client.connect();
  for (let i = 0; i < 3; i++) {
    server.socket.serverClose(4011, "insufficient state");
    await connected(client);
  }
  // random() = 0.5, base 20: at once, then 0.5 * 20, then 0.5 * 40.
  assert.deepEqual(disconnects.map((d) => d.delay), [0, 10, 20]);
  assert.ok(disconnects.every((d) => d.code === 4011 && d.reconnect));
  await tick(1050); // a connection that lived more than a second
  server.socket.serverClose(4011, "insufficient state");
  await connected(client);
  assert.equal(disconnects.at(-1).delay, 0);
  await client.close();
});

test("1012 (draining) reconnects after a random delay in [0, drainJitter]", async () => {
  const { server, client, disconnects } = setup({}, { drainJitter: 120, random: () => 0.25 });
  await client.connect();
  const closedAt = performance.now();
  const reconnected = connected(client); // before the close: the reconnect may complete while nth() polls
  server.socket.serverClose(1012, "node draining");
  await server.nth(1);
  const waited = performance.now() - closedAt;
  assert.deepEqual(disconnects, [{ code: 1012, reason: "node draining", reconnect: true, delay: 30 }]);
  assert.ok(waited >= 28, `reconnected after ${waited} ms`);
  await reconnected;
  await client.close();
});

test("other codes, and a lost connection, reconnect after a backoff delay", async () => {
  const { server, client, disconnects } = setup();
  await client.connect();
  for (const code of [1011, 1013, 4008, 4010, 4029]) {
    server.socket.serverClose(code, `closed ${code}`);
    await connected(client);
  }
  server.socket.drop();
  await connected(client);
  assert.deepEqual(
    disconnects.map((d) => [d.code, d.delay]),
    // Each reconnect succeeded, so each delay is drawn from the first step: 0.5 * 20.
    [[1011, 10], [1013, 10], [4008, 10], [4010, 10], [4029, 10], [null, 10]],
  );
  assert.equal(disconnects.at(-1).reason, "connection lost");
  await client.close();
});

test("backoff grows with failures in a row, within [0, ceiling], and resets after a successful connect", async () => {
  const draws = [];
  const random = () => {
    draws.push(1);
    return 0.999;
  };
  const { server, client, disconnects } = setup({ refuse: true }, { random, backoffBase: 10, backoffCap: 40 });
  const errors = [];
  client.on("connectError", (e) => {
    errors.push(e);
    if (errors.length === 4) server.options.refuse = false;
  });
  const states = [];
  client.on("state", (s) => states.push(s));
  client.connect();
  await connected(client);
  assert.deepEqual(errors.map((e) => e.attempt), [1, 2, 3, 4]);
  const ceilings = [10, 20, 40, 40];
  errors.forEach((e, i) => assert.ok(e.delay <= ceilings[i] && e.delay > ceilings[i] * 0.99, `${e.delay} vs ${ceilings[i]}`));
  assert.match(errors[0].error.message, /could not open the WebSocket/);
  assert.deepEqual(states.slice(0, 4), ["connecting", "reconnecting", "connecting", "reconnecting"]);
  assert.equal(client.attempts, 5);
  server.socket.drop();
  await connected(client);
  assert.ok(disconnects[0].delay <= 10, "the schedule starts over after a connect");
  await client.close();
  await assertNoTimers();
});

test("a code outside the table backs off, unless the server's push said reconnect: false", async () => {
  const { server, client, disconnects } = setup();
  await client.connect();
  server.socket.serverClose(4321, "custom", { reconnect: true });
  await connected(client);
  server.socket.serverClose(4321, "custom, no push", { push: false });
  await connected(client);
  server.socket.serverClose(4321, "custom, final", { reconnect: false });
  const final = await client.closed();
  assert.deepEqual(
    disconnects.map((d) => [d.code, d.reconnect, d.delay]),
    [[4321, true, 10], [4321, true, 10], [4321, false, null]],
  );
  assert.equal(final.reason, "custom, final");
});

test("a token callback that fails is a failed attempt, retried with backoff", async () => {
  let failing = true;
  const token = async () => {
    if (failing) throw new Error("token service down");
    return "good";
  };
  const { server, client } = setup({}, { token });
  const failed = client.once("connectError");
  client.connect();
  const error = await failed;
  assert.equal(error.error.message, "token service down");
  assert.equal(server.sockets.length, 0); // no socket without a token
  failing = false;
  await connected(client);
  assert.deepEqual(server.tokens, ["good"]);
  await client.close();
});

test("close() while waiting to reconnect stops at once", async () => {
  const { server, client } = setup({}, { backoffBase: 5000, backoffCap: 5000 });
  await client.connect();
  server.socket.serverClose(1011, "oops");
  await client.once("state", { filter: (s) => s === "reconnecting" });
  const started = performance.now();
  await client.close();
  assert.ok(performance.now() - started < 1000); // not after the 5 s backoff (room for a busy machine)
  assert.equal(server.sockets.length, 1);
  await assertNoTimers();
});

test("close() from a listener while the client is about to wait stops it cleanly", async () => {
  const { server, client, disconnects } = setup({ refuse: true }, { backoffBase: 5000, backoffCap: 5000 });
  client.on("connectError", () => client.close());
  await assert.rejects(client.connect(), ClientClosed);
  assert.deepEqual(disconnects, [{ code: 1000, reason: "closed by the client", reconnect: false, delay: null }]);
  await assertNoTimers();

  const second = setup({}, { backoffBase: 5000, backoffCap: 5000 });
  await second.client.connect();
  second.client.on("state", (s) => s === "reconnecting" && second.client.close());
  second.server.socket.serverClose(1011, "oops");
  assert.equal((await second.client.closed()).code, 1000);
  assert.deepEqual(second.disconnects.map((d) => d.code), [1000]);
  assert.equal(server.sockets.length, 1);
  await assertNoTimers();
});
