"""The hubbub benchmark: hubbub and its peers side by side on this machine, one load generator.

    .venv/bin/python bench/run.py            # full: 4 targets x 9 scenarios x 3 repeats; rewrites docs/benchmarks.md
    .venv/bin/python bench/run.py --smoke    # CI-sized (a few minutes): fails on a crash or on any hubbub loss
    .venv/bin/python bench/run.py --targets hubbub,ws --repeat 1 --out /tmp/bench --no-docs
    .venv/bin/python bench/run.py --report bench/results/<stamp>.json   # redraw docs/benchmarks.md from saved results

Targets (each started here, fresh for every scenario run, on 127.0.0.1):

- hubbub: two `hubbub serve` nodes sharing one Redis;
- socketio: two Node socket.io 4 processes on @socket.io/redis-adapter (bench/targets/socketio-server.mjs);
- pysocketio: two python-socketio AsyncServer + AsyncRedisManager processes on uvicorn
  (bench/targets/pysocketio_server.py);
- ws: one bare Node `ws` broadcast process, no broker (bench/targets/ws-server.mjs): the ceiling.

With two or more cores the servers and Redis are pinned to CPU 0 and the load generator (Go,
bench/loadgen, built here and cached by source hash) to CPU 1, so every server figure is per core.
Results go to `<out>/<UTC stamp>.json` (every run, medians, environment); see bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# The harness package is in bench/, which Python puts first on sys.path for a script (whatever the
# cwd) unless told not to (-P, PYTHONSAFEPATH): make sure of it.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.config import BENCH
from harness.console import log
from harness.environment import environment
from harness.errors import BenchError
from harness.plan import Plan, execute, results_document, write_results
from harness.processes import pinning_available, stop_all
from harness.report import scenario_tables, write_docs
from harness.scenarios import scenarios
from harness.summary import notes, problems
from harness.targets import TARGET_ALIASES, TARGETS, Target
from harness.toolchain import check_tools, ensure_loadgen, ensure_npm


def parse_targets(text: str) -> list[Target]:
    chosen: list[Target] = []
    for raw in text.split(","):
        name = TARGET_ALIASES.get(raw.strip(), raw.strip())
        if name not in TARGETS:
            raise SystemExit(f"unknown target {raw!r}: choose from {', '.join(TARGETS)}")
        if TARGETS[name] not in chosen:
            chosen.append(TARGETS[name])
    return chosen


def on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--smoke", action="store_true", help="CI-sized runs, one repeat, no docs")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, of {','.join(TARGETS)}")
    parser.add_argument(
        "--scenarios",
        default=None,
        help="comma-separated subset of fanout,idle,idle_presence,scale,connect_1,connect_50,rooms,soak,shards",
    )
    parser.add_argument("--repeat", type=int, default=None, help="repeats per target and scenario (3 full, 1 smoke)")
    parser.add_argument("--out", type=Path, default=BENCH / "results", help="where results JSON and logs go")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md (full mode)")
    parser.add_argument("--report", type=Path, help="only redraw docs/benchmarks.md from a results JSON")
    args = parser.parse_args(argv)

    if args.report:
        document = json.loads(args.report.read_text())
        document["problems"] = problems(document["runs"])  # by this version's rules
        document["notes"] = notes(document["runs"])
        print(scenario_tables(document))
        log(f"wrote {write_docs(document, args.report)}")
        return 0

    targets = parse_targets(args.targets)
    chosen = scenarios(args.smoke)
    if args.scenarios:
        keys = [k.strip() for k in args.scenarios.split(",")]
        unknown = set(keys) - {s.key for s in chosen}
        if unknown:
            raise SystemExit(f"unknown scenarios: {', '.join(sorted(unknown))}")
        chosen = [s for s in chosen if s.key in keys]
    repeat = args.repeat if args.repeat is not None else (1 if args.smoke else 3)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    plan = Plan(targets, chosen, max(1, repeat), args.smoke, args.out.resolve(), stamp)
    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    started = time.time()
    results_path: Path | None = None
    env: dict[str, Any] = {}
    try:
        check_tools(targets)
        if any(t.name in ("socketio", "ws") for t in targets):
            ensure_npm()
        loadgen, source_hash = ensure_loadgen()
        env = environment(source_hash, pinning_available())
        log(
            f"{'smoke' if args.smoke else 'full'} run: {', '.join(t.name for t in targets)} x "
            f"{', '.join(s.key for s in chosen)} x {plan.repeat}; pinning: {env['pinning']}"
        )
        results_path = execute(plan, loadgen, env, started)
    except KeyboardInterrupt:
        log("interrupted: stopping every process started")
        return 130
    except BenchError as exc:
        log(f"error: {exc}")
        return 1
    finally:
        stop_all()
        if plan.runs:
            finished = results_path is not None
            results_path = write_results(plan, results_document(plan, env, started, finished))
            if not finished:
                log(f"results so far: {results_path}")
    document = results_document(plan, env, started, True)
    results_path = write_results(plan, document)
    print(scenario_tables(document))
    if not args.smoke and not args.no_docs:
        log(f"wrote {write_docs(document, results_path)}")
    for problem in document["problems"]:
        log(f"PROBLEM: {problem}")
    log(f"results: {results_path} ({document['duration_s']:.0f} s)")
    return 1 if document["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
