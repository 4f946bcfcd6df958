"""`Publisher`: how publishes reach the server: queued while offline, paced while online, sent again with
the same idempotency key when a disconnect swallowed the reply, timed out when no reply comes.

The client attaches it to each connection once the `connect` reply arrived and detaches it when the
connection ends; replies are applied synchronously in the connection's reader.
"""

from __future__ import annotations

import asyncio
import uuid

from hubbub_client.connection import Connection
from hubbub_client.errors import CommandRejected, CommandTimeout, ConnectionLost
from hubbub_client.models import JSON, JSONObject, PublishResult, StreamPosition
from hubbub_client.pacer import Pacer
from hubbub_client.publish_queue import PendingPublish, PublishQueue


class Publisher:
    def __init__(self, *, max_queue: int, rate: float, burst: int, command_timeout: float) -> None:
        self.queue = PublishQueue(max_queue)
        self.pacer = Pacer(rate, burst)
        self.command_timeout = command_timeout
        self._conn: Connection | None = None
        self._timer: asyncio.TimerHandle | None = None

    @property
    def queued(self) -> int:
        return self.queue.queued

    def publish(self, room: str, data: JSON, idempotency_key: str | None) -> asyncio.Future[PublishResult]:
        """Send now, or queue (raises `QueueFull` at the bound). The future gets the server's answer."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[PublishResult] = loop.create_future()
        item = PendingPublish(room, data, idempotency_key or uuid.uuid4().hex, future)
        conn = self._conn
        if conn is not None and not self.queue.queued and self.pacer.take(loop.time()) == 0:
            self._send(conn, item)  # the common case: nothing waiting, send at once
        else:
            self.queue.enqueue(item)
            self._pump()
        return future

    def attach(self, conn: Connection) -> None:
        """A connection is ready: start sending the backlog, oldest first (a new connection gets a full
        rate budget on the server, and so here)."""
        self._conn = conn
        self.pacer.reset(asyncio.get_running_loop().time())
        self._pump()

    def detach(self) -> None:
        """The connection ended: publishes without a reply go back to the front of the queue."""
        self._conn = None
        self._stop_pump()
        self.queue.requeue_in_flight()

    def fail_all(self, error: BaseException) -> None:
        self._conn = None
        self._stop_pump()
        self.queue.fail_all(error)

    def _send(self, conn: Connection, item: PendingPublish) -> None:
        queue = self.queue

        def on_reply(result: JSONObject | BaseException) -> None:
            if isinstance(result, ConnectionLost) or not queue.answered(item) or item.future.done():
                return  # requeued by the disconnect, timed out, or given up by the caller
            if isinstance(result, BaseException):
                item.future.set_exception(result)
                return
            try:
                item.future.set_result(StreamPosition.from_json(result))
            except ValueError as exc:
                item.future.set_exception(exc)

        def on_timeout() -> None:
            item.timer = None
            if queue.answered(item) and not item.future.done():
                item.future.set_exception(
                    CommandTimeout("publish", self.command_timeout, idempotency_key=item.idempotency_key)
                )

        queue.sent(item)
        item.timer = asyncio.get_running_loop().call_later(self.command_timeout, on_timeout)
        try:
            conn.submit("publish", item.params(), on_reply)
        except CommandRejected as exc:  # larger than a frame
            queue.answered(item)
            if not item.future.done():
                item.future.set_exception(exc)

    def _pump(self) -> None:
        """Send queued publishes in order as fast as the pacer allows; come back later for the rest."""
        conn = self._conn
        if conn is None or self._timer is not None:
            return
        loop = asyncio.get_running_loop()
        while self.queue.queued:
            wait = self.pacer.take(loop.time())
            if wait > 0:
                self._timer = loop.call_later(wait, self._pump_later)
                return
            item = self.queue.pop()
            if item is not None:
                self._send(conn, item)

    def _pump_later(self) -> None:
        self._timer = None
        self._pump()

    def _stop_pump(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
