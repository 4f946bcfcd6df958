"""The Autobahn|Testsuite fuzzing client against hubbub's WebSocket layer.

`wstest -m fuzzingclient` (0.8.2, Python 2, installed by scripts/install-autobahn) connects to a
server once per test case, sends what the case prescribes, and judges what comes back: each case
ends with a `behavior` (OK, NON-STRICT, INFORMATIONAL, UNIMPLEMENTED, FAILED), a `behaviorClose`
for the closing handshake and the close code the server sent (`remoteCloseCode`). This module
writes its spec, runs it with a bounded timeout and reads the reports back. It plays against one
of two servers (tests/process/transport/test_autobahn.py runs both):

- the echo endpoint (tests/support/echo_server.py): hubbub's transport with a session that echoes
  text, so that Autobahn can judge every case; binary messages close with 1003, as on a node;
- a real node (`hubbub serve`, `--node`): no echo and no `connect`, so what counts is the close
  code of every case (tests/process/transport/test_autobahn.py has the table of the codes each case must get).

Run by hand (starts the server on a free port, prints a summary; Autobahn's HTML reports stay in
`--workdir`):

    .venv/bin/python -m tests.support.autobahn                     # the echo subset of the CI run
    .venv/bin/python -m tests.support.autobahn --cases '*' --json echo.json       # every case, 1.* to 13.*
    .venv/bin/python -m tests.support.autobahn --cases '*' --write-expected tests/fixtures/autobahn-expected.json
    .venv/bin/python -m tests.support.autobahn --node --cases '*' --json node.json  # a real node
    .venv/bin/python -m tests.support.autobahn --summary-markdown echo.json node.json   # docs/websocket.md's table
"""

from __future__ import annotations

import argparse
import collections
import fnmatch
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypedDict

import httpx

from tests.support.procs import free_port, tail
from tests.support.server import ServerProcess, server_config

ROOT = Path(__file__).resolve().parents[2]
VERSION = "0.8.2"
#: Who the reports are about (the `agent` of the spec).
AGENT = "hubbub"

#: What tests/process/transport/test_autobahn.py runs in CI against the echo endpoint: every family of the framing,
#: UTF-8 and close cases, a sample of the large and fragmented performance cases (9.*) and of
#: permessage-deflate (12.1.*): 132 cases, 40 s on two busy cores. The larger 12.1.* cases
#: (12.1.7-10, 12.1.13-18) are left out: 90 s more, nearly all of it the fuzzing client's own
#: compression work (the slow tier runs them, and 12.2-13.7).
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
    "12.1.1",
    "12.1.2",
    "12.1.3",
    "12.1.4",
    "12.1.5",
    "12.1.6",
    "12.1.11",
    "12.1.12",
)
#: Every case of the suite (1.* to 13.*).
EVERYTHING: tuple[str, ...] = ("*",)

#: Verdicts in the order a summary lists them, best first.
VERDICTS = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")


#: The families whose cases send binary messages (Autobahn's titles say "binary"): protocol v1 has
#: none, so hubbub closes them with 1003 (4001 before `connect`) and Autobahn marks them FAILED.
BINARY_FAMILIES = ("1.2", "9.2", "9.4", "9.6", "9.8", "12.2", "12.3", "12.5")

