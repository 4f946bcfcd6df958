// The pure pieces of hubbub.js: backoff, close-code policy, refresh margin, pacer, framing.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { CloseCodes, _internals } from "../../service/hubbub/static/hubbub.js";

const { Backoff, Pacer, actionFor, refreshDelay, splitFrame, utf8Length } = _internals;

test("the backoff ceiling doubles from the base to the cap", () => {
  const backoff = new Backoff(500, 20000, Math.random);
  const ceilings = Array.from({ length: 9 }, (_, n) => backoff.ceiling(n));
  assert.deepEqual(ceilings, [500, 1000, 2000, 4000, 8000, 16000, 20000, 20000, 20000]);
  assert.equal(backoff.ceiling(10_000), 20000); // no overflow to Infinity/NaN
});

test("full jitter stays within [0, ceiling] and uses the whole range", () => {
  const backoff = new Backoff(100, 1000, Math.random);
  for (let n = 0; n < 200; n++) {
    const ceiling = backoff.ceiling(Math.min(n, 64));
    const delay = backoff.next();
    assert.ok(delay >= 0 && delay <= ceiling, `${delay} outside [0, ${ceiling}]`);
  }
  const low = new Backoff(100, 1000, () => 0);
  assert.equal(low.next(), 0);
  const high = new Backoff(100, 1000, () => 0.999999);
  assert.ok(high.next() > 99.99);
  assert.ok(high.next() > 199.99);
});

test("reset starts the schedule over; a drain jitter does not advance it", () => {
  const backoff = new Backoff(100, 10000, () => 0.5);
  assert.deepEqual([backoff.next(), backoff.next(), backoff.next()], [50, 100, 200]);
  assert.equal(backoff.jitter(4000), 2000);
  assert.equal(backoff.next(), 400);
  backoff.reset();
  assert.equal(backoff.next(), 50);
  assert.equal(backoff.jitter(0), 0);
});

test("the close-code policy follows the protocol table", () => {
  const table = [
    // [code, with a token callback, with a fixed token]
    [1000, "stop", "stop"],
    [1003, "stop", "stop"],
    [1009, "stop", "stop"],
    [4000, "stop", "stop"],
    [4003, "stop", "stop"],
    [4004, "stop", "stop"],
    [4001, "retry_auth", "stop"],
    [4009, "fresh_token", "stop"],
    [4011, "at_once", "at_once"],
    [1012, "drain_delay", "drain_delay"],
    [1011, "backoff", "backoff"],
    [1013, "backoff", "backoff"],
    [4008, "backoff", "backoff"],
    [4010, "backoff", "backoff"],
    [4029, "backoff", "backoff"],
    [null, "backoff", "backoff"],
    [1005, "backoff", "backoff"],
  ];
  for (const [code, withCallback, fixed] of table) {
    assert.equal(actionFor(code, null, true), withCallback, `code ${code} with a callback`);
    assert.equal(actionFor(code, null, false), fixed, `code ${code} with a fixed token`);
    // The push's flag never overrides the table for known codes.
    assert.equal(actionFor(code, code === 1011, true), withCallback);
  }
});

test("a code outside the table backs off unless the push said reconnect: false", () => {
  assert.equal(actionFor(4999, false, true), "stop");
  assert.equal(actionFor(4999, true, true), "backoff");
  assert.equal(actionFor(4999, null, true), "backoff");
  assert.equal(actionFor(3001, false, true), "backoff"); // only application codes (4xxx) can be told to stop
});

test("the refresh margin is 10% of the lifetime, at most 30 s, at least 1 s", () => {
  assert.equal(refreshDelay(3600), 3600_000 - 30_000);
  assert.equal(refreshDelay(60), 54_000);
  assert.equal(refreshDelay(200), 180_000);
  assert.equal(refreshDelay(5), 4_000); // 0.5 s would be too close: 1 s
  assert.equal(refreshDelay(0.5), 0);
});

test("the pacer allows a burst, then the rate", () => {
  const pacer = new Pacer(10, 3); // 10/s: one per 100 ms
  pacer.reset(0);
  assert.deepEqual([pacer.take(0), pacer.take(0), pacer.take(0)], [0, 0, 0]);
  assert.equal(Math.round(pacer.take(0)), 100);
  assert.equal(Math.round(pacer.take(50)), 50); // half a token has come back
  assert.equal(pacer.take(100), 0);
  assert.ok(pacer.take(100) > 0);
  pacer.reset(100); // a new connection starts with a full bucket
  assert.equal(pacer.take(100), 0);
});

test("a frame is split on newlines into JSON objects; blank lines are ignored", () => {
  assert.deepEqual(splitFrame('{"a":1}\n\n{"push":"ping"}\n'), [{ a: 1 }, { push: "ping" }]);
  assert.deepEqual(splitFrame("  \n"), []);
  assert.throws(() => splitFrame('{"a":1}\nnot json'), /not JSON/);
  assert.throws(() => splitFrame("[1,2]"), /expected a JSON object/);
  assert.throws(() => splitFrame("null"), /expected a JSON object/);
});

test("UTF-8 lengths match TextEncoder", () => {
  const encoder = new TextEncoder();
  for (const text of ["", "ascii", "é", "€", "𝄞 clef", "日本語", '{"text":"🎉"}', "\u0000"]) {
    assert.equal(utf8Length(text), encoder.encode(text).length, text);
  }
});

test("CloseCodes is the server's table (service/hubbub/codes.py)", () => {
  const source = readFileSync(new URL("../../service/hubbub/codes.py", import.meta.url), "utf8");
  const block = source.slice(source.indexOf("class CloseCode"), source.indexOf("@property"));
  const python = Object.fromEntries([...block.matchAll(/^\s+([A-Z_]+) = (\d+)$/gm)].map((m) => [m[1], Number(m[2])]));
  assert.ok(Object.keys(python).length >= 15);
  assert.deepEqual({ ...CloseCodes }, python);
  assert.ok(Object.isFrozen(CloseCodes));
});
