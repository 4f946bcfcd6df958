// socket.io 4 on the Redis adapter: the peer a Node team would typically deploy for rooms
// across several processes. Run two of these on one Redis; a publish on either reaches the
// room's members on both.
//
//   node socketio-server.mjs --port 9001 --redis redis://127.0.0.1:6379 --secret S
//
// Wire contract (shared with bench/loadgen):
//   - the handshake carries `auth: {token}`, an HS256 JWT checked by `io.use` middleware
//     (rejected -> the client gets a CONNECT_ERROR packet, `44{"message":"unauthorized"}`);
//   - `join` (room, ack)      -> socket.join(room), ack(true);
//   - `publish` ({room, data}) -> io.to(room).emit("message", data) on every process, through
//     the adapter (an ack, when the client asks for one, answers true).
// Prints "ready" on stdout once it listens and the adapter's Redis clients are connected.
import { createServer } from "node:http";
import { parseArgs } from "node:util";

import { createAdapter } from "@socket.io/redis-adapter";
import jwt from "jsonwebtoken";
import { createClient } from "redis";
import { Server } from "socket.io";

const { values: args } = parseArgs({
  options: {
    port: { type: "string" },
    host: { type: "string", default: "127.0.0.1" },
    redis: { type: "string" },
    secret: { type: "string" },
  },
});
if (!args.port || !args.redis || !args.secret) {
  console.error("usage: node socketio-server.mjs --port P --redis URL --secret S");
  process.exit(2);
}

const pubClient = createClient({ url: args.redis });
const subClient = pubClient.duplicate();
for (const client of [pubClient, subClient]) {
  client.on("error", (err) => console.error("redis:", err.message));
}
await Promise.all([pubClient.connect(), subClient.connect()]);

const httpServer = createServer();
// Defaults otherwise. Long-polling is off, as the socket.io docs advise for several processes
// without sticky sessions; the load generator never polls anyway.
const io = new Server(httpServer, { transports: ["websocket"], adapter: createAdapter(pubClient, subClient) });

io.use((socket, next) => {
  try {
    const claims = jwt.verify(socket.handshake.auth?.token ?? "", args.secret, { algorithms: ["HS256"] });
    socket.data.user = claims.sub;
    next();
  } catch {
    next(new Error("unauthorized"));
  }
});

io.on("connection", (socket) => {
  socket.on("join", (room, ack) => {
    socket.join(String(room));
    if (typeof ack === "function") ack(true);
  });
  socket.on("publish", (message, ack) => {
    if (message && typeof message.room === "string") io.to(message.room).emit("message", message.data);
    if (typeof ack === "function") ack(true);
  });
});

const shutdown = () => {
  io.close();
  Promise.allSettled([pubClient.quit(), subClient.quit()]).finally(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
};
process.on("SIGTERM", shutdown);
process.on("SIGINT", shutdown);

httpServer.listen(Number(args.port), args.host, () => console.log("ready"));