#: Autobahn 0.8.2's title of each family (its CaseCategories and CaseSubCategories), for the summary.
FAMILY_TITLES = {
    "1.1": "Framing: text messages",
    "1.2": "Framing: binary messages",
    "2": "Pings/pongs",
    "3": "Reserved bits",
    "4.1": "Opcodes: non-control",
    "4.2": "Opcodes: control",
    "5": "Fragmentation",
    "6.1": "UTF-8: valid, zero-length fragments",
    "6.2": "UTF-8: valid, fragmented on and within code points",
    "6.3": "UTF-8: invalid, differently fragmented",
    "6.4": "UTF-8: fail-fast on invalid",
    "6.5": "UTF-8: some valid sequences",
    "6.6": "UTF-8: all prefixes of a valid string",
    "6.7": "UTF-8: first sequence of each length",
    "6.8": "UTF-8: first sequence of length 5/6 (invalid)",
    "6.9": "UTF-8: last sequence of each length",
    "6.10": "UTF-8: last sequence of length 4/5/6 (invalid)",
    "6.11": "UTF-8: other boundary conditions",
    "6.12": "UTF-8: unexpected continuation bytes",
    "6.13": "UTF-8: lonely start characters",
    "6.14": "UTF-8: last continuation byte missing",
    "6.15": "UTF-8: concatenated incomplete sequences",
    "6.16": "UTF-8: impossible bytes",
    "6.17": "UTF-8: overlong ASCII characters",
    "6.18": "UTF-8: maximum overlong sequences",
    "6.19": "UTF-8: overlong NUL",
    "6.20": "UTF-8: single UTF-16 surrogates",
    "6.21": "UTF-8: paired UTF-16 surrogates",
    "6.22": "UTF-8: non-characters (valid)",
    "6.23": "UTF-8: Unicode specials (valid)",
    "7.1": "Close: basic behaviour",
    "7.3": "Close: payload length",
    "7.5": "Close: payload value (invalid UTF-8 reason)",
    "7.7": "Close: valid close codes",
    "7.9": "Close: invalid close codes",
    "7.13": "Close: informational (codes 5000, 65536)",
    "9.1": "Limits: text message, 64 KiB to 16 MiB",
    "9.2": "Limits: binary message, 64 KiB to 16 MiB",
    "9.3": "Limits: fragmented text, 4 MiB",
    "9.4": "Limits: fragmented binary, 4 MiB",
    "9.5": "Limits: text, 1 MiB in chops",
    "9.6": "Limits: binary, 1 MiB in chops",
    "9.7": "Limits: 1000 text round trips",
    "9.8": "Limits: 1000 binary round trips",
    "10.1": "Auto-fragmentation",
    "12.1": "Deflate: JSON (text)",
    "12.2": "Deflate: bitmap (binary)",
    "12.3": "Deflate: Faust (binary)",
    "12.4": "Deflate: HTML (text)",
    "12.5": "Deflate: PDF (binary)",
    "13.1": "Deflate parameters: default offer",
    "13.2": "Deflate parameters: no context takeover",
    "13.3": "Deflate parameters: max window bits 9",
    "13.4": "Deflate parameters: max window bits 15",
    "13.5": "Deflate parameters: no context takeover, window bits 9",
    "13.6": "Deflate parameters: no context takeover, window bits 15",
    "13.7": "Deflate parameters: three offers",
}


class CaseResult(TypedDict):
    behavior: str
    behaviorClose: str
    duration: int
    #: The close code the server sent (None: it sent no close frame, or one with no code).
    remoteCloseCode: int | None
    #: What the case sent, in Autobahn's words (HTML); for 6.* it holds the payload in hex.
    description: str
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
    """`index.json`, with each case's description and, for the cases not OK, the explanation from its
    own report."""
    index = json.loads((outdir / "index.json").read_text())
    cases = index.get(AGENT)
    if not cases:
        raise ValueError(f"index.json has no results for {AGENT!r}: did wstest reach the server?")
    results: dict[str, CaseResult] = {}
    for case_id in sorted(cases, key=case_key):
        entry = cases[case_id]
        report = json.loads((outdir / entry["reportfile"]).read_text())
        not_ok = entry["behavior"] != "OK" or entry["behaviorClose"] != "OK"
        results[case_id] = CaseResult(
            behavior=entry["behavior"],
            behaviorClose=entry["behaviorClose"],
            duration=entry["duration"],
            remoteCloseCode=entry["remoteCloseCode"],
            description=str(report.get("description", "")),
            result=str(report.get("result", "")) if not_ok else "",
            resultClose=str(report.get("resultClose", "")) if not_ok else "",
        )
    return results


