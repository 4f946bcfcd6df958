"""The operator (`python -m hubbub_operator`) as a real process for the Kubernetes tests: started with a
kubeconfig (a ServiceAccount's, so it has exactly the RBAC it ships), awaited healthy, stopped by its PID."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx

from tests.support.polling import wait_until
from tests.support.procs import free_port

#: Seconds the operator has to answer on its health endpoint.
START_DEADLINE = 60.0


class Operator:
    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path, health: str) -> None:
        self.proc, self.log_path, self.health = proc, log_path, health

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def healthy(self) -> bool:
        assert self.proc.poll() is None, f"the operator exited with {self.proc.returncode}:\n{self.log()[-3000:]}"
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(self.health, timeout=2).status_code == 200
        return False


@contextlib.contextmanager
def running_operator(
    args: list[str],
    kubeconfig: Path,
    workdir: Path,
    *,
    wrap: Callable[[Sequence[str]], list[str]] = list,
    host: str = "127.0.0.1",
    rebalance: bool = False,
) -> Iterator[Operator]:
    """`python -m hubbub_operator <args> --liveness=… --resync-seconds=3`, its output in workdir/operator.log.

    No rebalancing by default (`--no-rebalance`): the kwok pods' IPs are nobody's (a call would leave
    the machine); tests/process/scaleout/test_rebalance.py runs the Rebalancer against real nodes, and the real tier
    (tests/kubernetes/test_operator_real.py) turns it on. `wrap` turns the command into the one to run
    (RealNode.in_netns: inside the real node's network namespace, where the pods answer), `host` is
    where the health endpoint listens (an address the test reaches)."""
    log_path = workdir / "operator.log"
    health = f"http://{host}:{free_port()}/healthz"
    command = wrap(
        [
            sys.executable,
            "-m",
            "hubbub_operator",
            *args,
            f"--liveness={health}",
            "--resync-seconds=3",
            *([] if rebalance else ["--no-rebalance"]),
        ]
    )
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "KUBECONFIG": str(kubeconfig)},
            cwd=workdir,
        )
    running = Operator(proc, log_path, health)
    try:
        wait_until(running.healthy, timeout=START_DEADLINE, what="the operator's /healthz")
        yield running
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
