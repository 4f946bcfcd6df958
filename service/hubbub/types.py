"""Shared type vocabulary: ids and JSON aliases used across modules."""

from __future__ import annotations

from typing import Any, NewType, TypeAlias

Room = NewType("Room", str)
ClientId = NewType("ClientId", str)
UserId = NewType("UserId", str)

#: A decoded JSON value. `Any` is allowed to cross module boundaries only as raw JSON.
JSON: TypeAlias = Any
JSONObject: TypeAlias = dict[str, Any]
