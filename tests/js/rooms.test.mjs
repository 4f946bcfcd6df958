// Rooms in hubbub.js: joining, re-joining with `since` on reconnect, recovery signals, de-duplication.
import assert from "node:assert/strict";

import { CommandError, CommandTimeout } from "../../service/hubbub/static/hubbub.js";
import { FakeServer, connected, fakeClient, test, tick, until, withConsole } from "./fake-server.mjs";

const pub = (offset, room = "chat:a") => ({ push: "pub", room, offset, data: { n: offset }, ts: 1000 + offset });

function setup(serverOptions = {}, clientOptions = {}) {
  const server = new FakeServer(serverOptions);
  const client = fakeClient(server, clientOptions);
  const log = [];
  for (const event of ["rejoin", "publication", "presence"]) {
    client.on(event, (value) => log.push([event, event === "publication" ? value.offset : value]));
  }
  return { server, client, log };
}

/** Joins `room` at `offset` (epoch e1) and returns it with a log of its own events. */
async function joined(client, server, room = "chat:a", offset = 0) {
  const joining = client.join(room);
  server.socket.reply(await server.socket.take("join"), { epoch: "e1", offset, recovered: false, publications: [] });
  const handle = await joining;
  const events = [];
  for (const event of ["rejoin", "publication", "presence", "close"]) {
    handle.on(event, (value) => events.push([event, event === "publication" ? value.offset : value]));
  }
  await tick(0); // the room holds its events until the task after join() resolves
  return { room: handle, events };
}

/** Drops the connection and returns the next socket's connect command, unanswered. */
async function reconnect(server) {
  server.options.autoConnect = false;
  const next = server.sockets.length;
  server.socket.drop();
  const socket = await server.nth(next);
  return { socket, connect: await socket.take("connect") };
}

test("a room's own listeners, attached after join() resolves, miss nothing that came with the reply", async () => {
  const { server, client } = setup();
  await client.connect();
  const joining = client.join("chat:a");
  const command = await server.socket.take("join");
  assert.deepEqual(command, { id: command.id, op: "join", room: "chat:a" });
  server.socket.deliver({ id: command.id, ok: { epoch: "e1", offset: 4, recovered: false, publications: [] } }, pub(5));
  const room = await joining;
  const seen = [];
  room.on("publication", (p) => seen.push(p));
  await tick(0);
  server.socket.deliver(pub(6));
  assert.deepEqual(seen.map((p) => p.offset), [5, 6]);
  assert.deepEqual(seen[0], { room: "chat:a", epoch: "e1", offset: 5, data: { n: 5 }, ts: 1005 });
  assert.deepEqual(room.position, { epoch: "e1", offset: 6 });
  assert.equal(room.recovered, false);
  assert.equal(room.active, true);
  assert.equal(client.rooms.get("chat:a"), room);
  await assert.rejects(client.join("chat:a"), (e) => e instanceof CommandError && e.code === 409);
});

test("join with `since` delivers the recovered publications after a `rejoin`, then live ones", async () => {
  const { server, client, log } = setup();
  await client.connect();
  const joining = client.join("chat:a", { since: { epoch: "e1", offset: 2 } });
  const command = await server.socket.take("join");
  assert.deepEqual(command.since, { epoch: "e1", offset: 2 });
  server.socket.deliver(
    { id: command.id, ok: { epoch: "e1", offset: 4, recovered: true, publications: [pub(2), pub(3), pub(4)] } },
    pub(5),
  );
  const room = await joining;
  const events = [];
  room.on("rejoin", (r) => events.push(r));
  room.on("publication", (p) => events.push(p.offset));
  await tick(0);
  const rejoin = {
    room: "chat:a",
    recovered: true,
    epochChanged: false,
    previous: { epoch: "e1", offset: 2 },
    position: { epoch: "e1", offset: 4 },
    error: null,
  };
  assert.deepEqual(events, [rejoin, 3, 4, 5]); // 2 was already delivered before
  assert.deepEqual(log, [["rejoin", rejoin], ["publication", 3], ["publication", 4], ["publication", 5]]);
  assert.equal(room.recovered, true);
});

