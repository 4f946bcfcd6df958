"""Protocol v1 against real sessions on a real node, in-process: commands, close codes, garbage,
heartbeats and draining, on a fake clock (tests/support/inprocess.py).

No socket, no process, no wall clock: each test takes milliseconds, and what depends on time (the
connect timeout, pings and pongs, token expiry, the command budget, history expiry, paced closes)
happens at the instant the fake clock is moved to, never in a race with a loaded machine. What needs
a real process stays in the process tests: the WebSocket framing and upgrade (tests/process/session/test_garbage.py,
tests/process/session/test_close_codes.py, tests/process/transport/test_connection.py), signals
(tests/process/session/test_drain.py), sockets that stop
reading, fleets and faults.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from hubbub.auth import Principal
from hubbub.codes import CLOSE_TABLE, CloseCode
from hubbub.node import SHED_REASON
from hubbub.protocol import MAX_COMMAND_ID
from hubbub.types import Room
from tests.support.conversation import Closed, pipelined_publishes
from tests.support.garbage import GARBAGE, MISSING, REPLY_CODES, TEMPLATES, USER, every_field, mutated, nested, render
from tests.support.inprocess import InProcessClient, InProcessNode
from tests.support.wsclient import token

NodeFactory = Callable[..., Awaitable[InProcessNode]]

#: Where the frame limit of the process tests' nodes would stop a frame first (the transport's 1009).
FRAME_LIMIT = 65536
#: The probe's id: the largest valid one, never used by a generated case.
PROBE_ID = MAX_COMMAND_ID


@pytest.fixture
async def node_factory() -> AsyncIterator[NodeFactory]:
    """Start in-process nodes with settings overrides; all are stopped after the test."""
    started: list[InProcessNode] = []

    async def start(**overrides: Any) -> InProcessNode:
        node = await InProcessNode.started(**overrides)
        started.append(node)
        return node

    yield start
    for node in started:
        await node.stop()


@pytest.fixture
async def node(node_factory: NodeFactory) -> InProcessNode:
    """A node with the settings of the process tests' shared server."""
    return await node_factory()


@pytest.fixture
def no_errors_logged(caplog: pytest.LogCaptureFixture) -> Callable[[], None]:
    """A check that nothing of hubbub logged an error (an unhandled exception is a bug, whatever the input)."""

    def check() -> None:
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("hubbub")]
        assert not errors, [r.getMessage() for r in errors]

    return check


def room(ns: str = "chat") -> str:
    return f"{ns}:{uuid.uuid4().hex[:10]}"


async def assert_closed(client: InProcessClient, code: int, *, push: bool = True) -> Closed:
    """The connection ends with `code`, announced by a disconnect push saying so (unless `push` is False)."""
    closed = await client.closed()
    assert closed.code == code, f"closed with {closed.code} {closed.reason}, expected {code}"
    if push:
        assert closed.disconnect is not None, "no disconnect push before the close"
        assert closed.disconnect["code"] == code
        assert isinstance(closed.disconnect["reason"], str) and closed.disconnect["reason"]
        assert closed.disconnect["reconnect"] is CLOSE_TABLE[CloseCode(code)].reconnect
    else:
        assert closed.disconnect is None
    return closed


# --- commands ------------------------------------------------------------------------------------


async def test_connect_reply_carries_client_user_expiry_and_ping_interval(node: InProcessNode) -> None:
    client = node.open()
    ok = (await client.call("connect", token=token("alice", ttl=120, now=node.clock.wall())))["ok"]
    assert ok["user"] == "alice"
    assert isinstance(ok["client"], str) and ok["client"] == client.session.client_id
    assert ok["expires_in"] == 120
    assert ok["ping_interval"] == 25
    assert ok["rooms"] == {}


async def test_token_without_exp_reports_expires_in_null(node: InProcessNode) -> None:
    client = node.open()
    assert (await client.call("connect", token=token("bob", ttl=None)))["ok"]["expires_in"] is None


async def test_a_principal_from_the_upgrade_lets_connect_omit_the_token_and_a_token_replaces_it(
    node: InProcessNode,
) -> None:
    upgraded = Principal(user="hdr", rooms=("*",), publish=("*",), info=None, expires_at=None)
    assert (await node.open(principal=upgraded).call("connect"))["ok"]["user"] == "hdr"
    assert (await node.open(principal=upgraded).call("connect", token=token("body")))["ok"]["user"] == "body"


async def test_join_publish_and_pub_push_reach_every_member_including_publisher(node: InProcessNode) -> None:
    name = room("quiet")
    alice = await node.connected("alice")
    bob = await node.connected("bob")
    joined = (await alice.call("join", room=name))["ok"]
    assert joined == {"epoch": joined["epoch"], "offset": 0, "recovered": False, "publications": []}
    await bob.call("join", room=name)
    published = (await alice.call("publish", room=name, data={"text": "hello"}))["ok"]
    assert published == {"epoch": joined["epoch"], "offset": 1}
    for client in (alice, bob):
        push = await client.push("pub")
        assert push["room"] == name and push["offset"] == 1 and push["data"] == {"text": "hello"}
        assert push["info"] == {"user": "alice", "client": alice.session.client_id}
        assert push["ts"] == int(node.clock.wall() * 1000)


async def test_first_pub_after_join_reply_has_offset_plus_one(node: InProcessNode) -> None:
    name = room()
    for i in range(3):
        assert (await node.api("POST", "/api/publish", json={"room": name, "data": i})).status_code == 200
    client = await node.connected()
    assert (await client.call("join", room=name))["ok"]["offset"] == 3
    await node.api("POST", "/api/publish", json={"room": name, "data": "next"})
    push = await client.push("pub")
    assert push["offset"] == 4
    assert "info" not in push  # HTTP API publications carry no client info


async def test_join_with_since_inside_history_recovers_every_missed_publication_in_order(
    node: InProcessNode,
) -> None:
    name = room()
    client = await node.connected()
    first = (await client.call("join", room=name))["ok"]
    await node.api("POST", "/api/publish", json={"room": name, "data": "seen"})
    seen = await client.push("pub")
    await client.close()
    for i in range(5):
        await node.api("POST", "/api/publish", json={"room": name, "data": f"missed-{i}"})
    again = await node.connected()
    reply = (await again.call("join", room=name, since={"epoch": first["epoch"], "offset": seen["offset"]}))["ok"]
    assert reply["recovered"] is True
    assert [p["offset"] for p in reply["publications"]] == [2, 3, 4, 5, 6]
    assert [p["data"] for p in reply["publications"]] == [f"missed-{i}" for i in range(5)]
    assert reply["offset"] == 6


