"""The runner's exceptions: a bench step that failed, and a load generator run that failed."""

from __future__ import annotations

from typing import Any


class BenchError(RuntimeError):
    pass


class GeneratorFailed(BenchError):
    """The load generator exited 1; `partial` is what it measured until then (kept in the results)."""

    def __init__(self, message: str, partial: dict[str, Any]) -> None:
        super().__init__(message)
        self.partial = partial
