"""The toolchain the bench needs: the npm packages of bench/, the Go load generator (built and
cached by source hash), and the tools that must be on the PATH (redis-server, node).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .config import BENCH, CACHE, LOADGEN_DIR, ROOT
from .console import log
from .errors import BenchError
from .targets import Target


def run_step(
    argv: Sequence[str], what: str, timeout: float, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> str:
    try:
        done = subprocess.run(
            list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, start_new_session=True
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{what}: timed out after {timeout:g} s") from exc
    except FileNotFoundError as exc:
        raise BenchError(f"{what}: {exc}") from exc
    if done.returncode != 0:
        raise BenchError(f"{what} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def ensure_npm() -> None:
    """`npm ci` in bench/ when package.json/package-lock.json changed (the stamp scripts/install uses too)."""
    stamp = ROOT / ".venv" / ".stamps" / "bench-npm"
    digest = hashlib.sha256((BENCH / "package.json").read_bytes() + (BENCH / "package-lock.json").read_bytes())
    wanted = digest.hexdigest()
    with contextlib.suppress(OSError):
        if stamp.read_text().strip() == wanted and (BENCH / "node_modules").is_dir():
            return
    if shutil.which("npm") is None:
        raise BenchError("npm is required (scripts/install installs it)")
    log("npm ci in bench/")
    run_step(["npm", "ci", "--silent", "--no-audit", "--no-fund"], "npm ci in bench/", 600, cwd=BENCH)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(wanted + "\n")


def find_go() -> str:
    found = shutil.which("go")
    if found:
        return found
    for candidate in ("/usr/local/go/bin/go", "/usr/lib/go/bin/go"):
        if os.access(candidate, os.X_OK):
            return candidate
    raise BenchError("Go is required to build bench/loadgen (scripts/build-k8s needs it too)")


def loadgen_hash() -> str:
    digest = hashlib.sha256()
    files = sorted(LOADGEN_DIR.rglob("*.go")) + [LOADGEN_DIR / "go.mod", LOADGEN_DIR / "go.sum"]
    for path in files:
        if path.is_file():
            digest.update(str(path.relative_to(LOADGEN_DIR)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def ensure_loadgen() -> tuple[Path, str]:
    """The load generator binary, rebuilt only when its sources changed (HUBBUB_BENCH_LOADGEN overrides)."""
    override = os.environ.get("HUBBUB_BENCH_LOADGEN")
    if override:
        return Path(override).resolve(), f"override {override}"
    if not any(LOADGEN_DIR.glob("*.go")):
        raise BenchError(f"no load generator sources in {LOADGEN_DIR}")
    source_hash = loadgen_hash()
    binary = CACHE / f"loadgen-{source_hash}"
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary, source_hash
    CACHE.mkdir(parents=True, exist_ok=True)
    go = find_go()
    log(f"building the load generator ({source_hash})")
    partial = binary.with_suffix(".tmp")
    env = dict(os.environ, PATH=f"{Path(go).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    run_step([go, "build", "-trimpath", "-o", str(partial), "."], "go build in bench/loadgen", 900, LOADGEN_DIR, env)
    partial.replace(binary)
    for old in CACHE.glob("loadgen-*"):  # keep the cache to the current build
        if old != binary:
            with contextlib.suppress(OSError):
                old.unlink()
    return binary, source_hash


def check_tools(targets: Sequence[Target]) -> None:
    needed = ["redis-server"] if any(t.uses_redis for t in targets) else []
    if any(t.name in ("socketio", "ws") for t in targets):
        needed.append("node")
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if missing:
        raise BenchError(f"missing {', '.join(missing)} (scripts/install installs them)")