async def test_join_with_since_outside_history_is_not_recovered_and_returns_nothing(node: InProcessNode) -> None:
    name = room("small")  # history_size 3
    client = await node.connected()
    epoch = (await client.call("join", room=name))["ok"]["epoch"]
    await client.close()
    for i in range(5):
        await node.api("POST", "/api/publish", json={"room": name, "data": i})
    again = await node.connected()
    reply = (await again.call("join", room=name, since={"epoch": epoch, "offset": 0}))["ok"]
    assert reply == {"epoch": epoch, "offset": 5, "recovered": False, "publications": []}


@pytest.mark.parametrize(
    ("since", "why"),
    [({"epoch": "other", "offset": 0}, "epoch mismatch"), ({"epoch": None, "offset": 99}, "offset beyond newest")],
)
async def test_join_recovery_fails_on_epoch_mismatch_or_future_offset(
    node: InProcessNode, since: dict[str, object], why: str
) -> None:
    name = room()
    await node.api("POST", "/api/publish", json={"room": name, "data": 1})
    client = await node.connected()
    epoch = (await client.call("history", room=name))["ok"]["epoch"]
    if since["epoch"] is None:
        since["epoch"] = epoch
    reply = (await client.call("join", room=name, since=since))["ok"]
    assert reply["recovered"] is False, why
    assert reply["publications"] == []


async def test_join_with_since_at_newest_offset_recovers_nothing_missed(node: InProcessNode) -> None:
    name = room()
    await node.api("POST", "/api/publish", json={"room": name, "data": 1})
    client = await node.connected()
    epoch = (await client.call("history", room=name))["ok"]["epoch"]
    reply = (await client.call("join", room=name, since={"epoch": epoch, "offset": 1}))["ok"]
    assert reply["recovered"] is True and reply["publications"] == []


async def test_connect_rooms_rejoins_in_the_same_round_trip_with_per_room_results(node: InProcessNode) -> None:
    name = room()
    await node.api("POST", "/api/publish", json={"room": name, "data": "a"})
    epoch = (await node.api("GET", f"/api/history/{name}")).json()["epoch"]
    client = node.open()
    reply = await client.call(
        "connect",
        token=token("alice", rooms=("chat:*",)),
        rooms={name: {"since": {"epoch": epoch, "offset": 0}}, "secret:x": {}, "nope:x": {}, "chat:bad": 7},
    )
    rooms = reply["ok"]["rooms"]
    assert rooms[name]["recovered"] is True and rooms[name]["publications"][0]["data"] == "a"
    assert rooms["secret:x"]["error"]["code"] == 404  # unknown namespace
    assert rooms["nope:x"]["error"]["code"] == 404
    assert rooms["chat:bad"]["error"]["code"] == 400
    await node.api("POST", "/api/publish", json={"room": name, "data": "b"})
    assert (await client.push("pub"))["offset"] == 2


async def test_join_twice_is_409_and_leave_when_not_joined_is_409(node: InProcessNode) -> None:
    name = room()
    client = await node.connected()
    await client.call("join", room=name)
    assert (await client.call("join", room=name))["error"]["code"] == 409
    assert (await client.call("leave", room=name))["ok"] == {}
    assert (await client.call("leave", room=name))["error"]["code"] == 409


async def test_after_leave_no_more_pub_pushes_arrive_and_the_node_forgets_the_room(node: InProcessNode) -> None:
    name = room()
    client = await node.connected()
    await client.call("join", room=name)
    await client.call("leave", room=name)
    assert node.node.hub.members(Room(name)) == 0 and len(node.node.hub) == 0
    await node.api("POST", "/api/publish", json={"room": name, "data": 1})
    assert "ok" in await client.call("presence_stats", room=name)
    assert not client.inbox


async def test_forbidden_join_and_publish_without_matching_claims(node: InProcessNode) -> None:
    client = await node.connected(token=token("eve", rooms=("chat:open",), publish=()))
    assert (await client.call("join", room="chat:closed"))["error"]["code"] == 403
    assert "ok" in await client.call("join", room="chat:open")
    assert (await client.call("publish", room="chat:open", data=1))["error"]["code"] == 403
    assert (await client.call("history", room="chat:closed"))["error"]["code"] == 403
    assert (await client.call("presence", room="chat:closed"))["error"]["code"] == 403


async def test_public_namespace_allows_join_without_claim_but_not_publish(node: InProcessNode) -> None:
    client = await node.connected(token=token("eve", rooms=(), publish=("*",)))
    assert "ok" in await client.call("join", room="public:news")
    reply = await client.call("publish", room="public:news", data=1)
    assert reply["error"]["code"] == 403 and "disabled" in reply["error"]["reason"]


async def test_glob_claims_match_colons_and_slashes(node: InProcessNode) -> None:
    client = await node.connected(token=token("g", rooms=("chat:team/*",), publish=("chat:*",)))
    assert "ok" in await client.call("join", room="chat:team/a:b/c")
    assert (await client.call("join", room="chat:other"))["error"]["code"] == 403
    assert "ok" in await client.call("publish", room="chat:team/x", data=0)


async def test_unknown_namespace_is_404_and_bad_room_name_is_400(node: InProcessNode) -> None:
    client = await node.connected()
    assert (await client.call("join", room="nosuch:room"))["error"]["code"] == 404
    for bad in ("", "a b", "x" * 256, "ünï", 42, None):
        assert (await client.call("join", room=bad))["error"]["code"] == 400, bad
    assert "ok" in await client.call("join", room="x" * 255)  # default namespace, longest legal name


async def test_publish_idempotency_key_returns_first_result_and_publishes_once(node: InProcessNode) -> None:
    name = room()
    client = await node.connected()
    await client.call("join", room=name)
    first = await client.call("publish", room=name, data="once", idempotency_key="k1")
    second = await client.call("publish", room=name, data="once", idempotency_key="k1")
    assert first["ok"] == second["ok"]
    # Shared with the HTTP API (rule 8).
    via_api = await node.api("POST", "/api/publish", json={"room": name, "data": "once", "idempotency_key": "k1"})
    assert via_api.json() == first["ok"]
    assert len((await client.call("history", room=name))["ok"]["publications"]) == 1
    assert len(client.pushes("pub")) == 1
    # The same key in another room is independent.
    assert (await client.call("publish", room=room(), data="x", idempotency_key="k1"))["ok"]["offset"] == 1


