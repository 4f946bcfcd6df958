"""The node's log: one format (text or JSON lines) for hubbub's and uvicorn's lines, and the start-up summary.

Text is what a person reads in a terminal:

    2024-05-01 12:00:00,123 INFO hubbub.node: connection closed: 1000 normal closure [conn=Xb3… user=alice]

JSON is one object per line for a log pipeline, with the fields docs/logging.md lists:

    {"time": "2024-05-01T12:00:00.123Z", "level": "INFO", "logger": "hubbub.node", "node": "web-1",
     "conn": "Xb3…", "user": "alice", "message": "connection closed: 1000 normal closure"}

A line about one connection carries its id and user as `extra={"conn": …, "user": …}` rather than
in a context variable: a connection's frames are handled in protocol callbacks, not in a task of
its own, so a context variable would not follow it.

Nothing logged anywhere may hold a secret (a token, an API key, a Redis password) or a message
body; tests/process/observability/test_logs.py checks every line of a real server's run for them.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from typing import Any, Final, TextIO

from hubbub.preflight import redact
from hubbub.settings import ENV_PREFIX, Settings

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Control characters but tab: a client can put them in what a line quotes (a URL path is percent-decoded).
_CONTROL: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
#: Record attributes (from `extra=`) that say which connection a line is about.
CONNECTION_FIELDS: Final = ("conn", "user")


class TextFormatter(logging.Formatter):
    """The classic format, with `[conn=… user=…]` appended to a line about a connection."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        # Escaped, so that what a client sent cannot end the line and forge the next one.
        line = _CONTROL.sub(_escaped, super().formatMessage(record))
        about = [f"{name}={getattr(record, name)}" for name in CONNECTION_FIELDS if hasattr(record, name)]
        return f"{line} [{' '.join(about)}]" if about else line


def _escaped(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (RFC 3339, UTC, milliseconds), level, logger, node, conn and user
    (lines about a connection), message, and exc (the exception's text, when there is one)."""

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": rfc3339(record.created),
            "level": record.levelname,
            "logger": record.name,
            "node": self.node,
        }
        for name in CONNECTION_FIELDS:
            if hasattr(record, name):
                entry[name] = getattr(record, name)
        entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # ensure_ascii: a control character or odd byte a client put in a header cannot break the line.
        return json.dumps(entry, ensure_ascii=True, default=str)


def rfc3339(created: float) -> str:
    """`created` (seconds since the epoch) as 2024-05-01T12:00:00.123Z."""
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def formatter(settings: Settings) -> logging.Formatter:
    return JsonFormatter(settings.node_name) if settings.log_format == "json" else TextFormatter()


def configure(settings: Settings, stream: TextIO | None = None) -> None:
    """Send every logger's lines (hubbub's, uvicorn's, asyncio's) to `stream` (stderr) in the configured format.

    uvicorn adds no handler of its own (server.py gives it `log_config=None`), so its lines reach this
    root handler and look like hubbub's.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter(settings))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())


def summary(settings: Settings, *, env: Iterable[str] = (), flags: Iterable[str] = ()) -> str:
    """What the node runs with, in one line for the start-up log: mode, where the configuration came from,
    namespaces, backend, and the limits changed from their defaults. Never a secret: names of environment
    variables, not their values, and the Redis URL without its password."""
    mode = "development" if settings.development else "production"
    sources = [f"file {settings.config_file}" if settings.config_file is not None else "defaults (no file)"]
    env_names = sorted(env)
    if env_names:
        sources.append("environment " + ",".join(env_names))
    flag_names = sorted(flags)
    if flag_names:
        sources.append("flags " + ",".join("--" + name.replace("_", "-") for name in flag_names))
    source = "; ".join(sources)
    names = sorted(settings.namespaces)
    if settings.default_namespace is not None:
        names.append("(default)")
    if not names:
        namespaces = "all (development)" if settings.development else "none"
    else:
        namespaces = ",".join(names) + (" (others: development)" if settings.development else "")
    parts = [
        f"mode={mode}",
        f"config={source}",
        f"namespaces={namespaces}",
        f"backend={backend(settings)}",
        f"log={settings.log_level}/{settings.log_format}",
    ]
    changed = changed_limits(settings)
    parts.append("limits=" + (",".join(f"{name}={value}" for name, value in changed) if changed else "defaults"))
    return "starting: " + " ".join(parts)


def backend(settings: Settings) -> str:
    if settings.redis_sentinels:
        url = f", {redact(settings.redis_url)}" if settings.redis_url else ""
        sentinels = ",".join(settings.redis_sentinels)
        return f"redis-sentinel({settings.redis_sentinel_service} via {sentinels}{url})"
    if settings.redis_cluster_nodes:
        url = f", {redact(settings.redis_url)}" if settings.redis_url else ""
        return f"redis-cluster({','.join(settings.redis_cluster_nodes)}{url})"
    if settings.redis_url:
        return f"redis({redact(settings.redis_url)})"
    return "memory"


def changed_limits(settings: Settings) -> list[tuple[str, object]]:
    """Every numeric setting (a size, a count, a rate, a time) that differs from its default, in the
    model's order. `port` is where, not how much, and is left out."""
    changed: list[tuple[str, object]] = []
    for name, field in Settings.model_fields.items():
        value = getattr(settings, name)
        if name == "port" or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if value != field.get_default(call_default_factory=False):
            changed.append((name, f"{value:g}" if isinstance(value, float) else value))
    return changed


def env_names(environ: Iterable[str]) -> list[str]:
    """The `HUBBUB_*` variables among `environ` that set settings (for the summary; names only)."""
    settable = {ENV_PREFIX + name.upper() for name in Settings.model_fields if name != "config_file"}
    return sorted(name for name in environ if name in settable)
