"""The summary of a set of runs: message accounting, medians, sums and flags, and the problems and
notes found in the runs.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator, Sequence
from typing import Any

COUNT_KEYS = ("lost", "failed", "failures", "duplicates", "out_of_order", "connections_lost", "publish_errors")


def walk_phases(result: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every object in a result that accounts for messages (has `lost`), with its dotted path."""
    if isinstance(result, dict):
        if "lost" in result:
            yield path or "(top)", result
        for key, value in result.items():
            if isinstance(value, dict):
                yield from walk_phases(value, f"{path}.{key}" if path else key)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(value, bool) or (isinstance(value, int | float) and math.isfinite(value)):
        out[prefix] = value
    return out


def summarize(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians of every number across repeats; sums of the counts (lost, failed...); any() of flags."""
    numbers: dict[str, list[float]] = {}
    flags: dict[str, list[bool]] = {}
    for result in results:
        for key, value in flatten(result).items():
            if isinstance(value, bool):
                flags.setdefault(key, []).append(value)
            else:
                numbers.setdefault(key, []).append(float(value))
    return {
        "runs": len(results),
        "median": {key: statistics.median(values) for key, values in numbers.items()},
        "total": {key: sum(values) for key, values in numbers.items() if key.rsplit(".", 1)[-1] in COUNT_KEYS},
        "any": {key: any(values) for key, values in flags.items()},
    }


# Counts that fail a run when hubbub's are not zero: a message it accepted must reach everyone.
HUBBUB_FAILURES = {"lost": "deliveries lost", "publish_errors": "publications refused"}


def problems(runs: Sequence[dict[str, Any]]) -> list[str]:
    """What fails the run: a crashed target, a failed generator run, hubbub losing a message."""
    found: list[str] = []
    for run in runs:
        where = f"{run['target']} {run['scenario']} #{run['repeat']}"
        if run["crashed"]:
            found.append(f"{where}: crashed: {', '.join(run['crashed'])}")
        if run["error"]:
            found.append(f"{where}: {run['error'].splitlines()[0]}")
        if run["target"] == "hubbub" and run["result"] is not None:
            for key, value in flatten(run["result"]).items():
                what = HUBBUB_FAILURES.get(key.rsplit(".", 1)[-1])
                if what and not isinstance(value, bool) and value > 0:
                    found.append(f"{where}: hubbub: {value:,.0f} {what} ({key})")
    return found


def notes(runs: Sequence[dict[str, Any]]) -> list[str]:
    """What the generator saw go wrong without failing the run: error replies, failed connects, closes."""
    found: list[str] = []
    for run in runs:
        result = run["result"] or run.get("partial") or {}
        parts = []
        for key, label in (("errors", "errors"), ("disconnects", "closed by the server")):
            block = result.get(key) or {}
            if block.get("total"):
                kinds = ", ".join(f"{kind} ×{count}" for kind, count in sorted(block.get("by_kind", {}).items()))
                sample = f" (e.g. {block['samples'][0]!r})" if block.get("samples") else ""
                parts.append(f"{label}: {kinds}{sample}")
        if parts:
            found.append(f"{run['target']} {run['scenario']} #{run['repeat']}: " + "; ".join(parts))
    return found
