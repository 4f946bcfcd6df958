"""The environment of a run: the machine, the system and every version involved."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import BENCH, LOADGEN_CPU, ROOT, SERVER_CPU
from .errors import BenchError
from .toolchain import find_go


def command_output(argv: Sequence[str]) -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=20, cwd=ROOT)
        if done.returncode == 0:
            return done.stdout.strip()
    return None


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def npm_version(name: str) -> str | None:
    with contextlib.suppress(OSError, ValueError):
        version = json.loads((BENCH / "node_modules" / name / "package.json").read_text())["version"]
        return str(version)
    return None


def environment(loadgen_source: str | None, pinned: bool) -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace") if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    mem = re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.M)
    os_release = Path("/etc/os-release").read_text() if Path("/etc/os-release").exists() else ""
    pretty = re.search(r'^PRETTY_NAME="?([^"\n]+)"?', os_release, re.M)
    redis_version = command_output(["redis-server", "--version"]) or ""
    redis_v = re.search(r"v=(\S+)", redis_version)
    go = None
    with contextlib.suppress(BenchError):
        go = command_output([find_go(), "version"])
    sha = command_output(["git", "rev-parse", "HEAD"])
    dirty = command_output(["git", "status", "--porcelain", "--untracked-files=no", "--", "service", "pyproject.toml"])
    return {
        "cpu_model": model.group(1).strip() if model else platform.processor() or "unknown",
        "cpus": os.cpu_count(),
        "memory_gib": round(int(mem.group(1)) / 1024 / 1024, 1) if mem else None,
        "kernel": platform.release(),
        "os": pretty.group(1) if pretty else platform.platform(),
        "pinning": (
            f"servers and Redis on CPU {SERVER_CPU}, load generator on CPU {LOADGEN_CPU}" if pinned else "none"
        ),
        "hubbub": {
            "version": package_version("hubbub"),
            "git_sha": sha,
            "git_dirty": bool(dirty),
        },
        "python": platform.python_version(),
        "python_packages": {
            name: package_version(name)
            for name in (
                "uvicorn",
                "python-socketio",
                "python-engineio",
                "websockets",
                "uvloop",
                "httptools",
                "redis",
                "PyJWT",
                "starlette",
            )
        },
        "node": command_output(["node", "--version"]),
        "npm_packages": {
            name: npm_version(name)
            for name in ("socket.io", "engine.io", "@socket.io/redis-adapter", "redis", "ws", "jsonwebtoken")
        },
        "redis_server": redis_v.group(1) if redis_v else redis_version or None,
        "go": go,
        "loadgen_source": loadgen_source,
    }
