"""Real hubbub server processes on 127.0.0.1 for the tests: start, signal, kill, restart."""

from __future__ import annotations

import functools
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.polling import wait_until
from tests.support.procs import free_port

SECRET = "test-secret-0123456789abcdef0123456789abcdef"
API_KEY = "test-api-key"

#: Namespaces the shared test server knows (production mode, explicit configuration).
TEST_NAMESPACES: dict[str, dict[str, Any]] = {
    "chat": {"history_size": 100, "presence": True, "join_leave": True, "client_publish": True},
    "small": {"history_size": 3, "presence": True, "client_publish": True},
    "nohist": {"history_size": 0, "client_publish": True},
    "quiet": {"history_size": 10, "client_publish": True},
    "public": {"history_size": 10, "public": True, "presence": True},
    "short": {"history_size": 100, "history_ttl": 1, "client_publish": True},
}


def server_config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "mode": "production",
        "jwt_secret": SECRET,
        "api_key": API_KEY,
        "namespaces": TEST_NAMESPACES,
        "default_namespace": {"history_size": 10, "presence": True, "client_publish": True},
        "timer_resolution": 0.05,
    }
    config.update(overrides)
    return config


def _limit_open_files(limits: tuple[int, int]) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, limits)


class PortTaken(RuntimeError):
    """The server could not bind its port: something else took it after it was found free."""


class ServerProcess:
    """`python -m hubbub serve` in a subprocess, with its config written to `workdir`."""

    def __init__(
        self,
        workdir: Path,
        config: dict[str, Any] | None = None,
        *,
        port: int | None = None,
        nofile: tuple[int, int] | None = None,
    ) -> None:
        self.workdir = workdir
        #: RLIMIT_NOFILE (soft, hard) to start the server with; None: this process's.
        self.nofile = nofile
        self.config = config if config is not None else server_config()
        self.proc: subprocess.Popen[bytes] | None = None
        #: Whether start() may move to another port when this one is taken before the server binds it.
        self._port_chosen_here = port is None
        self._started = False
        self._use_port(port or free_port())

    def _use_port(self, port: int) -> None:
        self.port = port
        self.log_path = self.workdir / f"server-{port}.log"
        self.config_path = self.workdir / f"config-{port}.json"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self, timeout: float = 30.0) -> ServerProcess:
        """Start the server and wait until `/healthz` answers.

        A free port is only free when it is probed: another process on the machine (any outgoing connection
        takes a port from the same range) can bind it before this server does. Then the first start moves to
        another port; a restart keeps its port, which its clients reconnect to.
        """
        for _attempt in range(5):
            try:
                return self._start_once(timeout)
            except PortTaken:
                if self._started or not self._port_chosen_here:
                    raise
                self._use_port(free_port())
        raise RuntimeError(f"no free port found for the server in 5 attempts:\n{self.log()}")

    def _start_once(self, timeout: float) -> ServerProcess:
        self.config_path.write_text(json.dumps(self.config))
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        env = {k: v for k, v in os.environ.items() if not k.startswith("HUBBUB_")}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hubbub", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
            + ["--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=None if self.nofile is None else functools.partial(_limit_open_files, self.nofile),
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if "address already in use" in self.log()[log_start:]:
                    raise PortTaken(self.port)
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.http_url + "/healthz", timeout=2).status_code == 200:
                    self._started = True
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.kill()  # nobody else would: the caller gets no server to stop
        raise RuntimeError(f"server did not become healthy in {timeout}s:\n{self.log()}")

    def wait_ready(self, timeout: float = 30.0) -> ServerProcess:
        """Wait until `/readyz` answers 200: `/healthz` only says the process serves, not that its Redis
        subscriber is up (joins answer 503 until it is)."""
        try:
            wait_until(lambda: httpx.get(self.http_url + "/readyz", timeout=2).status_code == 200, timeout=timeout)
        except AssertionError as exc:
            raise AssertionError(f"{self.http_url}/readyz did not answer 200: {exc}\n{self.log()[-3000:]}") from None
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 30.0) -> str:
        """The log once it holds `text` (another process writes it); AssertionError with its tail after `timeout`."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.log()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in the server log:\n{log[-3000:]}")
            time.sleep(0.05)
        return log

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.running():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        """Stop at once (SIGINT: no drain)."""
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> ServerProcess:
        self.stop()
        return self.start()

    def api(self, method: str, path: str, *, key: str | None = API_KEY, **kwargs: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {key}"} if key is not None else {}
        return httpx.request(method, self.http_url + path, headers=headers, timeout=10, **kwargs)