test("a reconnect re-joins every room in `connect` with its position; recovered ones come before live ones", async () => {
  const { server, client, log } = setup();
  await client.connect();
  const a = await joined(client, server, "chat:a", 5);
  const b = await joined(client, server, "chat:b", 0);
  server.socket.deliver(pub(6));
  const { socket, connect } = await reconnect(server);
  assert.deepEqual(connect.rooms, {
    "chat:a": { since: { epoch: "e1", offset: 6 } },
    "chat:b": { since: { epoch: "e1", offset: 0 } },
  });
  assert.equal(connect.token, "t");
  log.length = 0;
  socket.deliver(
    {
      id: connect.id,
      ok: {
        ...server.connectReply(connect, socket),
        rooms: {
          "chat:a": { epoch: "e1", offset: 8, recovered: true, publications: [pub(6), pub(7), pub(8)] },
          "chat:b": { epoch: "e1", offset: 0, recovered: true, publications: [] },
        },
      },
    },
    pub(9),
  );
  assert.deepEqual(log.map(([event, value]) => (event === "rejoin" ? [event, value.room, value.recovered] : [event, value])), [
    ["rejoin", "chat:a", true],
    ["publication", 7],
    ["publication", 8],
    ["rejoin", "chat:b", true],
    ["publication", 9],
  ]);
  assert.deepEqual(a.events.slice(1).map(([e, v]) => (e === "rejoin" ? [e, v.position] : [e, v])), [
    ["rejoin", { epoch: "e1", offset: 8 }],
    ["publication", 7],
    ["publication", 8],
    ["publication", 9],
  ]);
  assert.equal(b.events.length, 1);
  assert.equal(a.room.recovered, true);
  assert.equal(a.room.offset, 9);
});

test("not recovered: the rejoin says so (and whether the epoch changed); the room goes on at the new position", async () => {
  const { server, client } = setup();
  await client.connect();
  const a = await joined(client, server, "chat:a", 10);
  server.rejoin = () => ({ epoch: "e2", offset: 3, recovered: false, publications: [] });
  server.socket.drop();
  await connected(client);
  const [, rejoin] = a.events[0];
  assert.deepEqual(rejoin, {
    room: "chat:a",
    recovered: false,
    epochChanged: true,
    previous: { epoch: "e1", offset: 10 },
    position: { epoch: "e2", offset: 3 },
    error: null,
  });
  assert.deepEqual([a.room.epoch, a.room.offset, a.room.recovered], ["e2", 3, false]);
  server.socket.deliver(pub(4)); // a new epoch is a new sequence of offsets
  assert.deepEqual(a.events.at(-1), ["publication", 4]);

  // Same epoch, history window overflowed: not recovered, the epoch did not change.
  server.rejoin = (name, since) => ({ epoch: "e2", offset: since.offset + 500, recovered: false, publications: [] });
  server.socket.drop();
  await connected(client);
  const [, overflow] = a.events.at(-1);
  assert.equal(overflow.recovered, false);
  assert.equal(overflow.epochChanged, false);
  assert.deepEqual(overflow.position, { epoch: "e2", offset: 504 });
});

test("an offset at or below the last delivered one is dropped", async () => {
  const { server, client } = setup();
  await client.connect();
  const a = await joined(client, server, "chat:a", 4);
  server.socket.deliver(pub(4), pub(5), pub(5), pub(3), pub(6));
  server.socket.deliver(pub(6));
  assert.deepEqual(a.events.map(([, offset]) => offset), [5, 6]);
  // Recovered publications are de-duplicated too.
  const { socket, connect } = await reconnect(server);
  socket.reply(connect, {
    ...server.connectReply(connect, socket),
    rooms: { "chat:a": { epoch: "e1", offset: 7, recovered: true, publications: [pub(5), pub(6), pub(7)] } },
  });
  assert.deepEqual(a.events.filter(([e]) => e === "publication").map(([, o]) => o), [5, 6, 7]);
});

test("a live publication that skips an offset is not delivered: the client reconnects to recover the gap", async () => {
  const { server, client } = setup();
  await client.connect();
  const a = await joined(client, server, "chat:a", 4);
  const lost = client.once("disconnect");
  await withConsole(async (logged) => {
    server.socket.deliver(pub(5), pub(7), pub(8));
    assert.ok(logged.some(([level, text]) => level === "warn" && /gap/.test(text)));
  });
  const d = await lost;
  assert.equal(d.code, null);
  assert.match(d.reason, /gap in room chat:a after offset 5/);
  assert.deepEqual(a.events.map(([, offset]) => offset), [5]);
  const socket = await server.nth(1);
  const connect = await socket.take("connect");
  assert.deepEqual(connect.rooms, { "chat:a": { since: { epoch: "e1", offset: 5 } } });
});

test("a room that cannot be re-joined reports the error and closes; the others carry on", async () => {
  const { server, client, log } = setup();
  await client.connect();
  const a = await joined(client, server, "chat:a", 1);
  const b = await joined(client, server, "chat:b", 1);
  server.rejoin = (name, since) =>
    name === "chat:a" ? { error: { code: 403, reason: "no longer allowed" } } : { epoch: "e1", offset: since.offset, recovered: true, publications: [] };
  server.socket.drop();
  await connected(client);
  const rejoins = log.filter(([event]) => event === "rejoin").map(([, r]) => r);
  assert.equal(rejoins.length, 2);
  const failed = rejoins.find((r) => r.room === "chat:a");
  assert.ok(failed.error instanceof CommandError);
  assert.deepEqual([failed.error.code, failed.error.reason, failed.recovered, failed.position], [403, "no longer allowed", false, null]);
  assert.deepEqual(a.events.map(([e]) => e), ["rejoin", "close"]);
  assert.equal(a.events[1][1], failed.error);
  assert.equal(a.room.active, false);
  assert.deepEqual([...client.rooms.keys()], ["chat:b"]);
  assert.equal(b.room.active, true);
  assert.equal(b.room.recovered, true);
});

