"""Waiting in tests: poll a condition until it holds, and fail with what was seen last.

A test awaits the condition it asserts, never a fixed time. The deadline only bounds a failure:
a passing test never waits for it, so it is generous enough for a loaded 2-core machine (where a
node's heartbeat or a process start can take several times as long as on an idle one).

    await until(lambda: len(receiver.offsets) == 60, what="all 60 publications")

    def figures() -> dict[str, Any]:          # asserting inside the check: the last failed
        status = api_status()                  # assertion becomes the timeout's message
        assert status["node0"]["totals"]["publications"] == 10, status
        return status

    status = await until(figures, what="node0's publications in the registry")
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar, overload

T = TypeVar("T")

#: Seconds a condition may take before the test fails; only a failing test ever waits this long.
DEADLINE = 30.0
#: Seconds between two looks at the condition.
INTERVAL = 0.05


@overload
async def until(
    check: Callable[[], Awaitable[T]], *, timeout: float = ..., interval: float = ..., what: str | None = ...
) -> T: ...


@overload
async def until(
    check: Callable[[], T], *, timeout: float = ..., interval: float = ..., what: str | None = ...
) -> T: ...


async def until(
    check: Callable[[], Any],
    *,
    timeout: float = DEADLINE,
    interval: float = INTERVAL,
    what: str | None = None,
) -> Any:
    """Call `check` (sync or async) until it returns something truthy, and return that.

    A falsy value, or an exception (an `assert` in `check`, a refused connection while a process is
    still starting), means "not yet". At the deadline this raises AssertionError naming `what`, with
    the last value and, chained, the last exception, so a timeout says what was wrong.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last_error: Exception | None = None
    last_value: object = None
    while True:
        try:
            value = check()
            if inspect.isawaitable(value):
                value = await value
        except Exception as exc:  # "not yet"; kept for the message
            last_error = exc
        else:
            if value:
                return value
            last_error, last_value = None, value
        if loop.time() >= deadline:
            _timed_out(check, timeout, what, last_error, last_value)
        await asyncio.sleep(interval)


def wait_until(
    check: Callable[[], T], *, timeout: float = DEADLINE, interval: float = INTERVAL, what: str | None = None
) -> T:
    """`until` for synchronous code (fixtures, support classes that start processes): the same semantics."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    last_value: object = None
    while True:
        try:
            value = check()
        except Exception as exc:  # "not yet"; kept for the message
            last_error = exc
        else:
            if value:
                return value
            last_error, last_value = None, value
        if time.monotonic() >= deadline:
            _timed_out(check, timeout, what, last_error, last_value)
        time.sleep(interval)


def _timed_out(
    check: Callable[[], Any], timeout: float, what: str | None, last_error: Exception | None, last_value: object
) -> NoReturn:
    subject = what or getattr(check, "__name__", "condition")
    waited = f"timed out after {timeout:g} s waiting for {subject}"
    if last_error is not None:
        raise AssertionError(f"{waited}: {last_error}") from last_error
    raise AssertionError(f"{waited} (last value: {last_value!r})")
