"""Transport options: permessage-deflate is opt-in, negotiated by RFC 7692, and works end to end when on.

Real clients against a real `hubbub serve`: the Python `websockets` client, Node's `ws` and headless
Chromium, each with the offers it makes by default and with the window limits it can ask for.
Each exchanges a large, compressible publication both ways (the publish up, its pub push down).
Handshakes written by hand check the answers to offers no client library makes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

from tests.conftest import ServerFactory
from tests.support.browser import Browser
from tests.support.server import ServerProcess, server_config
from tests.support.wsclient import WAIT, RawClient, token

ROOT = Path(__file__).resolve().parents[3]
ANSWER = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
#: 120 kB that compress well only with a window over 3000 bytes: a peer whose inflater has a
#: smaller window than the server compressed with fails on it (zlib: "invalid distance too far back").
TEXT = " ".join(random.Random(7).choices(["alpha", "beta", "gamma", "delta", "omega"], k=600))[:3000] * 40


def window(bits: int) -> str:
    return f"{ANSWER}; server_max_window_bits={bits}"


def negotiated(client: RawClient) -> list[str]:
    return [ext.name for ext in client.ws.protocol.extensions]


@pytest.fixture(scope="module")
def deflating(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A node with permessage_deflate on, and room for the large publications."""
    config = server_config(permessage_deflate=True, max_frame_bytes=1 << 20, max_publication_bytes=1 << 20)
    proc = ServerProcess(tmp_path_factory.mktemp("deflate"), config).start()
    yield proc
    proc.stop()


async def test_permessage_deflate_is_off_by_default(server: ServerProcess) -> None:
    client = await RawClient.open(server.ws_url, compression="deflate")
    assert negotiated(client) == []
    await client.close()
    assert await upgrade(server, "permessage-deflate; server_max_window_bits=10") == (101, None)


async def test_permessage_deflate_when_enabled_compresses_and_delivers(server_factory: ServerFactory) -> None:
    srv = server_factory(permessage_deflate=True)
    client = await RawClient.connected(srv.ws_url, open_kwargs={"compression": "deflate"})
    assert negotiated(client) == ["permessage-deflate"]
    await client.call("join", room="chat:z")
    await client.call("publish", room="chat:z", data={"text": "squeeze me " * 100})
    assert (await client.push("pub"))["data"] == {"text": "squeeze me " * 100}
    plain = await RawClient.connected(srv.ws_url, open_kwargs={"compression": None})
    assert negotiated(plain) == []
    await plain.call("join", room="chat:z")
    await client.close()
    await plain.close()


# --- the Python websockets client -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "answer"),
    [
        # offers "permessage-deflate; client_max_window_bits"
        (ClientPerMessageDeflateFactory(), ANSWER),
        # offers "permessage-deflate; server_max_window_bits=10; client_max_window_bits": it fails the
        # handshake unless the answer names a window of at most 10, and inflates with a 10-bit window
        (ClientPerMessageDeflateFactory(server_max_window_bits=10), window(10)),
        # offers "permessage-deflate; client_max_window_bits=10" and compresses with a 10-bit window
        (ClientPerMessageDeflateFactory(client_max_window_bits=10), ANSWER),
        # offers "permessage-deflate; server_no_context_takeover; client_max_window_bits"
        (ClientPerMessageDeflateFactory(server_no_context_takeover=True), ANSWER),
    ],
    ids=["default", "server_max_window_bits=10", "client_max_window_bits=10", "server_no_context_takeover"],
)
async def test_websockets_client_negotiates_and_exchanges_compressed_messages(
    deflating: ServerProcess, factory: ClientPerMessageDeflateFactory, answer: str
) -> None:
    client = await RawClient.connected(deflating.ws_url, open_kwargs={"extensions": [factory], "compression": None})
    assert client.ws.response is not None
    assert client.ws.response.headers.get_all("Sec-WebSocket-Extensions") == [answer]
    assert negotiated(client) == ["permessage-deflate"]
    room = f"chat:{uuid.uuid4().hex[:8]}"
    await client.call("join", room=room)
    reply = await client.call("publish", room=room, data={"text": TEXT})
    assert "ok" in reply, reply
    assert (await client.push("pub"))["data"] == {"text": TEXT}
    await client.close()


