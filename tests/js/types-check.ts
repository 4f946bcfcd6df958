// Compiled, never run: hubbub.js used as a TypeScript application would, against hubbub.d.ts.
//   node_modules/.bin/tsc --noEmit --strict --target es2022 --module es2022 --moduleResolution bundler \
//     --lib es2022,dom tests/js/types-check.ts
// Each `@ts-expect-error` line is a misuse the declarations must reject.
import {
  Client,
  ClientClosed,
  ClientError,
  CloseCodes,
  CommandError,
  CommandTimeout,
  ConnectFailed,
  QueueFull,
  Room,
} from "../../service/hubbub/static/hubbub.js";
import type {
  ClientEvents,
  ClientInfo,
  ClientOptions,
  ConnectError,
  Connected,
  ConnectionState,
  Disconnect,
  HistoryResult,
  JSONValue,
  Logger,
  Presence,
  PresenceEvent,
  PresenceStats,
  Publication,
  Rejoin,
  RoomEvents,
  StreamPosition,
  TokenRefresh,
  Unsubscribe,
} from "../../service/hubbub/static/hubbub.js";

async function fetchToken(): Promise<string> {
  const answer = await fetch("/demo/token", { method: "POST", body: JSON.stringify({ name: "ada" }) });
  const body = (await answer.json()) as { token: string };
  return body.token;
}

const options: ClientOptions = {
  token: fetchToken,
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
  random: Math.random,
  WebSocket,
  logger: console,
};
const client = new Client("wss://rt.example.com/ws", options);
new Client("/ws", { token: "eyJ.fixed.jwt" });
new Client("/ws", { token: null });
new Client("/ws", { token: () => "sync-callback" });
new Client("/ws", { token: null, connectTimeout: null, logger: null });
const lines: string[] = [];
const logger: Logger = { warn: (message) => lines.push(message), error: (message, error) => lines.push(`${message} ${error}`) };
new Client("/ws", { token: null, connectTimeout: Infinity, logger });
// @ts-expect-error a logger needs warn() and error()
new Client("/ws", { token: null, logger: { warn: () => {} } });
// @ts-expect-error the token is required
new Client("/ws", {});
// @ts-expect-error durations are numbers of ms
new Client("/ws", { token: null, commandTimeout: "5s" });

const url: string = client.url;
const state: ConnectionState = client.state;
const clientId: string | null = client.clientId;
const user: string | null = client.user;
const queued: number = client.queued;
const final: Disconnect | null = client.final;
const failure: ConnectFailed | null = client.failure;
const counters: number[] = [client.attempts, client.connects, client.pings];
const rooms: ReadonlyMap<string, Room> = client.rooms;
// @ts-expect-error read-only
client.state = "connected";
// @ts-expect-error rooms come from client.join()
new Room();

// --- events
const unsubscribe: Unsubscribe = client.on("state", (s: ConnectionState) => console.log(s));
unsubscribe();
client.on("connected", (c: Connected) => console.log(c.client, c.user, c.expiresIn ?? "never", c.pingInterval));
client.on("disconnect", (d: Disconnect) => {
  const code: number | null = d.code;
  const delay: number | null = d.delay;
  console.log(code ?? "no code", d.reason, d.reconnect, delay);
});
client.on("connectError", (e: ConnectError) => console.log(e.attempt, e.error.message, e.delay));
client.on("rejoin", (r: Rejoin) => {
  if (r.error) console.log(r.error.code, r.error.reason);
  else if (!r.recovered) console.log(r.room, r.epochChanged ? "new epoch" : "window exceeded", r.previous, r.position);
});
client.on("publication", (p: Publication) => console.log(p.room, p.epoch, p.offset, p.data, p.ts, p.info?.user));
client.on("presence", (e: PresenceEvent) => console.log(e.kind === "join" ? "+" : "-", e.room, e.info.user, e.info.client));
client.on("refresh", (r: TokenRefresh) => console.log(r.expiresIn, r.error?.message));
const logState = (s: ConnectionState): void => console.log(s);
client.on("state", logState);
client.off("state", logState);
// @ts-expect-error not an event
client.on("publish", () => {});
// @ts-expect-error the listener gets a Disconnect, not a string
client.on("disconnect", (d: string) => d);

