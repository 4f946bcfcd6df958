"""Finding Prometheus's `promtool` for the tests (scripts/install-prometheus puts it on the machine).

Looked for in PROMETHEUS_BIN_DIR (what scripts/test exports), then on PATH. When it is missing the
tests that need it skip, unless HUBBUB_REQUIRE_PROMETHEUS is set (scripts/test sets it): then they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

INSTALL_HINT = "run scripts/install-prometheus and export PROMETHEUS_BIN_DIR=$(scripts/install-prometheus | tail -1)"


def find(binary: str) -> Path | None:
    bin_dir = os.environ.get("PROMETHEUS_BIN_DIR")
    if bin_dir and (Path(bin_dir) / binary).is_file():
        return Path(bin_dir) / binary
    found = shutil.which(binary)
    return Path(found) if found else None


def require(binary: str) -> Path:
    """The binary's path; skips the test (fails it under HUBBUB_REQUIRE_PROMETHEUS) when it is missing."""
    path = find(binary)
    if path is not None:
        return path
    message = f"{binary} not found in PROMETHEUS_BIN_DIR or on PATH: {INSTALL_HINT}"
    if os.environ.get("HUBBUB_REQUIRE_PROMETHEUS"):
        pytest.fail(message + " (HUBBUB_REQUIRE_PROMETHEUS is set)")
    pytest.skip(message)


def run(promtool: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(promtool), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