async def test_publish_without_data_is_400_null_data_is_data_and_oversized_data_is_413(
    node_factory: NodeFactory,
) -> None:
    node = await node_factory(max_publication_bytes=1000)
    client = await node.connected()
    name = room()
    assert (await client.call("publish", room=name))["error"]["code"] == 400
    assert (await client.call("publish", room=name, data=None))["ok"]["offset"] == 1  # null is valid JSON data
    assert "ok" in await client.call("publish", room=name, data="x" * 998)  # 1000 bytes with its quotes
    assert (await client.call("publish", room=name, data="x" * 999))["error"]["code"] == 413
    # Bytes, not characters: 1002 bytes in 502 characters.
    assert (await client.call("publish", room=name, data="é" * 500))["error"]["code"] == 413
    assert (await client.call("history", room=name))["ok"]["offset"] == 2


async def test_history_without_since_returns_newest_limit_oldest_first(node: InProcessNode) -> None:
    name = room()
    for i in range(10):
        await node.api("POST", "/api/publish", json={"room": name, "data": i})
    client = await node.connected()
    ok = (await client.call("history", room=name, limit=3))["ok"]
    assert ok["offset"] == 10
    assert [p["offset"] for p in ok["publications"]] == [8, 9, 10]
    since = (await client.call("history", room=name, since={"epoch": ok["epoch"], "offset": 4}, limit=2))["ok"]
    assert [p["offset"] for p in since["publications"]] == [5, 6]
    mismatch = (await client.call("history", room=name, since={"epoch": "nope", "offset": 4}))["ok"]
    assert mismatch["epoch"] == ok["epoch"] and mismatch["publications"] == []
    zero = (await client.call("history", room=name, limit=0))["ok"]
    assert zero["publications"] == [] and zero["offset"] == 10


async def test_history_in_namespace_without_history_is_empty_but_positioned(node: InProcessNode) -> None:
    name = room("nohist")
    client = await node.connected()
    await client.call("publish", room=name, data=1)
    ok = (await client.call("history", room=name))["ok"]
    assert ok["offset"] == 1 and ok["publications"] == [] and ok["epoch"]


async def test_history_expires_after_history_ttl(node: InProcessNode) -> None:
    name = room("short")  # history_ttl 1 s
    client = await node.connected()
    await client.call("publish", room=name, data=1)
    await node.clock.advance(0.5)
    assert len((await client.call("history", room=name))["ok"]["publications"]) == 1
    await node.clock.advance(0.75)
    ok = (await client.call("history", room=name))["ok"]
    assert ok["publications"] == [] and ok["offset"] == 1


async def test_every_room_has_an_epoch_from_first_use(node: InProcessNode) -> None:
    client = await node.connected()
    ok = (await client.call("history", room=room()))["ok"]
    assert isinstance(ok["epoch"], str) and ok["epoch"] and ok["offset"] == 0


async def test_presence_and_stats_count_connections_and_distinct_users(node: InProcessNode) -> None:
    name = room()
    a1 = await node.connected(token=token("alice", info={"name": "Alice"}))
    a2 = await node.connected("alice")
    b = await node.connected("bob")
    for c in (a1, a2, b):
        await c.call("join", room=name)
    clients = (await b.call("presence", room=name))["ok"]["clients"]
    assert clients == {
        a1.session.client_id: {"user": "alice", "info": {"name": "Alice"}},
        a2.session.client_id: {"user": "alice"},
        b.session.client_id: {"user": "bob"},
    }
    assert (await b.call("presence_stats", room=name))["ok"] == {"clients": 3, "users": 2}
    await a2.close()  # the node has released the connection when this returns
    assert (await b.call("presence_stats", room=name))["ok"] == {"clients": 2, "users": 2}
    await a1.call("leave", room=name)
    assert (await b.call("presence_stats", room=name))["ok"] == {"clients": 1, "users": 1}


async def test_presence_disabled_namespace_answers_403(node: InProcessNode) -> None:
    client = await node.connected()
    assert (await client.call("presence", room=room("quiet")))["error"]["code"] == 403
    assert (await client.call("presence_stats", room=room("quiet")))["error"]["code"] == 403


async def test_join_and_leave_pushes_reach_others_but_not_the_actor(node: InProcessNode) -> None:
    name = room()
    watcher = await node.connected("watcher")
    await watcher.call("join", room=name)
    actor = await node.connected("actor")
    await actor.call("join", room=name)
    joined = await watcher.push("join")
    assert joined == {"push": "join", "room": name, "info": {"user": "actor", "client": actor.session.client_id}}
    await actor.call("leave", room=name)
    left = await watcher.push("leave")
    assert left["info"] == joined["info"]
    await actor.call("presence_stats", room=name)
    assert not [m for m in actor.inbox if m.get("push") in ("join", "leave")]
    # A dropped connection leaves too.
    await actor.call("join", room=name)
    await watcher.push("join")
    await actor.close(1006)
    assert (await watcher.push("leave"))["info"]["user"] == "actor"


async def test_join_leave_pushes_are_off_where_the_namespace_disables_them(node: InProcessNode) -> None:
    name = room("quiet")
    watcher = await node.connected("watcher")
    await watcher.call("join", room=name)
    other = await node.connected("other")
    await other.call("join", room=name)
    await other.call("publish", room=name, data="after join")
    assert (await watcher.push("pub"))["data"] == "after join"  # no join push came first


async def test_refresh_extends_expiry_and_rejects_another_users_token(node: InProcessNode) -> None:
    client = await node.connected(token=token("alice", ttl=60))
    assert (await client.call("refresh", token=token("alice", ttl=3600, now=node.clock.wall())))["ok"] == {
        "expires_in": 3600
    }
    assert (await client.call("refresh", token=token("mallory", ttl=3600)))["error"]["code"] == 403
    assert (await client.call("refresh", token="garbage"))["error"]["code"] == 401


async def test_several_commands_in_one_frame_are_answered_in_order(node: InProcessNode) -> None:
    name = room()
    client = node.open()
    await client.send(
        {"id": 1, "op": "connect", "token": token()},
        {"id": 2, "op": "join", "room": name},
        {"id": 3, "op": "publish", "room": name, "data": "batched"},
    )
    got = [await client.recv() for _ in range(4)]
    # The publication is pushed as the broker takes it, before its reply: after the join's, never before.
    assert [m.get("id", m.get("push")) for m in got] == [1, 2, "pub", 3]


