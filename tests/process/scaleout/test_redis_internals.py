"""What hubbub.backends.redis_internals takes from redis-py beyond its public API, on the installed redis-py.

Each use is checked as hubbub relies on it, against a real redis-server, so that a redis-py release
that moves or changes one fails here, naming it, rather than in a reconnect storm in production.
pyproject.toml allows only the redis-py versions this has passed with (redis_internals.SUPPORTED).
"""

from __future__ import annotations

import ast
import asyncio
import gc
import tomllib
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from redis.asyncio.connection import AbstractConnection

from hubbub.backends.redis_internals import PYTHON_PARSER, SUPPORTED, forget_stream, transport_of
from hubbub.backends.redis_pool import RedisClients, connect
from hubbub.loader import load_settings
from tests.support.polling import until
from tests.support.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[3]
SOURCES = (ROOT / "service", ROOT / "operator", ROOT / "bench")


def relied_on(what: str) -> str:
    """The failure message: which redis-py, what it lacks, and where hubbub's use of it is explained."""
    return (
        f"redis-py {redis.__version__}: {what}. hubbub.backends.redis_internals relies on it (its docstring"
        f" says why); it is tested with redis{SUPPORTED}"
    )


# --- the pin --------------------------------------------------------------------------------------


def test_pyproject_allows_only_the_redis_py_versions_redis_internals_is_tested_with() -> None:
    with (ROOT / "pyproject.toml").open("rb") as f:
        server = tomllib.load(f)["project"]["optional-dependencies"]["server"]
    (requirement,) = [r for r in map(Requirement, server) if r.name == "redis"]
    assert requirement.specifier == SpecifierSet(SUPPORTED), (
        f"pyproject.toml requires {requirement}, redis_internals.SUPPORTED says redis{SUPPORTED}:"
        " the pin is the tested range, change both together"
    )


def test_the_installed_redis_py_is_a_tested_version() -> None:
    assert SpecifierSet(SUPPORTED).contains(redis.__version__, prereleases=True), relied_on(
        "this version has not been tested"
    )


def imported(node: ast.AST) -> list[str]:
    """The dotted names an import statement brings in (`from redis import _parsers`: redis._parsers)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return []


def test_only_redis_internals_imports_private_redis_py_modules() -> None:
    found = []
    for root in SOURCES:
        for path in sorted(root.rglob("*.py")):
            if path.name == "redis_internals.py" or {".venv", "node_modules"} & set(path.parts):
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                for name in imported(node):
                    first, *rest = name.split(".")
                    if first == "redis" and any(part.startswith("_") for part in rest):
                        line = getattr(node, "lineno", 0)
                        found.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not found, "\n".join([*found, "redis-py's private modules belong in hubbub/backends/redis_internals.py"])


# --- each use, on a real redis-server ----------------------------------------------------------------


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
async def clients(redis_server: RedisServer) -> AsyncIterator[RedisClients]:
    made = connect(load_settings(env={}, overrides={"redis_url": redis_server.url, "redis_timeout": 2.0}))
    yield made
    await made.aclose()


def parser_module(conn: AbstractConnection) -> str:
    parser = getattr(conn, "_parser", None)
    assert parser is not None, relied_on("a connection keeps no `_parser`; the test cannot tell which parser it uses")
    return type(parser).__module__


@pytest.mark.redis
async def test_pooled_connections_parse_replies_with_redis_py_own_parser(clients: RedisClients) -> None:
    assert isinstance(PYTHON_PARSER, type)
    assert "hiredis" not in PYTHON_PARSER.__module__, relied_on(f"{PYTHON_PARSER!r} is hiredis' parser")
    # Nested replies on the pool's (RESP2) connections, and a RESP3 map on the Link's kind.
    await clients.commands.hset("h", mapping={"a": "1", "b": "2"})
    assert await clients.commands.hgetall("h") == {b"a": b"1", b"b": b"2"}
    pool = clients.commands.connection_pool
    pooled = pool.connection_class(**pool.connection_kwargs)
    try:
        await pooled.connect()  # type: ignore[no-untyped-call]
        assert parser_module(pooled) in {"redis._parsers.resp2", "redis._parsers.resp3"}, relied_on(
            f"parser_class={PYTHON_PARSER.__name__} gave a pooled connection the parser of {parser_module(pooled)}"
        )
    finally:
        await pooled.disconnect()
    conn = clients.connection_factory()()
    try:
        await conn.connect()  # type: ignore[no-untyped-call]
        assert parser_module(conn) == "redis._parsers.resp3", relied_on(
            f"a RESP3 connection parses with {parser_module(conn)}, not redis-py's RESP3 parser"
        )
        await conn.send_command("HGETALL", "h")
        assert await conn.read_response() == {b"a": b"1", b"b": b"2"}
    finally:
        await conn.disconnect()


class Collected(asyncio.Protocol):
    """What arrives on a transport taken over from redis-py."""

    def __init__(self) -> None:
        self.data = b""
        self.lost = False

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


async def taken_over(clients: RedisClients) -> tuple[AbstractConnection, asyncio.Transport, Collected]:
    """A RESP3 connection made by redis-py (the Link's kind), its transport then driven directly."""
    conn = clients.connection_factory()()
    await conn.connect()  # type: ignore[no-untyped-call]
    transport = transport_of(conn)
    assert transport is not None, relied_on(
        f"a connected {type(conn).__name__} has no `_writer` whose `transport` is its socket's"
    )
    collected = Collected()
    transport.set_protocol(collected)
    return conn, transport, collected


@pytest.mark.redis
async def test_a_connection_made_by_redis_py_hands_over_its_socket_after_the_handshake(clients: RedisClients) -> None:
    conn, transport, collected = await taken_over(clients)
    try:
        # A RESP3 map in reply: the handshake (HELLO 3) was done, and its reply read, before the hand-over.
        transport.write(b"*4\r\n$4\r\nHSET\r\n$1\r\nh\r\n$1\r\na\r\n$1\r\n1\r\n*2\r\n$7\r\nHGETALL\r\n$1\r\nh\r\n")
        expected = b":1\r\n%1\r\n$1\r\na\r\n$1\r\n1\r\n"
        await until(lambda: collected.data == expected, what=f"{expected!r} on the taken-over socket")
    finally:
        transport.abort()
        forget_stream(conn)


@pytest.mark.redis
async def test_forgetting_a_dropped_connections_stream_leaves_redis_py_nothing_to_warn_about(
    clients: RedisClients,
) -> None:
    conn, transport, collected = await taken_over(clients)
    transport.abort()
    await until(lambda: collected.lost, what="the aborted socket's connection_lost")
    assert callable(getattr(conn, "_close", None)), relied_on(f"{type(conn).__name__} has no `_close()`")
    forget_stream(conn)
    assert not conn.is_connected, relied_on("`_close()` leaves the connection connected")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del conn, transport
        gc.collect()
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert not unclosed, relied_on(f"a forgotten connection still warns when collected: {unclosed}")
