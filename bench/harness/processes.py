"""Child processes: every one started here is in its own session, pinned, with the fd limit raised,
killed with the runner (PR_SET_PDEATHSIG) and stopped by PID (SIGTERM, then SIGKILL after 5 s).
Also the helpers that wait for them: free ports, readiness checks.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO

from .config import LOADGEN_CPU, ROOT, SERVER_CPU, STOP_GRACE
from .errors import BenchError


def pinning_available() -> bool:
    try:
        cpus = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return False
    return SERVER_CPU in cpus and LOADGEN_CPU in cpus


def child_setup(cpu: int | None) -> Callable[[], None]:
    """Runs in the child between fork and exec."""

    def setup() -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        with contextlib.suppress(Exception):
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: never outlive the runner

    return setup


class Proc:
    """One child process, output appended to a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        cpu: int | None,
        cwd: Path = ROOT,
        stop_signal: signal.Signals = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.stop_signal = stop_signal
        self.argv = list(argv)
        self.log_path = log_path
        self.cpu = cpu
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=child_setup(self.cpu),
        )
        PROCS.append(self)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def signal_stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(self.stop_signal)

    def stop(self, deadline: float | None = None) -> None:
        """The stop signal (unless sent already), SIGKILL at `deadline` (default: 5 s from now)."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            if deadline is None:
                self.signal_stop()
                deadline = time.monotonic() + STOP_GRACE
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                # Not reaped yet, so its PID is still its own process group's id (it leads its own
                # session): SIGKILL it with anything it started.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(STOP_GRACE)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self in PROCS:
            PROCS.remove(self)


PROCS: list[Proc] = []


def stop_all() -> None:
    for proc in reversed(list(PROCS)):
        proc.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(check: Callable[[], bool], timeout: float, what: str, procs: Iterable[Proc]) -> None:
    deadline = time.monotonic() + timeout
    watched = list(procs)
    while True:
        for proc in watched:
            if not proc.alive:
                raise BenchError(f"{proc.name} exited while starting:\n{proc.tail()}")
        with contextlib.suppress(Exception):
            if check():
                return
        if time.monotonic() > deadline:
            details = "\n".join(f"--- {p.name} ---\n{p.tail()}" for p in watched)
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}\n{details}")
        time.sleep(0.05)


def tcp_open(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=1) as response:
        return int(response.status) == 200


def printed_ready(proc: Proc) -> bool:
    return any(line.strip() == "ready" for line in proc.log_path.read_text(errors="replace").splitlines())
