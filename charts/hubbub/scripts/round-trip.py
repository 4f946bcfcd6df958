"""`helm test`: a publication's round trip through a RealtimeService, with hubbub's own Python client.

Run by the chart's test Pod in the hubbub image (`python -c`), configured by the environment:
HUBBUB_TEST_URL (the Service, http://NAME.NAMESPACE.svc:PORT), HUBBUB_TEST_ROOM, HUBBUB_JWT_SECRET
(signs a token for that room), HUBBUB_API_KEY (the HTTP API's key), HUBBUB_TEST_TIMEOUT (seconds),
HUBBUB_TEST_AUDIENCE and HUBBUB_TEST_ISSUER (optional token claims).

It joins the room over a WebSocket, publishes through the HTTP API (`POST /api/publish`), and waits
for that publication to arrive on the WebSocket. Exit 0 with one line saying so, or 1 with one line
saying what failed; never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from hubbub.auth import mint_token
from hubbub_client import Client, ClientError


class Failed(Exception):
    """One step failed; the message says which and why."""


def http(method: str, url: str, *, key: str | None = None, body: Any = None, timeout: float = 10) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raise Failed(f"{method} {url}: HTTP {exc.code} {exc.read()[:200].decode(errors='replace')}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise Failed(f"{method} {url}: {getattr(exc, 'reason', exc)}") from None


async def round_trip(env: dict[str, str]) -> str:
    base = env["HUBBUB_TEST_URL"].rstrip("/")
    room_name = env["HUBBUB_TEST_ROOM"]
    timeout = float(env.get("HUBBUB_TEST_TIMEOUT", "60"))
    http("GET", f"{base}/readyz")  # a Ready pod behind the Service (503 otherwise)
    token = mint_token(
        env["HUBBUB_JWT_SECRET"],
        sub="helm-test",
        rooms=[room_name],
        ttl=max(300.0, 2 * timeout),
        audience=env.get("HUBBUB_TEST_AUDIENCE") or None,
        issuer=env.get("HUBBUB_TEST_ISSUER") or None,
    )
    nonce = secrets.token_hex(8)
    ws_url = "ws" + base.removeprefix("http") + "/ws"
    started = time.monotonic()
    try:
        async with Client(ws_url, token=token, connect_timeout=timeout) as client:
            room = await client.join(room_name)
            sent = http(
                "POST",
                f"{base}/api/publish",
                key=env["HUBBUB_API_KEY"],
                body={"room": room_name, "data": {"helm-test": nonce}, "idempotency_key": nonce},
            )

            async def receive() -> None:
                async for pub in room:
                    if pub.data == {"helm-test": nonce}:
                        return

            try:
                await asyncio.wait_for(receive(), timeout)
            except TimeoutError:
                raise Failed(f"the publication (offset {sent['offset']}) did not arrive within {timeout:g} s") from None
    except ClientError as exc:  # refused connect, join refused (403/404: the room's namespace), closed
        raise Failed(f"WebSocket {ws_url}: {type(exc).__name__}: {exc}") from None
    elapsed = (time.monotonic() - started) * 1000
    return (
        f"round trip OK: {ws_url} room {room_name!r}, published at offset {sent['offset']} and received "
        f"in {elapsed:.0f} ms"
    )


def main() -> int:
    needed = ("HUBBUB_TEST_URL", "HUBBUB_TEST_ROOM", "HUBBUB_JWT_SECRET", "HUBBUB_API_KEY")
    missing = [name for name in needed if not os.environ.get(name)]
    if missing:
        print(f"helm test: not configured: {', '.join(missing)} unset (see the chart's tests.* values)")
        return 1
    try:
        print(f"helm test: {asyncio.run(round_trip(dict(os.environ)))}")
    except Failed as exc:
        print(f"helm test failed: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
