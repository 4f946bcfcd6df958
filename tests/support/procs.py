"""Small helpers shared by the process managers of the test suite: ports, logs, config quoting."""

from __future__ import annotations

import socket
from pathlib import Path

_handed_out: set[int] = set()


def free_port() -> int:
    """A free 127.0.0.1 port, never the same one twice in this process (two servers asked in a row
    must not both get the port the kernel happened to free last)."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no free port found")


def quote(value: str | Path) -> str:
    """A double-quoted config value (nginx and redis.conf share the escaping rules used here)."""
    text = str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])