async def test_replies_are_compact_json_objects_one_per_line(node: InProcessNode) -> None:
    client = node.open()
    await client.call("connect", token=token())
    frame = client.sink.frames[0]
    assert "\n" not in frame and ": " not in frame and frame.startswith('{"id":1,"ok":')


async def test_pushes_queued_in_one_loop_iteration_share_newline_delimited_frames(node: InProcessNode) -> None:
    name = room()
    client = await node.connected()
    await client.call("join", room=name)
    before = len(client.sink.frames)
    await client.send(*({"id": 100 + i, "op": "publish", "room": name, "data": i} for i in range(50)))
    got = [await client.recv() for _ in range(100)]
    assert sorted(m["offset"] for m in got if m.get("push") == "pub") == list(range(1, 51))
    assert [m["id"] for m in got if "id" in m] == [100 + i for i in range(50)]
    assert len(client.sink.frames) - before < 100  # several messages shared a frame


async def test_history_and_recovery_replies_stay_within_half_the_outbound_queue(node_factory: NodeFactory) -> None:
    node = await node_factory(max_queue_bytes=8192)
    name = room()
    for i in range(10):
        await node.api("POST", "/api/publish", json={"room": name, "data": f"{i}" * 1000})
    client = await node.connected()
    epoch = (await client.call("history", room=name, limit=0))["ok"]["epoch"]
    first = (await client.call("history", room=name, since={"epoch": epoch, "offset": 0}, limit=100))["ok"]
    offsets = [p["offset"] for p in first["publications"]]
    assert offsets == [1, 2, 3]  # about 4 KiB of 1 KB publications, oldest first
    nxt = (await client.call("history", room=name, since={"epoch": epoch, "offset": offsets[-1]}))["ok"]
    assert [p["offset"] for p in nxt["publications"]][0] == 4  # page on with `since`
    too_far = (await client.call("join", room=name, since={"epoch": epoch, "offset": 0}))["ok"]
    assert too_far["recovered"] is False and too_far["publications"] == []
    await client.call("leave", room=name)
    near = (await client.call("join", room=name, since={"epoch": epoch, "offset": 8}))["ok"]
    assert near["recovered"] is True and [p["offset"] for p in near["publications"]] == [9, 10]


async def test_pipelined_publishes_keep_command_order_in_replies_offsets_and_history(node: InProcessNode) -> None:
    name = room()
    await pipelined_publishes(await node.connected(token=token("burst", publish=(name,))), name)


async def test_a_command_that_fails_unexpectedly_is_a_500_reply_and_the_connection_stays(
    node: InProcessNode, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*args: object) -> object:
        raise RuntimeError("a bug")

    client = await node.connected()
    monkeypatch.setattr(node.node, "history", broken)
    reply = await client.call("history", room=room())
    assert reply["error"] == {"code": 500, "reason": "internal error"}
    assert "command history failed" in caplog.text
    assert "ok" in await client.call("presence_stats", room=room())


async def test_a_backend_that_cannot_serve_is_a_503_reply_and_a_failed_join_leaves_nothing_behind(
    node: InProcessNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hubbub.backends.base import BackendUnavailable

    async def unavailable(*args: object, **kwargs: object) -> None:
        raise BackendUnavailable("redis is down")

    client = await node.connected()
    monkeypatch.setattr(node.node.backends.presence, "add", unavailable)
    reply = await client.call("join", room=room())
    assert reply["error"] == {"code": 503, "reason": "temporarily unavailable: redis is down"}
    assert client.session.rooms == {} and len(node.node.hub) == 0
    monkeypatch.undo()
    assert "ok" in await client.call("join", room=room())


async def test_a_backend_down_when_a_connection_closes_is_one_warning_line_and_the_node_lets_go(
    node: InProcessNode, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from hubbub.backends.base import BackendUnavailable

    async def unavailable(*args: object, **kwargs: object) -> None:
        raise BackendUnavailable("redis is down")

    names = [room("chat"), room("chat")]
    client = await node.connected()
    for name in names:
        assert "ok" in await client.call("join", room=name)
    monkeypatch.setattr(node.node.backends.presence, "remove", unavailable)
    monkeypatch.setattr(node.node.backends.broker, "publish_leave", unavailable)
    await client.close()
    lines = [r for r in caplog.records if r.name == "hubbub.session"]
    assert [(r.levelno, r.exc_info) for r in lines] == [(logging.WARNING, None)] * 2, [r.getMessage() for r in lines]
    assert all("redis is down" in r.getMessage() and "expires on its own" in r.getMessage() for r in lines)
    assert len(node.node.hub) == 0 and node.node.sessions == set()  # the node let go of the connection


# --- close codes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("code", list(CloseCode))
async def test_every_close_code_is_announced_with_its_reason_and_reconnect_advice(
    node: InProcessNode, code: CloseCode
) -> None:
    """A session closing with `code` sends the disconnect push of the protocol table, then the close; 1009
    (the transport's verdict on a frame too large) has no push, like the other codes below the protocol."""
    client = await node.connected()
    client.session.close(code)
    closed = await assert_closed(client, code, push=code is not CloseCode.MESSAGE_TOO_BIG)
    assert closed.reason == code.info.reason
    if closed.disconnect is not None:
        assert closed.disconnect == {
            "push": "disconnect",
            "code": int(code),
            "reason": code.info.reason,
            "reconnect": code.info.reconnect,
        }
    assert client.session not in node.node.sessions  # released by the node once closed


@pytest.mark.parametrize("first", [{"id": 1, "op": "join", "room": "chat:x"}, {"op": "pong"}, "not json at all", ""])
async def test_anything_but_connect_first_closes_4001(node: InProcessNode, first: object) -> None:
    client = node.open()
    if isinstance(first, str):
        client.send_text(first)
    else:
        await client.send(first)  # type: ignore[arg-type]
    await assert_closed(client, 4001)


async def test_binary_before_connect_closes_4001_and_after_connect_1003(node: InProcessNode) -> None:
    before = node.open()
    before.send_binary()
    await assert_closed(before, 4001)
    after = await node.connected()
    after.send_binary()
    await assert_closed(after, 1003)


async def test_binary_after_commands_closes_once_they_are_answered(node: InProcessNode) -> None:
    client = await node.connected()
    await client.send({"id": 5, "op": "presence_stats", "room": "chat:x"})
    client.send_binary()
    assert "ok" in await client.reply(5)
    await assert_closed(client, 1003)


@pytest.mark.parametrize("bad", ["garbage", token("x", ttl=-60), token("x")[:-4] + "AAAA", 42])
async def test_invalid_token_in_connect_closes_4001_with_reason(node: InProcessNode, bad: object) -> None:
    client = node.open()
    await client.send({"id": 1, "op": "connect", "token": bad})
    closed = await assert_closed(client, 4001)
    assert closed.disconnect is not None and closed.disconnect["reconnect"] is False


async def test_connect_without_any_token_closes_4001(node: InProcessNode) -> None:
    client = node.open()
    await client.send({"id": 1, "op": "connect"})
    closed = await assert_closed(client, 4001)
    assert closed.reason == "a token is required"


async def test_no_connect_within_connect_timeout_closes_4001_at_the_timeout(node: InProcessNode) -> None:
    client = node.open()
    await node.clock.advance(9.75)  # connect_timeout is 10 s
    assert client.ended is None
    await node.clock.advance(0.25)
    closed = await assert_closed(client, 4001)
    assert closed.reason == "no connect within connect_timeout"


async def test_connect_in_time_stops_the_connect_timeout(node: InProcessNode) -> None:
    client = node.open()
    await node.clock.advance(9.75)
    assert "ok" in await client.call("connect", token=token())
    await node.clock.advance(5)
    assert client.ended is None


@pytest.mark.parametrize(
    "frame",
    [
        "{not json",
        '{"id": 2, "op": "explode"}',
        '{"op": "join", "room": "chat:x"}',
        '{"id": 0, "op": "leave", "room": "chat:x"}',
        '{"id": -3, "op": "leave", "room": "chat:x"}',
        '{"id": 1.5, "op": "leave", "room": "chat:x"}',
        '{"id": "7", "op": "leave", "room": "chat:x"}',
        '{"id": true, "op": "leave", "room": "chat:x"}',
        '{"id": 99999999999999999999999999, "op": "leave", "room": "chat:x"}',
        '[{"id": 2, "op": "leave"}]',
        '"just a string"',
        '{"id": 5, "op": "leave", "room": "a"}\n{"id": 5, "op": "leave", "room": "b"}',
        "\ufffd",
        '{"id": 2, "op": "leave", "room": NaN}',
        "[" * 5000 + "]" * 5000,
    ],
)
async def test_protocol_violations_close_4004(node: InProcessNode, frame: str) -> None:
    client = await node.connected()
    client.send_text(frame)
    await assert_closed(client, 4004)


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        ({"id": 2, "op": "subscribe", "room": "chat:x"}, 'unknown op "subscribe" (ops: connect, join, leave, publish'),
        ({"id": 2, "op": "publsh", "room": "chat:x"}, 'unknown op "publsh" (did you mean "publish"?)'),
        ({"id": 2, "room": "chat:x"}, "a command needs an op"),
        ({"id": 2, "op": 7}, "op must be a string"),
        ({"id": 2, "op": '\u00e9"' + "x" * 300}, 'unknown op "?\\"xxxxxxxxxxxxxxxxxxxxxx" (ops:'),
    ],
)
async def test_an_unknown_op_is_named_in_the_close(
    node: InProcessNode, command: dict[str, object], reason: str
) -> None:
    client = await node.connected()
    await client.send(command)
    closed = await assert_closed(client, 4004)
    assert closed.disconnect is not None and closed.disconnect["reason"].startswith(reason)
    assert len(closed.disconnect["reason"].encode()) <= 123


