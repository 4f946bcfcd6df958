"""The Autobahn|Testsuite fuzzing client against hubbub's WebSocket layer (the echo endpoint).

`wstest -m fuzzingclient` (0.8.2, Python 2, installed by scripts/install-autobahn) connects to a
server once per test case, sends what the case prescribes, and judges what comes back: each case
ends with a `behavior` (OK, NON-STRICT, INFORMATIONAL, UNIMPLEMENTED, FAILED) and a
`behaviorClose` for the closing handshake. This module writes its spec, runs it with a bounded
timeout and reads `index.json` back.

Run by hand (starts tests/support/echo_server.py on a free port, prints a summary):

    .venv/bin/python -m tests.support.autobahn                     # the subset tests/test_autobahn.py runs
    .venv/bin/python -m tests.support.autobahn --cases '*'         # every case, 1.* to 13.*
    .venv/bin/python -m tests.support.autobahn --write-expected tests/fixtures/autobahn-expected.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypedDict

import httpx

from tests.support.procs import free_port, tail

ROOT = Path(__file__).resolve().parents[2]
VERSION = "0.8.2"
#: Who the reports are about (the `agent` of the spec).
AGENT = "hubbub"

#: What tests/test_autobahn.py runs: every family of the framing cases, a sample of the large and
#: fragmented performance cases (9.*) and of permessage-deflate (12.1.*); about a minute.
SUBSET: tuple[str, ...] = (
    "1.*",
    "2.*",
    "3.*",
    "4.*",
    "5.*",
    "6.1.*",
    "6.2.*",
    "6.3.*",
    "6.4.*",
    "7.*",
    "9.1.1",
    "9.1.2",
    "9.2.1",
    "9.2.2",
    "9.3.1",
    "9.4.1",
    "9.5.1",
    "9.6.1",
    "9.7.1",
    "9.8.1",
    "12.1.*",
)
#: Every case of the suite (1.* to 13.*).
EVERYTHING: tuple[str, ...] = ("*",)

#: Verdicts in the order a summary lists them, best first.
VERDICTS = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")


class CaseResult(TypedDict):
    behavior: str
    behaviorClose: str
    duration: int
    remoteCloseCode: int | None
    #: The case report's one-line explanations (Autobahn's words), for the cases that are not OK.
    result: str
    resultClose: str


class AutobahnError(RuntimeError):
    """wstest failed, timed out, or left no report; the message says which, with its output."""


def cache_dir() -> Path:
    return Path(os.environ.get("HUBBUB_CACHE_DIR") or Path.home() / ".cache" / "hubbub")


def wstest_path() -> Path | None:
    """The `wstest` scripts/install-autobahn installed, or None when it has not (or not completely)."""
    venv = cache_dir() / f"autobahn-{VERSION}"
    wstest = venv / "bin" / "wstest"
    if wstest.is_file() and (venv / ".hubbub-stamp").is_file():
        return wstest
    return None


def write_spec(
    path: Path, *, url: str, outdir: Path, cases: Sequence[str], exclude: Sequence[str] = ()
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "outdir": str(outdir),
        "servers": [{"agent": AGENT, "url": url}],
        "cases": list(cases),
        "exclude-cases": list(exclude),
        "exclude-agent-cases": {},
    }
    path.write_text(json.dumps(spec, indent=2))
    return spec


def run_fuzzingclient(
    wstest: Path,
    url: str,
    workdir: Path,
    *,
    cases: Sequence[str],
    exclude: Sequence[str] = (),
    timeout: float = 600.0,
) -> dict[str, CaseResult]:
    """Run the cases against `url`; the verdict of each, by case id ("1.1.1"), in the suite's order.

    The reports (index.html, one JSON and one HTML file per case) stay in `workdir`/reports.
    """
    outdir = workdir / "reports"
    spec_path = workdir / "fuzzingclient.json"
    write_spec(spec_path, url=url, outdir=outdir, cases=cases, exclude=exclude)
    log_path = workdir / "wstest.log"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(wstest), "-m", "fuzzingclient", "-s", str(spec_path)],
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            last = tail(log_path)
            raise AutobahnError(f"wstest did not finish in {timeout:.0f} s; its last lines:\n{last}") from None
    if code != 0:
        raise AutobahnError(f"wstest exited with {code}:\n{tail(log_path)}")
    try:
        return read_results(outdir)
    except (OSError, ValueError, KeyError) as exc:
        raise AutobahnError(f"wstest left no readable report ({exc}):\n{tail(log_path)}") from None


def read_results(outdir: Path) -> dict[str, CaseResult]:
    """`index.json`, with the explanation from each case's own report for the cases not OK."""
    index = json.loads((outdir / "index.json").read_text())
    cases = index.get(AGENT)
    if not cases:
        raise ValueError(f"index.json has no results for {AGENT!r}: did wstest reach the server?")
    results: dict[str, CaseResult] = {}
    for case_id in sorted(cases, key=case_key):
        entry = cases[case_id]
        result = CaseResult(
            behavior=entry["behavior"],
            behaviorClose=entry["behaviorClose"],
            duration=entry["duration"],
            remoteCloseCode=entry["remoteCloseCode"],
            result="",
            resultClose="",
        )
        if entry["behavior"] != "OK" or entry["behaviorClose"] != "OK":
            report = json.loads((outdir / entry["reportfile"]).read_text())
            result["result"] = str(report.get("result", ""))
            result["resultClose"] = str(report.get("resultClose", ""))
        results[case_id] = result
    return results


