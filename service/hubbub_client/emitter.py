"""`Emitter`: a typed event source with callbacks and awaitable waits.

Callbacks run synchronously, in registration order, at the moment the event happens; a callback that
returns an awaitable has it run as a task. A failing callback is logged and never breaks the client.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
C = TypeVar("C", bound=Callable[..., object])

log = logging.getLogger("hubbub_client")


class Emitter(Generic[T]):
    """Register with `emitter(callback)` (also usable as a decorator); wait with `await emitter.wait()`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._callbacks: list[Callable[[T], object]] = []
        self._waiters: list[tuple[Callable[[T], bool] | None, asyncio.Future[T]]] = []
        self._tasks: set[asyncio.Task[object]] = set()

    def __call__(self, callback: C) -> C:
        self._callbacks.append(callback)
        return callback

    def remove(self, callback: Callable[[T], object]) -> None:
        """Unregister a callback (no error if it was not registered)."""
        try:
            self._callbacks.remove(callback)
        except ValueError:
            pass

    async def wait(self, predicate: Callable[[T], bool] | None = None, *, timeout: float | None = None) -> T:
        """The next event (matching `predicate`, when given) emitted from now on.

        Raises `TimeoutError` after `timeout` seconds.
        """
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        entry = (predicate, future)
        self._waiters.append(entry)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    def emit(self, event: T) -> None:
        for callback in list(self._callbacks):
            try:
                result = callback(event)
            except Exception:
                log.exception("%s callback %r failed", self.name, callback)
                continue
            if inspect.isawaitable(result):
                self._spawn(result)
        for predicate, future in list(self._waiters):
            if future.done():
                continue
            try:
                matched = predicate is None or predicate(event)
            except Exception as exc:
                future.set_exception(exc)
                continue
            if matched:
                future.set_result(event)

    def _spawn(self, awaitable: Awaitable[object]) -> None:
        async def run() -> object:
            try:
                return await awaitable
            except Exception:
                log.exception("%s callback failed", self.name)
                return None

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