test("a re-join answered 503 is asked again on the same connection, with the same `since`", async () => {
  const { server, client } = setup();
  await client.connect();
  const a = await joined(client, server, "chat:a", 7);
  server.rejoin = () => ({ error: { code: 503, reason: "try again" } });
  server.socket.drop();
  await connected(client);
  const socket = server.socket;
  const retry = await socket.take("join");
  assert.deepEqual(retry, { id: retry.id, op: "join", room: "chat:a", since: { epoch: "e1", offset: 7 } });
  socket.replyError(retry, 503, "still not");
  const again = await socket.take("join");
  socket.deliver({ id: again.id, ok: { epoch: "e1", offset: 8, recovered: true, publications: [pub(8)] } }, pub(9));
  assert.deepEqual(a.events.map(([e, v]) => (e === "rejoin" ? [e, v.recovered] : [e, v])), [
    ["rejoin", true],
    ["publication", 8],
    ["publication", 9],
  ]);
  assert.equal(server.sockets.length, 2);
});

test("leave: sent to the server, the room closes and is not re-joined; while disconnected it is local", async () => {
  const { server, client } = setup({}, { backoffBase: 30, backoffCap: 30 });
  await client.connect();
  const a = await joined(client, server, "chat:a");
  const b = await joined(client, server, "chat:b");
  const leaving = a.room.leave();
  server.socket.reply(await server.socket.take("leave"), {});
  await leaving;
  assert.deepEqual(a.events, [["close", null]]);
  assert.equal(a.room.active, false);
  server.socket.deliver(pub(1)); // anything still in flight for it is ignored
  assert.deepEqual(a.events, [["close", null]]);

  server.socket.drop();
  await client.once("state", { filter: (s) => s === "reconnecting" });
  await b.room.leave(); // no connection: nothing to send
  assert.equal(b.room.active, false);
  await connected(client);
  assert.equal(server.socket.commands[0].rooms, undefined);

  const unknown = client.leave("chat:zzz");
  server.socket.replyError(await server.socket.take("leave"), 409, "not joined");
  await assert.rejects(unknown, (e) => e instanceof CommandError && e.code === 409);
});

test("join and leave pushes reach the room and the client as presence events", async () => {
  const { server, client, log } = setup();
  await client.connect();
  const a = await joined(client, server, "chat:a");
  server.socket.deliver(
    { push: "join", room: "chat:a", info: { user: "bob", client: "c9", info: { name: "Bob" } } },
    { push: "leave", room: "chat:a", info: { user: "bob", client: "c9" } },
    { push: "join", room: "chat:other", info: { user: "eve", client: "c7" } },
  );
  const expected = [
    { kind: "join", room: "chat:a", info: { user: "bob", client: "c9", info: { name: "Bob" } } },
    { kind: "leave", room: "chat:a", info: { user: "bob", client: "c9" } },
  ];
  assert.deepEqual(a.events.map(([, v]) => v), expected);
  assert.deepEqual(log.map(([, v]) => v), expected);
});

test("a join that timed out but then succeeded is left again, not kept half-joined", async () => {
  const { server, client } = setup({}, { commandTimeout: 40 });
  await client.connect();
  const joining = client.join("chat:a");
  const command = await server.socket.take("join");
  await assert.rejects(joining, CommandTimeout);
  server.socket.reply(command, { epoch: "e1", offset: 0, recovered: false, publications: [] });
  const leave = await server.socket.take("leave");
  assert.equal(leave.room, "chat:a");
  assert.equal(client.rooms.size, 0);
  // And a room left while the connect was in flight is left on the server too.
  const a = await joined(client, server, "chat:b");
  const { socket, connect } = await reconnect(server);
  await a.room.leave();
  socket.reply(connect, server.connectReply(connect, socket));
  assert.equal((await socket.take("leave")).room, "chat:b");
  await until(() => client.state === "connected");
});

test("room names that are also Object.prototype keys are re-joined like any other", async () => {
  const { server, client } = setup();
  await client.connect();
  const proto = await joined(client, server, "__proto__", 3);
  const ctor = await joined(client, server, "constructor", 0);
  server.socket.drop();
  await connected(client);
  const { rooms } = server.socket.commands[0];
  assert.deepEqual(Object.keys(rooms).sort(), ["__proto__", "constructor"]);
  assert.deepEqual(rooms["__proto__"], { since: { epoch: "e1", offset: 3 } });
  assert.deepEqual([proto.room.active, proto.room.recovered, ctor.room.active], [true, true, true]);
});
