"""The Python client as a package of its own: `hubbub_client` loads nothing of the server, its copies of
the protocol's codec and close-code table are the server's, and `hubbub.client` (its old name) still
works, old class names included.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

import hubbub.client
import hubbub_client
from hubbub import protocol
from hubbub.codes import CLOSE_TABLE, CloseCode
from hubbub_client import policy, wire

RENAMED = [("CommandError", "CommandRejected"), ("Disconnect", "Disconnection"), ("Publication", "Message")]


def test_the_old_module_gives_every_name_of_the_new_package_as_the_same_object() -> None:
    from hubbub.client import Client

    assert Client is hubbub_client.Client
    assert hubbub_client.__all__
    for name in hubbub_client.__all__:
        assert getattr(hubbub.client, name) is getattr(hubbub_client, name), name
    assert set(hubbub.client.__all__) == set(hubbub_client.__all__)


@pytest.mark.parametrize(("old", "new"), RENAMED)
def test_an_old_class_name_is_a_deprecated_alias_of_the_renamed_class(old: str, new: str) -> None:
    namespace: dict[str, Any] = {}
    with pytest.warns(DeprecationWarning, match=rf"hubbub\.client\.{old} is deprecated: use hubbub_client\.{new}"):
        exec(f"from hubbub.client import {old}", namespace)
    assert namespace[old] is getattr(hubbub_client, new)
    assert old not in hubbub_client.__all__ and not hasattr(hubbub_client, old)


def test_existing_code_catching_the_old_error_name_catches_the_client_s_rejections() -> None:
    with pytest.warns(DeprecationWarning):
        old = hubbub.client.CommandError
    with pytest.raises(old) as caught:
        raise hubbub_client.CommandRejected.from_json({"code": 403, "reason": "forbidden"})
    assert (caught.value.code, caught.value.reason) == (403, "forbidden")


def test_a_name_the_old_module_never_had_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'Outbox'"):
        getattr(hubbub.client, "Outbox")  # noqa: B009 (the name is the point)


def test_importing_the_client_loads_nothing_of_hubbub_nor_of_the_server_s_libraries() -> None:
    probe = (
        "import sys, hubbub_client; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'hubbub', 'hubbub_operator', 'starlette', 'uvicorn', 'redis', 'pydantic', 'httpx'}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_the_client_s_close_code_table_is_the_server_s() -> None:
    server_table = {int(code): info.reconnect for code, info in CLOSE_TABLE.items()}
    assert server_table == policy.RECONNECT_AFTER
    assert (policy.DRAINING, policy.UNAUTHORIZED, policy.TOKEN_EXPIRED, policy.INSUFFICIENT_STATE) == (
        CloseCode.DRAINING,
        CloseCode.UNAUTHORIZED,
        CloseCode.TOKEN_EXPIRED,
        CloseCode.INSUFFICIENT_STATE,
    )


def outcome(call: Any, arg: Any) -> tuple[str, Any]:
    try:
        return "ok", call(arg)
    except ValueError:
        return "ValueError", None


@pytest.mark.parametrize(
    "text",
    [
        '{"id":1,"ok":{"epoch":"e","offset":3}}',
        b'{"push":"pub","data":[1,2.5,"\xc3\xa9"]}',
        "123456789012345678901234567890",  # beyond 64 bits: read exactly
        '"\\ud800"',  # a lone surrogate escape: valid JSON, which orjson refuses
        "1e400",  # valid syntax, no double
        "NaN",
        "{",
        "[" * 5000 + "]" * 5000,  # beyond orjson's depth and the interpreter's recursion limit
    ],
)
def test_the_client_decodes_json_as_the_server_does(text: str | bytes) -> None:
    assert outcome(wire.loads, text) == outcome(protocol.loads, text)


@pytest.mark.parametrize(
    "value",
    [
        {"op": "publish", "data": {"text": "é"}},
        2**70,
        "\ud800",
        float("nan"),
        object(),
    ],
)
def test_the_client_encodes_json_as_the_server_does(value: Any) -> None:
    assert outcome(wire.dumps, value) == outcome(protocol.dumps, value)


def test_the_client_offers_the_server_s_subprotocol() -> None:
    assert wire.SUBPROTOCOL == protocol.SUBPROTOCOL
