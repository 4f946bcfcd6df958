"""Every command and push of protocol v1 against a real server process."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from tests.support.polling import until
from tests.support.server import ServerProcess
from tests.support.wsclient import RawClient, publish_burst, token


def room(ns: str = "chat") -> str:
    return f"{ns}:{uuid.uuid4().hex[:10]}"


async def test_connect_reply_carries_client_user_expiry_and_ping_interval(server: ServerProcess) -> None:
    client = await RawClient.open(server.ws_url)
    reply = await client.call("connect", token=token("alice", ttl=120))
    ok = reply["ok"]
    assert ok["user"] == "alice"
    assert isinstance(ok["client"], str) and ok["client"]
    assert 100 <= ok["expires_in"] <= 120
    assert ok["ping_interval"] == 25
    assert ok["rooms"] == {}
    await client.close()


async def test_token_without_exp_reports_expires_in_null(server: ServerProcess) -> None:
    client = await RawClient.open(server.ws_url)
    reply = await client.call("connect", token=token("bob", ttl=None))
    assert reply["ok"]["expires_in"] is None
    await client.close()


async def test_subprotocol_is_selected_when_offered_and_optional(server: ServerProcess) -> None:
    with_proto = await RawClient.open(server.ws_url, subprotocols=["hubbub.v1.json"])
    assert with_proto.ws.subprotocol == "hubbub.v1.json"
    await with_proto.close()
    without = await RawClient.open(server.ws_url)
    assert without.ws.subprotocol is None
    assert "ok" in await without.call("connect", token=token())
    await without.close()


async def test_join_publish_and_pub_push_reach_every_member_including_publisher(server: ServerProcess) -> None:
    name = room("quiet")
    alice = await RawClient.connected(server.ws_url, "alice")
    bob = await RawClient.connected(server.ws_url, "bob")
    joined = await alice.call("join", room=name)
    assert joined["ok"] == {"epoch": joined["ok"]["epoch"], "offset": 0, "recovered": False, "publications": []}
    await bob.call("join", room=name)
    published = await alice.call("publish", room=name, data={"text": "hello"})
    assert published["ok"]["offset"] == 1
    assert published["ok"]["epoch"] == joined["ok"]["epoch"]
    for client in (alice, bob):
        push = await client.push("pub")
        assert push["room"] == name and push["offset"] == 1 and push["data"] == {"text": "hello"}
        assert push["info"]["user"] == "alice"
        assert isinstance(push["ts"], int)
    await alice.close()
    await bob.close()


async def test_first_pub_after_join_reply_has_offset_plus_one(server: ServerProcess) -> None:
    name = room()
    for i in range(3):
        server.api("POST", "/api/publish", json={"room": name, "data": i})
    client = await RawClient.connected(server.ws_url)
    joined = await client.call("join", room=name)
    assert joined["ok"]["offset"] == 3
    server.api("POST", "/api/publish", json={"room": name, "data": "next"})
    push = await client.push("pub")
    assert push["offset"] == 4
    assert "info" not in push  # HTTP API publications carry no client info
    await client.close()


async def test_join_with_since_inside_history_recovers_every_missed_publication_in_order(
    server: ServerProcess,
) -> None:
    name = room()
    client = await RawClient.connected(server.ws_url)
    first = (await client.call("join", room=name))["ok"]
    server.api("POST", "/api/publish", json={"room": name, "data": "seen"})
    seen = await client.push("pub")
    await client.close()
    for i in range(5):
        server.api("POST", "/api/publish", json={"room": name, "data": f"missed-{i}"})
    again = await RawClient.connected(server.ws_url)
    reply = (await again.call("join", room=name, since={"epoch": first["epoch"], "offset": seen["offset"]}))["ok"]
    assert reply["recovered"] is True
    assert [p["offset"] for p in reply["publications"]] == [2, 3, 4, 5, 6]
    assert [p["data"] for p in reply["publications"]] == [f"missed-{i}" for i in range(5)]
    assert reply["offset"] == 6
    await again.close()


async def test_join_with_since_outside_history_is_not_recovered_and_returns_nothing(server: ServerProcess) -> None:
    name = room("small")  # history_size 3
    client = await RawClient.connected(server.ws_url)
    epoch = (await client.call("join", room=name))["ok"]["epoch"]
    await client.close()
    for i in range(5):
        server.api("POST", "/api/publish", json={"room": name, "data": i})
    again = await RawClient.connected(server.ws_url)
    reply = (await again.call("join", room=name, since={"epoch": epoch, "offset": 0}))["ok"]
    assert reply == {"epoch": epoch, "offset": 5, "recovered": False, "publications": []}
    await again.close()


@pytest.mark.parametrize(
    ("since", "why"),
    [({"epoch": "other", "offset": 0}, "epoch mismatch"), ({"epoch": None, "offset": 99}, "offset beyond newest")],
)
async def test_join_recovery_fails_on_epoch_mismatch_or_future_offset(
    server: ServerProcess, since: dict[str, object], why: str
) -> None:
    name = room()
    server.api("POST", "/api/publish", json={"room": name, "data": 1})
    client = await RawClient.connected(server.ws_url)
    epoch = (await client.call("history", room=name))["ok"]["epoch"]
    if since["epoch"] is None:
        since["epoch"] = epoch
    reply = (await client.call("join", room=name, since=since))["ok"]
    assert reply["recovered"] is False, why
    assert reply["publications"] == []
    await client.close()


async def test_join_with_since_at_newest_offset_recovers_nothing_missed(server: ServerProcess) -> None:
    name = room()
    server.api("POST", "/api/publish", json={"room": name, "data": 1})
    client = await RawClient.connected(server.ws_url)
    epoch = (await client.call("history", room=name))["ok"]["epoch"]
    reply = (await client.call("join", room=name, since={"epoch": epoch, "offset": 1}))["ok"]
    assert reply["recovered"] is True and reply["publications"] == []
    await client.close()


async def test_connect_rooms_rejoins_in_the_same_round_trip_with_per_room_results(server: ServerProcess) -> None:
    name = room()
    server.api("POST", "/api/publish", json={"room": name, "data": "a"})
    epoch = server.api("GET", f"/api/history/{name}").json()["epoch"]
    client = await RawClient.open(server.ws_url)
    reply = await client.call(
        "connect",
        token=token("alice", rooms=("chat:*",)),
        rooms={name: {"since": {"epoch": epoch, "offset": 0}}, "secret:x": {}, "nope:x": {}},
    )
    rooms = reply["ok"]["rooms"]
    assert rooms[name]["recovered"] is True and rooms[name]["publications"][0]["data"] == "a"
    assert rooms["secret:x"]["error"]["code"] == 404  # unknown namespace
    assert rooms["nope:x"]["error"]["code"] == 404
    server.api("POST", "/api/publish", json={"room": name, "data": "b"})
    assert (await client.push("pub"))["offset"] == 2
    await client.close()


async def test_join_twice_is_409_and_leave_when_not_joined_is_409(server: ServerProcess) -> None:
    name = room()
    client = await RawClient.connected(server.ws_url)
    await client.call("join", room=name)
    assert (await client.call("join", room=name))["error"]["code"] == 409
    assert (await client.call("leave", room=name))["ok"] == {}
    assert (await client.call("leave", room=name))["error"]["code"] == 409
    await client.close()


async def test_after_leave_no_more_pub_pushes_arrive(server: ServerProcess) -> None:
    name = room()
    client = await RawClient.connected(server.ws_url)
    await client.call("join", room=name)
    await client.call("leave", room=name)
    server.api("POST", "/api/publish", json={"room": name, "data": 1})
    reply = await client.call("presence_stats", room=name)  # a round trip: the pub would have arrived before
    assert "ok" in reply
    assert not client.inbox
    await client.close()


async def test_forbidden_join_and_publish_without_matching_claims(server: ServerProcess) -> None:
    client = await RawClient.connected(server.ws_url, token=token("eve", rooms=("chat:open",), publish=()))
    assert (await client.call("join", room="chat:closed"))["error"]["code"] == 403
    assert "ok" in await client.call("join", room="chat:open")
    assert (await client.call("publish", room="chat:open", data=1))["error"]["code"] == 403
    assert (await client.call("history", room="chat:closed"))["error"]["code"] == 403
    assert (await client.call("presence", room="chat:closed"))["error"]["code"] == 403
    await client.close()


async def test_public_namespace_allows_join_without_claim_but_not_publish(server: ServerProcess) -> None:
    client = await RawClient.connected(server.ws_url, token=token("eve", rooms=(), publish=("*",)))
    assert "ok" in await client.call("join", room="public:news")
    reply = await client.call("publish", room="public:news", data=1)
    assert reply["error"]["code"] == 403 and "disabled" in reply["error"]["reason"]
    await client.close()


async def test_glob_claims_match_colons_and_slashes(server: ServerProcess) -> None:
    client = await RawClient.connected(server.ws_url, token=token("g", rooms=("chat:team/*",), publish=("chat:*",)))
    assert "ok" in await client.call("join", room="chat:team/a:b/c")
    assert (await client.call("join", room="chat:other"))["error"]["code"] == 403
    assert "ok" in await client.call("publish", room="chat:team/x", data=0)
    await client.close()


async def test_unknown_namespace_is_404_and_bad_room_name_is_400(server: ServerProcess) -> None:
    client = await RawClient.connected(server.ws_url)
    assert (await client.call("join", room="nosuch:room"))["error"]["code"] == 404
    for bad in ("", "a b", "x" * 256, "ünï", 42, None):
        assert (await client.call("join", room=bad))["error"]["code"] == 400, bad
    assert "ok" in await client.call("join", room="x" * 255)  # default namespace, longest legal name
    await client.close()


async def test_publish_idempotency_key_returns_first_result_and_publishes_once(server: ServerProcess) -> None:
    name = room()
    client = await RawClient.connected(server.ws_url)
    await client.call("join", room=name)
    first = await client.call("publish", room=name, data="once", idempotency_key="k1")
    second = await client.call("publish", room=name, data="once", idempotency_key="k1")
    assert first["ok"] == second["ok"]
    # Shared with the HTTP API (rule 8).
    via_api = server.api("POST", "/api/publish", json={"room": name, "data": "once", "idempotency_key": "k1"})
    assert via_api.json() == first["ok"]
    history = (await client.call("history", room=name))["ok"]["publications"]
    assert len(history) == 1
    # The same key in another room is independent.
    other = await client.call("publish", room=room(), data="x", idempotency_key="k1")
    assert other["ok"]["offset"] == 1
    await client.close()


async def test_publish_without_data_or_with_oversized_data_is_rejected(server: ServerProcess) -> None:
    client = await RawClient.connected(server.ws_url)
    name = room()
    assert (await client.call("publish", room=name))["error"]["code"] == 400
    assert (await client.call("publish", room=name, data=None))["ok"]["offset"] == 1  # null is valid JSON data
    too_big = "x" * 70_000  # over max_publication_bytes but under... the frame limit is hit first
    with pytest.raises(Exception):  # noqa: B017 - the frame itself is over 64 KiB: close 1009
        await client.call("publish", room=name, data=too_big)
    await client.close()


async def test_history_without_since_returns_newest_limit_oldest_first(server: ServerProcess) -> None:
    name = room()
    for i in range(10):
        server.api("POST", "/api/publish", json={"room": name, "data": i})
    client = await RawClient.connected(server.ws_url)
    ok = (await client.call("history", room=name, limit=3))["ok"]
    assert ok["offset"] == 10
    assert [p["offset"] for p in ok["publications"]] == [8, 9, 10]
    since = (await client.call("history", room=name, since={"epoch": ok["epoch"], "offset": 4}, limit=2))["ok"]
    assert [p["offset"] for p in since["publications"]] == [5, 6]
    mismatch = (await client.call("history", room=name, since={"epoch": "nope", "offset": 4}))["ok"]
    assert mismatch["epoch"] == ok["epoch"] and mismatch["publications"] == []
    zero = (await client.call("history", room=name, limit=0))["ok"]
    assert zero["publications"] == [] and zero["offset"] == 10
    await client.close()


async def test_history_in_namespace_without_history_is_empty_but_positioned(server: ServerProcess) -> None:
    name = room("nohist")
    client = await RawClient.connected(server.ws_url)
    await client.call("publish", room=name, data=1)
    ok = (await client.call("history", room=name))["ok"]
    assert ok["offset"] == 1 and ok["publications"] == [] and ok["epoch"]
    await client.close()


async def test_history_expires_after_history_ttl(server: ServerProcess) -> None:
    name = room("short")  # history_ttl 1 s
    client = await RawClient.connected(server.ws_url)
    await client.call("publish", room=name, data=1)
    await asyncio.sleep(1.2)  # the subject is time passing: history_ttl is 1 s, checked on every read
    ok = (await client.call("history", room=name))["ok"]
    assert ok["publications"] == [] and ok["offset"] == 1
    await client.close()


async def test_every_room_has_an_epoch_from_first_use(server: ServerProcess) -> None:
    client = await RawClient.connected(server.ws_url)
    ok = (await client.call("history", room=room()))["ok"]
    assert isinstance(ok["epoch"], str) and ok["epoch"] and ok["offset"] == 0
    await client.close()


async def test_presence_and_stats_count_connections_and_distinct_users(server: ServerProcess) -> None:
    name = room()
    a1 = await RawClient.connected(server.ws_url, "alice", token=token("alice", info={"name": "Alice"}))
    a2 = await RawClient.connected(server.ws_url, "alice")
    b = await RawClient.connected(server.ws_url, "bob")
    for c in (a1, a2, b):
        await c.call("join", room=name)
    clients = (await b.call("presence", room=name))["ok"]["clients"]
    assert sorted(e["user"] for e in clients.values()) == ["alice", "alice", "bob"]
    assert {"name": "Alice"} in [e.get("info") for e in clients.values()]
    assert (await b.call("presence_stats", room=name))["ok"] == {"clients": 3, "users": 2}
    await a2.close()

    async def a2_gone() -> bool:
        return bool((await b.call("presence_stats", room=name))["ok"] == {"clients": 2, "users": 2})

    await until(a2_gone, what="the closed connection to leave the room's presence")
    await a1.call("leave", room=name)
    assert (await b.call("presence_stats", room=name))["ok"] == {"clients": 1, "users": 1}
    await a1.close()
    await b.close()


async def test_presence_disabled_namespace_answers_403(server: ServerProcess) -> None:
    client = await RawClient.connected(server.ws_url)
    assert (await client.call("presence", room=room("quiet")))["error"]["code"] == 403
    await client.close()


async def test_join_and_leave_pushes_reach_others_but_not_the_actor(server: ServerProcess) -> None:
    name = room()
    watcher = await RawClient.connected(server.ws_url, "watcher")
    await watcher.call("join", room=name)
    actor = await RawClient.connected(server.ws_url, "actor")
    actor_client = (await actor.call("presence_stats", room=name))["ok"]  # ensures connect finished
    assert actor_client["clients"] == 1
    await actor.call("join", room=name)
    joined = await watcher.push("join")
    assert joined["room"] == name and joined["info"]["user"] == "actor" and joined["info"]["client"]
    await actor.call("leave", room=name)
    left = await watcher.push("leave")
    assert left["info"] == joined["info"]
    # The actor saw neither its own join nor its own leave.
    await actor.call("presence_stats", room=name)
    assert not [m for m in actor.inbox if m.get("push") in ("join", "leave")]
    # A dropped connection leaves too.
    await actor.call("join", room=name)
    await watcher.push("join")
    await actor.close()
    assert (await watcher.push("leave"))["info"]["user"] == "actor"
    await watcher.close()


async def test_join_leave_pushes_are_off_where_the_namespace_disables_them(server: ServerProcess) -> None:
    name = room("quiet")
    watcher = await RawClient.connected(server.ws_url, "watcher")
    await watcher.call("join", room=name)
    other = await RawClient.connected(server.ws_url, "other")
    await other.call("join", room=name)
    await other.call("publish", room=name, data="after join")
    assert (await watcher.push("pub"))["data"] == "after join"  # no join push came first
    await other.close()
    await watcher.close()


async def test_refresh_extends_expiry_and_rejects_another_users_token(server: ServerProcess) -> None:
    client = await RawClient.connected(server.ws_url, token=token("alice", ttl=60))
    ok = (await client.call("refresh", token=token("alice", ttl=3600)))["ok"]
    assert ok["expires_in"] > 3000
    assert (await client.call("refresh", token=token("mallory", ttl=3600)))["error"]["code"] == 403
    assert (await client.call("refresh", token="garbage"))["error"]["code"] == 401
    await client.close()


async def test_several_commands_in_one_frame_are_answered_in_order(server: ServerProcess) -> None:
    name = room()
    client = await RawClient.open(server.ws_url)
    await client.send(
        {"id": 1, "op": "connect", "token": token()},
        {"id": 2, "op": "join", "room": name},
        {"id": 3, "op": "publish", "room": name, "data": "batched"},
    )
    replies = [await client.recv() for _ in range(4)]
    assert [r.get("id") for r in replies if "id" in r] == [1, 2, 3]
    pub = next(r for r in replies if r.get("push") == "pub")
    assert replies.index(pub) > [r.get("id") for r in replies].index(2)  # never before the join reply
    await client.close()


async def test_server_batches_pushes_into_newline_delimited_frames_under_load(server: ServerProcess) -> None:
    name = room()
    client = await RawClient.connected(server.ws_url)
    await client.call("join", room=name)
    frames_before = client.frames
    burst = [{"id": 100 + i, "op": "publish", "room": name, "data": i} for i in range(50)]
    await client.send(*burst)
    got = [await client.recv() for _ in range(100)]
    assert sorted(m["offset"] for m in got if m.get("push") == "pub") == list(range(1, 51))
    assert client.frames - frames_before < 100  # several messages shared a frame
    await client.close()


async def test_api_publish_reaches_ws_clients_as_pub_push(server: ServerProcess) -> None:
    name = room()
    client = await RawClient.connected(server.ws_url)
    await client.call("join", room=name)
    response = server.api("POST", "/api/publish", json={"room": name, "data": {"n": 1}})
    assert response.status_code == 200
    assert (await client.push("pub"))["data"] == {"n": 1}
    await client.close()


async def test_replies_are_compact_json_objects_one_per_line(server: ServerProcess) -> None:
    client = await RawClient.open(server.ws_url)
    await client.send_raw(json.dumps({"id": 1, "op": "connect", "token": token()}))
    frame = await client.ws.recv()
    assert isinstance(frame, str) and "\n" not in frame and ": " not in frame
    await client.close()


async def test_history_and_recovery_replies_stay_within_half_the_outbound_queue(server_factory: Any) -> None:
    srv = server_factory(max_queue_bytes=8192)
    name = room()
    for i in range(10):
        srv.api("POST", "/api/publish", json={"room": name, "data": f"{i}" * 1000})
    client = await RawClient.connected(srv.ws_url)
    page = (await client.call("history", room=name, since={"epoch": "", "offset": 0}))["ok"]
    epoch = page["epoch"]
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
    await client.close()


async def test_pipelined_publishes_keep_command_order_in_replies_offsets_and_history(server: ServerProcess) -> None:
    await publish_burst(server.ws_url, room())
