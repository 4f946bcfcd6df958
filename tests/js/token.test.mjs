// Token refresh in hubbub.js: scheduled a margin before expiry, through the callback, on the same connection.
import assert from "node:assert/strict";

import { Client, CommandError } from "../../service/hubbub/static/hubbub.js";
import { FakeServer, assertNoTimers, connected, fakeClient, test, tick, track } from "./fake-server.mjs";

function setup(serverOptions = {}, clientOptions = {}) {
  const server = new FakeServer(serverOptions);
  const token = async () => {
    if (token.fail) throw new Error("token service down");
    return `t${++token.calls}`;
  };
  token.calls = 0;
  token.fail = false;
  const client = fakeClient(server, { token, ...clientOptions });
  const refreshes = [];
  client.on("refresh", (r) => refreshes.push(r));
  return { server, client, token, refreshes };
}

test("the token is refreshed a margin before it expires, with a fresh one from the callback", async () => {
  // 1.5 s lifetime: the margin is its minimum, 1 s, so the refresh comes after 0.5 s.
  const { server, client, refreshes } = setup({ expiresIn: 1.5 });
  await client.connect();
  const start = performance.now();
  const socket = server.socket;
  const refresh = await socket.take("refresh");
  const waited = performance.now() - start;
  // Not before the margin; the upper bound (room for a busy machine) is still well before the expiry at 1.5 s.
  assert.ok(waited >= 490 && waited < 1000, `refreshed after ${waited} ms`);
  assert.deepEqual(refresh, { id: refresh.id, op: "refresh", token: "t2" });
  socket.reply(refresh, { expires_in: 1.2 }); // the next one 0.2 s later
  const second = await socket.take("refresh");
  const between = performance.now() - start - waited;
  assert.ok(between >= 190 && between < 800, `second refresh after ${between} ms`); // expiry: 1.2 s
  assert.equal(second.token, "t3");
  socket.reply(second, { expires_in: null }); // a token without expiry: nothing more to do
  await tick(20);
  assert.deepEqual(refreshes, [
    { expiresIn: 1.2, error: null },
    { expiresIn: null, error: null },
  ]);
  assert.equal(client.connects, 1);
  await client.close();
  await assertNoTimers();
});

test("a fixed token is never refreshed", async () => {
  const server = new FakeServer({ expiresIn: 0.3 });
  const client = track(new Client("ws://hubbub.test/ws", { token: "fixed", WebSocket: server.WebSocket }));
  await client.connect();
  await tick(350);
  assert.deepEqual(server.socket.ops(), ["connect"]);
  await client.close();
});

test("a failed refresh is reported; when the token runs out (4009) the reconnect asks the callback again", async () => {
  const { server, client, token, refreshes } = setup({ expiresIn: 1.1 });
  await client.connect();
  const socket = server.socket;
  socket.replyError(await socket.take("refresh"), 401, "invalid token");
  await tick(10);
  assert.equal(refreshes.length, 1);
  assert.ok(refreshes[0].error instanceof CommandError && refreshes[0].error.code === 401);
  assert.equal(refreshes[0].expiresIn, null);
  server.options.expiresIn = null;
  token.fail = true; // a callback that throws is reported the same way
  socket.serverClose(4009, "token expired");
  const failed = await client.once("connectError");
  assert.equal(failed.error.message, "token service down");
  token.fail = false;
  await connected(client);
  assert.deepEqual(server.tokens, ["t1", "t3"]);
});

test("a refresh is not retried on a connection that ended; the next connection has its own schedule", async () => {
  const { server, client } = setup({ expiresIn: 1.2 });
  await client.connect();
  server.options.expiresIn = null;
  server.sockets[0].drop();
  await connected(client);
  await tick(300); // past the first connection's refresh time
  assert.deepEqual(server.sockets.map((s) => s.ops()), [["connect"], ["connect"]]);
  await client.close();
  await assertNoTimers();
});

test("a token callback that never answers fails the attempt after openTimeout, and the next attempt asks again", async () => {
  const server = new FakeServer();
  let calls = 0;
  const token = () => (++calls === 1 ? new Promise(() => {}) : Promise.resolve(`t${calls}`));
  const client = track(
    new Client("ws://hubbub.test/ws", { token, WebSocket: server.WebSocket, openTimeout: 150, backoffBase: 10, backoffCap: 20 }),
  );
  const started = performance.now();
  const failed = client.once("connectError");
  const connecting = client.connect();
  const error = (await failed).error;
  assert.match(error.message, /did not answer within 150 ms/);
  assert.ok(performance.now() - started >= 140);
  await connecting;
  assert.equal(calls, 2);
  assert.deepEqual(server.tokens, ["t2"]);
  await client.close();
  await assertNoTimers();
});
