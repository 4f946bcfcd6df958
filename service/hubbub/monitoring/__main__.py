"""`python -m hubbub.monitoring`: regenerate the checked-in dashboards and alert rules.

`python -m hubbub.monitoring --check` writes nothing and exits 1 when a file differs from what
the code generates (tests/process/observability/test_monitoring.py runs the same comparison).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hubbub.monitoring import alerts, catalog, dashboards


def outputs() -> dict[Path, str]:
    """Each generated file and its exact contents (deterministic: same code, same bytes)."""
    files = {catalog.dashboard_path(spec.uid): dashboards.render_json(spec) for spec in dashboards.DASHBOARDS}
    files[catalog.RULES_FILE] = alerts.render_yaml()
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hubbub.monitoring", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the checked-in files; write nothing")
    args = parser.parse_args(argv)
    stale = []
    for path, text in outputs().items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    for path in stale:
        print(f"{'differs' if args.check else 'wrote'}: {path}")
    if not stale:
        print("monitoring files are up to date")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