# --- Node's ws ------------------------------------------------------------------------------------

#: Reads {url, token, room, text, perMessageDeflate} on stdin; connects, joins, publishes `text` and
#: waits for its pub push; prints the negotiated extensions header and whether the text came back.
WS_SCRIPT = """
import WebSocket from "ws";
let input = "";
for await (const chunk of process.stdin) input += chunk;
const { url, token, room, text, perMessageDeflate } = JSON.parse(input);
const ws = new WebSocket(url, "hubbub.v1.json", { perMessageDeflate });
let extensions = null;
ws.on("upgrade", (res) => { extensions = res.headers["sec-websocket-extensions"] ?? null; });
ws.on("error", (err) => { console.log(JSON.stringify({ error: String(err) })); process.exit(1); });
ws.on("close", (code) => { console.log(JSON.stringify({ error: `closed ${code}` })); process.exit(1); });
ws.on("open", () => {
  ws.send(JSON.stringify({ id: 1, op: "connect", token }));
  ws.send(JSON.stringify({ id: 2, op: "join", room }));
  ws.send(JSON.stringify({ id: 3, op: "publish", room, data: { text } }));
});
const replies = {};
let pub = null;
ws.on("message", (data) => {
  for (const line of data.toString().split("\\n")) {
    const message = JSON.parse(line);
    if (message.push === "ping") ws.send(JSON.stringify({ op: "pong" }));
    if (message.id) replies[message.id] = message;
    if (message.push === "pub" && message.room === room) pub = message;
  }
  // The publish reply and the pub push may come in either order.
  if (pub && replies[3]) {
    const intact = pub.data.text === text;
    console.log(JSON.stringify({ extensions, replies, intact, length: pub.data.text.length }));
    ws.removeAllListeners("close");
    ws.close();
  }
});
"""


