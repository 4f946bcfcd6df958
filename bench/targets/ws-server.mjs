// The practical ceiling: a bare Node `ws` broadcast server in one process, no broker, no
// protocol beyond "a text frame in, the same text frame out to every other room member".
//
//   node ws-server.mjs --port 9003 --secret S
//
// Wire contract (shared with bench/loadgen):
//   ws://127.0.0.1:P/?room=R&token=JWT   the HS256 JWT is verified on upgrade (HTTP 401 otherwise);
//                                        the connection joins room R;
//   ...&publisher=1                      additionally every text message it sends is broadcast,
//                                        as is, with one send() per member, to R's other members.
// Prints "ready" on stdout once it listens.
import { createServer } from "node:http";
import { parseArgs } from "node:util";

import jwt from "jsonwebtoken";
import { WebSocket, WebSocketServer } from "ws";

const { values: args } = parseArgs({
  options: {
    port: { type: "string" },
    host: { type: "string", default: "127.0.0.1" },
    secret: { type: "string" },
  },
});
if (!args.port || !args.secret) {
  console.error("usage: node ws-server.mjs --port P --secret S");
  process.exit(2);
}

/** @type {Map<string, Set<WebSocket>>} */
const rooms = new Map();

const httpServer = createServer((req, res) => {
  res.writeHead(426, { "content-type": "text/plain" });
  res.end("WebSocket only\n");
});
const wss = new WebSocketServer({ noServer: true });

function refuse(socket, status, reason) {
  socket.end(`HTTP/1.1 ${status} ${reason}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
}

httpServer.on("upgrade", (req, socket, head) => {
  const url = new URL(req.url ?? "/", "http://localhost");
  const room = url.searchParams.get("room");
  const token = url.searchParams.get("token") ?? "";
  if (!room) return refuse(socket, 400, "Bad Request");
  try {
    jwt.verify(token, args.secret, { algorithms: ["HS256"] });
  } catch {
    return refuse(socket, 401, "Unauthorized");
  }
  const publisher = url.searchParams.get("publisher") === "1";
  wss.handleUpgrade(req, socket, head, (ws) => {
    let members = rooms.get(room);
    if (!members) rooms.set(room, (members = new Set()));
    members.add(ws);
    ws.on("close", () => {
      members.delete(ws);
      if (members.size === 0 && rooms.get(room) === members) rooms.delete(room);
    });
    ws.on("error", () => {});
    if (publisher) {
      ws.on("message", (data, isBinary) => {
        if (isBinary) return;
        for (const member of members) {
          if (member !== ws && member.readyState === WebSocket.OPEN) member.send(data, { binary: false });
        }
      });
    }
  });
});

const shutdown = () => {
  for (const ws of wss.clients) ws.terminate();
  httpServer.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
};
process.on("SIGTERM", shutdown);
process.on("SIGINT", shutdown);

httpServer.listen(Number(args.port), args.host, () => console.log("ready"));
