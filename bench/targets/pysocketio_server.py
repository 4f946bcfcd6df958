"""python-socketio on uvicorn with the Redis manager: the peer a Python team would typically deploy.

    .venv/bin/python bench/targets/pysocketio_server.py --port 9002 --redis redis://127.0.0.1:6379 --secret S

Run two of these on one Redis; `AsyncRedisManager` relays every emit to the other process.
Wire contract (shared with bench/loadgen), the same as bench/targets/socketio-server.mjs:

- the handshake carries `auth: {"token": JWT}`, an HS256 JWT checked in `connect`
  (`ConnectionRefusedError` otherwise: the client gets a CONNECT_ERROR packet);
- `join` (room) -> enter the room, ack True;
- `publish` ({"room", "data"}) -> `sio.emit("message", data, room=room)` on every process.
"""

from __future__ import annotations

import argparse
from typing import Any

import jwt
import socketio  # type: ignore[import-untyped]
import uvicorn


def build_app(redis_url: str, secret: str) -> Any:
    # Defaults otherwise; long-polling off as for the socket.io peer (several processes, no sticky sessions).
    sio = socketio.AsyncServer(
        async_mode="asgi", client_manager=socketio.AsyncRedisManager(redis_url), transports=["websocket"]
    )

    @sio.event  # type: ignore[untyped-decorator]
    async def connect(sid: str, environ: dict[str, Any], auth: Any) -> None:
        token = auth.get("token") if isinstance(auth, dict) else None
        try:
            claims = jwt.decode(str(token or ""), secret, algorithms=["HS256"])
        except jwt.PyJWTError as exc:
            raise ConnectionRefusedError("unauthorized") from exc
        await sio.save_session(sid, {"user": claims.get("sub")})

    @sio.event  # type: ignore[untyped-decorator]
    async def join(sid: str, room: Any) -> bool:
        await sio.enter_room(sid, str(room))
        return True

    @sio.event  # type: ignore[untyped-decorator]
    async def publish(sid: str, message: Any) -> bool:
        if isinstance(message, dict) and isinstance(message.get("room"), str):
            await sio.emit("message", message.get("data"), room=message["room"])
        return True

    return socketio.ASGIApp(sio)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--redis", required=True)
    parser.add_argument("--secret", required=True)
    args = parser.parse_args()
    uvicorn.run(build_app(args.redis, args.secret), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
