"""Backend selection: the one place that picks implementations from settings."""

from __future__ import annotations

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


def create_backends(settings: Settings) -> Backends:
    engine = MemoryEngine()
    return Backends(broker=engine, history=engine, presence=MemoryPresence())