def case_key(case_id: str) -> tuple[int, ...]:
    """Sort key: "9.10.2" after "9.2.1"."""
    return tuple(int(part) for part in case_id.split("."))


def family(case_id: str) -> str:
    """The family a case belongs to, as Autobahn groups them: "6.4.2" → "6.4", "5.15" → "5"."""
    parts = case_id.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 else parts[0]


def selected(case_id: str, patterns: Sequence[str]) -> bool:
    """Whether a spec's `cases` select this case ("1.*", "9.1.1", "*": wildcards as wstest reads them)."""
    return any(fnmatch.fnmatchcase(case_id, pattern) for pattern in patterns)


def binary_case(case_id: str) -> bool:
    return family(case_id) in BINARY_FAMILIES


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


@contextmanager
def node_server(workdir: Path) -> Iterator[str]:
    """A real node (`hubbub serve`, tests/support/server.py, the tests' production config) with
    permessage-deflate offered, so that the 12.* and 13.* cases negotiate it; yields its /ws URL."""
    proc = ServerProcess(workdir, server_config(permessage_deflate=True)).start()
    try:
        yield proc.ws_url
    finally:
        proc.stop()


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


#: An expectation: the behavior a case must end with, or the list of those it may end with (a case
#: whose verdict depends on how the peer's bytes happen to fall into the server's reads).
Expected = str | list[str]


def expectations(results: dict[str, CaseResult], previous: dict[str, Expected] | None = None) -> dict[str, Expected]:
    """What tests/fixtures/autobahn-expected.json holds: case id → behavior, for every case of the suite.

    The cases this run did not play keep their previous entry (regenerating from the subset leaves
    the rest of the file alone). A list in `previous` that still holds the new behavior is kept:
    regenerating after an unrelated change does not make a timing-dependent case strict again.
    Remove such a list by hand once its cause is fixed.
    """
    found: dict[str, Expected] = dict(previous or {})
    for case_id, result in results.items():
        before = found.get(case_id)
        found[case_id] = before if isinstance(before, list) and result["behavior"] in before else result["behavior"]
    return {case_id: found[case_id] for case_id in sorted(found, key=case_key)}


def differences(
    expected: dict[str, Expected], actual: dict[str, CaseResult], *, cases: Sequence[str] = EVERYTHING
) -> list[str]:
    """One line per case whose behavior is not the expected one, that ran without an expectation, or
    that has one, is among `cases` and did not run."""
    lines: list[str] = []
    wanted_cases = {case_id for case_id in expected if selected(case_id, cases)}
    for case_id in sorted(wanted_cases | set(actual), key=case_key):
        want = expected.get(case_id, "(not expected to run)")
        allowed = want if isinstance(want, list) else [want]
        got = actual[case_id]["behavior"] if case_id in actual else "(did not run)"
        if got not in allowed:
            why = actual[case_id]["result"] if case_id in actual else ""
            wanted = " or ".join(allowed)
            lines.append(f"  {case_id}: expected {wanted}, got {got}" + (f" — {why}" if why else ""))
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


