"""The metric table is defined once, documented once, and exported as documented."""

from __future__ import annotations

from pathlib import Path

import httpx

from hubbub.auth import AUTH_FAILURE_REASONS
from hubbub.metrics import METRICS
from tests.support.server import ServerProcess
from tests.support.wsclient import RawClient

DOC = (Path(__file__).parent.parent / "docs" / "metrics.md").read_text()


def test_every_metric_is_documented_with_its_type_and_labels() -> None:
    for spec in METRICS:
        row = next((line for line in DOC.splitlines() if line.startswith(f"| `{spec.name}` |")), None)
        assert row is not None, f"{spec.name} missing from docs/metrics.md"
        assert f"| {spec.kind} |" in row
        for label in spec.labels:
            assert f"`{label}`" in row
    documented = {line.split("`")[1] for line in DOC.splitlines() if line.startswith("| `hubbub_")}
    assert documented == {spec.name for spec in METRICS}


def test_every_auth_failure_reason_is_documented() -> None:
    for reason in AUTH_FAILURE_REASONS:
        assert f"`{reason}`" in DOC


def series(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith((name + "{", name + " "))]


async def test_metrics_endpoint_exports_every_metric_and_counts_activity(server: ServerProcess) -> None:
    bad = await RawClient.open(server.ws_url)
    await bad.send({"id": 1, "op": "connect", "token": "not-a-token"})
    await bad.closed()
    client = await RawClient.connected(server.ws_url, "metrics-user")
    await client.call("join", room="chat:metrics")
    await client.call("publish", room="chat:metrics", data=1)
    await client.call("join", room="nosuch:x")
    text = httpx.get(server.http_url + "/metrics").text
    for spec in METRICS:
        name = spec.name + ("_bucket" if spec.kind == "histogram" else "")
        assert series(text, name), f"{name} not exported"
    connections = series(text, "hubbub_connections")
    assert len(connections) == 1 and connections[0].startswith("hubbub_connections "), "no labels (rule 13)"
    assert float(connections[0].rsplit(" ", 1)[1]) >= 1
    assert any('op="publish"' in s and 'result="ok"' in s for s in series(text, "hubbub_commands_total"))
    assert any('op="join"' in s and 'result="404"' in s for s in series(text, "hubbub_commands_total"))
    assert any('source="ws"' in s for s in series(text, "hubbub_publications_total"))
    # No room or user id ever appears in a label.
    assert "chat:metrics" not in text and "metrics-user" not in text
    await client.close()


async def test_disconnects_and_auth_failures_are_counted_by_bounded_labels(server: ServerProcess) -> None:
    bad = await RawClient.open(server.ws_url)
    await bad.send({"id": 1, "op": "connect", "token": "not-a-token"})
    await bad.closed()
    text = httpx.get(server.http_url + "/metrics").text
    assert any('reason="malformed"' in s for s in series(text, "hubbub_auth_failures_total"))
    assert any('code="4001"' in s for s in series(text, "hubbub_disconnects_total"))