async def test_bad_parameters_are_400_replies_and_keep_the_connection(node: InProcessNode) -> None:
    client = await node.connected()
    bad_params: list[dict[str, Any]] = [
        {"op": "join", "room": "chat:x", "since": "yesterday"},
        {"op": "join", "room": "chat:x", "since": {"epoch": 1, "offset": 0}},
        {"op": "join", "room": "chat:x", "since": {"epoch": "e", "offset": -1}},
        {"op": "history", "room": "chat:x", "limit": "ten"},
        {"op": "publish", "room": "chat:x", "data": 1, "idempotency_key": ""},
        {"op": "publish", "room": "chat:x", "data": 1, "idempotency_key": "k" * 129},
        {"op": "refresh"},
        {"op": "connect", "token": token()},
        {"op": "connect", "rooms": []},
    ]
    for params in bad_params:
        reply = await client.call(**params)
        assert reply["error"]["code"] == 400, (params, reply)
    assert "ok" in await client.call("join", room="chat:still-alive")


async def test_room_limit_answers_429_and_leaving_frees_a_slot(node_factory: NodeFactory) -> None:
    node = await node_factory(max_rooms_per_connection=2)
    client = await node.connected()
    assert "ok" in await client.call("join", room="chat:a")
    assert "ok" in await client.call("join", room="chat:b")
    assert (await client.call("join", room="chat:c"))["error"]["code"] == 429
    await client.call("leave", room="chat:a")
    assert "ok" in await client.call("join", room="chat:c")


async def test_command_flood_gets_429_then_closes_4029(node_factory: NodeFactory) -> None:
    node = await node_factory(command_rate=0.1, command_burst=5)  # the clock stands still: no refill
    client = await node.connected()
    await client.send(*({"id": 10 + i, "op": "presence_stats", "room": "chat:x"} for i in range(5)))
    assert all(["ok" in await client.reply(10 + i) for i in range(5)])
    await client.send({"id": 20, "op": "presence_stats", "room": "chat:x"})
    assert (await client.reply(20))["error"] == {"code": 429, "reason": "rate limited: slow down"}
    await client.send(*({"id": 30 + i, "op": "presence_stats", "room": "chat:x"} for i in range(10)))
    await assert_closed(client, 4029)
    # The debt reaches the burst at the fifth command over it: 33 closes the connection.
    assert [m["id"] for m in client.received() if "id" in m] == [1, *range(10, 15), 20, *range(30, 33)]


async def test_a_pipelined_publish_burst_closed_4029_publishes_nothing_after_the_limit(
    node_factory: NodeFactory,
) -> None:
    node = await node_factory(command_rate=0.1, command_burst=5)
    client = await node.connected()
    assert "ok" in await client.call("join", room="chat:flood")  # one token spent: 4 left
    await client.send(*({"id": 100 + i, "op": "publish", "room": "chat:flood", "data": i} for i in range(30)))
    await assert_closed(client, 4029)
    replies = [m for m in client.received() if m.get("id", 0) >= 100]
    # In command order: 4 accepted, then 429 until the debt reaches the burst (5: 4 more), then the close.
    assert [(r["id"], "ok" in r) for r in replies] == [(100 + i, i < 4) for i in range(8)]
    observer = await node.connected("observer")
    history = (await observer.call("history", room="chat:flood", limit=100))["ok"]
    assert [p["data"] for p in history["publications"]] == [0, 1, 2, 3]  # nothing behind the closing one ran