async function main(): Promise<void> {
  const connected: Connected = await client.connect();
  console.log(connected.client, url, state, clientId, user, queued, final, failure, counters, rooms.size);
  try {
    await new Client("/ws", { token: null }).connect({ signal: AbortSignal.timeout(5000) });
  } catch (error) {
    if (error instanceof ConnectFailed) {
      const attempts: number = error.attempts;
      const code: number | null = error.disconnect.code;
      console.log(error.message, error.url, attempts, error.cause, code);
    }
  }
  // @ts-expect-error the signal is an AbortSignal
  await client.connect({ signal: 5000 });

  const room: Room = await client.join("chat:lobby");
  const resumed = await client.join("chat:archive", { since: { epoch: "e1", offset: 41 } });
  if (!resumed.recovered) console.log("resynchronise from the backend");
  const name: string = room.name;
  const position: StreamPosition = room.position;
  const offset: number = room.offset;
  const epoch: string = room.epoch;
  const active: boolean = room.active;
  console.log(name, position, offset, epoch, active);
  room.on("publication", (p: Publication) => console.log(p.offset));
  room.on("presence", (e: PresenceEvent) => console.log(e.kind));
  room.on("rejoin", (r: Rejoin) => console.log(r.recovered));
  room.on("close", (why: CommandError | ClientClosed | null) => console.log(why?.message ?? "left"));
  const onPub = (p: Publication): void => console.log(p.data);
  room.on("publication", onPub);
  room.off("publication", onPub);
  // @ts-expect-error rooms have no "state" event
  room.on("state", () => {});

  const next: Publication = await room.once("publication", { filter: (p) => p.offset > 10, timeout: 1000 });
  const closedWhy: RoomEvents["close"] = await room.once("close");
  const disconnect: ClientEvents["disconnect"] = await client.once("disconnect", { timeout: 60000 });
  console.log(next, closedWhy, disconnect);

  const data: JSONValue = { text: "hi", n: 1, ok: true, nested: [null, { deep: ["x"] }] };
  const where: StreamPosition = await client.publish("chat:lobby", data);
  await client.publish("chat:lobby", "plain", { idempotencyKey: crypto.randomUUID() });
  // @ts-expect-error functions are not JSON
  await client.publish("chat:lobby", () => 1);

  const history: HistoryResult = await client.history("chat:lobby", { since: where, limit: 100 });
  for (const pub of history.publications) {
    const info: ClientInfo | undefined = pub.info;
    console.log(pub.offset, info?.info?.["name"]);
  }
  await client.history("chat:lobby");
  const presence: Presence = await client.presence("chat:lobby");
  for (const [id, entry] of Object.entries(presence.clients)) console.log(id, entry.user, entry.info);
  const stats: PresenceStats = await client.presenceStats("chat:lobby");
  console.log(stats.clients, stats.users);

  await room.leave();
  await client.leave("chat:archive");

  try {
    await client.join("admin:audit");
  } catch (error) {
    if (error instanceof CommandError) console.log(error.code, error.reason);
    else if (error instanceof CommandTimeout) console.log(error.idempotencyKey);
    else if (error instanceof QueueFull) console.log("slow down");
    else if (error instanceof ClientClosed) console.log(error.disconnect?.code);
    else if (error instanceof ClientError) console.log(error.message);
  }
  try {
    await client.publish("chat:lobby", 1);
  } catch (error) {
    if (error instanceof CommandTimeout && error.idempotencyKey !== null) {
      await client.publish("chat:lobby", 1, { idempotencyKey: error.idempotencyKey });
    }
  }

  const codes: number[] = [CloseCodes.NORMAL, CloseCodes.TOKEN_EXPIRED, CloseCodes.RATE_LIMITED];
  console.log(codes);
  await client.close();
  const why: Disconnect = await client.closed();
  console.log(why.code === CloseCodes.NORMAL);
}

main().catch((error: unknown) => console.error(error));