def case_key(case_id: str) -> tuple[int, ...]:
    """Sort key: "9.10.2" after "9.2.1"."""
    return tuple(int(part) for part in case_id.split("."))


@contextmanager
def echo_server(workdir: Path, *, timeout: float = 30.0) -> Iterator[str]:
    """tests/support/echo_server.py in a subprocess on a free port; yields its WebSocket URL."""
    for _attempt in range(5):
        port = free_port()
        log_path = workdir / f"echo-server-{port}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.support.echo_server", "--port", str(port)],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={k: v for k, v in os.environ.items() if not k.startswith("HUBBUB_")},
            )
        try:
            if _wait_healthy(proc, port, timeout):
                yield f"ws://127.0.0.1:{port}/ws"
                return
            if "already in use" not in log_path.read_text(errors="replace"):
                raise RuntimeError(f"the echo server did not start:\n{tail(log_path)}")
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    raise RuntimeError("no free port for the echo server in 5 attempts")


def _wait_healthy(proc: subprocess.Popen[bytes], port: int, timeout: float) -> bool:
    """True once /healthz answers; False if the process exited (a port taken meanwhile)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"the echo server did not answer /healthz in {timeout:.0f} s")


def expectations(results: dict[str, CaseResult]) -> dict[str, str]:
    """What tests/fixtures/autobahn-expected.json holds: case id → behavior."""
    return {case_id: result["behavior"] for case_id, result in results.items()}


def differences(expected: dict[str, str], actual: dict[str, CaseResult]) -> list[str]:
    """One line per case whose behavior is not the expected one (or that ran unexpectedly, or not at all)."""
    lines: list[str] = []
    for case_id in sorted(set(expected) | set(actual), key=case_key):
        want = expected.get(case_id, "(not expected to run)")
        got = actual[case_id]["behavior"] if case_id in actual else "(did not run)"
        if want != got:
            why = actual[case_id]["result"] if case_id in actual else ""
            lines.append(f"  {case_id}: expected {want}, got {got}" + (f" — {why}" if why else ""))
    return lines


def summary(results: dict[str, CaseResult], *, title: str, seconds: float) -> str:
    """Counts per verdict, then every case that is not OK (behavior or close) with Autobahn's reason."""
    counts = collections.Counter(r["behavior"] for r in results.values())
    close_counts = collections.Counter(r["behaviorClose"] for r in results.values())
    lines = [f"{title}: {len(results)} cases in {seconds:.0f} s"]
    lines.append("  behavior:       " + ", ".join(f"{v} {counts[v]}" for v in _ordered(counts)))
    lines.append("  behaviorClose:  " + ", ".join(f"{v} {close_counts[v]}" for v in _ordered(close_counts)))
    slow = sorted(results.items(), key=lambda item: -item[1]["duration"])[:5]
    lines.append("  slowest (ms):   " + ", ".join(f"{case_id} {r['duration']}" for case_id, r in slow))
    others = [(case_id, r) for case_id, r in results.items() if r["behavior"] != "OK" or r["behaviorClose"] != "OK"]
    lines.append(f"  not OK ({len(others)}):")
    for case_id, r in others:
        lines.append(
            f"    {case_id:<9} {r['behavior']:<13} close {r['behaviorClose']:<13} code {r['remoteCloseCode']}"
            f"  {r['result']}" + (f" / {r['resultClose']}" if r["behaviorClose"] != "OK" else "")
        )
    return "\n".join(lines)


def _ordered(counts: collections.Counter[str]) -> list[str]:
    return [v for v in VERDICTS if v in counts] + sorted(v for v in counts if v not in VERDICTS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.autobahn", description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(SUBSET), help="case patterns (default: the test's subset)")
    parser.add_argument("--exclude", nargs="*", default=[], help="case patterns to leave out")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds wstest may take")
    parser.add_argument("--workdir", type=Path, help="where the spec and reports go (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="also write every case's result here")
    parser.add_argument("--write-expected", type=Path, help="write case → behavior here (the test's expectation file)")
    args = parser.parse_args(argv)
    wstest = wstest_path()
    if wstest is None:
        print("the Autobahn|Testsuite is not installed: run scripts/install-autobahn", file=sys.stderr)
        return 1
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hubbub-autobahn-"))
    workdir.mkdir(parents=True, exist_ok=True)
    with echo_server(workdir) as url:
        started = time.monotonic()
        try:
            results = run_fuzzingclient(
                wstest, url, workdir, cases=args.cases, exclude=args.exclude, timeout=args.timeout
            )
        except AutobahnError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        seconds = time.monotonic() - started
    print(summary(results, title=" ".join(args.cases), seconds=seconds))
    print(f"reports: {workdir / 'reports' / 'index.html'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    if args.write_expected:
        args.write_expected.write_text(json.dumps(expectations(results), indent=1) + "\n")
        print(f"wrote {len(results)} expectations to {args.write_expected}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
