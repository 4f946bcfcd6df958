"""Running bench/run.py from a test: its results document, or a failure that shows its output."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_bench(args: list[str], out: Path, timeout: float) -> dict[str, Any]:
    """`bench/run.py ARGS --out OUT`; the one results document it wrote, once it exited 0."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "run.py"), *args, "--out", str(out)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the runner stops every process it started
        output, _ = proc.communicate(timeout=60)
        pytest.fail(f"bench/run.py {' '.join(args)} took longer than {timeout:g} s:\n{output[-6000:]}")
    files = sorted(out.glob("*.json"))
    assert len(files) == 1, f"expected one results file in {out}:\n{output[-6000:]}"
    document: dict[str, Any] = json.loads(files[0].read_text())
    assert proc.returncode == 0, f"problems: {document['problems']}\n{output[-6000:]}"
    return document