def summary_markdown(echo: dict[str, CaseResult], node: dict[str, CaseResult] | None = None) -> str:
    """docs/websocket.md's table: per family, the verdicts on the echo endpoint and the close codes a
    real node sent; then the cases that are not OK (the binary ones aside, FAILED by design)."""
    families: dict[str, list[str]] = {}
    for case_id in sorted(set(echo) | set(node or {}), key=case_key):
        families.setdefault(family(case_id), []).append(case_id)
    head = ["Cases", "What they test", "Count", *VERDICTS]
    if node is not None:
        head.append("Close codes from a node")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    totals: collections.Counter[str] = collections.Counter()
    for name, ids in families.items():
        verdicts = collections.Counter(echo[c]["behavior"] for c in ids if c in echo)
        totals.update(verdicts)
        row = [f"{name}.*", FAMILY_TITLES.get(name, ""), str(len(ids)), *(_count(verdicts[v]) for v in VERDICTS)]
        if node is not None:
            row.append(close_codes(node[c]["remoteCloseCode"] for c in ids if c in node))
        lines.append("| " + " | ".join(row) + " |")
    total = ["**all**", "", f"**{sum(len(ids) for ids in families.values())}**"]
    total += [f"**{totals[v]}**" if totals[v] else "" for v in VERDICTS]
    if node is not None:
        total.append("")
    lines.append("| " + " | ".join(total) + " |")
    odd = [
        (case_id, r)
        for case_id, r in echo.items()
        if r["behavior"] != "OK" and not (binary_case(case_id) and r["remoteCloseCode"] == 1003)
    ]
    if odd:
        lines.append("")
        lines.append("Not OK on the echo endpoint, binary cases aside:")
        lines.append("")
        for verdict in VERDICTS:
            ids = [case_id for case_id, r in odd if r["behavior"] == verdict]
            if ids:
                lines.append(f"- {verdict}: " + ", ".join(ids))
    return "\n".join(lines)


def close_codes(codes: Iterable[int | None]) -> str:
    """How often each code came, by code: "1002 ×4, 4001 ×3" ("none": no close frame, or no code)."""
    counts = collections.Counter(codes)
    ordered = sorted(counts, key=lambda code: -1 if code is None else code)
    return ", ".join(f"{'none' if code is None else code} ×{counts[code]}" for code in ordered)


def _count(n: int) -> str:
    return str(n) if n else ""


def _load(path: Path) -> dict[str, CaseResult]:
    results: dict[str, CaseResult] = json.loads(path.read_text())
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.autobahn", description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(SUBSET), help="case patterns (default: the test's subset)")
    parser.add_argument("--exclude", nargs="*", default=[], help="case patterns to leave out")
    parser.add_argument("--node", action="store_true", help="play against a real node instead of the echo endpoint")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds wstest may take")
    parser.add_argument("--workdir", type=Path, help="where the spec and reports go (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="also write every case's result here")
    parser.add_argument("--write-expected", type=Path, help="write case → behavior here (the test's expectation file)")
    parser.add_argument(
        "--summary-markdown",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="print docs/websocket.md's table from the --json of an echo run (and of a --node run) and exit",
    )
    args = parser.parse_args(argv)
    if args.summary_markdown:
        if len(args.summary_markdown) > 2:
            parser.error("--summary-markdown takes an echo run's JSON and, optionally, a node run's")
        paths = args.summary_markdown
        print(summary_markdown(_load(paths[0]), _load(paths[1]) if len(paths) > 1 else None))
        return 0
    if args.node and args.write_expected:
        parser.error("--write-expected records the echo endpoint's verdicts: leave out --node")
    wstest = wstest_path()
    if wstest is None:
        print("the Autobahn|Testsuite is not installed: run scripts/install-autobahn", file=sys.stderr)
        return 1
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hubbub-autobahn-"))
    workdir.mkdir(parents=True, exist_ok=True)
    server = node_server(workdir) if args.node else echo_server(workdir)
    with server as url:
        started = time.monotonic()
        try:
            results = run_fuzzingclient(
                wstest, url, workdir, cases=args.cases, exclude=args.exclude, timeout=args.timeout
            )
        except AutobahnError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        seconds = time.monotonic() - started
    title = ("a real node: " if args.node else "the echo endpoint: ") + " ".join(args.cases)
    print(summary(results, title=title, seconds=seconds))
    print(f"reports: {workdir / 'reports' / 'index.html'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    if args.write_expected:
        previous = json.loads(args.write_expected.read_text()) if args.write_expected.exists() else {}
        args.write_expected.write_text(json.dumps(expectations(results, previous), indent=1) + "\n")
        print(f"wrote {len(results)} expectations to {args.write_expected}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