async def test_the_command_budget_refills_with_the_clock(node_factory: NodeFactory) -> None:
    node = await node_factory(command_rate=20, command_burst=2)
    client = await node.connected()
    for _ in range(6):
        assert "ok" in await client.call("presence_stats", room="chat:x")
        await node.clock.advance(0.05)  # one token
    await client.send(*({"id": 100 + i, "op": "presence_stats", "room": "chat:x"} for i in range(2)))
    assert "ok" in await client.reply(100)
    assert (await client.reply(101))["error"]["code"] == 429


async def test_slow_consumer_is_closed_4008_others_unaffected_and_sees_why_when_it_reads_again(
    node_factory: NodeFactory,
) -> None:
    node = await node_factory(max_queue_bytes=65536)
    slow = await node.connected("slow")
    await slow.call("join", room="chat:firehose")
    fast = await node.connected("fast")
    await fast.call("join", room="chat:firehose")
    slow.sink.paused = True  # its socket takes nothing more
    publisher = await node.connected("publisher")
    for _ in range(40):  # 40 × 2 KB: over the 64 KiB queue
        assert "ok" in await publisher.call("publish", room="chat:firehose", data="x" * 2000)
    assert len(fast.pushes("pub")) == 40
    assert slow.ended is None and slow.session.close_code == 4008  # closed, the close waiting for the socket
    metrics = (await node.api("GET", "/metrics")).text
    assert "hubbub_slow_consumer_disconnects_total 1.0" in metrics.splitlines()
    slow.resume()
    closed = await slow.closed()
    assert closed.code == 4008 and closed.disconnect is not None and closed.disconnect["reconnect"] is True
    # The publications queued for it were dropped: what waited for the socket is the close alone.
    pushes = [m.get("push") for m in slow.received() if "push" in m]
    assert "pub" not in pushes and pushes[-1] == "disconnect"


async def test_token_expiry_without_refresh_closes_4009_at_exp(node_factory: NodeFactory) -> None:
    node = await node_factory(ping_interval=3600)  # no heartbeat to answer meanwhile
    client = await node.connected(token=token("short", ttl=60, now=node.clock.wall()))
    await node.clock.advance(59.75)
    assert client.ended is None
    await node.clock.advance(0.25)
    closed = await assert_closed(client, 4009)
    assert closed.disconnect is not None and closed.disconnect["reconnect"] is True


async def test_refresh_before_expiry_keeps_the_connection(node_factory: NodeFactory) -> None:
    node = await node_factory(ping_interval=3600)
    client = await node.connected(token=token("short", ttl=3, now=node.clock.wall()))
    assert "ok" in await client.call("refresh", token=token("short", ttl=60, now=node.clock.wall()))
    await node.clock.advance(30)
    assert "ok" in await client.call("presence_stats", room="chat:x")
    assert client.ended is None
    await node.clock.advance(31)
    await assert_closed(client, 4009)


async def test_api_disconnect_closes_every_connection_of_the_user(node: InProcessNode) -> None:
    for code in (4000, 4003, 4011):
        user = f"target-{code}"
        a = await node.connected(user)
        b = await node.connected(user)
        bystander = await node.connected("bystander")
        response = await node.api("POST", "/api/disconnect", json={"user": user, "code": code, "reason": "bye"})
        assert response.json() == {"disconnected": 2}
        for client in (a, b):
            closed = await assert_closed(client, code)
            assert closed.disconnect is not None and closed.disconnect["reason"] == "bye"
        assert "ok" in await bystander.call("presence_stats", room="chat:x")


async def test_lost_publications_close_the_rooms_members_4011(node: InProcessNode) -> None:
    member = await node.connected()
    await member.call("join", room="chat:lossy")
    elsewhere = await node.connected()
    await elsewhere.call("join", room="chat:fine")
    node.node.hub.on_insufficient_state(Room("chat:lossy"), "history_lost")
    await assert_closed(member, 4011)
    assert "ok" in await elsewhere.call("presence_stats", room="chat:fine")


async def test_a_full_node_closes_1013_and_readyz_reports_503(node_factory: NodeFactory) -> None:
    node = await node_factory(max_connections=2)
    first = await node.connected()
    assert (await node.api("GET", "/readyz")).status_code == 200
    await node.connected()
    ready = await node.api("GET", "/readyz")
    assert ready.status_code == 503 and ready.json()["reason"] == "at connection capacity"
    await assert_closed(node.open(), 1013)
    await first.close()
    assert (await node.api("GET", "/readyz")).status_code == 200


# --- heartbeats ---------------------------------------------------------------------------------


async def test_pings_come_every_ping_interval_and_unanswered_close_4010_at_pong_timeout(
    node: InProcessNode,
) -> None:
    client = await node.connected()  # ping_interval 25 s, pong_timeout 10 s
    await node.clock.advance(24.75)
    assert not client.inbox
    await node.clock.advance(0.25)
    assert (await client.recv())["push"] == "ping"
    await node.clock.advance(9.75)
    assert client.ended is None
    await node.clock.advance(0.25)
    closed = await assert_closed(client, 4010)
    assert closed.disconnect is not None and closed.disconnect["reconnect"] is True


async def test_answered_pings_keep_the_connection_alive(node: InProcessNode) -> None:
    client = await node.connected()
    await node.clock.advance(25)
    for _ in range(4):
        assert (await client.recv())["push"] == "ping"
        await client.send({"op": "pong"})
        await node.clock.advance(10)  # past the pong timeout
        assert client.ended is None and not client.inbox
        await node.clock.advance(15)  # the next ping
    assert (await client.call("pong"))["ok"] == {}  # a pong with an id is answered
    assert "ok" in await client.call("presence_stats", room="chat:x")


async def test_a_connection_that_is_not_connected_yet_is_never_pinged(node_factory: NodeFactory) -> None:
    node = await node_factory(connect_timeout=100)
    client = node.open()
    await node.clock.advance(60)
    assert not client.inbox and client.ended is None


