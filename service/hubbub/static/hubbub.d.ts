/**
 * hubbub.js: the browser client for hubbub's WebSocket protocol v1 (docs/browser-client.md).
 *
 *     import { Client } from "/hubbub.js";
 *     const client = new Client("ws://localhost:8000/ws", { token: getToken });
 *     await client.connect();
 *     const room = await client.join("chat:lobby");
 *     room.on("publication", (pub) => console.log(pub.offset, pub.data));
 *     await client.publish("chat:lobby", { text: "hi" });
 *
 * Durations are in milliseconds. Offsets are numbers (exact up to 2^53 - 1).
 */

export type JSONValue = null | boolean | number | string | JSONValue[] | { [key: string]: JSONValue };
export type JSONObject = { [key: string]: JSONValue };

/** Returns a JWT; called for every connect, reconnect and refresh. */
export type TokenCallback = () => Promise<string> | string;

export type ConnectionState = "idle" | "connecting" | "connected" | "reconnecting" | "closed";

export interface StreamPosition {
  epoch: string;
  offset: number;
}

export interface ClientInfo {
  user: string;
  client: string;
  /** The publisher's token `info` claim, when it has one. */
  info?: JSONObject;
}

export interface Publication {
  room: string;
  epoch: string;
  offset: number;
  data: JSONValue;
  /** Server time in ms since the epoch. */
  ts: number;
  /** Absent for publications made through the HTTP API. */
  info?: ClientInfo;
}

export interface PresenceEvent {
  kind: "join" | "leave";
  room: string;
  info: ClientInfo;
}

export interface PresenceEntry {
  user: string;
  info?: JSONObject;
}

export interface Presence {
  /** client id → entry */
  clients: Record<string, PresenceEntry>;
}

export interface PresenceStats {
  clients: number;
  users: number;
}

export interface HistoryResult {
  epoch: string;
  offset: number;
  publications: Publication[];
}

export interface Connected {
  client: string;
  user: string;
  /** Seconds until the token expires, null when it does not. */
  expiresIn: number | null;
  /** Seconds between the server's pings. */
  pingInterval: number;
}

/** An established connection ended (or the client was closed before any). */
export interface Disconnect {
  /** The close code from the `disconnect` push or the close frame; null when the connection broke without one. */
  code: number | null;
  reason: string;
  /** false: the client is now "closed" and will not reconnect. */
  reconnect: boolean;
  /** ms until the next attempt, null when not reconnecting. */
  delay: number | null;
}

/** An attempt failed before the WebSocket opened (refused, timed out, token callback threw). */
export interface ConnectError {
  /** Failures in a row, 1 for the first. */
  attempt: number;
  error: Error;
  delay: number;
}

/** A room was joined again after a reconnect (or joined with `since`). */
export interface Rejoin {
  room: string;
  /** true: every publication after `previous` is delivered, in order, before live ones. */
  recovered: boolean;
  /** true when `recovered` is false because the epoch changed (not an overflowed window). */
  epochChanged: boolean;
  previous: StreamPosition | null;
  position: StreamPosition | null;
  /** Set when the room could not be joined again; the room is then closed. */
  error: CommandError | null;
}

export interface TokenRefresh {
  expiresIn: number | null;
  error: Error | null;
}

export interface ClientEvents {
  state: ConnectionState;
  connected: Connected;
  disconnect: Disconnect;
  connectError: ConnectError;
  rejoin: Rejoin;
  /** Every publication of every room, after de-duplication. */
  publication: Publication;
  presence: PresenceEvent;
  refresh: TokenRefresh;
}

export interface RoomEvents {
  publication: Publication;
  presence: PresenceEvent;
  rejoin: Rejoin;
  /** The room was left, or the client closed, or a re-join failed (with the error). */
  close: CommandError | ClientClosed | null;
}

/** Unsubscribes the listener. */
export type Unsubscribe = () => void;

export interface Emitter<Events> {
  /** A listener that throws is reported on the console, never fatal. */
  on<K extends keyof Events>(event: K, listener: (value: Events[K]) => void): Unsubscribe;
  off<K extends keyof Events>(event: K, listener: (value: Events[K]) => void): void;
  /**
   * Resolves with the next matching event; rejects with CommandTimeout after `timeout` ms, with the
   * filter's exception if it throws, and with a ClientError once no event can come (the client closed:
   * ClientClosed; a room left or closed: its close error, or a ClientError).
   */
  once<K extends keyof Events>(
    event: K,
    options?: { filter?: (value: Events[K]) => boolean; timeout?: number },
  ): Promise<Events[K]>;
}

export interface ClientOptions {
  /** A JWT (cannot be refreshed), a callback, or null for servers that allow anonymous connections. */
  token: string | TokenCallback | null;
  /** Default 5000. */
  commandTimeout?: number;
  /** Default 500 and 20000: full jitter, random(0, min(cap, base * 2^n)). */
  backoffBase?: number;
  backoffCap?: number;
  /** Upper bound of the random delay after close 1012. Default 5000. */
  drainJitter?: number;
  /** Publishes that may wait for a connection or their turn. Default 1000. */
  maxQueue?: number;
  /** Client-side publish pacing, per second and burst. Defaults 50 and 100. */
  publishRate?: number;
  publishBurst?: number;
  /** Silence beyond the server's ping interval before the connection is declared dead. Default 10000. */
  heartbeatGrace?: number;
  /** Time allowed to open the WebSocket, per attempt. Default 10000. */
  openTimeout?: number;
  /**
   * Time the first connect may take, retries included, before `connect()` rejects with ConnectFailed
   * and the client closes. Default 30000; `null` or `Infinity` retries until `close()`. Later
   * reconnects are not bounded.
   */
  connectTimeout?: number | null;
  /** The server's inbound frame limit. Default 65536. */
  maxFrameBytes?: number;
  /** Returns a float in [0, 1); default Math.random. */
  random?: () => number;
  /** A WebSocket constructor, for environments without a global one. */
  WebSocket?: typeof WebSocket;
  /**
   * Where the client reports: `warn` for every failed connect attempt, giving up and a terminal close;
   * `error` for a listener that threw or a frame it cannot read. Default `console`; `null` for silence.
   */
  logger?: Logger | null;
}

