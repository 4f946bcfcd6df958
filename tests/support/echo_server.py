"""A WebSocket echo endpoint on hubbub's real transport, for the Autobahn|Testsuite
(tests/process/transport/test_autobahn.py).

    python -m tests.support.echo_server --port 9001      # ws://127.0.0.1:9001/ws

It is `hubbub serve` (uvicorn, the real node, the same uvicorn config) with one difference: each
upgrade's session echoes every text message instead of speaking protocol v1. Everything the fuzzing
client exercises is hubbub's: the upgrade and permessage-deflate negotiation, the frame reader,
UTF-8 validation, the inbox that feeds text to the session (and pauses reading), pings, the close
handshake and the outbound framing (`write_texts`, compressed when negotiated).

The one seam is `WebSocketConnection.session_class` (which session an upgrade gets). A binary
message goes where it goes on a node, to `Session.handle_binary`, which closes with 1003 as protocol
v1 says: the Autobahn cases that send binary messages (`tests.support.autobahn.BINARY_FAMILIES`)
end FAILED (no echo) with that close code, which tests/process/transport/test_autobahn.py checks.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from hubbub.app import HubbubApp
from hubbub.auth import Principal
from hubbub.outbox import Sink
from hubbub.server import DrainingServer, StartupError, bind, uvicorn_config
from hubbub.session import Session, SessionHost, State
from hubbub.settings import Settings
from hubbub.ws.connection import WebSocketConnection

#: Autobahn's largest messages are 16 MiB (cases 9.1.6, 9.2.6); the node's default limit (64 KiB)
#: would turn its performance cases into 1009 closes instead of measuring the frame reader.
MAX_MESSAGE_BYTES = 32 * 1024 * 1024


class EchoSession(Session):
    """Answers every text message with itself, each in a frame of its own.

    The reply bypasses the Outbox, which joins queued messages with newlines into one frame (protocol
    v1 batching): an echo must come back message for message. It starts CONNECTED, so the node's
    `connect_timeout` never closes it and, never having sent `connect`, it is never pinged.
    """

    def __init__(self, host: SessionHost, sink: Sink, *, principal: Principal | None) -> None:
        super().__init__(host, sink, principal=principal)
        self.state = State.CONNECTED
        self.sink = sink

    async def handle_text(self, text: str, *, more: bool = False) -> None:
        if self.close_code is None:
            self.sink.write_texts([text])


class EchoConnection(WebSocketConnection):
    """hubbub's WebSocket connection, unchanged, with an echoing session."""

    session_class = EchoSession


def echo_settings(host: str, port: int, *, max_message_bytes: int = MAX_MESSAGE_BYTES) -> Settings:
    """Production mode (no development credentials announced), every origin, deflate offered."""
    config: dict[str, Any] = {
        "mode": "production",
        "host": host,
        "port": port,
        "jwt_secret": "autobahn-echo-endpoint-secret-0123456789abcdef",
        "allowed_origins": ["*"],
        "permessage_deflate": True,
        "max_frame_bytes": max_message_bytes,
        "log_level": "warning",
        # Quiet the start-up warnings about what an echo endpoint never uses.
        "api_key": "autobahn-echo-endpoint-api-key",
        "default_namespace": {},
        # SIGTERM stops at once: there is nobody to drain for.
        "drain_delay": 0,
        "drain_period": 0,
    }
    return Settings.model_validate(config)


def serve(settings: Settings) -> int:
    """Serve the echo endpoint until SIGINT or SIGTERM, as `hubbub serve` would serve the node."""
    sockets = bind(settings.host, settings.port)
    app = HubbubApp(settings)
    config = uvicorn_config(app, settings)
    config.ws = EchoConnection
    try:
        DrainingServer(config, app).run(sockets=sockets)
    except KeyboardInterrupt:
        pass
    finally:
        for sock in sockets:
            sock.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.echo_server", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-message-bytes", type=int, default=MAX_MESSAGE_BYTES)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        return serve(echo_settings(args.host, args.port, max_message_bytes=args.max_message_bytes))
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
