"""The wire format as the client speaks it: the subprotocol name and the JSON codec of protocol v1.

The same rules as the server's codec (`hubbub.protocol.loads` / `dumps`), kept here so that the client
imports nothing of the server; tests/unit/test_client_package.py runs both on the same inputs. Decoding is
strict (RFC 8259 only: no NaN, no out-of-range numbers) and exact (integers beyond 64 bits keep every
digit); encoding uses orjson and falls back to the standard library for what orjson refuses (integers
beyond 64 bits, lone surrogates), so any JSON the server sends can be published again unchanged.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final

import orjson

from hubbub_client.models import JSON

SUBPROTOCOL: Final = "hubbub.v1.json"

# orjson turns integers beyond 64 bits into floats, silently losing digits; such texts are re-read exactly.
_LONG_INTEGER = re.compile(r"\d{19,}")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    # `1e400` is valid JSON syntax but no double: refusing it beats silently reading `inf`.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def loads(text: str | bytes) -> JSON:
    """Decode JSON strictly and exactly; raises ValueError on anything that is not RFC 8259 JSON."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        # orjson also refuses lone surrogate escapes, which are valid JSON: let the standard library judge.
        pass
    else:
        probe = text if isinstance(text, str) else text.decode("utf-8", "replace")
        if _LONG_INTEGER.search(probe) is None:
            return value
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc


def dumps(value: JSON) -> str:
    """Encode compactly; raises ValueError for values that are not JSON.

    The fallback escapes non-ASCII so that strings holding lone surrogates (legal as JSON escapes)
    still encode to valid UTF-8 on the wire.
    """
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        pass
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"value is not JSON-encodable: {exc}") from exc