/** What the client writes its reports to (`console` is one). */
export interface Logger {
  warn(message: string): void;
  error(message: string, error: unknown): void;
}

export class Client implements Emitter<ClientEvents> {
  constructor(url: string, options: ClientOptions);

  readonly url: string;
  readonly state: ConnectionState;
  /** Set by the latest `connect` reply. */
  readonly clientId: string | null;
  readonly user: string | null;
  readonly rooms: ReadonlyMap<string, Room>;
  /** Publishes waiting in the offline queue. */
  readonly queued: number;
  /** The terminal Disconnect once the state is "closed". */
  readonly final: Disconnect | null;
  /** Why the first connect failed, if it did (what `connect()` rejected with). */
  readonly failure: ConnectFailed | null;
  /** Connection attempts, successful connects and server pings seen. */
  readonly attempts: number;
  readonly connects: number;
  readonly pings: number;

  /**
   * Starts the client and resolves with the first `connect` reply, retrying with backoff meanwhile.
   * Rejects with ConnectFailed when the first connect fails for good (nothing within connectTimeout,
   * or a terminal close code such as 4001), with ClientClosed after `close()`, and with
   * `signal.reason` when `signal` aborts first, which closes the client.
   */
  connect(options?: { signal?: AbortSignal }): Promise<Connected>;
  /** Normal close (1000); pending commands and queued publishes reject with ClientClosed. Idempotent. */
  close(): Promise<void>;
  /** Resolves with the terminal Disconnect. */
  closed(): Promise<Disconnect>;

  join(room: string, options?: { since?: StreamPosition }): Promise<Room>;
  leave(room: string): Promise<void>;
  publish(room: string, data: JSONValue, options?: { idempotencyKey?: string }): Promise<StreamPosition>;
  history(room: string, options?: { since?: StreamPosition; limit?: number }): Promise<HistoryResult>;
  presence(room: string): Promise<Presence>;
  presenceStats(room: string): Promise<PresenceStats>;

  on<K extends keyof ClientEvents>(event: K, listener: (value: ClientEvents[K]) => void): Unsubscribe;
  off<K extends keyof ClientEvents>(event: K, listener: (value: ClientEvents[K]) => void): void;
  once<K extends keyof ClientEvents>(
    event: K,
    options?: { filter?: (value: ClientEvents[K]) => boolean; timeout?: number },
  ): Promise<ClientEvents[K]>;
}

/**
 * A room joined through `client.join()`. Its own events (a join's `rejoin`, recovered publications,
 * anything that came with the reply) are held until the task after `join()` resolves, so listeners
 * attached right after `await client.join(...)` miss nothing.
 */
export class Room implements Emitter<RoomEvents> {
  /** Rooms come from `client.join()`. */
  private constructor();
  readonly name: string;
  readonly epoch: string;
  /** The last publication delivered. */
  readonly offset: number;
  readonly position: StreamPosition;
  /** The result of the latest (re-)join with `since`. */
  readonly recovered: boolean;
  /** false once left or closed. */
  readonly active: boolean;

  leave(): Promise<void>;

  on<K extends keyof RoomEvents>(event: K, listener: (value: RoomEvents[K]) => void): Unsubscribe;
  off<K extends keyof RoomEvents>(event: K, listener: (value: RoomEvents[K]) => void): void;
  once<K extends keyof RoomEvents>(
    event: K,
    options?: { filter?: (value: RoomEvents[K]) => boolean; timeout?: number },
  ): Promise<RoomEvents[K]>;
}

export class ClientError extends Error {}

/** An error reply; the connection stays open. */
export class CommandError extends ClientError {
  constructor(code: number, reason: string);
  readonly code: number;
  readonly reason: string;
}

/** No reply within commandTimeout. For publishes, retry with the same idempotency key. */
export class CommandTimeout extends ClientError {
  constructor(message: string, idempotencyKey?: string | null);
  readonly idempotencyKey: string | null;
}

/** The offline publish queue is full. */
export class QueueFull extends ClientError {}

/** The client is closed; `disconnect` says why. */
export class ClientClosed extends ClientError {
  constructor(disconnect?: Disconnect | null);
  readonly disconnect: Disconnect | null;
}

/**
 * The first connect failed for good: `connectTimeout` passed, the server closed with a terminal code
 * before the first `connect` reply, or the URL cannot be opened. The client is closed.
 */
export class ConnectFailed extends ClientClosed {
  constructor(
    message: string,
    details: { url: string; disconnect: Disconnect; attempts: number; cause?: unknown },
  );
  /** The URL the client tried. */
  readonly url: string;
  /** Connection attempts made. */
  readonly attempts: number;
  /** The last attempt's error; null when the server closed with a close code (see `disconnect.code`). */
  readonly cause: unknown;
  readonly disconnect: Disconnect;
}

/** Protocol v1 close codes (docs/protocol.md). */
export const CloseCodes: Readonly<Record<string, number>>;
