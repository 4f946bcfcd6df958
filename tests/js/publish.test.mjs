// Publishing with hubbub.js: idempotency keys, the bounded offline queue, resends, timeouts, pacing.
import assert from "node:assert/strict";

import { ClientClosed, CommandError, CommandTimeout, QueueFull } from "../../service/hubbub/static/hubbub.js";
import { FakeServer, assertNoTimers, connected, fakeClient, test, tick } from "./fake-server.mjs";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

function setup(serverOptions = {}, clientOptions = {}) {
  const server = new FakeServer(serverOptions);
  const client = fakeClient(server, clientOptions);
  return { server, client };
}

/** Answers every publish on `socket` (taken in order) with consecutive offsets from `first`. */
async function answer(socket, count, first = 1) {
  const commands = [];
  for (let i = 0; i < count; i++) {
    const command = await socket.take("publish");
    socket.reply(command, { epoch: "e1", offset: first + i });
    commands.push(command);
  }
  return commands;
}

/** Whether `promise` has settled (without waiting for it). */
async function settled(promise) {
  const pending = Symbol("pending");
  const outcome = await Promise.race([promise.then((v) => v, (e) => e), tick(0).then(() => pending)]);
  return outcome === pending ? null : outcome;
}

test("every publish carries an idempotency key: the caller's, or a fresh UUID", async () => {
  const { server, client } = setup();
  await client.connect();
  const results = [
    client.publish("chat:a", { text: "hi" }),
    client.publish("chat:a", null),
    client.publish("chat:a", [1, "two"], { idempotencyKey: "order-42" }),
  ];
  const [a, b, c] = await answer(server.socket, 3);
  assert.deepEqual(await Promise.all(results), [1, 2, 3].map((offset) => ({ epoch: "e1", offset })));
  assert.match(a.idempotency_key, UUID);
  assert.match(b.idempotency_key, UUID);
  assert.notEqual(a.idempotency_key, b.idempotency_key);
  assert.deepEqual(c, { id: c.id, op: "publish", room: "chat:a", data: [1, "two"], idempotency_key: "order-42" });
  assert.deepEqual(b.data, null);
});

test("the key falls back to getRandomValues where randomUUID is missing (plain-http pages)", async () => {
  const { server, client } = setup();
  await client.connect();
  const randomUUID = crypto.randomUUID;
  crypto.randomUUID = undefined;
  try {
    const publishing = client.publish("chat:a", 1);
    const [command] = await answer(server.socket, 1);
    await publishing;
    assert.match(command.idempotency_key, UUID);
  } finally {
    crypto.randomUUID = randomUUID;
  }
});

test("publishes made while offline are queued in call order and sent after the connect", async () => {
  const { server, client } = setup({ autoOpen: false });
  const results = [1, 2, 3].map((n) => client.publish("chat:a", { n }));
  assert.equal(client.queued, 3);
  client.connect();
  const socket = await server.nth(0);
  await tick(20);
  assert.equal(client.queued, 3); // no timeout while waiting in the queue
  socket.open();
  await connected(client);
  const commands = await answer(socket, 3);
  assert.deepEqual(socket.ops(), ["connect", "publish", "publish", "publish"]);
  assert.deepEqual(commands.map((c) => c.data.n), [1, 2, 3]);
  assert.deepEqual((await Promise.all(results)).map((r) => r.offset), [1, 2, 3]);
  assert.equal(client.queued, 0);
});

test("the queue is bounded: beyond maxQueue, publish rejects with QueueFull at once", async () => {
  const { client } = setup({ autoOpen: false }, { maxQueue: 2 });
  const kept = [client.publish("chat:a", 1), client.publish("chat:a", 2)];
  const refused = client.publish("chat:a", 3);
  const outcome = await settled(refused);
  assert.ok(outcome instanceof QueueFull, `got ${outcome}`);
  assert.match(outcome.message, /full \(2 publishes waiting\)/);
  assert.equal(client.queued, 2);
  await client.close();
  for (const p of kept) await assert.rejects(p, ClientClosed);
  await assertNoTimers();
});

