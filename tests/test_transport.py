"""Transport options: permessage-deflate is opt-in, and works end to end when on."""

from __future__ import annotations

from tests.conftest import ServerFactory
from tests.support.server import ServerProcess
from tests.support.wsclient import RawClient


def negotiated(client: RawClient) -> list[str]:
    return [ext.name for ext in client.ws.protocol.extensions]


async def test_permessage_deflate_is_off_by_default(server: ServerProcess) -> None:
    client = await RawClient.open(server.ws_url, compression="deflate")
    assert negotiated(client) == []
    await client.close()


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