async def test_closed_connections_leave_no_timer_entries_behind(node: InProcessNode) -> None:
    clients = [await node.connected(token=token(f"u{i}", ttl=3600)) for i in range(10)]
    for client in clients:
        await client.close()
    await node.clock.advance(36)  # every ping and pong deadline of theirs is past
    internals = node.node.internals()
    assert internals["sessions"] == 0 and internals["users"] == 0
    assert internals["timer_entries"] == 0


# --- draining --------------------------------------------------------------------------------------


async def test_a_drain_is_unready_at_once_serves_drain_delay_then_closes_evenly_with_1012(
    node_factory: NodeFactory,
) -> None:
    delay, period, count = 1.0, 3.0, 30
    node = await node_factory(drain_delay=delay, drain_period=period)
    clients = [await node.connected(f"user{i}") for i in range(count)]
    start = node.clock.now
    node.node.begin_drain()
    ready = await node.api("GET", "/readyz")
    assert ready.status_code == 503 and ready.json()["reason"] == "draining"
    assert "hubbub_draining 1.0" in (await node.api("GET", "/metrics")).text
    await node.clock.advance(delay - 0.05)
    assert all(c.ended is None for c in clients)
    # Still serving during drain_delay: a late connection is accepted and its commands work.
    late = await node.connected("late")
    assert "ok" in await late.call("presence_stats", room="chat:drain")
    clients.append(late)

    closed_at: dict[int, float] = {}
    while len(closed_at) < len(clients):
        assert node.clock.now - start <= delay + period + 0.1, "closing took longer than drain_period"
        await node.clock.advance(0.05)
        closed_at.update((i, node.clock.now - start) for i, c in enumerate(clients) if c.ended and i not in closed_at)
    for client in clients:
        await assert_closed(client, 1012)
    offsets = sorted(closed_at.values())
    assert offsets[0] > delay
    # Evenly: each third of the period closed a third of the connections (31: 10 or 11 each).
    thirds = [
        sum(1 for t in offsets if delay + k * period / 3 < t <= delay + (k + 1) * period / 3 + 1e-9) for k in range(3)
    ]
    assert thirds in ([11, 10, 10], [10, 11, 10], [10, 10, 11]), thirds
    await node.clock.advance(0.05)
    assert node.node.drained.is_set()


async def test_a_connection_opened_once_the_drain_closes_connections_is_closed_1012_at_once(
    node_factory: NodeFactory,
) -> None:
    node = await node_factory(drain_delay=0.25, drain_period=5.0)
    holders = [await node.connected(f"holder{i}") for i in range(10)]
    node.node.begin_drain()
    await node.clock.advance(0.75)
    assert 0 < sum(1 for h in holders if h.ended) < 10  # the paced closing has begun
    await assert_closed(node.open(), 1012)  # at once: the clock has not moved


async def test_an_idle_node_drains_at_once_after_the_delay(node_factory: NodeFactory) -> None:
    node = await node_factory(drain_delay=0.5, drain_period=20.0)
    node.node.begin_drain()
    await node.clock.advance(0.5)
    assert node.node.drained.is_set()


async def test_shedding_closes_some_connections_evenly_with_1012_rebalancing(node_factory: NodeFactory) -> None:
    node = await node_factory()
    clients = [await node.connected(f"user{i}") for i in range(10)]
    response = await node.api("POST", "/api/shed", json={"connections": 4, "period": 2})
    assert response.json()["shedding"] == 4
    await node.clock.advance(1.0)
    assert sum(1 for c in clients if c.ended) == 2
    await node.clock.advance(1.0)
    shed = [c for c in clients if c.ended]
    assert len(shed) == 4
    for client in shed:
        closed = await assert_closed(client, 1012)
        assert closed.reason == SHED_REASON and closed.disconnect is not None
        assert closed.disconnect["reason"] == SHED_REASON and closed.disconnect["reconnect"] is True
    await node.clock.advance(10)
    assert sum(1 for c in clients if c.ended) == 4


# --- garbage --------------------------------------------------------------------------------------


async def probe(client: InProcessClient, *, connected: bool) -> tuple[list[dict[str, Any]], int | None]:
    """After a case: the replies to it, and None if a probe command is still answered, else the close code."""
    replies: list[dict[str, Any]] = []
    probe_command = (
        {"id": PROBE_ID, "op": "presence_stats", "room": "chat:probe"}
        if connected
        else {"id": PROBE_ID, "op": "connect", "token": token(USER)}
    )
    await client.send(probe_command)
    try:
        while True:
            message = await client.recv()
            if message.get("id") == PROBE_ID:
                return replies, None
            if "id" in message:
                replies.append(message)
    except Closed as closed:
        assert closed.code is not None
        if closed.code in (4001, 4004, 1003):  # closes of the application: announced (rule 9)
            assert closed.disconnect is not None and closed.disconnect["code"] == closed.code, closed
        return replies, closed.code


def error_replies_only(what: str, replies: list[dict[str, Any]]) -> None:
    for reply in replies:
        assert set(reply) in ({"id", "ok"}, {"id", "error"}), f"{what}: malformed reply {reply}"
        if "error" in reply:
            assert reply["error"]["code"] in REPLY_CODES, f"{what}: reply {reply}"
            assert isinstance(reply["error"]["reason"], str) and reply["error"]["reason"], f"{what}: {reply}"


@pytest.mark.parametrize("frame", ["", "\n", "\n\n\n\n", " ", "\t \r\n", "\r\n" * 100])
@pytest.mark.parametrize("connect", [True, False], ids=["after-connect", "before-connect"])
async def test_empty_and_blank_frames_are_a_protocol_violation(node: InProcessNode, frame: str, connect: bool) -> None:
    client = await node.connected(USER) if connect else node.open()
    client.send_text(frame)
    assert (await probe(client, connected=connect))[1] == (4004 if connect else 4001)


@pytest.mark.parametrize(
    "frame",
    [
        "{",
        '{"id":1,"op":"join"',
        "not json",
        "nul",
        "[1,2",
        '{"id":1,"op":"join","room":"chat:x"}}',
        '{"id":1,"op":"join","room":"chat:x",}',
        "{'id':1,'op':'join'}",
        '{"id":01,"op":"pong"}',
        '{"id":1,"op":"join","room":"chat:x"} trailing',
        "NaN",
        '{"id":NaN,"op":"join"}',
        '{"id":1,"op":"publish","room":"chat:x","data":Infinity}',
        "\x00",
        "\ufeff{}",
        "1",
        "[]",
        '"join"',
        "null",
        '{"id":1}',
        '{"op":"join"}',
        '{"id":1,"op":"nope"}',
        '{"id":1,"op":"JOIN"}',
        '{"id":1,"op":["join"]}',
    ],
)
async def test_malformed_json_and_non_commands_close_4004(node: InProcessNode, frame: str) -> None:
    client = await node.connected(USER)
    client.send_text(frame)
    replies, code = await probe(client, connected=True)
    assert (replies, code) == ([], 4004)


