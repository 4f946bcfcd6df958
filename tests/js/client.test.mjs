// hubbub.js against a scripted fake server: connecting, framing, commands, heartbeat, closing.
import assert from "node:assert/strict";

import {
  Client,
  ClientClosed,
  ClientError,
  CommandError,
  CommandTimeout,
  Room,
} from "../../service/hubbub/static/hubbub.js";
import { FakeServer, assertNoTimers, fakeClient, test, tick, until, withConsole } from "./fake-server.mjs";

const URL = "ws://hubbub.test/ws";

function setup(serverOptions = {}, clientOptions = {}) {
  const server = new FakeServer(serverOptions);
  const client = fakeClient(server, { token: "jwt-1", backoffCap: 40, ...clientOptions });
  return { server, client };
}

test("connect offers the subprotocol, sends the token in `connect` (never in the URL) and resolves", async () => {
  const { server, client } = setup({ expiresIn: 3600, pingInterval: 25 });
  const states = [];
  client.on("state", (s) => states.push(s));
  const connectedEvents = [];
  client.on("connected", (c) => connectedEvents.push(c));
  assert.equal(client.state, "idle");
  const info = await client.connect();
  assert.deepEqual(info, { client: "c1", user: "alice", expiresIn: 3600, pingInterval: 25 });
  assert.deepEqual(connectedEvents, [info]);
  assert.deepEqual(states, ["connecting", "connected"]);
  const socket = server.socket;
  assert.equal(socket.url, URL);
  assert.deepEqual(socket.protocols, ["hubbub.v1.json"]);
  assert.deepEqual(socket.commands[0], { id: 1, op: "connect", token: "jwt-1" });
  assert.equal(client.clientId, "c1");
  assert.equal(client.user, "alice");
  assert.deepEqual([client.attempts, client.connects], [1, 1]);
  assert.deepEqual(await client.connect(), info); // already connected: at once
  await client.close();
  await assertNoTimers();
});