test("a publish sent but unanswered when the connection drops is sent again first, with the same key", async () => {
  const { server, client } = setup();
  await client.connect();
  const first = client.publish("chat:a", "first");
  const lostCommand = await server.socket.take("publish");
  server.options.autoConnect = false;
  server.socket.drop();
  const second = client.publish("chat:a", "second");
  assert.equal(client.queued, 2);
  const socket = await server.nth(1);
  const connect = await socket.take("connect");
  socket.reply(connect, server.connectReply(connect, socket));
  const [again, next] = await answer(socket, 2, 7);
  assert.deepEqual(again, { ...lostCommand, id: again.id });
  assert.equal(next.data, "second");
  assert.notEqual(next.idempotency_key, lostCommand.idempotency_key);
  assert.deepEqual(await first, { epoch: "e1", offset: 7 });
  assert.deepEqual(await second, { epoch: "e1", offset: 8 });
});

test("a sent publish with no reply within commandTimeout rejects with CommandTimeout carrying its key", async () => {
  const { server, client } = setup({}, { commandTimeout: 50 });
  await client.connect();
  const publishing = client.publish("chat:a", "x", { idempotencyKey: "k-1" });
  const command = await server.socket.take("publish");
  await assert.rejects(publishing, (e) => e instanceof CommandTimeout && e.idempotencyKey === "k-1");
  server.socket.reply(command, { epoch: "e1", offset: 1 }); // too late: ignored
  // Not sent again on the next connection: the application has the key to retry with.
  server.socket.drop();
  await connected(client);
  await tick(10);
  assert.deepEqual(server.socket.ops(), ["connect"]);
  const retry = client.publish("chat:a", "x", { idempotencyKey: "k-1" });
  const [again] = await answer(server.socket, 1);
  assert.equal(again.idempotency_key, "k-1");
  assert.deepEqual(await retry, { epoch: "e1", offset: 1 });
});

test("an error reply rejects with CommandError and is not sent again", async () => {
  const { server, client } = setup();
  await client.connect();
  const publishing = client.publish("chat:a", "x");
  server.socket.replyError(await server.socket.take("publish"), 403, "the token does not allow publishing here");
  await assert.rejects(publishing, (e) => e instanceof CommandError && e.code === 403);
  server.socket.drop();
  await connected(client);
  await tick(10);
  assert.deepEqual(server.socket.ops(), ["connect"]);
});

test("data is checked at once: not JSON → TypeError, larger than a frame → CommandError(413), nothing queued", async () => {
  const { server, client } = setup({}, { maxFrameBytes: 1024 });
  await client.connect();
  await assert.rejects(client.publish("chat:a", undefined), TypeError);
  await assert.rejects(client.publish("chat:a", () => 1), TypeError);
  await assert.rejects(client.publish("chat:a", { big: 1n }), TypeError);
  const circular = {};
  circular.self = circular;
  await assert.rejects(client.publish("chat:a", circular), TypeError);
  await assert.rejects(client.publish("chat:a", 1, { idempotencyKey: "" }), TypeError);
  await assert.rejects(client.publish(42, 1), TypeError);
  await assert.rejects(client.publish("chat:a", "é".repeat(600)), (e) => e instanceof CommandError && e.code === 413);
  const fits = client.publish("chat:a", "x".repeat(900));
  await answer(server.socket, 1);
  await fits;
  assert.equal(client.queued, 0);
  assert.deepEqual(server.socket.ops(), ["connect", "publish"]);
});

test("publishes are paced: a burst at once, then publishRate per second", async () => {
  const { server, client } = setup({}, { publishRate: 200, publishBurst: 3 });
  await client.connect();
  const started = performance.now();
  const results = Array.from({ length: 9 }, (_, n) => client.publish("chat:a", n));
  assert.equal(client.queued, 6); // waiting for their turn, in the same queue
  const commands = await answer(server.socket, 9);
  await Promise.all(results);
  assert.deepEqual(commands.map((c) => c.data), [0, 1, 2, 3, 4, 5, 6, 7, 8]);
  const socket = server.socket;
  // The burst goes out batched in one frame (a busy machine may let the bucket refill one more first).
  const first = socket.frames[1].split("\n").length;
  assert.ok(first >= 3 && first <= 4, `the first frame held ${first} publishes`);
  // The bucket held 3 tokens when the publishes were made and refills one per 5 ms, so the last of the 6
  // beyond the burst cannot go out before 30 ms. Measured from the publish calls, not from the burst's
  // frame: a busy machine can flush that frame late, and a late timer lets the next send come sooner.
  const last = socket.frameTimes.at(-1) - started;
  assert.ok(last >= 6 * 5 - 1, `the last of 6 paced publishes at 200/s went out after ${last} ms`);
});
