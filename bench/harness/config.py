"""The runner's fixed settings: where things are, the secrets every target shares, which CPU runs
what, and how long processes get to start and to stop.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
TARGETS_DIR = BENCH / "targets"
LOADGEN_DIR = BENCH / "loadgen"
DOCS = ROOT / "docs"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hubbub" / "bench"
SECRET = "hubbub-bench-jwt-secret-0123456789abcdef0123456789abcdef"
API_KEY = "hubbub-bench-api-key-0123456789abcdef"
SERVER_CPU = 0
LOADGEN_CPU = 1
STOP_GRACE = 5.0
READY_TIMEOUT = 30.0
