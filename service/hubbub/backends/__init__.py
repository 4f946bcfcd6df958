"""Backend selection: the one place that picks implementations from settings."""

from __future__ import annotations

from collections.abc import Sized
from dataclasses import dataclass

from hubbub.backends.base import Broker, History, Presence
from hubbub.backends.memory import MemoryEngine, MemoryPresence
from hubbub.settings import Settings

__all__ = ["Backends", "create_backends"]


@dataclass(frozen=True, slots=True)
class Backends:
    broker: Broker
    history: History
    presence: Presence

    def internals(self) -> dict[str, int]:
        """Sizes of the backends' local state (zero for remote backends), for leak checks."""
        return {
            name: len(backend)
            for name, backend in (("streams", self.history), ("presence_rooms", self.presence))
            if isinstance(backend, Sized)
        }


def create_backends(settings: Settings) -> Backends:
    engine = MemoryEngine()
    return Backends(broker=engine, history=engine, presence=MemoryPresence())
