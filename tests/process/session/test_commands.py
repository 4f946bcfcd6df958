"""Commands of protocol v1 where the real server process matters: the subprotocol offered in the upgrade,
and publishes pipelined across the frames a socket delivers.

Every command and push of protocol v1 is tested in-process, on real sessions and a fake clock:
tests/inprocess/test_session_inprocess.py.
"""

from __future__ import annotations

import uuid

from tests.support.server import ServerProcess
from tests.support.wsclient import RawClient, publish_burst, token


def room(ns: str = "chat") -> str:
    return f"{ns}:{uuid.uuid4().hex[:10]}"


async def test_subprotocol_is_selected_when_offered_and_optional(server: ServerProcess) -> None:
    with_proto = await RawClient.open(server.ws_url, subprotocols=["hubbub.v1.json"])
    assert with_proto.ws.subprotocol == "hubbub.v1.json"
    await with_proto.close()
    without = await RawClient.open(server.ws_url)
    assert without.ws.subprotocol is None
    assert "ok" in await without.call("connect", token=token())
    await without.close()


async def test_pipelined_publishes_keep_command_order_in_replies_offsets_and_history(server: ServerProcess) -> None:
    await publish_burst(server.ws_url, room())
