"""Everything hubbub takes from redis-py beyond its public API, in one place.

redis-py offers no public way to do the three things below, and each is worth its price:

- `PYTHON_PARSER` is redis-py's own reply parser (`redis._parsers._AsyncRESP3Parser`). With
  hiredis installed, which it is (the `Link` parses with it directly), redis-py would parse every
  pooled connection's replies with hiredis too; the pool is off the hot path and stays on the
  parser it has always been tested with. redis-py 8.0.1 and later swap it for its RESP2 twin on a
  RESP2 connection; 7.4.1 and earlier parse RESP2 with it as it is (a subset of RESP3).
- `transport_of` reads a connected connection's private stream writer (`_writer`) for the asyncio
  transport under it: a `Link` lets redis-py make the connection (URL options, TLS, ACL users,
  Sentinel discovery) and then takes the socket over with a protocol of its own.
- `forget_stream` calls the connection's private `_close()` once the Link has dropped the socket:
  synchronously (the public `disconnect()` is a coroutine, and a dropped Link must fail its callers
  at once), so that redis-py does not warn about an unclosed connection when it is collected.

These are not covered by redis-py's compatibility promises, so the range of redis-py that
pyproject.toml allows (`SUPPORTED`) is only what has been tested: 6.0.0, 6.4.0, 7.0.0, 7.4.1,
8.0.1 and 8.1.0 (5.x lacks the public `ExponentialWithJitterBackoff` that redis_pool uses).
tests/process/scaleout/test_redis_internals.py checks each use against the installed redis-py and a real
redis-server and names what is missing. Before raising the upper bound, run it with the new
version and the Redis suites, which start `hubbub serve` with the same PYTHONPATH:

    .venv/bin/pip install --no-deps --target /tmp/redis-X 'redis==X'
    PYTHONPATH=/tmp/redis-X .venv/bin/pytest tests/test_redis_*.py tests/process/scaleout/test_backends.py
"""

from __future__ import annotations

import asyncio
from typing import cast

import redis
from redis.asyncio.connection import AbstractConnection

#: The redis-py versions hubbub is tested with: pyproject.toml's requirement (a test keeps them equal).
SUPPORTED = ">=6.0,<8.2"

try:
    from redis._parsers import _AsyncRESP3Parser
except ImportError as exc:
    # Said at import, so `hubbub serve` with another redis-py stops with what to install.
    raise ImportError(
        f"redis-py {redis.__version__} has no redis._parsers._AsyncRESP3Parser, which hubbub uses:"
        f" install redis{SUPPORTED}"
    ) from exc

#: redis-py's pure-Python reply parser, for the pooled clients (`parser_class`).
PYTHON_PARSER = _AsyncRESP3Parser


def transport_of(conn: AbstractConnection) -> asyncio.Transport | None:
    """The transport under a connected redis-py connection, or None if this redis-py hides it."""
    writer = getattr(conn, "_writer", None)
    # Duck-typed: uvloop's transports (uvicorn runs on uvloop) do not subclass asyncio.Transport.
    return cast("asyncio.Transport | None", getattr(writer, "transport", None))


def forget_stream(conn: AbstractConnection) -> None:
    """Close the connection's stream without waiting and forget it (redis-py then has nothing to warn about)."""
    conn._close()  # type: ignore[no-untyped-call]