@pytest.mark.parametrize(
    "raw_id",
    ["0", "-1", "9007199254740992", "18446744073709551617", "1" + "0" * 400, "1.0", "1e3", "1e400", '"1"']
    + ["true", "[1]"],
)
async def test_ids_out_of_range_or_not_integers_close_4004(node: InProcessNode, raw_id: str) -> None:
    client = await node.connected(USER)
    client.send_text(f'{{"id":{raw_id},"op":"presence_stats","room":"chat:ids"}}')
    assert await probe(client, connected=True) == ([], 4004)


async def test_the_largest_id_and_huge_numbers_in_data_round_trip_exactly(node: InProcessNode) -> None:
    client = await node.connected(USER)
    assert "ok" in await client.call("join", room="chat:numbers")
    values = [10**400, -(10**400), 2**64 + 1, 2**53 + 1, -(2**63) - 1, 1e308, 5e-324, -0.0]
    client.send_text(render({"id": 2**53 - 1, "op": "publish", "room": "chat:numbers", "data": values}))
    assert "ok" in await client.reply(2**53 - 1)
    assert (await client.push("pub"))["data"] == values


async def test_duplicate_ids_in_one_frame_close_4004(node: InProcessNode) -> None:
    client = await node.connected(USER)
    await client.send({"id": 5, "op": "presence_stats", "room": "chat:dup"}, {"id": 5, "op": "presence", "room": "x"})
    assert await probe(client, connected=True) == ([], 4004)


async def test_wrong_types_in_every_field_of_every_op_get_error_replies_never_500(
    node_factory: NodeFactory, no_errors_logged: Callable[[], None]
) -> None:
    """Each op, each field (and its absence), each garbage value; one connection for as long as it lasts."""
    node = await node_factory(command_rate=100000, command_burst=100000)
    client: InProcessClient | None = None
    command_id = 0
    cases = 0
    closes: dict[int, int] = {}
    for op in TEMPLATES:
        for path in every_field(op):
            for value in (MISSING, *GARBAGE):
                command_id += 1
                frame = render(mutated(op, command_id, path, value))
                if len(frame.encode()) > FRAME_LIMIT:
                    continue  # the transport's 1009, in the process tests
                if client is None:
                    client = await node.connected(USER)
                client.send_text(frame)
                what = f"{op}.{'.'.join(path)}={value!r:.60}"
                replies, code = await probe(client, connected=True)
                error_replies_only(what, replies)
                assert code in (None, 4004), f"{what}: closed {code}"
                cases += 1
                if code is not None:
                    closes[code] = closes.get(code, 0) + 1
                    client = None
    for path in every_field("connect"):
        for value in (MISSING, *GARBAGE):
            frame = render(mutated("connect", 1, path, value))
            if len(frame.encode()) > FRAME_LIMIT:
                continue
            fresh = node.open()
            fresh.send_text(frame)
            what = f"connect.{'.'.join(path)}={value!r:.60}"
            replies, code = await probe(fresh, connected=False)
            error_replies_only(what, replies)
            assert code in (None, 4001), f"{what}: closed {code}"
            cases += 1
            await fresh.close()
    assert cases > 900
    # Only a broken id or op is a protocol violation (4004); every bad parameter is a reply.
    assert set(closes) <= {4004}, closes
    no_errors_logged()


async def test_deeply_nested_data_is_refused_alike_on_every_path_and_never_poisons_a_room(
    node_factory: NodeFactory, no_errors_logged: Callable[[], None]
) -> None:
    """Data nested deeper than the encoders manage is a 400, with or without integers beyond 64 bits.

    Before the depth bound, data a few levels short of the interpreter's recursion limit was stored but
    failed to encode in its pub push (500 to the publisher, a gap for members) and in every later
    history or recovering join reply (close 1011 for anyone reading the room).
    """
    node = await node_factory(command_rate=100000, command_burst=100000)
    member = await node.connected("member")
    epoch = (await member.call("join", room="chat:deep"))["ok"]["epoch"]
    publisher = await node.connected(USER)
    offset = 0
    # Every depth up to past the parsers' limits, since where encoding used to fail depended on the call stack.
    # Past orjson's parser (1024 levels), or with a value only the standard library parses (a long integer, a
    # lone surrogate) past the interpreter's recursion limit, the command cannot be parsed at all: 4004.
    attempts: list[tuple[int, object]] = [(depth, 0) for depth in (1, 100, 254, *range(255, 1031))]
    attempts += [(depth, leaf) for depth in (1, 254, 255, 300, 600, 900, 950, 990, 1000) for leaf in (10**30, "\ud800")]
    for depth, leaf in attempts:
        publisher.send_text(render({"id": 1, "op": "publish", "room": "chat:deep", "data": nested(depth, leaf)}))
        replies, code = await probe(publisher, connected=True)
        if depth <= 254:
            assert code is None and "ok" in replies[0], (depth, leaf, replies, code)
            offset += 1
            push = await member.push("pub")
            assert push["offset"] == offset and push["data"] == json.loads(nested(depth, leaf).text)
        else:
            assert code == 4004 or (code is None and replies[0]["error"]["code"] == 400), (depth, leaf, replies, code)
            if code is not None:
                publisher = await node.connected(USER)
    # The room stays readable: history and a recovering join carry every stored publication.
    history = await publisher.call("history", room="chat:deep", since={"epoch": epoch, "offset": 0})
    assert [p["offset"] for p in history["ok"]["publications"]] == list(range(1, offset + 1))
    late = await node.connected("late")
    rejoined = await late.call("join", room="chat:deep", since={"epoch": epoch, "offset": 0})
    assert rejoined["ok"]["recovered"] is True and len(rejoined["ok"]["publications"]) == offset
    # 100,000 levels cannot even be parsed: a protocol violation, not a crash.
    publisher.send_text('{"id":1,"op":"publish","room":"chat:deep","data":' + "[" * 100000 + "]" * 100000 + "}")
    assert await probe(publisher, connected=True) == ([], 4004)
    assert "ok" in await member.call("presence_stats", room="chat:deep")
    no_errors_logged()