test("URLs: http(s) is mapped to ws(s), fragments dropped; bad URLs and options fail at once", () => {
  const WebSocket = new FakeServer().WebSocket;
  assert.equal(new Client("https://rt.example.com/ws#x", { token: null, WebSocket }).url, "wss://rt.example.com/ws");
  assert.equal(new Client("http://localhost:8000/ws", { token: null, WebSocket }).url, "ws://localhost:8000/ws");
  assert.throws(() => new Client("/ws", { token: null, WebSocket }), /not a URL/); // no page to resolve against
  assert.throws(() => new Client("ftp://x/ws", { token: null, WebSocket }), /ws:\/\//);
  assert.throws(() => new Client(URL, { WebSocket }), /token is required/);
  assert.throws(() => new Client(URL, { token: 42, WebSocket }), TypeError);
  assert.throws(() => new Client(URL, { token: null, WebSocket, backoffBase: -1 }), RangeError);
  assert.throws(() => new Client(URL, { token: null, WebSocket, backoffBase: 100, backoffCap: 50 }), /backoffCap/);
  assert.throws(() => new Client(URL, { token: null, WebSocket, maxQueue: 1.5 }), /maxQueue/);
  assert.throws(() => new Client(URL, { token: null, WebSocket, commandTimeoutMs: 5 }), /unknown option "commandTimeoutMs"/);
  assert.throws(() => new Client(URL, { token: null, WebSocket: undefined }), /no WebSocket/);
  assert.throws(() => new Room({}), TypeError);
  // Options left undefined (spread from an application's config) take the defaults.
  assert.ok(new Client(URL, { token: null, WebSocket, commandTimeout: undefined }));
});

test("an anonymous client sends no token", async () => {
  const { server, client } = setup({}, { token: null });
  await client.connect();
  assert.deepEqual(server.socket.commands[0], { id: 1, op: "connect" });
  await client.close();
});

test("a batched frame is split into its messages, handled in order", async () => {
  const { server, client } = setup();
  await client.connect();
  const socket = server.socket;
  const joining = client.join("chat:a");
  const join = await socket.take("join");
  const pubs = [];
  client.on("publication", (p) => pubs.push(p.offset));
  socket.deliver(
    { id: join.id, ok: { epoch: "e1", offset: 4, recovered: false, publications: [] } },
    { push: "pub", room: "chat:a", offset: 5, data: "x", ts: 1 },
    "",
    { push: "ping" },
    { push: "pub", room: "chat:a", offset: 6, data: "y", ts: 2 },
  );
  assert.deepEqual(pubs, [5, 6]);
  const room = await joining;
  assert.equal(room.offset, 6);
  assert.equal(client.pings, 1);
  await client.close();
});

test("commands issued together go out in one newline-delimited frame, batches stay below maxFrameBytes", async () => {
  const { server, client } = setup({}, { maxFrameBytes: 300 });
  await client.connect();
  const socket = server.socket;
  const frames = socket.frames.length;
  const replies = [client.presenceStats("chat:a"), client.presenceStats("chat:b"), client.presenceStats("chat:c")];
  await until(() => socket.commands.length === 4);
  assert.equal(socket.frames.length, frames + 1);
  assert.equal(socket.frames.at(-1).split("\n").length, 3);
  for (const c of socket.commands.slice(1)) socket.reply(c, { clients: 1, users: 1 });
  await Promise.all(replies);

  // Larger commands: several frames, each within the limit.
  const big = "x".repeat(100);
  const histories = Array.from({ length: 5 }, (_, i) => client.history(`chat:${big}${i}`));
  await until(() => socket.commands.length === 9);
  const sent = socket.frames.slice(frames + 1);
  assert.ok(sent.length >= 3, `${sent.length} frames`);
  for (const frame of sent) assert.ok(new TextEncoder().encode(frame).length <= 300);
  for (const c of socket.commands.slice(4)) socket.reply(c, { epoch: "e", offset: 0, publications: [] });
  await Promise.all(histories);

  // A single command above the limit is refused locally: nothing is sent.
  const before = socket.commands.length;
  await assert.rejects(client.history("chat:" + "y".repeat(400)), (e) => e instanceof CommandError && e.code === 413);
  await tick(5);
  assert.equal(socket.commands.length, before);
  assert.equal(client.state, "connected");
  await client.close();
});

test("replies are matched to commands by id, whatever their order", async () => {
  const { server, client } = setup();
  await client.connect();
  const socket = server.socket;
  const a = client.presenceStats("chat:a");
  const b = client.presenceStats("chat:b");
  const [ca, cb] = [await socket.take("presence_stats"), await socket.take("presence_stats")];
  assert.notEqual(ca.id, cb.id);
  socket.deliver({ id: cb.id, ok: { clients: 2, users: 2 } }, { id: 999, ok: {} }, { id: ca.id, ok: { clients: 1, users: 1 } });
  assert.deepEqual(await a, { clients: 1, users: 1 });
  assert.deepEqual(await b, { clients: 2, users: 2 });
  await client.close();
});

test("an error reply rejects with CommandError; the connection stays open", async () => {
  const { server, client } = setup();
  await client.connect();
  const socket = server.socket;
  const joining = client.join("admin:audit");
  socket.replyError(await socket.take("join"), 403, "the token does not allow reading this room");
  await assert.rejects(joining, (e) => {
    assert.ok(e instanceof CommandError && e instanceof ClientError);
    assert.equal(e.name, "CommandError");
    assert.equal(e.code, 403);
    assert.equal(e.reason, "the token does not allow reading this room");
    return true;
  });
  assert.equal(client.state, "connected");
  assert.equal(client.rooms.size, 0);
  const presence = client.presence("chat:a");
  socket.reply(await socket.take("presence"), { clients: { c9: { user: "bob", info: { name: "Bob" } }, c8: { user: "eve" } } });
  assert.deepEqual(await presence, { clients: { c9: { user: "bob", info: { name: "Bob" } }, c8: { user: "eve" } } });
  await client.close();
});

test("no reply within commandTimeout rejects with CommandTimeout", async () => {
  const { server, client } = setup({}, { commandTimeout: 60 });
  await client.connect();
  const started = performance.now();
  await assert.rejects(client.history("chat:a"), (e) => e instanceof CommandTimeout && e.idempotencyKey === null);
  const elapsed = performance.now() - started;
  // Not before the 60 ms timeout; the upper bound leaves a busy machine room and still fails the 5 s default.
  assert.ok(elapsed >= 55 && elapsed < 2000, `${elapsed} ms`);
  assert.equal(server.socket.commands.at(-1).op, "history");
  await client.close();
  await assertNoTimers();
});

test("commands issued before the connection is up wait for it, within commandTimeout", async () => {
  const { server, client } = setup({ autoConnect: false }, { commandTimeout: 300 });
  client.connect();
  const history = client.history("chat:a", { since: { epoch: "e1", offset: 3 }, limit: 10 });
  const socket = await server.nth(0);
  const connect = await socket.take("connect");
  await tick(30);
  assert.deepEqual(socket.ops(), ["connect"]); // nothing before the connect reply
  socket.reply(connect, server.connectReply(connect, socket));
  const command = await socket.take("history");
  assert.deepEqual(command, { id: command.id, op: "history", room: "chat:a", since: { epoch: "e1", offset: 3 }, limit: 10 });
  socket.reply(command, { epoch: "e1", offset: 4, publications: [{ offset: 4, data: { t: 1 }, ts: 7, info: { user: "bob", client: "c2" } }] });
  assert.deepEqual(await history, {
    epoch: "e1",
    offset: 4,
    publications: [{ room: "chat:a", epoch: "e1", offset: 4, data: { t: 1 }, ts: 7, info: { user: "bob", client: "c2" } }],
  });
  await client.close();
});

test("a command with no connection within commandTimeout rejects with CommandTimeout", async () => {
  const { client } = setup({ refuse: true }, { commandTimeout: 50, backoffBase: 20, backoffCap: 20 });
  client.connect().catch(() => {});
  await assert.rejects(client.presence("chat:a"), (e) => e instanceof CommandTimeout && /no connection/.test(e.message));
  await client.close();
  await assertNoTimers();
});

test("a command whose connection was lost before its reply is sent again on the next one", async () => {
  const { server, client } = setup({}, { commandTimeout: 1000 });
  await client.connect();
  const stats = client.presenceStats("chat:a");
  await server.sockets[0].take("presence_stats");
  server.sockets[0].drop();
  const socket = await server.nth(1);
  const again = await socket.take("presence_stats");
  socket.reply(again, { clients: 5, users: 4 });
  assert.deepEqual(await stats, { clients: 5, users: 4 });
  await client.close();
});

test("pings are answered with pong and counted", async () => {
  const { server, client } = setup();
  await client.connect();
  const socket = server.socket;
  socket.deliver({ push: "ping" });
  socket.deliver({ push: "ping" });
  await until(() => socket.commands.filter((c) => c.op === "pong").length === 2);
  assert.deepEqual(socket.commands.at(-1), { op: "pong" }); // no id: no reply expected
  assert.equal(client.pings, 2);
  await client.close();
});

test("a silent connection is declared dead after pingInterval + heartbeatGrace and replaced", async () => {
  const { server, client } = setup({ pingInterval: 0.06 }, { heartbeatGrace: 40 });
  await client.connect();
  const socket = server.socket;
  const lost = client.once("disconnect");
  // Traffic keeps it alive well past the idle timeout of 100 ms...
  for (let i = 0; i < 5; i++) {
    await tick(40);
    socket.deliver({ push: "ping" });
  }
  assert.equal(server.sockets.length, 1);
  const started = performance.now();
  // ...then silence.
  const d = await lost;
  const silent = performance.now() - started;
  // Not before the 100 ms idle timeout; the upper bound leaves a busy machine room, far below the defaults.
  assert.ok(silent >= 90 && silent < 2000, `declared dead after ${silent} ms`);
  assert.equal(d.code, null);
  assert.equal(d.reconnect, true);
  assert.match(d.reason, /nothing received from the server for 100 ms/);
  assert.deepEqual(socket.closedByClient?.code, 1000);
  await client.once("state", { filter: (s) => s === "connected", timeout: 500 });
  assert.equal(client.connects, 2);
  await client.close();
  await assertNoTimers();
});

test("the disconnect push's code and reason are preferred over the close frame's", async () => {
  const { server, client } = setup();
  await client.connect();
  const lost = client.once("disconnect");
  server.socket.serverClose(4008, "slow consumer", { frameCode: 1006 });
  const d = await lost;
  assert.equal(d.code, 4008);
  assert.equal(d.reason, "slow consumer");
  assert.equal(d.reconnect, true);
  // Without a push, the close frame's code; 1006 is "connection lost", no code.
  await client.once("state", { filter: (s) => s === "connected" });
  const next = client.once("disconnect");
  server.socket.serverClose(1011, "oops", { push: false });
  assert.equal((await next).code, 1011);
  await client.once("state", { filter: (s) => s === "connected" });
  const dropped = client.once("disconnect");
  server.socket.drop();
  assert.deepEqual(await dropped, { ...(await dropped), code: null, reason: "connection lost" });
  await client.close();
});

test("a frame that is not JSON is logged and the connection is replaced", async () => {
  const { server, client } = setup();
  await client.connect();
  const logged = await withConsole(async () => {
    const lost = client.once("disconnect");
    server.socket.deliver("this is not json");
    const d = await lost;
    assert.equal(d.code, null);
    assert.equal(d.reconnect, true);
    assert.match(d.reason, /invalid frame from the server/);
    await client.once("state", { filter: (s) => s === "connected" });
  });
  assert.ok(logged.some(([level, text]) => level === "error" && /invalid frame/.test(text)));
  // A binary frame, or a malformed push, too.
  const binary = client.once("disconnect");
  server.socket.deliverBinary();
  assert.match((await binary).reason, /binary frame/);
  await client.once("state", { filter: (s) => s === "connected" });
  const joining = client.join("chat:a");
  server.socket.reply(await server.socket.take("join"), { epoch: "e", offset: 0, recovered: false, publications: [] });
  await joining;
  await withConsole(async () => {
    const malformed = client.once("disconnect");
    server.socket.deliver({ push: "pub", room: "chat:a", offset: "one", data: 1, ts: 1 });
    assert.match((await malformed).reason, /invalid message from the server: `offset` must be an integer/);
  });
  assert.equal(client.state, "reconnecting");
  await client.close();
});

test("listener exceptions are logged, never fatal; once() filters and times out", async () => {
  const { server, client } = setup();
  const seen = [];
  const logged = await withConsole(async () => {
    const offs = [
      client.on("state", () => {
        throw new Error("listener bug");
      }),
      client.on("state", async () => {
        throw new Error("async listener bug");
      }),
      client.on("state", (s) => seen.push(s)),
    ];
    await client.connect();
    await tick(0);
    for (const off of offs) off();
  });
  assert.deepEqual(seen, ["connecting", "connected"]);
  assert.equal(logged.filter(([level]) => level === "error").length, 4);
  assert.throws(() => client.on("publish", () => {}), /unknown event "publish"/);
  await assert.rejects(client.once("presence", { timeout: 20 }), CommandTimeout);
  const pinged = client.once("disconnect", { filter: (d) => d.code === 4010 });
  server.socket.serverClose(4029, "rate limited");
  await client.once("state", { filter: (s) => s === "connected" });
  server.socket.serverClose(4010, "heartbeat timeout");
  assert.equal((await pinged).code, 4010);
  const never = client.once("presence");
  await client.close();
  await assert.rejects(never, ClientClosed); // nothing can come any more: do not hang
  await assertNoTimers();
});

test("close() is a normal close: idempotent, pending work rejects with ClientClosed, nothing left scheduled", async () => {
  const { server, client } = setup({}, { commandTimeout: 5000 });
  await client.connect();
  const socket = server.socket;
  const joining = client.join("chat:a");
  socket.reply(await socket.take("join"), { epoch: "e1", offset: 0, recovered: false, publications: [] });
  const room = await joining;
  const roomClosed = room.once("close");
  const pending = client.history("chat:a");
  const publishing = client.publish("chat:a", "sent, no reply");
  await socket.take("publish");
  const events = [];
  client.on("disconnect", (d) => events.push(d));
  client.on("state", (s) => events.push(s));
  const first = client.close();
  const second = client.close();
  await Promise.all([first, second]);
  await client.close();
  assert.deepEqual(socket.closedByClient, { code: 1000, reason: "closed by the client" });
  await assert.rejects(pending, (e) => e instanceof ClientClosed && e.disconnect.code === 1000);
  await assert.rejects(publishing, ClientClosed);
  assert.equal(await roomClosed, null);
  assert.equal(room.active, false);
  const final = { code: 1000, reason: "closed by the client", reconnect: false, delay: null };
  assert.deepEqual(events, ["closed", final]);
  assert.deepEqual(client.final, final);
  assert.deepEqual(await client.closed(), final);
  assert.equal(client.state, "closed");
  assert.equal(client.rooms.size, 0);
  await assert.rejects(client.connect(), ClientClosed);
  await assert.rejects(client.publish("chat:a", 1), ClientClosed);
  await assert.rejects(client.join("chat:b"), ClientClosed);
  await assert.rejects(client.leave("chat:a"), ClientClosed);
  await room.leave(); // a closed room: nothing to do
  assert.equal(server.sockets.length, 1);
  await assertNoTimers();
});

test("close() before connect(), and while the socket is still opening", async () => {
  const idle = setup().client;
  const queued = idle.publish("chat:a", 1);
  await idle.close();
  await assert.rejects(queued, ClientClosed);
  assert.equal(idle.final.code, 1000);

  const { server, client } = setup({ autoOpen: false });
  const connecting = client.connect();
  await server.nth(0);
  await client.close();
  await assert.rejects(connecting, ClientClosed);
  assert.equal(server.sockets.length, 1);
  await assertNoTimers();
});

test("an open that takes longer than openTimeout is a failed attempt, retried with backoff", async () => {
  const { server, client } = setup({ autoOpen: false }, { openTimeout: 30, random: () => 0.5 });
  const failed = client.once("connectError");
  client.connect();
  const error = await failed;
  assert.equal(error.attempt, 1);
  assert.equal(error.delay, 5);
  assert.match(error.error.message, /no WebSocket connection within 30 ms/);
  const socket = await server.nth(1);
  socket.open();
  await client.once("state", { filter: (s) => s === "connected" });
  assert.equal(client.attempts, 2);
  await client.close();
  await assertNoTimers();
});

test("a URL the WebSocket constructor refuses stops the client", async () => {
  class Refusing {
    constructor() {
      throw new SyntaxError("The port 1 is not allowed");
    }
  }
  const client = new Client(URL, { token: "t", WebSocket: Refusing });
  await assert.rejects(client.connect(), (e) => e instanceof ClientClosed && /port 1 is not allowed/.test(e.disconnect.reason));
  assert.equal(client.final.reconnect, false);
  await assertNoTimers();
});