@pytest.mark.parametrize(
    ("options", "answer"),
    [
        (True, ANSWER),  # offers "permessage-deflate; client_max_window_bits"
        # "permessage-deflate; server_max_window_bits=10; client_max_window_bits": ws inflates with the
        # window the answer names, so hubbub must compress with 10 bits and say so
        ({"serverMaxWindowBits": 10}, window(10)),
        ({"clientMaxWindowBits": 10}, ANSWER),  # "permessage-deflate; client_max_window_bits=10"
    ],
    ids=["default", "serverMaxWindowBits=10", "clientMaxWindowBits=10"],
)
async def test_node_ws_client_negotiates_and_exchanges_compressed_messages(
    deflating: ServerProcess, options: Any, answer: str
) -> None:
    room = f"chat:{uuid.uuid4().hex[:8]}"
    request = {
        "url": deflating.ws_url,
        "token": token("node"),
        "room": room,
        "text": TEXT,
        "perMessageDeflate": options,
    }
    proc = await asyncio.create_subprocess_exec(
        "node", "--input-type=module", "-e", WS_SCRIPT,
        cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(json.dumps(request).encode()), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, (stdout, stderr)
    result = json.loads(stdout)
    assert result["extensions"] == answer
    assert result["replies"]["3"]["ok"]["offset"] >= 1, result["replies"]
    assert result["intact"] and result["length"] == len(TEXT)


# --- Chromium -------------------------------------------------------------------------------------

#: In the page: the same exchange with the browser's own WebSocket, which offers
#: "permessage-deflate; client_max_window_bits" and exposes the answer as `extensions`.
PAGE_SCRIPT = """
async ({ url, token, room, text }) => {
  const ws = new WebSocket(url, "hubbub.v1.json");
  const replies = {};
  let pub = null;
  const done = new Promise((resolve, reject) => {
    const late = () => reject(new Error(`no publish reply and pub push within 20 s: ${JSON.stringify(replies)}`));
    setTimeout(late, 20000);
    ws.onclose = (event) => reject(new Error(`closed ${event.code}`));
    ws.onmessage = (event) => {
      for (const line of event.data.split("\\n")) {
        const message = JSON.parse(line);
        if (message.push === "ping") ws.send(JSON.stringify({ op: "pong" }));
        if (message.id) replies[message.id] = message;
        if (message.push === "pub" && message.room === room) pub = message;
      }
      if (pub && replies[3]) resolve(pub);  // the publish reply and the pub push come in either order
    };
  });
  await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = () => reject(new Error("no upgrade")); });
  ws.send(JSON.stringify({ id: 1, op: "connect", token }));
  ws.send(JSON.stringify({ id: 2, op: "join", room }));
  ws.send(JSON.stringify({ id: 3, op: "publish", room, data: { text } }));
  const message = await done;
  ws.onclose = null;
  ws.close();
  const intact = message.data.text === text;
  return { extensions: ws.extensions, replies, intact, length: message.data.text.length };
}
"""


@pytest.mark.browser
def test_chromium_negotiates_and_exchanges_compressed_messages(deflating: ServerProcess) -> None:
    browser = Browser()
    try:
        page = browser.open(deflating.http_url + "/")
        room = f"chat:{uuid.uuid4().hex[:8]}"
        arg = {"url": deflating.ws_url, "token": token("chromium"), "room": room, "text": TEXT}
        result = page.evaluate(PAGE_SCRIPT, arg)
    finally:
        browser.close()
    assert result["extensions"] == ANSWER
    assert result["replies"]["3"]["ok"]["offset"] >= 1, result["replies"]
    assert result["intact"] and result["length"] == len(TEXT)


# --- offers no client library makes ---------------------------------------------------------------


async def upgrade(server: ServerProcess, *extensions: str) -> tuple[int, str | None]:
    """The status and Sec-WebSocket-Extensions of the answer to an upgrade offering `extensions`, one
    header line each."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", server.port), WAIT)
    try:
        lines = [
            "GET /ws HTTP/1.1",
            "Host: 127.0.0.1",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {base64.b64encode(b'hubbub-deflate!!').decode()}",
            "Sec-WebSocket-Version: 13",
            *(f"Sec-WebSocket-Extensions: {value}" for value in extensions),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)).decode("latin-1")
    finally:
        writer.transport.abort()
    status, *fields = head.strip().split("\r\n")
    answers = [
        value.strip()
        for name, _, value in (f.partition(":") for f in fields)
        if name.lower() == "sec-websocket-extensions"
    ]
    assert len(answers) <= 1, head
    return int(status.split(" ")[1]), answers[0] if answers else None


@pytest.mark.parametrize(
    ("offers", "answer"),
    [
        (["permessage-deflate-extended"], None),
        (["permessage-deflate; x-unknown"], None),
        (["permessage-deflate; server_no_context_takeover; server_no_context_takeover"], None),
        (["permessage-deflate; server_max_window_bits"], None),
        (["permessage-deflate; server_max_window_bits=16"], None),
        (['permessage-deflate; server_max_window_bits="10'], None),  # malformed: no compression, no failure
        (["permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=12"], window(12)),
        (["x-webkit-deflate-frame", "permessage-deflate; server_max_window_bits=11"], window(11)),
        (["permessage-deflate; client_max_window_bits=9; client_no_context_takeover"], ANSWER),
    ],
)
async def test_handshake_answers_one_permessage_deflate_or_none(
    deflating: ServerProcess, offers: list[str], answer: str | None
) -> None:
    assert await upgrade(deflating, *offers) == (101, answer)
